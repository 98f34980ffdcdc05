/*
 * kvx.h - pdserve's KV block transfer library (public API).
 *
 * kvxfer moves fixed-size blocks between two engines.  It knows memory regions of
 * n_blocks blocks of block_bytes each, never models.  One context (kvx_ctx_t) per
 * engine holds:
 *   - the parsed --kv-transfer-config (kvx_config_t),
 *   - one registered region (the engine's KV cache),
 *   - one connector (UCX, libfabric, NCCL, shared storage, or a plugin .so) behind
 *     the kvx_conn_ops_t vtable,
 *   - a ZeroMQ ROUTER control plane on kv_ip:kv_port (producers) that answers
 *     handshakes, lease acquire/heartbeat/release/abort messages,
 *   - the producer's lease table (kvx_lease_*) and the consumer's pull workers
 *     (kvx_pull).
 *
 * Producer (prefill) flow: kvx_lease_create(ctx, req_id, block_ids, ...) after the
 * prompt ran; the blocks stay untouched until the lease ends, which is reported
 * exactly once through the lease callback (RELEASED by the consumer's notification,
 * EXPIRED when no heartbeat came for ttl, ABORTED).  Only then may the engine free
 * the blocks.
 *
 * Consumer (decode) flow: kvx_pull(ctx, &pull_desc, cb, arg): handshake with the
 * remote engine (cached), ACQUIRE the lease (the producer refuses block ids that are
 * not under a live lease), read the blocks one-sided (two-sided transports such as
 * NCCL send a SERVE request and the producer sends), heartbeat while waiting,
 * RELEASE (the producer answers whether the lease stayed valid for the whole read,
 * so a read that raced an expiry is reported EXPIRED, never as good data).  The
 * callback fires exactly once, never from inside kvx_pull, on a kvxfer thread.
 * When it reports failure, no transfer is still writing into the local blocks
 * (unless result->local_blocks_unsafe says a transport could not cancel in time).
 *
 * Thread safety: every kvx_ctx_* / kvx_lease_* / kvx_pull function may be called
 * from any thread, after kvx_ctx_register_region returned.  Callbacks run on kvxfer
 * threads (lease callbacks on the control thread, pull callbacks on a pull worker),
 * must not block for long and must not call kvx_ctx_destroy.
 *
 * Wire protocol and connector details: docs/kvxfer.md.
 */
#ifndef KVX_H
#define KVX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pd_status.h"
#include "pd_util.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- limits and constants ---- */
#define KVX_PROTO_VERSION      1u
#define KVX_DEFAULT_PORT       14579
#define KVX_ID_MAX             128    /* request ids and engine ids, bytes incl. NUL */
#define KVX_NAME_MAX           128
#define KVX_MAX_BLOCKS_PER_REQ 65536u /* block ids in one lease / pull */
#define KVX_HOST_MAX           256

/* ---- configuration (--kv-transfer-config) ---- */
typedef enum {
    KVX_ROLE_NONE = 0, /* no connector configured */
    KVX_ROLE_PRODUCER, /* kv_producer */
    KVX_ROLE_CONSUMER, /* kv_consumer */
    KVX_ROLE_BOTH      /* kv_both */
} kvx_role_t;

typedef enum {
    KVX_CONN_NONE = 0,
    KVX_CONN_UCX,            /* UcxConnector (vLLM: NixlConnector) */
    KVX_CONN_LIBFABRIC,      /* LibfabricConnector */
    KVX_CONN_NCCL,           /* NcclConnector (vLLM: P2pNcclConnector) */
    KVX_CONN_SHARED_STORAGE, /* SharedStorageConnector */
    KVX_CONN_MODULE          /* loaded from kv_connector_module_path */
} kvx_conn_kind_t;

typedef enum { KVX_FAIL_RECOMPUTE = 0, KVX_FAIL_FAIL } kvx_fail_policy_t;

typedef enum { KVX_MEM_HOST = 0, KVX_MEM_CUDA = 1 } kvx_mem_type_t;

