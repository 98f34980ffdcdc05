/*
 * test_kcpu.c - every kcpu op against a naive reference written here (plain loops,
 * double accumulation), over odd shapes, with fresh random inputs (seed printed; set
 * PD_TEST_SEED to replay), outputs poisoned with NaN before each run, with the SIMD
 * paths on and off, and with 1 and 2 threads (results must be bit-identical).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_backend.h"
#include "kcpu.h"
#include "pd_log.h"
#include "pd_test.h"
#include "pd_util.h"

/* ---- helpers ---- */

static uint64_t rng_g;

static uint64_t rnd_u64(void)
{
    rng_g ^= rng_g << 13;
    rng_g ^= rng_g >> 7;
    rng_g ^= rng_g << 17;
    return rng_g;
}

static float rnd_f(float lo, float hi)
{
    return lo + (hi - lo) * (float)((rnd_u64() >> 40) / (double)(1 << 24));
}

static int rnd_int(int n)
{
    return (int)(rnd_u64() % (uint64_t)n);
}

static float *rnd_vec(int64_t n, float lo, float hi)
{
    float *v = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++)
        v[i] = rnd_f(lo, hi);
    return v;
}

static float *poisoned(int64_t n)
{
    float *v = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++)
        v[i] = NAN;
    return v;
}

static void poison(float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        v[i] = NAN;
}

/* |got - want| <= atol + rtol * |want| for all i; prints the first failure */
static int close_enough(const char *what, const float *got, const double *want, int64_t n,
                        double atol, double rtol)
{
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= atol + rtol * fabs(want[i]))) {
            fprintf(stderr, "  %s: element %lld: got %.9g want %.9g (diff %.3g)\n", what,
                    (long long)i, (double)got[i], want[i], d);
            return 0;
        }
    }
    return 1;
}

static double f16_val(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

/* the test's own decoder of every weight type (independent of kcpu_dequant_row) */
static double ref_weight(kcpu_dtype_t t, const void *row, int64_t i)
{
    const uint8_t *p = row;
    switch (t) {
    case KCPU_DTYPE_F32: { float f; memcpy(&f, p + 4 * i, 4); return f; }
    case KCPU_DTYPE_F16: { uint16_t h; memcpy(&h, p + 2 * i, 2); return f16_val(h); }
    case KCPU_DTYPE_BF16: {
        uint16_t h; uint32_t u; float f;
        memcpy(&h, p + 2 * i, 2); u = (uint32_t)h << 16; memcpy(&f, &u, 4); return f;
    }
    case KCPU_DTYPE_Q8_0: {
        const uint8_t *b = p + 34 * (i / 32);
        uint16_t d; memcpy(&d, b, 2);
        return (double)(int8_t)b[2 + i % 32] * f16_val(d);
    }
    case KCPU_DTYPE_Q4_0: {
        const uint8_t *b = p + 18 * (i / 32);
        uint16_t d; memcpy(&d, b, 2);
        int j = (int)(i % 32);
        int q = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
        return (double)(q - 8) * f16_val(d);
    }
    case KCPU_DTYPE_Q4_1: {
        const uint8_t *b = p + 20 * (i / 32);
        uint16_t d, m; memcpy(&d, b, 2); memcpy(&m, b + 2, 2);
        int j = (int)(i % 32);
        int q = j < 16 ? (b[4 + j] & 15) : (b[4 + j - 16] >> 4);
        return (double)q * f16_val(d) + f16_val(m);
    }
    default:
        return NAN;
    }
}

/* N rows of K random weights of type t (returns malloc'd bytes) */
static void *rnd_weights(kcpu_dtype_t t, int64_t N, int64_t K, size_t *row_bytes_p)
{
    size_t rb;
    PD_CHECK_STATUS(kcpu_dtype_row_bytes(t, K, &rb), PD_OK);
    uint8_t *w = malloc(rb * (size_t)N);
    float *tmp = rnd_vec(K, -1.0f, 1.0f);
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < K; k++)
            tmp[k] = rnd_f(-1.0f, 1.0f) * (1.0f + (float)(n % 3));
        PD_CHECK_STATUS(kcpu_quant_row(t, tmp, w + rb * (size_t)n, K), PD_OK);
    }
    free(tmp);
    *row_bytes_p = rb;
    return w;
}

static const kcpu_dtype_t all_types[] = {
    KCPU_DTYPE_F32, KCPU_DTYPE_F16, KCPU_DTYPE_BF16, KCPU_DTYPE_Q8_0, KCPU_DTYPE_Q4_0, KCPU_DTYPE_Q4_1,
};

static bool is_quant(kcpu_dtype_t t)
{
    return t == KCPU_DTYPE_Q8_0 || t == KCPU_DTYPE_Q4_0 || t == KCPU_DTYPE_Q4_1;
}

static kcpu_pool_t *pool1_g, *pool2_g, *pool4_g;

/* ---- dtypes ---- */

PD_TEST(test_f16_conversions)
{
    /* every finite f16 survives f16 -> f32 -> f16 and decodes to the exact value */
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 31) == 31)
            continue;
        float f = kcpu_f16_to_f32((uint16_t)h);
        if ((double)f != f16_val((uint16_t)h) || kcpu_f32_to_f16(f) != h) {
            PD_CHECK(0);
            fprintf(stderr, "  f16 %04x -> %g\n", h, (double)f);
            break;
        }
    }
    /* random f32 round to the nearest f16 (ties to even) */
    for (int i = 0; i < 200000; i++) {
        float f = rnd_f(-1.0f, 1.0f) * ldexpf(1.0f, rnd_int(40) - 28);
        uint16_t h = kcpu_f32_to_f16(f);
        double got = f16_val(h);
        double e = fabs(got - f);
        double e_up = fabs(f16_val((uint16_t)(h + 1)) - f);
        double e_dn = (h & 0x7fff) ? fabs(f16_val((uint16_t)(h - 1)) - f) : INFINITY;
        if (fabs(f) < 65504 && (e > e_up || e > e_dn)) {
            PD_CHECK(0);
            fprintf(stderr, "  f32 %.9g -> f16 %04x not nearest\n", (double)f, h);
            break;
        }
    }
    PD_CHECK(kcpu_f32_to_f16(1e6f) == 0x7c00);
    PD_CHECK(kcpu_f32_to_f16(-INFINITY) == 0xfc00);
    PD_CHECK(isnan(kcpu_f16_to_f32(kcpu_f32_to_f16(NAN))));
    PD_CHECK(kcpu_f32_to_f16(65519.0f) == 0x7bff);
    PD_CHECK(kcpu_f32_to_f16(65520.0f) == 0x7c00);
    /* bf16: round to nearest even */
    PD_CHECK(kcpu_f32_to_bf16(1.0f) == 0x3f80);
    PD_CHECK(kcpu_bf16_to_f32(0x3f80) == 1.0f);
    uint32_t u = 0x3f808000; /* exactly half-way: rounds to even 0x3f80 */
    float f;
    memcpy(&f, &u, 4);
    PD_CHECK(kcpu_f32_to_bf16(f) == 0x3f80);
    u = 0x3f818000; /* half-way above odd: rounds up */
    memcpy(&f, &u, 4);
    PD_CHECK(kcpu_f32_to_bf16(f) == 0x3f82);
    PD_CHECK(isnan(kcpu_bf16_to_f32(kcpu_f32_to_bf16(NAN))));
}

