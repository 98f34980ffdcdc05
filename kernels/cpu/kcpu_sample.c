/*
 * kcpu_sample.c - the reference of device-side sampling (kcuda_sample_rows):
 * temperature, top-k, min-p and top-p as thresholds on exact values, then an inverse-CDF
 * draw in index order with a caller-drawn uniform.  Written for agreement with the GPU
 * kernel, not speed: the k-th value and the top-p cut are found by the same 32-step
 * bisection over the order-preserving integer keys of the floats that the kernel runs,
 * and the weights come from kcpu_sample_exp, which both compute bit for bit alike.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kcpu.h"

float kcpu_sample_exp(float z)
{
    /* exp(z) = 2^t, t = z log2(e) = i + f, f in [0, 1): 2^f by a degree-6 polynomial */
    const float t = z * 1.44269504f;
    if (!(t >= -126.0f)) /* also NaN and -inf */
        return 0.0f;
    if (t >= 0.0f)
        return 1.0f; /* z <= 0 by contract: the maximum itself */
    const float i = floorf(t), f = t - i;
    float q = 1.5353362e-4f;
    q = fmaf(q, f, 1.3398874e-3f);
    q = fmaf(q, f, 9.6181291e-3f);
    q = fmaf(q, f, 5.5504109e-2f);
    q = fmaf(q, f, 2.4022650e-1f);
    q = fmaf(q, f, 6.9314718e-1f);
    q = fmaf(q, f, 1.0f);
    return q * ldexpf(1.0f, (int)i); /* exact: a power of two, i >= -126 */
}

/* The float's bits as an unsigned key in the floats' order (-0 just below +0). */
static uint32_t fkey(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof(b));
    return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

static int32_t first_max(const float *r, int64_t n)
{
    int32_t idx;
    kcpu_argmax(r, 1, n, &idx);
    return idx;
}

static int32_t sample_row(const float *r, int64_t n, const kcpu_sample_params_t *p, float u)
{
    float m = -INFINITY;
    uint32_t kmin = 0, pmin = 0;

    if (p->temperature < 1e-5f)
        return first_max(r, n);
    for (int64_t i = 0; i < n; i++)
        if (r[i] > m)
            m = r[i];
    if (!isfinite(m))
        return first_max(r, n);
    if (p->top_k > 0 && p->top_k < n) {
        /* the largest key K with at least top_k keys >= K: the k-th largest value */
        for (int bit = 31; bit >= 0; bit--) {
            uint32_t cand = kmin | (1u << bit);
            int64_t cnt = 0;
            for (int64_t i = 0; i < n; i++)
                cnt += !isnan(r[i]) && fkey(r[i]) >= cand;
            if (cnt >= p->top_k)
                kmin = cand;
        }
    }
#define W(i) kcpu_sample_exp((r[i] - m) / p->temperature)
#define KEPT(i) (!isnan(r[i]) && fkey(r[i]) >= kmin && (p->min_p <= 0.0f || W(i) >= p->min_p))
    double total = 0;
    for (int64_t i = 0; i < n; i++)
        if (KEPT(i))
            total += W(i);
    if (p->top_p < 1.0f) {
        /* the largest key c whose kept weight at or above it is >= top_p x total */
        const double want = (double)p->top_p * total;
        for (int bit = 31; bit >= 0; bit--) {
            uint32_t cand = pmin | (1u << bit);
            double s = 0;
            for (int64_t i = 0; i < n; i++)
                if (KEPT(i) && fkey(r[i]) >= cand)
                    s += W(i);
            if (s >= want && s > 0)
                pmin = cand;
        }
        total = 0;
        for (int64_t i = 0; i < n; i++)
            if (KEPT(i) && fkey(r[i]) >= pmin)
                total += W(i);
    }
    const double target = (double)u * total;
    double acc = 0;
    int32_t last = -1;
    for (int64_t i = 0; i < n; i++) {
        if (!KEPT(i) || fkey(r[i]) < pmin)
            continue;
        acc += W(i);
        last = (int32_t)i;
        if (acc > target)
            return (int32_t)i;
    }
#undef KEPT
#undef W
    return last >= 0 ? last : first_max(r, n);
}

void kcpu_sample_rows(const float *x, int64_t T, int64_t n, const kcpu_sample_params_t *p, const float *u,
                      int32_t *out)
{
    for (int64_t t = 0; t < T; t++)
        out[t] = sample_row(x + t * n, n, &p[t], u[t]);
}
