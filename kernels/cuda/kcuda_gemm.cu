/*
 * kcuda_gemm.cu - y = a . W^T through cuBLAS: f32 SGEMM without TF32 for f32 weights
 * (the exact path the golden test uses), bf16/f16 tensor-core GEMM with f32 accumulation
 * and f32 output otherwise (or, kcuda_gemm_half_out, an output in the operands' 16-bit
 * type, rounded by cuBLAS's epilogue).  Row-major y[M,N] is column-major y^T[N,M], so the call is
 * C(N x M) = op_T(W as K x N col-major) . a (K x M col-major).
 */
#include "kcuda_internal.cuh"

#include <cublas_v2.h>
#include <stdlib.h>

struct kcuda_blas {
    cublasHandle_t h;
    void *ws;
};

extern "C" pd_status_t kcuda_blas_create(kcuda_stream_t stream, size_t workspace_bytes, kcuda_blas_t **blas_p)
{
    kcuda_blas_t *b = (kcuda_blas_t *)calloc(1, sizeof(*b));
    cublasStatus_t s;
    if (b == NULL)
        return PD_ERR_NOMEM;
    s = cublasCreate(&b->h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        PD_LOG_ERR("cublasCreate: %s", cublasGetStatusString(s));
        free(b);
        return PD_ERR_CUDA;
    }
    cublasSetStream(b->h, stream);
    /* f32 GEMMs stay f32 (no TF32): they are the exact path */
    cublasSetMathMode(b->h, CUBLAS_PEDANTIC_MATH);
    if (workspace_bytes) {
        if (cudaMalloc(&b->ws, workspace_bytes) != cudaSuccess) {
            cudaGetLastError();
            cublasDestroy(b->h);
            free(b);
            return PD_ERR_NOMEM;
        }
        cublasSetWorkspace(b->h, b->ws, workspace_bytes);
    }
    *blas_p = b;
    return PD_OK;
}

extern "C" void kcuda_blas_destroy(kcuda_blas_t *blas)
{
    if (blas == NULL)
        return;
    cublasDestroy(blas->h);
    if (blas->ws)
        cudaFree(blas->ws);
    free(blas);
}

/* y of type F32, or of wtype (BF16 / F16) when half_out */
static pd_status_t gemm(kcuda_blas_t *blas, const void *a, int64_t M, int64_t K, int64_t lda, const void *w,
                        kcpu_dtype_t wtype, int64_t N, void *y, int64_t ldy, float beta, bool half_out)
{
    const float one = 1.0f, b = beta;
    cublasStatus_t s;
    cudaDataType_t t;

    if (M < 0 || K <= 0 || N <= 0 || lda < K || ldy < N || M > INT32_MAX || K > INT32_MAX || N > INT32_MAX) {
        PD_LOG_ERR("kcuda_gemm: bad shape M=%lld K=%lld N=%lld", (long long)M, (long long)K, (long long)N);
        return PD_ERR_INVAL;
    }
    if (half_out && wtype != KCPU_DTYPE_BF16 && wtype != KCPU_DTYPE_F16) {
        PD_LOG_ERR("kcuda_gemm_half_out: weight type %s", kcpu_dtype_name(wtype));
        return PD_ERR_UNSUPPORTED;
    }
    if (M == 0)
        return PD_OK;
    switch (wtype) {
    case KCPU_DTYPE_F32:
        s = cublasSgemm(blas->h, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, (const float *)w,
                        (int)K, (const float *)a, (int)lda, &b, (float *)y, (int)ldy);
        break;
    case KCPU_DTYPE_BF16:
    case KCPU_DTYPE_F16:
        t = wtype == KCPU_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
        s = cublasGemmEx(blas->h, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, w, t, (int)K, a, t,
                         (int)lda, &b, y, half_out ? t : CUDA_R_32F, (int)ldy, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT);
        break;
    default:
        PD_LOG_ERR("kcuda_gemm: weight type %s needs conversion first", kcpu_dtype_name(wtype));
        return PD_ERR_UNSUPPORTED;
    }
    if (s != CUBLAS_STATUS_SUCCESS) {
        PD_LOG_ERR("kcuda_gemm: cuBLAS: %s (M=%lld K=%lld N=%lld %s)", cublasGetStatusString(s), (long long)M,
                   (long long)K, (long long)N, kcpu_dtype_name(wtype));
        return PD_ERR_CUDA;
    }
    return PD_OK;
}

extern "C" pd_status_t kcuda_gemm(kcuda_blas_t *blas, const void *a, int64_t M, int64_t K, int64_t lda,
                                  const void *w, kcpu_dtype_t wtype, int64_t N, float *y, int64_t ldy)
{
    return gemm(blas, a, M, K, lda, w, wtype, N, y, ldy, 0.0f, false);
}

extern "C" pd_status_t kcuda_gemm_acc(kcuda_blas_t *blas, const void *a, int64_t M, int64_t K, int64_t lda,
                                      const void *w, kcpu_dtype_t wtype, int64_t N, float *y, int64_t ldy)
{
    return gemm(blas, a, M, K, lda, w, wtype, N, y, ldy, 1.0f, false);
}

extern "C" pd_status_t kcuda_gemm_half_out(kcuda_blas_t *blas, const void *a, int64_t M, int64_t K, int64_t lda,
                                           const void *w, kcpu_dtype_t wtype, int64_t N, void *y, int64_t ldy)
{
    return gemm(blas, a, M, K, lda, w, wtype, N, y, ldy, 0.0f, true);
}
