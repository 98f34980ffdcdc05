/*
 * test_sched.c - scheduler: budgets, chunked prefill, max-num-seqs, priorities,
 * preemption (recompute and swap) and resume, abort from every state, n > 1 with
 * copy-on-write, remote-KV admission, max-model-len and stop conditions.
 *
 * A fake model drives it: the token after position p is a deterministic function
 * of (p, previous token), and the simulated KV cache stores in each slot a digest
 * of the whole token prefix up to that position.  Before every "forward" the
 * driver checks the KV of every position the sequence claims to have computed,
 * through its block table, so a wrong prefix hit, a missed copy-on-write or a
 * bad swap shows up as a KV mismatch, and preempted runs must reproduce the
 * token streams of unpreempted ones exactly.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eng_sampler.h"
#include "eng_sched.h"
#include "pd_test.h"
#include "pd_util.h"

#define VOCAB 1000
#define EOS 1
#define MAXBLK 4096

static uint64_t kv_dev[MAXBLK * 64], kv_host[MAXBLK * 64];
static int g_bs;
static int g_kv_errors;

static int32_t model_next(int pos, int32_t prev) { return (int32_t)((prev * 31 + pos * 17 + 5) % 990 + 5); }

/* Sample j of a group's first token: sibling j diverges from the model by design. */
static int32_t sibling_token(int32_t t, int j) { return j == 0 ? t : (t + 37 * j) % 990 + 5; }

static eng_preempt_mode_t g_mode = ENG_PREEMPT_RECOMPUTE;

static uint64_t digest(const eng_request_t *r, int pos)
{
    uint64_t v = 0xabcdef ^ r->salt_hash;
    for (int i = 0; i <= pos; i++)
        v = (v ^ (uint64_t)(uint32_t)r->tokens[i]) * 0x100000001b3ull + 7;
    return v;
}

static uint64_t *slot(const int32_t *ids, int pos) { return &kv_dev[ids[pos / g_bs] * g_bs + pos % g_bs]; }

static void copy_pairs(uint64_t *dst, const uint64_t *src, const eng_block_copy_t *p, int n)
{
    for (int i = 0; i < n; i++)
        memcpy(dst + p[i].dst * g_bs, src + p[i].src * g_bs, (size_t)g_bs * sizeof(uint64_t));
}

/* Simulated transfer of remote KV into a request's blocks. */
static void remote_write(eng_request_t *r, int from, int to)
{
    for (int p = from; p < to; p++)
        *slot(r->table.ids, p) = digest(r, p);
}

typedef struct run_stats {
    int steps;
    int max_tokens_in_step;
    int max_seqs_in_step;
    int n_copies, n_swap_out, n_swap_in, n_preempted;
    int finished;
} run_stats_t;

/* One engine iteration against the fake model.  Returns the batch. */
static eng_batch_t *one_step(eng_sched_t *s, run_stats_t *rs, int budget)
{
    eng_batch_t *b = eng_sched_step(s);
    int32_t samples[1024];

    rs->steps++;
    if (b->n_tokens > rs->max_tokens_in_step)
        rs->max_tokens_in_step = b->n_tokens;
    if (b->n_seqs > rs->max_seqs_in_step)
        rs->max_seqs_in_step = b->n_seqs;
    PD_CHECK(b->n_tokens <= budget);
    rs->n_copies += b->n_copies;
    rs->n_swap_out += b->n_swap_out;
    rs->n_swap_in += b->n_swap_in;
    rs->n_preempted += b->n_preempted;
    copy_pairs(kv_host, kv_dev, b->swap_out, b->n_swap_out);
    copy_pairs(kv_dev, kv_host, b->swap_in, b->n_swap_in);
    copy_pairs(kv_dev, kv_dev, b->copies, b->n_copies);
    int sum = 0;
    bool multi_seen = false;
    for (int i = 0; i < b->n_seqs; i++) {
        eng_batch_seq_t *q = &b->seqs[i];
        eng_request_t *r = q->req;
        sum += q->n_tokens;
        /* one-token seqs first (eng_batch_t: attention runs them on its decode kernel),
         * and each request knows its slot */
        if (q->n_tokens == 1)
            PD_CHECK(!multi_seen);
        multi_seen |= q->n_tokens > 1;
        PD_CHECK_EQ_INT(r->batch_slot, i);
        PD_CHECK(q->tokens == r->tokens + q->start_pos);
        PD_CHECK(q->start_pos + q->n_tokens <= r->n_tokens);
        PD_CHECK(q->n_blocks * g_bs >= q->start_pos + q->n_tokens);
        PD_CHECK(q->want_logits == (q->start_pos + q->n_tokens == r->n_tokens));
        /* every earlier position must hold the right KV */
        for (int p = 0; p < q->start_pos; p++)
            if (*slot(q->block_table, p) != digest(r, p)) {
                g_kv_errors++;
                break;
            }
        for (int p = q->start_pos; p < q->start_pos + q->n_tokens; p++)
            *slot(q->block_table, p) = digest(r, p);
        for (int j = 0; j < q->n_samples; j++) {
            int pos = r->n_tokens; /* position of the token being sampled */
            samples[q->sample_offset + j] = sibling_token(model_next(pos, r->tokens[pos - 1]), j);
        }
    }
    PD_CHECK_EQ_INT(sum, b->n_tokens);
    PD_CHECK_STATUS(eng_sched_update(s, b, samples), PD_OK);
    rs->finished += b->n_finished;
    return b;
}

static void run_to_idle(eng_sched_t *s, run_stats_t *rs, int budget, int max_steps)
{
    while (!eng_sched_idle(s) && rs->steps < max_steps)
        one_step(s, rs, budget);
    PD_CHECK(eng_sched_idle(s));
}

static int g_long_prefill; /* cfg.long_prefill_token_threshold of the next mk_sched */

static eng_sched_t *mk_sched(int n_blocks, int bs, int budget, int max_seqs, int max_len, bool cache, int host)
{
    eng_sched_cfg_t cfg;
    static const int32_t eos[1] = {EOS};
    eng_sched_t *s = NULL;

    eng_sched_cfg_init(&cfg);
    cfg.blocks.n_blocks = n_blocks;
    cfg.blocks.block_size = bs;
    cfg.blocks.enable_prefix_caching = cache;
    cfg.blocks.n_host_blocks = host;
    cfg.max_num_batched_tokens = budget;
    cfg.max_num_seqs = max_seqs;
    cfg.max_model_len = max_len;
    cfg.eos_ids = eos;
    cfg.n_eos = 1;
    cfg.preemption_mode = g_mode;
    cfg.long_prefill_token_threshold = g_long_prefill;
    g_bs = bs;
    PD_CHECK_STATUS(eng_sched_create(&cfg, &s), PD_OK);
    return s;
}

