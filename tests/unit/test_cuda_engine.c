/*
 * test_cuda_engine.c - the CUDA backend's executor features through eng_forward:
 * decode steps replayed from CUDA graphs against the same steps run eagerly
 * (--enforce-eager), greedy tokens compared.
 *
 * For each tiny safetensors model (tests/data/models, and the default GGUF when it is
 * in the cache) NSEQ sequences with random prompts of different lengths are prefilled,
 * then decoded greedily, in three ways: (a) eager forward, all sequences in one batch;
 * (b) graph forward, all in one batch (13 sequences padded to the capture size 16);
 * (c) graph forward, each sequence alone (batch size 1).  With f32 GEMMs the tokens must
 * be identical in all three and the logits of (a) and (b) within 1e-3 relative; with
 * bf16 GEMMs (the serving default; (b) then fed (a)'s tokens) logits within 5e-2 and at
 * least 90% of the argmaxes of (a) and (b) equal.  The graph forwards must have replayed graphs, captured without
 * failure, and run the steps whose context exceeds graph_max_ctx eagerly.
 * fp8 KV caches (e4m3, e5m2, calculated scales) are compared with the f32 cache,
 * teacher-forced (the same tokens in): the logit error relative to the largest logit
 * must stay small, and on the default model the argmax must mostly agree.
 * Device-side greedy (eng_forward_run_argmax): run (b) again with the argmax computed on
 * the GPU and only every other row's logits copied back (a pattern that changes per
 * step): the tokens must be identical to (b)'s, and each returned id equal to the host
 * argmax (first maximum) of the rows that came back.  Device sampling through the graphs
 * (bf16, tiny llama): the GPU's draws equal kcpu_sample_rows on the same step's logits.
 * The fused decode layer against PD_FORWARD_NO_DECODE_FUSE=1 (test_decode_fusion).
 * Exits 77 (skipped) without a GPU.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_backend.h"
#include "eng_backend_cuda.h"
#include "eng_forward.h"
#include "eng_model.h"
#include "pd_test.h"
#include "test_model_util.h"

#define NSEQ 13
#define MB 8           /* blocks per sequence */
#define BS 16          /* block size */
#define NDEC 40        /* decode steps */
#define MAX_CTX_GRAPH 48 /* contexts beyond this run eagerly in the graph forwards */

typedef struct run_out {
    int32_t tok[NSEQ][NDEC];   /* token fed at each decode step */
    int32_t pred[NSEQ][NDEC + 1]; /* argmax after the prefill (0) and after each decode step */
    float *logits; /* [NDEC][NSEQ][V] of the batched runs */
    eng_forward_graph_stats_t st;
} run_out_t;

typedef struct setup {
    eng_model_t *model;
    int64_t V;
    int plen[NSEQ];
    int32_t prompt[NSEQ][40];
} setup_t;

static kcpu_dtype_t wdtype_g;

static int32_t argmax(const float *row, int64_t V)
{
    int64_t best = 0;
    for (int64_t v = 1; v < V; v++)
        if (row[v] > row[best])
            best = v;
    return (int32_t)best;
}

static eng_kv_dtype_t kv_g;  /* KV cache of the next forwards */
static bool dev_argmax_g;    /* run(): decode steps through eng_forward_run_argmax */
static int argmax_checked_g, argmax_bad_g;
static bool calc_g;

static pd_status_t new_forward(const setup_t *s, int graph_bs, eng_backend_t **be_p, eng_forward_t **fw_p)
{
    const eng_backend_ops_t *ops = eng_backend_get("cuda");
    eng_backend_opts_t bo = {.device = 0, .mm_mode = KCPU_MM_EXACT};
    eng_forward_opts_t fo = {.block_size = BS, .n_blocks = NSEQ * MB, .max_tokens = 64, .max_seqs = 16,
                             .max_blocks_per_seq = MB, .graph_max_bs = graph_bs, .graph_max_ctx = MAX_CTX_GRAPH,
                             .kv_dtype = kv_g, .calculate_kv_scales = calc_g};
    eng_backend_t *be = NULL;
    pd_status_t st = ops->init(&bo, &be);
    if (st != PD_OK)
        return st;
    st = eng_backend_cuda_set_weight_dtype(be, wdtype_g);
    if (st == PD_OK)
        st = eng_forward_create(s->model, ops, be, &fo, fw_p);
    if (st != PD_OK) {
        ops->shutdown(be);
        return st;
    }
    *be_p = be;
    return PD_OK;
}