PD_TEST(test_dtype_sizes)
{
    size_t b = 0;
    PD_CHECK_STATUS(kcpu_dtype_row_bytes(KCPU_DTYPE_Q4_1, 576, &b), PD_OK);
    PD_CHECK_EQ_INT(b, 18 * 20);
    PD_CHECK_STATUS(kcpu_dtype_row_bytes(KCPU_DTYPE_Q8_0, 64, &b), PD_OK);
    PD_CHECK_EQ_INT(b, 68);
    PD_CHECK_STATUS(kcpu_dtype_row_bytes(KCPU_DTYPE_Q4_0, 33, &b), PD_ERR_INVAL);
    PD_CHECK_STATUS(kcpu_dtype_row_bytes(KCPU_DTYPE_BF16, 3, &b), PD_OK);
    PD_CHECK_EQ_INT(b, 6);
    PD_CHECK_STATUS(kcpu_dtype_row_bytes((kcpu_dtype_t)99, 32, &b), PD_ERR_UNSUPPORTED);
    PD_CHECK_STATUS(kcpu_dtype_row_bytes(KCPU_DTYPE_F32, INT64_MAX, &b), PD_ERR_OVERFLOW);
    PD_CHECK_STATUS(kcpu_dtype_row_bytes(KCPU_DTYPE_F32, -1, &b), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(kcpu_dtype_name(KCPU_DTYPE_Q4_1), "q4_1");
    PD_CHECK(kcpu_dtype_supported(KCPU_DTYPE_Q6_K));
    PD_CHECK(!kcpu_dtype_supported((kcpu_dtype_t)6)); /* Q5_0 */
}

PD_TEST(test_quant_dequant)
{
    const int64_t n = 32 * 7;
    for (size_t ti = 0; ti < PD_ARRAY_SIZE(all_types); ti++) {
        kcpu_dtype_t t = all_types[ti];
        size_t rb;
        float *x = rnd_vec(n, -3.0f, 3.0f);
        x[5] = 0.0f;
        for (int j = 64; j < 96; j++) /* an all-zero block */
            x[j] = 0.0f;
        PD_CHECK_STATUS(kcpu_dtype_row_bytes(t, n, &rb), PD_OK);
        void *q = malloc(rb);
        PD_CHECK_STATUS(kcpu_quant_row(t, x, q, n), PD_OK);
        float *a = poisoned(n), *b = poisoned(n);
        kcpu_set_simd(false);
        kcpu_dequant_row(t, q, a, n);
        kcpu_set_simd(true);
        kcpu_dequant_row(t, q, b, n);
        PD_CHECK(memcmp(a, b, sizeof(float) * (size_t)n) == 0); /* simd == scalar, bitwise */
        for (int64_t i = 0; i < n; i++) {
            double want = ref_weight(t, q, i);
            if ((double)a[i] != want && fabs((double)a[i] - want) > 1e-7 * fabs(want)) {
                fprintf(stderr, "  %s dequant[%lld] = %g, want %g\n", kcpu_dtype_name(t),
                        (long long)i, (double)a[i], want);
                PD_CHECK(0);
                break;
            }
            /* quantization error bound per type: half a step of the block */
            double amax = 0, mn = INFINITY, mx = -INFINITY;
            for (int j = 0; j < 32; j++) {
                double v = x[i / 32 * 32 + j];
                amax = fmax(amax, fabs(v));
                mn = fmin(mn, v);
                mx = fmax(mx, v);
            }
            double tol;
            switch (t) {
            case KCPU_DTYPE_F32: tol = 0; break;
            case KCPU_DTYPE_F16: tol = fabs(x[i]) * 1e-3; break;
            case KCPU_DTYPE_BF16: tol = fabs(x[i]) * 8e-3; break;
            case KCPU_DTYPE_Q8_0: tol = amax / 127 * 0.51 + amax * 1e-3; break;
            case KCPU_DTYPE_Q4_0: tol = amax / 8 * 1.01 + amax * 1e-3; break; /* -8..7: +max clips */
            default: tol = (mx - mn) / 15 * 0.51 + amax * 2e-3; break;
            }
            if (fabs(a[i] - x[i]) > tol + 1e-30) {
                fprintf(stderr, "  %s roundtrip[%lld]: %g vs %g\n", kcpu_dtype_name(t), (long long)i,
                        (double)a[i], (double)x[i]);
                PD_CHECK(0);
                break;
            }
        }
        free(x); free(q); free(a); free(b);
    }
    PD_CHECK_STATUS(kcpu_quant_row(KCPU_DTYPE_Q8_0, NULL, NULL, 31), PD_ERR_INVAL);
}

/* K-quants against golden blocks dequantized by the gguf Python package
 * (tests/data/kcpu/make_kquant_golden.py), then a matmul on them in both modes. */
PD_TEST(test_kquants_golden)
{
    const char *root = getenv("PD_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof(path), "%s/tests/data/kcpu/kquant_golden.bin", root ? root : ".");
    FILE *f = fopen(path, "rb");
    PD_CHECK(f != NULL);
    if (f == NULL)
        return;
    for (int rep = 0; rep < 2; rep++) {
        uint32_t hdr[2];
        PD_CHECK(fread(hdr, 4, 2, f) == 2);
        kcpu_dtype_t t = (kcpu_dtype_t)hdr[0];
        int64_t nb = hdr[1], n = nb * 256;
        size_t bb = kcpu_dtype_block_bytes(t), rb;
        PD_CHECK(t == (rep ? KCPU_DTYPE_Q6_K : KCPU_DTYPE_Q4_K) && nb > 0 && nb < 100);
        if (bb == 0 || nb <= 0 || nb >= 100)
            break;
        uint8_t *blocks = malloc(bb * (size_t)nb);
        float *want = malloc(sizeof(float) * (size_t)n), *got = poisoned(n);
        PD_CHECK(fread(blocks, bb, (size_t)nb, f) == (size_t)nb);
        PD_CHECK(fread(want, 4, (size_t)n, f) == (size_t)n);
        kcpu_dequant_row(t, blocks, got, n);
        PD_CHECK(memcmp(got, want, sizeof(float) * (size_t)n) == 0); /* bit-exact */
        /* matmul: W = the blocks as N = nb/2 rows of K = 512 */
        const int64_t K = 512, N = nb / 2, M = 3;
        PD_CHECK_STATUS(kcpu_dtype_row_bytes(t, K, &rb), PD_OK);
        float *x = rnd_vec(M * K, -1, 1), *y = poisoned(M * N), *y2 = poisoned(M * N);
        double *ref = malloc(sizeof(double) * (size_t)(M * N));
        for (int64_t m = 0; m < M; m++)
            for (int64_t j = 0; j < N; j++) {
                double acc = 0;
                for (int64_t k = 0; k < K; k++)
                    acc += (double)x[m * K + k] * want[j * K + k];
                ref[m * N + j] = acc;
            }
        for (int mode = 0; mode < 2; mode++) {
            poison(y, M * N);
            PD_CHECK_STATUS(kcpu_matmul(pool2_g, x, M, K, K, blocks, t, N, NULL, y, N, (kcpu_mm_mode_t)mode), PD_OK);
            PD_CHECK_STATUS(kcpu_matmul(pool1_g, x, M, K, K, blocks, t, N, NULL, y2, N, (kcpu_mm_mode_t)mode), PD_OK);
            PD_CHECK(memcmp(y, y2, sizeof(float) * (size_t)(M * N)) == 0);
            PD_CHECK(close_enough(kcpu_dtype_name(t), y, ref, M * N, 1e-4, 1e-5));
        }
        PD_CHECK_STATUS(kcpu_quant_row(t, x, blocks, 256), PD_ERR_UNSUPPORTED);
        free(blocks); free(want); free(got); free(x); free(y); free(y2); free(ref);
    }
    fclose(f);
}

/* ---- matmul ---- */

typedef struct {
    int64_t M, N, K;
} mm_shape_t;

static void ref_matmul(const float *x, int64_t ldx, const void *w, kcpu_dtype_t t, size_t rb,
                       const float *bias, int64_t M, int64_t N, int64_t K, double *y, double *mag)
{
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = 0, a = 0;
            const uint8_t *row = (const uint8_t *)w + rb * (size_t)n;
            for (int64_t k = 0; k < K; k++) {
                double wv = ref_weight(t, row, k);
                s += (double)x[m * ldx + k] * wv;
                a += fabs((double)x[m * ldx + k] * wv);
            }
            y[m * N + n] = s + (bias ? bias[n] : 0.0);
            mag[m * N + n] = a + (bias ? fabs(bias[n]) : 0.0);
        }
}

/* bound for FAST mode: each activation moves by at most half a Q8 step of its block */
static double fast_bound(const float *xr, const void *wrow, kcpu_dtype_t t, int64_t K)
{
    double b = 0;
    for (int64_t k0 = 0; k0 < K; k0 += 32) {
        double amax = 0, wsum = 0;
        for (int j = 0; j < 32; j++) {
            amax = fmax(amax, fabs(xr[k0 + j]));
            wsum += fabs(ref_weight(t, wrow, k0 + j));
        }
        b += amax / 127.0 * 0.5 * wsum;
    }
    return b * 1.001;
}

static void run_matmul_case(kcpu_dtype_t t, int64_t M, int64_t N, int64_t K, bool with_bias,
                            int64_t pad)
{
    size_t rb;
    int64_t ldx = K + pad, ldy = N + pad;
    void *w = rnd_weights(t, N, K, &rb);
    float *x = rnd_vec(M * ldx, -2.0f, 2.0f);
    float *bias = with_bias ? rnd_vec(N, -1.0f, 1.0f) : NULL;
    double *ref = malloc(sizeof(double) * (size_t)(M * N)), *mag = malloc(sizeof(double) * (size_t)(M * N));
    float *y = poisoned(M * ldy), *y2 = poisoned(M * ldy), *yd = malloc(sizeof(float) * (size_t)(M * N));
    char what[128];

    ref_matmul(x, ldx, w, t, rb, bias, M, N, K, ref, mag);
    for (int simd = 0; simd < 2; simd++) {
        kcpu_set_simd(simd);
        for (int mode = 0; mode < 2; mode++) {
            poison(y, M * ldy);
            poison(y2, M * ldy);
            PD_CHECK_STATUS(kcpu_matmul(pool1_g, x, M, K, ldx, w, t, N, bias, y, ldy, (kcpu_mm_mode_t)mode), PD_OK);
            PD_CHECK_STATUS(kcpu_matmul(pool2_g, x, M, K, ldx, w, t, N, bias, y2, ldy, (kcpu_mm_mode_t)mode), PD_OK);
            /* determinism across thread counts, and padding left untouched (NaN) */
            for (int64_t m = 0; m < M; m++) {
                PD_CHECK(memcmp(y + m * ldy, y2 + m * ldy, sizeof(float) * (size_t)N) == 0);
                for (int64_t j = N; j < ldy; j++)
                    PD_CHECK(isnan(y[m * ldy + j]));
                memcpy(yd + m * N, y + m * ldy, sizeof(float) * (size_t)N);
            }
            /* batch invariance: each row alone gives bitwise the same output */
            for (int64_t m = 0; m < M; m += (M > 4 ? 5 : 1)) {
                float *y1 = poisoned(N);
                PD_CHECK_STATUS(kcpu_matmul(pool2_g, x + m * ldx, 1, K, K, w, t, N, bias, y1, N,
                                            (kcpu_mm_mode_t)mode), PD_OK);
                if (memcmp(y1, y + m * ldy, sizeof(float) * (size_t)N) != 0) {
                    fprintf(stderr, "  matmul %s mode %d: row %lld alone differs from M=%lld\n",
                            kcpu_dtype_name(t), mode, (long long)m, (long long)M);
                    PD_CHECK(0);
                }
                free(y1);
            }
            snprintf(what, sizeof(what), "matmul %s M=%lld N=%lld K=%lld simd=%d mode=%d",
                     kcpu_dtype_name(t), (long long)M, (long long)N, (long long)K, simd, mode);
            if (mode == KCPU_MM_FAST && is_quant(t)) {
                for (int64_t m = 0; m < M; m++)
                    for (int64_t n = 0; n < N; n++) {
                        double bnd = fast_bound(x + m * ldx, (const uint8_t *)w + rb * (size_t)n, t, K) +
                                     1e-5 * mag[m * N + n];
                        double d = fabs(yd[m * N + n] - ref[m * N + n]);
                        if (!(d <= bnd)) {
                            fprintf(stderr, "  %s: [%lld,%lld] got %g want %g bound %g\n", what,
                                    (long long)m, (long long)n, (double)yd[m * N + n], ref[m * N + n], bnd);
                            PD_CHECK(0);
                            m = M;
                            break;
                        }
                    }
            } else {
                /* f32 accumulation of exactly decoded weights: relative to sum |x w| */
                for (int64_t i = 0; i < M * N; i++) {
                    double d = fabs(yd[i] - ref[i]);
                    if (!(d <= 2e-6 * mag[i] + 1e-6)) {
                        fprintf(stderr, "  %s: [%lld] got %.9g want %.9g\n", what, (long long)i,
                                (double)yd[i], ref[i]);
                        PD_CHECK(0);
                        break;
                    }
                }
            }
        }
    }
    kcpu_set_simd(true);
    free(w); free(x); free(bias); free(ref); free(mag); free(y); free(y2); free(yd);
}

PD_TEST(test_matmul)
{
    static const int64_t Ms[] = {1, 3, 17};
    static const int64_t Ns[] = {1, 7, 33};
    for (size_t ti = 0; ti < PD_ARRAY_SIZE(all_types); ti++) {
        kcpu_dtype_t t = all_types[ti];
        const int64_t Ks_q[] = {32, 96, 160};
        const int64_t Ks_f[] = {5, 37, 96};
        const int64_t *Ks = is_quant(t) ? Ks_q : Ks_f;
        for (int mi = 0; mi < 3; mi++)
            for (int ni = 0; ni < 3; ni++)
                for (int ki = 0; ki < 3; ki++)
                    run_matmul_case(t, Ms[mi], Ns[ni], Ks[ki], (mi + ni + ki) % 2 == 0,
                                    (mi + ki) % 3 == 1 ? 3 : 0);
    }
    /* larger shapes to span several tiles per thread */
    run_matmul_case(KCPU_DTYPE_Q4_1, 5, 130, 576, true, 0);
    run_matmul_case(KCPU_DTYPE_Q8_0, 1, 257, 576, false, 0);
    run_matmul_case(KCPU_DTYPE_F32, 9, 67, 203, true, 1);
    run_matmul_case(KCPU_DTYPE_Q4_1, 33, 70, 128, true, 0); /* M past every tile/path size */
}

PD_TEST(test_matmul_errors)
{
    float x[64] = {0}, y[64];
    uint8_t w[256] = {0};
    PD_CHECK_STATUS(kcpu_matmul(NULL, x, 1, 33, 33, w, KCPU_DTYPE_Q8_0, 1, NULL, y, 1, KCPU_MM_EXACT), PD_ERR_INVAL);
    PD_CHECK_STATUS(kcpu_matmul(NULL, x, 1, 32, 31, w, KCPU_DTYPE_F32, 1, NULL, y, 1, KCPU_MM_EXACT), PD_ERR_INVAL);
    PD_CHECK_STATUS(kcpu_matmul(NULL, x, 1, 32, 32, w, (kcpu_dtype_t)6, 1, NULL, y, 1, KCPU_MM_EXACT), PD_ERR_UNSUPPORTED);
    PD_CHECK_STATUS(kcpu_matmul(NULL, x, 1, 32, 32, w, KCPU_DTYPE_Q6_K, 1, NULL, y, 1, KCPU_MM_EXACT), PD_ERR_INVAL);
    PD_CHECK_STATUS(kcpu_matmul(NULL, x, 0, 32, 32, w, KCPU_DTYPE_F32, 1, NULL, y, 1, KCPU_MM_EXACT), PD_OK);
}

/* ---- pool ---- */

static void count_task(void *arg, int64_t b, int64_t e, int tid)
{
    int *hits = arg;
    for (int64_t i = b; i < e; i++)
        __atomic_add_fetch(&hits[i], 1, __ATOMIC_RELAXED);
}

PD_TEST(test_pool)
{
    kcpu_pool_t *p3 = NULL;
    PD_CHECK_STATUS(kcpu_pool_create(3, &p3), PD_OK);
    PD_CHECK_EQ_INT(kcpu_pool_n_threads(p3), 3);
    PD_CHECK_EQ_INT(kcpu_pool_n_threads(NULL), 1);
    int hits[1000];
    kcpu_pool_t *pools[] = {NULL, pool1_g, pool2_g, p3};
    for (int pi = 0; pi < 4; pi++)
        for (int64_t n = 0; n < 1000; n += 1 + n / 3)
            for (int64_t g = 0; g < 9; g += 4) {
                memset(hits, 0, sizeof(hits));
                kcpu_pool_run(pools[pi], n, g, count_task, hits);
                for (int64_t i = 0; i < 1000; i++)
                    if (hits[i] != (i < n)) {
                        PD_CHECK(0);
                        i = 1000;
                    }
            }
    /* many tiny jobs back to back: hand-off races would lose or repeat items */
    for (int r = 0; r < 20000; r++) {
        memset(hits, 0, 16 * sizeof(int));
        kcpu_pool_run(p3, 16, 1, count_task, hits);
        int s = 0;
        for (int i = 0; i < 16; i++)
            s += hits[i];
        if (s != 16) {
            PD_CHECK(0);
            break;
        }
    }
    kcpu_pool_destroy(p3);
    kcpu_pool_destroy(NULL);
}

/* ---- norms ---- */

PD_TEST(test_norms)
{
    static const int64_t Ds[] = {1, 7, 64, 577};
    for (int di = 0; di < 4; di++)
        for (int64_t T = 1; T <= 5; T += 2) {
            int64_t D = Ds[di];
            float *x = rnd_vec(T * D, -3, 3), *w = rnd_vec(D, -2, 2), *b = rnd_vec(D, -1, 1);
            float *res = rnd_vec(T * D, -3, 3), *res2 = malloc(sizeof(float) * (size_t)(T * D));
            float *out = poisoned(T * D);
            double *ref = malloc(sizeof(double) * (size_t)(T * D));
            double *refres = malloc(sizeof(double) * (size_t)(T * D));
            const float eps = 1e-5f;
            for (int kind = 0; kind < 4; kind++) { /* rms, add_rms, ln, add_ln */
                bool add = kind & 1, ln = kind >> 1;
                memcpy(res2, res, sizeof(float) * (size_t)(T * D));
                for (int64_t t = 0; t < T; t++) {
                    double mean = 0, var = 0, ss = 0;
                    double *v = refres + t * D;
                    for (int64_t i = 0; i < D; i++)
                        v[i] = add ? (double)(float)(res[t * D + i] + x[t * D + i]) : x[t * D + i];
                    for (int64_t i = 0; i < D; i++) {
                        mean += v[i];
                        ss += v[i] * v[i];
                    }
                    mean /= D;
                    for (int64_t i = 0; i < D; i++)
                        var += (v[i] - mean) * (v[i] - mean);
                    var /= D;
                    for (int64_t i = 0; i < D; i++)
                        ref[t * D + i] = ln ? (v[i] - mean) / sqrt(var + eps) * w[i] + b[i]
                                            : v[i] / sqrt(ss / D + eps) * w[i];
                }
                poison(out, T * D);
                kcpu_pool_t *pool = kind % 2 ? pool2_g : pool1_g;
                switch (kind) {
                case 0: kcpu_rmsnorm(pool, x, w, out, T, D, eps); break;
                case 1: kcpu_add_rmsnorm(pool, res2, x, w, out, T, D, eps); break;
                case 2: kcpu_layernorm(pool, x, w, b, out, T, D, eps); break;
                default: kcpu_add_layernorm(pool, res2, x, w, b, out, T, D, eps); break;
                }
                PD_CHECK(close_enough(ln ? "layernorm" : "rmsnorm", out, ref, T * D, 1e-5, 1e-5));
                if (add)
                    PD_CHECK(close_enough("residual", res2, refres, T * D, 0, 0));
            }
            /* in place */
            memcpy(res2, x, sizeof(float) * (size_t)(T * D));
            kcpu_rmsnorm(pool2_g, res2, w, res2, T, D, eps);
            kcpu_rmsnorm(NULL, x, w, out, T, D, eps);
            PD_CHECK(memcmp(res2, out, sizeof(float) * (size_t)(T * D)) == 0);
            free(x); free(w); free(b); free(res); free(res2); free(out); free(ref); free(refres);
        }
}

/* ---- rope ---- */

PD_TEST(test_rope_inv_freq)
{
    float f[64], af = 0;
    PD_CHECK_STATUS(kcpu_rope_inv_freq(10000.0f, 128, NULL, 0, f, &af), PD_OK);
    PD_CHECK(af == 1.0f);
    for (int i = 0; i < 64; i++)
        PD_CHECK(fabs(f[i] - pow(10000.0, -2.0 * i / 128)) <= 1e-6 * pow(10000.0, -2.0 * i / 128));
    kcpu_rope_scaling_t lin = { .type = KCPU_ROPE_SCALING_LINEAR, .factor = 4.0f };
    PD_CHECK_STATUS(kcpu_rope_inv_freq(10000.0f, 128, &lin, 0, f, NULL), PD_OK);
    PD_CHECK(fabs(f[3] - pow(10000.0, -6.0 / 128) / 4) < 1e-7);
    /* llama 3.1: theta 500000, factor 8, low 1, high 4, original 8192 */
    kcpu_rope_scaling_t l3 = { .type = KCPU_ROPE_SCALING_LLAMA3, .factor = 8.0f, .low_freq_factor = 1.0f,
                               .high_freq_factor = 4.0f, .original_max_position = 8192 };
    PD_CHECK_STATUS(kcpu_rope_inv_freq(500000.0f, 128, &l3, 0, f, NULL), PD_OK);
    for (int i = 0; i < 64; i++) {
        double base = pow(500000.0, -2.0 * i / 128), wl = 2 * M_PI / base, want;
        if (wl < 8192.0 / 4)
            want = base;
        else if (wl > 8192.0)
            want = base / 8;
        else {
            double s = (8192.0 / wl - 1) / (4 - 1);
            want = (1 - s) * base / 8 + s * base;
        }
        if (fabs(f[i] - want) > 2e-6 * want) {
            fprintf(stderr, "  llama3 inv_freq[%d] %g want %g\n", i, (double)f[i], want);
            PD_CHECK(0);
        }
    }
    /* dynamic NTK: unchanged up to the original length, larger base beyond */
    kcpu_rope_scaling_t dyn = { .type = KCPU_ROPE_SCALING_DYNAMIC, .factor = 2.0f, .original_max_position = 2048 };
    float g[32];
    PD_CHECK_STATUS(kcpu_rope_inv_freq(10000.0f, 64, &dyn, 1000, f, NULL), PD_OK);
    PD_CHECK_STATUS(kcpu_rope_inv_freq(10000.0f, 64, NULL, 0, g, NULL), PD_OK);
    PD_CHECK(memcmp(f, g, 32 * sizeof(float)) == 0);
    PD_CHECK_STATUS(kcpu_rope_inv_freq(10000.0f, 64, &dyn, 4096, f, NULL), PD_OK);
    double nb = 10000.0 * pow(2.0 * 4096 / 2048 - 1, 64.0 / 62);
    PD_CHECK(fabs(f[5] - pow(nb, -10.0 / 64)) < 1e-6 * pow(nb, -10.0 / 64));
    /* YaRN (HF _compute_yarn_parameters): factor 4, original 4096, beta 32/1 */
    kcpu_rope_scaling_t yarn = { .type = KCPU_ROPE_SCALING_YARN, .factor = 4.0f, .original_max_position = 4096 };
    PD_CHECK_STATUS(kcpu_rope_inv_freq(10000.0f, 64, &yarn, 0, f, &af), PD_OK);
    PD_CHECK(fabs(af - (0.1 * log(4.0) + 1.0)) < 1e-6);
    {
        double lo = floor(64 * log(4096 / (32 * 2 * M_PI)) / (2 * log(10000.0)));
        double hi = ceil(64 * log(4096 / (1 * 2 * M_PI)) / (2 * log(10000.0)));
        lo = fmax(lo, 0);
        hi = fmin(hi, 63);
        for (int i = 0; i < 32; i++) {
            double pf = pow(10000.0, 2.0 * i / 64), ramp = fmin(fmax((i - lo) / (hi - lo), 0), 1);
            double want = 1 / (4 * pf) * ramp + 1 / pf * (1 - ramp);
            if (fabs(f[i] - want) > 2e-6 * want) {
                fprintf(stderr, "  yarn inv_freq[%d] %g want %g\n", i, (double)f[i], want);
                PD_CHECK(0);
            }
        }
    }
    yarn.attention_factor = 0.5f;
    PD_CHECK_STATUS(kcpu_rope_inv_freq(10000.0f, 64, &yarn, 0, f, &af), PD_OK);
    PD_CHECK(af == 0.5f);
    PD_CHECK_STATUS(kcpu_rope_inv_freq(10000.0f, 63, NULL, 0, f, NULL), PD_ERR_INVAL);
}

PD_TEST(test_rope)
{
    const int hd = 64, nh = 3, nkv = 2;
    const int64_t T = 5;
    int32_t pos[5] = {0, 1, 7, 300, 4095};
    for (int style = 0; style < 2; style++)
        for (int rot = 16; rot <= hd; rot += 48) { /* partial (16) and full (64) */
            float inv[32];
            PD_CHECK_STATUS(kcpu_rope_inv_freq(10000.0f, rot, NULL, 0, inv, NULL), PD_OK);
            int64_t qs = nh * hd + 5, ks = nkv * hd;
            float *q = rnd_vec(T * qs, -1, 1), *k = rnd_vec(T * ks, -1, 1);
            float *q2 = malloc(sizeof(float) * (size_t)(T * qs)), *k2 = malloc(sizeof(float) * (size_t)(T * ks));
            memcpy(q2, q, sizeof(float) * (size_t)(T * qs));
            memcpy(k2, k, sizeof(float) * (size_t)(T * ks));
            PD_CHECK_STATUS(kcpu_rope(pool2_g, q2, qs, k2, ks, pos, T, nh, nkv, hd, rot, inv, 1.0f,
                                      (kcpu_rope_style_t)style), PD_OK);
            for (int which = 0; which < 2; which++) {
                float *src = which ? k : q, *got = which ? k2 : q2;
                int64_t st = which ? ks : qs;
                int heads = which ? nkv : nh;
                for (int64_t t = 0; t < T; t++)
                    for (int h = 0; h < heads; h++) {
                        const float *x = src + t * st + h * hd;
                        const float *y = got + t * st + h * hd;
                        for (int i = 0; i < hd; i++) {
                            double want;
                            if (i >= rot) {
                                want = x[i];
                            } else {
                                int half = rot / 2, j, partner, sign;
                                if (style == KCPU_ROPE_NEOX) {
                                    j = i % half;
                                    partner = i < half ? i + half : i - half;
                                    sign = i < half ? -1 : 1;
                                } else {
                                    j = i / 2;
                                    partner = i ^ 1;
                                    sign = i % 2 == 0 ? -1 : 1;
                                }
                                double ang = (double)(float)((float)pos[t] * inv[j]);
                                want = x[i] * cos(ang) + sign * x[partner] * sin(ang);
                            }
                            if (fabs(y[i] - want) > 2e-6) {
                                fprintf(stderr, "  rope style %d rot %d t %lld h %d i %d: %g want %g\n",
                                        style, rot, (long long)t, h, i, (double)y[i], want);
                                PD_CHECK(0);
                                h = heads; t = T;
                                break;
                            }
                        }
                    }
                /* the padding after the heads is untouched */
                if (!which)
                    for (int64_t t = 0; t < T; t++)
                        PD_CHECK(memcmp(q + t * qs + nh * hd, q2 + t * qs + nh * hd, 5 * sizeof(float)) == 0);
            }
            free(q); free(k); free(q2); free(k2);
        }
    float inv[8] = {1};
    PD_CHECK_STATUS(kcpu_rope(NULL, inv, 8, NULL, 0, pos, 1, 1, 1, 8, 10, inv, 1.0f, KCPU_ROPE_NEOX), PD_ERR_INVAL);
}

/* ---- element-wise ---- */

PD_TEST(test_activations)
{
    const int64_t T = 3, I = 37;
    float *gu = rnd_vec(T * 2 * I, -6, 6), *out = poisoned(T * I);
    double *ref = malloc(sizeof(double) * (size_t)(T * I * 2));
    for (int act = 0; act < 3; act++) {
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < I; i++) {
                double g = gu[t * 2 * I + i], u = gu[t * 2 * I + I + i], a;
                if (act == 0)
                    a = g / (1 + exp(-g));
                else if (act == 1)
                    a = 0.5 * g * (1 + erf(g / sqrt(2.0)));
                else
                    a = 0.5 * g * (1 + tanh(sqrt(2 / M_PI) * (g + 0.044715 * g * g * g)));
                ref[t * I + i] = a * u;
            }
        poison(out, T * I);
        if (act == 0)
            kcpu_silu_and_mul(pool2_g, gu, 2 * I, gu + I, 2 * I, out, T, I);
        else
            kcpu_gelu_and_mul(pool2_g, gu, 2 * I, gu + I, 2 * I, out, T, I, act == 2);
        PD_CHECK(close_enough("glu", out, ref, T * I, 1e-6, 1e-5));
    }
    const int64_t n = 101;
    float *x = rnd_vec(n, -5, 5), *y = rnd_vec(n, -5, 5), *o = poisoned(n);
    for (int op = 0; op < 6; op++) {
        for (int64_t i = 0; i < n; i++) {
            double v = x[i];
            switch (op) {
            case 0: ref[i] = v > 0 ? v : 0; break;
            case 1: ref[i] = (double)(float)(x[i] + y[i]); break;
            case 2: ref[i] = (double)(float)(x[i] * 0.37f); break;
            case 3: ref[i] = 0.5 * v * (1 + erf(v / sqrt(2.0))); break;
            case 4: ref[i] = 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))); break;
            default: ref[i] = v / (1 + exp(-v)); break;
            }
        }
        poison(o, n);
        switch (op) {
        case 0: kcpu_relu(x, o, n); break;
        case 1: kcpu_add(x, y, o, n); break;
        case 2: kcpu_scale(x, 0.37f, o, n); break;
        case 3: kcpu_gelu(x, o, n, false); break;
        case 4: kcpu_gelu(x, o, n, true); break;
        default: kcpu_silu(x, o, n); break;
        }
        PD_CHECK(close_enough("eltwise", o, ref, n, 1e-6, 1e-5));
    }
    /* bias */
    memcpy(o, x, sizeof(float) * 100);
    kcpu_add_bias(o, y, 4, 25);
    for (int i = 0; i < 100; i++)
        ref[i] = (double)(float)(x[i] + y[i % 25]);
    PD_CHECK(close_enough("bias", o, ref, 100, 0, 0));
    free(gu); free(out); free(ref); free(x); free(y); free(o);
}

