#define _GNU_SOURCE /* asprintf */
/*
 * eng_model.c - loading a model: picking the format, building the configuration, the
 * canonical tensor table, and where the tokenizer and chat template come from.
 *
 * Invariants of a loaded model: every tensor the configuration needs is present with
 * the shape eng_hfconfig_for_each_tensor() gives (checked at load); tensor data either
 * points into a file mapping held by the model (gguf / st) or into memory the model
 * owns (owned / dummy_block); names are unique (the index is a hash of them).
 */
#include <dirent.h>
#include <fnmatch.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eng_model_int.h"
#include "pd_log.h"
#include "pd_util.h"

void eng_load_opts_init(eng_load_opts_t *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->keep_quantized = true;
    opts->dequant_dtype = ENG_DTYPE_F32;
}

int64_t eng_tensor_nelements(const eng_tensor_t *t)
{
    return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
}

pd_status_t eng_tensor_dequant_rows(const eng_tensor_t *t, int64_t row0, int64_t n_rows,
                                    float *dst)
{
    size_t row_bytes;
    int64_t total_rows = t->ne[1] * t->ne[2] * t->ne[3];
    pd_status_t st;

    if (t->data == NULL)
        return PD_ERR_INVAL;
    if (row0 < 0 || n_rows < 0 || row0 > total_rows || n_rows > total_rows - row0)
        return PD_ERR_RANGE;
    if ((st = eng_dtype_row_bytes(t->type, t->ne[0], &row_bytes)) != PD_OK)
        return st;
    for (int64_t r = 0; r < n_rows; r++) {
        st = eng_dequant_row(t->type, (const uint8_t *)t->data + (size_t)(row0 + r) * row_bytes,
                             dst + r * t->ne[0], t->ne[0]);
        if (st != PD_OK)
            return st;
    }
    return PD_OK;
}

/* ---- the tensor table ---- */

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    while (*s)
        h = (h ^ (uint8_t)*s++) * 1099511628211ull;
    return h;
}

static pd_status_t index_grow(eng_model_t *m)
{
    size_t cap = m->index_cap ? m->index_cap * 2 : 1024;
    uint32_t *idx = calloc(cap, sizeof(*idx));
    if (idx == NULL)
        return PD_ERR_NOMEM;
    for (size_t i = 0; i < m->n_tensors; i++) {
        size_t h = hash_name(m->tensors[i].name) & (cap - 1);
        while (idx[h] != 0)
            h = (h + 1) & (cap - 1);
        idx[h] = (uint32_t)(i + 1);
    }
    free(m->index);
    m->index = idx;
    m->index_cap = cap;
    return PD_OK;
}

static eng_tensor_t *lookup(const eng_model_t *m, const char *name)
{
    if (m->index_cap == 0)
        return NULL;
    size_t h = hash_name(name) & (m->index_cap - 1);
    while (m->index[h] != 0) {
        eng_tensor_t *t = &m->tensors[m->index[h] - 1];
        if (strcmp(t->name, name) == 0)
            return t;
        h = (h + 1) & (m->index_cap - 1);
    }
    return NULL;
}

pd_status_t eng_model_add_tensor(eng_model_t *m, const char *name, eng_dtype_t type,
                                 int n_dims, const int64_t ne[4], void *data, size_t nbytes)
{
    eng_tensor_t *t;

    if (strlen(name) >= ENG_TENSOR_NAME_MAX) {
        PD_LOG_ERR("model: tensor name '%s' is too long", name);
        return PD_ERR_FORMAT;
    }
    if (lookup(m, name) != NULL) {
        PD_LOG_ERR("model: tensor '%s' appears twice", name);
        return PD_ERR_FORMAT;
    }
    if (m->n_tensors == m->cap_tensors) {
        size_t cap = m->cap_tensors ? m->cap_tensors * 2 : 256;
        eng_tensor_t *nt = realloc(m->tensors, cap * sizeof(*nt));
        if (nt == NULL)
            return PD_ERR_NOMEM;
        m->tensors = nt;
        m->cap_tensors = cap;
    }
    if ((m->n_tensors + 1) * 2 > m->index_cap && index_grow(m) != PD_OK)
        return PD_ERR_NOMEM;
    t = &m->tensors[m->n_tensors];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < 4; d++)
        t->ne[d] = ne[d];
    t->data = data;
    t->nbytes = nbytes;
    size_t h = hash_name(name) & (m->index_cap - 1);
    while (m->index[h] != 0)
        h = (h + 1) & (m->index_cap - 1);
    m->index[h] = (uint32_t)(m->n_tensors + 1);
    m->n_tensors++;
    return PD_OK;
}

/* Take ownership of a malloc'd buffer (freed with the model). */
static pd_status_t own(eng_model_t *m, void *buf)
{
    if (m->n_owned == m->cap_owned) {
        size_t cap = m->cap_owned ? m->cap_owned * 2 : 64;
        void **no = realloc(m->owned, cap * sizeof(*no));
        if (no == NULL)
            return PD_ERR_NOMEM;
        m->owned = no;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = buf;
    return PD_OK;
}

/* ---- small file helpers ---- */

static char *path_join(const char *dir, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0)
        return NULL;
    return p;
}

static bool is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static bool is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static bool has_gguf_magic(const char *path)
{
    char magic[4];
    FILE *f = fopen(path, "rb");
    bool ok;
    if (f == NULL)
        return false;
    ok = fread(magic, 1, 4, f) == 4 && memcmp(magic, "GGUF", 4) == 0;
    fclose(f);
    return ok;
}

