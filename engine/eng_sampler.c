/*
 * eng_sampler.c - logits processing and sampling for one sequence.
 *
 * Everything works in place on the caller's float row plus scratch owned by the
 * sampler (allocated once per vocabulary size: no allocation per token).  exp is
 * a branch-free polynomial so GCC vectorizes the softmax loops; a masked (-inf)
 * logit gives exactly 0.  Candidate sets are found by partial selection: a
 * bounded min-heap for top_k, and a growing one (64, 512, 4096, ... entries)
 * for top_p until the kept mass reaches p, so typical requests never sort the
 * vocabulary.  Token choice is an inverse-CDF walk with one uniform draw.
 */
#include "eng_sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eng_sched.h"
#include "pd_log.h"

struct eng_sampler {
    int V;
    float *raw;              /* (V) copy of the raw row when logprobs are wanted */
    float *row;              /* (V) per-sample copy of a shared row (n > 1) */
    float *e;                /* (V) exp values */
    int32_t *idx;            /* (V) candidate indices */
    uint32_t *stamp;         /* (V) membership marks (allowed / seen) */
    uint32_t *cstamp;        /* (V) marks for counts */
    int32_t *cnt;            /* (V) output token counts (valid where cstamp == cur) */
    int32_t *touched;        /* (V) tokens with counts this call */
    uint32_t cur;
};

// ---- math helpers ----

/* Row loops use GCC vector extensions (4 floats, the x86-64/SSE2 and NEON baseline)
 * so they are SIMD at -O2 without target flags. */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

static inline v4f vload(const float *p) { v4f v; memcpy(&v, p, sizeof(v)); return v; }
static inline void vstore(float *p, v4f v) { memcpy(p, &v, sizeof(v)); }
static inline v4f vsplat(float a) { return (v4f){a, a, a, a}; }
static inline v4f vsel(v4i m, v4f a, v4f b) { return (v4f)(((v4i)a & m) | ((v4i)b & ~m)); }
static inline v4f vmax(v4f a, v4f b) { return vsel(a > b, a, b); }
static inline float hmax(v4f v) { float m = v[0]; for (int i = 1; i < 4; i++) m = v[i] > m ? v[i] : m; return m; }
static inline double hsum(v4f v) { return (double)v[0] + v[1] + v[2] + v[3]; }

/* exp(x), relative error ~2e-7 for x in [-87, 88]; exactly 0 below -87 (so a masked
 * -inf logit has zero probability). */
static inline v4f vexp(v4f x)
{
    v4f lo = vsplat(-87.0f), hi = vsplat(88.0f);
    v4f xc = vsel(x < lo, lo, x);
    xc = vsel(xc > hi, hi, xc);
    v4f n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    v4f r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v4f p = vsplat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    v4i bits = (__builtin_convertvector(n, v4i) + 127) << 23;
    return vsel(x < lo, vsplat(0.0f), p * (v4f)bits);
}

static inline float fast_exp(float x)
{
    return vexp(vsplat(x))[0];
}

static float row_max(const float *x, int n)
{
    v4f m0 = vsplat(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        m0 = vmax(m0, vload(x + i));
        m1 = vmax(m1, vload(x + i + 4));
        m2 = vmax(m2, vload(x + i + 8));
        m3 = vmax(m3, vload(x + i + 12));
    }
    float best = hmax(vmax(vmax(m0, m1), vmax(m2, m3)));
    for (; i < n; i++)
        best = x[i] > best ? x[i] : best;
    return best;
}

/* e[i] = exp(x[i] - mx) (e may be NULL); returns the sum.  4-wide baseline here;
 * an 8-wide AVX2+FMA version below is chosen at run time where the CPU has it. */
static double exp_sum_sse(const float *x, float mx, float *e, int n)
{
    v4f a0 = vsplat(0), a1 = a0, m = vsplat(mx);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        v4f v0 = vexp(vload(x + i) - m), v1 = vexp(vload(x + i + 4) - m);
        if (e != NULL) {
            vstore(e + i, v0);
            vstore(e + i + 4, v1);
        }
        a0 += v0;
        a1 += v1;
    }
    double s = hsum(a0) + hsum(a1);
    for (; i < n; i++) {
        float v = fast_exp(x[i] - mx);
        if (e != NULL)
            e[i] = v;
        s += v;
    }
    return s;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_AVX2_PATH 1
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