PD_TEST(test_embedding)
{
    const int64_t V = 11, D = 64;
    int32_t ids[4] = {0, 10, 3, 3};
    for (size_t ti = 0; ti < PD_ARRAY_SIZE(all_types); ti++) {
        kcpu_dtype_t t = all_types[ti];
        size_t rb;
        void *tab = rnd_weights(t, V, D, &rb);
        float *out = poisoned(4 * D);
        double ref[4 * 64];
        PD_CHECK_STATUS(kcpu_embedding(tab, t, V, D, ids, 4, out), PD_OK);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < D; j++)
                ref[i * D + j] = ref_weight(t, (const uint8_t *)tab + rb * (size_t)ids[i], j);
        PD_CHECK(close_enough("embedding", out, ref, 4 * D, 0, 1e-7));
        int32_t bad[2] = {1, 11};
        poison(out, 4 * D);
        PD_CHECK_STATUS(kcpu_embedding(tab, t, V, D, bad, 2, out), PD_ERR_RANGE);
        PD_CHECK(isnan(out[0]));
        bad[1] = -1;
        PD_CHECK_STATUS(kcpu_embedding(tab, t, V, D, bad, 2, out), PD_ERR_RANGE);
        free(tab); free(out);
    }
}

PD_TEST(test_softmax_argmax)
{
    const int64_t T = 3, n = 1001;
    float *x = rnd_vec(T * n, -20, 20), *o = poisoned(T * n);
    double *ref = malloc(sizeof(double) * (size_t)(T * n));
    x[5] = -INFINITY;
    for (int lg = 0; lg < 2; lg++) {
        for (int64_t t = 0; t < T; t++) {
            double mx = -INFINITY, s = 0;
            for (int64_t i = 0; i < n; i++)
                mx = fmax(mx, x[t * n + i]);
            for (int64_t i = 0; i < n; i++)
                s += exp(x[t * n + i] - mx);
            for (int64_t i = 0; i < n; i++)
                ref[t * n + i] = lg ? x[t * n + i] - mx - log(s) : exp(x[t * n + i] - mx) / s;
        }
        poison(o, T * n);
        if (lg)
            kcpu_log_softmax(x, o, T, n);
        else
            kcpu_softmax(x, o, T, n);
        PD_CHECK(lg ? isinf(o[5]) && o[5] < 0 : o[5] == 0.0f);
        ref[5] = lg ? 0 : 0;
        if (lg)
            o[5] = 0;
        PD_CHECK(close_enough(lg ? "log_softmax" : "softmax", o, ref, T * n, 1e-6, 1e-5));
    }
    float allm[3] = {-INFINITY, -INFINITY, -INFINITY}, allo[3];
    kcpu_softmax(allm, allo, 1, 3);
    PD_CHECK(allo[0] == 0.0f && allo[1] == 0.0f && allo[2] == 0.0f);
    kcpu_log_softmax(allm, allo, 1, 3);
    PD_CHECK(isinf(allo[0]) && allo[0] < 0 && isinf(allo[2]));
    float a[8] = {1, 3, NAN, 3, -INFINITY, 2, 0, 3};
    int32_t idx[2] = {-1, -1};
    kcpu_argmax(a, 1, 8, idx);
    PD_CHECK_EQ_INT(idx[0], 1);
    float b[6] = {NAN, NAN, NAN, -1, -2, -0.5f};
    kcpu_argmax(b, 2, 3, idx);
    PD_CHECK_EQ_INT(idx[0], 0);
    PD_CHECK_EQ_INT(idx[1], 2);
    free(x); free(o); free(ref);
}

