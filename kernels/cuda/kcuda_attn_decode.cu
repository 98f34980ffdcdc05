/*
 * kcuda_attn_decode.cu - paged attention for decode tokens (one query token per CTA row),
 * built to stream the KV cache at the memory rate: kcuda_paged_attention sends pure
 * decode batches here (kcuda_attn.cu keeps prefill and mixed batches).
 *
 * Decomposition: one CTA of DEC_WARPS warps = (token, KV head, key split).  The GQA
 * group's G query rows live in registers (scaled by softmax scale * k_scale * log2(e), so
 * the softmax runs in base 2), each lane holding the same VEC-element slice of every row.
 * A key's head vector (head_dim elements, contiguous in the paged cache) is read by TPK =
 * head_dim / VEC lanes with one load of up to 16 bytes each (VEC shrinks for large groups
 * so q and the accumulators fit in registers), straight from the cache into registers: a
 * warp covers R = 32 / TPK keys per step and U steps per iteration, K and V loads of all
 * of them issued before any arithmetic; with PIPE 1 the next iteration's loads are issued
 * into spare registers before this one computes, with PIPE 2 cp.async copies run up to 3
 * iterations ahead into a per-warp shared-memory ring (each lane reads back only its own
 * bytes), and block ids are looked up one iteration ahead of the loads (memory-level
 * parallelism is the point).  Each loaded K element serves every query row
 * of the group; the partial dot products are summed over the TPK lanes by reduce-scatter
 * and broadcast (SCATTER) or plain xor shuffles.  Each warp keeps an online softmax (m, l
 * and an f32 accumulator slice) per query row over its keys, rescaled only when the max
 * grows; f16 and fp8 elements are widened to f32 in registers.  At the end the warps'
 * states are merged through shared memory and either written out (one split) or written
 * as (m, l, acc) to the workspace and merged by a second kernel (flash-decoding).
 *
 * Invariants shared with the old kernel and relied on by CUDA graphs: the launch shape
 * depends on n_tokens, n_kv_heads, max_blocks_per_seq * block_size and the SM count only;
 * the kernel reads context lengths, positions and block ids on the device.  A bad
 * sequence index, position or context length sets KCUDA_ERR_SEQ (row skipped: output
 * untouched with one split, zeros with several); a block id outside the cache sets
 * KCUDA_ERR_BLOCK and its keys read as zeros (both as in kcuda_attn.cu).
 */
#include "kcuda_internal.cuh"
#include "kcuda_attn_decode.cuh"

#include <cuda_fp8.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <type_traits>

#define DEC_WARPS 4
#define DEC_LOG2E 1.4426950408889634f
#define DEC_LN2 0.6931471805599453f
#define DEC_MAX_SPLITS 64

typedef struct {
    const float *q;
    int64_t q_stride;
    float *out;
    int64_t out_stride;
    const int32_t *tok_seq, *tok_pos, *bt, *ctx;
    int64_t n_seqs, mbps;
    int n_tokens, n_heads, group, n_splits;
    float qscale;  /* softmax scale * k_scale * log2(e), folded into q */
    float v_scale; /* applied once to the merged accumulator */
    bool causal;
    bool l2hint; /* loads with an L2 256-byte prefetch hint and no L1 allocation */
    int pipe;     /* 0: load then compute; 1: loads one iteration ahead in registers;
                   * 2: cp.async into a per-warp shared-memory ring, several iterations ahead */
    bool scatter; /* the variant that sums dot products by reduce-scatter */
    bool head_major; /* grid (KV head, token, split) instead of (token, KV head, split) */
    int window;
    const void *cache;
    int64_t block_elems, layer_off, kv_stride, token_stride, n_blocks;
    int bs, bs_shift; /* bs_shift >= 0 when the block size is a power of two */
    float *ws;        /* [T][n_heads][S][D] accumulators, then [T][n_heads][S][2] (m natural, l) */
    int *err;
} dec_args_t;

/* ---- loads: WORDS 32-bit words (4, 8, 16 or 32 bytes) of the cache into registers ---- */

__device__ __forceinline__ void ld16(const void *p, uint32_t *r, bool hint)
{
    if (hint) {
        asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
            : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
            : "l"(p));
    } else {
        uint4 v = __ldg((const uint4 *)p);
        r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
    }
}

__device__ __forceinline__ void ld8(const void *p, uint32_t *r, bool hint)
{
    if (hint) {
        asm("ld.global.nc.L1::no_allocate.L2::256B.v2.u32 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "l"(p));
    } else {
        uint2 v = __ldg((const uint2 *)p);
        r[0] = v.x, r[1] = v.y;
    }
}

__device__ __forceinline__ void ld4(const void *p, uint32_t *r, bool hint)
{
    if (hint)
        asm("ld.global.nc.L1::no_allocate.L2::256B.u32 %0, [%1];" : "=r"(r[0]) : "l"(p));
    else
        r[0] = __ldg((const unsigned int *)p);
}

template <int WORDS> __device__ __forceinline__ void dec_load(const void *p, uint32_t *r, bool hint)
{
    if (WORDS == 1) {
        ld4(p, r, hint);
    } else if (WORDS == 2) {
        ld8(p, r, hint);
    } else {
#pragma unroll
        for (int i = 0; i < WORDS / 4; i++)
            ld16((const char *)p + 16 * i, r + 4 * i, hint);
    }
}

/* ---- asynchronous copies (PIPE 2): WORDS words of the cache into this lane's own slot
 * of shared memory; an invalid key copies nothing and fills zeros (src-size 0), so a
 * key past the row or in a bad block reads as zeros exactly as with dec_load_keys ---- */

template <int WORDS> __device__ __forceinline__ void dec_cp_async(uint32_t *dst, const void *src, bool valid)
{
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    if (WORDS == 1) {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(d), "l"(src), "r"(valid ? 4 : 0) : "memory");
    } else if (WORDS == 2) {
        asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(d), "l"(src), "r"(valid ? 8 : 0) : "memory");
    } else {
#pragma unroll
        for (int i = 0; i < WORDS / 4; i++)
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d + 16 * i),
                         "l"((const char *)src + (valid ? 16 * i : 0)), "r"(valid ? 16 : 0)
                         : "memory");
    }
}

__device__ __forceinline__ void dec_cp_commit()
{
    asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int N> __device__ __forceinline__ void dec_cp_wait()
{
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

/* ---- widening: WORDS words of CT elements -> f32 ---- */

template <typename CT, int WORDS> struct dec_cvt;

template <int WORDS> struct dec_cvt<float, WORDS> {
    static __device__ __forceinline__ void run(const uint32_t *r, float *f)
    {
#pragma unroll
        for (int i = 0; i < WORDS; i++)
            f[i] = __uint_as_float(r[i]);
    }
};

template <int WORDS> struct dec_cvt<__half, WORDS> {
    static __device__ __forceinline__ void run(const uint32_t *r, float *f)
    {
#pragma unroll
        for (int i = 0; i < WORDS; i++) {
            __half2 h = *(const __half2 *)&r[i];
            float2 v = __half22float2(h);
            f[2 * i] = v.x, f[2 * i + 1] = v.y;
        }
    }
};

template <int WORDS> struct dec_cvt<__nv_fp8_e4m3, WORDS> {
    static __device__ __forceinline__ void run(const uint32_t *r, float *f)
    {
#pragma unroll
        for (int i = 0; i < WORDS; i++) {
            __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(r[i] & 0xffffu), __NV_E4M3);
            __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(r[i] >> 16), __NV_E4M3);
            float2 a = __half22float2(*(const __half2 *)&lo), b = __half22float2(*(const __half2 *)&hi);
            f[4 * i] = a.x, f[4 * i + 1] = a.y, f[4 * i + 2] = b.x, f[4 * i + 3] = b.y;
        }
    }
};

/* e5m2 is the high byte of an f16: two byte permutes make the f16 pairs */
template <int WORDS> struct dec_cvt<__nv_fp8_e5m2, WORDS> {
    static __device__ __forceinline__ void run(const uint32_t *r, float *f)
    {
#pragma unroll
        for (int i = 0; i < WORDS; i++) {
            uint32_t lo = __byte_perm(r[i], 0u, 0x1404), hi = __byte_perm(r[i], 0u, 0x3424);
            float2 a = __half22float2(*(const __half2 *)&lo), b = __half22float2(*(const __half2 *)&hi);
            f[4 * i] = a.x, f[4 * i + 1] = a.y, f[4 * i + 2] = b.x, f[4 * i + 3] = b.y;
        }
    }
};

/* ---- the kernel ---- */

/* Element offset of key p's head vector (K side) for this CTA's KV head, or -1 for a
 * block id outside the cache (reported). */
