/*
 * kcpu_matmul.c - y[M,N] = x[M,K] . W[N,K]^T (+bias) for f32 activations and weights in
 * F32/F16/BF16/Q8_0/Q4_0/Q4_1.
 *
 * Work is split over output columns (weight rows) in tiles of NR rows; each thread
 * walks its weight rows once and applies each tile to all M activation rows in groups of
 * up to MR, so a weight tile is read from memory once per call (decode is bound by
 * weight bandwidth, prefill by FMA throughput).  Every output element is reduced by the
 * same code whatever tile it falls in, so results do not depend on the thread count.
 *
 * EXACT mode converts weight tiles to f32 (into per-thread scratch) and runs the f32
 * kernel.  FAST mode with Q8_0/Q4_0/Q4_1 weights first quantizes the activations to Q8
 * blocks (kcpu_block_q8x_t: f32 scale and the scaled sum for the Q4 offset term) and
 * uses integer dot products per block, at every M.
 *
 * Batch invariance: a row of y depends only on its row of x, the weights, the mode and
 * the SIMD switch, never on M, the strides or the thread count (all tiles share the
 * per-element arithmetic).  Tested bit for bit.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kcpu.h"
#include "kcpu_internal.h"
#include "pd_log.h"
#include "pd_util.h"

#define MR 4 /* activation rows per tile */
#define NR 2 /* weight rows per integer-dot tile when M > 1 */
/* weight rows per f32 tile when M > 1: 4 x 3 = 12 accumulators cover the FMA latency
 * (5 cycles x 2 pipes) with 7 loads per 12 FMAs */
#define NRF 3
/* FAST mode uses integer dots at every M, although from M ~ 16 converting weight blocks
 * to f32 and the 4x3 FMA tile is faster (per thread at K=576, N=1536, M=128: 83 vs 57
 * GFLOP/s): switching paths by M would make a token's result depend on how many tokens
 * share its batch, and the engine promises batch-invariant outputs. */
#define NR1 4 /* weight rows per tile when M == 1 */
/* weight rows per work item for the f32 tiles when M > 1 (a block that stays in L2) */
#define NB 30

/* ---- scalar reference pieces ---- */

float kcpu_vec_dot_f32_scalar(const float *a, const float *b, int64_t n)
{
    /* 8 lanes like the AVX2 path, then the same pairwise reduction */
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++)
            acc[l] = fmaf(a[i + l], b[i + l], acc[l]);
    for (int l = 0; i < n; i++, l++)
        acc[l] = fmaf(a[i], b[i], acc[l]);
    float s0 = (acc[0] + acc[4]) + (acc[2] + acc[6]);
    float s1 = (acc[1] + acc[5]) + (acc[3] + acc[7]);
    return s0 + s1;
}

