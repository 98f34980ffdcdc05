/*
 * kcuda_attn_prefill.cu - FlashAttention-2 style paged attention for prefill tiles
 * (prefill chunks, possibly mixed with decode tokens of other sequences) on mma.sync
 * tensor cores: f16 operands, f32 accumulation.
 *
 * One CTA = (a run of QT consecutive tokens, one KV head, one key split) with NW warps of
 * 16 query rows each: R = 16 * NW rows = (token, query head of the KV head's group), row
 * r -> token t0 + r / group, head kvh * group + r % group (QT = R / group; with a group
 * that does not divide R the last rows stay empty).  Each warp keeps its rows' q (scaled
 * by scale * log2(e), as f16 A fragments), the running max m and sum l (f32, log2 units)
 * and the output accumulator O (f32 C fragments) in registers for the whole key loop.
 * Keys are streamed in tiles of 64 from the paged cache (a tile can span several blocks:
 * every key is looked up in the block table) into shared memory, double-buffered:
 * cp.async for an f16 cache, a load-convert-store through registers for an f32 or fp8
 * one (e4m3 and e5m2 values are exactly f16 values; the per-layer scales are folded into
 * q (k_scale) and the output (v_scale), so the tiles hold the stored values).
 * Rows are padded by 16 bytes so the 8 rows of an ldmatrix land on distinct banks.
 * Per tile and warp: S = Q K^T on mma.m16n8k16 (K fragments by ldmatrix), masking only
 * where a row's key range [lo, hi] does not cover the tile, the online softmax on the
 * accumulator layout (a row's values sit in the 4 lanes of a quad: quad shuffles), and
 * P converted to f16 IN REGISTERS as the A operand of O += P V (the C layout of an
 * m16n8 tile pair is the A layout of an m16k16 one; V fragments by ldmatrix.trans).
 * Key range per row: causal [max(0, pos - window + 1), pos], else [.., context_len - 1],
 * the same as kcpu_paged_attention.  The CTA walks the union of its rows' ranges (split
 * into n_splits slices), so fully masked tiles are never loaded.  Tokens of different
 * sequences in one CTA are handled one sequence at a time (rows of the others masked).
 * CTAs are launched last token tile first (causal work grows with the position).
 * Range errors (bad sequence, position, context length or block id) set a bit in *err:
 * bad rows are skipped (no output written; with splits they come out as zeros) and bad
 * blocks read as zeros, like the other kernels of kcuda_attn.cu.
 * Keys past the CTA's range in the last tile are zero-filled, never read: V there must
 * be finite (0 * NaN in P V would poison the row).
 * Output type: f32, or bf16 / f16 rounded to nearest even at the final store (the type
 * the o projection's GEMM reads, saving the forward a rounding pass over the rows): a
 * run-time switch of the epilogue and the merge only, so the f32 values rounded are the
 * ones the f32 output would hold (bit for bit the same after rounding).
 */
#include "kcuda_internal.cuh"
#include "kcuda_attn_prefill.cuh"

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdlib.h>
#include <string.h>
#include <type_traits>

#define FA_KT 64 /* keys per tile */
#define FA_MAX_SPLITS 32
#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f

/* the output element type (fa_args_t.out_kind) */
enum { FA_OUT_F32 = 0, FA_OUT_BF16 = 1, FA_OUT_F16 = 2 };

typedef struct {
    const float *q;
    int64_t q_stride;
    void *out;        /* out_kind elements */
    int64_t out_stride;
    int out_kind;
    const int32_t *tok_seq, *tok_pos, *bt, *ctx;
    int64_t n_seqs, mbps;
    int n_tokens, n_heads, group, qt, n_splits;
    float qscale; /* scale * log2(e) * k_scale: the scores come out in log2 units, for exp2 */
    float oscale; /* v_scale (fp8 caches; 1 otherwise) */
    bool causal;
    int window;
    const void *cache;
    int64_t block_elems, layer_off, kv_stride, token_stride, n_blocks;
    int bs, bs_shift; /* bs_shift >= 0: bs = 1 << bs_shift (the usual case: no division) */
    float *ws;        /* [T][n_heads][n_splits][hd] accumulators, then [T][n_heads][n_splits][2] (m, l) */
    int *err;
} fa_args_t;

