/*
 * kcuda_attn.cu - paged attention over the block tables for a batch mixing prefill chunks
 * and decode tokens (causal, GQA, sliding window, chunked prefill reading earlier blocks).
 * Pure decode batches of the shapes it supports go to the dedicated decode kernel
 * (kcuda_attn_decode.cu; attn_plan decides, PD_CUDA_ATTN_DECODE=old keeps them here).
 *
 * One CTA = (a run of up to QT consecutive tokens, one KV head, one key split).  Its
 * "rows" are (token, query head of the KV head's group): R = tokens x group.  Keys are
 * streamed in tiles of KT through shared memory (K padded by one float per row so the
 * score loop is free of bank conflicts), each row keeps an online softmax (m, l) and an
 * f32 accumulator in shared memory.  Tokens of one CTA that belong to different
 * sequences are handled as consecutive segments (a decode batch uses QT = 1).
 * With n_splits > 1 (few CTAs for the GPU, long contexts: flash-decoding) each split
 * covers a contiguous slice of every row's key range and writes (m, l, acc) to the
 * workspace; a second kernel merges the splits.
 * Range errors (bad sequence, position, context length or block id) set a bit in *err;
 * the affected rows are skipped (no output written) or read zeros.
 * Arithmetic is f32 SIMT for now (no tensor cores yet): see docs/cuda.md.
 * fp8 caches (KCUDA_KV_FP8_E4M3 / E5M2) hold K / k_scale and V / v_scale (per-layer
 * scales, host scalars of the call): the SIMT kernel dequantizes each element to f32 and
 * multiplies by the scale as it loads the tile, so everything after the load is the f32
 * path; the tensor-core prefill kernels are not used with them.
 * Prefill tiles with reduced precision allowed can go to the FlashAttention-2 style
 * kernel of kcuda_attn_prefill.cu instead of attn_tc_kernel (attn_plan decides:
 * kcuda_attn_set_prefill / env PD_CUDA_ATTN_PREFILL=fa2).
 */
#include "kcuda_internal.cuh"
#include "kcuda_attn_decode.cuh"
#include "kcuda_attn_prefill.cuh"

#include <cuda_fp8.h>
#include <mma.h>

#define KT 32          /* keys per tile */
#define QT_MAX 16      /* tokens per CTA (prefill) */
#define ROWS_ELEMS 8192 /* R * head_dim bound for the shared accumulators */
#define MAX_SPLITS 32

template <typename CT> __device__ __forceinline__ float kc_load(const CT *p);
template <> __device__ __forceinline__ float kc_load<float>(const float *p) { return *p; }
template <> __device__ __forceinline__ float kc_load<__half>(const __half *p) { return __half2float(*p); }
template <> __device__ __forceinline__ float kc_load<__nv_fp8_e4m3>(const __nv_fp8_e4m3 *p) { return float(*p); }
template <> __device__ __forceinline__ float kc_load<__nv_fp8_e5m2>(const __nv_fp8_e5m2 *p) { return float(*p); }

/* 4 consecutive elements at cache[e + d] as f32 (zeros when e < 0, a bad block) */
template <typename CT> __device__ __forceinline__ void kc_load4(const CT *cache, int64_t e, int d, float *f);
template <> __device__ __forceinline__ void kc_load4<float>(const float *cache, int64_t e, int d, float *f)
{
    float4 v = e < 0 ? make_float4(0.f, 0.f, 0.f, 0.f) : *(const float4 *)(cache + e + d);
    f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
}
template <> __device__ __forceinline__ void kc_load4<__half>(const __half *cache, int64_t e, int d, float *f)
{
    if (e < 0) {
        f[0] = f[1] = f[2] = f[3] = 0.0f;
        return;
    }
    uint2 u = *(const uint2 *)(cache + e + d);
    float2 a = __half22float2(*(const __half2 *)&u.x), b = __half22float2(*(const __half2 *)&u.y);
    f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y;
}
template <> __device__ __forceinline__ void kc_load4<__nv_fp8_e4m3>(const __nv_fp8_e4m3 *cache, int64_t e, int d, float *f)
{
    if (e < 0) {
        f[0] = f[1] = f[2] = f[3] = 0.0f;
        return;
    }
    float4 v = float4(*(const __nv_fp8x4_e4m3 *)(cache + e + d));
    f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
}
template <> __device__ __forceinline__ void kc_load4<__nv_fp8_e5m2>(const __nv_fp8_e5m2 *cache, int64_t e, int d, float *f)
{
    if (e < 0) {
        f[0] = f[1] = f[2] = f[3] = 0.0f;
        return;
    }
    float4 v = float4(*(const __nv_fp8x4_e5m2 *)(cache + e + d));
    f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
}

