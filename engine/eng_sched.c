/*
 * eng_sched.c - continuous-batching scheduler (vLLM v1 style).
 *
 * Queues (intrusive lists through eng_request_t.q_prev/q_next):
 *   waiting  - WAITING, PREEMPTED, and not yet admitted WAITING_FOR_REMOTE_KV
 *              requests; fcfs: arrival order with preempted ones at the front;
 *              priority: sorted by (priority, arrival).
 *   running  - RUNNING sequences in admission order.
 *   remote   - WAITING_FOR_REMOTE_KV requests whose blocks are reserved and whose
 *              KV transfer is under way.
 * Invariants: a request is on at most one queue; a request on no queue is either
 * finished or a parked n > 1 sibling; blocks are held exactly by requests on
 * running/remote (and by swapped-out ones on waiting, on the host); finishing
 * releases them once (state moves to FINISHED_* first, and finish refuses
 * finished requests).
 *
 * Parallel sampling (n > 1 / best_of): the group's prompt is prefilled once by
 * sequence 0; the step that completes it asks for group_size samples from the
 * same logits; eng_sched_update then forks the block table into the parked
 * siblings (shared blocks, ref counts) and each continues as its own running
 * sequence.  The shared partial last block is copied on the first write
 * (eng_block_append_slots reports the copy in batch->copies).
 */
#include "eng_sched.h"

#include <stdlib.h>
#include <string.h>

#include "pd_log.h"
#include "pd_util.h"

enum { Q_NONE = 0, Q_WAITING = 1, Q_RUNNING = 2, Q_REMOTE = 3, Q_HELD = 4 };

typedef struct rq {
    eng_request_t *head, *tail;
    int count;
} rq_t;

struct eng_sched {
    eng_sched_cfg_t cfg;
    int32_t *eos;
    eng_block_mgr_t *blocks;
    rq_t waiting, running, remote, held;
    eng_batch_t batch;
    int cap_seqs, cap_copies, cap_swap_out, cap_swap_in, cap_preempted, cap_finished, cap_remote;
    eng_request_t **copy_owner;
    eng_batch_seq_t *part;  /* scratch of batch_finalise's partition (cap_seqs entries) */
    int cap_part;
    uint64_t step;
    uint64_t n_preemptions;
    uint64_t (*now_ns)(void);
    uint64_t prev_step_ns;
    bool prev_had_prompt;
    uint64_t last_prompt_latency_ns;
};

// ---- queues ----

static rq_t *queue_of(eng_sched_t *s, int which)
{
    switch (which) {
    case Q_WAITING: return &s->waiting;
    case Q_RUNNING: return &s->running;
    case Q_REMOTE: return &s->remote;
    default: return &s->held;
    }
}

static void q_unlink(eng_sched_t *s, eng_request_t *r)
{
    if (r->q_which == Q_NONE)
        return;
    rq_t *q = queue_of(s, r->q_which);
    if (r->q_prev)
        r->q_prev->q_next = r->q_next;
    else
        q->head = r->q_next;
    if (r->q_next)
        r->q_next->q_prev = r->q_prev;
    else
        q->tail = r->q_prev;
    r->q_prev = r->q_next = NULL;
    r->q_which = Q_NONE;
    q->count--;
}

static void q_insert_before(eng_sched_t *s, int which, eng_request_t *pos, eng_request_t *r)
{
    rq_t *q = queue_of(s, which);
    r->q_which = which;
    r->q_next = pos;
    r->q_prev = pos ? pos->q_prev : q->tail;
    if (r->q_prev)
        r->q_prev->q_next = r;
    else
        q->head = r;
    if (pos)
        pos->q_prev = r;
    else
        q->tail = r;
    q->count++;
}

static void q_push_tail(eng_sched_t *s, int which, eng_request_t *r) { q_insert_before(s, which, NULL, r); }

static bool prio_before(const eng_request_t *a, const eng_request_t *b)
{
    if (a->priority != b->priority)
        return a->priority < b->priority;
    return a->t_arrival < b->t_arrival;
}

/* New arrivals go to the back (fcfs) or their sorted place (priority). */
static void waiting_add(eng_sched_t *s, eng_request_t *r)
{
    if (s->cfg.policy == ENG_SCHED_PRIORITY) {
        eng_request_t *pos = s->waiting.head;
        while (pos && !prio_before(r, pos))
            pos = pos->q_next;
        q_insert_before(s, Q_WAITING, pos, r);
    } else {
        q_push_tail(s, Q_WAITING, r);
    }
}

