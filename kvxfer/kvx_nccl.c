/*
 * kvx_nccl.c - NcclConnector: GPU-to-GPU block reads.  UNTESTED ON A GPU YET
 * (compiled only with PD_HAVE_CUDA; the development machine has no GPU).
 *
 * What it does today: the same-host path.  The producer exports its region with
 * cudaIpcGetMemHandle (the region base must be the start of a cudaMalloc
 * allocation) and publishes the handle, the device and the host's boot id; a
 * consumer on the same host opens it (cudaIpcOpenMemHandle) and copies each block
 * device-to-device with cudaMemcpyAsync on its own stream and thread, so callbacks
 * never fire inside read.  Block ids are checked by the core; the source address is
 * the opened base + id * block_bytes.
 *
 * Not yet: the cross-host path over NCCL send/recv.  It needs the producer to post
 * sends when a consumer asks (a producer-side "serve" hook and a READ_REQ control
 * message carrying the ncclUniqueId of a per-pair communicator); peers on another
 * host are refused with PD_ERR_UNSUPPORTED and a clear log line.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "kvx_internal.h"
#include "pd_log.h"
#include "pd_util.h"

#define DESC_MAGIC 0x314c434eu /* "NCL1" */
#define BOOT_ID_LEN 36

typedef struct nc_peer {
    void *remote_base;          /* opened IPC mapping */
    uint64_t block_bytes;
    atomic_int inflight;
    atomic_int canceled;
} nc_peer_t;

typedef struct nc_batch {
    struct nc_batch *next;
    nc_peer_t *peer;
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

static void run_batch(nc_state_t *st, nc_batch_t *b)
{
    pd_status_t s = PD_OK;
    size_t bytes = st->region.block_bytes;

    cudaSetDevice(st->device);
    for (size_t i = 0; i < b->n && s == PD_OK; i++) {
        if (atomic_load(&b->peer->canceled)) {
            s = PD_ERR_CANCELED;
            break;
        }
        if (cudaMemcpyAsync(kvx_region_block(&st->region, b->local_ids[i]),
                            (char *)b->peer->remote_base + (size_t)b->remote_ids[i] * bytes, bytes,
                            cudaMemcpyDeviceToDevice, st->stream) != cudaSuccess)
            s = PD_ERR_CUDA;
    }
    /* the copies already queued must finish before anyone hears about the batch */
    if (cudaStreamSynchronize(st->stream) != cudaSuccess && s == PD_OK)
        s = PD_ERR_CUDA;
    b->cb(b->arg, s);
    atomic_fetch_sub(&b->peer->inflight, 1);
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
    if (st->boot_id[0] == '\0' || memcmp(d + 8, st->boot_id, BOOT_ID_LEN) != 0) {
        PD_LOG_ERR("kvx nccl: peer %s is on another host; the NCCL network path is not "
                   "implemented yet (use UcxConnector)", info->engine_id);
        return PD_ERR_UNSUPPORTED;
    }
    memcpy(&h, d + 8 + BOOT_ID_LEN, sizeof(h));
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return PD_ERR_NOMEM;
    if (cudaIpcOpenMemHandle(&p->remote_base, h, cudaIpcMemLazyEnablePeerAccess) != cudaSuccess) {
        PD_LOG_ERR("kvx nccl: cudaIpcOpenMemHandle for %s failed", info->engine_id);
        free(p);
        return PD_ERR_CUDA;
    }
    p->block_bytes = info->block_bytes;
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
    while (atomic_load(&p->inflight) > 0 && pd_now_ns() < end)
        usleep(500);
    if (atomic_load(&p->inflight) > 0) {
        PD_LOG_CRIT("kvx nccl: copies still running at peer close; leaking the peer");
        kvx_graveyard_add(p);
        return;
    }
    cudaIpcCloseMemHandle(p->remote_base);
    free(p);
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
    pthread_mutex_lock(&st->mu);
    if (st->tail)
        st->tail->next = b;
    else
        st->head = b;
    st->tail = b;
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
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
};
