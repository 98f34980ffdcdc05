/*
 * kvx_ucx.c - UcxConnector: one-sided reads of whole blocks with ucp_get_nbx.
 *
 * The producer maps its region (ucp_mem_map), packs an rkey and publishes, through
 * the control plane, a descriptor: region base, its worker address, the rkey.  The
 * consumer creates an endpoint to that worker address, unpacks the rkey and reads
 * block i at base + i * block_bytes, where i was range-checked by the core: nothing
 * but the base comes from the peer, and the rkey bounds what it grants.
 *
 * One worker per context, in UCS_THREAD_MODE_MULTI: pull threads post gets, a
 * progress thread drives the worker (spinning while gets are in flight, sleeping on
 * the worker's event fd otherwise, which also serves a producer whose transport
 * emulates gets, like tcp) and delivers batch completions, so a read callback never
 * fires inside read.  A batch holds one extra count while it is being posted.
 *
 * Peer failure (ep error handler) fails the outstanding gets; peer_close force-closes
 * the endpoint, which completes every outstanding get before it returns.
 *
 * Same host, staged CUDA region (the descriptor carries the producer's boot id and
 * whether its exposed memory is a mirror UCX allocated, i.e. a shared-memory segment):
 * the endpoint is made WITHOUT UCX peer error handling, because UCX only selects
 * transports that can detect a dead peer in that mode, which on one host leaves tcp
 * over loopback (~1.6 GB/s) instead of shared memory.  Gets from such a mirror are
 * copies from the attached segment (sysv/posix), which a dead producer cannot stall;
 * its death shows as the control plane's failure (heartbeat, RELEASE).  Host regions
 * keep error handling: their same-host gets would go through cma or emulated gets,
 * which a killed producer leaves hanging (seen: 19 s and unsafe local blocks).
 * (That endpoint is kept only when ucp_rkey_ptr maps the producer's mirror here;
 * otherwise the endpoint is made with error handling, as for any peer.)
 * Such a peer's mirror is also mapped here (ucp_rkey_ptr) and host-registered once
 * (p->direct): a read is then ONE host-to-device batch copy straight from the
 * producer's mirror, no gets and no second host copy (the CPU copy of a get is
 * ~10 GB/s, the copy engines ~55), completed by the progress thread.
 * KVX_UCX_SAME_HOST_SHM=0 keeps error handling everywhere.  Every endpoint's lanes
 * are logged as one line (INFO; to stderr with KVX_UCX_PRINT_EP=1).
 *
 * CUDA memory: used directly when the UCX context reports CUDA memory support;
 * otherwise (Debian's UCX) it is staged through pinned host mirrors, compiled only
 * with PD_HAVE_CUDA (see ucx_chunk_t and stage_read; tested on a GPU by
 * tests/unit/test_cuda_kvx.c).  Each staged chunk (and a producer's lease export) is
 * one cudaMemcpyBatchAsync, not one copy per block, and every thread that touches
 * CUDA selects the region's device first (the progress thread included).
 */
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#ifdef PD_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kcuda_xfer.h"
#endif

#include "kvx_internal.h"
#include "pd_log.h"
#include "pd_util.h"

/* The descriptor's magic also says what the producer exposes: host memory (its region
 * or, when staging, its pinned mirror) or CUDA memory registered directly.  The core's
 * handshake reports the region's type, which is CUDA in both CUDA cases. */
#define DESC_MAGIC 0x31584355u      /* "UCX1": host memory exposed */
#define DESC_MAGIC_CUDA 0x43584355u /* "UCXC": CUDA memory exposed directly */
#define BOOT_ID_LEN 36              /* after the rkey: the producer's boot id, */
#define TAIL_LEN (BOOT_ID_LEN + 4)  /* then flags: */
#define TAIL_SHM_MIRROR 1u          /* the exposed memory is a mirror UCX allocated */

typedef struct ucx_state ucx_state_t;

typedef struct ucx_peer {
    ucx_state_t *st;
    ucp_ep_h ep;
    ucp_rkey_h rkey;
    uint64_t remote_base;
    uint64_t block_bytes;
    atomic_int failed;
    atomic_long batches;       /* posted, not yet delivered */
    void *direct;              /* same host: the producer's mirror, mapped and host-registered */
} ucx_peer_t;

typedef struct ucx_batch {
    struct ucx_batch *next;
    ucx_peer_t *peer;
    atomic_long pending;       /* gets + 1 while posting */
    atomic_int status;         /* first error */
    kvx_read_cb_t cb;
    void *arg;
#ifdef PD_HAVE_CUDA
    size_t n;                  /* staging: blocks to copy host -> device */
    uint32_t *local_ids;
    struct ucx_chunk *chunks;  /* staging: gets grouped per staging_chunk_bytes */
#endif
} ucx_batch_t;

#ifdef PD_HAVE_CUDA
/* Staging pipeline: when a chunk's gets have landed in the host mirror its
 * host-to-device copies are queued at once (from the progress thread, without
 * waiting), so they overlap the gets of later chunks; the batch completes after a
 * final stream synchronisation. */
typedef struct ucx_chunk {
    ucx_batch_t *b;
    atomic_long pending;
    size_t first, count;
} ucx_chunk_t;
#endif

