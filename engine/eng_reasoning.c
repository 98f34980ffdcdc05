/*
 * eng_reasoning.c - the reasoning parser of eng_reasoning.h.  The whole-output split and
 * the streaming one follow the same rule (so a stream joins to the non-streamed answer):
 * skip leading spaces and one <think>, reasoning up to the first </think>, content after
 * it.  The stream holds back only a tail that is a proper prefix of the marker it waits
 * for.
 */
#include "eng_reasoning.h"
#include "eng_textscan.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define THINK_OPEN "<think>"
#define THINK_CLOSE "</think>"

enum { ST_START = 0, ST_REASONING = 1, ST_CONTENT = 2 };

pd_status_t eng_reasoning_parser_lookup(const char *name, eng_reasoning_parser_t *parser_p)
{
    if (name != NULL && strcmp(name, "deepseek_r1") == 0) {
        *parser_p = ENG_REASONING_DEEPSEEK_R1;
        return PD_OK;
    }
    return PD_ERR_INVAL;
}


static char *dup_part(const char *s, size_t n, bool *oom)
{
    if (n == 0)
        return NULL;
    char *d = malloc(n + 1);
    if (d == NULL) {
        *oom = true;
        return NULL;
    }
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* where the reasoning starts: after leading spaces and one <think>, if the text has one
 * there; else 0 (the spaces are reasoning then) */
static size_t reasoning_start(const char *t, size_t n)
{
    size_t i = 0;
    while (i < n && isspace((unsigned char)t[i]))
        i++;
    if (n - i >= strlen(THINK_OPEN) && memcmp(t + i, THINK_OPEN, strlen(THINK_OPEN)) == 0)
        return i + strlen(THINK_OPEN);
    return 0;
}

pd_status_t eng_reasoning_split(eng_reasoning_parser_t parser, const char *text, size_t len, char **reasoning_p,
                                char **content_p)
{
    bool oom = false;
    *reasoning_p = *content_p = NULL;
    if (parser == ENG_REASONING_NONE) {
        *content_p = dup_part(text, len, &oom);
        return oom ? PD_ERR_NOMEM : PD_OK;
    }
    const size_t r0 = reasoning_start(text, len);
    const char *close = eng_text_find(text + r0, len - r0, THINK_CLOSE);
    if (close == NULL) {
        *reasoning_p = dup_part(text + r0, len - r0, &oom);
    } else {
        const size_t c0 = (size_t)(close - text) + strlen(THINK_CLOSE);
        *reasoning_p = dup_part(text + r0, (size_t)(close - text) - r0, &oom);
        *content_p = dup_part(text + c0, len - c0, &oom);
    }
    if (oom) {
        free(*reasoning_p);
        free(*content_p);
        *reasoning_p = *content_p = NULL;
        return PD_ERR_NOMEM;
    }
    return PD_OK;
}

void eng_reasoning_stream_init(eng_reasoning_stream_t *s, eng_reasoning_parser_t parser)
{
    memset(s, 0, sizeof(*s));
    s->parser = parser;
    pd_buf_init(&s->held);
}

void eng_reasoning_stream_cleanup(eng_reasoning_stream_t *s) { pd_buf_cleanup(&s->held); }

static void drop_front(pd_buf_t *b, size_t n)
{
    if (n > 0 && b->len > 0)
        memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

pd_status_t eng_reasoning_stream_feed(eng_reasoning_stream_t *s, const char *text, size_t len, bool final,
                                      pd_buf_t *reasoning, pd_buf_t *content)
{
    pd_status_t st = PD_OK;
    if (s->parser == ENG_REASONING_NONE || s->state == ST_CONTENT)
        return len > 0 ? pd_buf_append(content, text, len) : PD_OK;
    if (len > 0 && (st = pd_buf_append(&s->held, text, len)) != PD_OK)
        return st;
    const char *t = s->held.data ? s->held.data : "";
    size_t n = s->held.len;
    if (s->state == ST_START) {
        /* leading spaces and a <think> are decided once enough text is in */
        size_t i = 0;
        while (i < n && isspace((unsigned char)t[i]))
            i++;
        const size_t ol = strlen(THINK_OPEN);
        if (!final && (i == n || (n - i < ol && memcmp(t + i, THINK_OPEN, n - i) == 0)))
            return PD_OK;
        if (n - i >= ol && memcmp(t + i, THINK_OPEN, ol) == 0)
            drop_front(&s->held, i + ol);
        s->state = ST_REASONING;
        t = s->held.data ? s->held.data : "";
        n = s->held.len;
    }
    const char *close = eng_text_find(t, n, THINK_CLOSE);
    if (close == NULL) {
        size_t keep = final ? 0 : eng_text_partial(t, n, THINK_CLOSE);
        if ((st = pd_buf_append(reasoning, t, n - keep)) != PD_OK)
            return st;
        drop_front(&s->held, n - keep);
        return PD_OK;
    }
    const size_t r = (size_t)(close - t), c0 = r + strlen(THINK_CLOSE);
    if ((st = pd_buf_append(reasoning, t, r)) != PD_OK || (st = pd_buf_append(content, t + c0, n - c0)) != PD_OK)
        return st;
    s->held.len = 0;
    s->state = ST_CONTENT;
    return PD_OK;
}
