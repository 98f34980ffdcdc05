#!/usr/bin/env python3
"""gpu_cluster.py - the small helpers scripts/gpu_cluster.sh needs, in plain Python 3
(standard library only: the GPU machine has Python but may lack curl).

  wait URL TIMEOUT [PID ...]   exit 0 once GET URL answers 200; 1 on timeout; 2 when
                               one of the PIDs has exited first (the node died loading)
  scrape URL FILE              save GET URL (a /metrics page) to FILE; exit 1 on failure
  probe URL PROMPT_WORDS MAX_TOKENS
                               one non-streamed /v1/completions request with a prompt of
                               PROMPT_WORDS words; prints one line; exit 0 on a 200 with text
  kvcheck BEFORE AFTER         decode-node metrics before and after the probe: exit 0 when
                               KV bytes arrived and no load failed (prints the deltas)
  report OUT [--json FILE] [--slo WORKLOAD=ttft:MS,tpot:MS ...]
                               the result table of a run directory (runs.tsv, results/);
                               --slo recomputes goodput for other SLOs from the saved
                               per-request figures (no rerun needed)

Goodput follows DistServe: a request is good when it meets every SLO (TTFT and TPOT,
vLLM's per-request TPOT); a system's goodput at a rate is good requests / duration, and
its goodput as one number is the highest offered rate at which at least 90% of requests
are good (also given interpolated between the two rates that straddle 90%).
"""
import json
import os
import sys
import time
import urllib.request

ATTAIN = 0.9
SCALES = (0.5, 1.0, 2.0)  # SLO scales reported beside the chosen SLOs (DistServe's SLO-scale axis)


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill 0: look at /proc
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def cmd_wait(args):
    url, timeout = args[0], float(args[1])
    pids = [int(p) for p in args[2:] if p]
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in pids:
            if not pid_alive(p):
                print(f"wait {url}: process {p} exited", file=sys.stderr)
                return 2
        try:
            st, _ = http_get(url, timeout=2.0)
            if st == 200:
                return 0
        except Exception:
            pass
        time.sleep(0.5)
    print(f"wait {url}: no 200 within {timeout:.0f} s", file=sys.stderr)
    return 1


def cmd_scrape(args):
    url, path = args
    try:
        _, body = http_get(url, timeout=10.0)
    except Exception as e:  # keep going: the report shows what is missing
        print(f"scrape {url}: {e}", file=sys.stderr)
        open(path, "wb").close()
        return 1
    with open(path, "wb") as f:
        f.write(body)
    return 0


