/* test_json.c - request-body parsing (UTF-8, depth, trailing data) and typed getters
 * with OpenAI-style messages naming the parameter. */
#include <stdlib.h>
#include <string.h>

#include "pd_json.h"
#include "pd_log.h"
#include "pd_test.h"

static cJSON *parse_ok(const char *s)
{
    cJSON *root = NULL;
    pd_json_err_t err;
    PD_CHECK_STATUS(pd_json_parse(s, strlen(s), 0, 1, &root, &err), PD_OK);
    return root;
}

PD_TEST(test_parse)
{
    cJSON *root = NULL;
    pd_json_err_t err;
    const char *ok = "  {\"a\": [1, {\"b\": \"\\u00e9\"}]}\n ";
    PD_CHECK_STATUS(pd_json_parse(ok, strlen(ok), 0, 1, &root, &err), PD_OK);
    cJSON_Delete(root);
    root = NULL;

    PD_CHECK_STATUS(pd_json_parse("", 0, 0, 1, &root, &err), PD_ERR_FORMAT);
    PD_CHECK(strstr(err.message, "empty") != NULL);
    PD_CHECK_STATUS(pd_json_parse("{\"a\":1} x", 9, 0, 1, &root, &err), PD_ERR_FORMAT);
    PD_CHECK(strstr(err.message, "after the JSON value") != NULL);
    PD_CHECK_STATUS(pd_json_parse("{\"a\":", 5, 0, 1, &root, &err), PD_ERR_FORMAT);
    PD_CHECK(strstr(err.message, "not valid JSON") != NULL);
    PD_CHECK_STATUS(pd_json_parse("[1]", 3, 0, 1, &root, &err), PD_ERR_FORMAT);
    PD_CHECK(strstr(err.message, "must be a JSON object") != NULL);
    PD_CHECK_STATUS(pd_json_parse("[1]", 3, 0, 0, &root, &err), PD_OK);
    cJSON_Delete(root);
    root = NULL;
    /* Invalid UTF-8: bad continuation, overlong, surrogate, truncated. */
    const char *bad[] = {"{\"a\":\"\xc3\x28\"}", "{\"a\":\"\xc0\xaf\"}", "{\"a\":\"\xed\xa0\x80\"}",
                         "{\"a\":\"\xe2\x82\"}", "{\"a\":\"\xf5\x80\x80\x80\"}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        PD_CHECK_STATUS(pd_json_parse(bad[i], strlen(bad[i]), 0, 1, &root, &err), PD_ERR_FORMAT);
        PD_CHECK(strstr(err.message, "UTF-8") != NULL);
    }
    PD_CHECK(pd_json_utf8_valid("\xf0\x9f\x98\x80 ok \xe2\x82\xac", 11));
    /* NUL inside the body. */
    PD_CHECK_STATUS(pd_json_parse("{\"a\":1}\0", 8, 0, 1, &root, &err), PD_ERR_FORMAT);
    /* Depth: 64 is fine by default, 65 is not; brackets inside strings do not count. */
    char deep[400];
    size_t n = 0;
    for (int i = 0; i < 64; i++)
        deep[n++] = '[';
    for (int i = 0; i < 64; i++)
        deep[n++] = ']';
    PD_CHECK_STATUS(pd_json_parse(deep, n, 0, 0, &root, &err), PD_OK);
    cJSON_Delete(root);
    root = NULL;
    n = 0;
    for (int i = 0; i < 65; i++)
        deep[n++] = '[';
    for (int i = 0; i < 65; i++)
        deep[n++] = ']';
    PD_CHECK_STATUS(pd_json_parse(deep, n, 0, 0, &root, &err), PD_ERR_FORMAT);
    PD_CHECK(strstr(err.message, "nested deeper") != NULL);
    const char *str_brackets = "{\"a\":\"[[[[[[[[[[[[\\\"[[[[\"}";
    PD_CHECK_STATUS(pd_json_parse(str_brackets, strlen(str_brackets), 2, 1, &root, &err), PD_OK);
    cJSON_Delete(root);
    root = NULL;
    /* Huge depth never reaches cJSON's recursion. */
    size_t big = 200000;
    char *huge = malloc(big);
    memset(huge, '[', big);
    PD_CHECK_STATUS(pd_json_parse(huge, big, 0, 0, &root, &err), PD_ERR_FORMAT);
    free(huge);
    PD_CHECK(root == NULL);
}

