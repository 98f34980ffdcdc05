/*
 * eng_server.c - the node: command-line options -> engine + HTTP server, the plain
 * endpoints (/health, /ping, /version, /load, /v1/models, /tokenize, /detokenize,
 * /metrics, /openapi.json, /docs), the periodic stats line, SIGTERM drain, and the
 * --generate mode.
 */
#include "eng_server.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "eng_disagg.h"
#include "eng_server_int.h"
#include "eng_template.h"
#include "eng_tokenizer.h"
#include "pd_json.h"
#include "pd_log.h"
#include "pd_register.h"
#include "pd_util.h"

/* ---- options -> engine configuration ---- */

/* The default model alias resolves to the GGUF that scripts/setup.sh fetched. */
static char *default_model_path(const char *model)
{
    const char *cache = getenv("PDSERVE_CACHE");
    const char *home = getenv("HOME");
    char path[4096];
    struct stat st;

    if (strcmp(model, "SmolLM2-135M-Instruct") != 0 || stat(model, &st) == 0)
        return NULL;
    if (cache && *cache)
        snprintf(path, sizeof(path), "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
    else
        snprintf(path, sizeof(path), "%s/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "");
    return strdup(path);
}

static double env_gib(const char *name)
{
    const char *v = getenv(name);
    char *end;
    double d;
    if (v == NULL || *v == '\0')
        return 0;
    d = strtod(v, &end);
    return (*end == '\0' && d > 0 && isfinite(d)) ? d : 0;
}

typedef struct owned_strs {
    char *model, *hf_overrides, *rope_scaling, *gen_override;
} owned_strs_t;

static pd_status_t make_engine_cfg(pd_node_role_t role, const pd_serve_args_t *a, eng_engine_cfg_t *c,
                                   owned_strs_t *own)
{
    double gib;
    eng_engine_cfg_init(c);
    own->model = default_model_path(a->model);
    c->load.model = own->model ? own->model : a->model;
    c->load.tokenizer = a->tokenizer;
    c->load.revision = a->revision;
    c->load.tokenizer_revision = a->tokenizer_revision;
    c->load.download_dir = a->download_dir;
    c->load.load_format = strcmp(a->load_format, "auto") == 0 ? NULL : a->load_format;
    c->load.config_format = strcmp(a->config_format, "auto") == 0 ? NULL : a->config_format;
    c->load.dtype = strcmp(a->dtype, "auto") == 0 ? NULL : a->dtype;
    if (a->hf_overrides)
        c->load.hf_overrides = own->hf_overrides = cJSON_PrintUnformatted(a->hf_overrides);
    if (a->rope_scaling)
        c->load.rope_scaling = own->rope_scaling = cJSON_PrintUnformatted(a->rope_scaling);
    c->load.rope_theta = a->set[PD_SERVE_OPT_rope_theta] ? a->rope_theta : 0;
    c->load.max_model_len = a->set[PD_SERVE_OPT_max_model_len] ? a->max_model_len : 0;
    c->load.disable_sliding_window = a->disable_sliding_window;
    c->load.ignore_patterns = (const char *const *)a->ignore_patterns.v;
    c->load.n_ignore_patterns = a->ignore_patterns.n;
    c->load.seed = (uint64_t)a->seed;
    /* float32 asks for exact numerics: dequantize at load; otherwise quantized weights
     * stay quantized and use the int8 dot products */
    c->load.keep_quantized = !(strcmp(a->dtype, "float32") == 0 || strcmp(a->dtype, "float") == 0);
    c->exact_matmul = !c->load.keep_quantized;
    /* --tokenizer is resolved by the model loader (c->load.tokenizer, with
     * --tokenizer-revision and --download-dir; a directory, a tokenizer.json or a .gguf):
     * no second lookup through tokenizer_override */
    c->generation_config = a->generation_config;
    if (a->override_generation_config)
        c->override_generation_config = own->gen_override = cJSON_PrintUnformatted(a->override_generation_config);
    c->skip_tokenizer_init = a->skip_tokenizer_init;
    c->backend = strcmp(a->device, "auto") == 0 ? "auto" : a->device;
    c->gpu_memory_utilization = a->gpu_memory_utilization;
    c->n_threads = (int)a->cpu_threads;
    c->block_size = a->set[PD_SERVE_OPT_block_size] ? (int)a->block_size : 16;
    c->num_blocks = a->set[PD_SERVE_OPT_num_gpu_blocks_override] ? a->num_gpu_blocks_override : 0;
    gib = a->set[PD_SERVE_OPT_cpu_kvcache_space] ? a->cpu_kvcache_space : 0;
    if (gib <= 0)
        gib = env_gib("PDSERVE_CPU_KVCACHE_SPACE");
    if (gib <= 0)
        gib = env_gib("VLLM_CPU_KVCACHE_SPACE");
    if (gib <= 0)
        gib = 4;
    c->kv_cache_bytes = (uint64_t)(gib * (double)(1ull << 30));
    c->max_num_seqs = a->set[PD_SERVE_OPT_max_num_seqs] ? (int)a->max_num_seqs : 256;
    /* --max-queued-requests: unset, a queue a few engine batches deep (a request admitted
     * at its end waits about four full batches), never under 256 so that small
     * --max-num-seqs values keep a useful queue; 0 lifts the bound */
    if (a->set[PD_SERVE_OPT_max_queued_requests]) {
        if (a->max_queued_requests < 0 || a->max_queued_requests > (1 << 30)) {
            fprintf(stderr, "error: --max-queued-requests: %lld is out of range (0 to %d)\n",
                    (long long)a->max_queued_requests, 1 << 30);
            return PD_ERR_RANGE;
        }
        c->max_queued_seqs = (int)a->max_queued_requests;
    } else {
        c->max_queued_seqs = c->max_num_seqs > 64 ? 4 * c->max_num_seqs : 256;
    }
    c->max_num_batched_tokens = a->set[PD_SERVE_OPT_max_num_batched_tokens] ? (int)a->max_num_batched_tokens
                                : role == PD_ROLE_PREFILL ? 16384 : 8192;
    c->enable_chunked_prefill = a->set[PD_SERVE_OPT_enable_chunked_prefill] ? a->enable_chunked_prefill : true;
    c->enable_prefix_caching = a->enable_prefix_caching;
    c->priority_policy = strcmp(a->scheduling_policy, "priority") == 0;
    c->preempt_swap = a->preemption_mode && strcmp(a->preemption_mode, "swap") == 0;
    c->swap_space_gib = a->swap_space;
    c->scheduler_delay_factor = a->scheduler_delay_factor;
    c->seed = (uint64_t)a->seed;
    c->max_logprobs = (int)a->max_logprobs;
    /* CUDA graphs (docs/cuda.md): on unless --enforce-eager, -O0 / {"level": 0} or
     * {"cudagraph_mode": "NONE"}; {"max_capture_size": n} sets the largest captured batch size (up to 2048) */
    c->max_seq_len_to_capture = (int)a->max_seq_len_to_capture;
    /* a prefill node runs no decode step in a cluster (the decode node does them): its
     * graphs, for when it serves on its own, are captured at first use, so it starts
     * without the 10-20 s of start-up capture */
    c->graph_capture_lazy = role == PD_ROLE_PREFILL;
    c->async_output = a->disable_async_output_proc ? 0 : 1;
    if (a->enforce_eager)
        c->cuda_graph_max_bs = 0;
    if (a->compilation_config) {
        const cJSON *lv = cJSON_GetObjectItemCaseSensitive(a->compilation_config, "level");
        const cJSON *mode = cJSON_GetObjectItemCaseSensitive(a->compilation_config, "cudagraph_mode");
        const cJSON *mcs = cJSON_GetObjectItemCaseSensitive(a->compilation_config, "max_capture_size");
        if (cJSON_IsNumber(lv) && lv->valuedouble == 0)
            c->cuda_graph_max_bs = 0;
        if (cJSON_IsString(mode) && strcmp(mode->valuestring, "NONE") == 0)
            c->cuda_graph_max_bs = 0;
        if (cJSON_IsNumber(mcs) && mcs->valuedouble >= 0 && mcs->valuedouble < 1e6 && c->cuda_graph_max_bs > 0)
            c->cuda_graph_max_bs = (int)mcs->valuedouble;
    }
    /* fp8 caches: the engine refuses them on the CPU backend once it knows the backend */
    c->kv_cache_dtype = a->kv_cache_dtype;
    c->calculate_kv_scales = a->calculate_kv_scales;
    /* --quantization fp8: the engine refuses it on the CPU backend, like the fp8 cache */
    c->fp8_weights = a->quantization != NULL && strcmp(a->quantization, "fp8") == 0;
    return PD_OK;
}

/* ---- plain endpoints ---- */

static void respond_cjson(pd_http_req_t *req, unsigned status, cJSON *j)
{
    pd_http_respond_json(req, status, j, NULL);
    cJSON_Delete(j);
}

static void h_health(pd_http_req_t *req, void *user)
{
    eng_server_t *srv = user;
    eng_engine_stats_t st;
    eng_engine_get_stats(srv->engine, &st);
    if (pd_http_server_draining(srv->http) || st.dead)
        pd_http_respond_error(req, 503, NULL, st.dead ? "the engine is dead" : "the server is shutting down", NULL, NULL);
    else
        pd_http_respond_data(req, 200, "application/json", "", 0);
}

static void h_ping(pd_http_req_t *req, void *user) { h_health(req, user); }

static void h_version(pd_http_req_t *req, void *user)
{
    (void)user;
    pd_http_respond_json(req, 200, NULL, "{\"version\":\"" PD_VERSION "\",\"git\":\"" PD_GIT_REV "\"}");
}

static void h_load(pd_http_req_t *req, void *user)
{
    eng_server_t *srv = user;
    char buf[64];
    snprintf(buf, sizeof(buf), "{\"server_load\":%d}", __atomic_load_n(&srv->inflight, __ATOMIC_RELAXED));
    pd_http_respond_json(req, 200, NULL, buf);
}

static void h_models(pd_http_req_t *req, void *user)
{
    eng_server_t *srv = user;
    cJSON *r = cJSON_CreateObject(), *data;
    cJSON_AddStringToObject(r, "object", "list");
    data = cJSON_AddArrayToObject(r, "data");
    for (int i = 0; i < srv->n_names; i++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "id", srv->names[i]);
        cJSON_AddStringToObject(m, "object", "model");
        cJSON_AddNumberToObject(m, "created", (double)srv->created);
        cJSON_AddStringToObject(m, "owned_by", "pdserve");
        cJSON_AddStringToObject(m, "root", srv->model_path);
        cJSON_AddNullToObject(m, "parent");
        cJSON_AddNumberToObject(m, "max_model_len", (double)eng_engine_max_model_len(srv->engine));
        cJSON_AddItemToArray(data, m);
    }
    respond_cjson(req, 200, r);
}

static void h_tokenize(pd_http_req_t *req, void *user)
{
    eng_server_t *srv = user;
    size_t len;
    const char *body = pd_http_req_body(req, &len);
    cJSON *root = NULL, *r;
    pd_json_err_t je;
    eng_oai_err_t err = {0};
    int32_t *ids = NULL;
    int n = 0;
    const char *model = NULL;

    if (pd_json_parse(body, len, 0, 1, &root, &je) != PD_OK) {
        pd_http_respond_error(req, 400, NULL, je.message, je.param[0] ? je.param : NULL, NULL);
        return;
    }
    if (pd_json_present(root, "model") && pd_json_get_string(root, "model", 1024, &model, &je) != PD_OK) {
        pd_http_respond_error(req, 400, NULL, je.message, "model", NULL);
        goto out;
    }
    if (!eng_server_model_ok(srv, model)) {
        char msg[300];
        snprintf(msg, sizeof(msg), "The model `%.200s` does not exist.", model);
        pd_http_respond_error(req, 404, NULL, msg, "model", NULL);
        goto out;
    }
    if (pd_json_present(root, "messages")) {
        eng_oai_req_t r2;
        if (eng_oai_parse(ENG_OAI_CHAT, body, len, &srv->limits, &r2, &err) != PD_OK) {
            eng_server_send_error(req, &err);
            goto out;
        }
        if (eng_server_chat_prompt(srv, &r2, &ids, &n, &err) != PD_OK) {
            eng_oai_req_cleanup(&r2);
            eng_server_send_error(req, &err);
            goto out;
        }
        eng_oai_req_cleanup(&r2);
    } else {
        const char *prompt;
        int add = 1;
        if (!pd_json_present(root, "prompt")) {
            pd_http_respond_error(req, 400, NULL, "'prompt' or 'messages' is required.", "prompt", NULL);
            goto out;
        }
        if (pd_json_get_string(root, "prompt", 0, &prompt, &je) != PD_OK ||
            pd_json_get_bool(root, "add_special_tokens", &add, &je) != PD_OK) {
            pd_http_respond_error(req, 400, NULL, je.message, je.param, NULL);
            goto out;
        }
        if (eng_server_tokenize(srv, prompt, add != 0, &ids, &n, &err) != PD_OK) {
            eng_server_send_error(req, &err);
            goto out;
        }
    }
    r = cJSON_CreateObject();
    cJSON_AddNumberToObject(r, "count", n);
    cJSON_AddNumberToObject(r, "max_model_len", (double)eng_engine_max_model_len(srv->engine));
    cJSON *toks = cJSON_AddArrayToObject(r, "tokens");
    for (int i = 0; i < n; i++)
        cJSON_AddItemToArray(toks, cJSON_CreateNumber(ids[i]));
    cJSON_AddNullToObject(r, "token_strs");
    respond_cjson(req, 200, r);
out:
    free(ids);
    cJSON_Delete(root);
}

static void h_detokenize(pd_http_req_t *req, void *user)
{
    eng_server_t *srv = user;
    size_t len, n = 0;
    const char *body = pd_http_req_body(req, &len);
    const char *model = NULL;
    cJSON *root = NULL, *r;
    pd_json_err_t je;
    int64_t *vals = NULL;
    const eng_tok_t *tok = eng_engine_tokenizer(srv->engine);
    int64_t V = eng_engine_model_config(srv->engine)->vocab_size;

    if (pd_json_parse(body, len, 0, 1, &root, &je) != PD_OK) {
        pd_http_respond_error(req, 400, NULL, je.message, NULL, NULL);
        return;
    }
    if (pd_json_present(root, "model") && pd_json_get_string(root, "model", 1024, &model, &je) != PD_OK) {
        pd_http_respond_error(req, 400, NULL, je.message, "model", NULL);
        goto out;
    }
    if (!eng_server_model_ok(srv, model)) {
        char msg[300];
        snprintf(msg, sizeof(msg), "The model `%.200s` does not exist.", model);
        pd_http_respond_error(req, 404, NULL, msg, "model", NULL);
        goto out;
    }
    if (!pd_json_present(root, "tokens")) {
        pd_http_respond_error(req, 400, NULL, "'tokens' is required.", "tokens", NULL);
        goto out;
    }
    if (pd_json_get_int_array(root, "tokens", 1u << 20, 0, V - 1, &vals, &n, &je) != PD_OK) {
        pd_http_respond_error(req, 400, NULL, je.message, "tokens", NULL);
        goto out;
    }
    if (tok == NULL) {
        pd_http_respond_error(req, 400, NULL, "no tokenizer (--skip-tokenizer-init)", NULL, NULL);
        goto out;
    }
    {
        int32_t *ids = malloc(n * sizeof(int32_t) + 1);
        pd_buf_t b;
        pd_buf_init(&b);
        for (size_t i = 0; ids && i < n; i++)
            ids[i] = (int32_t)vals[i];
        if (ids)
            eng_tok_decode(tok, ids, n, false, false, &b); /* tokenizer.decode(ids), as vLLM */
        free(ids);
        r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "prompt", b.data ? b.data : "");
        pd_buf_cleanup(&b);
        respond_cjson(req, 200, r);
    }
out:
    free(vals);
    cJSON_Delete(root);
}

