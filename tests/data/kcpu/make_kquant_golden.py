#!/usr/bin/env python3
"""Golden K-quant blocks for test_kcpu: random Q4_K and Q6_K blocks (with sane f16
scales) and their dequantization by the gguf Python package (ggml's reference
arithmetic).  Output format (little endian), for Q4_K then Q6_K:
  u32 type, u32 n_blocks, block bytes, n_blocks*256 float32 values.
Run from the repository root: python3 tests/data/kcpu/make_kquant_golden.py
"""
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

rng = np.random.default_rng(20261128)
N_BLOCKS = 6


def f16_bytes(vals):
    return np.asarray(vals, dtype=np.float16).view(np.uint8).reshape(-1, 2)


def q4_k_blocks(n):
    blocks = rng.integers(0, 256, size=(n, 144), dtype=np.uint8)
    blocks[:, 0:2] = f16_bytes(rng.uniform(-0.05, 0.05, n))   # d
    blocks[:, 2:4] = f16_bytes(rng.uniform(0.0, 0.02, n))     # dmin
    return blocks


def q6_k_blocks(n):
    blocks = rng.integers(0, 256, size=(n, 210), dtype=np.uint8)
    blocks[:, 208:210] = f16_bytes(rng.uniform(-0.01, 0.01, n))  # d (last field)
    return blocks


with open("tests/data/kcpu/kquant_golden.bin", "wb") as f:
    for qtype, blocks in ((T.Q4_K, q4_k_blocks(N_BLOCKS)), (T.Q6_K, q6_k_blocks(N_BLOCKS))):
        values = dequantize(blocks.reshape(-1), qtype).astype(np.float32).reshape(-1)
        assert values.size == N_BLOCKS * 256
        f.write(struct.pack("<II", int(qtype), N_BLOCKS))
        f.write(blocks.tobytes())
        f.write(values.tobytes())
