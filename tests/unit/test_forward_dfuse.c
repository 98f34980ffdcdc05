/*
 * test_forward_dfuse.c - the fused decode layer of eng_forward (decode rows, T <= 8) on the
 * CPU, where the CUDA kernels cannot run: the CPU backend's ops table plus the three
 * optional fused ops (norm_matmul, matmul_add, rope_kv_write) implemented here over the
 * CPU backend's own ops, so the forward takes exactly the calls it makes on CUDA (x
 * updated in place by the o / down matmuls, the norms and the GLU inside the q|k|v,
 * gate|up and lm_head matmuls, no trailing residual add).  Against the plain CPU backend
 * (no fused ops: the unfused layer) the logits must be bit-identical, for prefills of
 * 3..19 tokens (short ones take the fused path) and decode steps of 5 rows, for
 * eng_forward_logits after a step that asked for no logits (x must already be final),
 * and with the fused ops declining every third call (PD_ERR_UNSUPPORTED: the forward
 * falls back to the separate ops for that call only), all with the opt-in
 * PD_FORWARD_DECODE_FUSE=1.  PD_FORWARD_NO_DECODE_FUSE=1 and the default (off) must keep
 * norm_matmul and matmul_add unused (rope_kv_write, element-wise, runs for every T
 * wherever the backend has it).  Models: tests/data/models tiny-llama, tiny-qwen2
 * (q|k|v bias), tiny-qwen3 (q/k norms: q|k|v not fused) when present.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_backend.h"
#include "eng_forward.h"
#include "eng_model.h"
#include "pd_test.h"
#include "test_model_util.h"

#define BS 16
#define MB 8
#define NS 5

static const eng_backend_ops_t *cpu;
static eng_backend_ops_t fused;   /* cpu's table + the fused ops below */
static int decline_every;         /* > 0: every n-th fused call declines */
static int n_calls, n_declined, n_nm, n_ma, n_rk;
static float *scr_a, *scr_b;      /* scratch of the fused ops */
static size_t scr_n;              /* floats in each */

static bool decline(void)
{
    n_calls++;
    if (decline_every > 0 && n_calls % decline_every == 0) {
        n_declined++;
        return true;
    }
    return false;
}

static pd_status_t t_norm_matmul(eng_backend_t *be, const float *x, int64_t M, int64_t K, const float *norm_w,
                                 float eps, const void *w, kcpu_dtype_t wtype, int64_t N, const float *bias, int glu,
                                 float *y, int64_t ldy)
{
    pd_status_t st;
    if (decline())
        return PD_ERR_UNSUPPORTED;
    if ((size_t)(M * K) > scr_n || (size_t)(M * N) > scr_n)
        return PD_ERR_INVAL;
    n_nm++;
    st = cpu->rmsnorm(be, x, norm_w, scr_a, M, K, eps);
    if (st != PD_OK)
        return st;
    if (glu == ENG_GLU_NONE)
        return cpu->matmul(be, scr_a, M, K, K, w, wtype, N, bias, y, ldy);
    st = cpu->matmul(be, scr_a, M, K, K, w, wtype, N, bias, scr_b, N);
    for (int64_t m = 0; st == PD_OK && m < M; m++) {
        const float *g = scr_b + m * N, *u = g + N / 2;
        if (glu == ENG_GLU_SILU)
            st = cpu->silu_and_mul(be, g, N, u, N, y + m * ldy, 1, N / 2);
        else
            st = cpu->gelu_and_mul(be, g, N, u, N, y + m * ldy, 1, N / 2, glu == ENG_GLU_GELU_TANH);
    }
    return st;
}

static pd_status_t t_matmul_add(eng_backend_t *be, const float *x, int64_t M, int64_t K, int64_t ldx, const void *w,
                                kcpu_dtype_t wtype, int64_t N, const float *bias, float *y, int64_t ldy)
{
    pd_status_t st;
    if (decline())
        return PD_ERR_UNSUPPORTED;
    if ((size_t)(M * N) > scr_n)
        return PD_ERR_INVAL;
    n_ma++;
    st = cpu->matmul(be, x, M, K, ldx, w, wtype, N, bias, scr_a, N);
    for (int64_t m = 0; st == PD_OK && m < M; m++)
        st = cpu->add(be, y + m * ldy, scr_a + m * N, y + m * ldy, N);
    return st;
}