/* How the NCCL connector's same-host CUDA IPC path copies a pull's blocks. */
typedef enum {
    KVX_IPC_COPY_KERNEL = 0, /* one gather kernel reading the peer's memory (default) */
    KVX_IPC_COPY_BATCH,      /* one cudaMemcpyBatchAsync (copy engines) */
    KVX_IPC_COPY_MEMCPY      /* one cudaMemcpyAsync per block (for comparison) */
} kvx_ipc_copy_t;

typedef struct kvx_config {
    kvx_conn_kind_t connector;
    char connector_name[KVX_NAME_MAX]; /* as given by the user ("NixlConnector") */
    char engine_id[KVX_ID_MAX];        /* random uuid when not given */
    kvx_role_t role;
    int kv_rank;                       /* -1 when not given */
    int kv_parallel_size;              /* 1 */
    char kv_ip[KVX_HOST_MAX];          /* "127.0.0.1" */
    int kv_port;                       /* 14579 */
    double kv_buffer_size;             /* 1e9 bytes */
    kvx_mem_type_t kv_buffer_device;   /* cuda */
    char *extra_config_json;           /* kv_connector_extra_config as JSON text ("{}") */
    char *module_path;                 /* kv_connector_module_path or NULL */
    kvx_fail_policy_t load_failure_policy;

    /* Values read from kv_connector_extra_config (documented in docs/kvxfer.md). */
    char *auth_secret;                 /* "auth_secret" or env PDSERVE_KV_SECRET; NULL = no auth */
    char *shared_storage_path;         /* "shared_storage_path" (SharedStorageConnector) */
    double lease_ttl_s;                /* "lease_ttl_s", default 30 */
    double transfer_timeout_s;         /* "transfer_timeout_s", default 60 */
    double control_timeout_s;          /* "control_timeout_s", default 5 */
    int pull_workers;                  /* "pull_workers", default 4 (concurrent pulls) */
    int pull_queue;                    /* "pull_queue", default 256 (queued pulls) */
    size_t staging_chunk_bytes;        /* "staging_chunk_bytes", default 8 MiB (CUDA staging) */
    int staging_chunks;                /* "staging_chunks", default 4 */
    char fabric_provider[64];          /* "fabric_provider", default "tcp" */
    /* NcclConnector (docs/kvxfer.md) */
    bool nccl_force_network;           /* "nccl_force_network": NCCL send/recv even on one host */
    kvx_ipc_copy_t nccl_ipc_copy;      /* "nccl_ipc_copy": "kernel" (default), "batch", "memcpy" */
    size_t nccl_chunk_bytes;           /* "nccl_chunk_bytes", default 64 MiB (NCCL staging) */
} kvx_config_t;

/* Parse a --kv-transfer-config JSON text into *cfg (caller-owned storage; call
 * kvx_config_cleanup afterwards, also after failure).  Unknown fields, unknown roles
 * or connectors, wrong types and out-of-range values are refused: the return is
 * PD_ERR_INVAL (PD_ERR_UNSUPPORTED for known-but-unsupported connectors) and
 * err (err_len bytes, may be NULL) gets one line naming the field.  vLLM's connector
 * names map to ours (NixlConnector -> UcxConnector, P2pNcclConnector ->
 * NcclConnector), logged once at info level. */
pd_status_t kvx_config_parse(const char *json, kvx_config_t *cfg, char *err, size_t err_len);

/* vLLM's dotted form (`--kv-transfer-config.kv_role kv_both`,
 * `--kv-transfer-config.kv_connector_extra_config.auth_secret s`): set one field of the
 * JSON object text *json_p (NULL or "" = "{}"; replaced by a new malloc'd string).
 * key is the part after "--kv-transfer-config."; value is taken as JSON when it
 * parses as a number, true/false/null, an object or an array, else as a string.
 * PD_ERR_INVAL for an empty key or a non-object document.  Validation happens later
 * in kvx_config_parse. */
pd_status_t kvx_config_json_set(char **json_p, const char *key, const char *value);

/* Defaults for every field (role NONE, connector NONE, random engine id). */
void kvx_config_init(kvx_config_t *cfg);
void kvx_config_cleanup(kvx_config_t *cfg);

const char *kvx_role_name(kvx_role_t role);
const char *kvx_conn_kind_name(kvx_conn_kind_t kind);