/* Same polynomial as vexp, 8 lanes; no helpers so no 32-byte vector crosses a
 * function boundary compiled without AVX. */
__attribute__((target("avx2,fma"))) static double exp_sum_avx2(const float *x, float mx, float *e, int n)
{
    v8f acc0 = {0}, acc1 = {0};
    const v8f lo = (v8f){0} - 87.0f, hi = (v8f){0} + 88.0f, zero = {0};
    int i = 0;
#define EXP8(out, xin)                                                                  \
    do {                                                                                \
        v8f xv = (xin), xc;                                                             \
        v8i mlo = xv < lo, mhi;                                                         \
        xc = (v8f)(((v8i)lo & mlo) | ((v8i)xv & ~mlo));                                 \
        mhi = xc > hi;                                                                  \
        xc = (v8f)(((v8i)hi & mhi) | ((v8i)xc & ~mhi));                                 \
        v8f nn = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;               \
        v8f r = xc - nn * 0.693359375f;                                                 \
        r = r - nn * -2.12194440e-4f;                                                   \
        v8f p = (v8f){0} + 1.9875691500e-4f;                                            \
        p = p * r + 1.3981999507e-3f;                                                   \
        p = p * r + 8.3334519073e-3f;                                                   \
        p = p * r + 4.1665795894e-2f;                                                   \
        p = p * r + 1.6666665459e-1f;                                                   \
        p = p * r + 5.0000001201e-1f;                                                   \
        p = p * r * r + r + 1.0f;                                                       \
        v8i bits = (__builtin_convertvector(nn, v8i) + 127) << 23;                       \
        v8f res = p * (v8f)bits;                                                        \
        (out) = (v8f)(((v8i)zero & mlo) | ((v8i)res & ~mlo));                           \
    } while (0)
    for (; i + 16 <= n; i += 16) {
        v8f a, b, x0, x1;
        memcpy(&x0, x + i, sizeof(x0));
        memcpy(&x1, x + i + 8, sizeof(x1));
        EXP8(a, x0 - mx);
        EXP8(b, x1 - mx);
        if (e != NULL) {
            memcpy(e + i, &a, sizeof(a));
            memcpy(e + i + 8, &b, sizeof(b));
        }
        acc0 += a;
        acc1 += b;
    }
#undef EXP8
    v8f acc = acc0 + acc1;
    double sum = 0;
    for (int l = 0; l < 8; l++)
        sum += acc[l];
    return sum + exp_sum_sse(x + i, mx, e != NULL ? e + i : NULL, n - i);
}
#endif

static int use_avx2 = -1; /* decided once, at the first eng_sampler_create */

static double exp_sum(const float *x, float mx, float *e, int n)
{
#ifdef HAVE_AVX2_PATH
    if (use_avx2 > 0)
        return exp_sum_avx2(x, mx, e, n);
#endif
    return exp_sum_sse(x, mx, e, n);
}

static double exp_sum_only(const float *x, float mx, int n) { return exp_sum(x, mx, NULL, n); }

/* Sum of w[0..n) (n a multiple of 16). */
static double chunk_sum(const float *w, int n)
{
    v4f a0 = vsplat(0), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < n; i += 16) {
        a0 += vload(w + i);
        a1 += vload(w + i + 4);
        a2 += vload(w + i + 8);
        a3 += vload(w + i + 12);
    }
    return hsum(a0 + a1) + hsum(a2 + a3);
}

static float chunk_max(const float *x, int n)
{
    v4f m0 = vload(x), m1 = vload(x + 4);
    for (int i = 8; i < n; i += 8) {
        m0 = vmax(m0, vload(x + i));
        m1 = vmax(m1, vload(x + i + 4));
    }
    return hmax(vmax(m0, m1));
}

/* Number of x[i] >= v (vLLM's rank). */
static int count_ge(const float *x, int n, float v)
{
    v4i c = {0, 0, 0, 0};
    v4f vv = vsplat(v);
    int i = 0;
    for (; i + 4 <= n; i += 4)
        c -= (v4i)(vload(x + i) >= vv); /* true lanes are -1 */
    int r = c[0] + c[1] + c[2] + c[3];
    for (; i < n; i++)
        r += x[i] >= v;
    return r;
}

