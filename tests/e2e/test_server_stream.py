"""Streamed chunks and echo, against a real pdserve-decode with the default model:
every SSE event of the tree-free chunk writer parses and carries the OpenAI shape, the
stream says what the non-streamed response says (text, logprobs, finish reasons,
usage) for completions and chat, n > 1, continuous usage, return_tokens_as_token_ids,
text full of quotes, backslashes, newlines and non-ASCII; and `echo` with
`max_tokens: 0` returns the prompt alone (vLLM), streamed or not."""
import http.client
import json
import time
import urllib.request

import openai
import pytest

from pdtest import start_node, wait_idle


@pytest.fixture(scope="module")
def node(tmp_path_factory, model_path):
    n = start_node(tmp_path_factory, model_path, ["--served-model-name", "smol", "--enable-prompt-tokens-details"])
    yield n
    assert n.stop() == 0


def client(node):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0)


def metric(node, name):
    with urllib.request.urlopen(node.url + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(name)


def raw_stream(node, path, body):
    """POST with stream=true; returns the parsed events (every one must be JSON) and
    checks the framing: "data: " events separated by blank lines, [DONE] last."""
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=120)
    conn.request("POST", path, body=json.dumps(dict(body, stream=True)), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    assert r.getheader("Content-Type").startswith("text/event-stream")
    text = r.read().decode("utf-8")
    conn.close()
    assert text.endswith("data: [DONE]\n\n")
    events = text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    out = []
    for e in events[:-2]:
        assert e.startswith("data: ") and "\n" not in e, e
        out.append(json.loads(e[6:]))
    return out


def post(node, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=120)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = json.loads(r.read())
    conn.close()
    return r.status, data


# a prompt whose greedy continuation is code: quotes, backslashes, newlines, braces
CODE = 'def greet(name):\n    print("Hello, \\"" + name + "\\"\\n")\n\n# Write a JSON string with "quotes" and \\n:\ns = "'
UNICODE = "Traduis en français et en japonais : « Bonjour, ça va ? » →"


@pytest.mark.parametrize("prompt", [CODE, UNICODE])
def test_completion_stream_equals_response(node, prompt):
    body = {"model": "smol", "prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 2}
    st, full = post(node, "/v1/completions", body)
    assert st == 200
    events = raw_stream(node, "/v1/completions", body)
    ids = {e["id"] for e in events}
    assert len(ids) == 1 and ids.pop().startswith("cmpl-")
    for e in events:
        assert e["object"] == "text_completion" and e["model"] == "smol" and isinstance(e["created"], int)
        assert list(e["choices"][0]) == ["index", "text", "logprobs", "finish_reason", "stop_reason"]
    text = "".join(e["choices"][0]["text"] for e in events)
    assert text == full["choices"][0]["text"]
    tokens = sum((e["choices"][0]["logprobs"]["tokens"] for e in events if e["choices"][0]["logprobs"]), [])
    assert tokens == full["choices"][0]["logprobs"]["tokens"]
    offs = sum((e["choices"][0]["logprobs"]["text_offset"] for e in events if e["choices"][0]["logprobs"]), [])
    assert offs == full["choices"][0]["logprobs"]["text_offset"]
    lps = sum((e["choices"][0]["logprobs"]["token_logprobs"] for e in events if e["choices"][0]["logprobs"]), [])
    assert lps == pytest.approx(full["choices"][0]["logprobs"]["token_logprobs"], abs=1e-4)
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-1])


def test_chat_stream_equals_response(node):
    body = {"model": "smol", "messages": [{"role": "user", "content": "Write one line of C that prints \"hi\\n\"."}],
            "max_tokens": 24, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    st, full = post(node, "/v1/chat/completions", body)
    assert st == 200
    events = raw_stream(node, "/v1/chat/completions", dict(body, stream_options={"include_usage": True,
                                                                                "continuous_usage_stats": True}))
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == full["choices"][0]["message"]["content"]
    entries = sum((e["choices"][0]["logprobs"]["content"] for e in events if e["choices"] and
                   e["choices"][0]["logprobs"]), [])
    want = full["choices"][0]["logprobs"]["content"]
    assert [x["token"] for x in entries] == [x["token"] for x in want]
    assert [x["bytes"] for x in entries] == [list(x["token"].encode()) for x in entries]
    assert all(len(x["top_logprobs"]) == 2 for x in entries)
    # continuous usage on every chunk, counting up; the last one the totals
    usage = [e["usage"] for e in events]
    assert all(u["prompt_tokens"] == full["usage"]["prompt_tokens"] for u in usage)
    assert [u["completion_tokens"] for u in usage[:-1]] == sorted(u["completion_tokens"] for u in usage[:-1])
    assert events[-1]["choices"] == []
    assert usage[-1]["completion_tokens"] == full["usage"]["completion_tokens"]
    assert usage[-1]["prompt_tokens_details"] == {"cached_tokens": usage[-1]["prompt_tokens_details"]["cached_tokens"]}
    assert events[-2]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]