struct ucx_state {
    char boot_id[BOOT_ID_LEN + 1];
    ucp_context_h ctx;
    ucp_worker_h worker;
    int efd;
    int cuda_direct;           /* UCX can register CUDA memory */
    ucp_mem_h memh;
    kvx_region_t region;       /* the engine's region */
    kvx_region_t exposed;      /* what UCX maps: the region or its host mirror */
    int have_region;
    pthread_t thread;
    int thread_started;
    atomic_int stop;
    atomic_long inflight;
    pthread_mutex_t mu;
    ucx_batch_t *done;
#ifdef PD_HAVE_CUDA
    void *mirror;              /* pinned host mirror when staging */
    int mirror_ucx;            /* allocated by ucp_mem_map (memh owns it), then host-registered */
    cudaStream_t stream;
    int device;                /* the region's device (ucx_reg's current device) */
    size_t chunk_bytes;        /* staging_chunk_bytes */
#endif
};

static pd_status_t ucs_to_pd(ucs_status_t s)
{
    switch (s) {
    case UCS_OK: return PD_OK;
    case UCS_ERR_CANCELED: return PD_ERR_CANCELED;
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_ENDPOINT_TIMEOUT: return PD_ERR_TIMEOUT;
    case UCS_ERR_NO_MEMORY: return PD_ERR_NOMEM;
    case UCS_ERR_UNSUPPORTED: return PD_ERR_UNSUPPORTED;
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_UNREACHABLE: return PD_ERR_CLOSED;
    default: return PD_ERR_TRANSPORT;
    }
}

/* ---- completion ---- */
static void batch_complete(ucx_batch_t *b)
{
    ucx_state_t *st = b->peer->st;

    pthread_mutex_lock(&st->mu);
    b->next = st->done;
    st->done = b;
    pthread_mutex_unlock(&st->mu);
    /* wakes the progress thread if it sleeps on the event fd */
    ucp_worker_signal(st->worker);
}

static void batch_dec(ucx_batch_t *b, long k, ucs_status_t s)
{
    if (s != UCS_OK) {
        int expect = PD_OK;
        atomic_compare_exchange_strong(&b->status, &expect, (int)ucs_to_pd(s));
    }
    if (atomic_fetch_sub(&b->pending, k) == k)
        batch_complete(b);
}

static void get_cb(void *request, ucs_status_t status, void *user_data)
{
    ucx_batch_t *b = user_data;

    atomic_fetch_sub(&b->peer->st->inflight, 1);
    ucp_request_free(request);
    batch_dec(b, 1, status);
}

#ifdef PD_HAVE_CUDA
/* The calling thread's current device must be the region's: the progress thread's
 * would otherwise be device 0 (a context there, and copies on the wrong device). */
static int use_device(ucx_state_t *st)
{
    static __thread int dev_set = -1;

    if (dev_set == st->device)
        return 1;
    if (cudaSetDevice(st->device) != cudaSuccess) {
        PD_LOG_ERR("kvx ucx: cudaSetDevice(%d) failed", st->device);
        return 0;
    }
    dev_set = st->device;
    return 1;
}

/* Queue copies of blocks ids[0..n) between the region and its mirror (same offsets),
 * as one batch call. */
static pd_status_t mirror_copy(ucx_state_t *st, const uint32_t *ids, size_t n, int to_device)
{
    void **dsts = malloc(n * sizeof(void *) + 1);
    const void **srcs = malloc(n * sizeof(void *) + 1);
    size_t *sizes = malloc(n * sizeof(size_t) + 1);
    pd_status_t ret = PD_ERR_NOMEM;

    if (dsts != NULL && srcs != NULL && sizes != NULL && use_device(st))
        ret = to_device ? kcuda_block_copy_batch(st->region.base, ids, st->mirror, ids, n,
                                                 st->region.block_bytes, dsts, srcs, sizes, st->stream)
                        : kcuda_block_copy_batch(st->mirror, ids, st->region.base, ids, n,
                                                 st->region.block_bytes, dsts, srcs, sizes, st->stream);
    free(dsts);
    free(srcs);
    free(sizes);
    return ret;
}

static void chunk_dec(ucx_chunk_t *c, long k, ucs_status_t s)
{
    ucx_batch_t *b = c->b;
    ucx_state_t *st = b->peer->st;

    if (s != UCS_OK) {
        int expect = PD_OK;
        atomic_compare_exchange_strong(&b->status, &expect, (int)ucs_to_pd(s));
    }
    if (atomic_fetch_sub(&c->pending, k) != k)
        return;
    if (atomic_load(&b->status) == PD_OK &&
        mirror_copy(st, b->local_ids + c->first, c->count, 1) != PD_OK) {
        int expect = PD_OK;
        atomic_compare_exchange_strong(&b->status, &expect, (int)PD_ERR_CUDA);
    }
    batch_dec(b, 1, UCS_OK);
}

static void get_chunk_cb(void *request, ucs_status_t status, void *user_data)
{
    ucx_chunk_t *c = user_data;

    atomic_fetch_sub(&c->b->peer->st->inflight, 1);
    ucp_request_free(request);
    chunk_dec(c, 1, status);
}
#endif