static void scale_row(float *x, int n, float f)
{
    int i = 0;
    for (; i + 4 <= n; i += 4)
        vstore(x + i, vload(x + i) * f);
    for (; i < n; i++)
        x[i] *= f;
}

/* First index of the maximum (torch.argmax's tie rule) in one vector pass: each lane
 * keeps its best value and the first index holding it (strict > keeps the first). */
static int argmax(const float *x, int n)
{
    v4f b0 = vsplat(-INFINITY), b1 = b0;
    v4i i0 = {0, 1, 2, 3}, i1 = {4, 5, 6, 7}, c0 = i0, c1 = i1;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        v4f x0 = vload(x + i), x1 = vload(x + i + 4);
        v4i m0 = x0 > b0, m1 = x1 > b1;
        b0 = vsel(m0, x0, b0);
        b1 = vsel(m1, x1, b1);
        i0 = (c0 & m0) | (i0 & ~m0);
        i1 = (c1 & m1) | (i1 & ~m1);
        c0 += 8;
        c1 += 8;
    }
    float best = -INFINITY;
    int bi = 0;
    for (int l = 0; l < 4; l++) {
        if (b0[l] > best || (b0[l] == best && i0[l] < bi)) {
            best = b0[l];
            bi = i0[l];
        }
        if (b1[l] > best || (b1[l] == best && i1[l] < bi)) {
            best = b1[l];
            bi = i1[l];
        }
    }
    for (; i < n; i++)
        if (x[i] > best) {
            best = x[i];
            bi = i;
        }
    return bi;
}

// ---- partial selection ----

/* Min-heap on x[idx[]] (ties: larger index is "smaller" so lower ids win). */
static inline bool heap_less(const float *x, int32_t a, int32_t b)
{
    return x[a] < x[b] || (x[a] == x[b] && a > b);
}

static void sift_down(const float *x, int32_t *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, s = i;
        if (l < n && heap_less(x, h[l], h[s]))
            s = l;
        if (r < n && heap_less(x, h[r], h[s]))
            s = r;
        if (s == i)
            return;
        int32_t t = h[i];
        h[i] = h[s];
        h[s] = t;
        i = s;
    }
}

/* Top-k selection; *ties_p tells whether some value outside the selection equals
 * the smallest selected one (then vLLM's top_k keeps it too). */
static int topk_select(const float *x, int n, int k, int32_t *idx, bool *ties_p)
{
    enum { CHUNK = 64 };
    bool ties = false;
    if (k > n)
        k = n;
    if (k <= 0) {
        *ties_p = false;
        return 0;
    }
    for (int i = 0; i < k; i++)
        idx[i] = i;
    for (int i = k / 2 - 1; i >= 0; i--)
        sift_down(x, idx, k, i);
    /* Later indices only replace the root when strictly larger (an equal value at a
     * lower index wins).  Whole chunks whose max is not above the root are skipped.
     * The root only grows, so "an equal value was left out" resets when it does. */
    float thr = x[idx[0]];
    int i = k;
    while (i < n) {
        if ((i & (CHUNK - 1)) == 0 && i + CHUNK <= n) {
            float cm = chunk_max(x + i, CHUNK);
            if (!(cm > thr)) {
                ties |= cm == thr;
                i += CHUNK;
                continue;
            }
        }
        if (x[i] > thr) {
            float out = thr;
            idx[0] = i;
            sift_down(x, idx, k, 0);
            if (x[idx[0]] != thr)
                ties = false;
            thr = x[idx[0]];
            ties |= out == thr; /* the evicted one ties the new root */
        } else if (x[i] == thr) {
            ties = true;
        }
        i++;
    }
    *ties_p = ties;
    return k;
}

int eng_topk_select(const float *x, int n, int k, int32_t *idx)
{
    bool ties;
    return topk_select(x, n, k, idx, &ties);
}

/* Sort idx[0..k) by x descending (ties: lower index first): heap-sort the min-heap
 * eng_topk_select left behind. */
static void sort_desc(const float *x, int32_t *idx, int k)
{
    for (int i = k / 2 - 1; i >= 0; i--)
        sift_down(x, idx, k, i);
    for (int end = k - 1; end > 0; end--) {
        int32_t t = idx[0];
        idx[0] = idx[end];
        idx[end] = t;
        sift_down(x, idx, end, 0);
    }
    /* a min-heap sort leaves them descending */
}

