"""Compare pdserve's C tokenizer (through tests/tokenizer/tok_driver) with Hugging Face
`tokenizers` on the generated corpus, for Llama 2, Llama 3, Qwen3 and SmolLM2.

Checks per string: ids without and with special tokens, decode with and without
skip_special_tokens, and that the incremental detokenizer's deltas add up to the decode.
The driver comes from PD_TOK_DRIVER, $PD_BINARY_DIR/tests/tokenizer/tok_driver or
build/tests/tokenizer/tok_driver; the test skips when it is not built.
"""
import json
import os
import subprocess
import sys
import tarfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import corpus  # noqa: E402

tokenizers = pytest.importorskip("tokenizers")
NAMES = ["llama2", "llama3", "qwen3", "smollm2"]


def driver_path():
    cands = [os.environ.get("PD_TOK_DRIVER"),
             os.path.join(os.environ.get("PD_BINARY_DIR", ""), "tests", "tokenizer", "tok_driver"),
             os.path.join(ROOT, "build", "tests", "tokenizer", "tok_driver")]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    pytest.skip("tok_driver is not built (cmake --build build --target tok_driver)")


@pytest.fixture(scope="module")
def driver():
    return driver_path()


def unpack(name, tmp_path_factory):
    d = tmp_path_factory.mktemp(name)
    with tarfile.open(os.path.join(ROOT, "tests", "data", "tokenizers", name + ".tar.xz")) as tar:
        tar.extractall(d, filter="data")
    return str(d)