static eng_request_t *mk_req(const char *id, int n_prompt, int seed, int max_tokens, int n, int priority)
{
    int32_t prompt[4096];
    eng_sampling_params_t p;
    eng_request_t *r = NULL;

    for (int i = 0; i < n_prompt; i++)
        prompt[i] = 5 + (seed * 131 + i * (i % 7 == 0 ? 3 : 1)) % 900;
    eng_sampling_params_init(&p);
    p.max_tokens = max_tokens;
    p.n = n;
    PD_CHECK_STATUS(eng_request_create(id, prompt, n_prompt, &p, priority, NULL, 0, NULL, &r), PD_OK);
    eng_sampling_params_cleanup(&p);
    return r;
}

/* The tokens a request must produce, computed directly from the fake model. */
static void expect_stream(const eng_request_t *r, int32_t *out, int n)
{
    int32_t prev = r->tokens[r->n_prompt - 1];
    for (int i = 0; i < n; i++) {
        out[i] = model_next(r->n_prompt + i, prev);
        prev = out[i];
    }
}

static void check_stream(const eng_request_t *r)
{
    int32_t want[4096];
    int n = eng_request_n_output(r);
    expect_stream(r, want, n);
    PD_CHECK(memcmp(want, eng_request_output(r), (size_t)n * sizeof(int32_t)) == 0);
}

PD_TEST(test_chunked_prefill)
{
    eng_sched_t *s = mk_sched(64, 16, 32, 8, 512, false, 0);
    eng_request_t *a = mk_req("a", 100, 1, 4, 1, 0);
    run_stats_t rs = {0};

    PD_CHECK_STATUS(eng_sched_add(s, a), PD_OK);
    int chunks[4] = {32, 32, 32, 4};
    for (int i = 0; i < 4; i++) {
        eng_batch_t *b = one_step(s, &rs, 32);
        PD_CHECK_EQ_INT(b->n_seqs, 1);
        PD_CHECK_EQ_INT(b->seqs[0].n_tokens, chunks[i]);
        PD_CHECK_EQ_INT(b->seqs[0].start_pos, 32 * i);
        PD_CHECK_EQ_INT(b->seqs[0].want_logits, i == 3);
        PD_CHECK(b->seqs[0].is_prefill);
    }
    PD_CHECK_EQ_INT(eng_request_n_output(a), 1);
    PD_CHECK(a->t_first_token != 0 && a->t_scheduled != 0);
    /* a second request arrives: decode of a (1 token) goes first, b gets the rest */
    eng_request_t *b2 = mk_req("b", 50, 2, 2, 1, 0);
    PD_CHECK_STATUS(eng_sched_add(s, b2), PD_OK);
    eng_batch_t *b = one_step(s, &rs, 32);
    PD_CHECK_EQ_INT(b->n_seqs, 2);
    PD_CHECK(b->seqs[0].req == a && b->seqs[0].n_tokens == 1 && !b->seqs[0].is_prefill);
    PD_CHECK(b->seqs[1].req == b2 && b->seqs[1].n_tokens == 31);
    PD_CHECK_EQ_INT(b->n_tokens, 32);
    PD_CHECK_EQ_INT(b->n_decode_seqs, 1);
    PD_CHECK_EQ_INT(b->n_prefill_seqs, 1);
    run_to_idle(s, &rs, 32, 100);
    PD_CHECK_EQ_INT(a->state, ENG_REQ_FINISHED_LENGTH);
    PD_CHECK_EQ_INT(eng_request_n_output(a), 4);
    PD_CHECK_EQ_INT(eng_request_n_output(b2), 2);
    check_stream(a);
    check_stream(b2);
    PD_CHECK_EQ_INT(g_kv_errors, 0);
    PD_CHECK_EQ_INT(eng_block_num_free(eng_sched_blocks(s)), 64);
    eng_request_destroy(a);
    eng_request_destroy(b2);
    eng_sched_destroy(s);
}

/* A request admitted first still prefilling (chunks capped by the long-prefill threshold)
 * while one admitted after it already decodes: the batch lists the decoding one first
 * (one-token seqs lead, eng_batch_t), and both streams and the KV stay right. */
PD_TEST(test_decode_seqs_lead)
{
    g_long_prefill = 32;
    eng_sched_t *s = mk_sched(64, 16, 64, 8, 512, false, 0);
    g_long_prefill = 0;
    eng_request_t *c = mk_req("c", 200, 3, 3, 1, 0), *d = mk_req("d", 20, 4, 6, 1, 0);
    run_stats_t rs = {0};

    PD_CHECK_STATUS(eng_sched_add(s, c), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, d), PD_OK);
    eng_batch_t *b = one_step(s, &rs, 64);
    PD_CHECK_EQ_INT(b->n_seqs, 2);
    PD_CHECK(b->seqs[0].req == c && b->seqs[0].n_tokens == 32);
    PD_CHECK(b->seqs[1].req == d && b->seqs[1].n_tokens == 20);
    b = one_step(s, &rs, 64);
    PD_CHECK_EQ_INT(b->n_seqs, 2);
    PD_CHECK(b->seqs[0].req == d && b->seqs[0].n_tokens == 1); /* admitted second, listed first */
    PD_CHECK(b->seqs[1].req == c && b->seqs[1].n_tokens == 32);
    PD_CHECK_EQ_INT(b->n_decode_seqs, 1);
    run_to_idle(s, &rs, 64, 100);
    PD_CHECK_EQ_INT(eng_request_n_output(c), 3);
    PD_CHECK_EQ_INT(eng_request_n_output(d), 6);
    check_stream(c);
    check_stream(d);
    PD_CHECK_EQ_INT(g_kv_errors, 0);
    PD_CHECK_EQ_INT(eng_block_num_free(eng_sched_blocks(s)), 64);
    eng_request_destroy(c);
    eng_request_destroy(d);
    eng_sched_destroy(s);
}