/* Preempted (and remote-ready) requests resume before new ones under fcfs. */
static void waiting_add_front(eng_sched_t *s, eng_request_t *r)
{
    if (s->cfg.policy == ENG_SCHED_PRIORITY)
        waiting_add(s, r);
    else
        q_insert_before(s, Q_WAITING, s->waiting.head, r);
}

// ---- batch vectors ----

static bool vec_reserve(void **p, int *cap, int need, size_t elem)
{
    if (need <= *cap)
        return true;
    int c = *cap > 0 ? *cap : 16;
    while (c < need)
        c *= 2;
    void *n = realloc(*p, (size_t)c * elem);
    if (n == NULL) {
        PD_LOG_ERR("scheduler: out of memory growing a batch list to %d", c);
        return false;
    }
    *p = n;
    *cap = c;
    return true;
}

static bool push_req(eng_request_t ***arr, int *n, int *cap, eng_request_t *r)
{
    if (!vec_reserve((void **)arr, cap, *n + 1, sizeof(**arr)))
        return false;
    (*arr)[(*n)++] = r;
    return true;
}

// ---- config ----

void eng_sched_cfg_init(eng_sched_cfg_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->max_num_batched_tokens = 8192;
    cfg->max_num_seqs = 256;
    cfg->max_model_len = 8192;
    cfg->enable_chunked_prefill = true;
    cfg->policy = ENG_SCHED_FCFS;
    cfg->preemption_mode = ENG_PREEMPT_RECOMPUTE;
    cfg->blocks.n_blocks = 1024;
    cfg->blocks.block_size = 16;
    cfg->blocks.enable_prefix_caching = true;
}

pd_status_t eng_sched_policy_parse(const char *str, eng_sched_policy_t *policy_p)
{
    if (str == NULL || strcmp(str, "fcfs") == 0)
        *policy_p = ENG_SCHED_FCFS;
    else if (strcmp(str, "priority") == 0)
        *policy_p = ENG_SCHED_PRIORITY;
    else
        return PD_ERR_INVAL;
    return PD_OK;
}

pd_status_t eng_preempt_mode_parse(const char *str, eng_preempt_mode_t *mode_p)
{
    if (str == NULL || strcmp(str, "recompute") == 0)
        *mode_p = ENG_PREEMPT_RECOMPUTE;
    else if (strcmp(str, "swap") == 0)
        *mode_p = ENG_PREEMPT_SWAP;
    else
        return PD_ERR_INVAL;
    return PD_OK;
}

