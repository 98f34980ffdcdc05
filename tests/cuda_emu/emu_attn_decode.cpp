/*
 * emu_attn_decode.cpp - kcuda_attn_decode.cu as gen_emu.py rewrites it for the CPU
 * (emu_cuda.h; the inline-PTX loads, cp.async, mma.sync and e4m3 conversion replaced by
 * the stand-ins of emu_overrides.h), host memory standing in for device memory.  The
 * tensor-core decode kernel in every form (its cp.async ring in the default shape and in
 * each other one built, and registers) and the SIMT kernel, against kcpu_paged_attention
 * over the same values as f32: f16, fp8 e4m3 and e5m2 caches (scales 0.25 / 0.5), head
 * dims 64 and 128, GQA 4 and 8, block sizes 8 (no ring: registers), 16 and 32, three
 * sequences of 1, 45 and 211 keys in shuffled blocks, one or three key splits, sliding
 * windows 0 and 37; the other layer of every block NaN, the output poisoned.  Checks the
 * ring's index math (whole-row copies, the swizzle, the two block ids a step) on a
 * machine without a GPU; the GPU runs the same forms in test_cuda_ops
 * (PD_TEST_ATTN_TC=1).  Prints "N failures", exits 1 on any.
 */
#include "kcuda_kv.cu"
#include "kcuda_attn_decode.cu"
#include <stdio.h>
#include <stdlib.h>

extern "C" cudaError_t cudaGetLastError(void) { return cudaSuccess; }
extern "C" const char *cudaGetErrorString(cudaError_t) { return "emu"; }
extern "C" bool kcuda_gemv_pdl_on(void) { return true; }

static uint64_t rng = 0x2545f4914f6cdd1dull;
static float frand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}
static int irand(int n) { frand(); return (int)((rng >> 20) % (uint64_t)n); }
static int fails, runs;

static float fp8_value(uint8_t b, bool e5m2)
{
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)b, e5m2 ? __NV_E5M2 : __NV_E4M3);
    return __half2float(__half(h));
}

typedef struct {
    int kind; /* 1 f16, 2 fp8 e4m3, 3 fp8 e5m2 */
    int hd, n_heads, n_kv, bs, window, splits;
} acase_t;

/* One form: tensor cores on/off, loading scheme, ring warps x stages (0 = default). */
typedef struct {
    const char *name;
    int tc, pipe, ring_w, ring_s;
} aform_t;

