/*
 * kcuda_norm.cu - RMSNorm and LayerNorm (HF semantics, f32), each optionally fused with
 * the residual add (residual += x first).  The output is f32, or for RMSNorm the
 * bf16 / f16 input of the GEMM after it (kcuda_add_rmsnorm_half: the same arithmetic, one
 * rounding at the store).
 * Two kernels, the same formula (sum of squares in f32, rsqrtf(sum / D + eps),
 * x * inv * w, one rounding at the store; only the order of the f32 sum differs):
 *  - rms_vec_kernel, RMSNorm when D % 4 == 0, D <= 16384 and every row pointer is
 *    16-byte aligned: the 16-byte loads of the row, of x and of the weight issued at
 *    once, each thread keeps its NV float4s in registers between the sum and the store
 *    (the row is read once), 16 / 8-byte stores.  Many rows (prefill, T > 128): about 256
 *    threads a row (PD_CUDA_NORM_THREADS), several CTAs an SM; few rows (decode): up to
 *    1024 threads a row, so one row still spreads over a whole SM as before.
 *  - norm_kernel for the rest and for LayerNorm: one CTA of 128-1024 threads a row,
 *    scalar, the row read twice (registers/L1).
 * PD_CUDA_NORM_VEC=0 sends every RMSNorm to norm_kernel (A/B runs).
 */
#include "kcuda_internal.cuh"
#include "kcuda_vec.cuh"

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

/* ---- the vectorised RMSNorm ---- */

enum {
    NORM_VEC_MAX_D = 16384, /* 8 float4s a thread in 512 threads: more would spill */
    NORM_WIDE_T = 128,      /* up to this many rows, up to 1024 threads a row */
};

/* out[0..3] = v * inv * w, rounded once to OT */
template <typename OT> __device__ __forceinline__ void rms_store4(OT *d, float4 v, float inv, float4 w)
{
    kc_store4(d, kc_from_f32<OT>(v.x * inv * w.x), kc_from_f32<OT>(v.y * inv * w.y),
              kc_from_f32<OT>(v.z * inv * w.z), kc_from_f32<OT>(v.w * inv * w.w));
}

/* One CTA a row of D = 4 * D4 floats; thread j holds float4s j, j + blockDim.x, ... (NV
 * of them, blockDim.x * NV >= D4).  All loads of the row, of x and of w are issued
 * before the first use, so the latency is paid once. */
template <int NV, bool ADD, typename OT>
__global__ void __launch_bounds__(NV >= 8 ? 512 : 1024)
    rms_vec_kernel(float *res, const float *x, const float *w, OT *out, int D4, float eps)
{
    kc_launch_dependents(); /* as norm_kernel: the decode GEMV after this waits before it reads */
    __shared__ float sh[32];
    const int64_t row = (int64_t)blockIdx.x * D4 * 4;
    float *r = res + row;
    float4 v[NV], a[NV], wv[NV];
#pragma unroll
    for (int j = 0; j < NV; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        v[j] = a[j] = wv[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (i < D4) {
            v[j] = kc_load4(r + 4 * i);
            if (ADD)
                a[j] = kc_load4(x + row + 4 * i);
            wv[j] = kc_load4(w + 4 * i);
        }
    }
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (ADD) {
            v[j].x += a[j].x;
            v[j].y += a[j].y;
            v[j].z += a[j].z;
            v[j].w += a[j].w;
            if (i < D4)
                *(float4 *)(r + 4 * i) = v[j];
        }
        /* zeros past the row add nothing */
        s += v[j].x * v[j].x;
        s += v[j].y * v[j].y;
        s += v[j].z * v[j].z;
        s += v[j].w * v[j].w;
    }
    s = kc_block_sum(s, sh);
    const float inv = rsqrtf(s / (float)(4 * D4) + eps);
#pragma unroll
    for (int j = 0; j < NV; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < D4)
            rms_store4(out + row + 4 * i, v[j], inv, wv[j]);
    }
}

/* -1: not read yet.  PD_CUDA_NORM_VEC=0 turns the vector path off; PD_CUDA_NORM_THREADS
 * (128, 256, 512 or 1024) sets the CTA size aimed at for many rows (A/B runs). */
static int norm_vec_g = -1, norm_threads_g = -1;

static bool norm_vec_on(void)
{
    if (norm_vec_g < 0) {
        const char *e = getenv("PD_CUDA_NORM_VEC");
        norm_vec_g = e == NULL || atoi(e) != 0;
    }
    return norm_vec_g == 1;
}

