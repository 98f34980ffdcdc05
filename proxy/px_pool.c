/*
 * px_pool.c - the prefill and decode pools and the routing policies.
 *
 * Policies (chosen per pool):
 *   round_robin   next eligible node in turn;
 *   least_loaded  lowest score = legs this proxy has open to the node + the node's
 *                 reported waiting queue (registered nodes);
 *   power_of_two  two distinct eligible nodes at random, the lower score wins;
 *   prefix_aware  the proxy does not tokenize, so it hashes the prompt *text*: blocks of
 *                 PX_PREFIX_BLOCK bytes, each hash chained over its parent (FNV-1a 64,
 *                 like the engine's block hashes chain over token ids).  An affinity
 *                 table (direct-mapped, PX_AFFINITY_SLOTS per pool) maps a chained hash
 *                 to the node that last served it; the longest matching prefix wins
 *                 unless that node's score exceeds the least-loaded one's by more than
 *                 PX_AFFINITY_SLACK, then least_loaded decides.  Every block hash of
 *                 the request is then recorded for the chosen node.
 * Eligible: healthy and not gone.  Nodes are never freed while the proxy runs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_log.h"
#include "px.h"

#define PX_AFFINITY_SLACK 8

const char *px_role_name(px_role_t r) { return r == PX_ROLE_PREFILL ? "prefill" : "decode"; }

pd_status_t px_policy_parse(const char *name, px_policy_t *out_p)
{
    static const char *names[] = {"round_robin", "least_loaded", "power_of_two", "prefix_aware"};
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, names[i]) == 0) {
            *out_p = (px_policy_t)i;
            return PD_OK;
        }
    return PD_ERR_INVAL;
}

void px_pools_init(px_pools_t *p, px_policy_t prefill_policy, px_policy_t decode_policy)
{
    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->lock, NULL);
    p->pool[0].role = PX_ROLE_PREFILL;
    p->pool[0].policy = prefill_policy;
    p->pool[1].role = PX_ROLE_DECODE;
    p->pool[1].policy = decode_policy;
    p->rng = pd_now_ns() | 1;
}

void px_pools_cleanup(px_pools_t *p)
{
    for (int r = 0; r < 2; r++)
        for (unsigned i = 0; i < p->pool[r].n; i++)
            free(p->pool[r].nodes[i]);
    pthread_mutex_destroy(&p->lock);
}

pd_status_t px_node_url(const char *addr, char *url, size_t size)
{
    if (addr == NULL)
        return PD_ERR_INVAL;
    size_t len = strlen(addr);
    if (len == 0 || len > PX_ADDR_MAX)
        return PD_ERR_INVAL;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)addr[i] <= ' ' || (unsigned char)addr[i] >= 0x7f)
            return PD_ERR_INVAL;
    int has_scheme = strncmp(addr, "http://", 7) == 0 || strncmp(addr, "https://", 8) == 0;
    if (!has_scheme && strstr(addr, "://"))
        return PD_ERR_INVAL;
    int n = snprintf(url, size, "%s%s", has_scheme ? "" : "http://", addr);
    if (n < 0 || (size_t)n >= size)
        return PD_ERR_INVAL;
    while (n > 0 && url[n - 1] == '/')
        url[--n] = '\0';
    return PD_OK;
}

static px_node_t *find_locked(px_pool_t *pool, const char *url)
{
    for (unsigned i = 0; i < pool->n; i++)
        if (strcmp(pool->nodes[i]->url, url) == 0)
            return pool->nodes[i];
    return NULL;
}

static px_node_t *add_locked(px_pool_t *pool, const char *url, int is_static)
{
    if (pool->n >= PX_MAX_NODES)
        return NULL;
    px_node_t *n = calloc(1, sizeof(*n));
    if (n == NULL)
        return NULL;
    snprintf(n->url, sizeof(n->url), "%s", url);
    n->role = pool->role;
    n->is_static = is_static;
    atomic_store(&n->healthy, 1);
    pool->nodes[pool->n++] = n;
    return n;
}

pd_status_t px_pools_add_static(px_pools_t *p, px_role_t role, const char *addr)
{
    char url[PX_ADDR_MAX + 8];
    if (px_node_url(addr, url, sizeof(url)) != PD_OK) {
        PD_LOG_ERR("proxy: bad %s node address '%s' (want host:port or http://host:port)",
                   px_role_name(role), addr ? addr : "");
        return PD_ERR_INVAL;
    }
    pthread_mutex_lock(&p->lock);
    px_node_t *n = find_locked(&p->pool[role], url);
    if (n == NULL)
        n = add_locked(&p->pool[role], url, 1);
    pthread_mutex_unlock(&p->lock);
    return n ? PD_OK : PD_ERR_LIMIT;
}

pd_status_t px_pools_heartbeat(px_pools_t *p, px_role_t role, const char *http_address,
                               const char *zmq_address, double load, double queue,
                               double kv_usage, unsigned n_prefix_hashes)
{
    char url[PX_ADDR_MAX + 8];
    if (px_node_url(http_address, url, sizeof(url)) != PD_OK)
        return PD_ERR_INVAL;
    pthread_mutex_lock(&p->lock);
    px_node_t *n = find_locked(&p->pool[role], url);
    int joined = 0;
    if (n == NULL) {
        n = add_locked(&p->pool[role], url, 0);
        joined = n != NULL;
    } else if (!n->is_static && atomic_load(&n->gone)) {
        joined = 1;
    }
    if (n) {
        if (!n->is_static) {
            atomic_store(&n->gone, 0);
            atomic_store(&n->healthy, 1);
        }
        snprintf(n->zmq_address, sizeof(n->zmq_address), "%s", zmq_address ? zmq_address : "");
        n->load = load;
        n->queue = queue;
        n->kv_usage = kv_usage;
        n->n_prefix_hashes = n_prefix_hashes;
        n->last_seen_ns = pd_now_ns();
    }
    pthread_mutex_unlock(&p->lock);
    if (joined)
        PD_LOG_INFO("proxy: %s node %s registered", px_role_name(role), url);
    return n ? PD_OK : PD_ERR_LIMIT;
}

void px_pools_leave(px_pools_t *p, px_role_t role, const char *http_address)
{
    char url[PX_ADDR_MAX + 8];
    if (px_node_url(http_address, url, sizeof(url)) != PD_OK)
        return;
    pthread_mutex_lock(&p->lock);
    px_node_t *n = find_locked(&p->pool[role], url);
    int left = 0;
    if (n && !n->is_static && !atomic_load(&n->gone)) {
        atomic_store(&n->gone, 1);
        left = 1;
    }
    pthread_mutex_unlock(&p->lock);
    if (left)
        PD_LOG_INFO("proxy: %s node %s left the pool (goodbye)", px_role_name(role), url);
}

unsigned px_pools_expire(px_pools_t *p, uint64_t now_ns, uint64_t timeout_ns)
{
    unsigned k = 0;
    pthread_mutex_lock(&p->lock);
    for (int r = 0; r < 2; r++)
        for (unsigned i = 0; i < p->pool[r].n; i++) {
            px_node_t *n = p->pool[r].nodes[i];
            if (n->is_static || atomic_load(&n->gone))
                continue;
            if (now_ns > n->last_seen_ns && now_ns - n->last_seen_ns > timeout_ns) {
                atomic_store(&n->gone, 1);
                k++;
                PD_LOG_WARN("proxy: %s node %s left the pool (no heartbeat for %.1f s)",
                            px_role_name((px_role_t)r), n->url, (double)(now_ns - n->last_seen_ns) / 1e9);
            }
        }
    pthread_mutex_unlock(&p->lock);
    return k;
}

static int eligible(const px_node_t *n)
{
    return atomic_load(&n->healthy) && !atomic_load(&n->gone);
}

unsigned px_pools_eligible(px_pools_t *p, px_role_t role)
{
    unsigned k = 0;
    pthread_mutex_lock(&p->lock);
    for (unsigned i = 0; i < p->pool[role].n; i++)
        k += eligible(p->pool[role].nodes[i]) ? 1u : 0u;
    pthread_mutex_unlock(&p->lock);
    return k;
}

unsigned px_pools_list(px_pools_t *p, px_role_t role, px_node_t **out, unsigned max)
{
    pthread_mutex_lock(&p->lock);
    unsigned n = PD_MIN(max, p->pool[role].n);
    memcpy(out, p->pool[role].nodes, n * sizeof(*out));
    pthread_mutex_unlock(&p->lock);
    return n;
}

static double score(const px_node_t *n)
{
    double s = (double)atomic_load(&n->inflight);
    if (!n->is_static)
        s += n->queue;
    return s;
}

static uint64_t rng_next(px_pools_t *p)
{
    /* xorshift64*, under the pool lock */
    uint64_t x = p->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    p->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

