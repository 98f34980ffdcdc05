/*
 * test_model.c - eng_model_load over every source: the default GGUF model (skipped when
 * absent), the tiny Hugging Face directories of tests/data/models (built by
 * tests/models/make_tiny_models.py; expect.json holds the reference values), the Hugging
 * Face cache layout, dummy weights for configs/models/, and the option checks
 * (load/config formats, dtype, max_model_len, overrides).
 */
#define _GNU_SOURCE /* asprintf, setenv */
#include <cjson/cJSON.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "eng_gguf.h"
#include "eng_model.h"
#include "pd_log.h"
#include "pd_test.h"
#include "pd_util.h"

static char *src_path(const char *rel)
{
    const char *root = getenv("PD_SOURCE_DIR");
    char *p = NULL;
    if (asprintf(&p, "%s/%s", root ? root : ".", rel) < 0)
        return NULL;
    return p;
}

static const char *default_model(void)
{
    static char buf[512];
    const char *env = getenv("PD_MODEL_GGUF");
    if (env != NULL && env[0] != '\0')
        return env;
    snprintf(buf, sizeof(buf), "%s/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf",
             getenv("HOME") ? getenv("HOME") : "/root");
    return buf;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void rm_rf(const char *dir)
{
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static double tensor_sum(const eng_tensor_t *t, float *first4)
{
    int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    float *row = malloc((size_t)t->ne[0] * sizeof(float));
    double sum = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (eng_tensor_dequant_rows(t, r, 1, row) != PD_OK) {
            sum = NAN;
            break;
        }
        if (r == 0)
            for (int i = 0; i < 4 && i < t->ne[0]; i++)
                first4[i] = row[i];
        for (int64_t i = 0; i < t->ne[0]; i++)
            sum += row[i];
    }
    free(row);
    return sum;
}

/* ---- the default GGUF model ---- */

PD_TEST(test_default_gguf)
{
    const char *path = default_model();
    eng_load_opts_t o;
    eng_model_t *m = NULL, *mf = NULL;

    if (access(path, R_OK) != 0) {
        printf("  SKIP: default model %s absent\n", path);
        return;
    }
    eng_load_opts_init(&o);
    o.model = path;
    double t0 = pd_now_s();
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_OK);
    double t_load = pd_now_s() - t0;
    if (m == NULL)
        return;
    const eng_model_config_t *c = eng_model_config(m);
    PD_CHECK(c->arch == ENG_ARCH_LLAMA);
    PD_CHECK_EQ_INT(c->n_layers, 30);
    PD_CHECK_EQ_INT(c->hidden, 576);
    PD_CHECK_EQ_INT(c->n_heads, 9);
    PD_CHECK_EQ_INT(c->n_kv_heads, 3);
    PD_CHECK_EQ_INT(c->head_dim, 64);
    PD_CHECK_EQ_INT(c->rotary_dim, 64);
    PD_CHECK_EQ_INT(c->intermediate, 1536);
    PD_CHECK_EQ_INT(c->vocab_size, 49152);
    PD_CHECK_EQ_INT(c->max_model_len, 8192);
    PD_CHECK(c->rope_theta == 100000.0);
    PD_CHECK(fabs(c->norm_eps - 1e-5) < 1e-12);
    PD_CHECK(c->tie_embeddings);
    PD_CHECK(c->rope_style == ENG_ROPE_NEOX);
    PD_CHECK(c->quantized);
    PD_CHECK(c->dtype == ENG_DTYPE_F16);
    PD_CHECK_EQ_INT(c->bos_token_id, 1);
    PD_CHECK(c->n_eos >= 1 && c->eos_token_ids[0] == 2);
    PD_CHECK_EQ_INT(eng_model_n_tensors(m), 272);
    PD_CHECK(eng_model_format(m) == ENG_FORMAT_GGUF);
    PD_CHECK(eng_model_gguf(m) != NULL);
    PD_CHECK(eng_model_tokenizer_json(m) == NULL);
    PD_CHECK(eng_model_chat_template(m) != NULL &&
             strstr(eng_model_chat_template(m), "<|im_start|>") != NULL);
    PD_CHECK_EQ_STR(eng_model_special_token(m, "eos_token"), "<|im_end|>");
    PD_CHECK(eng_model_tensor(m, "output.weight") == NULL);
    const eng_tensor_t *emb = eng_model_tensor(m, "token_embd.weight");
    PD_CHECK(emb != NULL && emb->type == ENG_DTYPE_Q8_0 && emb->ne[0] == 576 &&
             emb->ne[1] == 49152);
    /* kept quantized and not copied: the data is the file's */
    const eng_gguf_tensor_info_t *graw = eng_gguf_find_tensor(eng_model_gguf(m), "token_embd.weight");
    PD_CHECK(emb != NULL && graw != NULL && emb->data == graw->data);

    /* Q and K rows are un-permuted: HF row h*hd + i*hd/2 + j = GGUF row h*hd + 2j + i */
    const char *qk[2] = {"blk.3.attn_q.weight", "blk.3.attn_k.weight"};
    for (int w = 0; w < 2; w++) {
        const eng_tensor_t *t = eng_model_tensor(m, qk[w]);
        const eng_gguf_tensor_info_t *g = eng_gguf_find_tensor(eng_model_gguf(m), qk[w]);
        PD_CHECK(t != NULL && g != NULL);
        if (t == NULL || g == NULL)
            continue;
        size_t rb;
        eng_dtype_row_bytes(t->type, t->ne[0], &rb);
        int64_t hd = 64, bad = 0;
        for (int64_t r = 0; r < t->ne[1]; r++) {
            int64_t h = r / hd, i = (r % hd) / (hd / 2), j = r % (hd / 2);
            int64_t gr = h * hd + 2 * j + i;
            bad += memcmp((const uint8_t *)t->data + r * rb, (const uint8_t *)g->data + gr * rb,
                          rb) != 0;
        }
        PD_CHECK_EQ_INT(bad, 0);
        PD_CHECK(t->data != g->data);
    }
    /* V is not permuted */
    PD_CHECK(eng_model_tensor(m, "blk.3.attn_v.weight")->data ==
             eng_gguf_find_tensor(eng_model_gguf(m), "blk.3.attn_v.weight")->data);

    /* keep_quantized = false: everything F32 with the same values */
    o.keep_quantized = false;
    t0 = pd_now_s();
    PD_CHECK_STATUS(eng_model_load(&o, &mf), PD_OK);
    double t_deq = pd_now_s() - t0;
    if (mf != NULL) {
        const eng_tensor_t *a = eng_model_tensor(m, "blk.7.ffn_down.weight");
        const eng_tensor_t *b = eng_model_tensor(mf, "blk.7.ffn_down.weight");
        PD_CHECK(a != NULL && b != NULL && a->type == ENG_DTYPE_Q4_1 && b->type == ENG_DTYPE_F32);
        if (a != NULL && b != NULL) {
            float *row = malloc((size_t)a->ne[0] * 4);
            eng_tensor_dequant_rows(a, 100, 1, row);
            PD_CHECK(memcmp(row, (const float *)b->data + 100 * a->ne[0], (size_t)a->ne[0] * 4) == 0);
            free(row);
        }
        size_t nq = 0;
        for (size_t i = 0; i < eng_model_n_tensors(mf); i++)
            nq += eng_dtype_is_quantized(eng_model_tensor_at(mf, i)->type);
        PD_CHECK_EQ_INT(nq, 0);
        eng_model_destroy(mf);
    }
    /* dequantized to bf16: the f32 values rounded */
    o.dequant_dtype = ENG_DTYPE_BF16;
    mf = NULL;
    PD_CHECK_STATUS(eng_model_load(&o, &mf), PD_OK);
    if (mf != NULL) {
        const eng_tensor_t *a = eng_model_tensor(m, "blk.2.attn_q.weight");
        const eng_tensor_t *b = eng_model_tensor(mf, "blk.2.attn_q.weight");
        PD_CHECK(b != NULL && b->type == ENG_DTYPE_BF16 && b->nbytes == 576 * 576 * 2);
        if (a != NULL && b != NULL) {
            float row[576];
            eng_tensor_dequant_rows(a, 33, 1, row);
            int bad = 0;
            for (int i = 0; i < 576; i++)
                bad += ((const uint16_t *)b->data)[33 * 576 + i] != eng_f32_to_bf16(row[i]);
            PD_CHECK_EQ_INT(bad, 0);
        }
        eng_model_destroy(mf);
    }
    o.dequant_dtype = ENG_DTYPE_Q8_0;
    PD_CHECK_STATUS(eng_model_load(&o, &mf), PD_ERR_INVAL);
    o.dequant_dtype = ENG_DTYPE_F32;
    printf("  default model: load %.1f ms (kept quantized, mmap), %.0f ms dequantized to F32\n",
           t_load * 1e3, t_deq * 1e3);
    eng_model_destroy(m);

    /* options on a GGUF */
    eng_model_config_t cfg;
    eng_load_opts_init(&o);
    o.model = path;
    o.dtype = "bfloat16";
    o.max_model_len = 4096;
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK(cfg.dtype == ENG_DTYPE_BF16 && cfg.max_model_len == 4096);
    o.max_model_len = 9000;
    unsetenv("PD_ALLOW_LONG_MAX_MODEL_LEN");
    unsetenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN");
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_ERR_INVAL);
    setenv("PD_ALLOW_LONG_MAX_MODEL_LEN", "1", 1);
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK_EQ_INT(cfg.max_model_len, 9000);
    unsetenv("PD_ALLOW_LONG_MAX_MODEL_LEN");
    setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1", 1); /* vLLM's name for the same override */
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK_EQ_INT(cfg.max_model_len, 9000);
    setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0", 1);
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_ERR_INVAL);
    unsetenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN");
    o.max_model_len = 0;
    o.hf_overrides = "{\"rope_theta\": 20000}";
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK(cfg.rope_theta == 20000.0);
    /* dummy weights at the GGUF's shape */
    o.hf_overrides = NULL;
    o.load_format = "dummy";
    o.dtype = NULL;
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_OK);
    if (m != NULL) {
        const eng_tensor_t *t = eng_model_tensor(m, "blk.0.attn_q.weight");
        PD_CHECK(t != NULL && t->type == ENG_DTYPE_F16 && t->data != NULL);
        PD_CHECK(!eng_model_config(m)->quantized);
        eng_model_destroy(m);
    }
}

