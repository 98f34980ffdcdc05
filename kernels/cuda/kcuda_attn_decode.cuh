/*
 * kcuda_attn_decode.cuh - the dedicated paged DECODE attention kernel (kcuda_attn_decode.cu),
 * internal to kernels/cuda: kcuda_paged_attention (kcuda_attn.cu) sends a batch to it when
 * every sequence has at most one token (n_tokens <= n_seqs), the cache dtype, head dim and
 * GQA group are ones it was built for (kcuda_attn_decode_ok) and the decode kernel has not
 * been switched to the old one (kcuda_attn_set_decode / env PD_CUDA_ATTN_DECODE=old).
 * Never included from C.
 */
#ifndef KCUDA_ATTN_DECODE_CUH
#define KCUDA_ATTN_DECODE_CUH

#include "kcuda.h"

/* Whether the decode kernel handles this shape and cache dtype (f32, f16, fp8 e4m3/e5m2;
 * head_dim 16, 32, 64, 128 or 256; n_heads / n_kv_heads <= 8).  Needs p valid. */
bool kcuda_attn_decode_ok(const kcpu_attn_params_t *p);

/* Key splits of the decode kernel for this call: a function of n_tokens, n_kv_heads,
 * max_blocks_per_seq * block_size and sm_count only (never of the device-side context
 * lengths, so a captured graph stays valid), or the count forced with
 * kcuda_attn_set_decode. */
int kcuda_attn_decode_splits(const kcpu_attn_params_t *p, int sm_count);

/* Launch the decode kernel (and, with n_splits > 1, its merge) on `stream`.  ws: device
 * memory of n_tokens * n_heads * n_splits * (head_dim + 2) floats when n_splits > 1. */
pd_status_t kcuda_attn_decode_launch(const kcpu_attn_params_t *p, float k_scale, float v_scale, int n_splits,
                                     float *ws, int *err, kcuda_stream_t stream);

/* The mode set with kcuda_attn_set_decode (KCUDA_ATTN_DECODE_AUTO resolved through the
 * environment, read once) and the forced split count (0 = automatic). */
kcuda_attn_decode_t kcuda_attn_decode_mode(void);
int kcuda_attn_decode_forced_splits(void);

#endif /* KCUDA_ATTN_DECODE_CUH */
