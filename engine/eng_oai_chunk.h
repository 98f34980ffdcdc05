/*
 * eng_oai_chunk.h - the streamed (SSE) chunks of /v1/completions and
 * /v1/chat/completions, written straight into a byte buffer without a JSON tree.
 *
 * A stream's constant part ("data: {"id":...,"object":...,"created":N,"model":...,
 * "choices":[") is formatted once per request; every chunk appends it, the choice's
 * fields (text escaped by a table-driven JSON string writer, logprobs, finish reason,
 * usage) and "\n\n".  The bytes are the ones cJSON_PrintUnformatted would give for the
 * same tree (same key order, same string escapes, same number formatting), so clients
 * see exactly what the earlier tree-based writer sent; tests/unit/test_oai_chunk.c
 * checks that against cJSON on randomized chunks.
 *
 * Strings are escaped as cJSON does: '"', '\\' and the control characters below 0x20
 * are escaped, every other byte (UTF-8 sequences, also incomplete ones the engine may
 * flush at the end of a sequence) is copied as it is.
 */
#ifndef ENG_OAI_CHUNK_H
#define ENG_OAI_CHUNK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_engine.h"
#include "pd_status.h"
#include "pd_util.h"

/* Write the text of token id (NUL-terminated, at most buflen - 1 bytes) into buf: the
 * token's string, or "token_id:<id>" (return_tokens_as_token_ids). */
typedef void (*eng_oai_tokstr_fn)(void *user, int32_t id, char *buf, size_t buflen);

typedef struct eng_oai_chunker {
    pd_buf_t head;            /* "data: {\"id\":...,\"choices\":[" */
    bool chat;
    bool want_logprobs;       /* the request asked for logprobs */
    bool emit_token_ids;      /* no tokenizer (--skip-tokenizer-init): chunks carry token_ids */
    bool continuous_usage;    /* stream_options.continuous_usage_stats */
    bool prompt_details;      /* --enable-prompt-tokens-details: usage.prompt_tokens_details */
    eng_oai_tokstr_fn tokstr; /* token strings for logprobs */
    void *tok_user;
} eng_oai_chunker_t;

/* Format the constant head of every chunk of one stream.  id and model are escaped.
 * The flags and tokstr fields are set by the caller afterwards (all false / NULL). */
pd_status_t eng_oai_chunker_init(eng_oai_chunker_t *ck, bool chat, const char *id, int64_t created,
                                 const char *model);
void eng_oai_chunker_cleanup(eng_oai_chunker_t *ck);

/* Append one SSE event ("data: {...}\n\n") to out.  On failure (out of memory) out may
 * hold a partial event: the caller drops the buffer. */

/* Chat: the first chunk of choice index (delta role "assistant", content "");
 * usage (prompt tokens, 0 completion) when continuous_usage. */
pd_status_t eng_oai_chunk_role(const eng_oai_chunker_t *ck, pd_buf_t *out, int index, int n_prompt);

/* Chat: one tool call of choice index (call_json: the call object already rendered,
 * {"index", "id", "type", "function"}) as delta.tool_calls, no finish reason. */
pd_status_t eng_oai_chunk_tool_call(const eng_oai_chunker_t *ck, pd_buf_t *out, int index, const char *call_json);

/* Completions echo: the prompt text as the first chunk of choice index.  logprobs_json
 * is the prompt tokens' logprobs object already rendered (echo + logprobs; written as
 * is) or NULL for null.  finish_reason is NULL (more follows) or the reason (echo with
 * max_tokens 0: "length"), stop_reason null either way; usage (n_prompt, 0 completion)
 * when continuous_usage, as vLLM. */
pd_status_t eng_oai_chunk_echo(const eng_oai_chunker_t *ck, pd_buf_t *out, int index, const char *text,
                               size_t len, const char *logprobs_json, const char *finish_reason, int n_prompt);

/* One engine event of choice index: its text delta, logprobs of its tokens (completions:
 * *text_offset is the running text_offset of the choice, advanced here), token_ids
 * without a tokenizer, finish and stop reason when it finished, usage when
 * continuous_usage (n_prompt and ev->n_output_tokens). */
pd_status_t eng_oai_chunk_event(const eng_oai_chunker_t *ck, pd_buf_t *out, int index, const eng_output_t *ev,
                                int n_prompt, int *text_offset);

/* The same with a reasoning delta (chat, --enable-reasoning): "reasoning_content" before
 * "content" in the delta, each only when not empty. */
pd_status_t eng_oai_chunk_event_r(const eng_oai_chunker_t *ck, pd_buf_t *out, int index, const eng_output_t *ev,
                                  const char *reasoning, size_t reasoning_len, int n_prompt, int *text_offset);

/* The final usage chunk (stream_options.include_usage): empty choices and the totals. */
pd_status_t eng_oai_chunk_usage(const eng_oai_chunker_t *ck, pd_buf_t *out, int prompt_tokens,
                                int completion_tokens, int cached_tokens);

/* Append s[0..len) as a JSON string (quotes included), escaped as cJSON does. */
pd_status_t eng_json_append_str(pd_buf_t *out, const char *s, size_t len);
/* Append a number exactly as cJSON_PrintUnformatted (1.7.15) prints it: "%1.15g", or
 * "%1.17g" when 15 digits do not read back; NaN and infinities "null". */
pd_status_t eng_json_append_num(pd_buf_t *out, double v);

#endif /* ENG_OAI_CHUNK_H */
