/*
 * test_forward_mixed.c - a batch that mixes decode tokens with prefill chunks (what the
 * scheduler builds when requests arrive while others decode): eng_forward runs its
 * leading one-token sequences through attention apart from the prefill chunks (on CUDA
 * the decode kernel and the prefill kernel).  The logits of the mixed forward must equal
 * those of the same work done in two forwards (the decode tokens alone, then the
 * chunks alone) on a second copy of the same cache state, row for row; and a batch
 * whose decode tokens do not lead (a prefill chunk first) must give the same rows too.
 *
 * Backend: "cpu", or the one named by PD_TEST_BACKEND (scripts/gpu_suite.sh runs it
 * with "cuda"; exit 77 when that backend cannot start).  f32 weights on CUDA
 * (PD_CUDA_WEIGHT_DTYPE=f32 unless set) so the comparison is tight.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_backend.h"
#include "eng_forward.h"
#include "eng_model.h"
#include "pd_test.h"
#include "test_model_util.h"

#define BS 16
#define MB 8          /* blocks per sequence */
#define NS 5          /* sequences: 0, 1, 2 decode; 3 a second chunk; 4 a new prompt */
#define SETS 3        /* three copies of the cache state (disjoint blocks) */
#define MAXT 128

static eng_model_t *model_g;
static const char *backend_g = "cpu";
static int plen_g[NS] = {21, 33, 9, 17, 0}; /* tokens already in the cache per sequence */
static int nnew_g[NS] = {1, 1, 1, 26, 30};  /* tokens of the mixed step per sequence */

typedef struct {
    int T, n;
    int32_t tok[MAXT], pos[MAXT], seq[MAXT], rows[NS], ctx[NS];
    int64_t slots[MAXT];
} tb_t;

static int32_t tok_at(int s, int p) { return (int32_t)((s * 131 + p * 37 + 5) % 251); }

/* Append sequence s (batch index i) with positions [p0, p0 + n) of set `set`. */
static void add_seq(tb_t *b, int set, int s, int i, int p0, int n)
{
    for (int p = p0; p < p0 + n; p++, b->T++) {
        b->tok[b->T] = tok_at(s, p);
        b->pos[b->T] = p;
        b->seq[b->T] = i;
        b->slots[b->T] = ((int64_t)(set * NS + s) * MB) * BS + p;
    }
    b->rows[i] = b->T - 1;
    b->ctx[i] = p0 + n;
    b->n = i + 1;
}

static void tables_for(int set, const int *order, int n, int32_t *tables)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < MB; j++)
            tables[i * MB + j] = (set * NS + order[i]) * MB + j;
}

static pd_status_t run(eng_forward_t *fw, tb_t *b, const int32_t *tables, float *logits)
{
    eng_fwd_batch_t fb = {b->T, b->tok, b->pos, b->seq, b->slots, b->n, tables, b->ctx, b->n, b->rows};
    return eng_forward_run(fw, &fb, logits);
}

/* Fill set `set` with the cached prefix of every sequence (one prefill forward). */
static void fill_set(eng_forward_t *fw, int set, float *scratch)
{
    tb_t b = {0};
    int order[NS], n = 0;
    int32_t tables[NS * MB];
    for (int s = 0; s < NS; s++)
        if (plen_g[s] > 0) {
            order[n] = s;
            add_seq(&b, set, s, n, 0, plen_g[s]);
            n++;
        }
    tables_for(set, order, n, tables);
    PD_CHECK_STATUS(run(fw, &b, tables, scratch), PD_OK);
}

/* The mixed step of sequences `order` (in that batch order) on set `set`: logits of
 * sequence order[i] at row i of out. */
static void step(eng_forward_t *fw, int set, const int *order, int n, float *out)
{
    tb_t b = {0};
    int32_t tables[NS * MB];
    for (int i = 0; i < n; i++)
        add_seq(&b, set, order[i], i, plen_g[order[i]], nnew_g[order[i]]);
    tables_for(set, order, n, tables);
    PD_CHECK_STATUS(run(fw, &b, tables, out), PD_OK);
}

