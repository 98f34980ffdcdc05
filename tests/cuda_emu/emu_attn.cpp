/*
 * emu_attn.cpp - kcuda_attn_decode.cu and kcuda_attn_prefill.cu as gen_emu.py rewrites
 * them for the CPU (emu_cuda.h; the inline-PTX loads, cp.async, ldmatrix, mma.sync and
 * e4m3 conversion replaced by the stand-ins of emu_overrides.h), host memory standing in
 * for device memory, against kcpu_paged_attention over the same values as f32 (fp8:
 * decoded and scaled, 0.25 / 0.5); the other layer of every block NaN, the output
 * poisoned, block tables a shuffled permutation.
 *  - Decode: the tensor-core kernel in every form (its cp.async ring in the default shape
 *    and in each other one built, registers) and the SIMT kernel; f16, e4m3 and e5m2
 *    caches, head dims 64 and 128, GQA 4 and 8, block sizes 8 (no ring: registers), 16
 *    and 32, sequences of 1, 45 and 211 keys, one or three key splits, sliding windows 0
 *    and 37; within 1e-4.
 *  - Prefill: the FlashAttention-2 kernel with 4 and 8 warps; f16, f32 and e4m3 caches,
 *    head dims 64 and 128, GQA 4 and 8, chunks of 37 tokens after 113 cached ones, 20
 *    from position 0 and 1, one or two key splits, windows 0 and 29, f32 and bf16
 *    outputs; within 2e-3 (f32; f16 operands in the kernel) and 1e-2 (bf16).
 * Checks the index math on a machine without a GPU; the GPU runs the same kernels in
 * test_cuda_ops.  Prints "N failures", exits 1 on any.
 */
#include "kcuda_kv.cu"
#include "kcuda_attn_decode.cu"
#include "kcuda_attn_prefill.cu"
#include <stdio.h>
#include <stdlib.h>

extern "C" bool kcuda_gemv_pdl_on(void) { return true; }

#define EMU_SEED 0x2545f4914f6cdd1dull
#include "emu_test.h"
static int fails, runs;

static float fp8_value(uint8_t b, bool e5m2)
{
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)b, e5m2 ? __NV_E5M2 : __NV_E4M3);
    return __half2float(__half(h));
}

/* A cache of n_blocks blocks for 2 layers, layer 1 random, layer 0 NaN; its reference as
 * f32 (fp8: decoded, K times ks and V times vs) in lay32; block tables of B sequences of
 * ctx[] keys, a shuffled permutation (spare entries random). */
typedef struct {
    kcpu_kv_layout_t lay, lay32;
    void *cache;
    float *ref_cache;
    int32_t bt[3 * 64];
    int mbps;
} acache_t;

static const float KS = 0.25f, VS = 0.5f;

