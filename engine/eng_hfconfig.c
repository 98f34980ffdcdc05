/*
 * eng_hfconfig.c - Hugging Face config.json / generation_config.json to
 * eng_model_config_t, the same for GGUF metadata (turned into a config.json equivalent
 * first so overrides and checks are shared), tensor name mapping and the list of
 * tensors each architecture needs.
 *
 * Defaults follow the transformers configuration classes of each architecture.
 * max_model_len and dtype are resolved the way vLLM resolves them (see the functions).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_model_int.h"
#include "pd_log.h"
#include "pd_util.h"

/* ---- JSON helpers: absent or null keys give the default; wrong types are errors ---- */

static const cJSON *jget(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNull(v) ? NULL : v;
}

static pd_status_t jnum(const cJSON *obj, const char *key, double def, double *out)
{
    const cJSON *v = jget(obj, key);
    if (v == NULL) {
        *out = def;
        return PD_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        PD_LOG_ERR("config: '%s' must be a number", key);
        return PD_ERR_FORMAT;
    }
    *out = v->valuedouble;
    return PD_OK;
}

/* An integer in [lo, hi]; def < lo means "required". */
static pd_status_t jint(const cJSON *obj, const char *key, int64_t def, int64_t lo, int64_t hi,
                        int64_t *out)
{
    const cJSON *v = jget(obj, key);
    if (v == NULL) {
        if (def < lo) {
            PD_LOG_ERR("config: '%s' is required", key);
            return PD_ERR_FORMAT;
        }
        *out = def;
        return PD_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < (double)lo || v->valuedouble > (double)hi) {
        PD_LOG_ERR("config: '%s' must be an integer in [%lld, %lld]", key, (long long)lo,
                   (long long)hi);
        return PD_ERR_FORMAT;
    }
    *out = (int64_t)v->valuedouble;
    return PD_OK;
}

static pd_status_t jint32(const cJSON *obj, const char *key, int64_t def, int64_t lo, int64_t hi,
                          int *out)
{
    int64_t v;
    pd_status_t st = jint(obj, key, def, lo, hi, &v);
    if (st == PD_OK)
        *out = (int)v;
    return st;
}

static pd_status_t jbool(const cJSON *obj, const char *key, bool def, bool *out)
{
    const cJSON *v = jget(obj, key);
    if (v == NULL) {
        *out = def;
        return PD_OK;
    }
    if (!cJSON_IsBool(v)) {
        PD_LOG_ERR("config: '%s' must be true or false", key);
        return PD_ERR_FORMAT;
    }
    *out = cJSON_IsTrue(v);
    return PD_OK;
}

