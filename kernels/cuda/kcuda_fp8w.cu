/*
 * kcuda_fp8w.cu - fp8 e4m3 weights (--quantization fp8, vLLM's dynamic fp8 for an
 * unquantized checkpoint): the per-tensor weight conversion done once at a weight's
 * first matmul, the dynamic per-tensor activation quantization of every GEMM input, and
 * the fp8 GEMM through cuBLASLt.
 *
 * Invariants:
 *  - scale = max|v| / 448 (1 when the tensor is all zeros), computed on the GPU into a
 *    device float: max|v| is reduced with an unsigned atomicMax on the float's bits (valid
 *    for non-negative floats; the zero it starts from is written by the launcher with a
 *    memset on the same stream), then the quantize kernel reads it.  No host round trip,
 *    so the activation quantization is graph capturable.
 *  - byte = e4m3(v / scale): IEEE division (__fdiv_rn: the library is built with
 *    --use_fast_math, whose '/' is approximate) and the hardware conversion with
 *    round-to-nearest-even and saturation to +-448, so a CPU encoder reproduces every byte.
 *  - The GEMM never allocates: its workspace is allocated at kcuda_lt_create and its plans
 *    (descriptors, algorithm) are cached per shape; a plan is made at the first call of a
 *    shape (eagerly: graphs are captured after a warm-up step), later calls only set the
 *    two scale pointers and run.
 */
#include "kcuda_internal.cuh"

#include <cublasLt.h>
#include <cuda_fp8.h>
#include <stdlib.h>
#include <string.h>

#define FP8W_THREADS 256

/* Block-wide max of v (>= 0) folded into *out with one atomic per block. */
__device__ __forceinline__ void block_max_into(float v, float *out)
{
    __shared__ float sh[FP8W_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = kc_warp_max(v);
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < FP8W_THREADS / 32 ? sh[lane] : 0.0f;
        v = kc_warp_max(v);
        if (lane == 0)
            atomicMax((unsigned int *)out, __float_as_uint(v)); /* v >= 0: bits order as values */
    }
}

__device__ __forceinline__ float fp8_scale_of(float amax)
{
    float s = amax > 0.0f ? __fdiv_rn(amax, KCUDA_FP8_E4M3_MAX) : 1.0f;
    return s > 0.0f ? s : 1.0f; /* an amax so small that /448 flushes to zero */
}

__device__ __forceinline__ uint8_t fp8_encode(float v, float s)
{
    return (uint8_t)__nv_cvt_float_to_fp8(__fdiv_rn(v, s), __NV_SATFINITE, __NV_E4M3);
}

/* ---- weights: any supported source type, rows of K, one block a row at a time ---- */

__global__ void w_absmax_kernel(const uint8_t *src, kcpu_dtype_t st, int64_t rows, int64_t K, size_t rb,
                                float *work)
{
    float m = 0.0f;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const uint8_t *row = src + (size_t)r * rb;
        for (int64_t c = threadIdx.x; c < K; c += blockDim.x)
            m = fmaxf(m, fabsf(kc_dequant(row, st, c)));
    }
    block_max_into(m, work);
}

__global__ void w_quant_kernel(const uint8_t *src, kcpu_dtype_t st, int64_t rows, int64_t K, size_t rb,
                               float *work, uint8_t *dst)
{
    const float s = fp8_scale_of(work[0]);
    if (blockIdx.x == 0 && threadIdx.x == 0)
        work[KCUDA_FP8_SCALE_AT] = s; /* nobody else reads it during this kernel */
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const uint8_t *row = src + (size_t)r * rb;
        for (int64_t c = threadIdx.x; c < K; c += blockDim.x)
            dst[r * K + c] = fp8_encode(kc_dequant(row, st, c), s);
    }
}

static unsigned rows_grid(int64_t rows)
{
    return (unsigned)(rows < 1 ? 1 : rows > 2048 ? 2048 : rows);
}

