/*
 * test_engine.c - the engine through its public API (eng_engine.h) with the default
 * model: greedy outputs are batch invariant (alone, in a batch of 32 mixed requests,
 * with chunked prefill at several chunk sizes, with prefix caching on and off, after
 * preemption and recompute), seeded sampling is reproducible whatever the batch,
 * aborts work from every state, stop strings end requests, device-side greedy gives the
 * tokens host sampling gives, and every KV block is free again after each scenario.  Exits 77 when the default model is absent.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "eng_backend.h"
#include "eng_engine.h"
#include "eng_forward.h"
#include "eng_tokenizer.h"
#include "kv_swap_check.h"
#include "pd_log.h"
#include "pd_test.h"
#include "pd_util.h"

#define N_PROMPTS 8
#define N_GEN 24
#define MAX_REQ 64

static const char *const prompts[N_PROMPTS] = {
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "List three colors: red,",
    "Once upon a time, in a land far, far away, there lived a young dragon who",
    "1, 2, 3, 4, 5,",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. The quick brown fox",
    "Q: What is the boiling point of water at sea level?\nA:",
    "import numpy as np\nx = np.arange(10)\nprint(",
};

#define MAX_PLP 128   /* prompt tokens whose prompt logprobs a test keeps */
#define PLP_K 3

typedef struct result {
    int32_t ids[256];
    int n_plp;                     /* prompt length when prompt logprobs arrived */
    int n_plp_events;              /* events that carried them (1 per sequence) */
    eng_logprob_t plp[MAX_PLP];
    eng_logprob_t plp_top[MAX_PLP * PLP_K];
    int plp_k;
    int n;
    char text[4096];
    size_t text_len;
    const char *reason;
    bool done;
} result_t;

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;
} waiter_t;

typedef struct slot {
    waiter_t *w;
    result_t *r;
} slot_t;

static void on_out(void *user, const eng_output_t *out)
{
    slot_t *s = user;
    for (int i = 0; i < out->n_token_ids && s->r->n < 256; i++)
        s->r->ids[s->r->n++] = out->token_ids[i];
    if (s->r->text_len + out->text_len < sizeof(s->r->text)) {
        memcpy(s->r->text + s->r->text_len, out->text, out->text_len);
        s->r->text_len += out->text_len;
    }
    if (out->n_prompt_logprobs > 0) {
        int n = PD_MIN(out->n_prompt_logprobs, MAX_PLP), k = PD_MIN(out->n_prompt_top, PLP_K);
        s->r->n_plp = out->n_prompt_logprobs;
        s->r->n_plp_events++;
        s->r->plp_k = out->n_prompt_top;
        for (int i = 1; i < n; i++) {
            s->r->plp[i] = out->prompt_logprobs[i];
            for (int j = 0; j < k; j++)
                s->r->plp_top[i * PLP_K + j] = out->prompt_tops[(size_t)i * (size_t)out->n_prompt_top + (size_t)j];
        }
    }
    if (out->finished)
        s->r->reason = out->finish_reason;
    if (out->request_done) {
        pthread_mutex_lock(&s->w->mu);
        s->r->done = true;
        s->w->pending--;
        pthread_cond_signal(&s->w->cv);
        pthread_mutex_unlock(&s->w->mu);
    }
}

static char gguf[4096];
static int64_t g_host_blocks; /* > 0: the next engines preempt by swap with this many host blocks */
static bool g_async;          /* the next engines process outputs asynchronously (cfg.async_output 2) */

static eng_engine_t *make_engine_len(int max_batched, bool prefix, int64_t n_blocks, bool exact, int64_t max_len)
{
    eng_engine_cfg_t c;
    eng_engine_t *e = NULL;
    eng_engine_cfg_init(&c);
    c.load.model = gguf;
    c.load.max_model_len = max_len;
    c.load.keep_quantized = !exact;
    c.exact_matmul = exact;
    c.n_threads = 2;
    c.max_num_batched_tokens = max_batched;
    c.enable_prefix_caching = prefix;
    c.num_blocks = n_blocks;
    c.max_num_seqs = 64;
    c.preempt_swap = g_host_blocks > 0;
    c.num_host_blocks = g_host_blocks;
    c.async_output = g_async ? 2 : 1; /* 1: off on the CPU backend */
    PD_CHECK_STATUS(eng_engine_create(&c, &e), PD_OK);
    return e;
}

static eng_engine_t *make_engine(int max_batched, bool prefix, int64_t n_blocks, bool exact)
{
    return make_engine_len(max_batched, prefix, n_blocks, exact, 1024);
}

static int tokenize(eng_engine_t *e, const char *text, int32_t *ids, int cap)
{
    eng_tok_ids_t v;
    int n;
    eng_tok_ids_init(&v);
    eng_tok_encode(eng_engine_tokenizer(e), text, strlen(text), true, &v);
    n = (int)PD_MIN(v.n, (size_t)cap);
    memcpy(ids, v.ids, (size_t)n * sizeof(int32_t));
    eng_tok_ids_cleanup(&v);
    return n;
}

/* prompt_logprobs of request i of the next run_batch (-1 = none) */
static int g_plp[MAX_REQ];

static void plp_none(void)
{
    for (int i = 0; i < MAX_REQ; i++)
        g_plp[i] = -1;
}

/* Submit one greedy request with explicit ids and wait for it. */
/* Submit one request whose outputs go to slot; p is cleaned up. */
static void submit(eng_engine_t *e, const char *id, const int32_t *ids, int n_ids, eng_sampling_params_t *p,
                   slot_t *slot)
{
    eng_submit_t sub = {0};
    char err[256];
    sub.id = id;
    sub.prompt = ids;
    sub.n_prompt = n_ids;
    sub.params = p;
    sub.cb = on_out;
    sub.user = slot;
    PD_CHECK_STATUS(eng_engine_submit(e, &sub, err, sizeof(err)), PD_OK);
    eng_sampling_params_cleanup(p);
}

