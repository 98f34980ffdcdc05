/*
 * kvx_fabric.c - LibfabricConnector: the same one-sided block reads via fi_read.
 *
 * One RDM endpoint per context on the provider named by extra config
 * "fabric_provider" (default "tcp", which libfabric serves as tcp;ofi_rxm), bound to
 * kv_ip.  The region is registered with FI_REMOTE_READ (and FI_READ for local
 * destinations when the provider wants local MRs); the descriptor carries the
 * endpoint name, the MR key, the region base and whether the provider addresses
 * remote memory virtually (FI_MR_VIRT_ADDR) or by offset.  Block ids are checked by
 * the core; the remote address is base (or 0) + id * block_bytes.
 *
 * A progress thread reads the completion queue (the provider progresses manually,
 * and a producer must keep progressing to serve reads) and fires batch callbacks,
 * so a callback never fires inside read.  Peer close cancels what it can and waits
 * (bounded) for the rest; a peer whose reads never come back is leaked, and then
 * so is the endpoint at destroy (closing it under those reads crashes the provider).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include "kvx_internal.h"
#include "pd_log.h"
#include "pd_util.h"

#define DESC_MAGIC 0x31424146u /* "FAB1" */
#define ADDR_MAX   256

typedef struct fab_state fab_state_t;
typedef struct fab_batch fab_batch_t;

typedef struct fab_peer {
    fab_state_t *st;
    fi_addr_t addr;
    uint64_t remote_base;  /* 0 when the provider uses offsets */
    uint64_t key;
    uint64_t block_bytes;
    atomic_long batches;
    atomic_int canceled;
    struct fab_batch *active;   /* under st->mu: for the graveyard if they get stuck */
} fab_peer_t;

typedef struct fab_op {
    struct fi_context2 ctx; /* first: the provider hands it back */
    fab_batch_t *b;
    int done;
} fab_op_t;

struct fab_batch {
    fab_peer_t *peer;
    atomic_long pending;
    atomic_int status;
    kvx_read_cb_t cb;
    void *arg;
    size_t n;
    fab_op_t *ops;
    struct fab_batch *next_done;
    struct fab_batch *next_active, *prev_active;
};

struct fab_state {
    struct fi_info *info;
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_av *av;
    struct fid_cq *cq;
    struct fid_ep *ep;
    struct fid_mr *mr;
    void *mr_desc;
    kvx_region_t region;
    int have_region;
    int virt_addr;
    pthread_t thread;
    int thread_started;
    atomic_int stop;
    atomic_long inflight;
    atomic_int leaked_peers;    /* peers closed with reads the provider never gave back */
    pthread_mutex_t mu;
    fab_batch_t *done;
};

static void batch_dec(fab_batch_t *b, long k, pd_status_t s)
{
    fab_state_t *st = b->peer->st;

    if (s != PD_OK) {
        int expect = PD_OK;
        atomic_compare_exchange_strong(&b->status, &expect, (int)s);
    }
    if (atomic_fetch_sub(&b->pending, k) == k) {
        pthread_mutex_lock(&st->mu);
        b->next_done = st->done;
        st->done = b;
        pthread_mutex_unlock(&st->mu);
    }
}

static void deliver_done(fab_state_t *st)
{
    fab_batch_t *list;

    pthread_mutex_lock(&st->mu);
    list = st->done;
    st->done = NULL;
    pthread_mutex_unlock(&st->mu);
    while (list != NULL) {
        fab_batch_t *b = list;
        fab_peer_t *p = b->peer;

        list = b->next_done;
        pthread_mutex_lock(&st->mu);
        if (b->prev_active)
            b->prev_active->next_active = b->next_active;
        else
            p->active = b->next_active;
        if (b->next_active)
            b->next_active->prev_active = b->prev_active;
        pthread_mutex_unlock(&st->mu);
        b->cb(b->arg, (pd_status_t)atomic_load(&b->status));
        free(b->ops);
        free(b);
        atomic_fetch_sub(&p->batches, 1);
    }
}