/* Prefill every sequence, then decode NDEC steps greedily; `alone`: one sequence per
 * decode batch; `force`: feed that run's tokens instead of this run's argmax (teacher
 * forcing: both runs see the same inputs).  Sequence i owns blocks i*MB .. i*MB+MB-1. */
static void run(const setup_t *s, int graph_bs, bool alone, const run_out_t *force, run_out_t *out)
{
    const int64_t V = s->V;
    eng_backend_t *be = NULL;
    eng_forward_t *fw = NULL;
    float *lg = malloc((size_t)NSEQ * (size_t)V * sizeof(float));
    int32_t tables[NSEQ * MB], next[NSEQ], ctx[NSEQ];

    PD_CHECK(lg != NULL);
    PD_CHECK_STATUS(new_forward(s, graph_bs, &be, &fw), PD_OK);
    if (fw == NULL || lg == NULL)
        goto out;
    for (int i = 0; i < NSEQ * MB; i++)
        tables[i] = i;
    for (int i = 0; i < NSEQ; i++) {
        int32_t pos[40], seq[40], row = s->plen[i] - 1;
        int64_t slots[40];
        for (int t = 0; t < s->plen[i]; t++) {
            pos[t] = t;
            seq[t] = 0;
            slots[t] = (int64_t)i * MB * BS + t;
        }
        ctx[i] = s->plen[i];
        eng_fwd_batch_t fb = {s->plen[i], s->prompt[i], pos, seq, slots, 1, tables + i * MB, &ctx[i], 1, &row};
        PD_CHECK_STATUS(eng_forward_run(fw, &fb, lg), PD_OK);
        next[i] = argmax(lg, V);
        out->pred[i][0] = next[i];
        if (force)
            next[i] = force->pred[i][0];
    }
    for (int d = 0; d < NDEC; d++) {
        int n = alone ? 1 : NSEQ;
        for (int first = 0; first < NSEQ; first += n) {
            int32_t tk[NSEQ], ps[NSEQ], sq[NSEQ], rows[NSEQ], cx[NSEQ];
            int64_t sl[NSEQ];
            for (int j = 0; j < n; j++) {
                int i = first + j;
                tk[j] = next[i];
                ps[j] = ctx[i];
                sq[j] = j;
                rows[j] = j;
                sl[j] = (int64_t)i * MB * BS + ctx[i];
                cx[j] = ctx[i] + 1;
            }
            eng_fwd_batch_t db = {n, tk, ps, sq, sl, n, tables + first * MB, cx, n, rows};
            uint8_t need[NSEQ];
            int32_t ids[NSEQ];
            for (int j = 0; j < n; j++)
                need[j] = (uint8_t)((d + first + j) % 2);
            pd_status_t st = dev_argmax_g ? eng_forward_run_argmax(fw, &db, need, lg, ids) : eng_forward_run(fw, &db, lg);
            PD_CHECK_STATUS(st, PD_OK);
            if (st != PD_OK)
                goto out;
            for (int j = 0; j < n; j++) {
                int i = first + j;
                out->tok[i][d] = next[i];
                if (dev_argmax_g) {
                    if (need[j]) {
                        argmax_checked_g++;
                        argmax_bad_g += ids[j] != argmax(lg + (size_t)j * V, V);
                    }
                    next[i] = ids[j];
                } else {
                    next[i] = argmax(lg + (size_t)j * V, V);
                }
                out->pred[i][d + 1] = next[i];
                if (force)
                    next[i] = force->pred[i][d + 1];
                ctx[i]++;
                if (out->logits && !dev_argmax_g)
                    memcpy(out->logits + ((size_t)d * NSEQ + i) * V, lg + (size_t)j * V, (size_t)V * sizeof(float));
            }
        }
    }
    eng_forward_graph_stats(fw, &out->st);
out:
    eng_forward_destroy(fw);
    if (be)
        eng_backend_get("cuda")->shutdown(be);
    free(lg);
}

