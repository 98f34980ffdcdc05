/*
 * bench_kcpu.c - micro-benchmark of the CPU kernels at the default model's shapes
 * (SmolLM2-135M: hidden 576, FFN 1536, vocab 49152, 9 heads / 3 KV heads of 64).
 *
 * Every figure is printed beside its ceiling measured in the same run: matmul GFLOP/s
 * beside the FMA peak of the pool's threads, decode (M = 1) weight streaming GB/s
 * beside the memory read bandwidth and memcpy bandwidth.  Prints a table, then one
 * JSON line.  Usage: bench_kcpu [n_threads] [seconds_per_case]
 *
 * Peer: when built with -DPD_KCPU_GGML_DIR=<a ggml source tree> (ggml is llama.cpp's
 * tensor library), every matmul case also runs ggml's CPU mul_mat on the same weight
 * bytes (the block layouts are the same) with a ggml thread pool of as many threads, and
 * the table shows both.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kcpu.h"
#include "pd_log.h"
#include "pd_util.h"

#ifdef PD_KCPU_HAVE_GGML
#include "ggml-cpu.h"
#include "ggml.h"
#endif

static double min_time_g = 0.3;

/* ---- ceilings ---- */

#if defined(__x86_64__)
#include <immintrin.h>
/* 10 independent FMA chains in registers (FMA latency 4-5 cycles x 2 ports) */
__attribute__((target("avx2,fma"))) static double fma_loop(int64_t iters)
{
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(0), a1 = _mm256_set1_ps(1), a2 = _mm256_set1_ps(2), a3 = _mm256_set1_ps(3),
           a4 = _mm256_set1_ps(4), a5 = _mm256_set1_ps(5), a6 = _mm256_set1_ps(6), a7 = _mm256_set1_ps(7),
           a8 = _mm256_set1_ps(8), a9 = _mm256_set1_ps(9);
    for (int64_t k = 0; k < iters; k++) {
        a0 = _mm256_fmadd_ps(a0, m, c); a1 = _mm256_fmadd_ps(a1, m, c);
        a2 = _mm256_fmadd_ps(a2, m, c); a3 = _mm256_fmadd_ps(a3, m, c);
        a4 = _mm256_fmadd_ps(a4, m, c); a5 = _mm256_fmadd_ps(a5, m, c);
        a6 = _mm256_fmadd_ps(a6, m, c); a7 = _mm256_fmadd_ps(a7, m, c);
        a8 = _mm256_fmadd_ps(a8, m, c); a9 = _mm256_fmadd_ps(a9, m, c);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)),
                                           _mm256_add_ps(a8, a9)));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0];
}

