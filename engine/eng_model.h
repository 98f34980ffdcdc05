/*
 * eng_model.h - model configuration and weights, whatever the source: a GGUF file, a
 * Hugging Face directory (config.json + safetensors), a model id in the Hugging Face
 * cache layout, or dummy weights at a config's shape.
 *
 * Every format ends up as the same thing: an eng_model_config_t (Hugging Face meanings)
 * and a table of eng_tensor_t under canonical GGUF-llama names:
 *
 *   token_embd.weight, output_norm.weight[/.bias], output.weight (absent when embeddings
 *   are tied: use token_embd.weight), position_embd.weight (OPT),
 *   blk.N.attn_norm.weight[/.bias], blk.N.attn_{q,k,v,output}.weight[/.bias],
 *   blk.N.attn_q_norm.weight, blk.N.attn_k_norm.weight (Qwen3),
 *   blk.N.ffn_norm.weight[/.bias], blk.N.ffn_{gate,up,down}.weight[/.bias]
 *   (OPT: fc1 = ffn_up, fc2 = ffn_down, no gate).
 *
 * Shapes: ne[0] is the fastest-varying dimension.  A linear weight has ne[0] =
 * in_features, ne[1] = out_features (the same bytes as Hugging Face's [out, in]).
 * Embeddings: ne[0] = hidden, ne[1] = vocab.
 *
 * Q and K weights (and biases) of GGUF llama-family files are un-permuted at load back
 * to Hugging Face row order, so every Llama-family forward uses neox-style RoPE
 * (rotate half) as HF does; config.rope_style says so.
 *
 * Tensor data is read-only.  It points into a file mapping when it can (GGUF and
 * aligned safetensors tensors kept in their stored type); otherwise it is owned by the
 * model.  Tensors keep the checkpoint's type: config.dtype is the resolved compute dtype
 * (vLLM rules) for the engine to convert to if it wants.
 *
 * Thread-safety: a loaded model is immutable; concurrent readers are fine.
 */
#ifndef ENG_MODEL_H
#define ENG_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_quant.h"
#include "pd_status.h"

struct cJSON;
struct eng_gguf;

/* ---- configuration ---- */

typedef enum {
    ENG_ARCH_LLAMA = 0, /* LlamaForCausalLM (also SmolLM, Llama 2/3.x) */
    ENG_ARCH_MISTRAL,   /* MistralForCausalLM */
    ENG_ARCH_QWEN2,     /* Qwen2ForCausalLM: qkv bias */
    ENG_ARCH_QWEN3,     /* Qwen3ForCausalLM: q/k RMS norm, no qkv bias */
    ENG_ARCH_OPT,       /* OPTForCausalLM: learned positions, layer norm, relu */
    ENG_ARCH_COUNT
} eng_arch_t;

typedef enum { ENG_NORM_RMS = 0, ENG_NORM_LAYER } eng_norm_t;
typedef enum { ENG_ACT_SILU = 0, ENG_ACT_RELU, ENG_ACT_GELU, ENG_ACT_GELU_TANH } eng_act_t;

typedef enum {
    ENG_ROPE_SCALING_NONE = 0,
    ENG_ROPE_SCALING_LINEAR,
    ENG_ROPE_SCALING_DYNAMIC, /* dynamic NTK */
    ENG_ROPE_SCALING_LLAMA3,
    ENG_ROPE_SCALING_YARN
} eng_rope_scaling_type_t;

typedef struct eng_rope_scaling {
    eng_rope_scaling_type_t type;
    double factor;                 /* 1.0 when none */
    double low_freq_factor;        /* llama3 */
    double high_freq_factor;       /* llama3 */
    int64_t original_max_position; /* llama3/yarn: original_max_position_embeddings */
    double beta_fast, beta_slow;   /* yarn (defaults 32, 1) */
    double attn_factor;            /* yarn (default 1) */
} eng_rope_scaling_t;

