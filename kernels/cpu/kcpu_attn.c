/*
 * kcpu_attn.c - the paged KV cache on the host: layout, writes, block copies, and paged
 * attention over block tables for batches mixing prefill chunks and decode tokens.
 *
 * Attention runs one work item per (token, KV head): the item loads each key/value row
 * once and applies it to every query head of the GQA group.  Keys are visited one cache
 * block at a time: scores of the block, then one online-softmax rescale (flash style),
 * then the weighted V sum, all in f32.  The visiting order of keys is fixed by position,
 * so results do not depend on threads.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kcpu.h"
#include "kcpu_internal.h"
#include "pd_log.h"
#include "pd_util.h"

pd_status_t kcpu_kv_layout_init(kcpu_kv_layout_t *L, kcpu_dtype_t dtype, int n_layers,
                                int block_size, int n_kv_heads, int head_dim, int64_t n_blocks)
{
    size_t elems, bytes;

    if (dtype != KCPU_DTYPE_F32 && dtype != KCPU_DTYPE_F16) {
        PD_LOG_ERR("kcpu kv cache: dtype %s not supported (f32, f16)", kcpu_dtype_name(dtype));
        return PD_ERR_UNSUPPORTED;
    }
    if (n_layers <= 0 || block_size <= 0 || n_kv_heads <= 0 || head_dim <= 0 || n_blocks < 0) {
        PD_LOG_ERR("kcpu kv cache: bad layout layers=%d block=%d kv_heads=%d head_dim=%d",
                   n_layers, block_size, n_kv_heads, head_dim);
        return PD_ERR_INVAL;
    }
    if (pd_mul_size((size_t)n_kv_heads, (size_t)head_dim, &elems) != PD_OK ||
        pd_mul_size(elems, (size_t)block_size, &elems) != PD_OK ||
        pd_mul_size(elems, 2 * (size_t)n_layers, &elems) != PD_OK ||
        pd_mul_size(elems, dtype == KCPU_DTYPE_F32 ? 4 : 2, &bytes) != PD_OK ||
        bytes > (size_t)INT64_MAX)
        return PD_ERR_OVERFLOW;
    memset(L, 0, sizeof(*L));
    L->dtype = dtype;
    L->n_layers = n_layers;
    L->block_size = block_size;
    L->n_kv_heads = n_kv_heads;
    L->head_dim = head_dim;
    L->n_blocks = n_blocks;
    L->elem_bytes = dtype == KCPU_DTYPE_F32 ? 4 : 2;
    L->head_stride = head_dim;
    L->token_stride = (int64_t)n_kv_heads * head_dim;
    L->kv_stride = (int64_t)block_size * L->token_stride;
    L->layer_stride = 2 * L->kv_stride;
    L->block_bytes = bytes;
    return PD_OK;
}

/* element offset (within the whole cache) of token slot `slot`, layer, K (kv=0) or V */
static inline size_t kv_elem(const kcpu_kv_layout_t *L, int layer, int kv, int64_t block, int64_t off)
{
    return (size_t)block * (L->block_bytes / L->elem_bytes) + (size_t)layer * (size_t)L->layer_stride +
           (size_t)kv * (size_t)L->kv_stride + (size_t)off * (size_t)L->token_stride;
}

static void store_row(const kcpu_kv_layout_t *L, void *base, size_t elem, const float *src, int64_t n)
{
    if (L->dtype == KCPU_DTYPE_F32) {
        memcpy((float *)base + elem, src, (size_t)n * 4);
    } else {
        uint16_t *d = (uint16_t *)base + elem;
        for (int64_t i = 0; i < n; i++)
            d[i] = kcpu_f32_to_f16(src[i]);
    }
}

pd_status_t kcpu_kv_write(const kcpu_kv_layout_t *L, void *cache_base, int layer,
                          const int64_t *slot_mapping, int64_t T, const float *k,
                          int64_t k_stride, const float *v, int64_t v_stride)
{
    const int64_t row = L->token_stride;

    if (layer < 0 || layer >= L->n_layers || T < 0 || k_stride < row || v_stride < row ||
        (T > 0 && (cache_base == NULL || slot_mapping == NULL || k == NULL || v == NULL))) {
        PD_LOG_ERR("kcpu_kv_write: bad arguments (layer %d of %d, T=%lld)", layer, L->n_layers,
                   (long long)T);
        return layer < 0 || layer >= L->n_layers ? PD_ERR_RANGE : PD_ERR_INVAL;
    }
    for (int64_t t = 0; t < T; t++) {
        int64_t slot = slot_mapping[t];
        if (slot < 0)
            continue;
        int64_t block = slot / L->block_size, off = slot % L->block_size;
        if (block >= L->n_blocks) {
            PD_LOG_ERR("kcpu_kv_write: slot %lld outside the cache (%lld blocks)", (long long)slot,
                       (long long)L->n_blocks);
            return PD_ERR_RANGE;
        }
        store_row(L, cache_base, kv_elem(L, layer, 0, block, off), k + t * k_stride, row);
        store_row(L, cache_base, kv_elem(L, layer, 1, block, off), v + t * v_stride, row);
    }
    return PD_OK;
}

