/*
 * eng_backend_cpu.c - the "cpu" backend: eng_backend_ops_t over the kcpu kernels.
 * Backend memory is host memory (64-byte aligned), copies are memcpy, every op runs
 * synchronously on the instance's kcpu thread pool.  Also eng_backend_get().
 */
#include <stdlib.h>
#include <string.h>

#include "eng_backend.h"
#include "kcpu.h"
#include "pd_log.h"

struct eng_backend {
    kcpu_pool_t *pool;
    kcpu_mm_mode_t mm_mode;
};

static pd_status_t cpu_init(const eng_backend_opts_t *opts, eng_backend_t **be_p)
{
    eng_backend_t *be = calloc(1, sizeof(*be));
    pd_status_t st;

    if (be == NULL)
        return PD_ERR_NOMEM;
    be->mm_mode = opts ? opts->mm_mode : KCPU_MM_FAST;
    st = kcpu_pool_create(opts ? opts->n_threads : 0, &be->pool);
    if (st != PD_OK) {
        free(be);
        return st;
    }
    PD_LOG_INFO("cpu backend: %d threads, simd %s, matmul %s", kcpu_pool_n_threads(be->pool),
                kcpu_simd_enabled() ? "avx2" : "off", be->mm_mode == KCPU_MM_FAST ? "fast" : "exact");
    *be_p = be;
    return PD_OK;
}

static void cpu_shutdown(eng_backend_t *be)
{
    if (be == NULL)
        return;
    kcpu_pool_destroy(be->pool);
    free(be);
}

static pd_status_t cpu_buf_alloc(eng_backend_t *be, size_t bytes, void **ptr_p)
{
    void *p;
    if (bytes == 0)
        return PD_ERR_INVAL;
    if (bytes > SIZE_MAX - 63)
        return PD_ERR_OVERFLOW;
    p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (p == NULL) {
        PD_LOG_ERR("cpu backend: cannot allocate %zu bytes", bytes);
        return PD_ERR_NOMEM;
    }
    *ptr_p = p;
    return PD_OK;
}

static void cpu_buf_free(eng_backend_t *be, void *ptr)
{
    free(ptr);
}

static pd_status_t cpu_memcpy(eng_backend_t *be, void *dst, const void *src, size_t n)
{
    if (n > 0)
        memmove(dst, src, n);
    return PD_OK;
}

static pd_status_t cpu_memset(eng_backend_t *be, void *dst, int value, size_t n)
{
    memset(dst, value, n);
    return PD_OK;
}

static pd_status_t cpu_synchronize(eng_backend_t *be)
{
    return PD_OK;
}

static pd_status_t cpu_matmul(eng_backend_t *be, const float *x, int64_t M, int64_t K, int64_t ldx,
                              const void *w, kcpu_dtype_t wtype, int64_t N, const float *bias,
                              float *y, int64_t ldy)
{
    return kcpu_matmul(be->pool, x, M, K, ldx, w, wtype, N, bias, y, ldy, be->mm_mode);
}

static pd_status_t cpu_rmsnorm(eng_backend_t *be, const float *x, const float *w, float *out,
                               int64_t T, int64_t D, float eps)
{
    if (T < 0 || D <= 0)
        return PD_ERR_INVAL;
    kcpu_rmsnorm(be->pool, x, w, out, T, D, eps);
    return PD_OK;
}

static pd_status_t cpu_add_rmsnorm(eng_backend_t *be, float *residual, const float *x,
                                   const float *w, float *out, int64_t T, int64_t D, float eps)
{
    if (T < 0 || D <= 0)
        return PD_ERR_INVAL;
    kcpu_add_rmsnorm(be->pool, residual, x, w, out, T, D, eps);
    return PD_OK;
}

static pd_status_t cpu_layernorm(eng_backend_t *be, const float *x, const float *w, const float *b,
                                 float *out, int64_t T, int64_t D, float eps)
{
    if (T < 0 || D <= 0)
        return PD_ERR_INVAL;
    kcpu_layernorm(be->pool, x, w, b, out, T, D, eps);
    return PD_OK;
}

static pd_status_t cpu_add_layernorm(eng_backend_t *be, float *residual, const float *x,
                                     const float *w, const float *b, float *out, int64_t T,
                                     int64_t D, float eps)
{
    if (T < 0 || D <= 0)
        return PD_ERR_INVAL;
    kcpu_add_layernorm(be->pool, residual, x, w, b, out, T, D, eps);
    return PD_OK;
}

