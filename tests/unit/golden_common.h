/*
 * golden_common.h - the golden check shared by test_golden.c (CPU backend) and
 * test_cuda_golden.c (CUDA backend): load a model with weights dequantized to float32,
 * run each golden prompt through the paged forward with logits at every position, compare
 * the top-32 and probe logits with Hugging Face's (|a - b| <= tol * max(1, |b|)) and the
 * argmax, then decode greedily through the KV cache and compare the token ids.
 * Header-only (static functions): include it in one test executable.
 */
#ifndef GOLDEN_COMMON_H
#define GOLDEN_COMMON_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "eng_backend.h"
#include "eng_forward.h"
#include "eng_model.h"
#include "pd_test.h"
#include "pd_util.h"
#include "test_model_util.h"

#define GOLDEN_MAX_T 256

typedef struct golden_cfg {
    const eng_backend_ops_t *ops;
    eng_backend_opts_t bo;
    /* called on the backend instance before the forward is built (may be NULL) */
    pd_status_t (*setup)(eng_backend_t *be, void *arg);
    void *setup_arg;
    double tol;              /* relative logit tolerance */
    bool argmax_margin_rel;  /* the argmax must agree when HF's top-2 gap exceeds tol (false)
                                or tol * max(1, |top|) (true) */
    int greedy_need;         /* greedy tokens compared at most */
    const char *label;       /* printed after the file name, or NULL */
} golden_cfg_t;

static int golden_check_logits(const golden_cfg_t *cfg, const float *row, const cJSON *pos, int p_index,
                               int t, double *worst_rel)
{
    const cJSON *lists[2] = {cJSON_GetObjectItem(pos, "top"), cJSON_GetObjectItem(pos, "probe")};
    int bad = 0;
    for (int l = 0; l < 2; l++) {
        const cJSON *pair;
        cJSON_ArrayForEach(pair, lists[l]) {
            int tok = cJSON_GetArrayItem(pair, 0)->valueint;
            double want = cJSON_GetArrayItem(pair, 1)->valuedouble, got = row[tok];
            double rel = fabs(got - want) / fmax(1.0, fabs(want));
            if (rel > *worst_rel)
                *worst_rel = rel;
            if (!(rel <= cfg->tol)) {
                if (bad++ < 3)
                    fprintf(stderr, "  prompt %d pos %d token %d: %.6f vs HF %.6f\n", p_index, t, tok, got, want);
            }
        }
    }
    /* argmax: the first "top" entry; a clear winner must be ours too */
    int hf_best = cJSON_GetArrayItem(cJSON_GetArrayItem(lists[0], 0), 0)->valueint;
    double hf_second = cJSON_GetArrayItem(cJSON_GetArrayItem(lists[0], 1), 1)->valuedouble;
    double hf_first = cJSON_GetArrayItem(cJSON_GetArrayItem(lists[0], 0), 1)->valuedouble;
    double margin = cfg->argmax_margin_rel ? cfg->tol * fmax(1.0, fabs(hf_first)) : cfg->tol;
    if (hf_first - hf_second > margin) {
        const cJSON *pair;
        cJSON_ArrayForEach(pair, lists[0]) {
            int tok = cJSON_GetArrayItem(pair, 0)->valueint;
            if (row[tok] > row[hf_best]) {
                fprintf(stderr, "  prompt %d pos %d: argmax differs (%d vs HF %d)\n", p_index, t, tok, hf_best);
                bad++;
                break;
            }
        }
    }
    return bad;
}

static int32_t golden_argmax(const float *row, int64_t V)
{
    int32_t best = 0;
    for (int64_t v = 1; v < V; v++)
        if (row[v] > row[best])
            best = (int32_t)v;
    return best;
}

