/*
 * kcuda_embedding.cu - out[t, :] = table[ids[t], :] as f32 from any weight type.
 * An id outside [0, vocab) writes zeros and sets KCUDA_ERR_TOKEN.
 */
#include "kcuda_internal.cuh"

__global__ void embedding_kernel(const uint8_t *table, kcpu_dtype_t type, int64_t vocab, int64_t D,
                                 size_t row_bytes, const int32_t *ids, float *out, int *err)
{
    int64_t t = blockIdx.x;
    int32_t id = ids[t];
    bool bad = id < 0 || id >= vocab;
    if (bad && threadIdx.x == 0 && err)
        atomicOr(err, KCUDA_ERR_TOKEN);
    const uint8_t *row = table + (size_t)(bad ? 0 : id) * row_bytes;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
        out[t * D + i] = bad ? 0.0f : kc_dequant(row, type, i);
}

extern "C" pd_status_t kcuda_embedding(const void *table, kcpu_dtype_t type, int64_t vocab, int64_t D,
                                       const int32_t *ids, int64_t T, float *out, int *err,
                                       kcuda_stream_t stream)
{
    if (!kcuda_weight_type_ok(type)) {
        PD_LOG_ERR("kcuda_embedding: type %s not supported", kcpu_dtype_name(type));
        return PD_ERR_UNSUPPORTED;
    }
    if (vocab <= 0 || D <= 0 || T < 0 || T > INT32_MAX || D % kcpu_dtype_block_size(type) != 0) {
        PD_LOG_ERR("kcuda_embedding: bad shape vocab=%lld D=%lld T=%lld", (long long)vocab, (long long)D,
                   (long long)T);
        return PD_ERR_INVAL;
    }
    if (T == 0)
        return PD_OK;
    embedding_kernel<<<(unsigned)T, 256, 0, stream>>>((const uint8_t *)table, type, vocab, D,
                                                      kcuda_row_bytes(type, D), ids, out, err);
    KCUDA_LAUNCHED("kcuda_embedding");
}