/* Read and parse a JSON file; *json_p NULL (and PD_OK) when the file is absent. */
static pd_status_t read_json(const char *path, cJSON **json_p)
{
    char *data;
    size_t len;
    pd_status_t st;

    *json_p = NULL;
    if (!is_file(path))
        return PD_OK;
    if ((st = pd_read_file(path, &data, &len)) != PD_OK) {
        PD_LOG_ERR("model: cannot read %s: %s", path, pd_status_str(st));
        return st;
    }
    *json_p = cJSON_ParseWithLength(data, len);
    free(data);
    if (*json_p == NULL) {
        PD_LOG_ERR("model: %s is not valid JSON", path);
        return PD_ERR_FORMAT;
    }
    return PD_OK;
}

/* Files in dir whose names end with suffix, sorted; *names_p is a malloc'd array of
 * malloc'd names. */
static pd_status_t list_dir(const char *dir, const char *suffix, char ***names_p, size_t *n_p)
{
    struct dirent **ents = NULL;
    int n = scandir(dir, &ents, NULL, alphasort);
    char **names;
    size_t k = 0;

    if (n < 0) {
        PD_LOG_ERR("model: cannot list %s", dir);
        return PD_ERR_IO;
    }
    names = calloc((size_t)n + 1, sizeof(*names));
    for (int i = 0; i < n; i++) {
        if (names != NULL && ends_with(ents[i]->d_name, suffix) && ents[i]->d_name[0] != '.')
            names[k++] = strdup(ents[i]->d_name);
        free(ents[i]);
    }
    free(ents);
    if (names == NULL)
        return PD_ERR_NOMEM;
    *names_p = names;
    *n_p = k;
    return PD_OK;
}

static void free_list(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* ---- load options ---- */

static pd_status_t check_formats(const eng_load_opts_t *o, eng_model_format_t *fmt_p, bool *auto_p)
{
    static const char *unsupported[] = {"pt", "npcache", "tensorizer", "bitsandbytes",
                                        "sharded_state", "mistral", "runai_streamer",
                                        "runai_streamer_sharded", "fastsafetensors"};
    const char *lf = o->load_format;

    *auto_p = false;
    if (lf == NULL || strcmp(lf, "auto") == 0)
        *auto_p = true;
    else if (strcmp(lf, "safetensors") == 0)
        *fmt_p = ENG_FORMAT_SAFETENSORS;
    else if (strcmp(lf, "gguf") == 0)
        *fmt_p = ENG_FORMAT_GGUF;
    else if (strcmp(lf, "dummy") == 0)
        *fmt_p = ENG_FORMAT_DUMMY;
    else {
        for (size_t i = 0; i < PD_ARRAY_SIZE(unsupported); i++)
            if (strcmp(lf, unsupported[i]) == 0) {
                PD_LOG_ERR("--load-format %s is not supported yet (auto, safetensors, gguf "
                           "and dummy are)", lf);
                return PD_ERR_UNSUPPORTED;
            }
        PD_LOG_ERR("--load-format '%s' is unknown (auto, safetensors, gguf, dummy)", lf);
        return PD_ERR_INVAL;
    }
    if (o->config_format != NULL && strcmp(o->config_format, "auto") != 0 &&
        strcmp(o->config_format, "hf") != 0) {
        if (strcmp(o->config_format, "mistral") == 0) {
            PD_LOG_ERR("--config-format mistral is not supported yet (auto and hf are)");
            return PD_ERR_UNSUPPORTED;
        }
        PD_LOG_ERR("--config-format '%s' is unknown (auto, hf)", o->config_format);
        return PD_ERR_INVAL;
    }
    if (o->dequant_dtype != ENG_DTYPE_F32 && o->dequant_dtype != ENG_DTYPE_F16 &&
        o->dequant_dtype != ENG_DTYPE_BF16) {
        PD_LOG_ERR("model: dequant_dtype must be F32, F16 or BF16");
        return PD_ERR_INVAL;
    }
    return PD_OK;
}

/* Apply --hf-overrides to a config object. */
static pd_status_t apply_overrides(cJSON *config, const eng_load_opts_t *o)
{
    cJSON *ov;
    pd_status_t st;

    if (o->hf_overrides == NULL || o->hf_overrides[0] == '\0')
        return PD_OK;
    ov = cJSON_Parse(o->hf_overrides);
    if (ov == NULL || !cJSON_IsObject(ov)) {
        PD_LOG_ERR("--hf-overrides is not a JSON object: %s", o->hf_overrides);
        cJSON_Delete(ov);
        return PD_ERR_INVAL;
    }
    st = eng_hfconfig_merge(config, ov);
    cJSON_Delete(ov);
    return st;
}

/* ---- tokenizer sources ---- */

static pd_status_t dup_str(const char *s, char **out)
{
    *out = strdup(s);
    return *out ? PD_OK : PD_ERR_NOMEM;
}

static pd_status_t load_tokenizer_dir(eng_model_t *m, const char *dir)
{
    static const char *special_keys[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    char *p;
    cJSON *tc = NULL;
    pd_status_t st = PD_OK;

    if ((p = path_join(dir, "tokenizer.json")) == NULL)
        return PD_ERR_NOMEM;
    if (m->tokenizer_json == NULL && is_file(p))
        m->tokenizer_json = p; /* unless --tokenizer named a tokenizer.json file */
    else
        free(p);
    if ((p = path_join(dir, "tokenizer_config.json")) == NULL)
        return PD_ERR_NOMEM;
    if (!is_file(p)) {
        free(p);
    } else {
        m->tokenizer_config = p;
        if ((st = read_json(p, &tc)) != PD_OK)
            return st;
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(tc, "chat_template");
        if (cJSON_IsString(ct)) {
            st = dup_str(ct->valuestring, &m->chat_template);
        } else if (cJSON_IsArray(ct)) {
            /* a list of {"name", "template"}: take "default", else the first */
            const cJSON *e, *pick = NULL;
            cJSON_ArrayForEach(e, ct) {
                const cJSON *n = cJSON_GetObjectItemCaseSensitive(e, "name");
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "template");
                if (!cJSON_IsString(t))
                    continue;
                if (pick == NULL || (cJSON_IsString(n) && strcmp(n->valuestring, "default") == 0))
                    pick = t;
            }
            if (pick != NULL)
                st = dup_str(pick->valuestring, &m->chat_template);
        }
        for (int i = 0; i < 4 && st == PD_OK; i++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(tc, special_keys[i]);
            if (cJSON_IsObject(v))
                v = cJSON_GetObjectItemCaseSensitive(v, "content");
            if (cJSON_IsString(v))
                st = dup_str(v->valuestring, &m->special[i]);
        }
        cJSON_Delete(tc);
        if (st != PD_OK)
            return st;
    }
    if (m->chat_template == NULL) {
        /* newer checkpoints keep the template in its own file */
        char *data;
        size_t len;
        if ((p = path_join(dir, "chat_template.jinja")) == NULL)
            return PD_ERR_NOMEM;
        if (is_file(p) && pd_read_file(p, &data, &len) == PD_OK)
            m->chat_template = data;
        free(p);
    }
    if (m->chat_template == NULL) {
        if ((p = path_join(dir, "chat_template.json")) == NULL)
            return PD_ERR_NOMEM;
        st = read_json(p, &tc);
        free(p);
        if (st != PD_OK)
            return st;
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(tc, "chat_template");
        if (cJSON_IsString(ct))
            st = dup_str(ct->valuestring, &m->chat_template);
        cJSON_Delete(tc);
    }
    return st;
}

/* The chat template and the special-token strings from a GGUF's tokenizer metadata, for
 * the ones still unset (a --tokenizer source, read first, wins over the model's file). */
static pd_status_t gguf_tokenizer_meta(eng_model_t *m, const eng_gguf_t *g)
{
    static const char *id_keys[4] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                     "tokenizer.ggml.unknown_token_id",
                                     "tokenizer.ggml.padding_token_id"};
    const char *s;
    size_t len;

    if (m->chat_template == NULL &&
        eng_gguf_get_str_dup(g, "tokenizer.chat_template", &m->chat_template) == PD_ERR_NOMEM)
        return PD_ERR_NOMEM;
    for (int i = 0; i < 4; i++) {
        int64_t id;
        if (m->special[i] != NULL || eng_gguf_get_i64(g, id_keys[i], &id) != PD_OK || id < 0 ||
            eng_gguf_get_arr_str(g, "tokenizer.ggml.tokens", (size_t)id, &s, &len) != PD_OK)
            continue;
        m->special[i] = strndup(s, len);
        if (m->special[i] == NULL)
            return PD_ERR_NOMEM;
    }
    return PD_OK;
}

