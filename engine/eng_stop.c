/*
 * eng_stop.c - incremental stop-string matcher.
 *
 * buf holds the tail of the text seen so far: the bytes not emitted yet (held
 * back) preceded by up to max_len - 1 already emitted bytes kept as context, so a
 * stop string spanning deltas is found even when nothing was held (include_stop
 * emits eagerly).  A match is searched only where it can involve the new delta.
 * Invariant: emitted <= buf.len, and every byte before emitted has been output.
 */
#include "eng_stop.h"

#include <stdlib.h>
#include <string.h>

#include "pd_log.h"

struct eng_stop_matcher {
    char **stops;
    size_t *lens;
    int n;
    size_t max_len;
    bool include;
    bool done;
    pd_buf_t buf;
    size_t emitted;          /* bytes of buf already output */
};

pd_status_t eng_stop_matcher_create(const char *const *stops, int n_stops, bool include_stop,
                                    eng_stop_matcher_t **m_p)
{
    eng_stop_matcher_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return PD_ERR_NOMEM;
    if (n_stops > 0) {
        m->stops = calloc((size_t)n_stops, sizeof(char *));
        m->lens = calloc((size_t)n_stops, sizeof(size_t));
        if (m->stops == NULL || m->lens == NULL)
            goto err_free;
    }
    for (int i = 0; i < n_stops; i++) {
        if (stops[i] == NULL || stops[i][0] == '\0')
            continue;
        m->stops[m->n] = strdup(stops[i]);
        if (m->stops[m->n] == NULL)
            goto err_free;
        m->lens[m->n] = strlen(stops[i]);
        if (m->lens[m->n] > m->max_len)
            m->max_len = m->lens[m->n];
        m->n++;
    }
    m->include = include_stop;
    pd_buf_init(&m->buf);
    *m_p = m;
    return PD_OK;

err_free:
    eng_stop_matcher_destroy(m);
    return PD_ERR_NOMEM;
}

void eng_stop_matcher_destroy(eng_stop_matcher_t *m)
{
    if (m == NULL)
        return;
    for (int i = 0; i < m->n; i++)
        free(m->stops[i]);
    free(m->stops);
    free(m->lens);
    pd_buf_cleanup(&m->buf);
    free(m);
}

size_t eng_stop_matcher_held(const eng_stop_matcher_t *m)
{
    return m->buf.len - m->emitted;
}

static pd_status_t emit_to(eng_stop_matcher_t *m, size_t end, pd_buf_t *out)
{
    if (end <= m->emitted)
        return PD_OK;
    pd_status_t st = pd_buf_append(out, m->buf.data + m->emitted, end - m->emitted);
    if (st == PD_OK)
        m->emitted = end;
    return st;
}

/* Longest k < max_len such that the last k bytes of buf start some stop string. */
static size_t holdback(const eng_stop_matcher_t *m)
{
    size_t lim = m->max_len > 0 ? m->max_len - 1 : 0;
    if (lim > m->buf.len)
        lim = m->buf.len;
    for (size_t k = lim; k > 0; k--) {
        const char *suf = m->buf.data + m->buf.len - k;
        for (int i = 0; i < m->n; i++)
            if (m->lens[i] > k && memcmp(m->stops[i], suf, k) == 0)
                return k;
    }
    return 0;
}

pd_status_t eng_stop_matcher_feed(eng_stop_matcher_t *m, const char *delta, size_t len, pd_buf_t *out,
                                  int *matched_p)
{
    pd_status_t st;
    size_t old_len = m->buf.len;
    size_t best_pos = SIZE_MAX;
    int best = -1;

    *matched_p = -1;
    if (m->done)
        return PD_OK;
    if (len > 0) {
        st = pd_buf_append(&m->buf, delta, len);
        if (st != PD_OK)
            return st;
    }
    if (m->n == 0)
        return emit_to(m, m->buf.len, out);
    /* The stop that completes first wins (ties: the longer one, i.e. the earlier
     * start, then the one listed first), which makes the result independent of how
     * the text was split into deltas. */
    size_t best_end = SIZE_MAX;
    for (int i = 0; i < m->n; i++) {
        size_t ls = m->lens[i];
        if (ls > m->buf.len)
            continue;
        /* A new match must end inside the delta, so it starts at or after old_len - (ls - 1). */
        size_t from = old_len + 1 > ls ? old_len + 1 - ls : 0;
        for (size_t p = from; p + ls <= m->buf.len; p++) {
            const char *hit = memchr(m->buf.data + p, m->stops[i][0], m->buf.len - ls + 1 - p);
            if (hit == NULL)
                break;
            p = (size_t)(hit - m->buf.data);
            if (memcmp(hit, m->stops[i], ls) == 0) {
                if (p + ls < best_end || (p + ls == best_end && p < best_pos)) {
                    best_end = p + ls;
                    best_pos = p;
                    best = i;
                }
                break;
            }
        }
    }
    if (best >= 0) {
        size_t end = m->include ? best_pos + m->lens[best] : best_pos;
        st = emit_to(m, end, out);
        if (st != PD_OK)
            return st;
        m->done = true;
        *matched_p = best;
        return PD_OK;
    }
    size_t hold = m->include ? 0 : holdback(m);
    st = emit_to(m, m->buf.len - hold, out);
    if (st != PD_OK)
        return st;
    /* Trim the context to max_len - 1 bytes, never dropping unemitted bytes. */
    size_t keep_from = m->buf.len > m->max_len - 1 ? m->buf.len - (m->max_len - 1) : 0;
    if (keep_from > m->emitted)
        keep_from = m->emitted;
    if (keep_from > 0) {
        memmove(m->buf.data, m->buf.data + keep_from, m->buf.len - keep_from);
        m->buf.len -= keep_from;
        m->buf.data[m->buf.len] = '\0';
        m->emitted -= keep_from;
    }
    return PD_OK;
}

pd_status_t eng_stop_matcher_flush(eng_stop_matcher_t *m, pd_buf_t *out)
{
    if (m->done)
        return PD_OK;
    m->done = true;
    return emit_to(m, m->buf.len, out);
}