// ---- create ----

pd_status_t eng_sampler_create(int vocab_size, eng_sampler_t **sampler_p)
{
    if (vocab_size < 1) {
        PD_LOG_ERR("sampler: vocab size %d", vocab_size);
        return PD_ERR_INVAL;
    }
    if (use_avx2 < 0) {
#ifdef HAVE_AVX2_PATH
        __builtin_cpu_init();
        use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
        use_avx2 = 0;
#endif
    }
    eng_sampler_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return PD_ERR_NOMEM;
    size_t V = (size_t)vocab_size;
    s->V = vocab_size;
    s->raw = malloc(V * sizeof(float));
    s->row = malloc(V * sizeof(float));
    s->e = malloc(V * sizeof(float));
    s->idx = malloc(V * sizeof(int32_t));
    s->stamp = calloc(V, sizeof(uint32_t));
    s->cstamp = calloc(V, sizeof(uint32_t));
    s->cnt = malloc(V * sizeof(int32_t));
    s->touched = malloc(V * sizeof(int32_t));
    if (!s->raw || !s->row || !s->e || !s->idx || !s->stamp || !s->cstamp || !s->cnt || !s->touched) {
        eng_sampler_destroy(s);
        return PD_ERR_NOMEM;
    }
    *sampler_p = s;
    return PD_OK;
}

void eng_sampler_destroy(eng_sampler_t *s)
{
    if (s == NULL)
        return;
    free(s->raw);
    free(s->row);
    free(s->e);
    free(s->idx);
    free(s->stamp);
    free(s->cstamp);
    free(s->cnt);
    free(s->touched);
    free(s);
}

int eng_sampler_vocab(const eng_sampler_t *s) { return s->V; }

static uint32_t next_stamp(eng_sampler_t *s)
{
    if (++s->cur == 0) { /* wrapped: old marks could collide */
        memset(s->stamp, 0, (size_t)s->V * sizeof(uint32_t));
        memset(s->cstamp, 0, (size_t)s->V * sizeof(uint32_t));
        s->cur = 1;
    }
    return s->cur;
}

// ---- logprobs ----

/* top/target from a raw row given its max and log-sum-exp. */
static void fill_logprobs(eng_sampler_t *s, const float *x, float mx, float lse, int32_t target, int n_top,
                          eng_logprob_t *top, eng_logprob_t *target_p)
{
    int V = s->V;
    if (n_top > 0 && top != NULL) {
        int k = eng_topk_select(x, V, n_top, s->idx);
        sort_desc(x, s->idx, k);
        for (int i = 0; i < k; i++) {
            top[i].token = s->idx[i];
            top[i].logprob = x[s->idx[i]] - mx - lse;
            top[i].rank = i + 1;
        }
    }
    if (target >= 0 && target < V && target_p != NULL) {
        float v = x[target];
        int rank = count_ge(x, V, v);
        target_p->token = target;
        target_p->logprob = v - mx - lse;
        target_p->rank = rank;
    }
}

pd_status_t eng_sampler_logprobs(eng_sampler_t *s, const float *logits, int32_t target, int n_top,
                                 eng_logprob_t *top, eng_logprob_t *target_p)
{
    if (n_top < 0 || n_top > s->V || target >= s->V)
        return PD_ERR_INVAL;
    float mx = row_max(logits, s->V);
    if (!isfinite(mx))
        return PD_ERR_INVAL;
    float lse = (float)log(exp_sum_only(logits, mx, s->V));
    fill_logprobs(s, logits, mx, lse, target, n_top, top, target_p);
    return PD_OK;
}

// ---- transforms ----

