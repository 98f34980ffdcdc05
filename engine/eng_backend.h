/*
 * eng_backend.h - the compute backend interface of the engine: one ops table per
 * backend ("cpu" always, "cuda" when built), chosen once at start-up with
 * eng_backend_get() and then called through eng_backend_ops_t for every buffer, copy and
 * op of the model forward.
 *
 * Memory: every pointer an op takes (activations, weights, bias, KV cache, and the
 * integer metadata arrays: ids, positions, slot mappings, block tables, ...) is a
 * BACKEND pointer, i.e. memory from ops->buf_alloc (plain host memory for "cpu", device
 * memory for "cuda").  Host memory reaches the backend only through memcpy_h2d.
 * Scalars (shapes, eps, scale) are passed by value.  Parameter structs are host memory.
 *
 * Ordering: ops on one backend instance run in call order (CPU: synchronously, CUDA:
 * on the instance's stream); memcpy_d2h returns after the data is on the host.
 * synchronize() waits for everything queued.  One instance is used by one engine thread.
 *
 * Types: dtypes use ggml numbering (kcpu_dtype_t == eng_dtype_t values); the KV layout,
 * RoPE scaling and attention parameter structs are kcpu.h's so that every backend shares
 * one definition (and the CPU kernels stay the oracle of the CUDA ones).
 * Every op returns pd_status_t: shape errors are PD_ERR_INVAL / PD_ERR_RANGE (logged),
 * device failures PD_ERR_CUDA.
 */
#ifndef ENG_BACKEND_H
#define ENG_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kcpu.h"
#include "pd_status.h"

typedef struct eng_backend eng_backend_t; /* one backend instance (opaque) */

/* The activation of a fused gate|up matmul (norm_matmul's glu). */
enum {
    ENG_GLU_NONE = 0,
    ENG_GLU_SILU = 1,
    ENG_GLU_GELU = 2,      /* erf form */
    ENG_GLU_GELU_TANH = 3, /* tanh approximation */
};

typedef struct {
    int n_threads;           /* CPU: worker threads, <= 0 = one per online CPU */
    int device;              /* CUDA: device ordinal */
    kcpu_mm_mode_t mm_mode;  /* quantized matmul: KCPU_MM_FAST (0, serving) or EXACT (tests) */
} eng_backend_opts_t;

