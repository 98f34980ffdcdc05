"""README's two commands for a fresh machine.

The first one, scripts/run_cluster.sh, is run for real: setup (its package steps skipped:
they are the job of CI's scripts/setup.sh run; the model step runs and must find the
cache), the local 1P1D cluster with the default model on free ports, one chat completion
through the proxy with the official openai client, then Ctrl-C, after which nothing may
still listen.  The second one (scripts/setup.sh && scripts/test.sh) runs the whole suite,
this file included; .ci/run runs it, and here we only check that README, .ci/run and the
scripts agree on it.
"""
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from pdtest import BUILD, ROOT, binary, default_model, free_port


def readme_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_readme_names_two_commands_that_exist():
    cmds = readme_commands()
    assert cmds == ["scripts/run_cluster.sh", "scripts/setup.sh && scripts/test.sh"]
    for script in ["scripts/run_cluster.sh", "scripts/setup.sh", "scripts/test.sh", ".ci/run"]:
        assert os.access(os.path.join(ROOT, script), os.X_OK), script
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    # CI runs the README's test command: setup, then the test runner
    assert ci.index("scripts/setup.sh") < ci.index("scripts/test.sh")


def listening(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_run_cluster_serves_a_chat_completion(tmp_path):
    openai = pytest.importorskip("openai")
    model = default_model()
    if model is None:
        pytest.skip("the default model is not in the cache (run scripts/setup.sh)")
    for name in ["pdserve-decode", "pdserve-prefill", "pdserve-proxy"]:
        binary(name)
    proxy, prefill, decode, kv = free_port(), free_port(), free_port(), free_port()
    env = dict(os.environ, BUILD_DIR=BUILD, PROXY_PORT=str(proxy), PREFILL_PORT=str(prefill),
               DECODE_PORT=str(decode), KV_PORT=str(kv), PDSERVE_SKIP_APT="1", PDSERVE_SKIP_PIP="1",
               NODE_ARGS="--max-model-len 2048 --cpu-kvcache-space 0.25 --cpu-threads 1 --disable-log-stats")
    cache_model = os.path.join(os.environ.get("PDSERVE_CACHE", os.path.expanduser("~/.cache/pdserve")), "models",
                               "SmolLM2-135M-Instruct.Q4_1.gguf")
    in_cache = os.path.exists(cache_model)
    if not in_cache:
        # PD_MODEL_GGUF elsewhere: the README's default name would not find it, and setup
        # must not go fetching it
        env.update(MODEL=model, PDSERVE_SKIP_MODEL="1")
    log_path = tmp_path / "cluster.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(["bash", os.path.join(ROOT, "scripts", "run_cluster.sh")], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def output():
        return log_path.read_text(errors="replace")

    try:
        deadline = time.time() + 240
        while "pdserve cluster is up" not in output():
            assert proc.poll() is None, "run_cluster.sh exited:\n" + output()[-4000:]
            assert time.time() < deadline, "cluster did not come up:\n" + output()[-4000:]
            time.sleep(0.2)
        if in_cache:
            assert "setup: default model:" in output()  # setup ran and found the cache
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy}/v1", api_key="none", timeout=120)
        served = client.models.list().data[0].id
        r = client.chat.completions.create(model=served, max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert r.choices[0].message.content.strip() != ""
        assert r.usage.completion_tokens >= 1
        # both nodes took part: the prefill node computed a prompt, the decode node decoded
        with urllib.request.urlopen(f"http://127.0.0.1:{prefill}/metrics", timeout=10) as m:
            assert re.search(r"^vllm:prompt_tokens_total(\{[^}]*\})? [1-9]", m.read().decode(), re.M)
        # Ctrl-C stops everything
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) is not None
        deadline = time.time() + 30
        while any(listening(p) for p in (proxy, prefill, decode)) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(listening(p) for p in (proxy, prefill, decode)), output()[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the script's own process group only
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
