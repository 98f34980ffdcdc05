/*
 * kcuda_sample.cu - device-side sampling of one token per logits row with a uniform the
 * host drew (temperature, top-k, min-p, top-p), the semantics of kcpu_sample_rows (its
 * reference, kernels/cpu/kcpu_sample.c): one CTA of 1024 threads per row; the k-th
 * largest value and the top-p cut are bisections over the floats' order-preserving
 * integer keys (32 counting / summing passes over the row, which stays in L2), weights
 * from kcpu_sample_exp's exact operation sequence (explicitly rounded here so fast math
 * and FMA contraction cannot change a bit), sums in double, and the draw a chunked
 * inverse CDF in index order.  Greedy rows (and rows without a finite value) take the
 * first maximum, as kcuda_argmax.
 */
#include "kcuda_internal.cuh"

#include <limits.h>

#define SB 1024

__device__ __forceinline__ float ks_exp(float z)
{
    const float t = __fmul_rn(z, 1.44269504f);
    if (!(t >= -126.0f))
        return 0.0f;
    if (t >= 0.0f)
        return 1.0f;
    const float i = floorf(t), f = __fsub_rn(t, i);
    float q = 1.5353362e-4f;
    q = __fmaf_rn(q, f, 1.3398874e-3f);
    q = __fmaf_rn(q, f, 9.6181291e-3f);
    q = __fmaf_rn(q, f, 5.5504109e-2f);
    q = __fmaf_rn(q, f, 2.4022650e-1f);
    q = __fmaf_rn(q, f, 6.9314718e-1f);
    q = __fmaf_rn(q, f, 1.0f);
    return __fmul_rn(q, __int_as_float((127 + (int)i) << 23));
}

