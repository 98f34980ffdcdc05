"""kcuda_norm.cu, kcuda_kv.cu and the attention kernels run on the CPU (gen_emu.py +
emu_cuda.h: every CUDA thread a ucontext; emu_overrides.h for the inline PTX), so a
machine without a GPU checks their index math, vector paths, guards and barriers:
emu_norm_rope.cpp compares the RMSNorm entry points with kcpu (every vector width and CTA
size, the scalar fallbacks) and the RoPE + KV write table kernel with the old kernel bit
for bit (rows, cache bytes, error bits) and with kcpu, all cache types, both styles;
emu_attn.cpp the decode attention kernels (the tensor-core one's cp.async ring in every
shape built, its register form, the SIMT kernel) and the FlashAttention-2 prefill kernel
with kcpu; emu_gemv.cpp the decode GEMVs (plain, and the fused norm / GLU / residual
forms) with a double-precision reference; emu_sample.cpp the device sampler with
kcpu_sample_rows, token for token; emu_misc.cpp embedding (GGUF types), softmax /
log-softmax / argmax and the activations with kcpu.  Needs g++, the CUDA
headers (cuda_fp8.h; CUDA_INC or /usr/local/cuda/include) and the build's
libpd_kernels_cpu.a / libpd_common.a; skips without them.
PD_EMU_BIG=1 adds the 2048-token shapes (minutes)."""
import os
import shutil
import subprocess
import sys

import pytest

from pdtest import BUILD, ROOT

HERE = os.path.dirname(os.path.abspath(__file__))


def build_emulated(tmp_path, cu_files, main_cpp):
    """gen_emu.py over cu_files, then main_cpp compiled against the copies; the executable
    (skips without g++, the CUDA headers or the built libraries)."""
    inc = os.environ.get("CUDA_INC", "/usr/local/cuda/include")
    cxx = shutil.which("g++")
    libs = [os.path.join(BUILD, "kernels", "libpd_kernels_cpu.a"), os.path.join(BUILD, "common", "libpd_common.a")]
    if not os.path.exists(os.path.join(inc, "cuda_fp8.h")):
        pytest.skip(f"no CUDA headers in {inc}")
    if cxx is None:
        pytest.skip("no g++")
    for lib in libs:
        if not os.path.exists(lib):
            pytest.skip(f"{lib} is not built")
    gen = tmp_path / "gen"
    subprocess.run([sys.executable, os.path.join(HERE, "gen_emu.py"), str(gen),
                    os.path.join(ROOT, "kernels", "cuda")] + cu_files, check=True)
    exe = tmp_path / os.path.splitext(main_cpp)[0]
    # -fno-strict-aliasing: kernels read 16-byte words as __half2 / float4 through casts,
    # as CUDA code does; g++ at -O2 may otherwise drop those reads
    subprocess.run([cxx, "-std=c++17", "-O2", "-fno-strict-aliasing", "-w", "-I", str(gen), "-I", inc,
                    "-I", os.path.join(ROOT, "common"), "-I", os.path.join(ROOT, "kernels", "cpu"),
                    "-I", os.path.join(ROOT, "kernels", "cuda"),
                    os.path.join(HERE, main_cpp), "-o", str(exe)] + libs + ["-lm", "-lpthread"],
                   check=True)
    return exe


def run_emulated(tmp_path, cu_files, main_cpp, expect, args=(), timeout=600):
    """Build main_cpp over the emulated cu_files, run it, and check it passed with
    `expect` in its summary."""
    exe = build_emulated(tmp_path, cu_files, main_cpp)
    r = subprocess.run([str(exe)] + list(args), capture_output=True, text=True, timeout=timeout)
    print(r.stdout[-4000:])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert expect in r.stdout


def test_norm_rope_emulated(tmp_path):
    run_emulated(tmp_path, ["kcuda_norm.cu", "kcuda_kv.cu"], "emu_norm_rope.cpp", "\n0 failures",
                 ["big"] if os.environ.get("PD_EMU_BIG") == "1" else [], timeout=1200)


def test_attention_emulated(tmp_path):
    """The decode kernels (the tensor-core one in every ring shape and in registers, the
    SIMT one) and the FlashAttention-2 prefill kernel on the CPU against kcpu
    (emu_attn.cpp)."""
    run_emulated(tmp_path, ["kcuda_kv.cu", "kcuda_attn_decode.cu", "kcuda_attn_prefill.cu"], "emu_attn.cpp",
                 "108 decode and 6 prefill runs, 0 failures")


def test_gemv_emulated(tmp_path):
    """The decode GEMVs (kcuda_gemv_scaled: every row count, 1 / 2 / 4 warps a column, the
    load paths; kcuda_gemv_ex: norm + store, norm + GLU, accumulate) on the CPU against a
    double-precision reference (emu_gemv.cpp)."""
    run_emulated(tmp_path, ["kcuda_gemv.cu"], "emu_gemv.cpp", "186 runs, 0 failures")


def test_sample_emulated(tmp_path):
    """The device sampler (kcuda_sample_rows: greedy, temperature, top-k, top-p, min-p,
    NaN / -inf / tied rows) on the CPU against kcpu_sample_rows with the same uniforms:
    the same token in every row (emu_sample.cpp)."""
    run_emulated(tmp_path, ["kcuda_sample.cu"], "emu_sample.cpp", "52 rows, 0 failures")


def test_small_kernels_emulated(tmp_path):
    """Embedding over f32 / f16 / bf16 / Q8_0 / Q4_0 / Q4_1 tables, softmax, log-softmax
    and argmax (masked, NaN, tied rows), the GLU and unary activations, on the CPU against
    kcpu (emu_misc.cpp)."""
    run_emulated(tmp_path, ["kcuda_embedding.cu", "kcuda_softmax.cu", "kcuda_act.cu"], "emu_misc.cpp",
                 "31 checks, 0 failures")
