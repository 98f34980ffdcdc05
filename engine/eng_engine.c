/*
 * eng_engine.c - the engine thread and its thread-safe front: model, tokenizer and
 * template loading, KV sizing, and the loop
 *     commands (new requests, aborts) -> schedule -> copies -> forward -> sample ->
 *     scheduler update -> detokenize + stop strings -> output callbacks.
 *
 * Invariants: only the engine thread touches the scheduler, the forward, the sampler
 * and the requests after submission; other threads only append to the command queue
 * (under mu) and read the stats snapshot (under mu).  Every submitted request gets
 * exactly one event with request_done, after which it is destroyed.
 */
#include "eng_engine.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "eng_backend.h"
#ifdef PD_HAVE_CUDA
#include "eng_backend_cuda.h"
#endif
#include "eng_forward.h"
#include "eng_sampler.h"
#include "eng_sched.h"
#include "eng_stop.h"
#include "eng_template.h"
#include "eng_tokenizer.h"
#include "pd_log.h"
#include "pd_util.h"

/* ---- per-request engine state ---- */

typedef struct seq_state {
    eng_detok_t *detok;
    eng_stop_matcher_t *stop;
    bool done;
    /* logprobs of the token sampled this step */
    eng_logprob_t tok_lp;
    eng_logprob_t *tops;      /* params.logprobs entries */
    int n_top;
    bool has_new;             /* sampled this step, not yet emitted */
    bool plp_sent;            /* prompt logprobs delivered with an event */
} seq_state_t;

typedef struct ereq {
    struct ereq *next;        /* command queue link */
    eng_request_t *req;       /* group root (sequence 0) */
    eng_output_cb_t cb;
    void *user;
    int n_seqs;
    int n_live;               /* sequences not yet reported finished */
    seq_state_t *seqs;
    /* prompt_logprobs: plp[i] for prompt token i (i >= 1; [0] only names token 0), plp_tops[i * plp_k
     * ..] its top entries; plp_next is the next prompt token still to compute (chunks
     * and recomputes after a preemption only fill positions not done yet, so every
     * entry is computed exactly once) */
    eng_logprob_t *plp, *plp_tops;
    int plp_k, plp_next;
    /* disaggregation */
    bool kv_produce;          /* keep the prompt blocks under a lease at finish */
    bool has_remote;          /* consumer: remote (owned copies) is set */
    eng_remote_kv_t remote;
    bool kv_pending;          /* on kv_list waiting for its KV (admitted or not) */
    bool pulling;             /* a pull is in flight: its blocks must not be freed */
    bool abort_pending;       /* aborted while pulling: finish when the pull reports */
    bool held;                /* lease live: on kv_list until eng_engine_kv_release */
    uint32_t *lease_ids;      /* the leased block ids (for the response) */
    int n_lease_ids;
    const char *kv_load_failure;
    char *kv_error;
    struct ereq *kv_next;     /* kv_list link */
    int queued;               /* sequences counted in e->n_queued until its first step */
} ereq_t;

/* A kvxfer event for the engine thread. */
typedef struct kv_cmd {
    struct kv_cmd *next;
    int type;                 /* KV_CMD_RELEASE / KV_CMD_PULLED */
    bool ok, unsafe;
    char msg[256];
    char id[];
} kv_cmd_t;

enum { KV_CMD_RELEASE = 1, KV_CMD_PULLED = 2 };

typedef struct abort_cmd {
    struct abort_cmd *next;
    char id[];
} abort_cmd_t;

struct eng_engine {
    eng_engine_cfg_t cfg;
    eng_model_t *model;
    const eng_model_config_t *mc;
    eng_tok_t *tok;
    eng_template_t *tpl;
    char *bos_str, *eos_str;
    const eng_backend_ops_t *ops;
    eng_backend_t *be;
    eng_forward_t *fw;
    void *swap_base;          /* host swap space (ops->host_alloc), NULL when none */
    int64_t n_host_blocks;
    uint64_t swap_out_blocks, swap_in_blocks; /* engine thread; copied into stats */
    int32_t *swap_src, *swap_dst; /* scratch for one batch's swap pairs */
    int cap_swap;
    eng_sched_t *sched;
    eng_sampler_t *sampler;
    eng_sampling_defaults_t defaults;
    eng_rng_t rng;
    int32_t eos_ids[ENG_MAX_EOS + 1];
    int n_eos;
    int64_t max_model_len;
    int max_blocks_per_seq;

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ereq_t *q_head, *q_tail;  /* new requests */
    int n_queued;             /* waiting sequences for admission: reserved, queued, or in
                                 the scheduler before their first step (under mu) */
    abort_cmd_t *aborts;
    kv_cmd_t *kv_cmds, *kv_cmds_tail;
    eng_kv_hooks_t hooks;     /* under mu; copied by the engine thread per use */
    bool has_hooks;
    ereq_t *kv_list;          /* engine thread: held producers, consumers awaiting KV */
    bool last_empty;          /* the last step had nothing to run */
    uint64_t kv_load_failures[2];
    bool stopping;
    eng_engine_stats_t stats; /* snapshot, under mu */
    uint64_t finished_by_reason[4];
    uint64_t prompt_tokens_total, generation_tokens_total;

    /* forward scratch (engine thread) */
    int32_t *b_tokens, *b_pos, *b_seq, *b_tables, *b_ctx, *b_logit_rows, *sampled;
    int cap_sampled;
    int64_t *b_slots;
    int *seq_logit;           /* batch seq -> logits row or -1 */
    int32_t *seq_tok0;        /* batch seq -> index of its first token */
    int32_t *plp_rows, *plp_pos; /* prompt_logprobs: rows / positions of one group */
    ereq_t **plp_req;
    /* asynchronous output processing (cfg.async_output): the outputs of step N are
     * processed while step N+1 runs on the device */
    bool async;
    bool ids_host_alloc;      /* argmax_ids from ops->host_alloc (else malloc) */
    bool step_ids;            /* the step in flight brings ids back (device sampling) */
    struct out_item { ereq_t *er; int seq; } *outq; /* step N's sequences with an output */
    int n_outq, cap_outq;
    eng_request_t **out_roots; /* step N's requests (group roots), for the dead check */
    int n_out_roots, cap_out_roots;
    ereq_t **pending_dead;    /* done during step N+1: freed once that step has ended */
    int n_pending_dead, cap_pending_dead;
    float *logits, *row;      /* [max_seqs * V], [V] */
    /* device-side greedy (eng_forward_run_argmax): rows whose samples are all a plain
     * argmax get only the id back; PD_ENGINE_HOST_SAMPLING=1 turns it off (A/B runs) */
    bool device_argmax;
    /* device sampling of random rows (eng_forward_run_sample): on for device backends,
     * PD_ENGINE_DEVICE_SAMPLING=1 / 0 forces it on (CPU tests) / off */
    bool device_sampling;
    bool logits_host_alloc;   /* logits from ops->host_alloc (else malloc) */
    uint8_t *need_row;        /* [max_seqs]: logits row r must come back whole */
    uint8_t *row_mode;        /* [max_seqs]: ROW_FULL / ROW_ARGMAX / ROW_SAMPLE */
    kcpu_sample_params_t *sp; /* [max_seqs]: device sampling params of each row */
    float *su;                /* [max_seqs]: its uniform, drawn from the request's RNG */
    int32_t *argmax_ids;      /* [max_seqs] */
    pd_buf_t delta, text;
    /* PD_ENGINE_STEP_PROFILE=1: where the engine thread's time goes, by step kind
     * (decode only / mixed / prefill only), logged when the engine stops */
    bool prof_on;
    uint64_t prof_t0;
    struct step_prof {
        uint64_t steps, seqs, tokens, prefill_tokens;
        uint64_t ns_sched, ns_launch, ns_overlap, ns_finish, ns_post;
    } prof[3];
    uint64_t prof_ns_idle;
};

void eng_engine_cfg_init(eng_engine_cfg_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    eng_load_opts_init(&cfg->load);
    cfg->backend = "auto";
    cfg->gpu_memory_utilization = 0.9;
    cfg->block_size = 16;
    cfg->kv_cache_bytes = 4ull << 30;
    cfg->max_num_seqs = 256;
    cfg->max_num_batched_tokens = 8192;
    cfg->enable_chunked_prefill = true;
    cfg->enable_prefix_caching = true;
    cfg->max_logprobs = 20;
    cfg->cuda_graph_max_bs = 512;
    cfg->max_seq_len_to_capture = 8192;
    cfg->async_output = 1;
}

static void kv_lease(eng_engine_t *e, ereq_t *er);

/* ---- output ---- */

static const char *const reason_names[4] = {"stop", "length", "abort", "error"};

static int reason_index(eng_req_state_t st)
{
    switch (st) {
    case ENG_REQ_FINISHED_STOPPED: return 0;
    case ENG_REQ_FINISHED_LENGTH: return 1;
    case ENG_REQ_FINISHED_ABORTED: return 2;
    default: return 3;
    }
}

static double since(uint64_t t0, uint64_t t1) { return t0 && t1 >= t0 ? (double)(t1 - t0) * 1e-9 : 0.0; }

/* Emit one event for sequence i of er: its newest token (if has_new) and text, and the
 * finish when the sequence is done. */
static void emit(eng_engine_t *e, ereq_t *er, int i, bool finished, eng_req_state_t fstate,
                 const char *stop_str)
{
    seq_state_t *ss = &er->seqs[i];
    eng_request_t *sreq = eng_request_seq(er->req, i);
    eng_output_t out;
    int32_t tok = -1;

    memset(&out, 0, sizeof(out));
    out.request_id = er->req->id;
    out.seq_index = i;
    if (ss->has_new && eng_request_n_output(sreq) > 0) {
        tok = eng_request_output(sreq)[eng_request_n_output(sreq) - 1];
        out.token_ids = &tok;
        out.n_token_ids = 1;
        if (sreq->params.logprobs >= 0) {
            out.token_logprobs = &ss->tok_lp;
            out.tops = ss->tops;
            out.n_top = ss->n_top;
        }
    }
    if (er->plp && !ss->plp_sent && er->plp_next >= er->req->n_prompt) {
        ss->plp_sent = true;
        out.prompt_logprobs = er->plp;
        out.prompt_tops = er->plp_tops;
        out.n_prompt_logprobs = er->req->n_prompt;
        out.n_prompt_top = er->plp_k;
    }
    out.text = e->text.data ? e->text.data : "";
    out.text_len = e->text.len;
    out.n_prompt_tokens = er->req->n_prompt;
    out.n_cached_tokens = er->req->num_cached_tokens;
    out.n_output_tokens = eng_request_n_output(sreq);
    out.t_queue = since(er->req->t_arrival, er->req->t_scheduled);
    out.t_first_token = since(er->req->t_arrival, sreq->t_first_token ? sreq->t_first_token : er->req->t_first_token);
    if (finished && !ss->done && er->n_live == 1 && er->kv_produce && !er->held && er->req->blocks_held &&
        er->kv_error == NULL)
        kv_lease(e, er);
    if (finished && !ss->done) {
        ss->done = true;
        er->n_live--;
        out.finished = true;
        out.finish_reason = reason_names[reason_index(fstate)];
        out.stop_token = sreq->stop_token;
        out.stop_str = stop_str;
        out.request_done = er->n_live == 0;
        if (out.request_done) {
            out.kv_leased = er->held;
            out.kv_block_ids = er->held ? er->lease_ids : NULL;
            out.n_kv_block_ids = er->held ? er->n_lease_ids : 0;
            out.kv_load_failure = er->kv_load_failure;
            out.kv_error = er->kv_error;
        }
        pthread_mutex_lock(&e->mu);
        e->finished_by_reason[reason_index(fstate)]++;
        pthread_mutex_unlock(&e->mu);
    }
    ss->has_new = false;
    er->cb(er->user, &out);
}