/* Rotate pairs of one head in place: neox pairs (i, i + d/2), gptj pairs (2i, 2i + 1). */
static void rope_head(float *x, int d, int pos, double base, bool neox)
{
    for (int i = 0; i < d / 2; i++) {
        double th = pos * pow(base, -2.0 * i / d);
        int a = neox ? i : 2 * i, b = neox ? i + d / 2 : 2 * i + 1;
        double x0 = x[a], x1 = x[b];
        x[a] = (float)(x0 * cos(th) - x1 * sin(th));
        x[b] = (float)(x0 * sin(th) + x1 * cos(th));
    }
}

/* q.k of head (hq, hk) at positions (pq, pk) for weights wq/wk [rows][576] and input x. */
static double qk_score(const float *wq, const float *wk, const float *x, int hq, int hk, int pq,
                       int pk, bool neox)
{
    float q[64], k[64];
    double dot = 0;
    for (int r = 0; r < 64; r++) {
        double sq = 0, sk = 0;
        for (int c = 0; c < 576; c++) {
            sq += (double)wq[(size_t)(hq * 64 + r) * 576 + c] * x[c];
            sk += (double)wk[(size_t)(hk * 64 + r) * 576 + c] * x[(c + 7) % 576];
        }
        q[r] = (float)sq;
        k[r] = (float)sk;
    }
    rope_head(q, 64, pq, 100000.0, neox);
    rope_head(k, 64, pk, 100000.0, neox);
    for (int r = 0; r < 64; r++)
        dot += (double)q[r] * k[r];
    return dot;
}

/* The un-permuted Q/K with neox RoPE give the same attention scores as the file's rows
 * with ggml's interleaved (gptj) RoPE: the un-permutation matches llama.cpp's converter. */