__device__ __forceinline__ int64_t dec_key_off(const dec_args_t &a, const int32_t *bt, int p)
{
    const int bi = a.bs_shift >= 0 ? p >> a.bs_shift : p / a.bs;
    const int in = a.bs_shift >= 0 ? p & (a.bs - 1) : p - bi * a.bs;
    const int32_t b = bt[bi];
    if (b < 0 || b >= a.n_blocks) {
        if (a.err)
            atomicOr(a.err, KCUDA_ERR_BLOCK);
        return -1;
    }
    return (int64_t)b * a.block_elems + a.layer_off + (int64_t)in * a.token_stride;
}

/* Offsets of the U keys base + u * R + sub (-1 past s1). */
template <int U, int R>
__device__ __forceinline__ void dec_offsets(const dec_args_t &a, const int32_t *bt, int base, int sub, int s1,
                                            int64_t *off)
{
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int p = base + u * R + sub;
        off[u] = p < s1 ? dec_key_off(a, bt, p) : -1;
    }
}

/* This lane's slice of the K and V rows of U keys (zeros for offset -1). */
template <typename CT, int U, int WORDS>
__device__ __forceinline__ void dec_load_keys(const CT *cache, const int64_t *off, int64_t kv_stride,
                                              int64_t lane_off, bool hint, uint32_t (&kr)[U][WORDS],
                                              uint32_t (&vr)[U][WORDS])
{
#pragma unroll
    for (int u = 0; u < U; u++) {
        if (off[u] >= 0) {
            dec_load<WORDS>(cache + off[u] + lane_off, kr[u], hint);
            dec_load<WORDS>(cache + off[u] + kv_stride + lane_off, vr[u], hint);
        } else {
#pragma unroll
            for (int w = 0; w < WORDS; w++)
                kr[u][w] = vr[u][w] = 0u;
        }
    }
}

/* PIPE 2: copy the K and V slices of U keys into ring slot `slot` (this lane's words at
 * slot[((u * 2 + kv) * 32 + lane) * WORDS]); invalid keys fill zeros. */
template <typename CT, int U, int WORDS>
__device__ __forceinline__ void dec_stage_keys(uint32_t *slot, const CT *cache, const int64_t *off, int64_t kv_stride,
                                               int64_t lane_off, int lane)
{
#pragma unroll
    for (int u = 0; u < U; u++) {
        const bool ok = off[u] >= 0;
        const CT *src = ok ? cache + off[u] + lane_off : cache;
        dec_cp_async<WORDS>(slot + ((u * 2 + 0) * 32 + lane) * WORDS, src, ok);
        dec_cp_async<WORDS>(slot + ((u * 2 + 1) * 32 + lane) * WORDS, ok ? src + kv_stride : cache, ok);
    }
}

/* PIPE 2: this lane's staged words back into registers (its own copies: no barrier). */
template <int U, int WORDS>
__device__ __forceinline__ void dec_unstage_keys(const uint32_t *slot, int lane, uint32_t (&kr)[U][WORDS],
                                                 uint32_t (&vr)[U][WORDS])
{
#pragma unroll
    for (int u = 0; u < U; u++) {
        const uint32_t *k = slot + ((u * 2 + 0) * 32 + lane) * WORDS, *v = slot + ((u * 2 + 1) * 32 + lane) * WORDS;
        if (WORDS % 4 == 0) {
#pragma unroll
            for (int i = 0; i < WORDS / 4; i++) {
                const uint4 kk = ((const uint4 *)k)[i], vv = ((const uint4 *)v)[i];
                kr[u][4 * i] = kk.x, kr[u][4 * i + 1] = kk.y, kr[u][4 * i + 2] = kk.z, kr[u][4 * i + 3] = kk.w;
                vr[u][4 * i] = vv.x, vr[u][4 * i + 1] = vv.y, vr[u][4 * i + 2] = vv.z, vr[u][4 * i + 3] = vv.w;
            }
        } else if (WORDS == 2) {
            const uint2 kk = *(const uint2 *)k, vv = *(const uint2 *)v;
            kr[u][0] = kk.x, kr[u][1] = kk.y;
            vr[u][0] = vv.x, vr[u][1] = vv.y;
        } else {
            kr[u][0] = k[0];
            vr[u][0] = v[0];
        }
    }
}

/* PIPE 2 ring depth: as many slots (of DEC_WARPS warps x U keys x K and V x 32 lanes x
 * WORDS words) as fit beside the epilogue's arrays in 46 KB of static shared memory, at
 * most 4; below 2 the kernel is not built for the shape (the launch falls back to PIPE 0). */
__host__ __device__ constexpr int dec_stages(int U, int WORDS, int GM, int D)
{
    return (46 * 1024 - DEC_WARPS * GM * (D + 2) * 4) / (DEC_WARPS * U * 2 * 32 * WORDS * 4) >= 4
               ? 4
               : (46 * 1024 - DEC_WARPS * GM * (D + 2) * 4) / (DEC_WARPS * U * 2 * 32 * WORDS * 4);
}

__host__ __device__ constexpr int dec_log2(int x)
{
    return x <= 1 ? 0 : 1 + dec_log2(x / 2);
}

/*
 * v[0..N) holds this lane's partial sums of N values; afterwards every lane of its group
 * of TPK lanes (aligned, powers of two) holds the group's totals.  Reduce-scatter then
 * broadcast: at each of the first log2(min(N, TPK)) levels a lane keeps half of its
 * values (the upper half when its lane bit for that level is set) and adds the partner's
 * other half, so the level costs half as many shuffles as values; the remaining levels
 * are plain xor sums; then each total is fetched from a lane that holds it.  About 2N
 * shuffles instead of N log2(TPK).  After the levels, local value j of a lane is the
 * original value j + NF * q, q made of the lane's level bits (first level = top bit).
 */
template <int N, int TPK>
__device__ __forceinline__ void dec_group_sum(float *v, int lane)
{
    constexpr int LT = dec_log2(TPK), LN = dec_log2(N), LS = LT < LN ? LT : LN, NF = N >> LS;
#pragma unroll
    for (int lev = 0; lev < LT; lev++) {
        const int o = TPK >> (lev + 1);
        if (lev < LS) {
            const int h = N >> (lev + 1);
            const bool up = (lane & o) != 0;
#pragma unroll
            for (int i = 0; i < h; i++) {
                const float send = up ? v[i] : v[i + h], keep = up ? v[i + h] : v[i];
                v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
            }
        } else {
#pragma unroll
            for (int i = 0; i < NF; i++)
                v[i] += __shfl_xor_sync(0xffffffffu, v[i], o);
        }
    }
    float r[N];
    const int gbase = lane & ~(TPK - 1);
#pragma unroll
    for (int k = 0; k < N; k++)
        r[k] = __shfl_sync(0xffffffffu, v[k % NF], gbase | ((k / NF) << (LT - LS)));
#pragma unroll
    for (int k = 0; k < N; k++)
        v[k] = r[k];
}

/* One CTA's token, KV head, split and key slice [s0, s1) (empty for a bad row). */
typedef struct {
    int t, kvh, split, seq;
    bool seq_ok, row_ok;
    int s0, s1;
} dec_row_t;

__device__ __forceinline__ dec_row_t dec_row(const dec_args_t &a)
{
    dec_row_t rw;
    /* head-major grids put the KV heads of one token next to each other in launch order */
    rw.t = a.head_major ? blockIdx.y : blockIdx.x;
    rw.kvh = a.head_major ? blockIdx.x : blockIdx.y;
    rw.split = blockIdx.z;
    rw.seq = a.tok_seq[rw.t];
    rw.seq_ok = rw.seq >= 0 && rw.seq < a.n_seqs;
    int ctx = rw.seq_ok ? a.ctx[rw.seq] : 0;
    const int64_t cap = a.mbps * a.bs;
    const bool bad_ctx = ctx > cap || ctx < 0;
    if (bad_ctx)
        ctx = ctx < 0 ? 0 : (int)cap;
    const int pos = a.tok_pos[rw.t];
    int hi = a.causal ? pos : ctx - 1, lo = a.window > 0 ? pos - a.window + 1 : 0;
    if (lo < 0)
        lo = 0;
    rw.row_ok = rw.seq_ok && pos >= 0 && hi < ctx;
    if (threadIdx.x == 0 && a.err && (bad_ctx || !rw.row_ok))
        atomicOr(a.err, KCUDA_ERR_SEQ);
    rw.s0 = rw.s1 = 0;
    if (rw.row_ok && hi >= lo) {
        /* whole 16-key steps a split (empty tail splits are fine): a split starting on a
         * block boundary keeps every step of the ring inside one block */
        const int len = hi - lo + 1, chunk = ((len + a.n_splits - 1) / a.n_splits + 15) & ~15;
        rw.s0 = lo + rw.split * chunk;
        rw.s1 = min(rw.s0 + chunk, hi + 1);
        if (rw.s1 < rw.s0)
            rw.s1 = rw.s0;
    }
    return rw;
}

/* Merge the warps' (m, l, acc) (base-2 m) and write the group's rows, or this split's
 * partial state (natural-log m) for the merge kernel. */
