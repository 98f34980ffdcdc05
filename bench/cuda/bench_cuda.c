/*
 * bench_cuda.c - the CUDA backend on one GPU at the Llama-3.1-8B shape (dummy bf16
 * weights from configs/models/llama-3.1-8b), each figure beside its ceiling measured in
 * the same run:
 *   ceilings: device-to-device copy bandwidth (cudaMemcpy, read + write bytes) and the
 *             cuBLAS bf16 GEMM rate (8192^3 and the prefill shape 2048 x 14336 x 4096);
 *   decode step at batch 1, ctx 1024 vs the weight-streaming floor (GEMM weight bytes /
 *             copy bandwidth); decode steps at batch 64 and 256 (tokens/s); the same
 *             three decode steps replayed from CUDA graphs (a second forward with
 *             graph_max_bs = the batch limit) beside the eager ones, and with an fp8
 *             (e4m3) KV cache beside the f32 one; the graph steps at batch 1 and 64
 *             with separate q/k/v and gate/up weights (PD_FORWARD_NO_FUSE=1) beside the
 *             fused ones, the fused GEMV shapes (6144x4096, 28672x4096) alone, and the
 *             graph steps with device-side greedy (only the argmax ids copied back),
 *             batch 1 with the GEMVs launched with programmatic dependent launch, and
 *             the device sampling kernel alone (vocab 128256, 1 / 64 / 256 rows);
 *   the batch 1 graph step with the fused decode layer (the default) against
 *             PD_FORWARD_NO_DECODE_FUSE=1, and the fused decode GEMVs (kcuda_gemv_ex:
 *             norm prologue, GLU / residual epilogues; 1, 2, 4 warps a column on the
 *             narrow shapes) beside the plain GEMV of each shape and the copy ceiling;
 *   prefill of 2048 tokens vs the compute floor (FLOPs / GEMM rate);
 *   fp8 weights (--quantization fp8, a backend instance of its own): the graph decode
 *             steps with device argmax at batch 1 / 64 / 256 and the 2048-token prefill
 *             beside the bf16 rows, the b1 floor (fp8 weight bytes / copy rate), and the
 *             cuBLASLt fp8 GEMM rate at the prefill shape beside the bf16 one;
 *   paged decode attention alone (kcuda_paged_attention replayed from a CUDA graph),
 *             batch 64, ctx 128..4096, f32, f16 and fp8 (e4m3, scales 1) caches, the
 *             decode kernel and the old one, vs copy bandwidth (bytes of K and V read),
 *             and the time per step beside the f32 cache's.
 * Prints a table and four JSON lines (prefixed "JSON ", "JSON_STEP ", "JSON_FUSE " and
 * "JSON_FP8W ").  Usage:
 *   bench_cuda [model_dir (default configs/models/llama-3.1-8b)] [--quick]
 *   bench_cuda --attn-only   the copy ceiling and the decode attention sweep alone (no
 *                            model; new kernel with automatic and fixed key splits, without
 *                            the L2 prefetch hint, old kernel), JSON line "JSON_ATTN "
 *   bench_cuda --attn-tc     the same sweep for the SIMT decode kernel against the
 *                            tensor-core one (f16 / fp8 caches)
 *   (env PD_BENCH_ATTN_TAIL=1: --attn-only runs only its tensor-core forms;
 *   PD_BENCH_ATTN_CTX=n: one context; PD_BENCH_ATTN_REPS=n: replays, for a profiler)
 *   bench_cuda --profile     for Nsight Compute (ncu --profile-from-start off): the
 *                            2048-token prefill and the eager decode steps at batch 1 and 64
 *                            (ctx 1024), each warmed up and then run once inside the
 *                            profiled range, separated by marker kernels 1, 2, 3, 4
 *                            (scripts/ncu_split.py sums the kernels of each phase)
 *   bench_cuda [model_dir] --trace DIR  the same phases (decode as graphs with device argmax,
 *                            three steps each) recorded with CUPTI into DIR (real kernel
 *                            start/end times; scripts/nsys_gaps.py: the GPU's idle time)
 *   bench_cuda [model_dir] --prefill-attn  prefill attention alone (2048 and 4096 tokens,
 *                            4096 after 4096 cached; 32/8 heads d128, and 9/3 d64): the WMMA
 *                            kernel vs the FlashAttention-2 one in TFLOP/s beside the cuBLAS
 *                            bf16 rate, JSON line "JSON_PREFILL_ATTN "; then the whole
 *                            2048-token prefill of the model with each (f32 and f16 KV),
 *                            "JSON_PREFILL_ENGINE " (< 60 s in all)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_backend.h"
#include "eng_backend_cuda.h"
#include "eng_forward.h"
#include "eng_model.h"
#include "cupti_trace.h"
#include "kcuda.h"
#include "pd_log.h"

#define BS 16

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define DIE_IF(cond, ...)                          \
    do {                                           \
        if (cond) {                                \
            fprintf(stderr, "bench_cuda: " __VA_ARGS__); \
            fprintf(stderr, "\n");                 \
            exit(1);                               \
        }                                          \
    } while (0)

typedef struct {
    int n_tokens, n_seqs;
    int32_t *tokens, *pos, *seq, *tables, *ctx, *rows;
    int64_t *slots;
} batch_t;

/* B sequences of context `ctx` (already in the cache) each computing `n_new` tokens;
 * sequence s owns the ceil((ctx + n_new) / BS) blocks from s times that (table entries
 * past them point at block 0 and are never read). */
static void make_batch(batch_t *b, int B, int ctx, int n_new, int mbps, int vocab)
{
    const int per = (ctx + n_new + BS - 1) / BS;
    int T = B * n_new;
    b->n_tokens = T;
    b->n_seqs = B;
    b->tokens = malloc(sizeof(int32_t) * T);
    b->pos = malloc(sizeof(int32_t) * T);
    b->seq = malloc(sizeof(int32_t) * T);
    b->slots = malloc(sizeof(int64_t) * T);
    b->tables = malloc(sizeof(int32_t) * B * mbps);
    b->ctx = malloc(sizeof(int32_t) * B);
    b->rows = malloc(sizeof(int32_t) * B);
    for (int s = 0; s < B; s++) {
        for (int i = 0; i < mbps; i++)
            b->tables[s * mbps + i] = i < per ? s * per + i : 0;
        b->ctx[s] = ctx + n_new;
        b->rows[s] = s * n_new + n_new - 1;
        for (int i = 0; i < n_new; i++) {
            int t = s * n_new + i, p = ctx + i;
            b->tokens[t] = (int32_t)((t * 7919u + 13u) % (unsigned)vocab);
            b->pos[t] = p;
            b->seq[t] = s;
            b->slots[t] = (int64_t)b->tables[s * mbps + p / BS] * BS + p % BS;
        }
    }
}

static void free_batch(batch_t *b)
{
    free(b->tokens), free(b->pos), free(b->seq), free(b->slots), free(b->tables), free(b->ctx), free(b->rows);
}

/* Mean seconds per forward over `iters` after `warm` warm-ups. */
static double time_forward(eng_forward_t *fw, const batch_t *b, float *logits, int warm, int iters)
{
    eng_fwd_batch_t fb = {b->n_tokens, b->tokens, b->pos, b->seq, b->slots, b->n_seqs, b->tables, b->ctx,
                          b->n_seqs, b->rows};
    for (int i = 0; i < warm; i++)
        DIE_IF(eng_forward_run(fw, &fb, logits) != PD_OK, "forward failed");
    double t0 = now_s();
    for (int i = 0; i < iters; i++)
        DIE_IF(eng_forward_run(fw, &fb, logits) != PD_OK, "forward failed");
    return (now_s() - t0) / iters;
}

/* time_forward for the optional sections (graphs, fp8 KV): 0 on a failed forward, so
 * the rest of the table still prints. */
static double time_forward_soft(eng_forward_t *fw, const batch_t *b, float *logits, int warm, int iters)
{
    eng_fwd_batch_t fb = {b->n_tokens, b->tokens, b->pos, b->seq, b->slots, b->n_seqs, b->tables, b->ctx,
                          b->n_seqs, b->rows};
    for (int i = 0; i < warm; i++)
        if (eng_forward_run(fw, &fb, logits) != PD_OK)
            return 0;
    double t0 = now_s();
    for (int i = 0; i < iters; i++)
        if (eng_forward_run(fw, &fb, logits) != PD_OK)
            return 0;
    return (now_s() - t0) / iters;
}

/* ---- paged decode attention alone (kcuda_paged_attention, no backend) ---- */

#define ATT_NCTX 6
#define ATT_MAXV 12
static const int att_ctx[ATT_NCTX] = {128, 256, 512, 1024, 2048, 4096};
static const char *const att_cache_names[3] = {"f32", "f16", "fp8"};

/* One kernel variant of the attention sweep. */
typedef struct {
    const char *name;
    kcuda_attn_decode_t kernel;
    int splits; /* 0 = automatic */
    int l2hint; /* -1 = default */
    int pipe;   /* -1 = default */
    int scatter; /* -1 = default */
    int order;   /* head-major grid, -1 = default */
    int tc;      /* tensor-core kernel (f16 / fp8), -1 = default */
    int ring_w, ring_s; /* its cp.async ring (loading scheme 2): warps x stages, 0 = default */
} att_variant_t;

/* perm <- 0 .. n-1 in an order drawn from the xorshift state seed (Fisher-Yates): block
 * tables that are not the identity. */
static void shuffled_blocks(int32_t *perm, int64_t n, uint64_t seed)
{
    uint64_t r = seed;
    for (int64_t i = 0; i < n; i++)
        perm[i] = (int32_t)i;
    for (int64_t i = n - 1; i > 0; i--) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        int64_t j = (int64_t)(r % (uint64_t)(i + 1));
        int32_t tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
}

/* An fp8 e4m3 cache of cb bytes: random bytes with bit 6 clear (|value| < 2, never the
 * NaN patterns 0x7f / 0xff, so the outputs can be compared), a 16 MB host pattern
 * uploaded repeatedly. */
static bool bench_fill_fp8(void *cache, size_t cb, kcuda_stream_t stream)
{
    const size_t chunk = (size_t)16 << 20;
    uint8_t *h = malloc(chunk);
    if (h == NULL)
        return false;
    uint64_t r = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < chunk; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        h[i] = (uint8_t)(r >> 24) & 0xbf;
    }
    bool ok = true;
    for (size_t o = 0; ok && o < cb; o += chunk)
        ok = kcuda_memcpy_async((char *)cache + o, h, cb - o < chunk ? cb - o : chunk, stream) == PD_OK;
    ok = ok && kcuda_stream_sync(stream) == PD_OK;
    free(h);
    return ok;
}

/*
 * Time decode attention at batch AB over the contexts of att_ctx, for the f32, f16 and
 * fp8 (e4m3, scales 1) caches from cache type ct0 on (0 f32, 1 f16, 2 fp8) and each
 * variant: us[v][ct][ci] per call and gbps (bytes of K and V read per second).  Each
 * timed graph replays calls that read disjoint block sets (at least 512 MB between two
 * reads of the same block, so short contexts are not served from L2), block tables a
 * random permutation of the cache.  A failing variant reads 0.  diff (NULL: not checked):
 * per variant, the largest |out - out of variant 0| / max(1, max |out of variant 0|) over
 * the points both ran (the output of the last block set replayed; -1 when never compared,
 * +inf for a NaN in one output only), so a variant that is fast but wrong shows.
 */
/* Layers in the attention benchmark's cache layout: 1 (default; a block holds one
 * layer's K and V) or PD_BENCH_ATTN_LAYERS (32: the Llama-3.1-8B layout the forward
 * uses, a block holding every layer, so one layer's reads are 2 MB apart). */
static int att_layers(void)
{
    const char *e = getenv("PD_BENCH_ATTN_LAYERS");
    int n = e ? atoi(e) : 1;
    return n >= 1 && n <= 128 ? n : 1;
}

