/*
 * test_toolcall.c - the tool-call parsers (eng_toolcall.h): every format's calls,
 * content and failure cases on whole outputs, then the streaming side against the whole
 * one: every output fed in every split into two deltas, and in random splits into many,
 * must give the same content and the same calls (names, arguments, order, index).
 */
#include <stdlib.h>
#include <string.h>

#include "eng_toolcall.h"
#include "pd_test.h"

typedef struct {
    eng_tool_parser_t p;
    const char *text;
    int n_calls;           /* 0: no call, the text is all content */
    const char *content;   /* content beside the calls (NULL: null) */
    const char *names[3];
    const char *args[3];   /* the arguments JSON text */
} tc_case_t;

static const tc_case_t cases[] = {
    /* hermes */
    {ENG_TOOL_PARSER_HERMES,
     "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n"
     "</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\"}}\n</tool_call>",
     2, "Let me check.\n", {"get_weather", "get_time"}, {"{\"city\":\"Paris\",\"days\":2}", "{\"tz\":\"CET\"}"}},
    {ENG_TOOL_PARSER_HERMES, "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", 1, NULL, {"f"}, {"{}"}},
    {ENG_TOOL_PARSER_HERMES, "  \n<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}", 1, NULL, {"f"},
     {"{\"a\": 1}"}}, /* unclosed last block; arguments given as a string are kept as they are */
    {ENG_TOOL_PARSER_HERMES, "<tool_call>\n{\"name\": \"f\"}\n</tool_call>", 1, NULL, {"f"}, {"{}"}},
    {ENG_TOOL_PARSER_HERMES, "No tools needed: 2 < 3 and <tool is not a tag.", 0, NULL, {NULL}, {NULL}},
    {ENG_TOOL_PARSER_HERMES, "Bad: <tool_call>{\"name\": \"f\", \"arguments\": {</tool_call>", 0, NULL, {NULL}, {NULL}},
    {ENG_TOOL_PARSER_HERMES, "<tool_call>{\"arguments\": {}}</tool_call>", 0, NULL, {NULL}, {NULL}}, /* no name */
    {ENG_TOOL_PARSER_HERMES, "<tool_call>[1, 2]</tool_call>", 0, NULL, {NULL}, {NULL}},
    {ENG_TOOL_PARSER_HERMES, "<tool_call>{\"name\": \"f\", \"arguments\": {}} trailing</tool_call>", 0, NULL, {NULL},
     {NULL}},
    {ENG_TOOL_PARSER_HERMES, "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac <tool_call>{\"name\": \"t\", \"arguments\": "
                             "{\"q\": \"\xe6\x97\xa5\"}}</tool_call>",
     1, "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac ", {"t"}, {"{\"q\":\"\xe6\x97\xa5\"}"}},
    /* llama3_json */
    {ENG_TOOL_PARSER_LLAMA3_JSON, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", 1, NULL,
     {"get_weather"}, {"{\"city\":\"Paris\"}"}},
    {ENG_TOOL_PARSER_LLAMA3_JSON,
     "<|python_tag|>{\"name\": \"a\", \"arguments\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}", 2, NULL,
     {"a", "b"}, {"{\"x\":1}", "{}"}},
    {ENG_TOOL_PARSER_LLAMA3_JSON, " \n{\"name\": \"a\", \"parameters\": {\"l\": [1, 2]}}\n", 1, NULL, {"a"},
     {"{\"l\":[1,2]}"}},
    {ENG_TOOL_PARSER_LLAMA3_JSON, "The answer is {\"name\": \"a\"}", 0, NULL, {NULL}, {NULL}},
    {ENG_TOOL_PARSER_LLAMA3_JSON, "{\"name\": \"a\", \"parameters\": {}} and more", 0, NULL, {NULL}, {NULL}},
    {ENG_TOOL_PARSER_LLAMA3_JSON, "{\"text\": \"not a call\"}", 0, NULL, {NULL}, {NULL}},
    {ENG_TOOL_PARSER_LLAMA3_JSON, "{\"name\": \"a\", \"parameters\": {", 0, NULL, {NULL}, {NULL}},
    {ENG_TOOL_PARSER_LLAMA3_JSON, "<|python", 0, NULL, {NULL}, {NULL}},
    /* mistral */
    {ENG_TOOL_PARSER_MISTRAL,
     "Sure. [TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"g\", "
     "\"arguments\": {}}]",
     2, "Sure. ", {"get_weather", "g"}, {"{\"city\":\"Paris\"}", "{}"}},
    {ENG_TOOL_PARSER_MISTRAL, "[TOOL_CALLS] {\"name\": \"f\", \"arguments\": {\"k\": true}}", 1, NULL, {"f"},
     {"{\"k\":true}"}},
    {ENG_TOOL_PARSER_MISTRAL, "[TOOL_CALLS][]", 0, NULL, {NULL}, {NULL}},
    {ENG_TOOL_PARSER_MISTRAL, "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}] extra", 0, NULL, {NULL}, {NULL}},
    {ENG_TOOL_PARSER_MISTRAL, "Just text with [TOOL and brackets].", 0, NULL, {NULL}, {NULL}},
};

