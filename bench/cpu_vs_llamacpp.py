#!/usr/bin/env python3
"""cpu_vs_llamacpp.py - pdserve's CPU engine beside llama.cpp on the same GGUF, in one run.

For each thread count (default 1 and 2) it runs, back to back:
  * bench/bench_engine (pdserve's whole engine: scheduler, forward, greedy sampling) and
    reads its JSON line: prefill tokens/s (P prompt tokens -> first token), decode tokens/s
    at batch 1 (and the aggregate at batch 8 / 32, which the peer has no counterpart for),
    the weight bytes per forward and the memory bandwidth it measured;
  * llama.cpp through the llama-cpp-python package (Llama(model_path, n_threads=T,
    n_threads_batch=T, n_ctx, n_batch=512)): prefill = wall time of eval(prompt of P
    tokens) (llama.cpp computes the last row's logits in it, as pdserve does); decode =
    wall time of D single-token evals after a short prompt, each next token the argmax of
    the logits (greedy), like pdserve's batch-1 decode.
The prompts are the same pseudo-random token ids bench_engine draws (same LCG).  Every
case keeps the best of --reps runs (the machine may be shared).  The decode ceiling
(weight bytes per forward / memcpy and read bandwidth) is printed beside both.

Usage: python3 bench/cpu_vs_llamacpp.py [--bench build/bench/bench_engine] [--model X.gguf]
           [--threads 1,2] [--prefill 128,512] [--decode 128] [--batches 1,8,32] [--reps 3]
If llama_cpp cannot be imported the pdserve side still runs and the peer column says why.
"""
import argparse
import json
import os
import subprocess
import sys
import time

DEFAULT_MODEL = os.path.expanduser("~/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf")
M64 = (1 << 64) - 1


def make_prompt(seed, n):
    """The same ids as bench_engine.c's make_prompt."""
    s = (seed * 2862933555777941757 + 3037000493) & M64
    out = []
    for _ in range(n):
        s = (s * 6364136223846793005 + 1442695040888963407) & M64
        out.append(1000 + (s >> 33) % 39000)
    return out


def run_pdserve(bench, model, threads, prefill, n_decode, batches, reps, decode_prompt):
    cmd = [bench, "-m", model, "-t", str(threads), "-p", ",".join(map(str, prefill)),
           "-n", str(n_decode), "-b", ",".join(map(str, batches)), "-r", str(reps),
           "--decode-prompt", str(decode_prompt)]
    env = dict(os.environ, PD_LOG_LEVEL=os.environ.get("PD_LOG_LEVEL", "warn"))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError("bench_engine failed (%d): %s" % (p.returncode, p.stderr[-2000:]))
    for line in p.stdout.splitlines():
        if line.startswith("JSON "):
            return json.loads(line[5:])
    raise RuntimeError("bench_engine printed no JSON line")


class LlamaPeer:
    def __init__(self, model, threads, n_ctx):
        import llama_cpp  # noqa: F401 (import error reported by the caller)
        import numpy as np
        self.np = np
        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads,
                                   n_ctx=n_ctx, n_batch=512, n_ubatch=512, verbose=False,
                                   logits_all=False)
        self.n_vocab = self.llm.n_vocab()

    def last_logits(self):
        ptr = self.llama_cpp.llama_get_logits(self.llm._ctx.ctx)
        return self.np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def prefill(self, tokens):
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(tokens)
        return time.perf_counter() - t0

    def decode(self, prompt, n):
        self.llm.reset()
        self.llm.eval(prompt)
        tok = int(self.np.argmax(self.last_logits()))
        t0 = time.perf_counter()
        for _ in range(n):
            self.llm.eval([tok])
            tok = int(self.np.argmax(self.last_logits()))
        return time.perf_counter() - t0


