"""The node server as users see it: a real pdserve-decode process with the default model,
driven by the official openai client and raw HTTP."""
import http.client
import json
import re
import threading
import time
import urllib.request

import openai
import pytest

from pdtest import wait_idle


def client(node, **kw):
    return openai.OpenAI(base_url=node.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)


def metric(node, name):
    with urllib.request.urlopen(node.url + "/metrics") as r:
        text = r.read().decode()
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} not in /metrics"
    return total


def labelled(node, name, label):
    with urllib.request.urlopen(node.url + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") and label in line:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} with {label} not in /metrics")


def post(node, path, body, headers=None, raw=False):
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=60)
    data = body if raw else json.dumps(body)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    conn.request("POST", path, body=data, headers=h)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, payload, dict(r.getheaders())


def test_models(decode_node):
    ids = [m.id for m in client(decode_node).models.list().data]
    assert ids == ["smol", "other-name"]


def test_completion_greedy_is_deterministic_and_streams_the_same(decode_node):
    c = client(decode_node)
    a = c.completions.create(model="smol", prompt="The capital of France is", max_tokens=16, temperature=0)
    b = c.completions.create(model="other-name", prompt="The capital of France is", max_tokens=16, temperature=0)
    assert a.choices[0].text == b.choices[0].text
    assert a.model == "smol"  # the first served name, whatever the request named
    assert "Paris" in a.choices[0].text
    assert a.usage.completion_tokens == 16 and a.choices[0].finish_reason == "length"
    tok = json.loads(post(decode_node, "/tokenize", {"prompt": "The capital of France is"})[1])
    assert a.usage.prompt_tokens == tok["count"]
    text = "".join(ch.choices[0].text for ch in c.completions.create(
        model="smol", prompt="The capital of France is", max_tokens=16, temperature=0, stream=True)
        if ch.choices)
    assert text == a.choices[0].text


