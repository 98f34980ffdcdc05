/*
 * test_oai_chunk.c - the tree-free SSE chunk writer (eng_oai_chunk.c) against the
 * cJSON tree the server built before it (kept here as the reference): thousands of
 * randomized chunks (control characters, quotes, backslashes, multi-byte UTF-8,
 * logprobs with odd values, finish and stop reasons, usage, n > 1, token ids) must give
 * the same bytes as cJSON_PrintUnformatted and parse to an equal tree.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "eng_oai_chunk.h"
#include "pd_test.h"

/* The writer reproduces cJSON 1.7.15's number format (Debian 12); later cJSON releases
 * print integral doubles with "%d" (-0.0 as "0"), so bytes are compared only against
 * that release and the parsed trees always. */
#define SAME_CJSON (CJSON_VERSION_MAJOR == 1 && CJSON_VERSION_MINOR == 7 && CJSON_VERSION_PATCH == 15)

/* ---- random input ---- */

static uint64_t rng_g = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(uint32_t n)
{
    rng_g ^= rng_g << 13;
    rng_g ^= rng_g >> 7;
    rng_g ^= rng_g << 17;
    return n ? (uint32_t)(rng_g % n) : 0;
}

/* a random NUL-free string of valid UTF-8 mixed with every byte JSON must escape */
static size_t rnd_text(char *buf, size_t cap)
{
    static const char *pieces[] = {"\"", "\\", "/", "\b", "\f", "\n", "\r", "\t", "\x01", "\x1f", "\x7f", "\x0b",
                                   "a", "Z", " ", "{", "}", ":", ",", "[", "]", "\xc3\xa9", "\xe2\x82\xac",
                                   "\xf0\x9f\x98\x80", "\xe4\xb8\xad\xe6\x96\x87", "\\u0000", "null", "</script>",
                                   "\xc2\xa0", "\xef\xbf\xbd", "\x1b[0m"};
    size_t n = 0, want = rnd(6) == 0 ? rnd(200) : rnd(12);
    while (n < want) {
        const char *p = pieces[rnd(sizeof(pieces) / sizeof(pieces[0]))];
        size_t l = strlen(p);
        if (n + l + 1 > cap)
            break;
        memcpy(buf + n, p, l);
        n += l;
    }
    buf[n] = '\0';
    return n;
}

static float rnd_lp(void)
{
    switch (rnd(8)) {
    case 0: return 0.0f;
    case 1: return -0.0f;
    case 2: return -INFINITY;
    case 3: return NAN;
    case 4: return -(float)rnd(30);
    case 5: return -1e-7f * (float)rnd(1000);
    default: return -(float)rnd(1u << 30) / (float)(1u << 24);
    }
}

/* token strings: a small table so top-N lists repeat strings (the dedup path) */
#define N_TOKS 24
static char tok_strs_g[N_TOKS][300];

static void tokstr(void *user, int32_t id, char *buf, size_t buflen)
{
    (void)user;
    snprintf(buf, buflen, "%s", tok_strs_g[(uint32_t)id % N_TOKS]);
}

/* ---- the reference: the server's earlier cJSON writer ---- */

static cJSON *ref_base(bool chat, const char *id, int64_t created, const char *model)
{
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddStringToObject(ch, "id", id);
    cJSON_AddStringToObject(ch, "object", chat ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(ch, "created", (double)created);
    cJSON_AddStringToObject(ch, "model", model);
    return ch;
}

static cJSON *bytes_array(const char *s)
{
    cJSON *a = cJSON_CreateArray();
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(*p));
    return a;
}

static double lp_value(float v) { return isfinite(v) ? (double)v : -9999.0; }