static void golden_run(const char *golden_path, const char *model_path, const golden_cfg_t *cfg)
{
    char *text = NULL;
    size_t len;
    cJSON *doc;
    eng_load_opts_t lo;
    eng_model_t *model = NULL;
    const eng_backend_ops_t *ops = cfg->ops;
    eng_backend_t *be = NULL;
    eng_forward_t *fw = NULL;
    eng_forward_opts_t fo = {.block_size = 16, .n_blocks = 64, .max_tokens = GOLDEN_MAX_T,
                             .max_seqs = GOLDEN_MAX_T, .max_blocks_per_seq = 32};
    const cJSON *prompt;
    double worst_rel = 0;
    int pi = 0;

    PD_CHECK_STATUS(pd_read_file(golden_path, &text, &len), PD_OK);
    doc = cJSON_Parse(text);
    free(text);
    PD_CHECK(doc != NULL);
    if (doc == NULL)
        return;
    eng_load_opts_init(&lo);
    lo.model = model_path;
    lo.keep_quantized = false;
    lo.dequant_dtype = ENG_DTYPE_F32;
    lo.max_model_len = 512;
    PD_CHECK_STATUS(eng_model_load(&lo, &model), PD_OK);
    PD_CHECK_STATUS(ops->init(&cfg->bo, &be), PD_OK);
    if (model == NULL || be == NULL)
        goto out;
    if (cfg->setup)
        PD_CHECK_STATUS(cfg->setup(be, cfg->setup_arg), PD_OK);
    PD_CHECK_STATUS(eng_forward_create(model, ops, be, &fo, &fw), PD_OK);
    if (fw == NULL)
        goto out;
    const int64_t V = eng_model_config(model)->vocab_size;
    float *logits = malloc((size_t)GOLDEN_MAX_T * (size_t)V * sizeof(float));
    int32_t tokens[GOLDEN_MAX_T], pos[GOLDEN_MAX_T], seq[GOLDEN_MAX_T], rows[GOLDEN_MAX_T], table[32], ctx;
    int64_t slots[GOLDEN_MAX_T];
    for (int b = 0; b < 32; b++)
        table[b] = b;
    cJSON_ArrayForEach(prompt, cJSON_GetObjectItem(doc, "prompts")) {
        const cJSON *ids = cJSON_GetObjectItem(prompt, "ids"), *id;
        int T = 0, bad = 0;
        cJSON_ArrayForEach(id, ids) {
            tokens[T] = id->valueint;
            pos[T] = T;
            seq[T] = 0;
            slots[T] = T; /* block b = b: slot = position */
            rows[T] = T;
            T++;
        }
        ctx = T;
        eng_fwd_batch_t fb = {T, tokens, pos, seq, slots, 1, table, &ctx, T, rows};
        PD_CHECK_STATUS(eng_forward_run(fw, &fb, logits), PD_OK);
        for (int t = 0; t < T; t++)
            bad += golden_check_logits(cfg, logits + (size_t)t * V,
                                       cJSON_GetArrayItem(cJSON_GetObjectItem(prompt, "positions"), t), pi, t,
                                       &worst_rel);
        PD_CHECK_EQ_INT(bad, 0);
        /* greedy decoding through the cache, one token per forward */
        const cJSON *greedy = cJSON_GetObjectItem(prompt, "greedy");
        int n_greedy = cJSON_GetArraySize(greedy), mismatch = -1;
        int32_t next = golden_argmax(logits + (size_t)(T - 1) * V, V);
        if (n_greedy > cfg->greedy_need)
            n_greedy = cfg->greedy_need;
        for (int g = 0; g < n_greedy; g++) {
            if (next != cJSON_GetArrayItem(greedy, g)->valueint) {
                mismatch = g;
                break;
            }
            int32_t tk = next, ps = T + g, sq = 0, row0 = 0;
            int64_t sl = T + g;
            ctx = T + g + 1;
            eng_fwd_batch_t db = {1, &tk, &ps, &sq, &sl, 1, table, &ctx, 1, &row0};
            if (eng_forward_run(fw, &db, logits) != PD_OK) {
                mismatch = g;
                break;
            }
            next = golden_argmax(logits, V);
        }
        if (mismatch >= 0)
            fprintf(stderr, "  prompt %d: greedy token %d differs from HF\n", pi, mismatch);
        PD_CHECK_EQ_INT(mismatch, -1);
        pi++;
    }
    printf("  %s%s%s%s: %d prompts, worst relative logit error %.2e\n", golden_path, cfg->label ? " [" : "",
           cfg->label ? cfg->label : "", cfg->label ? "]" : "", pi, worst_rel);
    free(logits);
out:
    eng_forward_destroy(fw);
    if (be)
        ops->shutdown(be);
    eng_model_destroy(model);
    cJSON_Delete(doc);
}

/* Every tiny safetensors model with a golden file; returns how many were checked. */
static int golden_run_small_models(const golden_cfg_t *cfg)
{
    static const char *const names[] = {"llama", "qwen2", "qwen3", "mistral", "opt", NULL};
    const char *src = getenv("PD_SOURCE_DIR") ? getenv("PD_SOURCE_DIR") : ".";
    int found = 0;
    for (int i = 0; names[i]; i++) {
        char g[4096], m[4096];
        snprintf(g, sizeof(g), "%s/tests/data/goldens/tiny-%s.json", src, names[i]);
        snprintf(m, sizeof(m), "%s/tests/data/models/tiny-%s", src, names[i]);
        if (access(g, R_OK) != 0 || access(m, R_OK) != 0)
            continue;
        golden_run(g, m, cfg);
        found++;
    }
    printf("  %d small safetensors models checked\n", found);
    return found;
}

/* The default model's golden file path. */
static void golden_default_file(char *buf, size_t n)
{
    snprintf(buf, n, "%s/tests/data/goldens/smollm2-135m-q4_1.json",
             getenv("PD_SOURCE_DIR") ? getenv("PD_SOURCE_DIR") : ".");
}

#endif /* GOLDEN_COMMON_H */
