/*
 * test_cuda_golden.c - the engine's forward on the "cuda" backend against the same
 * Hugging Face goldens as test_golden.c (the json files under tests/data/goldens).
 *
 * Weights are dequantized to float32 at load and the CUDA backend runs f32 SGEMMs (no
 * TF32; activations are f32 throughout), so the tolerance is test_golden's: top-32 and
 * probe logits within 1e-3 relative error, the same argmax, the same 64 greedy tokens.
 * A second pass with bf16 GEMMs (the serving default) is held to 5e-2 and the first 16
 * greedy tokens, and its worst error is printed.
 * Exits 77 (skipped) when there is no GPU or the default model is not in the cache.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "eng_backend.h"
#include "eng_backend_cuda.h"
#include "eng_forward.h"
#include "eng_model.h"
#include "pd_test.h"
#include "pd_util.h"

#define MAX_T 256

static const char *default_gguf(char *buf, size_t n)
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

static double worst_rel;
static double tol_g = 1e-3;
static int greedy_need_g = 1 << 30;
static kcpu_dtype_t wdtype_g = KCPU_DTYPE_F32;

static int check_logits(const float *row, const cJSON *pos, int p_index, int t)
{
    const cJSON *lists[2] = {cJSON_GetObjectItem(pos, "top"), cJSON_GetObjectItem(pos, "probe")};
    int bad = 0;
    for (int l = 0; l < 2; l++) {
        const cJSON *pair;
        cJSON_ArrayForEach(pair, lists[l]) {
            int tok = cJSON_GetArrayItem(pair, 0)->valueint;
            double want = cJSON_GetArrayItem(pair, 1)->valuedouble, got = row[tok];
            double rel = fabs(got - want) / fmax(1.0, fabs(want));
            if (rel > worst_rel)
                worst_rel = rel;
            if (!(rel <= tol_g)) {
                if (bad++ < 3)
                    fprintf(stderr, "  prompt %d pos %d token %d: %.6f vs HF %.6f\n", p_index, t, tok, got, want);
            }
        }
    }
    /* argmax: the first "top" entry */
    int hf_best = cJSON_GetArrayItem(cJSON_GetArrayItem(lists[0], 0), 0)->valueint;
    double hf_second = cJSON_GetArrayItem(cJSON_GetArrayItem(lists[0], 1), 1)->valuedouble;
    double hf_first = cJSON_GetArrayItem(cJSON_GetArrayItem(lists[0], 0), 1)->valuedouble;
    int64_t best = 0;
    (void)best;
    if (hf_first - hf_second > tol_g * fmax(1.0, fabs(hf_first))) { /* a clear winner must be ours too */
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

static void run_golden(const char *golden_path, const char *model_path)
{
    char *text = NULL;
    size_t len;
    cJSON *doc;
    eng_load_opts_t lo;
    eng_model_t *model = NULL;
    const eng_backend_ops_t *ops = eng_backend_get("cuda");
    eng_backend_opts_t bo = {.device = 0, .mm_mode = KCPU_MM_EXACT};
    eng_backend_t *be = NULL;
    eng_forward_t *fw = NULL;
    eng_forward_opts_t fo = {.block_size = 16, .n_blocks = 64, .max_tokens = MAX_T, .max_seqs = MAX_T,
                             .max_blocks_per_seq = 32};
    const cJSON *prompt;
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
    PD_CHECK_STATUS(ops->init(&bo, &be), PD_OK);
    if (model == NULL || be == NULL)
        goto out;
    PD_CHECK_STATUS(eng_backend_cuda_set_weight_dtype(be, wdtype_g), PD_OK);
    PD_CHECK_STATUS(eng_forward_create(model, ops, be, &fo, &fw), PD_OK);
    if (fw == NULL)
        goto out;
    const int64_t V = eng_model_config(model)->vocab_size;
    float *logits = malloc((size_t)MAX_T * (size_t)V * sizeof(float));
    int32_t tokens[MAX_T], pos[MAX_T], seq[MAX_T], rows[MAX_T], table[32], ctx;
    int64_t slots[MAX_T];
    for (int b = 0; b < 32; b++)
        table[b] = b;
    worst_rel = 0;
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
            bad += check_logits(logits + (size_t)t * V, cJSON_GetArrayItem(cJSON_GetObjectItem(prompt, "positions"), t), pi, t);
        PD_CHECK_EQ_INT(bad, 0);
        /* greedy decoding through the cache, one token per forward */
        const cJSON *greedy = cJSON_GetObjectItem(prompt, "greedy");
        int n_greedy = cJSON_GetArraySize(greedy), mismatch = -1;
        int32_t next = 0;
        {
            const float *last = logits + (size_t)(T - 1) * V;
            for (int64_t v = 1; v < V; v++)
                if (last[v] > last[next])
                    next = (int32_t)v;
        }
        if (n_greedy > greedy_need_g)
            n_greedy = greedy_need_g;
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
            next = 0;
            for (int64_t v = 1; v < V; v++)
                if (logits[v] > logits[next])
                    next = (int32_t)v;
        }
        if (mismatch >= 0)
            fprintf(stderr, "  prompt %d: greedy token %d differs from HF\n", pi, mismatch);
        PD_CHECK_EQ_INT(mismatch, -1);
        pi++;
    }
    printf("  %s [%s GEMMs]: %d prompts, worst relative logit error %.2e\n", golden_path, kcpu_dtype_name(wdtype_g), pi, worst_rel);
    free(logits);
