/*
 * kcuda.h - CUDA kernels of pdserve, callable from plain C (the engine's CUDA backend,
 * engine/eng_backend_cuda.c, is C and keeps every CUDA runtime call behind this header).
 *
 * Conventions (the same meanings, shapes and preconditions as the kcpu_* op of the same
 * name in kernels/cpu/kcpu.h, which is the numeric oracle of every op here):
 *  - Every pointer to data is DEVICE memory; scalars and parameter structs are host memory.
 *  - Launchers take a stream, never allocate and never synchronise; they check the launch
 *    with cudaGetLastError and return PD_ERR_CUDA (logged) on a launch failure,
 *    PD_ERR_INVAL / PD_ERR_UNSUPPORTED (logged) on bad shapes.
 *  - Data-dependent range errors (token ids outside the vocabulary, slots or block ids
 *    outside the cache, bad sequence indices) cannot be seen on the host: kernels skip
 *    or clamp the offending item and OR a KCUDA_ERR_* bit into *err (a device int, may
 *    be NULL), which the backend reads at its next synchronize.
 *  - Activations are float32.  Weights for the GEMMs are bf16/f16/f32 (quantized GGUF
 *    weights are converted once with kcuda_convert_weight).
 */
#ifndef KCUDA_H
#define KCUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kcpu.h"
#include "pd_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The same type as cudaStream_t (struct CUstream_st *), without CUDA headers in C. */
typedef struct CUstream_st *kcuda_stream_t;

/* Bits of the device error word. */
#define KCUDA_ERR_TOKEN 1  /* embedding id outside [0, vocab) */
#define KCUDA_ERR_SLOT 2   /* kv_write slot outside the cache */
#define KCUDA_ERR_BLOCK 4  /* block id outside the cache (copy or attention) */
#define KCUDA_ERR_SEQ 8    /* attention: bad sequence index / position / context length */

/* ---- runtime (kcuda_rt.cu) ---- */

/* Select device `device`; name (may be NULL) receives its name, *sm_count_p its SM count. */
pd_status_t kcuda_device_open(int device, char *name, size_t name_len, int *sm_count_p);
/* Free and total device memory in bytes (cudaMemGetInfo) of the current device. */
pd_status_t kcuda_mem_info(size_t *free_p, size_t *total_p);
pd_status_t kcuda_malloc(size_t bytes, void **ptr_p);
void kcuda_free(void *ptr);
pd_status_t kcuda_host_alloc(size_t bytes, void **ptr_p); /* pinned host memory */
void kcuda_host_free(void *ptr);
pd_status_t kcuda_stream_create(kcuda_stream_t *stream_p);
void kcuda_stream_destroy(kcuda_stream_t stream);
pd_status_t kcuda_stream_sync(kcuda_stream_t stream);
/* Asynchronous copies on `stream` (kind inferred: cudaMemcpyDefault). */
pd_status_t kcuda_memcpy_async(void *dst, const void *src, size_t n, kcuda_stream_t stream);
pd_status_t kcuda_memset_async(void *dst, int value, size_t n, kcuda_stream_t stream);
/* A one-line description of the last CUDA error ("no error" when none). */
const char *kcuda_last_error(void);

/* CUDA graphs (kcuda_rt.cu): capture the work queued on `stream` between begin and end
 * (thread-local capture mode: other threads' CUDA calls are unaffected) and instantiate
 * it.  While capturing, nothing queued runs; synchronising, allocating or copying from
 * pageable host memory on the stream invalidates the capture.  kcuda_capture_end always
 * leaves the stream out of capture mode and the sticky launch error cleared; on failure
 * (logged) *graph_p is untouched.  kcuda_graph_launch replays the graph on `stream`. */
typedef struct CUgraphExec_st *kcuda_graph_t;
pd_status_t kcuda_capture_begin(kcuda_stream_t stream);
pd_status_t kcuda_capture_end(kcuda_stream_t stream, kcuda_graph_t *graph_p);
/* Whether `stream` is capturing now (false when the query fails). */
bool kcuda_capturing(kcuda_stream_t stream);
pd_status_t kcuda_graph_launch(kcuda_graph_t graph, kcuda_stream_t stream);
void kcuda_graph_destroy(kcuda_graph_t graph);

/* Events for timing (bench): a float of milliseconds between two recorded events. */
typedef struct CUevent_st *kcuda_event_t;
pd_status_t kcuda_event_create(kcuda_event_t *ev_p);
void kcuda_event_destroy(kcuda_event_t ev);
pd_status_t kcuda_event_record(kcuda_event_t ev, kcuda_stream_t stream);
pd_status_t kcuda_event_elapsed_ms(kcuda_event_t start, kcuda_event_t end, float *ms_p);

/* ---- GEMM through cuBLAS (kcuda_gemm.cu) ---- */

