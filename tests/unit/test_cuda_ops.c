/*
 * test_cuda_ops.c - every op of the "cuda" backend against the kcpu op of the same name
 * (the numeric oracle), through the backend's ops table: fresh random inputs per case,
 * outputs poisoned (NaN bytes) before each run, odd shapes, KV block sizes 16/32/128,
 * GQA ratios 1/4/8, f32 and f16 caches, decode batches long enough for split-K, chunked
 * prefill reading earlier blocks, sliding windows, and the range-error report.
 * Tolerances: |gpu - cpu| <= tol * max(1, max|cpu|) per output array, with tol 1e-5 for
 * f32 element-wise ops, 1e-4 for f32 GEMM/attention, 4e-3 f16 / 2e-2 bf16 GEMMs.
 * fp8 KV caches (e4m3, e5m2; fixed and calculated per-layer scales): the cache bytes
 * written on the GPU are decoded here and must be within half an fp8 step of K / scale
 * (relative 2^-4 for e4m3, 2^-3 for e5m2, plus the subnormal step), the calculated
 * scales must be max|x| / 200 and / 100, and attention over the fp8 cache must match
 * kcpu attention over that decoded cache (as f32) within 1e-4.
 * RMSNorm (test_rmsnorm_vec): the entry points called directly on shapes for every
 * vector width / CTA size of the vector kernel and for the scalar fallbacks; RoPE + KV
 * write (test_rope_kv_write): the table kernel's vector and scalar paths and the old
 * kernel, T = 1 to 2048.
 * Prefill attention (test_prefill_attention, last): the WMMA kernel and the
 * FlashAttention-2 kernel (4 and 8 warps) against kcpu within 2e-2, the worst error
 * printed per case; PD_TEST_PREFILL_ONLY=1 runs those cases alone.
 * Needs a GPU: exits 77 (skipped) when the backend cannot start.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_backend.h"
#include "eng_backend_cuda.h"
#include "kcpu.h"
#include "kcuda.h"
#include "pd_test.h"

static const eng_backend_ops_t *ops;
static eng_backend_t *be;
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static int irand(int n)
{
    frand();
    return (int)((rng >> 20) % (uint64_t)n);
}

static float *rand_vec(size_t n, float scale)
{
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        v[i] = frand() * scale;
    return v;
}

/* The block ids 0 .. n-1 in a random order (block tables that are not the identity). */
static int32_t *shuffled_blocks(int64_t n)
{
    int32_t *perm = malloc(sizeof(int32_t) * n);
    for (int64_t i = 0; perm && i < n; i++)
        perm[i] = (int32_t)i;
    for (int64_t i = n - 1; perm && i > 0; i--) {
        int j = irand((int)i + 1);
        int32_t tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    return perm;
}

static void *up(const void *host, size_t bytes)
{
    void *d = NULL;
    if (ops->buf_alloc(be, bytes ? bytes : 4, &d) != PD_OK)
        return NULL;
    if (bytes)
        ops->memcpy_h2d(be, d, host, bytes);
    return d;
}

static void *poisoned(size_t bytes)
{
    void *d = NULL;
    if (ops->buf_alloc(be, bytes ? bytes : 4, &d) != PD_OK)
        return NULL;
    ops->memset(be, d, 0xff, bytes); /* NaN as f32 */
    return d;
}

static void *down(const void *dev, size_t bytes)
{
    void *h = malloc(bytes ? bytes : 4);
    pd_status_t st = ops->memcpy_d2h(be, h, dev, bytes);
    PD_CHECK_STATUS(st, PD_OK);
    return h;
}

static double worst_g;

/* |a - b| <= tol * max(1, max|b|), NaN fails.  Returns the number of bad elements. */
static int cmp(const char *what, const float *got, const float *want, size_t n, double tol)
{
    double mx = 1.0, worst = 0.0;
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs(want[i]) > mx && isfinite(want[i]))
            mx = fabs(want[i]);
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)want[i]);
        if (isinf(want[i]) && got[i] == want[i])
            e = 0;
        if (!(e <= tol * mx)) {
            if (bad++ < 3)
                fprintf(stderr, "  %s[%zu]: gpu %.7g cpu %.7g\n", what, i, got[i], want[i]);
        }
        if (e / mx > worst)
            worst = e / mx;
    }
    if (worst > worst_g)
        worst_g = worst;
    if (bad)
        fprintf(stderr, "  %s: %d/%zu outside tolerance %.1e (worst %.2e)\n", what, bad, n, tol, worst);
    return bad;
}

/* ---- matmul ---- */

static void matmul_case(kcpu_dtype_t wtype, kcpu_dtype_t gemm_dtype, int64_t M, int64_t K, int64_t N, bool bias,
                        double tol)
{
    size_t rb;
    /* padded rows (cuBLAS path) on odd shapes, dense rows (the M <= 8 GEMV path) otherwise */
    int64_t ldx = (N & 1) ? K + 3 : K, ldy = N + 1;
    PD_CHECK_STATUS(kcpu_dtype_row_bytes(wtype, K, &rb), PD_OK);
    float *x = rand_vec((size_t)M * ldx, 1.0f), *wf = rand_vec((size_t)N * K, 0.1f);
    float *b = bias ? rand_vec((size_t)N, 0.5f) : NULL;
    uint8_t *w = malloc(rb * (size_t)N);
    for (int64_t r = 0; r < N; r++)
        kcpu_quant_row(wtype, wf + r * K, w + (size_t)r * rb, K);
    float *ref = calloc((size_t)M * ldy, sizeof(float));
    PD_CHECK_STATUS(kcpu_matmul(NULL, x, M, K, ldx, w, wtype, N, b, ref, ldy, KCPU_MM_EXACT), PD_OK);
    PD_CHECK_STATUS(eng_backend_cuda_set_weight_dtype(be, gemm_dtype), PD_OK);
    void *dx = up(x, sizeof(float) * M * ldx), *dw = up(w, rb * N), *db = b ? up(b, sizeof(float) * N) : NULL;
    float *dy = poisoned(sizeof(float) * M * ldy);
    PD_CHECK_STATUS(ops->matmul(be, dx, M, K, ldx, dw, wtype, N, db, dy, ldy), PD_OK);
    float *got = down(dy, sizeof(float) * M * ldy);
    char what[96];
    snprintf(what, sizeof(what), "matmul %s->%s M%lld K%lld N%lld", kcpu_dtype_name(wtype),
             kcpu_dtype_name(gemm_dtype), (long long)M, (long long)K, (long long)N);
    for (int64_t m = 0; m < M; m++)
        PD_CHECK_EQ_INT(cmp(what, got + m * ldy, ref + m * ldy, (size_t)N, tol), 0);
    ops->buf_free(be, dx);
    ops->buf_free(be, dw);
    ops->buf_free(be, db);
    ops->buf_free(be, dy);
    free(x), free(wf), free(b), free(w), free(ref), free(got);
}

PD_TEST(test_matmul)
{
    static const kcpu_dtype_t types[] = {KCPU_DTYPE_F32, KCPU_DTYPE_F16, KCPU_DTYPE_BF16,
                                         KCPU_DTYPE_Q8_0, KCPU_DTYPE_Q4_0, KCPU_DTYPE_Q4_1};
    static const int64_t shapes[][3] = {{1, 64, 33}, {7, 96, 65}, {33, 256, 130}, {130, 576, 193},
                                        {1, 4096, 1000}, {3, 576, 1536}, {8, 1024, 258}, {5, 96, 64}};
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++)
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
            matmul_case(types[t], KCPU_DTYPE_F32, shapes[s][0], shapes[s][1], shapes[s][2], s & 1, 1e-4);
            matmul_case(types[t], KCPU_DTYPE_BF16, shapes[s][0], shapes[s][1], shapes[s][2], s & 1, 2e-2);
            matmul_case(types[t], KCPU_DTYPE_F16, shapes[s][0], shapes[s][1], shapes[s][2], !(s & 1), 4e-3);
        }
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_F32);
}

/* The decode GEMV with programmatic dependent launch (kcuda_gemv_set_pdl): it starts
 * while the kernel before it (an RMSNorm or a SiLU-and-mul, which trigger their
 * dependents at once) still runs, and must still read that kernel's output.  Each round
 * uploads a fresh input, so a GEMV that read its x before the producer finished would
 * see the previous round's values.  bf16 weights used as they are (no conversion):
 * only the summation order differs from kcpu (1e-4). */
static void gemv_pdl_case(int64_t M, int64_t K, int64_t N, bool glu, int rounds)
{
    size_t rb = (size_t)K * 2;
    float *wf = rand_vec((size_t)N * K, 0.1f), *nw = rand_vec((size_t)K, 1.0f);
    uint8_t *w = malloc(rb * (size_t)N);
    for (int64_t r = 0; r < N; r++)
        kcpu_quant_row(KCPU_DTYPE_BF16, wf + r * K, w + (size_t)r * rb, K);
    void *dw = up(w, rb * (size_t)N), *dnw = up(nw, sizeof(float) * K);
    float *din = poisoned(sizeof(float) * M * 2 * K), *dh = poisoned(sizeof(float) * M * K);
    float *dy = poisoned(sizeof(float) * M * N);
    float *h = malloc(sizeof(float) * M * K), *ref = malloc(sizeof(float) * M * N);
    int bad = 0;
    for (int r = 0; r < rounds; r++) {
        float *in = rand_vec((size_t)(M * 2 * K), 2.0f);
        PD_CHECK_STATUS(ops->memcpy_h2d(be, din, in, sizeof(float) * M * 2 * K), PD_OK);
        if (glu) { /* in = [gate | up] rows of 2K */
            kcpu_silu_and_mul(NULL, in, 2 * K, in + K, 2 * K, h, M, K);
            PD_CHECK_STATUS(ops->silu_and_mul(be, din, 2 * K, din + K, 2 * K, dh, M, K), PD_OK);
        } else { /* the first M * K floats of in */
            kcpu_rmsnorm(NULL, in, nw, h, M, K, 1e-5f);
            PD_CHECK_STATUS(ops->rmsnorm(be, din, dnw, dh, M, K, 1e-5f), PD_OK);
        }
        PD_CHECK_STATUS(ops->matmul(be, dh, M, K, K, dw, KCPU_DTYPE_BF16, N, NULL, dy, N), PD_OK);
        PD_CHECK_STATUS(kcpu_matmul(NULL, h, M, K, K, w, KCPU_DTYPE_BF16, N, NULL, ref, N, KCPU_MM_EXACT), PD_OK);
        float *got = down(dy, sizeof(float) * M * N);
        char what[96];
        snprintf(what, sizeof(what), "gemv pdl after %s M%lld K%lld N%lld round %d", glu ? "silu_mul" : "rmsnorm",
                 (long long)M, (long long)K, (long long)N, r);
        bad += cmp(what, got, ref, (size_t)(M * N), 1e-4) != 0;
        free(got);
        free(in);
    }
    PD_CHECK_EQ_INT(bad, 0);
    ops->buf_free(be, dw), ops->buf_free(be, dnw), ops->buf_free(be, din), ops->buf_free(be, dh);
    ops->buf_free(be, dy);
    free(wf), free(nw), free(w), free(h), free(ref);
}

PD_TEST(test_gemv_pdl)
{
    /* K = 72: fewer chunks than the prefetched batch; N <= 2048: 4 warps per column */
    static const int64_t shapes[][3] = {{1, 4096, 6144}, {1, 4096, 1024}, {3, 576, 1536}, {8, 72, 258}, {5, 1024, 2049}};
    PD_CHECK_STATUS(eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_BF16), PD_OK);
    for (int v = 3; v >= 0; v--) { /* PDL on/off x L1 no_allocate weight loads on/off */
        kcuda_gemv_set_pdl(v & 1);
        kcuda_gemv_set_noalloc(v >> 1);
        for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
            gemv_pdl_case(shapes[i][0], shapes[i][1], shapes[i][2], false, 4);
            gemv_pdl_case(shapes[i][0], shapes[i][1], shapes[i][2], true, 4);
        }
    }
    kcuda_gemv_set_pdl(-1);
    kcuda_gemv_set_noalloc(-1);
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_F32);
}

/* ---- norms ---- */

PD_TEST(test_norms)
{
    static const int64_t Ds[] = {67, 576, 4096};
    for (size_t i = 0; i < 3; i++) {
        int64_t T = 5, D = Ds[i];
        size_t n = (size_t)T * D, bytes = n * sizeof(float);
        float *x = rand_vec(n, 2.0f), *res = rand_vec(n, 2.0f), *w = rand_vec((size_t)D, 1.0f),
              *b = rand_vec((size_t)D, 1.0f);
        float *ref = malloc(bytes), *rres = malloc(bytes);
        void *dx = up(x, bytes), *dw = up(w, D * 4), *db = up(b, D * 4), *dres;
        float *dout = poisoned(bytes), *got, *gres;
        for (int kind = 0; kind < 4; kind++) {
            memcpy(rres, res, bytes);
            dres = up(res, bytes);
            ops->memset(be, dout, 0xff, bytes);
            switch (kind) {
            case 0:
                kcpu_rmsnorm(NULL, x, w, ref, T, D, 1e-5f);
                PD_CHECK_STATUS(ops->rmsnorm(be, dx, dw, dout, T, D, 1e-5f), PD_OK);
                break;
            case 1:
                kcpu_add_rmsnorm(NULL, rres, x, w, ref, T, D, 1e-6f);
                PD_CHECK_STATUS(ops->add_rmsnorm(be, dres, dx, dw, dout, T, D, 1e-6f), PD_OK);
                break;
            case 2:
                kcpu_layernorm(NULL, x, w, b, ref, T, D, 1e-5f);
                PD_CHECK_STATUS(ops->layernorm(be, dx, dw, db, dout, T, D, 1e-5f), PD_OK);
                break;
            default:
                kcpu_add_layernorm(NULL, rres, x, w, NULL, ref, T, D, 1e-5f);
                PD_CHECK_STATUS(ops->add_layernorm(be, dres, dx, dw, NULL, dout, T, D, 1e-5f), PD_OK);
                break;
            }
            got = down(dout, bytes);
            gres = down(dres, bytes);
            PD_CHECK_EQ_INT(cmp("norm", got, ref, n, 1e-5), 0);
            PD_CHECK_EQ_INT(cmp("norm residual", gres, rres, n, 1e-6), 0);
            free(got), free(gres);
            ops->buf_free(be, dres);
        }
        ops->buf_free(be, dx), ops->buf_free(be, dw), ops->buf_free(be, db), ops->buf_free(be, dout);
        free(x), free(res), free(w), free(b), free(ref), free(rres);
    }
}

/* The RMSNorm entry points called directly (kcuda_rmsnorm, kcuda_add_rmsnorm,
 * kcuda_add_rmsnorm_half with bf16 / f16 output, with and without the residual add), on
 * shapes that take every path of kcuda_norm.cu: the vector kernel with 1, 2, 4 and 8
 * float4s a thread, few rows (up to 1024 threads a row) and many (256 / 512), rows that do
 * not fill the last float4 column of threads; and the scalar kernel for D % 4 != 0, odd D,
 * D past the vector limit and rows off 16-byte alignment (off = 1 float).  f32 outputs
 * within 1e-5 of kcpu, 16-bit ones within one unit in the last place of the rounded kcpu
 * result (the f32 sums may round the other way), the residual within 1e-6; the floats
 * around the rows untouched. */
static int half_off(const uint16_t *got, const float *ref, size_t n, bool bf)
{
    const float ulp = bf ? 1.0f / 128.0f : 1.0f / 1024.0f;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        float g = bf ? kcpu_bf16_to_f32(got[i]) : kcpu_f16_to_f32(got[i]);
        float r = bf ? kcpu_bf16_to_f32(kcpu_f32_to_bf16(ref[i])) : kcpu_f16_to_f32(kcpu_f32_to_f16(ref[i]));
        if (!(fabsf(g - r) <= ulp * fabsf(r) + 1e-6f)) {
            if (bad++ < 3)
                fprintf(stderr, "  rmsnorm half[%zu]: gpu %.7g cpu %.7g\n", i, g, r);
        }
    }
    return bad;
}

