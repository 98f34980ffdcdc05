/*
 * test_net_kvx.c - kvxfer end to end on loopback, for every connector compiled in
 * (SharedStorageConnector, UcxConnector, LibfabricConnector): data equality over
 * random block lists, concurrent pulls, partial and zero-length pulls, out-of-range
 * ids, wrong secrets, incompatible peers, lease expiry then a late read, a producer
 * process killed or frozen mid-transfer (also with both processes on one CPU), and
 * no leaked leases/blocks afterwards.
 *
 * Env: KVX_TEST_CONNECTORS="UcxConnector,..." limits the connectors run.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pd_log.h"
#include "test_kvx_common.h"

#define NB  64
#define BB  (4096 + 64)   /* an odd block size: nothing relies on powers of two */

static const char *conn_g;       /* connector under test */
static char extra_g[512];        /* its extra config (shared storage path) */
static int tid_g;

typedef struct pair {
    kvx_ctx_t *prod, *cons;
    uint8_t *pbase, *cbase;
    tk_leases_t leases;
    int port;
} pair_t;

static void cfg_json(char *out, size_t len, const char *role, int port, const char *extra_more)
{
    snprintf(out, len, "{\"kv_connector\":\"%s\",\"kv_role\":\"%s\",\"kv_port\":%d,"
             "\"engine_id\":\"%s-%d-%d\",\"kv_connector_extra_config\":{%s%s%s}}",
             conn_g, role, port, role, (int)getpid(), tid_g++, extra_g,
             extra_g[0] && extra_more[0] ? "," : "", extra_more);
}

static int pair_open(pair_t *p, const char *pextra, const char *cextra, const kvx_compat_t *ccompat)
{
    char json[1024];
    kvx_compat_t compat = tk_compat();

    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->leases.mu, NULL);
    cfg_json(json, sizeof(json), "kv_producer", 0, pextra);
    p->prod = tk_ctx(json, &compat);
    cfg_json(json, sizeof(json), "kv_consumer", 0, cextra);
    p->cons = tk_ctx(json, ccompat ? ccompat : &compat);
    if (p->prod == NULL || p->cons == NULL)
        return 0;
    p->port = kvx_ctx_port(p->prod);
    p->pbase = malloc((size_t)NB * BB);
    p->cbase = calloc(NB, BB);
    tk_fill(p->pbase, NB, BB, 1);
    if (kvx_ctx_register_region(p->prod, &(kvx_region_t){p->pbase, NB, BB, KVX_MEM_HOST}) != PD_OK ||
        kvx_ctx_register_region(p->cons, &(kvx_region_t){p->cbase, NB, BB, KVX_MEM_HOST}) != PD_OK)
        return 0;
    return 1;
}

/* Destroys both sides and checks that every lease ended and nothing is held. */
static void pair_close(pair_t *p)
{
    kvx_stats_t s;

    if (p->prod != NULL) {
        kvx_ctx_stats(p->prod, &s);
        PD_CHECK_EQ_INT(kvx_lease_count(p->prod), 0);
        PD_CHECK_EQ_INT(s.blocks_held, 0);
        PD_CHECK_EQ_INT(s.leases_created, s.leases_released + s.lease_expiries + s.leases_aborted);
    }
    kvx_ctx_destroy(p->cons);
    kvx_ctx_destroy(p->prod);
    free(p->pbase);
    free(p->cbase);
    p->cons = p->prod = NULL;
}

static kvx_pull_desc_t mkdesc(pair_t *p, const char *rid, size_t n, const uint32_t *r, const uint32_t *l)
{
    return (kvx_pull_desc_t){.remote_host = "127.0.0.1", .remote_port = p->port,
                             .remote_engine_id = kvx_ctx_engine_id(p->prod), .remote_req_id = rid,
                             .req_id = rid, .n = n, .remote_ids = r, .local_ids = l};
}

static int count_fds(void)
{
    char path[64];
    int n = 0;

    for (int fd = 0; fd < 4096; fd++) {
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        if (access(path, F_OK) == 0)
            n++;
    }
    return n;
}

