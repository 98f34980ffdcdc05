/*
 * test_kcpu_sample.c - kcpu_sample_rows, the reference of device-side sampling: the
 * exp it uses against libm, the filters on rows small enough to work out by hand (top-k
 * keeps ties, min-p relative to the maximum, top-p the smallest high set, greedy and
 * degenerate rows), the draw in index order, and the empirical frequencies of many
 * uniform draws against the filtered softmax.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kcpu.h"
#include "pd_test.h"

static int32_t one(const float *x, int64_t n, float temp, int k, float top_p, float min_p, float u)
{
    kcpu_sample_params_t p = {temp, k, top_p, min_p};
    int32_t out = -9;
    kcpu_sample_rows(x, 1, n, &p, &u, &out);
    return out;
}

PD_TEST(test_sample_exp)
{
    double worst = 0;
    for (int i = 0; i <= 20000; i++) {
        float z = -87.0f * (float)i / 20000.0f;
        double want = exp((double)z), got = kcpu_sample_exp(z);
        double rel = fabs(got - want) / want;
        worst = rel > worst ? rel : worst;
    }
    printf("  kcpu_sample_exp: worst relative error %.2e on [-87, 0]\n", worst);
    PD_CHECK(worst < 1e-5);
    PD_CHECK(kcpu_sample_exp(0.0f) == 1.0f);
    PD_CHECK(kcpu_sample_exp(-INFINITY) == 0.0f);
    PD_CHECK(kcpu_sample_exp(-200.0f) == 0.0f);
    PD_CHECK(kcpu_sample_exp(NAN) == 0.0f);
}

PD_TEST(test_sample_filters)
{
    /* weights at temperature 1 relative to the max (index 2): e^-1, e^-2, 1, e^-1, e^-3 */
    const float x[5] = {1.0f, 0.0f, 2.0f, 1.0f, -1.0f};
    /* greedy and top_k 1 and min_p 1: the maximum */
    PD_CHECK_EQ_INT(one(x, 5, 0.0f, 0, 1.0f, 0.0f, 0.99f), 2);
    PD_CHECK_EQ_INT(one(x, 5, 1.0f, 1, 1.0f, 0.0f, 0.99f), 2);
    PD_CHECK_EQ_INT(one(x, 5, 1.0f, 0, 1.0f, 1.0f, 0.0f), 2);
    /* u = 0: the first kept token in index order */
    PD_CHECK_EQ_INT(one(x, 5, 1.0f, 0, 1.0f, 0.0f, 0.0f), 0);
    /* top_k 2 keeps 2 and both 1.0s (tied with the 2nd value): index 1 never, u=0 -> 0 */
    PD_CHECK_EQ_INT(one(x, 5, 1.0f, 2, 1.0f, 0.0f, 0.0f), 0);
    for (int i = 0; i < 100; i++) {
        int32_t t = one(x, 5, 1.0f, 2, 1.0f, 0.0f, (float)i / 100.0f);
        PD_CHECK(t == 0 || t == 2 || t == 3);
    }
    /* min_p 0.3: e^-1 = 0.37 kept, e^-2 = 0.14 and e^-3 not */
    for (int i = 0; i < 100; i++) {
        int32_t t = one(x, 5, 1.0f, 0, 1.0f, 0.3f, (float)i / 100.0f);
        PD_CHECK(t == 0 || t == 2 || t == 3);
    }
    /* top_p 0.5: the max alone holds 1 / (1 + 2e^-1 + e^-2 + e^-3) = 0.53 >= 0.5 */
    for (int i = 0; i < 20; i++)
        PD_CHECK_EQ_INT(one(x, 5, 1.0f, 0, 0.5f, 0.0f, (float)i / 20.0f), 2);
    /* top_p 0.9: 2 and the two e^-1 (0.92 of the mass); the e^-2 one (index 1) is out */
    for (int i = 0; i < 100; i++) {
        int32_t t = one(x, 5, 1.0f, 0, 0.9f, 0.0f, (float)i / 100.0f);
        PD_CHECK(t == 0 || t == 2 || t == 3);
    }
    /* rows without a finite value, and -inf / NaN entries never drawn */
    const float bad[4] = {-INFINITY, NAN, -INFINITY, NAN};
    PD_CHECK_EQ_INT(one(bad, 4, 1.0f, 0, 1.0f, 0.0f, 0.5f), 0);
    const float mixed[4] = {NAN, -INFINITY, 3.0f, NAN};
    for (int i = 0; i < 10; i++)
        PD_CHECK_EQ_INT(one(mixed, 4, 2.0f, 0, 1.0f, 0.0f, (float)i / 10.0f), 2);
}

/* 200k draws with evenly spaced uniforms: each token's share equals its filtered
 * probability (the draw is an inverse CDF, so the error is about 1 / draws). */
PD_TEST(test_sample_frequencies)
{
    const float x[6] = {0.5f, 2.0f, -1.0f, 1.5f, 0.0f, 2.0f};
    const float temps[3] = {1.0f, 0.5f, 2.0f};
    const int N = 200000;
    for (int c = 0; c < 3; c++) {
        const float temp = temps[c];
        kcpu_sample_params_t p = {temp, 4, 1.0f, 0.0f}; /* top-4: 1, 5, 3, 0 */
        double want[6] = {0}, tot = 0, worst = 0;
        int cnt[6] = {0};
        for (int i = 0; i < 6; i++) {
            bool kept = i == 1 || i == 5 || i == 3 || i == 0;
            want[i] = kept ? exp((x[i] - 2.0) / temp) : 0.0;
            tot += want[i];
        }
        for (int d = 0; d < N; d++) {
            float u = ((float)d + 0.5f) / (float)N;
            int32_t t;
            kcpu_sample_rows(x, 1, 6, &p, &u, &t);
            if (t >= 0 && t < 6)
                cnt[t]++;
        }
        for (int i = 0; i < 6; i++) {
            double e = fabs((double)cnt[i] / N - want[i] / tot);
            worst = e > worst ? e : worst;
        }
        printf("  temperature %.1f, top_k 4: worst frequency error %.2e\n", temp, worst);
        PD_CHECK(worst < 1e-4);
        PD_CHECK_EQ_INT(cnt[2] + cnt[4], 0);
    }
}

int main(void)
{
    PD_RUN(test_sample_exp);
    PD_RUN(test_sample_filters);
    PD_RUN(test_sample_frequencies);
    return PD_TEST_REPORT();
}