static pd_status_t load_tokenizer(eng_model_t *m, const eng_load_opts_t *o, const char *model_dir)
{
    const char *tok = o->tokenizer;
    char *dir = NULL;
    pd_status_t st;

    /* As in vLLM the tokenizer defaults to the model; for a model id in the cache,
     * --tokenizer-revision alone then picks another snapshot of it for the tokenizer. */
    if ((tok == NULL || tok[0] == '\0') && o->tokenizer_revision != NULL &&
        o->tokenizer_revision[0] != '\0' && model_dir != NULL && o->model != NULL &&
        access(o->model, F_OK) != 0)
        tok = o->model;
    if (tok != NULL && tok[0] != '\0') {
        st = eng_model_resolve_path(tok, o->tokenizer_revision ? o->tokenizer_revision
                                                               : o->revision,
                                    o->download_dir, &dir);
        if (st != PD_OK)
            return st;
        if (!is_dir(dir) && ends_with(dir, ".gguf")) {
            /* a GGUF file's tokenizer (the default model's, for dummy weights) */
            st = eng_gguf_open(dir, &m->tok_gguf);
            if (st == PD_OK && eng_gguf_find_key(m->tok_gguf, "tokenizer.ggml.tokens") < 0) {
                PD_LOG_ERR("--tokenizer %s: the GGUF file has no tokenizer.ggml.tokens", dir);
                st = PD_ERR_FORMAT;
            }
            free(dir);
            return st == PD_OK ? gguf_tokenizer_meta(m, m->tok_gguf) : st;
        }
        if (!is_dir(dir)) {
            /* a tokenizer.json file given directly */
            char *slash = strrchr(dir, '/');
            if (ends_with(dir, "tokenizer.json")) {
                m->tokenizer_json = strdup(dir);
                if (m->tokenizer_json == NULL) {
                    free(dir);
                    return PD_ERR_NOMEM;
                }
                if (slash != NULL) {
                    *slash = '\0';
                } else {
                    free(dir);
                    dir = strdup(".");
                }
            } else {
                PD_LOG_ERR("--tokenizer %s is neither a directory, a tokenizer.json nor a "
                           ".gguf file", dir);
                free(dir);
                return PD_ERR_INVAL;
            }
        }
        st = dir ? load_tokenizer_dir(m, dir) : PD_ERR_NOMEM;
        free(dir);
        return st;
    }
    return model_dir ? load_tokenizer_dir(m, model_dir) : PD_OK;
}