/* A request stops counting as waiting (admission, eng_engine_reserve). */
static void unqueue(eng_engine_t *e, int n)
{
    if (n == 0)
        return;
    pthread_mutex_lock(&e->mu);
    e->n_queued = e->n_queued > n ? e->n_queued - n : 0;
    pthread_mutex_unlock(&e->mu);
}

static void ereq_free(eng_engine_t *e, ereq_t *er)
{
    unqueue(e, er->queued);
    for (int i = 0; i < er->n_seqs; i++) {
        eng_detok_destroy(er->seqs[i].detok);
        eng_stop_matcher_destroy(er->seqs[i].stop);
        free(er->seqs[i].tops);
    }
    free(er->seqs);
    free(er->plp);
    free(er->plp_tops);
    if (er->req)
        eng_request_destroy(er->req);
    free((char *)er->remote.engine_id);
    free((char *)er->remote.host);
    free((char *)er->remote.request_id);
    free((uint32_t *)er->remote.block_ids);
    free(er->lease_ids);
    free(er->kv_error);
    free(er);
}

/* ---- disaggregation helpers (engine thread) ---- */

static void kv_list_remove(eng_engine_t *e, ereq_t *er)
{
    for (ereq_t **pp = &e->kv_list; *pp; pp = &(*pp)->kv_next) {
        if (*pp == er) {
            *pp = er->kv_next;
            er->kv_next = NULL;
            return;
        }
    }
}

static void kv_list_push(eng_engine_t *e, ereq_t *er)
{
    er->kv_next = e->kv_list;
    e->kv_list = er;
}

static ereq_t *kv_list_find(eng_engine_t *e, const char *id)
{
    for (ereq_t *er = e->kv_list; er; er = er->kv_next)
        if (er->req && strcmp(er->req->id, id) == 0)
            return er;
    return NULL;
}

static bool get_hooks(eng_engine_t *e, eng_kv_hooks_t *h)
{
    bool ok;
    pthread_mutex_lock(&e->mu);
    ok = e->has_hooks;
    if (ok)
        *h = e->hooks;
    pthread_mutex_unlock(&e->mu);
    return ok;
}

/* A consumer request that will not read its remote KV: tell the producer to let the
 * lease go now (a zero-block pull = acquire + release) instead of at expiry. */
static void kv_drop_remote(eng_engine_t *e, ereq_t *er)
{
    eng_kv_hooks_t h;
    if (!er->has_remote)
        return;
    er->has_remote = false;
    if (get_hooks(e, &h) && h.pull)
        (void)h.pull(h.arg, er->req ? er->req->id : NULL, &er->remote, NULL, NULL, 0, true);
}