static pd_status_t t_rope_kv_write(eng_backend_t *be, float *q, int64_t q_stride, float *k, int64_t k_stride,
                                   const float *v, int64_t v_stride, const int32_t *pos, int64_t T, int n_heads,
                                   int rotary_dim, const float *inv_freq, float attn_factor, kcpu_rope_style_t style,
                                   const kcpu_kv_layout_t *layout, void *cache_base, int layer,
                                   const int64_t *slot_mapping)
{
    pd_status_t st;
    if (decline())
        return PD_ERR_UNSUPPORTED;
    n_rk++;
    st = cpu->rope(be, q, q_stride, k, k_stride, pos, T, n_heads, layout->n_kv_heads, layout->head_dim, rotary_dim,
                   inv_freq, attn_factor, style);
    if (st == PD_OK)
        st = cpu->kv_write(be, layout, cache_base, layer, slot_mapping, T, k, k_stride, v, v_stride);
    return st;
}

typedef struct steps {
    float *logits; /* [NSTEP][NS][V] */
    float *late;   /* eng_forward_logits after a step without logits: [NS][V] */
} steps_t;

#define NDEC 6
#define NSTEP (NS + NDEC)

/* NS prefills (one sequence each, every row of the last token), NDEC decode steps of NS
 * rows, then one decode step asking for no logits followed by eng_forward_logits. */
static void run(const eng_model_t *model, const eng_backend_ops_t *ops, steps_t *out)
{
    eng_backend_opts_t bo = {.n_threads = 2, .mm_mode = KCPU_MM_EXACT};
    eng_backend_t *be = NULL;
    eng_forward_t *fw = NULL;
    const int64_t V = eng_model_config(model)->vocab_size;
    eng_forward_opts_t fo = {.block_size = BS, .n_blocks = NS * MB, .max_tokens = 32, .max_seqs = NS,
                             .max_blocks_per_seq = MB};
    int32_t tables[NS * MB], ctx[NS], tok[32], pos[32], seq[32], rows[NS], last[NS];
    int64_t slots[32];
    float *lg = malloc((size_t)NS * V * sizeof(float));

    PD_CHECK(lg != NULL);
    PD_CHECK_STATUS(ops->init(&bo, &be), PD_OK);
    if (be != NULL)
        PD_CHECK_STATUS(eng_forward_create(model, ops, be, &fo, &fw), PD_OK);
    if (fw == NULL || lg == NULL)
        goto out;
    for (int i = 0; i < NS * MB; i++)
        tables[i] = i;
    for (int s = 0; s < NS; s++) { /* 3, 7, 11, 15, 19 tokens: the first two fused */
        int n = 3 + 4 * s, row = n - 1;
        for (int p = 0; p < n; p++) {
            tok[p] = (int32_t)((s * 131 + p * 37 + 11) % V);
            pos[p] = p;
            seq[p] = 0;
            slots[p] = (int64_t)s * MB * BS + p;
        }
        ctx[s] = n;
        eng_fwd_batch_t pb = {n, tok, pos, seq, slots, 1, tables + s * MB, &ctx[s], 1, &row};
        PD_CHECK_STATUS(eng_forward_run(fw, &pb, out->logits + (size_t)s * NS * V), PD_OK);
        last[s] = (int32_t)((s * 17 + 5) % V);
    }
    for (int d = 0; d <= NDEC; d++) {
        for (int s = 0; s < NS; s++) {
            tok[s] = last[s];
            pos[s] = ctx[s];
            seq[s] = s;
            rows[s] = s;
            slots[s] = (int64_t)s * MB * BS + ctx[s];
            ctx[s]++;
        }
        /* the last step asks for no logits: eng_forward_logits reads x afterwards */
        eng_fwd_batch_t db = {NS, tok, pos, seq, slots, NS, tables, ctx, d < NDEC ? NS : 0, rows};
        pd_status_t st = eng_forward_run(fw, &db, d < NDEC ? out->logits + (size_t)(NS + d) * NS * V : lg);
        PD_CHECK_STATUS(st, PD_OK);
        if (st != PD_OK)
            goto out;
        if (d < NDEC)
            for (int s = 0; s < NS; s++) /* a fixed continuation (not the argmax: both runs see the same) */
                last[s] = (int32_t)((last[s] * 7 + s + d) % V);
    }
    {
        int32_t r[NS] = {4, 0, 2, 1, 3};
        PD_CHECK_STATUS(eng_forward_logits(fw, r, NS, out->late), PD_OK);
    }
out:
    eng_forward_destroy(fw);
    if (be)
        ops->shutdown(be);
    free(lg);
}