typedef struct {
    const float *q;
    int64_t q_stride;
    float *out;
    int64_t out_stride;
    const int32_t *tok_seq, *tok_pos, *bt, *ctx;
    int64_t n_seqs, mbps;
    int n_tokens, n_heads, group, hd, qt, n_splits;
    float scale;
    float k_scale, v_scale; /* fp8 caches: dequantization scales (1 otherwise) */
    bool causal;
    int window;
    const void *cache;
    int64_t block_elems, layer_off, kv_stride, token_stride, n_blocks;
    int bs;
    float *ws;     /* [T][n_heads][n_splits][hd] accumulators, then [T][n_heads][n_splits][2] (m, l) */
    int *err;
} attn_args_t;

template <typename CT>
__global__ void __launch_bounds__(256) attn_kernel(attn_args_t a)
{
    extern __shared__ float smem[];
    const int G = a.group, D = a.hd, Dp = D + 1, R = a.qt * G;
    float *q_s = smem;                  /* R * D */
    float *acc_s = q_s + R * D;         /* R * D */
    float *s_s = acc_s + R * D;         /* R * KT */
    float *k_s = s_s + R * KT;          /* KT * Dp */
    float *v_s = k_s + KT * Dp;         /* KT * D */
    float *m_s = v_s + KT * D;          /* R */
    float *l_s = m_s + R;               /* R */
    float *al_s = l_s + R;              /* R */
    int *lo_s = (int *)(al_s + R);      /* R */
    int *hi_s = lo_s + R;               /* R */
    int64_t *blk_s = (int64_t *)(((uintptr_t)(hi_s + R) + 7) & ~(uintptr_t)7); /* KT */
    __shared__ int range_s[2];

    const CT *cache = (const CT *)a.cache;
    const int kvh = blockIdx.y, split = blockIdx.z, tid = threadIdx.x, nth = blockDim.x;
    const int t0 = blockIdx.x * a.qt;
    const int tend = min(t0 + a.qt, a.n_tokens);

    for (int t = t0; t < tend;) {
        const int seq = a.tok_seq[t];
        int te = t + 1;
        while (te < tend && a.tok_seq[te] == seq)
            te++;
        const int nrow = (te - t) * G;
        const bool seq_ok = seq >= 0 && seq < a.n_seqs;
        int ctx = seq_ok ? a.ctx[seq] : 0;
        if (ctx > a.mbps * a.bs || ctx < 0) {
            if (tid == 0 && a.err)
                atomicOr(a.err, KCUDA_ERR_SEQ);
            ctx = ctx < 0 ? 0 : (int)(a.mbps * a.bs);
        }
        for (int r = tid; r < nrow; r += nth) {
            const int tt = t + r / G, h = kvh * G + r % G;
            const int pos = a.tok_pos[tt];
            int hi = a.causal ? pos : ctx - 1, lo = a.window > 0 ? pos - a.window + 1 : 0;
            if (lo < 0)
                lo = 0;
            if (!seq_ok || pos < 0 || hi >= ctx) {
                if (a.err)
                    atomicOr(a.err, KCUDA_ERR_SEQ);
                lo = -2;
                hi = -3; /* marks a bad row: empty, output left alone */
            }
            lo_s[r] = lo;
            hi_s[r] = hi;
            m_s[r] = -INFINITY;
            l_s[r] = 0.0f;
            const float *qr = a.q + (int64_t)tt * a.q_stride + (int64_t)h * D;
            for (int d = 0; d < D; d++)
                q_s[r * D + d] = qr[d];
        }
        for (int o = tid; o < nrow * D; o += nth)
            acc_s[o] = 0.0f;
        __syncthreads();
        if (tid == 0) {
            int ulo = INT_MAX, uhi = -1;
            for (int r = 0; r < nrow; r++)
                if (lo_s[r] <= hi_s[r]) {
                    ulo = min(ulo, lo_s[r]);
                    uhi = max(uhi, hi_s[r]);
                }
            if (uhi < 0) {
                range_s[0] = 0;
                range_s[1] = 0;
            } else {
                int len = uhi - ulo + 1, chunk = (len + a.n_splits - 1) / a.n_splits;
                int s0 = ulo + split * chunk, s1 = min(s0 + chunk, uhi + 1);
                range_s[0] = s0;
                range_s[1] = s1 > s0 ? s1 : s0;
            }
        }
        __syncthreads();
        const int s0 = range_s[0], s1 = range_s[1];
        const int32_t *bt = a.bt + (int64_t)(seq_ok ? seq : 0) * a.mbps;

        for (int k0 = s0; k0 < s1; k0 += KT) {
            const int nk = min(KT, s1 - k0);
            if (tid < nk) {
                int p = k0 + tid;
                int32_t b = bt[p / a.bs];
                if (b < 0 || b >= a.n_blocks) {
                    if (a.err)
                        atomicOr(a.err, KCUDA_ERR_BLOCK);
                    blk_s[tid] = -1;
                } else {
                    blk_s[tid] = (int64_t)b * a.block_elems + a.layer_off + (int64_t)(p % a.bs) * a.token_stride +
                                 (int64_t)kvh * D;
                }
            }
            __syncthreads();
            if ((D & 3) == 0) { /* 4 elements per load (every offset is a multiple of 4) */
                const int D4 = D >> 2;
                for (int i = tid; i < nk * D4; i += nth) {
                    int j = i / D4, d = (i % D4) * 4;
                    int64_t e = blk_s[j];
                    float kf[4], vf[4];
                    kc_load4<CT>(cache, e, d, kf);
                    kc_load4<CT>(cache, e < 0 ? e : e + a.kv_stride, d, vf);
                    for (int u = 0; u < 4; u++) {
                        k_s[j * Dp + d + u] = kf[u] * a.k_scale;
                        v_s[j * D + d + u] = vf[u] * a.v_scale;
                    }
                }
            } else {
                for (int i = tid; i < nk * D; i += nth) {
                    int j = i / D, d = i % D;
                    int64_t e = blk_s[j];
                    k_s[j * Dp + d] = e < 0 ? 0.0f : kc_load<CT>(cache + e + d) * a.k_scale;
                    v_s[j * D + d] = e < 0 ? 0.0f : kc_load<CT>(cache + e + a.kv_stride + d) * a.v_scale;
                }
            }
            __syncthreads();
            for (int p = tid; p < nrow * KT; p += nth) {
                int r = p / KT, j = p % KT, kp = k0 + j;
                float s = -INFINITY;
                if (j < nk && kp >= lo_s[r] && kp <= hi_s[r]) {
                    const float *qr = q_s + r * D, *kr = k_s + j * Dp;
                    float acc = 0.0f;
                    for (int d = 0; d < D; d++)
                        acc = fmaf(qr[d], kr[d], acc);
                    s = acc * a.scale;
                }
                s_s[p] = s;
            }
            __syncthreads();
            for (int r = tid; r < nrow; r += nth) {
                float *sr = s_s + r * KT;
                float mx = m_s[r];
                for (int j = 0; j < nk; j++)
                    mx = fmaxf(mx, sr[j]);
                if (mx == -INFINITY) { /* no visible key yet */
                    al_s[r] = 1.0f;
                    for (int j = 0; j < KT; j++)
                        sr[j] = 0.0f;
                    continue;
                }
                float alpha = expf(m_s[r] - mx), sum = 0.0f;
                for (int j = 0; j < KT; j++) {
                    float e = j < nk ? expf(sr[j] - mx) : 0.0f;
                    sr[j] = e;
                    sum += e;
                }
                l_s[r] = l_s[r] * alpha + sum;
                m_s[r] = mx;
                al_s[r] = alpha;
            }
            __syncthreads();
            for (int o = tid; o < nrow * D; o += nth) {
                int r = o / D, d = o % D;
                const float *pr = s_s + r * KT;
                float acc = acc_s[o] * al_s[r];
                for (int j = 0; j < nk; j++)
                    acc = fmaf(pr[j], v_s[j * D + d], acc);
                acc_s[o] = acc;
            }
            __syncthreads();
        }
        /* epilogue */
        for (int o = tid; o < nrow * D; o += nth) {
            int r = o / D, d = o % D;
            int tt = t + r / G, h = kvh * G + r % G;
            if (lo_s[r] == -2 && a.n_splits == 1)
                continue; /* bad row: leave the output alone */
            if (a.n_splits == 1) {
                float l = l_s[r];
                a.out[(int64_t)tt * a.out_stride + (int64_t)h * D + d] = l > 0.0f ? acc_s[o] / l : 0.0f;
            } else {
                int64_t row = ((int64_t)tt * a.n_heads + h) * a.n_splits + split;
                a.ws[row * D + d] = acc_s[o];
                if (d == 0) {
                    float *ml = a.ws + (int64_t)a.n_tokens * a.n_heads * a.n_splits * D;
                    ml[row * 2] = m_s[r];
                    ml[row * 2 + 1] = l_s[r];
                }
            }
        }
        __syncthreads();
        t = te;
    }
}

