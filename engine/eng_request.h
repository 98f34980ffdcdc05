/*
 * eng_request.h - sampling parameters, per-request RNG and the request object the
 * scheduler, block manager and sampler share.
 *
 * A request owns its memory: the id, the token array (prompt followed by generated
 * tokens, one contiguous array so recompute and prefix hashing see one sequence),
 * the sampling parameters' arrays and its block table.  The state machine is
 *
 *   WAITING ---------------> RUNNING ----------------> FINISHED_*
 *   WAITING_FOR_REMOTE_KV -> (blocks reserved, KV arrives) -> RUNNING
 *   RUNNING -> PREEMPTED (recompute: blocks freed; swap: blocks on host) -> RUNNING
 *   any state -> FINISHED_ABORTED / FINISHED_ERROR
 *
 * n > 1 (parallel sampling): the request handed to the scheduler is the group's
 * sequence 0; eng_request_create makes best_of-1 sibling sequences up front
 * (children[]) that stay parked until the parent's prompt is prefilled once, then
 * fork its blocks (copy on write on the shared partial block).  The parent owns its
 * children: destroy only the parent, and only once eng_request_group_finished().
 */
#ifndef ENG_REQUEST_H
#define ENG_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pd_status.h"

/* ---- RNG ---- */

/* xoshiro256** seeded through splitmix64: fast, 2^256 period, good statistics.
 * One per request so a seeded request samples the same tokens whatever else shares
 * its batch. */
typedef struct eng_rng {
    uint64_t s[4];
} eng_rng_t;

void eng_rng_seed(eng_rng_t *rng, uint64_t seed);
uint64_t eng_rng_next(eng_rng_t *rng);
/* Uniform double in [0, 1) with 53 random bits. */
double eng_rng_uniform(eng_rng_t *rng);

/* ---- sampling parameters ---- */

typedef struct eng_logit_bias {
    int32_t token;
    float bias;
} eng_logit_bias_t;

/* Bits of eng_sampling_params_t.set_mask: which fields the request set explicitly.
 * Generation-config defaults (eng_sampling_defaults_apply) fill only unset fields. */
enum {
    ENG_SP_SET_TEMPERATURE = 1u << 0,
    ENG_SP_SET_TOP_P = 1u << 1,
    ENG_SP_SET_TOP_K = 1u << 2,
    ENG_SP_SET_MIN_P = 1u << 3,
    ENG_SP_SET_REPETITION_PENALTY = 1u << 4,
    ENG_SP_SET_PRESENCE_PENALTY = 1u << 5,
    ENG_SP_SET_FREQUENCY_PENALTY = 1u << 6,
    ENG_SP_SET_MAX_TOKENS = 1u << 7,
    ENG_SP_SET_SEED = 1u << 8,
};

/* Every OpenAI / vLLM sampling field.  Defaults (eng_sampling_params_init) are
 * vLLM's SamplingParams defaults.  The arrays are owned (malloc'd) by the struct:
 * fill them with the eng_sampling_params_add_* helpers or assign malloc'd memory. */
typedef struct eng_sampling_params {
    int n;                       /* 1: sequences returned */
    int best_of;                 /* 0 = n: sequences sampled (the best n returned) */
    float temperature;           /* 1.0; < 1e-5 means greedy */
    float top_p;                 /* 1.0: (0, 1] */
    int top_k;                   /* 0 (and -1) = off */
    float min_p;                 /* 0.0: [0, 1] */
    float presence_penalty;      /* 0.0: [-2, 2] */
    float frequency_penalty;     /* 0.0: [-2, 2] */
    float repetition_penalty;    /* 1.0: > 0 */
    bool has_seed;
    uint64_t seed;
    char **stop;                 /* stop strings (owned) */
    int n_stop;
    int32_t *stop_token_ids;
    int n_stop_token_ids;
    bool include_stop_str_in_output; /* false */
    bool ignore_eos;             /* false */
    int max_tokens;              /* 16 (vLLM's SamplingParams); -1 = up to max-model-len */
    int min_tokens;              /* 0 */
    int logprobs;                /* -1 = none; N >= 0: top-N of each generated token */
    int prompt_logprobs;         /* -1 = none */
    eng_logit_bias_t *logit_bias;
    int n_logit_bias;
    int32_t *allowed_token_ids;  /* NULL = all allowed */
    int n_allowed_token_ids;
    /* bad_words as token id sequences, flattened: word i is
     * bad_words_tokens[bad_words_off[i] .. bad_words_off[i+1]) (bad_words_off has
     * n_bad_words + 1 entries). */
    int32_t *bad_words_tokens;
    int *bad_words_off;
    int n_bad_words;
    bool skip_special_tokens;            /* true */
    bool spaces_between_special_tokens;  /* true */
    int truncate_prompt_tokens;  /* -1 = off; >= 1: keep the last N prompt tokens */
    unsigned set_mask;           /* ENG_SP_SET_* */
} eng_sampling_params_t;

