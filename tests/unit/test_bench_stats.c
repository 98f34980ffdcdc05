/*
 * test_bench_stats.c - pdserve-bench's statistics, random numbers and arrivals.
 *
 * stats.c lives in the bench executable, not a library, so it is compiled into this
 * test directly.  Goldens for the percentiles come from numpy.percentile (default
 * linear interpolation) and numpy.std (ddof=0) on the same data.
 */
#include <math.h>
#include <stdlib.h>

#include "../../bench/pdserve-bench/stats.c"
#include "pd_test.h"

static int near(double a, double b, double tol)
{
    return fabs(a - b) <= tol;
}

PD_TEST(percentiles_match_numpy)
{
    const double v[] = {3.5, 1.0, 7.25, 2.0, 9.0, 4.0, 4.0};
    const double pcts[] = {0, 10, 25, 50, 90, 99, 99.9, 100};
    const double want[] = {1.0, 1.6, 2.75, 4.0, 7.95, 8.895, 8.9895, 9.0};
    bench_stat_t st;

    bench_stat_compute(v, 7, pcts, 8, 1.0, &st);
    for (int i = 0; i < 8; i++)
        PD_CHECK(near(st.pct[i], want[i], 1e-12));
    PD_CHECK(near(st.mean, 4.392857142857143, 1e-12));
    PD_CHECK(near(st.std, 2.611298058632987, 1e-12));
    PD_CHECK(near(st.median, 4.0, 1e-12));
    PD_CHECK_EQ_INT(st.n, 7);

    /* the scale is applied before the statistics (seconds -> ms) */
    bench_stat_compute(v, 7, pcts, 8, 1000.0, &st);
    PD_CHECK(near(st.pct[4], 7950.0, 1e-9));

    /* empty set: zeros, like vLLM's np.mean(0) */
    bench_stat_compute(v, 0, pcts, 8, 1.0, &st);
    PD_CHECK(st.mean == 0 && st.median == 0 && st.std == 0 && st.pct[5] == 0 && st.n == 0);

    /* one value: every percentile is that value */
    bench_stat_compute(v, 1, pcts, 8, 1.0, &st);
    PD_CHECK(st.pct[0] == 3.5 && st.pct[7] == 3.5 && st.std == 0);
}

static void gamma_moments(double shape, double scale, double *mean_p, double *var_p)
{
    bench_rng_t rng;
    int n = 200000;
    double s = 0, s2 = 0;
    bench_rng_seed(&rng, 42);
    for (int i = 0; i < n; i++) {
        double x = bench_rng_gamma(&rng, shape, scale);
        s += x;
        s2 += x * x;
    }
    *mean_p = s / n;
    *var_p = s2 / n - (*mean_p) * (*mean_p);
}

PD_TEST(gamma_has_the_right_moments)
{
    /* mean = k*theta, variance = k*theta^2 */
    const double shapes[] = {0.5, 1.0, 4.0};
    for (int i = 0; i < 3; i++) {
        double k = shapes[i], theta = 0.1 / k, m, v;
        gamma_moments(k, theta, &m, &v);
        PD_CHECK(near(m, k * theta, 0.01 * k * theta + 1e-4));
        PD_CHECK(near(v, k * theta * theta, 0.04 * k * theta * theta));
    }
}

PD_TEST(arrivals)
{
    int n = 1000;
    double *at = malloc(sizeof(double) * (size_t)n), *at2 = malloc(sizeof(double) * (size_t)n);

    /* Poisson: rescaled so the last arrival is exactly n / rate; gaps have CV ~ 1 */
    bench_arrivals(50.0, 1.0, 7, n, at);
    PD_CHECK(near(at[n - 1], n / 50.0, 1e-9));
    double s = 0, s2 = 0, prev = 0;
    int mono = 1;
    for (int i = 0; i < n; i++) {
        double g = at[i] - prev;
        mono &= g >= 0;
        s += g;
        s2 += g * g;
        prev = at[i];
    }
    double mean = s / n, cv = sqrt(s2 / n - mean * mean) / mean;
    PD_CHECK(mono);
    PD_CHECK(near(mean, 0.02, 1e-9));
    PD_CHECK(cv > 0.9 && cv < 1.1);

    /* same seed, same schedule; another seed, another one */
    bench_arrivals(50.0, 1.0, 7, n, at2);
    PD_CHECK(memcmp(at, at2, sizeof(double) * (size_t)n) == 0);
    bench_arrivals(50.0, 1.0, 8, n, at2);
    PD_CHECK(memcmp(at, at2, sizeof(double) * (size_t)n) != 0);

    /* burstiness inf: constant gaps; rate inf: everything at 0 */
    bench_arrivals(10.0, INFINITY, 1, n, at);
    PD_CHECK(near(at[0], 0.1, 1e-12) && near(at[1] - at[0], 0.1, 1e-12));
    bench_arrivals(INFINITY, 1.0, 1, n, at);
    PD_CHECK(at[0] == 0 && at[n - 1] == 0);

    /* ramp-up: constant gaps with burstiness inf follow the rate's ramp exactly */
    bench_arrivals_ramp(1, 10.0, 100.0, INFINITY, 1, 11, at);
    PD_CHECK(near(at[0], 0.1, 1e-12));                  /* first at 10 req/s */
    PD_CHECK(near(at[10] - at[9], 0.01, 1e-12));        /* last at 100 req/s */
    PD_CHECK(near(at[5] - at[4], 1.0 / 55.0, 1e-12));   /* halfway: 55 req/s */
    bench_arrivals_ramp(2, 10.0, 1000.0, INFINITY, 1, 3, at);
    PD_CHECK(near(at[1] - at[0], 0.01, 1e-12));         /* geometric middle: 100 req/s */
    free(at);
    free(at2);
}

PD_TEST(rng_int_stays_in_range)
{
    bench_rng_t rng;
    int lo_seen = 0, hi_seen = 0, ok = 1;
    bench_rng_seed(&rng, 1);
    for (int i = 0; i < 10000; i++) {
        int x = bench_rng_int(&rng, 5, 9);
        ok &= x >= 5 && x <= 9;
        lo_seen |= x == 5;
        hi_seen |= x == 9;
    }
    PD_CHECK(ok && lo_seen && hi_seen);
    PD_CHECK_EQ_INT(bench_rng_int(&rng, 3, 3), 3);
}

int main(void)
{
    PD_RUN(percentiles_match_numpy);
    PD_RUN(gamma_has_the_right_moments);
    PD_RUN(arrivals);
    PD_RUN(rng_int_stays_in_range);
    return PD_TEST_REPORT();
}
