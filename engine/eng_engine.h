/*
 * eng_engine.h - the engine as the servers see it: load a model, then submit requests,
 * receive their outputs as they are produced, abort them.
 *
 * One engine thread runs  schedule -> forward -> sample -> update -> emit  in a loop.
 * eng_engine_submit / eng_engine_abort may be called from any thread: they queue a
 * command and wake the engine thread.  A request's output callback is called on the
 * engine thread, in order, once per step in which that sequence produced something,
 * and exactly once with out->finished for each sequence; the last call of a request has
 * out->request_done set (after it the engine never touches the request's user pointer).
 * Callbacks must be quick and must not call back into the engine except
 * eng_engine_abort (which is then applied at the next step).
 */
#ifndef ENG_ENGINE_H
#define ENG_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "eng_model.h"
#include "eng_request.h"
#include "eng_sampler.h"
#include "pd_status.h"

struct eng_tok;
struct eng_template;

typedef struct eng_engine eng_engine_t;

typedef struct eng_engine_cfg {
    eng_load_opts_t load;          /* the model */
    const char *backend;           /* "auto" (default: cuda when built and a GPU opens), "cpu", "cuda" */
    double gpu_memory_utilization; /* CUDA: fraction of GPU memory for weights + workspace + KV */
    int n_threads;                 /* CPU threads, 0 = all cores */
    bool exact_matmul;             /* quantized weights: exact f32 dot (tests) vs fast int8 */
    int block_size;                /* 16 */
    int64_t num_blocks;            /* 0 = from kv_cache_bytes */
    uint64_t kv_cache_bytes;       /* KV budget when num_blocks is 0 (CPU: 4 GiB default) */
    int max_num_seqs;              /* 256 */
    int max_queued_seqs;           /* admission bound on waiting sequences (see
                                      eng_engine_reserve); 0 = unbounded */
    int max_num_batched_tokens;    /* 8192 */
    bool enable_chunked_prefill;   /* true */
    bool enable_prefix_caching;    /* true */
    bool priority_policy;          /* --scheduling-policy priority */
    bool preempt_swap;             /* --preemption-mode swap: preempted sequences' KV
                                      blocks go to host swap space (falls back to
                                      recompute when it is full) */
    double swap_space_gib;         /* host swap space in GiB (pinned on CUDA; plain
                                      memory on CPU), used only with preempt_swap */
    int64_t num_host_blocks;       /* tests: swap space in blocks (overrides the GiB) */
    double scheduler_delay_factor;
    uint64_t seed;                 /* --seed: RNG of requests without their own seed */
    int max_logprobs;              /* --max-logprobs */
    int cuda_graph_max_bs;         /* CUDA graphs for decode batches up to this size (512); 0 = eager
                                    * (--enforce-eager, -O0) */
    int max_seq_len_to_capture;    /* longer contexts run eagerly (8192) */
    bool graph_capture_lazy;       /* capture each decode graph at its first step instead
                                    * of at start-up (the prefill node: no decode steps in
                                    * a cluster) */
    const char *kv_cache_dtype;    /* NULL/"auto" (f32), "fp8", "fp8_e4m3", "fp8_e5m2" (CUDA only) */
    bool calculate_kv_scales;      /* fp8: per-layer scales from the first batch */
    bool fp8_weights;              /* --quantization fp8: GEMM weights as fp8 e4m3 with a
                                      per-tensor scale (CUDA only; the lm_head stays 16-bit) */
    bool skip_tokenizer_init;
    const char *chat_template;     /* override of the model's template (text), or NULL */
    const char *tokenizer_override;/* a directory with tokenizer.json that replaces the model's, or
                                     NULL (the server leaves it NULL: load.tokenizer covers --tokenizer) */
    const char *generation_config; /* NULL/"vllm": none; "auto": the model's; or a folder */
    const char *override_generation_config; /* JSON text applied over it, or NULL */
    int async_output;              /* output processing of a step overlapped with the next
                                      step's forward (vLLM's async output processing):
                                      0 off (--disable-async-output-proc), 1 where the
                                      backend computes asynchronously (CUDA; the default),
                                      2 always (tests: on the CPU only the order changes) */
} eng_engine_cfg_t;

void eng_engine_cfg_init(eng_engine_cfg_t *cfg);

