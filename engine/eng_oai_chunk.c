/*
 * eng_oai_chunk.c - SSE chunks of the completion endpoints written without a JSON tree
 * (see eng_oai_chunk.h).
 *
 * Why: a cJSON tree per streamed token (a dozen allocations, a print pass, frees) was
 * most of the server's per-token cost.  Here a chunk is the request's preformatted head
 * plus a few appends into one buffer, reserved up front; strings go through a 256-entry
 * escape table that copies runs of plain bytes with one memcpy.
 *
 * Integers (indices, counts, offsets, token ids; all far below 1e15) are written with
 * jw_int, which gives the digits cJSON's "%1.15g" gives for them.
 *
 * Invariant: the bytes equal cJSON_PrintUnformatted of the tree the earlier writer
 * built (key order, escapes, number formats), so clients and tests see no difference.
 * A writer (jw_t) carries the first error; every append after it is a no-op, so the
 * builders check once at the end.
 */
#include "eng_oai_chunk.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct jw {
    pd_buf_t *b;
    pd_status_t st;
} jw_t;

/* 0: copy as is; otherwise the character after the backslash ('u': \u00XX) */
static const unsigned char esc_tab[256] = {
    ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't', ['"'] = '"', ['\\'] = '\\',
    [0x00] = 'u', [0x01] = 'u', [0x02] = 'u', [0x03] = 'u', [0x04] = 'u', [0x05] = 'u', [0x06] = 'u',
    [0x07] = 'u', [0x0b] = 'u', [0x0e] = 'u', [0x0f] = 'u', [0x10] = 'u', [0x11] = 'u', [0x12] = 'u',
    [0x13] = 'u', [0x14] = 'u', [0x15] = 'u', [0x16] = 'u', [0x17] = 'u', [0x18] = 'u', [0x19] = 'u',
    [0x1a] = 'u', [0x1b] = 'u', [0x1c] = 'u', [0x1d] = 'u', [0x1e] = 'u', [0x1f] = 'u',
};

static void jw_raw(jw_t *w, const void *s, size_t n)
{
    if (w->st == PD_OK)
        w->st = pd_buf_append(w->b, s, n);
}

#define JW_LIT(w, s) jw_raw((w), (s), sizeof(s) - 1)

static void jw_int(jw_t *w, long long v)
{
    char tmp[24], *p = tmp + sizeof(tmp);
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    jw_raw(w, p, (size_t)(tmp + sizeof(tmp) - p));
}