/* ---- scenarios ---- */
PD_TEST(random_blocks_equal)
{
    pair_t p;
    unsigned seed = 12345;
    char msg[256];

    PD_CHECK(pair_open(&p, "", "", NULL));
    if (p.prod == NULL || p.cons == NULL)
        goto out;
    for (int round = 0; round < 5; round++) {
        uint32_t r[24], l[24];
        size_t n = 1 + (size_t)(rand_r(&seed) % 24);
        char rid[32];
        kvx_stats_t s;

        tk_random_ids(r, n, NB, &seed);
        tk_random_ids(l, n, NB, &seed);
        memset(p.cbase, 0, (size_t)NB * BB);
        snprintf(rid, sizeof(rid), "rand-%d", round);
        PD_CHECK_STATUS(kvx_lease_create(p.prod, rid, r, n, 0, tk_lease_cb, &p.leases), PD_OK);
        kvx_pull_desc_t d = mkdesc(&p, rid, n, r, l);
        PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_OK);
        for (size_t i = 0; i < n; i++)
            if (!tk_block_is(p.cbase, BB, l[i], r[i], 1)) {
                fprintf(stderr, "  block %u -> %u differs\n", r[i], l[i]);
                pd_test_failed_checks_g++;
            }
        PD_CHECK(tk_wait_ended(&p.leases, KVX_LEASE_RELEASED, round + 1, 5));
        kvx_ctx_stats(p.cons, &s);
        PD_CHECK_EQ_INT(s.transfers, round + 1);
    }
out:
    pair_close(&p);
}

PD_TEST(concurrent_pulls)
{
    enum { K = 8, N = 6 };
    pair_t p;
    tk_pull_t res[K];
    uint32_t r[K][N], l[K][N];

    PD_CHECK(pair_open(&p, "", "", NULL));
    if (p.prod == NULL || p.cons == NULL)
        goto out;
    memset(res, 0, sizeof(res));
    for (int k = 0; k < K; k++) {
        char rid[32];
        pthread_mutex_init(&res[k].mu, NULL);
        for (int i = 0; i < N; i++) {
            r[k][i] = (uint32_t)((k * 7 + i * 3) % NB);
            l[k][i] = (uint32_t)(k * N + i);      /* disjoint local blocks */
        }
        snprintf(rid, sizeof(rid), "conc-%d", k);
        PD_CHECK_STATUS(kvx_lease_create(p.prod, rid, r[k], N, 0, tk_lease_cb, &p.leases), PD_OK);
    }
    for (int k = 0; k < K; k++) {
        char rid[32];
        snprintf(rid, sizeof(rid), "conc-%d", k);
        kvx_pull_desc_t d = mkdesc(&p, rid, N, r[k], l[k]);
        PD_CHECK_STATUS(kvx_pull(p.cons, &d, tk_pull_cb, &res[k]), PD_OK);
    }
    for (int k = 0; k < K; k++) {
        PD_CHECK(tk_pull_wait(&res[k], 30));
        PD_CHECK_STATUS(res[k].status, PD_OK);
        for (int i = 0; i < N; i++)
            PD_CHECK(tk_block_is(p.cbase, BB, l[k][i], r[k][i], 1));
    }
    usleep(50000);
    for (int k = 0; k < K; k++)
        PD_CHECK_EQ_INT(res[k].fired, 1);
    PD_CHECK(tk_wait_ended(&p.leases, KVX_LEASE_RELEASED, K, 5));
out:
    pair_close(&p);
}

PD_TEST(partial_and_empty)
{
    pair_t p;
    uint32_t r[10] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, l[4] = {60, 61, 62, 63};
    char msg[256];

    PD_CHECK(pair_open(&p, "", "", NULL));
    if (p.prod == NULL || p.cons == NULL)
        goto out;
    /* the consumer had a prefix hit: it reads only the last 4 of 10 */
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "partial", r, 10, 0, tk_lease_cb, &p.leases), PD_OK);
    kvx_pull_desc_t d = mkdesc(&p, "partial", 4, r + 6, l);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_OK);
    for (int i = 0; i < 4; i++)
        PD_CHECK(tk_block_is(p.cbase, BB, l[i], r[6 + i], 1));
    /* a full prefix hit: only the release */
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "empty", r, 10, 0, tk_lease_cb, &p.leases), PD_OK);
    d = mkdesc(&p, "empty", 0, NULL, NULL);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_OK);
    /* a second lease under a live id is refused and does not disturb the first */
    {
        uint32_t one[1] = {30}, other[1] = {31}, dst[1] = {50};
        PD_CHECK_STATUS(kvx_lease_create(p.prod, "dup", one, 1, 0, tk_lease_cb, &p.leases), PD_OK);
        PD_CHECK_STATUS(kvx_lease_create(p.prod, "dup", other, 1, 0, tk_lease_cb, &p.leases), PD_ERR_EXISTS);
        d = mkdesc(&p, "dup", 1, one, dst);
        PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_OK);
        PD_CHECK(tk_block_is(p.cbase, BB, 50, 30, 1));
    }
    /* a lease of zero blocks */
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "zero", NULL, 0, 0, tk_lease_cb, &p.leases), PD_OK);
    d = mkdesc(&p, "zero", 0, NULL, NULL);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_OK);
    PD_CHECK(tk_wait_ended(&p.leases, KVX_LEASE_RELEASED, 4, 5));
    PD_CHECK_EQ_INT(p.leases.blocks_freed, 21);
