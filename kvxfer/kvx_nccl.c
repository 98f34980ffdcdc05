/*
 * kvx_nccl.c - NcclConnector: GPU-to-GPU block transfers (compiled only with PD_HAVE_CUDA
 * and NCCL).  First run on a GPU: scripts/gpu_kvx.sh (figures in docs/kvxfer.md).
 *
 * Two paths, chosen per peer at connect time by comparing the hosts' boot ids (and
 * "nccl_force_network", on either side, which takes the network path on one host):
 *   - same host: CUDA IPC.  The producer exports its region with cudaIpcGetMemHandle
 *     (the region base must be the start of a cudaMalloc allocation); the consumer opens
 *     it (peer access enabled lazily) and moves a whole pull with ONE launch of
 *     kcuda_block_copy, a gather kernel reading the producer's blocks by index list over
 *     NVLink ("nccl_ipc_copy": "kernel", the default), or one cudaMemcpyBatchAsync
 *     ("batch"), or one cudaMemcpyAsync per block ("memcpy", for comparison).  Without
 *     peer access between the two devices the kernel is replaced by the batch copy (the
 *     copy engines stage through the host).  One-sided, like UCX.
 *   - other hosts: NCCL send/recv, one communicator per (consumer, producer) pair.  The
 *     consumer makes an ncclUniqueId on connect and sends it with the staging chunk size
 *     in the read's blob (read_prepare -> the core's SERVE message, after the lease was
 *     acquired); both sides join a 2-rank communicator (producer rank 0, consumer rank 1,
 *     non-blocking init) on the pair's lanes.  Per read, in chunks of
 *     chunk_blocks: the producer gathers the requested blocks into a contiguous staging
 *     buffer with one kernel and ncclSends it once; the consumer ncclRecvs into its
 *     staging buffer and scatters with one kernel.  Later reads reuse the communicator.
 *     NCCL pairs sends and receives by order, so a pair carries one read at a time
 *     (read_prepare waits for the previous one), which keeps the producer's SERVE order
 *     equal to ours.  There is one pair (nc_link_t) per producer however many peer
 *     objects the core makes for it (concurrent handshakes, host aliases), so reads of
 *     one producer stay in one order.  A failed pair is aborted and the next read
 *     starts a new one under a new unique id.
 * Every wait polls the stream (cudaStreamQuery) and the communicator's async error with
 * a deadline of transfer_timeout_s and the peer's cancel flag, so a dead or frozen peer
 * ends in ncclCommAbort and an error instead of a hung thread.
 * Block ids are checked by the core against both regions before they arrive here; the
 * kernels check them again (a device-side error bit).
 * All CUDA and NCCL work runs on lanes (nc_lane_t: a thread with its own stream and
 * buffers): the main lane runs the IPC reads, and every NCCL pair has a lane on each
 * side, so a transfer only ever waits for its own pair's counterpart.  With one worker
 * per connector, P1 sending to X while X receives from P2 while P2 sends to Y while Y
 * receives from P1 would be a cycle.  Callbacks fire from lanes, never inside read.
 * KVX_NCCL_TIMING=<tag> (diagnostics, not "0"; bench_kvxfer --gpu sets it to the mode): each read's time is
 * split into queue (read() to the lane taking it), host (queuing the copies), wait
 * (the stream finishing: the GPU's part) and callback, summed per connector and printed
 * to stderr as one line when the connector is destroyed.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "kcuda_xfer.h"
#include "kvx_internal.h"
#include "pd_log.h"
#include "pd_util.h"

#define DESC_MAGIC 0x324c434eu /* "NCL2" */
#define BOOT_ID_LEN 36
#define DESC_LEN (12 + BOOT_ID_LEN + sizeof(cudaIpcMemHandle_t))
#define DESC_FLAG_FORCE_NET 1u
#define BLOB_MAGIC 0x32564553u /* "SEV2" */
#define BLOB_LEN (8 + sizeof(ncclUniqueId))
#define STAGING_MAX ((size_t)1 << 30)

struct nc_state;
struct nc_batch;

/* A worker: a thread with its own stream and device buffers, running its batches in
 * order.  The connector's main lane runs the IPC reads; each NCCL pair has one lane
 * on each side (see the file comment). */
typedef struct nc_lane {
    struct nc_state *st;
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct nc_batch *head, *tail;
    int stop;
    int running;                /* a batch is being run (mu) */
    cudaStream_t stream;
    uint32_t *d_ids, *h_ids;    /* id lists on the device (+ pinned host copy), 2 slots */
    int *d_err, *h_err;         /* the copy kernels' error word */
    void *staging;              /* NCCL staging buffer */
    size_t staging_bytes;
    uint64_t t_queued;          /* KVX_NCCL_TIMING: when the current read's copies were queued */
} nc_lane_t;

/* Network path, consumer side: the one NCCL pair to a producer (found by its
 * descriptor), with its lane.  Every peer object the core makes for that producer
 * shares it, so that producer's reads stay in one order (one at a time). */
typedef struct nc_link {
    struct nc_link *next;
    uint8_t key[DESC_LEN];      /* the producer's descriptor */
    int refs;                   /* peers using it (nc_state.mu) */
    ncclUniqueId id;
    int id_used;                /* a communicator was started with id: make a new one next */
    ncclComm_t comm;            /* the link's lane only (or read_prepare under busy) */
    nc_lane_t lane;
    /* NCCL matches sends and receives in order, so one read per link is in flight at a
     * time: read_prepare takes the link, the read's completion frees it. */
    pthread_mutex_t busy_mu;
    pthread_cond_t busy_cv;
    int busy;
} nc_link_t;

typedef struct nc_peer {
    int ipc;                    /* same host: CUDA IPC; else NCCL send/recv over link */
    kvx_ipc_copy_t copy;        /* IPC: how blocks are copied */
    void *remote_base;          /* opened IPC mapping */
    uint64_t remote_n;          /* blocks in the producer's region */
    uint64_t block_bytes;
    atomic_int inflight;
    atomic_int canceled;
    nc_link_t *link;            /* network path */
} nc_peer_t;

/* Producer side: communicators consumers asked for, by their unique id, each with its
 * lane.  A pair that failed is dead: its later requests fail at once, and it is reaped
 * when idle (the consumer starts a new pair under a new id). */
typedef struct nc_serve_comm {
    struct nc_serve_comm *next;
    ncclUniqueId id;
    ncclComm_t comm;            /* its lane only */
    atomic_int dead;
    nc_lane_t lane;
} nc_serve_comm_t;

