#!/usr/bin/env python3
"""bench_proxy - what pdserve-proxy adds to a request and to each streamed token.

Runs pdserve-bench twice per concurrency level against the same upstream: once
directly, once through pdserve-proxy in single-node mode (--decode only).  The direct
run is the ceiling measured in the same run; the table shows both and the difference
at p50 and p99 for TTFT (what the proxy adds per request: forwarding the request plus
relaying the first event) and ITL (per streamed token), plus the proxy's CPU time per
request and per token (from /proc/<pid>/stat).

Upstreams (--upstream):
  c       bench/bench_proxy_upstream.c, compiled here with cc: one epoll thread that
          streams tokens on a fixed schedule (TTFT, then one event every ITL), cheap
          enough for 1,000+ concurrent streams (the default);
  python  tests/bench/fake_openai.py (saturates at a few hundred streams);
  node    a real pdserve-decode with the default model (--model; CPU): the proxy in
          front of real work, at the concurrency the node can take.

  python3 bench/bench_proxy.py [--build build] [--upstream c|python|node]
         [--concurrency 1,64,1000] [--num-prompts N] [--output-len 16] [--ttft-ms 50]
         [--itl-ms 50] [--json out.json] [--results-dir bench/results]
         [--proxy-args "--relay-threads 2"] [--baseline-proxy OLD_BINARY [--baseline-args ...]]
         [--repeat N]

--baseline-proxy runs a second proxy binary (e.g. one built from an older commit) in
the same run, against the same upstream, right after the first one at every level
(the order alternates between repeats), so a change is measured before/after on the
same load; its rows are marked "baseline".  --repeat runs every level N times (the
rows are kept apart: on a loaded machine their spread is the error bar).
"""
import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise TimeoutError(url)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PIN = {}  # --pin: role -> CPU list for taskset ("client", "upstream", "proxy")


def pinned(role, cmd):
    """cmd under `taskset -c LIST` when --pin gave the role a CPU list."""
    return (["taskset", "-c", PIN[role]] + cmd) if PIN.get(role) else cmd


def start_proxy(binary, up_port, port, extra):
    return subprocess.Popen(pinned("proxy", [binary, "--decode", f"127.0.0.1:{up_port}", "--port", str(port),
                             "--disable-log-requests", "--uvicorn-log-level", "warning",
                             "--max-concurrent-requests", "100000"] + extra))


def make_row(conc, n, d, v, cpu, args):
    toks = v.get("total_output_tokens") or n * args.output_len
    row = {"concurrency": conc, "num_prompts": n, "completed_direct": d["completed"],
           "completed_proxy": v["completed"], "failed_direct": d.get("failed", 0),
           "failed_proxy": v.get("failed", 0), "peak_inflight_proxy": v.get("peak_inflight"),
           "proxy_cpu_s": cpu, "proxy_cpu_us_per_request": cpu / max(1, v["completed"]) * 1e6,
           "proxy_cpu_us_per_token": cpu / max(1, toks) * 1e6,
           "req_per_s_direct": d["request_throughput"], "req_per_s_proxy": v["request_throughput"]}
    for k in ("mean_ttft_ms", "p50_ttft_ms", "p99_ttft_ms", "mean_itl_ms", "p50_itl_ms", "p99_itl_ms",
              "p50_tpot_ms", "p99_tpot_ms", "p50_e2el_ms", "p99_e2el_ms"):
        row[k + "_direct"] = d[k]
        row[k + "_proxy"] = v[k]
        row[k + "_added"] = v[k] - d[k]
    return row


def steady_rate(conc, args):
    """--steady: the Poisson rate that keeps `conc` streams in flight on average (each
    lasts TTFT + (tokens - 1) x ITL of the upstream), instead of sending them all at once."""
    life_s = (args.ttft_ms + (args.output_len - 1) * args.itl_ms) / 1000.0
    return conc / life_s


