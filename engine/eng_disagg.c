/*
 * eng_disagg.c - kvxfer behind the engine's KV hooks (see eng_disagg.h).
 *
 * Threads: the hooks run on the engine thread; lease and pull callbacks run on kvxfer
 * threads and only post events to the engine (eng_engine_kv_release / _kv_pulled),
 * never touching d->mu, so kvx_ctx_destroy (which fires them) may run under d->mu.
 * Invariant: d->kvx is used only under d->mu and only while !d->closed.
 */
#include "eng_disagg.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pd_log.h"

struct eng_disagg {
    pthread_mutex_t mu;
    kvx_config_t cfg;
    kvx_ctx_t *kvx;
    eng_engine_t *engine;
    bool closed;
    char engine_id[KVX_ID_MAX];
    char host[KVX_HOST_MAX];
    int port;
};

typedef struct pull_arg {
    eng_engine_t *engine;
    bool notify_only;
    char id[];
} pull_arg_t;

pd_status_t eng_disagg_parse_config(pd_node_role_t role, const char *json, kvx_config_t *cfg, char *err,
                                    size_t errlen)
{
    char e[400] = "";
    kvx_config_init(cfg);
    if (kvx_config_parse(json, cfg, e, sizeof(e)) != PD_OK) {
        snprintf(err, errlen, "--kv-transfer-config: %s", e[0] ? e : "invalid");
        return PD_ERR_INVAL;
    }
    if (cfg->role == KVX_ROLE_NONE || cfg->connector == KVX_CONN_NONE) {
        snprintf(err, errlen, "--kv-transfer-config: kv_connector and kv_role are required");
        return PD_ERR_INVAL;
    }
    if (role == PD_ROLE_PREFILL && cfg->role != KVX_ROLE_PRODUCER) {
        snprintf(err, errlen, "--kv-transfer-config: kv_role %s does not fit pdserve-prefill (use kv_producer; "
                 "kv_consumer and kv_both are for pdserve-decode)", kvx_role_name(cfg->role));
        return PD_ERR_INVAL;
    }
    if (role == PD_ROLE_DECODE && cfg->role == KVX_ROLE_PRODUCER) {
        snprintf(err, errlen, "--kv-transfer-config: kv_role kv_producer does not fit pdserve-decode (use "
                 "kv_consumer or kv_both; kv_producer is for pdserve-prefill)");
        return PD_ERR_INVAL;
    }
    return PD_OK;
}

static void on_lease_end(void *arg, const char *req_id, const uint32_t *block_ids, size_t n_blocks,
                         kvx_lease_end_t why)
{
    eng_disagg_t *d = arg;
    (void)block_ids;
    if (why == KVX_LEASE_RELEASED)
        PD_LOG_REQ(DEBUG, req_id, "lease released by the decode node (%zu blocks)", n_blocks);
    else
        PD_LOG_REQ(INFO, req_id, "lease %s (%zu blocks); freeing them", kvx_lease_end_name(why), n_blocks);
    eng_engine_kv_release(d->engine, req_id);
}

static void on_pulled(void *arg, const kvx_pull_result_t *res)
{
    pull_arg_t *pa = arg;
    if (pa->notify_only) {
        if (res->status != PD_OK)
            PD_LOG_REQ(INFO, pa->id, "lease release notification failed: %s",
                       res->message ? res->message : pd_status_str(res->status));
    } else {
        if (res->status == PD_OK)
            PD_LOG_REQ(DEBUG, pa->id, "pulled %llu bytes in %.3f s", (unsigned long long)res->bytes, res->seconds);
        eng_engine_kv_pulled(pa->engine, pa->id, res->status == PD_OK, res->local_blocks_unsafe,
                             res->message && res->message[0] ? res->message : pd_status_str(res->status));
    }
    free(pa);
}

static pd_status_t hook_lease(void *arg, const char *req_id, const uint32_t *ids, size_t n)
{
    eng_disagg_t *d = arg;
    pd_status_t st = PD_ERR_CLOSED;
    pthread_mutex_lock(&d->mu);
    if (!d->closed)
        st = kvx_lease_create(d->kvx, req_id, ids, n, 0, on_lease_end, d);
    pthread_mutex_unlock(&d->mu);
    return st;
}

static pd_status_t hook_pull(void *arg, const char *req_id, const eng_remote_kv_t *r, const uint32_t *remote_ids,
                             const uint32_t *local_ids, size_t n, bool notify_only)
{
    eng_disagg_t *d = arg;
    const char *id = req_id ? req_id : "";
    size_t len = strlen(id);
    pull_arg_t *pa = malloc(sizeof(*pa) + len + 1);
    kvx_pull_desc_t desc;
    pd_status_t st = PD_ERR_CLOSED;

    if (pa == NULL)
        return PD_ERR_NOMEM;
    pa->engine = d->engine;
    pa->notify_only = notify_only;
    memcpy(pa->id, id, len + 1);
    memset(&desc, 0, sizeof(desc));
    desc.remote_host = r->host;
    desc.remote_port = r->port;
    desc.remote_engine_id = r->engine_id;
    desc.remote_req_id = r->request_id;
    desc.req_id = req_id;
    desc.n = n;
    desc.remote_ids = remote_ids;
    desc.local_ids = local_ids;
    pthread_mutex_lock(&d->mu);
    if (!d->closed)
        st = kvx_pull(d->kvx, &desc, on_pulled, pa);
    pthread_mutex_unlock(&d->mu);
    if (st != PD_OK) {
        PD_LOG_REQ(WARN, id, "cannot queue the KV pull from %s:%d: %s", r->host, r->port, pd_status_str(st));
        free(pa);
    }
    return st;
}

