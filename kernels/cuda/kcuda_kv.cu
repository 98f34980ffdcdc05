/*
 * kcuda_kv.cu - the paged KV cache: write K/V rows of T tokens into their slots, and
 * copy whole blocks (copy-on-write).  Layout and strides from kcpu_kv_layout_t (F32 or
 * F16 cache).  A slot or block id outside the cache skips the item and sets an error bit.
 */
#include "kcuda_internal.cuh"

template <typename CT> __device__ __forceinline__ CT kc_store(float v);
template <> __device__ __forceinline__ float kc_store<float>(float v) { return v; }
template <> __device__ __forceinline__ __half kc_store<__half>(float v) { return __float2half_rn(v); }

template <typename CT>
__global__ void kv_write_kernel(CT *base, int64_t block_elems, int64_t layer_off, int64_t kv_stride,
                                int64_t token_stride, int bs, int64_t n_blocks, const int64_t *slots,
                                const float *k, int64_t ks, const float *v, int64_t vs, int W, int *err)
{
    const int64_t t = blockIdx.x;
    const int64_t slot = slots[t];
    if (slot < 0)
        return;
    const int64_t b = slot / bs;
    if (b >= n_blocks) {
        if (threadIdx.x == 0 && err)
            atomicOr(err, KCUDA_ERR_SLOT);
        return;
    }
    CT *dst = base + b * block_elems + layer_off + (slot % bs) * token_stride;
    for (int i = threadIdx.x; i < W; i += blockDim.x) {
        dst[i] = kc_store<CT>(k[t * ks + i]);
        dst[kv_stride + i] = kc_store<CT>(v[t * vs + i]);
    }
}

extern "C" pd_status_t kcuda_kv_write(const kcpu_kv_layout_t *L, void *cache_base, int layer,
                                      const int64_t *slot_mapping, int64_t T, const float *k, int64_t k_stride,
                                      const float *v, int64_t v_stride, int *err, kcuda_stream_t stream)
{
    const int W = L ? L->n_kv_heads * L->head_dim : 0;
    if (L == NULL || T < 0 || T > INT32_MAX || k_stride < W || v_stride < W ||
        (L->dtype != KCPU_DTYPE_F32 && L->dtype != KCPU_DTYPE_F16)) {
        PD_LOG_ERR("kcuda_kv_write: bad parameters");
        return PD_ERR_INVAL;
    }
    if (layer < 0 || layer >= L->n_layers) {
        PD_LOG_ERR("kcuda_kv_write: layer %d outside [0, %d)", layer, L->n_layers);
        return PD_ERR_RANGE;
    }
    if (T == 0)
        return PD_OK;
    int64_t be = (int64_t)(L->block_bytes / L->elem_bytes), lo = (int64_t)layer * L->layer_stride;
    int th = W >= 256 ? 256 : 128;
    if (L->dtype == KCPU_DTYPE_F32)
        kv_write_kernel<float><<<(unsigned)T, th, 0, stream>>>((float *)cache_base, be, lo, L->kv_stride,
                                                               L->token_stride, L->block_size, L->n_blocks,
                                                               slot_mapping, k, k_stride, v, v_stride, W, err);
    else
        kv_write_kernel<__half><<<(unsigned)T, th, 0, stream>>>((__half *)cache_base, be, lo, L->kv_stride,
                                                                L->token_stride, L->block_size, L->n_blocks,
                                                                slot_mapping, k, k_stride, v, v_stride, W, err);
    KCUDA_LAUNCHED("kcuda_kv_write");
}

template <typename WT>
__global__ void copy_blocks_kernel(uint8_t *base, size_t block_bytes, const int32_t *src, const int32_t *dst,
                                   int64_t n_blocks, int *err)
{
    const int32_t s = src[blockIdx.x], d = dst[blockIdx.x];
    if (s < 0 || s >= n_blocks || d < 0 || d >= n_blocks) {
        if (threadIdx.x == 0 && err)
            atomicOr(err, KCUDA_ERR_BLOCK);
        return;
    }
    const WT *from = (const WT *)(base + (size_t)s * block_bytes);
    WT *to = (WT *)(base + (size_t)d * block_bytes);
    size_t n = block_bytes / sizeof(WT);
    for (size_t i = blockIdx.y * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.y * blockDim.x)
        to[i] = from[i];
}

extern "C" pd_status_t kcuda_kv_copy_blocks(const kcpu_kv_layout_t *L, void *cache_base, const int32_t *src,
                                            const int32_t *dst, int64_t n, int *err, kcuda_stream_t stream)
{
    if (L == NULL || n < 0 || n > INT32_MAX)
        return PD_ERR_INVAL;
    if (n == 0)
        return PD_OK;
    dim3 grid((unsigned)n, 16);
    if (L->block_bytes % 16 == 0)
        copy_blocks_kernel<uint4><<<grid, 256, 0, stream>>>((uint8_t *)cache_base, L->block_bytes, src, dst,
                                                            L->n_blocks, err);
    else
        copy_blocks_kernel<uint16_t><<<grid, 256, 0, stream>>>((uint8_t *)cache_base, L->block_bytes, src, dst,
                                                               L->n_blocks, err);
    KCUDA_LAUNCHED("kcuda_kv_copy_blocks");
}
