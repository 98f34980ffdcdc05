/*
 * eng_openai.c - parse and validate OpenAI-compatible request bodies into
 * eng_oai_req_t, with vLLM's defaults and limits.  Every failure names the parameter
 * and gives the HTTP status; unknown fields are ignored (as vLLM and OpenAI do).
 */
#include "eng_openai.h"

#include "kvx.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_json.h"

void eng_oai_limits_init(eng_oai_limits_t *lim)
{
    memset(lim, 0, sizeof(*lim));
    lim->max_logprobs = 20;
    lim->max_n = 256;
    lim->max_stop = 64;
    lim->max_stop_len = 1024;
    lim->max_prompts = 1024;
    lim->vocab_size = INT32_MAX;
}

static pd_status_t fail(eng_oai_err_t *err, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static pd_status_t fail(eng_oai_err_t *err, int status, const char *param, const char *fmt, ...)
{
    va_list ap;
    err->status = status;
    snprintf(err->param, sizeof(err->param), "%s", param ? param : "");
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return PD_ERR_INVAL;
}

/* carry a pd_json error into ours */
static pd_status_t jfail(eng_oai_err_t *err, const pd_json_err_t *je)
{
    err->status = 400;
    snprintf(err->message, sizeof(err->message), "%s", je->message);
    snprintf(err->param, sizeof(err->param), "%s", je->param);
    return PD_ERR_INVAL;
}

#define J(expr)                          \
    do {                                 \
        if ((expr) != PD_OK)             \
            return jfail(err, &je);      \
    } while (0)

static pd_status_t parse_prompt(const cJSON *root, const eng_oai_limits_t *lim, eng_oai_req_t *r,
                                eng_oai_err_t *err)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt"), *e;
    pd_json_err_t je;
    int n;

    if (p == NULL || cJSON_IsNull(p))
        return fail(err, 400, "prompt", "'prompt' is required.");
    if (cJSON_IsString(p)) {
        r->prompts = calloc(1, sizeof(*r->prompts));
        if (r->prompts == NULL)
            return PD_ERR_NOMEM;
        r->prompts[0].text = p->valuestring;
        r->n_prompts = 1;
        return PD_OK;
    }
    if (!cJSON_IsArray(p) || (n = cJSON_GetArraySize(p)) == 0)
        return fail(err, 400, "prompt", "'prompt' must be a string, an array of strings, an array of "
                    "token ids or an array of token-id arrays, and not empty.");
    e = p->child;
    if (cJSON_IsNumber(e)) {
        /* one prompt of token ids */
        int64_t *vals = NULL;
        size_t nv = 0;
        r->prompts = calloc(1, sizeof(*r->prompts));
        if (r->prompts == NULL)
            return PD_ERR_NOMEM;
        r->n_prompts = 1;
        J(pd_json_get_int_array(root, "prompt", 1u << 20, 0, lim->vocab_size - 1, &vals, &nv, &je));
        r->prompts[0].ids = malloc(nv * sizeof(int32_t) + 1);
        if (r->prompts[0].ids == NULL) {
            free(vals);
            return PD_ERR_NOMEM;
        }
        for (size_t i = 0; i < nv; i++)
            r->prompts[0].ids[i] = (int32_t)vals[i];
        r->prompts[0].n_ids = (int)nv;
        free(vals);
        return PD_OK;
    }
    if (n > lim->max_prompts)
        return fail(err, 400, "prompt", "'prompt' has %d prompts, at most %d allowed.", n, lim->max_prompts);
    r->prompts = calloc((size_t)n, sizeof(*r->prompts));
    if (r->prompts == NULL)
        return PD_ERR_NOMEM;
    r->n_prompts = n;
    int i = 0;
    cJSON_ArrayForEach(e, p) {
        eng_oai_prompt_t *pr = &r->prompts[i++];
        if (cJSON_IsString(e)) {
            pr->text = e->valuestring;
        } else if (cJSON_IsArray(e)) {
            const cJSON *t;
            int k = 0, m = cJSON_GetArraySize(e);
            if (m == 0)
                return fail(err, 400, "prompt", "'prompt' contains an empty token-id array.");
            if ((pr->ids = malloc((size_t)m * sizeof(int32_t))) == NULL)
                return PD_ERR_NOMEM;
            cJSON_ArrayForEach(t, e) {
                int64_t v;
                J(pd_json_item_int(t, "prompt", 0, lim->vocab_size - 1, &v, &je));
                pr->ids[k++] = (int32_t)v;
            }
            pr->n_ids = m;
        } else {
            return fail(err, 400, "prompt", "'prompt' must be a string, an array of strings, an array of "
                        "token ids or an array of token-id arrays.");
        }
    }
    return PD_OK;
}