PD_TEST(test_no_chunking_and_limits)
{
    eng_sched_cfg_t cfg;
    eng_sched_t *s;
    eng_sched_cfg_init(&cfg);
    cfg.blocks.n_blocks = 64;
    cfg.blocks.block_size = 16;
    cfg.max_num_batched_tokens = 64;
    cfg.max_model_len = 256;
    cfg.max_num_seqs = 2;
    cfg.enable_chunked_prefill = false;
    g_bs = 16;
    s = NULL;
    PD_CHECK_STATUS(eng_sched_create(&cfg, &s), PD_ERR_INVAL); /* budget < max-model-len */
    cfg.max_model_len = 64;
    PD_CHECK_STATUS(eng_sched_create(&cfg, &s), PD_OK);
    eng_request_t *big = mk_req("big", 100, 1, 4, 1, 0), *toolong = mk_req("long", 300, 1, 4, 1, 0);
    PD_CHECK_STATUS(eng_sched_add(s, big), PD_ERR_RANGE);
    PD_CHECK_STATUS(eng_sched_add(s, toolong), PD_ERR_RANGE);
    eng_request_t *r[3] = {mk_req("r0", 50, 1, 3, 1, 0), mk_req("r1", 50, 2, 3, 1, 0), mk_req("r2", 10, 3, 3, 1, 0)};
    for (int i = 0; i < 3; i++)
        PD_CHECK_STATUS(eng_sched_add(s, r[i]), PD_OK);
    run_stats_t rs = {0};
    eng_batch_t *b = one_step(s, &rs, 64);
    /* r1 (50) does not fit the 14 tokens left whole, and fcfs does not skip it */
    PD_CHECK_EQ_INT(b->n_seqs, 1);
    PD_CHECK_EQ_INT(b->seqs[0].n_tokens, 50);
    b = one_step(s, &rs, 64);
    PD_CHECK_EQ_INT(b->n_seqs, 2); /* r0 decode + r1 whole */
    b = one_step(s, &rs, 64);
    PD_CHECK_EQ_INT(b->n_seqs, 2); /* max_num_seqs = 2: r2 waits */
    run_to_idle(s, &rs, 64, 100);
    PD_CHECK(rs.max_seqs_in_step <= 2);
    for (int i = 0; i < 3; i++) {
        check_stream(r[i]);
        eng_request_destroy(r[i]);
    }
    PD_CHECK_EQ_INT(g_kv_errors, 0);
    eng_request_destroy(big);
    eng_request_destroy(toolong);
    eng_sched_destroy(s);
}

PD_TEST(test_priority)
{
    eng_sched_cfg_t cfg;
    eng_sched_t *s;
    eng_sched_cfg_init(&cfg);
    cfg.blocks.n_blocks = 64;
    cfg.blocks.block_size = 16;
    cfg.max_num_batched_tokens = 40;
    cfg.max_model_len = 256;
    cfg.policy = ENG_SCHED_PRIORITY;
    g_bs = 16;
    PD_CHECK_STATUS(eng_sched_create(&cfg, &s), PD_OK);
    eng_request_t *lo = mk_req("lo", 40, 1, 2, 1, 10), *hi = mk_req("hi", 40, 2, 2, 1, 0),
                  *mid = mk_req("mid", 40, 3, 2, 1, 5), *hi2 = mk_req("hi2", 40, 4, 2, 1, 0);
    PD_CHECK_STATUS(eng_sched_add(s, lo), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, hi), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, mid), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, hi2), PD_OK);
    run_stats_t rs = {0};
    eng_batch_t *b = one_step(s, &rs, 40);
    PD_CHECK(b->n_seqs == 1 && b->seqs[0].req == hi);
    b = one_step(s, &rs, 40);
    /* hi decodes (1), then hi2 (same priority, later arrival) gets 39 */
    PD_CHECK(b->n_seqs == 2 && b->seqs[0].req == hi && b->seqs[1].req == hi2);
    run_to_idle(s, &rs, 40, 100);
    PD_CHECK(hi->t_first_token <= hi2->t_first_token);
    PD_CHECK(hi2->t_first_token <= mid->t_first_token);
    PD_CHECK(mid->t_first_token <= lo->t_first_token);
    eng_request_t *all[4] = {lo, hi, mid, hi2};
    for (int i = 0; i < 4; i++) {
        check_stream(all[i]);
        eng_request_destroy(all[i]);
    }
    eng_sched_destroy(s);
}

/* A mixed workload; returns the output streams concatenated via out (per request). */
static void workload(int n_blocks, eng_preempt_mode_t mode, int host, bool cache, int32_t outs[][64],
                     run_stats_t *rs_p)
{
    eng_sched_cfg_t cfg;
    eng_sched_t *s;
    enum { NR = 10 };
    eng_request_t *r[NR];

    eng_sched_cfg_init(&cfg);
    cfg.blocks.n_blocks = n_blocks;
    cfg.blocks.block_size = 8;
    cfg.blocks.enable_prefix_caching = cache;
    cfg.blocks.n_host_blocks = host;
    cfg.max_num_batched_tokens = 64;
    cfg.max_num_seqs = 8;
    cfg.max_model_len = 128;
    cfg.preemption_mode = mode;
    g_bs = 8;
    PD_CHECK_STATUS(eng_sched_create(&cfg, &s), PD_OK);
    for (int i = 0; i < NR; i++) {
        char id[16];
        snprintf(id, sizeof(id), "w%d", i);
        r[i] = mk_req(id, 10 + (i * 13) % 50, i % 3, 20 + (i * 7) % 30, 1, 0);
        PD_CHECK_STATUS(eng_sched_add(s, r[i]), PD_OK);
    }
    run_stats_t rs = {0};
    run_to_idle(s, &rs, 64, 2000);
    for (int i = 0; i < NR; i++) {
        PD_CHECK_EQ_INT(r[i]->state, ENG_REQ_FINISHED_LENGTH);
        memset(outs[i], 0, sizeof(outs[i]));
        memcpy(outs[i], eng_request_output(r[i]), (size_t)eng_request_n_output(r[i]) * sizeof(int32_t));
        check_stream(r[i]);
        eng_request_destroy(r[i]);
    }
    PD_CHECK_EQ_INT(eng_block_num_free(eng_sched_blocks(s)), n_blocks);
    PD_CHECK_EQ_INT(eng_block_num_host_free(eng_sched_blocks(s)), host);
    PD_CHECK_STATUS(eng_block_check(eng_sched_blocks(s)), PD_OK);
    eng_sched_destroy(s);
    *rs_p = rs;
}

PD_TEST(test_preemption_same_stream)
{
    static int32_t ref[10][64], got[10][64];
    run_stats_t rs;

    g_kv_errors = 0;
    workload(256, ENG_PREEMPT_RECOMPUTE, 0, true, ref, &rs);
    PD_CHECK_EQ_INT(rs.n_preempted, 0);
    workload(16, ENG_PREEMPT_RECOMPUTE, 0, true, got, &rs);
    printf("  recompute: %d preemptions in %d steps\n", rs.n_preempted, rs.steps);
    PD_CHECK(rs.n_preempted > 0);
    PD_CHECK(memcmp(ref, got, sizeof(ref)) == 0);
    workload(16, ENG_PREEMPT_RECOMPUTE, 0, false, got, &rs);
    PD_CHECK(rs.n_preempted > 0);
    PD_CHECK(memcmp(ref, got, sizeof(ref)) == 0);
    workload(16, ENG_PREEMPT_SWAP, 64, true, got, &rs);
    printf("  swap: %d preemptions, %d blocks out, %d in\n", rs.n_preempted, rs.n_swap_out, rs.n_swap_in);
    PD_CHECK(rs.n_preempted > 0 && rs.n_swap_out > 0 && rs.n_swap_in > 0);
    PD_CHECK(memcmp(ref, got, sizeof(ref)) == 0);
    /* swap with too little host space falls back to recompute */
    workload(16, ENG_PREEMPT_SWAP, 2, true, got, &rs);
    PD_CHECK(memcmp(ref, got, sizeof(ref)) == 0);
    PD_CHECK_EQ_INT(g_kv_errors, 0);
}

