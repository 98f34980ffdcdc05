/*
 * kcuda_mmin.cu - SiLU-and-mul writing its output directly as bf16 or f16, the type the
 * tensor-core GEMM after it reads, instead of an f32 row that kcuda_f32_to_half then
 * rounds in a second pass (the RMSNorm that does the same is kcuda_add_rmsnorm_half in
 * kcuda_norm.cu).  The arithmetic is the f32 kernel's (kcuda_act.cu; kcpu's formula); only
 * the final store rounds (round-to-nearest-even, as kcuda_f32_to_half does), so the GEMM
 * sees the same input as on the two-pass path.  Used by the prefill forward (matmuls of
 * more than 8 rows); decode keeps f32 rows for its GEMV.  Vectorised: 4 columns a thread
 * with 16-byte loads when the rows allow.
 * kcuda_silu_and_mul_from_half reads gate and up in the 16-bit type as well (the gate|up
 * GEMM writes them so: kcuda_gemm_half_out), halving the bytes of the input, which is
 * most of the traffic: the same formula in f32 on the widened values, 8 columns a thread
 * with one 16-byte load of gate, one of up and one 16-byte store.  The 16-bit values are
 * taken apart and put together with shifts on 32-bit words (no arrays of halves, which
 * could land in local memory).
 */
#include "kcuda_internal.cuh"

__device__ __forceinline__ float kc_silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

/* out[t, i] = silu(gate[t, i]) * up[t, i]; grid.x = rows, grid.y covers the columns.
 * VEC: 4 columns per thread with 16-byte loads (I, the strides and the bases 4-aligned). */
template <typename OT, bool VEC>
__global__ void silu_mul_half_kernel(const float *gate, int64_t gs, const float *up, int64_t us, OT *out,
                                     int64_t I)
{
    const int64_t t = blockIdx.x;
    const float *g = gate + t * gs, *u = up + t * us;
    OT *o = out + t * I;
    if (VEC) {
        for (int64_t i = 4 * ((int64_t)blockIdx.y * blockDim.x + threadIdx.x); i < I;
             i += 4 * (int64_t)gridDim.y * blockDim.x) {
            const float4 a = *(const float4 *)(g + i), b = *(const float4 *)(u + i);
            o[i] = kc_from_f32<OT>(kc_silu_mul(a.x, b.x));
            o[i + 1] = kc_from_f32<OT>(kc_silu_mul(a.y, b.y));
            o[i + 2] = kc_from_f32<OT>(kc_silu_mul(a.z, b.z));
            o[i + 3] = kc_from_f32<OT>(kc_silu_mul(a.w, b.w));
        }
    } else {
        for (int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; i < I; i += (int64_t)gridDim.y * blockDim.x)
            o[i] = kc_from_f32<OT>(kc_silu_mul(g[i], u[i]));
    }
}

/* 16-bit bit patterns (the low 16 bits of h) <-> f32 */
template <typename HT> __device__ __forceinline__ float kc_bits_f32(uint32_t h);
template <> __device__ __forceinline__ float kc_bits_f32<__nv_bfloat16>(uint32_t h) { return __uint_as_float(h << 16); }
template <> __device__ __forceinline__ float kc_bits_f32<__half>(uint32_t h)
{
    return __half2float(__ushort_as_half((unsigned short)(h & 0xffffu)));
}
template <typename HT> __device__ __forceinline__ uint32_t kc_f32_bits(float v);
template <> __device__ __forceinline__ uint32_t kc_f32_bits<__nv_bfloat16>(float v)
{
    return __bfloat16_as_ushort(kc_from_f32<__nv_bfloat16>(v));
}
template <> __device__ __forceinline__ uint32_t kc_f32_bits<__half>(float v)
{
    return __half_as_ushort(kc_from_f32<__half>(v));
}

/* two packed 16-bit gate values and two up values -> two packed outputs (low half first) */
template <typename HT> __device__ __forceinline__ uint32_t kc_silu_mul2(uint32_t g, uint32_t u)
{
    const float lo = kc_silu_mul(kc_bits_f32<HT>(g & 0xffffu), kc_bits_f32<HT>(u & 0xffffu));
    const float hi = kc_silu_mul(kc_bits_f32<HT>(g >> 16), kc_bits_f32<HT>(u >> 16));
    return kc_f32_bits<HT>(lo) | (kc_f32_bits<HT>(hi) << 16);
}

/* out[t, i] = silu(gate[t, i]) * up[t, i], all three 16-bit (HT); grid as above.
 * VEC: 8 columns per thread, 16-byte loads and store (I, the strides multiples of 8,
 * the bases 16-byte aligned). */
template <typename HT, bool VEC>
__global__ void silu_mul_from_half_kernel(const uint16_t *gate, int64_t gs, const uint16_t *up, int64_t us,
                                          uint16_t *out, int64_t I)
{
    const int64_t t = blockIdx.x;
    const uint16_t *g = gate + t * gs, *u = up + t * us;
    uint16_t *o = out + t * I;
    if (VEC) {
        for (int64_t i = 8 * ((int64_t)blockIdx.y * blockDim.x + threadIdx.x); i < I;
             i += 8 * (int64_t)gridDim.y * blockDim.x) {
            const uint4 a = *(const uint4 *)(g + i), b = *(const uint4 *)(u + i);
            *(uint4 *)(o + i) = make_uint4(kc_silu_mul2<HT>(a.x, b.x), kc_silu_mul2<HT>(a.y, b.y),
                                           kc_silu_mul2<HT>(a.z, b.z), kc_silu_mul2<HT>(a.w, b.w));
        }
    } else {
        for (int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; i < I; i += (int64_t)gridDim.y * blockDim.x)
            o[i] = (uint16_t)kc_f32_bits<HT>(kc_silu_mul(kc_bits_f32<HT>(g[i]), kc_bits_f32<HT>(u[i])));
    }
}