template <int GM, int D, int NW = DEC_WARPS>
__device__ __forceinline__ void dec_epilogue(const dec_args_t &a, const dec_row_t &rw, float (*red_m)[GM],
                                             float (*red_l)[GM], float (*red_acc)[GM][D])
{
    const int G = a.group;
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        const int g = i / D, d = i % D, h = rw.kvh * G + g;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < NW; w++)
            M = fmaxf(M, red_m[w][g]);
        float L = 0.0f, A = 0.0f;
        if (M != -INFINITY) {
#pragma unroll
            for (int w = 0; w < NW; w++) {
                const float wt = exp2f(red_m[w][g] - M);
                L += wt * red_l[w][g];
                A += wt * red_acc[w][g][d];
            }
        }
        if (a.n_splits == 1) {
            if (rw.row_ok)
                a.out[(int64_t)rw.t * a.out_stride + (int64_t)h * D + d] = L > 0.0f ? A * a.v_scale / L : 0.0f;
        } else {
            const int64_t row = ((int64_t)rw.t * a.n_heads + h) * a.n_splits + rw.split;
            a.ws[row * D + d] = A * a.v_scale;
            if (d == 0) {
                float *ml = a.ws + (int64_t)a.n_tokens * a.n_heads * a.n_splits * D;
                ml[row * 2] = M == -INFINITY ? -INFINITY : M * DEC_LN2;
                ml[row * 2 + 1] = L;
            }
        }
    }
}

/* CTAs per SM the register allocation must leave room for (occupancy is what keeps
 * enough loads in flight): 5 for f32, 4 for f16 and fp8 (3 with PIPE: 4 spills) for
 * head dims up to 128 and groups up to 4; none for the larger shapes (they would spill). */
template <typename CT, int D, int GM, int PIPE> constexpr int dec_min_ctas()
{
    return (GM > 4 || D > 128) ? 1 : sizeof(CT) == 4 ? 5 : (sizeof(CT) == 1 && PIPE == 1) ? 3 : 4;
}

/*
 * CT: cache element type; D: head dim; GM: query rows held (>= group, padded rows are
 * zeros); VEC: elements per lane per key; U: key steps per iteration; PIPE: 0 loads then
 * computes, 1 loads one iteration ahead into registers, 2 copies dec_stages() - 1
 * iterations ahead into shared memory (cp.async; no registers held by loads in flight);
 * SCATTER: dot products summed over the key's lanes by dec_group_sum.
 */
template <typename CT, int D, int GM, int VEC, int U, int PIPE, bool SCATTER>
__global__ void __launch_bounds__(DEC_WARPS * 32, dec_min_ctas<CT, D, GM, PIPE>()) attn_decode_kernel(dec_args_t a)
{
    constexpr int TPK = D / VEC;                           /* lanes per key */
    constexpr int R = 32 / TPK;                            /* keys per warp per step */
    constexpr int KPW = R * U;                             /* keys per warp per iteration */
    constexpr int WORDS = VEC * (int)sizeof(CT) / 4;       /* 32-bit words per lane per key */
    static_assert(TPK >= 1 && TPK <= 32 && 32 % TPK == 0, "lanes per key");
    static_assert(WORDS == 1 || WORDS == 2 || WORDS == 4 || WORDS == 8, "load width");
    __shared__ float red_m[DEC_WARPS][GM], red_l[DEC_WARPS][GM];
    __shared__ float red_acc[DEC_WARPS][GM][D];
    constexpr int NST = PIPE == 2 ? dec_stages(U, WORDS, GM, D) : 1; /* ring slots */
    constexpr int SLOT = U * 2 * 32 * WORDS;                         /* words per slot */
    static_assert(PIPE != 2 || NST >= 2, "ring depth");
    __shared__ __align__(16) uint32_t ring[PIPE == 2 ? DEC_WARPS * NST * SLOT : 4];

    const dec_row_t rw = dec_row(a);
    const int t = rw.t, kvh = rw.kvh, s0 = rw.s0, s1 = rw.s1;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub = lane / TPK, part = lane % TPK;
    uint32_t *const wring = ring + (PIPE == 2 ? warp * NST * SLOT : 0);
    const int G = a.group;

    /* the group's query rows, this lane's slice */
    float q[GM][VEC];
#pragma unroll
    for (int g = 0; g < GM; g++) {
        const float *qr = a.q + (int64_t)t * a.q_stride + (int64_t)(kvh * G + g) * D + part * VEC;
#pragma unroll
        for (int e = 0; e < VEC; e++)
            q[g][e] = g < G ? qr[e] * a.qscale : 0.0f;
    }

    float m[GM], l[GM], acc[GM][VEC];
#pragma unroll
    for (int g = 0; g < GM; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < VEC; e++)
            acc[g][e] = 0.0f;
    }

    const CT *cache = (const CT *)a.cache;
    const int32_t *bt = a.bt + (int64_t)(rw.seq_ok ? rw.seq : 0) * a.mbps;
    const int64_t lane_off = (int64_t)kvh * D + part * VEC; /* within a key's token row */
    const int stride = DEC_WARPS * KPW;

    /* element offsets of this lane's keys (-1: none / bad block); with PIPE 1 the loads of
     * iteration i + 1 are issued before iteration i computes (registers double-buffered),
     * with PIPE 2 the copies of iteration i + NST - 1; the offsets always run one
     * iteration ahead of the loads */
    int64_t off[U];
    uint32_t kr[U][WORDS], vr[U][WORDS];
    int base = s0 + warp * KPW;
    dec_offsets<U, R>(a, bt, base, sub, s1, off);
    if (PIPE == 1) {
        dec_load_keys<CT, U, WORDS>(cache, off, a.kv_stride, lane_off, a.l2hint, kr, vr);
        dec_offsets<U, R>(a, bt, base + stride, sub, s1, off);
    }
    /* PIPE 2: slots 0 .. NST - 2 take iterations 0 .. NST - 2 (empty groups past the row
     * keep the group count uniform); iteration i reads slot i % NST and refills the slot
     * read in iteration i - 1 (its registers were consumed then) with iteration i + NST - 1 */
    int rd = 0, wr = NST - 1;
    if (PIPE == 2) {
#pragma unroll
        for (int st = 0; st < NST - 1; st++) {
            if (base + st * stride < s1)
                dec_stage_keys<CT, U, WORDS>(wring + st * SLOT, cache, off, a.kv_stride, lane_off, lane);
            dec_cp_commit();
            dec_offsets<U, R>(a, bt, base + (st + 1) * stride, sub, s1, off);
        }
    }

    for (; base < s1; base += stride) {
        uint32_t kn[U][WORDS], vn[U][WORDS];
        if (PIPE == 2) {
            if (base + (NST - 1) * stride < s1)
                dec_stage_keys<CT, U, WORDS>(wring + wr * SLOT, cache, off, a.kv_stride, lane_off, lane);
            dec_cp_commit();
            dec_offsets<U, R>(a, bt, base + NST * stride, sub, s1, off);
            dec_cp_wait<NST - 1>();
            dec_unstage_keys<U, WORDS>(wring + rd * SLOT, lane, kr, vr);
            rd = rd + 1 == NST ? 0 : rd + 1;
            wr = wr + 1 == NST ? 0 : wr + 1;
        } else if (PIPE == 1) {
            dec_load_keys<CT, U, WORDS>(cache, off, a.kv_stride, lane_off, a.l2hint, kn, vn);
            dec_offsets<U, R>(a, bt, base + 2 * stride, sub, s1, off);
        } else {
            dec_load_keys<CT, U, WORDS>(cache, off, a.kv_stride, lane_off, a.l2hint, kr, vr);
            dec_offsets<U, R>(a, bt, base + stride, sub, s1, off);
        }
        bool valid[U];
#pragma unroll
        for (int u = 0; u < U; u++)
            valid[u] = base + u * R + sub < s1;

        /* scores (base-2 logits) of the U keys for every query row */
        float s[U][GM];
#pragma unroll
        for (int u = 0; u < U; u++) {
            float kf[VEC];
            dec_cvt<CT, WORDS>::run(kr[u], kf);
#pragma unroll
            for (int g = 0; g < GM; g++) {
                float d = 0.0f;
#pragma unroll
                for (int e = 0; e < VEC; e++)
                    d = fmaf(q[g][e], kf[e], d);
                s[u][g] = d;
            }
        }
        if (SCATTER) {
            dec_group_sum<U * GM, TPK>(&s[0][0], lane);
        } else {
#pragma unroll
            for (int o = TPK / 2; o > 0; o >>= 1)
#pragma unroll
                for (int u = 0; u < U; u++)
#pragma unroll
                    for (int g = 0; g < GM; g++)
                        s[u][g] += __shfl_xor_sync(0xffffffffu, s[u][g], o);
        }

        /* online softmax, the max shared by the whole warp (so the branch is uniform):
         * l and acc are rescaled only when the max grows, which after the first keys is
         * rare, instead of on every iteration */
#pragma unroll
        for (int g = 0; g < GM; g++) {
            float mx = -INFINITY;
#pragma unroll
            for (int u = 0; u < U; u++) {
                if (!valid[u])
                    s[u][g] = -INFINITY;
                mx = fmaxf(mx, s[u][g]);
            }
#pragma unroll
            for (int o = TPK; o < 32; o <<= 1)
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            if (mx > m[g]) {
                const float alpha = exp2f(m[g] - mx); /* 0 while m is -inf */
                m[g] = mx;
                l[g] *= alpha;
#pragma unroll
                for (int e = 0; e < VEC; e++)
                    acc[g][e] *= alpha;
            }
            const float mref = m[g] == -INFINITY ? 0.0f : m[g];
            float sum = 0.0f;
#pragma unroll
            for (int u = 0; u < U; u++) {
                s[u][g] = exp2f(s[u][g] - mref);
                sum += s[u][g];
            }
            l[g] += sum;
        }
        /* acc += sum_u p_u v_u */
#pragma unroll
        for (int u = 0; u < U; u++) {
            float vf[VEC];
            dec_cvt<CT, WORDS>::run(vr[u], vf);
#pragma unroll
            for (int g = 0; g < GM; g++)
#pragma unroll
                for (int e = 0; e < VEC; e++)
                    acc[g][e] = fmaf(s[u][g], vf[e], acc[g][e]);
        }
        if (PIPE == 1) {
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int w = 0; w < WORDS; w++) {
                    kr[u][w] = kn[u][w];
                    vr[u][w] = vn[u][w];
                }
        }
    }

    if (PIPE == 2)
        asm volatile("cp.async.wait_all;" ::: "memory"); /* no copy lands after the exit */

    /* merge the warp's key groups (same m: it is warp-wide) */