static bool cache_make(acache_t *C, int kind, int hd, int n_kv, int bs, const int *ctx, int B)
{
    const bool e5m2 = kind == 3, fp8 = kind >= 2;
    int maxc = 1;
    int64_t need = 0;
    for (int s = 0; s < B; s++) {
        need += (ctx[s] + bs - 1) / bs;
        maxc = ctx[s] > maxc ? ctx[s] : maxc;
    }
    C->mbps = (maxc + bs - 1) / bs + 1;
    const int64_t n_blocks = need + 2;
    const kcpu_dtype_t dt = kind == 0   ? KCPU_DTYPE_F32
                            : kind == 1 ? KCPU_DTYPE_F16
                            : kind == 2 ? KCUDA_KV_FP8_E4M3
                                        : KCUDA_KV_FP8_E5M2;
    if (kcuda_kv_layout_init(&C->lay, dt, 2, bs, n_kv, hd, n_blocks) != PD_OK ||
        kcpu_kv_layout_init(&C->lay32, KCPU_DTYPE_F32, 2, bs, n_kv, hd, n_blocks) != PD_OK || B * C->mbps > 3 * 64)
        return false;
    int32_t *perm = (int32_t *)malloc(sizeof(int32_t) * n_blocks);
    for (int64_t i = 0; i < n_blocks; i++)
        perm[i] = (int32_t)i;
    for (int64_t i = n_blocks - 1; i > 0; i--) {
        const int j = irand((int)i + 1);
        const int32_t x = perm[i];
        perm[i] = perm[j], perm[j] = x;
    }
    int64_t nb = 0;
    for (int s = 0; s < B; s++)
        for (int i = 0; i < C->mbps; i++)
            C->bt[s * C->mbps + i] = i < (ctx[s] + bs - 1) / bs ? perm[nb++] : perm[irand((int)n_blocks)];
    free(perm);
    const size_t cache_bytes = C->lay.block_bytes * (size_t)n_blocks;
    const int64_t blk = (int64_t)(C->lay.block_bytes / C->lay.elem_bytes),
                  n_el = (int64_t)(cache_bytes / C->lay.elem_bytes);
    C->cache = aligned_alloc(256, (cache_bytes + 255) & ~(size_t)255);
    C->ref_cache = (float *)malloc(sizeof(float) * n_el);
    memset(C->cache, 0xff, cache_bytes);
    memset(C->ref_cache, 0xff, sizeof(float) * n_el);
    for (int64_t b = 0; b < n_blocks; b++)
        for (int64_t e = 0; e < C->lay.layer_stride; e++) {
            const int64_t i = b * blk + C->lay.layer_stride + e; /* layer 1 */
            if (kind == 0) {
                ((float *)C->cache)[i] = C->ref_cache[i] = frand();
            } else if (kind == 1) {
                __half h = __float2half(frand() * 2.0f);
                memcpy((uint16_t *)C->cache + i, &h, 2);
                C->ref_cache[i] = __half2float(h);
            } else {
                uint8_t byte;
                float f;
                do {
                    byte = (uint8_t)irand(256);
                    f = fp8_value(byte, e5m2);
                } while (!isfinite(f) || fabsf(f) > 8.0f);
                ((uint8_t *)C->cache)[i] = byte;
                C->ref_cache[i] = f * (e >= C->lay.kv_stride ? VS : KS);
            }
        }
    (void)fp8;
    return true;
}

static void cache_free(acache_t *C)
{
    free(C->cache);
    free(C->ref_cache);
}

/* The parameters of a run of T tokens over C (layer 1, causal), random q, its reference
 * from kcpu into *ref, *out for the kernel; returns max(1, max |ref|) or -1. */
static double setup_run(const acache_t *C, int T, const int32_t *tseq, const int32_t *tpos, int B, const int *ctx,
                        int n_heads, int n_kv, int hd, int window, kcpu_attn_params_t *pp, float **q, float **ref,
                        float **out)
{
    const int64_t QW = (int64_t)n_heads * hd;
    *q = (float *)malloc(sizeof(float) * T * QW), *ref = (float *)malloc(sizeof(float) * T * QW);
    *out = (float *)malloc(sizeof(float) * T * QW);
    for (int64_t i = 0; i < T * QW; i++)
        (*q)[i] = frand();
    kcpu_attn_params_t p = {};
    p.n_tokens = T, p.q = *q, p.q_stride = QW, p.out_stride = QW, p.tok_seq = tseq, p.tok_pos = tpos;
    p.n_seqs = B, p.block_tables = C->bt, p.max_blocks_per_seq = C->mbps, p.context_lens = ctx;
    p.n_heads = n_heads, p.n_kv_heads = n_kv, p.head_dim = hd, p.scale = 1.0f / sqrtf((float)hd);
    p.causal = true, p.sliding_window = window, p.layer = 1;
    *pp = p;
    p.out = *ref, p.cache_base = C->ref_cache, p.layout = &C->lay32;
    if (kcpu_paged_attention(NULL, &p) != PD_OK)
        return -1;
    double mx = 1.0;
    for (int64_t i = 0; i < T * QW; i++)
        mx = fabs((*ref)[i]) > mx ? fabs((*ref)[i]) : mx;
    return mx;
}

/* Elements of got outside tol * mx of ref (NaN counts); *worst the largest |diff| / mx. */
static int count_bad(const float *got, const float *ref, int64_t n, double mx, double tol, double *worst)
{
    int bad = 0;
    *worst = 0;
    for (int64_t i = 0; i < n; i++) {
        const double e = fabs((double)got[i] - ref[i]);
        if (!(e <= tol * mx))
            bad++;
        *worst = (e > *worst || e != e) ? e : *worst;
    }
    *worst /= mx;
    return bad;
}

/* ---- decode ---- */

typedef struct {
    int kind; /* 1 f16, 2 fp8 e4m3, 3 fp8 e5m2 */
    int hd, n_heads, n_kv, bs, window, splits;
} acase_t;