static void post_kv_cmd(eng_engine_t *e, int type, const char *id, bool ok, bool unsafe, const char *msg)
{
    size_t n = strlen(id);
    kv_cmd_t *c = calloc(1, sizeof(*c) + n + 1);
    if (c == NULL) {
        PD_LOG_ERR("engine: out of memory queueing a KV event for %s; its blocks stay held", id);
        return;
    }
    c->type = type;
    c->ok = ok;
    c->unsafe = unsafe;
    snprintf(c->msg, sizeof(c->msg), "%s", msg ? msg : "");
    memcpy(c->id, id, n + 1);
    pthread_mutex_lock(&e->mu);
    if (e->kv_cmds_tail)
        e->kv_cmds_tail->next = c;
    else
        e->kv_cmds = c;
    e->kv_cmds_tail = c;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void eng_engine_kv_release(eng_engine_t *e, const char *req_id) { post_kv_cmd(e, KV_CMD_RELEASE, req_id, true, false, NULL); }

void eng_engine_kv_pulled(eng_engine_t *e, const char *req_id, bool ok, bool unsafe, const char *msg)
{
    post_kv_cmd(e, KV_CMD_PULLED, req_id, ok, unsafe, msg);
}

void eng_engine_set_kv_hooks(eng_engine_t *e, const eng_kv_hooks_t *hooks)
{
    pthread_mutex_lock(&e->mu);
    e->has_hooks = hooks != NULL;
    if (hooks)
        e->hooks = *hooks;
    pthread_mutex_unlock(&e->mu);
}

/* A producer request finished with its blocks held: lease the prompt's blocks. */
static void kv_lease(eng_engine_t *e, ereq_t *er)
{
    eng_request_t *req = er->req;
    eng_kv_hooks_t h;
    int bs = e->cfg.block_size;
    int n = (req->n_prompt + bs - 1) / bs;
    pd_status_t st = PD_ERR_UNSUPPORTED;

    if (n > req->table.n)
        n = req->table.n;
    er->lease_ids = malloc((size_t)(n > 0 ? n : 1) * sizeof(uint32_t));
    if (er->lease_ids == NULL) {
        st = PD_ERR_NOMEM;
    } else {
        for (int i = 0; i < n; i++)
            er->lease_ids[i] = (uint32_t)req->table.ids[i];
        er->n_lease_ids = n;
        if (get_hooks(e, &h) && h.lease)
            st = h.lease(h.arg, req->id, er->lease_ids, (size_t)n);
    }
    if (st == PD_OK) {
        er->held = true;
        kv_list_push(e, er);
        PD_LOG_REQ(DEBUG, req->id, "holding %d KV blocks for a remote decode", n);
        return;
    }
    PD_LOG_REQ(WARN, req->id, "cannot hold the KV blocks for a remote decode (%s); freeing them", pd_status_str(st));
    char msg[160];
    snprintf(msg, sizeof(msg), "cannot hold the KV blocks for a remote decode (%s)", pd_status_str(st));
    er->kv_error = strdup(msg);
    eng_sched_release_blocks(e->sched, req);
}

/* Finish every live sequence of er with state st (abort/error), emitting each. */
static void finish_all(eng_engine_t *e, ereq_t *er, eng_req_state_t st)
{
    for (int i = 0; i < er->n_seqs && er->n_live > 0; i++) {
        if (er->seqs[i].done)
            continue;
        pd_buf_reset(&e->text);
        emit(e, er, i, true, st, NULL);
    }
}

/* Detokenize sequence i's newest token, run the stop strings, emit.  Returns true when
 * a stop string ended the sequence. */
static void process_seq(eng_engine_t *e, ereq_t *er, int i)
{
    seq_state_t *ss = &er->seqs[i];
    eng_request_t *sreq = eng_request_seq(er->req, i);
    bool finished = ENG_REQ_IS_FINISHED(sreq->state);
    int matched = -1;
    const char *stop_str = NULL;

    if (ss->done)
        return;
    pd_buf_reset(&e->text);
    if (ss->detok && ss->has_new && eng_request_n_output(sreq) > 0) {
        int32_t tok = eng_request_output(sreq)[eng_request_n_output(sreq) - 1];
        /* an eos or stop token that ends the sequence is not part of the text (vLLM) */
        bool hidden_stop = finished && sreq->stop_token == tok && sreq->state == ENG_REQ_FINISHED_STOPPED;
        pd_buf_reset(&e->delta);
        if (!hidden_stop)
            eng_detok_step(ss->detok, tok, &e->delta);
        if (finished)
            eng_detok_finish(ss->detok, &e->delta);
        /* stop strings count only past min_tokens (vLLM) */
        if (ss->stop && eng_request_n_output(sreq) > sreq->params.min_tokens) {
            eng_stop_matcher_feed(ss->stop, e->delta.data ? e->delta.data : "", e->delta.len, &e->text, &matched);
            if (matched >= 0) {
                stop_str = sreq->params.stop[matched];
                sreq->stop_str_index = matched;
                if (!finished) {
                    eng_sched_finish(e->sched, sreq, ENG_REQ_FINISHED_STOPPED);
                    finished = true;
                }
            } else if (finished) {
                eng_stop_matcher_flush(ss->stop, &e->text);
            }
        } else {
            pd_buf_append(&e->text, e->delta.data ? e->delta.data : "", e->delta.len);
        }
    }
    emit(e, er, i, finished, sreq->state, stop_str);
}

/* ---- commands ---- */

static void take_commands(eng_engine_t *e, ereq_t **new_p, abort_cmd_t **aborts_p, kv_cmd_t **kv_p)
{
    *new_p = e->q_head;
    *aborts_p = e->aborts;
    *kv_p = e->kv_cmds;
    e->q_head = e->q_tail = NULL;
    e->aborts = NULL;
    e->kv_cmds = e->kv_cmds_tail = NULL;
}

/* A retired request (every sequence reported): free it, unless its blocks are held
 * for a peer (then it stays on kv_list without its per-sequence state). */
static void ereq_retire(eng_engine_t *e, ereq_t *er)
{
    if (!er->held && !er->abort_pending) {
        ereq_free(e, er);
        return;
    }
    for (int i = 0; i < er->n_seqs; i++) {
        eng_detok_destroy(er->seqs[i].detok);
        eng_stop_matcher_destroy(er->seqs[i].stop);
        free(er->seqs[i].tops);
    }
    free(er->seqs);
    er->seqs = NULL;
    er->n_seqs = 0;
}

static void apply_kv_cmd(eng_engine_t *e, const kv_cmd_t *c)
{
    ereq_t *er = kv_list_find(e, c->id);
    if (c->type == KV_CMD_RELEASE) {
        if (er == NULL || !er->held) {
            PD_LOG_REQ(WARN, c->id, "lease ended for a request that holds no blocks");
            return;
        }
        kv_list_remove(e, er);
        er->held = false;
        eng_sched_release_blocks(e->sched, er->req);
        PD_LOG_REQ(DEBUG, c->id, "lease over; %d KV blocks freed", er->n_lease_ids);
        ereq_free(e, er);
        return;
    }
    if (er == NULL || !er->pulling) {
        PD_LOG_REQ(DEBUG, c->id, "KV pull result for a request that no longer waits for it");
        return;
    }
    er->pulling = false;
    er->kv_pending = false;
    kv_list_remove(e, er);
    if (c->unsafe)
        PD_LOG_REQ(ERR, c->id, "the transport could not cancel its writes into the local KV blocks; they are "
                   "reused anyway (known limit)");
    if (er->abort_pending) {
        er->abort_pending = false;
        eng_sched_finish(e->sched, er->req, ENG_REQ_FINISHED_ABORTED);
        ereq_free(e, er);
        return;
    }
    if (c->ok) {
        PD_LOG_REQ(DEBUG, c->id, "remote KV arrived (%d prompt tokens)", er->req->n_remote_tokens);
        eng_sched_remote_kv_ready(e->sched, er->req, true);
        return;
    }
    eng_kv_hooks_t h;
    bool recompute = !get_hooks(e, &h) || h.recompute_on_failure;
    pthread_mutex_lock(&e->mu);
    e->kv_load_failures[recompute ? 0 : 1]++;
    pthread_mutex_unlock(&e->mu);
    if (recompute) {
        PD_LOG_REQ(WARN, c->id, "KV load failed (%s); kv_load_failure_policy recompute: computing the prompt here",
                   c->msg);
        er->kv_load_failure = "recomputed";
        eng_sched_remote_kv_ready(e->sched, er->req, false);
        return;
    }
    PD_LOG_REQ(WARN, c->id, "KV load failed (%s); kv_load_failure_policy fail: the request fails", c->msg);
    char msg[400];
    snprintf(msg, sizeof(msg), "KV transfer from the prefill node failed: %s", c->msg[0] ? c->msg : "unknown error");
    free(er->kv_error);
    er->kv_error = strdup(msg);
    eng_sched_finish(e->sched, er->req, ENG_REQ_FINISHED_ERROR);
    finish_all(e, er, ENG_REQ_FINISHED_ERROR);
    ereq_free(e, er);
}

/* The scheduler reserved blocks for a WAITING_FOR_REMOTE_KV request: start its pull
 * of the blocks the local prefix cache does not hold, the partial last one included.
 * Remote block i holds prompt tokens [i * bs, (i + 1) * bs), like local block i. */
static void start_pull(eng_engine_t *e, eng_request_t *req)
{
    ereq_t *er = req->user;
    eng_kv_hooks_t h;
    int bs = e->cfg.block_size;
    int from = req->num_cached_tokens / bs, full = req->n_remote_tokens / bs;
    int to = (req->n_remote_tokens + bs - 1) / bs;
    char msg[200];
    pd_status_t st;

    if (er == NULL)
        return;
    er->pulling = true;
    if (!get_hooks(e, &h) || h.pull == NULL) {
        post_kv_cmd(e, KV_CMD_PULLED, req->id, false, false, "KV transfer is not configured");
        return;
    }
    if (from >= full) {
        /* the prefix cache holds every full remote block: the partial block's few
         * tokens are cheaper to compute here than a pull; only release the lease */
        req->n_remote_tokens = full * bs;
        er->has_remote = false;
        (void)h.pull(h.arg, req->id, &er->remote, NULL, NULL, 0, true);
        post_kv_cmd(e, KV_CMD_PULLED, req->id, true, false, NULL);
        return;
    }
    if (to > er->remote.n_block_ids || to > req->table.n) {
        snprintf(msg, sizeof(msg), "the prefill node sent %d block ids, the prompt needs %d", er->remote.n_block_ids, to);
        kv_drop_remote(e, er);
        post_kv_cmd(e, KV_CMD_PULLED, req->id, false, false, msg);
        return;
    }
    uint32_t *ids = malloc((size_t)(to - from) * 2 * sizeof(uint32_t));
    if (ids == NULL) {
        kv_drop_remote(e, er);
        post_kv_cmd(e, KV_CMD_PULLED, req->id, false, false, "out of memory");
        return;
    }
    for (int i = from; i < to; i++) {
        ids[i - from] = er->remote.block_ids[i];
        ids[(to - from) + (i - from)] = (uint32_t)req->table.ids[i];
    }
    st = h.pull(h.arg, req->id, &er->remote, ids, ids + (to - from), (size_t)(to - from), false);
    free(ids);
    er->has_remote = false; /* the pull releases (or aborts) the remote lease */
    if (st != PD_OK) {
        snprintf(msg, sizeof(msg), "cannot start the KV pull (%s)", pd_status_str(st));
        post_kv_cmd(e, KV_CMD_PULLED, req->id, false, false, msg);
    }
}

static void apply_abort(eng_engine_t *e, const char *id)
{
    eng_request_t *req = eng_sched_find(e->sched, id);
    ereq_t *er;
    if (req == NULL)
        return;
    while (req->parent)
        req = req->parent;
    er = req->user;
    if (er == NULL)
        return;
    if (er->pulling) {
        /* the transfer may still write into the blocks: answer the client now, free
         * the blocks when the pull reports */
        finish_all(e, er, ENG_REQ_FINISHED_ABORTED);
        er->abort_pending = true;
        return;
    }
    if (er->kv_pending) {
        kv_list_remove(e, er);
        er->kv_pending = false;
    }
    kv_drop_remote(e, er);
    eng_sched_finish(e->sched, req, ENG_REQ_FINISHED_ABORTED);
    finish_all(e, er, ENG_REQ_FINISHED_ABORTED);
    ereq_free(e, er);
}

static void admit(eng_engine_t *e, ereq_t *er)
{
    pd_status_t st;
    if (er->has_remote && er->plp) {
        /* prompt_logprobs need the logits of every prompt position: compute the prompt
         * here (the producer's KV would skip them) and let the remote lease go */
        PD_LOG_REQ(INFO, er->req->id, "prompt_logprobs: computing the prompt locally instead of pulling its KV");
        kv_drop_remote(e, er);
    }
    if (er->has_remote) {
        /* Pull every prompt token's KV but the last one's, as vLLM's NixlConnector
         * does: the partial last block comes whole (the producer leased it; its slots
         * past the prompt are never read), and only the last prompt token, whose
         * logits we need, is computed here.  So the request's first step is a
         * one-token step like any decode step (CUDA-graph shaped), not a chunk of up
         * to block_size tokens.  Short prompts (under one block + 1 token) are
         * computed whole; when the prefix cache already holds every full block,
         * start_pull computes the partial block's tokens here instead of pulling. */
        int bs = e->cfg.block_size;
        int n_pull = er->req->n_prompt - 1;
        if (n_pull >= bs && eng_request_set_remote_kv(er->req, n_pull) == PD_OK) {
            er->kv_pending = true;
            kv_list_push(e, er);
        } else {
            kv_drop_remote(e, er);
        }
    }
    st = eng_sched_add(e->sched, er->req);
    if (st != PD_OK) {
        PD_LOG_REQ(WARN, er->req->id, "cannot schedule: %s", pd_status_str(st));
        if (er->kv_pending) {
            kv_list_remove(e, er);
            er->kv_pending = false;
        }
        kv_drop_remote(e, er);
        finish_all(e, er, ENG_REQ_FINISHED_ERROR);
        ereq_free(e, er);
    }
}

/* ---- one step ---- */

/* Compute the logprobs of what the prompt positions of this batch predict, for the
 * requests that asked for prompt_logprobs: the logits at position p give prompt token
 * p + 1.  Rows go through eng_forward_logits max_seqs at a time into e->logits (free
 * again once the sampling loop is done). */
static pd_status_t plp_flush(eng_engine_t *e, int n)
{
    const int64_t V = e->mc->vocab_size;
    pd_status_t st;
    if (n == 0)
        return PD_OK;
    if ((st = eng_forward_logits(e->fw, e->plp_rows, n, e->logits)) != PD_OK)
        return st;
    for (int r = 0; r < n; r++) {
        ereq_t *q = e->plp_req[r];
        int tok = e->plp_pos[r] + 1;
        st = eng_sampler_logprobs(e->sampler, e->logits + (size_t)r * V, q->req->tokens[tok], q->plp_k,
                                  q->plp_k > 0 ? q->plp_tops + (size_t)tok * (size_t)q->plp_k : NULL, &q->plp[tok]);
        if (st != PD_OK) { /* non-finite logits: report the token as impossible */
            PD_LOG_REQ(WARN, q->req->id, "prompt_logprobs: non-finite logits at position %d", tok - 1);
            q->plp[tok] = (eng_logprob_t){q->req->tokens[tok], -INFINITY, (int)V};
        }
        if (tok + 1 > q->plp_next)
            q->plp_next = tok + 1;
    }
    return PD_OK;
}

static pd_status_t prompt_logprobs_step(eng_engine_t *e, const eng_batch_t *b)
{
    const int S = e->cfg.max_num_seqs;
    int n = 0;
    pd_status_t st;

    for (int s = 0; s < b->n_seqs; s++) {
        const eng_batch_seq_t *bq = &b->seqs[s];
        ereq_t *er = bq->req->user;
        if (!bq->want_prompt_logits || er == NULL || er->plp == NULL || bq->req->parent != NULL)
            continue;
        /* positions p of this chunk whose next token p + 1 is a prompt token not done yet */
        int lo = PD_MAX(bq->start_pos, er->plp_next - 1);
        int hi = PD_MIN(bq->start_pos + bq->n_tokens, bq->req->n_prompt - 1);
        for (int p = lo; p < hi; p++) {
            if (n == S) {
                if ((st = plp_flush(e, n)) != PD_OK)
                    return st;
                n = 0;
            }
            e->plp_rows[n] = e->seq_tok0[s] + (p - bq->start_pos);
            e->plp_pos[n] = p;
            e->plp_req[n] = er;
            n++;
        }
    }
    return plp_flush(e, n);
}

/* Copy one list of swap pairs (device -> host when out) through the backend. */
static pd_status_t do_swap(eng_engine_t *e, const eng_block_copy_t *pairs, int n, bool out)
{
    pd_status_t st;
    if (n <= 0)
        return PD_OK;
    if (e->swap_base == NULL) {
        PD_LOG_ERR("engine: the scheduler swapped blocks but there is no swap space");
        return PD_ERR_INTERNAL;
    }
    if (n > e->cap_swap) {
        int32_t *ns = realloc(e->swap_src, (size_t)n * 2 * sizeof(int32_t));
        if (ns == NULL)
            return PD_ERR_NOMEM;
        e->swap_src = ns;
        e->swap_dst = ns + n;
        e->cap_swap = n;
    }
    for (int i = 0; i < n; i++) {
        e->swap_src[i] = pairs[i].src;
        e->swap_dst[i] = pairs[i].dst;
    }
    st = e->ops->kv_swap(e->be, eng_forward_kv_layout(e->fw), eng_forward_kv_base(e->fw), e->swap_base,
                         e->n_host_blocks, e->swap_src, e->swap_dst, n, out);
    if (st != PD_OK) {
        PD_LOG_ERR("engine: swapping %d KV blocks %s failed: %s", n, out ? "out" : "in", pd_status_str(st));
        return st;
    }
    if (out)
        e->swap_out_blocks += (uint64_t)n;
    else
        e->swap_in_blocks += (uint64_t)n;
    return PD_OK;
}

/* The sampling context of sample j of a batch sequence (what eng_sampler_sample reads). */
static void sample_ctx(const eng_engine_t *e, eng_request_t *sreq, eng_sample_ctx_t *ctx)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->params = &sreq->params;
    ctx->prompt = sreq->tokens;
    ctx->n_prompt = sreq->n_prompt;
    ctx->output = eng_request_output(sreq);
    ctx->n_output = eng_request_n_output(sreq);
    ctx->rng = &sreq->rng;
    ctx->eos_ids = e->eos_ids;
    ctx->n_eos = e->n_eos;
}

enum { ROW_FULL = 0, ROW_ARGMAX, ROW_SAMPLE };

/* How the logits row of a batch sequence is used: ROW_ARGMAX when no sample reads it (no
 * request state) or every sample is a plain argmax; ROW_SAMPLE when its one sample can
 * be drawn on the backend (then *sp_p and *u_p are set, and the uniform is drawn from
 * the request's RNG now); else ROW_FULL (the whole row comes back to the host). */