def test_stream_usage_and_done(decode_node):
    chunks = list(client(decode_node).completions.create(
        model="smol", prompt="Hello", max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-2].choices[0].finish_reason == "length"


def test_token_id_prompts_and_batch_of_prompts(decode_node):
    c = client(decode_node)
    ids = json.loads(post(decode_node, "/tokenize", {"prompt": "The capital of France is"})[1])["tokens"]
    by_ids = c.completions.create(model="smol", prompt=ids, max_tokens=8, temperature=0)
    by_text = c.completions.create(model="smol", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    multi = c.completions.create(model="smol", prompt=["The capital of France is", "One, two, three,"],
                                 max_tokens=8, temperature=0, n=2)
    assert [ch.index for ch in multi.choices] == [0, 1, 2, 3]
    assert multi.choices[0].text == by_text.choices[0].text == multi.choices[1].text


def test_seeds_reproducible_and_n(decode_node):
    c = client(decode_node)
    kw = dict(model="smol", prompt="Once upon a time", max_tokens=12, temperature=1.0, n=3)
    a = c.completions.create(seed=1234, **kw)
    b = c.completions.create(seed=1234, **kw)
    assert [ch.text for ch in a.choices] == [ch.text for ch in b.choices]
    assert len({ch.text for ch in a.choices}) > 1  # three samples, not one repeated
    assert a.usage.completion_tokens == 36


def test_logprobs(decode_node):
    c = client(decode_node)
    r = c.completions.create(model="smol", prompt="The capital of France is", max_tokens=4, temperature=0,
                             logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 4 == len(lp.token_logprobs) == len(lp.top_logprobs)
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert l <= 0 and len(top) >= 3
        assert abs(max(top.values()) - l) < 1e-4  # greedy: the chosen token is the best
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0
    r = c.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4,
                                  temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in content)


def test_stop_strings(decode_node):
    c = client(decode_node)
    full = c.completions.create(model="smol", prompt="The capital of France is", max_tokens=16,
                                temperature=0).choices[0].text
    word = full.split()[1]  # e.g. "Paris." -> stop in the middle of the text
    r = c.completions.create(model="smol", prompt="The capital of France is", max_tokens=16, temperature=0,
                             stop=[word])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == full[:full.index(word)]
    raw = json.loads(post(decode_node, "/v1/completions", {"prompt": "The capital of France is", "max_tokens": 16,
                                                           "temperature": 0, "stop": word,
                                                           "include_stop_str_in_output": True})[1])
    assert raw["choices"][0]["text"] == full[:full.index(word) + len(word)]
    assert raw["choices"][0]["stop_reason"] == word
    # streamed: the same text, the stop string never leaks into a chunk
    text = "".join(ch.choices[0].text for ch in c.completions.create(
        model="smol", prompt="The capital of France is", max_tokens=16, temperature=0, stop=[word], stream=True)
        if ch.choices)
    assert text == full[:full.index(word)]


def test_chat(decode_node):
    c = client(decode_node)
    r = r0 = c.chat.completions.create(model="smol", messages=[{"role": "user", "content": "What is the capital of France?"}],
                                       max_tokens=20, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert "<|im_end|>" not in r.choices[0].message.content
    r = c.chat.completions.create(model="smol", messages=[{"role": "system", "content": "You are brief."},
                                                          {"role": "user", "content": "Hi!"}],
                                  max_tokens=20, temperature=0)
    assert r.choices[0].message.content
    chunks = list(c.chat.completions.create(model="smol", messages=[{"role": "user", "content": "What is the capital of France?"}],
                                            max_tokens=20, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == r0.choices[0].message.content


def test_tokenize_detokenize_round_trip(decode_node):
    text = "Hello world! Ünïcödé 你好 🙂 and code: def f(x): return x**2"
    toks = json.loads(post(decode_node, "/tokenize", {"prompt": text})[1])
    assert toks["count"] == len(toks["tokens"]) and toks["max_model_len"] == 2048
    back = json.loads(post(decode_node, "/detokenize", {"tokens": toks["tokens"]})[1])
    assert back["prompt"] == text


def test_plain_endpoints(decode_node):
    for path in ("/health", "/ping", "/version", "/load", "/openapi.json", "/docs"):
        with urllib.request.urlopen(decode_node.url + path) as r:
            assert r.status == 200, path
    with urllib.request.urlopen(decode_node.url + "/version") as r:
        assert "version" in json.loads(r.read())
    assert json.loads(urllib.request.urlopen(decode_node.url + "/openapi.json").read())["openapi"].startswith("3.")


def test_errors_unknown_model_and_context(decode_node):
    c = client(decode_node)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="smol", prompt="hello " * 3000, max_tokens=2)
    assert "maximum context length is 2048" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="smol", prompt="hello", max_tokens=2048)
    assert "2049 tokens" in str(e.value)


def test_metrics_after_traffic(decode_node):
    before = metric(decode_node, "vllm:generation_tokens_total")
    post(decode_node, "/v1/completions", {"prompt": "Hi", "max_tokens": 7, "ignore_eos": True})
    time.sleep(0.1)
    assert metric(decode_node, "vllm:generation_tokens_total") - before == 7
    assert metric(decode_node, "vllm:e2e_request_latency_seconds_count") >= 1
    assert metric(decode_node, "vllm:num_requests_running") == 0


def wait_blocks_back(node, start, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metric(node, "pdserve:kv_free_blocks") == start and metric(node, "vllm:num_requests_running") == 0:
            return True
        time.sleep(0.1)
    return False


def test_client_disconnect_frees_blocks(decode_node):
    post(decode_node, "/v1/completions", {"prompt": "warm", "max_tokens": 1})
    wait_idle(decode_node.url)  # earlier tests on this shared node may still be finishing
    start = metric(decode_node, "pdserve:kv_free_blocks")
    conn = http.client.HTTPConnection("127.0.0.1", decode_node.port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "Tell me a long story about a dragon.",
                                                             "max_tokens": 1500, "ignore_eos": True, "stream": True}),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    r.fp.readline()  # one event arrived: the request is running
    # (the metrics are the engine's per-step snapshot, which may trail the first token)
    deadline = time.time() + 10
    while metric(decode_node, "pdserve:kv_free_blocks") >= start and time.time() < deadline:
        time.sleep(0.02)
    assert metric(decode_node, "pdserve:kv_free_blocks") < start
    conn.sock.close()
    conn.close()
    assert wait_blocks_back(decode_node, start), "blocks not freed after the client left"
    assert labelled(decode_node, "vllm:request_success_total", 'finished_reason="abort"') >= 1
    # the next request still works
    assert post(decode_node, "/v1/completions", {"prompt": "ok", "max_tokens": 2})[0] == 200


def test_generation_config_override(node_factory):
    node = node_factory(["--override-generation-config", '{"temperature": 0, "max_new_tokens": 6}'])
    try:
        c = client(node)
        # no temperature and no max_tokens in the request: the server defaults apply (greedy, 6 tokens)
        a = c.chat.completions.create(model=node_model(node), messages=[{"role": "user", "content": "Count to ten."}])
        b = c.chat.completions.create(model=node_model(node), messages=[{"role": "user", "content": "Count to ten."}])
        assert a.choices[0].message.content == b.choices[0].message.content
        assert a.usage.completion_tokens <= 6
        # a request's own values win
        r = c.chat.completions.create(model=node_model(node), messages=[{"role": "user", "content": "Count to ten."}],
                                      max_tokens=9, temperature=0, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 9
    finally:
        assert node.stop() == 0


def node_model(node):
    return client(node).models.list().data[0].id


def test_chat_answer_with_exact_numerics(node_factory):
    """--dtype float32 dequantizes the GGUF and runs exact matmuls (the numerics the
    Hugging Face goldens check): the model answers and stops at its end-of-turn token."""
    node = node_factory(["--dtype", "float32"])
    try:
        r = client(node).chat.completions.create(model=node_model(node), max_tokens=20, temperature=0,
                                                 messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"
    finally:
        assert node.stop() == 0


def test_skip_tokenizer_init(node_factory):
    """No tokenizer: token-id prompts only, and the output is token ids."""
    node = node_factory(["--skip-tokenizer-init"])
    try:
        body = {"prompt": [504, 3575, 282, 4649, 314], "max_tokens": 4, "temperature": 0}
        st, payload, _ = post(node, "/v1/completions", body)
        choice = json.loads(payload)["choices"][0]
        assert st == 200 and choice["text"] == "" and len(choice["token_ids"]) == 4
        st, payload, _ = post(node, "/v1/completions", {"prompt": "text", "max_tokens": 2})
        assert st == 400 and "--skip-tokenizer-init" in json.loads(payload)["error"]["message"]
    finally:
        assert node.stop() == 0
