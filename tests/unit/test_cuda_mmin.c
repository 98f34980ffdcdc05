/*
 * test_cuda_mmin.c - the CUDA backend's 16-bit matmul inputs (kcuda_mmin.cu through the
 * backend's mm_in_type / add_rmsnorm_mm / silu_and_mul_mm / matmul_mm):
 *  - add_rmsnorm_mm against kcpu_add_rmsnorm then rounding to bf16 / f16 on the host:
 *    the residual equal to 1e-6, each output within one unit of the last place of the
 *    reference (the f32 sums may round the other way), odd and large D, with and
 *    without the residual add;
 *  - silu_and_mul_mm against kcpu_silu_and_mul then rounding, fused [T, 2I] gate|up rows
 *    (the vector path) and odd I / unaligned rows (the scalar path);
 *  - to_mm equal, bit for bit, to rounding on the host (strided rows);
 *  - matmul_mm of a 16-bit x equal, bit for bit, to matmul of the f32 x it was rounded
 *    from (the same GEMM on the same operands), with a bias; with accumulate, y0 + that
 *    product (1e-5);
 *  - a whole prefill forward (tiny llama, bf16 weights, 40 tokens in 3 sequences) with
 *    the 16-bit inputs and residual adds in the GEMMs against the same forward with
 *    PD_CUDA_NO_MM16=1: logits within bf16 rounding of each other (5e-3 of max |logit|;
 *    since pfout the 16-bit path also rounds the gate|up GEMM's output to bf16, which a
 *    numpy emulation puts at 1.2e-4 of max |logit| on this batch), and the logits of
 *    the same prefill run without logit rows then asked with eng_forward_logits (x
 *    already holds the last MLP output: nothing may be added twice) bit-identical;
 *  - mm_in_type: f32 for decode row counts (the GEMV reads f32), the weight type above.
 * Outputs poisoned before each run.  Exits 77 without a GPU.
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
#include "pd_test.h"

#define CUDA_TEST_SEED 0x2545f4914f6cdd1dull
#include "cuda_test_util.h"

static void norm_case(kcpu_dtype_t t, int64_t T, int64_t D, bool add)
{
    size_t n = (size_t)T * D;
    float *res = rand_vec(n, 2.0f), *x = rand_vec(n, 1.0f), *w = rand_vec((size_t)D, 1.5f);
    float *ref = malloc(n * sizeof(float)), *res_ref = malloc(n * sizeof(float)), *res_got = malloc(n * sizeof(float));
    uint16_t *got = malloc(n * 2);
    void *d_res = up(res, n * 4), *d_x = up(x, n * 4), *d_w = up(w, (size_t)D * 4);
    void *d_out = poisoned(n * 2);
    PD_CHECK(ref && res_ref && res_got && got && d_res && d_x && d_w && d_out);
    if (!ref || !res_ref || !res_got || !got || !d_res || !d_x || !d_w || !d_out)
        goto out;
    memcpy(res_ref, res, n * 4);
    if (add)
        kcpu_add_rmsnorm(NULL, res_ref, x, w, ref, T, D, 1e-5f);
    else
        kcpu_rmsnorm(NULL, res_ref, w, ref, T, D, 1e-5f);
    PD_CHECK_STATUS(ops->add_rmsnorm_mm(be, d_res, add ? d_x : NULL, d_w, d_out, T, D, 1e-5f), PD_OK);
    PD_CHECK_STATUS(ops->memcpy_d2h(be, got, d_out, n * 2), PD_OK);
    PD_CHECK_STATUS(ops->memcpy_d2h(be, res_got, d_res, n * 4), PD_OK);
    double rerr = 0;
    for (size_t i = 0; i < n; i++)
        rerr = fmax(rerr, fabs((double)res_got[i] - res_ref[i]));
    int bad = count_off(got, ref, n, t, 1.0f, 1e-6f);
    printf("  add_rmsnorm_mm %s T=%lld D=%lld add=%d: %d of %zu outside 1 ulp, residual err %.1e\n",
           kcpu_dtype_name(t), (long long)T, (long long)D, add, bad, n, rerr);
    PD_CHECK_EQ_INT(bad, 0);
    PD_CHECK(rerr < 1e-6);
out:
    ops->buf_free(be, d_res), ops->buf_free(be, d_x), ops->buf_free(be, d_w), ops->buf_free(be, d_out);
    free(res), free(x), free(w), free(ref), free(res_ref), free(res_got), free(got);
}

/* gate|up rows of stride `stride` (>= 2I, fused) starting at column `off`. */
static void silu_case(kcpu_dtype_t t, int64_t T, int64_t I, int64_t stride, int64_t off)
{
    size_t n = (size_t)T * stride, no = (size_t)T * I;
    float *gu = rand_vec(n, 4.0f), *ref = malloc(no * sizeof(float));
    uint16_t *got = malloc(no * 2);
    float *d_gu = up(gu, n * 4);
    void *d_out = poisoned(no * 2);
    PD_CHECK(gu && ref && got && d_gu && d_out);
    if (!gu || !ref || !got || !d_gu || !d_out)
        goto out;
    kcpu_silu_and_mul(NULL, gu + off, stride, gu + off + I, stride, ref, T, I);
    PD_CHECK_STATUS(ops->silu_and_mul_mm(be, d_gu + off, stride, d_gu + off + I, stride, d_out, T, I), PD_OK);
    PD_CHECK_STATUS(ops->memcpy_d2h(be, got, d_out, no * 2), PD_OK);
    int bad = count_off(got, ref, no, t, 1.0f, 1e-6f);
    printf("  silu_and_mul_mm %s T=%lld I=%lld stride %lld off %lld: %d of %zu outside 1 ulp\n", kcpu_dtype_name(t),
           (long long)T, (long long)I, (long long)stride, (long long)off, bad, no);
    PD_CHECK_EQ_INT(bad, 0);
out:
    ops->buf_free(be, d_gu), ops->buf_free(be, d_out);
    free(gu), free(ref), free(got);
}

