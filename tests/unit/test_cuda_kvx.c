/*
 * test_cuda_kvx.c - kvxfer's GPU paths between two processes (label cuda; GPU machine
 * only): the NCCL connector's same-host CUDA IPC path (gather kernel, and the batch
 * copy), its NCCL send/recv path forced on one host (nccl_force_network), and the UCX
 * connector staging CUDA memory through pinned host memory.
 *
 * The test process itself never calls CUDA: every scenario forks a producer (GPU 0) and
 * a consumer (GPU 1, or GPU 0 too when there is one GPU) before any CUDA call, because
 * a CUDA context does not survive fork.  The consumer runs the checks and exits with 1
 * when any failed; the parent bounds every wait and kills what hangs.
 * Checks: data equality over random remote/local block lists (copied back to the host
 * and compared with the producer's pattern, untouched blocks unchanged), zero-length
 * pulls, out-of-range ids refused with nothing written, the copy kernel's own range
 * check, and a producer killed during a 512 MiB pull (bounded, callback exactly once,
 * the consumer's CUDA context still usable).
 * Exit 77 (skip) without a GPU.  KVX_TEST_MODES="ipc,ipc-batch,nccl,ucx" selects.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "kcuda_xfer.h"
#include "pd_log.h"
#include "test_kvx_common.h"

#define NB 64
#define ROUNDS 6
#define NBIG 256
#define BIG_BB ((size_t)2 << 20)

typedef struct mode {
    const char *name;
    const char *conn;
    const char *extra;  /* extra-config members for both sides */
    int needs_two_gpus; /* NCCL refuses two ranks on one device */
} tmode_t;

static const tmode_t modes_g[] = {
    {"ipc", "NcclConnector", "", 0},
    {"ipc-batch", "NcclConnector", "\"nccl_ipc_copy\":\"batch\"", 0},
    /* small chunks: a pull is several NCCL messages */
    {"nccl", "NcclConnector", "\"nccl_force_network\":true,\"nccl_chunk_bytes\":262144", 1},
    {"ucx", "UcxConnector", "\"staging_chunk_bytes\":262144", 0},
};

static int n_gpus_g;
static const tmode_t *mode_g;

/* ---- process plumbing (parent side: no CUDA) ---- */

/* Number of CUDA devices, asked in a child so the parent stays CUDA-free. */
static int count_gpus(void)
{
    int fds[2], n = 0;
    pid_t pid;

    if (pipe(fds) != 0)
        return 0;
    pid = fork();
    if (pid == 0) {
        int c = 0;
        if (cudaGetDeviceCount(&c) != cudaSuccess)
            c = 0;
        (void)!write(fds[1], &c, sizeof(c));
        _exit(0);
    }
    close(fds[1]);
    if (!pd_read_full_timeout(fds[0], &n, sizeof(n), 60000))
        n = 0;
    close(fds[0]);
    pd_child_wait(pid, 30);
    return n;
}

/* ---- child side ---- */

#define CK(expr, what)                                                                      \
    do {                                                                                    \
        cudaError_t e_ = (expr);                                                            \
        if (e_ != cudaSuccess) {                                                            \
            fprintf(stderr, "  %s: %s\n", (what), cudaGetErrorString(e_));                   \
            pd_test_failed_checks_g++;                                                      \
        }                                                                                   \
    } while (0)

static void cfg_json(char *out, size_t len, const char *role, const char *more)
{
    const char *extra = mode_g->extra;
    snprintf(out, len, "{\"kv_connector\":\"%s\",\"kv_role\":\"%s\",\"kv_port\":0,"
             "\"engine_id\":\"%s-%d\",\"kv_connector_extra_config\":{%s%s%s}}",
             mode_g->conn, role, role, (int)getpid(), extra, extra[0] && more[0] ? "," : "", more);
}

/* Producer: a CUDA region of nb blocks with the salt-1 pattern, leases "L0".."L<nl-1>"
 * over all of it; writes its port, then waits for the parent to close ctl. */