static const char *jstr(const cJSON *obj, const char *key)
{
    const cJSON *v = jget(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ---- merging ---- */

pd_status_t eng_hfconfig_merge(cJSON *dst, const cJSON *src)
{
    const cJSON *item;

    if (!cJSON_IsObject(dst) || !cJSON_IsObject(src))
        return PD_ERR_INVAL;
    cJSON_ArrayForEach(item, src) {
        cJSON *cur = cJSON_GetObjectItemCaseSensitive(dst, item->string);
        if (cJSON_IsObject(cur) && cJSON_IsObject(item)) {
            pd_status_t st = eng_hfconfig_merge(cur, item);
            if (st != PD_OK)
                return st;
            continue;
        }
        cJSON *copy = cJSON_Duplicate(item, 1);
        if (copy == NULL)
            return PD_ERR_NOMEM;
        if (cur != NULL) {
            if (!cJSON_ReplaceItemInObjectCaseSensitive(dst, item->string, copy)) {
                cJSON_Delete(copy);
                return PD_ERR_NOMEM;
            }
        } else if (!cJSON_AddItemToObject(dst, item->string, copy)) {
            cJSON_Delete(copy);
            return PD_ERR_NOMEM;
        }
    }
    return PD_OK;
}

/* ---- architecture ---- */

static const struct {
    const char *hf_arch;
    const char *model_type;
    eng_arch_t arch;
} arch_table[] = {
    {"LlamaForCausalLM", "llama", ENG_ARCH_LLAMA},
    {"MistralForCausalLM", "mistral", ENG_ARCH_MISTRAL},
    {"Qwen2ForCausalLM", "qwen2", ENG_ARCH_QWEN2},
    {"Qwen3ForCausalLM", "qwen3", ENG_ARCH_QWEN3},
    {"OPTForCausalLM", "opt", ENG_ARCH_OPT},
};

const char *eng_arch_name(eng_arch_t arch)
{
    for (size_t i = 0; i < PD_ARRAY_SIZE(arch_table); i++)
        if (arch_table[i].arch == arch)
            return arch_table[i].model_type;
    return "?";
}

static pd_status_t detect_arch(const cJSON *json, eng_model_config_t *cfg)
{
    const cJSON *archs = jget(json, "architectures");
    const char *mt = jstr(json, "model_type");
    const char *first = NULL;

    if (cJSON_IsArray(archs) && cJSON_IsString(cJSON_GetArrayItem(archs, 0)))
        first = cJSON_GetArrayItem(archs, 0)->valuestring;
    for (size_t i = 0; i < PD_ARRAY_SIZE(arch_table); i++)
        if ((first != NULL && strcmp(first, arch_table[i].hf_arch) == 0) ||
            (first == NULL && mt != NULL && strcmp(mt, arch_table[i].model_type) == 0)) {
            cfg->arch = arch_table[i].arch;
            snprintf(cfg->hf_arch, sizeof(cfg->hf_arch), "%s", arch_table[i].hf_arch);
            snprintf(cfg->model_type, sizeof(cfg->model_type), "%s",
                     mt ? mt : arch_table[i].model_type);
            return PD_OK;
        }
    PD_LOG_ERR("config: architecture '%s' (model_type '%s') is not supported yet; supported: "
               "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "
               "OPTForCausalLM", first ? first : "(none)", mt ? mt : "(none)");
    return PD_ERR_UNSUPPORTED;
}

static pd_status_t parse_act(const char *s, eng_act_t *act)
{
    if (s == NULL || strcmp(s, "silu") == 0 || strcmp(s, "swish") == 0)
        *act = ENG_ACT_SILU;
    else if (strcmp(s, "relu") == 0)
        *act = ENG_ACT_RELU;
    else if (strcmp(s, "gelu") == 0)
        *act = ENG_ACT_GELU;
    else if (strcmp(s, "gelu_new") == 0 || strcmp(s, "gelu_pytorch_tanh") == 0 ||
             strcmp(s, "gelu_fast") == 0)
        *act = ENG_ACT_GELU_TANH;
    else {
        PD_LOG_ERR("config: activation '%s' is not supported yet", s);
        return PD_ERR_UNSUPPORTED;
    }
    return PD_OK;
}

static pd_status_t parse_rope_scaling(const cJSON *rs, const eng_model_config_t *cfg,
                                      eng_rope_scaling_t *out)
{
    const char *type;
    pd_status_t st;

    memset(out, 0, sizeof(*out));
    out->factor = 1.0;
    if (rs == NULL)
        return PD_OK;
    if (!cJSON_IsObject(rs)) {
        PD_LOG_ERR("config: rope_scaling must be an object or null");
        return PD_ERR_FORMAT;
    }
    type = jstr(rs, "rope_type");
    if (type == NULL)
        type = jstr(rs, "type");
    if (type == NULL || strcmp(type, "default") == 0)
        return PD_OK;
    if ((st = jnum(rs, "factor", 1.0, &out->factor)) != PD_OK)
        return st;
    if (out->factor < 1.0 && strcmp(type, "linear") != 0) {
        PD_LOG_ERR("config: rope_scaling factor %g must be >= 1", out->factor);
        return PD_ERR_FORMAT;
    }
    if (out->factor <= 0) {
        PD_LOG_ERR("config: rope_scaling factor %g must be > 0", out->factor);
        return PD_ERR_FORMAT;
    }
    if (strcmp(type, "linear") == 0) {
        out->type = ENG_ROPE_SCALING_LINEAR;
    } else if (strcmp(type, "dynamic") == 0) {
        out->type = ENG_ROPE_SCALING_DYNAMIC;
    } else if (strcmp(type, "llama3") == 0) {
        out->type = ENG_ROPE_SCALING_LLAMA3;
        if ((st = jnum(rs, "low_freq_factor", 1.0, &out->low_freq_factor)) != PD_OK ||
            (st = jnum(rs, "high_freq_factor", 4.0, &out->high_freq_factor)) != PD_OK ||
            (st = jint(rs, "original_max_position_embeddings", 8192, 1, INT64_MAX / 4,
                       &out->original_max_position)) != PD_OK)
            return st;
        if (out->high_freq_factor <= out->low_freq_factor) {
            PD_LOG_ERR("config: llama3 rope_scaling needs high_freq_factor > low_freq_factor");
            return PD_ERR_FORMAT;
        }
    } else if (strcmp(type, "yarn") == 0) {
        out->type = ENG_ROPE_SCALING_YARN;
        if ((st = jint(rs, "original_max_position_embeddings", cfg->max_position, 1,
                       INT64_MAX / 4, &out->original_max_position)) != PD_OK ||
            (st = jnum(rs, "beta_fast", 32.0, &out->beta_fast)) != PD_OK ||
            (st = jnum(rs, "beta_slow", 1.0, &out->beta_slow)) != PD_OK ||
            (st = jnum(rs, "attention_factor", 0.0, &out->attn_factor)) != PD_OK)
            return st;
        if (out->attn_factor == 0.0)
            out->attn_factor = out->factor <= 1.0 ? 1.0 : 0.1 * log(out->factor) + 1.0;
    } else {
        PD_LOG_ERR("config: rope_scaling type '%s' is not supported yet (linear, dynamic, "
                   "llama3, yarn are)", type);
        return PD_ERR_UNSUPPORTED;
    }
    return PD_OK;
}

static pd_status_t parse_token_ids(const cJSON *json, eng_model_config_t *cfg)
{
    const cJSON *eos = jget(json, "eos_token_id");
    int64_t v;
    pd_status_t st;

    if ((st = jint(json, "bos_token_id", -1, -1, INT32_MAX, &v)) != PD_OK)
        return st;
    cfg->bos_token_id = (int32_t)v;
    if ((st = jint(json, "pad_token_id", -1, -1, INT32_MAX, &v)) != PD_OK)
        return st;
    cfg->pad_token_id = (int32_t)v;
    cfg->n_eos = 0;
    if (cJSON_IsNumber(eos)) {
        if ((st = jint(json, "eos_token_id", -1, 0, INT32_MAX, &v)) != PD_OK)
            return st;
        cfg->eos_token_ids[cfg->n_eos++] = (int32_t)v;
    } else if (cJSON_IsArray(eos)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, eos) {
            if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > INT32_MAX ||
                e->valuedouble != floor(e->valuedouble)) {
                PD_LOG_ERR("config: eos_token_id list holds a non-id");
                return PD_ERR_FORMAT;
            }
            if (cfg->n_eos < ENG_MAX_EOS)
                cfg->eos_token_ids[cfg->n_eos++] = (int32_t)e->valuedouble;
        }
    } else if (eos != NULL) {
        PD_LOG_ERR("config: eos_token_id must be an id or a list of ids");
        return PD_ERR_FORMAT;
    }
    return PD_OK;
}

static void add_eos(eng_model_config_t *cfg, int32_t id)
{
    for (int i = 0; i < cfg->n_eos; i++)
        if (cfg->eos_token_ids[i] == id)
            return;
    if (cfg->n_eos < ENG_MAX_EOS)
        cfg->eos_token_ids[cfg->n_eos++] = id;
}

