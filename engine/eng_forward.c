/*
 * eng_forward.c - model forward over a mixed prefill/decode batch through the backend
 * ops table.
 *
 * Two graph shapes cover every supported architecture:
 *   llama family (Llama 2/3.x, Mistral, Qwen2 with qkv bias, Qwen3 with q/k norm, SmolLM2):
 *     x = embed(ids); per layer: h = rmsnorm(x); q,k,v = h W^T (+b); [q/k head norms];
 *     rope(q, k); kv_write; a = paged_attention(q); x += a Wo^T; h = rmsnorm(x);
 *     x += (silu(h Wg^T) * h Wu^T) Wd^T; final rmsnorm; logits = h Wout^T
 *   OPT (pre-LN): x = embed(ids) + pos_embed(pos + 2); layernorms with bias; biases on
 *     every linear; relu MLP (fc1, fc2); final layernorm; tied lm_head.
 * Residual adds are fused into the next norm (add_rmsnorm / add_layernorm), and the
 * final norm and lm_head run only on the rows whose logits are wanted.
 * With PD_FORWARD_DECODE_FUSE=1 (opt-in: slower on the H200 so far, docs/cuda.md) decode
 * rows (T <= 8, RMSNorm models) run the fused layer instead: x += o Wo^T and x += act Wd^T in the matmuls (matmul_add), the norms inside
 * the q|k|v and gate|up matmuls (norm_matmul, the GLU too), RoPE + KV write in one op;
 * x is then final after the last layer.  Any op the backend declines falls back to the
 * separate ops in the same order.
 *
 * A step is three phases: upload (host metadata -> the fixed backend buffers d_*),
 * body (every op from the embedding to the logits, reading only fixed buffers), and the
 * logits copy-back.  On the CUDA backend the body of a decode step is what a CUDA graph
 * records: it depends on the batch only through its size (scalars T, n_seqs), never
 * through host data, so one graph per padded batch size replays any decode step of that
 * size after the upload refreshed the fixed buffers.  Padding rows are sequences of
 * their own (token 0, position 0, context 1, block table of zeros) whose KV write is
 * skipped (slot -1) and whose logits are never copied back.
 */
#include "eng_forward.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_log.h"
#include "pd_util.h"
#ifdef PD_HAVE_CUDA
#include "eng_backend_cuda.h"
#endif

/* Capture sizes 1, 2, 4, then 8..512 by 8 and on by 16 up to the cap; the default cap is
 * min(--max-num-seqs, 512) (vLLM's), {"max_capture_size": n} raises it up to 2048. */
#define GRAPH_BS_LIMIT 2048
#define GRAPH_MAX_SIZES (3 + 512 / 8 + (GRAPH_BS_LIMIT - 512) / 16 + 1)
#define DFUSE_MAX_T 8      /* the decode GEMV's row limit (kcuda_gemv) */

typedef struct mat {
    const void *w;        /* backend pointer */
    kcpu_dtype_t type;
    int64_t in, out;
} mat_t;

typedef struct layer_w {
    mat_t q, k, v, o, gate, up, down;
    const float *bq, *bk, *bv, *bo, *bup, *bdown;
    const float *attn_norm, *attn_norm_b, *ffn_norm, *ffn_norm_b;
    const float *q_norm, *k_norm;
    /* CPU backend: q|k|v and gate|up rows concatenated into one matrix each (one matmul,
     * one activation quantization and one pool job instead of three / two); NULL w when
     * not fused.  Every output element is computed as in the separate matmuls. */
    mat_t qkv, gate_up;
    const float *bqkv;
} layer_w_t;

typedef struct owned {
    void *host;     /* malloc'd host memory, or NULL */
    void *dev;      /* backend buffer, or NULL */
} owned_t;

struct eng_forward {
    const eng_model_t *model;
    const eng_model_config_t *cfg;
    const eng_backend_ops_t *ops;
    eng_backend_t *be;
    bool zero_copy;           /* CPU backend: host pointers are backend pointers */
    bool any_qkv, any_gu;     /* some layer has fused qkv / gate_up (workspace sizes) */
    bool any_unfused_qkv, any_unfused_gu; /* some layer still uses separate k, v / up */
    bool decode_fuse;         /* decode rows (T <= DFUSE_MAX_T) run the fused layer (body()) */
    bool rope_kv;             /* RoPE + KV write as one op (ops->rope_kv_write), every T */
    bool last_x_acc;          /* the last body() added every projection into x (the fused decode
                                 layer, the 16-bit prefill path): x is final whatever n_logits was */
    eng_forward_opts_t opts;

    layer_w_t *layers;
    const void *embed;        /* token_embd */
    kcpu_dtype_t embed_type;
    const void *pos_embed;    /* OPT */
    kcpu_dtype_t pos_embed_type;
    int64_t pos_embed_rows;
    mat_t lm_head;
    const float *out_norm, *out_norm_b;
    float *inv_freq;          /* backend, rotary_dim / 2 */
    float attn_factor;

    owned_t *owned;
    size_t n_owned, cap_owned;

    /* KV cache */
    kcpu_kv_layout_t kv;
    void *kv_base;

    /* activations (backend) */
    float *x, *h, *q, *k, *v, *attn, *o, *gate, *up, *act, *ffn, *g, *gn, *logits;
    void *hm;           /* [T, max(D, I)] in the backend's 16-bit matmul input type (ops->mm_in_type) */
    int64_t last_T;     /* tokens of the last forward (eng_forward_logits bounds) */
    int64_t attn_split; /* 0 < n < T: tokens 0..n-1 are one-token sequences 0..n-1 and
                           attention runs them apart from the rest (decode kernel) */
    bool x_final;       /* x holds the last forward's final residual stream */
    bool defer;         /* eng_forward_launch_sample: copies to the host are queued, not waited for */
    bool pending;       /* queued copies that eng_forward_wait completes */
    /* metadata (backend) */
    int32_t *d_tokens, *d_pos, *d_pos2, *d_seq, *d_tables, *d_ctx;
    int32_t *d_argmax;  /* [max_seqs]: the token of each logits row (device-side greedy / sampling) */
    kcpu_sample_params_t *d_sp, *h_sp; /* [max_seqs]: how each row is sampled (backend, host scratch) */
    float *d_u, *h_u;   /* [max_seqs]: the uniform of each sampled row */
    int sp_greedy_rows; /* leading rows of d_sp known to be greedy (no upload needed) */
    int64_t *d_slots;
    int32_t *h_pos2;          /* host scratch for OPT position ids */

    /* CUDA graphs of decode steps, one per capture size (graph_max_bs > 0 on CUDA) */
    int graph_max_bs, graph_max_ctx;
    int n_sizes;
    int sizes[GRAPH_MAX_SIZES];
    void *graphs[GRAPH_MAX_SIZES];  /* eng_cuda_graph_t *, NULL until captured */
    bool failed[GRAPH_MAX_SIZES];   /* capture failed: that size stays eager */
    int32_t *p_tokens, *p_pos, *p_seq, *p_tables, *p_ctx; /* host: padded batch */
    int64_t *p_slots;
    uint64_t graph_steps, eager_steps;
    int n_captured, n_failed;       /* graphs live, sizes marked failed */
};

#define CK(expr)                                  \
    do {                                          \
        pd_status_t st_ = (expr);                 \
        if (st_ != PD_OK)                         \
            return st_;                           \
    } while (0)

static pd_status_t track(eng_forward_t *fw, void *host, void *dev)
{
    if (fw->n_owned == fw->cap_owned) {
        size_t cap = fw->cap_owned ? fw->cap_owned * 2 : 64;
        owned_t *n = realloc(fw->owned, cap * sizeof(*n));
        if (n == NULL)
            return PD_ERR_NOMEM;
        fw->owned = n;
        fw->cap_owned = cap;
    }
    fw->owned[fw->n_owned++] = (owned_t){host, dev};
    return PD_OK;
}

static pd_status_t dev_alloc(eng_forward_t *fw, size_t bytes, void **p)
{
    void *ptr = NULL;
    pd_status_t st = fw->ops->buf_alloc(fw->be, bytes ? bytes : 64, &ptr);
    if (st != PD_OK) {
        PD_LOG_ERR("forward: cannot allocate %zu bytes of %s memory", bytes, fw->ops->name);
        return st;
    }
    st = track(fw, NULL, ptr);
    if (st != PD_OK) {
        fw->ops->buf_free(fw->be, ptr);
        return st;
    }
    *p = ptr;
    return PD_OK;
}

/* Make host bytes available to the backend: the same pointer on the CPU backend
 * (borrowed), an uploaded copy elsewhere. */
static pd_status_t to_backend(eng_forward_t *fw, const void *host, size_t bytes, const void **dev_p)
{
    void *dev;
    if (fw->zero_copy) {
        *dev_p = host;
        return PD_OK;
    }
    CK(dev_alloc(fw, bytes, &dev));
    CK(fw->ops->memcpy_h2d(fw->be, dev, host, bytes));
    *dev_p = dev;
    return PD_OK;
}

static pd_status_t host_owned(eng_forward_t *fw, size_t bytes, void **p)
{
    void *ptr = malloc(bytes ? bytes : 1);
    if (ptr == NULL)
        return PD_ERR_NOMEM;
    if (track(fw, ptr, NULL) != PD_OK) {
        free(ptr);
        return PD_ERR_NOMEM;
    }
    *p = ptr;
    return PD_OK;
}

static const eng_tensor_t *get_tensor(eng_forward_t *fw, const char *name, bool required)
{
    const eng_tensor_t *t = eng_model_tensor(fw->model, name);
    if (t == NULL && required)
        PD_LOG_ERR("forward: the model has no tensor '%s'", name);
    if (t != NULL && t->data == NULL) {
        PD_LOG_ERR("forward: tensor '%s' has no data (loaded without weights)", name);
        return NULL;
    }
    return t;
}

