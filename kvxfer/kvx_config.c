/*
 * kvx_config.c - --kv-transfer-config parsing and validation.
 *
 * Accepts every field of vLLM's KVTransferConfig with vLLM's defaults and refuses
 * anything else with one line naming the field.  Strings and numbers are copied into
 * caller-owned kvx_config_t storage; the extra config is kept as JSON text and its
 * known keys are read into typed fields.
 */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "kvx.h"
#include "pd_log.h"
#include "pd_util.h"

/* ---- names ---- */
const char *kvx_role_name(kvx_role_t role)
{
    switch (role) {
    case KVX_ROLE_PRODUCER: return "kv_producer";
    case KVX_ROLE_CONSUMER: return "kv_consumer";
    case KVX_ROLE_BOTH:     return "kv_both";
    default:                return "none";
    }
}

const char *kvx_conn_kind_name(kvx_conn_kind_t kind)
{
    switch (kind) {
    case KVX_CONN_UCX:            return "UcxConnector";
    case KVX_CONN_LIBFABRIC:      return "LibfabricConnector";
    case KVX_CONN_NCCL:           return "NcclConnector";
    case KVX_CONN_SHARED_STORAGE: return "SharedStorageConnector";
    case KVX_CONN_MODULE:         return "module";
    default:                      return "none";
    }
}

/* Connector names: ours, vLLM's that carry over, and vLLM's we do not have yet. */
static const struct {
    const char *name;
    kvx_conn_kind_t kind;
    int alias; /* 1: a vLLM name mapped onto ours (logged once) */
} conn_names[] = {
    {"UcxConnector", KVX_CONN_UCX, 0},
    {"NixlConnector", KVX_CONN_UCX, 1},
    {"LibfabricConnector", KVX_CONN_LIBFABRIC, 0},
    {"NcclConnector", KVX_CONN_NCCL, 0},
    {"P2pNcclConnector", KVX_CONN_NCCL, 1},
    {"SharedStorageConnector", KVX_CONN_SHARED_STORAGE, 0},
};

static const char *const unsupported_conns[] = {
    "LMCacheConnectorV1", "LMCacheConnector", "MooncakeConnector", "MooncakeStoreConnector",
    "MultiConnector", "OffloadingConnector", "PyNcclConnector", "LMCacheMPConnector",
};

static const char *const known_fields[] = {
    "kv_connector", "engine_id", "kv_role", "kv_rank", "kv_parallel_size", "kv_ip",
    "kv_port", "kv_buffer_size", "kv_buffer_device", "kv_connector_extra_config",
    "kv_connector_module_path", "kv_load_failure_policy",
};

static const char *const known_extra[] = {
    "auth_secret", "shared_storage_path", "lease_ttl_s", "transfer_timeout_s",
    "control_timeout_s", "pull_workers", "pull_queue", "staging_chunk_bytes",
    "staging_chunks", "fabric_provider", "nccl_force_network", "nccl_ipc_copy",
    "nccl_chunk_bytes",
};

static atomic_int alias_logged_g;

/* ---- helpers ---- */
static pd_status_t fail(char *err, size_t err_len, pd_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static pd_status_t fail(char *err, size_t err_len, pd_status_t st, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* the caller that takes the message reports it (the node: one line naming
     * --kv-transfer-config); log it only when nobody else will */
    if (err != NULL && err_len > 0)
        snprintf(err, err_len, "%s", line);
    else
        PD_LOG_ERR("kv-transfer-config: %s", line);
    return st;
}

/* An integer-valued JSON number within [lo, hi]. */
static int get_int(const cJSON *item, long lo, long hi, long *out_p)
{
    double v;

    if (!cJSON_IsNumber(item))
        return 0;
    v = item->valuedouble;
    if (!isfinite(v) || v != floor(v) || v < (double)lo || v > (double)hi)
        return 0;
    *out_p = (long)v;
    return 1;
}

static int copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);

    if (n >= cap)
        return 0;
    memcpy(dst, src, n + 1);
    return 1;
}

