#!/usr/bin/env python3
"""perf_server_split.py - split a node's CPU profile into model, client and server.

Reads `perf script -F ip,sym,dso` of a call-graph profile (perf record -g) of a
pdserve node on stdin.  Every sample goes to exactly one of:

- model: some frame of the stack is a function of the model's compute (the symbol list
  given, i.e. the CPU kernels and the engine's forward/backend/model/quant/sampler/
  sched/block code; none of them calls server code), or the leaf is in libm / libgomp.
  Any frame, not only the leaf: libc has no frame pointers, so a memcpy called by a
  model function shows as libc with its caller's caller above it, and a page fault in
  a model buffer as kernel frames over those (both were counted as server before);
- client rx: the stack runs the loopback device's receive path (process_backlog /
  __netif_receive_skb_one_core): the client's TCP receive and its wake-up, which
  loopback runs in softirq on the sending thread (with a real NIC it runs on the
  client's machine);
- server: everything else - our code, libmicrohttpd, libc, the send syscalls, the
  scheduler, page faults, timers: the full accounting, nothing left out.

Prints one line, "<samples> <model> <client_rx> <server>" (sample counts), and with
--detail FILE writes the server samples by category (syscall, or the outermost pdserve
function of the stack) with their leading leaf symbols.

usage: perf script -F ip,sym,dso -i perf.data | perf_server_split.py ENGINE_SYMS [--detail F]
"""
import collections
import sys

RX = ("process_backlog", "__netif_receive_skb_one_core")


def main():
    eng = set(open(sys.argv[1]).read().split())
    detail = sys.argv[sys.argv.index("--detail") + 1] if "--detail" in sys.argv else None
    counts = collections.Counter()
    cats = collections.Counter()
    leaves = collections.defaultdict(collections.Counter)
    chain = []

    def category(chain):
        syms = [s for s, _ in chain]
        calls = [s for s in syms if s.startswith(("__x64_sys_", "__sys_", "__do_sys_"))]
        if calls:
            return "syscall " + calls[-1]
        if "kernel" in chain[0][1]:
            entry = [s for s in syms if s.startswith(("asm_", "exc_", "sysvec", "irqentry", "schedule"))]
            return "kernel " + (entry[-1] if entry else syms[-1])
        own = [s for s, d in chain if "pdserve" in d]
        if own:
            return "user " + own[-1]
        dso = chain[0][1].rsplit("/", 1)[-1].strip("()")
        return "user " + dso

    def flush():
        if not chain:
            return
        user = [(s, d) for s, d in chain if "kernel" not in d]
        leaf, dso = user[0] if "kernel" in chain[0][1] and user else chain[0]
        if "libm.so" in dso or "libgomp" in dso or any(s in eng for s, _ in chain):
            counts["model"] += 1
        elif any(s in RX for s, _ in chain):
            counts["rx"] += 1
        else:
            counts["server"] += 1
            c = category(chain)
            cats[c] += 1
            leaves[c][chain[0][0]] += 1

    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line.strip():
            flush()
            chain = []
            continue
        parts = line.split(None, 2)
        if len(parts) >= 2 and line[:1] in ("\t", " "):
            chain.append((parts[1].split("+")[0], parts[2] if len(parts) > 2 else ""))
    flush()
    total = sum(counts.values())
    print(total, counts["model"], counts["rx"], counts["server"])
    if detail:
        with open(detail, "w") as f:
            for c, n in cats.most_common():
                top = ", ".join("%s %d" % kv for kv in leaves[c].most_common(3))
                f.write("%s\t%d\t%s\n" % (c, n, top))


if __name__ == "__main__":
    main()