extern "C" pd_status_t kcuda_fp8w_convert(const void *src, kcpu_dtype_t src_type, int64_t rows, int64_t K,
                                          uint8_t *dst, float *work, kcuda_stream_t stream)
{
    if (!kcuda_weight_type_ok(src_type)) {
        PD_LOG_ERR("kcuda_fp8w_convert: %s -> fp8 e4m3 not supported", kcpu_dtype_name(src_type));
        return PD_ERR_UNSUPPORTED;
    }
    if (rows < 0 || K <= 0 || K % kcpu_dtype_block_size(src_type) != 0 || src == NULL || dst == NULL ||
        work == NULL)
        return PD_ERR_INVAL;
    KCUDA_CALL(cudaMemsetAsync(work, 0, sizeof(float), stream), "kcuda_fp8w_convert: memset");
    const size_t rb = kcuda_row_bytes(src_type, K);
    const unsigned g = rows_grid(rows);
    w_absmax_kernel<<<g, FP8W_THREADS, 0, stream>>>((const uint8_t *)src, src_type, rows, K, rb, work);
    w_quant_kernel<<<g, FP8W_THREADS, 0, stream>>>((const uint8_t *)src, src_type, rows, K, rb, work, dst);
    KCUDA_LAUNCHED("kcuda_fp8w_convert");
}

/* ---- activations: f32 / bf16 / f16 rows of stride ldx ---- */

template <typename T> __device__ __forceinline__ float act_f32(T v);
template <> __device__ __forceinline__ float act_f32<float>(float v)
{
    return v;
}
template <> __device__ __forceinline__ float act_f32<__nv_bfloat16>(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}
template <> __device__ __forceinline__ float act_f32<__half>(__half v)
{
    return __half2float(v);
}

template <typename T>
__global__ void a_absmax_kernel(const T *x, int64_t M, int64_t K, int64_t ldx, float *work)
{
    float m = 0.0f;
    for (int64_t r = blockIdx.x; r < M; r += gridDim.x)
        for (int64_t c = threadIdx.x; c < K; c += blockDim.x)
            m = fmaxf(m, fabsf(act_f32<T>(x[r * ldx + c])));
    block_max_into(m, work);
}

template <typename T>
__global__ void a_quant_kernel(const T *x, int64_t M, int64_t K, int64_t ldx, float *work, uint8_t *dst)
{
    const float s = fp8_scale_of(work[0]);
    if (blockIdx.x == 0 && threadIdx.x == 0)
        work[KCUDA_FP8_SCALE_AT] = s;
    for (int64_t r = blockIdx.x; r < M; r += gridDim.x)
        for (int64_t c = threadIdx.x; c < K; c += blockDim.x)
            dst[r * K + c] = fp8_encode(act_f32<T>(x[r * ldx + c]), s);
}

/* The same two passes over 16-byte chunks (8 16-bit or 4 f32 elements): chunk c of the
 * flat index is row c / KC, elements (c % KC) * E .. + E - 1, where KC = K / E.  The
 * scalar kernels above made one 2-byte load a thread per step and took 7-8 us each at
 * decode (M = 320, K = 4096) and 21-26 us at M = 2048: 10-15% of an fp8-weight step. */
template <typename T> struct a_vec {
    static constexpr int E = 16 / (int)sizeof(T);
};

template <typename T> __device__ __forceinline__ void a_load16(const T *p, float (&v)[a_vec<T>::E])
{
    const uint4 u = __ldg(reinterpret_cast<const uint4 *>(p));
    if constexpr (sizeof(T) == 4) {
        v[0] = __uint_as_float(u.x), v[1] = __uint_as_float(u.y), v[2] = __uint_as_float(u.z),
        v[3] = __uint_as_float(u.w);
    } else {
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            T lo, hi;
            const unsigned short bl = (unsigned short)(w[i] & 0xffffu), bh = (unsigned short)(w[i] >> 16);
            memcpy(&lo, &bl, 2);
            memcpy(&hi, &bh, 2);
            v[2 * i] = act_f32<T>(lo);
            v[2 * i + 1] = act_f32<T>(hi);
        }
    }
}

