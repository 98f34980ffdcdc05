/*
 * eng_openai.h - the OpenAI-compatible request surface, turned into native structs at
 * the edge: parse and validate /v1/completions and /v1/chat/completions bodies (vLLM's
 * parameters, limits and error messages), and the response/chunk JSON shapes.
 *
 * Parsing happens on HTTP worker threads; nothing here touches the engine.
 */
#ifndef ENG_OPENAI_H
#define ENG_OPENAI_H

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "eng_request.h"
#include "pd_status.h"

typedef enum { ENG_OAI_COMPLETION = 0, ENG_OAI_CHAT } eng_oai_kind_t;

/* A completion prompt: text, or token ids. */
typedef struct eng_oai_prompt {
    const char *text;      /* borrowed from the request JSON, or NULL */
    int32_t *ids;          /* owned, or NULL */
    int n_ids;
} eng_oai_prompt_t;

typedef struct eng_oai_limits {
    int max_logprobs;      /* --max-logprobs (-1: no limit) */
    int max_n;             /* n / best_of bound (256) */
    int max_stop;          /* stop strings (64) */
    int max_stop_len;      /* bytes per stop string (1024) */
    int max_prompts;       /* prompts in one completions request (1024) */
    int64_t vocab_size;    /* token ids bound */
    bool priority_enabled; /* --scheduling-policy priority */
    bool return_tokens_as_token_ids; /* server default */
    bool auto_tools;       /* --enable-auto-tool-choice with a --tool-call-parser */
} eng_oai_limits_t;

/* kv_transfer_params as vLLM's NixlConnector protocol defines them (validated). */
typedef struct eng_oai_kv {
    bool do_remote_decode;        /* proxy -> prefill: keep the KV for a decode node */
    bool do_remote_prefill;       /* proxy -> decode: the KV is on a prefill node */
    const char *remote_engine_id; /* borrowed from the request JSON */
    const char *remote_host;
    const char *remote_request_id;
    int remote_port;
    uint32_t *remote_block_ids;   /* owned */
    int n_remote_block_ids;
} eng_oai_kv_t;

typedef struct eng_oai_req {
    eng_oai_kind_t kind;
    cJSON *root;                  /* the parsed body (owned); strings below borrow from it */
    const char *model;            /* NULL when absent */
    /* completions */
    eng_oai_prompt_t *prompts;
    int n_prompts;
    bool echo;
    int logprobs;                 /* completions: top-N (-1 none); chat: top_logprobs when logprobs */
    /* chat */
    const cJSON *messages, *tools, *documents, *chat_template_kwargs;
    const char *chat_template;    /* request-supplied template (refused unless allowed) */
    bool add_generation_prompt;   /* true */
    bool continue_final_message;
    bool add_special_tokens;      /* completions true, chat false */
    bool tool_auto;               /* tool_choice "auto" (given, or implied by tools on a
                                     server with auto tool choice): parse the output's calls */
    /* both */
    eng_sampling_params_t params; /* owned */
    bool has_max_tokens;
    bool stream, include_usage, continuous_usage_stats;
    int priority;
    const char *request_id;       /* client-supplied request_id field */
    const char *cache_salt;
    const cJSON *kv_transfer_params;
    eng_oai_kv_t kv;              /* parsed kv_transfer_params (all false when absent) */
    bool return_tokens_as_token_ids;
    bool want_logprobs;           /* chat logprobs: true / completions logprobs set */
    bool want_prompt_logprobs;    /* params.prompt_logprobs >= 0 (asked for, or completions
                                     echo + logprobs): the response carries them */
    const char **bad_words;       /* bad_words strings (array owned, strings borrowed) */
    int n_bad_words;
} eng_oai_req_t;

typedef struct eng_oai_err {
    int status;                   /* HTTP status (400, 404, 501, ...) */
    char message[512];
    char param[128];
} eng_oai_err_t;

void eng_oai_limits_init(eng_oai_limits_t *lim);

/* Parse and validate a request body.  On failure err holds the status and message and
 * *req is released; on success release it with eng_oai_req_cleanup. */
pd_status_t eng_oai_parse(eng_oai_kind_t kind, const char *body, size_t len,
                          const eng_oai_limits_t *lim, eng_oai_req_t *req, eng_oai_err_t *err);
void eng_oai_req_cleanup(eng_oai_req_t *req);

/* After eng_oai_parse refused a request: only its kv_transfer_params, into req->kv
 * (a decode leg refused for any other field must still release the prefill node's
 * lease).  PD_OK when they are present and valid (release req with
 * eng_oai_req_cleanup); otherwise PD_ERR_INVAL and nothing to release. */
pd_status_t eng_oai_parse_kv_only(const char *body, size_t len, eng_oai_req_t *req);

#endif /* ENG_OPENAI_H */