typedef struct nc_batch {
    struct nc_batch *next;
    nc_peer_t *peer;            /* NULL for a producer-side send batch */
    nc_serve_comm_t *serve;     /* producer: the pair to send on */
    uint32_t chunk_blocks;      /* network path: blocks per NCCL message */
    size_t n;
    uint32_t *local_ids, *remote_ids;
    kvx_read_cb_t cb;
    void *arg;
    uint64_t t_push;            /* when read()/serve queued it (KVX_NCCL_TIMING) */
} nc_batch_t;

/* KVX_NCCL_TIMING sums (ns) over reads and sends */
typedef struct nc_timing {
    atomic_uint_fast64_t n, queue, host, wait, cb;
} nc_timing_t;

/* One opened CUDA IPC handle, shared by every peer connection to the same producer
 * region: a second cudaIpcOpenMemHandle of a handle already open in this process fails
 * ("resource already mapped"), and concurrent pulls open one connection each. */
typedef struct nc_ipc_map {
    cudaIpcMemHandle_t handle;
    void *base;
    int refs;
    struct nc_ipc_map *next;
} nc_ipc_map_t;

typedef struct nc_state {
    int device;
    kvx_region_t region;
    int have_region;
    int force_network;
    kvx_ipc_copy_t ipc_copy;
    size_t chunk_bytes;
    double timeout_s;
    char boot_id[BOOT_ID_LEN + 1];
    nc_lane_t main;             /* IPC reads */
    pthread_mutex_t mu;         /* the two lists */
    nc_serve_comm_t *serve_comms;
    nc_link_t *links;           /* consumer's network links */
    struct nc_ipc_map *maps;    /* opened peer regions (CUDA maps a handle once per process) */
    int timing;                 /* KVX_NCCL_TIMING set */
    char timing_tag[48];        /* its value, printed with the figures */
    nc_timing_t tm;
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

static pd_status_t cuda_ok(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return PD_OK;
    PD_LOG_ERR("kvx nccl: %s: %s", what, cudaGetErrorString(e));
    return PD_ERR_CUDA;
}

/* The mapping of handle h, opened now or shared with an earlier connection. */
static pd_status_t ipc_map_get(nc_state_t *st, const cudaIpcMemHandle_t *h, void **base_p)
{
    nc_ipc_map_t *m;
    pd_status_t ret = PD_OK;

    pthread_mutex_lock(&st->mu);
    for (m = st->maps; m != NULL; m = m->next)
        if (memcmp(&m->handle, h, sizeof(*h)) == 0)
            break;
    if (m == NULL) {
        m = calloc(1, sizeof(*m));
        if (m == NULL) {
            ret = PD_ERR_NOMEM;
        } else if (cudaIpcOpenMemHandle(&m->base, *h, cudaIpcMemLazyEnablePeerAccess) != cudaSuccess) {
            PD_LOG_ERR("kvx nccl: cudaIpcOpenMemHandle failed: %s", cudaGetErrorString(cudaGetLastError()));
            free(m);
            m = NULL;
            ret = PD_ERR_CUDA;
        } else {
            m->handle = *h;
            m->next = st->maps;
            st->maps = m;
        }
    }
    if (m != NULL) {
        m->refs++;
        *base_p = m->base;
    }
    pthread_mutex_unlock(&st->mu);
    return ret;
}

/* Drop one reference; the last one closes the mapping. */
static void ipc_map_put(nc_state_t *st, void *base)
{
    nc_ipc_map_t **pp, *m = NULL;

    pthread_mutex_lock(&st->mu);
    for (pp = &st->maps; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->base == base) {
            m = *pp;
            if (--m->refs == 0)
                *pp = m->next;
            break;
        }
    pthread_mutex_unlock(&st->mu);
    if (m != NULL && m->refs == 0) {
        if (cudaIpcCloseMemHandle(base) != cudaSuccess)
            PD_LOG_WARN("kvx nccl: cudaIpcCloseMemHandle failed");
        free(m);
    }
}

/* Wait until the communicator's pending operation (non-blocking init, a group end)
 * finished.  Bounded by the deadline and the cancel flag; PD_ERR_TRANSPORT on an NCCL
 * error. */
static pd_status_t comm_wait(ncclComm_t comm, uint64_t deadline, atomic_int *canceled)
{
    for (;;) {
        ncclResult_t r = ncclSuccess;
        if (ncclCommGetAsyncError(comm, &r) != ncclSuccess)
            return PD_ERR_TRANSPORT;
        if (r == ncclSuccess)
            return PD_OK;
        if (r != ncclInProgress) {
            PD_LOG_ERR("kvx nccl: communicator error: %s", ncclGetErrorString(r));
            return PD_ERR_TRANSPORT;
        }
        if (canceled != NULL && atomic_load(canceled))
            return PD_ERR_CANCELED;
        if (pd_now_ns() > deadline) {
            PD_LOG_ERR("kvx nccl: communicator still busy at the transfer deadline");
            return PD_ERR_TIMEOUT;
        }
        usleep(100);
    }
}

/* Wait for everything queued on the stream.  With a communicator, its async errors end
 * the wait too (a dead peer).  Polls so a cancel or the deadline can end it. */
static pd_status_t stream_wait(nc_lane_t *ln, ncclComm_t comm, uint64_t deadline,
                               atomic_int *canceled)
{
    /* spin (yielding) for the first milliseconds: a 256 MiB pull over NVLink takes
     * ~0.7 ms, and a sleep's timer slack alone would add a tenth of that */
    uint64_t spin_end = pd_now_ns() + 5000000;

    for (;;) {
        cudaError_t e = cudaStreamQuery(ln->stream);
        if (e == cudaSuccess)
            return PD_OK;
        if (e != cudaErrorNotReady)
            return cuda_ok(e, "stream");
        if (comm != NULL) {
            ncclResult_t r = ncclSuccess;
            if (ncclCommGetAsyncError(comm, &r) != ncclSuccess ||
                (r != ncclSuccess && r != ncclInProgress)) {
                PD_LOG_ERR("kvx nccl: transfer failed: %s", ncclGetErrorString(r));
                return PD_ERR_TRANSPORT;
            }
        }
        if (canceled != NULL && atomic_load(canceled))
            return PD_ERR_CANCELED;
        if (pd_now_ns() > deadline) {
            PD_LOG_ERR("kvx nccl: transfer did not finish within %.1fs", ln->st->timeout_s);
            return PD_ERR_TIMEOUT;
        }
        if (pd_now_ns() > spin_end)
            usleep(50);
        else
            sched_yield();
    }
}

/* After a failed NCCL transfer: abort the communicator (its kernels exit), then drain
 * the stream so nothing queued touches our memory any more.  The drain is bounded (a
 * transport that ignores the abort must not hang a lane, and with it
 * ctx destroy); what is still queued then stays ordered behind the stuck receive. */
static void comm_kill(nc_lane_t *ln, ncclComm_t *comm)
{
    uint64_t end = pd_now_ns() + 10000000000ull;
    cudaError_t e;

    if (*comm != NULL) {
        ncclCommAbort(*comm);
        *comm = NULL;
    }
    while ((e = cudaStreamQuery(ln->stream)) == cudaErrorNotReady && pd_now_ns() < end)
        usleep(200);
    if (e == cudaErrorNotReady)
        PD_LOG_CRIT("kvx nccl: the transfer stream did not drain 10 s after ncclCommAbort");
    else if (e != cudaSuccess)
        PD_LOG_ERR("kvx nccl: stream failed after abort: %s", cudaGetErrorString(e));
}

static pd_status_t comm_init(nc_lane_t *ln, ncclComm_t *comm_p, const ncclUniqueId *id, int rank,
                             uint64_t deadline, atomic_int *canceled)
{
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    ncclComm_t comm = NULL;
    ncclResult_t r;
    pd_status_t s;

    cfg.blocking = 0; /* returns at once; we poll, so a missing peer cannot hang us */
    r = ncclCommInitRankConfig(&comm, 2, *id, rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        PD_LOG_ERR("kvx nccl: ncclCommInitRankConfig (rank %d): %s", rank, ncclGetErrorString(r));
        if (comm != NULL)
            ncclCommAbort(comm);
        return PD_ERR_TRANSPORT;
    }
    s = comm_wait(comm, deadline, canceled);
    if (s != PD_OK) {
        PD_LOG_ERR("kvx nccl: joining the pair's communicator (rank %d) failed: %s", rank,
                   pd_status_str(s));
        comm_kill(ln, &comm);
        return s;
    }
    *comm_p = comm;
    return PD_OK;
}

static pd_status_t staging_get(nc_lane_t *ln, size_t bytes)
{
    if (ln->staging_bytes >= bytes)
        return PD_OK;
    if (ln->staging != NULL)
        cudaFree(ln->staging);
    ln->staging = NULL;
    ln->staging_bytes = 0;
    if (cuda_ok(cudaMalloc(&ln->staging, bytes), "staging cudaMalloc") != PD_OK)
        return PD_ERR_NOMEM;
    ln->staging_bytes = bytes;
    return PD_OK;
}

/* Copy n ids (host) to the device id buffer at slot (0 or 1), on the stream. */
static pd_status_t ids_upload(nc_lane_t *ln, int slot, const uint32_t *ids, size_t n)
{
    uint32_t *h = ln->h_ids + (size_t)slot * KVX_MAX_BLOCKS_PER_REQ;
    uint32_t *d = ln->d_ids + (size_t)slot * KVX_MAX_BLOCKS_PER_REQ;

    if (n > KVX_MAX_BLOCKS_PER_REQ)
        return PD_ERR_LIMIT;
    memcpy(h, ids, n * sizeof(uint32_t));
    return cuda_ok(cudaMemcpyAsync(d, h, n * sizeof(uint32_t), cudaMemcpyHostToDevice, ln->stream),
                   "id upload");
}

/* Queued last on the stream: the kernels' range error word comes back with the data,
 * so no extra synchronous copy (which would also wait for the engine's streams). */
static pd_status_t queue_err_read(nc_lane_t *ln)
{
    return cuda_ok(cudaMemcpyAsync(ln->h_err, ln->d_err, sizeof(int), cudaMemcpyDeviceToHost, ln->stream),
                   "error word read");
}

/* After the stream wait: the error word read by queue_err_read. */
static pd_status_t check_err_word(nc_lane_t *ln)
{
    if (*(volatile int *)ln->h_err != 0) {
        PD_LOG_ERR("kvx nccl: a block id outside a region reached the copy kernel");
        return PD_ERR_RANGE;
    }
    return PD_OK;
}

static pd_status_t reset_err_word(nc_lane_t *ln)
{
    return cuda_ok(cudaMemsetAsync(ln->d_err, 0, sizeof(int), ln->stream), "error word reset");
}

/* Producer: gather and send the blocks a consumer asked for (SERVE), on the pair's lane. */
static pd_status_t run_send(nc_lane_t *ln, nc_batch_t *b, uint64_t deadline)
{
    nc_state_t *st = ln->st;
    nc_serve_comm_t *c = b->serve;
    size_t bb = st->region.block_bytes;
    pd_status_t s;

    if (atomic_load(&c->dead))
        return PD_ERR_TRANSPORT; /* the pair failed before: the consumer makes a new one */
    /* joins the consumer, which waits as rank 1 on its link's lane */
    if (c->comm == NULL && (s = comm_init(ln, &c->comm, &c->id, 0, deadline, NULL)) != PD_OK)
        goto fail;
    if ((s = staging_get(ln, (size_t)b->chunk_blocks * bb)) != PD_OK ||
        (s = ids_upload(ln, 0, b->remote_ids, b->n)) != PD_OK || (s = reset_err_word(ln)) != PD_OK)
        goto fail;
    for (size_t off = 0; off < b->n && s == PD_OK; off += b->chunk_blocks) {
        size_t k = PD_MIN((size_t)b->chunk_blocks, b->n - off);
        ncclResult_t r;
        /* stream order: the gather of chunk i+1 waits for the send of chunk i */
        s = kcuda_block_copy(ln->staging, NULL, k, st->region.base, ln->d_ids + off,
                             st->region.n_blocks, k, bb, ln->d_err, ln->stream);
        if (s != PD_OK)
            break;
        r = ncclSend(ln->staging, k * bb, ncclChar, 1, c->comm, ln->stream);
        if (r == ncclInProgress)
            s = comm_wait(c->comm, deadline, NULL);
        else if (r != ncclSuccess) {
            PD_LOG_ERR("kvx nccl: ncclSend: %s", ncclGetErrorString(r));
            s = PD_ERR_TRANSPORT;
        }
    }
    if (s == PD_OK)
        s = queue_err_read(ln);
    ln->t_queued = pd_now_ns();
    if (s == PD_OK)
        s = stream_wait(ln, c->comm, deadline, NULL);
    if (s == PD_OK)
        return check_err_word(ln);
fail:
    /* a broken pair: never used again (the consumer makes a new one on its next read) */
    comm_kill(ln, &c->comm);
    atomic_store(&c->dead, 1);
    return s;
}

/* Free the link for the next read (after a read, or a read that could not start). */
static void link_release(nc_link_t *l)
{
    pthread_mutex_lock(&l->busy_mu);
    l->busy = 0;
    pthread_cond_broadcast(&l->busy_cv);
    pthread_mutex_unlock(&l->busy_mu);
}

/* Consumer, network path: receive chunk by chunk into staging, scatter each. */
static pd_status_t run_recv(nc_lane_t *ln, nc_peer_t *p, nc_batch_t *b, uint64_t deadline)
{
    nc_state_t *st = ln->st;
    size_t bb = st->region.block_bytes;
    nc_link_t *l = p->link;
    pd_status_t s = PD_OK;

    if (l->comm == NULL) {
        l->id_used = 1; /* an id serves one communicator: read_prepare makes a new one */
        if ((s = comm_init(ln, &l->comm, &l->id, 1, deadline, &p->canceled)) != PD_OK)
            return s;
    }
    if ((s = staging_get(ln, (size_t)b->chunk_blocks * bb)) != PD_OK ||
        (s = ids_upload(ln, 0, b->local_ids, b->n)) != PD_OK || (s = reset_err_word(ln)) != PD_OK)
        goto fail;
    for (size_t off = 0; off < b->n && s == PD_OK; off += b->chunk_blocks) {
        size_t k = PD_MIN((size_t)b->chunk_blocks, b->n - off);
        ncclResult_t r = ncclRecv(ln->staging, k * bb, ncclChar, 0, l->comm, ln->stream);
        if (r == ncclInProgress)
            s = comm_wait(l->comm, deadline, &p->canceled);
        else if (r != ncclSuccess) {
            PD_LOG_ERR("kvx nccl: ncclRecv: %s", ncclGetErrorString(r));
            s = PD_ERR_TRANSPORT;
        }
        if (s == PD_OK)
            s = kcuda_block_copy(st->region.base, ln->d_ids + off, st->region.n_blocks, ln->staging,
                                 NULL, k, k, bb, ln->d_err, ln->stream);
    }
    if (s == PD_OK)
        s = queue_err_read(ln);
    ln->t_queued = pd_now_ns();
    if (s == PD_OK)
        s = stream_wait(ln, l->comm, deadline, &p->canceled);
    if (s == PD_OK)
        return check_err_word(ln);
fail:
    comm_kill(ln, &l->comm); /* the pair is broken: the next read makes a new one */
    return s;
}

/* Consumer, same host: one launch (or one batch call) for the whole read. */
static pd_status_t run_ipc(nc_lane_t *ln, nc_peer_t *p, nc_batch_t *b, uint64_t deadline)
{
    nc_state_t *st = ln->st;
    size_t bb = st->region.block_bytes;
    pd_status_t s = PD_OK;

    if (p->copy == KVX_IPC_COPY_KERNEL) {
        /* b and the reads chained to it (lane_main groups queued ones): every id list
         * in ONE upload (local ids, then remote ids, per read), one kernel per read back
         * to back, one drain for all */
        size_t off = 0;
        for (const nc_batch_t *x = b; x != NULL; x = x->next) {
            memcpy(ln->h_ids + off, x->local_ids, x->n * sizeof(uint32_t));
            memcpy(ln->h_ids + off + x->n, x->remote_ids, x->n * sizeof(uint32_t));
            off += 2 * x->n;
        }
        s = cuda_ok(cudaMemcpyAsync(ln->d_ids, ln->h_ids, off * sizeof(uint32_t), cudaMemcpyHostToDevice,
                                    ln->stream),
                    "id upload");
        if (s == PD_OK)
            s = reset_err_word(ln);
        off = 0;
        for (const nc_batch_t *x = b; x != NULL && s == PD_OK; x = x->next) {
            s = kcuda_block_copy(st->region.base, ln->d_ids + off, st->region.n_blocks, x->peer->remote_base,
                                 ln->d_ids + off + x->n, x->peer->remote_n, x->n, bb, ln->d_err, ln->stream);
            off += 2 * x->n;
        }
        if (s == PD_OK)
            s = queue_err_read(ln);
    } else if (p->copy == KVX_IPC_COPY_BATCH) {
        void **dsts = malloc(b->n * sizeof(void *) + 1);
        const void **srcs = malloc(b->n * sizeof(void *) + 1);
        size_t *sizes = malloc(b->n * sizeof(size_t) + 1);
        s = dsts == NULL || srcs == NULL || sizes == NULL
                ? PD_ERR_NOMEM
                : kcuda_block_copy_batch(st->region.base, b->local_ids, p->remote_base, b->remote_ids,
                                         b->n, bb, dsts, srcs, sizes, ln->stream);
        free(dsts);
        free(srcs);
        free(sizes);
    } else {
        for (size_t i = 0; i < b->n && s == PD_OK; i++)
            s = cuda_ok(cudaMemcpyAsync(kvx_region_block(&st->region, b->local_ids[i]),
                                        (char *)p->remote_base + (size_t)b->remote_ids[i] * bb, bb,
                                        cudaMemcpyDeviceToDevice, ln->stream),
                        "cudaMemcpyAsync");
    }
    ln->t_queued = pd_now_ns();
    {
        /* whatever was queued must finish before anyone hears about the batch; one
         * closing peer's cancel only cuts the wait of a read on its own */
        pd_status_t w = stream_wait(ln, NULL, deadline, b->next == NULL ? &p->canceled : NULL);
        if (w != PD_OK && cudaStreamSynchronize(ln->stream) != cudaSuccess)
            w = PD_ERR_CUDA;
        if (s == PD_OK)
            s = w;
    }
    if (s == PD_OK && p->copy == KVX_IPC_COPY_KERNEL)
        s = check_err_word(ln);
    return s;
}

static void run_batch(nc_lane_t *ln, nc_batch_t *b)
{
    nc_peer_t *p = b->peer;
    uint64_t t_start = pd_now_ns(), t_done;
    uint64_t deadline = t_start + (uint64_t)(ln->st->timeout_s * 1e9);
    pd_status_t s;

    ln->t_queued = 0;
    if (ln->stream == NULL)
        s = PD_ERR_CUDA; /* the lane's buffers could not be made (logged) */
    else if (p == NULL)
        s = run_send(ln, b, deadline);
    else if (atomic_load(&p->canceled))
        s = PD_ERR_CANCELED;
    else if (p->ipc)
        s = run_ipc(ln, p, b, deadline);
    else
        s = run_recv(ln, p, b, deadline);
    if (p != NULL && !p->ipc)
        link_release(p->link);
    t_done = pd_now_ns();
    for (nc_batch_t *next; b != NULL; b = next) { /* b and the reads grouped with it */
        next = b->next;
        if (b->cb != NULL)
            b->cb(b->arg, s);
        else if (s != PD_OK)
            PD_LOG_WARN("kvx nccl: sending %zu blocks failed: %s", b->n, pd_status_str(s));
        if (ln->st->timing && s == PD_OK && ln->t_queued >= t_start) {
            nc_timing_t *tm = &ln->st->tm;
            atomic_fetch_add(&tm->n, 1);
            atomic_fetch_add(&tm->queue, t_start - b->t_push);
            atomic_fetch_add(&tm->host, ln->t_queued - t_start);
            atomic_fetch_add(&tm->wait, t_done - ln->t_queued);
            atomic_fetch_add(&tm->cb, pd_now_ns() - t_done);
        }
        if (b->peer != NULL)
            atomic_fetch_sub(&b->peer->inflight, 1);
        free(b->local_ids);
        free(b->remote_ids);
        free(b);
    }
}

/* IPC kernel reads that may run as one group: one id upload and one drain of the
 * lane's stream for all (run_ipc); without it the lane drains and wakes between
 * reads and the GPU idles for that gap (~0.1 ms against 0.7 ms per 256 MiB pull). */
#define IPC_GROUP_MAX 4

static int ipc_groupable(const nc_batch_t *b)
{
    return b->peer != NULL && b->peer->ipc && b->peer->copy == KVX_IPC_COPY_KERNEL && b->n > 0 &&
           !atomic_load(&b->peer->canceled);
}

static void lane_free_bufs(nc_lane_t *ln)
{
    if (ln->d_ids != NULL)
        cudaFree(ln->d_ids);
    if (ln->h_ids != NULL)
        cudaFreeHost(ln->h_ids);
    if (ln->d_err != NULL)
        cudaFree(ln->d_err);
    if (ln->h_err != NULL)
        cudaFreeHost(ln->h_err);
    if (ln->staging != NULL)
        cudaFree(ln->staging);
    if (ln->stream != NULL)
        cudaStreamDestroy(ln->stream);
    ln->d_ids = ln->h_ids = NULL;
    ln->d_err = ln->h_err = NULL;
    ln->staging = NULL;
    ln->stream = NULL;
}

static void *lane_main(void *arg)
{
    nc_lane_t *ln = arg;

    if (cudaSetDevice(ln->st->device) != cudaSuccess)
        PD_LOG_ERR("kvx nccl: cudaSetDevice(%d) failed on a lane", ln->st->device);
    pthread_mutex_lock(&ln->mu);
    for (;;) {
        nc_batch_t *b;
        while (ln->head == NULL && !ln->stop)
            pthread_cond_wait(&ln->cv, &ln->mu);
        if (ln->head == NULL)
            break;
        b = ln->head;
        ln->head = b->next;
        b->next = NULL;
        if (ipc_groupable(b) && b->cb != NULL) {
            /* take the IPC reads queued behind it too, while their ids fit the lane's
             * id buffers (2 x KVX_MAX_BLOCKS_PER_REQ entries) */
            nc_batch_t *last = b;
            size_t total = b->n;
            int k = 1;
            while (k < IPC_GROUP_MAX && ln->head != NULL && ipc_groupable(ln->head) && ln->head->cb != NULL &&
                   total + ln->head->n <= KVX_MAX_BLOCKS_PER_REQ) {
                last->next = ln->head;
                last = ln->head;
                ln->head = last->next;
                last->next = NULL;
                total += last->n;
                k++;
            }
        }
        if (ln->head == NULL)
            ln->tail = NULL;
        ln->running = 1;
        pthread_mutex_unlock(&ln->mu);
        run_batch(ln, b);
        pthread_mutex_lock(&ln->mu);
        ln->running = 0;
    }
    pthread_mutex_unlock(&ln->mu);
    return NULL;
}

/* Make the lane's stream and buffers (on the region's device) and start its thread. */
static pd_status_t lane_start(nc_state_t *st, nc_lane_t *ln)
{
    size_t id_bytes = 2 * (size_t)KVX_MAX_BLOCKS_PER_REQ * sizeof(uint32_t);

    ln->st = st;
    pthread_mutex_init(&ln->mu, NULL);
    pthread_cond_init(&ln->cv, NULL);
    if (cudaSetDevice(st->device) != cudaSuccess ||
        cudaStreamCreateWithFlags(&ln->stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaMalloc((void **)&ln->d_ids, id_bytes) != cudaSuccess ||
        cudaHostAlloc((void **)&ln->h_ids, id_bytes, cudaHostAllocDefault) != cudaSuccess ||
        cudaMalloc((void **)&ln->d_err, sizeof(int)) != cudaSuccess ||
        cudaHostAlloc((void **)&ln->h_err, sizeof(int), cudaHostAllocDefault) != cudaSuccess) {
        PD_LOG_ERR("kvx nccl: no usable CUDA device for a transfer lane (%s)",
                   cudaGetErrorString(cudaGetLastError()));
        goto err;
    }
    if (pthread_create(&ln->thread, NULL, lane_main, ln) != 0) {
        PD_LOG_ERR("kvx nccl: cannot start a transfer thread");
        goto err;
    }
    ln->started = 1;
    return PD_OK;
err:
    lane_free_bufs(ln);
    pthread_mutex_destroy(&ln->mu);
    pthread_cond_destroy(&ln->cv);
    return PD_ERR_CUDA;
}

/* Run what is queued, stop the thread, free the buffers.  Only for a started lane. */
static void lane_stop(nc_lane_t *ln)
{
    pthread_mutex_lock(&ln->mu);
    ln->stop = 1;
    pthread_cond_signal(&ln->cv);
    pthread_mutex_unlock(&ln->mu);
    pthread_join(ln->thread, NULL);
    cudaSetDevice(ln->st->device);
    lane_free_bufs(ln);
    pthread_mutex_destroy(&ln->mu);
    pthread_cond_destroy(&ln->cv);
    ln->started = 0;
}

static void lane_push(nc_lane_t *ln, nc_batch_t *b)
{
    b->t_push = pd_now_ns();
    pthread_mutex_lock(&ln->mu);
    if (ln->tail)
        ln->tail->next = b;
    else
        ln->head = b;
    ln->tail = b;
    pthread_cond_signal(&ln->cv);
    pthread_mutex_unlock(&ln->mu);
}

/* A lane with nothing queued and nothing running. */
static int lane_idle(nc_lane_t *ln)
{
    int idle;

    pthread_mutex_lock(&ln->mu);
    idle = ln->head == NULL && !ln->running;
    pthread_mutex_unlock(&ln->mu);
    return idle;
}

static void link_free(nc_link_t *l)
{
    if (l->lane.started)
        lane_stop(&l->lane); /* no peer left: nothing queued or running on it */
    if (l->comm != NULL)
        ncclCommAbort(l->comm); /* destroy would wait for a producer that may be gone */
    pthread_mutex_destroy(&l->busy_mu);
    pthread_cond_destroy(&l->busy_cv);
    free(l);
}

static void serve_comm_free(nc_serve_comm_t *c)
{
    if (c->lane.started)
        lane_stop(&c->lane);
    if (c->comm != NULL)
        ncclCommAbort(c->comm); /* abort, not destroy: destroy waits for the consumer */
    free(c);
}

static pd_status_t nc_create(const kvx_config_t *cfg, void **state_p)
{
    nc_state_t *st = calloc(1, sizeof(*st));
    int nccl_version = 0;
    pd_status_t s;

    if (st == NULL)
        return PD_ERR_NOMEM;
    st->force_network = cfg->nccl_force_network;
    st->ipc_copy = cfg->nccl_ipc_copy;
    st->chunk_bytes = cfg->nccl_chunk_bytes;
    st->timeout_s = cfg->transfer_timeout_s + 1.0; /* the core gives up first */
    {
        const char *t = getenv("KVX_NCCL_TIMING");
        st->timing = t != NULL && t[0] != '\0' && strcmp(t, "0") != 0;
        if (st->timing)
            snprintf(st->timing_tag, sizeof(st->timing_tag), "%s", t);
    }
    if (cudaGetDevice(&st->device) != cudaSuccess) {
        PD_LOG_ERR("kvx nccl: no usable CUDA device (%s)", cudaGetErrorString(cudaGetLastError()));
        free(st);
        return PD_ERR_CUDA;
    }
    if ((s = lane_start(st, &st->main)) != PD_OK) {
        free(st);
        return s;
    }
    read_boot_id(st->boot_id);
    pthread_mutex_init(&st->mu, NULL);
    (void)ncclGetVersion(&nccl_version);
    PD_LOG_INFO("kvx nccl: device %d, NCCL %d, ipc copy %s%s", st->device, nccl_version,
                st->ipc_copy == KVX_IPC_COPY_KERNEL  ? "kernel"
                : st->ipc_copy == KVX_IPC_COPY_BATCH ? "batch"
                                                     : "memcpy",
                st->force_network ? ", network path forced" : "");
    *state_p = st;
    return PD_OK;
}

static void nc_destroy(void *state)
{
    nc_state_t *st = state;
    uint64_t n = atomic_load(&st->tm.n);

    lane_stop(&st->main);
    if (st->timing && n > 0)
        fprintf(stderr,
                "kvx nccl timing [%s]: %llu transfers, mean us: queue %.1f host %.1f wait %.1f "
                "callback %.1f\n",
                st->timing_tag, (unsigned long long)n, (double)atomic_load(&st->tm.queue) / n / 1e3,
                (double)atomic_load(&st->tm.host) / n / 1e3, (double)atomic_load(&st->tm.wait) / n / 1e3,
                (double)atomic_load(&st->tm.cb) / n / 1e3);
    while (st->serve_comms != NULL) {
        nc_serve_comm_t *c = st->serve_comms;
        st->serve_comms = c->next;
        serve_comm_free(c);
    }
    while (st->links != NULL) { /* the core closed every peer first; defensive */
        nc_link_t *l = st->links;
        st->links = l->next;
        link_free(l);
    }
    while (st->maps != NULL) { /* every peer closed first: defensive */
        nc_ipc_map_t *m = st->maps;
        st->maps = m->next;
        (void)cudaIpcCloseMemHandle(m->base);
        free(m);
    }
    pthread_mutex_destroy(&st->mu);
    free(st);
}

static pd_status_t nc_reg(void *state, const kvx_region_t *region, void *desc, size_t cap,
                          size_t *len_p)
{
    nc_state_t *st = state;
    cudaIpcMemHandle_t h;
    uint8_t *o = desc;
    uint32_t magic = DESC_MAGIC, dev = (uint32_t)st->device;
    uint32_t flags = st->force_network ? DESC_FLAG_FORCE_NET : 0;

    if (region->mem_type != KVX_MEM_CUDA) {
        PD_LOG_ERR("kvx nccl: the region must be CUDA memory");
        return PD_ERR_UNSUPPORTED;
    }
    if (cap < DESC_LEN)
        return PD_ERR_LIMIT;
    if (cudaSetDevice(st->device) != cudaSuccess ||
        cudaIpcGetMemHandle(&h, region->base) != cudaSuccess) {
        PD_LOG_ERR("kvx nccl: cudaIpcGetMemHandle failed (is the base a cudaMalloc start?): %s",
                   cudaGetErrorString(cudaGetLastError()));
        return PD_ERR_CUDA;
    }
    memcpy(o, &magic, 4);
    memcpy(o + 4, &dev, 4);
    memcpy(o + 8, &flags, 4);
    memcpy(o + 12, st->boot_id, BOOT_ID_LEN);
    memcpy(o + 12 + BOOT_ID_LEN, &h, sizeof(h));
    *len_p = DESC_LEN;
    st->region = *region;
    st->have_region = 1;
    return PD_OK;
}

/* The link to the producer described by desc, made on first use (with its unique id). */
static pd_status_t link_get(nc_state_t *st, const uint8_t *desc, nc_link_t **link_p)
{
    nc_link_t *l;
    ncclResult_t r;

    pthread_mutex_lock(&st->mu);
    for (l = st->links; l != NULL; l = l->next)
        if (memcmp(l->key, desc, DESC_LEN) == 0) {
            l->refs++;
            pthread_mutex_unlock(&st->mu);
            *link_p = l;
            return PD_OK;
        }
    pthread_mutex_unlock(&st->mu);
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        return PD_ERR_NOMEM;
    memcpy(l->key, desc, DESC_LEN);
    l->refs = 1;
    pthread_mutex_init(&l->busy_mu, NULL);
    pthread_cond_init(&l->busy_cv, NULL);
    if ((r = ncclGetUniqueId(&l->id)) != ncclSuccess) {
        PD_LOG_ERR("kvx nccl: ncclGetUniqueId: %s", ncclGetErrorString(r));
        link_free(l);
        return PD_ERR_TRANSPORT;
    }
    if (lane_start(st, &l->lane) != PD_OK) {
        link_free(l);
        return PD_ERR_CUDA;
    }
    pthread_mutex_lock(&st->mu);
    {
        /* another pull worker may have made one meanwhile: use the first */
        nc_link_t *o;
        for (o = st->links; o != NULL; o = o->next)
            if (memcmp(o->key, desc, DESC_LEN) == 0)
                break;
        if (o != NULL) {
            o->refs++;
            pthread_mutex_unlock(&st->mu);
            link_free(l);
            *link_p = o;
            return PD_OK;
        }
    }
    l->next = st->links;
    st->links = l;
    pthread_mutex_unlock(&st->mu);
    *link_p = l;
    return PD_OK;
}

static void link_put(nc_state_t *st, nc_link_t *l)
{
    nc_link_t **pp;
    int last;

    pthread_mutex_lock(&st->mu);
    last = --l->refs == 0;
    if (last)
        for (pp = &st->links; *pp != NULL; pp = &(*pp)->next)
            if (*pp == l) {
                *pp = l->next;
                break;
            }
    pthread_mutex_unlock(&st->mu);
    if (last)
        link_free(l); /* no peer left, so no read of it is queued or running */
}

static void peer_free(nc_peer_t *p)
{
    free(p);
}

static pd_status_t nc_peer_connect(void *state, const kvx_peer_info_t *info, void **peer_p)
{
    nc_state_t *st = state;
    const uint8_t *d = info->desc;
    cudaIpcMemHandle_t h;
    struct cudaPointerAttributes attr;
    uint32_t magic, flags;
    int can = 0;
    nc_peer_t *p;

    if (info->desc_len != DESC_LEN)
        goto err_desc;
    memcpy(&magic, d, 4);
    if (magic != DESC_MAGIC)
        goto err_desc;
    memcpy(&flags, d + 8, 4);
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return PD_ERR_NOMEM;
    p->block_bytes = info->block_bytes;
    p->remote_n = info->n_blocks;
    /* this runs on a pull worker: the IPC mapping and peer access belong to our device */
    if (cudaSetDevice(st->device) != cudaSuccess) {
        peer_free(p);
        return PD_ERR_CUDA;
    }
    if (st->force_network || (flags & DESC_FLAG_FORCE_NET) || st->boot_id[0] == '\0' ||
        memcmp(d + 12, st->boot_id, BOOT_ID_LEN) != 0) {
        /* another host (or forced): NCCL send/recv over the producer's one link; the
         * communicator is set up on the first read */
        pd_status_t ls = link_get(st, d, &p->link);
        if (ls != PD_OK) {
            peer_free(p);
            return ls;
        }
        PD_LOG_INFO("kvx nccl: peer %s over NCCL send/recv (%s)", info->engine_id,
                    st->force_network || (flags & DESC_FLAG_FORCE_NET) ? "forced" : "another host");
        *peer_p = p;
        return PD_OK;
    }
    p->ipc = 1;
    p->copy = st->ipc_copy;
    memcpy(&h, d + 12 + BOOT_ID_LEN, sizeof(h));
    if (ipc_map_get(st, &h, &p->remote_base) != PD_OK) {
        PD_LOG_ERR("kvx nccl: cannot map the region of %s", info->engine_id);
        peer_free(p);
        return PD_ERR_CUDA;
    }
    /* the kernel dereferences the peer's memory: that needs peer access between the two
     * devices (same device: trivially); otherwise the copy engines do it */
    if (cudaPointerGetAttributes(&attr, p->remote_base) == cudaSuccess && attr.device != st->device &&
        (cudaDeviceCanAccessPeer(&can, st->device, attr.device) != cudaSuccess || !can) &&
        p->copy == KVX_IPC_COPY_KERNEL) {
        PD_LOG_WARN("kvx nccl: no peer access from device %d to %d: batch copies instead of the "
                    "kernel", st->device, attr.device);
        p->copy = KVX_IPC_COPY_BATCH;
    }
    (void)cudaGetLastError();
    PD_LOG_INFO("kvx nccl: peer %s over CUDA IPC (device %d -> %d)", info->engine_id,
                (int)attr.device, st->device);
    *peer_p = p;
    return PD_OK;

err_desc:
    PD_LOG_ERR("kvx nccl: malformed descriptor from %s", info->engine_id);
    return PD_ERR_FORMAT;
}

static void nc_peer_close(void *state, void *peer)
{
    nc_state_t *st = state;
    nc_peer_t *p = peer;
    uint64_t end = pd_now_ns() + (uint64_t)((st->timeout_s + 10.0) * 1e9);

    /* the lane sees the flag in its waits, aborts the communicator and
     * completes the read; only then is the peer ours to free */
    atomic_store(&p->canceled, 1);
    if (p->link != NULL) {
        /* wake our reads waiting for the link in read_prepare */
        pthread_mutex_lock(&p->link->busy_mu);
        pthread_cond_broadcast(&p->link->busy_cv);
        pthread_mutex_unlock(&p->link->busy_mu);
    }
    while (atomic_load(&p->inflight) > 0 && pd_now_ns() < end)
        usleep(500);
    if (atomic_load(&p->inflight) > 0) {
        PD_LOG_CRIT("kvx nccl: copies still running at peer close; leaking the peer");
        kvx_graveyard_add(p);
        return;
    }
    /* the lanes are done with p (inflight 0) */
    if (p->ipc) {
        cudaSetDevice(st->device);
        ipc_map_put(st, p->remote_base);
    }
    if (p->link != NULL)
        link_put(st, p->link);
    peer_free(p);
}

static uint32_t chunk_blocks(const nc_state_t *st)
{
    size_t k = st->chunk_bytes / st->region.block_bytes;
    return (uint32_t)PD_MAX((size_t)1, PD_MIN(k, (size_t)KVX_MAX_BLOCKS_PER_REQ));
}

static pd_status_t nc_read(void *state, void *peer, const kvx_read_t *rd, kvx_read_cb_t cb, void *arg)
{
    nc_state_t *st = state;
    nc_peer_t *p = peer;
    nc_batch_t *b;
    pd_status_t s = PD_ERR_NOMEM;

    if (!st->have_region || p->block_bytes != st->region.block_bytes || rd->n > KVX_MAX_BLOCKS_PER_REQ) {
        s = PD_ERR_INVAL;
        goto err;
    }
    b = calloc(1, sizeof(*b));
    if (b == NULL)
        goto err;
    b->local_ids = malloc(rd->n * sizeof(uint32_t) + 1);
    b->remote_ids = malloc(rd->n * sizeof(uint32_t) + 1);
    if (b->local_ids == NULL || b->remote_ids == NULL) {
        free(b->local_ids);
        free(b->remote_ids);
        free(b);
        goto err;
    }
    memcpy(b->local_ids, rd->local_ids, rd->n * sizeof(uint32_t));
    memcpy(b->remote_ids, rd->remote_ids, rd->n * sizeof(uint32_t));
    b->n = rd->n;
    b->peer = p;
    b->chunk_blocks = chunk_blocks(st);
    b->cb = cb;
    b->arg = arg;
    atomic_fetch_add(&p->inflight, 1);
    lane_push(p->ipc ? &st->main : &p->link->lane, b);
    return PD_OK;

err:
    /* a read that does not start gives back the link read_prepare took */
    if (!p->ipc)
        link_release(p->link);
    return s;
}

/* Consumer, network path: the blob tells the producer which communicator to send on and
 * how many blocks go in one message (both sides must cut the same chunks). */
static pd_status_t nc_read_prepare(void *state, void *peer, const kvx_read_t *rd, void *blob,
                                   size_t cap, size_t *len_p)
{
    nc_state_t *st = state;
    nc_peer_t *p = peer;
    uint32_t magic = BLOB_MAGIC, cb;

    (void)rd;
    if (p->ipc) {
        *len_p = 0; /* one-sided: nothing for the producer to do */
        return PD_OK;
    }
    if (cap < BLOB_LEN || !st->have_region)
        return PD_ERR_LIMIT;
    {
        nc_link_t *l = p->link;
        struct timespec ts;
        int rc = 0;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += (time_t)st->timeout_s + 1; /* the previous read has its own deadline */
        pthread_mutex_lock(&l->busy_mu);
        while (l->busy && rc == 0 && !atomic_load(&p->canceled))
            rc = pthread_cond_timedwait(&l->busy_cv, &l->busy_mu, &ts);
        if (l->busy || atomic_load(&p->canceled)) {
            pthread_mutex_unlock(&l->busy_mu);
            return PD_ERR_BUSY;
        }
        l->busy = 1;
        pthread_mutex_unlock(&l->busy_mu);
        /* ours alone now (the link's lane finished the link's last read): a
         * communicator that failed is replaced by a new one under a new id */
        if (l->comm == NULL && l->id_used) {
            ncclResult_t r = ncclGetUniqueId(&l->id);
            if (r != ncclSuccess) {
                PD_LOG_ERR("kvx nccl: ncclGetUniqueId: %s", ncclGetErrorString(r));
                link_release(l);
                return PD_ERR_TRANSPORT;
            }
            l->id_used = 0;
        }
        memcpy((uint8_t *)blob + 8, &l->id, sizeof(l->id));
    }
    cb = chunk_blocks(st);
    memcpy(blob, &magic, 4);
    memcpy((uint8_t *)blob + 4, &cb, 4);
    *len_p = BLOB_LEN;
    return PD_OK;
}

/* Producer: queue the sends on the pair's lane (the control thread must not block on
 * NCCL); the pair and its lane are made on the consumer's first request. */
static pd_status_t nc_serve(void *state, const void *blob, size_t len, const uint32_t *ids, size_t n)
{
    nc_state_t *st = state;
    nc_serve_comm_t *c, **pp, *reap = NULL;
    nc_batch_t *b;
    ncclUniqueId id;
    uint32_t magic, cb;

    if (len != BLOB_LEN || !st->have_region || n > KVX_MAX_BLOCKS_PER_REQ)
        return PD_ERR_FORMAT;
    memcpy(&magic, blob, 4);
    memcpy(&cb, (const uint8_t *)blob + 4, 4);
    memcpy(&id, (const uint8_t *)blob + 8, sizeof(id));
    /* the consumer's chunk size decides our staging size: bound it */
    if (magic != BLOB_MAGIC || cb == 0 || cb > KVX_MAX_BLOCKS_PER_REQ ||
        (uint64_t)cb * st->region.block_bytes > STAGING_MAX) {
        PD_LOG_WARN("kvx nccl: SERVE blob refused (chunk of %u blocks)", cb);
        return PD_ERR_FORMAT;
    }
    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return PD_ERR_NOMEM;
    b->remote_ids = malloc(n * sizeof(uint32_t) + 1);
    if (b->remote_ids == NULL) {
        free(b);
        return PD_ERR_NOMEM;
    }
    memcpy(b->remote_ids, ids, n * sizeof(uint32_t));
    b->chunk_blocks = cb;
    b->n = n;
    pthread_mutex_lock(&st->mu);
    c = NULL;
    for (pp = &st->serve_comms; *pp != NULL;) {
        nc_serve_comm_t *x = *pp;
        if (memcmp(&x->id, &id, sizeof(id)) == 0)
            c = x;
        if (x != c && atomic_load(&x->dead) && lane_idle(&x->lane)) {
            *pp = x->next; /* a failed pair nobody uses: stop its lane below */
            x->next = reap;
            reap = x;
            continue;
        }
        pp = &x->next;
    }
    if (c == NULL) {
        c = calloc(1, sizeof(*c));
        if (c == NULL || lane_start(st, &c->lane) != PD_OK) {
            pthread_mutex_unlock(&st->mu);
            free(c);
            free(b->remote_ids);
            free(b);
            c = NULL;
            goto out;
        }
        c->id = id;
        c->next = st->serve_comms;
        st->serve_comms = c;
    }
    b->serve = c;
    lane_push(&c->lane, b);
    pthread_mutex_unlock(&st->mu);
out:
    while (reap != NULL) {
        nc_serve_comm_t *x = reap;
        reap = x->next;
        serve_comm_free(x);
    }
    return c != NULL ? PD_OK : PD_ERR_NOMEM;
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