template <typename T>
__global__ void a_absmax_vec_kernel(const T *x, int64_t ldx, int KC, int64_t n_chunks, float *work)
{
    constexpr int E = a_vec<T>::E;
    float m = 0.0f;
    for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < n_chunks; c += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = c / KC, k = (c - r * KC) * E;
        float v[E];
        a_load16<T>(x + r * ldx + k, v);
#pragma unroll
        for (int i = 0; i < E; i++)
            m = fmaxf(m, fabsf(v[i]));
    }
    block_max_into(m, work);
}

template <typename T>
__global__ void a_quant_vec_kernel(const T *x, int64_t ldx, int KC, int64_t n_chunks, float *work, uint8_t *dst)
{
    constexpr int E = a_vec<T>::E;
    const float s = fp8_scale_of(work[0]);
    if (blockIdx.x == 0 && threadIdx.x == 0)
        work[KCUDA_FP8_SCALE_AT] = s;
    for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < n_chunks; c += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = c / KC, k = (c - r * KC) * E;
        float v[E];
        a_load16<T>(x + r * ldx + k, v);
        uint32_t w[E / 4];
#pragma unroll
        for (int i = 0; i < E / 4; i++)
            w[i] = (uint32_t)fp8_encode(v[4 * i], s) | ((uint32_t)fp8_encode(v[4 * i + 1], s) << 8) |
                   ((uint32_t)fp8_encode(v[4 * i + 2], s) << 16) | ((uint32_t)fp8_encode(v[4 * i + 3], s) << 24);
        uint8_t *d = dst + r * (int64_t)KC * E + k;
        if constexpr (E == 8)
            *reinterpret_cast<uint2 *>(d) = make_uint2(w[0], w[1]);
        else
            *reinterpret_cast<uint32_t *>(d) = w[0];
    }
}

/* PD_CUDA_FP8_ACT_VEC=0: the scalar kernels (A/B runs) */
static int g_act_vec = -1;

template <typename T>
static void quant_act_launch(const void *x, int64_t M, int64_t K, int64_t ldx, uint8_t *dst, float *work,
                             cudaStream_t s)
{
    constexpr int E = a_vec<T>::E;
    if (g_act_vec < 0) {
        const char *v = getenv("PD_CUDA_FP8_ACT_VEC");
        g_act_vec = v == NULL || atoi(v) != 0;
    }
    if (g_act_vec && K % E == 0 && ldx % E == 0 && ((uintptr_t)x & 15) == 0 && K / E <= INT32_MAX) {
        const int64_t n = M * (K / E);
        const int64_t want = (n + FP8W_THREADS - 1) / FP8W_THREADS;
        const unsigned g = (unsigned)(want < 1 ? 1 : want > 1056 ? 1056 : want); /* 8 CTAs x 132 SMs */
        a_absmax_vec_kernel<T><<<g, FP8W_THREADS, 0, s>>>((const T *)x, ldx, (int)(K / E), n, work);
        a_quant_vec_kernel<T><<<g, FP8W_THREADS, 0, s>>>((const T *)x, ldx, (int)(K / E), n, work, dst);
        return;
    }
    const unsigned g = rows_grid(M);
    a_absmax_kernel<T><<<g, FP8W_THREADS, 0, s>>>((const T *)x, M, K, ldx, work);
    a_quant_kernel<T><<<g, FP8W_THREADS, 0, s>>>((const T *)x, M, K, ldx, work, dst);
}