PD_TEST(test_abort_each_state)
{
    g_mode = ENG_PREEMPT_SWAP;
    eng_sched_t *s = mk_sched(12, 8, 64, 8, 96, true, 16);
    g_mode = ENG_PREEMPT_RECOMPUTE;
    eng_block_mgr_t *m = eng_sched_blocks(s);
    run_stats_t rs = {0};

    /* WAITING */
    eng_request_t *w = mk_req("w", 20, 1, 10, 1, 0);
    PD_CHECK_STATUS(eng_sched_add(s, w), PD_OK);
    PD_CHECK(eng_sched_find(s, "w") == w);
    PD_CHECK_STATUS(eng_sched_abort(s, w), PD_OK);
    PD_CHECK_EQ_INT(w->state, ENG_REQ_FINISHED_ABORTED);
    PD_CHECK_STATUS(eng_sched_abort(s, w), PD_ERR_INVAL); /* exactly once */
    PD_CHECK(eng_sched_find(s, "w") == NULL);
    PD_CHECK(eng_sched_idle(s));
    /* RUNNING (mid prefill and decoding) */
    eng_request_t *a = mk_req("a", 40, 2, 30, 1, 0), *b = mk_req("b", 40, 3, 30, 1, 0);
    PD_CHECK_STATUS(eng_sched_add(s, a), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, b), PD_OK);
    one_step(s, &rs, 64);
    PD_CHECK_EQ_INT(a->state, ENG_REQ_RUNNING);
    PD_CHECK_EQ_INT(b->state, ENG_REQ_RUNNING); /* 24 of 40 prefilled */
    PD_CHECK_STATUS(eng_sched_abort(s, b), PD_OK);
    /* preempt a by filling the cache: swap mode with host space -> swapped */
    eng_request_t *c = mk_req("c", 30, 4, 30, 1, 0);
    PD_CHECK_STATUS(eng_sched_add(s, c), PD_OK);
    for (int i = 0; i < 40 && a->state != ENG_REQ_PREEMPTED && c->state != ENG_REQ_PREEMPTED; i++)
        one_step(s, &rs, 64);
    eng_request_t *pre = a->state == ENG_REQ_PREEMPTED ? a : c;
    PD_CHECK_EQ_INT(pre->state, ENG_REQ_PREEMPTED);
    PD_CHECK(pre->swapped);
    PD_CHECK(eng_block_num_host_free(m) < 16);
    PD_CHECK_STATUS(eng_sched_abort(s, pre), PD_OK);
    eng_request_t *other = pre == a ? c : a;
    if (!ENG_REQ_IS_FINISHED(other->state))
        PD_CHECK_STATUS(eng_sched_abort(s, other), PD_OK);
    PD_CHECK(eng_sched_idle(s));
    PD_CHECK_EQ_INT(eng_block_num_free(m), 12);
    PD_CHECK_EQ_INT(eng_block_num_host_free(m), 16);
    /* WAITING_FOR_REMOTE_KV before and after its blocks are reserved */
    eng_request_t *r1 = mk_req("r1", 20, 5, 5, 1, 0), *r2 = mk_req("r2", 20, 6, 5, 1, 0);
    PD_CHECK_STATUS(eng_request_set_remote_kv(r1, 19), PD_OK);
    PD_CHECK_STATUS(eng_request_set_remote_kv(r2, 19), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, r1), PD_OK);
    PD_CHECK_STATUS(eng_sched_abort(s, r1), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, r2), PD_OK);
    eng_batch_t *bt = one_step(s, &rs, 64);
    PD_CHECK_EQ_INT(bt->n_remote_admitted, 1);
    PD_CHECK(eng_block_num_free(m) < 12);
    PD_CHECK_STATUS(eng_sched_abort(s, r2), PD_OK);
    PD_CHECK_STATUS(eng_sched_remote_kv_ready(s, r2, true), PD_ERR_INVAL);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 12);
    PD_CHECK(eng_sched_idle(s));
    PD_CHECK_STATUS(eng_block_check(m), PD_OK);
    eng_request_t *all[] = {w, a, b, c, r1, r2};
    for (unsigned i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        eng_request_destroy(all[i]);
    eng_sched_destroy(s);
}

PD_TEST(test_parallel_sampling)
{
    eng_sched_t *s = mk_sched(64, 4, 64, 16, 128, true, 0);
    eng_request_t *g = mk_req("g", 10, 7, 6, 3, 0);
    run_stats_t rs = {0};

    g_kv_errors = 0;
    PD_CHECK_EQ_INT(g->group_size, 3);
    PD_CHECK_STATUS(eng_sched_add(s, g), PD_OK);
    eng_batch_t *b = one_step(s, &rs, 64);
    PD_CHECK_EQ_INT(b->n_seqs, 1); /* the prompt is prefilled once */
    PD_CHECK_EQ_INT(b->seqs[0].n_samples, 3);
    PD_CHECK_EQ_INT(b->n_samples, 3);
    for (int i = 1; i < 3; i++) {
        eng_request_t *c = eng_request_seq(g, i);
        PD_CHECK_EQ_INT(c->state, ENG_REQ_RUNNING);
        PD_CHECK_EQ_INT(c->table.n, g->table.n);
        PD_CHECK_EQ_INT(c->table.ids[0], g->table.ids[0]);
    }
    PD_CHECK_EQ_INT(eng_block_ref(eng_sched_blocks(s), g->table.ids[0]), 3);
    b = one_step(s, &rs, 64);
    PD_CHECK_EQ_INT(b->n_seqs, 3);
    /* prompt of 10 with block 4: block 2 is shared and partial -> two copies */
    PD_CHECK_EQ_INT(b->n_copies, 2);
    run_to_idle(s, &rs, 64, 100);
    PD_CHECK(eng_request_group_finished(g));
    for (int i = 0; i < 3; i++) {
        eng_request_t *c = eng_request_seq(g, i);
        PD_CHECK_EQ_INT(eng_request_n_output(c), 6);
        /* the fake model's first sample j is offset by 37 j, then follows the model */
        int32_t prev = c->tokens[10];
        PD_CHECK_EQ_INT(prev, sibling_token(model_next(10, c->tokens[9]), i));
        for (int k = 11; k < c->n_tokens; k++) {
            PD_CHECK_EQ_INT(c->tokens[k], model_next(k, prev));
            prev = c->tokens[k];
        }
    }
    PD_CHECK_EQ_INT(g_kv_errors, 0);
    PD_CHECK_EQ_INT(eng_block_num_free(eng_sched_blocks(s)), 64);
    eng_request_destroy(g);
    eng_sched_destroy(s);
}