static void rms_vec_case(int64_t T, int64_t D, int off)
{
    const size_t n = (size_t)(T * D), pad = 8, bytes = (n + pad) * sizeof(float);
    float *x = rand_vec(n, 1.0f), *res = rand_vec(n, 2.0f), *w = rand_vec((size_t)D, 1.5f);
    float *ref = malloc(n * sizeof(float)), *rres = malloc(n * sizeof(float)), *got = malloc(bytes);
    float *gres = malloc(bytes);
    float *dx = poisoned(bytes), *dres = poisoned(bytes), *dw = up(w, (size_t)D * sizeof(float));
    float *dout = poisoned(bytes);
    char what[96];
    int bad = 0;
    ops->memcpy_h2d(be, dx + off, x, n * sizeof(float));
    for (int kind = 0; kind < 6; kind++) {
        const bool add = kind == 1 || kind == 2 || kind == 5, f32 = kind < 2, bf = kind == 2 || kind == 4;
        memcpy(rres, res, n * sizeof(float));
        ops->memset(be, dres, 0xff, bytes);
        ops->memset(be, dout, 0xff, bytes);
        ops->memcpy_h2d(be, dres + off, res, n * sizeof(float));
        PD_CHECK_STATUS(ops->synchronize(be), PD_OK);
        if (add)
            kcpu_add_rmsnorm(NULL, rres, x, w, ref, T, D, 1e-5f);
        else
            kcpu_rmsnorm(NULL, rres, w, ref, T, D, 1e-5f);
        if (kind == 0)
            PD_CHECK_STATUS(kcuda_rmsnorm(dres + off, dw, dout + off, T, D, 1e-5f, NULL), PD_OK);
        else if (kind == 1)
            PD_CHECK_STATUS(kcuda_add_rmsnorm(dres + off, dx + off, dw, dout + off, T, D, 1e-5f, NULL), PD_OK);
        else /* 16-bit rows: off floats = 2 * off elements, still off 8-byte alignment */
            PD_CHECK_STATUS(kcuda_add_rmsnorm_half(dres + off, add ? dx + off : NULL, dw, (uint16_t *)dout + 2 * off,
                                                   bf ? KCPU_DTYPE_BF16 : KCPU_DTYPE_F16, T, D, 1e-5f, NULL),
                            PD_OK);
        PD_CHECK_STATUS(kcuda_stream_sync(NULL), PD_OK);
        PD_CHECK_STATUS(ops->memcpy_d2h(be, got, dout, bytes), PD_OK);
        PD_CHECK_STATUS(ops->memcpy_d2h(be, gres, dres, bytes), PD_OK);
        snprintf(what, sizeof(what), "rmsnorm T %lld D %lld off %d kind %d", (long long)T, (long long)D, off, kind);
        if (f32) {
            bad += cmp(what, got + off, ref, n, 1e-5) != 0;
            bad += (off && !isnan(got[0])) || !isnan(got[n + off]); /* the poison around the rows kept */
        } else {
            const uint16_t *h = (const uint16_t *)got;
            bad += half_off(h + 2 * off, ref, n, bf) != 0;
            bad += h[2 * off + n] != 0xffff || (off && h[0] != 0xffff);
        }
        bad += cmp(what, gres + off, rres, n, 1e-6) != 0;
        bad += !isnan(gres[n + off]) || (off && !isnan(gres[0]));
    }
    if (bad)
        fprintf(stderr, "  rmsnorm T %lld D %lld off %d: %d bad checks\n", (long long)T, (long long)D, off, bad);
    PD_CHECK_EQ_INT(bad, 0);
    ops->buf_free(be, dx), ops->buf_free(be, dres), ops->buf_free(be, dw), ops->buf_free(be, dout);
    free(x), free(res), free(w), free(ref), free(rres), free(got), free(gres);
}

