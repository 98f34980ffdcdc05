/*
 * kvx_ctx.c - the kvxfer context: connector selection, the ZeroMQ control plane
 * (producer side), the lease table, and the consumer's pull workers.
 *
 * Threads:
 *   - ctl thread (producers): owns the ROUTER socket; answers HELLO / ACQUIRE /
 *     HEARTBEAT / RELEASE / ABORT and reaps expired leases every poll tick.
 *   - pull workers (consumers): each owns its DEALER sockets and runs one pull at a
 *     time: handshake (cached peer), ACQUIRE, connector read, heartbeats, RELEASE.
 * Invariants:
 *   - a lease callback fires exactly once and always outside ctx->mu;
 *   - a pull callback fires exactly once, from a worker, after the connector's read
 *     completed (or was cancelled and completed): a failed pull leaves no transfer
 *     writing into the local blocks;
 *   - a read is reported good only when the producer confirmed, at RELEASE, that the
 *     lease was live for the whole read (validate after read);
 *   - wire input is decoded by kvx_msg_decode only; block ids are checked against the
 *     regions before any connector sees them.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <zmq.h>

#include "kvx_internal.h"
#include "kvx_msg.h"
#include "pd_log.h"
#include "pd_util.h"

#define LEASE_BUCKETS   1024
#define TOMBSTONES      4096
#define NONCES          8192
#define CTL_TICK_MS     20
#define PEER_SOCKS_MAX  64

/* ---- lease table ---- */
typedef struct lease {
    struct lease *next;
    char req_id[KVX_ID_MAX];
    uint32_t *ids;        /* as given (callback order) */
    uint32_t *sorted;     /* sorted copy for subset checks */
    size_t n;
    uint64_t ttl_ns;
    uint64_t deadline_ns;
    kvx_lease_cb_t cb;
    void *arg;
    kvx_lease_end_t why;  /* set when it ends */
    int ready;            /* 0 while kvx_lease_create exports it */
} lease_t;

typedef struct tomb {
    char req_id[KVX_ID_MAX];
    kvx_lease_end_t why;
} tomb_t;

/* ---- peers (consumer) ---- */
typedef struct peer {
    struct peer *next;
    char key[KVX_HOST_MAX + 16];   /* host:port */
    char host[KVX_HOST_MAX];
    char engine_id[KVX_ID_MAX];
    uint32_t n_blocks;
    uint64_t block_bytes;
    void *conn_peer;
    int refs;                      /* table reference + users */
    int dead;                      /* out of the table; closed by the last user */
} peer_t;

/* ---- pull jobs ---- */
typedef struct job {
    char host[KVX_HOST_MAX];
    int port;
    char remote_engine_id[KVX_ID_MAX];
    char remote_req_id[KVX_ID_MAX];
    char req_id[KVX_ID_MAX];
    size_t n;
    uint32_t *remote_ids;
    uint32_t *local_ids;
    kvx_pull_cb_t cb;
    void *arg;
} job_t;

/* Completion slot for one connector read; heap-allocated so a connector that never
 * completes (a bug) cannot make us free memory it will still write. */
typedef struct rdone {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    pd_status_t status;
} rdone_t;

typedef struct sock_ent {
    char endpoint[KVX_HOST_MAX + 32];
    void *sock;
} sock_ent_t;

typedef struct worker {
    struct kvx_ctx *ctx;
    pthread_t thread;
    sock_ent_t socks[PEER_SOCKS_MAX];
    size_t n_socks;
    uint64_t seq;
} worker_t;

struct kvx_ctx {
    kvx_config_t cfg;
    kvx_compat_t compat;
    char compat_hash[65];
    const kvx_conn_ops_t *ops;
    void *conn;
    void *dl;
    kvx_region_t region;
    int have_region;
    pd_buf_t desc;

    void *zctx;
    pthread_mutex_t mu;            /* leases, tombs, peers, stats, region */

    /* producer */
    void *router;
    int port;
    pthread_t ctl_thread;
    int ctl_started;
    atomic_int stop;
    lease_t *buckets[LEASE_BUCKETS];
    size_t n_leases;
    tomb_t *tombs;
    size_t tomb_next;
    uint64_t *nonces;
    size_t nonce_next;

    /* consumer */
    peer_t *peers;
    worker_t *workers;
    int n_workers;
    pthread_mutex_t qmu;
    pthread_cond_t qcv;
    job_t **queue;
    size_t q_cap, q_head, q_len;
    int q_closed;

    kvx_stats_t stats;
};

/* ---- small helpers ---- */
static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int id_ok(const char *s)
{
    size_t n;

    if (s == NULL)
        return 0;
    n = strlen(s);
    if (n == 0 || n >= KVX_ID_MAX)
        return 0;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 0;
    return 1;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void abs_deadline(struct timespec *ts, uint64_t ns_from_now)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ns_from_now / 1000000000ull);
    ts->tv_nsec += (long)(ns_from_now % 1000000000ull);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void endpoint_of(const char *host, int port, char *out, size_t len)
{
    if (strchr(host, ':') != NULL)
        snprintf(out, len, "tcp://[%s]:%d", host, port);
    else
        snprintf(out, len, "tcp://%s:%d", host, port);
}

static void *graveyard_g[1024];
static atomic_size_t graveyard_n_g;

void kvx_graveyard_add(void *p)
{
    size_t i = atomic_fetch_add(&graveyard_n_g, 1);
    if (i < PD_ARRAY_SIZE(graveyard_g))
        graveyard_g[i] = p;
}

void kvx_hex_encode(const char *s, char *out, size_t out_len)
{
    static const char hx[] = "0123456789abcdef";
    size_t o = 0;

    for (; *s && o + 2 < out_len; s++) {
        out[o++] = hx[(unsigned char)*s >> 4];
        out[o++] = hx[(unsigned char)*s & 15];
    }
    if (out_len)
        out[o] = '\0';
}