static pd_status_t parse_llama_family(const cJSON *json, eng_model_config_t *cfg)
{
    int64_t def_max_pos = 2048;
    double partial = 1.0;
    bool attn_bias, mlp_bias, use_sw = false;
    pd_status_t st;

    switch (cfg->arch) {
    case ENG_ARCH_MISTRAL:
        def_max_pos = 4096 * 32;
        break;
    case ENG_ARCH_QWEN2:
    case ENG_ARCH_QWEN3:
        def_max_pos = 32768;
        break;
    default:
        break;
    }
    if ((st = jint32(json, "hidden_size", -1, 1, 1 << 20, &cfg->hidden)) != PD_OK ||
        (st = jint32(json, "num_hidden_layers", -1, 1, 4096, &cfg->n_layers)) != PD_OK ||
        (st = jint32(json, "num_attention_heads", -1, 1, 4096, &cfg->n_heads)) != PD_OK ||
        (st = jint32(json, "num_key_value_heads", cfg->n_heads, 1, 4096, &cfg->n_kv_heads)) !=
            PD_OK ||
        (st = jint32(json, "intermediate_size", -1, 1, 1 << 22, &cfg->intermediate)) != PD_OK ||
        (st = jint(json, "vocab_size", -1, 1, 1 << 24, &cfg->vocab_size)) != PD_OK ||
        (st = jint(json, "max_position_embeddings", def_max_pos, 1, INT64_MAX / 4,
                   &cfg->max_position)) != PD_OK ||
        (st = jnum(json, "rms_norm_eps", 1e-6, &cfg->norm_eps)) != PD_OK ||
        (st = jnum(json, "rope_theta", 10000.0, &cfg->rope_theta)) != PD_OK ||
        (st = jnum(json, "partial_rotary_factor", 1.0, &partial)) != PD_OK ||
        (st = jbool(json, "tie_word_embeddings", false, &cfg->tie_embeddings)) != PD_OK ||
        (st = jbool(json, "attention_bias", false, &attn_bias)) != PD_OK ||
        (st = jbool(json, "mlp_bias", false, &mlp_bias)) != PD_OK ||
        (st = jbool(json, "use_sliding_window", false, &use_sw)) != PD_OK)
        return st;
    if (cfg->hidden % cfg->n_heads != 0 && jget(json, "head_dim") == NULL) {
        PD_LOG_ERR("config: hidden_size %d is not a multiple of num_attention_heads %d",
                   cfg->hidden, cfg->n_heads);
        return PD_ERR_FORMAT;
    }
    if ((st = jint32(json, "head_dim", cfg->hidden / cfg->n_heads, 2, 1 << 16,
                     &cfg->head_dim)) != PD_OK)
        return st;
    if (cfg->head_dim % 2 != 0 || cfg->n_heads % cfg->n_kv_heads != 0) {
        PD_LOG_ERR("config: head_dim %d must be even and num_attention_heads %d a multiple "
                   "of num_key_value_heads %d", cfg->head_dim, cfg->n_heads, cfg->n_kv_heads);
        return PD_ERR_FORMAT;
    }
    if (!(partial > 0 && partial <= 1)) {
        PD_LOG_ERR("config: partial_rotary_factor %g must be in (0, 1]", partial);
        return PD_ERR_FORMAT;
    }
    cfg->rotary_dim = (int)(cfg->head_dim * partial);
    cfg->rotary_dim -= cfg->rotary_dim % 2;
    if (cfg->rotary_dim < 2)
        cfg->rotary_dim = 2;
    if ((st = parse_act(jstr(json, "hidden_act"), &cfg->act)) != PD_OK)
        return st;
    cfg->norm = ENG_NORM_RMS;
    cfg->rope_style = ENG_ROPE_NEOX;
    cfg->gated_ffn = true;
    cfg->mlp_bias = mlp_bias;
    cfg->qkv_bias = attn_bias;
    cfg->o_bias = attn_bias;
    if (cfg->arch == ENG_ARCH_QWEN2) {
        cfg->qkv_bias = true; /* Qwen2 always has q/k/v biases and none on o_proj */
        cfg->o_bias = false;
    }
    cfg->qk_norm = cfg->arch == ENG_ARCH_QWEN3;
    cfg->sliding_window = 0;
    if (cfg->arch == ENG_ARCH_MISTRAL || use_sw) {
        int64_t sw;
        if ((st = jint(json, "sliding_window", 0, 0, INT32_MAX, &sw)) != PD_OK)
            return st;
        cfg->sliding_window = (int)sw;
        if (sw > 0 && cfg->arch != ENG_ARCH_MISTRAL)
            PD_LOG_WARN("config: use_sliding_window with max_window_layers: the window is "
                        "applied to every layer");
    }
    return PD_OK;
}

static pd_status_t parse_opt(const cJSON *json, eng_model_config_t *cfg)
{
    bool pre_ln, affine, bias;
    int proj_dim;
    pd_status_t st;

    if ((st = jint32(json, "hidden_size", -1, 1, 1 << 20, &cfg->hidden)) != PD_OK ||
        (st = jint32(json, "num_hidden_layers", -1, 1, 4096, &cfg->n_layers)) != PD_OK ||
        (st = jint32(json, "num_attention_heads", -1, 1, 4096, &cfg->n_heads)) != PD_OK ||
        (st = jint32(json, "ffn_dim", -1, 1, 1 << 22, &cfg->intermediate)) != PD_OK ||
        (st = jint(json, "vocab_size", -1, 1, 1 << 24, &cfg->vocab_size)) != PD_OK ||
        (st = jint(json, "max_position_embeddings", 2048, 1, INT32_MAX, &cfg->max_position)) !=
            PD_OK ||
        (st = jbool(json, "do_layer_norm_before", true, &pre_ln)) != PD_OK ||
        (st = jbool(json, "layer_norm_elementwise_affine", true, &affine)) != PD_OK ||
        (st = jbool(json, "enable_bias", true, &bias)) != PD_OK ||
        (st = jbool(json, "tie_word_embeddings", true, &cfg->tie_embeddings)) != PD_OK ||
        (st = jint32(json, "word_embed_proj_dim", cfg->hidden, 1, 1 << 20, &proj_dim)) != PD_OK)
        return st;
    if (!pre_ln || !affine || proj_dim != cfg->hidden) {
        PD_LOG_ERR("config: OPT with do_layer_norm_before=false, non-affine layer norms or "
                   "word_embed_proj_dim != hidden_size (OPT-350m) is not supported yet");
        return PD_ERR_UNSUPPORTED;
    }
    if (cfg->hidden % cfg->n_heads != 0 || (cfg->hidden / cfg->n_heads) % 2 != 0) {
        PD_LOG_ERR("config: hidden_size %d / num_attention_heads %d", cfg->hidden, cfg->n_heads);
        return PD_ERR_FORMAT;
    }
    cfg->n_kv_heads = cfg->n_heads;
    cfg->head_dim = cfg->hidden / cfg->n_heads;
    cfg->rotary_dim = 0;
    cfg->norm = ENG_NORM_LAYER;
    cfg->norm_eps = 1e-5;
    cfg->rope_style = ENG_ROPE_NONE;
    cfg->rope_theta = 0;
    cfg->gated_ffn = false;
    cfg->qkv_bias = cfg->o_bias = cfg->mlp_bias = bias;
    cfg->pos_embd_offset = 2; /* OPTLearnedPositionalEmbedding's offset */
    return parse_act(jstr(json, "activation_function") ? jstr(json, "activation_function")
                                                        : "relu",
                     &cfg->act);
}