static void producer_main(int port_fd, int ctl_fd, int dev, uint32_t nb, size_t bb, int nl)
{
    char json[1024];
    kvx_compat_t compat = tk_compat();
    kvx_ctx_t *ctx = NULL;
    uint8_t *host = malloc((size_t)nb * bb);
    uint32_t *ids = malloc(nb * sizeof(uint32_t));
    tk_leases_t leases = {.mu = PTHREAD_MUTEX_INITIALIZER};
    void *dbase = NULL;
    int port = 0, rc = 1;
    char c;

    if (cudaSetDevice(dev) != cudaSuccess || cudaMalloc(&dbase, (size_t)nb * bb) != cudaSuccess ||
        host == NULL || ids == NULL) {
        fprintf(stderr, "  producer: no device memory\n");
        goto report;
    }
    tk_fill(host, nb, bb, 1);
    if (cudaMemcpy(dbase, host, (size_t)nb * bb, cudaMemcpyHostToDevice) != cudaSuccess)
        goto report;
    cfg_json(json, sizeof(json), "kv_producer", "\"lease_ttl_s\":120");
    ctx = tk_ctx(json, &compat);
    if (ctx == NULL ||
        kvx_ctx_register_region(ctx, &(kvx_region_t){dbase, nb, bb, KVX_MEM_CUDA}) != PD_OK)
        goto report;
    for (uint32_t i = 0; i < nb; i++)
        ids[i] = i;
    for (int k = 0; k < nl; k++) {
        char rid[32];
        snprintf(rid, sizeof(rid), "L%d", k);
        if (kvx_lease_create(ctx, rid, ids, nb, 0, tk_lease_cb, &leases) != PD_OK)
            goto report;
    }
    port = kvx_ctx_port(ctx);
report:
    if (write(port_fd, &port, sizeof(port)) != sizeof(port))
        _exit(1);
    if (port != 0) {
        (void)!read(ctl_fd, &c, 1); /* returns when the parent closes its end */
        rc = 0;
    }
    kvx_ctx_destroy(ctx);
    if (dbase != NULL)
        cudaFree(dbase);
    free(host);
    free(ids);
    _exit(rc);
}

typedef struct cons {
    kvx_ctx_t *ctx;
    void *dbase;
    uint8_t *host;
    int port;
} cons_t;

static int cons_open(cons_t *c, int dev, int port, uint32_t nb, size_t bb, const char *more)
{
    char json[1024];
    kvx_compat_t compat = tk_compat();

    memset(c, 0, sizeof(*c));
    c->port = port;
    if (cudaSetDevice(dev) != cudaSuccess || cudaMalloc(&c->dbase, (size_t)nb * bb) != cudaSuccess ||
        cudaMemset(c->dbase, 0, (size_t)nb * bb) != cudaSuccess ||
        (c->host = malloc((size_t)nb * bb)) == NULL) {
        fprintf(stderr, "  consumer: no device memory\n");
        return 0;
    }
    cfg_json(json, sizeof(json), "kv_consumer", more);
    c->ctx = tk_ctx(json, &compat);
    return c->ctx != NULL &&
           kvx_ctx_register_region(c->ctx, &(kvx_region_t){c->dbase, nb, bb, KVX_MEM_CUDA}) == PD_OK;
}

static void cons_close(cons_t *c)
{
    kvx_ctx_destroy(c->ctx);
    if (c->dbase != NULL)
        cudaFree(c->dbase);
    free(c->host);
}

static kvx_pull_desc_t desc(const cons_t *c, const char *rid, size_t n, const uint32_t *r, const uint32_t *l)
{
    return (kvx_pull_desc_t){.remote_host = "127.0.0.1", .remote_port = c->port, .remote_req_id = rid,
                             .req_id = rid, .n = n, .remote_ids = r, .local_ids = l};
}

/* Every local block holds what expect says: the pattern of remote block expect[l], or
 * zeros (-1). */
static int region_matches(cons_t *c, uint32_t nb, size_t bb, const int *expect)
{
    int bad = 0;

    if (cudaMemcpy(c->host, c->dbase, (size_t)nb * bb, cudaMemcpyDeviceToHost) != cudaSuccess) {
        fprintf(stderr, "  copy back failed\n");
        return 0;
    }
    for (uint32_t l = 0; l < nb; l++) {
        int ok;
        if (expect[l] < 0) {
            ok = 1;
            for (size_t i = 0; i < bb && ok; i++)
                ok = c->host[(size_t)l * bb + i] == 0;
        } else {
            ok = tk_block_is(c->host, bb, l, (uint32_t)expect[l], 1);
        }
        if (!ok && bad++ < 3)
            fprintf(stderr, "  local block %u: wrong contents (want remote %d)\n", l, expect[l]);
    }
    return bad == 0;
}