static void deliver_done(ucx_state_t *st)
{
    ucx_batch_t *list;

    pthread_mutex_lock(&st->mu);
    list = st->done;
    st->done = NULL;
    pthread_mutex_unlock(&st->mu);
    while (list != NULL) {
        ucx_batch_t *b = list;
        ucx_peer_t *p = b->peer;
        pd_status_t s = (pd_status_t)atomic_load(&b->status);

        list = b->next;
#ifdef PD_HAVE_CUDA
        /* staging: the chunks' copies were queued as they landed; wait for the tail */
        if (b->n > 0 && (!use_device(st) || cudaStreamSynchronize(st->stream) != cudaSuccess) &&
            s == PD_OK)
            s = PD_ERR_CUDA;
        free(b->local_ids);
        free(b->chunks);
#endif
        b->cb(b->arg, s);
        free(b);
        atomic_fetch_sub(&p->batches, 1);
    }
}

static void *progress_main(void *arg)
{
    ucx_state_t *st = arg;
    uint64_t busy_until = 0;

    while (!atomic_load(&st->stop)) {
        struct pollfd pfd = {st->efd, POLLIN, 0};
        unsigned n = 0;
        uint64_t now;

        while (ucp_worker_progress(st->worker) != 0)
            n++;
        deliver_done(st);
        now = pd_now_ns();
        if (n > 0 || atomic_load(&st->inflight) > 0)
            busy_until = now + 100000000u;
        if (now < busy_until) {
            /* a transfer is running, here or (emulated gets, shared-memory transports
             * without wakeup) served by us: keep driving it for a while */
            if (n == 0)
                sched_yield();
            continue;
        }
        if (ucp_worker_arm(st->worker) == UCS_ERR_BUSY)
            continue;
        (void)poll(&pfd, 1, 5);
    }
    deliver_done(st);
    return NULL;
}

static void read_boot_id(char out[BOOT_ID_LEN + 1])
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");

    memset(out, 0, BOOT_ID_LEN + 1);
    if (f != NULL) {
        if (fgets(out, BOOT_ID_LEN + 1, f) == NULL || strlen(out) != BOOT_ID_LEN)
            memset(out, 0, BOOT_ID_LEN + 1);
        fclose(f);
    }
}