/* *s: the model at path (quantized weights kept as they are when keep_quantized, else
 * dequantized to f32) and NSEQ random prompts of 2 + (i * step) % span tokens, drawn from
 * the generator seeded with seed.  False (the load checked) when the model does not load. */
static bool setup_load(setup_t *s, const char *path, bool keep_quantized, uint32_t seed, int step, int span)
{
    eng_load_opts_t lo;
    uint32_t rng = seed;
    memset(s, 0, sizeof(*s));
    eng_load_opts_init(&lo);
    lo.model = path;
    lo.keep_quantized = keep_quantized;
    lo.dequant_dtype = ENG_DTYPE_F32;
    lo.max_model_len = MB * BS;
    PD_CHECK_STATUS(eng_model_load(&lo, &s->model), PD_OK);
    if (s->model == NULL)
        return false;
    s->V = eng_model_config(s->model)->vocab_size;
    for (int i = 0; i < NSEQ; i++) {
        s->plen[i] = 2 + (i * step) % span;
        for (int t = 0; t < s->plen[i]; t++) {
            rng = rng * 1664525u + 1013904223u;
            s->prompt[i][t] = (int32_t)((rng >> 8) % (uint32_t)s->V);
        }
    }
    return true;
}

static void check_model(const char *path, const char *label)
{
    setup_t s;
    run_out_t a = {0}, b = {0}, c = {0}, g = {0};
    double worst = 0;
    int agree = 0, agree_ab = 0, total = 0;
    bool exact = wdtype_g == KCPU_DTYPE_F32;

    /* 2 .. 31 tokens: contexts cross MAX_CTX_GRAPH while decoding */
    if (!setup_load(&s, path, !exact, 12345, 7, 30))
        return;
    a.logits = malloc((size_t)NDEC * NSEQ * (size_t)s.V * sizeof(float));
    b.logits = malloc((size_t)NDEC * NSEQ * (size_t)s.V * sizeof(float));
    PD_CHECK(a.logits && b.logits);
    if (a.logits && b.logits) {
        run(&s, 0, false, NULL, &a);
        /* bf16: (b) is fed (a)'s tokens, so a near-tie flipped by the padded GEMM shape
         * does not send the rest of the sequence elsewhere */
        run(&s, 512, false, exact ? NULL : &a, &b);
        run(&s, 512, true, NULL, &c);
        /* (b) again with device-side greedy: the same graphs and inputs, so the same ids */
        dev_argmax_g = true;
        argmax_checked_g = argmax_bad_g = 0;
        run(&s, 512, false, exact ? NULL : &a, &g);
        dev_argmax_g = false;
        {
            int same = 0;
            for (int i = 0; i < NSEQ; i++)
                for (int d = 0; d <= NDEC; d++)
                    same += g.pred[i][d] == b.pred[i][d];
            printf("  %s [%s]: device argmax: tokens = host-argmax graph run %d/%d, ids = host argmax of the "
                   "returned rows %d/%d\n",
                   label, exact ? "f32" : "bf16", same, NSEQ * (NDEC + 1), argmax_checked_g - argmax_bad_g,
                   argmax_checked_g);
            PD_CHECK_EQ_INT(same, NSEQ * (NDEC + 1));
            PD_CHECK_EQ_INT(argmax_bad_g, 0);
            PD_CHECK(argmax_checked_g > 0);
            PD_CHECK_EQ_INT(g.st.n_failed, 0);
        }
        PD_CHECK_EQ_INT(a.st.n_sizes, 0);
        PD_CHECK_EQ_INT(a.st.graph_steps, 0);
        PD_CHECK(b.st.n_sizes > 0 && b.st.n_captured > 0 && b.st.graph_steps > 0);
        PD_CHECK_EQ_INT(b.st.n_failed, 0);
        PD_CHECK_EQ_INT(c.st.n_failed, 0);
        PD_CHECK(c.st.graph_steps > 0);
        /* steps past MAX_CTX_GRAPH ran eagerly in (b): more than the 13 prefills + warm-ups */
        PD_CHECK(b.st.eager_steps > (uint64_t)NSEQ + (uint64_t)b.st.n_captured);
        for (int d = 0; d < NDEC; d++)
            for (int i = 0; i < NSEQ; i++) {
                const float *x = a.logits + ((size_t)d * NSEQ + i) * s.V, *y = b.logits + ((size_t)d * NSEQ + i) * s.V;
                float mx = 1;
                for (int64_t v = 0; v < s.V; v++)
                    mx = fabsf(x[v]) > mx ? fabsf(x[v]) : mx;
                for (int64_t v = 0; v < s.V; v++) {
                    double e = fabs((double)x[v] - (double)y[v]) / mx;
                    worst = e > worst ? e : worst;
                }
                total++;
                agree_ab += a.pred[i][d + 1] == b.pred[i][d + 1];
                agree += a.pred[i][d + 1] == b.pred[i][d + 1] && a.pred[i][d + 1] == c.pred[i][d + 1];
            }
        printf("  %s [%s]: graphs %d sizes, %d captured, %llu graph / %llu eager steps; "
               "tokens: graphs = eager %d/%d, also = alone %d/%d; worst logit diff %.2e\n",
               label, exact ? "f32" : "bf16", b.st.n_sizes, b.st.n_captured, (unsigned long long)b.st.graph_steps,
               (unsigned long long)b.st.eager_steps, agree_ab, total, agree, total, worst);
        if (exact) {
            PD_CHECK_EQ_INT(agree, total);
            PD_CHECK(worst <= 1e-3);
        } else {
            /* decode GEMMs of 1..8 rows read f32 activations, larger ones bf16-rounded
             * ones: "alone" differs numerically, graphs vs eager (same sizes) hardly */
            PD_CHECK(worst <= 5e-2);
            PD_CHECK(agree_ab * 10 >= total * 9);
        }
    }
    free(a.logits);
    free(b.logits);
    eng_model_destroy(s.model);
}