pd_status_t kcpu_kv_copy_blocks(const kcpu_kv_layout_t *L, void *cache_base, const int32_t *src,
                                const int32_t *dst, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        if (src[i] < 0 || src[i] >= L->n_blocks || dst[i] < 0 || dst[i] >= L->n_blocks) {
            PD_LOG_ERR("kcpu_kv_copy_blocks: block %d -> %d outside the cache", src[i], dst[i]);
            return PD_ERR_RANGE;
        }
    }
    for (int64_t i = 0; i < n; i++)
        if (src[i] != dst[i])
            memmove((uint8_t *)cache_base + (size_t)dst[i] * L->block_bytes,
                    (const uint8_t *)cache_base + (size_t)src[i] * L->block_bytes, L->block_bytes);
    return PD_OK;
}

/* ---- paged attention ---- */

#define ATTN_MAX_GROUP 256

typedef struct {
    const kcpu_attn_params_t *p;
    bool simd;
    int err;            /* set (atomically) when an item found bad metadata */
    int max_r;          /* tokens per run */
    int heads_per_item; /* query heads per item: the GQA group, or 1 when items are few */
    const int64_t *run_start; /* [n_runs + 1] first token of each run */
} attn_args_t;

/* n rows of head_dim elements of the cache starting at element `elem` (rows token_stride
 * apart) as f32: a pointer into the cache (f32) or converted into buf (f16, rows hd apart).
 * *ld_p receives the row stride of the result. */
static inline const float *cache_rows(const kcpu_kv_layout_t *L, const void *base, size_t elem,
                                      int n, float *buf, int64_t *ld_p)
{
    if (L->dtype == KCPU_DTYPE_F32) {
        *ld_p = L->token_stride;
        return (const float *)base + elem;
    }
    for (int j = 0; j < n; j++)
        kcpu_dequant_row(KCPU_DTYPE_F16, (const uint16_t *)base + elem + (size_t)j * (size_t)L->token_stride,
                         buf + (int64_t)j * L->head_dim, L->head_dim);
    *ld_p = L->head_dim;
    return buf;
}

/* scores[g * ldsc + j] = scale * q_g . k_j */
static void block_scores(const float *q, int G, int hd, const float *k, int64_t ldk, int n,
                         float scale, float *scores, int64_t ldsc, bool simd)
{
#if KCPU_HAVE_X86
    if (simd) {
        kcpu_attn_scores_avx2(q, G, hd, k, ldk, n, scale, scores, ldsc);
        return;
    }
#endif
    for (int g = 0; g < G; g++)
        for (int j = 0; j < n; j++)
            scores[g * ldsc + j] = kcpu_vec_dot_f32_scalar(q + (int64_t)g * hd, k + j * ldk, hd) * scale;
}

/* acc[g] += sum_j p[g][j] * v_j */
static void block_pv(float *acc, int G, int hd, const float *p, int64_t ldp, const float *v,
                     int64_t ldv, int n, bool simd)
{
#if KCPU_HAVE_X86
    if (simd) {
        kcpu_attn_pv_avx2(acc, G, hd, p, ldp, v, ldv, n);
        return;
    }
#endif
    for (int g = 0; g < G; g++)
        for (int j = 0; j < n; j++) {
            float w = p[g * ldp + j];
            const float *vr = v + j * ldv;
            float *a = acc + (int64_t)g * hd;
            for (int i = 0; i < hd; i++)
                a[i] = fmaf(w, vr[i], a[i]);
        }
}

/*
 * One work item: a run of R consecutive tokens of one sequence (consecutive positions,
 * R <= max_r) and `heads_per_item` query heads of one KV head (the whole GQA group, or
 * one head when items are few), i.e. R * heads query rows sharing every K/V load.
 * Row r = (token i, head g) is row i * heads + g.  Keys a row may not see (beyond its
 * position, or outside its window) get a -inf score: they add exact zeros, so a
 * token's result does not depend on the run it was batched in.
 */
typedef struct {
    float *q;      /* [rows][hd] gathered queries */
    float *scores; /* [rows][bs] */
    float *acc;    /* [rows][hd] */
    float *kbuf, *vbuf; /* [bs][hd] f16 -> f32 staging */
    float *m, *l;  /* [rows] */
} attn_scratch_t;