/*
 * Tensor-core variant for prefill tiles (bf16 operands, f32 accumulation), used when the
 * caller allows reduced precision (the backend does when its GEMMs are bf16/f16): the
 * same CTA decomposition with QT = 16 tokens, R = 16 * group rows, key tiles of 64.
 * S = Q K^T and O += P V run on WMMA 16x16x16 fragments; the online softmax runs one warp
 * per row in f32.  Tokens of other sequences in the CTA are masked out and handled in
 * their own pass (one pass per sequence present).
 */
#define TC_KT 64
#define TC_QT 16

template <typename CT>
__global__ void __launch_bounds__(256) attn_tc_kernel(attn_args_t a)
{
    using namespace nvcuda;
    extern __shared__ __align__(128) unsigned char tc_smem[];
    const int G = a.group, D = a.hd, R = TC_QT * G;
    const int ldq = D + 8, lds = TC_KT + 4, ldp = TC_KT + 8, ldo = D + 4;
    size_t off = 0;
#define TC_CARVE(type, name, count)                                        \
    type *name = (type *)(tc_smem + off);                                  \
    off += ((sizeof(type) * (size_t)(count)) + 127) & ~(size_t)127
    TC_CARVE(__nv_bfloat16, q_s, R * ldq);
    TC_CARVE(__nv_bfloat16, k_s, TC_KT * ldq);
    TC_CARVE(__nv_bfloat16, v_s, TC_KT * ldq);
    TC_CARVE(float, s_s, R * lds);
    TC_CARVE(__nv_bfloat16, p_s, R * ldp);
    TC_CARVE(float, o_s, R * ldo);
    TC_CARVE(float, m_s, R);
    TC_CARVE(float, l_s, R);
    TC_CARVE(float, al_s, R);
    TC_CARVE(int, lo_s, R);
    TC_CARVE(int, hi_s, R);
    TC_CARVE(int, act_s, R);
    TC_CARVE(int64_t, blk_s, TC_KT);
#undef TC_CARVE
    __shared__ int range_s[2];

    const CT *cache = (const CT *)a.cache;
    const int kvh = blockIdx.y, split = blockIdx.z, tid = threadIdx.x, nth = blockDim.x;
    const int warp = tid >> 5, lane = tid & 31, nwarp = nth >> 5;
    const int t0 = blockIdx.x * TC_QT;
    const int tend = min(t0 + TC_QT, a.n_tokens);
    const int nrow = (tend - t0) * G;

    /* rows: q (bf16), state, per-row key range; rows past the last token stay inactive */
    for (int i = tid; i < R * D; i += nth) {
        int r = i / D, d = i % D;
        float v = 0.0f;
        if (r < nrow) {
            int tt = t0 + r / G, h = kvh * G + r % G;
            v = a.q[(int64_t)tt * a.q_stride + (int64_t)h * D + d];
        }
        q_s[r * ldq + d] = __float2bfloat16_rn(v);
    }
    for (int i = tid; i < R * D; i += nth)
        o_s[(i / D) * ldo + i % D] = 0.0f;
    for (int r = tid; r < R; r += nth) {
        m_s[r] = -INFINITY;
        l_s[r] = 0.0f;
        lo_s[r] = -2;
        hi_s[r] = -3;
        if (r < nrow)
            kc_attn_row_keys(a, t0 + r / G, &lo_s[r], &hi_s[r]);
    }
    __syncthreads();

    for (int t = t0; t < tend;) {
        const int seq = a.tok_seq[t];
        int te = t + 1;
        while (te < tend && a.tok_seq[te] == seq)
            te++;
        const bool seq_ok = seq >= 0 && seq < a.n_seqs;
        for (int r = tid; r < R; r += nth) {
            int tt = t0 + r / G;
            act_s[r] = r < nrow && tt >= t && tt < te && lo_s[r] <= hi_s[r];
        }
        __syncthreads();
        if (tid == 0) {
            int ulo = INT_MAX, uhi = -1;
            for (int r = 0; r < R; r++)
                if (act_s[r]) {
                    ulo = min(ulo, lo_s[r]);
                    uhi = max(uhi, hi_s[r]);
                }
            if (uhi < 0 || !seq_ok) {
                range_s[0] = range_s[1] = 0;
            } else {
                int len = uhi - ulo + 1, chunk = (len + a.n_splits - 1) / a.n_splits;
                int s0 = ulo + split * chunk, s1 = min(s0 + chunk, uhi + 1);
                range_s[0] = s0;
                range_s[1] = s1 > s0 ? s1 : s0;
            }
        }
        __syncthreads();
        const int s0 = range_s[0], s1 = range_s[1];
        const int32_t *bt = a.bt + (int64_t)(seq_ok ? seq : 0) * a.mbps;

        for (int k0 = s0; k0 < s1; k0 += TC_KT) {
            const int nk = min(TC_KT, s1 - k0);
            if (tid < TC_KT) {
                int64_t e = -1;
                if (tid < nk) {
                    int p = k0 + tid;
                    int32_t b = bt[p / a.bs];
                    if (b < 0 || b >= a.n_blocks) {
                        if (a.err)
                            atomicOr(a.err, KCUDA_ERR_BLOCK);
                    } else {
                        e = (int64_t)b * a.block_elems + a.layer_off + (int64_t)(p % a.bs) * a.token_stride +
                            (int64_t)kvh * D;
                    }
                }
                blk_s[tid] = e;
            }
            __syncthreads();
            {
                const int D4 = D >> 2;
                for (int i = tid; i < TC_KT * D4; i += nth) {
                    int j = i / D4, d = (i % D4) * 4;
                    int64_t e = blk_s[j];
                    float kf[4], vf[4];
                    kc_load4<CT>(cache, e, d, kf);
                    kc_load4<CT>(cache, e < 0 ? e : e + a.kv_stride, d, vf);
                    for (int u = 0; u < 4; u++) {
                        k_s[j * ldq + d + u] = __float2bfloat16_rn(kf[u]);
                        v_s[j * ldq + d + u] = __float2bfloat16_rn(vf[u]);
                    }
                }
            }
            __syncthreads();
            /* S = Q K^T */
            for (int tile = warp; tile < (R / 16) * (TC_KT / 16); tile += nwarp) {
                int i = tile / (TC_KT / 16), j = tile % (TC_KT / 16);
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
                wmma::fill_fragment(c, 0.0f);
                for (int k = 0; k < D; k += 16) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
                    wmma::load_matrix_sync(fa, q_s + i * 16 * ldq + k, ldq);
                    wmma::load_matrix_sync(fb, k_s + j * 16 * ldq + k, ldq);
                    wmma::mma_sync(c, fa, fb, c);
                }
                wmma::store_matrix_sync(s_s + i * 16 * lds + j * 16, c, lds, wmma::mem_row_major);
            }
            __syncthreads();
            /* online softmax, one warp per row, lanes over keys lane and lane + 32 */
            for (int r = warp; r < R; r += nwarp) {
                float sv[2];
                const bool act = act_s[r];
                const int lo = lo_s[r], hi = hi_s[r];
                float mx = m_s[r];
                for (int u = 0; u < 2; u++) {
                    int j = lane + 32 * u, kp = k0 + j;
                    bool ok = act && j < nk && kp >= lo && kp <= hi;
                    sv[u] = ok ? s_s[r * lds + j] * a.scale : -INFINITY;
                    mx = fmaxf(mx, sv[u]);
                }
                mx = kc_warp_max(mx);
                float alpha, sum = 0.0f;
                if (mx == -INFINITY) {
                    alpha = 1.0f;
                    sv[0] = sv[1] = 0.0f;
                } else {
                    alpha = expf(m_s[r] - mx);
                    for (int u = 0; u < 2; u++) {
                        sv[u] = sv[u] == -INFINITY ? 0.0f : expf(sv[u] - mx);
                        sum += sv[u];
                    }
                }
                sum = kc_warp_sum(sum);
                p_s[r * ldp + lane] = __float2bfloat16_rn(sv[0]);
                p_s[r * ldp + lane + 32] = __float2bfloat16_rn(sv[1]);
                if (lane == 0) {
                    al_s[r] = alpha;
                    if (mx != -INFINITY) {
                        l_s[r] = l_s[r] * alpha + sum;
                        m_s[r] = mx;
                    }
                }
            }
            __syncthreads();
            for (int i = tid; i < R * D; i += nth) {
                int r = i / D;
                o_s[r * ldo + i % D] *= al_s[r];
            }
            __syncthreads();
            /* O += P V */
            for (int tile = warp; tile < (R / 16) * (D / 16); tile += nwarp) {
                int i = tile / (D / 16), n = tile % (D / 16);
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
                wmma::load_matrix_sync(c, o_s + i * 16 * ldo + n * 16, ldo, wmma::mem_row_major);
                for (int k = 0; k < TC_KT; k += 16) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
                    wmma::load_matrix_sync(fa, p_s + i * 16 * ldp + k, ldp);
                    wmma::load_matrix_sync(fb, v_s + k * ldq + n * 16, ldq);
                    wmma::mma_sync(c, fa, fb, c);
                }
                wmma::store_matrix_sync(o_s + i * 16 * ldo + n * 16, c, ldo, wmma::mem_row_major);
            }
            __syncthreads();
        }
        t = te;
    }
    /* epilogue */
    for (int o = tid; o < nrow * D; o += nth) {
        int r = o / D, d = o % D;
        int tt = t0 + r / G, h = kvh * G + r % G;
        if (lo_s[r] == -2 && a.n_splits == 1)
            continue;
        float acc = o_s[r * ldo + d];
        if (a.n_splits == 1) {
            float l = l_s[r];
            a.out[(int64_t)tt * a.out_stride + (int64_t)h * D + d] = l > 0.0f ? acc / l : 0.0f;
        } else {
            int64_t row = ((int64_t)tt * a.n_heads + h) * a.n_splits + split;
            a.ws[row * D + d] = acc;
            if (d == 0) {
                float *ml = a.ws + (int64_t)a.n_tokens * a.n_heads * a.n_splits * D;
                ml[row * 2] = m_s[r];
                ml[row * 2 + 1] = l_s[r];
            }
        }
    }
}

