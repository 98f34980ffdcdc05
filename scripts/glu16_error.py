#!/usr/bin/env python3
"""glu16_error.py - how much the 16-bit gate|up output (PD_CUDA_GLU16) moves the logits.

    scripts/glu16_error.py [SmolLM2.gguf]     # default: the cache scripts/setup.sh fills

A numpy emulation of the CUDA backend's prefill numerics on two models: three forwards
of the same tokens,
  f32     every value f32 (the golden path);
  mm16    weights and every GEMM input rounded to bf16 (round to nearest even), f32
          outputs: the 16-bit-input path before pfout (the attention itself stays f32
          here: its f16 operands are a separate, unchanged error);
  glu16   mm16 with the gate and up GEMM outputs rounded to bf16 before SiLU-mul.
Printed: the largest and rms logit difference glu16 - mm16 (relative to max |logit|),
and for SmolLM2 test_golden's metric (|a - b| / max(1, |b|) over each row's top-32 f32
logits) of mm16 and glu16 against f32, next to test_cuda_golden's bf16 tolerance 5e-2.
Then tiny-llama (tests/data/models) on test_cuda_mmin's prefill batch.  Needs numpy and
gguf (pip); random token ids (a fixed seed), so a few seconds.
"""
import json
import os
import struct
import sys

import numpy as np


def bf16(x):
    """x rounded to bf16 (nearest even), as f32"""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


