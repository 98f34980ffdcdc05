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

#endif /* KCUDA_INTERNAL_CUH */
