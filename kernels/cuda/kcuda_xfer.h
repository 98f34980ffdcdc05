/*
 * kcuda_xfer.h - block copies for KV transfer (kvxfer's NCCL connector and bench), callable
 * from plain C.  One launch moves a whole list of fixed-size blocks: block src_ids[i] of
 * src to block dst_ids[i] of dst, for every i, with 16-byte loads and stores when the
 * block size and both bases allow it.  src may be a peer GPU's memory mapped through CUDA
 * IPC (peer access enabled), which is how a pull reads a producer's blocks over NVLink in
 * one launch instead of one cudaMemcpy per block.  A NULL id list means the identity
 * (block i), which turns the copy into a gather (dst contiguous) or a scatter (src
 * contiguous) around a staging buffer.
 *
 * Invariants: the id lists are DEVICE memory; ids outside [0, src_n) / [0, dst_n) are
 * skipped and set KCUDA_XFER_ERR_RANGE in *err (a device int, may be NULL), since the
 * host cannot see them.  Launchers never allocate and never synchronise.
 */
#ifndef KCUDA_XFER_H
#define KCUDA_XFER_H

#include <stddef.h>
#include <stdint.h>

#include "pd_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KCUDA_XFER_ERR_RANGE 16 /* a block id outside its region (skipped) */

/* Same type as cudaStream_t, without CUDA headers in C. */
typedef struct CUstream_st *kcuda_xfer_stream_t;

/*
 * For i in [0, n): copy block_bytes from src + src_ids[i] * block_bytes to
 * dst + dst_ids[i] * block_bytes (NULL ids: i).  src_n / dst_n: blocks in each region
 * (range check).  Blocks must not overlap between source and destination.
 * PD_ERR_INVAL for a zero block size or n over 2^31; PD_ERR_CUDA on a launch failure.
 * n == 0 is a no-op.
 */
pd_status_t kcuda_block_copy(void *dst, const uint32_t *dst_ids, uint64_t dst_n, const void *src,
                             const uint32_t *src_ids, uint64_t src_n, size_t n, size_t block_bytes,
                             int *err, kcuda_xfer_stream_t stream);

/*
 * The same copy through the copy engines: one cudaMemcpyBatchAsync call for the whole
 * list (host id lists here; a CUDA without it falls back to one cudaMemcpyAsync per
 * block).  dsts/srcs/sizes: scratch arrays of n entries the caller provides (host
 * memory, used during the call only).  Ids are not range-checked here (the caller did).
 */
pd_status_t kcuda_block_copy_batch(void *dst, const uint32_t *dst_ids, const void *src,
                                   const uint32_t *src_ids, size_t n, size_t block_bytes,
                                   void **dsts, const void **srcs, size_t *sizes,
                                   kcuda_xfer_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* KCUDA_XFER_H */
