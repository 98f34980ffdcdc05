/*
 * eng_server_oai.c - POST /v1/completions and POST /v1/chat/completions.
 *
 * A handler (HTTP worker thread) parses and validates the body, renders the chat
 * template, tokenizes, checks the context length and submits one engine request per
 * prompt.  The engine thread then calls on_output() for every step of every sequence:
 * streamed requests get an SSE chunk per event, others accumulate until the last event
 * and get one JSON response.  A client disconnect aborts every engine request of the
 * HTTP request.
 *
 * Lifetime: an oreq_t is referenced once by the HTTP side (dropped when the response is
 * posted, the stream closes or the client leaves) and once per submitted engine request
 * (dropped at its request_done event); the last reference frees it.  Both sides decide
 * under o->mu, and the engine is never called with o->mu held.
 */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_disagg.h"
#include "eng_oai_chunk.h"
#include "eng_server_int.h"
#include "eng_template.h"
#include "eng_tokenizer.h"
#include "pd_log.h"
#include "pd_util.h"

typedef struct choice {
    pd_buf_t text;            /* non-stream: accumulated text */
    cJSON *lp;                /* non-stream logprobs (chat: content array; completions: object) */
    const char *finish_reason;
    cJSON *stop_reason;       /* owned; NULL = null */
    bool started;             /* stream: first chunk (role / echo) sent */
    int text_offset;          /* completions logprobs text_offset */
    int n_tokens;
    uint64_t t_last;          /* for inter-token latency */
    cJSON *ids;               /* --skip-tokenizer-init: the generated ids (non-stream) */
    eng_tool_stream_t ts;     /* stream with tool parsing: the parser's state */
    eng_reasoning_stream_t rs; /* stream with reasoning parsing: the parser's state */
} choice_t;

struct oreq;
typedef struct sub {
    struct oreq *o;
    int index;
    char id[128];
    int n_prompt;
    int n_cached;
    char *echo;               /* completions echo: the prompt text (owned) */
    cJSON *plp;               /* prompt_logprobs list of this prompt (owned), or NULL */
    bool done;
} sub_t;

typedef struct oreq {
    pthread_mutex_t mu;
    int refs;
    bool http_done;
    bool failed;              /* an error response was sent: ignore later events */
    eng_server_t *srv;
    pd_http_req_t *req;
    pd_http_stream_t *stream;
    eng_oai_req_t r;
    bool chat;
    char id[80];
    int64_t created;
    int n_subs, n_submitted, n_done, n_per;
    sub_t *subs;
    choice_t *choices;
    int prompt_tokens, cached_tokens, completion_tokens;
    uint64_t t_start;
    eng_oai_chunker_t ck;     /* stream: chunk writer (head formatted once) */
    pd_buf_t sbuf;            /* stream: the events of one engine callback, sent in one write */
    cJSON *kv_params;         /* kv_transfer_params of the response (owned), or NULL */
    char *kv_error;           /* the KV transfer failed the request (policy fail) */
    eng_tool_parser_t tools;  /* chat with tool_choice auto: the server's parser, else NONE */
    eng_reasoning_parser_t reasoning; /* chat on a node with --enable-reasoning, else NONE */
} oreq_t;

static void oreq_free(oreq_t *o)
{
    for (int i = 0; i < o->n_subs * o->n_per && o->choices; i++) {
        pd_buf_cleanup(&o->choices[i].text);
        cJSON_Delete(o->choices[i].lp);
        cJSON_Delete(o->choices[i].stop_reason);
        cJSON_Delete(o->choices[i].ids);
        eng_tool_stream_cleanup(&o->choices[i].ts);
        eng_reasoning_stream_cleanup(&o->choices[i].rs);
    }
    for (int i = 0; i < o->n_subs && o->subs; i++) {
        free(o->subs[i].echo);
        cJSON_Delete(o->subs[i].plp);
    }
    free(o->subs);
    free(o->choices);
    eng_oai_chunker_cleanup(&o->ck);
    pd_buf_cleanup(&o->sbuf);
    cJSON_Delete(o->kv_params);
    free(o->kv_error);
    eng_oai_req_cleanup(&o->r);
    pthread_mutex_destroy(&o->mu);
    free(o);
}

static void oreq_unref(oreq_t *o)
{
    int left;
    pthread_mutex_lock(&o->mu);
    left = --o->refs;
    pthread_mutex_unlock(&o->mu);
    if (left == 0) {
        __atomic_sub_fetch(&o->srv->inflight, 1, __ATOMIC_RELAXED);
        oreq_free(o);
    }
}

void eng_server_send_error(pd_http_req_t *req, const eng_oai_err_t *err)
{
    pd_http_respond_error(req, (unsigned)(err->status ? err->status : 400), NULL, err->message,
                          err->param[0] ? err->param : NULL, NULL);
}

/* ---- token strings for logprobs ---- */

static void token_text(eng_server_t *srv, const oreq_t *o, int32_t id, char *buf, size_t buflen)
{
    const eng_tok_t *tok = eng_engine_tokenizer(srv->engine);
    pd_buf_t b;
    if (o->r.return_tokens_as_token_ids || tok == NULL) {
        snprintf(buf, buflen, "token_id:%d", id);
        return;
    }
    pd_buf_init(&b);
    eng_tok_decode(tok, &id, 1, false, false, &b);
    snprintf(buf, buflen, "%s", b.data ? b.data : "");
    pd_buf_cleanup(&b);
}

static cJSON *bytes_array(const char *s)
{
    cJSON *a = cJSON_CreateArray();
    for (const unsigned char *p = (const unsigned char *)s; a && *p; p++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(*p));
    return a;
}

static double lp_value(float v) { return isfinite(v) ? (double)v : -9999.0; }

/* chat logprobs entry {"token","logprob","bytes","top_logprobs":[...]} */
static cJSON *chat_lp_entry(eng_server_t *srv, const oreq_t *o, const eng_output_t *out, int i)
{
    char t[256];
    cJSON *e = cJSON_CreateObject(), *tops;
    token_text(srv, o, out->token_logprobs[i].token, t, sizeof(t));
    cJSON_AddStringToObject(e, "token", t);
    cJSON_AddNumberToObject(e, "logprob", lp_value(out->token_logprobs[i].logprob));
    cJSON_AddItemToObject(e, "bytes", bytes_array(t));
    tops = cJSON_AddArrayToObject(e, "top_logprobs");
    for (int k = 0; k < out->n_top; k++) {
        const eng_logprob_t *lp = &out->tops[(size_t)i * (size_t)out->n_top + (size_t)k];
        cJSON *te = cJSON_CreateObject();
        token_text(srv, o, lp->token, t, sizeof(t));
        cJSON_AddStringToObject(te, "token", t);
        cJSON_AddNumberToObject(te, "logprob", lp_value(lp->logprob));
        cJSON_AddItemToObject(te, "bytes", bytes_array(t));
        cJSON_AddItemToArray(tops, te);
    }
    return e;
}