static bool half_type(kcpu_dtype_t t) { return t == KCPU_DTYPE_BF16 || t == KCPU_DTYPE_F16; }

#define SILU_THREADS 256

/* The SiLU-mul grid: a row per grid.x, grid.y CTAs of SILU_THREADS over its I columns
 * at `per_thread` columns a thread (at most 65535; the kernels loop over the rest). */
static dim3 silu_grid(int64_t T, int64_t I, int per_thread)
{
    const int64_t per = (int64_t)per_thread * SILU_THREADS;
    int64_t gy = (I + per - 1) / per;
    if (gy > 65535)
        gy = 65535;
    return dim3((unsigned)T, (unsigned)gy);
}

extern "C" pd_status_t kcuda_silu_and_mul_half(const float *gate, int64_t gate_stride, const float *up,
                                               int64_t up_stride, void *out, kcpu_dtype_t out_type, int64_t T,
                                               int64_t I, kcuda_stream_t stream)
{
    if (T < 0 || I <= 0 || T > INT32_MAX || gate_stride < I || up_stride < I || !half_type(out_type) ||
        gate == NULL || up == NULL || out == NULL) {
        PD_LOG_ERR("kcuda_silu_and_mul_half: bad arguments T=%lld I=%lld", (long long)T, (long long)I);
        return PD_ERR_INVAL;
    }
    if (T == 0)
        return PD_OK;
    const bool vec = I % 4 == 0 && gate_stride % 4 == 0 && up_stride % 4 == 0 && ((uintptr_t)gate & 15) == 0 &&
                     ((uintptr_t)up & 15) == 0;
    const int th = SILU_THREADS;
    const dim3 grid = silu_grid(T, I, vec ? 4 : 1);
    const bool bf = out_type == KCPU_DTYPE_BF16;
    if (vec && bf)
        silu_mul_half_kernel<__nv_bfloat16, true><<<grid, th, 0, stream>>>(gate, gate_stride, up, up_stride, (__nv_bfloat16 *)out, I);
    else if (vec)
        silu_mul_half_kernel<__half, true><<<grid, th, 0, stream>>>(gate, gate_stride, up, up_stride, (__half *)out, I);
    else if (bf)
        silu_mul_half_kernel<__nv_bfloat16, false><<<grid, th, 0, stream>>>(gate, gate_stride, up, up_stride, (__nv_bfloat16 *)out, I);
    else
        silu_mul_half_kernel<__half, false><<<grid, th, 0, stream>>>(gate, gate_stride, up, up_stride, (__half *)out, I);
    KCUDA_LAUNCHED("kcuda_silu_and_mul_half");
}

extern "C" pd_status_t kcuda_silu_and_mul_from_half(const void *gate, int64_t gate_stride, const void *up,
                                                    int64_t up_stride, void *out, kcpu_dtype_t type, int64_t T,
                                                    int64_t I, kcuda_stream_t stream)
{
    if (T < 0 || I <= 0 || T > INT32_MAX || gate_stride < I || up_stride < I || !half_type(type) || gate == NULL ||
        up == NULL || out == NULL) {
        PD_LOG_ERR("kcuda_silu_and_mul_from_half: bad arguments T=%lld I=%lld", (long long)T, (long long)I);
        return PD_ERR_INVAL;
    }
    if (T == 0)
        return PD_OK;
    const bool vec = I % 8 == 0 && gate_stride % 8 == 0 && up_stride % 8 == 0 && ((uintptr_t)gate & 15) == 0 &&
                     ((uintptr_t)up & 15) == 0 && ((uintptr_t)out & 15) == 0;
    const int th = SILU_THREADS;
    const dim3 grid = silu_grid(T, I, vec ? 8 : 1);
    const uint16_t *g = (const uint16_t *)gate, *u = (const uint16_t *)up;
    uint16_t *o = (uint16_t *)out;
    const bool bf = type == KCPU_DTYPE_BF16;
    if (vec && bf)
        silu_mul_from_half_kernel<__nv_bfloat16, true><<<grid, th, 0, stream>>>(g, gate_stride, u, up_stride, o, I);
    else if (vec)
        silu_mul_from_half_kernel<__half, true><<<grid, th, 0, stream>>>(g, gate_stride, u, up_stride, o, I);
    else if (bf)
        silu_mul_from_half_kernel<__nv_bfloat16, false><<<grid, th, 0, stream>>>(g, gate_stride, u, up_stride, o, I);
    else
        silu_mul_from_half_kernel<__half, false><<<grid, th, 0, stream>>>(g, gate_stride, u, up_stride, o, I);
    KCUDA_LAUNCHED("kcuda_silu_and_mul_from_half");
}