/* A weight matrix [out, in] in a type the kernels take (converted to f32 otherwise). */
static pd_status_t prep_mat(eng_forward_t *fw, const char *name, int64_t in, int64_t out, mat_t *m)
{
    const eng_tensor_t *t = get_tensor(fw, name, true);
    if (t == NULL)
        return PD_ERR_FORMAT;
    if (t->ne[0] != in || t->ne[1] != out || t->ne[2] != 1 || t->ne[3] != 1) {
        PD_LOG_ERR("forward: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]", name,
                   (long long)t->ne[1], (long long)t->ne[0], (long long)out, (long long)in);
        return PD_ERR_FORMAT;
    }
    m->in = in;
    m->out = out;
    if (kcpu_dtype_supported((kcpu_dtype_t)t->type) && in % kcpu_dtype_block_size((kcpu_dtype_t)t->type) == 0) {
        m->type = (kcpu_dtype_t)t->type;
        return to_backend(fw, t->data, t->nbytes, &m->w);
    }
    /* a type the kernels lack (K-quants, ...): dequantize once to f32 */
    size_t bytes;
    float *f;
    CK(pd_mul_size((size_t)in * sizeof(float), (size_t)out, &bytes));
    CK(host_owned(fw, bytes, (void **)&f));
    CK(eng_tensor_dequant_rows(t, 0, out, f));
    m->type = KCPU_DTYPE_F32;
    PD_LOG_DEBUG("forward: %s converted from %s to f32", name, eng_dtype_name(t->type));
    return to_backend(fw, f, bytes, &m->w);
}

/* A 1-D parameter (norm weight, bias) as f32 of n elements; NULL when absent and optional. */
static pd_status_t prep_vec(eng_forward_t *fw, const char *name, int64_t n, bool required, const float **p)
{
    const eng_tensor_t *t = get_tensor(fw, name, required);
    float *f;
    *p = NULL;
    if (t == NULL)
        return required ? PD_ERR_FORMAT : PD_OK;
    if (eng_tensor_nelements(t) != n) {
        PD_LOG_ERR("forward: tensor '%s' has %lld elements, expected %lld", name,
                   (long long)eng_tensor_nelements(t), (long long)n);
        return PD_ERR_FORMAT;
    }
    if (t->type == ENG_DTYPE_F32)
        return to_backend(fw, t->data, (size_t)n * sizeof(float), (const void **)p);
    CK(host_owned(fw, (size_t)n * sizeof(float), (void **)&f));
    {
        eng_tensor_t row = *t; /* view as one row so dequant_rows converts it whole */
        row.n_dims = 1;
        row.ne[0] = n;
        row.ne[1] = row.ne[2] = row.ne[3] = 1;
        CK(eng_tensor_dequant_rows(&row, 0, 1, f));
    }
    return to_backend(fw, f, (size_t)n * sizeof(float), (const void **)p);
}

static pd_status_t prep_table(eng_forward_t *fw, const char *name, int64_t D, int64_t rows,
                              const void **p, kcpu_dtype_t *type)
{
    const eng_tensor_t *t = get_tensor(fw, name, true);
    if (t == NULL)
        return PD_ERR_FORMAT;
    if (t->ne[0] != D || t->ne[1] != rows) {
        PD_LOG_ERR("forward: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]", name,
                   (long long)t->ne[1], (long long)t->ne[0], (long long)rows, (long long)D);
        return PD_ERR_FORMAT;
    }
    if (kcpu_dtype_supported((kcpu_dtype_t)t->type)) {
        *type = (kcpu_dtype_t)t->type;
        return to_backend(fw, t->data, t->nbytes, p);
    }
    size_t bytes;
    float *f;
    CK(pd_mul_size((size_t)D * sizeof(float), (size_t)rows, &bytes));
    CK(host_owned(fw, bytes, (void **)&f));
    CK(eng_tensor_dequant_rows(t, 0, rows, f));
    *type = KCPU_DTYPE_F32;
    return to_backend(fw, f, bytes, p);
}

/* Free a backend buffer the forward owns before the forward ends (a weight that was
 * folded into a fused one), so the device holds each weight byte once. */
static void release_dev(eng_forward_t *fw, const void *dev)
{
    for (size_t i = 0; i < fw->n_owned; i++)
        if (fw->owned[i].dev == dev) {
            fw->ops->buf_free(fw->be, fw->owned[i].dev);
            fw->owned[i].dev = NULL;
            return;
        }
}

/* Concatenate the rows of n matrices of the same type and input size into one.  GGUF
 * rows are self-contained (a quantized row is whole blocks), so row-wise concatenation
 * is valid for every type.  On the CPU backend the fused copy is host memory beside the
 * mapped originals; on other backends it is built on the device from the uploaded parts
 * (device-to-device copies), which are then freed and their w set to NULL.  Leaves
 * out->w NULL when they cannot be fused. */
static pd_status_t fuse_mats(eng_forward_t *fw, mat_t *const *ms, int n, mat_t *out)
{
    size_t row_bytes, total = 0, off = 0;
    uint8_t *buf;

    out->w = NULL;
    for (int i = 0; i < n; i++)
        if (ms[i]->type != ms[0]->type || ms[i]->in != ms[0]->in)
            return PD_OK;
    CK(kcpu_dtype_row_bytes(ms[0]->type, ms[0]->in, &row_bytes));
    for (int i = 0; i < n; i++) {
        size_t b;
        CK(pd_mul_size(row_bytes, (size_t)ms[i]->out, &b));
        CK(pd_add_size(total, b, &total));
    }
    if (fw->zero_copy)
        CK(host_owned(fw, total, (void **)&buf));
    else
        CK(dev_alloc(fw, total, (void **)&buf));
    out->in = ms[0]->in;
    out->out = 0;
    out->type = ms[0]->type;
    for (int i = 0; i < n; i++) {
        size_t b = row_bytes * (size_t)ms[i]->out;
        if (fw->zero_copy)
            memcpy(buf + off, ms[i]->w, b);
        else
            CK(fw->ops->memcpy_d2d(fw->be, buf + off, ms[i]->w, b));
        off += b;
        out->out += ms[i]->out;
    }
    out->w = buf;
    if (!fw->zero_copy) {
        /* the copies are queued on the backend's stream: finish them before the parts go */
        CK(fw->ops->synchronize(fw->be));
        for (int i = 0; i < n; i++) {
            release_dev(fw, ms[i]->w);
            ms[i]->w = NULL;
        }
    }
    return PD_OK;
}

/* Fused q|k|v (with a concatenated bias when any has one) and gate|up of one layer. */
static pd_status_t fuse_layer(eng_forward_t *fw, layer_w_t *L)
{
    const eng_model_config_t *c = fw->cfg;
    /* q/k head norms run on contiguous q and k rows, and a bias on only some of q/k/v
     * would need zeros added to the others: keep those unfused */
    bool some_bias = L->bq || L->bk || L->bv, all_bias = L->bq && L->bk && L->bv;
    if (!c->qk_norm && some_bias == all_bias) {
        mat_t *qkv[3] = {&L->q, &L->k, &L->v};
        const int64_t outs[3] = {L->q.out, L->k.out, L->v.out};
        CK(fuse_mats(fw, qkv, 3, &L->qkv));
        if (L->qkv.w != NULL && all_bias) {
            const float *bs[3] = {L->bq, L->bk, L->bv};
            float *bias;
            int64_t o = 0;
            if (fw->zero_copy)
                CK(host_owned(fw, (size_t)L->qkv.out * sizeof(float), (void **)&bias));
            else
                CK(dev_alloc(fw, (size_t)L->qkv.out * sizeof(float), (void **)&bias));
            for (int i = 0; i < 3; i++) {
                if (fw->zero_copy)
                    memcpy(bias + o, bs[i], (size_t)outs[i] * sizeof(float));
                else
                    CK(fw->ops->memcpy_d2d(fw->be, bias + o, bs[i], (size_t)outs[i] * sizeof(float)));
                o += outs[i];
            }
            L->bqkv = bias;
        }
    }
    if (L->qkv.w != NULL)
        fw->any_qkv = true;
    else
        fw->any_unfused_qkv = true;
    if (c->gated_ffn) {
        mat_t *gu[2] = {&L->gate, &L->up};
        CK(fuse_mats(fw, gu, 2, &L->gate_up));
    }
    if (L->gate_up.w != NULL)
        fw->any_gu = true;
    else
        fw->any_unfused_gu = true;
    return PD_OK;
}

