/*
 * test_model_util.h - the models of the forward tests: where a small one of
 * tests/data/models is, where the default model is, and loading one with f32 weights.  Header-only (static inline functions): include
 * it in one test executable.
 */
#ifndef TEST_MODEL_UTIL_H
#define TEST_MODEL_UTIL_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "eng_model.h"
#include "pd_test.h"

/* buf <- $PD_SOURCE_DIR/tests/data/models/<name> (the working directory without it);
 * false, with a "SKIP: ... is missing" line, when that folder is not there. */
static inline bool test_model_dir(const char *name, char *buf, size_t n)
{
    const char *src = getenv("PD_SOURCE_DIR");
    snprintf(buf, n, "%s/tests/data/models/%s", src ? src : ".", name);
    if (access(buf, R_OK) == 0)
        return true;
    printf("SKIP: %s is missing\n", buf);
    return false;
}

/* The default model: $PD_MODEL_GGUF, else the cache scripts/setup.sh fills; NULL if absent. */
static inline const char *test_default_gguf(char *buf, size_t n)
{
    const char *env = getenv("PD_MODEL_GGUF"), *cache = getenv("PDSERVE_CACHE"), *home = getenv("HOME");
    if (env && access(env, R_OK) == 0)
        return env;
    if (cache && *cache)
        snprintf(buf, n, "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
    else
        snprintf(buf, n, "%s/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "");
    return access(buf, R_OK) == 0 ? buf : NULL;
}

/* The model at path with f32 weights (quantized ones dequantized) and max_model_len;
 * the load is checked, NULL when it fails. */
static inline eng_model_t *test_model_load(const char *path, int max_model_len)
{
    eng_load_opts_t lo;
    eng_model_t *model = NULL;
    eng_load_opts_init(&lo);
    lo.model = path;
    lo.keep_quantized = false;
    lo.dequant_dtype = ENG_DTYPE_F32;
    lo.max_model_len = max_model_len;
    PD_CHECK_STATUS(eng_model_load(&lo, &model), PD_OK);
    return model;
}

#endif /* TEST_MODEL_UTIL_H */