PD_TEST(test_default_gguf_rope_equivalence)
{
    const char *path = default_model();
    eng_load_opts_t o;
    eng_model_t *m = NULL;

    if (access(path, R_OK) != 0) {
        printf("  SKIP: default model %s absent\n", path);
        return;
    }
    eng_load_opts_init(&o);
    o.model = path;
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_OK);
    if (m == NULL)
        return;
    const eng_tensor_t *tq = eng_model_tensor(m, "blk.0.attn_q.weight");
    const eng_tensor_t *tk = eng_model_tensor(m, "blk.0.attn_k.weight");
    const eng_gguf_tensor_info_t *gq = eng_gguf_find_tensor(eng_model_gguf(m), tq->name);
    const eng_gguf_tensor_info_t *gk = eng_gguf_find_tensor(eng_model_gguf(m), tk->name);
    float *hq = malloc(576 * 576 * 4), *hk = malloc(192 * 576 * 4);
    float *fq = malloc(576 * 576 * 4), *fk = malloc(192 * 576 * 4), x[576];
    eng_tensor_dequant_rows(tq, 0, 576, hq);
    eng_tensor_dequant_rows(tk, 0, 192, hk);
    size_t rb;
    eng_dtype_row_bytes(gq->type, 576, &rb);
    for (int r = 0; r < 576; r++)
        eng_dequant_row(gq->type, (const uint8_t *)gq->data + r * rb, fq + r * 576, 576);
    for (int r = 0; r < 192; r++)
        eng_dequant_row(gk->type, (const uint8_t *)gk->data + r * rb, fk + r * 576, 576);
    for (int c = 0; c < 576; c++)
        x[c] = (float)sin(c * 0.37) * 0.5f;
    double max_rel = 0;
    for (int h = 0; h < 9; h++) {
        int pq = 5 + h * 11, pk = 3 + h;
        double a = qk_score(hq, hk, x, h, h / 3, pq, pk, true);
        double b = qk_score(fq, fk, x, h, h / 3, pq, pk, false);
        double rel = fabs(a - b) / (fabs(b) + 1e-6);
        max_rel = rel > max_rel ? rel : max_rel;
        /* a wrong permutation would not match; and neox on the file's rows must differ */
        double wrong = qk_score(fq, fk, x, h, h / 3, pq, pk, true);
        if (h == 0)
            PD_CHECK(fabs(wrong - b) / (fabs(b) + 1e-6) > 1e-3);
    }
    PD_CHECK(max_rel < 1e-4);
    free(hq);
    free(hk);
    free(fq);
    free(fk);
    eng_model_destroy(m);
}

/* GGUF files made from the tiny HF fixtures the way llama.cpp's converter makes them
 * (tests/models/make_tiny_gguf.py: Q/K permuted for llama, not for qwen3) load back to
 * exactly the Hugging Face tensors. */
PD_TEST(test_gguf_matches_hf)
{
    const char *pairs[2][2] = {{"tiny-llama.gguf", "tiny-llama"}, {"tiny-qwen3.gguf", "tiny-qwen3"}};
    for (int p = 0; p < 2; p++) {
        char *gpath = NULL, *hpath = NULL;
        char *base = src_path("tests/data/models");
        eng_load_opts_t o;
        eng_model_t *g = NULL, *h = NULL;
        asprintf(&gpath, "%s/%s", base, pairs[p][0]);
        asprintf(&hpath, "%s/%s", base, pairs[p][1]);
        free(base);
        eng_load_opts_init(&o);
        o.model = gpath;
        PD_CHECK_STATUS(eng_model_load(&o, &g), PD_OK);
        o.model = hpath;
        PD_CHECK_STATUS(eng_model_load(&o, &h), PD_OK);
        if (g != NULL && h != NULL) {
            const eng_model_config_t *a = eng_model_config(g), *b = eng_model_config(h);
            PD_CHECK(a->arch == b->arch && a->n_layers == b->n_layers && a->hidden == b->hidden &&
                     a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads &&
                     a->head_dim == b->head_dim && a->intermediate == b->intermediate &&
                     a->vocab_size == b->vocab_size && a->qk_norm == b->qk_norm &&
                     a->tie_embeddings == b->tie_embeddings && a->rope_theta == b->rope_theta);
            PD_CHECK(a->torch_dtype == ENG_DTYPE_BF16);
            PD_CHECK_EQ_INT(eng_model_n_tensors(g), eng_model_n_tensors(h));
            size_t bad = 0;
            for (size_t i = 0; i < eng_model_n_tensors(h); i++) {
                const eng_tensor_t *th = eng_model_tensor_at(h, i);
                const eng_tensor_t *tg = eng_model_tensor(g, th->name);
                if (tg == NULL || tg->type != th->type || tg->nbytes != th->nbytes ||
                    memcmp(tg->ne, th->ne, sizeof(tg->ne)) != 0 ||
                    memcmp(tg->data, th->data, th->nbytes) != 0) {
                    if (bad++ < 3)
                        fprintf(stderr, "  %s: %s differs between GGUF and HF\n", pairs[p][0],
                                th->name);
                }
            }
            PD_CHECK_EQ_INT(bad, 0);
            PD_CHECK_EQ_STR(eng_model_chat_template(g), "{{ messages[0]['content'] }}");
            PD_CHECK_EQ_STR(eng_model_special_token(g, "bos_token"), "<t1>");
        }
        eng_model_destroy(g);
        eng_model_destroy(h);
        free(gpath);
        free(hpath);
    }
}

/* ---- tiny Hugging Face directories ---- */

static void check_against_expect(eng_model_t *m, const char *dir)
{
    char *p = NULL, *data = NULL;
    size_t len;
    if (asprintf(&p, "%s/expect.json", dir) < 0)
        return;
    PD_CHECK_STATUS(pd_read_file(p, &data, &len), PD_OK);
    free(p);
    cJSON *exp = data ? cJSON_Parse(data) : NULL;
    free(data);
    PD_CHECK(exp != NULL);
    const cJSON *e;
    size_t n = 0;
    cJSON_ArrayForEach(e, exp) {
        const eng_tensor_t *t = eng_model_tensor(m, e->string);
        n++;
        if (t == NULL) {
            fprintf(stderr, "  %s: tensor %s missing\n", dir, e->string);
            PD_CHECK(t != NULL);
            continue;
        }
        PD_CHECK_EQ_STR(eng_dtype_name(t->type),
                        cJSON_GetObjectItem(e, "dtype")->valuestring);
        const cJSON *ne = cJSON_GetObjectItem(e, "ne");
        for (int d = 0; d < cJSON_GetArraySize(ne); d++)
            PD_CHECK_EQ_INT(t->ne[d], (int64_t)cJSON_GetArrayItem(ne, d)->valuedouble);
        float first[4] = {0};
        double sum = tensor_sum(t, first);
        double want = cJSON_GetObjectItem(e, "sum")->valuedouble;
        if (fabs(sum - want) > 1e-6 * (1 + fabs(want))) {
            fprintf(stderr, "  %s: %s sum %.9g, expected %.9g\n", dir, e->string, sum, want);
            PD_CHECK(!"tensor sum");
        }
        const cJSON *fv = cJSON_GetObjectItem(e, "first");
        for (int i = 0; i < cJSON_GetArraySize(fv); i++)
            PD_CHECK(first[i] == (float)cJSON_GetArrayItem(fv, i)->valuedouble);
    }
    PD_CHECK_EQ_INT(n, eng_model_n_tensors(m));
    cJSON_Delete(exp);
}