pd_status_t eng_sched_create(const eng_sched_cfg_t *cfg, eng_sched_t **sched_p)
{
    eng_sched_t *s;
    pd_status_t st;

    if (cfg->max_num_batched_tokens < 1 || cfg->max_num_seqs < 1 || cfg->max_model_len < 1 || cfg->n_eos < 0) {
        PD_LOG_ERR("scheduler: bad limits (batched tokens %d, seqs %d, model len %d)", cfg->max_num_batched_tokens,
                   cfg->max_num_seqs, cfg->max_model_len);
        return PD_ERR_INVAL;
    }
    if (cfg->blocks.block_size > 0 &&
        ((int64_t)cfg->max_model_len + cfg->blocks.block_size - 1) / cfg->blocks.block_size > cfg->blocks.n_blocks) {
        PD_LOG_ERR("scheduler: the model's max seq len (%d) is larger than the maximum number of tokens that can "
                   "be stored in KV cache (%lld); raise the KV memory or lower --max-model-len",
                   cfg->max_model_len, (long long)cfg->blocks.n_blocks * cfg->blocks.block_size);
        return PD_ERR_INVAL;
    }
    if (!cfg->enable_chunked_prefill && cfg->max_num_batched_tokens < cfg->max_model_len) {
        /* Without chunking a recomputed sequence must fit one step whole. */
        PD_LOG_ERR("max_num_batched_tokens (%d) is smaller than max_model_len (%d). This effectively limits the "
                   "maximum sequence length to max_num_batched_tokens and makes the engine reject longer "
                   "sequences. Please increase max_num_batched_tokens or decrease max_model_len.",
                   cfg->max_num_batched_tokens, cfg->max_model_len);
        return PD_ERR_INVAL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return PD_ERR_NOMEM;
    s->cfg = *cfg;
    if (cfg->n_eos > 0) {
        s->eos = malloc((size_t)cfg->n_eos * sizeof(int32_t));
        if (s->eos == NULL) {
            free(s);
            return PD_ERR_NOMEM;
        }
        memcpy(s->eos, cfg->eos_ids, (size_t)cfg->n_eos * sizeof(int32_t));
    }
    s->cfg.eos_ids = s->eos;
    st = eng_block_mgr_create(&cfg->blocks, &s->blocks);
    if (st != PD_OK) {
        free(s->eos);
        free(s);
        return st;
    }
    s->now_ns = pd_now_ns;
    *sched_p = s;
    return PD_OK;
}

static void release_blocks(eng_sched_t *s, eng_request_t *r)
{
    eng_block_free(s->blocks, &r->table);
    r->swapped = false;
}

void eng_sched_destroy(eng_sched_t *s)
{
    if (s == NULL)
        return;
    int qs[4] = {Q_WAITING, Q_RUNNING, Q_REMOTE, Q_HELD};
    for (int i = 0; i < 4; i++) {
        rq_t *q = queue_of(s, qs[i]);
        while (q->head) {
            eng_request_t *r = q->head;
            q_unlink(s, r);
            release_blocks(s, r);
            r->blocks_held = false;
        }
    }
    eng_block_mgr_destroy(s->blocks);
    eng_batch_t *b = &s->batch;
    free(b->seqs);
    free(b->copies);
    free(b->swap_out);
    free(b->swap_in);
    free(b->preempted);
    free(b->finished);
    free(b->remote_admitted);
    free(s->copy_owner);
    free(s->part);
    free(s->eos);
    free(s);
}

eng_block_mgr_t *eng_sched_blocks(eng_sched_t *s) { return s->blocks; }

void eng_sched_set_clock(eng_sched_t *s, uint64_t (*now_ns)(void)) { s->now_ns = now_ns ? now_ns : pd_now_ns; }

void eng_sched_get_stats(const eng_sched_t *s, eng_sched_stats_t *st)
{
    memset(st, 0, sizeof(*st));
    st->n_running = s->running.count;
    st->n_remote_waiting = s->remote.count;
    for (const eng_request_t *r = s->waiting.head; r; r = r->q_next) {
        st->n_waiting++;
        if (r->swapped)
            st->n_swapped++;
    }
    st->n_preemptions = s->n_preemptions;
    st->n_steps = s->step;
    eng_block_get_stats(s->blocks, &st->blocks);
}

bool eng_sched_idle(const eng_sched_t *s)
{
    return s->waiting.count == 0 && s->running.count == 0 && s->remote.count == 0;
}

int eng_sched_num_held(const eng_sched_t *s) { return s->held.count; }

eng_request_t *eng_sched_find(eng_sched_t *s, const char *id)
{
    int qs[4] = {Q_WAITING, Q_RUNNING, Q_REMOTE, Q_HELD};
    for (int i = 0; i < 4; i++)
        for (eng_request_t *r = queue_of(s, qs[i])->head; r; r = r->q_next)
            if (strcmp(r->id, id) == 0)
                return r;
    return NULL;
}

static int blocks_for(const eng_sched_t *s, int n_tokens)
{
    int bs = s->cfg.blocks.block_size;
    return (int)(((int64_t)n_tokens + bs - 1) / bs);
}

// ---- add ----

pd_status_t eng_sched_add(eng_sched_t *s, eng_request_t *r)
{
    if (r->parent != NULL || r->q_which != Q_NONE || ENG_REQ_IS_FINISHED(r->state)) {
        PD_LOG_REQ(ERR, r->id, "scheduler: request added twice or is a sibling sequence");
        return PD_ERR_INVAL;
    }
    if (r->n_prompt > s->cfg.max_model_len) {
        PD_LOG_REQ(WARN, r->id, "prompt of %d tokens exceeds max-model-len %d", r->n_prompt, s->cfg.max_model_len);
        return PD_ERR_RANGE;
    }
    if (blocks_for(s, r->n_prompt) > s->cfg.blocks.n_blocks) {
        PD_LOG_REQ(WARN, r->id, "prompt of %d tokens needs more KV blocks than exist", r->n_prompt);
        return PD_ERR_RANGE;
    }
    if (!s->cfg.enable_chunked_prefill && r->n_prompt > s->cfg.max_num_batched_tokens) {
        PD_LOG_REQ(WARN, r->id, "prompt of %d tokens exceeds max-num-batched-tokens %d without chunked prefill",
                   r->n_prompt, s->cfg.max_num_batched_tokens);
        return PD_ERR_LIMIT;
    }
    int room = s->cfg.max_model_len - r->n_prompt;
    int mt = r->params.max_tokens < 0 ? room : r->params.max_tokens;
    if (mt < 1)
        mt = 1;
    for (int i = 0; i < r->group_size; i++) {
        eng_request_t *q = eng_request_seq(r, i);
        q->max_tokens = mt;
        q->cow_slot = -1;
        q->batch_step = UINT64_MAX;
    }
    r->state = r->remote_kv ? ENG_REQ_WAITING_FOR_REMOTE_KV : ENG_REQ_WAITING;
    waiting_add(s, r);
    return PD_OK;
}

// ---- finishing ----

/* Move a request out of every queue and release its blocks (exactly once). */
static void finish_one(eng_sched_t *s, eng_request_t *r, eng_req_state_t state)
{
    q_unlink(s, r);
    release_blocks(s, r);
    r->state = state;
}

pd_status_t eng_sched_finish(eng_sched_t *s, eng_request_t *r, eng_req_state_t state)
{
    if (!ENG_REQ_IS_FINISHED(state)) {
        PD_LOG_REQ(ERR, r->id, "finish with non-final state %s", eng_req_state_name(state));
        return PD_ERR_INVAL;
    }
    if (ENG_REQ_IS_FINISHED(r->state))
        return PD_ERR_INVAL;
    if (r->keep_blocks && r->q_which == Q_RUNNING &&
        (state == ENG_REQ_FINISHED_STOPPED || state == ENG_REQ_FINISHED_LENGTH)) {
        q_unlink(s, r);
        r->state = state;
        r->blocks_held = true;
        q_push_tail(s, Q_HELD, r);
        return PD_OK;
    }
    finish_one(s, r, state);
    if (r->parent == NULL && r->group_size > 1 &&
        (state == ENG_REQ_FINISHED_ABORTED || state == ENG_REQ_FINISHED_ERROR)) {
        for (int i = 1; i < r->group_size; i++) {
            eng_request_t *c = eng_request_seq(r, i);
            if (!ENG_REQ_IS_FINISHED(c->state))
                finish_one(s, c, state);
        }
    }
    return PD_OK;
}

pd_status_t eng_sched_remote_kv_ready(eng_sched_t *s, eng_request_t *r, bool ok)
{
    if (r->q_which != Q_REMOTE) {
        PD_LOG_REQ(ERR, r->id, "remote KV ready for a request that is not waiting for it (%s)",
                   eng_req_state_name(r->state));
        return PD_ERR_INVAL;
    }
    q_unlink(s, r);
    if (ok) {
        int done = r->n_remote_tokens > r->num_computed_tokens ? r->n_remote_tokens : r->num_computed_tokens;
        r->num_computed_tokens = done;
        eng_block_commit(s->blocks, &r->table, r->tokens, done, r->salt_hash, r->lora_id);
    } else {
        /* Fall back to computing the prompt here. */
        PD_LOG_REQ(WARN, r->id, "remote KV transfer failed; recomputing the prompt locally");
        release_blocks(s, r);
        r->num_computed_tokens = 0;
    }
    r->remote_kv = false;
    r->state = ENG_REQ_WAITING;
    waiting_add_front(s, r);
    return PD_OK;
}

// ---- step ----

static void batch_reset(eng_sched_t *s)
{
    eng_batch_t *b = &s->batch;
    b->n_seqs = b->n_tokens = b->n_samples = 0;
    b->n_prefill_seqs = b->n_decode_seqs = 0;
    b->n_copies = b->n_swap_out = b->n_swap_in = 0;
    b->n_preempted = b->n_finished = b->n_remote_admitted = 0;
    b->step = ++s->step;
}

static bool is_scheduled(const eng_sched_t *s, const eng_request_t *r)
{
    return r->batch_step == s->step && r->batch_slot >= 0;
}

static void remove_copy(eng_sched_t *s, int i)
{
    eng_batch_t *b = &s->batch;
    int last = --b->n_copies;
    if (i != last) {
        b->copies[i] = b->copies[last];
        s->copy_owner[i] = s->copy_owner[last];
        s->copy_owner[i]->cow_slot = i;
    }
}

/* Take a request scheduled earlier in this step back out (it is being preempted). */
static int unschedule(eng_sched_t *s, eng_request_t *r)
{
    eng_batch_t *b = &s->batch;
    int slot = r->batch_slot, n = b->seqs[slot].n_tokens;
    int last = --b->n_seqs;
    if (slot != last) {
        b->seqs[slot] = b->seqs[last];
        b->seqs[slot].req->batch_slot = slot;
    }
    b->n_tokens -= n;
    r->batch_slot = -1;
    if (r->cow_slot >= 0) {
        remove_copy(s, r->cow_slot);
        r->cow_slot = -1;
    }
    return n;
}

static eng_request_t *pick_victim(eng_sched_t *s)
{
    if (s->cfg.policy != ENG_SCHED_PRIORITY)
        return s->running.tail;
    eng_request_t *v = s->running.head;
    for (eng_request_t *r = s->running.head; r; r = r->q_next)
        if (!prio_before(r, v)) /* latest among the lowest priority */
            v = r;
    return v;
}

static void preempt(eng_sched_t *s, eng_request_t *r, int *budget)
{
    eng_batch_t *b = &s->batch;
    bool did_cow = false;

    if (is_scheduled(s, r)) {
        did_cow = r->cow_slot >= 0;
        *budget += unschedule(s, r);
    }
    q_unlink(s, r);
    bool swapped = false;
    /* A sequence that copied-on-write this step holds a block whose copy has not
     * happened yet: recompute it rather than swap garbage out. */
    if (s->cfg.preemption_mode == ENG_PREEMPT_SWAP && !did_cow && r->table.n > 0 &&
        r->table.n <= eng_block_num_host_free(s->blocks) &&
        vec_reserve((void **)&b->swap_out, &s->cap_swap_out, b->n_swap_out + r->table.n, sizeof(eng_block_copy_t))) {
        if (eng_block_swap_out(s->blocks, &r->table, b->swap_out + b->n_swap_out) == PD_OK) {
            b->n_swap_out += r->table.n;
            swapped = true;
        }
    }
    if (!swapped) {
        release_blocks(s, r);
        r->num_computed_tokens = 0;
    }
    r->swapped = swapped;
    r->state = ENG_REQ_PREEMPTED;
    r->n_preemptions++;
    s->n_preemptions++;
    push_req(&b->preempted, &b->n_preempted, &s->cap_preempted, r);
    PD_LOG_REQ(DEBUG, r->id, "preempted by %s", swapped ? "swap" : "recompute");
    waiting_add_front(s, r);
}

static bool add_seq(eng_sched_t *s, eng_request_t *r, int n_new, const eng_block_copy_t *cow, int n_cow)
{
    eng_batch_t *b = &s->batch;
    if (!vec_reserve((void **)&b->seqs, &s->cap_seqs, b->n_seqs + 1, sizeof(eng_batch_seq_t)))
        return false;
    if (n_cow > 0) {
        int need = b->n_copies + 1, cap = s->cap_copies;
        if (!vec_reserve((void **)&b->copies, &s->cap_copies, need, sizeof(eng_block_copy_t)) ||
            !vec_reserve((void **)&s->copy_owner, &cap, need, sizeof(eng_request_t *)))
            return false;
        r->cow_slot = b->n_copies;
        b->copies[b->n_copies] = *cow;
        s->copy_owner[b->n_copies] = r;
        b->n_copies++;
    } else {
        r->cow_slot = -1;
    }
    eng_batch_seq_t *q = &b->seqs[b->n_seqs];
    memset(q, 0, sizeof(*q));
    q->req = r;
    q->n_tokens = n_new;
    q->start_pos = r->num_computed_tokens;
    q->want_logits = r->num_computed_tokens + n_new == r->n_tokens;
    q->is_prefill = n_new > 1 || q->start_pos < r->n_prompt;
    q->want_prompt_logits = r->params.prompt_logprobs >= 0 && q->start_pos < r->n_prompt;
    r->batch_slot = b->n_seqs;
    r->batch_step = s->step;
    b->n_seqs++;
    b->n_tokens += n_new;
    if (r->t_scheduled == 0)
        r->t_scheduled = s->now_ns();
    return true;
}

/* One-token seqs first, each part keeping its order (stable), so the forward can hand
 * the leading decode tokens to the decode attention kernel and the rest to the prefill
 * one.  The scratch was reserved with the batch (no failure here). */
static void batch_partition(eng_sched_t *s)
{
    eng_batch_t *b = &s->batch;
    int n1 = 0, k = 0;
    bool sorted = true;
    for (int i = 0; i < b->n_seqs; i++) {
        if (b->seqs[i].n_tokens == 1) {
            sorted = sorted && n1 == i;
            n1++;
        }
    }
    if (sorted || s->part == NULL)
        return;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < b->n_seqs; i++)
            if ((b->seqs[i].n_tokens == 1) == (pass == 0))
                s->part[k++] = b->seqs[i];
    memcpy(b->seqs, s->part, sizeof(*b->seqs) * (size_t)b->n_seqs);
    for (int i = 0; i < b->n_seqs; i++)
        b->seqs[i].req->batch_slot = i;
}

