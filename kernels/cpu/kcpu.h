/*
 * kcpu.h - CPU kernels of pdserve: the numeric oracle every other backend is tested
 * against, and the CI/CPU serving path (AVX2/FMA fast paths chosen at run time).
 *
 * Conventions for every op below:
 *  - Activations are float32, row-major, rows contiguous unless a *_stride (counted in
 *    elements, not bytes) says otherwise.  Weights may be any kcpu_dtype_t where noted.
 *  - Ops named "pd_status_t kcpu_*" validate their shapes and return PD_ERR_INVAL /
 *    PD_ERR_RANGE / PD_ERR_UNSUPPORTED (logged) without touching the outputs.  The void
 *    hot-path ops document their preconditions and do not check them.
 *  - A kcpu_pool_t *pool argument may be NULL: the op then runs on the calling thread.
 *  - Results never depend on the number of threads: work is split by output rows (or by
 *    (token, head) for attention) and every output element is reduced in one fixed order.
 *  - Inputs and outputs must not overlap unless the function says in-place is allowed.
 *
 * This header depends only on common/pd_status.h so that the CUDA backend and the tests
 * can include it for its types (dtype numbering, KV layout, attention parameters).
 */
#ifndef KCPU_H
#define KCPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pd_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- data types ---- */

/* Weight/storage types.  The numeric values are ggml's (and eng_dtype_t's), so a
 * GGUF tensor type casts to kcpu_dtype_t directly. */
typedef enum {
    KCPU_DTYPE_F32 = 0,
    KCPU_DTYPE_F16 = 1,
    KCPU_DTYPE_Q4_0 = 2,  /* blocks of 32: {f16 d; u8 qs[16]}, x = (q - 8) * d        */
    KCPU_DTYPE_Q4_1 = 3,  /* blocks of 32: {f16 d; f16 m; u8 qs[16]}, x = q * d + m    */
    KCPU_DTYPE_Q8_0 = 8,  /* blocks of 32: {f16 d; i8 qs[32]}, x = q * d               */
    KCPU_DTYPE_Q4_K = 12, /* super-blocks of 256 (ggml layout, 144 bytes)              */
    KCPU_DTYPE_Q6_K = 14, /* super-blocks of 256 (ggml layout, 210 bytes)              */
    KCPU_DTYPE_BF16 = 30,
} kcpu_dtype_t;

/* Q4_0/Q4_1 nibble order inside a block: qs[j] & 15 is element j, qs[j] >> 4 is
 * element j + 16 (ggml's order). */
#define KCPU_QK 32

typedef struct {
    uint16_t d; /* f16 scale */
    int8_t qs[KCPU_QK];
} kcpu_block_q8_0_t; /* 34 bytes */

typedef struct {
    uint16_t d; /* f16 scale */
    uint8_t qs[KCPU_QK / 2];
} kcpu_block_q4_0_t; /* 18 bytes */

typedef struct {
    uint16_t d; /* f16 scale */
    uint16_t m; /* f16 minimum */
    uint8_t qs[KCPU_QK / 2];
} kcpu_block_q4_1_t; /* 20 bytes */

/* Human-readable name ("q4_1"); "unknown" for values outside the enum. */
const char *kcpu_dtype_name(kcpu_dtype_t type);
/* True for the types the kernels below accept as weights (F32, F16, BF16, Q8_0, Q4_0,
 * Q4_1, Q4_K, Q6_K).  K-quants are dequantized per tile (no integer-dot fast path). */
bool kcpu_dtype_supported(kcpu_dtype_t type);
/* Elements per block (1 for F32/F16/BF16, 32 for Q8_0/Q4_0/Q4_1, 256 for K-quants);
 * 0 for unknown types. */
int64_t kcpu_dtype_block_size(kcpu_dtype_t type);
/* Bytes per block; 0 for unknown types. */
size_t kcpu_dtype_block_bytes(kcpu_dtype_t type);
/* Bytes of a row of n elements.  PD_ERR_INVAL if n is negative or not a multiple of
 * the block size, PD_ERR_UNSUPPORTED for unknown types, PD_ERR_OVERFLOW on overflow. */
pd_status_t kcpu_dtype_row_bytes(kcpu_dtype_t type, int64_t n, size_t *bytes_p);

/* Scalar conversions.  f32->f16 rounds to nearest even (like ggml/IEEE); f32->bf16
 * rounds to nearest even, NaN stays NaN. */
float kcpu_f16_to_f32(uint16_t h);
uint16_t kcpu_f32_to_f16(float f);
float kcpu_bf16_to_f32(uint16_t h);
uint16_t kcpu_f32_to_bf16(float f);