typedef enum {
    ENG_ROPE_NEOX = 0, /* rotate half (HF Llama/Qwen/Mistral) */
    ENG_ROPE_GPTJ,     /* interleaved pairs */
    ENG_ROPE_NONE      /* learned absolute positions (OPT) */
} eng_rope_style_t;

#define ENG_MAX_EOS 8

typedef struct eng_model_config {
    eng_arch_t arch;
    char name[128];         /* model name or path as given */
    char hf_arch[64];       /* "LlamaForCausalLM", ... */
    char model_type[32];    /* config.json model_type ("llama", "qwen2", ...) */
    int n_layers;
    int hidden;             /* hidden_size */
    int n_heads;
    int n_kv_heads;
    int head_dim;           /* per head; q width = n_heads * head_dim (may != hidden) */
    int intermediate;       /* intermediate_size / ffn_dim */
    int64_t vocab_size;
    int64_t max_position;   /* max_position_embeddings from the config */
    int64_t max_model_len;  /* resolved: derived from the config, or --max-model-len */
    double norm_eps;
    eng_norm_t norm;
    eng_act_t act;
    double rope_theta;
    eng_rope_scaling_t rope_scaling;
    int rotary_dim;         /* dims rotated per head (head_dim unless partial) */
    eng_rope_style_t rope_style;
    bool tie_embeddings;    /* output.weight absent: use token_embd.weight */
    bool qkv_bias;          /* attn_q/k/v have biases */
    bool o_bias;            /* attn_output has a bias (OPT) */
    bool mlp_bias;          /* ffn weights have biases (OPT) */
    bool qk_norm;           /* attn_q_norm / attn_k_norm (Qwen3) */
    bool gated_ffn;         /* gate+up (silu_and_mul) vs up only (OPT) */
    int sliding_window;     /* 0 = none (applied to every layer when set) */
    int pos_embd_offset;    /* OPT: positions index position_embd at pos + 2 */
    int32_t bos_token_id;   /* -1 when none */
    int32_t eos_token_ids[ENG_MAX_EOS]; /* config + generation_config eos ids */
    int n_eos;
    int32_t pad_token_id;   /* -1 when none */
    eng_dtype_t torch_dtype; /* checkpoint's dtype (F32/F16/BF16; GGUF: F16) */
    eng_dtype_t dtype;       /* resolved compute dtype (--dtype, vLLM's rules) */
    bool quantized;          /* some weights are block-quantized (GGUF) */
} eng_model_config_t;

/* Defaults from generation_config.json (has_* false when the file does not set it). */
typedef struct eng_gen_config {
    bool has_temperature, has_top_p, has_top_k, has_min_p, has_repetition_penalty,
        has_max_new_tokens;
    double temperature, top_p, min_p, repetition_penalty;
    int64_t top_k, max_new_tokens;
} eng_gen_config_t;

/* ---- tensors ---- */

#define ENG_TENSOR_NAME_MAX 96

typedef struct eng_tensor {
    char name[ENG_TENSOR_NAME_MAX];
    eng_dtype_t type;
    int n_dims;
    int64_t ne[4];   /* ne[0] fastest; unused dims are 1 */
    void *data;      /* read-only; NULL only for dummy models loaded with dummy_no_data */
    size_t nbytes;
} eng_tensor_t;

/* Number of elements (product of ne). */
int64_t eng_tensor_nelements(const eng_tensor_t *t);

/* Dequantize/convert rows [row0, row0 + n_rows) of a 2-D (or 1-D: one row) tensor to
 * float; a row is ne[0] elements.  PD_ERR_RANGE for rows out of range, PD_ERR_UNSUPPORTED
 * for types without a dequantizer, PD_ERR_INVAL when data is NULL. */
pd_status_t eng_tensor_dequant_rows(const eng_tensor_t *t, int64_t row0, int64_t n_rows,
                                    float *dst);

