/*
 * test_cuda_fp8w.c - fp8 e4m3 weights on the CUDA backend (--quantization fp8):
 *  - kcuda_fp8w_convert (f32, bf16 and all-zero sources): work[0] = max|w| exactly,
 *    work[KCUDA_FP8_SCALE_AT] = max|w| / 448 exactly (1 for zeros), every byte equal to a host e4m3
 *    encoder's (round to nearest even, saturating; +0 / -0 taken as equal) of w / scale;
 *  - kcuda_fp8_quant_act (f32 rows with a stride, bf16 rows): the same checks;
 *  - kcuda_gemv_scaled on fp8 weights (M = 1, 3, 8; small odd-but-legal shapes (K % 16) and the
 *    8B decode shapes; every warp split): against a double-precision host GEMV over the
 *    GPU's own fp8 bytes times its scale: worst |error| / max|y| <= 1e-4 (f32 sums only);
 *    kcuda_gemv_ex on fp8 (norm + store, accumulate) the same way;
 *  - kcuda_fp8_gemm (M = 9, 64, 333, 2048; K % 16 == 0; f32 output, accumulate) over
 *    the GPU's own quantized activations and weights: worst error / max|y| <= 1e-3
 *    (f32 accumulation in cuBLASLt; the 2048-row case checks every 32nd row);
 *  - kcuda_fp8_gemm_half_out (bf16, f16) within one unit in the last place of the f32
 *    output of the same operands rounded;
 *  - the backend: matmul with fp8 weights (GEMV rows and GEMM rows, f32 and 16-bit
 *    inputs, accumulate) against a host reference that quantizes like the GPU, a
 *    weight kept 16-bit (eng_backend_cuda_keep_weight) matching the bf16 reference, and
 *    matmul_mm_out (bf16 output of the fp8 gate|up GEMM) against the host model rounded;
 *  - the engine: tiny-llama, tiny-qwen3, tiny-llama.gguf (random weights: printed, logit
 *    error bounded) and the default GGUF (env PD_MODEL_GGUF or the cache path)
 *    through eng_forward with fp8 weights against bf16 weights, prefill then 16
 *    teacher-forced decode steps, 3 sequences (decode on the GEMV; on tiny-llama also
 *    the fused decode layer's GEMVs) and 12 (decode on the fp8 GEMM inside CUDA
 *    graphs): argmax agreement and logit error printed;
 *    the GGUF must agree on >= 90% of the decode steps' argmaxes.
 * Outputs poisoned (0xff) before each run.  Exits 77 without a GPU.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "eng_backend.h"
#include "eng_backend_cuda.h"
#include "eng_forward.h"
#include "eng_model.h"
#include "kcpu.h"
#include "kcuda.h"
#include "pd_test.h"

#define CUDA_TEST_SEED 0x9e3779b97f4a7c15ull
#include "cuda_test_util.h"

static kcuda_stream_t st_g;

/* ---- host e4m3 ("fn": no infinities, 0x7f / 0xff NaN, max 448) ---- */

static float lut[256];

static float e4m3_dec(uint8_t b)
{
    int e = (b >> 3) & 15, m = b & 7;
    float v;
    if (e == 15 && m == 7)
        return NAN;
    v = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return (b & 0x80) ? -v : v;
}

/* round to nearest, ties to the even code, saturating at 448 */
static uint8_t e4m3_enc(float v)
{
    uint8_t sign = signbit(v) ? 0x80 : 0;
    double a = fabs((double)v);
    int lo = 0, hi = 126;
    if (a >= 448.0)
        return sign | 0x7e;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (lut[mid] <= a)
            lo = mid;
        else
            hi = mid - 1;
    }
    if (lo < 126) {
        double d0 = a - lut[lo], d1 = lut[lo + 1] - a;
        if (d1 < d0 || (d1 == d0 && (lo & 1)))
            lo++;
    }
    return sign | (uint8_t)lo;
}

static bool same_byte(uint8_t a, uint8_t b)
{
    return a == b || ((a & 0x7f) == 0 && (b & 0x7f) == 0);
}

/* ---- device buffers on the test's own stream ---- */

static void *dup_dev(const void *h, size_t n)
{
    void *d = NULL;
    if (kcuda_malloc(n, &d) != PD_OK)
        return NULL;
    if (kcuda_memcpy_async(d, h, n, st_g) != PD_OK || kcuda_stream_sync(st_g) != PD_OK) {
        kcuda_free(d);
        return NULL;
    }
    return d;
}

static void *dev_poison(size_t n)
{
    void *d = NULL;
    if (kcuda_malloc(n, &d) != PD_OK)
        return NULL;
    kcuda_memset_async(d, 0xff, n, st_g);
    return d;
}

static void *to_host(const void *d, size_t n)
{
    void *h = malloc(n);
    if (h && (kcuda_memcpy_async(h, d, n, st_g) != PD_OK || kcuda_stream_sync(st_g) != PD_OK)) {
        free(h);
        return NULL;
    }
    return h;
}

/* random values with a wide spread (a few large, some zeros), like real weights */
static float *spread_vec(size_t n, float scale)
{
    float *v = rand_vec(n, scale);
    for (size_t i = 0; v && i < n; i++) {
        if (i % 97 == 5)
            v[i] *= 20.0f;
        if (i % 89 == 3)
            v[i] = 0.0f;
        if (i % 211 == 7)
            v[i] *= 1e-3f;
    }
    return v;
}

