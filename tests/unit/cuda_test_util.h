/*
 * cuda_test_util.h - what the tests of the CUDA backend's 16-bit paths (test_cuda_mmin,
 * test_cuda_pfout) share: a seeded xorshift for random inputs, buffers moved through the
 * backend under test (ops / be, set by the test's main), and the bf16 / f16 helpers that
 * compare 16-bit outputs with a rounded f32 reference.  Header-only (static inline functions):
 * define CUDA_TEST_SEED, then include it in one test executable.
 */
#ifndef CUDA_TEST_UTIL_H
#define CUDA_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "eng_backend.h"
#include "kcpu.h"

#ifndef CUDA_TEST_SEED
#error "define CUDA_TEST_SEED (the xorshift state the test starts from) before including cuda_test_util.h"
#endif

static const eng_backend_ops_t *ops;
static eng_backend_t *be;
static uint64_t rng = CUDA_TEST_SEED;

static inline float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static inline float *rand_vec(size_t n, float scale)
{
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; v && i < n; i++)
        v[i] = frand() * scale;
    return v;
}

/* A backend buffer holding a copy of host[0 .. bytes); NULL when allocation or copy fails. */
static inline void *up(const void *host, size_t bytes)
{
    void *d = NULL;
    if (ops->buf_alloc(be, bytes, &d) != PD_OK)
        return NULL;
    if (ops->memcpy_h2d(be, d, host, bytes) != PD_OK) {
        ops->buf_free(be, d);
        return NULL;
    }
    return d;
}

/* A backend buffer of 0xff bytes (NaN as f32 and as bf16 / f16): outputs poisoned. */
static inline void *poisoned(size_t bytes)
{
    void *d = NULL;
    if (ops->buf_alloc(be, bytes, &d) != PD_OK)
        return NULL;
    ops->memset(be, d, 0xff, bytes);
    return d;
}

/* A malloc'd host copy of a backend buffer; NULL when the copy fails. */
static inline void *down(const void *d, size_t bytes)
{
    void *h = malloc(bytes);
    if (h != NULL && ops->memcpy_d2h(be, h, d, bytes) != PD_OK) {
        free(h);
        return NULL;
    }
    return h;
}

static inline float half_to_f32(uint16_t h, kcpu_dtype_t t)
{
    return t == KCPU_DTYPE_BF16 ? kcpu_bf16_to_f32(h) : kcpu_f16_to_f32(h);
}

static inline uint16_t f32_to_half(float f, kcpu_dtype_t t)
{
    return t == KCPU_DTYPE_BF16 ? kcpu_f32_to_bf16(f) : kcpu_f32_to_f16(f);
}

/* 16-bit outputs more than `ulps` units in the last place (+ abs_tol) from the rounded
 * reference */
static inline int count_off(const uint16_t *got, const float *ref, size_t n, kcpu_dtype_t t, float ulps, float abs_tol)
{
    const float ulp = ulps * (t == KCPU_DTYPE_BF16 ? 1.0f / 128.0f : 1.0f / 1024.0f);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float g = half_to_f32(got[i], t), r = half_to_f32(f32_to_half(ref[i], t), t);
        if (!(fabsf(g - r) <= ulp * fabsf(r) + abs_tol))
            bad++;
    }
    return bad;
}

#endif /* CUDA_TEST_UTIL_H */