static bool hex32(const char *s)
{
    if (strlen(s) != 32)
        return false;
    for (int i = 0; i < 32; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* calls hold exactly the case's calls (with "index" 0.. when indexed) */
static void check_calls(const tc_case_t *c, const cJSON *calls, bool indexed)
{
    PD_CHECK_EQ_INT(cJSON_GetArraySize(calls), c->n_calls);
    for (int k = 0; k < c->n_calls && k < cJSON_GetArraySize(calls); k++) {
        const cJSON *call = cJSON_GetArrayItem(calls, k);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(call, "id");
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(call, "type");
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        PD_CHECK(cJSON_IsString(id) && cJSON_IsString(type) && strcmp(type->valuestring, "function") == 0);
        PD_CHECK(cJSON_IsString(name) && strcmp(name->valuestring, c->names[k]) == 0);
        PD_CHECK(cJSON_IsString(args) && strcmp(args->valuestring, c->args[k]) == 0);
        if (cJSON_IsString(id)) {
            if (c->p == ENG_TOOL_PARSER_MISTRAL) {
                PD_CHECK_EQ_INT(strlen(id->valuestring), 9);
            } else {
                PD_CHECK(strncmp(id->valuestring, "chatcmpl-tool-", 14) == 0 && hex32(id->valuestring + 14));
            }
        }
        const cJSON *index = cJSON_GetObjectItemCaseSensitive(call, "index");
        if (indexed)
            PD_CHECK(cJSON_IsNumber(index) && index->valueint == k);
        else
            PD_CHECK(index == NULL);
    }
}

PD_TEST(test_whole_outputs)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const tc_case_t *c = &cases[i];
        char *content = (char *)"unset";
        cJSON *calls = NULL;
        bool got = eng_tool_parse(c->p, c->text, strlen(c->text), &content, &calls);
        if (got != (c->n_calls > 0))
            fprintf(stderr, "  case %zu: %s\n", i, c->text);
        PD_CHECK(got == (c->n_calls > 0));
        if (!got) {
            PD_CHECK(calls == NULL && strcmp(content, "unset") == 0); /* nothing set */
            continue;
        }
        check_calls(c, calls, false);
        if (c->content == NULL)
            PD_CHECK(content == NULL);
        else
            PD_CHECK(content != NULL && strcmp(content, c->content) == 0);
        free(content);
        cJSON_Delete(calls);
    }
    /* another parser's format is content */
    char *content = NULL;
    cJSON *calls = NULL;
    PD_CHECK(!eng_tool_parse(ENG_TOOL_PARSER_MISTRAL, cases[0].text, strlen(cases[0].text), &content, &calls));
    PD_CHECK(!eng_tool_parse(ENG_TOOL_PARSER_HERMES, "", 0, &content, &calls));
    PD_CHECK(!eng_tool_parse(ENG_TOOL_PARSER_NONE, cases[0].text, strlen(cases[0].text), &content, &calls));
}

/* Stream c->text cut at the given points; content and calls must be the whole output's. */
static void stream_split(const tc_case_t *c, const size_t *cuts, int n_cuts)
{
    eng_tool_stream_t s;
    pd_buf_t content;
    cJSON *calls = NULL;
    size_t len = strlen(c->text), at = 0;
    eng_tool_stream_init(&s, c->p);
    pd_buf_init(&content);
    for (int i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        PD_CHECK_STATUS(eng_tool_stream_feed(&s, c->text + at, end - at, i == n_cuts, &content, &calls), PD_OK);
        at = end;
    }
    const char *want = c->n_calls > 0 ? (c->content ? c->content : "") : c->text;
    bool ok = content.len == strlen(want) && memcmp(content.data ? content.data : "", want, content.len) == 0;
    if (!ok) {
        /* the streamed content may keep the spaces before a call that the whole one drops */
        ok = c->n_calls > 0 && c->content == NULL;
        for (size_t k = 0; ok && k < content.len; k++)
            ok = content.data[k] == ' ' || content.data[k] == '\n';
    }
    if (!ok)
        fprintf(stderr, "  stream of '%s' (%d cuts, first %zu): content '%.*s'\n", c->text, n_cuts,
                n_cuts ? cuts[0] : 0, (int)content.len, content.data ? content.data : "");
    PD_CHECK(ok);
    if (c->n_calls > 0)
        check_calls(c, calls, true);
    else
        PD_CHECK(calls == NULL);
    PD_CHECK_EQ_INT(s.n_calls, c->n_calls);
    cJSON_Delete(calls);
    pd_buf_cleanup(&content);
    eng_tool_stream_cleanup(&s);
}

