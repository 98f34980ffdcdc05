/*
 * bench_kvxfer_gpu.c - `bench_kvxfer --gpu`: GPU block transfer between two processes
 * (producer on GPU 0, consumer on GPU 1, or both on GPU 0 with one GPU) through the full
 * kvxfer protocol, beside the ceilings measured in the same run:
 *   - peer copy: one cudaMemcpyPeerAsync of the whole size GPU0 -> GPU1 (NVLink), the
 *     ceiling of the IPC and NCCL paths; also, for reference, the gather kernel and one
 *     copy per block between the two GPUs inside one process;
 *   - pinned host -> GPU and GPU -> host copies of the whole size, the ceiling of the
 *     UCX host-staged path.
 * Modes: ipc (gather kernel), ipc-batch (cudaMemcpyBatchAsync), ipc-memcpy (one copy per
 * block, the old way), nccl (nccl_force_network: gather, one send per 64 MiB chunk,
 * scatter), nccl-1msg (the same with one 256 MiB message per pull),
 * ucx (host staging; the producer's device-to-host copy happens at lease time and is
 * not in the figure, the consumer's host-to-device copy is).
 * On one host ucx copies straight from the producer's mapped mirror (kvx_ucx.c);
 * ucx-sm: UCX gets over shared memory instead (UCX_TLS=sm,self, KVX_UCX_DIRECT=0:
 * posix/sysv/cma into the consumer's mirror, then to the GPU); every UCX run prints
 * the endpoint's lanes (one line to stderr, "kvx ucx ep ...", from KVX_UCX_PRINT_EP).
 * Every pull moves all blocks of a --total-mib region, remote ids in order to local ids
 * reversed (so the gather is not a plain copy); best and median of --iters pulls after
 * a warm-up; the last pull is checked (first and last bytes of every block).
 * --concurrency K (a list, "1,4"): K consumer threads each pull the whole region at
 * once (K leases of the same blocks, K requests in flight through kvx_pull_sync, the
 * call an engine's request makes); a round's figure is K x the size over the time from
 * the common start to the last pull's return.  The interval is the engine's: from the
 * pull call to its completion, the control round trips (ACQUIRE, RELEASE) included.
 * "ctl us" is a zero-length pull (RELEASE only: one round trip; a data pull makes two),
 * so "data GB/s" (the size over the best pull less ctl us) still includes one round
 * trip; the consumer of the NCCL modes prints the connector's own split of a read
 * (KVX_NCCL_TIMING: queue, host, GPU wait, callback) to stderr at the end.
 *
 * The parent process never touches CUDA (a CUDA context does not survive fork): the
 * ceilings and each consumer run in children that report through a pipe.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "bench_kvxfer_gpu.h"
#include "kcuda_xfer.h"
#include "kvx.h"
#include "pd_log.h"
#include "pd_util.h"

typedef struct gmode {
    const char *name, *conn, *extra;
    int needs_two_gpus;
} gmode_t;

static const gmode_t gmodes[] = {
    {"ipc", "NcclConnector", "\"nccl_ipc_copy\":\"kernel\"", 0},
    {"ipc-batch", "NcclConnector", "\"nccl_ipc_copy\":\"batch\"", 0},
    {"ipc-memcpy", "NcclConnector", "\"nccl_ipc_copy\":\"memcpy\"", 0},
    {"nccl", "NcclConnector", "\"nccl_force_network\":true", 1},
    /* the whole 256 MiB pull as one message (staging of the pull's size on both sides) */
    {"nccl-1msg", "NcclConnector", "\"nccl_force_network\":true,\"nccl_chunk_bytes\":268435456", 1},
    {"ucx", "UcxConnector", "", 0},
    {"ucx-sm", "UcxConnector", "", 0},
};

/* Environment for a mode's two processes (set in the children before any UCX call). */
static void mode_env(const gmode_t *m, size_t bb, int conc)
{
    char tag[48];

    if (strcmp(m->name, "ucx-sm") == 0) {
        setenv("UCX_TLS", "sm,self", 1);
        setenv("KVX_UCX_DIRECT", "0", 1);
    }
    if (strncmp(m->name, "ucx", 3) == 0) {
        setenv("KVX_UCX_PRINT_EP", "1", 0);
    } else {
        snprintf(tag, sizeof(tag), "%s %zuKiB K=%d", m->name, bb >> 10, conc);
        setenv("KVX_NCCL_TIMING", tag, 1);
    }
}

