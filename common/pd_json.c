/*
 * pd_json.c - request-body validation and typed getters over cJSON.
 *
 * Invariants: cJSON only ever sees bytes that are valid UTF-8 and nested no deeper than
 * the caller's bound (the pre-scan below counts brackets outside strings), so its
 * recursive parser cannot run deep on hostile input.  Messages name the parameter and
 * never echo unbounded user data.
 */
#include "pd_json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pd_json_err_set(pd_json_err_t *err, const char *param, const char *fmt, ...)
{
    if (err == NULL)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    snprintf(err->param, sizeof(err->param), "%s", param ? param : "");
}

int pd_json_utf8_valid(const char *data, size_t len)
{
    const unsigned char *s = (const unsigned char *)data;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (len - i <= n)
            return 0;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += n + 1;
    }
    return 1;
}

/* Deepest bracket nesting outside strings; stops counting once past limit. */
static size_t json_depth(const char *s, size_t len, size_t limit)
{
    size_t depth = 0, max = 0;
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
            continue;
        }
        if (c == '"') {
            in_str = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > max) {
                max = depth;
                if (max > limit)
                    return max;
            }
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return max;
}

pd_status_t pd_json_parse(const char *data, size_t len, size_t max_depth, int require_object,
                          cJSON **root_p, pd_json_err_t *err)
{
    if (root_p == NULL || (data == NULL && len > 0))
        return PD_ERR_INVAL;
    if (max_depth == 0)
        max_depth = PD_JSON_DEFAULT_MAX_DEPTH;
    if (len == 0 || data == NULL) {
        pd_json_err_set(err, NULL, "The request body is empty; expected JSON.");
        return PD_ERR_FORMAT;
    }
    if (!pd_json_utf8_valid(data, len)) {
        pd_json_err_set(err, NULL, "The request body is not valid UTF-8.");
        return PD_ERR_FORMAT;
    }
    if (memchr(data, '\0', len) != NULL) {
        pd_json_err_set(err, NULL, "The request body contains a NUL byte.");
        return PD_ERR_FORMAT;
    }
    if (json_depth(data, len, max_depth) > max_depth) {
        pd_json_err_set(err, NULL, "The request JSON is nested deeper than %zu levels.", max_depth);
        return PD_ERR_FORMAT;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(data, len, &end, 0);
    if (root == NULL) {
        size_t off = end ? (size_t)(end - data) : 0;
        pd_json_err_set(err, NULL, "The request body is not valid JSON (error near byte %zu).", off);
        return PD_ERR_FORMAT;
    }
    /* Only whitespace may follow the value. */
    for (const char *p = end; p != NULL && p < data + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            cJSON_Delete(root);
            pd_json_err_set(err, NULL, "The request body has data after the JSON value (byte %zu).",
                            (size_t)(p - data));
            return PD_ERR_FORMAT;
        }
    }
    if (require_object && !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        pd_json_err_set(err, NULL, "The request body must be a JSON object.");
        return PD_ERR_FORMAT;
    }
    *root_p = root;
    return PD_OK;
}

int pd_json_present(const cJSON *obj, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    return it != NULL && !cJSON_IsNull(it);
}

/* The item for key, NULL when absent or null. */
static const cJSON *lookup(const cJSON *obj, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    return (it == NULL || cJSON_IsNull(it)) ? NULL : it;
}

pd_status_t pd_json_item_int(const cJSON *item, const char *param, int64_t lo, int64_t hi,
                             int64_t *out_p, pd_json_err_t *err)
{
    if (!cJSON_IsNumber(item)) {
        pd_json_err_set(err, param, "'%s' must be an integer.", param);
        return PD_ERR_INVAL;
    }
    double v = item->valuedouble;
    if (!isfinite(v) || floor(v) != v) {
        pd_json_err_set(err, param, "'%s' must be an integer.", param);
        return PD_ERR_INVAL;
    }
    /* Compare as doubles first: casting an out-of-range double to int64 is undefined. */
    if (v < (double)lo || v > (double)hi || v >= 9223372036854775808.0 ||
        v < -9223372036854775808.0 || (int64_t)v < lo || (int64_t)v > hi) {
        pd_json_err_set(err, param, "'%s' must be between %lld and %lld, got %.17g.", param,
                        (long long)lo, (long long)hi, v);
        return PD_ERR_RANGE;
    }
    *out_p = (int64_t)v;
    return PD_OK;
}