PD_TEST(test_rmsnorm_vec)
{
    /* T, D, off: comments say which kernel (NV float4s a thread x threads) */
    static const int64_t cases[][3] = {
        {1, 4096, 0},   /* few rows: NV 1 x 1024 (decode) */
        {7, 4096, 0},   {128, 4096, 0},
        {129, 4096, 0}, /* many rows: NV 4 x 256 */
        {2048, 4096, 0}, /* the 8B prefill */
        {3, 576, 0},    /* NV 1 x 160 (SmolLM2) */
        {300, 576, 0},  {130, 1024, 0}, /* NV 1 x 256 */
        {200, 2048, 0}, /* NV 2 x 256 */
        {1, 8192, 0},   /* NV 2 x 1024 */
        {150, 8192, 0}, /* NV 8 x 256 */
        {2, 16384, 0},  /* NV 4 x 1024 */
        {140, 16384, 0}, /* NV 8 x 512 */
        {3, 4100, 0},   /* NV 2 x 544: the last thread column half empty */
        {200, 4100, 0}, /* NV 8 x 160, likewise */
        {17, 12, 0},    /* NV 1 x 32, 3 float4s */
        {1, 4, 0},      /* one float4 a row */
        {5, 20000, 0},  /* scalar kernel from here: past the vector limit */
        {9, 4098, 0},   /* D % 4 == 2 */
        {7, 67, 0},     /* odd */
        {33, 4096, 1},  /* rows not 16-byte aligned */
        {1, 4096, 1},
        {2048, 4096, 1},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
        rms_vec_case(cases[c][0], cases[c][1], (int)cases[c][2]);
}

/* ---- rope ---- */

PD_TEST(test_rope)
{
    static const int cfg[][4] = {{9, 3, 64, 64}, {32, 8, 128, 128}, {4, 2, 64, 32}, {6, 6, 80, 80}};
    for (size_t c = 0; c < 4; c++)
        for (int style = 0; style < 2; style++) {
            int nh = cfg[c][0], nkv = cfg[c][1], hd = cfg[c][2], rot = cfg[c][3];
            int64_t T = 13, qs = (int64_t)nh * hd + 5, ks = (int64_t)nkv * hd;
            kcpu_rope_scaling_t sc = {.type = c == 1 ? KCPU_ROPE_SCALING_LLAMA3 : KCPU_ROPE_SCALING_NONE,
                                      .factor = 8, .low_freq_factor = 1, .high_freq_factor = 4,
                                      .original_max_position = 8192};
            float inv[128], af = 1.0f;
            int32_t pos[13];
            PD_CHECK_STATUS(kcpu_rope_inv_freq(c == 1 ? 500000.0f : 10000.0f, rot, &sc, 0, inv, &af), PD_OK);
            for (int t = 0; t < T; t++)
                pos[t] = t < 4 ? t : irand(130000);
            float *q = rand_vec((size_t)T * qs, 1.0f), *k = rand_vec((size_t)T * ks, 1.0f);
            void *dq = up(q, T * qs * 4), *dk = up(k, T * ks * 4), *dp = up(pos, sizeof(pos)),
                 *di = up(inv, sizeof(float) * (size_t)rot / 2);
            PD_CHECK_STATUS(kcpu_rope(NULL, q, qs, k, ks, pos, T, nh, nkv, hd, rot, inv, af, (kcpu_rope_style_t)style),
                            PD_OK);
            PD_CHECK_STATUS(ops->rope(be, dq, qs, dk, ks, dp, T, nh, nkv, hd, rot, di, af, (kcpu_rope_style_t)style),
                            PD_OK);
            float *gq = down(dq, T * qs * 4), *gk = down(dk, T * ks * 4);
            PD_CHECK_EQ_INT(cmp("rope q", gq, q, (size_t)(T * qs), 2e-5), 0);
            PD_CHECK_EQ_INT(cmp("rope k", gk, k, (size_t)(T * ks), 2e-5), 0);
            free(q), free(k), free(gq), free(gk);
            ops->buf_free(be, dq), ops->buf_free(be, dk), ops->buf_free(be, dp), ops->buf_free(be, di);
        }
}

/* ---- element-wise ---- */

PD_TEST(test_elementwise)
{
    const int64_t T = 7, I = 1003, n = T * I;
    const size_t bytes = (size_t)n * 4;
    float *gu = rand_vec((size_t)T * 2 * I, 6.0f), *a = rand_vec((size_t)n, 6.0f), *b = rand_vec((size_t)n, 3.0f),
          *bias = rand_vec((size_t)I, 1.0f);
    float *ref = malloc(bytes);
    void *dgu = up(gu, (size_t)T * 2 * I * 4), *da = up(a, bytes), *db = up(b, bytes), *dbias = up(bias, I * 4);
    float *dout = poisoned(bytes);
    for (int op = 0; op < 10; op++) {
        pd_status_t st;
        ops->memset(be, dout, 0xff, bytes);
        switch (op) {
        case 0:
            kcpu_silu_and_mul(NULL, gu, 2 * I, gu + I, 2 * I, ref, T, I);
            st = ops->silu_and_mul(be, dgu, 2 * I, (float *)dgu + I, 2 * I, dout, T, I);
            break;
        case 1:
        case 2:
            kcpu_gelu_and_mul(NULL, gu, 2 * I, gu + I, 2 * I, ref, T, I, op == 2);
            st = ops->gelu_and_mul(be, dgu, 2 * I, (float *)dgu + I, 2 * I, dout, T, I, op == 2);
            break;
        case 3:
        case 4:
            kcpu_gelu(a, ref, n, op == 4);
            st = ops->gelu(be, da, dout, n, op == 4);
            break;
        case 5:
            kcpu_silu(a, ref, n);
            st = ops->silu(be, da, dout, n);
            break;
        case 6:
            kcpu_relu(a, ref, n);
            st = ops->relu(be, da, dout, n);
            break;
        case 7:
            kcpu_add(a, b, ref, n);
            st = ops->add(be, da, db, dout, n);
            break;
        case 8:
            kcpu_scale(a, 0.37f, ref, n);
            st = ops->scale(be, da, 0.37f, dout, n);
            break;
        default:
            memcpy(ref, a, bytes);
            kcpu_add_bias(ref, bias, T, I);
            ops->memcpy_d2d(be, dout, da, bytes);
            st = ops->add_bias(be, dout, dbias, T, I);
            break;
        }
        PD_CHECK_STATUS(st, PD_OK);
        float *got = down(dout, bytes);
        char what[32];
        snprintf(what, sizeof(what), "elementwise op %d", op);
        PD_CHECK_EQ_INT(cmp(what, got, ref, (size_t)n, 1e-5), 0);
        free(got);
    }
    ops->buf_free(be, dgu), ops->buf_free(be, da), ops->buf_free(be, db), ops->buf_free(be, dbias);
    ops->buf_free(be, dout);
    free(gu), free(a), free(b), free(bias), free(ref);
}

/* ---- embedding ---- */

PD_TEST(test_embedding)
{
    static const kcpu_dtype_t types[] = {KCPU_DTYPE_F32, KCPU_DTYPE_F16, KCPU_DTYPE_BF16,
                                         KCPU_DTYPE_Q8_0, KCPU_DTYPE_Q4_0, KCPU_DTYPE_Q4_1};
    const int64_t V = 301, D = 576, T = 9;
    for (size_t t = 0; t < 6; t++) {
        size_t rb;
        kcpu_dtype_row_bytes(types[t], D, &rb);
        float *tf = rand_vec((size_t)V * D, 1.0f);
        uint8_t *tab = malloc(rb * V);
        for (int64_t r = 0; r < V; r++)
            kcpu_quant_row(types[t], tf + r * D, tab + r * rb, D);
        int32_t ids[9];
        for (int i = 0; i < T; i++)
            ids[i] = i == 0 ? 0 : i == 1 ? (int32_t)V - 1 : irand((int)V);
        float *ref = malloc((size_t)T * D * 4);
        PD_CHECK_STATUS(kcpu_embedding(tab, types[t], V, D, ids, T, ref), PD_OK);
        void *dt = up(tab, rb * V), *di = up(ids, sizeof(ids));
        float *dout = poisoned((size_t)T * D * 4);
        PD_CHECK_STATUS(ops->embedding(be, dt, types[t], V, D, di, T, dout), PD_OK);
        float *got = down(dout, (size_t)T * D * 4);
        PD_CHECK_EQ_INT(cmp("embedding", got, ref, (size_t)(T * D), 1e-6), 0);
        /* an id outside the vocabulary is reported at the next synchronize */
        ids[3] = (int32_t)V;
        ops->memcpy_h2d(be, di, ids, sizeof(ids));
        PD_CHECK_STATUS(ops->embedding(be, dt, types[t], V, D, di, T, dout), PD_OK);
        PD_CHECK_STATUS(ops->synchronize(be), PD_ERR_RANGE);
        PD_CHECK_STATUS(ops->synchronize(be), PD_OK); /* reported once */
        ops->buf_free(be, dt), ops->buf_free(be, di), ops->buf_free(be, dout);
        free(tf), free(tab), free(ref), free(got);
    }
}

/* ---- softmax / argmax ---- */

PD_TEST(test_softmax_argmax)
{
    static const int64_t ns[] = {1, 1000, 49152};
    for (size_t c = 0; c < 3; c++) {
        const int64_t T = 4, n = ns[c];
        const size_t bytes = (size_t)(T * n) * 4;
        float *x = rand_vec((size_t)(T * n), 20.0f), *ref = malloc(bytes);
        if (n > 10) {
            x[3] = -INFINITY;         /* masked entry */
            x[n + 5] = NAN;           /* argmax ignores NaN */
            x[2 * n + 7] = x[2 * n + 9] = 1000.0f; /* tie: the first wins */
        }
        for (int64_t i = 0; i < n; i++)
            x[3 * n + i] = -INFINITY; /* all masked: probabilities 0, log-probabilities -inf */
        void *dx = up(x, bytes);
        float *dout = poisoned(bytes);
        int32_t *didx = poisoned((size_t)T * 4), ridx[4];
        kcpu_softmax(x, ref, T, n);
        PD_CHECK_STATUS(ops->softmax(be, dx, dout, T, n), PD_OK);
        float *got = down(dout, bytes);
        /* row 1 holds a NaN: compare the clean rows only */
        PD_CHECK_EQ_INT(cmp("softmax", got, ref, (size_t)n, 1e-5), 0);
        PD_CHECK_EQ_INT(cmp("softmax", got + 2 * n, ref + 2 * n, (size_t)n, 1e-5), 0);
        int masked_bad = 0;
        for (int64_t i = 0; i < n; i++)
            masked_bad += got[3 * n + i] != 0.0f;
        PD_CHECK_EQ_INT(masked_bad, 0);
        free(got);
        kcpu_log_softmax(x, ref, T, n);
        PD_CHECK_STATUS(ops->log_softmax(be, dx, dout, T, n), PD_OK);
        got = down(dout, bytes);
        PD_CHECK_EQ_INT(cmp("log_softmax", got, ref, (size_t)n, 1e-5), 0);
        PD_CHECK_EQ_INT(cmp("log_softmax", got + 2 * n, ref + 2 * n, (size_t)n, 1e-5), 0);
        masked_bad = 0; /* the kernel gave NaN here before session 11 */
        for (int64_t i = 0; i < n; i++)
            masked_bad += got[3 * n + i] != -INFINITY;
        PD_CHECK_EQ_INT(masked_bad, 0);
        free(got);
        kcpu_argmax(x, T, n, ridx);
        PD_CHECK_STATUS(ops->argmax(be, dx, T, n, didx), PD_OK);
        int32_t *gidx = down(didx, (size_t)T * 4);
        for (int t = 0; t < T; t++)
            PD_CHECK_EQ_INT(gidx[t], ridx[t]);
        free(gidx);
        ops->buf_free(be, dx), ops->buf_free(be, dout), ops->buf_free(be, didx);
        free(x), free(ref);
    }
}

/* Device-side greedy reads the argmax of every decode logits row: vocabulary sizes of real
 * models, batches up to 64 rows, values on a coarse grid so the maximum is tied in most
 * rows (the first one must win, as in the host sampler), the maximum at either end of
 * a row, and -inf entries. */
PD_TEST(test_argmax_decode_rows)
{
    static const int64_t ns[] = {1001, 49152, 128256};
    static const int64_t Ts[] = {1, 7, 64};
    int cases = 0;
    for (size_t c = 0; c < 3; c++)
        for (size_t r = 0; r < 3; r++) {
            const int64_t T = Ts[r], n = ns[c];
            const size_t bytes = (size_t)(T * n) * 4;
            float *x = malloc(bytes);
            int32_t *ridx = malloc((size_t)T * 4);
            for (size_t i = 0; i < (size_t)(T * n); i++)
                x[i] = (float)irand(64) - 40.0f; /* many ties of the row maximum */
            for (int64_t t = 0; t < T; t++) {
                float *row = x + t * n;
                if (t % 4 == 1)
                    row[n - 1] = 100.0f; /* the last element is the unique maximum */
                if (t % 4 == 2)
                    row[0] = row[n - 1] = 100.0f; /* tie between the ends */
                if (t % 4 == 3)
                    row[irand((int)n)] = -INFINITY;
            }
            void *dx = up(x, bytes);
            int32_t *didx = poisoned((size_t)T * 4);
            kcpu_argmax(x, T, n, ridx);
            PD_CHECK_STATUS(ops->argmax(be, dx, T, n, didx), PD_OK);
            int32_t *gidx = down(didx, (size_t)T * 4);
            int bad = 0;
            for (int64_t t = 0; t < T; t++)
                bad += gidx[t] != ridx[t];
            if (bad)
                fprintf(stderr, "  argmax T=%lld n=%lld: %d rows differ (row 0: %d vs %d)\n", (long long)T,
                        (long long)n, bad, gidx[0], ridx[0]);
            PD_CHECK_EQ_INT(bad, 0);
            cases++;
            free(gidx);
            ops->buf_free(be, dx), ops->buf_free(be, didx);
            free(x), free(ridx);
        }
    printf("  %d argmax cases (ties -> first index) equal to kcpu\n", cases);
}

/* Device sampling (kcuda_sample_rows) against kcpu_sample_rows with the same uniforms:
 * logits on a 1/8 grid (ties everywhere, also at the top-k cut), vocabularies up to
 * Llama 3's, every filter alone and together, greedy rows, -inf and NaN entries.  The
 * selections are exact comparisons and the weights bit-identical, so only the order of
 * the double sums differs: a token may differ only where the reference itself changes
 * within u +- 1e-6 (a draw boundary); such cases are counted and must stay rare. */
PD_TEST(test_sample_rows)
{
    static const int64_t ns[] = {1001, 49152, 128256};
    static const kcpu_sample_params_t ps[8] = {
        {1.0f, 0, 1.0f, 0.0f},   {0.7f, 50, 1.0f, 0.0f},  {1.3f, 0, 0.9f, 0.0f},  {1.0f, 0, 1.0f, 0.05f},
        {0.8f, 40, 0.8f, 0.02f}, {0.0f, 0, 1.0f, 0.0f},  {1.0f, 1, 1.0f, 0.0f},  {0.5f, 1000000, 0.3f, 0.0f}};
    const int T = 8, draws = 5;
    int total = 0, boundary = 0, bad = 0;
    for (size_t c = 0; c < 3; c++) {
        const int64_t n = ns[c];
        const size_t bytes = (size_t)(T * n) * 4;
        float *x = malloc(bytes), u[8];
        int32_t ref[8], alt[8];
        for (size_t i = 0; i < (size_t)(T * n); i++)
            x[i] = (float)irand(200) / 8.0f - 10.0f;
        x[n + 3] = -INFINITY;
        x[2 * n + 5] = NAN;
        void *dx = up(x, bytes), *dp = up(ps, sizeof(ps));
        float *du = poisoned(sizeof(u));
        for (int d = 0; d < draws; d++) {
            for (int t = 0; t < T; t++)
                u[t] = (frand() + 1.0f) * 0.5f * 0.999999f;
            PD_CHECK_STATUS(ops->memcpy_h2d(be, du, u, sizeof(u)), PD_OK);
            int32_t *dout = poisoned((size_t)T * 4);
            /* the kernel runs on the legacy stream: the backend's copies first, then wait */
            PD_CHECK_STATUS(ops->synchronize(be), PD_OK);
            PD_CHECK_STATUS(kcuda_sample_rows(dx, T, n, dp, du, dout, NULL), PD_OK);
            PD_CHECK_STATUS(kcuda_stream_sync(NULL), PD_OK);
            int32_t *got = down(dout, (size_t)T * 4);
            kcpu_sample_rows(x, T, n, ps, u, ref);
            for (int t = 0; t < T; t++) {
                total++;
                if (got[t] == ref[t])
                    continue;
                float ul = u[t] - 1e-6f, uh = u[t] + 1e-6f;
                kcpu_sample_rows(x + t * n, 1, n, &ps[t], &ul, &alt[0]);
                kcpu_sample_rows(x + t * n, 1, n, &ps[t], &uh, &alt[1]);
                if (got[t] == alt[0] || got[t] == alt[1]) {
                    boundary++;
                } else {
                    bad++;
                    fprintf(stderr, "  sample n=%lld row %d u=%.9f: %d, reference %d\n", (long long)n, t, u[t], got[t],
                            ref[t]);
                }
            }
            free(got);
            ops->buf_free(be, dout);
        }
        ops->buf_free(be, dx), ops->buf_free(be, dp), ops->buf_free(be, du);
        free(x);
    }
    printf("  %d sampled rows equal to kcpu_sample_rows, %d at a draw boundary, %d wrong\n", total - boundary - bad,
           boundary, bad);
    PD_CHECK_EQ_INT(bad, 0);
    PD_CHECK(boundary * 50 <= total);
}

/* ---- KV cache and paged attention ---- */

typedef struct {
    int n_heads, n_kv, hd, bs, window;
    kcpu_dtype_t cache;
    bool decode_only;
    int n_seqs;
} attn_case_t;

static void attn_case(const attn_case_t *c, kcpu_dtype_t gemm_dtype, double tol)
{
    /* the backend's GEMM dtype picks the attention precision: f32 -> f32 SIMT kernel,
     * bf16 -> tensor-core kernel for prefill tiles */
    PD_CHECK_STATUS(eng_backend_cuda_set_weight_dtype(be, gemm_dtype), PD_OK);
    const int L = 2, layer = 1, S = c->n_seqs;
    const int max_ctx = c->decode_only ? 1500 : 300;
    const int mbps = (max_ctx + c->bs - 1) / c->bs + 1;
    const int64_t n_blocks = (int64_t)S * mbps + 3;
    kcpu_kv_layout_t lay;
    PD_CHECK_STATUS(kcpu_kv_layout_init(&lay, c->cache, L, c->bs, c->n_kv, c->hd, n_blocks), PD_OK);
    const size_t cache_bytes = lay.block_bytes * (size_t)n_blocks;
    const int64_t W = (int64_t)c->n_kv * c->hd, QW = (int64_t)c->n_heads * c->hd;

    /* block tables: a random permutation of the blocks */
    int32_t *perm = shuffled_blocks(n_blocks), *bt = malloc(sizeof(int32_t) * S * mbps);
    for (int i = 0; i < S * mbps; i++)
        bt[i] = perm[i];
    /* contexts, and this step's tokens per sequence (the rest is already cached) */
    int32_t *ctx = malloc(sizeof(int32_t) * S), *nnew = malloc(sizeof(int32_t) * S);
    int64_t total = 0, T = 0;
    for (int s = 0; s < S; s++) {
        ctx[s] = c->decode_only ? 1 + irand(max_ctx) : 1 + irand(max_ctx - 1);
        nnew[s] = c->decode_only ? 1 : (s % 3 == 0 ? 1 : 1 + irand(ctx[s] < 40 ? ctx[s] : 40));
        if (nnew[s] > ctx[s])
            nnew[s] = ctx[s];
        total += ctx[s];
        T += nnew[s];
    }
    /* write every sequence's K/V (all positions) with kv_write, on both sides */
    int64_t *slots = malloc(sizeof(int64_t) * total);
    float *k = rand_vec((size_t)total * W, 1.0f), *v = rand_vec((size_t)total * W, 1.0f);
    int64_t r = 0;
    for (int s = 0; s < S; s++)
        for (int p = 0; p < ctx[s]; p++)
            slots[r++] = (int64_t)bt[s * mbps + p / c->bs] * c->bs + p % c->bs;
    slots[0] = -1; /* a padding token: skipped */
    void *hcache = calloc(1, cache_bytes);
    void *dcache = up(hcache, cache_bytes);
    void *dslots = up(slots, sizeof(int64_t) * total), *dk = up(k, (size_t)total * W * 4), *dv = up(v, (size_t)total * W * 4);
    PD_CHECK_STATUS(kcpu_kv_write(&lay, hcache, layer, slots, total, k, W, v, W), PD_OK);
    PD_CHECK_STATUS(ops->kv_write(be, &lay, dcache, layer, dslots, total, dk, W, dv, W), PD_OK);
    uint8_t *gcache = down(dcache, cache_bytes);
    PD_CHECK(memcmp(gcache, hcache, cache_bytes) == 0);
    free(gcache);

    /* the query batch: for sequence s the last nnew[s] positions */
    int32_t *tseq = malloc(sizeof(int32_t) * T), *tpos = malloc(sizeof(int32_t) * T);
    int64_t t = 0;
    for (int s = 0; s < S; s++)
        for (int i = 0; i < nnew[s]; i++, t++) {
            tseq[t] = s;
            tpos[t] = ctx[s] - nnew[s] + i;
        }
    float *q = rand_vec((size_t)T * QW, 1.0f), *ref = malloc((size_t)T * QW * 4);
    void *dq = up(q, (size_t)T * QW * 4), *dseq = up(tseq, T * 4), *dpos = up(tpos, T * 4), *dbt = up(bt, (size_t)S * mbps * 4),
         *dctx = up(ctx, S * 4);
    float *dout = poisoned((size_t)T * QW * 4);
    kcpu_attn_params_t p = {.n_tokens = T, .q = q, .q_stride = QW, .out = ref, .out_stride = QW, .tok_seq = tseq,
                            .tok_pos = tpos, .n_seqs = S, .block_tables = bt, .max_blocks_per_seq = mbps,
                            .context_lens = ctx, .n_heads = c->n_heads, .n_kv_heads = c->n_kv, .head_dim = c->hd,
                            .scale = 1.0f / sqrtf((float)c->hd), .causal = true, .sliding_window = c->window,
                            .layer = layer, .cache_base = hcache, .layout = &lay};
    PD_CHECK_STATUS(kcpu_paged_attention(NULL, &p), PD_OK);
    kcpu_attn_params_t pd = p;
    pd.q = dq, pd.out = dout, pd.tok_seq = dseq, pd.tok_pos = dpos, pd.block_tables = dbt, pd.context_lens = dctx;
    pd.cache_base = dcache;
    PD_CHECK_STATUS(ops->paged_attention(be, &pd), PD_OK);
    float *got = down(dout, (size_t)T * QW * 4);
    char what[128];
    snprintf(what, sizeof(what), "attention h%d/%d d%d bs%d win%d %s %s T%lld %s", c->n_heads, c->n_kv, c->hd, c->bs,
             c->window, kcpu_dtype_name(c->cache), c->decode_only ? "decode" : "mixed", (long long)T,
             kcpu_dtype_name(gemm_dtype));
    PD_CHECK_EQ_INT(cmp(what, got, ref, (size_t)(T * QW), tol), 0);
    free(got);

    /* copy-on-write block copies */
    int32_t src[3] = {bt[0], bt[1], perm[n_blocks - 1]}, dst[3] = {perm[n_blocks - 2], perm[n_blocks - 3], bt[2]};
    void *dsrc = up(src, sizeof(src)), *ddst = up(dst, sizeof(dst));
    PD_CHECK_STATUS(kcpu_kv_copy_blocks(&lay, hcache, src, dst, 3), PD_OK);
    PD_CHECK_STATUS(ops->kv_copy_blocks(be, &lay, dcache, dsrc, ddst, 3), PD_OK);
    gcache = down(dcache, cache_bytes);
    PD_CHECK(memcmp(gcache, hcache, cache_bytes) == 0);
    free(gcache);

    ops->buf_free(be, dcache), ops->buf_free(be, dslots), ops->buf_free(be, dk), ops->buf_free(be, dv);
    ops->buf_free(be, dq), ops->buf_free(be, dseq), ops->buf_free(be, dpos), ops->buf_free(be, dbt);
    ops->buf_free(be, dctx), ops->buf_free(be, dout), ops->buf_free(be, dsrc), ops->buf_free(be, ddst);
    free(perm), free(bt), free(ctx), free(nnew), free(slots), free(k), free(v), free(hcache), free(tseq), free(tpos);
    free(q), free(ref);
}

/* ---- fp8 KV cache ---- */

/* One fp8 byte as a float (e4m3: the "fn" variant CUDA uses, no infinities). */
static float fp8_decode(uint8_t b, bool e5m2)
{
    int sgn = b >> 7, e, m;
    float v;
    if (e5m2) {
        e = (b >> 2) & 31, m = b & 3;
        if (e == 31)
            return m ? NAN : (sgn ? -INFINITY : INFINITY);
        v = e == 0 ? ldexpf((float)m, -16) : ldexpf(1.0f + (float)m / 4.0f, e - 15);
    } else {
        e = (b >> 3) & 15, m = b & 7;
        if (e == 15 && m == 7)
            return NAN;
        v = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + (float)m / 8.0f, e - 7);
    }
    return sgn ? -v : v;
}