static size_t tc_smem_bytes(int G, int D)
{
    const size_t R = (size_t)TC_QT * G, a = 127;
    size_t b = 0;
    b += (R * (D + 8) * 2 + a) & ~a;
    b += 2 * (((size_t)TC_KT * (D + 8) * 2 + a) & ~a);
    b += (R * (TC_KT + 4) * 4 + a) & ~a;
    b += (R * (TC_KT + 8) * 2 + a) & ~a;
    b += (R * (D + 4) * 4 + a) & ~a;
    b += 6 * ((R * 4 + a) & ~a);
    b += (TC_KT * 8 + a) & ~a;
    return b;
}

/* out[t, h, :] = merge of the splits' (m, l, acc). */
__global__ void attn_combine_kernel(attn_args_t a)
{
    const int t = blockIdx.x, h = blockIdx.y, S = a.n_splits, D = a.hd;
    const int64_t row0 = ((int64_t)t * a.n_heads + h) * S;
    const float *ml = a.ws + (int64_t)a.n_tokens * a.n_heads * S * D;
    float M = -INFINITY;
    for (int s = 0; s < S; s++)
        M = fmaxf(M, ml[(row0 + s) * 2]);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float L = 0.0f, acc = 0.0f;
        if (M != -INFINITY) {
            for (int s = 0; s < S; s++) {
                float m = ml[(row0 + s) * 2];
                if (m == -INFINITY)
                    continue;
                float w = expf(m - M);
                L += w * ml[(row0 + s) * 2 + 1];
                acc += w * a.ws[(row0 + s) * D + d];
            }
        }
        a.out[(int64_t)t * a.out_stride + (int64_t)h * D + d] = L > 0.0f ? acc / L : 0.0f;
    }
}