/* Check work[] and bytes of a conversion of vals (n values as the GPU saw them). */
static int check_quant(const char *what, const float *vals, size_t n, const uint8_t *bytes, const float *work)
{
    float amax = 0.0f;
    for (size_t i = 0; i < n; i++)
        amax = fmaxf(amax, fabsf(vals[i]));
    const float scale = amax > 0.0f ? amax / 448.0f : 1.0f;
    size_t bad = 0, first = (size_t)-1;
    for (size_t i = 0; i < n; i++)
        if (!same_byte(bytes[i], e4m3_enc(vals[i] / scale))) {
            if (bad++ == 0)
                first = i;
        }
    printf("  %s: %zu values, max|v| %.6g (gpu %.6g), scale %.6g (gpu %.6g), %zu bytes differ", what, n, amax,
           work[0], scale, work[KCUDA_FP8_SCALE_AT], bad);
    if (bad)
        printf(" (first at %zu: v/scale %.8g gpu 0x%02x host 0x%02x)", first, vals[first] / scale, bytes[first],
               e4m3_enc(vals[first] / scale));
    printf("\n");
    PD_CHECK(work[0] == amax);
    PD_CHECK(work[KCUDA_FP8_SCALE_AT] == scale);
    PD_CHECK(bad == 0);
    return bad == 0 && work[0] == amax && work[KCUDA_FP8_SCALE_AT] == scale;
}

static void convert_case(kcpu_dtype_t src_type, int64_t N, int64_t K, bool zeros)
{
    size_t n = (size_t)N * K;
    float *w = zeros ? calloc(n, sizeof(float)) : spread_vec(n, 0.05f);
    uint16_t *w16 = malloc(n * 2);
    void *dsrc = NULL;
    uint8_t *d8 = dev_poison(n), *h8 = NULL;
    float *dwork = dev_poison(KCUDA_FP8_WORK_FLOATS * sizeof(float)), *hwork = NULL;
    PD_CHECK(w && w16 && d8 && dwork);
    if (!w || !w16 || !d8 || !dwork)
        goto out;
    if (src_type == KCPU_DTYPE_BF16) {
        for (size_t i = 0; i < n; i++) {
            w16[i] = kcpu_f32_to_bf16(w[i]);
            w[i] = kcpu_bf16_to_f32(w16[i]);
        }
        dsrc = dup_dev(w16, n * 2);
    } else {
        dsrc = dup_dev(w, n * 4);
    }
    PD_CHECK(dsrc != NULL);
    if (dsrc == NULL)
        goto out;
    PD_CHECK_STATUS(kcuda_fp8w_convert(dsrc, src_type, N, K, d8, dwork, st_g), PD_OK);
    h8 = to_host(d8, n);
    hwork = to_host(dwork, KCUDA_FP8_WORK_FLOATS * sizeof(float));
    PD_CHECK(h8 && hwork);
    if (h8 && hwork) {
        char what[128];
        snprintf(what, sizeof(what), "convert %s [%lld, %lld]%s", kcpu_dtype_name(src_type), (long long)N,
                 (long long)K, zeros ? " zeros" : "");
        check_quant(what, w, n, h8, hwork);
    }
out:
    kcuda_free(dsrc), kcuda_free(d8), kcuda_free(dwork);
    free(w), free(w16), free(h8), free(hwork);
}

PD_TEST(test_convert)
{
    convert_case(KCPU_DTYPE_F32, 37, 48, false);
    convert_case(KCPU_DTYPE_F32, 1024, 4096, false);
    convert_case(KCPU_DTYPE_BF16, 300, 576, false);
    convert_case(KCPU_DTYPE_F32, 16, 32, true);
}

/* fp8 weight [N, K] made on the GPU from random values: device bytes + scale, host copies. */
typedef struct {
    uint8_t *d8;
    float *dwork;  /* [KCUDA_FP8_WORK_FLOATS]: max, scale */
    uint8_t *h8;
    float scale;
} w8_t;

static bool make_w8(int64_t N, int64_t K, float amp, w8_t *o)
{
    size_t n = (size_t)N * K;
    float *w = spread_vec(n, amp), *hw = NULL;
    void *dsrc = w ? dup_dev(w, n * 4) : NULL;
    memset(o, 0, sizeof(*o));
    o->d8 = dev_poison(n);
    o->dwork = dev_poison(KCUDA_FP8_WORK_FLOATS * sizeof(float));
    bool ok = dsrc && o->d8 && o->dwork &&
              kcuda_fp8w_convert(dsrc, KCPU_DTYPE_F32, N, K, o->d8, o->dwork, st_g) == PD_OK &&
              (o->h8 = to_host(o->d8, n)) != NULL && (hw = to_host(o->dwork, KCUDA_FP8_WORK_FLOATS * sizeof(float))) != NULL;
    if (ok)
        o->scale = hw[KCUDA_FP8_SCALE_AT];
    kcuda_free(dsrc);
    free(w), free(hw);
    return ok;
}

static void free_w8(w8_t *o)
{
    kcuda_free(o->d8), kcuda_free(o->dwork);
    free(o->h8);
}

/* ref[m, n] = sum_k x[m, k] * dec(w8[n, k]) * ws (double); rows m in [0, M) step mstep */
static void ref_gemv(const float *x, int64_t M, int64_t K, int64_t ldx, const uint8_t *w8, float ws, int64_t N,
                     double *ref, int64_t mstep)
{
    for (int64_t m = 0; m < M; m += mstep)
        for (int64_t n = 0; n < N; n++) {
            const uint8_t *wr = w8 + n * K;
            const float *xr = x + m * ldx;
            double s = 0;
            for (int64_t k = 0; k < K; k++)
                s += (double)xr[k] * lut[wr[k]];
            ref[m * N + n] = s * ws;
        }
}