/* ---- create / destroy ---- */
static pd_status_t ucx_create(const kvx_config_t *cfg, void **state_p)
{
    ucx_state_t *st;
    ucp_config_t *ucfg = NULL;
    ucp_params_t params;
    ucp_worker_params_t wparams;
    ucp_context_attr_t cattr;
    ucs_status_t s;

#ifdef PD_HAVE_CUDA
    size_t chunk_bytes = cfg->staging_chunk_bytes;
#else
    (void)cfg;
#endif
    /* UCX's malloc hooks make memory grow in long-running servers (vLLM sets the
     * same); the user's own setting wins */
    /* (libucm reads it when it is loaded; for a binary linked against UCX that is
     * before main, so the launcher should export it too: docs/kvxfer.md.  Writing
     * ucm_global_opts after load makes ucm_mmap recurse into itself.) */
    setenv("UCX_MEM_MMAP_HOOK_MODE", "none", 0);
    st = calloc(1, sizeof(*st));
    if (st == NULL)
        return PD_ERR_NOMEM;
    pthread_mutex_init(&st->mu, NULL);
    read_boot_id(st->boot_id);
#ifdef PD_HAVE_CUDA
    st->chunk_bytes = chunk_bytes;
#endif
    s = ucp_config_read(NULL, NULL, &ucfg);
    if (s != UCS_OK) {
        PD_LOG_ERR("kvx ucx: ucp_config_read: %s", ucs_status_string(s));
        goto err_free;
    }
    memset(&params, 0, sizeof(params));
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
    params.mt_workers_shared = 1;
    s = ucp_init(&params, ucfg, &st->ctx);
    ucp_config_release(ucfg);
    if (s != UCS_OK) {
        PD_LOG_ERR("kvx ucx: ucp_init: %s", ucs_status_string(s));
        goto err_free;
    }
    memset(&cattr, 0, sizeof(cattr));
    cattr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
    if (ucp_context_query(st->ctx, &cattr) == UCS_OK)
        st->cuda_direct = (cattr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
    memset(&wparams, 0, sizeof(wparams));
    wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wparams.thread_mode = UCS_THREAD_MODE_MULTI;
    s = ucp_worker_create(st->ctx, &wparams, &st->worker);
    if (s != UCS_OK) {
        PD_LOG_ERR("kvx ucx: ucp_worker_create: %s", ucs_status_string(s));
        goto err_cleanup_ctx;
    }
    s = ucp_worker_get_efd(st->worker, &st->efd);
    if (s != UCS_OK) {
        PD_LOG_ERR("kvx ucx: ucp_worker_get_efd: %s", ucs_status_string(s));
        goto err_destroy_worker;
    }
    if (pthread_create(&st->thread, NULL, progress_main, st) != 0) {
        s = UCS_ERR_NO_RESOURCE;
        goto err_destroy_worker;
    }
    st->thread_started = 1;
    PD_LOG_INFO("kvx ucx: worker ready (UCX_TLS=%s, cuda memory %s)",
                getenv("UCX_TLS") ? getenv("UCX_TLS") : "default",
                st->cuda_direct ? "direct" : "staged through host");
    *state_p = st;
    return PD_OK;

err_destroy_worker:
    ucp_worker_destroy(st->worker);
err_cleanup_ctx:
    ucp_cleanup(st->ctx);
err_free:
    pthread_mutex_destroy(&st->mu);
    free(st);
    return ucs_to_pd(s) == PD_OK ? PD_ERR_TRANSPORT : ucs_to_pd(s);
}

static void ucx_destroy(void *state)
{
    ucx_state_t *st = state;

    atomic_store(&st->stop, 1);
    if (st->thread_started) {
        ucp_worker_signal(st->worker);
        pthread_join(st->thread, NULL);
    }
#ifdef PD_HAVE_CUDA
    if (st->mirror != NULL && st->mirror_ucx)
        cudaHostUnregister(st->mirror); /* before UCX frees it below */
#endif
    if (st->memh != NULL)
        ucp_mem_unmap(st->ctx, st->memh);
#ifdef PD_HAVE_CUDA
    if (st->mirror != NULL && !st->mirror_ucx)
        cudaFreeHost(st->mirror);
    if (st->stream != NULL)
        cudaStreamDestroy(st->stream);
#endif
    ucp_worker_destroy(st->worker);
    ucp_cleanup(st->ctx);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

/* ---- region ---- */
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

#ifdef PD_HAVE_CUDA
/* The staging mirror allocated BY UCX (ucp_mem_map with UCP_MEM_MAP_ALLOCATE: a
 * System V or POSIX shared-memory segment when those transports are enabled), then
 * pinned for the copy engines with cudaHostRegister.  Shared-memory transports can
 * only serve gets from memory they allocated (or through cma, which a container or
 * ptrace_scope may forbid): with a cudaHostAlloc mirror a same-host read falls back
 * to emulated gets.  Any failure leaves st->mirror NULL (the caller uses cudaHostAlloc). */
static void mirror_alloc_ucx(ucx_state_t *st, size_t bytes)
{
    ucp_mem_map_params_t mp;
    ucp_mem_attr_t ma;
    ucp_mem_h memh = NULL;
    cudaError_t e;

    memset(&mp, 0, sizeof(mp));
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                    UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    mp.address = NULL;
    mp.length = bytes;
    mp.flags = UCP_MEM_MAP_ALLOCATE;
    if (ucp_mem_map(st->ctx, &mp, &memh) != UCS_OK)
        return;
    memset(&ma, 0, sizeof(ma));
    ma.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
    if (ucp_mem_query(memh, &ma) != UCS_OK || ma.address == NULL || ma.length < bytes) {
        ucp_mem_unmap(st->ctx, memh);
        return;
    }
    e = cudaHostRegister(ma.address, bytes, cudaHostRegisterPortable);
    if (e != cudaSuccess) {
        PD_LOG_INFO("kvx ucx: cudaHostRegister of the UCX-allocated mirror failed (%s); "
                    "cudaHostAlloc instead", cudaGetErrorString(e));
        (void)cudaGetLastError();
        ucp_mem_unmap(st->ctx, memh);
        return;
    }
    st->mirror = ma.address;
    st->mirror_ucx = 1;
    st->memh = memh;
    PD_LOG_INFO("kvx ucx: staging mirror of %zu bytes allocated by UCX and pinned", bytes);
}
#endif

static pd_status_t ucx_reg(void *state, const kvx_region_t *region, void *desc, size_t cap,
                           size_t *len_p)
{
    ucx_state_t *st = state;
    ucp_mem_map_params_t mp;
    void *rkey_buf = NULL;
    size_t rkey_len = 0, need;
    ucp_address_t *addr = NULL;
    size_t addr_len = 0;
    ucs_status_t s;
    uint8_t *o = desc;
    pd_status_t ret = PD_OK;
    int premapped = 0;

    st->region = *region;
    st->exposed = *region;
    if (region->mem_type == KVX_MEM_CUDA && !st->cuda_direct) {
#ifdef PD_HAVE_CUDA
        /* stage through a pinned host mirror of the region: the producer copies a
         * lease's blocks to it at lease start, the consumer copies from it after
         * its gets (documented limit: host memory of the region's size) */
        size_t bytes = (size_t)region->n_blocks * region->block_bytes;
        if (cudaGetDevice(&st->device) == cudaSuccess)
            mirror_alloc_ucx(st, bytes);
        premapped = st->mirror_ucx;
        if (st->mirror == NULL && cudaHostAlloc(&st->mirror, bytes, cudaHostAllocPortable) != cudaSuccess)
            st->mirror = NULL;
        if (st->mirror == NULL ||
            cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking) != cudaSuccess) {
            PD_LOG_ERR("kvx ucx: cannot allocate a %zu-byte pinned staging mirror", bytes);
            return PD_ERR_CUDA;
        }
        st->exposed.base = st->mirror;
        st->exposed.mem_type = KVX_MEM_HOST;
#else
        PD_LOG_ERR("kvx ucx: this UCX cannot register CUDA memory and the build has no CUDA "
                   "for host staging");
        return PD_ERR_UNSUPPORTED;
#endif
    }
    if (premapped)
        goto mapped; /* the mirror UCX allocated (and mapped) */
    memset(&mp, 0, sizeof(mp));
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = st->exposed.base;
    mp.length = (size_t)st->exposed.n_blocks * st->exposed.block_bytes;
    if (st->exposed.mem_type == KVX_MEM_CUDA) {
        mp.field_mask |= UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
        mp.memory_type = UCS_MEMORY_TYPE_CUDA;
    }
    s = ucp_mem_map(st->ctx, &mp, &st->memh);
    if (s != UCS_OK) {
        PD_LOG_ERR("kvx ucx: ucp_mem_map of %zu bytes: %s", mp.length, ucs_status_string(s));
        st->memh = NULL;
        return ucs_to_pd(s);
    }
mapped:
    s = ucp_rkey_pack(st->ctx, st->memh, &rkey_buf, &rkey_len);
    if (s != UCS_OK) {
        PD_LOG_ERR("kvx ucx: ucp_rkey_pack: %s", ucs_status_string(s));
        ret = ucs_to_pd(s);
        goto err_unmap;
    }
    s = ucp_worker_get_address(st->worker, &addr, &addr_len);
    if (s != UCS_OK) {
        PD_LOG_ERR("kvx ucx: ucp_worker_get_address: %s", ucs_status_string(s));
        ret = ucs_to_pd(s);
        goto err_rkey;
    }
    need = 4 + 8 + 4 + addr_len + 4 + rkey_len + TAIL_LEN;
    if (need > cap || addr_len > UINT32_MAX || rkey_len > UINT32_MAX) {
        PD_LOG_ERR("kvx ucx: descriptor of %zu bytes does not fit", need);
        ret = PD_ERR_LIMIT;
        goto err_addr;
    }
    put32(o, st->exposed.mem_type == KVX_MEM_CUDA ? DESC_MAGIC_CUDA : DESC_MAGIC);
    put64(o + 4, (uint64_t)(uintptr_t)st->exposed.base);
    put32(o + 12, (uint32_t)addr_len);
    memcpy(o + 16, addr, addr_len);
    put32(o + 16 + addr_len, (uint32_t)rkey_len);
    memcpy(o + 20 + addr_len, rkey_buf, rkey_len);
    memcpy(o + 20 + addr_len + rkey_len, st->boot_id, BOOT_ID_LEN); /* zeros if unknown */
#ifdef PD_HAVE_CUDA
    put32(o + 20 + addr_len + rkey_len + BOOT_ID_LEN, st->mirror_ucx ? TAIL_SHM_MIRROR : 0);
#else
    put32(o + 20 + addr_len + rkey_len + BOOT_ID_LEN, 0);
#endif
    *len_p = need;
    ucp_worker_release_address(st->worker, addr);
    ucp_rkey_buffer_release(rkey_buf);
    st->have_region = 1;
    return PD_OK;

err_addr:
    ucp_worker_release_address(st->worker, addr);
err_rkey:
    ucp_rkey_buffer_release(rkey_buf);
err_unmap:
#ifdef PD_HAVE_CUDA
    if (st->mirror_ucx) {
        cudaHostUnregister(st->mirror); /* the unmap below frees it */
        st->mirror = NULL;
        st->mirror_ucx = 0;
    }
#endif
    ucp_mem_unmap(st->ctx, st->memh);
    st->memh = NULL;
    return ret;
}

#ifdef PD_HAVE_CUDA
/* Producer side of staging: copy a lease's blocks to the host mirror before any
 * consumer may read them. */
static pd_status_t ucx_lease_export(void *state, const char *req_id, const uint32_t *ids, size_t n)
{
    ucx_state_t *st = state;

    (void)req_id;
    if (st->mirror == NULL || n == 0)
        return PD_OK;
    if (mirror_copy(st, ids, n, 0) != PD_OK)
        return PD_ERR_CUDA;
    return cudaStreamSynchronize(st->stream) == cudaSuccess ? PD_OK : PD_ERR_CUDA;
}
#endif

/* ---- peers ---- */
static void ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    ucx_peer_t *p = arg;

    (void)ep;
    atomic_store(&p->failed, 1);
    PD_LOG_WARN("kvx ucx: endpoint failed: %s", ucs_status_string(status));
}

