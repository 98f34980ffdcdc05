#!/usr/bin/env python3
"""Side-by-side: pdserve-bench and guidellm against the same scripted fake server.

Each tool gets a fresh fake server (tests/bench/fake_openai.py) with the same script,
so request i of either run has the same scripted TTFT, ITL and output length.  The
script prints the figures each tool reports beside the values computed from the
script, and what the server saw (prompt lengths in the server's own tokenizer).

guidellm is optional and never needed by CI.  It runs offline when given a local
tokenizer directory (HF_HUB_OFFLINE=1; --tokenizer DIR with tokenizer.json).

usage: vs_guidellm.py --bench build/bench/pdserve-bench --guidellm /path/to/guidellm \
                      --tokenizer DIR [--num 40] [--rate 5]
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
FAKE = HERE.parent.parent / "tests" / "bench" / "fake_openai.py"

SCRIPT = {"ttft_ms": [40, 80, 60, 120], "itl_ms": [5, 15, 10], "output_tokens": None}


def start_fake(tmp, script):
    p = tmp / ("script%f.json" % time.time())
    p.write_text(json.dumps(script))
    proc = subprocess.Popen([sys.executable, str(FAKE), "--port", "0", "--script", str(p)],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().split()[1])
    return proc, "http://127.0.0.1:%d" % port


def stats(url):
    with urllib.request.urlopen(url + "/stats") as r:
        return json.loads(r.read())


def pct(v, p):
    a = sorted(v)
    i = p / 100 * (len(a) - 1)
    lo, hi = int(i), min(int(i) + 1, len(a) - 1)
    return a[lo] + (a[hi] - a[lo]) * (i - lo)


def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True)
    ap.add_argument("--guidellm", default=None)
    ap.add_argument("--tokenizer", default=None, help="local HF tokenizer dir for guidellm")
    ap.add_argument("--num", type=int, default=40)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=20)
    a = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="vsgl-"))
    n, out_len = a.num, a.output_len

    # expected values from the script (request index i)
    tt = [SCRIPT["ttft_ms"][i % 4] for i in range(n)]
    it = [SCRIPT["itl_ms"][i % 3] for i in range(n)]
    e2 = [tt[i] + (out_len - 1) * it[i] for i in range(n)]
    gaps = [it[i] for i in range(n) for _ in range(out_len - 1)]
    rows = {
        "TTFT mean (ms)": [statistics.mean(tt)],
        "TTFT median (ms)": [pct(tt, 50)],
        "TTFT p99 (ms)": [pct(tt, 99)],
        "TPOT mean, vLLM def (ms)": [statistics.mean(it)],
        "TPOT mean incl. 1st token (ms)": [statistics.mean(e2[i] / out_len for i in range(n))],
        "ITL mean (ms)": [statistics.mean(gaps)],
        "ITL median (ms)": [pct(gaps, 50)],
        "E2EL mean (ms)": [statistics.mean(e2)],
        "server-side prompt tokens (mean)": [None],
        "output tokens total": [n * out_len],
        "client CPU (s)": [None],
        "requests reported / seen by server": [None],
    }

    # ---- pdserve-bench ----
    proc, url = start_fake(tmp, SCRIPT)
    c0 = child_cpu()
    subprocess.run([a.bench, "--base-url", url, "--backend", "openai-chat", "--num-prompts",
                    str(n), "--request-rate", str(a.rate), "--burstiness", "inf",
                    "--random-input-len", str(a.input_len), "--random-output-len", str(out_len),
                    "--ready-check-timeout-sec", "0", "--save-result", "--save-detailed",
                    "--result-dir", str(tmp), "--result-filename", "pd.json", "--quiet",
                    "--percentile-metrics", "ttft,tpot,itl,e2el"], check=True,
                   stdout=subprocess.DEVNULL)
    cpu = child_cpu() - c0
    d = json.loads((tmp / "pd.json").read_text())
    s = stats(url)
    proc.kill()
    rows["TTFT mean (ms)"].append(d["mean_ttft_ms"])
    rows["TTFT median (ms)"].append(d["median_ttft_ms"])
    rows["TTFT p99 (ms)"].append(d["p99_ttft_ms"])
    rows["TPOT mean, vLLM def (ms)"].append(d["mean_tpot_ms"])
    rows["TPOT mean incl. 1st token (ms)"].append(None)
    rows["ITL mean (ms)"].append(d["mean_itl_ms"])
    rows["ITL median (ms)"].append(d["median_itl_ms"])
    rows["E2EL mean (ms)"].append(d["mean_e2el_ms"])
    rows["server-side prompt tokens (mean)"].append(
        statistics.mean(r["prompt_tokens"] for r in s["records"]))
    rows["output tokens total"].append(d["total_output_tokens"])
    rows["client CPU (s)"].append(cpu)
    rows["requests reported / seen by server"].append("%d / %d" % (d["completed"], s["count"]))

    # ---- guidellm ----
    if a.guidellm:
        proc, url = start_fake(tmp, SCRIPT)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        cmd = [a.guidellm, "run", "--backend", "kind=openai_http,target=" + url,
               "--profile", "kind=constant,rate=%g" % a.rate,
               "--data", "kind=synthetic_text,prompt_tokens=%d,output_tokens=%d" % (
                   a.input_len, out_len),
               "--constraint", "kind=max_requests,count=%d" % n,
               "--output", "kind=json,path=%s" % (tmp / "gl.json"), "--disable-progress"]
        if a.tokenizer:
            cmd += ["--tokenizer", "kind=huggingface_auto,model=" + a.tokenizer]
        c0 = child_cpu()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        cpu = child_cpu() - c0
        if p.returncode != 0:
            print("guidellm failed:\n" + p.stderr[-2000:])
        else:
            g = json.loads((tmp / "gl.json").read_text())["benchmarks"][0]
            m = g["metrics"]

            def gm(key, stat="mean"):
                x = m[key]["successful"]
                return x[stat] if stat in x else x["percentiles"][stat]
            s = stats(url)
            reqs = g["requests"]["successful"]
            rows["TTFT mean (ms)"].append(gm("time_to_first_token_ms"))
            rows["TTFT median (ms)"].append(gm("time_to_first_token_ms", "median"))
            rows["TTFT p99 (ms)"].append(gm("time_to_first_token_ms", "p99"))
            rows["TPOT mean, vLLM def (ms)"].append(gm("inter_token_latency_ms"))
            rows["TPOT mean incl. 1st token (ms)"].append(gm("time_per_output_token_ms"))
            rows["ITL mean (ms)"].append(None)
            rows["ITL median (ms)"].append(None)
            rows["E2EL mean (ms)"].append(1000 * gm("request_latency"))
            rows["server-side prompt tokens (mean)"].append(
                statistics.mean(r["prompt_tokens"] for r in s["records"]))
            rows["output tokens total"].append(sum(r["output_tokens"] or 0 for r in reqs))
            rows["client CPU (s)"].append(cpu)
            rows["requests reported / seen by server"].append("%d / %d" % (len(reqs), s["count"]))
        proc.kill()

    hdr = ["metric", "script", "pdserve-bench", "guidellm (its name)"]
    print("%-34s %10s %14s %14s" % tuple(hdr))
    for k, v in rows.items():
        v = v + [None] * (3 - len(v))
        print("%-34s %10s %14s %14s" % (k, *("-" if x is None else x if isinstance(x, str)
                                              else "%.2f" % x for x in v[:3])))
    print("(guidellm: 'TPOT vLLM def' row is its inter_token_latency_ms; 'incl. 1st token' "
          "is its time_per_output_token_ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
