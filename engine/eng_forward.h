/*
 * eng_forward.h - the model forward: one graph of backend op calls per architecture
 * family (Llama / Mistral / Qwen2 / Qwen3 / SmolLM2, and OPT), over a batch that mixes
 * prefill chunks and decode tokens of many sequences, reading and writing the paged
 * KV cache.
 *
 * The forward owns the backend copies of the weights (zero-copy on the CPU backend:
 * the tensors are used where the loader mapped them), the KV cache and the activation
 * workspace sized for max_tokens tokens and max_seqs sequences.  Not thread-safe: one
 * engine thread drives it.
 */
#ifndef ENG_FORWARD_H
#define ENG_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "eng_backend.h"
#include "eng_model.h"
#include "pd_status.h"

typedef struct eng_forward eng_forward_t;

/* Element type of the KV cache (--kv-cache-dtype).  fp8 only on the CUDA backend (per-
 * layer scales, docs/cuda.md); eng_forward_create refuses it elsewhere. */
typedef enum eng_kv_dtype {
    ENG_KV_AUTO = 0,   /* f32 */
    ENG_KV_FP8_E4M3,   /* "fp8", "fp8_e4m3" */
    ENG_KV_FP8_E5M2,   /* "fp8_e5m2" */
    ENG_KV_F16,        /* what "auto" becomes on CUDA for a bf16/f16 model (not a CLI name) */
} eng_kv_dtype_t;

/* "auto", "fp8", "fp8_e4m3", "fp8_e5m2" (NULL = auto); PD_ERR_INVAL otherwise. */
pd_status_t eng_kv_dtype_parse(const char *s, eng_kv_dtype_t *dt_p);

typedef struct eng_forward_opts {
    int block_size;        /* tokens per KV block */
    int64_t n_blocks;      /* KV blocks to allocate */
    int max_tokens;        /* tokens per forward at most (the scheduler's budget) */
    int max_seqs;          /* sequences per forward at most */
    int max_blocks_per_seq;/* ceil(max_model_len / block_size) */
    /* CUDA graphs for decode steps (CUDA backend only, ignored elsewhere; zero = off):
     * a batch of n <= graph_max_bs sequences with one token each (logits for each, in
     * order) whose contexts are all <= graph_max_ctx is padded to the next capture size
     * (1, 2, 4, 8, 16, 24, ... multiples of 8, capped by max_seqs and max_tokens) and
     * replayed from a graph captured at its first occurrence (after one eager warm-up
     * step of that size).  graph_max_bs is clamped to min(max_seqs, max_tokens, 512);
     * graph_max_ctx <= 0 means max_blocks_per_seq * block_size. */
    int graph_max_bs;      /* 0: every step eager (--enforce-eager, -O0) */
    int graph_max_ctx;     /* --max-seq-len-to-capture */
    eng_kv_dtype_t kv_dtype;  /* ENG_KV_AUTO (0): f32 */
    bool calculate_kv_scales; /* fp8: scales from the first batch (else 1.0) */
} eng_forward_opts_t;

/* One forward.  All arrays are host memory; the forward copies them to the backend. */
typedef struct eng_fwd_batch {
    int n_tokens;
    const int32_t *tokens;      /* [n_tokens] */
    const int32_t *positions;   /* [n_tokens] absolute positions */
    const int32_t *tok_seq;     /* [n_tokens] index of the token's sequence */
    const int64_t *slots;       /* [n_tokens] KV slot = block_id * block_size + offset */
    int n_seqs;
    const int32_t *block_tables;/* [n_seqs * max_blocks_per_seq] */
    const int32_t *context_lens;/* [n_seqs] tokens in the cache after this step */
    int n_logits;
    const int32_t *logit_rows;  /* [n_logits] token indices whose logits are wanted */
} eng_fwd_batch_t;

/* Build the forward for a loaded model on a backend instance.  The model must outlive it.
 * PD_ERR_NOMEM (workspace or KV cache do not fit), PD_ERR_UNSUPPORTED (a tensor type
 * the backend cannot use and cannot be converted), PD_ERR_FORMAT (a tensor missing or
 * of the wrong shape; logged with its name). */
pd_status_t eng_forward_create(const eng_model_t *model, const eng_backend_ops_t *ops,
                               eng_backend_t *be, const eng_forward_opts_t *opts,
                               eng_forward_t **fw_p);
void eng_forward_destroy(eng_forward_t *fw);

/* Run one forward.  logits: host buffer of n_logits * vocab floats, filled on success.
 * PD_ERR_INVAL when the batch exceeds max_tokens/max_seqs or refers to bad rows;
 * PD_ERR_RANGE for token ids outside the vocabulary or slots outside the cache. */
pd_status_t eng_forward_run(eng_forward_t *fw, const eng_fwd_batch_t *batch, float *logits);

/* eng_forward_run with device-side greedy: the backend also computes the argmax of every
 * logits row (first maximum on ties, NaN ignored: what the host sampler's greedy pick
 * does) into ids (host, n_logits int32, required), and copies the full logits row i back
 * into logits + i * vocab only when need_row[i] != 0 (need_row NULL: every row).  Rows
 * not needed may be left as they were or filled (the first step of a CUDA graph size
 * copies them all, so logits is always a buffer of n_logits * vocab floats).  A decode
 * batch of greedy rows then copies n_logits ids back instead of n_logits * vocab floats.
 * Errors as eng_forward_run; ids and logits are unspecified after a failure. */