static double worst_rel(const float *got, const double *ref, int64_t M, int64_t N, int64_t ldy, int64_t mstep,
                        double *maxy_p)
{
    double maxy = 1e-30, e = 0;
    for (int64_t m = 0; m < M; m += mstep)
        for (int64_t n = 0; n < N; n++)
            maxy = fmax(maxy, fabs(ref[m * N + n]));
    for (int64_t m = 0; m < M; m += mstep)
        for (int64_t n = 0; n < N; n++) {
            double g = got[m * ldy + n];
            e = fmax(e, isfinite(g) ? fabs(g - ref[m * N + n]) : INFINITY);
        }
    *maxy_p = maxy;
    return e / maxy;
}

static void gemv_case(int64_t M, int64_t N, int64_t K)
{
    const int64_t ldx = K + 4;
    w8_t w;
    float *x = rand_vec((size_t)M * ldx, 1.0f), *dx = NULL, *dy = NULL, *y = NULL;
    double *ref = malloc((size_t)M * N * sizeof(double)), maxy = 0, err;
    bool ok = make_w8(N, K, 0.05f, &w);
    PD_CHECK(ok && x && ref);
    if (!ok || !x || !ref)
        goto out;
    dx = dup_dev(x, (size_t)M * ldx * 4);
    dy = dev_poison((size_t)M * N * 4);
    PD_CHECK(dx && dy);
    if (!dx || !dy)
        goto out;
    PD_CHECK(kcuda_gemv_ok(M, K, ldx, dx, w.d8, KCUDA_W_FP8_E4M3));
    PD_CHECK_STATUS(kcuda_gemv_scaled(dx, M, K, ldx, w.d8, KCUDA_W_FP8_E4M3, w.dwork + KCUDA_FP8_SCALE_AT, N, dy, N, st_g), PD_OK);
    y = to_host(dy, (size_t)M * N * 4);
    PD_CHECK(y != NULL);
    if (y == NULL)
        goto out;
    ref_gemv(x, M, K, ldx, w.h8, w.scale, N, ref, 1);
    err = worst_rel(y, ref, M, N, N, 1, &maxy);
    printf("  gemv fp8 M=%lld N=%lld K=%lld: worst |err| / max|y| %.2e (max|y| %.3g, scale %.3g)\n", (long long)M,
           (long long)N, (long long)K, err, maxy, w.scale);
    PD_CHECK(err <= 1e-4);
out:
    free_w8(&w);
    kcuda_free(dx), kcuda_free(dy);
    free(x), free(y), free(ref);
}

PD_TEST(test_gemv)
{
    static const int64_t shapes[][2] = {{200, 80}, {1000, 2048}, {3000, 1040}, {6144, 4096}, {4096, 14336}};
    static const int64_t ms[] = {1, 3, 8};
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
        for (size_t i = 0; i < 3; i++) {
            if (shapes[s][0] * shapes[s][1] > 20000000 && ms[i] == 3)
                continue; /* the big shape: 1 and 8 rows are enough (host time) */
            gemv_case(ms[i], shapes[s][0], shapes[s][1]);
        }
    /* fp8 rows are 16-byte chunks of 16 elements: K % 16 */
    PD_CHECK(!kcuda_gemv_ok(1, 72, 72, (const void *)(uintptr_t)256, (const void *)(uintptr_t)256, KCUDA_W_FP8_E4M3));
    PD_CHECK(kcuda_gemv_ok(1, 80, 80, (const void *)(uintptr_t)256, (const void *)(uintptr_t)256, KCUDA_W_FP8_E4M3));
    /* every warp split of the kernel on one shape */
    for (int ks = 1; ks <= 4; ks *= 2) {
        kcuda_gemv_set_ksplit(ks);
        gemv_case(3, 520, 1024);
    }
    kcuda_gemv_set_ksplit(-1);
}

/* kcuda_gemv_ex on fp8: norm + store (M=1, 2) and accumulate (M=3) */
static void gemv_ex_case(int64_t M, int64_t N, int64_t K, bool norm)
{
    w8_t w;
    float *x = rand_vec((size_t)M * K, 1.0f), *nw = rand_vec((size_t)K, 1.0f), *y0 = rand_vec((size_t)M * N, 1.0f);
    float *dx = NULL, *dnw = NULL, *dy = NULL, *y = NULL, *h = malloc((size_t)M * K * 4);
    double *ref = malloc((size_t)M * N * sizeof(double)), maxy = 0, err;
    bool ok = make_w8(N, K, 0.05f, &w);
    kcuda_gemv_ex_t a;
    PD_CHECK(ok && x && nw && y0 && ref && h);
    if (!ok || !x || !nw || !y0 || !ref || !h)
        goto out;
    dx = dup_dev(x, (size_t)M * K * 4);
    dnw = dup_dev(nw, (size_t)K * 4);
    dy = norm ? dev_poison((size_t)M * N * 4) : dup_dev(y0, (size_t)M * N * 4);
    PD_CHECK(dx && dnw && dy);
    if (!dx || !dnw || !dy)
        goto out;
    memset(&a, 0, sizeof(a));
    a.x = dx, a.M = M, a.K = K, a.ldx = K, a.w = w.d8, a.wtype = KCUDA_W_FP8_E4M3, a.N = N, a.eps = 1e-5f;
    a.norm_w = norm ? dnw : NULL, a.epi = norm ? KCUDA_GEMV_STORE : KCUDA_GEMV_ACCUMULATE, a.y = dy, a.ldy = N;
    a.w_scale = w.dwork + KCUDA_FP8_SCALE_AT;
    PD_CHECK(kcuda_gemv_ex_ok(&a));
    PD_CHECK_STATUS(kcuda_gemv_ex(&a, st_g), PD_OK);
    y = to_host(dy, (size_t)M * N * 4);
    PD_CHECK(y != NULL);
    if (y == NULL)
        goto out;
    if (norm)
        kcpu_rmsnorm(NULL, x, nw, h, M, K, 1e-5f);
    else
        memcpy(h, x, (size_t)M * K * 4);
    ref_gemv(h, M, K, K, w.h8, w.scale, N, ref, 1);
    if (!norm)
        for (int64_t i = 0; i < M * N; i++)
            ref[i] += y0[i];
    err = worst_rel(y, ref, M, N, N, 1, &maxy);
    printf("  gemv_ex fp8 %s M=%lld N=%lld K=%lld: worst |err| / max|y| %.2e\n", norm ? "norm+store" : "accumulate",
           (long long)M, (long long)N, (long long)K, err);
    PD_CHECK(err <= 1e-4);
out:
    free_w8(&w);
    kcuda_free(dx), kcuda_free(dnw), kcuda_free(dy);
    free(x), free(nw), free(y0), free(y), free(h), free(ref);
}