static void bench_attention(int n_heads, int n_kv, int hd, int AB, const att_variant_t *var, int n_var, int sm_count,
                            double us[ATT_MAXV][3][ATT_NCTX], double gbps[ATT_MAXV][3][ATT_NCTX], double *diff,
                            int ct0)
{
    float *ref0 = diff ? malloc(sizeof(float) * AB * n_heads * hd) : NULL;
    float *got = diff ? malloc(sizeof(float) * AB * n_heads * hd) : NULL;
    if (diff)
        for (int v = 0; v < n_var; v++)
            diff[v] = -1;
    const int64_t QW = (int64_t)n_heads * hd, KW = (int64_t)n_kv * hd;
    const double reuse_bytes = 512e6;
    kcuda_stream_t stream = NULL;
    kcuda_event_t e0 = NULL, e1 = NULL;
    memset(us, 0, sizeof(double) * ATT_MAXV * 3 * ATT_NCTX);
    memset(gbps, 0, sizeof(double) * ATT_MAXV * 3 * ATT_NCTX);
    if (kcuda_stream_create(&stream) != PD_OK || kcuda_event_create(&e0) != PD_OK || kcuda_event_create(&e1) != PD_OK) {
        fprintf(stderr, "bench_cuda: attention: no stream/events\n");
        goto out_stream;
    }
    for (int ct = ct0; ct < 3; ct++) {
        static const kcpu_dtype_t dts[3] = {KCPU_DTYPE_F32, KCPU_DTYPE_F16, KCUDA_KV_FP8_E4M3};
        const size_t eb = ct == 0 ? 4 : ct == 1 ? 2 : 1;
        /* blocks for the largest (sets x batch x blocks per sequence) over the contexts */
        int64_t max_blocks = 0;
        for (int ci = 0; ci < ATT_NCTX; ci++) {
            double bytes = (double)AB * att_ctx[ci] * KW * eb * 2;
            int sets = (int)ceil(reuse_bytes / bytes);
            sets = sets < 1 ? 1 : sets > 64 ? 64 : sets;
            int64_t nb = (int64_t)sets * AB * ((att_ctx[ci] + BS - 1) / BS);
            max_blocks = nb > max_blocks ? nb : max_blocks;
        }
        kcpu_kv_layout_t lay;
        if (kcuda_kv_layout_init(&lay, dts[ct], att_layers(), BS, n_kv, hd, max_blocks) != PD_OK) {
            fprintf(stderr, "bench_cuda: attention: layout failed\n");
            continue;
        }
        void *cache = NULL, *dq = NULL, *dout = NULL, *dseq = NULL, *dpos = NULL, *dctx = NULL, *dbt = NULL, *ws = NULL;
        const size_t cb = lay.block_bytes * (size_t)max_blocks, ws_bytes = (size_t)256 << 20;
        const int amb = 4096 / BS + 1;
        int32_t *seq = malloc(sizeof(int32_t) * AB), *pos = malloc(sizeof(int32_t) * AB),
                *cl = malloc(sizeof(int32_t) * AB), *bt = malloc(sizeof(int32_t) * 64 * AB * amb),
                *perm = malloc(sizeof(int32_t) * max_blocks);
        if (kcuda_malloc(cb, &cache) != PD_OK || kcuda_malloc(sizeof(float) * AB * QW, &dq) != PD_OK ||
            kcuda_malloc(sizeof(float) * AB * QW, &dout) != PD_OK || kcuda_malloc(4 * AB, &dseq) != PD_OK ||
            kcuda_malloc(4 * AB, &dpos) != PD_OK || kcuda_malloc(4 * AB, &dctx) != PD_OK ||
            kcuda_malloc(sizeof(int32_t) * 64 * AB * amb, &dbt) != PD_OK || kcuda_malloc(ws_bytes, &ws) != PD_OK) {
            fprintf(stderr, "bench_cuda: attention: out of device memory\n");
            goto next_cache;
        }
        /* never time on zeros; fp8: finite random bytes */
        if (ct == 2) {
            if (!bench_fill_fp8(cache, cb, stream)) {
                fprintf(stderr, "bench_cuda: attention: fp8 fill failed\n");
                goto next_cache;
            }
        } else {
            kcuda_fill_random(cache, ct == 0 ? cb / 4 : cb / 2, ct == 0 ? KCPU_DTYPE_F32 : KCPU_DTYPE_F16, 11, 1.0f,
                              stream);
        }
        kcuda_fill_random(dq, (size_t)AB * QW, KCPU_DTYPE_F32, 3, 1.0f, stream);
        shuffled_blocks(perm, max_blocks, 0x243f6a8885a308d3ull);
        for (int ci = 0; ci < ATT_NCTX; ci++) {
            const int ctx = att_ctx[ci], per = (ctx + BS - 1) / BS;
            if (getenv("PD_BENCH_ATTN_CTX") != NULL && atoi(getenv("PD_BENCH_ATTN_CTX")) != ctx)
                continue; /* one context only (profiling) */
            const double bytes = (double)AB * ctx * KW * eb * 2;
            int sets = (int)ceil(reuse_bytes / bytes);
            sets = sets < 1 ? 1 : sets > 64 ? 64 : sets;
            for (int s = 0; s < AB; s++) {
                seq[s] = s;
                pos[s] = ctx - 1;
                cl[s] = ctx;
            }
            int64_t nb = 0;
            for (int k = 0; k < sets; k++)
                for (int s = 0; s < AB; s++)
                    for (int i = 0; i < amb; i++)
                        bt[((int64_t)k * AB + s) * amb + i] = i < per ? perm[nb++] : 0;
            kcuda_memcpy_async(dseq, seq, 4 * AB, stream);
            kcuda_memcpy_async(dpos, pos, 4 * AB, stream);
            kcuda_memcpy_async(dctx, cl, 4 * AB, stream);
            kcuda_memcpy_async(dbt, bt, sizeof(int32_t) * sets * AB * amb, stream);
            if (kcuda_stream_sync(stream) != PD_OK) {
                fprintf(stderr, "bench_cuda: attention: upload failed\n");
                goto next_cache;
            }
            bool have_ref = false;
            for (int v = 0; v < n_var; v++) {
                kcpu_attn_params_t p = {.n_tokens = AB, .q = dq, .q_stride = QW, .out = dout, .out_stride = QW,
                                        .tok_seq = dseq, .tok_pos = dpos, .n_seqs = AB, .block_tables = dbt,
                                        .max_blocks_per_seq = amb, .context_lens = dctx, .n_heads = n_heads,
                                        .n_kv_heads = n_kv, .head_dim = hd, .scale = 1.0f / sqrtf((float)hd),
                                        .causal = true, .layer = lay.n_layers / 2, .cache_base = cache,
                                        .layout = &lay};
                kcuda_attn_set_decode(var[v].kernel, var[v].splits);
                kcuda_attn_set_decode_tuning(var[v].l2hint, var[v].pipe, var[v].scatter, var[v].order, var[v].tc);
                kcuda_attn_set_decode_ring(var[v].ring_w, var[v].ring_s);
                if (kcuda_attn_workspace_bytes(&p, sm_count, false) > ws_bytes)
                    continue;
                kcuda_graph_t graph = NULL;
                /* one eager call first: kernels load (lazily) outside the capture */
                bool ok = kcuda_paged_attention(&p, ws, ws_bytes, sm_count, false, NULL, stream) == PD_OK &&
                          kcuda_stream_sync(stream) == PD_OK;
                const bool capturing = ok && kcuda_capture_begin(stream) == PD_OK;
                ok = capturing;
                for (int k = 0; ok && k < sets; k++) {
                    p.block_tables = (const int32_t *)dbt + (int64_t)k * AB * amb;
                    if (kcuda_paged_attention(&p, ws, ws_bytes, sm_count, false, NULL, stream) != PD_OK)
                        ok = false;
                }
                if (capturing && kcuda_capture_end(stream, &graph) != PD_OK)
                    ok = false, graph = NULL;
                if (ok) /* warm-up */
                    ok = kcuda_graph_launch(graph, stream) == PD_OK && kcuda_stream_sync(stream) == PD_OK;
                int reps = (60 + sets - 1) / sets;
                if (getenv("PD_BENCH_ATTN_REPS") != NULL && atoi(getenv("PD_BENCH_ATTN_REPS")) > 0)
                    reps = atoi(getenv("PD_BENCH_ATTN_REPS")); /* fewer launches under a profiler */
                float ms = 0;
                if (ok) {
                    kcuda_event_record(e0, stream);
                    for (int k = 0; k < reps; k++)
                        kcuda_graph_launch(graph, stream);
                    kcuda_event_record(e1, stream);
                    ok = kcuda_stream_sync(stream) == PD_OK && kcuda_event_elapsed_ms(e0, e1, &ms) == PD_OK && ms > 0;
                }
                if (graph)
                    kcuda_graph_destroy(graph);
                if (!ok) {
                    fprintf(stderr, "bench_cuda: attention %s %s ctx %d failed\n", var[v].name, att_cache_names[ct],
                            ctx);
                    continue;
                }
                double per_call = ms * 1e-3 / ((double)reps * sets);
                us[v][ct][ci] = per_call * 1e6;
                gbps[v][ct][ci] = bytes / per_call / 1e9;
                /* the output against variant 0's on the same inputs */
                const size_t n_out = (size_t)AB * QW;
                if (diff && (v == 0 || have_ref) &&
                    kcuda_memcpy_async(v == 0 ? ref0 : got, dout, sizeof(float) * n_out, stream) == PD_OK &&
                    kcuda_stream_sync(stream) == PD_OK) {
                    if (v == 0) {
                        have_ref = true;
                        continue;
                    }
                    double mx = 1.0, worst = 0.0;
                    for (size_t i = 0; i < n_out; i++)
                        if (fabs(ref0[i]) > mx)
                            mx = fabs(ref0[i]);
                    for (size_t i = 0; i < n_out; i++) {
                        if (isnan(ref0[i]) && isnan(got[i]))
                            continue;
                        const double e = (isnan(ref0[i]) || isnan(got[i])) ? INFINITY : fabs(got[i] - ref0[i]);
                        worst = e > worst ? e : worst;
                    }
                    worst /= mx;
                    diff[v] = worst > diff[v] ? worst : diff[v];
                }
            }
        }
    next_cache:
        kcuda_free(cache), kcuda_free(dq), kcuda_free(dout), kcuda_free(dseq), kcuda_free(dpos), kcuda_free(dctx);
        kcuda_free(dbt), kcuda_free(ws);
        free(seq), free(pos), free(cl), free(bt), free(perm);
    }
    kcuda_attn_set_decode(KCUDA_ATTN_DECODE_AUTO, 0);
    kcuda_attn_set_decode_tuning(-1, -1, -1, -1, -1);
    kcuda_attn_set_decode_ring(0, 0);
out_stream:
    free(ref0);
    free(got);
    if (e0)
        kcuda_event_destroy(e0);
    if (e1)
        kcuda_event_destroy(e1);
    if (stream)
        kcuda_stream_destroy(stream);
}

/* The attention rows of the table: each variant against the copy rate. */
static void print_attention(int AB, const att_variant_t *var, int n_var, double copy_gbps,
                            double us[ATT_MAXV][3][ATT_NCTX], double gbps[ATT_MAXV][3][ATT_NCTX])
{
    for (int ct = 0; ct < 3; ct++)
        for (int ci = 0; ci < ATT_NCTX; ci++)
            for (int v = 0; v < n_var; v++) {
                char what[96];
                snprintf(what, sizeof(what), "decode attn b%d ctx %d %s %s (%.0f us)", AB, att_ctx[ci],
                         att_cache_names[ct], var[v].name, us[v][ct][ci]);
                printf("%-44s %9.0f GB/s %9.0f GB/s %7.1f%%\n", what, gbps[v][ct][ci], copy_gbps,
                       100 * gbps[v][ct][ci] / copy_gbps);
            }
}

/* Compact: per cache type one line of GB/s and % of the copy rate of variants 0 / 1 over
 * the contexts. */
static void print_attention_short(int AB, const att_variant_t *var, double copy_gbps,
                                  double gbps[ATT_MAXV][3][ATT_NCTX])
{
    printf("decode attn b%d, GB/s %s / %s (%% of copy), ctx", AB, var[0].name, var[1].name);
    for (int ci = 0; ci < ATT_NCTX; ci++)
        printf(" %d", att_ctx[ci]);
    printf(":\n");
    for (int ct = 0; ct < 3; ct++) {
        printf("  %-4s", att_cache_names[ct]);
        for (int ci = 0; ci < ATT_NCTX; ci++)
            printf(" %.0f/%.0f (%.0f/%.0f%%)", gbps[0][ct][ci], gbps[1][ct][ci], 100 * gbps[0][ct][ci] / copy_gbps,
                   100 * gbps[1][ct][ci] / copy_gbps);
        printf("\n");
    }
}

/* JSON: "name":{"f32":[...],"f16":[...],"fp8":[...]} per variant. */
static void json_attention(const att_variant_t *var, int n_var, double gbps[ATT_MAXV][3][ATT_NCTX])
{
    printf("\"attn_ctx\":[");
    for (int ci = 0; ci < ATT_NCTX; ci++)
        printf("%s%d", ci ? "," : "", att_ctx[ci]);
    printf("],\"attn_gbps\":{");
    for (int v = 0; v < n_var; v++) {
        printf("%s\"%s\":{", v ? "," : "", var[v].name);
        for (int ct = 0; ct < 3; ct++) {
            printf("%s\"%s\":[", ct ? "," : "", att_cache_names[ct]);
            for (int ci = 0; ci < ATT_NCTX; ci++)
                printf("%s%.0f", ci ? "," : "", gbps[v][ct][ci]);
            printf("]");
        }
        printf("}");
    }
    printf("}");
}

/* --attn-only: the copy ceiling and the decode attention sweep (new kernel with its
 * automatic and fixed split counts, each loading scheme (none, registers one iteration
 * ahead, the cp.async shared-memory ring), without the reduce-scatter, with a head-major
 * grid, and the old kernel),
 * Llama-3.1-8B shape (32 query heads, 8 KV heads, head dim 128), batch 64; under 30 s. */
