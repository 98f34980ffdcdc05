#!/usr/bin/env python3
"""Side-by-side: pdserve-bench and guidellm on the same server, agreement checked.

Two modes:
  * scripted (default): each tool gets a fresh fake server (tests/bench/fake_openai.py)
    with the same script, so request i of either run has the same scripted TTFT, ITL
    and output length; the figures are printed beside the values computed from the
    script and what the server saw (prompt lengths in the server's own tokenizer);
  * --target URL: a real server (a pdserve node, vLLM...).  The tools run in turn,
    --repeat times each (A B A B ...), with the same constant rate, lengths and endpoint;
    what the server counted per tool run comes from its /metrics
    (vllm:request_prompt_tokens, vllm:request_generation_tokens histograms).  Give
    guidellm the served model's tokenizer (--tokenizer DIR) so both send the same
    prompt lengths.

In both modes every compared figure has a stated tolerance (TOLERANCES below, checked
on the means over the repeats); the script prints PASS/FAIL per row and exits 1 when a
row fails.  guidellm is optional and never needed by CI.  It runs offline when given a
local tokenizer directory (HF_HUB_OFFLINE=1; --tokenizer DIR with tokenizer.json).

usage: vs_guidellm.py --bench build/bench/pdserve-bench --guidellm /path/to/guidellm \
                      --tokenizer DIR [--target URL --repeat 2] [--num 40] [--rate 5]
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


# Agreement between the two tools, per compared figure: |pdserve-bench - guidellm| must
# be within max(absolute, relative * the larger of the two), or (with --repeat >= 2)
# within the range between runs of the same tool, which on a loaded machine is the
# noise floor of any comparison (the row says which of the two held).  They bound what differs
# between two runs of the same load (the server's scheduling, the client's own timing),
# not the definitions: only figures that mean the same thing in both tools are compared
# (guidellm's inter_token_latency_ms is vLLM's TPOT; its time_per_output_token_ms is not).
TOLERANCES = {                       # name: (absolute, relative)
    "TTFT mean (ms)": (10.0, 0.15),
    "TTFT median (ms)": (10.0, 0.20),
    "TPOT mean, vLLM def (ms)": (2.0, 0.10),
    "E2EL mean (ms)": (10.0, 0.10),
    "output tokens per request (mean)": (0.0, 0.0),
    "server-side prompt tokens (mean)": (0.5, 0.0),
}


def metrics_text(url):
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return r.read().decode()


def server_counts(url):
    """(requests, prompt tokens, generated tokens) from a vLLM-style /metrics."""
    want = {"vllm:request_prompt_tokens_count": 0.0, "vllm:request_prompt_tokens_sum": 0.0,
            "vllm:request_generation_tokens_sum": 0.0}
    for line in metrics_text(url).splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in want:
            want[name] += float(line.rsplit(" ", 1)[1])
    return (want["vllm:request_prompt_tokens_count"], want["vllm:request_prompt_tokens_sum"],
            want["vllm:request_generation_tokens_sum"])


def run_pdserve_bench(a, url, tmp, tag):
    out = tmp / ("pd-%s.json" % tag)
    cmd = [a.bench, "--base-url", url, "--backend", "openai-chat", "--num-prompts",
           str(a.num), "--request-rate", str(a.rate), "--burstiness", "inf",
           "--random-input-len", str(a.input_len), "--random-output-len", str(a.output_len),
           "--ready-check-timeout-sec", "0", "--save-result", "--save-detailed",
           "--result-dir", str(tmp), "--result-filename", out.name, "--quiet",
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--seed", str(a.seed + 1000 * int(tag[2:]) + 1)]
    c0 = child_cpu()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    cpu = child_cpu() - c0
    d = json.loads(out.read_text())
    return {"TTFT mean (ms)": d["mean_ttft_ms"], "TTFT median (ms)": d["median_ttft_ms"],
            "TTFT p99 (ms)": d["p99_ttft_ms"], "TPOT mean, vLLM def (ms)": d["mean_tpot_ms"],
            "TPOT mean incl. 1st token (ms)": None, "ITL mean (ms)": d["mean_itl_ms"],
            "ITL median (ms)": d["median_itl_ms"], "E2EL mean (ms)": d["mean_e2el_ms"],
            "output tokens per request (mean)": d["total_output_tokens"] / max(1, d["completed"]),
            "requests reported": d["completed"], "client CPU (s)": cpu}


def run_guidellm(a, url, tmp, tag):
    out = tmp / ("gl-%s.json" % tag)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [a.guidellm, "run", "--backend", "kind=openai_http,target=" + url,
           "--profile", "kind=constant,rate=%g" % a.rate,
           "--data", "kind=synthetic_text,prompt_tokens=%d,output_tokens=%d" % (
               a.input_len, a.output_len),
           "--constraint", "kind=max_requests,count=%d" % a.num,
           "--output", "kind=json,path=%s" % out, "--disable-progress",
           "--seed", "kind=static,value=%d" % (a.seed + 1000 * int(tag[2:]) + 2)]
    if a.tokenizer:
        cmd += ["--tokenizer", "kind=huggingface_auto,model=" + a.tokenizer]
    c0 = child_cpu()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    cpu = child_cpu() - c0
    if p.returncode != 0:
        print("guidellm failed:\n" + p.stderr[-2000:])
        return None
    g = json.loads(out.read_text())["benchmarks"][0]
    m = g["metrics"]

    def gm(key, stat="mean"):
        x = m[key]["successful"]
        return x[stat] if stat in x else x["percentiles"][stat]
    reqs = g["requests"]["successful"]
    return {"TTFT mean (ms)": gm("time_to_first_token_ms"),
            "TTFT median (ms)": gm("time_to_first_token_ms", "median"),
            "TTFT p99 (ms)": gm("time_to_first_token_ms", "p99"),
            "TPOT mean, vLLM def (ms)": gm("inter_token_latency_ms"),
            "TPOT mean incl. 1st token (ms)": gm("time_per_output_token_ms"),
            "ITL mean (ms)": None, "ITL median (ms)": None,
            "E2EL mean (ms)": 1000 * gm("request_latency"),
            "output tokens per request (mean)":
                statistics.mean(r["output_tokens"] or 0 for r in reqs),
            "requests reported": len(reqs), "client CPU (s)": cpu}


def one_run(a, which, tmp, tag):
    """Run one tool; returns its figures plus what the server saw during the run."""
    fn = run_pdserve_bench if which == "pd" else run_guidellm
    if a.target:
        before = server_counts(a.target)
        r = fn(a, a.target, tmp, tag)
        after = server_counts(a.target)
        if r is not None:
            n = after[0] - before[0]
            r["requests seen by server"] = n
            r["server-side prompt tokens (mean)"] = (after[1] - before[1]) / max(1, n)
            r["server-side output tokens (mean)"] = (after[2] - before[2]) / max(1, n)
        return r
    proc, url = start_fake(tmp, SCRIPT)
    try:
        r = fn(a, url, tmp, tag)
        if r is not None:
            s = stats(url)
            r["requests seen by server"] = s["count"]
            r["server-side prompt tokens (mean)"] = statistics.mean(
                x["prompt_tokens"] for x in s["records"])
            r["server-side output tokens (mean)"] = statistics.mean(
                x["output_tokens"] for x in s["records"])
    finally:
        proc.kill()
    return r


def fmt(x):
    return "-" if x is None else x if isinstance(x, str) else "%.2f" % x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True)
    ap.add_argument("--guidellm", default=None)
    ap.add_argument("--tokenizer", default=None, help="local HF tokenizer dir for guidellm")
    ap.add_argument("--target", default=None, help="a real server's base URL (no script)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each tool, alternating")
    ap.add_argument("--num", type=int, default=40)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=20)
    ap.add_argument("--seed", type=int, default=None,
                    help="prompt seed (default: from the clock, so a rerun against the same "
                         "server does not find its prompts in the prefix cache)")
    ap.add_argument("--json", default=None, help="write every run's figures here")
    a = ap.parse_args()
    a.target = a.target.rstrip("/") if a.target else None
    if a.seed is None:
        a.seed = int(time.time()) % 1000000
    # Every run of either tool gets its own prompts (seed + 1000 * repeat, + 1 for
    # pdserve-bench, + 2 for guidellm): a run that reused earlier prompts would be served
    # from the target's prefix cache (guidellm's default seed is the same every run).
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="vsgl-"))
    n, out_len = a.num, a.output_len

    runs = {"pd": [], "gl": []}
    for k in range(a.repeat):
        for which in ("pd", "gl"):
            if which == "gl" and not a.guidellm:
                continue
            r = one_run(a, which, tmp, "%s%d" % (which, k))
            if r is not None:
                runs[which].append(r)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(runs, indent=1))

    keys = list(runs["pd"][0].keys())
    for extra in ("server-side prompt tokens (mean)", "server-side output tokens (mean)",
                  "requests seen by server"):
        if extra in keys:          # keep the server's figures last
            keys.remove(extra)
            keys.append(extra)
    expected = {}
    if not a.target:
        tt = [SCRIPT["ttft_ms"][i % 4] for i in range(n)]
        it = [SCRIPT["itl_ms"][i % 3] for i in range(n)]
        e2 = [tt[i] + (out_len - 1) * it[i] for i in range(n)]
        gaps = [it[i] for i in range(n) for _ in range(out_len - 1)]
        expected = {"TTFT mean (ms)": statistics.mean(tt), "TTFT median (ms)": pct(tt, 50),
                    "TTFT p99 (ms)": pct(tt, 99), "TPOT mean, vLLM def (ms)": statistics.mean(it),
                    "TPOT mean incl. 1st token (ms)": statistics.mean(
                        e2[i] / out_len for i in range(n)),
                    "ITL mean (ms)": statistics.mean(gaps), "ITL median (ms)": pct(gaps, 50),
                    "E2EL mean (ms)": statistics.mean(e2),
                    "output tokens per request (mean)": out_len,
                    "server-side output tokens (mean)": out_len}

    def avg(which, key):
        v = [r[key] for r in runs[which] if r.get(key) is not None]
        return statistics.mean(v) if v else None

    def same_tool_range(which, key):
        """How far two runs of the same tool on the same load were apart (0 with one
        run): on a shared machine this is the noise floor of any comparison."""
        v = [r[key] for r in runs[which] if r.get(key) is not None]
        return max(v) - min(v) if len(v) > 1 else 0.0

    def spread(which, key):
        v = [r[key] for r in runs[which] if r.get(key) is not None]
        return "" if len(v) < 2 else " (%.1f-%.1f)" % (min(v), max(v))

    print("%d requests at %g req/s (constant), %d input / %d output tokens, chat; %s; "
          "means over %d run(s) per tool, min-max in brackets; seed %d" % (
              n, a.rate, a.input_len, out_len,
              "target " + a.target if a.target else "scripted fake server", a.repeat, a.seed))
    print("%-34s %9s %22s %22s  %s" % ("figure", "script", "pdserve-bench",
                                       "guidellm", "agreement"))
    failed = 0
    for k in keys:
        pd, gl = avg("pd", k), avg("gl", k)
        verdict = ""
        if k == "server-side prompt tokens (mean)" and not a.target:
            verdict = "not compared: the fake server counts in its toy tokenizer"
        elif k in TOLERANCES and pd is not None and gl is not None:
            ab, rel = TOLERANCES[k]
            lim = max(ab, rel * max(abs(pd), abs(gl)))
            noise = max(same_tool_range("pd", k), same_tool_range("gl", k))
            diff = abs(pd - gl)
            if diff <= lim + 1e-9:
                verdict = "PASS |diff| %.2f <= %.2f" % (diff, lim)
            elif diff <= noise:
                verdict = ("PASS (noise) |diff| %.2f > %.2f but <= the same tool's "
                           "run-to-run range %.2f" % (diff, lim, noise))
            else:
                failed += 1
                verdict = "FAIL |diff| %.2f > %.2f (run-to-run range %.2f)" % (diff, lim, noise)
        print("%-34s %9s %22s %22s  %s" % (k, fmt(expected.get(k)), fmt(pd) + spread("pd", k),
                                           fmt(gl) + spread("gl", k), verdict))
    print("(guidellm: 'TPOT vLLM def' is its inter_token_latency_ms; 'incl. 1st token' is "
          "its time_per_output_token_ms; its E2EL is request_latency)")
    if runs["gl"]:
        print("agreement: %s" % ("all figures within tolerance" if not failed
                                 else "%d figure(s) outside tolerance" % failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
