/*
 * eng_disagg.h - the node side of disaggregated serving: --kv-transfer-config ->
 * a kvxfer context with the engine's KV cache registered, and the engine's KV hooks
 * (leases on the prefill node, pulls on the decode node) implemented over it.
 *
 * Protocol (vLLM's NixlConnector shapes, docs/disagg.md): a producer request carries
 * kv_transfer_params {"do_remote_decode": true}; its answer carries {"do_remote_prefill":
 * true, "remote_engine_id", "remote_host", "remote_port" (the kvx control port),
 * "remote_block_ids", "remote_request_id", "tp_size": 1}.  A consumer request carries
 * those back.
 *
 * Lifetime: eng_disagg_create after the engine (it registers the engine's KV region and
 * installs the hooks); eng_disagg_close before eng_engine_destroy (it destroys the kvx
 * context, so no kvxfer callback reaches the engine afterwards); eng_disagg_destroy last.
 */
#ifndef ENG_DISAGG_H
#define ENG_DISAGG_H

#include <stdbool.h>
#include <stddef.h>

#include "eng_engine.h"
#include "kvx.h"
#include "pd_serve_args.h"
#include "pd_status.h"
#include "pd_util.h"

typedef struct eng_disagg eng_disagg_t;

/* Parse --kv-transfer-config text for a node of role (prefill: kv_producer only;
 * decode: kv_consumer or kv_both) into *cfg (caller-owned; kvx_config_cleanup after,
 * also on failure).  PD_ERR_INVAL with one line in err. */
pd_status_t eng_disagg_parse_config(pd_node_role_t role, const char *json, kvx_config_t *cfg, char *err,
                                    size_t errlen);

/* Create the kvx context for cfg (copied), register the engine's KV cache and install
 * the hooks.  advertise_host (may be NULL) is what producers put in remote_host
 * (default: kv_ip).  Errors are logged. */
pd_status_t eng_disagg_create(const kvx_config_t *cfg, eng_engine_t *engine, const char *advertise_host,
                              eng_disagg_t **d_p);
/* Remove the hooks and destroy the kvx context (leases abort, pulls fail: their
 * events reach the engine before this returns).  Idempotent. */
void eng_disagg_close(eng_disagg_t *d);
void eng_disagg_destroy(eng_disagg_t *d);

bool eng_disagg_is_producer(const eng_disagg_t *d);   /* kv_producer or kv_both */
bool eng_disagg_is_consumer(const eng_disagg_t *d);   /* kv_consumer or kv_both */
const char *eng_disagg_engine_id(const eng_disagg_t *d);
const char *eng_disagg_host(const eng_disagg_t *d);   /* remote_host for peers */
int eng_disagg_port(const eng_disagg_t *d);           /* remote_port for peers */
const char *eng_disagg_policy_name(const eng_disagg_t *d); /* "recompute" / "fail" */

/* A consumer request that will never pull (refused before it reached the engine):
 * tell the producer to let its lease go now (a zero-block pull), not at expiry. */
void eng_disagg_release_remote(eng_disagg_t *d, const eng_remote_kv_t *remote);

/* Producer: ends req_id's lease now (its blocks go back to the engine) - for a request
 * whose client left before the answer, so nobody will ever pull the blocks.  A no-op
 * on a consumer or when no such lease exists. */
void eng_disagg_lease_abort(eng_disagg_t *d, const char *req_id);

/* Append the kvxfer counters and the node's disaggregation metrics (Prometheus text). */
pd_status_t eng_disagg_metrics(eng_disagg_t *d, const char *model_name, const eng_engine_stats_t *st,
                               pd_buf_t *out);

/* The environment kvxfer needs before any library initialises: when argv asks for
 * --kv-transfer-config and UCX_MEM_MMAP_HOOK_MODE is unset, set it to "none" and
 * re-execute the program (libucm reads it when loaded, before main).  Returns only
 * when nothing had to change or the re-exec failed (logged). */
void eng_disagg_early_env(int argc, char **argv);

#endif /* ENG_DISAGG_H */
