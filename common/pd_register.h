/*
 * pd_register.h - the node side of proxy registration: a node (prefill or decode) tells
 * pdserve-proxy (--register-bind) that it exists and how loaded it is.
 *
 * A background thread sends one JSON message per interval over a ZeroMQ PUSH socket
 * connected to the proxy's PULL socket:
 *   {"type": "P"|"D", "http_address": "host:port", "zmq_address": "...",
 *    "load": running, "queue": waiting, "kv_usage": 0..1,
 *    "prefix_hashes": ["<16 hex>", ...]}          (at most PD_REGISTER_MAX_HASHES)
 * and {"type", "http_address", "bye": true} from pd_register_stop(), so the proxy drops
 * the node at once instead of after its heartbeat timeout.  Messages are dropped, never
 * queued without bound, while the proxy is unreachable (ZMQ_SNDHWM 4, non-blocking
 * send), so a node never stalls on its proxy.
 *
 *   static void stats(pd_register_stats_t *s, void *user) { s->load = ...; }
 *   pd_register_info_t info = {.type = "D", .http_address = "10.0.0.5:8000"};
 *   pd_register_t *reg;
 *   pd_register_start("tcp://10.0.0.1:30001", &info, stats, engine, &reg);
 *   ...
 *   pd_register_stop(reg);
 */
#ifndef PD_REGISTER_H
#define PD_REGISTER_H

#include <stddef.h>
#include <stdint.h>

#include "pd_status.h"

#define PD_REGISTER_MAX_HASHES 64

typedef struct pd_register pd_register_t;

typedef struct pd_register_info {
    const char *type;         /* "P" (prefill) or "D" (decode) */
    const char *http_address; /* where the proxy reaches this node's OpenAI API: host:port */
    const char *zmq_address;  /* the node's KV side channel, for information; may be NULL */
    double interval_s;        /* heartbeat period; 0 = 1 s */
} pd_register_info_t;

/* Filled by the stats callback before every heartbeat (zeroed first). */
typedef struct pd_register_stats {
    double load;     /* running requests */
    double queue;    /* waiting requests */
    double kv_usage; /* fraction of KV blocks in use, 0..1 */
    uint64_t prefix_hashes[PD_REGISTER_MAX_HASHES]; /* recent cached block hashes */
    size_t n_prefix_hashes;
} pd_register_stats_t;

/* Called on the heartbeat thread; must be thread-safe with respect to the node. */
typedef void (*pd_register_stats_cb_t)(pd_register_stats_t *stats, void *user);

/* Connect to proxy_addr (a ZeroMQ endpoint such as "tcp://127.0.0.1:30001") and start
 * heartbeats.  info is copied; stats_cb may be NULL (zeros are sent).  PD_ERR_INVAL for
 * a bad type or address, PD_ERR_IO when ZeroMQ refuses the endpoint.  *reg_p set only on
 * success. */
pd_status_t pd_register_start(const char *proxy_addr, const pd_register_info_t *info,
                              pd_register_stats_cb_t stats_cb, void *user, pd_register_t **reg_p);

/* Send the goodbye message (best effort, waits at most 200 ms), stop the thread and
 * free everything.  NULL is a no-op. */
void pd_register_stop(pd_register_t *reg);

#endif /* PD_REGISTER_H */
