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

#include <stdbool.h>
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

/* fp8 weights (--quantization fp8, vLLM's dynamic fp8): with on, every GEMM weight not
 * named by eng_backend_cuda_keep_weight whose K and N are multiples of 16 is converted at
 * its first matmul (GGUF types dequantized first, on the GPU) to fp8 e4m3 with one f32
 * scale per tensor (max|w| / 448); decode GEMVs (1..8 rows) read the fp8 bytes with f32
 * activations, GEMMs of more rows quantize their input to e4m3 with a dynamic per-tensor
 * scale and run cuBLASLt's fp8 GEMM (f32 accumulation and output).  Other weights, and
 * attention, keep the weight dtype (set_weight_dtype).  Starts cuBLASLt (a 32 MiB
 * workspace); call before the first matmul, outside a capture.  off turns later
 * conversions back to the weight dtype (copies already made stay cached). */
pd_status_t eng_backend_cuda_set_fp8_weights(eng_backend_t *be, bool on);
bool eng_backend_cuda_fp8_weights(const eng_backend_t *be);
/* The weight at device pointer w stays in the weight dtype under fp8 weights (the
 * lm_head: vLLM leaves it unquantized).  Forgotten when w is freed (buf_free). */
pd_status_t eng_backend_cuda_keep_weight(eng_backend_t *be, const void *w);

/* Bytes of device memory the backend holds itself (converted weights, scratch). */
size_t eng_backend_cuda_private_bytes(eng_backend_t *be);

/* ---- CUDA graphs (decode steps; driven by eng_forward) ----
 *
 * Between capture_begin and capture_end the ops called on the instance are recorded,
 * not run; capture_end turns them into a graph that graph_launch replays on the
 * instance's stream (in order with the other ops).  A graph holds the device pointers
 * and scalars of the ops it recorded, so:
 *  - the caller re-uses the same buffers for every replay (static inputs, refreshed with
 *    memcpy_h2d before the launch, outside the graph);
 *  - the backend never frees scratch a live graph points into: while graphs exist, a
 *    scratch buffer that has to grow is retired (kept until shutdown), not freed;
 *  - inside a capture, ops that would synchronise or allocate (memcpy_h2d/d2h,
 *    synchronize, growing scratch, a weight's first conversion) fail with PD_ERR_BUSY
 *    (logged once), which ends in capture_end failing: the caller runs one eager step
 *    first (the warm-up) so that nothing is first-time inside the capture.
 * capture_end always leaves capture mode; on failure (logged) the caller goes on eagerly. */
typedef struct eng_cuda_graph eng_cuda_graph_t;

pd_status_t eng_backend_cuda_capture_begin(eng_backend_t *be);
pd_status_t eng_backend_cuda_capture_end(eng_backend_t *be, eng_cuda_graph_t **graph_p);
pd_status_t eng_backend_cuda_graph_launch(eng_backend_t *be, eng_cuda_graph_t *graph);
/* Waits for the stream, then frees the graph.  NULL is a no-op. */
void eng_backend_cuda_graph_destroy(eng_backend_t *be, eng_cuda_graph_t *graph);

/* Grow the scratch buffers now to at least `act_bytes` (bf16/f16 copy of GEMM inputs;
 * with fp8 weights also act_bytes / 2 for their e4m3 copy)
 * and `attn_ws_bytes` (attention split-K workspace), so that captured graphs and later
 * steps share them instead of retiring smaller ones. */
pd_status_t eng_backend_cuda_reserve(eng_backend_t *be, size_t act_bytes, size_t attn_ws_bytes);
/* The attention workspace a call with these parameters needs on this instance. */
size_t eng_backend_cuda_attn_ws_bytes(eng_backend_t *be, const kcpu_attn_params_t *p);
/* Device memory held by retired scratch buffers (kept alive for graphs). */
size_t eng_backend_cuda_retired_bytes(eng_backend_t *be);

/* ---- KV cache element types (fp8 with per-layer scales) ----
 *
 * An fp8 cache stores K / k_scale and V / v_scale per layer (saturated); kv_write and
 * paged_attention take the scales from the instance, so set them before the first
 * forward.  The CPU backend has no fp8 cache. */
typedef enum eng_cuda_kv {
    ENG_CUDA_KV_F32 = 0,
    ENG_CUDA_KV_F16,
    ENG_CUDA_KV_FP8_E4M3,
    ENG_CUDA_KV_FP8_E5M2,
} eng_cuda_kv_t;

/* kcpu_kv_layout_init for the kinds above (fp8: one byte an element, same strides). */
pd_status_t eng_backend_cuda_kv_layout_init(kcpu_kv_layout_t *layout, eng_cuda_kv_t kind, int n_layers,
                                            int block_size, int n_kv_heads, int head_dim, int64_t n_blocks);
bool eng_backend_cuda_kv_is_fp8(const kcpu_kv_layout_t *layout);
/* Scales of the n_layers layers: k_scales / v_scales (NULL: 1.0 each); calculate: replace
 * each layer's pair from the first batch that writes it (max|k| / 200, max|v| / 100,
 * vLLM's --calculate-kv-scales), fixed after that.  PD_ERR_INVAL for non-positive ones. */
pd_status_t eng_backend_cuda_set_kv_scales(eng_backend_t *be, int n_layers, const float *k_scales,
                                           const float *v_scales, bool calculate);
/* The current scales of one layer. */
pd_status_t eng_backend_cuda_get_kv_scale(eng_backend_t *be, int layer, float *k_p, float *v_p);

#endif /* ENG_BACKEND_CUDA_H */
