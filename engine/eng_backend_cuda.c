/*
 * eng_backend_cuda.c - the "cuda" backend: eng_backend_ops_t over the kcuda kernels
 * (kernels/cuda/kcuda.h).  Plain C: every CUDA runtime call sits behind kcuda.h.
 *
 * One instance = one device, one non-blocking stream, one cuBLAS handle.  Every op is
 * queued on the stream in call order; memcpy_d2h and synchronize wait for the stream.
 * Activations stay f32.  GEMM weights are converted once, at their first matmul, to the
 * instance's weight dtype (bf16 by default, f16 or f32) and cached by the weight's device
 * pointer; buf_free drops the converted copy with its source.  For bf16/f16 weights each
 * matmul with more than 8 rows rounds its f32 input to that type in a scratch buffer and
 * runs a tensor-core GEMM with f32 accumulation and f32 output; with 1..8 rows (decode)
 * a GEMV kernel reads the weights once and the f32 input as it is.  The forward's
 * prefill path skips the rounding pass for most matmuls: the norm and SiLU-mul before
 * them write bf16/f16 directly (mm_in_type, *_mm ops; PD_CUDA_NO_MM16=1 turns that
 * off); so do the prefill attention (paged_attention_mm, the fa2 kernel's output rounded
 * at its store; PD_CUDA_ATTN_OUT16=0 turns it off) and the gate|up GEMM (matmul_mm_out,
 * a bf16/f16 C from cuBLAS read by silu_and_mul_mm_in; PD_CUDA_GLU16=0 turns it off).
 * f32 weights run an exact SGEMM (no TF32).  Prefill attention uses the tensor-core kernel (bf16 operands)
 * when the weight dtype is bf16/f16, the f32 kernel when it is f32.
 * Data-dependent range errors found by kernels (bad token ids, slots, block ids) are
 * collected in a device error word and returned as PD_ERR_RANGE by the next
 * memcpy_d2h or synchronize.
 * fp8 KV caches (layouts from eng_backend_cuda_kv_layout_init) use per-layer scales kept
 * here as host floats: kv_write stores x / scale, attention multiplies by it.  They are
 * 1.0 unless calculated (--calculate-kv-scales) from the first batch that writes each
 * layer, as vLLM does: k_scale = max|k| / 200, v_scale = max|v| / 100; fixed after that
 * (a graph records them as launch parameters, and it is captured after its eager warm-up).
 * fp8 weights (--quantization fp8, eng_backend_cuda_set_fp8_weights): every GEMM weight
 * except those named by eng_backend_cuda_keep_weight (the lm_head) is converted at its
 * first matmul to fp8 e4m3 with one f32 scale per tensor (max|w| / 448, a device float
 * stored after the bytes in the same allocation: kcuda_fp8w_convert); weights whose K or
 * N is not a multiple of 16 (cuBLASLt's fp8 rows) keep the 16-bit type.  1..8 rows run
 * the GEMV on the fp8 bytes with f32 activations as they are (no activation rounding);
 * more rows quantize the GEMM input (the forward's 16-bit mm input, or f32 rows) to e4m3
 * with a dynamic per-tensor scale (kcuda_fp8_quant_act into the act8 scratch and the
 * d_aq floats: no host round trip) and run cuBLASLt's fp8 GEMM with f32 output
 * (accumulate too), or for the gate|up GEMM (matmul_mm_out) the 16-bit weight dtype
 * (PD_CUDA_FP8_GLU16=0 declines that: f32 gate|up).
 * Decode fusions (optional ops of eng_backend.h): norm_matmul and matmul_add run the
 * fused decode GEMVs (kcuda_gemv_ex) and rope_kv_write one RoPE + KV-write kernel; each
 * declines (PD_ERR_UNSUPPORTED, nothing queued) what its kernel does not take.
 * CUDA graphs: eng_forward records a decode step between capture_begin/capture_end and
 * replays it.  Invariants for that: no op synchronises or allocates while capturing
 * (they refuse with PD_ERR_BUSY instead), and scratch buffers that a live graph may
 * point into are retired (freed at shutdown), never freed, when they grow.
 */
#ifdef PD_HAVE_CUDA

#include "eng_backend_cuda.h"

#include <stdlib.h>
#include <string.h>

#include "eng_backend.h"
#include "kcuda.h"
#include "pd_log.h"

typedef struct wconv {
    const void *src;   /* the weight as the forward passed it (device) */
    void *dst;         /* converted copy (device) */
    kcpu_dtype_t type; /* type of dst */
    size_t bytes;
    const float *scale;/* fp8: the per-tensor scale (device, inside dst's allocation); else NULL */
} wconv_t;

struct eng_backend {
    int device;
    int sm_count;
    char name[128];
    kcuda_stream_t stream;
    kcuda_blas_t *blas;
    int *d_err;        /* device error word (KCUDA_ERR_* bits) */
    int *h_err;        /* pinned host copy */
    kcpu_dtype_t wdtype;
    bool no_gemv;      /* PD_CUDA_NO_GEMV=1: small-M GEMMs through cuBLAS too (A/B runs) */
    bool no_fuse;      /* PD_CUDA_NO_DECODE_FUSE=1: norm_matmul / matmul_add refuse (A/B runs) */
    bool exact_attn;   /* PD_CUDA_EXACT_ATTN=1: f32 attention even with bf16/f16 GEMMs */
    bool no_mm16;      /* PD_CUDA_NO_MM16=1: prefill GEMM inputs as f32 rows rounded apart (A/B) */
    bool no_attn16;    /* PD_CUDA_ATTN_OUT16=0: paged_attention_mm refuses (f32 out + to_mm; A/B) */
    bool no_glu16;     /* PD_CUDA_GLU16=0: matmul_mm_out refuses (f32 gate|up; A/B) */
    bool no_fp8_glu16; /* PD_CUDA_FP8_GLU16=0: ... for fp8 weights only (A/B) */
    /* fp8 weights (--quantization fp8) */
    bool fp8w;
    kcuda_lt_t *lt;    /* cuBLASLt handle, workspace and plans of the fp8 GEMM */
    float *d_aq;       /* device [KCUDA_FP8_WORK_FLOATS]: the GEMM input's max |x| and scale */
    void *act8;        /* scratch for the e4m3 GEMM input */
    size_t act8_bytes;
    const void **keep; /* weights that stay in wdtype (the lm_head) */
    size_t n_keep;
    wconv_t *conv;
    size_t n_conv, cap_conv;
    size_t conv_bytes;
    void *act;         /* scratch for bf16/f16 activations */
    size_t act_bytes;
    void *ws;          /* attention split-K workspace */
    size_t ws_bytes;
    /* CUDA graphs */
    bool capturing;    /* between capture_begin and capture_end */
    bool capture_bad;  /* an op refused inside this capture: capture_end fails */
    int n_graphs;      /* live graphs: scratch is retired instead of freed */
    void **retired;    /* scratch replaced while graphs were live */
    size_t n_retired, retired_bytes;
    /* fp8 KV cache scales, [n_kv_layers] each (NULL: no fp8 cache configured) */
    int n_kv_layers;
    float *k_scale, *v_scale;
    bool *scale_done;  /* calculated for this layer (or not to be calculated) */
    float *d_absmax;   /* device [2]: max |k|, max |v| of a batch */
    float *h_absmax;   /* pinned copy */
};

struct eng_cuda_graph {
    kcuda_graph_t exec;
};

/* Inside a capture an op that would synchronise or allocate must not run: the capture
 * would be invalidated (or the graph would hold a stale pointer).  Logged once per
 * capture; capture_end then fails and the caller runs eagerly. */