out:
    pair_close(&p);
}

PD_TEST(out_of_range_refused)
{
    pair_t p;
    uint32_t r[2] = {1, 2}, bad_r[2] = {1, NB}, l[2] = {0, 1}, bad_l[2] = {0, NB + 5};
    uint32_t other[2] = {1, 40};
    char msg[256];

    PD_CHECK(pair_open(&p, "", "", NULL));
    if (p.prod == NULL || p.cons == NULL)
        goto out;
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "range", r, 2, 0, tk_lease_cb, &p.leases), PD_OK);
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "bad", bad_r, 2, 0, tk_lease_cb, &p.leases), PD_ERR_INVAL);
    /* local ids outside our region: refused at once, no callback */
    kvx_pull_desc_t d = mkdesc(&p, "range", 2, r, bad_l);
    PD_CHECK_STATUS(kvx_pull(p.cons, &d, tk_pull_cb, NULL), PD_ERR_RANGE);
    /* remote ids outside the producer's region */
    d = mkdesc(&p, "range", 2, bad_r, l);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_ERR_RANGE);
    /* remote ids inside the region but not under this lease: the producer refuses */
    d = mkdesc(&p, "range", 2, other, l);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_ERR_RANGE);
    PD_CHECK(strstr(msg, "40") != NULL);
    /* unknown lease */
    d = mkdesc(&p, "nope", 2, r, l);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_ERR_NOT_FOUND);
    /* the lease is still good after all that */
    d = mkdesc(&p, "range", 2, r, l);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_OK);
    PD_CHECK(tk_wait_ended(&p.leases, KVX_LEASE_RELEASED, 1, 5));
    {
        kvx_stats_t s;
        kvx_ctx_stats(p.prod, &s);
        PD_CHECK_EQ_INT(s.reads_refused, 2);
    }
out:
    pair_close(&p);
}

PD_TEST(wrong_secret)
{
    pair_t p;
    uint32_t r[2] = {1, 2}, l[2] = {0, 1};
    char msg[256];
    kvx_stats_t s;

    PD_CHECK(pair_open(&p, "\"auth_secret\":\"right\"", "\"auth_secret\":\"wrong\"", NULL));
    if (p.prod == NULL || p.cons == NULL)
        goto out;
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "auth", r, 2, 0, tk_lease_cb, &p.leases), PD_OK);
    kvx_pull_desc_t d = mkdesc(&p, "auth", 2, r, l);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_ERR_PERM);
    PD_CHECK(strstr(msg, "authentication") != NULL);
    kvx_ctx_stats(p.prod, &s);
    PD_CHECK(s.auth_failures >= 1);
    PD_CHECK_EQ_INT(kvx_lease_abort(p.prod, "auth"), PD_OK);
    PD_CHECK_EQ_INT(tk_ended(&p.leases, KVX_LEASE_ABORTED), 1);
out:
    pair_close(&p);

    /* a producer with a secret and a consumer without one */
    PD_CHECK(pair_open(&p, "\"auth_secret\":\"right\"", "", NULL));
    if (p.prod == NULL || p.cons == NULL)
        goto out2;
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "auth2", r, 2, 0, tk_lease_cb, &p.leases), PD_OK);
    d = mkdesc(&p, "auth2", 2, r, l);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_ERR_PERM);
    PD_CHECK_STATUS(kvx_lease_abort(p.prod, "auth2"), PD_OK);
out2:
    pair_close(&p);

    /* the same secret on both sides works */
    PD_CHECK(pair_open(&p, "\"auth_secret\":\"same\"", "\"auth_secret\":\"same\"", NULL));
    if (p.prod == NULL || p.cons == NULL)
        goto out3;
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "auth3", r, 2, 0, tk_lease_cb, &p.leases), PD_OK);
    d = mkdesc(&p, "auth3", 2, r, l);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_OK);
    PD_CHECK(tk_block_is(p.cbase, BB, 1, 2, 1));
out3:
    pair_close(&p);
}

PD_TEST(incompatible_peer)
{
    pair_t p;
    uint32_t r[2] = {1, 2}, l[2] = {0, 1};
    char msg[256];
    kvx_compat_t c = tk_compat();

    c.block_size = 32;
    PD_CHECK(pair_open(&p, "", "", &c));
    if (p.prod == NULL || p.cons == NULL)
        goto out;
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "compat", r, 2, 0, tk_lease_cb, &p.leases), PD_OK);
    kvx_pull_desc_t d = mkdesc(&p, "compat", 2, r, l);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_ERR_MISMATCH);
    PD_CHECK(strstr(msg, "block_size") != NULL);
    /* a wrong remote engine id is refused too */
    c = tk_compat();
    kvx_pull_desc_t d2 = mkdesc(&p, "compat", 2, r, l);
    d2.remote_engine_id = "somebody-else";
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d2, msg, sizeof(msg)), PD_ERR_MISMATCH);
    PD_CHECK_STATUS(kvx_lease_abort(p.prod, "compat"), PD_OK);
