/*
 * emu_gemv.cpp - kcuda_gemv.cu as gen_emu.py rewrites it for the CPU (emu_cuda.h; the
 * no-allocate weight load replaced by a plain one), host memory standing in for device
 * memory, against a double-precision reference computed here from the same weight
 * bytes (bf16, f16, fp8 e4m3 decoded times its per-tensor scale).
 *  - kcuda_gemv_scaled: rows M 1, 2, 3, 5, 8; K 64 and 1040 (a ragged last round of
 *    chunks), N 37 / 150 / 40 (the 4-warps-a-column form at N <= 2048, K >= 1024);
 *    1, 2 and 4 warps a column forced and automatic; the weights through L1 or not, PDL
 *    (coherent activation loads) on and off; x and y with row strides wider than K and N.
 *  - kcuda_gemv_ex: the three fused forms the decode layer uses: RMSNorm prologue with a
 *    store (+ bias), RMSNorm prologue with the GLU epilogue (SiLU, GELU, GELU-tanh), the
 *    residual accumulate (+ bias); the norm at M <= 4 (KCUDA_GEMV_NORM_MAX_M).
 * y is NaN-poisoned beyond its M x N region (the row padding), which must stay NaN; the
 * region within 1e-4 of the reference relative to its largest value.  Prints
 * "N runs, M failures", exits 1 on any.
 */
#include "kcuda_gemv.cu"
#include <stdio.h>
#include <stdlib.h>


#define EMU_SEED 0x9e3779b97f4a7c15ull
#include "emu_test.h"
static int fails, runs;

/* one weight element of type wt from a float: its bytes into w[i], its value back */
static double wput(void *w, int64_t i, kcpu_dtype_t wt, float v)
{
    if (wt == KCPU_DTYPE_BF16) {
        __nv_bfloat16 b = __float2bfloat16(v);
        ((__nv_bfloat16 *)w)[i] = b;
        return (double)__bfloat162float(b);
    }
    if (wt == KCPU_DTYPE_F16) {
        __half h = __float2half(v);
        ((__half *)w)[i] = h;
        return (double)__half2float(h);
    }
    __nv_fp8_e4m3 e = __nv_fp8_e4m3(v * 200.0f); /* bytes spread over the e4m3 range */
    ((__nv_fp8_e4m3 *)w)[i] = e;
    return (double)(float)e;
}

