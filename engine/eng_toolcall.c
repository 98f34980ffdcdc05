/*
 * eng_toolcall.c - the tool-call parsers of eng_toolcall.h.
 *
 * Every format is parsed by the same few steps: find the marker, read JSON values with
 * cJSON's "parse a prefix" mode (the JSON's end is where the value ends, as Python's
 * raw_decode), turn each {"name", "arguments"} into an OpenAI tool call.  Any step that
 * fails makes the whole output content (no partial call list).  The streaming side holds
 * back only what could still be a marker or a call, and decides a call when its block
 * closes (hermes) or when the output ends (llama3_json, mistral: their calls have no
 * closing marker).
 */
#include "eng_toolcall.h"
#include "eng_textscan.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HERMES_OPEN "<tool_call>"
#define HERMES_CLOSE "</tool_call>"
#define LLAMA3_TAG "<|python_tag|>"
#define MISTRAL_MARK "[TOOL_CALLS]"

pd_status_t eng_tool_parser_lookup(const char *name, eng_tool_parser_t *parser_p)
{
    /* vLLM's other parsers: refused as "not supported yet" rather than unknown */
    static const char *const vllm_others[] = {"granite-20b-fc", "granite", "internlm", "jamba", "pythonic",
                                              "llama4_json", "llama4_pythonic", "phi4_mini_json", "xlam",
                                              "deepseek_v3", "kimi_k2", "hunyuan_a13b", "minimax", "qwen3_coder",
                                              "glm45", "step3", "openai"};
    if (name == NULL)
        return PD_ERR_INVAL;
    if (strcmp(name, "hermes") == 0)
        *parser_p = ENG_TOOL_PARSER_HERMES;
    else if (strcmp(name, "llama3_json") == 0)
        *parser_p = ENG_TOOL_PARSER_LLAMA3_JSON;
    else if (strcmp(name, "mistral") == 0)
        *parser_p = ENG_TOOL_PARSER_MISTRAL;
    else {
        for (size_t i = 0; i < sizeof(vllm_others) / sizeof(vllm_others[0]); i++)
            if (strcmp(name, vllm_others[i]) == 0)
                return PD_ERR_UNSUPPORTED;
        return PD_ERR_INVAL;
    }
    return PD_OK;
}

const char *eng_tool_parser_names(void) { return "hermes, llama3_json, mistral"; }

static bool all_space(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i]))
            return false;
    return true;
}


/* the call's id: 32 hex digits after "chatcmpl-tool-", or 9 letters and digits (mistral) */
static void call_id(eng_tool_parser_t parser, char out[64])
{
    char hex[33];
    pd_random_hex_id(hex);
    if (parser == ENG_TOOL_PARSER_MISTRAL) {
        static const char an[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        for (int i = 0; i < 9; i++) {
            unsigned v = (unsigned)strtoul((char[]){hex[2 * i], hex[2 * i + 1], 0}, NULL, 16);
            out[i] = an[v % (sizeof(an) - 1)];
        }
        out[9] = '\0';
    } else {
        snprintf(out, 64, "chatcmpl-tool-%s", hex);
    }
}

/* {"name": string, "arguments" | "parameters": any} -> an OpenAI tool call (arguments as
 * JSON text; an absent one is {}); NULL when obj is not such an object. */
static cJSON *make_call(eng_tool_parser_t parser, const cJSON *obj)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(obj, "name");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(obj, "arguments");
    if (args == NULL && parser == ENG_TOOL_PARSER_LLAMA3_JSON)
        args = cJSON_GetObjectItemCaseSensitive(obj, "parameters");
    if (!cJSON_IsObject(obj) || !cJSON_IsString(name) || name->valuestring[0] == '\0')
        return NULL;
    char *atext = args ? (cJSON_IsString(args) ? strdup(args->valuestring) : cJSON_PrintUnformatted(args))
                       : strdup("{}");
    char id[64];
    cJSON *call = cJSON_CreateObject(), *fn;
    if (atext == NULL || call == NULL) {
        free(atext);
        cJSON_Delete(call);
        return NULL;
    }
    call_id(parser, id);
    cJSON_AddStringToObject(call, "id", id);
    cJSON_AddStringToObject(call, "type", "function");
    fn = cJSON_AddObjectToObject(call, "function");
    cJSON_AddStringToObject(fn, "name", name->valuestring);
    cJSON_AddStringToObject(fn, "arguments", atext);
    free(atext);
    return call;
}