#pragma unroll
    for (int o = TPK; o < 32; o <<= 1)
#pragma unroll
        for (int g = 0; g < GM; g++) {
            l[g] += __shfl_xor_sync(0xffffffffu, l[g], o);
#pragma unroll
            for (int e = 0; e < VEC; e++)
                acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
        }
    if (sub == 0) {
#pragma unroll
        for (int g = 0; g < GM; g++)
#pragma unroll
            for (int e = 0; e < VEC; e++)
                red_acc[warp][g][part * VEC + e] = acc[g][e];
    }
    if (lane == 0) {
#pragma unroll
        for (int g = 0; g < GM; g++) {
            red_m[warp][g] = m[g];
            red_l[warp][g] = l[g];
        }
    }
    __syncthreads();

    dec_epilogue<GM, D>(a, rw, red_m, red_l, red_acc);
}

/*
 * ---- tensor-core decode kernel for f16 / fp8 caches (the default for them; PD_CUDA_ATTN_TC=0: SIMT) ----
 *
 * Same CTA decomposition and epilogue; a warp takes 16 keys a step and runs q.k and p.v
 * on mma.m16n8k16 (f16 operands, f32 accumulation) with the group's query rows as the 8
 * columns (zero-padded).  Lane (r = lane / 4, c = lane % 4):
 *  - S = K q^T: A = 16 keys x 16 dims, lane loads elements [c D/4, (c + 1) D/4) of keys
 *    r and r + 8 (one contiguous chunk per key), k-step j using its elements 4j .. 4j + 3
 *    (the A and B fragments' columns 2c, 2c + 1, 2c + 8, 2c + 9); q is permuted the same
 *    way and split q = q_hi + q_lo in f16 (two mma per k-step), so the products keep
 *    about 22 bits: K is exact in f16 for f16 and fp8 caches.  The softmax scale is
 *    applied to the f32 scores.
 *  - O^T += V^T P^T: A = 16 dims x 16 keys, where tile t row r is dim r D/8 + 2t and row
 *    r + 8 is dim r D/8 + 2t + 1, so lane (r, c) loads dims [r D/8, (r + 1) D/8) of keys
 *    2c, 2c + 1, 2c + 8, 2c + 9 and builds each fragment register with one byte
 *    permute; P (times 1024, kept out of f16 subnormals) is split hi + lo the same way and
 *    moved from the score fragment layout to the B layout with shuffles.
 * Head dims 64 and 128, groups <= 8; loads through a per-warp cp.async ring by default
 * (attn_decode_tc_kernel, below).
 */
__device__ __forceinline__ void dec_mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                        uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* NW raw words of CT elements -> f16x2 words h (h[k] = elements 2k, 2k + 1). */
template <typename CT, int NW> struct dec_h2;
template <int NW> struct dec_h2<__half, NW> {
    static __device__ __forceinline__ void run(const uint32_t *r, uint32_t *h)
    {
#pragma unroll
        for (int i = 0; i < NW; i++)
            h[i] = r[i];
    }
};
template <int NW> struct dec_h2<__nv_fp8_e4m3, NW> {
    static __device__ __forceinline__ void run(const uint32_t *r, uint32_t *h)
    {
        /* one cvt per byte pair, straight from the word's halves (no masks, shifts or
         * repacking around the intrinsic's 16-bit struct) */
#pragma unroll
        for (int i = 0; i < NW; i++)
            asm("{\n\t.reg .b16 lo, hi;\n\tmov.b32 {lo, hi}, %2;\n\tcvt.rn.f16x2.e4m3x2 %0, lo;\n\t"
                "cvt.rn.f16x2.e4m3x2 %1, hi;\n\t}"
                : "=r"(h[2 * i]), "=r"(h[2 * i + 1])
                : "r"(r[i]));
    }
};
template <int NW> struct dec_h2<__nv_fp8_e5m2, NW> {
    static __device__ __forceinline__ void run(const uint32_t *r, uint32_t *h)
    {
#pragma unroll
        for (int i = 0; i < NW; i++) {
            h[2 * i] = __byte_perm(r[i], 0u, 0x1404);
            h[2 * i + 1] = __byte_perm(r[i], 0u, 0x3424);
        }
    }
};

/* x (two floats) as f16x2 hi and the f16x2 of what rounding left over */
__device__ __forceinline__ void dec_split2(float x0, float x1, uint32_t *hi, uint32_t *lo)
{
    __half2 h = __floats2half2_rn(x0, x1);
    float2 b = __half22float2(h);
    __half2 l = __floats2half2_rn(x0 - b.x, x1 - b.y);
    *hi = *(uint32_t *)&h;
    *lo = *(uint32_t *)&l;
}

/* Shared memory of the tensor-core kernel: NW warps x NS stages x 16 keys x (K + V) x D
 * elements of ring (NS 0: none), and the epilogue's NW x 8 rows x D floats, which alias
 * the ring (every warp has left its loop by then). */
template <typename CT, int D, int NW, int NS> __host__ __device__ constexpr int dec_tc_smem()
{
    return NW * NS * 32 * D * (int)sizeof(CT) > NW * 8 * D * 4 ? NW * NS * 32 * D * (int)sizeof(CT) : NW * 8 * D * 4;
}

/* NW warps a CTA, 4 CTAs per SM (the split count assumes it: batch 64 x 8 KV heads is one
 * wave).  NS 0: each lane loads its K and V chunks of a 16-key step straight into
 * registers, then computes (f16 at head dim 128 would take 156 registers unbounded and
 * spills 88 bytes at the 128 of 4 warps x 4 CTAs).  NS >= 2 (the default): each warp
 * streams its steps through a ring of NS stages in dynamic shared memory with cp.async,
 * NS steps in flight while it computes one; whole-line copies into a swizzled layout
 * (below).  Loads in flight hold no registers: f16 2 warps x 2 stages and fp8 4 x 2 read
 * 90-100% / 70-86% of the copy rate at 1k-4k keys where the register form read 71-78% /
 * 56-67% (docs/cuda.md, "The decode kernel"). */
