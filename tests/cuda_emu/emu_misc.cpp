/*
 * emu_misc.cpp - the small kcuda kernels as gen_emu.py rewrites them for the CPU, against
 * kcpu:
 *  - kcuda_embedding over f32 / f16 / bf16 / Q8_0 / Q4_0 / Q4_1 tables (random quant
 *    bytes, finite block scales), ids out of range included (zeros and
 *    KCUDA_ERR_TOKEN); exact;
 *  - kcuda_softmax / kcuda_log_softmax (rows of 1, 33, 1000 and 5000 entries, -inf
 *    entries, a row of -inf only) within 1e-5; kcuda_argmax exact (ties, NaN, -inf, a
 *    row of NaN only);
 *  - kcuda_silu_and_mul / kcuda_gelu_and_mul (erf and tanh) with gate and up strides
 *    wider than I, kcuda_silu / kcuda_gelu / kcuda_relu; within 1e-5.
 * Outputs NaN-poisoned first.  Prints "N checks, M failures", exits 1 on any.
 */
#include "kcuda_embedding.cu"
#include "kcuda_softmax.cu"
#include "kcuda_act.cu"
#include <stdio.h>
#include <stdlib.h>


#define EMU_SEED 0x13198a2e03707344ull
#include "emu_test.h"
static int checks, fails;

/* a and b agree within tol relative to max(1, max |b|); NaN where b is NaN, inf where b is */
static void check(const char *what, const float *a, const float *b, int64_t n, double tol)
{
    double top = 1.0, worst = 0.0;
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(b[i]))
            top = fmax(top, fabs(b[i]));
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(b[i])) {
            bad += !(isnan(b[i]) ? isnan(a[i]) : a[i] == b[i]);
            continue;
        }
        const double e = fabs((double)a[i] - b[i]) / top;
        if (!(e <= tol))
            bad++;
        worst = fmax(worst, isnan(e) ? INFINITY : e);
    }
    checks++;
    if (bad) {
        fails++;
        printf("  FAIL %s: %d of %lld outside %.0e (worst %.2e)\n", what, bad, (long long)n, tol, worst);
    }
}

static void test_embedding(void)
{
    const kcpu_dtype_t types[6] = {KCPU_DTYPE_F32, KCPU_DTYPE_F16, KCPU_DTYPE_BF16,
                                   KCPU_DTYPE_Q8_0, KCPU_DTYPE_Q4_0, KCPU_DTYPE_Q4_1};
    const int64_t vocab = 50, D = 320; /* 10 quant blocks a row; 320 > the 256 threads */
    const int32_t ids[7] = {3, 49, 0, 50, 17, -1, 17};
    const int T = 7;
    for (int ti = 0; ti < 6; ti++) {
        const kcpu_dtype_t t = types[ti];
        const size_t rb = kcuda_row_bytes(t, D);
        uint8_t *table = (uint8_t *)malloc(rb * vocab);
        for (size_t i = 0; i < rb * vocab; i++)
            table[i] = (uint8_t)(frand() * 127.0f + 128.0f);
        const int64_t bs = kcpu_dtype_block_size(t);
        const size_t bb = rb / (size_t)(D / bs); /* bytes of a block (its f16 scale first) */
        for (int64_t r = 0; r < vocab; r++)
            for (int64_t b = 0; b < D / bs; b++) {
                uint8_t *blk = table + (size_t)r * rb + (size_t)b * bb;
                if (t == KCPU_DTYPE_F32) {
                    for (int k = 0; k < 1; k++)
                        ((float *)blk)[k] = frand();
                } else if (t == KCPU_DTYPE_F16) {
                    *(__half *)blk = __float2half(frand());
                } else if (t == KCPU_DTYPE_BF16) {
                    *(__nv_bfloat16 *)blk = __float2bfloat16(frand());
                } else {
                    *(__half *)blk = __float2half(frand() * 0.05f); /* d */
                    if (t == KCPU_DTYPE_Q4_1)
                        *(__half *)(blk + 2) = __float2half(frand()); /* m */
                }
            }
        float *got = (float *)malloc(sizeof(float) * T * D), *want = (float *)malloc(sizeof(float) * T * D);
        for (int64_t i = 0; i < T * D; i++)
            got[i] = NAN;
        int err = 0;
        const pd_status_t st = kcuda_embedding(table, t, vocab, D, ids, T, got, &err, nullptr);
        /* kcpu refuses an id out of range: the reference row by row, zeros for those */
        for (int k = 0; k < T; k++) {
            if (ids[k] < 0 || ids[k] >= vocab) {
                for (int64_t i = 0; i < D; i++)
                    want[k * D + i] = 0.0f;
            } else if (kcpu_embedding(table, t, vocab, D, &ids[k], 1, want + k * D) != PD_OK) {
                printf("  kcpu_embedding refused %s\n", kcpu_dtype_name(t));
            }
        }
        char what[64];
        snprintf(what, sizeof(what), "embedding %s", kcpu_dtype_name(t));
        check(what, got, want, T * D, 0.0);
        checks++;
        if (st != PD_OK || !(err & KCUDA_ERR_TOKEN)) {
            fails++;
            printf("  FAIL %s: status %d, error bits %d (want KCUDA_ERR_TOKEN)\n", what, (int)st, err);
        }
        free(table), free(got), free(want);
    }
}