PD_TEST(test_gemv_ex)
{
    gemv_ex_case(1, 1536, 576, true);
    gemv_ex_case(2, 3072, 2048, true);
    gemv_ex_case(3, 576, 1536, false);
}

/* activation quantization + fp8 GEMM */
static void gemm_case(kcuda_lt_t *lt, int64_t M, int64_t N, int64_t K, kcpu_dtype_t xt, bool acc)
{
    const int64_t ldx = K + 16, mstep = M >= 1024 ? 32 : 1;
    const size_t nx = (size_t)M * ldx;
    w8_t w;
    float *x = rand_vec(nx, 2.0f), *y0 = rand_vec((size_t)M * N, 1.0f), *y = NULL, *xv = malloc((size_t)M * K * 4);
    float *hw = NULL, *dy = NULL;
    uint16_t *x16 = malloc(nx * 2);
    void *dx = NULL;
    uint8_t *da8 = dev_poison((size_t)M * K), *ha8 = NULL;
    float *dwork = dev_poison(KCUDA_FP8_WORK_FLOATS * sizeof(float));
    double *ref = malloc((size_t)M * N * sizeof(double)), maxy = 0, err;
    bool ok = make_w8(N, K, 0.05f, &w);
    PD_CHECK(ok && x && y0 && xv && x16 && da8 && dwork && ref);
    if (!ok || !x || !y0 || !xv || !x16 || !da8 || !dwork || !ref)
        goto out;
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++) {
            size_t i = (size_t)m * ldx + k;
            if (xt == KCPU_DTYPE_BF16) {
                x16[i] = kcpu_f32_to_bf16(x[i]);
                xv[m * K + k] = kcpu_bf16_to_f32(x16[i]);
            } else {
                xv[m * K + k] = x[i];
            }
        }
    dx = xt == KCPU_DTYPE_BF16 ? dup_dev(x16, nx * 2) : dup_dev(x, nx * 4);
    dy = acc ? dup_dev(y0, (size_t)M * N * 4) : dev_poison((size_t)M * N * 4);
    PD_CHECK(dx && dy);
    if (!dx || !dy)
        goto out;
    PD_CHECK_STATUS(kcuda_fp8_quant_act(dx, xt, M, K, ldx, da8, dwork, st_g), PD_OK);
    ha8 = to_host(da8, (size_t)M * K);
    hw = to_host(dwork, KCUDA_FP8_WORK_FLOATS * sizeof(float));
    PD_CHECK(ha8 && hw);
    if (!ha8 || !hw)
        goto out;
    char what[128];
    snprintf(what, sizeof(what), "quant_act %s [%lld, %lld] ldx %lld", kcpu_dtype_name(xt), (long long)M,
             (long long)K, (long long)ldx);
    check_quant(what, xv, (size_t)M * K, ha8, hw);
    PD_CHECK(kcuda_fp8_gemm_ok(M, K, N, dy, N));
    PD_CHECK_STATUS(kcuda_fp8_gemm(lt, da8, dwork + KCUDA_FP8_SCALE_AT, M, K, w.d8, w.dwork + KCUDA_FP8_SCALE_AT, N, dy, N, acc), PD_OK);
    y = to_host(dy, (size_t)M * N * 4);
    PD_CHECK(y != NULL);
    if (y == NULL)
        goto out;
    /* the reference over the GPU's own bytes: dec(a8) * a_scale as the activation */
    for (int64_t i = 0; i < M * K; i++)
        xv[i] = lut[ha8[i]] * hw[KCUDA_FP8_SCALE_AT];
    ref_gemv(xv, M, K, K, w.h8, w.scale, N, ref, mstep);
    if (acc)
        for (int64_t m = 0; m < M; m += mstep)
            for (int64_t n = 0; n < N; n++)
                ref[m * N + n] += y0[m * N + n];
    err = worst_rel(y, ref, M, N, N, mstep, &maxy);
    printf("  gemm fp8 %s M=%lld N=%lld K=%lld%s: worst |err| / max|y| %.2e (max|y| %.3g; rows checked every %lld)\n",
           kcpu_dtype_name(xt), (long long)M, (long long)N, (long long)K, acc ? " accumulate" : "", err, maxy,
           (long long)mstep);
    PD_CHECK(err <= 1e-3);
out:
    free_w8(&w);
    kcuda_free(dx), kcuda_free(dy), kcuda_free(da8), kcuda_free(dwork);
    free(x), free(y0), free(y), free(xv), free(hw), free(x16), free(ha8), free(ref);
}

