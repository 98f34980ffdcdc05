"""Bad requests against a real pdserve-decode (default model): every one gets the exact
4xx status and the {"error": {"message", "type", "param", "code"}} shape, and the server
keeps working: after every batch of ten a normal request succeeds, no request is left
running and every KV block is free again (RELIABILITY.md "Bound every input")."""
import http.client
import json
import time

import pytest

from pdtest import start_node

MAX_LEN = 512
MAX_LOGPROBS = 5
VOCAB = 49152
C = "/v1/completions"
H = "/v1/chat/completions"
ANY = object()  # param not checked
HUGE = "<17 MiB body, declared>"
HUGE_CHUNKED = "<17 MiB body, chunked>"

TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowedError",
         413: "RequestTooLargeError", 401: "AuthenticationError"}


@pytest.fixture(scope="module")
def node(tmp_path_factory, model_path):
    n = start_node(tmp_path_factory, model_path, ["--served-model-name", "smol", "--max-logprobs", str(MAX_LOGPROBS),
                                                  "--max-model-len", str(MAX_LEN)])
    n.free_start = None
    yield n
    assert n.stop() == 0


def huge_request(node, path, chunked):
    """Send headers for a 17 MiB body (past the 16 MiB limit) and as much of it as the
    server reads; the answer must be a 413 before or while the body arrives."""
    import socket
    s = socket.create_connection(("127.0.0.1", node.port), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {17 << 20}\r\n\r\n"
    s.sendall(head.encode())
    import select
    chunk = b"a" * (1 << 16)
    data = b""
    try:
        for _ in range(17 * 16):
            s.sendall((b"10000\r\n" + chunk + b"\r\n") if chunked else chunk)
            # read the answer as soon as it comes: a server that closes on unread data
            # resets the connection, which would discard what we did not read yet
            if select.select([s], [], [], 0)[0]:
                break
        else:
            if chunked:  # a chunked body over the limit is read and dropped; 413 at its end
                s.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
            if b"\r\n\r\n" in data:
                hdr, _, rest = data.partition(b"\r\n\r\n")
                n = [int(l.split(b":")[1]) for l in hdr.split(b"\r\n") if l.lower().startswith(b"content-length")]
                if n and len(rest) >= n[0]:
                    break
    except OSError:
        pass
    s.close()
    hdr, _, rest = data.partition(b"\r\n\r\n")
    return int(hdr.split()[1]), rest


def request(node, method, path, body=None, headers=None, timeout=60):
    if body is HUGE or body is HUGE_CHUNKED:
        return huge_request(node, path, body is HUGE_CHUNKED)
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, payload


def metrics(node):
    status, text = request(node, "GET", "/metrics")
    assert status == 200
    out = {}
    for line in text.decode().splitlines():
        if line.startswith("#") or not line:
            continue
        name = line.split("{")[0].split(" ")[0]
        out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def comp(**kw):
    b = {"model": "smol", "prompt": "Hi", "max_tokens": 2}
    b.update(kw)
    return b


def chat(**kw):
    b = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    b.update(kw)
    return b


def drop(d, key):
    d = dict(d)
    d.pop(key)
    return d


# (id, method, path, body, status, param, message substring)
CASES = []


def case(cid, path, body, status=400, param=ANY, msg=None, method="POST"):
    CASES.append((cid, method, path, body, status, param, msg))


# ---- the body itself ----
for p in (C, H):
    k = "c" if p == C else "h"
    case(f"{k}-not-json", p, "{not json", msg="JSON")
    case(f"{k}-empty-body", p, "")
    case(f"{k}-array-body", p, "[1,2]")
    case(f"{k}-null-body", p, "null")
    case(f"{k}-string-body", p, '"prompt"')
    case(f"{k}-trailing-data", p, json.dumps(comp()) + " x")
    case(f"{k}-invalid-utf8", p, b'{"model":"smol","prompt":"\xff\xfe","messages":[{"role":"user","content":"\xc3"}]}')
    case(f"{k}-overlong-utf8", p, b'{"prompt":"\xc0\xaf","messages":[{"role":"user","content":"\xc0\xaf"}]}')
    case(f"{k}-surrogate-utf8", p, b'{"prompt":"\xed\xa0\x80","messages":[{"role":"user","content":"\xed\xa0\x80"}]}')
    case(f"{k}-nul-byte", p, b'{"prompt":"a\x00b","messages":[]}')
    case(f"{k}-deep-nesting", p, '{"prompt":' + "[" * 5000 + "]" * 5000 + "}")
    case(f"{k}-deep-objects", p, '{"x":' + '{"a":' * 200 + "1" + "}" * 200 + "}")
    case(f"{k}-model-not-string", p, (comp if p == C else chat)(model=5), param="model")
    case(f"{k}-unknown-model", p, (comp if p == C else chat)(model="nope"), 404, "model", "does not exist")
    case(f"{k}-huge-body", p, HUGE, 413)
    case(f"{k}-huge-chunked-body", p, HUGE_CHUNKED, 413)

# ---- methods and paths ----
case("get-completions", C, None, 405, method="GET")
case("put-chat", H, json.dumps(chat()), 405, method="PUT")
case("delete-models", "/v1/models", None, 405, method="DELETE")
case("post-models", "/v1/models", "{}", 405)
case("get-tokenize", "/tokenize", None, 405, method="GET")
case("unknown-path", "/v1/nope", "{}", 404)
case("unknown-v2", "/v2/completions", json.dumps(comp()), 404)
case("unknown-root", "/completions", json.dumps(comp()), 404)
case("embeddings", "/v1/embeddings", {"model": "smol", "input": "hi"}, 400, msg="not supported yet")

# ---- completions: prompt ----
case("prompt-missing", C, drop(comp(), "prompt"), param="prompt")
case("prompt-null", C, comp(prompt=None), param="prompt")
case("prompt-number", C, comp(prompt=5), param="prompt")
case("prompt-object", C, comp(prompt={"a": 1}), param="prompt")
case("prompt-empty-array", C, comp(prompt=[]), param="prompt")
case("prompt-empty-string", C, comp(prompt=""), param="prompt", msg="empty")
case("prompt-empty-in-list", C, comp(prompt=["ok", ""]), param="prompt", msg="empty")
case("prompt-empty-ids", C, comp(prompt=[[]]), param="prompt")
case("prompt-mixed", C, comp(prompt=["a", 5]), param="prompt")
case("prompt-id-negative", C, comp(prompt=[-1]), param="prompt")
case("prompt-id-vocab", C, comp(prompt=[VOCAB]), param="prompt")
case("prompt-id-huge", C, comp(prompt=[2 ** 40]), param="prompt")
case("prompt-id-float", C, comp(prompt=[1.5]), param="prompt")
case("prompt-id-nested-vocab", C, comp(prompt=[[1, 2], [VOCAB]]), param="prompt")
case("prompt-id-string-in-ids", C, comp(prompt=[1, "a"]), param="prompt")
case("prompt-too-many", C, comp(prompt=["a"] * 1025), param="prompt")
case("prompt-too-long", C, comp(prompt="hello " * 1000), msg=f"maximum context length is {MAX_LEN}")
case("prompt-ids-too-long", C, comp(prompt=[1] * 600), msg=f"maximum context length is {MAX_LEN}")
case("prompt-plus-max-tokens", C, comp(prompt="hello", max_tokens=MAX_LEN), msg=f"is {MAX_LEN} tokens")
case("suffix", C, comp(suffix="x"), param="suffix", msg="not supported")
case("echo-not-bool", C, comp(echo="yes"), param="echo")
case("add-special-not-bool", C, comp(add_special_tokens=1), param="add_special_tokens")

# ---- completions: logprobs ----
case("logprobs-over-max", C, comp(logprobs=MAX_LOGPROBS + 1), param="logprobs")
case("logprobs-negative", C, comp(logprobs=-1), param="logprobs")
case("logprobs-bool", C, comp(logprobs=True), param="logprobs")
case("logprobs-string", C, comp(logprobs="3"), param="logprobs")
case("prompt-logprobs-stream", C, comp(prompt_logprobs=1, stream=True), param="prompt_logprobs",
     msg="not available when `stream=True`")
case("echo-logprobs-max-tokens-0", C, comp(echo=True, logprobs=1, max_tokens=0), param="logprobs",
     msg="not supported yet")
case("echo-prompt-logprobs-max-tokens-0", C, comp(echo=True, prompt_logprobs=1, max_tokens=0),
     param="prompt_logprobs", msg="not supported yet")
case("prompt-logprobs-over-max", C, comp(prompt_logprobs=MAX_LOGPROBS + 1), param="prompt_logprobs")
case("prompt-logprobs-negative", C, comp(prompt_logprobs=-2), param="prompt_logprobs")
case("prompt-logprobs-all-vocab", C, comp(prompt_logprobs=-1), param="prompt_logprobs")
case("best-of-lt-n", C, comp(n=3, best_of=2), param="best_of")
case("best-of-zero", C, comp(best_of=0), param="best_of")

# ---- sampling parameters (both endpoints) ----
SAMPLING = [
    ("max_tokens", "x"), ("max_tokens", -1), ("max_tokens", 0), ("max_tokens", 1.5), ("max_tokens", True),
    ("max_tokens", 1e30), ("max_tokens", []),
    ("temperature", "x"), ("temperature", -0.1), ("temperature", 1e300), ("temperature", [1]),
    ("top_p", 0), ("top_p", 1.5), ("top_p", -1), ("top_p", "x"),
    ("top_k", "x"), ("top_k", 1.5), ("top_k", -2),
    ("min_p", -0.1), ("min_p", 1.1), ("min_p", "x"),
    ("presence_penalty", 3), ("presence_penalty", -3), ("frequency_penalty", 2.5), ("frequency_penalty", "x"),
    ("repetition_penalty", 0), ("repetition_penalty", -1), ("repetition_penalty", "x"),
    ("seed", "x"), ("seed", 1.5), ("seed", 1e30),
    ("n", 0), ("n", -1), ("n", 100000), ("n", "x"),
    ("stop", 5), ("stop", [1, 2]), ("stop", ["a"] * 65), ("stop", ["x" * 2000]), ("stop", {"a": 1}),
    ("stop_token_ids", [-1]), ("stop_token_ids", [VOCAB]), ("stop_token_ids", "x"), ("stop_token_ids", [1.5]),
    ("logit_bias", {"abc": 1}), ("logit_bias", {"-1": 1}), ("logit_bias", {str(VOCAB): 1}),
    ("logit_bias", {"5": 101}), ("logit_bias", {"5": "x"}), ("logit_bias", [1]),
    ("allowed_token_ids", []), ("allowed_token_ids", [VOCAB]), ("allowed_token_ids", "x"),
    ("min_tokens", -1), ("min_tokens", 5), ("ignore_eos", "x"), ("include_stop_str_in_output", 1),
    ("skip_special_tokens", "no"), ("spaces_between_special_tokens", 0),
    ("truncate_prompt_tokens", 0), ("truncate_prompt_tokens", "x"),
    ("stream", "yes"), ("stream_options", {"include_usage": True}),
    ("priority", 5), ("priority", "x"),
    ("request_id", 5), ("request_id", "r" * 200),
    ("cache_salt", ""), ("cache_salt", 5), ("user", 5),
    ("bad_words", 5), ("bad_words", [5]), ("bad_words", ["x" * 2000]),
    ("return_tokens_as_token_ids", "x"),
    ("guided_json", {"type": "object"}), ("guided_regex", "a+"), ("guided_choice", ["a", "b"]),
    ("guided_grammar", "root ::= 'a'"), ("structured_outputs", {"json": {}}),
]
for key, val in SAMPLING:
    for p in (C, H):
        make = comp if p == C else chat
        cid = f"{'c' if p == C else 'h'}-{key}-{json.dumps(val)[:20]}"
        body = make(**{key: val})
        if key == "min_tokens" and val == 5:
            body["max_tokens"] = 2  # min_tokens > max_tokens
        msg = "not supported yet" if key.startswith("guided") or key == "structured_outputs" else None
        case(cid, p, body, param=key, msg=msg)
# NaN and Infinity are not JSON: refused by the parser
case("c-temperature-nan", C, '{"prompt":"Hi","temperature":NaN}')
case("c-temperature-inf", C, '{"prompt":"Hi","temperature":Infinity}')
case("h-top-p-nan", H, '{"messages":[{"role":"user","content":"Hi"}],"top_p":NaN}')
case("c-max-tokens-neg-inf", C, '{"prompt":"Hi","max_tokens":-Infinity}')
case("c-stream-options-not-object", C, comp(stream=True, stream_options=5), param="stream_options")
case("c-stream-options-bad-usage", C, comp(stream=True, stream_options={"include_usage": "x"}), param="include_usage")

# ---- chat: messages and features ----
case("messages-missing", H, drop(chat(), "messages"), param="messages")
case("messages-empty", H, chat(messages=[]), param="messages")
case("messages-string", H, chat(messages="hi"), param="messages")
case("messages-number-item", H, chat(messages=[5]), param="messages")
case("messages-no-role", H, chat(messages=[{"content": "x"}]), param="messages")
case("messages-unknown-role", H, chat(messages=[{"role": "wizard", "content": "x"}]), param="messages")
case("messages-role-number", H, chat(messages=[{"role": 1, "content": "x"}]), param="messages")
case("messages-content-number", H, chat(messages=[{"role": "user", "content": 5}]), param="messages")
case("messages-part-image", H, chat(messages=[{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": "http://a.example/x.png"}}]}]), param="messages", msg="not supported")
case("messages-part-no-type", H, chat(messages=[{"role": "user", "content": [{"text": "x"}]}]), param="messages")
case("messages-part-text-number", H, chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
     param="messages")
case("messages-too-long", H, chat(messages=[{"role": "user", "content": "hello " * 1000}]),
     msg=f"maximum context length is {MAX_LEN}")
case("chat-logprobs-string", H, chat(logprobs="yes"), param="logprobs")
case("chat-top-logprobs-without-logprobs", H, chat(top_logprobs=2), param="top_logprobs", msg="logprobs")
case("chat-top-logprobs-over-max", H, chat(logprobs=True, top_logprobs=MAX_LOGPROBS + 1), param="top_logprobs")
case("chat-top-logprobs-negative", H, chat(logprobs=True, top_logprobs=-1), param="top_logprobs")
case("response-format-json-schema", H, chat(response_format={"type": "json_schema", "json_schema": {
    "name": "x", "schema": {"type": "object"}}}), param="response_format", msg="not supported yet")
case("response-format-json-object", H, chat(response_format={"type": "json_object"}), param="response_format",
     msg="not supported yet")
case("response-format-string", H, chat(response_format="json"), param="response_format")
case("response-format-no-type", H, chat(response_format={}), param="response_format")
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
case("tools-auto", H, chat(tools=TOOLS, tool_choice="auto"), param="tool_choice", msg="--enable-auto-tool-choice")
case("tools-required", H, chat(tools=TOOLS, tool_choice="required"), param="tool_choice", msg="not supported yet")
case("tools-named", H, chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "f"}}),
     param="tool_choice", msg="not supported yet")
case("tools-not-array", H, chat(tools="x"), param="tools")
case("chat-template-in-request", H, chat(chat_template="{{ 'x' }}"), param="chat_template")
case("chat-template-kwargs-string", H, chat(chat_template_kwargs="x"), param="chat_template_kwargs")
case("documents-string", H, chat(documents="x"), param="documents")
case("continue-and-generation-prompt", H, chat(continue_final_message=True, add_generation_prompt=True),
     param="continue_final_message")
case("add-generation-prompt-string", H, chat(add_generation_prompt="x"), param="add_generation_prompt")
case("max-completion-tokens-zero", H, chat(max_completion_tokens=0), param="max_completion_tokens")
case("max-completion-tokens-over-context", H, chat(max_completion_tokens=MAX_LEN), msg=f"is {MAX_LEN} tokens")

# ---- /tokenize and /detokenize ----
case("tokenize-not-json", "/tokenize", "{")
case("tokenize-no-prompt", "/tokenize", {})
case("tokenize-prompt-number", "/tokenize", {"prompt": 5}, param="prompt")
case("tokenize-unknown-model", "/tokenize", {"model": "nope", "prompt": "x"}, 404, "model")
case("tokenize-bad-messages", "/tokenize", {"messages": [{"role": "wizard", "content": "x"}]}, param="messages")
case("detokenize-no-tokens", "/detokenize", {}, param="tokens")
case("detokenize-negative", "/detokenize", {"tokens": [-1]}, param="tokens")
case("detokenize-vocab", "/detokenize", {"tokens": [VOCAB]}, param="tokens")
case("detokenize-string", "/detokenize", {"tokens": "x"}, param="tokens")
case("detokenize-unknown-model", "/detokenize", {"model": "nope", "tokens": [1]}, 404, "model")


def check_error(status, payload, exp_status, param, msg):
    assert status == exp_status, payload[:300]
    j = json.loads(payload)
    assert set(j) == {"error"}, j
    e = j["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    assert isinstance(e["message"], str) and e["message"], e
    assert e["type"] == TYPES[exp_status], e
    assert e["code"] == exp_status, e
    if param is not ANY:
        assert e["param"] == param, e
    if msg is not None:
        assert msg in e["message"], e


def normal_request_ok(node):
    st, payload = request(node, "POST", C, comp(prompt="The capital of France is", max_tokens=4, temperature=0))
    assert st == 200, payload
    assert json.loads(payload)["usage"]["completion_tokens"] == 4
    st, payload = request(node, "POST", H, chat(max_tokens=3, stream=True))
    assert st == 200 and payload.rstrip().endswith(b"data: [DONE]"), payload


def assert_clean(node):
    """No request left running and every KV block free again."""
    deadline = time.time() + 10
    while True:
        m = metrics(node)
        if (m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0
                and m["pdserve:kv_free_blocks"] == node.free_start):
            return
        assert time.time() < deadline, (m["vllm:num_requests_running"], m["pdserve:kv_free_blocks"], node.free_start)
        time.sleep(0.05)


def test_case_count():
    assert len(CASES) >= 100, len(CASES)
    assert len({c[0] for c in CASES}) == len(CASES), "duplicate case ids"


@pytest.mark.parametrize("cid,method,path,body,status,param,msg", CASES, ids=[c[0] for c in CASES])
def test_bad_request(node, cid, method, path, body, status, param, msg):
    if node.free_start is None:
        normal_request_ok(node)
        # the metrics are the engine's per-step snapshot: let the last step's frees land
        # (the normal requests are done, so the count only rises until it settles)
        deadline = time.time() + 10
        node.free_start = metrics(node)["pdserve:kv_free_blocks"]
        while time.time() < deadline:
            time.sleep(0.2)
            m = metrics(node)
            if m["pdserve:kv_free_blocks"] == node.free_start and m["vllm:num_requests_running"] == 0:
                break
            node.free_start = m["pdserve:kv_free_blocks"]
    st, payload = request(node, method, path, body)
    check_error(st, payload, status, param, msg)
    idx = [c[0] for c in CASES].index(cid)
    if idx % 10 == 9 or idx == len(CASES) - 1:
        normal_request_ok(node)
    assert_clean(node)


def test_context_error_names_both_numbers(node):
    st, payload = request(node, "POST", C, comp(prompt="hello", max_tokens=MAX_LEN))
    e = json.loads(payload)["error"]
    assert st == 400 and str(MAX_LEN) in e["message"] and str(MAX_LEN + 1) in e["message"], e


def test_stream_error_after_headers_is_sse(node):
    """An error found before streaming starts is a plain 4xx JSON, never a 200 stream."""
    st, payload = request(node, "POST", C, comp(prompt="hello " * 1000, stream=True))
    check_error(st, payload, 400, ANY, "maximum context length")


def test_still_serving_at_the_end(node):
    normal_request_ok(node)
    st, _ = request(node, "GET", "/health")
    assert st == 200
