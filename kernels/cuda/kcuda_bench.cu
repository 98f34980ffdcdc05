/*
 * kcuda_bench.cu - the two ceilings the benchmarks are measured against, taken in the
 * same process: device-to-device copy bandwidth (cudaMemcpy d2d, bytes read + written)
 * and the cuBLAS bf16 GEMM rate on random data (f32 accumulation).
 */
#include "kcuda_internal.cuh"

#include <cublas_v2.h>
#include <cuda_profiler_api.h>

__global__ void fill_random_bf16(__nv_bfloat16 *x, size_t n, uint32_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        x[i] = __float2bfloat16((float)(h & 0xffff) / 65536.0f - 0.5f);
    }
}

extern "C" pd_status_t kcuda_bench_copy_gbps(size_t bytes, int iters, double *gbps_p)
{
    void *a = NULL, *b = NULL;
    cudaEvent_t e0, e1;
    float ms = 0;
    pd_status_t st = PD_ERR_CUDA;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess)
        goto out;
    cudaMemset(a, 1, bytes);
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice); /* warm-up */
    cudaEventRecord(e0, 0);
    for (int i = 0; i < iters; i++)
        cudaMemcpyAsync(i & 1 ? a : b, i & 1 ? b : a, bytes, cudaMemcpyDeviceToDevice, 0);
    cudaEventRecord(e1, 0);
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (cudaGetLastError() == cudaSuccess && ms > 0) {
        *gbps_p = 2.0 * (double)bytes * iters / (ms * 1e-3) / 1e9;
        st = PD_OK;
    }
out:
    cudaGetLastError();
    cudaFree(a);
    cudaFree(b);
    return st;
}

extern "C" pd_status_t kcuda_bench_gemm_tflops(int64_t M, int64_t N, int64_t K, int iters, double *tflops_p)
{
    __nv_bfloat16 *A = NULL, *B = NULL;
    float *C = NULL;
    cublasHandle_t h = NULL;
    cudaEvent_t e0, e1;
    float ms = 0, one = 1.0f, zero = 0.0f;
    pd_status_t st = PD_ERR_CUDA;
    if (cudaMalloc(&A, sizeof(*A) * M * K) != cudaSuccess || cudaMalloc(&B, sizeof(*B) * K * N) != cudaSuccess ||
        cudaMalloc(&C, sizeof(*C) * M * N) != cudaSuccess || cublasCreate(&h) != CUBLAS_STATUS_SUCCESS)
        goto out;
    fill_random_bf16<<<1024, 256>>>(A, (size_t)M * K, 1);
    fill_random_bf16<<<1024, 256>>>(B, (size_t)K * N, 2);
    for (int i = 0; i < 3; i++)
        cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, B, CUDA_R_16BF, (int)K, A,
                     CUDA_R_16BF, (int)K, &zero, C, CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaEventRecord(e0, 0);
    for (int i = 0; i < iters; i++)
        cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, B, CUDA_R_16BF, (int)K, A,
                     CUDA_R_16BF, (int)K, &zero, C, CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaEventRecord(e1, 0);
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (cudaGetLastError() == cudaSuccess && ms > 0) {
        *tflops_p = 2.0 * (double)M * N * K * iters / (ms * 1e-3) / 1e12;
        st = PD_OK;
    }
out:
    cudaGetLastError();
    if (h)
        cublasDestroy(h);
    cudaFree(A);
    cudaFree(B);
    cudaFree(C);
    return st;
}

template <typename T>
__global__ void fill_random_kernel(T *x, size_t n, uint32_t seed, float scale)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ (uint32_t)(i >> 32) * 40503u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        x[i] = (T)(((float)(h & 0xffffff) / 8388608.0f - 1.0f) * scale);
    }
}

extern "C" pd_status_t kcuda_fill_random(void *x, size_t n, kcpu_dtype_t type, uint32_t seed, float scale,
                                         kcuda_stream_t stream)
{
    if (n == 0)
        return PD_OK;
    if (type == KCPU_DTYPE_F32)
        fill_random_kernel<float><<<4096, 256, 0, stream>>>((float *)x, n, seed, scale);
    else if (type == KCPU_DTYPE_F16)
        fill_random_kernel<__half><<<4096, 256, 0, stream>>>((__half *)x, n, seed, scale);
    else
        return PD_ERR_UNSUPPORTED;
    KCUDA_LAUNCHED("kcuda_fill_random");
}

extern "C" pd_status_t kcuda_bench_gemv_gbps(int64_t M, int64_t N, int64_t K, int iters, double *gbps_p)
{
    /* several copies of the weight, cycled, so that the 60 MB L2 never holds the one read */
    const size_t wbytes = sizeof(__nv_bfloat16) * (size_t)N * K;
    const int copies = (int)((((size_t)256 << 20) + wbytes - 1) / wbytes);
    __nv_bfloat16 *W = NULL;
    float *x = NULL, *y = NULL, ms = 0;
    cudaEvent_t e0, e1;
    pd_status_t st = PD_ERR_CUDA;
    if (cudaMalloc(&W, wbytes * copies) != cudaSuccess || cudaMalloc(&x, sizeof(float) * M * K) != cudaSuccess ||
        cudaMalloc(&y, sizeof(float) * M * N) != cudaSuccess)
        goto out;
    fill_random_bf16<<<1024, 256>>>(W, (size_t)N * K * copies, 5);
    fill_random_kernel<float><<<256, 256>>>(x, (size_t)M * K, 6, 1.0f);
    for (int i = 0; i < 3; i++)
        kcuda_gemv(x, M, K, K, W, KCPU_DTYPE_BF16, N, y, N, 0);
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaEventRecord(e0, 0);
    for (int i = 0; i < iters; i++)
        kcuda_gemv(x, M, K, K, W + (size_t)(i % copies) * N * K, KCPU_DTYPE_BF16, N, y, N, 0);
    cudaEventRecord(e1, 0);
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (cudaGetLastError() == cudaSuccess && ms > 0) {
        *gbps_p = (double)wbytes * iters / (ms * 1e-3) / 1e9;
        st = PD_OK;
    }
out:
    cudaGetLastError();
    cudaFree(W);
    cudaFree(x);
    cudaFree(y);
    return st;
}

extern "C" pd_status_t kcuda_bench_profiler(bool on)
{
    cudaError_t e = cudaDeviceSynchronize();
    if (e == cudaSuccess)
        e = on ? cudaProfilerStart() : cudaProfilerStop();
    return e == cudaSuccess ? PD_OK : PD_ERR_CUDA;
}

__global__ void kcuda_bench_marker_kernel(int id)
{
    (void)id; /* an empty kernel still launches: its place in ncu's listing is the mark */
}

extern "C" pd_status_t kcuda_bench_marker(int id, kcuda_stream_t stream)
{
    kcuda_bench_marker_kernel<<<1, 1, 0, stream>>>(id);
    return cudaGetLastError() == cudaSuccess ? PD_OK : PD_ERR_CUDA;
}