/* Dequantize/convert n elements (a multiple of the block size) of type `type` at src
 * into dst (bit-exact with ggml's reference dequantization).  Precondition: the type
 * is supported and n is a multiple of its block size. */
void kcpu_dequant_row(kcpu_dtype_t type, const void *src, float *dst, int64_t n);
/* Quantize n floats (a multiple of 32) into Q8_0/Q4_0/Q4_1 blocks with ggml's reference
 * rounding, or convert to F16/BF16/F32.  For tests and dummy weights.
 * PD_ERR_UNSUPPORTED for K-quants, PD_ERR_INVAL for a bad n. */
pd_status_t kcpu_quant_row(kcpu_dtype_t type, const float *src, void *dst, int64_t n);

/* ---- thread pool ---- */

typedef struct kcpu_pool kcpu_pool_t;

/* A task body: process items [begin, end).  tid is the worker index in [0, n_threads). */
typedef void (*kcpu_task_fn_t)(void *arg, int64_t begin, int64_t end, int tid);

/* Create a pool of n_threads workers (n_threads <= 0: one per online CPU; the calling
 * thread counts as worker 0, so n_threads - 1 threads are started).  Idle workers spin
 * briefly after each job, then sleep on a futex.  PD_ERR_NOMEM / PD_ERR_INTERNAL. */
pd_status_t kcpu_pool_create(int n_threads, kcpu_pool_t **pool_p);
/* Stop and join the workers.  NULL is a no-op.  Must not be called from a task. */
void kcpu_pool_destroy(kcpu_pool_t *pool);
/* Number of workers including the caller (1 for a NULL pool). */
int kcpu_pool_n_threads(const kcpu_pool_t *pool);
/* Run fn over [0, n) and return when all of it is done.  [0, n) is cut into contiguous
 * chunks of at least `grain` items (grain <= 0 means 1; about 4 chunks per worker) that
 * the workers, the caller included, claim dynamically, so a worker the OS has not
 * scheduled delays nothing.  fn may run several chunks on one worker; tid (the worker
 * index) is unique among chunks running at the same time (per-thread scratch).  One
 * job at a time per pool: callers from several threads must serialise, and fn must not
 * call kcpu_pool_run on the same pool.  A NULL pool runs fn(arg, 0, n, 0) inline. */
void kcpu_pool_run(kcpu_pool_t *pool, int64_t n, int64_t grain, kcpu_task_fn_t fn, void *arg);

/* ---- matmul ---- */

typedef enum {
    /* Q8_0/Q4_0/Q4_1 weights: quantize each activation row to Q8 blocks once per call
     * and use integer dot products (like llama.cpp); the error vs EXACT is at most
     * sum over blocks of (max|x_block| / 254) * sum|w_block|.  Other weight types: the
     * same as EXACT.  The serving default (value 0, so zero-initialised options get it). */
    KCPU_MM_FAST = 0,
    /* Dequantize/convert each weight row to f32 and dot it with the f32 activation
     * (f32 accumulation).  The golden/test path. */
    KCPU_MM_EXACT = 1,
} kcpu_mm_mode_t;

/*
 * y[M,N] = x[M,K] . W[N,K]^T (+ bias[N]).
 *   x: M rows of K floats, row stride ldx (>= K).
 *   w: N rows of K elements of type wtype, each row kcpu_dtype_row_bytes(wtype, K) bytes,
 *      contiguous (GGUF ne[0] = K, ne[1] = N; Hugging Face's [out, in]).
 *   bias: N floats or NULL.
 *   y: M rows of N floats, row stride ldy (>= N).
 * K must be a multiple of the weight block size (32 for Q8_0/Q4_0/Q4_1).
 * PD_ERR_INVAL (bad shape/stride/NULL), PD_ERR_UNSUPPORTED (wtype), PD_ERR_NOMEM
 * (scratch for FAST mode).  Thread-safe if each concurrent caller uses its own pool.
 */
pd_status_t kcpu_matmul(kcpu_pool_t *pool, const float *x, int64_t M, int64_t K, int64_t ldx,
                        const void *w, kcpu_dtype_t wtype, int64_t N, const float *bias,
                        float *y, int64_t ldy, kcpu_mm_mode_t mode);

/* ---- normalisation (HF semantics, computed in float32) ---- */

/* out[t] = x[t] * rsqrt(mean(x[t]^2) + eps) * w for T rows of D.  In-place (out == x)
 * allowed.  Preconditions: T >= 0, D > 0, pointers valid. */
