/*
 * pd_json.h - checked access to JSON request bodies (over cJSON).
 *
 * Request bodies are untrusted: pd_json_parse() validates UTF-8 and bounds nesting
 * depth before cJSON sees the bytes; the typed getters check type and range and, on
 * failure, fill a pd_json_err_t with an OpenAI-style message that names the parameter,
 * ready for pd_http_respond_error(req, 400, NULL, err.message, err.param, NULL).
 *
 * Getter conventions: an absent key or a JSON null leaves *out_p untouched and returns
 * PD_OK (so the caller stores the default first); a wrong type returns PD_ERR_INVAL; a
 * value outside [lo, hi] (or NaN/Inf, or too long) returns PD_ERR_RANGE.  err may be
 * NULL.  Nothing here allocates except pd_json_parse() and pd_json_get_int_array().
 */
#ifndef PD_JSON_H
#define PD_JSON_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "pd_status.h"

typedef struct pd_json_err {
    char message[512];
    char param[128]; /* "" when the error is about the body as a whole */
} pd_json_err_t;

#define PD_JSON_DEFAULT_MAX_DEPTH 64

/* Fill err (if not NULL) with a formatted message and the parameter name. */
void pd_json_err_set(pd_json_err_t *err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* 1 when data[0..len) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
int pd_json_utf8_valid(const char *data, size_t len);

/* Parse a request body: valid UTF-8, nesting depth <= max_depth (0 = default), one
 * JSON value with only whitespace after it, and (require_object) an object at the top.
 * *root_p (free with cJSON_Delete) set only on success.  PD_ERR_FORMAT with a message
 * otherwise. */
pd_status_t pd_json_parse(const char *data, size_t len, size_t max_depth, int require_object,
                          cJSON **root_p, pd_json_err_t *err);

/* 1 when obj has key with a non-null value. */
int pd_json_present(const cJSON *obj, const char *key);

/* Integer (a JSON number with no fractional part, e.g. 5 or 5.0) in [lo, hi]. */
pd_status_t pd_json_get_int(const cJSON *obj, const char *key, int64_t lo, int64_t hi,
                            int64_t *out_p, pd_json_err_t *err);

/* Finite number in [lo, hi]. */
pd_status_t pd_json_get_double(const cJSON *obj, const char *key, double lo, double hi,
                               double *out_p, pd_json_err_t *err);

/* true/false into *out_p as 1/0. */
pd_status_t pd_json_get_bool(const cJSON *obj, const char *key, int *out_p, pd_json_err_t *err);

/* String of at most max_len bytes (0 = no limit); *out_p borrows from obj. */
pd_status_t pd_json_get_string(const cJSON *obj, const char *key, size_t max_len,
                               const char **out_p, pd_json_err_t *err);

/* String that must be one of allowed (NULL-terminated); *idx_p = its index. */
pd_status_t pd_json_get_enum(const cJSON *obj, const char *key, const char *const *allowed,
                             int *idx_p, pd_json_err_t *err);

/* Object / array (at most max_items elements, 0 = no limit); *out_p borrows. */
pd_status_t pd_json_get_object(const cJSON *obj, const char *key, const cJSON **out_p,
                               pd_json_err_t *err);
pd_status_t pd_json_get_array(const cJSON *obj, const char *key, size_t max_items,
                              const cJSON **out_p, pd_json_err_t *err);

/* A string or an array of strings (like "stop"): at most max_items strings of at most
 * max_len bytes each.  *items_p (malloc'd array of borrowed pointers; free() it) and
 * *n_p set on success when present; untouched when absent. */
pd_status_t pd_json_get_string_list(const cJSON *obj, const char *key, size_t max_items,
                                    size_t max_len, const char ***items_p, size_t *n_p,
                                    pd_json_err_t *err);

/* An array of integers in [lo, hi] (like "stop_token_ids", token-id prompts): at most
 * max_items.  *vals_p malloc'd (free() it; NULL when the array is empty). */
pd_status_t pd_json_get_int_array(const cJSON *obj, const char *key, size_t max_items,
                                  int64_t lo, int64_t hi, int64_t **vals_p, size_t *n_p,
                                  pd_json_err_t *err);

/* Same checks on a bare item (an array element, the top value): param names it. */
pd_status_t pd_json_item_int(const cJSON *item, const char *param, int64_t lo, int64_t hi,
                             int64_t *out_p, pd_json_err_t *err);

#endif /* PD_JSON_H */
