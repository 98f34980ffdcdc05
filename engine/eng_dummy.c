/*
 * eng_dummy.c - dummy weights at a configuration's shape (--load-format dummy).
 *
 * Like vLLM's dummy loader, weight matrices and embeddings are uniform in
 * [-1e-3, 1e-3]; unlike it, norm weights are 1.0 and biases 0, which keeps activations
 * at a sane scale through deep stacks (vLLM randomises those too).  Tensors are stored
 * in the resolved dtype (config.dtype).
 *
 * Values come from a counter-based generator: element i of a tensor is a hash of
 * (seed, hash of the tensor's name, i), so the weights are the same whatever the number
 * of threads or the order of filling.  All tensors live in one anonymous mapping made
 * with MAP_NORESERVE; with dummy_no_data nothing is allocated and data stays NULL
 * (shape-only models for tests and planning).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "eng_model_int.h"
#include "pd_log.h"
#include "pd_util.h"

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in (-1e-3, 1e-3) from 16 random bits (the midpoints of 65536 bins: more
 * resolution than bf16/f16 keep near 1e-3, and symmetric around 0). */
static inline float to_uniform(uint32_t bits16)
{
    return (((float)bits16 + 0.5f) * (1.0f / 32768.0f) - 1.0f) * 1e-3f;
}

/* 16 random bits -> value tables, one per type: the fill is then a hash per four
 * elements plus a lookup each (no float conversion in the loop).  Built once. */
static float tab_f32[65536];
static uint16_t tab_f16[65536], tab_bf16[65536];
static pthread_once_t tab_once = PTHREAD_ONCE_INIT;

static void tab_init(void)
{
    for (uint32_t b = 0; b < 65536; b++) {
        tab_f32[b] = to_uniform(b);
        tab_f16[b] = eng_f32_to_f16(tab_f32[b]);
        tab_bf16[b] = eng_f32_to_bf16(tab_f32[b]);
    }
}

/* Element idx uses 16 bits of hash(key, idx / 4): the same values whatever the range
 * bounds. */
#define FILL_LOOP(TAB)                                                        \
    for (size_t i = begin; i < end;) {                                        \
        uint64_t idx = (uint64_t)(first_index + i);                           \
        uint64_t h = mix64(key + (idx >> 2) * 0x9e3779b97f4a7c15ull);         \
        if ((idx & 3) == 0 && end - i >= 4) {                                 \
            d[i] = TAB[h & 0xffff];                                           \
            d[i + 1] = TAB[(h >> 16) & 0xffff];                               \
            d[i + 2] = TAB[(h >> 32) & 0xffff];                               \
            d[i + 3] = TAB[h >> 48];                                          \
            i += 4;                                                           \
            continue;                                                         \
        }                                                                     \
        for (unsigned k = (unsigned)(idx & 3); k < 4 && i < end; k++, i++)    \
            d[i] = TAB[(h >> (16 * k)) & 0xffff];                             \
    }

static void fill_range(eng_dtype_t type, void *dst, size_t begin, size_t end, uint64_t key,
                       size_t first_index)
{
    pthread_once(&tab_once, tab_init);
    if (type == ENG_DTYPE_F32) {
        float *d = dst;
        FILL_LOOP(tab_f32)
    } else if (type == ENG_DTYPE_BF16) {
        uint16_t *d = dst;
        FILL_LOOP(tab_bf16)
    } else {
        uint16_t *d = dst;
        FILL_LOOP(tab_f16)
    }
}

typedef struct {
    eng_dtype_t type;
    void *dst;
    size_t begin, end;
    uint64_t key;
    size_t first_index;
} fill_job_t;

static void *fill_thread(void *arg)
{
    fill_job_t *j = arg;
    fill_range(j->type, j->dst, j->begin, j->end, j->key, j->first_index);
    return NULL;
}

static int auto_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 16 ? 16 : (int)n;
}

