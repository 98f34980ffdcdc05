/*
 * kcuda_internal.cuh - shared device helpers of the kcuda kernels: the launch check,
 * half/bf16 conversions, the dequantization of one weight element, block reductions.
 * Internal to kernels/cuda (never included from C).
 */
#ifndef KCUDA_INTERNAL_CUH
#define KCUDA_INTERNAL_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <limits.h>
#include <stdint.h>

extern "C" {
#include "pd_log.h"
}
#include "kcuda.h"

/* After a launch: a launch failure is logged with the op's name and returned. */
#define KCUDA_LAUNCHED(opname)                                                          \
    do {                                                                                 \
        cudaError_t e_ = cudaGetLastError();                                             \
        if (e_ != cudaSuccess) {                                                         \
            PD_LOG_ERR("%s: launch failed: %s", (opname), cudaGetErrorString(e_));       \
            return PD_ERR_CUDA;                                                          \
        }                                                                                \
        return PD_OK;                                                                    \
    } while (0)

#define KCUDA_CALL(expr, what)                                                           \
    do {                                                                                 \
        cudaError_t e_ = (expr);                                                         \
        if (e_ != cudaSuccess) {                                                         \
            PD_LOG_ERR("%s: %s", (what), cudaGetErrorString(e_));                        \
            return PD_ERR_CUDA;                                                          \
        }                                                                                \
    } while (0)

static inline unsigned kcuda_grid(int64_t n, int threads)
{
    int64_t g = (n + threads - 1) / threads;
    if (g > 65535LL * 16)
        g = 65535LL * 16; /* grid-stride loops cover the rest */
    return (unsigned)(g < 1 ? 1 : g);
}

__device__ __forceinline__ float kc_h2f(uint16_t h)
{
    return __half2float(__ushort_as_half(h));
}

/* Element i of a row of `type` (blocks as in kcpu.h), as f32, exactly like ggml. */
__device__ __forceinline__ float kc_dequant(const uint8_t *row, kcpu_dtype_t type, int64_t i)
{
    switch (type) {
    case KCPU_DTYPE_F32:
        return ((const float *)row)[i];
    case KCPU_DTYPE_F16:
        return kc_h2f(((const uint16_t *)row)[i]);
    case KCPU_DTYPE_BF16:
        return __uint_as_float((uint32_t)((const uint16_t *)row)[i] << 16);
    case KCPU_DTYPE_Q8_0: {
        const uint8_t *b = row + (i / 32) * 34;
        uint16_t d = (uint16_t)(b[0] | (b[1] << 8));
        return (float)(int8_t)b[2 + (i % 32)] * kc_h2f(d);
    }
    case KCPU_DTYPE_Q4_0: {
        const uint8_t *b = row + (i / 32) * 18;
        uint16_t d = (uint16_t)(b[0] | (b[1] << 8));
        int j = (int)(i % 32);
        int q = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
        return (float)(q - 8) * kc_h2f(d);
    }
    case KCPU_DTYPE_Q4_1: {
        const uint8_t *b = row + (i / 32) * 20;
        uint16_t d = (uint16_t)(b[0] | (b[1] << 8)), m = (uint16_t)(b[2] | (b[3] << 8));
        int j = (int)(i % 32);
        int q = j < 16 ? (b[4 + j] & 15) : (b[4 + j - 16] >> 4);
        return (float)q * kc_h2f(d) + kc_h2f(m);
    }
    default:
        return 0.0f;
    }
}

static inline bool kcuda_weight_type_ok(kcpu_dtype_t t)
{
    return t == KCPU_DTYPE_F32 || t == KCPU_DTYPE_F16 || t == KCPU_DTYPE_BF16 ||
           t == KCPU_DTYPE_Q8_0 || t == KCPU_DTYPE_Q4_0 || t == KCPU_DTYPE_Q4_1;
}