/* Device sampling through the decode graphs (eng_forward_run_sample): each step of a
 * batch of NSEQ sequences is run twice, sampled on the GPU (rows with different
 * temperature / top-k / top-p / min-p, one greedy) and with the full logits copied back;
 * kcpu_sample_rows on those logits with the same uniforms must pick the same tokens (the
 * two differ only in the order of double sums: at most 2% of the draws). */
static void check_device_sampling(const char *path, const char *label)
{
    static const kcpu_sample_params_t kinds[5] = {{0.8f, 40, 1.0f, 0.0f}, {0.0f, 0, 1.0f, 0.0f},
                                                  {1.1f, 0, 0.9f, 0.0f},  {1.0f, 0, 1.0f, 0.05f},
                                                  {0.7f, 20, 0.8f, 0.02f}};
    eng_load_opts_t lo;
    setup_t s;
    eng_backend_t *be = NULL;
    eng_forward_t *fw = NULL;
    float *lg = NULL, *full = NULL;
    int32_t tables[NSEQ * MB], ctx[NSEQ], next[NSEQ];
    int same = 0, total = 0;
    uint32_t rng = 99;

    memset(&s, 0, sizeof(s));
    eng_load_opts_init(&lo);
    lo.model = path;
    lo.keep_quantized = true;
    lo.dequant_dtype = ENG_DTYPE_F32;
    lo.max_model_len = MB * BS;
    PD_CHECK_STATUS(eng_model_load(&lo, &s.model), PD_OK);
    if (s.model == NULL)
        return;
    s.V = eng_model_config(s.model)->vocab_size;
    lg = malloc((size_t)NSEQ * (size_t)s.V * sizeof(float));
    full = malloc((size_t)NSEQ * (size_t)s.V * sizeof(float));
    PD_CHECK_STATUS(new_forward(&s, 512, &be, &fw), PD_OK);
    if (fw == NULL || lg == NULL || full == NULL)
        goto out;
    for (int i = 0; i < NSEQ * MB; i++)
        tables[i] = i;
    for (int i = 0; i < NSEQ; i++) { /* a prompt of 3 + i tokens each */
        int32_t tk[40], pos[40], seq[40], row;
        int64_t sl[40];
        ctx[i] = 3 + i;
        for (int t = 0; t < ctx[i]; t++) {
            rng = rng * 1664525u + 1013904223u;
            tk[t] = (int32_t)((rng >> 8) % (uint32_t)s.V);
            pos[t] = t;
            seq[t] = 0;
            sl[t] = (int64_t)i * MB * BS + t;
        }
        row = ctx[i] - 1;
        eng_fwd_batch_t fb = {ctx[i], tk, pos, seq, sl, 1, tables + i * MB, &ctx[i], 1, &row};
        PD_CHECK_STATUS(eng_forward_run(fw, &fb, lg), PD_OK);
        next[i] = argmax(lg, s.V);
    }
    for (int d = 0; d < 12 && !pd_test_failed_g; d++) {
        int32_t tk[NSEQ], ps[NSEQ], sq[NSEQ], rows[NSEQ], cx[NSEQ], ids[NSEQ], want[NSEQ];
        int64_t sl[NSEQ];
        kcpu_sample_params_t sp[NSEQ];
        float u[NSEQ];
        uint8_t need[NSEQ];
        for (int i = 0; i < NSEQ; i++) {
            tk[i] = next[i];
            ps[i] = ctx[i];
            sq[i] = i;
            rows[i] = i;
            sl[i] = (int64_t)i * MB * BS + ctx[i];
            cx[i] = ctx[i] + 1;
            sp[i] = kinds[(i + d) % 5];
            rng = rng * 1664525u + 1013904223u;
            u[i] = (float)(rng >> 8) / 16777216.0f;
            need[i] = 0;
        }
        eng_fwd_batch_t db = {NSEQ, tk, ps, sq, sl, NSEQ, tables, cx, NSEQ, rows};
        PD_CHECK_STATUS(eng_forward_run_sample(fw, &db, need, sp, u, lg, ids), PD_OK);
        PD_CHECK_STATUS(eng_forward_run(fw, &db, full), PD_OK);
        kcpu_sample_rows(full, NSEQ, s.V, sp, u, want);
        for (int i = 0; i < NSEQ; i++) {
            same += ids[i] == want[i];
            total++;
            next[i] = ids[i];
            ctx[i]++;
        }
    }
    printf("  %s [%s]: device sampling through graphs: %d/%d draws = kcpu_sample_rows on the same logits\n", label,
           wdtype_g == KCPU_DTYPE_F32 ? "f32" : "bf16", same, total);
    PD_CHECK(total > 0 && same * 50 >= total * 49);
out:
    eng_forward_destroy(fw);
    if (be)
        eng_backend_get("cuda")->shutdown(be);
    free(lg);
    free(full);
    eng_model_destroy(s.model);
}