static pd_status_t load_gen_config(eng_model_t *m, const char *dir)
{
    char *p;
    pd_status_t st;

    if (dir == NULL)
        return PD_OK;
    if ((p = path_join(dir, "generation_config.json")) == NULL)
        return PD_ERR_NOMEM;
    st = read_json(p, &m->gen_json);
    free(p);
    if (st == PD_OK)
        eng_hfconfig_parse_gen(m->gen_json, &m->gen, &m->cfg);
    return st;
}

/* ---- tensor validation against the config ---- */

static pd_status_t check_one(void *arg, const char *name, int n_dims, const int64_t ne[4], int kind)
{
    eng_model_t *m = arg;
    const eng_tensor_t *t = lookup(m, name);

    (void)n_dims;
    (void)kind;
    if (t == NULL) {
        PD_LOG_ERR("model: tensor '%s' is missing (architecture %s needs it)", name,
                   eng_arch_name(m->cfg.arch));
        return PD_ERR_FORMAT;
    }
    for (int d = 0; d < 4; d++)
        if (t->ne[d] != ne[d]) {
            PD_LOG_ERR("model: tensor '%s' has shape [%lld, %lld, %lld, %lld]; the config "
                       "says [%lld, %lld, %lld, %lld] (ne order, fastest first)", name,
                       (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                       (long long)t->ne[3], (long long)ne[0], (long long)ne[1],
                       (long long)ne[2], (long long)ne[3]);
            return PD_ERR_FORMAT;
        }
    if (t->data != NULL && !eng_dtype_can_dequant(t->type)) {
        PD_LOG_ERR("model: tensor '%s' has type %s, not supported yet (F32, F16, BF16, Q8_0, "
                   "Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K are)", name,
                   eng_dtype_name(t->type));
        return PD_ERR_UNSUPPORTED;
    }
    return PD_OK;
}

/* ---- GGUF ---- */

/* HF row (h, i, j) of a llama Q/K weight sits at GGUF row h*hd + 2j + i: llama.cpp's
 * converter interleaves the two rotary halves for its non-neox rope. */
static void unpermute_rows(const uint8_t *src, uint8_t *dst, size_t row_bytes, int64_t n_rows,
                           int n_head)
{
    int64_t hd = n_rows / n_head, half = hd / 2;
    for (int64_t h = 0; h < n_head; h++)
        for (int64_t i = 0; i < 2; i++)
            for (int64_t j = 0; j < half; j++)
                memcpy(dst + (size_t)(h * hd + i * half + j) * row_bytes,
                       src + (size_t)(h * hd + 2 * j + i) * row_bytes, row_bytes);
}

typedef struct {
    eng_dtype_t from, to;
    const uint8_t *src;
    uint8_t *dst;
    size_t in_row, out_row;
    int64_t r0, r1, n;
} convert_job_t;

static void *convert_thread(void *arg)
{
    convert_job_t *j = arg;
    for (int64_t r = j->r0; r < j->r1; r++)
        eng_convert_row(j->from, j->src + (size_t)r * j->in_row, j->to,
                        j->dst + (size_t)r * j->out_row, j->n);
    return NULL;
}

/* Dequantize rows on up to 16 threads (large tensors only; the result does not depend on
 * the split). */
static void convert_rows(eng_dtype_t from, const uint8_t *src, size_t in_row, eng_dtype_t to,
                         void *dst, size_t out_row, int64_t rows, int64_t n)
{
    enum { MAX_THREADS = 16 };
    pthread_t th[MAX_THREADS];
    convert_job_t jobs[MAX_THREADS];
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = (int)PD_MAX(1, PD_MIN(ncpu, (long)MAX_THREADS)), started = 0;

    if ((double)rows * (double)n < (double)(1 << 20))
        nt = 1;
    for (int t = 0; t < nt; t++) {
        jobs[t] = (convert_job_t){from, to, src, dst, in_row, out_row, rows * t / nt,
                                  rows * (t + 1) / nt, n};
        if (nt == 1 || pthread_create(&th[started], NULL, convert_thread, &jobs[t]) != 0)
            convert_thread(&jobs[t]);
        else
            started++;
    }
    for (int t = 0; t < started; t++)
        pthread_join(th[t], NULL);
}

static pd_status_t add_gguf_tensor(eng_model_t *m, const eng_gguf_tensor_info_t *gt,
                                   const eng_load_opts_t *o, bool unpermute_llama)
{
    const uint8_t *src = gt->data;
    uint8_t *permuted = NULL;
    eng_dtype_t type = gt->type;
    size_t nbytes = gt->nbytes;
    int n_head = 0;
    pd_status_t st;

    if (unpermute_llama) {
        if (strstr(gt->name, ".attn_q.") != NULL)
            n_head = m->cfg.n_heads;
        else if (strstr(gt->name, ".attn_k.") != NULL)
            n_head = m->cfg.n_kv_heads;
    }
    if (n_head > 0) {
        /* weights permute rows (ne[1]); biases permute elements (ne[0]) */
        bool bias = gt->n_dims == 1;
        int64_t n_rows = bias ? gt->ne[0] : gt->ne[1] * gt->ne[2] * gt->ne[3];
        size_t row_bytes = bias ? eng_dtype_block_bytes(type) : 0;
        if (!bias && (st = eng_dtype_row_bytes(type, gt->ne[0], &row_bytes)) != PD_OK)
            return st;
        if ((bias && eng_dtype_block_size(type) != 1) || n_rows % n_head != 0 ||
            (n_rows / n_head) % 2 != 0) {
            PD_LOG_ERR("gguf: tensor '%s' cannot be un-permuted for %d heads", gt->name, n_head);
            return PD_ERR_FORMAT;
        }
        permuted = malloc(nbytes ? nbytes : 1);
        if (permuted == NULL)
            return PD_ERR_NOMEM;
        unpermute_rows(src, permuted, row_bytes, n_rows, n_head);
        src = permuted;
    }
    if (!o->keep_quantized && eng_dtype_is_quantized(type)) {
        eng_dtype_t to = o->dequant_dtype;
        int64_t rows = gt->ne[1] * gt->ne[2] * gt->ne[3];
        size_t in_row, out_row, out_bytes;
        void *out;
        if (!eng_dtype_can_dequant(type)) {
            PD_LOG_ERR("gguf: tensor '%s' has type %s, which cannot be dequantized yet",
                       gt->name, eng_dtype_name(type));
            free(permuted);
            return PD_ERR_UNSUPPORTED;
        }
        if (eng_dtype_row_bytes(type, gt->ne[0], &in_row) != PD_OK ||
            eng_dtype_row_bytes(to, gt->ne[0], &out_row) != PD_OK ||
            pd_mul_size(out_row, (size_t)rows, &out_bytes) != PD_OK) {
            free(permuted);
            return PD_ERR_OVERFLOW;
        }
        out = malloc(out_bytes ? out_bytes : 1);
        if (out == NULL) {
            free(permuted);
            return PD_ERR_NOMEM;
        }
        convert_rows(type, src, in_row, to, out, out_row, rows, gt->ne[0]);
        free(permuted);
        permuted = NULL;
        if ((st = own(m, out)) != PD_OK) {
            free(out);
            return st;
        }
        src = out;
        type = to;
        nbytes = out_bytes;
    } else if (permuted != NULL && (st = own(m, permuted)) != PD_OK) {
        free(permuted);
        return st;
    }
    return eng_model_add_tensor(m, gt->name, type, gt->n_dims, gt->ne, (void *)src, nbytes);
}

static pd_status_t gguf_config(const char *path, const eng_load_opts_t *o, eng_gguf_t **g_p,
                               cJSON **json_p, eng_model_config_t *cfg)
{
    eng_gguf_t *g;
    cJSON *json = NULL;
    pd_status_t st;

    if ((st = eng_gguf_open(path, &g)) != PD_OK)
        return st;
    if ((st = eng_hfconfig_from_gguf(g, &json)) != PD_OK ||
        (st = apply_overrides(json, o)) != PD_OK ||
        (st = eng_hfconfig_parse(json, o, cfg)) != PD_OK) {
        cJSON_Delete(json);
        eng_gguf_close(g);
        return st;
    }
    cfg->quantized = false;
    for (size_t i = 0; i < eng_gguf_n_tensors(g); i++)
        cfg->quantized |= eng_dtype_is_quantized(eng_gguf_tensor(g, i)->type);
    *g_p = g;
    *json_p = json;
    return PD_OK;
}

static pd_status_t load_gguf(eng_model_t *m, const char *path, const eng_load_opts_t *o,
                             bool dummy)
{
    pd_status_t st;
    char *dir, *slash;
    size_t len;

    if ((st = gguf_config(path, o, &m->gguf, &m->hf_config, &m->cfg)) != PD_OK)
        return st;
    if (!dummy) {
        const char *arch = "";
        eng_gguf_get_str(m->gguf, "general.architecture", &arch, &len);
        bool llama = len == 5 && memcmp(arch, "llama", 5) == 0;
        for (size_t i = 0; i < eng_gguf_n_tensors(m->gguf); i++)
            if ((st = add_gguf_tensor(m, eng_gguf_tensor(m->gguf, i), o, llama)) != PD_OK)
                return st;
    }
    /* tokenizer: --tokenizer files when given, else the GGUF metadata */
    dir = strdup(path);
    if (dir == NULL)
        return PD_ERR_NOMEM;
    slash = strrchr(dir, '/');
    if (slash != NULL)
        *slash = '\0';
    else
        strcpy(dir, ".");
    st = load_tokenizer(m, o, NULL);
    if (st == PD_OK)
        st = load_gen_config(m, dir);
    free(dir);
    if (st != PD_OK)
        return st;
    return gguf_tokenizer_meta(m, m->gguf);
}

/* ---- Hugging Face directories ---- */

static pd_status_t hf_config(const char *dir, const eng_load_opts_t *o, cJSON **json_p,
                             eng_model_config_t *cfg)
{
    char *p = path_join(dir, "config.json");
    cJSON *json = NULL;
    pd_status_t st;

    if (p == NULL)
        return PD_ERR_NOMEM;
    st = read_json(p, &json);
    if (st == PD_OK && json == NULL) {
        PD_LOG_ERR("model: %s is missing", p);
        st = PD_ERR_NOT_FOUND;
    }
    free(p);
    if (st == PD_OK && (st = apply_overrides(json, o)) == PD_OK)
        st = eng_hfconfig_parse(json, o, cfg);
    if (st != PD_OK) {
        cJSON_Delete(json);
        return st;
    }
    *json_p = json;
    return PD_OK;
}

/* The safetensors files of a directory: those named in model.safetensors.index.json,
 * else every *.safetensors. */
static pd_status_t st_files(const char *dir, char ***names_p, size_t *n_p)
{
    char *p = path_join(dir, "model.safetensors.index.json");
    cJSON *idx = NULL;
    pd_status_t st;

    if (p == NULL)
        return PD_ERR_NOMEM;
    st = read_json(p, &idx);
    free(p);
    if (st != PD_OK)
        return st;
    if (idx == NULL)
        return list_dir(dir, ".safetensors", names_p, n_p);

    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map"), *e;
    size_t n = 0, cap = (size_t)cJSON_GetArraySize(wm) + 1;
    char **names = calloc(cap, sizeof(*names));
    if (!cJSON_IsObject(wm)) {
        PD_LOG_ERR("model: %s/model.safetensors.index.json has no weight_map", dir);
        st = PD_ERR_FORMAT;
        goto out;
    }
    if (names == NULL) {
        st = PD_ERR_NOMEM;
        goto out;
    }
    cJSON_ArrayForEach(e, wm) {
        bool seen = false;
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/') != NULL ||
            e->valuestring[0] == '.' || e->valuestring[0] == '\0') {
            PD_LOG_ERR("model: weight_map entry '%s' is not a file name in the directory",
                       e->string);
            st = PD_ERR_FORMAT;
            goto out;
        }
        for (size_t i = 0; i < n && !seen; i++)
            seen = strcmp(names[i], e->valuestring) == 0;
        if (!seen && (names[n++] = strdup(e->valuestring)) == NULL) {
            st = PD_ERR_NOMEM;
            goto out;
        }
    }
    *names_p = names;
    *n_p = n;
    names = NULL;
out:
    if (names != NULL)
        free_list(names, n);
    cJSON_Delete(idx);
    return st;
}