/* Engine ids and hosts: printable, no spaces or quotes (they travel in logs and
 * JSON and ZeroMQ endpoints). */
static int safe_token(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!(isalnum(c) || c == '-' || c == '_' || c == '.' || c == ':' || c == '%'))
            return 0;
    }
    return 1;
}

static void random_uuid(char out[37])
{
    char hex[33];

    pd_random_hex_id(hex);
    /* version-4 layout; the randomness is what matters, not the variant bits */
    snprintf(out, 37, "%.8s-%.4s-4%.3s-a%.3s-%.12s", hex, hex + 8, hex + 13, hex + 17, hex + 20);
}

void kvx_config_init(kvx_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->connector = KVX_CONN_NONE;
    random_uuid(cfg->engine_id);
    cfg->role = KVX_ROLE_NONE;
    cfg->kv_rank = -1;
    cfg->kv_parallel_size = 1;
    snprintf(cfg->kv_ip, sizeof(cfg->kv_ip), "127.0.0.1");
    cfg->kv_port = KVX_DEFAULT_PORT;
    cfg->kv_buffer_size = 1e9;
    cfg->kv_buffer_device = KVX_MEM_CUDA;
    cfg->load_failure_policy = KVX_FAIL_RECOMPUTE;
    cfg->lease_ttl_s = 30.0;
    cfg->transfer_timeout_s = 60.0;
    cfg->control_timeout_s = 5.0;
    cfg->pull_workers = 4;
    cfg->pull_queue = 256;
    cfg->staging_chunk_bytes = (size_t)8 << 20;
    cfg->staging_chunks = 4;
    snprintf(cfg->fabric_provider, sizeof(cfg->fabric_provider), "tcp");
    cfg->nccl_force_network = false;
    cfg->nccl_ipc_copy = KVX_IPC_COPY_KERNEL;
    cfg->nccl_chunk_bytes = (size_t)64 << 20;
}

void kvx_config_cleanup(kvx_config_t *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->extra_config_json);
    free(cfg->module_path);
    if (cfg->auth_secret != NULL) {
        /* the secret should not linger in freed heap memory */
        volatile char *p = cfg->auth_secret;
        while (*p)
            *p++ = 0;
        free(cfg->auth_secret);
    }
    free(cfg->shared_storage_path);
    cfg->extra_config_json = cfg->module_path = cfg->auth_secret = NULL;
    cfg->shared_storage_path = NULL;
}

static pd_status_t parse_positive(const cJSON *v, const char *key, double lo, double hi,
                                  double *out_p, char *err, size_t err_len)
{
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return fail(err, err_len, PD_ERR_INVAL,
                    "kv_connector_extra_config.%s must be a number in [%g, %g]", key, lo, hi);
    *out_p = v->valuedouble;
    return PD_OK;
}