extern "C" pd_status_t kcuda_fp8_quant_act(const void *x, kcpu_dtype_t x_type, int64_t M, int64_t K, int64_t ldx,
                                           uint8_t *dst, float *work, kcuda_stream_t stream)
{
    if (M < 0 || K <= 0 || ldx < K || x == NULL || dst == NULL || work == NULL ||
        (x_type != KCPU_DTYPE_F32 && x_type != KCPU_DTYPE_BF16 && x_type != KCPU_DTYPE_F16)) {
        PD_LOG_ERR("kcuda_fp8_quant_act: bad arguments (M=%lld K=%lld ldx=%lld %s)", (long long)M, (long long)K,
                   (long long)ldx, kcpu_dtype_name(x_type));
        return PD_ERR_INVAL;
    }
    if (M == 0)
        return PD_OK;
    KCUDA_CALL(cudaMemsetAsync(work, 0, sizeof(float), stream), "kcuda_fp8_quant_act: memset");
    if (x_type == KCPU_DTYPE_F32)
        quant_act_launch<float>(x, M, K, ldx, dst, work, stream);
    else if (x_type == KCPU_DTYPE_BF16)
        quant_act_launch<__nv_bfloat16>(x, M, K, ldx, dst, work, stream);
    else
        quant_act_launch<__half>(x, M, K, ldx, dst, work, stream);
    KCUDA_LAUNCHED("kcuda_fp8_quant_act");
}

/* ---- the GEMM through cuBLASLt ---- */

#define LT_PLANS 64
#define LT_ALGOS 8 /* heuristic candidates kept per plan */

typedef struct lt_plan {
    bool used;
    int64_t M, N, K, ldy;
    bool acc;
    kcpu_dtype_t yt;               /* F32, or BF16 / F16 (kcuda_fp8_gemm_half_out) */
    unsigned align_y;              /* alignment of y the heuristic was asked for */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo[LT_ALGOS]; /* the heuristic's candidates, best first */
    int n_algo, cur;                     /* how many; the one calls use (a candidate the
                                            matmul refuses is dropped for the next) */
} lt_plan_t;

struct kcuda_lt {
    cublasLtHandle_t h;
    cudaStream_t stream;
    void *ws;
    size_t ws_bytes;
    lt_plan_t plans[LT_PLANS];
    int next;                      /* plan slot replaced next when all are used */
};

static void plan_free(lt_plan_t *p)
{
    if (!p->used)
        return;
    if (p->op)
        cublasLtMatmulDescDestroy(p->op);
    if (p->la)
        cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb)
        cublasLtMatrixLayoutDestroy(p->lb);
    if (p->lc)
        cublasLtMatrixLayoutDestroy(p->lc);
    memset(p, 0, sizeof(*p));
}

extern "C" pd_status_t kcuda_lt_create(kcuda_stream_t stream, size_t workspace_bytes, kcuda_lt_t **lt_p)
{
    kcuda_lt_t *lt = (kcuda_lt_t *)calloc(1, sizeof(*lt));
    cublasStatus_t s;
    if (lt == NULL)
        return PD_ERR_NOMEM;
    s = cublasLtCreate(&lt->h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        PD_LOG_ERR("cublasLtCreate: %s", cublasGetStatusString(s));
        free(lt);
        return PD_ERR_CUDA;
    }
    lt->stream = stream;
    if (workspace_bytes) {
        if (cudaMalloc(&lt->ws, workspace_bytes) != cudaSuccess) {
            cudaGetLastError();
            cublasLtDestroy(lt->h);
            free(lt);
            return PD_ERR_NOMEM;
        }
        lt->ws_bytes = workspace_bytes;
    }
    *lt_p = lt;
    return PD_OK;
}

extern "C" void kcuda_lt_destroy(kcuda_lt_t *lt)
{
    if (lt == NULL)
        return;
    for (int i = 0; i < LT_PLANS; i++)
        plan_free(&lt->plans[i]);
    cublasLtDestroy(lt->h);
    if (lt->ws)
        cudaFree(lt->ws);
    free(lt);
}