static pd_status_t prep_weights(eng_forward_t *fw)
{
    const eng_model_config_t *c = fw->cfg;
    const int64_t D = c->hidden, QW = (int64_t)c->n_heads * c->head_dim,
                  KW = (int64_t)c->n_kv_heads * c->head_dim, I = c->intermediate;
    const bool opt = c->arch == ENG_ARCH_OPT;
    char name[ENG_TENSOR_NAME_MAX];

    fw->layers = calloc((size_t)c->n_layers, sizeof(*fw->layers));
    if (fw->layers == NULL)
        return PD_ERR_NOMEM;
    CK(prep_table(fw, "token_embd.weight", D, c->vocab_size, &fw->embed, &fw->embed_type));
    if (opt) {
        const eng_tensor_t *pe = get_tensor(fw, "position_embd.weight", true);
        if (pe == NULL)
            return PD_ERR_FORMAT;
        fw->pos_embed_rows = pe->ne[1];
        CK(prep_table(fw, "position_embd.weight", D, pe->ne[1], &fw->pos_embed, &fw->pos_embed_type));
    }
    CK(prep_vec(fw, "output_norm.weight", D, true, &fw->out_norm));
    CK(prep_vec(fw, "output_norm.bias", D, false, &fw->out_norm_b));
    if (!c->tie_embeddings && eng_model_tensor(fw->model, "output.weight") != NULL)
        CK(prep_mat(fw, "output.weight", D, c->vocab_size, &fw->lm_head));
    else
        CK(prep_mat(fw, "token_embd.weight", D, c->vocab_size, &fw->lm_head));
#ifdef PD_HAVE_CUDA
    /* --quantization fp8 leaves the lm_head in the 16-bit weight dtype, as vLLM does */
    if (strcmp(fw->ops->name, "cuda") == 0)
        CK(eng_backend_cuda_keep_weight(fw->be, fw->lm_head.w));
#endif

#define LNAME(suffix) (snprintf(name, sizeof(name), "blk.%d." suffix, l), name)
    for (int l = 0; l < c->n_layers; l++) {
        layer_w_t *L = &fw->layers[l];
        CK(prep_mat(fw, LNAME("attn_q.weight"), D, QW, &L->q));
        CK(prep_mat(fw, LNAME("attn_k.weight"), D, KW, &L->k));
        CK(prep_mat(fw, LNAME("attn_v.weight"), D, KW, &L->v));
        CK(prep_mat(fw, LNAME("attn_output.weight"), QW, D, &L->o));
        CK(prep_vec(fw, LNAME("attn_q.bias"), QW, false, &L->bq));
        CK(prep_vec(fw, LNAME("attn_k.bias"), KW, false, &L->bk));
        CK(prep_vec(fw, LNAME("attn_v.bias"), KW, false, &L->bv));
        CK(prep_vec(fw, LNAME("attn_output.bias"), D, false, &L->bo));
        CK(prep_vec(fw, LNAME("attn_norm.weight"), D, true, &L->attn_norm));
        CK(prep_vec(fw, LNAME("attn_norm.bias"), D, false, &L->attn_norm_b));
        CK(prep_vec(fw, LNAME("ffn_norm.weight"), D, true, &L->ffn_norm));
        CK(prep_vec(fw, LNAME("ffn_norm.bias"), D, false, &L->ffn_norm_b));
        if (c->qk_norm) {
            CK(prep_vec(fw, LNAME("attn_q_norm.weight"), c->head_dim, true, &L->q_norm));
            CK(prep_vec(fw, LNAME("attn_k_norm.weight"), c->head_dim, true, &L->k_norm));
        }
        if (c->gated_ffn)
            CK(prep_mat(fw, LNAME("ffn_gate.weight"), D, I, &L->gate));
        CK(prep_mat(fw, LNAME("ffn_up.weight"), D, I, &L->up));
        CK(prep_mat(fw, LNAME("ffn_down.weight"), I, D, &L->down));
        CK(prep_vec(fw, LNAME("ffn_up.bias"), I, false, &L->bup));
        CK(prep_vec(fw, LNAME("ffn_down.bias"), D, false, &L->bdown));
        if (getenv("PD_FORWARD_NO_FUSE") == NULL) { /* A/B switch for benchmarks */
            CK(fuse_layer(fw, L));
        } else {
            fw->any_unfused_qkv = true;
            fw->any_unfused_gu = true;
        }
    }
#undef LNAME
    return PD_OK;
}

static pd_status_t prep_rope(eng_forward_t *fw)
{
    const eng_model_config_t *c = fw->cfg;
    kcpu_rope_scaling_t sc = {0};
    float *host;
    const void *dev;
    int half = c->rotary_dim / 2;

    if (c->rope_style == ENG_ROPE_NONE)
        return PD_OK;
    switch (c->rope_scaling.type) {
    case ENG_ROPE_SCALING_NONE: sc.type = KCPU_ROPE_SCALING_NONE; break;
    case ENG_ROPE_SCALING_LINEAR: sc.type = KCPU_ROPE_SCALING_LINEAR; break;
    case ENG_ROPE_SCALING_DYNAMIC: sc.type = KCPU_ROPE_SCALING_DYNAMIC; break;
    case ENG_ROPE_SCALING_LLAMA3: sc.type = KCPU_ROPE_SCALING_LLAMA3; break;
    case ENG_ROPE_SCALING_YARN: sc.type = KCPU_ROPE_SCALING_YARN; break;
    }
    sc.factor = (float)c->rope_scaling.factor;
    sc.low_freq_factor = (float)c->rope_scaling.low_freq_factor;
    sc.high_freq_factor = (float)c->rope_scaling.high_freq_factor;
    sc.original_max_position = c->rope_scaling.original_max_position;
    sc.beta_fast = (float)c->rope_scaling.beta_fast;
    sc.beta_slow = (float)c->rope_scaling.beta_slow;
    CK(host_owned(fw, (size_t)half * sizeof(float), (void **)&host));
    /* dynamic NTK: HF rescales once the sequence outgrows the original length; we size
     * for the configured max model length, which is what HF converges to there */
    CK(kcpu_rope_inv_freq((float)c->rope_theta, c->rotary_dim, &sc, c->max_model_len, host,
                          &fw->attn_factor));
    CK(to_backend(fw, host, (size_t)half * sizeof(float), &dev));
    fw->inv_freq = (float *)dev;
    return PD_OK;
}

static pd_status_t alloc_f32(eng_forward_t *fw, int64_t rows, int64_t cols, float **p)
{
    size_t bytes;
    CK(pd_mul_size((size_t)rows, (size_t)cols * sizeof(float), &bytes));
    return dev_alloc(fw, bytes, (void **)p);
}

/* The capture sizes for batches up to cap (1 <= cap <= GRAPH_BS_LIMIT), ascending, into
 * sizes (NULL: only counted); returns how many. */
static int graph_sizes(int cap, int *sizes)
{
    int n = 0, last = 0;
    for (int s = 1; s <= cap; s = s < 8 ? s * 2 : s < 512 ? s + 8 : s + 16) {
        if (sizes)
            sizes[n] = s;
        n++;
        last = s;
    }
    if (last < cap) { /* the cap itself when the steps miss it */
        if (sizes)
            sizes[n] = cap;
        n++;
    }
    return n;
}

/* Capture sizes, padded-batch host scratch and backend scratch for the decode graphs. */
static pd_status_t graph_setup(eng_forward_t *fw)
{
    const eng_model_config_t *c = fw->cfg;
    const eng_forward_opts_t *o = &fw->opts;
    int cap = o->graph_max_bs;
    size_t maxk, ws = 0;

    if (cap > o->max_seqs)
        cap = o->max_seqs;
    if (cap > o->max_tokens)
        cap = o->max_tokens;
    if (cap > GRAPH_BS_LIMIT)
        cap = GRAPH_BS_LIMIT;
    fw->n_sizes = graph_sizes(cap, fw->sizes);
    fw->graph_max_bs = cap;
    fw->graph_max_ctx = o->graph_max_ctx > 0 ? o->graph_max_ctx : o->max_blocks_per_seq * o->block_size;
    CK(host_owned(fw, (size_t)cap * sizeof(int32_t), (void **)&fw->p_tokens));
    CK(host_owned(fw, (size_t)cap * sizeof(int32_t), (void **)&fw->p_pos));
    CK(host_owned(fw, (size_t)cap * sizeof(int32_t), (void **)&fw->p_seq));
    CK(host_owned(fw, (size_t)cap * sizeof(int32_t), (void **)&fw->p_ctx));
    CK(host_owned(fw, (size_t)cap * sizeof(int64_t), (void **)&fw->p_slots));
    CK(host_owned(fw, (size_t)cap * (size_t)o->max_blocks_per_seq * sizeof(int32_t), (void **)&fw->p_tables));
#ifdef PD_HAVE_CUDA
    /* scratch for the largest size now, so graphs and later steps share it */
    maxk = (size_t)c->hidden;
    if ((size_t)c->intermediate > maxk)
        maxk = (size_t)c->intermediate;
    if ((size_t)c->n_heads * (size_t)c->head_dim > maxk)
        maxk = (size_t)c->n_heads * (size_t)c->head_dim;
    for (int i = 0; i < fw->n_sizes; i++) {
        kcpu_attn_params_t ap;
        size_t need;
        memset(&ap, 0, sizeof(ap));
        ap.n_tokens = fw->sizes[i];
        ap.n_seqs = fw->sizes[i];
        ap.n_heads = c->n_heads;
        ap.n_kv_heads = c->n_kv_heads;
        ap.head_dim = c->head_dim;
        ap.max_blocks_per_seq = o->max_blocks_per_seq;
        ap.layout = &fw->kv;
        need = eng_backend_cuda_attn_ws_bytes(fw->be, &ap);
        if (need > ws)
            ws = need;
    }
    CK(eng_backend_cuda_reserve(fw->be, (size_t)cap * maxk * 2, ws));
#else
    (void)c;
    (void)maxk;
    (void)ws;
#endif
    PD_LOG_INFO("forward: CUDA graphs for decode batches of up to %d sequences (%d capture sizes, captured at first "
                "use), contexts up to %d tokens",
                cap, fw->n_sizes, fw->graph_max_ctx);
    return PD_OK;
}

pd_status_t eng_kv_dtype_parse(const char *s, eng_kv_dtype_t *dt_p)
{
    if (s == NULL || strcmp(s, "auto") == 0)
        *dt_p = ENG_KV_AUTO;
    else if (strcmp(s, "fp8") == 0 || strcmp(s, "fp8_e4m3") == 0)
        *dt_p = ENG_KV_FP8_E4M3;
    else if (strcmp(s, "fp8_e5m2") == 0)
        *dt_p = ENG_KV_FP8_E5M2;
    else
        return PD_ERR_INVAL;
    return PD_OK;
}

size_t eng_forward_block_bytes_dtype(const eng_model_config_t *cfg, int block_size, eng_kv_dtype_t kv_dtype)
{
    size_t b = eng_forward_block_bytes(cfg, block_size);
    switch (kv_dtype) {
    case ENG_KV_AUTO: return b;
    case ENG_KV_F16: return b / 2;
    default: return b / sizeof(float);
    }
}

const char *eng_forward_kv_dtype_name(const eng_forward_t *fw)
{
    switch (fw->opts.kv_dtype) {
    case ENG_KV_FP8_E4M3: return "fp8_e4m3";
    case ENG_KV_FP8_E5M2: return "fp8_e5m2";
    default: return fw->kv.dtype == KCPU_DTYPE_F16 ? "f16" : "f32";
    }
}

