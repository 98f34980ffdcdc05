/*
 * eng_request.c - sampling parameters (defaults, validation with vLLM's messages,
 * generation-config merge), the per-request RNG and request lifetime.
 *
 * Invariants: req->tokens holds n_prompt prompt tokens followed by the output;
 * a group's sequence 0 owns children[0 .. group_size-2]; every array in
 * eng_sampling_params_t is owned by the struct holding it.
 */
#include "eng_request.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_block.h"
#include "pd_log.h"
#include "pd_util.h"

// ---- RNG ----

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void eng_rng_seed(eng_rng_t *rng, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&x);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t eng_rng_next(eng_rng_t *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

double eng_rng_uniform(eng_rng_t *rng)
{
    return (double)(eng_rng_next(rng) >> 11) * 0x1.0p-53;
}

// ---- sampling parameters ----

void eng_sampling_params_init(eng_sampling_params_t *p)
{
    memset(p, 0, sizeof(*p));
    p->n = 1;
    p->best_of = 0;
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->top_k = 0;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->max_tokens = 16;
    p->min_tokens = 0;
    p->logprobs = -1;
    p->prompt_logprobs = -1;
    p->skip_special_tokens = true;
    p->spaces_between_special_tokens = true;
    p->truncate_prompt_tokens = -1;
}

void eng_sampling_params_cleanup(eng_sampling_params_t *p)
{
    for (int i = 0; i < p->n_stop; i++)
        free(p->stop[i]);
    free(p->stop);
    free(p->stop_token_ids);
    free(p->logit_bias);
    free(p->allowed_token_ids);
    free(p->bad_words_tokens);
    free(p->bad_words_off);
    eng_sampling_params_init(p);
}

/* Arrays grown by the add_* helpers have an implied capacity: 0 when empty, else
 * max(4, the next power of two >= n).  Copies allocate the same so adds keep working. */
static size_t implied_cap(size_t n)
{
    size_t c = 4;
    if (n == 0)
        return 0;
    while (c < n)
        c *= 2;
    return c;
}

static void *dup_array(const void *src, size_t n, size_t elem, bool *fail)
{
    if (src == NULL || n == 0)
        return NULL;
    void *d = malloc(implied_cap(n) * elem);
    if (d == NULL) {
        *fail = true;
        return NULL;
    }
    memcpy(d, src, n * elem);
    return d;
}

pd_status_t eng_sampling_params_copy(eng_sampling_params_t *dst, const eng_sampling_params_t *src)
{
    bool fail = false;

    *dst = *src;
    dst->stop = NULL;
    dst->n_stop = 0;
    dst->stop_token_ids = dup_array(src->stop_token_ids, (size_t)src->n_stop_token_ids, sizeof(int32_t), &fail);
    dst->logit_bias = dup_array(src->logit_bias, (size_t)src->n_logit_bias, sizeof(eng_logit_bias_t), &fail);
    dst->allowed_token_ids = dup_array(src->allowed_token_ids, (size_t)src->n_allowed_token_ids,
                                       sizeof(int32_t), &fail);
    dst->bad_words_tokens = NULL;
    dst->bad_words_off = NULL;
    if (src->n_bad_words > 0) {
        dst->bad_words_off = dup_array(src->bad_words_off, (size_t)src->n_bad_words + 1, sizeof(int), &fail);
        dst->bad_words_tokens = dup_array(src->bad_words_tokens, (size_t)src->bad_words_off[src->n_bad_words],
                                          sizeof(int32_t), &fail);
    }
    if (src->n_stop > 0) {
        dst->stop = calloc(implied_cap((size_t)src->n_stop), sizeof(char *));
        if (dst->stop == NULL) {
            fail = true;
        } else {
            for (int i = 0; i < src->n_stop; i++) {
                dst->stop[i] = strdup(src->stop[i]);
                if (dst->stop[i] == NULL) {
                    fail = true;
                    break;
                }
                dst->n_stop++;
            }
        }
    }
    if (fail) {
        eng_sampling_params_cleanup(dst);
        return PD_ERR_NOMEM;
    }
    return PD_OK;
}

static pd_status_t grow(void **arr, int n, size_t elem)
{
    if (implied_cap((size_t)n) > (size_t)n)
        return PD_OK;
    void *p = realloc(*arr, implied_cap((size_t)n + 1) * elem);
    if (p == NULL)
        return PD_ERR_NOMEM;
    *arr = p;
    return PD_OK;
}

pd_status_t eng_sampling_params_add_stop(eng_sampling_params_t *p, const char *s)
{
    char *d = strdup(s);
    if (d == NULL || grow((void **)&p->stop, p->n_stop, sizeof(char *)) != PD_OK) {
        free(d);
        return PD_ERR_NOMEM;
    }
    p->stop[p->n_stop++] = d;
    return PD_OK;
}

pd_status_t eng_sampling_params_add_stop_token(eng_sampling_params_t *p, int32_t token)
{
    if (grow((void **)&p->stop_token_ids, p->n_stop_token_ids, sizeof(int32_t)) != PD_OK)
        return PD_ERR_NOMEM;
    p->stop_token_ids[p->n_stop_token_ids++] = token;
    return PD_OK;
}

pd_status_t eng_sampling_params_add_logit_bias(eng_sampling_params_t *p, int32_t token, float bias)
{
    if (grow((void **)&p->logit_bias, p->n_logit_bias, sizeof(eng_logit_bias_t)) != PD_OK)
        return PD_ERR_NOMEM;
    p->logit_bias[p->n_logit_bias].token = token;
    p->logit_bias[p->n_logit_bias].bias = bias;
    p->n_logit_bias++;
    return PD_OK;
}

pd_status_t eng_sampling_params_add_allowed(eng_sampling_params_t *p, int32_t token)
{
    if (grow((void **)&p->allowed_token_ids, p->n_allowed_token_ids, sizeof(int32_t)) != PD_OK)
        return PD_ERR_NOMEM;
    p->allowed_token_ids[p->n_allowed_token_ids++] = token;
    return PD_OK;
}

pd_status_t eng_sampling_params_add_bad_word(eng_sampling_params_t *p, const int32_t *ids, int n)
{
    if (n <= 0)
        return PD_ERR_INVAL;
    int have = p->n_bad_words > 0 ? p->bad_words_off[p->n_bad_words] : 0;
    int *off = realloc(p->bad_words_off, (size_t)(p->n_bad_words + 2) * sizeof(int));
    if (off == NULL)
        return PD_ERR_NOMEM;
    p->bad_words_off = off;
    int32_t *tok = realloc(p->bad_words_tokens, (size_t)(have + n) * sizeof(int32_t));
    if (tok == NULL)
        return PD_ERR_NOMEM;
    p->bad_words_tokens = tok;
    memcpy(tok + have, ids, (size_t)n * sizeof(int32_t));
    off[p->n_bad_words] = have;
    off[p->n_bad_words + 1] = have + n;
    p->n_bad_words++;
    return PD_OK;
}

bool eng_sampling_params_greedy(const eng_sampling_params_t *p)
{
    return p->temperature < 1e-5f;
}

static pd_status_t fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static pd_status_t fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return PD_ERR_INVAL;
}