void kcpu_rmsnorm(kcpu_pool_t *pool, const float *x, const float *w, float *out,
                  int64_t T, int64_t D, float eps);
/* Fused residual add: residual[t] += x[t]; out[t] = rmsnorm(residual[t]).
 * out may alias x (not residual). */
void kcpu_add_rmsnorm(kcpu_pool_t *pool, float *residual, const float *x, const float *w,
                      float *out, int64_t T, int64_t D, float eps);
/* out[t] = (x[t] - mean) * rsqrt(var + eps) * w + b (biased variance, like torch).
 * b may be NULL.  In-place allowed. */
void kcpu_layernorm(kcpu_pool_t *pool, const float *x, const float *w, const float *b,
                    float *out, int64_t T, int64_t D, float eps);
/* residual[t] += x[t]; out[t] = layernorm(residual[t]). */
void kcpu_add_layernorm(kcpu_pool_t *pool, float *residual, const float *x, const float *w,
                        const float *b, float *out, int64_t T, int64_t D, float eps);

/* ---- rotary position embedding ---- */

typedef enum {
    KCPU_ROPE_NEOX = 0, /* rotate half: pairs (i, i + rot/2) - Llama/Qwen/Mistral in HF order */
    KCPU_ROPE_GPTJ = 1, /* interleaved: pairs (2i, 2i + 1) */
} kcpu_rope_style_t;

typedef enum {
    KCPU_ROPE_SCALING_NONE = 0,
    KCPU_ROPE_SCALING_LINEAR = 1,
    KCPU_ROPE_SCALING_DYNAMIC = 2, /* dynamic NTK (HF "dynamic") */
    KCPU_ROPE_SCALING_LLAMA3 = 3,
    KCPU_ROPE_SCALING_YARN = 4,
} kcpu_rope_scaling_type_t;

typedef struct {
    kcpu_rope_scaling_type_t type;
    float factor;                   /* linear/dynamic/llama3/yarn */
    float low_freq_factor;          /* llama3 */
    float high_freq_factor;         /* llama3 */
    int64_t original_max_position;  /* llama3/dynamic/yarn */
    float beta_fast, beta_slow;     /* yarn (HF defaults 32, 1 when 0) */
    float mscale, mscale_all_dim;   /* yarn (optional, 0 = unset) */
    float attention_factor;         /* yarn: explicit factor (HF "attention_factor"), 0 = derive */
} kcpu_rope_scaling_t;

/*
 * Fill inv_freq[rotary_dim / 2] like Hugging Face's rope init functions (float32):
 * inv_freq[i] = 1 / theta^(2i / rotary_dim), then the scaling.  For DYNAMIC, seq_len is
 * the current maximum sequence length (HF recomputes when it exceeds the original max
 * position); otherwise it is ignored.  scaling may be NULL (none).  *attn_factor_p (may be
 * NULL) receives the factor cos/sin are multiplied by (1 except for YaRN).
 * PD_ERR_INVAL for rotary_dim odd/<= 0, theta <= 0, bad factors.
 */
pd_status_t kcpu_rope_inv_freq(float theta, int rotary_dim, const kcpu_rope_scaling_t *scaling,
                               int64_t seq_len, float *inv_freq, float *attn_factor_p);

/*
 * Rotate the first rotary_dim dims of every head of q and k in place, token t at
 * position pos[t]: angle = (float)pos * inv_freq[i]; cos/sin scaled by attn_factor.
 *   q: T rows (stride q_stride) of n_heads * head_dim; k: T rows (stride k_stride) of
 *   n_kv_heads * head_dim.  Either q or k may be NULL.
 * PD_ERR_INVAL for rotary_dim odd or > head_dim, strides too small.
 */
pd_status_t kcpu_rope(kcpu_pool_t *pool, float *q, int64_t q_stride, float *k, int64_t k_stride,
                      const int32_t *pos, int64_t T, int n_heads, int n_kv_heads, int head_dim,
                      int rotary_dim, const float *inv_freq, float attn_factor,
                      kcpu_rope_style_t style);

/* ---- element-wise ---- */

/* out[t, i] = silu(gate[t, i]) * up[t, i], i < I.  gate/up rows have strides gate_stride /
 * up_stride (so a fused [T, 2I] gate_up output works: up = gate + I, both strides 2I);
 * out is [T, I] contiguous. silu(x) = x / (1 + exp(-x)). */
void kcpu_silu_and_mul(kcpu_pool_t *pool, const float *gate, int64_t gate_stride,
                       const float *up, int64_t up_stride, float *out, int64_t T, int64_t I);
