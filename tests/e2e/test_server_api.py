"""API pieces beyond the basics, against a real pdserve-decode with the default model:
bad_words, min_tokens holding back stop strings, completions top_logprobs with the
sampled token, `user`, the pooling endpoints' clear refusal, --max-log-len."""
import json

import openai
import pytest

from pdtest import start_node


@pytest.fixture(scope="module")
def node(tmp_path_factory, model_path):
    n = start_node(tmp_path_factory, model_path, ["--served-model-name", "smol", "--max-log-len", "5"])
    yield n
    assert n.stop() == 0


def client(node):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0)


PROMPT = "The capital of France is"


def greedy(node, **kw):
    return client(node).completions.create(model="smol", prompt=PROMPT, max_tokens=16, temperature=0, **kw)


def test_bad_words_are_never_generated(node):
    full = greedy(node).choices[0].text
    assert "Paris" in full
    r = greedy(node, extra_body={"bad_words": ["Paris"]})
    assert "Paris" not in r.choices[0].text
    assert r.choices[0].text != full
    # a word of several tokens: its last token is banned only after the others
    word = full.split()[1]
    r = greedy(node, extra_body={"bad_words": [word, "  " + word]})
    assert word not in r.choices[0].text


def test_min_tokens_holds_back_stop_strings(node):
    full = greedy(node).choices[0].text
    word = full.split()[0]  # in the first tokens
    assert greedy(node, stop=[word]).choices[0].text == full[:full.index(word)]
    r = greedy(node, stop=[word], extra_body={"min_tokens": 8})
    assert r.choices[0].text.startswith(full[:full.index(word) + len(word)])
    assert len(r.choices[0].text) > full.index(word)


def test_completion_top_logprobs_include_the_sampled_token(node):
    c = client(node)
    r = c.completions.create(model="smol", prompt=PROMPT, max_tokens=12, temperature=1.5, seed=7, logprobs=0)
    lp = r.choices[0].logprobs
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top == {tok: l}
    r = c.completions.create(model="smol", prompt=PROMPT, max_tokens=12, temperature=1.5, seed=7, logprobs=1)
    lp = r.choices[0].logprobs
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert tok in top and top[tok] == l and 1 <= len(top) <= 2


def test_user_field_accepted(node):
    r = client(node).chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=2, user="someone")
    assert r.usage.completion_tokens >= 1


def test_pooling_endpoints_refused_clearly(node):
    with pytest.raises(openai.BadRequestError) as e:
        client(node).embeddings.create(model="smol", input="hello")
    assert "not supported yet" in str(e.value) and "embed" in str(e.value)


def test_max_log_len_cuts_the_logged_prompt(node):
    secret = "ZYXWVUTSRQ" * 10
    client(node).completions.create(model="smol", prompt=secret, max_tokens=1)
    log = node.logtext()
    assert "prompt: 'ZYXWV'..." in log
    assert secret[:6] not in log
    line = [l for l in log.splitlines() if "prompt: 'ZYXWV'" in l][0]
    ids = line.split("prompt_token_ids: [")[1].split("]")[0].split(", ")
    assert len(ids) == 6 and ids[-1] == "..."