/* completions logprobs: append to {"text_offset","token_logprobs","tokens","top_logprobs"} */
static void comp_lp_append(eng_server_t *srv, const oreq_t *o, cJSON *obj, const eng_output_t *out,
                           choice_t *c)
{
    char t[256];
    cJSON *offs = cJSON_GetObjectItem(obj, "text_offset"), *tlp = cJSON_GetObjectItem(obj, "token_logprobs"),
          *toks = cJSON_GetObjectItem(obj, "tokens"), *tops = cJSON_GetObjectItem(obj, "top_logprobs");
    for (int i = 0; i < out->n_token_ids && out->token_logprobs; i++) {
        token_text(srv, o, out->token_logprobs[i].token, t, sizeof(t));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber(c->text_offset));
        c->text_offset += (int)strlen(t);
        cJSON_AddItemToArray(tlp, cJSON_CreateNumber(lp_value(out->token_logprobs[i].logprob)));
        cJSON_AddItemToArray(toks, cJSON_CreateString(t));
        cJSON *m = cJSON_CreateObject();
        /* the sampled token is always among them, as in vLLM (top-N plus the chosen one) */
        cJSON_AddNumberToObject(m, t, lp_value(out->token_logprobs[i].logprob));
        for (int k = 0; k < out->n_top; k++) {
            const eng_logprob_t *lp = &out->tops[(size_t)i * (size_t)out->n_top + (size_t)k];
            token_text(srv, o, lp->token, t, sizeof(t));
            if (cJSON_GetObjectItemCaseSensitive(m, t) == NULL) /* exact keys, as the stream and vLLM */
                cJSON_AddNumberToObject(m, t, lp_value(lp->logprob));
        }
        cJSON_AddItemToArray(tops, m);
    }
}

/* vLLM's prompt_logprobs list: null for the first prompt token, then for each one
 * {"<id>": {"logprob", "rank", "decoded_token"}, ...}: the prompt token first, then
 * the top entries (a token already listed is not repeated). */
static cJSON *prompt_lp_json(eng_server_t *srv, const oreq_t *o, const eng_output_t *out)
{
    cJSON *list = cJSON_CreateArray();
    char t[256], key[16];
    if (list == NULL)
        return NULL;
    cJSON_AddItemToArray(list, cJSON_CreateNull());
    for (int i = 1; i < out->n_prompt_logprobs; i++) {
        cJSON *m = cJSON_CreateObject();
        for (int k = -1; m && k < out->n_prompt_top; k++) {
            const eng_logprob_t *lp = k < 0 ? &out->prompt_logprobs[i]
                                            : &out->prompt_tops[(size_t)i * (size_t)out->n_prompt_top + (size_t)k];
            snprintf(key, sizeof(key), "%d", lp->token);
            if (cJSON_HasObjectItem(m, key))
                continue;
            cJSON *e = cJSON_AddObjectToObject(m, key);
            token_text(srv, o, lp->token, t, sizeof(t));
            cJSON_AddNumberToObject(e, "logprob", lp_value(lp->logprob));
            cJSON_AddNumberToObject(e, "rank", lp->rank);
            cJSON_AddStringToObject(e, "decoded_token", t);
        }
        cJSON_AddItemToArray(list, m ? m : cJSON_CreateNull());
    }
    return list;
}

/* completions echo + logprobs: the prompt tokens' entries (the first with null
 * logprob and top_logprobs, as vLLM) before the generated ones */
static void comp_lp_append_prompt(eng_server_t *srv, const oreq_t *o, cJSON *obj, const eng_output_t *out,
                                  choice_t *c)
{
    char t[256];
    cJSON *offs = cJSON_GetObjectItem(obj, "text_offset"), *tlp = cJSON_GetObjectItem(obj, "token_logprobs"),
          *toks = cJSON_GetObjectItem(obj, "tokens"), *tops = cJSON_GetObjectItem(obj, "top_logprobs");
    for (int i = 0; i < out->n_prompt_logprobs; i++) {
        const eng_logprob_t *p = &out->prompt_logprobs[i];
        token_text(srv, o, p->token, t, sizeof(t));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber(c->text_offset));
        c->text_offset += (int)strlen(t);
        cJSON_AddItemToArray(toks, cJSON_CreateString(t));
        if (i == 0) {
            cJSON_AddItemToArray(tlp, cJSON_CreateNull());
            cJSON_AddItemToArray(tops, cJSON_CreateNull());
            continue;
        }
        cJSON_AddItemToArray(tlp, cJSON_CreateNumber(lp_value(p->logprob)));
        cJSON *m = cJSON_CreateObject();
        cJSON_AddNumberToObject(m, t, lp_value(p->logprob));
        for (int k = 0; k < out->n_prompt_top && k < o->r.logprobs; k++) {
            const eng_logprob_t *lp = &out->prompt_tops[(size_t)i * (size_t)out->n_prompt_top + (size_t)k];
            token_text(srv, o, lp->token, t, sizeof(t));
            if (cJSON_GetObjectItemCaseSensitive(m, t) == NULL) /* exact keys, as vLLM */
                cJSON_AddNumberToObject(m, t, lp_value(lp->logprob));
        }
        cJSON_AddItemToArray(tops, m);
    }
}

static cJSON *comp_lp_new(void)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddArrayToObject(o, "text_offset");
    cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON_AddArrayToObject(o, "tokens");
    cJSON_AddArrayToObject(o, "top_logprobs");
    return o;
}

static cJSON *usage_json(const oreq_t *o)
{
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", o->prompt_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", o->prompt_tokens + o->completion_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", o->completion_tokens);
    if (o->srv->args->enable_prompt_tokens_details) {
        cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
        cJSON_AddNumberToObject(d, "cached_tokens", o->cached_tokens);
    } else {
        cJSON_AddNullToObject(u, "prompt_tokens_details");
    }
    return u;
}

static cJSON *stop_reason_json(const eng_output_t *out)
{
    if (out->stop_str)
        return cJSON_CreateString(out->stop_str);
    if (out->stop_token >= 0 && strcmp(out->finish_reason, "stop") == 0)
        return cJSON_CreateNumber(out->stop_token);
    return NULL;
}

static void tokstr_cb(void *user, int32_t id, char *buf, size_t buflen)
{
    const oreq_t *o = user;
    token_text(o->srv, o, id, buf, buflen);
}

/* Queue what the chunk writers appended to o->sbuf with one write (one lock and at most
 * one wake of the HTTP worker); a failed append (out of memory) drops the events. */
static void stream_flush(oreq_t *o, pd_status_t st)
{
    if (st == PD_OK && o->sbuf.len > 0)
        pd_http_stream_write(o->stream, o->sbuf.data, o->sbuf.len);
    else if (st != PD_OK)
        PD_LOG_REQ(WARN, pd_http_stream_req_id(o->stream), "cannot format a stream chunk: %s",
                   pd_status_str(st));
    pd_buf_reset(&o->sbuf);
}

/* One engine event of a chat stream with reasoning and/or tool parsing: the text goes
 * through the choice's reasoning parser (its reasoning part is sent as
 * delta.reasoning_content) and then its tool parser; what that lets through is sent as
 * content (with the event's logprobs), then each call it completed as a tool_calls delta
 * (the whole call in one delta: id, type, name and the complete arguments), then, when
 * the choice finished, a last chunk with the finish reason ("tool_calls" once a call was
 * sent, as vLLM). */
