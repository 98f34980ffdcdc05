"""--generation-config against a real node (issue #3: generation_config.json,
--generation-config, --override-generation-config).

The default is None as in the vLLM of the seed option list: vLLM's own sampling defaults,
the file is not read ('vllm' says the same explicitly); 'auto' takes them from the model's
generation_config.json (for a GGUF file, the one beside it); a folder names another
generation_config.json.  A request's own values always win.  The model
is the default GGUF, linked into a temporary folder with a generation_config.json whose
max_new_tokens (the default max_tokens) is small enough to see.
"""
import json
import os

import openai
import pytest

from pdtest import start_node


def client(node):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model_path):
    d = tmp_path_factory.mktemp("genconf-model")
    os.symlink(model_path, d / os.path.basename(model_path))
    (d / "generation_config.json").write_text(json.dumps({"max_new_tokens": 3, "temperature": 0.0}))
    other = tmp_path_factory.mktemp("genconf-other")
    (other / "generation_config.json").write_text(json.dumps({"max_new_tokens": 5, "temperature": 0.0}))
    return d / os.path.basename(model_path), other


def usage_tokens(node, **extra):
    c = client(node)
    r = c.completions.create(model=c.models.list().data[0].id, prompt="Count: one, two,",
                             extra_body={"ignore_eos": True}, **extra)
    return r.usage.completion_tokens


@pytest.mark.parametrize("args,want", [([], 16),                                  # default: not read
                                       (["--generation-config", "auto"], 3),
                                       (["--generation-config", "vllm"], 16),    # completions default
                                       (["--generation-config", "FOLDER"], 5),
                                       (["--generation-config", "FOLDER",
                                         "--override-generation-config", '{"max_new_tokens": 2}'], 2)])
def test_generation_config_sources(tmp_path_factory, model_dir, args, want):
    gguf, other = model_dir
    args = [str(other) if a == "FOLDER" else a for a in args]
    node = start_node(tmp_path_factory, str(gguf), args)
    try:
        assert usage_tokens(node) == want
        assert usage_tokens(node, max_tokens=7) == 7  # the request's own value wins
    finally:
        assert node.stop() == 0


def test_missing_generation_config_folder_refused(tmp_path_factory, model_path, tmp_path):
    from pdtest import binary
    import subprocess
    r = subprocess.run([binary("pdserve-decode"), "--model", model_path, "--port", "0",
                        "--generation-config", str(tmp_path / "nope")], capture_output=True, timeout=60)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1 and "--generation-config: cannot read" in err, err[-2000:]