static int row_mode(const eng_engine_t *e, const eng_batch_seq_t *bq, kcpu_sample_params_t *sp_p, float *u_p)
{
    eng_sample_ctx_t ctx;
    bool argmax = true;
    if (bq->req->user == NULL)
        return ROW_ARGMAX;
    for (int j = 0; j < bq->n_samples; j++) {
        sample_ctx(e, eng_request_seq(bq->req, j), &ctx);
        argmax &= eng_sampler_argmax_only(&ctx);
    }
    if (argmax)
        return ROW_ARGMAX;
    if (!e->device_sampling || bq->n_samples != 1)
        return ROW_FULL;
    eng_request_t *sreq = eng_request_seq(bq->req, 0);
    sample_ctx(e, sreq, &ctx);
    if (!eng_sampler_device_ok(&ctx))
        return ROW_FULL;
    const eng_sampling_params_t *p = ctx.params;
    float u = (float)eng_rng_uniform(&sreq->rng);
    sp_p->temperature = p->temperature;
    sp_p->top_k = p->top_k > 0 ? p->top_k : 0;
    sp_p->top_p = p->top_p;
    sp_p->min_p = p->min_p;
    *u_p = u < 1.0f ? u : nextafterf(1.0f, 0.0f); /* the double may round up to 1 */
    return ROW_SAMPLE;
}

/* A step in two halves: run_step_launch queues the forward (and its copies back), then
 * run_step_finish waits for it, samples and updates the scheduler. */
static pd_status_t reserve_outputs(eng_engine_t *e, const eng_batch_t *b);

static pd_status_t run_step_launch(eng_engine_t *e, eng_batch_t *b)
{
    const int bs = e->cfg.block_size, MB = e->max_blocks_per_seq;
    eng_fwd_batch_t fb;
    int T = 0, n_logits = 0;
    pd_status_t st;

    if ((st = reserve_outputs(e, b)) != PD_OK)
        return st;

    /* before the forward, in this order: swap out (the freed blocks may be handed
     * out again in this very step), swap in, then the copy-on-write copies */
    if ((st = do_swap(e, b->swap_out, b->n_swap_out, true)) != PD_OK ||
        (st = do_swap(e, b->swap_in, b->n_swap_in, false)) != PD_OK)
        return st;
    if (b->n_copies > 0) {
        for (int i = 0; i < b->n_copies; i++) {
            int32_t s = b->copies[i].src, d = b->copies[i].dst;
            if ((st = eng_forward_copy_blocks(e->fw, &s, &d, 1)) != PD_OK)
                return st;
        }
    }
    for (int s = 0; s < b->n_seqs; s++) {
        const eng_batch_seq_t *bq = &b->seqs[s];
        e->seq_tok0[s] = T;
        for (int j = 0; j < bq->n_tokens; j++, T++) {
            int pos = bq->start_pos + j;
            e->b_tokens[T] = bq->tokens[j];
            e->b_pos[T] = pos;
            e->b_seq[T] = s;
            e->b_slots[T] = (int64_t)bq->block_table[pos / bs] * bs + pos % bs;
        }
        memset(e->b_tables + (size_t)s * MB, 0, (size_t)MB * sizeof(int32_t));
        memcpy(e->b_tables + (size_t)s * MB, bq->block_table, (size_t)PD_MIN(bq->n_blocks, MB) * sizeof(int32_t));
        e->b_ctx[s] = bq->start_pos + bq->n_tokens;
        e->seq_logit[s] = -1;
        if (bq->want_logits && bq->n_samples > 0) {
            e->seq_logit[s] = n_logits;
            e->b_logit_rows[n_logits++] = T - 1;
        }
    }
    fb.n_tokens = T;
    fb.tokens = e->b_tokens;
    fb.positions = e->b_pos;
    fb.tok_seq = e->b_seq;
    fb.slots = e->b_slots;
    fb.n_seqs = b->n_seqs;
    fb.block_tables = e->b_tables;
    fb.context_lens = e->b_ctx;
    fb.n_logits = n_logits;
    fb.logit_rows = e->b_logit_rows;
    /* device-side greedy: when some rows only need their argmax, the forward computes
     * it on the backend and copies back the ids and only the other rows */
    int n_need = n_logits, n_sample = 0;
    if (e->device_argmax && n_logits > 0) {
        const kcpu_sample_params_t greedy = {0.0f, 0, 1.0f, 0.0f};
        n_need = 0;
        for (int s = 0; s < b->n_seqs; s++)
            if (e->seq_logit[s] >= 0) {
                int r = e->seq_logit[s];
                e->sp[r] = greedy;
                e->su[r] = 0.0f;
                e->row_mode[r] = (uint8_t)row_mode(e, &b->seqs[s], &e->sp[r], &e->su[r]);
                e->need_row[r] = e->row_mode[r] == ROW_FULL;
                n_need += e->row_mode[r] == ROW_FULL;
                n_sample += e->row_mode[r] == ROW_SAMPLE;
            }
    }
    e->step_ids = n_need < n_logits;
    if (e->step_ids)
        return eng_forward_launch_sample(e->fw, &fb, e->need_row, n_sample > 0 ? e->sp : NULL, e->su, e->logits,
                                         e->argmax_ids);
    return eng_forward_launch_sample(e->fw, &fb, NULL, NULL, NULL, e->logits, NULL);
}

static pd_status_t run_step_finish(eng_engine_t *e, eng_batch_t *b)
{
    const int64_t V = e->mc->vocab_size;
    const int32_t *ids = e->step_ids ? e->argmax_ids : NULL;
    pd_status_t st;

    if ((st = eng_forward_wait(e->fw)) != PD_OK)
        return st;
    if (b->n_samples > e->cap_sampled) {
        int32_t *ns = realloc(e->sampled, (size_t)b->n_samples * sizeof(int32_t));
        if (ns == NULL)
            return PD_ERR_NOMEM;
        e->sampled = ns;
        e->cap_sampled = b->n_samples;
    }

    /* sample */
    for (int s = 0; s < b->n_seqs; s++) {
        const eng_batch_seq_t *bq = &b->seqs[s];
        ereq_t *er = bq->req->user;
        if (e->seq_logit[s] < 0 || er == NULL)
            continue;
        for (int j = 0; j < bq->n_samples; j++) {
            eng_request_t *sreq = eng_request_seq(bq->req, j);
            seq_state_t *ss = &er->seqs[sreq->seq_index];
            eng_sample_ctx_t ctx;
            eng_sample_result_t res;
            sample_ctx(e, sreq, &ctx);
            memset(&res, 0, sizeof(res));
            res.top = sreq->params.logprobs > 0 ? ss->tops : NULL;
            if (ids != NULL && !e->need_row[e->seq_logit[s]]) {
                /* the token the backend picked: the argmax (row_mode said every sample
                 * of this row is one, exactly what eng_sampler_sample would return) or
                 * the device draw with the uniform row_mode took from this RNG */
                eng_sampler_argmax_result(ids[e->seq_logit[s]], &res);
                st = PD_OK;
            } else {
                memcpy(e->row, e->logits + (size_t)e->seq_logit[s] * V, (size_t)V * sizeof(float));
                st = eng_sampler_sample(e->sampler, e->row, &ctx, &res);
            }
            if (st != PD_OK) {
                /* every token masked (e.g. allowed_token_ids all banned): end this sequence */
                PD_LOG_REQ(WARN, sreq->id, "nothing can be sampled; finishing with an error");
                res.token = e->n_eos ? e->eos_ids[0] : 0;
            }
            e->sampled[bq->sample_offset + j] = res.token;
            ss->tok_lp.token = res.token;
            ss->tok_lp.logprob = res.logprob;
            ss->tok_lp.rank = res.rank;
            ss->n_top = res.n_top;
            ss->has_new = true;
            sreq->cumulative_logprob += res.logprob;
        }
    }
    if ((st = prompt_logprobs_step(e, b)) != PD_OK)
        return st;
    return eng_sched_update(e->sched, b, e->sampled);
}

static void update_stats(eng_engine_t *e, const eng_batch_t *b)
{
    eng_sched_stats_t ss;
    uint64_t prompt = 0, gen = 0;
    for (int s = 0; b && s < b->n_seqs; s++) {
        const eng_batch_seq_t *bq = &b->seqs[s];
        if (bq->is_prefill)
            prompt += (uint64_t)bq->n_tokens;
        gen += (uint64_t)bq->n_samples;
    }
    eng_forward_graph_stats_t gs = {0};
    eng_sched_get_stats(e->sched, &ss);
    if (e->fw)
        eng_forward_graph_stats(e->fw, &gs);
    pthread_mutex_lock(&e->mu);
    e->prompt_tokens_total += prompt;
    e->generation_tokens_total += gen;
    e->stats.n_running = ss.n_running;
    e->stats.n_waiting = ss.n_waiting + ss.n_remote_waiting;
    e->stats.n_swapped = ss.n_swapped;
    e->stats.kv_usage = ss.blocks.usage;
    e->stats.n_blocks = ss.blocks.n_blocks;
    e->stats.n_free_blocks = ss.blocks.n_free;
    e->stats.prefix_queries = ss.blocks.prefix_queries;
    e->stats.prefix_hits = ss.blocks.prefix_hits;
    e->stats.n_preemptions = ss.n_preemptions;
    e->stats.n_host_blocks = ss.blocks.n_host_blocks;
    e->stats.n_host_free_blocks = ss.blocks.n_host_free;
    e->stats.swap_out_blocks = e->swap_out_blocks;
    e->stats.swap_in_blocks = e->swap_in_blocks;
    e->stats.n_steps = ss.n_steps;
    e->stats.n_kv_held = eng_sched_num_held(e->sched);
    e->stats.n_graph_sizes = gs.n_sizes;
    e->stats.n_graphs = gs.n_captured;
    pthread_mutex_unlock(&e->mu);
}

/* ---- outputs of a step ---- */

static bool grow_arr(void **arr, int *cap, int need, size_t elem)
{
    if (need <= *cap)
        return true;
    int nc = *cap ? *cap : 64;
    while (nc < need)
        nc *= 2;
    void *n = realloc(*arr, (size_t)nc * elem);
    if (n == NULL)
        return false;
    *arr = n;
    *cap = nc;
    return true;
}

static eng_request_t *root_of(eng_request_t *r)
{
    while (r->parent)
        r = r->parent;
    return r;
}

/* Room, before step b runs, for what it will note (snapshot_outputs) and free
 * (flush_outputs), so that neither can fail once the step has computed: the update
 * finishes at most the batch's sequences and the children it forks (one per sample). */
static pd_status_t reserve_outputs(eng_engine_t *e, const eng_batch_t *b)
{
    if (!grow_arr((void **)&e->outq, &e->cap_outq, 2 * b->n_samples + b->n_seqs, sizeof(*e->outq)) ||
        !grow_arr((void **)&e->out_roots, &e->cap_out_roots, b->n_seqs, sizeof(*e->out_roots)) ||
        !grow_arr((void **)&e->pending_dead, &e->cap_pending_dead, e->n_pending_dead + e->n_out_roots + b->n_seqs,
                  sizeof(*e->pending_dead)))
        return PD_ERR_NOMEM;
    return PD_OK;
}

/* Note what step b has to report, before the scheduler's next step reuses b: every
 * sequence that sampled, then the requests the update finished, and the requests of the
 * batch (for the dead check).  reserve_outputs made the room. */
static void snapshot_outputs(eng_engine_t *e, const eng_batch_t *b)
{
    e->n_outq = e->n_out_roots = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const eng_batch_seq_t *bq = &b->seqs[s];
        ereq_t *er = bq->req->user;
        if (er != NULL)
            for (int j = 0; j < bq->n_samples; j++)
                e->outq[e->n_outq++] = (struct out_item){er, eng_request_seq(bq->req, j)->seq_index};
    }
    for (int f = 0; f < b->n_finished; f++) {
        ereq_t *er = root_of(b->finished[f])->user;
        if (er != NULL)
            e->outq[e->n_outq++] = (struct out_item){er, b->finished[f]->seq_index};
    }
    for (int s = 0; s < b->n_seqs; s++) {
        eng_request_t *root = root_of(b->seqs[s].req);
        if (root->user != NULL) /* not one already done (freed after this step) */
            e->out_roots[e->n_out_roots++] = root;
    }
}