static void matmul_case(kcpu_dtype_t t, int64_t M, int64_t K, int64_t N)
{
    float *x = rand_vec((size_t)M * K, 1.0f), *w = rand_vec((size_t)N * K, 0.1f), *bias = rand_vec((size_t)N, 1.0f);
    uint16_t *xh = malloc((size_t)M * K * 2);
    float *y1 = malloc((size_t)M * N * 4), *y2 = malloc((size_t)M * N * 4), *y0 = rand_vec((size_t)M * N, 3.0f);
    uint16_t *xr = malloc((size_t)M * K * 2);
    void *d_x = NULL, *d_xh = NULL, *d_w = NULL, *d_b = NULL, *d_y1 = NULL, *d_y2 = NULL;
    PD_CHECK(x && w && bias && xh && y1 && y2 && y0 && xr);
    if (!x || !w || !bias || !xh || !y1 || !y2 || !y0 || !xr)
        goto out;
    for (size_t i = 0; i < (size_t)M * K; i++)
        xh[i] = f32_to_half(x[i], t);
    d_x = up(x, (size_t)M * K * 4), d_xh = up(xh, (size_t)M * K * 2);
    d_w = up(w, (size_t)N * K * 4), d_b = up(bias, (size_t)N * 4);
    d_y1 = poisoned((size_t)M * N * 4), d_y2 = poisoned((size_t)M * N * 4);
    PD_CHECK(d_x && d_xh && d_w && d_b && d_y1 && d_y2);
    if (!d_x || !d_xh || !d_w || !d_b || !d_y1 || !d_y2)
        goto out;
    PD_CHECK_STATUS(ops->matmul(be, d_x, M, K, K, d_w, KCPU_DTYPE_F32, N, d_b, d_y1, N), PD_OK);
    PD_CHECK_STATUS(ops->matmul_mm(be, d_xh, M, K, K, d_w, KCPU_DTYPE_F32, N, d_b, d_y2, N, false), PD_OK);
    PD_CHECK_STATUS(ops->memcpy_d2h(be, y1, d_y1, (size_t)M * N * 4), PD_OK);
    PD_CHECK_STATUS(ops->memcpy_d2h(be, y2, d_y2, (size_t)M * N * 4), PD_OK);
    int same = memcmp(y1, y2, (size_t)M * N * 4) == 0, finite = 1;
    for (size_t i = 0; i < (size_t)M * N; i++)
        finite &= isfinite(y1[i]) != 0;
    printf("  matmul_mm %s M=%lld K=%lld N=%lld: %s matmul of the f32 rows\n", kcpu_dtype_name(t), (long long)M,
           (long long)K, (long long)N, same ? "bit-identical to" : "DIFFERS from");
    PD_CHECK(same && finite);
    /* to_mm: the f32 rows rounded on the device, as on the host */
    PD_CHECK_STATUS(ops->to_mm(be, d_x, M, K, K, d_xh), PD_OK);
    PD_CHECK_STATUS(ops->memcpy_d2h(be, xr, d_xh, (size_t)M * K * 2), PD_OK);
    PD_CHECK(memcmp(xr, xh, (size_t)M * K * 2) == 0);
    /* accumulate: y0 + x W^T + bias */
    PD_CHECK_STATUS(ops->memcpy_h2d(be, d_y2, y0, (size_t)M * N * 4), PD_OK);
    PD_CHECK_STATUS(ops->matmul_mm(be, d_xh, M, K, K, d_w, KCPU_DTYPE_F32, N, d_b, d_y2, N, true), PD_OK);
    PD_CHECK_STATUS(ops->memcpy_d2h(be, y2, d_y2, (size_t)M * N * 4), PD_OK);
    double aerr = 0;
    for (size_t i = 0; i < (size_t)M * N; i++)
        aerr = fmax(aerr, fabs((double)y2[i] - ((double)y0[i] + y1[i])) / (1.0 + fabs((double)y0[i] + y1[i])));
    printf("  matmul_mm accumulate: max rel err %.1e against y0 + the product; to_mm %s host rounding\n", aerr,
           memcmp(xr, xh, (size_t)M * K * 2) == 0 ? "=" : "!=");
    PD_CHECK(aerr < 1e-5);
out:
    ops->buf_free(be, d_x), ops->buf_free(be, d_xh), ops->buf_free(be, d_w), ops->buf_free(be, d_b);
    ops->buf_free(be, d_y1), ops->buf_free(be, d_y2);
    free(x), free(w), free(bias), free(xh), free(y1), free(y2), free(y0), free(xr);
}