template <typename CT, int D, int NW, int NS>
__global__ void __launch_bounds__(NW * 32, 4) attn_decode_tc_kernel(dec_args_t a)
{
    constexpr int KS = D / 16;                   /* k-steps of q.k, dim tiles of p.v */
    constexpr int EB = (int)sizeof(CT);
    constexpr int KWR = D / 4 * EB / 4;          /* raw words of a lane's K chunk (a key) */
    constexpr int VWR = D / 8 * EB / 4;          /* raw words of a lane's V chunk (a key) */
    constexpr float PS = 1024.0f;                /* p scale before the f16 split */
    static_assert(NS == 0 || (NS >= 2 && KWR % 4 == 0 && VWR % 4 == 0 && D * EB >= 128),
                  "ring: 16-byte chunks, rows of 8 chunks or more, 2 stages or more");
    /* A lane's K chunk is KP pieces of KE elements: piece p of lane c is elements
     * p * 4 KE + c KE ..; its V chunk VP pieces of VE elements, piece p of lane r at
     * p * 8 VE + r VE.  Registers (NS 0): one piece each, the lane's contiguous quarter
     * (eighth) of the row.  Ring: 16-byte pieces, each the 16-byte chunk 4p + c (8p + r)
     * of the row in shared memory. */
    constexpr int KPB = NS == 0 ? KWR * 4 : 16, VPB = NS == 0 ? VWR * 4 : 16; /* piece bytes (registers: one) */
    constexpr int KE = KPB / EB, VE = VPB / EB, KP = KWR * 4 / KPB, VP = VWR * 4 / VPB;
    constexpr int STEP = NW * 16;                /* keys of one step of all warps */
    constexpr int RC = D * EB / 16;              /* 16-byte chunks of a key's row (ring: 8 or more) */
    __shared__ float red_m[NW][8], red_l[NW][8];
    extern __shared__ __align__(16) unsigned char tc_smem[];
    float(*red_acc)[8][D] = reinterpret_cast<float(*)[8][D]>(tc_smem);

    const dec_row_t rw = dec_row(a);
    const int t = rw.t, kvh = rw.kvh, s0 = rw.s0, s1 = rw.s1;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 2, c = lane & 3;
    const int G = a.group;
    uint4 *const wring = reinterpret_cast<uint4 *>(tc_smem) + (NS ? warp * NS * 32 * RC : 0);

    /* B fragments of q (row r of the group), hi and lo, k-step j: elements 4j .. 4j + 3
     * of the lane's chunk [c D/4, (c + 1) D/4) */
    uint32_t qh[KS][2], ql[KS][2];
    {
        const float *qr = a.q + (int64_t)t * a.q_stride + (int64_t)(kvh * G + r) * D;
#pragma unroll
        for (int j = 0; j < KS; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int x = 4 * j + 2 * e, d = x / KE * 4 * KE + c * KE + x % KE; /* the lane's element x */
                const float x0 = r < G ? qr[d] : 0.0f, x1 = r < G ? qr[d + 1] : 0.0f;
                dec_split2(x0, x1, &qh[j][e], &ql[j][e]);
            }
    }
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}; /* query rows 2c, 2c + 1 */
    float acc[KS][4];