/* Until every request of w is done. */
static void wait_all(waiter_t *w)
{
    pthread_mutex_lock(&w->mu);
    while (w->pending > 0)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

static void run_ids(eng_engine_t *e, const int32_t *ids, int n_ids, int plp, int max_tokens, result_t *res)
{
    waiter_t w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 1};
    slot_t slot = {&w, res};
    eng_sampling_params_t p;
    memset(res, 0, sizeof(*res));
    eng_sampling_params_init(&p);
    p.max_tokens = max_tokens;
    p.temperature = 0.0f;
    p.ignore_eos = true;
    p.prompt_logprobs = plp;
    submit(e, "ids", ids, n_ids, &p, &slot);
    wait_all(&w);
}

static int g_top_k; /* top_k of the seeded requests of run_batch (0: off) */

/* run n requests (prompt index idx[i]) at once; greedy unless seed >= 0; stops: a stop
 * string per prompt index, or NULL */
static void run_batch_stops(eng_engine_t *e, const int *idx, int n, result_t *res, int64_t seed, int max_tokens,
                            char (*stops)[16])
{
    waiter_t w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, n};
    slot_t slots[MAX_REQ];
    memset(res, 0, (size_t)n * sizeof(*res));
    for (int i = 0; i < n; i++) {
        int32_t ids[512];
        int n_ids = tokenize(e, prompts[idx[i]], ids, 512);
        eng_sampling_params_t p;
        char id[32];
        eng_sampling_params_init(&p);
        p.max_tokens = max_tokens;
        p.ignore_eos = true;
        p.prompt_logprobs = g_plp[i];
        if (stops != NULL) {
            p.stop = calloc(1, sizeof(char *));
            p.stop[0] = strdup(stops[idx[i]]);
            p.n_stop = 1;
        }
        if (seed >= 0) {
            p.temperature = 0.8f;
            p.top_k = g_top_k;
            p.has_seed = true;
            p.seed = (uint64_t)seed + (uint64_t)idx[i];
        } else {
            p.temperature = 0.0f;
        }
        snprintf(id, sizeof(id), "req-%d", i);
        slots[i] = (slot_t){&w, &res[i]};
        submit(e, id, ids, n_ids, &p, &slots[i]);
    }
    wait_all(&w);
}

static void run_batch(eng_engine_t *e, const int *idx, int n, result_t *res, int64_t seed, int max_tokens)
{
    run_batch_stops(e, idx, n, res, seed, max_tokens, NULL);
}

static void check_all_free(eng_engine_t *e)
{
    eng_engine_stats_t st;
    /* the engine thread updates stats right after the step that finished the requests */
    for (int i = 0; i < 100; i++) {
        eng_engine_get_stats(e, &st);
        if (st.n_free_blocks == st.n_blocks && st.n_running == 0 && st.n_waiting == 0)
            break;
        usleep(10000);
    }
    PD_CHECK_EQ_INT(st.n_free_blocks, st.n_blocks);
    PD_CHECK_EQ_INT(st.n_running, 0);
}

static result_t ref[N_PROMPTS];

static int compare(const result_t *got, const int *idx, int n, const char *what)
{
    int bad = 0;
    for (int i = 0; i < n; i++) {
        const result_t *r = &ref[idx[i]];
        if (got[i].n != r->n || memcmp(got[i].ids, r->ids, (size_t)r->n * sizeof(int32_t)) != 0) {
            int k = 0;
            while (k < r->n && k < got[i].n && got[i].ids[k] == r->ids[k])
                k++;
            fprintf(stderr, "  %s: request %d (prompt %d) differs from its lone run at token %d\n", what, i, idx[i], k);
            bad++;
        }
    }
    return bad;
}