static double act_ref(double g, int act)
{
    if (act == 0)
        return g / (1.0 + exp(-g));
    if (act == 1)
        return 0.5 * g * (1.0 + erf(g * 0.70710678118654752));
    return 0.5 * g * (1.0 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
}

typedef struct {
    kcpu_dtype_t wt;
    int M;
    int64_t K, N;
    int norm;          /* 1: RMSNorm prologue (gemv_ex) */
    int epi;           /* -1: kcuda_gemv_scaled; else kcuda_gemv_epi_t */
    int act, bias;
} gcase_t;

static void run_case(const gcase_t *g, const char *variant)
{
    const int M = g->M;
    const int64_t K = g->K, N = g->N, ldx = K + 8, outN = g->epi == KCUDA_GEMV_GLU ? N / 2 : N, ldy = outN + 5;
    float *x = (float *)aligned_alloc(16, sizeof(float) * (size_t)(M * ldx));
    void *w = aligned_alloc(16, (size_t)(N * K * 2));
    double *wd = (double *)malloc(sizeof(double) * (size_t)(N * K));
    float *nw = (float *)aligned_alloc(16, sizeof(float) * (size_t)K);
    float *bias = (float *)malloc(sizeof(float) * (size_t)N);
    float *y = (float *)malloc(sizeof(float) * (size_t)(M * ldy));
    double *ref = (double *)malloc(sizeof(double) * (size_t)(M * outN));
    float wscale = 0.0123f;
    const bool f8 = g->wt == KCUDA_W_FP8_E4M3;

    for (int64_t i = 0; i < (int64_t)M * ldx; i++)
        x[i] = frand() * 2.0f;
    for (int64_t i = 0; i < N * K; i++)
        wd[i] = wput(w, i, g->wt, frand()) * (f8 ? wscale : 1.0);
    for (int64_t i = 0; i < K; i++)
        nw[i] = 0.5f + frand() * 0.25f;
    for (int64_t i = 0; i < N; i++)
        bias[i] = g->bias ? frand() : 0.0f;
    for (int64_t i = 0; i < (int64_t)M * ldy; i++)
        y[i] = g->epi == KCUDA_GEMV_ACCUMULATE && i % ldy < outN ? frand() : NAN;

    /* the reference: d[m][n] = (rms-normed x) . w[n] (+ bias); then the epilogue */
    for (int m = 0; m < M; m++) {
        double inv = 1.0;
        if (g->norm) {
            double ss = 0.0;
            for (int64_t k = 0; k < K; k++)
                ss += (double)x[m * ldx + k] * x[m * ldx + k];
            inv = 1.0 / sqrt(ss / (double)K + 1e-5);
        }
        for (int64_t n = 0; n < outN; n++) {
            double d[2];
            for (int h = 0; h < (g->epi == KCUDA_GEMV_GLU ? 2 : 1); h++) {
                const int64_t row = n + h * outN;
                double s = 0.0;
                for (int64_t k = 0; k < K; k++)
                    s += (double)x[m * ldx + k] * (g->norm ? nw[k] * inv : 1.0) * wd[row * K + k];
                d[h] = s + bias[row];
            }
            ref[m * outN + n] = g->epi == KCUDA_GEMV_GLU        ? act_ref(d[0], g->act) * d[1]
                                : g->epi == KCUDA_GEMV_ACCUMULATE ? y[m * ldy + n] + d[0]
                                                                  : d[0];
        }
    }

    pd_status_t st;
    if (g->epi < 0) {
        st = kcuda_gemv_scaled(x, M, K, ldx, w, g->wt, f8 ? &wscale : nullptr, N, y, ldy, nullptr);
    } else {
        kcuda_gemv_ex_t a = {};
        a.x = x, a.M = M, a.K = K, a.ldx = ldx, a.w = w, a.wtype = g->wt, a.N = N;
        a.norm_w = g->norm ? nw : nullptr, a.eps = 1e-5f, a.bias = g->bias ? bias : nullptr;
        a.epi = (kcuda_gemv_epi_t)g->epi, a.glu_act = g->act, a.y = y, a.ldy = ldy;
        a.w_scale = f8 ? &wscale : nullptr;
        st = kcuda_gemv_ex(&a, nullptr);
    }
    runs++;
    double worst = 0.0, top = 1e-30;
    int bad = 0;
    for (int64_t i = 0; i < (int64_t)M * outN; i++)
        top = fmax(top, fabs(ref[i]));
    for (int m = 0; m < M; m++)
        for (int64_t n = 0; n < ldy; n++) {
            const float v = y[m * ldy + n];
            if (n >= outN) {
                bad += !isnan(v); /* the padding is not written */
                continue;
            }
            const double e = fabs((double)v - ref[m * outN + n]) / top;
            if (!(e <= 1e-4))
                bad++;
            worst = fmax(worst, isnan(e) ? INFINITY : e);
        }
    if (st != PD_OK || bad) {
        fails++;
        printf("  FAIL %s %s M=%d K=%lld N=%lld norm=%d epi=%d act=%d bias=%d: status %d, %d bad (worst %.2e)\n",
               variant, kcpu_dtype_name(g->wt), M, (long long)K, (long long)N, g->norm, g->epi, g->act, g->bias,
               (int)st, bad, worst);
    }
    free(x), free(w), free(wd), free(nw), free(bias), free(y), free(ref);
}

int main(void)
{
    const kcpu_dtype_t wts[3] = {KCPU_DTYPE_BF16, KCPU_DTYPE_F16, KCUDA_W_FP8_E4M3};
    const int Ms[5] = {1, 2, 3, 5, 8};
    const int64_t shapes[3][2] = {{64, 37}, {1040, 150}, {1024, 40}}; /* K, N */
    char variant[64];

    /* plain GEMVs: every row count and shape, automatic split; then each forced split,
     * and the load paths, on a subset */
    for (int wi = 0; wi < 3; wi++)
        for (int si = 0; si < 3; si++)
            for (int mi = 0; mi < 5; mi++) {
                gcase_t g = {wts[wi], Ms[mi], shapes[si][0], shapes[si][1], 0, -1, 0, 0};
                run_case(&g, "auto");
            }
    for (int ks = 1; ks <= 4; ks *= 2)
        for (int v = 0; v < 4; v++) {
            kcuda_gemv_set_ksplit(ks);
            kcuda_gemv_set_noalloc(v & 1);
            kcuda_gemv_set_pdl(v >> 1);
            snprintf(variant, sizeof(variant), "ks%d-na%d-pdl%d", ks, v & 1, v >> 1);
            for (int wi = 0; wi < 3; wi++) {
                gcase_t g = {wts[wi], ks == 2 ? 3 : 5, 1040, 150, 0, -1, 0, 0};
                run_case(&g, variant);
            }
        }
    kcuda_gemv_set_ksplit(0);
    kcuda_gemv_set_noalloc(-1);
    kcuda_gemv_set_pdl(-1);

    /* the fused forms */
    for (int wi = 0; wi < 3; wi++)
        for (int si = 0; si < 3; si++)
            for (int mi = 0; mi < 5; mi++) {
                const int M = Ms[mi];
                const int64_t K = shapes[si][0], N = shapes[si][1];
                if (M <= KCUDA_GEMV_NORM_MAX_M) {
                    gcase_t s = {wts[wi], M, K, N, 1, KCUDA_GEMV_STORE, 0, (int)(si & 1)};
                    run_case(&s, "norm+store");
                    gcase_t gl = {wts[wi], M, K, N + (N & 1), 1, KCUDA_GEMV_GLU, (mi + si) % 3, 0};
                    run_case(&gl, "norm+glu");
                }
                gcase_t acc = {wts[wi], M, K, N, 0, KCUDA_GEMV_ACCUMULATE, 0, (int)((si + mi) & 1)};
                run_case(&acc, "accumulate");
            }
    for (int ks = 1; ks <= 4; ks *= 2) {
        kcuda_gemv_set_ksplit(ks);
        snprintf(variant, sizeof(variant), "ks%d", ks);
        gcase_t gl = {KCPU_DTYPE_BF16, 3, 1040, 150, 1, KCUDA_GEMV_GLU, 0, 1};
        run_case(&gl, variant);
        gcase_t s = {KCUDA_W_FP8_E4M3, 2, 1040, 150, 1, KCUDA_GEMV_STORE, 0, 1};
        run_case(&s, variant);
    }
    kcuda_gemv_set_ksplit(0);
    printf("emulated gemv: %d runs, %d failures\n", runs, fails);
    return fails ? 1 : 0;
}
