#!/usr/bin/env python3
"""Seed corpora for the fuzz targets: small valid GGUF and safetensors files.

Writes tests/fuzz/corpus/gguf/*.gguf (python gguf writer: metadata of every value type,
F32/F16/Q8_0/Q4_1/Q4_K/Q6_K tensors, a tiny llama config) and
tests/fuzz/corpus/safetensors/*.safetensors.  Needs numpy, gguf, safetensors (pip).
"""
import os

import numpy as np
from gguf import GGMLQuantizationType as T, GGML_QUANT_SIZES, GGUFWriter
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def quant_bytes(rng, qtype, n_rows, n_cols):
    bs, bb = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_rows, n_cols // bs * bb), dtype=np.uint8)
    return raw


def gguf_seed(path, with_llama):
    rng = np.random.default_rng(5)
    w = GGUFWriter(path, "llama")
    w.add_uint8("k.u8", 3)
    w.add_int16("k.i16", -4)
    w.add_float64("k.f64", 2.5)
    w.add_bool("k.b", True)
    w.add_array("k.strs", ["a", "bcd", ""])
    w.add_array("k.ints", [1, 2, 3])
    if with_llama:
        w.add_block_count(1)
        w.add_context_length(64)
        w.add_embedding_length(32)
        w.add_feed_forward_length(64)
        w.add_head_count(2)
        w.add_head_count_kv(1)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_token_list(["<s>", "</s>", "a", "b"])
        w.add_bos_token_id(0)
        w.add_eos_token_id(1)
    w.add_tensor("token_embd.weight", rng.standard_normal((4, 32)).astype(np.float32))
    w.add_tensor("blk.0.attn_q.weight", quant_bytes(rng, T.Q8_0, 32, 32), raw_dtype=T.Q8_0)
    w.add_tensor("blk.0.attn_k.weight", quant_bytes(rng, T.Q4_1, 16, 32), raw_dtype=T.Q4_1)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(32, np.float16))
    w.add_tensor("q4k", quant_bytes(rng, T.Q4_K, 1, 256), raw_dtype=T.Q4_K)
    w.add_tensor("q6k", quant_bytes(rng, T.Q6_K, 1, 256), raw_dtype=T.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    os.makedirs(os.path.join(HERE, "corpus", "gguf"), exist_ok=True)
    os.makedirs(os.path.join(HERE, "corpus", "safetensors"), exist_ok=True)
    gguf_seed(os.path.join(HERE, "corpus", "gguf", "seed_llama.gguf"), True)
    gguf_seed(os.path.join(HERE, "corpus", "gguf", "seed_meta.gguf"), False)
    rng = np.random.default_rng(6)
    save_file({"model.embed_tokens.weight": rng.standard_normal((4, 8)).astype(np.float16),
               "model.layers.0.self_attn.q_proj.weight": np.ones((8, 8), np.float32),
               "model.decoder.layers.1.fc1.bias": np.zeros(3, np.float32),
               "scalar": np.array(1, np.int64)},
              os.path.join(HERE, "corpus", "safetensors", "seed.safetensors"),
              metadata={"format": "pt"})
    save_file({"x": np.zeros((2, 2, 2, 2), np.int8)},
              os.path.join(HERE, "corpus", "safetensors", "seed_4d.safetensors"))


if __name__ == "__main__":
    main()