static int attn_only(bool tc_mode)
{
    static const att_variant_t tc_var[] = {
        {"new", KCUDA_ATTN_DECODE_NEW, 0, -1, -1, -1, -1, 0, 0, 0},
        {"new-tc", KCUDA_ATTN_DECODE_NEW, 0, -1, -1, -1, -1, 1, 0, 0},
    };
    /* (dropped after the 19:36 run: new-nohint, new-hint (both ~= new), new-s4/s8/s16
     * (slower than s2), new-noscat (slower), new-hmajor) */
    static const att_variant_t all_var[] = {
        {"new", KCUDA_ATTN_DECODE_NEW, 0, -1, -1, -1, -1, -1, 0, 0},         {"old", KCUDA_ATTN_DECODE_OLD, 0, -1, -1, -1, -1, -1, 0, 0},
        {"new-nopipe", KCUDA_ATTN_DECODE_NEW, 0, -1, 0, -1, -1, -1, 0, 0},   {"new-pipe", KCUDA_ATTN_DECODE_NEW, 0, -1, 1, -1, -1, -1, 0, 0},
        {"new-async", KCUDA_ATTN_DECODE_NEW, 0, -1, 2, -1, -1, -1, 0, 0},    {"new-async-s2", KCUDA_ATTN_DECODE_NEW, 2, -1, 2, -1, -1, -1, 0, 0},
        {"new-async-ns", KCUDA_ATTN_DECODE_NEW, 0, -1, 2, 0, -1, -1, 0, 0},  {"new-async-hm", KCUDA_ATTN_DECODE_NEW, 0, -1, 2, -1, 1, -1, 0, 0},
        {"new-s2", KCUDA_ATTN_DECODE_NEW, 2, -1, -1, -1, -1, -1, 0, 0},      {"new-s1", KCUDA_ATTN_DECODE_NEW, 1, -1, -1, -1, -1, -1, 0, 0},
    };
    /* the tensor-core kernel's forms last, after everything above is printed and
     * flushed: should it fault, the sweep's results are already out (gpu_attn.sh also
     * runs it in a process of its own, --attn-tc) */
    static const att_variant_t tail_var[] = {
        {"new", KCUDA_ATTN_DECODE_NEW, 0, -1, -1, -1, -1, 0, 0, 0}, /* the reference of the check */
        {"new-tc", KCUDA_ATTN_DECODE_NEW, 0, -1, 0, -1, -1, 1, 0, 0}, /* registers, no ring */
        {"new-tc-s2", KCUDA_ATTN_DECODE_NEW, 2, -1, 0, -1, -1, 1, 0, 0},
        /* the cp.async ring, warps a CTA x stages (f16 builds 2x2 and 2x3, fp8 4x2, 4x3,
         * 2x4 and 2x6; a shape not built runs its type's default) */
        {"tc-ring", KCUDA_ATTN_DECODE_NEW, 0, -1, 2, -1, -1, 1, 0, 0},
        {"tc-r4x2", KCUDA_ATTN_DECODE_NEW, 0, -1, 2, -1, -1, 1, 4, 2},
        {"tc-r2x2", KCUDA_ATTN_DECODE_NEW, 0, -1, 2, -1, -1, 1, 2, 2},
        {"tc-r2x4", KCUDA_ATTN_DECODE_NEW, 0, -1, 2, -1, -1, 1, 2, 4},
        {"tc-r2x6", KCUDA_ATTN_DECODE_NEW, 0, -1, 2, -1, -1, 1, 2, 6},
    };
    const att_variant_t *var = tc_mode ? tc_var : all_var;
    const int n_var = tc_mode ? 2 : (int)(sizeof(all_var) / sizeof(all_var[0]));
    static double us[ATT_MAXV][3][ATT_NCTX], gbps[ATT_MAXV][3][ATT_NCTX];
    char name[128] = "";
    int sm = 0;
    double copy_gbps = 0;
    DIE_IF(kcuda_device_open(0, name, sizeof(name), &sm) != PD_OK, "no CUDA device");
    DIE_IF(kcuda_bench_copy_gbps((size_t)2 << 30, 20, &copy_gbps) != PD_OK, "copy bandwidth failed");
    static double diff[ATT_MAXV];
    const bool tail_only = !tc_mode && getenv("PD_BENCH_ATTN_TAIL") != NULL; /* the tensor-core tail alone */
    if (!tail_only)
        bench_attention(32, 8, 128, 64, var, n_var, sm, us, gbps, diff, 0);
    printf("\n== bench_cuda --attn-only: %s, %d SMs; paged decode attention, 32/8 heads, head dim 128, block %d ==\n",
           name, sm, BS);
    printf("%-44s %12s %14s %8s\n", "what", "measured", "ceiling", "ratio");
    printf("%-44s %9.0f GB/s %14s %8s\n", "d2d copy bandwidth (read+write)", copy_gbps, "-", "-");
    print_attention(64, var, n_var, copy_gbps, us, gbps);
    printf("(GB/s = K+V bytes read per second; ceiling = the copy's bytes moved per second)\n");
    printf("summary %s / %s, %% of copy, ctx", var[0].name, var[1].name);
    for (int ci = 0; ci < ATT_NCTX; ci++)
        printf(" %d", att_ctx[ci]);
    printf("\n");
    for (int ct = 0; ct < 3; ct++) {
        printf("  %-4s", att_cache_names[ct]);
        for (int ci = 0; ci < ATT_NCTX; ci++)
            printf(" %5.1f/%-5.1f", 100 * gbps[0][ct][ci] / copy_gbps, 100 * gbps[1][ct][ci] / copy_gbps);
        printf("\n");
    }
    printf("best variant, %% of copy, ctx");
    for (int ci = 0; ci < ATT_NCTX; ci++)
        printf(" %d", att_ctx[ci]);
    printf("\n");
    for (int ct = 0; ct < 3; ct++) {
        printf("  %-4s", att_cache_names[ct]);
        for (int ci = 0; ci < ATT_NCTX; ci++) {
            int b = 0;
            for (int v = 1; v < n_var; v++)
                if (gbps[v][ct][ci] > gbps[b][ct][ci])
                    b = v;
            printf(" %s:%.1f", var[b].name, 100 * gbps[b][ct][ci] / copy_gbps);
        }
        printf("\n");
    }
    printf("check vs %s, max |diff| / max(1, max |out|) (f32 f16 fp8, all contexts):", var[0].name);
    for (int v = 1; v < n_var; v++)
        printf(" %s:%.1e", var[v].name, diff[v]);
    printf("\n");
    printf("JSON_ATTN {\"copy_gbps\":%.1f,", copy_gbps);
    json_attention(var, n_var, gbps);
    printf("}\n");
    if (!tc_mode) {
        fflush(stdout);
        const int n_tail = (int)(sizeof(tail_var) / sizeof(tail_var[0]));
        bench_attention(32, 8, 128, 64, tail_var, n_tail, sm, us, gbps, diff, 1); /* f16, fp8 */
        printf("tensor-core decode forms, %% of copy, ctx");
        for (int ci = 0; ci < ATT_NCTX; ci++)
            printf(" %d", att_ctx[ci]);
        printf("\n");
        for (int v = 0; v < n_tail; v++) /* "new" again: the same run's reference */
            for (int ct = 1; ct < 3; ct++) {
                printf("  %-4s %-11s", att_cache_names[ct], tail_var[v].name);
                for (int ci = 0; ci < ATT_NCTX; ci++)
                    printf(" %5.1f", 100 * gbps[v][ct][ci] / copy_gbps);
                printf("\n");
            }
        printf("tensor-core check vs new, max |diff| / max(1, max |out|):");
        for (int v = 1; v < n_tail; v++)
            printf(" %s:%.1e", tail_var[v].name, diff[v]);
        printf("\n");
        printf("JSON_ATTN_TC {");
        json_attention(tail_var, n_tail, gbps);
        printf("}\n");
    }
    return 0;
}

/* ---- --prefill-attn: the prefill attention kernels alone ---- */

/* One prefill shape of the sweep: T new tokens after ctx0 cached ones, one sequence. */
typedef struct {
    int n_heads, n_kv, hd, T, ctx0;
} pfa_shape_t;

#define PFA_NV 3
static const char *const pfa_names[PFA_NV] = {"old-tc", "fa2", "fa2-w8"};

/* Time kcuda_paged_attention (f16 cache, block BS, reduced precision: the tensor-core
 * kernels) for each variant on one shape: ms[v] per call (0 when it failed) and diff[v]
 * = max |out - out of old-tc| / max(1, max |out of old-tc|) (-1: not compared). */
static void pfa_run(const pfa_shape_t *sh, int sm, double ms[PFA_NV], double diff[PFA_NV])
{
    const int64_t T = sh->T, ctx = (int64_t)sh->ctx0 + sh->T, QW = (int64_t)sh->n_heads * sh->hd;
    const int64_t mbps = (ctx + BS - 1) / BS, n_blocks = mbps + 1;
    kcuda_stream_t stream = NULL;
    kcuda_event_t e0 = NULL, e1 = NULL;
    void *cache = NULL, *dq = NULL, *dout = NULL, *dseq = NULL, *dpos = NULL, *dctx = NULL, *dbt = NULL, *ws = NULL;
    size_t ws_bytes = 0;
    int32_t *seq = malloc(4 * T), *pos = malloc(4 * T), *bt = malloc(4 * mbps), *perm = malloc(4 * n_blocks);
    float *ref = malloc(sizeof(float) * T * QW), *got = malloc(sizeof(float) * T * QW);
    int32_t cl = (int32_t)ctx;
    for (int v = 0; v < PFA_NV; v++)
        ms[v] = 0, diff[v] = -1;
    kcpu_kv_layout_t lay;
    if (seq == NULL || pos == NULL || bt == NULL || perm == NULL || ref == NULL || got == NULL ||
        kcuda_kv_layout_init(&lay, KCPU_DTYPE_F16, 1, BS, sh->n_kv, sh->hd, n_blocks) != PD_OK ||
        kcuda_stream_create(&stream) != PD_OK || kcuda_event_create(&e0) != PD_OK ||
        kcuda_event_create(&e1) != PD_OK || kcuda_malloc(lay.block_bytes * (size_t)n_blocks, &cache) != PD_OK ||
        kcuda_malloc(sizeof(float) * T * QW, &dq) != PD_OK || kcuda_malloc(sizeof(float) * T * QW, &dout) != PD_OK ||
        kcuda_malloc(4 * T, &dseq) != PD_OK || kcuda_malloc(4 * T, &dpos) != PD_OK ||
        kcuda_malloc(4, &dctx) != PD_OK || kcuda_malloc(4 * mbps, &dbt) != PD_OK) {
        fprintf(stderr, "bench_cuda: prefill attention: setup failed\n");
        goto out;
    }
    kcuda_fill_random(cache, lay.block_bytes * (size_t)n_blocks / 2, KCPU_DTYPE_F16, 17, 1.0f, stream);
    kcuda_fill_random(dq, (size_t)(T * QW), KCPU_DTYPE_F32, 5, 1.0f, stream);
    shuffled_blocks(perm, n_blocks, 0x13198a2e03707344ull);
    for (int64_t i = 0; i < mbps; i++)
        bt[i] = perm[i];
    for (int64_t t = 0; t < T; t++)
        seq[t] = 0, pos[t] = (int32_t)(sh->ctx0 + t);
    kcuda_memcpy_async(dseq, seq, 4 * T, stream);
    kcuda_memcpy_async(dpos, pos, 4 * T, stream);
    kcuda_memcpy_async(dctx, &cl, 4, stream);
    kcuda_memcpy_async(dbt, bt, 4 * mbps, stream);
    if (kcuda_stream_sync(stream) != PD_OK) {
        fprintf(stderr, "bench_cuda: prefill attention: upload failed\n");
        goto out;
    }
    kcpu_attn_params_t p = {.n_tokens = T, .q = dq, .q_stride = QW, .out = dout, .out_stride = QW,
                            .tok_seq = dseq, .tok_pos = dpos, .n_seqs = 1, .block_tables = dbt,
                            .max_blocks_per_seq = mbps, .context_lens = dctx, .n_heads = sh->n_heads,
                            .n_kv_heads = sh->n_kv, .head_dim = sh->hd, .scale = 1.0f / sqrtf((float)sh->hd),
                            .causal = true, .layer = 0, .cache_base = cache, .layout = &lay};
    for (int v = 0; v < PFA_NV; v++) {
        kcuda_attn_set_prefill(v == 0 ? KCUDA_ATTN_PREFILL_OLD : KCUDA_ATTN_PREFILL_FA2, v == 2 ? 8 : 4);
        if (v > 0 && !kcuda_attn_uses_prefill_kernel(&p, sm, true, NULL)) {
            fprintf(stderr, "bench_cuda: prefill attention: %s not routed\n", pfa_names[v]);
            continue;
        }
        const size_t need = kcuda_attn_workspace_bytes(&p, sm, true);
        if (need > ws_bytes) {
            kcuda_free(ws);
            ws = NULL;
            ws_bytes = 0;
            if (kcuda_malloc(need, &ws) != PD_OK) {
                fprintf(stderr, "bench_cuda: prefill attention: no workspace of %zu bytes\n", need);
                continue;
            }
            ws_bytes = need;
        }
        kcuda_memset_async(dout, 0xff, sizeof(float) * T * QW, stream);
        /* one call (kernels load lazily), then as many as fit in ~0.2 s */
        bool ok = kcuda_paged_attention(&p, ws, ws_bytes, sm, true, NULL, stream) == PD_OK &&
                  kcuda_stream_sync(stream) == PD_OK;
        float t1 = 0;
        if (ok) {
            kcuda_event_record(e0, stream);
            ok = kcuda_paged_attention(&p, ws, ws_bytes, sm, true, NULL, stream) == PD_OK;
            kcuda_event_record(e1, stream);
            ok = ok && kcuda_stream_sync(stream) == PD_OK && kcuda_event_elapsed_ms(e0, e1, &t1) == PD_OK;
        }
        int reps = t1 > 0 ? (int)(200.0 / t1) : 1;
        reps = reps < 3 ? 3 : reps > 200 ? 200 : reps;
        float tm = 0;
        if (ok) {
            kcuda_event_record(e0, stream);
            for (int k = 0; k < reps && ok; k++)
                ok = kcuda_paged_attention(&p, ws, ws_bytes, sm, true, NULL, stream) == PD_OK;
            kcuda_event_record(e1, stream);
            ok = ok && kcuda_stream_sync(stream) == PD_OK && kcuda_event_elapsed_ms(e0, e1, &tm) == PD_OK && tm > 0;
        }
        if (!ok) {
            fprintf(stderr, "bench_cuda: prefill attention %s T %d ctx0 %d failed\n", pfa_names[v], sh->T, sh->ctx0);
            continue;
        }
        ms[v] = tm / reps;
        if (kcuda_memcpy_async(v == 0 ? ref : got, dout, sizeof(float) * T * QW, stream) != PD_OK ||
            kcuda_stream_sync(stream) != PD_OK)
            continue;
        if (v == 0) {
            diff[0] = 0;
            continue;
        }
        if (diff[0] < 0)
            continue;
        double mx = 1.0, worst = 0.0;
        for (int64_t i = 0; i < T * QW; i++)
            if (fabs(ref[i]) > mx)
                mx = fabs(ref[i]);
        for (int64_t i = 0; i < T * QW; i++) {
            double e = fabs((double)got[i] - ref[i]);
            if (!(e <= worst)) /* NaN: +inf */
                worst = isnan(e) ? INFINITY : e;
        }
        diff[v] = worst / mx;
    }
    kcuda_attn_set_prefill(KCUDA_ATTN_PREFILL_AUTO, 0);
out:
    kcuda_free(cache), kcuda_free(dq), kcuda_free(dout), kcuda_free(dseq), kcuda_free(dpos), kcuda_free(dctx);
    kcuda_free(dbt), kcuda_free(ws);
    if (e0)
        kcuda_event_destroy(e0);
    if (e1)
        kcuda_event_destroy(e1);
    if (stream)
        kcuda_stream_destroy(stream);
    free(seq), free(pos), free(bt), free(perm), free(ref), free(got);
}

