"""pdserve-bench against a real pdserve-decode node with the default model (issue 9's
"Done when": it runs against a single node, prints the table, writes JSON and plots).

Checked against what the node itself counted (its /metrics histograms): every request
the bench reports arrived with exactly the prompt length the bench recorded (the random
dataset's lengths are made exact through the node's /tokenize) and generated exactly
the asked output length (ignore_eos); the sweep's runs used different prompts (the
node's prefix cache found none of a later run's prompt in it); the table, the result
JSONs, the CDF and sweep charts exist.  Skips when the node binary or the default model
is missing.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

# ctest runs this folder from the build tree, where tests/conftest.py (which puts
# tests/ on the path) is not loaded: import the shared helpers by path.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import pdtest  # noqa: E402


def test_bench_against_a_real_node(bench_bin, tmp_path_factory, tmp_path):
    if "PDSERVE_BUILD_DIR" not in os.environ:
        pdtest.BUILD = str(pathlib.Path(bench_bin).resolve().parents[1])  # the bench's build
    pdtest.binary("pdserve-decode")           # skips when it is not built
    model = pdtest.default_model()
    if model is None:
        pytest.skip("the default model is not in the cache (run scripts/setup.sh)")
    node = pdtest.start_node(tmp_path_factory, model)
    wait_idle = pdtest.wait_idle
    try:
        out = tmp_path / "res"
        before = wait_idle(node.url)
        p = subprocess.run([str(bench_bin), "--base-url", node.url, "--num-prompts", "4",
                            "--request-rate", "20,inf", "--random-input-len", "40",
                            "--random-range-ratio", "0.5", "--random-output-len", "6",
                            "--ready-check-timeout-sec", "0", "--disable-tqdm",
                            "--goodput", "ttft:60000", "--save-result", "--save-detailed",
                            "--result-dir", str(out), "--plot", "--seed", "4"],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        after = wait_idle(node.url)
    finally:
        node.stop()
    assert "============ Serving Benchmark Result ============" in p.stdout
    assert "Sweep Summary" in p.stdout and "(exact lengths)" in p.stderr
    runs = [json.loads(f.read_text()) for f in sorted(out.glob("*qps*.json"))]
    assert len(runs) == 2
    assert all(d["completed"] == 4 and d["failed"] == 0 for d in runs)
    lens = [x for d in runs for x in d["input_lens"]]
    outs = [x for d in runs for x in d["output_lens"]]
    assert all(20 <= x <= 60 for x in lens) and len(set(lens)) > 2

    def delta(name):
        return after.get(name, 0.0) - before.get(name, 0.0)
    assert delta("vllm:request_prompt_tokens_count") == 8
    assert delta("vllm:request_prompt_tokens_sum") == sum(lens)
    assert delta("vllm:request_generation_tokens_sum") == sum(outs)
    assert all(3 <= x <= 9 for x in outs)       # 6 with range ratio 0.5, all generated
    # random token prompts share no block: no prefix cache hit within or across the runs
    assert delta("vllm:prefix_cache_hits") == 0
    sweep = json.loads(next(out.glob("*sweep.json")).read_text())
    assert [r["request_rate"] for r in sweep["runs"]] == [20, "inf"]
    if shutil.which("gnuplot"):
        pngs = sorted(x.name for x in out.glob("*.png"))
        assert sum(x.endswith("cdf.png") for x in pngs) == 2 and any(
            x.endswith("sweep.png") for x in pngs), pngs
