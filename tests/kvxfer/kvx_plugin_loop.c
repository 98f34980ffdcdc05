/*
 * kvx_plugin_loop.c - a tiny connector plugin for test_kvx (kv_connector_module_path).
 *
 * "LoopConnector" works only inside one process (producer and consumer contexts in
 * the same test): its descriptor carries the producer's pid and region base, and a
 * read copies blocks with memcpy on a short-lived thread, so the callback never fires
 * inside read.  It uses nothing from pdserve but kvx.h's types: plugins must not
 * depend on symbols of the host program.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvx.h"

typedef struct { kvx_region_t region; atomic_int inflight; int delay_ms; int push; } loop_t;
/* push mode (KVX_LOOP_PUSH=1): the two-sided protocol.  read_prepare hands the
 * producer (through the core's SERVE message) a mailbox in this process; serve copies
 * into it and marks it done; the consumer's read thread waits for that. */
typedef struct {
    char *dst_base; uint64_t block_bytes; size_t n; uint32_t *lids; atomic_int done;
} mailbox_t;
typedef struct { loop_t *st; char *remote_base; uint64_t block_bytes; mailbox_t *mb; } loop_peer_t;
typedef struct {
    loop_peer_t *peer; size_t n; uint32_t *lids, *rids; kvx_read_cb_t cb; void *arg;
} loop_job_t;

static pd_status_t loop_create(const kvx_config_t *cfg, void **state_p)
{
    (void)cfg;
    loop_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return PD_ERR_NOMEM;
    /* KVX_LOOP_DELAY_MS slows every read (tests of what happens during a read) */
    if (getenv("KVX_LOOP_DELAY_MS") != NULL)
        s->delay_ms = atoi(getenv("KVX_LOOP_DELAY_MS"));
    s->push = getenv("KVX_LOOP_PUSH") != NULL;
    *state_p = s;
    return PD_OK;
}

static void loop_destroy(void *state) { free(state); }

static pd_status_t loop_reg(void *state, const kvx_region_t *region, void *desc, size_t cap,
                            size_t *len_p)
{
    loop_t *s = state;
    uint64_t v[2] = {(uint64_t)getpid(), (uint64_t)(uintptr_t)region->base};
    if (cap < sizeof(v))
        return PD_ERR_LIMIT;
    s->region = *region;
    memcpy(desc, v, sizeof(v));
    *len_p = sizeof(v);
    return PD_OK;
}

static pd_status_t loop_connect(void *state, const kvx_peer_info_t *info, void **peer_p)
{
    uint64_t v[2];
    loop_peer_t *p;
    if (info->desc_len != sizeof(v))
        return PD_ERR_FORMAT;
    memcpy(v, info->desc, sizeof(v));
    if (v[0] != (uint64_t)getpid())
        return PD_ERR_UNSUPPORTED; /* another process: this toy cannot reach it */
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return PD_ERR_NOMEM;
    p->st = state;
    p->remote_base = (char *)(uintptr_t)v[1];
    p->block_bytes = info->block_bytes;
    *peer_p = p;
    return PD_OK;
}

static void loop_close(void *state, void *peer)
{
    loop_t *s = state;
    while (atomic_load(&s->inflight) > 0)
        usleep(1000);
    free(peer);
}

static void *loop_run(void *arg)
{
    loop_job_t *j = arg;
    loop_t *s = j->peer->st;
    if (s->delay_ms > 0)
        usleep((useconds_t)s->delay_ms * 1000u);
    if (s->push) {
        mailbox_t *mb = j->peer->mb;
        pd_status_t st = PD_OK;
        int waited = 0;
        while (!atomic_load(&mb->done) && waited++ < 5000)
            usleep(1000);
        if (!atomic_load(&mb->done))
            st = PD_ERR_TIMEOUT;
        j->cb(j->arg, st);
        free(mb->lids);
        free(mb);
        j->peer->mb = NULL;
        free(j->lids);
        free(j->rids);
        free(j);
        atomic_fetch_sub(&s->inflight, 1);
        return NULL;
    }
    for (size_t i = 0; i < j->n; i++)
        memcpy((char *)s->region.base + (size_t)j->lids[i] * s->region.block_bytes,
               j->peer->remote_base + (size_t)j->rids[i] * j->peer->block_bytes,
               s->region.block_bytes);
    j->cb(j->arg, PD_OK);
    free(j->lids);
    free(j->rids);
    free(j);
    atomic_fetch_sub(&s->inflight, 1);
    return NULL;
}