void kcpu_quant_q8x_scalar(const float *x, kcpu_block_q8x_t *y, int64_t n)
{
    for (int64_t b = 0; b < n / KCPU_QK; b++) {
        const float *xb = x + b * KCPU_QK;
        float amax = 0.0f;
        for (int j = 0; j < KCPU_QK; j++)
            amax = fmaxf(amax, fabsf(xb[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < KCPU_QK; j++) {
            int q = (int)nearbyintf(xb[j] * id);
            y[b].qs[j] = (int8_t)q;
            sum += q;
        }
        y[b].d = d;
        y[b].s = d * (float)sum;
    }
}

float kcpu_vec_dot_q8x_scalar(kcpu_dtype_t type, const void *w, const kcpu_block_q8x_t *x, int64_t nb)
{
    float acc = 0.0f;

    switch (type) {
    case KCPU_DTYPE_Q8_0: {
        const kcpu_block_q8_0_t *b = w;
        for (int64_t i = 0; i < nb; i++) {
            int s = 0;
            for (int j = 0; j < KCPU_QK; j++)
                s += (int)b[i].qs[j] * (int)x[i].qs[j];
            acc += kcpu_f16_to_f32(b[i].d) * x[i].d * (float)s;
        }
        break;
    }
    case KCPU_DTYPE_Q4_0: {
        const kcpu_block_q4_0_t *b = w;
        for (int64_t i = 0; i < nb; i++) {
            int s = 0;
            for (int j = 0; j < 16; j++)
                s += (b[i].qs[j] & 15) * (int)x[i].qs[j] + (b[i].qs[j] >> 4) * (int)x[i].qs[j + 16];
            float d = kcpu_f16_to_f32(b[i].d);
            acc += d * x[i].d * (float)s - 8.0f * d * x[i].s;
        }
        break;
    }
    case KCPU_DTYPE_Q4_1: {
        const kcpu_block_q4_1_t *b = w;
        for (int64_t i = 0; i < nb; i++) {
            int s = 0;
            for (int j = 0; j < 16; j++)
                s += (b[i].qs[j] & 15) * (int)x[i].qs[j] + (b[i].qs[j] >> 4) * (int)x[i].qs[j + 16];
            acc += kcpu_f16_to_f32(b[i].d) * x[i].d * (float)s + kcpu_f16_to_f32(b[i].m) * x[i].s;
        }
        break;
    }
    default:
        return NAN;
    }
    return acc;
}

/* ---- the parallel body ---- */

typedef struct {
    const float *x;
    int64_t M, K, ldx;
    const uint8_t *w;
    kcpu_dtype_t wtype;
    size_t row_bytes;
    int64_t N;
    const float *bias;
    float *y;
    int64_t ldy;
    kcpu_mm_mode_t mode;
    bool simd;
    int nr;                   /* weight rows per tile */
    const kcpu_block_q8x_t *xq; /* FAST: quantized activations, M rows of K/32 blocks */
    float *scratch;           /* EXACT non-f32: nr * K floats per thread */
} mm_args_t;

static void f32_tile(const mm_args_t *a, const float *wf, int64_t ldw, int nr, int64_t n0)
{
    for (int64_t m0 = 0; m0 < a->M; m0 += MR) {
        int mr = a->M - m0 < MR ? (int)(a->M - m0) : MR;
        float *out = a->y + m0 * a->ldy + n0;
#if KCPU_HAVE_X86
        if (a->simd) {
            kcpu_gemm_f32_tile_avx2(a->x + m0 * a->ldx, a->ldx, mr, wf, ldw, nr, a->K, out, a->ldy);
            continue;
        }
#endif
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++)
                out[i * a->ldy + j] = kcpu_vec_dot_f32_scalar(a->x + (m0 + i) * a->ldx, wf + j * ldw, a->K);
    }
}

static void q8x_tile(const mm_args_t *a, const uint8_t *w, int nr, int64_t n0)
{
    int64_t nb = a->K / KCPU_QK;
    for (int64_t m0 = 0; m0 < a->M; m0 += MR) {
        int mr = a->M - m0 < MR ? (int)(a->M - m0) : MR;
        float *out = a->y + m0 * a->ldy + n0;
#if KCPU_HAVE_X86
        if (a->simd) {
            kcpu_gemm_q8x_tile_avx2(a->wtype, a->xq + m0 * nb, nb, mr, w, a->row_bytes, nr, nb, out, a->ldy);
            continue;
        }
#endif
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++)
                out[i * a->ldy + j] = kcpu_vec_dot_q8x_scalar(a->wtype, w + (size_t)j * a->row_bytes,
                                                              a->xq + (m0 + i) * nb, nb);
    }
}

/* M > 1 on f32 weights: for a block of weight rows (in L2), walk the activations MR
 * rows at a time (in L1) across all tiles of the block, so the operand that streams from
 * L2 is the one loaded least often per FMA. */
static void f32_block(const mm_args_t *a, const float *wf, int64_t ldw, int64_t nrows, int64_t n0)
{
    for (int64_t m0 = 0; m0 < a->M; m0 += MR) {
        int mr = a->M - m0 < MR ? (int)(a->M - m0) : MR;
        for (int64_t j0 = 0; j0 < nrows; j0 += NRF) {
            int nr = nrows - j0 < NRF ? (int)(nrows - j0) : NRF;
            float *out = a->y + m0 * a->ldy + n0 + j0;
            const float *w = wf + j0 * ldw;
#if KCPU_HAVE_X86
            if (a->simd) {
                kcpu_gemm_f32_tile_avx2(a->x + m0 * a->ldx, a->ldx, mr, w, ldw, nr, a->K, out, a->ldy);
                continue;
            }
#endif
            for (int i = 0; i < mr; i++)
                for (int j = 0; j < nr; j++)
                    out[i * a->ldy + j] = kcpu_vec_dot_f32_scalar(a->x + (m0 + i) * a->ldx, w + j * ldw, a->K);
        }
    }
}

static void mm_task(void *arg, int64_t begin, int64_t end, int tid)
{
    const mm_args_t *a = arg;
    /* begin/end count items of a->nr weight rows */
    for (int64_t t = begin; t < end; t++) {
        int64_t n0 = t * a->nr;
        int nr = a->N - n0 < a->nr ? (int)(a->N - n0) : a->nr;
        const uint8_t *w = a->w + (size_t)n0 * a->row_bytes;

        if (a->xq != NULL) {
            q8x_tile(a, w, nr, n0);
        } else {
            const float *wf = (const float *)w;
            if (a->wtype != KCPU_DTYPE_F32) {
                float *buf = a->scratch + (size_t)tid * (size_t)a->nr * (size_t)a->K;
                for (int j = 0; j < nr; j++)
                    kcpu_dequant_row(a->wtype, w + (size_t)j * a->row_bytes, buf + j * a->K, a->K);
                wf = buf;
            }
            if (a->M == 1)
                f32_tile(a, wf, a->K, nr, n0);
            else
                f32_block(a, wf, a->K, nr, n0);
        }
        if (a->bias)
            for (int64_t m = 0; m < a->M; m++)
                for (int j = 0; j < nr; j++)
                    a->y[m * a->ldy + n0 + j] += a->bias[n0 + j];
    }
}

