"""A tiny fake prefill node (stdlib only) for the proxy tests.

It answers POST /v1/completions and /v1/chat/completions like a prefill node in the
disaggregated protocol: a one-token completion with fixed kv_transfer_params, and
records every request it received (headers and JSON body) for GET /_received.
GET /health answers 200 unless the node was told to fail (POST /_mode {"status": N}
makes every generation answer N with an error JSON, with a Retry-After header when
{"retry_after": "S"} is set too; {"kv": false} answers with
"kv_transfer_params": null, for decode nodes without a KV connector).

Run: python3 fake_prefill.py PORT
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KV_PARAMS = {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [1, 2, 3],
             "remote_engine_id": "fake-prefill-engine", "remote_request_id": "fake-req",
             "remote_host": "127.0.0.1", "remote_port": 14579, "tp_size": 1}

received = []
mode = {"status": 200, "kv": True, "retry_after": None}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send_json(self, status, obj, retry_after=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if retry_after:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.send_json(200, {})
        elif self.path == "/_received":
            with lock:
                self.send_json(200, received)
        else:
            self.send_json(404, {"error": {"message": "not found", "type": "NotFoundError", "param": None,
                                           "code": 404}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        if self.path == "/_mode":
            mode.update(json.loads(raw))
            self.send_json(200, mode)
            return
        body = json.loads(raw)
        with lock:
            received.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                             "body": body, "raw": raw.decode("utf-8", "replace")})
        if mode["status"] != 200:
            self.send_json(mode["status"], {"error": {"message": "fake prefill failure", "type": "BadRequestError",
                                                      "param": None, "code": mode["status"]}},
                           mode["retry_after"])
            return
        chat = self.path.endswith("/chat/completions")
        choice = ({"index": 0, "message": {"role": "assistant", "content": "X"}, "finish_reason": "length"}
                  if chat else {"index": 0, "text": "X", "finish_reason": "length"})
        self.send_json(200, {"id": "fake", "object": "chat.completion" if chat else "text_completion",
                             "model": body.get("model"), "choices": [choice],
                             "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                             "kv_transfer_params": KV_PARAMS if mode["kv"] else None})


if __name__ == "__main__":
    srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    srv.daemon_threads = True
    srv.serve_forever()