/* vLLM's _get_and_verify_max_len: the smallest length key in the config, scaled by a
 * rope scaling factor (except llama3, whose factor does not extend the context). */
static pd_status_t resolve_max_len(const cJSON *json, const eng_load_opts_t *opts,
                                   eng_model_config_t *cfg)
{
    static const char *keys[] = {"max_position_embeddings", "n_positions", "max_seq_len",
                                 "seq_length", "model_max_length", "max_sequence_length",
                                 "max_seq_length", "seq_len"};
    double derived = INFINITY;
    const char *env;

    for (size_t i = 0; i < PD_ARRAY_SIZE(keys); i++) {
        const cJSON *v = jget(json, keys[i]);
        if (cJSON_IsNumber(v) && v->valuedouble > 0 && v->valuedouble < derived)
            derived = v->valuedouble;
    }
    if (isinf(derived))
        derived = (double)cfg->max_position;
    switch (cfg->rope_scaling.type) {
    case ENG_ROPE_SCALING_LINEAR:
    case ENG_ROPE_SCALING_DYNAMIC:
        derived *= cfg->rope_scaling.factor;
        break;
    case ENG_ROPE_SCALING_YARN:
        derived = (double)cfg->rope_scaling.original_max_position * cfg->rope_scaling.factor;
        break;
    default:
        break;
    }
    if (derived > (double)INT32_MAX)
        derived = INT32_MAX;
    /* --disable-sliding-window (vLLM): full attention, and no context longer than the
     * window, so every key a row may see is inside the window anyway */
    if (opts != NULL && opts->disable_sliding_window && cfg->sliding_window > 0) {
        if ((double)cfg->sliding_window < derived)
            derived = (double)cfg->sliding_window;
        cfg->sliding_window = 0;
    }
    int64_t d = (int64_t)derived;
    if (opts == NULL || opts->max_model_len == 0) {
        cfg->max_model_len = d;
        return PD_OK;
    }
    if (opts->max_model_len < 0) {
        PD_LOG_ERR("max_model_len %lld must be positive", (long long)opts->max_model_len);
        return PD_ERR_INVAL;
    }
    if (opts->max_model_len > d) {
        /* vLLM's override is VLLM_ALLOW_LONG_MAX_MODEL_LEN=1; pdserve takes it too, so a
         * deployment moved from vLLM keeps working */
        const char *name = "PD_ALLOW_LONG_MAX_MODEL_LEN";
        env = getenv(name);
        if (env == NULL || strcmp(env, "1") != 0) {
            name = "VLLM_ALLOW_LONG_MAX_MODEL_LEN";
            env = getenv(name);
        }
        if (env == NULL || strcmp(env, "1") != 0) {
            PD_LOG_ERR("user-specified max_model_len (%lld) is greater than the derived "
                       "max_model_len (%lld, from the model's config); set "
                       "PD_ALLOW_LONG_MAX_MODEL_LEN=1 (or VLLM_ALLOW_LONG_MAX_MODEL_LEN=1) to "
                       "allow it anyway",
                       (long long)opts->max_model_len, (long long)d);
            return PD_ERR_INVAL;
        }
        PD_LOG_WARN("max_model_len %lld exceeds the model's %lld (allowed by %s=1): outputs "
                    "may be wrong", (long long)opts->max_model_len, (long long)d, name);
    }
    cfg->max_model_len = opts->max_model_len;
    return PD_OK;
}

/* vLLM's dtype rule: auto keeps the checkpoint's half type and turns float32 into
 * float16; an explicit name wins. */
static pd_status_t resolve_dtype(const cJSON *json, const eng_load_opts_t *opts,
                                 eng_model_config_t *cfg)
{
    const char *td = jstr(json, "torch_dtype");
    const char *want = opts ? opts->dtype : NULL;

    if (td == NULL)
        td = jstr(json, "dtype");
    cfg->torch_dtype = td ? eng_dtype_from_name(td) : ENG_DTYPE_F32;
    if (cfg->torch_dtype != ENG_DTYPE_F32 && cfg->torch_dtype != ENG_DTYPE_F16 &&
        cfg->torch_dtype != ENG_DTYPE_BF16) {
        PD_LOG_WARN("config: torch_dtype '%s' treated as float32", td ? td : "?");
        cfg->torch_dtype = ENG_DTYPE_F32;
    }
    if (want == NULL || strcmp(want, "auto") == 0) {
        cfg->dtype = cfg->torch_dtype == ENG_DTYPE_BF16 ? ENG_DTYPE_BF16 : ENG_DTYPE_F16;
        return PD_OK;
    }
    if (strcmp(want, "half") == 0 || strcmp(want, "float16") == 0)
        cfg->dtype = ENG_DTYPE_F16;
    else if (strcmp(want, "bfloat16") == 0)
        cfg->dtype = ENG_DTYPE_BF16;
    else if (strcmp(want, "float") == 0 || strcmp(want, "float32") == 0)
        cfg->dtype = ENG_DTYPE_F32;
    else {
        PD_LOG_ERR("dtype '%s' is not one of auto, half, float16, bfloat16, float, float32",
                   want);
        return PD_ERR_INVAL;
    }
    return PD_OK;
}