/* FLOPs of a T-token prefill of one sequence, as the forward computes it: the layers'
 * GEMMs for every token, the lm_head for the last one only (the logits asked for), and
 * causal attention (QK^T and PV over T (T + 1) / 2 key positions a head).  The compute
 * floor is this over the cuBLAS bf16 rate at the prefill shape. */
static double prefill_flops(const eng_model_config_t *c, int T)
{
    const double D = (double)c->hidden, I = (double)c->intermediate, QW = (double)c->n_heads * c->head_dim,
                 KW = (double)c->n_kv_heads * c->head_dim;
    const double layer_params = D * QW + 2 * D * KW + QW * D + 3 * D * I;
    return 2.0 * c->n_layers * layer_params * T + 2.0 * (double)c->vocab_size * D +
           (double)c->n_layers * 4.0 * c->n_heads * c->head_dim * ((double)T * (T + 1) / 2);
}

/* The model at model_dir with dummy bf16 weights (8192 tokens of context), or NULL. */
static eng_model_t *load_dummy(const char *model_dir)
{
    eng_load_opts_t lo;
    eng_model_t *model = NULL;
    eng_load_opts_init(&lo);
    lo.model = model_dir;
    lo.load_format = "dummy";
    lo.dtype = "bfloat16";
    lo.max_model_len = 8192;
    return eng_model_load(&lo, &model) == PD_OK ? model : NULL;
}

/* The whole 2048-token prefill (eng_forward, dummy bf16 weights of model_dir) with the
 * old and the fa2 prefill attention, f32 and f16 KV caches (the server's "auto" on CUDA is
 * f16): ms[cache][variant] (0: failed or not run), and the compute floor (GEMM + causal
 * attention FLOPs / the cuBLAS rate at the prefill shape) in *floor_ms. */
static void pfa_engine(const char *model_dir, double ms[2][PFA_NV], double *floor_ms)
{
    memset(ms, 0, sizeof(double) * 2 * PFA_NV);
    *floor_ms = 0;
    eng_model_t *model = load_dummy(model_dir);
    if (model == NULL) {
        fprintf(stderr, "bench_cuda: engine prefill: cannot load %s (dummy)\n", model_dir);
        return;
    }
    const eng_model_config_t *c = eng_model_config(model);
    const eng_backend_ops_t *ops = eng_backend_get("cuda");
    eng_backend_t *be = NULL;
    eng_backend_opts_t bo = {.device = 0};
    double gemm_pf = 0;
    if (ops == NULL || ops->init(&bo, &be) != PD_OK) {
        fprintf(stderr, "bench_cuda: engine prefill: no cuda backend\n");
        eng_model_destroy(model);
        return;
    }
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_BF16);
    const int prefill = 2048, mbps = prefill / BS + 2;
    if (kcuda_bench_gemm_tflops(prefill, c->intermediate, c->hidden, 20, &gemm_pf) == PD_OK && gemm_pf > 0)
        *floor_ms = prefill_flops(c, prefill) / (gemm_pf * 1e12) * 1e3;
    float *logits = malloc(sizeof(float) * 2 * (size_t)c->vocab_size);
    for (int ct = 0; ct < 2 && logits != NULL; ct++) {
        eng_forward_opts_t fo = {.block_size = BS, .n_blocks = prefill / BS + 1, .max_tokens = prefill, .max_seqs = 1,
                                 .max_blocks_per_seq = mbps, .kv_dtype = ct == 0 ? ENG_KV_AUTO : ENG_KV_F16};
        eng_forward_t *fw = NULL;
        if (eng_forward_create(model, ops, be, &fo, &fw) != PD_OK) {
            fprintf(stderr, "bench_cuda: engine prefill: forward create failed (%s cache)\n", ct ? "f16" : "f32");
            continue;
        }
        batch_t b;
        make_batch(&b, 1, 0, prefill, mbps, (int)c->vocab_size);
        for (int v = 0; v < PFA_NV; v++) {
            kcuda_attn_set_prefill(v == 0 ? KCUDA_ATTN_PREFILL_OLD : KCUDA_ATTN_PREFILL_FA2, v == 2 ? 8 : 4);
            ms[ct][v] = time_forward_soft(fw, &b, logits, 1, 5) * 1e3;
        }
        kcuda_attn_set_prefill(KCUDA_ATTN_PREFILL_AUTO, 0);
        free_batch(&b);
        eng_forward_destroy(fw);
    }
    free(logits);
    ops->shutdown(be);
    eng_model_destroy(model);
}

/* bench_cuda --prefill-attn: the old WMMA kernel vs the FlashAttention-2 one (4 and 8
 * warps) for a 2048- and a 4096-token prefill and a 4096-token chunk after 4096 cached
 * tokens at the Llama-3.1-8B shape (32/8 heads, d128, block 16, f16 cache) and a 2048
 * prefill at SmolLM2's (9/3, d64), in TFLOP/s of causal attention (4 * heads * d * keys
 * summed over the rows) beside the cuBLAS bf16 GEMM rate of the same run. */
static int prefill_attn_only(const char *model_dir)
{
    static const pfa_shape_t shapes[] = {
        {32, 8, 128, 2048, 0}, {32, 8, 128, 4096, 0}, {32, 8, 128, 4096, 4096}, {9, 3, 64, 2048, 0}};
    const int n_sh = (int)(sizeof(shapes) / sizeof(shapes[0]));
    char name[128] = "";
    int sm = 0;
    double gemm = 0;
    DIE_IF(kcuda_device_open(0, name, sizeof(name), &sm) != PD_OK, "no CUDA device");
    DIE_IF(kcuda_bench_gemm_tflops(8192, 8192, 8192, 10, &gemm) != PD_OK, "gemm failed");
    double ms[8][PFA_NV], diff[8][PFA_NV], tf[8][PFA_NV];
    for (int i = 0; i < n_sh; i++) {
        pfa_run(&shapes[i], sm, ms[i], diff[i]);
        const double keys = (double)shapes[i].T * shapes[i].ctx0 + (double)shapes[i].T * (shapes[i].T + 1) / 2;
        const double flop = 4.0 * shapes[i].n_heads * shapes[i].hd * keys;
        for (int v = 0; v < PFA_NV; v++)
            tf[i][v] = ms[i][v] > 0 ? flop / (ms[i][v] * 1e-3) / 1e12 : 0;
    }
    printf("\n== bench_cuda --prefill-attn: %s, %d SMs; paged prefill attention, f16 cache, block %d ==\n", name, sm,
           BS);
    printf("cuBLAS bf16 GEMM 8192^3: %.1f TFLOP/s (the ceiling beside each figure)\n", gemm);
    printf("%-30s %-7s %10s %10s %8s %12s %10s\n", "shape", "kernel", "ms/layer", "TFLOP/s", "% gemm", "32 layers ms",
           "diff");
    for (int i = 0; i < n_sh; i++)
        for (int v = 0; v < PFA_NV; v++) {
            char shs[64];
            snprintf(shs, sizeof(shs), "h%d/%d d%d T%d ctx0 %d", shapes[i].n_heads, shapes[i].n_kv, shapes[i].hd,
                     shapes[i].T, shapes[i].ctx0);
            printf("%-30s %-7s %10.3f %10.1f %8.1f %12.2f %10.1e\n", shs, pfa_names[v], ms[i][v], tf[i][v],
                   100 * tf[i][v] / (gemm > 0 ? gemm : 1), 32 * ms[i][v], diff[i][v]);
        }
    printf("JSON_PREFILL_ATTN {\"gemm_tflops\":%.1f,\"cases\":[", gemm);
    for (int i = 0; i < n_sh; i++) {
        printf("%s{\"heads\":%d,\"kv_heads\":%d,\"hd\":%d,\"T\":%d,\"ctx0\":%d", i ? "," : "", shapes[i].n_heads,
               shapes[i].n_kv, shapes[i].hd, shapes[i].T, shapes[i].ctx0);
        for (int v = 0; v < PFA_NV; v++)
            printf(",\"%s_ms\":%.4f,\"%s_tflops\":%.1f,\"%s_diff\":%.2e", pfa_names[v], ms[i][v], pfa_names[v],
                   tf[i][v], pfa_names[v], diff[i][v]);
        printf("}");
    }
    printf("]}\n");
    fflush(stdout); /* the kernel figures are out should the engine part fail */
    double ems[2][PFA_NV], floor_ms = 0;
    pfa_engine(model_dir, ems, &floor_ms);
    printf("engine prefill 2048 tokens (%s, dummy bf16 weights), ms; floor %.1f ms (FLOPs / GEMM rate):\n",
           model_dir, floor_ms);
    for (int ct = 0; ct < 2; ct++) {
        printf("  %s KV cache:", ct ? "f16" : "f32");
        for (int v = 0; v < PFA_NV; v++)
            printf("  %s %.1f ms (%.0f%% of floor)", pfa_names[v], ems[ct][v],
                   ems[ct][v] > 0 ? 100 * floor_ms / ems[ct][v] : 0.0);
        printf("\n");
    }
    printf("JSON_PREFILL_ENGINE {\"floor_ms\":%.2f", floor_ms);
    for (int ct = 0; ct < 2; ct++)
        for (int v = 0; v < PFA_NV; v++)
            printf(",\"%s_%s_ms\":%.2f", ct ? "f16" : "f32", pfa_names[v], ems[ct][v]);
    printf("}\n");
    return 0;
}

/* time_forward_soft through device-side greedy: every row argmax-only (need_row all
 * zero), so only B ids come back instead of B x vocab floats. */
static double time_forward_sampled(eng_forward_t *fw, const batch_t *b, float *logits, int warm, int iters, bool sample);

static double time_forward_argmax(eng_forward_t *fw, const batch_t *b, float *logits, int warm, int iters)
{
    return time_forward_sampled(fw, b, logits, warm, iters, false);
}

/* sample: every row drawn on the device with temperature 0.8, top-k 50, top-p 0.9 */
static double time_forward_sampled(eng_forward_t *fw, const batch_t *b, float *logits, int warm, int iters, bool sample)
{
    eng_fwd_batch_t fb = {b->n_tokens, b->tokens, b->pos, b->seq, b->slots, b->n_seqs, b->tables, b->ctx,
                          b->n_seqs, b->rows};
    uint8_t *need = calloc((size_t)b->n_seqs, 1);
    int32_t *ids = malloc((size_t)b->n_seqs * sizeof(int32_t));
    kcpu_sample_params_t *sp = malloc((size_t)b->n_seqs * sizeof(*sp));
    float *u = malloc((size_t)b->n_seqs * sizeof(float));
    double t = 0;
    if (need == NULL || ids == NULL || sp == NULL || u == NULL)
        goto out;
    for (int i = 0; i < b->n_seqs; i++) {
        sp[i] = (kcpu_sample_params_t){0.8f, 50, 0.9f, 0.0f};
        u[i] = (float)(i % 97) / 97.0f;
    }
    for (int i = 0; i < warm; i++)
        if (eng_forward_run_sample(fw, &fb, need, sample ? sp : NULL, u, logits, ids) != PD_OK)
            goto out;
    double t0 = now_s();
    for (int i = 0; i < iters; i++)
        if (eng_forward_run_sample(fw, &fb, need, sample ? sp : NULL, u, logits, ids) != PD_OK)
            goto out;
    t = (now_s() - t0) / iters;
out:
    free(need);
    free(ids);
    free(sp);
    free(u);
    return t;
}

/* --profile: one prefill and two eager decode steps inside the profiled range, phases
 * separated by marker kernels (launched after each forward returned, so in order).
 * The f16 KV cache: what --kv-cache-dtype auto gives a bf16 model on CUDA.
 * --trace DIR: the same phases recorded with CUPTI (cupti_trace.c: real start and end of
 * every kernel, nothing serialized) into DIR/tl_cuda_{gpu,api}_trace.csv for
 * scripts/nsys_gaps.py; the decode steps as the server runs them (CUDA graphs, device
 * argmax), three of each phase. */
/* The third phase (decode b64 ctx 1024, f16 KV, bf16 weights) can take the whole-engine
 * run's shape instead: PD_PROFILE_B (batch), PD_PROFILE_CTX (context), PD_PROFILE_KV=fp8
 * (an fp8 e4m3 cache filled with random finite bytes), PD_PROFILE_FP8W=1 (fp8 weights). */
static int env_int(const char *name, int def)
{
    const char *v = getenv(name);
    return v && atoi(v) > 0 ? atoi(v) : def;
}