static pd_status_t refuse_in_capture(eng_backend_t *be, const char *what)
{
    if (!be->capturing)
        return PD_OK;
    if (!be->capture_bad)
        PD_LOG_WARN("cuda backend: %s inside a CUDA graph capture (not warmed up?); the capture will be dropped",
                    what);
    be->capture_bad = true;
    return PD_ERR_BUSY;
}

static pd_status_t cuda_synchronize(eng_backend_t *be);

static pd_status_t parse_wdtype(const char *s, kcpu_dtype_t *t)
{
    if (strcmp(s, "bf16") == 0 || strcmp(s, "bfloat16") == 0)
        *t = KCPU_DTYPE_BF16;
    else if (strcmp(s, "f16") == 0 || strcmp(s, "float16") == 0 || strcmp(s, "half") == 0)
        *t = KCPU_DTYPE_F16;
    else if (strcmp(s, "f32") == 0 || strcmp(s, "float32") == 0 || strcmp(s, "float") == 0)
        *t = KCPU_DTYPE_F32;
    else
        return PD_ERR_INVAL;
    return PD_OK;
}

static void cuda_shutdown(eng_backend_t *be)
{
    if (be == NULL)
        return;
    if (be->stream)
        kcuda_stream_sync(be->stream);
    for (size_t i = 0; i < be->n_conv; i++)
        kcuda_free(be->conv[i].dst);
    free(be->conv);
    for (size_t i = 0; i < be->n_retired; i++)
        kcuda_free(be->retired[i]);
    free(be->retired);
    free(be->k_scale);
    free(be->v_scale);
    free(be->scale_done);
    kcuda_free(be->d_absmax);
    kcuda_host_free(be->h_absmax);
    kcuda_free(be->act);
    kcuda_free(be->act8);
    kcuda_free(be->d_aq);
    kcuda_lt_destroy(be->lt);
    free(be->keep);
    kcuda_free(be->ws);
    kcuda_free(be->d_err);
    kcuda_host_free(be->h_err);
    kcuda_blas_destroy(be->blas);
    kcuda_stream_destroy(be->stream);
    free(be);
}

static pd_status_t cuda_init(const eng_backend_opts_t *opts, eng_backend_t **be_p)
{
    eng_backend_t *be = calloc(1, sizeof(*be));
    const char *env = getenv("PD_CUDA_WEIGHT_DTYPE");
    pd_status_t st;

    if (be == NULL)
        return PD_ERR_NOMEM;
    be->device = opts ? opts->device : 0;
    be->wdtype = KCPU_DTYPE_BF16;
    be->no_gemv = getenv("PD_CUDA_NO_GEMV") != NULL && strcmp(getenv("PD_CUDA_NO_GEMV"), "0") != 0;
    be->no_fuse = getenv("PD_CUDA_NO_DECODE_FUSE") != NULL && strcmp(getenv("PD_CUDA_NO_DECODE_FUSE"), "0") != 0;
    be->exact_attn = getenv("PD_CUDA_EXACT_ATTN") != NULL && strcmp(getenv("PD_CUDA_EXACT_ATTN"), "0") != 0;
    be->no_mm16 = getenv("PD_CUDA_NO_MM16") != NULL && strcmp(getenv("PD_CUDA_NO_MM16"), "0") != 0;
    be->no_attn16 = getenv("PD_CUDA_ATTN_OUT16") != NULL && strcmp(getenv("PD_CUDA_ATTN_OUT16"), "0") == 0;
    be->no_glu16 = getenv("PD_CUDA_GLU16") != NULL && strcmp(getenv("PD_CUDA_GLU16"), "0") == 0;
    be->no_fp8_glu16 = getenv("PD_CUDA_FP8_GLU16") != NULL && strcmp(getenv("PD_CUDA_FP8_GLU16"), "0") == 0;
    if (env && *env && parse_wdtype(env, &be->wdtype) != PD_OK)
        PD_LOG_WARN("cuda backend: PD_CUDA_WEIGHT_DTYPE=%s not understood (bf16, f16, f32); using bf16", env);
#define TRY(expr)        \
    do {                 \
        st = (expr);     \
        if (st != PD_OK) \
            goto fail;   \
    } while (0)
    TRY(kcuda_device_open(be->device, be->name, sizeof(be->name), &be->sm_count));
    TRY(kcuda_stream_create(&be->stream));
    TRY(kcuda_blas_create(be->stream, 32u << 20, &be->blas));
    TRY(kcuda_malloc(sizeof(int), (void **)&be->d_err));
    TRY(kcuda_host_alloc(sizeof(int), (void **)&be->h_err));
    TRY(kcuda_memset_async(be->d_err, 0, sizeof(int), be->stream));
    TRY(kcuda_stream_sync(be->stream));
#undef TRY
    PD_LOG_INFO("cuda backend: device %d (%s, %d SMs), weights %s, f32 activations", be->device, be->name,
                be->sm_count, kcpu_dtype_name(be->wdtype));
    *be_p = be;
    return PD_OK;
fail:
    PD_LOG_ERR("cuda backend: cannot start on device %d: %s", be->device, pd_status_str(st));
    cuda_shutdown(be);
    return st;
}

static pd_status_t cuda_buf_alloc(eng_backend_t *be, size_t bytes, void **ptr_p)
{
    if (bytes == 0)
        return PD_ERR_INVAL;
    if (refuse_in_capture(be, "buf_alloc") != PD_OK)
        return PD_ERR_BUSY;
    return kcuda_malloc(bytes, ptr_p); /* cudaMalloc aligns to 256 bytes */
}

static void cuda_buf_free(eng_backend_t *be, void *ptr)
{
    if (ptr == NULL)
        return;
    for (size_t i = 0; i < be->n_conv;) {
        if (be->conv[i].src == ptr) {
            kcuda_free(be->conv[i].dst);
            be->conv_bytes -= be->conv[i].bytes;
            be->conv[i] = be->conv[--be->n_conv];
        } else {
            i++;
        }
    }
    for (size_t i = 0; i < be->n_keep;) {
        if (be->keep[i] == ptr)
            be->keep[i] = be->keep[--be->n_keep];
        else
            i++;
    }
    kcuda_free(ptr);
}

static pd_status_t cuda_memcpy_h2d(eng_backend_t *be, void *dst, const void *src, size_t n)
{
    /* pageable host memory cannot be part of a graph: inputs are copied before launch */
    pd_status_t st = refuse_in_capture(be, "memcpy_h2d");
    if (st != PD_OK)
        return st;
    return kcuda_memcpy_async(dst, src, n, be->stream);
}

static pd_status_t cuda_memcpy_d2d(eng_backend_t *be, void *dst, const void *src, size_t n)
{
    return kcuda_memcpy_async(dst, src, n, be->stream);
}

/* Reads the error word with the same stream wait; PD_ERR_RANGE (and reset) if set. */
static pd_status_t check_err(eng_backend_t *be)
{
    if (*be->h_err == 0)
        return PD_OK;
    PD_LOG_ERR("cuda backend: kernels reported out-of-range input (bits 0x%x: token id / slot / block / sequence)",
               *be->h_err);
    *be->h_err = 0;
    if (kcuda_memset_async(be->d_err, 0, sizeof(int), be->stream) != PD_OK)
        return PD_ERR_CUDA;
    return PD_ERR_RANGE;
}