static eng_model_t *load_tiny(const char *name, eng_load_opts_t *o)
{
    static char *path;
    eng_model_t *m = NULL;
    free(path);
    path = NULL;
    if (asprintf(&path, "%s/tests/data/models/%s",
                 getenv("PD_SOURCE_DIR") ? getenv("PD_SOURCE_DIR") : ".", name) < 0)
        return NULL;
    o->model = path;
    pd_status_t st = eng_model_load(o, &m);
    if (st != PD_OK)
        fprintf(stderr, "  loading %s: %s\n", path, pd_status_name(st));
    PD_CHECK_STATUS(st, PD_OK);
    if (m != NULL)
        check_against_expect(m, path);
    return m;
}

PD_TEST(test_tiny_llama_sharded)
{
    eng_load_opts_t o;
    eng_load_opts_init(&o);
    eng_model_t *m = load_tiny("tiny-llama", &o);
    if (m == NULL)
        return;
    const eng_model_config_t *c = eng_model_config(m);
    PD_CHECK(c->arch == ENG_ARCH_LLAMA);
    PD_CHECK_EQ_STR(c->hf_arch, "LlamaForCausalLM");
    PD_CHECK_EQ_INT(c->n_layers, 2);
    PD_CHECK_EQ_INT(c->hidden, 64);
    PD_CHECK_EQ_INT(c->head_dim, 16);
    PD_CHECK(!c->tie_embeddings && !c->qkv_bias && !c->qk_norm && c->gated_ffn);
    PD_CHECK(c->rope_scaling.type == ENG_ROPE_SCALING_LLAMA3);
    PD_CHECK(c->rope_scaling.factor == 8.0 && c->rope_scaling.high_freq_factor == 4.0);
    PD_CHECK_EQ_INT(c->rope_scaling.original_max_position, 128);
    PD_CHECK_EQ_INT(c->max_model_len, 512); /* llama3 scaling does not extend it */
    PD_CHECK(c->torch_dtype == ENG_DTYPE_BF16 && c->dtype == ENG_DTYPE_BF16);
    PD_CHECK(eng_model_tensor(m, "output.weight") != NULL);
    PD_CHECK(eng_model_format(m) == ENG_FORMAT_SAFETENSORS);
    PD_CHECK(eng_model_tokenizer_json(m) != NULL &&
             strstr(eng_model_tokenizer_json(m), "tiny-llama/tokenizer.json") != NULL);
    PD_CHECK(eng_model_tokenizer_config(m) != NULL);
    PD_CHECK(eng_model_chat_template(m) != NULL &&
             strncmp(eng_model_chat_template(m), "{% for m in messages", 20) == 0);
    PD_CHECK_EQ_STR(eng_model_special_token(m, "bos_token"), "<s>");
    PD_CHECK_EQ_STR(eng_model_special_token(m, "eos_token"), "</s>");
    PD_CHECK(eng_model_special_token(m, "unk_token") == NULL);
    const eng_gen_config_t *g = eng_model_gen_config(m);
    PD_CHECK(g->has_temperature && g->temperature == 0.6);
    PD_CHECK(g->has_top_k && g->top_k == 20 && g->has_max_new_tokens && !g->has_min_p);
    PD_CHECK(eng_model_gen_config_json(m) != NULL);
    /* eos: config's 2 plus generation_config's 7 */
    PD_CHECK_EQ_INT(c->n_eos, 2);
    PD_CHECK(c->eos_token_ids[0] == 2 && c->eos_token_ids[1] == 7);
    PD_CHECK(eng_model_layer_tensor(m, 1, "ffn_gate.weight") != NULL);
    eng_model_destroy(m);
}

PD_TEST(test_tiny_mistral_qwen_opt)
{
    eng_load_opts_t o;
    eng_model_t *m;

    eng_load_opts_init(&o);
    if ((m = load_tiny("tiny-mistral", &o)) != NULL) {
        const eng_model_config_t *c = eng_model_config(m);
        PD_CHECK(c->arch == ENG_ARCH_MISTRAL);
        PD_CHECK_EQ_INT(c->sliding_window, 128);
        PD_CHECK(c->torch_dtype == ENG_DTYPE_F32 && c->dtype == ENG_DTYPE_F16);
        PD_CHECK(c->rope_theta == 1e6);
        eng_model_destroy(m);
    }
    if ((m = load_tiny("tiny-qwen2", &o)) != NULL) {
        const eng_model_config_t *c = eng_model_config(m);
        PD_CHECK(c->arch == ENG_ARCH_QWEN2);
        PD_CHECK(c->qkv_bias && !c->o_bias && c->tie_embeddings);
        PD_CHECK_EQ_INT(c->sliding_window, 0); /* use_sliding_window false */
        PD_CHECK(eng_model_tensor(m, "blk.1.attn_k.bias") != NULL);
        PD_CHECK(eng_model_tensor(m, "output.weight") == NULL);
        PD_CHECK_EQ_STR(eng_model_chat_template(m),
                        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}");
        PD_CHECK(c->dtype == ENG_DTYPE_F16);
        eng_model_destroy(m);
    }
    if ((m = load_tiny("tiny-qwen3", &o)) != NULL) {
        const eng_model_config_t *c = eng_model_config(m);
        PD_CHECK(c->arch == ENG_ARCH_QWEN3);
        PD_CHECK(c->qk_norm && !c->qkv_bias);
        PD_CHECK_EQ_INT(c->head_dim, 32); /* q width 128 != hidden 64 */
        const eng_tensor_t *q = eng_model_tensor(m, "blk.0.attn_q.weight");
        PD_CHECK(q != NULL && q->ne[0] == 64 && q->ne[1] == 128);
        PD_CHECK(eng_model_tensor(m, "blk.0.attn_k_norm.weight") != NULL);
        eng_model_destroy(m);
    }
    if ((m = load_tiny("tiny-opt", &o)) != NULL) {
        const eng_model_config_t *c = eng_model_config(m);
        PD_CHECK(c->arch == ENG_ARCH_OPT);
        PD_CHECK(c->norm == ENG_NORM_LAYER && c->act == ENG_ACT_RELU && !c->gated_ffn);
        PD_CHECK(c->rope_style == ENG_ROPE_NONE && c->pos_embd_offset == 2);
        PD_CHECK(c->qkv_bias && c->o_bias && c->mlp_bias && c->tie_embeddings);
        PD_CHECK_EQ_INT(c->pad_token_id, 1);
        const eng_tensor_t *pe = eng_model_tensor(m, "position_embd.weight");
        PD_CHECK(pe != NULL && pe->ne[0] == 64 && pe->ne[1] == 514);
        PD_CHECK(eng_model_tensor(m, "output.weight") == NULL); /* lm_head dropped: tied */
        PD_CHECK(eng_model_tensor(m, "blk.1.ffn_up.bias") != NULL);
        eng_model_destroy(m);
    }
}