static void test_softmax_argmax(void)
{
    const int64_t ns[4] = {1, 33, 1000, 5000};
    for (int ni = 0; ni < 4; ni++) {
        const int64_t n = ns[ni];
        const int T = 4;
        float *x = (float *)malloc(sizeof(float) * T * n), *a = (float *)malloc(sizeof(float) * T * n),
              *b = (float *)malloc(sizeof(float) * T * n);
        for (int64_t i = 0; i < T * n; i++)
            x[i] = frand() * 20.0f;
        x[n + n / 2] = -INFINITY;                 /* row 1: a -inf entry */
        for (int64_t i = 0; i < n; i++)           /* row 3: -inf only */
            x[3 * n + i] = -INFINITY;
        for (int lg = 0; lg < 2; lg++) {
            for (int64_t i = 0; i < T * n; i++)
                a[i] = NAN;
            if (lg) {
                kcuda_log_softmax(x, a, T, n, nullptr);
                kcpu_log_softmax(x, b, T, n);
            } else {
                kcuda_softmax(x, a, T, n, nullptr);
                kcpu_softmax(x, b, T, n);
            }
            char what[64];
            snprintf(what, sizeof(what), "%s n=%lld", lg ? "log_softmax" : "softmax", (long long)n);
            check(what, a, b, T * n, 1e-5);
        }
        /* argmax: row 0 plain, row 1 a tie for the maximum and a NaN, row 2 NaN only,
         * row 3 -inf only */
        if (n > 2) {
            x[n + 1] = 50.0f, x[n + n - 1] = 50.0f, x[n] = NAN;
        }
        for (int64_t i = 0; i < n; i++)
            x[2 * n + i] = NAN;
        int32_t gi[4] = {-7, -7, -7, -7}, wi[4];
        kcuda_argmax(x, T, n, gi, nullptr);
        kcpu_argmax(x, T, n, wi);
        checks++;
        for (int t = 0; t < T; t++)
            if (gi[t] != wi[t]) {
                fails++;
                printf("  FAIL argmax n=%lld row %d: %d, kcpu %d\n", (long long)n, t, gi[t], wi[t]);
                break;
            }
        free(x), free(a), free(b);
    }
}

static void test_act(void)
{
    const int64_t T = 3, I = 1000, gs = 2 * I + 7, us = I + 3, n = T * gs;
    float *x = (float *)malloc(sizeof(float) * n), *a = (float *)malloc(sizeof(float) * n),
          *b = (float *)malloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; i++)
        x[i] = frand() * 6.0f;
    for (int k = 0; k < 3; k++) { /* silu, gelu erf, gelu tanh */
        for (int64_t i = 0; i < T * I; i++)
            a[i] = NAN;
        const float *gate = x + 5, *up = x + 11;
        if (k == 0) {
            kcuda_silu_and_mul(gate, gs, up, us, a, T, I, nullptr);
            kcpu_silu_and_mul(nullptr, gate, gs, up, us, b, T, I);
        } else {
            kcuda_gelu_and_mul(gate, gs, up, us, a, T, I, k == 2, nullptr);
            kcpu_gelu_and_mul(nullptr, gate, gs, up, us, b, T, I, k == 2);
        }
        check(k == 0 ? "silu_and_mul" : k == 1 ? "gelu_and_mul" : "gelu_and_mul tanh", a, b, T * I, 1e-5);
    }
    for (int k = 0; k < 4; k++) {
        for (int64_t i = 0; i < n; i++)
            a[i] = NAN;
        if (k == 0) {
            kcuda_silu(x, a, n, nullptr);
            kcpu_silu(x, b, n);
        } else if (k == 3) {
            kcuda_relu(x, a, n, nullptr);
            kcpu_relu(x, b, n);
        } else {
            kcuda_gelu(x, a, n, k == 2, nullptr);
            kcpu_gelu(x, b, n, k == 2);
        }
        check(k == 0 ? "silu" : k == 3 ? "relu" : k == 1 ? "gelu" : "gelu tanh", a, b, n, 1e-5);
    }
    free(x), free(a), free(b);
}

int main(void)
{
    test_embedding();
    test_softmax_argmax();
    test_act();
    printf("emulated small kernels: %d checks, %d failures\n", checks, fails);
    return fails ? 1 : 0;
}