static pd_status_t parse_messages(const cJSON *root, eng_oai_req_t *r, eng_oai_err_t *err)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "messages"), *e;
    static const char *const roles[] = {"system", "user", "assistant", "tool", "developer", "function", NULL};

    if (m == NULL || cJSON_IsNull(m))
        return fail(err, 400, "messages", "'messages' is required.");
    if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) == 0)
        return fail(err, 400, "messages", "'messages' must be a non-empty array.");
    if (cJSON_GetArraySize(m) > 100000)
        return fail(err, 400, "messages", "'messages' has too many items.");
    cJSON_ArrayForEach(e, m) {
        const cJSON *role, *content;
        bool ok = false;
        if (!cJSON_IsObject(e))
            return fail(err, 400, "messages", "each message must be an object with 'role' and 'content'.");
        role = cJSON_GetObjectItemCaseSensitive(e, "role");
        if (!cJSON_IsString(role))
            return fail(err, 400, "messages", "each message needs a string 'role'.");
        for (int i = 0; roles[i]; i++)
            ok = ok || strcmp(role->valuestring, roles[i]) == 0;
        if (!ok)
            return fail(err, 400, "messages", "unknown message role '%.64s' (system, user, assistant, tool, "
                        "developer).", role->valuestring);
        content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (content && !cJSON_IsNull(content) && !cJSON_IsString(content)) {
            /* content parts: only text parts are supported */
            const cJSON *part;
            if (!cJSON_IsArray(content))
                return fail(err, 400, "messages", "message 'content' must be a string or an array of parts.");
            cJSON_ArrayForEach(part, content) {
                const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
                if (!cJSON_IsString(type))
                    return fail(err, 400, "messages", "each content part needs a 'type'.");
                if (strcmp(type->valuestring, "text") != 0)
                    return fail(err, 400, "messages", "content parts of type '%.32s' are not supported yet "
                                "(only text).", type->valuestring);
                if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(part, "text")))
                    return fail(err, 400, "messages", "a text content part needs a string 'text'.");
            }
        }
    }
    r->messages = m;
    return PD_OK;
}

/* Chat content parts [{"type":"text","text":...}] become one string, as vLLM does for
 * text-only models (joined with newlines). */
static pd_status_t flatten_content(cJSON *messages)
{
    cJSON *msg;
    cJSON_ArrayForEach(msg, messages) {
        cJSON *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
        if (cJSON_IsArray(content)) {
            size_t total = 1;
            const cJSON *part;
            cJSON_ArrayForEach(part, content) total += strlen(cJSON_GetObjectItem(part, "text")->valuestring) + 1;
            char *s = malloc(total), *w = s;
            if (s == NULL)
                return PD_ERR_NOMEM;
            bool first = true;
            cJSON_ArrayForEach(part, content) {
                const char *t = cJSON_GetObjectItem(part, "text")->valuestring;
                size_t l = strlen(t);
                if (!first)
                    *w++ = '\n';
                memcpy(w, t, l);
                w += l;
                first = false;
            }
            *w = '\0';
            cJSON *str = cJSON_CreateString(s);
            free(s);
            if (str == NULL)
                return PD_ERR_NOMEM;
            cJSON_ReplaceItemInObjectCaseSensitive(msg, "content", str);
        }
    }
    return PD_OK;
}