/* One output event of one sequence. */
typedef struct eng_output {
    const char *request_id;
    int seq_index;                 /* 0 .. n-1 */
    const int32_t *token_ids;      /* new tokens of this event */
    int n_token_ids;
    const char *text;              /* new text (stop strings held back and cut) */
    size_t text_len;
    /* logprobs of the new tokens (when the request asked for them): for token i,
     * token_logprobs[i] and tops[i * n_top .. +n_top) */
    const eng_logprob_t *token_logprobs;
    const eng_logprob_t *tops;
    int n_top;
    /* prompt_logprobs (requests that asked for them), on the first event of each
     * sequence once the whole prompt has been computed: for prompt token i >= 1,
     * prompt_logprobs[i] is its logprob and rank given tokens [0, i) and
     * prompt_tops[i * n_prompt_top .. +n_prompt_top) the top entries, best first;
     * entry 0 has only the first prompt token (logprob NaN: vLLM's leading None).  n_prompt_logprobs is the prompt
     * length (0 when this event carries none). */
    const eng_logprob_t *prompt_logprobs;
    const eng_logprob_t *prompt_tops;
    int n_prompt_logprobs;
    int n_prompt_top;
    bool finished;                 /* this sequence is done */
    const char *finish_reason;     /* "stop", "length", "abort", "error" when finished */
    int32_t stop_token;            /* the eos/stop token that ended it, or -1 */
    const char *stop_str;          /* the stop string that ended it, or NULL */
    bool request_done;             /* every sequence of the request is done: last event */
    /* usage (totals so far) */
    int n_prompt_tokens;
    int n_cached_tokens;
    int n_output_tokens;           /* of this sequence */
    /* timing, seconds since arrival */
    double t_queue, t_first_token;
    /* disaggregation, set on the request_done event only:
     * producer (eng_submit_t.kv_produce): the prompt's blocks, now held under a lease
     * (kv_leased) - or not (kv_leased false, kv_error says why; the blocks are free);
     * consumer (eng_submit_t.kv_remote): kv_load_failure is "recomputed" when the pull
     * failed and the prompt was computed here; kv_error is set when the request failed
     * because of the transfer (policy fail). */
    bool kv_leased;
    const uint32_t *kv_block_ids;
    int n_kv_block_ids;
    const char *kv_load_failure;
    const char *kv_error;
} eng_output_t;

typedef void (*eng_output_cb_t)(void *user, const eng_output_t *out);

/* Where a consumer request's prompt KV lives (the producer's kv_transfer_params). */
typedef struct eng_remote_kv {
    const char *engine_id;         /* remote_engine_id */
    const char *host;              /* remote_host */
    int port;                      /* remote_port (the producer's kv_port) */
    const char *request_id;        /* remote_request_id (the producer's lease id) */
    const uint32_t *block_ids;     /* remote_block_ids: block i holds prompt tokens [i*bs, (i+1)*bs) */
    int n_block_ids;
} eng_remote_kv_t;

typedef struct eng_submit {
    const char *id;                /* unique among live requests */
    const int32_t *prompt;
    int n_prompt;
    const eng_sampling_params_t *params; /* copied */
    int priority;
    const char *cache_salt;        /* may be NULL */
    eng_output_cb_t cb;
    void *user;
    /* disaggregation (needs eng_engine_set_kv_hooks): */
    bool kv_produce;               /* keep the prompt's blocks under a lease at finish */
    const eng_remote_kv_t *kv_remote; /* pull the prompt's KV from a producer (copied) */
    /* admission: how many of this request's sequences the caller already reserved
     * with eng_engine_reserve (0: none; submit then applies the bound itself) */
    int reserved;
} eng_submit_t;

/* KV transfer hooks (eng_disagg.c implements them over kvxfer).  Called on the engine
 * thread; they must not block. */
typedef struct eng_kv_hooks {
    void *arg;
    /* A kv_produce request finished with its prompt blocks held: put them under a
     * lease named req_id.  PD_OK: the engine keeps them until eng_engine_kv_release
     * (req_id).  An error: the blocks are freed now. */
    pd_status_t (*lease)(void *arg, const char *req_id, const uint32_t *block_ids, size_t n);
    /* Start reading n remote blocks into local ones (n may be 0: only release the
     * remote lease).  notify_only: nobody waits for the result.  Otherwise PD_OK means
     * eng_engine_kv_pulled(req_id, ...) will be called exactly once; an error means
     * it will not (the engine treats the pull as failed). */
    pd_status_t (*pull)(void *arg, const char *req_id, const eng_remote_kv_t *remote,
                        const uint32_t *remote_ids, const uint32_t *local_ids, size_t n,
                        bool notify_only);
    /* The load-failure policy: true = recompute locally, false = fail the request. */
    bool recompute_on_failure;
} eng_kv_hooks_t;

/* Install the hooks (before the first disaggregated request; NULL removes them). */
void eng_engine_set_kv_hooks(eng_engine_t *engine, const eng_kv_hooks_t *hooks);
/* Any thread: the lease req_id ended (released, expired, aborted): free its blocks. */
void eng_engine_kv_release(eng_engine_t *engine, const char *req_id);
/* Any thread: the pull of req_id finished.  unsafe: the transport could not cancel
 * its writes (the local blocks are not reused). msg: one line (copied), may be NULL. */
void eng_engine_kv_pulled(eng_engine_t *engine, const char *req_id, bool ok, bool unsafe,
                          const char *msg);