/* ---- KV cache and paged attention ---- */

PD_TEST(test_kv_write_layout)
{
    kcpu_kv_layout_t L;
    PD_CHECK_STATUS(kcpu_kv_layout_init(&L, KCPU_DTYPE_F32, 3, 4, 2, 5, 6), PD_OK);
    PD_CHECK_EQ_INT(L.block_bytes, 3 * 2 * 4 * 2 * 5 * 4);
    float *cache = poisoned((int64_t)(L.block_bytes / 4 * 6));
    const int64_t T = 4;
    int64_t slots[4] = {0, 9, -1, 23};
    float *k = rnd_vec(T * 10, -1, 1), *v = rnd_vec(T * 12, -1, 1);
    PD_CHECK_STATUS(kcpu_kv_write(&L, cache, 2, slots, T, k, 10, v, 12), PD_OK);
    for (int64_t t = 0; t < T; t++) {
        if (slots[t] < 0)
            continue;
        int64_t b = slots[t] / 4, off = slots[t] % 4;
        /* [n_layers][2][block_size][n_kv_heads][head_dim] */
        const float *kd = cache + b * (3 * 2 * 4 * 10) + 2 * (2 * 4 * 10) + 0 * (4 * 10) + off * 10;
        const float *vd = cache + b * (3 * 2 * 4 * 10) + 2 * (2 * 4 * 10) + 1 * (4 * 10) + off * 10;
        PD_CHECK(memcmp(kd, k + t * 10, 40) == 0);
        PD_CHECK(memcmp(vd, v + t * 12, 40) == 0);
    }
    /* copy-on-write copies whole blocks */
    int32_t src[1] = {2}, dst[1] = {5};
    PD_CHECK_STATUS(kcpu_kv_copy_blocks(&L, cache, src, dst, 1), PD_OK);
    PD_CHECK(memcmp(cache + 5 * L.block_bytes / 4, cache + 2 * L.block_bytes / 4, L.block_bytes) == 0);
    dst[0] = 6;
    PD_CHECK_STATUS(kcpu_kv_copy_blocks(&L, cache, src, dst, 1), PD_ERR_RANGE);
    slots[0] = 24;
    PD_CHECK_STATUS(kcpu_kv_write(&L, cache, 0, slots, 1, k, 10, v, 12), PD_ERR_RANGE);
    PD_CHECK_STATUS(kcpu_kv_write(&L, cache, 3, slots, 1, k, 10, v, 12), PD_ERR_RANGE);
    PD_CHECK_STATUS(kcpu_kv_layout_init(&L, KCPU_DTYPE_Q8_0, 3, 4, 2, 5, 6), PD_ERR_UNSUPPORTED);
    free(cache); free(k); free(v);
}