typedef struct kcuda_blas kcuda_blas_t;
/* A cuBLAS handle bound to `stream` with a workspace of `workspace_bytes` device memory. */
pd_status_t kcuda_blas_create(kcuda_stream_t stream, size_t workspace_bytes, kcuda_blas_t **blas_p);
void kcuda_blas_destroy(kcuda_blas_t *blas);
/*
 * y[M,N] (row stride ldy, f32) = a[M,K] (row stride lda) . W[N,K]^T, f32 accumulation.
 *   wtype F32: a is f32, plain f32 SGEMM (no TF32), the exact path.
 *   wtype BF16 / F16: a is bf16 / f16 (the caller converts activations with
 *   kcuda_f32_to_half), tensor-core GEMM with f32 output.
 * W rows are contiguous (ld K).  bias: handled by the caller (kcuda_add_bias).
 * kcuda_gemm_acc: y += a . W^T instead (cuBLAS beta = 1: a residual add in the epilogue).
 */
pd_status_t kcuda_gemm(kcuda_blas_t *blas, const void *a, int64_t M, int64_t K, int64_t lda,
                       const void *w, kcpu_dtype_t wtype, int64_t N, float *y, int64_t ldy);
pd_status_t kcuda_gemm_acc(kcuda_blas_t *blas, const void *a, int64_t M, int64_t K, int64_t lda,
                           const void *w, kcpu_dtype_t wtype, int64_t N, float *y, int64_t ldy);
/* kcuda_gemm with y written in the operands' type (wtype BF16 or F16; else
 * PD_ERR_UNSUPPORTED): f32 accumulation, each sum rounded to nearest even by cuBLAS's
 * epilogue.  Halves the bytes of an output that the next kernel reads once (the gate|up
 * GEMM feeding kcuda_silu_and_mul_from_half). */
pd_status_t kcuda_gemm_half_out(kcuda_blas_t *blas, const void *a, int64_t M, int64_t K, int64_t lda,
                                const void *w, kcpu_dtype_t wtype, int64_t N, void *y, int64_t ldy);

/* Small-M GEMM for decode (kcuda_gemv.cu): y[M,N] = x[M,K] (f32, row stride ldx) . W^T
 * with bf16/f16 weights read directly, f32 accumulation, no rounding of x.
 * kcuda_gemv_ok says whether the shape qualifies (1 <= M <= 8, K % 8 == 0, ldx % 4 == 0,
 * x and w 16-byte aligned, wtype BF16 or F16, or KCUDA_W_FP8_E4M3 (K % 16 == 0) for kcuda_gemv_scaled
 * and kcuda_gemv_ex with their scale; kcuda_gemv reads it with a scale of 1). */
bool kcuda_gemv_ok(int64_t M, int64_t K, int64_t ldx, const void *x, const void *w, kcpu_dtype_t wtype);
pd_status_t kcuda_gemv(const float *x, int64_t M, int64_t K, int64_t ldx, const void *w, kcpu_dtype_t wtype,
                       int64_t N, float *y, int64_t ldy, kcuda_stream_t stream);
/* kcuda_gemv with a per-tensor weight scale: y = (x . W^T) * *w_scale (w_scale a device
 * float read after the PDL wait; NULL = 1).  wtype may also be KCUDA_W_FP8_E4M3 (one
 * byte an element, fp8 e4m3 as kcuda_fp8w_convert writes it; K % 16 == 0, w 16-byte
 * aligned): the weights are read 16 bytes (16 elements) a lane-load, converted exactly
 * to f32 (through f16x2), the column sum multiplied by the scale at the end. */
pd_status_t kcuda_gemv_scaled(const float *x, int64_t M, int64_t K, int64_t ldx, const void *w, kcpu_dtype_t wtype,
                              const float *w_scale, int64_t N, float *y, int64_t ldy, kcuda_stream_t stream);
/* Launch the GEMV with programmatic dependent launch (1) or plainly (0); -1 goes back to
 * env PD_CUDA_GEMV_PDL (default on; 0 turns it off).  Process-wide; for A/B runs (bench_cuda, tests).
 * The results are the same either way (kcuda_gemv.cu). */
void kcuda_gemv_set_pdl(int on);
/* Whether GEMV launches use PDL now (the setting above, or the env default); the RoPE/KV
 * write kernel (kcuda_rope_kv_write) follows it too. */
bool kcuda_gemv_pdl_on(void);
/* Weight loads that do not allocate in L1 (1) or the plain read-only loads (0); -1 goes
 * back to env PD_CUDA_GEMV_NOALLOC (default on; 0 turns it off).  Process-wide, for A/B runs. */
void kcuda_gemv_set_noalloc(int on);
/* Warps per GEMV column (1, 2 or 4; kcuda_gemv and kcuda_gemv_ex), 0 = automatic (4 for
 * N <= 2048, else 1), -1 = back to env PD_CUDA_GEMV_KSPLIT.  Process-wide, for A/B runs. */