/* Random lists, zero-length, out of range; the whole region checked after each pull. */
static void consumer_data(int dev, int port, size_t bb)
{
    cons_t c;
    int expect[NB];
    uint32_t r[NB], l[NB];
    unsigned seed = 1234u + (unsigned)bb;
    char msg[256], rid[32];
    pd_status_t st;

    for (int i = 0; i < NB; i++)
        expect[i] = -1;
    PD_CHECK(cons_open(&c, dev, port, NB, bb, ""));
    if (c.ctx == NULL)
        goto out;
    for (int k = 0; k < ROUNDS; k++) {
        /* round 0 moves everything; round 1 nothing (only the release); then random */
        size_t n = k == 0 ? NB : k == 1 ? 0 : 1 + (size_t)(rand_r(&seed) % NB);
        tk_random_ids(r, n, NB, &seed);
        tk_random_ids(l, n, NB, &seed);
        snprintf(rid, sizeof(rid), "L%d", k);
        kvx_pull_desc_t d = desc(&c, rid, n, r, l);
        uint64_t t0 = pd_now_ns();
        st = kvx_pull_sync(c.ctx, &d, msg, sizeof(msg));
        PD_CHECK_STATUS(st, PD_OK);
        if (st != PD_OK) {
            fprintf(stderr, "  round %d (%zu blocks): %s\n", k, n, msg);
            continue;
        }
        printf("  %s bb=%zu round %d: %zu blocks in %.2f ms\n", mode_g->name, bb, k, n,
               (double)(pd_now_ns() - t0) / 1e6);
        for (size_t i = 0; i < n; i++)
            expect[l[i]] = (int)r[i];
        PD_CHECK(region_matches(&c, NB, bb, expect));
    }
    /* local ids outside our region: refused at once */
    {
        uint32_t rr[2] = {1, 2}, bad_l[2] = {0, NB + 5}, bad_r[2] = {1, NB}, ll[2] = {0, 1};
        kvx_pull_desc_t d = desc(&c, "L6", 2, rr, bad_l);
        PD_CHECK_STATUS(kvx_pull(c.ctx, &d, tk_pull_cb, NULL), PD_ERR_RANGE);
        /* remote ids outside the producer's region: refused, nothing written */
        d = desc(&c, "L6", 2, bad_r, ll);
        PD_CHECK_STATUS(kvx_pull_sync(c.ctx, &d, msg, sizeof(msg)), PD_ERR_RANGE);
        PD_CHECK(region_matches(&c, NB, bb, expect));
        /* the lease is still good after that */
        d = desc(&c, "L6", 2, rr, ll);
        PD_CHECK_STATUS(kvx_pull_sync(c.ctx, &d, msg, sizeof(msg)), PD_OK);
        expect[0] = 1;
        expect[1] = 2;
        PD_CHECK(region_matches(&c, NB, bb, expect));
    }
out:
    cons_close(&c);
}