void eng_sampler_apply_penalties(eng_sampler_t *s, float *logits, const eng_sample_ctx_t *ctx)
{
    const eng_sampling_params_t *p = ctx->params;
    int V = s->V;

    if (p->repetition_penalty != 1.0f) {
        uint32_t cur = next_stamp(s);
        float rp = p->repetition_penalty;
        for (int pass = 0; pass < 2; pass++) {
            const int32_t *t = pass == 0 ? ctx->prompt : ctx->output;
            int n = pass == 0 ? ctx->n_prompt : ctx->n_output;
            for (int i = 0; i < n; i++) {
                int32_t v = t[i];
                if (v < 0 || v >= V || s->stamp[v] == cur)
                    continue;
                s->stamp[v] = cur;
                logits[v] = logits[v] > 0 ? logits[v] / rp : logits[v] * rp;
            }
        }
    }
    if (p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f) {
        uint32_t cur = next_stamp(s);
        int nt = 0;
        for (int i = 0; i < ctx->n_output; i++) {
            int32_t v = ctx->output[i];
            if (v < 0 || v >= V)
                continue;
            if (s->cstamp[v] != cur) {
                s->cstamp[v] = cur;
                s->cnt[v] = 0;
                s->touched[nt++] = v;
            }
            s->cnt[v]++;
        }
        for (int i = 0; i < nt; i++) {
            int32_t v = s->touched[i];
            logits[v] -= p->frequency_penalty * (float)s->cnt[v] + p->presence_penalty;
        }
    }
}

static void apply_processors(eng_sampler_t *s, float *logits, const eng_sample_ctx_t *ctx)
{
    const eng_sampling_params_t *p = ctx->params;
    int V = s->V;

    if (p->n_allowed_token_ids > 0) {
        uint32_t cur = next_stamp(s);
        for (int i = 0; i < p->n_allowed_token_ids; i++) {
            int32_t v = p->allowed_token_ids[i];
            if (v >= 0 && v < V)
                s->stamp[v] = cur;
        }
        for (int i = 0; i < V; i++)
            if (s->stamp[i] != cur)
                logits[i] = -INFINITY;
    }
    for (int w = 0; w < p->n_bad_words; w++) {
        const int32_t *bw = p->bad_words_tokens + p->bad_words_off[w];
        int L = p->bad_words_off[w + 1] - p->bad_words_off[w];
        int32_t last = bw[L - 1];
        if (last < 0 || last >= V || L - 1 > ctx->n_output)
            continue;
        if (L == 1 || memcmp(ctx->output + ctx->n_output - (L - 1), bw, (size_t)(L - 1) * sizeof(int32_t)) == 0)
            logits[last] = -INFINITY;
    }
    if (ctx->n_output < p->min_tokens) {
        for (int i = 0; i < p->n_stop_token_ids; i++)
            if (p->stop_token_ids[i] >= 0 && p->stop_token_ids[i] < V)
                logits[p->stop_token_ids[i]] = -INFINITY;
        if (!p->ignore_eos)
            for (int i = 0; i < ctx->n_eos; i++)
                if (ctx->eos_ids[i] >= 0 && ctx->eos_ids[i] < V)
                    logits[ctx->eos_ids[i]] = -INFINITY;
    }
    for (int i = 0; i < p->n_logit_bias; i++) {
        int32_t v = p->logit_bias[i].token;
        if (v >= 0 && v < V)
            logits[v] += p->logit_bias[i].bias;
    }
    eng_sampler_apply_penalties(s, logits, ctx);
}

/* Pick from candidates cand[0..n) with weights w[cand[i]] summing to total. */
static int32_t draw(const float *w, const int32_t *cand, int n, double total, eng_rng_t *rng)
{
    double u = eng_rng_uniform(rng) * total, acc = 0;
    int32_t last = -1;
    for (int i = 0; i < n; i++) {
        float wi = w[cand[i]];
        if (wi <= 0)
            continue;
        acc += wi;
        last = cand[i];
        if (u < acc)
            return cand[i];
    }
    return last;
}

/* Inverse CDF over the whole row: chunk sums (vectorized) find the chunk, then a
 * scan inside it. */
static int32_t draw_all(const float *w, int n, double total, eng_rng_t *rng)
{
    enum { CHUNK = 512 };
    double u = eng_rng_uniform(rng) * total, acc = 0;
    int32_t last = -1;
    int i = 0;
    for (; i + CHUNK <= n; i += CHUNK) {
        double cs = chunk_sum(w + i, CHUNK);
        if (acc + cs > u)
            break;
        acc += cs;
    }
    for (; i < n; i++) {
        if (w[i] <= 0)
            continue;
        acc += w[i];
        last = i;
        if (u < acc)
            return i;
    }
    if (last >= 0)
        return last;
    /* Rounding ran past every chunk: take the last token with weight. */
    for (int j = n - 1; j >= 0; j--)
        if (w[j] > 0)
            return j;
    return -1;
}

