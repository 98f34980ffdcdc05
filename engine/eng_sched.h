/*
 * eng_sched.h - vLLM v1 style unified scheduler: every step has a token budget
 * shared by decode tokens and prefill chunks; running sequences are served first,
 * then waiting ones in policy order (fcfs, or priority: lower value first, then
 * arrival).  A sequence "wants logits" in a step exactly when the step brings its
 * computed tokens up to all of its tokens: the final prompt chunk, a decode token,
 * or the end of a recompute after preemption.
 *
 * The engine loop is:
 *     batch = eng_sched_step(s);
 *     do swap_out, then swap_in, then copies;
 *     forward over batch->seqs; sample n_samples tokens for every seq with logits
 *         (eng_sampler_sample_batch);
 *     eng_sched_update(s, batch, sampled);
 *     emit outputs; destroy requests in batch->finished whose group finished.
 * Between step and update a request of the batch may be finished (the update then
 * skips it) but not destroyed.  One thread drives a scheduler; nothing here locks.
 *
 * The scheduler never frees requests: finished (and aborted) ones are handed back
 * and the engine destroys them (group parents only, see eng_request.h).
 */
#ifndef ENG_SCHED_H
#define ENG_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "eng_block.h"
#include "eng_request.h"
#include "pd_status.h"

typedef struct eng_sched eng_sched_t;

typedef enum eng_sched_policy {
    ENG_SCHED_FCFS = 0,
    ENG_SCHED_PRIORITY,
} eng_sched_policy_t;

typedef enum eng_preempt_mode {
    ENG_PREEMPT_RECOMPUTE = 0,
    ENG_PREEMPT_SWAP,            /* falls back to recompute when host space is short */
} eng_preempt_mode_t;

typedef struct eng_sched_cfg {
    int max_num_batched_tokens;  /* token budget per step (vLLM default 8192 / 2048) */
    int max_num_seqs;            /* running sequences at most (256) */
    int max_model_len;           /* tokens per sequence at most */
    bool enable_chunked_prefill; /* true (v1); false: a prompt must fit the budget whole */
    int long_prefill_token_threshold; /* 0 = off: cap a prefill chunk per step */
    eng_sched_policy_t policy;
    eng_preempt_mode_t preemption_mode;
    double delay_factor;         /* --scheduler-delay-factor (0 = off) */
    eng_block_cfg_t blocks;
    const int32_t *eos_ids;      /* copied at create */
    int n_eos;
} eng_sched_cfg_t;

/* vLLM v1 defaults: 8192 batched tokens, 256 sequences, chunked prefill, fcfs,
 * recompute, 8192 max-model-len, 1024 blocks of 16 with prefix caching.  Set the
 * block count and max_model_len for the deployment. */
void eng_sched_cfg_init(eng_sched_cfg_t *cfg);
/* --scheduling-policy ("fcfs", "priority") and --preemption-mode ("recompute",
 * "swap"; NULL = recompute).  PD_ERR_INVAL for anything else. */
pd_status_t eng_sched_policy_parse(const char *s, eng_sched_policy_t *policy_p);
pd_status_t eng_preempt_mode_parse(const char *s, eng_preempt_mode_t *mode_p);

/* One sequence of a batch. */
typedef struct eng_batch_seq {
    eng_request_t *req;
    const int32_t *tokens;       /* n_tokens ids to run (points into req->tokens) */
    int n_tokens;
    int start_pos;               /* position of tokens[0] (= computed tokens before) */
    bool is_prefill;             /* any prompt (or recomputed) token besides a decode */
    bool want_logits;            /* logits of the last token are needed */
    bool want_prompt_logits;     /* prompt_logprobs requested and this chunk holds prompt
                                    positions: logits of every token are needed (such
                                    requests bypass prefix-cache hits, like vLLM) */
    int n_samples;               /* tokens to sample from those logits: 0, 1, or group
                                    size when the prompt of an n > 1 group finishes
                                    (sample j goes to eng_request_seq(req, j)) */
    int sample_offset;           /* index of this seq's first sample in update's array */
    const int32_t *block_table;  /* req->table.ids */
    int n_blocks;
} eng_batch_seq_t;

typedef struct eng_batch {
    eng_batch_seq_t *seqs;       /* seqs with one token first (decode steps), then the
                                    others, each part in scheduling order: attention runs
                                    the leading one-token seqs on its decode kernel */
    int n_seqs;
    int n_tokens;                /* sum of seqs[i].n_tokens (<= budget) */
    int n_samples;               /* sum of n_samples: length of update's array */
    int n_prefill_seqs, n_decode_seqs;
    eng_block_copy_t *copies;    /* CoW copies to do before the forward */
    int n_copies;
    eng_block_copy_t *swap_out;  /* device -> host, before swap_in and the forward */
    int n_swap_out;
    eng_block_copy_t *swap_in;   /* host -> device, before the forward */
    int n_swap_in;
    eng_request_t **preempted;   /* preempted this step */
    int n_preempted;
    eng_request_t **remote_admitted; /* WAITING_FOR_REMOTE_KV requests that got their
                                        blocks this step: start their KV transfer into
                                        table blocks covering tokens
                                        [num_cached_tokens, n_remote_tokens) */
    int n_remote_admitted;
    eng_request_t **finished;    /* filled by eng_sched_update */
    int n_finished;
    uint64_t step;               /* step counter */
} eng_batch_t;

