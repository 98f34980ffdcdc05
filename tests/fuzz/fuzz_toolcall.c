/*
 * fuzz_toolcall.c - libFuzzer target for the tool-call parsers (eng_toolcall.h).  The
 * first byte picks the parser and how the rest, the model's text, is cut into streamed
 * deltas.  Besides crashes, leaks and sanitizer reports it checks:
 *  - every call of a whole parse is {"id", "type": "function", "function": {"name" (not
 *    empty), "arguments" (text)}};
 *  - when the whole text parses into calls, the stream (in these deltas) gives the same
 *    calls in the same order with "index" 0, 1, ..., and the same content when there is
 *    one;
 *  - when the whole text holds no marker of its format, the stream gives it all back as
 *    content, unchanged.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_toolcall.h"

static const char *fn_field(const cJSON *call, const char *key)
{
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(fn, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void check_call(const cJSON *call)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(call, "id");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(call, "type");
    const char *name = fn_field(call, "name");
    if (!cJSON_IsString(id) || !cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0 ||
        name == NULL || name[0] == '\0' || fn_field(call, "arguments") == NULL)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const eng_tool_parser_t parser = (eng_tool_parser_t)(1 + data[0] % 3);
    const unsigned step = 1 + (data[0] >> 2); /* delta length, 1..64 */
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;
    /* the content comes back as a C string (it becomes a JSON string of the response):
     * texts with NUL bytes are not compared, only run */
    const bool has_nul = memchr(text, 0, len) != NULL;
    static const char *const markers[] = {"", "<tool_call>", "{", "[TOOL_CALLS]"};

    char *content = NULL;
    cJSON *calls = NULL;
    const bool whole = eng_tool_parse(parser, text, len, &content, &calls);
    for (int k = 0; whole && k < cJSON_GetArraySize(calls); k++)
        check_call(cJSON_GetArrayItem(calls, k));

    eng_tool_stream_t s;
    pd_buf_t sc;
    cJSON *scalls = NULL;
    eng_tool_stream_init(&s, parser);
    pd_buf_init(&sc);
    for (size_t at = 0;;) {
        size_t n = len - at < step ? len - at : step;
        const bool final = at + n == len;
        if (eng_tool_stream_feed(&s, text + at, n, final, &sc, &scalls) != PD_OK)
            abort();
        at += n;
        if (final)
            break;
    }
    if (whole) {
        if (cJSON_GetArraySize(scalls) != cJSON_GetArraySize(calls))
            abort();
        for (int k = 0; k < cJSON_GetArraySize(calls); k++) {
            const cJSON *a = cJSON_GetArrayItem(calls, k), *b = cJSON_GetArrayItem(scalls, k);
            const cJSON *idx = cJSON_GetObjectItemCaseSensitive(b, "index");
            check_call(b);
            if (strcmp(fn_field(a, "name"), fn_field(b, "name")) != 0 ||
                strcmp(fn_field(a, "arguments"), fn_field(b, "arguments")) != 0 || !cJSON_IsNumber(idx) ||
                idx->valueint != k)
                abort();
        }
        if (!has_nul && content != NULL && (sc.len != strlen(content) || memcmp(sc.data, content, sc.len) != 0))
            abort();
    } else {
        const char *m = markers[parser];
        bool has_marker = false;
        for (size_t i = 0; !has_marker && strlen(m) <= len && i + strlen(m) <= len; i++)
            has_marker = memcmp(text + i, m, strlen(m)) == 0;
        if (!has_marker && (sc.len != len || (len > 0 && memcmp(sc.data, text, len) != 0) || scalls != NULL))
            abort();
    }
    free(content);
    cJSON_Delete(calls);
    cJSON_Delete(scalls);
    pd_buf_cleanup(&sc);
    eng_tool_stream_cleanup(&s);
    return 0;
}
