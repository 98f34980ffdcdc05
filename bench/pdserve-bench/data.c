/*
 * data.c - datasets and the target's tokenizer endpoints.
 *
 * Prompts are built so their input length is exact in the target's own tokenizer,
 * without a local tokenizer: random token ids are turned into text with POST
 * /detokenize, the text is re-tokenized with POST /tokenize (add_special_tokens off,
 * like vLLM's dataset code), and the token list is cut or extended with more random
 * ids until the count matches (at most 10 rounds; the closest one is kept and its real
 * length recorded).  A target without /tokenize gets an approximate words-based prompt
 * and a warning; lengths are then estimates and the result JSON says so.
 *
 * All HTTP here is blocking and happens before the measured run.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "bench.h"
#include "pd_log.h"

/* ---- blocking HTTP ---- */
static CURL *g_easy; /* one handle so setup calls reuse a kept-alive connection */

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userp)
{
    size_t n = size * nmemb;
    return pd_buf_append(userp, ptr, n) == PD_OK ? n : 0;
}

static pd_status_t http_call(const char *url, const char *api_key, const char *json,
                             char **body_p, long *http_code_p)
{
    pd_buf_t buf;
    struct curl_slist *h = NULL;
    CURLcode rc;
    long code = 0;

    *http_code_p = 0;
    if (!g_easy && !(g_easy = curl_easy_init()))
        return PD_ERR_NOMEM;
    curl_easy_reset(g_easy);
    pd_buf_init(&buf);
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    if (api_key) {
        char *a = NULL;
        if (asprintf(&a, "Authorization: Bearer %s", api_key) > 0) {
            h = curl_slist_append(h, a);
            free(a);
        }
    }
    curl_easy_setopt(g_easy, CURLOPT_URL, url);
    curl_easy_setopt(g_easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(g_easy, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(g_easy, CURLOPT_WRITEDATA, &buf);
    curl_easy_setopt(g_easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(g_easy, CURLOPT_TIMEOUT, 120L);
    curl_easy_setopt(g_easy, CURLOPT_CONNECTTIMEOUT, 10L);
    if (json) {
        curl_easy_setopt(g_easy, CURLOPT_POSTFIELDS, json);
        curl_easy_setopt(g_easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(json));
    }
    rc = curl_easy_perform(g_easy);
    curl_slist_free_all(h);
    if (rc != CURLE_OK) {
        PD_LOG_DEBUG("%s: %s", url, curl_easy_strerror(rc));
        pd_buf_cleanup(&buf);
        return rc == CURLE_OPERATION_TIMEDOUT ? PD_ERR_TIMEOUT : PD_ERR_TRANSPORT;
    }
    curl_easy_getinfo(g_easy, CURLINFO_RESPONSE_CODE, &code);
    *http_code_p = code;
    if (code < 200 || code >= 300) {
        pd_buf_cleanup(&buf);
        return code == 404 ? PD_ERR_NOT_FOUND : PD_ERR_IO;
    }
    if (!buf.data && pd_buf_puts(&buf, "") != PD_OK)
        return PD_ERR_NOMEM;
    *body_p = pd_buf_steal(&buf);
    return PD_OK;
}

pd_status_t bench_http_post_json(const char *url, const char *api_key, const char *json,
                                 char **body_p, long *http_code_p)
{
    return http_call(url, api_key, json, body_p, http_code_p);
}

pd_status_t bench_http_get(const char *url, const char *api_key, char **body_p,
                           long *http_code_p)
{
    return http_call(url, api_key, NULL, body_p, http_code_p);
}

/* ---- tokenizer client ---- */
typedef struct tok {
    const bench_opts_t *o;
    const char *model;
    char *tok_url, *detok_url;
    int available;
    int vocab;
    bench_rng_t rng;
    int inexact; /* prompts whose length could not be made exact */
} tok_t;

typedef struct ids {
    int *v;
    int n, cap;
} ids_t;

static pd_status_t ids_push(ids_t *a, int x)
{
    if (a->n == a->cap) {
        int cap = a->cap ? a->cap * 2 : 256;
        int *p = realloc(a->v, sizeof(int) * (size_t)cap);
        if (!p)
            return PD_ERR_NOMEM;
        a->v = p;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return PD_OK;
}

static pd_status_t tok_encode(tok_t *t, const char *text, ids_t *out)
{
    cJSON *req = cJSON_CreateObject(), *resp = NULL, *toks;
    char *json, *body = NULL;
    long code;
    pd_status_t st;

    cJSON_AddStringToObject(req, "model", t->model);
    cJSON_AddStringToObject(req, "prompt", text);
    cJSON_AddBoolToObject(req, "add_special_tokens", 0);
    json = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (!json)
        return PD_ERR_NOMEM;
    st = http_call(t->tok_url, t->o->api_key, json, &body, &code);
    free(json);
    if (st != PD_OK)
        return st;
    resp = cJSON_Parse(body);
    free(body);
    toks = cJSON_GetObjectItemCaseSensitive(resp, "tokens");
    if (!cJSON_IsArray(toks)) {
        cJSON_Delete(resp);
        return PD_ERR_FORMAT;
    }
    out->n = 0;
    for (cJSON *it = toks->child; it; it = it->next) {
        if (ids_push(out, it->valueint) != PD_OK) {
            cJSON_Delete(resp);
            return PD_ERR_NOMEM;
        }
    }
    cJSON_Delete(resp);
    return PD_OK;
}

static pd_status_t tok_decode(tok_t *t, const ids_t *ids, char **text_p)
{
    cJSON *req = cJSON_CreateObject(), *resp, *p;
    cJSON *arr = cJSON_AddArrayToObject(req, "tokens");
    char *json, *body = NULL;
    long code;
    pd_status_t st;

    cJSON_AddStringToObject(req, "model", t->model);
    for (int i = 0; i < ids->n; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids->v[i]));
    json = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (!json)
        return PD_ERR_NOMEM;
    st = http_call(t->detok_url, t->o->api_key, json, &body, &code);
    free(json);
    if (st != PD_OK)
        return st;
    resp = cJSON_Parse(body);
    free(body);
    p = cJSON_GetObjectItemCaseSensitive(resp, "prompt");
    if (!cJSON_IsString(p)) {
        cJSON_Delete(resp);
        return PD_ERR_FORMAT;
    }
    *text_p = strdup(p->valuestring);
    cJSON_Delete(resp);
    return *text_p ? PD_OK : PD_ERR_NOMEM;
}

static int vocab_ok(tok_t *t, int id)
{
    ids_t one = {0};
    char *s = NULL;
    pd_status_t st;
    if (ids_push(&one, id) != PD_OK)
        return 0;
    st = tok_decode(t, &one, &s);
    free(one.v);
    free(s);
    return st == PD_OK;
}

static void tok_init(tok_t *t, const bench_opts_t *o, const char *model)
{
    ids_t probe = {0};
    memset(t, 0, sizeof(*t));
    t->o = o;
    t->model = model;
    bench_rng_seed(&t->rng, o->seed);
    if (asprintf(&t->tok_url, "%s/tokenize", o->base_urls[0]) < 0 ||
        asprintf(&t->detok_url, "%s/detokenize", o->base_urls[0]) < 0)
        return;
    if (tok_encode(t, "hello world", &probe) == PD_OK && probe.n > 0)
        t->available = 1;
    free(probe.v);
    if (!t->available) {
        PD_LOG_WARN("%s has no usable /tokenize: prompts are built from words and input "
                    "lengths are estimates (1 token per word)", o->base_urls[0]);
        return;
    }
    if (o->random_vocab_size > 0) {
        t->vocab = o->random_vocab_size;
        return;
    }
    /* vLLM serves /tokenizer_info (with --enable-tokenizer-info-endpoint). */
    char *url = NULL, *body = NULL;
    long code;
    if (asprintf(&url, "%s/tokenizer_info", o->base_urls[0]) > 0 &&
        http_call(url, o->api_key, NULL, &body, &code) == PD_OK) {
        cJSON *j = cJSON_Parse(body);
        cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "vocab_size");
        if (cJSON_IsNumber(v) && v->valueint > 1)
            t->vocab = v->valueint;
        cJSON_Delete(j);
    }
    free(url);
    free(body);
    if (t->vocab == 0) {
        /* Largest id /detokenize accepts, by bisection (about 20 calls). */
        int lo = 1, hi = 1 << 21;
        if (vocab_ok(t, hi)) {
            t->vocab = 32000;
            PD_LOG_WARN("could not learn the vocabulary size; using ids below %d "
                        "(set --random-vocab-size)", t->vocab);
            return;
        }
        while (hi - lo > 1) {
            int mid = lo + (hi - lo) / 2;
            if (vocab_ok(t, mid))
                lo = mid;
            else
                hi = mid;
        }
        t->vocab = lo + 1;
    }
    PD_LOG_INFO("random token ids drawn below %d", t->vocab);
}

static void tok_cleanup(tok_t *t)
{
    free(t->tok_url);
    free(t->detok_url);
}

static pd_status_t push_random(tok_t *t, ids_t *ids, int n)
{
    for (int i = 0; i < n; i++)
        if (ids_push(ids, (int)(bench_rng_u64(&t->rng) % (uint64_t)t->vocab)) != PD_OK)
            return PD_ERR_NOMEM;
    return PD_OK;
}

/* Text whose token count is `target`, starting from the ids in *ids (consumed). */
static pd_status_t make_exact(tok_t *t, ids_t *ids, int target, char **text_p, int *len_p)
{
    ids_t re = {0};
    char *text = NULL;
    int best = -1;
    pd_status_t st = PD_OK;

    for (int round = 0; round < 10; round++) {
        free(text);
        text = NULL;
        st = tok_decode(t, ids, &text);
        if (st != PD_OK)
            goto out;
        st = tok_encode(t, text, &re);
        if (st != PD_OK)
            goto out;
        best = re.n;
        if (re.n == target)
            break;
        /* Continue from the server's own tokens: cut the excess or add fresh ids. */
        ids->n = 0;
        for (int i = 0; i < re.n && i < target; i++)
            ids_push(ids, re.v[i]);
        if (re.n < target && (st = push_random(t, ids, target - re.n)) != PD_OK)
            goto out;
    }
    if (best != target)
        t->inexact++;
    *text_p = text;
    *len_p = best;
    text = NULL;
out:
    free(text);
    free(re.v);
    return st;
}

static const char *WORDS[] = {
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be",
    "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but",
    "have", "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her",
    "has", "there", "been", "if", "more", "when", "will", "would", "who", "so", "no", "time",
    "day", "water", "house", "world", "light", "music", "river", "stone", "garden", "city",
};

static char *words_prompt(bench_rng_t *rng, int n)
{
    pd_buf_t b;
    pd_buf_init(&b);
    for (int i = 0; i < n; i++)
        pd_buf_printf(&b, "%s%s", i ? " " : "",
                      WORDS[bench_rng_u64(rng) % PD_ARRAY_SIZE(WORDS)]);
    if (!b.data)
        pd_buf_puts(&b, "");
    return pd_buf_steal(&b);
}

/* A prompt of `len` tokens following `prefix` ids (may be NULL). */
static pd_status_t gen_prompt(tok_t *t, const ids_t *prefix, int len, bench_sample_t *s)
{
    if (!t->available) {
        int np = prefix ? prefix->n : 0;
        s->prompt = words_prompt(&t->rng, np + len);
        s->prompt_len = np + len;
        return s->prompt ? PD_OK : PD_ERR_NOMEM;
    }
    ids_t ids = {0};
    pd_status_t st = PD_OK;
    if (prefix)
        for (int i = 0; i < prefix->n && st == PD_OK; i++)
            st = ids_push(&ids, prefix->v[i]);
    if (st == PD_OK)
        st = push_random(t, &ids, len);
    if (st == PD_OK)
        st = make_exact(t, &ids, (prefix ? prefix->n : 0) + len, &s->prompt, &s->prompt_len);
    free(ids.v);
    return st;
}

/* Random ids made stable under detokenize -> tokenize (so prefixes stay shared). */
static pd_status_t gen_prefix(tok_t *t, int len, ids_t *out, bench_rng_t *words_rng)
{
    out->n = 0;
    if (len <= 0)
        return PD_OK;
    if (!t->available) {
        for (int i = 0; i < len; i++)
            ids_push(out, (int)(bench_rng_u64(words_rng) % PD_ARRAY_SIZE(WORDS)));
        return PD_OK;
    }
    char *text = NULL;
    int n = 0;
    pd_status_t st = push_random(t, out, len);
    if (st == PD_OK)
        st = make_exact(t, out, len, &text, &n);
    if (st == PD_OK)
        st = tok_encode(t, text, out);
    free(text);
    return st;
}

static int scaled(int l, double r, int hi)
{
    double v = hi ? (double)l * (1.0 + r) : (double)l * (1.0 - r);
    int x = (int)v;
    return x < 1 ? 1 : x;
}

static pd_status_t build_random(tok_t *t, const bench_opts_t *o, int input_len, double ratio,
                               bench_dataset_t *ds)
{
    ids_t prefix = {0};
    pd_status_t st = gen_prefix(t, o->random_prefix_len, &prefix, &t->rng);
    for (int i = 0; i < ds->n && st == PD_OK; i++) {
        int in = bench_rng_int(&t->rng, scaled(input_len, ratio, 0), scaled(input_len, ratio, 1));
        int out = bench_rng_int(&t->rng, scaled(o->random_output_len, ratio, 0),
                                scaled(o->random_output_len, ratio, 1));
        ds->samples[i].output_len = out;
        st = gen_prompt(t, o->random_prefix_len > 0 ? &prefix : NULL, in, &ds->samples[i]);
    }
    free(prefix.v);
    return st;
}

static pd_status_t build_prefix_rep(tok_t *t, const bench_opts_t *o, bench_dataset_t *ds)
{
    int np = o->pr_num_prefixes;
    ids_t *prefixes = calloc((size_t)np, sizeof(ids_t));
    pd_status_t st = prefixes ? PD_OK : PD_ERR_NOMEM;

    for (int p = 0; p < np && st == PD_OK; p++)
        st = gen_prefix(t, o->pr_prefix_len, &prefixes[p], &t->rng);
    for (int i = 0; i < ds->n && st == PD_OK; i++) {
        ds->samples[i].output_len = o->pr_output_len;
        st = gen_prompt(t, &prefixes[i % np], o->pr_suffix_len, &ds->samples[i]);
    }
    /* Interleave prefixes in a random order, as vLLM shuffles its list. */
    for (int i = ds->n - 1; i > 0 && st == PD_OK; i--) {
        int j = bench_rng_int(&t->rng, 0, i);
        bench_sample_t tmp = ds->samples[i];
        ds->samples[i] = ds->samples[j];
        ds->samples[j] = tmp;
    }
    if (prefixes)
        for (int p = 0; p < np; p++)
            free(prefixes[p].v);
    free(prefixes);
    return st;
}

static int count_tokens(tok_t *t, const char *text)
{
    if (t->available) {
        ids_t ids = {0};
        int n = -1;
        if (tok_encode(t, text, &ids) == PD_OK)
            n = ids.n;
        free(ids.v);
        return n;
    }
    /* No tokenizer: about 4/3 tokens per word is the usual English ratio. */
    int words = 0, in = 0;
    for (const char *p = text; *p; p++) {
        int sp = *p == ' ' || *p == '\n' || *p == '\t';
        if (!sp && !in)
            words++;
        in = !sp;
    }
    return (words * 4 + 2) / 3;
}

static pd_status_t build_sharegpt(tok_t *t, const bench_opts_t *o, bench_dataset_t *ds)
{
    char *data = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    int *order = NULL, n_items, got = 0;
    pd_status_t st = pd_read_file(o->dataset_path, &data, &len);

    if (st != PD_OK) {
        PD_LOG_ERR("cannot read --dataset-path %s: %s", o->dataset_path, pd_status_str(st));
        return st;
    }
    root = cJSON_ParseWithLength(data, len);
    free(data);
    if (!cJSON_IsArray(root)) {
        PD_LOG_ERR("%s: not a JSON array of ShareGPT records", o->dataset_path);
        cJSON_Delete(root);
        return PD_ERR_FORMAT;
    }
    n_items = cJSON_GetArraySize(root);
    cJSON **items = calloc((size_t)n_items + 1, sizeof(cJSON *));
    order = calloc((size_t)n_items + 1, sizeof(int));
    if (!items || !order) {
        st = PD_ERR_NOMEM;
        goto out;
    }
    int k = 0;
    for (cJSON *it = root->child; it; it = it->next)
        items[k++] = it;
    for (int i = 0; i < n_items; i++)
        order[i] = i;
    for (int i = n_items - 1; i > 0; i--) {
        int j = bench_rng_int(&t->rng, 0, i);
        int tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    for (int i = 0; i < n_items && got < ds->n; i++) {
        cJSON *conv = cJSON_GetObjectItemCaseSensitive(items[order[i]], "conversations");
        if (!cJSON_IsArray(conv) || cJSON_GetArraySize(conv) < 2)
            continue;
        cJSON *h = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(conv, 0), "value");
        cJSON *g = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(conv, 1), "value");
        if (!cJSON_IsString(h) || !cJSON_IsString(g))
            continue;
        int pl = count_tokens(t, h->valuestring);
        int ol = o->sharegpt_output_len > 0 ? o->sharegpt_output_len
                                            : count_tokens(t, g->valuestring);
        /* vLLM's filter: drop very short pairs and long ones. */
        if (pl < 4 || (o->sharegpt_output_len == 0 && ol < 4))
            continue;
        if (o->sharegpt_output_len == 0 && (pl > 1024 || pl + ol > 2048))
            continue;
        ds->samples[got].prompt = strdup(h->valuestring);
        ds->samples[got].prompt_len = pl;
        ds->samples[got].output_len = ol;
        got++;
    }
    if (got == 0) {
        PD_LOG_ERR("%s: no usable conversations", o->dataset_path);
        st = PD_ERR_FORMAT;
    } else if (got < ds->n) {
        PD_LOG_WARN("%s: only %d usable conversations, running %d requests", o->dataset_path,
                    got, got);
        ds->n = got;
    }
out:
    free(items);
    free(order);
    cJSON_Delete(root);
    return st;
}

pd_status_t bench_dataset_build(const bench_opts_t *o, const char *model, int input_len_override,
                                bench_dataset_t *ds_p)
{
    tok_t t;
    bench_dataset_t ds = {0};
    pd_status_t st;
    double t0 = pd_now_s();

    tok_init(&t, o, model);
    ds.n = o->num_prompts;
    ds.samples = calloc((size_t)ds.n, sizeof(bench_sample_t));
    if (!ds.samples) {
        tok_cleanup(&t);
        return PD_ERR_NOMEM;
    }
    ds.exact = t.available;
    switch (o->ds_kind) {
    case BENCH_DS_RANDOM:
        st = build_random(&t, o, o->random_input_len, o->random_range_ratio, &ds);
        break;
    case BENCH_DS_SWEEP:
        st = build_random(&t, o, input_len_override > 0 ? input_len_override : o->random_input_len,
                          0.0, &ds);
        break;
    case BENCH_DS_PREFIX_REP:
        st = build_prefix_rep(&t, o, &ds);
        break;
    case BENCH_DS_SHAREGPT:
        st = build_sharegpt(&t, o, &ds);
        break;
    default:
        st = PD_ERR_INVAL;
    }
    if (t.inexact > 0) {
        PD_LOG_WARN("%d prompts could not be made exactly the requested length; their real "
                    "length is used", t.inexact);
    }
    tok_cleanup(&t);
    if (st != PD_OK) {
        PD_LOG_ERR("building the dataset failed: %s", pd_status_str(st));
        bench_dataset_cleanup(&ds);
        return st;
    }
    if (!o->quiet)
        PD_LOG_INFO("dataset: %d prompts built in %.2f s (%s lengths)", ds.n, pd_now_s() - t0,
                    ds.exact ? "exact" : "estimated");
    *ds_p = ds;
    return PD_OK;
}

void bench_dataset_cleanup(bench_dataset_t *ds)
{
    if (ds->samples)
        for (int i = 0; i < ds->n; i++)
            free(ds->samples[i].prompt);
    free(ds->samples);
    memset(ds, 0, sizeof(*ds));
    if (g_easy) {
        curl_easy_cleanup(g_easy);
        g_easy = NULL;
    }
}