static pd_status_t cpu_rope(eng_backend_t *be, float *q, int64_t q_stride, float *k,
                            int64_t k_stride, const int32_t *pos, int64_t T, int n_heads,
                            int n_kv_heads, int head_dim, int rotary_dim, const float *inv_freq,
                            float attn_factor, kcpu_rope_style_t style)
{
    return kcpu_rope(be->pool, q, q_stride, k, k_stride, pos, T, n_heads, n_kv_heads, head_dim,
                     rotary_dim, inv_freq, attn_factor, style);
}

static pd_status_t cpu_silu_and_mul(eng_backend_t *be, const float *gate, int64_t gate_stride,
                                    const float *up, int64_t up_stride, float *out, int64_t T,
                                    int64_t I)
{
    if (T < 0 || I <= 0 || gate_stride < I || up_stride < I)
        return PD_ERR_INVAL;
    kcpu_silu_and_mul(be->pool, gate, gate_stride, up, up_stride, out, T, I);
    return PD_OK;
}

static pd_status_t cpu_gelu_and_mul(eng_backend_t *be, const float *gate, int64_t gate_stride,
                                    const float *up, int64_t up_stride, float *out, int64_t T,
                                    int64_t I, bool approx_tanh)
{
    if (T < 0 || I <= 0 || gate_stride < I || up_stride < I)
        return PD_ERR_INVAL;
    kcpu_gelu_and_mul(be->pool, gate, gate_stride, up, up_stride, out, T, I, approx_tanh);
    return PD_OK;
}

static pd_status_t cpu_gelu(eng_backend_t *be, const float *x, float *out, int64_t n, bool approx)
{
    kcpu_gelu(x, out, n, approx);
    return PD_OK;
}

static pd_status_t cpu_silu(eng_backend_t *be, const float *x, float *out, int64_t n)
{
    kcpu_silu(x, out, n);
    return PD_OK;
}

static pd_status_t cpu_relu(eng_backend_t *be, const float *x, float *out, int64_t n)
{
    kcpu_relu(x, out, n);
    return PD_OK;
}

static pd_status_t cpu_add(eng_backend_t *be, const float *a, const float *b, float *out, int64_t n)
{
    kcpu_add(a, b, out, n);
    return PD_OK;
}

static pd_status_t cpu_scale(eng_backend_t *be, const float *x, float s, float *out, int64_t n)
{
    kcpu_scale(x, s, out, n);
    return PD_OK;
}

static pd_status_t cpu_add_bias(eng_backend_t *be, float *out, const float *bias, int64_t T, int64_t N)
{
    kcpu_add_bias(out, bias, T, N);
    return PD_OK;
}

static pd_status_t cpu_embedding(eng_backend_t *be, const void *table, kcpu_dtype_t type,
                                 int64_t vocab, int64_t D, const int32_t *ids, int64_t T, float *out)
{
    return kcpu_embedding(table, type, vocab, D, ids, T, out);
}

static pd_status_t cpu_softmax(eng_backend_t *be, const float *x, float *out, int64_t T, int64_t n)
{
    if (T < 0 || n <= 0)
        return PD_ERR_INVAL;
    kcpu_softmax(x, out, T, n);
    return PD_OK;
}

static pd_status_t cpu_log_softmax(eng_backend_t *be, const float *x, float *out, int64_t T, int64_t n)
{
    if (T < 0 || n <= 0)
        return PD_ERR_INVAL;
    kcpu_log_softmax(x, out, T, n);
    return PD_OK;
}

static pd_status_t cpu_argmax(eng_backend_t *be, const float *x, int64_t T, int64_t n, int32_t *idx)
{
    if (T < 0 || n <= 0)
        return PD_ERR_INVAL;
    kcpu_argmax(x, T, n, idx);
    return PD_OK;
}

static pd_status_t cpu_sample_rows(eng_backend_t *be, const float *x, int64_t T, int64_t n,
                                   const kcpu_sample_params_t *p, const float *u, int32_t *out)
{
    (void)be;
    if (T < 0 || n <= 0)
        return PD_ERR_INVAL;
    kcpu_sample_rows(x, T, n, p, u, out);
    return PD_OK;
}

static pd_status_t cpu_kv_write(eng_backend_t *be, const kcpu_kv_layout_t *layout, void *cache_base,
                                int layer, const int64_t *slot_mapping, int64_t T, const float *k,
                                int64_t k_stride, const float *v, int64_t v_stride)
{
    return kcpu_kv_write(layout, cache_base, layer, slot_mapping, T, k, k_stride, v, v_stride);
}

static pd_status_t cpu_kv_copy_blocks(eng_backend_t *be, const kcpu_kv_layout_t *layout,
                                      void *cache_base, const int32_t *src, const int32_t *dst,
                                      int64_t n)
{
    return kcpu_kv_copy_blocks(layout, cache_base, src, dst, n);
}

static pd_status_t cpu_paged_attention(eng_backend_t *be, const kcpu_attn_params_t *p)
{
    return kcpu_paged_attention(be->pool, p);
}

