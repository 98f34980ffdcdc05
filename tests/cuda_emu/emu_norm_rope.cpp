/*
 * emu_norm_rope.cpp - kcuda_norm.cu and kcuda_kv.cu as gen_emu.py rewrites them for the
 * CPU (emu_cuda.h), host memory standing in for device memory:
 *  - the RMSNorm entry points (f32 out, residual add, bf16 / f16 out with and without the
 *    add) against kcpu: f32 within 1e-5, 16-bit within one unit in the last place of the
 *    rounded reference, the residual within 1e-6, the floats around the rows untouched;
 *    the shapes take every vector width and CTA size and the scalar fallbacks (the kernel
 *    that ran is printed);
 *  - kcuda_rope_kv_write with the table kernel against the old kernel
 *    (PD_CUDA_ROPE_KV_TAB=0's path): q/k rows and cache bytes bit-identical, the same
 *    error bits (one slot outside the cache); f32 / f16 caches also against kcpu_rope +
 *    kcpu_kv_write.  Aligned fused rows (vector path) and odd strides (scalar path).
 * Argument "big": also T = 2048 (the 8B prefill shapes).  Prints "N failures", exits 1
 * on any.
 */
#include "kcuda_norm.cu"
#include "kcuda_kv.cu"
#include <stdio.h>
#include <stdlib.h>

extern "C" bool kcuda_gemv_pdl_on(void) { return true; }

#define EMU_SEED 0x9e3779b97f4a7c15ull
#include "emu_test.h"
static float *rand_vec(size_t n, float sc) { float *v = (float *)malloc(n * 4); for (size_t i = 0; i < n; i++) v[i] = frand() * sc; return v; }
static int fails;

/* 64-byte aligned (a cudaMalloc'd buffer is 256-byte aligned), the size rounded up */
static void *amalloc(size_t n)
{
    return aligned_alloc(64, (n + 63) & ~(size_t)63);
}

static int cmpf(const char *what, const float *got, const float *want, size_t n, double tol)
{
    double mx = 1;
    int bad = 0;
    for (size_t i = 0; i < n; i++) if (fabs(want[i]) > mx) mx = fabs(want[i]);
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= tol * mx)) { if (bad++ < 3) printf("  %s[%zu]: %g vs %g\n", what, i, got[i], want[i]); }
    }
    return bad;
}

/* the name of the kernel emu_run ran last */
static const char *kname(const void *k)
{
#define K(...) \
    if (k == (const void *)(__VA_ARGS__)) \
        return #__VA_ARGS__;
#define K_NV(ADD, OT) \
    K(rms_vec_kernel<1, ADD, OT>) K(rms_vec_kernel<2, ADD, OT>) K(rms_vec_kernel<4, ADD, OT>) K(rms_vec_kernel<8, ADD, OT>)
#define K_ROPE(CT) K(rope_kv_tab_kernel<CT, true>) K(rope_kv_tab_kernel<CT, false>) K(rope_kv_kernel<CT>)
    K_NV(false, float) K_NV(true, float) K_NV(false, __half) K_NV(true, __half)
    K_NV(false, __nv_bfloat16) K_NV(true, __nv_bfloat16)
    K_ROPE(float) K_ROPE(__half) K_ROPE(__nv_fp8_e4m3) K_ROPE(__nv_fp8_e5m2)
    K(norm_kernel<false, false>) K(norm_kernel<true, false>)
    K(norm_kernel<false, false, __half>) K(norm_kernel<true, false, __half>)
    K(norm_kernel<false, false, __nv_bfloat16>) K(norm_kernel<true, false, __nv_bfloat16>)
    return "?";
}