static void fp8_case(bool e5m2, bool calc, int n_heads, int n_kv, int hd, int bs, bool decode_only)
{
    const int L = 2, S = decode_only ? 1 + irand(20) : 1 + irand(4), max_ctx = decode_only ? 700 : 200;
    const int mbps = (max_ctx + bs - 1) / bs + 1;
    const int64_t n_blocks = (int64_t)S * mbps + 2, W = (int64_t)n_kv * hd, QW = (int64_t)n_heads * hd;
    const float in_scale = 3.0f; /* |k|, |v| < 3 */
    float ks[2] = {0.05f, 0.02f}, vs[2] = {0.03f, 0.011f}; /* fixed: 3 / 0.011 = 273 < 448 */
    kcpu_kv_layout_t lay, lay32;
    char what[160];

    PD_CHECK_STATUS(eng_backend_cuda_kv_layout_init(&lay, e5m2 ? ENG_CUDA_KV_FP8_E5M2 : ENG_CUDA_KV_FP8_E4M3, L, bs,
                                                    n_kv, hd, n_blocks),
                    PD_OK);
    PD_CHECK(eng_backend_cuda_kv_is_fp8(&lay));
    PD_CHECK_STATUS(kcpu_kv_layout_init(&lay32, KCPU_DTYPE_F32, L, bs, n_kv, hd, n_blocks), PD_OK);
    PD_CHECK_EQ_INT(lay.block_bytes * 4, lay32.block_bytes);
    PD_CHECK_STATUS(eng_backend_cuda_set_kv_scales(be, L, ks, vs, calc), PD_OK);

    int32_t *bt = malloc(sizeof(int32_t) * S * mbps), *ctx = malloc(sizeof(int32_t) * S),
            *nnew = malloc(sizeof(int32_t) * S);
    for (int i = 0; i < S * mbps; i++)
        bt[i] = (int32_t)((i * 7 + 3) % n_blocks); /* distinct while S * mbps <= n_blocks and gcd(7, n) = 1 */
    int64_t total = 0, T = 0;
    for (int sq = 0; sq < S; sq++) {
        ctx[sq] = 1 + irand(max_ctx - 1);
        nnew[sq] = decode_only ? 1 : 1 + irand(ctx[sq] < 30 ? ctx[sq] : 30);
        total += ctx[sq];
        T += nnew[sq];
    }
    if (n_blocks % 7 == 0) /* keep the table a permutation */
        for (int i = 0; i < S * mbps; i++)
            bt[i] = i;
    int64_t *slots = malloc(sizeof(int64_t) * total);
    float *k = rand_vec((size_t)total * W, in_scale), *v = rand_vec((size_t)total * W, in_scale);
    int64_t r = 0;
    for (int sq = 0; sq < S; sq++)
        for (int p = 0; p < ctx[sq]; p++)
            slots[r++] = (int64_t)bt[sq * mbps + p / bs] * bs + p % bs;
    int64_t skip_slot = slots[0];
    slots[0] = -1; /* padding: skipped, and left out of the calculated scales */
    const int layer = 1;
    size_t fp8_bytes = lay.block_bytes * (size_t)n_blocks, f32_bytes = lay32.block_bytes * (size_t)n_blocks;
    uint8_t *zeros = calloc(1, fp8_bytes);
    void *dcache = up(zeros, fp8_bytes), *dslots = up(slots, sizeof(int64_t) * total);
    void *dk = up(k, (size_t)total * W * 4), *dv = up(v, (size_t)total * W * 4);
    PD_CHECK_STATUS(ops->kv_write(be, &lay, dcache, layer, dslots, total, dk, W, dv, W), PD_OK);
    float kscale = 0, vscale = 0;
    PD_CHECK_STATUS(eng_backend_cuda_get_kv_scale(be, layer, &kscale, &vscale), PD_OK);
    if (calc) {
        float mk = 0, mv = 0;
        for (int64_t i = W; i < total * W; i++) { /* row 0 is the skipped one */
            mk = fabsf(k[i]) > mk ? fabsf(k[i]) : mk;
            mv = fabsf(v[i]) > mv ? fabsf(v[i]) : mv;
        }
        PD_CHECK(fabsf(kscale - mk / 200.0f) <= 1e-6f * mk && fabsf(vscale - mv / 100.0f) <= 1e-6f * mv);
    } else {
        PD_CHECK(kscale == ks[layer] && vscale == vs[layer]);
    }
    /* decode the GPU's bytes into an f32 cache; check every written element */
    uint8_t *g = down(dcache, fp8_bytes);
    float *hc = calloc(1, f32_bytes);
    const double rel = e5m2 ? 0.125 : 0.0625, sub = e5m2 ? ldexp(1.0, -16) : ldexp(1.0, -9);
    int bad = 0;
    /* element e of an fp8 block is element e of an f32 block (the same strides); the
     * written K/V elements are scaled below */
    for (int64_t b = 0; b < n_blocks; b++)
        for (int64_t e = 0; e < (int64_t)lay.block_bytes; e++)
            hc[b * (int64_t)(lay32.block_bytes / 4) + e] = fp8_decode(g[b * (int64_t)lay.block_bytes + e], e5m2);
    r = 0;
    for (int64_t tk = 0; tk < total; tk++) {
        int64_t sl = tk == 0 ? skip_slot : slots[tk];
        int64_t off = (sl / bs) * (int64_t)(lay32.block_bytes / 4) + (int64_t)layer * lay.layer_stride + (sl % bs) * lay.token_stride;
        for (int64_t i = 0; i < W; i++) {
            float *kp = hc + off + i, *vp = hc + off + lay.kv_stride + i;
            if (tk == 0) { /* skipped: still zero */
                bad += *kp != 0.0f || *vp != 0.0f;
                continue;
            }
            double ek = fabs((double)*kp * kscale - k[tk * W + i]), ev = fabs((double)*vp * vscale - v[tk * W + i]);
            /* half a step, plus a hair for x * (1 / scale) rounding in f32 */
            if (!(ek <= rel * 1.0001 * fabs(k[tk * W + i]) + sub * kscale) ||
                !(ev <= rel * 1.0001 * fabs(v[tk * W + i]) + sub * vscale)) {
                if (bad++ < 3)
                    fprintf(stderr, "  fp8 %s: k %.6g -> %.6g, v %.6g -> %.6g\n", e5m2 ? "e5m2" : "e4m3", k[tk * W + i],
                            *kp * kscale, v[tk * W + i], *vp * vscale);
            }
            *kp *= kscale; /* the reference cache holds the dequantized values */
            *vp *= vscale;
        }
    }
    PD_CHECK_EQ_INT(bad, 0);

    /* attention over the fp8 cache vs kcpu over the decoded f32 cache */
    int32_t *tseq = malloc(sizeof(int32_t) * T), *tpos = malloc(sizeof(int32_t) * T);
    int64_t t = 0;
    for (int sq = 0; sq < S; sq++)
        for (int i = 0; i < nnew[sq]; i++, t++) {
            tseq[t] = sq;
            tpos[t] = ctx[sq] - nnew[sq] + i;
        }
    /* position 0 of sequence 0 was skipped: its K/V are zeros on both sides */
    float *q = rand_vec((size_t)T * QW, 1.0f), *ref = malloc((size_t)T * QW * 4);
    void *dq = up(q, (size_t)T * QW * 4), *dseq = up(tseq, T * 4), *dpos = up(tpos, T * 4),
         *dbt = up(bt, (size_t)S * mbps * 4), *dctx = up(ctx, S * 4);
    float *dout = poisoned((size_t)T * QW * 4);
    kcpu_attn_params_t p = {.n_tokens = T, .q = q, .q_stride = QW, .out = ref, .out_stride = QW, .tok_seq = tseq,
                            .tok_pos = tpos, .n_seqs = S, .block_tables = bt, .max_blocks_per_seq = mbps,
                            .context_lens = ctx, .n_heads = n_heads, .n_kv_heads = n_kv, .head_dim = hd,
                            .scale = 1.0f / sqrtf((float)hd), .causal = true, .layer = layer, .cache_base = hc,
                            .layout = &lay32};
    PD_CHECK_STATUS(kcpu_paged_attention(NULL, &p), PD_OK);
    kcpu_attn_params_t pd = p;
    pd.q = dq, pd.out = dout, pd.tok_seq = dseq, pd.tok_pos = dpos, pd.block_tables = dbt, pd.context_lens = dctx;
    pd.cache_base = dcache, pd.layout = &lay;
    PD_CHECK_STATUS(ops->paged_attention(be, &pd), PD_OK);
    float *got = down(dout, (size_t)T * QW * 4);
    snprintf(what, sizeof(what), "fp8 %s attention h%d/%d d%d bs%d %s T%lld %s scales", e5m2 ? "e5m2" : "e4m3",
             n_heads, n_kv, hd, bs, decode_only ? "decode" : "mixed", (long long)T, calc ? "calculated" : "fixed");
    PD_CHECK_EQ_INT(cmp(what, got, ref, (size_t)(T * QW), 1e-4), 0);
    free(got);

    /* block copies move the fp8 bytes as they are */
    int32_t src[2] = {bt[0], bt[1]}, dst[2] = {bt[S * mbps - 1], bt[S * mbps - 2]};
    void *dsrc = up(src, sizeof(src)), *ddst = up(dst, sizeof(dst));
    PD_CHECK_STATUS(ops->kv_copy_blocks(be, &lay, dcache, dsrc, ddst, 2), PD_OK);
    uint8_t *g2 = down(dcache, fp8_bytes);
    for (int i = 0; i < 2; i++)
        PD_CHECK(memcmp(g2 + (size_t)dst[i] * lay.block_bytes, g + (size_t)src[i] * lay.block_bytes, lay.block_bytes) == 0);
    free(g2);

    ops->buf_free(be, dcache), ops->buf_free(be, dslots), ops->buf_free(be, dk), ops->buf_free(be, dv);
    ops->buf_free(be, dq), ops->buf_free(be, dseq), ops->buf_free(be, dpos), ops->buf_free(be, dbt);
    ops->buf_free(be, dctx), ops->buf_free(be, dout), ops->buf_free(be, dsrc), ops->buf_free(be, ddst);
    free(bt), free(ctx), free(nnew), free(slots), free(k), free(v), free(zeros), free(g), free(hc);
    free(tseq), free(tpos), free(q), free(ref);
}

PD_TEST(test_kv_fp8)
{
    static const int heads[][2] = {{8, 2}, {9, 3}, {4, 4}};
    int n = 0;
    for (int e5 = 0; e5 < 2; e5++)
        for (int calc = 0; calc < 2; calc++)
            for (int h = 0; h < 3; h++)
                for (int mode = 0; mode < 2; mode++) {
                    fp8_case(e5 == 1, calc == 1, heads[h][0], heads[h][1], h == 1 ? 64 : 128, h == 2 ? 32 : 16,
                             mode == 1);
                    n++;
                }
    printf("  %d fp8 KV cases (write, scales, attention, block copy)\n", n);
}

PD_TEST(test_paged_attention)
{
    static const int bss[] = {16, 32, 128};
    static const int heads[][2] = {{4, 4}, {8, 2}, {16, 2}, {9, 3}};
    static const int hds[] = {64, 128};
    int n = 0;
    for (int b = 0; b < 3; b++)
        for (int h = 0; h < 4; h++)
            for (int d = 0; d < 2; d++)
                for (int mode = 0; mode < 2; mode++) {
                    attn_case_t c = {.n_heads = heads[h][0], .n_kv = heads[h][1], .hd = hds[d], .bs = bss[b],
                                     .window = (n % 5 == 4) ? 37 : 0,
                                     .cache = (n % 3 == 2) ? KCPU_DTYPE_F16 : KCPU_DTYPE_F32,
                                     .decode_only = mode == 1, .n_seqs = mode == 1 ? 1 + irand(24) : 1 + irand(5)};
                    attn_case(&c, KCPU_DTYPE_F32, 1e-4);
                    /* prefill tiles on tensor cores (bf16 q/K/V/P, f32 accumulation) */
                    attn_case(&c, KCPU_DTYPE_BF16, 2e-2);
                    n++;
                }
    printf("  %d attention cases, each exact and reduced\n", n);
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_F32);
}

/* ---- the decode attention kernel (kcuda_attn_decode.cu) ---- */

/* Context lengths around block and split edges; batches take them in turn. */
static const int dec_lens[8] = {1, 15, 16, 17, 100, 1023, 1025, 4097};

typedef struct {
    int kind; /* 0 f32, 1 f16, 2 fp8 e4m3, 3 fp8 e5m2 */
    int n_heads, n_kv, hd, bs, B, window, splits;
    int len0;       /* the first sequence's entry in dec_lens (the others follow in turn) */
    bool new_kernel; /* the shape is one the decode kernel takes (else the old one runs) */
} dec_case_t;

static const char *const dec_kind_name[4] = {"f32", "f16", "e4m3", "e5m2"};
static bool dec_tc_run;              /* PD_TEST_ATTN_TC=1: the tensor-core variant too */
static int dec_tc_cases, dec_tc_bad; /* its record */

/* A random fp8 byte whose value is finite and at most 8 in magnitude; *val_p its value. */
static uint8_t fp8_rand_byte(bool e5m2, float *val_p)
{
    static float tab[2][256];
    static bool init;
    if (!init) {
        for (int f = 0; f < 2; f++)
            for (int b = 0; b < 256; b++)
                tab[f][b] = fp8_decode((uint8_t)b, f == 1);
        init = true;
    }
    for (;;) {
        uint8_t b = (uint8_t)irand(256);
        float f = tab[e5m2][b];
        if (isfinite(f) && fabsf(f) <= 8.0f) {
            *val_p = f;
            return b;
        }
    }
}

/* Run ops->paged_attention on the device params into a freshly poisoned output; returns
 * the host copy (T * QW floats). */
static float *dec_run(kcpu_attn_params_t *pd, int64_t T, int64_t QW)
{
    ops->memset(be, pd->out, 0xff, (size_t)T * QW * 4);
    PD_CHECK_STATUS(ops->paged_attention(be, pd), PD_OK);
    PD_CHECK_STATUS(ops->synchronize(be), PD_OK);
    return down(pd->out, (size_t)T * QW * 4);
}