/* kcuda_fp8_gemm_half_out against kcuda_fp8_gemm's f32 output of the same operands,
 * rounded on the host: within one bf16 / f16 unit in the last place (+ 1e-3 of max|y|:
 * cuBLASLt may sum in another order for another output type) */
static void gemm_half_case(kcuda_lt_t *lt, int64_t M, int64_t N, int64_t K, kcpu_dtype_t yt)
{
    w8_t w;
    float *x = rand_vec((size_t)M * K, 2.0f), *y32 = NULL, *dy32 = dev_poison((size_t)M * N * 4), *dwork = dev_poison(KCUDA_FP8_WORK_FLOATS * sizeof(float));
    void *dx = x ? dup_dev(x, (size_t)M * K * 4) : NULL, *dy16 = dev_poison((size_t)M * N * 2);
    uint8_t *da8 = dev_poison((size_t)M * K);
    uint16_t *y16 = NULL;
    bool ok = make_w8(N, K, 0.05f, &w);
    PD_CHECK(ok && x && dx && dy32 && dy16 && da8 && dwork);
    if (!ok || !x || !dx || !dy32 || !dy16 || !da8 || !dwork)
        goto out;
    PD_CHECK_STATUS(kcuda_fp8_quant_act(dx, KCPU_DTYPE_F32, M, K, K, da8, dwork, st_g), PD_OK);
    PD_CHECK_STATUS(kcuda_fp8_gemm(lt, da8, dwork + KCUDA_FP8_SCALE_AT, M, K, w.d8, w.dwork + KCUDA_FP8_SCALE_AT, N, dy32, N, false), PD_OK);
    PD_CHECK_STATUS(kcuda_fp8_gemm_half_out(lt, da8, dwork + KCUDA_FP8_SCALE_AT, M, K, w.d8, w.dwork + KCUDA_FP8_SCALE_AT, N, dy16, N, yt), PD_OK);
    y32 = to_host(dy32, (size_t)M * N * 4);
    y16 = to_host(dy16, (size_t)M * N * 2);
    PD_CHECK(y32 && y16);
    if (y32 && y16) {
        float big = 0;
        for (int64_t i = 0; i < M * N; i++)
            big = fmaxf(big, fabsf(y32[i]));
        int bad = count_off(y16, y32, (size_t)(M * N), yt, 1.0f, 1e-3f * big);
        printf("  gemm fp8 %s out M=%lld N=%lld K=%lld: %d of %lld outside 1 ulp of the f32 output rounded\n",
               kcpu_dtype_name(yt), (long long)M, (long long)N, (long long)K, bad, (long long)(M * N));
        PD_CHECK_EQ_INT(bad, 0);
    }
out:
    free_w8(&w);
    kcuda_free(dx), kcuda_free(dy32), kcuda_free(dy16), kcuda_free(da8), kcuda_free(dwork);
    free(x), free(y32), free(y16);
}

PD_TEST(test_gemm)
{
    kcuda_lt_t *lt = NULL;
    PD_CHECK_STATUS(kcuda_lt_create(st_g, 32u << 20, &lt), PD_OK);
    if (lt == NULL)
        return;
    gemm_case(lt, 9, 1040, 528, KCPU_DTYPE_F32, false);
    gemm_case(lt, 64, 960, 576, KCPU_DTYPE_BF16, false);
    gemm_case(lt, 64, 576, 1536, KCPU_DTYPE_F32, true);
    gemm_case(lt, 333, 3072, 576, KCPU_DTYPE_BF16, false);
    gemm_case(lt, 2048, 6144, 4096, KCPU_DTYPE_BF16, false);
    /* the same shape again: a cached plan */
    gemm_case(lt, 9, 1040, 528, KCPU_DTYPE_F32, true);
    gemm_half_case(lt, 64, 3072, 576, KCPU_DTYPE_BF16);
    gemm_half_case(lt, 333, 1024, 1536, KCPU_DTYPE_F16);
    /* refused shapes */
    PD_CHECK(!kcuda_fp8_gemm_ok(16, 40, 64, (const float *)(uintptr_t)256, 64));
    PD_CHECK(!kcuda_fp8_gemm_ok(16, 64, 40, (const float *)(uintptr_t)256, 40));
    kcuda_lt_destroy(lt);
}

/* ---- the backend ---- */

/* host model of the backend's fp8 matmul: weight quantized per tensor; x quantized per
 * tensor too when gemm (more than 8 rows) */
static void host_fp8_matmul(const float *x, int64_t M, int64_t K, const float *w, int64_t N, bool gemm,
                            double *ref)
{
    float wa = 0, xa = 0;
    for (int64_t i = 0; i < N * K; i++)
        wa = fmaxf(wa, fabsf(w[i]));
    for (int64_t i = 0; gemm && i < M * K; i++)
        xa = fmaxf(xa, fabsf(x[i]));
    const float ws = wa > 0 ? wa / 448.0f : 1.0f, xs = xa > 0 ? xa / 448.0f : 1.0f;
    double *xq = malloc((size_t)(M * K) * sizeof(double)), *wq = malloc((size_t)(N * K) * sizeof(double));
    PD_CHECK(xq && wq);
    for (int64_t i = 0; xq && i < M * K; i++)
        xq[i] = gemm ? (double)lut[e4m3_enc(x[i] / xs)] * xs : x[i];
    for (int64_t i = 0; wq && i < N * K; i++)
        wq[i] = lut[e4m3_enc(w[i] / ws)];
    for (int64_t m = 0; xq && wq && m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++)
                s += xq[m * K + k] * wq[n * K + k];
            ref[m * N + n] = s * ws;
        }
    free(xq), free(wq);
}