pd_status_t eng_kv_swap_runs(const kcpu_kv_layout_t *layout, void *cache_base, void *host_base,
                             int64_t n_host_blocks, const int32_t *src, const int32_t *dst, int64_t n,
                             bool to_host, pd_status_t (*copy)(void *arg, void *dst, const void *src, size_t bytes),
                             void *arg)
{
    const int64_t n_src = to_host ? layout->n_blocks : n_host_blocks;
    const int64_t n_dst = to_host ? n_host_blocks : layout->n_blocks;
    char *src_base = to_host ? cache_base : host_base, *dst_base = to_host ? host_base : cache_base;
    const size_t bb = layout->block_bytes;
    pd_status_t st;

    if (n < 0 || (n > 0 && (src == NULL || dst == NULL || cache_base == NULL || host_base == NULL)))
        return PD_ERR_INVAL;
    for (int64_t i = 0; i < n; i++) {
        if (src[i] < 0 || src[i] >= n_src || dst[i] < 0 || dst[i] >= n_dst) {
            PD_LOG_ERR("kv_swap: block pair %d -> %d outside %lld / %lld blocks", src[i], dst[i],
                       (long long)n_src, (long long)n_dst);
            return PD_ERR_RANGE;
        }
    }
    for (int64_t i = 0; i < n;) {
        int64_t j = i + 1;
        while (j < n && src[j] == src[j - 1] + 1 && dst[j] == dst[j - 1] + 1)
            j++;
        /* ids are < n_blocks, whose byte size was checked when the cache was laid out */
        st = copy(arg, dst_base + (size_t)dst[i] * bb, src_base + (size_t)src[i] * bb, (size_t)(j - i) * bb);
        if (st != PD_OK)
            return st;
        i = j;
    }
    return PD_OK;
}

static pd_status_t cpu_host_alloc(eng_backend_t *be, size_t bytes, void **ptr_p)
{
    return cpu_buf_alloc(be, bytes, ptr_p);
}

static pd_status_t cpu_copy(void *arg, void *dst, const void *src, size_t bytes)
{
    (void)arg;
    memcpy(dst, src, bytes);
    return PD_OK;
}

static pd_status_t cpu_kv_swap(eng_backend_t *be, const kcpu_kv_layout_t *layout, void *cache_base, void *host_base,
                               int64_t n_host_blocks, const int32_t *src, const int32_t *dst, int64_t n, bool to_host)
{
    (void)be;
    return eng_kv_swap_runs(layout, cache_base, host_base, n_host_blocks, src, dst, n, to_host, cpu_copy, NULL);
}

static const eng_backend_ops_t cpu_ops = {
    .name = "cpu",
    .init = cpu_init,
    .shutdown = cpu_shutdown,
    .buf_alloc = cpu_buf_alloc,
    .buf_free = cpu_buf_free,
    .memcpy_h2d = cpu_memcpy,
    .memcpy_d2h = cpu_memcpy,
    .memcpy_d2d = cpu_memcpy,
    .memset = cpu_memset,
    .synchronize = cpu_synchronize,
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .add_rmsnorm = cpu_add_rmsnorm,
    .layernorm = cpu_layernorm,
    .add_layernorm = cpu_add_layernorm,
    .rope = cpu_rope,
    .silu_and_mul = cpu_silu_and_mul,
    .gelu_and_mul = cpu_gelu_and_mul,
    .gelu = cpu_gelu,
    .silu = cpu_silu,
    .relu = cpu_relu,
    .add = cpu_add,
    .scale = cpu_scale,
    .add_bias = cpu_add_bias,
    .embedding = cpu_embedding,
    .softmax = cpu_softmax,
    .log_softmax = cpu_log_softmax,
    .argmax = cpu_argmax,
    .kv_write = cpu_kv_write,
    .kv_copy_blocks = cpu_kv_copy_blocks,
    .paged_attention = cpu_paged_attention,
    .host_alloc = cpu_host_alloc,
    .sample_rows = cpu_sample_rows,
    .host_free = cpu_buf_free,
    .kv_swap = cpu_kv_swap,
};

const eng_backend_ops_t *eng_backend_cpu_ops(void)
{
    return &cpu_ops;
}

kcpu_pool_t *eng_backend_cpu_pool(eng_backend_t *be)
{
    return be ? be->pool : NULL;
}

const eng_backend_ops_t *eng_backend_get(const char *name)
{
    if (name == NULL || strcmp(name, "cpu") == 0)
        return &cpu_ops;
#ifdef PD_HAVE_CUDA
    if (strcmp(name, "cuda") == 0)
        return eng_backend_cuda_ops();
#endif
    return NULL;
}