/* Finalise order, pointers and sample offsets once the set of seqs is fixed. */
static void batch_finalise(eng_sched_t *s)
{
    eng_batch_t *b = &s->batch;
    int off = 0;
    batch_partition(s);
    for (int i = 0; i < b->n_seqs; i++) {
        eng_batch_seq_t *q = &b->seqs[i];
        eng_request_t *r = q->req;
        q->tokens = r->tokens + q->start_pos;
        q->block_table = r->table.ids;
        q->n_blocks = r->table.n;
        q->n_samples = 0;
        if (q->want_logits)
            q->n_samples = (r->parent == NULL && r->group_size > 1 && !r->forked) ? r->group_size : 1;
        q->sample_offset = off;
        off += q->n_samples;
        if (q->is_prefill)
            b->n_prefill_seqs++;
        else
            b->n_decode_seqs++;
    }
    b->n_samples = off;
}

static int cap_new(const eng_sched_t *s, int n_new, int budget)
{
    if (s->cfg.long_prefill_token_threshold > 0 && n_new > s->cfg.long_prefill_token_threshold)
        n_new = s->cfg.long_prefill_token_threshold;
    return n_new < budget ? n_new : budget;
}

static void schedule_running(eng_sched_t *s, int *budget, bool *preempted_any)
{
    eng_request_t *r = s->running.head;
    while (r != NULL && *budget > 0) {
        int n_new = cap_new(s, r->n_tokens - r->num_computed_tokens, *budget);
        if (n_new <= 0) {
            r = r->q_next;
            continue;
        }
        eng_block_copy_t cow;
        int n_cow = 0;
        bool self_preempted = false;
        for (;;) {
            pd_status_t st = eng_block_append_slots(s->blocks, &r->table, r->num_computed_tokens,
                                                    r->num_computed_tokens + n_new, &cow, &n_cow);
            if (st == PD_OK)
                break;
            if (st != PD_ERR_AGAIN) {
                PD_LOG_REQ(ERR, r->id, "block allocation failed: %s", pd_status_str(st));
                eng_request_t *next = r->q_next;
                finish_one(s, r, ENG_REQ_FINISHED_ERROR);
                push_req(&s->batch.finished, &s->batch.n_finished, &s->cap_finished, r);
                r = next;
                self_preempted = true; /* skip scheduling it */
                break;
            }
            eng_request_t *v = pick_victim(s);
            preempt(s, v, budget);
            *preempted_any = true;
            if (v == r) {
                self_preempted = true;
                r = NULL; /* as vLLM: nothing else runs this step after self-preemption */
                break;
            }
        }
        if (self_preempted)
            continue;
        if (!add_seq(s, r, n_new, &cow, n_cow))
            break;
        *budget -= n_new;
        r = r->q_next;
    }
}