static void dec_case(const dec_case_t *c)
{
    const int L = 2, layer = 1, B = c->B;
    const bool fp8 = c->kind >= 2, e5m2 = c->kind == 3;
    static const eng_cuda_kv_t kinds[4] = {ENG_CUDA_KV_F32, ENG_CUDA_KV_F16, ENG_CUDA_KV_FP8_E4M3,
                                           ENG_CUDA_KV_FP8_E5M2};
    const float ks[2] = {0.25f, 0.125f}, vs[2] = {0.5f, 0.375f};
    char what[160];

    /* contexts, block tables (a random permutation of the blocks), spare table entries */
    int32_t *ctx = malloc(sizeof(int32_t) * B);
    int max_ctx = 1;
    int64_t need = 0;
    for (int s = 0; s < B; s++) {
        ctx[s] = dec_lens[(c->len0 + s) % 8];
        max_ctx = ctx[s] > max_ctx ? ctx[s] : max_ctx;
        need += (ctx[s] + c->bs - 1) / c->bs;
    }
    const int mbps = (max_ctx + c->bs - 1) / c->bs + 2;
    const int64_t n_blocks = need + 3;
    kcpu_kv_layout_t lay, lay32;
    PD_CHECK_STATUS(eng_backend_cuda_kv_layout_init(&lay, kinds[c->kind], L, c->bs, c->n_kv, c->hd, n_blocks), PD_OK);
    PD_CHECK_STATUS(kcpu_kv_layout_init(&lay32, KCPU_DTYPE_F32, L, c->bs, c->n_kv, c->hd, n_blocks), PD_OK);
    int32_t *perm = shuffled_blocks(n_blocks), *bt = malloc(sizeof(int32_t) * B * mbps);
    int64_t nb = 0;
    for (int s = 0; s < B; s++)
        for (int i = 0; i < mbps; i++)
            bt[s * mbps + i] = i < (ctx[s] + c->bs - 1) / c->bs ? perm[nb++] : perm[irand((int)n_blocks)];

    /* the layer read random (K and V, every head, every block), the other layer NaN (all
     * bits set: NaN in f32, f16 and both fp8 formats) so reading it shows; the reference
     * cache is the same values as f32 (fp8: decoded and scaled as the kernel must) */
    const size_t cache_bytes = lay.block_bytes * (size_t)n_blocks;
    const int64_t n_elems = (int64_t)(cache_bytes / lay.elem_bytes), blk = (int64_t)(lay.block_bytes / lay.elem_bytes);
    void *hcache = malloc(cache_bytes);
    float *ref_cache = fp8 ? malloc((size_t)n_elems * 4) : NULL;
    memset(hcache, 0xff, cache_bytes);
    if (fp8)
        memset(ref_cache, 0xff, (size_t)n_elems * 4);
    for (int64_t b = 0; b < n_blocks; b++)
        for (int64_t e = 0; e < lay.layer_stride; e++) {
            const int64_t i = b * blk + (int64_t)layer * lay.layer_stride + e;
            if (c->kind == 0) {
                ((float *)hcache)[i] = frand();
            } else if (c->kind == 1) {
                ((uint16_t *)hcache)[i] = kcpu_f32_to_f16(frand() * 2.0f);
            } else {
                float f;
                ((uint8_t *)hcache)[i] = fp8_rand_byte(e5m2, &f);
                ref_cache[i] = f * (e >= lay.kv_stride ? vs[layer] : ks[layer]);
            }
        }
    if (fp8)
        PD_CHECK_STATUS(eng_backend_cuda_set_kv_scales(be, L, ks, vs, false), PD_OK);

    /* one token per sequence, in a shuffled order; with c->B >= 3 and an odd len0 one
     * sequence has no token this step */
    int64_t T = B >= 3 && (c->len0 & 1) ? B - 1 : B;
    int32_t *order = malloc(sizeof(int32_t) * B), *tseq = malloc(sizeof(int32_t) * B),
            *tpos = malloc(sizeof(int32_t) * B);
    for (int s = 0; s < B; s++)
        order[s] = s;
    for (int s = B - 1; s > 0; s--) {
        int j = irand(s + 1);
        int32_t tmp = order[s];
        order[s] = order[j];
        order[j] = tmp;
    }
    for (int64_t t = 0; t < T; t++) {
        tseq[t] = order[t];
        tpos[t] = ctx[order[t]] - 1;
    }
    const int64_t QW = (int64_t)c->n_heads * c->hd;
    float *q = rand_vec((size_t)T * QW, 1.0f), *ref = malloc((size_t)T * QW * 4);
    kcpu_attn_params_t p = {.n_tokens = T, .q = q, .q_stride = QW, .out = ref, .out_stride = QW, .tok_seq = tseq,
                            .tok_pos = tpos, .n_seqs = B, .block_tables = bt, .max_blocks_per_seq = mbps,
                            .context_lens = ctx, .n_heads = c->n_heads, .n_kv_heads = c->n_kv, .head_dim = c->hd,
                            .scale = 1.0f / sqrtf((float)c->hd), .causal = true, .sliding_window = c->window,
                            .layer = layer, .cache_base = fp8 ? (const void *)ref_cache : hcache,
                            .layout = fp8 ? &lay32 : &lay};
    PD_CHECK_STATUS(kcpu_paged_attention(NULL, &p), PD_OK);

    void *dcache = up(hcache, cache_bytes);
    void *dq = up(q, (size_t)T * QW * 4), *dseq = up(tseq, T * 4), *dpos = up(tpos, T * 4),
         *dbt = up(bt, (size_t)B * mbps * 4), *dctx = up(ctx, B * 4);
    float *dout = poisoned((size_t)T * QW * 4);
    kcpu_attn_params_t pd = p;
    pd.q = dq, pd.out = dout, pd.tok_seq = dseq, pd.tok_pos = dpos, pd.block_tables = dbt, pd.context_lens = dctx;
    pd.cache_base = dcache, pd.layout = &lay;
    snprintf(what, sizeof(what), "decode attention %s h%d/%d d%d bs%d B%d T%lld win%d splits %d", dec_kind_name[c->kind],
             c->n_heads, c->n_kv, c->hd, c->bs, B, (long long)T, c->window, c->splits);

    /* the new kernel, with the case's split count */
    kcuda_attn_set_decode(KCUDA_ATTN_DECODE_NEW, c->splits);
    int used_splits = 0;
    bool used = kcuda_attn_uses_decode_kernel(&pd, 132, &used_splits);
    PD_CHECK(used == c->new_kernel);
    if (used && c->splits > 0)
        PD_CHECK_EQ_INT(used_splits, c->splits);
    float *got = dec_run(&pd, T, QW);
    PD_CHECK_EQ_INT(cmp(what, got, ref, (size_t)(T * QW), 1e-4), 0);
    /* the tuning variants (l2hint, pipeline 0/1/2, scatter, head-major): every kernel
     * variant runs (pipeline 2 is the cp.async ring; shapes without room for it run 0) */
    char what2[256];
    static const int tune[6][4] = {{0, 0, 0, 1}, {1, 1, 1, 0}, {0, 1, 0, 1}, {1, 0, 1, 0}, {0, 2, 1, 0}, {1, 2, 0, 1}};
    for (int tv = 0; tv < 6; tv++) {
        kcuda_attn_set_decode_tuning(tune[tv][0], tune[tv][1], tune[tv][2], tune[tv][3], 0);
        float *alt = dec_run(&pd, T, QW);
        snprintf(what2, sizeof(what2), "%s (l2hint %d pipeline %d scatter %d head-major %d)", what, tune[tv][0],
                 tune[tv][1], tune[tv][2], tune[tv][3]);
        PD_CHECK_EQ_INT(cmp(what2, alt, ref, (size_t)(T * QW), 1e-4), 0);
        free(alt);
    }
    kcuda_attn_set_decode_tuning(-1, -1, -1, -1, -1);
    /* the tensor-core kernel's other forms (f16 / fp8, head dims 64 / 128; the default
     * above ran its ring): only in a run of its own (PD_TEST_ATTN_TC=1), so a fault there
     * cannot take the other tests down.  Registers (scheme 0), then scheme 2: the cp.async
     * ring in its default shape and each other warps x stages built (one not built for
     * the cache type runs the default) */
    static const int rings[6][2] = {{-1, 0}, {0, 0}, {2, 2}, {4, 2}, {2, 4}, {2, 6}};
    for (int ri = 0; dec_tc_run && ri < 6 && c->kind != 0 && c->hd <= 128 && c->new_kernel; ri++) {
        kcuda_attn_set_decode_tuning(-1, rings[ri][0] < 0 ? 0 : 2, -1, -1, 1);
        kcuda_attn_set_decode_ring(rings[ri][0] < 0 ? 0 : rings[ri][0], rings[ri][1]);
        float *alt = dec_run(&pd, T, QW);
        kcuda_attn_set_decode_ring(0, 0);
        snprintf(what2, sizeof(what2), "%s (tensor cores, %s %dx%d)", what, rings[ri][0] < 0 ? "registers" : "ring",
                 rings[ri][0], rings[ri][1]);
        const int bad = cmp(what2, alt, ref, (size_t)(T * QW), 1e-4);
        dec_tc_cases++;
        dec_tc_bad += bad > 0;
        PD_CHECK_EQ_INT(bad, 0);
        free(alt);
        kcuda_attn_set_decode_tuning(-1, -1, -1, -1, -1);
    }

    /* the old kernel on the same inputs, and the two against each other */
    kcuda_attn_set_decode(KCUDA_ATTN_DECODE_OLD, 0);
    PD_CHECK(!kcuda_attn_uses_decode_kernel(&pd, 132, NULL));
    float *old = dec_run(&pd, T, QW);
    snprintf(what2, sizeof(what2), "%s (old kernel)", what);
    PD_CHECK_EQ_INT(cmp(what2, old, ref, (size_t)(T * QW), 1e-4), 0);
    snprintf(what2, sizeof(what2), "%s (new vs old)", what);
    PD_CHECK_EQ_INT(cmp(what2, got, old, (size_t)(T * QW), 1e-4), 0);
    kcuda_attn_set_decode(KCUDA_ATTN_DECODE_NEW, c->splits);

    /* a block id outside the cache in the first token's sequence (the block of its own
     * position, which every window reads): reported at the next synchronize; the other
     * tokens' rows are unaffected */
    if (T >= 2) {
        const int32_t s0 = tseq[0], bi = s0 * mbps + (ctx[s0] - 1) / c->bs, saved = bt[bi];
        bt[bi] = (int32_t)n_blocks + 5;
        ops->memcpy_h2d(be, dbt, bt, (size_t)B * mbps * 4);
        ops->memset(be, dout, 0xff, (size_t)T * QW * 4);
        PD_CHECK_STATUS(ops->paged_attention(be, &pd), PD_OK);
        PD_CHECK_STATUS(ops->synchronize(be), PD_ERR_RANGE);
        PD_CHECK_STATUS(ops->synchronize(be), PD_OK); /* reported once */
        float *bad = down(dout, (size_t)T * QW * 4);
        snprintf(what2, sizeof(what2), "%s (bad block elsewhere)", what);
        PD_CHECK_EQ_INT(cmp(what2, bad + QW, ref + QW, (size_t)((T - 1) * QW), 1e-4), 0);
        free(bad);
        bt[bi] = saved;
        /* a context longer than the block table allows: KCUDA_ERR_SEQ */
        int32_t saved_ctx = ctx[s0];
        ctx[s0] = mbps * c->bs + 1;
        ops->memcpy_h2d(be, dbt, bt, (size_t)B * mbps * 4);
        ops->memcpy_h2d(be, dctx, ctx, B * 4);
        PD_CHECK_STATUS(ops->paged_attention(be, &pd), PD_OK);
        PD_CHECK_STATUS(ops->synchronize(be), PD_ERR_RANGE);
        ctx[s0] = saved_ctx;
    }
    kcuda_attn_set_decode(KCUDA_ATTN_DECODE_AUTO, 0);

    free(got), free(old);
    ops->buf_free(be, dcache), ops->buf_free(be, dq), ops->buf_free(be, dseq), ops->buf_free(be, dpos);
    ops->buf_free(be, dbt), ops->buf_free(be, dctx), ops->buf_free(be, dout);
    free(ctx), free(perm), free(bt), free(hcache), free(ref_cache), free(order), free(tseq), free(tpos);
    free(q), free(ref);
}

PD_TEST(test_decode_attention)
{
    /* GQA ratios 1, 3 (padded to 4 rows), 4, 8; head dims 64, 128 (and 256; 96 takes the
     * old kernel); block sizes 16, 32, 128; batches 1, 3, 64; all four cache types; key
     * splits automatic, 1, 3 and 64 (more splits than keys for the short contexts) */
    static const int heads[][2] = {{4, 4}, {8, 2}, {16, 2}, {9, 3}, {32, 8}};
    static const int bss[] = {16, 32, 128};
    static const int splits[] = {0, 1, 3, 64};
    int n = 0, n_new = 0;
    for (int kind = 0; kind < 4; kind++)
        for (int h = 0; h < 5; h++)
            for (int v = 0; v < 4; v++) {
                dec_case_t c = {.kind = kind, .n_heads = heads[h][0], .n_kv = heads[h][1],
                                .hd = ((v ^ kind) & 1) ? 128 : 64, .bs = bss[(n + v) % 3],
                                .B = v == 0 ? 1 : v == 1 ? 3 : v == 2 ? 64 : 5,
                                .window = v == 3 ? 37 : (n % 7 == 6 ? 1000 : 0), .splits = splits[(n + h) % 4],
                                .len0 = irand(8), .new_kernel = true};
                if (c.B == 64 && c.n_kv > 2)
                    c.B = 17; /* keep the host reference small */
                if (c.B == 1)
                    c.len0 = (n / 4) % 8; /* batch 1 goes through every length */
                dec_case(&c);
                n++;
                n_new += c.new_kernel;
            }
    /* every length at batch 1 on the Llama-3.1-8B shape, f16 and fp8 */
    for (int i = 0; i < 8; i++) {
        dec_case_t c = {.kind = i & 1 ? 2 : 1, .n_heads = 32, .n_kv = 8, .hd = 128, .bs = 16, .B = 1, .splits = 0,
                        .len0 = i, .new_kernel = true};
        dec_case(&c);
        n++, n_new++;
    }
    /* head dim 256 (the new kernel) and 96 (not one of its shapes: the old kernel) */
    for (int kind = 0; kind < 4; kind++) {
        dec_case_t c = {.kind = kind, .n_heads = 8, .n_kv = 2, .hd = 256, .bs = 16, .B = 3, .splits = 0,
                        .len0 = irand(8), .new_kernel = true};
        dec_case(&c);
        c.hd = 96;
        c.new_kernel = false;
        dec_case(&c);
        n += 2, n_new++;
    }
    /* the tiny test models' head dims, 16 and 32 (groups 2 and 4; 8 with fp8 at 32) */
    for (int kind = 0; kind < 4; kind++)
        for (int d = 0; d < 2; d++) {
            dec_case_t c = {.kind = kind, .n_heads = kind >= 2 && d ? 16 : 4, .n_kv = kind >= 2 && d ? 2 : 2 - d,
                            .hd = d ? 32 : 16, .bs = d ? 32 : 16, .B = d ? 5 : 3, .splits = kind == 1 ? 2 : 0,
                            .len0 = irand(8), .new_kernel = true};
            dec_case(&c);
            n++, n_new++;
        }
    printf("  %d decode attention cases (%d on the decode kernel), each against kcpu and the old kernel\n", n,
           n_new);
    if (dec_tc_run)
        printf("  tensor-core decode kernel forms: %d of %d cases outside tolerance\n", dec_tc_bad,
               dec_tc_cases);
}

/* ---- the FlashAttention-2 prefill kernel (kcuda_attn_prefill.cu) ---- */

/* A prefill batch: sequence 0 is a chunk of T tokens after ctx0 cached ones, then (T2 > 0)
 * a second chunk of T2 tokens after a random context, then n_dec sequences of one decode
 * token each after a random context, all in one call.
 * The cache is filled on the host (kcpu_kv_write) and uploaded; the reference is
 * kcpu_paged_attention; the GPU runs the old WMMA kernel and the fa2 kernel with 4 and
 * 8 warps, each with the output poisoned first, and prints each one's worst error. */
typedef struct {
    int n_heads, n_kv, hd, bs, window, T, ctx0, n_dec;
    kcpu_dtype_t cache;
    int T2;
} pf_case_t;

static kcpu_pool_t *pf_pool;
static double pf_worst[3];
static int pf_routed;