PD_TEST(test_remote_kv)
{
    eng_sched_t *s = mk_sched(64, 4, 64, 16, 128, true, 0);
    eng_request_t *r = mk_req("r", 18, 9, 3, 1, 0), *f = mk_req("f", 18, 10, 3, 1, 0);
    run_stats_t rs = {0};

    g_kv_errors = 0;
    PD_CHECK_STATUS(eng_request_set_remote_kv(r, 17), PD_OK);
    PD_CHECK_STATUS(eng_request_set_remote_kv(f, 17), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, r), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, f), PD_OK);
    eng_batch_t *b = one_step(s, &rs, 64);
    PD_CHECK_EQ_INT(b->n_seqs, 0);
    PD_CHECK_EQ_INT(b->n_remote_admitted, 2);
    PD_CHECK_EQ_INT(r->state, ENG_REQ_WAITING_FOR_REMOTE_KV);
    PD_CHECK_EQ_INT(r->table.n, 5); /* 18 tokens in blocks of 4 */
    b = one_step(s, &rs, 64);
    PD_CHECK_EQ_INT(b->n_seqs, 0); /* not computed until the KV arrives */
    remote_write(r, r->num_cached_tokens, 17);
    PD_CHECK_STATUS(eng_sched_remote_kv_ready(s, r, true), PD_OK);
    PD_CHECK_STATUS(eng_sched_remote_kv_ready(s, f, false), PD_OK);
    b = one_step(s, &rs, 64);
    PD_CHECK_EQ_INT(b->n_seqs, 2);
    for (int i = 0; i < b->n_seqs; i++) {
        if (b->seqs[i].req == r) {
            PD_CHECK_EQ_INT(b->seqs[i].start_pos, 17); /* only the last prompt token */
            PD_CHECK_EQ_INT(b->seqs[i].n_tokens, 1);
        } else {
            PD_CHECK_EQ_INT(b->seqs[i].start_pos, 0); /* fallback: whole prompt */
            PD_CHECK_EQ_INT(b->seqs[i].n_tokens, 18);
        }
        PD_CHECK(b->seqs[i].want_logits);
    }
    run_to_idle(s, &rs, 64, 100);
    check_stream(r);
    check_stream(f);
    PD_CHECK_EQ_INT(g_kv_errors, 0);
    PD_CHECK_EQ_INT(eng_block_num_free(eng_sched_blocks(s)), 64);
    eng_request_destroy(r);
    eng_request_destroy(f);
    eng_sched_destroy(s);
}

PD_TEST(test_max_model_len_and_stops)
{
    eng_sched_t *s = mk_sched(64, 4, 64, 16, 20, true, 0);
    run_stats_t rs = {0};
    eng_request_t *a = mk_req("a", 15, 1, -1, 1, 0);

    PD_CHECK_STATUS(eng_sched_add(s, a), PD_OK);
    PD_CHECK_EQ_INT(a->max_tokens, 5);
    run_to_idle(s, &rs, 64, 100);
    PD_CHECK_EQ_INT(a->state, ENG_REQ_FINISHED_LENGTH);
    PD_CHECK_EQ_INT(a->n_tokens, 20);
    PD_CHECK_EQ_STR(eng_req_finish_reason(a->state), "length");

    /* stop token: find which token the model emits 2nd and make it a stop id */
    eng_request_t *b = mk_req("b", 8, 2, 16, 1, 0);
    int32_t want[8];
    expect_stream(b, want, 8);
    PD_CHECK_STATUS(eng_sampling_params_add_stop_token(&b->params, want[2]), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, b), PD_OK);
    /* min_tokens suppresses stops below it */
    eng_request_t *c = mk_req("c", 8, 2, 16, 1, 0);
    PD_CHECK_STATUS(eng_sampling_params_add_stop_token(&c->params, want[2]), PD_OK);
    c->params.min_tokens = 5;
    PD_CHECK_STATUS(eng_sched_add(s, c), PD_OK);
    run_to_idle(s, &rs, 64, 100);
    int first = 0;
    while (want[first] != want[2])
        first++;
    PD_CHECK_EQ_INT(b->state, ENG_REQ_FINISHED_STOPPED);
    PD_CHECK_EQ_INT(eng_request_n_output(b), first + 1);
    PD_CHECK_EQ_INT(b->stop_token, want[2]);
    PD_CHECK(eng_request_n_output(c) >= 5);
    if (c->state == ENG_REQ_FINISHED_LENGTH)
        PD_CHECK_EQ_INT(eng_request_n_output(c), 12); /* max-model-len 20 - prompt 8 */
    eng_request_destroy(a);
    eng_request_destroy(b);
    eng_request_destroy(c);
    eng_sched_destroy(s);
}

PD_TEST(test_eos)
{
    eng_sched_t *s = mk_sched(64, 4, 64, 16, 64, true, 0);
    run_stats_t rs = {0};
    /* drive by hand: sample EOS on the 2nd token */
    eng_request_t *a = mk_req("a", 8, 1, 10, 1, 0), *b = mk_req("b", 8, 2, 10, 1, 0);
    b->params.ignore_eos = true;
    PD_CHECK_STATUS(eng_sched_add(s, a), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, b), PD_OK);
    for (int step = 0; step < 3; step++) {
        eng_batch_t *bt = eng_sched_step(s);
        int32_t smp[4];
        for (int i = 0; i < bt->n_samples; i++)
            smp[i] = step == 1 ? EOS : 100 + step;
        PD_CHECK_STATUS(eng_sched_update(s, bt, smp), PD_OK);
        if (step == 1) {
            PD_CHECK_EQ_INT(bt->n_finished, 1);
            PD_CHECK(bt->n_finished == 1 && bt->finished[0] == a);
        }
    }
    PD_CHECK_EQ_INT(a->state, ENG_REQ_FINISHED_STOPPED);
    PD_CHECK_EQ_INT(a->stop_token, EOS);
    PD_CHECK_EQ_INT(b->state, ENG_REQ_RUNNING);
    PD_CHECK_STATUS(eng_sched_abort(s, b), PD_OK);
    (void)rs;
    eng_request_destroy(a);
    eng_request_destroy(b);
    eng_sched_destroy(s);
}

static uint64_t fake_now = 1000000;
static uint64_t fake_clock(void) { return fake_now; }