void kcuda_gemv_set_ksplit(int ks);
/* Warps per column for the narrow decode shapes only (2048 < N <= 8192, K >= 1024: the
 * 8B model's q|k|v, o and down), when kcuda_gemv_set_ksplit leaves it automatic: 1
 * (default), 2 or 4; -1 = back to env PD_CUDA_GEMV_KS_NARROW.  For A/B runs. */
void kcuda_gemv_set_ksplit_narrow(int ks);

/* Fused decode GEMVs (kcuda_gemv.cu), the batch-1 step's norm / residual add / GLU folded
 * into the GEMV that reads or writes them (same M, K, alignment and weight types as
 * kcuda_gemv, same launch settings: PDL, L1 no-allocate, PD_CUDA_GEMV_KSPLIT):
 *   h = norm_w ? rmsnorm(x) * norm_w (eps, over the K columns of each row) : x
 *   d[m, n] = h[m] . W[n] (+ bias[n])
 *   KCUDA_GEMV_STORE       y[m, n] = d[m, n]              (n < N)
 *   KCUDA_GEMV_ACCUMULATE  y[m, n] += d[m, n]             (the residual add; y must not
 *                                                          overlap x)
 *   KCUDA_GEMV_GLU         W is gate|up ([2I, K], N = 2I): y[m, i] = act(d[m, i]) * d[m, I + i]
 *                          (i < I; glu_act 0 silu, 1 gelu, 2 gelu tanh, as kcuda_silu_and_mul)
 * The norm is computed inside the GEMV (each warp sums the squares of the x it reads and
 * scales its column sum by the inverse RMS), so h is never written; results equal the
 * separate kernels' up to f32 rounding (the norm weight multiplies the weight, the inverse
 * RMS the sum).  Supported (norm, epilogue) pairs: (norm, STORE), (norm, GLU), (none,
 * ACCUMULATE); the norm only up to KCUDA_GEMV_NORM_MAX_M rows (its sum of squares costs
 * as many FMAs as the dot products: 8 rows would be compute-bound).  kcuda_gemv_ex_ok
 * says whether a call qualifies. */
#define KCUDA_GEMV_NORM_MAX_M 4
typedef enum {
    KCUDA_GEMV_STORE = 0,
    KCUDA_GEMV_ACCUMULATE = 1,
    KCUDA_GEMV_GLU = 2,
} kcuda_gemv_epi_t;
typedef struct {
    const float *x;        /* [M, K] f32, row stride ldx */
    int64_t M, K, ldx;
    const void *w;         /* [N, K] bf16 / f16 */
    kcpu_dtype_t wtype;
    int64_t N;
    const float *norm_w;   /* [K] or NULL (no norm); 16-byte aligned */
    float eps;
    const float *bias;     /* [N] or NULL */
    kcuda_gemv_epi_t epi;
    int glu_act;
    float *y;              /* [M, N] (GLU: [M, N / 2]), row stride ldy */
    int64_t ldy;
    const float *w_scale;  /* device float multiplying every dot product (NULL = 1): the
                              per-tensor scale of a KCUDA_W_FP8_E4M3 weight */
} kcuda_gemv_ex_t;
bool kcuda_gemv_ex_ok(const kcuda_gemv_ex_t *a);
/* PD_ERR_INVAL (logged) when !kcuda_gemv_ex_ok(a); PD_ERR_CUDA on a launch failure. */
pd_status_t kcuda_gemv_ex(const kcuda_gemv_ex_t *a, kcuda_stream_t stream);

/* ---- conversions (kcuda_convert.cu) ---- */

/* Convert/dequantize a weight of `rows` rows of K elements of `src_type` (F32, F16, BF16,
 * Q8_0, Q4_0, Q4_1; rows contiguous) into dst of `dst_type` (F32, F16 or BF16),
 * element for element as kcpu_dequant_row then rounding to nearest even. */
pd_status_t kcuda_convert_weight(const void *src, kcpu_dtype_t src_type, int64_t rows, int64_t K,
                                 void *dst, kcpu_dtype_t dst_type, kcuda_stream_t stream);
/* dst[M,K] contiguous (bf16 or f16 by dst_type) = src[M,K] (row stride lds) rounded. */
pd_status_t kcuda_f32_to_half(const float *src, int64_t M, int64_t K, int64_t lds, void *dst,
                              kcpu_dtype_t dst_type, kcuda_stream_t stream);