#pragma unroll
    for (int i = 0; i < KS; i++)
        acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;

    const CT *cache = (const CT *)a.cache;
    const int32_t *bt = a.bt + (int64_t)(rw.seq_ok ? rw.seq : 0) * a.mbps;
    const int64_t k_lane = (int64_t)kvh * D + c * KE, v_lane = (int64_t)kvh * D + r * VE; /* + piece p at p 4 KE / p 8 VE */

    /* the lane's keys of the step at bs: K of bs + r and bs + r + 8, V of bs + 2c, 2c + 1,
     * 2c + 8, 2c + 9 (element offsets, -1 past the row or for a bad block) */
    auto offsets = [&](int bs, int64_t(&ok)[2], int64_t(&ov)[4]) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int k = bs + r + 8 * h;
            ok[h] = k < s1 ? dec_key_off(a, bt, k) : -1;
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int k = bs + 2 * c + (i & 1) + (i >> 1) * 8;
            ov[i] = k < s1 ? dec_key_off(a, bt, k) : -1;
        }
    };
    /*
     * Ring: a stage holds the 16 keys' K rows, then their V rows, [key][chunk] in 16-byte
     * chunks, chunk ch of key k at ch ^ kswz(k) (K) / ch ^ vswz(k) (V), so the fragment
     * reads below hit 8 distinct 16-byte bank groups per quarter warp.  The copies are
     * laid out for the memory system instead: copy q of lane l is chunk (32 q + l) % RC
     * of key (32 q + l) / RC, a warp instruction covering whole rows (whole 128-byte
     * lines; the fragment layout would split every line over two instructions and the L2
     * would see each line twice).  The lane reads back chunks other lanes copied: the warp
     * synchronizes after the wait and before a refill.  Block ids: a step spans at most
     * two blocks (the ring runs for block sizes >= 16), looked up one step ahead.
     */
    auto kswz = [](int k) { return (k & 1) << 2; };
    auto vswz = [](int k) { return ((k >> 1) & 3) << 1; };
    auto blocks = [&](int tb, int(&b)[2]) {
        const int bi0 = a.bs_shift >= 0 ? tb >> a.bs_shift : tb / a.bs;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            b[h] = -1;
            if ((int64_t)(bi0 + h) * a.bs < s1 && (h == 0 || (int64_t)(bi0 + 1) * a.bs <= tb + 15)) {
                const int32_t id = bt[bi0 + h];
                if (id < 0 || id >= a.n_blocks) {
                    if (a.err)
                        atomicOr(a.err, KCUDA_ERR_BLOCK);
                } else {
                    b[h] = id;
                }
            }
        }
    };
    /* copy q of this lane: chunk ch_l of key key_l + q KQ of the step (KQ keys a warp
     * instruction); per step only the two block bases are 64-bit arithmetic, per copy a
     * 32-bit offset inside its block (the host keeps block_size * token_stride < 2^31) */
    constexpr int KQ = 32 / RC;
    const int ch_l = lane % RC, key_l = lane / RC;
    const int64_t lane_off = a.layer_off + (int64_t)kvh * D + ch_l * (16 / EB);
    const int tstride = (int)a.token_stride;
    auto stage = [&](int tb, const int(&b)[2], int st) {
        uint4 *slot = wring + st * 32 * RC;
        const int bi0 = a.bs_shift >= 0 ? tb >> a.bs_shift : tb / a.bs;
        const int pos0 = tb - bi0 * a.bs, lim = s1 - tb; /* tb's place in its block; keys in the slice */
        const CT *p0 = cache + (int64_t)(b[0] < 0 ? 0 : b[0]) * a.block_elems + lane_off;
        if (pos0 + 16 <= a.bs) { /* the whole step in one block (warp-uniform): one base, one stride */
            const CT *pk = p0 + (pos0 + key_l) * tstride;
            const bool okb = b[0] >= 0;
#pragma unroll
            for (int q = 0; q < RC / 2; q++) {
                const int key = key_l + q * KQ;
                const bool ok = okb && key < lim;
                const CT *src = ok ? pk + q * KQ * tstride : cache;
                dec_cp_async<4>((uint32_t *)(slot + key * RC + (ch_l ^ kswz(key))), src, ok);
                dec_cp_async<4>((uint32_t *)(slot + (16 + key) * RC + (ch_l ^ vswz(key))), ok ? src + a.kv_stride : cache,
                                ok);
            }
            return;
        }
        const CT *p1 = cache + (int64_t)(b[1] < 0 ? 0 : b[1]) * a.block_elems + lane_off;
#pragma unroll
        for (int q = 0; q < RC / 2; q++) {
            const int key = key_l + q * KQ;
            const int in = pos0 + key;
            const bool second = in >= a.bs;
            const bool ok = key < lim && (second ? b[1] : b[0]) >= 0;
            const CT *src = ok ? (second ? p1 : p0) + (in - (second ? a.bs : 0)) * tstride : cache;
            dec_cp_async<4>((uint32_t *)(slot + key * RC + (ch_l ^ kswz(key))), src, ok);
            dec_cp_async<4>((uint32_t *)(slot + (16 + key) * RC + (ch_l ^ vswz(key))), ok ? src + a.kv_stride : cache,
                            ok);
        }
    };
    const int first = s0 + warp * 16;
    if (NS) {
#pragma unroll
        for (int st = 0; st < NS; st++) {
            if (first + st * STEP < s1) {
                int b[2];
                blocks(first + st * STEP, b);
                stage(first + st * STEP, b, st);
            }
            dec_cp_commit();
        }
    }

    int rd = 0;
    for (int base = first; base < s1; base += STEP) {
        /* K of keys base + r and base + r + 8; V of keys base + 2c, 2c + 1, 2c + 8, 2c + 9 */
        uint32_t kra[KWR], krb[KWR], vr[4][VWR];
        int nb[2];
        bool refill = false;
        if (NS) {
            dec_cp_wait<NS ? NS - 1 : 0>(); /* this step's group: NS groups were committed after it */
            __syncwarp();                    /* and every lane's, whose chunks this lane reads */
            const uint4 *slot = wring + rd * 32 * RC;
#pragma unroll
            for (int j = 0; j < KP; j++) {
                const uint4 x = slot[r * RC + ((4 * j + c) ^ kswz(r))], y = slot[(r + 8) * RC + ((4 * j + c) ^ kswz(r))];
                kra[4 * j] = x.x, kra[4 * j + 1] = x.y, kra[4 * j + 2] = x.z, kra[4 * j + 3] = x.w;
                krb[4 * j] = y.x, krb[4 * j + 1] = y.y, krb[4 * j + 2] = y.z, krb[4 * j + 3] = y.w;
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < VP; j++) {
                    const int k = 2 * c + (i & 1) + (i >> 1) * 8;
                    const uint4 x = slot[(16 + k) * RC + ((8 * j + r) ^ vswz(k))];
                    vr[i][4 * j] = x.x, vr[i][4 * j + 1] = x.y, vr[i][4 * j + 2] = x.z, vr[i][4 * j + 3] = x.w;
                }
            /* the block ids of the step that refills this stage, looked up now so their
             * latency passes under this step's arithmetic */
            refill = base + NS * STEP < s1;
            if (refill)
                blocks(base + NS * STEP, nb);
        } else {
            int64_t ok[2], ov[4];
            offsets(base, ok, ov);
#pragma unroll
            for (int w = 0; w < KWR; w++)
                kra[w] = krb[w] = 0u;
#pragma unroll
            for (int pc = 0; pc < KP; pc++) {
                if (ok[0] >= 0)
                    dec_load<KPB / 4>(cache + ok[0] + k_lane + pc * 4 * KE, kra + pc * (KPB / 4), a.l2hint);
                if (ok[1] >= 0)
                    dec_load<KPB / 4>(cache + ok[1] + k_lane + pc * 4 * KE, krb + pc * (KPB / 4), a.l2hint);
            }
#pragma unroll
            for (int i = 0; i < 4; i++) {
#pragma unroll
                for (int w = 0; w < VWR; w++)
                    vr[i][w] = 0u;
#pragma unroll
                for (int pc = 0; pc < VP; pc++)
                    if (ov[i] >= 0)
                        dec_load<VPB / 4>(cache + ov[i] + a.kv_stride + v_lane + pc * 8 * VE, vr[i] + pc * (VPB / 4),
                                          a.l2hint);
            }
        }
        /* scores: sc[0], sc[1] = key base + r, rows 2c, 2c + 1; sc[2], sc[3] = key + 8
         * (f16 rings: the q_hi and q_lo products in two chains of mma, added at the end;
         * fp8 and the register form are at their register bound) */
        constexpr bool TWO = NS > 0 && EB == 2;
        float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, sl[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        {
            uint32_t ha[KS * 2], hb[KS * 2];
            dec_h2<CT, KWR>::run(kra, ha);
            dec_h2<CT, KWR>::run(krb, hb);
#pragma unroll
            for (int j = 0; j < KS; j++) {
                dec_mma(sc, ha[2 * j], hb[2 * j], ha[2 * j + 1], hb[2 * j + 1], qh[j][0], qh[j][1]);
                dec_mma(TWO ? sl : sc, ha[2 * j], hb[2 * j], ha[2 * j + 1], hb[2 * j + 1], ql[j][0], ql[j][1]);
            }
        }
        const bool va = base + r < s1, vb = base + r + 8 < s1;
#pragma unroll
        for (int e = 0; e < 4; e++)
            sc[e] = (e < 2 ? va : vb) ? (sc[e] + sl[e]) * a.qscale : -INFINITY;
        /* online softmax per query row (rows 2c, 2c + 1: shared by the lanes of this c) */
        float pr[4];
#pragma unroll
        for (int e = 0; e < 2; e++) {
            float mx = fmaxf(sc[e], sc[2 + e]);
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
            if (mx > m[e]) {
                const float alpha = exp2f(m[e] - mx);
                m[e] = mx;
                l[e] *= alpha;
#pragma unroll
                for (int i = 0; i < KS; i++) {
                    acc[i][e] *= alpha;
                    acc[i][2 + e] *= alpha;
                }
            }
            const float mref = m[e] == -INFINITY ? 0.0f : m[e];
            pr[e] = exp2f(sc[e] - mref);
            pr[2 + e] = exp2f(sc[2 + e] - mref);
            l[e] += pr[e] + pr[2 + e];
        }
        /* P^T as the B fragment: lane (n = r, c) needs P[keys 2c, 2c + 1, 2c + 8, 2c + 9][row r];
         * P[key k][row n] sits in lane (k % 8) * 4 + n / 2, half n % 2, of x (k < 8) or y */
        uint32_t xh, xl, yh, yl;
        dec_split2(pr[0] * PS, pr[1] * PS, &xh, &xl);
        dec_split2(pr[2] * PS, pr[3] * PS, &yh, &yl);
        const int src0 = (2 * c) * 4 + (r >> 1), src1 = (2 * c + 1) * 4 + (r >> 1);
        const unsigned sel = (r & 1) ? 0x7632u : 0x5410u;
        uint32_t bh0, bh1, bl0, bl1;
        {
            uint32_t x0 = __shfl_sync(0xffffffffu, xh, src0), x1 = __shfl_sync(0xffffffffu, xh, src1);
            uint32_t y0 = __shfl_sync(0xffffffffu, yh, src0), y1 = __shfl_sync(0xffffffffu, yh, src1);
            bh0 = __byte_perm(x0, x1, sel);
            bh1 = __byte_perm(y0, y1, sel);
            x0 = __shfl_sync(0xffffffffu, xl, src0), x1 = __shfl_sync(0xffffffffu, xl, src1);
            y0 = __shfl_sync(0xffffffffu, yl, src0), y1 = __shfl_sync(0xffffffffu, yl, src1);
            bl0 = __byte_perm(x0, x1, sel);
            bl1 = __byte_perm(y0, y1, sel);
        }
        /* O^T += V^T P^T, dim tile t: rows r / r + 8 are dims r D/8 + 2t / + 1 */
        if constexpr (std::is_same<CT, __nv_fp8_e4m3>::value) {
            /* e4m3: interleave the two keys' bytes first (x d, y d, x d + 1, y d + 1), then
             * one cvt per half is the fragment register: one byte permute per two
             * registers where converting first needs one per register */
#pragma unroll
            for (int i = 0; i < KS; i++) {
                const unsigned sel = (i & 1) ? 0x7362u : 0x5140u; /* elements 2i, 2i + 1 of word i / 2 */
                uint32_t ab[2], cd[2];
                const uint32_t x = __byte_perm(vr[0][i >> 1], vr[1][i >> 1], sel);
                const uint32_t y = __byte_perm(vr[2][i >> 1], vr[3][i >> 1], sel);
                dec_h2<CT, 1>::run(&x, ab);
                dec_h2<CT, 1>::run(&y, cd);
                dec_mma(acc[i], ab[0], ab[1], cd[0], cd[1], bh0, bh1);
                dec_mma(acc[i], ab[0], ab[1], cd[0], cd[1], bl0, bl1);
            }
        } else {
            uint32_t hv[4][KS];
#pragma unroll
            for (int i = 0; i < 4; i++)
                dec_h2<CT, VWR>::run(vr[i], hv[i]);
#pragma unroll
            for (int i = 0; i < KS; i++) {
                const uint32_t a0 = __byte_perm(hv[0][i], hv[1][i], 0x5410), a1 = __byte_perm(hv[0][i], hv[1][i], 0x7632);
                const uint32_t a2 = __byte_perm(hv[2][i], hv[3][i], 0x5410), a3 = __byte_perm(hv[2][i], hv[3][i], 0x7632);
                dec_mma(acc[i], a0, a1, a2, a3, bh0, bh1);
                dec_mma(acc[i], a0, a1, a2, a3, bl0, bl1);
            }
        }
        if (NS) { /* the stage's words are used (the mma above read them): refill it */
            __syncwarp(); /* every lane's reads of it */
            if (refill)
                stage(base + NS * STEP, nb, rd);
            dec_cp_commit();
            rd = rd + 1 == NS ? 0 : rd + 1;
        }
    }

    if (NS) { /* red_acc aliases the ring: every warp done with it first */
        asm volatile("cp.async.wait_all;" ::: "memory");
        __syncthreads();
    }

    /* the warp's rows 2c, 2c + 1: l summed over r; acc is already one value per (dim, row) */
#pragma unroll
    for (int e = 0; e < 2; e++) {
        l[e] += __shfl_xor_sync(0xffffffffu, l[e], 4);
        l[e] += __shfl_xor_sync(0xffffffffu, l[e], 8);
        l[e] += __shfl_xor_sync(0xffffffffu, l[e], 16);
    }
#pragma unroll
    for (int i = 0; i < KS; i++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int d = (2 * i) / VE * 8 * VE + r * VE + (2 * i) % VE; /* the lane's V elements 2i, 2i + 1 */
            red_acc[warp][2 * c + e][d] = acc[i][e] * (1.0f / PS);
            red_acc[warp][2 * c + e][d + 1] = acc[i][2 + e] * (1.0f / PS);
        }
    if (r == 0) {
#pragma unroll
        for (int e = 0; e < 2; e++) {
            red_m[warp][2 * c + e] = m[e];
            red_l[warp][2 * c + e] = l[e];
        }
    }
    __syncthreads();
    dec_epilogue<8, D, NW>(a, rw, red_m, red_l, red_acc);
}