/* One line naming the endpoint's lanes (transport/device and what each carries), from
 * ucp_ep_print_info: which transport UCX chose is the first question about a figure. */
static void ep_describe(ucp_ep_h ep, const char *host, int same_host)
{
    char *buf = NULL, line[768];
    size_t len = 0, used = 0;
    FILE *f = open_memstream(&buf, &len);

    if (f == NULL)
        return;
    ucp_ep_print_info(ep, f);
    fclose(f);
    line[0] = '\0';
    for (char *save = NULL, *l = strtok_r(buf, "\n", &save); l != NULL; l = strtok_r(NULL, "\n", &save)) {
        char *lane = strstr(l, "lane[");
        if (lane == NULL)
            continue;
        /* squeeze runs of blanks */
        for (char *c = lane; *c != '\0' && used + 2 < sizeof(line); c++) {
            if (*c == ' ' && (used == 0 || line[used - 1] == ' '))
                continue;
            line[used++] = *c;
        }
        if (used + 3 < sizeof(line)) {
            line[used++] = '|';
            line[used++] = ' ';
        }
        line[used] = '\0';
    }
    free(buf);
    PD_LOG_INFO("kvx ucx: endpoint to %s (%s): %s", host,
                same_host ? "same host, shm mirror, no UCX error handling" : "peer error handling", line);
    if (getenv("KVX_UCX_PRINT_EP") != NULL && strcmp(getenv("KVX_UCX_PRINT_EP"), "1") == 0)
        fprintf(stderr, "kvx ucx ep to %s (%s): %s\n", host,
                same_host ? "same host, shm mirror" : "error handling",
                line);
}