static void retire_pending(eng_engine_t *e)
{
    for (int i = 0; i < e->n_pending_dead; i++)
        ereq_retire(e, e->pending_dead[i]);
    e->n_pending_dead = 0;
}

/* Report the noted outputs (detokenize, stop strings, emit), then free the requests
 * whose every sequence is done.  in_flight: a later step is on the device and may hold
 * those requests (a stop string found here ends a sequence that step computes one more
 * token for, which its update then drops): they are freed by retire_pending once it
 * has ended. */
static void flush_outputs(eng_engine_t *e, bool in_flight)
{
    for (int i = 0; i < e->n_outq; i++)
        if (e->outq[i].er->seqs != NULL && !e->outq[i].er->seqs[e->outq[i].seq].done)
            process_seq(e, e->outq[i].er, e->outq[i].seq);
    for (int i = 0; i < e->n_out_roots; i++) {
        eng_request_t *root = e->out_roots[i];
        ereq_t *er = root->user;
        /* collected first, freed after the walk: a group's other sequences later in the
         * list point into the request (room: reserve_outputs) */
        if (er && er->n_live == 0 && eng_request_group_finished(root)) {
            root->user = NULL; /* a group appears once per sequence: collect it once */
            e->pending_dead[e->n_pending_dead++] = er;
        }
    }
    e->n_outq = e->n_out_roots = 0;
    if (!in_flight)
        retire_pending(e);
}

/* the step profile's clock: 0 (not read) unless PD_ENGINE_STEP_PROFILE is on */
static inline uint64_t prof_now(const eng_engine_t *e) { return e->prof_on ? pd_now_ns() : 0; }

static void step_prof_log(const eng_engine_t *e)
{
    static const char *kind[3] = {"decode", "mixed", "prefill"};
    double total = (double)(pd_now_ns() - e->prof_t0) / 1e9;
    PD_LOG_INFO("engine step profile: %.2f s since start, %.2f s idle (no step to run); per step kind: steps, "
                "mean seqs, mean tokens (prefill), ms per step = schedule + launch + output overlap + "
                "wait/sample/update + bookkeeping, share of the time",
                total, (double)e->prof_ns_idle / 1e9);
    for (int k = 0; k < 3; k++) {
        const struct step_prof *p = &e->prof[k];
        if (p->steps == 0)
            continue;
        double n = (double)p->steps;
        uint64_t ns = p->ns_sched + p->ns_launch + p->ns_overlap + p->ns_finish + p->ns_post;
        PD_LOG_INFO("engine step profile: %-7s %8llu steps, %6.1f seqs, %7.1f tokens (%7.1f prefill), %7.3f ms = "
                    "%.3f + %.3f + %.3f + %.3f + %.3f, %5.1f%%",
                    kind[k], (unsigned long long)p->steps, (double)p->seqs / n, (double)p->tokens / n,
                    (double)p->prefill_tokens / n, (double)ns / n / 1e6, (double)p->ns_sched / n / 1e6,
                    (double)p->ns_launch / n / 1e6, (double)p->ns_overlap / n / 1e6, (double)p->ns_finish / n / 1e6,
                    (double)p->ns_post / n / 1e6, total > 0 ? 100.0 * (double)ns / 1e9 / total : 0.0);
    }
}

static void *engine_main(void *arg)
{
    eng_engine_t *e = arg;
    e->prof_t0 = pd_now_ns();
    update_stats(e, NULL); /* free blocks etc. are right before the first request */
    for (;;) {
        ereq_t *news;
        abort_cmd_t *aborts;
        kv_cmd_t *kvc;
        eng_batch_t *b;
        pd_status_t st;

        /* the last step's outputs wait for the next step's launch (async output
         * processing), unless nothing will run now (below: or commands may touch the
         * requests) */
        if ((e->n_outq > 0 || e->n_out_roots > 0) && (e->last_empty || eng_sched_idle(e->sched)))
            flush_outputs(e, false);
        pthread_mutex_lock(&e->mu);
        while (!e->stopping && e->q_head == NULL && e->aborts == NULL && e->kv_cmds == NULL) {
            if (eng_sched_idle(e->sched)) {
                pthread_cond_wait(&e->cv, &e->mu);
                continue;
            }
            if (!e->last_empty)
                break;
            /* only requests that wait for something outside the loop (remote KV, free
             * blocks): sleep until a command comes or a short while passed */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 20 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&e->cv, &e->mu, &ts);
            e->last_empty = false;
        }
        bool stopping = e->stopping;
        take_commands(e, &news, &aborts, &kvc);
        pthread_mutex_unlock(&e->mu);
        if (kvc || aborts || stopping)
            flush_outputs(e, false); /* they may end or free requests with outputs noted */

        for (kv_cmd_t *c = kvc, *n; c; c = n) {
            n = c->next;
            apply_kv_cmd(e, c);
            free(c);
        }
        if (kvc)
            update_stats(e, NULL);

        for (abort_cmd_t *a = aborts, *n; a; a = n) {
            n = a->next;
            apply_abort(e, a->id);
            free(a);
        }
        for (ereq_t *er = news, *n; er; er = n) {
            n = er->next;
            if (stopping) {
                kv_drop_remote(e, er);
                finish_all(e, er, ENG_REQ_FINISHED_ABORTED);
                ereq_free(e, er);
            } else {
                admit(e, er);
            }
        }
        if (stopping)
            break;
        const uint64_t pt0 = prof_now(e);
        b = eng_sched_step(e->sched);
        if (e->cfg.max_queued_seqs > 0) {
            /* requests in their first step stop waiting: room for new ones */
            int started = 0;
            for (int s = 0; s < b->n_seqs; s++) {
                ereq_t *er = b->seqs[s].req->user;
                if (er && er->queued) {
                    started += er->queued;
                    er->queued = 0;
                }
            }
            unqueue(e, started);
        }
        for (int i = 0; i < b->n_remote_admitted; i++)
            start_pull(e, b->remote_admitted[i]);
        e->last_empty = b->n_seqs == 0 && b->n_remote_admitted == 0;
        if (b->n_seqs == 0) {
            flush_outputs(e, false);
            update_stats(e, b);
            if (e->prof_on)
                e->prof_ns_idle += pd_now_ns() - pt0;
            continue;
        }
        PD_LOG_TRACE("engine: step of %d seqs (%d prefill, %d decode), %d tokens, %d swap-out, %d swap-in, %d copies",
                     b->n_seqs, b->n_prefill_seqs, b->n_decode_seqs, b->n_tokens, b->n_swap_out, b->n_swap_in,
                     b->n_copies);
        const uint64_t pt1 = prof_now(e);
        st = run_step_launch(e, b);
        const uint64_t pt2 = prof_now(e);
        /* the previous step's outputs while this one computes */
        flush_outputs(e, true);
        const uint64_t pt3 = prof_now(e);
        if (st == PD_OK)
            st = run_step_finish(e, b);
        else
            (void)eng_forward_wait(e->fw); /* nothing may stay queued */
        if (st != PD_OK) {
            /* a failed forward leaves the KV of this batch undefined: fail its requests,
             * keep serving the others */
            PD_LOG_ERR("engine: step failed (%s); failing the %d requests of the batch", pd_status_str(st), b->n_seqs);
            /* free after the walk: a group's other sequences later in this batch point
             * into the request (freeing it at once was a use after free) */
            ereq_t **failed = calloc((size_t)b->n_seqs, sizeof(*failed));
            int n_failed = 0;
            for (int s = 0; s < b->n_seqs; s++) {
                eng_request_t *root = b->seqs[s].req;
                while (root->parent)
                    root = root->parent;
                ereq_t *er = root->user;
                if (er == NULL || er->n_live == 0)
                    continue;
                eng_sched_finish(e->sched, root, ENG_REQ_FINISHED_ERROR);
                finish_all(e, er, ENG_REQ_FINISHED_ERROR);
                if (failed)
                    failed[n_failed++] = er;
            }
            if (failed == NULL)
                PD_LOG_ERR("engine: out of memory failing a batch; its requests leak");
            for (int i = 0; i < n_failed; i++) {
                failed[i]->req->user = NULL;
                ereq_free(e, failed[i]);
            }
            free(failed);
            retire_pending(e);
            continue;
        }
        /* outputs: every sequence that sampled, then requests finished by the update;
         * then the requests whose every sequence is done are freed.  With async output
         * processing that happens while the next step computes.  (Noted before the
         * requests this step computed after they were done are freed: b points to them.) */
        snapshot_outputs(e, b);
        if (!e->async)
            flush_outputs(e, false);
        const uint64_t pt4 = prof_now(e);
        retire_pending(e); /* the step that might still hold them has ended */
        update_stats(e, b);
        if (e->prof_on) {
            struct step_prof *p = &e->prof[b->n_prefill_seqs == 0 ? 0 : b->n_decode_seqs > 0 ? 1 : 2];
            uint64_t pt5 = pd_now_ns();
            p->steps++;
            p->seqs += (uint64_t)b->n_seqs;
            p->tokens += (uint64_t)b->n_tokens;
            for (int s = 0; s < b->n_seqs; s++)
                if (b->seqs[s].is_prefill)
                    p->prefill_tokens += (uint64_t)b->seqs[s].n_tokens;
            p->ns_sched += pt1 - pt0;
            p->ns_launch += pt2 - pt1;
            p->ns_overlap += pt3 - pt2;
            p->ns_finish += pt4 - pt3;
            p->ns_post += pt5 - pt4;
        }
    }
    if (e->prof_on)
        step_prof_log(e);
    return NULL;
}

/* ---- submit / abort ---- */

/* Under mu: may n more sequences wait?  (The first request always may.) */
static bool admit_ok(const eng_engine_t *e, int n)
{
    int lim = e->cfg.max_queued_seqs;
    return lim <= 0 || e->n_queued == 0 || (int64_t)e->n_queued + n <= lim;
}

static void busy_msg(const eng_engine_t *e, int n, char *err, size_t errlen)
{
    snprintf(err, errlen,
             "The server is overloaded: %d sequences are waiting and this request adds %d, over the limit of %d "
             "(--max-queued-requests). Retry later.",
             e->n_queued, n, e->cfg.max_queued_seqs);
}

pd_status_t eng_engine_reserve(eng_engine_t *e, int n_seqs, char *err, size_t errlen)
{
    pd_status_t st = PD_OK;
    if (n_seqs <= 0 || e->cfg.max_queued_seqs <= 0)
        return PD_OK;
    pthread_mutex_lock(&e->mu);
    if (admit_ok(e, n_seqs))
        e->n_queued += n_seqs;
    else {
        busy_msg(e, n_seqs, err, errlen);
        st = PD_ERR_BUSY;
    }
    pthread_mutex_unlock(&e->mu);
    return st;
}

void eng_engine_unreserve(eng_engine_t *e, int n_seqs)
{
    if (n_seqs > 0 && e->cfg.max_queued_seqs > 0)
        unqueue(e, n_seqs);
}

int eng_engine_max_num_seqs(const eng_engine_t *e) { return e->cfg.max_num_seqs; }

int eng_engine_queued(eng_engine_t *e)
{
    int n;
    pthread_mutex_lock(&e->mu);
    n = e->n_queued;
    pthread_mutex_unlock(&e->mu);
    return n;
}