static pd_status_t cuda_memcpy_d2h(eng_backend_t *be, void *dst, const void *src, size_t n)
{
    pd_status_t st = refuse_in_capture(be, "memcpy_d2h");
    if (st != PD_OK)
        return st;
    st = kcuda_memcpy_async(dst, src, n, be->stream);
    if (st == PD_OK)
        st = kcuda_memcpy_async(be->h_err, be->d_err, sizeof(int), be->stream);
    if (st == PD_OK)
        st = kcuda_stream_sync(be->stream);
    return st == PD_OK ? check_err(be) : st;
}

static pd_status_t cuda_memcpy_d2h_async(eng_backend_t *be, void *dst, const void *src, size_t n)
{
    pd_status_t st = refuse_in_capture(be, "memcpy_d2h_async");
    if (st != PD_OK)
        return st;
    return kcuda_memcpy_async(dst, src, n, be->stream);
}

static pd_status_t cuda_memset(eng_backend_t *be, void *dst, int value, size_t n)
{
    return kcuda_memset_async(dst, value, n, be->stream);
}

static pd_status_t cuda_synchronize(eng_backend_t *be)
{
    pd_status_t st = refuse_in_capture(be, "synchronize");
    if (st != PD_OK)
        return st;
    st = kcuda_memcpy_async(be->h_err, be->d_err, sizeof(int), be->stream);
    if (st == PD_OK)
        st = kcuda_stream_sync(be->stream);
    return st == PD_OK ? check_err(be) : st;
}

/* ---- GEMM ---- */

static pd_status_t grow(eng_backend_t *be, void **buf, size_t *have, size_t need)
{
    void *p;
    pd_status_t st;
    if (need <= *have)
        return PD_OK;
    if ((st = refuse_in_capture(be, "growing a scratch buffer")) != PD_OK)
        return st;
    need += need / 4; /* some headroom: shapes grow a little at a time */
    st = kcuda_stream_sync(be->stream); /* the old buffer may still be in use */
    if (st != PD_OK)
        return st;
    st = kcuda_malloc(need, &p);
    if (st != PD_OK)
        return st;
    if (*buf != NULL && be->n_graphs > 0) {
        /* a live graph may point into the old buffer: keep it until shutdown */
        void **r = realloc(be->retired, (be->n_retired + 1) * sizeof(*r));
        if (r == NULL) {
            kcuda_free(p);
            return PD_ERR_NOMEM;
        }
        be->retired = r;
        be->retired[be->n_retired++] = *buf;
        be->retired_bytes += *have;
        *buf = NULL;
    }
    kcuda_free(*buf);
    *buf = p;
    *have = need;
    return PD_OK;
}

/* The type a weight runs in: fp8 e4m3 under --quantization fp8 (unless kept, or its
 * rows do not fit cuBLASLt's fp8 GEMM), else the instance's weight dtype. */
static kcpu_dtype_t weight_target(const eng_backend_t *be, const void *w, int64_t N, int64_t K)
{
    if (!be->fp8w || K % 16 != 0 || N % 16 != 0)
        return be->wdtype;
    for (size_t i = 0; i < be->n_keep; i++)
        if (be->keep[i] == w)
            return be->wdtype;
    return KCUDA_W_FP8_E4M3;
}

/* The weight in the GEMM type: itself, or its converted copy (made on first use); for
 * fp8 *scale_p is its per-tensor scale (device), else NULL. */
static pd_status_t gemm_weight(eng_backend_t *be, const void *w, kcpu_dtype_t wtype, int64_t N, int64_t K,
                               const void **wg_p, kcpu_dtype_t *tg_p, const float **scale_p)
{
    size_t bytes, off = 0;
    void *dst;
    pd_status_t st;
    const kcpu_dtype_t want = weight_target(be, w, N, K);

    *scale_p = NULL;
    if (wtype == want) {
        *wg_p = w;
        *tg_p = wtype;
        return PD_OK;
    }
    for (size_t i = 0; i < be->n_conv; i++)
        if (be->conv[i].src == w && be->conv[i].type == want) {
            *wg_p = be->conv[i].dst;
            *tg_p = be->conv[i].type;
            *scale_p = be->conv[i].scale;
            return PD_OK;
        }
    if (be->n_conv == be->cap_conv) {
        size_t cap = be->cap_conv ? be->cap_conv * 2 : 256;
        wconv_t *n = realloc(be->conv, cap * sizeof(*n));
        if (n == NULL)
            return PD_ERR_NOMEM;
        be->conv = n;
        be->cap_conv = cap;
    }
    if ((st = refuse_in_capture(be, "a weight's first conversion")) != PD_OK)
        return st;
    if (want == KCUDA_W_FP8_E4M3) {
        /* the bytes, then (256-byte aligned) max|w| and the scale: one allocation */
        off = ((size_t)N * (size_t)K + 255) & ~(size_t)255;
        bytes = off + 256;
    } else {
        bytes = (size_t)N * (size_t)K * (want == KCPU_DTYPE_F32 ? 4 : 2);
    }
    st = kcuda_malloc(bytes, &dst);
    if (st != PD_OK)
        return st;
    if (want == KCUDA_W_FP8_E4M3)
        st = kcuda_fp8w_convert(w, wtype, N, K, dst, (float *)((char *)dst + off), be->stream);
    else
        st = kcuda_convert_weight(w, wtype, N, K, dst, want, be->stream);
    if (st != PD_OK) {
        kcuda_free(dst);
        return st;
    }
    const float *scale = want == KCUDA_W_FP8_E4M3 ? (const float *)((char *)dst + off) + KCUDA_FP8_SCALE_AT : NULL;
    be->conv[be->n_conv++] = (wconv_t){w, dst, want, bytes, scale};
    be->conv_bytes += bytes;
    *wg_p = dst;
    *tg_p = want;
    *scale_p = scale;
    return PD_OK;
}

/* y (=, or += when accumulate) x . W^T for an fp8 weight with more than a GEMV's rows:
 * x (x_type F32, or the forward's 16-bit mm input) quantized to e4m3 with its dynamic
 * per-tensor scale, then cuBLASLt's fp8 GEMM with y_type output (F32, or the 16-bit
 * weight dtype for matmul_mm_out). */
static pd_status_t fp8_gemm(eng_backend_t *be, const void *x, kcpu_dtype_t x_type, int64_t M, int64_t K, int64_t ldx,
                            const void *w8, const float *w_scale, int64_t N, void *y, int64_t ldy, bool accumulate,
                            kcpu_dtype_t y_type)
{
    pd_status_t st;
    const float *a_scale = be->d_aq + KCUDA_FP8_SCALE_AT;
    if (!kcuda_fp8_gemm_ok(M, K, N, (const float *)y, ldy)) {
        PD_LOG_ERR("cuda matmul: fp8 GEMM shape not supported (M=%lld K=%lld N=%lld ldy=%lld)", (long long)M,
                   (long long)K, (long long)N, (long long)ldy);
        return PD_ERR_UNSUPPORTED;
    }
    st = grow(be, &be->act8, &be->act8_bytes, (size_t)M * (size_t)K);
    if (st == PD_OK)
        st = kcuda_fp8_quant_act(x, x_type, M, K, ldx, be->act8, be->d_aq, be->stream);
    if (st == PD_OK)
        st = y_type == KCPU_DTYPE_F32
                 ? kcuda_fp8_gemm(be->lt, be->act8, a_scale, M, K, w8, w_scale, N, y, ldy, accumulate)
                 : kcuda_fp8_gemm_half_out(be->lt, be->act8, a_scale, M, K, w8, w_scale, N, y, ldy, y_type);
    return st;
}

