/*
 * kcuda_norm.cu - RMSNorm and LayerNorm (HF semantics, f32), each optionally fused with
 * the residual add (residual += x first).  One CTA per row; the row is read once into
 * registers/L1 and reduced with a block sum.  The output is f32, or for RMSNorm the
 * bf16 / f16 input of the GEMM after it (kcuda_add_rmsnorm_half: the same arithmetic, one
 * rounding at the store).
 */
#include "kcuda_internal.cuh"

template <bool ADD, bool LAYER, typename OT = float>
__global__ void norm_kernel(float *res, const float *x, const float *w, const float *b, OT *out,
                            int64_t D, float eps)
{
    kc_launch_dependents(); /* the decode GEMV after this waits before it reads */
    __shared__ float sh[32];
    const int64_t t = blockIdx.x;
    float *r = res + t * D;            /* the row normalised (residual or x) */
    const float *xr = x ? x + t * D : NULL;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        float v = r[i];
        if (ADD) {
            v += xr[i];
            r[i] = v;
        }
        s += LAYER ? v : v * v;
    }
    s = kc_block_sum(s, sh);
    if (!LAYER) {
        float inv = rsqrtf(s / (float)D + eps);
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
            out[t * D + i] = kc_from_f32<OT>(r[i] * inv * w[i]);
        return;
    }
    float mean = s / (float)D, q = 0.0f;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        float d = r[i] - mean;
        q += d * d;
    }
    q = kc_block_sum(q, sh);
    float inv = rsqrtf(q / (float)D + eps);
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
        out[t * D + i] = kc_from_f32<OT>((r[i] - mean) * inv * w[i] + (b ? b[i] : 0.0f));
}

static int norm_threads(int64_t D)
{
    return D >= 1024 ? 1024 : D >= 256 ? 256 : 128;
}

static pd_status_t norm_check(const char *name, int64_t T, int64_t D)
{
    if (T < 0 || D <= 0 || T > INT32_MAX) {
        PD_LOG_ERR("%s: bad shape T=%lld D=%lld", name, (long long)T, (long long)D);
        return PD_ERR_INVAL;
    }
    return PD_OK;
}

extern "C" pd_status_t kcuda_rmsnorm(const float *x, const float *w, float *out, int64_t T, int64_t D,
                                     float eps, kcuda_stream_t stream)
{
    pd_status_t st = norm_check("kcuda_rmsnorm", T, D);
    if (st != PD_OK || T == 0)
        return st;
    norm_kernel<false, false><<<(unsigned)T, norm_threads(D), 0, stream>>>((float *)x, NULL, w, NULL, out, D, eps);
    KCUDA_LAUNCHED("kcuda_rmsnorm");
}

extern "C" pd_status_t kcuda_add_rmsnorm(float *residual, const float *x, const float *w, float *out,
                                         int64_t T, int64_t D, float eps, kcuda_stream_t stream)
{
    pd_status_t st = norm_check("kcuda_add_rmsnorm", T, D);
    if (st != PD_OK || T == 0)
        return st;
    norm_kernel<true, false><<<(unsigned)T, norm_threads(D), 0, stream>>>(residual, x, w, NULL, out, D, eps);
    KCUDA_LAUNCHED("kcuda_add_rmsnorm");
}

extern "C" pd_status_t kcuda_add_rmsnorm_half(float *residual, const float *x, const float *w, void *out,
                                              kcpu_dtype_t out_type, int64_t T, int64_t D, float eps,
                                              kcuda_stream_t stream)
{
    pd_status_t st = norm_check("kcuda_add_rmsnorm_half", T, D);
    if (st != PD_OK || T == 0)
        return st;
    if ((out_type != KCPU_DTYPE_BF16 && out_type != KCPU_DTYPE_F16) || residual == NULL || w == NULL || out == NULL) {
        PD_LOG_ERR("kcuda_add_rmsnorm_half: bad arguments (type %s)", kcpu_dtype_name(out_type));
        return PD_ERR_INVAL;
    }
    const unsigned g = (unsigned)T;
    const int th = norm_threads(D);
    if (out_type == KCPU_DTYPE_BF16 && x)
        norm_kernel<true, false, __nv_bfloat16><<<g, th, 0, stream>>>(residual, x, w, NULL, (__nv_bfloat16 *)out, D, eps);
    else if (x)
        norm_kernel<true, false, __half><<<g, th, 0, stream>>>(residual, x, w, NULL, (__half *)out, D, eps);
    else if (out_type == KCPU_DTYPE_BF16)
        norm_kernel<false, false, __nv_bfloat16><<<g, th, 0, stream>>>(residual, NULL, w, NULL, (__nv_bfloat16 *)out, D, eps);
    else
        norm_kernel<false, false, __half><<<g, th, 0, stream>>>(residual, NULL, w, NULL, (__half *)out, D, eps);
    KCUDA_LAUNCHED("kcuda_add_rmsnorm_half");
}

extern "C" pd_status_t kcuda_layernorm(const float *x, const float *w, const float *b, float *out,
                                       int64_t T, int64_t D, float eps, kcuda_stream_t stream)
{
    pd_status_t st = norm_check("kcuda_layernorm", T, D);
    if (st != PD_OK || T == 0)
        return st;
    norm_kernel<false, true><<<(unsigned)T, norm_threads(D), 0, stream>>>((float *)x, NULL, w, b, out, D, eps);
    KCUDA_LAUNCHED("kcuda_layernorm");
}

extern "C" pd_status_t kcuda_add_layernorm(float *residual, const float *x, const float *w, const float *b,
                                           float *out, int64_t T, int64_t D, float eps, kcuda_stream_t stream)
{
    pd_status_t st = norm_check("kcuda_add_layernorm", T, D);
    if (st != PD_OK || T == 0)
        return st;
    norm_kernel<true, true><<<(unsigned)T, norm_threads(D), 0, stream>>>(residual, x, w, b, out, D, eps);
    KCUDA_LAUNCHED("kcuda_add_layernorm");
}
