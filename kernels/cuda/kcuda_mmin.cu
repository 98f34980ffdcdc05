/*
 * kcuda_mmin.cu - producers of 16-bit GEMM inputs: RMSNorm (with the residual add) and
 * SiLU-and-mul that write their output directly as bf16 or f16, the type the tensor-core
 * GEMM reads, instead of an f32 row that kcuda_f32_to_half then rounds in a second pass.
 * The arithmetic is the f32 kernels' (kcuda_norm.cu, kcuda_act.cu; kcpu's formulas); only
 * the final store rounds (round-to-nearest-even, as kcuda_f32_to_half does), so the GEMM
 * sees the same input as on the two-pass path.  Used by the prefill forward (matmuls of
 * more than 8 rows); decode keeps f32 rows for its GEMV.
 */
#include "kcuda_internal.cuh"

template <typename OT> __device__ __forceinline__ OT kc_round(float v);
template <> __device__ __forceinline__ __nv_bfloat16 kc_round<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half kc_round<__half>(float v) { return __float2half_rn(v); }

/* One CTA per row: res (+= x) then out = res * rsqrt(mean(res^2) + eps) * w. */
template <typename OT, bool ADD>
__global__ void rmsnorm_half_kernel(float *res, const float *x, const float *w, OT *out, int64_t D, float eps)
{
    __shared__ float sh[32];
    const int64_t t = blockIdx.x;
    float *r = res + t * D;
    const float *xr = ADD ? x + t * D : NULL;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        float v = r[i];
        if (ADD) {
            v += xr[i];
            r[i] = v;
        }
        s += v * v;
    }
    s = kc_block_sum(s, sh);
    const float inv = rsqrtf(s / (float)D + eps);
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
        out[t * D + i] = kc_round<OT>(r[i] * inv * w[i]);
}

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
            o[i] = kc_round<OT>(kc_silu_mul(a.x, b.x));
            o[i + 1] = kc_round<OT>(kc_silu_mul(a.y, b.y));
            o[i + 2] = kc_round<OT>(kc_silu_mul(a.z, b.z));
            o[i + 3] = kc_round<OT>(kc_silu_mul(a.w, b.w));
        }
    } else {
        for (int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; i < I; i += (int64_t)gridDim.y * blockDim.x)
            o[i] = kc_round<OT>(kc_silu_mul(g[i], u[i]));
    }
}

static bool half_type(kcpu_dtype_t t) { return t == KCPU_DTYPE_BF16 || t == KCPU_DTYPE_F16; }

extern "C" pd_status_t kcuda_add_rmsnorm_half(float *residual, const float *x, const float *w, void *out,
                                              kcpu_dtype_t out_type, int64_t T, int64_t D, float eps,
                                              kcuda_stream_t stream)
{
    if (T < 0 || D <= 0 || T > INT32_MAX || !half_type(out_type) || residual == NULL || w == NULL || out == NULL) {
        PD_LOG_ERR("kcuda_add_rmsnorm_half: bad arguments T=%lld D=%lld type %s", (long long)T, (long long)D,
                   kcpu_dtype_name(out_type));
        return PD_ERR_INVAL;
    }
    if (T == 0)
        return PD_OK;
    const int th = D >= 1024 ? 1024 : D >= 256 ? 256 : 128;
    const bool bf = out_type == KCPU_DTYPE_BF16;
    if (x && bf)
        rmsnorm_half_kernel<__nv_bfloat16, true><<<(unsigned)T, th, 0, stream>>>(residual, x, w, (__nv_bfloat16 *)out, D, eps);
    else if (x)
        rmsnorm_half_kernel<__half, true><<<(unsigned)T, th, 0, stream>>>(residual, x, w, (__half *)out, D, eps);
    else if (bf)
        rmsnorm_half_kernel<__nv_bfloat16, false><<<(unsigned)T, th, 0, stream>>>(residual, NULL, w, (__nv_bfloat16 *)out, D, eps);
    else
        rmsnorm_half_kernel<__half, false><<<(unsigned)T, th, 0, stream>>>(residual, NULL, w, (__half *)out, D, eps);
    KCUDA_LAUNCHED("kcuda_add_rmsnorm_half");
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
    const int th = 256;
    const int64_t per = vec ? 4 * th : th;
    int64_t gy = (I + per - 1) / per;
    if (gy > 65535)
        gy = 65535;
    dim3 grid((unsigned)T, (unsigned)gy);
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
