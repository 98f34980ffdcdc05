/*
 * kcuda_elementwise.cu - out = a + b, out = x * s, out[t, :] += bias (in place allowed).
 */
#include "kcuda_internal.cuh"

__global__ void add_kernel(const float *a, const float *b, float *out, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

__global__ void scale_kernel(const float *x, float s, float *out, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = x[i] * s;
}

__global__ void bias_kernel(float *out, int64_t ld, const float *bias, int64_t T, int64_t N)
{
    int64_t n = T * N;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x)
        out[(e / N) * ld + e % N] += bias[e % N];
}

extern "C" pd_status_t kcuda_add(const float *a, const float *b, float *out, int64_t n, kcuda_stream_t stream)
{
    if (n < 0)
        return PD_ERR_INVAL;
    if (n == 0)
        return PD_OK;
    add_kernel<<<kcuda_grid(n, 256), 256, 0, stream>>>(a, b, out, n);
    KCUDA_LAUNCHED("kcuda_add");
}

extern "C" pd_status_t kcuda_scale(const float *x, float s, float *out, int64_t n, kcuda_stream_t stream)
{
    if (n < 0)
        return PD_ERR_INVAL;
    if (n == 0)
        return PD_OK;
    scale_kernel<<<kcuda_grid(n, 256), 256, 0, stream>>>(x, s, out, n);
    KCUDA_LAUNCHED("kcuda_scale");
}

extern "C" pd_status_t kcuda_add_bias(float *out, int64_t ld, const float *bias, int64_t T, int64_t N,
                                      kcuda_stream_t stream)
{
    if (T < 0 || N <= 0 || ld < N)
        return PD_ERR_INVAL;
    if (T == 0)
        return PD_OK;
    bias_kernel<<<kcuda_grid(T * N, 256), 256, 0, stream>>>(out, ld, bias, T, N);
    KCUDA_LAUNCHED("kcuda_add_bias");
}