PD_TEST(test_options_and_errors)
{
    eng_load_opts_t o;
    eng_model_config_t cfg;
    char *llama = src_path("tests/data/models/tiny-llama");
    char *mistral = src_path("tests/data/models/tiny-mistral");
    eng_model_t *m = NULL;

    eng_load_opts_init(&o);
    o.model = llama;
    o.hf_overrides = "{\"rope_theta\": 1234, \"rope_scaling\": {\"factor\": 2.0}}";
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK(cfg.rope_theta == 1234.0);
    PD_CHECK(cfg.rope_scaling.type == ENG_ROPE_SCALING_LLAMA3 && cfg.rope_scaling.factor == 2.0);
    o.hf_overrides = "[1]";
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_ERR_INVAL);
    o.hf_overrides = "{\"architectures\": [\"GPT2LMHeadModel\"]}";
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_ERR_UNSUPPORTED);
    o.hf_overrides = "{\"num_attention_heads\": 5}";
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_ERR_FORMAT);
    /* an override that changes a shape: the tensors no longer fit */
    o.hf_overrides = "{\"intermediate_size\": 96}";
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_FORMAT);
    o.hf_overrides = NULL;

    o.model = mistral;
    o.rope_scaling = "{\"rope_type\": \"linear\", \"factor\": 4}";
    o.rope_theta = 5000;
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK(cfg.rope_scaling.type == ENG_ROPE_SCALING_LINEAR && cfg.rope_theta == 5000.0);
    PD_CHECK_EQ_INT(cfg.max_model_len, 2048);
    o.rope_scaling = "{\"rope_type\": \"yarn\", \"factor\": 4, "
                     "\"original_max_position_embeddings\": 256}";
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK_EQ_INT(cfg.max_model_len, 1024);
    o.rope_scaling = "{\"rope_type\": \"longrope\", \"factor\": 4}";
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_ERR_UNSUPPORTED);
    o.rope_scaling = "nope";
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_ERR_INVAL);
    o.rope_scaling = NULL;
    o.rope_theta = 0;

    const char *dtypes[][2] = {{"auto", "F16"}, {"half", "F16"}, {"float16", "F16"},
                               {"bfloat16", "BF16"}, {"float", "F32"}, {"float32", "F32"}};
    for (size_t i = 0; i < PD_ARRAY_SIZE(dtypes); i++) {
        o.dtype = dtypes[i][0];
        PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
        PD_CHECK_EQ_STR(eng_dtype_name(cfg.dtype), dtypes[i][1]);
    }
    o.dtype = "int4";
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_ERR_INVAL);
    o.dtype = NULL;

    const char *unsupported[] = {"pt", "npcache", "tensorizer", "bitsandbytes"};
    for (size_t i = 0; i < PD_ARRAY_SIZE(unsupported); i++) {
        o.load_format = unsupported[i];
        PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_UNSUPPORTED);
    }
    o.load_format = "weird";
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_INVAL);
    o.load_format = "gguf"; /* a directory without a .gguf */
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_INVAL);
    o.load_format = NULL;
    o.config_format = "mistral";
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_UNSUPPORTED);
    o.config_format = "yaml";
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_INVAL);
    o.config_format = "hf";
    o.max_model_len = 513;
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_ERR_INVAL);
    o.max_model_len = 100;
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK_EQ_INT(cfg.max_model_len, 100);
    o.max_model_len = 0;

    /* --disable-sliding-window (tiny-mistral: window 128, 512 positions): no window, the
     * derived length capped at 128, a longer --max-model-len refused like any other */
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK_EQ_INT(cfg.sliding_window, 128);
    PD_CHECK_EQ_INT(cfg.max_model_len, 512);
    o.disable_sliding_window = true;
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK_EQ_INT(cfg.sliding_window, 0);
    PD_CHECK_EQ_INT(cfg.max_model_len, 128);
    o.max_model_len = 129;
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_ERR_INVAL);
    o.max_model_len = 64;
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK_EQ_INT(cfg.max_model_len, 64);
    PD_CHECK_EQ_INT(cfg.sliding_window, 0);
    o.max_model_len = 0;
    o.model = llama; /* no window: nothing changes */
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK_EQ_INT(cfg.sliding_window, 0);
    PD_CHECK_EQ_INT(cfg.max_model_len, 512);
    o.disable_sliding_window = false;
    o.model = mistral;

    o.model = "/nonexistent/model/dir";
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_NOT_FOUND);
    o.model = "no-such-org/no-such-model";
    o.download_dir = "/nonexistent-cache";
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_NOT_FOUND);
    o.download_dir = NULL;

    /* --tokenizer naming a tokenizer.json file: that file, the rest from its folder */
    char *tok_file = NULL;
    if (asprintf(&tok_file, "%s/tokenizer.json", llama) > 0) {
        o.model = mistral;
        o.tokenizer = tok_file;
        PD_CHECK_STATUS(eng_model_load(&o, &m), PD_OK);
        if (m != NULL) {
            PD_CHECK_EQ_STR(eng_model_tokenizer_json(m), tok_file);
            PD_CHECK(eng_model_tokenizer_config(m) != NULL);
            eng_model_destroy(m);
        }
        free(tok_file);
        o.tokenizer = NULL;
    }
    /* --tokenizer pointing at another directory */
    o.model = mistral;
    o.tokenizer = llama;
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_OK);
    if (m != NULL) {
        PD_CHECK(strstr(eng_model_tokenizer_json(m), "tiny-llama") != NULL);
        PD_CHECK(eng_model_chat_template(m) != NULL);
        eng_model_destroy(m);
    }
    free(llama);
    free(mistral);
}

/* --ignore-patterns: a directory with a garbage extra *.safetensors (a checkpoint's
 * consolidated copy, say) loads once the pattern skips it. */