def run_bench(bench, url, conc, args, outdir, tag, seed):
    # a different seed per run: a real node's prefix cache must not serve the second
    # run's prompts from the first run's
    cmd = [bench, "--seed", str(seed), "--base-url", url, "--ready-check-timeout-sec", "0", "--disable-tqdm",
           "--num-prompts", str(args.num_prompts or max(64, 4 * conc)), "--random-input-len", "32",
           "--random-output-len", str(args.output_len), "--random-range-ratio", "0",
           "--max-concurrency", str(conc if not args.steady else conc + conc // 4 + 1),
           "--request-rate", "inf" if not args.steady else "%.2f" % steady_rate(conc, args),
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
           "--save-result", "--result-dir", outdir, "--result-filename", f"{tag}.json"]
    if getattr(args, "bench_model", None):
        cmd += ["--model", args.bench_model]
    p = subprocess.run(pinned("client", cmd), capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        sys.exit(f"pdserve-bench failed ({tag}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    with open(os.path.join(outdir, f"{tag}.json")) as f:
        return json.load(f)


def relay_cpu_seconds(pid):
    """CPU seconds of the proxy's relay threads (named px-relay-N; 0 for a proxy
    without named relays)."""
    total = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        if comm.startswith("px-relay"):
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def git_commit():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def start_upstream(args, tmp, port):
    """Start the chosen upstream on port; returns (process, description)."""
    if args.upstream == "c":
        exe = args.upstream_bin
        if not exe:
            cc = shutil.which("cc") or shutil.which("gcc")
            if not cc:
                sys.exit("no C compiler for the c upstream (use --upstream-bin or --upstream python)")
            exe = os.path.join(tmp, "upstream")
            subprocess.run([cc, "-O2", "-o", exe, os.path.join(ROOT, "bench", "bench_proxy_upstream.c")], check=True)
        proc = subprocess.Popen(pinned("upstream", [exe, str(port), str(args.ttft_ms), str(args.itl_ms)]),
                                stdout=subprocess.DEVNULL)
        return proc, f"bench_proxy_upstream.c ttft {args.ttft_ms} ms itl {args.itl_ms} ms", "/health"
    if args.upstream == "python":
        script = os.path.join(tmp, "script.json")
        with open(script, "w") as f:
            json.dump({"ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms}, f)
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "bench", "fake_openai.py"),
                                 "--port", str(port), "--script", script], stdout=subprocess.DEVNULL)
        return proc, f"fake_openai.py ttft {args.ttft_ms} ms itl {args.itl_ms} ms", "/v1/models"
    model = args.model or os.environ.get("PD_MODEL_GGUF") or os.path.expanduser(
        "~/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(model):
        sys.exit(f"no model at {model} (--model)")
    node = os.path.join(args.build, "decode", "pdserve-decode")
    proc = subprocess.Popen(pinned("upstream", [node, "--model", model, "--port", str(port), "--disable-log-requests",
                                                "--disable-log-stats", "--cpu-threads", str(args.node_threads),
                                                "--max-model-len", "1024", "--cpu-kvcache-space", "0.5"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"pdserve-decode {os.path.basename(model)} (CPU, {args.node_threads} threads)", "/health"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--upstream", choices=("c", "python", "node"), default="c")
    ap.add_argument("--model", default=None, help="GGUF for --upstream node (default: the default model)")
    ap.add_argument("--node-threads", type=int, default=1)
    ap.add_argument("--concurrency", default="1,64,1000")
    ap.add_argument("--num-prompts", type=int, default=0, help="per level; 0 = max(16, 2 x concurrency)")
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--ttft-ms", type=float, default=50)
    ap.add_argument("--itl-ms", type=float, default=50)
    ap.add_argument("--json", default=None)
    ap.add_argument("--results-dir", default=None, help="also write bench_proxy_<date>_<upstream>.json here")
    ap.add_argument("--label", default="", help="free text recorded with the results")
    ap.add_argument("--proxy-bin", default=None, help="the proxy binary (default: BUILD/proxy/pdserve-proxy)")
    ap.add_argument("--bench-bin", default=None, help="pdserve-bench (default: BUILD/bench/pdserve-bench)")
    ap.add_argument("--upstream-bin", default=None, help="a built bench_proxy_upstream (default: compile it)")
    ap.add_argument("--proxy-args", default="", help="extra proxy options, one string")
    ap.add_argument("--baseline-proxy", default=None, help="a second proxy binary measured in the same run")
    ap.add_argument("--baseline-args", default="", help="extra options for the baseline proxy")
    ap.add_argument("--repeat", type=int, default=1, help="runs per level")
    ap.add_argument("--steady", action="store_true",
                    help="Poisson arrivals at the rate that keeps CONC streams in flight on average "
                         "(cap 1.25 x CONC) instead of all at once: the steady state, not the opening burst")
    ap.add_argument("--warm-level", action="store_true",
                    help="before each level, one unmeasured run at its concurrency through every path")
    ap.add_argument("--pin", default=None,
                    help="CLIENT:UPSTREAM:PROXY CPU lists for taskset (e.g. 0-7:8-9:10-15): the bench client, "
                         "the upstream and the proxies (both) on disjoint cores, so the tail is not their contention")
    ap.add_argument("--commit", default=None, help="the commit to record (default: git rev-parse of this tree)")
    args = ap.parse_args()
    if args.pin:
        parts = args.pin.split(":")
        if len(parts) != 3 or not shutil.which("taskset"):
            sys.exit("--pin wants CLIENT:UPSTREAM:PROXY CPU lists (e.g. 0-7:8-9:10-15) and taskset")
        PIN.update(zip(("client", "upstream", "proxy"), parts))
    if not args.num_prompts:
        args.num_prompts = 0
    bench = args.bench_bin or os.path.join(args.build, "bench", "pdserve-bench")
    proxy_bin = args.proxy_bin or os.path.join(args.build, "proxy", "pdserve-proxy")
    for b in (bench, proxy_bin) + ((args.baseline_proxy,) if args.baseline_proxy else ()):
        if not os.path.exists(b):
            sys.exit(f"{b} is not built")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_proxy_") as tmp:
        up_port, px_port, bl_port = free_port(), free_port(), free_port()
        up, upstream, probe = start_upstream(args, tmp, up_port)
        px = start_proxy(proxy_bin, up_port, px_port, args.proxy_args.split())
        bl = start_proxy(args.baseline_proxy, up_port, bl_port, args.baseline_args.split()) if args.baseline_proxy \
            else None
        try:
            wait_http(f"http://127.0.0.1:{up_port}{probe}", timeout=120)
            wait_http(f"http://127.0.0.1:{px_port}/health", timeout=30)
            # warm-up (page faults, a real node's first batches), not measured
            w = argparse.Namespace(**vars(args))
            w.num_prompts = 8
            run_bench(bench, f"http://127.0.0.1:{px_port}", 4, w, tmp, "warmup", 7)
            if bl:
                wait_http(f"http://127.0.0.1:{bl_port}/health", timeout=30)
                run_bench(bench, f"http://127.0.0.1:{bl_port}", 4, w, tmp, "warmup_bl", 7)
            for conc in [int(c) for c in args.concurrency.split(",")]:
                n = args.num_prompts or max(16, (4 if args.steady else 2) * conc)
                a = argparse.Namespace(**vars(args))
                a.num_prompts = n
                for rep in range(max(1, args.repeat)):
                    seed = 1000 * (rep + 1) + conc
                    order = [("proxy", px, px_port)] + ([("baseline", bl, bl_port)] if bl else [])
                    if args.warm_level and rep == 0:
                        # one unmeasured run at this concurrency through each path first, so
                        # the measured runs find every connection (client -> proxy -> upstream)
                        # already open: what is left is the steady state, not connection set-up
                        for wname, _, wport in [("direct", up, up_port)] + order:
                            run_bench(bench, f"http://127.0.0.1:{wport}", conc, a, tmp, f"warm_{wname}_{conc}", 99)
                    d = run_bench(bench, f"http://127.0.0.1:{up_port}", conc, a, tmp, f"direct_{conc}", seed)
                    if rep % 2:
                        order.reverse()
                    for name, proc, port in order:
                        c0, r0 = cpu_seconds(proc.pid), relay_cpu_seconds(proc.pid)
                        v = run_bench(bench, f"http://127.0.0.1:{port}", conc, a, tmp, f"{name}_{conc}",
                                      seed + (500 if name == "proxy" else 700))
                        row = make_row(conc, n, d, v, cpu_seconds(proc.pid) - c0, args)
                        # the relay threads' part of it (the rest: HTTP workers, watcher)
                        row["proxy_relay_cpu_s"] = relay_cpu_seconds(proc.pid) - r0
                        row["variant"] = name
                        row["repeat"] = rep
                        rows.append(row)
        finally:
            for p in (px, bl, up):
                if p:
                    p.terminate()
            for p in (px, bl, up):
                if p:
                    p.wait()
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
            "cpu": cpu_model(), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()[0],
            "commit": args.commit or git_commit(), "upstream": upstream,
            "proxy_args": args.proxy_args, "baseline_proxy": args.baseline_proxy, "baseline_args": args.baseline_args,
            "output_len": args.output_len, "label": args.label, "pin": args.pin, "warm_level": args.warm_level, "steady": args.steady,
            "goals": {"ttft_p99_added_ms": 1.0, "itl_p99_added_ms": 0.05}, "rows": rows}
    print(f"# bench_proxy {info['date']} on {info['machine']} ({info['cpus']} x {info['cpu']}), commit "
          f"{info['commit']}; upstream {upstream}; {args.output_len} tokens per request")
    print("| conc | req/s direct / proxy | TTFT p50 direct / proxy / added (ms) | TTFT p99 direct / proxy / added |"
          " ITL p50 added (ms) | ITL p99 direct / proxy / added (ms) | proxy CPU us/req | us/token | relay share |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tag = " baseline" if r.get("variant") == "baseline" else ""
        share = (f"{100 * r['proxy_relay_cpu_s'] / r['proxy_cpu_s']:.0f} %"
                 if r.get("proxy_relay_cpu_s") and r["proxy_cpu_s"] else "-")
        print(f"| {r['concurrency']}{tag} | {r['req_per_s_direct']:.1f} / {r['req_per_s_proxy']:.1f} | "
              f"{r['p50_ttft_ms_direct']:.2f} / {r['p50_ttft_ms_proxy']:.2f} / {r['p50_ttft_ms_added']:+.2f} | "
              f"{r['p99_ttft_ms_direct']:.2f} / {r['p99_ttft_ms_proxy']:.2f} / {r['p99_ttft_ms_added']:+.2f} | "
              f"{r['p50_itl_ms_added']:+.3f} | {r['p99_itl_ms_direct']:.2f} / {r['p99_itl_ms_proxy']:.2f} / "
              f"{r['p99_itl_ms_added']:+.3f} | {r['proxy_cpu_us_per_request']:.0f} | "
              f"{r['proxy_cpu_us_per_token']:.1f} | "
              f"{share} |")
    out = [args.json] if args.json else []
    if args.results_dir:
        out.append(os.path.join(args.results_dir, f"bench_proxy_{time.strftime('%Y-%m-%d', time.gmtime())}_"
                                                  f"{args.upstream}.json"))
    for path in out:
        with open(path, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