/* Shape checks and the weight in the GEMM type, shared by matmul and matmul_mm. */
static pd_status_t matmul_weight(eng_backend_t *be, const void *x, int64_t M, int64_t K, int64_t ldx, const void *w,
                                 kcpu_dtype_t wtype, int64_t N, const float *y, int64_t ldy, const void **wg_p,
                                 kcpu_dtype_t *tg_p, const float **scale_p)
{
    if (M < 0 || K <= 0 || N <= 0 || ldx < K || ldy < N || x == NULL || w == NULL || y == NULL) {
        PD_LOG_ERR("cuda matmul: bad shape M=%lld K=%lld N=%lld", (long long)M, (long long)K, (long long)N);
        return PD_ERR_INVAL;
    }
    if (!kcpu_dtype_supported(wtype)) {
        PD_LOG_ERR("cuda matmul: weight type %s not supported", kcpu_dtype_name(wtype));
        return PD_ERR_UNSUPPORTED;
    }
    if (K % kcpu_dtype_block_size(wtype) != 0)
        return PD_ERR_INVAL;
    return M == 0 ? PD_OK : gemm_weight(be, w, wtype, N, K, wg_p, tg_p, scale_p);
}

static pd_status_t cuda_matmul(eng_backend_t *be, const float *x, int64_t M, int64_t K, int64_t ldx,
                               const void *w, kcpu_dtype_t wtype, int64_t N, const float *bias, float *y,
                               int64_t ldy)
{
    const void *wg = NULL;
    const float *wsc = NULL;
    kcpu_dtype_t tg = KCPU_DTYPE_F32;
    pd_status_t st = matmul_weight(be, x, M, K, ldx, w, wtype, N, y, ldy, &wg, &tg, &wsc);

    if (st != PD_OK || M == 0)
        return st;
    if (tg == KCUDA_W_FP8_E4M3) {
        if (!be->no_gemv && kcuda_gemv_ok(M, K, ldx, x, wg, tg))
            st = kcuda_gemv_scaled(x, M, K, ldx, wg, tg, wsc, N, y, ldy, be->stream);
        else
            st = fp8_gemm(be, x, KCPU_DTYPE_F32, M, K, ldx, wg, wsc, N, y, ldy, false, KCPU_DTYPE_F32);
    } else if (tg == KCPU_DTYPE_F32) {
        st = kcuda_gemm(be->blas, x, M, K, ldx, wg, tg, N, y, ldy);
    } else if (!be->no_gemv && kcuda_gemv_ok(M, K, ldx, x, wg, tg)) {
        /* decode: stream the weights once, f32 activations as they are */
        st = kcuda_gemv(x, M, K, ldx, wg, tg, N, y, ldy, be->stream);
    } else {
        st = grow(be, &be->act, &be->act_bytes, (size_t)M * (size_t)K * 2);
        if (st == PD_OK)
            st = kcuda_f32_to_half(x, M, K, ldx, be->act, tg, be->stream);
        if (st == PD_OK)
            st = kcuda_gemm(be->blas, be->act, M, K, K, wg, tg, N, y, ldy);
    }
    if (st == PD_OK && bias)
        st = kcuda_add_bias(y, ldy, bias, M, N, be->stream);
    return st;
}

/* ---- 16-bit matmul inputs (prefill): the producers write the GEMM's input type ---- */

static kcpu_dtype_t cuda_mm_in_type(eng_backend_t *be, int64_t M)
{
    if (be->wdtype == KCPU_DTYPE_F32 || be->no_mm16 || (M <= 8 && !be->no_gemv))
        return KCPU_DTYPE_F32; /* the exact path, or the decode GEMV reading f32 rows */
    return be->wdtype;
}

static pd_status_t cuda_add_rmsnorm_mm(eng_backend_t *be, float *residual, const float *x, const float *w,
                                       void *out, int64_t T, int64_t D, float eps)
{
    return kcuda_add_rmsnorm_half(residual, x, w, out, be->wdtype, T, D, eps, be->stream);
}

static pd_status_t cuda_silu_and_mul_mm(eng_backend_t *be, const float *gate, int64_t gate_stride, const float *up,
                                        int64_t up_stride, void *out, int64_t T, int64_t I)
{
    return kcuda_silu_and_mul_half(gate, gate_stride, up, up_stride, out, be->wdtype, T, I, be->stream);
}

static pd_status_t cuda_to_mm(eng_backend_t *be, const float *x, int64_t T, int64_t K, int64_t ldx, void *out)
{
    return kcuda_f32_to_half(x, T, K, ldx, out, be->wdtype, be->stream);
}

static pd_status_t cuda_matmul_mm(eng_backend_t *be, const void *x, int64_t M, int64_t K, int64_t ldx,
                                  const void *w, kcpu_dtype_t wtype, int64_t N, const float *bias, float *y,
                                  int64_t ldy, bool accumulate)
{
    const void *wg = NULL;
    const float *wsc = NULL;
    kcpu_dtype_t tg = KCPU_DTYPE_F32;
    pd_status_t st = matmul_weight(be, x, M, K, ldx, w, wtype, N, y, ldy, &wg, &tg, &wsc);

    if (st != PD_OK || M == 0)
        return st;
    if (tg == KCUDA_W_FP8_E4M3 && be->wdtype != KCPU_DTYPE_F32) {
        /* x is the forward's 16-bit mm input (mm_in_type): quantized from that */
        st = fp8_gemm(be, x, be->wdtype, M, K, ldx, wg, wsc, N, y, ldy, accumulate, KCPU_DTYPE_F32);
        if (st == PD_OK && bias)
            st = kcuda_add_bias(y, ldy, bias, M, N, be->stream);
        return st;
    }
    if (tg != be->wdtype || tg == KCPU_DTYPE_F32) {
        PD_LOG_ERR("cuda matmul_mm: a %s input for %s weights", kcpu_dtype_name(be->wdtype), kcpu_dtype_name(tg));
        return PD_ERR_INVAL;
    }
    st = accumulate ? kcuda_gemm_acc(be->blas, x, M, K, ldx, wg, tg, N, y, ldy)
                    : kcuda_gemm(be->blas, x, M, K, ldx, wg, tg, N, y, ldy);
    if (st == PD_OK && bias)
        st = kcuda_add_bias(y, ldy, bias, M, N, be->stream);
    return st;
}

/* The gate|up GEMM with a 16-bit output for silu_and_mul_mm_in (no bias, no accumulate). */
static pd_status_t cuda_matmul_mm_out(eng_backend_t *be, const void *x, int64_t M, int64_t K, int64_t ldx,
                                      const void *w, kcpu_dtype_t wtype, int64_t N, void *y, int64_t ldy)
{
    const void *wg = NULL;
    kcpu_dtype_t tg = KCPU_DTYPE_F32;
    const float *wsc = NULL;
    const bool f8 = weight_target(be, w, N, K) == KCUDA_W_FP8_E4M3;

    if (be->no_glu16 || be->wdtype == KCPU_DTYPE_F32)
        return PD_ERR_UNSUPPORTED;
    /* fp8 weights: cuBLASLt's fp8 GEMM with a 16-bit D (unless PD_CUDA_FP8_GLU16=0, or the
     * rows of y are not 16-byte multiples): declined before anything is queued */
    if (f8 && (be->no_fp8_glu16 || ldy % 8 != 0 || M <= 8 || !kcuda_fp8_gemm_ok(M, K, N, (const float *)y, ldy)))
        return PD_ERR_UNSUPPORTED;
    /* matmul_weight's shape check reads y only for NULL */
    pd_status_t st = matmul_weight(be, x, M, K, ldx, w, wtype, N, (const float *)y, ldy, &wg, &tg, &wsc);
    if (st != PD_OK || M == 0)
        return st;
    if (tg == KCUDA_W_FP8_E4M3)
        return fp8_gemm(be, x, be->wdtype, M, K, ldx, wg, wsc, N, y, ldy, false, be->wdtype);
    if (tg != be->wdtype) {
        PD_LOG_ERR("cuda matmul_mm_out: a %s input for %s weights", kcpu_dtype_name(be->wdtype), kcpu_dtype_name(tg));
        return PD_ERR_INVAL;
    }
    return kcuda_gemm_half_out(be->blas, x, M, K, ldx, wg, tg, N, y, ldy);
}