pd_status_t eng_forward_run_argmax(eng_forward_t *fw, const eng_fwd_batch_t *batch, const uint8_t *need_row,
                                   float *logits, int32_t *ids);

/* eng_forward_run_argmax with device-side sampling: logits row i is sampled on the
 * backend with params[i] and the uniform u[i] in [0, 1) (kcpu_sample_rows' semantics:
 * temperature, top-k, min-p, top-p; greedy rows, temperature < 1e-5, give the argmax),
 * the token into ids[i].  params and u are host arrays of n_logits entries; params NULL
 * means every row greedy (= eng_forward_run_argmax). */
pd_status_t eng_forward_run_sample(eng_forward_t *fw, const eng_fwd_batch_t *batch, const uint8_t *need_row,
                                   const kcpu_sample_params_t *params, const float *u, float *logits, int32_t *ids);

/* eng_forward_run_sample in two halves, so the host can work while the device computes:
 * launch queues the step and the copies of its results (asynchronous where the backend
 * has memcpy_d2h_async, i.e. CUDA; elsewhere the step is complete on return), wait
 * returns once logits/ids are on the host (and reports the step's range errors).  Every
 * launch is followed by a wait before the next forward call or a read of logits/ids;
 * logits and ids should be host_alloc memory for the copies to overlap. */
pd_status_t eng_forward_launch_sample(eng_forward_t *fw, const eng_fwd_batch_t *batch, const uint8_t *need_row,
                                      const kcpu_sample_params_t *params, const float *u, float *logits,
                                      int32_t *ids);
pd_status_t eng_forward_wait(eng_forward_t *fw);

/* Logits of more rows of the last eng_forward_run (prompt_logprobs): rows are token
 * indices of that batch, n <= max_seqs per call (call again for more); logits gets
 * n * vocab floats.  Valid until the next eng_forward_run.  PD_ERR_INVAL for bad rows. */
pd_status_t eng_forward_logits(eng_forward_t *fw, const int32_t *rows, int n, float *logits);

/* Copy KV blocks src[i] -> dst[i] inside the cache (copy-on-write). */
pd_status_t eng_forward_copy_blocks(eng_forward_t *fw, const int32_t *src, const int32_t *dst, int n);

/* The KV cache: base pointer (backend memory), bytes per block, block count, layout.
 * kvxfer registers this region for transfers. */
void *eng_forward_kv_base(const eng_forward_t *fw);
size_t eng_forward_kv_block_bytes(const eng_forward_t *fw);
int64_t eng_forward_kv_n_blocks(const eng_forward_t *fw);
const kcpu_kv_layout_t *eng_forward_kv_layout(const eng_forward_t *fw);

/* What the decode graphs did so far (all zero on the CPU backend or with graphs off). */
typedef struct eng_forward_graph_stats {
    int n_sizes;             /* capture sizes in use (0 when graphs are off) */
    int n_captured;          /* graphs captured and live */
    int n_failed;            /* capture sizes whose capture failed (they run eagerly) */
    uint64_t graph_steps;    /* forwards replayed from a graph */
    uint64_t eager_steps;    /* forwards run op by op (prefill, long contexts, warm-ups) */
} eng_forward_graph_stats_t;

void eng_forward_graph_stats(const eng_forward_t *fw, eng_forward_graph_stats_t *stats_p);

/* Capture the CUDA graph of every decode batch size now (vLLM captures at start-up too),
 * so that no serving step pays for an eager warm-up, a capture and its self-check.  Each
 * size runs one dummy decode step (token 0 at position 0 of KV block 0, written and read
 * by every row; call it before any request uses the cache).  logits / ids: host buffers
 * of graph_max_bs rows (vocab floats) / ids, as for eng_forward_run_sample.  Does nothing
 * without graphs, and leaves capture to first use under calculate_kv_scales (the scales
 * come from the first real batch).  *n_captured_p (may be NULL): sizes captured now. */
pd_status_t eng_forward_capture_graphs(eng_forward_t *fw, float *logits, int32_t *ids, int *n_captured_p);

/* Layers whose q|k|v and gate|up projections run as one fused matmul each (built at
 * create from the separate weights when their types match; PD_FORWARD_NO_FUSE=1 turns
 * it off for A/B runs).  Either pointer may be NULL. */
void eng_forward_fused_layers(const eng_forward_t *fw, int *n_qkv_p, int *n_gate_up_p);

/* Device memory the decode graphs of a model may need beyond the forward's workspace
 * (graph objects and their kernel parameters, scratch for the largest capture size),
 * for the KV sizing: an estimate, 0 when graph_max_bs is 0. */
size_t eng_forward_graph_reserve_bytes(const eng_model_config_t *cfg, int graph_max_bs);

/* Bytes of KV one block takes for this model (F32 cache), for sizing before create. */
size_t eng_forward_block_bytes(const eng_model_config_t *cfg, int block_size);
/* The same for a cache of kv_dtype (fp8: a quarter). */
size_t eng_forward_block_bytes_dtype(const eng_model_config_t *cfg, int block_size, eng_kv_dtype_t kv_dtype);
/* "f32", "f16", "fp8_e4m3" or "fp8_e5m2": the cache's element type (KV transfer peers
 * must agree on it). */
const char *eng_forward_kv_dtype_name(const eng_forward_t *fw);

#endif /* ENG_FORWARD_H */