/* ---- fp8 weights (--quantization fp8; kcuda_fp8w.cu) ----
 * A weight in KCUDA_W_FP8_E4M3 is [N, K] bytes of fp8 e4m3 (the "fn" variant: no
 * infinities, max 448) with one f32 scale per tensor: W ~= byte value * scale.  The
 * scale is a device float, so that it is computed on the GPU and read by the kernels
 * without a host round trip (graph capturable).  Both conversions below write
 *   work[0] = max |v| over the tensor, work[KCUDA_FP8_SCALE_AT] = scale = work[0] / 448
 *   (1 when 0), dst[i] = e4m3(v[i] / scale) (IEEE division, round to nearest even,
 *   saturating at +-448),
 * with work KCUDA_FP8_WORK_FLOATS device floats, 16-byte aligned (work[0] zeroed by the
 * call itself on the stream).  The scale sits 16 bytes in because cuBLASLt's fp8 GEMM
 * refuses scale pointers that are not 16-byte aligned ("not supported": measured on the
 * H200 with cuBLASLt 13.1, every offset of 4, 8 or 12 bytes refused). */
#define KCUDA_FP8_WORK_FLOATS 8
#define KCUDA_FP8_SCALE_AT 4
#define KCUDA_W_FP8_E4M3 KCUDA_KV_FP8_E4M3
#define KCUDA_FP8_E4M3_MAX 448.0f
/* A weight of `rows` rows of K elements of src_type (as kcuda_convert_weight: F32, F16,
 * BF16, Q8_0, Q4_0, Q4_1, dequantized exactly) into dst [rows, K] e4m3. */
pd_status_t kcuda_fp8w_convert(const void *src, kcpu_dtype_t src_type, int64_t rows, int64_t K, uint8_t *dst,
                               float *work, kcuda_stream_t stream);
/* Dynamic per-tensor activation quantization: x [M, K] of x_type F32, BF16 or F16 (row
 * stride ldx elements) into dst [M, K] contiguous e4m3; work as above. */
pd_status_t kcuda_fp8_quant_act(const void *x, kcpu_dtype_t x_type, int64_t M, int64_t K, int64_t ldx, uint8_t *dst,
                                float *work, kcuda_stream_t stream);
/* A cuBLASLt handle on `stream` with `workspace_bytes` of device workspace (allocated
 * here, once) and a cache of matmul plans (descriptors and the heuristic's algorithm)
 * per shape, so that a call allocates nothing (graph capturable after its first call). */
typedef struct kcuda_lt kcuda_lt_t;
pd_status_t kcuda_lt_create(kcuda_stream_t stream, size_t workspace_bytes, kcuda_lt_t **lt_p);
void kcuda_lt_destroy(kcuda_lt_t *lt);
/* Whether kcuda_fp8_gemm takes the shape: K % 16 == 0 and N % 16 == 0 (16-byte fp8
 * rows, cuBLASLt's fp8 requirement), ldy % 4 == 0, y 16-byte aligned, M, N, K < 2^31. */
bool kcuda_fp8_gemm_ok(int64_t M, int64_t K, int64_t N, const float *y, int64_t ldy);
/* y[M,N] (f32, row stride ldy) = (or, accumulate, +=) (a8 * *a_scale) . (w8 * *w_scale)^T
 * with a8 [M, K] and w8 [N, K] contiguous e4m3 (16-byte aligned), f32 accumulation
 * (cuBLASLt, fast accumulation off), f32 output: the "TN" call C[N,M] = op_T(W) op_N(a)
 * in cuBLAS's column-major terms.  PD_ERR_UNSUPPORTED (logged) when cuBLASLt has no
 * algorithm for the shape; PD_ERR_INVAL when !kcuda_fp8_gemm_ok. */
pd_status_t kcuda_fp8_gemm(kcuda_lt_t *lt, const uint8_t *a8, const float *a_scale, int64_t M, int64_t K,
                           const uint8_t *w8, const float *w_scale, int64_t N, float *y, int64_t ldy,
                           bool accumulate);
/* kcuda_fp8_gemm with y [M, N] of y_type BF16 or F16 (row stride ldy % 8 == 0), each f32
 * sum rounded by cuBLASLt's epilogue: the gate|up GEMM's 16-bit output
 * (kcuda_silu_and_mul_from_half reads it).  No accumulate. */
pd_status_t kcuda_fp8_gemm_half_out(kcuda_lt_t *lt, const uint8_t *a8, const float *a_scale, int64_t M, int64_t K,
                                    const uint8_t *w8, const float *w_scale, int64_t N, void *y, int64_t ldy,
                                    kcpu_dtype_t y_type);

/* ---- 16-bit GEMM inputs written by their producers (kcuda_norm.cu, kcuda_mmin.cu) ----
 * As kcuda_add_rmsnorm (x NULL: plain kcuda_rmsnorm of residual, left as it is) and
 * kcuda_silu_and_mul, with out [T, D] / [T, I] (contiguous) of out_type BF16 or F16,
 * rounded to nearest even from the f32 result. */
