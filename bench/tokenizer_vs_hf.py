#!/usr/bin/env python3
"""The reference beside bench_tokenizer: Hugging Face `tokenizers` encoding the same text.

    build/bench/bench_tokenizer --mb 4 --dump /tmp/english.txt     # pdserve, and the text
    python3 bench/tokenizer_vs_hf.py /tmp/english.txt [build/testdata/tokenizers]

Cuts the text into the same 4,096-byte documents, encodes them one by one with
`Tokenizer.encode(doc, add_special_tokens=False)` on one thread (RAYON_NUM_THREADS=1) and
prints MB/s of process CPU time per tokenizer (the Python call overhead included, as a
server written in Python would pay it).  Needs the pip package tokenizers.
"""
import os
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import tokenizers  # noqa: E402


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    text = open(sys.argv[1], encoding="utf-8").read()
    tdir = sys.argv[2] if len(sys.argv) > 2 else os.path.join("build", "testdata", "tokenizers")
    data = text.encode("utf-8")
    docs = [data[i:i + 4096].decode("utf-8", errors="ignore") for i in range(0, len(data), 4096)]
    print(f"tokenizers {tokenizers.__version__}, {len(data) / 1e6:.1f} MB in {len(docs)} documents, one thread")
    for name in ("llama2", "llama3", "qwen3", "smollm2"):
        tk = tokenizers.Tokenizer.from_file(os.path.join(tdir, name, "tokenizer.json"))
        t0 = time.process_time()
        n = sum(len(tk.encode(d, add_special_tokens=False).ids) for d in docs)
        dt = time.process_time() - t0
        print(f"{name:8s} {len(data) / 1e6 / dt:8.2f} MB/s per core  {len(data) / n:.2f} bytes/token")


if __name__ == "__main__":
    main()
