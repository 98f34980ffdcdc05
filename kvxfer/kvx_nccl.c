/*
 * kvx_nccl.c - NcclConnector: GPU-to-GPU block transfers.  UNTESTED ON A GPU YET
 * (compiled only with PD_HAVE_CUDA and NCCL; the development machine has no GPU).
 *
 * Two paths, chosen per peer at connect time by comparing the hosts' boot ids:
 *   - same host: CUDA IPC.  The producer exports its region with
 *     cudaIpcGetMemHandle (the region base must be the start of a cudaMalloc
 *     allocation); the consumer opens it and copies each block device-to-device with
 *     cudaMemcpyAsync.  One-sided, like UCX.
 *   - other hosts: NCCL send/recv, one communicator per (consumer, producer) pair.
 *     The consumer makes an ncclUniqueId on its first read from a producer and sends
 *     it (read_prepare -> the core's SERVE message, after the lease was acquired);
 *     both sides join a 2-rank communicator (producer rank 0, consumer rank 1) on
 *     their connector threads; then, per read, the producer ncclSends the requested
 *     blocks and the consumer ncclRecvs them into its blocks, in the same order, in
 *     one group.  Later reads reuse the communicator.  NCCL pairs sends and receives
 *     by order, so a pair carries one read at a time (read_prepare waits for the
 *     previous one), which keeps the producer's SERVE order equal to ours.
 * Block ids are checked by the core against both regions before they arrive here.
 * Peer close aborts the communicator (ncclCommAbort), which fails stuck transfers.
 * Callbacks fire from the connector's thread, never inside read.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "kvx_internal.h"
#include "pd_log.h"
#include "pd_util.h"

#define DESC_MAGIC 0x314c434eu /* "NCL1" */
#define BOOT_ID_LEN 36

typedef struct nc_peer {
    int ipc;                    /* same host: CUDA IPC; else NCCL send/recv */
    void *remote_base;          /* opened IPC mapping */
    uint64_t block_bytes;
    atomic_int inflight;
    atomic_int canceled;
    ncclUniqueId id;            /* network path: the pair's communicator */
    ncclComm_t comm;            /* created on the connector thread */
    /* NCCL matches sends and receives in order, so one network read per pair is in
     * flight at a time: read_prepare takes the pair, the read's completion frees it. */
    pthread_mutex_t busy_mu;
    pthread_cond_t busy_cv;
    int busy;
} nc_peer_t;

/* Producer side: communicators consumers asked for, by their unique id. */
typedef struct nc_serve_comm {
    struct nc_serve_comm *next;
    ncclUniqueId id;
    ncclComm_t comm;
} nc_serve_comm_t;

#define BLOB_MAGIC 0x31564553u /* "SEV1" */

typedef struct nc_batch {
    struct nc_batch *next;
    nc_peer_t *peer;            /* NULL for a producer-side send batch */
    ncclUniqueId send_id;       /* producer: which communicator to send on */
    size_t n;
    uint32_t *local_ids, *remote_ids;
    kvx_read_cb_t cb;
    void *arg;
} nc_batch_t;

typedef struct nc_state {
    int device;
    cudaStream_t stream;
    kvx_region_t region;
    int have_region;
    char boot_id[BOOT_ID_LEN + 1];
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    nc_batch_t *head, *tail;
    int stop;
    nc_serve_comm_t *serve_comms; /* only touched on the connector thread */
} nc_state_t;

static void read_boot_id(char out[BOOT_ID_LEN + 1])
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");

    memset(out, 0, BOOT_ID_LEN + 1);
    if (f != NULL) {
        if (fgets(out, BOOT_ID_LEN + 1, f) == NULL)
            out[0] = '\0';
        fclose(f);
    }
}

static ncclComm_t serve_comm(nc_state_t *st, const ncclUniqueId *id)
{
    nc_serve_comm_t *c;

    for (c = st->serve_comms; c != NULL; c = c->next)
        if (memcmp(&c->id, id, sizeof(*id)) == 0)
            return c->comm;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->id = *id;
    /* joins the consumer, which waits as rank 1 on its own connector thread */
    if (ncclCommInitRank(&c->comm, 2, *id, 0) != ncclSuccess) {
        PD_LOG_ERR("kvx nccl: ncclCommInitRank (producer) failed");
        free(c);
        return NULL;
    }
    c->next = st->serve_comms;
    st->serve_comms = c;
    return c->comm;
}