static void collect_metrics(pd_metrics_registry_t *reg, void *user)
{
    eng_server_t *srv = user;
    eng_engine_stats_t st;
    (void)reg;
    eng_engine_get_stats(srv->engine, &st);
    pd_metric_set(srv->m_running, st.n_running);
    pd_metric_set(srv->m_waiting, st.n_waiting);
    pd_metric_set(srv->m_queued, eng_engine_queued(srv->engine));
    pd_metric_set(srv->m_kv_usage, st.kv_usage);
    pd_metric_set(srv->m_kv_usage_old, st.kv_usage);
    pd_metric_set(srv->m_free_blocks, st.n_free_blocks);
    pd_metric_set(srv->m_blocks, st.n_blocks);
    /* counters from engine totals: add the difference since the last scrape */
    pd_metric_add(srv->m_prefix_queries, (double)(st.prefix_queries - srv->last_queries));
    pd_metric_add(srv->m_prefix_hits, (double)(st.prefix_hits - srv->last_hits));
    pd_metric_add(srv->m_preemptions, (double)(st.n_preemptions - srv->last_preempt));
    pd_metric_add(srv->m_prompt_tokens, (double)(st.prompt_tokens_total - srv->last_prompt_total));
    pd_metric_add(srv->m_gen_tokens, (double)(st.generation_tokens_total - srv->last_gen_total));
    srv->last_queries = st.prefix_queries;
    srv->last_hits = st.prefix_hits;
    srv->last_preempt = st.n_preemptions;
    srv->last_prompt_total = st.prompt_tokens_total;
    srv->last_gen_total = st.generation_tokens_total;
}