static cJSON *ref_chat_lp(const eng_output_t *out, int i)
{
    char t[256];
    cJSON *e = cJSON_CreateObject(), *tops;
    tokstr(NULL, out->token_logprobs[i].token, t, sizeof(t));
    cJSON_AddStringToObject(e, "token", t);
    cJSON_AddNumberToObject(e, "logprob", lp_value(out->token_logprobs[i].logprob));
    cJSON_AddItemToObject(e, "bytes", bytes_array(t));
    tops = cJSON_AddArrayToObject(e, "top_logprobs");
    for (int k = 0; k < out->n_top; k++) {
        const eng_logprob_t *lp = &out->tops[(size_t)i * (size_t)out->n_top + (size_t)k];
        cJSON *te = cJSON_CreateObject();
        tokstr(NULL, lp->token, t, sizeof(t));
        cJSON_AddStringToObject(te, "token", t);
        cJSON_AddNumberToObject(te, "logprob", lp_value(lp->logprob));
        cJSON_AddItemToObject(te, "bytes", bytes_array(t));
        cJSON_AddItemToArray(tops, te);
    }
    return e;
}

static cJSON *ref_comp_lp(const eng_output_t *out, int *text_offset)
{
    char t[256];
    cJSON *obj = cJSON_CreateObject();
    cJSON *offs = cJSON_AddArrayToObject(obj, "text_offset"), *tlp = cJSON_AddArrayToObject(obj, "token_logprobs"),
          *toks = cJSON_AddArrayToObject(obj, "tokens"), *tops = cJSON_AddArrayToObject(obj, "top_logprobs");
    for (int i = 0; i < out->n_token_ids; i++) {
        tokstr(NULL, out->token_logprobs[i].token, t, sizeof(t));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber(*text_offset));
        *text_offset += (int)strlen(t);
        cJSON_AddItemToArray(tlp, cJSON_CreateNumber(lp_value(out->token_logprobs[i].logprob)));
        cJSON_AddItemToArray(toks, cJSON_CreateString(t));
        cJSON *m = cJSON_CreateObject();
        cJSON_AddNumberToObject(m, t, lp_value(out->token_logprobs[i].logprob));
        for (int k = 0; k < out->n_top; k++) {
            const eng_logprob_t *lp = &out->tops[(size_t)i * (size_t)out->n_top + (size_t)k];
            tokstr(NULL, lp->token, t, sizeof(t));
            if (cJSON_GetObjectItemCaseSensitive(m, t) == NULL)
                cJSON_AddNumberToObject(m, t, lp_value(lp->logprob));
        }
        cJSON_AddItemToArray(tops, m);
    }
    return obj;
}

