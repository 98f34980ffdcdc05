/*
 * test_cudagraph_cpu.c - the parts of the CUDA executor features that live on the host
 * and must hold on the CPU backend too (CI has no GPU): graph options are ignored on the
 * CPU backend (no capture sizes, the same logits bit for bit as with graphs off), the
 * decode body without a logit-row gather gives the same logits as with one, an fp8 KV
 * cache is refused there (not supported yet), the --kv-cache-dtype names, the KV block
 * size of an fp8 cache and the graph memory reserve.
 */
#include <math.h>
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

static eng_model_t *model_g;

static eng_forward_t *make_fw(const eng_backend_ops_t *ops, eng_backend_t *be, int graph_bs, eng_kv_dtype_t kv,
                              pd_status_t *st_p)
{
    eng_forward_opts_t fo = {.block_size = BS, .n_blocks = 4 * MB, .max_tokens = 64, .max_seqs = 4,
                             .max_blocks_per_seq = MB, .graph_max_bs = graph_bs, .graph_max_ctx = 64,
                             .kv_dtype = kv};
    eng_forward_t *fw = NULL;
    *st_p = eng_forward_create(model_g, ops, be, &fo, &fw);
    return fw;
}

/* A prefill of 3 sequences, then 4 decode steps of all three; the logits of the last. */
static void prefill_decode(eng_forward_t *fw, int64_t V, float *out)
{
    int32_t tables[3 * MB], ctx[3], tok[40], pos[40], seq[40], rows[3];
    int64_t slots[40];
    float *lg = malloc((size_t)3 * V * sizeof(float));
    int T = 0;
    for (int i = 0; i < 3 * MB; i++)
        tables[i] = i;
    for (int s = 0; s < 3; s++) {
        ctx[s] = 5 + 3 * s;
        for (int p = 0; p < ctx[s]; p++, T++) {
            tok[T] = (int32_t)((T * 37 + 11) % V);
            pos[T] = p;
            seq[T] = s;
            slots[T] = (int64_t)s * MB * BS + p;
        }
        rows[s] = T - 1;
    }
    eng_fwd_batch_t pb = {T, tok, pos, seq, slots, 3, tables, ctx, 3, rows};
    PD_CHECK_STATUS(eng_forward_run(fw, &pb, lg), PD_OK);
    for (int d = 0; d < 4; d++) {
        for (int s = 0; s < 3; s++) {
            tok[s] = (int32_t)((d * 13 + s * 5 + 1) % V);
            pos[s] = ctx[s];
            seq[s] = s;
            rows[s] = s;
            slots[s] = (int64_t)s * MB * BS + ctx[s];
            ctx[s]++;
        }
        eng_fwd_batch_t db = {3, tok, pos, seq, slots, 3, tables, ctx, 3, rows};
        PD_CHECK_STATUS(eng_forward_run(fw, &db, lg), PD_OK);
    }
    memcpy(out, lg, (size_t)3 * V * sizeof(float));
    free(lg);
}

PD_TEST(test_graph_opts_ignored_on_cpu)
{
    const eng_backend_ops_t *ops = eng_backend_get("cpu");
    eng_backend_opts_t bo = {.n_threads = 2, .mm_mode = KCPU_MM_EXACT};
    eng_backend_t *be = NULL;
    const int64_t V = eng_model_config(model_g)->vocab_size;
    float *a = malloc((size_t)3 * V * sizeof(float)), *b = malloc((size_t)3 * V * sizeof(float));
    pd_status_t st;
    eng_forward_graph_stats_t gs;

    PD_CHECK_STATUS(ops->init(&bo, &be), PD_OK);
    if (be == NULL)
        goto out;
    eng_forward_t *f0 = make_fw(ops, be, 0, ENG_KV_AUTO, &st);
    PD_CHECK_STATUS(st, PD_OK);
    eng_forward_t *f1 = make_fw(ops, be, 16, ENG_KV_AUTO, &st);
    PD_CHECK_STATUS(st, PD_OK);
    if (f0 && f1) {
        prefill_decode(f0, V, a);
        prefill_decode(f1, V, b);
        PD_CHECK(memcmp(a, b, (size_t)3 * V * sizeof(float)) == 0);
        eng_forward_graph_stats(f1, &gs);
        PD_CHECK_EQ_INT(gs.n_sizes, 0);
        PD_CHECK_EQ_INT(gs.graph_steps, 0);
        PD_CHECK_EQ_INT(gs.eager_steps, 5);
        PD_CHECK_EQ_STR(eng_forward_kv_dtype_name(f1), "f32");
    }
    eng_forward_destroy(f0);
    eng_forward_destroy(f1);

    /* an fp8 cache is refused on the CPU backend */
    eng_forward_t *f8 = make_fw(ops, be, 0, ENG_KV_FP8_E4M3, &st);
    PD_CHECK(f8 == NULL);
    PD_CHECK_STATUS(st, PD_ERR_UNSUPPORTED);
    eng_forward_destroy(f8);
    ops->shutdown(be);
out:
    free(a);
    free(b);
}

/* The decode body reads x directly when the logit rows are 0..n-1; with a permutation it
 * gathers them first: the same rows, the same numbers. */