static void pf_case(const pf_case_t *c)
{
    const int L = 2, layer = 1, S = 1 + (c->T2 > 0) + c->n_dec;
    int32_t *ctx = malloc(sizeof(int32_t) * S), *nnew = malloc(sizeof(int32_t) * S);
    int max_ctx = 0;
    int64_t T = 0, total = 0;
    for (int s = 0; s < S; s++) {
        const bool second = s == 1 && c->T2 > 0;
        ctx[s] = s == 0 ? c->ctx0 + c->T : second ? c->T2 + irand(100) : 1 + irand(700);
        nnew[s] = s == 0 ? c->T : second ? c->T2 : 1;
        max_ctx = ctx[s] > max_ctx ? ctx[s] : max_ctx;
        T += nnew[s];
        total += ctx[s];
    }
    const int mbps = (max_ctx + c->bs - 1) / c->bs + 1;
    const int64_t n_blocks = (int64_t)S * mbps + 2;
    kcpu_kv_layout_t lay;
    PD_CHECK_STATUS(kcpu_kv_layout_init(&lay, c->cache, L, c->bs, c->n_kv, c->hd, n_blocks), PD_OK);
    const size_t cache_bytes = lay.block_bytes * (size_t)n_blocks;
    const int64_t W = (int64_t)c->n_kv * c->hd, QW = (int64_t)c->n_heads * c->hd;
    int32_t *perm = shuffled_blocks(n_blocks), *bt = malloc(sizeof(int32_t) * S * mbps);
    for (int i = 0; i < S * mbps; i++)
        bt[i] = perm[i];
    /* K/V of every cached position; the unused slots keep NaN bytes (never to be read) */
    int64_t *slots = malloc(sizeof(int64_t) * total);
    float *k = rand_vec((size_t)total * W, 1.0f), *v = rand_vec((size_t)total * W, 1.0f);
    int64_t r = 0;
    for (int s = 0; s < S; s++)
        for (int p = 0; p < ctx[s]; p++)
            slots[r++] = (int64_t)bt[s * mbps + p / c->bs] * c->bs + p % c->bs;
    void *hcache = malloc(cache_bytes);
    memset(hcache, 0xff, cache_bytes);
    PD_CHECK_STATUS(kcpu_kv_write(&lay, hcache, layer, slots, total, k, W, v, W), PD_OK);
    int32_t *tseq = malloc(sizeof(int32_t) * T), *tpos = malloc(sizeof(int32_t) * T);
    int64_t t = 0;
    for (int s = 0; s < S; s++)
        for (int i = 0; i < nnew[s]; i++, t++) {
            tseq[t] = s;
            tpos[t] = ctx[s] - nnew[s] + i;
        }
    /* q with a row stride wider than the heads (the fused qkv buffer's) */
    const int64_t QS = QW + 2 * W;
    float *q = rand_vec((size_t)T * QS, 1.0f), *ref = malloc((size_t)T * QW * 4);
    void *dcache = up(hcache, cache_bytes), *dq = up(q, (size_t)T * QS * 4), *dseq = up(tseq, T * 4),
         *dpos = up(tpos, T * 4), *dbt = up(bt, (size_t)S * mbps * 4), *dctx = up(ctx, S * 4);
    float *dout = poisoned((size_t)T * QW * 4);
    kcpu_attn_params_t p = {.n_tokens = T, .q = q, .q_stride = QS, .out = ref, .out_stride = QW, .tok_seq = tseq,
                            .tok_pos = tpos, .n_seqs = S, .block_tables = bt, .max_blocks_per_seq = mbps,
                            .context_lens = ctx, .n_heads = c->n_heads, .n_kv_heads = c->n_kv, .head_dim = c->hd,
                            .scale = 1.0f / sqrtf((float)c->hd), .causal = true, .sliding_window = c->window,
                            .layer = layer, .cache_base = hcache, .layout = &lay};
    PD_CHECK_STATUS(kcpu_paged_attention(pf_pool, &p), PD_OK);
    kcpu_attn_params_t pd = p;
    pd.q = dq, pd.out = dout, pd.tok_seq = dseq, pd.tok_pos = dpos, pd.block_tables = dbt, pd.context_lens = dctx;
    pd.cache_base = dcache;
    static const char *const vname[3] = {"old", "fa2", "fa2w8"};
    double worst[3] = {0, 0, 0};
    int bad[3] = {0, 0, 0};
    for (int vi = 0; vi < 3; vi++) {
        kcuda_attn_set_prefill(vi == 0 ? KCUDA_ATTN_PREFILL_OLD : KCUDA_ATTN_PREFILL_FA2, vi == 2 ? 8 : 4);
        const bool want_fa2 = vi > 0 && T > S; /* pure decode batches stay on the decode kernel */
        const bool used = kcuda_attn_uses_prefill_kernel(&pd, 132, true, NULL);
        PD_CHECK(used == want_fa2);
        pf_routed += used;
        ops->memset(be, dout, 0xff, (size_t)T * QW * 4);
        PD_CHECK_STATUS(ops->paged_attention(be, &pd), PD_OK);
        PD_CHECK_STATUS(ops->synchronize(be), PD_OK);
        float *got = down(dout, (size_t)T * QW * 4);
        char what[160];
        snprintf(what, sizeof(what), "prefill %s h%d/%d d%d bs%d win%d %s T%d ctx0 %d +T%d +%d dec", vname[vi],
                 c->n_heads, c->n_kv, c->hd, c->bs, c->window, kcpu_dtype_name(c->cache), c->T, c->ctx0, c->T2,
                 c->n_dec);
        const double before = worst_g;
        worst_g = 0;
        bad[vi] = cmp(what, got, ref, (size_t)(T * QW), 2e-2);
        PD_CHECK_EQ_INT(bad[vi], 0);
        worst[vi] = worst_g;
        worst_g = before > worst_g ? before : worst_g;
        if (worst[vi] > pf_worst[vi])
            pf_worst[vi] = worst[vi];
        free(got);
    }
    if (S > 1) {
        /* range errors on the fa2 kernel: a bad block id in a decode sequence's table is
         * reported (KCUDA_ERR_BLOCK -> PD_ERR_RANGE, once) and the prefill chunk's rows
         * stay right; then a context longer than the block table allows (KCUDA_ERR_SEQ) */
        kcuda_attn_set_prefill(KCUDA_ATTN_PREFILL_FA2, 4);
        const int bi = mbps + (ctx[1] - 1) / c->bs;
        const int32_t saved = bt[bi];
        bt[bi] = (int32_t)n_blocks + 5;
        ops->memcpy_h2d(be, dbt, bt, (size_t)S * mbps * 4);
        ops->memset(be, dout, 0xff, (size_t)T * QW * 4);
        PD_CHECK_STATUS(ops->paged_attention(be, &pd), PD_OK);
        PD_CHECK_STATUS(ops->synchronize(be), PD_ERR_RANGE);
        PD_CHECK_STATUS(ops->synchronize(be), PD_OK);
        float *got = down(dout, (size_t)T * QW * 4);
        const double before = worst_g;
        PD_CHECK_EQ_INT(cmp("prefill fa2 (bad block in another sequence)", got, ref, (size_t)(c->T * QW), 2e-2), 0);
        worst_g = before;
        free(got);
        bt[bi] = saved;
        ops->memcpy_h2d(be, dbt, bt, (size_t)S * mbps * 4);
        const int32_t saved_ctx = ctx[1];
        ctx[1] = mbps * c->bs + 1;
        ops->memcpy_h2d(be, dctx, ctx, S * 4);
        PD_CHECK_STATUS(ops->paged_attention(be, &pd), PD_OK);
        PD_CHECK_STATUS(ops->synchronize(be), PD_ERR_RANGE);
        PD_CHECK_STATUS(ops->synchronize(be), PD_OK);
        ctx[1] = saved_ctx;
    }
    kcuda_attn_set_prefill(KCUDA_ATTN_PREFILL_AUTO, 0);
    printf("  h%2d/%d d%3d bs%3d win%3d %-3s T%5d ctx0 %3d +T%d +%d dec: worst old %.1e fa2 %.1e fa2w8 %.1e%s\n",
           c->n_heads, c->n_kv, c->hd, c->bs, c->window, kcpu_dtype_name(c->cache), c->T, c->ctx0, c->T2, c->n_dec,
           worst[0], worst[1], worst[2], bad[0] + bad[1] + bad[2] ? "  BAD" : "");
    fflush(stdout);

    ops->buf_free(be, dcache), ops->buf_free(be, dq), ops->buf_free(be, dseq), ops->buf_free(be, dpos);
    ops->buf_free(be, dbt), ops->buf_free(be, dctx), ops->buf_free(be, dout);
    free(ctx), free(nnew), free(perm), free(bt), free(slots), free(k), free(v), free(hcache), free(tseq), free(tpos);
    free(q), free(ref);
}

/* fp8 (e4m3 / e5m2) caches on the fa2 kernel: random finite fp8 bytes in the written
 * slots (NaN bytes elsewhere), per-layer scales 0.5 (K) and 2 (V) given to
 * kcuda_paged_attention_scaled; the reference is kcpu over the decoded cache times the
 * scales (f32).  Sequence 0: T tokens after ctx0; then n_dec decode tokens.  The old
 * path (f32 SIMT kernel for fp8) runs too. */
static void pf_fp8_case(int n_heads, int n_kv, int hd, int bs, bool e5m2, int T0, int ctx0, int n_dec)
{
    const int L = 2, layer = 1, S = 1 + n_dec;
    const float k_scale = 0.5f, v_scale = 2.0f;
    int32_t *ctx = malloc(sizeof(int32_t) * S);
    int max_ctx = 0;
    int64_t T = 0;
    for (int s = 0; s < S; s++) {
        ctx[s] = s == 0 ? ctx0 + T0 : 1 + irand(500);
        max_ctx = ctx[s] > max_ctx ? ctx[s] : max_ctx;
        T += s == 0 ? T0 : 1;
    }
    const int mbps = (max_ctx + bs - 1) / bs + 1;
    const int64_t n_blocks = (int64_t)S * mbps + 2;
    kcpu_kv_layout_t lay8, lay32;
    PD_CHECK_STATUS(kcuda_kv_layout_init(&lay8, e5m2 ? KCUDA_KV_FP8_E5M2 : KCUDA_KV_FP8_E4M3, L, bs, n_kv, hd, n_blocks),
                    PD_OK);
    PD_CHECK_STATUS(kcpu_kv_layout_init(&lay32, KCPU_DTYPE_F32, L, bs, n_kv, hd, n_blocks), PD_OK);
    const int64_t n_elems = (int64_t)(lay8.block_bytes / lay8.elem_bytes) * n_blocks;
    const int64_t QW = (int64_t)n_heads * hd;
    int32_t *bt = malloc(sizeof(int32_t) * S * mbps);
    for (int i = 0; i < S * mbps; i++)
        bt[i] = (int32_t)((i * 7 + 3) % n_blocks); /* n_blocks >= S * mbps + 2, 7 coprime unless it divides */
    if (n_blocks % 7 == 0)
        for (int i = 0; i < S * mbps; i++)
            bt[i] = (int32_t)(n_blocks - 1 - i);
    uint8_t *c8 = malloc((size_t)n_elems);
    float *c32 = malloc(sizeof(float) * n_elems);
    memset(c8, 0x7f, (size_t)n_elems); /* NaN in both formats: never read */
    const int64_t bel = (int64_t)(lay8.block_bytes / lay8.elem_bytes);
    for (int s = 0; s < S; s++)
        for (int pos = 0; pos < ctx[s]; pos++)
            for (int kv = 0; kv < 2; kv++) {
                const int64_t base = (int64_t)bt[s * mbps + pos / bs] * bel + (int64_t)layer * lay8.layer_stride +
                                     kv * lay8.kv_stride + (int64_t)(pos % bs) * lay8.token_stride;
                for (int64_t i = 0; i < (int64_t)n_kv * hd; i++) {
                    frand();
                    c8[base + i] = (uint8_t)((rng >> 24) & 0xbf); /* bit 6 clear: finite, |x| < 2 (e4m3) */
                }
            }
    for (int64_t i = 0; i < n_elems; i++) {
        const int64_t o = (i % bel) % lay8.layer_stride;
        c32[i] = fp8_decode(c8[i], e5m2) * (o < lay8.kv_stride ? k_scale : v_scale);
    }
    int32_t *tseq = malloc(sizeof(int32_t) * T), *tpos = malloc(sizeof(int32_t) * T);
    int64_t t = 0;
    for (int s = 0; s < S; s++)
        for (int i = 0; i < (s == 0 ? T0 : 1); i++, t++) {
            tseq[t] = s;
            tpos[t] = s == 0 ? ctx0 + i : ctx[s] - 1;
        }
    float *q = rand_vec((size_t)T * QW, 1.0f), *ref = malloc((size_t)T * QW * 4);
    void *dcache = up(c8, (size_t)n_elems), *dq = up(q, (size_t)T * QW * 4), *dseq = up(tseq, T * 4),
         *dpos = up(tpos, T * 4), *dbt = up(bt, (size_t)S * mbps * 4), *dctx = up(ctx, S * 4);
    float *dout = poisoned((size_t)T * QW * 4);
    kcpu_attn_params_t p = {.n_tokens = T, .q = q, .q_stride = QW, .out = ref, .out_stride = QW, .tok_seq = tseq,
                            .tok_pos = tpos, .n_seqs = S, .block_tables = bt, .max_blocks_per_seq = mbps,
                            .context_lens = ctx, .n_heads = n_heads, .n_kv_heads = n_kv, .head_dim = hd,
                            .scale = 1.0f / sqrtf((float)hd), .causal = true, .sliding_window = 0,
                            .layer = layer, .cache_base = c32, .layout = &lay32};
    PD_CHECK_STATUS(kcpu_paged_attention(pf_pool, &p), PD_OK);
    kcpu_attn_params_t pd = p;
    pd.q = dq, pd.out = dout, pd.tok_seq = dseq, pd.tok_pos = dpos, pd.block_tables = dbt, pd.context_lens = dctx;
    pd.cache_base = dcache, pd.layout = &lay8;
    double worst[2] = {0, 0};
    for (int vi = 0; vi < 2; vi++) {
        kcuda_attn_set_prefill(vi == 0 ? KCUDA_ATTN_PREFILL_OLD : KCUDA_ATTN_PREFILL_FA2, 4);
        PD_CHECK(kcuda_attn_uses_prefill_kernel(&pd, 132, true, NULL) == (vi == 1 && T > S));
        const size_t need = kcuda_attn_workspace_bytes(&pd, 132, true);
        void *ws = need ? poisoned(need) : NULL;
        ops->memset(be, dout, 0xff, (size_t)T * QW * 4);
        PD_CHECK_STATUS(ops->synchronize(be), PD_OK);
        PD_CHECK_STATUS(kcuda_paged_attention_scaled(&pd, k_scale, v_scale, ws, need, 132, true, NULL, NULL), PD_OK);
        PD_CHECK_STATUS(kcuda_stream_sync(NULL), PD_OK);
        float *got = down(dout, (size_t)T * QW * 4);
        char what[160];
        snprintf(what, sizeof(what), "prefill %s %s h%d/%d d%d bs%d T%d ctx0 %d +%d dec", vi ? "fa2" : "old",
                 e5m2 ? "e5m2" : "e4m3", n_heads, n_kv, hd, bs, T0, ctx0, n_dec);
        const double before = worst_g;
        worst_g = 0;
        PD_CHECK_EQ_INT(cmp(what, got, ref, (size_t)(T * QW), 2e-2), 0);
        worst[vi] = worst_g;
        worst_g = before > worst_g ? before : worst_g;
        if (worst[vi] > pf_worst[vi])
            pf_worst[vi] = worst[vi];
        free(got);
        if (ws)
            ops->buf_free(be, ws);
    }
    kcuda_attn_set_prefill(KCUDA_ATTN_PREFILL_AUTO, 0);
    printf("  h%2d/%d d%3d bs%3d %s T%5d ctx0 %3d +%d dec: worst old(simt) %.1e fa2 %.1e\n", n_heads, n_kv, hd, bs,
           e5m2 ? "e5m2" : "e4m3", T0, ctx0, n_dec, worst[0], worst[1]);
    fflush(stdout);
    ops->buf_free(be, dcache), ops->buf_free(be, dq), ops->buf_free(be, dseq), ops->buf_free(be, dpos);
    ops->buf_free(be, dbt), ops->buf_free(be, dctx), ops->buf_free(be, dout);
    free(ctx), free(bt), free(c8), free(c32), free(tseq), free(tpos), free(q), free(ref);
}

PD_TEST(test_prefill_attention)
{
    /* heads/kv heads/head dim: GQA 1, 4 and 8 at d64 and d128, SmolLM2's 9/3 d64 */
    static const int shapes[][3] = {{4, 4, 64}, {8, 2, 128}, {16, 2, 64}, {8, 8, 128}, {8, 2, 64}, {16, 2, 128}, {9, 3, 64}};
    static const int Ts[] = {1, 15, 16, 17, 63, 64, 65, 200, 1000};
    static const int ctx0s[] = {0, 37, 500};
    static const int bss[] = {16, 32, 128};
    /* bf16 GEMMs: the backend allows reduced-precision attention (the tensor-core kernels) */
    PD_CHECK_STATUS(eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_BF16), PD_OK);
    if (kcpu_pool_create(8, &pf_pool) != PD_OK)
        pf_pool = NULL;
    int n = 0;
    for (int ti = 0; ti < 9; ti++)
        for (int ci = 0; ci < 3; ci++, n++) {
            const int *sh = shapes[n % 7];
            pf_case_t c = {.n_heads = sh[0], .n_kv = sh[1], .hd = sh[2], .bs = bss[(n / 7 + n) % 3],
                           .window = n % 5 == 3 ? 37 : (n % 11 == 7 ? 300 : 0), .T = Ts[ti], .ctx0 = ctx0s[ci],
                           .n_dec = 0, .cache = n % 3 == 1 ? KCPU_DTYPE_F32 : KCPU_DTYPE_F16};
            if (c.T == 1000 && c.n_heads > 8) { /* keep the host reference quick */
                c.n_heads = 8;
                c.n_kv = 2;
            }
            pf_case(&c);
        }
    /* two and three sequences in one batch: a prefill chunk and decode tokens */
    static const pf_case_t mixed[] = {
        {.n_heads = 8, .n_kv = 2, .hd = 128, .bs = 16, .window = 0, .T = 40, .ctx0 = 0, .n_dec = 1, .cache = KCPU_DTYPE_F16},
        {.n_heads = 8, .n_kv = 2, .hd = 128, .bs = 32, .window = 0, .T = 100, .ctx0 = 37, .n_dec = 2, .cache = KCPU_DTYPE_F16},
        {.n_heads = 16, .n_kv = 2, .hd = 64, .bs = 128, .window = 0, .T = 7, .ctx0 = 500, .n_dec = 2, .cache = KCPU_DTYPE_F32},
        {.n_heads = 4, .n_kv = 4, .hd = 64, .bs = 16, .window = 50, .T = 130, .ctx0 = 20, .n_dec = 2, .cache = KCPU_DTYPE_F16},
        {.n_heads = 9, .n_kv = 3, .hd = 64, .bs = 32, .window = 0, .T = 33, .ctx0 = 0, .n_dec = 1, .cache = KCPU_DTYPE_F16},
        {.n_heads = 32, .n_kv = 8, .hd = 128, .bs = 16, .window = 0, .T = 300, .ctx0 = 0, .n_dec = 0, .cache = KCPU_DTYPE_F16},
        /* two prefill chunks (the second starting inside a CTA), with and without decode tokens */
        {.n_heads = 8, .n_kv = 2, .hd = 128, .bs = 16, .window = 0, .T = 37, .ctx0 = 0, .n_dec = 0, .cache = KCPU_DTYPE_F16, .T2 = 50},
        {.n_heads = 9, .n_kv = 3, .hd = 64, .bs = 32, .window = 0, .T = 70, .ctx0 = 100, .n_dec = 2, .cache = KCPU_DTYPE_F32, .T2 = 25},
        {.n_heads = 16, .n_kv = 2, .hd = 128, .bs = 128, .window = 40, .T = 5, .ctx0 = 300, .n_dec = 1, .cache = KCPU_DTYPE_F16, .T2 = 3},
    };
    for (size_t i = 0; i < sizeof(mixed) / sizeof(mixed[0]); i++, n++)
        pf_case(&mixed[i]);
    /* fp8 caches (fa2 converts them exactly to f16 and folds the scales into q and out) */
    pf_fp8_case(8, 2, 128, 16, false, 200, 0, 0);
    pf_fp8_case(8, 2, 128, 32, true, 65, 37, 1);
    pf_fp8_case(9, 3, 64, 16, false, 17, 500, 2);
    pf_fp8_case(4, 4, 64, 128, true, 100, 0, 0);
    n += 4;
    printf("  %d prefill attention cases (%d fa2 runs), worst relative error: old %.2e, fa2 %.2e, fa2 8 warps %.2e\n",
           n, pf_routed, pf_worst[0], pf_worst[1], pf_worst[2]);
    if (pf_pool != NULL)
        kcpu_pool_destroy(pf_pool);
    pf_pool = NULL;
}