extern "C" bool kcuda_fp8_gemm_ok(int64_t M, int64_t K, int64_t N, const float *y, int64_t ldy)
{
    return M >= 0 && K > 0 && N > 0 && K % 16 == 0 && N % 16 == 0 && ldy >= N && ldy % 4 == 0 &&
           ((uintptr_t)y & 15) == 0 && M <= INT32_MAX && K <= INT32_MAX && N <= INT32_MAX && ldy <= INT32_MAX;
}

/* The largest power of two (at most 256) dividing the address. */
static unsigned ptr_align(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    unsigned al = 256;
    while (al > 1 && (a & (al - 1)) != 0)
        al >>= 1;
    return al;
}

#define LT_TRY(expr, what)                                                                                  \
    do {                                                                                                    \
        cublasStatus_t s_ = (expr);                                                                         \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                  \
            PD_LOG_ERR("kcuda_fp8_gemm: %s: %s (M=%lld K=%lld N=%lld)", (what), cublasGetStatusString(s_), \
                       (long long)M, (long long)K, (long long)N);                                          \
            goto fail;                                                                                      \
        }                                                                                                   \
    } while (0)

/* A new plan for the shape in slot p (freed first if used); false (logged) when cuBLASLt
 * has nothing for it. */
static bool plan_make(kcuda_lt_t *lt, lt_plan_t *p, int64_t M, int64_t N, int64_t K, int64_t ldy, bool acc,
                      kcpu_dtype_t yt, unsigned align_y, const float *w_scale, const float *a_scale)
{
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res[LT_ALGOS];
    int nres = 0;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const int8_t fast = 0; /* keep cuBLASLt's periodic promotion to f32 accumulators */
    const uint64_t wsb = lt->ws_bytes;
    const uint32_t al_ab = 256, al_y = align_y;

    plan_free(p);
    memset(p, 0, sizeof(*p));
    LT_TRY(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
    p->used = true; /* from here plan_free releases what was created (NULL handles are fine) */
    LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "transa");
    LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "transb");
    LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)), "fast");
    /* the scale pointers are part of the problem the heuristic answers (an algorithm chosen
     * without them was refused by cublasLtMatmul once they were set: "not supported");
     * every call sets its own again */
    LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale, sizeof(w_scale)),
           "A scale");
    LT_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &a_scale, sizeof(a_scale)),
           "B scale");
    /* column-major: A = W stored K x N (ld K), op T; B = a stored K x M (ld K), op N;
     * C = D = y^T, N x M (ld ldy) */
    LT_TRY(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_8F_E4M3, (uint64_t)K, (uint64_t)N, K), "layout A");
    LT_TRY(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_8F_E4M3, (uint64_t)K, (uint64_t)M, K), "layout B");
    LT_TRY(cublasLtMatrixLayoutCreate(&p->lc,
                                      yt == KCPU_DTYPE_BF16  ? CUDA_R_16BF
                                      : yt == KCPU_DTYPE_F16 ? CUDA_R_16F
                                                             : CUDA_R_32F,
                                      (uint64_t)N, (uint64_t)M, ldy),
           "layout C");
    LT_TRY(cublasLtMatmulPreferenceCreate(&pref), "preference");
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)),
           "workspace");
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_ab,
                                                sizeof(al_ab)), "align A");
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_ab,
                                                sizeof(al_ab)), "align B");
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_y,
                                                sizeof(al_y)), "align C");
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_y,
                                                sizeof(al_y)), "align D");
    LT_TRY(cublasLtMatmulAlgoGetHeuristic(lt->h, p->op, p->la, p->lb, p->lc, p->lc, pref, LT_ALGOS, res, &nres),
           "heuristic");
    if (nres < 1) {
        PD_LOG_ERR("kcuda_fp8_gemm: cuBLASLt has no fp8 algorithm for M=%lld K=%lld N=%lld ldy=%lld (%s out)",
                   (long long)M, (long long)K, (long long)N, (long long)ldy, kcpu_dtype_name(yt));
        goto fail;
    }
    cublasLtMatmulPreferenceDestroy(pref);
    for (int i = 0; i < nres; i++)
        p->algo[i] = res[i].algo;
    p->n_algo = nres;
    p->cur = 0;
    p->M = M;
    p->N = N;
    p->K = K;
    p->ldy = ldy;
    p->acc = acc;
    p->yt = yt;
    p->align_y = align_y;
    return true;