PD_TEST(test_batch_invariance)
{
    eng_engine_t *e = make_engine(8192, true, 0, false);
    int idx[32];
    result_t *got = calloc(32, sizeof(*got));
    if (e == NULL)
        return;
    for (int p = 0; p < N_PROMPTS; p++) {
        run_batch(e, &p, 1, &ref[p], -1, N_GEN);
        PD_CHECK_EQ_INT(ref[p].n, N_GEN);
        PD_CHECK_EQ_STR(ref[p].reason, "length");
    }
    check_all_free(e);
    for (int i = 0; i < 32; i++)
        idx[i] = (i * 5) % N_PROMPTS;
    run_batch(e, idx, 32, got, -1, N_GEN);
    PD_CHECK_EQ_INT(compare(got, idx, 32, "batch of 32"), 0);
    check_all_free(e);
    eng_engine_destroy(e);

    static const int chunks[] = {7, 16, 33};
    for (size_t c = 0; c < PD_ARRAY_SIZE(chunks); c++) {
        char what[64];
        e = make_engine(chunks[c], true, 0, false);
        run_batch(e, idx, 16, got, -1, N_GEN);
        snprintf(what, sizeof(what), "chunked prefill %d", chunks[c]);
        PD_CHECK_EQ_INT(compare(got, idx, 16, what), 0);
        check_all_free(e);
        eng_engine_destroy(e);
    }

    e = make_engine(8192, false, 0, false);
    run_batch(e, idx, 16, got, -1, N_GEN);
    PD_CHECK_EQ_INT(compare(got, idx, 16, "prefix caching off"), 0);
    check_all_free(e);
    eng_engine_destroy(e);

    /* few blocks: running sequences get preempted and recomputed */
    e = make_engine_len(8192, true, 20, false, 256);
    run_batch(e, idx, 24, got, -1, N_GEN);
    PD_CHECK_EQ_INT(compare(got, idx, 24, "after preemption"), 0);
    {
        eng_engine_stats_t st;
        eng_engine_get_stats(e, &st);
        printf("  preemptions in the small-cache run: %llu\n", (unsigned long long)st.n_preemptions);
        PD_CHECK(st.n_preemptions > 0);
        PD_CHECK(st.swap_out_blocks == 0 && st.n_host_blocks == 0);
    }
    check_all_free(e);
    eng_engine_destroy(e);

    /* the same with swap preemption: enough host blocks (every preemption swaps), then
     * too few (some swap, the rest fall back to recompute) */
    static const int64_t host_blocks[] = {64, 6};
    for (size_t h = 0; h < PD_ARRAY_SIZE(host_blocks); h++) {
        char what[64];
        eng_engine_stats_t st;
        g_host_blocks = host_blocks[h];
        e = make_engine_len(8192, true, 20, false, 256);
        g_host_blocks = 0;
        run_batch(e, idx, 24, got, -1, N_GEN);
        snprintf(what, sizeof(what), "after swap (%lld host blocks)", (long long)host_blocks[h]);
        PD_CHECK_EQ_INT(compare(got, idx, 24, what), 0);
        check_all_free(e);
        eng_engine_get_stats(e, &st);
        printf("  %s: %llu preemptions, %llu blocks swapped out, %llu in\n", what,
               (unsigned long long)st.n_preemptions, (unsigned long long)st.swap_out_blocks,
               (unsigned long long)st.swap_in_blocks);
        PD_CHECK(st.n_preemptions > 0);
        PD_CHECK(st.swap_out_blocks > 0);
        PD_CHECK_EQ_INT((int)st.swap_in_blocks, (int)st.swap_out_blocks); /* everything came back */
        PD_CHECK_EQ_INT(st.n_host_blocks, (int)host_blocks[h]);
        PD_CHECK_EQ_INT(st.n_host_free_blocks, st.n_host_blocks);
        PD_CHECK_EQ_INT(st.n_swapped, 0);
        eng_engine_destroy(e);
    }
    free(got);
}

PD_TEST(test_seeded_sampling_reproducible)
{
    eng_engine_t *e = make_engine(8192, true, 0, false);
    result_t alone[N_PROMPTS], *batch = calloc(32, sizeof(*batch));
    int idx[32];
    if (e == NULL)
        return;
    for (int p = 0; p < N_PROMPTS; p++)
        run_batch(e, &p, 1, &alone[p], 42, 16);
    for (int i = 0; i < 32; i++)
        idx[i] = (i * 3) % N_PROMPTS;
    run_batch(e, idx, 32, batch, 42, 16);
    for (int i = 0; i < 32; i++) {
        const result_t *r = &alone[idx[i]];
        PD_CHECK(batch[i].n == r->n && memcmp(batch[i].ids, r->ids, (size_t)r->n * sizeof(int32_t)) == 0);
    }
    check_all_free(e);
    eng_engine_destroy(e);
    free(batch);
}

/* Device-side greedy (the forward's argmax, only ids copied back for rows whose samples
 * are plain argmax) against every row sampled on the host (PD_ENGINE_HOST_SAMPLING=1):
 * one batch mixing plain greedy rows, greedy rows with logprobs, with a repetition
 * penalty, with min_tokens, and seeded random rows gives the same tokens both ways. */
static void run_mixed(eng_engine_t *e, int n, result_t *res)
{
    waiter_t w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, n};
    slot_t slots[MAX_REQ];
    memset(res, 0, (size_t)n * sizeof(*res));
    for (int i = 0; i < n; i++) {
        int32_t ids[512];
        int n_ids = tokenize(e, prompts[i % N_PROMPTS], ids, 512);
        eng_sampling_params_t p;
        char id[32];
        eng_sampling_params_init(&p);
        p.max_tokens = 20;
        p.temperature = 0.0f;
        switch (i % 5) {
        case 0: break;                                 /* plain greedy: device argmax */
        case 1: p.logprobs = 2; break;                 /* needs the distribution */
        case 2: p.repetition_penalty = 1.3f; break;    /* changes the argmax */
        case 3: p.min_tokens = 8; break;               /* EOS banned for 8 steps, then argmax only */
        case 4:
            p.temperature = 0.9f;
            p.has_seed = true;
            p.seed = 1000 + (uint64_t)i;
            break;
        }
        snprintf(id, sizeof(id), "mixed-%d", i);
        slots[i] = (slot_t){&w, &res[i]};
        submit(e, id, ids, n_ids, &p, &slots[i]);
    }
    wait_all(&w);
}

PD_TEST(test_device_greedy_matches_host)
{
    enum { N = 20 };
    result_t *dev = calloc(N, sizeof(*dev)), *host = calloc(N, sizeof(*host));
    eng_engine_t *e = make_engine(8192, true, 0, false);
    if (e == NULL || dev == NULL || host == NULL)
        goto out;
    run_mixed(e, N, dev);
    check_all_free(e);
    eng_engine_destroy(e);
    setenv("PD_ENGINE_HOST_SAMPLING", "1", 1);
    e = make_engine(8192, true, 0, false);
    unsetenv("PD_ENGINE_HOST_SAMPLING");
    if (e == NULL)
        goto out;
    run_mixed(e, N, host);
    check_all_free(e);
    int same = 0;
    for (int i = 0; i < N; i++) {
        bool eq = dev[i].n == host[i].n && dev[i].n > 0 &&
                  memcmp(dev[i].ids, host[i].ids, (size_t)dev[i].n * sizeof(int32_t)) == 0 &&
                  strcmp(dev[i].reason ? dev[i].reason : "", host[i].reason ? host[i].reason : "") == 0;
        if (!eq)
            fprintf(stderr, "  mixed request %d (kind %d): device greedy and host sampling differ\n", i, i % 5);
        same += eq;
    }
    printf("  %d/%d mixed requests identical with device greedy and host sampling\n", same, N);
    PD_CHECK_EQ_INT(same, N);
out:
    eng_engine_destroy(e);
    free(dev);
    free(host);
}

