/*
 * test_kvx_nccl_mock.c - the NcclConnector's logic on the CPU: kvxfer/kvx_nccl.c built
 * against the CPU stand-ins of tests/kvxfer/nccl_mock (CUDA runtime, NCCL, the block
 * copy kernels), producer and consumer in one process.  What the GPU run
 * (test_cuda_kvx) cannot show cheaply and CI can: the descriptors and SERVE blobs
 * between the two sides, the IPC path moving a whole pull in ONE copy-kernel launch,
 * the network path (nccl_force_network on either side) cutting a pull into chunks of
 * nccl_chunk_bytes with ONE message per chunk, data equality over random block lists
 * for every path, zero-length pulls, out-of-range ids, concurrent pulls on one pair, and
 * a frozen producer (sends vanish) ending in a bounded error after which the pair is
 * rebuilt and pulls work again.  With UCX, also the UcxConnector's staging of CUDA
 * regions through pinned host mirrors (kvx_ucx.c built with the mock CUDA runtime).
 * Built by kvxfer/CMakeLists.txt (label unit).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nccl.h" /* the mock's test hooks */
#include "pd_log.h"
#include "test_kvx_common.h"

#define NB 48
#define BB (4096 + 16)

typedef struct pair {
    kvx_ctx_t *prod, *cons;
    void *pbase, *cbase;
    tk_leases_t leases;
    int port;
} pair_t;

static int tid_g;
static const char *conn_g = "NcclConnector";

static kvx_ctx_t *ctx_for(const char *role, const char *extra)
{
    char json[1024];
    kvx_compat_t compat = tk_compat();

    snprintf(json, sizeof(json),
             "{\"kv_connector\":\"%s\",\"kv_role\":\"%s\",\"kv_port\":0,"
             "\"engine_id\":\"%s-%d\",\"kv_connector_extra_config\":{%s}}",
             conn_g, role, role, tid_g++, extra);
    return tk_ctx(json, &compat);
}

static int pair_open(pair_t *p, const char *pextra, const char *cextra)
{
    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->leases.mu, NULL);
    p->prod = ctx_for("kv_producer", pextra);
    p->cons = ctx_for("kv_consumer", cextra);
    if (p->prod == NULL || p->cons == NULL)
        return 0;
    p->port = kvx_ctx_port(p->prod);
    /* mock "device" memory is host memory: fill and read it directly */
    if (cudaMalloc(&p->pbase, (size_t)NB * BB) != cudaSuccess ||
        cudaMalloc(&p->cbase, (size_t)NB * BB) != cudaSuccess)
        return 0;
    tk_fill(p->pbase, NB, BB, 1);
    memset(p->cbase, 0, (size_t)NB * BB);
    return kvx_ctx_register_region(p->prod, &(kvx_region_t){p->pbase, NB, BB, KVX_MEM_CUDA}) == PD_OK &&
           kvx_ctx_register_region(p->cons, &(kvx_region_t){p->cbase, NB, BB, KVX_MEM_CUDA}) == PD_OK;
}

static void pair_close(pair_t *p)
{
    kvx_ctx_destroy(p->cons);
    if (p->prod != NULL) {
        PD_CHECK_EQ_INT(kvx_lease_count(p->prod), 0);
    }
    kvx_ctx_destroy(p->prod);
    cudaFree(p->pbase);
    cudaFree(p->cbase);
    pthread_mutex_destroy(&p->leases.mu);
}

static kvx_pull_desc_t desc(pair_t *p, const char *rid, size_t n, const uint32_t *r, const uint32_t *l)
{
    return (kvx_pull_desc_t){.remote_host = "127.0.0.1", .remote_port = p->port,
                             .remote_engine_id = kvx_ctx_engine_id(p->prod), .remote_req_id = rid,
                             .req_id = rid, .n = n, .remote_ids = r, .local_ids = l};
}

