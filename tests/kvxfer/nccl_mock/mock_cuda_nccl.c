/*
 * mock_cuda_nccl.c - a CPU stand-in for the CUDA runtime, NCCL and kcuda_xfer calls that
 * kvxfer/kvx_nccl.c makes (see cuda_runtime_api.h and nccl.h here), so its logic runs
 * in CI without a GPU.  Device memory is host memory; IPC handles carry the pointer (the
 * test's producer and consumer live in one process).  A stream is an in-order queue of
 * operations executed by whoever queries or synchronises it; an NCCL receive blocks the
 * queue until the peer's send (executed on the peer's stream) delivered a message, and a
 * receive of a different size than the send is an error, like NCCL's.  Aborting a
 * communicator drops its pending operations.  Everything is freed at exit.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_runtime_api.h"
#include "kcuda_xfer.h"
#include "nccl.h"
#include "pd_util.h"

typedef struct msg {
    struct msg *next;
    size_t n;
    unsigned char data[];
} msg_t;

typedef struct pair {
    struct pair *next;
    ncclUniqueId id;
    int joined[2];
    msg_t *inbox[2];            /* by receiving rank, FIFO */
    uint64_t pushed[2], taken[2]; /* messages queued for / received by each rank */
} pair_t;

struct ncclComm {
    struct ncclComm *next_all;
    pair_t *pair;
    int rank;
    atomic_int aborted;
    atomic_int error;
};

enum { OP_COPY, OP_SET, OP_BLOCKS, OP_SEND, OP_RECV };

typedef struct op {
    struct op *next;
    int kind;
    void *dst;
    const void *src;
    size_t n;
    int val;
    const uint32_t *dst_ids, *src_ids;
    uint64_t dst_n, src_n;
    size_t bb;
    int *err;
    struct ncclComm *comm;
} op_t;