/* The copy kernel's own range check (ids past the region are skipped and flagged). */
static void kernel_range_check(int dev)
{
    const size_t bb = 4096;
    uint32_t ids[3] = {0, 7, 1}, *d_ids = NULL;
    uint8_t *src = NULL, *dst = NULL, host[3 * 4096];
    int *d_err = NULL, err = 0;
    cudaStream_t s = NULL;

    CK(cudaSetDevice(dev), "set device");
    CK(cudaStreamCreate(&s), "stream");
    CK(cudaMalloc((void **)&src, 4 * bb), "malloc");
    CK(cudaMalloc((void **)&dst, 3 * bb), "malloc");
    CK(cudaMalloc((void **)&d_ids, sizeof(ids)), "malloc");
    CK(cudaMalloc((void **)&d_err, sizeof(int)), "malloc");
    if (src == NULL || dst == NULL || d_ids == NULL || d_err == NULL)
        goto out;
    CK(cudaMemset(src, 0x11, 4 * bb), "memset");
    CK(cudaMemset(dst, 0, 3 * bb), "memset");
    CK(cudaMemset(d_err, 0, sizeof(int)), "memset");
    CK(cudaMemcpy(d_ids, ids, sizeof(ids), cudaMemcpyHostToDevice), "ids");
    /* gather: src block ids {0, 7, 1} of a 4-block source: 7 is out of range */
    PD_CHECK_STATUS(kcuda_block_copy(dst, NULL, 3, src, d_ids, 4, 3, bb, d_err, s), PD_OK);
    CK(cudaStreamSynchronize(s), "sync");
    CK(cudaMemcpy(&err, d_err, sizeof(int), cudaMemcpyDeviceToHost), "err");
    CK(cudaMemcpy(host, dst, sizeof(host), cudaMemcpyDeviceToHost), "back");
    PD_CHECK(err & KCUDA_XFER_ERR_RANGE);
    PD_CHECK(host[0] == 0x11 && host[bb - 1] == 0x11);       /* block 0 copied */
    PD_CHECK(host[bb] == 0 && host[2 * bb - 1] == 0);         /* block 1 skipped */
    PD_CHECK(host[2 * bb] == 0x11 && host[3 * bb - 1] == 0x11);
    PD_CHECK_STATUS(kcuda_block_copy(dst, NULL, 3, src, NULL, 4, 1, 0, d_err, s), PD_ERR_INVAL);
out:
    cudaFree(src);
    cudaFree(dst);
    cudaFree(d_ids);
    cudaFree(d_err);
    if (s != NULL)
        cudaStreamDestroy(s);
}

/* A 512 MiB pull; the parent kills the producer when we say the pull started. */
static void consumer_killed(int dev, int port, int started_fd)
{
    cons_t c;
    uint32_t *ids = malloc(NBIG * sizeof(uint32_t));
    tk_pull_t res;
    uint64_t t0;
    char one = 1;
    void *probe = NULL;

    memset(&res, 0, sizeof(res));
    pthread_mutex_init(&res.mu, NULL);
    PD_CHECK(cons_open(&c, dev, port, NBIG, BIG_BB, "\"control_timeout_s\":1,\"transfer_timeout_s\":10"));
    if (c.ctx == NULL || ids == NULL)
        goto out;
    for (uint32_t i = 0; i < NBIG; i++)
        ids[i] = NBIG - 1 - i;
    kvx_pull_desc_t d = desc(&c, "L0", NBIG, ids, ids);
    t0 = pd_now_ns();
    PD_CHECK_STATUS(kvx_pull(c.ctx, &d, tk_pull_cb, &res), PD_OK);
    (void)!write(started_fd, &one, 1);
    PD_CHECK(tk_pull_wait(&res, 60));
    printf("  %s: pull with the producer killed ended with %s after %.2fs: %s\n", mode_g->name,
           pd_status_name(res.status), (double)(pd_now_ns() - t0) / 1e9, res.msg);
    PD_CHECK(res.status == PD_OK || res.status == PD_ERR_TRANSPORT || res.status == PD_ERR_TIMEOUT ||
             res.status == PD_ERR_CLOSED || res.status == PD_ERR_EXPIRED ||
             res.status == PD_ERR_CANCELED);
    pthread_mutex_lock(&res.mu);
    PD_CHECK_EQ_INT(res.fired, 1);
    pthread_mutex_unlock(&res.mu);
    /* our CUDA context survived */
    CK(cudaMalloc(&probe, 1 << 20), "probe malloc");
    if (probe != NULL) {
        CK(cudaMemset(probe, 1, 1 << 20), "probe memset");
        CK(cudaDeviceSynchronize(), "probe sync");
        cudaFree(probe);
    }
out:
    cons_close(&c);
    free(ids);
    pthread_mutex_destroy(&res.mu);
}

/* ---- scenarios (parent side) ---- */

typedef enum { SC_DATA, SC_KILL } scenario_t;