void px_prefix_compute(const char *text, size_t len, px_prefix_t *out)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    out->n = 0;
    for (size_t b = 0; b < PX_PREFIX_BLOCKS && len > 0; b++) {
        size_t take = PD_MIN(len, (size_t)PX_PREFIX_BLOCK);
        if (take < PX_PREFIX_BLOCK && b > 0)
            break; /* only full blocks after the first, like the engine's full blocks */
        for (size_t i = 0; i < take; i++) {
            h ^= (unsigned char)text[i];
            h *= 0x100000001b3ULL;
        }
        h ^= (uint64_t)take; /* a block boundary mark: "ab"+"c" != "a"+"bc" chains */
        h *= 0x100000001b3ULL;
        out->h[out->n++] = h;
        text += take;
        len -= take;
    }
}

static int excluded(const px_node_t *n, px_node_t *const *ex, unsigned n_ex)
{
    for (unsigned i = 0; i < n_ex; i++)
        if (ex[i] == n)
            return 1;
    return 0;
}

px_node_t *px_pools_pick(px_pools_t *p, px_role_t role, const px_prefix_t *prefix,
                         px_node_t *const *exclude, unsigned n_ex)
{
    px_node_t *cand[PX_MAX_NODES];
    unsigned nc = 0;
    px_node_t *pick = NULL;

    pthread_mutex_lock(&p->lock);
    px_pool_t *pool = &p->pool[role];
    for (unsigned i = 0; i < pool->n; i++)
        if (eligible(pool->nodes[i]) && !excluded(pool->nodes[i], exclude, n_ex))
            cand[nc++] = pool->nodes[i];
    if (nc == 0)
        goto out;

    px_node_t *least = cand[0];
    for (unsigned i = 1; i < nc; i++)
        if (score(cand[i]) < score(least))
            least = cand[i];

    switch (pool->policy) {
    case PX_RR:
        pick = cand[atomic_fetch_add(&pool->rr, 1) % nc];
        break;
    case PX_LEAST:
        pick = least;
        break;
    case PX_P2C:
        if (nc == 1) {
            pick = cand[0];
        } else {
            unsigned a = (unsigned)(rng_next(p) % nc);
            unsigned b = (unsigned)(rng_next(p) % (nc - 1));
            if (b >= a)
                b++;
            pick = score(cand[b]) < score(cand[a]) ? cand[b] : cand[a];
        }
        break;
    case PX_PREFIX:
        if (prefix) {
            for (unsigned i = prefix->n; i-- > 0 && pick == NULL;) {
                px_affinity_slot_t *s = &p->aff[role][prefix->h[i] % PX_AFFINITY_SLOTS];
                if (s->node && s->hash == prefix->h[i] && !excluded(s->node, exclude, n_ex) &&
                    eligible(s->node) && score(s->node) <= score(least) + PX_AFFINITY_SLACK)
                    pick = s->node;
            }
        }
        if (pick == NULL)
            pick = least;
        if (prefix)
            for (unsigned i = 0; i < prefix->n; i++) {
                px_affinity_slot_t *s = &p->aff[role][prefix->h[i] % PX_AFFINITY_SLOTS];
                s->hash = prefix->h[i];
                s->node = pick;
            }
        break;
    default: /* unreachable: the parser accepts only the policies above */
        pick = least;
        break;
    }
    atomic_fetch_add(&pick->inflight, 1);
    atomic_fetch_add(&pick->requests, 1);
out:
    pthread_mutex_unlock(&p->lock);
    return pick;
}

void px_node_done(px_node_t *n)
{
    if (n)
        atomic_fetch_sub(&n->inflight, 1);
}