pd_status_t eng_engine_submit(eng_engine_t *e, const eng_submit_t *sub, char *err, size_t errlen)
{
    ereq_t *er;
    eng_request_t *req;
    eng_sampling_params_t p;
    int64_t V = e->mc->vocab_size;
    pd_status_t st;

    if (sub->n_prompt < 1) {
        snprintf(err, errlen, "the prompt is empty");
        return PD_ERR_INVAL;
    }
    if (sub->n_prompt >= e->max_model_len) {
        snprintf(err, errlen,
                 "This model's maximum context length is %lld tokens. However, your prompt has %d tokens.",
                 (long long)e->max_model_len, sub->n_prompt);
        return PD_ERR_RANGE;
    }
    for (int i = 0; i < sub->n_prompt; i++) {
        if (sub->prompt[i] < 0 || sub->prompt[i] >= V) {
            snprintf(err, errlen, "token id %d is out of vocabulary (0 to %lld)", sub->prompt[i], (long long)V - 1);
            return PD_ERR_RANGE;
        }
    }
    if ((st = eng_sampling_params_copy(&p, sub->params)) != PD_OK)
        return st;
    eng_sampling_defaults_apply(&p, &e->defaults);
    st = eng_sampling_params_validate(&p, (int)V, e->cfg.max_logprobs, err, errlen);
    if (st != PD_OK) {
        eng_sampling_params_cleanup(&p);
        return st;
    }
    pthread_mutex_lock(&e->mu);
    st = eng_request_create(sub->id, sub->prompt, sub->n_prompt, &p, sub->priority, sub->cache_salt, 0, &e->rng, &req);
    pthread_mutex_unlock(&e->mu);
    eng_sampling_params_cleanup(&p);
    if (st != PD_OK) {
        snprintf(err, errlen, "invalid request (%s)", pd_status_str(st));
        return st;
    }
    if (req->group_size > e->cfg.max_num_seqs) {
        /* admission: the scheduler runs a group's sequences in one step, so a group
         * larger than a step could never run (the step failed) */
        snprintf(err, errlen, "n = %d choices need %d sequences in one step, over --max-num-seqs %d.",
                 req->group_size, req->group_size, e->cfg.max_num_seqs);
        eng_request_destroy(req);
        return PD_ERR_RANGE;
    }
    er = calloc(1, sizeof(*er));
    if (er == NULL) {
        eng_request_destroy(req);
        return PD_ERR_NOMEM;
    }
    er->req = req;
    er->cb = sub->cb;
    er->user = sub->user;
    if (sub->kv_produce) {
        if (req->group_size > 1) {
            snprintf(err, errlen, "a disaggregated prefill request samples one sequence (n and best_of must be 1)");
            ereq_free(e, er);
            return PD_ERR_INVAL;
        }
        er->kv_produce = true;
        req->keep_blocks = true;
    }
    if (sub->kv_remote) {
        const eng_remote_kv_t *r = sub->kv_remote;
        er->has_remote = true;
        er->remote.port = r->port;
        er->remote.n_block_ids = r->n_block_ids;
        er->remote.engine_id = r->engine_id ? strdup(r->engine_id) : NULL;
        er->remote.host = strdup(r->host ? r->host : "");
        er->remote.request_id = strdup(r->request_id ? r->request_id : "");
        uint32_t *ids = malloc((size_t)(r->n_block_ids > 0 ? r->n_block_ids : 1) * sizeof(uint32_t));
        if (ids && r->n_block_ids > 0)
            memcpy(ids, r->block_ids, (size_t)r->n_block_ids * sizeof(uint32_t));
        er->remote.block_ids = ids;
        if (!er->remote.host || !er->remote.request_id || !ids || (r->engine_id && !er->remote.engine_id)) {
            er->has_remote = false;
            ereq_free(e, er);
            return PD_ERR_NOMEM;
        }
    }
    if (req->params.prompt_logprobs >= 0) {
        size_t nt;
        er->plp_k = req->params.prompt_logprobs;
        er->plp_next = 1;
        er->plp = calloc((size_t)req->n_prompt, sizeof(*er->plp));
        if (er->plp)
            er->plp[0] = (eng_logprob_t){req->tokens[0], NAN, 0};
        if (er->plp == NULL || pd_mul_size((size_t)req->n_prompt, (size_t)er->plp_k, &nt) != PD_OK ||
            (er->plp_k > 0 && (er->plp_tops = calloc(nt, sizeof(*er->plp_tops))) == NULL)) {
            ereq_free(e, er);
            snprintf(err, errlen, "out of memory for prompt_logprobs");
            return PD_ERR_NOMEM;
        }
    }
    er->n_seqs = req->group_size > 0 ? req->group_size : 1;
    er->n_live = er->n_seqs;
    er->seqs = calloc((size_t)er->n_seqs, sizeof(*er->seqs));
    if (er->seqs == NULL) {
        ereq_free(e, er);
        return PD_ERR_NOMEM;
    }
    for (int i = 0; i < er->n_seqs; i++) {
        seq_state_t *ss = &er->seqs[i];
        eng_request_t *sreq = eng_request_seq(req, i);
        sreq->user = er;
        /* spaces_between_special_tokens is accepted and, as in vLLM with a fast tokenizer
         * (every tokenizer here is one), changes nothing: specials touch the text */
        if (e->tok && (st = eng_detok_create(e->tok, req->tokens, (size_t)req->n_prompt, req->params.skip_special_tokens,
                                             false, &ss->detok)) != PD_OK)
            break;
        if (req->params.n_stop > 0 &&
            (st = eng_stop_matcher_create((const char *const *)req->params.stop, req->params.n_stop,
                                          req->params.include_stop_str_in_output, &ss->stop)) != PD_OK)
            break;
        if (req->params.logprobs > 0 &&
            (ss->tops = calloc((size_t)req->params.logprobs, sizeof(*ss->tops))) == NULL) {
            st = PD_ERR_NOMEM;
            break;
        }
    }
    if (st != PD_OK) {
        ereq_free(e, er);
        return st;
    }
    pthread_mutex_lock(&e->mu);
    if (e->stopping || e->stats.dead) {
        pthread_mutex_unlock(&e->mu);
        kv_drop_remote(e, er);
        ereq_free(e, er);
        snprintf(err, errlen, "the engine is shutting down");
        return PD_ERR_CLOSED;
    }
    if (e->cfg.max_queued_seqs > 0) {
        /* a reservation already counts its sequences; without one apply the bound */
        if (sub->reserved <= 0 && !admit_ok(e, er->n_seqs)) {
            busy_msg(e, er->n_seqs, err, errlen);
            pthread_mutex_unlock(&e->mu);
            kv_drop_remote(e, er);
            ereq_free(e, er);
            return PD_ERR_BUSY;
        }
        e->n_queued += er->n_seqs - (sub->reserved > 0 ? sub->reserved : 0);
        if (e->n_queued < 0)
            e->n_queued = 0;
        er->queued = er->n_seqs;
    }
    if (e->q_tail)
        e->q_tail->next = er;
    else
        e->q_head = er;
    e->q_tail = er;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return PD_OK;
}

void eng_engine_abort(eng_engine_t *e, const char *id)
{
    size_t n = strlen(id);
    abort_cmd_t *a = malloc(sizeof(*a) + n + 1);
    if (a == NULL)
        return;
    memcpy(a->id, id, n + 1);
    pthread_mutex_lock(&e->mu);
    /* still queued?  then it never reached the scheduler: drop it here */
    for (ereq_t **pp = &e->q_head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next) {
        if (strcmp((*pp)->req->id, id) == 0) {
            ereq_t *er = *pp;
            *pp = er->next;
            if (e->q_tail == er)
                e->q_tail = prev;
            pthread_mutex_unlock(&e->mu);
            free(a);
            kv_drop_remote(e, er);
            finish_all(e, er, ENG_REQ_FINISHED_ABORTED);
            ereq_free(e, er);
            return;
        }
    }
    a->next = e->aborts;
    e->aborts = a;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

/* ---- create / destroy ---- */

/* Generation-config defaults: none (vLLM's defaults) unless --generation-config is "auto"
 * (the model's generation_config.json) or a folder holding one; then
 * --override-generation-config on top. */
static void apply_gen_json(eng_sampling_defaults_t *d, const cJSON *j)
{
    const cJSON *v;
#define F(key, field)                                                  \
    if ((v = cJSON_GetObjectItemCaseSensitive(j, key)) && cJSON_IsNumber(v)) { \
        d->has_##field = true;                                         \
        d->field = (float)v->valuedouble;                              \
    }
    F("temperature", temperature)
    F("top_p", top_p)
    F("min_p", min_p)
    F("repetition_penalty", repetition_penalty)
    F("presence_penalty", presence_penalty)
    F("frequency_penalty", frequency_penalty)
#undef F
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "top_k")) && cJSON_IsNumber(v)) {
        d->has_top_k = true;
        d->top_k = v->valueint;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "max_new_tokens")) && cJSON_IsNumber(v) && v->valuedouble >= 1) {
        d->has_max_tokens = true;
        d->max_tokens = v->valueint;
    }
}

static pd_status_t load_defaults(eng_engine_t *e)
{
    const char *gc = e->cfg.generation_config;
    memset(&e->defaults, 0, sizeof(e->defaults));
    if (gc && strcmp(gc, "auto") == 0) {
        const cJSON *j = eng_model_gen_config_json(e->model);
        if (j)
            apply_gen_json(&e->defaults, j);
    } else if (gc && strcmp(gc, "vllm") != 0) {
        char path[4096], *text = NULL;
        cJSON *j;
        snprintf(path, sizeof(path), "%s/generation_config.json", gc);
        if (pd_read_file(path, &text, NULL) != PD_OK) {
            PD_LOG_ERR("--generation-config: cannot read %s", path);
            return PD_ERR_NOT_FOUND;
        }
        j = cJSON_Parse(text);
        free(text);
        if (j == NULL) {
            PD_LOG_ERR("--generation-config: %s is not valid JSON", path);
            return PD_ERR_FORMAT;
        }
        apply_gen_json(&e->defaults, j);
        cJSON_Delete(j);
    }
    if (e->cfg.override_generation_config) {
        cJSON *j = cJSON_Parse(e->cfg.override_generation_config);
        if (j == NULL)
            return PD_ERR_FORMAT;
        apply_gen_json(&e->defaults, j);
        cJSON_Delete(j);
    }
    return PD_OK;
}

static char *token_str(eng_engine_t *e, const char *which, int32_t id)
{
    const char *s = eng_model_special_token(e->model, which);
    size_t len;
    if (s)
        return strdup(s);
    if (e->tok && id >= 0 && (s = eng_tok_token_to_piece(e->tok, id, &len)) != NULL) {
        char *c = malloc(len + 1);
        if (c) {
            memcpy(c, s, len);
            c[len] = '\0';
        }
        return c;
    }
    return strdup("");
}