static bool passed_delay(eng_sched_t *s, uint64_t now)
{
    if (s->cfg.delay_factor <= 0 || s->waiting.head == NULL || s->running.count == 0)
        return true;
    uint64_t earliest = UINT64_MAX;
    for (eng_request_t *r = s->waiting.head; r; r = r->q_next)
        if (r->t_arrival < earliest)
            earliest = r->t_arrival;
    return now > earliest &&
           (double)(now - earliest) > s->cfg.delay_factor * (double)s->last_prompt_latency_ns;
}

static bool schedule_waiting(eng_sched_t *s, int *budget, uint64_t now)
{
    eng_batch_t *b = &s->batch;
    bool any_prompt = false;
    bool delay_ok = passed_delay(s, now);
    eng_request_t *r = s->waiting.head;

    while (r != NULL) {
        eng_request_t *next = r->q_next;
        if (r->state == ENG_REQ_WAITING_FOR_REMOTE_KV) {
            /* Reserve blocks for the whole prompt; the transfer fills them. */
            int n_cached = 0;
            pd_status_t st = eng_block_alloc_prompt(s->blocks, &r->table, r->tokens, r->n_prompt, r->n_prompt,
                                                    r->salt_hash, r->lora_id, &n_cached);
            if (st == PD_ERR_AGAIN)
                break;
            if (st != PD_OK || !push_req(&b->remote_admitted, &b->n_remote_admitted, &s->cap_remote, r)) {
                if (st == PD_OK)
                    release_blocks(s, r);
                break;
            }
            r->num_cached_tokens = n_cached;
            r->num_computed_tokens = n_cached;
            if (r->t_scheduled == 0)
                r->t_scheduled = now;
            q_unlink(s, r);
            q_push_tail(s, Q_REMOTE, r);
            r = next;
            continue;
        }
        if (s->running.count >= s->cfg.max_num_seqs || *budget <= 0 || !delay_ok)
            break;
        int n_new;
        if (r->swapped) {
            n_new = cap_new(s, r->n_tokens - r->num_computed_tokens, *budget);
            int need = blocks_for(s, r->num_computed_tokens + n_new); /* after swap-in and growth */
            if (need < r->table.n)
                need = r->table.n;
            if (need > eng_block_num_free(s->blocks) ||
                !vec_reserve((void **)&b->swap_in, &s->cap_swap_in, b->n_swap_in + r->table.n,
                             sizeof(eng_block_copy_t)))
                break;
            int nb = r->table.n;
            if (eng_block_swap_in(s->blocks, &r->table, b->swap_in + b->n_swap_in) != PD_OK)
                break;
            b->n_swap_in += nb;
            r->swapped = false;
            if (eng_block_append_slots(s->blocks, &r->table, r->num_computed_tokens, r->num_computed_tokens + n_new,
                                       NULL, NULL) != PD_OK) {
                /* cannot happen: the free blocks were counted above */
                PD_LOG_REQ(ERR, r->id, "growing a swapped-in table failed");
                break;
            }
            /* the chain hashes were reset by the swap; re-register what is computed */
            eng_block_commit(s->blocks, &r->table, r->tokens, r->num_computed_tokens, r->salt_hash, r->lora_id);
        } else if (r->table.n == 0) {
            bool use_cache = r->params.prompt_logprobs < 0;
            int cached = use_cache ? eng_block_cached_prefix(s->blocks, r->tokens, r->n_tokens, r->salt_hash,
                                                             r->lora_id)
                                   : 0;
            int rest = r->n_tokens - cached;
            if (!s->cfg.enable_chunked_prefill && rest > *budget)
                break;
            n_new = cap_new(s, rest, *budget);
            int n_cached = 0;
            pd_status_t st = eng_block_alloc_prompt(s->blocks, &r->table, r->tokens, use_cache ? r->n_tokens : 0,
                                                    cached + n_new, r->salt_hash, r->lora_id, &n_cached);
            if (st != PD_OK)
                break;
            if (n_cached != cached) { /* cannot differ (same walk); keep the numbers honest */
                n_new = cap_new(s, r->n_tokens - n_cached, *budget);
            }
            r->num_computed_tokens = n_cached;
            if (r->n_preemptions == 0)
                r->num_cached_tokens = n_cached;
        } else {
            /* Blocks already held (remote KV arrived): grow to the chunk. */
            n_new = cap_new(s, r->n_tokens - r->num_computed_tokens, *budget);
            eng_block_copy_t cow;
            int n_cow = 0;
            if (eng_block_append_slots(s->blocks, &r->table, r->num_computed_tokens,
                                       r->num_computed_tokens + n_new, &cow, &n_cow) != PD_OK)
                break;
        }
        q_unlink(s, r);
        r->state = ENG_REQ_RUNNING;
        q_push_tail(s, Q_RUNNING, r);
        if (n_new > 0) {
            if (!add_seq(s, r, n_new, NULL, 0))
                break;
            *budget -= n_new;
            any_prompt = true;
        }
        r = next;
    }
    return any_prompt;
}

