/*
 * kcuda_attn_prefill.cuh - the FlashAttention-2 style PREFILL attention kernel
 * (kcuda_attn_prefill.cu), internal to kernels/cuda: kcuda_paged_attention (kcuda_attn.cu)
 * sends a batch to it instead of the WMMA tensor-core kernel when that one would run
 * (reduced precision allowed, not a pure decode batch, no fp8 cache), the shape is one it
 * was built for (kcuda_attn_prefill_ok) and the prefill kernel has been selected
 * (kcuda_attn_set_prefill / env PD_CUDA_ATTN_PREFILL).  Never included from C.
 */
#ifndef KCUDA_ATTN_PREFILL_CUH
#define KCUDA_ATTN_PREFILL_CUH

#include "kcuda.h"

/* Whether the prefill kernel handles this shape and cache dtype (f32, f16 or fp8 e4m3 /
 * e5m2 cache, head_dim 64 or 128, n_heads / n_kv_heads at most 16).  Needs p valid. */
bool kcuda_attn_prefill_ok(const kcpu_attn_params_t *p);

/* Tokens per CTA for this call: (16 x warps) query rows / group, at least 1. */
int kcuda_attn_prefill_qt(const kcpu_attn_params_t *p);

/* Key splits for this call (1 when the token tiles alone fill the GPU): a function of
 * n_tokens, the head counts, max_blocks_per_seq * block_size and sm_count only (never of
 * device-side lengths, so a captured graph stays valid). */
int kcuda_attn_prefill_splits(const kcpu_attn_params_t *p, int sm_count);

/* Launch the prefill kernel (and, with n_splits > 1, its merge) on `stream`.  k_scale,
 * v_scale: an fp8 cache's dequantization scales (1 for the others).  ws: device memory
 * of n_tokens * n_heads * n_splits * (head_dim + 2) floats when n_splits > 1.
 * out: the output rows (p->out is not used; row stride p->out_stride elements) of
 * out_type F32, or BF16 / F16 (rounded to nearest even from the f32 result; out 4-byte
 * aligned and out_stride even, else PD_ERR_INVAL). */
pd_status_t kcuda_attn_prefill_launch(const kcpu_attn_params_t *p, float k_scale, float v_scale, void *out,
                                      kcpu_dtype_t out_type, int n_splits, float *ws, int *err,
                                      kcuda_stream_t stream);

/* The mode set with kcuda_attn_set_prefill (KCUDA_ATTN_PREFILL_AUTO resolved through the
 * environment, read once). */
kcuda_attn_prefill_t kcuda_attn_prefill_mode(void);

#endif /* KCUDA_ATTN_PREFILL_CUH */