static void run_batch(nc_state_t *st, nc_batch_t *b)
{
    pd_status_t s = PD_OK;
    size_t bytes = st->region.block_bytes;
    nc_peer_t *p = b->peer;

    cudaSetDevice(st->device);
    if (p == NULL) {
        /* producer: send the blocks a consumer asked for (SERVE) */
        ncclComm_t comm = serve_comm(st, &b->send_id);
        if (comm == NULL) {
            s = PD_ERR_TRANSPORT;
        } else {
            ncclGroupStart();
            for (size_t i = 0; i < b->n; i++)
                ncclSend(kvx_region_block(&st->region, b->remote_ids[i]), bytes, ncclChar, 1, comm,
                         st->stream);
            if (ncclGroupEnd() != ncclSuccess)
                s = PD_ERR_TRANSPORT;
        }
    } else if (p->ipc) {
        for (size_t i = 0; i < b->n && s == PD_OK; i++) {
            if (atomic_load(&p->canceled)) {
                s = PD_ERR_CANCELED;
                break;
            }
            if (cudaMemcpyAsync(kvx_region_block(&st->region, b->local_ids[i]),
                                (char *)p->remote_base + (size_t)b->remote_ids[i] * bytes, bytes,
                                cudaMemcpyDeviceToDevice, st->stream) != cudaSuccess)
                s = PD_ERR_CUDA;
        }
    } else {
        /* consumer over the network: join the pair's communicator once, then receive
         * in the order the producer sends */
        if (p->comm == NULL && ncclCommInitRank(&p->comm, 2, p->id, 1) != ncclSuccess) {
            PD_LOG_ERR("kvx nccl: ncclCommInitRank (consumer) failed");
            p->comm = NULL;
            s = PD_ERR_TRANSPORT;
        }
        if (s == PD_OK) {
            ncclGroupStart();
            for (size_t i = 0; i < b->n; i++)
                ncclRecv(kvx_region_block(&st->region, b->local_ids[i]), bytes, ncclChar, 0,
                         p->comm, st->stream);
            if (ncclGroupEnd() != ncclSuccess)
                s = PD_ERR_TRANSPORT;
        }
    }
    /* the work already queued must finish before anyone hears about the batch */
    if (cudaStreamSynchronize(st->stream) != cudaSuccess && s == PD_OK)
        s = PD_ERR_CUDA;
    if (p != NULL && !p->ipc) {
        pthread_mutex_lock(&p->busy_mu);
        p->busy = 0;
        pthread_cond_signal(&p->busy_cv);
        pthread_mutex_unlock(&p->busy_mu);
    }
    if (b->cb != NULL)
        b->cb(b->arg, s);
    else if (s != PD_OK)
        PD_LOG_WARN("kvx nccl: sending %zu blocks failed: %s", b->n, pd_status_str(s));
    if (p != NULL)
        atomic_fetch_sub(&p->inflight, 1);
    free(b->local_ids);
    free(b->remote_ids);
    free(b);
}

static void *nc_main(void *arg)
{
    nc_state_t *st = arg;

    pthread_mutex_lock(&st->mu);
    for (;;) {
        nc_batch_t *b;
        while (st->head == NULL && !st->stop)
            pthread_cond_wait(&st->cv, &st->mu);
        if (st->head == NULL)
            break;
        b = st->head;
        st->head = b->next;
        if (st->head == NULL)
            st->tail = NULL;
        pthread_mutex_unlock(&st->mu);
        run_batch(st, b);
        pthread_mutex_lock(&st->mu);
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

static pd_status_t nc_create(const kvx_config_t *cfg, void **state_p)
{
    nc_state_t *st = calloc(1, sizeof(*st));
    int nccl_version = 0;

    (void)cfg;
    if (st == NULL)
        return PD_ERR_NOMEM;
    if (cudaGetDevice(&st->device) != cudaSuccess ||
        cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking) != cudaSuccess) {
        PD_LOG_ERR("kvx nccl: no usable CUDA device");
        free(st);
        return PD_ERR_CUDA;
    }
    read_boot_id(st->boot_id);
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv, NULL);
    if (pthread_create(&st->thread, NULL, nc_main, st) != 0) {
        cudaStreamDestroy(st->stream);
        free(st);
        return PD_ERR_INTERNAL;
    }
    (void)ncclGetVersion(&nccl_version);
    PD_LOG_INFO("kvx nccl: device %d, NCCL %d (same-host CUDA IPC path; untested on GPU)",
                st->device, nccl_version);
    *state_p = st;
    return PD_OK;
}