static void ref_usage(cJSON *ch, int prompt, int completion)
{
    cJSON *u = cJSON_AddObjectToObject(ch, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", prompt);
    cJSON_AddNumberToObject(u, "total_tokens", prompt + completion);
    cJSON_AddNumberToObject(u, "completion_tokens", completion);
}

static cJSON *ref_event(const eng_oai_chunker_t *ck, cJSON *ch, int index, const eng_output_t *out, int n_prompt,
                        int *text_offset)
{
    cJSON *choices = cJSON_AddArrayToObject(ch, "choices"), *cj = cJSON_CreateObject();
    cJSON_AddNumberToObject(cj, "index", index);
    if (ck->chat) {
        cJSON *delta = cJSON_AddObjectToObject(cj, "delta");
        if (out->text_len > 0)
            cJSON_AddItemToObject(delta, "content", cJSON_CreateString(out->text));
        if (ck->want_logprobs && out->token_logprobs && out->n_token_ids > 0) {
            cJSON *content = cJSON_AddArrayToObject(cJSON_AddObjectToObject(cj, "logprobs"), "content");
            for (int i = 0; i < out->n_token_ids; i++)
                cJSON_AddItemToArray(content, ref_chat_lp(out, i));
        } else {
            cJSON_AddNullToObject(cj, "logprobs");
        }
    } else {
        cJSON_AddItemToObject(cj, "text", cJSON_CreateString(out->text_len ? out->text : ""));
        if (ck->want_logprobs && out->token_logprobs && out->n_token_ids > 0)
            cJSON_AddItemToObject(cj, "logprobs", ref_comp_lp(out, text_offset));
        else
            cJSON_AddNullToObject(cj, "logprobs");
    }
    if (ck->emit_token_ids && out->n_token_ids > 0) {
        cJSON *ids = cJSON_AddArrayToObject(cj, "token_ids");
        for (int i = 0; i < out->n_token_ids; i++)
            cJSON_AddItemToArray(ids, cJSON_CreateNumber(out->token_ids[i]));
    }
    if (out->finished) {
        cJSON_AddStringToObject(cj, "finish_reason", out->finish_reason);
        if (out->stop_str)
            cJSON_AddStringToObject(cj, "stop_reason", out->stop_str);
        else if (out->stop_token >= 0 && strcmp(out->finish_reason, "stop") == 0)
            cJSON_AddNumberToObject(cj, "stop_reason", out->stop_token);
        else
            cJSON_AddNullToObject(cj, "stop_reason");
    } else {
        cJSON_AddNullToObject(cj, "finish_reason");
        if (!ck->chat)
            cJSON_AddNullToObject(cj, "stop_reason");
    }
    cJSON_AddItemToArray(choices, cj);
    if (ck->continuous_usage)
        ref_usage(ch, n_prompt, out->n_output_tokens);
    return ch;
}

/* compare one SSE event with the reference tree (consumed) */
static int check_event(const pd_buf_t *got, cJSON *ref)
{
    char *want = cJSON_PrintUnformatted(ref);
    int ok = 1;
    size_t wl = strlen(want);
    if (got->len < 8 || memcmp(got->data, "data: ", 6) != 0 || memcmp(got->data + got->len - 2, "\n\n", 2) != 0 ||
        (SAME_CJSON && (got->len != wl + 8 || memcmp(got->data + 6, want, wl) != 0))) {
        fprintf(stderr, "  bytes differ:\n   got  %.*s\n   want %s\n", (int)got->len, got->data, want);
        ok = 0;
    }
    if (got->len >= 8) {
        cJSON *parsed = cJSON_ParseWithLength(got->data + 6, got->len - 8);
        if (parsed == NULL || !cJSON_Compare(parsed, ref, 1)) {
            fprintf(stderr, "  parsed tree differs\n");
            ok = 0;
        }
        cJSON_Delete(parsed);
    }
    cJSON_free(want);
    cJSON_Delete(ref);
    return ok;
}

PD_TEST(test_strings_and_numbers)
{
    char buf[4096];
    int bad = 0;
    for (int it = 0; it < 5000; it++) {
        size_t n = rnd_text(buf, sizeof(buf));
        pd_buf_t b;
        pd_buf_init(&b);
        PD_CHECK_STATUS(eng_json_append_str(&b, buf, n), PD_OK);
        cJSON *s = cJSON_CreateString(buf);
        char *want = cJSON_PrintUnformatted(s);
        if (strcmp(want, b.data) != 0)
            bad++;
        cJSON *back = cJSON_Parse(b.data);
        if (!cJSON_IsString(back) || strcmp(back->valuestring, buf) != 0)
            bad++;
        cJSON_Delete(back);
        cJSON_free(want);
        cJSON_Delete(s);
        pd_buf_cleanup(&b);
    }
    PD_CHECK_EQ_INT(bad, 0);
    /* every byte value alone (NUL through the explicit length) */
    for (int c = 1; c < 256; c++) {
        char one[2] = {(char)c, 0};
        pd_buf_t b;
        pd_buf_init(&b);
        eng_json_append_str(&b, one, 1);
        cJSON *s = cJSON_CreateString(one);
        char *want = cJSON_PrintUnformatted(s);
        if (strcmp(want, b.data) != 0) {
            fprintf(stderr, "  byte %d: %s vs %s\n", c, b.data, want);
            bad++;
        }
        cJSON_free(want);
        cJSON_Delete(s);
        pd_buf_cleanup(&b);
    }
    PD_CHECK_EQ_INT(bad, 0);
    {
        pd_buf_t b;
        pd_buf_init(&b);
        eng_json_append_str(&b, "a\0b", 3);
        PD_CHECK_EQ_STR(b.data, "\"a\\u0000b\"");
        pd_buf_cleanup(&b);
    }
    double specials[] = {0.0, -0.0, 1.0, -1.0, -9999.0, 0.1, -0.333333333333333, 1e-300, -1.5e-7, 2147483647.0,
                         2147483648.0, -2147483649.0, 1e17, 123456789.123, NAN, INFINITY, -INFINITY};
    for (int it = 0; it < 20000; it++) {
        double v = it < (int)(sizeof(specials) / sizeof(specials[0])) ? specials[it]
                   : it % 2 ? (double)rnd_lp() : ldexp((double)rnd(1u << 30), (int)rnd(80) - 60) * (rnd(2) ? -1 : 1);
        pd_buf_t b;
        pd_buf_init(&b);
        PD_CHECK_STATUS(eng_json_append_num(&b, v), PD_OK);
        cJSON *num = cJSON_CreateNumber(v);
        char *want = cJSON_PrintUnformatted(num);
        cJSON *back = cJSON_Parse(b.data);
        bool same = isfinite(v) ? cJSON_IsNumber(back) && fabs(back->valuedouble - v) <= fabs(v) * 4e-16 : cJSON_IsNull(back);
        cJSON_Delete(back);
        if ((SAME_CJSON && strcmp(want, b.data) != 0) || !same) {
            if (bad < 5)
                fprintf(stderr, "  number %.17g: %s vs %s\n", v, b.data, want);
            bad++;
        }
        cJSON_free(want);
        cJSON_Delete(num);
        pd_buf_cleanup(&b);
    }
    PD_CHECK_EQ_INT(bad, 0);
}

PD_TEST(test_random_chunks)
{
    char id[200], model[200], text[4096], stop[256];
    int bad = 0, n_lp = 0, n_fin = 0;
    for (int t = 0; t < N_TOKS; t++) {
        rnd_text(tok_strs_g[t], 120);
        if (t % 6 == 5) /* over the 255 bytes a token string keeps */
            memset(tok_strs_g[t], 'x', 299), tok_strs_g[t][299] = 0;
    }
    strcpy(tok_strs_g[3], tok_strs_g[4]); /* two ids, one string */
    tok_strs_g[7][0] = 0;                 /* an empty token string */
    for (int it = 0; it < 4000; it++) {
        eng_oai_chunker_t ck;
        bool chat = rnd(2);
        int64_t created = 1700000000 + rnd(100000000);
        rnd_text(id, 100);
        rnd_text(model, 100);
        PD_CHECK_STATUS(eng_oai_chunker_init(&ck, chat, id, created, model), PD_OK);
        ck.want_logprobs = rnd(2);
        ck.emit_token_ids = rnd(4) == 0;
        ck.continuous_usage = rnd(2);
        ck.prompt_details = rnd(2);
        ck.tokstr = tokstr;
        int off_got = (int)rnd(100), off_ref = off_got;
        /* a few events of one choice in a row, as a stream sends them */
        for (int ev_i = 0; ev_i < 3; ev_i++) {
            eng_output_t ev = {0};
            int32_t ids[4];
            eng_logprob_t lps[4], tops[4 * 6];
            pd_buf_t out;
            int index = (int)rnd(300), n_prompt = (int)rnd(5000);
            ev.text_len = rnd_text(text, sizeof(text));
            ev.text = text;
            ev.n_token_ids = (int)rnd(4);
            for (int i = 0; i < ev.n_token_ids; i++) {
                ids[i] = (int32_t)rnd(50000);
                lps[i].token = (int32_t)rnd(N_TOKS);
                lps[i].logprob = rnd_lp();
            }
            ev.token_ids = ids;
            if (rnd(5)) {
                ev.token_logprobs = lps;
                ev.n_top = (int)rnd(7);
                for (int i = 0; i < ev.n_top * ev.n_token_ids; i++) {
                    tops[i].token = (int32_t)rnd(N_TOKS);
                    tops[i].logprob = rnd_lp();
                }
                ev.tops = tops;
                n_lp += ck.want_logprobs && ev.n_token_ids > 0;
            }
            ev.n_output_tokens = (int)rnd(3000);
            ev.stop_token = -1;
            if (rnd(4) == 0) {
                static const char *reasons[] = {"stop", "length", "abort", "error"};
                ev.finished = true;
                ev.finish_reason = reasons[rnd(4)];
                if (rnd(3) == 0) {
                    rnd_text(stop, sizeof(stop));
                    ev.stop_str = stop;
                } else if (rnd(2)) {
                    ev.stop_token = (int32_t)rnd(49152);
                }
                n_fin++;
            }
            pd_buf_init(&out);
            PD_CHECK_STATUS(eng_oai_chunk_event(&ck, &out, index, &ev, n_prompt, &off_got), PD_OK);
            bad += !check_event(&out, ref_event(&ck, ref_base(chat, id, created, model), index, &ev, n_prompt,
                                                &off_ref));
            PD_CHECK_EQ_INT(off_got, off_ref);
            pd_buf_cleanup(&out);
            if (bad > 3)
                break;
        }
        /* the first chunks and the final usage chunk */
        {
            pd_buf_t out;
            int index = (int)rnd(10), n_prompt = (int)rnd(5000);
            pd_buf_init(&out);
            if (chat) {
                PD_CHECK_STATUS(eng_oai_chunk_role(&ck, &out, index, n_prompt), PD_OK);
                cJSON *ch = ref_base(chat, id, created, model);
                cJSON *cj = cJSON_CreateObject();
                cJSON_AddNumberToObject(cj, "index", index);
                cJSON *delta = cJSON_AddObjectToObject(cj, "delta");
                cJSON_AddStringToObject(delta, "role", "assistant");
                cJSON_AddStringToObject(delta, "content", "");
                cJSON_AddNullToObject(cj, "logprobs");
                cJSON_AddNullToObject(cj, "finish_reason");
                cJSON_AddItemToArray(cJSON_AddArrayToObject(ch, "choices"), cj);
                if (ck.continuous_usage)
                    ref_usage(ch, n_prompt, 0);
                bad += !check_event(&out, ch);
            } else {
                size_t tl = rnd_text(text, sizeof(text));
                const char *fr = rnd(2) ? "length" : NULL;
                PD_CHECK_STATUS(eng_oai_chunk_echo(&ck, &out, index, text, tl, NULL, fr, n_prompt), PD_OK);
                cJSON *ch = ref_base(chat, id, created, model);
                cJSON *cj = cJSON_CreateObject();
                cJSON_AddNumberToObject(cj, "index", index);
                cJSON_AddStringToObject(cj, "text", text);
                cJSON_AddNullToObject(cj, "logprobs");
                if (fr)
                    cJSON_AddStringToObject(cj, "finish_reason", fr);
                else
                    cJSON_AddNullToObject(cj, "finish_reason");
                cJSON_AddNullToObject(cj, "stop_reason");
                cJSON_AddItemToArray(cJSON_AddArrayToObject(ch, "choices"), cj);
                if (ck.continuous_usage) /* vLLM: usage on every chunk, the echo one too */
                    ref_usage(ch, n_prompt, 0);
                bad += !check_event(&out, ch);
            }
            pd_buf_reset(&out);
            int p = (int)rnd(100000), c = (int)rnd(100000), cached = (int)rnd(1000);
            PD_CHECK_STATUS(eng_oai_chunk_usage(&ck, &out, p, c, cached), PD_OK);
            cJSON *ch = ref_base(chat, id, created, model);
            cJSON_AddArrayToObject(ch, "choices");
            cJSON *u = cJSON_AddObjectToObject(ch, "usage");
            cJSON_AddNumberToObject(u, "prompt_tokens", p);
            cJSON_AddNumberToObject(u, "total_tokens", p + c);
            cJSON_AddNumberToObject(u, "completion_tokens", c);
            if (ck.prompt_details)
                cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "prompt_tokens_details"), "cached_tokens", cached);
            else
                cJSON_AddNullToObject(u, "prompt_tokens_details");
            bad += !check_event(&out, ch);
            pd_buf_cleanup(&out);
        }
        eng_oai_chunker_cleanup(&ck);
        if (bad > 3)
            break;
    }
    PD_CHECK_EQ_INT(bad, 0);
    PD_CHECK(n_lp > 1000); /* the logprobs paths really ran */
    PD_CHECK(n_fin > 1000);
}