static pd_status_t stream_parsed_event(oreq_t *o, sub_t *s, choice_t *c, int index, const eng_output_t *out)
{
    pd_buf_t content, reasoning, after;
    cJSON *calls = NULL;
    eng_output_t ev = *out;
    pd_status_t st = PD_OK;

    pd_buf_init(&content);
    pd_buf_init(&reasoning);
    pd_buf_init(&after);
    /* reasoning first (--enable-reasoning), then the tool parser over what follows it */
    const char *text = out->text;
    size_t tlen = out->text_len;
    if (o->reasoning != ENG_REASONING_NONE) {
        st = eng_reasoning_stream_feed(&c->rs, out->text, out->text_len, out->finished, &reasoning, &after);
        text = after.data ? after.data : "";
        tlen = after.len;
    }
    if (st == PD_OK && o->tools != ENG_TOOL_PARSER_NONE)
        st = eng_tool_stream_feed(&c->ts, text, tlen, out->finished, &content, &calls);
    else if (st == PD_OK && tlen > 0)
        st = pd_buf_append(&content, text, tlen);
    ev.text = content.data ? content.data : "";
    ev.text_len = content.len;
    ev.finished = false;
    if (st == PD_OK && (content.len > 0 || reasoning.len > 0 || (o->r.want_logprobs && out->n_token_ids > 0)))
        st = eng_oai_chunk_event_r(&o->ck, &o->sbuf, index, &ev, reasoning.data, reasoning.len, s->n_prompt,
                                   &c->text_offset);
    pd_buf_cleanup(&reasoning);
    pd_buf_cleanup(&after);
    for (int k = 0; st == PD_OK && k < cJSON_GetArraySize(calls); k++) {
        char *js = cJSON_PrintUnformatted(cJSON_GetArrayItem(calls, k));
        st = js ? eng_oai_chunk_tool_call(&o->ck, &o->sbuf, index, js) : PD_ERR_NOMEM;
        cJSON_free(js);
    }
    cJSON_Delete(calls);
    pd_buf_cleanup(&content);
    if (st == PD_OK && out->finished) {
        ev = *out;
        ev.text = "";
        ev.text_len = 0;
        ev.n_token_ids = 0;
        ev.token_logprobs = NULL;
        ev.tops = NULL;
        ev.n_top = 0;
        if (c->ts.n_calls > 0)
            ev.finish_reason = "tool_calls";
        st = eng_oai_chunk_event(&o->ck, &o->sbuf, index, &ev, s->n_prompt, &c->text_offset);
    }
    return st;
}

static void stream_event(oreq_t *o, sub_t *s, choice_t *c, int index, const eng_output_t *out)
{
    eng_server_t *srv = o->srv;
    pd_status_t st = PD_OK;

    if (!c->started) {
        c->started = true;
        if (o->chat) {
            st = eng_oai_chunk_role(&o->ck, &o->sbuf, index, s->n_prompt);
        } else if (s->echo) {
            char *lpj = NULL;
            if (o->r.want_logprobs && out->n_prompt_logprobs > 0) {
                /* once per choice: the prompt tokens' logprobs, through the same
                 * writer as the non-streamed response */
                cJSON *lp = comp_lp_new();
                comp_lp_append_prompt(srv, o, lp, out, c);
                lpj = cJSON_PrintUnformatted(lp);
                cJSON_Delete(lp);
            }
            st = eng_oai_chunk_echo(&o->ck, &o->sbuf, index, s->echo, strlen(s->echo), lpj, NULL, s->n_prompt);
            free(lpj);
        }
    }
    if (st == PD_OK && (o->tools != ENG_TOOL_PARSER_NONE || o->reasoning != ENG_REASONING_NONE)) {
        st = stream_parsed_event(o, s, c, index, out);
        goto flush;
    }
    if (out->text_len == 0 && !out->finished && out->n_token_ids == 0)
        goto flush;
    if (out->text_len == 0 && !out->finished && !o->r.want_logprobs && eng_engine_tokenizer(srv->engine) != NULL)
        goto flush; /* a token whose text is held back (partial UTF-8, possible stop string) */
    if (st == PD_OK)
        st = eng_oai_chunk_event(&o->ck, &o->sbuf, index, out, s->n_prompt, &c->text_offset);
flush:
    stream_flush(o, st);
}

static void accumulate(oreq_t *o, sub_t *s, choice_t *c, const eng_output_t *out)
{
    eng_server_t *srv = o->srv;
    if (out->n_prompt_logprobs > 0 && s->plp == NULL && o->r.want_prompt_logprobs)
        s->plp = prompt_lp_json(srv, o, out);
    if (!c->started) {
        c->started = true;
        if (s->echo)
            pd_buf_puts(&c->text, s->echo);
        if (s->echo && o->r.want_logprobs && out->n_prompt_logprobs > 0) {
            c->lp = comp_lp_new();
            comp_lp_append_prompt(srv, o, c->lp, out, c);
        }
    }
    if (out->text_len)
        pd_buf_append(&c->text, out->text, out->text_len);
    if (eng_engine_tokenizer(srv->engine) == NULL) {
        /* no tokenizer: the output is its token ids */
        if (c->ids == NULL)
            c->ids = cJSON_CreateArray();
        for (int i = 0; c->ids && i < out->n_token_ids; i++)
            cJSON_AddItemToArray(c->ids, cJSON_CreateNumber(out->token_ids[i]));
    }
    if (o->r.want_logprobs && out->token_logprobs && out->n_token_ids > 0) {
        if (o->chat) {
            if (c->lp == NULL)
                c->lp = cJSON_CreateArray();
            for (int i = 0; i < out->n_token_ids; i++)
                cJSON_AddItemToArray(c->lp, chat_lp_entry(srv, o, out, i));
        } else {
            if (c->lp == NULL)
                c->lp = comp_lp_new();
            comp_lp_append(srv, o, c->lp, out, c);
        }
    }
}