typedef struct eng_backend_ops {
    const char *name; /* "cpu", "cuda" */

    /* ---- lifetime ---- */
    /* Create an instance.  opts may be NULL (defaults).  PD_ERR_NOMEM, PD_ERR_CUDA. */
    pd_status_t (*init)(const eng_backend_opts_t *opts, eng_backend_t **be_p);
    /* Wait for outstanding work and free the instance (not buffers still allocated:
     * free them first).  NULL is a no-op. */
    void (*shutdown)(eng_backend_t *be);

    /* ---- memory ---- */
    /* Allocate `bytes` (>0) of backend memory aligned to at least 64 bytes. */
    pd_status_t (*buf_alloc)(eng_backend_t *be, size_t bytes, void **ptr_p);
    void (*buf_free)(eng_backend_t *be, void *ptr); /* NULL is a no-op */
    pd_status_t (*memcpy_h2d)(eng_backend_t *be, void *dst, const void *src, size_t n);
    pd_status_t (*memcpy_d2h)(eng_backend_t *be, void *dst, const void *src, size_t n);
    pd_status_t (*memcpy_d2d)(eng_backend_t *be, void *dst, const void *src, size_t n);
    pd_status_t (*memset)(eng_backend_t *be, void *dst, int value, size_t n);
    pd_status_t (*synchronize)(eng_backend_t *be);
    /* Optional (NULL: none): queue a copy to the host and return at once; the data is
     * there after the next synchronize (which also reports kernel range errors).  dst
     * should come from host_alloc (pinned on CUDA), or the copy is not asynchronous. */
    pd_status_t (*memcpy_d2h_async)(eng_backend_t *be, void *dst, const void *src, size_t n);

    /* ---- ops: meanings, shapes and preconditions as the kcpu_* function of the same
     * name in kcpu.h (the pool argument is replaced by the backend instance) ---- */
    pd_status_t (*matmul)(eng_backend_t *be, const float *x, int64_t M, int64_t K, int64_t ldx,
                          const void *w, kcpu_dtype_t wtype, int64_t N, const float *bias,
                          float *y, int64_t ldy);
    pd_status_t (*rmsnorm)(eng_backend_t *be, const float *x, const float *w, float *out,
                           int64_t T, int64_t D, float eps);
    pd_status_t (*add_rmsnorm)(eng_backend_t *be, float *residual, const float *x,
                               const float *w, float *out, int64_t T, int64_t D, float eps);
    pd_status_t (*layernorm)(eng_backend_t *be, const float *x, const float *w, const float *b,
                             float *out, int64_t T, int64_t D, float eps);
    pd_status_t (*add_layernorm)(eng_backend_t *be, float *residual, const float *x,
                                 const float *w, const float *b, float *out, int64_t T,
                                 int64_t D, float eps);
    /* pos and inv_freq are backend pointers (inv_freq from kcpu_rope_inv_freq on the host,
     * copied once with memcpy_h2d). */
    pd_status_t (*rope)(eng_backend_t *be, float *q, int64_t q_stride, float *k,
                        int64_t k_stride, const int32_t *pos, int64_t T, int n_heads,
                        int n_kv_heads, int head_dim, int rotary_dim, const float *inv_freq,
                        float attn_factor, kcpu_rope_style_t style);
    pd_status_t (*silu_and_mul)(eng_backend_t *be, const float *gate, int64_t gate_stride,
                                const float *up, int64_t up_stride, float *out, int64_t T,
                                int64_t I);
    pd_status_t (*gelu_and_mul)(eng_backend_t *be, const float *gate, int64_t gate_stride,
                                const float *up, int64_t up_stride, float *out, int64_t T,
                                int64_t I, bool approx_tanh);
    pd_status_t (*gelu)(eng_backend_t *be, const float *x, float *out, int64_t n,
                        bool approx_tanh);
    pd_status_t (*silu)(eng_backend_t *be, const float *x, float *out, int64_t n);
    pd_status_t (*relu)(eng_backend_t *be, const float *x, float *out, int64_t n);
    pd_status_t (*add)(eng_backend_t *be, const float *a, const float *b, float *out, int64_t n);
    pd_status_t (*scale)(eng_backend_t *be, const float *x, float s, float *out, int64_t n);
    pd_status_t (*add_bias)(eng_backend_t *be, float *out, const float *bias, int64_t T,
                            int64_t N);
    /* ids is a backend pointer; out-of-range ids: PD_ERR_RANGE (CPU) or clamped and
     * reported at the next synchronize (CUDA). */
    pd_status_t (*embedding)(eng_backend_t *be, const void *table, kcpu_dtype_t type,
                             int64_t vocab, int64_t D, const int32_t *ids, int64_t T,
                             float *out);
    pd_status_t (*softmax)(eng_backend_t *be, const float *x, float *out, int64_t T, int64_t n);
    pd_status_t (*log_softmax)(eng_backend_t *be, const float *x, float *out, int64_t T,
                               int64_t n);
    /* idx: backend pointer to T int32. */
    pd_status_t (*argmax)(eng_backend_t *be, const float *x, int64_t T, int64_t n, int32_t *idx);
    /* One token per row of x [T, n] drawn as kcpu_sample_rows does; p [T], u [T] and out
     * [T] are backend pointers.  Greedy rows (temperature < 1e-5) give the argmax. */
    pd_status_t (*sample_rows)(eng_backend_t *be, const float *x, int64_t T, int64_t n,
                               const kcpu_sample_params_t *p, const float *u, int32_t *out);

    /* ---- optional decode fusions (NULL: not offered; eng_forward then runs the separate
     * ops).  Each returns PD_ERR_UNSUPPORTED, having queued and logged nothing, when it
     * cannot run this call fused (shape, weight type, settings): the caller falls back to
     * the separate ops, which give the same results up to f32 rounding. ---- */
    /* y = glu(rmsnorm(x) * norm_w W^T + bias): the norm of x's M rows of K (eps) feeding
     * the matmul of W [N, K] (the weight as matmul takes it).  glu ENG_GLU_NONE: y [M, N]
     * (row stride ldy); else W is gate|up ([2I, K], N = 2I, no bias) and y [M, I] gets
     * act(gate) * up as silu_and_mul / gelu_and_mul would.  x is left as it is. */
    pd_status_t (*norm_matmul)(eng_backend_t *be, const float *x, int64_t M, int64_t K, const float *norm_w,
                               float eps, const void *w, kcpu_dtype_t wtype, int64_t N, const float *bias,
                               int glu, float *y, int64_t ldy);
    /* y += x W^T (+ bias): matmul with the residual add folded in (y [M, N], row stride
     * ldy, must not overlap x). */
    pd_status_t (*matmul_add)(eng_backend_t *be, const float *x, int64_t M, int64_t K, int64_t ldx,
                              const void *w, kcpu_dtype_t wtype, int64_t N, const float *bias, float *y,
                              int64_t ldy);
    /* rope(q, k) then kv_write(k, v) of `layer` (q, k rotated in place, as those two ops;
     * head counts from n_heads and the layout). */
    pd_status_t (*rope_kv_write)(eng_backend_t *be, float *q, int64_t q_stride, float *k, int64_t k_stride,
                                 const float *v, int64_t v_stride, const int32_t *pos, int64_t T, int n_heads,
                                 int rotary_dim, const float *inv_freq, float attn_factor, kcpu_rope_style_t style,
                                 const kcpu_kv_layout_t *layout, void *cache_base, int layer,
                                 const int64_t *slot_mapping);

    /* ---- KV cache (layout from kcpu_kv_layout_init; cache_base is a backend pointer) ---- */
    pd_status_t (*kv_write)(eng_backend_t *be, const kcpu_kv_layout_t *layout, void *cache_base,
                            int layer, const int64_t *slot_mapping, int64_t T, const float *k,
                            int64_t k_stride, const float *v, int64_t v_stride);
    /* src/dst: backend pointers to n block ids. */
    pd_status_t (*kv_copy_blocks)(eng_backend_t *be, const kcpu_kv_layout_t *layout,
                                  void *cache_base, const int32_t *src, const int32_t *dst,
                                  int64_t n);
    /* p is host memory; the arrays it points to are backend pointers. */
    pd_status_t (*paged_attention)(eng_backend_t *be, const kcpu_attn_params_t *p);

    /* ---- swap space: host memory for the KV blocks of sequences preempted by swap ---- */
    /* Host memory the swap copies use: pinned (page-locked) on CUDA so the copies are
     * DMA, plain aligned memory on CPU.  bytes > 0.  PD_ERR_NOMEM / PD_ERR_CUDA. */
    pd_status_t (*host_alloc)(eng_backend_t *be, size_t bytes, void **ptr_p);
    void (*host_free)(eng_backend_t *be, void *ptr); /* NULL is a no-op */
    /* Copy n whole KV blocks between the cache and host swap memory laid out like it
     * (host block b at host_base + b * layout->block_bytes): to_host copies cache block
     * src[i] to host block dst[i], else host block src[i] to cache block dst[i].
     * src/dst are HOST arrays (copies are addressed on the host).  Ordered after the
     * ops queued before; returns once the copies are complete.  PD_ERR_RANGE (nothing
     * copied) for ids outside [0, layout->n_blocks) or [0, n_host_blocks). */
    pd_status_t (*kv_swap)(eng_backend_t *be, const kcpu_kv_layout_t *layout, void *cache_base,
                           void *host_base, int64_t n_host_blocks, const int32_t *src,
                           const int32_t *dst, int64_t n, bool to_host);

    /* ---- optional (NULL on backends without them): 16-bit matmul inputs ----
     * Backends whose GEMMs read bf16/f16 let the producers of a matmul's input write it
     * in that type, saving an f32 row and a rounding pass.  mm_in_type(be, M): the type
     * matmul_mm takes for an M-row matmul, KCPU_DTYPE_F32 (0) when the f32 ops are the
     * better path for M (decode GEMVs read f32 rows).  add_rmsnorm_mm: add_rmsnorm (x
     * NULL: rmsnorm of residual, unchanged) with out [T, D] in that type; silu_and_mul_mm:
     * silu_and_mul with out [T, I] in it; to_mm: x [T, K] (row stride ldx) rounded to it,
     * out [T, K] contiguous; matmul_mm: matmul of such an x, into y, or added to y when
     * accumulate (y += x W^T + bias: the residual add of a projection). */
    kcpu_dtype_t (*mm_in_type)(eng_backend_t *be, int64_t M);
    pd_status_t (*add_rmsnorm_mm)(eng_backend_t *be, float *residual, const float *x, const float *w,
                                  void *out, int64_t T, int64_t D, float eps);
    pd_status_t (*silu_and_mul_mm)(eng_backend_t *be, const float *gate, int64_t gate_stride,
                                   const float *up, int64_t up_stride, void *out, int64_t T, int64_t I);
    pd_status_t (*to_mm)(eng_backend_t *be, const float *x, int64_t T, int64_t K, int64_t ldx, void *out);
    pd_status_t (*matmul_mm)(eng_backend_t *be, const void *x, int64_t M, int64_t K, int64_t ldx,
                             const void *w, kcpu_dtype_t wtype, int64_t N, const float *bias, float *y,
                             int64_t ldy, bool accumulate);

    /* ---- optional (NULL: not offered): 16-bit outputs of the prefill's producers ----
     * Each writes in mm_in_type's type (for the same row count) and returns
     * PD_ERR_UNSUPPORTED, having queued and logged nothing, when it does not take this
     * call (the kernel of this batch writes f32, or the path is switched off): the caller
     * then runs the f32 op and to_mm / silu_and_mul_mm as before.
     * paged_attention_mm: paged_attention with the output [n_tokens, n_heads * head_dim]
     * in that type at out (row stride p->out_stride elements; p->out is not used), each
     * value the f32 result rounded.
     * matmul_mm_out: matmul_mm without bias or accumulation, y [M, N] (row stride ldy
     * elements) in that type (f32 sums rounded once).
     * silu_and_mul_mm_in: silu_and_mul_mm with gate and up in that type too (strides in
     * elements): the f32 formula on the widened 16-bit values. */
    pd_status_t (*paged_attention_mm)(eng_backend_t *be, const kcpu_attn_params_t *p, void *out);
    pd_status_t (*matmul_mm_out)(eng_backend_t *be, const void *x, int64_t M, int64_t K, int64_t ldx, const void *w,
                                 kcpu_dtype_t wtype, int64_t N, void *y, int64_t ldy);
    pd_status_t (*silu_and_mul_mm_in)(eng_backend_t *be, const void *gate, int64_t gate_stride, const void *up,
                                      int64_t up_stride, void *out, int64_t T, int64_t I);
} eng_backend_ops_t;

