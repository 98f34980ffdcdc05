/*
 * px_sse.c - what the relay needs from one streamed completion event, without building
 * a JSON tree: the text of choices[0] (completions: "text"; chat: "delta"."content")
 * and whether its finish_reason is a string.  The relay looks at every event of every
 * stream that could be resumed on another node (decode failover), so this runs once
 * per token per stream; a full cJSON parse there cost a dozen allocations per event.
 *
 * Invariants: px_sse_scan() never allocates and never reads past json + len; it
 * follows cJSON's rules where they matter to the relay (the first of duplicate keys
 * wins; a non-object choice has no text and no finish_reason) and answers -1 for
 * anything it does not handle (not an object at the top, "choices" not an array,
 * nesting deeper than PX_SSE_MAX_DEPTH, malformed text), so the caller can fall back
 * to a full parse and get exactly the old behaviour.  px_sse_unescape() appends to the
 * buffer only when the whole string decodes.
 */
#include <stdlib.h>
#include <string.h>

#include "px.h"

#define PX_SSE_MAX_DEPTH 64

typedef struct jw {
    const char *p, *e;
} jw_t;

static void jw_ws(jw_t *w)
{
    while (w->p < w->e && (*w->p == ' ' || *w->p == '\t' || *w->p == '\n' || *w->p == '\r'))
        w->p++;
}

static int hex4(const char *s, unsigned *v);

/* At a backslash: step over one escape as cJSON would accept it (a \u high surrogate
 * must be followed by a low one, a low one alone is an error). */
static int jw_escape(jw_t *w)
{
    if (w->e - w->p < 2)
        return -1;
    char c = w->p[1];
    if (c != 'u') {
        if (strchr("\"\\/bfnrt", c) == NULL || c == '\0')
            return -1;
        w->p += 2;
        return 0;
    }
    unsigned cp, lo;
    if (w->e - w->p < 6 || hex4(w->p + 2, &cp) != 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
        return -1;
    w->p += 6;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (w->e - w->p < 6 || w->p[0] != '\\' || w->p[1] != 'u' || hex4(w->p + 2, &lo) != 0 || lo < 0xDC00 ||
            lo > 0xDFFF)
            return -1;
        w->p += 6;
    }
    return 0;
}

/* At a '"': the raw contents (escapes undecoded) in s/n; *esc set when it has any. */
static int jw_str(jw_t *w, const char **s, size_t *n, int *esc)
{
    if (w->p >= w->e || *w->p != '"')
        return -1;
    const char *b = ++w->p;
    int e = 0;
    while (w->p < w->e) {
        unsigned char c = (unsigned char)*w->p;
        if (c == '"') {
            if (s) {
                *s = b;
                *n = (size_t)(w->p - b);
            }
            if (esc)
                *esc = e;
            w->p++;
            return 0;
        }
        if (c == '\\') {
            if (jw_escape(w) != 0)
                return -1;
            e = 1;
            continue;
        }
        if (c < 0x20)
            return -1;
        w->p++;
    }
    return -1;
}

static int jw_key_is(const char *k, size_t n, int esc, const char *want)
{
    return !esc && n == strlen(want) && memcmp(k, want, n) == 0;
}

static int jw_skip(jw_t *w, int depth);

/* Members of an object, at its '{': each key (raw) and the walker at its value go to
 * fn, which consumes the value (returns 0) or fails (-1). */
typedef int (*jw_member_fn)(jw_t *w, const char *k, size_t n, int esc, void *ctx, int depth);

static int jw_object(jw_t *w, int depth, jw_member_fn fn, void *ctx)
{
    if (depth > PX_SSE_MAX_DEPTH || w->p >= w->e || *w->p != '{')
        return -1;
    w->p++;
    jw_ws(w);
    if (w->p < w->e && *w->p == '}') {
        w->p++;
        return 0;
    }
    for (;;) {
        const char *k;
        size_t n;
        int esc;
        jw_ws(w);
        if (jw_str(w, &k, &n, &esc) != 0 || (esc && fn))
            return -1; /* an escaped key might spell a key we look for: cJSON decides */
        jw_ws(w);
        if (w->p >= w->e || *w->p != ':')
            return -1;
        w->p++;
        jw_ws(w);
        if ((fn ? fn(w, k, n, esc, ctx, depth + 1) : jw_skip(w, depth + 1)) != 0)
            return -1;
        jw_ws(w);
        if (w->p >= w->e)
            return -1;
        if (*w->p == ',') {
            w->p++;
            continue;
        }
        if (*w->p == '}') {
            w->p++;
            return 0;
        }
        return -1;
    }
}