/* ---- load options ---- */

typedef struct eng_load_opts {
    const char *model;          /* dir, .gguf file, or model id (HF cache); required */
    const char *tokenizer;      /* dir or id for tokenizer files; NULL = the model's */
    const char *revision;       /* HF cache revision (branch/tag in refs/, or a commit) */
    const char *tokenizer_revision;
    const char *download_dir;   /* HF hub cache dir searched first (then $HF_HUB_CACHE, ...) */
    const char *load_format;    /* auto (NULL), safetensors, gguf, dummy */
    const char *config_format;  /* auto (NULL), hf */
    const char *dtype;          /* auto (NULL), half, float16, bfloat16, float, float32 */
    const char *hf_overrides;   /* JSON object merged over config.json */
    const char *rope_scaling;   /* JSON object replacing config rope_scaling */
    double rope_theta;          /* 0 = from the config */
    int64_t max_model_len;      /* 0 = derived from the config */
    bool disable_sliding_window; /* vLLM's --disable-sliding-window: no window, the derived
                                    max_model_len capped at the window's size */
    const char *const *ignore_patterns; /* --ignore-patterns: weight files (names relative to
                                           the directory) matching one (fnmatch) are skipped */
    int n_ignore_patterns;
    uint64_t seed;              /* dummy weights */
    bool keep_quantized;        /* true: keep Q* tensors as stored; false: dequantize to
                                   dequant_dtype at load */
    eng_dtype_t dequant_dtype;  /* F32 (default), F16 or BF16 */
    bool dummy_no_data;         /* dummy: describe tensors only (data NULL, no memory) */
    int dummy_threads;          /* dummy fill threads; 0 = auto (online CPUs, max 16) */
} eng_load_opts_t;

/* Defaults: everything auto/NULL/0, keep_quantized = true, dequant_dtype = F32. */
void eng_load_opts_init(eng_load_opts_t *opts);

/* ---- the model ---- */

typedef struct eng_model eng_model_t;

typedef enum {
    ENG_FORMAT_GGUF = 0,
    ENG_FORMAT_SAFETENSORS,
    ENG_FORMAT_DUMMY
} eng_model_format_t;

/* Load a model.  Statuses: PD_ERR_NOT_FOUND (model path/id not found; the log names
 * every place looked), PD_ERR_FORMAT (malformed file or config), PD_ERR_UNSUPPORTED
 * (load format, config format, architecture or tensor type not supported yet; logged),
 * PD_ERR_INVAL (bad option value, e.g. dtype "int4" or max_model_len too large),
 * PD_ERR_IO, PD_ERR_NOMEM.  Nothing is allocated after failure. */
pd_status_t eng_model_load(const eng_load_opts_t *opts, eng_model_t **model_p);

/* Load only the configuration (config.json or GGUF metadata, with overrides and every
 * option applied), no tensors.  The same statuses as eng_model_load. */
pd_status_t eng_model_load_config(const eng_load_opts_t *opts, eng_model_config_t *cfg_p);

void eng_model_destroy(eng_model_t *model);

const eng_model_config_t *eng_model_config(const eng_model_t *model);
eng_model_format_t eng_model_format(const eng_model_t *model);

/* Tensor by canonical name, or NULL when absent. */
const eng_tensor_t *eng_model_tensor(const eng_model_t *model, const char *name);
/* "blk.<layer>.<suffix>" shortcut (suffix like "attn_q.weight"). */
const eng_tensor_t *eng_model_layer_tensor(const eng_model_t *model, int layer,
                                           const char *suffix);
size_t eng_model_n_tensors(const eng_model_t *model);
/* Tensor i in [0, n_tensors), NULL when out of range. */
const eng_tensor_t *eng_model_tensor_at(const eng_model_t *model, size_t i);
/* Total bytes of all tensors. */
size_t eng_model_nbytes(const eng_model_t *model);