static void norm_case(int64_t T, int64_t D, int off)
{
    size_t n = (size_t)(T * D), pad = 8;
    float *x = rand_vec(n + pad, 1.0f), *res = rand_vec(n + pad, 2.0f), *w = rand_vec(D, 1.5f);
    float *r1 = (float *)malloc((n + pad) * 4), *rref = (float *)malloc(n * 4), *ref = (float *)malloc(n * 4);
    float *out = (float *)malloc((n + pad) * 4);
    for (int kind = 0; kind < 6; kind++) {
        const bool add = kind == 1 || kind == 2 || kind == 5, f32 = kind < 2, bf = kind == 2 || kind == 4;
        memcpy(r1, res, (n + pad) * 4);
        memcpy(rref, res + off, n * 4);
        memset(out, 0xff, (n + pad) * 4);
        if (add) kcpu_add_rmsnorm(NULL, rref, x + off, w, ref, T, D, 1e-5f);
        else kcpu_rmsnorm(NULL, rref, w, ref, T, D, 1e-5f);
        pd_status_t st;
        if (kind == 0) st = kcuda_rmsnorm(r1 + off, w, out + off, T, D, 1e-5f, nullptr);
        else if (kind == 1) st = kcuda_add_rmsnorm(r1 + off, x + off, w, out + off, T, D, 1e-5f, nullptr);
        else st = kcuda_add_rmsnorm_half(r1 + off, add ? x + off : nullptr, w, (uint16_t *)out + 2 * off, bf ? KCPU_DTYPE_BF16 : KCPU_DTYPE_F16, T, D, 1e-5f, nullptr);
        int bad = st != PD_OK;
        if (f32) {
            bad += cmpf("norm", out + off, ref, n, 1e-5);
            bad += (off && !isnan(out[0])) || !isnan(out[n + off]);
        } else {
            const uint16_t *h = (const uint16_t *)out + 2 * off;
            const float ulp = bf ? 1.0f / 128 : 1.0f / 1024;
            for (size_t i = 0; i < n; i++) {
                float g = bf ? kcpu_bf16_to_f32(h[i]) : kcpu_f16_to_f32(h[i]);
                float r = bf ? kcpu_bf16_to_f32(kcpu_f32_to_bf16(ref[i])) : kcpu_f16_to_f32(kcpu_f32_to_f16(ref[i]));
                if (!(fabsf(g - r) <= ulp * fabsf(r) + 1e-6f)) { if (bad++ < 3) printf("  half[%zu] %g vs %g\n", i, g, r); }
            }
            bad += h[n] != 0xffff || (off && ((uint16_t *)out)[0] != 0xffff);
        }
        bad += cmpf("res", r1 + off, rref, n, 1e-6);
        if (memcmp(r1 + off + n, res + off + n, (pad - off) * 4) || memcmp(r1, res, off * 4)) bad++;
        printf("norm T %lld D %lld off %d kind %d: %s %s\n", (long long)T, (long long)D, off, kind, kname(emu_last_kernel), bad ? "FAIL" : "ok");
        fails += bad != 0;
    }
    free(x), free(res), free(w), free(r1), free(rref), free(ref), free(out);
}