static void jw_str(jw_t *w, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    size_t worst;
    char *o;

    if (w->st != PD_OK)
        return;
    /* every byte at most 6 ("\u00XX"), plus the quotes */
    if (pd_mul_size(n, 6, &worst) != PD_OK || pd_add_size(worst, 2, &worst) != PD_OK) {
        w->st = PD_ERR_RANGE;
        return;
    }
    if ((w->st = pd_buf_reserve(w->b, worst)) != PD_OK)
        return;
    o = w->b->data + w->b->len;
    *o++ = '"';
    while (p < end) {
        const unsigned char *run = p;
        while (p < end && esc_tab[*p] == 0)
            p++;
        if (p > run) {
            memcpy(o, run, (size_t)(p - run));
            o += p - run;
        }
        if (p == end)
            break;
        *o++ = '\\';
        *o++ = (char)esc_tab[*p];
        if (esc_tab[*p] == 'u') {
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
        p++;
    }
    *o++ = '"';
    w->b->len = (size_t)(o - w->b->data);
    w->b->data[w->b->len] = '\0';
}

static void jw_cstr(jw_t *w, const char *s) { jw_str(w, s, strlen(s)); }

/* cJSON 1.7.15's print_number, including its tolerance when checking 15 digits (it has
 * no integer branch: -0.0 prints "-0"; integers below 1e15 print as their digits) */
static void jw_num(jw_t *w, double d)
{
    char tmp[32];
    int n;
    if (isnan(d) || isinf(d)) {
        JW_LIT(w, "null");
        return;
    }
    n = snprintf(tmp, sizeof(tmp), "%1.15g", d);
    double back = strtod(tmp, NULL);
    double mx = fabs(back) > fabs(d) ? fabs(back) : fabs(d);
    if (!(fabs(back - d) <= mx * DBL_EPSILON))
        n = snprintf(tmp, sizeof(tmp), "%1.17g", d);
    jw_raw(w, tmp, (size_t)n);
}

pd_status_t eng_json_append_str(pd_buf_t *out, const char *s, size_t len)
{
    jw_t w = {out, PD_OK};
    jw_str(&w, s, len);
    return w.st;
}

pd_status_t eng_json_append_num(pd_buf_t *out, double v)
{
    jw_t w = {out, PD_OK};
    jw_num(&w, v);
    return w.st;
}

pd_status_t eng_oai_chunker_init(eng_oai_chunker_t *ck, bool chat, const char *id, int64_t created,
                                 const char *model)
{
    jw_t w;
    memset(ck, 0, sizeof(*ck));
    pd_buf_init(&ck->head);
    ck->chat = chat;
    w.b = &ck->head;
    w.st = PD_OK;
    JW_LIT(&w, "data: {\"id\":");
    jw_cstr(&w, id);
    if (chat)
        JW_LIT(&w, ",\"object\":\"chat.completion.chunk\",\"created\":");
    else
        JW_LIT(&w, ",\"object\":\"text_completion\",\"created\":");
    jw_num(&w, (double)created);
    JW_LIT(&w, ",\"model\":");
    jw_cstr(&w, model);
    JW_LIT(&w, ",\"choices\":[");
    if (w.st != PD_OK)
        pd_buf_cleanup(&ck->head);
    return w.st;
}

void eng_oai_chunker_cleanup(eng_oai_chunker_t *ck)
{
    if (ck)
        pd_buf_cleanup(&ck->head);
}

static void begin_choice(const eng_oai_chunker_t *ck, jw_t *w, int index)
{
    jw_raw(w, ck->head.data, ck->head.len);
    JW_LIT(w, "{\"index\":");
    jw_int(w, index);
}

static void chunk_usage(jw_t *w, int prompt, int completion)
{
    JW_LIT(w, ",\"usage\":{\"prompt_tokens\":");
    jw_int(w, prompt);
    JW_LIT(w, ",\"total_tokens\":");
    jw_int(w, (long long)prompt + completion);
    JW_LIT(w, ",\"completion_tokens\":");
    jw_int(w, completion);
    JW_LIT(w, "}");
}

pd_status_t eng_oai_chunk_role(const eng_oai_chunker_t *ck, pd_buf_t *out, int index, int n_prompt)
{
    jw_t w = {out, PD_OK};
    begin_choice(ck, &w, index);
    JW_LIT(&w, ",\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]");
    if (ck->continuous_usage)
        chunk_usage(&w, n_prompt, 0);
    JW_LIT(&w, "}\n\n");
    return w.st;
}

pd_status_t eng_oai_chunk_tool_call(const eng_oai_chunker_t *ck, pd_buf_t *out, int index, const char *call_json)
{
    jw_t w = {out, PD_OK};
    begin_choice(ck, &w, index);
    JW_LIT(&w, ",\"delta\":{\"tool_calls\":[");
    jw_raw(&w, call_json, strlen(call_json));
    JW_LIT(&w, "]},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    return w.st;
}

pd_status_t eng_oai_chunk_echo(const eng_oai_chunker_t *ck, pd_buf_t *out, int index, const char *text,
                               size_t len, const char *logprobs_json, const char *finish_reason, int n_prompt)
{
    jw_t w = {out, PD_OK};
    begin_choice(ck, &w, index);
    JW_LIT(&w, ",\"text\":");
    jw_str(&w, text, len);
    JW_LIT(&w, ",\"logprobs\":");
    if (logprobs_json)
        jw_raw(&w, logprobs_json, strlen(logprobs_json));
    else
        JW_LIT(&w, "null");
    JW_LIT(&w, ",\"finish_reason\":");
    if (finish_reason)
        jw_cstr(&w, finish_reason);
    else
        JW_LIT(&w, "null");
    JW_LIT(&w, ",\"stop_reason\":null}]");
    if (ck->continuous_usage)
        chunk_usage(&w, n_prompt, 0);
    JW_LIT(&w, "}\n\n");
    return w.st;
}

static double lp_value(float v) { return isfinite(v) ? (double)v : -9999.0; }

static void bytes_array(jw_t *w, const char *s)
{
    JW_LIT(w, "[");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (p != (const unsigned char *)s)
            JW_LIT(w, ",");
        jw_int(w, *p);
    }
    JW_LIT(w, "]");
}

/* chat: {"content":[{"token","logprob","bytes","top_logprobs":[...]}, ...]} */
static void chat_logprobs(const eng_oai_chunker_t *ck, jw_t *w, const eng_output_t *ev)
{
    char t[256];
    JW_LIT(w, "{\"content\":[");
    for (int i = 0; i < ev->n_token_ids; i++) {
        if (i)
            JW_LIT(w, ",");
        ck->tokstr(ck->tok_user, ev->token_logprobs[i].token, t, sizeof(t));
        JW_LIT(w, "{\"token\":");
        jw_cstr(w, t);
        JW_LIT(w, ",\"logprob\":");
        jw_num(w, lp_value(ev->token_logprobs[i].logprob));
        JW_LIT(w, ",\"bytes\":");
        bytes_array(w, t);
        JW_LIT(w, ",\"top_logprobs\":[");
        for (int k = 0; k < ev->n_top; k++) {
            const eng_logprob_t *lp = &ev->tops[(size_t)i * (size_t)ev->n_top + (size_t)k];
            if (k)
                JW_LIT(w, ",");
            ck->tokstr(ck->tok_user, lp->token, t, sizeof(t));
            JW_LIT(w, "{\"token\":");
            jw_cstr(w, t);
            JW_LIT(w, ",\"logprob\":");
            jw_num(w, lp_value(lp->logprob));
            JW_LIT(w, ",\"bytes\":");
            bytes_array(w, t);
            JW_LIT(w, "}");
        }
        JW_LIT(w, "]}");
    }
    JW_LIT(w, "]}");
}

/* completions: {"text_offset":[...],"token_logprobs":[...],"tokens":[...],"top_logprobs":[{...}]}.
 * The token strings are decoded once into strs (NUL-separated), each array walks them. */
static void comp_logprobs(const eng_oai_chunker_t *ck, jw_t *w, const eng_output_t *ev, int *text_offset)
{
    char t[256];
    pd_buf_t strs, keys;
    const char *s;
    int n = ev->n_token_ids;

    pd_buf_init(&strs);
    pd_buf_init(&keys);
    for (int i = 0; i < n; i++) {
        ck->tokstr(ck->tok_user, ev->token_logprobs[i].token, t, sizeof(t));
        if (pd_buf_append(&strs, t, strlen(t) + 1) != PD_OK) {
            w->st = PD_ERR_NOMEM;
            pd_buf_cleanup(&strs);
            return;
        }
    }
    JW_LIT(w, "{\"text_offset\":[");
    s = strs.data;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(s);
        if (i)
            JW_LIT(w, ",");
        jw_int(w, *text_offset);
        *text_offset += (int)len;
        s += len + 1;
    }
    JW_LIT(w, "],\"token_logprobs\":[");
    for (int i = 0; i < n; i++) {
        if (i)
            JW_LIT(w, ",");
        jw_num(w, lp_value(ev->token_logprobs[i].logprob));
    }
    JW_LIT(w, "],\"tokens\":[");
    s = strs.data;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(s);
        if (i)
            JW_LIT(w, ",");
        jw_str(w, s, len);
        s += len + 1;
    }
    JW_LIT(w, "],\"top_logprobs\":[");
    s = strs.data;
    for (int i = 0; i < n; i++) {
        /* the sampled token first, then the top-N whose strings are new (vLLM builds a
         * dict keyed by the token string: top-N plus the sampled one); keys holds the
         * strings written so far, NUL-separated */
        size_t len = strlen(s);
        pd_buf_reset(&keys);
        if (pd_buf_append(&keys, s, len + 1) != PD_OK)
            w->st = PD_ERR_NOMEM;
        if (i)
            JW_LIT(w, ",");
        JW_LIT(w, "{");
        jw_str(w, s, len);
        JW_LIT(w, ":");
        jw_num(w, lp_value(ev->token_logprobs[i].logprob));
        for (int k = 0; k < ev->n_top && w->st == PD_OK; k++) {
            const eng_logprob_t *lp = &ev->tops[(size_t)i * (size_t)ev->n_top + (size_t)k];
            bool dup = false;
            size_t tl;
            ck->tokstr(ck->tok_user, lp->token, t, sizeof(t));
            tl = strlen(t);
            for (const char *q = keys.data; q < keys.data + keys.len && !dup; q += strlen(q) + 1)
                dup = strcmp(q, t) == 0;
            if (dup)
                continue;
            if (pd_buf_append(&keys, t, tl + 1) != PD_OK)
                w->st = PD_ERR_NOMEM;
            JW_LIT(w, ",");
            jw_str(w, t, tl);
            JW_LIT(w, ":");
            jw_num(w, lp_value(lp->logprob));
        }
        JW_LIT(w, "}");
        s += len + 1;
    }
    JW_LIT(w, "]}");
    pd_buf_cleanup(&keys);
    pd_buf_cleanup(&strs);
}