/* out[i] = gelu(x[i]): erf form 0.5x(1+erf(x/sqrt2)), or tanh approximation when
 * approx_tanh.  In-place allowed. */
void kcpu_gelu(const float *x, float *out, int64_t n, bool approx_tanh);
/* gelu(gate) * up (GeGLU), same layout as kcpu_silu_and_mul. */
void kcpu_gelu_and_mul(kcpu_pool_t *pool, const float *gate, int64_t gate_stride,
                       const float *up, int64_t up_stride, float *out, int64_t T, int64_t I,
                       bool approx_tanh);
void kcpu_silu(const float *x, float *out, int64_t n);
void kcpu_relu(const float *x, float *out, int64_t n);
/* out = a + b (out may alias a or b). */
void kcpu_add(const float *a, const float *b, float *out, int64_t n);
/* out = x * s (in-place allowed). */
void kcpu_scale(const float *x, float s, float *out, int64_t n);
/* out[t, :] += bias[:] for T rows of N. */
void kcpu_add_bias(float *out, const float *bias, int64_t T, int64_t N);

/* out[t, :] = table[ids[t], :] as f32.  table: vocab rows of D elements of type `type`.
 * PD_ERR_RANGE if an id is outside [0, vocab) (out untouched), PD_ERR_INVAL/UNSUPPORTED. */
pd_status_t kcpu_embedding(const void *table, kcpu_dtype_t type, int64_t vocab, int64_t D,
                           const int32_t *ids, int64_t T, float *out);

/* Row-wise over T rows of n (n > 0): softmax / log-softmax, max-subtracted, in f32;
 * in-place allowed.  -inf entries give 0 (softmax) / -inf (log-softmax); a row that is
 * all -inf gives all 0 / all -inf. */
void kcpu_softmax(const float *x, float *out, int64_t T, int64_t n);
void kcpu_log_softmax(const float *x, float *out, int64_t T, int64_t n);
/* idx[t] = index of the first maximum of row t (NaN is ignored unless all are NaN: 0). */
void kcpu_argmax(const float *x, int64_t T, int64_t n, int32_t *idx);

/* ---- sampling (the reference of kcuda_sample_rows) ---- */

/* What one row is sampled with.  greedy: temperature < 1e-5. */
typedef struct kcpu_sample_params {
    float temperature;
    int32_t top_k;  /* <= 0 or >= n: off */
    float top_p;    /* (0, 1]; >= 1: off */
    float min_p;    /* [0, 1]; <= 0: off */
} kcpu_sample_params_t;

/* exp(z) for z <= 0 from a fixed sequence of correctly rounded f32 operations (a range
 * reduction to 2^f and a polynomial through fmaf), so every backend gets the same bits;
 * 0 below 2^-126 (no denormals: a GPU built with fast math flushes them).  Relative
 * error below 1e-5 (a degree-6 polynomial): a sampling weight, not a softmax. */
float kcpu_sample_exp(float z);

/*
 * One token per row of x [T, n] (rows n apart), drawn with the caller's uniform u[t] in
 * [0, 1) (the host draws it from the request's RNG, so seeds stay reproducible), into
 * out[t].  Row t with params p[t]:
 *   - temperature < 1e-5: the first maximum (kcpu_argmax);
 *   - m = the row maximum (NaN counts as -inf), w_i = kcpu_sample_exp((x_i - m) /
 *     temperature) (0 for -inf; the maximum has weight 1);
 *   - kept: x_i >= the k-th largest value when 0 < top_k < n (every token tied with it
 *     stays, as in vLLM); and w_i >= min_p when min_p > 0;
 *   - top_p < 1: of the kept, those with x_i >= c, c the largest value such that the
 *     weight kept at or above it is >= top_p x the kept total (sums in double);
 *   - draw: the first kept token in index order whose cumulative weight (double)
 *     exceeds u x the total; the last kept one when rounding leaves none.
 * Every selection is a comparison of exact values, so backends differ only in the
 * summation order of the double sums (at a top_p cut or a draw boundary).  A row with no
 * finite value gives the first maximum (as greedy).  Preconditions: n > 0.
 */
void kcpu_sample_rows(const float *x, int64_t T, int64_t n, const kcpu_sample_params_t *p, const float *u,
                      int32_t *out);

/* ---- paged KV cache ---- */

/*
 * Layout of the KV cache: block b starts at base + b * block_bytes and holds
 * [n_layers][2 (K, V)][block_size][n_kv_heads][head_dim] elements of dtype (F32 or F16).
 * All the offsets kernels use come from the strides here (in elements), so the layout
 * can change in this one place.
 */