/* ---- compatibility (handshake) ---- */
/* What two engines must agree on to exchange blocks.  Every field is compared at the
 * handshake; a mismatch is refused with a message naming the field. */
typedef struct kvx_compat {
    char model[KVX_NAME_MAX];  /* served model name or path */
    char dtype[32];            /* cache dtype ("f16", "bf16", "f32") */
    uint32_t n_layers;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    uint32_t block_size;       /* tokens per block */
    uint32_t layout_id;        /* 1 = [n_layers][2][block_size][n_kv_heads][head_dim] */
} kvx_compat_t;

/* SHA-256 over the fields and KVX_PROTO_VERSION, as 64 hex chars + NUL. */
void kvx_compat_hash(const kvx_compat_t *compat, char out[65]);

/* ---- connector interface (also the ABI of kv_connector_module_path plugins) ---- */
#define KVX_CONN_ABI_VERSION 1u
/* A plugin .so exports this symbol: `const kvx_conn_ops_t *kvx_connector_ops(void);` */
#define KVX_CONN_PLUGIN_SYMBOL "kvx_connector_ops"

typedef struct kvx_region {
    void *base;              /* first byte of block 0 */
    uint32_t n_blocks;
    size_t block_bytes;      /* block b is at base + b * block_bytes */
    kvx_mem_type_t mem_type;
} kvx_region_t;

/* What a consumer learned about a producer's region at the handshake. */
typedef struct kvx_peer_info {
    const char *engine_id;
    const char *host;         /* control-plane host as the consumer reached it */
    uint32_t n_blocks;
    uint64_t block_bytes;
    kvx_mem_type_t mem_type;
    const void *desc;         /* the producer's connector descriptor (opaque bytes) */
    size_t desc_len;
} kvx_peer_info_t;

/* One batch of block reads.  Block ids were checked by the core against both
 * regions before the connector sees them. */
typedef struct kvx_read {
    const char *remote_req_id;
    size_t n;
    const uint32_t *local_ids;
    const uint32_t *remote_ids;
} kvx_read_t;

/* Completion of one read batch: PD_OK, or the first error.  Fired exactly once per
 * accepted read, never from inside ops->read. */
typedef void (*kvx_read_cb_t)(void *arg, pd_status_t status);

typedef struct kvx_conn_ops {
    uint32_t abi_version;  /* KVX_CONN_ABI_VERSION */
    const char *name;
    /* Create the connector state.  cfg stays valid until destroy. */
    pd_status_t (*create)(const kvx_config_t *cfg, void **state_p);
    /* Closes every peer (their reads complete with PD_ERR_CANCELED) then frees. */
    void (*destroy)(void *state);
    /* Register the local region (once); write the descriptor peers need (keys,
     * worker address; at most desc_cap bytes) to desc and its length to *desc_len_p. */
    pd_status_t (*reg)(void *state, const kvx_region_t *region, void *desc, size_t desc_cap,
                       size_t *desc_len_p);
    /* Connect to a producer described by info; *peer_p is opaque. */
    pd_status_t (*peer_connect)(void *state, const kvx_peer_info_t *info, void **peer_p);
    /* Cancel outstanding reads on the peer (callbacks fire with PD_ERR_CANCELED or
     * their real status), wait for them (bounded), then free the peer. */
    void (*peer_close)(void *state, void *peer);
    /* Start reading rd->n blocks.  PD_OK: cb fires exactly once later.  An error:
     * cb never fires. */
    pd_status_t (*read)(void *state, void *peer, const kvx_read_t *rd, kvx_read_cb_t cb,
                        void *arg);
    /* Optional (NULL): producer-side hooks when a lease starts / ends (the shared
     * storage connector writes / removes the blocks' files here). */
    pd_status_t (*lease_export)(void *state, const char *req_id, const uint32_t *ids,
                                size_t n);
    void (*lease_unexport)(void *state, const char *req_id);
    /* Optional (NULL), for two-sided transports (NCCL send/recv): on the consumer,
     * before read, write a blob (at most cap bytes; 0 = none needed) that the core
     * sends to the producer in a SERVE message after read started. */
    pd_status_t (*read_prepare)(void *state, void *peer, const kvx_read_t *rd, void *blob,
                                size_t cap, size_t *len_p);
    /* Optional (NULL), producer side: a consumer holding a live lease asked for ids
     * (checked against the lease and the region) with blob; start sending them
     * (asynchronously: this runs on the control thread). */
    pd_status_t (*serve)(void *state, const void *blob, size_t blob_len, const uint32_t *ids,
                         size_t n);
} kvx_conn_ops_t;

