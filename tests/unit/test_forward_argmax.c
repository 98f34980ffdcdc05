/*
 * test_forward_argmax.c - device-side greedy (eng_forward_run_argmax) on the CPU backend,
 * the path the engine takes on every backend: the ids are exactly what the host
 * sampler's greedy pick returns on the full logits of the same step, the rows asked for
 * come back bit-identical to eng_forward_run's, with zero-copy and uploaded weights
 * (PD_FORWARD_COPY_WEIGHTS=1, the device backends' path); and eng_sampler_argmax_only
 * says "argmax only" exactly when nothing but the raw argmax is needed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_backend.h"
#include "eng_forward.h"
#include "eng_model.h"
#include "eng_sampler.h"
#include "pd_test.h"
#include "test_model_util.h"

#define BS 16
#define MB 8
#define NS 5

static eng_model_t *model_g;

/* The greedy pick of the host sampler on a copy of row (params: greedy, nothing else). */
static int32_t host_greedy(eng_sampler_t *s, const float *row, int64_t V)
{
    eng_sampling_params_t p;
    eng_sample_ctx_t ctx = {0};
    eng_sample_result_t res = {0};
    float *w = malloc((size_t)V * sizeof(float));
    int32_t tok = -2;
    eng_sampling_params_init(&p);
    p.temperature = 0.0f;
    ctx.params = &p;
    if (w == NULL)
        return -3;
    memcpy(w, row, (size_t)V * sizeof(float));
    if (eng_sampler_sample(s, w, &ctx, &res) == PD_OK)
        tok = res.token;
    free(w);
    eng_sampling_params_cleanup(&p);
    return tok;
}

/* Prefill NS sequences, then 6 decode steps; at each decode step run the same batch
 * first through eng_forward_run_argmax (a need pattern that changes per step) and then
 * through eng_forward_run (the same KV slots get the same values again). */