/* out[t, h, :] = the merge of the splits' (m, l, acc); one CTA per (token, head). */
__global__ void attn_decode_merge_kernel(dec_args_t a, int D)
{
    const int t = blockIdx.x, h = blockIdx.y, S = a.n_splits;
    const int64_t row0 = ((int64_t)t * a.n_heads + h) * S;
    const float *ml = a.ws + (int64_t)a.n_tokens * a.n_heads * S * D;
    __shared__ float w_s[DEC_MAX_SPLITS];
    __shared__ float L_s;
    if (threadIdx.x < 32) {
        float M = -INFINITY;
        for (int s = threadIdx.x; s < S; s += 32)
            M = fmaxf(M, ml[(row0 + s) * 2]);
        M = kc_warp_max(M);
        float L = 0.0f;
        for (int s = threadIdx.x; s < S; s += 32) {
            const float m = ml[(row0 + s) * 2];
            const float w = (M == -INFINITY || m == -INFINITY) ? 0.0f : expf(m - M);
            w_s[s] = w;
            L += w * ml[(row0 + s) * 2 + 1];
        }
        L = kc_warp_sum(L);
        if (threadIdx.x == 0)
            L_s = L;
    }
    __syncthreads();
    const float L = L_s, inv = L > 0.0f ? 1.0f / L : 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < S; s++)
            acc = fmaf(w_s[s], a.ws[(row0 + s) * D + d], acc);
        a.out[(int64_t)t * a.out_stride + (int64_t)h * D + d] = acc * inv;
    }
}

/* ---- mode, plan, dispatch ---- */

static kcuda_attn_decode_t g_mode = KCUDA_ATTN_DECODE_AUTO;
static int g_force_splits = 0;

extern "C" void kcuda_attn_set_decode(kcuda_attn_decode_t kernel, int force_splits)
{
    g_mode = kernel;
    g_force_splits = force_splits < 0 ? 0 : force_splits > DEC_MAX_SPLITS ? DEC_MAX_SPLITS : force_splits;
}

kcuda_attn_decode_t kcuda_attn_decode_mode(void)
{
    static int env = -1; /* read once: this runs for every layer of every step */
    if (g_mode != KCUDA_ATTN_DECODE_AUTO)
        return g_mode;
    if (env < 0) {
        const char *e = getenv("PD_CUDA_ATTN_DECODE");
        env = (e != NULL && strcmp(e, "old") == 0) ? (int)KCUDA_ATTN_DECODE_OLD : (int)KCUDA_ATTN_DECODE_NEW;
    }
    return (kcuda_attn_decode_t)env;
}

int kcuda_attn_decode_forced_splits(void)
{
    return g_force_splits;
}

static int g_l2hint = -1, g_pipe = -1, g_scatter = -1, g_order = -1, g_tc = -1;

extern "C" void kcuda_attn_set_decode_tuning(int l2hint, int pipeline, int scatter, int head_major, int tensor_cores)
{
    g_l2hint = l2hint < 0 ? -1 : l2hint > 0;
    g_pipe = pipeline < 0 ? -1 : pipeline > 2 ? 2 : pipeline;
    g_scatter = scatter < 0 ? -1 : scatter > 0;
    g_order = head_major < 0 ? -1 : head_major > 0;
    g_tc = tensor_cores < 0 ? -1 : tensor_cores > 0;
}

/* A switch set above (set >= 0), else env `name` (read once into *env): "0" turns a
 * default-on switch off, "1" turns a default-off one on. */
static bool dec_switch(int set, const char *name, bool default_on, int *env)
{
    if (set >= 0)
        return set == 1;
    if (*env < 0) {
        const char *e = getenv(name);
        if (default_on)
            *env = (e != NULL && strcmp(e, "0") == 0) ? 0 : 1;
        else
            *env = (e != NULL && strcmp(e, "1") == 0) ? 1 : 0;
    }
    return *env == 1;
}

/* The loading scheme (dec_args_t.pipe): set by the tuning setter, else env
 * PD_CUDA_ATTN_PIPE=0/1/2, else what measured best on an H200 (20:30 UTC run, batch 64,
 * 32/8 heads, d128, block 16; docs/cuda.md): scheme 2 (cp.async ring) for an f32 cache
 * (89-92% of the copy rate at 1k-4k keys against 84-86% for scheme 0), scheme 0 for f16
 * and fp8 (scheme 2 was slower there, fp8 by half). */
static int dec_pipe_asked(void)
{
    static int env = -2;
    if (g_pipe >= 0)
        return g_pipe;
    if (env == -2) {
        const char *e = getenv("PD_CUDA_ATTN_PIPE");
        env = (e != NULL && (e[0] == '0' || e[0] == '1' || e[0] == '2') && e[1] == '\0') ? e[0] - '0' : -1;
    }
    return env;
}

static int dec_pipe(kcpu_dtype_t dtype, bool tc)
{
    const int asked = dec_pipe_asked();
    if (asked >= 0)
        return asked;
    /* the tensor-core kernel: its ring (2026-11-29 session 10 run: f16 91.6 / 98.7 / 102.8%
     * of the copy rate at 1k / 2k / 4k keys against 70.8 / 75.4 / 78.3% from registers,
     * fp8 70.5 / 79.1 / 83.7% against 55.8 / 62.0 / 65.9%) */
    return dtype == KCPU_DTYPE_F32 || tc ? 2 : 0;
}

/* The hint by default only where a key's head vector fills the 256-byte chunk it
 * prefetches (else it would pull in the neighbouring KV head's row). */
static bool dec_l2hint(size_t row_bytes)
{
    static int env = -1;
    if (g_l2hint >= 0)
        return g_l2hint == 1;
    return dec_switch(-1, "PD_CUDA_ATTN_L2HINT", true, &env) && row_bytes % 256 == 0;
}

bool kcuda_attn_decode_ok(const kcpu_attn_params_t *p)
{
    const kcpu_dtype_t dt = p->layout->dtype;
    const int G = p->n_heads / p->n_kv_heads;
    return (dt == KCPU_DTYPE_F32 || dt == KCPU_DTYPE_F16 || dt == KCUDA_KV_FP8_E4M3 || dt == KCUDA_KV_FP8_E5M2) &&
           (p->head_dim == 16 || p->head_dim == 32 || p->head_dim == 64 || p->head_dim == 128 ||
            p->head_dim == 256) &&
           G >= 1 && G <= 8 &&
           ((uintptr_t)p->cache_base & 15) == 0; /* every key row is then 16-byte aligned */
}

int kcuda_attn_decode_splits(const kcpu_attn_params_t *p, int sm_count)
{
    if (g_force_splits > 0)
        return g_force_splits;
    /* about as many CTAs as fit on the GPU at once (4 per SM), rounded down: a CTA holds
     * enough loads in flight that one under-full wave streams at the memory rate, while
     * a second, partial wave would leave the GPU mostly idle at its end (512 CTAs of
     * batch 64 x 8 KV heads stay unsplit); and no split planned shorter than 64 keys */
    const int64_t ctas = p->n_tokens * p->n_kv_heads;
    const int64_t target = 4 * (int64_t)(sm_count > 0 ? sm_count : 132);
    const int64_t want = target / (ctas > 0 ? ctas : 1);
    const int64_t bound = p->max_blocks_per_seq * p->layout->block_size;
    const int64_t by_len = (bound + 63) / 64;
    int64_t s = want < by_len ? want : by_len;
    return (int)(s < 1 ? 1 : s > DEC_MAX_SPLITS ? DEC_MAX_SPLITS : s);
}

/*
 * Lane geometry: q and acc take 2 * GM * VEC registers, so VEC shrinks as the group grows
 * (at most 16 bytes a load, at least 4 elements, at most 32 lanes a key); U gives each
 * lane about 64 bytes of K + V loads in flight per iteration, with U * GM <= 16 scores.
 */
template <typename CT, int D, int GM>
static void dec_launch(const dec_args_t &a, dim3 grid, cudaStream_t stream)
{
    constexpr int EB = (int)sizeof(CT);
    constexpr int BY_REGS = 32 / GM > 4 ? 32 / GM : 4;
    constexpr int VEC0 = 16 / EB < BY_REGS ? 16 / EB : BY_REGS;
    constexpr int VEC = D / VEC0 > 32 ? D / 32 : VEC0;
    constexpr int U0 = 64 / (2 * VEC * EB);
    constexpr int U = U0 < 1 ? 1 : U0 > 16 / GM ? 16 / GM : U0;
    constexpr int WORDS = VEC * EB / 4;
    if constexpr (dec_stages(U, WORDS, GM, D) >= 2) {
        if (a.pipe == 2) {
            if (a.scatter)
                attn_decode_kernel<CT, D, GM, VEC, U, 2, true><<<grid, DEC_WARPS * 32, 0, stream>>>(a);
            else
                attn_decode_kernel<CT, D, GM, VEC, U, 2, false><<<grid, DEC_WARPS * 32, 0, stream>>>(a);
            return;
        }
    }
    /* (a shape without room for the ring runs PIPE 0 when 2 is asked for) */
    if (a.pipe == 1 && a.scatter)
        attn_decode_kernel<CT, D, GM, VEC, U, 1, true><<<grid, DEC_WARPS * 32, 0, stream>>>(a);
    else if (a.pipe == 1)
        attn_decode_kernel<CT, D, GM, VEC, U, 1, false><<<grid, DEC_WARPS * 32, 0, stream>>>(a);
    else if (a.scatter)
        attn_decode_kernel<CT, D, GM, VEC, U, 0, true><<<grid, DEC_WARPS * 32, 0, stream>>>(a);
    else
        attn_decode_kernel<CT, D, GM, VEC, U, 0, false><<<grid, DEC_WARPS * 32, 0, stream>>>(a);
}

