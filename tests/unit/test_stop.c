/*
 * test_stop.c - incremental stop-string matching: stops spanning deltas, held-back
 * prefixes released when they do not complete, include_stop_str_in_output, the
 * earliest of several stops, and a brute-force comparison over random splits.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_stop.h"
#include "pd_test.h"

/* Feed text split at the given cut points; returns the emitted text (malloc'd). */
static char *run(const char *const *stops, int n, bool include, const char *text, const int *cuts, int ncuts,
                 int *matched_p)
{
    eng_stop_matcher_t *m;
    pd_buf_t out;
    size_t prev = 0, len = strlen(text);
    int matched = -1;

    pd_buf_init(&out);
    pd_buf_puts(&out, "");
    PD_CHECK_STATUS(eng_stop_matcher_create(stops, n, include, &m), PD_OK);
    for (int i = 0; i <= ncuts && matched < 0; i++) {
        size_t end = i < ncuts ? (size_t)cuts[i] : len;
        if (end > len)
            end = len;
        if (end < prev)
            continue;
        PD_CHECK_STATUS(eng_stop_matcher_feed(m, text + prev, end - prev, &out, &matched), PD_OK);
        prev = end;
    }
    if (matched < 0)
        PD_CHECK_STATUS(eng_stop_matcher_flush(m, &out), PD_OK);
    eng_stop_matcher_destroy(m);
    *matched_p = matched;
    return pd_buf_steal(&out);
}

PD_TEST(test_stop_basic)
{
    const char *stops[2] = {"###", "\nUser:"};
    int cuts[4] = {3, 7, 9, 12};
    int matched;
    char *out = run(stops, 2, false, "Hello ##x ok ### tail", cuts, 4, &matched);
    PD_CHECK_EQ_STR(out, "Hello ##x ok ");
    PD_CHECK_EQ_INT(matched, 0);
    free(out);
    out = run(stops, 2, true, "Hello ##x ok ### tail", cuts, 4, &matched);
    PD_CHECK_EQ_STR(out, "Hello ##x ok ###");
    free(out);
    /* no stop: everything comes out, including a held partial at the end */
    out = run(stops, 2, false, "abc\nUse", cuts, 2, &matched);
    PD_CHECK_EQ_STR(out, "abc\nUse");
    PD_CHECK_EQ_INT(matched, -1);
    free(out);
    /* the first to complete wins */
    out = run(stops, 2, false, "a\nUser: b ###", NULL, 0, &matched);
    PD_CHECK_EQ_STR(out, "a");
    PD_CHECK_EQ_INT(matched, 1);
    free(out);
    const char *st2[2] = {"abcd", "bc"};
    out = run(st2, 2, false, "xxabcd", NULL, 0, &matched);
    PD_CHECK_EQ_STR(out, "xxa");
    PD_CHECK_EQ_INT(matched, 1);
    free(out);
}

PD_TEST(test_stop_holdback)
{
    const char *stops[1] = {"STOP"};
    eng_stop_matcher_t *m;
    pd_buf_t out;
    int matched;

    pd_buf_init(&out);
    PD_CHECK_STATUS(eng_stop_matcher_create(stops, 1, false, &m), PD_OK);
    PD_CHECK_STATUS(eng_stop_matcher_feed(m, "abc ST", 6, &out, &matched), PD_OK);
    PD_CHECK_EQ_STR(out.data, "abc ");
    PD_CHECK_EQ_INT(eng_stop_matcher_held(m), 2);
    PD_CHECK_STATUS(eng_stop_matcher_feed(m, "O", 1, &out, &matched), PD_OK);
    PD_CHECK_EQ_STR(out.data, "abc ");
    PD_CHECK_STATUS(eng_stop_matcher_feed(m, "x", 1, &out, &matched), PD_OK);
    PD_CHECK_EQ_STR(out.data, "abc STOx"); /* released: it did not complete */
    PD_CHECK_EQ_INT(matched, -1);
    PD_CHECK_STATUS(eng_stop_matcher_feed(m, "SSTO", 4, &out, &matched), PD_OK);
    PD_CHECK_EQ_STR(out.data, "abc STOxS");
    PD_CHECK_STATUS(eng_stop_matcher_feed(m, "P and more", 10, &out, &matched), PD_OK);
    PD_CHECK_EQ_INT(matched, 0);
    PD_CHECK_EQ_STR(out.data, "abc STOxS");
    PD_CHECK_STATUS(eng_stop_matcher_feed(m, "zzz", 3, &out, &matched), PD_OK);
    PD_CHECK_EQ_STR(out.data, "abc STOxS"); /* finished: nothing more */
    eng_stop_matcher_destroy(m);
    pd_buf_cleanup(&out);
}

/* Reference on the whole text: the stop that completes first (ties: longer, then
 * listed first). */
static void reference(const char *const *stops, int n, bool include, const char *text, char *out, int *matched)
{
    size_t best = strlen(text) + 1, best_end = SIZE_MAX;
    *matched = -1;
    for (int i = 0; i < n; i++) {
        const char *p = strstr(text, stops[i]);
        if (p == NULL)
            continue;
        size_t pos = (size_t)(p - text), end = pos + strlen(stops[i]);
        if (end < best_end || (end == best_end && pos < best)) {
            best = pos;
            best_end = end;
            *matched = i;
        }
    }
    if (*matched < 0) {
        strcpy(out, text);
        return;
    }
    size_t end = include ? best + strlen(stops[*matched]) : best;
    memcpy(out, text, end);
    out[end] = '\0';
}

PD_TEST(test_stop_random)
{
    const char *stops[3] = {"aab", "ba", "abcab"};
    char text[64], want[64];
    int cuts[16], bad = 0;
    srand(9);
    for (int it = 0; it < 3000; it++) {
        int len = rand() % 40;
        for (int i = 0; i < len; i++)
            text[i] = "abc"[rand() % 3];
        text[len] = '\0';
        int ncuts = rand() % 10;
        for (int i = 0; i < ncuts; i++)
            cuts[i] = len ? rand() % (len + 1) : 0;
        for (int i = 0; i < ncuts; i++) /* sort */
            for (int j = i + 1; j < ncuts; j++)
                if (cuts[j] < cuts[i]) {
                    int t = cuts[i];
                    cuts[i] = cuts[j];
                    cuts[j] = t;
                }
        int nst = 1 + rand() % 3;
        bool include = rand() % 2;
        int m1, m2;
        reference(stops, nst, include, text, want, &m1);
        char *got = run(stops, nst, include, text, cuts, ncuts, &m2);
        if (strcmp(got, want) != 0 || m1 != m2) {
            if (bad++ < 5)
                fprintf(stderr, "  text '%s' stops %d include %d: got '%s' (%d) want '%s' (%d)\n", text, nst,
                        include, got, m2, want, m1);
        }
        free(got);
    }
    PD_CHECK_EQ_INT(bad, 0);
}

int main(void)
{
    PD_RUN(test_stop_basic);
    PD_RUN(test_stop_holdback);
    PD_RUN(test_stop_random);
    return PD_TEST_REPORT();
}