static inline size_t kcuda_row_bytes(kcpu_dtype_t t, int64_t n)
{
    switch (t) {
    case KCPU_DTYPE_F32: return (size_t)n * 4;
    case KCPU_DTYPE_F16:
    case KCPU_DTYPE_BF16: return (size_t)n * 2;
    case KCPU_DTYPE_Q8_0: return (size_t)(n / 32) * 34;
    case KCPU_DTYPE_Q4_0: return (size_t)(n / 32) * 18;
    case KCPU_DTYPE_Q4_1: return (size_t)(n / 32) * 20;
    default: return 0;
    }
}

__device__ __forceinline__ float kc_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float kc_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the CTA (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
 * `sh` is 32 floats of shared memory. */
__device__ __forceinline__ float kc_block_sum(float v, float *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = kc_warp_sum(v);
    __syncthreads();
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return kc_warp_sum(v);
}

__device__ __forceinline__ float kc_block_max(float v, float *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = kc_warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return kc_warp_max(v);
}

/* An f32 value stored as OT: itself, or rounded to nearest even (bf16 / f16: weight
 * conversion, GEMM inputs). */
template <typename OT> __device__ __forceinline__ OT kc_from_f32(float v);
template <> __device__ __forceinline__ float kc_from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 kc_from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half kc_from_f32<__half>(float v) { return __float2half_rn(v); }

/* The key positions [*lo_p, *hi_p] query token tt attends to, from an attention kernel's
 * arguments (any struct with tok_seq, tok_pos, ctx, n_seqs, mbps, bs, causal, window,
 * err): up to its position when causal, else the whole context, cut by a sliding window.
 * A context beyond the block table is clamped, and a bad row (sequence, position or
 * context) gets the empty range [-2, -3] (no keys, output left alone); both set
 * KCUDA_ERR_SEQ in *a.err. */
template <typename A>
__device__ __forceinline__ void kc_attn_row_keys(const A &a, int tt, int *lo_p, int *hi_p)
{
    const int seq = a.tok_seq[tt], pos = a.tok_pos[tt];
    const bool seq_ok = seq >= 0 && seq < a.n_seqs;
    int ctx = seq_ok ? a.ctx[seq] : 0;
    if (ctx > a.mbps * a.bs || ctx < 0) {
        if (a.err)
            atomicOr(a.err, KCUDA_ERR_SEQ);
        ctx = ctx < 0 ? 0 : (int)(a.mbps * a.bs);
    }
    int hi = a.causal ? pos : ctx - 1, lo = a.window > 0 ? pos - a.window + 1 : 0;
    if (lo < 0)
        lo = 0;
    if (!seq_ok || pos < 0 || hi >= ctx) {
        if (a.err)
            atomicOr(a.err, KCUDA_ERR_SEQ);
        lo = -2;
        hi = -3;
    }
    *lo_p = lo;
    *hi_p = hi;
}

/* ---- programmatic dependent launch (PDL, sm_90) ----
 * A kernel launched with kc_launch_pdl may start while the one before it on the stream
 * still runs: it must call kc_griddep_wait() before reading anything that one writes
 * (every earlier kernel complete, its writes visible).  kc_launch_dependents() lets the
 * next such kernel start now; safe anywhere, since that kernel waits before it reads. */
__device__ __forceinline__ void kc_griddep_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void kc_launch_dependents()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

/* kern<<<grid, block, 0, s>>>(args...), with programmatic stream serialization when pdl.
 * Launch errors are left for the caller's cudaGetLastError (KCUDA_LAUNCHED). */
template <typename... KArgs, typename... Args>
static inline void kc_launch_pdl(bool pdl, void (*kern)(KArgs...), dim3 grid, dim3 block, cudaStream_t s,
                                 Args... args)
{
    if (!pdl) {
        kern<<<grid, block, 0, s>>>(args...);
        return;
    }
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = 0;
    cfg.stream = s;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    cudaLaunchKernelEx(&cfg, kern, args...);
}

#endif /* KCUDA_INTERNAL_CUH */
