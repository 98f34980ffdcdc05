"""Tokenizers for dummy-weight models (issue #3: "tokenizers for dummy models come from the
default model or a test tokenizer"), through the real node:

  --tokenizer FILE.gguf         the tokenizer.* metadata of a GGUF (the default model's),
                                its chat template and special tokens included
  --tokenizer DIR/tokenizer.json  a test tokenizer file
  --tokenizer org/name            a model id in the Hugging Face cache layout, with
                                  --download-dir and --tokenizer-revision

The ids from /tokenize equal Hugging Face `tokenizers` loaded from the same files.
"""
import json
import os
import subprocess
import tarfile
import urllib.request

import pytest

from pdtest import ROOT, binary, start_node, post_json

tokenizers = pytest.importorskip("tokenizers")

CONFIG = os.path.join(ROOT, "configs", "models", "smollm2-135m")
TEXT = "Hello world! Ünïcödé 你好 🙂 <|im_start|>user\n  def f(x): return x**2\t\t12345"


def unpack(name, dest):
    with tarfile.open(os.path.join(ROOT, "tests", "data", "tokenizers", name + ".tar.xz")) as tar:
        tar.extractall(dest, filter="data")
    return dest


def dummy_node(tmp_path_factory, extra):
    return start_node(tmp_path_factory, CONFIG, ["--load-format", "dummy", "--max-model-len", "512",
                                                 *extra])


def test_tokenizer_from_the_default_models_gguf(tmp_path_factory, model_path):
    hf = tokenizers.Tokenizer.from_file(str(unpack("smollm2", tmp_path_factory.mktemp("smol")) /
                                            "tokenizer.json"))
    node = dummy_node(tmp_path_factory, ["--tokenizer", model_path])
    try:
        got = post_json(node, "/tokenize", {"prompt": TEXT, "add_special_tokens": False})["tokens"]
        assert got == hf.encode(TEXT, add_special_tokens=False).ids
        # the GGUF's chat template and special tokens came along: chat works
        r = post_json(node, "/v1/chat/completions", {"model": post_models(node), "max_tokens": 2,
                                                 "messages": [{"role": "user", "content": "hi"}]})
        want = hf.encode("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                         "Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
                         add_special_tokens=False).ids
        assert r["usage"]["prompt_tokens"] == len(want)
    finally:
        assert node.stop() == 0


def post_models(node):
    with urllib.request.urlopen(node.url + "/v1/models", timeout=30) as r:
        return json.loads(r.read())["data"][0]["id"]


def test_tokenizer_json_file(tmp_path_factory):
    d = unpack("llama3", tmp_path_factory.mktemp("l3"))
    hf = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    # the Llama 3 vocabulary is larger than the 135M shape's: ids past the model's
    # vocabulary are refused per request, the tokenizer itself is what is checked here
    node = dummy_node(tmp_path_factory, ["--tokenizer", str(d / "tokenizer.json")])
    try:
        got = post_json(node, "/tokenize", {"prompt": TEXT, "add_special_tokens": True})["tokens"]
        assert got == hf.encode(TEXT, add_special_tokens=True).ids
    finally:
        assert node.stop() == 0


def test_tokenizer_model_id_in_cache(tmp_path_factory):
    hub = tmp_path_factory.mktemp("hub")
    repo = hub / "models--testorg--tok"
    for rev in ("aaaa1111", "bbbb2222"):
        unpack("smollm2" if rev == "aaaa1111" else "qwen3", repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("aaaa1111")
    for rev, name in ((None, "smollm2"), ("bbbb2222", "qwen3")):
        hf = tokenizers.Tokenizer.from_file(str(repo / "snapshots" / ("bbbb2222" if rev else "aaaa1111") /
                                                "tokenizer.json"))
        extra = ["--tokenizer", "testorg/tok", "--download-dir", str(hub)]
        if rev:
            extra += ["--tokenizer-revision", rev]
        node = dummy_node(tmp_path_factory, extra)
        try:
            text = "plain words only, to stay inside the dummy vocabulary"
            got = post_json(node, "/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"]
            assert got == hf.encode(text, add_special_tokens=False).ids, name
        finally:
            assert node.stop() == 0


def test_gguf_without_tokenizer_refused(tmp_path):
    bad = tmp_path / "notok.gguf"
    # a valid GGUF header with no keys and no tensors
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") * 2)
    r = subprocess.run([binary("pdserve-decode"), "--model", CONFIG, "--load-format", "dummy",
                        "--tokenizer", str(bad), "--port", "0"], capture_output=True, timeout=60)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1 and "has no tokenizer.ggml.tokens" in err, err[-2000:]