/* The KV layout: f32 or f16 (kcpu), or fp8 with per-layer scales on the CUDA backend. */
static pd_status_t kv_layout(eng_forward_t *fw)
{
    const eng_model_config_t *c = fw->cfg;
    const eng_forward_opts_t *o = &fw->opts;
    if (o->kv_dtype == ENG_KV_AUTO || o->kv_dtype == ENG_KV_F16)
        return kcpu_kv_layout_init(&fw->kv, o->kv_dtype == ENG_KV_F16 ? KCPU_DTYPE_F16 : KCPU_DTYPE_F32, c->n_layers,
                                   o->block_size, c->n_kv_heads, c->head_dim, o->n_blocks);
#ifdef PD_HAVE_CUDA
    if (strcmp(fw->ops->name, "cuda") == 0) {
        CK(eng_backend_cuda_kv_layout_init(&fw->kv,
                                           o->kv_dtype == ENG_KV_FP8_E5M2 ? ENG_CUDA_KV_FP8_E5M2 : ENG_CUDA_KV_FP8_E4M3,
                                           c->n_layers, o->block_size, c->n_kv_heads, c->head_dim, o->n_blocks));
        CK(eng_backend_cuda_set_kv_scales(fw->be, c->n_layers, NULL, NULL, o->calculate_kv_scales));
        PD_LOG_INFO("forward: fp8 (%s) KV cache, per-layer scales %s",
                    o->kv_dtype == ENG_KV_FP8_E5M2 ? "e5m2" : "e4m3",
                    o->calculate_kv_scales ? "from the first batch" : "1.0");
        return PD_OK;
    }
#endif
    PD_LOG_ERR("forward: --kv-cache-dtype fp8 is not supported yet on the %s backend (CUDA only)", fw->ops->name);
    return PD_ERR_UNSUPPORTED;
}

size_t eng_forward_block_bytes(const eng_model_config_t *cfg, int block_size)
{
    return (size_t)cfg->n_layers * 2 * (size_t)block_size * (size_t)cfg->n_kv_heads *
           (size_t)cfg->head_dim * sizeof(float);
}

pd_status_t eng_forward_create(const eng_model_t *model, const eng_backend_ops_t *ops,
                               eng_backend_t *be, const eng_forward_opts_t *opts,
                               eng_forward_t **fw_p)
{
    eng_forward_t *fw = calloc(1, sizeof(*fw));
    const eng_model_config_t *c = eng_model_config(model);
    int64_t T = opts->max_tokens, S = opts->max_seqs;
    int64_t QW = (int64_t)c->n_heads * c->head_dim, KW = (int64_t)c->n_kv_heads * c->head_dim;
    size_t kv_bytes;
    pd_status_t st;

    if (fw == NULL)
        return PD_ERR_NOMEM;
    if (T < 1 || S < 1 || opts->n_blocks < 1 || opts->block_size < 1 || opts->max_blocks_per_seq < 1) {
        free(fw);
        return PD_ERR_INVAL;
    }
    fw->model = model;
    fw->cfg = c;
    fw->ops = ops;
    fw->be = be;
    fw->opts = *opts;
    /* PD_FORWARD_COPY_WEIGHTS=1: the CPU backend too gets uploaded copies of the weights,
     * so CI runs the path device backends take (upload, fusion on the device) */
    fw->zero_copy = strcmp(ops->name, "cpu") == 0 && getenv("PD_FORWARD_COPY_WEIGHTS") == NULL;
    fw->attn_factor = 1.0f;
    /* the fused decode layer, opt-in (PD_FORWARD_DECODE_FUSE=1; on a backend without the
     * fused ops, the CPU, its structure over the separate ops, for tests): measured slower
     * on one H200 (b1 graph step 5.30 against 4.84 ms: the fused GEMVs stream at 55-69% of
     * the copy rate against 66-86% for the plain one); PD_FORWARD_NO_DECODE_FUSE=1 wins */
    fw->decode_fuse = false;
    if (getenv("PD_FORWARD_DECODE_FUSE") != NULL)
        fw->decode_fuse = atoi(getenv("PD_FORWARD_DECODE_FUSE")) != 0;
    if (getenv("PD_FORWARD_NO_DECODE_FUSE") != NULL && atoi(getenv("PD_FORWARD_NO_DECODE_FUSE")) != 0)
        fw->decode_fuse = false;
    if (c->norm == ENG_NORM_LAYER)
        fw->decode_fuse = false; /* the fused ops are RMSNorm's */
    /* RoPE + KV write in one op where the backend has it (element-wise: every T) unless
     * PD_FORWARD_ROPE_KV=0; the CPU tests reach it through the opt-in fused layer */
    fw->rope_kv = ops->rope_kv_write != NULL || fw->decode_fuse;
    if (getenv("PD_FORWARD_ROPE_KV") != NULL)
        fw->rope_kv = atoi(getenv("PD_FORWARD_ROPE_KV")) != 0;

#define TRY(expr)            \
    do {                     \
        st = (expr);         \
        if (st != PD_OK)     \
            goto err;        \
    } while (0)
    TRY(kv_layout(fw)); /* first: an fp8 cache on the CPU backend fails before the upload */
    TRY(prep_weights(fw));
    TRY(prep_rope(fw));
    TRY(pd_mul_size(fw->kv.block_bytes, (size_t)opts->n_blocks, &kv_bytes));
    TRY(dev_alloc(fw, kv_bytes, &fw->kv_base));
    TRY(alloc_f32(fw, T, c->hidden, &fw->x));
    TRY(alloc_f32(fw, T, c->hidden, &fw->h));
    /* fused q|k|v and gate|up outputs land in q and gate: size them for that */
    TRY(alloc_f32(fw, T, fw->any_qkv ? QW + 2 * KW : QW, &fw->q));
    /* separate k, v and up buffers only when some layer runs unfused (they are large for
     * a big max_tokens: up is T x intermediate floats) */
    TRY(alloc_f32(fw, fw->any_unfused_qkv ? T : 1, KW, &fw->k));
    TRY(alloc_f32(fw, fw->any_unfused_qkv ? T : 1, KW, &fw->v));
    TRY(alloc_f32(fw, T, QW, &fw->attn));
    TRY(alloc_f32(fw, T, c->hidden, &fw->o));
    TRY(alloc_f32(fw, T, fw->any_gu ? 2 * c->intermediate : c->intermediate, &fw->gate));
    TRY(alloc_f32(fw, fw->any_unfused_gu ? T : 1, c->intermediate, &fw->up));
    TRY(alloc_f32(fw, T, c->intermediate, &fw->act));
    if (ops->mm_in_type != NULL && ops->add_rmsnorm_mm && ops->silu_and_mul_mm && ops->to_mm && ops->matmul_mm &&
        c->norm == ENG_NORM_RMS && c->gated_ffn && c->act == ENG_ACT_SILU) /* 2-byte elements: half as many floats */
        TRY(alloc_f32(fw, T, ((c->hidden > c->intermediate ? c->hidden : c->intermediate) + 1) / 2, (float **)&fw->hm));
    TRY(alloc_f32(fw, T, c->hidden, &fw->ffn));
    TRY(alloc_f32(fw, S, c->hidden, &fw->g));
    TRY(alloc_f32(fw, S, c->hidden, &fw->gn));
    TRY(alloc_f32(fw, S, c->vocab_size, &fw->logits));
    TRY(dev_alloc(fw, (size_t)T * sizeof(int32_t), (void **)&fw->d_tokens));
    TRY(dev_alloc(fw, (size_t)T * sizeof(int32_t), (void **)&fw->d_pos));
    TRY(dev_alloc(fw, (size_t)T * sizeof(int32_t), (void **)&fw->d_pos2));
    TRY(dev_alloc(fw, (size_t)T * sizeof(int32_t), (void **)&fw->d_seq));
    TRY(dev_alloc(fw, (size_t)T * sizeof(int64_t), (void **)&fw->d_slots));
    TRY(dev_alloc(fw, (size_t)S * (size_t)opts->max_blocks_per_seq * sizeof(int32_t), (void **)&fw->d_tables));
    TRY(dev_alloc(fw, (size_t)S * sizeof(int32_t), (void **)&fw->d_ctx));
    TRY(dev_alloc(fw, (size_t)S * sizeof(int32_t), (void **)&fw->d_argmax));
    TRY(dev_alloc(fw, (size_t)S * sizeof(kcpu_sample_params_t), (void **)&fw->d_sp));
    TRY(dev_alloc(fw, (size_t)S * sizeof(float), (void **)&fw->d_u));
    TRY(host_owned(fw, (size_t)S * sizeof(kcpu_sample_params_t), (void **)&fw->h_sp));
    TRY(host_owned(fw, (size_t)S * sizeof(float), (void **)&fw->h_u));
    TRY(ops->memset(be, fw->d_u, 0, (size_t)S * sizeof(float)));
    TRY(host_owned(fw, (size_t)T * sizeof(int32_t), (void **)&fw->h_pos2));
    if (opts->graph_max_bs > 0 && strcmp(ops->name, "cuda") == 0 && graph_setup(fw) != PD_OK) {
        /* graphs are an optimisation: without their scratch every step runs eagerly */
        PD_LOG_WARN("forward: cannot set up CUDA graphs (scratch allocation failed); every step runs eagerly");
        fw->n_sizes = 0;
    }
#undef TRY
    PD_LOG_INFO("forward: %s on %s, %d layers, KV cache %lld blocks x %d tokens (%.1f MiB), workspace for %lld tokens",
                eng_arch_name(c->arch), ops->name, c->n_layers, (long long)opts->n_blocks, opts->block_size,
                (double)kv_bytes / (1 << 20), (long long)T);
    *fw_p = fw;
    return PD_OK;
err:
    eng_forward_destroy(fw);
    return st;
}

void eng_forward_destroy(eng_forward_t *fw)
{
    if (fw == NULL)
        return;
#ifdef PD_HAVE_CUDA
    if (fw->n_sizes > 0) {
        eng_forward_graph_stats_t gs;
        eng_forward_graph_stats(fw, &gs);
        PD_LOG_INFO("forward: %llu steps replayed from CUDA graphs, %llu eager; %d of %d sizes captured, %d failed",
                    (unsigned long long)gs.graph_steps, (unsigned long long)gs.eager_steps, gs.n_captured, gs.n_sizes,
                    gs.n_failed);
    }
    for (int i = 0; i < fw->n_sizes; i++) /* before the buffers they point into */
        eng_backend_cuda_graph_destroy(fw->be, fw->graphs[i]);
#endif
    for (size_t i = 0; i < fw->n_owned; i++) {
        free(fw->owned[i].host);
        if (fw->owned[i].dev)
            fw->ops->buf_free(fw->be, fw->owned[i].dev);
    }
    free(fw->owned);
    free(fw->layers);
    free(fw);
}

static pd_status_t matmul(eng_forward_t *fw, const float *x, int64_t M, const mat_t *m,
                          const float *bias, float *y)
{
    return fw->ops->matmul(fw->be, x, M, m->in, m->in, m->w, m->type, m->out, bias, y, m->out);
}