static pd_status_t add_st_tensor(eng_model_t *m, const eng_st_tensor_t *t, const char *canon)
{
    void *data = (void *)t->data;
    size_t es = eng_dtype_block_bytes(t->type);

    if (t->type == ENG_DTYPE_INVALID) {
        PD_LOG_ERR("safetensors: tensor '%s' has dtype %s, not supported yet", t->name, t->dtype);
        return PD_ERR_UNSUPPORTED;
    }
    if (es > 1 && ((uintptr_t)data % es) != 0) {
        /* kernels read whole elements: copy misaligned data once */
        void *copy = aligned_alloc(64, (t->nbytes + 63) & ~(size_t)63);
        if (copy == NULL)
            return PD_ERR_NOMEM;
        memcpy(copy, data, t->nbytes);
        if (own(m, copy) != PD_OK) {
            free(copy);
            return PD_ERR_NOMEM;
        }
        data = copy;
    }
    return eng_model_add_tensor(m, canon, t->type, t->n_dims ? t->n_dims : 1, t->ne, data,
                                t->nbytes);
}

static pd_status_t load_hf_dir(eng_model_t *m, const char *dir, const eng_load_opts_t *o,
                               bool dummy)
{
    char **files = NULL;
    size_t n_files = 0;
    pd_status_t st;

    if ((st = hf_config(dir, o, &m->hf_config, &m->cfg)) != PD_OK)
        return st;
    if (!dummy) {
        if ((st = st_files(dir, &files, &n_files)) != PD_OK)
            return st;
        /* --ignore-patterns (vLLM's: fnmatch on the file's path in the checkpoint) */
        size_t kept = 0, before = n_files;
        for (size_t i = 0; i < n_files; i++) {
            bool skip = false;
            for (int k = 0; k < o->n_ignore_patterns && !skip; k++)
                skip = fnmatch(o->ignore_patterns[k], files[i], 0) == 0;
            if (skip) {
                PD_LOG_INFO("model: %s skipped (--ignore-patterns)", files[i]);
                free(files[i]);
            } else {
                files[kept++] = files[i];
            }
        }
        n_files = kept;
        if (n_files == 0 && before > 0) {
            PD_LOG_ERR("model: every *.safetensors file of %s matches --ignore-patterns", dir);
            free_list(files, n_files);
            return PD_ERR_NOT_FOUND;
        }
        if (n_files == 0) {
            PD_LOG_ERR("model: no *.safetensors files in %s (use --load-format dummy for "
                       "random weights at this config's shape)", dir);
            free_list(files, n_files);
            return PD_ERR_NOT_FOUND;
        }
        m->st = calloc(n_files, sizeof(*m->st));
        if (m->st == NULL) {
            free_list(files, n_files);
            return PD_ERR_NOMEM;
        }
        for (size_t i = 0; i < n_files && st == PD_OK; i++) {
            char *p = path_join(dir, files[i]);
            if (p == NULL) {
                st = PD_ERR_NOMEM;
                break;
            }
            st = eng_safetensors_open(p, &m->st[i]);
            free(p);
            if (st == PD_OK)
                m->n_st++;
        }
        free_list(files, n_files);
        for (size_t f = 0; f < m->n_st && st == PD_OK; f++)
            for (size_t i = 0; i < eng_safetensors_n_tensors(m->st[f]) && st == PD_OK; i++) {
                const eng_st_tensor_t *t = eng_safetensors_tensor(m->st[f], i);
                char canon[ENG_TENSOR_NAME_MAX];
                if (eng_hfconfig_map_name(m->cfg.arch, t->name, canon) != PD_OK) {
                    PD_LOG_DEBUG("safetensors: skipping tensor '%s'", t->name);
                    continue;
                }
                if (m->cfg.tie_embeddings && strcmp(canon, "output.weight") == 0)
                    continue; /* tied: token_embd.weight is the output projection */
                st = add_st_tensor(m, t, canon);
            }
        if (st != PD_OK)
            return st;
    }
    if ((st = load_tokenizer(m, o, dir)) != PD_OK)
        return st;
    return load_gen_config(m, dir);
}

