/*
 * kcuda_softmax.cu - row-wise softmax / log-softmax (max-subtracted, f32; an all -inf
 * row gives zeros for softmax and -inf for log-softmax, like kcpu) and argmax (first
 * maximum, NaN ignored, all-NaN row gives 0).  One CTA per row.
 */
#include "kcuda_internal.cuh"

#include <limits.h>

template <bool LOG>
__global__ void softmax_kernel(const float *x, float *out, int64_t n)
{
    __shared__ float sh[32];
    const float *r = x + blockIdx.x * n;
    float *o = out + blockIdx.x * n;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        m = fmaxf(m, r[i]);
    m = kc_block_max(m, sh);
    if (m == -INFINITY) { /* all masked: probabilities 0, log-probabilities -inf (kcpu) */
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            o[i] = LOG ? -INFINITY : 0.0f;
        return;
    }
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        s += expf(r[i] - m);
    s = kc_block_sum(s, sh);
    if (LOG) {
        float lse = m + logf(s);
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            o[i] = r[i] - lse;
    } else {
        float inv = 1.0f / s;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            o[i] = expf(r[i] - m) * inv;
    }
}

__global__ void argmax_kernel(const float *x, int64_t n, int32_t *idx)
{
    __shared__ float sv[1024];
    __shared__ int32_t si[1024];
    const float *r = x + blockIdx.x * n;
    float bv = -INFINITY;
    int32_t bi = INT_MAX;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v = r[i];
        if (isnan(v))
            continue;
        if (v > bv || (v == bv && (int32_t)i < bi)) {
            bv = v;
            bi = (int32_t)i;
        }
    }
    sv[threadIdx.x] = bv;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            float ov = sv[threadIdx.x + s];
            int32_t oi = si[threadIdx.x + s];
            if (ov > sv[threadIdx.x] || (ov == sv[threadIdx.x] && oi < si[threadIdx.x])) {
                sv[threadIdx.x] = ov;
                si[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0)
        idx[blockIdx.x] = si[0] == INT_MAX ? 0 : si[0];
}

static pd_status_t rows_check(const char *name, int64_t T, int64_t n)
{
    if (T < 0 || n <= 0 || T > INT32_MAX || n > INT32_MAX) {
        PD_LOG_ERR("%s: bad shape T=%lld n=%lld", name, (long long)T, (long long)n);
        return PD_ERR_INVAL;
    }
    return PD_OK;
}

extern "C" pd_status_t kcuda_softmax(const float *x, float *out, int64_t T, int64_t n, kcuda_stream_t stream)
{
    pd_status_t st = rows_check("kcuda_softmax", T, n);
    if (st != PD_OK || T == 0)
        return st;
    softmax_kernel<false><<<(unsigned)T, 1024, 0, stream>>>(x, out, n);
    KCUDA_LAUNCHED("kcuda_softmax");
}

extern "C" pd_status_t kcuda_log_softmax(const float *x, float *out, int64_t T, int64_t n, kcuda_stream_t stream)
{
    pd_status_t st = rows_check("kcuda_log_softmax", T, n);
    if (st != PD_OK || T == 0)
        return st;
    softmax_kernel<true><<<(unsigned)T, 1024, 0, stream>>>(x, out, n);
    KCUDA_LAUNCHED("kcuda_log_softmax");
}

extern "C" pd_status_t kcuda_argmax(const float *x, int64_t T, int64_t n, int32_t *idx, kcuda_stream_t stream)
{
    pd_status_t st = rows_check("kcuda_argmax", T, n);
    if (st != PD_OK || T == 0)
        return st;
    argmax_kernel<<<(unsigned)T, 1024, 0, stream>>>(x, n, idx);
    KCUDA_LAUNCHED("kcuda_argmax");
}