static pd_status_t matmul_mm(eng_forward_t *fw, const void *x, int64_t M, const mat_t *m, const float *bias, float *y,
                             bool accumulate)
{
    return fw->ops->matmul_mm(fw->be, x, M, m->in, m->in, m->w, m->type, m->out, bias, y, m->out, accumulate);
}

/* paged_attention of p; on the 16-bit-input path (mm16) first offered to
 * paged_attention_mm writing out16 (the rows of p in the GEMM's type): *wrote16_p says
 * which of the two wrote them. */
static pd_status_t attention(eng_forward_t *fw, const kcpu_attn_params_t *p, bool mm16, void *out16, bool *wrote16_p)
{
    *wrote16_p = false;
    if (mm16 && fw->ops->paged_attention_mm != NULL) {
        pd_status_t st = fw->ops->paged_attention_mm(fw->be, p, out16);
        if (st != PD_ERR_UNSUPPORTED) {
            *wrote16_p = st == PD_OK;
            return st;
        }
    }
    return fw->ops->paged_attention(fw->be, p);
}

/* The gate|up (or gate, up) GEMMs of the 16-bit-input MLP: into the gate / up buffers in
 * the GEMM's type where the backend offers that (matmul_mm_out + silu_and_mul_mm_in:
 * *glu16_p true), else in f32. */
static pd_status_t gate_up_mm(eng_forward_t *fw, const layer_w_t *L, int64_t T, bool *glu16_p)
{
    const eng_backend_ops_t *ops = fw->ops;
    pd_status_t st = PD_ERR_UNSUPPORTED;
    *glu16_p = false;
    if (ops->matmul_mm_out != NULL && ops->silu_and_mul_mm_in != NULL) {
        const mat_t *m = L->gate_up.w != NULL ? &L->gate_up : &L->gate;
        st = ops->matmul_mm_out(fw->be, fw->hm, T, m->in, m->in, m->w, m->type, m->out, fw->gate, m->out);
        if (st == PD_OK && L->gate_up.w == NULL) {
            m = &L->up;
            st = ops->matmul_mm_out(fw->be, fw->hm, T, m->in, m->in, m->w, m->type, m->out, fw->up, m->out);
            /* the backend takes both or neither (the same shapes and settings) */
        }
        if (st != PD_ERR_UNSUPPORTED) {
            *glu16_p = st == PD_OK;
            return st;
        }
    }
    if (L->gate_up.w != NULL)
        return matmul_mm(fw, fw->hm, T, &L->gate_up, NULL, fw->gate, false);
    st = matmul_mm(fw, fw->hm, T, &L->gate, NULL, fw->gate, false);
    return st != PD_OK ? st : matmul_mm(fw, fw->hm, T, &L->up, NULL, fw->up, false);
}

/* norm of the residual stream: llama rmsnorm, OPT layernorm; with a fused residual add
 * when add != NULL (residual += add first) */
static pd_status_t norm(eng_forward_t *fw, float *residual, const float *add, const float *w,
                        const float *b, float *out, int64_t T)
{
    const eng_model_config_t *c = fw->cfg;
    float eps = (float)c->norm_eps;
    if (c->norm == ENG_NORM_LAYER) {
        if (add)
            return fw->ops->add_layernorm(fw->be, residual, add, w, b, out, T, c->hidden, eps);
        return fw->ops->layernorm(fw->be, residual, w, b, out, T, c->hidden, eps);
    }
    if (add)
        return fw->ops->add_rmsnorm(fw->be, residual, add, w, out, T, c->hidden, eps);
    return fw->ops->rmsnorm(fw->be, residual, w, out, T, c->hidden, eps);
}

/* The fused decode ops (eng_backend.h): *done_p false, nothing queued, when the backend
 * lacks the op or declines the call (PD_ERR_UNSUPPORTED); the caller then runs the
 * separate ops. */
static pd_status_t try_norm_matmul(eng_forward_t *fw, int64_t T, const float *norm_w, const mat_t *m,
                                   const float *bias, int glu, float *y, int64_t ldy, bool *done_p)
{
    pd_status_t st;
    *done_p = false;
    if (fw->ops->norm_matmul == NULL || m->w == NULL)
        return PD_OK;
    st = fw->ops->norm_matmul(fw->be, fw->x, T, fw->cfg->hidden, norm_w, (float)fw->cfg->norm_eps, m->w, m->type,
                              m->out, bias, glu, y, ldy);
    if (st == PD_ERR_UNSUPPORTED)
        return PD_OK;
    *done_p = st == PD_OK;
    return st;
}

/* x += in W^T (+ bias): the fused op, else the matmul into `tmp` and an add. */
static pd_status_t matmul_residual(eng_forward_t *fw, const float *in, int64_t T, const mat_t *m, const float *bias,
                                   float *tmp)
{
    const int64_t D = fw->cfg->hidden;
    if (fw->ops->matmul_add != NULL) {
        pd_status_t st = fw->ops->matmul_add(fw->be, in, T, m->in, m->in, m->w, m->type, m->out, bias, fw->x, D);
        if (st != PD_ERR_UNSUPPORTED)
            return st;
    }
    CK(matmul(fw, in, T, m, bias, tmp));
    return fw->ops->add(fw->be, fw->x, tmp, fw->x, T * D);
}

/* Host metadata -> the fixed backend buffers (never inside a graph). */
static pd_status_t upload(eng_forward_t *fw, const int32_t *tokens, const int32_t *positions, const int32_t *tok_seq,
                          const int64_t *slots, int64_t T, const int32_t *tables, const int32_t *ctx, int n_seqs)
{
    const eng_backend_ops_t *ops = fw->ops;
    eng_backend_t *be = fw->be;
    const int MB = fw->opts.max_blocks_per_seq;

    CK(ops->memcpy_h2d(be, fw->d_tokens, tokens, (size_t)T * sizeof(int32_t)));
    CK(ops->memcpy_h2d(be, fw->d_pos, positions, (size_t)T * sizeof(int32_t)));
    CK(ops->memcpy_h2d(be, fw->d_seq, tok_seq, (size_t)T * sizeof(int32_t)));
    CK(ops->memcpy_h2d(be, fw->d_slots, slots, (size_t)T * sizeof(int64_t)));
    CK(ops->memcpy_h2d(be, fw->d_tables, tables, (size_t)n_seqs * MB * sizeof(int32_t)));
    CK(ops->memcpy_h2d(be, fw->d_ctx, ctx, (size_t)n_seqs * sizeof(int32_t)));
    if (fw->cfg->arch == ENG_ARCH_OPT) {
        for (int64_t t = 0; t < T; t++)
            fw->h_pos2[t] = positions[t] + fw->cfg->pos_embd_offset;
        CK(ops->memcpy_h2d(be, fw->d_pos2, fw->h_pos2, (size_t)T * sizeof(int32_t)));
    }
    return PD_OK;
}

/* Every op from the embedding to fw->logits, reading only the fixed buffers.
 * logit_rows (host) NULL means rows 0 .. n_logits-1 of x, in order (decode): the
 * final norm then reads x directly and the body depends on nothing but T, n_seqs and
 * n_logits (what a CUDA graph needs).  argmax: also the token of every logits row into
 * d_argmax, sampled as d_sp / d_u say (greedy rows: the first maximum; graphs always
 * record it: for greedy rows one read of the logits, a few us). */