/* Random pulls; per pull, how many copy launches and NCCL messages it took. */
static void random_pulls(const char *pextra, const char *cextra, size_t want_launches_per_pull,
                         size_t chunk_blocks)
{
    pair_t p;
    uint32_t r[NB], l[NB], all[NB];
    int expect[NB];
    unsigned seed = 99;
    char msg[256], rid[32];

    for (int i = 0; i < NB; i++) {
        expect[i] = -1;
        all[i] = (uint32_t)i;
    }
    PD_CHECK(pair_open(&p, pextra, cextra));
    if (p.prod == NULL || p.cons == NULL || p.cbase == NULL)
        goto out;
    for (int k = 0; k < 8; k++) {
        size_t n = k == 0 ? NB : k == 1 ? 0 : 1 + (size_t)(rand_r(&seed) % NB);
        size_t launches0 = mock_cuda_kernel_launches(), sent0 = mock_nccl_messages_sent();
        size_t copies0 = mock_cuda_stream_copies(), opens0 = mock_cuda_ipc_opens();
        snprintf(rid, sizeof(rid), "r%d", k);
        PD_CHECK_STATUS(kvx_lease_create(p.prod, rid, all, NB, 0, tk_lease_cb, &p.leases), PD_OK);
        tk_random_ids(r, n, NB, &seed);
        tk_random_ids(l, n, NB, &seed);
        kvx_pull_desc_t d = desc(&p, rid, n, r, l);
        PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_OK);
        for (size_t i = 0; i < n; i++)
            expect[l[i]] = (int)r[i];
        for (uint32_t b = 0; b < NB; b++) {
            int ok = expect[b] < 0 ? ((uint8_t *)p.cbase)[(size_t)b * BB] == 0
                                   : tk_block_is(p.cbase, BB, b, (uint32_t)expect[b], 1);
            if (!ok)
                fprintf(stderr, "  pull %d: local block %u wrong (want remote %d)\n", k, b, expect[b]);
            PD_CHECK(ok);
        }
        if (n > 0 && chunk_blocks == 0) {
            /* IPC: the whole pull in want_launches_per_pull copy launches, no messages */
            PD_CHECK_EQ_INT(mock_cuda_kernel_launches() - launches0, want_launches_per_pull);
            PD_CHECK_EQ_INT(mock_nccl_messages_sent() - sent0, 0);
            /* the kernel path's per-pull host work: ONE id upload (both lists) and the
             * error word read back, nothing else on the stream */
            if (want_launches_per_pull == 1)
                PD_CHECK_EQ_INT(mock_cuda_stream_copies() - copies0, 2);
            /* the producer's IPC mapping is opened once per peer, not per pull */
            if (k > 0)
                PD_CHECK_EQ_INT(mock_cuda_ipc_opens() - opens0, 0);
        } else if (n > 0) {
            /* network: one message per chunk, one gather + one scatter launch per chunk */
            size_t chunks = (n + chunk_blocks - 1) / chunk_blocks;
            PD_CHECK_EQ_INT(mock_nccl_messages_sent() - sent0, chunks);
            PD_CHECK_EQ_INT(mock_cuda_kernel_launches() - launches0, 2 * chunks);
        }
    }
    PD_CHECK(tk_wait_ended(&p.leases, KVX_LEASE_RELEASED, 8, 10));
    /* out of range: local refused at once; remote refused, nothing written */
    {
        uint32_t rr[2] = {1, 2}, bad_l[2] = {0, NB + 5}, bad_r[2] = {1, NB}, ll[2] = {0, 1};
        uint8_t before = ((uint8_t *)p.cbase)[0];
        PD_CHECK_STATUS(kvx_lease_create(p.prod, "range", all, NB, 0, tk_lease_cb, &p.leases), PD_OK);
        kvx_pull_desc_t d = desc(&p, "range", 2, rr, bad_l);
        PD_CHECK_STATUS(kvx_pull(p.cons, &d, tk_pull_cb, NULL), PD_ERR_RANGE);
        d = desc(&p, "range", 2, bad_r, ll);
        PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_ERR_RANGE);
        PD_CHECK(((uint8_t *)p.cbase)[0] == before);
        d = desc(&p, "range", 2, rr, ll);
        PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_OK);
        PD_CHECK(tk_block_is(p.cbase, BB, 0, 1, 1) && tk_block_is(p.cbase, BB, 1, 2, 1));
    }
out:
    pair_close(&p);
}

PD_TEST(ipc_one_launch_per_pull) { random_pulls("", "", 1, 0); }
PD_TEST(ipc_batch_copies) { random_pulls("", "\"nccl_ipc_copy\":\"batch\"", 0, 0); }
PD_TEST(ipc_copy_per_block) { random_pulls("", "\"nccl_ipc_copy\":\"memcpy\"", 0, 0); }
/* 65536 / 4112 = 15 blocks per message */
PD_TEST(network_forced_by_consumer)
{
    random_pulls("", "\"nccl_force_network\":true,\"nccl_chunk_bytes\":65536", 0, 15);
}
PD_TEST(network_forced_by_producer)
{
    /* the consumer's default chunk (64 MiB) holds every block: one message per pull */
    random_pulls("\"nccl_force_network\":true", "", 0, NB);
}