/* The launch plan: tokens per CTA, splits, threads, shared bytes. */
typedef struct {
    int qt, n_splits, threads;
    bool tc;  /* tensor-core prefill kernel */
    bool dec; /* the decode kernel (kcuda_attn_decode.cu) */
    bool fa2; /* the FlashAttention-2 prefill kernel (kcuda_attn_prefill.cu) */
    size_t smem;
} attn_plan_t;

static attn_plan_t attn_plan(const kcpu_attn_params_t *p, int sm_count, bool allow_reduced)
{
    attn_plan_t pl;
    const int G = p->n_heads / p->n_kv_heads, D = p->head_dim;
    int qt = ROWS_ELEMS / (G * D);
    if (qt > QT_MAX)
        qt = QT_MAX;
    if (qt < 1)
        qt = 1;
    const bool decode = p->n_tokens <= p->n_seqs; /* one token per sequence */
    if (decode)
        qt = 1;
    pl.fa2 = false;
    pl.dec = decode && kcuda_attn_decode_mode() != KCUDA_ATTN_DECODE_OLD && kcuda_attn_decode_ok(p);
    if (pl.dec) {
        pl.qt = 1;
        pl.tc = false;
        pl.threads = 128;
        pl.smem = 0;
        pl.n_splits = kcuda_attn_decode_splits(p, sm_count);
        return pl;
    }
    const bool fp8 = p->layout->dtype == KCUDA_KV_FP8_E4M3 || p->layout->dtype == KCUDA_KV_FP8_E5M2;
    pl.tc = allow_reduced && !decode && !fp8 && D % 16 == 0 && D <= 256 && G <= 8 && tc_smem_bytes(G, D) <= 220 * 1024;
    if (allow_reduced && !decode && kcuda_attn_prefill_mode() == KCUDA_ATTN_PREFILL_FA2 &&
        kcuda_attn_prefill_ok(p)) { /* also fp8 caches, which the WMMA kernel does not read */
        pl.fa2 = true;
        pl.tc = false;
        pl.qt = kcuda_attn_prefill_qt(p);
        pl.n_splits = kcuda_attn_prefill_splits(p, sm_count);
        pl.threads = 0; /* the launcher's own */
        pl.smem = 0;
        return pl;
    }
    if (pl.tc)
        qt = TC_QT;
    pl.qt = qt;
    int64_t ctas = ((p->n_tokens + qt - 1) / qt) * p->n_kv_heads;
    int64_t bound = p->max_blocks_per_seq * p->layout->block_size; /* keys per row at most */
    /* enough CTAs in flight to hide the latency of the paged loads (16 per SM), but no
     * split shorter than 128 keys */
    int64_t want = (16 * (int64_t)(sm_count > 0 ? sm_count : 132) + ctas - 1) / (ctas > 0 ? ctas : 1);
    int64_t by_len = (bound + 127) / 128;
    int64_t s = want < by_len ? want : by_len;
    pl.n_splits = (int)(s < 1 ? 1 : s > MAX_SPLITS ? MAX_SPLITS : s);
    const int R = qt * G;
    pl.threads = qt > 1 ? 256 : 128;
    if (pl.tc) {
        pl.smem = tc_smem_bytes(G, D);
        return pl;
    }
    pl.smem = sizeof(float) * ((size_t)2 * R * D + (size_t)R * KT + (size_t)KT * (D + 1) + (size_t)KT * D + 3 * R) +
              sizeof(int) * 2 * R + 8 + sizeof(int64_t) * KT;
    return pl;
}