static void run(bool copy_weights)
{
    const eng_backend_ops_t *ops = eng_backend_get("cpu");
    eng_backend_opts_t bo = {.n_threads = 2, .mm_mode = KCPU_MM_EXACT};
    eng_backend_t *be = NULL;
    eng_forward_t *fw = NULL;
    eng_sampler_t *smp = NULL;
    const int64_t V = eng_model_config(model_g)->vocab_size;
    eng_forward_opts_t fo = {.block_size = BS, .n_blocks = NS * MB, .max_tokens = 96, .max_seqs = NS,
                             .max_blocks_per_seq = MB};
    int32_t tables[NS * MB], ctx[NS], tok[96], pos[96], seq[96], rows[NS], ids[NS];
    int64_t slots[96];
    uint8_t need[NS];
    float *a = malloc((size_t)NS * V * sizeof(float)), *full = malloc((size_t)NS * V * sizeof(float));
    int T = 0, n_ids = 0, n_rows = 0;

    PD_CHECK(a != NULL && full != NULL);
    PD_CHECK_STATUS(ops->init(&bo, &be), PD_OK);
    PD_CHECK_STATUS(eng_sampler_create((int)V, &smp), PD_OK);
    if (copy_weights)
        setenv("PD_FORWARD_COPY_WEIGHTS", "1", 1);
    if (be != NULL)
        PD_CHECK_STATUS(eng_forward_create(model_g, ops, be, &fo, &fw), PD_OK);
    unsetenv("PD_FORWARD_COPY_WEIGHTS");
    if (fw == NULL || smp == NULL || a == NULL || full == NULL)
        goto out;
    for (int i = 0; i < NS * MB; i++)
        tables[i] = i;
    for (int s = 0; s < NS; s++) {
        ctx[s] = 3 + 4 * s;
        for (int p = 0; p < ctx[s]; p++, T++) {
            tok[T] = (int32_t)((T * 37 + 11) % V);
            pos[T] = p;
            seq[T] = s;
            slots[T] = (int64_t)s * MB * BS + p;
        }
        rows[s] = T - 1;
    }
    /* the prefill itself through the argmax path, every row wanted */
    eng_fwd_batch_t pb = {T, tok, pos, seq, slots, NS, tables, ctx, NS, rows};
    PD_CHECK_STATUS(eng_forward_run_argmax(fw, &pb, NULL, a, ids), PD_OK);
    for (int s = 0; s < NS; s++) {
        PD_CHECK_EQ_INT(ids[s], host_greedy(smp, a + (size_t)s * V, V));
        n_ids++;
    }
    for (int d = 0; d < 6 && !pd_test_failed_g; d++) {
        for (int s = 0; s < NS; s++) {
            tok[s] = ids[s]; /* greedy continuation */
            pos[s] = ctx[s];
            seq[s] = s;
            rows[s] = s;
            slots[s] = (int64_t)s * MB * BS + ctx[s];
            ctx[s]++;
            need[s] = (uint8_t)(((d + s) % 3) == 0); /* step 0: rows 0, 3; then others */
        }
        eng_fwd_batch_t db = {NS, tok, pos, seq, slots, NS, tables, ctx, NS, rows};
        for (size_t i = 0; i < (size_t)NS * V; i++)
            a[i] = NAN; /* poison: needed rows must be written */
        for (int s = 0; s < NS; s++)
            ids[s] = -7;
        PD_CHECK_STATUS(eng_forward_run_argmax(fw, &db, need, a, ids), PD_OK);
        PD_CHECK_STATUS(eng_forward_run(fw, &db, full), PD_OK);
        for (int s = 0; s < NS; s++) {
            const float *fr = full + (size_t)s * V;
            PD_CHECK_EQ_INT(ids[s], host_greedy(smp, fr, V));
            n_ids++;
            if (need[s]) {
                PD_CHECK(memcmp(a + (size_t)s * V, fr, (size_t)V * sizeof(float)) == 0);
                n_rows++;
            }
        }
    }
    printf("  %s weights: %d ids equal to the host greedy pick, %d rows bit-identical\n",
           copy_weights ? "uploaded" : "zero-copy", n_ids, n_rows);
    PD_CHECK_EQ_INT(n_ids, NS * 7);

    /* device sampling: one more decode step, rows sampled with their params and
     * uniforms (one greedy), against kcpu_sample_rows on that step's full logits */
    {
        const kcpu_sample_params_t sp[NS] = {{0.8f, 20, 1.0f, 0.0f}, {0.0f, 0, 1.0f, 0.0f}, {1.2f, 0, 0.9f, 0.0f},
                                             {1.0f, 0, 1.0f, 0.05f}, {0.7f, 10, 0.8f, 0.01f}};
        int same = 0;
        for (int r = 0; r < 4 && !pd_test_failed_g; r++) {
            float u[NS];
            int32_t want[NS];
            for (int s = 0; s < NS; s++) {
                u[s] = (float)((s * 7 + r * 3) % 10) / 10.0f + 0.05f;
                need[s] = (uint8_t)(s == 2);
            }
            eng_fwd_batch_t db = {NS, tok, pos, seq, slots, NS, tables, ctx, NS, rows};
            PD_CHECK_STATUS(eng_forward_run_sample(fw, &db, need, sp, u, a, ids), PD_OK);
            PD_CHECK_STATUS(eng_forward_run(fw, &db, full), PD_OK);
            kcpu_sample_rows(full, NS, V, sp, u, want);
            for (int s = 0; s < NS; s++)
                same += ids[s] == want[s];
            PD_CHECK(memcmp(a + 2 * (size_t)V, full + 2 * (size_t)V, (size_t)V * sizeof(float)) == 0);
        }
        /* and a greedy step after it: the rows are greedy again */
        eng_fwd_batch_t db = {NS, tok, pos, seq, slots, NS, tables, ctx, NS, rows};
        PD_CHECK_STATUS(eng_forward_run_argmax(fw, &db, NULL, a, ids), PD_OK);
        for (int s = 0; s < NS; s++)
            PD_CHECK_EQ_INT(ids[s], host_greedy(smp, a + (size_t)s * V, V));
        printf("  device sampling: %d/%d tokens equal to kcpu_sample_rows on the full logits\n", same, 4 * NS);
        PD_CHECK_EQ_INT(same, 4 * NS);
    }
out:
    eng_forward_destroy(fw);
    if (be)
        ops->shutdown(be);
    eng_sampler_destroy(smp);
    free(a);
    free(full);
}