static void nc_destroy(void *state)
{
    nc_state_t *st = state;

    pthread_mutex_lock(&st->mu);
    st->stop = 1;
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
    pthread_join(st->thread, NULL);
    while (st->serve_comms != NULL) {
        nc_serve_comm_t *c = st->serve_comms;
        st->serve_comms = c->next;
        ncclCommDestroy(c->comm);
        free(c);
    }
    cudaStreamDestroy(st->stream);
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    free(st);
}

static pd_status_t nc_reg(void *state, const kvx_region_t *region, void *desc, size_t cap,
                          size_t *len_p)
{
    nc_state_t *st = state;
    cudaIpcMemHandle_t h;
    uint8_t *o = desc;
    uint32_t magic = DESC_MAGIC, dev = (uint32_t)st->device;

    if (region->mem_type != KVX_MEM_CUDA) {
        PD_LOG_ERR("kvx nccl: the region must be CUDA memory");
        return PD_ERR_UNSUPPORTED;
    }
    if (cudaIpcGetMemHandle(&h, region->base) != cudaSuccess) {
        PD_LOG_ERR("kvx nccl: cudaIpcGetMemHandle failed (is the base a cudaMalloc start?)");
        return PD_ERR_CUDA;
    }
    if (cap < 8 + BOOT_ID_LEN + sizeof(h))
        return PD_ERR_LIMIT;
    memcpy(o, &magic, 4);
    memcpy(o + 4, &dev, 4);
    memcpy(o + 8, st->boot_id, BOOT_ID_LEN);
    memcpy(o + 8 + BOOT_ID_LEN, &h, sizeof(h));
    *len_p = 8 + BOOT_ID_LEN + sizeof(h);
    st->region = *region;
    st->have_region = 1;
    return PD_OK;
}

static pd_status_t nc_peer_connect(void *state, const kvx_peer_info_t *info, void **peer_p)
{
    nc_state_t *st = state;
    const uint8_t *d = info->desc;
    cudaIpcMemHandle_t h;
    uint32_t magic;
    nc_peer_t *p;

    if (info->desc_len != 8 + BOOT_ID_LEN + sizeof(h))
        goto err_desc;
    memcpy(&magic, d, 4);
    if (magic != DESC_MAGIC)
        goto err_desc;
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return PD_ERR_NOMEM;
    p->block_bytes = info->block_bytes;
    pthread_mutex_init(&p->busy_mu, NULL);
    pthread_cond_init(&p->busy_cv, NULL);
    if (st->boot_id[0] == '\0' || memcmp(d + 8, st->boot_id, BOOT_ID_LEN) != 0) {
        /* another host: NCCL send/recv; the communicator is set up on first read */
        if (ncclGetUniqueId(&p->id) != ncclSuccess) {
            PD_LOG_ERR("kvx nccl: ncclGetUniqueId failed");
            pthread_mutex_destroy(&p->busy_mu);
            pthread_cond_destroy(&p->busy_cv);
            free(p);
            return PD_ERR_TRANSPORT;
        }
        *peer_p = p;
        return PD_OK;
    }
    p->ipc = 1;
    memcpy(&h, d + 8 + BOOT_ID_LEN, sizeof(h));
    if (cudaIpcOpenMemHandle(&p->remote_base, h, cudaIpcMemLazyEnablePeerAccess) != cudaSuccess) {
        PD_LOG_ERR("kvx nccl: cudaIpcOpenMemHandle for %s failed", info->engine_id);
        free(p);
        return PD_ERR_CUDA;
    }
    *peer_p = p;
    return PD_OK;

err_desc:
    PD_LOG_ERR("kvx nccl: malformed descriptor from %s", info->engine_id);
    return PD_ERR_FORMAT;
}

static void nc_peer_close(void *state, void *peer)
{
    nc_peer_t *p = peer;
    uint64_t end = pd_now_ns() + 10000000000ull;

    (void)state;
    atomic_store(&p->canceled, 1);
    if (p->comm != NULL)
        ncclCommAbort(p->comm); /* fails transfers stuck on a dead or frozen producer */
    while (atomic_load(&p->inflight) > 0 && pd_now_ns() < end)
        usleep(500);
    if (atomic_load(&p->inflight) > 0) {
        PD_LOG_CRIT("kvx nccl: copies still running at peer close; leaking the peer");
        kvx_graveyard_add(p);
        return;
    }
    if (p->ipc)
        cudaIpcCloseMemHandle(p->remote_base);
    if (p->comm != NULL)
        ncclCommDestroy(p->comm);
    pthread_mutex_destroy(&p->busy_mu);
    pthread_cond_destroy(&p->busy_cv);
    free(p);
}