/* ---- entry points ---- */

typedef enum { SRC_DIR, SRC_GGUF, SRC_CONFIG_FILE } src_kind_t;

/* What the resolved path is: a HF dir, a GGUF file (or a dir holding one), or a
 * config.json file (dummy only).  *file_p may be replaced by the GGUF inside a dir. */
static pd_status_t classify(char **path_p, src_kind_t *kind_p)
{
    char *path = *path_p;

    if (!is_dir(path)) {
        if (has_gguf_magic(path) || ends_with(path, ".gguf")) {
            *kind_p = SRC_GGUF;
            return PD_OK;
        }
        if (ends_with(path, ".json")) {
            *kind_p = SRC_CONFIG_FILE;
            return PD_OK;
        }
        PD_LOG_ERR("model: %s is neither a directory, a GGUF file nor a config.json", path);
        return PD_ERR_FORMAT;
    }
    char *cfg = path_join(path, "config.json");
    if (cfg == NULL)
        return PD_ERR_NOMEM;
    bool has_cfg = is_file(cfg);
    free(cfg);
    if (has_cfg) {
        *kind_p = SRC_DIR;
        return PD_OK;
    }
    char **names;
    size_t n;
    pd_status_t st = list_dir(path, ".gguf", &names, &n);
    if (st != PD_OK)
        return st;
    if (n == 1) {
        char *file = path_join(path, names[0]);
        free_list(names, n);
        if (file == NULL)
            return PD_ERR_NOMEM;
        free(path);
        *path_p = file;
        *kind_p = SRC_GGUF;
        return PD_OK;
    }
    free_list(names, n);
    char *params = path_join(path, "params.json");
    bool mistral = params != NULL && is_file(params);
    free(params);
    if (mistral && n == 0) {
        PD_LOG_ERR("model: %s is a Mistral-format checkpoint (params.json, no config.json): "
                   "--config-format mistral is not supported yet", path);
        return PD_ERR_UNSUPPORTED;
    }
    PD_LOG_ERR("model: %s has no config.json and %s", path,
               n == 0 ? "no .gguf file" : "several .gguf files (name one)");
    return PD_ERR_NOT_FOUND;
}