static pd_status_t parse_sampling(const cJSON *root, const eng_oai_limits_t *lim, eng_oai_req_t *r,
                                  eng_oai_err_t *err)
{
    eng_sampling_params_t *p = &r->params;
    pd_json_err_t je;
    int64_t iv;
    double dv;
    int bv;
    const char **strs = NULL;
    size_t n_strs = 0;
    const cJSON *o;

#define GET_INT(key, lo, hi, field, setbit)                                 \
    do {                                                                     \
        if (pd_json_present(root, key)) {                                    \
            J(pd_json_get_int(root, key, lo, hi, &iv, &je));                 \
            field = (int)iv;                                                 \
            p->set_mask |= (setbit);                                         \
        }                                                                    \
    } while (0)
#define GET_DBL(key, lo, hi, field, setbit)                                  \
    do {                                                                     \
        if (pd_json_present(root, key)) {                                    \
            J(pd_json_get_double(root, key, lo, hi, &dv, &je));              \
            field = (float)dv;                                               \
            p->set_mask |= (setbit);                                         \
        }                                                                    \
    } while (0)
#define GET_BOOL(key, field)                                                 \
    do {                                                                     \
        if (pd_json_present(root, key)) {                                    \
            J(pd_json_get_bool(root, key, &bv, &je));                        \
            field = bv != 0;                                                 \
        }                                                                    \
    } while (0)

    GET_INT("n", 1, lim->max_n, p->n, 0);
    if (r->kind == ENG_OAI_COMPLETION && pd_json_present(root, "best_of")) {
        J(pd_json_get_int(root, "best_of", 1, lim->max_n, &iv, &je));
        if (iv < p->n)
            return fail(err, 400, "best_of", "best_of must be greater than or equal to n, got n=%d and best_of=%lld.",
                        p->n, (long long)iv);
        if (iv != p->n)
            return fail(err, 400, "best_of", "best_of > n is not supported yet.");
        p->best_of = (int)iv;
    }
    if (pd_json_present(root, "max_completion_tokens")) {
        J(pd_json_get_int(root, "max_completion_tokens", 1, INT32_MAX, &iv, &je));
        p->max_tokens = (int)iv;
        p->set_mask |= ENG_SP_SET_MAX_TOKENS;
        r->has_max_tokens = true;
    } else if (pd_json_present(root, "max_tokens")) {
        /* completions accept 0 with echo (the prompt alone, checked once echo is known) */
        J(pd_json_get_int(root, "max_tokens", r->kind == ENG_OAI_COMPLETION ? 0 : 1, INT32_MAX, &iv, &je));
        p->max_tokens = (int)iv;
        p->set_mask |= ENG_SP_SET_MAX_TOKENS;
        r->has_max_tokens = true;
    } else {
        /* completions default 16 (OpenAI); chat: up to the context length */
        p->max_tokens = r->kind == ENG_OAI_COMPLETION ? 16 : -1;
    }
    GET_DBL("temperature", 0.0, 1e6, p->temperature, ENG_SP_SET_TEMPERATURE);
    if (pd_json_present(root, "top_p")) {
        J(pd_json_get_double(root, "top_p", 0.0, 1.0, &dv, &je));
        if (dv <= 0.0)
            return fail(err, 400, "top_p", "top_p must be in (0, 1], got %g.", dv);
        p->top_p = (float)dv;
        p->set_mask |= ENG_SP_SET_TOP_P;
    }
    if (pd_json_present(root, "top_k")) {
        J(pd_json_get_int(root, "top_k", -1, INT32_MAX, &iv, &je));
        p->top_k = iv < 0 ? 0 : (int)iv;
        p->set_mask |= ENG_SP_SET_TOP_K;
    }
    GET_DBL("min_p", 0.0, 1.0, p->min_p, ENG_SP_SET_MIN_P);
    GET_DBL("presence_penalty", -2.0, 2.0, p->presence_penalty, ENG_SP_SET_PRESENCE_PENALTY);
    GET_DBL("frequency_penalty", -2.0, 2.0, p->frequency_penalty, ENG_SP_SET_FREQUENCY_PENALTY);
    if (pd_json_present(root, "repetition_penalty")) {
        J(pd_json_get_double(root, "repetition_penalty", 0.0, 1e6, &dv, &je));
        if (dv <= 0.0)
            return fail(err, 400, "repetition_penalty", "repetition_penalty must be greater than zero, got %g.", dv);
        p->repetition_penalty = (float)dv;
        p->set_mask |= ENG_SP_SET_REPETITION_PENALTY;
    }
    if (pd_json_present(root, "seed")) {
        J(pd_json_get_int(root, "seed", INT64_MIN, INT64_MAX, &iv, &je));
        p->has_seed = true;
        p->seed = (uint64_t)iv;
        p->set_mask |= ENG_SP_SET_SEED;
    }
    if (pd_json_present(root, "stop")) {
        J(pd_json_get_string_list(root, "stop", (size_t)lim->max_stop, (size_t)lim->max_stop_len, &strs, &n_strs, &je));
        for (size_t i = 0; i < n_strs; i++) {
            if (strs[i][0] == '\0')
                continue;
            if (eng_sampling_params_add_stop(p, strs[i]) != PD_OK) {
                free(strs);
                return PD_ERR_NOMEM;
            }
        }
        free(strs);
    }
    if (pd_json_present(root, "stop_token_ids")) {
        int64_t *vals = NULL;
        size_t nv = 0;
        J(pd_json_get_int_array(root, "stop_token_ids", 1024, 0, lim->vocab_size - 1, &vals, &nv, &je));
        for (size_t i = 0; i < nv; i++)
            eng_sampling_params_add_stop_token(p, (int32_t)vals[i]);
        free(vals);
    }
    GET_BOOL("include_stop_str_in_output", p->include_stop_str_in_output);
    GET_BOOL("ignore_eos", p->ignore_eos);
    GET_INT("min_tokens", 0, INT32_MAX, p->min_tokens, 0);
    if (r->has_max_tokens && p->min_tokens > p->max_tokens)
        return fail(err, 400, "min_tokens", "min_tokens must be less than or equal to max_tokens=%d, got %d.",
                    p->max_tokens, p->min_tokens);
    if (pd_json_present(root, "logit_bias")) {
        const cJSON *kv;
        J(pd_json_get_object(root, "logit_bias", &o, &je));
        if (cJSON_GetArraySize(o) > 4096)
            return fail(err, 400, "logit_bias", "'logit_bias' has too many entries (at most 4096).");
        cJSON_ArrayForEach(kv, o) {
            char *end;
            long tok = strtol(kv->string, &end, 10);
            if (*kv->string == '\0' || *end != '\0' || tok < 0 || tok >= lim->vocab_size)
                return fail(err, 400, "logit_bias", "logit_bias key '%.32s' is not a token id in [0, %lld).",
                            kv->string, (long long)lim->vocab_size);
            if (!cJSON_IsNumber(kv) || !isfinite(kv->valuedouble) || kv->valuedouble < -100 || kv->valuedouble > 100)
                return fail(err, 400, "logit_bias", "logit_bias values must be numbers in [-100, 100].");
            eng_sampling_params_add_logit_bias(p, (int32_t)tok, (float)kv->valuedouble);
        }
    }
    if (pd_json_present(root, "allowed_token_ids")) {
        int64_t *vals = NULL;
        size_t nv = 0;
        J(pd_json_get_int_array(root, "allowed_token_ids", (size_t)lim->vocab_size, 0, lim->vocab_size - 1, &vals, &nv, &je));
        if (nv == 0)
            return fail(err, 400, "allowed_token_ids", "allowed_token_ids must not be empty.");
        for (size_t i = 0; i < nv; i++)
            eng_sampling_params_add_allowed(p, (int32_t)vals[i]);
        free(vals);
    }
    GET_BOOL("skip_special_tokens", p->skip_special_tokens);
    GET_BOOL("spaces_between_special_tokens", p->spaces_between_special_tokens);
    if (pd_json_present(root, "truncate_prompt_tokens")) {
        J(pd_json_get_int(root, "truncate_prompt_tokens", 1, INT32_MAX, &iv, &je));
        p->truncate_prompt_tokens = (int)iv;
    }
    if (pd_json_present(root, "prompt_logprobs")) {
        /* -1 = the whole vocabulary (vLLM), only where --max-logprobs is -1 too */
        J(pd_json_get_int(root, "prompt_logprobs", -1, INT32_MAX, &iv, &je));
        if (iv == -1 && lim->max_logprobs >= 0)
            return fail(err, 400, "prompt_logprobs", "prompt_logprobs -1 (the whole vocabulary) needs "
                        "--max-logprobs -1; at most %d here.", lim->max_logprobs);
        if (lim->max_logprobs >= 0 && iv > lim->max_logprobs)
            return fail(err, 400, "prompt_logprobs", "Requested prompt logprobs of %lld, which is greater than "
                        "max allowed: %d", (long long)iv, lim->max_logprobs);
        p->prompt_logprobs = iv == -1 ? (int)lim->vocab_size : (int)iv;
    }
    return PD_OK;
}