extern "C" size_t kcuda_attn_workspace_bytes(const kcpu_attn_params_t *p, int sm_count, bool allow_reduced)
{
    if (p == NULL || p->layout == NULL || p->n_kv_heads <= 0 || p->n_heads % p->n_kv_heads != 0)
        return 0;
    attn_plan_t pl = attn_plan(p, sm_count, allow_reduced);
    if (pl.n_splits == 1)
        return 0;
    return sizeof(float) * (size_t)p->n_tokens * (size_t)p->n_heads * (size_t)pl.n_splits * ((size_t)p->head_dim + 2);
}

extern "C" bool kcuda_attn_uses_decode_kernel(const kcpu_attn_params_t *p, int sm_count, int *n_splits_p)
{
    if (p == NULL || p->layout == NULL || p->n_kv_heads <= 0 || p->n_heads % p->n_kv_heads != 0 ||
        p->n_tokens <= 0)
        return false;
    attn_plan_t pl = attn_plan(p, sm_count, false);
    if (pl.dec && n_splits_p != NULL)
        *n_splits_p = pl.n_splits;
    return pl.dec;
}

extern "C" bool kcuda_attn_uses_prefill_kernel(const kcpu_attn_params_t *p, int sm_count, bool allow_reduced,
                                              int *n_splits_p)
{
    if (p == NULL || p->layout == NULL || p->n_kv_heads <= 0 || p->n_heads % p->n_kv_heads != 0 ||
        p->n_tokens <= 0)
        return false;
    attn_plan_t pl = attn_plan(p, sm_count, allow_reduced);
    if (pl.fa2 && n_splits_p != NULL)
        *n_splits_p = pl.n_splits;
    return pl.fa2;
}