PD_TEST(test_getters)
{
    cJSON *o = parse_ok("{\"max_tokens\": 16, \"n\": 2.0, \"temperature\": 0.7, \"top_p\": 1e999,"
                        " \"stream\": true, \"model\": \"smol\", \"frac\": 1.5, \"neg\": -3,"
                        " \"big\": 1e30, \"nul\": null, \"s\": \"x\", \"arr\": [1,2,3],"
                        " \"obj\": {}, \"stop\": [\"a\", \"bb\"], \"stop1\": \"end\","
                        " \"ids\": [5, 49151], \"bad_ids\": [1, 49152], \"mixed\": [\"a\", 1],"
                        " \"fmt\": \"json_object\"}");
    pd_json_err_t err;
    int64_t i64 = -1;
    PD_CHECK_STATUS(pd_json_get_int(o, "max_tokens", 1, 1000, &i64, &err), PD_OK);
    PD_CHECK_EQ_INT(i64, 16);
    PD_CHECK_STATUS(pd_json_get_int(o, "n", 1, 10, &i64, &err), PD_OK);
    PD_CHECK_EQ_INT(i64, 2);
    i64 = 99;
    PD_CHECK_STATUS(pd_json_get_int(o, "absent", 1, 10, &i64, &err), PD_OK);
    PD_CHECK_EQ_INT(i64, 99); /* untouched */
    PD_CHECK_STATUS(pd_json_get_int(o, "nul", 1, 10, &i64, &err), PD_OK);
    PD_CHECK_EQ_INT(i64, 99);
    PD_CHECK_STATUS(pd_json_get_int(o, "frac", 0, 10, &i64, &err), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err.param, "frac");
    PD_CHECK_EQ_STR(err.message, "'frac' must be an integer.");
    PD_CHECK_STATUS(pd_json_get_int(o, "neg", 0, 10, &i64, &err), PD_ERR_RANGE);
    PD_CHECK_EQ_STR(err.message, "'neg' must be between 0 and 10, got -3.");
    PD_CHECK_STATUS(pd_json_get_int(o, "big", 0, INT64_MAX, &i64, &err), PD_ERR_RANGE);
    PD_CHECK_STATUS(pd_json_get_int(o, "s", 0, 10, &i64, &err), PD_ERR_INVAL);
    PD_CHECK_EQ_INT(i64, 99);

    double d = -1;
    PD_CHECK_STATUS(pd_json_get_double(o, "temperature", 0, 2, &d, &err), PD_OK);
    PD_CHECK(d == 0.7);
    PD_CHECK_STATUS(pd_json_get_double(o, "top_p", 0, 1, &d, &err), PD_ERR_RANGE);
    PD_CHECK_EQ_STR(err.param, "top_p");
    PD_CHECK(strstr(err.message, "finite") != NULL);
    PD_CHECK_STATUS(pd_json_get_double(o, "neg", 0, 2, &d, &err), PD_ERR_RANGE);
    PD_CHECK_STATUS(pd_json_get_double(o, "model", 0, 2, &d, &err), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err.message, "'model' must be a number.");

    int b = -1;
    PD_CHECK_STATUS(pd_json_get_bool(o, "stream", &b, &err), PD_OK);
    PD_CHECK_EQ_INT(b, 1);
    PD_CHECK_STATUS(pd_json_get_bool(o, "n", &b, &err), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err.message, "'n' must be a boolean.");

    const char *s = NULL;
    PD_CHECK_STATUS(pd_json_get_string(o, "model", 0, &s, &err), PD_OK);
    PD_CHECK_EQ_STR(s, "smol");
    PD_CHECK_STATUS(pd_json_get_string(o, "model", 3, &s, &err), PD_ERR_RANGE);
    PD_CHECK_STATUS(pd_json_get_string(o, "n", 0, &s, &err), PD_ERR_INVAL);

    int idx = -1;
    const char *fmts[] = {"text", "json_object", "json_schema", NULL};
    PD_CHECK_STATUS(pd_json_get_enum(o, "fmt", fmts, &idx, &err), PD_OK);
    PD_CHECK_EQ_INT(idx, 1);
    PD_CHECK_STATUS(pd_json_get_enum(o, "model", fmts, &idx, &err), PD_ERR_RANGE);
    PD_CHECK_EQ_STR(err.message, "'model' must be one of 'text', 'json_object', 'json_schema'.");

    const cJSON *arr = NULL, *obj = NULL;
    PD_CHECK_STATUS(pd_json_get_array(o, "arr", 3, &arr, &err), PD_OK);
    PD_CHECK(arr != NULL);
    PD_CHECK_STATUS(pd_json_get_array(o, "arr", 2, &arr, &err), PD_ERR_RANGE);
    PD_CHECK_STATUS(pd_json_get_array(o, "obj", 2, &arr, &err), PD_ERR_INVAL);
    PD_CHECK_STATUS(pd_json_get_object(o, "obj", &obj, &err), PD_OK);
    PD_CHECK_STATUS(pd_json_get_object(o, "arr", &obj, &err), PD_ERR_INVAL);

    const char **items = NULL;
    size_t n = 0;
    PD_CHECK_STATUS(pd_json_get_string_list(o, "stop", 4, 8, &items, &n, &err), PD_OK);
    PD_CHECK_EQ_INT(n, 2);
    PD_CHECK_EQ_STR(items[1], "bb");
    free(items);
    items = NULL;
    PD_CHECK_STATUS(pd_json_get_string_list(o, "stop1", 4, 8, &items, &n, &err), PD_OK);
    PD_CHECK_EQ_INT(n, 1);
    PD_CHECK_EQ_STR(items[0], "end");
    free(items);
    items = NULL;
    PD_CHECK_STATUS(pd_json_get_string_list(o, "stop", 1, 8, &items, &n, &err), PD_ERR_RANGE);
    PD_CHECK_STATUS(pd_json_get_string_list(o, "stop", 4, 1, &items, &n, &err), PD_ERR_RANGE);
    PD_CHECK_STATUS(pd_json_get_string_list(o, "mixed", 4, 8, &items, &n, &err), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err.message, "'mixed' must be a string or an array of strings.");
    PD_CHECK_STATUS(pd_json_get_string_list(o, "n", 4, 8, &items, &n, &err), PD_ERR_INVAL);
    PD_CHECK(items == NULL);

    int64_t *vals = NULL;
    PD_CHECK_STATUS(pd_json_get_int_array(o, "ids", 10, 0, 49151, &vals, &n, &err), PD_OK);
    PD_CHECK_EQ_INT(n, 2);
    PD_CHECK_EQ_INT(vals[1], 49151);
    free(vals);
    vals = NULL;
    PD_CHECK_STATUS(pd_json_get_int_array(o, "bad_ids", 10, 0, 49151, &vals, &n, &err), PD_ERR_RANGE);
    PD_CHECK_EQ_STR(err.message, "'bad_ids' item 1 must be between 0 and 49151.");
    PD_CHECK_STATUS(pd_json_get_int_array(o, "mixed", 10, 0, 9, &vals, &n, &err), PD_ERR_INVAL);
    PD_CHECK(vals == NULL);
    /* err may be NULL. */
    PD_CHECK_STATUS(pd_json_get_int(o, "frac", 0, 10, &i64, NULL), PD_ERR_INVAL);
    PD_CHECK(pd_json_present(o, "model") && !pd_json_present(o, "nul") && !pd_json_present(o, "zz"));
    cJSON_Delete(o);
}

int main(void)
{
    pd_log_set_level(PD_LOG_LEVEL_OFF);
    PD_RUN(test_parse);
    PD_RUN(test_getters);
    return PD_TEST_REPORT();
}