PD_TEST(test_argmax_equals_host_greedy)
{
    run(false);
    run(true);
}

PD_TEST(test_argmax_only_predicate)
{
    eng_sampling_params_t p;
    eng_sample_ctx_t ctx = {0};
    eng_sample_result_t res;
    const int32_t eos[1] = {2}, out[3] = {5, 6, 7};

    eng_sampling_params_init(&p);
    ctx.params = &p;
    ctx.eos_ids = eos;
    ctx.n_eos = 1;
    ctx.output = out;
    ctx.n_output = 3;
    PD_CHECK(!eng_sampler_argmax_only(&ctx)); /* temperature 1.0 by default */
    p.temperature = 0.0f;
    PD_CHECK(eng_sampler_argmax_only(&ctx));
    p.logprobs = 0; /* the sampled token's logprob */
    PD_CHECK(!eng_sampler_argmax_only(&ctx));
    p.logprobs = -1;
    p.n = 1;
    p.best_of = 2; /* ranking by cumulative logprob */
    PD_CHECK(!eng_sampler_argmax_only(&ctx));
    p.best_of = 0;
    p.repetition_penalty = 1.1f;
    PD_CHECK(!eng_sampler_argmax_only(&ctx));
    p.repetition_penalty = 1.0f;
    p.frequency_penalty = 0.5f;
    PD_CHECK(!eng_sampler_argmax_only(&ctx));
    p.frequency_penalty = 0.0f;
    p.presence_penalty = -0.5f;
    PD_CHECK(!eng_sampler_argmax_only(&ctx));
    p.presence_penalty = 0.0f;
    PD_CHECK(eng_sampler_argmax_only(&ctx));
    /* min_tokens bans EOS below it, unless ignore_eos (and no stop_token_ids) */
    p.min_tokens = 4;
    PD_CHECK(!eng_sampler_argmax_only(&ctx));
    p.ignore_eos = true;
    PD_CHECK(eng_sampler_argmax_only(&ctx));
    PD_CHECK_STATUS(eng_sampling_params_add_stop_token(&p, 9), PD_OK);
    PD_CHECK(!eng_sampler_argmax_only(&ctx));
    ctx.n_output = 4; /* reached: nothing banned any more */
    PD_CHECK(eng_sampler_argmax_only(&ctx));
    PD_CHECK_STATUS(eng_sampling_params_add_logit_bias(&p, 3, 1.0f), PD_OK);
    PD_CHECK(!eng_sampler_argmax_only(&ctx));
    eng_sampling_params_cleanup(&p);
    eng_sampling_params_init(&p);
    p.temperature = 0.0f;
    PD_CHECK_STATUS(eng_sampling_params_add_allowed(&p, 3), PD_OK);
    PD_CHECK(!eng_sampler_argmax_only(&ctx));
    eng_sampling_params_cleanup(&p);
    eng_sampling_params_init(&p);
    p.temperature = 0.0f;
    {
        const int32_t bw[2] = {6, 7};
        PD_CHECK_STATUS(eng_sampling_params_add_bad_word(&p, bw, 2), PD_OK);
    }
    PD_CHECK(!eng_sampler_argmax_only(&ctx));
    eng_sampling_params_cleanup(&p);
    /* the result filled as eng_sampler_sample fills a greedy one without logprobs */
    memset(&res, 0x55, sizeof(res));
    eng_sampler_argmax_result(42, &res);
    PD_CHECK_EQ_INT(res.token, 42);
    PD_CHECK(isnan(res.logprob));
    PD_CHECK_EQ_INT(res.rank, 0);
    PD_CHECK_EQ_INT(res.n_top, 0);
}

int main(void)
{
    char m[4096];
    PD_RUN(test_argmax_only_predicate);
    if (!test_model_dir("tiny-llama", m, sizeof(m)))
        return PD_TEST_REPORT();
    model_g = test_model_load(m, MB * BS);
    if (model_g != NULL)
        PD_RUN(test_argmax_equals_host_greedy);
    eng_model_destroy(model_g);
    return PD_TEST_REPORT();
}