/* ---- fused decode ops (norm_matmul, matmul_add, rope_kv_write) against the separate
 * kcpu ops.  bf16/f16 weights used as they are (no conversion): only the summation order
 * and where the norm's scale is applied differ (1e-4).  Each case runs with PDL on and
 * off; x is checked unchanged; rows 1..8 (the norm declines above KCUDA_GEMV_NORM_MAX_M
 * rows); ldy > N; a K the GEMV does not take (not a multiple of 8) must be declined
 * (PD_ERR_UNSUPPORTED, nothing written). ---- */

static void norm_matmul_case(kcpu_dtype_t wt, int64_t M, int64_t K, int64_t N, int glu, bool bias)
{
    size_t rb = (size_t)K * 2;
    const int64_t NY = glu ? N / 2 : N, ldy = NY + 3;
    float *x = rand_vec((size_t)(M * K), 2.0f), *nw = rand_vec((size_t)K, 1.0f), *wf = rand_vec((size_t)(N * K), 0.1f);
    float *b = bias ? rand_vec((size_t)N, 0.5f) : NULL;
    float *h = malloc(sizeof(float) * M * K), *mm = malloc(sizeof(float) * M * N), *ref = malloc(sizeof(float) * M * ldy);
    uint8_t *w = malloc(rb * (size_t)N);
    for (int64_t r = 0; r < N; r++)
        kcpu_quant_row(wt, wf + r * K, w + (size_t)r * rb, K);
    kcpu_rmsnorm(NULL, x, nw, h, M, K, 1e-5f);
    PD_CHECK_STATUS(kcpu_matmul(NULL, h, M, K, K, w, wt, N, b, mm, N, KCPU_MM_EXACT), PD_OK);
    for (int64_t m = 0; m < M; m++) {
        if (glu == ENG_GLU_SILU)
            kcpu_silu_and_mul(NULL, mm + m * N, N, mm + m * N + NY, N, ref + m * ldy, 1, NY);
        else if (glu)
            kcpu_gelu_and_mul(NULL, mm + m * N, N, mm + m * N + NY, N, ref + m * ldy, 1, NY, glu == ENG_GLU_GELU_TANH);
        else
            memcpy(ref + m * ldy, mm + m * N, sizeof(float) * N);
    }
    void *dx = up(x, sizeof(float) * M * K), *dnw = up(nw, sizeof(float) * K), *dw = up(w, rb * N);
    void *db = b ? up(b, sizeof(float) * N) : NULL;
    float *dy = poisoned(sizeof(float) * M * ldy);
    PD_CHECK_STATUS(eng_backend_cuda_set_weight_dtype(be, wt), PD_OK);
    for (int pdl = 0; pdl < 2; pdl++) {
        kcuda_gemv_set_pdl(pdl);
        ops->memset(be, dy, 0xff, sizeof(float) * M * ldy);
        if (M > KCUDA_GEMV_NORM_MAX_M) { /* declined (the norm kernel runs instead), nothing written */
            PD_CHECK_STATUS(ops->norm_matmul(be, dx, M, K, dnw, 1e-5f, dw, wt, N, db, glu, dy, ldy),
                            PD_ERR_UNSUPPORTED);
            float *g = down(dy, sizeof(float) * M * ldy);
            PD_CHECK(isnan(g[0]) && isnan(g[M * ldy - 1]));
            free(g);
            continue;
        }
        PD_CHECK_STATUS(ops->norm_matmul(be, dx, M, K, dnw, 1e-5f, dw, wt, N, db, glu, dy, ldy), PD_OK);
        float *got = down(dy, sizeof(float) * M * ldy), *gx = down(dx, sizeof(float) * M * K);
        char what[112];
        snprintf(what, sizeof(what), "norm_matmul %s glu %d M%lld K%lld N%lld%s pdl %d", kcpu_dtype_name(wt), glu,
                 (long long)M, (long long)K, (long long)N, bias ? " bias" : "", pdl);
        for (int64_t m = 0; m < M; m++)
            PD_CHECK_EQ_INT(cmp(what, got + m * ldy, ref + m * ldy, (size_t)NY, 1e-4), 0);
        PD_CHECK(memcmp(gx, x, sizeof(float) * M * K) == 0);
        free(got), free(gx);
    }
    kcuda_gemv_set_pdl(-1);
    ops->buf_free(be, dx), ops->buf_free(be, dnw), ops->buf_free(be, dw), ops->buf_free(be, db);
    ops->buf_free(be, dy);
    free(x), free(nw), free(wf), free(b), free(h), free(mm), free(ref), free(w);
}

PD_TEST(test_fused_norm_matmul)
{
    PD_CHECK(ops->norm_matmul != NULL && ops->matmul_add != NULL && ops->rope_kv_write != NULL);
    if (ops->norm_matmul == NULL)
        return;
    /* 6144 / 28672-like wide, 1024 (4 warps a column), odd N, K = 72 (fewer chunks than
     * the prefetch), 4096 (the 8B shape) */
    static const int64_t shapes[][2] = {{4096, 6144}, {4096, 1024}, {576, 1538}, {72, 258}, {1024, 2050}, {4096, 130}};
    for (int64_t M = 1; M <= 8; M++)
        for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
            if (M > 2 && M != 5 && M != 8 && i > 1)
                continue; /* every M on the 8B shapes, a few on the rest */
            kcpu_dtype_t wt = (M + i) % 3 == 0 ? KCPU_DTYPE_F16 : KCPU_DTYPE_BF16;
            /* odd N for the plain epilogue on every other shape (GLU needs N even) */
            norm_matmul_case(wt, M, shapes[i][0], shapes[i][1] - (i % 2 == 0), ENG_GLU_NONE, i % 2 == 1);
            norm_matmul_case(wt, M, shapes[i][0], shapes[i][1], ENG_GLU_SILU, false);
        }
    norm_matmul_case(KCPU_DTYPE_BF16, 3, 576, 1538, ENG_GLU_GELU, false);
    norm_matmul_case(KCPU_DTYPE_BF16, 2, 576, 1538, ENG_GLU_GELU_TANH, false);
    norm_matmul_case(KCPU_DTYPE_BF16, 1, 4096, 2 * 14336, ENG_GLU_SILU, false);
    /* declined: K not a multiple of 8, more than 8 rows; nothing written */
    {
        float *dy = poisoned(64 * 64 * 4), *dx = poisoned(16 * 67 * 4), *dw = poisoned(64 * 67 * 4),
              *dnw = poisoned(67 * 4);
        PD_CHECK_STATUS(eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_BF16), PD_OK);
        PD_CHECK_STATUS(ops->norm_matmul(be, dx, 1, 67, dnw, 1e-5f, dw, KCPU_DTYPE_F32, 64, NULL, 0, dy, 64),
                        PD_ERR_UNSUPPORTED);
        PD_CHECK_STATUS(ops->norm_matmul(be, dx, 9, 64, dnw, 1e-5f, dw, KCPU_DTYPE_F32, 64, NULL, 0, dy, 64),
                        PD_ERR_UNSUPPORTED);
        PD_CHECK_STATUS(ops->matmul_add(be, dx, 9, 64, 64, dw, KCPU_DTYPE_F32, 64, NULL, dy, 64), PD_ERR_UNSUPPORTED);
        PD_CHECK_STATUS(ops->synchronize(be), PD_OK);
        ops->buf_free(be, dy), ops->buf_free(be, dx), ops->buf_free(be, dw), ops->buf_free(be, dnw);
    }
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_F32);
}

static void matmul_add_case(kcpu_dtype_t wt, int64_t M, int64_t K, int64_t N, bool bias)
{
    size_t rb = (size_t)K * 2;
    const int64_t ldx = K + 8, ldy = N + 5;
    float *x = rand_vec((size_t)(M * ldx), 1.0f), *wf = rand_vec((size_t)(N * K), 0.1f);
    float *y0 = rand_vec((size_t)(M * ldy), 3.0f), *b = bias ? rand_vec((size_t)N, 0.5f) : NULL;
    float *mm = malloc(sizeof(float) * M * N), *ref = malloc(sizeof(float) * M * ldy);
    uint8_t *w = malloc(rb * (size_t)N);
    for (int64_t r = 0; r < N; r++)
        kcpu_quant_row(wt, wf + r * K, w + (size_t)r * rb, K);
    PD_CHECK_STATUS(kcpu_matmul(NULL, x, M, K, ldx, w, wt, N, b, mm, N, KCPU_MM_EXACT), PD_OK);
    memcpy(ref, y0, sizeof(float) * M * ldy);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++)
            ref[m * ldy + n] = y0[m * ldy + n] + mm[m * N + n];
    void *dx = up(x, sizeof(float) * M * ldx), *dw = up(w, rb * N), *db = b ? up(b, sizeof(float) * N) : NULL;
    float *dy = poisoned(sizeof(float) * M * ldy);
    PD_CHECK_STATUS(eng_backend_cuda_set_weight_dtype(be, wt), PD_OK);
    for (int pdl = 0; pdl < 2; pdl++) {
        kcuda_gemv_set_pdl(pdl);
        PD_CHECK_STATUS(ops->memcpy_h2d(be, dy, y0, sizeof(float) * M * ldy), PD_OK);
        PD_CHECK_STATUS(ops->matmul_add(be, dx, M, K, ldx, dw, wt, N, db, dy, ldy), PD_OK);
        float *got = down(dy, sizeof(float) * M * ldy);
        char what[96];
        snprintf(what, sizeof(what), "matmul_add %s M%lld K%lld N%lld%s pdl %d", kcpu_dtype_name(wt), (long long)M,
                 (long long)K, (long long)N, bias ? " bias" : "", pdl);
        PD_CHECK_EQ_INT(cmp(what, got, ref, (size_t)(M * ldy), 1e-4), 0); /* the gaps between rows untouched too */
        free(got);
    }
    kcuda_gemv_set_pdl(-1);
    ops->buf_free(be, dx), ops->buf_free(be, dw), ops->buf_free(be, db), ops->buf_free(be, dy);
    free(x), free(wf), free(y0), free(b), free(mm), free(ref), free(w);
}

PD_TEST(test_fused_matmul_add)
{
    if (ops->matmul_add == NULL)
        return;
    static const int64_t shapes[][2] = {{4096, 4096}, {14336, 4096}, {4096, 1024}, {72, 258}, {576, 577}};
    for (int64_t M = 1; M <= 8; M++)
        for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
            if (M <= 2 || M == 5 || M == 8 || i == 0)
                matmul_add_case((M + i) % 3 == 0 ? KCPU_DTYPE_F16 : KCPU_DTYPE_BF16, M, shapes[i][0], shapes[i][1],
                                (M + i) % 2 == 1);
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_F32);
}

/* rope_kv_write against kcpu_rope + kcpu_kv_write (F32 / F16 caches through the backend
 * op) and, for the fp8 caches, against the separate CUDA kernels (kcuda_rope +
 * kcuda_kv_write_scaled; stored bytes equal, a few one-step rounding differences
 * allowed).  Slots include -1 (padding); a partial rotary dim and both styles.  aligned:
 * the forward's fused q | k | v rows (16-byte aligned: the vector path of the table
 * kernel where head_dim and rot/2 allow it), else rows of an odd stride (its scalar path). */