PD_TEST(test_delay_factor)
{
    eng_sched_cfg_t cfg;
    eng_sched_t *s;
    eng_sched_cfg_init(&cfg);
    cfg.blocks.n_blocks = 64;
    cfg.blocks.block_size = 16;
    cfg.max_num_batched_tokens = 256;
    cfg.max_model_len = 256;
    cfg.delay_factor = 1.0;
    g_bs = 16;
    PD_CHECK_STATUS(eng_sched_create(&cfg, &s), PD_OK);
    eng_sched_set_clock(s, fake_clock);
    eng_request_t *a = mk_req("a", 20, 1, 50, 1, 0);
    a->t_arrival = fake_now;
    PD_CHECK_STATUS(eng_sched_add(s, a), PD_OK);
    int32_t smp[4] = {7, 7, 7, 7};
    eng_batch_t *b = eng_sched_step(s); /* prompt step */
    PD_CHECK_EQ_INT(b->n_seqs, 1);
    eng_sched_update(s, b, smp);
    fake_now += 1000; /* the prompt step took 1000 ns */
    eng_request_t *c = mk_req("c", 20, 2, 5, 1, 0);
    c->t_arrival = fake_now;
    PD_CHECK_STATUS(eng_sched_add(s, c), PD_OK);
    b = eng_sched_step(s); /* c waited 0 < 1.0 * 1000: delayed */
    PD_CHECK_EQ_INT(b->n_seqs, 1);
    eng_sched_update(s, b, smp);
    fake_now += 1500;
    b = eng_sched_step(s); /* waited 1500 > 1000 */
    PD_CHECK_EQ_INT(b->n_seqs, 2);
    eng_sched_update(s, b, smp);
    eng_sched_abort(s, a);
    eng_sched_abort(s, c);
    eng_request_destroy(a);
    eng_request_destroy(c);
    eng_sched_destroy(s);
}

PD_TEST(test_create_limits)
{
    eng_sched_policy_t pol;
    eng_preempt_mode_t mode;
    PD_CHECK_STATUS(eng_sched_policy_parse("priority", &pol), PD_OK);
    PD_CHECK_EQ_INT(pol, ENG_SCHED_PRIORITY);
    PD_CHECK_STATUS(eng_sched_policy_parse("lifo", &pol), PD_ERR_INVAL);
    PD_CHECK_STATUS(eng_preempt_mode_parse("swap", &mode), PD_OK);
    PD_CHECK_EQ_INT(mode, ENG_PREEMPT_SWAP);
    PD_CHECK_STATUS(eng_preempt_mode_parse(NULL, &mode), PD_OK);
    PD_CHECK_EQ_INT(mode, ENG_PREEMPT_RECOMPUTE);

    eng_sched_cfg_t cfg;
    eng_sched_t *s = NULL;
    eng_sched_cfg_init(&cfg);
    cfg.blocks.n_blocks = 4;
    cfg.blocks.block_size = 16;
    cfg.max_model_len = 100; /* needs 7 blocks */
    PD_CHECK_STATUS(eng_sched_create(&cfg, &s), PD_ERR_INVAL);
    PD_CHECK(s == NULL);
}

/* Under the priority policy the victim is the lowest priority (then latest) running
 * sequence, even one already scheduled earlier in the same step. */
PD_TEST(test_priority_preemption)
{
    eng_sched_cfg_t cfg;
    eng_sched_t *s;
    eng_sched_cfg_init(&cfg);
    cfg.blocks.n_blocks = 8;
    cfg.blocks.block_size = 4;
    cfg.max_num_batched_tokens = 64;
    cfg.max_model_len = 32;
    cfg.policy = ENG_SCHED_PRIORITY;
    g_bs = 4;
    g_kv_errors = 0;
    PD_CHECK_STATUS(eng_sched_create(&cfg, &s), PD_OK);
    eng_request_t *lo = mk_req("lo", 10, 1, 12, 1, 5), *hi = mk_req("hi", 14, 2, 12, 1, 0);
    run_stats_t rs = {0};
    PD_CHECK_STATUS(eng_sched_add(s, lo), PD_OK);
    one_step(s, &rs, 64);
    PD_CHECK_STATUS(eng_sched_add(s, hi), PD_OK);
    bool seen = false;
    for (int i = 0; i < 40 && !eng_sched_idle(s); i++) {
        eng_batch_t *b = one_step(s, &rs, 64);
        if (b->n_preempted > 0 && !seen) {
            seen = true;
            PD_CHECK(b->preempted[0] == lo);
            for (int j = 0; j < b->n_seqs; j++)
                PD_CHECK(b->seqs[j].req != lo);
            PD_CHECK(hi->state == ENG_REQ_RUNNING);
        }
    }
    PD_CHECK(seen);
    PD_CHECK(eng_sched_idle(s));
    PD_CHECK(hi->t_last_token < lo->t_last_token || lo->t_last_token == hi->t_last_token);
    check_stream(lo);
    check_stream(hi);
    PD_CHECK_EQ_INT(eng_request_n_output(lo), 12);
    PD_CHECK_EQ_INT(eng_request_n_output(hi), 12);
    PD_CHECK_EQ_INT(g_kv_errors, 0);
    PD_CHECK_EQ_INT(eng_block_num_free(eng_sched_blocks(s)), 8);
    eng_request_destroy(lo);
    eng_request_destroy(hi);
    eng_sched_destroy(s);
}

/* A prefill node's request keeps its blocks after finishing until released. */
PD_TEST(test_keep_blocks)
{
    eng_sched_t *s = mk_sched(32, 4, 64, 8, 64, true, 0);
    eng_request_t *p = mk_req("p", 10, 1, 1, 1, 0), *q = mk_req("q", 10, 2, 1, 1, 0);
    run_stats_t rs = {0};

    p->keep_blocks = true;
    PD_CHECK_STATUS(eng_sched_add(s, p), PD_OK);
    eng_batch_t *b = one_step(s, &rs, 64);
    PD_CHECK_EQ_INT(b->n_finished, 1);
    PD_CHECK_EQ_INT(p->state, ENG_REQ_FINISHED_LENGTH);
    PD_CHECK(p->blocks_held);
    PD_CHECK_EQ_INT(p->table.n, 3);
    PD_CHECK_EQ_INT(eng_block_num_free(eng_sched_blocks(s)), 29);
    PD_CHECK(eng_sched_idle(s));
    PD_CHECK_EQ_INT(eng_sched_num_held(s), 1);
    PD_CHECK(eng_sched_find(s, "p") == p);
    PD_CHECK_STATUS(eng_sched_abort(s, p), PD_ERR_INVAL); /* already finished */
    PD_CHECK_STATUS(eng_sched_release_blocks(s, p), PD_OK);
    PD_CHECK_STATUS(eng_sched_release_blocks(s, p), PD_ERR_INVAL);
    PD_CHECK_EQ_INT(eng_block_num_free(eng_sched_blocks(s)), 32);
    /* destroy releases held blocks too */
    q->keep_blocks = true;
    PD_CHECK_STATUS(eng_sched_add(s, q), PD_OK);
    one_step(s, &rs, 64);
    PD_CHECK(q->blocks_held);
    eng_sched_destroy(s);
    PD_CHECK(!q->blocks_held);
    eng_request_destroy(p);
    eng_request_destroy(q);
}

/* eng_sampler_sample_batch over a real batch: rows in want_logits order, n > 1
 * samples from one row through each sibling's RNG, a failed sample finished
 * between step and update. */
