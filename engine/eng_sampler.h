/*
 * eng_sampler.h - turns one float32 logits row (vocab_size) into a token.
 *
 * Order (vLLM v1): allowed_token_ids mask, bad_words, min_tokens (bans eos and
 * stop_token_ids while fewer than min_tokens were generated), logit_bias,
 * repetition penalty (prompt + output tokens: positive logits divided, negative
 * multiplied), frequency and presence penalties (output token counts); greedy
 * (temperature < 1e-5) takes the argmax here; else temperature, min_p, top_k,
 * top_p, then one uniform draw from the request's RNG against the kept
 * probabilities (so a seeded request samples the same whatever the batch holds).
 *
 * Logprobs, like vLLM v1's default ("raw_logprobs"), are log_softmax of the raw
 * model logits before any of the transforms above.  Ranks are vLLM's: the number
 * of vocabulary entries whose logprob is >= the token's (1 = the best).
 *
 * top_k keeps every token whose value ties the k-th largest (as vLLM does).
 * top_k uses partial selection (a bounded heap that skips 64-entry chunks below
 * its root) and top_p a growing partial selection (64, 512, 4096, ... entries),
 * so the common cases never sort the vocabulary.
 */
#ifndef ENG_SAMPLER_H
#define ENG_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "eng_request.h"
#include "pd_status.h"

typedef struct eng_sampler eng_sampler_t;

typedef struct eng_logprob {
    int32_t token;
    float logprob;
    int rank;
} eng_logprob_t;

/* What the sampler needs to know about one sequence. */
typedef struct eng_sample_ctx {
    const eng_sampling_params_t *params;
    const int32_t *prompt;       /* for the repetition penalty */
    int n_prompt;
    const int32_t *output;       /* generated so far */
    int n_output;
    eng_rng_t *rng;              /* the sequence's RNG (unused when greedy) */
    const int32_t *eos_ids;      /* banned below min_tokens (unless ignore_eos) */
    int n_eos;
} eng_sample_ctx_t;

typedef struct eng_sample_result {
    int32_t token;
    float logprob;               /* raw logprob of token when params->logprobs >= 0 or
                                    best_of > n (for the ranking); else NAN */
    int rank;                    /* its rank (same condition; else 0) */
    eng_logprob_t *top;          /* caller's array of params->logprobs entries, or NULL */
    int n_top;                   /* filled entries, best first */
} eng_sample_result_t;

/* Scratch for one vocabulary size (one per engine thread). */
pd_status_t eng_sampler_create(int vocab_size, eng_sampler_t **sampler_p);
void eng_sampler_destroy(eng_sampler_t *sampler);
int eng_sampler_vocab(const eng_sampler_t *sampler);

/* Sample from logits (vocab_size floats; modified in place - the transforms run on
 * it).  res->top may point at params->logprobs entries to receive the top-N raw
 * logprobs.  PD_ERR_INVAL when nothing can be sampled (every token masked). */
pd_status_t eng_sampler_sample(eng_sampler_t *sampler, float *logits, const eng_sample_ctx_t *ctx,
                               eng_sample_result_t *res);

/* Raw logprobs of one row (prompt_logprobs, or logprobs without sampling):
 * target's logprob and rank into *target_p (target < 0: skipped), and the top n_top
 * (sorted best first) into top (may be NULL when n_top is 0).  logits unchanged. */
pd_status_t eng_sampler_logprobs(eng_sampler_t *sampler, const float *logits, int32_t target,
                                 int n_top, eng_logprob_t *top, eng_logprob_t *target_p);

/* True when eng_sampler_sample on this context would return the first maximum of the
 * raw logits and nothing else: greedy, no logprobs (nor best_of ranking), no
 * allowed_token_ids / bad_words / logit_bias / penalties, and no token banned by
 * min_tokens at this step.  Such a row can be sampled on the device (argmax of the raw
 * logits) with only the id copied back; eng_sampler_argmax_result then fills the
 * result exactly as eng_sampler_sample would. */
bool eng_sampler_argmax_only(const eng_sample_ctx_t *ctx);
/* True when this context's token can be drawn by device sampling (kcpu_sample_rows'
 * semantics): random (not greedy) with at most temperature, top_k, top_p and min_p
 * applied to the raw logits, and no logprobs - the same exclusions as
 * eng_sampler_argmax_only.  The device path draws in index order, so a seed gives other
 * tokens than eng_sampler_sample (which draws over sorted candidates). */
bool eng_sampler_device_ok(const eng_sample_ctx_t *ctx);
void eng_sampler_argmax_result(int32_t token, eng_sample_result_t *res);

struct eng_batch;

/* Sample every token a scheduler batch asks for.  logits holds one row per seq
 * with want_logits, in seq order (the r-th such seq uses row r), rows row_stride
 * floats apart; rows are modified.  Sample j of a seq uses sequence j of its group
 * (its params, tokens and RNG); when n_samples > 1 each sample starts from a copy
 * of the untouched row.  sampled gets batch->n_samples tokens; results (NULL or
 * batch->n_samples entries; set each .top to an array of params.logprobs entries
 * or NULL first) gets the logprobs.  A sample that fails (every token masked)
 * gets token -1 and the call returns PD_ERR_INVAL after sampling the rest: finish
 * that request (eng_sched_finish with FINISHED_ERROR) before eng_sched_update. */
pd_status_t eng_sampler_sample_batch(eng_sampler_t *sampler, const struct eng_batch *batch, float *logits,
                                     size_t row_stride, const int32_t *eos_ids, int n_eos, int32_t *sampled,
                                     eng_sample_result_t *results);

/* Individual transforms, exported for tests and for a backend that fuses some. */
void eng_sampler_apply_penalties(eng_sampler_t *sampler, float *logits, const eng_sample_ctx_t *ctx);
/* Indices of the k largest values of x[0..n) into idx (unsorted); returns k' = min(k, n). */
int eng_topk_select(const float *x, int n, int k, int32_t *idx);

#endif /* ENG_SAMPLER_H */