static int profile_mode(const char *model_dir, const char *trace_dir)
{
    const int B3 = env_int("PD_PROFILE_B", 64), C3 = env_int("PD_PROFILE_CTX", 1024);
    const bool kv8 = getenv("PD_PROFILE_KV") && strcmp(getenv("PD_PROFILE_KV"), "fp8") == 0;
    const bool w8 = env_int("PD_PROFILE_FP8W", 0) != 0;
    const struct { int B, ctx, n_new; } ph[3] = {{1, 0, 2048}, {1, 1024, 1}, {B3, C3, 1}};
    const int mbps = (C3 + 1 > 2048 ? C3 + 1 : 2048) / BS + 2;
    const int LB = B3 > 64 ? B3 : 64; /* sequences the forward (and its graphs) hold */
    eng_model_t *model = load_dummy(model_dir);
    DIE_IF(model == NULL, "cannot load %s (dummy)", model_dir);
    const int vocab = (int)eng_model_config(model)->vocab_size;
    const eng_backend_ops_t *ops = eng_backend_get("cuda");
    eng_backend_t *be = NULL;
    eng_backend_opts_t bo = {.device = 0};
    DIE_IF(ops == NULL || ops->init(&bo, &be) != PD_OK, "no cuda backend");
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_BF16);
    DIE_IF(w8 && eng_backend_cuda_set_fp8_weights(be, true) != PD_OK, "fp8 weights refused");
    eng_forward_opts_t fo = {.block_size = BS, .n_blocks = B3 * ((C3 + 1 + BS - 1) / BS) + 2048 / BS + 1,
                             .max_tokens = 2048, .max_seqs = LB, .max_blocks_per_seq = mbps,
                             .kv_dtype = kv8 ? ENG_KV_FP8_E4M3 : ENG_KV_F16};
    if (trace_dir) {
        fo.graph_max_bs = LB;
        fo.graph_max_ctx = 8192;
    }
    eng_forward_t *fw = NULL;
    DIE_IF(eng_forward_create(model, ops, be, &fo, &fw) != PD_OK, "forward create failed");
    if (kv8) {
        size_t n8 = eng_forward_kv_block_bytes(fw) * (size_t)eng_forward_kv_n_blocks(fw);
        DIE_IF(!bench_fill_fp8(eng_forward_kv_base(fw), n8, NULL), "fill failed");
    } else {
        size_t n = eng_forward_kv_block_bytes(fw) / 2 * (size_t)eng_forward_kv_n_blocks(fw);
        DIE_IF(kcuda_fill_random(eng_forward_kv_base(fw), n, KCPU_DTYPE_F16, 7, 1.0f, NULL) != PD_OK ||
                   kcuda_stream_sync(NULL) != PD_OK, "fill failed");
    }
    batch_t b[3];
    float *lg = malloc(sizeof(float) * LB * (size_t)vocab);
    DIE_IF(lg == NULL, "out of memory");
    for (int i = 0; i < 3; i++) {
        make_batch(&b[i], ph[i].B, ph[i].ctx, ph[i].n_new, mbps, vocab);
        time_forward(fw, &b[i], lg, 2, 1); /* warm: weight conversion, workspaces */
        if (trace_dir && i > 0)
            time_forward_argmax(fw, &b[i], lg, 2, 1); /* capture the graph */
    }
    double ms[3] = {0, 0, 0};
    DIE_IF(trace_dir && pd_trace_start() != 0, "cannot start the CUPTI trace");
    DIE_IF(kcuda_bench_profiler(true) != PD_OK, "cudaProfilerStart failed");
    for (int i = 0; i < 3; i++) {
        DIE_IF(kcuda_bench_marker(i + 1, NULL) != PD_OK, "marker failed");
        if (trace_dir == NULL)
            time_forward(fw, &b[i], lg, 0, 1);
        else if (i == 0)
            ms[i] = time_forward(fw, &b[i], lg, 0, 3) * 1e3;
        else
            ms[i] = time_forward_argmax(fw, &b[i], lg, 0, 3) * 1e3;
    }
    DIE_IF(kcuda_bench_marker(4, NULL) != PD_OK || kcuda_bench_profiler(false) != PD_OK, "profiler stop failed");
    DIE_IF(trace_dir && pd_trace_stop(trace_dir) != 0, "cannot write the CUPTI trace");
    if (trace_dir)
        printf("trace: prefill 2048 %.2f ms, decode b1 %.3f ms, b%d %.3f ms per step (host clock, traced)\n", ms[0],
               ms[1], B3, ms[2]);
    for (int i = 0; i < 3; i++)
        free_batch(&b[i]);
    free(lg);
    eng_forward_destroy(fw);
    ops->shutdown(be);
    eng_model_destroy(model);
    printf("profile: prefill 2048 (marker 1), decode b1 ctx 1024 (marker 2), b%d ctx %d (marker 3), %s KV, %s "
           "weights\n", B3, C3, kv8 ? "fp8" : "f16", w8 ? "fp8" : "bf16");
    return 0;
}

/* ---- fused decode GEMVs (kcuda_gemv_ex) beside the plain GEMV, M = 1, f16 weights
 * cycled over >= 256 MB (L2-cold), timed with events: weight GB/s.  Modes: 0 plain
 * kcuda_gemv, 1 norm + store (q|k|v), 2 norm + GLU (gate|up), 3 accumulate (o, down);
 * ks: warps per column (0 = automatic). ---- */

#define FG_N 7
static const struct {
    const char *what;
    int64_t N, K;
    int mode, ks;
} fg_case[FG_N] = {
    {"q|k|v 6144x4096, norm", 6144, 4096, 1, 0},   {"o 4096x4096, += residual", 4096, 4096, 3, 0},
    {"gate|up 28672x4096, norm+silu", 28672, 4096, 2, 0}, {"down 4096x14336, += residual", 4096, 14336, 3, 0},
    {"q|k|v 6144x4096, norm, 2 warps/col", 6144, 4096, 1, 2}, {"o 4096x4096, +=, 2 warps/col", 4096, 4096, 3, 2},
    {"o 4096x4096, +=, 4 warps/col", 4096, 4096, 3, 4},
};

static double bench_gemv_mode(int64_t N, int64_t K, int mode, int ks, int iters)
{
    const size_t wbytes = (size_t)N * K * 2;
    const int copies = (int)((((size_t)256 << 20) + wbytes - 1) / wbytes);
    void *W = NULL;
    float *x = NULL, *y = NULL, *nw = NULL, ms = 0;
    kcuda_event_t e0 = NULL, e1 = NULL;
    double gbps = 0;
    kcuda_gemv_ex_t a;
    if (kcuda_malloc(wbytes * copies, &W) != PD_OK || kcuda_malloc(sizeof(float) * K, (void **)&x) != PD_OK ||
        kcuda_malloc(sizeof(float) * N, (void **)&y) != PD_OK || kcuda_malloc(sizeof(float) * K, (void **)&nw) != PD_OK ||
        kcuda_fill_random(W, (size_t)N * K * copies, KCPU_DTYPE_F16, 5, 0.05f, NULL) != PD_OK ||
        kcuda_fill_random(x, (size_t)K, KCPU_DTYPE_F32, 6, 1.0f, NULL) != PD_OK ||
        kcuda_fill_random(nw, (size_t)K, KCPU_DTYPE_F32, 8, 1.0f, NULL) != PD_OK ||
        kcuda_fill_random(y, (size_t)N, KCPU_DTYPE_F32, 9, 1.0f, NULL) != PD_OK ||
        kcuda_event_create(&e0) != PD_OK || kcuda_event_create(&e1) != PD_OK)
        goto out;
    memset(&a, 0, sizeof(a));
    a.x = x, a.M = 1, a.K = K, a.ldx = K, a.wtype = KCPU_DTYPE_F16, a.N = N, a.eps = 1e-5f, a.y = y, a.ldy = N;
    a.norm_w = mode == 1 || mode == 2 ? nw : NULL;
    a.epi = mode == 2 ? KCUDA_GEMV_GLU : mode == 3 ? KCUDA_GEMV_ACCUMULATE : KCUDA_GEMV_STORE;
    kcuda_gemv_set_ksplit(ks);
    for (int i = -3; i < iters; i++) {
        if (i == 0 && kcuda_event_record(e0, NULL) != PD_OK)
            goto out;
        a.w = (const uint8_t *)W + (size_t)((i + 3) % copies) * wbytes;
        pd_status_t st = mode == 0 ? kcuda_gemv(x, 1, K, K, a.w, KCPU_DTYPE_F16, N, y, N, NULL) : kcuda_gemv_ex(&a, NULL);
        if (st != PD_OK)
            goto out;
    }
    if (kcuda_event_record(e1, NULL) == PD_OK && kcuda_stream_sync(NULL) == PD_OK &&
        kcuda_event_elapsed_ms(e0, e1, &ms) == PD_OK && ms > 0)
        gbps = (double)wbytes * iters / (ms * 1e-3) / 1e9;
out:
    kcuda_gemv_set_ksplit(-1);
    kcuda_stream_sync(NULL);
    kcuda_event_destroy(e0), kcuda_event_destroy(e1);
    kcuda_free(W), kcuda_free(x), kcuda_free(y), kcuda_free(nw);
    return gbps;
}

/* gbps[i][0]: the plain GEMV of case i's shape (same warps per column), [1]: the fused one */
static void bench_fused_gemv(double gbps[FG_N][2])
{
    for (int i = 0; i < FG_N; i++) {
        gbps[i][0] = bench_gemv_mode(fg_case[i].N, fg_case[i].K, 0, fg_case[i].ks, 50);
        gbps[i][1] = bench_gemv_mode(fg_case[i].N, fg_case[i].K, fg_case[i].mode, fg_case[i].ks, 50);
    }
}

static void print_fused_gemv(double gbps[FG_N][2], double copy_gbps)
{
    printf("(fused GEMV rows: M = 1, f16 weights L2-cold; first figure the fused kernel, then the plain GEMV of "
           "the shape, the copy ceiling, fused / copy)\n");
    for (int i = 0; i < FG_N; i++) {
        char what[80];
        snprintf(what, sizeof(what), "GEMV %s", fg_case[i].what);
        printf("%-44s %6.0f GB/s %6.0f GB/s %6.0f GB/s %5.1f%%\n", what, gbps[i][1], gbps[i][0], copy_gbps,
               copy_gbps > 0 ? 100 * gbps[i][1] / copy_gbps : 0.0);
    }
}

/* The decode step at batch 1 with the fused decode layer (opt-in, PD_FORWARD_DECODE_FUSE=1,
 * a forward of its own) against the default layer (full logits and device argmax). */
static void print_decode_fuse(const double on[2], const double off[2], double floor_dec)
{
    printf("(decode fusion rows: A/B with PD_FORWARD_DECODE_FUSE=1 in a second forward; ceiling column = the "
           "weight floor; last column fused speed-up)\n");
    printf("%-44s %9.2f ms %11.2f ms %7.1f%%\n", "decode b1 graph, fused layer (opt-in)", on[0] * 1e3, floor_dec * 1e3,
           on[0] > 0 ? 100 * floor_dec / on[0] : 0.0);
    printf("%-44s %9.2f ms %11.2f ms %7.1f%% %5.2fx\n", "decode b1 graph, fused layer, dev argmax", on[1] * 1e3,
           floor_dec * 1e3, on[1] > 0 ? 100 * floor_dec / on[1] : 0.0, on[1] > 0 ? off[1] / on[1] : 0.0);
    printf("%-44s %9.2f ms %11.2f ms %7.1f%%\n", "decode b1 graph, default (no decode fusion)", off[0] * 1e3, floor_dec * 1e3,
           off[0] > 0 ? 100 * floor_dec / off[0] : 0.0);
    printf("%-44s %9.2f ms %11.2f ms %7.1f%%\n", "decode b1 graph, default, dev argmax", off[1] * 1e3,
           floor_dec * 1e3, off[1] > 0 ? 100 * floor_dec / off[1] : 0.0);
}

/* Random K/V in the whole f32 cache of fw (never time on zeros); the fill runs on the
 * default stream. */
static void fill_kv_f32(eng_forward_t *fw)
{
    size_t n = eng_forward_kv_block_bytes(fw) / sizeof(float) * (size_t)eng_forward_kv_n_blocks(fw);
    DIE_IF(kcuda_fill_random(eng_forward_kv_base(fw), n, KCPU_DTYPE_F32, 7, 1.0f, NULL) != PD_OK ||
               kcuda_stream_sync(NULL) != PD_OK,
           "fill failed");
}

/*
 * --roofline: decode throughput at batch 64 and 256, contexts 1024 / 2048 / 4096, f16 (the
 * server's "auto" for a bf16 model) and fp8 e4m3 KV caches, each step beside its
 * roofline: the larger of (GEMM weight bytes + the KV bytes the step reads) / the copy
 * rate and (GEMM + attention FLOPs) / the cuBLAS bf16 rate (8192^3), both measured in
 * the same process.  Graph steps with device argmax (eng_forward_run_sample), tokens/s =
 * batch / step time, fraction = roofline time / step time.  A point whose KV cache does
 * not fit beside the weights is skipped and said so (b256 x 4096 with f16 needs 137 GB).
 */
