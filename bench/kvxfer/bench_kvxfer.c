/*
 * bench_kvxfer.c - KV block transfer throughput on one host, host memory.
 *
 * For each (connector, transport, block size) a producer process is forked (so
 * shared-memory transports really cross processes), leases every block of a
 * region of --total-mib, and the consumer pulls the whole region --iters times
 * through kvx_pull (handshake, acquire, reads, release: the full protocol).  The
 * ceiling printed beside each figure is memcpy bandwidth between two buffers of
 * the same size measured in the same run.
 *
 *   bench_kvxfer [--total-mib 256] [--iters 5] [--block-kib 2048,16]
 *                [--ucx-tls tcp,sm,...] [--no-ucx] [--no-fabric] [--json-only]
 *                [--gpu [--gpu-modes ipc,ipc-batch,ipc-memcpy,nccl,nccl-1msg,ucx,ucx-sm]
 *                       [--concurrency 1,4]]
 *
 * Prints a table and one JSON line ("bench_kvxfer {...}").  --gpu (CUDA builds): GPU
 * memory between two GPUs instead (bench_kvxfer_gpu.c; "bench_kvxfer_gpu {...}").
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef PD_HAVE_CUDA
#include "bench_kvxfer_gpu.h"
#endif
#include "kvx.h"
#include "pd_log.h"
#include "pd_util.h"

typedef struct run {
    const char *connector;
    char tls[64];
    size_t block_bytes;
    double best_gbs, median_gbs;
    double ceiling_gbs;
    pd_status_t status;
    char err[160];
} run_t;

static kvx_compat_t compat_g;

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double memcpy_gbs(size_t bytes, int iters)
{
    char *a = malloc(bytes), *b = malloc(bytes);
    double best = 0;

    if (a == NULL || b == NULL) {
        free(a);
        free(b);
        return 0;
    }
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    for (int i = 0; i < iters; i++) {
        uint64_t t0 = pd_now_ns();
        memcpy(b, a, bytes);
        double s = (double)(pd_now_ns() - t0) / 1e9;
        /* keep the copy observable */
        if (b[bytes / 2] != 1)
            abort();
        if (bytes / s / 1e9 > best)
            best = bytes / s / 1e9;
    }
    free(a);
    free(b);
    return best;
}

static kvx_ctx_t *make_ctx(const char *conn, const char *role)
{
    char json[512], err[256];
    kvx_config_t cfg;
    kvx_ctx_t *ctx = NULL;

    snprintf(json, sizeof(json), "{\"kv_connector\":\"%s\",\"kv_role\":\"%s\",\"kv_port\":0,"
             "\"kv_connector_extra_config\":{\"transfer_timeout_s\":120,\"lease_ttl_s\":300}}",
             conn, role);
    if (kvx_config_parse(json, &cfg, err, sizeof(err)) == PD_OK)
        (void)kvx_ctx_create(&cfg, &compat_g, &ctx);
    kvx_config_cleanup(&cfg);
    return ctx;
}

static void lease_cb(void *arg, const char *id, const uint32_t *ids, size_t n, kvx_lease_end_t why)
{
    (void)arg; (void)id; (void)ids; (void)n; (void)why;
}

/* The producer: lease every block once per iteration, then wait for the parent. */
static void producer(int wfd, int rfd, const char *conn, uint32_t nb, size_t bb, int iters)
{
    kvx_ctx_t *ctx = make_ctx(conn, "kv_producer");
    char *base = malloc((size_t)nb * bb);
    uint32_t *ids = malloc(nb * sizeof(uint32_t));
    int port = 0;
    char c;

    if (ctx != NULL && base != NULL && ids != NULL) {
        memset(base, 0x3c, (size_t)nb * bb);
        for (uint32_t i = 0; i < nb; i++)
            ids[i] = i;
        if (kvx_ctx_register_region(ctx, &(kvx_region_t){base, nb, bb, KVX_MEM_HOST}) == PD_OK) {
            int ok = 1;
            for (int k = 0; k < iters + 1 && ok; k++) {
                char rid[32];
                snprintf(rid, sizeof(rid), "bench-%d", k);
                ok = kvx_lease_create(ctx, rid, ids, nb, 0, lease_cb, NULL) == PD_OK;
            }
            if (ok)
                port = kvx_ctx_port(ctx);
        }
    }
    if (write(wfd, &port, sizeof(port)) != sizeof(port))
        _exit(1);
    (void)!read(rfd, &c, 1); /* returns when the parent closes its end */
    kvx_ctx_destroy(ctx);
    free(base);
    free(ids);
    _exit(0);
}