static pd_status_t parse_extra(kvx_config_t *cfg, const cJSON *extra, char *err, size_t err_len)
{
    const cJSON *v;
    pd_status_t st;
    long n;
    double d = 0;

    cJSON_ArrayForEach(v, extra) {
        const char *key = v->string;
        size_t i;
        int known = 0;

        for (i = 0; i < PD_ARRAY_SIZE(known_extra); i++)
            known |= strcmp(key, known_extra[i]) == 0;
        if (!known) {
            /* connector-specific keys of other systems (nixl "backends", ...) are not
             * errors: they are ignored loudly */
            PD_LOG_WARN("kv-transfer-config: kv_connector_extra_config.%s is not used by %s "
                        "(ignored)", key, kvx_conn_kind_name(cfg->connector));
            continue;
        }
        if (strcmp(key, "auth_secret") == 0 || strcmp(key, "shared_storage_path") == 0 ||
            strcmp(key, "fabric_provider") == 0) {
            if (!cJSON_IsString(v) || v->valuestring[0] == '\0')
                return fail(err, err_len, PD_ERR_INVAL,
                            "kv_connector_extra_config.%s must be a non-empty string", key);
            if (strcmp(key, "fabric_provider") == 0) {
                if (!safe_token(v->valuestring) ||
                    !copy_str(cfg->fabric_provider, sizeof(cfg->fabric_provider), v->valuestring))
                    return fail(err, err_len, PD_ERR_INVAL,
                                "kv_connector_extra_config.fabric_provider is not a provider name");
                continue;
            }
            char **dst = strcmp(key, "auth_secret") == 0 ? &cfg->auth_secret
                                                         : &cfg->shared_storage_path;
            free(*dst);
            *dst = strdup(v->valuestring);
            if (*dst == NULL)
                return PD_ERR_NOMEM;
        } else if (strcmp(key, "lease_ttl_s") == 0) {
            if ((st = parse_positive(v, key, 0.01, 86400, &cfg->lease_ttl_s, err, err_len)))
                return st;
        } else if (strcmp(key, "transfer_timeout_s") == 0) {
            if ((st = parse_positive(v, key, 0.01, 86400, &cfg->transfer_timeout_s, err, err_len)))
                return st;
        } else if (strcmp(key, "control_timeout_s") == 0) {
            if ((st = parse_positive(v, key, 0.01, 3600, &cfg->control_timeout_s, err, err_len)))
                return st;
        } else if (strcmp(key, "pull_workers") == 0) {
            if (!get_int(v, 1, 64, &n))
                return fail(err, err_len, PD_ERR_INVAL,
                            "kv_connector_extra_config.pull_workers must be an integer in [1, 64]");
            cfg->pull_workers = (int)n;
        } else if (strcmp(key, "pull_queue") == 0) {
            if (!get_int(v, 1, 65536, &n))
                return fail(err, err_len, PD_ERR_INVAL,
                            "kv_connector_extra_config.pull_queue must be an integer in [1, 65536]");
            cfg->pull_queue = (int)n;
        } else if (strcmp(key, "staging_chunk_bytes") == 0) {
            if ((st = parse_positive(v, key, 4096, 1024.0 * 1024 * 1024, &d, err, err_len)))
                return st;
            cfg->staging_chunk_bytes = (size_t)d;
        } else if (strcmp(key, "staging_chunks") == 0) {
            if (!get_int(v, 1, 64, &n))
                return fail(err, err_len, PD_ERR_INVAL,
                            "kv_connector_extra_config.staging_chunks must be an integer in [1, 64]");
            cfg->staging_chunks = (int)n;
        } else if (strcmp(key, "nccl_force_network") == 0) {
            if (!cJSON_IsBool(v))
                return fail(err, err_len, PD_ERR_INVAL,
                            "kv_connector_extra_config.nccl_force_network must be true or false");
            cfg->nccl_force_network = cJSON_IsTrue(v);
        } else if (strcmp(key, "nccl_ipc_copy") == 0) {
            static const char *const modes[] = {"kernel", "batch", "memcpy"};
            int found = -1;
            for (i = 0; cJSON_IsString(v) && i < PD_ARRAY_SIZE(modes); i++)
                if (strcmp(v->valuestring, modes[i]) == 0)
                    found = (int)i;
            if (found < 0)
                return fail(err, err_len, PD_ERR_INVAL,
                            "kv_connector_extra_config.nccl_ipc_copy must be \"kernel\", "
                            "\"batch\" or \"memcpy\"");
            cfg->nccl_ipc_copy = (kvx_ipc_copy_t)found;
        } else if (strcmp(key, "nccl_chunk_bytes") == 0) {
            if ((st = parse_positive(v, key, 65536, 1024.0 * 1024 * 1024, &d, err, err_len)))
                return st;
            cfg->nccl_chunk_bytes = (size_t)d;
        }
    }
    return PD_OK;
}