PD_TEST(test_ignore_patterns)
{
    char tmpl[] = "/tmp/pd_test_ignore_XXXXXX";
    char *dir = mkdtemp(tmpl), *src = src_path("tests/data/models/tiny-qwen3");
    eng_load_opts_t o;
    eng_model_t *m = NULL;

    PD_CHECK(dir != NULL);
    if (dir == NULL)
        return;
    const char *files[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char *from = NULL, *to = NULL, *data = NULL;
        size_t len = 0;
        PD_CHECK(asprintf(&from, "%s/%s", src, files[i]) > 0 && asprintf(&to, "%s/%s", dir, files[i]) > 0);
        PD_CHECK_STATUS(pd_read_file(from, &data, &len), PD_OK);
        FILE *f = fopen(to, "wb");
        fwrite(data, 1, len, f);
        fclose(f);
        free(data), free(from), free(to);
    }
    char *junk = NULL;
    PD_CHECK(asprintf(&junk, "%s/consolidated.safetensors", dir) > 0);
    FILE *f = fopen(junk, "wb");
    fputs("not a safetensors file", f);
    fclose(f);
    eng_load_opts_init(&o);
    o.model = dir;
    PD_CHECK(eng_model_load(&o, &m) != PD_OK); /* the junk file is read */
    const char *pats[] = {"original/*", "consolidated*"};
    o.ignore_patterns = pats;
    o.n_ignore_patterns = 2;
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_OK);
    if (m != NULL)
        PD_CHECK(eng_model_layer_tensor(m, 0, "attn_q.weight") != NULL || eng_model_tensor(m, "token_embd.weight"));
    eng_model_destroy(m);
    m = NULL;
    const char *all[] = {"*.safetensors"};
    o.ignore_patterns = all;
    o.n_ignore_patterns = 1;
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_NOT_FOUND); /* nothing left */
    remove(junk);
    free(junk);
    rm_rf(dir);
    free(src);
}

/* A corrupted copy of a tiny directory: broken config, missing tensors, bad weights. */
PD_TEST(test_broken_directories)
{
    char tmpl[] = "/tmp/pd_test_model_XXXXXX";
    char *dir = mkdtemp(tmpl), *p = NULL, *src = src_path("tests/data/models/tiny-qwen3");
    eng_load_opts_t o;
    eng_model_t *m = NULL;
    char *data;
    size_t len;

    PD_CHECK(dir != NULL);
    if (dir == NULL)
        return;
    eng_load_opts_init(&o);
    o.model = dir;
    /* no config.json and no gguf */
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_NOT_FOUND);
    /* a Mistral-format checkpoint */
    asprintf(&p, "%s/params.json", dir);
    FILE *pf = fopen(p, "w");
    fputs("{\"dim\": 64}", pf);
    fclose(pf);
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_UNSUPPORTED);
    remove(p);
    free(p);
    const char *files[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char *from = NULL;
        asprintf(&from, "%s/%s", src, files[i]);
        asprintf(&p, "%s/%s", dir, files[i]);
        pd_read_file(from, &data, &len);
        FILE *f = fopen(p, "wb");
        fwrite(data, 1, i == 1 ? len - 100 : len, f); /* the weights lose their tail */
        fclose(f);
        free(data);
        free(from);
        free(p);
    }
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_FORMAT);
    /* config only: dummy works, safetensors does not */
    asprintf(&p, "%s/model.safetensors", dir);
    remove(p);
    free(p);
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_NOT_FOUND);
    o.load_format = "dummy";
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_OK);
    eng_model_destroy(m);
    /* bad JSON */
    asprintf(&p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    fputs("{\"architectures\": [\"Qwen3ForCausalLM\"], \"hidden_size\": ", f);
    fclose(f);
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_FORMAT);
    f = fopen(p, "w");
    fputs("{\"architectures\": [\"Qwen3ForCausalLM\"], \"hidden_size\": \"64\"}", f);
    fclose(f);
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_FORMAT);
    free(p);
    rm_rf(dir);
    free(src);
}

/* ---- the Hugging Face cache layout ---- */

PD_TEST(test_hf_cache_layout)
{
    char tmpl[] = "/tmp/pd_test_hub_XXXXXX";
    char *root = mkdtemp(tmpl), *p = NULL, *src = src_path("tests/data/models/tiny-opt");
    char cwd[4096];
    eng_load_opts_t o;
    eng_model_t *m = NULL;
    const char *files[] = {"config.json", "model.safetensors", "tokenizer.json",
                           "tokenizer_config.json", "generation_config.json"};

    PD_CHECK(root != NULL);
    if (root == NULL)
        return;
    if (src[0] != '/' && getcwd(cwd, sizeof(cwd)) != NULL) {
        char *abs = NULL;
        asprintf(&abs, "%s/%s", cwd, src);
        free(src);
        src = abs;
    }
    /* hub/models--testorg--tiny-opt/{refs/main, snapshots/<hash>/ with symlinks} */
    asprintf(&p, "mkdir -p %s/hub/models--testorg--tiny-opt/refs "
                 "%s/hub/models--testorg--tiny-opt/snapshots/0123abcd",
             root, root);
    PD_CHECK_EQ_INT(system(p), 0);
    free(p);
    asprintf(&p, "%s/hub/models--testorg--tiny-opt/refs/main", root);
    FILE *f = fopen(p, "w");
    fputs("0123abcd\n", f);
    fclose(f);
    free(p);
    for (size_t i = 0; i < PD_ARRAY_SIZE(files); i++) {
        char *from = NULL;
        asprintf(&from, "%s/%s", src, files[i]);
        asprintf(&p, "%s/hub/models--testorg--tiny-opt/snapshots/0123abcd/%s", root, files[i]);
        PD_CHECK_EQ_INT(symlink(from, p), 0);
        free(from);
        free(p);
    }
    asprintf(&p, "%s/hub", root);
    eng_load_opts_init(&o);
    o.model = "testorg/tiny-opt";
    o.download_dir = p;
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_OK);
    if (m != NULL) {
        PD_CHECK(strstr(eng_model_path(m), "snapshots/0123abcd") != NULL);
        PD_CHECK(eng_model_config(m)->arch == ENG_ARCH_OPT);
        eng_model_destroy(m);
    }
    o.revision = "0123abcd";
    char *resolved = NULL;
    PD_CHECK_STATUS(eng_model_resolve_path(o.model, o.revision, o.download_dir, &resolved), PD_OK);
    free(resolved);
    o.revision = "v2.0";
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_NOT_FOUND);
    o.revision = "../../etc";
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_NOT_FOUND);
    o.revision = NULL;
    /* --tokenizer-revision without --tokenizer: the tokenizer comes from that snapshot of
     * the model id (vLLM: the tokenizer defaults to the model), the weights from main */
    char *snap = NULL;
    asprintf(&snap, "%s/hub/models--testorg--tiny-opt/snapshots/feedbeef", root);
    PD_CHECK_EQ_INT(mkdir(snap, 0755), 0);
    for (size_t i = 2; i < 4; i++) { /* tokenizer.json, tokenizer_config.json */
        char *from = NULL, *to = NULL;
        asprintf(&from, "%s/%s", src, files[i]);
        asprintf(&to, "%s/%s", snap, files[i]);
        PD_CHECK_EQ_INT(symlink(from, to), 0);
        free(from);
        free(to);
    }
    free(snap);
    o.tokenizer_revision = "feedbeef";
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_OK);
    if (m != NULL) {
        PD_CHECK(strstr(eng_model_path(m), "snapshots/0123abcd") != NULL);
        PD_CHECK(strstr(eng_model_tokenizer_json(m), "snapshots/feedbeef/tokenizer.json") != NULL);
        eng_model_destroy(m);
    }
    o.tokenizer_revision = "0badc0de"; /* no such snapshot: an error, not a silent fallback */
    PD_CHECK_STATUS(eng_model_load(&o, &m), PD_ERR_NOT_FOUND);
    o.tokenizer_revision = NULL;
    /* found through $HF_HOME/hub when no download dir is given */
    o.download_dir = NULL;
    char *old_home = getenv("HF_HOME") ? strdup(getenv("HF_HOME")) : NULL;
    setenv("HF_HOME", root, 1);
    PD_CHECK_STATUS(eng_model_resolve_path("testorg/tiny-opt", NULL, NULL, &resolved), PD_OK);
    free(resolved);
    PD_CHECK_STATUS(eng_model_resolve_path("testorg/other", NULL, NULL, &resolved),
                    PD_ERR_NOT_FOUND);
    if (old_home) {
        setenv("HF_HOME", old_home, 1);
        free(old_home);
    } else {
        unsetenv("HF_HOME");
    }
    free(p);
    free(src);
    rm_rf(root);
}