void eng_disagg_release_remote(eng_disagg_t *d, const eng_remote_kv_t *remote)
{
    if (d != NULL && eng_disagg_is_consumer(d))
        (void)hook_pull(d, remote->request_id, remote, NULL, NULL, 0, true);
}

void eng_disagg_lease_abort(eng_disagg_t *d, const char *req_id)
{
    if (d == NULL || !eng_disagg_is_producer(d))
        return;
    pthread_mutex_lock(&d->mu);
    if (!d->closed && kvx_lease_abort(d->kvx, req_id) == PD_OK)
        PD_LOG_REQ(INFO, req_id, "client left before the answer: lease ended, blocks freed");
    pthread_mutex_unlock(&d->mu);
}

static void compat_model_name(const eng_model_config_t *mc, char *out, size_t cap)
{
    /* the file name, not the path: two nodes may keep the same weights in different
     * directories; the architecture and every shape field are compared as well */
    const char *base = strrchr(mc->name, '/');
    pd_buf_t b;
    pd_buf_init(&b);
    pd_buf_printf(&b, "%s:%s", mc->hf_arch, base ? base + 1 : mc->name);
    snprintf(out, cap, "%.*s", (int)(b.len < cap ? b.len : cap - 1), b.data ? b.data : "");
    pd_buf_cleanup(&b);
}

pd_status_t eng_disagg_create(const kvx_config_t *cfg, eng_engine_t *engine, const char *advertise_host,
                              eng_disagg_t **d_p)
{
    eng_disagg_t *d = calloc(1, sizeof(*d));
    eng_kv_region_t r;
    kvx_compat_t compat;
    kvx_region_t region;
    char err[400] = "";
    pd_status_t st;

    if (d == NULL)
        return PD_ERR_NOMEM;
    pthread_mutex_init(&d->mu, NULL);
    d->engine = engine;
    /* copy the config through its JSON-independent fields: kvx_ctx_create copies it
     * again, we keep ours for names and the policy */
    kvx_config_init(&d->cfg);
    (void)err;
    eng_engine_kv_region(engine, &r);
    memset(&compat, 0, sizeof(compat));
    compat_model_name(eng_engine_model_config(engine), compat.model, sizeof(compat.model));
    snprintf(compat.dtype, sizeof(compat.dtype), "%s", r.dtype);
    compat.n_layers = (uint32_t)r.n_layers;
    compat.n_kv_heads = (uint32_t)r.n_kv_heads;
    compat.head_dim = (uint32_t)r.head_dim;
    compat.block_size = (uint32_t)r.block_size;
    compat.layout_id = r.layout_id;
    if (getenv("UCX_MEM_MMAP_HOOK_MODE") == NULL)
        setenv("UCX_MEM_MMAP_HOOK_MODE", "none", 0);
    st = kvx_ctx_create(cfg, &compat, &d->kvx);
    if (st != PD_OK) {
        PD_LOG_ERR("kv transfer: cannot create the %s context on %s:%d: %s", kvx_conn_kind_name(cfg->connector),
                   cfg->kv_ip, cfg->kv_port, pd_status_str(st));
        goto fail;
    }
    if (r.n_blocks <= 0 || r.n_blocks > UINT32_MAX) {
        st = PD_ERR_RANGE;
        goto fail;
    }
    region.base = r.base;
    region.n_blocks = (uint32_t)r.n_blocks;
    region.block_bytes = r.block_bytes;
    region.mem_type = r.device ? KVX_MEM_CUDA : KVX_MEM_HOST;
    st = kvx_ctx_register_region(d->kvx, &region);
    if (st != PD_OK) {
        PD_LOG_ERR("kv transfer: cannot register the KV cache (%lld blocks of %zu bytes): %s",
                   (long long)r.n_blocks, r.block_bytes, pd_status_str(st));
        goto fail;
    }
    {
        const kvx_config_t *c = kvx_ctx_config(d->kvx);
        d->cfg.role = c->role;
        d->cfg.load_failure_policy = c->load_failure_policy;
        d->cfg.connector = c->connector;
        snprintf(d->engine_id, sizeof(d->engine_id), "%s", kvx_ctx_engine_id(d->kvx));
        snprintf(d->host, sizeof(d->host), "%s", advertise_host && *advertise_host ? advertise_host : c->kv_ip);
        d->port = kvx_ctx_port(d->kvx);
    }
    {
        eng_kv_hooks_t h;
        memset(&h, 0, sizeof(h));
        h.arg = d;
        h.lease = eng_disagg_is_producer(d) ? hook_lease : NULL;
        h.pull = eng_disagg_is_consumer(d) ? hook_pull : NULL;
        h.recompute_on_failure = d->cfg.load_failure_policy == KVX_FAIL_RECOMPUTE;
        eng_engine_set_kv_hooks(engine, &h);
    }
    PD_LOG_INFO("kv transfer: %s %s, engine id %s, KV cache of %lld blocks x %zu bytes registered, control plane "
                "%s:%d, kv_load_failure_policy %s", kvx_conn_kind_name(d->cfg.connector), kvx_role_name(d->cfg.role),
                d->engine_id, (long long)r.n_blocks, r.block_bytes, d->host, d->port, eng_disagg_policy_name(d));
    *d_p = d;
    return PD_OK;
fail:
    eng_disagg_close(d);
    eng_disagg_destroy(d);
    return st;
}