static pd_status_t parse_connector(kvx_config_t *cfg, const char *name, char *err, size_t err_len)
{
    size_t i;

    if (!copy_str(cfg->connector_name, sizeof(cfg->connector_name), name) || name[0] == '\0')
        return fail(err, err_len, PD_ERR_INVAL, "kv_connector: bad length");
    if (cfg->module_path != NULL) {
        cfg->connector = KVX_CONN_MODULE;
        return PD_OK;
    }
    for (i = 0; i < PD_ARRAY_SIZE(conn_names); i++) {
        if (strcmp(name, conn_names[i].name) != 0)
            continue;
        cfg->connector = conn_names[i].kind;
        if (conn_names[i].alias && atomic_exchange(&alias_logged_g, 1) == 0)
            PD_LOG_INFO("kv-transfer-config: kv_connector %s is served by pdserve's %s", name,
                        kvx_conn_kind_name(conn_names[i].kind));
        return PD_OK;
    }
    for (i = 0; i < PD_ARRAY_SIZE(unsupported_conns); i++)
        if (strcmp(name, unsupported_conns[i]) == 0)
            return fail(err, err_len, PD_ERR_UNSUPPORTED,
                        "kv_connector \"%s\" is not supported yet (use UcxConnector, "
                        "LibfabricConnector, NcclConnector or SharedStorageConnector)", name);
    return fail(err, err_len, PD_ERR_INVAL,
                "unknown kv_connector \"%s\" (known: UcxConnector/NixlConnector, "
                "LibfabricConnector, NcclConnector/P2pNcclConnector, SharedStorageConnector; "
                "or set kv_connector_module_path)", name);
}