/* streaming read with 4 independent 256-bit accumulators */
__attribute__((target("avx2"))) static uint64_t read_avx2(const uint64_t *p, int64_t n)
{
    __m256i x0 = _mm256_setzero_si256(), x1 = x0, x2 = x0, x3 = x0;
    for (int64_t i = 0; i + 16 <= n; i += 16) {
        x0 = _mm256_xor_si256(x0, _mm256_loadu_si256((const __m256i *)(p + i)));
        x1 = _mm256_xor_si256(x1, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
        x2 = _mm256_xor_si256(x2, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
        x3 = _mm256_xor_si256(x3, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
    }
    x0 = _mm256_xor_si256(_mm256_xor_si256(x0, x1), _mm256_xor_si256(x2, x3));
    return (uint64_t)_mm256_extract_epi64(x0, 0) ^ (uint64_t)_mm256_extract_epi64(x0, 3);
}
#endif

typedef struct {
    int64_t iters;
    double sink;
} peak_args_t;

static void peak_task(void *arg, int64_t b, int64_t e, int tid)
{
    peak_args_t *a = arg;
#if defined(__x86_64__)
    for (int64_t i = b; i < e; i++)
        a->sink += fma_loop(a->iters);
#endif
}

/* FMA peak of one thread in GFLOP/s (10 independent 8-wide FMA chains), times the
 * thread count: the pool hands chunks to whichever thread is running, so on a shared
 * machine a pool-wide loop would measure the cores we got rather than the peak. */
static double measure_peak(kcpu_pool_t *pool)
{
#if defined(__x86_64__)
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return 0;
    int nth = kcpu_pool_n_threads(pool);
    int threads = nth;
    nth = 1;
    pool = NULL;
    peak_args_t a = { 1000000, 0 };
    double best = 0;
    for (int r = 0; r < 20; r++) {
        double t0 = pd_now_s();
        kcpu_pool_run(pool, nth, 1, peak_task, &a);
        double dt = pd_now_s() - t0;
        double gf = (double)nth * (double)a.iters * 10 * 8 * 2 / dt / 1e9;
        best = gf > best ? gf : best;
    }
    return best * threads;
#else
    return 0;
#endif
}

typedef struct {
    const uint64_t *buf;
    int64_t n;
    uint64_t sink[64];
} read_args_t;

static void read_task(void *arg, int64_t b, int64_t e, int tid)
{
    read_args_t *a = arg;
    int64_t lo = b * 1024, hi = e * 1024 < a->n ? e * 1024 : a->n;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) {
        a->sink[tid % 64] ^= read_avx2(a->buf + lo, hi - lo);
        return;
    }
#endif
    uint64_t x0 = 0, x1 = 0, x2 = 0, x3 = 0;
    for (int64_t i = lo; i + 4 <= hi; i += 4) {
        x0 ^= a->buf[i];
        x1 ^= a->buf[i + 1];
        x2 ^= a->buf[i + 2];
        x3 ^= a->buf[i + 3];
    }
    a->sink[tid % 64] ^= x0 ^ x1 ^ x2 ^ x3;
}

/* ---- timing helper ---- */

typedef pd_status_t (*case_fn_t)(void *arg);

static int nth_g = 1;
static double share_g; /* CPU share of the last case: process CPU time / (wall * threads) */
static double cpu_per_call_g; /* process CPU seconds per call of the last case */

static double cpu_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Best wall time of repeated runs.  On a shared machine the threads may not get their
 * cores: share_g says how much CPU they really had (1.0 = all of nth_g cores; spinning
 * workers count as busy). */
static double time_case(case_fn_t fn, void *arg)
{
    int reps = 0;
    double best = INFINITY, t_total = 0;
    fn(arg); /* warm-up */
    double c0 = cpu_now_s();
    while (t_total < min_time_g || reps < 3) {
        double t0 = pd_now_s();
        fn(arg);
        double dt = pd_now_s() - t0;
        best = dt < best ? dt : best;
        t_total += dt;
        reps++;
    }
    double cpu = cpu_now_s() - c0;
    share_g = cpu / (t_total * nth_g);
    cpu_per_call_g = cpu / reps;
    return best;
}

typedef struct {
    kcpu_pool_t *pool;
    const float *x;
    int64_t M, K, N;
    const void *w;
    kcpu_dtype_t t;
    float *y;
    kcpu_mm_mode_t mode;
} mm_case_t;

static pd_status_t mm_fn(void *arg)
{
    mm_case_t *c = arg;
    return kcpu_matmul(c->pool, c->x, c->M, c->K, c->K, c->w, c->t, c->N, NULL, c->y, c->N, c->mode);
}

typedef struct {
    kcpu_pool_t *pool;
    kcpu_attn_params_t p;
} attn_case_t;

static pd_status_t attn_fn(void *arg)
{
    attn_case_t *c = arg;
    return kcpu_paged_attention(c->pool, &c->p);
}

/* attention over n_seqs sequences of ctx tokens: decode (1 query each) or one prefill */
static double bench_attention(kcpu_pool_t *pool, int n_seqs, int ctx, bool prefill, double *tok_s_p)
{
    const int bs = 16, nkv = 3, nh = 9, hd = 64;
    kcpu_kv_layout_t L;
    int bps = (ctx + bs - 1) / bs;
    int64_t nblocks = (int64_t)n_seqs * bps;
    if (kcpu_kv_layout_init(&L, KCPU_DTYPE_F32, 1, bs, nkv, hd, nblocks) != PD_OK)
        return 0;
    float *cache = malloc(L.block_bytes * (size_t)nblocks);
    for (size_t i = 0; i < L.block_bytes / 4 * (size_t)nblocks; i++)
        cache[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    int32_t *bt = malloc(sizeof(int32_t) * (size_t)nblocks), *ctxl = malloc(sizeof(int32_t) * (size_t)n_seqs);
    for (int64_t i = 0; i < nblocks; i++)
        bt[i] = (int32_t)((i * 7919) % nblocks); /* scattered blocks */
    for (int s = 0; s < n_seqs; s++)
        ctxl[s] = ctx;
    int T = prefill ? ctx * n_seqs : n_seqs;
    int32_t *ts = malloc(sizeof(int32_t) * (size_t)T), *tp = malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) {
        ts[t] = prefill ? t / ctx : t;
        tp[t] = prefill ? t % ctx : ctx - 1;
    }
    float *q = malloc(sizeof(float) * (size_t)T * nh * hd), *o = malloc(sizeof(float) * (size_t)T * nh * hd);
    for (int64_t i = 0; i < (int64_t)T * nh * hd; i++)
        q[i] = (float)(i % 13) / 13.0f;
    attn_case_t c = { pool, { .n_tokens = T, .q = q, .q_stride = nh * hd, .out = o, .out_stride = nh * hd,
                              .tok_seq = ts, .tok_pos = tp, .n_seqs = n_seqs, .block_tables = bt,
                              .max_blocks_per_seq = bps, .context_lens = ctxl, .n_heads = nh,
                              .n_kv_heads = nkv, .head_dim = hd, .scale = 0.125f, .causal = true,
                              .layer = 0, .cache_base = cache, .layout = &L } };
    double dt = time_case(attn_fn, &c);
    *tok_s_p = T / dt;
    /* bytes of K/V read per call (decode) */
    double bytes = (double)n_seqs * ctx * nkv * hd * 2 * 4;
    free(cache); free(bt); free(ctxl); free(ts); free(tp); free(q); free(o);
    return prefill ? 0 : bytes / dt / 1e9;
}

#ifdef PD_KCPU_HAVE_GGML
typedef struct {
    struct ggml_cgraph *gf;
    struct ggml_cplan plan;
} peer_case_t;

static pd_status_t peer_fn(void *arg)
{
    peer_case_t *c = arg;
    return ggml_graph_compute(c->gf, &c->plan) == GGML_STATUS_SUCCESS ? PD_OK : PD_ERR_INTERNAL;
}

/* ggml mul_mat(W[N,K], x[M,K]) on the same weight bytes; returns the best wall time and
 * sets the GFLOP per CPU-second; 0 when ggml cannot run the case. */
static double peer_matmul(struct ggml_threadpool *tp, int nth, kcpu_dtype_t t, const void *w,
                          size_t row_bytes, const float *x, int64_t M, int64_t K, int64_t N,
                          double *gf_cpu_p)
{
    struct ggml_init_params ip = { row_bytes * (size_t)N + sizeof(float) * (size_t)(M * K + M * N) + (16u << 20),
                                   NULL, false };
    struct ggml_context *ctx = ggml_init(ip);
    if (ctx == NULL)
        return 0;
    struct ggml_tensor *wt = ggml_new_tensor_2d(ctx, (enum ggml_type)t, K, N);
    struct ggml_tensor *xt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, K, M);
    memcpy(wt->data, w, row_bytes * (size_t)N);
    memcpy(xt->data, x, sizeof(float) * (size_t)(M * K));
    peer_case_t c;
    c.gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(c.gf, ggml_mul_mat(ctx, wt, xt));
    c.plan = ggml_graph_plan(c.gf, nth, tp);
    void *work = c.plan.work_size ? malloc(c.plan.work_size) : NULL;
    c.plan.work_data = work;
    double dt = time_case(peer_fn, &c);
    *gf_cpu_p = 2.0 * (double)M * (double)N * (double)K / cpu_per_call_g / 1e9;
    free(work);
    ggml_free(ctx);
    return dt;
}
#endif

int main(int argc, char **argv)
{
    int nth = argc > 1 ? atoi(argv[1]) : 0;
    if (argc > 2)
        min_time_g = atof(argv[2]);
    kcpu_pool_t *pool = NULL;
    pd_buf_t json;

    pd_log_set_level(PD_LOG_LEVEL_WARN);
    if (kcpu_pool_create(nth, &pool) != PD_OK)
        return 1;
    nth = kcpu_pool_n_threads(pool);
    nth_g = nth;
    pd_buf_init(&json);
#ifdef PD_KCPU_HAVE_GGML
    ggml_cpu_init();
    struct ggml_threadpool_params tpp = ggml_threadpool_params_default(nth);
    struct ggml_threadpool *tp = ggml_threadpool_new(&tpp);
    const bool peer = tp != NULL;
#else
    const bool peer = false;
#endif

    /* memory ceilings: memcpy (one thread) and parallel read over 256 MiB */
    size_t big = 256u << 20;
    uint8_t *src = malloc(big), *dst = malloc(big);
    memset(src, 1, big);
    memset(dst, 2, big);
    double best = INFINITY;
    for (int r = 0; r < 5; r++) {
        double t0 = pd_now_s();
        memcpy(dst, src, big);
        double dt = pd_now_s() - t0;
        best = dt < best ? dt : best;
    }
    double memcpy_gbs = 2.0 * (double)big / best / 1e9; /* read + write */
    read_args_t ra = { (const uint64_t *)src, (int64_t)(big / 8), {0} };
    best = INFINITY;
    for (int r = 0; r < 5; r++) {
        double t0 = pd_now_s();
        kcpu_pool_run(pool, (int64_t)(big / 8 / 1024), 64, read_task, &ra);
        double dt = pd_now_s() - t0;
        best = dt < best ? dt : best;
    }
    double read_gbs = (double)big / best / 1e9;
    free(dst);
    free(src);
    double peak = measure_peak(pool);

    printf("kcpu bench: %d threads, simd %s\n", nth, kcpu_simd_enabled() ? "avx2+fma" : "off");
    printf("ceilings: memcpy %.1f GB/s (1 thread, read+write), read %.1f GB/s (%d threads), "
           "FMA peak %.1f GFLOP/s (1-thread peak x %d)\n\n", memcpy_gbs, read_gbs, nth, peak, nth);
    pd_buf_printf(&json, "{\"bench\":\"kcpu\",\"threads\":%d,\"simd\":%s,\"memcpy_gbs\":%.2f,"
                  "\"read_gbs\":%.2f,\"peak_gflops\":%.1f,\"matmul\":[", nth,
                  kcpu_simd_enabled() ? "true" : "false", memcpy_gbs, read_gbs, peak);

    printf("(cpu = share of the %d threads' cores this process really got during the case;\n"
           " GF/cpu-s = GFLOP per CPU-second used, spinning included: the rate an idle machine\n"
           " would show per thread)\n", nth);
    printf("%-6s %-5s %5s %6s %6s %10s %9s %8s %9s %7s %5s %9s", "dtype", "mode", "M", "K", "N", "time_us",
           "GFLOP/s", "%peak", "weight_GB/s", "%read", "cpu", "GF/cpu-s");
    if (peer)
        printf(" %11s %12s %6s", "ggml_us", "ggml_GF/cpu-s", "ratio");
    printf("\n");
    static const kcpu_dtype_t types[] = { KCPU_DTYPE_F32, KCPU_DTYPE_F16, KCPU_DTYPE_Q8_0, KCPU_DTYPE_Q4_1,
                                          KCPU_DTYPE_Q4_0 };
    static const int64_t Ns[] = { 576, 1536, 49152 };
    static const int64_t Ms[] = { 1, 128 };
    const int64_t K = 576;
    bool first = true;
    for (size_t ti = 0; ti < PD_ARRAY_SIZE(types); ti++)
        for (int mi = 0; mi < 2; mi++)
            for (int ni = 0; ni < 3; ni++) {
                kcpu_dtype_t t = types[ti];
                int64_t M = Ms[mi], N = Ns[ni];
                size_t rb;
                kcpu_dtype_row_bytes(t, K, &rb);
                uint8_t *w = malloc(rb * (size_t)N);
                float *row = malloc(sizeof(float) * (size_t)K);
                for (int64_t n = 0; n < N; n++) {
                    for (int64_t k = 0; k < K; k++)
                        row[k] = (float)(((n * 31 + k * 17) % 97) - 48) / 97.0f;
                    kcpu_quant_row(t, row, w + rb * (size_t)n, K);
                }
                float *x = malloc(sizeof(float) * (size_t)(M * K)), *y = malloc(sizeof(float) * (size_t)(M * N));
                for (int64_t i = 0; i < M * K; i++)
                    x[i] = (float)(i % 23) / 23.0f - 0.5f;
                for (int mi2 = 0; mi2 < 2; mi2++) {
                    kcpu_mm_mode_t mode = mi2 == 0 ? KCPU_MM_FAST : KCPU_MM_EXACT;
                    bool quant = t == KCPU_DTYPE_Q8_0 || t == KCPU_DTYPE_Q4_1 || t == KCPU_DTYPE_Q4_0;
                    if (mode == KCPU_MM_EXACT && (!quant || M > 1 || N > 1536))
                        continue; /* exact mode: one small decode case per quantized type */
                    mm_case_t c = { pool, x, M, K, N, w, t, y, mode };
                    double dt = time_case(mm_fn, &c);
                    double gf = 2.0 * (double)M * (double)N * (double)K / dt / 1e9;
                    double wgbs = (double)rb * (double)N / dt / 1e9;
                    double gf_cpu = 2.0 * (double)M * (double)N * (double)K / cpu_per_call_g / 1e9;
                    printf("%-6s %-5s %5lld %6lld %6lld %10.1f %9.1f %7.1f%% %9.2f %6.1f%% %5.2f %9.1f",
                           kcpu_dtype_name(t), mode == KCPU_MM_FAST ? "fast" : "exact", (long long)M, (long long)K,
                           (long long)N, dt * 1e6, gf, peak > 0 ? 100 * gf / peak : 0, wgbs,
                           100 * wgbs / read_gbs, share_g, gf_cpu);
                    double peer_us = 0, peer_gf_cpu = 0;
#ifdef PD_KCPU_HAVE_GGML
                    if (peer && mode == KCPU_MM_FAST)
                        peer_us = 1e6 * peer_matmul(tp, nth, t, w, rb, x, M, K, N, &peer_gf_cpu);
#endif
                    if (peer_us > 0)
                        printf(" %11.1f %12.1f %6.2f", peer_us, peer_gf_cpu, gf_cpu / peer_gf_cpu);
                    printf("\n");
                    pd_buf_printf(&json, "%s{\"dtype\":\"%s\",\"mode\":\"%s\",\"M\":%lld,\"K\":%lld,"
                                  "\"N\":%lld,\"us\":%.1f,\"gflops\":%.2f,\"weight_gbs\":%.2f,\"cpu_share\":%.2f,"
                                  "\"gflops_per_cpu_s\":%.2f,\"ggml_us\":%.1f,\"ggml_gflops_per_cpu_s\":%.2f}",
                                  first ? "" : ",", kcpu_dtype_name(t), mode == KCPU_MM_FAST ? "fast" : "exact",
                                  (long long)M, (long long)K, (long long)N, dt * 1e6, gf, wgbs, share_g,
                                  gf_cpu, peer_us, peer_gf_cpu);
                    first = false;
                }
                free(w); free(row); free(x); free(y);
            }

    printf("\npaged attention (9 heads, 3 kv heads, head_dim 64, block 16, f32 cache, one layer)\n");
    printf("%-28s %12s %10s %9s %5s %9s\n", "case", "tokens/s", "KV GB/s", "GFLOP/s", "cpu", "GF/cpu-s");
    pd_buf_puts(&json, "],\"attention\":[");
    struct { const char *name; int seqs, ctx; bool prefill; } ac[] = {
        { "decode 1 seq x ctx 512", 1, 512, false },
        { "decode 32 seqs x ctx 512", 32, 512, false },
        { "decode 8 seqs x ctx 2048", 8, 2048, false },
        { "prefill 1 seq x 512", 1, 512, true },
    };
    for (size_t i = 0; i < PD_ARRAY_SIZE(ac); i++) {
        double tok_s = 0, gbs = bench_attention(pool, ac[i].seqs, ac[i].ctx, ac[i].prefill, &tok_s);
        /* flops: QK^T and PV, 2 * 2 * head_dim per (query head, key); prefill is causal */
        double keys = ac[i].prefill ? (ac[i].ctx + 1) / 2.0 : ac[i].ctx;
        double gf = tok_s * keys * 9 * 64 * 4 / 1e9;
        double gf_cpu = gf / tok_s * (ac[i].prefill ? ac[i].ctx : ac[i].seqs) / cpu_per_call_g;
        printf("%-28s %12.0f %10.2f %9.1f %5.2f %9.1f\n", ac[i].name, tok_s, gbs, gf, share_g, gf_cpu);
        pd_buf_printf(&json, "%s{\"case\":\"%s\",\"tok_s\":%.0f,\"kv_gbs\":%.2f,\"gflops\":%.2f,"
                      "\"cpu_share\":%.2f,\"gflops_per_cpu_s\":%.2f}", i ? "," : "", ac[i].name, tok_s,
                      gbs, gf, share_g, gf_cpu);
    }
    pd_buf_puts(&json, "]}");
    printf("\n%s\n", json.data);
    pd_buf_cleanup(&json);
#ifdef PD_KCPU_HAVE_GGML
    if (tp)
        ggml_threadpool_free(tp);
#endif
    kcpu_pool_destroy(pool);
    return 0;
}