static pd_status_t cuda_silu_and_mul_mm_in(eng_backend_t *be, const void *gate, int64_t gate_stride, const void *up,
                                           int64_t up_stride, void *out, int64_t T, int64_t I)
{
    return kcuda_silu_and_mul_from_half(gate, gate_stride, up, up_stride, out, be->wdtype, T, I, be->stream);
}

/* ---- fused decode ops (kcuda_gemv_ex): PD_ERR_UNSUPPORTED, nothing queued, when the
 * GEMV path does not take the call (f32 weights, PD_CUDA_NO_GEMV, more than 8 rows or
 * more than KCUDA_GEMV_NORM_MAX_M for the norm, PD_CUDA_NO_DECODE_FUSE=1); the forward
 * then runs the separate ops ---- */

/* What kcuda_gemv_ok checks of x and K, and a GEMV weight type, before any weight
 * conversion is queued (a declined call queues nothing). */
static bool gemv_fits(const eng_backend_t *be, const float *x, int64_t K, int64_t ldx)
{
    return (be->wdtype == KCPU_DTYPE_BF16 || be->wdtype == KCPU_DTYPE_F16) && K % 8 == 0 && ldx % 4 == 0 &&
           ((uintptr_t)x & 15) == 0;
}

/* The weight in the GEMV type into a (the rest of a filled by the caller), then the fused
 * GEMV, or PD_ERR_UNSUPPORTED when kcuda_gemv_ex declines the shape. */
static pd_status_t gemv_ex_run(eng_backend_t *be, kcuda_gemv_ex_t *a, const void *w, kcpu_dtype_t wtype)
{
    pd_status_t st = gemm_weight(be, w, wtype, a->N, a->K, &a->w, &a->wtype, &a->w_scale);
    if (st != PD_OK)
        return st;
    if (!kcuda_gemv_ex_ok(a))
        return PD_ERR_UNSUPPORTED;
    return kcuda_gemv_ex(a, be->stream);
}

static pd_status_t cuda_norm_matmul(eng_backend_t *be, const float *x, int64_t M, int64_t K, const float *norm_w,
                                    float eps, const void *w, kcpu_dtype_t wtype, int64_t N, const float *bias,
                                    int glu, float *y, int64_t ldy)
{
    kcuda_gemv_ex_t a;

    if (be->no_gemv || be->no_fuse || M < 1 || M > KCUDA_GEMV_NORM_MAX_M || K <= 0 || N <= 0 || x == NULL ||
        w == NULL || norm_w == NULL || y == NULL || glu < ENG_GLU_NONE || glu > ENG_GLU_GELU_TANH ||
        (glu != ENG_GLU_NONE && (bias != NULL || N % 2 != 0)) || !kcpu_dtype_supported(wtype) ||
        K % kcpu_dtype_block_size(wtype) != 0 || !gemv_fits(be, x, K, K))
        return PD_ERR_UNSUPPORTED;
    memset(&a, 0, sizeof(a));
    a.x = x;
    a.M = M;
    a.K = K;
    a.ldx = K;
    a.N = N;
    a.norm_w = norm_w;
    a.eps = eps;
    a.bias = bias;
    a.epi = glu == ENG_GLU_NONE ? KCUDA_GEMV_STORE : KCUDA_GEMV_GLU;
    a.glu_act = glu == ENG_GLU_SILU ? 0 : glu == ENG_GLU_GELU ? 1 : 2;
    a.y = y;
    a.ldy = ldy;
    return gemv_ex_run(be, &a, w, wtype);
}

static pd_status_t cuda_matmul_add(eng_backend_t *be, const float *x, int64_t M, int64_t K, int64_t ldx,
                                   const void *w, kcpu_dtype_t wtype, int64_t N, const float *bias, float *y,
                                   int64_t ldy)
{
    kcuda_gemv_ex_t a;

    if (be->no_gemv || be->no_fuse || M < 1 || M > 8 || K <= 0 || N <= 0 || ldx < K || ldy < N || x == NULL ||
        w == NULL || y == NULL || !kcpu_dtype_supported(wtype) || K % kcpu_dtype_block_size(wtype) != 0 ||
        !gemv_fits(be, x, K, ldx))
        return PD_ERR_UNSUPPORTED;
    memset(&a, 0, sizeof(a));
    a.x = x;
    a.M = M;
    a.K = K;
    a.ldx = ldx;
    a.N = N;
    a.bias = bias;
    a.epi = KCUDA_GEMV_ACCUMULATE;
    a.y = y;
    a.ldy = ldy;
    return gemv_ex_run(be, &a, w, wtype);
}

/* ---- the other ops: straight to the kernels on the instance's stream ---- */

static pd_status_t cuda_rmsnorm(eng_backend_t *be, const float *x, const float *w, float *out, int64_t T,
                                int64_t D, float eps)
{
    return kcuda_rmsnorm(x, w, out, T, D, eps, be->stream);
}

static pd_status_t cuda_add_rmsnorm(eng_backend_t *be, float *residual, const float *x, const float *w,
                                    float *out, int64_t T, int64_t D, float eps)
{
    return kcuda_add_rmsnorm(residual, x, w, out, T, D, eps, be->stream);
}

static pd_status_t cuda_layernorm(eng_backend_t *be, const float *x, const float *w, const float *b, float *out,
                                  int64_t T, int64_t D, float eps)
{
    return kcuda_layernorm(x, w, b, out, T, D, eps, be->stream);
}

static pd_status_t cuda_add_layernorm(eng_backend_t *be, float *residual, const float *x, const float *w,
                                      const float *b, float *out, int64_t T, int64_t D, float eps)
{
    return kcuda_add_layernorm(residual, x, w, b, out, T, D, eps, be->stream);
}

static pd_status_t cuda_rope(eng_backend_t *be, float *q, int64_t q_stride, float *k, int64_t k_stride,
                             const int32_t *pos, int64_t T, int n_heads, int n_kv_heads, int head_dim,
                             int rotary_dim, const float *inv_freq, float attn_factor, kcpu_rope_style_t style)
{
    return kcuda_rope(q, q_stride, k, k_stride, pos, T, n_heads, n_kv_heads, head_dim, rotary_dim, inv_freq,
                      attn_factor, style, be->stream);
}

static pd_status_t cuda_silu_and_mul(eng_backend_t *be, const float *gate, int64_t gate_stride, const float *up,
                                     int64_t up_stride, float *out, int64_t T, int64_t I)
{
    return kcuda_silu_and_mul(gate, gate_stride, up, up_stride, out, T, I, be->stream);
}

static pd_status_t cuda_gelu_and_mul(eng_backend_t *be, const float *gate, int64_t gate_stride, const float *up,
                                     int64_t up_stride, float *out, int64_t T, int64_t I, bool approx_tanh)
{
    return kcuda_gelu_and_mul(gate, gate_stride, up, up_stride, out, T, I, approx_tanh, be->stream);
}