pd_status_t kvx_config_parse(const char *json, kvx_config_t *cfg, char *err, size_t err_len)
{
    cJSON *root = NULL;
    const cJSON *v;
    const char *conn_name = NULL;
    pd_status_t st = PD_OK;
    long n;

    kvx_config_init(cfg);
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    if (json == NULL)
        return fail(err, err_len, PD_ERR_INVAL, "empty");
    root = cJSON_Parse(json);
    if (root == NULL)
        return fail(err, err_len, PD_ERR_INVAL, "not valid JSON (near \"%.20s\")",
                    cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : "");
    if (!cJSON_IsObject(root)) {
        st = fail(err, err_len, PD_ERR_INVAL, "must be a JSON object");
        goto out_free_root;
    }

    cJSON_ArrayForEach(v, root) {
        size_t i;
        int known = 0;

        for (i = 0; i < PD_ARRAY_SIZE(known_fields); i++)
            known |= strcmp(v->string, known_fields[i]) == 0;
        if (!known) {
            st = fail(err, err_len, PD_ERR_INVAL, "unknown field \"%.64s\"", v->string);
            goto out_free_root;
        }
        /* a duplicate key would make the meaning depend on the parser */
        for (const cJSON *w = v->next; w != NULL; w = w->next)
            if (strcmp(w->string, v->string) == 0) {
                st = fail(err, err_len, PD_ERR_INVAL, "field \"%s\" given twice", v->string);
                goto out_free_root;
            }
    }

#define STR_FIELD(key)                                                                  \
    v = cJSON_GetObjectItemCaseSensitive(root, key);                                    \
    if (v != NULL && !cJSON_IsNull(v) && !cJSON_IsString(v)) {                          \
        st = fail(err, err_len, PD_ERR_INVAL, key " must be a string");                 \
        goto out_free_root;                                                             \
    }                                                                                   \
    if (v != NULL && cJSON_IsString(v))

    STR_FIELD("kv_connector_module_path") {
        if (v->valuestring[0] == '\0') {
            st = fail(err, err_len, PD_ERR_INVAL, "kv_connector_module_path is empty");
            goto out_free_root;
        }
        cfg->module_path = strdup(v->valuestring);
        if (cfg->module_path == NULL) {
            st = PD_ERR_NOMEM;
            goto out_free_root;
        }
    }
    STR_FIELD("kv_connector") {
        conn_name = v->valuestring;
        if ((st = parse_connector(cfg, conn_name, err, err_len)) != PD_OK)
            goto out_free_root;
    }
    if (cfg->module_path != NULL && conn_name == NULL) {
        st = fail(err, err_len, PD_ERR_INVAL,
                  "kv_connector_module_path needs kv_connector (the connector's name)");
        goto out_free_root;
    }
    STR_FIELD("kv_role") {
        const char *r = v->valuestring;
        if (strcmp(r, "kv_producer") == 0)
            cfg->role = KVX_ROLE_PRODUCER;
        else if (strcmp(r, "kv_consumer") == 0)
            cfg->role = KVX_ROLE_CONSUMER;
        else if (strcmp(r, "kv_both") == 0)
            cfg->role = KVX_ROLE_BOTH;
        else {
            st = fail(err, err_len, PD_ERR_INVAL,
                      "unknown kv_role \"%.64s\" (kv_producer, kv_consumer or kv_both)", r);
            goto out_free_root;
        }
    }
    if (cfg->connector != KVX_CONN_NONE && cfg->role == KVX_ROLE_NONE) {
        st = fail(err, err_len, PD_ERR_INVAL, "kv_role is required when kv_connector is set");
        goto out_free_root;
    }
    STR_FIELD("engine_id") {
        if (!safe_token(v->valuestring) ||
            !copy_str(cfg->engine_id, sizeof(cfg->engine_id), v->valuestring)) {
            st = fail(err, err_len, PD_ERR_INVAL,
                      "engine_id must be 1-%d characters of [A-Za-z0-9._:-]", KVX_ID_MAX - 1);
            goto out_free_root;
        }
    }
    STR_FIELD("kv_ip") {
        if (!safe_token(v->valuestring) ||
            !copy_str(cfg->kv_ip, sizeof(cfg->kv_ip), v->valuestring)) {
            st = fail(err, err_len, PD_ERR_INVAL, "kv_ip \"%.64s\" is not an address",
                      v->valuestring);
            goto out_free_root;
        }
    }
    STR_FIELD("kv_buffer_device") {
        if (strcmp(v->valuestring, "cuda") == 0)
            cfg->kv_buffer_device = KVX_MEM_CUDA;
        else if (strcmp(v->valuestring, "cpu") == 0)
            cfg->kv_buffer_device = KVX_MEM_HOST;
        else {
            st = fail(err, err_len, PD_ERR_INVAL, "kv_buffer_device must be \"cuda\" or \"cpu\"");
            goto out_free_root;
        }
    }
    STR_FIELD("kv_load_failure_policy") {
        if (strcmp(v->valuestring, "recompute") == 0)
            cfg->load_failure_policy = KVX_FAIL_RECOMPUTE;
        else if (strcmp(v->valuestring, "fail") == 0)
            cfg->load_failure_policy = KVX_FAIL_FAIL;
        else {
            st = fail(err, err_len, PD_ERR_INVAL,
                      "kv_load_failure_policy must be \"recompute\" or \"fail\"");
            goto out_free_root;
        }
    }
#undef STR_FIELD

    v = cJSON_GetObjectItemCaseSensitive(root, "kv_port");
    if (v != NULL && !cJSON_IsNull(v)) {
        /* 0 = let the system pick (tests); kvx_ctx_port tells which */
        if (!get_int(v, 0, 65535, &n)) {
            st = fail(err, err_len, PD_ERR_INVAL, "kv_port must be an integer in [0, 65535]");
            goto out_free_root;
        }
        cfg->kv_port = (int)n;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "kv_rank");
    if (v != NULL && !cJSON_IsNull(v)) {
        if (!get_int(v, 0, 1 << 20, &n)) {
            st = fail(err, err_len, PD_ERR_INVAL, "kv_rank must be a non-negative integer");
            goto out_free_root;
        }
        cfg->kv_rank = (int)n;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "kv_parallel_size");
    if (v != NULL && !cJSON_IsNull(v)) {
        if (!get_int(v, 1, 1 << 20, &n)) {
            st = fail(err, err_len, PD_ERR_INVAL, "kv_parallel_size must be an integer >= 1");
            goto out_free_root;
        }
        cfg->kv_parallel_size = (int)n;
    }
    if (cfg->kv_rank >= 0 && cfg->kv_rank >= cfg->kv_parallel_size) {
        st = fail(err, err_len, PD_ERR_INVAL, "kv_rank %d must be below kv_parallel_size %d",
                  cfg->kv_rank, cfg->kv_parallel_size);
        goto out_free_root;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "kv_buffer_size");
    if (v != NULL && !cJSON_IsNull(v)) {
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble <= 0 ||
            v->valuedouble > 1e15) {
            st = fail(err, err_len, PD_ERR_INVAL, "kv_buffer_size must be a positive number of bytes");
            goto out_free_root;
        }
        cfg->kv_buffer_size = v->valuedouble;
    }

    v = cJSON_GetObjectItemCaseSensitive(root, "kv_connector_extra_config");
    if (v != NULL && !cJSON_IsNull(v)) {
        if (!cJSON_IsObject(v)) {
            st = fail(err, err_len, PD_ERR_INVAL, "kv_connector_extra_config must be an object");
            goto out_free_root;
        }
        if ((st = parse_extra(cfg, v, err, err_len)) != PD_OK)
            goto out_free_root;
        cfg->extra_config_json = cJSON_PrintUnformatted(v);
    } else {
        cfg->extra_config_json = strdup("{}");
    }
    if (cfg->extra_config_json == NULL) {
        st = PD_ERR_NOMEM;
        goto out_free_root;
    }
    if (cfg->auth_secret == NULL) {
        const char *env = getenv("PDSERVE_KV_SECRET");
        if (env != NULL && env[0] != '\0' && (cfg->auth_secret = strdup(env)) == NULL) {
            st = PD_ERR_NOMEM;
            goto out_free_root;
        }
    }
    if (cfg->connector == KVX_CONN_SHARED_STORAGE && cfg->shared_storage_path == NULL &&
        (cfg->shared_storage_path = strdup("/tmp/pdserve_kv")) == NULL) {
        st = PD_ERR_NOMEM;
        goto out_free_root;
    }

