#!/usr/bin/env python3
"""ncu_split.py - per-phase kernel time from Nsight Compute's CSV of `bench_cuda --profile`.

    ncu --profile-from-start off --clock-control none --cache-control none \
        --metrics gpu__time_duration.sum --csv bench_cuda --profile > ncu.csv
    scripts/ncu_split.py ncu.csv

The marker kernels (kcuda_bench_marker_kernel) split the launches into phases: prefill
2048, decode b1, decode b64.  For each phase: the kernels grouped by name (and grid for
GEMMs, whose shapes differ), their count, total and share, and the phase's sum.  Kernel
times are from serialized replays (no overlap between kernels), so the phase sum is an
upper bound of the real step and the shares are what matters.
"""
import csv
import io
import sys
from collections import OrderedDict

PHASES = ["prefill 2048", "decode b1 ctx1024", "decode b64 ctx1024"]
UNIT = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}


def rows(path):
    text = open(path, errors="replace").read()
    start = text.find('"ID"')
    if start < 0:
        sys.exit("ncu_split: no CSV header in %s" % path)
    for r in csv.DictReader(io.StringIO(text[start:])):
        if r.get("Metric Name") == "gpu__time_duration.sum":
            yield r


def short(name):
    name = name.split("(")[0] if not name.startswith("void ") else name[5:].split("(")[0]
    return name[:70]


def main():
    phase = -1
    acc = [OrderedDict() for _ in PHASES]
    for r in rows(sys.argv[1]):
        name = r["Kernel Name"]
        if "kcuda_bench_marker_kernel" in name:
            phase += 1
            continue
        if phase < 0 or phase >= len(PHASES):
            continue
        us = float(r["Metric Value"].replace(",", "")) * UNIT.get(r["Metric Unit"], 1.0)
        key = short(name)
        if "gemm" in name.lower() or "sm90" in name or "cutlass" in name.lower():
            key = "%s grid%s" % (key[:50], r.get("Grid Size", ""))
        n, t = acc[phase].get(key, (0, 0.0))
        acc[phase][key] = (n + 1, t + us)
    for p, name in enumerate(PHASES):
        tot = sum(t for _, t in acc[p].values())
        print("\n## %s: %d kernels, %.3f ms (serialized)" % (name, sum(n for n, _ in acc[p].values()), tot / 1e3))
        print("| kernel | launches | total (ms) | share |")
        print("|---|---|---|---|")
        for k, (n, t) in sorted(acc[p].items(), key=lambda kv: -kv[1][1]):
            print("| %s | %d | %.3f | %.1f%% |" % (k, n, t / 1e3, 100.0 * t / tot if tot else 0))


if __name__ == "__main__":
    main()