#ifdef PD_HAVE_CUDA
/* Same host, shared-memory mirror: map the producer's mirror through the rkey and pin
 * it for the copy engines (see the file comment).  Failure only means gets. */
static void direct_map(ucx_state_t *st, ucx_peer_t *p, const kvx_peer_info_t *info)
{
    size_t bytes;
    void *ptr = NULL;
    ucs_status_t s;
    cudaError_t e;

    if (getenv("KVX_UCX_DIRECT") != NULL && strcmp(getenv("KVX_UCX_DIRECT"), "0") == 0)
        return;
    if (pd_mul_size((size_t)info->n_blocks, (size_t)info->block_bytes, &bytes) != PD_OK || bytes == 0)
        return;
    s = ucp_rkey_ptr(p->rkey, p->remote_base, &ptr);
    if (s != UCS_OK || ptr == NULL) {
        PD_LOG_INFO("kvx ucx: the producer's mirror cannot be mapped here (%s): gets",
                    ucs_status_string(s));
        return;
    }
    if (!use_device(st))
        return;
    e = cudaHostRegister(ptr, bytes, cudaHostRegisterPortable);
    if (e != cudaSuccess) {
        PD_LOG_INFO("kvx ucx: cannot pin the producer's mapped mirror (%s): gets", cudaGetErrorString(e));
        (void)cudaGetLastError();
        return;
    }
    p->direct = ptr;
    PD_LOG_INFO("kvx ucx: reads from %s copy straight from its mapped mirror (%zu bytes)", info->host,
                bytes);
}

/* A read from a directly mapped mirror: one batch copy queued here, completed (after
 * the stream drains) by the progress thread. */
static pd_status_t direct_read(ucx_state_t *st, ucx_peer_t *p, ucx_batch_t *b, const kvx_read_t *rd)
{
    void **dsts = malloc(rd->n * sizeof(void *) + 1);
    const void **srcs = malloc(rd->n * sizeof(void *) + 1);
    size_t *sizes = malloc(rd->n * sizeof(size_t) + 1);
    pd_status_t ret = PD_ERR_NOMEM;

    b->n = rd->n; /* deliver_done waits for the stream */
    atomic_store(&b->pending, 1);
    atomic_fetch_add(&p->batches, 1);
    if (dsts != NULL && srcs != NULL && sizes != NULL)
        ret = use_device(st) ? kcuda_block_copy_batch(st->region.base, rd->local_ids, p->direct, rd->remote_ids,
                                                      rd->n, st->region.block_bytes, dsts, srcs, sizes,
                                                      st->stream)
                             : PD_ERR_CUDA;
    free(dsts);
    free(srcs);
    free(sizes);
    if (ret != PD_OK) {
        int expect = PD_OK;
        atomic_compare_exchange_strong(&b->status, &expect, (int)ret);
    }
    batch_dec(b, 1, UCS_OK);
    return PD_OK;
}
#endif

/* Close an endpoint nothing was posted on (bounded wait). */
static void ep_close_force(ucp_ep_h ep)
{
    ucp_request_param_t cp = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS, .flags = UCP_EP_CLOSE_FLAG_FORCE};
    ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &cp);

    if (UCS_PTR_IS_PTR(r)) {
        uint64_t end = pd_now_ns() + 5000000000ull;
        while (ucp_request_check_status(r) == UCS_INPROGRESS && pd_now_ns() < end)
            usleep(1000);
        ucp_request_free(r);
    }
}