pd_status_t kcuda_add_rmsnorm_half(float *residual, const float *x, const float *w, void *out,
                                   kcpu_dtype_t out_type, int64_t T, int64_t D, float eps,
                                   kcuda_stream_t stream);
pd_status_t kcuda_silu_and_mul_half(const float *gate, int64_t gate_stride, const float *up,
                                    int64_t up_stride, void *out, kcpu_dtype_t out_type, int64_t T,
                                    int64_t I, kcuda_stream_t stream);
/* The same reading gate and up in `type` too (BF16 or F16; strides in elements; the
 * output of kcuda_gemm_half_out): out[t, i] = silu(g) * u in f32 from the 16-bit g, u,
 * rounded to nearest even.  8 columns a thread with 16-byte loads and stores when I and
 * the strides are multiples of 8 and the bases 16-byte aligned, else one. */
pd_status_t kcuda_silu_and_mul_from_half(const void *gate, int64_t gate_stride, const void *up,
                                         int64_t up_stride, void *out, kcpu_dtype_t type, int64_t T, int64_t I,
                                         kcuda_stream_t stream);

/* ---- embedding (kcuda_embedding.cu) ---- */
pd_status_t kcuda_embedding(const void *table, kcpu_dtype_t type, int64_t vocab, int64_t D,
                            const int32_t *ids, int64_t T, float *out, int *err,
                            kcuda_stream_t stream);

/* ---- normalisation (kcuda_norm.cu) ---- */
pd_status_t kcuda_rmsnorm(const float *x, const float *w, float *out, int64_t T, int64_t D,
                          float eps, kcuda_stream_t stream);
pd_status_t kcuda_add_rmsnorm(float *residual, const float *x, const float *w, float *out,
                              int64_t T, int64_t D, float eps, kcuda_stream_t stream);
pd_status_t kcuda_layernorm(const float *x, const float *w, const float *b, float *out,
                            int64_t T, int64_t D, float eps, kcuda_stream_t stream);
pd_status_t kcuda_add_layernorm(float *residual, const float *x, const float *w, const float *b,
                                float *out, int64_t T, int64_t D, float eps, kcuda_stream_t stream);

/* ---- RoPE (kcuda_rope.cu) ---- */
pd_status_t kcuda_rope(float *q, int64_t q_stride, float *k, int64_t k_stride, const int32_t *pos,
                       int64_t T, int n_heads, int n_kv_heads, int head_dim, int rotary_dim,
                       const float *inv_freq, float attn_factor, kcpu_rope_style_t style,
                       kcuda_stream_t stream);

/* ---- activations (kcuda_act.cu) and element-wise ops (kcuda_elementwise.cu) ---- */
pd_status_t kcuda_silu_and_mul(const float *gate, int64_t gate_stride, const float *up,
                               int64_t up_stride, float *out, int64_t T, int64_t I,
                               kcuda_stream_t stream);
pd_status_t kcuda_gelu_and_mul(const float *gate, int64_t gate_stride, const float *up,
                               int64_t up_stride, float *out, int64_t T, int64_t I,
                               bool approx_tanh, kcuda_stream_t stream);
pd_status_t kcuda_gelu(const float *x, float *out, int64_t n, bool approx_tanh, kcuda_stream_t stream);
pd_status_t kcuda_silu(const float *x, float *out, int64_t n, kcuda_stream_t stream);
pd_status_t kcuda_relu(const float *x, float *out, int64_t n, kcuda_stream_t stream);
pd_status_t kcuda_add(const float *a, const float *b, float *out, int64_t n, kcuda_stream_t stream);
pd_status_t kcuda_scale(const float *x, float s, float *out, int64_t n, kcuda_stream_t stream);
/* out[t, :] += bias for T rows of N (row stride ld >= N). */
pd_status_t kcuda_add_bias(float *out, int64_t ld, const float *bias, int64_t T, int64_t N,
                           kcuda_stream_t stream);

/* ---- sampling (kcuda_sample.cu) ---- */

/* kcpu_sample_rows on the device: x [T, n] logits, p [T] params, u [T] uniforms and out
 * [T] token ids are device pointers.  One CTA per row.  PD_ERR_INVAL on a bad shape. */
pd_status_t kcuda_sample_rows(const float *x, int64_t T, int64_t n, const kcpu_sample_params_t *p,
                              const float *u, int32_t *out, kcuda_stream_t stream);

/* ---- softmax / argmax (kcuda_softmax.cu) ---- */
pd_status_t kcuda_softmax(const float *x, float *out, int64_t T, int64_t n, kcuda_stream_t stream);
pd_status_t kcuda_log_softmax(const float *x, float *out, int64_t T, int64_t n, kcuda_stream_t stream);
pd_status_t kcuda_argmax(const float *x, int64_t T, int64_t n, int32_t *idx, kcuda_stream_t stream);