def run_llama(model, threads, prefill, n_decode, reps, decode_prompt):
    peer = LlamaPeer(model, threads, n_ctx=max(max(prefill) + 8, decode_prompt + n_decode + 8))
    peer.prefill(make_prompt(999999, 64))  # warm-up (pages the weights in)
    seed = 1
    res = {"prefill": [], "decode": []}
    for P in prefill:
        v = []
        for _ in range(reps):
            v.append(P / peer.prefill(make_prompt(seed, P)))
            seed += 1
        v.sort()
        res["prefill"].append({"n": P, "best": v[-1], "median": v[len(v) // 2]})
    v = []
    for _ in range(reps):
        v.append(n_decode / peer.decode(make_prompt(seed, decode_prompt), n_decode))
        seed += 1
    v.sort()
    res["decode"].append({"batch": 1, "best": v[-1], "median": v[len(v) // 2]})
    return res


def load_avg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--bench", default=os.path.join(here, "..", "build", "bench", "bench_engine"))
    ap.add_argument("--model", default=os.environ.get("PD_MODEL_GGUF", DEFAULT_MODEL))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prefill", default="128,512")
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--decode-prompt", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="write all figures to this file")
    a = ap.parse_args()
    if not os.path.exists(a.model):
        print("SKIP: model %s not found" % a.model)
        return 0
    threads = [int(x) for x in a.threads.split(",")]
    prefill = [int(x) for x in a.prefill.split(",")]
    batches = [int(x) for x in a.batches.split(",")]
    peer_err = None
    try:
        import llama_cpp
        peer_name = "llama.cpp (llama-cpp-python %s)" % getattr(llama_cpp, "__version__", "?")
    except Exception as e:  # the pdserve side still runs
        peer_err = "llama_cpp import failed: %s" % e
        peer_name = "none"

    all_rows = []
    print("model %s; load average at start %s; peer %s" % (a.model, load_avg(), peer_err or peer_name))
    for T in threads:
        t0 = time.time()
        pd = run_pdserve(a.bench, a.model, T, prefill, a.decode, batches, a.reps, a.decode_prompt)
        lc = None
        if peer_err is None:
            try:
                lc = run_llama(a.model, T, prefill, a.decode, a.reps, a.decode_prompt)
            except Exception as e:
                peer_err = "llama.cpp run failed: %s" % e
        print("\nthreads %d (load average %s, %.0f s)" % (T, load_avg(), time.time() - t0))
        print("  weights per forward %.1f MB; memcpy %.2f GB/s, read %.2f GB/s -> decode ceiling "
              "%.0f / %.0f forwards/s" % (pd["weight_bytes"] / 1e6, pd["memcpy_gbs"], pd["read_gbs"],
                                          pd["ceiling_memcpy_tok_s"], pd["ceiling_read_tok_s"]))
        print("  %-20s %12s %12s %8s %12s" % ("case (best of %d)" % a.reps, "pdserve", "llama.cpp",
                                               "ratio", "pd tok/CPU-s"))
        for i, P in enumerate(prefill):
            p = pd["prefill"][i]
            l = lc["prefill"][i]["best"] if lc else None
            row = {"threads": T, "case": "prefill %d" % P, "pdserve": p["best"], "llama_cpp": l,
                   "pd_per_cpu_s": p["per_cpu_s"]}
            all_rows.append(row)
            print("  %-20s %12.1f %12s %8s %12.1f" % (row["case"], p["best"], "%.1f" % l if l else "-",
                                                     "%.2f" % (p["best"] / l) if l else "-", p["per_cpu_s"]))
        for i, B in enumerate(batches):
            d = pd["decode"][i]
            l = lc["decode"][0]["best"] if (lc and B == 1) else None
            row = {"threads": T, "case": "decode %d b%d" % (a.decode, B), "pdserve": d["best"],
                   "llama_cpp": l, "pd_per_cpu_s": d["per_cpu_s"],
                   "ceiling_memcpy": pd["ceiling_memcpy_tok_s"] * B,
                   "ceiling_read": pd["ceiling_read_tok_s"] * B}
            all_rows.append(row)
            print("  %-20s %12.1f %12s %8s %12.1f" % (row["case"], d["best"], "%.1f" % l if l else "-",
                                                     "%.2f" % (d["best"] / l) if l else "-", d["per_cpu_s"]))
    if peer_err:
        print("\npeer: %s" % peer_err)
    out = {"model": a.model, "peer": peer_name if peer_err is None else peer_err, "rows": all_rows}
    print("JSON " + json.dumps(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