/* A float the way Python's repr prints it (vLLM's messages are f-strings): the
 * shortest digits that read back to the same float, ".0" added to integers. */
typedef struct pyf {
    char s[40];
} pyf_t;

static pyf_t pyfloat(float v)
{
    pyf_t out;
    if (isnan(v)) {
        snprintf(out.s, sizeof(out.s), "nan");
        return out;
    }
    if (isinf(v)) {
        snprintf(out.s, sizeof(out.s), v < 0 ? "-inf" : "inf");
        return out;
    }
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(out.s, sizeof(out.s), "%.*g", prec, (double)v);
        if (strtof(out.s, NULL) == v)
            break;
    }
    if (strpbrk(out.s, ".e") == NULL) {
        size_t n = strlen(out.s);
        snprintf(out.s + n, sizeof(out.s) - n, ".0");
    }
    return out;
}

pd_status_t eng_sampling_params_validate(const eng_sampling_params_t *p, int vocab_size,
                                         int max_logprobs, char *err, size_t errlen)
{
    if (p->n < 1)
        return fail(err, errlen, "n must be at least 1, got %d.", p->n);
    if (p->best_of != 0 && p->best_of < p->n)
        return fail(err, errlen, "best_of must be greater than or equal to n, got n=%d and best_of=%d.",
                    p->n, p->best_of);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return fail(err, errlen, "presence_penalty must be in [-2, 2], got %s.", pyfloat(p->presence_penalty).s);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return fail(err, errlen, "frequency_penalty must be in [-2, 2], got %s.", pyfloat(p->frequency_penalty).s);
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
        return fail(err, errlen, "repetition_penalty must be greater than zero, got %s.",
                    pyfloat(p->repetition_penalty).s);
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return fail(err, errlen, "temperature must be non-negative, got %s.", pyfloat(p->temperature).s);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return fail(err, errlen, "top_p must be in (0, 1], got %s.", pyfloat(p->top_p).s);
    if (p->top_k < -1)
        return fail(err, errlen, "top_k must be 0 (disable), or at least 1, got %d.", p->top_k);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return fail(err, errlen, "min_p must be in [0, 1], got %s.", pyfloat(p->min_p).s);
    if (p->max_tokens != -1 && p->max_tokens < 1)
        return fail(err, errlen, "max_tokens must be at least 1, got %d.", p->max_tokens);
    if (p->min_tokens < 0)
        return fail(err, errlen, "min_tokens must be greater than or equal to 0, got %d.", p->min_tokens);
    if (p->max_tokens != -1 && p->min_tokens > p->max_tokens)
        return fail(err, errlen, "min_tokens must be less than or equal to max_tokens=%d, got %d.",
                    p->max_tokens, p->min_tokens);
    if (p->logprobs < -1)
        return fail(err, errlen, "logprobs must be non-negative, got %d.", p->logprobs);
    if (p->prompt_logprobs < -1)
        return fail(err, errlen, "prompt_logprobs must be non-negative, got %d.", p->prompt_logprobs);
    if (max_logprobs >= 0 && p->logprobs > max_logprobs)
        return fail(err, errlen, "Requested sample logprobs of %d, which is greater than max allowed: %d",
                    p->logprobs, max_logprobs);
    if (max_logprobs >= 0 && p->prompt_logprobs > max_logprobs)
        return fail(err, errlen, "Requested prompt logprobs of %d, which is greater than max allowed: %d",
                    p->prompt_logprobs, max_logprobs);
    if (p->truncate_prompt_tokens != -1 && p->truncate_prompt_tokens < 1)
        return fail(err, errlen, "truncate_prompt_tokens must be >= 1, got %d", p->truncate_prompt_tokens);
    for (int i = 0; i < p->n_stop; i++)
        if (p->stop[i] == NULL || p->stop[i][0] == '\0')
            return fail(err, errlen, "stop cannot contain an empty string.");
    for (int i = 0; i < p->n_stop_token_ids; i++)
        if (p->stop_token_ids[i] < 0 || (vocab_size > 0 && p->stop_token_ids[i] >= vocab_size))
            return fail(err, errlen, "stop_token_ids contain out-of-vocab token id %d. Vocabulary size: %d",
                        p->stop_token_ids[i], vocab_size);
    for (int i = 0; i < p->n_logit_bias; i++) {
        int32_t t = p->logit_bias[i].token;
        if (t < 0 || (vocab_size > 0 && t >= vocab_size))
            return fail(err, errlen,
                        "token_id(s) [%d] in logit_bias contain out-of-vocab token ids. Vocabulary size: %d",
                        t, vocab_size);
        if (!isfinite(p->logit_bias[i].bias))
            return fail(err, errlen, "logit_bias values must be finite, got %s for token %d",
                        pyfloat(p->logit_bias[i].bias).s, t);
    }
    if (p->allowed_token_ids != NULL && p->n_allowed_token_ids == 0)
        return fail(err, errlen, "allowed_token_ids is not None and empty!");
    for (int i = 0; i < p->n_allowed_token_ids; i++) {
        int32_t t = p->allowed_token_ids[i];
        if (t < 0 || (vocab_size > 0 && t >= vocab_size))
            return fail(err, errlen, "allowed_token_ids contains out-of-vocab token id!");
    }
    if (p->n_bad_words > 0) {
        for (int i = 0; i < p->bad_words_off[p->n_bad_words]; i++) {
            int32_t t = p->bad_words_tokens[i];
            if (t < 0 || (vocab_size > 0 && t >= vocab_size))
                return fail(err, errlen,
                            "The model vocabulary size is %d, but the following tokens were specified "
                            "as bad: [%d]. All token id values should be integers satisfying: 0 <= token_id < %d.",
                            vocab_size, t, vocab_size);
        }
    }
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    return PD_OK;
}