/* Four pulls at once to one producer, half of them through another host name (so the
 * core makes two peers for it).  Network path: they share one NCCL pair and are
 * serialised in SERVE order, all correct.  (Two pairs between the same two connector
 * threads could each wait on the other.)  IPC path: the two peers share one mapping of
 * the producer's region, and reads queued together run as one group (one id upload,
 * one kernel each, one drain); every block must land where its own pull put it. */
static int ipc_groups_seen;

static void concurrent_pulls(const char *cextra, int rounds)
{
    pair_t p;
    uint32_t all[NB], r[4][NB / 4], l[4][NB / 4];
    tk_pull_t res[4];
    char rid[4][16];

    for (int i = 0; i < NB; i++)
        all[i] = (uint32_t)i;
    PD_CHECK(pair_open(&p, "", cextra));
    if (p.prod == NULL || p.cons == NULL || p.cbase == NULL)
        goto out;
    for (int round = 0; round < rounds; round++) {
    size_t copies0 = mock_cuda_stream_copies(), launches0 = mock_cuda_kernel_launches();
    memset(p.cbase, 0, (size_t)NB * BB);
    for (int k = 0; k < 4; k++) {
        memset(&res[k], 0, sizeof(res[k]));
        pthread_mutex_init(&res[k].mu, NULL);
        snprintf(rid[k], sizeof(rid[k]), "c%d.%d", k, round);
        for (int i = 0; i < NB / 4; i++) {
            r[k][i] = (uint32_t)(NB - 1 - (k * (NB / 4) + i));
            l[k][i] = (uint32_t)(k * (NB / 4) + i);
        }
        PD_CHECK_STATUS(kvx_lease_create(p.prod, rid[k], all, NB, 0, tk_lease_cb, &p.leases), PD_OK);
    }
    for (int k = 0; k < 4; k++) {
        kvx_pull_desc_t d = desc(&p, rid[k], NB / 4, r[k], l[k]);
        if (k % 2)
            d.remote_host = "localhost";
        PD_CHECK_STATUS(kvx_pull(p.cons, &d, tk_pull_cb, &res[k]), PD_OK);
    }
    for (int k = 0; k < 4; k++) {
        PD_CHECK(tk_pull_wait(&res[k], 30));
        if (res[k].status != PD_OK)
            fprintf(stderr, "  pull %d: %s\n", k, res[k].msg);
        PD_CHECK_STATUS(res[k].status, PD_OK);
        PD_CHECK_EQ_INT(res[k].fired, 1);
        pthread_mutex_destroy(&res[k].mu);
    }
    for (uint32_t b = 0; b < NB; b++)
        PD_CHECK(tk_block_is(p.cbase, BB, b, NB - 1 - b, 1));
    if (strstr(cextra, "force_network") == NULL) {
        /* IPC: one kernel per pull whether grouped or not; grouped reads share the id
         * upload and the error word read (2 stream copies per group) */
        size_t copies = mock_cuda_stream_copies() - copies0;
        PD_CHECK_EQ_INT(mock_cuda_kernel_launches() - launches0, 4);
        PD_CHECK(copies >= 2 && copies <= 8 && copies % 2 == 0);
        ipc_groups_seen += copies < 8;
    }
    PD_CHECK(tk_wait_ended(&p.leases, KVX_LEASE_RELEASED, 4 * (round + 1), 10));
    }
out:
    pair_close(&p);
}

PD_TEST(network_concurrent_pulls) { concurrent_pulls("\"nccl_force_network\":true,\"nccl_chunk_bytes\":65536", 1); }

PD_TEST(ipc_concurrent_pulls)
{
    concurrent_pulls("", 20);
    printf("     IPC rounds with grouped reads: %d of 20\n", ipc_groups_seen);
}

/* Two producers and two consumers on the network path, every consumer pulling from
 * both producers at once in opposite orders, several rounds: data right everywhere.
 * (It does not force the cross-pair ordering cycle documented in docs/kvxfer.md; when
 * timing makes one, the pulls involved fail after transfer_timeout_s.) */