/* Device sampling forced on the CPU backend (PD_ENGINE_DEVICE_SAMPLING=1: the path device
 * backends take for random rows), temperature 0.8 and top-k 20: seeded requests give the
 * same tokens alone and in a batch of 32, and other tokens than host sampling (which
 * draws over the top-k sorted by weight, the device in index order), which shows the
 * path was taken. */
PD_TEST(test_device_sampling_reproducible)
{
    result_t alone[N_PROMPTS], host[N_PROMPTS], *batch = calloc(32, sizeof(*batch));
    int idx[32], differ = 0;
    eng_engine_t *e = make_engine(8192, true, 0, false);
    g_top_k = 20;
    if (e == NULL || batch == NULL)
        goto out;
    for (int p = 0; p < N_PROMPTS; p++)
        run_batch(e, &p, 1, &host[p], 42, 16);
    eng_engine_destroy(e);
    setenv("PD_ENGINE_DEVICE_SAMPLING", "1", 1);
    e = make_engine(8192, true, 0, false);
    unsetenv("PD_ENGINE_DEVICE_SAMPLING");
    if (e == NULL)
        goto out;
    for (int p = 0; p < N_PROMPTS; p++) {
        run_batch(e, &p, 1, &alone[p], 42, 16);
        PD_CHECK_EQ_INT(alone[p].n, 16);
        differ += alone[p].n != host[p].n || memcmp(alone[p].ids, host[p].ids, (size_t)host[p].n * sizeof(int32_t)) != 0;
    }
    for (int i = 0; i < 32; i++)
        idx[i] = (i * 3) % N_PROMPTS;
    run_batch(e, idx, 32, batch, 42, 16);
    for (int i = 0; i < 32; i++) {
        const result_t *r = &alone[idx[i]];
        PD_CHECK(batch[i].n == r->n && memcmp(batch[i].ids, r->ids, (size_t)r->n * sizeof(int32_t)) == 0);
    }
    printf("  device sampling: reproducible alone / in a batch; %d of %d prompts differ from host sampling\n", differ,
           N_PROMPTS);
    PD_CHECK(differ > 0);
    check_all_free(e);
out:
    g_top_k = 0;
    eng_engine_destroy(e);
    free(batch);
}

static bool g_abort_when_swapped; /* abort_later waits for a swapped-out request */

static void *abort_later(void *arg)
{
    eng_engine_t *e = arg;
    usleep(30000);
    for (int i = 0; g_abort_when_swapped && i < 60000; i++) { /* a condition, bounded */
        eng_engine_stats_t st;
        eng_engine_get_stats(e, &st);
        if (st.n_swapped > 0)
            break;
        usleep(1000);
    }
    for (int i = 0; i < 16; i++) {
        char id[32];
        snprintf(id, sizeof(id), "req-%d", i);
        eng_engine_abort(e, id);
    }
    return NULL;
}

static void abort_everywhere(int64_t host_blocks)
{
    /* a tiny cache keeps some requests waiting while others run: the aborts hit requests
     * queued, waiting, prefilling and decoding (and swapped out, with host blocks) */
    g_host_blocks = host_blocks;
    g_abort_when_swapped = host_blocks > 0;
    eng_engine_t *e = make_engine_len(16, true, 20, false, 256);
    g_host_blocks = 0;
    result_t *got = calloc(16, sizeof(*got));
    int idx[16];
    pthread_t th;
    if (e == NULL)
        return;
    for (int i = 0; i < 16; i++)
        idx[i] = i % N_PROMPTS;
    pthread_create(&th, NULL, abort_later, e);
    run_batch(e, idx, 16, got, -1, 200);
    pthread_join(th, NULL);
    int aborted = 0;
    for (int i = 0; i < 16; i++) {
        PD_CHECK(got[i].done);
        aborted += got[i].reason && strcmp(got[i].reason, "abort") == 0;
    }
    printf("  %d of 16 requests aborted\n", aborted);
    PD_CHECK(aborted > 0);
    check_all_free(e);
    /* the engine still works */
    int p = 0;
    result_t one;
    run_batch(e, &p, 1, &one, -1, 4);
    PD_CHECK_EQ_INT(one.n, 4);
    check_all_free(e);
    if (host_blocks > 0) {
        eng_engine_stats_t st;
        eng_engine_get_stats(e, &st);
        printf("  with swap: %llu blocks swapped out\n", (unsigned long long)st.swap_out_blocks);
        PD_CHECK(st.swap_out_blocks > 0);
        PD_CHECK_EQ_INT(st.n_host_free_blocks, st.n_host_blocks);
        PD_CHECK_EQ_INT(st.n_swapped, 0);
    }
    eng_engine_destroy(e);
    free(got);
    g_abort_when_swapped = false;
}

PD_TEST(test_abort_everywhere)
{
    abort_everywhere(0);
    abort_everywhere(64);
}