pd_status_t pd_json_get_int(const cJSON *obj, const char *key, int64_t lo, int64_t hi,
                            int64_t *out_p, pd_json_err_t *err)
{
    const cJSON *it = lookup(obj, key);
    if (it == NULL)
        return PD_OK;
    return pd_json_item_int(it, key, lo, hi, out_p, err);
}

pd_status_t pd_json_get_double(const cJSON *obj, const char *key, double lo, double hi,
                               double *out_p, pd_json_err_t *err)
{
    const cJSON *it = lookup(obj, key);
    if (it == NULL)
        return PD_OK;
    if (!cJSON_IsNumber(it)) {
        pd_json_err_set(err, key, "'%s' must be a number.", key);
        return PD_ERR_INVAL;
    }
    double v = it->valuedouble;
    if (!isfinite(v)) {
        pd_json_err_set(err, key, "'%s' must be a finite number.", key);
        return PD_ERR_RANGE;
    }
    if (v < lo || v > hi) {
        pd_json_err_set(err, key, "'%s' must be between %g and %g, got %g.", key, lo, hi, v);
        return PD_ERR_RANGE;
    }
    *out_p = v;
    return PD_OK;
}

pd_status_t pd_json_get_bool(const cJSON *obj, const char *key, int *out_p, pd_json_err_t *err)
{
    const cJSON *it = lookup(obj, key);
    if (it == NULL)
        return PD_OK;
    if (!cJSON_IsBool(it)) {
        pd_json_err_set(err, key, "'%s' must be a boolean.", key);
        return PD_ERR_INVAL;
    }
    *out_p = cJSON_IsTrue(it) ? 1 : 0;
    return PD_OK;
}

pd_status_t pd_json_get_string(const cJSON *obj, const char *key, size_t max_len,
                               const char **out_p, pd_json_err_t *err)
{
    const cJSON *it = lookup(obj, key);
    if (it == NULL)
        return PD_OK;
    if (!cJSON_IsString(it) || it->valuestring == NULL) {
        pd_json_err_set(err, key, "'%s' must be a string.", key);
        return PD_ERR_INVAL;
    }
    size_t len = strlen(it->valuestring);
    if (max_len > 0 && len > max_len) {
        pd_json_err_set(err, key, "'%s' is too long: %zu bytes, at most %zu allowed.", key, len,
                        max_len);
        return PD_ERR_RANGE;
    }
    *out_p = it->valuestring;
    return PD_OK;
}

pd_status_t pd_json_get_enum(const cJSON *obj, const char *key, const char *const *allowed,
                             int *idx_p, pd_json_err_t *err)
{
    const char *s = NULL;
    pd_status_t st = pd_json_get_string(obj, key, 256, &s, err);
    if (st != PD_OK || s == NULL)
        return st;
    for (int i = 0; allowed[i] != NULL; i++) {
        if (strcmp(allowed[i], s) == 0) {
            *idx_p = i;
            return PD_OK;
        }
    }
    char list[256] = "";
    size_t off = 0;
    for (int i = 0; allowed[i] != NULL && off < sizeof(list); i++)
        off += (size_t)snprintf(list + off, sizeof(list) - off, "%s'%s'", i ? ", " : "", allowed[i]);
    pd_json_err_set(err, key, "'%s' must be one of %s.", key, list);
    return PD_ERR_RANGE;
}

pd_status_t pd_json_get_object(const cJSON *obj, const char *key, const cJSON **out_p,
                               pd_json_err_t *err)
{
    const cJSON *it = lookup(obj, key);
    if (it == NULL)
        return PD_OK;
    if (!cJSON_IsObject(it)) {
        pd_json_err_set(err, key, "'%s' must be an object.", key);
        return PD_ERR_INVAL;
    }
    *out_p = it;
    return PD_OK;
}