/* ---- dummy weights ---- */

typedef struct {
    const char *dir;
    int64_t params;   /* expected parameter count */
    size_t n_tensors;
} dummy_case_t;

PD_TEST(test_dummy_configs)
{
    /* parameter counts from the shapes: embeddings + layers (+ lm_head when untied) */
    const dummy_case_t cases[] = {
        {"configs/models/llama-3.1-8b", 8030261248ll, 32 * 9 + 3},
        {"configs/models/llama-3.1-70b", 70553706496ll, 80 * 9 + 3},
        {"configs/models/qwen2.5-7b", 7615616512ll, 28 * 12 + 3},
        {"configs/models/smollm2-135m", 134515008ll, 30 * 9 + 2},
        {"configs/models/opt-125m", 125239296ll, 12 * 16 + 4},
    };
    for (size_t i = 0; i < PD_ARRAY_SIZE(cases); i++) {
        eng_load_opts_t o;
        eng_model_t *m = NULL;
        char *path = src_path(cases[i].dir);
        eng_load_opts_init(&o);
        o.model = path;
        o.load_format = "dummy";
        o.dummy_no_data = true;
        double t0 = pd_now_s();
        PD_CHECK_STATUS(eng_model_load(&o, &m), PD_OK);
        double dt = pd_now_s() - t0;
        if (m == NULL) {
            free(path);
            continue;
        }
        int64_t params = 0;
        for (size_t k = 0; k < eng_model_n_tensors(m); k++) {
            params += eng_tensor_nelements(eng_model_tensor_at(m, k));
            PD_CHECK(eng_model_tensor_at(m, k)->data == NULL);
        }
        if (params != cases[i].params)
            fprintf(stderr, "  %s: %lld params, expected %lld\n", cases[i].dir,
                    (long long)params, (long long)cases[i].params);
        PD_CHECK_EQ_INT(params, cases[i].params);
        PD_CHECK_EQ_INT(eng_model_n_tensors(m), cases[i].n_tensors);
        PD_CHECK(eng_model_format(m) == ENG_FORMAT_DUMMY);
        printf("  %s: %lld params, %.2f GiB in %s, shapes in %.2f ms\n", cases[i].dir,
               (long long)params, (double)eng_model_nbytes(m) / (1 << 30),
               eng_dtype_name(eng_model_config(m)->dtype), dt * 1e3);
        eng_model_destroy(m);
        free(path);
    }
    /* the 8B config's derived numbers */
    eng_load_opts_t o;
    eng_model_config_t cfg;
    char *path = src_path("configs/models/llama-3.1-8b");
    eng_load_opts_init(&o);
    o.model = path;
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK_EQ_INT(cfg.max_model_len, 131072);
    PD_CHECK(cfg.rope_scaling.type == ENG_ROPE_SCALING_LLAMA3 && cfg.dtype == ENG_DTYPE_BF16);
    PD_CHECK_EQ_INT(cfg.n_eos, 3);
    free(path);
}