typedef struct {
    int len;        /* tokens in cache after this step */
    int q_start;    /* first position queried this step */
} seq_spec_t;

static void run_attention_case(int block_size, int n_kv, int group, int hd, kcpu_dtype_t cdt,
                               bool causal, int window)
{
    const int n_layers = 2, layer = 1, nh = n_kv * group;
    /* a chunked prefill continuing after an earlier chunk, a decode token, a fresh prefill,
     * a 1-token sequence, and a long decode */
    seq_spec_t seqs[] = { {37, 20}, {70, 69}, {13, 0}, {1, 0}, {3 * block_size + 5, 3 * block_size + 4} };
    const int n_seqs = (int)PD_ARRAY_SIZE(seqs);
    int max_blocks = 0, total_blocks = 0, T = 0;
    for (int s = 0; s < n_seqs; s++) {
        int nb = (seqs[s].len + block_size - 1) / block_size;
        max_blocks = nb > max_blocks ? nb : max_blocks;
        total_blocks += nb;
        T += seqs[s].len - seqs[s].q_start;
    }
    total_blocks += 3; /* spare blocks never referenced */
    kcpu_kv_layout_t L;
    PD_CHECK_STATUS(kcpu_kv_layout_init(&L, cdt, n_layers, block_size, n_kv, hd, total_blocks), PD_OK);
    uint8_t *cache = malloc(L.block_bytes * (size_t)total_blocks);
    memset(cache, 0xff, L.block_bytes * (size_t)total_blocks); /* NaN in f32 and f16 */
    /* random permutation of block ids */
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)total_blocks);
    for (int i = 0; i < total_blocks; i++)
        perm[i] = i;
    for (int i = total_blocks - 1; i > 0; i--) {
        int j = rnd_int(i + 1), tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    int32_t *bt = malloc(sizeof(int32_t) * (size_t)(n_seqs * max_blocks));
    int used = 0;
    for (int s = 0; s < n_seqs; s++)
        for (int b = 0; b < max_blocks; b++)
            bt[s * max_blocks + b] = b * block_size < seqs[s].len ? perm[used++] : -1;
    /* dense K/V per sequence [len][n_kv*hd] (rounded to the cache dtype), written via kv_write */
    const int row = n_kv * hd;
    float **K = malloc(sizeof(float *) * (size_t)n_seqs), **Vv = malloc(sizeof(float *) * (size_t)n_seqs);
    int32_t ctx[8];
    for (int s = 0; s < n_seqs; s++) {
        int len = seqs[s].len;
        K[s] = rnd_vec((int64_t)len * row, -1, 1);
        Vv[s] = rnd_vec((int64_t)len * row, -1, 1);
        if (cdt == KCPU_DTYPE_F16)
            for (int64_t i = 0; i < (int64_t)len * row; i++) {
                K[s][i] = kcpu_f16_to_f32(kcpu_f32_to_f16(K[s][i]));
                Vv[s][i] = kcpu_f16_to_f32(kcpu_f32_to_f16(Vv[s][i]));
            }
        int64_t *slots = malloc(sizeof(int64_t) * (size_t)len);
        for (int p = 0; p < len; p++)
            slots[p] = (int64_t)bt[s * max_blocks + p / block_size] * block_size + p % block_size;
        /* write in two calls like an earlier chunk + this step */
        int cut = seqs[s].q_start;
        PD_CHECK_STATUS(kcpu_kv_write(&L, cache, layer, slots, cut, K[s], row, Vv[s], row), PD_OK);
        PD_CHECK_STATUS(kcpu_kv_write(&L, cache, layer, slots + cut, len - cut, K[s] + (int64_t)cut * row,
                                      row, Vv[s] + (int64_t)cut * row, row), PD_OK);
        free(slots);
        ctx[s] = len;
    }
    /* the batch: tokens of all sequences interleaved seq by seq */
    int32_t *tok_seq = malloc(sizeof(int32_t) * (size_t)T), *tok_pos = malloc(sizeof(int32_t) * (size_t)T);
    int ti = 0;
    for (int s = 0; s < n_seqs; s++)
        for (int p = seqs[s].q_start; p < seqs[s].len; p++) {
            tok_seq[ti] = s;
            tok_pos[ti] = p;
            ti++;
        }
    const int64_t qs = (int64_t)nh * hd + 3;
    float *q = rnd_vec(T * qs, -1, 1);
    float *out = poisoned(T * qs), *out2 = poisoned(T * qs);
    double *ref = malloc(sizeof(double) * (size_t)(T * nh * hd));
    float scale = 1.0f / sqrtf((float)hd);
    for (int t = 0; t < T; t++) {
        int s = tok_seq[t], pos = tok_pos[t];
        int hi = causal ? pos : seqs[s].len - 1;
        int lo = window > 0 ? pos - window + 1 : 0;
        if (lo < 0)
            lo = 0;
        for (int h = 0; h < nh; h++) {
            int kvh = h / group;
            const float *qv = q + (int64_t)t * qs + h * hd;
            double mx = -INFINITY, sum = 0;
            double *sc = malloc(sizeof(double) * (size_t)(hi + 1));
            for (int p = lo; p <= hi; p++) {
                double d = 0;
                for (int i = 0; i < hd; i++)
                    d += (double)qv[i] * K[s][(int64_t)p * row + kvh * hd + i];
                sc[p] = d * scale;
                mx = fmax(mx, sc[p]);
            }
            for (int p = lo; p <= hi; p++) {
                sc[p] = exp(sc[p] - mx);
                sum += sc[p];
            }
            for (int i = 0; i < hd; i++) {
                double o = 0;
                for (int p = lo; p <= hi; p++)
                    o += sc[p] * Vv[s][(int64_t)p * row + kvh * hd + i];
                ref[((int64_t)t * nh + h) * hd + i] = o / sum;
            }
            free(sc);
        }
    }
    kcpu_attn_params_t P = {
        .n_tokens = T, .q = q, .q_stride = qs, .out = out, .out_stride = qs,
        .tok_seq = tok_seq, .tok_pos = tok_pos, .n_seqs = n_seqs, .block_tables = bt,
        .max_blocks_per_seq = max_blocks, .context_lens = ctx, .n_heads = nh, .n_kv_heads = n_kv,
        .head_dim = hd, .scale = scale, .causal = causal, .sliding_window = window, .layer = layer,
        .cache_base = cache, .layout = &L,
    };
    for (int simd = 0; simd < 2; simd++) {
        kcpu_set_simd(simd);
        poison(out, T * qs);
        poison(out2, T * qs);
        P.out = out;
        PD_CHECK_STATUS(kcpu_paged_attention(pool1_g, &P), PD_OK);
        P.out = out2;
        PD_CHECK_STATUS(kcpu_paged_attention(pool2_g, &P), PD_OK);
        float *dense = malloc(sizeof(float) * (size_t)(T * nh * hd));
        for (int t = 0; t < T; t++) {
            PD_CHECK(memcmp(out + (int64_t)t * qs, out2 + (int64_t)t * qs, sizeof(float) * (size_t)(nh * hd)) == 0);
            PD_CHECK(isnan(out[(int64_t)t * qs + nh * hd])); /* padding untouched */
            memcpy(dense + (int64_t)t * nh * hd, out + (int64_t)t * qs, sizeof(float) * (size_t)(nh * hd));
        }
        char what[160];
        snprintf(what, sizeof(what), "attention bs=%d kv=%d group=%d hd=%d %s causal=%d window=%d simd=%d",
                 block_size, n_kv, group, hd, kcpu_dtype_name(cdt), causal, window, simd);
        if (!close_enough(what, dense, ref, T * nh * hd, 2e-6, 1e-5))
            PD_CHECK(0);
        free(dense);
    }
    kcpu_set_simd(true);
    /* batching independence: each token alone gives bitwise the same output as in the
     * batch (runs of tokens share K/V loads but must not change the arithmetic) */
    P.out = out;
    poison(out, T * qs);
    PD_CHECK_STATUS(kcpu_paged_attention(pool2_g, &P), PD_OK);
    for (int t = 0; t < T; t++) {
        kcpu_attn_params_t P1 = P;
        P1.n_tokens = 1;
        P1.q = q + (int64_t)t * qs;
        P1.out = out2;
        P1.tok_seq = tok_seq + t;
        P1.tok_pos = tok_pos + t;
        poison(out2, qs);
        /* odd tokens on 4 threads: fewer (token, KV head) items than threads, so the
         * kernel splits the GQA group into one item per query head */
        PD_CHECK_STATUS(kcpu_paged_attention(t % 2 ? pool4_g : NULL, &P1), PD_OK);
        if (memcmp(out2, out + (int64_t)t * qs, sizeof(float) * (size_t)(nh * hd)) != 0) {
            fprintf(stderr, "  attention: token %d alone differs from the batch\n", t);
            PD_CHECK(0);
            break;
        }
    }
    /* a position beyond the sequence's context is refused */
    if (causal) {
        int32_t save = tok_pos[0];
        tok_pos[0] = ctx[tok_seq[0]];
        P.out = out;
        PD_CHECK_STATUS(kcpu_paged_attention(NULL, &P), PD_ERR_RANGE);
        tok_pos[0] = save;
    }
    for (int s = 0; s < n_seqs; s++) {
        free(K[s]);
        free(Vv[s]);
    }
    free(K); free(Vv); free(cache); free(perm); free(bt); free(tok_seq); free(tok_pos);
    free(q); free(out); free(out2); free(ref);
}