PD_TEST(test_streaming_matches_whole)
{
    unsigned rng = 12345;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const tc_case_t *c = &cases[i];
        size_t len = strlen(c->text);
        stream_split(c, NULL, 0);
        for (size_t cut = 0; cut <= len; cut++)
            stream_split(c, &cut, 1);
        for (int r = 0; r < 50; r++) { /* random splits into many deltas, down to one byte */
            size_t cuts[64];
            int n = 0;
            for (size_t p = 0; p < len && n < 64;) {
                rng = rng * 1103515245u + 12345u;
                p += 1 + (rng >> 16) % 7;
                if (p < len)
                    cuts[n++] = p;
            }
            stream_split(c, cuts, n);
        }
    }
}

PD_TEST(test_stream_holds_only_what_may_be_a_marker)
{
    eng_tool_stream_t s;
    pd_buf_t content;
    cJSON *calls = NULL;
    pd_buf_init(&content);
    eng_tool_stream_init(&s, ENG_TOOL_PARSER_HERMES);
    PD_CHECK_STATUS(eng_tool_stream_feed(&s, "Hello <tool", 11, false, &content, &calls), PD_OK);
    PD_CHECK_EQ_INT(content.len, 6); /* "Hello " goes out, "<tool" waits */
    PD_CHECK_STATUS(eng_tool_stream_feed(&s, "box> ok", 7, false, &content, &calls), PD_OK);
    PD_CHECK(content.len == 18 && memcmp(content.data, "Hello <toolbox> ok", 18) == 0);
    PD_CHECK(calls == NULL);
    eng_tool_stream_cleanup(&s);
    pd_buf_reset(&content);
    /* llama3_json: text that starts like a call waits for the end; other text flows */
    eng_tool_stream_init(&s, ENG_TOOL_PARSER_LLAMA3_JSON);
    PD_CHECK_STATUS(eng_tool_stream_feed(&s, "{\"name\"", 7, false, &content, &calls), PD_OK);
    PD_CHECK_EQ_INT(content.len, 0);
    eng_tool_stream_cleanup(&s);
    eng_tool_stream_init(&s, ENG_TOOL_PARSER_LLAMA3_JSON);
    PD_CHECK_STATUS(eng_tool_stream_feed(&s, "Paris is", 8, false, &content, &calls), PD_OK);
    PD_CHECK_EQ_INT(content.len, 8);
    eng_tool_stream_cleanup(&s);
    pd_buf_cleanup(&content);
}

PD_TEST(test_lookup)
{
    eng_tool_parser_t p = ENG_TOOL_PARSER_NONE;
    PD_CHECK_STATUS(eng_tool_parser_lookup("hermes", &p), PD_OK);
    PD_CHECK(p == ENG_TOOL_PARSER_HERMES);
    PD_CHECK_STATUS(eng_tool_parser_lookup("llama3_json", &p), PD_OK);
    PD_CHECK(p == ENG_TOOL_PARSER_LLAMA3_JSON);
    PD_CHECK_STATUS(eng_tool_parser_lookup("mistral", &p), PD_OK);
    PD_CHECK(p == ENG_TOOL_PARSER_MISTRAL);
    PD_CHECK_STATUS(eng_tool_parser_lookup("pythonic", &p), PD_ERR_UNSUPPORTED);
    PD_CHECK_STATUS(eng_tool_parser_lookup("hermes2", &p), PD_ERR_INVAL);
    PD_CHECK_STATUS(eng_tool_parser_lookup(NULL, &p), PD_ERR_INVAL);
}

int main(void)
{
    PD_RUN(test_whole_outputs);
    PD_RUN(test_streaming_matches_whole);
    PD_RUN(test_stream_holds_only_what_may_be_a_marker);
    PD_RUN(test_lookup);
    return PD_TEST_REPORT();
}
