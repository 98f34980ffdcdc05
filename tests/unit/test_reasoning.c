/*
 * test_reasoning.c - the reasoning parser (eng_reasoning.h): whole outputs split into
 * reasoning and content, and every output streamed in every two-way split and in random
 * many-way splits must join to the same two parts.
 */
#include <stdlib.h>
#include <string.h>

#include "eng_reasoning.h"
#include "pd_test.h"

typedef struct {
    const char *text, *reasoning, *content; /* NULL: the part is empty */
} rc_case_t;

static const rc_case_t cases[] = {
    {"<think>Let me add 2 and 2.</think>The answer is 4.", "Let me add 2 and 2.", "The answer is 4."},
    {"Let me add 2 and 2.\n</think>\n\nThe answer is 4.", "Let me add 2 and 2.\n", "\n\nThe answer is 4."},
    {"  \n<think>\nhmm</think>", "\nhmm", NULL},
    {"<think></think>Only content.", NULL, "Only content."},
    {"Still thinking about it", "Still thinking about it", NULL},
    {"<think>unfinished thought", "unfinished thought", NULL},
    {"a</think>b</think>c", "a", "b</think>c"},
    {"x <think> in the middle</think>y", "x <think> in the middle", "y"},
    {"</think", "</think", NULL},
    {"", NULL, NULL},
    {"<think>", NULL, NULL},
    {"<thin", "<thin", NULL},
};

static bool same(const char *got, size_t len, const char *want)
{
    return want == NULL ? len == 0 : len == strlen(want) && memcmp(got, want, len) == 0;
}

PD_TEST(test_whole)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *r = NULL, *c = NULL;
        PD_CHECK_STATUS(eng_reasoning_split(ENG_REASONING_DEEPSEEK_R1, cases[i].text, strlen(cases[i].text), &r, &c),
                        PD_OK);
        bool ok = same(r ? r : "", r ? strlen(r) : 0, cases[i].reasoning) && same(c ? c : "", c ? strlen(c) : 0,
                                                                                   cases[i].content);
        if (!ok)
            fprintf(stderr, "  case %zu: reasoning '%s' content '%s'\n", i, r ? r : "(null)", c ? c : "(null)");
        PD_CHECK(ok);
        free(r);
        free(c);
    }
    char *r = NULL, *c = NULL; /* no parser: all content */
    PD_CHECK_STATUS(eng_reasoning_split(ENG_REASONING_NONE, "<think>x</think>y", 17, &r, &c), PD_OK);
    PD_CHECK(r == NULL && c != NULL && strcmp(c, "<think>x</think>y") == 0);
    free(c);
}

static void stream_cuts(const rc_case_t *k, const size_t *cuts, int n_cuts)
{
    eng_reasoning_stream_t s;
    pd_buf_t r, c;
    size_t len = strlen(k->text), at = 0;
    eng_reasoning_stream_init(&s, ENG_REASONING_DEEPSEEK_R1);
    pd_buf_init(&r);
    pd_buf_init(&c);
    for (int i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        PD_CHECK_STATUS(eng_reasoning_stream_feed(&s, k->text + at, end - at, i == n_cuts, &r, &c), PD_OK);
        at = end;
    }
    bool ok = same(r.data ? r.data : "", r.len, k->reasoning) && same(c.data ? c.data : "", c.len, k->content);
    if (!ok)
        fprintf(stderr, "  '%s' cut at %zu (%d cuts): reasoning '%.*s' content '%.*s'\n", k->text,
                n_cuts ? cuts[0] : 0, n_cuts, (int)r.len, r.data ? r.data : "", (int)c.len, c.data ? c.data : "");
    PD_CHECK(ok);
    pd_buf_cleanup(&r);
    pd_buf_cleanup(&c);
    eng_reasoning_stream_cleanup(&s);
}

PD_TEST(test_stream_matches_whole)
{
    unsigned rng = 7;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = strlen(cases[i].text);
        stream_cuts(&cases[i], NULL, 0);
        for (size_t cut = 0; cut <= len; cut++)
            stream_cuts(&cases[i], &cut, 1);
        for (int t = 0; t < 40; t++) {
            size_t cuts[64];
            int n = 0;
            for (size_t p = 0; p < len && n < 64;) {
                rng = rng * 1103515245u + 12345u;
                p += 1 + (rng >> 16) % 5;
                if (p < len)
                    cuts[n++] = p;
            }
            stream_cuts(&cases[i], cuts, n);
        }
    }
}

PD_TEST(test_stream_sends_early)
{
    /* reasoning flows as it comes; only a possible "</think>" tail waits */
    eng_reasoning_stream_t s;
    pd_buf_t r, c;
    pd_buf_init(&r);
    pd_buf_init(&c);
    eng_reasoning_stream_init(&s, ENG_REASONING_DEEPSEEK_R1);
    PD_CHECK_STATUS(eng_reasoning_stream_feed(&s, "<think>abc </th", 15, false, &r, &c), PD_OK);
    PD_CHECK(r.len == 4 && memcmp(r.data, "abc ", 4) == 0 && c.len == 0);
    PD_CHECK_STATUS(eng_reasoning_stream_feed(&s, "ink>done", 8, false, &r, &c), PD_OK);
    PD_CHECK(r.len == 4 && c.len == 4 && memcmp(c.data, "done", 4) == 0);
    PD_CHECK_STATUS(eng_reasoning_stream_feed(&s, "!", 1, true, &r, &c), PD_OK);
    PD_CHECK(c.len == 5);
    eng_reasoning_stream_cleanup(&s);
    pd_buf_cleanup(&r);
    pd_buf_cleanup(&c);
    eng_reasoning_parser_t p;
    PD_CHECK_STATUS(eng_reasoning_parser_lookup("deepseek_r1", &p), PD_OK);
    PD_CHECK(p == ENG_REASONING_DEEPSEEK_R1);
    PD_CHECK_STATUS(eng_reasoning_parser_lookup("granite", &p), PD_ERR_INVAL);
}

int main(void)
{
    PD_RUN(test_whole);
    PD_RUN(test_stream_matches_whole);
    PD_RUN(test_stream_sends_early);
    return PD_TEST_REPORT();
}