static void run_one(run_t *r, size_t total, int iters)
{
    uint32_t nb = (uint32_t)(total / r->block_bytes);
    int up[2], down[2], port = 0;
    pid_t pid;
    kvx_ctx_t *cons = NULL;
    char *base = NULL;
    uint32_t *ids = NULL;
    double *gbs = calloc((size_t)iters + 1, sizeof(double));
    int n_ok = 0;

    r->status = PD_OK;
    if (r->tls[0])
        setenv("UCX_TLS", r->tls, 1);
    else
        unsetenv("UCX_TLS");
    if (pipe(up) != 0 || pipe(down) != 0) {
        r->status = PD_ERR_IO;
        free(gbs);
        return;
    }
    pid = fork();
    if (pid == 0) {
        close(up[0]);
        close(down[1]);
        producer(up[1], down[0], r->connector, nb, r->block_bytes, iters);
    }
    close(up[1]);
    close(down[0]);
    if (read(up[0], &port, sizeof(port)) != sizeof(port) || port == 0) {
        r->status = PD_ERR_TRANSPORT;
        snprintf(r->err, sizeof(r->err), "producer did not start");
        goto out;
    }
    cons = make_ctx(r->connector, "kv_consumer");
    base = malloc(total);
    ids = malloc(nb * sizeof(uint32_t));
    if (cons == NULL || base == NULL || ids == NULL) {
        r->status = PD_ERR_NOMEM;
        snprintf(r->err, sizeof(r->err), "consumer did not start");
        goto out;
    }
    memset(base, 0, total);
    for (uint32_t i = 0; i < nb; i++)
        ids[i] = i;
    if ((r->status = kvx_ctx_register_region(cons, &(kvx_region_t){base, nb, r->block_bytes,
                                                                   KVX_MEM_HOST})) != PD_OK)
        goto out;
    /* iteration 0 warms up: handshake, connection, registration caches */
    for (int k = 0; k < iters + 1; k++) {
        char rid[32];
        kvx_pull_desc_t d = {.remote_host = "127.0.0.1", .remote_port = port, .remote_req_id = rid,
                             .n = nb, .remote_ids = ids, .local_ids = ids};
        uint64_t t0;
        pd_status_t st;

        snprintf(rid, sizeof(rid), "bench-%d", k);
        t0 = pd_now_ns();
        st = kvx_pull_sync(cons, &d, r->err, sizeof(r->err));
        if (st != PD_OK) {
            r->status = st;
            goto out;
        }
        if (k > 0)
            gbs[n_ok++] = (double)total / ((double)(pd_now_ns() - t0) / 1e9) / 1e9;
    }
    if (base[total - 1] != 0x3c) {
        r->status = PD_ERR_MISMATCH;
        snprintf(r->err, sizeof(r->err), "data check failed");
        goto out;
    }
    r->err[0] = '\0';
    qsort(gbs, (size_t)n_ok, sizeof(double), cmp_d);
    r->best_gbs = gbs[n_ok - 1];
    r->median_gbs = gbs[n_ok / 2];
out:
    kvx_ctx_destroy(cons);
    close(down[1]);
    close(up[0]);
    {
        /* bounded wait for the producer, then make sure it is gone */
        uint64_t end = pd_now_ns() + 10000000000ull;
        while (waitpid(pid, NULL, WNOHANG) == 0) {
            if (pd_now_ns() > end) {
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                break;
            }
            usleep(10000);
        }
    }
    free(base);
    free(ids);
    free(gbs);
}