static pd_status_t body(eng_forward_t *fw, int64_t T, int n_seqs, int n_logits, const int32_t *logit_rows,
                        bool argmax)
{
    const eng_model_config_t *c = fw->cfg;
    const eng_backend_ops_t *ops = fw->ops;
    eng_backend_t *be = fw->be;
    const int64_t D = c->hidden, I = c->intermediate, V = c->vocab_size;
    const int64_t QW = (int64_t)c->n_heads * c->head_dim, KW = (int64_t)c->n_kv_heads * c->head_dim;
    const int MB = fw->opts.max_blocks_per_seq;
    const float eps = (float)c->norm_eps;
    /* decode rows: the residual adds go into the o / down matmuls (x += ...) and the
     * norms into the q|k|v and gate|up matmuls (with the GLU), so the norm and SiLU-mul
     * kernels drop out of the step; x is then final after the last layer */
    const bool df = fw->decode_fuse && T <= DFUSE_MAX_T;
    /* as the separate ops below: silu_and_mul, else gelu_and_mul (tanh form for GELU_TANH) */
    const int glu = c->act == ENG_ACT_SILU ? ENG_GLU_SILU : c->act == ENG_ACT_GELU_TANH ? ENG_GLU_GELU_TANH : ENG_GLU_GELU;
    kcpu_attn_params_t ap;
    /* prefill-sized matmuls on a 16-bit-GEMM backend: their inputs (norm, SiLU-mul
     * outputs) are written in the GEMM's type, in hm (the f32 rows h / act stay unused),
     * and the o and down projections add into the residual stream x as they run (the
     * norms after them then read x alone).  Where the backend offers them, the attention
     * writes its rows in that type too (paged_attention_mm: no to_mm) and the gate|up
     * GEMM its output (matmul_mm_out, read by silu_and_mul_mm_in) */
    const bool mm16 = !df && fw->hm != NULL && ops->mm_in_type(be, T) != KCPU_DTYPE_F32;

    fw->last_x_acc = df || mm16;
    /* embeddings */
    CK(ops->embedding(be, fw->embed, fw->embed_type, V, D, fw->d_tokens, T, fw->x));
    if (c->arch == ENG_ARCH_OPT) {
        CK(ops->embedding(be, fw->pos_embed, fw->pos_embed_type, fw->pos_embed_rows, D, fw->d_pos2, T, fw->h));
        CK(ops->add(be, fw->x, fw->h, fw->x, T * D));
    }

    memset(&ap, 0, sizeof(ap));
    ap.n_tokens = T;
    ap.q = fw->q;
    ap.q_stride = QW;
    ap.out = fw->attn;
    ap.out_stride = QW;
    ap.tok_seq = fw->d_seq;
    ap.tok_pos = fw->d_pos;
    ap.n_seqs = n_seqs;
    ap.block_tables = fw->d_tables;
    ap.max_blocks_per_seq = MB;
    ap.context_lens = fw->d_ctx;
    ap.n_heads = c->n_heads;
    ap.n_kv_heads = c->n_kv_heads;
    ap.head_dim = c->head_dim;
    ap.scale = 1.0f / sqrtf((float)c->head_dim);
    ap.causal = true;
    ap.sliding_window = c->sliding_window;
    ap.cache_base = fw->kv_base;
    ap.layout = &fw->kv;

    for (int l = 0; l < c->n_layers; l++) {
        const layer_w_t *L = &fw->layers[l];
        bool done = false;
        /* h = norm(x [+ previous MLP output]) */
        if (mm16)
            CK(ops->add_rmsnorm_mm(be, fw->x, NULL, L->attn_norm, fw->hm, T, D, eps));
        else if (!df)
            CK(norm(fw, fw->x, l == 0 ? NULL : fw->ffn, L->attn_norm, L->attn_norm_b, fw->h, T));
        else if (L->qkv.w != NULL)
            CK(try_norm_matmul(fw, T, L->attn_norm, &L->qkv, L->bqkv, ENG_GLU_NONE, fw->q, QW + 2 * KW, &done));
        if (df && !done)
            CK(norm(fw, fw->x, NULL, L->attn_norm, L->attn_norm_b, fw->h, T));
        float *q = fw->q, *k = fw->k, *v = fw->v;
        int64_t qs = QW, ks = KW, vs = KW;
        if (L->qkv.w != NULL) { /* one [T, QW + 2 KW] output: q, k, v are column ranges */
            if (mm16)
                CK(matmul_mm(fw, fw->hm, T, &L->qkv, L->bqkv, fw->q, false));
            else if (!done)
                CK(matmul(fw, fw->h, T, &L->qkv, L->bqkv, fw->q));
            qs = ks = vs = QW + 2 * KW;
            k = q + QW;
            v = k + KW;
        } else if (mm16) {
            CK(matmul_mm(fw, fw->hm, T, &L->q, L->bq, fw->q, false));
            CK(matmul_mm(fw, fw->hm, T, &L->k, L->bk, fw->k, false));
            CK(matmul_mm(fw, fw->hm, T, &L->v, L->bv, fw->v, false));
        } else {
            CK(matmul(fw, fw->h, T, &L->q, L->bq, fw->q));
            CK(matmul(fw, fw->h, T, &L->k, L->bk, fw->k));
            CK(matmul(fw, fw->h, T, &L->v, L->bv, fw->v));
        }
        if (c->qk_norm) {
            CK(ops->rmsnorm(be, fw->q, L->q_norm, fw->q, T * c->n_heads, c->head_dim, eps));
            CK(ops->rmsnorm(be, fw->k, L->k_norm, fw->k, T * c->n_kv_heads, c->head_dim, eps));
        }
        const kcpu_rope_style_t rs = c->rope_style == ENG_ROPE_GPTJ ? KCPU_ROPE_GPTJ : KCPU_ROPE_NEOX;
        pd_status_t rst = PD_ERR_UNSUPPORTED;
        if (fw->rope_kv && c->rope_style != ENG_ROPE_NONE && ops->rope_kv_write != NULL)
            rst = ops->rope_kv_write(be, q, qs, k, ks, v, vs, fw->d_pos, T, c->n_heads, c->rotary_dim, fw->inv_freq,
                                     fw->attn_factor, rs, &fw->kv, fw->kv_base, l, fw->d_slots);
        if (rst != PD_ERR_UNSUPPORTED) {
            CK(rst); /* rotated and written in one op (every T: it is element-wise) */
        } else {
            if (c->rope_style != ENG_ROPE_NONE)
                CK(ops->rope(be, q, qs, k, ks, fw->d_pos, T, c->n_heads, c->n_kv_heads, c->head_dim,
                             c->rotary_dim, fw->inv_freq, fw->attn_factor, rs));
            CK(ops->kv_write(be, &fw->kv, fw->kv_base, l, fw->d_slots, T, k, ks, v, vs));
        }
        ap.layer = l;
        ap.q = q;
        ap.q_stride = qs;
        /* the attention output: rows [0, n_f32) in attn (f32), the rest already in hm in
         * the GEMM's type (the fa2 prefill kernel writes it so: no to_mm for them) */
        int64_t n_f32 = T;
        bool wrote16 = false;
        if (fw->attn_split > 0) {
            /* a mixed batch: its leading decode tokens on the decode kernel, then the
             * prefill chunks (the same semantics, per token) */
            kcpu_attn_params_t rest = ap;
            const int64_t n = fw->attn_split;
            ap.n_tokens = n;
            CK(ops->paged_attention(be, &ap));
            rest.n_tokens = T - n;
            rest.q = q + n * qs;
            rest.out = fw->attn + n * QW;
            rest.tok_seq = fw->d_seq + n;
            rest.tok_pos = fw->d_pos + n;
            CK(attention(fw, &rest, mm16, mm16 ? (char *)fw->hm + (size_t)n * (size_t)QW * 2 : NULL, &wrote16));
            n_f32 = wrote16 ? n : T;
            ap.n_tokens = T;
        } else {
            CK(attention(fw, &ap, mm16, fw->hm, &wrote16));
            n_f32 = wrote16 ? 0 : T;
        }
        if (mm16) {
            /* x += attn Wo^T in the GEMM; then the MLP on 16-bit inputs: norm -> gate|up
             * -> SiLU-mul -> down, which adds into x too */
            if (n_f32 > 0)
                CK(ops->to_mm(be, fw->attn, n_f32, QW, QW, fw->hm));
            CK(matmul_mm(fw, fw->hm, T, &L->o, L->bo, fw->x, true));
            CK(ops->add_rmsnorm_mm(be, fw->x, NULL, L->ffn_norm, fw->hm, T, D, eps));
            const int64_t gs = L->gate_up.w != NULL ? 2 * I : I; /* one [T, 2I] output: gate | up */
            bool glu16 = false;
            CK(gate_up_mm(fw, L, T, &glu16));
            if (glu16) { /* gate and up in the GEMM's type, in the gate / up buffers */
                const uint16_t *g16 = (const uint16_t *)fw->gate;
                const uint16_t *u16 = L->gate_up.w != NULL ? g16 + I : (const uint16_t *)fw->up;
                CK(ops->silu_and_mul_mm_in(be, g16, gs, u16, gs, fw->hm, T, I));
            } else {
                const float *up = L->gate_up.w != NULL ? fw->gate + I : fw->up;
                CK(ops->silu_and_mul_mm(be, fw->gate, gs, up, gs, fw->hm, T, I));
            }
            CK(matmul_mm(fw, fw->hm, T, &L->down, L->bdown, fw->x, true));
            continue;
        }
        /* x += o; h = norm(x) */
        done = false;
        if (!df) {
            CK(matmul(fw, fw->attn, T, &L->o, L->bo, fw->o));
            CK(norm(fw, fw->x, fw->o, L->ffn_norm, L->ffn_norm_b, fw->h, T));
        } else {
            CK(matmul_residual(fw, fw->attn, T, &L->o, L->bo, fw->o));
            if (c->gated_ffn && L->gate_up.w != NULL) /* act = glu(norm(x) Wgu^T) */
                CK(try_norm_matmul(fw, T, L->ffn_norm, &L->gate_up, NULL, glu, fw->act, I, &done));
            if (!done)
                CK(norm(fw, fw->x, NULL, L->ffn_norm, L->ffn_norm_b, fw->h, T));
        }
        if (done) {
            /* fw->act holds the activation */
        } else if (c->gated_ffn) {
            float *gate = fw->gate, *up = fw->up;
            int64_t gs = I;
            if (L->gate_up.w != NULL) { /* one [T, 2I] output: gate | up */
                CK(matmul(fw, fw->h, T, &L->gate_up, NULL, fw->gate));
                up = gate + I;
                gs = 2 * I;
            } else {
                CK(matmul(fw, fw->h, T, &L->gate, NULL, fw->gate));
                CK(matmul(fw, fw->h, T, &L->up, NULL, fw->up));
            }
            if (c->act == ENG_ACT_SILU)
                CK(ops->silu_and_mul(be, gate, gs, up, gs, fw->act, T, I));
            else
                CK(ops->gelu_and_mul(be, gate, gs, up, gs, fw->act, T, I, c->act == ENG_ACT_GELU_TANH));
        } else {
            CK(matmul(fw, fw->h, T, &L->up, L->bup, fw->up));
            if (c->act == ENG_ACT_RELU)
                CK(ops->relu(be, fw->up, fw->act, T * I));
            else if (c->act == ENG_ACT_SILU)
                CK(ops->silu(be, fw->up, fw->act, T * I));
            else
                CK(ops->gelu(be, fw->up, fw->act, T * I, c->act == ENG_ACT_GELU_TANH));
        }
        if (df)
            CK(matmul_residual(fw, fw->act, T, &L->down, L->bdown, fw->ffn));
        else
            CK(matmul(fw, fw->act, T, &L->down, L->bdown, fw->ffn));
    }
    if (n_logits == 0)
        return PD_OK;
    /* x += last MLP output, then final norm + lm_head on the wanted rows only */
    if (!df && !mm16)
        CK(ops->add(be, fw->x, fw->ffn, fw->x, T * D));
    float *src = fw->x; /* identity rows: the norm reads x itself (it leaves x as it is) */
    if (logit_rows != NULL) {
        src = fw->g;
        for (int i = 0; i < n_logits; i++)
            CK(ops->memcpy_d2d(be, fw->g + (size_t)i * D, fw->x + (size_t)logit_rows[i] * D, (size_t)D * sizeof(float)));
    }
    bool done = false;
    if (df && src == fw->x) /* the final norm inside the lm_head GEMV */
        CK(try_norm_matmul(fw, n_logits, fw->out_norm, &fw->lm_head, NULL, ENG_GLU_NONE, fw->logits, V, &done));
    if (!done) {
        CK(norm(fw, src, NULL, fw->out_norm, fw->out_norm_b, fw->gn, n_logits));
        CK(matmul(fw, fw->gn, n_logits, &fw->lm_head, NULL, fw->logits));
    }
    if (argmax) /* greedy rows: the first maximum; others drawn with their uniform */
        CK(ops->sample_rows(be, fw->logits, n_logits, V, fw->d_sp, fw->d_u, fw->d_argmax));
    return PD_OK;
}