static void rope_kv_case(int nh, int nkv, int hd, int rot, int style, kcpu_dtype_t cdt, int64_t T, bool aligned)
{
    const int bs = 16, n_layers = 2, layer = 1;
    int64_t n_blocks = T > 9 * bs ? T / bs + 2 : 9; /* room for every token's slot */
    if (n_blocks % 7 == 0)
        n_blocks++; /* slot t * 7 % (n_blocks * bs) must differ for every t */
    const int64_t W = (int64_t)nkv * hd;
    const int64_t qs = (int64_t)nh * hd + (aligned ? 2 * W : 3 * W + 5), ks = qs, vs = qs; /* one fused row */
    kcpu_kv_layout_t L;
    float inv[512], af = 1.0f;
    kcpu_rope_scaling_t sc = {.type = KCPU_ROPE_SCALING_NONE};
    int32_t *pos = malloc(sizeof(int32_t) * T);
    int64_t *slots = malloc(sizeof(int64_t) * T);
    bool fp8 = cdt == KCUDA_KV_FP8_E4M3 || cdt == KCUDA_KV_FP8_E5M2;

    PD_CHECK_STATUS(kcuda_kv_layout_init(&L, cdt, n_layers, bs, nkv, hd, n_blocks), PD_OK);
    PD_CHECK_STATUS(kcpu_rope_inv_freq(10000.0f, rot, &sc, 0, inv, &af), PD_OK);
    for (int64_t t = 0; t < T; t++) {
        pos[t] = t < 3 ? (int32_t)t : irand(100000);
        slots[t] = t % 5 == 4 ? -1 : (int64_t)(t * 7 % (n_blocks * bs));
    }
    float *row = rand_vec((size_t)(T * qs), 1.5f);
    size_t cb = L.block_bytes * (size_t)n_blocks;
    uint8_t *cache0 = malloc(cb);
    memset(cache0, 0, cb); /* slots not written must stay zero */
    void *drow = up(row, sizeof(float) * T * qs), *dpos = up(pos, sizeof(int32_t) * T);
    void *dslots = up(slots, sizeof(int64_t) * T), *dinv = up(inv, sizeof(float) * rot / 2);
    void *dcache = up(cache0, cb);
    float *dq = drow, *dk = (float *)drow + (int64_t)nh * hd, *dv = dk + W;
    char what[112];
    snprintf(what, sizeof(what), "rope_kv_write %d/%d hd %d rot %d style %d cache %d T %lld%s", nh, nkv, hd, rot,
             style, (int)cdt, (long long)T, aligned ? " aligned" : "");
    if (!fp8) {
        float *rq = row, *rk = row + (int64_t)nh * hd, *rv = rk + W;
        PD_CHECK_STATUS(kcpu_rope(NULL, rq, qs, rk, ks, pos, T, nh, nkv, hd, rot, inv, af, (kcpu_rope_style_t)style),
                        PD_OK);
        PD_CHECK_STATUS(kcpu_kv_write(&L, cache0, layer, slots, T, rk, ks, rv, vs), PD_OK);
        PD_CHECK_STATUS(ops->rope_kv_write(be, dq, qs, dk, ks, dv, vs, dpos, T, nh, rot, dinv, af,
                                           (kcpu_rope_style_t)style, &L, dcache, layer, dslots),
                        PD_OK);
        float *grow_ = down(drow, sizeof(float) * T * qs);
        uint8_t *gc = down(dcache, cb);
        PD_CHECK_EQ_INT(cmp(what, grow_, row, (size_t)(T * qs), 2e-5), 0);
        /* the cache as floats (F16 decoded), every block, so untouched bytes must match too */
        size_t ne = cb / L.elem_bytes;
        float *a = malloc(sizeof(float) * ne), *bb = malloc(sizeof(float) * ne);
        kcpu_dequant_row(cdt, gc, a, (int64_t)ne);
        kcpu_dequant_row(cdt, cache0, bb, (int64_t)ne);
        int nan_mismatch = 0;
        for (size_t i = 0; i < ne; i++) /* the byte pattern decodes to NaNs too: compare those by bits */
            if (isnan(bb[i]) || isnan(a[i])) {
                nan_mismatch += memcmp(gc + i * L.elem_bytes, cache0 + i * L.elem_bytes, L.elem_bytes) != 0;
                a[i] = bb[i] = 0.0f;
            }
        PD_CHECK_EQ_INT(nan_mismatch, 0);
        PD_CHECK_EQ_INT(cmp(what, a, bb, ne, cdt == KCPU_DTYPE_F16 ? 1e-3 : 2e-5), 0);
        free(grow_), free(gc), free(a), free(bb);
    } else {
        /* the separate kernels on a copy, on the default stream */
        void *drow2 = up(row, sizeof(float) * T * qs), *dcache2 = up(cache0, cb);
        float *dq2 = drow2, *dk2 = (float *)drow2 + (int64_t)nh * hd, *dv2 = dk2 + W;
        PD_CHECK_STATUS(ops->synchronize(be), PD_OK);
        PD_CHECK_STATUS(kcuda_rope(dq2, qs, dk2, ks, dpos, T, nh, nkv, hd, rot, dinv, af, (kcpu_rope_style_t)style,
                                   NULL),
                        PD_OK);
        PD_CHECK_STATUS(kcuda_kv_write_scaled(&L, dcache2, layer, dslots, T, dk2, ks, dv2, vs, 0.03f, 0.02f, NULL, NULL),
                        PD_OK);
        PD_CHECK_STATUS(kcuda_rope_kv_write(dq, qs, dk, ks, dv, vs, dpos, T, nh, rot, dinv, af,
                                            (kcpu_rope_style_t)style, &L, dcache, layer, dslots, 0.03f, 0.02f, NULL,
                                            NULL),
                        PD_OK);
        PD_CHECK_STATUS(kcuda_stream_sync(NULL), PD_OK);
        float *g1 = down(drow, sizeof(float) * T * qs), *g2 = down(drow2, sizeof(float) * T * qs);
        uint8_t *c1 = down(dcache, cb), *c2 = down(dcache2, cb);
        PD_CHECK_EQ_INT(cmp(what, g1, g2, (size_t)(T * qs), 1e-6), 0);
        size_t diff = 0, far = 0;
        for (size_t i = 0; i < cb; i++) {
            diff += c1[i] != c2[i];
            far += abs((int)(c1[i] & 0x7f) - (int)(c2[i] & 0x7f)) > 1 ||
                   ((c1[i] & 0x80) != (c2[i] & 0x80) && ((c1[i] | c2[i]) & 0x7f) > 1); /* +-0 and the tiniest */
        }
        PD_CHECK(far == 0);
        PD_CHECK(diff * 1000 <= cb);
        free(g1), free(g2), free(c1), free(c2);
        ops->buf_free(be, drow2), ops->buf_free(be, dcache2);
    }
    ops->buf_free(be, drow), ops->buf_free(be, dpos), ops->buf_free(be, dslots), ops->buf_free(be, dinv);
    ops->buf_free(be, dcache);
    free(pos), free(slots), free(row), free(cache0);
}

/* Shapes for every path of kcuda_kv.cu's RoPE + KV write: the table kernel's vector path
 * (aligned rows, head_dim % 4 == 0, rot/2 % 4 == 0 neox / % 2 == 0 gpt-j; 1 or 2
 * rounds of units a thread), its scalar path (odd row strides, rot/2 = 10 neox, rot/2 =
 * 9, head_dim 6), the old kernel (rot/2 > 256); T = 1 and 7 (8 CTAs a token), 37 (2),
 * 2048 (1: the 8B prefill, every cache type). */
PD_TEST(test_rope_kv_write)
{
    static const int cfg[][4] = {{9, 3, 64, 64},  {32, 8, 128, 128}, {4, 2, 64, 32}, {6, 6, 80, 80},
                                 {4, 2, 64, 20},  {5, 1, 36, 18},    {3, 1, 6, 6},   {2, 1, 520, 520}};
    static const kcpu_dtype_t cdts[] = {KCPU_DTYPE_F32, KCPU_DTYPE_F16, KCUDA_KV_FP8_E4M3, KCUDA_KV_FP8_E5M2};
    static const int64_t Ts[] = {1, 7, 37};
    if (ops->rope_kv_write == NULL)
        return;
    for (size_t c = 0; c < sizeof(cfg) / sizeof(cfg[0]); c++)
        for (int style = 0; style < 2; style++)
            for (size_t d = 0; d < 4; d++) {
                rope_kv_case(cfg[c][0], cfg[c][1], cfg[c][2], cfg[c][3], style, cdts[d], (c + d) % 2 ? 1 : 37, false);
                rope_kv_case(cfg[c][0], cfg[c][1], cfg[c][2], cfg[c][3], style, cdts[d], Ts[(c + d + style) % 3],
                             true);
            }
    for (int style = 0; style < 2; style++)
        for (size_t d = 0; d < 4; d++)
            rope_kv_case(32, 8, 128, 128, style, cdts[d], 2048, true);
}

/* The fused decode layer's chain of GEMVs on the GPU as the forward queues it (PDL
 * edges between them: each triggers its dependents after its weight loop), against the
 * separate kcpu ops: q = norm(x) Wq^T; x += a Wo^T; act = silu|mul(norm(x) Wgu^T);
 * x += act Wd^T; q2 = norm(x) Wq^T.  A fresh x every round, so a GEMV reading x or act
 * before its producer finished would see the previous round's values. */
static void fused_chain_case(int64_t M, int64_t D, int64_t NQ, int64_t I, int64_t KO, int rounds)
{
    const kcpu_dtype_t wt = KCPU_DTYPE_BF16;
    float *wqf = rand_vec((size_t)(NQ * D), 0.1f), *wof = rand_vec((size_t)(D * KO), 0.1f);
    float *wguf = rand_vec((size_t)(2 * I * D), 0.1f), *wdf = rand_vec((size_t)(D * I), 0.05f);
    float *nw1 = rand_vec((size_t)D, 1.0f), *nw2 = rand_vec((size_t)D, 1.0f);
    uint16_t *wq = malloc(sizeof(uint16_t) * NQ * D), *wo = malloc(sizeof(uint16_t) * D * KO);
    uint16_t *wgu = malloc(sizeof(uint16_t) * 2 * I * D), *wd = malloc(sizeof(uint16_t) * D * I);
    kcpu_quant_row(wt, wqf, wq, NQ * D);
    kcpu_quant_row(wt, wof, wo, D * KO);
    kcpu_quant_row(wt, wguf, wgu, 2 * I * D);
    kcpu_quant_row(wt, wdf, wd, D * I);
    void *dwq = up(wq, 2 * NQ * D), *dwo = up(wo, 2 * D * KO), *dwgu = up(wgu, 4 * I * D), *dwd = up(wd, 2 * D * I);
    void *dnw1 = up(nw1, 4 * D), *dnw2 = up(nw2, 4 * D);
    float *dx = poisoned(4 * M * D), *da = poisoned(4 * M * KO), *dq = poisoned(4 * M * NQ);
    float *dq2 = poisoned(4 * M * NQ), *dact = poisoned(4 * M * I);
    float *h = malloc(4 * M * (D > I ? D : I)), *t = malloc(4 * M * 2 * I), *q = malloc(4 * M * NQ);
    float *q2 = malloc(4 * M * NQ), *act = malloc(4 * M * I);
    int bad = 0;
    for (int r = 0; r < rounds; r++) {
        float *x = rand_vec((size_t)(M * D), 2.0f), *a = rand_vec((size_t)(M * KO), 1.0f);
        PD_CHECK_STATUS(ops->memcpy_h2d(be, dx, x, 4 * M * D), PD_OK);
        PD_CHECK_STATUS(ops->memcpy_h2d(be, da, a, 4 * M * KO), PD_OK);
        /* the GPU chain, queued back to back */
        PD_CHECK_STATUS(ops->norm_matmul(be, dx, M, D, dnw1, 1e-5f, dwq, wt, NQ, NULL, ENG_GLU_NONE, dq, NQ), PD_OK);
        PD_CHECK_STATUS(ops->matmul_add(be, da, M, KO, KO, dwo, wt, D, NULL, dx, D), PD_OK);
        PD_CHECK_STATUS(ops->norm_matmul(be, dx, M, D, dnw2, 1e-5f, dwgu, wt, 2 * I, NULL, ENG_GLU_SILU, dact, I),
                        PD_OK);
        PD_CHECK_STATUS(ops->matmul_add(be, dact, M, I, I, dwd, wt, D, NULL, dx, D), PD_OK);
        PD_CHECK_STATUS(ops->norm_matmul(be, dx, M, D, dnw1, 1e-5f, dwq, wt, NQ, NULL, ENG_GLU_NONE, dq2, NQ), PD_OK);
        /* the separate ops on the CPU */
        kcpu_rmsnorm(NULL, x, nw1, h, M, D, 1e-5f);
        kcpu_matmul(NULL, h, M, D, D, wq, wt, NQ, NULL, q, NQ, KCPU_MM_EXACT);
        kcpu_matmul(NULL, a, M, KO, KO, wo, wt, D, NULL, t, D, KCPU_MM_EXACT);
        kcpu_add_rmsnorm(NULL, x, t, nw2, h, M, D, 1e-5f);
        kcpu_matmul(NULL, h, M, D, D, wgu, wt, 2 * I, NULL, t, 2 * I, KCPU_MM_EXACT);
        kcpu_silu_and_mul(NULL, t, 2 * I, t + I, 2 * I, act, M, I);
        kcpu_matmul(NULL, act, M, I, I, wd, wt, D, NULL, t, D, KCPU_MM_EXACT);
        kcpu_add_rmsnorm(NULL, x, t, nw1, h, M, D, 1e-5f);
        kcpu_matmul(NULL, h, M, D, D, wq, wt, NQ, NULL, q2, NQ, KCPU_MM_EXACT);
        float *gq = down(dq, 4 * M * NQ), *gact = down(dact, 4 * M * I), *gx = down(dx, 4 * M * D);
        float *gq2 = down(dq2, 4 * M * NQ);
        char what[80];
        snprintf(what, sizeof(what), "fused chain M%lld round %d", (long long)M, r);
        bad += cmp(what, gq, q, (size_t)(M * NQ), 1e-4) != 0;
        bad += cmp(what, gact, act, (size_t)(M * I), 1e-4) != 0;
        bad += cmp(what, gx, x, (size_t)(M * D), 1e-4) != 0;
        bad += cmp(what, gq2, q2, (size_t)(M * NQ), 2e-4) != 0;
        free(gq), free(gact), free(gx), free(gq2), free(x), free(a);
    }
    PD_CHECK_EQ_INT(bad, 0);
    ops->buf_free(be, dwq), ops->buf_free(be, dwo), ops->buf_free(be, dwgu), ops->buf_free(be, dwd);
    ops->buf_free(be, dnw1), ops->buf_free(be, dnw2), ops->buf_free(be, dx), ops->buf_free(be, da);
    ops->buf_free(be, dq), ops->buf_free(be, dq2), ops->buf_free(be, dact);
    free(wqf), free(wof), free(wguf), free(wdf), free(nw1), free(nw2), free(wq), free(wo), free(wgu), free(wd);
    free(h), free(t), free(q), free(q2), free(act);
}

PD_TEST(test_fused_chain)
{
    if (ops->norm_matmul == NULL || ops->matmul_add == NULL)
        return;
    PD_CHECK_STATUS(eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_BF16), PD_OK);
    for (int pdl = 1; pdl >= 0; pdl--) {
        kcuda_gemv_set_pdl(pdl);
        if (pdl) /* the 8B layer (350 MB of weights: once) */
            fused_chain_case(1, 4096, 6144, 14336, 4096, 3);
        fused_chain_case(3, 1024, 1536, 1536, 1024, 3);
        fused_chain_case(2, 576, 960, 1536, 576, 3);     /* SmolLM2's layer */
    }
    kcuda_gemv_set_pdl(-1);
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_F32);
}

int main(void)
{
    ops = eng_backend_get("cuda");
    PD_CHECK(ops != NULL);
    if (ops == NULL)
        return PD_TEST_REPORT();
    if (ops->init(NULL, &be) != PD_OK) {
        printf("SKIP: no usable CUDA device\n");
        return 77;
    }
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_F32);
    if (getenv("PD_TEST_PREFILL_ONLY") != NULL && strcmp(getenv("PD_TEST_PREFILL_ONLY"), "1") == 0) {
        /* the prefill attention cases alone (the fa2 kernel) */
        PD_RUN(test_prefill_attention);
        ops->shutdown(be);
        return PD_TEST_REPORT();
    }
    if (getenv("PD_TEST_ATTN_TC") != NULL && strcmp(getenv("PD_TEST_ATTN_TC"), "1") == 0) {
        /* the decode attention cases alone, with every form of the tensor-core kernel */
        dec_tc_run = true;
        PD_RUN(test_decode_attention);
        ops->shutdown(be);
        return PD_TEST_REPORT();
    }
    if (getenv("PD_TEST_FUSE_ONLY") != NULL && strcmp(getenv("PD_TEST_FUSE_ONLY"), "1") == 0) {
        /* the decode-fusion cases alone (A/B runs of the opt-in fused layer) */
        PD_RUN(test_gemv_pdl);
        PD_RUN(test_fused_norm_matmul);
        PD_RUN(test_fused_matmul_add);
        PD_RUN(test_rope_kv_write);
        PD_RUN(test_fused_chain);
        printf("  worst relative error over all ops: %.2e\n", worst_g);
        ops->shutdown(be);
        return PD_TEST_REPORT();
    }
    PD_RUN(test_matmul);
    PD_RUN(test_norms);
    PD_RUN(test_rmsnorm_vec);
    PD_RUN(test_rope);
    PD_RUN(test_elementwise);
    PD_RUN(test_embedding);
    PD_RUN(test_softmax_argmax);
    PD_RUN(test_argmax_decode_rows);
    PD_RUN(test_gemv_pdl);
    PD_RUN(test_fused_norm_matmul);
    PD_RUN(test_fused_matmul_add);
    PD_RUN(test_rope_kv_write);
    PD_RUN(test_fused_chain);
    PD_RUN(test_sample_rows);
    PD_RUN(test_paged_attention);
    PD_RUN(test_kv_fp8);
    PD_RUN(test_decode_attention);
    /* last: a fault in the newest kernel spoils no other test's output */
    PD_RUN(test_prefill_attention);
    printf("  worst relative error over all ops: %.2e\n", worst_g);
    ops->shutdown(be);
    return PD_TEST_REPORT();
}