/* The KV cache as kvxfer registers it. */
typedef struct eng_kv_region {
    void *base;
    int64_t n_blocks;
    size_t block_bytes;
    bool device;                   /* backend memory is not host memory (CUDA) */
    const char *dtype;             /* "f32" / "f16" */
    int block_size, n_layers, n_kv_heads, head_dim;
    uint32_t layout_id;            /* 1 = [n_layers][2][block_size][n_kv_heads][head_dim] */
} eng_kv_region_t;
void eng_engine_kv_region(const eng_engine_t *engine, eng_kv_region_t *region_p);

/* Load the model, tokenizer, template; allocate the KV cache; start the engine thread.
 * Statuses from the loaders (logged) and PD_ERR_NOMEM. */
pd_status_t eng_engine_create(const eng_engine_cfg_t *cfg, eng_engine_t **engine_p);
/* Abort every request (their callbacks fire with "abort"), stop the thread, free all. */
void eng_engine_destroy(eng_engine_t *engine);

/* Validate and queue a request.  PD_ERR_INVAL / PD_ERR_RANGE with a message for the
 * client in err (bad params, prompt too long for max_model_len, token ids outside the
 * vocabulary); PD_ERR_BUSY (message in err) when sub->reserved is 0 and the admission
 * bound refuses it; PD_ERR_CLOSED when the engine is stopping or dead.  On error the
 * callback is never called. */
pd_status_t eng_engine_submit(eng_engine_t *engine, const eng_submit_t *sub, char *err, size_t errlen);
/*
 * Admission control (cfg.max_queued_seqs).  The engine counts the sequences that wait:
 * reserved, queued for the engine thread, or in the scheduler and not yet in any step
 * (a request stops waiting at its first step; one of n choices counts n).  A request
 * of n sequences is refused when others wait and waiting + n would pass the bound, so
 * the queue holds at most max(bound, one request) sequences and any valid request is
 * admitted once the queue is empty.
 *
 * eng_engine_reserve: any thread.  Reserve room for n waiting sequences before the
 * caller commits to a response (a stream's first byte); each eng_engine_submit with
 * sub->reserved = k then uses k of them.  PD_OK, or PD_ERR_BUSY with a message for the
 * client in err (nothing reserved).  eng_engine_unreserve gives back what no submit
 * used (also after a failed submit: the reservation stays the caller's).
 */
pd_status_t eng_engine_reserve(eng_engine_t *engine, int n_seqs, char *err, size_t errlen);
void eng_engine_unreserve(eng_engine_t *engine, int n_seqs);
/* Sequences waiting as counted for admission (any thread; for tests and /load). */
int eng_engine_queued(eng_engine_t *engine);

/* Abort a request by id from any state (no-op if unknown or already finished). */
void eng_engine_abort(eng_engine_t *engine, const char *id);

/* Borrowed views, valid for the engine's life. */
const eng_model_t *eng_engine_model(const eng_engine_t *engine);
const eng_model_config_t *eng_engine_model_config(const eng_engine_t *engine);
const struct eng_tok *eng_engine_tokenizer(const eng_engine_t *engine); /* NULL with skip_tokenizer_init */
const struct eng_template *eng_engine_template(const eng_engine_t *engine); /* NULL when none */
int64_t eng_engine_max_model_len(const eng_engine_t *engine);
int eng_engine_max_num_seqs(const eng_engine_t *engine); /* n (best_of) may not exceed it */
const eng_sampling_defaults_t *eng_engine_sampling_defaults(const eng_engine_t *engine);
/* BOS/EOS strings for templates (may be ""). */
const char *eng_engine_bos_str(const eng_engine_t *engine);
const char *eng_engine_eos_str(const eng_engine_t *engine);

typedef struct eng_engine_stats {
    int n_running, n_waiting, n_swapped;
    double kv_usage;               /* 0..1 */
    int n_blocks, n_free_blocks;
    uint64_t prefix_queries, prefix_hits;   /* tokens */
    uint64_t n_preemptions;
    int n_host_blocks;              /* swap space (--preemption-mode swap), in blocks */
    int n_host_free_blocks;
    uint64_t swap_out_blocks, swap_in_blocks; /* blocks copied device->host, host->device */
    uint64_t prompt_tokens_total, generation_tokens_total;
    uint64_t n_steps;
    uint64_t requests_finished[4];  /* stop, length, abort, error */
    uint64_t kv_load_failures[2];   /* failed pulls handled by policy: recompute, fail */
    int n_kv_held;                  /* finished producer requests holding blocks */
    int n_graph_sizes, n_graphs;    /* decode CUDA graph capture sizes, graphs captured */
    bool dead;                      /* the engine thread hit a fatal error */
} eng_engine_stats_t;

void eng_engine_get_stats(eng_engine_t *engine, eng_engine_stats_t *stats_p);

/* Load the tokenizer that goes with a model (tokenizer.json next to it, a --tokenizer
 * directory, or the GGUF tokenizer.ggml.* metadata). */
pd_status_t eng_tokenizer_for_model(const eng_model_t *model, const char *tokenizer_override,
                                    struct eng_tok **tok_p);

#endif /* ENG_ENGINE_H */