out_free_root:
    cJSON_Delete(root);
    return st;
}

/* ---- dotted form ---- */
pd_status_t kvx_config_json_set(char **json_p, const char *key, const char *value)
{
    cJSON *root, *obj, *val;
    char part[KVX_NAME_MAX];
    const char *p = key, *dot;
    char *text;

    if (json_p == NULL || key == NULL || key[0] == '\0' || value == NULL)
        return PD_ERR_INVAL;
    root = (*json_p != NULL && (*json_p)[0] != '\0') ? cJSON_Parse(*json_p) : cJSON_CreateObject();
    if (root == NULL || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        PD_LOG_ERR("kv-transfer-config: not a JSON object before setting %s", key);
        return PD_ERR_INVAL;
    }
    obj = root;
    /* walk/create the intermediate objects */
    while ((dot = strchr(p, '.')) != NULL) {
        cJSON *child;
        size_t n = (size_t)(dot - p);
        if (n == 0 || n >= sizeof(part)) {
            cJSON_Delete(root);
            return PD_ERR_INVAL;
        }
        memcpy(part, p, n);
        part[n] = '\0';
        child = cJSON_GetObjectItemCaseSensitive(obj, part);
        if (child == NULL) {
            child = cJSON_AddObjectToObject(obj, part);
        } else if (!cJSON_IsObject(child)) {
            cJSON_Delete(root);
            PD_LOG_ERR("kv-transfer-config: %s is not an object", part);
            return PD_ERR_INVAL;
        }
        if (child == NULL) {
            cJSON_Delete(root);
            return PD_ERR_NOMEM;
        }
        obj = child;
        p = dot + 1;
    }
    if (*p == '\0' || strlen(p) >= sizeof(part)) {
        cJSON_Delete(root);
        return PD_ERR_INVAL;
    }
    val = cJSON_Parse(value);
    if (val == NULL || cJSON_IsString(val))
        val = (cJSON_Delete(val), cJSON_CreateString(value));
    if (val == NULL) {
        cJSON_Delete(root);
        return PD_ERR_NOMEM;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(obj, p);
    cJSON_AddItemToObject(obj, p, val);
    text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (text == NULL)
        return PD_ERR_NOMEM;
    free(*json_p);
    *json_p = text;
    return PD_OK;
}
