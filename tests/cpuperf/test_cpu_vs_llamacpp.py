"""Tests of bench/cpu_vs_llamacpp.py without the model or llama.cpp: a fake bench_engine
prints a JSON line; the script must parse it, print the table and its own JSON line, and
report the missing peer instead of failing.  Stdlib + pytest only."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.environ.get("PD_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "bench", "cpu_vs_llamacpp.py")
sys.path.insert(0, os.path.join(ROOT, "bench"))
import cpu_vs_llamacpp  # noqa: E402

FAKE = {"threads": 1, "mode": "fast", "reps": 1, "weight_bytes": 96576768, "memcpy_gbs": 9.6,
        "read_gbs": 9.7, "ceiling_memcpy_tok_s": 99.4, "ceiling_read_tok_s": 100.4,
        "decode_prompt": 16, "n_decode": 8,
        "prefill": [{"n": 32, "best": 250.0, "median": 240.0, "per_cpu_s": 230.0}],
        "decode": [{"batch": 1, "best": 80.0, "median": 79.0, "per_cpu_s": 85.0},
                   {"batch": 4, "best": 150.0, "median": 149.0, "per_cpu_s": 151.0}]}


def _bench_engine():
    path = os.environ.get("PD_BENCH_ENGINE") or os.path.join(ROOT, "build", "bench", "bench_engine")
    return path if os.access(path, os.X_OK) else None


def test_prompt_generator_matches_c():
    exe = _bench_engine()
    if exe is None:
        pytest.skip("bench_engine not built (set PD_BENCH_ENGINE)")
    for seed, n in ((1, 16), (999999, 64), (12345, 3)):
        p = subprocess.run([exe, "--print-prompt", str(seed), str(n)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert [int(t) for t in p.stdout.split()] == cpu_vs_llamacpp.make_prompt(seed, n)
    assert all(1000 <= t < 40000 for t in cpu_vs_llamacpp.make_prompt(7, 500))


def test_script_with_fake_bench(tmp_path):
    fake = tmp_path / "bench_engine"
    fake.write_text("#!/bin/sh\necho 'bench_engine: fake'\necho 'JSON %s'\n" % json.dumps(FAKE))
    fake.chmod(0o755)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    env = dict(os.environ, PYTHONPATH="")
    env.pop("LLAMA_CPP_LIB_PATH", None)
    # make llama_cpp unimportable whether or not it is installed
    (tmp_path / "llama_cpp.py").write_text("raise ImportError('hidden by the test')\n")
    env["PYTHONPATH"] = str(tmp_path)
    out = tmp_path / "out.json"
    p = subprocess.run([sys.executable, SCRIPT, "--bench", str(fake), "--model", str(model),
                        "--threads", "1", "--prefill", "32", "--decode", "8", "--batches", "1,4",
                        "--reps", "1", "--json", str(out)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "prefill 32" in p.stdout and "250.0" in p.stdout
    assert "hidden by the test" in p.stdout
    res = json.loads(out.read_text())
    rows = {r["case"]: r for r in res["rows"]}
    assert rows["prefill 32"]["pdserve"] == 250.0 and rows["prefill 32"]["llama_cpp"] is None
    assert rows["decode 8 b4"]["ceiling_read"] == pytest.approx(100.4 * 4)


def test_missing_model_skips(tmp_path):
    p = subprocess.run([sys.executable, SCRIPT, "--model", str(tmp_path / "none.gguf")],
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("SKIP")