/* "auto" takes the CUDA backend when it is built and a GPU opens, else the CPU one. */
static pd_status_t init_backend(eng_engine_t *e, const eng_backend_opts_t *bo)
{
    const char *want = e->cfg.backend ? e->cfg.backend : "auto";
    pd_status_t st;

    if (strcmp(want, "auto") == 0) {
        e->ops = eng_backend_get("cuda");
        if (e->ops) {
            /* a probe: a machine without a usable GPU is not an error here */
            pd_log_level_t saved = pd_log_level_g;
            pd_log_set_level(PD_LOG_LEVEL_OFF);
            st = e->ops->init(bo, &e->be);
            pd_log_set_level(saved);
            if (st == PD_OK)
                goto opened;
            PD_LOG_INFO("engine: no usable GPU (%s); using the CPU backend", pd_status_str(st));
        }
        e->ops = eng_backend_get("cpu");
        want = "cpu";
    } else {
        e->ops = eng_backend_get(want);
    }
    if (e->ops == NULL) {
        PD_LOG_ERR("engine: backend '%s' is not built into this binary", want);
        return PD_ERR_UNSUPPORTED;
    }
    if ((st = e->ops->init(bo, &e->be)) != PD_OK)
        return st;
opened:
#ifdef PD_HAVE_CUDA
    if (strcmp(e->ops->name, "cuda") == 0) {
        kcpu_dtype_t wt = e->mc->dtype == ENG_DTYPE_F32 ? KCPU_DTYPE_F32
                          : e->mc->dtype == ENG_DTYPE_F16 ? KCPU_DTYPE_F16 : KCPU_DTYPE_BF16;
        eng_backend_cuda_set_weight_dtype(e->be, wt);
        if (e->cfg.fp8_weights) {
            pd_status_t st8 = eng_backend_cuda_set_fp8_weights(e->be, true);
            if (st8 != PD_OK)
                return st8;
        }
    }
#endif
    PD_LOG_INFO("engine: %s backend", e->ops->name);
    return PD_OK;
}

/* KV blocks from the budget: --cpu-kvcache-space on the CPU backend; on CUDA the free
 * memory under --gpu-memory-utilization less the weights (converted to the compute
 * dtype at first use) and the activation workspace. */
static int64_t kv_blocks_for_budget(eng_engine_t *e, size_t block_bytes)
{
    uint64_t budget = e->cfg.kv_cache_bytes;
#ifdef PD_HAVE_CUDA
    if (strcmp(e->ops->name, "cuda") == 0) {
        size_t free_b = 0, total_b = 0;
        if (eng_backend_cuda_mem_info(e->be, &free_b, &total_b) == PD_OK) {
            const eng_model_config_t *c = e->mc;
            double util = e->cfg.gpu_memory_utilization > 0 ? e->cfg.gpu_memory_utilization : 0.9;
            double used = (double)(total_b - free_b);
            double elem = c->dtype == ENG_DTYPE_F32 ? 4.0 : 2.0;
            /* --quantization fp8: the fp8 copies (1 byte a weight) come on top of the upload */
            if (e->cfg.fp8_weights)
                elem += 1.0;
            double weights = 0;
            for (size_t i = 0; i < eng_model_n_tensors(e->model); i++)
                weights += (double)eng_tensor_nelements(eng_model_tensor_at(e->model, i)) * elem;
            double T = (double)e->cfg.max_num_batched_tokens;
            double work = T * 4.0 * (4.0 * c->hidden + 3.0 * c->intermediate + 2.0 * c->n_heads * c->head_dim) +
                          (double)e->cfg.max_num_seqs * 4.0 * (double)c->vocab_size * 2.0;
            /* decode CUDA graphs: their objects and the scratch of the largest capture size */
            work += (double)eng_forward_graph_reserve_bytes(c, e->cfg.cuda_graph_max_bs < e->cfg.max_num_seqs
                                                                   ? e->cfg.cuda_graph_max_bs
                                                                   : e->cfg.max_num_seqs);
            double avail = util * (double)total_b - used - weights - work - (double)(512u << 20);
            budget = avail > 0 ? (uint64_t)avail : 0;
            PD_LOG_INFO("engine: GPU %.1f GiB total, %.1f GiB used, weights %.1f GiB, workspace %.1f GiB: "
                        "%.1f GiB for the KV cache at --gpu-memory-utilization %.2f",
                        (double)total_b / (1 << 30), used / (1 << 30), weights / (1 << 30), work / (1 << 30),
                        (double)budget / (1 << 30), util);
        }
    }
#endif
    return (int64_t)(budget / block_bytes);
}

pd_status_t eng_engine_create(const eng_engine_cfg_t *cfg, eng_engine_t **engine_p)
{
    eng_engine_t *e = calloc(1, sizeof(*e));
    eng_backend_opts_t bo = {0};
    eng_sched_cfg_t sc;
    eng_forward_opts_t fo = {0};
    size_t block_bytes;
    int64_t n_blocks, V;
    pd_status_t st;
    char err[512];

    if (e == NULL)
        return PD_ERR_NOMEM;
    e->cfg = *cfg;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    eng_rng_seed(&e->rng, cfg->seed);

#define TRY(expr)        \
    do {                 \
        st = (expr);     \
        if (st != PD_OK) \
            goto err;    \
    } while (0)
    TRY(eng_model_load(&cfg->load, &e->model));
    e->mc = eng_model_config(e->model);
    V = e->mc->vocab_size;
    e->max_model_len = e->mc->max_model_len;
    if (!cfg->skip_tokenizer_init)
        TRY(eng_tokenizer_for_model(e->model, cfg->tokenizer_override, &e->tok));
    {
        const char *src = cfg->chat_template ? cfg->chat_template : eng_model_chat_template(e->model);
        if (src && eng_template_compile(src, &e->tpl, err, sizeof(err)) != PD_OK) {
            PD_LOG_WARN("chat template does not compile (%s); chat requests will be refused", err);
            e->tpl = NULL;
        }
    }
    e->bos_str = token_str(e, "bos_token", e->mc->bos_token_id);
    e->eos_str = token_str(e, "eos_token", e->mc->n_eos ? e->mc->eos_token_ids[0] : -1);
    for (int i = 0; i < e->mc->n_eos; i++)
        e->eos_ids[e->n_eos++] = e->mc->eos_token_ids[i];
    if (e->n_eos == 0 && e->tok && eng_tok_eos_id(e->tok) >= 0)
        e->eos_ids[e->n_eos++] = eng_tok_eos_id(e->tok);
    TRY(load_defaults(e));

    bo.n_threads = cfg->n_threads;
    bo.mm_mode = cfg->exact_matmul ? KCPU_MM_EXACT : KCPU_MM_FAST;
    TRY(init_backend(e, &bo));

    if (eng_kv_dtype_parse(cfg->kv_cache_dtype, &fo.kv_dtype) != PD_OK) {
        PD_LOG_ERR("engine: --kv-cache-dtype %s is not one of auto, fp8, fp8_e4m3, fp8_e5m2", cfg->kv_cache_dtype);
        st = PD_ERR_INVAL;
        goto err;
    }
    if (cfg->fp8_weights && strcmp(e->ops->name, "cuda") != 0) {
        PD_LOG_ERR("engine: --quantization fp8 needs the CUDA backend (this one is %s)", e->ops->name);
        st = PD_ERR_UNSUPPORTED;
        goto err;
    }
    if (fo.kv_dtype != ENG_KV_AUTO && strcmp(e->ops->name, "cuda") != 0) {
        PD_LOG_ERR("engine: --kv-cache-dtype %s is not supported yet on the %s backend (CUDA only)",
                   cfg->kv_cache_dtype, e->ops->name);
        st = PD_ERR_UNSUPPORTED;
        goto err;
    }
    /* "auto" is the model's dtype in vLLM. The CUDA backend computes in bf16/f16 for a
     * 16-bit model and stores K and V as f16 then (half the bytes of f32, the same as
     * bf16, three more mantissa bits; the kernels read f16 caches); a float32 model and
     * the CPU backend keep an f32 cache. */
    if (fo.kv_dtype == ENG_KV_AUTO && strcmp(e->ops->name, "cuda") == 0 && e->mc->dtype != ENG_DTYPE_F32)
        fo.kv_dtype = ENG_KV_F16;
    fo.calculate_kv_scales = cfg->calculate_kv_scales;
    block_bytes = eng_forward_block_bytes_dtype(e->mc, cfg->block_size, fo.kv_dtype);
    n_blocks = cfg->num_blocks > 0 ? cfg->num_blocks : kv_blocks_for_budget(e, block_bytes);
    e->max_blocks_per_seq = (int)((e->max_model_len + cfg->block_size - 1) / cfg->block_size);
    if (n_blocks < e->max_blocks_per_seq) {
        /* vLLM refuses to start when one full-length sequence cannot fit; so do we */
        PD_LOG_ERR("engine: the KV cache holds %lld blocks of %d tokens (%lld tokens) but max_model_len %lld "
                   "needs %d; raise the KV budget or lower --max-model-len",
                   (long long)n_blocks, cfg->block_size, (long long)n_blocks * cfg->block_size,
                   (long long)e->max_model_len, e->max_blocks_per_seq);
        st = PD_ERR_NOMEM;
        goto err;
    }
    if (n_blocks > INT32_MAX / 2)
        n_blocks = INT32_MAX / 2;

    eng_sched_cfg_init(&sc);
    sc.max_num_batched_tokens = cfg->max_num_batched_tokens;
    sc.max_num_seqs = cfg->max_num_seqs;
    sc.max_model_len = (int)e->max_model_len;
    sc.enable_chunked_prefill = cfg->enable_chunked_prefill;
    sc.policy = cfg->priority_policy ? ENG_SCHED_PRIORITY : ENG_SCHED_FCFS;
    sc.preemption_mode = ENG_PREEMPT_RECOMPUTE;
    sc.delay_factor = cfg->scheduler_delay_factor;
    sc.blocks.n_blocks = (int)n_blocks;
    sc.blocks.block_size = cfg->block_size;
    sc.blocks.enable_prefix_caching = cfg->enable_prefix_caching;
    if (cfg->preempt_swap) {
        /* host swap space: its blocks mirror the cache's layout, so one block copy is
         * one contiguous memcpy (DMA from pinned memory on CUDA) */
        int64_t nh = cfg->num_host_blocks > 0 ? cfg->num_host_blocks
                     : cfg->swap_space_gib > 0 ? (int64_t)(cfg->swap_space_gib * (double)(1ull << 30) / (double)block_bytes)
                                               : 0;
        if (nh > INT32_MAX / 2)
            nh = INT32_MAX / 2;
        if (nh > 0 && (e->ops->host_alloc == NULL || e->ops->kv_swap == NULL)) {
            PD_LOG_WARN("engine: the %s backend cannot swap; preempted requests are recomputed", e->ops->name);
            nh = 0;
        }
        if (nh > 0 && e->ops->host_alloc(e->be, (size_t)nh * block_bytes, &e->swap_base) != PD_OK) {
            PD_LOG_ERR("engine: cannot allocate %.2f GiB of host swap space (--swap-space)",
                       (double)nh * (double)block_bytes / (double)(1ull << 30));
            st = PD_ERR_NOMEM;
            goto err;
        }
        if (nh > 0) {
            e->n_host_blocks = nh;
            sc.preemption_mode = ENG_PREEMPT_SWAP;
            PD_LOG_INFO("engine: swap space %lld KV blocks (%.2f GiB, %s)", (long long)nh,
                        (double)nh * (double)block_bytes / (double)(1ull << 30),
                        strcmp(e->ops->name, "cpu") == 0 ? "host memory: on the CPU backend swapping only moves "
                                                           "blocks between two host buffers" : "pinned host memory");
        } else {
            PD_LOG_WARN("engine: --preemption-mode swap with no swap space (--swap-space 0); preempted requests "
                        "are recomputed");
        }
    }
    sc.blocks.n_host_blocks = (int)e->n_host_blocks;
    sc.eos_ids = e->eos_ids;
    sc.n_eos = e->n_eos;
    if (!cfg->enable_chunked_prefill && sc.max_num_batched_tokens < sc.max_model_len)
        sc.max_num_batched_tokens = sc.max_model_len;
    TRY(eng_sched_create(&sc, &e->sched));

    fo.block_size = cfg->block_size;
    fo.n_blocks = n_blocks;
    fo.max_tokens = sc.max_num_batched_tokens;
    fo.max_seqs = sc.max_num_seqs;
    fo.max_blocks_per_seq = e->max_blocks_per_seq;
    fo.graph_max_bs = cfg->cuda_graph_max_bs;
    fo.graph_max_ctx = cfg->max_seq_len_to_capture;
    TRY(eng_forward_create(e->model, e->ops, e->be, &fo, &e->fw));
    TRY(eng_sampler_create((int)V, &e->sampler));

    {
        size_t T = (size_t)fo.max_tokens, S = (size_t)fo.max_seqs;
        e->b_tokens = malloc(T * sizeof(int32_t));
        e->b_pos = malloc(T * sizeof(int32_t));
        e->b_seq = malloc(T * sizeof(int32_t));
        e->b_slots = malloc(T * sizeof(int64_t));
        e->b_tables = malloc(S * (size_t)e->max_blocks_per_seq * sizeof(int32_t));
        e->b_ctx = malloc(S * sizeof(int32_t));
        e->b_logit_rows = malloc(S * sizeof(int32_t));
        e->seq_logit = malloc(S * sizeof(int));
        e->seq_tok0 = malloc(S * sizeof(int32_t));
        e->plp_rows = malloc(S * sizeof(int32_t));
        e->plp_pos = malloc(S * sizeof(int32_t));
        e->plp_req = malloc(S * sizeof(*e->plp_req));
        /* the output lists' first sizes; reserve_outputs grows them for larger steps */
        e->cap_outq = 2 * (int)S;
        e->outq = malloc((size_t)e->cap_outq * sizeof(*e->outq));
        e->cap_out_roots = (int)S;
        e->cap_pending_dead = 2 * (int)S;
        e->out_roots = malloc(S * sizeof(*e->out_roots));
        e->pending_dead = malloc(2 * S * sizeof(*e->pending_dead));
        /* samples: n > 1 groups sample several tokens from one row */
        e->cap_sampled = (int)S;
        e->sampled = malloc(S * sizeof(int32_t));
        /* the logits copy-back lands here: pinned memory on CUDA (a DMA copy, about twice
         * the rate of a pageable one), plain memory elsewhere or when pinning fails */
        if (e->ops->host_alloc(e->be, S * (size_t)V * sizeof(float), (void **)&e->logits) == PD_OK)
            e->logits_host_alloc = true;
        else
            e->logits = malloc(S * (size_t)V * sizeof(float));
        e->row = malloc((size_t)V * sizeof(float));
        e->need_row = malloc(S);
        e->row_mode = malloc(S);
        e->sp = malloc(S * sizeof(*e->sp));
        e->su = malloc(S * sizeof(float));
        /* the ids come back with a queued copy under async output processing: pinned */
        if (e->ops->host_alloc && e->ops->memcpy_d2h_async &&
            e->ops->host_alloc(e->be, S * sizeof(int32_t), (void **)&e->argmax_ids) == PD_OK)
            e->ids_host_alloc = true;
        else
            e->argmax_ids = malloc(S * sizeof(int32_t));
        e->device_argmax = getenv("PD_ENGINE_HOST_SAMPLING") == NULL;
        e->prof_on = getenv("PD_ENGINE_STEP_PROFILE") != NULL && strcmp(getenv("PD_ENGINE_STEP_PROFILE"), "0") != 0;
        e->async = cfg->async_output == 2 || (cfg->async_output == 1 && e->ops->memcpy_d2h_async != NULL);
        {
            const char *ds = getenv("PD_ENGINE_DEVICE_SAMPLING");
            e->device_sampling = e->device_argmax && (ds ? atoi(ds) != 0 : strcmp(e->ops->name, "cpu") != 0);
        }
        if (!e->need_row || !e->row_mode || !e->sp || !e->su || !e->argmax_ids || !e->b_tokens || !e->b_pos || !e->b_seq || !e->b_slots || !e->b_tables || !e->b_ctx ||
            !e->b_logit_rows || !e->seq_logit || !e->seq_tok0 || !e->plp_rows || !e->plp_pos || !e->plp_req || !e->outq || !e->out_roots || !e->pending_dead || !e->sampled || !e->logits || !e->row) {
            st = PD_ERR_NOMEM;
            goto err;
        }
    }
#undef TRY
    {
        /* the decode graphs now, not in the first serving steps of each batch size
         * (cfg graph_capture_lazy, the prefill node, or PD_CUDA_GRAPH_CAPTURE=lazy: at
         * first use, as before; without graphs this captures nothing) */
        const char *gc = getenv("PD_CUDA_GRAPH_CAPTURE");
        if (e->fw && !cfg->graph_capture_lazy && !(gc && strcmp(gc, "lazy") == 0)) {
            double t0 = pd_now_s();
            int n = 0;
            if ((st = eng_forward_capture_graphs(e->fw, e->logits, e->argmax_ids, &n)) != PD_OK) {
                PD_LOG_ERR("engine: capturing the CUDA graphs failed (%s)", pd_status_str(st));
                goto err;
            }
            if (n > 0)
                PD_LOG_INFO("engine: captured the CUDA graphs of %d decode batch sizes in %.1f s", n,
                            pd_now_s() - t0);
        }
    }
    update_stats(e, NULL); /* before the thread: a caller may read them at once */
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        st = PD_ERR_INTERNAL;
        goto err;
    }
    e->thread_started = true;
    PD_LOG_INFO("engine: %s, vocab %lld, max_model_len %lld, %lld KV blocks of %d tokens, %d threads",
                e->mc->name, (long long)V, (long long)e->max_model_len, (long long)n_blocks, cfg->block_size,
                e->be ? cfg->n_threads : 0);
    *engine_p = e;
    return PD_OK;