class Llama:
    """the llama forward of one sequence; weights by role (names mapped per format)"""

    def __init__(self, w, n_layers, n_heads, n_kv, eps, theta, adjacent_rope):
        self.w, self.L, self.H, self.KV, self.eps, self.theta = w, n_layers, n_heads, n_kv, eps, theta
        self.adjacent = adjacent_rope  # GGUF's permuted q/k: rotate adjacent pairs
        self.D = w("embed").shape[1]
        self.hd = self.D // n_heads

    def rms(self, x, g):
        return (x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + self.eps)).astype(np.float32) * g

    def rope(self, x, pos):
        hd = self.hd
        inv = self.theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = pos[:, None] * inv[None, :]
        c = np.cos(ang)[:, None, :].astype(np.float32)
        s = np.sin(ang)[:, None, :].astype(np.float32)
        if self.adjacent:
            x0, x1 = x[..., 0::2], x[..., 1::2]
            o = np.empty_like(x)
            o[..., 0::2] = x0 * c - x1 * s
            o[..., 1::2] = x0 * s + x1 * c
            return o
        x0, x1 = x[..., : hd // 2], x[..., hd // 2 :]
        return np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], -1)

    def forward(self, tok, mode, last_only=False):
        """mode 0 f32, 1 mm16, 2 glu16; logits [T, V] (or of the last token)"""
        w, H, KV, hd = self.w, self.H, self.KV, self.hd
        q16 = bf16 if mode else (lambda a: a)

        def mm(x, m):
            return q16(x) @ q16(m).T

        T = len(tok)
        pos = np.arange(T, dtype=np.float64)
        x = w("embed")[tok].copy()
        mask = np.triu(np.full((T, T), -np.inf, np.float32), 1)[None]
        for l in range(self.L):
            h = self.rms(x, w("attn_norm", l))
            q = self.rope(mm(h, w("q", l)).reshape(T, H, hd), pos)
            k = self.rope(mm(h, w("k", l)).reshape(T, KV, hd), pos)
            v = mm(h, w("v", l)).reshape(T, KV, hd)
            k, v = np.repeat(k, H // KV, 1), np.repeat(v, H // KV, 1)
            s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            x = x + mm(np.einsum("hts,shd->thd", s, v).reshape(T, H * hd), w("o", l))
            h = self.rms(x, w("ffn_norm", l))
            g, u = mm(h, w("gate", l)), mm(h, w("up", l))
            if mode == 2:
                g, u = bf16(g), bf16(u)
            x = x + mm(g / (1 + np.exp(-g)) * u, w("down", l))
        h = self.rms(x[-1:] if last_only else x, w("out_norm"))
        return mm(h, w("lm_head")).astype(np.float64)


def smollm2(path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(path)
    t = {}
    for ten in r.tensors:
        t[ten.name] = dequantize(ten.data, ten.tensor_type).astype(np.float32)

    def meta(k):
        f = r.fields[k]
        return f.parts[f.data[0]][0]

    names = {"embed": "token_embd.weight", "attn_norm": "blk.{}.attn_norm.weight", "q": "blk.{}.attn_q.weight",
             "k": "blk.{}.attn_k.weight", "v": "blk.{}.attn_v.weight", "o": "blk.{}.attn_output.weight",
             "ffn_norm": "blk.{}.ffn_norm.weight", "gate": "blk.{}.ffn_gate.weight", "up": "blk.{}.ffn_up.weight",
             "down": "blk.{}.ffn_down.weight", "out_norm": "output_norm.weight",
             "lm_head": "output.weight" if "output.weight" in t else "token_embd.weight"}
    return Llama(lambda role, l=0: t[names[role].format(l)], int(meta("llama.block_count")),
                 int(meta("llama.attention.head_count")), int(meta("llama.attention.head_count_kv")),
                 float(meta("llama.attention.layer_norm_rms_epsilon")), float(meta("llama.rope.freq_base")), True)


def load_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    out = {}
    for k, m in json.loads(b[8 : 8 + n]).items():
        if k == "__metadata__":
            continue
        s, e = m["data_offsets"]
        raw = b[8 + n + s : 8 + n + e]
        if m["dtype"] == "BF16":
            a = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif m["dtype"] == "F16":
            a = np.frombuffer(raw, np.float16).astype(np.float32)
        else:
            a = np.frombuffer(raw, np.float32)
        out[k] = a.reshape(m["shape"])
    return out


def tiny_llama(d):
    t = {}
    for f in os.listdir(d):
        if f.endswith(".safetensors"):
            t.update(load_safetensors(os.path.join(d, f)))
    c = json.load(open(os.path.join(d, "config.json")))
    p = "model.layers.{}."
    names = {"embed": "model.embed_tokens.weight", "attn_norm": p + "input_layernorm.weight",
             "q": p + "self_attn.q_proj.weight", "k": p + "self_attn.k_proj.weight",
             "v": p + "self_attn.v_proj.weight", "o": p + "self_attn.o_proj.weight",
             "ffn_norm": p + "post_attention_layernorm.weight", "gate": p + "mlp.gate_proj.weight",
             "up": p + "mlp.up_proj.weight", "down": p + "mlp.down_proj.weight", "out_norm": "model.norm.weight",
             "lm_head": "lm_head.weight"}
    return Llama(lambda role, l=0: t[names[role].format(l)], c["num_hidden_layers"], c["num_attention_heads"],
                 c["num_key_value_heads"], c["rms_norm_eps"], c["rope_theta"], False)


def main():
    home = os.environ.get("PDSERVE_CACHE") or os.path.join(os.environ.get("HOME", ""), ".cache/pdserve")
    gguf = sys.argv[1] if len(sys.argv) > 1 else os.path.join(home, "models/SmolLM2-135M-Instruct.Q4_1.gguf")
    rng = np.random.default_rng(2)
    if os.path.exists(gguf):
        m = smollm2(gguf)
        V = m.w("embed").shape[0]
        for T in (16, 64, 128):
            tok = rng.integers(0, V, T)
            F, B, C = (m.forward(tok, mode) for mode in (0, 1, 2))
            top = np.argsort(-F, axis=1)[:, :32]

            def golden(a):
                return max((np.abs(a[r, top[r]] - F[r, top[r]]) / np.maximum(1, np.abs(F[r, top[r]]))).max()
                           for r in range(T))

            big = np.abs(B).max()
            print(f"SmolLM2 T={T}: glu16 - mm16 max {np.abs(C - B).max() / big:.2e}, rms "
                  f"{np.sqrt(((C - B) ** 2).mean()) / big:.2e} of max |logit| {big:.1f}; golden top-32 metric vs "
                  f"f32: mm16 {golden(B):.2e}, glu16 {golden(C):.2e} (bf16 tolerance 5e-2)", flush=True)
    else:
        print(f"SmolLM2: {gguf} not found, skipped")
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests/data/models/tiny-llama")
    m = tiny_llama(d)
    V = m.w("embed").shape[0]
    t, logits = 0, []
    for s, n in enumerate((13, 17, 10)):  # test_cuda_mmin's prefill batch
        tok = np.array([(i * 53 + s * 7 + 3) % V for i in range(t, t + n)])
        t += n
        logits.append([m.forward(tok, mode, last_only=True)[0] for mode in (0, 1, 2)])
    F, B, C = (np.array([row[i] for row in logits]) for i in range(3))
    big = np.abs(B).max()
    print(f"tiny-llama (test_cuda_mmin batch): glu16 - mm16 max {np.abs(C - B).max() / big:.2e} of max |logit| "
          f"{big:.3f}; mm16 - f32 {np.abs(B - F).max() / big:.2e}")


if __name__ == "__main__":
    main()
