"""scripts/gpu_cluster.sh (the two-GPU goodput benchmark) and its helper.

- the report helper (bench/scripts/gpu_cluster.py) on hand-made result files: goodput,
  SLO attainment at other SLO scales, the interpolated knee, the KV-transfer share, the
  --slo recomputation;
- the whole script on the CPU: `gpu_cluster.sh smoke build` stages the binaries and
  libraries (checking the < 30 MiB limit and that every library resolves from the staged
  folder) and runs the GPU flow with a small dummy model: NcclConnector is tried first and
  fails without a GPU, the script falls back to UcxConnector, checks KV really moved, runs
  both workloads on 1p1d and on two replicas and prints the table.
"""
import importlib.util
import json
import os
import pathlib
import random
import shutil
import socket
import subprocess

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SCRIPT = ROOT / "scripts" / "gpu_cluster.sh"
HELPER = ROOT / "bench" / "scripts" / "gpu_cluster.py"
BUILD = pathlib.Path(os.environ.get("PDSERVE_BUILD_DIR", ROOT / "build"))


def helper():
    spec = importlib.util.spec_from_file_location("gpu_cluster_helper", HELPER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rate_meeting_interpolates_the_knee():
    h = helper()
    # 100% at 1, 95% at 2, 70% at 3: passes at 2, crosses 90% a fifth of the way to 3
    best, interp = h.rate_meeting([(1, 1.0), (2, 0.95), (3, 0.7)])
    assert best == 2
    assert interp == pytest.approx(2.2)
    assert h.rate_meeting([(1, 0.5), (2, 0.2)]) == (None, None)
    # the highest tested rate passes: the knee is beyond the sweep, no extrapolation
    assert h.rate_meeting([(1, 1.0), (2, 0.91)]) == (2, 2)
    # not monotonic: the highest passing rate counts
    assert h.rate_meeting([(1, 0.8), (2, 0.95), (3, 0.5)])[0] == 2


def write_result(path, ttfts, e2els, outs, slo, duration, kinds=None):
    n = len(ttfts)
    kinds = kinds or ["none"] * n
    done = sum(k == "none" for k in kinds)
    good = 0
    for t, e, o, k in zip(ttfts, e2els, outs, kinds):
        tpot = (e - t) / (o - 1) if o > 1 else 0
        good += k == "none" and t * 1e3 <= slo["ttft"] and tpot * 1e3 <= slo["tpot"]
    path.write_text(json.dumps({
        "num_prompts": n, "completed": done, "failed": n - done, "duration": duration,
        "request_throughput": done / duration, "request_goodput": good / duration,
        "slo_attainment": good / n, "goodput_slo_ms": slo, "p90_ttft_ms": 1e3 * max(ttfts),
        "p90_tpot_ms": 10.0, "mean_e2el_ms": 1e3 * sum(e2els) / n, "output_throughput": 1.0,
        "ttfts": ttfts, "e2els": e2els, "output_lens": outs,
        "errors": ["" if k == "none" else "x" for k in kinds], "error_kinds": kinds}))


def write_metrics(path, xfer_s, pulls, nbytes, fails=0):
    path.write_text(
        "# HELP vllm:nixl_xfer_time_seconds x\n"
        f'vllm:nixl_xfer_time_seconds{{model_name="m"}} {xfer_s}\n'
        f'pdserve:kv_transfers_total{{model_name="m"}} {pulls}\n'
        f'vllm:nixl_bytes_transferred{{model_name="m"}} {nbytes}\n'
        f'pdserve:kv_load_failures_total{{policy="recompute"}} {fails}\n'
        f'pdserve:kv_load_failures_total{{policy="fail"}} 0\n'
        f'vllm:e2e_request_latency_seconds_sum{{model_name="m"}} {10 * xfer_s + 1}\n')


def test_report_from_result_files(tmp_path):
    slo = {"ttft": 1000, "tpot": 25}
    res = tmp_path / "results"
    res.mkdir()
    lines = []
    # 1p1d: every request good at rate 1 and 2, 3 of 10 fail the TTFT SLO at rate 4;
    # KV moving took 0.5 s of 10 requests x 2 s; metrics of the decode node before/after
    # 2rep: good at rate 1, half the requests miss TPOT at rate 2 (and one failed)
    for setup, rate, ttft, e2el, kinds in (
            ("1p1d", 1, [0.5] * 10, [2.0] * 10, None),
            ("1p1d", 2, [0.6] * 10, [2.0] * 10, None),
            ("1p1d", 4, [0.6] * 7 + [1.5] * 3, [2.0] * 10, None),
            ("2rep", 1, [0.3] * 10, [2.0] * 10, None),
            ("2rep", 2, [0.3] * 10, [2.0] * 5 + [9.0] * 5, ["none"] * 9 + ["http"]),
            ("2rep", 4, [0.3] * 10, [9.0] * 10, None)):
        name = f"{setup}-ph-{rate}"
        write_result(res / f"{name}.json", ttft, e2el, [200] * 10, slo, duration=10.0 / rate, kinds=kinds)
        m0, m1 = tmp_path / f"{name}.m0.0", tmp_path / f"{name}.m1.0"
        if setup == "1p1d":
            write_metrics(m0, 3.0, 7, 1000)
            write_metrics(m1, 3.5, 17, 1000 + 10 * 2**20)
        else:
            write_metrics(m0, 0, 0, 0)
            write_metrics(m1, 0, 0, 0)
        lines.append("\t".join([setup, "ph", str(rate), "0", str(res / f"{name}.json"), str(m0), str(m1)]))
    (tmp_path / "runs.tsv").write_text("\n".join(lines) + "\n")
    out = subprocess.run(["python3", str(HELPER), "report", str(tmp_path), "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    runs = {(r["setup"], r["rate"]): r for r in rep["runs"]}
    assert runs[("1p1d", 4)]["attain"] == pytest.approx(0.7)
    # the 2rep rate-2 run: 5 good of 10 (the failed one is never good)
    assert runs[("2rep", 2)]["attain"] == pytest.approx(0.5)
    # KV share: 0.5 s of moving over 10 requests x 2 s of request time
    assert runs[("1p1d", 1)]["kv_share"] == pytest.approx(0.025)
    assert runs[("1p1d", 1)]["kv_ms_per_pull"] == pytest.approx(50.0)
    assert runs[("2rep", 1)]["kv_share"] is None
    # SLOs scaled by 2: the 1.5 s TTFTs pass at rate 4
    assert runs[("1p1d", 4)]["attain_x2.0"] == pytest.approx(1.0)
    summ = {(s["workload"], s["setup"]): s for s in rep["summary"]}
    # 1p1d: passes at 2, 0.7 at 4: the knee at 2 + 2 * (1.0 - 0.9) / (1.0 - 0.7)
    assert summ[("ph", "1p1d")]["goodput_rate"] == 2
    assert summ[("ph", "1p1d")]["goodput_rate_interp"] == pytest.approx(2 + 2 * 0.1 / 0.3)
    assert summ[("ph", "2rep")]["goodput_rate_interp"] == pytest.approx(1 + 0.1 / 0.5)
    assert "1p1d / 2rep goodput ratio: %.2fx" % ((2 + 2 / 3) / 1.2) in out.stdout
    # other SLOs from the saved per-request figures: TPOT 50 ms lets 2rep's 9 s requests pass
    out = subprocess.run(["python3", str(HELPER), "report", str(tmp_path), "--json", str(tmp_path / "r2.json"),
                          "--slo", "ph=ttft:1000,tpot:50"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rep2 = json.loads((tmp_path / "r2.json").read_text())
    runs2 = {(r["setup"], r["rate"]): r for r in rep2["runs"]}
    assert runs2[("2rep", 4)]["attain"] == pytest.approx(1.0)
    assert runs2[("2rep", 2)]["attain"] == pytest.approx(0.9)
    assert runs2[("2rep", 4)]["goodput"] == pytest.approx(4.0)


def test_kvcheck(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_metrics(a, 1.0, 1, 100)
    write_metrics(b, 1.2, 2, 4196)
    write_metrics(c, 1.2, 2, 4196, fails=1)
    run = lambda x, y: subprocess.run(["python3", str(HELPER), "kvcheck", str(x), str(y)],
                                      capture_output=True, text=True, timeout=30)
    r = run(a, b)
    assert r.returncode == 0 and "4096 bytes pulled" in r.stdout
    assert run(a, a).returncode == 1  # nothing moved
    assert run(a, c).returncode == 1  # a load failed (recomputed)


def free_port_block(span=13):
    for _ in range(100):
        base = random.randint(20000, 60000)
        socks = []
        try:
            for k in range(span):
                s = socket.socket()
                s.bind(("127.0.0.1", base + k))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    pytest.skip("no free port block")


def test_cpu_smoke(tmp_path):
    for b in ("prefill/pdserve-prefill", "decode/pdserve-decode", "proxy/pdserve-proxy", "bench/pdserve-bench"):
        if not (BUILD / b).exists():
            pytest.skip(f"{BUILD / b} is not built")
    for tool in ("strip", "ldd", "xz"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    # a budget no loaded CI box reaches: runs must not be skipped for time here (the
    # skipping itself is the budget's business, not what this test checks)
    env = dict(os.environ, OUT=str(tmp_path / "out"), TMPDIR=str(tmp_path),
               GP_PROXY_PORT=str(free_port_block()), GP_BUDGET_S="1200", GP_LOAD_TIMEOUT_S="240")
    r = subprocess.run(["bash", str(SCRIPT), "smoke", str(BUILD)], capture_output=True, text=True,
                       timeout=1500, env=env)
    out = tmp_path / "out"
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "staged" in r.stdout and "KiB" in r.stdout
    # NcclConnector cannot start without a GPU: the script fell back and said so
    assert (out / "connector.txt").read_text().strip() == "UcxConnector:sm,self"
    assert "start-1p1d-NcclConnector" in r.stdout and "FAIL" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    runs = rep["runs"]
    assert {(x["setup"], x["workload"]) for x in runs} == {
        ("1p1d", "ph"), ("1p1d", "bal"), ("2rep", "ph"), ("2rep", "bal")}
    for x in runs:
        assert x["rc"] == 0 and x["failed"] == 0 and x["completed"] == 3, x
        # fresh prompts in every run: nothing comes from a node's prefix cache
        assert x["prefix_hit"] == 0, x
        if x["setup"] == "1p1d":
            # every request's KV moved (the prompts span whole blocks), none recomputed
            assert x["kv_pulls"] >= 3 and x["kv_bytes"] > 0 and x["kv_fail"] == 0, x
            assert 0 < x["kv_share"] < 1
        else:
            assert x["kv_pulls"] == 0
    # the unloaded runs: 2 prefill-heavy and 1 balanced request per setup, one at a time
    solo = {(x["setup"], x["workload"]): x for x in rep["solo"]}
    assert set(solo) == {("1p1d", "ph"), ("1p1d", "bal"), ("2rep", "ph"), ("2rep", "bal")}
    for (setup, wl), x in solo.items():
        assert x["rc"] == 0 and x["completed"] == (2 if wl == "ph" else 1) and x["mean_ttft"] > 0, x
    assert "SKIP" not in r.stdout
    # the table comes last, and no process outlives the script
    assert r.stdout.rstrip().splitlines()[-1].startswith("total ")
    for pid in (out / "pids").read_text().split():
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split(") ")[-1][:1] == "Z", pid
    # nothing left in TMPDIR but what the test made (the unpacked libraries are removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("cfg", ["replica-gpu", "decode-gpu1", "prefill-gpu0"])
def test_gpu_cluster_configs_start(tmp_path, cfg):
    """configs/cluster/*gpu*.yaml load and serve, moved onto the CPU from the command
    line (which wins over the file): a small model with the Llama 3 vocabulary in place
    of the 8B shape, the Llama 3 tokenizer where the file says it is."""
    import sys
    sys.path.insert(0, str(ROOT / "tests"))
    from pdtest import binary, free_port, wait_http
    exe = binary("pdserve-prefill" if cfg.startswith("prefill") else "pdserve-decode")
    text = (ROOT / "configs" / "cluster" / f"{cfg}.yaml").read_text()
    # the folder the file names, made as its comment says
    assert "tokenizer: /tmp/pdserve-llama3-tokenizer" in text
    tok = tmp_path / "tok"
    tok.mkdir()
    subprocess.run(["tar", "xJf", str(ROOT / "tests/data/tokenizers/llama3.tar.xz"), "-C", str(tok)], check=True)
    model = tmp_path / "model"
    model.mkdir()
    c = json.loads((ROOT / "configs/models/smollm2-135m/config.json").read_text())
    c.update(vocab_size=128256, bos_token_id=128000, eos_token_id=128009, tie_word_embeddings=True)
    (model / "config.json").write_text(json.dumps(c))
    port = free_port()
    args = [exe, "--config", str(ROOT / "configs" / "cluster" / f"{cfg}.yaml"), "--model", str(model),
            "--tokenizer", str(tok), "--device", "cpu", "--max-model-len", "1024",
            "--num-gpu-blocks-override", "128", "--port", str(port)]
    if "kv-transfer-config" in text:
        args += ["--kv-transfer-config.kv_buffer_device", "cpu",
                 "--kv-transfer-config.kv_port", str(free_port())]
    log = open(tmp_path / "node.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc)
    except Exception:
        proc.kill()
        proc.wait()
        log.close()
        raise AssertionError((tmp_path / "node.log").read_text()[-3000:])
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
    # the file's load-format (dummy weights) and role took effect
    text_log = (tmp_path / "node.log").read_text()
    assert "dummy weights:" in text_log
    if "kv-transfer-config" in text:
        assert ("kv_producer" if cfg.startswith("prefill") else "kv_consumer") in text_log