/* How the body samples rows 0 .. rows-1 (outside any graph): params / u of the first
 * n_logits rows, greedy for the rest (graph padding); params NULL: every row greedy,
 * uploaded only when d_sp does not hold that already. */
static pd_status_t upload_sampling(eng_forward_t *fw, int rows, int n_logits, const kcpu_sample_params_t *params,
                                   const float *u)
{
    const kcpu_sample_params_t greedy = {0.0f, 0, 1.0f, 0.0f};
    if (params == NULL && fw->sp_greedy_rows >= rows)
        return PD_OK;
    for (int i = 0; i < rows; i++) {
        bool given = params != NULL && i < n_logits;
        fw->h_sp[i] = given ? params[i] : greedy;
        fw->h_u[i] = given ? u[i] : 0.0f;
    }
    CK(fw->ops->memcpy_h2d(fw->be, fw->d_sp, fw->h_sp, (size_t)rows * sizeof(kcpu_sample_params_t)));
    CK(fw->ops->memcpy_h2d(fw->be, fw->d_u, fw->h_u, (size_t)rows * sizeof(float)));
    fw->sp_greedy_rows = params == NULL ? rows : 0;
    return PD_OK;
}

/* The results of a forward back to the host: the logits rows with need_row[i] != 0
 * (need_row NULL: all, one copy), in runs of consecutive rows, then the argmax ids
 * when ids != NULL (the body computed them). */
static pd_status_t copy_out(eng_forward_t *fw, int n_logits, const uint8_t *need_row, float *logits, int32_t *ids)
{
    const size_t row = (size_t)fw->cfg->vocab_size * sizeof(float);
    /* eng_forward_launch_sample: queued, the caller's eng_forward_wait completes them */
    const bool queued = fw->defer && fw->ops->memcpy_d2h_async != NULL;
    pd_status_t (*d2h)(eng_backend_t *, void *, const void *, size_t) =
        queued ? fw->ops->memcpy_d2h_async : fw->ops->memcpy_d2h;
    if (queued && n_logits > 0)
        fw->pending = true;
    if (need_row == NULL) {
        if (n_logits > 0)
            CK(d2h(fw->be, logits, fw->logits, (size_t)n_logits * row));
    } else {
        for (int i = 0; i < n_logits;) {
            int j = i;
            if (!need_row[i]) {
                i++;
                continue;
            }
            while (j < n_logits && need_row[j])
                j++;
            CK(d2h(fw->be, (char *)logits + (size_t)i * row, (char *)fw->logits + (size_t)i * row,
                   (size_t)(j - i) * row));
            i = j;
        }
    }
    if (ids != NULL && n_logits > 0)
        CK(d2h(fw->be, ids, fw->d_argmax, (size_t)n_logits * sizeof(int32_t)));
    return PD_OK;
}


/* ---- CUDA graphs of decode steps ---- */

/* Index of the capture size for this batch, or -1 when it runs eagerly. */
static int graph_size_index(const eng_forward_t *fw, const eng_fwd_batch_t *b)
{
    const int n = b->n_seqs;
    int lo = 0, hi;
    if (fw->n_sizes == 0 || n > fw->graph_max_bs || b->n_tokens != n || b->n_logits != n)
        return -1;
    for (int i = 0; i < n; i++)
        if (b->tok_seq[i] != i || b->logit_rows[i] != i || b->context_lens[i] > fw->graph_max_ctx)
            return -1;
    hi = fw->n_sizes - 1; /* the smallest size >= n (sizes ascend; the last is graph_max_bs) */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (fw->sizes[mid] >= n)
            hi = mid;
        else
            lo = mid + 1;
    }
    return fw->failed[lo] ? -1 : lo;
}

#ifdef PD_HAVE_CUDA
/* The decode batch padded to `bs` rows into the host scratch, then uploaded. */
static pd_status_t upload_padded(eng_forward_t *fw, const eng_fwd_batch_t *b, int bs)
{
    const int n = b->n_seqs, MB = fw->opts.max_blocks_per_seq;
    memcpy(fw->p_tokens, b->tokens, (size_t)n * sizeof(int32_t));
    memcpy(fw->p_pos, b->positions, (size_t)n * sizeof(int32_t));
    memcpy(fw->p_slots, b->slots, (size_t)n * sizeof(int64_t));
    memcpy(fw->p_tables, b->block_tables, (size_t)n * MB * sizeof(int32_t));
    memcpy(fw->p_ctx, b->context_lens, (size_t)n * sizeof(int32_t));
    for (int i = 0; i < bs; i++)
        fw->p_seq[i] = i;
    for (int i = n; i < bs; i++) { /* a one-token sequence of its own, writing nothing */
        fw->p_tokens[i] = 0;
        fw->p_pos[i] = 0;
        fw->p_slots[i] = -1;
        fw->p_ctx[i] = 1;
    }
    memset(fw->p_tables + (size_t)n * MB, 0, (size_t)(bs - n) * MB * sizeof(int32_t));
    return upload(fw, fw->p_tokens, fw->p_pos, fw->p_seq, fw->p_slots, bs, fw->p_tables, fw->p_ctx, bs);
}

/* A new graph replays the step its warm-up just ran (the same inputs, and its KV writes
 * put the same values in the same slots), so its logits must equal the warm-up's: a
 * graph that recorded a stale pointer or parameter is caught here, once per size, and
 * that size stays eager.  PD_OK when they agree within 1e-3 of the largest logit. */
static pd_status_t graph_selfcheck(eng_forward_t *fw, eng_cuda_graph_t *g, const float *want, size_t out_bytes,
                                   int bs)
{
    float *got = malloc(out_bytes);
    size_t n = out_bytes / sizeof(float), bad_i = 0;
    double mx = 1.0, worst = 0.0;
    pd_status_t st;

    if (got == NULL)
        return PD_ERR_NOMEM;
    st = eng_backend_cuda_graph_launch(fw->be, g);
    if (st == PD_OK)
        st = fw->ops->memcpy_d2h(fw->be, got, fw->logits, out_bytes);
    if (st == PD_OK) {
        for (size_t i = 0; i < n; i++)
            if (fabsf(want[i]) > mx)
                mx = fabsf(want[i]);
        for (size_t i = 0; i < n; i++) {
            double e = fabs((double)got[i] - (double)want[i]);
            if (!(e <= worst)) { /* NaN in got lands here too */
                worst = isnan(e) ? INFINITY : e;
                bad_i = i;
            }
        }
        if (!(worst <= 1e-3 * mx)) {
            PD_LOG_ERR("forward: the CUDA graph of decode batch size %d gives other logits than the eager step "
                       "(element %zu: %g against %g); that size runs eagerly",
                       bs, bad_i, got[bad_i], want[bad_i]);
            st = PD_ERR_INTERNAL;
        }
    }
    free(got);
    return st;
}

static pd_status_t run_graph(eng_forward_t *fw, const eng_fwd_batch_t *b, int idx, const uint8_t *need_row,
                             const kcpu_sample_params_t *params, const float *u, float *logits, int32_t *ids)
{
    const int bs = fw->sizes[idx];
    const size_t out_bytes = (size_t)b->n_logits * (size_t)fw->cfg->vocab_size * sizeof(float);
    eng_cuda_graph_t *g = fw->graphs[idx];
    pd_status_t st;

    CK(upload_padded(fw, b, bs));
    /* the graph always samples its bs rows (greedy unless params say otherwise) */
    CK(upload_sampling(fw, bs, b->n_logits, params, u));
    if (g != NULL) {
        CK(eng_backend_cuda_graph_launch(fw->be, g));
        fw->graph_steps++;
        return copy_out(fw, b->n_logits, need_row, logits, ids);
    }
    /* first step of this size: run it eagerly (the warm-up: scratch grown, weights
     * converted, kernels loaded), then record the same body; recording runs nothing.
     * The warm-up copies every row back (the self-check compares them all). */
    CK(body(fw, bs, bs, bs, NULL, true));
    const bool defer = fw->defer;
    fw->defer = false; /* the self-check below compares these rows: copied now */
    st = copy_out(fw, b->n_logits, NULL, logits, ids);
    fw->defer = defer;
    CK(st);
    fw->eager_steps++;
    st = eng_backend_cuda_capture_begin(fw->be);
    if (st == PD_OK) {
        pd_status_t body_st = body(fw, bs, bs, bs, NULL, true);
        st = eng_backend_cuda_capture_end(fw->be, (eng_cuda_graph_t **)&fw->graphs[idx]);
        if (st == PD_OK && body_st != PD_OK)
            st = body_st;
        if (st == PD_OK && fw->graphs[idx] != NULL)
            st = graph_selfcheck(fw, fw->graphs[idx], logits, out_bytes, bs);
        if (st != PD_OK && fw->graphs[idx] != NULL) {
            eng_backend_cuda_graph_destroy(fw->be, fw->graphs[idx]);
            fw->graphs[idx] = NULL;
        }
    }
    if (st != PD_OK) {
        /* the step itself is done (eagerly); only the graph is lost */
        PD_LOG_WARN("forward: CUDA graph capture for decode batch size %d failed (%s); that size runs eagerly", bs,
                    pd_status_str(st));
        fw->failed[idx] = true;
        fw->n_failed++;
        return PD_OK;
    }
    fw->n_captured += fw->graphs[idx] != NULL;
    PD_LOG_DEBUG("forward: captured the CUDA graph of decode batch size %d", bs);
    return PD_OK;
}
#endif

pd_status_t eng_forward_launch_sample(eng_forward_t *fw, const eng_fwd_batch_t *b, const uint8_t *need_row,
                                      const kcpu_sample_params_t *params, const float *u, float *logits, int32_t *ids)
{
    fw->defer = true;
    pd_status_t st = eng_forward_run_sample(fw, b, need_row, params, u, logits, ids);
    fw->defer = false;
    return st;
}

pd_status_t eng_forward_wait(eng_forward_t *fw)
{
    if (!fw->pending)
        return PD_OK;
    fw->pending = false;
    return fw->ops->synchronize(fw->be);
}