out:
    pair_close(&p);
}

PD_TEST(lease_expiry_then_late_read)
{
    pair_t p;
    uint32_t r[3] = {7, 8, 9}, l[3] = {0, 1, 2};
    char msg[256];
    kvx_stats_t s;

    PD_CHECK(pair_open(&p, "", "", NULL));
    if (p.prod == NULL || p.cons == NULL)
        goto out;
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "short", r, 3, 0.15, tk_lease_cb, &p.leases), PD_OK);
    PD_CHECK(tk_wait_ended(&p.leases, KVX_LEASE_EXPIRED, 1, 5));
    PD_CHECK_EQ_INT(p.leases.blocks_freed, 3);
    kvx_pull_desc_t d = mkdesc(&p, "short", 3, r, l);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_ERR_EXPIRED);
    PD_CHECK(strstr(msg, "expired") != NULL);
    /* nothing was written into the local blocks */
    PD_CHECK(p.cbase[0] == 0 && p.cbase[BB] == 0);
    kvx_ctx_stats(p.prod, &s);
    PD_CHECK_EQ_INT(s.lease_expiries, 1);
    PD_CHECK_EQ_INT(s.reads_refused, 1);
    /* a heartbeat keeps a lease alive past its ttl while the consumer reads */
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "hb", r, 3, 0.3, tk_lease_cb, &p.leases), PD_OK);
    d = mkdesc(&p, "hb", 3, r, l);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_OK);
out:
    pair_close(&p);
}

/* Opening and closing a producer/consumer pair with a transfer leaves no file
 * descriptors behind (the first round warms up transport-global state). */
PD_TEST(no_leaked_handles)
{
    int before = 0;

    for (int round = 0; round < 3; round++) {
        pair_t p;
        uint32_t r[2] = {1, 2}, l[2] = {3, 4};
        char msg[256];

        if (round == 1)
            before = count_fds();
        PD_CHECK(pair_open(&p, "", "", NULL));
        if (p.prod != NULL && p.cons != NULL) {
            PD_CHECK_STATUS(kvx_lease_create(p.prod, "fd", r, 2, 0, tk_lease_cb, &p.leases), PD_OK);
            kvx_pull_desc_t d = mkdesc(&p, "fd", 2, r, l);
            PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_OK);
        }
        pair_close(&p);
    }
    PD_CHECK_EQ_INT(count_fds(), before);
}

/* The control plane on an IPv6 address (skipped when ::1 is not configured). */
PD_TEST(ipv6_control_plane)
{
    char json[1024], msg[256];
    kvx_compat_t compat = tk_compat();
    kvx_ctx_t *prod, *cons;
    uint8_t *pb = malloc((size_t)NB * BB), *cb = calloc(NB, BB);
    uint32_t r[2] = {5, 6}, l[2] = {7, 8};
    tk_leases_t leases = {.mu = PTHREAD_MUTEX_INITIALIZER};

    snprintf(json, sizeof(json), "{\"kv_connector\":\"%s\",\"kv_role\":\"kv_producer\","
             "\"kv_ip\":\"::1\",\"kv_port\":0,\"kv_connector_extra_config\":{%s}}", conn_g, extra_g);
    prod = tk_ctx(json, &compat);
    if (prod == NULL) {
        printf("  skip: no IPv6 loopback here\n");
        free(pb);
        free(cb);
        return;
    }
    /* the consumer's kv_ip picks its own address family (libfabric binds to it) */
    snprintf(json, sizeof(json), "{\"kv_connector\":\"%s\",\"kv_role\":\"kv_consumer\","
             "\"kv_ip\":\"::1\",\"kv_connector_extra_config\":{%s}}", conn_g, extra_g);
    cons = tk_ctx(json, &compat);
    PD_CHECK(cons != NULL);
    tk_fill(pb, NB, BB, 1);
    if (cons != NULL &&
        kvx_ctx_register_region(prod, &(kvx_region_t){pb, NB, BB, KVX_MEM_HOST}) == PD_OK &&
        kvx_ctx_register_region(cons, &(kvx_region_t){cb, NB, BB, KVX_MEM_HOST}) == PD_OK) {
        PD_CHECK_STATUS(kvx_lease_create(prod, "v6", r, 2, 0, tk_lease_cb, &leases), PD_OK);
        kvx_pull_desc_t d = {.remote_host = "::1", .remote_port = kvx_ctx_port(prod),
                             .remote_req_id = "v6", .n = 2, .remote_ids = r, .local_ids = l};
        PD_CHECK_STATUS(kvx_pull_sync(cons, &d, msg, sizeof(msg)), PD_OK);
        PD_CHECK(tk_block_is(cb, BB, 7, 5, 1) && tk_block_is(cb, BB, 8, 6, 1));
    }
    kvx_ctx_destroy(cons);
    kvx_ctx_destroy(prod);
    free(pb);
    free(cb);
}