PD_TEST(test_logit_rows_gather)
{
    const eng_backend_ops_t *ops = eng_backend_get("cpu");
    eng_backend_opts_t bo = {.n_threads = 1, .mm_mode = KCPU_MM_EXACT};
    eng_backend_t *be = NULL;
    const int64_t V = eng_model_config(model_g)->vocab_size;
    float *id = malloc((size_t)3 * V * sizeof(float)), *pm = malloc((size_t)3 * V * sizeof(float));
    pd_status_t st;
    int32_t tables[3 * MB], ctx[3] = {1, 1, 1}, tok[3] = {5, 6, 7}, pos[3] = {0, 0, 0}, seq[3] = {0, 1, 2};
    int32_t rows_id[3] = {0, 1, 2}, rows_pm[3] = {2, 0, 1};
    int64_t slots[3] = {0, MB * BS, 2 * MB * BS};

    PD_CHECK_STATUS(ops->init(&bo, &be), PD_OK);
    eng_forward_t *fw = be ? make_fw(ops, be, 0, ENG_KV_AUTO, &st) : NULL;
    PD_CHECK(fw != NULL);
    if (fw) {
        for (int i = 0; i < 3 * MB; i++)
            tables[i] = i;
        eng_fwd_batch_t b1 = {3, tok, pos, seq, slots, 3, tables, ctx, 3, rows_id};
        eng_fwd_batch_t b2 = {3, tok, pos, seq, slots, 3, tables, ctx, 3, rows_pm};
        PD_CHECK_STATUS(eng_forward_run(fw, &b1, id), PD_OK);
        PD_CHECK_STATUS(eng_forward_run(fw, &b2, pm), PD_OK);
        double worst = 0;
        for (int i = 0; i < 3; i++)
            for (int64_t v = 0; v < V; v++) {
                double e = fabs((double)pm[(size_t)i * V + v] - (double)id[(size_t)rows_pm[i] * V + v]);
                worst = e > worst ? e : worst;
            }
        PD_CHECK(worst <= 1e-5);
    }
    eng_forward_destroy(fw);
    if (be)
        ops->shutdown(be);
    free(id);
    free(pm);
}

PD_TEST(test_kv_dtype_names_and_sizes)
{
    eng_kv_dtype_t dt = ENG_KV_FP8_E5M2;
    const eng_model_config_t *c = eng_model_config(model_g);
    PD_CHECK_STATUS(eng_kv_dtype_parse(NULL, &dt), PD_OK);
    PD_CHECK_EQ_INT(dt, ENG_KV_AUTO);
    PD_CHECK_STATUS(eng_kv_dtype_parse("fp8", &dt), PD_OK);
    PD_CHECK_EQ_INT(dt, ENG_KV_FP8_E4M3);
    PD_CHECK_STATUS(eng_kv_dtype_parse("fp8_e4m3", &dt), PD_OK);
    PD_CHECK_EQ_INT(dt, ENG_KV_FP8_E4M3);
    PD_CHECK_STATUS(eng_kv_dtype_parse("fp8_e5m2", &dt), PD_OK);
    PD_CHECK_EQ_INT(dt, ENG_KV_FP8_E5M2);
    PD_CHECK_STATUS(eng_kv_dtype_parse("auto", &dt), PD_OK);
    PD_CHECK_EQ_INT(dt, ENG_KV_AUTO);
    PD_CHECK_STATUS(eng_kv_dtype_parse("fp16", &dt), PD_ERR_INVAL);
    PD_CHECK_EQ_INT(dt, ENG_KV_AUTO); /* untouched on failure */
    size_t f32 = eng_forward_block_bytes(c, BS);
    PD_CHECK_EQ_INT(f32, (size_t)c->n_layers * 2 * BS * c->n_kv_heads * c->head_dim * 4);
    PD_CHECK_EQ_INT(eng_forward_block_bytes_dtype(c, BS, ENG_KV_AUTO), f32);
    PD_CHECK_EQ_INT(eng_forward_block_bytes_dtype(c, BS, ENG_KV_FP8_E4M3) * 4, f32);
    PD_CHECK_EQ_INT(eng_forward_block_bytes_dtype(c, BS, ENG_KV_FP8_E5M2) * 4, f32);
    PD_CHECK_EQ_INT(eng_forward_graph_reserve_bytes(c, 0), 0);
    PD_CHECK(eng_forward_graph_reserve_bytes(c, 8) > 0);
    PD_CHECK(eng_forward_graph_reserve_bytes(c, 256) > eng_forward_graph_reserve_bytes(c, 8));
    /* sizes above 512 when asked (by 16), capped at 2048 */
    PD_CHECK(eng_forward_graph_reserve_bytes(c, 768) > eng_forward_graph_reserve_bytes(c, 512));
    PD_CHECK_EQ_INT(eng_forward_graph_reserve_bytes(c, 4096), eng_forward_graph_reserve_bytes(c, 2048));
}

int main(void)
{
    char m[4096];
    if (!test_model_dir("tiny-llama", m, sizeof(m)))
        return 77;
    model_g = test_model_load(m, MB * BS);
    if (model_g == NULL)
        return PD_TEST_REPORT();
    PD_RUN(test_kv_dtype_names_and_sizes);
    PD_RUN(test_graph_opts_ignored_on_cpu);
    PD_RUN(test_logit_rows_gather);
    eng_model_destroy(model_g);
    return PD_TEST_REPORT();
}