PD_TEST(test_mm_inputs)
{
    static const kcpu_dtype_t types[2] = {KCPU_DTYPE_BF16, KCPU_DTYPE_F16};
    PD_CHECK(ops->mm_in_type != NULL && ops->add_rmsnorm_mm && ops->silu_and_mul_mm && ops->matmul_mm);
    if (ops->mm_in_type == NULL)
        return;
    for (int i = 0; i < 2; i++) {
        kcpu_dtype_t t = types[i];
        eng_backend_cuda_set_weight_dtype(be, t);
        PD_CHECK_EQ_INT((int)ops->mm_in_type(be, 1), (int)KCPU_DTYPE_F32);
        PD_CHECK_EQ_INT((int)ops->mm_in_type(be, 8), (int)KCPU_DTYPE_F32);
        PD_CHECK_EQ_INT((int)ops->mm_in_type(be, 9), (int)t);
        norm_case(t, 37, 4096, true);
        norm_case(t, 5, 577, false);
        norm_case(t, 130, 64, true);
        silu_case(t, 33, 14336, 2 * 14336, 0); /* fused gate|up: vector path */
        silu_case(t, 7, 173, 2 * 173 + 3, 0);  /* odd I and stride: scalar path */
        silu_case(t, 3, 64, 136, 1);           /* rows off 16-byte alignment */
        matmul_case(t, 77, 256, 96);
        matmul_case(t, 9, 64, 200);
    }
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_F32);
    PD_CHECK_EQ_INT((int)ops->mm_in_type(be, 512), (int)KCPU_DTYPE_F32);
}

/* Prefill of 3 sequences (13 + 17 + 10 tokens) on a fresh forward; the last row of each
 * into logits [3, V], through the batch (rows) or, with late, through eng_forward_logits. */