pd_status_t eng_hfconfig_parse(const cJSON *json, const eng_load_opts_t *opts,
                               eng_model_config_t *cfg_p)
{
    eng_model_config_t cfg;
    cJSON *rs_override = NULL;
    const cJSON *rs;
    pd_status_t st;

    if (!cJSON_IsObject(json)) {
        PD_LOG_ERR("config: not a JSON object");
        return PD_ERR_FORMAT;
    }
    memset(&cfg, 0, sizeof(cfg));
    if ((st = detect_arch(json, &cfg)) != PD_OK)
        return st;
    st = cfg.arch == ENG_ARCH_OPT ? parse_opt(json, &cfg) : parse_llama_family(json, &cfg);
    if (st != PD_OK)
        return st;
    if ((st = parse_token_ids(json, &cfg)) != PD_OK)
        return st;

    rs = jget(json, "rope_scaling");
    if (opts != NULL && opts->rope_scaling != NULL && opts->rope_scaling[0] != '\0') {
        rs_override = cJSON_Parse(opts->rope_scaling);
        if (rs_override == NULL || !(cJSON_IsObject(rs_override) || cJSON_IsNull(rs_override))) {
            PD_LOG_ERR("--rope-scaling is not a JSON object: %s", opts->rope_scaling);
            cJSON_Delete(rs_override);
            return PD_ERR_INVAL;
        }
        rs = cJSON_IsNull(rs_override) ? NULL : rs_override;
    }
    if (cfg.arch != ENG_ARCH_OPT)
        st = parse_rope_scaling(rs, &cfg, &cfg.rope_scaling);
    else
        cfg.rope_scaling.factor = 1.0;
    cJSON_Delete(rs_override);
    if (st != PD_OK)
        return st;
    if (opts != NULL && opts->rope_theta != 0) {
        if (!(opts->rope_theta > 0) || !isfinite(opts->rope_theta)) {
            PD_LOG_ERR("--rope-theta %g must be positive", opts->rope_theta);
            return PD_ERR_INVAL;
        }
        cfg.rope_theta = opts->rope_theta;
    }
    if (cfg.arch != ENG_ARCH_OPT && !(cfg.rope_theta > 0)) {
        PD_LOG_ERR("config: rope_theta %g must be positive", cfg.rope_theta);
        return PD_ERR_FORMAT;
    }
    if (!(cfg.norm_eps > 0)) {
        PD_LOG_ERR("config: norm epsilon %g must be positive", cfg.norm_eps);
        return PD_ERR_FORMAT;
    }
    if ((st = resolve_max_len(json, opts, &cfg)) != PD_OK)
        return st;
    if ((st = resolve_dtype(json, opts, &cfg)) != PD_OK)
        return st;
    const char *name = jstr(json, "_name_or_path");
    snprintf(cfg.name, sizeof(cfg.name), "%s", name ? name : "");
    *cfg_p = cfg;
    return PD_OK;
}

void eng_hfconfig_parse_gen(const cJSON *json, eng_gen_config_t *gen, eng_model_config_t *cfg)
{
    const cJSON *v;

    memset(gen, 0, sizeof(*gen));
    if (!cJSON_IsObject(json))
        return;
#define GEN_NUM(key, field)                                                 \
    v = jget(json, key);                                                    \
    if (cJSON_IsNumber(v) && isfinite(v->valuedouble)) {                    \
        gen->field = v->valuedouble;                                        \
        gen->has_##field = true;                                            \
    }
    GEN_NUM("temperature", temperature)
    GEN_NUM("top_p", top_p)
    GEN_NUM("min_p", min_p)
    GEN_NUM("repetition_penalty", repetition_penalty)
#undef GEN_NUM
    v = jget(json, "top_k");
    if (cJSON_IsNumber(v) && v->valuedouble >= -1 && v->valuedouble < 1e9) {
        gen->top_k = (int64_t)v->valuedouble;
        gen->has_top_k = true;
    }
    v = jget(json, "max_new_tokens");
    if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 1e12) {
        gen->max_new_tokens = (int64_t)v->valuedouble;
        gen->has_max_new_tokens = true;
    }
    /* generation_config's eos ids stop generation too (vLLM adds them to stop ids) */
    v = jget(json, "eos_token_id");
    if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= INT32_MAX)
        add_eos(cfg, (int32_t)v->valuedouble);
    else if (cJSON_IsArray(v)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, v)
            if (cJSON_IsNumber(e) && e->valuedouble >= 0 && e->valuedouble <= INT32_MAX)
                add_eos(cfg, (int32_t)e->valuedouble);
    }
}

/* ---- GGUF metadata -> config.json ---- */

static pd_status_t add_num(cJSON *obj, const char *key, double v)
{
    return cJSON_AddNumberToObject(obj, key, v) ? PD_OK : PD_ERR_NOMEM;
}