PD_TEST(test_sample_batch)
{
    enum { V = 64 };
    eng_sched_t *s = mk_sched(64, 4, 64, 8, 64, true, 0);
    eng_sampler_t *smp;
    eng_request_t *g = mk_req("g", 6, 1, 4, 3, 0), *a = mk_req("a", 5, 2, 4, 1, 0), *z = mk_req("z", 5, 3, 4, 1, 0);
    float rows[3 * V];
    int32_t out[8];

    PD_CHECK_STATUS(eng_sampler_create(V, &smp), PD_OK);
    g->params.temperature = 1.0f; /* siblings sample from their own RNGs */
    a->params.temperature = 0.0f;
    z->params.temperature = 0.0f;
    PD_CHECK_STATUS(eng_sampling_params_add_allowed(&z->params, 3), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, g), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, a), PD_OK);
    PD_CHECK_STATUS(eng_sched_add(s, z), PD_OK);
    eng_batch_t *b = eng_sched_step(s);
    PD_CHECK_EQ_INT(b->n_seqs, 3);
    PD_CHECK_EQ_INT(b->n_samples, 5);
    for (int i = 0; i < V; i++) {
        rows[i] = 0.0f;          /* g: uniform */
        rows[V + i] = (float)(i == 17); /* a: argmax 17 */
        rows[2 * V + i] = 0.0f;
    }
    rows[2 * V + 3] = -INFINITY; /* z: its only allowed token is masked */
    PD_CHECK_STATUS(eng_sampler_sample_batch(smp, b, rows, V, NULL, 0, out, NULL), PD_ERR_INVAL);
    PD_CHECK_EQ_INT(out[b->seqs[1].sample_offset], 17);
    PD_CHECK_EQ_INT(out[b->seqs[2].sample_offset], -1);
    int o = b->seqs[0].sample_offset;
    PD_CHECK(out[o] >= 0 && out[o + 1] >= 0 && out[o + 2] >= 0);
    PD_CHECK(!(out[o] == out[o + 1] && out[o + 1] == out[o + 2])); /* three RNGs: 1/4096 chance */
    PD_CHECK_STATUS(eng_sched_finish(s, z, ENG_REQ_FINISHED_ERROR), PD_OK);
    PD_CHECK_STATUS(eng_sched_update(s, b, out), PD_OK);
    PD_CHECK_EQ_INT(eng_request_n_output(z), 0);
    PD_CHECK_EQ_INT(eng_request_output(a)[0], 17);
    for (int j = 0; j < 3; j++)
        PD_CHECK_EQ_INT(eng_request_output(eng_request_seq(g, j))[0], out[o + j]);
    eng_sched_abort(s, g);
    eng_sched_abort(s, a);
    PD_CHECK_EQ_INT(eng_block_num_free(eng_sched_blocks(s)), 64);
    eng_request_destroy(g);
    eng_request_destroy(a);
    eng_request_destroy(z);
    eng_sampler_destroy(smp);
    eng_sched_destroy(s);
}

PD_TEST(test_request_basics)
{
    eng_sampling_params_t p;
    eng_request_t *r = NULL;
    eng_rng_t engine_rng;
    int32_t prompt[3] = {5, 6, 7};

    eng_sampling_params_init(&p);
    p.n = 2;
    p.best_of = 3;
    eng_rng_seed(&engine_rng, 1);
    PD_CHECK_STATUS(eng_request_create("grp", prompt, 0, &p, 0, NULL, 0, &engine_rng, &r), PD_ERR_INVAL);
    PD_CHECK_STATUS(eng_request_create("grp", prompt, 3, &p, 0, "salt", 0, &engine_rng, &r), PD_OK);
    PD_CHECK_EQ_INT(r->group_size, 3);
    PD_CHECK_EQ_STR(eng_request_seq(r, 2)->id, "grp-2");
    PD_CHECK(eng_request_seq(r, 2)->parent == r);
    PD_CHECK(eng_request_seq(r, 3) == NULL);
    PD_CHECK(r->salt_hash != 0 && eng_request_seq(r, 1)->salt_hash == r->salt_hash);
    PD_CHECK(eng_rng_next(&r->rng) != eng_rng_next(&eng_request_seq(r, 1)->rng));
    PD_CHECK_STATUS(eng_request_set_remote_kv(r, 3), PD_ERR_INVAL); /* must leave one token */
    for (int i = 0; i < 1000; i++)
        PD_CHECK_STATUS(eng_request_append_token(r, i), PD_OK);
    PD_CHECK_EQ_INT(eng_request_n_output(r), 1000);
    PD_CHECK_EQ_INT(eng_request_output(r)[999], 999);
    PD_CHECK_EQ_INT(r->tokens[2], 7);
    PD_CHECK(!eng_request_group_finished(r));
    for (int i = 0; i < 3; i++)
        eng_request_seq(r, i)->state = ENG_REQ_FINISHED_STOPPED;
    PD_CHECK(eng_request_group_finished(eng_request_seq(r, 1)));
    PD_CHECK_EQ_STR(eng_req_finish_reason(ENG_REQ_FINISHED_LENGTH), "length");
    PD_CHECK(eng_req_finish_reason(ENG_REQ_RUNNING) == NULL);
    eng_request_destroy(r);
    eng_sampling_params_cleanup(&p);
}

/* Every sequence's tokens follow the fake model (sibling j's first token offset). */
static int stream_errors(eng_request_t *root)
{
    int bad = 0;
    for (int j = 0; j < root->group_size; j++) {
        eng_request_t *c = eng_request_seq(root, j);
        for (int k = c->n_prompt; k < c->n_tokens; k++) {
            int32_t want = model_next(k, c->tokens[k - 1]);
            if (k == c->n_prompt)
                want = sibling_token(want, j);
            if (c->tokens[k] != want) {
                bad++;
                break;
            }
        }
    }
    return bad;
}

/* Random arrivals, aborts, n > 1, priorities, remote KV (some transfers fail), a
 * tiny cache and budget so chunking and preemption happen all the time. */