void eng_sampling_defaults_apply(eng_sampling_params_t *p, const eng_sampling_defaults_t *d)
{
    if (d == NULL)
        return;
    if (d->has_temperature && !(p->set_mask & ENG_SP_SET_TEMPERATURE))
        p->temperature = d->temperature;
    if (d->has_top_p && !(p->set_mask & ENG_SP_SET_TOP_P))
        p->top_p = d->top_p;
    if (d->has_top_k && !(p->set_mask & ENG_SP_SET_TOP_K))
        p->top_k = d->top_k;
    if (d->has_min_p && !(p->set_mask & ENG_SP_SET_MIN_P))
        p->min_p = d->min_p;
    if (d->has_repetition_penalty && !(p->set_mask & ENG_SP_SET_REPETITION_PENALTY))
        p->repetition_penalty = d->repetition_penalty;
    if (d->has_presence_penalty && !(p->set_mask & ENG_SP_SET_PRESENCE_PENALTY))
        p->presence_penalty = d->presence_penalty;
    if (d->has_frequency_penalty && !(p->set_mask & ENG_SP_SET_FREQUENCY_PENALTY))
        p->frequency_penalty = d->frequency_penalty;
    if (d->has_max_tokens && !(p->set_mask & ENG_SP_SET_MAX_TOKENS))
        p->max_tokens = d->max_tokens;
}