static char *final_response(oreq_t *o)
{
    cJSON *resp = cJSON_CreateObject(), *choices;
    char *s;
    cJSON_AddStringToObject(resp, "id", o->id);
    cJSON_AddStringToObject(resp, "object", o->chat ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(resp, "created", (double)o->created);
    cJSON_AddStringToObject(resp, "model", o->srv->names[0]);
    choices = cJSON_AddArrayToObject(resp, "choices");
    for (int i = 0; i < o->n_subs * o->n_per; i++) {
        choice_t *c = &o->choices[i];
        cJSON *cj = cJSON_CreateObject();
        cJSON_AddNumberToObject(cj, "index", i);
        if (o->chat) {
            cJSON *msg = cJSON_AddObjectToObject(cj, "message"), *calls = NULL;
            char *content = NULL, *reasoning = NULL, *body = NULL;
            const char *text = c->text.data ? c->text.data : "";
            size_t tlen = c->text.len;
            cJSON_AddStringToObject(msg, "role", "assistant");
            /* --enable-reasoning: the reasoning part first; what follows it is the text
             * the tool parser (if any) reads and the content */
            if (o->reasoning != ENG_REASONING_NONE &&
                eng_reasoning_split(o->reasoning, text, tlen, &reasoning, &body) == PD_OK) {
                text = body ? body : "";
                tlen = body ? strlen(body) : 0;
            }
            cJSON_AddItemToObject(msg, "reasoning_content", reasoning ? cJSON_CreateString(reasoning) : cJSON_CreateNull());
            if (o->tools != ENG_TOOL_PARSER_NONE && tlen > 0 && eng_tool_parse(o->tools, text, tlen, &content, &calls)) {
                /* vLLM: content beside the calls (null when none), finish_reason tool_calls */
                cJSON_AddItemToObject(msg, "content", content ? cJSON_CreateString(content) : cJSON_CreateNull());
                cJSON_AddItemToObject(msg, "tool_calls", calls);
                c->finish_reason = "tool_calls";
                free(content);
            } else {
                /* with a reasoning parser an empty content is null, as vLLM */
                cJSON_AddItemToObject(msg, "content", o->reasoning != ENG_REASONING_NONE && tlen == 0
                                                          ? cJSON_CreateNull()
                                                          : cJSON_CreateString(text));
                cJSON_AddArrayToObject(msg, "tool_calls");
            }
            free(reasoning);
            free(body);
            if (c->lp) {
                cJSON *lp = cJSON_AddObjectToObject(cj, "logprobs");
                cJSON_AddItemToObject(lp, "content", c->lp);
                c->lp = NULL;
            } else {
                cJSON_AddNullToObject(cj, "logprobs");
            }
        } else {
            cJSON_AddItemToObject(cj, "text", cJSON_CreateString(c->text.data ? c->text.data : ""));
            if (c->lp) {
                cJSON_AddItemToObject(cj, "logprobs", c->lp);
                c->lp = NULL;
            } else {
                cJSON_AddNullToObject(cj, "logprobs");
            }
        }
        if (c->ids) {
            cJSON_AddItemToObject(cj, "token_ids", c->ids);
            c->ids = NULL;
        }
        cJSON_AddStringToObject(cj, "finish_reason", c->finish_reason ? c->finish_reason : "abort");
        cJSON_AddItemToObject(cj, "stop_reason", c->stop_reason ? c->stop_reason : cJSON_CreateNull());
        c->stop_reason = NULL;
        if (!o->chat) {
            const cJSON *plp = o->subs[i / o->n_per].plp;
            cJSON_AddItemToObject(cj, "prompt_logprobs", plp ? cJSON_Duplicate(plp, 1) : cJSON_CreateNull());
        }
        cJSON_AddItemToArray(choices, cj);
    }
    cJSON_AddItemToObject(resp, "usage", usage_json(o));
    if (o->chat)
        cJSON_AddItemToObject(resp, "prompt_logprobs",
                              o->subs[0].plp ? cJSON_Duplicate(o->subs[0].plp, 1) : cJSON_CreateNull());
    if (o->kv_params) {
        cJSON_AddItemToObject(resp, "kv_transfer_params", o->kv_params);
        o->kv_params = NULL;
    } else {
        cJSON_AddNullToObject(resp, "kv_transfer_params");
    }
    s = cJSON_PrintUnformatted(resp);
    cJSON_Delete(resp);
    return s;
}

static void observe_metrics(eng_server_t *srv, const eng_output_t *out, choice_t *c, uint64_t now)
{
    if (out->n_token_ids > 0) {
        if (c->n_tokens == 0) {
            pd_metric_observe(srv->m_ttft, out->t_first_token);
        } else if (c->t_last) {
            double gap = (double)(now - c->t_last) * 1e-9;
            pd_metric_observe(srv->m_itl, gap);
            pd_metric_observe(srv->m_tpot, gap);
        }
        c->n_tokens += out->n_token_ids;
        c->t_last = now;
    }
}

/* The response's kv_transfer_params: the producer's lease (vLLM's NixlConnector
 * shape) or the consumer's load-failure note. */
static cJSON *kv_params_json(eng_server_t *srv, const eng_output_t *out)
{
    cJSON *kv;
    if (out->kv_leased && srv->disagg) {
        kv = cJSON_CreateObject();
        cJSON_AddBoolToObject(kv, "do_remote_prefill", 1);
        cJSON_AddBoolToObject(kv, "do_remote_decode", 0);
        cJSON *ids = cJSON_AddArrayToObject(kv, "remote_block_ids");
        for (int i = 0; i < out->n_kv_block_ids; i++)
            cJSON_AddItemToArray(ids, cJSON_CreateNumber(out->kv_block_ids[i]));
        cJSON_AddStringToObject(kv, "remote_engine_id", eng_disagg_engine_id(srv->disagg));
        cJSON_AddStringToObject(kv, "remote_request_id", out->request_id);
        cJSON_AddStringToObject(kv, "remote_host", eng_disagg_host(srv->disagg));
        cJSON_AddNumberToObject(kv, "remote_port", eng_disagg_port(srv->disagg));
        cJSON_AddNumberToObject(kv, "tp_size", 1);
        return kv;
    }
    if (out->kv_load_failure) {
        kv = cJSON_CreateObject();
        cJSON_AddStringToObject(kv, "kv_load_failure", out->kv_load_failure);
        return kv;
    }
    return NULL;
}

static void on_output(void *user, const eng_output_t *out)
{
    sub_t *s = user;
    oreq_t *o = s->o;
    eng_server_t *srv = o->srv;
    int index = s->index * o->n_per + out->seq_index;
    choice_t *c = &o->choices[index];
    uint64_t now = pd_now_ns();
    char *final = NULL;
    bool finish_http = false, stream_end = false;

    pthread_mutex_lock(&o->mu);
    if (out->request_done && out->kv_leased && o->http_done && srv->disagg) {
        /* the client left while this request was prefilled: nobody will pull its
         * blocks, so end the lease now rather than when it expires */
        pthread_mutex_unlock(&o->mu);
        eng_disagg_lease_abort(srv->disagg, out->request_id);
        pthread_mutex_lock(&o->mu);
    }
    if (out->request_done) {
        cJSON *kv = kv_params_json(srv, out);
        if (kv) {
            cJSON_Delete(o->kv_params);
            o->kv_params = kv;
        }
        if (out->kv_error && !out->kv_leased && o->kv_error == NULL && !o->r.kv.do_remote_decode)
            o->kv_error = strdup(out->kv_error);
    }
    observe_metrics(srv, out, c, now);
    if (out->finished) {
        c->finish_reason = out->finish_reason;
        cJSON_Delete(c->stop_reason);
        c->stop_reason = stop_reason_json(out);
        o->completion_tokens += out->n_output_tokens;
        pd_metric_observe(srv->m_req_gen, out->n_output_tokens);
        double e2e = (double)(now - o->t_start) * 1e-9;
        pd_metric_observe(srv->m_e2e, e2e);
        pd_metric_observe(srv->m_queue, out->t_queue);
        pd_metric_observe(srv->m_prefill, out->t_first_token > out->t_queue ? out->t_first_token - out->t_queue : 0);
        pd_metric_observe(srv->m_decode, e2e > out->t_first_token ? e2e - out->t_first_token : 0);
        for (int k = 0; k < 4; k++)
            if (strcmp(out->finish_reason, (const char *[]){"stop", "length", "abort", "error"}[k]) == 0)
                pd_metric_inc(srv->m_success[k]);
    }
    if (!o->http_done && !o->failed) {
        if (o->stream)
            stream_event(o, s, c, index, out);
        else
            accumulate(o, s, c, out);
    }
    if (out->request_done) {
        s->done = true;
        o->n_done++;
        o->prompt_tokens += s->n_prompt;
        o->cached_tokens += s->n_cached;
        pd_metric_observe(srv->m_req_prompt, s->n_prompt);
        if (o->n_done == o->n_submitted && o->n_submitted == o->n_subs && !o->http_done && !o->failed) {
            if (o->stream && o->kv_error) {
                char *ej = pd_http_error_json(503, NULL, o->kv_error, NULL, NULL);
                if (ej)
                    pd_http_sse_send(o->stream, ej);
                free(ej);
                pd_http_sse_done(o->stream);
                stream_end = true;
            } else if (o->stream) {
                if (o->r.include_usage)
                    stream_flush(o, eng_oai_chunk_usage(&o->ck, &o->sbuf, o->prompt_tokens, o->completion_tokens,
                                                        o->cached_tokens));
                pd_http_sse_done(o->stream);
                stream_end = true; /* the close callback drops the HTTP reference */
            } else {
                final = o->kv_error ? NULL : final_response(o);
                o->http_done = true;
                finish_http = true;
            }
        }
    }
    pthread_mutex_unlock(&o->mu);
    if (stream_end)
        pd_http_stream_end(o->stream);
    if (finish_http) {
        if (final)
            pd_http_respond_json(o->req, 200, NULL, final);
        else if (o->kv_error)
            pd_http_respond_error(o->req, 503, NULL, o->kv_error, NULL, NULL);
        else
            pd_http_respond_error(o->req, 500, NULL, "cannot build the response", NULL, NULL);
        cJSON_free(final);
        oreq_unref(o); /* HTTP side */
    }
    if (out->request_done)
        oreq_unref(o); /* this engine request */
}

/* The client left (or the stream closed): abort whatever is still running.  Returns
 * whether this call took the HTTP side over (nobody else will answer). */
static bool abort_subs(oreq_t *o)
{
    char ids[16][128];
    int n = 0;
    bool mine = false;

    pthread_mutex_lock(&o->mu);
    if (!o->http_done) {
        o->http_done = true;
        mine = true;
    }
    pthread_mutex_unlock(&o->mu);
    if (!mine)
        return false;
    /* ids are immutable after submission; done flags may race harmlessly (aborting a
     * finished request is a no-op) */
    for (int i = 0; i < o->n_submitted; i++) {
        if (!o->subs[i].done) {
            if (n == 16) {
                for (int k = 0; k < n; k++)
                    eng_engine_abort(o->srv->engine, ids[k]);
                n = 0;
            }
            snprintf(ids[n++], sizeof(ids[0]), "%s", o->subs[i].id);
        }
    }
    for (int k = 0; k < n; k++)
        eng_engine_abort(o->srv->engine, ids[k]);
    oreq_unref(o); /* HTTP side */
    return true;
}

static void on_req_close(pd_http_req_t *req, void *user)
{
    oreq_t *o = user;
    PD_LOG_REQ(INFO, pd_http_req_id(req), "client disconnected; aborting");
    /* the request stays valid until answered: an answer to the gone client frees it
     * (pd_http.h); without one the layer's request leaked */
    if (abort_subs(o))
        pd_http_respond_error(req, 499, NULL, "client disconnected", NULL, NULL);
}

static void on_stream_close(pd_http_stream_t *stream, pd_status_t status, void *user)
{
    oreq_t *o = user;
    if (status != PD_OK)
        PD_LOG_REQ(INFO, pd_http_stream_req_id(stream), "stream closed by the client; aborting");
    pd_http_stream_release(stream);
    abort_subs(o);
}

/* ---- shared helpers ---- */

bool eng_server_model_ok(const eng_server_t *srv, const char *name)
{
    if (name == NULL)
        return true;
    for (int i = 0; i < srv->n_names; i++)
        if (strcmp(srv->names[i], name) == 0)
            return true;
    return false;
}

pd_status_t eng_server_tokenize(eng_server_t *srv, const char *text, bool add_special, int32_t **ids_p,
                                int *n_p, eng_oai_err_t *err)
{
    const eng_tok_t *tok = eng_engine_tokenizer(srv->engine);
    eng_tok_ids_t ids;
    if (tok == NULL) {
        err->status = 400;
        snprintf(err->message, sizeof(err->message), "text prompts need a tokenizer, but the server runs "
                 "with --skip-tokenizer-init: send token ids");
        snprintf(err->param, sizeof(err->param), "prompt");
        return PD_ERR_INVAL;
    }
    eng_tok_ids_init(&ids);
    if (eng_tok_encode(tok, text, strlen(text), add_special, &ids) != PD_OK) {
        eng_tok_ids_cleanup(&ids);
        err->status = 400;
        snprintf(err->message, sizeof(err->message), "the prompt cannot be tokenized");
        return PD_ERR_INVAL;
    }
    *ids_p = ids.ids;
    *n_p = (int)ids.n;
    return PD_OK;
}

pd_status_t eng_server_chat_prompt(eng_server_t *srv, const eng_oai_req_t *r, int32_t **ids_p, int *n_p,
                                   eng_oai_err_t *err)
{
    const eng_template_t *tpl = eng_engine_template(srv->engine);
    pd_buf_t text;
    char msg[400];
    pd_status_t st;

    if (r->chat_template) {
        err->status = 400;
        snprintf(err->message, sizeof(err->message), "request-supplied chat templates are not executed "
                 "(a security risk); configure the template on the server");
        snprintf(err->param, sizeof(err->param), "chat_template");
        return PD_ERR_INVAL;
    }
    if (tpl == NULL) {
        err->status = 400;
        snprintf(err->message, sizeof(err->message), "the model has no chat template; use /v1/completions");
        return PD_ERR_INVAL;
    }
    pd_buf_init(&text);
    st = eng_chat_apply(tpl, r->messages, r->tools, r->documents, r->add_generation_prompt,
                        r->continue_final_message, r->chat_template_kwargs, eng_engine_bos_str(srv->engine),
                        eng_engine_eos_str(srv->engine), &text, msg, sizeof(msg));
    if (st != PD_OK) {
        pd_buf_cleanup(&text);
        err->status = 400;
        snprintf(err->message, sizeof(err->message), "chat template error: %s", msg);
        return PD_ERR_INVAL;
    }
    st = eng_server_tokenize(srv, text.data ? text.data : "", r->add_special_tokens, ids_p, n_p, err);
    pd_buf_cleanup(&text);
    return st;
}

/* bad_words -> token sequences, as vLLM does: each word as written (leading spaces
 * stripped) and with one leading space when that gives a different first token and the
 * same length. */
static pd_status_t add_bad_words(eng_server_t *srv, eng_oai_req_t *r, eng_oai_err_t *err)
{
    const eng_tok_t *tok = eng_engine_tokenizer(srv->engine);
    for (int w = 0; w < r->n_bad_words; w++) {
        const char *word = r->bad_words[w];
        int32_t first = -1;
        int len0 = -1;
        char buf[1100];
        while (*word == ' ')
            word++;
        if (tok == NULL) {
            err->status = 400;
            snprintf(err->message, sizeof(err->message), "bad_words need a tokenizer (--skip-tokenizer-init)");
            snprintf(err->param, sizeof(err->param), "bad_words");
            return PD_ERR_INVAL;
        }
        for (int space = 0; space < 2; space++) {
            eng_tok_ids_t ids;
            pd_status_t st;
            snprintf(buf, sizeof(buf), "%s%s", space ? " " : "", word);
            eng_tok_ids_init(&ids);
            st = eng_tok_encode(tok, buf, strlen(buf), false, &ids);
            if (st == PD_OK && ids.n > 0 && (!space || (ids.ids[0] != first && (int)ids.n == len0))) {
                for (size_t i = 0; i < ids.n; i++) {
                    if (ids.ids[i] < 0 || ids.ids[i] >= srv->limits.vocab_size) {
                        err->status = 400;
                        snprintf(err->message, sizeof(err->message), "bad word '%.64s' has token %d outside the "
                                 "model's vocabulary (%lld)", word, ids.ids[i], (long long)srv->limits.vocab_size);
                        snprintf(err->param, sizeof(err->param), "bad_words");
                        st = PD_ERR_INVAL;
                        break;
                    }
                }
                if (st == PD_OK)
                    st = eng_sampling_params_add_bad_word(&r->params, ids.ids, (int)ids.n);
            }
            if (st == PD_OK && !space && ids.n > 0) {
                first = ids.ids[0];
                len0 = (int)ids.n;
            }
            eng_tok_ids_cleanup(&ids);
            if (st != PD_OK) {
                if (err->status == 0) {
                    err->status = 500;
                    snprintf(err->message, sizeof(err->message), "cannot tokenize bad_words");
                }
                return st;
            }
        }
    }
    return PD_OK;
}

static pd_status_t ctx_error(eng_oai_err_t *err, int64_t max_len, int prompt, int max_tokens, bool chat)
{
    err->status = 400;
    if (max_tokens > 0)
        snprintf(err->message, sizeof(err->message),
                 "This model's maximum context length is %lld tokens. However, you requested %lld tokens "
                 "(%d in the %s, %d in the completion). Please reduce the length of the %s or completion.",
                 (long long)max_len, (long long)prompt + max_tokens, prompt, chat ? "messages" : "prompt",
                 max_tokens, chat ? "messages" : "prompt");
    else
        snprintf(err->message, sizeof(err->message),
                 "This model's maximum context length is %lld tokens. However, your %s has %d tokens. "
                 "Please reduce the length of the %s.", (long long)max_len, chat ? "messages" : "prompt",
                 prompt, chat ? "messages" : "prompt");
    return PD_ERR_RANGE;
}

/* The request line of the log (unless --disable-log-requests): the first prompt's text
 * (completions) or last message (chat) and its token ids, each cut at --max-log-len
 * characters / ids (vLLM's meaning; unset: 1024 / 256, a log line is at most 4 KiB). */
static void log_request(eng_server_t *srv, pd_http_req_t *req, const oreq_t *o, const int32_t *ids, int n_ids)
{
    const pd_serve_args_t *a = srv->args;
    int lim_chars = a->set[PD_SERVE_OPT_max_log_len] ? (int)a->max_log_len : 1024;
    int lim_ids = a->set[PD_SERVE_OPT_max_log_len] ? (int)a->max_log_len : 256;
    const char *text = NULL;
    char idbuf[2048];
    size_t w = 0;

    if (!o->chat) {
        text = o->r.prompts[0].text;
    } else {
        const cJSON *last = cJSON_GetArrayItem(o->r.messages, cJSON_GetArraySize(o->r.messages) - 1);
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(last, "content");
        text = cJSON_IsString(c) ? c->valuestring : NULL;
    }
    if (lim_chars > 1024)
        lim_chars = 1024;
    idbuf[0] = '\0';
    for (int i = 0; i < n_ids && i < lim_ids && w + 16 < sizeof(idbuf); i++)
        w += (size_t)snprintf(idbuf + w, sizeof(idbuf) - w, "%s%d", i ? ", " : "", ids[i]);
    PD_LOG_REQ(INFO, pd_http_req_id(req), "%s: prompt: '%.*s'%s, prompt_token_ids: [%s%s], %d prompt(s), "
               "%d prompt tokens, n=%d, max_tokens=%d, stream=%d", o->chat ? "chat" : "completion", lim_chars,
               text ? text : "", text && (int)strlen(text) > lim_chars ? "..." : "", idbuf,
               n_ids > lim_ids ? ", ..." : "", o->n_subs, n_ids, o->n_per, o->r.params.max_tokens, o->r.stream);
}

/* ---- the handler ---- */

/* The request will not reach the engine: free the prefill node's lease now. */
static void release_remote(eng_server_t *srv, const eng_oai_req_t *r)
{
    eng_remote_kv_t remote;
    if (!r->kv.do_remote_prefill || srv->disagg == NULL)
        return;
    remote.engine_id = r->kv.remote_engine_id;
    remote.host = r->kv.remote_host;
    remote.port = r->kv.remote_port;
    remote.request_id = r->kv.remote_request_id;
    remote.block_ids = r->kv.remote_block_ids;
    remote.n_block_ids = r->kv.n_remote_block_ids;
    eng_disagg_release_remote(srv->disagg, &remote);
}

/* Completions with echo and max_tokens 0 (vLLM): every choice is the prompt's text,
 * finish_reason "length", no completion tokens; nothing reaches the engine.  Takes o
 * over (the response is posted and o freed, or handed to the stream's close callback). */
static void echo_only(eng_server_t *srv, pd_http_req_t *req, oreq_t *o)
{
    int n_choices = o->n_subs * o->n_per;
    pd_status_t st = PD_OK;

    release_remote(srv, &o->r); /* a decode leg's prompt KV is not needed */
    for (int i = 0; i < n_choices; i++) {
        sub_t *s = &o->subs[i / o->n_per];
        o->choices[i].started = true;
        o->choices[i].finish_reason = "length";
        if (st == PD_OK && s->echo)
            st = pd_buf_puts(&o->choices[i].text, s->echo);
    }
    for (int i = 0; i < o->n_subs; i++)
        o->prompt_tokens += o->subs[i].n_prompt;
    if (!o->r.stream) {
        char *final = st == PD_OK ? final_response(o) : NULL;
        if (final)
            pd_http_respond_json(req, 200, NULL, final);
        else
            pd_http_respond_error(req, 500, NULL, "cannot build the response", NULL, NULL);
        cJSON_free(final);
        __atomic_sub_fetch(&srv->inflight, 1, __ATOMIC_RELAXED);
        oreq_free(o);
        return;
    }
    o->refs = 1; /* the HTTP side, dropped by the close callback */
    if (pd_http_stream_begin(req, "text/event-stream", on_stream_close, o, &o->stream) != PD_OK) {
        pd_http_respond_error(req, 500, NULL, "cannot start the stream", NULL, NULL);
        __atomic_sub_fetch(&srv->inflight, 1, __ATOMIC_RELAXED);
        oreq_free(o);
        return;
    }
    pthread_mutex_lock(&o->mu);
    for (int i = 0; i < n_choices && st == PD_OK; i++) {
        const sub_t *sb = &o->subs[i / o->n_per];
        const char *text = sb->echo ? sb->echo : "";
        st = eng_oai_chunk_echo(&o->ck, &o->sbuf, i, text, strlen(text), NULL, "length", sb->n_prompt);
    }
    if (st == PD_OK && o->r.include_usage)
        st = eng_oai_chunk_usage(&o->ck, &o->sbuf, o->prompt_tokens, 0, 0);
    stream_flush(o, st);
    pthread_mutex_unlock(&o->mu);
    pd_http_sse_done(o->stream);
    pd_http_stream_end(o->stream);
}

static void handle(pd_http_req_t *req, eng_server_t *srv, eng_oai_kind_t kind)
{
    size_t len;
    const char *body = pd_http_req_body(req, &len);
    eng_oai_err_t err;
    oreq_t *o = calloc(1, sizeof(*o));
    int32_t **ids = NULL;
    int *n_ids = NULL;
    int64_t max_len = eng_engine_max_model_len(srv->engine);
    int n_reserved = 0; /* admission room held and not yet used by a submit */
    char rid[33];

    if (o == NULL) {
        pd_http_respond_error(req, 500, NULL, "out of memory", NULL, NULL);
        return;
    }
    pthread_mutex_init(&o->mu, NULL);
    o->srv = srv;
    o->req = req;
    o->chat = kind == ENG_OAI_CHAT;
    o->created = pd_unix_time();
    o->t_start = pd_now_ns();
    __atomic_add_fetch(&srv->inflight, 1, __ATOMIC_RELAXED);
    if (eng_oai_parse(kind, body, len, &srv->limits, &o->r, &err) != PD_OK) {
        eng_oai_req_t kvr; /* a refused decode leg still ends the prefill node's lease */
        if (srv->disagg != NULL && eng_oai_parse_kv_only(body, len, &kvr) == PD_OK) {
            release_remote(srv, &kvr);
            eng_oai_req_cleanup(&kvr);
        }
        goto fail;
    }
    if (!eng_server_model_ok(srv, o->r.model)) {
        err.status = 404;
        snprintf(err.message, sizeof(err.message), "The model `%.200s` does not exist.", o->r.model);
        snprintf(err.param, sizeof(err.param), "model");
        goto fail;
    }
    if (add_bad_words(srv, &o->r, &err) != PD_OK)
        goto fail;
    if (o->r.kv.do_remote_decode) {
        if (!eng_disagg_is_producer(srv->disagg)) {
            err.status = 400;
            snprintf(err.message, sizeof(err.message), "kv_transfer_params: do_remote_decode needs a KV producer "
                     "(start the node with --kv-transfer-config and kv_role kv_producer)");
            snprintf(err.param, sizeof(err.param), "kv_transfer_params");
            goto fail;
        }
        if (!o->chat && o->r.n_prompts != 1) {
            err.status = 400;
            snprintf(err.message, sizeof(err.message), "kv_transfer_params: a disaggregated request carries one prompt");
            snprintf(err.param, sizeof(err.param), "prompt");
            goto fail;
        }
        /* the prefill leg samples one sequence: n only matters on the decode node */
        o->r.params.n = 1;
        o->r.params.best_of = 0;
    }
    if (o->r.kv.do_remote_prefill) {
        if (!eng_disagg_is_consumer(srv->disagg)) {
            err.status = 400;
            snprintf(err.message, sizeof(err.message), "kv_transfer_params: do_remote_prefill needs a KV consumer "
                     "(start the node with --kv-transfer-config and kv_role kv_consumer or kv_both)");
            snprintf(err.param, sizeof(err.param), "kv_transfer_params");
            goto fail;
        }
        if (!o->chat && o->r.n_prompts != 1) {
            err.status = 400;
            snprintf(err.message, sizeof(err.message), "kv_transfer_params: a disaggregated request carries one prompt");
            snprintf(err.param, sizeof(err.param), "prompt");
            goto fail;
        }
    }
    pd_random_hex_id(rid);
    snprintf(o->id, sizeof(o->id), "%s-%s", o->chat ? "chatcmpl" : "cmpl", rid);
    if (o->r.stream) {
        if (eng_oai_chunker_init(&o->ck, o->chat, o->id, o->created, srv->names[0]) != PD_OK) {
            err.status = 500;
            snprintf(err.message, sizeof(err.message), "out of memory");
            goto fail;
        }
        o->ck.want_logprobs = o->r.want_logprobs;
        o->ck.emit_token_ids = eng_engine_tokenizer(srv->engine) == NULL;
        o->ck.continuous_usage = o->r.continuous_usage_stats;
        o->ck.prompt_details = srv->args->enable_prompt_tokens_details;
        o->ck.tokstr = tokstr_cb;
        o->ck.tok_user = o;
    }
    o->n_subs = o->chat ? 1 : o->r.n_prompts;
    o->n_per = o->r.params.n > 0 ? o->r.params.n : 1;
    o->subs = calloc((size_t)o->n_subs, sizeof(*o->subs));
    o->choices = calloc((size_t)o->n_subs * (size_t)o->n_per, sizeof(*o->choices));
    ids = calloc((size_t)o->n_subs, sizeof(*ids));
    n_ids = calloc((size_t)o->n_subs, sizeof(*n_ids));
    if (!o->subs || !o->choices || !ids || !n_ids) {
        err.status = 500;
        snprintf(err.message, sizeof(err.message), "out of memory");
        goto fail;
    }
    /* tool_choice auto: the output's calls are parsed (streamed: per choice, as it comes);
     * the mistral marker is a special token, so it stays in the text (as vLLM's parser) */
    o->tools = o->chat && o->r.tool_auto ? srv->tool_parser : ENG_TOOL_PARSER_NONE;
    o->reasoning = o->chat ? srv->reasoning_parser : ENG_REASONING_NONE;
    for (int i = 0; i < o->n_subs * o->n_per; i++) {
        eng_tool_stream_init(&o->choices[i].ts, o->tools);
        eng_reasoning_stream_init(&o->choices[i].rs, o->reasoning);
    }
    if (o->tools == ENG_TOOL_PARSER_MISTRAL)
        o->r.params.skip_special_tokens = false;
    /* prompts -> token ids; every length checked before anything is submitted */
    for (int i = 0; i < o->n_subs; i++) {
        sub_t *s = &o->subs[i];
        s->o = o;
        s->index = i;
        if (o->chat) {
            if (eng_server_chat_prompt(srv, &o->r, &ids[i], &n_ids[i], &err) != PD_OK)
                goto fail;
        } else if (o->r.prompts[i].text) {
            if (eng_server_tokenize(srv, o->r.prompts[i].text, o->r.add_special_tokens, &ids[i], &n_ids[i], &err) != PD_OK)
                goto fail;
            if (o->r.echo && (s->echo = strdup(o->r.prompts[i].text)) == NULL)
                goto fail;
        } else {
            n_ids[i] = o->r.prompts[i].n_ids;
            ids[i] = malloc((size_t)n_ids[i] * sizeof(int32_t) + 1);
            if (ids[i] == NULL)
                goto fail;
            memcpy(ids[i], o->r.prompts[i].ids, (size_t)n_ids[i] * sizeof(int32_t));
            if (o->r.echo) {
                const eng_tok_t *tok = eng_engine_tokenizer(srv->engine);
                pd_buf_t b;
                pd_buf_init(&b);
                if (tok)
                    eng_tok_decode(tok, ids[i], (size_t)n_ids[i], false, false, &b); /* as vLLM */
                s->echo = pd_buf_steal(&b);
            }
        }
        if (o->r.params.truncate_prompt_tokens > 0 && n_ids[i] > o->r.params.truncate_prompt_tokens) {
            int keep = o->r.params.truncate_prompt_tokens;
            memmove(ids[i], ids[i] + n_ids[i] - keep, (size_t)keep * sizeof(int32_t));
            n_ids[i] = keep;
        }
        if (n_ids[i] == 0) {
            err.status = 400;
            snprintf(err.message, sizeof(err.message), "the prompt is empty after tokenization");
            snprintf(err.param, sizeof(err.param), o->chat ? "messages" : "prompt");
            goto fail;
        }
        if (n_ids[i] >= max_len) {
            ctx_error(&err, max_len, n_ids[i], 0, o->chat);
            goto fail;
        }
        if (o->r.has_max_tokens && (int64_t)n_ids[i] + o->r.params.max_tokens > max_len) {
            ctx_error(&err, max_len, n_ids[i], o->r.params.max_tokens, o->chat);
            goto fail;
        }
        s->n_prompt = n_ids[i];
    }
    if (srv->log_requests)
        log_request(srv, req, o, ids[0], n_ids[0]);
    if (!o->chat && o->r.echo && o->r.has_max_tokens && o->r.params.max_tokens == 0) {
        for (int i = 0; i < o->n_subs; i++)
            free(ids[i]);
        free(ids);
        free(n_ids);
        echo_only(srv, req, o);
        return;
    }
    /* a group's sequences run in one step: a larger n can never run (a 400, not a 503
     * to retry) */
    if (o->n_per > eng_engine_max_num_seqs(srv->engine)) {
        err.status = 400;
        snprintf(err.message, sizeof(err.message), "n = %d choices need %d sequences in one step, over --max-num-seqs %d.",
                 o->n_per, o->n_per, eng_engine_max_num_seqs(srv->engine));
        snprintf(err.param, sizeof(err.param), "n");
        goto fail;
    }
    /* admission (--max-queued-requests) before anything is committed: a refused stream
     * gets a plain 503, never an SSE event after a 200 */
    n_reserved = o->n_subs * o->n_per;
    {
        char msg[512];
        if (eng_engine_reserve(srv->engine, n_reserved, msg, sizeof(msg)) != PD_OK) {
            n_reserved = 0;
            pd_metric_add(srv->m_rejected, 1);
            pd_http_req_add_header(req, "Retry-After", "1");
            err.status = 503;
            snprintf(err.message, sizeof(err.message), "%s", msg);
            err.param[0] = '\0';
            goto fail;
        }
    }
    o->refs = 1; /* the HTTP side */
    if (o->r.stream) {
        if (pd_http_stream_begin(req, "text/event-stream", on_stream_close, o, &o->stream) != PD_OK) {
            err.status = 500;
            snprintf(err.message, sizeof(err.message), "cannot start the stream");
            o->refs = 0;
            goto fail;
        }
    } else {
        pd_http_req_set_on_close(req, on_req_close, o);
    }
    for (int i = 0; i < o->n_subs; i++) {
        sub_t *s = &o->subs[i];
        eng_submit_t sub = {0};
        char msg[512];
        pd_status_t st;
        if (o->n_subs == 1)
            snprintf(s->id, sizeof(s->id), "%s", o->id);
        else
            snprintf(s->id, sizeof(s->id), "%s-%d", o->id, i);
        sub.id = s->id;
        sub.prompt = ids[i];
        sub.n_prompt = n_ids[i];
        sub.params = &o->r.params;
        sub.priority = o->r.priority;
        sub.cache_salt = o->r.cache_salt;
        sub.cb = on_output;
        sub.user = s;
        sub.reserved = o->n_per;
        eng_remote_kv_t remote;
        sub.kv_produce = o->r.kv.do_remote_decode;
        if (o->r.kv.do_remote_prefill) {
            remote.engine_id = o->r.kv.remote_engine_id;
            remote.host = o->r.kv.remote_host;
            remote.port = o->r.kv.remote_port;
            remote.request_id = o->r.kv.remote_request_id;
            remote.block_ids = o->r.kv.remote_block_ids;
            remote.n_block_ids = o->r.kv.n_remote_block_ids;
            sub.kv_remote = &remote;
        }
        pthread_mutex_lock(&o->mu);
        o->refs++;
        o->n_submitted++;
        pthread_mutex_unlock(&o->mu);
        st = eng_engine_submit(srv->engine, &sub, msg, sizeof(msg));
        if (st == PD_OK)
            n_reserved -= o->n_per;
        if (st != PD_OK) {
            bool mine;
            eng_engine_unreserve(srv->engine, n_reserved);
            n_reserved = 0;
            release_remote(srv, &o->r);
            pthread_mutex_lock(&o->mu);
            o->refs--;
            o->n_submitted--;
            mine = !o->http_done && !o->failed;
            o->failed = true;
            if (!o->stream)
                o->http_done = true; /* a stream's HTTP reference goes in its close callback */
            pthread_mutex_unlock(&o->mu);
            if (mine) {
                unsigned code = st == PD_ERR_CLOSED ? 503 : st == PD_ERR_NOMEM ? 500 : 400;
                if (o->stream) {
                    char *ej = pd_http_error_json(code, NULL, msg, NULL, NULL);
                    pd_http_sse_send(o->stream, ej);
                    pd_http_sse_done(o->stream);
                    pd_http_stream_end(o->stream);
                    free(ej);
                } else {
                    pd_http_respond_error(req, code, NULL, msg, NULL, NULL);
                }
                for (int k = 0; k < o->n_submitted; k++)
                    eng_engine_abort(srv->engine, o->subs[k].id);
                if (!o->stream)
                    oreq_unref(o);
            }
            break;
        }
    }
    for (int i = 0; i < o->n_subs; i++)
        free(ids[i]);
    free(ids);
    free(n_ids);
    return;
fail:
    if (err.status == 0) {
        err.status = 500;
        snprintf(err.message, sizeof(err.message), "out of memory");
    }
    if (srv->log_requests)
        PD_LOG_REQ(INFO, pd_http_req_id(req), "rejected (%d): %s", err.status, err.message);
    eng_engine_unreserve(srv->engine, n_reserved);
    release_remote(srv, &o->r);
    eng_server_send_error(req, &err);
    for (int i = 0; ids && i < o->n_subs; i++)
        free(ids[i]);
    free(ids);
    free(n_ids);
    __atomic_sub_fetch(&srv->inflight, 1, __ATOMIC_RELAXED);
    oreq_free(o);
}

static void handle_completions(pd_http_req_t *req, void *user) { handle(req, user, ENG_OAI_COMPLETION); }
static void handle_chat(pd_http_req_t *req, void *user) { handle(req, user, ENG_OAI_CHAT); }

pd_status_t eng_server_add_oai_routes(eng_server_t *srv)
{
    pd_status_t st = pd_http_route(srv->http, "POST", "/v1/completions", handle_completions, srv);
    if (st == PD_OK)
        st = pd_http_route(srv->http, "POST", "/v1/chat/completions", handle_chat, srv);
    return st;
}