static void run_case(const acase_t *c)
{
    const int L = 2, layer = 1, B = 3, T = 3;
    const bool e5m2 = c->kind == 3, fp8 = c->kind >= 2;
    const float ks = 0.25f, vs = 0.5f;
    const int ctx[3] = {1, 45, 211};
    const int mbps = (211 + c->bs - 1) / c->bs + 1;
    int64_t need = 0;
    for (int s = 0; s < B; s++)
        need += (ctx[s] + c->bs - 1) / c->bs;
    const int64_t n_blocks = need + 2;
    const kcpu_dtype_t dt = c->kind == 1 ? KCPU_DTYPE_F16 : c->kind == 2 ? KCUDA_KV_FP8_E4M3 : KCUDA_KV_FP8_E5M2;
    kcpu_kv_layout_t lay, lay32;
    if (kcuda_kv_layout_init(&lay, dt, L, c->bs, c->n_kv, c->hd, n_blocks) != PD_OK ||
        kcpu_kv_layout_init(&lay32, KCPU_DTYPE_F32, L, c->bs, c->n_kv, c->hd, n_blocks) != PD_OK) {
        printf("  layout failed\n");
        fails++;
        return;
    }
    /* block tables: a random permutation of the blocks */
    int32_t *perm = (int32_t *)malloc(sizeof(int32_t) * n_blocks), bt[3 * 64];
    for (int64_t i = 0; i < n_blocks; i++)
        perm[i] = (int32_t)i;
    for (int64_t i = n_blocks - 1; i > 0; i--) {
        const int j = irand((int)i + 1);
        const int32_t x = perm[i];
        perm[i] = perm[j], perm[j] = x;
    }
    int64_t nb = 0;
    for (int s = 0; s < B; s++)
        for (int i = 0; i < mbps; i++)
            bt[s * mbps + i] = i < (ctx[s] + c->bs - 1) / c->bs ? perm[nb++] : perm[irand((int)n_blocks)];
    /* the layer read random, the other NaN (all bits set); the reference as f32 */
    const size_t cache_bytes = lay.block_bytes * (size_t)n_blocks;
    const int64_t blk = (int64_t)(lay.block_bytes / lay.elem_bytes), n_el = (int64_t)(cache_bytes / lay.elem_bytes);
    void *cache = aligned_alloc(256, (cache_bytes + 255) & ~(size_t)255);
    float *ref_cache = (float *)malloc(sizeof(float) * n_el);
    memset(cache, 0xff, cache_bytes);
    memset(ref_cache, 0xff, sizeof(float) * n_el);
    for (int64_t b = 0; b < n_blocks; b++)
        for (int64_t e = 0; e < lay.layer_stride; e++) {
            const int64_t i = b * blk + (int64_t)layer * lay.layer_stride + e;
            if (!fp8) {
                __half h = __float2half(frand() * 2.0f);
                memcpy((uint16_t *)cache + i, &h, 2);
                ref_cache[i] = __half2float(h);
            } else {
                uint8_t byte;
                float f;
                do {
                    byte = (uint8_t)irand(256);
                    f = fp8_value(byte, e5m2);
                } while (!isfinite(f) || fabsf(f) > 8.0f);
                ((uint8_t *)cache)[i] = byte;
                ref_cache[i] = f * (e >= lay.kv_stride ? vs : ks);
            }
        }
    /* tokens: the sequences in the order 2, 0, 1, each at its last position */
    int32_t tseq[3] = {2, 0, 1}, tpos[3];
    for (int t = 0; t < T; t++)
        tpos[t] = ctx[tseq[t]] - 1;
    const int64_t QW = (int64_t)c->n_heads * c->hd;
    float *q = (float *)malloc(sizeof(float) * T * QW), *ref = (float *)malloc(sizeof(float) * T * QW);
    float *out = (float *)malloc(sizeof(float) * T * QW);
    for (int64_t i = 0; i < T * QW; i++)
        q[i] = frand();
    kcpu_attn_params_t p = {};
    p.n_tokens = T, p.q = q, p.q_stride = QW, p.out = ref, p.out_stride = QW, p.tok_seq = tseq, p.tok_pos = tpos;
    p.n_seqs = B, p.block_tables = bt, p.max_blocks_per_seq = mbps, p.context_lens = ctx;
    p.n_heads = c->n_heads, p.n_kv_heads = c->n_kv, p.head_dim = c->hd, p.scale = 1.0f / sqrtf((float)c->hd);
    p.causal = true, p.sliding_window = c->window, p.layer = layer, p.cache_base = ref_cache, p.layout = &lay32;
    if (kcpu_paged_attention(NULL, &p) != PD_OK) {
        printf("  kcpu_paged_attention failed\n");
        fails++;
        return;
    }
    double mx = 1.0;
    for (int64_t i = 0; i < T * QW; i++)
        mx = fabs(ref[i]) > mx ? fabs(ref[i]) : mx;

    static const aform_t forms[] = {
        {"tc ring (default)", 1, -1, 0, 0}, {"tc registers", 1, 0, 0, 0}, {"tc ring 2x2", 1, 2, 2, 2},
        {"tc ring 2x3", 1, 2, 2, 3},        {"tc ring 4x2", 1, 2, 4, 2}, {"tc ring 4x3", 1, 2, 4, 3},
        {"tc ring 2x4", 1, 2, 2, 4},        {"tc ring 2x6", 1, 2, 2, 6}, {"simt", 0, -1, 0, 0},
    };
    const size_t ws_n = (size_t)T * c->n_heads * c->splits * (c->hd + 2);
    float *ws = (float *)malloc(sizeof(float) * (ws_n > 0 ? ws_n : 1));
    for (size_t f = 0; f < sizeof(forms) / sizeof(forms[0]); f++) {
        kcpu_attn_params_t pd = p;
        pd.out = out, pd.cache_base = cache, pd.layout = &lay;
        pd.scale = p.scale;
        kcuda_attn_set_decode_tuning(-1, forms[f].pipe, -1, -1, forms[f].tc);
        kcuda_attn_set_decode_ring(forms[f].ring_w, forms[f].ring_s);
        memset(out, 0xff, sizeof(float) * T * QW);
        int err = 0;
        const long before = emu_launches;
        const pd_status_t st = kcuda_attn_decode_launch(&pd, fp8 ? ks : 1.0f, fp8 ? vs : 1.0f, c->splits, ws, &err,
                                                        nullptr);
        int bad = 0;
        double worst = 0;
        for (int64_t i = 0; i < T * QW; i++) {
            const double e = fabs((double)out[i] - ref[i]);
            if (!(e <= 1e-4 * mx))
                bad++;
            worst = e > worst || e != e ? e : worst;
        }
        runs++;
        if (st != PD_OK || err != 0 || bad > 0 || emu_launches == before) {
            printf("  FAIL kind %d d%d h%d/%d bs%d win%d splits %d, %s: status %d err %d, %d of %lld outside 1e-4 "
                   "(worst %.2e)\n",
                   c->kind, c->hd, c->n_heads, c->n_kv, c->bs, c->window, c->splits, forms[f].name, (int)st, err, bad,
                   (long long)(T * QW), worst / mx);
            fails++;
        }
    }
    kcuda_attn_set_decode_tuning(-1, -1, -1, -1, -1);
    kcuda_attn_set_decode_ring(0, 0);
    free(ws), free(q), free(ref), free(out), free(cache), free(ref_cache), free(perm);
}

int main(void)
{
    static const acase_t cases[] = {
        {1, 128, 8, 2, 16, 0, 1},  {1, 128, 8, 2, 32, 37, 3}, {1, 128, 8, 1, 16, 0, 3}, {1, 64, 8, 2, 16, 0, 1},
        {1, 64, 4, 1, 32, 37, 3},  {1, 128, 8, 2, 8, 0, 1},   {2, 128, 8, 2, 16, 0, 1}, {2, 128, 8, 2, 32, 37, 3},
        {2, 128, 8, 1, 16, 0, 3},  {3, 128, 8, 2, 16, 37, 1}, {3, 128, 4, 1, 32, 0, 3}, {2, 64, 8, 2, 16, 0, 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        run_case(&cases[i]);
    printf("emulated decode attention: %d forms x cases run, %d failures\n", runs, fails);
    return fails ? 1 : 0;
}