static pd_status_t load_config_file(eng_model_t *m, const char *path, const eng_load_opts_t *o)
{
    pd_status_t st = read_json(path, &m->hf_config);
    if (st == PD_OK && m->hf_config == NULL)
        st = PD_ERR_NOT_FOUND;
    if (st == PD_OK)
        st = apply_overrides(m->hf_config, o);
    if (st == PD_OK)
        st = eng_hfconfig_parse(m->hf_config, o, &m->cfg);
    return st;
}

pd_status_t eng_model_load(const eng_load_opts_t *opts, eng_model_t **model_p)
{
    eng_model_format_t fmt = ENG_FORMAT_SAFETENSORS;
    bool fmt_auto;
    src_kind_t kind;
    eng_model_t *m;
    uint64_t t0 = pd_now_ns();
    pd_status_t st;

    if (opts == NULL || opts->model == NULL)
        return PD_ERR_INVAL;
    if ((st = check_formats(opts, &fmt, &fmt_auto)) != PD_OK)
        return st;
    m = calloc(1, sizeof(*m));
    if (m == NULL)
        return PD_ERR_NOMEM;
    if ((st = eng_model_resolve_path(opts->model, opts->revision, opts->download_dir,
                                     &m->path)) != PD_OK ||
        (st = classify(&m->path, &kind)) != PD_OK)
        goto err_model;
    if (fmt_auto)
        fmt = kind == SRC_GGUF ? ENG_FORMAT_GGUF : kind == SRC_DIR ? ENG_FORMAT_SAFETENSORS
                                                                   : ENG_FORMAT_DUMMY;
    if ((fmt == ENG_FORMAT_GGUF && kind != SRC_GGUF) ||
        (fmt == ENG_FORMAT_SAFETENSORS && kind != SRC_DIR)) {
        PD_LOG_ERR("model: --load-format %s does not fit %s", fmt == ENG_FORMAT_GGUF ? "gguf"
                                                                                     : "safetensors",
                   m->path);
        st = PD_ERR_INVAL;
        goto err_model;
    }
    m->format = fmt;
    bool dummy = fmt == ENG_FORMAT_DUMMY;
    if (kind == SRC_GGUF)
        st = load_gguf(m, m->path, opts, dummy);
    else if (kind == SRC_DIR)
        st = load_hf_dir(m, m->path, opts, dummy);
    else {
        char *dir = strdup(m->path), *slash;
        if (dir == NULL) {
            st = PD_ERR_NOMEM;
            goto err_model;
        }
        slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
        else
            strcpy(dir, ".");
        st = load_config_file(m, m->path, opts);
        if (st == PD_OK)
            st = load_tokenizer(m, opts, dir);
        if (st == PD_OK)
            st = load_gen_config(m, dir);
        free(dir);
    }
    if (st != PD_OK)
        goto err_model;
    if (dummy && (st = eng_dummy_populate(m, opts)) != PD_OK)
        goto err_model;
    if ((st = eng_hfconfig_for_each_tensor(&m->cfg, check_one, m)) != PD_OK)
        goto err_model;
    if (m->cfg.name[0] == '\0')
        snprintf(m->cfg.name, sizeof(m->cfg.name), "%s", opts->model);
    PD_LOG_INFO("model %s: %s, %d layers, hidden %d, %d/%d heads, vocab %lld, %zu tensors "
                "(%.1f MiB), max_model_len %lld, dtype %s, loaded in %.1f ms", m->path,
                eng_arch_name(m->cfg.arch), m->cfg.n_layers, m->cfg.hidden, m->cfg.n_heads,
                m->cfg.n_kv_heads, (long long)m->cfg.vocab_size, m->n_tensors,
                (double)eng_model_nbytes(m) / 1048576.0, (long long)m->cfg.max_model_len,
                eng_dtype_name(m->cfg.dtype), (double)(pd_now_ns() - t0) / 1e6);
    *model_p = m;
    return PD_OK;

err_model:
    eng_model_destroy(m);
    return st;
}

