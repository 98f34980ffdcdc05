#!/usr/bin/env python3
"""Build tests/data/tokenizers/<name>.tar.xz: tokenizer.json (+ tokenizer_config.json) and
goldens.jsonl (a few hundred corpus strings with the reference ids), for the C tests.

  python3 tests/tokenizer/make_data.py [--src /work/shared/testdata/tokenizers]
                                       [--gguf SmolLM2-135M-Instruct.Q4_1.gguf]

llama2, llama3, qwen3 are copied from --src.  smollm2 is made from the default model's
GGUF with transformers (AutoTokenizer.from_pretrained(dir, gguf_file=...)).  transformers'
GGUF converter drops SmolLM2's digit splitting (its pre-tokenizer comes out as a bare
ByteLevel), while both the model's own tokenizer.json and llama.cpp's "smollm"
pre-tokenizer split every digit; we restore Sequence[Digits(individual), ByteLevel] so
the reference is the tokenizer the model was trained with.

Reference ids come from the `tokenizers` package.  Needs: tokenizers; for smollm2 also
transformers, gguf and torch.
"""
import argparse
import io
import json
import os
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "tests", "data", "tokenizers")
sys.path.insert(0, HERE)
import corpus  # noqa: E402

N_GOLDENS = 300


def smollm2_files(gguf_path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        j = json.load(open(os.path.join(d, "tokenizer.json"), encoding="utf-8"))
        cfg = open(os.path.join(d, "tokenizer_config.json"), "rb").read()
    bl = j["pre_tokenizer"]
    assert bl["type"] == "ByteLevel", bl
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, bl]}
    return json.dumps(j, ensure_ascii=False, indent=2).encode("utf-8"), cfg


def goldens(tok_json_bytes, name):
    from tokenizers import Tokenizer
    tk = Tokenizer.from_str(tok_json_bytes.decode("utf-8"))
    texts = corpus.generate(name=name)
    step = max(1, len(texts) // N_GOLDENS)
    lines = []
    for t in texts[::step][:N_GOLDENS]:
        ids = tk.encode(t, add_special_tokens=False).ids
        ids_sp = tk.encode(t, add_special_tokens=True).ids
        lines.append(json.dumps({"text": t, "ids": ids, "ids_special": ids_sp,
                                 "decode": tk.decode(ids_sp, skip_special_tokens=False),
                                 "decode_skip": tk.decode(ids_sp, skip_special_tokens=True)},
                                ensure_ascii=True))
    return ("\n".join(lines) + "\n").encode("ascii")


def write_tar(name, files):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name + ".tar.xz")
    with tarfile.open(path, "w:xz", preset=9) as tar:
        for fname, data in files.items():
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    print("wrote", path, os.path.getsize(path))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default="/work/shared/testdata/tokenizers")
    ap.add_argument("--gguf", default=os.environ.get(
        "PD_MODEL_GGUF", os.path.expanduser("~/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf")))
    ap.add_argument("names", nargs="*", default=["llama2", "llama3", "qwen3", "smollm2"])
    a = ap.parse_args()
    for name in a.names:
        if name == "smollm2":
            tj, cfg = smollm2_files(a.gguf)
        else:
            tj = open(os.path.join(a.src, name, "tokenizer.json"), "rb").read()
            cfg = open(os.path.join(a.src, name, "tokenizer_config.json"), "rb").read()
        write_tar(name, {"tokenizer.json": tj, "tokenizer_config.json": cfg,
                         "goldens.jsonl": goldens(tj, name)})


if __name__ == "__main__":
    main()
