/*
 * eng_tok_model.c - the tokenizer that goes with a loaded model: tokenizer.json (+
 * tokenizer_config.json) beside the model or in a --tokenizer directory, or the GGUF
 * tokenizer.ggml.* metadata turned into an eng_tok_vocab_t.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_engine.h"
#include "eng_gguf.h"
#include "eng_tokenizer.h"
#include "pd_log.h"
#include "pd_util.h"

static int32_t gguf_id(const eng_gguf_t *g, const char *key)
{
    uint32_t v;
    return eng_gguf_get_u32(g, key, &v) == PD_OK ? (int32_t)v : -1;
}

static int gguf_flag(const eng_gguf_t *g, const char *key)
{
    bool b;
    return eng_gguf_get_bool(g, key, &b) == PD_OK ? (b ? 1 : 0) : -1;
}

static pd_status_t tok_from_gguf(const eng_gguf_t *g, eng_tok_t **tok_p)
{
    eng_tok_vocab_t v;
    eng_gguf_type_t et;
    size_t n = 0, n_merges = 0;
    const char **tokens = NULL, **merges = NULL;
    size_t *lens = NULL;
    float *scores = NULL;
    int32_t *types = NULL;
    const char *model = NULL, *pre = NULL;
    char *model_s = NULL, *pre_s = NULL;
    pd_status_t st;

    eng_tok_vocab_init(&v);
    if ((st = eng_gguf_get_str_dup(g, "tokenizer.ggml.model", &model_s)) != PD_OK) {
        PD_LOG_ERR("tokenizer: the GGUF file has no tokenizer.ggml.model");
        return PD_ERR_FORMAT;
    }
    model = model_s;
    if (eng_gguf_get_str_dup(g, "tokenizer.ggml.pre", &pre_s) == PD_OK)
        pre = pre_s;
    if ((st = eng_gguf_get_arr_info(g, "tokenizer.ggml.tokens", &et, &n)) != PD_OK || n == 0) {
        PD_LOG_ERR("tokenizer: the GGUF file has no tokenizer.ggml.tokens");
        st = PD_ERR_FORMAT;
        goto out;
    }
    tokens = calloc(n, sizeof(*tokens));
    lens = calloc(n, sizeof(*lens));
    if (tokens == NULL || lens == NULL) {
        st = PD_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if ((st = eng_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &tokens[i], &lens[i])) != PD_OK)
            goto out;
    if (eng_gguf_get_arr_info(g, "tokenizer.ggml.scores", &et, &(size_t){0}) == PD_OK) {
        if ((scores = malloc(n * sizeof(*scores))) == NULL) {
            st = PD_ERR_NOMEM;
            goto out;
        }
        if (eng_gguf_get_arr_f32(g, "tokenizer.ggml.scores", scores, n) != PD_OK) {
            free(scores);
            scores = NULL;
        }
    }
    if (eng_gguf_get_arr_info(g, "tokenizer.ggml.token_type", &et, &(size_t){0}) == PD_OK) {
        if ((types = malloc(n * sizeof(*types))) == NULL) {
            st = PD_ERR_NOMEM;
            goto out;
        }
        if (eng_gguf_get_arr_i32(g, "tokenizer.ggml.token_type", types, n) != PD_OK) {
            free(types);
            types = NULL;
        }
    }
    if (eng_gguf_get_arr_info(g, "tokenizer.ggml.merges", &et, &n_merges) == PD_OK && n_merges) {
        size_t ml;
        if ((merges = calloc(n_merges, sizeof(*merges))) == NULL) {
            st = PD_ERR_NOMEM;
            goto out;
        }
        /* merges are NUL-terminated inside the mapping?  not guaranteed: copy */
        for (size_t i = 0; i < n_merges; i++) {
            const char *s;
            if ((st = eng_gguf_get_arr_str(g, "tokenizer.ggml.merges", i, &s, &ml)) != PD_OK)
                goto out;
            char *c = malloc(ml + 1);
            if (c == NULL) {
                st = PD_ERR_NOMEM;
                goto out;
            }
            memcpy(c, s, ml);
            c[ml] = '\0';
            merges[i] = c;
        }
    }
    v.model = model;
    v.pre = pre;
    v.n_tokens = n;
    v.tokens = tokens;
    v.token_lens = lens;
    v.scores = scores;
    v.token_types = types;
    v.n_merges = n_merges;
    v.merges = merges;
    v.bos_id = gguf_id(g, "tokenizer.ggml.bos_token_id");
    v.eos_id = gguf_id(g, "tokenizer.ggml.eos_token_id");
    v.unk_id = gguf_id(g, "tokenizer.ggml.unknown_token_id");
    v.pad_id = gguf_id(g, "tokenizer.ggml.padding_token_id");
    v.add_bos = gguf_flag(g, "tokenizer.ggml.add_bos_token");
    v.add_eos = gguf_flag(g, "tokenizer.ggml.add_eos_token");
    v.add_space_prefix = gguf_flag(g, "tokenizer.ggml.add_space_prefix");
    st = eng_tok_create_from_vocab(&v, tok_p);
out:
    if (merges)
        for (size_t i = 0; i < n_merges; i++)
            free((void *)merges[i]);
    free(merges);
    free(tokens);
    free(lens);
    free(scores);
    free(types);
    free(model_s);
    free(pre_s);
    return st;
}

pd_status_t eng_tokenizer_for_model(const eng_model_t *model, const char *tokenizer_override,
                                    eng_tok_t **tok_p)
{
    const char *json = eng_model_tokenizer_json(model);
    const char *cfg = eng_model_tokenizer_config(model);
    const eng_gguf_t *g = eng_model_tokenizer_gguf(model);
    char *dir = NULL, path_json[4096], path_cfg[4096];
    pd_status_t st;

    if (tokenizer_override) {
        st = eng_model_resolve_path(tokenizer_override, NULL, NULL, &dir);
        if (st != PD_OK)
            return st;
        snprintf(path_json, sizeof(path_json), "%s/tokenizer.json", dir);
        snprintf(path_cfg, sizeof(path_cfg), "%s/tokenizer_config.json", dir);
        free(dir);
        st = eng_tok_create_from_files(path_json, access(path_cfg, R_OK) == 0 ? path_cfg : NULL, tok_p);
        if (st != PD_OK)
            PD_LOG_ERR("tokenizer: cannot load %s (%s)", path_json, pd_status_str(st));
        return st;
    }
    if (json)
        return eng_tok_create_from_files(json, cfg, tok_p);
    if (g)
        return tok_from_gguf(g, tok_p);
    PD_LOG_ERR("tokenizer: the model has neither tokenizer.json nor GGUF tokenizer metadata; "
               "give --tokenizer (a directory, a tokenizer.json or a .gguf file) or "
               "--skip-tokenizer-init");
    return PD_ERR_NOT_FOUND;
}