/* Asynchronous output processing (the outputs of a step processed while the next one
 * runs; on the CPU backend only the order changes, which is what this checks): the same
 * tokens as the synchronous engine (ref, from test_batch_invariance), also after
 * preemption; stop strings that end sequences while the next step already computes them
 * (that extra token is dropped: same text, ids and reason as the synchronous run); aborts
 * everywhere; every block free after each run. */
PD_TEST(test_async_output)
{
    int idx[32];
    result_t *got = calloc(32, sizeof(*got)), *want = calloc(32, sizeof(*want));
    char stops[N_PROMPTS][16];
    for (int i = 0; i < 32; i++)
        idx[i] = (i * 5) % N_PROMPTS;
    for (int p = 0; p < N_PROMPTS; p++) {
        /* 5 bytes from the middle of the greedy text: a stop string it reaches */
        size_t at = ref[p].text_len / 2;
        snprintf(stops[p], sizeof(stops[p]), "%.5s", ref[p].text + at);
    }
    /* the synchronous engine's answers with stop strings */
    eng_engine_t *e = make_engine(8192, true, 0, false);
    if (e == NULL)
        goto out;
    run_batch_stops(e, idx, 32, want, -1, N_GEN, stops);
    check_all_free(e);
    eng_engine_destroy(e);

    g_async = true;
    e = make_engine(8192, true, 0, false);
    run_batch(e, idx, 32, got, -1, N_GEN);
    PD_CHECK_EQ_INT(compare(got, idx, 32, "async outputs, batch of 32"), 0);
    check_all_free(e);
    run_batch_stops(e, idx, 32, got, -1, N_GEN, stops);
    int stopped = 0;
    for (int i = 0; i < 32; i++) {
        bool same = got[i].n == want[i].n && memcmp(got[i].ids, want[i].ids, (size_t)got[i].n * 4) == 0 &&
                    got[i].text_len == want[i].text_len && memcmp(got[i].text, want[i].text, got[i].text_len) == 0 &&
                    got[i].reason && want[i].reason && strcmp(got[i].reason, want[i].reason) == 0;
        if (!same)
            fprintf(stderr, "  async stop run %d (prompt %d): %d tokens '%.*s' (%s) against %d '%.*s' (%s)\n", i,
                    idx[i], got[i].n, (int)got[i].text_len, got[i].text, got[i].reason ? got[i].reason : "-",
                    want[i].n, (int)want[i].text_len, want[i].text, want[i].reason ? want[i].reason : "-");
        PD_CHECK(same);
        stopped += want[i].reason && strcmp(want[i].reason, "stop") == 0;
    }
    printf("  async outputs: %d of 32 requests ended by their stop string, as in the synchronous run\n", stopped);
    PD_CHECK(stopped >= 24);
    check_all_free(e);
    eng_engine_destroy(e);

    /* groups (n = 3) next to plain requests: a group's sequences share one request,
     * freed once after its last sequence; both ways */
    for (int mode = 0; mode < 2; mode++) {
        g_async = mode == 1;
        eng_engine_t *eg = make_engine(8192, true, 0, false);
        waiter_t w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 8};
        slot_t slots[8];
        memset(got, 0, 8 * sizeof(*got));
        for (int i = 0; i < 8; i++) {
            int32_t ids[512];
            int n_ids = tokenize(eg, prompts[i % N_PROMPTS], ids, 512);
            eng_sampling_params_t p;
            char id[32];
            eng_sampling_params_init(&p);
            p.max_tokens = 6 + i;
            p.ignore_eos = true;
            p.temperature = 0.0f;
            p.n = i % 2 ? 3 : 1;
            snprintf(id, sizeof(id), "group-%d", i);
            slots[i] = (slot_t){&w, &got[i]};
            submit(eg, id, ids, n_ids, &p, &slots[i]);
        }
        wait_all(&w);
        for (int i = 0; i < 8; i++)
            PD_CHECK_EQ_INT(got[i].n, (6 + i) * (i % 2 ? 3 : 1));
        check_all_free(eg);
        eng_engine_destroy(eg);
    }
    g_async = true;

    e = make_engine_len(8192, true, 20, false, 256); /* preemption */
    run_batch(e, idx, 24, got, -1, N_GEN);
    PD_CHECK_EQ_INT(compare(got, idx, 24, "async outputs after preemption"), 0);
    check_all_free(e);
    eng_engine_destroy(e);
    abort_everywhere(0);
    abort_everywhere(64);
out:
    g_async = false;
    free(got);
    free(want);
}

PD_TEST(test_submit_errors)
{
    eng_engine_t *e = make_engine(8192, true, 0, false);
    eng_sampling_params_t p;
    eng_submit_t sub = {0};
    int32_t ids[4] = {1, 2, 3, 999999};
    char err[256];
    if (e == NULL)
        return;
    eng_sampling_params_init(&p);
    sub.id = "bad";
    sub.prompt = ids;
    sub.n_prompt = 4;
    sub.params = &p;
    sub.cb = on_out;
    PD_CHECK_STATUS(eng_engine_submit(e, &sub, err, sizeof(err)), PD_ERR_RANGE);
    PD_CHECK(strstr(err, "out of vocabulary") != NULL);
    sub.n_prompt = 0;
    PD_CHECK_STATUS(eng_engine_submit(e, &sub, err, sizeof(err)), PD_ERR_INVAL);
    sub.n_prompt = 3;
    p.top_p = 2.0f;
    PD_CHECK(eng_engine_submit(e, &sub, err, sizeof(err)) != PD_OK);
    eng_sampling_params_cleanup(&p);
    check_all_free(e);
    eng_engine_destroy(e);
}