fail:
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    plan_free(p);
    return false;
}

static lt_plan_t *plan_get(kcuda_lt_t *lt, int64_t M, int64_t N, int64_t K, int64_t ldy, bool acc,
                           kcpu_dtype_t yt, unsigned al, const float *w_scale, const float *a_scale)
{
    for (int i = 0; i < LT_PLANS; i++) {
        lt_plan_t *p = &lt->plans[i];
        if (p->used && p->M == M && p->N == N && p->K == K && p->ldy == ldy && p->acc == acc && p->yt == yt &&
            p->align_y == al)
            return p;
    }
    lt_plan_t *p = NULL;
    for (int i = 0; i < LT_PLANS && p == NULL; i++)
        if (!lt->plans[i].used)
            p = &lt->plans[i];
    if (p == NULL) { /* all used: replace round robin (prefill lengths vary) */
        p = &lt->plans[lt->next];
        lt->next = (lt->next + 1) % LT_PLANS;
    }
    return plan_make(lt, p, M, N, K, ldy, acc, yt, al, w_scale, a_scale) ? p : NULL;
}

/* y of type yt: F32 (beta 0 or 1), or BF16 / F16 (beta 0) */
static pd_status_t fp8_gemm(kcuda_lt_t *lt, const uint8_t *a8, const float *a_scale, int64_t M, int64_t K,
                            const uint8_t *w8, const float *w_scale, int64_t N, void *y, int64_t ldy, bool accumulate,
                            kcpu_dtype_t yt)
{
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const bool half = yt != KCPU_DTYPE_F32;
    /* 16-byte rows of y: 4 floats or 8 halves */
    if (lt == NULL || a8 == NULL || w8 == NULL || a_scale == NULL || w_scale == NULL || y == NULL ||
        !kcuda_fp8_gemm_ok(M, K, N, (const float *)y, ldy) || (half && ldy % 8 != 0) ||
        ((uintptr_t)a8 & 15) != 0 || ((uintptr_t)w8 & 15) != 0 || ((uintptr_t)a_scale & 15) != 0 ||
        ((uintptr_t)w_scale & 15) != 0) {
        PD_LOG_ERR("kcuda_fp8_gemm: shape not supported (M=%lld K=%lld N=%lld ldy=%lld %s out; K, N multiples of 16, "
                   "16-byte aligned operands, rows and scales)", (long long)M, (long long)K, (long long)N, (long long)ldy,
                   kcpu_dtype_name(yt));
        return PD_ERR_INVAL;
    }
    if (M == 0)
        return PD_OK;
    /* the operands from cudaMalloc are 256-byte aligned; asked for as such (see plan_make) */
    if (ptr_align(a8) < 256 || ptr_align(w8) < 256) {
        PD_LOG_ERR("kcuda_fp8_gemm: fp8 operands must be 256-byte aligned (device allocations)");
        return PD_ERR_INVAL;
    }
    lt_plan_t *p = plan_get(lt, M, N, K, ldy, accumulate, yt, ptr_align(y), w_scale, a_scale);
    if (p == NULL)
        return PD_ERR_UNSUPPORTED;
    cublasStatus_t s = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale,
                                                      sizeof(w_scale));
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &a_scale, sizeof(a_scale));
    /* a candidate refused here (checked before anything runs: y is untouched, so the next
     * one may still accumulate into it) is dropped for this plan's later calls */
    while (s == CUBLAS_STATUS_SUCCESS && p->cur < p->n_algo) {
        s = cublasLtMatmul(lt->h, p->op, &one, w8, p->la, a8, p->lb, &beta, y, p->lc, y, p->lc, &p->algo[p->cur],
                           lt->ws, lt->ws_bytes, lt->stream);
        if (s != CUBLAS_STATUS_NOT_SUPPORTED)
            break;
        p->cur++;
        s = CUBLAS_STATUS_SUCCESS;
    }
    if (s == CUBLAS_STATUS_SUCCESS && p->cur >= p->n_algo)
        s = CUBLAS_STATUS_NOT_SUPPORTED;
    if (s != CUBLAS_STATUS_SUCCESS) {
        PD_LOG_ERR("kcuda_fp8_gemm: cublasLtMatmul: %s (M=%lld K=%lld N=%lld)", cublasGetStatusString(s),
                   (long long)M, (long long)K, (long long)N);
        return PD_ERR_CUDA;
    }
    return PD_OK;
}

