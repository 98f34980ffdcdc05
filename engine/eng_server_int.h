/*
 * eng_server_int.h - state shared by the node server's files (eng_server.c: set-up,
 * plain endpoints, metrics, main loop; eng_server_oai.c: the completion endpoints).
 */
#ifndef ENG_SERVER_INT_H
#define ENG_SERVER_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "eng_engine.h"
#include "eng_openai.h"
#include "pd_http.h"
#include "pd_metrics.h"
#include "pd_serve_args.h"
#include "eng_reasoning.h"
#include "eng_toolcall.h"

typedef struct eng_server {
    pd_node_role_t role;
    const pd_serve_args_t *args;
    eng_engine_t *engine;
    pd_http_server_t *http;
    pd_metrics_registry_t *metrics;
    char **names;                 /* served model names (first one in responses) */
    int n_names;
    const char *model_path;
    int64_t created;              /* start time (unix) */
    eng_oai_limits_t limits;
    eng_tool_parser_t tool_parser; /* --tool-call-parser (NONE without --enable-auto-tool-choice) */
    eng_reasoning_parser_t reasoning_parser; /* --enable-reasoning: --reasoning-parser, else NONE */
    bool log_requests;
    int64_t max_log_len;
    volatile int inflight;        /* requests submitted and not finished */
    struct eng_disagg *disagg;    /* --kv-transfer-config, or NULL */
    /* vLLM metrics (label model_name) */
    pd_metric_series_t *m_running, *m_waiting, *m_kv_usage, *m_kv_usage_old, *m_prefix_queries,
        *m_prefix_hits, *m_preemptions, *m_prompt_tokens, *m_gen_tokens, *m_ttft, *m_itl, *m_tpot,
        *m_e2e, *m_queue, *m_prefill, *m_decode, *m_req_prompt, *m_req_gen, *m_success[4],
        *m_free_blocks, *m_blocks;
    pd_metric_series_t *m_rejected; /* pdserve:num_requests_rejected_total (queue full) */
    pd_metric_series_t *m_queued;   /* pdserve:num_sequences_queued (admission count) */
    uint64_t last_prompt_total, last_gen_total, last_queries, last_hits, last_preempt;
} eng_server_t;

/* Register the /v1/completions and /v1/chat/completions routes. */
pd_status_t eng_server_add_oai_routes(eng_server_t *srv);

/* Is name one of the served model names?  (NULL = the request gave none: accepted.) */
bool eng_server_model_ok(const eng_server_t *srv, const char *name);

/* Render messages with the chat template and tokenize (shared with /tokenize).
 * On failure fills err (status and message). */
pd_status_t eng_server_chat_prompt(eng_server_t *srv, const eng_oai_req_t *r, int32_t **ids_p, int *n_p,
                                   eng_oai_err_t *err);
/* Tokenize text (add_special_tokens as given). */
pd_status_t eng_server_tokenize(eng_server_t *srv, const char *text, bool add_special, int32_t **ids_p,
                                int *n_p, eng_oai_err_t *err);

/* Send err as an OpenAI error response. */
void eng_server_send_error(pd_http_req_t *req, const eng_oai_err_t *err);

#endif /* ENG_SERVER_INT_H */