PD_TEST(test_paged_attention)
{
    static const int bss[] = {8, 16, 32, 128};
    static const int groups[] = {1, 3, 4, 8};
    for (int bi = 0; bi < 4; bi++)
        for (int gi = 0; gi < 4; gi++)
            run_attention_case(bss[bi], gi % 2 ? 2 : 1, groups[gi], gi == 2 ? 40 : 64,
                               KCPU_DTYPE_F32, true, 0);
    run_attention_case(16, 3, 3, 64, KCPU_DTYPE_F16, true, 0);   /* SmolLM2 shape, f16 cache */
    run_attention_case(8, 2, 4, 32, KCPU_DTYPE_F32, true, 10);   /* sliding window */
    run_attention_case(16, 1, 2, 16, KCPU_DTYPE_F32, false, 0);  /* bidirectional */
}

PD_TEST(test_attention_errors)
{
    kcpu_kv_layout_t L;
    PD_CHECK_STATUS(kcpu_kv_layout_init(&L, KCPU_DTYPE_F32, 1, 16, 2, 8, 4), PD_OK);
    kcpu_attn_params_t P = { .n_tokens = 0, .n_heads = 3, .n_kv_heads = 2, .head_dim = 8,
                             .layout = &L, .q_stride = 24, .out_stride = 24, .n_seqs = 1,
                             .max_blocks_per_seq = 1 };
    PD_CHECK_STATUS(kcpu_paged_attention(NULL, &P), PD_ERR_INVAL); /* 3 % 2 */
    P.n_heads = 4;
    P.q_stride = P.out_stride = 32;
    PD_CHECK_STATUS(kcpu_paged_attention(NULL, &P), PD_OK);
    P.head_dim = 16;
    PD_CHECK_STATUS(kcpu_paged_attention(NULL, &P), PD_ERR_INVAL); /* layout mismatch */
    PD_CHECK_STATUS(kcpu_paged_attention(NULL, NULL), PD_ERR_INVAL);
}