extern "C" pd_status_t kcuda_fp8_gemm(kcuda_lt_t *lt, const uint8_t *a8, const float *a_scale, int64_t M,
                                      int64_t K, const uint8_t *w8, const float *w_scale, int64_t N, float *y,
                                      int64_t ldy, bool accumulate)
{
    return fp8_gemm(lt, a8, a_scale, M, K, w8, w_scale, N, y, ldy, accumulate, KCPU_DTYPE_F32);
}

extern "C" pd_status_t kcuda_fp8_gemm_half_out(kcuda_lt_t *lt, const uint8_t *a8, const float *a_scale, int64_t M,
                                               int64_t K, const uint8_t *w8, const float *w_scale, int64_t N, void *y,
                                               int64_t ldy, kcpu_dtype_t y_type)
{
    if (y_type != KCPU_DTYPE_BF16 && y_type != KCPU_DTYPE_F16) {
        PD_LOG_ERR("kcuda_fp8_gemm_half_out: output type %s", kcpu_dtype_name(y_type));
        return PD_ERR_INVAL;
    }
    return fp8_gemm(lt, a8, a_scale, M, K, w8, w_scale, N, y, ldy, false, y_type);
}

/* ---- micro-benchmarks (bench_cuda): the fp8 GEMM rate and the fp8 GEMV stream rate ---- */

/* Milliseconds of `iters` calls of run(i) on the default stream, by events; 0 on an error. */
template <typename F> static float time_iters(F run, int iters)
{
    cudaEvent_t e0 = NULL, e1 = NULL;
    float ms = 0;
    if (cudaEventCreate(&e0) == cudaSuccess && cudaEventCreate(&e1) == cudaSuccess) {
        cudaEventRecord(e0, 0);
        for (int i = 0; i < iters; i++)
            run(i);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&ms, e0, e1);
    }
    if (cudaGetLastError() != cudaSuccess)
        ms = 0;
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    return ms;
}