err:
    eng_engine_destroy(e);
    return st;
}

void eng_engine_destroy(eng_engine_t *e)
{
    if (e == NULL)
        return;
    if (e->thread_started) {
        pthread_mutex_lock(&e->mu);
        e->stopping = true;
        pthread_cond_signal(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
    }
    /* kvxfer is gone by now (the server closes it first): KV events still queued are
     * dropped; held producers free their blocks, consumers waiting for KV abort */
    for (kv_cmd_t *c = e->kv_cmds, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    e->kv_cmds = e->kv_cmds_tail = NULL;
    while (e->kv_list) {
        ereq_t *er = e->kv_list;
        e->kv_list = er->kv_next;
        if (er->held)
            eng_sched_release_blocks(e->sched, er->req);
        else
            eng_sched_finish(e->sched, er->req, ENG_REQ_FINISHED_ABORTED);
        if (er->n_live > 0)
            finish_all(e, er, ENG_REQ_FINISHED_ABORTED);
        er->req->user = NULL;
        ereq_free(e, er);
    }
    /* requests still in the scheduler: abort them (their callbacks fire) */
    if (e->sched) {
        for (;;) {
            eng_batch_t *b = eng_sched_step(e->sched);
            if (b->n_seqs == 0 && eng_sched_idle(e->sched))
                break;
            for (int s = 0; s < b->n_seqs; s++) {
                eng_request_t *root = b->seqs[s].req;
                while (root->parent)
                    root = root->parent;
                ereq_t *er = root->user;
                eng_sched_finish(e->sched, root, ENG_REQ_FINISHED_ABORTED);
                if (er) {
                    finish_all(e, er, ENG_REQ_FINISHED_ABORTED);
                    root->user = NULL;
                    ereq_free(e, er);
                }
            }
            if (b->n_seqs == 0)
                break;
        }
    }
    eng_sampler_destroy(e->sampler);
    if (e->swap_base)
        e->ops->host_free(e->be, e->swap_base);
    free(e->swap_src);
    eng_forward_destroy(e->fw);
    eng_sched_destroy(e->sched);
    if (e->logits_host_alloc) {
        e->ops->host_free(e->be, e->logits);
        e->logits = NULL;
    }
    if (e->ids_host_alloc) {
        e->ops->host_free(e->be, e->argmax_ids);
        e->argmax_ids = NULL;
    }
    free(e->outq);
    free(e->out_roots);
    free(e->pending_dead);
    if (e->be)
        e->ops->shutdown(e->be);
    eng_template_destroy(e->tpl);
    eng_tok_destroy(e->tok);
    eng_model_destroy(e->model);
    free(e->b_tokens);
    free(e->b_pos);
    free(e->b_seq);
    free(e->b_slots);
    free(e->b_tables);
    free(e->b_ctx);
    free(e->b_logit_rows);
    free(e->seq_logit);
    free(e->seq_tok0);
    free(e->plp_rows);
    free(e->plp_pos);
    free(e->plp_req);
    free(e->sampled);
    free(e->logits);
    free(e->row);
    free(e->need_row);
    free(e->row_mode);
    free(e->sp);
    free(e->su);
    free(e->argmax_ids);
    free(e->bos_str);
    free(e->eos_str);
    pd_buf_cleanup(&e->delta);
    pd_buf_cleanup(&e->text);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

/* ---- accessors ---- */

const eng_model_t *eng_engine_model(const eng_engine_t *e) { return e->model; }
const eng_model_config_t *eng_engine_model_config(const eng_engine_t *e) { return e->mc; }
const eng_tok_t *eng_engine_tokenizer(const eng_engine_t *e) { return e->tok; }
const eng_template_t *eng_engine_template(const eng_engine_t *e) { return e->tpl; }
int64_t eng_engine_max_model_len(const eng_engine_t *e) { return e->max_model_len; }
const eng_sampling_defaults_t *eng_engine_sampling_defaults(const eng_engine_t *e) { return &e->defaults; }
const char *eng_engine_bos_str(const eng_engine_t *e) { return e->bos_str ? e->bos_str : ""; }
const char *eng_engine_eos_str(const eng_engine_t *e) { return e->eos_str ? e->eos_str : ""; }

void eng_engine_get_stats(eng_engine_t *e, eng_engine_stats_t *s)
{
    pthread_mutex_lock(&e->mu);
    *s = e->stats;
    s->prompt_tokens_total = e->prompt_tokens_total;
    s->generation_tokens_total = e->generation_tokens_total;
    memcpy(s->requests_finished, e->finished_by_reason, sizeof(s->requests_finished));
    memcpy(s->kv_load_failures, e->kv_load_failures, sizeof(s->kv_load_failures));
    pthread_mutex_unlock(&e->mu);
}

void eng_engine_kv_region(const eng_engine_t *e, eng_kv_region_t *r)
{
    const kcpu_kv_layout_t *l = eng_forward_kv_layout(e->fw);
    memset(r, 0, sizeof(*r));
    r->base = eng_forward_kv_base(e->fw);
    r->n_blocks = eng_forward_kv_n_blocks(e->fw);
    r->block_bytes = eng_forward_kv_block_bytes(e->fw);
    r->device = strcmp(e->ops->name, "cpu") != 0;
    r->dtype = l ? eng_forward_kv_dtype_name(e->fw) : "f32";
    r->block_size = e->cfg.block_size;
    r->n_layers = e->mc->n_layers;
    r->n_kv_heads = e->mc->n_kv_heads;
    r->head_dim = e->mc->head_dim;
    r->layout_id = 1;
}