extern "C" pd_status_t kcuda_paged_attention(const kcpu_attn_params_t *p, void *workspace, size_t ws_bytes,
                                             int sm_count, bool allow_reduced, int *err, kcuda_stream_t stream)
{
    return kcuda_paged_attention_scaled(p, 1.0f, 1.0f, workspace, ws_bytes, sm_count, allow_reduced, err, stream);
}

/* The argument checks of kcuda_paged_attention_scaled (logged). */
static pd_status_t attn_check(const kcpu_attn_params_t *p, float k_scale, float v_scale)
{
    const kcpu_kv_layout_t *L = p ? p->layout : NULL;
    if (p == NULL || L == NULL || p->n_tokens < 0 || p->n_tokens > INT32_MAX || p->n_heads <= 0 ||
        p->n_kv_heads <= 0 || p->n_heads % p->n_kv_heads != 0 || p->n_kv_heads != L->n_kv_heads ||
        p->head_dim != L->head_dim || p->head_dim > 1024 || p->layer < 0 || p->layer >= L->n_layers ||
        p->sliding_window < 0 || p->q_stride < (int64_t)p->n_heads * p->head_dim ||
        p->out_stride < (int64_t)p->n_heads * p->head_dim || p->max_blocks_per_seq <= 0 || p->n_seqs <= 0 ||
        (L->dtype != KCPU_DTYPE_F32 && L->dtype != KCPU_DTYPE_F16 && L->dtype != KCUDA_KV_FP8_E4M3 &&
         L->dtype != KCUDA_KV_FP8_E5M2) ||
        !(k_scale > 0.0f) || !(v_scale > 0.0f) || !isfinite(k_scale) || !isfinite(v_scale)) {
        PD_LOG_ERR("kcuda_paged_attention: bad parameters");
        return PD_ERR_INVAL;
    }
    return PD_OK;
}

static pd_status_t attn_ws_check(const kcpu_attn_params_t *p, void *workspace, size_t ws_bytes, int sm_count,
                                 bool allow_reduced)
{
    size_t need = kcuda_attn_workspace_bytes(p, sm_count, allow_reduced);
    if (need > 0 && (workspace == NULL || ws_bytes < need)) {
        PD_LOG_ERR("kcuda_paged_attention: workspace of %zu bytes needed, %zu given", need, ws_bytes);
        return PD_ERR_INVAL;
    }
    return PD_OK;
}