static void *progress_main(void *arg)
{
    fab_state_t *st = arg;
    struct fi_cq_entry ent[64];

    while (!atomic_load(&st->stop)) {
        ssize_t n = fi_cq_read(st->cq, ent, 64);

        if (n > 0) {
            for (ssize_t i = 0; i < n; i++) {
                fab_op_t *op = ent[i].op_context;
                if (op == NULL)
                    continue;
                op->done = 1;
                atomic_fetch_sub(&st->inflight, 1);
                batch_dec(op->b, 1, PD_OK);
            }
        } else if (n == -FI_EAVAIL) {
            struct fi_cq_err_entry err;
            memset(&err, 0, sizeof(err));
            if (fi_cq_readerr(st->cq, &err, 0) > 0 && err.op_context != NULL) {
                fab_op_t *op = err.op_context;
                if (atomic_load(&op->b->status) == PD_OK) /* once per batch */
                    PD_LOG_WARN("kvx fabric: read failed: %s", fi_strerror(err.err));
                op->done = 1;
                atomic_fetch_sub(&st->inflight, 1);
                batch_dec(op->b, 1, err.err == FI_ECANCELED ? PD_ERR_CANCELED : PD_ERR_TRANSPORT);
            }
        } else if (atomic_load(&st->inflight) == 0) {
            /* idle: the provider still needs progress to serve a consumer's reads */
            usleep(200);
        } else {
            sched_yield();
        }
        deliver_done(st);
    }
    deliver_done(st);
    return NULL;
}