/* Built-in connectors (NULL when not compiled in). */
const kvx_conn_ops_t *kvx_conn_ops_builtin(kvx_conn_kind_t kind);

/* ---- context ---- */
typedef struct kvx_ctx kvx_ctx_t;

/* Create a context.  The config is copied.  Producers (and kv_both) bind the control
 * plane on kv_ip:kv_port at once (PD_ERR_IO when the port is taken).  kv_port 0
 * picks a free port (see kvx_ctx_port).  Errors: PD_ERR_INVAL, PD_ERR_UNSUPPORTED
 * (connector not compiled in), PD_ERR_IO, PD_ERR_NOMEM, plugin errors. */
pd_status_t kvx_ctx_create(const kvx_config_t *cfg, const kvx_compat_t *compat,
                           kvx_ctx_t **ctx_p);
/* Stop the threads, abort every lease (callbacks fire with ABORTED), fail queued
 * pulls (callbacks fire with PD_ERR_CANCELED), close peers, free.  NULL is a no-op. */
void kvx_ctx_destroy(kvx_ctx_t *ctx);

/* Register the one local region (the KV cache).  Must precede leases and pulls.
 * PD_ERR_EXISTS when called twice; PD_ERR_INVAL for zero sizes or an overflowing
 * extent; connector errors (PD_ERR_UNSUPPORTED for CUDA memory it cannot use). */
pd_status_t kvx_ctx_register_region(kvx_ctx_t *ctx, const kvx_region_t *region);

/* The bound control-plane port (useful with kv_port 0); 0 when not listening. */
int kvx_ctx_port(const kvx_ctx_t *ctx);
const char *kvx_ctx_engine_id(const kvx_ctx_t *ctx);
const kvx_config_t *kvx_ctx_config(const kvx_ctx_t *ctx);

/* ---- producer: leases ---- */
typedef enum {
    KVX_LEASE_RELEASED = 0, /* the consumer read the blocks and let go */
    KVX_LEASE_EXPIRED,      /* no heartbeat for ttl */
    KVX_LEASE_ABORTED       /* kvx_lease_abort, a consumer's ABORT, or ctx destroy */
} kvx_lease_end_t;

const char *kvx_lease_end_name(kvx_lease_end_t why);

/* The lease is over: the engine may free the blocks now.  Fired exactly once per
 * created lease, on a kvxfer thread (or inside kvx_lease_abort / kvx_ctx_destroy,
 * which document it).  block_ids is borrowed for the call. */
typedef void (*kvx_lease_cb_t)(void *arg, const char *req_id, const uint32_t *block_ids,
                               size_t n_blocks, kvx_lease_end_t why);

/* Hold block_ids of req_id under a lease of ttl_s seconds (<= 0: the config's
 * lease_ttl_s).  Ids are copied.  Errors (callback never fires): PD_ERR_INVAL (bad id,
 * block id out of the region, n over KVX_MAX_BLOCKS_PER_REQ), PD_ERR_EXISTS (req_id
 * already leased), PD_ERR_NOMEM, connector export errors.  n_blocks 0 is allowed
 * (a full prefix hit on the consumer still releases it). */
pd_status_t kvx_lease_create(kvx_ctx_t *ctx, const char *req_id, const uint32_t *block_ids,
                             size_t n_blocks, double ttl_s, kvx_lease_cb_t cb, void *arg);
/* End a lease now; its callback fires with ABORTED before this returns.
 * PD_ERR_NOT_FOUND when no live lease has that id. */
pd_status_t kvx_lease_abort(kvx_ctx_t *ctx, const char *req_id);
/* Number of live leases / blocks held under them. */
size_t kvx_lease_count(kvx_ctx_t *ctx);