typedef struct {
    kcpu_dtype_t dtype;      /* F32 or F16 */
    int n_layers;
    int block_size;          /* tokens per block */
    int n_kv_heads;
    int head_dim;
    int64_t n_blocks;        /* blocks in the cache (for range checks) */
    size_t elem_bytes;
    int64_t head_stride;     /* = head_dim */
    int64_t token_stride;    /* = n_kv_heads * head_dim */
    int64_t kv_stride;       /* K -> V: block_size * token_stride */
    int64_t layer_stride;    /* 2 * kv_stride */
    size_t block_bytes;      /* n_layers * layer_stride * elem_bytes */
} kcpu_kv_layout_t;

/* Fill *layout for the default layout.  PD_ERR_INVAL / PD_ERR_UNSUPPORTED / OVERFLOW. */
pd_status_t kcpu_kv_layout_init(kcpu_kv_layout_t *layout, kcpu_dtype_t dtype, int n_layers,
                                int block_size, int n_kv_heads, int head_dim, int64_t n_blocks);

/*
 * Store K and V of T tokens of one layer: token t goes to slot slot_mapping[t]
 * (= block_id * block_size + offset); a negative slot skips the token (padding).
 * k, v: T rows of n_kv_heads * head_dim floats, strides k_stride, v_stride.
 * PD_ERR_RANGE if a slot or the layer is outside the cache (nothing written for that
 * token and later ones).
 */
pd_status_t kcpu_kv_write(const kcpu_kv_layout_t *layout, void *cache_base, int layer,
                          const int64_t *slot_mapping, int64_t T, const float *k,
                          int64_t k_stride, const float *v, int64_t v_stride);

/* Copy whole blocks src[i] -> dst[i] (copy-on-write).  PD_ERR_RANGE on bad ids. */
pd_status_t kcpu_kv_copy_blocks(const kcpu_kv_layout_t *layout, void *cache_base,
                                const int32_t *src, const int32_t *dst, int64_t n);

/*
 * Paged attention for a batch that mixes prefill chunks and decode tokens.
 * Token t belongs to sequence tok_seq[t] and sits at absolute position tok_pos[t]; its
 * K/V must already be in the cache (kcpu_kv_write before).  With causal it attends to
 * cache positions [lo, pos] where lo = max(0, pos - sliding_window + 1) (sliding_window 0
 * = unlimited); without causal to [lo, context_len - 1].  Positions map to the cache
 * through the sequence's block table: block_tables[s * max_blocks_per_seq + pos /
 * block_size].  Online (flash-style) softmax in f32, one pass over the keys.
 * Query head h uses KV head h / (n_heads / n_kv_heads).
 */
typedef struct {
    int64_t n_tokens;
    const float *q;            /* [n_tokens, n_heads * head_dim], row stride q_stride */
    int64_t q_stride;
    float *out;                /* [n_tokens, n_heads * head_dim], row stride out_stride */
    int64_t out_stride;
    const int32_t *tok_seq;    /* [n_tokens] sequence index in [0, n_seqs) */
    const int32_t *tok_pos;    /* [n_tokens] absolute position */
    int64_t n_seqs;
    const int32_t *block_tables; /* [n_seqs, max_blocks_per_seq] block ids */
    int64_t max_blocks_per_seq;
    const int32_t *context_lens; /* [n_seqs] tokens of the sequence now in the cache */
    int n_heads;
    int n_kv_heads;
    int head_dim;
    float scale;               /* usually 1 / sqrt(head_dim) */
    bool causal;
    int sliding_window;        /* 0 = none */
    int layer;
    const void *cache_base;
    const kcpu_kv_layout_t *layout;
} kcpu_attn_params_t;

/* PD_ERR_INVAL (shapes, n_heads % n_kv_heads, head counts vs layout), PD_ERR_RANGE
 * (a sequence index, position beyond context_len or block id outside the cache; out is
 * then partially written). */
pd_status_t kcpu_paged_attention(kcpu_pool_t *pool, const kcpu_attn_params_t *p);

/* ---- run-time CPU features ---- */
/* True when the AVX2+FMA(+F16C) paths are in use (CPU supports them and the environment
 * variable PD_KCPU_NO_SIMD is unset).  kcpu_set_simd(false) forces scalar (tests). */
bool kcpu_simd_enabled(void);
void kcpu_set_simd(bool on);

#ifdef __cplusplus
}
#endif

#endif /* KCPU_H */