static void enqueue(nc_state_t *st, nc_batch_t *b)
{
    pthread_mutex_lock(&st->mu);
    if (st->tail)
        st->tail->next = b;
    else
        st->head = b;
    st->tail = b;
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
}

static pd_status_t nc_read(void *state, void *peer, const kvx_read_t *rd, kvx_read_cb_t cb, void *arg)
{
    nc_state_t *st = state;
    nc_peer_t *p = peer;
    nc_batch_t *b;

    if (!st->have_region || p->block_bytes != st->region.block_bytes)
        return PD_ERR_INVAL;
    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return PD_ERR_NOMEM;
    b->local_ids = malloc(rd->n * sizeof(uint32_t) + 1);
    b->remote_ids = malloc(rd->n * sizeof(uint32_t) + 1);
    if (b->local_ids == NULL || b->remote_ids == NULL) {
        free(b->local_ids);
        free(b->remote_ids);
        free(b);
        return PD_ERR_NOMEM;
    }
    memcpy(b->local_ids, rd->local_ids, rd->n * sizeof(uint32_t));
    memcpy(b->remote_ids, rd->remote_ids, rd->n * sizeof(uint32_t));
    b->n = rd->n;
    b->peer = p;
    b->cb = cb;
    b->arg = arg;
    atomic_fetch_add(&p->inflight, 1);
    enqueue(st, b);
    return PD_OK;
}

/* Consumer, network path: the blob tells the producer which communicator to send on. */
static pd_status_t nc_read_prepare(void *state, void *peer, const kvx_read_t *rd, void *blob,
                                   size_t cap, size_t *len_p)
{
    nc_peer_t *p = peer;
    uint32_t magic = BLOB_MAGIC;

    (void)state;
    (void)rd;
    if (p->ipc) {
        *len_p = 0; /* one-sided: nothing for the producer to do */
        return PD_OK;
    }
    if (cap < 4 + sizeof(p->id))
        return PD_ERR_LIMIT;
    {
        struct timespec ts;
        int rc = 0;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 120; /* bounded: the previous read has its own transfer timeout */
        pthread_mutex_lock(&p->busy_mu);
        while (p->busy && rc == 0 && !atomic_load(&p->canceled))
            rc = pthread_cond_timedwait(&p->busy_cv, &p->busy_mu, &ts);
        if (p->busy || atomic_load(&p->canceled)) {
            pthread_mutex_unlock(&p->busy_mu);
            return PD_ERR_BUSY;
        }
        p->busy = 1;
        pthread_mutex_unlock(&p->busy_mu);
    }
    memcpy(blob, &magic, 4);
    memcpy((uint8_t *)blob + 4, &p->id, sizeof(p->id));
    *len_p = 4 + sizeof(p->id);
    return PD_OK;
}

/* Producer: queue the sends on the connector thread (the control thread must not
 * block in ncclCommInitRank). */
static pd_status_t nc_serve(void *state, const void *blob, size_t len, const uint32_t *ids, size_t n)
{
    nc_state_t *st = state;
    nc_batch_t *b;
    uint32_t magic;

    if (len != 4 + sizeof(ncclUniqueId))
        return PD_ERR_FORMAT;
    memcpy(&magic, blob, 4);
    if (magic != BLOB_MAGIC || !st->have_region)
        return PD_ERR_FORMAT;
    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return PD_ERR_NOMEM;
    b->remote_ids = malloc(n * sizeof(uint32_t) + 1);
    if (b->remote_ids == NULL) {
        free(b);
        return PD_ERR_NOMEM;
    }
    memcpy(b->remote_ids, ids, n * sizeof(uint32_t));
    memcpy(&b->send_id, (const uint8_t *)blob + 4, sizeof(b->send_id));
    b->n = n;
    enqueue(st, b);
    return PD_OK;
}

const kvx_conn_ops_t kvx_nccl_ops = {
    .abi_version = KVX_CONN_ABI_VERSION,
    .name = "NcclConnector",
    .create = nc_create,
    .destroy = nc_destroy,
    .reg = nc_reg,
    .peer_connect = nc_peer_connect,
    .peer_close = nc_peer_close,
    .read = nc_read,
    .read_prepare = nc_read_prepare,
    .serve = nc_serve,
};