/* ---- paged KV cache (kcuda_kv.cu): layouts from kcpu_kv_layout_init (F32 or F16) or
 * kcuda_kv_layout_init (also fp8) ---- */

/* fp8 KV cache element types (not ggml types: values ggml does not use; the CPU kernels
 * refuse them).  An fp8 cache stores K / k_scale and V / v_scale with per-layer scales
 * (saturated to the format's finite range), as vLLM does. */
#define KCUDA_KV_FP8_E4M3 ((kcpu_dtype_t)200)
#define KCUDA_KV_FP8_E5M2 ((kcpu_dtype_t)201)
/* kcpu_kv_layout_init for F32, F16, KCUDA_KV_FP8_E4M3 and KCUDA_KV_FP8_E5M2 (one byte an
 * element, the same element strides). */
pd_status_t kcuda_kv_layout_init(kcpu_kv_layout_t *layout, kcpu_dtype_t dtype, int n_layers, int block_size,
                                 int n_kv_heads, int head_dim, int64_t n_blocks);
/* kcuda_kv_write storing k / k_scale and v / v_scale (scales > 0; 1 for F32/F16 caches
 * leaves the values as they are). */
pd_status_t kcuda_kv_write_scaled(const kcpu_kv_layout_t *layout, void *cache_base, int layer,
                                  const int64_t *slot_mapping, int64_t T, const float *k, int64_t k_stride,
                                  const float *v, int64_t v_stride, float k_scale, float v_scale, int *err,
                                  kcuda_stream_t stream);
/* out[0] = max |x[t, i]| over T rows of W (row stride ld), rows whose slot is negative
 * skipped (slots may be NULL: every row).  out is device memory; the caller zeroes it
 * first (the kernel only raises it). */
pd_status_t kcuda_absmax_rows(const float *x, int64_t T, int64_t W, int64_t ld, const int64_t *slots, float *out,
                              kcuda_stream_t stream);
pd_status_t kcuda_kv_write(const kcpu_kv_layout_t *layout, void *cache_base, int layer,
                           const int64_t *slot_mapping, int64_t T, const float *k,
                           int64_t k_stride, const float *v, int64_t v_stride, int *err,
                           kcuda_stream_t stream);
/* kcuda_rope then kcuda_kv_write_scaled in one kernel (kcuda_kv.cu): q [T, n_heads *
 * head_dim] and k [T, n_kv_heads * head_dim] (head counts and head_dim from the layout)
 * rotated in place at positions pos [T], and the rotated k with v written to the slots
 * of `layer` (stored k / k_scale, v / v_scale; 1 and 1 for F32/F16 caches).  Same values
 * as the two kernels; negative slots skip the write, slots outside the cache set
 * KCUDA_ERR_SLOT in *err.  PD_ERR_INVAL / PD_ERR_RANGE (logged) on bad parameters. */
pd_status_t kcuda_rope_kv_write(float *q, int64_t q_stride, float *k, int64_t k_stride, const float *v,
                                int64_t v_stride, const int32_t *pos, int64_t T, int n_heads, int rotary_dim,
                                const float *inv_freq, float attn_factor, kcpu_rope_style_t style,
                                const kcpu_kv_layout_t *layout, void *cache_base, int layer,
                                const int64_t *slot_mapping, float k_scale, float v_scale, int *err,
                                kcuda_stream_t stream);
pd_status_t kcuda_kv_copy_blocks(const kcpu_kv_layout_t *layout, void *cache_base,
                                 const int32_t *src, const int32_t *dst, int64_t n, int *err,
                                 kcuda_stream_t stream);

/* ---- paged attention (kcuda_attn.cu) ---- */

/* Device scratch the split-K path needs for n_tokens tokens (bytes; 0 when none). */
size_t kcuda_attn_workspace_bytes(const kcpu_attn_params_t *p, int sm_count, bool allow_reduced);
/*
 * kcpu_paged_attention on the GPU: prefill chunks and decode tokens mixed.  One CTA
 * handles a run of up to 16 consecutive tokens of one sequence (prefill) or one token
 * (decode) for one KV head and all its query heads (GQA), streaming K/V tiles of the
 * paged cache through shared memory with an online softmax in f32; decode batches split
 * the keys over several CTAs (flash-decoding) and merge the partial results.
 * allow_reduced: prefill tiles may use the tensor-core kernel (q, K, V and the softmax
 * weights rounded to bf16, f32 accumulation; relative error ~1e-2 instead of ~1e-6);
 * false keeps everything f32 (the exact path).
 * workspace: device memory of kcuda_attn_workspace_bytes(p, sm_count, allow_reduced)
 * (NULL when 0).
 */
pd_status_t kcuda_paged_attention(const kcpu_attn_params_t *p, void *workspace, size_t ws_bytes,
                                  int sm_count, bool allow_reduced, int *err, kcuda_stream_t stream);