/* ---- backend table ---- */

PD_TEST(test_backend_cpu)
{
    const eng_backend_ops_t *ops = eng_backend_get("cpu");
    eng_backend_t *be = NULL;
    PD_CHECK(ops != NULL && strcmp(ops->name, "cpu") == 0);
    PD_CHECK(eng_backend_get("no-such-backend") == NULL);
    if (ops == NULL)
        return;
    eng_backend_opts_t opts = { .n_threads = 2, .mm_mode = KCPU_MM_FAST };
    PD_CHECK_STATUS(ops->init(&opts, &be), PD_OK);
    PD_CHECK(eng_backend_cpu_pool(be) != NULL);
    size_t rb;
    void *w = rnd_weights(KCPU_DTYPE_Q4_1, 9, 64, &rb);
    float *x = rnd_vec(2 * 64, -1, 1), *want = poisoned(18), *got = NULL, *host = poisoned(18);
    void *dw = NULL, *dx = NULL;
    PD_CHECK_STATUS(ops->buf_alloc(be, rb * 9, &dw), PD_OK);
    PD_CHECK_STATUS(ops->buf_alloc(be, 2 * 64 * 4, &dx), PD_OK);
    PD_CHECK_STATUS(ops->buf_alloc(be, 18 * 4, (void **)&got), PD_OK);
    PD_CHECK_STATUS(ops->memcpy_h2d(be, dw, w, rb * 9), PD_OK);
    PD_CHECK_STATUS(ops->memcpy_h2d(be, dx, x, 2 * 64 * 4), PD_OK);
    PD_CHECK_STATUS(ops->matmul(be, dx, 2, 64, 64, dw, KCPU_DTYPE_Q4_1, 9, NULL, got, 9), PD_OK);
    PD_CHECK_STATUS(ops->synchronize(be), PD_OK);
    PD_CHECK_STATUS(ops->memcpy_d2h(be, host, got, 18 * 4), PD_OK);
    PD_CHECK_STATUS(kcpu_matmul(NULL, x, 2, 64, 64, w, KCPU_DTYPE_Q4_1, 9, NULL, want, 9, KCPU_MM_FAST), PD_OK);
    PD_CHECK(memcmp(want, host, 18 * 4) == 0);
    PD_CHECK_STATUS(ops->buf_alloc(be, 0, &dw), PD_ERR_INVAL);
    ops->buf_free(be, dx);
    ops->buf_free(be, got);
    ops->buf_free(be, dw);
    ops->buf_free(be, NULL);
    ops->shutdown(be);
    free(w); free(x); free(want); free(host);
}