/* vLLM's completions top_logprobs is a dict keyed by token string: two different
 * tokens with one string give one key, the sampled token's value wins */
PD_TEST(test_comp_top_logprobs_dedup)
{
    eng_oai_chunker_t ck;
    eng_output_t ev = {0};
    int32_t ids[1] = {5};
    eng_logprob_t lp[1] = {{1, -0.5f, 1}}, tops[3] = {{1, -0.5f, 1}, {2, -1.0f, 2}, {3, -2.0f, 3}};
    pd_buf_t out;
    int off = 0;
    strcpy(tok_strs_g[1], "The");
    strcpy(tok_strs_g[2], "the");
    strcpy(tok_strs_g[3], "The");
    PD_CHECK_STATUS(eng_oai_chunker_init(&ck, false, "cmpl-1", 1, "m"), PD_OK);
    ck.want_logprobs = true;
    ck.tokstr = tokstr;
    ev.token_ids = ids;
    ev.n_token_ids = 1;
    ev.text = "The";
    ev.text_len = 3;
    ev.token_logprobs = lp;
    ev.tops = tops;
    ev.n_top = 3;
    ev.stop_token = -1;
    pd_buf_init(&out);
    PD_CHECK_STATUS(eng_oai_chunk_event(&ck, &out, 0, &ev, 4, &off), PD_OK);
    PD_CHECK(strstr(out.data, "\"top_logprobs\":[{\"The\":-0.5,\"the\":-1}]") != NULL);
    PD_CHECK(strstr(out.data, "\"text_offset\":[0]") != NULL);
    PD_CHECK_EQ_INT(off, 3);
    pd_buf_cleanup(&out);
    eng_oai_chunker_cleanup(&ck);
}