pd_status_t eng_forward_run(eng_forward_t *fw, const eng_fwd_batch_t *b, float *logits)
{
    return eng_forward_run_argmax(fw, b, NULL, logits, NULL);
}

pd_status_t eng_forward_run_argmax(eng_forward_t *fw, const eng_fwd_batch_t *b, const uint8_t *need_row,
                                   float *logits, int32_t *ids)
{
    return eng_forward_run_sample(fw, b, need_row, NULL, NULL, logits, ids);
}

/* Leading one-token sequences (token i of sequence i, alone), when others follow:
 * the scheduler orders batches that way (eng_batch_t); 0 when the batch is not mixed. */
static int64_t decode_prefix(const eng_fwd_batch_t *b)
{
    int64_t n = 0;
    while (n < b->n_tokens && b->tok_seq[n] == n && (n + 1 == b->n_tokens || b->tok_seq[n + 1] != n))
        n++;
    return n < b->n_tokens ? n : 0;
}

pd_status_t eng_forward_run_sample(eng_forward_t *fw, const eng_fwd_batch_t *b, const uint8_t *need_row,
                                   const kcpu_sample_params_t *params, const float *u, float *logits, int32_t *ids)
{
    const int64_t T = b->n_tokens;
    bool identity;
    int idx;

    if (T < 1 || T > fw->opts.max_tokens || b->n_seqs < 1 || b->n_seqs > fw->opts.max_seqs ||
        b->n_logits < 0 || b->n_logits > fw->opts.max_seqs) {
        PD_LOG_ERR("forward: batch of %lld tokens / %d seqs / %d logits exceeds %d / %d", (long long)T,
                   b->n_seqs, b->n_logits, fw->opts.max_tokens, fw->opts.max_seqs);
        return PD_ERR_INVAL;
    }
    identity = true;
    for (int i = 0; i < b->n_logits; i++) {
        if (b->logit_rows[i] < 0 || b->logit_rows[i] >= T)
            return PD_ERR_INVAL;
        identity &= b->logit_rows[i] == i;
    }
    fw->last_T = 0; /* no eng_forward_logits until this forward succeeds */
    fw->attn_split = decode_prefix(b);
    idx = graph_size_index(fw, b);
#ifdef PD_HAVE_CUDA
    if (idx >= 0) {
        pd_status_t st = run_graph(fw, b, idx, need_row, params, u, logits, ids);
        fw->last_T = st == PD_OK ? fw->sizes[idx] : 0;
        fw->x_final = true;
        return st;
    }
#else
    (void)idx;
#endif
    CK(upload(fw, b->tokens, b->positions, b->tok_seq, b->slots, T, b->block_tables, b->context_lens, b->n_seqs));
    if (ids != NULL)
        CK(upload_sampling(fw, b->n_logits, b->n_logits, params, u));
    CK(body(fw, T, b->n_seqs, b->n_logits, identity ? NULL : b->logit_rows, ids != NULL));
    fw->eager_steps++;
    fw->last_T = T;
    /* body() adds the last MLP output into x only then, or always when the projections
     * added into x as they ran (the fused decode layer, the 16-bit prefill path) */
    fw->x_final = b->n_logits > 0 || fw->last_x_acc;
    return copy_out(fw, b->n_logits, need_row, logits, ids);
}

pd_status_t eng_forward_capture_graphs(eng_forward_t *fw, float *logits, int32_t *ids, int *n_captured_p)
{
    const int before = fw->n_captured;
    pd_status_t st = PD_OK;

    if (n_captured_p)
        *n_captured_p = 0;
    if (fw->n_sizes == 0 || fw->opts.calculate_kv_scales)
        return PD_OK;
    const int cap = fw->graph_max_bs, MB = fw->opts.max_blocks_per_seq;
    int32_t *zero = calloc((size_t)cap, sizeof(int32_t)); /* every token id and position */
    int32_t *seq = malloc((size_t)cap * sizeof(int32_t)), *ctx = malloc((size_t)cap * sizeof(int32_t));
    int32_t *tables = calloc((size_t)cap * (size_t)MB, sizeof(int32_t));
    int64_t *slots = calloc((size_t)cap, sizeof(int64_t));
    if (!zero || !seq || !ctx || !tables || !slots) {
        st = PD_ERR_NOMEM;
        goto out;
    }
    for (int i = 0; i < cap; i++) {
        seq[i] = i;  /* token i is sequence i, logits row i */
        ctx[i] = 1;  /* its one token: slot 0 of block 0 (every row writes the same K, V) */
    }
    for (int idx = 0; idx < fw->n_sizes; idx++) {
        eng_fwd_batch_t b;
        if (fw->graphs[idx] != NULL || fw->failed[idx])
            continue;
        memset(&b, 0, sizeof(b));
        b.n_tokens = fw->sizes[idx];
        b.tokens = zero;
        b.positions = zero;
        b.tok_seq = seq;
        b.slots = slots;
        b.n_seqs = fw->sizes[idx];
        b.block_tables = tables;
        b.context_lens = ctx;
        b.n_logits = fw->sizes[idx];
        b.logit_rows = seq;
        if ((st = eng_forward_run_sample(fw, &b, NULL, NULL, NULL, logits, ids)) != PD_OK)
            goto out;
    }
out:
    free(zero);
    free(seq);
    free(ctx);
    free(tables);
    free(slots);
    if (n_captured_p)
        *n_captured_p = fw->n_captured - before;
    return st;
}

void eng_forward_graph_stats(const eng_forward_t *fw, eng_forward_graph_stats_t *stats_p)
{
    eng_forward_graph_stats_t s = {0};
    s.n_sizes = fw->n_sizes;
    s.n_captured = fw->n_captured;
    s.n_failed = fw->n_failed;
    s.graph_steps = fw->graph_steps;
    s.eager_steps = fw->eager_steps;
    *stats_p = s;
}

void eng_forward_fused_layers(const eng_forward_t *fw, int *n_qkv_p, int *n_gate_up_p)
{
    int nq = 0, ng = 0;
    for (int l = 0; l < fw->cfg->n_layers; l++) {
        nq += fw->layers[l].qkv.w != NULL;
        ng += fw->layers[l].gate_up.w != NULL;
    }
    if (n_qkv_p)
        *n_qkv_p = nq;
    if (n_gate_up_p)
        *n_gate_up_p = ng;
}

size_t eng_forward_graph_reserve_bytes(const eng_model_config_t *cfg, int graph_max_bs)
{
    size_t n_sizes, per_graph, scratch, maxk;
    if (graph_max_bs <= 0)
        return 0;
    if (graph_max_bs > GRAPH_BS_LIMIT)
        graph_max_bs = GRAPH_BS_LIMIT;
    n_sizes = (size_t)graph_sizes(graph_max_bs, NULL);
    /* about 20 nodes a layer, a few KiB of parameters and bookkeeping each */
    per_graph = ((size_t)cfg->n_layers * 20 + 16) * 4096;
    maxk = (size_t)cfg->intermediate;
    if ((size_t)cfg->hidden > maxk)
        maxk = (size_t)cfg->hidden;
    scratch = (size_t)graph_max_bs * maxk * 2 * 2; /* bf16 GEMM input, and one retired copy */
    return n_sizes * per_graph + scratch + ((size_t)32 << 20);
}

pd_status_t eng_forward_copy_blocks(eng_forward_t *fw, const int32_t *src, const int32_t *dst, int n)
{
    int32_t *d;
    pd_status_t st;
    if (n <= 0)
        return PD_OK;
    /* block copies are rare (CoW of a shared partial block); a temporary buffer is fine */
    st = fw->ops->buf_alloc(fw->be, (size_t)n * 2 * sizeof(int32_t), (void **)&d);
    if (st != PD_OK)
        return st;
    st = fw->ops->memcpy_h2d(fw->be, d, src, (size_t)n * sizeof(int32_t));
    if (st == PD_OK)
        st = fw->ops->memcpy_h2d(fw->be, d + n, dst, (size_t)n * sizeof(int32_t));
    if (st == PD_OK)
        st = fw->ops->kv_copy_blocks(fw->be, &fw->kv, fw->kv_base, d, d + n, n);
    if (st == PD_OK)
        st = fw->ops->synchronize(fw->be);
    fw->ops->buf_free(fw->be, d);
    return st;
}

void *eng_forward_kv_base(const eng_forward_t *fw) { return fw->kv_base; }
size_t eng_forward_kv_block_bytes(const eng_forward_t *fw) { return fw->kv.block_bytes; }
int64_t eng_forward_kv_n_blocks(const eng_forward_t *fw) { return fw->kv.n_blocks; }
const kcpu_kv_layout_t *eng_forward_kv_layout(const eng_forward_t *fw) { return &fw->kv; }

pd_status_t eng_forward_logits(eng_forward_t *fw, const int32_t *rows, int n, float *logits)
{
    const eng_backend_ops_t *ops = fw->ops;
    eng_backend_t *be = fw->be;
    const int64_t D = fw->cfg->hidden, V = fw->cfg->vocab_size;

    if (n < 1 || n > fw->opts.max_seqs || fw->last_T < 1) {
        PD_LOG_ERR("forward: %d logits rows asked (at most %d, after a forward)", n, fw->opts.max_seqs);
        return PD_ERR_INVAL;
    }
    for (int i = 0; i < n; i++)
        if (rows[i] < 0 || rows[i] >= fw->last_T)
            return PD_ERR_INVAL;
    /* x += last MLP output (once per forward), then final norm + lm_head on the wanted
     * rows only.  Each row goes through the same per-row ops whatever else is asked
     * with it, so a row's logits do not depend on the grouping. */
    if (!fw->x_final) {
        CK(ops->add(be, fw->x, fw->ffn, fw->x, fw->last_T * D));
        fw->x_final = true;
    }
    for (int i = 0; i < n; i++)
        CK(ops->memcpy_d2d(be, fw->g + (size_t)i * D, fw->x + (size_t)rows[i] * D, (size_t)D * sizeof(float)));
    CK(norm(fw, fw->g, NULL, fw->out_norm, fw->out_norm_b, fw->gn, n));
    CK(matmul(fw, fw->gn, n, &fw->lm_head, NULL, fw->logits));
    return ops->memcpy_d2h(be, logits, fw->logits, (size_t)n * V * sizeof(float));
}