PD_TEST(test_device_sampling_graphs)
{
    const char *src = getenv("PD_SOURCE_DIR") ? getenv("PD_SOURCE_DIR") : ".";
    char m[4096];
    snprintf(m, sizeof(m), "%s/tests/data/models/tiny-llama", src);
    if (access(m, R_OK) == 0)
        check_device_sampling(m, "llama");
}

/* fp8 KV (e4m3 / e5m2, calculated scales) against the f32 KV cache, teacher-forced:
 * the same tokens in, argmax agreement and the logit error relative to the logits'
 * largest magnitude reported; the error must stay small (a wrong scale or layout gives
 * errors of the order of the logits themselves). */
static void check_fp8(const char *path, const char *label, bool real_model)
{
    setup_t s;
    run_out_t *ref = calloc(1, sizeof(*ref)), *f8 = calloc(1, sizeof(*f8));

    bool loaded = setup_load(&s, path, false, 777, 7, 30);
    PD_CHECK(ref && f8);
    if (!loaded || !ref || !f8)
        goto out;
    ref->logits = malloc((size_t)NDEC * NSEQ * (size_t)s.V * sizeof(float));
    f8->logits = malloc((size_t)NDEC * NSEQ * (size_t)s.V * sizeof(float));
    PD_CHECK(ref->logits && f8->logits);
    if (!ref->logits || !f8->logits)
        goto out;
    kv_g = ENG_KV_AUTO;
    calc_g = false;
    run(&s, 512, false, NULL, ref);
    for (int e5 = 0; e5 < 2; e5++) {
        double worst = 0, sum = 0;
        int agree = 0, total = 0, n = 0;
        kv_g = e5 ? ENG_KV_FP8_E5M2 : ENG_KV_FP8_E4M3;
        calc_g = true;
        run(&s, 512, false, ref, f8);
        for (int d = 0; d < NDEC; d++)
            for (int i = 0; i < NSEQ; i++) {
                const float *x = ref->logits + ((size_t)d * NSEQ + i) * s.V, *y = f8->logits + ((size_t)d * NSEQ + i) * s.V;
                double mx = 1e-30, e = 0;
                for (int64_t v = 0; v < s.V; v++)
                    mx = fabs(x[v]) > mx ? fabs(x[v]) : mx;
                for (int64_t v = 0; v < s.V; v++)
                    e = fabs((double)x[v] - (double)y[v]) > e ? fabs((double)x[v] - (double)y[v]) : e;
                worst = e / mx > worst ? e / mx : worst;
                sum += e / mx;
                n++;
                total++;
                agree += ref->pred[i][d + 1] == f8->pred[i][d + 1];
            }
        printf("  %s fp8 %s KV vs f32 KV (teacher-forced, calculated scales): argmax agrees %d/%d, "
               "logit error / max|logit| mean %.3f worst %.3f\n",
               label, e5 ? "e5m2" : "e4m3", agree, total, sum / n, worst);
        PD_CHECK(sum / n <= (e5 ? 0.25 : 0.12));
        if (real_model)
            PD_CHECK(agree * 10 >= total * (e5 ? 8 : 9));
    }
out:
    kv_g = ENG_KV_AUTO;
    calc_g = false;
    if (ref)
        free(ref->logits);
    if (f8)
        free(f8->logits);
    free(ref);
    free(f8);
    eng_model_destroy(s.model);
}

