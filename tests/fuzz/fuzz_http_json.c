/*
 * fuzz_http_json.c - libFuzzer target for request-body validation: pd_json_parse()
 * (UTF-8, depth, trailing data) followed by the typed getters a completions handler
 * uses on every common field, plus the error-JSON builder fed the resulting message.
 * Build (clang):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I common tests/fuzz/fuzz_http_json.c \
 *     common/pd_json.c common/pd_http.c common/pd_metrics.c common/pd_util.c \
 *     common/pd_log.c common/pd_status.c $(pkg-config --cflags --libs libcjson \
 *     libmicrohttpd gnutls) -lpthread -ldl -lm -o fuzz_http_json
 * Invariant checked: no crash, no leak, and every failure leaves a NUL-terminated
 * message of bounded length naming a parameter or the body.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pd_http.h"
#include "pd_json.h"
#include "pd_log.h"

static void check_err(const pd_json_err_t *err)
{
    if (memchr(err->message, '\0', sizeof(err->message)) == NULL ||
        memchr(err->param, '\0', sizeof(err->param)) == NULL)
        abort();
    /* The error travels to the client as JSON: building it must work for any message. */
    char *text = pd_http_error_json(400, NULL, err->message, err->param[0] ? err->param : NULL, NULL);
    if (text == NULL)
        abort();
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        pd_log_set_level(PD_LOG_LEVEL_OFF);
        init = 1;
    }
    cJSON *root = NULL;
    pd_json_err_t err;
    memset(&err, 0x55, sizeof(err)); /* poison: a failure must terminate the strings */
    err.message[sizeof(err.message) - 1] = '\0';
    err.param[sizeof(err.param) - 1] = '\0';
    size_t depth = size > 0 ? (data[0] & 0x7f) : 0;
    if (pd_json_parse((const char *)data, size, depth, size > 1 && (data[1] & 1), &root, &err) != PD_OK) {
        check_err(&err);
        return 0;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return 0;
    }
    int64_t i64 = 0;
    double d = 0;
    int b = 0, idx = 0;
    const char *s = NULL;
    const cJSON *item = NULL;
    const char **items = NULL;
    int64_t *vals = NULL;
    size_t n = 0;
    static const char *const fmts[] = {"text", "json_object", "json_schema", NULL};
    const char *int_keys[] = {"max_tokens", "n", "best_of", "logprobs", "top_logprobs", "seed", "top_k",
                              "min_tokens", "priority"};
    for (size_t i = 0; i < sizeof(int_keys) / sizeof(int_keys[0]); i++)
        if (pd_json_get_int(root, int_keys[i], -1, 1 << 20, &i64, &err) != PD_OK)
            check_err(&err);
    const char *dbl_keys[] = {"temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                              "repetition_penalty"};
    for (size_t i = 0; i < sizeof(dbl_keys) / sizeof(dbl_keys[0]); i++)
        if (pd_json_get_double(root, dbl_keys[i], -2, 2, &d, &err) != PD_OK)
            check_err(&err);
    if (pd_json_get_bool(root, "stream", &b, &err) != PD_OK)
        check_err(&err);
    if (pd_json_get_string(root, "model", 256, &s, &err) != PD_OK)
        check_err(&err);
    if (pd_json_get_enum(root, "response_format", fmts, &idx, &err) != PD_OK)
        check_err(&err);
    if (pd_json_get_object(root, "stream_options", &item, &err) != PD_OK)
        check_err(&err);
    if (pd_json_get_array(root, "messages", 1024, &item, &err) != PD_OK)
        check_err(&err);
    if (pd_json_get_string_list(root, "stop", 16, 256, &items, &n, &err) != PD_OK)
        check_err(&err);
    free(items);
    if (pd_json_get_int_array(root, "prompt", 4096, 0, 49151, &vals, &n, &err) != PD_OK)
        check_err(&err);
    free(vals);
    cJSON_Delete(root);
    return 0;
}
