#!/usr/bin/env python3
"""A scripted fake OpenAI-compatible server for testing pdserve-bench (stdlib only).

It speaks just enough HTTP/1.1 (keep-alive, chunked streaming) on asyncio streams to
hold thousands of concurrent streams in one thread, and it streams with *known*
timings so every benchmark metric can be checked against numbers computed from the
script:

    request i (0-based, in arrival order over /v1/completions + /v1/chat/completions)
    first content chunk at  t_recv + ttft_ms[i % len]
    chunk k (k >= 1) at     t_recv + ttft + k * itl_ms[i % len]      (absolute schedule)
    then the usage chunk (when stream_options.include_usage) and [DONE] at once.

Script keys (JSON object, all optional):
    model            served model id ("fake-model")
    ttft_ms, itl_ms  number or list cycled by request index (defaults 20, 5)
    ttft_per_active_ms  extra TTFT per request already in flight (a crude load model)
    output_tokens    null = the request's max_tokens; number or list cycled by index
    tokens_per_chunk tokens per streamed chunk (1); usage still counts tokens
    usage            false = never send usage (the client must count chunks)
    tokenize         false = no /tokenize, /detokenize (404)
    tokenizer_info   false = no /tokenizer_info (the client must find the vocab size)
    vocab_size       size of the toy vocabulary (5000)
    ignore_stream    true = answer with one JSON body even when asked to stream
    failures         list of {"every": N, "offset": K, "kind": KIND, "after_tokens": T}:
                     request i with i % N == K fails with KIND: http500, http429,
                     disconnect (socket closed mid-stream after T chunks), error_event (an
                     SSE error event after T chunks, then [DONE]), empty (no text),
                     no_done (clean end without [DONE]), hang (no answer for 60 s)

GET /stats returns what the server saw: peak concurrent generation requests, and one
record per generation request (index, receive time, prompt token count in the toy
tokenizer, max_tokens, the parsed body's sampling fields, failure kind).

The toy tokenizer: a fixed vocabulary of printable characters, " x" pairs, two- and
three-letter strings; tokenize = greedy longest match; detokenize = concatenation.
detokenize(tokenize(s)) == s for ASCII text, but tokenize(detokenize(ids)) usually
differs from ids (pieces merge), which is what makes exact-length prompts non-trivial.

Run:  python3 fake_openai.py --port 0 --script script.json   (prints "PORT <n>")
"""
import argparse
import asyncio
import itertools
import json
import resource
import string
import sys
import time


def build_vocab(size):
    letters = string.ascii_lowercase
    vocab = [c for c in string.printable if c not in "\x0b\x0c"]
    vocab += [" " + c for c in letters]
    vocab += [a + b for a in letters for b in letters]
    vocab += [" " + a + b for a in letters for b in letters]
    for a, b, c in itertools.product(letters, repeat=3):
        if len(vocab) >= size:
            break
        vocab.append(a + b + c)
    return vocab[:size]


class Tokenizer:
    def __init__(self, size):
        self.vocab = build_vocab(size)
        self.index = {p: i for i, p in enumerate(self.vocab)}
        self.maxlen = max(len(p) for p in self.vocab)
        self.unk = self.index["?"]

    def encode(self, text):
        out, i, n = [], 0, len(text)
        while i < n:
            for L in range(min(self.maxlen, n - i), 0, -1):
                tid = self.index.get(text[i:i + L])
                if tid is not None:
                    out.append(tid)
                    i += L
                    break
            else:
                out.append(self.unk)
                i += 1
        return out

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


def cyc(v, i, default):
    if v is None:
        return default
    if isinstance(v, list):
        return v[i % len(v)]
    return v