static int norm_vec_threads(void)
{
    if (norm_threads_g < 0) {
        const char *e = getenv("PD_CUDA_NORM_THREADS");
        int v = e ? atoi(e) : 0;
        norm_threads_g = v == 128 || v == 512 || v == 1024 ? v : 256;
    }
    return norm_threads_g;
}

/* rms_vec_kernel for T rows when the shape and the pointers allow it (returns false
 * without launching otherwise).  NV: the fewest float4s a thread that keep the CTA at
 * 256 threads (many rows; PD_CUDA_NORM_THREADS) or 1024 (few rows: one row spread over an
 * SM).  The many-row CTA of 256 keeps 5 CTAs an SM resident at D = 4096 (44 registers). */
template <bool ADD, typename OT>
static bool rms_vec_launch(float *res, const float *x, const float *w, OT *out, int64_t T, int64_t D, float eps,
                           cudaStream_t s)
{
    if (!norm_vec_on() || D % 4 != 0 || D > NORM_VEC_MAX_D || !kc_aligned(res, 16) || (ADD && !kc_aligned(x, 16)) ||
        !kc_aligned(w, 16) || !kc_aligned(out, 4 * sizeof(OT)))
        return false;
    const int D4 = (int)(D / 4), cap = T <= NORM_WIDE_T ? 1024 : norm_vec_threads();
    int nv = 1;
    while (nv < 8 && (D4 + nv - 1) / nv > cap)
        nv *= 2;
    const int th = ((D4 + nv - 1) / nv + 31) / 32 * 32;
    const unsigned g = (unsigned)T;
    if (th > (nv == 8 ? 512 : 1024))
        return false;
    switch (nv) {
    case 1:
        rms_vec_kernel<1, ADD, OT><<<g, th, 0, s>>>(res, x, w, out, D4, eps);
        break;
    case 2:
        rms_vec_kernel<2, ADD, OT><<<g, th, 0, s>>>(res, x, w, out, D4, eps);
        break;
    case 4:
        rms_vec_kernel<4, ADD, OT><<<g, th, 0, s>>>(res, x, w, out, D4, eps);
        break;
    default:
        rms_vec_kernel<8, ADD, OT><<<g, th, 0, s>>>(res, x, w, out, D4, eps);
        break;
    }
    return true;
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
    if (!rms_vec_launch<false, float>((float *)x, NULL, w, out, T, D, eps, stream))
        norm_kernel<false, false><<<(unsigned)T, norm_threads(D), 0, stream>>>((float *)x, NULL, w, NULL, out, D, eps);
    KCUDA_LAUNCHED("kcuda_rmsnorm");
}

extern "C" pd_status_t kcuda_add_rmsnorm(float *residual, const float *x, const float *w, float *out,
                                         int64_t T, int64_t D, float eps, kcuda_stream_t stream)
{
    pd_status_t st = norm_check("kcuda_add_rmsnorm", T, D);
    if (st != PD_OK || T == 0)
        return st;
    if (!rms_vec_launch<true, float>(residual, x, w, out, T, D, eps, stream))
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
    __nv_bfloat16 *ob = (__nv_bfloat16 *)out;
    __half *oh = (__half *)out;
    bool vec;
    if (out_type == KCPU_DTYPE_BF16)
        vec = x ? rms_vec_launch<true>(residual, x, w, ob, T, D, eps, stream)
                : rms_vec_launch<false>(residual, x, w, ob, T, D, eps, stream);
    else
        vec = x ? rms_vec_launch<true>(residual, x, w, oh, T, D, eps, stream)
                : rms_vec_launch<false>(residual, x, w, oh, T, D, eps, stream);
    if (vec)
        KCUDA_LAUNCHED("kcuda_add_rmsnorm_half");
    if (out_type == KCPU_DTYPE_BF16 && x)
        norm_kernel<true, false, __nv_bfloat16><<<g, th, 0, stream>>>(residual, x, w, NULL, ob, D, eps);
    else if (x)
        norm_kernel<true, false, __half><<<g, th, 0, stream>>>(residual, x, w, NULL, oh, D, eps);
    else if (out_type == KCPU_DTYPE_BF16)
        norm_kernel<false, false, __nv_bfloat16><<<g, th, 0, stream>>>(residual, NULL, w, NULL, ob, D, eps);
    else
        norm_kernel<false, false, __half><<<g, th, 0, stream>>>(residual, NULL, w, NULL, oh, D, eps);
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