typedef struct eng_sched_stats {
    int n_running, n_waiting, n_remote_waiting, n_swapped;
    uint64_t n_preemptions;
    uint64_t n_steps;
    eng_block_stats_t blocks;
} eng_sched_stats_t;

pd_status_t eng_sched_create(const eng_sched_cfg_t *cfg, eng_sched_t **sched_p);
/* Requests still held are released (blocks freed) but not destroyed. */
void eng_sched_destroy(eng_sched_t *sched);

eng_block_mgr_t *eng_sched_blocks(eng_sched_t *sched);
void eng_sched_get_stats(const eng_sched_t *sched, eng_sched_stats_t *stats_p);
/* True when no request is waiting, running or waiting for remote KV (finished
 * requests holding blocks for a peer do not count). */
bool eng_sched_idle(const eng_sched_t *sched);

/* Queue a new request (state WAITING, or WAITING_FOR_REMOTE_KV when req->remote_kv).
 * Resolves req->max_tokens (params.max_tokens, or max_model_len - prompt when -1).
 * PD_ERR_RANGE when the prompt is longer than max_model_len or needs more blocks
 * than exist; PD_ERR_LIMIT when chunked prefill is off and the prompt exceeds the
 * token budget.  The request is borrowed until it is reported finished. */
pd_status_t eng_sched_add(eng_sched_t *sched, eng_request_t *req);

/* Plan the next step.  The returned batch belongs to the scheduler and is valid
 * until the next eng_sched_step.  An empty batch (n_seqs 0) means nothing to do. */
eng_batch_t *eng_sched_step(eng_sched_t *sched);

/* Apply the sampled tokens of the last step: sampled[seq.sample_offset + j] is
 * sample j of each seq with n_samples > 0 (batch->n_samples entries in all).
 * Advances computed tokens, commits the newly full blocks to the prefix cache,
 * forks n > 1 groups (the siblings join the running queue, so a group may briefly
 * exceed max_num_seqs), appends tokens and checks, in this order: eos (unless
 * ignore_eos) and stop_token_ids, both only once min_tokens are generated, then
 * max_tokens and max-model-len - so an eos at the last allowed position finishes
 * "stop".  Finished requests go to batch->finished with their blocks freed (or
 * held, for keep_blocks requests).  Stop strings are the engine's: it runs
 * eng_stop_matcher on the detokenized text and calls eng_sched_finish. */
pd_status_t eng_sched_update(eng_sched_t *sched, eng_batch_t *batch, const int32_t *sampled);

/* Finish a request from outside (stop string matched, error, abort): frees its
 * blocks, removes it from every queue, sets state (a FINISHED_* value).  Exactly
 * once: a second call on a finished request is a no-op returning PD_ERR_INVAL.
 * For a group, finishing sequence 0 with ABORTED/ERROR finishes the whole group.
 * Allowed between eng_sched_step and eng_sched_update (the update skips it). */
pd_status_t eng_sched_finish(eng_sched_t *sched, eng_request_t *req, eng_req_state_t state);
static inline pd_status_t eng_sched_abort(eng_sched_t *sched, eng_request_t *req)
{
    return eng_sched_finish(sched, req, ENG_REQ_FINISHED_ABORTED);
}

/* The remote KV of req arrived (ok) or failed (!ok: the request falls back to
 * computing its prompt locally).  Either way it becomes schedulable. */
pd_status_t eng_sched_remote_kv_ready(eng_sched_t *sched, eng_request_t *req, bool ok);

/* A KV producer request (req->keep_blocks) finished and still holds its blocks:
 * release them once its peer has read them (or the transfer was given up).
 * PD_ERR_INVAL when req holds none. */
pd_status_t eng_sched_release_blocks(eng_sched_t *sched, eng_request_t *req);
/* Finished requests still holding blocks. */
int eng_sched_num_held(const eng_sched_t *sched);

/* Find a queued/running/held request by id (linear; for abort by id). */
eng_request_t *eng_sched_find(eng_sched_t *sched, const char *id);

/* Test hook: the clock used for arrival/delay decisions (NULL = pd_now_ns). */
void eng_sched_set_clock(eng_sched_t *sched, uint64_t (*now_ns)(void));

#endif /* ENG_SCHED_H */