def cmd_probe(args):
    url, words, max_tokens = args[0], int(args[1]), int(args[2])
    prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * (words // 9 + 1)).split()[:words]
    body = json.dumps({"prompt": " ".join(prompt), "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.time()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            d = json.loads(r.read())
    except urllib.error.HTTPError as e:
        print(f"probe: HTTP {e.code}: {e.read()[:300]!r}")
        return 1
    except Exception as e:
        print(f"probe: {e}")
        return 1
    dt = time.time() - t0
    ch = (d.get("choices") or [{}])[0]
    usage = d.get("usage") or {}
    print(f"probe: {dt * 1000:.0f} ms, prompt_tokens {usage.get('prompt_tokens')}, "
          f"completion_tokens {usage.get('completion_tokens')}, kv_transfer_params "
          f"{json.dumps(d.get('kv_transfer_params'))}, text {ch.get('text', '')[:40]!r}")
    return 0 if ch.get("text") else 1


def parse_prom(path):
    """name -> summed value over every label set (counters, gauges, histogram parts)."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip() or line.startswith("#"):
                    continue
                try:
                    key, val = line.rsplit(None, 1)
                    v = float(val)
                except ValueError:
                    continue
                name = key.split("{", 1)[0]
                out[name] = out.get(name, 0.0) + v
    except OSError:
        pass
    return out


def prom_delta(before_files, after_files):
    """summed over nodes: after - before for every metric name present after."""
    tot = {}
    for b, a in zip(before_files, after_files):
        mb, ma = parse_prom(b), parse_prom(a)
        for k, v in ma.items():
            tot[k] = tot.get(k, 0.0) + v - mb.get(k, 0.0)
    return tot


def cmd_kvcheck(args):
    d = prom_delta([args[0]], [args[1]])
    nbytes = d.get("vllm:nixl_bytes_transferred", 0.0)
    fails = d.get("pdserve:kv_load_failures_total", 0.0) + d.get("vllm:nixl_num_failed_transfers", 0.0)
    print(f"kvcheck: {nbytes:.0f} bytes pulled, {d.get('pdserve:kv_transfers_total', 0):.0f} pulls, "
          f"{d.get('vllm:nixl_xfer_time_seconds', 0) * 1e3:.2f} ms moving KV, {fails:.0f} failed loads")
    return 0 if nbytes > 0 and fails == 0 else 1


# ---- report ----

def tpot_of(ttft, e2el, out_len):
    return (e2el - ttft) / (out_len - 1) if out_len > 1 else 0.0


def attainment_at(res, slo_ms, scale):
    """(good requests, attainment) from the per-request arrays with the SLOs scaled."""
    ttfts, e2els = res.get("ttfts") or [], res.get("e2els") or []
    outs, errs = res.get("output_lens") or [], res.get("errors") or []
    kinds = res.get("error_kinds") or []
    n_all = res.get("num_prompts") or len(ttfts)
    good = 0
    for i in range(min(len(ttfts), len(e2els), len(outs))):
        if (i < len(errs) and errs[i]) or (i < len(kinds) and kinds[i] != "none"):
            continue
        ok = True
        if "ttft" in slo_ms and ttfts[i] * 1e3 > slo_ms["ttft"] * scale:
            ok = False
        if "tpot" in slo_ms and tpot_of(ttfts[i], e2els[i], outs[i]) * 1e3 > slo_ms["tpot"] * scale:
            ok = False
        if "e2el" in slo_ms and e2els[i] * 1e3 > slo_ms["e2el"] * scale:
            ok = False
        good += ok
    return good, (good / n_all if n_all else 0.0)


def rate_meeting(points, target=ATTAIN):
    """points: [(rate, attainment)] -> (highest tested rate meeting target or None,
    interpolated rate where attainment crosses target or None)."""
    pts = sorted(p for p in points if p[0] is not None)
    ok = [r for r, a in pts if a >= target]
    best = max(ok) if ok else None
    interp = best
    if best is not None:
        higher = [(r, a) for r, a in pts if r > best]
        if higher:
            r1, a1 = higher[0]
            a0 = dict(pts)[best]
            if a1 < target and a0 > a1:
                interp = best + (r1 - best) * (a0 - target) / (a0 - a1)
        # no higher point tested that fails: the knee is beyond the sweep
    return best, interp


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def fmt_rate(best_interp, max_tested):
    """'-' when no tested rate met the target, '>=R' when the highest tested one did (the
    knee lies beyond the sweep), else the interpolated rate."""
    best, interp = best_interp
    if best is None:
        return "-"
    if max_tested is not None and best >= max_tested:
        return ">=%g" % best
    return "%.2f" % interp


def cmd_report(args):
    out = args[0]
    json_path = args[args.index("--json") + 1] if "--json" in args else None
    slo_over = {}
    for i, a in enumerate(args):
        if a == "--slo" and i + 1 < len(args):
            wl, _, spec = args[i + 1].partition("=")
            slo_over[wl] = {k: float(v) for k, v in (kv.split(":") for kv in spec.split(",") if kv)}
    rows = []
    try:
        with open(os.path.join(out, "runs.tsv")) as f:
            lines = [ln.rstrip("\n").split("\t") for ln in f if ln.strip()]
    except OSError:
        lines = []
    # runs.tsv: setup workload rate rc result_json before_files after_files (files comma-separated)
    for parts in lines:
        if len(parts) < 7 or parts[0] == "setup":
            continue
        setup, wl, rate, rc, rjson, mb, ma = parts[:7]
        row = {"setup": setup, "workload": wl, "rate": float(rate), "rc": int(rc)}
        res = None
        try:
            with open(rjson) as f:
                res = json.load(f)
        except (OSError, ValueError):
            pass
        if res:
            slo = res.get("goodput_slo_ms") or {}
            goodput, attain = res.get("request_goodput"), res.get("slo_attainment")
            if wl in slo_over:
                slo = slo_over[wl]
                good, attain = attainment_at(res, slo, 1.0)
                goodput = good / res["duration"] if res.get("duration") else None
            row.update(completed=res.get("completed", 0), failed=res.get("failed", 0),
                       req_s=res.get("request_throughput"), goodput=goodput,
                       attain=attain, p90_ttft=res.get("p90_ttft_ms"),
                       p90_tpot=res.get("p90_tpot_ms"), mean_e2el=res.get("mean_e2el_ms"),
                       duration=res.get("duration"), slo=slo,
                       out_tok_s=res.get("output_throughput"))
            for s in SCALES:
                g, a = attainment_at(res, slo, s)
                row[f"attain_x{s}"] = a
            kv = prom_delta([p for p in mb.split(",") if p], [p for p in ma.split(",") if p])
            xfer = kv.get("vllm:nixl_xfer_time_seconds", 0.0)
            pulls = kv.get("pdserve:kv_transfers_total", 0.0)
            req_time = (res.get("mean_e2el_ms") or 0.0) * (res.get("completed") or 0) / 1e3
            node_time = kv.get("vllm:e2e_request_latency_seconds_sum", 0.0)
            row.update(kv_s=xfer, kv_pulls=pulls, kv_bytes=kv.get("vllm:nixl_bytes_transferred", 0.0),
                       kv_fail=kv.get("pdserve:kv_load_failures_total", 0.0),
                       kv_share=(xfer / req_time) if req_time > 0 and pulls > 0 else None,
                       kv_share_node=(xfer / node_time) if node_time > 0 and pulls > 0 else None,
                       kv_ms_per_pull=(xfer / pulls * 1e3) if pulls > 0 else None,
                       kv_gb_s=(kv.get("vllm:nixl_bytes_transferred", 0.0) / xfer / 1e9) if xfer > 0 else None,
                       # prompt tokens the decode nodes found in their own prefix cache
                       # (should be ~0: every run has fresh prompts)
                       prefix_hit=(kv.get("vllm:prefix_cache_hits", 0.0) / kv["vllm:prefix_cache_queries"])
                       if kv.get("vllm:prefix_cache_queries") else None)
        rows.append(row)

    print("== per run (goodput = requests meeting every SLO / duration; attainment = share of "
          "all requests meeting every SLO) ==")
    hdr = ("setup", "workload", "rate", "done", "fail", "req/s", "goodput", "SLO%",
           "SLO%x0.5", "SLO%x2", "p90TTFT", "p90TPOT", "KV%", "KVms/pull", "KVGB/s", "kvfail", "pfx%", "rc")
    print("%-7s %-8s %5s %4s %4s %6s %7s %5s %8s %6s %8s %7s %5s %9s %6s %6s %4s %3s" % hdr)
    for r in rows:
        pct = (lambda v: "-" if v is None else "%.0f" % (100 * v))
        print("%-7s %-8s %5g %4s %4s %6s %7s %5s %8s %6s %8s %7s %5s %9s %6s %6s %4s %3d" % (
            r["setup"], r["workload"], r["rate"], r.get("completed", "-"), r.get("failed", "-"),
            fmt(r.get("req_s"), ".2f"), fmt(r.get("goodput"), ".2f"), pct(r.get("attain")),
            pct(r.get("attain_x0.5")), pct(r.get("attain_x2.0")), fmt(r.get("p90_ttft"), ".0f"),
            fmt(r.get("p90_tpot"), ".1f"),
            "-" if r.get("kv_share") is None else "%.1f" % (100 * r["kv_share"]),
            fmt(r.get("kv_ms_per_pull"), ".1f"), fmt(r.get("kv_gb_s"), ".1f"),
            "-" if "kv_fail" not in r else "%d" % r["kv_fail"], pct(r.get("prefix_hit")), r["rc"]))

    solo = []
    try:
        with open(os.path.join(out, "solo.tsv")) as f:
            for parts in (ln.rstrip("\n").split("\t") for ln in f if ln.strip()):
                if len(parts) < 4:
                    continue
                ent = {"setup": parts[0], "workload": parts[1], "rc": int(parts[2])}
                try:
                    with open(parts[3]) as rf:
                        res = json.load(rf)
                    ent.update(completed=res.get("completed"), mean_ttft=res.get("mean_ttft_ms"),
                               mean_tpot=res.get("mean_tpot_ms"), mean_e2el=res.get("mean_e2el_ms"))
                except (OSError, ValueError):
                    pass
                solo.append(ent)
    except OSError:
        pass
    if solo:
        slo_of = {}
        for r in rows:
            if r.get("slo"):
                slo_of.setdefault(r["workload"], r["slo"])
        print("\n== unloaded latency (requests one at a time), the floor under each SLO ==")
        print("%-7s %-8s %4s %10s %10s %10s %3s" % ("setup", "workload", "done", "TTFT ms", "TPOT ms", "E2EL ms", "rc"))
        for e in solo:
            slo = slo_of.get(e["workload"], {})
            print("%-7s %-8s %4s %10s %10s %10s %3d%s" % (
                e["setup"], e["workload"], fmt(e.get("completed"), "d"), fmt(e.get("mean_ttft"), ".1f"),
                fmt(e.get("mean_tpot"), ".2f"), fmt(e.get("mean_e2el"), ".0f"), e["rc"],
                "" if not slo else "   SLO ttft %g / tpot %g ms" % (slo.get("ttft", 0), slo.get("tpot", 0))))

    summary = []
    print("\n== goodput: highest rate with >= %d%% of requests meeting the SLOs "
          "(tested / interpolated) ==" % round(100 * ATTAIN))
    for wl in dict.fromkeys(r["workload"] for r in rows):
        per = {}
        for setup in dict.fromkeys(r["setup"] for r in rows if r["workload"] == wl):
            rs = [r for r in rows if r["workload"] == wl and r["setup"] == setup and "attain" in r]
            ent = {}
            for s in SCALES:
                key = "attain" if s == 1.0 else f"attain_x{s}"
                ent[s] = rate_meeting([(r["rate"], r.get(key) or 0.0) for r in rs])
            per[setup] = ent
            slo = next((r["slo"] for r in rs if r.get("slo")), {})
            kvs = [r["kv_share"] for r in rs if r.get("kv_share") is not None]
            summary.append({"workload": wl, "setup": setup, "slo_ms": slo,
                            "goodput_rate": ent[1.0][0], "goodput_rate_interp": ent[1.0][1],
                            "goodput_rate_x0.5": ent[0.5][1], "goodput_rate_x2": ent[2.0][1],
                            "max_tested_rate": max((r["rate"] for r in rs), default=None),
                            "kv_share_max": max(kvs) if kvs else None})
            mx = summary[-1]["max_tested_rate"]
            print("%-8s %-7s SLO %-22s  x1: %s / %s req/s   x0.5: %s   x2: %s   (rates tested up to %s)%s" % (
                wl, setup, " ".join(f"{k}:{v:g}ms" for k, v in slo.items()),
                fmt(ent[1.0][0], "g"), fmt_rate(ent[1.0], mx), fmt_rate(ent[0.5], mx),
                fmt_rate(ent[2.0], mx), fmt(mx, "g"),
                "" if not kvs else "   KV share of request time up to %.1f%%" % (100 * max(kvs))))
        if "1p1d" in per and "2rep" in per:
            a, b = per["1p1d"][1.0][1], per["2rep"][1.0][1]
            mx = max((r["rate"] for r in rows if r["workload"] == wl), default=None)
            if a is None or b is None:
                ratio = "- (%s met the SLOs at no tested rate)" % " and ".join(
                    k for k, v in (("1p1d", a), ("2rep", b)) if v is None)
            else:
                ratio = "%.2fx" % (a / b)
                if mx is not None and max(per["1p1d"][1.0][0], per["2rep"][1.0][0]) >= mx:
                    ratio += " (a knee lies beyond the highest tested rate: a bound, not a figure)"
            print("%-8s 1p1d / 2rep goodput ratio: %s  (DistServe reports 2x-7.4x)" % (wl, ratio))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"runs": rows, "summary": summary, "solo": solo}, f, indent=1)
    return 0


def main(argv):
    cmds = {"wait": cmd_wait, "scrape": cmd_scrape, "probe": cmd_probe, "kvcheck": cmd_kvcheck,
            "report": cmd_report}
    if len(argv) < 2 or argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    return cmds[argv[1]](argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