pd_status_t eng_hfconfig_from_gguf(const eng_gguf_t *g, cJSON **json_p)
{
    static const struct {
        const char *gguf_arch;
        const char *hf_arch, *model_type;
    } archs[] = {
        {"llama", "LlamaForCausalLM", "llama"},
        {"qwen2", "Qwen2ForCausalLM", "qwen2"},
        {"qwen3", "Qwen3ForCausalLM", "qwen3"},
    };
    char arch[32], key[128];
    const char *s;
    size_t len;
    size_t ai;
    cJSON *j;
    pd_status_t st = PD_ERR_NOMEM;

    if (eng_gguf_get_str(g, "general.architecture", &s, &len) != PD_OK || len == 0 ||
        len >= sizeof(arch)) {
        PD_LOG_ERR("gguf: general.architecture is missing");
        return PD_ERR_FORMAT;
    }
    memcpy(arch, s, len);
    arch[len] = '\0';
    for (ai = 0; ai < PD_ARRAY_SIZE(archs); ai++)
        if (strcmp(arch, archs[ai].gguf_arch) == 0)
            break;
    if (ai == PD_ARRAY_SIZE(archs)) {
        PD_LOG_ERR("gguf: architecture '%s' is not supported yet (llama, qwen2, qwen3 are)",
                   arch);
        return PD_ERR_UNSUPPORTED;
    }
    j = cJSON_CreateObject();
    if (j == NULL)
        return PD_ERR_NOMEM;
    cJSON *list = cJSON_AddArrayToObject(j, "architectures");
    if (list == NULL || !cJSON_AddItemToArray(list, cJSON_CreateString(archs[ai].hf_arch)) ||
        !cJSON_AddStringToObject(j, "model_type", archs[ai].model_type))
        goto err_json;

    /* integer keys, with the config.json name each maps to */
    static const struct {
        const char *suffix, *hf;
        bool required;
    } ints[] = {
        {"block_count", "num_hidden_layers", true},
        {"embedding_length", "hidden_size", true},
        {"feed_forward_length", "intermediate_size", true},
        {"attention.head_count", "num_attention_heads", true},
        {"attention.head_count_kv", "num_key_value_heads", false},
        {"context_length", "max_position_embeddings", false},
        {"attention.key_length", "head_dim", false},
        {"attention.sliding_window", "sliding_window", false},
    };
    int64_t heads = 0, key_len = 0;
    for (size_t i = 0; i < PD_ARRAY_SIZE(ints); i++) {
        int64_t v;
        snprintf(key, sizeof(key), "%s.%s", arch, ints[i].suffix);
        pd_status_t gs = eng_gguf_get_i64(g, key, &v);
        if (gs == PD_ERR_NOT_FOUND && !ints[i].required)
            continue;
        if (gs != PD_OK || v <= 0 || v > INT32_MAX) {
            PD_LOG_ERR("gguf: %s is missing or not a positive integer", key);
            st = PD_ERR_FORMAT;
            goto err_json;
        }
        if (strcmp(ints[i].hf, "num_attention_heads") == 0)
            heads = v;
        if (strcmp(ints[i].hf, "head_dim") == 0)
            key_len = v;
        if (add_num(j, ints[i].hf, (double)v) != PD_OK)
            goto err_json;
    }
    /* vocab: the embedding's rows are the truth; the metadata and token list agree */
    const eng_gguf_tensor_info_t *emb = eng_gguf_find_tensor(g, "token_embd.weight");
    int64_t vocab = 0;
    size_t n_tok;
    snprintf(key, sizeof(key), "%s.vocab_size", arch);
    if (emb != NULL)
        vocab = emb->ne[1];
    else if (eng_gguf_get_i64(g, key, &vocab) != PD_OK &&
             eng_gguf_get_arr_info(g, "tokenizer.ggml.tokens", NULL, &n_tok) == PD_OK)
        vocab = (int64_t)n_tok;
    if (vocab <= 0 || add_num(j, "vocab_size", (double)vocab) != PD_OK) {
        st = vocab <= 0 ? PD_ERR_FORMAT : PD_ERR_NOMEM;
        if (vocab <= 0)
            PD_LOG_ERR("gguf: cannot tell the vocabulary size");
        goto err_json;
    }
    double f;
    snprintf(key, sizeof(key), "%s.rope.freq_base", arch);
    if (eng_gguf_get_f64(g, key, &f) == PD_OK && add_num(j, "rope_theta", f) != PD_OK)
        goto err_json;
    snprintf(key, sizeof(key), "%s.attention.layer_norm_rms_epsilon", arch);
    if (eng_gguf_get_f64(g, key, &f) == PD_OK && add_num(j, "rms_norm_eps", f) != PD_OK)
        goto err_json;
    int64_t rot;
    snprintf(key, sizeof(key), "%s.rope.dimension_count", arch);
    if (eng_gguf_get_i64(g, key, &rot) == PD_OK && heads > 0) {
        int64_t hid = 0;
        snprintf(key, sizeof(key), "%s.embedding_length", arch);
        eng_gguf_get_i64(g, key, &hid);
        int64_t hd = key_len > 0 ? key_len : hid / heads;
        if (rot > 0 && hd > 0 && rot < hd && add_num(j, "partial_rotary_factor",
                                                      (double)rot / (double)hd) != PD_OK)
            goto err_json;
    }
    /* rope scaling as stored by llama.cpp's converter */
    snprintf(key, sizeof(key), "%s.rope.scaling.type", arch);
    if (eng_gguf_get_str(g, key, &s, &len) == PD_OK && len > 0 && len < 32 &&
        !(len == 4 && memcmp(s, "none", 4) == 0)) {
        cJSON *rs = cJSON_AddObjectToObject(j, "rope_scaling");
        char type[32];
        memcpy(type, s, len);
        type[len] = '\0';
        if (rs == NULL || !cJSON_AddStringToObject(rs, "rope_type", type))
            goto err_json;
        snprintf(key, sizeof(key), "%s.rope.scaling.factor", arch);
        if (eng_gguf_get_f64(g, key, &f) == PD_OK && add_num(rs, "factor", f) != PD_OK)
            goto err_json;
        int64_t orig;
        snprintf(key, sizeof(key), "%s.rope.scaling.original_context_length", arch);
        if (eng_gguf_get_i64(g, key, &orig) == PD_OK &&
            add_num(rs, "original_max_position_embeddings", (double)orig) != PD_OK)
            goto err_json;
    }
    if (eng_gguf_find_tensor(g, "rope_freqs.weight") != NULL)
        PD_LOG_WARN("gguf: rope_freqs.weight (llama3 rope scaling factors) is kept as a "
                    "tensor; the config has no rope_scaling for it");
    if (!cJSON_AddBoolToObject(j, "tie_word_embeddings",
                               eng_gguf_find_tensor(g, "output.weight") == NULL))
        goto err_json;
    if (strcmp(arch, "qwen3") == 0 && eng_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL &&
        !cJSON_AddBoolToObject(j, "attention_bias", true))
        goto err_json;
    if (strcmp(arch, "llama") == 0 && eng_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL &&
        !cJSON_AddBoolToObject(j, "attention_bias", true))
        goto err_json;
    static const struct {
        const char *gguf, *hf;
    } ids[] = {
        {"tokenizer.ggml.bos_token_id", "bos_token_id"},
        {"tokenizer.ggml.eos_token_id", "eos_token_id"},
        {"tokenizer.ggml.padding_token_id", "pad_token_id"},
    };
    for (size_t i = 0; i < PD_ARRAY_SIZE(ids); i++) {
        int64_t v;
        if (eng_gguf_get_i64(g, ids[i].gguf, &v) == PD_OK && v >= 0 && v < vocab &&
            add_num(j, ids[i].hf, (double)v) != PD_OK)
            goto err_json;
    }
    /* the checkpoint dtype vLLM would see: general.file_type 0 = all F32, 32 = BF16 */
    int64_t ft = 1;
    eng_gguf_get_i64(g, "general.file_type", &ft);
    if (!cJSON_AddStringToObject(j, "torch_dtype",
                                 ft == 0 ? "float32" : ft == 32 ? "bfloat16" : "float16"))
        goto err_json;
    if (eng_gguf_get_str(g, "general.name", &s, &len) == PD_OK) {
        char name[128];
        snprintf(name, sizeof(name), "%.*s", (int)PD_MIN(len, sizeof(name) - 1), s);
        if (!cJSON_AddStringToObject(j, "_name_or_path", name))
            goto err_json;
    }
    *json_p = j;
    return PD_OK;

err_json:
    cJSON_Delete(j);
    return st;
}