PD_TEST(test_fp8_kv)
{
    static const char *const names[] = {"llama", "qwen3", NULL};
    const char *src = getenv("PD_SOURCE_DIR") ? getenv("PD_SOURCE_DIR") : ".";
    char buf[4096];
    const char *g = test_default_gguf(buf, sizeof(buf));
    for (int i = 0; names[i]; i++) {
        char m[4096];
        snprintf(m, sizeof(m), "%s/tests/data/models/tiny-%s", src, names[i]);
        if (access(m, R_OK) == 0)
            check_fp8(m, names[i], false);
    }
    if (g)
        check_fp8(g, "SmolLM2-135M", true);
}

PD_TEST(test_graphs_vs_eager_small_models)
{
    static const char *const names[] = {"llama", "qwen3", "opt", NULL};
    const char *src = getenv("PD_SOURCE_DIR") ? getenv("PD_SOURCE_DIR") : ".";
    for (int i = 0; names[i]; i++) {
        char m[4096];
        snprintf(m, sizeof(m), "%s/tests/data/models/tiny-%s", src, names[i]);
        if (access(m, R_OK) != 0)
            continue;
        check_model(m, names[i]);
    }
}

PD_TEST(test_graphs_vs_eager_default_model)
{
    char buf[4096];
    const char *g = test_default_gguf(buf, sizeof(buf));
    if (g == NULL) {
        printf("  NOTE: the default model is not in the cache; small models only\n");
        return;
    }
    check_model(g, "SmolLM2-135M");
}

/* The fused decode layer (norm in the q|k|v and gate|up GEMVs, GLU epilogue, residual
 * adds in the o / down GEMVs, RoPE + KV write in one kernel: opt-in) against the
 * same forward with PD_FORWARD_NO_DECODE_FUSE=1, both through batch-1 graphs (every
 * decode step and the short prefills take the fused path), the fused run fed the
 * unfused run's tokens.  f32 GEMMs: the GEMV ops decline (f32 weights) and the forward
 * runs the separate ops in the fused order, so the tokens must be identical and the
 * logits within 1e-4; bf16: the norm's scale is applied after the sum instead of before
 * (f32 rounding only): logits within 1e-2 of the largest, at least 95% of the argmaxes
 * equal. */
/* Two runs of the same decode steps: equal argmaxes (agree of total) and the largest
 * logit difference relative to max(1, max |logit|) of its row. */
