/*
 * test_cpuperf_fuse.c - the forward's fused q|k|v and gate|up matmuls (CPU backend) give
 * bit-identical logits to the separate matmuls (PD_FORWARD_NO_FUSE=1), for every tiny
 * test model (llama, qwen2 with q/k/v biases, qwen3 with q/k norms (left unfused),
 * mistral, opt (no gated FFN)) in EXACT and FAST mode, and for the default GGUF (FAST,
 * quantized weights) when it is in the cache.  A prefill of 13 tokens with every row's
 * logits, then two decode steps through the cache.  The same with the weights uploaded
 * (PD_FORWARD_COPY_WEIGHTS=1: the path of device backends, where the fused matrices are
 * built on the device from the uploaded parts and the parts freed) must also be
 * bit-identical, and fuse the same layers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_backend.h"
#include "eng_forward.h"
#include "eng_model.h"
#include "pd_test.h"

#define T_PROMPT 13

/* Run the prompt + 2 decode steps; logits of every step concatenated into *out_p. */
static int run_model(eng_model_t *model, kcpu_mm_mode_t mode, bool fuse, bool copy, float **out_p, size_t *n_p,
                     int *n_fused_p)
{
    const eng_backend_ops_t *ops = eng_backend_get("cpu");
    eng_backend_opts_t bo = {.n_threads = 2, .mm_mode = mode};
    eng_backend_t *be = NULL;
    eng_forward_t *fw = NULL;
    eng_forward_opts_t fo = {.block_size = 16, .n_blocks = 4, .max_tokens = 32, .max_seqs = 16,
                             .max_blocks_per_seq = 4};
    const int64_t V = eng_model_config(model)->vocab_size;
    float *all = malloc((size_t)(T_PROMPT + 2) * (size_t)V * sizeof(float));
    int32_t tokens[T_PROMPT], pos[T_PROMPT], seq[T_PROMPT], rows[T_PROMPT], table[4] = {0, 1, 2, 3}, ctx;
    int64_t slots[T_PROMPT];
    int rc = -1;

    if (fuse)
        unsetenv("PD_FORWARD_NO_FUSE");
    else
        setenv("PD_FORWARD_NO_FUSE", "1", 1);
    if (copy)
        setenv("PD_FORWARD_COPY_WEIGHTS", "1", 1);
    PD_CHECK(all != NULL);
    PD_CHECK_STATUS(ops->init(&bo, &be), PD_OK);
    if (be == NULL || all == NULL)
        goto out;
    PD_CHECK_STATUS(eng_forward_create(model, ops, be, &fo, &fw), PD_OK);
    unsetenv("PD_FORWARD_NO_FUSE");
    unsetenv("PD_FORWARD_COPY_WEIGHTS");
    if (fw == NULL)
        goto out;
    {
        int nq = -1, ng = -1;
        eng_forward_fused_layers(fw, &nq, &ng);
        *n_fused_p = nq * 1000 + ng;
    }
    for (int t = 0; t < T_PROMPT; t++) {
        tokens[t] = (int32_t)((t * 7919 + 13) % V);
        pos[t] = t;
        seq[t] = 0;
        slots[t] = t;
        rows[t] = t;
    }
    ctx = T_PROMPT;
    eng_fwd_batch_t fb = {T_PROMPT, tokens, pos, seq, slots, 1, table, &ctx, T_PROMPT, rows};
    PD_CHECK_STATUS(eng_forward_run(fw, &fb, all), PD_OK);
    if (pd_test_failed_g)
        goto out;
    for (int g = 0; g < 2; g++) {
        int32_t tk = (int32_t)((g * 31 + 5) % V), ps = T_PROMPT + g, sq = 0, row0 = 0;
        int64_t sl = T_PROMPT + g;
        ctx = T_PROMPT + g + 1;
        eng_fwd_batch_t db = {1, &tk, &ps, &sq, &sl, 1, table, &ctx, 1, &row0};
        PD_CHECK_STATUS(eng_forward_run(fw, &db, all + (size_t)(T_PROMPT + g) * V), PD_OK);
    }
    if (pd_test_failed_g)
        goto out;
    *out_p = all;
    *n_p = (size_t)(T_PROMPT + 2) * (size_t)V;
    all = NULL;
    rc = 0;
out:
    eng_forward_destroy(fw);
    if (be)
        ops->shutdown(be);
    free(all);
    return rc;
}