/* The same with the per-layer dequantization scales of an fp8 cache (K = stored *
 * k_scale, V = stored * v_scale; 1 and 1 is kcuda_paged_attention). */
pd_status_t kcuda_paged_attention_scaled(const kcpu_attn_params_t *p, float k_scale, float v_scale,
                                         void *workspace, size_t ws_bytes, int sm_count, bool allow_reduced,
                                         int *err, kcuda_stream_t stream);
/* kcuda_paged_attention_scaled writing its output as bf16 / f16 (out_type) into out (row
 * stride p->out_stride elements, even; out 4-byte aligned; p->out is not used), each
 * value the f32 result rounded to nearest even: the o projection's GEMM input without a
 * rounding pass.  Only batches that run the FlashAttention-2 prefill kernel
 * (kcuda_attn_uses_prefill_kernel) do; for the others PD_ERR_UNSUPPORTED, nothing queued
 * or logged (the caller runs the f32 call and rounds).  Other errors as the f32 call. */
pd_status_t kcuda_paged_attention_half(const kcpu_attn_params_t *p, float k_scale, float v_scale, void *out,
                                       kcpu_dtype_t out_type, void *workspace, size_t ws_bytes, int sm_count,
                                       bool allow_reduced, int *err, kcuda_stream_t stream);

/*
 * Pure decode batches (every sequence at most one token: n_tokens <= n_seqs) go to a
 * dedicated decode kernel (kcuda_attn_decode.cu) when the cache is f32, f16 or fp8, the
 * head dim 16, 32, 64, 128 or 256 and the GQA group at most 8; other shapes, prefill and mixed
 * batches use the kernel above.  The decode kernel is chosen here, process-wide, for
 * A/B runs, tests and benchmarks (not thread-safe: call it while no attention is being
 * launched):
 *   KCUDA_ATTN_DECODE_AUTO  the new kernel, unless env PD_CUDA_ATTN_DECODE=old (read once);
 *   KCUDA_ATTN_DECODE_NEW   the new kernel;
 *   KCUDA_ATTN_DECODE_OLD   the kernel above for decode too.
 * force_splits > 0 fixes the decode kernel's key splits (at most 64; 0 = automatic,
 * from the token count, max_blocks_per_seq and the SM count).  kcuda_attn_workspace_bytes
 * follows both settings.
 */
typedef enum {
    KCUDA_ATTN_DECODE_AUTO = 0,
    KCUDA_ATTN_DECODE_NEW = 1,
    KCUDA_ATTN_DECODE_OLD = 2,
} kcuda_attn_decode_t;
void kcuda_attn_set_decode(kcuda_attn_decode_t kernel, int force_splits);
/* Tuning of the decode kernel for A/B runs (same caveats as above), -1 = the default:
 *   l2hint    1: loads with an L2 256-byte prefetch hint that skip L1 (default where a
 *             key's head vector is a multiple of 256 bytes, unless env
 *             PD_CUDA_ATTN_L2HINT=0), 0: plain non-coherent loads;
 *   pipeline  0: each warp loads its keys, then computes; 1: it issues the loads of its
 *             next keys (into registers) before computing the current ones; 2: it copies
 *             up to 3 iterations ahead with cp.async into a shared-memory ring (no
 *             registers held by loads in flight; shapes without room run 0; the
 *             tensor-core kernel: its ring, kcuda_attn_set_decode_ring, or registers for
 *             0 and 1).  Env PD_CUDA_ATTN_PIPE=0/1/2; default what measured best on an
 *             H200: 2 for f32 caches and the tensor-core kernel, else 0;
 *   scatter   1: dot products summed over a key's lanes by reduce-scatter + broadcast
 *             (default, unless env PD_CUDA_ATTN_SCATTER=0), 0: xor-shuffle every value;
 *   head_major 1: CTAs launched KV head fastest (the heads of a token's cache rows read
 *             together; env PD_CUDA_ATTN_HEAD_MAJOR=1), 0: token fastest (default);
 *   tensor_cores 1: f16 and fp8 caches with head dims 64 and 128 on mma.m16n8k16 with
 *             split-f16 q and p (the default), 0: the SIMT kernel (env PD_CUDA_ATTN_TC=0). */
void kcuda_attn_set_decode_tuning(int l2hint, int pipeline, int scatter, int head_major, int tensor_cores);
/* The tensor-core decode kernel's cp.async ring (loading scheme 2, its default) for A/B
 * runs: warps a CTA x stages a warp (0, 0 = the default; env PD_CUDA_ATTN_TC_RING=WxS).
 * Built: head dim 128: f16 2x2 (default), 2x3; fp8 4x2 (default), 4x3, 2x4, 2x6; head dim
 * 64: f16 4x3; anything else runs the default of its cache type. */
