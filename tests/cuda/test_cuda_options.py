"""The CUDA executor options on a node without a GPU (the CPU backend): the graph
options (--enforce-eager, -O, --compilation-config, --max-seq-len-to-capture) are
accepted and leave the CPU path as it was, and --kv-cache-dtype fp8 is refused at
start-up with a clear "not supported yet" (fp8 KV caches exist on CUDA only)."""
import json
import subprocess
import urllib.request

import pytest

from pdtest import NODE_ARGS, binary, free_port, start_node


def complete(node, prompt="The capital of France is"):
    body = json.dumps({"model": node_model(node), "prompt": prompt, "max_tokens": 4,
                       "temperature": 0}).encode()
    req = urllib.request.Request(node.url + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["choices"][0]["text"]


def node_model(node):
    with urllib.request.urlopen(node.url + "/v1/models", timeout=10) as r:
        return json.loads(r.read())["data"][0]["id"]


_reference = {}


@pytest.mark.parametrize("extra", [
    [],
    ["--enforce-eager", "--max-seq-len-to-capture", "1024", "--calculate-kv-scales"],
    ["-O0"],
    ["--compilation-config", '{"level": 3, "cudagraph_mode": "NONE", "max_capture_size": 8}'],
], ids=["default", "eager", "O0", "compilation-config"])
def test_graph_options_accepted_on_cpu(tmp_path_factory, model_path, extra):
    node = start_node(tmp_path_factory, model_path, ["--device", "cpu"] + extra)
    try:
        text = complete(node)
    finally:
        node.stop()
    assert isinstance(text, str) and text
    # greedy on the CPU backend: the graph options change nothing there
    if not extra:
        _reference["text"] = text
    elif "text" in _reference:
        assert text == _reference["text"]


@pytest.mark.parametrize("dtype", ["fp8", "fp8_e4m3", "fp8_e5m2"])
def test_fp8_kv_refused_on_cpu(model_path, dtype):
    port = free_port()
    r = subprocess.run([binary("pdserve-decode"), "--model", model_path, "--device", "cpu",
                        "--kv-cache-dtype", dtype, "--port", str(port)] + NODE_ARGS,
                       capture_output=True, timeout=120)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode != 0, out[-2000:]
    assert "not supported yet" in out and "kv-cache-dtype" in out, out[-2000:]


def test_bad_kv_dtype_refused_by_the_parser(model_path):
    r = subprocess.run([binary("pdserve-decode"), "--model", model_path, "--kv-cache-dtype", "int4"],
                       capture_output=True, timeout=60)
    assert r.returncode != 0
