/*
 * emu_sample.cpp - kcuda_sample.cu as gen_emu.py rewrites it for the CPU (emu_cuda.h:
 * 1024 ucontext threads a row, real barriers, 32- and 64-bit shuffles; the correctly
 * rounded __f*_rn operations as plain IEEE float arithmetic), against its reference
 * kcpu_sample_rows with the same uniforms.  The two are meant to agree token for token
 * (the same exp bits, the same exact comparisons; only the summation order of the double
 * sums differs), so every row must pick the same index:
 *  - greedy rows, ties for the maximum, NaN and -inf entries, a row of NaN only;
 *  - temperature alone; top-k 1, 7, 50 and >= n (off); top-p 0.9, 0.95, 0.5, 0.3; min-p;
 *    top-k with top-p and min-p; uniforms near 0 and near 1;
 *  - vocabularies of 777 (fewer than the CTA's 1024 threads) and 5000 entries.
 * Prints "N rows, M failures", exits 1 on any.
 */
#include "kcuda_sample.cu"
#include <stdio.h>
#include <stdlib.h>


#define EMU_SEED 0x243f6a8885a308d3ull
#include "emu_test.h"
static float urand(void) { return 0.5f * (frand() + 1.0f); } /* [0, 1) */

int main(void)
{
    const kcpu_sample_params_t P[] = {
        {0.0f, 0, 1.0f, 0.0f},   {1.0f, 0, 1.0f, 0.0f},    {0.7f, 1, 1.0f, 0.0f},  {0.8f, 7, 1.0f, 0.0f},
        {1.3f, 50, 1.0f, 0.0f},  {1.0f, 100000, 1.0f, 0.0f}, {0.9f, 0, 0.9f, 0.0f}, {1.0f, 0, 0.3f, 0.0f},
        {1.0f, 0, 1.0f, 0.05f},  {0.8f, 50, 0.9f, 0.05f},   {2.0f, 7, 0.5f, 0.0f},  {0.6f, 0, 0.95f, 0.1f},
    };
    const int NP = (int)(sizeof(P) / sizeof(P[0]));
    const int64_t ns[2] = {777, 5000};
    int rows = 0, fails = 0;

    for (int ni = 0; ni < 2; ni++) {
        const int64_t n = ns[ni];
        const int T = 2 * NP + 2;
        float *x = (float *)malloc(sizeof(float) * (size_t)(T * n));
        kcpu_sample_params_t *p = (kcpu_sample_params_t *)malloc(sizeof(*p) * (size_t)T);
        float *u = (float *)malloc(sizeof(float) * (size_t)T);
        int32_t *got = (int32_t *)malloc(sizeof(int32_t) * (size_t)T), *want = (int32_t *)malloc(sizeof(int32_t) * (size_t)T);
        for (int t = 0; t < T; t++) {
            float *r = x + (int64_t)t * n;
            for (int64_t i = 0; i < n; i++)
                r[i] = (urand() - 0.5f) * 12.0f; /* logits spread over ~12 nats */
            if (t % 3 == 1) { /* NaN and -inf entries, a tie for the maximum */
                r[3] = NAN;
                r[n / 2] = -INFINITY;
                r[n - 2] = r[n / 3] = 9.5f;
            }
            if (t % 4 == 2) /* a peaked row: a few tokens carry most of the mass */
                for (int k = 0; k < 5; k++)
                    r[(k * 131 + t) % n] = 7.0f + (float)k;
            p[t] = P[t % NP];
            u[t] = t % 7 == 0 ? 1e-7f : t % 7 == 6 ? 0.9999999f : urand();
        }
        /* the last two rows: NaN only (first maximum: 0), and one finite value */
        for (int64_t i = 0; i < n; i++)
            x[(int64_t)(T - 2) * n + i] = NAN, x[(int64_t)(T - 1) * n + i] = -INFINITY;
        x[(int64_t)(T - 1) * n + n - 5] = 1.0f;
        p[T - 2] = p[T - 1] = P[1];
        kcpu_sample_rows(x, T, n, p, u, want);
        for (int t = 0; t < T; t++)
            got[t] = -7;
        const pd_status_t st = kcuda_sample_rows(x, T, n, p, u, got, nullptr);
        for (int t = 0; t < T; t++) {
            rows++;
            if (st != PD_OK || got[t] != want[t]) {
                fails++;
                printf("  FAIL n=%lld row %d (T %.2f k %d p %.2f min_p %.2f u %.7f): %d, kcpu %d\n", (long long)n, t,
                       p[t].temperature, p[t].top_k, p[t].top_p, p[t].min_p, u[t], got[t], want[t]);
            }
        }
        free(x), free(p), free(u), free(got), free(want);
    }
    printf("emulated sampling: %d rows, %d failures\n", rows, fails);
    return fails ? 1 : 0;
}