void eng_disagg_close(eng_disagg_t *d)
{
    if (d == NULL)
        return;
    pthread_mutex_lock(&d->mu);
    if (!d->closed) {
        /* the engine is alive until the first close returns (eng_disagg.h) */
        eng_engine_set_kv_hooks(d->engine, NULL);
        d->closed = true;
        kvx_ctx_destroy(d->kvx); /* callbacks post to the engine; they never take d->mu */
        d->kvx = NULL;
    }
    pthread_mutex_unlock(&d->mu);
}

void eng_disagg_destroy(eng_disagg_t *d)
{
    if (d == NULL)
        return;
    eng_disagg_close(d);
    kvx_config_cleanup(&d->cfg);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

bool eng_disagg_is_producer(const eng_disagg_t *d)
{
    return d && (d->cfg.role == KVX_ROLE_PRODUCER || d->cfg.role == KVX_ROLE_BOTH);
}

bool eng_disagg_is_consumer(const eng_disagg_t *d)
{
    return d && (d->cfg.role == KVX_ROLE_CONSUMER || d->cfg.role == KVX_ROLE_BOTH);
}

const char *eng_disagg_engine_id(const eng_disagg_t *d) { return d->engine_id; }
const char *eng_disagg_host(const eng_disagg_t *d) { return d->host; }
int eng_disagg_port(const eng_disagg_t *d) { return d->port; }
const char *eng_disagg_policy_name(const eng_disagg_t *d)
{
    return d->cfg.load_failure_policy == KVX_FAIL_FAIL ? "fail" : "recompute";
}

pd_status_t eng_disagg_metrics(eng_disagg_t *d, const char *model_name, const eng_engine_stats_t *st,
                               pd_buf_t *out)
{
    kvx_stats_t ks;
    pd_status_t rc = PD_OK;
    memset(&ks, 0, sizeof(ks));
    pthread_mutex_lock(&d->mu);
    if (!d->closed)
        kvx_ctx_stats(d->kvx, &ks);
    pthread_mutex_unlock(&d->mu);
    rc = kvx_stats_prometheus(&ks, model_name, out);
    if (rc == PD_OK && strpbrk(model_name, "\"\\\n") == NULL)
        rc = pd_buf_printf(out,
                           "# HELP pdserve:kv_load_failures_total Remote KV loads that failed, by the policy "
                           "applied.\n# TYPE pdserve:kv_load_failures_total counter\n"
                           "pdserve:kv_load_failures_total{model_name=\"%s\",policy=\"recompute\"} %llu\n"
                           "pdserve:kv_load_failures_total{model_name=\"%s\",policy=\"fail\"} %llu\n"
                           "# HELP pdserve:kv_held_requests Finished prefill requests whose blocks wait for "
                           "a decode node.\n# TYPE pdserve:kv_held_requests gauge\n"
                           "pdserve:kv_held_requests{model_name=\"%s\"} %d\n",
                           model_name, (unsigned long long)st->kv_load_failures[0], model_name,
                           (unsigned long long)st->kv_load_failures[1], model_name, st->n_kv_held);
    return rc;
}

void eng_disagg_early_env(int argc, char **argv)
{
    bool wants = false;
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], "--kv-transfer-config", 20) == 0 || strncmp(argv[i], "--kv_transfer_config", 20) == 0)
            wants = true;
    if (!wants || getenv("UCX_MEM_MMAP_HOOK_MODE") != NULL)
        return;
    /* libucm installed its mmap hooks when it was loaded, before main; only a fresh
     * image sees the variable.  PDSERVE_NO_REEXEC=1 turns this off (debuggers). */
    setenv("UCX_MEM_MMAP_HOOK_MODE", "none", 0);
    if (getenv("PDSERVE_NO_REEXEC") != NULL)
        return;
    execv("/proc/self/exe", argv);
    PD_LOG_WARN("cannot re-execute with UCX_MEM_MMAP_HOOK_MODE=none (%s); export it before starting the node",
                strerror(errno));
}