static pthread_mutex_t metrics_mu = PTHREAD_MUTEX_INITIALIZER;

static void h_metrics(pd_http_req_t *req, void *user)
{
    eng_server_t *srv = user;
    pd_buf_t b;
    pd_buf_init(&b);
    pthread_mutex_lock(&metrics_mu); /* collectors update "last" totals */
    pd_metrics_render(srv->metrics, &b);
    pthread_mutex_unlock(&metrics_mu);
    if (srv->disagg) {
        eng_engine_stats_t st;
        eng_engine_get_stats(srv->engine, &st);
        eng_disagg_metrics(srv->disagg, srv->names[0], &st, &b);
    }
    pd_http_respond_data(req, 200, PD_METRICS_CONTENT_TYPE, b.data ? b.data : "", b.len);
    pd_buf_cleanup(&b);
}

static const char openapi_json[] =
    "{\"openapi\":\"3.1.0\",\"info\":{\"title\":\"pdserve\",\"version\":\"" PD_VERSION "\"},\"paths\":{"
    "\"/v1/chat/completions\":{\"post\":{\"summary\":\"Create a chat completion (OpenAI-compatible)\","
    "\"requestBody\":{\"required\":true,\"content\":{\"application/json\":{\"schema\":{\"type\":\"object\","
    "\"required\":[\"messages\"],\"properties\":{\"model\":{\"type\":\"string\"},\"messages\":{\"type\":\"array\"},"
    "\"max_tokens\":{\"type\":\"integer\",\"minimum\":1},\"temperature\":{\"type\":\"number\",\"minimum\":0},"
    "\"top_p\":{\"type\":\"number\"},\"n\":{\"type\":\"integer\",\"minimum\":1},\"stream\":{\"type\":\"boolean\"},"
    "\"stop\":{},\"seed\":{\"type\":\"integer\"},\"logprobs\":{\"type\":\"boolean\"},\"top_logprobs\":{\"type\":\"integer\"}}}}}},"
    "\"responses\":{\"200\":{\"description\":\"the completion, or an SSE stream\"},\"400\":{\"description\":\"bad request\"}}}},"
    "\"/v1/completions\":{\"post\":{\"summary\":\"Create a completion (OpenAI-compatible)\","
    "\"requestBody\":{\"required\":true,\"content\":{\"application/json\":{\"schema\":{\"type\":\"object\","
    "\"required\":[\"prompt\"],\"properties\":{\"model\":{\"type\":\"string\"},\"prompt\":{},"
    "\"max_tokens\":{\"type\":\"integer\",\"minimum\":1},\"temperature\":{\"type\":\"number\",\"minimum\":0},"
    "\"echo\":{\"type\":\"boolean\"},\"logprobs\":{\"type\":\"integer\"},\"stream\":{\"type\":\"boolean\"}}}}}},"
    "\"responses\":{\"200\":{\"description\":\"the completion, or an SSE stream\"},\"400\":{\"description\":\"bad request\"}}}},"
    "\"/v1/models\":{\"get\":{\"summary\":\"List served models\",\"responses\":{\"200\":{\"description\":\"models\"}}}},"
    "\"/tokenize\":{\"post\":{\"summary\":\"Tokenize a prompt or chat\",\"responses\":{\"200\":{\"description\":\"tokens\"}}}},"
    "\"/detokenize\":{\"post\":{\"summary\":\"Detokenize token ids\",\"responses\":{\"200\":{\"description\":\"text\"}}}},"
    "\"/health\":{\"get\":{\"summary\":\"200 when serving, 503 when draining or dead\",\"responses\":{\"200\":{\"description\":\"ok\"}}}},"
    "\"/ping\":{\"get\":{\"summary\":\"like /health\",\"responses\":{\"200\":{\"description\":\"ok\"}}}},"
    "\"/version\":{\"get\":{\"summary\":\"server version\",\"responses\":{\"200\":{\"description\":\"version\"}}}},"
    "\"/load\":{\"get\":{\"summary\":\"requests in flight\",\"responses\":{\"200\":{\"description\":\"load\"}}}},"
    "\"/metrics\":{\"get\":{\"summary\":\"Prometheus metrics\",\"responses\":{\"200\":{\"description\":\"metrics\"}}}}}}";