/* One JSON value at the start of s[0..n) (leading spaces skipped): the value and, in
 * *used_p, the bytes up to its end; NULL when none. */
static cJSON *json_prefix(const char *s, size_t n, size_t *used_p)
{
    const char *end = NULL;
    size_t skip = 0;
    while (skip < n && isspace((unsigned char)s[skip]))
        skip++;
    if (skip == n)
        return NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(s + skip, n - skip, &end, false);
    if (v == NULL)
        return NULL;
    *used_p = (size_t)(end - s);
    return v;
}

/* s[0..n) holds one JSON value (spaces around allowed) that is a valid call: appended to
 * calls.  false otherwise. */
static bool add_call_text(eng_tool_parser_t parser, const char *s, size_t n, cJSON *calls)
{
    size_t used = 0;
    cJSON *v = json_prefix(s, n, &used);
    if (v == NULL)
        return false;
    cJSON *call = all_space(s + used, n - used) ? make_call(parser, v) : NULL;
    cJSON_Delete(v);
    if (call == NULL)
        return false;
    cJSON_AddItemToArray(calls, call);
    return true;
}

/* hermes: every <tool_call> block (the last one may be unclosed) */
static bool parse_hermes(const char *t, size_t n, cJSON *calls, size_t *content_len_p)
{
    const char *p = eng_text_find(t, n, HERMES_OPEN), *end = t + n;
    if (p == NULL)
        return false;
    *content_len_p = (size_t)(p - t);
    while (p != NULL) {
        const char *body = p + strlen(HERMES_OPEN);
        const char *close = eng_text_find(body, (size_t)(end - body), HERMES_CLOSE);
        const char *bend = close ? close : end;
        if (!add_call_text(ENG_TOOL_PARSER_HERMES, body, (size_t)(bend - body), calls))
            return false;
        if (close == NULL)
            break;
        const char *after = close + strlen(HERMES_CLOSE);
        p = eng_text_find(after, (size_t)(end - after), HERMES_OPEN);
    }
    return true;
}

/* llama3_json: objects from the start, separated by ';' */
static bool parse_llama3(const char *t, size_t n, cJSON *calls)
{
    size_t i = 0;
    while (i < n && isspace((unsigned char)t[i]))
        i++;
    if (n - i >= strlen(LLAMA3_TAG) && memcmp(t + i, LLAMA3_TAG, strlen(LLAMA3_TAG)) == 0)
        i += strlen(LLAMA3_TAG);
    while (i < n && isspace((unsigned char)t[i]))
        i++;
    if (i >= n || t[i] != '{')
        return false;
    for (;;) {
        size_t used = 0;
        cJSON *v = json_prefix(t + i, n - i, &used);
        cJSON *call = v ? make_call(ENG_TOOL_PARSER_LLAMA3_JSON, v) : NULL;
        cJSON_Delete(v);
        if (call == NULL)
            return false;
        cJSON_AddItemToArray(calls, call);
        i += used;
        while (i < n && isspace((unsigned char)t[i]))
            i++;
        if (i == n)
            return true;
        if (t[i] != ';')
            return false;
        i++;
        while (i < n && isspace((unsigned char)t[i]))
            i++;
        if (i == n)
            return true;
    }
}

/* mistral: [TOOL_CALLS] then one JSON array of calls (or a single call object) */
static bool parse_mistral(const char *t, size_t n, cJSON *calls, size_t *content_len_p)
{
    const char *p = eng_text_find(t, n, MISTRAL_MARK);
    if (p == NULL)
        return false;
    *content_len_p = (size_t)(p - t);
    const char *body = p + strlen(MISTRAL_MARK);
    size_t blen = (size_t)(t + n - body), used = 0;
    cJSON *v = json_prefix(body, blen, &used);
    bool ok = v != NULL && all_space(body + used, blen - used);
    if (ok && cJSON_IsArray(v)) {
        const cJSON *e;
        ok = cJSON_GetArraySize(v) > 0;
        cJSON_ArrayForEach(e, v)
        {
            cJSON *call = ok ? make_call(ENG_TOOL_PARSER_MISTRAL, e) : NULL;
            if (call == NULL) {
                ok = false;
                break;
            }
            cJSON_AddItemToArray(calls, call);
        }
    } else if (ok) {
        cJSON *call = make_call(ENG_TOOL_PARSER_MISTRAL, v);
        ok = call != NULL;
        if (ok)
            cJSON_AddItemToArray(calls, call);
    }
    cJSON_Delete(v);
    return ok;
}

