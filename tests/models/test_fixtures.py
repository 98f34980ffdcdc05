"""The committed model fixtures are what the scripts in tests/models/ produce.

Regenerates the tiny Hugging Face directories and the dequantization reference data in
a temporary directory and compares them byte for byte with tests/data/models/.  The
default-model hashes are recomputed only when that model is present.
Run: python3 -m pytest tests/models
"""
import importlib.util
import os
import pathlib

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("safetensors")
pytest.importorskip("gguf")

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "models"


def load(name):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_models_reproducible(tmp_path, monkeypatch):
    mod = load("make_tiny_models")
    monkeypatch.setattr(mod, "OUT", str(tmp_path))
    assert mod.main() == 0
    dirs = sorted(p.name for p in tmp_path.iterdir())
    assert dirs == ["tiny-llama", "tiny-mistral", "tiny-opt", "tiny-qwen2", "tiny-qwen3"]
    for d in dirs:
        for f in sorted((tmp_path / d).iterdir()):
            committed = DATA / d / f.name
            assert committed.exists(), committed
            assert f.read_bytes() == committed.read_bytes(), committed
            assert f.stat().st_size < 1 << 20


def test_quant_golden_reproducible(tmp_path):
    mod = load("make_quant_golden")
    out = tmp_path / "quant_golden.bin"
    mod.golden(str(out))
    assert out.read_bytes() == (DATA / "quant_golden.bin").read_bytes()


def test_default_model_hashes(tmp_path):
    mod = load("make_quant_golden")
    model = os.environ.get("PD_MODEL_GGUF") or mod.DEFAULT_MODEL
    if not os.path.exists(model):
        pytest.skip(f"default model {model} absent")
    out = tmp_path / "hashes.txt"
    mod.model_hashes(model, str(out))
    assert out.read_text() == (DATA / "smollm2_dequant_hashes.txt").read_text()


def test_tiny_gguf_reproducible(tmp_path):
    mod = load("make_tiny_gguf")
    for src, arch, perm in [("tiny-llama", "llama", True), ("tiny-qwen3", "qwen3", False)]:
        out = tmp_path / f"{src}.gguf"
        mod.build(src, str(out), arch, perm)
        assert out.read_bytes() == (DATA / f"{src}.gguf").read_bytes()


def test_permute_roundtrip():
    """The C loader's un-permutation (HF row h*hd + i*hd/2 + j = GGUF row h*hd + 2j + i)
    inverts the converter's permute."""
    mod = load("make_tiny_gguf")
    n_head, hd = 3, 8
    w = np.arange(n_head * hd * 2).reshape(n_head * hd, 2)
    g = mod.permute(w, n_head)
    for r in range(n_head * hd):
        h, i, j = r // hd, (r % hd) // (hd // 2), r % (hd // 2)
        assert (w[r] == g[h * hd + 2 * j + i]).all()
