/*
 * px.h - pdserve-proxy internals: node pools and routing policies (px_pool.c), the
 * ZeroMQ registration receiver (px_register.c), the per-event scanner of streamed
 * answers (px_sse.c), and the HTTP front door with the upstream relay threads
 * (px_proxy.c).
 *
 * Invariants: a px_node_t is never freed while the proxy runs (a registered node that
 * stops sending heartbeats is marked gone and revived if it comes back), so requests
 * may keep node pointers without references.  Pool membership changes under the pool
 * lock; per-node counters are atomics read without it.
 */
#ifndef PX_H
#define PX_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "pd_http.h"
#include "pd_metrics.h"
#include "px_args.h"

typedef enum { PX_ROLE_PREFILL = 0, PX_ROLE_DECODE = 1 } px_role_t;
typedef enum { PX_RR = 0, PX_LEAST, PX_P2C, PX_PREFIX } px_policy_t;

#define PX_MAX_NODES 256 /* per pool */
#define PX_ADDR_MAX 256

typedef struct px_node {
    char url[PX_ADDR_MAX + 8];   /* "http://host:port" without a trailing slash */
    char zmq_address[PX_ADDR_MAX]; /* registered nodes only ("" otherwise); under the pool lock */
    px_role_t role;
    int is_static;
    atomic_int healthy;    /* static: last health check / request; registered: alive */
    atomic_int gone;       /* registered node whose heartbeats stopped */
    atomic_int inflight;   /* legs this proxy has open to the node */
    atomic_ullong requests;/* legs sent */
    atomic_ullong failures;/* legs that failed at the transport or with 5xx */
    /* reported over ZeroMQ (registered nodes); atomics: written by the registration
     * thread, read by /status and the policies without the pool lock */
    _Atomic double load, queue, kv_usage;
    atomic_uint n_prefix_hashes;
    _Atomic uint64_t last_seen_ns;
} px_node_t;

typedef struct px_pool {
    px_role_t role;
    px_policy_t policy;
    px_node_t *nodes[PX_MAX_NODES];
    unsigned n;
    atomic_uint rr;
} px_pool_t;

#define PX_AFFINITY_SLOTS 8192

typedef struct px_affinity_slot {
    uint64_t hash;
    px_node_t *node;
} px_affinity_slot_t;

typedef struct px_pools {
    pthread_mutex_t lock;
    px_pool_t pool[2];
    px_affinity_slot_t aff[2][PX_AFFINITY_SLOTS];
    uint64_t rng;
} px_pools_t;

/* Prompt blocks for prefix-aware routing: PX_PREFIX_BLOCK bytes of prompt text per
 * block (about 16 tokens at 4 bytes per token), at most PX_PREFIX_BLOCKS blocks. */
#define PX_PREFIX_BLOCK 64
#define PX_PREFIX_BLOCKS 16

typedef struct px_prefix {
    uint64_t h[PX_PREFIX_BLOCKS]; /* chained hash of blocks 0..i */
    unsigned n;
} px_prefix_t;

void px_pools_init(px_pools_t *p, px_policy_t prefill_policy, px_policy_t decode_policy);
void px_pools_cleanup(px_pools_t *p);
pd_status_t px_policy_parse(const char *name, px_policy_t *out_p);
const char *px_role_name(px_role_t r);

/* Normalise "host:port" or "http://host:port/" into url (buffer of PX_ADDR_MAX + 8). */
pd_status_t px_node_url(const char *addr, char *url, size_t size);

/* Add a static node (healthy until a check says otherwise). */
pd_status_t px_pools_add_static(px_pools_t *p, px_role_t role, const char *addr);

/* A heartbeat from a registered node: add it or refresh it (revives a gone one). */
pd_status_t px_pools_heartbeat(px_pools_t *p, px_role_t role, const char *http_address,
                               const char *zmq_address, double load, double queue,
                               double kv_usage, unsigned n_prefix_hashes);
/* A registered node said goodbye: gone at once. */
void px_pools_leave(px_pools_t *p, px_role_t role, const char *http_address);
/* Mark registered nodes without a heartbeat for timeout_ns as gone; returns how many. */
unsigned px_pools_expire(px_pools_t *p, uint64_t now_ns, uint64_t timeout_ns);

/* Number of eligible (healthy, not gone) nodes in a pool. */
unsigned px_pools_eligible(px_pools_t *p, px_role_t role);

/* Choose a node by the pool's policy among eligible nodes not in exclude[0..n_ex).
 * prefix may be NULL.  The chosen node's inflight count is raised (px_node_done()
 * lowers it).  NULL when none is eligible. */
px_node_t *px_pools_pick(px_pools_t *p, px_role_t role, const px_prefix_t *prefix,
                         px_node_t *const *exclude, unsigned n_ex);
void px_node_done(px_node_t *n);

/* Snapshot of a pool's nodes (pointers stay valid; see the invariant above). */
unsigned px_pools_list(px_pools_t *p, px_role_t role, px_node_t **out, unsigned max);

/* Chained hashes of the prompt text's first blocks (see px_pool.c). */
void px_prefix_compute(const char *text, size_t len, px_prefix_t *out);

/* ---- registration receiver (px_register.c) ---- */
typedef struct px_register px_register_t;
pd_status_t px_register_start(const char *bind_addr, double heartbeat_timeout_s, px_pools_t *pools,
                              px_register_t **reg_p);
void px_register_stop(px_register_t *reg);
/* Parse and apply one registration message (exposed for tests/fuzzing). */
pd_status_t px_register_apply(px_pools_t *pools, const char *msg, size_t len);

/* ---- one streamed event, scanned without a JSON tree (px_sse.c) ---- */
typedef struct px_sse_event {
    int has_choice;     /* choices[0] exists */
    const char *text;   /* choices[0] "text" (completions) or "delta"."content" (chat) when
                         * it is a string: its raw contents inside json, escapes undecoded;
                         * NULL otherwise */
    size_t text_len;
    int text_escaped;   /* text has backslash escapes (decode with px_sse_unescape) */
    int finished;       /* choices[0] "finish_reason" is a string */
} px_sse_event_t;

/* Scan one event's JSON object (the text after "data: ").  0 and *ev filled, or -1
 * when it is not a shape the scanner handles (the caller parses it fully then).  No
 * allocation; the first of duplicate keys counts, as with cJSON. */
int px_sse_scan(const char *json, size_t len, int is_chat, px_sse_event_t *ev);

/* Append the decoded JSON string contents s[0..n) to out; 0, or -1 (out unchanged) on
 * a bad escape, a lone surrogate or \u0000. */
int px_sse_unescape(const char *s, size_t n, pd_buf_t *out);

/* ---- the proxy (px_proxy.c) ---- */
typedef struct px_proxy px_proxy_t;
pd_status_t px_proxy_create(const px_args_t *args, px_proxy_t **px_p);
pd_status_t px_proxy_start(px_proxy_t *px);
uint16_t px_proxy_port(const px_proxy_t *px);
void px_proxy_drain(px_proxy_t *px, uint64_t timeout_ms);
void px_proxy_destroy(px_proxy_t *px);

#endif /* PX_H */