void kcuda_attn_set_decode_ring(int warps, int stages);
/* Whether kcuda_paged_attention(p, ...) would run the decode kernel now, and with how
 * many key splits (*n_splits_p, may be NULL; set only when true).  For tests. */
bool kcuda_attn_uses_decode_kernel(const kcpu_attn_params_t *p, int sm_count, int *n_splits_p);

/*
 * Prefill tiles (batches that are not pure decode) with reduced precision allowed go to
 * the tensor-core kernels: the WMMA kernel of kcuda_attn.cu ("old": bf16 operands, S, P
 * and O through shared memory) or the FlashAttention-2 style kernel of
 * kcuda_attn_prefill.cu ("fa2": mma.m16n8k16 with f16 q, K, V and P, f32 accumulation,
 * P kept in registers, cp.async double-buffered K/V tiles of 64 keys; f16, f32 and fp8
 * caches (fp8 values converted exactly to f16, the scales folded into q and the output),
 * head dims 64 and 128, GQA groups up to 16; other shapes keep the old kernels, and fp8
 * caches the f32 SIMT kernel, when fa2 is off).  Chosen here, process-wide, for A/B runs, tests and benchmarks (not
 * thread-safe: call it while no attention is being launched):
 *   KCUDA_ATTN_PREFILL_AUTO  env PD_CUDA_ATTN_PREFILL=fa2 or =old (read once; default fa2);
 *   KCUDA_ATTN_PREFILL_FA2   the FlashAttention-2 kernel;
 *   KCUDA_ATTN_PREFILL_OLD   the WMMA kernel.
 * warps: warps per CTA of the fa2 kernel, 4 (64 query rows) or 8 (128 rows); 0 = env
 * PD_CUDA_ATTN_PREFILL_WARPS (4 or 8), and without it 8 for head_dim 128, 4 for 64.
 * kcuda_attn_workspace_bytes follows both settings.
 */
typedef enum {
    KCUDA_ATTN_PREFILL_AUTO = 0,
    KCUDA_ATTN_PREFILL_FA2 = 1,
    KCUDA_ATTN_PREFILL_OLD = 2,
} kcuda_attn_prefill_t;
void kcuda_attn_set_prefill(kcuda_attn_prefill_t kernel, int warps);
/* Whether kcuda_paged_attention(p, ..., allow_reduced, ...) would run the fa2 prefill
 * kernel now, and with how many key splits (*n_splits_p, may be NULL; set only when
 * true).  For tests and benchmarks. */
bool kcuda_attn_uses_prefill_kernel(const kcpu_attn_params_t *p, int sm_count, bool allow_reduced, int *n_splits_p);

/* ---- micro-benchmark helpers (kcuda_bench.cu) ---- */
/* Device-to-device copy bandwidth, counting bytes read + written (GB/s), over `bytes`. */
pd_status_t kcuda_bench_copy_gbps(size_t bytes, int iters, double *gbps_p);
/* cuBLAS bf16 GEMM rate (TFLOP/s) of [M,K] x [K,N] on random data, f32 accumulation. */
pd_status_t kcuda_bench_gemm_tflops(int64_t M, int64_t N, int64_t K, int iters, double *tflops_p);
/* The fp8 GEMM rate (TFLOP/s): kcuda_fp8_gemm of [M,K] x [K,N] on random e4m3 data with
 * f32 output (the activation quantization not included). */
pd_status_t kcuda_bench_fp8_gemm_tflops(int64_t M, int64_t N, int64_t K, int iters, double *tflops_p);
/* kcuda_gemv_scaled with M rows over an fp8 e4m3 [N,K] weight (random finite bytes,
 * scale 1): weight bytes read per second (GB/s). */
pd_status_t kcuda_bench_fp8_gemv_gbps(int64_t M, int64_t N, int64_t K, int iters, double *gbps_p);
/* kcuda_gemv with M rows over a bf16 [N,K] weight: weight bytes read per second (GB/s). */
pd_status_t kcuda_bench_gemv_gbps(int64_t M, int64_t N, int64_t K, int iters, double *gbps_p);
/* Profiling under Nsight Compute (`ncu --profile-from-start off`): start/stop the
 * profiled range, and a tiny marker kernel named kcuda_bench_marker_kernel whose argument
 * separates the phases of one profiled range in ncu's per-launch listing. */
pd_status_t kcuda_bench_profiler(bool on);
pd_status_t kcuda_bench_marker(int id, kcuda_stream_t stream);
/* Fill n elements (F32 or F16) with uniform values in [-scale, scale) (a hash of the
 * index and seed): benchmarks never time on zeros. */
pd_status_t kcuda_fill_random(void *x, size_t n, kcpu_dtype_t type, uint32_t seed, float scale,
                              kcuda_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* KCUDA_H */