PD_TEST(network_two_by_two)
{
    kvx_ctx_t *prod[2] = {NULL, NULL}, *cons[2] = {NULL, NULL};
    void *pbase[2] = {NULL, NULL}, *cbase[2] = {NULL, NULL};
    tk_leases_t leases = {.mu = PTHREAD_MUTEX_INITIALIZER};
    uint32_t all[NB], half[2][NB / 2];
    int port[2];
    const char *ex = "\"nccl_force_network\":true,\"transfer_timeout_s\":5,\"nccl_chunk_bytes\":65536";

    for (int i = 0; i < NB; i++)
        all[i] = (uint32_t)i;
    for (int i = 0; i < NB / 2; i++) {
        half[0][i] = (uint32_t)i;
        half[1][i] = (uint32_t)(NB / 2 + i);
    }
    for (int i = 0; i < 2; i++) {
        prod[i] = ctx_for("kv_producer", ex);
        cons[i] = ctx_for("kv_consumer", ex);
        PD_CHECK(prod[i] != NULL && cons[i] != NULL);
        if (prod[i] == NULL || cons[i] == NULL)
            goto out;
        port[i] = kvx_ctx_port(prod[i]);
        if (cudaMalloc(&pbase[i], (size_t)NB * BB) != cudaSuccess ||
            cudaMalloc(&cbase[i], (size_t)NB * BB) != cudaSuccess)
            goto out;
        tk_fill(pbase[i], NB, BB, 1 + (uint32_t)i);
        memset(cbase[i], 0, (size_t)NB * BB);
        PD_CHECK_STATUS(kvx_ctx_register_region(prod[i], &(kvx_region_t){pbase[i], NB, BB, KVX_MEM_CUDA}), PD_OK);
        PD_CHECK_STATUS(kvx_ctx_register_region(cons[i], &(kvx_region_t){cbase[i], NB, BB, KVX_MEM_CUDA}), PD_OK);
    }
    for (int round = 0; round < 6; round++) {
        tk_pull_t res[2][2];
        char rid[2][2][32];
        /* consumer c pulls producer p's blocks into its half p */
        for (int c = 0; c < 2; c++)
            for (int pr = 0; pr < 2; pr++) {
                snprintf(rid[c][pr], sizeof(rid[c][pr]), "x%d-%d-%d", round, c, pr);
                PD_CHECK_STATUS(kvx_lease_create(prod[pr], rid[c][pr], all, NB, 0, tk_lease_cb, &leases), PD_OK);
                memset(&res[c][pr], 0, sizeof(res[c][pr]));
                pthread_mutex_init(&res[c][pr].mu, NULL);
            }
        for (int c = 0; c < 2; c++)
            for (int k = 0; k < 2; k++) {
                int pr = (c + k + round) % 2; /* different orders on the two consumers */
                kvx_pull_desc_t d = {.remote_host = "127.0.0.1", .remote_port = port[pr],
                                     .remote_req_id = rid[c][pr], .n = NB / 2,
                                     .remote_ids = half[(pr + round) % 2], .local_ids = half[pr]};
                PD_CHECK_STATUS(kvx_pull(cons[c], &d, tk_pull_cb, &res[c][pr]), PD_OK);
            }
        for (int c = 0; c < 2; c++)
            for (int pr = 0; pr < 2; pr++) {
                PD_CHECK(tk_pull_wait(&res[c][pr], 30));
                if (res[c][pr].status != PD_OK)
                    fprintf(stderr, "  round %d consumer %d producer %d: %s\n", round, c, pr, res[c][pr].msg);
                PD_CHECK_STATUS(res[c][pr].status, PD_OK);
                pthread_mutex_destroy(&res[c][pr].mu);
                for (int i = 0; i < NB / 2; i++)
                    PD_CHECK(tk_block_is(cbase[c], BB, half[pr][i], half[(pr + round) % 2][i], 1 + (uint32_t)pr));
            }
    }
out:
    for (int i = 0; i < 2; i++) {
        kvx_ctx_destroy(cons[i]);
        kvx_ctx_destroy(prod[i]);
        cudaFree(pbase[i]);
        cudaFree(cbase[i]);
    }
}

/* Sends vanish (a frozen producer): the pull ends within the transfer timeout, exactly
 * once; then the pair is rebuilt and a pull works again. */
