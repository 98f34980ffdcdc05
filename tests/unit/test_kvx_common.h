/*
 * test_kvx_common.h - helpers shared by kvxfer's unit and loopback tests: contexts
 * from JSON configs, patterned regions, a lease-callback recorder.
 */
#ifndef TEST_KVX_COMMON_H
#define TEST_KVX_COMMON_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvx.h"
#include "pd_test.h"
#include "pd_util.h"

static inline kvx_compat_t tk_compat(void)
{
    kvx_compat_t c;

    memset(&c, 0, sizeof(c));
    snprintf(c.model, sizeof(c.model), "SmolLM2-135M-Instruct");
    snprintf(c.dtype, sizeof(c.dtype), "f16");
    c.n_layers = 30;
    c.n_kv_heads = 3;
    c.head_dim = 64;
    c.block_size = 16;
    c.layout_id = 1;
    return c;
}

/* A context from a config JSON (kv_port 0 picks a free port). */
static inline kvx_ctx_t *tk_ctx(const char *json, const kvx_compat_t *compat)
{
    kvx_config_t cfg;
    kvx_ctx_t *ctx = NULL;
    char err[256];
    pd_status_t st = kvx_config_parse(json, &cfg, err, sizeof(err));

    if (st == PD_OK)
        st = kvx_ctx_create(&cfg, compat, &ctx);
    kvx_config_cleanup(&cfg);
    if (st != PD_OK) {
        fprintf(stderr, "  ctx from %s: %s %s\n", json, pd_status_name(st), err);
        return NULL;
    }
    return ctx;
}

static inline uint8_t tk_pattern(uint32_t block, size_t i, uint32_t salt)
{
    return (uint8_t)((block * 131u + (uint32_t)i * 7u + salt * 29u + 1u) & 0xffu);
}

static inline void tk_fill(uint8_t *base, uint32_t n_blocks, size_t block_bytes, uint32_t salt)
{
    for (uint32_t b = 0; b < n_blocks; b++)
        for (size_t i = 0; i < block_bytes; i++)
            base[(size_t)b * block_bytes + i] = tk_pattern(b, i, salt);
}

/* 1 when local block l holds remote block r's pattern. */
static inline int tk_block_is(const uint8_t *base, size_t block_bytes, uint32_t l, uint32_t r, uint32_t salt)
{
    const uint8_t *p = base + (size_t)l * block_bytes;
    for (size_t i = 0; i < block_bytes; i++)
        if (p[i] != tk_pattern(r, i, salt))
            return 0;
    return 1;
}

/* n distinct ids below limit (Fisher-Yates prefix). */
static inline void tk_random_ids(uint32_t *out, size_t n, uint32_t limit, unsigned *seed)
{
    uint32_t *all = malloc(limit * sizeof(uint32_t));
    for (uint32_t i = 0; i < limit; i++)
        all[i] = i;
    for (size_t i = 0; i < n; i++) {
        uint32_t j = i + (uint32_t)(rand_r(seed) % (limit - i));
        uint32_t t = all[i];
        all[i] = all[j];
        all[j] = t;
        out[i] = all[i];
    }
    free(all);
}

/* ---- lease callback recorder ---- */
typedef struct tk_leases {
    pthread_mutex_t mu;
    int ended[3];         /* by kvx_lease_end_t */
    size_t blocks_freed;
    char last_id[KVX_ID_MAX];
} tk_leases_t;

static inline void tk_lease_cb(void *arg, const char *req_id, const uint32_t *ids, size_t n,
                        kvx_lease_end_t why)
{
    tk_leases_t *t = arg;
    (void)ids;
    pthread_mutex_lock(&t->mu);
    t->ended[why]++;
    t->blocks_freed += n;
    snprintf(t->last_id, sizeof(t->last_id), "%s", req_id);
    pthread_mutex_unlock(&t->mu);
}

static inline int tk_ended(tk_leases_t *t, kvx_lease_end_t why)
{
    int n;
    pthread_mutex_lock(&t->mu);
    n = t->ended[why];
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* Wait (bounded) until at least want leases ended with why. */
static inline int tk_wait_ended(tk_leases_t *t, kvx_lease_end_t why, int want, double timeout_s)
{
    uint64_t end = pd_now_ns() + (uint64_t)(timeout_s * 1e9);
    while (tk_ended(t, why) < want && pd_now_ns() < end)
        usleep(2000);
    return tk_ended(t, why) >= want;
}

/* ---- async pull results ---- */
typedef struct tk_pull {
    pthread_mutex_t mu;
    int done;
    int fired;            /* callback count: must end at exactly 1 */
    pd_status_t status;
    int unsafe;
    char msg[256];
} tk_pull_t;

static inline void tk_pull_cb(void *arg, const kvx_pull_result_t *res)
{
    tk_pull_t *p = arg;
    pthread_mutex_lock(&p->mu);
    p->fired++;
    p->done = 1;
    p->status = res->status;
    p->unsafe = res->local_blocks_unsafe;
    snprintf(p->msg, sizeof(p->msg), "%s", res->message);
    pthread_mutex_unlock(&p->mu);
}

static inline int tk_pull_wait(tk_pull_t *p, double timeout_s)
{
    uint64_t end = pd_now_ns() + (uint64_t)(timeout_s * 1e9);
    int done = 0;
    while (pd_now_ns() < end) {
        pthread_mutex_lock(&p->mu);
        done = p->done;
        pthread_mutex_unlock(&p->mu);
        if (done)
            break;
        usleep(1000);
    }
    return done;
}

#endif /* TEST_KVX_COMMON_H */