def run_driver(args, texts):
    inp = "".join(json.dumps(t) + "\n" for t in texts).encode()
    r = subprocess.run(args, input=inp, capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    out = [json.loads(line) for line in r.stdout.decode().split("\n") if line]
    assert len(out) == len(texts)
    for o in out:
        for k in ("decode", "decode_skip", "stream"):
            o[k] = bytes.fromhex(o[k]).decode("utf-8")
    return out


def check(tk, texts, outs, name, limit=10, lossy_stream_ok=False):
    bad = []
    for t, o in zip(texts, outs):
        if isinstance(t, dict):
            ids_sp = t["decode"]
        else:
            ids = tk.encode(t, add_special_tokens=False).ids
            ids_sp = tk.encode(t, add_special_tokens=True).ids
            if o["ids"] != ids or o["ids_special"] != ids_sp:
                bad.append(("ids", t, ids[:40], o["ids"][:40], ids_sp[:4], o["ids_special"][:4]))
                continue
        dec = tk.decode(ids_sp, skip_special_tokens=False)
        dec_skip = tk.decode(ids_sp, skip_special_tokens=True)
        if o["decode"] != dec or o["decode_skip"] != dec_skip:
            bad.append(("decode", t, dec[:80], o["decode"][:80], dec_skip[:80], o["decode_skip"][:80]))
        elif o["stream"] != dec_skip and not (lossy_stream_ok and "\ufffd" in dec_skip):
            bad.append(("stream", t, dec_skip[:80], o["stream"][:80]))
    msg = "\n".join(repr(b)[:600] for b in bad[:limit])
    assert not bad, f"{name}: {len(bad)} of {len(texts)} differ:\n{msg}"


@pytest.mark.parametrize("name", NAMES)
def test_corpus_matches_reference(name, driver, tmp_path_factory):
    d = unpack(name, tmp_path_factory)
    tk = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    texts = corpus.generate(name=name)
    assert len(texts) >= 2000
    outs = run_driver([driver, os.path.join(d, "tokenizer.json"), os.path.join(d, "tokenizer_config.json")],
                      texts)
    check(tk, texts, outs, name)
    # round trip: decode(encode(text)) gives the text back wherever the reference does
    # (every string for Llama 3's byte-level BPE without normalizer; the others normalize
    # (NFC), put SentencePiece's space after <s>, or drop bytes their vocabulary lacks)
    prefix = tk.decode(tk.encode("", add_special_tokens=True).ids, skip_special_tokens=False)
    ref_rt = [tk.decode(tk.encode(t, add_special_tokens=True).ids, skip_special_tokens=False) == prefix + t
              for t in texts]
    c_rt = [o["decode"] == prefix + t for t, o in zip(texts, outs)]
    assert c_rt == ref_rt
    if name == "llama3":
        assert all(c_rt)


@pytest.mark.parametrize("name", NAMES)
def test_decode_random_ids(name, driver, tmp_path_factory):
    """Decoding arbitrary id sequences (partial UTF-8, specials anywhere) matches too."""
    import random
    d = unpack(name, tmp_path_factory)
    tk = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    n = tk.get_vocab_size(with_added_tokens=True)
    rng = random.Random(7)
    specials = list(tk.get_added_tokens_decoder().keys())
    reqs = []
    for _ in range(400):
        k = rng.randint(0, 30)
        ids = [rng.randrange(n) if rng.random() < 0.7 else rng.choice(specials + list(range(256)))
               for _ in range(k)]
        reqs.append({"decode": ids})
    outs = run_driver([driver, os.path.join(d, "tokenizer.json")], reqs)
    # SentencePiece's ByteFallback decodes a run of byte tokens as a whole, so a later
    # byte can turn already-streamed text into U+FFFDs; streaming cannot take text back.
    check(tk, reqs, outs, name, lossy_stream_ok=(name == "llama2"))


def gguf_path():
    p = os.environ.get("PD_MODEL_GGUF",
                       os.path.expanduser("~/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    return p if os.path.isfile(p) else None


def test_gguf_vocab_smollm2(driver, tmp_path_factory):
    """The vocabulary constructor fed from GGUF metadata equals the tokenizer.json path."""
    gguf = pytest.importorskip("gguf")
    p = gguf_path()
    if p is None:
        pytest.skip("default model GGUF not found (PD_MODEL_GGUF)")
    r = gguf.GGUFReader(p)

    def arr(key):
        f = r.fields[key]
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i][0].item() for i in f.data]

    def scalar(key, default=None):
        if key not in r.fields:
            return default
        f = r.fields[key]
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else v[0].item()

    vocab = {"model": scalar("tokenizer.ggml.model"), "pre": scalar("tokenizer.ggml.pre"),
             "tokens": arr("tokenizer.ggml.tokens"), "token_types": arr("tokenizer.ggml.token_type"),
             "merges": arr("tokenizer.ggml.merges"),
             "bos_id": scalar("tokenizer.ggml.bos_token_id", -1), "eos_id": scalar("tokenizer.ggml.eos_token_id", -1),
             "unk_id": scalar("tokenizer.ggml.unknown_token_id", -1),
             "pad_id": scalar("tokenizer.ggml.padding_token_id", -1),
             "add_bos": int(bool(scalar("tokenizer.ggml.add_bos_token", False)))}
    d = tmp_path_factory.mktemp("gguf")
    vp = os.path.join(d, "vocab.json")
    json.dump(vocab, open(vp, "w"))
    ref = unpack("smollm2", tmp_path_factory)
    tk = tokenizers.Tokenizer.from_file(os.path.join(ref, "tokenizer.json"))
    texts = corpus.generate(name="smollm2")
    outs = run_driver([driver, "--gguf-vocab", vp], texts)
    check(tk, texts, outs, "smollm2-gguf")


def test_vocab_constructor_llama2(driver, tmp_path_factory):
    """SentencePiece path of the vocabulary constructor (tokens, types, merges as GGUF has them)."""
    ref = unpack("llama2", tmp_path_factory)
    j = json.load(open(os.path.join(ref, "tokenizer.json"), encoding="utf-8"))
    v = j["model"]["vocab"]
    toks = [None] * len(v)
    for k, i in v.items():
        toks[i] = k
    types = [6 if (len(t) == 6 and t.startswith("<0x")) else 1 for t in toks]
    types[0], types[1], types[2] = 2, 3, 3
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    vocab = {"model": "llama", "tokens": toks, "token_types": types, "merges": merges,
             "bos_id": 1, "eos_id": 2, "unk_id": 0, "add_bos": 1}
    d = tmp_path_factory.mktemp("llama2v")
    vp = os.path.join(d, "vocab.json")
    json.dump(vocab, open(vp, "w"))
    tk = tokenizers.Tokenizer.from_file(os.path.join(ref, "tokenizer.json"))
    texts = corpus.generate(name="llama2")
    outs = run_driver([driver, "--gguf-vocab", vp], texts)
    check(tk, texts, outs, "llama2-vocab")


@pytest.mark.parametrize("scheme,split", [("first", False), ("always", True), ("never", False), ("first", True)])
def test_metaspace_variants(scheme, split, driver, tmp_path_factory):
    """Llama 2's vocabulary with a Metaspace pre-tokenizer instead of the normaliser, the
    way newer SentencePiece conversions (Mistral v0.3, ...) write tokenizer.json."""
    ref = unpack("llama2", tmp_path_factory)
    j = json.load(open(os.path.join(ref, "tokenizer.json"), encoding="utf-8"))
    j["normalizer"] = None
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split}
    d = tmp_path_factory.mktemp("meta")
    p = os.path.join(d, "tokenizer.json")
    with open(p, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    tk = tokenizers.Tokenizer.from_file(p)
    texts = corpus.generate(n=800, name="llama2")
    outs = run_driver([driver, p], texts)
    check(tk, texts, outs, f"metaspace-{scheme}-{split}")


@pytest.mark.parametrize("prefix_space", [False, True])
def test_gpt2_slow_files(prefix_space, driver, tmp_path_factory):
    """vocab.json + merges.txt + tokenizer_config.json (OPT/GPT-2 style checkpoints),
    against the tokenizer transformers' GPT2Converter would build from them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    ref = unpack("smollm2", tmp_path_factory)
    j = json.load(open(os.path.join(ref, "tokenizer.json"), encoding="utf-8"))
    d = tmp_path_factory.mktemp("gpt2files")
    vp, mp, cp = (os.path.join(d, n) for n in ("vocab.json", "merges.txt", "tokenizer_config.json"))
    with open(vp, "w", encoding="utf-8") as f:
        json.dump(j["model"]["vocab"], f, ensure_ascii=False)
    with open(mp, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in j["model"]["merges"]:
            f.write((m if isinstance(m, str) else " ".join(m)) + "\n")
    cfg = {"add_bos_token": True, "add_prefix_space": prefix_space, "bos_token": "<|im_start|>",
           "eos_token": {"content": "<|im_end|>"}, "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>",
           "tokenizer_class": "GPT2Tokenizer"}
    with open(cp, "w") as f:
        json.dump(cfg, f)
    tk = Tokenizer(models.BPE.from_file(vp, mp))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    tk.add_special_tokens(["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    texts = corpus.generate(n=800, name="smollm2")
    outs = run_driver([driver, "--bpe-files", vp, mp, cp], texts)
    check(tk, texts, outs, f"gpt2-files-{prefix_space}")


@pytest.mark.parametrize("name", NAMES)
def test_long_texts(name, driver, tmp_path_factory):
    """Long inputs (several KB: the per-call word cache and long SentencePiece words)."""
    import random
    d = unpack(name, tmp_path_factory)
    tk = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    base = corpus.generate(name=name)
    rng = random.Random(11)
    texts = []
    for _ in range(60):
        parts = rng.sample(base, rng.randint(20, 200))
        texts.append(rng.choice(["", " ", "\n", "\n\n"]).join(parts))
    outs = run_driver([driver, os.path.join(d, "tokenizer.json"), os.path.join(d, "tokenizer_config.json")], texts)
    check(tk, texts, outs, name + "-long")


def test_added_token_flags(driver, tmp_path_factory):
    """lstrip / rstrip / single_word on added tokens (none of the shipped files sets them,
    but converted models do, e.g. "<mask>" with lstrip)."""
    ref = unpack("qwen3", tmp_path_factory)
    j = json.load(open(os.path.join(ref, "tokenizer.json"), encoding="utf-8"))
    flags = {"<|im_start|>": {"lstrip": True}, "<|im_end|>": {"rstrip": True},
             "<think>": {"single_word": True}, "</think>": {"lstrip": True, "rstrip": True},
             "<tool_call>": {"single_word": True, "lstrip": True}}
    for a in j["added_tokens"]:
        a.update(flags.get(a["content"], {}))
    d = tmp_path_factory.mktemp("flags")
    p = os.path.join(d, "tokenizer.json")
    with open(p, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    tk = tokenizers.Tokenizer.from_file(p)
    texts = corpus.generate(n=1200, name="qwen3")
    texts += ["a <think> b", "a<think>b", "<think>x", "x <think>", " \t<|im_start|>  hi  <|im_end|> \n x",
              "w </think>  z", "é<tool_call>", "1<think>2", "_<think>_", " <tool_call> ", "\u3000<|im_start|>"]
    outs = run_driver([driver, p], texts)
    check(tk, texts, outs, "added-flags")


def test_nfc_stress(driver, tmp_path_factory):
    """Qwen3 normalises with NFC: random runs of bases, combining marks (old and new),
    Hangul jamo and syllables, singletons and exclusions."""
    import random
    import unicodedata
    rng = random.Random(5)
    marks = [chr(c) for c in range(0x300, 0x370)] + ["\u0591", "\u05b0", "\u0654", "\u093c", "\u0e38",
                                                      "\u1ab0", "\u1dc0", "\u20d0", "\u302a", "\u089e",
                                                      "\u1ac2", "\U0001d165", "\U00011930", "\u0f71"]
    bases = list("aeiouAEIOUnNcCsSzZ") + ["\u1100", "\u1161", "\u11a8", "\uac00", "\uac01", "\u1112",
                                          "\u1175", "\u11c2", "\u0391", "\u03c9", "\u0415", "\u0626",
                                          "\u0b47", "\u0b3e", "\u0cc6", "\u0cd5", "\U00011935",
                                          "\u212b", "\u2126", "\uf900", "\u0958", "\u2adc", " ", "x"]
    texts = []
    for _ in range(1500):
        texts.append("".join(rng.choice(marks if rng.random() < 0.5 else bases) for _ in range(rng.randint(1, 12))))
        if rng.random() < 0.3:
            texts[-1] = unicodedata.normalize(rng.choice(["NFD", "NFKD", "NFC"]), texts[-1])
    d = unpack("qwen3", tmp_path_factory)
    tk = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    outs = run_driver([driver, os.path.join(d, "tokenizer.json")], texts)
    check(tk, texts, outs, "nfc")


def test_vocab_constructor_llama2_scores(driver, tmp_path_factory):
    """SentencePiece GGUF files carry scores, not merges: merges are derived from the
    scores.  Scores here are minus the rank of the first merge making each piece (the
    order SentencePiece BPE scores follow), and the result must equal the merges file."""
    ref = unpack("llama2", tmp_path_factory)
    j = json.load(open(os.path.join(ref, "tokenizer.json"), encoding="utf-8"))
    v = j["model"]["vocab"]
    toks = [None] * len(v)
    for k, i in v.items():
        toks[i] = k
    types = [6 if (len(t) == 6 and t.startswith("<0x")) else 1 for t in toks]
    types[0], types[1], types[2] = 2, 3, 3
    rank = {}
    for r, m in enumerate(j["model"]["merges"]):
        a, b = m.split(" ") if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    scores = [float(-rank.get(t, 10 ** 6)) if types[i] == 1 else 0.0 for i, t in enumerate(toks)]
    vocab = {"model": "llama", "tokens": toks, "token_types": types, "scores": scores,
             "bos_id": 1, "eos_id": 2, "unk_id": 0, "add_bos": 1}
    d = tmp_path_factory.mktemp("llama2s")
    vp = os.path.join(d, "vocab.json")
    json.dump(vocab, open(vp, "w"))
    tk = tokenizers.Tokenizer.from_file(os.path.join(ref, "tokenizer.json"))
    texts = corpus.generate(name="llama2")
    outs = run_driver([driver, "--gguf-vocab", vp], texts)
    check(tk, texts, outs, "llama2-scores")