/* Elements of an array at its '['; the first goes to first_fn (NULL: skipped). */
static int jw_array(jw_t *w, int depth, int (*first_fn)(jw_t *, void *, int), void *ctx, int *n_p)
{
    if (depth > PX_SSE_MAX_DEPTH || w->p >= w->e || *w->p != '[')
        return -1;
    w->p++;
    jw_ws(w);
    *n_p = 0;
    if (w->p < w->e && *w->p == ']') {
        w->p++;
        return 0;
    }
    for (;;) {
        jw_ws(w);
        int rc = *n_p == 0 && first_fn ? first_fn(w, ctx, depth + 1) : jw_skip(w, depth + 1);
        if (rc != 0)
            return -1;
        (*n_p)++;
        jw_ws(w);
        if (w->p >= w->e)
            return -1;
        if (*w->p == ',') {
            w->p++;
            continue;
        }
        if (*w->p == ']') {
            w->p++;
            return 0;
        }
        return -1;
    }
}

static int jw_skip(jw_t *w, int depth)
{
    jw_ws(w);
    if (w->p >= w->e || depth > PX_SSE_MAX_DEPTH)
        return -1;
    char c = *w->p;
    if (c == '"')
        return jw_str(w, NULL, NULL, NULL);
    if (c == '{')
        return jw_object(w, depth, NULL, NULL);
    if (c == '[') {
        int n;
        return jw_array(w, depth, NULL, NULL, &n);
    }
    static const char *const lit[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t l = strlen(lit[i]);
        if ((size_t)(w->e - w->p) >= l && memcmp(w->p, lit[i], l) == 0) {
            w->p += l;
            return 0;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        /* as cJSON reads numbers: strtod over the characters a number can have, all of
         * which it must take */
        const char *b = w->p;
        while (w->p < w->e && ((*w->p >= '0' && *w->p <= '9') || *w->p == '-' || *w->p == '+' || *w->p == '.' ||
                               *w->p == 'e' || *w->p == 'E'))
            w->p++;
        char num[64], *end;
        size_t n = (size_t)(w->p - b);
        if (n >= sizeof(num))
            return -1;
        memcpy(num, b, n);
        num[n] = '\0';
        (void)strtod(num, &end);
        return end == num + n ? 0 : -1;
    }
    return -1;
}

typedef struct scan_ctx {
    int is_chat;
    px_sse_event_t *ev;
    int seen_choices, seen_fr, seen_text, seen_delta, seen_content;
} scan_ctx_t;

/* A string value becomes the event's text; anything else is skipped (no text). */
static int take_text(jw_t *w, scan_ctx_t *c, int depth)
{
    if (w->p < w->e && *w->p == '"') {
        int esc;
        if (jw_str(w, &c->ev->text, &c->ev->text_len, &esc) != 0)
            return -1;
        c->ev->text_escaped = esc;
        return 0;
    }
    return jw_skip(w, depth);
}

static int delta_member(jw_t *w, const char *k, size_t n, int esc, void *ctx, int depth)
{
    scan_ctx_t *c = ctx;
    if (!c->seen_content && jw_key_is(k, n, esc, "content")) {
        c->seen_content = 1;
        return take_text(w, c, depth);
    }
    return jw_skip(w, depth);
}

static int choice_member(jw_t *w, const char *k, size_t n, int esc, void *ctx, int depth)
{
    scan_ctx_t *c = ctx;
    if (!c->seen_fr && jw_key_is(k, n, esc, "finish_reason")) {
        c->seen_fr = 1;
        c->ev->finished = w->p < w->e && *w->p == '"';
        return jw_skip(w, depth);
    }
    if (!c->is_chat && !c->seen_text && jw_key_is(k, n, esc, "text")) {
        c->seen_text = 1;
        return take_text(w, c, depth);
    }
    if (c->is_chat && !c->seen_delta && jw_key_is(k, n, esc, "delta")) {
        c->seen_delta = 1;
        if (w->p < w->e && *w->p == '{')
            return jw_object(w, depth, delta_member, c);
        return jw_skip(w, depth);
    }
    return jw_skip(w, depth);
}

static int first_choice(jw_t *w, void *ctx, int depth)
{
    scan_ctx_t *c = ctx;
    c->ev->has_choice = 1;
    if (w->p < w->e && *w->p == '{')
        return jw_object(w, depth, choice_member, c);
    return jw_skip(w, depth); /* a non-object choice: no text, no finish_reason */
}

static int top_member(jw_t *w, const char *k, size_t n, int esc, void *ctx, int depth)
{
    scan_ctx_t *c = ctx;
    if (!c->seen_choices && jw_key_is(k, n, esc, "choices")) {
        c->seen_choices = 1;
        if (w->p >= w->e || *w->p != '[')
            return -1; /* cJSON would index an object's members: leave it to cJSON */
        int cnt;
        return jw_array(w, depth, first_choice, c, &cnt);
    }
    return jw_skip(w, depth);
}

int px_sse_scan(const char *json, size_t len, int is_chat, px_sse_event_t *ev)
{
    memset(ev, 0, sizeof(*ev));
    jw_t w = {json, json + len};
    scan_ctx_t c = {.is_chat = is_chat, .ev = ev};
    jw_ws(&w);
    if (jw_object(&w, 0, top_member, &c) != 0)
        goto fail;
    jw_ws(&w);
    if (w.p != w.e)
        goto fail;
    return 0;
fail:
    memset(ev, 0, sizeof(*ev));
    return -1;
}

static int hex4(const char *s, unsigned *v)
{
    unsigned x = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        x <<= 4;
        if (c >= '0' && c <= '9')
            x |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            x |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            x |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *v = x;
    return 0;
}

int px_sse_unescape(const char *s, size_t n, pd_buf_t *out)
{
    size_t start = out->len;
    const char *e = s + n;
    while (s < e) {
        const char *b = memchr(s, '\\', (size_t)(e - s));
        size_t plain = b ? (size_t)(b - s) : (size_t)(e - s);
        if (plain && pd_buf_append(out, s, plain) != PD_OK)
            goto fail;
        s += plain;
        if (s >= e)
            break;
        if (e - s < 2)
            goto fail;
        char c = s[1], o;
        s += 2;
        switch (c) {
        case '"': o = '"'; break;
        case '\\': o = '\\'; break;
        case '/': o = '/'; break;
        case 'b': o = '\b'; break;
        case 'f': o = '\f'; break;
        case 'n': o = '\n'; break;
        case 'r': o = '\r'; break;
        case 't': o = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (e - s < 4 || hex4(s, &cp) != 0)
                goto fail;
            s += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                goto fail; /* a lone low surrogate */
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (e - s < 6 || s[0] != '\\' || s[1] != 'u' || hex4(s + 2, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                    goto fail;
                s += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp == 0)
                goto fail; /* cJSON's C string would end there: leave it to cJSON */
            char u[4];
            size_t k;
            if (cp < 0x80) {
                u[0] = (char)cp;
                k = 1;
            } else if (cp < 0x800) {
                u[0] = (char)(0xC0 | (cp >> 6));
                u[1] = (char)(0x80 | (cp & 0x3F));
                k = 2;
            } else if (cp < 0x10000) {
                u[0] = (char)(0xE0 | (cp >> 12));
                u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[2] = (char)(0x80 | (cp & 0x3F));
                k = 3;
            } else {
                u[0] = (char)(0xF0 | (cp >> 18));
                u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[3] = (char)(0x80 | (cp & 0x3F));
                k = 4;
            }
            if (pd_buf_append(out, u, k) != PD_OK)
                goto fail;
            continue;
        }
        default:
            goto fail;
        }
        if (pd_buf_append(out, &o, 1) != PD_OK)
            goto fail;
    }
    return 0;
fail:
    out->len = start;
    if (out->data)
        out->data[start] = '\0';
    return -1;
}
