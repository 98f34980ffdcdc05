"""--preemption-mode swap through a real pdserve-decode (CPU backend, default model): a KV
cache too small for the concurrent requests forces preemptions, which swap to
--swap-space; every response equals the same request run alone (greedy), the node
reports preemptions, and every KV block is free afterwards."""
import concurrent.futures
import json
import time
import urllib.request

import pytest

from pdtest import start_node

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a land far, far away, there lived a young dragon who",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "List three colors: red,",
]


def metric(node, name):
    with urllib.request.urlopen(node.url + "/metrics") as r:
        text = r.read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(name + "{") or l.startswith(name + " "))


def complete(node, prompt):
    body = {"model": "smol", "prompt": prompt, "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    req = urllib.request.Request(node.url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())["choices"][0]["text"]


@pytest.fixture(scope="module")
def node(tmp_path_factory, model_path):
    # 24 blocks of 16 tokens; 12 requests of ~60 tokens need 48: preemption
    n = start_node(tmp_path_factory, model_path, ["--served-model-name", "smol", "--max-model-len", "256",
                                                  "--num-gpu-blocks-override", "24", "--preemption-mode", "swap",
                                                  "--swap-space", "0.05", "--enable-prefix-caching"])
    yield n
    assert n.stop() == 0


def test_swap_preemption_keeps_outputs(node):
    alone = {p: complete(node, p) for p in PROMPTS}
    before = metric(node, "vllm:num_preemptions_total")
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        got = list(ex.map(lambda p: complete(node, p), prompts))
    assert got == [alone[p] for p in prompts]
    assert metric(node, "vllm:num_preemptions_total") > before
    deadline = time.time() + 30
    while metric(node, "pdserve:kv_free_blocks") != 24 and time.time() < deadline:
        time.sleep(0.1)
    assert metric(node, "pdserve:kv_free_blocks") == 24
    assert "swap space" in node.logtext()