static void check_model(const char *path, const char *label)
{
    eng_model_t *model = test_model_load(path, MB * BS);
    if (model == NULL)
        return;
    const eng_model_config_t *c = eng_model_config(model);
    const int64_t V = c->vocab_size;
    const size_t n_log = (size_t)NSTEP * NS * V;
    int64_t widest = c->vocab_size;
    if (2 * (int64_t)c->intermediate > widest)
        widest = 2 * (int64_t)c->intermediate;
    if ((int64_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim > widest)
        widest = (int64_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim;
    if (c->hidden > widest)
        widest = c->hidden;
    scr_n = (size_t)8 * (size_t)widest;
    scr_a = malloc(scr_n * sizeof(float));
    scr_b = malloc(scr_n * sizeof(float));
    steps_t ref = {calloc(n_log, sizeof(float)), calloc((size_t)NS * V, sizeof(float))};
    steps_t got = {calloc(n_log, sizeof(float)), calloc((size_t)NS * V, sizeof(float))};
    PD_CHECK(scr_a && scr_b && ref.logits && ref.late && got.logits && got.late);
    if (scr_a && scr_b && ref.logits && ref.late && got.logits && got.late) {
        /* the unfused layer (the CPU backend has no fused ops) */
        run(model, cpu, &ref);
        for (int pass = 0; pass < 4; pass++) {
            /* the layer is opt-in (PD_FORWARD_DECODE_FUSE=1) in passes 0-2: 0 every fused
             * call taken, 1 every third declined, 2 PD_FORWARD_NO_DECODE_FUSE=1 wins; 3 the
             * default (off) */
            decline_every = pass == 1 ? 3 : 0;
            n_calls = n_declined = n_nm = n_ma = n_rk = 0;
            memset(got.logits, 0, n_log * sizeof(float));
            memset(got.late, 0, (size_t)NS * V * sizeof(float));
            if (pass == 2)
                setenv("PD_FORWARD_NO_DECODE_FUSE", "1", 1);
            if (pass < 3)
                setenv("PD_FORWARD_DECODE_FUSE", "1", 1);
            run(model, &fused, &got);
            unsetenv("PD_FORWARD_NO_DECODE_FUSE");
            unsetenv("PD_FORWARD_DECODE_FUSE");
            size_t diff = 0;
            for (size_t i = 0; i < n_log; i++)
                diff += memcmp(&got.logits[i], &ref.logits[i], sizeof(float)) != 0;
            int late_same = memcmp(got.late, ref.late, (size_t)NS * V * sizeof(float)) == 0;
            printf("  %s pass %d: norm_matmul %d, matmul_add %d, rope_kv_write %d calls (%d declined); "
                   "%zu of %zu logits differ, late logits %s\n",
                   label, pass, n_nm, n_ma, n_rk, n_declined, diff, n_log, late_same ? "equal" : "DIFFER");
            PD_CHECK(diff == 0);
            PD_CHECK(late_same);
            if (pass >= 2) {
                /* no fused layer; RoPE + KV write stays one op (every T, the backend has it) */
                PD_CHECK_EQ_INT(n_nm + n_ma, 0);
                PD_CHECK(n_rk > 0);
            } else {
                PD_CHECK(n_ma > 0 && n_nm > 0 && n_rk > 0);
                if (pass == 1)
                    PD_CHECK(n_declined > 0);
            }
        }
    }
    free(ref.logits), free(ref.late), free(got.logits), free(got.late);
    free(scr_a), free(scr_b);
    scr_a = scr_b = NULL;
    eng_model_destroy(model);
}

PD_TEST(test_fused_layer_equals_unfused)
{
    static const char *const names[] = {"llama", "qwen2", "qwen3", NULL};
    const char *src = getenv("PD_SOURCE_DIR") ? getenv("PD_SOURCE_DIR") : ".";
    int n = 0;
    for (int i = 0; names[i]; i++) {
        char m[4096];
        snprintf(m, sizeof(m), "%s/tests/data/models/tiny-%s", src, names[i]);
        if (access(m, R_OK) != 0)
            continue;
        check_model(m, names[i]);
        n++;
    }
    if (n == 0)
        printf("  NOTE: no tiny models under %s/tests/data/models\n", src);
}

int main(void)
{
    cpu = eng_backend_get("cpu");
    PD_CHECK(cpu != NULL);
    if (cpu == NULL)
        return PD_TEST_REPORT();
    fused = *cpu;
    fused.norm_matmul = t_norm_matmul;
    fused.matmul_add = t_matmul_add;
    fused.rope_kv_write = t_rope_kv_write;
    PD_RUN(test_fused_layer_equals_unfused);
    return PD_TEST_REPORT();
}