static pd_status_t cuda_gelu(eng_backend_t *be, const float *x, float *out, int64_t n, bool approx)
{
    return kcuda_gelu(x, out, n, approx, be->stream);
}

static pd_status_t cuda_silu(eng_backend_t *be, const float *x, float *out, int64_t n)
{
    return kcuda_silu(x, out, n, be->stream);
}

static pd_status_t cuda_relu(eng_backend_t *be, const float *x, float *out, int64_t n)
{
    return kcuda_relu(x, out, n, be->stream);
}

static pd_status_t cuda_add(eng_backend_t *be, const float *a, const float *b, float *out, int64_t n)
{
    return kcuda_add(a, b, out, n, be->stream);
}

static pd_status_t cuda_scale(eng_backend_t *be, const float *x, float s, float *out, int64_t n)
{
    return kcuda_scale(x, s, out, n, be->stream);
}

static pd_status_t cuda_add_bias(eng_backend_t *be, float *out, const float *bias, int64_t T, int64_t N)
{
    return kcuda_add_bias(out, N, bias, T, N, be->stream);
}

static pd_status_t cuda_embedding(eng_backend_t *be, const void *table, kcpu_dtype_t type, int64_t vocab,
                                  int64_t D, const int32_t *ids, int64_t T, float *out)
{
    return kcuda_embedding(table, type, vocab, D, ids, T, out, be->d_err, be->stream);
}

static pd_status_t cuda_softmax(eng_backend_t *be, const float *x, float *out, int64_t T, int64_t n)
{
    return kcuda_softmax(x, out, T, n, be->stream);
}

static pd_status_t cuda_log_softmax(eng_backend_t *be, const float *x, float *out, int64_t T, int64_t n)
{
    return kcuda_log_softmax(x, out, T, n, be->stream);
}

static pd_status_t cuda_argmax(eng_backend_t *be, const float *x, int64_t T, int64_t n, int32_t *idx)
{
    return kcuda_argmax(x, T, n, idx, be->stream);
}

static pd_status_t cuda_sample_rows(eng_backend_t *be, const float *x, int64_t T, int64_t n,
                                    const kcpu_sample_params_t *p, const float *u, int32_t *out)
{
    return kcuda_sample_rows(x, T, n, p, u, out, be->stream);
}

static bool layout_fp8(const kcpu_kv_layout_t *l)
{
    return l->dtype == KCUDA_KV_FP8_E4M3 || l->dtype == KCUDA_KV_FP8_E5M2;
}

/* --calculate-kv-scales: the scales of `layer` from this batch's K and V (one sync). */
static pd_status_t calc_scales(eng_backend_t *be, int layer, const int64_t *slots, int64_t T, const float *k,
                               int64_t k_stride, const float *v, int64_t v_stride, int64_t W)
{
    pd_status_t st = refuse_in_capture(be, "calculating fp8 KV scales");
    if (st == PD_OK)
        st = kcuda_memset_async(be->d_absmax, 0, 2 * sizeof(float), be->stream);
    if (st == PD_OK)
        st = kcuda_absmax_rows(k, T, W, k_stride, slots, be->d_absmax, be->stream);
    if (st == PD_OK)
        st = kcuda_absmax_rows(v, T, W, v_stride, slots, be->d_absmax + 1, be->stream);
    if (st == PD_OK)
        st = kcuda_memcpy_async(be->h_absmax, be->d_absmax, 2 * sizeof(float), be->stream);
    if (st == PD_OK)
        st = kcuda_stream_sync(be->stream);
    if (st != PD_OK)
        return st;
    if (be->h_absmax[0] <= 0.0f || be->h_absmax[1] <= 0.0f)
        return PD_OK; /* nothing written (padding only) or all zeros: try the next batch */
    be->k_scale[layer] = be->h_absmax[0] / 200.0f;
    be->v_scale[layer] = be->h_absmax[1] / 100.0f;
    be->scale_done[layer] = true;
    PD_LOG_DEBUG("cuda backend: fp8 KV scales of layer %d: k %.4g, v %.4g", layer, be->k_scale[layer],
                 be->v_scale[layer]);
    if (layer == be->n_kv_layers - 1)
        PD_LOG_INFO("cuda backend: fp8 KV scales calculated from the first batch (last layer: k %.4g, v %.4g)",
                    be->k_scale[layer], be->v_scale[layer]);
    return PD_OK;
}

static pd_status_t cuda_kv_write(eng_backend_t *be, const kcpu_kv_layout_t *layout, void *cache_base, int layer,
                                 const int64_t *slot_mapping, int64_t T, const float *k, int64_t k_stride,
                                 const float *v, int64_t v_stride)
{
    float ks = 1.0f, vs = 1.0f;
    if (layout != NULL && layout_fp8(layout)) {
        if (be->k_scale == NULL || layer < 0 || layer >= be->n_kv_layers) {
            PD_LOG_ERR("cuda kv_write: fp8 KV cache without scales for layer %d (eng_backend_cuda_set_kv_scales)",
                       layer);
            return PD_ERR_INVAL;
        }
        if (!be->scale_done[layer] && T > 0) {
            pd_status_t st = calc_scales(be, layer, slot_mapping, T, k, k_stride, v, v_stride,
                                         (int64_t)layout->n_kv_heads * layout->head_dim);
            if (st != PD_OK)
                return st;
        }
        ks = be->k_scale[layer];
        vs = be->v_scale[layer];
    }
    return kcuda_kv_write_scaled(layout, cache_base, layer, slot_mapping, T, k, k_stride, v, v_stride, ks, vs,
                                 be->d_err, be->stream);
}

/* rope + kv_write in one kernel; PD_ERR_UNSUPPORTED (nothing queued) when the layer's fp8
 * scales are still to be calculated from this batch (kv_write does that) or fusion is off */
static pd_status_t cuda_rope_kv_write(eng_backend_t *be, float *q, int64_t q_stride, float *k, int64_t k_stride,
                                      const float *v, int64_t v_stride, const int32_t *pos, int64_t T, int n_heads,
                                      int rotary_dim, const float *inv_freq, float attn_factor,
                                      kcpu_rope_style_t style, const kcpu_kv_layout_t *layout, void *cache_base,
                                      int layer, const int64_t *slot_mapping)
{
    float ks = 1.0f, vs = 1.0f;
    if (be->no_fuse || layout == NULL)
        return PD_ERR_UNSUPPORTED;
    if (layout_fp8(layout)) {
        if (be->k_scale == NULL || layer < 0 || layer >= be->n_kv_layers || (!be->scale_done[layer] && T > 0))
            return PD_ERR_UNSUPPORTED;
        ks = be->k_scale[layer];
        vs = be->v_scale[layer];
    }
    return kcuda_rope_kv_write(q, q_stride, k, k_stride, v, v_stride, pos, T, n_heads, rotary_dim, inv_freq,
                               attn_factor, style, layout, cache_base, layer, slot_mapping, ks, vs, be->d_err,
                               be->stream);
}

static pd_status_t cuda_kv_copy_blocks(eng_backend_t *be, const kcpu_kv_layout_t *layout, void *cache_base,
                                       const int32_t *src, const int32_t *dst, int64_t n)
{
    return kcuda_kv_copy_blocks(layout, cache_base, src, dst, n, be->d_err, be->stream);
}