/* ---- tensor names ---- */

pd_status_t eng_hfconfig_map_name(eng_arch_t arch, const char *hf, char out[ENG_TENSOR_NAME_MAX])
{
    static const struct {
        const char *hf, *canon;
    } llama_top[] = {
        {"model.embed_tokens.weight", "token_embd.weight"},
        {"model.norm.weight", "output_norm.weight"},
        {"lm_head.weight", "output.weight"},
    }, llama_layer[] = {
        {"input_layernorm.weight", "attn_norm.weight"},
        {"post_attention_layernorm.weight", "ffn_norm.weight"},
        {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.k_proj.weight", "attn_k.weight"},
        {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.o_proj.weight", "attn_output.weight"},
        {"self_attn.q_proj.bias", "attn_q.bias"},
        {"self_attn.k_proj.bias", "attn_k.bias"},
        {"self_attn.v_proj.bias", "attn_v.bias"},
        {"self_attn.o_proj.bias", "attn_output.bias"},
        {"self_attn.q_norm.weight", "attn_q_norm.weight"},
        {"self_attn.k_norm.weight", "attn_k_norm.weight"},
        {"mlp.gate_proj.weight", "ffn_gate.weight"},
        {"mlp.up_proj.weight", "ffn_up.weight"},
        {"mlp.down_proj.weight", "ffn_down.weight"},
        {"mlp.gate_proj.bias", "ffn_gate.bias"},
        {"mlp.up_proj.bias", "ffn_up.bias"},
        {"mlp.down_proj.bias", "ffn_down.bias"},
    }, opt_top[] = {
        {"decoder.embed_tokens.weight", "token_embd.weight"},
        {"decoder.embed_positions.weight", "position_embd.weight"},
        {"decoder.final_layer_norm.weight", "output_norm.weight"},
        {"decoder.final_layer_norm.bias", "output_norm.bias"},
        {"lm_head.weight", "output.weight"},
    }, opt_layer[] = {
        {"self_attn_layer_norm.weight", "attn_norm.weight"},
        {"self_attn_layer_norm.bias", "attn_norm.bias"},
        {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.k_proj.weight", "attn_k.weight"},
        {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.out_proj.weight", "attn_output.weight"},
        {"self_attn.q_proj.bias", "attn_q.bias"},
        {"self_attn.k_proj.bias", "attn_k.bias"},
        {"self_attn.v_proj.bias", "attn_v.bias"},
        {"self_attn.out_proj.bias", "attn_output.bias"},
        {"final_layer_norm.weight", "ffn_norm.weight"},
        {"final_layer_norm.bias", "ffn_norm.bias"},
        {"fc1.weight", "ffn_up.weight"},
        {"fc1.bias", "ffn_up.bias"},
        {"fc2.weight", "ffn_down.weight"},
        {"fc2.bias", "ffn_down.bias"},
    };
    const char *layer_prefix;
    bool opt = arch == ENG_ARCH_OPT;

    if (opt) {
        /* OPTForCausalLM saves "model.decoder.*", OPTModel "decoder.*" */
        if (strncmp(hf, "model.", 6) == 0)
            hf += 6;
        for (size_t i = 0; i < PD_ARRAY_SIZE(opt_top); i++)
            if (strcmp(hf, opt_top[i].hf) == 0)
                return snprintf(out, ENG_TENSOR_NAME_MAX, "%s", opt_top[i].canon), PD_OK;
        layer_prefix = "decoder.layers.";
    } else {
        for (size_t i = 0; i < PD_ARRAY_SIZE(llama_top); i++)
            if (strcmp(hf, llama_top[i].hf) == 0)
                return snprintf(out, ENG_TENSOR_NAME_MAX, "%s", llama_top[i].canon), PD_OK;
        layer_prefix = "model.layers.";
    }
    size_t pl = strlen(layer_prefix);
    if (strncmp(hf, layer_prefix, pl) != 0)
        return PD_ERR_NOT_FOUND;
    char *end;
    errno = 0;
    long layer = strtol(hf + pl, &end, 10);
    if (end == hf + pl || *end != '.' || layer < 0 || layer > 100000 || errno != 0)
        return PD_ERR_NOT_FOUND;
    const char *rest = end + 1;
    size_t n = opt ? PD_ARRAY_SIZE(opt_layer) : PD_ARRAY_SIZE(llama_layer);
    for (size_t i = 0; i < n; i++) {
        const char *h = opt ? opt_layer[i].hf : llama_layer[i].hf;
        if (strcmp(rest, h) == 0) {
            snprintf(out, ENG_TENSOR_NAME_MAX, "blk.%ld.%s", layer,
                     opt ? opt_layer[i].canon : llama_layer[i].canon);
            return PD_OK;
        }
    }
    return PD_ERR_NOT_FOUND;
}

/* ---- the tensors each architecture needs ---- */

#define SPEC(kind_, nd, a, b, ...)                                              \
    do {                                                                        \
        int64_t ne_[4] = {(a), (b), 1, 1};                                      \
        snprintf(name, sizeof(name), __VA_ARGS__);                              \
        if ((st = cb(arg, name, (nd), ne_, (kind_))) != PD_OK)                  \
            return st;                                                          \
    } while (0)

pd_status_t eng_hfconfig_for_each_tensor(const eng_model_config_t *c, eng_tensor_spec_cb_t cb,
                                         void *arg)
{
    char name[ENG_TENSOR_NAME_MAX];
    const int64_t h = c->hidden, q = (int64_t)c->n_heads * c->head_dim,
                  kv = (int64_t)c->n_kv_heads * c->head_dim, ff = c->intermediate;
    const bool ln = c->norm == ENG_NORM_LAYER;
    pd_status_t st;

    SPEC(0, 2, h, c->vocab_size, "token_embd.weight");
    if (c->arch == ENG_ARCH_OPT)
        SPEC(0, 2, h, c->max_position + c->pos_embd_offset, "position_embd.weight");
    for (int l = 0; l < c->n_layers; l++) {
        SPEC(1, 1, h, 1, "blk.%d.attn_norm.weight", l);
        if (ln)
            SPEC(2, 1, h, 1, "blk.%d.attn_norm.bias", l);
        SPEC(0, 2, h, q, "blk.%d.attn_q.weight", l);
        SPEC(0, 2, h, kv, "blk.%d.attn_k.weight", l);
        SPEC(0, 2, h, kv, "blk.%d.attn_v.weight", l);
        SPEC(0, 2, q, h, "blk.%d.attn_output.weight", l);
        if (c->qkv_bias) {
            SPEC(2, 1, q, 1, "blk.%d.attn_q.bias", l);
            SPEC(2, 1, kv, 1, "blk.%d.attn_k.bias", l);
            SPEC(2, 1, kv, 1, "blk.%d.attn_v.bias", l);
        }
        if (c->o_bias)
            SPEC(2, 1, h, 1, "blk.%d.attn_output.bias", l);
        if (c->qk_norm) {
            SPEC(1, 1, c->head_dim, 1, "blk.%d.attn_q_norm.weight", l);
            SPEC(1, 1, c->head_dim, 1, "blk.%d.attn_k_norm.weight", l);
        }
        SPEC(1, 1, h, 1, "blk.%d.ffn_norm.weight", l);
        if (ln)
            SPEC(2, 1, h, 1, "blk.%d.ffn_norm.bias", l);
        if (c->gated_ffn)
            SPEC(0, 2, h, ff, "blk.%d.ffn_gate.weight", l);
        SPEC(0, 2, h, ff, "blk.%d.ffn_up.weight", l);
        SPEC(0, 2, ff, h, "blk.%d.ffn_down.weight", l);
        if (c->mlp_bias) {
            if (c->gated_ffn)
                SPEC(2, 1, ff, 1, "blk.%d.ffn_gate.bias", l);
            SPEC(2, 1, ff, 1, "blk.%d.ffn_up.bias", l);
            SPEC(2, 1, h, 1, "blk.%d.ffn_down.bias", l);
        }
    }
    SPEC(1, 1, h, 1, "output_norm.weight");
    if (ln)
        SPEC(2, 1, h, 1, "output_norm.bias");
    if (!c->tie_embeddings)
        SPEC(0, 2, h, c->vocab_size, "output.weight");
    return PD_OK;
}

/* ---- RoPE frequencies (transformers' modeling_rope_utils, in double) ---- */

static double yarn_corr_dim(double rot, int dim, double base, double max_pos)
{
    return (dim * log(max_pos / (rot * 2 * M_PI))) / (2 * log(base));
}

pd_status_t eng_model_rope_inv_freq(const eng_model_config_t *cfg, float *inv_freq,
                                    float *attn_scale_p)
{
    const eng_rope_scaling_t *rs = &cfg->rope_scaling;
    const int dim = cfg->rotary_dim, half = dim / 2;
    const double base = cfg->rope_theta;
    double attn = 1.0;

    if (cfg->rope_style == ENG_ROPE_NONE || dim < 2 || !(base > 0))
        return PD_ERR_INVAL;
    for (int i = 0; i < half; i++) {
        double f = 1.0 / pow(base, (double)(2 * i) / dim);
        switch (rs->type) {
        case ENG_ROPE_SCALING_LINEAR:
            f /= rs->factor;
            break;
        case ENG_ROPE_SCALING_LLAMA3: {
            double old = (double)rs->original_max_position;
            double low_wavelen = old / rs->low_freq_factor;
            double high_wavelen = old / rs->high_freq_factor;
            double wavelen = 2 * M_PI / f;
            if (wavelen > low_wavelen) {
                f /= rs->factor;
            } else if (wavelen >= high_wavelen) {
                double smooth = (old / wavelen - rs->low_freq_factor) /
                                (rs->high_freq_factor - rs->low_freq_factor);
                f = (1 - smooth) * f / rs->factor + smooth * f;
            }
            break;
        }
        case ENG_ROPE_SCALING_YARN: {
            double orig = (double)rs->original_max_position;
            double lo = floor(yarn_corr_dim(rs->beta_fast, dim, base, orig));
            double hi = ceil(yarn_corr_dim(rs->beta_slow, dim, base, orig));
            lo = lo < 0 ? 0 : lo;
            hi = hi > dim - 1 ? dim - 1 : hi;
            if (lo == hi)
                hi += 0.001;
            double ramp = (i - lo) / (hi - lo);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            double extrap = 1 - ramp; /* 1: keep the original frequency */
            f = (f / rs->factor) * (1 - extrap) + f * extrap;
            attn = rs->attn_factor;
            break;
        }
        default:
            break;
        }
        inv_freq[i] = (float)f;
    }
    if (attn_scale_p != NULL)
        *attn_scale_p = (float)attn;
    return PD_OK;
}
