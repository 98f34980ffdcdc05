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
 *   prefill of 2048 tokens vs the compute floor (FLOPs / GEMM rate);
 *   paged decode attention alone, batch 64, ctx 1k..4k, f32, f16 and fp8 (e4m3, scales
 *             1) caches, vs copy bandwidth (bytes of K and V read), and the time per
 *             step beside the f32 cache's.
 * Prints a table and two JSON lines (prefixed "JSON " and "JSON_STEP ").  Usage:
 *   bench_cuda [model_dir (default configs/models/llama-3.1-8b)] [--quick]
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

int main(int argc, char **argv)
{
    const char *model_dir = "configs/models/llama-3.1-8b";
    bool quick = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = true;
        else
            model_dir = argv[i];
    }
    pd_log_set_level(PD_LOG_LEVEL_WARN);

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
    eng_load_opts_t lo;
    eng_model_t *model = NULL;
    eng_load_opts_init(&lo);
    lo.model = model_dir;
    lo.load_format = "dummy";
    lo.dtype = "bfloat16";
    lo.max_model_len = 8192;
    double t0 = now_s();
    DIE_IF(eng_model_load(&lo, &model) != PD_OK, "cannot load %s (dummy)", model_dir);
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
    /* random K/V everywhere (never time on zeros) */
    {
        size_t n = eng_forward_kv_block_bytes(fw) / sizeof(float) * (size_t)eng_forward_kv_n_blocks(fw);
        DIE_IF(kcuda_fill_random(eng_forward_kv_base(fw), n, KCPU_DTYPE_F32, 7, 1.0f, NULL) != PD_OK, "fill failed");
        DIE_IF(kcuda_stream_sync(NULL) != PD_OK, "fill failed"); /* the fill ran on the default stream */
    }
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
    const double attn_flops = (double)L * 4.0 * c->n_heads * c->head_dim * ((double)prefill * (prefill + 1) / 2);
    const double pf_flops = 2.0 * gemm_params * prefill + attn_flops;
    const double floor_pf = pf_flops / (gemm_pf * 1e12);
    eng_forward_destroy(fw);

    /* ---- the same decode steps replayed from CUDA graphs ---- */
    double decg[3] = {0, 0, 0}, decga[3] = {0, 0, 0}, decgs[3] = {0, 0, 0}; /* full logits / argmax / sampled */
    eng_forward_graph_stats_t gst = {0};
    fo.graph_max_bs = B_max;
    fo.graph_max_ctx = 8192;
    fw = NULL;
    if (eng_forward_create(model, ops, be, &fo, &fw) != PD_OK) {
        fprintf(stderr, "bench_cuda: forward create (graphs) failed; no graph rows\n");
        fw = NULL;
    } else {
        size_t n = eng_forward_kv_block_bytes(fw) / sizeof(float) * (size_t)eng_forward_kv_n_blocks(fw);
        DIE_IF(kcuda_fill_random(eng_forward_kv_base(fw), n, KCPU_DTYPE_F32, 7, 1.0f, NULL) != PD_OK, "fill failed");
        DIE_IF(kcuda_stream_sync(NULL) != PD_OK, "fill failed");
    }
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
    fw = NULL;
    if (eng_forward_create(model, ops, be, &fo, &fw) != PD_OK) {
        fprintf(stderr, "bench_cuda: forward create (pdl) failed; no pdl rows\n");
        fw = NULL;
    } else {
        size_t n = eng_forward_kv_block_bytes(fw) / sizeof(float) * (size_t)eng_forward_kv_n_blocks(fw);
        DIE_IF(kcuda_fill_random(eng_forward_kv_base(fw), n, KCPU_DTYPE_F32, 7, 1.0f, NULL) != PD_OK, "fill failed");
        DIE_IF(kcuda_stream_sync(NULL) != PD_OK, "fill failed");
        make_batch(&b, 1, ctx, 1, mbps, (int)V);
        decp[0] = time_forward_soft(fw, &b, logits, 3, quick ? 10 : 40);
        decp[1] = time_forward_argmax(fw, &b, logits, 2, quick ? 10 : 40);
        free_batch(&b);
        eng_forward_graph_stats_t pst;
        eng_forward_graph_stats(fw, &pst);
        if (pst.n_failed > 0)
            fprintf(stderr, "bench_cuda: %d graph captures failed with pdl\n", pst.n_failed);
    }
    eng_forward_destroy(fw);
    /* and with both PDL and L1 no_allocate weight loads */
    double decpn = 0;
    kcuda_gemv_set_noalloc(1);
    fw = NULL;
    if (eng_forward_create(model, ops, be, &fo, &fw) == PD_OK) {
        size_t n = eng_forward_kv_block_bytes(fw) / sizeof(float) * (size_t)eng_forward_kv_n_blocks(fw);
        DIE_IF(kcuda_fill_random(eng_forward_kv_base(fw), n, KCPU_DTYPE_F32, 7, 1.0f, NULL) != PD_OK, "fill failed");
        DIE_IF(kcuda_stream_sync(NULL) != PD_OK, "fill failed");
        make_batch(&b, 1, ctx, 1, mbps, (int)V);
        decpn = time_forward_argmax(fw, &b, logits, 2, quick ? 10 : 40);
        free_batch(&b);
    } else {
        fw = NULL;
    }
    eng_forward_destroy(fw);
    kcuda_gemv_set_noalloc(-1);
    kcuda_gemv_set_pdl(-1);

    /* ---- A/B: the graph decode steps with separate q/k/v and gate/up weights ---- */
    double decnf[3] = {0, 0, 0};
    setenv("PD_FORWARD_NO_FUSE", "1", 1);
    fw = NULL;
    if (eng_forward_create(model, ops, be, &fo, &fw) != PD_OK) {
        fprintf(stderr, "bench_cuda: forward create (unfused) failed; no unfused rows\n");
        fw = NULL;
    } else {
        size_t n = eng_forward_kv_block_bytes(fw) / sizeof(float) * (size_t)eng_forward_kv_n_blocks(fw);
        DIE_IF(kcuda_fill_random(eng_forward_kv_base(fw), n, KCPU_DTYPE_F32, 7, 1.0f, NULL) != PD_OK, "fill failed");
        DIE_IF(kcuda_stream_sync(NULL) != PD_OK, "fill failed");
    }
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

    /* ---- paged decode attention alone: batch 64, ctx 1k..4k ---- */
    const int AB = 64, actx[3] = {1024, 2048, 4096};
    double att_us[3][3], att_gbps[3][3];
    static const char *const cache_names[3] = {"f32", "f16", "fp8"};
    DIE_IF(eng_backend_cuda_set_kv_scales(be, 1, NULL, NULL, false) != PD_OK, "fp8 scales");
    for (int ct = 0; ct < 3; ct++) {
        kcpu_kv_layout_t lay;
        const int amb = 4096 / BS + 1;
        static const eng_cuda_kv_t kinds[3] = {ENG_CUDA_KV_F32, ENG_CUDA_KV_F16, ENG_CUDA_KV_FP8_E4M3};
        DIE_IF(eng_backend_cuda_kv_layout_init(&lay, kinds[ct], 1, BS, c->n_kv_heads, c->head_dim,
                                               (int64_t)AB * amb) != PD_OK,
               "layout");
        void *cache, *dq, *dout, *dseq, *dpos, *dbt, *dctx;
        size_t cb = lay.block_bytes * (size_t)AB * amb;
        DIE_IF(ops->buf_alloc(be, cb, &cache) != PD_OK, "alloc");
        /* fp8: random f16 bit patterns read as bytes (timing only; any NaN costs the same) */
        if (ct == 0)
            kcuda_fill_random(cache, cb / 4, KCPU_DTYPE_F32, 11, 1.0f, NULL);
        else
            kcuda_fill_random(cache, cb / 2, KCPU_DTYPE_F16, 11, 1.0f, NULL);
        DIE_IF(ops->buf_alloc(be, sizeof(float) * AB * QW, &dq) != PD_OK, "alloc");
        DIE_IF(ops->buf_alloc(be, sizeof(float) * AB * QW, &dout) != PD_OK, "alloc");
        kcuda_fill_random(dq, (size_t)AB * QW, KCPU_DTYPE_F32, 3, 1.0f, NULL);
        DIE_IF(kcuda_stream_sync(NULL) != PD_OK, "fill failed");
        int32_t *seq = malloc(sizeof(int32_t) * AB), *pos = malloc(sizeof(int32_t) * AB),
                *bt = malloc(sizeof(int32_t) * AB * amb), *cl = malloc(sizeof(int32_t) * AB);
        for (int s = 0; s < AB; s++) {
            seq[s] = s;
            for (int i = 0; i < amb; i++)
                bt[s * amb + i] = s * amb + i;
        }
        ops->buf_alloc(be, sizeof(int32_t) * AB, &dseq);
        ops->buf_alloc(be, sizeof(int32_t) * AB, &dpos);
        ops->buf_alloc(be, sizeof(int32_t) * AB * amb, &dbt);
        ops->buf_alloc(be, sizeof(int32_t) * AB, &dctx);
        ops->memcpy_h2d(be, dseq, seq, sizeof(int32_t) * AB);
        ops->memcpy_h2d(be, dbt, bt, sizeof(int32_t) * AB * amb);
        for (int ci = 0; ci < 3; ci++) {
            for (int s = 0; s < AB; s++) {
                pos[s] = actx[ci] - 1;
                cl[s] = actx[ci];
            }
            ops->memcpy_h2d(be, dpos, pos, sizeof(int32_t) * AB);
            ops->memcpy_h2d(be, dctx, cl, sizeof(int32_t) * AB);
            kcpu_attn_params_t p = {.n_tokens = AB, .q = dq, .q_stride = QW, .out = dout, .out_stride = QW,
                                    .tok_seq = dseq, .tok_pos = dpos, .n_seqs = AB, .block_tables = dbt,
                                    .max_blocks_per_seq = amb, .context_lens = dctx, .n_heads = c->n_heads,
                                    .n_kv_heads = c->n_kv_heads, .head_dim = c->head_dim,
                                    .scale = 1.0f / sqrtf((float)c->head_dim), .causal = true, .layer = 0,
                                    .cache_base = cache, .layout = &lay};
            bool ok = true;
            for (int w = 0; w < 3; w++)
                ok &= ops->paged_attention(be, &p) == PD_OK;
            ok &= ops->synchronize(be) == PD_OK;
            if (!ok && ct == 2) { /* the fp8 rows are optional: keep the rest of the table */
                fprintf(stderr, "bench_cuda: fp8 attention failed; no fp8 attention rows\n");
                att_us[ct][ci] = att_gbps[ct][ci] = 0;
                continue;
            }
            DIE_IF(!ok, "attention failed");
            const int it = 50;
            double ts = now_s();
            for (int w = 0; w < it; w++)
                ops->paged_attention(be, &p);
            DIE_IF(ops->synchronize(be) != PD_OK, "attention failed");
            double per = (now_s() - ts) / it;
            double bytes = (double)AB * actx[ci] * KW * lay.elem_bytes * 2;
            att_us[ct][ci] = per * 1e6;
            att_gbps[ct][ci] = bytes / per / 1e9;
        }
        ops->buf_free(be, cache), ops->buf_free(be, dq), ops->buf_free(be, dout), ops->buf_free(be, dseq);
        ops->buf_free(be, dpos), ops->buf_free(be, dbt), ops->buf_free(be, dctx);
        free(seq), free(pos), free(bt), free(cl);
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
    printf("(GEMV / attention GB/s = weight / K+V bytes read per second; ceiling = the copy's bytes moved per second)\n");
    printf("attention time per step vs the f32 cache: f16 %.2fx, fp8 %.2fx at ctx 4096 (bytes 1/2, 1/4)\n",
           att_us[1][2] > 0 ? att_us[0][2] / att_us[1][2] : 0.0, att_us[2][2] > 0 ? att_us[0][2] / att_us[2][2] : 0.0);
    printf("JSON {\"copy_gbps\":%.1f,\"gemm_bf16_8192_tflops\":%.1f,\"gemm_bf16_prefill_tflops\":%.1f,"
           "\"weight_bytes\":%.0f,\"decode_b1_ms\":%.3f,\"decode_b1_floor_ms\":%.3f,\"decode_b64_ms\":%.3f,"
           "\"decode_b256_ms\":%.3f,\"graph_decode_ms\":[%.3f,%.3f,%.3f],\"graph_fp8kv_decode_ms\":[%.3f,%.3f,%.3f],\"graphs_failed\":%d,\"prefill2048_ms\":%.2f,\"prefill2048_floor_ms\":%.2f,"
           "\"attn_b64_f32_gbps\":[%.0f,%.0f,%.0f],\"attn_b64_f16_gbps\":[%.0f,%.0f,%.0f],\"attn_b64_fp8_gbps\":[%.0f,%.0f,%.0f],\"gemv_m1_gbps\":[%.0f,%.0f,%.0f,%.0f,%.0f]}\n",
           copy_gbps, gemm_sq, gemm_pf, weight_bytes, dec[0] * 1e3, floor_dec * 1e3, dec[1] * 1e3, dec[2] * 1e3,
           decg[0] * 1e3, decg[1] * 1e3, decg[2] * 1e3, decf8[0] * 1e3, decf8[1] * 1e3, decf8[2] * 1e3, gst.n_failed, pf * 1e3, floor_pf * 1e3, att_gbps[0][0], att_gbps[0][1], att_gbps[0][2], att_gbps[1][0],
           att_gbps[1][1], att_gbps[1][2], att_gbps[2][0], att_gbps[2][1], att_gbps[2][2], gv[0], gv[1], gv[2], gv[3], gv[4]);
    printf("JSON_STEP {\"gemv_fused_m1_gbps\":[%.0f,%.0f],\"graph_decode_unfused_ms\":[%.3f,%.3f],"
           "\"graph_decode_argmax_ms\":[%.3f,%.3f,%.3f],\"graph_decode_b1_pdl_ms\":[%.3f,%.3f],"
           "\"graph_decode_b1_pdl_noalloc_argmax_ms\":%.3f,\"gemv_noalloc_m1_gbps\":[%.0f,%.0f,%.0f,%.0f],"
           "\"sample_us\":[[%.0f,%.0f,%.0f],[%.0f,%.0f,%.0f]],\"graph_decode_sampled_ms\":[%.3f,%.3f,%.3f],"
           "\"fused_layers\":[%d,%d]}\n",
           fgv[0], fgv[1], decnf[0] * 1e3, decnf[1] * 1e3, decga[0] * 1e3, decga[1] * 1e3, decga[2] * 1e3,
           decp[0] * 1e3, decp[1] * 1e3, decpn * 1e3, ngv[0], ngv[1], ngv[2], ngv[3], samp_us[0][0], samp_us[0][1], samp_us[0][2], samp_us[1][0],
           samp_us[1][1], samp_us[1][2], decgs[0] * 1e3, decgs[1] * 1e3, decgs[2] * 1e3, n_fused_qkv, n_fused_gu);
    free(logits);
    ops->shutdown(be);
    eng_model_destroy(model);
    return 0;
}