static void attn_item(attn_args_t *a, int64_t item, attn_scratch_t *S)
{
    const kcpu_attn_params_t *p = a->p;
    const kcpu_kv_layout_t *L = p->layout;
    const int hd = p->head_dim;
    const int hpi = a->heads_per_item;         /* query heads of this item */
    const int n_sub = p->n_heads / p->n_kv_heads / hpi;
    const int64_t run = item / ((int64_t)p->n_kv_heads * n_sub);
    const int rem = (int)(item % ((int64_t)p->n_kv_heads * n_sub));
    const int kvh = rem / n_sub;
    const int h0 = kvh * (p->n_heads / p->n_kv_heads) + (rem % n_sub) * hpi; /* first q head */
    const int group = hpi; /* rows per token below */
    const int bs = L->block_size;
    const int64_t t0 = a->run_start[run];
    const int R = (int)(a->run_start[run + 1] - t0);
    const int rows = R * group;
    const int32_t s = p->tok_seq[t0];
    const int32_t pos0 = p->tok_pos[t0];
    const int64_t posR = (int64_t)pos0 + R - 1;

    if (s < 0 || s >= p->n_seqs || pos0 < 0) {
        __atomic_store_n(&a->err, 1, __ATOMIC_RELAXED);
        return;
    }
    const int32_t ctx = p->context_lens[s];
    int64_t hi = p->causal ? posR : (int64_t)ctx - 1;
    int64_t lo = p->sliding_window > 0 ? (int64_t)pos0 - p->sliding_window + 1 : 0;
    if (lo < 0)
        lo = 0;
    if (posR >= ctx || ctx > p->max_blocks_per_seq * bs) {
        __atomic_store_n(&a->err, 1, __ATOMIC_RELAXED);
        return;
    }
    const int32_t *bt = p->block_tables + (int64_t)s * p->max_blocks_per_seq;

    for (int i = 0; i < R; i++)
        memcpy(S->q + (int64_t)i * group * hd, p->q + (t0 + i) * p->q_stride + (int64_t)h0 * hd,
               sizeof(float) * (size_t)group * (size_t)hd);
    for (int r = 0; r < rows; r++) {
        S->m[r] = -INFINITY;
        S->l[r] = 0.0f;
    }
    memset(S->acc, 0, sizeof(float) * (size_t)rows * (size_t)hd);
    for (int64_t start = lo; start <= hi;) {
        int64_t blk = start / bs;
        int64_t end = (blk + 1) * bs - 1;
        if (end > hi)
            end = hi;
        int32_t b = bt[blk];
        if (b < 0 || b >= L->n_blocks) {
            __atomic_store_n(&a->err, 1, __ATOMIC_RELAXED);
            return;
        }
        int n = (int)(end - start + 1);
        size_t kbase = kv_elem(L, p->layer, 0, b, start % bs) + (size_t)kvh * (size_t)L->head_stride;
        size_t vbase = kv_elem(L, p->layer, 1, b, start % bs) + (size_t)kvh * (size_t)L->head_stride;
        int64_t ldk, ldv;
        const float *kr = cache_rows(L, p->cache_base, kbase, n, S->kbuf, &ldk);
        block_scores(S->q, rows, hd, kr, ldk, n, p->scale, S->scores, bs, a->simd);
        for (int r = 0; r < rows; r++) {
            float *sc = S->scores + (int64_t)r * bs;
            const int64_t pos = pos0 + r / group;
            /* visible keys of this row within [start, end] */
            int64_t vlo = p->sliding_window > 0 ? pos - p->sliding_window + 1 : 0;
            int64_t vhi = p->causal ? pos : hi;
            for (int j = 0; j < n; j++)
                if (start + j < vlo || start + j > vhi)
                    sc[j] = -INFINITY;
            float mx = S->m[r];
            for (int j = 0; j < n; j++)
                mx = sc[j] > mx ? sc[j] : mx;
            if (mx == -INFINITY) { /* nothing visible yet: all weights 0 */
                for (int j = 0; j < n; j++)
                    sc[j] = 0.0f;
                continue;
            }
            float corr = expf(S->m[r] - mx); /* 0 on the first visible block */
            float sum = 0.0f;
#if KCPU_HAVE_X86
            if (a->simd) {
                sum = kcpu_exp_sub_sum_avx2(sc, n, mx);
            } else
#endif
            {
                for (int j = 0; j < n; j++) {
                    sc[j] = expf(sc[j] - mx);
                    sum += sc[j];
                }
            }
            S->l[r] = S->l[r] * corr + sum;
            S->m[r] = mx;
            if (corr != 1.0f) {
                float *ac = S->acc + (int64_t)r * hd;
                for (int i = 0; i < hd; i++)
                    ac[i] *= corr;
            }
        }
        const float *vr = cache_rows(L, p->cache_base, vbase, n, S->vbuf, &ldv);
        block_pv(S->acc, rows, hd, S->scores, bs, vr, ldv, n, a->simd);
        start = end + 1;
    }
    for (int r = 0; r < rows; r++) {
        int i = r / group, g = r % group;
        float *o = p->out + (t0 + i) * p->out_stride + ((int64_t)h0 + g) * hd;
        const float *ac = S->acc + (int64_t)r * hd;
        float inv = S->l[r] > 0.0f ? 1.0f / S->l[r] : 0.0f;
        for (int d = 0; d < hd; d++)
            o[d] = ac[d] * inv;
    }
}