eng_batch_t *eng_sched_step(eng_sched_t *s)
{
    uint64_t now = s->now_ns();
    int budget = s->cfg.max_num_batched_tokens;
    bool preempted_any = false, any_prompt = false;

    batch_reset(s);
    /* Reserve the batch lists up front so adding a sequence (after its blocks, and
     * maybe a copy-on-write, were taken) cannot fail half way. */
    int max_seqs = s->running.count + s->waiting.count;
    int copy_cap = s->cap_copies;
    if (!vec_reserve((void **)&s->batch.seqs, &s->cap_seqs, max_seqs, sizeof(eng_batch_seq_t)) ||
        !vec_reserve((void **)&s->part, &s->cap_part, max_seqs, sizeof(eng_batch_seq_t)) ||
        !vec_reserve((void **)&s->batch.copies, &s->cap_copies, s->running.count, sizeof(eng_block_copy_t)) ||
        !vec_reserve((void **)&s->copy_owner, &copy_cap, s->cap_copies, sizeof(eng_request_t *))) {
        PD_LOG_ERR("scheduler: out of memory for the batch; skipping this step");
        return &s->batch;
    }
    if (s->prev_had_prompt)
        s->last_prompt_latency_ns = now - s->prev_step_ns;
    s->prev_step_ns = now;

    schedule_running(s, &budget, &preempted_any);
    if (!preempted_any)
        any_prompt = schedule_waiting(s, &budget, now);
    s->prev_had_prompt = any_prompt;
    batch_finalise(s);
    return &s->batch;
}