/* Sample from the processed logits x (temperature temp not applied yet). */
static int32_t sample_filtered(eng_sampler_t *s, float *x, float temp, const eng_sampling_params_t *p,
                               eng_rng_t *rng)
{
    int V = s->V;
    int k = (p->top_k > 0 && p->top_k < V) ? p->top_k : 0;
    float mx, thr = -INFINITY;

    if (k > 0) {
        /* Selection and min_p are invariant under the positive temperature scale, so
         * they run on the unscaled row and only the candidates are scaled. */
        bool ties;
        int n = topk_select(x, V, k, s->idx, &ties);
        sort_desc(x, s->idx, n);
        mx = x[s->idx[0]];
        if (!isfinite(mx))
            return -1;
        if (ties) { /* vLLM keeps every token tied with the k-th value */
            float kth = x[s->idx[n - 1]];
            uint32_t cur = next_stamp(s);
            for (int i = 0; i < n; i++)
                s->stamp[s->idx[i]] = cur;
            for (int i = 0; i < V; i++)
                if (x[i] == kth && s->stamp[i] != cur)
                    s->idx[n++] = i;
        }
        if (p->min_p > 0.0f)
            thr = mx + temp * logf(p->min_p); /* prob >= min_p * max_prob after scaling */
        float inv = 1.0f / temp;
        double total = 0;
        int kept = 0;
        for (int i = 0; i < n; i++) {
            int32_t t = s->idx[i];
            if (x[t] < thr)
                break;
            s->e[t] = fast_exp((x[t] - mx) * inv);
            total += s->e[t];
            kept++;
        }
        if (p->top_p < 1.0f) {
            double acc = 0;
            int keep = 0;
            while (keep < kept && acc < (double)p->top_p * total)
                acc += s->e[s->idx[keep++]];
            if (keep == 0)
                keep = 1;
            kept = keep;
            total = acc > 0 ? acc : s->e[s->idx[0]];
        }
        return draw(s->e, s->idx, kept, total, rng);
    }

    if (temp != 1.0f)
        scale_row(x, V, 1.0f / temp);
    mx = row_max(x, V);
    if (!isfinite(mx))
        return -1;
    /* No top_k: weights over the whole vocabulary (min_p zeroes the low ones). */
    double total = exp_sum(x, mx, s->e, V);
    if (p->min_p > 0.0f) {
        float cut = p->min_p; /* e is relative to the max, which is 1 */
        v4f acc = vsplat(0), vc = vsplat(cut);
        int i = 0;
        for (; i + 4 <= V; i += 4) {
            v4f v = vload(s->e + i);
            v = vsel(v >= vc, v, vsplat(0));
            vstore(s->e + i, v);
            acc += v;
        }
        total = hsum(acc);
        for (; i < V; i++) {
            if (s->e[i] < cut)
                s->e[i] = 0;
            total += s->e[i];
        }
    }
    if (p->top_p >= 1.0f)
        return draw_all(s->e, V, total, rng);

    /* top_p: grow a sorted candidate prefix until it holds p of the mass. */
    double want = (double)p->top_p * total;
    for (int m = 64;; m *= 8) {
        if (m > V)
            m = V;
        int n = eng_topk_select(s->e, V, m, s->idx);
        sort_desc(s->e, s->idx, n);
        double acc = 0;
        int keep = 0;
        while (keep < n && acc < want && s->e[s->idx[keep]] > 0)
            acc += s->e[s->idx[keep++]];
        if (acc >= want || n == V || (keep < n && s->e[s->idx[keep]] <= 0)) {
            if (keep == 0)
                keep = 1;
            return draw(s->e, s->idx, keep, acc > 0 ? acc : 1.0, rng);
        }
    }
}

/* Nothing but the raw logits decides the token: no logprobs and no logits processor. */
static bool raw_logits_only(const eng_sample_ctx_t *ctx)
{
    const eng_sampling_params_t *p = ctx->params;
    /* everything apply_processors() and the logprobs in eng_sampler_sample could do to
     * the pick or the result; keep in step with them */
    bool min_tokens_bans = ctx->n_output < p->min_tokens && (p->n_stop_token_ids > 0 || (!p->ignore_eos && ctx->n_eos > 0));
    return p->logprobs < 0 && !(p->best_of > p->n) && p->n_allowed_token_ids == 0 && p->n_bad_words == 0 &&
           !min_tokens_bans && p->n_logit_bias == 0 && p->repetition_penalty == 1.0f && p->frequency_penalty == 0.0f &&
           p->presence_penalty == 0.0f;
}

