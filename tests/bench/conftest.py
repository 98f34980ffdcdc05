"""Fixtures for pdserve-bench tests: the binary, a scripted fake server, a runner."""
import json
import os
import pathlib
import subprocess
import sys
import urllib.request

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FAKE = HERE / "fake_openai.py"


def bench_binary():
    env = os.environ.get("PDSERVE_BENCH")
    if env:
        return pathlib.Path(env)
    for cand in (ROOT / "build" / "bench" / "pdserve-bench",):
        if cand.exists():
            return cand
    return None


@pytest.fixture(scope="session")
def bench_bin():
    b = bench_binary()
    if b is None or not b.exists():
        pytest.skip("pdserve-bench not built (set PDSERVE_BENCH or build into build/)")
    return b


class FakeServer:
    def __init__(self, script, tmp_path):
        self.script_path = tmp_path / ("script-%d.json" % id(self))
        self.script_path.write_text(json.dumps(script))
        self.proc = subprocess.Popen([sys.executable, str(FAKE), "--port", "0", "--script",
                                      str(self.script_path)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError("fake server did not start: %r %s" % (line, self.proc.stderr.read()))
        self.port = int(line.split()[1])
        self.url = "http://127.0.0.1:%d" % self.port

    def stats(self):
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def fake(tmp_path):
    servers = []

    def start(script=None):
        s = FakeServer(script or {}, tmp_path)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


class Result:
    def __init__(self, proc, data, out_dir):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.data = data
        self.out_dir = out_dir


@pytest.fixture
def run_bench(bench_bin, tmp_path):
    counter = [0]

    def run(base_url, *args, save=True, timeout=120, env=None):
        counter[0] += 1
        out_dir = tmp_path / ("out%d" % counter[0])
        cmd = [str(bench_bin), "--base-url", base_url, "--ready-check-timeout-sec", "0",
               "--disable-tqdm"]
        if save:
            cmd += ["--save-result", "--save-detailed", "--result-dir", str(out_dir),
                    "--result-filename", "r.json"]
        cmd += [str(a) for a in args]
        e = dict(os.environ)
        e.pop("OPENAI_API_KEY", None)
        if env:
            e.update(env)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
        data = None
        if save and (out_dir / "r.json").exists():
            data = json.loads((out_dir / "r.json").read_text())
        return Result(proc, data, out_dir)

    return run