static void h_openapi(pd_http_req_t *req, void *user)
{
    (void)user;
    pd_http_respond_json(req, 200, NULL, openapi_json);
}

static void h_docs(pd_http_req_t *req, void *user)
{
    static const char page[] =
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>pdserve API</title></head><body>"
        "<h1>pdserve OpenAI-compatible API</h1><p>The machine-readable description is at "
        "<a href=\"openapi.json\">/openapi.json</a>.</p><ul>"
        "<li>POST /v1/chat/completions</li><li>POST /v1/completions</li><li>GET /v1/models</li>"
        "<li>POST /tokenize, POST /detokenize</li><li>GET /health, /ping, /version, /load, /metrics</li></ul>"
        "</body></html>";
    (void)user;
    pd_http_respond_data(req, 200, "text/html; charset=utf-8", page, sizeof(page) - 1);
}

/* vLLM's pooling endpoints (/v1/embeddings, /pooling, /classify, /score, /rerank) exist
 * for pooling models only; pdserve serves generation models, so they answer a clear 400
 * (vLLM's answer for a model without that task) instead of a bare 404. */
static void h_pooling(pd_http_req_t *req, void *user)
{
    char msg[200];
    (void)user;
    snprintf(msg, sizeof(msg), "The model does not support the %s API: --task embed/score/classify (pooling "
             "models) is not supported yet.", pd_http_req_path(req));
    pd_http_respond_error(req, 400, NULL, msg, NULL, NULL);
}