void kvx_compat_hash(const kvx_compat_t *c, char out[65])
{
    char text[512];
    uint8_t d[32];
    int n;

    n = snprintf(text, sizeof(text), "kvx=%u;model=%s;dtype=%s;layers=%u;kv_heads=%u;"
                 "head_dim=%u;block_size=%u;layout=%u", KVX_PROTO_VERSION, c->model, c->dtype,
                 c->n_layers, c->n_kv_heads, c->head_dim, c->block_size, c->layout_id);
    if (n < 0 || (size_t)n >= sizeof(text))
        n = (int)sizeof(text) - 1;
    if (gnutls_hash_fast(GNUTLS_DIG_SHA256, text, (size_t)n, d) != 0)
        memset(d, 0, sizeof(d));
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

const char *kvx_lease_end_name(kvx_lease_end_t why)
{
    switch (why) {
    case KVX_LEASE_RELEASED: return "released";
    case KVX_LEASE_EXPIRED:  return "expired";
    default:                 return "aborted";
    }
}

const kvx_conn_ops_t *kvx_conn_ops_builtin(kvx_conn_kind_t kind)
{
    switch (kind) {
#ifdef KVX_HAVE_UCX
    case KVX_CONN_UCX: return &kvx_ucx_ops;
#endif
#ifdef KVX_HAVE_LIBFABRIC
    case KVX_CONN_LIBFABRIC: return &kvx_fabric_ops;
#endif
#ifdef KVX_HAVE_NCCL
    case KVX_CONN_NCCL: return &kvx_nccl_ops;
#endif
    case KVX_CONN_SHARED_STORAGE: return &kvx_storage_ops;
    default: return NULL;
    }
}

/* ---- lease table (ctx->mu held) ---- */
static lease_t **lease_slot(kvx_ctx_t *ctx, const char *req_id)
{
    lease_t **pp = &ctx->buckets[hash_str(req_id) % LEASE_BUCKETS];
    while (*pp != NULL && strcmp((*pp)->req_id, req_id) != 0)
        pp = &(*pp)->next;
    return pp;
}

static void tomb_add(kvx_ctx_t *ctx, const char *req_id, kvx_lease_end_t why)
{
    tomb_t *t = &ctx->tombs[ctx->tomb_next++ % TOMBSTONES];
    snprintf(t->req_id, sizeof(t->req_id), "%s", req_id);
    t->why = why;
}

static const tomb_t *tomb_find(kvx_ctx_t *ctx, const char *req_id)
{
    size_t n = PD_MIN(ctx->tomb_next, (size_t)TOMBSTONES);
    /* newest first: an id reused after a release answers for its latest life */
    for (size_t i = 0; i < n; i++) {
        const tomb_t *t = &ctx->tombs[(ctx->tomb_next - 1 - i) % TOMBSTONES];
        if (strcmp(t->req_id, req_id) == 0)
            return t;
    }
    return NULL;
}

/* Unlink a lease and account for it; the caller fires the callback outside mu. */
static lease_t *lease_end_locked(kvx_ctx_t *ctx, lease_t **pp, kvx_lease_end_t why)
{
    lease_t *l = *pp;

    *pp = l->next;
    l->next = NULL;
    l->why = why;
    ctx->n_leases--;
    ctx->stats.blocks_held -= l->n;
    if (why == KVX_LEASE_RELEASED)
        ctx->stats.leases_released++;
    else if (why == KVX_LEASE_EXPIRED)
        ctx->stats.lease_expiries++;
    else
        ctx->stats.leases_aborted++;
    tomb_add(ctx, l->req_id, why);
    return l;
}

static void lease_finish(kvx_ctx_t *ctx, lease_t *l)
{
    if (ctx->ops->lease_unexport != NULL)
        ctx->ops->lease_unexport(ctx->conn, l->req_id);
    if (l->why != KVX_LEASE_RELEASED)
        PD_LOG_REQ(INFO, l->req_id, "kvx: lease %s (%zu blocks freed)",
                   kvx_lease_end_name(l->why), l->n);
    l->cb(l->arg, l->req_id, l->ids, l->n, l->why);
    free(l->ids);
    free(l->sorted);
    free(l);
}

pd_status_t kvx_lease_create(kvx_ctx_t *ctx, const char *req_id, const uint32_t *block_ids,
                             size_t n_blocks, double ttl_s, kvx_lease_cb_t cb, void *arg)
{
    lease_t *l, **pp;
    pd_status_t st;

    if (ctx == NULL || !id_ok(req_id) || cb == NULL || n_blocks > KVX_MAX_BLOCKS_PER_REQ ||
        (n_blocks > 0 && block_ids == NULL)) {
        PD_LOG_ERR("kvx: lease_create: invalid arguments");
        return PD_ERR_INVAL;
    }
    if (!ctx->have_region) {
        PD_LOG_REQ(ERR, req_id, "kvx: lease_create before a region was registered");
        return PD_ERR_INVAL;
    }
    for (size_t i = 0; i < n_blocks; i++)
        if (block_ids[i] >= ctx->region.n_blocks) {
            PD_LOG_REQ(ERR, req_id, "kvx: lease block id %u outside the region (%u blocks)",
                       block_ids[i], ctx->region.n_blocks);
            return PD_ERR_INVAL;
        }
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        return PD_ERR_NOMEM;
    snprintf(l->req_id, sizeof(l->req_id), "%s", req_id);
    l->n = n_blocks;
    if (n_blocks) {
        l->ids = malloc(n_blocks * sizeof(uint32_t));
        l->sorted = malloc(n_blocks * sizeof(uint32_t));
        if (l->ids == NULL || l->sorted == NULL) {
            st = PD_ERR_NOMEM;
            goto err_free;
        }
        memcpy(l->ids, block_ids, n_blocks * sizeof(uint32_t));
        memcpy(l->sorted, block_ids, n_blocks * sizeof(uint32_t));
        qsort(l->sorted, n_blocks, sizeof(uint32_t), cmp_u32);
    }
    l->ttl_ns = (uint64_t)((ttl_s > 0 ? ttl_s : ctx->cfg.lease_ttl_s) * 1e9);
    l->cb = cb;
    l->arg = arg;
    /* claim the id first (not yet ready: invisible to consumers and the reaper) so a
     * duplicate can never overwrite a live lease's exported blocks */
    pthread_mutex_lock(&ctx->mu);
    pp = lease_slot(ctx, req_id);
    if (*pp != NULL) {
        pthread_mutex_unlock(&ctx->mu);
        PD_LOG_REQ(ERR, req_id, "kvx: a lease with this request id is already live");
        st = PD_ERR_EXISTS;
        goto err_free;
    }
    *pp = l;
    pthread_mutex_unlock(&ctx->mu);
    st = ctx->ops->lease_export != NULL
             ? ctx->ops->lease_export(ctx->conn, req_id, block_ids, n_blocks) : PD_OK;
    pthread_mutex_lock(&ctx->mu);
    pp = lease_slot(ctx, req_id);
    if (st != PD_OK) {
        *pp = l->next; /* only we touch an unready lease */
        pthread_mutex_unlock(&ctx->mu);
        goto err_free;
    }
    l->deadline_ns = pd_now_ns() + l->ttl_ns;
    l->ready = 1;
    ctx->n_leases++;
    ctx->stats.leases_created++;
    ctx->stats.blocks_held += n_blocks;
    pthread_mutex_unlock(&ctx->mu);
    return PD_OK;

err_free:
    free(l->ids);
    free(l->sorted);
    free(l);
    return st;
}

pd_status_t kvx_lease_abort(kvx_ctx_t *ctx, const char *req_id)
{
    lease_t **pp, *l = NULL;

    if (ctx == NULL || !id_ok(req_id))
        return PD_ERR_INVAL;
    pthread_mutex_lock(&ctx->mu);
    pp = lease_slot(ctx, req_id);
    if (*pp != NULL && (*pp)->ready)
        l = lease_end_locked(ctx, pp, KVX_LEASE_ABORTED);
    pthread_mutex_unlock(&ctx->mu);
    if (l == NULL)
        return PD_ERR_NOT_FOUND;
    lease_finish(ctx, l);
    return PD_OK;
}

size_t kvx_lease_count(kvx_ctx_t *ctx)
{
    size_t n;
    pthread_mutex_lock(&ctx->mu);
    n = ctx->n_leases;
    pthread_mutex_unlock(&ctx->mu);
    return n;
}

/* End every lease past its deadline; callbacks outside the lock. */
static void reap_expired(kvx_ctx_t *ctx)
{
    lease_t *ended = NULL;
    uint64_t now = pd_now_ns();

    pthread_mutex_lock(&ctx->mu);
    if (ctx->n_leases) {
        for (size_t b = 0; b < LEASE_BUCKETS; b++) {
            lease_t **pp = &ctx->buckets[b];
            while (*pp != NULL) {
                if ((*pp)->ready && (*pp)->deadline_ns <= now) {
                    lease_t *l = lease_end_locked(ctx, pp, KVX_LEASE_EXPIRED);
                    l->next = ended;
                    ended = l;
                } else {
                    pp = &(*pp)->next;
                }
            }
        }
    }
    pthread_mutex_unlock(&ctx->mu);
    while (ended != NULL) {
        lease_t *next = ended->next;
        lease_finish(ctx, ended);
        ended = next;
    }
}

/* ---- control plane: producer side ---- */
static int nonce_seen(kvx_ctx_t *ctx, uint64_t nonce)
{
    size_t n = PD_MIN(ctx->nonce_next, (size_t)NONCES);
    for (size_t i = 0; i < n; i++)
        if (ctx->nonces[i] == nonce)
            return 1;
    ctx->nonces[ctx->nonce_next++ % NONCES] = nonce;
    return 0;
}

static void reply_err(kvx_msg_t *rep, pd_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void reply_err(kvx_msg_t *rep, pd_status_t st, const char *fmt, ...)
{
    va_list ap;

    rep->type = KVX_MSG_ERROR;
    rep->status = st;
    va_start(ap, fmt);
    vsnprintf(rep->message, sizeof(rep->message), fmt, ap);
    va_end(ap);
}

/* Name the first field that differs (the hash only tells that something does). */
static int compat_diff(const kvx_compat_t *a, uint32_t a_proto, const kvx_compat_t *b,
                       uint32_t b_proto, char *out, size_t len)
{
#define DIFF_U(f)                                                                         \
    if (a->f != b->f) {                                                                    \
        snprintf(out, len, "incompatible peer: " #f " %u here, %u there", a->f, b->f);     \
        return 1;                                                                          \
    }
    if (a_proto != b_proto) {
        snprintf(out, len, "incompatible peer: protocol version %u here, %u there", a_proto, b_proto);
        return 1;
    }
    if (strcmp(a->model, b->model) != 0) {
        snprintf(out, len, "incompatible peer: model \"%.60s\" here, \"%.60s\" there", a->model, b->model);
        return 1;
    }
    if (strcmp(a->dtype, b->dtype) != 0) {
        snprintf(out, len, "incompatible peer: dtype %s here, %s there", a->dtype, b->dtype);
        return 1;
    }
    DIFF_U(n_layers)
    DIFF_U(n_kv_heads)
    DIFF_U(head_dim)
    DIFF_U(block_size)
    DIFF_U(layout_id)
#undef DIFF_U
    return 0;
}

static void handle_msg(kvx_ctx_t *ctx, const kvx_msg_t *req, kvx_msg_t *rep)
{
    lease_t **pp, *ended = NULL;
    char why[KVX_MSG_MSG_MAX];

    rep->seq = req->seq;
    switch (req->type) {
    case KVX_MSG_HELLO: {
        char want[65];
        int diff;

        kvx_compat_hash(&req->compat, want);
        why[0] = '\0';
        diff = compat_diff(&ctx->compat, KVX_PROTO_VERSION, &req->compat, req->proto_version,
                           why, sizeof(why));
        if (diff || strcmp(want, req->compat_hash) != 0) {
            if (!diff)
                snprintf(why, sizeof(why), "incompatible peer: compatibility hash differs");
            PD_LOG_WARN("kvx: handshake from engine %s refused: %s", req->engine_id, why);
            pthread_mutex_lock(&ctx->mu);
            ctx->stats.handshakes_refused++;
            pthread_mutex_unlock(&ctx->mu);
            reply_err(rep, PD_ERR_MISMATCH, "%s", why);
            return;
        }
        pthread_mutex_lock(&ctx->mu);
        if (!ctx->have_region) {
            pthread_mutex_unlock(&ctx->mu);
            reply_err(rep, PD_ERR_AGAIN, "producer has no registered region yet");
            return;
        }
        rep->type = KVX_MSG_HELLO_OK;
        snprintf(rep->engine_id, sizeof(rep->engine_id), "%s", ctx->cfg.engine_id);
        snprintf(rep->connector, sizeof(rep->connector), "%s", ctx->ops->name);
        rep->n_blocks = ctx->region.n_blocks;
        rep->block_bytes = ctx->region.block_bytes;
        rep->mem_type = ctx->region.mem_type;
        rep->desc = (const uint8_t *)ctx->desc.data;
        rep->desc_len = (uint32_t)ctx->desc.len;
        pthread_mutex_unlock(&ctx->mu);
        PD_LOG_DEBUG("kvx: handshake with engine %s accepted", req->engine_id);
        return;
    }
    case KVX_MSG_SERVE:
        if (ctx->ops->serve == NULL) {
            reply_err(rep, PD_ERR_UNSUPPORTED, "%s does not serve sends", ctx->ops->name);
            return;
        }
        break;
    case KVX_MSG_ACQUIRE:
    case KVX_MSG_HEARTBEAT:
    case KVX_MSG_RELEASE:
    case KVX_MSG_ABORT:
        break;
    default:
        reply_err(rep, PD_ERR_INVAL, "unexpected message %s", kvx_msg_type_name(req->type));
        return;
    }

    pthread_mutex_lock(&ctx->mu);
    pp = lease_slot(ctx, req->req_id);
    if (*pp == NULL || !(*pp)->ready) {
        const tomb_t *t = tomb_find(ctx, req->req_id);
        if (req->type == KVX_MSG_ACQUIRE || req->type == KVX_MSG_SERVE)
            ctx->stats.reads_refused++;
        pthread_mutex_unlock(&ctx->mu);
        if (t != NULL)
            reply_err(rep, PD_ERR_EXPIRED, "lease of %.64s already %s", req->req_id,
                      kvx_lease_end_name(t->why));
        else
            reply_err(rep, PD_ERR_NOT_FOUND, "no lease for request %.64s", req->req_id);
        PD_LOG_REQ(INFO, req->req_id, "kvx: %s refused: %s", kvx_msg_type_name(req->type),
                   rep->message);
        return;
    }
    switch (req->type) {
    case KVX_MSG_ACQUIRE:
    case KVX_MSG_SERVE:
        for (uint32_t i = 0; i < req->n_ids; i++) {
            if (bsearch(&req->ids[i], (*pp)->sorted, (*pp)->n, sizeof(uint32_t), cmp_u32) == NULL) {
                ctx->stats.reads_refused++;
                pthread_mutex_unlock(&ctx->mu);
                reply_err(rep, PD_ERR_RANGE, "block %u is not held for request %.64s",
                          req->ids[i], req->req_id);
                PD_LOG_REQ(WARN, req->req_id, "kvx: acquire refused: %s", rep->message);
                return;
            }
        }
        /* an acquire renews like a heartbeat */
        __attribute__((fallthrough));
    case KVX_MSG_HEARTBEAT:
        (*pp)->deadline_ns = pd_now_ns() + (*pp)->ttl_ns;
        rep->type = KVX_MSG_OK;
        rep->value = (*pp)->ttl_ns / 1000000u;
        if (req->type == KVX_MSG_SERVE) {
            /* ids were checked against the lease (hence the region) above; the send
             * itself runs outside the lock.  A lease that ends meanwhile is caught by
             * RELEASE, as for one-sided reads. */
            pd_status_t sst;
            pthread_mutex_unlock(&ctx->mu);
            sst = ctx->ops->serve(ctx->conn, req->desc, req->desc_len, req->ids, req->n_ids);
            if (sst != PD_OK)
                reply_err(rep, sst, "%s could not start sending (%s)", ctx->ops->name,
                          pd_status_str(sst));
            return;
        }
        break;
    case KVX_MSG_RELEASE:
        ended = lease_end_locked(ctx, pp, KVX_LEASE_RELEASED);
        rep->type = KVX_MSG_OK;
        break;
    default: /* ABORT */
        ended = lease_end_locked(ctx, pp, KVX_LEASE_ABORTED);
        rep->type = KVX_MSG_OK;
        break;
    }
    pthread_mutex_unlock(&ctx->mu);
    if (ended != NULL)
        lease_finish(ctx, ended);
}

/* One frame from a peer identity: decode, check, answer. */
static void serve_frame(kvx_ctx_t *ctx, zmq_msg_t *ident, zmq_msg_t *frame)
{
    kvx_msg_t req, rep;
    pd_buf_t out = {0};
    pd_status_t st;
    const char *secret = ctx->cfg.auth_secret;

    memset(&rep, 0, sizeof(rep));
    st = kvx_msg_decode(zmq_msg_data(frame), zmq_msg_size(frame), secret, &req);
    if (st == PD_OK && secret != NULL) {
        pthread_mutex_lock(&ctx->mu);
        if (nonce_seen(ctx, req.nonce))
            st = PD_ERR_PERM;
        pthread_mutex_unlock(&ctx->mu);
    }
    if (st == PD_ERR_PERM) {
        pthread_mutex_lock(&ctx->mu);
        ctx->stats.auth_failures++;
        pthread_mutex_unlock(&ctx->mu);
        PD_LOG_WARN("kvx: control message failed authentication (dropped)");
        rep.seq = req.seq;
        reply_err(&rep, PD_ERR_PERM, "authentication failed");
        secret = NULL; /* we cannot prove anything to a peer that does not share it */
    } else if (st == PD_ERR_MISMATCH) {
        rep.seq = req.seq;
        reply_err(&rep, PD_ERR_MISMATCH, "incompatible peer: protocol version (want %u)",
                  KVX_PROTO_VERSION);
    } else if (st != PD_OK) {
        PD_LOG_WARN("kvx: malformed control message (%zu bytes) dropped", zmq_msg_size(frame));
        kvx_msg_cleanup(&req);
        return;
    } else {
        handle_msg(ctx, &req, &rep);
    }
    if (kvx_msg_encode(&rep, secret, &out) == PD_OK) {
        /* ROUTER drops replies to vanished peers; DONTWAIT keeps a full peer from
         * stalling the control thread (the peer times out and retries) */
        if (zmq_send(ctx->router, zmq_msg_data(ident), zmq_msg_size(ident),
                     ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
            (void)zmq_send(ctx->router, out.data, out.len, ZMQ_DONTWAIT);
    }
    pd_buf_cleanup(&out);
    kvx_msg_cleanup(&req);
}

static void *ctl_main(void *arg)
{
    kvx_ctx_t *ctx = arg;

    while (!atomic_load(&ctx->stop)) {
        zmq_pollitem_t it = {ctx->router, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, CTL_TICK_MS);

        /* bounded batch per tick so expiry keeps running under a flood */
        for (int k = 0; rc > 0 && k < 256; k++) {
            zmq_msg_t ident, frame;
            int more;
            size_t more_len = sizeof(more);

            zmq_msg_init(&ident);
            if (zmq_msg_recv(&ident, ctx->router, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&ident);
                break;
            }
            zmq_msg_init(&frame);
            if (!zmq_msg_more(&ident) || zmq_msg_recv(&frame, ctx->router, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&frame);
                zmq_msg_close(&ident);
                continue;
            }
            more = zmq_msg_more(&frame);
            if (more) {
                /* not our format: drain the rest of the multipart message */
                zmq_msg_t junk;
                while (more) {
                    zmq_msg_init(&junk);
                    if (zmq_msg_recv(&junk, ctx->router, ZMQ_DONTWAIT) < 0) {
                        zmq_msg_close(&junk);
                        break;
                    }
                    more = zmq_msg_more(&junk);
                    zmq_msg_close(&junk);
                }
            } else {
                serve_frame(ctx, &ident, &frame);
            }
            (void)more_len;
            zmq_msg_close(&frame);
            zmq_msg_close(&ident);
        }
        reap_expired(ctx);
    }
    return NULL;
}

static pd_status_t ctl_start(kvx_ctx_t *ctx)
{
    char ep[KVX_HOST_MAX + 32], last[KVX_HOST_MAX + 32];
    size_t last_len = sizeof(last);
    int hwm = 1000, linger = 0, v6, maxmsg = KVX_MSG_MAX_BYTES + 64;
    int64_t maxmsg64 = maxmsg;
    const char *colon;

    ctx->router = zmq_socket(ctx->zctx, ZMQ_ROUTER);
    if (ctx->router == NULL) {
        PD_LOG_ERR("kvx: zmq_socket: %s", zmq_strerror(zmq_errno()));
        return PD_ERR_IO;
    }
    v6 = strchr(ctx->cfg.kv_ip, ':') != NULL;
    zmq_setsockopt(ctx->router, ZMQ_RCVHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(ctx->router, ZMQ_SNDHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(ctx->router, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(ctx->router, ZMQ_MAXMSGSIZE, &maxmsg64, sizeof(maxmsg64));
    zmq_setsockopt(ctx->router, ZMQ_IPV6, &v6, sizeof(v6));
    if (ctx->cfg.kv_port == 0)
        snprintf(ep, sizeof(ep), v6 ? "tcp://[%s]:*" : "tcp://%s:*", ctx->cfg.kv_ip);
    else
        endpoint_of(ctx->cfg.kv_ip, ctx->cfg.kv_port, ep, sizeof(ep));
    if (zmq_bind(ctx->router, ep) != 0) {
        PD_LOG_ERR("kvx: cannot listen on %s: %s", ep, zmq_strerror(zmq_errno()));
        zmq_close(ctx->router);
        ctx->router = NULL;
        return PD_ERR_IO;
    }
    if (zmq_getsockopt(ctx->router, ZMQ_LAST_ENDPOINT, last, &last_len) == 0 &&
        (colon = strrchr(last, ':')) != NULL)
        ctx->port = atoi(colon + 1);
    else
        ctx->port = ctx->cfg.kv_port;
    if (pthread_create(&ctx->ctl_thread, NULL, ctl_main, ctx) != 0) {
        zmq_close(ctx->router);
        ctx->router = NULL;
        return PD_ERR_INTERNAL;
    }
    ctx->ctl_started = 1;
    PD_LOG_INFO("kvx: control plane listening on %s:%d (%s, auth %s)", ctx->cfg.kv_ip, ctx->port,
                ctx->ops->name, ctx->cfg.auth_secret ? "on" : "off");
    return PD_OK;
}

/* ---- control plane: consumer side (one worker's sockets) ---- */
static void *worker_sock(worker_t *w, const char *host, int port)
{
    char ep[KVX_HOST_MAX + 32];
    int linger = 0, one = 1, v6;
    int64_t maxmsg = KVX_MSG_MAX_BYTES + 64;
    void *s;

    endpoint_of(host, port, ep, sizeof(ep));
    for (size_t i = 0; i < w->n_socks; i++)
        if (strcmp(w->socks[i].endpoint, ep) == 0)
            return w->socks[i].sock;
    if (w->n_socks == PEER_SOCKS_MAX) {
        /* evict the oldest: sockets are cheap to recreate */
        zmq_close(w->socks[0].sock);
        memmove(&w->socks[0], &w->socks[1], (PEER_SOCKS_MAX - 1) * sizeof(sock_ent_t));
        w->n_socks--;
    }
    s = zmq_socket(w->ctx->zctx, ZMQ_DEALER);
    if (s == NULL)
        return NULL;
    v6 = strchr(host, ':') != NULL;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(s, ZMQ_IMMEDIATE, &one, sizeof(one));
    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
    zmq_setsockopt(s, ZMQ_IPV6, &v6, sizeof(v6));
    if (zmq_connect(s, ep) != 0) {
        PD_LOG_ERR("kvx: cannot connect to %s: %s", ep, zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    snprintf(w->socks[w->n_socks].endpoint, sizeof(w->socks[0].endpoint), "%s", ep);
    w->socks[w->n_socks++].sock = s;
    return s;
}

/* Drop a socket after a timeout so stale replies cannot pile up in it. */
static void worker_sock_drop(worker_t *w, const char *host, int port)
{
    char ep[KVX_HOST_MAX + 32];

    endpoint_of(host, port, ep, sizeof(ep));
    for (size_t i = 0; i < w->n_socks; i++)
        if (strcmp(w->socks[i].endpoint, ep) == 0) {
            zmq_close(w->socks[i].sock);
            w->socks[i] = w->socks[--w->n_socks];
            return;
        }
}

/* One request/reply with a deadline.  On PD_OK *rep holds an OK/HELLO_OK reply; an
 * ERROR reply becomes its status with its message in msg. */
static pd_status_t ctl_call(worker_t *w, const char *host, int port, kvx_msg_t *req,
                            kvx_msg_t *rep, char *msg, size_t msg_len)
{
    kvx_ctx_t *ctx = w->ctx;
    const char *secret = ctx->cfg.auth_secret;
    uint64_t deadline = pd_now_ns() + (uint64_t)(ctx->cfg.control_timeout_s * 1e9);
    pd_buf_t out = {0};
    pd_status_t st;
    void *s = worker_sock(w, host, port);

    memset(rep, 0, sizeof(*rep));
    if (s == NULL) {
        snprintf(msg, msg_len, "cannot open a control socket to %s:%d", host, port);
        return PD_ERR_IO;
    }
    req->seq = ++w->seq;
    if ((st = kvx_msg_encode(req, secret, &out)) != PD_OK) {
        snprintf(msg, msg_len, "cannot encode %s", kvx_msg_type_name(req->type));
        return st;
    }
    for (;;) {
        zmq_pollitem_t it = {s, 0, ZMQ_POLLOUT, 0};
        uint64_t now = pd_now_ns();
        if (now >= deadline) {
            st = PD_ERR_TIMEOUT;
            snprintf(msg, msg_len, "no control connection to %s:%d within %.1fs", host, port,
                     ctx->cfg.control_timeout_s);
            goto out_drop;
        }
        if (zmq_poll(&it, 1, (long)PD_MIN((deadline - now) / 1000000 + 1, 50)) > 0 &&
            zmq_send(s, out.data, out.len, ZMQ_DONTWAIT) >= 0)
            break;
        if (atomic_load(&ctx->stop)) {
            st = PD_ERR_CANCELED;
            snprintf(msg, msg_len, "kvxfer is shutting down");
            goto out_drop;
        }
    }
    for (;;) {
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        uint64_t now = pd_now_ns();
        zmq_msg_t frame;

        if (now >= deadline) {
            st = PD_ERR_TIMEOUT;
            snprintf(msg, msg_len, "%s to %s:%d timed out after %.1fs",
                     kvx_msg_type_name(req->type), host, port, ctx->cfg.control_timeout_s);
            goto out_drop;
        }
        if (atomic_load(&ctx->stop)) {
            st = PD_ERR_CANCELED;
            snprintf(msg, msg_len, "kvxfer is shutting down");
            goto out_drop;
        }
        if (zmq_poll(&it, 1, (long)PD_MIN((deadline - now) / 1000000 + 1, 50)) <= 0)
            continue;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, s, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&frame);
            continue;
        }
        st = kvx_msg_decode(zmq_msg_data(&frame), zmq_msg_size(&frame), secret, rep);
        zmq_msg_close(&frame);
        if (st == PD_ERR_PERM) {
            pthread_mutex_lock(&ctx->mu);
            ctx->stats.auth_failures++;
            pthread_mutex_unlock(&ctx->mu);
            kvx_msg_cleanup(rep);
            snprintf(msg, msg_len, "authentication with %s:%d failed (check auth_secret / "
                     "PDSERVE_KV_SECRET on both sides)", host, port);
            goto out_drop;
        }
        if (st != PD_OK) {
            kvx_msg_cleanup(rep);
            st = PD_ERR_TRANSPORT;
            snprintf(msg, msg_len, "malformed reply from %s:%d", host, port);
            goto out_drop;
        }
        if (rep->seq != req->seq) { /* a late reply to an earlier request */
            kvx_msg_cleanup(rep);
            continue;
        }
        break;
    }
    pd_buf_cleanup(&out);
    if (rep->type == KVX_MSG_ERROR) {
        if (rep->status == PD_ERR_PERM)
            snprintf(msg, msg_len, "authentication with %s:%d failed (check auth_secret / "
                     "PDSERVE_KV_SECRET on both sides)", host, port);
        else
            snprintf(msg, msg_len, "%s", rep->message);
        return (pd_status_t)rep->status;
    }
    return PD_OK;

out_drop:
    pd_buf_cleanup(&out);
    worker_sock_drop(w, host, port);
    return st;
}

/* ---- peers ---- */
static void peer_unref(kvx_ctx_t *ctx, peer_t *p)
{
    int last;

    pthread_mutex_lock(&ctx->mu);
    last = --p->refs == 0;
    pthread_mutex_unlock(&ctx->mu);
    if (last) {
        ctx->ops->peer_close(ctx->conn, p->conn_peer);
        free(p);
    }
}

/* Take the peer out of the table (its last user closes it). */
static void peer_kill(kvx_ctx_t *ctx, peer_t *p)
{
    int drop = 0;

    pthread_mutex_lock(&ctx->mu);
    if (!p->dead) {
        peer_t **pp = &ctx->peers;
        while (*pp != NULL && *pp != p)
            pp = &(*pp)->next;
        if (*pp == p)
            *pp = p->next;
        p->dead = 1;
        drop = 1;
    }
    pthread_mutex_unlock(&ctx->mu);
    if (drop)
        peer_unref(ctx, p);
}

static pd_status_t peer_get(worker_t *w, const job_t *job, peer_t **peer_p, char *msg, size_t msg_len)
{
    kvx_ctx_t *ctx = w->ctx;
    char key[KVX_HOST_MAX + 16];
    kvx_msg_t req, rep;
    kvx_peer_info_t info;
    peer_t *p;
    pd_status_t st;

    snprintf(key, sizeof(key), "%s:%d", job->host, job->port);
    pthread_mutex_lock(&ctx->mu);
    for (p = ctx->peers; p != NULL; p = p->next)
        if (strcmp(p->key, key) == 0) {
            p->refs++;
            break;
        }
    pthread_mutex_unlock(&ctx->mu);
    if (p != NULL) {
        if (job->remote_engine_id[0] && strcmp(job->remote_engine_id, p->engine_id) != 0) {
            /* the engine behind host:port changed (restart): handshake again */
            peer_unref(ctx, p);
            peer_kill(ctx, p);
        } else {
            *peer_p = p;
            return PD_OK;
        }
    }

    memset(&req, 0, sizeof(req));
    req.type = KVX_MSG_HELLO;
    snprintf(req.engine_id, sizeof(req.engine_id), "%s", ctx->cfg.engine_id);
    req.compat = ctx->compat;
    req.proto_version = KVX_PROTO_VERSION;
    memcpy(req.compat_hash, ctx->compat_hash, sizeof(req.compat_hash));
    st = ctl_call(w, job->host, job->port, &req, &rep, msg, msg_len);
    if (st != PD_OK)
        return st;
    if (rep.type != KVX_MSG_HELLO_OK) {
        snprintf(msg, msg_len, "unexpected handshake reply %s", kvx_msg_type_name(rep.type));
        st = PD_ERR_TRANSPORT;
        goto out_rep;
    }
    if (job->remote_engine_id[0] && strcmp(job->remote_engine_id, rep.engine_id) != 0) {
        snprintf(msg, msg_len, "remote_engine_id %.60s expected, %.60s answered",
                 job->remote_engine_id, rep.engine_id);
        st = PD_ERR_MISMATCH;
        goto out_rep;
    }
    if (strcmp(rep.connector, ctx->ops->name) != 0) {
        snprintf(msg, msg_len, "incompatible peer: connector %s here, %.60s there",
                 ctx->ops->name, rep.connector);
        st = PD_ERR_MISMATCH;
        goto out_rep;
    }
    if (rep.n_blocks == 0 || rep.block_bytes != ctx->region.block_bytes) {
        snprintf(msg, msg_len, "incompatible peer: block_bytes %zu here, %llu there",
                 ctx->region.block_bytes, (unsigned long long)rep.block_bytes);
        st = PD_ERR_MISMATCH;
        goto out_rep;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        st = PD_ERR_NOMEM;
        goto out_rep;
    }
    snprintf(p->key, sizeof(p->key), "%s", key);
    snprintf(p->host, sizeof(p->host), "%s", job->host);
    snprintf(p->engine_id, sizeof(p->engine_id), "%s", rep.engine_id);
    p->n_blocks = rep.n_blocks;
    p->block_bytes = rep.block_bytes;
    info.engine_id = p->engine_id;
    info.host = p->host;
    info.n_blocks = rep.n_blocks;
    info.block_bytes = rep.block_bytes;
    info.mem_type = (kvx_mem_type_t)rep.mem_type;
    info.desc = rep.desc;
    info.desc_len = rep.desc_len;
    st = ctx->ops->peer_connect(ctx->conn, &info, &p->conn_peer);
    if (st != PD_OK) {
        snprintf(msg, msg_len, "%s could not connect to %s (%s)", ctx->ops->name, key,
                 pd_status_str(st));
        free(p);
        goto out_rep;
    }
    p->refs = 2; /* table + us */
    pthread_mutex_lock(&ctx->mu);
    p->next = ctx->peers;
    ctx->peers = p;
    pthread_mutex_unlock(&ctx->mu);
    *peer_p = p;
out_rep:
    kvx_msg_cleanup(&rep);
    return st;
}

/* ---- pulls ---- */
static void read_done(void *arg, pd_status_t status)
{
    rdone_t *d = arg;

    pthread_mutex_lock(&d->mu);
    d->done = 1;
    d->status = status;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static rdone_t *rdone_new(void)
{
    rdone_t *d = calloc(1, sizeof(*d));
    pthread_condattr_t ca;

    if (d == NULL)
        return NULL;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, &ca);
    pthread_condattr_destroy(&ca);
    return d;
}

static void rdone_free(rdone_t *d)
{
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    free(d);
}

/* Wait for d until ns from now; returns 1 when done. */
static int rdone_wait(rdone_t *d, uint64_t ns)
{
    struct timespec ts;
    int done;

    abs_deadline(&ts, ns);
    pthread_mutex_lock(&d->mu);
    while (!d->done)
        if (pthread_cond_timedwait(&d->cv, &d->mu, &ts) == ETIMEDOUT)
            break;
    done = d->done;
    pthread_mutex_unlock(&d->mu);
    return done;
}

/* Best-effort notification so the producer frees the blocks now, not at expiry. */
static void notify_abort(worker_t *w, const job_t *job)
{
    kvx_msg_t req, rep;
    char msg[KVX_MSG_MSG_MAX];
    pd_status_t st;

    memset(&req, 0, sizeof(req));
    req.type = KVX_MSG_ABORT;
    snprintf(req.req_id, sizeof(req.req_id), "%s", job->remote_req_id);
    st = ctl_call(w, job->host, job->port, &req, &rep, msg, sizeof(msg));
    kvx_msg_cleanup(&rep);
    if (st != PD_OK && st != PD_ERR_NOT_FOUND && st != PD_ERR_EXPIRED) {
        pthread_mutex_lock(&w->ctx->mu);
        w->ctx->stats.notifications_failed++;
        pthread_mutex_unlock(&w->ctx->mu);
    }
}

static pd_status_t run_pull(worker_t *w, const job_t *job, char *msg, size_t msg_len, bool *unsafe_p)
{
    kvx_ctx_t *ctx = w->ctx;
    kvx_msg_t req, rep;
    peer_t *peer = NULL;
    rdone_t *d = NULL;
    pd_status_t st;
    uint64_t hb_ns, deadline, next_hb;
    kvx_read_t rd;
    uint8_t *blob = NULL;
    size_t blob_len = 0;

    st = peer_get(w, job, &peer, msg, msg_len);
    if (st != PD_OK)
        return st;
    for (size_t i = 0; i < job->n; i++)
        if (job->remote_ids[i] >= peer->n_blocks) {
            snprintf(msg, msg_len, "remote block id %u outside the producer's region (%u blocks)",
                     job->remote_ids[i], peer->n_blocks);
            st = PD_ERR_RANGE;
            goto out_peer;
        }

    if (job->n > 0) {
        memset(&req, 0, sizeof(req));
        req.type = KVX_MSG_ACQUIRE;
        snprintf(req.req_id, sizeof(req.req_id), "%s", job->remote_req_id);
        req.n_ids = (uint32_t)job->n;
        req.ids = job->remote_ids;
        st = ctl_call(w, job->host, job->port, &req, &rep, msg, msg_len);
        kvx_msg_cleanup(&rep);
        if (st == PD_ERR_TIMEOUT || st == PD_ERR_IO || st == PD_ERR_TRANSPORT)
            peer_kill(ctx, peer); /* handshake again next time: it may have restarted */
        if (st != PD_OK)
            goto out_peer;
        /* heartbeat well inside the lease so one lost heartbeat is not fatal */
        hb_ns = PD_MAX((uint64_t)10000000u, PD_MIN(rep.value * 1000000u / 3, (uint64_t)2000000000u));

        d = rdone_new();
        if (d == NULL) {
            st = PD_ERR_NOMEM;
            goto out_peer;
        }
        rd.remote_req_id = job->remote_req_id;
        rd.n = job->n;
        rd.local_ids = job->local_ids;
        rd.remote_ids = job->remote_ids;
        blob_len = 0;
        if (ctx->ops->read_prepare != NULL) {
            blob = malloc(KVX_MSG_MAX_DESC);
            st = blob == NULL ? PD_ERR_NOMEM
                              : ctx->ops->read_prepare(ctx->conn, peer->conn_peer, &rd, blob,
                                                       KVX_MSG_MAX_DESC, &blob_len);
            if (st != PD_OK) {
                snprintf(msg, msg_len, "%s could not prepare the read (%s)", ctx->ops->name,
                         pd_status_str(st));
                free(blob);
                rdone_free(d);
                notify_abort(w, job);
                goto out_peer;
            }
        }
        st = ctx->ops->read(ctx->conn, peer->conn_peer, &rd, read_done, d);
        if (st != PD_OK) {
            snprintf(msg, msg_len, "%s read could not start (%s)", ctx->ops->name, pd_status_str(st));
            free(blob);
            rdone_free(d);
            d = NULL;
            notify_abort(w, job);
            peer_kill(ctx, peer);
            goto out_peer;
        }
        if (blob_len > 0) {
            /* two-sided transport: ask the producer to send what we now wait for */
            memset(&req, 0, sizeof(req));
            req.type = KVX_MSG_SERVE;
            snprintf(req.req_id, sizeof(req.req_id), "%s", job->remote_req_id);
            req.n_ids = (uint32_t)job->n;
            req.ids = job->remote_ids;
            req.desc = blob;
            req.desc_len = (uint32_t)blob_len;
            st = ctl_call(w, job->host, job->port, &req, &rep, msg, msg_len);
            kvx_msg_cleanup(&rep);
            free(blob);
            blob = NULL;
            if (st != PD_OK)
                goto out_cancel;
        }
        free(blob);
        blob = NULL;
        deadline = pd_now_ns() + (uint64_t)(ctx->cfg.transfer_timeout_s * 1e9);
        next_hb = pd_now_ns() + hb_ns;
        for (;;) {
            uint64_t now = pd_now_ns();
            pd_status_t hst;

            if (rdone_wait(d, next_hb > now ? PD_MIN(next_hb - now, (uint64_t)50000000u) : 0))
                break;
            now = pd_now_ns();
            if (atomic_load(&ctx->stop)) {
                st = PD_ERR_CANCELED;
                snprintf(msg, msg_len, "kvxfer is shutting down");
                goto out_cancel;
            }
            if (now >= deadline) {
                st = PD_ERR_TIMEOUT;
                snprintf(msg, msg_len, "transfer from %s:%d timed out after %.1fs", job->host,
                         job->port, ctx->cfg.transfer_timeout_s);
                goto out_cancel;
            }
            if (now < next_hb)
                continue;
            next_hb = now + hb_ns;
            memset(&req, 0, sizeof(req));
            req.type = KVX_MSG_HEARTBEAT;
            snprintf(req.req_id, sizeof(req.req_id), "%s", job->remote_req_id);
            hst = ctl_call(w, job->host, job->port, &req, &rep, msg, msg_len);
            kvx_msg_cleanup(&rep);
            if (hst == PD_ERR_TIMEOUT || hst == PD_ERR_IO || hst == PD_ERR_TRANSPORT) {
                /* the producer is unreachable: its data plane is most likely gone too */
                char tmp[KVX_MSG_MSG_MAX];
                st = PD_ERR_TRANSPORT;
                snprintf(tmp, sizeof(tmp), "producer %s:%d unreachable during the transfer (%s)",
                         job->host, job->port, msg);
                snprintf(msg, msg_len, "%s", tmp);
                goto out_cancel;
            }
            /* an expired lease: let the reads finish (bounded), then report it */
        }
        st = d->status;
        rdone_free(d);
        d = NULL;
        if (st != PD_OK) {
            snprintf(msg, msg_len, "%s read from %s:%d failed (%s)", ctx->ops->name, job->host,
                     job->port, pd_status_str(st));
            st = st == PD_ERR_TIMEOUT ? PD_ERR_TIMEOUT : PD_ERR_TRANSPORT;
            peer_kill(ctx, peer);
            notify_abort(w, job);
            goto out_peer;
        }
    }

    /* RELEASE doubles as the validity check: OK means the lease was live until now,
     * so no block we read can have been reused by the producer meanwhile */
    memset(&req, 0, sizeof(req));
    req.type = KVX_MSG_RELEASE;
    snprintf(req.req_id, sizeof(req.req_id), "%s", job->remote_req_id);
    req.n_consumers = 1;
    st = ctl_call(w, job->host, job->port, &req, &rep, msg, msg_len);
    kvx_msg_cleanup(&rep);
    if (st != PD_OK) {
        if (st != PD_ERR_EXPIRED && st != PD_ERR_NOT_FOUND) {
            pthread_mutex_lock(&ctx->mu);
            ctx->stats.notifications_failed++;
            pthread_mutex_unlock(&ctx->mu);
        }
        if (st == PD_ERR_NOT_FOUND)
            st = PD_ERR_EXPIRED;
    }
    goto out_peer;

out_cancel:
    /* closing the peer completes its outstanding reads (cancelled) before we report,
     * so nothing writes into the local blocks after the callback */
    peer_kill(ctx, peer);
    peer_unref(ctx, peer);
    peer = NULL;
    if (!rdone_wait(d, 5ull * 1000000000ull)) {
        PD_LOG_CRIT("kvx: connector read did not complete after cancel; its local blocks are "
                    "unsafe to reuse");
        *unsafe_p = true;
        kvx_graveyard_add(d); /* the connector may still complete into it */
        d = NULL;
    }
    if (d != NULL)
        rdone_free(d);
    notify_abort(w, job);
    return st;

out_peer:
    if (peer != NULL)
        peer_unref(ctx, peer);
    return st;
}

static void job_free(job_t *job)
{
    free(job->remote_ids);
    free(job->local_ids);
    free(job);
}

static void job_run(worker_t *w, job_t *job)
{
    kvx_ctx_t *ctx = w->ctx;
    char msg[KVX_MSG_MSG_MAX] = "";
    kvx_pull_result_t res;
    uint64_t t0 = pd_now_ns();

    res.local_blocks_unsafe = false;
    res.status = atomic_load(&ctx->stop) ? PD_ERR_CANCELED
                                         : run_pull(w, job, msg, sizeof(msg), &res.local_blocks_unsafe);
    if (res.status == PD_ERR_CANCELED && msg[0] == '\0')
        snprintf(msg, sizeof(msg), "kvxfer is shutting down");
    res.seconds = (double)(pd_now_ns() - t0) / 1e9;
    res.bytes = res.status == PD_OK ? (uint64_t)job->n * ctx->region.block_bytes : 0;
    if (res.status == PD_OK)
        snprintf(msg, sizeof(msg), "ok");
    res.message = msg;
    pthread_mutex_lock(&ctx->mu);
    if (res.status == PD_OK) {
        ctx->stats.transfers++;
        ctx->stats.bytes += res.bytes;
        ctx->stats.blocks += job->n;
        ctx->stats.xfer_seconds += res.seconds;
    } else {
        ctx->stats.failures++;
    }
    pthread_mutex_unlock(&ctx->mu);
    if (res.status != PD_OK)
        PD_LOG_REQ(WARN, job->req_id[0] ? job->req_id : job->remote_req_id,
                   "kvx: pull of %zu blocks from %s:%d failed: %s: %s", job->n, job->host,
                   job->port, pd_status_name(res.status), msg);
    job->cb(job->arg, &res);
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    kvx_ctx_t *ctx = w->ctx;

    for (;;) {
        job_t *job;

        pthread_mutex_lock(&ctx->qmu);
        while (ctx->q_len == 0 && !ctx->q_closed)
            pthread_cond_wait(&ctx->qcv, &ctx->qmu);
        if (ctx->q_len == 0) {
            pthread_mutex_unlock(&ctx->qmu);
            break;
        }
        job = ctx->queue[ctx->q_head];
        ctx->q_head = (ctx->q_head + 1) % ctx->q_cap;
        ctx->q_len--;
        pthread_mutex_unlock(&ctx->qmu);
        job_run(w, job);
        job_free(job);
    }
    for (size_t i = 0; i < w->n_socks; i++)
        zmq_close(w->socks[i].sock);
    w->n_socks = 0;
    return NULL;
}

pd_status_t kvx_pull(kvx_ctx_t *ctx, const kvx_pull_desc_t *desc, kvx_pull_cb_t cb, void *arg)
{
    job_t *job;

    if (ctx == NULL || desc == NULL || cb == NULL || desc->remote_host == NULL ||
        desc->remote_host[0] == '\0' || strlen(desc->remote_host) >= KVX_HOST_MAX ||
        desc->remote_port <= 0 || desc->remote_port > 65535 || !id_ok(desc->remote_req_id) ||
        (desc->req_id != NULL && strlen(desc->req_id) >= KVX_ID_MAX) ||
        (desc->remote_engine_id != NULL && strlen(desc->remote_engine_id) >= KVX_ID_MAX) ||
        desc->n > KVX_MAX_BLOCKS_PER_REQ ||
        (desc->n > 0 && (desc->remote_ids == NULL || desc->local_ids == NULL))) {
        PD_LOG_ERR("kvx: pull: invalid arguments");
        return PD_ERR_INVAL;
    }
    if (ctx->workers == NULL) {
        PD_LOG_ERR("kvx: pull on a context whose kv_role is not a consumer");
        return PD_ERR_INVAL;
    }
    if (!ctx->have_region) {
        PD_LOG_ERR("kvx: pull before a region was registered");
        return PD_ERR_INVAL;
    }
    for (size_t i = 0; i < desc->n; i++)
        if (desc->local_ids[i] >= ctx->region.n_blocks) {
            PD_LOG_REQ(ERR, desc->req_id, "kvx: local block id %u outside the region (%u blocks)",
                       desc->local_ids[i], ctx->region.n_blocks);
            return PD_ERR_RANGE;
        }
    job = calloc(1, sizeof(*job));
    if (job == NULL)
        return PD_ERR_NOMEM;
    snprintf(job->host, sizeof(job->host), "%s", desc->remote_host);
    job->port = desc->remote_port;
    snprintf(job->remote_engine_id, sizeof(job->remote_engine_id), "%s",
             desc->remote_engine_id ? desc->remote_engine_id : "");
    snprintf(job->remote_req_id, sizeof(job->remote_req_id), "%s", desc->remote_req_id);
    snprintf(job->req_id, sizeof(job->req_id), "%s", desc->req_id ? desc->req_id : "");
    job->n = desc->n;
    if (desc->n) {
        job->remote_ids = malloc(desc->n * sizeof(uint32_t));
        job->local_ids = malloc(desc->n * sizeof(uint32_t));
        if (job->remote_ids == NULL || job->local_ids == NULL) {
            job_free(job);
            return PD_ERR_NOMEM;
        }
        memcpy(job->remote_ids, desc->remote_ids, desc->n * sizeof(uint32_t));
        memcpy(job->local_ids, desc->local_ids, desc->n * sizeof(uint32_t));
    }
    job->cb = cb;
    job->arg = arg;

    pthread_mutex_lock(&ctx->qmu);
    if (ctx->q_closed || ctx->q_len == ctx->q_cap) {
        int closed = ctx->q_closed;
        pthread_mutex_unlock(&ctx->qmu);
        job_free(job);
        PD_LOG_WARN("kvx: pull refused: %s", closed ? "shutting down" : "queue full");
        return closed ? PD_ERR_CLOSED : PD_ERR_BUSY;
    }
    ctx->queue[(ctx->q_head + ctx->q_len) % ctx->q_cap] = job;
    ctx->q_len++;
    pthread_cond_signal(&ctx->qcv);
    pthread_mutex_unlock(&ctx->qmu);
    return PD_OK;
}

/* Heap state shared by kvx_pull_sync and its callback: whichever lets go last frees
 * it, so a caller that gave up waiting never leaves the callback a dangling pointer. */
typedef struct sync_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    int refs;
    pd_status_t status;
    char msg[KVX_MSG_MSG_MAX];
} sync_wait_t;

static void sync_unref(sync_wait_t *s)
{
    int last;

    pthread_mutex_lock(&s->mu);
    last = --s->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (last) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        free(s);
    }
}

static void sync_cb(void *arg, const kvx_pull_result_t *res)
{
    sync_wait_t *s = arg;

    pthread_mutex_lock(&s->mu);
    s->status = res->status;
    snprintf(s->msg, sizeof(s->msg), "%s", res->message);
    s->done = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    sync_unref(s);
}

pd_status_t kvx_pull_sync(kvx_ctx_t *ctx, const kvx_pull_desc_t *desc, char *msg, size_t msg_len)
{
    sync_wait_t *s = calloc(1, sizeof(*s));
    pthread_condattr_t ca;
    struct timespec ts;
    pd_status_t st;

    if (s == NULL)
        return PD_ERR_NOMEM;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    s->refs = 2;
    st = kvx_pull(ctx, desc, sync_cb, s);
    if (st != PD_OK) {
        if (msg != NULL && msg_len)
            snprintf(msg, msg_len, "%s", pd_status_str(st));
        s->refs = 1;
        sync_unref(s);
        return st;
    }
    /* the pull is bounded by its own timeouts (queue wait aside); this bound only
     * guards against a bug leaving the caller stuck forever */
    abs_deadline(&ts, (uint64_t)((ctx->cfg.transfer_timeout_s + 8 * ctx->cfg.control_timeout_s +
                                  60.0) * 1e9 * (1 + (double)ctx->cfg.pull_queue / ctx->cfg.pull_workers)));
    pthread_mutex_lock(&s->mu);
    while (!s->done)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT)
            break;
    if (s->done) {
        st = s->status;
        if (msg != NULL && msg_len)
            snprintf(msg, msg_len, "%s", s->msg);
    } else {
        st = PD_ERR_TIMEOUT;
        if (msg != NULL && msg_len)
            snprintf(msg, msg_len, "pull did not finish in time (kvxfer bug?)");
        PD_LOG_CRIT("kvx: pull_sync gave up waiting for a pull");
    }
    pthread_mutex_unlock(&s->mu);
    sync_unref(s);
    return st;
}

pd_status_t kvx_abort_remote(kvx_ctx_t *ctx, const char *remote_host, int remote_port,
                             const char *remote_req_id)
{
    /* a throwaway worker: the control sockets are per thread */
    worker_t w = {.ctx = ctx};
    kvx_msg_t req, rep;
    char msg[KVX_MSG_MSG_MAX];
    pd_status_t st;

    if (ctx == NULL || remote_host == NULL || remote_host[0] == '\0' ||
        strlen(remote_host) >= KVX_HOST_MAX || remote_port <= 0 || remote_port > 65535 ||
        !id_ok(remote_req_id))
        return PD_ERR_INVAL;
    memset(&req, 0, sizeof(req));
    req.type = KVX_MSG_ABORT;
    snprintf(req.req_id, sizeof(req.req_id), "%s", remote_req_id);
    st = ctl_call(&w, remote_host, remote_port, &req, &rep, msg, sizeof(msg));
    kvx_msg_cleanup(&rep);
    for (size_t i = 0; i < w.n_socks; i++)
        zmq_close(w.socks[i].sock);
    if (st != PD_OK) {
        PD_LOG_REQ(WARN, remote_req_id, "kvx: abort at %s:%d: %s", remote_host, remote_port, msg);
        if (st != PD_ERR_NOT_FOUND && st != PD_ERR_EXPIRED) {
            pthread_mutex_lock(&ctx->mu);
            ctx->stats.notifications_failed++;
            pthread_mutex_unlock(&ctx->mu);
        }
    }
    return st;
}

/* ---- context ---- */
static pd_status_t load_module(kvx_ctx_t *ctx)
{
    const kvx_conn_ops_t *(*fn)(void);
    const kvx_conn_ops_t *ops;

    /* NODELETE: a plugin's own threads may still be returning into its code */
    ctx->dl = dlopen(ctx->cfg.module_path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (ctx->dl == NULL) {
        PD_LOG_ERR("kvx: kv_connector_module_path: %s", dlerror());
        return PD_ERR_NOT_FOUND;
    }
    *(void **)&fn = dlsym(ctx->dl, KVX_CONN_PLUGIN_SYMBOL);
    if (fn == NULL) {
        PD_LOG_ERR("kvx: %s has no symbol %s", ctx->cfg.module_path, KVX_CONN_PLUGIN_SYMBOL);
        return PD_ERR_NOT_FOUND;
    }
    ops = fn();
    if (ops == NULL || ops->abi_version != KVX_CONN_ABI_VERSION || ops->name == NULL ||
        !ops->create || !ops->destroy || !ops->reg || !ops->peer_connect || !ops->peer_close ||
        !ops->read) {
        PD_LOG_ERR("kvx: %s: connector ops table is incomplete or of another ABI (want %u)",
                   ctx->cfg.module_path, KVX_CONN_ABI_VERSION);
        return PD_ERR_MISMATCH;
    }
    ctx->ops = ops;
    PD_LOG_INFO("kvx: loaded connector %s from %s", ops->name, ctx->cfg.module_path);
    return PD_OK;
}

static pd_status_t dup_config(kvx_config_t *dst, const kvx_config_t *src)
{
    *dst = *src;
    dst->extra_config_json = dst->module_path = dst->auth_secret = dst->shared_storage_path = NULL;
#define DUP(f)                                                        \
    if (src->f != NULL && (dst->f = strdup(src->f)) == NULL)          \
        return PD_ERR_NOMEM;
    DUP(extra_config_json)
    DUP(module_path)
    DUP(auth_secret)
    DUP(shared_storage_path)
#undef DUP
    return PD_OK;
}

pd_status_t kvx_ctx_create(const kvx_config_t *cfg, const kvx_compat_t *compat, kvx_ctx_t **ctx_p)
{
    kvx_ctx_t *ctx;
    pd_status_t st;
    int consumer, producer;

    if (cfg == NULL || compat == NULL || ctx_p == NULL || cfg->role == KVX_ROLE_NONE ||
        cfg->connector == KVX_CONN_NONE) {
        PD_LOG_ERR("kvx: ctx_create needs a connector and a kv_role");
        return PD_ERR_INVAL;
    }
    ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return PD_ERR_NOMEM;
    pthread_mutex_init(&ctx->mu, NULL);
    pthread_mutex_init(&ctx->qmu, NULL);
    pthread_cond_init(&ctx->qcv, NULL);
    if ((st = dup_config(&ctx->cfg, cfg)) != PD_OK)
        goto err_destroy;
    ctx->compat = *compat;
    kvx_compat_hash(compat, ctx->compat_hash);
    ctx->tombs = calloc(TOMBSTONES, sizeof(tomb_t));
    ctx->nonces = calloc(NONCES, sizeof(uint64_t));
    if (ctx->tombs == NULL || ctx->nonces == NULL) {
        st = PD_ERR_NOMEM;
        goto err_destroy;
    }
    if (cfg->connector == KVX_CONN_MODULE) {
        if ((st = load_module(ctx)) != PD_OK)
            goto err_destroy;
    } else if ((ctx->ops = kvx_conn_ops_builtin(cfg->connector)) == NULL) {
        PD_LOG_ERR("kvx: %s is not compiled into this build", kvx_conn_kind_name(cfg->connector));
        st = PD_ERR_UNSUPPORTED;
        goto err_destroy;
    }
    if ((st = ctx->ops->create(&ctx->cfg, &ctx->conn)) != PD_OK) {
        PD_LOG_ERR("kvx: connector %s failed to start: %s", ctx->ops->name, pd_status_str(st));
        ctx->conn = NULL;
        goto err_destroy;
    }
    ctx->zctx = zmq_ctx_new();
    if (ctx->zctx == NULL) {
        st = PD_ERR_IO;
        goto err_destroy;
    }
    producer = cfg->role == KVX_ROLE_PRODUCER || cfg->role == KVX_ROLE_BOTH;
    consumer = cfg->role == KVX_ROLE_CONSUMER || cfg->role == KVX_ROLE_BOTH;
    if (producer && (st = ctl_start(ctx)) != PD_OK)
        goto err_destroy;
    if (consumer) {
        ctx->q_cap = (size_t)cfg->pull_queue;
        ctx->queue = calloc(ctx->q_cap, sizeof(job_t *));
        ctx->workers = calloc((size_t)cfg->pull_workers, sizeof(worker_t));
        if (ctx->queue == NULL || ctx->workers == NULL) {
            st = PD_ERR_NOMEM;
            goto err_destroy;
        }
        for (int i = 0; i < cfg->pull_workers; i++) {
            ctx->workers[i].ctx = ctx;
            if (pthread_create(&ctx->workers[i].thread, NULL, worker_main, &ctx->workers[i]) != 0) {
                st = PD_ERR_INTERNAL;
                goto err_destroy;
            }
            ctx->n_workers++;
        }
    }
    *ctx_p = ctx;
    return PD_OK;

err_destroy:
    kvx_ctx_destroy(ctx);
    return st;
}

void kvx_ctx_destroy(kvx_ctx_t *ctx)
{
    lease_t *ended = NULL;

    if (ctx == NULL)
        return;
    atomic_store(&ctx->stop, 1);
    /* queued pulls fail with CANCELED from the workers; running ones see stop */
    pthread_mutex_lock(&ctx->qmu);
    ctx->q_closed = 1;
    pthread_cond_broadcast(&ctx->qcv);
    pthread_mutex_unlock(&ctx->qmu);
    for (int i = 0; i < ctx->n_workers; i++)
        pthread_join(ctx->workers[i].thread, NULL);
    if (ctx->ctl_started)
        pthread_join(ctx->ctl_thread, NULL);
    if (ctx->router != NULL)
        zmq_close(ctx->router);

    pthread_mutex_lock(&ctx->mu);
    for (size_t b = 0; b < LEASE_BUCKETS; b++)
        while (ctx->buckets[b] != NULL) {
            lease_t *l = lease_end_locked(ctx, &ctx->buckets[b], KVX_LEASE_ABORTED);
            l->next = ended;
            ended = l;
        }
    pthread_mutex_unlock(&ctx->mu);
    while (ended != NULL) {
        lease_t *next = ended->next;
        lease_finish(ctx, ended);
        ended = next;
    }
    while (ctx->peers != NULL)
        peer_kill(ctx, ctx->peers);
    if (ctx->conn != NULL)
        ctx->ops->destroy(ctx->conn);
    if (ctx->zctx != NULL)
        zmq_ctx_term(ctx->zctx);
    if (ctx->dl != NULL)
        dlclose(ctx->dl);
    pd_buf_cleanup(&ctx->desc);
    kvx_config_cleanup(&ctx->cfg);
    free(ctx->queue);
    free(ctx->workers);
    free(ctx->tombs);
    free(ctx->nonces);
    pthread_mutex_destroy(&ctx->mu);
    pthread_mutex_destroy(&ctx->qmu);
    pthread_cond_destroy(&ctx->qcv);
    free(ctx);
}

pd_status_t kvx_ctx_register_region(kvx_ctx_t *ctx, const kvx_region_t *region)
{
    size_t extent, desc_len = 0;
    pd_buf_t desc = {0};
    pd_status_t st;

    if (ctx == NULL || region == NULL || region->base == NULL || region->n_blocks == 0 ||
        region->block_bytes == 0 ||
        pd_mul_size(region->n_blocks, region->block_bytes, &extent) != PD_OK ||
        (uintptr_t)region->base + extent < (uintptr_t)region->base ||
        (region->mem_type != KVX_MEM_HOST && region->mem_type != KVX_MEM_CUDA)) {
        PD_LOG_ERR("kvx: register_region: invalid region");
        return PD_ERR_INVAL;
    }
    pthread_mutex_lock(&ctx->mu);
    if (ctx->have_region) {
        pthread_mutex_unlock(&ctx->mu);
        return PD_ERR_EXISTS;
    }
    pthread_mutex_unlock(&ctx->mu);
    if ((st = pd_buf_reserve(&desc, KVX_MSG_MAX_DESC)) != PD_OK)
        return st;
    st = ctx->ops->reg(ctx->conn, region, desc.data, KVX_MSG_MAX_DESC, &desc_len);
    if (st != PD_OK) {
        pd_buf_cleanup(&desc);
        return st;
    }
    desc.len = desc_len;
    if (desc.len > KVX_MSG_MAX_DESC) {
        PD_LOG_ERR("kvx: connector descriptor of %zu bytes is over the limit", desc.len);
        pd_buf_cleanup(&desc);
        return PD_ERR_LIMIT;
    }
    pthread_mutex_lock(&ctx->mu);
    ctx->region = *region;
    ctx->desc = desc;
    ctx->have_region = 1;
    pthread_mutex_unlock(&ctx->mu);
    return PD_OK;
}

int kvx_ctx_port(const kvx_ctx_t *ctx) { return ctx->router != NULL ? ctx->port : 0; }
const char *kvx_ctx_engine_id(const kvx_ctx_t *ctx) { return ctx->cfg.engine_id; }
const kvx_config_t *kvx_ctx_config(const kvx_ctx_t *ctx) { return &ctx->cfg; }

void kvx_ctx_stats(kvx_ctx_t *ctx, kvx_stats_t *stats_p)
{
    pthread_mutex_lock(&ctx->mu);
    *stats_p = ctx->stats;
    pthread_mutex_unlock(&ctx->mu);
}

pd_status_t kvx_stats_prometheus(const kvx_stats_t *s, const char *model_name, pd_buf_t *out)
{
    const char *m = model_name ? model_name : "";
    pd_status_t st = PD_OK;

    /* model names are validated upstream; quotes and backslashes would still break
     * the label, so they are refused here */
    if (strpbrk(m, "\"\\\n") != NULL)
        return PD_ERR_INVAL;
#define METRIC(name, type, help, fmt, v)                                                  \
    if (st == PD_OK)                                                                     \
        st = pd_buf_printf(out, "# HELP " name " " help "\n# TYPE " name " " type "\n"    \
                           name "{model_name=\"%s\"} " fmt "\n", m, v);
    METRIC("vllm:nixl_bytes_transferred", "counter", "Bytes pulled from remote engines.",
           "%llu", (unsigned long long)s->bytes)
    METRIC("vllm:nixl_xfer_time_seconds", "counter", "Seconds spent in successful pulls.",
           "%.6f", s->xfer_seconds)
    METRIC("vllm:nixl_num_failed_transfers", "counter", "Pulls that failed.", "%llu",
           (unsigned long long)s->failures)
    METRIC("vllm:nixl_num_failed_notifications", "counter",
           "Release/abort notifications the producer did not acknowledge.", "%llu",
           (unsigned long long)s->notifications_failed)
    METRIC("pdserve:kv_transfers_total", "counter", "Successful pulls.", "%llu",
           (unsigned long long)s->transfers)
    METRIC("pdserve:kv_blocks_transferred_total", "counter", "Blocks pulled.", "%llu",
           (unsigned long long)s->blocks)
    METRIC("pdserve:kv_leases_created_total", "counter", "Leases created (producer).", "%llu",
           (unsigned long long)s->leases_created)
    METRIC("pdserve:kv_leases_released_total", "counter", "Leases released by consumers.",
           "%llu", (unsigned long long)s->leases_released)
    METRIC("pdserve:kv_lease_expiries_total", "counter", "Leases that expired unread.", "%llu",
           (unsigned long long)s->lease_expiries)
    METRIC("pdserve:kv_leases_aborted_total", "counter", "Leases aborted.", "%llu",
           (unsigned long long)s->leases_aborted)
    METRIC("pdserve:kv_blocks_held", "gauge", "Blocks held under live leases.", "%llu",
           (unsigned long long)s->blocks_held)
    METRIC("pdserve:kv_reads_refused_total", "counter", "Reads refused (no live lease).",
           "%llu", (unsigned long long)s->reads_refused)
    METRIC("pdserve:kv_auth_failures_total", "counter", "Control messages failing auth.",
           "%llu", (unsigned long long)s->auth_failures)
    METRIC("pdserve:kv_handshakes_refused_total", "counter", "Incompatible peers refused.",
           "%llu", (unsigned long long)s->handshakes_refused)
#undef METRIC
    return st;
}