static void attn_task(void *arg, int64_t begin, int64_t end, int tid)
{
    attn_args_t *a = arg;
    const kcpu_attn_params_t *p = a->p;
    const size_t rows = (size_t)a->heads_per_item * (size_t)a->max_r, hd = (size_t)p->head_dim;
    const size_t bs = (size_t)p->layout->block_size;
    const size_t n_kv = p->layout->dtype == KCPU_DTYPE_F32 ? 0 : bs * hd;
    float *buf = malloc(sizeof(float) * (rows * hd * 2 + rows * bs + 2 * n_kv + 2 * rows));
    attn_scratch_t S;

    if (buf == NULL) {
        __atomic_store_n(&a->err, 2, __ATOMIC_RELAXED);
        return;
    }
    S.q = buf;
    S.acc = S.q + rows * hd;
    S.scores = S.acc + rows * hd;
    S.kbuf = S.scores + rows * bs;
    S.vbuf = S.kbuf + n_kv;
    S.m = S.vbuf + n_kv;
    S.l = S.m + rows;
    for (int64_t it = begin; it < end; it++)
        attn_item(a, it, &S);
    free(buf);
}

pd_status_t kcpu_paged_attention(kcpu_pool_t *pool, const kcpu_attn_params_t *p)
{
    const kcpu_kv_layout_t *L = p ? p->layout : NULL;

    if (p == NULL || L == NULL || p->n_tokens < 0 || p->n_heads <= 0 || p->n_kv_heads <= 0 ||
        p->n_heads % p->n_kv_heads != 0 || p->n_heads / p->n_kv_heads > ATTN_MAX_GROUP ||
        p->n_kv_heads != L->n_kv_heads || p->head_dim != L->head_dim ||
        p->layer < 0 || p->layer >= L->n_layers || p->sliding_window < 0 ||
        p->q_stride < (int64_t)p->n_heads * p->head_dim ||
        p->out_stride < (int64_t)p->n_heads * p->head_dim || p->max_blocks_per_seq <= 0 ||
        p->n_seqs <= 0 ||
        (p->n_tokens > 0 && (p->q == NULL || p->out == NULL || p->tok_seq == NULL ||
                             p->tok_pos == NULL || p->block_tables == NULL ||
                             p->context_lens == NULL || p->cache_base == NULL))) {
        PD_LOG_ERR("kcpu_paged_attention: bad parameters");
        return PD_ERR_INVAL;
    }
    if (p->n_tokens == 0)
        return PD_OK;
    /* runs: consecutive tokens of one sequence at consecutive positions, up to ~16 query
     * rows per item (GQA group x tokens) */
    const int group = p->n_heads / p->n_kv_heads;
    attn_args_t a = { p, kcpu_simd_enabled(), 0, group >= 16 ? 1 : 16 / group, group, NULL };
    if (a.max_r > 8)
        a.max_r = 8;
    int64_t *runs = malloc(sizeof(int64_t) * (size_t)(p->n_tokens + 1)), n_runs = 0;
    if (runs == NULL)
        return PD_ERR_NOMEM;
    for (int64_t t = 0; t < p->n_tokens; t++) {
        if (t == 0 || p->tok_seq[t] != p->tok_seq[t - 1] ||
            (int64_t)p->tok_pos[t] != (int64_t)p->tok_pos[t - 1] + 1 ||
            t - runs[n_runs - 1] >= a.max_r)
            runs[n_runs++] = t;
    }
    runs[n_runs] = p->n_tokens;
    a.run_start = runs;
    /* Fewer (run, KV head) items than threads (a decode step of one sequence on many
     * cores): one item per query head so every thread has work, at the price of reading
     * K/V once per head instead of once per group.  The per-row arithmetic is the same
     * either way (score pairs, PV rows and exp are per row): outputs do not change. */
    int nth = kcpu_pool_n_threads(pool);
    if (group > 1 && n_runs * p->n_kv_heads < (int64_t)nth)
        a.heads_per_item = 1;
    kcpu_pool_run(pool, n_runs * (p->n_heads / a.heads_per_item), 1, attn_task, &a);
    free(runs);
    if (a.err == 2)
        return PD_ERR_NOMEM;
    if (a.err) {
        PD_LOG_ERR("kcpu_paged_attention: a token's sequence, position or block is out of range");
        return PD_ERR_RANGE;
    }
    return PD_OK;
}
