#!/usr/bin/env python3
"""Build tiny GGUF files from the tiny Hugging Face fixtures, the way llama.cpp's
converter does, so test_model.c can check that loading the GGUF gives back exactly the
Hugging Face tensors.

tests/data/models/tiny-llama.gguf: from tiny-llama; Q and K weights permuted as
convert_hf_to_gguf.py's LlamaModel.permute does (reshape(n_head, 2, hd/2, in),
swap axes 1 and 2); BF16 tensors kept BF16.
tests/data/models/tiny-qwen3.gguf: from tiny-qwen3; no permutation (llama.cpp runs qwen3
with neox RoPE).

Run after make_tiny_models.py, from the repository root:
    python3 tests/models/make_tiny_gguf.py
Needs numpy and gguf (pip).
"""
import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFWriter

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "models")

LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def read_safetensors(path):
    """name -> (dtype string, numpy array of the raw element bits or values)."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = data[8 + n + b:8 + n + end]
        np_dt = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[e["dtype"]]
        out[name] = (e["dtype"], np.frombuffer(raw, np_dt).reshape(e["shape"]))
    return out


def permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def build(src_dir, out, arch, do_permute):
    with open(os.path.join(DATA, src_dir, "config.json")) as f:
        cfg = json.load(f)
    tensors = {}
    for fn in sorted(os.listdir(os.path.join(DATA, src_dir))):
        if fn.endswith(".safetensors"):
            tensors.update(read_safetensors(os.path.join(DATA, src_dir, fn)))
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim", cfg["hidden_size"] // n_head)

    w = GGUFWriter(out, arch)
    w.add_name(src_dir)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(32)  # MOSTLY_BF16
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"<t{i}>" for i in range(cfg["vocab_size"])])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_chat_template("{{ messages[0]['content'] }}")

    for name in sorted(tensors):
        dtype, arr = tensors[name]
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            parts = name.split(".")
            rest = ".".join(parts[3:])
            if rest not in LAYER_MAP:
                continue
            gname = f"blk.{parts[2]}.{LAYER_MAP[rest]}"
        if do_permute and gname.endswith("attn_q.weight"):
            arr = permute(arr, n_head)
        if do_permute and gname.endswith("attn_k.weight"):
            arr = permute(arr, n_kv)
        arr = np.ascontiguousarray(arr)
        if dtype == "BF16":
            w.add_tensor(gname, arr.view(np.uint8).reshape(*arr.shape[:-1], -1),
                         raw_dtype=T.BF16)
        else:
            w.add_tensor(gname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    build("tiny-llama", os.path.join(DATA, "tiny-llama.gguf"), "llama", True)
    build("tiny-qwen3", os.path.join(DATA, "tiny-qwen3.gguf"), "qwen3", False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