/* ---- prompt_logprobs ---- */

/* The float32 reference: the engine's own model through a separate forward on a fresh
 * CPU backend instance, one sequence, every position's logits, log_softmax in double. */
typedef struct plp_ref {
    int n;
    double lp[MAX_PLP];            /* logprob of prompt token i given [0, i) */
    int rank[MAX_PLP];
    int32_t top[MAX_PLP * PLP_K];
    double top_lp[MAX_PLP * PLP_K];
} plp_ref_t;

static void plp_reference(eng_engine_t *e, const int32_t *ids, int n, plp_ref_t *ref_p)
{
    const eng_backend_ops_t *ops = eng_backend_cpu_ops();
    const eng_model_config_t *mc = eng_engine_model_config(e);
    const int64_t V = mc->vocab_size;
    eng_backend_opts_t bo = {.n_threads = 2, .mm_mode = KCPU_MM_FAST};
    eng_backend_t *be = NULL;
    eng_forward_t *fw = NULL;
    eng_forward_opts_t fo = {.block_size = 16, .n_blocks = 16, .max_tokens = 256, .max_seqs = 8,
                             .max_blocks_per_seq = 16};
    int32_t pos[256], seq[256], table[16], ctx = n, rows[8];
    int64_t slots[256];
    float *logits = malloc((size_t)8 * (size_t)V * sizeof(float));
    eng_fwd_batch_t b;

    memset(ref_p, 0, sizeof(*ref_p));
    ref_p->n = n;
    PD_CHECK(n <= MAX_PLP && logits != NULL);
    PD_CHECK_STATUS(ops->init(&bo, &be), PD_OK);
    PD_CHECK_STATUS(eng_forward_create(eng_engine_model(e), ops, be, &fo, &fw), PD_OK);
    if (fw == NULL || logits == NULL || n > MAX_PLP)
        goto cleanup;
    for (int i = 0; i < n; i++) {
        pos[i] = i;
        seq[i] = 0;
        slots[i] = i;
    }
    for (int i = 0; i < 16; i++)
        table[i] = i;
    memset(&b, 0, sizeof(b));
    b.n_tokens = n;
    b.tokens = ids;
    b.positions = pos;
    b.tok_seq = seq;
    b.slots = slots;
    b.n_seqs = 1;
    b.block_tables = table;
    b.context_lens = &ctx;
    PD_CHECK_STATUS(eng_forward_run(fw, &b, logits), PD_OK);
    for (int p0 = 0; p0 < n - 1; p0 += 8) {
        int m = PD_MIN(8, n - 1 - p0);
        for (int r = 0; r < m; r++)
            rows[r] = p0 + r;
        PD_CHECK_STATUS(eng_forward_logits(fw, rows, m, logits), PD_OK);
        for (int r = 0; r < m; r++) {
            const float *x = logits + (size_t)r * (size_t)V;
            int tok = p0 + r + 1;
            double mx = -INFINITY, sum = 0;
            for (int64_t v = 0; v < V; v++)
                mx = x[v] > mx ? x[v] : mx;
            for (int64_t v = 0; v < V; v++)
                sum += exp((double)x[v] - mx);
            double lse = mx + log(sum);
            ref_p->lp[tok] = (double)x[ids[tok]] - lse;
            int rank = 0;
            for (int64_t v = 0; v < V; v++)
                rank += x[v] >= x[ids[tok]];
            ref_p->rank[tok] = rank;
            for (int k = 0; k < PLP_K; k++) { /* top-k by repeated max (ties: lowest id) */
                int32_t best = -1;
                for (int64_t v = 0; v < V; v++) {
                    bool taken = false;
                    for (int j = 0; j < k; j++)
                        taken |= ref_p->top[tok * PLP_K + j] == v;
                    if (!taken && (best < 0 || x[v] > x[best]))
                        best = (int32_t)v;
                }
                ref_p->top[tok * PLP_K + k] = best;
                ref_p->top_lp[tok * PLP_K + k] = (double)x[best] - lse;
            }
        }
    }
cleanup:
    eng_forward_destroy(fw);
    if (be)
        ops->shutdown(be);
    free(logits);
}

/* Compare one result's prompt logprobs with the reference; returns the failures. */
static int plp_compare(const result_t *r, const plp_ref_t *ref_p, int k, const char *what)
{
    int bad = 0;
    if (r->n_plp != ref_p->n || r->n_plp_events != 1 || r->plp_k != k) {
        fprintf(stderr, "  %s: prompt logprobs of %d tokens (%d events, k %d), want %d (1, %d)\n", what, r->n_plp,
                r->n_plp_events, r->plp_k, ref_p->n, k);
        return 1;
    }
    for (int i = 1; i < ref_p->n; i++) {
        double d = fabs((double)r->plp[i].logprob - ref_p->lp[i]);
        /* float32 logsumexp in the engine vs double here */
        if (d > 1e-4 + 1e-5 * fabs(ref_p->lp[i]) || r->plp[i].rank != ref_p->rank[i]) {
            fprintf(stderr, "  %s: prompt token %d: logprob %.6f rank %d, reference %.6f rank %d\n", what, i,
                    r->plp[i].logprob, r->plp[i].rank, ref_p->lp[i], ref_p->rank[i]);
            bad++;
        }
        for (int j = 0; j < k; j++) {
            const eng_logprob_t *t = &r->plp_top[i * PLP_K + j];
            if (t->rank != j + 1 || fabs((double)t->logprob - ref_p->top_lp[i * PLP_K + j]) > 1e-4 ||
                (t->token != ref_p->top[i * PLP_K + j] &&
                 fabs(ref_p->top_lp[i * PLP_K + j] - ref_p->top_lp[i * PLP_K + (j + 1 < k ? j + 1 : j)]) > 1e-6)) {
                fprintf(stderr, "  %s: prompt token %d top %d: token %d %.6f rank %d, reference %d %.6f\n", what, i, j,
                        t->token, t->logprob, t->rank, ref_p->top[i * PLP_K + j], ref_p->top_lp[i * PLP_K + j]);
                bad++;
            }
        }
    }
    return bad;
}

