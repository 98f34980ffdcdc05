#!/usr/bin/env python3
"""bench_proxy - what pdserve-proxy adds to a request and to each streamed token.

Runs pdserve-bench twice per concurrency level against the same scripted upstream
(tests/bench/fake_openai.py: fixed TTFT and inter-token gap, so the upstream itself
adds no variance from compute): once directly, once through pdserve-proxy in
single-node mode (--decode only).  The direct run is the peer/ceiling measured in the
same run; the table shows both and the difference, plus the proxy's CPU time per
request and per streamed token (from /proc/<pid>/stat).

  python3 bench/bench_proxy.py [--build build] [--concurrency 1,64,256]
         [--num-prompts 512] [--output-len 64] [--ttft-ms 20] [--itl-ms 5] [--json out.json]
"""
import argparse
import json
import os
import platform
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


def run_bench(bench, url, conc, args, outdir, tag):
    cmd = [bench, "--base-url", url, "--ready-check-timeout-sec", "0", "--disable-tqdm",
           "--num-prompts", str(args.num_prompts or max(64, 4 * conc)), "--random-input-len", "32",
           "--random-output-len", str(args.output_len), "--random-range-ratio", "0",
           "--max-concurrency", str(conc), "--request-rate", "inf",
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
           "--save-result", "--result-dir", outdir, "--result-filename", f"{tag}.json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        sys.exit(f"pdserve-bench failed ({tag}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    with open(os.path.join(outdir, f"{tag}.json")) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--concurrency", default="1,64,256")
    ap.add_argument("--num-prompts", type=int, default=0, help="per level; 0 = max(64, 4 x concurrency)")
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--ttft-ms", type=float, default=20)
    ap.add_argument("--itl-ms", type=float, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--label", default="", help="free text recorded with the results")
    args = ap.parse_args()
    bench = os.path.join(args.build, "bench", "pdserve-bench")
    proxy_bin = os.path.join(args.build, "proxy", "pdserve-proxy")
    for b in (bench, proxy_bin):
        if not os.path.exists(b):
            sys.exit(f"{b} is not built")
    tmp = tempfile.mkdtemp(prefix="bench_proxy_")
    script = os.path.join(tmp, "script.json")
    with open(script, "w") as f:
        json.dump({"ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms}, f)
    up_port, px_port = free_port(), free_port()
    up = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "bench", "fake_openai.py"),
                           "--port", str(up_port), "--script", script], stdout=subprocess.DEVNULL)
    px = subprocess.Popen([proxy_bin, "--decode", f"127.0.0.1:{up_port}", "--port", str(px_port),
                           "--disable-log-requests", "--uvicorn-log-level", "warning"])
    px_port_url = f"http://127.0.0.1:{px_port}"
    rows = []
    try:
        wait_http(f"http://127.0.0.1:{up_port}/v1/models")
        wait_http(f"http://127.0.0.1:{px_port}/health")
        for conc in [int(c) for c in args.concurrency.split(",")]:
            d = run_bench(bench, f"http://127.0.0.1:{up_port}", conc, args, tmp, f"direct_{conc}")
            c0 = cpu_seconds(px.pid)
            v = run_bench(bench, f"http://127.0.0.1:{px_port}", conc, args, tmp, f"proxy_{conc}")
            cpu = cpu_seconds(px.pid) - c0
            toks = v.get("total_output_tokens") or v.get("output_tokens") or args.num_prompts * args.output_len
            row = {"concurrency": conc, "completed_direct": d["completed"], "completed_proxy": v["completed"],
                   "proxy_cpu_s": cpu, "proxy_cpu_us_per_request": cpu / max(1, v["completed"]) * 1e6,
                   "proxy_cpu_us_per_token": cpu / max(1, toks) * 1e6,
                   "req_per_s_direct": d["request_throughput"], "req_per_s_proxy": v["request_throughput"]}
            for k in ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_itl_ms", "median_itl_ms",
                      "p99_itl_ms", "mean_e2el_ms", "p99_e2el_ms"):
                row[k + "_direct"] = d[k]
                row[k + "_proxy"] = v[k]
                row[k + "_added"] = v[k] - d[k]
            rows.append(row)
    finally:
        px.terminate()
        up.terminate()
        px.wait()
        up.wait()
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
            "cpus": os.cpu_count(), "upstream": f"fake_openai ttft {args.ttft_ms} ms itl {args.itl_ms} ms",
            "num_prompts": args.num_prompts or "max(64, 4 x concurrency)", "label": args.label, "output_len": args.output_len, "rows": rows}
    print(f"# bench_proxy {info['date']} on {info['machine']} ({info['cpus']} CPUs); upstream {info['upstream']}")
    print("| conc | req/s direct | req/s proxy | TTFT mean direct / proxy / added (ms) | TTFT p99 added |"
          " ITL mean direct / proxy / added (ms) | ITL p99 added | proxy CPU us/req | us/token |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['req_per_s_direct']:.1f} | {r['req_per_s_proxy']:.1f} | "
              f"{r['mean_ttft_ms_direct']:.2f} / {r['mean_ttft_ms_proxy']:.2f} / {r['mean_ttft_ms_added']:+.2f} | "
              f"{r['p99_ttft_ms_added']:+.2f} | {r['mean_itl_ms_direct']:.3f} / {r['mean_itl_ms_proxy']:.3f} / "
              f"{r['mean_itl_ms_added']:+.3f} | {r['p99_itl_ms_added']:+.2f} | "
              f"{r['proxy_cpu_us_per_request']:.0f} | {r['proxy_cpu_us_per_token']:.1f} |")
    print(json.dumps(info))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