/* A random mix of pulls, consumer aborts, producer aborts and expiries, many at
 * once: every lease ends exactly once and nothing stays held. */
PD_TEST(soak_random_aborts)
{
    enum { N = 120 };
    pair_t p;
    tk_pull_t res[N];
    int pulled[N];
    unsigned seed = 777;
    char json_unused[1];

    (void)json_unused;
    PD_CHECK(pair_open(&p, "", "\"pull_workers\":4", NULL));
    if (p.prod == NULL || p.cons == NULL)
        goto out;
    memset(res, 0, sizeof(res));
    memset(pulled, 0, sizeof(pulled));
    for (int i = 0; i < N; i++) {
        uint32_t r[4], l[4];
        char rid[32];
        int action = (int)(rand_r(&seed) % 5);
        double ttl = action == 4 ? 0.05 : 5.0;

        pthread_mutex_init(&res[i].mu, NULL);
        snprintf(rid, sizeof(rid), "soak-%d", i);
        tk_random_ids(r, 4, NB, &seed);
        for (int k = 0; k < 4; k++)
            l[k] = (uint32_t)((i % 16) * 4 + k);
        PD_CHECK_STATUS(kvx_lease_create(p.prod, rid, r, 4, ttl, tk_lease_cb, &p.leases), PD_OK);
        switch (action) {
        case 0:
        case 1: {
            kvx_pull_desc_t d = mkdesc(&p, rid, 4, r, l);
            pulled[i] = kvx_pull(p.cons, &d, tk_pull_cb, &res[i]) == PD_OK;
            break;
        }
        case 2:
            (void)kvx_abort_remote(p.cons, "127.0.0.1", p.port, rid);
            break;
        case 3:
            (void)kvx_lease_abort(p.prod, rid);
            break;
        default: /* left to expire; a late pull sometimes */
            if (rand_r(&seed) % 2) {
                kvx_pull_desc_t d = mkdesc(&p, rid, 4, r, l);
                pulled[i] = kvx_pull(p.cons, &d, tk_pull_cb, &res[i]) == PD_OK;
            }
            break;
        }
    }
    for (int i = 0; i < N; i++)
        if (pulled[i]) {
            PD_CHECK(tk_pull_wait(&res[i], 60));
            PD_CHECK(res[i].status == PD_OK || res[i].status == PD_ERR_EXPIRED);
        }
    {
        /* every lease ends: the short ones expire, the rest were pulled or aborted */
        uint64_t end = pd_now_ns() + 10000000000ull;
        while (kvx_lease_count(p.prod) > 0 && pd_now_ns() < end)
            usleep(10000);
    }
    usleep(50000);
    for (int i = 0; i < N; i++)
        if (pulled[i])
            PD_CHECK_EQ_INT(res[i].fired, 1);
    PD_CHECK_EQ_INT(tk_ended(&p.leases, KVX_LEASE_RELEASED) + tk_ended(&p.leases, KVX_LEASE_EXPIRED) +
                    tk_ended(&p.leases, KVX_LEASE_ABORTED), N);
    PD_CHECK_EQ_INT(p.leases.blocks_freed, 4 * N);
out:
    pair_close(&p);
}

PD_TEST(abort_remote)
{
    pair_t p;
    uint32_t r[3] = {7, 8, 9};

    PD_CHECK(pair_open(&p, "", "", NULL));
    if (p.prod == NULL || p.cons == NULL)
        goto out;
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "ab", r, 3, 0, tk_lease_cb, &p.leases), PD_OK);
    PD_CHECK_STATUS(kvx_abort_remote(p.cons, "127.0.0.1", p.port, "ab"), PD_OK);
    PD_CHECK_EQ_INT(tk_ended(&p.leases, KVX_LEASE_ABORTED), 1);
    PD_CHECK_STATUS(kvx_abort_remote(p.cons, "127.0.0.1", p.port, "ab"), PD_ERR_EXPIRED);
    /* a lease alive at destroy is aborted by it: the engine still gets its callback */
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "left", r, 3, 0, tk_lease_cb, &p.leases), PD_OK);
    kvx_ctx_destroy(p.prod);
    p.prod = NULL;
    PD_CHECK_EQ_INT(tk_ended(&p.leases, KVX_LEASE_ABORTED), 2);