// ---- update ----

static void finish_in_update(eng_sched_t *s, eng_request_t *r, eng_req_state_t state)
{
    if (r->keep_blocks && state != ENG_REQ_FINISHED_ERROR) {
        /* KV producer: the table stays until the peer has read it. */
        q_unlink(s, r);
        r->state = state;
        r->blocks_held = true;
        q_push_tail(s, Q_HELD, r);
    } else {
        finish_one(s, r, state);
    }
    push_req(&s->batch.finished, &s->batch.n_finished, &s->cap_finished, r);
}

pd_status_t eng_sched_release_blocks(eng_sched_t *s, eng_request_t *r)
{
    if (!r->blocks_held || r->q_which != Q_HELD) {
        PD_LOG_REQ(ERR, r->id, "release of blocks that are not held");
        return PD_ERR_INVAL;
    }
    q_unlink(s, r);
    release_blocks(s, r);
    r->blocks_held = false;
    return PD_OK;
}

static bool in_list(const int32_t *ids, int n, int32_t t)
{
    for (int i = 0; i < n; i++)
        if (ids[i] == t)
            return true;
    return false;
}

static pd_status_t append_and_check(eng_sched_t *s, eng_request_t *r, int32_t tok, uint64_t now)
{
    pd_status_t st = eng_request_append_token(r, tok);
    if (st != PD_OK) {
        PD_LOG_REQ(ERR, r->id, "cannot store a generated token: %s", pd_status_str(st));
        finish_in_update(s, r, ENG_REQ_FINISHED_ERROR);
        return st;
    }
    if (r->t_first_token == 0)
        r->t_first_token = now;
    r->t_last_token = now;
    int n_out = eng_request_n_output(r);
    /* Stop tokens first so an eos at the last allowed position reads "stop". */
    if (n_out >= r->params.min_tokens) {
        if (!r->params.ignore_eos && in_list(s->eos, s->cfg.n_eos, tok)) {
            r->stop_token = tok;
            finish_in_update(s, r, ENG_REQ_FINISHED_STOPPED);
            return PD_OK;
        }
        if (in_list(r->params.stop_token_ids, r->params.n_stop_token_ids, tok)) {
            r->stop_token = tok;
            finish_in_update(s, r, ENG_REQ_FINISHED_STOPPED);
            return PD_OK;
        }
    }
    if (n_out >= r->max_tokens || r->n_tokens >= s->cfg.max_model_len)
        finish_in_update(s, r, ENG_REQ_FINISHED_LENGTH);
    return PD_OK;
}