__device__ __forceinline__ uint32_t ks_key(float f)
{
    uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

__device__ __forceinline__ double ks_block_dsum(double v, double *sh)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    v = lane < (SB >> 5) ? sh[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ long long ks_block_isum(long long v, long long *sh)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    v = lane < (SB >> 5) ? sh[lane] : 0;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* (value, index) of the first maximum, NaN ignored; index INT_MAX when all are NaN. */
__device__ __forceinline__ void ks_better(float &bv, int &bi, float v, int i)
{
    if (v > bv || (v == bv && i < bi)) {
        bv = v;
        bi = i;
    }
}

__global__ void __launch_bounds__(SB) sample_kernel(const float *x, int64_t n, const kcpu_sample_params_t *P,
                                                   const float *U, int32_t *out)
{
    __shared__ double dsh[32];
    __shared__ long long ish[32];
    __shared__ float fv[32];
    __shared__ int fi[32];
    __shared__ double chunk[SB];
    __shared__ double pre_sh;
    __shared__ int sel_sh;
    const float *r = x + (int64_t)blockIdx.x * n;
    const kcpu_sample_params_t p = P[blockIdx.x];
    const float u = U[blockIdx.x];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;

    /* first maximum (also the row maximum m) */
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int64_t i = threadIdx.x; i < n; i += SB) {
        float v = r[i];
        if (!isnan(v))
            ks_better(bv, bi, v, (int)i);
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        ks_better(bv, bi, ov, oi);
    }
    if (lane == 0) {
        fv[w] = bv;
        fi[w] = bi;
    }
    __syncthreads();
    bv = -INFINITY;
    bi = INT_MAX;
    for (int k = 0; k < (SB >> 5); k++)
        ks_better(bv, bi, fv[k], fi[k]);
    const float m = bv;
    const int first = bi == INT_MAX ? 0 : bi;
    if (p.temperature < 1e-5f || !isfinite(m)) {
        if (threadIdx.x == 0)
            out[blockIdx.x] = first;
        return;
    }
    /* top-k: the largest key with at least top_k keys at or above it */
    uint32_t kmin = 0;
    if (p.top_k > 0 && p.top_k < n) {
        for (int bit = 31; bit >= 0; bit--) {
            const uint32_t cand = kmin | (1u << bit);
            long long cnt = 0;
            for (int64_t i = threadIdx.x; i < n; i += SB) {
                float v = r[i];
                cnt += !isnan(v) && ks_key(v) >= cand;
            }
            if (ks_block_isum(cnt, ish) >= p.top_k)
                kmin = cand;
        }
    }
#define KS_W(v) ks_exp(__fdiv_rn(__fsub_rn((v), m), p.temperature))
#define KS_KEPT(v, wt) (!isnan(v) && ks_key(v) >= kmin && (p.min_p <= 0.0f || (wt) >= p.min_p))
    double tot = 0;
    for (int64_t i = threadIdx.x; i < n; i += SB) {
        float v = r[i], wt = KS_W(v);
        if (KS_KEPT(v, wt))
            tot += wt;
    }
    double total = ks_block_dsum(tot, dsh);
    uint32_t pmin = 0;
    if (p.top_p < 1.0f) {
        const double want = (double)p.top_p * total;
        for (int bit = 31; bit >= 0; bit--) {
            const uint32_t cand = pmin | (1u << bit);
            double s = 0;
            for (int64_t i = threadIdx.x; i < n; i += SB) {
                float v = r[i], wt = KS_W(v);
                if (KS_KEPT(v, wt) && ks_key(v) >= cand)
                    s += wt;
            }
            s = ks_block_dsum(s, dsh);
            if (s >= want && s > 0)
                pmin = cand;
        }
        tot = 0;
        for (int64_t i = threadIdx.x; i < n; i += SB) {
            float v = r[i], wt = KS_W(v);
            if (KS_KEPT(v, wt) && ks_key(v) >= pmin)
                tot += wt;
        }
        total = ks_block_dsum(tot, dsh);
    }
    /* draw: thread t owns the contiguous chunk [t C, (t + 1) C) */
    const double target = (double)u * total;
    const int64_t C = (n + SB - 1) / SB, lo = (int64_t)threadIdx.x * C, hi = lo + C < n ? lo + C : n;
    double cs = 0;
    int last = -1;
    for (int64_t i = lo; i < hi; i++) {
        float v = r[i], wt = KS_W(v);
        if (KS_KEPT(v, wt) && ks_key(v) >= pmin) {
            cs += wt;
            last = (int)i;
        }
    }
    chunk[threadIdx.x] = cs;
    __syncthreads();
    if (threadIdx.x == 0) {
        double run = 0;
        int sel = -1;
        for (int c = 0; c < SB; c++) {
            if (run + chunk[c] > target) {
                sel = c;
                break;
            }
            run += chunk[c];
        }
        sel_sh = sel;
        pre_sh = run;
    }
    __syncthreads();
    const int sel = sel_sh;
    if (sel >= 0) {
        if ((int)threadIdx.x == sel) {
            double acc = pre_sh;
            for (int64_t i = lo; i < hi; i++) {
                float v = r[i], wt = KS_W(v);
                if (KS_KEPT(v, wt) && ks_key(v) >= pmin) {
                    acc += wt;
                    if (acc > target) {
                        out[blockIdx.x] = (int32_t)i;
                        return;
                    }
                }
            }
            out[blockIdx.x] = last >= 0 ? last : first; /* rounding inside the chunk */
        }
        return;
    }
    /* rounding left no token: the last kept one (every thread is here: sel is shared) */
    for (int o = 16; o > 0; o >>= 1)
        last = max(last, __shfl_xor_sync(0xffffffffu, last, o));
    __syncthreads();
    if (lane == 0)
        fi[w] = last;
    __syncthreads();
    if (threadIdx.x == 0) {
        int best = -1;
        for (int k = 0; k < (SB >> 5); k++)
            best = max(best, fi[k]);
        out[blockIdx.x] = best >= 0 ? best : first;
    }
#undef KS_KEPT
#undef KS_W
}

extern "C" pd_status_t kcuda_sample_rows(const float *x, int64_t T, int64_t n, const kcpu_sample_params_t *p,
                                         const float *u, int32_t *out, kcuda_stream_t stream)
{
    if (T < 0 || n <= 0 || T > INT32_MAX || n > INT32_MAX || (T > 0 && (x == NULL || p == NULL || u == NULL || out == NULL))) {
        PD_LOG_ERR("kcuda_sample_rows: bad shape T=%lld n=%lld", (long long)T, (long long)n);
        return PD_ERR_INVAL;
    }
    if (T == 0)
        return PD_OK;
    sample_kernel<<<(unsigned)T, SB, 0, stream>>>(x, n, p, u, out);
    KCUDA_LAUNCHED("kcuda_sample_rows");
}
