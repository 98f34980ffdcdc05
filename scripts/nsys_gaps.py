#!/usr/bin/env python3
"""nsys_gaps.py - where the GPU sits idle inside the phases of `bench_cuda --profile`.

    bench_cuda MODEL --trace DIR          (CUPTI, built into bench_cuda), or
    nsys profile -t cuda --capture-range=cudaProfilerApi -o tl bench_cuda MODEL --profile
    nsys stats -r cuda_gpu_trace,cuda_api_trace -f csv -o tl tl.nsys-rep
    scripts/nsys_gaps.py DIR/tl_cuda_gpu_trace.csv [DIR/tl_cuda_api_trace.csv]

The marker kernels (kcuda_bench_marker_kernel) split the trace into phases as in
ncu_split.py.  Unlike Nsight Compute, Nsight Systems times the kernels as they really run
(back to back, nothing replayed), so per phase (all its steps; the gaps between steps
are the host's work of the next step and show as host late): the span from the first GPU activity's
start to the last one's end, the time something ran, and the idle rest.  With the API
trace each gap is also classed: "host late" when the call that queued the next activity
started after the previous activity ended (the GPU waited for the CPU), else "device"
(launch latency, a dependency, a stream wait).  The largest gaps are listed with the
activities on either side, and the gaps summed per (before -> after) pair.
"""
import csv
import sys
from collections import OrderedDict

PHASES = ["prefill 2048", "decode b1 ctx1024", "decode b64 ctx1024"]


def col(header, *cands):
    for c in cands:
        for h in header:
            if h.strip().lower().startswith(c.lower()):
                return h
    return None


def load(path):
    with open(path, newline="", errors="replace") as f:
        lines = f.read().splitlines()
    start = next((i for i, l in enumerate(lines) if "Start" in l and "Duration" in l), None)
    if start is None:
        sys.exit("nsys_gaps: no CSV header in %s" % path)
    r = list(csv.DictReader(lines[start:]))
    return r, (list(r[0].keys()) if r else [])


def short(name):
    name = name[5:] if name.startswith("void ") else name
    name = name.split("(")[0].split("<")[0]
    return name[:60]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    gpu, gh = load(sys.argv[1])
    c_start, c_dur, c_name = col(gh, "Start"), col(gh, "Duration"), col(gh, "Name")
    c_corr = col(gh, "CorrId", "CorrID", "Corr")
    api_start = {}
    if len(sys.argv) > 2:
        api, ah = load(sys.argv[2])
        a_start, a_corr = col(ah, "Start"), col(ah, "CorrId", "CorrID", "Corr")
        for r in api:
            try:
                api_start[r[a_corr]] = int(float(r[a_start]))
            except (KeyError, ValueError, TypeError):
                pass
    acts = []
    for r in gpu:
        try:
            s, d = int(float(r[c_start])), int(float(r[c_dur]))
        except (ValueError, TypeError):
            continue
        acts.append((s, s + d, r[c_name], r.get(c_corr, "") if c_corr else ""))
    acts.sort()
    phases = [[] for _ in PHASES]
    p = -1
    for a in acts:
        if "kcuda_bench_marker_kernel" in a[2]:
            p += 1
            continue
        if 0 <= p < len(PHASES):
            phases[p].append(a)
    for i, name in enumerate(PHASES):
        ph = phases[i]
        if not ph:
            print("\n## %s: no activity" % name)
            continue
        span = ph[-1][1] - ph[0][0]
        busy, end, gaps = 0, ph[0][0], []
        for j, (s, e, n, corr) in enumerate(ph):
            if s > end and j > 0:
                late = corr in api_start and api_start[corr] > end
                gaps.append((s - end, ph[j - 1][2], n, late))
            busy += max(0, e - max(s, end))
            end = max(end, e)
        idle = span - busy
        host = sum(g[0] for g in gaps if g[3])
        print("\n## %s: %d activities, span %.3f ms, busy %.3f ms, idle %.3f ms (%.1f%%); %d gaps, "
              "host late %.3f ms%s" % (name, len(ph), span / 1e6, busy / 1e6, idle / 1e6, 100.0 * idle / span,
                                       len(gaps), host / 1e6, "" if api_start else " (no API trace)"))
        pairs = OrderedDict()
        for g, a, b, late in gaps:
            k = (short(a), short(b), late)
            n, t = pairs.get(k, (0, 0))
            pairs[k] = (n + 1, t + g)
        print("| before | after | host late | gaps | total (us) | mean (us) |")
        print("|---|---|---|---|---|---|")
        for (a, b, late), (n, t) in sorted(pairs.items(), key=lambda kv: -kv[1][1])[:14]:
            print("| %s | %s | %s | %d | %.1f | %.2f |" % (a, b, "yes" if late else "no", n, t / 1e3, t / 1e3 / n))
        ks = OrderedDict()
        for s_, e_, n_, _ in ph:
            k = short(n_)
            c, t = ks.get(k, (0, 0))
            ks[k] = (c + 1, t + e_ - s_)
        print("kernels by time (all steps of the phase): " + ", ".join(
            "%s x%d %.3f ms" % (k, c, t / 1e6) for k, (c, t) in sorted(ks.items(), key=lambda kv: -kv[1][1])[:10]))
        print("largest: " + ", ".join("%.0f us (%s -> %s%s)" % (g / 1e3, short(a), short(b), ", host" if late else "")
                                      for g, a, b, late in sorted(gaps, key=lambda x: -x[0])[:6]))


if __name__ == "__main__":
    main()