/* ---- metrics registration ---- */

static pd_status_t reg_metrics(eng_server_t *srv)
{
    static const char *const lbl[] = {"model_name"};
    static const char *const lbl2[] = {"model_name", "finished_reason"};
    static const double lat_buckets[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                                         2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
    static const double tok_buckets[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000};
    const char *name = srv->names[0];
    pd_metric_t *m;
    pd_status_t st = PD_OK;

#define SERIES(dst) (st == PD_OK ? (st = pd_metric_series(m, (const char *const[]){name}, &(dst))) : st)
#define GAUGE(metric, help, dst) \
    if (st == PD_OK && (st = pd_metrics_gauge(srv->metrics, metric, help, 1, lbl, &m)) == PD_OK) SERIES(dst)
#define COUNTER(metric, help, dst) \
    if (st == PD_OK && (st = pd_metrics_counter(srv->metrics, metric, help, 1, lbl, &m)) == PD_OK) SERIES(dst)
#define HIST(metric, help, b, dst) \
    if (st == PD_OK && (st = pd_metrics_histogram(srv->metrics, metric, help, 1, lbl, PD_ARRAY_SIZE(b), b, &m)) == PD_OK) SERIES(dst)

    GAUGE("vllm:num_requests_running", "Number of requests in model execution batches.", srv->m_running);
    GAUGE("vllm:num_requests_waiting", "Number of requests waiting to be processed.", srv->m_waiting);
    GAUGE("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", srv->m_kv_usage);
    GAUGE("vllm:gpu_cache_usage_perc", "KV-cache usage (older name). 1 means 100 percent usage.", srv->m_kv_usage_old);
    GAUGE("pdserve:kv_free_blocks", "Free KV-cache blocks (cached free blocks included).", srv->m_free_blocks);
    GAUGE("pdserve:kv_blocks", "KV-cache blocks in all.", srv->m_blocks);
    GAUGE("pdserve:num_sequences_queued",
          "Sequences waiting as --max-queued-requests counts them (admitted, not yet in a step; n choices count n).",
          srv->m_queued);
    COUNTER("pdserve:num_requests_rejected_total",
            "Requests refused with 503 because the waiting queue was full (--max-queued-requests).", srv->m_rejected);
    COUNTER("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", srv->m_prefix_queries);
    COUNTER("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", srv->m_prefix_hits);
    COUNTER("vllm:num_preemptions_total", "Cumulative number of preemptions from the engine.", srv->m_preemptions);
    COUNTER("vllm:prompt_tokens_total", "Number of prefill tokens processed.", srv->m_prompt_tokens);
    COUNTER("vllm:generation_tokens_total", "Number of generation tokens processed.", srv->m_gen_tokens);
    HIST("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", lat_buckets, srv->m_ttft);
    HIST("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", lat_buckets, srv->m_itl);
    HIST("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds (older name).", lat_buckets, srv->m_tpot);
    HIST("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", lat_buckets, srv->m_e2e);
    HIST("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", lat_buckets, srv->m_queue);
    HIST("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", lat_buckets, srv->m_prefill);
    HIST("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", lat_buckets, srv->m_decode);
    HIST("vllm:request_prompt_tokens", "Number of prefill tokens processed.", tok_buckets, srv->m_req_prompt);
    HIST("vllm:request_generation_tokens", "Number of generation tokens processed.", tok_buckets, srv->m_req_gen);
    if (st == PD_OK && (st = pd_metrics_counter(srv->metrics, "vllm:request_success_total",
                                                 "Count of successfully processed requests.", 2, lbl2, &m)) == PD_OK) {
        static const char *const reasons[4] = {"stop", "length", "abort", "error"};
        for (int k = 0; k < 4 && st == PD_OK; k++)
            st = pd_metric_series(m, (const char *const[]){name, reasons[k]}, &srv->m_success[k]);
    }
#undef SERIES
#undef GAUGE
#undef COUNTER
#undef HIST
    if (st == PD_OK)
        st = pd_metrics_add_collector(srv->metrics, collect_metrics, srv);
    return st;
}

/* ---- stats line and signals ---- */

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

static void log_stats(eng_server_t *srv, double dt, uint64_t *last_prompt, uint64_t *last_gen)
{
    eng_engine_stats_t st;
    eng_engine_get_stats(srv->engine, &st);
    double hit = st.prefix_queries ? 100.0 * (double)st.prefix_hits / (double)st.prefix_queries : 0.0;
    PD_LOG_INFO("avg prompt throughput: %.1f tokens/s, avg generation throughput: %.1f tokens/s, running: %d reqs, "
                "waiting: %d reqs, KV cache usage: %.1f%%, prefix cache hit rate: %.1f%%",
                (double)(st.prompt_tokens_total - *last_prompt) / dt, (double)(st.generation_tokens_total - *last_gen) / dt,
                st.n_running, st.n_waiting, st.kv_usage * 100.0, hit);
    *last_prompt = st.prompt_tokens_total;
    *last_gen = st.generation_tokens_total;
}

/* ---- --generate ---- */

typedef struct gen_ctx {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int n_tokens;
    double ttft;
    const char *reason;
} gen_ctx_t;

static void gen_cb(void *user, const eng_output_t *out)
{
    gen_ctx_t *g = user;
    fwrite(out->text, 1, out->text_len, stdout);
    fflush(stdout);
    pthread_mutex_lock(&g->mu);
    if (out->finished) {
        g->n_tokens = out->n_output_tokens;
        g->ttft = out->t_first_token;
        g->reason = out->finish_reason;
    }
    if (out->request_done) {
        g->done = true;
        pthread_cond_signal(&g->cv);
    }
    pthread_mutex_unlock(&g->mu);
}

static int run_generate(eng_server_t *srv, const pd_serve_args_t *a)
{
    eng_oai_err_t err = {0};
    int32_t *ids = NULL;
    int n = 0;
    eng_sampling_params_t p;
    eng_submit_t sub = {0};
    gen_ctx_t g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0, 0, NULL};
    char msg[512];
    uint64_t t0;
    pd_status_t st;

    if (a->chat) {
        eng_oai_req_t r;
        cJSON *body = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(body, "messages"), *m = cJSON_CreateObject();
        char *text;
        cJSON_AddStringToObject(m, "role", "user");
        cJSON_AddStringToObject(m, "content", a->generate);
        cJSON_AddItemToArray(msgs, m);
        text = cJSON_PrintUnformatted(body);
        cJSON_Delete(body);
        st = eng_oai_parse(ENG_OAI_CHAT, text, strlen(text), &srv->limits, &r, &err);
        cJSON_free(text);
        if (st == PD_OK) {
            st = eng_server_chat_prompt(srv, &r, &ids, &n, &err);
            eng_oai_req_cleanup(&r);
        }
    } else {
        st = eng_server_tokenize(srv, a->generate, true, &ids, &n, &err);
    }
    if (st != PD_OK) {
        fprintf(stderr, "error: %s\n", err.message);
        return 1;
    }
    eng_sampling_params_init(&p);
    p.temperature = 0.0f;
    p.max_tokens = (int)a->max_tokens;
    sub.id = "generate";
    sub.prompt = ids;
    sub.n_prompt = n;
    sub.params = &p;
    sub.cb = gen_cb;
    sub.user = &g;
    t0 = pd_now_ns();
    st = eng_engine_submit(srv->engine, &sub, msg, sizeof(msg));
    free(ids);
    eng_sampling_params_cleanup(&p);
    if (st != PD_OK) {
        fprintf(stderr, "error: %s\n", msg);
        return 1;
    }
    pthread_mutex_lock(&g.mu);
    while (!g.done)
        pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);
    double total = (double)(pd_now_ns() - t0) * 1e-9;
    printf("\n");
    fprintf(stderr, "prompt: %d tokens, generated: %d tokens (%s); time to first token %.1f ms, "
            "decode %.1f tokens/s, total %.2f s\n", n, g.n_tokens, g.reason ? g.reason : "?", g.ttft * 1e3,
            g.n_tokens > 1 ? (g.n_tokens - 1) / (total - g.ttft) : 0.0, total);
    return 0;
}