/* Two results' prompt logprobs are the same (batch invariance). */
static bool plp_same(const result_t *a, const result_t *b, int k)
{
    if (a->n_plp != b->n_plp || a->n_plp_events != b->n_plp_events)
        return false;
    for (int i = 1; i < PD_MIN(a->n_plp, MAX_PLP); i++) {
        if (a->plp[i].token != b->plp[i].token || a->plp[i].rank != b->plp[i].rank ||
            fabsf(a->plp[i].logprob - b->plp[i].logprob) > 1e-5f)
            return false;
        for (int j = 0; j < k; j++)
            if (a->plp_top[i * PLP_K + j].token != b->plp_top[i * PLP_K + j].token ||
                fabsf(a->plp_top[i * PLP_K + j].logprob - b->plp_top[i * PLP_K + j].logprob) > 1e-5f)
                return false;
    }
    return true;
}

PD_TEST(test_prompt_logprobs)
{
    eng_engine_t *e = make_engine(8192, true, 0, false);
    static plp_ref_t refs[N_PROMPTS];
    static result_t alone[N_PROMPTS];
    result_t *got = calloc(32, sizeof(*got));
    int idx[32];
    if (e == NULL || got == NULL)
        return;
    plp_none();
    for (int p = 0; p < N_PROMPTS; p++) {
        int32_t ids[512];
        int n = tokenize(e, prompts[p], ids, 512);
        char what[64];
        plp_reference(e, ids, n, &refs[p]);
        g_plp[0] = PLP_K;
        run_batch(e, &p, 1, &alone[p], -1, 4);
        snprintf(what, sizeof(what), "prompt %d alone", p);
        PD_CHECK_EQ_INT(plp_compare(&alone[p], &refs[p], PLP_K, what), 0);
        PD_CHECK_EQ_INT(alone[p].n, 4);
    }
    /* prompt_logprobs 0: only the prompt token's own entry */
    {
        int p = 3;
        result_t r0;
        g_plp[0] = 0;
        run_batch(e, &p, 1, &r0, -1, 2);
        PD_CHECK_EQ_INT(plp_compare(&r0, &refs[p], 0, "prompt_logprobs 0"), 0);
    }
    /* the prompts are in the prefix cache now; a request with prompt_logprobs must
     * still get every position (cached blocks are recomputed, as vLLM) */
    {
        int p = 5;
        result_t r1;
        g_plp[0] = -1;
        run_batch(e, &p, 1, &r1, -1, 2);
        PD_CHECK_EQ_INT(r1.n_plp, 0);
        g_plp[0] = PLP_K;
        run_batch(e, &p, 1, &r1, -1, 2);
        PD_CHECK_EQ_INT(plp_compare(&r1, &refs[p], PLP_K, "after a prefix-cache fill"), 0);
    }
    check_all_free(e);
    eng_engine_destroy(e);

    /* batch invariance: mixed batch (every other request asks), chunked prefill at
     * several chunk sizes, and after preemption + recompute */
    static const int chunks[] = {8192, 7, 16, 33};
    for (size_t c = 0; c <= PD_ARRAY_SIZE(chunks); c++) {
        bool small = c == PD_ARRAY_SIZE(chunks);
        char what[64];
        int n = small ? 24 : 16, bad = 0;
        e = small ? make_engine_len(8192, true, 20, false, 256) : make_engine(chunks[c], true, 0, false);
        for (int i = 0; i < n; i++) {
            idx[i] = (i * 5) % N_PROMPTS;
            g_plp[i] = i % 2 == 0 ? PLP_K : -1;
        }
        run_batch(e, idx, n, got, -1, N_GEN / 2);
        snprintf(what, sizeof(what), small ? "prompt logprobs after preemption" : "prompt logprobs, chunk %d",
                 small ? 0 : chunks[c]);
        for (int i = 0; i < n; i++) {
            if (g_plp[i] < 0) {
                bad += got[i].n_plp != 0;
            } else if (!plp_same(&got[i], &alone[idx[i]], PLP_K)) {
                fprintf(stderr, "  %s: request %d (prompt %d) differs from its lone run\n", what, i, idx[i]);
                bad++;
            }
            bad += got[i].n != N_GEN / 2 || memcmp(got[i].ids, alone[idx[i]].ids, 4 * sizeof(int32_t)) != 0;
        }
        PD_CHECK_EQ_INT(bad, 0);
        if (small) {
            eng_engine_stats_t st;
            eng_engine_get_stats(e, &st);
            printf("  preemptions with prompt logprobs: %llu\n", (unsigned long long)st.n_preemptions);
            PD_CHECK(st.n_preemptions > 0);
        }
        check_all_free(e);
        eng_engine_destroy(e);
    }
    plp_none();
    free(got);
}

/* Against Hugging Face transformers (tests/golden/make_goldens.py: the same GGUF
 * dequantized to float32, log_softmax in float64): the engine with exact float32
 * matmuls returns the same prompt logprobs, ranks and top tokens. */