/* Shared by the backends' kv_swap: checks every id, then calls copy(arg, dst, src,
 * bytes) once per run of consecutive block pairs (adjacent blocks merged into one
 * copy).  PD_ERR_RANGE before any copy when an id is out of range; else the first
 * error copy returns. */
pd_status_t eng_kv_swap_runs(const kcpu_kv_layout_t *layout, void *cache_base, void *host_base,
                             int64_t n_host_blocks, const int32_t *src, const int32_t *dst, int64_t n,
                             bool to_host, pd_status_t (*copy)(void *arg, void *dst, const void *src, size_t bytes),
                             void *arg);

/* The ops table of the backend called `name` ("cpu"; "cuda" when built with CUDA), or
 * NULL when there is none by that name.  The table is static: never freed. */
const eng_backend_ops_t *eng_backend_get(const char *name);

/* The CPU backend's table (always present). */
const eng_backend_ops_t *eng_backend_cpu_ops(void);
/* The CUDA backend's table: defined by the CUDA backend's source when it is built
 * (PD_HAVE_CUDA); eng_backend_get("cuda") returns it. */
const eng_backend_ops_t *eng_backend_cuda_ops(void);

/* The kcpu thread pool of a CPU backend instance (for engine code that runs its own
 * kcpu_* calls on the host, e.g. sampling); NULL for other backends. */
kcpu_pool_t *eng_backend_cpu_pool(eng_backend_t *be);

#endif /* ENG_BACKEND_H */