static pd_status_t ucx_peer_connect(void *state, const kvx_peer_info_t *info, void **peer_p)
{
    ucx_state_t *st = state;
    const uint8_t *d = info->desc;
    uint32_t magic, addr_len, rkey_len;
    ucp_ep_params_t ep;
    ucx_peer_t *p;
    int same_host;
    ucs_status_t s;

    if (info->desc_len < 20)
        goto err_desc;
    memcpy(&magic, d, 4);
    memcpy(&addr_len, d + 12, 4);
    if ((magic != DESC_MAGIC && magic != DESC_MAGIC_CUDA) || addr_len == 0 ||
        (size_t)addr_len > info->desc_len - 20)
        goto err_desc;
    memcpy(&rkey_len, d + 16 + addr_len, 4);
    /* the tail after the rkey (older producers: none) */
    if (rkey_len == 0 || ((size_t)rkey_len != info->desc_len - 20 - addr_len &&
                          (size_t)rkey_len + TAIL_LEN != info->desc_len - 20 - addr_len))
        goto err_desc;
    same_host = 0;
    if ((size_t)rkey_len + TAIL_LEN == info->desc_len - 20 - addr_len) {
        uint32_t tflags;
        memcpy(&tflags, d + 20 + addr_len + rkey_len + BOOT_ID_LEN, 4);
        same_host = st->boot_id[0] != '\0' && (tflags & TAIL_SHM_MIRROR) &&
                    memcmp(d + 20 + addr_len + rkey_len, st->boot_id, BOOT_ID_LEN) == 0;
    }
    if (same_host && getenv("KVX_UCX_SAME_HOST_SHM") != NULL && strcmp(getenv("KVX_UCX_SAME_HOST_SHM"), "0") == 0)
        same_host = 0;
    if (magic == DESC_MAGIC_CUDA && !st->cuda_direct) {
        /* the producer exposes CUDA memory directly, which our UCX cannot read */
        PD_LOG_ERR("kvx ucx: peer %s exposes CUDA memory; this UCX has no CUDA transport",
                   info->engine_id);
        return PD_ERR_UNSUPPORTED;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return PD_ERR_NOMEM;
    p->st = st;
    memcpy(&p->remote_base, d + 4, 8);
    p->block_bytes = info->block_bytes;
    memset(&ep, 0, sizeof(ep));
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                    UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.address = (const ucp_address_t *)(d + 16);
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = ep_err_cb;
    ep.err_handler.arg = p;
    if (same_host) {
        /* shared memory: see the file comment.  Kept only when the producer's mirror
         * really maps here (so the segment, not a transport, serves the reads) */
        void *ptr = NULL;
        ep.field_mask &= ~(uint64_t)(UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER);
        s = ucp_ep_create(st->worker, &ep, &p->ep);
        if (s == UCS_OK) {
            s = ucp_ep_rkey_unpack(p->ep, d + 20 + addr_len, &p->rkey);
            if (s == UCS_OK && ucp_rkey_ptr(p->rkey, p->remote_base, &ptr) != UCS_OK) {
                ucp_rkey_destroy(p->rkey);
                p->rkey = NULL;
                s = UCS_ERR_UNSUPPORTED;
            }
            if (s != UCS_OK) {
                ep_close_force(p->ep);
                p->ep = NULL;
            }
        }
        if (s != UCS_OK) {
            PD_LOG_INFO("kvx ucx: the mirror of %s does not map here (%s): endpoint with error "
                        "handling", info->host, ucs_status_string(s));
            same_host = 0;
            ep.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
        }
    }
    if (!same_host) {
        s = ucp_ep_create(st->worker, &ep, &p->ep);
        if (s == UCS_ERR_UNREACHABLE) {
            /* shared-memory transports (sm, posix, cma) cannot detect peer failure; the
             * control plane's heartbeats and the transfer timeout cover it instead */
            PD_LOG_INFO("kvx ucx: transports to %s have no peer failure detection; relying on "
                        "heartbeats", info->host);
            ep.field_mask &= ~(uint64_t)(UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER);
            s = ucp_ep_create(st->worker, &ep, &p->ep);
        }
        if (s != UCS_OK) {
            PD_LOG_ERR("kvx ucx: ucp_ep_create to %s: %s", info->host, ucs_status_string(s));
            free(p);
            return ucs_to_pd(s);
        }
        s = ucp_ep_rkey_unpack(p->ep, d + 20 + addr_len, &p->rkey);
        if (s != UCS_OK) {
            PD_LOG_ERR("kvx ucx: ucp_ep_rkey_unpack: %s", ucs_status_string(s));
            ep_close_force(p->ep);
            free(p);
            return ucs_to_pd(s);
        }
    }
    ep_describe(p->ep, info->host, same_host);
#ifdef PD_HAVE_CUDA
    if (same_host && st->mirror != NULL)
        direct_map(st, p, info);
#endif
    *peer_p = p;
    return PD_OK;

err_desc:
    PD_LOG_ERR("kvx ucx: malformed descriptor from %s", info->engine_id);
    return PD_ERR_FORMAT;
}

static void ucx_peer_close(void *state, void *peer)
{
    ucx_peer_t *p = peer;
    ucp_request_param_t cp = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                              .flags = UCP_EP_CLOSE_FLAG_FORCE};
    uint64_t end = pd_now_ns() + 10000000000ull;
    ucs_status_ptr_t r;

    (void)state;
    /* force: outstanding gets complete (cancelled) now instead of waiting for a peer
     * that may be gone */
    r = ucp_ep_close_nbx(p->ep, &cp);
    if (UCS_PTR_IS_PTR(r)) {
        while (ucp_request_check_status(r) == UCS_INPROGRESS && pd_now_ns() < end)
            usleep(500);
        ucp_request_free(r);
    }
    while (atomic_load(&p->batches) > 0 && pd_now_ns() < end)
        usleep(500);
    if (atomic_load(&p->batches) > 0) {
        /* a completion can still arrive: leaking beats a use after free */
        PD_LOG_CRIT("kvx ucx: reads still outstanding after closing the endpoint");
        kvx_graveyard_add(p);
        return;
    }
#ifdef PD_HAVE_CUDA
    if (p->direct != NULL) {
        /* no copy from it is queued any more (batches 0): unpin before the rkey unmaps it */
        if (!use_device(p->st) || cudaHostUnregister(p->direct) != cudaSuccess)
            PD_LOG_WARN("kvx ucx: unpinning a producer's mapped mirror failed");
    }
#endif
    ucp_rkey_destroy(p->rkey);
    free(p);
}