static void random_stress(unsigned seed, eng_sched_policy_t policy, eng_preempt_mode_t mode, bool cache)
{
    enum { MAXLIVE = 64, NBLK = 24, HOST = 16 };
    eng_sched_cfg_t cfg;
    eng_sched_t *s;
    eng_request_t *live[MAXLIVE];
    int due[MAXLIVE]; /* step at which a remote transfer completes, -1 = none */
    int n_live = 0, made = 0, bad_streams = 0, finished = 0, aborted = 0;
    run_stats_t rs = {0};

    eng_sched_cfg_init(&cfg);
    cfg.blocks.n_blocks = NBLK;
    cfg.blocks.block_size = 4;
    cfg.blocks.enable_prefix_caching = cache;
    cfg.blocks.n_host_blocks = HOST;
    cfg.max_num_batched_tokens = 16;
    cfg.max_num_seqs = 6;
    cfg.max_model_len = 64;
    cfg.policy = policy;
    cfg.preemption_mode = mode;
    g_bs = 4;
    g_kv_errors = 0;
    PD_CHECK_STATUS(eng_sched_create(&cfg, &s), PD_OK);
    srand(seed);
    for (int step = 0; step < 4000; step++) {
        if (step < 3000 && n_live < MAXLIVE && rand() % 3 == 0) {
            char id[32];
            snprintf(id, sizeof(id), "s%d", made++);
            int n = rand() % 6 == 0 ? 2 + rand() % 2 : 1;
            eng_request_t *r = mk_req(id, 1 + rand() % 30, rand() % 4, 1 + rand() % 20, n, rand() % 3);
            due[n_live] = -1;
            if (n == 1 && r->n_prompt > 1 && rand() % 5 == 0)
                eng_request_set_remote_kv(r, r->n_prompt - 1);
            PD_CHECK_STATUS(eng_sched_add(s, r), PD_OK);
            live[n_live++] = r;
        }
        if (n_live > 0 && rand() % 40 == 0) {
            int i = rand() % n_live;
            if (!ENG_REQ_IS_FINISHED(live[i]->state)) {
                PD_CHECK_STATUS(eng_sched_abort(s, live[i]), PD_OK);
                aborted++;
            }
        }
        /* remote transfers that are due */
        for (int i = 0; i < n_live; i++) {
            eng_request_t *r = live[i];
            if (due[i] >= 0 && step >= due[i]) {
                due[i] = -1;
                if (r->state != ENG_REQ_WAITING_FOR_REMOTE_KV)
                    continue; /* aborted meanwhile */
                bool ok = rand() % 5 != 0;
                if (ok)
                    remote_write(r, r->num_cached_tokens, r->n_remote_tokens);
                PD_CHECK_STATUS(eng_sched_remote_kv_ready(s, r, ok), PD_OK);
            }
        }
        eng_batch_t *b = one_step(s, &rs, 16);
        for (int i = 0; i < b->n_remote_admitted; i++)
            for (int j = 0; j < n_live; j++)
                if (live[j] == b->remote_admitted[i])
                    due[j] = step + 1 + rand() % 5;
        /* retire finished groups */
        for (int i = 0; i < n_live;) {
            if (eng_request_group_finished(live[i])) {
                bad_streams += stream_errors(live[i]);
                finished++;
                eng_request_destroy(live[i]);
                live[i] = live[n_live - 1];
                due[i] = due[n_live - 1];
                n_live--;
            } else {
                i++;
            }
        }
        if (step % 50 == 0)
            PD_CHECK_STATUS(eng_block_check(eng_sched_blocks(s)), PD_OK);
        if (step >= 3000 && n_live == 0)
            break;
    }
    printf("  seed %u policy %d mode %d cache %d: %d requests, %d aborted, %d preemptions, %d copies, "
           "%d swapped blocks, %d left\n",
           seed, policy, mode, cache, made, aborted, rs.n_preempted, rs.n_copies, rs.n_swap_out, n_live);
    PD_CHECK_EQ_INT(n_live, 0);
    PD_CHECK_EQ_INT(bad_streams, 0);
    PD_CHECK_EQ_INT(g_kv_errors, 0);
    PD_CHECK(rs.n_preempted > 0);
    for (int i = 0; i < n_live; i++) {
        eng_sched_abort(s, live[i]);
        eng_request_destroy(live[i]);
    }
    PD_CHECK(eng_sched_idle(s));
    PD_CHECK_EQ_INT(eng_block_num_free(eng_sched_blocks(s)), NBLK);
    PD_CHECK_EQ_INT(eng_block_num_host_free(eng_sched_blocks(s)), HOST);
    PD_CHECK_STATUS(eng_block_check(eng_sched_blocks(s)), PD_OK);
    eng_sched_destroy(s);
}

PD_TEST(test_random_stress)
{
    random_stress(1, ENG_SCHED_FCFS, ENG_PREEMPT_RECOMPUTE, true);
    random_stress(2, ENG_SCHED_PRIORITY, ENG_PREEMPT_RECOMPUTE, true);
    random_stress(3, ENG_SCHED_FCFS, ENG_PREEMPT_SWAP, true);
    random_stress(4, ENG_SCHED_PRIORITY, ENG_PREEMPT_SWAP, false);
    random_stress(5, ENG_SCHED_FCFS, ENG_PREEMPT_SWAP, false);
}

/* Cost of one schedule + update for 256 decoding sequences (printed, loosely bounded). */
PD_TEST(test_step_cost)
{
    enum { NR = 256 };
    eng_sched_t *s = mk_sched(8192, 16, 8192, NR, 2048, true, 0);
    eng_request_t *r[NR];
    int32_t *smp = malloc(NR * sizeof(int32_t));
    for (int i = 0; i < NR; i++) {
        char id[16];
        snprintf(id, sizeof(id), "p%d", i);
        r[i] = mk_req(id, 200, i, 1000, 1, 0);
        eng_sched_add(s, r[i]);
    }
    for (int i = 0; i < 10; i++) { /* prefill everyone */
        eng_batch_t *b = eng_sched_step(s);
        for (int j = 0; j < b->n_samples; j++)
            smp[j] = 7 + j;
        eng_sched_update(s, b, smp);
    }
    uint64_t t0 = pd_now_ns();
    int steps = 200, seqs = 0;
    for (int i = 0; i < steps; i++) {
        eng_batch_t *b = eng_sched_step(s);
        seqs += b->n_seqs;
        for (int j = 0; j < b->n_samples; j++)
            smp[j] = 7 + (i + j) % 500;
        eng_sched_update(s, b, smp);
    }
    double us = (double)(pd_now_ns() - t0) / steps / 1000.0;
    printf("  step+update with %d decoding sequences: %.1f us (%.2f us per sequence)\n", seqs / steps, us,
           us / (seqs / steps));
    PD_CHECK_EQ_INT(seqs, steps * NR);
    PD_CHECK(us < 20000);
    for (int i = 0; i < NR; i++) {
        eng_sched_abort(s, r[i]);
        eng_request_destroy(r[i]);
    }
    PD_CHECK_EQ_INT(eng_block_num_free(eng_sched_blocks(s)), 8192);
    free(smp);
    eng_sched_destroy(s);
}

int main(void)
{
    PD_RUN(test_request_basics);
    PD_RUN(test_sample_batch);
    PD_RUN(test_keep_blocks);
    PD_RUN(test_priority_preemption);
    PD_RUN(test_chunked_prefill);
    PD_RUN(test_decode_seqs_lead);
    PD_RUN(test_no_chunking_and_limits);
    PD_RUN(test_priority);
    PD_RUN(test_preemption_same_stream);
    PD_RUN(test_abort_each_state);
    PD_RUN(test_parallel_sampling);
    PD_RUN(test_remote_kv);
    PD_RUN(test_max_model_len_and_stops);
    PD_RUN(test_eos);
    PD_RUN(test_delay_factor);
    PD_RUN(test_create_limits);
    PD_RUN(test_random_stress);
    PD_RUN(test_step_cost);
    return PD_TEST_REPORT();
}