out:
    pair_close(&p);
}

PD_TEST(producer_gone)
{
    char json[1024];
    kvx_compat_t compat = tk_compat();
    kvx_ctx_t *cons;
    uint8_t *cbase = calloc(NB, BB);
    uint32_t r[3] = {1, 2, 3}, l[3] = {0, 1, 2};
    char msg[256];
    uint64_t t0;
    pd_status_t st;

    cfg_json(json, sizeof(json), "kv_consumer", 0, "\"control_timeout_s\":0.5");
    cons = tk_ctx(json, &compat);
    PD_CHECK(cons != NULL);
    if (cons == NULL)
        return;
    PD_CHECK_STATUS(kvx_ctx_register_region(cons, &(kvx_region_t){cbase, NB, BB, KVX_MEM_HOST}), PD_OK);
    /* nobody listens on this port: a bounded, clear error */
    kvx_pull_desc_t d = {.remote_host = "127.0.0.1", .remote_port = 1, .remote_req_id = "x",
                         .n = 3, .remote_ids = r, .local_ids = l};
    t0 = pd_now_ns();
    st = kvx_pull_sync(cons, &d, msg, sizeof(msg));
    PD_CHECK_STATUS(st, PD_ERR_TIMEOUT);
    PD_CHECK((pd_now_ns() - t0) < 3000000000ull);
    kvx_ctx_destroy(cons);
    free(cbase);
}

/* Fork a producer (before this process made any transport state), kill or freeze it
 * during a large pull, and check that the consumer ends with a clear error in
 * bounded time. */
static void child_producer(int wfd, uint32_t nb, size_t bb)
{
    char json[1024];
    kvx_compat_t compat = tk_compat();
    kvx_ctx_t *prod;
    uint8_t *base = malloc((size_t)nb * bb);
    uint32_t *ids = malloc(nb * sizeof(uint32_t));
    tk_leases_t leases = {.mu = PTHREAD_MUTEX_INITIALIZER};
    int port = 0;

    cfg_json(json, sizeof(json), "kv_producer", 0, "");
    prod = tk_ctx(json, &compat);
    if (prod != NULL && base != NULL && ids != NULL) {
        memset(base, 0x5a, (size_t)nb * bb);
        for (uint32_t i = 0; i < nb; i++)
            ids[i] = i;
        if (kvx_ctx_register_region(prod, &(kvx_region_t){base, nb, bb, KVX_MEM_HOST}) == PD_OK &&
            kvx_lease_create(prod, "big", ids, nb, 60, tk_lease_cb, &leases) == PD_OK)
            port = kvx_ctx_port(prod);
    }
    if (write(wfd, &port, sizeof(port)) != sizeof(port))
        _exit(1);
    for (;;)
        pause();
}