extern "C" pd_status_t kcuda_bench_fp8_gemm_tflops(int64_t M, int64_t N, int64_t K, int iters, double *tflops_p)
{
    float *tmp = NULL, *work = NULL, *C = NULL;
    uint8_t *A = NULL, *W = NULL;
    kcuda_lt_t *lt = NULL;
    float ms = 0;
    pd_status_t st = PD_ERR_CUDA;
    const size_t big = (size_t)(M > N ? M : N) * (size_t)K;
    bool ok = true;
    if (cudaMalloc(&tmp, big * sizeof(float)) != cudaSuccess || cudaMalloc(&A, (size_t)M * K) != cudaSuccess ||
        cudaMalloc(&W, (size_t)N * K) != cudaSuccess || cudaMalloc(&C, sizeof(float) * M * N) != cudaSuccess ||
        cudaMalloc(&work, 2 * KCUDA_FP8_WORK_FLOATS * sizeof(float)) != cudaSuccess ||
        kcuda_lt_create(NULL, 32u << 20, &lt) != PD_OK)
        goto out;
    ok = kcuda_fill_random(tmp, (size_t)M * K, KCPU_DTYPE_F32, 1, 1.0f, NULL) == PD_OK &&
         kcuda_fp8_quant_act(tmp, KCPU_DTYPE_F32, M, K, K, A, work, NULL) == PD_OK &&
         kcuda_fill_random(tmp, (size_t)N * K, KCPU_DTYPE_F32, 2, 0.05f, NULL) == PD_OK &&
         kcuda_fp8w_convert(tmp, KCPU_DTYPE_F32, N, K, W, work + KCUDA_FP8_WORK_FLOATS, NULL) == PD_OK;
    {
        const float *a_sc = work + KCUDA_FP8_SCALE_AT, *w_sc = work + KCUDA_FP8_WORK_FLOATS + KCUDA_FP8_SCALE_AT;
        auto gemm = [&](int) { return kcuda_fp8_gemm(lt, A, a_sc, M, K, W, w_sc, N, C, N, false); };
        for (int i = 0; ok && i < 3; i++)
            ok = gemm(i) == PD_OK;
        if (!ok)
            goto out;
        ms = time_iters(gemm, iters);
    }
    if (ms > 0) {
        *tflops_p = 2.0 * (double)M * N * K * iters / (ms * 1e-3) / 1e12;
        st = PD_OK;
    }
out:
    cudaGetLastError();
    kcuda_lt_destroy(lt);
    cudaFree(tmp);
    cudaFree(A);
    cudaFree(W);
    cudaFree(C);
    cudaFree(work);
    return st;
}

/* finite e4m3 bytes (magnitude codes 0..0x6f: |v| <= 120) from a hash of the index */
__global__ void fill_fp8_kernel(uint8_t *w, size_t n, uint32_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ (uint32_t)(i >> 32) * 40503u ^ seed;
        h ^= h >> 15;
        w[i] = (uint8_t)((h % 0x70u) | ((h >> 8) & 0x80u));
    }
}

extern "C" pd_status_t kcuda_bench_fp8_gemv_gbps(int64_t M, int64_t N, int64_t K, int iters, double *gbps_p)
{
    /* several copies of the weight, cycled, so that the L2 never holds the one read */
    const size_t wbytes = (size_t)N * K;
    const int copies = (int)((((size_t)256 << 20) + wbytes - 1) / wbytes);
    uint8_t *W = NULL;
    float *x = NULL, *y = NULL, *sc = NULL, ms = 0, one = 1.0f;
    pd_status_t st = PD_ERR_CUDA;
    bool ok = true;
    if (cudaMalloc(&W, wbytes * copies) != cudaSuccess || cudaMalloc(&x, sizeof(float) * M * K) != cudaSuccess ||
        cudaMalloc(&y, sizeof(float) * M * N) != cudaSuccess || cudaMalloc(&sc, sizeof(float)) != cudaSuccess ||
        cudaMemcpy(sc, &one, sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess)
        goto out;
    fill_fp8_kernel<<<1024, 256>>>(W, wbytes * copies, 5);
    ok = kcuda_fill_random(x, (size_t)M * K, KCPU_DTYPE_F32, 6, 1.0f, NULL) == PD_OK;
    for (int i = 0; ok && i < 3; i++)
        ok = kcuda_gemv_scaled(x, M, K, K, W, KCUDA_W_FP8_E4M3, sc, N, y, N, NULL) == PD_OK;
    if (!ok)
        goto out;
    ms = time_iters(
        [&](int i) {
            kcuda_gemv_scaled(x, M, K, K, W + (size_t)(i % copies) * wbytes, KCUDA_W_FP8_E4M3, sc, N, y, N, NULL);
        },
        iters);
    if (ms > 0) {
        *gbps_p = (double)wbytes * iters / (ms * 1e-3) / 1e9;
        st = PD_OK;
    }
out:
    cudaGetLastError();
    cudaFree(W);
    cudaFree(x);
    cudaFree(y);
    cudaFree(sc);
    return st;
}