static void rope_case(int nh, int nkv, int hd, int rot, int style, kcpu_dtype_t cdt, int64_t T, bool aligned)
{
    const int bs = 16, n_layers = 2, layer = 1;
    int64_t n_blocks = T > 9 * bs ? T / bs + 2 : 9;
    if (n_blocks % 7 == 0) n_blocks++;
    const int64_t W = (int64_t)nkv * hd;
    const int64_t qs = (int64_t)nh * hd + (aligned ? 2 * W : 3 * W + 5);
    kcpu_kv_layout_t L;
    float inv[512], af = 1.0f;
    kcpu_rope_scaling_t sc = {};
    sc.type = KCPU_ROPE_SCALING_NONE;
    int32_t *pos = (int32_t *)malloc(4 * T);
    int64_t *slots = (int64_t *)malloc(8 * T);
    bool fp8 = cdt == KCUDA_KV_FP8_E4M3 || cdt == KCUDA_KV_FP8_E5M2;
    kcuda_kv_layout_init(&L, cdt, n_layers, bs, nkv, hd, n_blocks);
    kcpu_rope_inv_freq(10000.0f, rot, &sc, 0, inv, &af);
    for (int64_t t = 0; t < T; t++) {
        pos[t] = t < 3 ? (int32_t)t : irand(100000);
        slots[t] = t % 5 == 4 ? -1 : (int64_t)(t * 7 % (n_blocks * bs));
    }
    slots[T - 1] = T > 1 ? n_blocks * bs + 3 : slots[T - 1]; /* one outside the cache: error bit */
    size_t nr = (size_t)(T * qs), cb = L.block_bytes * (size_t)n_blocks;
    float *row = (float *)amalloc(nr * 4), *row2 = (float *)amalloc(nr * 4), *row3 = (float *)amalloc(nr * 4);
    for (size_t i = 0; i < nr; i++) row[i] = frand() * 1.5f;
    memcpy(row2, row, nr * 4);
    memcpy(row3, row, nr * 4);
    uint8_t *c1 = (uint8_t *)amalloc(cb), *c2 = (uint8_t *)amalloc(cb), *c3 = (uint8_t *)amalloc(cb);
    memset(c1, 0, cb), memset(c2, 0, cb), memset(c3, 0, cb);
    int e1 = 0, e2 = 0;
    float ks = fp8 ? 0.03f : 1.0f, vsc = fp8 ? 0.02f : 1.0f;
    rope_tab_g = 1;
    pd_status_t st = kcuda_rope_kv_write(row, qs, row + (int64_t)nh * hd, qs, row + (int64_t)nh * hd + W, qs, pos, T, nh, rot, inv, af, (kcpu_rope_style_t)style, &L, c1, layer, slots, ks, vsc, &e1, nullptr);
    const char *kn = kname(emu_last_kernel);
    rope_tab_g = 0;
    st = (pd_status_t)(st | kcuda_rope_kv_write(row2, qs, row2 + (int64_t)nh * hd, qs, row2 + (int64_t)nh * hd + W, qs, pos, T, nh, rot, inv, af, (kcpu_rope_style_t)style, &L, c2, layer, slots, ks, vsc, &e2, nullptr));
    rope_tab_g = -1;
    int bad = st != PD_OK;
    bad += memcmp(row, row2, nr * 4) != 0;
    bad += memcmp(c1, c2, cb) != 0;
    bad += e1 != e2 || (T > 1 && e1 != KCUDA_ERR_SLOT);
    if (!fp8) { /* against kcpu too */
        slots[T - 1] = T > 1 ? -1 : slots[T - 1];
        float *rq = row3, *rk = row3 + (int64_t)nh * hd, *rv = rk + W;
        kcpu_rope(NULL, rq, qs, rk, qs, pos, T, nh, nkv, hd, rot, inv, af, (kcpu_rope_style_t)style);
        kcpu_kv_write(&L, c3, layer, slots, T, rk, qs, rv, qs);
        bad += cmpf("rope row", row, row3, nr, 2e-5) != 0;
        size_t ne = cb / L.elem_bytes;
        float *a = (float *)malloc(4 * ne), *b = (float *)malloc(4 * ne);
        kcpu_dequant_row(cdt, c1, a, (int64_t)ne);
        kcpu_dequant_row(cdt, c3, b, (int64_t)ne);
        bad += cmpf("rope cache", a, b, ne, cdt == KCPU_DTYPE_F16 ? 1e-3 : 2e-5) != 0;
        free(a), free(b);
    }
    printf("rope %d/%d hd %d rot %d style %d cache %d T %lld%s: %s %s\n", nh, nkv, hd, rot, style, (int)cdt, (long long)T, aligned ? " aligned" : "", kn, bad ? "FAIL" : "ok");
    fails += bad != 0;
    free(pos), free(slots), free(row), free(row2), free(row3), free(c1), free(c2), free(c3);
}

int main(int argc, char **argv)
{
    bool big = argc > 1 && strcmp(argv[1], "big") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    static const int64_t nc[][3] = {{1, 4096, 0}, {7, 4096, 0}, {128, 4096, 0}, {129, 4096, 0}, {3, 576, 0}, {300, 576, 0}, {130, 1024, 0}, {200, 2048, 0}, {1, 8192, 0}, {150, 8192, 0}, {2, 16384, 0}, {140, 16384, 0}, {3, 4100, 0}, {200, 4100, 0}, {17, 12, 0}, {1, 4, 0}, {5, 20000, 0}, {9, 4098, 0}, {7, 67, 0}, {33, 4096, 1}, {1, 4096, 1}};
    for (auto &c : nc) norm_case(c[0], c[1], (int)c[2]);
    if (big) norm_case(2048, 4096, 0);
    static const int cfg[][4] = {{9, 3, 64, 64}, {32, 8, 128, 128}, {4, 2, 64, 32}, {6, 6, 80, 80}, {4, 2, 64, 20}, {5, 1, 36, 18}, {3, 1, 6, 6}, {2, 1, 520, 520}};
    static const kcpu_dtype_t cdts[] = {KCPU_DTYPE_F32, KCPU_DTYPE_F16, KCUDA_KV_FP8_E4M3, KCUDA_KV_FP8_E5M2};
    static const int64_t Ts[] = {1, 7, 37};
    for (size_t c = 0; c < 8; c++)
        for (int style = 0; style < 2; style++)
            for (size_t d = 0; d < 4; d++) {
                rope_case(cfg[c][0], cfg[c][1], cfg[c][2], cfg[c][3], style, cdts[d], (c + d) % 2 ? 1 : 37, false);
                rope_case(cfg[c][0], cfg[c][1], cfg[c][2], cfg[c][3], style, cdts[d], Ts[(c + d + style) % 3], true);
            }
    if (big)
        for (int style = 0; style < 2; style++)
            for (size_t d = 0; d < 4; d++) rope_case(32, 8, 128, 128, style, cdts[d], 2048, true);
    printf("%d failures\n", fails);
    return fails != 0;
}