static void compare_runs(const setup_t *s, const run_out_t *off, const run_out_t *on, double *worst_p, int *agree_p,
                         int *total_p)
{
    for (int i = 0; i < NSEQ; i++) {
        (*total_p)++;
        *agree_p += on->pred[i][0] == off->pred[i][0];
    }
    for (int d = 0; d < NDEC; d++)
        for (int i = 0; i < NSEQ; i++) {
            const float *x = off->logits + ((size_t)d * NSEQ + i) * s->V;
            const float *y = on->logits + ((size_t)d * NSEQ + i) * s->V;
            float mx = 1;
            for (int64_t v = 0; v < s->V; v++)
                mx = fabsf(x[v]) > mx ? fabsf(x[v]) : mx;
            for (int64_t v = 0; v < s->V; v++) {
                double e = fabs((double)x[v] - (double)y[v]) / mx;
                *worst_p = e > *worst_p ? e : *worst_p;
            }
            (*total_p)++;
            *agree_p += on->pred[i][d + 1] == off->pred[i][d + 1];
        }
}

static void check_decode_fusion(const char *path, const char *label)
{
    setup_t s;
    run_out_t off = {0}, on = {0};
    double worst = 0;
    int agree = 0, total = 0;
    bool exact = wdtype_g == KCPU_DTYPE_F32;

    if (!setup_load(&s, path, !exact, 777, 5, 20))
        return;
    off.logits = malloc((size_t)NDEC * NSEQ * (size_t)s.V * sizeof(float));
    on.logits = malloc((size_t)NDEC * NSEQ * (size_t)s.V * sizeof(float));
    PD_CHECK(off.logits && on.logits);
    if (off.logits && on.logits) {
        setenv("PD_FORWARD_NO_DECODE_FUSE", "1", 1);
        run(&s, 8, true, NULL, &off);
        unsetenv("PD_FORWARD_NO_DECODE_FUSE");
        setenv("PD_FORWARD_DECODE_FUSE", "1", 1); /* opt-in (off by default) */
        run(&s, 8, true, &off, &on);
        unsetenv("PD_FORWARD_DECODE_FUSE");
        compare_runs(&s, &off, &on, &worst, &agree, &total);
        printf("  %s [%s]: decode fusion on vs off (batch-1 graphs): argmax equal %d/%d, worst logit diff %.2e; "
               "%llu / %llu graph steps\n",
               label, exact ? "f32" : "bf16", agree, total, worst, (unsigned long long)on.st.graph_steps,
               (unsigned long long)off.st.graph_steps);
        PD_CHECK(on.st.graph_steps > 0 && off.st.graph_steps > 0);
        PD_CHECK_EQ_INT(on.st.n_failed, 0);
        if (exact) {
            PD_CHECK_EQ_INT(agree, total);
            PD_CHECK(worst <= 1e-4);
        } else {
            PD_CHECK(worst <= 1e-2);
            PD_CHECK(agree * 100 >= total * 95);
        }
    }
    free(off.logits);
    free(on.logits);
    eng_model_destroy(s.model);
}

PD_TEST(test_decode_fusion)
{
    static const char *const names[] = {"llama", "qwen3", NULL};
    const char *src = getenv("PD_SOURCE_DIR") ? getenv("PD_SOURCE_DIR") : ".";
    char buf[4096];
    const char *g;
    for (int i = 0; names[i]; i++) {
        char m[4096];
        snprintf(m, sizeof(m), "%s/tests/data/models/tiny-%s", src, names[i]);
        if (access(m, R_OK) != 0)
            continue;
        check_decode_fusion(m, names[i]);
    }
    g = test_default_gguf(buf, sizeof(buf));
    if (g != NULL)
        check_decode_fusion(g, "SmolLM2-135M");
}

int main(void)
{
    const eng_backend_ops_t *ops = eng_backend_get("cuda");
    eng_backend_t *probe = NULL;
    if (ops == NULL || ops->init(NULL, &probe) != PD_OK) {
        printf("SKIP: no usable CUDA device\n");
        return 77;
    }
    ops->shutdown(probe);
    wdtype_g = KCPU_DTYPE_F32;
    PD_RUN(test_graphs_vs_eager_small_models);
    PD_RUN(test_graphs_vs_eager_default_model);
    PD_RUN(test_fp8_kv);
    PD_RUN(test_decode_fusion);
    wdtype_g = KCPU_DTYPE_BF16;
    PD_RUN(test_decode_fusion);
    PD_RUN(test_device_sampling_graphs);
    PD_RUN(test_graphs_vs_eager_small_models);
    PD_RUN(test_graphs_vs_eager_default_model);
    return PD_TEST_REPORT();
}