PD_TEST(network_frozen_producer)
{
    pair_t p;
    uint32_t all[NB];
    tk_pull_t res;
    char msg[256];
    uint64_t t0;

    for (int i = 0; i < NB; i++)
        all[i] = (uint32_t)i;
    PD_CHECK(pair_open(&p, "", "\"nccl_force_network\":true,\"transfer_timeout_s\":1"));
    if (p.prod == NULL || p.cons == NULL || p.cbase == NULL)
        goto out;
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "frozen", all, NB, 0, tk_lease_cb, &p.leases), PD_OK);
    PD_CHECK_STATUS(kvx_lease_create(p.prod, "after", all, NB, 0, tk_lease_cb, &p.leases), PD_OK);
    memset(&res, 0, sizeof(res));
    pthread_mutex_init(&res.mu, NULL);
    mock_nccl_drop_sends(1);
    t0 = pd_now_ns();
    kvx_pull_desc_t d = desc(&p, "frozen", NB, all, all);
    PD_CHECK_STATUS(kvx_pull(p.cons, &d, tk_pull_cb, &res), PD_OK);
    PD_CHECK(tk_pull_wait(&res, 30));
    mock_nccl_drop_sends(0);
    printf("  frozen producer: %s after %.2fs: %s\n", pd_status_name(res.status),
           (double)(pd_now_ns() - t0) / 1e9, res.msg);
    PD_CHECK(res.status == PD_ERR_TIMEOUT || res.status == PD_ERR_TRANSPORT);
    PD_CHECK(!res.unsafe);
    PD_CHECK_EQ_INT(res.fired, 1);
    pthread_mutex_destroy(&res.mu);
    /* the producer's send finished (into the void); a fresh pair carries the next pull */
    d = desc(&p, "after", NB, all, all);
    PD_CHECK_STATUS(kvx_pull_sync(p.cons, &d, msg, sizeof(msg)), PD_OK);
    for (uint32_t b = 0; b < NB; b++)
        PD_CHECK(tk_block_is(p.cbase, BB, b, b, 1));
out:
    pair_close(&p);
}

#ifdef KVX_HAVE_UCX
/* UcxConnector with CUDA regions and a UCX without CUDA transports (Debian's): staged
 * through pinned host mirrors, 4 blocks per chunk so a pull is several chunks. */
PD_TEST(ucx_cuda_staging)
{
    /* same host, mirrors UCX allocated: copies straight from the producer's mapped
     * mirror; then gets over shared memory (KVX_UCX_DIRECT=0); then the endpoint with
     * error handling (tcp) and gets (KVX_UCX_SAME_HOST_SHM=0); with tcp only the mirror
     * is not a shared segment: the endpoint falls back to error handling */
    static const char *envs[][2] = {{"KVX_UCX_DIRECT", "1"}, {"KVX_UCX_DIRECT", "0"},
                                    {"KVX_UCX_SAME_HOST_SHM", "0"}, {"UCX_TLS", "tcp"}};

    conn_g = "UcxConnector";
    setenv("KVX_UCX_PRINT_EP", "1", 1);
    for (size_t i = 0; i < PD_ARRAY_SIZE(envs); i++) {
        setenv(envs[i][0], envs[i][1], 1);
        random_pulls("", "\"staging_chunk_bytes\":16448", 0, 0);
        unsetenv(envs[i][0]);
        /* every host registration (mirrors, mapped peer mirrors) undone at close */
        PD_CHECK_EQ_INT(mock_cuda_host_regs_live(), 0);
    }
    /* shared memory only */
    setenv("UCX_TLS", "sm,self", 1);
    random_pulls("", "\"staging_chunk_bytes\":16448", 0, 0);
    unsetenv("UCX_TLS");
    unsetenv("KVX_UCX_PRINT_EP");
    PD_CHECK_EQ_INT(mock_cuda_host_regs_live(), 0);
    conn_g = "NcclConnector";
}
#endif

int main(void)
{
    if (getenv("KVX_TEST_VERBOSE") == NULL)
        pd_log_set_level(PD_LOG_LEVEL_CRIT);
    /* the connector's timing split runs too (one stderr line per connector) */
    setenv("KVX_NCCL_TIMING", "mock", 1);
    PD_RUN(ipc_one_launch_per_pull);
    PD_RUN(ipc_batch_copies);
    PD_RUN(ipc_copy_per_block);
    PD_RUN(network_forced_by_consumer);
    PD_RUN(network_forced_by_producer);
    PD_RUN(network_concurrent_pulls);
    PD_RUN(ipc_concurrent_pulls);
    PD_RUN(network_two_by_two);
    PD_RUN(network_frozen_producer);
#ifdef KVX_HAVE_UCX
    PD_RUN(ucx_cuda_staging);
#endif
    PD_CHECK_EQ_INT(mock_cuda_bytes_live(), 0);
    return PD_TEST_REPORT();
}