/* The attention's workspace grown for p, and the layer's fp8 scales (1 for other caches). */
static pd_status_t attn_prep(eng_backend_t *be, const kcpu_attn_params_t *p, bool reduced, float *ks_p, float *vs_p)
{
    size_t need = kcuda_attn_workspace_bytes(p, be->sm_count, reduced);
    pd_status_t st = grow(be, &be->ws, &be->ws_bytes, need);
    if (st != PD_OK)
        return st;
    *ks_p = *vs_p = 1.0f;
    if (p->layout != NULL && layout_fp8(p->layout)) {
        if (be->k_scale == NULL || p->layer < 0 || p->layer >= be->n_kv_layers) {
            PD_LOG_ERR("cuda paged_attention: fp8 KV cache without scales for layer %d", p->layer);
            return PD_ERR_INVAL;
        }
        *ks_p = be->k_scale[p->layer];
        *vs_p = be->v_scale[p->layer];
    }
    return PD_OK;
}

static pd_status_t cuda_paged_attention(eng_backend_t *be, const kcpu_attn_params_t *p)
{
    /* tensor-core prefill attention when the instance runs reduced-precision GEMMs */
    bool reduced = be->wdtype != KCPU_DTYPE_F32 && !be->exact_attn;
    float ks, vs;
    pd_status_t st = attn_prep(be, p, reduced, &ks, &vs);
    if (st != PD_OK)
        return st;
    return kcuda_paged_attention_scaled(p, ks, vs, be->ws, be->ws_bytes, be->sm_count, reduced, be->d_err,
                                        be->stream);
}

/* The fa2 prefill kernel writing the o projection's 16-bit input itself; other kernels
 * (decode tokens, f32 attention) decline before anything is queued. */
static pd_status_t cuda_paged_attention_mm(eng_backend_t *be, const kcpu_attn_params_t *p, void *out)
{
    bool reduced = be->wdtype != KCPU_DTYPE_F32 && !be->exact_attn;
    float ks, vs;
    if (be->no_attn16 || !reduced || !kcuda_attn_uses_prefill_kernel(p, be->sm_count, reduced, NULL))
        return PD_ERR_UNSUPPORTED;
    pd_status_t st = attn_prep(be, p, reduced, &ks, &vs);
    if (st != PD_OK)
        return st;
    return kcuda_paged_attention_half(p, ks, vs, out, be->wdtype, be->ws, be->ws_bytes, be->sm_count, reduced,
                                      be->d_err, be->stream);
}

/* ---- swap space ---- */

static pd_status_t cuda_host_alloc(eng_backend_t *be, size_t bytes, void **ptr_p)
{
    (void)be;
    if (bytes == 0)
        return PD_ERR_INVAL;
    return kcuda_host_alloc(bytes, ptr_p); /* pinned: the swap copies are DMA */
}

static void cuda_host_free(eng_backend_t *be, void *ptr)
{
    (void)be;
    kcuda_host_free(ptr);
}

static pd_status_t cuda_copy(void *arg, void *dst, const void *src, size_t bytes)
{
    eng_backend_t *be = arg;
    return kcuda_memcpy_async(dst, src, bytes, be->stream);
}

/* One async copy per run of adjacent blocks on the stream (after the queued work that
 * wrote the blocks), then one wait, so a batch of swaps costs one synchronisation. */
static pd_status_t cuda_kv_swap(eng_backend_t *be, const kcpu_kv_layout_t *layout, void *cache_base,
                                void *host_base, int64_t n_host_blocks, const int32_t *src, const int32_t *dst,
                                int64_t n, bool to_host)
{
    pd_status_t st = eng_kv_swap_runs(layout, cache_base, host_base, n_host_blocks, src, dst, n, to_host, cuda_copy,
                                      be);
    pd_status_t st2 = cuda_synchronize(be); /* also after a failed copy: nothing left in flight */
    return st != PD_OK ? st : st2;
}

static const eng_backend_ops_t cuda_ops = {
    .name = "cuda",
    .init = cuda_init,
    .shutdown = cuda_shutdown,
    .buf_alloc = cuda_buf_alloc,
    .buf_free = cuda_buf_free,
    .memcpy_h2d = cuda_memcpy_h2d,
    .memcpy_d2h = cuda_memcpy_d2h,
    .memcpy_d2h_async = cuda_memcpy_d2h_async,
    .memcpy_d2d = cuda_memcpy_d2d,
    .memset = cuda_memset,
    .synchronize = cuda_synchronize,
    .matmul = cuda_matmul,
    .norm_matmul = cuda_norm_matmul,
    .matmul_add = cuda_matmul_add,
    .rmsnorm = cuda_rmsnorm,
    .add_rmsnorm = cuda_add_rmsnorm,
    .layernorm = cuda_layernorm,
    .add_layernorm = cuda_add_layernorm,
    .rope = cuda_rope,
    .silu_and_mul = cuda_silu_and_mul,
    .gelu_and_mul = cuda_gelu_and_mul,
    .gelu = cuda_gelu,
    .silu = cuda_silu,
    .relu = cuda_relu,
    .add = cuda_add,
    .scale = cuda_scale,
    .add_bias = cuda_add_bias,
    .embedding = cuda_embedding,
    .softmax = cuda_softmax,
    .log_softmax = cuda_log_softmax,
    .argmax = cuda_argmax,
    .kv_write = cuda_kv_write,
    .rope_kv_write = cuda_rope_kv_write,
    .kv_copy_blocks = cuda_kv_copy_blocks,
    .paged_attention = cuda_paged_attention,
    .host_alloc = cuda_host_alloc,
    .sample_rows = cuda_sample_rows,
    .host_free = cuda_host_free,
    .kv_swap = cuda_kv_swap,
    .mm_in_type = cuda_mm_in_type,
    .add_rmsnorm_mm = cuda_add_rmsnorm_mm,
    .silu_and_mul_mm = cuda_silu_and_mul_mm,
    .to_mm = cuda_to_mm,
    .matmul_mm = cuda_matmul_mm,
    .paged_attention_mm = cuda_paged_attention_mm,
    .matmul_mm_out = cuda_matmul_mm_out,
    .silu_and_mul_mm_in = cuda_silu_and_mul_mm_in,
};

const eng_backend_ops_t *eng_backend_cuda_ops(void)
{
    return &cuda_ops;
}

pd_status_t eng_backend_cuda_mem_info(eng_backend_t *be, size_t *free_p, size_t *total_p)
{
    return kcuda_mem_info(free_p, total_p);
}

pd_status_t eng_backend_cuda_set_weight_dtype(eng_backend_t *be, kcpu_dtype_t dtype)
{
    if (dtype != KCPU_DTYPE_BF16 && dtype != KCPU_DTYPE_F16 && dtype != KCPU_DTYPE_F32)
        return PD_ERR_INVAL;
    be->wdtype = dtype;
    return PD_OK;
}

pd_status_t eng_backend_cuda_set_fp8_weights(eng_backend_t *be, bool on)
{
    pd_status_t st;
    if (!on) {
        be->fp8w = false;
        return PD_OK;
    }
    if ((st = refuse_in_capture(be, "switching to fp8 weights")) != PD_OK)
        return st;
    if (be->lt == NULL && (st = kcuda_lt_create(be->stream, 32u << 20, &be->lt)) != PD_OK) {
        PD_LOG_ERR("cuda backend: fp8 weights need cuBLASLt, which did not start: %s", pd_status_str(st));
        return st;
    }
    if (be->d_aq == NULL && (st = kcuda_malloc(KCUDA_FP8_WORK_FLOATS * sizeof(float), (void **)&be->d_aq)) != PD_OK)
        return st;
    if (!be->fp8w)
        PD_LOG_INFO("cuda backend: fp8 e4m3 weights (per-tensor scales; dynamic per-tensor activation scales for "
                    "GEMMs of more than 8 rows; the lm_head stays %s)", kcpu_dtype_name(be->wdtype));
    be->fp8w = true;
    return PD_OK;
}

