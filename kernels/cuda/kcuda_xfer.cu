/*
 * kcuda_xfer.cu - block-list copies for KV transfer (see kcuda_xfer.h).
 *
 * Work decomposition: every block is cut into pieces of at most PIECE bytes and each CTA
 * copies one piece, so a 2 MiB block keeps 32 CTAs busy and a 16 KiB block one; the grid
 * covers n * pieces.  Each thread keeps UNROLL 16-byte loads in flight before storing, which
 * is what a copy over NVLink (reads from a peer's memory) needs to hide its latency.
 * Unaligned sizes or bases fall back to a byte loop (correct, slow; KV blocks are always
 * 16-byte multiples in practice).
 */
#include <cuda_runtime.h>
#include <string.h>

extern "C" {
#include "pd_log.h"
}
#include "kcuda_xfer.h"

#define PIECE (64u << 10)
#define THREADS 256
#define UNROLL 4

__global__ void block_copy_vec(uint4 *dst, const uint32_t *dst_ids, uint64_t dst_n, const uint4 *src,
                               const uint32_t *src_ids, uint64_t src_n, uint64_t block_vecs,
                               uint64_t piece_vecs, uint64_t pieces, int *err)
{
    const uint64_t unit = blockIdx.x;
    const uint64_t i = unit / pieces, p = unit % pieces;
    const uint64_t s = src_ids ? src_ids[i] : i, d = dst_ids ? dst_ids[i] : i;
    if (s >= src_n || d >= dst_n) {
        if (threadIdx.x == 0 && p == 0 && err)
            atomicOr(err, KCUDA_XFER_ERR_RANGE);
        return;
    }
    const uint64_t lo = p * piece_vecs;
    const uint64_t hi = lo + piece_vecs < block_vecs ? lo + piece_vecs : block_vecs;
    const uint4 *in = src + s * block_vecs;
    uint4 *out = dst + d * block_vecs;
    uint64_t k = lo + threadIdx.x;
    for (; k + (UNROLL - 1) * THREADS < hi; k += UNROLL * THREADS) {
        uint4 v[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
            v[u] = in[k + u * THREADS];
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
            out[k + u * THREADS] = v[u];
    }
    for (; k < hi; k += THREADS)
        out[k] = in[k];
}

__global__ void block_copy_bytes(uint8_t *dst, const uint32_t *dst_ids, uint64_t dst_n, const uint8_t *src,
                                 const uint32_t *src_ids, uint64_t src_n, uint64_t block_bytes,
                                 uint64_t piece_bytes, uint64_t pieces, int *err)
{
    const uint64_t unit = blockIdx.x;
    const uint64_t i = unit / pieces, p = unit % pieces;
    const uint64_t s = src_ids ? src_ids[i] : i, d = dst_ids ? dst_ids[i] : i;
    if (s >= src_n || d >= dst_n) {
        if (threadIdx.x == 0 && p == 0 && err)
            atomicOr(err, KCUDA_XFER_ERR_RANGE);
        return;
    }
    const uint64_t lo = p * piece_bytes;
    const uint64_t hi = lo + piece_bytes < block_bytes ? lo + piece_bytes : block_bytes;
    for (uint64_t k = lo + threadIdx.x; k < hi; k += THREADS)
        dst[d * block_bytes + k] = src[s * block_bytes + k];
}

extern "C" pd_status_t kcuda_block_copy(void *dst, const uint32_t *dst_ids, uint64_t dst_n, const void *src,
                                        const uint32_t *src_ids, uint64_t src_n, size_t n,
                                        size_t block_bytes, int *err, kcuda_xfer_stream_t stream)
{
    if (n == 0)
        return PD_OK;
    if (block_bytes == 0 || dst == NULL || src == NULL || n > (1u << 31)) {
        PD_LOG_ERR("kcuda_block_copy: bad parameters (n %zu, block_bytes %zu)", n, block_bytes);
        return PD_ERR_INVAL;
    }
    const bool vec = block_bytes % 16 == 0 && ((uintptr_t)dst % 16) == 0 && ((uintptr_t)src % 16) == 0;
    const uint64_t pieces = (block_bytes + PIECE - 1) / PIECE;
    if ((uint64_t)n * pieces > 0x7fffffffull) {
        PD_LOG_ERR("kcuda_block_copy: %zu blocks of %zu bytes is too large a grid", n, block_bytes);
        return PD_ERR_INVAL;
    }
    const unsigned grid = (unsigned)((uint64_t)n * pieces);
    if (vec)
        block_copy_vec<<<grid, THREADS, 0, stream>>>((uint4 *)dst, dst_ids, dst_n, (const uint4 *)src, src_ids,
                                                      src_n, block_bytes / 16, PIECE / 16, pieces, err);
    else
        block_copy_bytes<<<grid, THREADS, 0, stream>>>((uint8_t *)dst, dst_ids, dst_n, (const uint8_t *)src,
                                                        src_ids, src_n, block_bytes, PIECE, pieces, err);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        PD_LOG_ERR("kcuda_block_copy: launch failed: %s", cudaGetErrorString(e));
        return PD_ERR_CUDA;
    }
    return PD_OK;
}

extern "C" pd_status_t kcuda_block_copy_batch(void *dst, const uint32_t *dst_ids, const void *src,
                                              const uint32_t *src_ids, size_t n, size_t block_bytes,
                                              void **dsts, const void **srcs, size_t *sizes,
                                              kcuda_xfer_stream_t stream)
{
    cudaError_t e;

    if (n == 0)
        return PD_OK;
    for (size_t i = 0; i < n; i++) {
        dsts[i] = (char *)dst + (size_t)(dst_ids ? dst_ids[i] : i) * block_bytes;
        srcs[i] = (const char *)src + (size_t)(src_ids ? src_ids[i] : i) * block_bytes;
        sizes[i] = block_bytes;
    }
#if CUDART_VERSION >= 12080
    {
        cudaMemcpyAttributes attr;
        size_t idx = 0;
        memset(&attr, 0, sizeof(attr));
        attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
#if CUDART_VERSION >= 13000
        e = cudaMemcpyBatchAsync(dsts, srcs, sizes, n, &attr, &idx, 1, stream);
#else
        size_t fail_idx = 0;
        e = cudaMemcpyBatchAsync(dsts, (void **)srcs, sizes, n, &attr, &idx, 1, &fail_idx, stream);
#endif
        if (e == cudaSuccess)
            return PD_OK;
        PD_LOG_WARN("kcuda_block_copy_batch: cudaMemcpyBatchAsync: %s; one copy per block",
                    cudaGetErrorString(e));
        (void)cudaGetLastError();
    }
#endif
    for (size_t i = 0; i < n; i++) {
        e = cudaMemcpyAsync(dsts[i], srcs[i], sizes[i], cudaMemcpyDefault, stream);
        if (e != cudaSuccess) {
            PD_LOG_ERR("kcuda_block_copy_batch: cudaMemcpyAsync: %s", cudaGetErrorString(e));
            return PD_ERR_CUDA;
        }
    }
    return PD_OK;
}