static void backend_case(int64_t M, int64_t N, int64_t K, bool keep, bool mm16)
{
    size_t nx = (size_t)M * K, nw = (size_t)N * K, ny = (size_t)M * N;
    float *x = rand_vec(nx, 1.0f), *w = spread_vec(nw, 0.05f), *y = NULL;
    uint16_t *w16 = malloc(nw * 2), *x16 = malloc(nx * 2);
    double *ref = malloc(ny * sizeof(double)), maxy = 0, err;
    void *dw = NULL, *dx = NULL, *dy = NULL;
    PD_CHECK(x && w && w16 && x16 && ref);
    if (!x || !w || !w16 || !x16 || !ref)
        goto out;
    for (size_t i = 0; i < nw; i++) {
        w16[i] = kcpu_f32_to_bf16(w[i]);
        w[i] = kcpu_bf16_to_f32(w16[i]); /* a bf16 checkpoint */
    }
    for (size_t i = 0; i < nx; i++) {
        x16[i] = kcpu_f32_to_bf16(x[i]);
        if (mm16)
            x[i] = kcpu_bf16_to_f32(x16[i]);
    }
    dw = up(w16, nw * 2);
    dx = mm16 ? up(x16, nx * 2) : up(x, nx * 4);
    dy = poisoned(ny * 4);
    PD_CHECK(dw && dx && dy);
    if (!dw || !dx || !dy)
        goto out;
    if (keep)
        PD_CHECK_STATUS(eng_backend_cuda_keep_weight(be, dw), PD_OK);
    if (mm16)
        PD_CHECK_STATUS(ops->matmul_mm(be, dx, M, K, K, dw, KCPU_DTYPE_BF16, N, NULL, dy, N, false), PD_OK);
    else
        PD_CHECK_STATUS(ops->matmul(be, dx, M, K, K, dw, KCPU_DTYPE_BF16, N, NULL, dy, N), PD_OK);
    y = down(dy, ny * 4);
    PD_CHECK(y != NULL);
    if (y == NULL)
        goto out;
    if (keep) {
        /* bf16 weights: the GEMV reads f32 x (exact products); the GEMM rounds x to bf16 */
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++)
                    s += (double)(M > 8 ? kcpu_bf16_to_f32(kcpu_f32_to_bf16(x[m * K + k])) : x[m * K + k]) *
                         w[n * K + k];
                ref[m * N + n] = s;
            }
    } else {
        host_fp8_matmul(x, M, K, w, N, M > 8, ref);
    }
    err = worst_rel(y, ref, M, N, N, 1, &maxy);
    printf("  backend matmul%s M=%lld N=%lld K=%lld %s: worst |err| / max|y| %.2e\n", mm16 ? "_mm (bf16 x)" : "",
           (long long)M, (long long)N, (long long)K, keep ? "kept bf16" : "fp8", err);
    PD_CHECK(err <= (keep ? 1e-4 : 1e-3));
    if (!keep) {
        /* and the same weight against the plain bf16 product: fp8 is coarser, not broken */
        double e2 = 0, my = 1e-30;
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++)
                    s += (double)x[m * K + k] * w[n * K + k];
                my = fmax(my, fabs(s));
                e2 = fmax(e2, fabs(s - y[m * N + n]));
            }
        printf("    vs the bf16 product: worst |diff| / max|y| %.2e (fp8 rounding)\n", e2 / my);
        PD_CHECK(e2 / my < 0.1);
    }
out:
    if (dw)
        ops->buf_free(be, dw);
    if (dx)
        ops->buf_free(be, dx);
    if (dy)
        ops->buf_free(be, dy);
    free(x), free(w), free(w16), free(x16), free(ref), free(y);
}

/* matmul_mm_out with fp8 weights: bf16 x [M, K], bf16 y against the host model rounded */
static void backend_out16_case(int64_t M, int64_t N, int64_t K)
{
    size_t nx = (size_t)M * K, nw = (size_t)N * K, ny = (size_t)M * N;
    float *x = rand_vec(nx, 1.0f), *w = spread_vec(nw, 0.05f), *ref32 = malloc(ny * 4);
    uint16_t *w16 = malloc(nw * 2), *x16 = malloc(nx * 2), *y = NULL;
    double *ref = malloc(ny * sizeof(double));
    void *dw = NULL, *dx = NULL, *dy = NULL;
    PD_CHECK(x && w && ref32 && w16 && x16 && ref);
    if (!x || !w || !ref32 || !w16 || !x16 || !ref || ops->matmul_mm_out == NULL)
        goto out;
    for (size_t i = 0; i < nw; i++) {
        w16[i] = kcpu_f32_to_bf16(w[i]);
        w[i] = kcpu_bf16_to_f32(w16[i]);
    }
    for (size_t i = 0; i < nx; i++) {
        x16[i] = kcpu_f32_to_bf16(x[i]);
        x[i] = kcpu_bf16_to_f32(x16[i]);
    }
    dw = up(w16, nw * 2);
    dx = up(x16, nx * 2);
    dy = poisoned(ny * 2);
    PD_CHECK(dw && dx && dy);
    if (!dw || !dx || !dy)
        goto out;
    PD_CHECK_STATUS(ops->matmul_mm_out(be, dx, M, K, K, dw, KCPU_DTYPE_BF16, N, dy, N), PD_OK);
    y = down(dy, ny * 2);
    PD_CHECK(y != NULL);
    if (y == NULL)
        goto out;
    host_fp8_matmul(x, M, K, w, N, true, ref);
    float big = 0;
    for (size_t i = 0; i < ny; i++) {
        ref32[i] = (float)ref[i];
        big = fmaxf(big, fabsf(ref32[i]));
    }
    /* the f32 sums differ from the host's by f32 rounding: 1 bf16 ulp + 1e-3 of max|y| */
    int bad = count_off(y, ref32, ny, KCPU_DTYPE_BF16, 1.0f, 1e-3f * big);
    printf("  backend matmul_mm_out fp8 M=%lld N=%lld K=%lld (bf16 out): %d of %zu off\n", (long long)M, (long long)N,
           (long long)K, bad, ny);
    PD_CHECK_EQ_INT(bad, 0);
out:
    if (dw)
        ops->buf_free(be, dw);
    if (dx)
        ops->buf_free(be, dx);
    if (dy)
        ops->buf_free(be, dy);
    free(x), free(w), free(ref32), free(w16), free(x16), free(y), free(ref);
}

