"""prompt_logprobs through a real pdserve-decode with the default model, as vLLM returns
them: completions (per choice) and chat (top level) carry a list with null for the first
prompt token, then {token_id: {logprob, rank, decoded_token}} with the prompt token first
and the top-N; echo + logprobs puts the prompt tokens in the completions logprobs; a
greedy continuation fed back as a prompt gets rank 1 and the logprobs it was sampled
with; the prefix cache does not change them."""
import json
import math
import urllib.request

import openai
import pytest

from pdtest import start_node


@pytest.fixture(scope="module")
def node(tmp_path_factory, model_path):
    n = start_node(tmp_path_factory, model_path, ["--served-model-name", "smol"])
    yield n
    assert n.stop() == 0


def client(node):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0)


def post(node, path, body):
    req = urllib.request.Request(node.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


PROMPT = "The quick brown fox jumps over the lazy dog because"


def prompt_ids(node, text=PROMPT):
    status, body = post(node, "/tokenize", {"model": "smol", "prompt": text})
    assert status == 200
    return body["tokens"]


def check_list(plp, ids, k):
    assert isinstance(plp, list) and len(plp) == len(ids)
    assert plp[0] is None
    for i in range(1, len(ids)):
        entry = plp[i]
        keys = list(entry)
        assert keys[0] == str(ids[i])            # the prompt token first
        assert 1 <= len(entry) <= k + 1
        ranks = sorted(v["rank"] for tid, v in entry.items() if tid != str(ids[i]) or v["rank"] <= k)
        for v in entry.values():
            assert v["logprob"] <= 1e-6 and v["rank"] >= 1 and isinstance(v["decoded_token"], str)
        # the top-k are ranks 1..k (the prompt token may be one of them)
        assert set(range(1, k + 1)) <= {v["rank"] for v in entry.values()}
        best = max(v["logprob"] for v in entry.values())
        assert any(v["rank"] == 1 and v["logprob"] == best for v in entry.values())
        assert ranks == sorted(ranks)


def test_completions_prompt_logprobs(node):
    ids = prompt_ids(node)
    r = client(node).completions.create(model="smol", prompt=PROMPT, max_tokens=2, temperature=0,
                                        extra_body={"prompt_logprobs": 2})
    d = r.model_dump()
    assert d["usage"]["prompt_tokens"] == len(ids)
    check_list(d["choices"][0]["prompt_logprobs"], ids, 2)
    # without the field: null
    d0 = client(node).completions.create(model="smol", prompt=PROMPT, max_tokens=2, temperature=0).model_dump()
    assert d0["choices"][0].get("prompt_logprobs") is None
    # again (the prompt is now in the prefix cache): the same numbers
    d2 = client(node).completions.create(model="smol", prompt=PROMPT, max_tokens=2, temperature=0,
                                         extra_body={"prompt_logprobs": 2}).model_dump()
    assert d2["choices"][0]["prompt_logprobs"] == d["choices"][0]["prompt_logprobs"]
    # prompt_logprobs 0: the prompt token only
    d3 = client(node).completions.create(model="smol", prompt=PROMPT, max_tokens=1, temperature=0,
                                         extra_body={"prompt_logprobs": 0}).model_dump()
    plp3 = d3["choices"][0]["prompt_logprobs"]
    assert all(len(e) == 1 for e in plp3[1:])
    for a, b in zip(plp3[1:], d["choices"][0]["prompt_logprobs"][1:]):
        tid = next(iter(a))
        assert abs(a[tid]["logprob"] - b[tid]["logprob"]) < 1e-5 and a[tid]["rank"] == b[tid]["rank"]


def test_several_prompts_and_n(node):
    texts = [PROMPT, "1, 2, 3, 4,"]
    r = client(node).completions.create(model="smol", prompt=texts, max_tokens=2, temperature=0.7, seed=1, n=2,
                                        extra_body={"prompt_logprobs": 1}).model_dump()
    assert len(r["choices"]) == 4
    for c in r["choices"]:
        ids = prompt_ids(node, texts[c["index"] // 2])
        check_list(c["prompt_logprobs"], ids, 1)


def test_chat_prompt_logprobs_top_level(node):
    r = client(node).chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi there"}],
                                             max_tokens=2, temperature=0, extra_body={"prompt_logprobs": 1})
    d = r.model_dump()
    plp = d["prompt_logprobs"]
    assert len(plp) == d["usage"]["prompt_tokens"] and plp[0] is None
    assert all(isinstance(e, dict) and 1 <= len(e) <= 2 for e in plp[1:])


def test_greedy_continuation_has_rank_one(node):
    """Generated tokens fed back as prompt: prompt logprobs = the sampler's logprobs."""
    ids = prompt_ids(node)
    g = client(node).completions.create(model="smol", prompt=ids, max_tokens=6, temperature=0, logprobs=0,
                                        extra_body={"return_tokens_as_token_ids": True}).model_dump()
    lp = g["choices"][0]["logprobs"]
    gen = [int(t.split(":")[1]) for t in lp["tokens"]]
    status, body = post(node, "/v1/completions", {"model": "smol", "prompt": ids + gen, "max_tokens": 1,
                                                  "temperature": 0, "prompt_logprobs": 1})
    assert status == 200
    plp = body["choices"][0]["prompt_logprobs"]
    for j, tok in enumerate(gen):
        e = plp[len(ids) + j][str(tok)]
        assert e["rank"] == 1
        assert abs(e["logprob"] - lp["token_logprobs"][j]) < 1e-4


def test_echo_with_logprobs(node):
    ids = prompt_ids(node)
    r = client(node).completions.create(model="smol", prompt=PROMPT, max_tokens=3, temperature=0, echo=True,
                                        logprobs=1).model_dump()
    c = r["choices"][0]
    lp = c["logprobs"]
    assert c["text"].startswith(PROMPT)
    assert len(lp["tokens"]) == len(ids) + 3
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    plp = c["prompt_logprobs"]
    for i in range(1, len(ids)):
        assert math.isclose(lp["token_logprobs"][i], plp[i][str(ids[i])]["logprob"], abs_tol=1e-6)
        assert lp["tokens"][i] in lp["top_logprobs"][i] and 1 <= len(lp["top_logprobs"][i]) <= 2
    # streamed: the echo chunk carries the prompt tokens' logprobs
    chunks = list(client(node).completions.create(model="smol", prompt=PROMPT, max_tokens=3, temperature=0,
                                                  echo=True, logprobs=1, stream=True))
    first = chunks[0].choices[0]
    assert first.text == PROMPT
    assert len(first.logprobs.tokens) == len(ids) and first.logprobs.token_logprobs[0] is None
    assert first.logprobs.token_logprobs[1:] == lp["token_logprobs"][1:len(ids)]


def test_stream_refuses_prompt_logprobs(node):
    with pytest.raises(openai.BadRequestError):
        client(node).completions.create(model="smol", prompt=PROMPT, max_tokens=2, stream=True,
                                        extra_body={"prompt_logprobs": 1})