bool eng_tool_parse(eng_tool_parser_t parser, const char *text, size_t len, char **content_p, cJSON **calls_p)
{
    cJSON *calls = cJSON_CreateArray();
    size_t clen = 0;
    bool ok = false;
    if (calls == NULL || text == NULL)
        goto fail;
    switch (parser) {
    case ENG_TOOL_PARSER_HERMES:
        ok = parse_hermes(text, len, calls, &clen);
        break;
    case ENG_TOOL_PARSER_LLAMA3_JSON:
        ok = parse_llama3(text, len, calls);
        break;
    case ENG_TOOL_PARSER_MISTRAL:
        ok = parse_mistral(text, len, calls, &clen);
        break;
    default:
        break;
    }
    if (!ok || cJSON_GetArraySize(calls) == 0)
        goto fail;
    char *content = NULL;
    if (clen > 0 && !all_space(text, clen)) {
        content = malloc(clen + 1);
        if (content == NULL)
            goto fail;
        memcpy(content, text, clen);
        content[clen] = '\0';
    }
    *content_p = content;
    *calls_p = calls;
    return true;
fail:
    cJSON_Delete(calls);
    return false;
}

/* ---- streaming ---- */

enum { ST_OUT = 0, ST_IN = 1, ST_UNDECIDED = 2, ST_CONTENT = 3 };

void eng_tool_stream_init(eng_tool_stream_t *s, eng_tool_parser_t parser)
{
    memset(s, 0, sizeof(*s));
    s->parser = parser;
    pd_buf_init(&s->held);
    s->state = parser == ENG_TOOL_PARSER_LLAMA3_JSON ? ST_UNDECIDED : ST_OUT;
}

void eng_tool_stream_cleanup(eng_tool_stream_t *s) { pd_buf_cleanup(&s->held); }

/* Move the calls of a decided array into *calls_p with their "index". */
static pd_status_t hand_out(eng_tool_stream_t *s, cJSON *found, cJSON **calls_p)
{
    if (*calls_p == NULL && (*calls_p = cJSON_CreateArray()) == NULL) {
        cJSON_Delete(found);
        return PD_ERR_NOMEM;
    }
    while (cJSON_GetArraySize(found) > 0) {
        cJSON *c = cJSON_DetachItemFromArray(found, 0);
        cJSON_AddNumberToObject(c, "index", s->n_calls++);
        cJSON_AddItemToArray(*calls_p, c);
    }
    cJSON_Delete(found);
    return PD_OK;
}

/* content before any call is sent; after the first call, text between calls is not
 * (the non-streamed response keeps only the text before the first call, too) */
static pd_status_t give_content(eng_tool_stream_t *s, pd_buf_t *content, const char *t, size_t n)
{
    if (s->n_calls > 0 || n == 0)
        return PD_OK;
    return pd_buf_append(content, t, n);
}