/* One form: tensor cores on/off, loading scheme, ring warps x stages (0 = default). */
typedef struct {
    const char *name;
    int tc, pipe, ring_w, ring_s;
} aform_t;

static void run_decode(const acase_t *c)
{
    const int B = 3, T = 3, ctx[3] = {1, 45, 211};
    const bool fp8 = c->kind >= 2;
    acache_t C;
    if (!cache_make(&C, c->kind, c->hd, c->n_kv, c->bs, ctx, B)) {
        printf("  layout failed\n");
        fails++;
        return;
    }
    /* tokens: the sequences in the order 2, 0, 1, each at its last position */
    int32_t tseq[3] = {2, 0, 1}, tpos[3];
    for (int t = 0; t < T; t++)
        tpos[t] = ctx[tseq[t]] - 1;
    const int64_t QW = (int64_t)c->n_heads * c->hd;
    float *q, *ref, *out;
    kcpu_attn_params_t p;
    const double mx = setup_run(&C, T, tseq, tpos, B, ctx, c->n_heads, c->n_kv, c->hd, c->window, &p, &q, &ref, &out);

    static const aform_t forms[] = {
        {"tc ring (default)", 1, -1, 0, 0}, {"tc registers", 1, 0, 0, 0}, {"tc ring 2x2", 1, 2, 2, 2},
        {"tc ring 2x3", 1, 2, 2, 3},        {"tc ring 4x2", 1, 2, 4, 2}, {"tc ring 4x3", 1, 2, 4, 3},
        {"tc ring 2x4", 1, 2, 2, 4},        {"tc ring 2x6", 1, 2, 2, 6}, {"simt", 0, -1, 0, 0},
    };
    const size_t ws_n = (size_t)T * c->n_heads * c->splits * (c->hd + 2);
    float *ws = (float *)malloc(sizeof(float) * ws_n);
    for (size_t f = 0; mx > 0 && f < sizeof(forms) / sizeof(forms[0]); f++) {
        kcpu_attn_params_t pd = p;
        pd.out = out, pd.cache_base = C.cache, pd.layout = &C.lay;
        kcuda_attn_set_decode_tuning(-1, forms[f].pipe, -1, -1, forms[f].tc);
        kcuda_attn_set_decode_ring(forms[f].ring_w, forms[f].ring_s);
        memset(out, 0xff, sizeof(float) * T * QW);
        int err = 0;
        const long before = emu_launches;
        const pd_status_t st = kcuda_attn_decode_launch(&pd, fp8 ? KS : 1.0f, fp8 ? VS : 1.0f, c->splits, ws, &err,
                                                        nullptr);
        double worst;
        const int bad = count_bad(out, ref, T * QW, mx, 1e-4, &worst);
        runs++;
        if (st != PD_OK || err != 0 || bad > 0 || emu_launches == before) {
            printf("  FAIL decode kind %d d%d h%d/%d bs%d win%d splits %d, %s: status %d err %d, %d of %lld outside "
                   "1e-4 (worst %.2e)\n",
                   c->kind, c->hd, c->n_heads, c->n_kv, c->bs, c->window, c->splits, forms[f].name, (int)st, err, bad,
                   (long long)(T * QW), worst);
            fails++;
        }
    }
    if (mx <= 0) {
        printf("  kcpu_paged_attention failed\n");
        fails++;
    }
    kcuda_attn_set_decode_tuning(-1, -1, -1, -1, -1);
    kcuda_attn_set_decode_ring(0, 0);
    free(ws), free(q), free(ref), free(out);
    cache_free(&C);
}

/* ---- prefill ---- */

typedef struct {
    int kind; /* 0 f32, 1 f16, 2 fp8 e4m3 */
    int hd, n_heads, n_kv, bs, window, splits, warps;
    bool bf16_out;
} pcase_t;

