#!/usr/bin/env python3
"""Build the tiny Hugging Face model directories the C tests load.

One directory per architecture under tests/data/models/tiny-<arch>/: config.json,
generation_config.json, tokenizer_config.json, a stub tokenizer.json and safetensors
weights with random values (fixed seed).  tiny-llama is sharded (two files and
model.safetensors.index.json).  expect.json lists, for every tensor under its canonical
(GGUF-style) name, the dtype, the shape in ne order (fastest first), the first values
and the float64 sum, which test_model.c compares against what the loader returns.

Needs numpy and safetensors (pip).  Run from the repository root:
    python3 tests/models/make_tiny_models.py
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "models")

H, L, NH, NKV, FF, V, MAXPOS = 64, 2, 4, 2, 128, 256, 512

LLAMA_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
OPT_MAP = {
    "self_attn_layer_norm.weight": "attn_norm.weight",
    "self_attn_layer_norm.bias": "attn_norm.bias",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.out_proj.weight": "attn_output.weight",
    "self_attn.out_proj.bias": "attn_output.bias",
    "final_layer_norm.weight": "ffn_norm.weight",
    "final_layer_norm.bias": "ffn_norm.bias",
    "fc1.weight": "ffn_up.weight",
    "fc1.bias": "ffn_up.bias",
    "fc2.weight": "ffn_down.weight",
    "fc2.bias": "ffn_down.bias",
}

NP_DTYPE = {"float32": np.float32, "float16": np.float16}


def rand(rng, shape, dtype):
    x = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    if dtype == "bfloat16":
        # safetensors.numpy has no bfloat16: store the top 16 bits of float32 (round to
        # nearest even) as uint16 and patch the header dtype afterwards.
        u = x.view(np.uint32).astype(np.uint64)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        return u
    return x.astype(NP_DTYPE[dtype])


def as_f64(arr, dtype):
    if dtype == "bfloat16":
        return (arr.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return arr.astype(np.float64)


def llama_tensors(arch, head_dim, rng, dtype, tie):
    t = {}
    q, kv = NH * head_dim, NKV * head_dim
    t["model.embed_tokens.weight"] = rand(rng, (V, H), dtype)
    for layer in range(L):
        p = f"model.layers.{layer}."
        t[p + "input_layernorm.weight"] = rand(rng, (H,), dtype)
        t[p + "post_attention_layernorm.weight"] = rand(rng, (H,), dtype)
        t[p + "self_attn.q_proj.weight"] = rand(rng, (q, H), dtype)
        t[p + "self_attn.k_proj.weight"] = rand(rng, (kv, H), dtype)
        t[p + "self_attn.v_proj.weight"] = rand(rng, (kv, H), dtype)
        t[p + "self_attn.o_proj.weight"] = rand(rng, (H, q), dtype)
        if arch == "qwen2":
            t[p + "self_attn.q_proj.bias"] = rand(rng, (q,), dtype)
            t[p + "self_attn.k_proj.bias"] = rand(rng, (kv,), dtype)
            t[p + "self_attn.v_proj.bias"] = rand(rng, (kv,), dtype)
        if arch == "qwen3":
            t[p + "self_attn.q_norm.weight"] = rand(rng, (head_dim,), dtype)
            t[p + "self_attn.k_norm.weight"] = rand(rng, (head_dim,), dtype)
        t[p + "mlp.gate_proj.weight"] = rand(rng, (FF, H), dtype)
        t[p + "mlp.up_proj.weight"] = rand(rng, (FF, H), dtype)
        t[p + "mlp.down_proj.weight"] = rand(rng, (H, FF), dtype)
        # a rotary cache some old checkpoints carry: the loader must skip it
        if layer == 0 and arch == "llama":
            t[p + "self_attn.rotary_emb.inv_freq"] = np.ones((head_dim // 2,), np.float32)
    t["model.norm.weight"] = rand(rng, (H,), dtype)
    if not tie:
        t["lm_head.weight"] = rand(rng, (V, H), dtype)
    return t


def canon_llama(name):
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")
    rest = ".".join(parts[3:])
    return f"blk.{parts[2]}.{LLAMA_MAP[rest]}" if rest in LLAMA_MAP else None


def opt_tensors(rng, dtype):
    t = {}
    t["model.decoder.embed_tokens.weight"] = rand(rng, (V, H), dtype)
    t["model.decoder.embed_positions.weight"] = rand(rng, (MAXPOS + 2, H), dtype)
    for layer in range(L):
        p = f"model.decoder.layers.{layer}."
        for k in OPT_MAP:
            if k.startswith("fc1"):
                shape = (FF, H) if k.endswith("weight") else (FF,)
            elif k.startswith("fc2"):
                shape = (H, FF) if k.endswith("weight") else (H,)
            elif "proj" in k:
                shape = (H, H) if k.endswith("weight") else (H,)
            else:
                shape = (H,)
            t[p + k] = rand(rng, shape, dtype)
    t["model.decoder.final_layer_norm.weight"] = rand(rng, (H,), dtype)
    t["model.decoder.final_layer_norm.bias"] = rand(rng, (H,), dtype)
    t["lm_head.weight"] = t["model.decoder.embed_tokens.weight"].copy()  # tied: skipped
    return t


def canon_opt(name):
    top = {
        "model.decoder.embed_tokens.weight": "token_embd.weight",
        "model.decoder.embed_positions.weight": "position_embd.weight",
        "model.decoder.final_layer_norm.weight": "output_norm.weight",
        "model.decoder.final_layer_norm.bias": "output_norm.bias",
        "lm_head.weight": None,
    }
    if name in top:
        return top[name]
    parts = name.split(".")
    return f"blk.{parts[3]}.{OPT_MAP['.'.join(parts[4:])]}"


def save(path, tensors, dtype):
    save_file(tensors, path, metadata={"format": "pt"})
    if dtype != "bfloat16":
        return
    with open(path, "rb") as f:
        data = bytearray(f.read())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    for k, v in header.items():
        if k != "__metadata__" and v["dtype"] == "U16":
            v["dtype"] = "BF16"
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # offsets are relative to the data: only pad the header
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + bytes(data[8 + n:]))


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def build(name, config, tensors, canon, dtype, shards=1, chat_template=None):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    write_json(os.path.join(d, "config.json"), config)
    write_json(os.path.join(d, "generation_config.json"),
               {"bos_token_id": 1, "eos_token_id": [2, 7], "temperature": 0.6, "top_p": 0.9,
                "top_k": 20, "max_new_tokens": 64})
    tc = {"bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": False},
          "unk_token": None, "model_max_length": 4096}
    if chat_template:
        tc["chat_template"] = chat_template
    write_json(os.path.join(d, "tokenizer_config.json"), tc)
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        f.write('{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}\n')
    names = sorted(tensors)
    if shards == 1:
        save(os.path.join(d, "model.safetensors"), tensors, dtype)
    else:
        weight_map = {}
        per = (len(names) + shards - 1) // shards
        for s in range(shards):
            fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: tensors[k] for k in names[s * per:(s + 1) * per]}
            save(os.path.join(d, fn), part, dtype)
            weight_map.update({k: fn for k in part})
        write_json(os.path.join(d, "model.safetensors.index.json"),
                   {"metadata": {"total_size": 0}, "weight_map": weight_map})
    expect = {}
    for k in names:
        c = canon(k)
        if c is None:
            continue
        a = tensors[k]
        vals = as_f64(a, dtype).reshape(-1)
        expect[c] = {"dtype": {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype],
                     "ne": list(reversed(a.shape)), "first": [float(x) for x in vals[:4]],
                     "sum": float(vals.sum())}
    write_json(os.path.join(d, "expect.json"), expect)


def main():
    rng = np.random.default_rng(1234)
    common = {"hidden_size": H, "num_hidden_layers": L, "num_attention_heads": NH,
              "num_key_value_heads": NKV, "intermediate_size": FF, "vocab_size": V,
              "max_position_embeddings": MAXPOS, "rms_norm_eps": 1e-5, "bos_token_id": 1,
              "eos_token_id": 2, "hidden_act": "silu"}
    tmpl = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"

    cfg = dict(common, architectures=["LlamaForCausalLM"], model_type="llama",
               rope_theta=500000.0, tie_word_embeddings=False, torch_dtype="bfloat16",
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 128})
    build("tiny-llama", cfg, llama_tensors("llama", 16, rng, "bfloat16", False), canon_llama,
          "bfloat16", shards=2, chat_template=tmpl)

    cfg = dict(common, architectures=["MistralForCausalLM"], model_type="mistral",
               rope_theta=1000000.0, tie_word_embeddings=False, torch_dtype="float32",
               sliding_window=128)
    build("tiny-mistral", cfg, llama_tensors("mistral", 16, rng, "float32", False),
          canon_llama, "float32")

    cfg = dict(common, architectures=["Qwen2ForCausalLM"], model_type="qwen2",
               rope_theta=1000000.0, tie_word_embeddings=True, torch_dtype="float16",
               use_sliding_window=False, sliding_window=4096)
    build("tiny-qwen2", cfg, llama_tensors("qwen2", 16, rng, "float16", True), canon_llama,
          "float16", chat_template=[{"name": "tool_use", "template": "TOOLS"},
                                    {"name": "default", "template": tmpl}])

    cfg = dict(common, architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=32,
               rope_theta=1000000.0, tie_word_embeddings=True, torch_dtype="bfloat16",
               attention_bias=False)
    build("tiny-qwen3", cfg, llama_tensors("qwen3", 32, rng, "bfloat16", True), canon_llama,
          "bfloat16")

    cfg = {"architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": H,
           "num_hidden_layers": L, "num_attention_heads": NH, "ffn_dim": FF, "vocab_size": V,
           "max_position_embeddings": MAXPOS, "activation_function": "relu",
           "do_layer_norm_before": True, "word_embed_proj_dim": H, "enable_bias": True,
           "torch_dtype": "float16", "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1,
           "tie_word_embeddings": True}
    build("tiny-opt", cfg, opt_tensors(rng, "float16"), canon_opt, "float16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