struct CUstream_st {
    pthread_mutex_t mu;
    op_t *head, *tail;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pair_t *g_pairs;
static struct ncclComm *g_comms;
static atomic_int g_drop_sends;
static atomic_size_t g_sent, g_launches, g_live, g_copies, g_ipc_opens;
static atomic_uint g_next_id;

void mock_nccl_drop_sends(int on) { atomic_store(&g_drop_sends, on); }
size_t mock_nccl_messages_sent(void) { return atomic_load(&g_sent); }
size_t mock_cuda_kernel_launches(void) { return atomic_load(&g_launches); }
size_t mock_cuda_stream_copies(void) { return atomic_load(&g_copies); }
size_t mock_cuda_ipc_opens(void) { return atomic_load(&g_ipc_opens); }
size_t mock_cuda_bytes_live(void) { return atomic_load(&g_live); }

/* ---- CUDA runtime ---- */
static __thread int cur_dev;

cudaError_t cudaGetDevice(int *device) { *device = cur_dev; return cudaSuccess; }
cudaError_t cudaSetDevice(int device) { cur_dev = device; return cudaSuccess; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "mock error"; }
cudaError_t cudaDeviceCanAccessPeer(int *can, int d, int p) { (void)d; (void)p; *can = 1; return cudaSuccess; }

cudaError_t cudaMalloc(void **p, size_t n)
{
    size_t *h = malloc(n + 16);
    if (h == NULL)
        return cudaErrorMemoryAllocation;
    h[0] = n;
    atomic_fetch_add(&g_live, n);
    *p = (char *)h + 16;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (p != NULL) {
        size_t *h = (size_t *)((char *)p - 16);
        atomic_fetch_sub(&g_live, h[0]);
        free(h);
    }
    return cudaSuccess;
}

static atomic_long g_host_regs;
long mock_cuda_host_regs_live(void) { return atomic_load(&g_host_regs); }

cudaError_t cudaHostRegister(void *p, size_t n, unsigned int flags)
{
    (void)flags;
    if (p == NULL || n == 0)
        return cudaErrorInvalidValue;
    atomic_fetch_add(&g_host_regs, 1);
    return cudaSuccess;
}

cudaError_t cudaHostUnregister(void *p)
{
    if (p == NULL)
        return cudaErrorInvalidValue;
    atomic_fetch_sub(&g_host_regs, 1);
    return cudaSuccess;
}

cudaError_t cudaHostAlloc(void **p, size_t n, unsigned int flags)
{
    (void)flags;
    *p = malloc(n ? n : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFreeHost(void *p) { free(p); return cudaSuccess; }

cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t *h, void *p)
{
    memset(h, 0, sizeof(*h));
    memcpy(h->reserved, &p, sizeof(p));
    return cudaSuccess;
}

cudaError_t cudaIpcOpenMemHandle(void **p, cudaIpcMemHandle_t h, unsigned int flags)
{
    (void)flags;
    atomic_fetch_add(&g_ipc_opens, 1);
    memcpy(p, h.reserved, sizeof(*p));
    return *p ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t cudaIpcCloseMemHandle(void *p) { (void)p; return cudaSuccess; }

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *a, const void *p)
{
    memset(a, 0, sizeof(*a));
    a->device = 0;
    a->devicePointer = (void *)p;
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags)
{
    (void)flags;
    *s = calloc(1, sizeof(**s));
    if (*s == NULL)
        return cudaErrorMemoryAllocation;
    pthread_mutex_init(&(*s)->mu, NULL);
    return cudaSuccess;
}

static void push(cudaStream_t s, op_t *o)
{
    pthread_mutex_lock(&s->mu);
    if (s->tail)
        s->tail->next = o;
    else
        s->head = o;
    s->tail = o;
    pthread_mutex_unlock(&s->mu);
}

static op_t *new_op(int kind)
{
    op_t *o = calloc(1, sizeof(*o));
    if (o == NULL)
        abort(); /* test scaffolding */
    o->kind = kind;
    return o;
}

/* Run one op; 0 when it must wait (a receive with nothing delivered yet). */
static int exec_op(op_t *o)
{
    switch (o->kind) {
    case OP_COPY:
        memcpy(o->dst, o->src, o->n);
        return 1;
    case OP_SET:
        memset(o->dst, o->val, o->n);
        return 1;
    case OP_BLOCKS:
        for (size_t i = 0; i < o->n; i++) {
            uint64_t s = o->src_ids ? o->src_ids[i] : i, d = o->dst_ids ? o->dst_ids[i] : i;
            if (s >= o->src_n || d >= o->dst_n) {
                if (o->err)
                    *o->err |= KCUDA_XFER_ERR_RANGE;
                continue;
            }
            memcpy((char *)o->dst + d * o->bb, (const char *)o->src + s * o->bb, o->bb);
        }
        return 1;
    case OP_SEND: {
        /* like NCCL's (rendezvous) sends of large messages: the send completes only
         * once the peer received it, so a sender waits for its receiver */
        msg_t *m, **pp;
        int dst = 1 - o->comm->rank, done;
        if (atomic_load(&o->comm->aborted) || atomic_load(&g_drop_sends))
            return 1;
        if (o->val == 0) {
            m = malloc(sizeof(*m) + o->n);
            if (m == NULL)
                abort();
            m->next = NULL;
            m->n = o->n;
            memcpy(m->data, o->src, o->n);
            pthread_mutex_lock(&g_mu);
            for (pp = &o->comm->pair->inbox[dst]; *pp; pp = &(*pp)->next)
                ;
            *pp = m;
            o->dst_n = ++o->comm->pair->pushed[dst]; /* this message's number */
            pthread_mutex_unlock(&g_mu);
            o->val = 1;
            atomic_fetch_add(&g_sent, 1);
        }
        pthread_mutex_lock(&g_mu);
        done = o->comm->pair->taken[dst] >= o->dst_n;
        pthread_mutex_unlock(&g_mu);
        return done;
    }
    case OP_RECV: {
        msg_t *m;
        if (atomic_load(&o->comm->aborted))
            return 1; /* dropped */
        pthread_mutex_lock(&g_mu);
        m = o->comm->pair->inbox[o->comm->rank];
        if (m != NULL) {
            o->comm->pair->inbox[o->comm->rank] = m->next;
            o->comm->pair->taken[o->comm->rank]++;
        }
        pthread_mutex_unlock(&g_mu);
        if (m == NULL)
            return 0;
        if (m->n != o->n)
            atomic_store(&o->comm->error, ncclInvalidUsage);
        memcpy(o->dst, m->data, m->n < o->n ? m->n : o->n);
        free(m);
        return 1;
    }
    }
    return 1;
}

cudaError_t cudaStreamQuery(cudaStream_t s)
{
    cudaError_t r = cudaSuccess;

    pthread_mutex_lock(&s->mu);
    while (s->head != NULL) {
        op_t *o = s->head;
        if (!exec_op(o)) {
            r = cudaErrorNotReady;
            break;
        }
        s->head = o->next;
        if (s->head == NULL)
            s->tail = NULL;
        free(o);
    }
    pthread_mutex_unlock(&s->mu);
    return r;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    for (int i = 0; i < 300000; i++) { /* 30 s: a hang is an error, not a stuck test */
        cudaError_t r = cudaStreamQuery(s);
        if (r != cudaErrorNotReady)
            return r;
        usleep(100);
    }
    return cudaErrorUnknown;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    while (s->head != NULL) {
        op_t *o = s->head;
        s->head = o->next;
        free(o);
    }
    pthread_mutex_destroy(&s->mu);
    free(s);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t s)
{
    op_t *o = new_op(OP_COPY);
    (void)kind;
    atomic_fetch_add(&g_copies, 1);
    o->dst = dst;
    o->src = src;
    o->n = n;
    push(s, o);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t n, cudaStream_t s)
{
    op_t *o = new_op(OP_SET);
    o->dst = dst;
    o->val = value;
    o->n = n;
    push(s, o);
    return cudaSuccess;
}

/* ---- kcuda_xfer ---- */
pd_status_t kcuda_block_copy(void *dst, const uint32_t *dst_ids, uint64_t dst_n, const void *src,
                             const uint32_t *src_ids, uint64_t src_n, size_t n, size_t block_bytes,
                             int *err, kcuda_xfer_stream_t stream)
{
    op_t *o;

    if (n == 0)
        return PD_OK;
    if (block_bytes == 0 || dst == NULL || src == NULL)
        return PD_ERR_INVAL;
    o = new_op(OP_BLOCKS);
    o->dst = dst;
    o->src = src;
    o->dst_ids = dst_ids;
    o->src_ids = src_ids;
    o->dst_n = dst_n;
    o->src_n = src_n;
    o->n = n;
    o->bb = block_bytes;
    o->err = err;
    atomic_fetch_add(&g_launches, 1);
    push(stream, o);
    return PD_OK;
}

pd_status_t kcuda_block_copy_batch(void *dst, const uint32_t *dst_ids, const void *src,
                                   const uint32_t *src_ids, size_t n, size_t block_bytes, void **dsts,
                                   const void **srcs, size_t *sizes, kcuda_xfer_stream_t stream)
{
    for (size_t i = 0; i < n; i++) {
        dsts[i] = (char *)dst + (size_t)(dst_ids ? dst_ids[i] : i) * block_bytes;
        srcs[i] = (const char *)src + (size_t)(src_ids ? src_ids[i] : i) * block_bytes;
        sizes[i] = block_bytes;
        cudaMemcpyAsync(dsts[i], srcs[i], sizes[i], cudaMemcpyDefault, stream);
    }
    return PD_OK;
}

/* ---- NCCL ---- */
ncclResult_t ncclGetVersion(int *v) { *v = 0; return ncclSuccess; }
const char *ncclGetErrorString(ncclResult_t r) { return r == ncclSuccess ? "no error" : "mock nccl error"; }

ncclResult_t ncclGetUniqueId(ncclUniqueId *id)
{
    unsigned n = atomic_fetch_add(&g_next_id, 1) + 1;
    memset(id, 0, sizeof(*id));
    snprintf(id->internal, sizeof(id->internal), "mock-%d-%u", (int)getpid(), n);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t *config)
{
    struct ncclComm *c;
    pair_t *p;

    if (nranks != 2 || rank < 0 || rank > 1)
        return ncclInvalidArgument;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return ncclSystemError;
    pthread_mutex_lock(&g_mu);
    for (p = g_pairs; p != NULL; p = p->next)
        if (memcmp(&p->id, &id, sizeof(id)) == 0)
            break;
    if (p == NULL) {
        p = calloc(1, sizeof(*p));
        if (p == NULL)
            abort();
        p->id = id;
        p->next = g_pairs;
        g_pairs = p;
    }
    p->joined[rank] = 1;
    c->pair = p;
    c->rank = rank;
    c->next_all = g_comms;
    g_comms = c;
    pthread_mutex_unlock(&g_mu);
    *comm = c;
    return config != NULL && !config->blocking ? ncclInProgress : ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *state)
{
    int both;

    if (atomic_load(&c->aborted)) {
        *state = ncclInvalidUsage;
        return ncclSuccess;
    }
    pthread_mutex_lock(&g_mu);
    both = c->pair->joined[0] && c->pair->joined[1];
    pthread_mutex_unlock(&g_mu);
    *state = atomic_load(&c->error) ? (ncclResult_t)atomic_load(&c->error) : both ? ncclSuccess : ncclInProgress;
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t c)
{
    if (c != NULL)
        atomic_store(&c->aborted, 1); /* freed at exit: streams may still name it */
    return ncclSuccess;
}

ncclResult_t ncclSend(const void *buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream)
{
    op_t *o;
    (void)type;
    if (peer != 1 - comm->rank)
        return ncclInvalidArgument;
    o = new_op(OP_SEND);
    o->src = buf;
    o->n = count;
    o->comm = comm;
    push(stream, o);
    return ncclSuccess;
}

ncclResult_t ncclRecv(void *buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream)
{
    op_t *o;
    (void)type;
    if (peer != 1 - comm->rank)
        return ncclInvalidArgument;
    o = new_op(OP_RECV);
    o->dst = buf;
    o->n = count;
    o->comm = comm;
    push(stream, o);
    return ncclSuccess;
}

__attribute__((destructor)) static void mock_cleanup(void)
{
    while (g_pairs != NULL) {
        pair_t *p = g_pairs;
        g_pairs = p->next;
        for (int r = 0; r < 2; r++)
            while (p->inbox[r] != NULL) {
                msg_t *m = p->inbox[r];
                p->inbox[r] = m->next;
                free(m);
            }
        free(p);
    }
    while (g_comms != NULL) {
        struct ncclComm *c = g_comms;
        g_comms = c->next_all;
        free(c);
    }
}