/* Where the model was found: the directory (also for a model id: its snapshot
 * directory), the .gguf file, or the config.json file given for dummy weights. */
const char *eng_model_path(const eng_model_t *model);

/* ---- tokenizer sources ---- */
/* Path of tokenizer.json, or NULL when there is none (GGUF: use eng_model_gguf). */
const char *eng_model_tokenizer_json(const eng_model_t *model);
/* Path of tokenizer_config.json, or NULL. */
const char *eng_model_tokenizer_config(const eng_model_t *model);
/* The GGUF handle for tokenizer.ggml.* metadata (borrowed), or NULL for other formats. */
const struct eng_gguf *eng_model_gguf(const eng_model_t *model);
/* The GGUF whose tokenizer.* metadata is the model's tokenizer (borrowed): the file given
 * as --tokenizer FILE.gguf (e.g. the default model's, for dummy weights), else the
 * model's own GGUF, else NULL. */
const struct eng_gguf *eng_model_tokenizer_gguf(const eng_model_t *model);
/* Chat template string (tokenizer_config.json chat_template, or a chat_template.jinja /
 * chat_template.json file beside it, or GGUF tokenizer.chat_template); NULL if none.
 * When tokenizer_config has a list of named templates, the one named "default". */
const char *eng_model_chat_template(const eng_model_t *model);
/* Special token strings from tokenizer_config.json ("bos_token", "eos_token",
 * "unk_token", "pad_token"; the content of AddedToken objects); NULL when absent. */
const char *eng_model_special_token(const eng_model_t *model, const char *which);

/* ---- generation config ---- */
const eng_gen_config_t *eng_model_gen_config(const eng_model_t *model);
/* The parsed generation_config.json (borrowed), or NULL when absent. */
const struct cJSON *eng_model_gen_config_json(const eng_model_t *model);
/* The merged config.json (with hf_overrides; borrowed); for GGUF a config.json equivalent
 * built from the metadata; for dummy the config file. */
const struct cJSON *eng_model_hf_config_json(const eng_model_t *model);

/* ---- helpers ---- */
const char *eng_arch_name(eng_arch_t arch); /* "llama", "mistral", ... */

/* RoPE inverse frequencies for a config, as Hugging Face computes them
 * (ROPE_INIT_FUNCTIONS): inv_freq[i] for i < rotary_dim / 2, with linear, llama3 and yarn
 * scaling applied (dynamic NTK: the unscaled base; it only changes past max_position).
 * *attn_scale_p (may be NULL) is the factor cos/sin are multiplied by: 1, or yarn's
 * attention factor.  PD_ERR_INVAL when the config has no rotary embedding (OPT). */
pd_status_t eng_model_rope_inv_freq(const eng_model_config_t *cfg, float *inv_freq,
                                    float *attn_scale_p);

/* Resolve --model / --tokenizer to a local path without loading: a directory, a file,
 * or the snapshot directory of a model id in the HF cache layout (download_dir, or
 * $HF_HUB_CACHE, or $HF_HOME/hub, or $XDG_CACHE_HOME/huggingface/hub, or
 * ~/.cache/huggingface/hub; revision from refs/<revision> or a snapshot name, default
 * "main").  *path_p is malloc'd.  PD_ERR_NOT_FOUND with a log line naming where it looked. */
pd_status_t eng_model_resolve_path(const char *model, const char *revision,
                                   const char *download_dir, char **path_p);

/* Dummy weights: fill n elements of type (F32/F16/BF16) at dst with uniform values in
 * [-1e-3, 1e-3] from a PRNG keyed by (seed, stream, element index): the same values
 * whatever the threading or chunking.  PD_ERR_UNSUPPORTED for other types. */
pd_status_t eng_dummy_fill(eng_dtype_t type, void *dst, size_t n, uint64_t seed,
                           uint64_t stream, size_t first_index);

#endif /* ENG_MODEL_H */