/* ---- PTX wrappers ---- */

__device__ __forceinline__ uint32_t fa_saddr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared, asynchronously; zeros when !valid (src is then not read) */
__device__ __forceinline__ void fa_cp16(uint32_t dst, const void *src, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}

__device__ __forceinline__ void fa_commit(void)
{
    asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int N> __device__ __forceinline__ void fa_wait(void)
{
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ void fa_ldsm4(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void fa_ldsm4_t(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* c += a (16x16 f16, row) * b (16x8 f16, col), f32 accumulators */
__device__ __forceinline__ void fa_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* two floats as an f16 pair, the first in the low half (the lower column of a fragment) */
__device__ __forceinline__ uint32_t fa_pack(float lo, float hi)
{
    __half2 h = __floats2half2_rn(lo, hi);
    return *(uint32_t *)&h;
}

/* out[i], out[i + 1] = x0, x1 in the output type (i even: a 16-bit pair is one 4-byte
 * store, the launcher checks that the row stride is even and the base 4-byte aligned;
 * f32 rows may have any stride: two stores) */
__device__ __forceinline__ void fa_store2(const fa_args_t &a, int64_t i, float x0, float x1)
{
    if (a.out_kind == FA_OUT_BF16) {
        *(__nv_bfloat162 *)((__nv_bfloat16 *)a.out + i) = __floats2bfloat162_rn(x0, x1);
    } else if (a.out_kind == FA_OUT_F16) {
        *(__half2 *)((__half *)a.out + i) = __floats2half2_rn(x0, x1);
    } else {
        ((float *)a.out)[i] = x0;
        ((float *)a.out)[i + 1] = x1;
    }
}

/* ---- tile loads ---- */

/* 8 fp8 values (8 bytes) as 8 f16 (16 bytes): exact, both formats fit in f16 */
template <__nv_fp8_interpretation_t I> __device__ __forceinline__ uint32_t fa_fp8x2_h2(uint32_t two)
{
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)two, I);
    return (uint32_t)h.x | ((uint32_t)h.y << 16);
}

template <__nv_fp8_interpretation_t I> __device__ __forceinline__ uint4 fa_fp8x8_to_h(uint2 b)
{
    return make_uint4(fa_fp8x2_h2<I>(b.x & 0xffffu), fa_fp8x2_h2<I>(b.x >> 16), fa_fp8x2_h2<I>(b.y & 0xffffu),
                      fa_fp8x2_h2<I>(b.y >> 16));
}

/* Element offset of key position p of the sequence's block table in the cache, or -1
 * (past kend, or a bad block: the error bit is set). */
__device__ __forceinline__ int64_t fa_key_off(const fa_args_t &a, const int32_t *bt, int kvh, int D, int p, int kend)
{
    if (p >= kend)
        return -1;
    const int bi = a.bs_shift >= 0 ? p >> a.bs_shift : p / a.bs;
    const int slot = p - bi * a.bs;
    const int32_t b = bt[bi];
    if (b < 0 || b >= a.n_blocks) {
        if (a.err)
            atomicOr(a.err, KCUDA_ERR_BLOCK);
        return -1;
    }
    return (int64_t)b * a.block_elems + a.layer_off + (int64_t)slot * a.token_stride + (int64_t)kvh * D;
}

/* K and V of keys [k0, k0 + 64) into one stage ([K | V][64][LD] halves); keys at or past
 * kend are zeros.  Every thread copies the same 16-byte piece of every (NT / CH)-th key. */
template <typename CT, int D, int NT>
__device__ __forceinline__ void fa_load_tile(const fa_args_t &a, const int32_t *bt, int kvh, __half *stage, int k0,
                                             int kend, int tid);

template <typename CT, int D, int NT>
__device__ __forceinline__ void fa_load_tile(const fa_args_t &a, const int32_t *bt, int kvh, __half *stage, int k0,
                                             int kend, int tid)
{
    constexpr int LD = D + 8, CH = D / 8, KPP = NT / CH;
    static_assert(NT % CH == 0 && FA_KT % KPP == 0, "loader shape");
    const int piece = tid % CH;
    __half *ks = stage, *vs = stage + FA_KT * LD;
    const CT *cache = (const CT *)a.cache;
#pragma unroll
    for (int i = 0; i < FA_KT / KPP; i++) { /* a fixed count: fully unrolled, the copies issued back to back */
        const int j = tid / CH + i * KPP;
        const int64_t e = fa_key_off(a, bt, kvh, D, k0 + j, kend);
        if constexpr (sizeof(CT) == 2) {
            const CT *src = e < 0 ? cache : cache + e + piece * 8;
            fa_cp16(fa_saddr(ks + j * LD + piece * 8), src, e >= 0);
            fa_cp16(fa_saddr(vs + j * LD + piece * 8), e < 0 ? cache : src + a.kv_stride, e >= 0);
        } else if constexpr (sizeof(CT) == 1) {
            constexpr __nv_fp8_interpretation_t I = std::is_same<CT, __nv_fp8_e5m2>::value ? __NV_E5M2 : __NV_E4M3;
            uint4 ku = make_uint4(0, 0, 0, 0), vu = make_uint4(0, 0, 0, 0);
            if (e >= 0) {
                ku = fa_fp8x8_to_h<I>(*(const uint2 *)(cache + e + piece * 8));
                vu = fa_fp8x8_to_h<I>(*(const uint2 *)(cache + e + a.kv_stride + piece * 8));
            }
            *(uint4 *)(ks + j * LD + piece * 8) = ku;
            *(uint4 *)(vs + j * LD + piece * 8) = vu;
        } else {
            uint4 ku = make_uint4(0, 0, 0, 0), vu = make_uint4(0, 0, 0, 0);
            if (e >= 0) {
                const float4 *kp = (const float4 *)(cache + e + piece * 8);
                const float4 *vp = (const float4 *)(cache + e + a.kv_stride + piece * 8);
                float4 k0v = kp[0], k1v = kp[1], v0v = vp[0], v1v = vp[1];
                ku = make_uint4(fa_pack(k0v.x, k0v.y), fa_pack(k0v.z, k0v.w), fa_pack(k1v.x, k1v.y),
                                fa_pack(k1v.z, k1v.w));
                vu = make_uint4(fa_pack(v0v.x, v0v.y), fa_pack(v0v.z, v0v.w), fa_pack(v1v.x, v1v.y),
                                fa_pack(v1v.z, v1v.w));
            }
            *(uint4 *)(ks + j * LD + piece * 8) = ku;
            *(uint4 *)(vs + j * LD + piece * 8) = vu;
        }
    }
}

/* ---- the kernel ---- */

template <typename CT, int D, int NW>
__global__ void __launch_bounds__(NW * 32, 1) fa_prefill_kernel(fa_args_t a)
{
    constexpr int NT = NW * 32, LD = D + 8, KS = D / 16, DN = D / 8, SN = FA_KT / 8;
    constexpr int STAGE = 2 * FA_KT * LD; /* halves per stage (K and V) */
    extern __shared__ __align__(128) unsigned char fa_smem[];
    __half *kv_s = (__half *)fa_smem;
    __shared__ int red_s[2][NW];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int G = a.group;
    const int tile = (int)gridDim.x - 1 - (int)blockIdx.x; /* last (longest) token tiles first */
    const int kvh = blockIdx.y, split = blockIdx.z;
    const int t0 = tile * a.qt, tend = min(t0 + a.qt, a.n_tokens);
    const int nrow = (tend - t0) * G;

    /* this thread's two rows (lane / 4 and lane / 4 + 8 of the warp's 16) */
    int rtok[2], rhead[2], rlo[2], rhi[2];
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
        const int r = warp * 16 + (lane >> 2) + 8 * h2;
        rtok[h2] = -1;
        rhead[h2] = 0;
        rlo[h2] = -2;
        rhi[h2] = -3; /* empty */
        if (r < nrow) {
            rtok[h2] = t0 + r / G;
            rhead[h2] = kvh * G + r % G;
            kc_attn_row_keys(a, rtok[h2], &rlo[h2], &rhi[h2]); /* a bad row: [-2, -3], no keys */
        }
    }

    /* q as A fragments, scaled into log2 units: qf[ks] = {row, row + 8} x {cols, cols + 8} */
    uint32_t qf[KS][4];
    {
        const int c0 = (lane & 3) * 2;
#pragma unroll
        for (int ks = 0; ks < KS; ks++)
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int h2 = u & 1, c = ks * 16 + c0 + (u >> 1) * 8;
                float x0 = 0.0f, x1 = 0.0f;
                if (rtok[h2] >= 0) {
                    const float *qr = a.q + (int64_t)rtok[h2] * a.q_stride + (int64_t)rhead[h2] * D + c;
                    x0 = qr[0] * a.qscale;
                    x1 = qr[1] * a.qscale;
                }
                qf[ks][u] = fa_pack(x0, x1);
            }
    }

    float o[DN][4];
#pragma unroll
    for (int n = 0; n < DN; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    /* per-lane ldmatrix offsets (halves) within a stage: matrix mi = lane / 8, row lane % 8 */
    const int mi = lane >> 3, rr = lane & 7;
    const int koff = (8 * (mi >> 1) + rr) * LD + (mi & 1) * 8;           /* K: keys +8 for mi 2, 3; d +8 odd */
    const int voff = FA_KT * LD + ((mi & 1) * 8 + rr) * LD + (mi >> 1) * 8; /* V: keys +8 odd; d +8 for mi 2, 3 */
    const uint32_t s_base = fa_saddr(kv_s);

    for (int t = t0; t < tend;) {
        const int seq = a.tok_seq[t];
        int te = t + 1;
        while (te < tend && a.tok_seq[te] == seq)
            te++;
        const bool seq_ok = seq >= 0 && seq < a.n_seqs;
        /* this sequence's rows; the others are empty for this pass (lo > hi: all masked) */
        int lo[2], hi[2];
#pragma unroll
        for (int h2 = 0; h2 < 2; h2++) {
            const bool act = rtok[h2] >= t && rtok[h2] < te && rlo[h2] <= rhi[h2];
            lo[h2] = act ? rlo[h2] : INT_MAX;
            hi[h2] = act ? rhi[h2] : -1;
        }
        int ulo = min(lo[0], lo[1]), uhi = max(hi[0], hi[1]);
#pragma unroll
        for (int sh = 16; sh > 0; sh >>= 1) {
            ulo = min(ulo, __shfl_xor_sync(0xffffffffu, ulo, sh));
            uhi = max(uhi, __shfl_xor_sync(0xffffffffu, uhi, sh));
        }
        if (lane == 0) {
            red_s[0][warp] = ulo;
            red_s[1][warp] = uhi;
        }
        __syncthreads();
        ulo = red_s[0][0];
        uhi = red_s[1][0];
#pragma unroll
        for (int w = 1; w < NW; w++) {
            ulo = min(ulo, red_s[0][w]);
            uhi = max(uhi, red_s[1][w]);
        }
        __syncthreads(); /* red_s is rewritten by the next sequence's pass */
        int s0 = 0, s1 = 0;
        if (seq_ok && uhi >= 0) {
            const int len = uhi - ulo + 1, chunk = (len + a.n_splits - 1) / a.n_splits;
            s0 = ulo + split * chunk;
            s1 = min(s0 + chunk, uhi + 1);
            if (s1 < s0)
                s1 = s0;
        }
        /* keys past this split's slice are zeros in the tile: masked like the rows' ranges */
#pragma unroll
        for (int h2 = 0; h2 < 2; h2++)
            hi[h2] = min(hi[h2], s1 - 1);
        const int32_t *bt = a.bt + (int64_t)(seq_ok ? seq : 0) * a.mbps;
        const int n_tiles = (s1 - s0 + FA_KT - 1) / FA_KT;

        if (n_tiles > 0)
            fa_load_tile<CT, D, NT>(a, bt, kvh, kv_s, s0, s1, tid);
        fa_commit();
        for (int it = 0; it < n_tiles; it++) {
            const int k0 = s0 + it * FA_KT;
            if (it + 1 < n_tiles) /* the next tile into the other stage while this one computes */
                fa_load_tile<CT, D, NT>(a, bt, kvh, kv_s + ((it + 1) & 1) * STAGE, k0 + FA_KT, s1, tid);
            fa_commit();
            fa_wait<1>();
            __syncthreads();
            const uint32_t st = s_base + (uint32_t)((it & 1) * STAGE) * 2u;

            /* S = Q K^T (log2 units) */
            float s[SN][4];
#pragma unroll
            for (int j = 0; j < SN; j++)
                s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ks++)
#pragma unroll
                for (int j = 0; j < SN; j += 2) {
                    uint32_t b[4];
                    fa_ldsm4(b, st + (uint32_t)(koff + j * 8 * LD + ks * 16) * 2u);
                    fa_mma(s[j], qf[ks], b[0], b[1]);
                    fa_mma(s[j + 1], qf[ks], b[2], b[3]);
                }

            /* masks where a row's range does not cover the whole tile */
#pragma unroll
            for (int h2 = 0; h2 < 2; h2++) {
                if (k0 >= lo[h2] && k0 + FA_KT - 1 <= hi[h2])
                    continue;
#pragma unroll
                for (int j = 0; j < SN; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int kp = k0 + j * 8 + (lane & 3) * 2 + e;
                        if (kp < lo[h2] || kp > hi[h2])
                            s[j][2 * h2 + e] = -INFINITY;
                    }
            }

            /* online softmax: a row lives in the 4 lanes of a quad */
#pragma unroll
            for (int h2 = 0; h2 < 2; h2++) {
                float mx = -INFINITY;
#pragma unroll
                for (int j = 0; j < SN; j++)
                    mx = fmaxf(mx, fmaxf(s[j][2 * h2], s[j][2 * h2 + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mnew = fmaxf(m[h2], mx);
                const float mref = mnew == -INFINITY ? 0.0f : mnew; /* no key yet: exp2(-inf) = 0 */
                const float alpha = exp2f(m[h2] - mref);
                m[h2] = mnew;
                float sum = 0.0f;
#pragma unroll
                for (int j = 0; j < SN; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const float pv = exp2f(s[j][2 * h2 + e] - mref);
                        s[j][2 * h2 + e] = pv;
                        sum += pv;
                    }
                l[h2] = l[h2] * alpha + sum; /* the lane's share; summed over the quad at the end */
#pragma unroll
                for (int n = 0; n < DN; n++) {
                    o[n][2 * h2] *= alpha;
                    o[n][2 * h2 + 1] *= alpha;
                }
            }

            /* O += P V with P from the S accumulators (k-step kk = S tiles 2kk, 2kk + 1) */
#pragma unroll
            for (int kk = 0; kk < FA_KT / 16; kk++) {
                const uint32_t pa[4] = {fa_pack(s[2 * kk][0], s[2 * kk][1]), fa_pack(s[2 * kk][2], s[2 * kk][3]),
                                        fa_pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                        fa_pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
                for (int n = 0; n < DN; n += 2) {
                    uint32_t b[4];
                    fa_ldsm4_t(b, st + (uint32_t)(voff + kk * 16 * LD + n * 8) * 2u);
                    fa_mma(o[n], pa, b[0], b[1]);
                    fa_mma(o[n + 1], pa, b[2], b[3]);
                }
            }
            __syncthreads(); /* the stage is reloaded two tiles on */
        }
        fa_wait<0>();
        t = te;
    }

    /* epilogue */
    const int c0 = (lane & 3) * 2;
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
        float lt = l[h2];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        if (rtok[h2] < 0)
            continue;
        if (a.n_splits == 1) {
            if (rlo[h2] == -2)
                continue; /* bad row: leave the output alone */
            const float inv = lt > 0.0f ? a.oscale / lt : 0.0f;
            const int64_t orow = (int64_t)rtok[h2] * a.out_stride + (int64_t)rhead[h2] * D + c0;
#pragma unroll
            for (int n = 0; n < DN; n++)
                fa_store2(a, orow + n * 8, o[n][2 * h2] * inv, o[n][2 * h2 + 1] * inv);
        } else {
            const int64_t row = ((int64_t)rtok[h2] * a.n_heads + rhead[h2]) * a.n_splits + split;
            float *wrow = a.ws + row * D + c0;
#pragma unroll
            for (int n = 0; n < DN; n++) {
                wrow[n * 8] = o[n][2 * h2] * a.oscale;
                wrow[n * 8 + 1] = o[n][2 * h2 + 1] * a.oscale;
            }
            if ((lane & 3) == 0) {
                float *ml = a.ws + (int64_t)a.n_tokens * a.n_heads * a.n_splits * D;
                ml[row * 2] = m[h2]; /* log2 units: the merge below uses exp2 */
                ml[row * 2 + 1] = lt;
            }
        }
    }
}

/* out[t, h, :] = merge of the splits' (m, l, acc), m in log2 units. */
__global__ void fa_combine_kernel(fa_args_t a, int D)
{
    const int t = blockIdx.x, h = blockIdx.y, S = a.n_splits;
    const int64_t row0 = ((int64_t)t * a.n_heads + h) * S;
    const float *ml = a.ws + (int64_t)a.n_tokens * a.n_heads * S * D;
    float M = -INFINITY;
    for (int s = 0; s < S; s++)
        M = fmaxf(M, ml[(row0 + s) * 2]);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float L = 0.0f, acc = 0.0f;
        if (M != -INFINITY) {
            for (int s = 0; s < S; s++) {
                const float mv = ml[(row0 + s) * 2];
                if (mv == -INFINITY)
                    continue;
                const float w = exp2f(mv - M);
                L += w * ml[(row0 + s) * 2 + 1];
                acc += w * a.ws[(row0 + s) * D + d];
            }
        }
        const float v = L > 0.0f ? acc / L : 0.0f;
        const int64_t i = (int64_t)t * a.out_stride + (int64_t)h * D + d;
        if (a.out_kind == FA_OUT_BF16)
            ((__nv_bfloat16 *)a.out)[i] = __float2bfloat16_rn(v);
        else if (a.out_kind == FA_OUT_F16)
            ((__half *)a.out)[i] = __float2half_rn(v);
        else
            ((float *)a.out)[i] = v;
    }
}

/* ---- host side ---- */

static kcuda_attn_prefill_t fa_mode_set = KCUDA_ATTN_PREFILL_AUTO;
static int fa_warps_set = 0;
static int fa_env_mode = -1, fa_env_warps = -1; /* read once */

static void fa_read_env(void)
{
    if (fa_env_mode >= 0)
        return;
    const char *e = getenv("PD_CUDA_ATTN_PREFILL");
    /* the default: fa2 (on one H200 the 2048-token prefill's attention 7.9 ms against
     * 50.3 ms with the WMMA kernel; bench/results/gpu_2026-11-28_s4); "old" for A/B */
    fa_env_mode = (e != NULL && strcmp(e, "old") == 0) ? KCUDA_ATTN_PREFILL_OLD : KCUDA_ATTN_PREFILL_FA2;
    const char *w = getenv("PD_CUDA_ATTN_PREFILL_WARPS");
    fa_env_warps = w == NULL ? 0 : strcmp(w, "8") == 0 ? 8 : 4; /* 0: by head_dim */
}

extern "C" void kcuda_attn_set_prefill(kcuda_attn_prefill_t kernel, int warps)
{
    fa_mode_set = kernel;
    fa_warps_set = warps == 4 || warps == 8 ? warps : 0;
}

kcuda_attn_prefill_t kcuda_attn_prefill_mode(void)
{
    if (fa_mode_set != KCUDA_ATTN_PREFILL_AUTO)
        return fa_mode_set;
    fa_read_env();
    return (kcuda_attn_prefill_t)fa_env_mode;
}

/* Warps per CTA.  The default by head size: 8 (128 query rows) for head_dim 128, where
 * on one H200 the attention alone runs 7-15% faster than with 4 (T 2048 / 4096 / 4096
 * after 4096: 149 / 203 / 227 against 140 / 181 / 197 TFLOP/s, 2026-11-29), 4 for
 * head_dim 64 (65 against 83 TFLOP/s at SmolLM2's shape). */
static int fa_warps(int head_dim)
{
    if (fa_warps_set)
        return fa_warps_set;
    fa_read_env();
    if (fa_env_warps)
        return fa_env_warps;
    return head_dim >= 128 ? 8 : 4;
}

bool kcuda_attn_prefill_ok(const kcpu_attn_params_t *p)
{
    const int G = p->n_heads / p->n_kv_heads;
    const kcpu_dtype_t dt = p->layout->dtype;
    return (p->head_dim == 64 || p->head_dim == 128) && G >= 1 && G <= 16 &&
           (dt == KCPU_DTYPE_F16 || dt == KCPU_DTYPE_F32 || dt == KCUDA_KV_FP8_E4M3 || dt == KCUDA_KV_FP8_E5M2);
}

int kcuda_attn_prefill_qt(const kcpu_attn_params_t *p)
{
    const int G = p->n_heads / p->n_kv_heads, qt = 16 * fa_warps(p->head_dim) / G;
    return qt < 1 ? 1 : qt;
}

int kcuda_attn_prefill_splits(const kcpu_attn_params_t *p, int sm_count)
{
    const int qt = kcuda_attn_prefill_qt(p);
    const int64_t ctas = ((p->n_tokens + qt - 1) / qt) * p->n_kv_heads;
    const int64_t want_ctas = 2 * (int64_t)(sm_count > 0 ? sm_count : 132);
    if (ctas >= want_ctas)
        return 1;
    /* few token tiles (a short chunk over a long context): split the keys, no slice
     * shorter than 256 keys */
    const int64_t bound = p->max_blocks_per_seq * p->layout->block_size;
    int64_t s = (want_ctas + ctas - 1) / (ctas > 0 ? ctas : 1);
    const int64_t by_len = (bound + 255) / 256;
    if (s > by_len)
        s = by_len;
    return (int)(s < 1 ? 1 : s > FA_MAX_SPLITS ? FA_MAX_SPLITS : s);
}

template <typename CT, int D, int NW>
static pd_status_t fa_launch_one(const fa_args_t &a, dim3 grid, cudaStream_t stream)
{
    const size_t smem = sizeof(__half) * 2 * 2 * FA_KT * (D + 8); /* two stages of K and V */
    cudaError_t e = cudaFuncSetAttribute(fa_prefill_kernel<CT, D, NW>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem);
    if (e != cudaSuccess) {
        PD_LOG_ERR("kcuda_paged_attention (prefill): %s", cudaGetErrorString(e));
        return PD_ERR_CUDA;
    }
    fa_prefill_kernel<CT, D, NW><<<grid, NW * 32, smem, stream>>>(a);
    return PD_OK;
}

pd_status_t kcuda_attn_prefill_launch(const kcpu_attn_params_t *p, float k_scale, float v_scale, void *out,
                                      kcpu_dtype_t out_type, int n_splits, float *ws, int *err, kcuda_stream_t stream)
{
    const kcpu_kv_layout_t *L = p->layout;
    if (!kcuda_attn_prefill_ok(p) || n_splits < 1 || n_splits > FA_MAX_SPLITS || (n_splits > 1 && ws == NULL) ||
        (out_type != KCPU_DTYPE_F32 && out_type != KCPU_DTYPE_BF16 && out_type != KCPU_DTYPE_F16) || out == NULL) {
        PD_LOG_ERR("kcuda_paged_attention (prefill): shape not supported");
        return PD_ERR_UNSUPPORTED;
    }
    if (out_type != KCPU_DTYPE_F32 && (((uintptr_t)out & 3) != 0 || p->out_stride % 2 != 0)) {
        PD_LOG_ERR("kcuda_paged_attention (prefill): a 16-bit output needs 4-byte aligned rows");
        return PD_ERR_INVAL;
    }
    const int NW = fa_warps(p->head_dim);
    fa_args_t a;
    a.q = p->q;
    a.q_stride = p->q_stride;
    a.out = out;
    a.out_stride = p->out_stride;
    a.out_kind = out_type == KCPU_DTYPE_BF16 ? FA_OUT_BF16 : out_type == KCPU_DTYPE_F16 ? FA_OUT_F16 : FA_OUT_F32;
    a.tok_seq = p->tok_seq;
    a.tok_pos = p->tok_pos;
    a.bt = p->block_tables;
    a.ctx = p->context_lens;
    a.n_seqs = p->n_seqs;
    a.mbps = p->max_blocks_per_seq;
    a.n_tokens = (int)p->n_tokens;
    a.n_heads = p->n_heads;
    a.group = p->n_heads / p->n_kv_heads;
    a.qt = kcuda_attn_prefill_qt(p);
    a.n_splits = n_splits;
    a.qscale = p->scale * FA_LOG2E * k_scale;
    a.oscale = v_scale;
    a.causal = p->causal;
    a.window = p->sliding_window;
    a.cache = p->cache_base;
    a.block_elems = (int64_t)(L->block_bytes / L->elem_bytes);
    a.layer_off = (int64_t)p->layer * L->layer_stride;
    a.kv_stride = L->kv_stride;
    a.token_stride = L->token_stride;
    a.n_blocks = L->n_blocks;
    a.bs = L->block_size;
    a.bs_shift = -1;
    for (int sh = 0; sh < 31; sh++)
        if ((1 << sh) == L->block_size)
            a.bs_shift = sh;
    a.ws = ws;
    a.err = err;
    const int64_t tiles = (p->n_tokens + a.qt - 1) / a.qt;
    if (tiles > INT32_MAX) {
        PD_LOG_ERR("kcuda_paged_attention (prefill): too many tokens");
        return PD_ERR_INVAL;
    }
    dim3 grid((unsigned)tiles, (unsigned)p->n_kv_heads, (unsigned)n_splits);
    pd_status_t st;
    const bool w8 = NW == 8, d128 = p->head_dim == 128;
#define FA_LAUNCH(CT)                                                                                   \
    st = d128 ? (w8 ? fa_launch_one<CT, 128, 8>(a, grid, stream) : fa_launch_one<CT, 128, 4>(a, grid, stream)) \
              : (w8 ? fa_launch_one<CT, 64, 8>(a, grid, stream) : fa_launch_one<CT, 64, 4>(a, grid, stream))
    if (L->dtype == KCPU_DTYPE_F16)
        FA_LAUNCH(__half);
    else if (L->dtype == KCPU_DTYPE_F32)
        FA_LAUNCH(float);
    else if (L->dtype == KCUDA_KV_FP8_E4M3)
        FA_LAUNCH(__nv_fp8_e4m3);
    else
        FA_LAUNCH(__nv_fp8_e5m2);
#undef FA_LAUNCH
    if (st != PD_OK)
        return st;
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        PD_LOG_ERR("kcuda_paged_attention (prefill): launch failed: %s", cudaGetErrorString(e));
        return PD_ERR_CUDA;
    }
    if (n_splits == 1)
        return PD_OK;
    fa_combine_kernel<<<dim3((unsigned)p->n_tokens, (unsigned)p->n_heads), 128, 0, stream>>>(a, p->head_dim);
    KCUDA_LAUNCHED("kcuda_paged_attention (prefill combine)");
}