/* --bench (bench/bench_server.sh runs it; no test depends on a time): ns per chunk of
 * the tree-free writer and of the cJSON tree it replaced, on typical chunks. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void bench(void)
{
    static const char *texts[] = {" the", " Paris", ",", "\n", " \"quoted\"", " caf\xc3\xa9"};
    int32_t ids[1] = {1234};
    eng_logprob_t lp[1] = {{2, -0.25f, 1}}, tops[5] = {{2, -0.25f, 1}, {5, -1.5f, 2}, {9, -2.5f, 3}, {11, -3.f, 4},
                                                        {13, -4.f, 5}};
    const int n = 200000;
    for (int t = 0; t < N_TOKS; t++)
        snprintf(tok_strs_g[t], sizeof(tok_strs_g[t]), " tok%d", t);
    printf("chunk writer, ns per chunk (cJSON tree as before / tree-free):\n");
    for (int mode = 0; mode < 4; mode++) {
        bool chat = mode & 1, lps = mode & 2;
        eng_oai_chunker_t ck;
        pd_buf_t out;
        double t0, t_ref = 0, t_new = 0;
        int off = 0;
        size_t sink = 0;
        eng_oai_chunker_init(&ck, chat, "cmpl-0123456789abcdef0123456789abcdef", 1795883372, "SmolLM2-135M-Instruct");
        ck.want_logprobs = lps;
        ck.tokstr = tokstr;
        pd_buf_init(&out);
        for (int pass = 0; pass < 2; pass++) {
            t0 = now_s();
            for (int i = 0; i < n; i++) {
                eng_output_t ev = {.token_ids = ids, .n_token_ids = 1, .text = texts[i % 6],
                                   .text_len = strlen(texts[i % 6]), .token_logprobs = lp, .tops = tops,
                                   .n_top = 5, .stop_token = -1, .n_output_tokens = i};
                if (pass == 0) {
                    cJSON *ch = ref_event(&ck, ref_base(chat, "cmpl-0123456789abcdef0123456789abcdef", 1795883372,
                                                        "SmolLM2-135M-Instruct"), 0, &ev, 12, &off);
                    char *str = cJSON_PrintUnformatted(ch);
                    pd_buf_reset(&out);
                    pd_buf_puts(&out, "data: ");
                    pd_buf_puts(&out, str);
                    pd_buf_puts(&out, "\n\n");
                    sink += out.len;
                    cJSON_free(str);
                    cJSON_Delete(ch);
                } else {
                    pd_buf_reset(&out);
                    eng_oai_chunk_event(&ck, &out, 0, &ev, 12, &off);
                    sink += out.len;
                }
            }
            if (pass == 0)
                t_ref = now_s() - t0;
            else
                t_new = now_s() - t0;
        }
        printf("  %-11s %-12s %7.0f  %7.0f  (%zu bytes)\n", chat ? "chat" : "completions",
               lps ? "top-5 lps" : "text", t_ref / n * 1e9, t_new / n * 1e9, sink / (2 * (size_t)n));
        pd_buf_cleanup(&out);
        eng_oai_chunker_cleanup(&ck);
    }
}

/* A streamed tool call: the bytes of the cJSON tree the chunk stands for. */
PD_TEST(test_tool_call_chunk)
{
    eng_oai_chunker_t ck;
    pd_buf_t out;
    const char *call = "{\"index\":1,\"id\":\"chatcmpl-tool-0a\",\"type\":\"function\",\"function\":{\"name\":"
                       "\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Par\\u00eds\\\"}\"}}";
    pd_buf_init(&out);
    PD_CHECK_STATUS(eng_oai_chunker_init(&ck, true, "chatcmpl-7", 1795883372, "m\"x"), PD_OK);
    cJSON *parsed = cJSON_Parse(call);
    char *printed = cJSON_PrintUnformatted(parsed); /* as the server renders a call */
    PD_CHECK_STATUS(eng_oai_chunk_tool_call(&ck, &out, 3, printed), PD_OK);
    cJSON_free(printed);
    cJSON *root = cJSON_CreateObject(), *choices, *choice, *delta, *list;
    cJSON_AddStringToObject(root, "id", "chatcmpl-7");
    cJSON_AddStringToObject(root, "object", "chat.completion.chunk");
    cJSON_AddNumberToObject(root, "created", 1795883372);
    cJSON_AddStringToObject(root, "model", "m\"x");
    choices = cJSON_AddArrayToObject(root, "choices");
    choice = cJSON_CreateObject();
    cJSON_AddNumberToObject(choice, "index", 3);
    delta = cJSON_AddObjectToObject(choice, "delta");
    list = cJSON_AddArrayToObject(delta, "tool_calls");
    cJSON_AddItemToArray(list, parsed);
    cJSON_AddNullToObject(choice, "logprobs");
    cJSON_AddNullToObject(choice, "finish_reason");
    cJSON_AddItemToArray(choices, choice);
    char *js = cJSON_PrintUnformatted(root);
    pd_buf_t want;
    pd_buf_init(&want);
    pd_buf_puts(&want, "data: ");
    pd_buf_puts(&want, js);
    pd_buf_puts(&want, "\n\n");
    PD_CHECK(out.len == want.len && memcmp(out.data, want.data, out.len) == 0);
    if (out.len != want.len || memcmp(out.data, want.data, out.len) != 0)
        fprintf(stderr, "  got  %.*s  want %.*s", (int)out.len, out.data, (int)want.len, want.data);
    cJSON_free(js);
    cJSON_Delete(root);
    pd_buf_cleanup(&want);
    pd_buf_cleanup(&out);
    eng_oai_chunker_cleanup(&ck);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
        bench();
        return 0;
    }
    PD_RUN(test_strings_and_numbers);
    PD_RUN(test_random_chunks);
    PD_RUN(test_comp_top_logprobs_dedup);
    PD_RUN(test_tool_call_chunk);
    return PD_TEST_REPORT();
}