pd_status_t pd_json_get_array(const cJSON *obj, const char *key, size_t max_items,
                              const cJSON **out_p, pd_json_err_t *err)
{
    const cJSON *it = lookup(obj, key);
    if (it == NULL)
        return PD_OK;
    if (!cJSON_IsArray(it)) {
        pd_json_err_set(err, key, "'%s' must be an array.", key);
        return PD_ERR_INVAL;
    }
    size_t n = (size_t)cJSON_GetArraySize(it);
    if (max_items > 0 && n > max_items) {
        pd_json_err_set(err, key, "'%s' has %zu items, at most %zu allowed.", key, n, max_items);
        return PD_ERR_RANGE;
    }
    *out_p = it;
    return PD_OK;
}

pd_status_t pd_json_get_string_list(const cJSON *obj, const char *key, size_t max_items,
                                    size_t max_len, const char ***items_p, size_t *n_p,
                                    pd_json_err_t *err)
{
    const cJSON *it = lookup(obj, key);
    if (it == NULL)
        return PD_OK;
    if (cJSON_IsString(it)) {
        const char *s = NULL;
        pd_status_t st = pd_json_get_string(obj, key, max_len, &s, err);
        if (st != PD_OK)
            return st;
        const char **items = malloc(sizeof(*items));
        if (items == NULL)
            return PD_ERR_NOMEM;
        items[0] = s;
        *items_p = items;
        *n_p = 1;
        return PD_OK;
    }
    const cJSON *arr = NULL;
    pd_status_t st = pd_json_get_array(obj, key, max_items, &arr, err);
    if (st == PD_ERR_INVAL)
        pd_json_err_set(err, key, "'%s' must be a string or an array of strings.", key);
    if (st != PD_OK)
        return st;
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    const char **items = malloc((n ? n : 1) * sizeof(*items));
    if (items == NULL)
        return PD_ERR_NOMEM;
    const cJSON *el;
    cJSON_ArrayForEach(el, arr)
    {
        if (!cJSON_IsString(el) || el->valuestring == NULL) {
            free(items);
            pd_json_err_set(err, key, "'%s' must be a string or an array of strings.", key);
            return PD_ERR_INVAL;
        }
        size_t len = strlen(el->valuestring);
        if (max_len > 0 && len > max_len) {
            free(items);
            pd_json_err_set(err, key, "'%s' item %zu is too long: %zu bytes, at most %zu allowed.",
                            key, i, len, max_len);
            return PD_ERR_RANGE;
        }
        items[i++] = el->valuestring;
    }
    *items_p = items;
    *n_p = i;
    return PD_OK;
}

pd_status_t pd_json_get_int_array(const cJSON *obj, const char *key, size_t max_items,
                                  int64_t lo, int64_t hi, int64_t **vals_p, size_t *n_p,
                                  pd_json_err_t *err)
{
    const cJSON *arr = NULL;
    pd_status_t st = pd_json_get_array(obj, key, max_items, &arr, err);
    if (st != PD_OK || arr == NULL)
        return st;
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    int64_t *vals = NULL;
    if (n > 0) {
        vals = malloc(n * sizeof(*vals));
        if (vals == NULL)
            return PD_ERR_NOMEM;
    }
    const cJSON *el;
    cJSON_ArrayForEach(el, arr)
    {
        st = pd_json_item_int(el, key, lo, hi, &vals[i], err);
        if (st != PD_OK) {
            if (err != NULL && st == PD_ERR_RANGE)
                pd_json_err_set(err, key, "'%s' item %zu must be between %lld and %lld.", key, i,
                                (long long)lo, (long long)hi);
            else if (err != NULL)
                pd_json_err_set(err, key, "'%s' must be an array of integers.", key);
            free(vals);
            return st;
        }
        i++;
    }
    *vals_p = vals;
    *n_p = i;
    return PD_OK;
}