static int mode_is_ucx(const gmode_t *m) { return strncmp(m->name, "ucx", 3) == 0; }

typedef struct gres {
    int ok;
    double best, median;
    double ctl_us;                   /* median zero-length pull: the protocol alone */
    char err[160];
} gres_t;

typedef struct ceil {
    int ok;
    double peer, h2d, d2h;           /* GB/s */
    double kern_2m, kern_16k;        /* in-process gather kernel GPU0 -> GPU1 */
    double percopy_2m;               /* in-process, one cudaMemcpyPeerAsync per 2 MiB block */
    double memcpy_gbs;               /* host memcpy (UCX's shared-memory gets are bound by it) */
    char err[160];
} ceil_t;

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- children (CUDA) ---- */

#define TRY(expr, what)                                                                     \
    do {                                                                                    \
        cudaError_t e_ = (expr);                                                            \
        if (e_ != cudaSuccess) {                                                            \
            snprintf(c->err, sizeof(c->err), "%s: %s", (what), cudaGetErrorString(e_));      \
            goto out;                                                                       \
        }                                                                                   \
    } while (0)

static double gbs(size_t bytes, float ms)
{
    return ms > 0 ? (double)bytes / (ms / 1e3) / 1e9 : 0;
}

/* Time fn-like work between two events, best of iters. */
static void ceilings_child(int wfd, size_t total, int iters, int n_gpus)
{
    ceil_t res = {0}, *c = &res;
    int src = 0, dst = n_gpus > 1 ? 1 : 0, can = 0;
    void *a = NULL, *b = NULL, *h = NULL;
    uint32_t *ids = NULL;
    cudaStream_t s = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    float ms;

    TRY(cudaSetDevice(src), "set device 0");
    TRY(cudaMalloc(&a, total), "malloc on GPU 0");
    TRY(cudaMemset(a, 0x5a, total), "memset");
    TRY(cudaSetDevice(dst), "set device 1");
    if (dst != src) {
        TRY(cudaDeviceCanAccessPeer(&can, dst, src), "can access peer");
        if (can) {
            cudaError_t e = cudaDeviceEnablePeerAccess(src, 0);
            if (e != cudaSuccess && e != cudaErrorPeerAccessAlreadyEnabled)
                TRY(e, "enable peer access");
            (void)cudaGetLastError();
        }
    }
    TRY(cudaMalloc(&b, total), "malloc on GPU 1");
    TRY(cudaHostAlloc(&h, total, cudaHostAllocDefault), "pinned host");
    memset(h, 1, total);
    TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
    TRY(cudaEventCreate(&e0), "event");
    TRY(cudaEventCreate(&e1), "event");
    for (int k = 0; k < iters + 1; k++) {
        TRY(cudaEventRecord(e0, s), "record");
        TRY(cudaMemcpyPeerAsync(b, dst, a, src, total, s), "peer copy");
        TRY(cudaEventRecord(e1, s), "record");
        TRY(cudaEventSynchronize(e1), "sync");
        TRY(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
        if (k > 0 && gbs(total, ms) > c->peer)
            c->peer = gbs(total, ms);
        TRY(cudaEventRecord(e0, s), "record");
        TRY(cudaMemcpyAsync(b, h, total, cudaMemcpyHostToDevice, s), "h2d");
        TRY(cudaEventRecord(e1, s), "record");
        TRY(cudaEventSynchronize(e1), "sync");
        TRY(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
        if (k > 0 && gbs(total, ms) > c->h2d)
            c->h2d = gbs(total, ms);
        TRY(cudaEventRecord(e0, s), "record");
        TRY(cudaMemcpyAsync(h, b, total, cudaMemcpyDeviceToHost, s), "d2h");
        TRY(cudaEventRecord(e1, s), "record");
        TRY(cudaEventSynchronize(e1), "sync");
        TRY(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
        if (k > 0 && gbs(total, ms) > c->d2h)
            c->d2h = gbs(total, ms);
    }
    /* the gather kernel on GPU 1 reading GPU 0 (needs peer access; same GPU: local) */
    if (dst == src || can) {
        size_t bbs[2] = {(size_t)2 << 20, (size_t)16 << 10};
        TRY(cudaMalloc((void **)&ids, (total / bbs[1]) * sizeof(uint32_t)), "ids");
        for (int v = 0; v < 2; v++) {
            size_t nb = total / bbs[v];
            uint32_t *hid = malloc(nb * sizeof(uint32_t));
            double best = 0;
            if (hid == NULL)
                goto out;
            for (size_t i = 0; i < nb; i++)
                hid[i] = (uint32_t)(nb - 1 - i);
            TRY(cudaMemcpy(ids, hid, nb * sizeof(uint32_t), cudaMemcpyHostToDevice), "ids");
            free(hid);
            for (int k = 0; k < iters + 1; k++) {
                TRY(cudaEventRecord(e0, s), "record");
                if (kcuda_block_copy(b, NULL, nb, a, ids, nb, nb, bbs[v], NULL, s) != PD_OK) {
                    snprintf(c->err, sizeof(c->err), "kcuda_block_copy failed");
                    goto out;
                }
                TRY(cudaEventRecord(e1, s), "record");
                TRY(cudaEventSynchronize(e1), "sync");
                TRY(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
                if (k > 0 && gbs(total, ms) > best)
                    best = gbs(total, ms);
            }
            if (v == 0)
                c->kern_2m = best;
            else
                c->kern_16k = best;
        }
    }
    /* one peer copy per 2 MiB block (what the IPC path did before) */
    {
        size_t bb = (size_t)2 << 20, nb = total / bb;
        for (int k = 0; k < iters + 1; k++) {
            TRY(cudaEventRecord(e0, s), "record");
            for (size_t i = 0; i < nb; i++)
                TRY(cudaMemcpyPeerAsync((char *)b + (nb - 1 - i) * bb, dst, (char *)a + i * bb, src, bb, s),
                    "peer copy");
            TRY(cudaEventRecord(e1, s), "record");
            TRY(cudaEventSynchronize(e1), "sync");
            TRY(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
            if (k > 0 && gbs(total, ms) > c->percopy_2m)
                c->percopy_2m = gbs(total, ms);
        }
    }
    /* host memcpy between two pageable buffers of the same size */
    {
        char *x = malloc(total), *y = malloc(total);
        if (x != NULL && y != NULL) {
            memset(x, 3, total);
            memset(y, 4, total);
            for (int k = 0; k < iters + 1; k++) {
                uint64_t t0 = pd_now_ns();
                memcpy(y, x, total);
                double g = (double)total / ((double)(pd_now_ns() - t0) / 1e9) / 1e9;
                if (y[total / 2] != 3)
                    abort();
                if (k > 0 && g > c->memcpy_gbs)
                    c->memcpy_gbs = g;
            }
        }
        free(x);
        free(y);
    }
    c->ok = 1;
out:
    if (write(wfd, &res, sizeof(res)) != sizeof(res))
        _exit(1);
    _exit(0);
}

static kvx_ctx_t *make_ctx(const gmode_t *m, const char *role, const char *more)
{
    char json[768], err[256];
    kvx_config_t cfg;
    kvx_ctx_t *ctx = NULL;
    kvx_compat_t compat;

    memset(&compat, 0, sizeof(compat));
    snprintf(compat.model, sizeof(compat.model), "bench");
    snprintf(compat.dtype, sizeof(compat.dtype), "f16");
    compat.n_layers = compat.n_kv_heads = compat.head_dim = compat.block_size = 1;
    compat.layout_id = 1;
    snprintf(json, sizeof(json),
             "{\"kv_connector\":\"%s\",\"kv_role\":\"%s\",\"kv_port\":0,"
             "\"kv_connector_extra_config\":{\"transfer_timeout_s\":30,\"lease_ttl_s\":300%s%s%s%s}}",
             m->conn, role, m->extra[0] ? "," : "", m->extra, more[0] ? "," : "", more);
    if (kvx_config_parse(json, &cfg, err, sizeof(err)) == PD_OK) {
        if (kvx_ctx_create(&cfg, &compat, &ctx) != PD_OK)
            ctx = NULL;
    } else {
        fprintf(stderr, "bench: config %s: %s\n", json, err);
    }
    kvx_config_cleanup(&cfg);
    return ctx;
}

static void lease_cb(void *arg, const char *id, const uint32_t *ids, size_t n, kvx_lease_end_t why)
{
    (void)arg; (void)id; (void)ids; (void)n; (void)why;
}

static uint8_t block_byte(size_t b) { return (uint8_t)((b * 37u + 11u) & 0xffu); }

static void producer_child(int wfd, int rfd, const gmode_t *m, uint32_t nb, size_t bb, int iters, int conc)
{
    kvx_ctx_t *ctx = NULL;
    void *d = NULL;
    uint8_t *h = NULL;
    uint32_t *ids = malloc(nb * sizeof(uint32_t));
    int port = 0;
    char c;

    mode_env(m, bb, conc);
    if (cudaSetDevice(0) != cudaSuccess || cudaMalloc(&d, (size_t)nb * bb) != cudaSuccess ||
        cudaHostAlloc((void **)&h, (size_t)nb * bb, cudaHostAllocDefault) != cudaSuccess || ids == NULL)
        goto report;
    for (uint32_t i = 0; i < nb; i++) {
        memset(h + (size_t)i * bb, block_byte(i), bb);
        ids[i] = i;
    }
    if (cudaMemcpy(d, h, (size_t)nb * bb, cudaMemcpyHostToDevice) != cudaSuccess)
        goto report;
    ctx = make_ctx(m, "kv_producer", "");
    if (ctx == NULL || kvx_ctx_register_region(ctx, &(kvx_region_t){d, nb, bb, KVX_MEM_CUDA}) != PD_OK)
        goto report;
    for (int k = 0; k < iters + 1; k++) {
        char rid[32];
        for (int t = 0; t < conc; t++) {
            snprintf(rid, sizeof(rid), "bench-%d-%d", t, k);
            if (kvx_lease_create(ctx, rid, ids, nb, 0, lease_cb, NULL) != PD_OK)
                goto report;
        }
        snprintf(rid, sizeof(rid), "zero-%d", k);
        if (kvx_lease_create(ctx, rid, ids, 0, 0, lease_cb, NULL) != PD_OK)
            goto report;
    }
    port = kvx_ctx_port(ctx);
report:
    if (write(wfd, &port, sizeof(port)) != sizeof(port))
        _exit(1);
    (void)!read(rfd, &c, 1);
    kvx_ctx_destroy(ctx);
    _exit(0);
}

/* One consumer thread of a --concurrency run: one pull per round, between barriers. */
typedef struct cthread {
    kvx_ctx_t *ctx;
    pthread_barrier_t *bar;
    int t, iters, port;
    uint32_t nb;
    const uint32_t *rids, *lids;
    pd_status_t st;
    char err[160];
} cthread_t;

static void *cthread_main(void *arg)
{
    cthread_t *c = arg;

    for (int k = 0; k < c->iters + 1; k++) {
        char rid[32];
        kvx_pull_desc_t desc = {.remote_host = "127.0.0.1", .remote_port = c->port, .remote_req_id = rid,
                                .n = c->nb, .remote_ids = c->rids, .local_ids = c->lids};
        snprintf(rid, sizeof(rid), "bench-%d-%d", c->t, k);
        pthread_barrier_wait(c->bar);
        if (c->st == PD_OK)
            c->st = kvx_pull_sync(c->ctx, &desc, c->err, sizeof(c->err));
        pthread_barrier_wait(c->bar);
    }
    return NULL;
}

static void consumer_child(int wfd, const gmode_t *m, int dev, int port, uint32_t nb, size_t bb, int iters,
                           int conc)
{
    gres_t res = {0};
    kvx_ctx_t *ctx = NULL;
    void *d = NULL;
    uint8_t *h = NULL;
    uint32_t *rids = malloc(nb * sizeof(uint32_t)), *lids = malloc(nb * sizeof(uint32_t));
    double *g = calloc((size_t)iters + 1, sizeof(double));
    double *zero = calloc((size_t)iters + 1, sizeof(double));
    cthread_t *ct = calloc((size_t)conc, sizeof(cthread_t));
    pthread_t *th = calloc((size_t)conc, sizeof(pthread_t));
    pthread_barrier_t bar;
    size_t total = (size_t)nb * bb;
    int n_ok = 0, n_started = 0, bar_ok = 0;
    char more[64];

    mode_env(m, bb, conc);
    if (cudaSetDevice(dev) != cudaSuccess || cudaMalloc(&d, total) != cudaSuccess ||
        cudaMemset(d, 0, total) != cudaSuccess ||
        cudaHostAlloc((void **)&h, total, cudaHostAllocDefault) != cudaSuccess || !rids || !lids || !g ||
        !zero || !ct || !th) {
        snprintf(res.err, sizeof(res.err), "consumer: %s", cudaGetErrorString(cudaGetLastError()));
        goto out;
    }
    /* one pull worker per request in flight (the default of 4 would cap it) */
    snprintf(more, sizeof(more), "\"pull_workers\":%d", conc > 4 ? conc : 4);
    ctx = make_ctx(m, "kv_consumer", more);
    if (ctx == NULL || kvx_ctx_register_region(ctx, &(kvx_region_t){d, nb, bb, KVX_MEM_CUDA}) != PD_OK) {
        snprintf(res.err, sizeof(res.err), "consumer context/region failed");
        goto out;
    }
    for (uint32_t i = 0; i < nb; i++) {
        rids[i] = i;
        lids[i] = nb - 1 - i;
    }
    if (pthread_barrier_init(&bar, NULL, (unsigned)conc + 1) != 0) {
        snprintf(res.err, sizeof(res.err), "barrier failed");
        goto out;
    }
    bar_ok = 1;
    for (int t = 0; t < conc; t++) {
        ct[t] = (cthread_t){.ctx = ctx, .bar = &bar, .t = t, .iters = iters, .port = port, .nb = nb,
                            .rids = rids, .lids = lids, .st = PD_OK};
        if (pthread_create(&th[t], NULL, cthread_main, &ct[t]) != 0)
            break;
        n_started++;
    }
    if (n_started < conc) {
        /* the started ones wait at a barrier sized for all: cannot release them cleanly */
        snprintf(res.err, sizeof(res.err), "cannot start %d consumer threads", conc);
        if (write(wfd, &res, sizeof(res)) != sizeof(res))
            _exit(1);
        _exit(0);
    }
    for (int k = 0; k < iters + 1; k++) {
        uint64_t t0;
        pthread_barrier_wait(&bar);
        t0 = pd_now_ns();
        pthread_barrier_wait(&bar);
        if (k > 0)
            g[n_ok++] = (double)total * conc / ((double)(pd_now_ns() - t0) / 1e9) / 1e9;
    }
    for (int t = 0; t < conc; t++)
        pthread_join(th[t], NULL);
    n_started = 0;
    for (int t = 0; t < conc; t++)
        if (ct[t].st != PD_OK) {
            snprintf(res.err, sizeof(res.err), "%s", ct[t].err);
            goto out;
        }
    /* the protocol alone (release only, no blocks): what a pull costs beyond data */
    n_ok = 0;
    for (int k = 0; k < iters; k++) {
        char rid[32];
        kvx_pull_desc_t desc = {.remote_host = "127.0.0.1", .remote_port = port, .remote_req_id = rid,
                                .n = 0, .remote_ids = rids, .local_ids = lids};
        uint64_t t0 = pd_now_ns();
        snprintf(rid, sizeof(rid), "zero-%d", k);
        if (kvx_pull_sync(ctx, &desc, res.err, sizeof(res.err)) != PD_OK)
            goto out;
        zero[n_ok++] = (double)(pd_now_ns() - t0) / 1e3;
    }
    qsort(zero, (size_t)n_ok, sizeof(double), cmp_d);
    res.ctl_us = n_ok > 0 ? zero[n_ok / 2] : 0;
    n_ok = iters;
    if (cudaMemcpy(h, d, total, cudaMemcpyDeviceToHost) != cudaSuccess) {
        snprintf(res.err, sizeof(res.err), "copy back failed");
        goto out;
    }
    for (uint32_t l = 0; l < nb; l++) {
        uint8_t want = block_byte(nb - 1 - l);
        if (h[(size_t)l * bb] != want || h[(size_t)l * bb + bb - 1] != want) {
            snprintf(res.err, sizeof(res.err), "data check failed at local block %u", l);
            goto out;
        }
    }
    qsort(g, (size_t)n_ok, sizeof(double), cmp_d);
    res.best = g[n_ok - 1];
    res.median = g[n_ok / 2];
    res.ok = 1;
    res.err[0] = '\0';
out:
    if (write(wfd, &res, sizeof(res)) != sizeof(res))
        _exit(1);
    kvx_ctx_destroy(ctx); /* the connector's timing line (KVX_NCCL_TIMING) comes out here */
    if (bar_ok)
        pthread_barrier_destroy(&bar);
    free(ct);
    free(th);
    free(zero);
    free(g);
    _exit(0);
}

static void run_mode(const gmode_t *m, int n_gpus, size_t total, size_t bb, int iters, int conc, gres_t *res)
{
    int up[2], down[2], cres[2] = {-1, -1}, port = 0;
    uint32_t nb = (uint32_t)(total / bb);
    pid_t prod, cons;

    memset(res, 0, sizeof(*res));
    if (pipe(up) != 0 || pipe(down) != 0) {
        snprintf(res->err, sizeof(res->err), "pipe failed");
        return;
    }
    prod = fork();
    if (prod == 0) {
        close(up[0]);
        close(down[1]);
        producer_child(up[1], down[0], m, nb, bb, iters, conc);
    }
    close(up[1]);
    close(down[0]);
    if (!pd_read_full_timeout(up[0], &port, sizeof(port), 60000) || port == 0) {
        snprintf(res->err, sizeof(res->err), "producer did not start");
        goto out;
    }
    /* after the producer's fork: a consumer that dies closes the only write end */
    if (pipe(cres) != 0) {
        snprintf(res->err, sizeof(res->err), "pipe failed");
        goto out;
    }
    cons = fork();
    if (cons == 0) {
        close(cres[0]);
        close(down[1]);
        consumer_child(cres[1], m, n_gpus > 1 ? 1 : 0, port, nb, bb, iters, conc);
    }
    close(cres[1]);
    cres[1] = -1;
    if (!pd_read_full_timeout(cres[0], res, sizeof(*res), 90000)) {
        memset(res, 0, sizeof(*res));
        snprintf(res->err, sizeof(res->err), "consumer gave no result (crashed or hung)");
    }
    pd_child_wait(cons, 30);
out:
    close(down[1]);
    pd_child_wait(prod, 30);
    close(up[0]);
    if (cres[0] >= 0)
        close(cres[0]);
    if (cres[1] >= 0)
        close(cres[1]);
}

/* Throughput of the data phase alone: the best pull's time less the protocol's. */
static double data_gbs(size_t total, double best_gbs, double ctl_us)
{
    double t = best_gbs > 0 ? (double)total / (best_gbs * 1e9) - ctl_us / 1e6 : 0;
    return t > 0 ? (double)total / t / 1e9 : 0;
}

static int gpu_count(void)
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

int bench_kvxfer_gpu(size_t total, int iters, const char *block_kib, const char *modes, const char *conc_list,
                     int json_only)
{
    ceil_t cl = {0};
    int fds[2], n_gpus = gpu_count();
    pid_t pid;
    pd_buf_t json = {0};
    char blist[128];
    int first = 1;

    if (n_gpus < 1) {
        printf("bench_kvxfer --gpu: no CUDA device\n");
        return 77;
    }
    if (pipe(fds) != 0)
        return 1;
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        ceilings_child(fds[1], total, iters, n_gpus);
    }
    close(fds[1]);
    if (!pd_read_full_timeout(fds[0], &cl, sizeof(cl), 120000))
        snprintf(cl.err, sizeof(cl.err), "ceiling child gave no result");
    close(fds[0]);
    pd_child_wait(pid, 30);
    if (!json_only) {
        printf("GPUs: %d (producer GPU 0, consumer GPU %d); %zu MiB per pull, best/median of %d\n",
               n_gpus, n_gpus > 1 ? 1 : 0, total >> 20, iters);
        if (cl.ok)
            printf("ceilings: peer copy %.1f GB/s, pinned H2D %.1f GB/s, D2H %.1f GB/s; in-process "
                   "gather kernel 2MiB %.1f / 16KiB %.1f GB/s; one peer copy per 2MiB block %.1f GB/s; "
                   "host memcpy %.1f GB/s\n",
                   cl.peer, cl.h2d, cl.d2h, cl.kern_2m, cl.kern_16k, cl.percopy_2m, cl.memcpy_gbs);
        else
            printf("ceilings failed: %s\n", cl.err);
        printf("%-12s %9s %3s %9s %10s %11s %8s %8s %10s\n", "mode", "block", "K", "GB/s best",
               "GB/s median", "ceiling", "% ceil", "ctl us", "data GB/s");
        fflush(stdout);
    }
    pd_buf_printf(&json, "{\"gpus\":%d,\"total_mib\":%zu,\"iters\":%d,\"peer_gbs\":%.3f,\"h2d_gbs\":%.3f,"
                  "\"d2h_gbs\":%.3f,\"kernel_2m_gbs\":%.3f,\"kernel_16k_gbs\":%.3f,"
                  "\"percopy_2m_gbs\":%.3f,\"memcpy_gbs\":%.3f,\"runs\":[",
                  n_gpus, total >> 20, iters, cl.peer, cl.h2d, cl.d2h, cl.kern_2m, cl.kern_16k,
                  cl.percopy_2m, cl.memcpy_gbs);
    snprintf(blist, sizeof(blist), "%s", block_kib);
    {
        char *save = NULL, *tok;
        for (tok = strtok_r(blist, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            size_t bb = (size_t)atol(tok) << 10;
            char klist[64], *ksave = NULL, *ktok;
            if (bb == 0 || total / bb == 0 || total / bb > KVX_MAX_BLOCKS_PER_REQ)
                continue;
            snprintf(klist, sizeof(klist), "%s", conc_list != NULL && conc_list[0] ? conc_list : "1");
            for (ktok = strtok_r(klist, ",", &ksave); ktok; ktok = strtok_r(NULL, ",", &ksave)) {
                int conc = atoi(ktok);
                if (conc < 1 || conc > 64)
                    continue;
                for (size_t i = 0; i < PD_ARRAY_SIZE(gmodes); i++) {
                    const gmode_t *m = &gmodes[i];
                    gres_t r;
                    double ceiling = mode_is_ucx(m) ? cl.h2d : cl.peer;
                    double dg;
                    char want[64];

                    snprintf(want, sizeof(want), ",%s,", m->name);
                    if (modes != NULL && modes[0] != '\0') {
                        char have[256];
                        snprintf(have, sizeof(have), ",%s,", modes);
                        if (strstr(have, want) == NULL)
                            continue;
                    }
                    if ((m->needs_two_gpus && n_gpus < 2) ||
                        kvx_conn_ops_builtin(strcmp(m->conn, "UcxConnector") == 0 ? KVX_CONN_UCX
                                                                                   : KVX_CONN_NCCL) == NULL)
                        continue;
                    run_mode(m, n_gpus, total, bb, iters, conc, &r);
                    /* with K pulls in flight the protocol overlaps the data: no split */
                    dg = conc == 1 ? data_gbs(total, r.best, r.ctl_us) : 0;
                    if (!json_only) {
                        if (r.ok)
                            printf("%-12s %6zuKiB %3d %9.1f %10.1f %11.1f %7.1f%% %8.0f %10.1f\n", m->name,
                                   bb >> 10, conc, r.best, r.median, ceiling,
                                   ceiling > 0 ? 100.0 * r.best / ceiling : 0, r.ctl_us, dg);
                        else
                            printf("%-12s %6zuKiB %3d failed: %s\n", m->name, bb >> 10, conc, r.err);
                        fflush(stdout);
                    }
                    pd_buf_printf(&json, "%s{\"mode\":\"%s\",\"block_bytes\":%zu,\"concurrency\":%d,\"ok\":%s,"
                                  "\"best_gbs\":%.3f,\"median_gbs\":%.3f,\"ceiling_gbs\":%.3f,\"ctl_us\":%.1f,"
                                  "\"data_gbs\":%.3f}",
                                  first ? "" : ",", m->name, bb, conc, r.ok ? "true" : "false", r.best,
                                  r.median, ceiling, r.ctl_us, dg);
                    first = 0;
                }
            }
        }
    }
    pd_buf_puts(&json, "]}");
    printf("bench_kvxfer_gpu %s\n", json.data);
    pd_buf_cleanup(&json);
    return 0;
}