pd_status_t eng_sched_update(eng_sched_t *s, eng_batch_t *b, const int32_t *sampled)
{
    uint64_t now = s->now_ns();
    pd_status_t ret = PD_OK;

    if (b != &s->batch || b->step != s->step) {
        PD_LOG_ERR("scheduler: update with a stale batch");
        return PD_ERR_INVAL;
    }
    for (int i = 0; i < b->n_seqs; i++) {
        eng_batch_seq_t *q = &b->seqs[i];
        eng_request_t *r = q->req;
        r->batch_slot = -1;
        r->cow_slot = -1;
        if (r->state != ENG_REQ_RUNNING)
            continue; /* finished from outside in the meantime */
        r->num_computed_tokens += q->n_tokens;
        eng_block_commit(s->blocks, &r->table, r->tokens, r->num_computed_tokens, r->salt_hash, r->lora_id);
        if (q->n_samples == 0)
            continue;
        if (sampled == NULL)
            return PD_ERR_INVAL;
        const int32_t *sm = sampled + q->sample_offset;
        if (q->n_samples > 1) {
            for (int j = 1; j < q->n_samples; j++) {
                eng_request_t *c = eng_request_seq(r, j);
                if (c == NULL || ENG_REQ_IS_FINISHED(c->state))
                    continue;
                pd_status_t st = eng_block_fork(s->blocks, &r->table, &c->table);
                if (st != PD_OK) {
                    finish_in_update(s, c, ENG_REQ_FINISHED_ERROR);
                    ret = st;
                    continue;
                }
                c->num_computed_tokens = r->num_computed_tokens;
                c->num_cached_tokens = r->num_cached_tokens;
                c->t_scheduled = r->t_scheduled;
                c->state = ENG_REQ_RUNNING;
                q_push_tail(s, Q_RUNNING, c);
                append_and_check(s, c, sm[j], now);
            }
            r->forked = true;
        }
        append_and_check(s, r, sm[0], now);
    }
    return ret;
}