bool eng_backend_cuda_fp8_weights(const eng_backend_t *be)
{
    return be->fp8w;
}

pd_status_t eng_backend_cuda_keep_weight(eng_backend_t *be, const void *w)
{
    const void **k;
    if (w == NULL)
        return PD_ERR_INVAL;
    for (size_t i = 0; i < be->n_keep; i++)
        if (be->keep[i] == w)
            return PD_OK;
    k = realloc(be->keep, (be->n_keep + 1) * sizeof(*k));
    if (k == NULL)
        return PD_ERR_NOMEM;
    be->keep = k;
    be->keep[be->n_keep++] = w;
    return PD_OK;
}

size_t eng_backend_cuda_private_bytes(eng_backend_t *be)
{
    return be->conv_bytes + be->act_bytes + be->act8_bytes + be->ws_bytes + be->retired_bytes;
}

/* ---- CUDA graphs ---- */

pd_status_t eng_backend_cuda_capture_begin(eng_backend_t *be)
{
    pd_status_t st;
    if (be->capturing) {
        PD_LOG_ERR("cuda backend: capture_begin inside a capture");
        return PD_ERR_INVAL;
    }
    st = kcuda_capture_begin(be->stream);
    if (st != PD_OK)
        return st;
    be->capturing = true;
    be->capture_bad = false;
    return PD_OK;
}

pd_status_t eng_backend_cuda_capture_end(eng_backend_t *be, eng_cuda_graph_t **graph_p)
{
    kcuda_graph_t exec = NULL;
    eng_cuda_graph_t *g;
    pd_status_t st;

    if (!be->capturing) {
        PD_LOG_ERR("cuda backend: capture_end without capture_begin");
        return PD_ERR_INVAL;
    }
    be->capturing = false;
    st = kcuda_capture_end(be->stream, &exec); /* always leaves capture mode */
    if (st == PD_OK && be->capture_bad) {
        kcuda_graph_destroy(exec);
        st = PD_ERR_BUSY;
    }
    be->capture_bad = false;
    if (st != PD_OK)
        return st;
    g = calloc(1, sizeof(*g));
    if (g == NULL) {
        kcuda_graph_destroy(exec);
        return PD_ERR_NOMEM;
    }
    g->exec = exec;
    be->n_graphs++;
    *graph_p = g;
    return PD_OK;
}

pd_status_t eng_backend_cuda_graph_launch(eng_backend_t *be, eng_cuda_graph_t *graph)
{
    if (graph == NULL || be->capturing)
        return PD_ERR_INVAL;
    return kcuda_graph_launch(graph->exec, be->stream);
}

void eng_backend_cuda_graph_destroy(eng_backend_t *be, eng_cuda_graph_t *graph)
{
    if (graph == NULL)
        return;
    kcuda_stream_sync(be->stream); /* a replay may still be running */
    kcuda_graph_destroy(graph->exec);
    free(graph);
    if (be->n_graphs > 0)
        be->n_graphs--;
}

pd_status_t eng_backend_cuda_reserve(eng_backend_t *be, size_t act_bytes, size_t attn_ws_bytes)
{
    pd_status_t st = PD_OK;
    if (act_bytes > be->act_bytes)
        st = grow(be, &be->act, &be->act_bytes, act_bytes);
    /* the e4m3 GEMM input of fp8 weights: one byte an element where act holds two */
    if (st == PD_OK && be->fp8w && act_bytes / 2 > be->act8_bytes)
        st = grow(be, &be->act8, &be->act8_bytes, act_bytes / 2);
    if (st == PD_OK && attn_ws_bytes > be->ws_bytes)
        st = grow(be, &be->ws, &be->ws_bytes, attn_ws_bytes);
    return st;
}

size_t eng_backend_cuda_attn_ws_bytes(eng_backend_t *be, const kcpu_attn_params_t *p)
{
    bool reduced = be->wdtype != KCPU_DTYPE_F32 && !be->exact_attn;
    return kcuda_attn_workspace_bytes(p, be->sm_count, reduced);
}

size_t eng_backend_cuda_retired_bytes(eng_backend_t *be)
{
    return be->retired_bytes;
}

/* ---- fp8 KV cache ---- */

pd_status_t eng_backend_cuda_kv_layout_init(kcpu_kv_layout_t *layout, eng_cuda_kv_t kind, int n_layers,
                                            int block_size, int n_kv_heads, int head_dim, int64_t n_blocks)
{
    kcpu_dtype_t t = kind == ENG_CUDA_KV_FP8_E4M3   ? KCUDA_KV_FP8_E4M3
                     : kind == ENG_CUDA_KV_FP8_E5M2 ? KCUDA_KV_FP8_E5M2
                     : kind == ENG_CUDA_KV_F16      ? KCPU_DTYPE_F16
                                                    : KCPU_DTYPE_F32;
    return kcuda_kv_layout_init(layout, t, n_layers, block_size, n_kv_heads, head_dim, n_blocks);
}

bool eng_backend_cuda_kv_is_fp8(const kcpu_kv_layout_t *layout)
{
    return layout != NULL && layout_fp8(layout);
}

pd_status_t eng_backend_cuda_set_kv_scales(eng_backend_t *be, int n_layers, const float *k_scales,
                                           const float *v_scales, bool calculate)
{
    float *k, *v;
    bool *done;
    if (n_layers <= 0)
        return PD_ERR_INVAL;
    for (int l = 0; l < n_layers; l++)
        if ((k_scales && !(k_scales[l] > 0.0f && k_scales[l] < 1e30f)) ||
            (v_scales && !(v_scales[l] > 0.0f && v_scales[l] < 1e30f))) {
            PD_LOG_ERR("cuda backend: fp8 KV scale of layer %d is not a positive finite number", l);
            return PD_ERR_INVAL;
        }
    if (be->d_absmax == NULL) {
        pd_status_t st = kcuda_malloc(2 * sizeof(float), (void **)&be->d_absmax);
        if (st == PD_OK && (st = kcuda_host_alloc(2 * sizeof(float), (void **)&be->h_absmax)) != PD_OK) {
            kcuda_free(be->d_absmax);
            be->d_absmax = NULL;
        }
        if (st != PD_OK)
            return st;
    }
    k = malloc((size_t)n_layers * sizeof(float));
    v = malloc((size_t)n_layers * sizeof(float));
    done = malloc((size_t)n_layers * sizeof(bool));
    if (k == NULL || v == NULL || done == NULL) {
        free(k);
        free(v);
        free(done);
        return PD_ERR_NOMEM;
    }
    for (int l = 0; l < n_layers; l++) {
        k[l] = k_scales ? k_scales[l] : 1.0f;
        v[l] = v_scales ? v_scales[l] : 1.0f;
        done[l] = !calculate;
    }
    free(be->k_scale);
    free(be->v_scale);
    free(be->scale_done);
    be->k_scale = k;
    be->v_scale = v;
    be->scale_done = done;
    be->n_kv_layers = n_layers;
    return PD_OK;
}

pd_status_t eng_backend_cuda_get_kv_scale(eng_backend_t *be, int layer, float *k_p, float *v_p)
{
    if (be->k_scale == NULL || layer < 0 || layer >= be->n_kv_layers)
        return PD_ERR_INVAL;
    *k_p = be->k_scale[layer];
    *v_p = be->v_scale[layer];
    return PD_OK;
}

#else
/* CUDA not built: nothing here (ISO C wants at least one declaration). */
typedef int eng_backend_cuda_unused_t;
#endif /* PD_HAVE_CUDA */