static const char *const unsupported_fields[] = {
    "guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend",
    "guided_whitespace_pattern", "structured_outputs", "logits_processors", "lora_request",
    "mm_processor_kwargs", NULL};

/* kv_transfer_params: exactly the NixlConnector fields, with their types; null
 * counts as absent.  do_remote_decode (proxy -> prefill) carries no remote_* values;
 * do_remote_prefill (proxy -> decode) needs all of them.  Anything else is a 400. */
/* a pd_json error inside kv_transfer_params, named as such */
static pd_status_t kv_jfail(eng_oai_err_t *err, const pd_json_err_t *je)
{
    char m[sizeof(err->message)];
    jfail(err, je);
    snprintf(m, sizeof(m), "%s", err->message);
    snprintf(err->message, sizeof(err->message), "kv_transfer_params: %.400s", m);
    snprintf(err->param, sizeof(err->param), "kv_transfer_params");
    return PD_ERR_INVAL;
}

#define KJ(expr)                         \
    do {                                 \
        if ((expr) != PD_OK)             \
            return kv_jfail(err, &je);   \
    } while (0)

static pd_status_t parse_kv_params(const cJSON *kv, eng_oai_kv_t *out, eng_oai_err_t *err)
{
    static const char *const known[] = {"do_remote_decode", "do_remote_prefill", "remote_engine_id",
                                        "remote_block_ids", "remote_host", "remote_port",
                                        "remote_request_id", "tp_size", NULL};
    const cJSON *it;
    pd_json_err_t je;
    int bv;
    int64_t iv, *ids = NULL;
    size_t n_ids = 0;

    memset(&je, 0, sizeof(je));
    cJSON_ArrayForEach(it, kv) {
        int k = 0;
        while (known[k] && strcmp(known[k], it->string) != 0)
            k++;
        if (known[k] == NULL)
            return fail(err, 400, "kv_transfer_params", "kv_transfer_params: unknown field '%.64s'", it->string);
    }
    bv = 0;
    KJ(pd_json_get_bool(kv, "do_remote_decode", &bv, &je));
    out->do_remote_decode = bv;
    bv = 0;
    KJ(pd_json_get_bool(kv, "do_remote_prefill", &bv, &je));
    out->do_remote_prefill = bv;
    if (out->do_remote_decode && out->do_remote_prefill)
        return fail(err, 400, "kv_transfer_params", "kv_transfer_params: do_remote_decode and do_remote_prefill "
                    "cannot both be true");
    if (pd_json_present(kv, "tp_size")) {
        KJ(pd_json_get_int(kv, "tp_size", 1, 1024, &iv, &je));
        if (iv != 1)
            return fail(err, 400, "kv_transfer_params", "kv_transfer_params: tp_size %lld is not supported "
                        "(pdserve nodes run tp_size 1)", (long long)iv);
    }
    if (!out->do_remote_prefill) {
        static const char *const remote[] = {"remote_engine_id", "remote_block_ids", "remote_host",
                                             "remote_port", "remote_request_id", NULL};
        for (int k = 0; remote[k]; k++)
            if (out->do_remote_decode && pd_json_present(kv, remote[k]))
                return fail(err, 400, "kv_transfer_params", "kv_transfer_params: %s must be null with "
                            "do_remote_decode", remote[k]);
        return PD_OK;
    }
    KJ(pd_json_get_string(kv, "remote_engine_id", KVX_ID_MAX - 1, &out->remote_engine_id, &je));
    KJ(pd_json_get_string(kv, "remote_host", KVX_HOST_MAX - 1, &out->remote_host, &je));
    KJ(pd_json_get_string(kv, "remote_request_id", KVX_ID_MAX - 1, &out->remote_request_id, &je));
    iv = 0;
    KJ(pd_json_get_int(kv, "remote_port", 1, 65535, &iv, &je));
    out->remote_port = (int)iv;
    if (!out->remote_engine_id || !out->remote_host || !out->remote_request_id || iv == 0 ||
        !pd_json_present(kv, "remote_block_ids"))
        return fail(err, 400, "kv_transfer_params", "kv_transfer_params: do_remote_prefill needs remote_engine_id, "
                    "remote_host, remote_port, remote_block_ids and remote_request_id");
    if (!out->remote_host[0] || !out->remote_request_id[0] || !out->remote_engine_id[0])
        return fail(err, 400, "kv_transfer_params", "kv_transfer_params: empty remote_host, remote_engine_id or "
                    "remote_request_id");
    KJ(pd_json_get_int_array(kv, "remote_block_ids", KVX_MAX_BLOCKS_PER_REQ, 0, INT32_MAX, &ids, &n_ids, &je));
    out->remote_block_ids = malloc((n_ids ? n_ids : 1) * sizeof(uint32_t));
    if (out->remote_block_ids == NULL) {
        free(ids);
        return fail(err, 500, NULL, "out of memory");
    }
    for (size_t i = 0; i < n_ids; i++)
        out->remote_block_ids[i] = (uint32_t)ids[i];
    out->n_remote_block_ids = (int)n_ids;
    free(ids);
    return PD_OK;
}
#undef KJ

