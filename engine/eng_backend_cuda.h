/*
 * eng_backend_cuda.h - what the CUDA backend offers beyond eng_backend_ops_t: device
 * memory figures for sizing the KV cache (--gpu-memory-utilization) and the dtype the
 * GEMM weights are converted to.  Only meaningful on an instance created by
 * eng_backend_cuda_ops()->init; declared whether or not CUDA is built (the functions
 * exist only with PD_HAVE_CUDA).
 *
 * Wiring --gpu-memory-utilization u (the engine's job): after eng_forward_create has
 * uploaded the weights with a minimal cache, or with a probe of the worst-case
 * workspace, read (free, total); the KV budget is u * total - (total - free), divided by
 * eng_forward_block_bytes(); then build the forward with that n_blocks.
 */
#ifndef ENG_BACKEND_CUDA_H
#define ENG_BACKEND_CUDA_H

#include <stddef.h>

#include "eng_backend.h"

/* Free and total memory of the instance's device (cudaMemGetInfo). */
pd_status_t eng_backend_cuda_mem_info(eng_backend_t *be, size_t *free_p, size_t *total_p);

/* Weights of other types are converted at first use (dequantized on the GPU) to `dtype`:
 * KCPU_DTYPE_BF16 (default; tensor-core GEMM on bf16-rounded activations, f32
 * accumulation), KCPU_DTYPE_F16, or KCPU_DTYPE_F32 (exact f32 SGEMM, the golden path).
 * The environment variable PD_CUDA_WEIGHT_DTYPE=bf16|f16|f32 sets the default at init.
 * Call before the first matmul.  PD_ERR_INVAL for other types. */
pd_status_t eng_backend_cuda_set_weight_dtype(eng_backend_t *be, kcpu_dtype_t dtype);

/* Bytes of device memory the backend holds itself (converted weights, scratch). */
size_t eng_backend_cuda_private_bytes(eng_backend_t *be);

#endif /* ENG_BACKEND_CUDA_H */