// ---- requests ----

const char *eng_req_finish_reason(eng_req_state_t state)
{
    switch (state) {
    case ENG_REQ_FINISHED_STOPPED: return "stop";
    case ENG_REQ_FINISHED_LENGTH: return "length";
    case ENG_REQ_FINISHED_ABORTED: return "abort";
    case ENG_REQ_FINISHED_ERROR: return "error";
    default: return NULL;
    }
}

const char *eng_req_state_name(eng_req_state_t state)
{
    switch (state) {
    case ENG_REQ_WAITING: return "WAITING";
    case ENG_REQ_WAITING_FOR_REMOTE_KV: return "WAITING_FOR_REMOTE_KV";
    case ENG_REQ_RUNNING: return "RUNNING";
    case ENG_REQ_PREEMPTED: return "PREEMPTED";
    case ENG_REQ_FINISHED_STOPPED: return "FINISHED_STOPPED";
    case ENG_REQ_FINISHED_LENGTH: return "FINISHED_LENGTH";
    case ENG_REQ_FINISHED_ABORTED: return "FINISHED_ABORTED";
    case ENG_REQ_FINISHED_ERROR: return "FINISHED_ERROR";
    }
    return "UNKNOWN";
}

static void request_free_one(eng_request_t *req)
{
    free(req->id);
    free(req->tokens);
    free(req->cache_salt);
    eng_sampling_params_cleanup(&req->params);
    eng_block_table_cleanup(&req->table);
    free(req);
}

/* One sequence: everything but the group links. */
static pd_status_t request_make(const char *id, const int32_t *prompt, int n_prompt,
                                const eng_sampling_params_t *params, int priority, const char *cache_salt,
                                uint64_t arrival_ns, eng_request_t **req_p)
{
    eng_request_t *req = calloc(1, sizeof(*req));
    if (req == NULL)
        return PD_ERR_NOMEM;
    eng_block_table_init(&req->table);
    eng_sampling_params_init(&req->params);
    req->id = strdup(id != NULL ? id : "");
    req->cap_tokens = n_prompt + 16;
    req->tokens = malloc((size_t)req->cap_tokens * sizeof(int32_t));
    if (req->id == NULL || req->tokens == NULL)
        goto err_free;
    memcpy(req->tokens, prompt, (size_t)n_prompt * sizeof(int32_t));
    req->n_tokens = n_prompt;
    req->n_prompt = n_prompt;
    if (eng_sampling_params_copy(&req->params, params) != PD_OK) {
        eng_sampling_params_init(&req->params);
        goto err_free;
    }
    if (cache_salt != NULL && cache_salt[0] != '\0') {
        req->cache_salt = strdup(cache_salt);
        if (req->cache_salt == NULL)
            goto err_free;
        req->salt_hash = eng_block_salt_hash(cache_salt);
    }
    req->priority = priority;
    req->state = ENG_REQ_WAITING;
    req->t_arrival = arrival_ns != 0 ? arrival_ns : pd_now_ns();
    req->stop_token = -1;
    req->stop_str_index = -1;
    req->max_tokens = params->max_tokens;
    req->group_size = 1;
    *req_p = req;
    return PD_OK;

err_free:
    request_free_one(req);
    return PD_ERR_NOMEM;
}