/* Defaults (vLLM's); the arrays empty.  Never fails. */
void eng_sampling_params_init(eng_sampling_params_t *p);
/* Frees the arrays; *p is then as after init. */
void eng_sampling_params_cleanup(eng_sampling_params_t *p);
/* Deep copy into uninitialised *dst.  PD_ERR_NOMEM leaves *dst initialised-empty. */
pd_status_t eng_sampling_params_copy(eng_sampling_params_t *dst, const eng_sampling_params_t *src);

pd_status_t eng_sampling_params_add_stop(eng_sampling_params_t *p, const char *s);
pd_status_t eng_sampling_params_add_stop_token(eng_sampling_params_t *p, int32_t token);
pd_status_t eng_sampling_params_add_logit_bias(eng_sampling_params_t *p, int32_t token, float bias);
pd_status_t eng_sampling_params_add_allowed(eng_sampling_params_t *p, int32_t token);
pd_status_t eng_sampling_params_add_bad_word(eng_sampling_params_t *p, const int32_t *ids, int n);

/* True when the request samples greedily (temperature < 1e-5). */
bool eng_sampling_params_greedy(const eng_sampling_params_t *p);

/* Checks ranges with vLLM's error messages (written NUL-terminated into err,
 * which may be NULL).  vocab_size bounds token ids (logit_bias, allowed_token_ids,
 * bad_words, stop_token_ids); max_logprobs bounds logprobs and prompt_logprobs
 * (-1 = no limit).  Returns PD_OK or PD_ERR_INVAL. */
pd_status_t eng_sampling_params_validate(const eng_sampling_params_t *p, int vocab_size,
                                         int max_logprobs, char *err, size_t errlen);

/* Generation-config defaults (generation_config.json / --generation-config /
 * --override-generation-config): a field applies when its has_ flag is set and the
 * request did not set it. */
typedef struct eng_sampling_defaults {
    bool has_temperature, has_top_p, has_top_k, has_min_p, has_repetition_penalty;
    bool has_presence_penalty, has_frequency_penalty, has_max_tokens;
    float temperature, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty;
    int top_k;
    int max_tokens; /* max_new_tokens */
} eng_sampling_defaults_t;

void eng_sampling_defaults_apply(eng_sampling_params_t *p, const eng_sampling_defaults_t *d);

/* ---- requests ---- */

typedef enum eng_req_state {
    ENG_REQ_WAITING = 0,
    ENG_REQ_WAITING_FOR_REMOTE_KV,
    ENG_REQ_RUNNING,
    ENG_REQ_PREEMPTED,
    ENG_REQ_FINISHED_STOPPED,  /* eos, stop token id or stop string */
    ENG_REQ_FINISHED_LENGTH,   /* max_tokens or max-model-len */
    ENG_REQ_FINISHED_ABORTED,
    ENG_REQ_FINISHED_ERROR,
} eng_req_state_t;

#define ENG_REQ_IS_FINISHED(state) ((state) >= ENG_REQ_FINISHED_STOPPED)

/* "stop", "length", "abort", "error" (OpenAI finish_reason; NULL while unfinished). */
const char *eng_req_finish_reason(eng_req_state_t state);
const char *eng_req_state_name(eng_req_state_t state);

/* A sequence's block table.  Also holds the prefix-cache chain state the block
 * manager needs (how many leading full blocks are registered and the hash of the
 * last one) so hashing stays O(new blocks). */
typedef struct eng_block_table {
    int32_t *ids;        /* block ids, device (or host ones while swapped out) */
    int n;               /* blocks in use */
    int cap;
    int n_hashed;        /* leading full blocks registered in the prefix cache */
    uint64_t last_hash;  /* chain hash of block n_hashed - 1 (0 when none) */
    int32_t canon_id;    /* the cached block holding block n_hashed - 1's key (-1) */
    uint32_t canon_gen;  /* its generation when chained (detects eviction) */
    bool hash_broken;    /* a true hash collision stopped caching this sequence */
    bool on_host;        /* swapped out: ids are host block ids */
} eng_block_table_t;