/* ---- consumer: pulls ---- */
typedef struct kvx_pull_desc {
    const char *remote_host;       /* producer's kv_ip (from kv_transfer_params) */
    int remote_port;               /* producer's kv_port */
    const char *remote_engine_id;  /* checked against the handshake when non-NULL */
    const char *remote_req_id;
    const char *req_id;            /* local id, for logs (may be NULL) */
    size_t n;                      /* may be 0: only the release notification */
    const uint32_t *remote_ids;    /* copied */
    const uint32_t *local_ids;     /* copied */
} kvx_pull_desc_t;

/* Result of a pull.  status: PD_OK; PD_ERR_EXPIRED (the lease expired or was
 * released before/during the read: data discarded); PD_ERR_NOT_FOUND (no such lease);
 * PD_ERR_RANGE (ids outside a region); PD_ERR_MISMATCH (handshake refused:
 * incompatible peer); PD_ERR_PERM (authentication failed); PD_ERR_TIMEOUT,
 * PD_ERR_TRANSPORT, PD_ERR_CLOSED (peer or link lost); PD_ERR_CANCELED (ctx
 * destroyed).  message: one line with the cause (borrowed for the call). */
typedef struct kvx_pull_result {
    pd_status_t status;
    const char *message;
    /* true only when a transport could not cancel its reads in time (a frozen peer
     * on a provider without RMA cancel): the local blocks may still be written
     * later, so the engine must not reuse them before kvx_ctx_destroy. */
    bool local_blocks_unsafe;
    uint64_t bytes;
    double seconds;
} kvx_pull_result_t;

typedef void (*kvx_pull_cb_t)(void *arg, const kvx_pull_result_t *result);

/* Queue a pull.  PD_OK: cb fires exactly once, later, on a kvxfer thread, and when it
 * reports failure no transfer writes into local_ids any more.  Errors (cb never
 * fires): PD_ERR_INVAL, PD_ERR_RANGE (local ids outside the region), PD_ERR_BUSY
 * (queue full), PD_ERR_NOMEM, PD_ERR_CLOSED (ctx stopping). */
pd_status_t kvx_pull(kvx_ctx_t *ctx, const kvx_pull_desc_t *desc, kvx_pull_cb_t cb,
                     void *arg);

/* Blocking convenience: kvx_pull and wait for its result (message copied into msg,
 * msg_len bytes, may be NULL). */
pd_status_t kvx_pull_sync(kvx_ctx_t *ctx, const kvx_pull_desc_t *desc, char *msg,
                          size_t msg_len);

/* Ask the producer to end a lease without reading it (the decode request was
 * aborted).  Blocking with the control timeout. */
pd_status_t kvx_abort_remote(kvx_ctx_t *ctx, const char *remote_host, int remote_port,
                             const char *remote_req_id);

/* ---- counters ---- */
typedef struct kvx_stats {
    uint64_t bytes;               /* pulled into this engine */
    uint64_t transfers;           /* successful pulls */
    uint64_t blocks;              /* blocks pulled */
    double xfer_seconds;          /* total time in successful pulls */
    uint64_t failures;            /* failed pulls */
    uint64_t notifications_failed;/* releases/aborts the producer did not acknowledge */
    uint64_t leases_created;
    uint64_t leases_released;
    uint64_t lease_expiries;
    uint64_t leases_aborted;
    uint64_t blocks_held;         /* blocks under live leases now */
    uint64_t reads_refused;       /* acquires refused (expired/unknown/out of lease) */
    uint64_t auth_failures;       /* control messages dropped for bad auth */
    uint64_t handshakes_refused;
} kvx_stats_t;

void kvx_ctx_stats(kvx_ctx_t *ctx, kvx_stats_t *stats_p);

/* Append the counters in Prometheus text format to out, with vLLM's
 * NixL metric names where the meaning matches (vllm:nixl_bytes_transferred, ...)
 * and pdserve:kv_* for the rest; model_name becomes the model_name label. */
pd_status_t kvx_stats_prometheus(const kvx_stats_t *stats, const char *model_name, pd_buf_t *out);

#ifdef __cplusplus
}
#endif

#endif /* KVX_H */