static void killed_mid_transfer(int sig, int one_cpu)
{
    cpu_set_t all, one;
    int pinned = 0;

    const uint32_t nb = 256;
    const size_t bb = (size_t)1 << 20;      /* 256 MiB in flight */
    int fds[2], port = 0;
    pid_t pid;
    char json[1024], msg[256];
    kvx_compat_t compat = tk_compat();
    kvx_ctx_t *cons = NULL;
    uint8_t *cbase = NULL;
    uint32_t *ids = NULL;
    tk_pull_t res;
    uint64_t t0;

    if (pipe(fds) != 0)
        return;
    /* on one CPU the producer is often frozen before its endpoint has taken the
     * consumer's connection: libfabric's tcp;ofi_rxm then never fails those reads */
    if (one_cpu && sched_getaffinity(0, sizeof(all), &all) == 0) {
        CPU_ZERO(&one);
        for (int c = 0; c < CPU_SETSIZE; c++)
            if (CPU_ISSET(c, &all)) {
                CPU_SET(c, &one);
                break;
            }
        pinned = sched_setaffinity(0, sizeof(one), &one) == 0;
    }
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        child_producer(fds[1], nb, bb);
    }
    close(fds[1]);
    if (read(fds[0], &port, sizeof(port)) != sizeof(port) || port == 0) {
        fprintf(stderr, "  child producer did not start\n");
        pd_test_failed_checks_g++;
        goto out_kill;
    }
    cfg_json(json, sizeof(json), "kv_consumer", 0,
             "\"control_timeout_s\":1,\"transfer_timeout_s\":10");
    cons = tk_ctx(json, &compat);
    cbase = malloc((size_t)nb * bb);
    ids = malloc(nb * sizeof(uint32_t));
    PD_CHECK(cons != NULL && cbase != NULL && ids != NULL);
    if (cons == NULL || cbase == NULL || ids == NULL)
        goto out_kill;
    for (uint32_t i = 0; i < nb; i++)
        ids[i] = i;
    PD_CHECK_STATUS(kvx_ctx_register_region(cons, &(kvx_region_t){cbase, nb, bb, KVX_MEM_HOST}), PD_OK);
    memset(&res, 0, sizeof(res));
    pthread_mutex_init(&res.mu, NULL);
    kvx_pull_desc_t d = {.remote_host = "127.0.0.1", .remote_port = port, .remote_req_id = "big",
                         .n = nb, .remote_ids = ids, .local_ids = ids};
    t0 = pd_now_ns();
    PD_CHECK_STATUS(kvx_pull(cons, &d, tk_pull_cb, &res), PD_OK);
    /* 256 MiB over loopback takes well over 30 ms: the signal lands mid-transfer
     * (a frozen producer never answers the final RELEASE, so that case must fail) */
    usleep(30000);
    kill(pid, sig);
    PD_CHECK(tk_pull_wait(&res, 40));
    printf("  %s: pull ended with %s after %.2fs%s: %s\n", sig == SIGSTOP ? "frozen" : "killed",
           pd_status_name(res.status), (double)(pd_now_ns() - t0) / 1e9,
           res.unsafe ? " (local blocks unsafe)" : "", res.msg);
    if (sig == SIGSTOP)
        PD_CHECK(res.status != PD_OK);
    PD_CHECK(res.status == PD_OK || res.status == PD_ERR_TRANSPORT || res.status == PD_ERR_TIMEOUT ||
             res.status == PD_ERR_CLOSED || res.status == PD_ERR_EXPIRED);
    PD_CHECK_EQ_INT(res.fired, 1);
    (void)msg;
out_kill:
    kill(pid, SIGKILL);
    if (sig == SIGSTOP)
        kill(pid, SIGCONT);
    waitpid(pid, NULL, 0);
    close(fds[0]);
    kvx_ctx_destroy(cons); /* must not crash with reads the connector never gave back */
    if (pinned)
        (void)sched_setaffinity(0, sizeof(all), &all);
    free(cbase);
    free(ids);
}

PD_TEST(producer_killed_mid_transfer) { killed_mid_transfer(SIGKILL, 0); }
PD_TEST(producer_frozen_mid_transfer) { killed_mid_transfer(SIGSTOP, 0); }
PD_TEST(producer_frozen_one_cpu) { killed_mid_transfer(SIGSTOP, 1); }

/* ---- peer modes for tests/kvxfer/netns_test.sh (two network namespaces) ----
 *   test_net_kvx --producer IP PORT N_BLOCKS BLOCK_BYTES N_LEASES
 *       leases "netns-0".."netns-<N_LEASES-1>" over every block, prints READY, and
 *       serves until killed.
 *   test_net_kvx --consumer IP PORT N_BLOCKS BLOCK_BYTES LEASE [CONTROL_S TRANSFER_S]
 *       pulls every block of LEASE, checks the data, prints one RESULT line;
 *       exit 0 only when the pull succeeded. */