bool eng_sampler_argmax_only(const eng_sample_ctx_t *ctx)
{
    return eng_sampling_params_greedy(ctx->params) && raw_logits_only(ctx);
}

bool eng_sampler_device_ok(const eng_sample_ctx_t *ctx)
{
    return !eng_sampling_params_greedy(ctx->params) && raw_logits_only(ctx);
}

void eng_sampler_argmax_result(int32_t token, eng_sample_result_t *res)
{
    res->token = token;
    res->n_top = 0;
    res->logprob = NAN;
    res->rank = 0;
}

pd_status_t eng_sampler_sample(eng_sampler_t *s, float *logits, const eng_sample_ctx_t *ctx,
                               eng_sample_result_t *res)
{
    const eng_sampling_params_t *p = ctx->params;
    int V = s->V;
    /* best_of ranks sequences by cumulative logprob, so it needs them too */
    bool want_lp = p->logprobs >= 0 || p->best_of > p->n;
    float raw_mx = 0, raw_lse = 0;
    int32_t tok;

    if (want_lp) {
        memcpy(s->raw, logits, (size_t)V * sizeof(float));
        raw_mx = row_max(s->raw, V);
        raw_lse = (float)log(exp_sum_only(s->raw, raw_mx, V));
    }
    apply_processors(s, logits, ctx);
    if (eng_sampling_params_greedy(p)) {
        tok = argmax(logits, V);
        if (logits[tok] == -INFINITY)
            tok = -1;
    } else {
        tok = sample_filtered(s, logits, p->temperature, p, ctx->rng);
    }
    if (tok < 0) {
        PD_LOG_WARN("sampler: every token is masked");
        return PD_ERR_INVAL;
    }
    res->token = tok;
    res->n_top = 0;
    res->logprob = NAN;
    res->rank = 0;
    if (want_lp) {
        eng_logprob_t t;
        int n_top = p->logprobs < 0 ? 0 : p->logprobs < V ? p->logprobs : V;
        fill_logprobs(s, s->raw, raw_mx, raw_lse, tok, res->top != NULL ? n_top : 0, res->top, &t);
        res->logprob = t.logprob;
        res->rank = t.rank;
        res->n_top = res->top != NULL ? n_top : 0;
    }
    return PD_OK;
}

pd_status_t eng_sampler_sample_batch(eng_sampler_t *s, const eng_batch_t *b, float *logits, size_t row_stride,
                                     const int32_t *eos_ids, int n_eos, int32_t *sampled,
                                     eng_sample_result_t *results)
{
    pd_status_t ret = PD_OK;
    size_t row = 0;

    for (int i = 0; i < b->n_seqs; i++) {
        const eng_batch_seq_t *q = &b->seqs[i];
        if (!q->want_logits)
            continue;
        float *x = logits + row * row_stride;
        row++;
        for (int j = 0; j < q->n_samples; j++) {
            eng_request_t *r = eng_request_seq(q->req, j);
            eng_sample_result_t local = {0}, *res = results != NULL ? &results[q->sample_offset + j] : &local;
            float *work = x;
            if (q->n_samples > 1) { /* every sample starts from the untouched row */
                memcpy(s->row, x, (size_t)s->V * sizeof(float));
                work = s->row;
            }
            eng_sample_ctx_t ctx = {
                .params = &r->params,
                .prompt = r->tokens,
                .n_prompt = r->n_prompt,
                .output = eng_request_output(r),
                .n_output = eng_request_n_output(r),
                .rng = &r->rng,
                .eos_ids = eos_ids,
                .n_eos = n_eos,
            };
            if (eng_sampler_sample(s, work, &ctx, res) != PD_OK) {
                PD_LOG_REQ(WARN, r->id, "nothing can be sampled: every token is masked");
                sampled[q->sample_offset + j] = -1;
                ret = PD_ERR_INVAL;
                continue;
            }
            sampled[q->sample_offset + j] = res->token;
        }
    }
    return ret;
}
