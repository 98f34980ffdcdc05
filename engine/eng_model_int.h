/*
 * eng_model_int.h - internals shared by the model loader files (eng_model.c,
 * eng_hfconfig.c, eng_model_path.c, eng_dummy.c).  Not for other modules.
 */
#ifndef ENG_MODEL_INT_H
#define ENG_MODEL_INT_H

#include <cjson/cJSON.h>

#include "eng_gguf.h"
#include "eng_model.h"
#include "eng_safetensors.h"

struct eng_model {
    eng_model_config_t cfg;
    eng_model_format_t format;
    char *path;                  /* resolved model dir or file */
    eng_tensor_t *tensors;
    size_t n_tensors, cap_tensors;
    uint32_t *index;             /* open addressing: tensor index + 1, 0 = empty */
    size_t index_cap;            /* power of two */
    void **owned;                /* malloc'd tensor buffers */
    size_t n_owned, cap_owned;
    void *dummy_block;           /* one allocation for all dummy tensors */
    size_t dummy_block_bytes;
    eng_gguf_t *gguf;
    eng_gguf_t *tok_gguf;        /* --tokenizer FILE.gguf: its tokenizer.* metadata */
    eng_safetensors_t **st;
    size_t n_st;
    char *tokenizer_json;
    char *tokenizer_config;
    char *chat_template;
    char *special[4];            /* bos, eos, unk, pad */
    cJSON *hf_config;
    cJSON *gen_json;
    eng_gen_config_t gen;
};

/* ---- eng_hfconfig.c ---- */

/* Merge src over dst recursively (objects merge key by key, everything else replaces).
 * dst is modified; src is copied. */
pd_status_t eng_hfconfig_merge(cJSON *dst, const cJSON *src);

/* Build a config.json equivalent from GGUF metadata (llama, qwen2, qwen3 archs). */
pd_status_t eng_hfconfig_from_gguf(const eng_gguf_t *gguf, cJSON **json_p);

/* Parse a config.json object (overrides already merged) and apply the options:
 * rope_scaling / rope_theta overrides, max_model_len derivation and check, dtype.
 * opts may be NULL (defaults). */
pd_status_t eng_hfconfig_parse(const cJSON *json, const eng_load_opts_t *opts,
                               eng_model_config_t *cfg_p);

/* Read generation_config.json values into gen and add its eos ids to cfg. */
void eng_hfconfig_parse_gen(const cJSON *json, eng_gen_config_t *gen, eng_model_config_t *cfg);

/* Map a Hugging Face tensor name to the canonical name.  PD_ERR_NOT_FOUND for names to
 * skip (rotary inv_freq caches, unknown names). */
pd_status_t eng_hfconfig_map_name(eng_arch_t arch, const char *hf_name,
                                  char out[ENG_TENSOR_NAME_MAX]);

/* The tensors a config needs, with their shapes.  kind: 0 weight matrix/embedding,
 * 1 norm weight (dummy fills 1.0), 2 bias or norm bias (dummy fills 0). */
typedef pd_status_t (*eng_tensor_spec_cb_t)(void *arg, const char *name, int n_dims,
                                            const int64_t ne[4], int kind);
pd_status_t eng_hfconfig_for_each_tensor(const eng_model_config_t *cfg,
                                         eng_tensor_spec_cb_t cb, void *arg);

/* ---- eng_model.c ---- */
pd_status_t eng_model_add_tensor(eng_model_t *m, const char *name, eng_dtype_t type,
                                 int n_dims, const int64_t ne[4], void *data, size_t nbytes);

/* ---- eng_dummy.c ---- */
pd_status_t eng_dummy_populate(eng_model_t *m, const eng_load_opts_t *opts);

#endif /* ENG_MODEL_INT_H */