extern "C" pd_status_t kcuda_paged_attention_half(const kcpu_attn_params_t *p, float k_scale, float v_scale,
                                                  void *out, kcpu_dtype_t out_type, void *workspace,
                                                  size_t ws_bytes, int sm_count, bool allow_reduced, int *err,
                                                  kcuda_stream_t stream)
{
    pd_status_t st = attn_check(p, k_scale, v_scale);
    if (st != PD_OK)
        return st;
    if ((out_type != KCPU_DTYPE_BF16 && out_type != KCPU_DTYPE_F16) || out == NULL) {
        PD_LOG_ERR("kcuda_paged_attention_half: output type %s", kcpu_dtype_name(out_type));
        return PD_ERR_INVAL;
    }
    if (p->n_tokens == 0)
        return PD_OK;
    const attn_plan_t pl = attn_plan(p, sm_count, allow_reduced);
    if (!pl.fa2)
        return PD_ERR_UNSUPPORTED; /* the caller runs the f32 kernels and rounds */
    st = attn_ws_check(p, workspace, ws_bytes, sm_count, allow_reduced);
    if (st != PD_OK)
        return st;
    return kcuda_attn_prefill_launch(p, k_scale, v_scale, out, out_type, pl.n_splits, (float *)workspace, err,
                                     stream);
}

extern "C" pd_status_t kcuda_paged_attention_scaled(const kcpu_attn_params_t *p, float k_scale, float v_scale,
                                                    void *workspace, size_t ws_bytes, int sm_count,
                                                    bool allow_reduced, int *err, kcuda_stream_t stream)
{
    pd_status_t st = attn_check(p, k_scale, v_scale);
    if (st != PD_OK)
        return st;
    const kcpu_kv_layout_t *L = p->layout;
    if (p->n_tokens == 0)
        return PD_OK;
    attn_plan_t pl = attn_plan(p, sm_count, allow_reduced);
    st = attn_ws_check(p, workspace, ws_bytes, sm_count, allow_reduced);
    if (st != PD_OK)
        return st;
    if (pl.smem > 227 * 1024) {
        PD_LOG_ERR("kcuda_paged_attention: group %d x head_dim %d needs too much shared memory",
                   p->n_heads / p->n_kv_heads, p->head_dim);
        return PD_ERR_UNSUPPORTED;
    }
    if (pl.dec)
        return kcuda_attn_decode_launch(p, k_scale, v_scale, pl.n_splits, (float *)workspace, err, stream);
    if (pl.fa2)
        return kcuda_attn_prefill_launch(p, k_scale, v_scale, p->out, KCPU_DTYPE_F32, pl.n_splits,
                                         (float *)workspace, err, stream);
    attn_args_t a;
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
    a.hd = p->head_dim;
    a.qt = pl.qt;
    a.n_splits = pl.n_splits;
    a.scale = p->scale;
    a.k_scale = k_scale;
    a.v_scale = v_scale;
    a.causal = p->causal;
    a.window = p->sliding_window;
    a.cache = p->cache_base;
    a.block_elems = (int64_t)(L->block_bytes / L->elem_bytes);
    a.layer_off = (int64_t)p->layer * L->layer_stride;
    a.kv_stride = L->kv_stride;
    a.token_stride = L->token_stride;
    a.n_blocks = L->n_blocks;
    a.bs = L->block_size;
    a.ws = (float *)workspace;
    a.err = err;
    dim3 grid((unsigned)((p->n_tokens + pl.qt - 1) / pl.qt), (unsigned)p->n_kv_heads, (unsigned)pl.n_splits);
    if (pl.tc && L->dtype == KCPU_DTYPE_F32) {
        cudaFuncSetAttribute(attn_tc_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pl.smem);
        attn_tc_kernel<float><<<grid, pl.threads, pl.smem, stream>>>(a);
    } else if (pl.tc) {
        cudaFuncSetAttribute(attn_tc_kernel<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pl.smem);
        attn_tc_kernel<__half><<<grid, pl.threads, pl.smem, stream>>>(a);
    } else if (L->dtype == KCUDA_KV_FP8_E4M3) {
        cudaFuncSetAttribute(attn_kernel<__nv_fp8_e4m3>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pl.smem);
        attn_kernel<__nv_fp8_e4m3><<<grid, pl.threads, pl.smem, stream>>>(a);
    } else if (L->dtype == KCUDA_KV_FP8_E5M2) {
        cudaFuncSetAttribute(attn_kernel<__nv_fp8_e5m2>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pl.smem);
        attn_kernel<__nv_fp8_e5m2><<<grid, pl.threads, pl.smem, stream>>>(a);
    } else if (L->dtype == KCPU_DTYPE_F32) {
        cudaFuncSetAttribute(attn_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pl.smem);
        attn_kernel<float><<<grid, pl.threads, pl.smem, stream>>>(a);
    } else {
        cudaFuncSetAttribute(attn_kernel<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pl.smem);
        attn_kernel<__half><<<grid, pl.threads, pl.smem, stream>>>(a);
    }
    {
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) {
            PD_LOG_ERR("kcuda_paged_attention: launch failed: %s", cudaGetErrorString(e));
            return PD_ERR_CUDA;
        }
    }
    if (pl.n_splits > 1) {
        attn_combine_kernel<<<dim3((unsigned)p->n_tokens, (unsigned)p->n_heads), 128, 0, stream>>>(a);
        KCUDA_LAUNCHED("kcuda_paged_attention (combine)");
    }
    return PD_OK;
}
