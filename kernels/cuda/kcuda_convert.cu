/*
 * kcuda_convert.cu - weight conversion at load (any supported GGUF type -> f32/f16/bf16,
 * dequantized on the GPU) and the per-GEMM rounding of f32 activations to bf16/f16.
 */
#include "kcuda_internal.cuh"

template <typename T>
__global__ void convert_weight_kernel(const uint8_t *src, kcpu_dtype_t st, int64_t rows, int64_t K,
                                      size_t row_bytes, T *dst)
{
    int64_t n = rows * K;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / K, c = i % K;
        dst[i] = kc_from_f32<T>(kc_dequant(src + (size_t)r * row_bytes, st, c));
    }
}

extern "C" pd_status_t kcuda_convert_weight(const void *src, kcpu_dtype_t src_type, int64_t rows, int64_t K,
                                            void *dst, kcpu_dtype_t dst_type, kcuda_stream_t stream)
{
    if (!kcuda_weight_type_ok(src_type) || (dst_type != KCPU_DTYPE_F32 && dst_type != KCPU_DTYPE_F16 &&
                                            dst_type != KCPU_DTYPE_BF16)) {
        PD_LOG_ERR("kcuda_convert_weight: %s -> %s not supported", kcpu_dtype_name(src_type),
                   kcpu_dtype_name(dst_type));
        return PD_ERR_UNSUPPORTED;
    }
    if (rows < 0 || K <= 0 || K % kcpu_dtype_block_size(src_type) != 0)
        return PD_ERR_INVAL;
    if (rows == 0)
        return PD_OK;
    size_t rb = kcuda_row_bytes(src_type, K);
    unsigned g = kcuda_grid(rows * K, 256);
    const uint8_t *s = (const uint8_t *)src;
    if (dst_type == KCPU_DTYPE_F32)
        convert_weight_kernel<float><<<g, 256, 0, stream>>>(s, src_type, rows, K, rb, (float *)dst);
    else if (dst_type == KCPU_DTYPE_F16)
        convert_weight_kernel<__half><<<g, 256, 0, stream>>>(s, src_type, rows, K, rb, (__half *)dst);
    else
        convert_weight_kernel<__nv_bfloat16><<<g, 256, 0, stream>>>(s, src_type, rows, K, rb, (__nv_bfloat16 *)dst);
    KCUDA_LAUNCHED("kcuda_convert_weight");
}

template <typename T>
__global__ void f32_to_half_kernel(const float *src, int64_t M, int64_t K, int64_t lds, T *dst)
{
    int64_t n = M * K;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / K, c = i % K;
        dst[i] = kc_from_f32<T>(src[r * lds + c]);
    }
}

extern "C" pd_status_t kcuda_f32_to_half(const float *src, int64_t M, int64_t K, int64_t lds, void *dst,
                                         kcpu_dtype_t dst_type, kcuda_stream_t stream)
{
    if (M < 0 || K <= 0 || lds < K)
        return PD_ERR_INVAL;
    if (M == 0)
        return PD_OK;
    unsigned g = kcuda_grid(M * K, 256);
    if (dst_type == KCPU_DTYPE_BF16)
        f32_to_half_kernel<__nv_bfloat16><<<g, 256, 0, stream>>>(src, M, K, lds, (__nv_bfloat16 *)dst);
    else if (dst_type == KCPU_DTYPE_F16)
        f32_to_half_kernel<__half><<<g, 256, 0, stream>>>(src, M, K, lds, (__half *)dst);
    else
        return PD_ERR_UNSUPPORTED;
    KCUDA_LAUNCHED("kcuda_f32_to_half");
}
