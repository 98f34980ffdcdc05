/*
 * kcpu_internal.h - declarations shared by the kcpu .c files (not installed, not for
 * other modules): the scalar reference entry points and the AVX2 variants that
 * kcpu_*_avx2.c compile with -mavx2 -mfma -mf16c.  AVX2 functions are only called after
 * kcpu_simd_enabled() said the CPU has them.
 */
#ifndef KCPU_INTERNAL_H
#define KCPU_INTERNAL_H

#include <stdint.h>

#include "kcpu.h"

#if defined(__x86_64__) || defined(__i386__)
#define KCPU_HAVE_X86 1
#else
#define KCPU_HAVE_X86 0
#endif

/* Activation block for the fast quantized matmul: x ~= d * qs, s = d * sum(qs). */
typedef struct {
    float d;
    float s;
    int8_t qs[KCPU_QK];
} kcpu_block_q8x_t; /* 40 bytes */

void kcpu_dequant_row_scalar(kcpu_dtype_t type, const void *src, float *dst, int64_t n);
/* Quantize n (multiple of 32) floats into q8x blocks. */
void kcpu_quant_q8x_scalar(const float *x, kcpu_block_q8x_t *y, int64_t n);
/* Dot of one weight row (type, nb blocks) with one q8x row. */
float kcpu_vec_dot_q8x_scalar(kcpu_dtype_t type, const void *w, const kcpu_block_q8x_t *x, int64_t nb);
/* f32 dot product, 8-lane accumulation order (the order the AVX2 path uses too). */
float kcpu_vec_dot_f32_scalar(const float *a, const float *b, int64_t n);

#if KCPU_HAVE_X86
/* Returns false when the type has no AVX2 path (the caller falls back to scalar). */
bool kcpu_dequant_row_avx2(kcpu_dtype_t type, const void *src, float *dst, int64_t n);
void kcpu_quant_q8x_avx2(const float *x, kcpu_block_q8x_t *y, int64_t n);
/* out[i*ldo + j] = dot(x_i, w_j) for i < mr (<= 4), j < nr (<= 4); rows of K floats. */
void kcpu_gemm_f32_tile_avx2(const float *x, int64_t ldx, int mr, const float *w, int64_t ldw,
                             int nr, int64_t K, float *out, int64_t ldo);
/* Same for q8x activations and quantized weights (row stride in bytes rbw), nb blocks. */
void kcpu_gemm_q8x_tile_avx2(kcpu_dtype_t type, const kcpu_block_q8x_t *x, int64_t ldx_blocks,
                             int mr, const uint8_t *w, size_t rbw, int nr, int64_t nb,
                             float *out, int64_t ldo);
float kcpu_vec_dot_f32_avx2(const float *a, const float *b, int64_t n);
void kcpu_attn_pv_avx2(float *acc, int G, int hd, const float *p, int64_t ldp, const float *v,
                       int64_t ldv, int n);
void kcpu_attn_scores_avx2(const float *q, int R, int hd, const float *k, int64_t ldk, int n,
                           float scale, float *scores, int64_t ldsc);
float kcpu_exp_sub_sum_avx2(float *x, int n, float mx);
/* Attention helpers: dot and axpy over head_dim floats. */
void kcpu_axpy_scale_avx2(float *acc, float alpha, const float *v, float beta, int64_t n);
#endif

#endif /* KCPU_INTERNAL_H */