static int peer_main(int argc, char **argv)
{
    char json[512], msg[256];
    kvx_compat_t compat = tk_compat();
    kvx_ctx_t *ctx;
    uint32_t nb, *ids;
    size_t bb;
    uint8_t *base;
    int producer = strcmp(argv[1], "--producer") == 0;

    if (argc < 7)
        return 2;
    nb = (uint32_t)atol(argv[4]);
    bb = (size_t)atol(argv[5]);
    if (nb == 0 || bb == 0)
        return 2;
    pd_log_set_level(PD_LOG_LEVEL_WARN);
    if (producer)
        snprintf(json, sizeof(json), "{\"kv_connector\":\"UcxConnector\",\"kv_role\":\"kv_producer\","
                 "\"kv_ip\":\"%s\",\"kv_port\":%s,\"engine_id\":\"netns-producer\","
                 "\"kv_connector_extra_config\":{\"lease_ttl_s\":120}}", argv[2], argv[3]);
    else
        snprintf(json, sizeof(json), "{\"kv_connector\":\"UcxConnector\",\"kv_role\":\"kv_consumer\","
                 "\"kv_port\":0,\"kv_connector_extra_config\":{\"control_timeout_s\":%s,"
                 "\"transfer_timeout_s\":%s}}", argc > 7 ? argv[7] : "2", argc > 8 ? argv[8] : "20");
    ctx = tk_ctx(json, &compat);
    base = malloc((size_t)nb * bb);
    ids = malloc(nb * sizeof(uint32_t));
    if (ctx == NULL || base == NULL || ids == NULL)
        return 3;
    for (uint32_t i = 0; i < nb; i++)
        ids[i] = i;
    if (producer) {
        tk_leases_t leases = {.mu = PTHREAD_MUTEX_INITIALIZER};
        int n_leases = atoi(argv[6]);
        tk_fill(base, nb, bb, 9);
        if (kvx_ctx_register_region(ctx, &(kvx_region_t){base, nb, bb, KVX_MEM_HOST}) != PD_OK)
            return 3;
        for (int k = 0; k < n_leases; k++) {
            char rid[32];
            snprintf(rid, sizeof(rid), "netns-%d", k);
            if (kvx_lease_create(ctx, rid, ids, nb, 0, tk_lease_cb, &leases) != PD_OK)
                return 3;
        }
        printf("READY %d\n", kvx_ctx_port(ctx));
        fflush(stdout);
        for (;;)
            pause();
    } else {
        uint64_t t0 = pd_now_ns();
        pd_status_t st;
        int good = 1;
        kvx_pull_desc_t d = {.remote_host = argv[2], .remote_port = atoi(argv[3]),
                             .remote_req_id = argv[6], .n = nb, .remote_ids = ids, .local_ids = ids};

        memset(base, 0, (size_t)nb * bb);
        if (kvx_ctx_register_region(ctx, &(kvx_region_t){base, nb, bb, KVX_MEM_HOST}) != PD_OK)
            return 3;
        st = kvx_pull_sync(ctx, &d, msg, sizeof(msg));
        if (st == PD_OK)
            for (uint32_t i = 0; i < nb && good; i += 1 + nb / 16)
                good = tk_block_is(base, bb, i, i, 9);
        printf("RESULT %s %.2fs %.3fGB/s data=%s: %s\n", pd_status_name(st),
               (double)(pd_now_ns() - t0) / 1e9,
               st == PD_OK ? (double)nb * bb / ((double)(pd_now_ns() - t0)) : 0.0,
               st == PD_OK ? (good ? "ok" : "BAD") : "-", msg);
        kvx_ctx_destroy(ctx);
        free(base);
        free(ids);
        return st == PD_OK && good ? 0 : 1;
    }
    return 0;
}

static int connector_wanted(const char *name)
{
    const char *only = getenv("KVX_TEST_CONNECTORS");
    return only == NULL || strstr(only, name) != NULL;
}

int main(int argc, char **argv)
{
    static const struct { const char *name; kvx_conn_kind_t kind; } conns[] = {
        {"SharedStorageConnector", KVX_CONN_SHARED_STORAGE},
        {"UcxConnector", KVX_CONN_UCX},
        {"LibfabricConnector", KVX_CONN_LIBFABRIC},
    };
    char dir[] = "/tmp/kvx_storage_XXXXXX";

    signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && (strcmp(argv[1], "--producer") == 0 || strcmp(argv[1], "--consumer") == 0))
        return peer_main(argc, argv);
    if (getenv("KVX_TEST_VERBOSE") == NULL)
        pd_log_set_level(PD_LOG_LEVEL_WARN);
    if (mkdtemp(dir) == NULL)
        return 1;
    for (size_t i = 0; i < sizeof(conns) / sizeof(conns[0]); i++) {
        if (kvx_conn_ops_builtin(conns[i].kind) == NULL || !connector_wanted(conns[i].name)) {
            printf("skip %s (not built or not selected)\n", conns[i].name);
            continue;
        }
        conn_g = conns[i].name;
        if (conns[i].kind == KVX_CONN_SHARED_STORAGE)
            snprintf(extra_g, sizeof(extra_g), "\"shared_storage_path\":\"%s\"", dir);
        else
            extra_g[0] = '\0';
        printf("== %s\n", conn_g);
        PD_RUN(random_blocks_equal);
        PD_RUN(concurrent_pulls);
        PD_RUN(partial_and_empty);
        PD_RUN(out_of_range_refused);
        PD_RUN(wrong_secret);
        PD_RUN(incompatible_peer);
        PD_RUN(lease_expiry_then_late_read);
        PD_RUN(abort_remote);
        PD_RUN(no_leaked_handles);
        PD_RUN(ipv6_control_plane);
        PD_RUN(soak_random_aborts);
        PD_RUN(producer_gone);
        if (conns[i].kind != KVX_CONN_SHARED_STORAGE) {
            PD_RUN(producer_killed_mid_transfer);
            PD_RUN(producer_frozen_mid_transfer);
            PD_RUN(producer_frozen_one_cpu);
        }
    }
    {
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", dir);
    }
    return PD_TEST_REPORT();
}
