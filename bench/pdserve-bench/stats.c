/*
 * stats.c - random numbers, arrival times and the benchmark metrics.
 *
 * Metric definitions are vLLM's (benchmarks/serve.py) so numbers compare one to one:
 *   TTFT  time from sending the request to the first content chunk
 *   TPOT  (E2EL - TTFT) / (output_tokens - 1) per request; requests with one output
 *         token are left out of TPOT (and count as TPOT 0 for goodput, as in vLLM)
 *   ITL   every gap between consecutive content chunks, pooled over all requests
 *   E2EL  time from sending the request to the end of the stream
 * Statistics: mean, median, population std (numpy's default ddof=0), percentiles with
 * numpy's default linear interpolation; an empty set gives 0 like np.mean(0).
 * Failed requests never enter any latency set and are never "good".
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* ---- random numbers ---- */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void bench_rng_seed(bench_rng_t *rng, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t bench_rng_u64(bench_rng_t *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double bench_rng_uniform(bench_rng_t *rng)
{
    return (double)(bench_rng_u64(rng) >> 11) * 0x1.0p-53;
}

int bench_rng_int(bench_rng_t *rng, int lo, int hi)
{
    if (hi <= lo)
        return lo;
    uint64_t span = (uint64_t)((int64_t)hi - lo + 1);
    return lo + (int)(bench_rng_u64(rng) % span);
}

static double rng_normal(bench_rng_t *rng)
{
    double u1, u2;
    do
        u1 = bench_rng_uniform(rng);
    while (u1 <= 0.0);
    u2 = bench_rng_uniform(rng);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* Marsaglia and Tsang's method; shape < 1 through the boost gamma(a+1) * U^(1/a). */
double bench_rng_gamma(bench_rng_t *rng, double shape, double scale)
{
    if (shape < 1.0) {
        double u;
        do
            u = bench_rng_uniform(rng);
        while (u <= 0.0);
        return bench_rng_gamma(rng, shape + 1.0, scale) * pow(u, 1.0 / shape);
    }
    double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v, u;
        do {
            x = rng_normal(rng);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        u = bench_rng_uniform(rng);
        if (u < 1.0 - 0.0331 * x * x * x * x)
            return d * v * scale;
        if (u > 0.0 && log(u) < 0.5 * x * x + d * (1.0 - v + log(v)))
            return d * v * scale;
    }
}

void bench_arrivals(double rate, double burstiness, uint64_t seed, int n, double *out)
{
    bench_rng_t rng;
    double t = 0;

    if (n <= 0)
        return;
    if (isinf(rate)) {
        memset(out, 0, sizeof(double) * (size_t)n);
        return;
    }
    bench_rng_seed(&rng, seed ^ 0xa5a5a5a5ULL);
    for (int i = 0; i < n; i++) {
        /* Gap before request i (the first one waits too, as in vLLM). */
        double gap = isinf(burstiness) ? 1.0 / rate
                                       : bench_rng_gamma(&rng, burstiness, 1.0 / (rate * burstiness));
        t += gap;
        out[i] = t;
    }
    /* vLLM rescales so the whole schedule spans exactly n / rate: throughput figures then
     * do not drift by the 1-2% a sum of random gaps wanders from its mean. */
    if (out[n - 1] > 0) {
        double f = ((double)n / rate) / out[n - 1];
        for (int i = 0; i < n; i++)
            out[i] *= f;
    }
}

void bench_arrivals_ramp(int strategy, double start, double end, double burstiness,
                         uint64_t seed, int n, double *out)
{
    bench_rng_t rng;
    double t = 0;
    bench_rng_seed(&rng, seed ^ 0xa5a5a5a5ULL);
    for (int i = 0; i < n; i++) {
        double progress = n > 1 ? (double)i / (n - 1) : 0;
        double rate = strategy == 2 ? start * pow(end / start, progress)
                                    : start + (end - start) * progress;
        double gap = 0;
        if (rate > 0)
            gap = isinf(burstiness) ? 1.0 / rate
                                    : bench_rng_gamma(&rng, burstiness, 1.0 / (rate * burstiness));
        t += gap;
        out[i] = t;
    }
}

/* ---- statistics ---- */
static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_percentile_sorted(const double *a, int n, double p)
{
    if (n <= 0)
        return 0;
    double idx = p / 100.0 * (double)(n - 1);
    int lo = (int)floor(idx);
    int hi = (int)ceil(idx);
    if (lo < 0)
        lo = 0;
    if (hi > n - 1)
        hi = n - 1;
    return a[lo] + (a[hi] - a[lo]) * (idx - (double)lo);
}

void bench_stat_compute(const double *v, int n, const double *pcts, int n_pcts, double scale,
                        bench_stat_t *st)
{
    memset(st, 0, sizeof(*st));
    st->n = n;
    if (n <= 0)
        return;
    double *s = malloc(sizeof(double) * (size_t)n);
    if (!s)
        return;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        s[i] = v[i] * scale;
        sum += s[i];
    }
    qsort(s, (size_t)n, sizeof(double), cmp_double);
    st->mean = sum / n;
    double var = 0;
    for (int i = 0; i < n; i++)
        var += (s[i] - st->mean) * (s[i] - st->mean);
    st->std = sqrt(var / n);
    st->median = bench_percentile_sorted(s, n, 50);
    for (int i = 0; i < n_pcts && i < BENCH_MAX_PCTS; i++)
        st->pct[i] = bench_percentile_sorted(s, n, pcts[i]);
    free(s);
}

void bench_metrics_compute(const bench_opts_t *o, const bench_run_t *run, bench_metrics_t *m)
{
    int n = run->n;
    size_t n_itl = 0;
    double *ttfts = calloc((size_t)n + 1, sizeof(double));
    double *tpots = calloc((size_t)n + 1, sizeof(double));
    double *e2els = calloc((size_t)n + 1, sizeof(double));
    double *itls = NULL;
    int n_ok = 0, n_tpot = 0;

    memset(m, 0, sizeof(*m));
    m->duration_s = run->duration_s;
    for (int i = 0; i < n; i++)
        if (run->results[i].success)
            n_itl += (size_t)run->results[i].n_itl;
    itls = calloc(n_itl + 1, sizeof(double));
    if (!ttfts || !tpots || !e2els || !itls)
        goto out_free;
    n_itl = 0;

    for (int i = 0; i < n; i++) {
        const bench_result_t *r = &run->results[i];
        if (!r->success) {
            m->failed++;
            m->err_counts[r->err]++;
            continue;
        }
        int out = r->output_tokens;
        double tpot = 0;
        m->completed++;
        m->total_input += r->prompt_len;
        m->total_output += out;
        if (r->usage_tokens >= 0)
            m->n_usage++;
        else
            m->n_counted++;
        if (out > 1) {
            tpot = (r->e2el_s - r->ttft_s) / (out - 1);
            tpots[n_tpot++] = tpot;
        }
        ttfts[n_ok] = r->ttft_s;
        e2els[n_ok] = r->e2el_s;
        n_ok++;
        if (r->n_itl > 0)
            memcpy(itls + n_itl, r->itl, sizeof(double) * (size_t)r->n_itl);
        n_itl += (size_t)r->n_itl;

        if (o->have_goodput) {
            int good = 1;
            if (o->goodput_ttft_ms >= 0 && r->ttft_s * 1000.0 > o->goodput_ttft_ms)
                good = 0;
            if (o->goodput_tpot_ms >= 0 && tpot * 1000.0 > o->goodput_tpot_ms)
                good = 0;
            if (o->goodput_e2el_ms >= 0 && r->e2el_s * 1000.0 > o->goodput_e2el_ms)
                good = 0;
            m->good += good;
        }
    }

    bench_stat_compute(ttfts, n_ok, o->percentiles, o->n_percentiles, 1000.0, &m->ttft);
    bench_stat_compute(tpots, n_tpot, o->percentiles, o->n_percentiles, 1000.0, &m->tpot);
    bench_stat_compute(itls, (int)n_itl, o->percentiles, o->n_percentiles, 1000.0, &m->itl);
    bench_stat_compute(e2els, n_ok, o->percentiles, o->n_percentiles, 1000.0, &m->e2el);

    if (m->duration_s > 0) {
        m->request_throughput = m->completed / m->duration_s;
        m->request_goodput = m->good / m->duration_s;
        m->output_throughput = (double)m->total_output / m->duration_s;
        m->input_throughput = (double)m->total_input / m->duration_s;
        m->total_token_throughput = (double)(m->total_input + m->total_output) / m->duration_s;
    }
    m->attainment = n > 0 ? (double)m->good / n : 0;

    /* Peak output chunks per one-second bucket and requests active in it (vLLM's
     * max_output_tokens_per_s / max_concurrent_requests). */
    if (n_ok > 0) {
        double t0 = INFINITY, t1 = 0;
        for (int i = 0; i < n; i++) {
            const bench_result_t *r = &run->results[i];
            if (!r->success)
                continue;
            t0 = PD_MIN(t0, r->start_s);
            t1 = PD_MAX(t1, r->start_s + r->e2el_s);
        }
        double span = ceil(t1 - t0) + 1;
        int nb = span > 1e7 ? 10000000 : span < 1 ? 1 : (int)span;
        double *tok = calloc((size_t)nb, sizeof(double));
        double *conc = calloc((size_t)nb, sizeof(double));
        if (tok && conc) {
            for (int i = 0; i < n; i++) {
                const bench_result_t *r = &run->results[i];
                if (!r->success)
                    continue;
                double t = r->start_s + r->ttft_s;
                int b = (int)(t - t0);
                if (b >= 0 && b < nb)
                    tok[b] += 1;
                for (int k = 0; k < r->n_itl; k++) {
                    t += r->itl[k];
                    b = (int)(t - t0);
                    if (b >= 0 && b < nb)
                        tok[b] += 1;
                }
                int s0 = (int)(r->start_s - t0), s1 = (int)(r->start_s + r->e2el_s - t0);
                for (int s = s0; s <= s1 && s < nb; s++)
                    if (s >= 0)
                        conc[s] += 1;
            }
            for (int b = 0; b < nb; b++) {
                m->max_output_tokens_per_s = PD_MAX(m->max_output_tokens_per_s, tok[b]);
                m->max_concurrent_requests = PD_MAX(m->max_concurrent_requests, (int)conc[b]);
            }
        }
        free(tok);
        free(conc);
    }

out_free:
    free(ttfts);
    free(tpots);
    free(e2els);
    free(itls);
}