static pd_status_t feed_marked(eng_tool_stream_t *s, bool final, pd_buf_t *content, cJSON **calls_p)
{
    const bool hermes = s->parser == ENG_TOOL_PARSER_HERMES;
    const char *open = hermes ? HERMES_OPEN : MISTRAL_MARK;
    pd_status_t st = PD_OK;
    for (;;) {
        const char *t = s->held.data ? s->held.data : "";
        size_t n = s->held.len;
        if (s->state == ST_OUT) {
            const char *m = eng_text_find(t, n, open);
            if (m == NULL) {
                size_t keep = final ? 0 : eng_text_partial(t, n, open);
                st = give_content(s, content, t, n - keep);
                if (keep > 0)
                    memmove(s->held.data, t + n - keep, keep);
                s->held.len = keep;
                return st;
            }
            if ((st = give_content(s, content, t, (size_t)(m - t))) != PD_OK)
                return st;
            size_t skip = (size_t)(m - t) + strlen(open);
            memmove(s->held.data, t + skip, n - skip);
            s->held.len = n - skip;
            s->state = ST_IN;
            continue;
        }
        /* ST_IN: the body of a call (hermes: up to its close tag; mistral: to the end) */
        const char *close = hermes ? eng_text_find(t, n, HERMES_CLOSE) : NULL;
        if (close == NULL && !final)
            return PD_OK;
        size_t blen = close ? (size_t)(close - t) : n;
        cJSON *found = cJSON_CreateArray();
        size_t clen = 0;
        bool ok = found != NULL;
        if (ok && hermes)
            ok = add_call_text(ENG_TOOL_PARSER_HERMES, t, blen, found);
        else if (ok) {
            /* the mistral parser over "[TOOL_CALLS]" + body */
            pd_buf_t whole;
            pd_buf_init(&whole);
            ok = pd_buf_puts(&whole, MISTRAL_MARK) == PD_OK && pd_buf_append(&whole, t, blen) == PD_OK &&
                 parse_mistral(whole.data, whole.len, found, &clen);
            pd_buf_cleanup(&whole);
        }
        if (ok && cJSON_GetArraySize(found) > 0) {
            if ((st = hand_out(s, found, calls_p)) != PD_OK)
                return st;
        } else {
            /* not a call after all: the marker and the body are content */
            cJSON_Delete(found);
            if ((st = give_content(s, content, open, strlen(open))) != PD_OK ||
                (st = give_content(s, content, t, close ? blen + strlen(HERMES_CLOSE) : blen)) != PD_OK)
                return st;
        }
        size_t skip = close ? blen + strlen(HERMES_CLOSE) : n;
        memmove(s->held.data, t + skip, n - skip);
        s->held.len = n - skip;
        s->state = ST_OUT;
        if (s->held.len == 0)
            return PD_OK;
    }
}

static pd_status_t feed_llama3(eng_tool_stream_t *s, bool final, pd_buf_t *content, cJSON **calls_p)
{
    const char *t = s->held.data ? s->held.data : "";
    size_t n = s->held.len;
    pd_status_t st = PD_OK;
    if (s->state == ST_UNDECIDED) {
        size_t i = 0;
        while (i < n && isspace((unsigned char)t[i]))
            i++;
        if (i == n && !final)
            return PD_OK; /* only spaces so far */
        const size_t tl = strlen(LLAMA3_TAG);
        const bool maybe_tag = n - i < tl && memcmp(t + i, LLAMA3_TAG, n - i) == 0;
        if (i < n && (t[i] == '{' || (n - i >= tl && memcmp(t + i, LLAMA3_TAG, tl) == 0)))
            s->state = ST_IN;
        else if (maybe_tag && !final)
            return PD_OK;
        else
            s->state = ST_CONTENT;
    }
    if (s->state == ST_CONTENT) {
        st = pd_buf_append(content, t, n);
        s->held.len = 0;
        return st;
    }
    if (!final)
        return PD_OK; /* a call has no closing marker: decided at the end */
    cJSON *found = cJSON_CreateArray();
    if (found != NULL && parse_llama3(t, n, found) && cJSON_GetArraySize(found) > 0) {
        st = hand_out(s, found, calls_p);
    } else {
        cJSON_Delete(found);
        st = pd_buf_append(content, t, n);
    }
    s->held.len = 0;
    return st;
}

pd_status_t eng_tool_stream_feed(eng_tool_stream_t *s, const char *text, size_t len, bool final,
                                 pd_buf_t *content, cJSON **calls_p)
{
    pd_status_t st;
    if (len > 0 && (st = pd_buf_append(&s->held, text, len)) != PD_OK)
        return st;
    switch (s->parser) {
    case ENG_TOOL_PARSER_HERMES:
    case ENG_TOOL_PARSER_MISTRAL:
        return feed_marked(s, final, content, calls_p);
    case ENG_TOOL_PARSER_LLAMA3_JSON:
        return feed_llama3(s, final, content, calls_p);
    default:
        st = pd_buf_append(content, s->held.data ? s->held.data : "", s->held.len);
        s->held.len = 0;
        return st;
    }
}