typedef struct {
    const float *x;
    int64_t ldx, K;
    kcpu_block_q8x_t *xq;
    bool simd;
} quant_args_t;

static void quant_task(void *arg, int64_t begin, int64_t end, int tid)
{
    const quant_args_t *a = arg;
    int64_t nb = a->K / KCPU_QK;
    for (int64_t m = begin; m < end; m++) {
#if KCPU_HAVE_X86
        if (a->simd) {
            kcpu_quant_q8x_avx2(a->x + m * a->ldx, a->xq + m * nb, a->K);
            continue;
        }
#endif
        kcpu_quant_q8x_scalar(a->x + m * a->ldx, a->xq + m * nb, a->K);
    }
}

pd_status_t kcpu_matmul(kcpu_pool_t *pool, const float *x, int64_t M, int64_t K, int64_t ldx,
                        const void *w, kcpu_dtype_t wtype, int64_t N, const float *bias,
                        float *y, int64_t ldy, kcpu_mm_mode_t mode)
{
    mm_args_t a;
    size_t row_bytes, scratch_n = 0;
    void *heap = NULL;
    pd_status_t st;
    int nth = kcpu_pool_n_threads(pool);

    if (!kcpu_dtype_supported(wtype)) {
        PD_LOG_ERR("kcpu_matmul: weight type %s (%d) not supported", kcpu_dtype_name(wtype), (int)wtype);
        return PD_ERR_UNSUPPORTED;
    }
    if (M < 0 || N < 0 || K <= 0 || ldx < K || ldy < N || (M > 0 && (x == NULL || y == NULL)) ||
        (N > 0 && w == NULL)) {
        PD_LOG_ERR("kcpu_matmul: bad shape M=%lld K=%lld N=%lld ldx=%lld ldy=%lld", (long long)M,
                   (long long)K, (long long)N, (long long)ldx, (long long)ldy);
        return PD_ERR_INVAL;
    }
    st = kcpu_dtype_row_bytes(wtype, K, &row_bytes);
    if (st != PD_OK) {
        PD_LOG_ERR("kcpu_matmul: K=%lld is not a multiple of the %s block size", (long long)K,
                   kcpu_dtype_name(wtype));
        return st;
    }
    if (M == 0 || N == 0)
        return PD_OK;

    memset(&a, 0, sizeof(a));
    a.x = x; a.M = M; a.K = K; a.ldx = ldx;
    a.w = w; a.wtype = wtype; a.row_bytes = row_bytes; a.N = N;
    a.bias = bias; a.y = y; a.ldy = ldy; a.mode = mode;
    a.simd = kcpu_simd_enabled();
    bool quantized = wtype == KCPU_DTYPE_Q8_0 || wtype == KCPU_DTYPE_Q4_0 || wtype == KCPU_DTYPE_Q4_1;
    bool int_dots = quantized && mode == KCPU_MM_FAST;
    a.nr = M == 1 ? NR1 : (int_dots ? NR : NB);

    if (int_dots) {
        size_t bytes;
        if (pd_mul_size((size_t)M * (size_t)(K / KCPU_QK), sizeof(kcpu_block_q8x_t), &bytes) != PD_OK)
            return PD_ERR_OVERFLOW;
        heap = malloc(bytes);
        if (heap == NULL)
            return PD_ERR_NOMEM;
        quant_args_t q = { x, ldx, K, heap, a.simd };
        kcpu_pool_run(pool, M, 1, quant_task, &q);
        a.xq = heap;
    } else if (wtype != KCPU_DTYPE_F32) {
        if (pd_mul_size((size_t)nth * (size_t)a.nr, (size_t)K, &scratch_n) != PD_OK ||
            pd_mul_size(scratch_n, sizeof(float), &scratch_n) != PD_OK)
            return PD_ERR_OVERFLOW;
        heap = aligned_alloc(64, (scratch_n + 63) / 64 * 64);
        if (heap == NULL)
            return PD_ERR_NOMEM;
        a.scratch = heap;
    }
    int64_t n_tiles = (N + a.nr - 1) / a.nr;
    /* a few tiles per grain so tiny ops stay on one thread */
    int64_t grain = (int64_t)(16384 / (K * (M < 8 ? M : 8) + 1)) + 1;
    kcpu_pool_run(pool, n_tiles, grain, mm_task, &a);
    free(heap);
    return PD_OK;
}