static void check_same(const char *path, bool keep_quantized, kcpu_mm_mode_t mode)
{
    eng_load_opts_t lo;
    eng_model_t *model = NULL;
    float *a = NULL, *b = NULL, *c = NULL;
    size_t na = 0, nb = 0, nc = 0;
    int fa = -1, fb = -1, fc = -1;

    eng_load_opts_init(&lo);
    lo.model = path;
    lo.keep_quantized = keep_quantized;
    lo.max_model_len = 64;
    PD_CHECK_STATUS(eng_model_load(&lo, &model), PD_OK);
    if (model == NULL)
        return;
    if (run_model(model, mode, false, false, &a, &na, &fa) == 0 && run_model(model, mode, true, false, &b, &nb, &fb) == 0 &&
        run_model(model, mode, true, true, &c, &nc, &fc) == 0) {
        const int L = eng_model_config(model)->n_layers;
        const bool qkv = !eng_model_config(model)->qk_norm, gu = eng_model_config(model)->gated_ffn;
        PD_CHECK(na == nb && na == nc && na > 0);
        /* every layer of these models fuses what it can, on both paths */
        PD_CHECK_EQ_INT(fa, 0);
        PD_CHECK_EQ_INT(fb, (qkv ? L : 0) * 1000 + (gu ? L : 0));
        PD_CHECK_EQ_INT(fc, fb);
        if (na == nb && na == nc) {
            for (int k = 0; k < 2; k++) {
                const float *x = k == 0 ? b : c;
                size_t diff = 0;
                while (diff < na && memcmp(&a[diff], &x[diff], sizeof(float)) == 0)
                    diff++;
                if (diff < na)
                    fprintf(stderr, "  %s (%s%s): first differing logit %zu: %.9g vs %.9g\n", path,
                            mode == KCPU_MM_EXACT ? "exact" : "fast", k ? ", copied weights" : "", diff, a[diff],
                            x[diff]);
                PD_CHECK(diff == na);
            }
        }
    }
    free(a);
    free(b);
    free(c);
    eng_model_destroy(model);
}

PD_TEST(test_fused_equals_separate_tiny_models)
{
    static const char *const names[] = {"llama", "qwen2", "qwen3", "mistral", "opt", NULL};
    const char *src = getenv("PD_SOURCE_DIR") ? getenv("PD_SOURCE_DIR") : ".";
    int found = 0;
    for (int i = 0; names[i]; i++) {
        char m[4096];
        snprintf(m, sizeof(m), "%s/tests/data/models/tiny-%s", src, names[i]);
        if (access(m, R_OK) != 0)
            continue;
        check_same(m, true, KCPU_MM_EXACT);
        check_same(m, true, KCPU_MM_FAST);
        found++;
    }
    printf("  %d tiny models checked\n", found);
    PD_CHECK(found > 0);
}

PD_TEST(test_fused_equals_separate_default_gguf)
{
    const char *env = getenv("PD_MODEL_GGUF"), *home = getenv("HOME");
    char buf[4096];
    if (env && *env)
        snprintf(buf, sizeof(buf), "%s", env);
    else
        snprintf(buf, sizeof(buf), "%s/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "/root");
    if (access(buf, R_OK) != 0) {
        printf("  SKIP: default model not in the cache\n");
        return;
    }
    check_same(buf, true, KCPU_MM_FAST);
}

int main(void)
{
    PD_RUN(test_fused_equals_separate_tiny_models);
    PD_RUN(test_fused_equals_separate_default_gguf);
    return PD_TEST_REPORT();
}