static pd_status_t loop_read(void *state, void *peer, const kvx_read_t *rd, kvx_read_cb_t cb,
                             void *arg)
{
    loop_t *s = state;
    loop_job_t *j = calloc(1, sizeof(*j));
    pthread_t t;
    if (j == NULL)
        return PD_ERR_NOMEM;
    j->peer = peer;
    j->n = rd->n;
    j->lids = malloc(rd->n * 4 + 4);
    j->rids = malloc(rd->n * 4 + 4);
    if (j->lids == NULL || j->rids == NULL) {
        free(j->lids);
        free(j->rids);
        free(j);
        return PD_ERR_NOMEM;
    }
    memcpy(j->lids, rd->local_ids, rd->n * 4);
    memcpy(j->rids, rd->remote_ids, rd->n * 4);
    j->cb = cb;
    j->arg = arg;
    atomic_fetch_add(&s->inflight, 1);
    if (pthread_create(&t, NULL, loop_run, j) != 0) {
        atomic_fetch_sub(&s->inflight, 1);
        free(j->lids);
        free(j->rids);
        free(j);
        return PD_ERR_INTERNAL;
    }
    pthread_detach(t);
    return PD_OK;
}

static pd_status_t loop_prepare(void *state, void *peer, const kvx_read_t *rd, void *blob,
                                size_t cap, size_t *len_p)
{
    loop_t *s = state;
    loop_peer_t *p = peer;
    uint64_t v[2];
    mailbox_t *mb;
    if (!s->push) {
        *len_p = 0;
        return PD_OK;
    }
    if (cap < sizeof(v) || (mb = calloc(1, sizeof(*mb))) == NULL)
        return PD_ERR_NOMEM;
    mb->dst_base = s->region.base;
    mb->block_bytes = s->region.block_bytes;
    mb->n = rd->n;
    mb->lids = malloc(rd->n * 4 + 4);
    if (mb->lids == NULL) {
        free(mb);
        return PD_ERR_NOMEM;
    }
    memcpy(mb->lids, rd->local_ids, rd->n * 4);
    p->mb = mb;
    v[0] = (uint64_t)getpid();
    v[1] = (uint64_t)(uintptr_t)mb;
    memcpy(blob, v, sizeof(v));
    *len_p = sizeof(v);
    return PD_OK;
}

static pd_status_t loop_serve(void *state, const void *blob, size_t len, const uint32_t *ids, size_t n)
{
    loop_t *s = state;
    uint64_t v[2];
    mailbox_t *mb;
    if (len != sizeof(v))
        return PD_ERR_FORMAT;
    memcpy(v, blob, sizeof(v));
    if (v[0] != (uint64_t)getpid())
        return PD_ERR_UNSUPPORTED;
    mb = (mailbox_t *)(uintptr_t)v[1];
    if (n != mb->n || mb->block_bytes != s->region.block_bytes)
        return PD_ERR_INVAL;
    for (size_t i = 0; i < n; i++)
        memcpy(mb->dst_base + (size_t)mb->lids[i] * mb->block_bytes,
               (char *)s->region.base + (size_t)ids[i] * s->region.block_bytes, mb->block_bytes);
    atomic_store(&mb->done, 1);
    return PD_OK;
}

static const kvx_conn_ops_t loop_ops = {
    .abi_version = KVX_CONN_ABI_VERSION,
    .name = "LoopConnector",
    .create = loop_create,
    .destroy = loop_destroy,
    .reg = loop_reg,
    .peer_connect = loop_connect,
    .peer_close = loop_close,
    .read = loop_read,
    .read_prepare = loop_prepare,
    .serve = loop_serve,
};

const kvx_conn_ops_t *kvx_connector_ops(void) { return &loop_ops; }