static int roofline_mode(const char *model_dir)
{
    double copy_gbps = 0, gemm_tflops = 0;
    DIE_IF(kcuda_bench_copy_gbps((size_t)2 << 30, 20, &copy_gbps) != PD_OK, "copy bandwidth failed");
    DIE_IF(kcuda_bench_gemm_tflops(8192, 8192, 8192, 10, &gemm_tflops) != PD_OK, "gemm failed");
    eng_model_t *model = load_dummy(model_dir);
    DIE_IF(model == NULL, "cannot load %s (dummy)", model_dir);
    const eng_model_config_t *c = eng_model_config(model);
    const eng_backend_ops_t *ops = eng_backend_get("cuda");
    eng_backend_t *be = NULL;
    eng_backend_opts_t bo = {.device = 0};
    DIE_IF(ops == NULL || ops->init(&bo, &be) != PD_OK, "no cuda backend");
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_BF16);
    const double D = c->hidden, I = c->intermediate, QW = (double)c->n_heads * c->head_dim,
                 KW = (double)c->n_kv_heads * c->head_dim, V = c->vocab_size, L = c->n_layers;
    const double gemm_params = L * (D * QW + 2 * D * KW + QW * D + 3 * D * I) + V * D;
    const double weight_bytes = gemm_params * 2; /* bf16 */
    static const int Bs[2] = {64, 256}, Cs[3] = {1024, 2048, 4096};
    static const char *const kv_names[2] = {"f16", "fp8"};
    static const eng_kv_dtype_t kv_types[2] = {ENG_KV_F16, ENG_KV_FP8_E4M3};
    /* KV blocks per cache type: 68.7 GB of cache either way (b256 x 2048 f16, b256 x 4096 fp8) */
    const int64_t per_4096 = (4096 + 1 + BS - 1) / BS, per_2048 = (2048 + 1 + BS - 1) / BS;
    const int64_t nblk[2] = {256 * per_2048, 256 * per_4096};
    const int mbps = 4096 / BS + 2;
    double ms[2][2][3] = {{{0}}}, frac[2][2][3] = {{{0}}};
    float *logits = malloc(sizeof(float) * 256 * (size_t)V);
    DIE_IF(logits == NULL, "no memory");
    for (int k = 0; k < 2; k++) {
        const double kv_tok = L * KW * 2 * (k == 0 ? 2 : 1); /* K and V bytes a token, all layers */
        eng_forward_opts_t fo = {.block_size = BS, .n_blocks = nblk[k], .max_tokens = 256, .max_seqs = 256,
                                 .max_blocks_per_seq = mbps, .graph_max_bs = 256, .graph_max_ctx = 8192,
                                 .kv_dtype = kv_types[k]};
        eng_forward_t *fw = NULL;
        if (eng_forward_create(model, ops, be, &fo, &fw) != PD_OK) {
            fprintf(stderr, "bench_cuda: roofline: forward create (%s KV, %lld blocks) failed\n", kv_names[k],
                    (long long)nblk[k]);
            continue;
        }
        /* f16 0x3800 = 0.5; fp8 e4m3 0x30 = 0.5 (finite, scales 1) */
        DIE_IF(ops->memset(be, eng_forward_kv_base(fw), k == 0 ? 0x38 : 0x30,
                           eng_forward_kv_block_bytes(fw) * (size_t)eng_forward_kv_n_blocks(fw)) != PD_OK,
               "fill failed");
        for (int bi = 0; bi < 2; bi++)
            for (int ci = 0; ci < 3; ci++) {
                const int B = Bs[bi], C = Cs[ci];
                if ((int64_t)B * ((C + 1 + BS - 1) / BS) > nblk[k])
                    continue;
                batch_t b;
                make_batch(&b, B, C, 1, mbps, (int)V);
                double t = time_forward_argmax(fw, &b, logits, 2, 10);
                free_batch(&b);
                const double bytes = weight_bytes + (double)B * (C + 1) * kv_tok;
                const double flops = 2 * gemm_params * B + 4.0 * L * QW * (double)(C + 1) * B;
                const double roof = fmax(bytes / (copy_gbps * 1e9), flops / (gemm_tflops * 1e12));
                ms[k][bi][ci] = t * 1e3;
                frac[k][bi][ci] = t > 0 ? roof / t : 0;
            }
        eng_forward_destroy(fw);
    }
    printf("== bench_cuda --roofline: %s (dummy bf16), copy %.0f GB/s, cuBLAS bf16 8192^3 %.0f TFLOP/s ==\n",
           model_dir, copy_gbps, gemm_tflops);
    printf("%-6s %5s %6s %10s %10s %14s %10s\n", "KV", "batch", "ctx", "step ms", "tok/s", "roofline ms", "fraction");
    for (int k = 0; k < 2; k++)
        for (int bi = 0; bi < 2; bi++)
            for (int ci = 0; ci < 3; ci++) {
                if (ms[k][bi][ci] <= 0) {
                    printf("%-6s %5d %6d %10s (KV cache does not fit beside the weights)\n", kv_names[k], Bs[bi],
                           Cs[ci], "-");
                    continue;
                }
                printf("%-6s %5d %6d %10.2f %10.0f %14.2f %9.1f%%\n", kv_names[k], Bs[bi], Cs[ci], ms[k][bi][ci],
                       Bs[bi] / (ms[k][bi][ci] / 1e3), frac[k][bi][ci] * ms[k][bi][ci], 100 * frac[k][bi][ci]);
            }
    printf("JSON_ROOFLINE {\"copy_gbps\":%.1f,\"gemm_tflops\":%.1f,\"points\":[", copy_gbps, gemm_tflops);
    int first = 1;
    for (int k = 0; k < 2; k++)
        for (int bi = 0; bi < 2; bi++)
            for (int ci = 0; ci < 3; ci++)
                if (ms[k][bi][ci] > 0) {
                    printf("%s{\"kv\":\"%s\",\"batch\":%d,\"ctx\":%d,\"step_ms\":%.3f,\"fraction\":%.3f}",
                           first ? "" : ",", kv_names[k], Bs[bi], Cs[ci], ms[k][bi][ci], frac[k][bi][ci]);
                    first = 0;
                }
    printf("]}\n");
    free(logits);
    ops->shutdown(be);
    eng_model_destroy(model);
    return 0;
}

/* A forward of its own for one A/B block of rows, its f32 cache filled; NULL (said on
 * stderr: those rows stay 0) when it cannot be created. */
static eng_forward_t *ab_forward(eng_model_t *model, const eng_backend_ops_t *ops, eng_backend_t *be,
                                 const eng_forward_opts_t *fo, const char *what)
{
    eng_forward_t *fw = NULL;
    if (eng_forward_create(model, ops, be, fo, &fw) != PD_OK) {
        fprintf(stderr, "bench_cuda: forward create (%s) failed; no %s rows\n", what, what);
        return NULL;
    }
    fill_kv_f32(fw);
    return fw;
}

/* The batch-1 decode step (ctx cached, one new token) through fw's graphs: t[0] with full
 * logits, t[1] with device argmax. */
static void time_b1(eng_forward_t *fw, int ctx, int mbps, int vocab, float *logits, bool quick, double t[2])
{
    batch_t b;
    make_batch(&b, 1, ctx, 1, mbps, vocab);
    t[0] = time_forward_soft(fw, &b, logits, 3, quick ? 10 : 40);
    t[1] = time_forward_argmax(fw, &b, logits, 2, quick ? 10 : 40);
    free_batch(&b);
}