pd_status_t eng_oai_chunk_event(const eng_oai_chunker_t *ck, pd_buf_t *out, int index, const eng_output_t *ev,
                                int n_prompt, int *text_offset)
{
    return eng_oai_chunk_event_r(ck, out, index, ev, NULL, 0, n_prompt, text_offset);
}

pd_status_t eng_oai_chunk_event_r(const eng_oai_chunker_t *ck, pd_buf_t *out, int index, const eng_output_t *ev,
                                  const char *reasoning, size_t reasoning_len, int n_prompt, int *text_offset)
{
    jw_t w = {out, PD_OK};
    bool lps = ck->want_logprobs && ev->token_logprobs && ev->n_token_ids > 0 && ck->tokstr;

    /* the worst-case size of a plain text chunk at once: one allocation check */
    if (pd_buf_reserve(out, ck->head.len + 6 * (ev->text_len + reasoning_len) + 256) != PD_OK)
        return PD_ERR_NOMEM;
    begin_choice(ck, &w, index);
    if (ck->chat) {
        JW_LIT(&w, ",\"delta\":{");
        if (reasoning_len > 0) {
            JW_LIT(&w, "\"reasoning_content\":");
            jw_str(&w, reasoning, reasoning_len);
            if (ev->text_len > 0)
                JW_LIT(&w, ",");
        }
        if (ev->text_len > 0) {
            JW_LIT(&w, "\"content\":");
            jw_str(&w, ev->text, ev->text_len);
        }
        JW_LIT(&w, "},\"logprobs\":");
        if (lps)
            chat_logprobs(ck, &w, ev);
        else
            JW_LIT(&w, "null");
    } else {
        JW_LIT(&w, ",\"text\":");
        jw_str(&w, ev->text_len ? ev->text : "", ev->text_len);
        JW_LIT(&w, ",\"logprobs\":");
        if (lps)
            comp_logprobs(ck, &w, ev, text_offset);
        else
            JW_LIT(&w, "null");
    }
    if (ck->emit_token_ids && ev->n_token_ids > 0) {
        JW_LIT(&w, ",\"token_ids\":[");
        for (int i = 0; i < ev->n_token_ids; i++) {
            if (i)
                JW_LIT(&w, ",");
            jw_int(&w, ev->token_ids[i]);
        }
        JW_LIT(&w, "]");
    }
    if (ev->finished) {
        JW_LIT(&w, ",\"finish_reason\":");
        jw_cstr(&w, ev->finish_reason);
        JW_LIT(&w, ",\"stop_reason\":");
        if (ev->stop_str)
            jw_cstr(&w, ev->stop_str);
        else if (ev->stop_token >= 0 && strcmp(ev->finish_reason, "stop") == 0)
            jw_int(&w, ev->stop_token);
        else
            JW_LIT(&w, "null");
    } else if (ck->chat) {
        JW_LIT(&w, ",\"finish_reason\":null");
    } else {
        JW_LIT(&w, ",\"finish_reason\":null,\"stop_reason\":null");
    }
    JW_LIT(&w, "}]");
    if (ck->continuous_usage)
        chunk_usage(&w, n_prompt, ev->n_output_tokens);
    JW_LIT(&w, "}\n\n");
    return w.st;
}

pd_status_t eng_oai_chunk_usage(const eng_oai_chunker_t *ck, pd_buf_t *out, int prompt_tokens,
                                int completion_tokens, int cached_tokens)
{
    jw_t w = {out, PD_OK};
    jw_raw(&w, ck->head.data, ck->head.len);
    JW_LIT(&w, "],\"usage\":{\"prompt_tokens\":");
    jw_int(&w, prompt_tokens);
    JW_LIT(&w, ",\"total_tokens\":");
    jw_int(&w, (long long)prompt_tokens + completion_tokens);
    JW_LIT(&w, ",\"completion_tokens\":");
    jw_int(&w, completion_tokens);
    if (ck->prompt_details) {
        JW_LIT(&w, ",\"prompt_tokens_details\":{\"cached_tokens\":");
        jw_int(&w, cached_tokens);
        JW_LIT(&w, "}}}\n\n");
    } else {
        JW_LIT(&w, ",\"prompt_tokens_details\":null}}\n\n");
    }
    return w.st;
}