pd_status_t eng_request_create(const char *id, const int32_t *prompt, int n_prompt,
                               const eng_sampling_params_t *params, int priority,
                               const char *cache_salt, uint64_t arrival_ns,
                               eng_rng_t *engine_rng, eng_request_t **req_p)
{
    eng_request_t *req = NULL;
    pd_status_t st;

    if (prompt == NULL || n_prompt <= 0 || n_prompt > INT32_MAX / 2) {
        PD_LOG_REQ(WARN, id, "request has an empty or absurdly long prompt (%d tokens)", n_prompt);
        return PD_ERR_INVAL;
    }
    /* The group size bound is a resource guard (each sequence copies the prompt). */
    if (params->n < 1 || params->n > 4096 || params->best_of > 4096 ||
        (params->best_of != 0 && params->best_of < params->n)) {
        PD_LOG_REQ(WARN, id, "bad n=%d best_of=%d", params->n, params->best_of);
        return PD_ERR_INVAL;
    }
    int group = params->best_of > params->n ? params->best_of : params->n;
    st = request_make(id, prompt, n_prompt, params, priority, cache_salt, arrival_ns, &req);
    if (st != PD_OK)
        return st;
    uint64_t base_seed = params->has_seed ? params->seed
                         : engine_rng != NULL ? eng_rng_next(engine_rng) : 0;
    eng_rng_seed(&req->rng, base_seed);
    req->group_size = group;
    if (group > 1) {
        req->children = calloc((size_t)group - 1, sizeof(*req->children));
        if (req->children == NULL) {
            request_free_one(req);
            return PD_ERR_NOMEM;
        }
        for (int i = 1; i < group; i++) {
            char cid[256];
            eng_request_t *c = NULL;
            snprintf(cid, sizeof(cid), "%s-%d", req->id, i);
            st = request_make(cid, prompt, n_prompt, params, priority, cache_salt, req->t_arrival, &c);
            if (st != PD_OK) {
                eng_request_destroy(req);
                return st;
            }
            c->parent = req;
            c->seq_index = i;
            c->group_size = group;
            /* Seeded: sequence i uses seed + i so siblings differ but stay reproducible. */
            eng_rng_seed(&c->rng, params->has_seed ? params->seed + (uint64_t)i
                                  : engine_rng != NULL ? eng_rng_next(engine_rng) : (uint64_t)i);
            req->children[i - 1] = c;
        }
    }
    *req_p = req;
    return PD_OK;
}

void eng_request_destroy(eng_request_t *req)
{
    if (req == NULL)
        return;
    if (req->children != NULL) {
        for (int i = 0; i < req->group_size - 1; i++)
            if (req->children[i] != NULL)
                request_free_one(req->children[i]);
        free(req->children);
    }
    request_free_one(req);
}

pd_status_t eng_request_set_remote_kv(eng_request_t *req, int n_remote)
{
    if (n_remote < 0 || n_remote >= req->n_prompt) {
        PD_LOG_REQ(WARN, req->id, "remote KV for %d of %d prompt tokens: must be fewer than the prompt",
                   n_remote, req->n_prompt);
        return PD_ERR_INVAL;
    }
    req->remote_kv = true;
    req->n_remote_tokens = n_remote;
    req->state = ENG_REQ_WAITING_FOR_REMOTE_KV;
    return PD_OK;
}

pd_status_t eng_request_append_token(eng_request_t *req, int32_t token)
{
    if (req->n_tokens == req->cap_tokens) {
        size_t cap;
        if (pd_mul_size((size_t)req->cap_tokens, 2, &cap) != PD_OK || cap > INT32_MAX)
            return PD_ERR_OVERFLOW;
        int32_t *t = realloc(req->tokens, cap * sizeof(int32_t));
        if (t == NULL)
            return PD_ERR_NOMEM;
        req->tokens = t;
        req->cap_tokens = (int)cap;
    }
    req->tokens[req->n_tokens++] = token;
    return PD_OK;
}

eng_request_t *eng_request_seq(eng_request_t *req, int i)
{
    if (i == 0)
        return req;
    if (i < 0 || i >= req->group_size || req->children == NULL)
        return NULL;
    return req->children[i - 1];
}

bool eng_request_group_finished(const eng_request_t *req)
{
    const eng_request_t *root = req->parent != NULL ? req->parent : req;
    if (!ENG_REQ_IS_FINISHED(root->state))
        return false;
    for (int i = 0; i < root->group_size - 1; i++)
        if (!ENG_REQ_IS_FINISHED(root->children[i]->state))
            return false;
    return true;
}