/* ---- registration with a proxy (--register) ---- */

static void register_stats(pd_register_stats_t *out, void *user)
{
    eng_server_t *srv = user;
    eng_engine_stats_t st;
    eng_engine_get_stats(srv->engine, &st);
    out->load = st.n_running;
    out->queue = st.n_waiting;
    out->kv_usage = st.kv_usage;
}

/* ---- main ---- */

static char **split_names(const pd_serve_args_t *a, int *n_p)
{
    int n = a->served_model_name.n > 0 ? (int)a->served_model_name.n : 1;
    char **names = calloc((size_t)n, sizeof(*names));
    for (int i = 0; names && i < n; i++)
        names[i] = strdup(a->served_model_name.n > 0 ? a->served_model_name.v[i] : a->model);
    *n_p = n;
    return names;
}

int eng_node_main(pd_node_role_t role, pd_serve_args_t *a)
{
    const char *who = role == PD_ROLE_PREFILL ? "prefill" : "decode"; /* in messages */
    eng_server_t srv;
    eng_engine_cfg_t ec;
    owned_strs_t own = {0};
    pd_http_config_t hc;
    const char **origins = NULL, **methods = NULL, **headers = NULL;
    kvx_config_t kvcfg;
    bool have_kv = false;
    pd_register_t *reg = NULL;
    int rc = 1;

    memset(&srv, 0, sizeof(srv));
    srv.role = role;
    srv.args = a;
    srv.created = pd_unix_time();
    srv.log_requests = !a->disable_log_requests;
    kvx_config_init(&kvcfg);
    if (a->kv_transfer_config) {
        char *json = cJSON_PrintUnformatted(a->kv_transfer_config);
        char err[512];
        pd_status_t st = json ? eng_disagg_parse_config(role, json, &kvcfg, err, sizeof(err)) : PD_ERR_NOMEM;
        cJSON_free(json);
        if (st != PD_OK) {
            fprintf(stderr, "pdserve-%s: error: %s\n", who,
                    st == PD_ERR_NOMEM ? "out of memory" : err);
            kvx_config_cleanup(&kvcfg);
            return 2;
        }
        have_kv = true;
    }
    /* the TLS files before the model: a typo there should not cost a model load */
    const char *const tls_opts[3] = {"--ssl-keyfile", "--ssl-certfile", "--ssl-ca-certs"};
    const char *const tls_paths[3] = {a->ssl_keyfile, a->ssl_certfile, a->ssl_ca_certs};
    for (int i = 0; i < 3; i++)
        if (tls_paths[i] && access(tls_paths[i], R_OK) != 0) {
            fprintf(stderr, "pdserve-%s: error: %s: cannot read '%s': %s\n",
                    who, tls_opts[i], tls_paths[i], strerror(errno));
            goto out;
        }
    /* tool calls: the parser must exist (--enable-auto-tool-choice without one is refused
     * by the option parser) */
    if (a->tool_call_parser) {
        pd_status_t tst = eng_tool_parser_lookup(a->tool_call_parser, &srv.tool_parser);
        if (tst != PD_OK) {
            fprintf(stderr, "pdserve-%s: error: --tool-call-parser: '%s' %s %s\n", who, a->tool_call_parser,
                    tst == PD_ERR_UNSUPPORTED ? "is not supported yet; supported:" : "is not one of",
                    eng_tool_parser_names());
            goto out;
        }
        if (!a->enable_auto_tool_choice)
            srv.tool_parser = ENG_TOOL_PARSER_NONE; /* vLLM: the parser is only used with auto tool choice */
    }
    if (a->enable_reasoning && eng_reasoning_parser_lookup(a->reasoning_parser, &srv.reasoning_parser) != PD_OK) {
        fprintf(stderr, "pdserve-%s: error: --reasoning-parser: '%s' is not one of deepseek_r1\n",
                who, a->reasoning_parser ? a->reasoning_parser : "");
        goto out;
    }
    if (make_engine_cfg(role, a, &ec, &own) != PD_OK)
        goto out;
    srv.model_path = ec.load.model;
    if (eng_engine_create(&ec, &srv.engine) != PD_OK) {
        fprintf(stderr, "pdserve-%s: error: cannot start the engine for '%s' (see the log above)\n",
                who, ec.load.model);
        goto out;
    }
    srv.names = split_names(a, &srv.n_names);
    eng_oai_limits_init(&srv.limits);
    srv.limits.max_logprobs = (int)a->max_logprobs;
    srv.limits.vocab_size = eng_engine_model_config(srv.engine)->vocab_size;
    srv.limits.priority_enabled = strcmp(a->scheduling_policy, "priority") == 0;
    srv.limits.return_tokens_as_token_ids = a->return_tokens_as_token_ids;
    srv.limits.auto_tools = srv.tool_parser != ENG_TOOL_PARSER_NONE;
    if (a->generate) {
        rc = run_generate(&srv, a);
        goto out;
    }
    if (have_kv && eng_disagg_create(&kvcfg, srv.engine, a->advertise_host, &srv.disagg) != PD_OK) {
        fprintf(stderr, "pdserve-%s: error: cannot start KV transfer (see the log above)\n",
                who);
        goto out;
    }
    if (pd_metrics_registry_create(&srv.metrics) != PD_OK || reg_metrics(&srv) != PD_OK)
        goto out;

    pd_http_config_init(&hc);
    hc.host = a->host ? a->host : "127.0.0.1";
    hc.port = (uint16_t)a->port;
    hc.root_path = a->root_path;
    hc.api_key = a->api_key;
    hc.ssl_keyfile = a->ssl_keyfile;
    hc.ssl_certfile = a->ssl_certfile;
    hc.ssl_ca_certs = a->ssl_ca_certs;
    hc.ssl_cert_reqs = (pd_http_cert_reqs_t)a->ssl_cert_reqs;
    /* the engine thread sends each idle stream's event itself: no hand-off to an HTTP
     * worker (13 us less server CPU per streamed token, bench/bench_server.sh); on a GPU
     * the sends overlap the next step (async output processing) */
    hc.direct_stream_inline = 1;
#define STRS(json, dst)                                                         \
    do {                                                                        \
        int n_ = cJSON_GetArraySize(json), i_ = 0;                              \
        const cJSON *e_;                                                        \
        dst = calloc((size_t)n_ + 1, sizeof(char *));                           \
        cJSON_ArrayForEach(e_, json) dst[i_++] = e_->valuestring;               \
    } while (0)
    STRS(a->allowed_origins, origins);
    STRS(a->allowed_methods, methods);
    STRS(a->allowed_headers, headers);
#undef STRS
    hc.allowed_origins = origins;
    hc.allowed_methods = methods;
    hc.allowed_headers = headers;
    hc.allow_credentials = a->allow_credentials;
    hc.enable_request_id_headers = a->enable_request_id_headers;
    hc.disable_access_log = a->disable_log_requests;
    hc.metrics = srv.metrics;
    if (pd_http_server_create(&hc, &srv.http) != PD_OK)
        goto out;
    for (size_t i = 0; i < a->middleware.n; i++)
        if (pd_http_load_middleware(srv.http, a->middleware.v[i]) != PD_OK)
            goto out;
    pd_http_route_ex(srv.http, "GET", "/health", h_health, &srv, PD_HTTP_ROUTE_DURING_DRAIN | PD_HTTP_ROUTE_NO_AUTH);
    pd_http_route_ex(srv.http, "GET", "/ping", h_ping, &srv, PD_HTTP_ROUTE_DURING_DRAIN | PD_HTTP_ROUTE_NO_AUTH);
    pd_http_route_ex(srv.http, "POST", "/ping", h_ping, &srv, PD_HTTP_ROUTE_DURING_DRAIN | PD_HTTP_ROUTE_NO_AUTH);
    pd_http_route_ex(srv.http, "GET", "/metrics", h_metrics, &srv, PD_HTTP_ROUTE_DURING_DRAIN);
    pd_http_route(srv.http, "GET", "/version", h_version, &srv);
    pd_http_route(srv.http, "GET", "/load", h_load, &srv);
    pd_http_route(srv.http, "GET", "/v1/models", h_models, &srv);
    pd_http_route(srv.http, "POST", "/tokenize", h_tokenize, &srv);
    pd_http_route(srv.http, "POST", "/detokenize", h_detokenize, &srv);
    if (!a->disable_fastapi_docs) {
        pd_http_route(srv.http, "GET", "/openapi.json", h_openapi, &srv);
        pd_http_route(srv.http, "GET", "/docs", h_docs, &srv);
    }
    {
        static const char *const pooling[] = {"/v1/embeddings", "/pooling", "/classify", "/v1/score", "/score",
                                              "/v1/rerank", "/rerank", "/v2/rerank"};
        for (size_t i = 0; i < PD_ARRAY_SIZE(pooling); i++)
            pd_http_route(srv.http, "POST", pooling[i], h_pooling, &srv);
    }
    if (eng_server_add_oai_routes(&srv) != PD_OK)
        goto out;
    if (pd_http_server_start(srv.http) != PD_OK)
        goto out;
    if (a->register_addr) {
        char http_addr[300];
        pd_register_info_t ri = {0};
        snprintf(http_addr, sizeof(http_addr), "%s:%u",
                 a->advertise_host ? a->advertise_host : (a->host && strcmp(a->host, "0.0.0.0") != 0 ? a->host : "127.0.0.1"),
                 pd_http_server_port(srv.http));
        ri.type = role == PD_ROLE_PREFILL ? "P" : "D";
        ri.http_address = http_addr;
        ri.interval_s = 1.0;
        if (pd_register_start(a->register_addr, &ri, register_stats, &srv, &reg) != PD_OK) {
            PD_LOG_ERR("--register %s: cannot start heartbeats to the proxy", a->register_addr);
            goto out;
        }
        PD_LOG_INFO("registered with the proxy at %s as %s (%s)", a->register_addr, http_addr, ri.type);
    }
    PD_LOG_INFO("serving %s as '%s' on http%s://%s:%u (%s role)", srv.model_path, srv.names[0],
                a->ssl_certfile ? "s" : "", hc.host, pd_http_server_port(srv.http),
                who);

    {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
    }
    {
        uint64_t last_prompt = 0, last_gen = 0, t_last = pd_now_ns();
        while (!stop_signal) {
            struct timespec ts = {0, 200 * 1000 * 1000};
            nanosleep(&ts, NULL);
            if (!a->disable_log_stats && pd_now_ns() - t_last >= 5ull * 1000000000ull) {
                double dt = (double)(pd_now_ns() - t_last) * 1e-9;
                t_last = pd_now_ns();
                log_stats(&srv, dt, &last_prompt, &last_gen);
            }
        }
    }
    PD_LOG_INFO("signal %d: draining for up to %.0f s", (int)stop_signal, a->drain_timeout);
    pd_register_stop(reg); /* the proxy stops routing here before the drain */
    reg = NULL;
    if (pd_http_server_drain(srv.http, (uint64_t)(a->drain_timeout * 1000.0)) != PD_OK)
        PD_LOG_WARN("drain timed out; aborting the remaining requests");
    rc = 0;
out:
    pd_register_stop(reg);
    if (srv.http)
        pd_http_server_stop(srv.http);
    /* kvxfer first: its callbacks post to the engine, which must still exist */
    eng_disagg_close(srv.disagg);
    eng_engine_destroy(srv.engine); /* aborts what is left; callbacks see closed streams */
    eng_disagg_destroy(srv.disagg);
    kvx_config_cleanup(&kvcfg);
    pd_http_server_destroy(srv.http);
    pd_metrics_registry_destroy(srv.metrics);
    for (int i = 0; i < srv.n_names; i++)
        free(srv.names[i]);
    free(srv.names);
    free(origins);
    free(methods);
    free(headers);
    free(own.model);
    cJSON_free(own.hf_overrides);
    cJSON_free(own.rope_scaling);
    cJSON_free(own.gen_override);
    return rc;
}

int eng_node_cli_main(pd_node_role_t role, int argc, char **argv)
{
    pd_serve_args_t args;
    pd_cli_action_t action;
    pd_log_level_t level;
    char err[512];
    int rc;

    /* before anything initialises UCX (it needs a fresh image: docs/disagg.md) */
    eng_disagg_early_env(argc, argv);
    pd_log_set_tag(role == PD_ROLE_PREFILL ? "prefill" : "decode");
    if (pd_serve_args_parse(role, argc, argv, &args, &action, err, sizeof(err)) != PD_OK) {
        pd_serve_args_free(role, &args);
        return 2;
    }
    if (action == PD_CLI_EXIT_OK) {
        pd_serve_args_free(role, &args);
        return 0;
    }
    if (pd_log_level_parse(args.uvicorn_log_level, &level) == PD_OK)
        pd_log_set_level(level);
    pd_cli_warn_noop(pd_serve_cli_spec(role), &args);
    rc = eng_node_main(role, &args);
    pd_serve_args_free(role, &args);
    return rc;
}