pd_status_t eng_model_load_config(const eng_load_opts_t *opts, eng_model_config_t *cfg_p)
{
    eng_model_format_t fmt;
    bool fmt_auto;
    src_kind_t kind;
    char *path = NULL;
    cJSON *json = NULL;
    eng_gguf_t *g = NULL;
    eng_model_config_t cfg;
    pd_status_t st;

    if (opts == NULL || opts->model == NULL)
        return PD_ERR_INVAL;
    if ((st = check_formats(opts, &fmt, &fmt_auto)) != PD_OK)
        return st;
    if ((st = eng_model_resolve_path(opts->model, opts->revision, opts->download_dir, &path)) !=
            PD_OK ||
        (st = classify(&path, &kind)) != PD_OK) {
        free(path);
        return st;
    }
    if (kind == SRC_GGUF) {
        st = gguf_config(path, opts, &g, &json, &cfg);
        eng_gguf_close(g);
    } else if (kind == SRC_DIR) {
        st = hf_config(path, opts, &json, &cfg);
    } else {
        st = read_json(path, &json);
        if (st == PD_OK && (st = apply_overrides(json, opts)) == PD_OK)
            st = eng_hfconfig_parse(json, opts, &cfg);
    }
    cJSON_Delete(json);
    free(path);
    if (st == PD_OK)
        *cfg_p = cfg;
    return st;
}

void eng_model_destroy(eng_model_t *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    if (m->dummy_block != NULL)
        munmap(m->dummy_block, m->dummy_block_bytes);
    free(m->tensors);
    free(m->index);
    eng_gguf_close(m->gguf);
    eng_gguf_close(m->tok_gguf);
    for (size_t i = 0; i < m->n_st; i++)
        eng_safetensors_close(m->st[i]);
    free(m->st);
    free(m->path);
    free(m->tokenizer_json);
    free(m->tokenizer_config);
    free(m->chat_template);
    for (int i = 0; i < 4; i++)
        free(m->special[i]);
    cJSON_Delete(m->hf_config);
    cJSON_Delete(m->gen_json);
    free(m);
}

const eng_model_config_t *eng_model_config(const eng_model_t *m) { return &m->cfg; }
eng_model_format_t eng_model_format(const eng_model_t *m) { return m->format; }
const eng_tensor_t *eng_model_tensor(const eng_model_t *m, const char *name)
{
    return lookup(m, name);
}

const eng_tensor_t *eng_model_layer_tensor(const eng_model_t *m, int layer, const char *suffix)
{
    char name[ENG_TENSOR_NAME_MAX];
    if (snprintf(name, sizeof(name), "blk.%d.%s", layer, suffix) >= (int)sizeof(name))
        return NULL;
    return lookup(m, name);
}

size_t eng_model_n_tensors(const eng_model_t *m) { return m->n_tensors; }
const eng_tensor_t *eng_model_tensor_at(const eng_model_t *m, size_t i)
{
    return i < m->n_tensors ? &m->tensors[i] : NULL;
}

size_t eng_model_nbytes(const eng_model_t *m)
{
    size_t total = 0;
    for (size_t i = 0; i < m->n_tensors; i++)
        total += m->tensors[i].nbytes;
    return total;
}

const char *eng_model_path(const eng_model_t *m) { return m->path; }
const char *eng_model_tokenizer_json(const eng_model_t *m) { return m->tokenizer_json; }
const char *eng_model_tokenizer_config(const eng_model_t *m) { return m->tokenizer_config; }
const struct eng_gguf *eng_model_gguf(const eng_model_t *m) { return m->gguf; }
const struct eng_gguf *eng_model_tokenizer_gguf(const eng_model_t *m)
{
    return m->tok_gguf != NULL ? m->tok_gguf : m->gguf;
}
const char *eng_model_chat_template(const eng_model_t *m) { return m->chat_template; }

const char *eng_model_special_token(const eng_model_t *m, const char *which)
{
    static const char *keys[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    for (int i = 0; i < 4; i++)
        if (strcmp(which, keys[i]) == 0)
            return m->special[i];
    return NULL;
}

const eng_gen_config_t *eng_model_gen_config(const eng_model_t *m) { return &m->gen; }
const struct cJSON *eng_model_gen_config_json(const eng_model_t *m) { return m->gen_json; }
const struct cJSON *eng_model_hf_config_json(const eng_model_t *m) { return m->hf_config; }