int main(void)
{
    const char *seed_env = getenv("PD_TEST_SEED");
    /* the error paths tested below log on purpose; PD_TEST_VERBOSE=1 shows them */
    if (getenv("PD_TEST_VERBOSE") == NULL)
        pd_log_set_level(PD_LOG_LEVEL_CRIT);
    uint64_t seed = seed_env ? strtoull(seed_env, NULL, 0) : (uint64_t)time(NULL);
    rng_g = seed * 0x9e3779b97f4a7c15ull + 1;
    printf("test_kcpu: seed %llu (PD_TEST_SEED to replay), simd %s\n", (unsigned long long)seed,
           kcpu_simd_enabled() ? "available" : "off");
    if (kcpu_pool_create(1, &pool1_g) != PD_OK || kcpu_pool_create(2, &pool2_g) != PD_OK ||
        kcpu_pool_create(4, &pool4_g) != PD_OK)
        return 1;
    PD_RUN(test_f16_conversions);
    PD_RUN(test_dtype_sizes);
    PD_RUN(test_quant_dequant);
    PD_RUN(test_kquants_golden);
    PD_RUN(test_matmul);
    PD_RUN(test_matmul_errors);
    PD_RUN(test_pool);
    PD_RUN(test_norms);
    PD_RUN(test_rope_inv_freq);
    PD_RUN(test_rope);
    PD_RUN(test_activations);
    PD_RUN(test_embedding);
    PD_RUN(test_softmax_argmax);
    PD_RUN(test_kv_write_layout);
    PD_RUN(test_paged_attention);
    PD_RUN(test_attention_errors);
    PD_RUN(test_backend_cpu);
    kcpu_pool_destroy(pool1_g);
    kcpu_pool_destroy(pool2_g);
    kcpu_pool_destroy(pool4_g);
    return PD_TEST_REPORT();
}