int main(int argc, char **argv)
{
    const char *model_dir = "configs/models/llama-3.1-8b";
    bool quick = false, attn_only_mode = false, attn_tc_mode = false, prefill_attn_mode = false, profile = false,
         roofline = false;
    const char *trace_dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = true;
        else if (strcmp(argv[i], "--attn-only") == 0)
            attn_only_mode = true;
        else if (strcmp(argv[i], "--attn-tc") == 0)
            attn_tc_mode = true;
        else if (strcmp(argv[i], "--profile") == 0)
            profile = true;
        else if (strcmp(argv[i], "--trace") == 0 && i + 1 < argc)
            trace_dir = argv[++i];
        else if (strcmp(argv[i], "--prefill-attn") == 0)
            prefill_attn_mode = true;
        else if (strcmp(argv[i], "--roofline") == 0)
            roofline = true;
        else
            model_dir = argv[i];
    }
    pd_log_set_level(PD_LOG_LEVEL_WARN);
    if (prefill_attn_mode)
        return prefill_attn_only(model_dir);
    if (roofline)
        return roofline_mode(model_dir);
    if (attn_only_mode || attn_tc_mode)
        return attn_only(attn_tc_mode);
    if (profile || trace_dir)
        return profile_mode(model_dir, trace_dir);

    /* ---- ceilings ---- */
    double copy_gbps = 0, gemm_sq = 0, gemm_pf = 0;
    DIE_IF(kcuda_bench_copy_gbps((size_t)2 << 30, 20, &copy_gbps) != PD_OK, "copy bandwidth failed");
    DIE_IF(kcuda_bench_gemm_tflops(8192, 8192, 8192, 10, &gemm_sq) != PD_OK, "gemm failed");
    DIE_IF(kcuda_bench_gemm_tflops(2048, 14336, 4096, 20, &gemm_pf) != PD_OK, "gemm failed");
    /* the decode GEMV alone at the model's shapes (N x K), M = 1 */
    static const int64_t gv_shape[5][2] = {{4096, 4096}, {1024, 4096}, {14336, 4096}, {4096, 14336}, {128256, 4096}};
    double gv[5] = {0};
    for (int i = 0; i < 5; i++)
        DIE_IF(kcuda_bench_gemv_gbps(1, gv_shape[i][0], gv_shape[i][1], 50, &gv[i]) != PD_OK, "gemv failed");
    /* the fused decode GEMVs (q|k|v and gate|up as one weight each), M = 1 */
    static const int64_t fgv_shape[2][2] = {{6144, 4096}, {28672, 4096}};
    double fgv[2] = {0};
    for (int i = 0; i < 2; i++)
        DIE_IF(kcuda_bench_gemv_gbps(1, fgv_shape[i][0], fgv_shape[i][1], 50, &fgv[i]) != PD_OK, "gemv failed");
    /* A/B: the per-layer decode GEMV shapes with weight loads that skip L1 */
    static const int64_t ngv_shape[4][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}};
    double ngv[4] = {0};
    kcuda_gemv_set_noalloc(1);
    for (int i = 0; i < 4; i++)
        if (kcuda_bench_gemv_gbps(1, ngv_shape[i][0], ngv_shape[i][1], 50, &ngv[i]) != PD_OK)
            ngv[i] = 0;
    kcuda_gemv_set_noalloc(-1);

    /* ---- device sampling alone: vocab 128256, rows of 1 / 64 / 256, greedy rows and
     * rows with temperature + top-k + top-p (the slowest: two 32-pass bisections) ---- */
    double samp_us[2][3] = {{0}};
    {
        const int64_t SV = 128256;
        const int rows[3] = {1, 64, 256};
        float *sx = NULL, *su = NULL;
        kcpu_sample_params_t *sp = NULL;
        int32_t *so = NULL;
        kcpu_sample_params_t hp[256];
        float hu[256];
        for (int i = 0; i < 256; i++)
            hu[i] = (float)(i + 1) / 258.0f;
        if (kcuda_malloc(sizeof(float) * 256 * SV, (void **)&sx) == PD_OK &&
            kcuda_malloc(sizeof(hp), (void **)&sp) == PD_OK && kcuda_malloc(sizeof(hu), (void **)&su) == PD_OK &&
            kcuda_malloc(256 * sizeof(int32_t), (void **)&so) == PD_OK &&
            kcuda_fill_random(sx, (size_t)256 * SV, KCPU_DTYPE_F32, 11, 8.0f, NULL) == PD_OK) {
            for (int mode = 0; mode < 2; mode++) {
                for (int i = 0; i < 256; i++)
                    hp[i] = mode == 0 ? (kcpu_sample_params_t){0.0f, 0, 1.0f, 0.0f}
                                      : (kcpu_sample_params_t){0.8f, 50, 0.9f, 0.0f};
                if (kcuda_memcpy_async(sp, hp, sizeof(hp), NULL) != PD_OK ||
                    kcuda_memcpy_async(su, hu, sizeof(hu), NULL) != PD_OK || kcuda_stream_sync(NULL) != PD_OK)
                    break;
                for (int r = 0; r < 3; r++) {
                    const int it = 20;
                    kcuda_sample_rows(sx, rows[r], SV, sp, su, so, NULL);
                    kcuda_stream_sync(NULL);
                    double t0 = now_s();
                    for (int i = 0; i < it; i++)
                        kcuda_sample_rows(sx, rows[r], SV, sp, su, so, NULL);
                    if (kcuda_stream_sync(NULL) == PD_OK)
                        samp_us[mode][r] = (now_s() - t0) / it * 1e6;
                }
            }
        } else {
            fprintf(stderr, "bench_cuda: no device sampling rows\n");
        }
        kcuda_free(sx), kcuda_free(sp), kcuda_free(su), kcuda_free(so);
    }

    /* ---- model ---- */
    double t0 = now_s();
    eng_model_t *model = load_dummy(model_dir);
    DIE_IF(model == NULL, "cannot load %s (dummy)", model_dir);
    const eng_model_config_t *c = eng_model_config(model);
    double load_s = now_s() - t0;

    const eng_backend_ops_t *ops = eng_backend_get("cuda");
    eng_backend_t *be = NULL;
    eng_backend_opts_t bo = {.device = 0};
    DIE_IF(ops == NULL || ops->init(&bo, &be) != PD_OK, "no cuda backend");
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_BF16);

    const int B_max = quick ? 64 : 256, ctx = 1024, prefill = 2048;
    const int mbps = (prefill > ctx ? prefill : ctx) / BS + 2;
    const int64_t need_dec = (int64_t)B_max * ((ctx + 1 + BS - 1) / BS), need_pf = prefill / BS + 1;
    eng_forward_opts_t fo = {.block_size = BS, .n_blocks = need_dec > need_pf ? need_dec : need_pf, .max_tokens = prefill,
                             .max_seqs = B_max, .max_blocks_per_seq = mbps};
    eng_forward_t *fw = NULL;
    t0 = now_s();
    DIE_IF(eng_forward_create(model, ops, be, &fo, &fw) != PD_OK, "forward create failed");
    double upload_s = now_s() - t0;
    fill_kv_f32(fw);
    const int64_t D = c->hidden, I = c->intermediate, QW = (int64_t)c->n_heads * c->head_dim,
                  KW = (int64_t)c->n_kv_heads * c->head_dim, V = c->vocab_size, L = c->n_layers;
    const double gemm_params = (double)L * (D * QW + 2 * D * KW + QW * D + 3 * D * I) + (double)V * D;
    const double weight_bytes = gemm_params * 2; /* bf16 */
    float *logits = malloc(sizeof(float) * (size_t)B_max * V);

    /* ---- decode steps ---- */
    batch_t b;
    double dec[3] = {0, 0, 0};
    int Bs[3] = {1, 64, 256};
    for (int i = 0; i < 3; i++) {
        if (Bs[i] > B_max)
            continue;
        make_batch(&b, Bs[i], ctx, 1, mbps, (int)V);
        dec[i] = time_forward(fw, &b, logits, 3, quick ? 5 : 20);
        free_batch(&b);
    }
    const double floor_dec = weight_bytes / (copy_gbps * 1e9);

    /* ---- prefill of 2048 tokens (one sequence) ---- */
    make_batch(&b, 1, 0, prefill, mbps, (int)V);
    double pf = time_forward(fw, &b, logits, 1, quick ? 2 : 5);
    free_batch(&b);
    const double floor_pf = prefill_flops(c, prefill) / (gemm_pf * 1e12);
    eng_forward_destroy(fw);

    /* ---- the same decode steps replayed from CUDA graphs ---- */
    double decg[3] = {0, 0, 0}, decga[3] = {0, 0, 0}, decgs[3] = {0, 0, 0}; /* full logits / argmax / sampled */
    eng_forward_graph_stats_t gst = {0};
    fo.graph_max_bs = B_max;
    fo.graph_max_ctx = 8192;
    fw = ab_forward(model, ops, be, &fo, "graph");
    for (int i = 0; fw && i < 3; i++) {
        if (Bs[i] > B_max)
            continue;
        make_batch(&b, Bs[i], ctx, 1, mbps, (int)V);
        decg[i] = time_forward_soft(fw, &b, logits, 3, quick ? 5 : 20);
        decga[i] = time_forward_argmax(fw, &b, logits, 2, quick ? 5 : 20);
        decgs[i] = time_forward_sampled(fw, &b, logits, 2, quick ? 5 : 20, true);
        free_batch(&b);
    }
    if (fw)
        eng_forward_graph_stats(fw, &gst);
    int n_fused_qkv = 0, n_fused_gu = 0;
    if (fw)
        eng_forward_fused_layers(fw, &n_fused_qkv, &n_fused_gu);
    eng_forward_destroy(fw);

    /* ---- A/B: batch 1 with the GEMVs launched programmatically dependent (PDL): a
     * forward of its own, so its graphs record the PDL launches ---- */
    double decp[2] = {0, 0}; /* graph step, graph step with device argmax */
    kcuda_gemv_set_pdl(1);
    fw = ab_forward(model, ops, be, &fo, "pdl");
    if (fw != NULL) {
        time_b1(fw, ctx, mbps, (int)V, logits, quick, decp);
        eng_forward_graph_stats_t pst;
        eng_forward_graph_stats(fw, &pst);
        if (pst.n_failed > 0)
            fprintf(stderr, "bench_cuda: %d graph captures failed with pdl\n", pst.n_failed);
    }
    eng_forward_destroy(fw);
    /* PDL and L1 no_allocate weight loads are both the defaults now: the forward above is
     * that configuration (the row is kept for the JSON) */
    double decpn = decp[1];
    kcuda_gemv_set_pdl(-1);
    /* ---- A/B: batch 1 with the fused decode layer (opt-in: PD_FORWARD_DECODE_FUSE=1;
     * the forward before this one ran the default, unfused layer) ---- */
    double dfon[2] = {0, 0};
    setenv("PD_FORWARD_DECODE_FUSE", "1", 1);
    fw = ab_forward(model, ops, be, &fo, "decode fusion");
    if (fw != NULL)
        time_b1(fw, ctx, mbps, (int)V, logits, quick, dfon);
    unsetenv("PD_FORWARD_DECODE_FUSE");
    eng_forward_destroy(fw);
    /* ---- A/B: batch 1 (the default layer) with 2 warps a column on the narrow GEMVs (q|k|v,
     * o, down): kcuda_gemv_set_ksplit_narrow(2), a forward of its own (graphs record it) ---- */
    double ks2[2] = {0, 0};
    kcuda_gemv_set_ksplit_narrow(2);
    fw = ab_forward(model, ops, be, &fo, "narrow 2 warps");
    if (fw != NULL)
        time_b1(fw, ctx, mbps, (int)V, logits, quick, ks2);
    eng_forward_destroy(fw);
    kcuda_gemv_set_ksplit_narrow(-1);
    double fgv_ex[FG_N][2] = {{0}};
    bench_fused_gemv(fgv_ex);

    /* ---- A/B: the graph decode steps with separate q/k/v and gate/up weights ---- */
    double decnf[3] = {0, 0, 0};
    setenv("PD_FORWARD_NO_FUSE", "1", 1);
    fw = ab_forward(model, ops, be, &fo, "unfused");
    unsetenv("PD_FORWARD_NO_FUSE");
    for (int i = 0; fw && i < 2; i++) {
        make_batch(&b, Bs[i], ctx, 1, mbps, (int)V);
        decnf[i] = time_forward_soft(fw, &b, logits, 3, quick ? 5 : 20);
        free_batch(&b);
    }
    eng_forward_destroy(fw);

    /* ---- the graph decode steps again with an fp8 (e4m3) KV cache ---- */
    double decf8[3] = {0, 0, 0};
    fo.kv_dtype = ENG_KV_FP8_E4M3;
    fw = NULL;
    if (eng_forward_create(model, ops, be, &fo, &fw) != PD_OK) {
        fprintf(stderr, "bench_cuda: forward create (fp8 KV) failed; no fp8 rows\n");
        fw = NULL;
    } else {
        /* every byte 0x30: e4m3 0.5 (no NaN patterns; scales are 1) */
        DIE_IF(ops->memset(be, eng_forward_kv_base(fw), 0x30,
                           eng_forward_kv_block_bytes(fw) * (size_t)eng_forward_kv_n_blocks(fw)) != PD_OK,
               "fill failed");
    }
    for (int i = 0; fw && i < 3; i++) {
        if (Bs[i] > B_max)
            continue;
        make_batch(&b, Bs[i], ctx, 1, mbps, (int)V);
        decf8[i] = time_forward_soft(fw, &b, logits, 3, quick ? 5 : 20);
        free_batch(&b);
    }
    eng_forward_destroy(fw);
    size_t priv = eng_backend_cuda_private_bytes(be);

    /* ---- fp8 weights (--quantization fp8): the graph decode steps with device argmax
     * and the 2048-token prefill on a backend instance of their own (bf16 + fp8 weights,
     * the lm_head kept bf16), f32 KV cache like the bf16 rows above; and the cuBLASLt
     * fp8 GEMM rate at the prefill shape ---- */
    double f8w_dec[3] = {0, 0, 0}, f8w_pf = 0, gemm8_pf = 0, gv8[5] = {0};
    int f8w_failed = 0;
    for (int i = 0; i < 5; i++)
        if (kcuda_bench_fp8_gemv_gbps(1, gv_shape[i][0], gv_shape[i][1], 50, &gv8[i]) != PD_OK)
            gv8[i] = 0;
    if (kcuda_bench_fp8_gemm_tflops(2048, 14336, 4096, 20, &gemm8_pf) != PD_OK)
        fprintf(stderr, "bench_cuda: fp8 GEMM rate failed\n");
    {
        eng_backend_t *be8 = NULL;
        fo.kv_dtype = ENG_KV_AUTO;
        if (ops->init(&bo, &be8) != PD_OK) {
            fprintf(stderr, "bench_cuda: second backend instance failed; no fp8-weight rows\n");
        } else {
            eng_backend_cuda_set_weight_dtype(be8, KCPU_DTYPE_BF16);
            fw = eng_backend_cuda_set_fp8_weights(be8, true) == PD_OK ? ab_forward(model, ops, be8, &fo, "fp8 weights")
                                                                      : NULL;
            /* the prefill first: every weight's conversion happens in it (untimed warm-up) */
            if (fw != NULL) {
                make_batch(&b, 1, 0, prefill, mbps, (int)V);
                f8w_pf = time_forward(fw, &b, logits, 1, quick ? 2 : 5);
                free_batch(&b);
            }
            for (int i = 0; fw && i < 3; i++) {
                if (Bs[i] > B_max)
                    continue;
                make_batch(&b, Bs[i], ctx, 1, mbps, (int)V);
                f8w_dec[i] = time_forward_argmax(fw, &b, logits, 2, quick ? 5 : 20);
                free_batch(&b);
            }
            if (fw) {
                eng_forward_graph_stats_t fst;
                eng_forward_graph_stats(fw, &fst);
                f8w_failed = fst.n_failed;
            }
            eng_forward_destroy(fw);
            ops->shutdown(be8);
        }
    }
    /* fp8 GEMM weights, bf16 lm_head: the b1 step's weight floor */
    const double weight_bytes_f8 = (gemm_params - (double)V * D) + (double)V * D * 2;
    const double floor_dec_f8 = weight_bytes_f8 / (copy_gbps * 1e9);

    /* ---- paged decode attention alone: batch 64, ctx 128..4096, new and old kernels ---- */
    static const att_variant_t avar[2] = {{"new", KCUDA_ATTN_DECODE_NEW, 0, -1, -1, -1, -1, -1, 0, 0},
                                          {"old", KCUDA_ATTN_DECODE_OLD, 0, -1, -1, -1, -1, -1, 0, 0}};
    static double aus[ATT_MAXV][3][ATT_NCTX], agbps[ATT_MAXV][3][ATT_NCTX];
    int sm_count = 0;
    DIE_IF(kcuda_device_open(0, NULL, 0, &sm_count) != PD_OK, "device");
    bench_attention(c->n_heads, c->n_kv_heads, c->head_dim, 64, avar, 2, sm_count, aus, agbps, NULL, 0);
    /* the rows and JSON keys of earlier runs: the default (new) kernel at ctx 1k, 2k, 4k */
    const int actx[3] = {1024, 2048, 4096};
    double att_us[3][3], att_gbps[3][3];
    static const char *const cache_names[3] = {"f32", "f16", "fp8"};
    for (int ct = 0; ct < 3; ct++)
        for (int ci = 0; ci < 3; ci++) {
            att_us[ct][ci] = aus[0][ct][ci + 3];
            att_gbps[ct][ci] = agbps[0][ct][ci + 3];
        }

    /* ---- report ---- */
    printf("\n== bench_cuda: %s (dummy bf16 weights, %.2f GB of GEMM weights), f32 activations, f32 KV cache ==\n",
           c->name[0] ? c->name : model_dir, weight_bytes / 1e9);
    printf("load %.1f s, upload %.1f s, backend private memory %.2f GB\n", load_s, upload_s, priv / 1e9);
    printf("%-44s %12s %14s %8s\n", "what", "measured", "ceiling", "ratio");
    printf("%-44s %9.0f GB/s %14s %8s\n", "d2d copy bandwidth (read+write)", copy_gbps, "-", "-");
    printf("%-44s %7.0f TFLOP/s %14s %8s\n", "cuBLAS bf16 GEMM 8192^3", gemm_sq, "-", "-");
    printf("%-44s %7.0f TFLOP/s %14s %8s\n", "cuBLAS bf16 GEMM 2048x14336x4096", gemm_pf, "-", "-");
    for (int i = 0; i < 5; i++) {
        char what[80];
        snprintf(what, sizeof(what), "GEMV bf16 M=1 N=%lld K=%lld", (long long)gv_shape[i][0], (long long)gv_shape[i][1]);
        printf("%-44s %9.0f GB/s %9.0f GB/s %7.1f%%\n", what, gv[i], copy_gbps, 100 * gv[i] / copy_gbps);
    }
    for (int i = 0; i < 2; i++) {
        char what[80];
        snprintf(what, sizeof(what), "GEMV bf16 M=1 N=%lld K=%lld (fused %s)", (long long)fgv_shape[i][0],
                 (long long)fgv_shape[i][1], i == 0 ? "qkv" : "gate|up");
        printf("%-44s %9.0f GB/s %9.0f GB/s %7.1f%%\n", what, fgv[i], copy_gbps, 100 * fgv[i] / copy_gbps);
    }
    for (int i = 0; i < 4; i++) {
        char what[80];
        snprintf(what, sizeof(what), "GEMV bf16 M=1 N=%lld K=%lld, L1 no_allocate", (long long)ngv_shape[i][0],
                 (long long)ngv_shape[i][1]);
        printf("%-44s %9.0f GB/s %9.0f GB/s %7.1f%%\n", what, ngv[i], copy_gbps, 100 * ngv[i] / copy_gbps);
    }
    for (int mode = 0; mode < 2; mode++)
        printf("%-44s %7.0f us %7.0f us %7.0f us  (rows 1 / 64 / 256)\n",
               mode == 0 ? "device sampling V=128256, greedy rows" : "device sampling, T 0.8 top-k 50 top-p 0.9",
               samp_us[mode][0], samp_us[mode][1], samp_us[mode][2]);
    printf("%-44s %9.2f ms %11.2f ms %7.1f%%\n", "decode step batch 1 ctx 1024 (floor: weights)", dec[0] * 1e3,
           floor_dec * 1e3, 100 * floor_dec / dec[0]);
    if (dec[1] > 0)
        printf("%-44s %9.2f ms %8.0f tok/s\n", "decode step batch 64 ctx 1024", dec[1] * 1e3, 64 / dec[1]);
    if (dec[2] > 0)
        printf("%-44s %9.2f ms %8.0f tok/s\n", "decode step batch 256 ctx 1024", dec[2] * 1e3, 256 / dec[2]);
    for (int i = 0; i < 3; i++) {
        char what[80];
        if (decg[i] <= 0)
            continue;
        snprintf(what, sizeof(what), "decode step batch %d ctx 1024, CUDA graph", Bs[i]);
        printf("%-44s %9.2f ms %11.2f ms %7.2fx\n", what, decg[i] * 1e3, dec[i] * 1e3, dec[i] / decg[i]);
    }
    printf("(graph rows: ceiling column = the eager step, ratio = speed-up; %d graphs captured, %d failed, "
           "%llu replays)\n",
           gst.n_captured, gst.n_failed, (unsigned long long)gst.graph_steps);
    for (int i = 0; i < 3; i++) {
        char what[80];
        if (i == 0 && decg[0] > 0)
            printf("%-44s %9.2f ms %11.2f ms %7.1f%%\n", "decode step batch 1, graph (floor: weights)",
                   decg[0] * 1e3, floor_dec * 1e3, 100 * floor_dec / decg[0]);
        if (decnf[i] <= 0)
            continue;
        snprintf(what, sizeof(what), "decode step batch %d, graph, UNFUSED q/k/v g/u", Bs[i]);
        printf("%-44s %9.2f ms %11.2f ms %7.2fx\n", what, decnf[i] * 1e3, decg[i] * 1e3,
               decg[i] > 0 ? decnf[i] / decg[i] : 0.0);
    }
    for (int i = 0; i < 3; i++) {
        char what[80];
        if (decga[i] <= 0)
            continue;
        snprintf(what, sizeof(what), "decode step batch %d, graph, device argmax", Bs[i]);
        if (i == 0)
            printf("%-44s %9.2f ms %11.2f ms %7.1f%%\n", what, decga[i] * 1e3, floor_dec * 1e3,
                   100 * floor_dec / decga[i]);
        else
            printf("%-44s %9.2f ms %8.0f tok/s (%.2fx the full-logits graph step)\n", what, decga[i] * 1e3,
                   Bs[i] / decga[i], decg[i] / decga[i]);
    }
    if (decp[0] > 0) {
        printf("%-44s %9.2f ms %11.2f ms %7.1f%%\n", "decode step batch 1, graph, GEMV PDL", decp[0] * 1e3,
               floor_dec * 1e3, 100 * floor_dec / decp[0]);
        printf("%-44s %9.2f ms %11.2f ms %7.1f%%\n", "decode step batch 1, graph, GEMV PDL, dev argmax",
               decp[1] * 1e3, floor_dec * 1e3, 100 * floor_dec / decp[1]);
    }
    if (decpn > 0)
        printf("%-44s %9.2f ms %11.2f ms %7.1f%%\n", "decode b1, graph, PDL+no_allocate, dev argmax", decpn * 1e3,
               floor_dec * 1e3, 100 * floor_dec / decpn);
    print_decode_fuse(dfon, decp, floor_dec);
    printf("%-44s %9.2f ms %11.2f ms %7.1f%%\n", "decode b1 graph, narrow GEMVs 2 w/col", ks2[0] * 1e3,
           floor_dec * 1e3, ks2[0] > 0 ? 100 * floor_dec / ks2[0] : 0.0);
    printf("%-44s %9.2f ms %11.2f ms %7.1f%%\n", "decode b1 graph, narrow 2 w/col, argmax", ks2[1] * 1e3,
           floor_dec * 1e3, ks2[1] > 0 ? 100 * floor_dec / ks2[1] : 0.0);
    print_fused_gemv(fgv_ex, copy_gbps);
    for (int i = 0; i < 3; i++) {
        char what[80];
        if (decgs[i] <= 0)
            continue;
        snprintf(what, sizeof(what), "decode step batch %d, graph, device sampling", Bs[i]);
        printf("%-44s %9.2f ms %8.0f tok/s (%.2fx the full-logits graph step)\n", what, decgs[i] * 1e3,
               Bs[i] / decgs[i], decg[i] / decgs[i]);
    }
    printf("(unfused rows: A/B with PD_FORWARD_NO_FUSE=1; ceiling column = the fused graph step (%d/%d layers fused "
           "qkv/gate_up), ratio = fused speed-up)\n",
           n_fused_qkv, n_fused_gu);
    for (int i = 0; i < 3; i++) {
        char what[80];
        if (decf8[i] <= 0)
            continue;
        snprintf(what, sizeof(what), "decode step batch %d ctx 1024, graph, fp8 KV", Bs[i]);
        printf("%-44s %9.2f ms %11.2f ms %7.2fx\n", what, decf8[i] * 1e3, decg[i] * 1e3,
               decg[i] > 0 ? decg[i] / decf8[i] : 0.0);
    }
    printf("(fp8 rows: ceiling column = the graph step with the f32 KV cache, ratio = speed-up)\n");
    for (int i = 0; i < 3; i++) {
        char what[80];
        if (f8w_dec[i] <= 0)
            continue;
        snprintf(what, sizeof(what), "decode b%d graph argmax, FP8 WEIGHTS", Bs[i]);
        printf("%-44s %9.2f ms %11.2f ms %7.2fx  %8.0f tok/s\n", what, f8w_dec[i] * 1e3, decga[i] * 1e3,
               decga[i] > 0 ? decga[i] / f8w_dec[i] : 0.0, Bs[i] / f8w_dec[i]);
        if (i == 0)
            printf("%-44s %9.2f ms %11.2f ms %7.1f%%\n", "decode b1 graph argmax, FP8 W (floor: weights)",
                   f8w_dec[0] * 1e3, floor_dec_f8 * 1e3, 100 * floor_dec_f8 / f8w_dec[0]);
    }
    if (f8w_pf > 0)
        printf("%-44s %9.1f ms %11.1f ms %7.2fx\n", "prefill 2048 tokens, FP8 WEIGHTS", f8w_pf * 1e3, pf * 1e3,
               pf / f8w_pf);
    for (int i = 0; i < 5; i++) {
        char what[80];
        snprintf(what, sizeof(what), "GEMV FP8 M=1 N=%lld K=%lld (%.0f us)", (long long)gv_shape[i][0],
                 (long long)gv_shape[i][1], gv8[i] > 0 ? gv_shape[i][0] * gv_shape[i][1] / (gv8[i] * 1e3) : 0.0);
        printf("%-44s %9.0f GB/s %9.0f GB/s %7.1f%%  (bf16 %.0f GB/s)\n", what, gv8[i], copy_gbps,
               100 * gv8[i] / copy_gbps, gv[i]);
    }
    printf("%-44s %7.0f TFLOP/s %7.0f TFLOP/s %6.2fx\n", "cuBLASLt fp8 GEMM 2048x14336x4096", gemm8_pf, gemm_pf,
           gemm_pf > 0 ? gemm8_pf / gemm_pf : 0.0);
    printf("(FP8 WEIGHTS rows: ceiling column = the same bf16-weight row (graph argmax step, eager prefill, bf16 "
           "GEMM), ratio = speed-up; %.2f GB of weights, %d graph captures failed)\n",
           weight_bytes_f8 / 1e9, f8w_failed);
    printf("%-44s %9.1f ms %11.1f ms %7.1f%%\n", "prefill 2048 tokens (floor: FLOPs/GEMM rate)", pf * 1e3,
           floor_pf * 1e3, 100 * floor_pf / pf);
    for (int ct = 0; ct < 3; ct++)
        for (int ci = 0; ci < 3; ci++) {
            char what[80];
            snprintf(what, sizeof(what), "paged decode attn b64 ctx %d %s (%.0f us)", actx[ci], cache_names[ct],
                     att_us[ct][ci]);
            printf("%-44s %9.0f GB/s %9.0f GB/s %7.1f%%\n", what, att_gbps[ct][ci], copy_gbps,
                   100 * att_gbps[ct][ci] / copy_gbps);
        }
    print_attention_short(64, avar, copy_gbps, agbps);
    printf("(GEMV / attention GB/s = weight / K+V bytes read per second; ceiling = the copy's bytes moved per second)\n");
    printf("attention time per step vs the f32 cache: f16 %.2fx, fp8 %.2fx at ctx 4096 (bytes 1/2, 1/4)\n",
           att_us[1][2] > 0 ? att_us[0][2] / att_us[1][2] : 0.0, att_us[2][2] > 0 ? att_us[0][2] / att_us[2][2] : 0.0);
    printf("JSON {\"copy_gbps\":%.1f,\"gemm_bf16_8192_tflops\":%.1f,\"gemm_bf16_prefill_tflops\":%.1f,"
           "\"weight_bytes\":%.0f,\"decode_b1_ms\":%.3f,\"decode_b1_floor_ms\":%.3f,\"decode_b64_ms\":%.3f,"
           "\"decode_b256_ms\":%.3f,\"graph_decode_ms\":[%.3f,%.3f,%.3f],\"graph_fp8kv_decode_ms\":[%.3f,%.3f,%.3f],\"graphs_failed\":%d,\"prefill2048_ms\":%.2f,\"prefill2048_floor_ms\":%.2f,"
           "\"attn_b64_f32_gbps\":[%.0f,%.0f,%.0f],\"attn_b64_f16_gbps\":[%.0f,%.0f,%.0f],\"attn_b64_fp8_gbps\":[%.0f,%.0f,%.0f],\"gemv_m1_gbps\":[%.0f,%.0f,%.0f,%.0f,%.0f],",
           copy_gbps, gemm_sq, gemm_pf, weight_bytes, dec[0] * 1e3, floor_dec * 1e3, dec[1] * 1e3, dec[2] * 1e3,
           decg[0] * 1e3, decg[1] * 1e3, decg[2] * 1e3, decf8[0] * 1e3, decf8[1] * 1e3, decf8[2] * 1e3, gst.n_failed, pf * 1e3, floor_pf * 1e3, att_gbps[0][0], att_gbps[0][1], att_gbps[0][2], att_gbps[1][0],
           att_gbps[1][1], att_gbps[1][2], att_gbps[2][0], att_gbps[2][1], att_gbps[2][2], gv[0], gv[1], gv[2], gv[3], gv[4]);
    json_attention(avar, 2, agbps);
    printf("}\n");
    printf("JSON_STEP {\"gemv_fused_m1_gbps\":[%.0f,%.0f],\"graph_decode_unfused_ms\":[%.3f,%.3f],"
           "\"graph_decode_argmax_ms\":[%.3f,%.3f,%.3f],\"graph_decode_b1_pdl_ms\":[%.3f,%.3f],"
           "\"graph_decode_b1_pdl_noalloc_argmax_ms\":%.3f,\"gemv_noalloc_m1_gbps\":[%.0f,%.0f,%.0f,%.0f],"
           "\"sample_us\":[[%.0f,%.0f,%.0f],[%.0f,%.0f,%.0f]],\"graph_decode_sampled_ms\":[%.3f,%.3f,%.3f],"
           "\"fused_layers\":[%d,%d]}\n",
           fgv[0], fgv[1], decnf[0] * 1e3, decnf[1] * 1e3, decga[0] * 1e3, decga[1] * 1e3, decga[2] * 1e3,
           decp[0] * 1e3, decp[1] * 1e3, decpn * 1e3, ngv[0], ngv[1], ngv[2], ngv[3], samp_us[0][0], samp_us[0][1], samp_us[0][2], samp_us[1][0],
           samp_us[1][1], samp_us[1][2], decgs[0] * 1e3, decgs[1] * 1e3, decgs[2] * 1e3, n_fused_qkv, n_fused_gu);
    printf("JSON_FUSE {\"graph_decode_b1_fused_ms\":[%.3f,%.3f],\"graph_decode_b1_nofuse_ms\":[%.3f,%.3f],"
           "\"graph_decode_b1_fused_ks2_ms\":[%.3f,%.3f],\"gemv_ex_m1_gbps\":[",
           dfon[0] * 1e3, dfon[1] * 1e3, decp[0] * 1e3, decp[1] * 1e3, ks2[0] * 1e3, ks2[1] * 1e3);
    for (int i = 0; i < FG_N; i++)
        printf("%s[%.0f,%.0f]", i ? "," : "", fgv_ex[i][1], fgv_ex[i][0]);
    printf("],\"copy_gbps\":%.1f}\n", copy_gbps);
    printf("JSON_FP8W {\"graph_decode_argmax_ms\":[%.3f,%.3f,%.3f],\"bf16_graph_decode_argmax_ms\":[%.3f,%.3f,%.3f],"
           "\"decode_b1_floor_ms\":%.3f,\"bf16_decode_b1_floor_ms\":%.3f,\"prefill2048_ms\":%.2f,"
           "\"bf16_prefill2048_ms\":%.2f,\"gemm_fp8_prefill_tflops\":%.1f,\"gemm_bf16_prefill_tflops\":%.1f,"
           "\"weight_bytes\":%.0f,\"graphs_failed\":%d,\"gemv_fp8_m1_gbps\":[%.0f,%.0f,%.0f,%.0f,%.0f]}\n",
           f8w_dec[0] * 1e3, f8w_dec[1] * 1e3, f8w_dec[2] * 1e3, decga[0] * 1e3, decga[1] * 1e3, decga[2] * 1e3,
           floor_dec_f8 * 1e3, floor_dec * 1e3, f8w_pf * 1e3, pf * 1e3, gemm8_pf, gemm_pf, weight_bytes_f8, f8w_failed,
           gv8[0], gv8[1], gv8[2], gv8[3], gv8[4]);
    free(logits);
    ops->shutdown(be);
    eng_model_destroy(model);
    return 0;
}