PD_TEST(test_prompt_logprobs_hf_golden)
{
    char path[4096], *text = NULL;
    const char *src = getenv("PD_SOURCE_DIR");
    cJSON *doc, *pr;
    double worst = 0;
    int n_checked = 0, rank_off = 0;
    snprintf(path, sizeof(path), "%s/tests/data/goldens/smollm2-135m-q4_1.json", src ? src : ".");
    PD_CHECK_STATUS(pd_read_file(path, &text, NULL), PD_OK);
    doc = text ? cJSON_Parse(text) : NULL;
    free(text);
    PD_CHECK(doc != NULL);
    if (doc == NULL)
        return;
    eng_engine_t *e = make_engine(8192, true, 0, true);
    if (e == NULL) {
        cJSON_Delete(doc);
        return;
    }
    cJSON_ArrayForEach(pr, cJSON_GetObjectItem(doc, "prompts")) {
        const cJSON *jids = cJSON_GetObjectItem(pr, "ids"), *jplp = cJSON_GetObjectItem(pr, "prompt_logprobs"), *it;
        int32_t ids[MAX_PLP];
        int n = 0;
        result_t r;
        PD_CHECK(jplp != NULL); /* regenerate the golden with make_goldens.py --only-gguf */
        if (jplp == NULL)
            break;
        cJSON_ArrayForEach(it, jids) if (n < MAX_PLP) ids[n++] = (int32_t)it->valueint;
        run_ids(e, ids, n, PLP_K, 1, &r);
        PD_CHECK_EQ_INT(r.n_plp, n);
        PD_CHECK_EQ_INT(cJSON_GetArraySize(jplp), n - 1);
        for (int i = 1; i < n && i < r.n_plp && i - 1 < cJSON_GetArraySize(jplp); i++) {
            const cJSON *g = cJSON_GetArrayItem(jplp, i - 1);
            double want = cJSON_GetArrayItem(g, 1)->valuedouble;
            int want_rank = cJSON_GetArrayItem(g, 2)->valueint;
            const cJSON *tops = cJSON_GetArrayItem(g, 3);
            double d = fabs((double)r.plp[i].logprob - want) / fmax(1.0, fabs(want));
            worst = fmax(worst, d);
            n_checked++;
            PD_CHECK_EQ_INT(r.plp[i].token, cJSON_GetArrayItem(g, 0)->valueint);
            PD_CHECK(d <= 1e-3);
            /* ranks deep in the tail can move by the logits within the tolerance */
            if (r.plp[i].rank != want_rank) {
                rank_off++;
                PD_CHECK(abs(r.plp[i].rank - want_rank) <= 1 + want_rank / 100);
            }
            for (int k = 0; k < PLP_K; k++) {
                const cJSON *t = cJSON_GetArrayItem(tops, k), *t1 = cJSON_GetArrayItem(tops, k + 1);
                double lp = cJSON_GetArrayItem(t, 1)->valuedouble;
                bool clear = fabs(lp - cJSON_GetArrayItem(t1, 1)->valuedouble) > 1e-3 * fmax(1.0, fabs(lp)) &&
                             (k == 0 || fabs(lp - cJSON_GetArrayItem(cJSON_GetArrayItem(tops, k - 1), 1)->valuedouble) >
                                            1e-3 * fmax(1.0, fabs(lp)));
                PD_CHECK(fabs((double)r.plp_top[i * PLP_K + k].logprob - lp) <= 1e-3 * fmax(1.0, fabs(lp)));
                if (clear)
                    PD_CHECK_EQ_INT(r.plp_top[i * PLP_K + k].token, cJSON_GetArrayItem(t, 0)->valueint);
            }
        }
    }
    printf("  %d prompt logprobs vs transformers: worst relative difference %.2e, %d ranks off by a tie\n",
           n_checked, worst, rank_off);
    PD_CHECK(n_checked > 40);
    check_all_free(e);
    eng_engine_destroy(e);
    cJSON_Delete(doc);
}

/* The CPU backend's swap ops (no model needed). */
PD_TEST(test_cpu_kv_swap)
{
    const eng_backend_ops_t *ops = eng_backend_cpu_ops();
    eng_backend_t *be = NULL;
    eng_backend_opts_t bo = {.n_threads = 1};
    PD_CHECK_STATUS(ops->init(&bo, &be), PD_OK);
    if (be == NULL)
        return;
    kv_swap_check(ops, be);
    ops->shutdown(be);
}

int main(void)
{
    const char *env = getenv("PD_MODEL_GGUF"), *cache = getenv("PDSERVE_CACHE"), *home = getenv("HOME");
    if (env)
        snprintf(gguf, sizeof(gguf), "%s", env);
    else if (cache && *cache)
        snprintf(gguf, sizeof(gguf), "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
    else
        snprintf(gguf, sizeof(gguf), "%s/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "");
    pd_log_set_level(PD_LOG_LEVEL_OFF); /* the range errors below are expected */
    PD_RUN(test_cpu_kv_swap);
    if (access(gguf, R_OK) != 0) {
        printf("SKIP: the default model is not in the cache (run scripts/setup.sh)\n");
        return pd_test_failed_g ? 1 : 77;
    }
    pd_log_set_level(PD_LOG_LEVEL_WARN);
    plp_none();
    PD_RUN(test_batch_invariance);
    PD_RUN(test_seeded_sampling_reproducible);
    PD_RUN(test_device_greedy_matches_host);
    PD_RUN(test_device_sampling_reproducible);
    PD_RUN(test_abort_everywhere);
    PD_RUN(test_async_output);
    PD_RUN(test_submit_errors);
    PD_RUN(test_prompt_logprobs);
    PD_RUN(test_prompt_logprobs_hf_golden);
    return PD_TEST_REPORT();
}