static void run_scenario(scenario_t sc, size_t bb)
{
    int port_p[2], ctl_p[2], started_p[2] = {-1, -1}, port = 0, prc, crc;
    int pdev = 0, cdev = n_gpus_g > 1 ? 1 : 0;
    uint32_t nb = sc == SC_KILL ? NBIG : NB;
    pid_t prod, cons;

    if (pipe(port_p) != 0 || pipe(ctl_p) != 0)
        return;
    prod = fork();
    if (prod == 0) {
        close(port_p[0]);
        close(ctl_p[1]);
        producer_main(port_p[1], ctl_p[0], pdev, nb, sc == SC_KILL ? BIG_BB : bb,
                      sc == SC_KILL ? 1 : ROUNDS + 2);
    }
    close(port_p[1]);
    close(ctl_p[0]);
    if (!pd_read_full_timeout(port_p[0], &port, sizeof(port), 120000) || port == 0) {
        fprintf(stderr, "  producer did not start\n");
        pd_test_failed_checks_g++;
        close(ctl_p[1]);
        pd_child_wait(prod, 30);
        goto out;
    }
    /* made after the producer's fork: only the consumer may hold its write end, so
     * a consumer that dies early is seen at once */
    if (pipe(started_p) != 0) {
        pd_test_failed_checks_g++;
        close(ctl_p[1]);
        pd_child_wait(prod, 30);
        goto out;
    }
    cons = fork();
    if (cons == 0) {
        close(started_p[0]);
        close(ctl_p[1]);
        if (sc == SC_DATA) {
            consumer_data(cdev, port, bb);
            if (bb % 16 == 0)
                kernel_range_check(cdev);
        } else {
            consumer_killed(cdev, port, started_p[1]);
        }
        fflush(stdout);
        _exit(pd_test_failed_checks_g ? 1 : 0);
    }
    close(started_p[1]);
    started_p[1] = -1;
    if (sc == SC_KILL) {
        char c;
        if (pd_read_full_timeout(started_p[0], &c, 1, 120000))
            usleep(2000); /* into the transfer (the IPC path may already be done) */
        kill(prod, SIGKILL);
    }
    crc = pd_child_wait(cons, 150);
    close(ctl_p[1]);
    prc = pd_child_wait(prod, 60);
    PD_CHECK_EQ_INT(crc, 0);
    if (sc == SC_DATA)
        PD_CHECK_EQ_INT(prc, 0);
out:
    close(port_p[0]);
    if (started_p[0] >= 0)
        close(started_p[0]);
    if (started_p[1] >= 0)
        close(started_p[1]);
}

PD_TEST(data_random_lists) { run_scenario(SC_DATA, 65536 + 4096 + 16); }
PD_TEST(data_odd_block_size) { run_scenario(SC_DATA, 4100); }
PD_TEST(data_16k_blocks) { run_scenario(SC_DATA, 16384); }
PD_TEST(producer_killed_mid_transfer) { run_scenario(SC_KILL, BIG_BB); }

static int mode_wanted(const char *name)
{
    const char *want = getenv("KVX_TEST_MODES");
    char buf[256], *save = NULL, *t;

    if (want == NULL || want[0] == '\0')
        return 1;
    snprintf(buf, sizeof(buf), "%s", want);
    for (t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (strcmp(t, name) == 0)
            return 1;
    return 0;
}

int main(void)
{
    int ran = 0;

    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (getenv("KVX_TEST_VERBOSE") == NULL)
        pd_log_set_level(PD_LOG_LEVEL_WARN);
    n_gpus_g = count_gpus();
    if (n_gpus_g < 1) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    printf("%d GPU(s): producer on GPU 0, consumer on GPU %d\n", n_gpus_g, n_gpus_g > 1 ? 1 : 0);
    for (size_t m = 0; m < PD_ARRAY_SIZE(modes_g); m++) {
        mode_g = &modes_g[m];
        if (!mode_wanted(mode_g->name))
            continue;
        if (mode_g->needs_two_gpus && n_gpus_g < 2) {
            printf("skip %s: needs two GPUs\n", mode_g->name);
            continue;
        }
        if (kvx_conn_ops_builtin(strcmp(mode_g->conn, "UcxConnector") == 0 ? KVX_CONN_UCX
                                                                            : KVX_CONN_NCCL) == NULL) {
            printf("skip %s: %s not built\n", mode_g->name, mode_g->conn);
            continue;
        }
        printf("== mode %s (%s {%s})\n", mode_g->name, mode_g->conn, mode_g->extra);
        PD_RUN(data_random_lists);
        PD_RUN(data_odd_block_size);
        PD_RUN(data_16k_blocks);
        PD_RUN(producer_killed_mid_transfer);
        ran++;
    }
    if (ran == 0) {
        printf("SKIP: no mode ran\n");
        return 77;
    }
    return PD_TEST_REPORT();
}