static pd_status_t prefill(eng_model_t *model, eng_backend_t *b, bool late, float *logits)
{
    enum { BS = 16, MB = 4, NS = 3, T = 40 };
    static const int len[NS] = {13, 17, 10};
    eng_forward_opts_t fo = {.block_size = BS, .n_blocks = NS * MB, .max_tokens = 64, .max_seqs = NS,
                             .max_blocks_per_seq = MB};
    int32_t tok[T], pos[T], seq[T], tables[NS * MB], ctx[NS], rows[NS];
    int64_t slots[T];
    eng_forward_t *fw = NULL;
    const int64_t V = eng_model_config(model)->vocab_size;
    pd_status_t st = eng_forward_create(model, ops, b, &fo, &fw);
    int t = 0;
    if (st != PD_OK)
        return st;
    for (int i = 0; i < NS * MB; i++)
        tables[i] = i;
    for (int s = 0; s < NS; s++) {
        for (int p = 0; p < len[s]; p++, t++) {
            tok[t] = (int32_t)((t * 53 + s * 7 + 3) % V);
            pos[t] = p;
            seq[t] = s;
            slots[t] = (int64_t)s * MB * BS + p;
        }
        ctx[s] = len[s];
        rows[s] = t - 1;
    }
    eng_fwd_batch_t fb = {T, tok, pos, seq, slots, NS, tables, ctx, late ? 0 : NS, rows};
    st = eng_forward_run(fw, &fb, late ? NULL : logits);
    if (st == PD_OK && late)
        st = eng_forward_logits(fw, rows, NS, logits);
    eng_forward_destroy(fw);
    return st;
}

PD_TEST(test_forward_mm16_vs_f32_rows)
{
    char m[4096];
    eng_load_opts_t lo;
    eng_model_t *model = NULL;
    eng_backend_t *be2 = NULL;
    snprintf(m, sizeof(m), "%s/tests/data/models/tiny-llama", getenv("PD_SOURCE_DIR") ? getenv("PD_SOURCE_DIR") : ".");
    if (access(m, R_OK) != 0) {
        printf("  SKIP: %s is missing\n", m);
        return;
    }
    eng_load_opts_init(&lo);
    lo.model = m;
    lo.max_model_len = 64;
    PD_CHECK_STATUS(eng_model_load(&lo, &model), PD_OK);
    setenv("PD_CUDA_NO_MM16", "1", 1);
    PD_CHECK_STATUS(ops->init(NULL, &be2), PD_OK);
    unsetenv("PD_CUDA_NO_MM16");
    const int64_t V = model ? eng_model_config(model)->vocab_size : 0;
    float *a = calloc((size_t)3 * V + 1, 4), *b = calloc((size_t)3 * V + 1, 4), *c = calloc((size_t)3 * V + 1, 4);
    if (model && be2 && a && b && c) {
        eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_BF16);
        eng_backend_cuda_set_weight_dtype(be2, KCPU_DTYPE_BF16);
        PD_CHECK_EQ_INT((int)ops->mm_in_type(be2, 40), (int)KCPU_DTYPE_F32);
        PD_CHECK_STATUS(prefill(model, be, false, a), PD_OK);
        PD_CHECK_STATUS(prefill(model, be2, false, b), PD_OK);
        PD_CHECK_STATUS(prefill(model, be, true, c), PD_OK);
        double big = 1e-6, err = 0;
        for (int64_t i = 0; i < 3 * V; i++)
            big = fmax(big, fabs((double)b[i]));
        for (int64_t i = 0; i < 3 * V; i++)
            err = fmax(err, isfinite(a[i]) ? fabs((double)a[i] - b[i]) / big : INFINITY);
        int late_same = memcmp(a, c, (size_t)3 * V * 4) == 0;
        printf("  prefill 40 tokens, bf16: 16-bit inputs vs f32 rows max rel logit diff %.2e; late logits %s\n", err,
               late_same ? "bit-identical" : "DIFFER");
        PD_CHECK(err < 5e-3);
        PD_CHECK(late_same);
    }
    eng_backend_cuda_set_weight_dtype(be, KCPU_DTYPE_F32);
    if (be2)
        ops->shutdown(be2);
    eng_model_destroy(model);
    free(a), free(b), free(c);
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
    PD_RUN(test_mm_inputs);
    PD_RUN(test_forward_mm16_vs_f32_rows);
    ops->shutdown(be);
    return PD_TEST_REPORT();
}
