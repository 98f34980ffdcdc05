#!/usr/bin/env python3
"""Reference dequantization data for test_gguf.c, made with the python gguf package
(gguf.quants.dequantize, the reference the C dequantizers must match bit for bit).

1. tests/data/models/quant_golden.bin: for each type (F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K,
   Q6_K, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K) a record
       u32 ggml type, u32 n_blocks, u32 block_size, u32 block_bytes,
       n_blocks * block_bytes raw bytes, n_blocks * block_size float32 expected values
   Blocks are random bytes (fixed seed) whose f16 scale fields are replaced by finite
   values, so every quant code and scale bit pattern gets exercised.
2. tests/data/models/smollm2_dequant_hashes.txt (only when the default model is present):
   one line per tensor of SmolLM2-135M-Instruct.Q4_1.gguf: name, type and a 64-bit hash
   of the dequantized float32 bits (h = sum u32[i] * ((i + 1) * K) mod 2^64 with
   K = 0x9E3779B97F4A7C15), which the C test recomputes from its own dequantization.

Run from the repository root: python3 tests/models/make_quant_golden.py [model.gguf]
"""
import os
import struct
import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, GGUFReader
from gguf.quants import dequantize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "models")
DEFAULT_MODEL = os.path.expanduser("~/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf")
K = np.uint64(0x9E3779B97F4A7C15)

# byte offsets of f16 scale fields within a block
SCALES = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q8_0: [0], T.Q4_K: [0, 2], T.Q6_K: [208],
          T.Q5_0: [0], T.Q5_1: [0, 2], T.Q2_K: [80, 82], T.Q3_K: [108], T.Q5_K: [0, 2]}


def finite_f16(rng, n, lo=-8, hi=0):
    mag = 2.0 ** rng.uniform(lo, hi, n) * rng.choice([-1.0, 1.0], n)
    return mag.astype(np.float16)


def make_blocks(rng, qtype, n_blocks):
    bs, bb = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, bb), dtype=np.uint8)
    if qtype == T.F16:
        raw = finite_f16(rng, n_blocks, -20, 15).view(np.uint8).reshape(n_blocks, 2)
        raw[:4] = np.array([0x00, 0x00, 0x01, 0x80, 0xff, 0x03, 0xff, 0x7b],
                           np.uint8).reshape(4, 2)  # 0, -subnormal, subnormal, max
    elif qtype == T.BF16:
        v = raw.view(np.uint16).reshape(-1).copy()
        exp = (v >> 7) & 0xFF
        v[exp == 0xFF] &= 0xBFFF  # no inf/nan
        raw = v.view(np.uint8).reshape(n_blocks, 2)
    else:
        for off in SCALES[qtype]:
            raw[:, off:off + 2] = finite_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw


def golden(path):
    rng = np.random.default_rng(20261128)
    with open(path, "wb") as f:
        for qtype, n_blocks in [(T.F16, 512), (T.BF16, 512), (T.Q4_0, 64), (T.Q4_1, 64),
                                (T.Q8_0, 64), (T.Q4_K, 24), (T.Q6_K, 24), (T.Q5_0, 64),
                                (T.Q5_1, 64), (T.Q2_K, 24), (T.Q3_K, 24), (T.Q5_K, 24)]:
            bs, bb = GGML_QUANT_SIZES[qtype]
            raw = make_blocks(rng, qtype, n_blocks)
            vals = dequantize(raw.reshape(-1), qtype).astype(np.float32).reshape(-1)
            assert vals.size == n_blocks * bs
            f.write(struct.pack("<4I", int(qtype), n_blocks, bs, bb))
            f.write(raw.tobytes())
            f.write(vals.tobytes())


def tensor_hash(vals):
    u = vals.astype(np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    idx = np.arange(1, u.size + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return int(np.sum(u * (idx * K), dtype=np.uint64))


def model_hashes(model, path):
    r = GGUFReader(model)
    with open(path, "w") as f:
        f.write("# name type hash (see tests/models/make_quant_golden.py)\n")
        for t in r.tensors:
            vals = dequantize(t.data, t.tensor_type)
            f.write(f"{t.name} {t.tensor_type.name} {tensor_hash(vals):016x}\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    golden(os.path.join(OUT, "quant_golden.bin"))
    model = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL
    if os.path.exists(model):
        model_hashes(model, os.path.join(OUT, "smollm2_dequant_hashes.txt"))
    else:
        print(f"{model} not found: model hashes not written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