int main(int argc, char **argv)
{
    size_t total_mib = 256;
    int iters = 5, use_ucx = 1, use_fabric = 1, json_only = 0, gpu = 0;
    char gpu_modes[128] = "", gpu_conc[64] = "1";
    char block_list[128] = "2048,16", tls_list[256] = "tcp,sm,posix,cma";
    run_t runs[64];
    int n_runs = 0;
    pd_buf_t json = {0};

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--total-mib") == 0 && i + 1 < argc)
            total_mib = (size_t)atol(argv[++i]);
        else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc)
            iters = atoi(argv[++i]);
        else if (strcmp(argv[i], "--block-kib") == 0 && i + 1 < argc)
            snprintf(block_list, sizeof(block_list), "%s", argv[++i]);
        else if (strcmp(argv[i], "--ucx-tls") == 0 && i + 1 < argc)
            snprintf(tls_list, sizeof(tls_list), "%s", argv[++i]);
        else if (strcmp(argv[i], "--no-ucx") == 0)
            use_ucx = 0;
        else if (strcmp(argv[i], "--no-fabric") == 0)
            use_fabric = 0;
        else if (strcmp(argv[i], "--json-only") == 0)
            json_only = 1;
        else if (strcmp(argv[i], "--gpu") == 0)
            gpu = 1;
        else if (strcmp(argv[i], "--gpu-modes") == 0 && i + 1 < argc)
            snprintf(gpu_modes, sizeof(gpu_modes), "%s", argv[++i]);
        else if (strcmp(argv[i], "--concurrency") == 0 && i + 1 < argc)
            snprintf(gpu_conc, sizeof(gpu_conc), "%s", argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--total-mib N] [--iters N] [--block-kib a,b] "
                    "[--ucx-tls tcp,sm,...] [--no-ucx] [--no-fabric] [--json-only] "
                    "[--gpu [--gpu-modes ipc,ipc-batch,ipc-memcpy,nccl,nccl-1msg,ucx,ucx-sm] [--concurrency 1,4]]\n", argv[0]);
            return 2;
        }
    }
    if (total_mib == 0 || iters < 1 || iters > 1000)
        return 2;
    pd_log_set_level(PD_LOG_LEVEL_WARN);
    signal(SIGPIPE, SIG_IGN);
    if (gpu) {
#ifdef PD_HAVE_CUDA
        return bench_kvxfer_gpu(total_mib << 20, iters, block_list, gpu_modes, gpu_conc, json_only);
#else
        fprintf(stderr, "bench_kvxfer: --gpu needs a CUDA build\n");
        return 2;
#endif
    }
    memset(&compat_g, 0, sizeof(compat_g));
    snprintf(compat_g.model, sizeof(compat_g.model), "bench");
    snprintf(compat_g.dtype, sizeof(compat_g.dtype), "f16");
    compat_g.n_layers = compat_g.n_kv_heads = compat_g.head_dim = compat_g.block_size = 1;
    compat_g.layout_id = 1;

    {
        char *save = NULL, *tok;
        for (tok = strtok_r(block_list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            size_t bb = (size_t)atol(tok) << 10;
            if (bb == 0)
                continue;
            if (use_ucx && kvx_conn_ops_builtin(KVX_CONN_UCX) != NULL) {
                char tl[256], *s2 = NULL, *t;
                snprintf(tl, sizeof(tl), "%s", tls_list);
                for (t = strtok_r(tl, ",", &s2); t && n_runs < 60; t = strtok_r(NULL, ",", &s2)) {
                    runs[n_runs] = (run_t){.connector = "UcxConnector", .block_bytes = bb};
                    /* cma and posix need a wire-up transport beside them */
                    snprintf(runs[n_runs].tls, sizeof(runs[n_runs].tls), "%s%s", t,
                             strcmp(t, "cma") == 0 ? ",posix" : "");
                    n_runs++;
                }
            }
            if (use_fabric && kvx_conn_ops_builtin(KVX_CONN_LIBFABRIC) != NULL && n_runs < 64)
                runs[n_runs++] = (run_t){.connector = "LibfabricConnector", .tls = "",
                                         .block_bytes = bb};
        }
    }

    size_t total = total_mib << 20;
    double ceiling = memcpy_gbs(total, 5);
    for (int i = 0; i < n_runs; i++) {
        runs[i].ceiling_gbs = ceiling;
        run_one(&runs[i], total, iters);
        if (!json_only) {
            if (i == 0)
                printf("%-20s %-12s %9s %9s %10s %10s %8s\n", "connector", "transport", "block",
                       "GB/s best", "GB/s median", "memcpy GB/s", "% ceil");
            if (runs[i].status == PD_OK)
                printf("%-20s %-12s %7zuKiB %9.2f %10.2f %10.2f %7.1f%%\n", runs[i].connector,
                       runs[i].tls[0] ? runs[i].tls : "tcp", runs[i].block_bytes >> 10,
                       runs[i].best_gbs, runs[i].median_gbs, ceiling,
                       100.0 * runs[i].best_gbs / ceiling);
            else
                printf("%-20s %-12s %7zuKiB failed: %s %s\n", runs[i].connector,
                       runs[i].tls[0] ? runs[i].tls : "tcp", runs[i].block_bytes >> 10,
                       pd_status_name(runs[i].status), runs[i].err);
            fflush(stdout);
        }
    }
    pd_buf_printf(&json, "{\"total_mib\":%zu,\"iters\":%d,\"memcpy_gbs\":%.3f,\"runs\":[", total_mib,
                  iters, ceiling);
    for (int i = 0; i < n_runs; i++)
        pd_buf_printf(&json, "%s{\"connector\":\"%s\",\"transport\":\"%s\",\"block_bytes\":%zu,"
                      "\"status\":\"%s\",\"best_gbs\":%.3f,\"median_gbs\":%.3f}",
                      i ? "," : "", runs[i].connector, runs[i].tls[0] ? runs[i].tls : "tcp",
                      runs[i].block_bytes, pd_status_name(runs[i].status), runs[i].best_gbs,
                      runs[i].median_gbs);
    pd_buf_puts(&json, "]}");
    printf("bench_kvxfer %s\n", json.data);
    pd_buf_cleanup(&json);
    return 0;
}