static void fab_free(fab_state_t *st)
{
    if (st->mr != NULL)
        fi_close(&st->mr->fid);
    if (st->ep != NULL)
        fi_close(&st->ep->fid);
    if (st->av != NULL)
        fi_close(&st->av->fid);
    if (st->cq != NULL)
        fi_close(&st->cq->fid);
    if (st->domain != NULL)
        fi_close(&st->domain->fid);
    if (st->fabric != NULL)
        fi_close(&st->fabric->fid);
    if (st->info != NULL)
        fi_freeinfo(st->info);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

static pd_status_t fab_create(const kvx_config_t *cfg, void **state_p)
{
    fab_state_t *st = calloc(1, sizeof(*st));
    struct fi_info *hints;
    struct fi_cq_attr cq_attr;
    struct fi_av_attr av_attr;
    int rc;

    if (st == NULL)
        return PD_ERR_NOMEM;
    pthread_mutex_init(&st->mu, NULL);
    hints = fi_allocinfo();
    if (hints == NULL) {
        free(st);
        return PD_ERR_NOMEM;
    }
    hints->caps = FI_RMA | FI_READ | FI_REMOTE_READ;
    hints->mode = FI_CONTEXT | FI_CONTEXT2;
    hints->ep_attr->type = FI_EP_RDM;
    hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY |
                                  FI_MR_ENDPOINT;
    hints->domain_attr->threading = FI_THREAD_SAFE;
    hints->fabric_attr->prov_name = strdup(cfg->fabric_provider);
    /* bind to the configured address (tcp provider): listen where we were told */
    rc = fi_getinfo(FI_VERSION(1, 9), cfg->kv_ip, NULL, FI_SOURCE, hints, &st->info);
    fi_freeinfo(hints);
    if (rc != 0 || st->info == NULL) {
        PD_LOG_ERR("kvx fabric: no provider \"%s\" with RDM RMA reads on %s: %s",
                   cfg->fabric_provider, cfg->kv_ip, fi_strerror(-rc));
        st->info = NULL;
        fab_free(st);
        return PD_ERR_UNSUPPORTED;
    }
    if ((rc = fi_fabric(st->info->fabric_attr, &st->fabric, NULL)) != 0 ||
        (rc = fi_domain(st->fabric, st->info, &st->domain, NULL)) != 0)
        goto err_rc;
    memset(&cq_attr, 0, sizeof(cq_attr));
    cq_attr.format = FI_CQ_FORMAT_CONTEXT;
    cq_attr.size = 4096;
    cq_attr.wait_obj = FI_WAIT_NONE;
    memset(&av_attr, 0, sizeof(av_attr));
    av_attr.type = FI_AV_TABLE;
    if ((rc = fi_cq_open(st->domain, &cq_attr, &st->cq, NULL)) != 0 ||
        (rc = fi_av_open(st->domain, &av_attr, &st->av, NULL)) != 0 ||
        (rc = fi_endpoint(st->domain, st->info, &st->ep, NULL)) != 0 ||
        (rc = fi_ep_bind(st->ep, &st->av->fid, 0)) != 0 ||
        (rc = fi_ep_bind(st->ep, &st->cq->fid, FI_TRANSMIT | FI_RECV)) != 0 ||
        (rc = fi_enable(st->ep)) != 0)
        goto err_rc;
    st->virt_addr = (st->info->domain_attr->mr_mode & FI_MR_VIRT_ADDR) != 0;
    if (pthread_create(&st->thread, NULL, progress_main, st) != 0) {
        fab_free(st);
        return PD_ERR_INTERNAL;
    }
    st->thread_started = 1;
    PD_LOG_INFO("kvx fabric: endpoint ready on %s (%s)", st->info->fabric_attr->prov_name,
                st->info->domain_attr->name);
    *state_p = st;
    return PD_OK;

err_rc:
    PD_LOG_ERR("kvx fabric: setup failed: %s", fi_strerror(-rc));
    fab_free(st);
    return PD_ERR_TRANSPORT;
}

static void fab_destroy(void *state)
{
    fab_state_t *st = state;

    atomic_store(&st->stop, 1);
    if (st->thread_started)
        pthread_join(st->thread, NULL);
    if (atomic_load(&st->leaked_peers) > 0) {
        /* The provider still holds reads of a peer it never failed (seen with
         * tcp;ofi_rxm when the peer froze while the connection was being set up):
         * closing the endpoint then crashes inside libfabric.  Leave every fabric
         * object open; the process keeps them until it exits. */
        PD_LOG_WARN("kvx fabric: %d peer(s) closed with reads outstanding; leaving the "
                    "endpoint open", atomic_load(&st->leaked_peers));
        kvx_graveyard_add(st);
        return;
    }
    fab_free(st);
}

static pd_status_t fab_reg(void *state, const kvx_region_t *region, void *desc, size_t cap,
                           size_t *len_p)
{
    fab_state_t *st = state;
    uint8_t *o = desc;
    char addr[ADDR_MAX];
    size_t addr_len = sizeof(addr);
    uint64_t key, base;
    uint32_t virt, alen;
    int rc;

    if (region->mem_type != KVX_MEM_HOST) {
        PD_LOG_ERR("kvx fabric: only host memory is supported (no FI_HMEM yet)");
        return PD_ERR_UNSUPPORTED;
    }
    rc = fi_mr_reg(st->domain, region->base, (size_t)region->n_blocks * region->block_bytes,
                   FI_REMOTE_READ | FI_READ, 0, 0, 0, &st->mr, NULL);
    if (rc != 0) {
        PD_LOG_ERR("kvx fabric: fi_mr_reg: %s", fi_strerror(-rc));
        st->mr = NULL;
        return PD_ERR_TRANSPORT;
    }
    if (st->info->domain_attr->mr_mode & FI_MR_ENDPOINT) {
        if ((rc = fi_mr_bind(st->mr, &st->ep->fid, 0)) != 0 || (rc = fi_mr_enable(st->mr)) != 0) {
            PD_LOG_ERR("kvx fabric: fi_mr_bind: %s", fi_strerror(-rc));
            goto err_close;
        }
    }
    st->mr_desc = fi_mr_desc(st->mr);
    if ((rc = fi_getname(&st->ep->fid, addr, &addr_len)) != 0) {
        PD_LOG_ERR("kvx fabric: fi_getname: %s", fi_strerror(-rc));
        goto err_close;
    }
    if (4 + 4 + 8 + 8 + 4 + addr_len > cap)
        goto err_close;
    key = fi_mr_key(st->mr);
    base = (uint64_t)(uintptr_t)region->base;
    virt = (uint32_t)st->virt_addr;
    alen = (uint32_t)addr_len;
    memcpy(o, &(uint32_t){DESC_MAGIC}, 4);
    memcpy(o + 4, &virt, 4);
    memcpy(o + 8, &base, 8);
    memcpy(o + 16, &key, 8);
    memcpy(o + 24, &alen, 4);
    memcpy(o + 28, addr, addr_len);
    *len_p = 28 + addr_len;
    st->region = *region;
    st->have_region = 1;
    return PD_OK;

err_close:
    fi_close(&st->mr->fid);
    st->mr = NULL;
    return PD_ERR_TRANSPORT;
}

static pd_status_t fab_peer_connect(void *state, const kvx_peer_info_t *info, void **peer_p)
{
    fab_state_t *st = state;
    const uint8_t *d = info->desc;
    uint32_t magic, virt, alen;
    fab_peer_t *p;

    if (info->desc_len < 28)
        goto err_desc;
    memcpy(&magic, d, 4);
    memcpy(&virt, d + 4, 4);
    memcpy(&alen, d + 24, 4);
    if (magic != DESC_MAGIC || alen == 0 || alen > ADDR_MAX || (size_t)alen != info->desc_len - 28)
        goto err_desc;
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return PD_ERR_NOMEM;
    p->st = st;
    memcpy(&p->remote_base, d + 8, 8);
    if (!virt)
        p->remote_base = 0;
    memcpy(&p->key, d + 16, 8);
    p->block_bytes = info->block_bytes;
    if (fi_av_insert(st->av, d + 28, 1, &p->addr, 0, NULL) != 1) {
        PD_LOG_ERR("kvx fabric: cannot insert the address of %s", info->engine_id);
        free(p);
        return PD_ERR_TRANSPORT;
    }
    *peer_p = p;
    return PD_OK;

err_desc:
    PD_LOG_ERR("kvx fabric: malformed descriptor from %s", info->engine_id);
    return PD_ERR_FORMAT;
}

static void fab_peer_close(void *state, void *peer)
{
    fab_state_t *st = state;
    fab_peer_t *p = peer;
    uint64_t end = pd_now_ns() + 5000000000ull;

    atomic_store(&p->canceled, 1);
    /* removing the address drops rxm's connection to the peer, which fails its
     * outstanding reads (FI_ECANCELED); then we wait for them (bounded) */
    fi_av_remove(st->av, &p->addr, 1, 0);
    while (atomic_load(&p->batches) > 0 && pd_now_ns() < end)
        usleep(500);
    if (atomic_load(&p->batches) > 0) {
        PD_LOG_CRIT("kvx fabric: reads still outstanding at peer close; leaking the peer");
        pthread_mutex_lock(&st->mu);
        for (fab_batch_t *b = p->active; b != NULL; b = b->next_active)
            kvx_graveyard_add(b); /* the provider may still complete into them */
        pthread_mutex_unlock(&st->mu);
        kvx_graveyard_add(p);
        atomic_fetch_add(&st->leaked_peers, 1);
        return;
    }
    free(p);
}

static pd_status_t fab_read(void *state, void *peer, const kvx_read_t *rd, kvx_read_cb_t cb, void *arg)
{
    fab_state_t *st = state;
    fab_peer_t *p = peer;
    fab_batch_t *b;
    size_t bytes = st->region.block_bytes;

    if (!st->have_region || p->block_bytes != bytes)
        return PD_ERR_INVAL;
    if (atomic_load(&p->canceled))
        return PD_ERR_CLOSED;
    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return PD_ERR_NOMEM;
    b->ops = calloc(rd->n ? rd->n : 1, sizeof(fab_op_t));
    if (b->ops == NULL) {
        free(b);
        return PD_ERR_NOMEM;
    }
    b->peer = p;
    b->cb = cb;
    b->arg = arg;
    b->n = rd->n;
    atomic_store(&b->pending, (long)rd->n + 1);
    atomic_fetch_add(&p->batches, 1);
    pthread_mutex_lock(&st->mu);
    b->next_active = p->active;
    if (p->active)
        p->active->prev_active = b;
    p->active = b;
    pthread_mutex_unlock(&st->mu);
    for (size_t i = 0; i < rd->n; i++) {
        fab_op_t *op = &b->ops[i];
        void *local = kvx_region_block(&st->region, rd->local_ids[i]);
        uint64_t raddr = p->remote_base + (uint64_t)rd->remote_ids[i] * p->block_bytes;
        uint64_t give_up = pd_now_ns() + 10000000000ull;
        ssize_t rc;

        op->b = b;
        atomic_fetch_add(&st->inflight, 1);
        /* a full send queue drains as the progress thread reads completions */
        while ((rc = fi_read(st->ep, local, bytes, st->mr_desc, p->addr, raddr, p->key, &op->ctx)) ==
                   -FI_EAGAIN &&
               pd_now_ns() < give_up && !atomic_load(&p->canceled))
            usleep(20);
        if (rc != 0) {
            atomic_fetch_sub(&st->inflight, 1);
            PD_LOG_ERR("kvx fabric: fi_read: %s", fi_strerror((int)-rc));
            batch_dec(b, (long)(rd->n - i), rc == -FI_EAGAIN ? PD_ERR_TIMEOUT : PD_ERR_TRANSPORT);
            break;
        }
    }
    batch_dec(b, 1, PD_OK);
    return PD_OK;
}

const kvx_conn_ops_t kvx_fabric_ops = {
    .abi_version = KVX_CONN_ABI_VERSION,
    .name = "LibfabricConnector",
    .create = fab_create,
    .destroy = fab_destroy,
    .reg = fab_reg,
    .peer_connect = fab_peer_connect,
    .peer_close = fab_peer_close,
    .read = fab_read,
};