static void run_prefill(const pcase_t *c)
{
    /* sequence 0: 37 new tokens after 113 cached ones; 1: 20 from position 0; 2: one */
    const int B = 3, ctx[3] = {150, 20, 1};
    const int T = 37 + 20 + 1;
    acache_t C;
    if (!cache_make(&C, c->kind, c->hd, c->n_kv, c->bs, ctx, B)) {
        printf("  layout failed\n");
        fails++;
        return;
    }
    int32_t tseq[T], tpos[T];
    for (int t = 0; t < T; t++) {
        tseq[t] = t < 37 ? 0 : t < 57 ? 1 : 2;
        tpos[t] = t < 37 ? 113 + t : t < 57 ? t - 37 : 0;
    }
    const int64_t QW = (int64_t)c->n_heads * c->hd;
    float *q, *ref, *out;
    kcpu_attn_params_t p;
    const double mx = setup_run(&C, T, tseq, tpos, B, ctx, c->n_heads, c->n_kv, c->hd, c->window, &p, &q, &ref, &out);
    kcpu_attn_params_t pd = p;
    pd.out = out, pd.cache_base = C.cache, pd.layout = &C.lay;
    kcuda_attn_set_prefill(KCUDA_ATTN_PREFILL_FA2, c->warps);
    float *ws = (float *)malloc(sizeof(float) * (size_t)T * c->n_heads * c->splits * (c->hd + 2));
    uint16_t *out16 = (uint16_t *)malloc(2 * (size_t)T * QW);
    memset(out, 0xff, sizeof(float) * T * QW);
    memset(out16, 0xff, 2 * (size_t)T * QW);
    int err = 0;
    const bool ok = kcuda_attn_prefill_ok(&pd);
    const pd_status_t st =
        ok ? kcuda_attn_prefill_launch(&pd, c->kind == 2 ? KS : 1.0f, c->kind == 2 ? VS : 1.0f,
                                       c->bf16_out ? (void *)out16 : (void *)out,
                                       c->bf16_out ? KCPU_DTYPE_BF16 : KCPU_DTYPE_F32, c->splits, ws, &err, nullptr)
           : PD_ERR_UNSUPPORTED;
    if (c->bf16_out)
        for (int64_t i = 0; i < T * QW; i++)
            out[i] = __uint_as_float((unsigned)out16[i] << 16);
    double worst;
    const double tol = c->bf16_out ? 1e-2 : 2e-3;
    const int bad = mx > 0 ? count_bad(out, ref, T * QW, mx, tol, &worst) : -1;
    runs++;
    if (st != PD_OK || err != 0 || bad != 0) {
        printf("  FAIL prefill kind %d d%d h%d/%d bs%d win%d splits %d, %d warps%s: status %d err %d, %d of %lld "
               "outside %.0e (worst %.2e)\n",
               c->kind, c->hd, c->n_heads, c->n_kv, c->bs, c->window, c->splits, c->warps,
               c->bf16_out ? ", bf16 out" : "", (int)st, err, bad, (long long)(T * QW), tol, bad >= 0 ? worst : 0.0);
        fails++;
    }
    kcuda_attn_set_prefill(KCUDA_ATTN_PREFILL_AUTO, 0);
    free(ws), free(q), free(ref), free(out), free(out16);
    cache_free(&C);
}

int main(void)
{
    static const acase_t dcases[] = {
        {1, 128, 8, 2, 16, 0, 1},  {1, 128, 8, 2, 32, 37, 3}, {1, 128, 8, 1, 16, 0, 3}, {1, 64, 8, 2, 16, 0, 1},
        {1, 64, 4, 1, 32, 37, 3},  {1, 128, 8, 2, 8, 0, 1},   {2, 128, 8, 2, 16, 0, 1}, {2, 128, 8, 2, 32, 37, 3},
        {2, 128, 8, 1, 16, 0, 3},  {3, 128, 8, 2, 16, 37, 1}, {3, 128, 4, 1, 32, 0, 3}, {2, 64, 8, 2, 16, 0, 1},
    };
    static const pcase_t pcases[] = {
        {1, 128, 8, 2, 16, 0, 1, 4, false}, {1, 128, 8, 2, 32, 29, 2, 8, false}, {1, 64, 8, 1, 16, 0, 1, 4, true},
        {0, 128, 8, 2, 16, 0, 1, 8, false}, {2, 128, 8, 2, 16, 29, 1, 4, false}, {2, 64, 4, 1, 32, 0, 2, 8, true},
    };
    for (size_t i = 0; i < sizeof(dcases) / sizeof(dcases[0]); i++)
        run_decode(&dcases[i]);
    const int decode_runs = runs;
    for (size_t i = 0; i < sizeof(pcases) / sizeof(pcases[0]); i++)
        run_prefill(&pcases[i]);
    printf("emulated attention: %d decode and %d prefill runs, %d failures\n", decode_runs, runs - decode_runs, fails);
    return fails ? 1 : 0;
}