PD_TEST(test_backend)
{
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_BF16);
    PD_CHECK_STATUS(eng_backend_cuda_set_fp8_weights(be, true), PD_OK);
    PD_CHECK(eng_backend_cuda_fp8_weights(be));
    PD_CHECK_EQ_INT((int)ops->mm_in_type(be, 40), (int)KCPU_DTYPE_BF16);
    backend_case(1, 960, 576, false, false);
    backend_case(5, 1536, 576, false, false);
    backend_case(40, 960, 576, false, false);
    backend_case(40, 576, 1536, false, true);
    backend_case(1, 512, 576, true, false);
    backend_case(40, 512, 576, true, false);
    /* matmul_mm_out (the gate|up GEMM's bf16 output) on fp8 weights */
    backend_out16_case(40, 3072, 576);
    /* ... declined (nothing queued) when the rows of y are not 16-byte multiples */
    {
        uint16_t *w16 = calloc(64 * 64, 2);
        void *dw = w16 ? up(w16, 64 * 64 * 2) : NULL, *dx = poisoned(16 * 64 * 2), *dy = poisoned(16 * 68 * 2);
        if (dw && dx && dy && ops->matmul_mm_out)
            PD_CHECK_STATUS(ops->matmul_mm_out(be, dx, 16, 64, 64, dw, KCPU_DTYPE_BF16, 64, dy, 68),
                            PD_ERR_UNSUPPORTED);
        ops->buf_free(be, dw), ops->buf_free(be, dx), ops->buf_free(be, dy);
        free(w16);
    }
    PD_CHECK_STATUS(eng_backend_cuda_set_fp8_weights(be, false), PD_OK);
}

/* ---- the engine ---- */

enum { BS = 16, MB = 4, NDEC = 16, MAXS = 12 };

typedef struct {
    float *logits;   /* [NDEC + 1][ns][V]: the prefill's last rows, then each decode step */
    int32_t tok[NDEC + 1][MAXS];
} run_t;

/* prefill ns sequences, then NDEC decode steps; forced: feed forced->tok (teacher
 * forcing), else the argmax of each step */
static pd_status_t run_model(eng_model_t *model, eng_backend_t *b, int ns, bool graphs, const run_t *forced,
                             run_t *out)
{
    eng_forward_opts_t fo = {.block_size = BS, .n_blocks = MAXS * MB, .max_tokens = 256, .max_seqs = MAXS,
                             .max_blocks_per_seq = MB, .graph_max_bs = graphs ? 16 : 0};
    const int64_t V = eng_model_config(model)->vocab_size;
    int32_t tok[256], pos[256], seq[256], tables[MAXS * MB], ctx[MAXS], rows[MAXS], len[MAXS];
    int64_t slots[256];
    eng_forward_t *fw = NULL;
    pd_status_t st = eng_forward_create(model, ops, b, &fo, &fw);
    int t = 0;
    if (st != PD_OK)
        return st;
    for (int i = 0; i < MAXS * MB; i++)
        tables[i] = i;
    for (int s = 0; s < ns; s++) {
        len[s] = 5 + (s * 7) % 13;
        for (int p = 0; p < len[s]; p++, t++) {
            tok[t] = (int32_t)((t * 53 + s * 7 + 3) % V);
            pos[t] = p;
            seq[t] = s;
            slots[t] = (int64_t)s * MB * BS + p;
        }
        ctx[s] = len[s];
        rows[s] = t - 1;
    }
    eng_fwd_batch_t fb = {t, tok, pos, seq, slots, ns, tables, ctx, ns, rows};
    for (int d = 0; d <= NDEC && st == PD_OK; d++) {
        float *lg = out->logits + (size_t)d * ns * V;
        st = eng_forward_run(fw, &fb, lg);
        if (st != PD_OK)
            break;
        for (int s = 0; s < ns; s++) {
            const float *r = lg + (size_t)s * V;
            int32_t best = 0;
            for (int64_t v = 1; v < V; v++)
                if (r[v] > r[best])
                    best = (int32_t)v;
            out->tok[d][s] = best;
        }
        /* the next decode step: one token a sequence */
        for (int s = 0; s < ns; s++) {
            tok[s] = forced ? forced->tok[d][s] : out->tok[d][s];
            pos[s] = len[s] + d;
            seq[s] = s;
            slots[s] = (int64_t)s * MB * BS + pos[s];
            ctx[s] = pos[s] + 1;
            rows[s] = s;
        }
        fb.n_tokens = ns;
    }
    eng_forward_destroy(fw);
    return st;
}