out:
    eng_forward_destroy(fw);
    if (be)
        ops->shutdown(be);
    eng_model_destroy(model);
    cJSON_Delete(doc);
}

static char gguf_buf[4096];
static int small_found_g;
static const char *gguf_path;

PD_TEST(test_default_model_vs_transformers)
{
    char g[4096];
    snprintf(g, sizeof(g), "%s/tests/data/goldens/smollm2-135m-q4_1.json", getenv("PD_SOURCE_DIR") ? getenv("PD_SOURCE_DIR") : ".");
    run_golden(g, gguf_path);
}

PD_TEST(test_default_model_bf16_gemm)
{
    char g[4096];
    snprintf(g, sizeof(g), "%s/tests/data/goldens/smollm2-135m-q4_1.json", getenv("PD_SOURCE_DIR") ? getenv("PD_SOURCE_DIR") : ".");
    wdtype_g = KCPU_DTYPE_BF16;
    tol_g = 5e-2;
    greedy_need_g = 16;
    run_golden(g, gguf_path);
    wdtype_g = KCPU_DTYPE_F32;
    tol_g = 1e-3;
    greedy_need_g = 1 << 30;
}

PD_TEST(test_small_models_vs_transformers)
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
        run_golden(g, m);
        found++;
    }
    printf("  %d small safetensors models checked\n", found);
    small_found_g = found;
}

int main(void)
{
    const eng_backend_ops_t *ops = eng_backend_get("cuda");
    eng_backend_t *probe = NULL;
    if (ops == NULL || ops->init(NULL, &probe) != PD_OK) {
        printf("SKIP: no usable CUDA device\n");
        return 77;
    }
    ops->shutdown(probe);
    gguf_path = default_gguf(gguf_buf, sizeof(gguf_buf));
    PD_RUN(test_small_models_vs_transformers);
    if (gguf_path == NULL) {
        printf("%s: the default model is not in the cache (run scripts/setup.sh)\n",
               small_found_g ? "NOTE" : "SKIP");
        if (small_found_g)
            return PD_TEST_REPORT(); /* the small models were checked: a real pass or fail */
        return pd_test_failed_g ? 1 : 77;
    }
    PD_RUN(test_default_model_vs_transformers);
    PD_RUN(test_default_model_bf16_gemm);
    return PD_TEST_REPORT();
}
