"""bench/bench_tokenizer (issue #3: "at least 10 MB/s of English text encoded on one core,
measured in a benchmark"; "the benchmarks print tokenizer throughput").

Runs the benchmark on 2 MB of its generated English for the four test tokenizers (Llama 2,
Llama 3, Qwen3, SmolLM2), one thread, and checks that it prints a table row and a JSON line
for each, with the encode speed per core (thread CPU time, so a busy machine does not make
it fail) at or above 10 MB/s.  Skipped when the benchmark is not built, and for sanitizer
builds (PD_SANITIZE in the CMake cache), whose speed is not the product's.
"""
import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
BUILD = pathlib.Path(os.environ.get("PD_BINARY_DIR") or os.environ.get("PDSERVE_BUILD_DIR") or ROOT / "build")


def test_tokenizer_throughput_printed_and_at_least_10_mb_s():
    exe = BUILD / "bench" / "bench_tokenizer"
    if not exe.exists():
        pytest.skip(f"{exe} is not built")
    cache = BUILD / "CMakeCache.txt"
    if cache.exists() and any(line.startswith("PD_SANITIZE") and line.split("=", 1)[1].strip()
                              for line in cache.read_text().splitlines()):
        pytest.skip("sanitizer build: speed is not meaningful")
    r = subprocess.run([str(exe), "--mb", "2"], capture_output=True, timeout=300,
                       env=dict(os.environ, PD_BINARY_DIR=str(BUILD)))
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    rows = {j["tokenizer"]: j for j in (json.loads(x) for x in out.splitlines() if x.startswith("{"))}
    assert sorted(rows) == ["llama2", "llama3", "qwen3", "smollm2"], out
    assert "enc MB/s core" in out.splitlines()[0]
    for name, j in rows.items():
        assert j["threads"] == 1 and 3.0 < j["bytes_per_token"] < 6.0, j
        assert j["encode_mb_s_per_core"] >= 10.0, f"{name}: {j['encode_mb_s_per_core']:.1f} MB/s per core"