def test_stream_n_and_token_ids_as_strings(node):
    body = {"model": "smol", "prompt": ["One, two,", "A, B,"], "max_tokens": 6, "temperature": 0, "n": 2,
            "logprobs": 0, "return_tokens_as_token_ids": True}
    events = raw_stream(node, "/v1/completions", body)
    by_index = {}
    for e in events:
        c = e["choices"][0]
        by_index.setdefault(c["index"], []).append(c)
        if c["logprobs"]:
            assert all(t.startswith("token_id:") for t in c["logprobs"]["tokens"])
            assert all(list(top) == [t] for t, top in zip(c["logprobs"]["tokens"], c["logprobs"]["top_logprobs"]))
    assert sorted(by_index) == [0, 1, 2, 3]
    texts = ["".join(c["text"] for c in by_index[i]) for i in range(4)]
    assert texts[0] == texts[1] and texts[2] == texts[3]  # greedy: both samples agree
    assert all(by_index[i][-1]["finish_reason"] == "length" for i in range(4))


def test_stop_string_reason_in_stream(node):
    st, full = post(node, "/v1/completions", {"model": "smol", "prompt": "The capital of France is", "max_tokens": 16,
                                              "temperature": 0})
    word = full["choices"][0]["text"].split()[1]
    events = raw_stream(node, "/v1/completions", {"model": "smol", "prompt": "The capital of France is",
                                                  "max_tokens": 16, "temperature": 0, "stop": [word]})
    last = events[-1]["choices"][0]
    assert last["finish_reason"] == "stop" and last["stop_reason"] == word
    assert word not in "".join(e["choices"][0]["text"] for e in events)


# ---- echo with max_tokens 0 ----

def test_echo_max_tokens_zero(node):
    c = client(node)
    gen0 = wait_idle(node.url).get("vllm:generation_tokens_total", 0)
    ids = c.completions.create(model="smol", prompt="Hello world", max_tokens=1, echo=True)
    # the answer can reach us before the engine's end-of-step bookkeeping (blocks let go,
    # counters): wait for the counter to include this request's token, then for idle
    for _ in range(600):
        if metric(node, "vllm:generation_tokens_total") >= gen0 + ids.usage.completion_tokens:
            break
        time.sleep(0.05)
    wait_idle(node.url)
    free = metric(node, "pdserve:kv_free_blocks")
    gen = metric(node, "vllm:generation_tokens_total")
    r = c.completions.create(model="smol", prompt="Echo me, \"please\"\n", max_tokens=0, echo=True)
    assert r.choices[0].text == "Echo me, \"please\"\n"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens
    # token ids, several prompts, n
    tok = json.loads(urllib.request.urlopen(urllib.request.Request(
        node.url + "/tokenize", data=json.dumps({"prompt": "Hello world"}).encode(),
        headers={"Content-Type": "application/json"})).read())["tokens"]
    r = c.completions.create(model="smol", prompt=[tok, "Bye"], max_tokens=0, echo=True, n=2)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text and r.choices[0].text.endswith("Hello world")
    assert ids.choices[0].text.startswith(r.choices[0].text)
    assert r.choices[2].text == r.choices[3].text == "Bye"
    assert r.usage.completion_tokens == 0
    # streamed: one chunk per choice with the prompt, then usage and [DONE]
    chunks = list(c.completions.create(model="smol", prompt="Stream me", max_tokens=0, echo=True, stream=True,
                                       stream_options={"include_usage": True}))
    assert [ch.choices[0].text for ch in chunks[:-1]] == ["Stream me"]
    assert chunks[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 0
    assert chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens
    # nothing ran in the engine, nothing is held
    assert metric(node, "pdserve:kv_free_blocks") == free
    assert metric(node, "vllm:generation_tokens_total") == gen


def test_max_tokens_zero_refusals(node):
    c = client(node)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="smol", prompt="Hi", max_tokens=0)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:  # the prompt's logprobs need a prefill
        c.completions.create(model="smol", prompt="Hi", max_tokens=0, echo=True, logprobs=1)
    assert e.value.body["param"] == "logprobs" and "not supported yet" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:  # chat never takes 0
        c.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=0)
    assert e.value.body["param"] == "max_tokens"
    # still serving
    assert c.completions.create(model="smol", prompt="Hi", max_tokens=2).usage.completion_tokens == 2