static double max_rel(const float *a, const float *b, int64_t n)
{
    double m = 0, big = 1e-6;
    for (int64_t i = 0; i < n; i++)
        big = fmax(big, fabs((double)b[i]));
    for (int64_t i = 0; i < n; i++)
        m = isfinite(a[i]) ? fmax(m, fabs((double)a[i] - b[i]) / big) : INFINITY;
    return m;
}

PD_TEST(test_mixed_batch_equals_split_forwards)
{
    const eng_backend_ops_t *ops = eng_backend_get(backend_g);
    eng_backend_opts_t bo = {.n_threads = 2, .mm_mode = KCPU_MM_EXACT};
    eng_backend_t *be = NULL;
    eng_forward_t *fw = NULL;
    const int64_t V = eng_model_config(model_g)->vocab_size;
    eng_forward_opts_t fo = {.block_size = BS, .n_blocks = SETS * NS * MB, .max_tokens = MAXT, .max_seqs = NS,
                             .max_blocks_per_seq = MB};
    float *mixed = calloc((size_t)NS * V, sizeof(float)), *ref = calloc((size_t)NS * V, sizeof(float)),
          *other = calloc((size_t)NS * V, sizeof(float)), *scratch = calloc((size_t)NS * V, sizeof(float));
    static const int all[NS] = {0, 1, 2, 3, 4}, dec[3] = {0, 1, 2}, pf[2] = {3, 4}, late[NS] = {3, 0, 1, 2, 4};

    PD_CHECK(mixed && ref && other && scratch);
    PD_CHECK_STATUS(ops->init(&bo, &be), PD_OK);
    if (be != NULL)
        PD_CHECK_STATUS(eng_forward_create(model_g, ops, be, &fo, &fw), PD_OK);
    if (fw == NULL || !mixed || !ref || !other || !scratch)
        goto out;
    for (int set = 0; set < SETS; set++)
        fill_set(fw, set, scratch);
    /* set 0: the mixed step, decode tokens leading (the scheduler's order) */
    for (size_t i = 0; i < (size_t)NS * V; i++)
        mixed[i] = NAN;
    step(fw, 0, all, NS, mixed);
    /* set 1: the same work as two forwards */
    step(fw, 1, dec, 3, ref);
    step(fw, 1, pf, 2, ref + 3 * V);
    /* set 2: a prefill chunk first (no decode prefix: one attention call) */
    step(fw, 2, late, NS, scratch);
    for (int i = 0; i < NS; i++) /* row i of scratch is sequence late[i] */
        memcpy(other + (size_t)late[i] * V, scratch + (size_t)i * V, (size_t)V * sizeof(float));
    double e1 = 0, e2 = 0;
    for (int s = 0; s < NS; s++) {
        e1 = fmax(e1, max_rel(mixed + (size_t)s * V, ref + (size_t)s * V, V));
        e2 = fmax(e2, max_rel(other + (size_t)s * V, ref + (size_t)s * V, V));
    }
    printf("  %s: mixed vs split forwards max rel err %.2e, prefill-first order %.2e\n", backend_g, e1, e2);
    PD_CHECK(e1 < 1e-4);
    PD_CHECK(e2 < 1e-4);
out:
    eng_forward_destroy(fw);
    if (be)
        ops->shutdown(be);
    free(mixed);
    free(ref);
    free(other);
    free(scratch);
}

int main(void)
{
    char m[4096];
    const char *want = getenv("PD_TEST_BACKEND");
    if (want && *want) {
        backend_g = want;
        if (eng_backend_get(want) == NULL) {
            printf("SKIP: backend %s not built\n", want);
            return 77;
        }
        if (strcmp(want, "cuda") == 0) {
            const eng_backend_ops_t *ops = eng_backend_get(want);
            eng_backend_t *be = NULL;
            if (ops->init(NULL, &be) != PD_OK) {
                printf("SKIP: no CUDA device\n");
                return 77;
            }
            ops->shutdown(be);
            setenv("PD_CUDA_WEIGHT_DTYPE", "f32", 0);
        }
    }
    if (!test_model_dir("tiny-llama", m, sizeof(m)))
        return 77;
    model_g = test_model_load(m, MB * BS);
    if (model_g != NULL)
        PD_RUN(test_mixed_batch_equals_split_forwards);
    eng_model_destroy(model_g);
    return PD_TEST_REPORT();
}