pd_status_t eng_oai_parse(eng_oai_kind_t kind, const char *body, size_t len, const eng_oai_limits_t *lim,
                          eng_oai_req_t *r, eng_oai_err_t *err)
{
    pd_json_err_t je;
    const char *s;
    int bv;
    int64_t iv;
    const cJSON *o;
    pd_status_t st;

    memset(r, 0, sizeof(*r));
    memset(err, 0, sizeof(*err));
    r->kind = kind;
    r->logprobs = -1;
    r->add_generation_prompt = true;
    r->add_special_tokens = kind == ENG_OAI_COMPLETION;
    r->return_tokens_as_token_ids = lim->return_tokens_as_token_ids;
    eng_sampling_params_init(&r->params);

    st = pd_json_parse(body, len, 0, 1, &r->root, &je);
    if (st != PD_OK) {
        jfail(err, &je);
        goto fail;
    }
#undef J
#define J(expr)                          \
    do {                                 \
        if ((expr) != PD_OK) {           \
            jfail(err, &je);             \
            st = PD_ERR_INVAL;           \
            goto fail;                   \
        }                                \
    } while (0)
#define TRY(expr)                        \
    do {                                 \
        if ((st = (expr)) != PD_OK)      \
            goto fail;                   \
    } while (0)
    if (pd_json_present(r->root, "model")) {
        J(pd_json_get_string(r->root, "model", 1024, &r->model, &je));
    }
    for (int i = 0; unsupported_fields[i]; i++) {
        if (pd_json_present(r->root, unsupported_fields[i])) {
            st = fail(err, 400, unsupported_fields[i], "'%s' is not supported yet.", unsupported_fields[i]);
            goto fail;
        }
    }
    if (kind == ENG_OAI_COMPLETION) {
        TRY(parse_prompt(r->root, lim, r, err));
        if (pd_json_present(r->root, "suffix")) {
            st = fail(err, 400, "suffix", "suffix is not supported yet.");
            goto fail;
        }
        if (pd_json_present(r->root, "echo")) {
            J(pd_json_get_bool(r->root, "echo", &bv, &je));
            r->echo = bv;
        }
        if (pd_json_present(r->root, "logprobs")) {
            J(pd_json_get_int(r->root, "logprobs", 0, lim->max_logprobs < 0 ? INT32_MAX : lim->max_logprobs, &iv, &je));
            r->logprobs = (int)iv;
            r->want_logprobs = true;
        }
    } else {
        TRY(parse_messages(r->root, r, err));
        if (pd_json_present(r->root, "logprobs")) {
            J(pd_json_get_bool(r->root, "logprobs", &bv, &je));
            r->want_logprobs = bv;
        }
        if (pd_json_present(r->root, "top_logprobs")) {
            J(pd_json_get_int(r->root, "top_logprobs", 0, lim->max_logprobs < 0 ? 20 : lim->max_logprobs, &iv, &je));
            if (!r->want_logprobs) {
                st = fail(err, 400, "top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true.");
                goto fail;
            }
            r->logprobs = (int)iv;
        } else if (r->want_logprobs) {
            r->logprobs = 0;
        }
        if (pd_json_present(r->root, "response_format")) {
            const cJSON *type;
            J(pd_json_get_object(r->root, "response_format", &o, &je));
            type = cJSON_GetObjectItemCaseSensitive(o, "type");
            if (!cJSON_IsString(type)) {
                st = fail(err, 400, "response_format", "'response_format' needs a 'type'.");
                goto fail;
            }
            if (strcmp(type->valuestring, "text") != 0) {
                st = fail(err, 400, "response_format", "response_format type '%.32s' (guided decoding) is not supported yet.",
                          type->valuestring);
                goto fail;
            }
        }
        if (pd_json_present(r->root, "tools")) {
            J(pd_json_get_array(r->root, "tools", 1024, &r->tools, &je));
        }
        /* tool_choice: "none" (the template still sees the tools; nothing is parsed),
         * "auto" (the server's --tool-call-parser reads calls out of the output; also the
         * default when tools are given to such a server, as vLLM); "required" and a named
         * function need guided decoding */
        r->tool_auto = r->tools != NULL && cJSON_GetArraySize(r->tools) > 0 && lim->auto_tools;
        if (pd_json_present(r->root, "tool_choice")) {
            const cJSON *tc = cJSON_GetObjectItemCaseSensitive(r->root, "tool_choice");
            if (cJSON_IsString(tc) && strcmp(tc->valuestring, "none") == 0) {
                r->tool_auto = false;
            } else if (cJSON_IsString(tc) && strcmp(tc->valuestring, "auto") == 0) {
                if (!lim->auto_tools) {
                    st = fail(err, 400, "tool_choice", "\"auto\" tool choice requires --enable-auto-tool-choice and "
                              "--tool-call-parser to be set");
                    goto fail;
                }
                if (!r->tool_auto) {
                    st = fail(err, 400, "tool_choice", "When using `tool_choice`, `tools` must be set.");
                    goto fail;
                }
            } else if (cJSON_IsString(tc) && strcmp(tc->valuestring, "required") == 0) {
                st = fail(err, 400, "tool_choice", "tool_choice \"required\" needs guided decoding, which is not "
                          "supported yet.");
                goto fail;
            } else if (cJSON_IsObject(tc)) {
                st = fail(err, 400, "tool_choice", "a named tool_choice needs guided decoding, which is not supported "
                          "yet.");
                goto fail;
            } else {
                st = fail(err, 400, "tool_choice", "tool_choice must be \"none\", \"auto\", \"required\" or "
                          "{\"type\": \"function\", \"function\": {\"name\": ...}}.");
                goto fail;
            }
        }
        if (pd_json_present(r->root, "documents")) {
            J(pd_json_get_array(r->root, "documents", 1024, &r->documents, &je));
        }
        if (pd_json_present(r->root, "chat_template_kwargs")) {
            J(pd_json_get_object(r->root, "chat_template_kwargs", &r->chat_template_kwargs, &je));
        }
        if (pd_json_present(r->root, "chat_template")) {
            J(pd_json_get_string(r->root, "chat_template", 1 << 20, &r->chat_template, &je));
        }
        if (pd_json_present(r->root, "add_generation_prompt")) {
            J(pd_json_get_bool(r->root, "add_generation_prompt", &bv, &je));
            r->add_generation_prompt = bv;
        }
        if (pd_json_present(r->root, "continue_final_message")) {
            J(pd_json_get_bool(r->root, "continue_final_message", &bv, &je));
            r->continue_final_message = bv;
        }
        if (r->continue_final_message && r->add_generation_prompt) {
            st = fail(err, 400, "continue_final_message", "Cannot set both `continue_final_message` and "
                      "`add_generation_prompt` to True.");
            goto fail;
        }
        TRY(flatten_content((cJSON *)r->messages));
    }
    if (pd_json_present(r->root, "add_special_tokens")) {
        J(pd_json_get_bool(r->root, "add_special_tokens", &bv, &je));
        r->add_special_tokens = bv;
    }
    TRY(parse_sampling(r->root, lim, r, err));
    if (r->has_max_tokens && r->params.max_tokens == 0 && !r->echo) {
        st = fail(err, 400, "max_tokens", "'max_tokens' must be between 1 and %d, got 0 (0 only with echo).",
                  INT32_MAX);
        goto fail;
    }
    r->params.logprobs = r->logprobs;
    if (pd_json_present(r->root, "stream")) {
        J(pd_json_get_bool(r->root, "stream", &bv, &je));
        r->stream = bv;
    }
    /* vLLM: an explicit prompt_logprobs > 0 cannot stream (no chunk carries them) */
    if (r->stream && r->params.prompt_logprobs > 0) {
        st = fail(err, 400, "prompt_logprobs", "`prompt_logprobs` are not available when `stream=True`.");
        goto fail;
    }
    /* completions echo + logprobs: the logprobs include the prompt tokens, which are
     * the prompt logprobs at the same top-N (vLLM; its response then carries them as
     * prompt_logprobs too) */
    if (kind == ENG_OAI_COMPLETION && r->echo && r->want_logprobs && r->params.prompt_logprobs < 0)
        r->params.prompt_logprobs = r->logprobs;
    r->want_prompt_logprobs = r->params.prompt_logprobs >= 0;
    /* max_tokens 0 with echo answers from the prompt alone, without a prefill */
    if (r->want_prompt_logprobs && r->echo && r->has_max_tokens && r->params.max_tokens == 0) {
        st = fail(err, 400, r->want_logprobs ? "logprobs" : "prompt_logprobs",
                  "echo with max_tokens 0 and logprobs or prompt_logprobs is not supported yet (the prompt's "
                  "logprobs need a prefill): ask for max_tokens >= 1.");
        goto fail;
    }
    if (pd_json_present(r->root, "stream_options")) {
        J(pd_json_get_object(r->root, "stream_options", &o, &je));
        if (!r->stream) {
            st = fail(err, 400, "stream_options", "Stream options can only be defined when `stream=True`.");
            goto fail;
        }
        if (pd_json_present(o, "include_usage")) {
            J(pd_json_get_bool(o, "include_usage", &bv, &je));
            r->include_usage = bv;
        }
        if (pd_json_present(o, "continuous_usage_stats")) {
            J(pd_json_get_bool(o, "continuous_usage_stats", &bv, &je));
            r->continuous_usage_stats = bv;
        }
    }
    if (pd_json_present(r->root, "priority")) {
        J(pd_json_get_int(r->root, "priority", INT32_MIN, INT32_MAX, &iv, &je));
        if (iv != 0 && !lim->priority_enabled) {
            st = fail(err, 400, "priority", "Got priority %lld but priority scheduling is not enabled "
                      "(--scheduling-policy priority).", (long long)iv);
            goto fail;
        }
        r->priority = (int)iv;
    }
    if (pd_json_present(r->root, "request_id")) {
        J(pd_json_get_string(r->root, "request_id", 128, &r->request_id, &je));
    }
    if (pd_json_present(r->root, "cache_salt")) {
        J(pd_json_get_string(r->root, "cache_salt", 1024, &s, &je));
        if (*s == '\0') {
            st = fail(err, 400, "cache_salt", "cache_salt must be a non-empty string.");
            goto fail;
        }
        r->cache_salt = s;
    }
    if (pd_json_present(r->root, "kv_transfer_params")) {
        J(pd_json_get_object(r->root, "kv_transfer_params", &r->kv_transfer_params, &je));
        if ((st = parse_kv_params(r->kv_transfer_params, &r->kv, err)) != PD_OK)
            goto fail;
    }
    if (pd_json_present(r->root, "return_tokens_as_token_ids")) {
        J(pd_json_get_bool(r->root, "return_tokens_as_token_ids", &bv, &je));
        r->return_tokens_as_token_ids = bv;
    }
    if (pd_json_present(r->root, "user")) {
        J(pd_json_get_string(r->root, "user", 4096, &s, &je));
    }
    if (pd_json_present(r->root, "bad_words")) {
        /* strings here; the server tokenizes them (it has the tokenizer) */
        size_t nb = 0;
        J(pd_json_get_string_list(r->root, "bad_words", (size_t)lim->max_stop, (size_t)lim->max_stop_len,
                                  &r->bad_words, &nb, &je));
        r->n_bad_words = (int)nb;
    }
    return PD_OK;
fail:
    if (st == PD_ERR_NOMEM && err->status == 0)
        fail(err, 500, NULL, "out of memory");
    eng_oai_req_cleanup(r);
    return st == PD_OK ? PD_ERR_INVAL : st;
#undef J
#undef TRY
}

pd_status_t eng_oai_parse_kv_only(const char *body, size_t len, eng_oai_req_t *r)
{
    pd_json_err_t je;
    eng_oai_err_t err;
    const cJSON *kv;

    memset(r, 0, sizeof(*r));
    if (pd_json_parse(body, len, 0, 1, &r->root, &je) != PD_OK)
        return PD_ERR_INVAL;
    if (!cJSON_IsObject(r->root) || !pd_json_present(r->root, "kv_transfer_params") ||
        pd_json_get_object(r->root, "kv_transfer_params", &kv, &je) != PD_OK ||
        parse_kv_params(kv, &r->kv, &err) != PD_OK) {
        eng_oai_req_cleanup(r);
        return PD_ERR_INVAL;
    }
    return PD_OK;
}

void eng_oai_req_cleanup(eng_oai_req_t *r)
{
    for (int i = 0; i < r->n_prompts; i++)
        free(r->prompts[i].ids);
    free(r->prompts);
    free(r->bad_words);
    eng_sampling_params_cleanup(&r->params);
    free(r->kv.remote_block_ids);
    cJSON_Delete(r->root);
    memset(r, 0, sizeof(*r));
}
