#!/usr/bin/env python3
"""Golden outputs from an independent implementation (Hugging Face transformers) on the
same weights as pdserve's engine tests.

  python3 tests/golden/make_goldens.py [--gguf PATH] [--models-dir tests/data/models]

For the default model (GGUF Q4_1, dequantized to float32 by transformers' GGUF loader) and
for every small safetensors model under tests/data/models/*, it writes
tests/data/goldens/<name>.json with, for each prompt:
  ids       the prompt's token ids (from the HF tokenizer for the GGUF; fixed ids for the
            dummy models, which have no tokenizer)
  positions for every position: the top 32 (token, logit) pairs and the logits of 32 fixed
            probe tokens, so a comparison covers the head and the body of the distribution
  greedy    the 64 tokens greedy decoding produces (no eos stop)
  prompt_logprobs  (default model) vLLM's prompt_logprobs from the same logits: for each
            prompt token i >= 1, [token, logprob, rank, [[top token, logprob] x 5]] with
            log_softmax in float64 and rank = how many logits are >= the token's
Needs torch, transformers, gguf (pip); the outputs are committed so CI does not.
"""
import argparse
import glob
import json
import os

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a land far, far away, there lived a",
]
N_TOP = 32
N_GREEDY = 64
N_PLP_TOP = 5


def prompt_logprobs(logits, ids):
    out = []
    for i in range(1, len(ids)):
        row = logits[i - 1].astype(np.float64)
        m = row.max()
        lp = row - (m + np.log(np.exp(row - m).sum()))
        tok = ids[i]
        rank = int((logits[i - 1] >= logits[i - 1][tok]).sum())
        top = np.argsort(-row, kind="stable")[:N_PLP_TOP]
        out.append([int(tok), float(lp[tok]), rank, [[int(t), float(lp[t])] for t in top]])
    return out


def record(model, ids, vocab, plp=False):
    rng = np.random.default_rng(1234)
    probes = sorted(int(x) for x in rng.choice(vocab, size=32, replace=False))
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
    positions = []
    for row in logits:
        top = np.argsort(-row, kind="stable")[:N_TOP]
        positions.append({"top": [[int(t), float(row[t])] for t in top],
                          "probe": [[p, float(row[p])] for p in probes]})
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=N_GREEDY, do_sample=False,
                             eos_token_id=None, pad_token_id=0, min_new_tokens=N_GREEDY)
    greedy = [int(t) for t in out[0][len(ids):]]
    doc = {"ids": [int(i) for i in ids], "positions": positions, "greedy": greedy}
    if plp:
        doc["prompt_logprobs"] = prompt_logprobs(logits, [int(i) for i in ids])
    return doc


def save(name, doc):
    out_dir = os.path.join(ROOT, "tests", "data", "goldens")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name + ".json")
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print("wrote", path, os.path.getsize(path), "bytes")


def main():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import transformers
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.expanduser("~/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "tests", "data", "models"))
    ap.add_argument("--only-gguf", action="store_true", help="only the default model's golden")
    a = ap.parse_args()
    torch.manual_seed(0)
    meta = {"transformers": transformers.__version__, "torch": torch.__version__}

    if os.path.exists(a.gguf):
        d, f = os.path.split(a.gguf)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
        doc = {"model": "default-gguf", "meta": meta, "prompts": []}
        for p in PROMPTS:
            ids = tok(p, add_special_tokens=True)["input_ids"]
            doc["prompts"].append(dict(record(model, ids, model.config.vocab_size, plp=True), text=p))
        save("smollm2-135m-q4_1", doc)
    if a.only_gguf:
        return

    for cfg in sorted(glob.glob(os.path.join(a.models_dir, "*", "config.json"))):
        mdir = os.path.dirname(cfg)
        name = os.path.basename(mdir)
        model = AutoModelForCausalLM.from_pretrained(mdir, torch_dtype=torch.float32).eval()
        vocab = model.config.vocab_size
        rng = np.random.default_rng(7)
        doc = {"model": name, "meta": meta, "prompts": []}
        for n in (1, 7, 23):
            ids = [int(x) for x in rng.integers(3, vocab, size=n)]
            doc["prompts"].append(record(model, ids, vocab))
        save(name, doc)


if __name__ == "__main__":
    main()