PD_TEST(test_dummy_values)
{
    eng_load_opts_t o;
    eng_model_t *a = NULL, *b = NULL, *c = NULL;
    char *path = src_path("configs/models/smollm2-135m");

    eng_load_opts_init(&o);
    o.model = path;
    o.load_format = "dummy";
    o.seed = 7;
    o.dtype = "float32";
    double t0 = pd_now_s();
    PD_CHECK_STATUS(eng_model_load(&o, &a), PD_OK);
    double dt = pd_now_s() - t0;
    o.dummy_threads = 1;
    PD_CHECK_STATUS(eng_model_load(&o, &b), PD_OK);
    o.seed = 8;
    o.dummy_threads = 0;
    PD_CHECK_STATUS(eng_model_load(&o, &c), PD_OK);
    if (a != NULL && b != NULL && c != NULL) {
        const eng_tensor_t *ta = eng_model_tensor(a, "token_embd.weight");
        const eng_tensor_t *tb = eng_model_tensor(b, "token_embd.weight");
        const eng_tensor_t *tc = eng_model_tensor(c, "token_embd.weight");
        PD_CHECK(ta->type == ENG_DTYPE_F32);
        PD_CHECK(memcmp(ta->data, tb->data, ta->nbytes) == 0); /* threads do not matter */
        PD_CHECK(memcmp(ta->data, tc->data, ta->nbytes) != 0); /* the seed does */
        const float *v = ta->data;
        size_t n = (size_t)eng_tensor_nelements(ta), out = 0;
        double mean = 0, mn = 1, mx = -1;
        for (size_t i = 0; i < n; i++) {
            out += !(v[i] >= -1e-3f && v[i] <= 1e-3f);
            mean += v[i];
            mn = v[i] < mn ? v[i] : mn;
            mx = v[i] > mx ? v[i] : mx;
        }
        mean /= (double)n;
        PD_CHECK_EQ_INT(out, 0);
        PD_CHECK(fabs(mean) < 1e-5 && mn < -0.99e-3 && mx > 0.99e-3);
        const eng_tensor_t *norm = eng_model_tensor(a, "blk.4.ffn_norm.weight");
        PD_CHECK(norm != NULL && ((const float *)norm->data)[17] == 1.0f);
        /* two tensors of the same shape get different values */
        PD_CHECK(memcmp(eng_model_tensor(a, "blk.0.attn_q.weight")->data,
                        eng_model_tensor(a, "blk.1.attn_q.weight")->data, 64) != 0);
        printf("  smollm2-135m dummy f32 (%.0f MiB): %.0f ms\n",
               (double)eng_model_nbytes(a) / 1048576.0, dt * 1e3);
    }
    eng_model_destroy(a);
    eng_model_destroy(b);
    eng_model_destroy(c);
    /* OPT dummy in bf16: layer-norm biases zero */
    free(path);
    path = src_path("configs/models/opt-125m");
    o.model = path;
    o.dtype = NULL;
    PD_CHECK_STATUS(eng_model_load(&o, &a), PD_OK);
    if (a != NULL) {
        const eng_tensor_t *bias = eng_model_tensor(a, "blk.2.attn_norm.bias");
        PD_CHECK(bias != NULL && bias->type == ENG_DTYPE_F16 && ((const uint16_t *)bias->data)[3] == 0);
        eng_model_destroy(a);
    }
    free(path);

    /* eng_dummy_fill: position-keyed, so chunked fills equal one fill */
    uint16_t whole[1000], parts[1000];
    PD_CHECK_STATUS(eng_dummy_fill(ENG_DTYPE_BF16, whole, 1000, 1, 2, 0), PD_OK);
    PD_CHECK_STATUS(eng_dummy_fill(ENG_DTYPE_BF16, parts, 333, 1, 2, 0), PD_OK);
    PD_CHECK_STATUS(eng_dummy_fill(ENG_DTYPE_BF16, parts + 333, 667, 1, 2, 333), PD_OK);
    PD_CHECK(memcmp(whole, parts, sizeof(whole)) == 0);
    PD_CHECK_STATUS(eng_dummy_fill(ENG_DTYPE_Q8_0, whole, 32, 1, 2, 0), PD_ERR_UNSUPPORTED);
}

/* The 8B shape in bf16 is ~15 GiB: time one layer's fill and extrapolate. */
PD_TEST(test_dummy_8b_one_layer_timing)
{
    const int64_t h = 4096, ff = 14336, kv = 1024;
    size_t n = (size_t)(h * h * 2 + h * kv * 2 + h * ff * 3); /* q, o, k, v, gate/up/down */
    uint16_t *buf = malloc(n * 2);
    memset(buf, 0, n * 2); /* fault the pages in first: time the generator alone */
    double t0 = pd_now_s();
    clock_t c0 = clock();
    PD_CHECK_STATUS(eng_dummy_fill(ENG_DTYPE_BF16, buf, n, 0, 1, 0), PD_OK);
    double cpu = (double)(clock() - c0) / CLOCKS_PER_SEC;
    double dt = pd_now_s() - t0;
    PD_CHECK(buf[n - 1] != 0 || buf[n - 2] != 0);
    printf("  8B one layer (%.0f MiB bf16, one thread): %.0f ms wall, %.0f ms cpu = %.2f ns per "
           "element; the whole 8B ~ %.1f cpu-s, split over the fill threads\n",
           (double)n * 2 / 1048576.0, dt * 1e3, cpu * 1e3, cpu / (double)n * 1e9,
           cpu * (8030261248.0 / (double)n));
    free(buf);
}

/* RoPE frequencies against transformers' formulas (values from a numpy transcription of
 * modeling_rope_utils: llama3 with the Llama-3.1-8B numbers, yarn on tiny-mistral). */
PD_TEST(test_rope_inv_freq)
{
    eng_load_opts_t o;
    eng_model_config_t cfg;
    float inv[64], scale = 0;
    char *path = src_path("configs/models/llama-3.1-8b");

    eng_load_opts_init(&o);
    o.model = path;
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK_STATUS(eng_model_rope_inv_freq(&cfg, inv, &scale), PD_OK);
    const int idx[] = {0, 20, 40, 45, 50, 63};
    const double want[] = {1.0, 0.016560440883040428, 3.428102354519069e-05,
                           1.2297638932068367e-05, 4.411534519022098e-06,
                           3.068925877869333e-07};
    for (int i = 0; i < 6; i++)
        PD_CHECK(fabs(inv[idx[i]] - want[i]) <= 1e-6 * want[i]);
    PD_CHECK(scale == 1.0f);
    free(path);

    path = src_path("tests/data/models/tiny-mistral");
    o.model = path;
    o.rope_scaling = "{\"rope_type\": \"yarn\", \"factor\": 4, "
                     "\"original_max_position_embeddings\": 256}";
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK_STATUS(eng_model_rope_inv_freq(&cfg, inv, &scale), PD_OK);
    const double want_yarn[] = {1.0, 0.13337095081806183, 0.015811387449502945,
                                0.0014058533124625683, 0.0002500000118743628,
                                4.4456985051510856e-05, 7.905694474175107e-06,
                                1.405853367941745e-06};
    for (int i = 0; i < 8; i++)
        PD_CHECK(fabs(inv[i] - want_yarn[i]) <= 1e-6 * want_yarn[i]);
    PD_CHECK(fabsf(scale - 1.1386294f) < 1e-6f);
    /* OPT has no rotary embedding */
    free(path);
    path = src_path("configs/models/opt-125m");
    o.model = path;
    o.rope_scaling = NULL;
    PD_CHECK_STATUS(eng_model_load_config(&o, &cfg), PD_OK);
    PD_CHECK_STATUS(eng_model_rope_inv_freq(&cfg, inv, &scale), PD_ERR_INVAL);
    free(path);
}

int main(void)
{
    pd_log_set_level(PD_LOG_LEVEL_CRIT);
    PD_RUN(test_default_gguf);
    PD_RUN(test_default_gguf_rope_equivalence);
    PD_RUN(test_gguf_matches_hf);
    PD_RUN(test_tiny_llama_sharded);
    PD_RUN(test_tiny_mistral_qwen_opt);
    PD_RUN(test_options_and_errors);
    PD_RUN(test_broken_directories);
    PD_RUN(test_ignore_patterns);
    PD_RUN(test_hf_cache_layout);
    PD_RUN(test_dummy_configs);
    PD_RUN(test_dummy_values);
    PD_RUN(test_dummy_8b_one_layer_timing);
    PD_RUN(test_rope_inv_freq);
    return PD_TEST_REPORT();
}