static void engine_case(const char *path, const char *label, bool real_model, int ns, bool fuse)
{
    eng_load_opts_t lo;
    eng_model_t *model = NULL;
    eng_backend_t *b8 = NULL;
    run_t ref = {0}, f8 = {0};
    eng_load_opts_init(&lo);
    lo.model = path;
    lo.max_model_len = MB * BS;
    PD_CHECK_STATUS(eng_model_load(&lo, &model), PD_OK);
    PD_CHECK_STATUS(ops->init(NULL, &b8), PD_OK);
    if (model == NULL || b8 == NULL)
        goto out;
    const int64_t V = eng_model_config(model)->vocab_size;
    ref.logits = malloc((size_t)(NDEC + 1) * ns * V * sizeof(float));
    f8.logits = malloc((size_t)(NDEC + 1) * ns * V * sizeof(float));
    PD_CHECK(ref.logits && f8.logits);
    if (!ref.logits || !f8.logits)
        goto out;
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_BF16);
    eng_backend_cuda_set_weight_dtype(b8, KCPU_DTYPE_BF16);
    PD_CHECK_STATUS(eng_backend_cuda_set_fp8_weights(b8, true), PD_OK);
    PD_CHECK_STATUS(run_model(model, be, ns, true, NULL, &ref), PD_OK);
    /* fuse: the fp8 run with the fused decode layer (norm_matmul / matmul_add: the
     * fused GEMVs on fp8 weights) */
    if (fuse)
        setenv("PD_FORWARD_DECODE_FUSE", "1", 1);
    PD_CHECK_STATUS(run_model(model, b8, ns, true, &ref, &f8), PD_OK);
    unsetenv("PD_FORWARD_DECODE_FUSE");
    int agree = 0, total = 0, nonfinite = 0;
    double sum = 0, worst = 0;
    for (int d = 0; d <= NDEC; d++)
        for (int s = 0; s < ns; s++) {
            const float *x = ref.logits + ((size_t)d * ns + s) * V, *y = f8.logits + ((size_t)d * ns + s) * V;
            double mx = 1e-30, e = 0;
            for (int64_t v = 0; v < V; v++) {
                mx = fmax(mx, fabs(x[v]));
                if (!isfinite(y[v]))
                    nonfinite++;
                e = fmax(e, fabs((double)x[v] - y[v]));
            }
            worst = fmax(worst, e / mx);
            sum += e / mx;
            total++;
            agree += ref.tok[d][s] == f8.tok[d][s];
        }
    printf("  engine %s, %d sequences (decode on the %s, graphs): fp8 vs bf16 weights, teacher-forced: argmax agrees "
           "%d/%d, logit error / max|logit| mean %.3f worst %.3f, %d non-finite\n",
           label, ns, ns > 8 ? "fp8 GEMM" : fuse ? "fused GEMVs" : "GEMV", agree, total, sum / total, worst, nonfinite);
    PD_CHECK_EQ_INT(nonfinite, 0);
    PD_CHECK(sum / total <= 0.25);
    if (real_model)
        PD_CHECK(agree * 10 >= total * 9);
out:
    if (b8)
        ops->shutdown(b8);
    eng_model_destroy(model);
    free(ref.logits), free(f8.logits);
}

PD_TEST(test_engine)
{
    static const char *const tiny[] = {"tiny-llama", "tiny-qwen3", "tiny-llama.gguf", NULL};
    const char *g = getenv("PD_MODEL_GGUF");
    for (int i = 0; tiny[i]; i++) {
        char m[4096];
        snprintf(m, sizeof(m), "%s/tests/data/models/%s", getenv("PD_SOURCE_DIR") ? getenv("PD_SOURCE_DIR") : ".",
                 tiny[i]);
        if (access(m, R_OK) == 0) {
            engine_case(m, tiny[i], false, 3, false);
            engine_case(m, tiny[i], false, 12, false);
            if (i == 0)
                engine_case(m, tiny[i], false, 3, true);
        } else {
            printf("  SKIP: %s is missing\n", m);
        }
    }
    if (g == NULL || access(g, R_OK) != 0)
        g = "/root/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (access(g, R_OK) == 0) {
        engine_case(g, "SmolLM2-135M (Q4_1 -> fp8)", true, 3, false);
        engine_case(g, "SmolLM2-135M (Q4_1 -> fp8)", true, 12, false);
    } else {
        printf("  SKIP: %s is missing (PD_MODEL_GGUF)\n", g);
    }
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_BF16);
}

int main(void)
{
    for (int i = 0; i < 256; i++)
        lut[i] = e4m3_dec((uint8_t)i);
    /* the host encoder round-trips every finite code (a check of the oracle itself) */
    for (int i = 0; i < 256; i++)
        if ((i & 0x7f) != 0x7f)
            PD_CHECK(same_byte(e4m3_enc(lut[i]), (uint8_t)i));
    PD_CHECK_EQ_INT(e4m3_enc(1000.0f), 0x7e);
    PD_CHECK_EQ_INT(e4m3_enc(-1000.0f), 0xfe);
    PD_CHECK_EQ_INT(e4m3_enc(1.0625f), 0x38); /* tie between 1.0 and 1.125: even code */
    PD_CHECK_EQ_INT(e4m3_enc(1.1875f), 0x3a); /* tie between 1.125 and 1.25: even code */
    ops = eng_backend_get("cuda");
    PD_CHECK(ops != NULL);
    if (ops == NULL)
        return PD_TEST_REPORT();
    if (ops->init(NULL, &be) != PD_OK) {
        printf("SKIP: no usable CUDA device\n");
        return 77;
    }
    if (kcuda_stream_create(&st_g) != PD_OK) {
        ops->shutdown(be);
        return PD_TEST_REPORT();
    }
    PD_RUN(test_convert);
    PD_RUN(test_gemv);
    PD_RUN(test_gemv_ex);
    PD_RUN(test_gemm);
    PD_RUN(test_backend);
    PD_RUN(test_engine);
    kcuda_stream_destroy(st_g);
    ops->shutdown(be);
    return PD_TEST_REPORT();
}