#ifdef PD_HAVE_CUDA
/* Reads into the host mirror in chunks of staging_chunk_bytes; see ucx_chunk_t. */
static pd_status_t stage_read(ucx_state_t *st, ucx_peer_t *p, ucx_batch_t *b, const kvx_read_t *rd)
{
    size_t bytes = st->region.block_bytes;
    size_t per = PD_MAX((size_t)1, st->chunk_bytes / bytes);
    size_t n_chunks = (rd->n + per - 1) / per;
    ucp_request_param_t param;

    b->local_ids = malloc(rd->n * sizeof(uint32_t));
    b->chunks = calloc(n_chunks, sizeof(ucx_chunk_t));
    if (b->local_ids == NULL || b->chunks == NULL) {
        free(b->local_ids);
        free(b->chunks);
        free(b);
        return PD_ERR_NOMEM;
    }
    memcpy(b->local_ids, rd->local_ids, rd->n * sizeof(uint32_t));
    b->n = rd->n;
    atomic_store(&b->pending, (long)n_chunks + 1);
    atomic_fetch_add(&p->batches, 1);
    memset(&param, 0, sizeof(param));
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = get_chunk_cb;
    for (size_t c = 0; c < n_chunks; c++) {
        ucx_chunk_t *ch = &b->chunks[c];
        int failed = 0;

        ch->b = b;
        ch->first = c * per;
        ch->count = PD_MIN(per, rd->n - ch->first);
        atomic_store(&ch->pending, (long)ch->count + 1);
        param.user_data = ch;
        for (size_t i = ch->first; i < ch->first + ch->count; i++) {
            void *local = kvx_region_block(&st->exposed, rd->local_ids[i]);
            uint64_t raddr = p->remote_base + (uint64_t)rd->remote_ids[i] * p->block_bytes;
            ucs_status_ptr_t r;

            atomic_fetch_add(&st->inflight, 1);
            r = ucp_get_nbx(p->ep, local, bytes, raddr, p->rkey, &param);
            if (UCS_PTR_IS_PTR(r))
                continue;
            atomic_fetch_sub(&st->inflight, 1);
            if (UCS_PTR_STATUS(r) != UCS_OK) {
                PD_LOG_ERR("kvx ucx: ucp_get_nbx: %s", ucs_status_string(UCS_PTR_STATUS(r)));
                chunk_dec(ch, (long)(ch->first + ch->count - i), UCS_PTR_STATUS(r));
                failed = 1;
                break;
            }
            chunk_dec(ch, 1, UCS_OK);
        }
        chunk_dec(ch, 1, UCS_OK);
        if (failed) {
            /* chunks never started count as done (the batch status holds the error) */
            for (size_t rest = c + 1; rest < n_chunks; rest++)
                batch_dec(b, 1, UCS_OK);
            break;
        }
    }
    batch_dec(b, 1, UCS_OK);
    return PD_OK;
}
#endif

static pd_status_t ucx_read(void *state, void *peer, const kvx_read_t *rd, kvx_read_cb_t cb, void *arg)
{
    ucx_state_t *st = state;
    ucx_peer_t *p = peer;
    ucx_batch_t *b;
    ucp_request_param_t param;
    size_t bytes = st->region.block_bytes;

    if (!st->have_region || p->block_bytes != bytes)
        return PD_ERR_INVAL;
    if (atomic_load(&p->failed))
        return PD_ERR_CLOSED;
    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return PD_ERR_NOMEM;
    b->peer = p;
    b->cb = cb;
    b->arg = arg;
#ifdef PD_HAVE_CUDA
    if (st->mirror != NULL && rd->n > 0 && p->direct != NULL)
        return direct_read(st, p, b, rd);
    if (st->mirror != NULL && rd->n > 0)
        return stage_read(st, p, b, rd);
#endif
    atomic_store(&b->pending, (long)rd->n + 1);
    atomic_fetch_add(&p->batches, 1);
    memset(&param, 0, sizeof(param));
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = get_cb;
    param.user_data = b;
    for (size_t i = 0; i < rd->n; i++) {
        void *local = kvx_region_block(&st->exposed, rd->local_ids[i]);
        uint64_t raddr = p->remote_base + (uint64_t)rd->remote_ids[i] * p->block_bytes;
        ucs_status_ptr_t r;

        atomic_fetch_add(&st->inflight, 1);
        r = ucp_get_nbx(p->ep, local, bytes, raddr, p->rkey, &param);
        if (UCS_PTR_IS_PTR(r))
            continue;
        atomic_fetch_sub(&st->inflight, 1);
        if (UCS_PTR_STATUS(r) != UCS_OK) {
            PD_LOG_ERR("kvx ucx: ucp_get_nbx: %s", ucs_status_string(UCS_PTR_STATUS(r)));
            /* the gets not posted count as failed; those posted complete normally */
            batch_dec(b, (long)(rd->n - i), UCS_PTR_STATUS(r));
            break;
        }
        batch_dec(b, 1, UCS_OK);
    }
    batch_dec(b, 1, UCS_OK); /* the posting guard: completion goes to the progress thread */
    return PD_OK;
}

const kvx_conn_ops_t kvx_ucx_ops = {
    .abi_version = KVX_CONN_ABI_VERSION,
    .name = "UcxConnector",
    .create = ucx_create,
    .destroy = ucx_destroy,
    .reg = ucx_reg,
    .peer_connect = ucx_peer_connect,
    .peer_close = ucx_peer_close,
    .read = ucx_read,
#ifdef PD_HAVE_CUDA
    .lease_export = ucx_lease_export,
#endif
};