def text_of(content):
    """Message content or prompt as text: a string, a list of parts, or token ids."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else
                       (p if isinstance(p, str) else "") for p in content)
    return str(content)


class Server:
    def __init__(self, script):
        self.s = script
        self.model = script.get("model", "fake-model")
        self.tok = Tokenizer(int(script.get("vocab_size", 5000)))
        self.counter = 0
        self.active = 0
        self.peak = 0
        self.records = []
        self.t0 = time.monotonic()

    # ---- HTTP plumbing ----
    async def handle(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = b""
                n = int(headers.get("content-length", "0") or 0)
                if n:
                    body = await reader.readexactly(n)
                try:
                    keep = await self.route(method, path, headers, body, writer)
                except (ConnectionError, asyncio.IncompleteReadError):
                    raise
                except Exception as e:  # a bug or odd input: say so, keep serving
                    print("fake server: %s %s: %r" % (method, path, e), file=sys.stderr,
                          flush=True)
                    keep = await self.send_json(writer, 400, {"error": {
                        "message": repr(e), "type": "BadRequestError", "code": 400}})
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def send_json(self, writer, code, obj):
        data = json.dumps(obj).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
                  500: "Internal Server Error"}.get(code, "X")
        writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (code, reason.encode(), len(data)) + data)
        await writer.drain()
        return True

    async def route(self, method, path, headers, body, writer):
        path = path.split("?")[0]
        if path == "/v1/models":
            return await self.send_json(writer, 200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "owned_by": "fake"}]})
        if path in ("/health", "/ping"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return True
        if path == "/version":
            return await self.send_json(writer, 200, {"version": "fake-0"})
        if path == "/stats":
            return await self.send_json(writer, 200, {"peak": self.peak, "count": self.counter,
                                                      "records": self.records})
        if path == "/tokenizer_info":
            if self.s.get("tokenizer_info", True) is False or self.s.get("tokenize", True) is False:
                return await self.send_json(writer, 404, {"detail": "Not Found"})
            return await self.send_json(writer, 200, {"vocab_size": len(self.tok.vocab)})
        if path in ("/tokenize", "/detokenize"):
            if self.s.get("tokenize", True) is False:
                return await self.send_json(writer, 404, {"detail": "Not Found"})
            req = json.loads(body or b"{}")
            if path == "/tokenize":
                ids = self.tok.encode(req.get("prompt", ""))
                return await self.send_json(writer, 200, {"tokens": ids, "count": len(ids),
                                                          "max_model_len": 1 << 20})
            ids = req.get("tokens", [])
            if any((not isinstance(i, int)) or i < 0 or i >= len(self.tok.vocab) for i in ids):
                return await self.send_json(writer, 400, {"error": {
                    "message": "token id out of range", "type": "BadRequestError", "code": 400}})
            return await self.send_json(writer, 200, {"prompt": self.tok.decode(ids)})
        if path in ("/v1/completions", "/v1/chat/completions"):
            return await self.generate(path, headers, json.loads(body or b"{}"), writer)
        return await self.send_json(writer, 404, {"detail": "Not Found"})

    # ---- generation ----
    def failure_for(self, i):
        for f in self.s.get("failures", []):
            if i % int(f["every"]) == int(f.get("offset", 0)):
                return f
        return None

    async def generate(self, path, headers, req, writer):
        t_recv = time.monotonic()
        i = self.counter
        self.counter += 1
        chat = path.endswith("chat/completions")
        if chat:
            prompt = "".join(text_of(m.get("content")) for m in req.get("messages", []))
            max_tokens = req.get("max_completion_tokens") or req.get("max_tokens") or 16
        else:
            prompt = text_of(req.get("prompt", ""))
            max_tokens = req.get("max_tokens") or 16
        fail = self.failure_for(i)
        kind = fail["kind"] if fail else None
        rec = {"index": i, "t_recv": t_recv - self.t0, "prompt_tokens": len(self.tok.encode(prompt)),
               "prompt_head": prompt[:40], "active_at_arrival": self.active,
               "max_tokens": max_tokens, "chat": chat, "failure": kind,
               "auth": headers.get("authorization"), "x_tenant": headers.get("x-tenant")}
        rec["keys"] = sorted(req)
        for k in ("temperature", "top_p", "top_k", "min_p", "ignore_eos", "stream",
                  "stream_options", "model", "frequency_penalty", "presence_penalty",
                  "repetition_penalty", "seed", "user"):
            if k in req:
                rec[k] = req[k]
        self.records.append(rec)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return await self._generate(i, chat, req, max_tokens, rec, fail, t_recv, writer)
        finally:
            self.active -= 1

    async def _generate(self, i, chat, req, max_tokens, rec, fail, t_recv, writer):
        kind = fail["kind"] if fail else None
        if kind in ("http500", "http429"):
            code = 500 if kind == "http500" else 429
            return await self.send_json(writer, code, {"error": {
                "message": "scripted failure", "type": "InternalServerError", "code": code}})
        if kind == "hang":
            await asyncio.sleep(60)
            return False
        ttft = cyc(self.s.get("ttft_ms"), i, 20) / 1000.0
        # a crude load model for sweep tests: each request already in flight adds delay
        ttft += float(self.s.get("ttft_per_active_ms", 0)) * rec["active_at_arrival"] / 1000.0
        itl = cyc(self.s.get("itl_ms"), i, 5) / 1000.0
        n_out = int(cyc(self.s.get("output_tokens"), i, max_tokens))
        per = int(self.s.get("tokens_per_chunk", 1))
        if kind == "empty":
            n_out = 0
        rec["output_tokens"] = n_out
        want_usage = self.s.get("usage", True) and bool(
            (req.get("stream_options") or {}).get("include_usage"))
        cid = "cmpl-%d" % i
        created = int(time.time())

        if not req.get("stream") or self.s.get("ignore_stream"):
            await asyncio.sleep(ttft + max(0, n_out - 1) * itl)
            text = "".join(self.tok.vocab[100 + (k % 500)] for k in range(n_out))
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": "length"} if chat else
                      {"index": 0, "text": text, "finish_reason": "length"})
            return await self.send_json(writer, 200, {
                "id": cid, "object": "chat.completion" if chat else "text_completion",
                "created": created, "model": self.model, "choices": [choice],
                "usage": {"prompt_tokens": rec["prompt_tokens"], "completion_tokens": n_out,
                          "total_tokens": rec["prompt_tokens"] + n_out}})

        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")

        def chunk(obj):
            data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
            writer.write(b"%x\r\n" % len(data) + data + b"\r\n")

        def piece(k, text, finish):
            if chat:
                return {"id": cid, "object": "chat.completion.chunk", "created": created,
                        "model": self.model, "choices": [{"index": 0, "delta": {"content": text},
                                                          "finish_reason": finish}]}
            return {"id": cid, "object": "text_completion", "created": created,
                    "model": self.model, "choices": [{"index": 0, "text": text,
                                                      "logprobs": None, "finish_reason": finish}]}

        if chat:  # role-only first delta, as OpenAI and vLLM send
            chunk({"id": cid, "object": "chat.completion.chunk", "created": created,
                   "model": self.model, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                          "content": ""},
                                                     "finish_reason": None}]})
        await writer.drain()
        n_chunks = (n_out + per - 1) // per
        after = int(fail.get("after_tokens", 2)) if fail else -1
        for k in range(n_chunks):
            target = t_recv + ttft + k * itl
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if kind in ("disconnect", "error_event") and k == after:
                break
            ntok = min(per, n_out - k * per)
            text = "".join(self.tok.vocab[100 + ((k * per + j) % 500)] for j in range(ntok))
            chunk(piece(k, text, "length" if k == n_chunks - 1 else None))
            await writer.drain()
        if kind == "empty":
            await asyncio.sleep(ttft)
        if kind == "disconnect":
            writer.transport.abort()  # RST mid-stream, no terminating chunk
            return False
        if kind == "error_event":
            chunk({"error": {"message": "scripted stream error", "type": "InternalServerError",
                             "code": 500}})
        if want_usage and kind != "error_event":
            chunk({"id": cid, "object": "text_completion", "created": created,
                   "model": self.model, "choices": [],
                   "usage": {"prompt_tokens": rec["prompt_tokens"], "completion_tokens": n_out,
                             "total_tokens": rec["prompt_tokens"] + n_out}})
        if kind != "no_done":
            chunk(b"[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


async def amain(args):
    script = {}
    if args.script:
        with open(args.script) as f:
            script = json.load(f)
    srv = Server(script)
    server = await asyncio.start_server(srv.handle, args.host, args.port, backlog=4096,
                                        limit=1 << 22)
    port = server.sockets[0].getsockname()[1]
    print("PORT %d" % port, flush=True)
    async with server:
        await server.serve_forever()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--script", default=None)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        asyncio.run(amain(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