typedef struct eng_request eng_request_t;

struct eng_request {
    char *id;
    /* Tokens: prompt then output, contiguous. */
    int32_t *tokens;
    int n_tokens;
    int cap_tokens;
    int n_prompt;
    eng_sampling_params_t params;
    int priority;                /* lower runs first under the priority policy */
    char *cache_salt;            /* NULL = none */
    uint64_t salt_hash;          /* hash of cache_salt (0 when none) */
    int32_t lora_id;             /* adapter id (0 = base model); part of the block key */
    eng_req_state_t state;
    bool swapped;                /* PREEMPTED by swap: table.on_host */
    int num_computed_tokens;     /* tokens whose KV is in the cache */
    int num_cached_tokens;       /* prompt tokens served from the prefix cache (first admit) */
    int max_tokens;              /* resolved limit on generated tokens */
    eng_block_table_t table;
    /* timing (pd_now_ns); 0 = not yet */
    uint64_t t_arrival, t_scheduled, t_first_token, t_last_token;
    eng_rng_t rng;
    int n_preemptions;
    int32_t stop_token;          /* the stop_token_ids/eos token that finished it, -1 */
    int stop_str_index;          /* the stop string that finished it (set by the engine), -1 */
    double cumulative_logprob;   /* maintained by the engine (best_of ranking) */
    /* remote KV (disaggregated decode): prompt tokens whose KV arrives by transfer */
    bool remote_kv;
    int n_remote_tokens;
    /* KV producer (prefill node): when it finishes normally its blocks stay held
     * (state FINISHED_*, table intact) until eng_sched_release_blocks, so a peer can
     * read them.  Aborts and errors release at once. */
    bool keep_blocks;
    bool blocks_held;
    /* parallel sampling group */
    eng_request_t *parent;       /* NULL for sequence 0 */
    int seq_index;               /* 0 .. group_size-1 */
    int group_size;              /* best_of (or n) */
    eng_request_t **children;    /* group_size - 1 siblings (owned by sequence 0) */
    bool forked;                 /* siblings have been forked off */
    /* scheduler bookkeeping (private to eng_sched.c) */
    eng_request_t *q_prev, *q_next;
    int q_which;                 /* which queue holds it (0 = none) */
    int batch_slot;              /* index in the current batch's seqs */
    int cow_slot;                /* index in the current batch's copies, -1 */
    uint64_t batch_step;         /* step the two above belong to */
    void *user;                  /* the engine's pointer */
};

/* Create a request.  Copies id, prompt and params (deep).  arrival_ns 0 = now.
 * When params->has_seed the RNG is seeded from it (sequence i of a group uses
 * seed + i); otherwise from engine_rng (may be NULL: then seed 0 - tests only).
 * Returns PD_ERR_INVAL for an empty prompt or a bad n/best_of (a group holds at
 * most 4096 sequences). */
pd_status_t eng_request_create(const char *id, const int32_t *prompt, int n_prompt,
                               const eng_sampling_params_t *params, int priority,
                               const char *cache_salt, uint64_t arrival_ns,
                               eng_rng_t *engine_rng, eng_request_t **req_p);
/* Frees the request and (for sequence 0) its siblings.  The block table must have
 * been released (eng_block_free) first - the scheduler does so when it finishes. */
void eng_request_destroy(eng_request_t *req);

/* Mark this request as disaggregated decode: the KV of its first n_remote prompt
 * tokens arrives by transfer (n_remote < n_prompt so logits can be computed
 * locally; typically n_prompt - 1).  Call before eng_sched_add. */
pd_status_t eng_request_set_remote_kv(eng_request_t *req, int n_remote);

/* Append a generated token (grows the array; amortised O(1)). */
pd_status_t eng_request_append_token(eng_request_t *req, int32_t token);

static inline int eng_request_n_output(const eng_request_t *req) { return req->n_tokens - req->n_prompt; }
static inline const int32_t *eng_request_output(const eng_request_t *req) { return req->tokens + req->n_prompt; }

/* Sequence i of a group (0 = the request itself). */
eng_request_t *eng_request_seq(eng_request_t *req, int i);
/* True when every sequence of req's group is finished. */
bool eng_request_group_finished(const eng_request_t *req);

#endif /* ENG_REQUEST_H */
