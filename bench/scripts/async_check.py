#!/usr/bin/env python3
"""async_check.py - asynchronous output processing against the synchronous engine on a
real node: the same greedy completions (one at a time, so every step runs the same
kernels whatever the mode), with and without stop strings, must come back identical from
a node started with and without --disable-async-output-proc.

    async_check.py NODE_BINARY MODEL [node options...]

Prints one line per mode and "async_check: PASS" or the differences (exit 1)."""
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())["choices"][0]


def run(binary, model, extra, prompts, stops):
    port = free_port()
    log = open(f"/tmp/async_check_{port}.log", "wb")
    p = subprocess.Popen([binary, "--model", model, "--port", str(port), "--served-model-name", "m", *extra],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except Exception:
                if p.poll() is not None:
                    raise RuntimeError(open(log.name).read()[-3000:])
                time.sleep(0.5)
        out = []
        for i, pr in enumerate(prompts):
            body = {"model": "m", "prompt": pr, "max_tokens": 48, "temperature": 0, "ignore_eos": True}
            if stops is not None:
                body["stop"] = [stops[i]]
            c = post(port, body)
            out.append((c["text"], c["finish_reason"]))
        return out
    finally:
        p.terminate()
        p.wait(timeout=60)


def main():
    binary, model, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    rnd = random.Random(5)
    words = "the a of river mountain seven blue quickly under between model token cache step".split()
    prompts = [" ".join(rnd.choice(words) for _ in range(rnd.randint(4, 40))) for _ in range(12)]
    base = run(binary, model, extra + ["--disable-async-output-proc"], prompts, None)
    # stop strings from the middle of each greedy text (4 characters)
    stops = [t[len(t) // 2:len(t) // 2 + 4] or "zzzz" for t, _ in base]
    results = {}
    for mode, flags in (("sync", ["--disable-async-output-proc"]), ("async", [])):
        results[mode] = (run(binary, model, extra + flags, prompts, None),
                         run(binary, model, extra + flags, prompts, stops))
        n_stop = sum(1 for _, r in results[mode][1] if r == "stop")
        print(f"{mode}: {len(prompts)} completions, {n_stop} ended by their stop string")
    bad = 0
    for k in range(2):
        for i, (a, b) in enumerate(zip(results["sync"][k], results["async"][k])):
            if a != b:
                bad += 1
                print(f"  differs ({'stop' if k else 'plain'} {i}): sync {a!r} async {b!r}")
    print("async_check:", "PASS" if bad == 0 and results["sync"][0] == base else f"FAIL ({bad} differ)")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