static pd_status_t fill_threaded(eng_dtype_t type, void *dst, size_t n, uint64_t key,
                                 size_t first_index, int n_threads)
{
    enum { MAX_THREADS = 64 };
    pthread_t th[MAX_THREADS];
    fill_job_t jobs[MAX_THREADS];
    int started = 0;

    if (n_threads < 1)
        n_threads = auto_threads();
    if (n_threads > MAX_THREADS)
        n_threads = MAX_THREADS;
    if (n < (size_t)1 << 20 || n_threads == 1) {
        fill_range(type, dst, 0, n, key, first_index);
        return PD_OK;
    }
    for (int t = 0; t < n_threads; t++) {
        jobs[t] = (fill_job_t){type, dst, n * (size_t)t / (size_t)n_threads,
                               n * (size_t)(t + 1) / (size_t)n_threads, key, first_index};
        if (pthread_create(&th[t], NULL, fill_thread, &jobs[t]) != 0)
            fill_range(type, dst, jobs[t].begin, jobs[t].end, key, first_index);
        else
            th[started++] = th[t];
    }
    for (int t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    return PD_OK;
}

static uint64_t stream_key(uint64_t seed, uint64_t stream)
{
    return mix64(seed ^ mix64(stream + 0x632be59bd9b4e019ull));
}

pd_status_t eng_dummy_fill(eng_dtype_t type, void *dst, size_t n, uint64_t seed,
                           uint64_t stream, size_t first_index)
{
    if (type != ENG_DTYPE_F32 && type != ENG_DTYPE_F16 && type != ENG_DTYPE_BF16)
        return PD_ERR_UNSUPPORTED;
    fill_range(type, dst, 0, n, stream_key(seed, stream), first_index);
    return PD_OK;
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    while (*s)
        h = (h ^ (uint8_t)*s++) * 1099511628211ull;
    return h;
}

typedef struct {
    eng_model_t *m;
    eng_dtype_t type;
    size_t total;      /* bytes so far (pass 1) */
    uint8_t *base;     /* pass 2 */
    const eng_load_opts_t *opts;
} dummy_ctx_t;

static pd_status_t tensor_bytes(eng_dtype_t type, const int64_t ne[4], size_t *bytes_p)
{
    size_t b;
    if (eng_dtype_row_bytes(type, ne[0], &b) != PD_OK)
        return PD_ERR_OVERFLOW;
    for (int d = 1; d < 4; d++)
        if (pd_mul_size(b, (size_t)ne[d], &b) != PD_OK)
            return PD_ERR_OVERFLOW;
    *bytes_p = b;
    return PD_OK;
}

static pd_status_t count_cb(void *arg, const char *name, int n_dims, const int64_t ne[4], int kind)
{
    dummy_ctx_t *c = arg;
    size_t b;
    (void)name, (void)n_dims, (void)kind;
    if (tensor_bytes(c->type, ne, &b) != PD_OK || pd_add_size(c->total, (b + 63) & ~(size_t)63,
                                                              &c->total) != PD_OK)
        return PD_ERR_OVERFLOW;
    return PD_OK;
}

static pd_status_t make_cb(void *arg, const char *name, int n_dims, const int64_t ne[4], int kind)
{
    dummy_ctx_t *c = arg;
    size_t b, n = (size_t)(ne[0] * ne[1] * ne[2] * ne[3]);
    void *data = NULL;
    pd_status_t st;

    if ((st = tensor_bytes(c->type, ne, &b)) != PD_OK)
        return st;
    if (c->base != NULL)
        data = c->base + c->total;
    c->total += (b + 63) & ~(size_t)63;
    if (data != NULL) {
        if (kind == 0) {
            fill_threaded(c->type, data, n, stream_key(c->opts->seed, name_hash(name)), 0,
                          c->opts->dummy_threads);
        } else if (kind == 1) {
            uint16_t one = c->type == ENG_DTYPE_F16 ? eng_f32_to_f16(1.0f) : eng_f32_to_bf16(1.0f);
            for (size_t i = 0; i < n; i++) {
                if (c->type == ENG_DTYPE_F32)
                    ((float *)data)[i] = 1.0f;
                else
                    ((uint16_t *)data)[i] = one;
            }
        } /* kind 2 (biases): the anonymous mapping is already zero */
    }
    return eng_model_add_tensor(c->m, name, c->type, n_dims, ne, data, b);
}

pd_status_t eng_dummy_populate(eng_model_t *m, const eng_load_opts_t *opts)
{
    dummy_ctx_t c = {.m = m, .type = m->cfg.dtype, .opts = opts};
    uint64_t t0 = pd_now_ns();
    pd_status_t st;

    m->cfg.quantized = false;
    if (c.type != ENG_DTYPE_F32 && c.type != ENG_DTYPE_F16 && c.type != ENG_DTYPE_BF16)
        c.type = m->cfg.dtype = ENG_DTYPE_F16;
    if ((st = eng_hfconfig_for_each_tensor(&m->cfg, count_cb, &c)) != PD_OK)
        return st;
    if (!opts->dummy_no_data && c.total > 0) {
        void *p = mmap(NULL, c.total, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            PD_LOG_ERR("dummy: cannot map %zu bytes for the weights", c.total);
            return PD_ERR_NOMEM;
        }
        m->dummy_block = p;
        m->dummy_block_bytes = c.total;
        c.base = p;
    }
    c.total = 0;
    if ((st = eng_hfconfig_for_each_tensor(&m->cfg, make_cb, &c)) != PD_OK)
        return st;
    PD_LOG_INFO("dummy weights: %zu tensors, %.1f MiB of %s%s in %.1f ms", m->n_tensors,
                (double)c.total / 1048576.0, eng_dtype_name(c.type),
                opts->dummy_no_data ? " (not allocated)" : "", (double)(pd_now_ns() - t0) / 1e6);
    return PD_OK;
}
