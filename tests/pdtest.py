"""Shared pytest fixtures: where the build is, the default model, starting real node
processes on free ports and waiting until they serve."""
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("PDSERVE_BUILD_DIR", os.path.join(ROOT, "build"))


def binary(name):
    sub = {"pdserve-decode": "decode", "pdserve-prefill": "prefill", "pdserve-proxy": "proxy",
           "pdserve-bench": "bench"}[name]
    path = os.path.join(BUILD, sub, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not built")
    return path


def default_model():
    env = os.environ.get("PD_MODEL_GGUF")
    if env and os.path.exists(env):
        return env
    cache = os.environ.get("PDSERVE_CACHE", os.path.expanduser("~/.cache/pdserve"))
    path = os.path.join(cache, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=60.0, proc=None, ctx=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise TimeoutError(url)


def post_json(node, path, body, timeout=120):
    """POST body as JSON to a node; the decoded JSON answer (an HTTP error raises)."""
    import json
    req = urllib.request.Request(node.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def node_metrics(url):
    """A node's /metrics summed per metric name (labels folded)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def wait_idle(url, timeout=45.0):
    """Wait until a node runs, queues and (as a KV producer) holds nothing: earlier tests
    on a shared node may still be finishing.  Returns its metrics then."""
    deadline = time.time() + timeout
    while True:
        m = node_metrics(url)
        if (m.get("vllm:num_requests_running", 0) == 0 and m.get("vllm:num_requests_waiting", 0) == 0
                and m.get("pdserve:kv_held_requests", 0) == 0) or time.time() > deadline:
            return m
        time.sleep(0.1)


class Node:
    """A real pdserve node process."""

    def __init__(self, name, args, port, log_path, scheme="http"):
        self.port = port
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([binary(name)] + args + ["--port", str(port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def logtext(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


# small KV budget and one thread: fast start, CI-sized
NODE_ARGS = ["--cpu-threads", "1", "--cpu-kvcache-space", "0.25", "--max-model-len", "2048",
             "--disable-log-stats"]


@pytest.fixture(scope="session")
def model_path():
    m = default_model()
    if m is None:
        pytest.skip("the default model is not in the cache (run scripts/setup.sh)")
    return m


def start_node(tmp_path_factory, model, extra=(), name="pdserve-decode", scheme="http", ctx=None, wait=True):
    port = free_port()
    log = str(tmp_path_factory.mktemp("node") / "node.log")
    node = Node(name, ["--model", model] + NODE_ARGS + list(extra), port, log, scheme=scheme)
    if wait:
        try:
            wait_http(node.url + "/health", proc=node.proc, ctx=ctx)
        except Exception:
            node.stop()
            raise RuntimeError("node did not start:\n" + node.logtext()[-4000:])
    return node


@pytest.fixture(scope="session")
def decode_node(tmp_path_factory, model_path):
    node = start_node(tmp_path_factory, model_path, ["--served-model-name", "smol", "other-name"])
    yield node
    node.stop()


@pytest.fixture(scope="session")
def node_factory(tmp_path_factory, model_path):
    """start_node bound to the session's temp dirs and the default model:
    node_factory(extra_args, name="pdserve-decode") -> Node (stop it yourself)."""
    def make(extra=(), name="pdserve-decode", **kw):
        return start_node(tmp_path_factory, model_path, extra, name=name, **kw)
    return make