template <typename CT, int D>
static void dec_launch_g(const dec_args_t &a, dim3 grid, cudaStream_t stream)
{
    if (a.group == 1)
        dec_launch<CT, D, 1>(a, grid, stream);
    else if (a.group == 2)
        dec_launch<CT, D, 2>(a, grid, stream);
    else if (a.group <= 4)
        dec_launch<CT, D, 4>(a, grid, stream);
    else
        dec_launch<CT, D, 8>(a, grid, stream);
}

template <typename CT>
static void dec_launch_d(const dec_args_t &a, int D, dim3 grid, cudaStream_t stream)
{
    if (D == 16)
        dec_launch_g<CT, 16>(a, grid, stream);
    else if (D == 32)
        dec_launch_g<CT, 32>(a, grid, stream);
    else if (D == 64)
        dec_launch_g<CT, 64>(a, grid, stream);
    else if (D == 128)
        dec_launch_g<CT, 128>(a, grid, stream);
    else
        dec_launch_g<CT, 256>(a, grid, stream);
}

template <typename CT, int D, int NW, int NS>
static void dec_tc_go(const dec_args_t &a, dim3 grid, cudaStream_t stream)
{
    constexpr int smem = dec_tc_smem<CT, D, NW, NS>();
    static bool attr_set = false; /* once per instantiation (all ask for the same size) */
    if (smem + (int)sizeof(float) * NW * 16 > 48 * 1024 && !attr_set) { /* dynamic + red_m / red_l over 48 KB */
        cudaFuncSetAttribute(attn_decode_tc_kernel<CT, D, NW, NS>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        attr_set = true;
    }
    attn_decode_tc_kernel<CT, D, NW, NS><<<grid, NW * 32, smem, stream>>>(a);
}

/* The tensor-core kernel's ring (dec_args_t.pipe 2, block sizes >= 16): warps a CTA x
 * stages, from kcuda_attn_set_decode_ring, else env PD_CUDA_ATTN_TC_RING=WxS (e.g. 2x3),
 * else the default of the cache type; a shape not built falls back to that default.
 * Built (48 KB or less a CTA: 4 CTAs an SM): head dim 128: f16 2x2 (default), 2x3; fp8
 * 4x2 (default), 4x3, 2x4, 2x6; head dim 64: f16 4x3, fp8 none (a lane's V chunk is 8
 * bytes).  Defaults from the session 10 H200 run at batch 64 (docs/cuda.md). */
static int g_ring_w = -1, g_ring_s = -1;

extern "C" void kcuda_attn_set_decode_ring(int warps, int stages)
{
    g_ring_w = warps, g_ring_s = stages;
}

static void dec_ring_cfg(int *w, int *s)
{
    static int env_w = -2, env_s = -2;
    if (g_ring_w > 0 && g_ring_s > 0) {
        *w = g_ring_w, *s = g_ring_s;
        return;
    }
    if (env_w == -2) {
        const char *e = getenv("PD_CUDA_ATTN_TC_RING");
        env_w = env_s = -1;
        if (e != NULL && sscanf(e, "%dx%d", &env_w, &env_s) != 2)
            env_w = env_s = -1;
    }
    *w = env_w, *s = env_s;
}

template <typename CT, int D>
static void dec_launch_tc_d(const dec_args_t &a, dim3 grid, cudaStream_t stream)
{
    /* (the ring's steps span at most two blocks; its in-block offsets are 32-bit) */
    if (a.pipe == 2 && a.bs >= 16 && (int64_t)a.bs * a.token_stride < INT32_MAX) {
        int w = 0, s = 0;
        dec_ring_cfg(&w, &s);
        if constexpr (D == 128 && sizeof(CT) == 2) {
            if (w == 2 && s == 3)
                return dec_tc_go<CT, D, 2, 3>(a, grid, stream);
            return dec_tc_go<CT, D, 2, 2>(a, grid, stream);
        } else if constexpr (D == 128) {
            if (w == 4 && s == 3)
                return dec_tc_go<CT, D, 4, 3>(a, grid, stream);
            if (w == 2 && s == 4)
                return dec_tc_go<CT, D, 2, 4>(a, grid, stream);
            if (w == 2 && s == 6)
                return dec_tc_go<CT, D, 2, 6>(a, grid, stream);
            return dec_tc_go<CT, D, 4, 2>(a, grid, stream);
        } else if constexpr (sizeof(CT) == 2) {
            return dec_tc_go<CT, D, 4, 3>(a, grid, stream);
        }
    }
    dec_tc_go<CT, D, DEC_WARPS, 0>(a, grid, stream);
}

template <typename CT>
static void dec_launch_tc(const dec_args_t &a, int D, dim3 grid, cudaStream_t stream)
{
    if (D == 64)
        dec_launch_tc_d<CT, 64>(a, grid, stream);
    else
        dec_launch_tc_d<CT, 128>(a, grid, stream);
}

pd_status_t kcuda_attn_decode_launch(const kcpu_attn_params_t *p, float k_scale, float v_scale, int n_splits,
                                     float *ws, int *err, kcuda_stream_t stream)
{
    const kcpu_kv_layout_t *L = p->layout;
    dec_args_t a;
    a.q = p->q;
    a.q_stride = p->q_stride;
    a.out = p->out;
    a.out_stride = p->out_stride;
    a.tok_seq = p->tok_seq;
    a.tok_pos = p->tok_pos;
    a.bt = p->block_tables;
    a.ctx = p->context_lens;
    a.n_seqs = p->n_seqs;
    a.mbps = p->max_blocks_per_seq;
    a.n_tokens = (int)p->n_tokens;
    a.n_heads = p->n_heads;
    a.group = p->n_heads / p->n_kv_heads;
    a.n_splits = n_splits;
    a.qscale = p->scale * k_scale * DEC_LOG2E;
    a.v_scale = v_scale;
    a.causal = p->causal;
    a.l2hint = dec_l2hint((size_t)p->head_dim * L->elem_bytes);
    static int env_scatter = -1;
    static int env_tc = -1;
    const bool tc = L->dtype != KCPU_DTYPE_F32 && (p->head_dim == 64 || p->head_dim == 128) &&
                    dec_switch(g_tc, "PD_CUDA_ATTN_TC", true, &env_tc);
    a.pipe = dec_pipe(L->dtype, tc);
    a.scatter = dec_switch(g_scatter, "PD_CUDA_ATTN_SCATTER", true, &env_scatter);
    a.window = p->sliding_window;
    a.cache = p->cache_base;
    a.block_elems = (int64_t)(L->block_bytes / L->elem_bytes);
    a.layer_off = (int64_t)p->layer * L->layer_stride;
    a.kv_stride = L->kv_stride;
    a.token_stride = L->token_stride;
    a.n_blocks = L->n_blocks;
    a.bs = L->block_size;
    a.bs_shift = -1;
    if (L->block_size > 0 && (L->block_size & (L->block_size - 1)) == 0)
        a.bs_shift = __builtin_ctz((unsigned)L->block_size);
    a.ws = ws;
    a.err = err;
    static int env_order = -1;
    a.head_major = p->n_tokens <= 65535 && dec_switch(g_order, "PD_CUDA_ATTN_HEAD_MAJOR", false, &env_order);
    dim3 grid((unsigned)p->n_tokens, (unsigned)p->n_kv_heads, (unsigned)n_splits);
    if (a.head_major)
        grid = dim3((unsigned)p->n_kv_heads, (unsigned)p->n_tokens, (unsigned)n_splits);
    switch ((int)L->dtype) {
    case KCPU_DTYPE_F32:
        dec_launch_d<float>(a, p->head_dim, grid, stream);
        break;
    case KCPU_DTYPE_F16:
        if (tc)
            dec_launch_tc<__half>(a, p->head_dim, grid, stream);
        else
            dec_launch_d<__half>(a, p->head_dim, grid, stream);
        break;
    case (int)KCUDA_KV_FP8_E4M3:
        if (tc)
            dec_launch_tc<__nv_fp8_e4m3>(a, p->head_dim, grid, stream);
        else
            dec_launch_d<__nv_fp8_e4m3>(a, p->head_dim, grid, stream);
        break;
    default:
        if (tc)
            dec_launch_tc<__nv_fp8_e5m2>(a, p->head_dim, grid, stream);
        else
            dec_launch_d<__nv_fp8_e5m2>(a, p->head_dim, grid, stream);
        break;
    }
    {
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) {
            PD_LOG_ERR("kcuda_paged_attention (decode): launch failed: %s", cudaGetErrorString(e));
            return PD_ERR_CUDA;
        }
    }
    if (n_splits > 1) {
        attn_decode_merge_kernel<<<dim3((unsigned)p->n_tokens, (unsigned)p->n_heads), 128, 0, stream>>>(a,
                                                                                                       p->head_dim);
        KCUDA_LAUNCHED("kcuda_paged_attention (decode merge)");
    }
    return PD_OK;
}
