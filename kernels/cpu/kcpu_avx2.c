/*
 * kcpu_avx2.c - AVX2/FMA/F16C inner loops of the CPU kernels.  Compiled with
 * -mavx2 -mfma -mf16c -ffp-contract=off (see kernels/CMakeLists.txt) and only called
 * after kcpu_simd_enabled() checked the CPU.  Contraction is off so the f32 dot keeps
 * exactly the lane order of kcpu_vec_dot_f32_scalar (tests compare them bit for bit).
 *
 * Tile functions compute an mr x nr block of dot products with one 8-lane accumulator
 * per output element; tails use masked loads, so an element's value does not depend on
 * the tile shape it was computed in.
 */
#include "kcpu_internal.h"

#if KCPU_HAVE_X86
#include <immintrin.h>
#include <math.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

INLINE float hsum8(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);            /* a0+a4, a1+a5, a2+a6, a3+a7 */
    __m128 h = _mm_movehl_ps(s, s);           /* a2+a6, a3+a7 */
    s = _mm_add_ps(s, h);                     /* (a0+a4)+(a2+a6), (a1+a5)+(a3+a7) */
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

INLINE __m256i tail_mask(int64_t r)
{
    static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(m + 8 - r));
}

float kcpu_vec_dot_f32_avx2(const float *a, const float *b, int64_t n)
{
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    if (i < n) {
        __m256i mk = tail_mask(n - i);
        acc = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, mk), _mm256_maskload_ps(b + i, mk), acc);
    }
    return hsum8(acc);
}

INLINE void f32_tile(const float *x, int64_t ldx, const float *w, int64_t ldw, int64_t K,
                     float *out, int64_t ldo, const int MRc, const int NRc)
{
    __m256 acc[4][4];
    for (int i = 0; i < MRc; i++)
        for (int j = 0; j < NRc; j++)
            acc[i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[4];
        for (int j = 0; j < NRc; j++)
            wv[j] = _mm256_loadu_ps(w + j * ldw + k);
        for (int i = 0; i < MRc; i++) {
            __m256 xv = _mm256_loadu_ps(x + i * ldx + k);
            for (int j = 0; j < NRc; j++)
                acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    if (k < K) {
        __m256i mk = tail_mask(K - k);
        __m256 wv[4];
        for (int j = 0; j < NRc; j++)
            wv[j] = _mm256_maskload_ps(w + j * ldw + k, mk);
        for (int i = 0; i < MRc; i++) {
            __m256 xv = _mm256_maskload_ps(x + i * ldx + k, mk);
            for (int j = 0; j < NRc; j++)
                acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < MRc; i++)
        for (int j = 0; j < NRc; j++)
            out[i * ldo + j] = hsum8(acc[i][j]);
}

void kcpu_gemm_f32_tile_avx2(const float *x, int64_t ldx, int mr, const float *w, int64_t ldw,
                             int nr, int64_t K, float *out, int64_t ldo)
{
#define F32_CASE(a, b) \
    case (a) * 8 + (b): f32_tile(x, ldx, w, ldw, K, out, ldo, a, b); return;
    switch (mr * 8 + nr) {
    F32_CASE(1, 1) F32_CASE(1, 2) F32_CASE(1, 3) F32_CASE(1, 4)
    F32_CASE(2, 1) F32_CASE(2, 2) F32_CASE(2, 3)
    F32_CASE(3, 1) F32_CASE(3, 2) F32_CASE(3, 3)
    F32_CASE(4, 1) F32_CASE(4, 2) F32_CASE(4, 3)
    default:
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++)
                out[i * ldo + j] = kcpu_vec_dot_f32_avx2(x + i * ldx, w + j * ldw, K);
    }
#undef F32_CASE
}

/* ---- dequantization ---- */

bool kcpu_dequant_row_avx2(kcpu_dtype_t type, const void *src, float *dst, int64_t n)
{
    int64_t i = 0;
    switch (type) {
    case KCPU_DTYPE_F16: {
        const uint16_t *s = src;
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
        for (; i < n; i++)
            dst[i] = _cvtsh_ss(s[i]);
        return true;
    }
    case KCPU_DTYPE_BF16: {
        const uint16_t *s = src;
        for (; i + 8 <= n; i += 8) {
            __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        }
        for (; i < n; i++)
            dst[i] = kcpu_bf16_to_f32(s[i]);
        return true;
    }
    case KCPU_DTYPE_Q8_0: {
        const kcpu_block_q8_0_t *b = src;
        for (int64_t k = 0; k < n / KCPU_QK; k++) {
            __m256 d = _mm256_set1_ps(_cvtsh_ss(b[k].d));
            for (int j = 0; j < 4; j++) {
                __m128i q;
                memcpy(&q, b[k].qs + 8 * j, 8);
                __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                _mm256_storeu_ps(dst + k * KCPU_QK + 8 * j, _mm256_mul_ps(v, d));
            }
        }
        return true;
    }
    case KCPU_DTYPE_Q4_0:
    case KCPU_DTYPE_Q4_1: {
        size_t bb = type == KCPU_DTYPE_Q4_0 ? sizeof(kcpu_block_q4_0_t) : sizeof(kcpu_block_q4_1_t);
        const uint8_t *p = src;
        for (int64_t k = 0; k < n / KCPU_QK; k++, p += bb) {
            uint16_t dh, mh = 0;
            const uint8_t *qs;
            memcpy(&dh, p, 2);
            if (type == KCPU_DTYPE_Q4_1) {
                memcpy(&mh, p + 2, 2);
                qs = p + 4;
            } else {
                qs = p + 2;
            }
            __m256 d = _mm256_set1_ps(_cvtsh_ss(dh));
            __m256 m = _mm256_set1_ps(_cvtsh_ss(mh));
            __m128i raw = _mm_loadu_si128((const __m128i *)qs);
            __m128i lo = _mm_and_si128(raw, _mm_set1_epi8(15));
            __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(15));
            __m128i parts[4] = { lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8) };
            for (int j = 0; j < 4; j++) {
                __m256i q = _mm256_cvtepu8_epi32(parts[j]);
                if (type == KCPU_DTYPE_Q4_0)
                    q = _mm256_sub_epi32(q, _mm256_set1_epi32(8));
                __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
                if (type == KCPU_DTYPE_Q4_1)
                    v = _mm256_add_ps(v, m);
                _mm256_storeu_ps(dst + k * KCPU_QK + 8 * j, v);
            }
        }
        return true;
    }
    default:
        return false;
    }
}

/* ---- activation quantization (same rounding as kcpu_quant_q8x_scalar) ---- */

void kcpu_quant_q8x_avx2(const float *x, kcpu_block_q8x_t *y, int64_t n)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / KCPU_QK; b++) {
        const float *xb = x + b * KCPU_QK;
        __m256 v[4], amax;
        for (int j = 0; j < 4; j++)
            v[j] = _mm256_loadu_ps(xb + 8 * j);
        amax = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        float am = _mm_cvtss_f32(m4);
        float d = am / 127.0f;
        float id = d != 0.0f ? 127.0f / am : 0.0f;
        __m256 idv = _mm256_set1_ps(id);
        __m256i q[4];
        for (int j = 0; j < 4; j++)
            q[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], idv),
                                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_srli_si128(s4, 8));
        s4 = _mm_add_epi32(s4, _mm_srli_si128(s4, 4));
        int isum = _mm_cvtsi128_si32(s4);
        /* pack 32 int32 -> 32 int8 in order: packs work per 128-bit lane, fix with a permute */
        __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
        __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[b].qs, p);
        y[b].d = d;
        y[b].s = d * (float)isum;
    }
}

/* ---- quantized tiles ---- */

/* 32 weight values of block k of a row as bytes (u8 0..15 for Q4, i8 for Q8_0), their
 * scale and, for Q4, the per-block offset coefficient (Q4_0: -8d, Q4_1: m).  The f16
 * fields are loaded with a zero-extending movd (no merge into a stale register). */
INLINE __m256i load_wblock(kcpu_dtype_t type, const uint8_t *row, int64_t k, float *d_p, float *m_p)
{
    if (type == KCPU_DTYPE_Q8_0) {
        const kcpu_block_q8_0_t *b = (const kcpu_block_q8_0_t *)row + k;
        *d_p = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(b->d)));
        *m_p = 0.0f;
        return _mm256_loadu_si256((const __m256i *)b->qs);
    }
    const uint8_t *qs;
    if (type == KCPU_DTYPE_Q4_0) {
        const kcpu_block_q4_0_t *b = (const kcpu_block_q4_0_t *)row + k;
        *d_p = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(b->d)));
        *m_p = -8.0f * *d_p;
        qs = b->qs;
    } else {
        const kcpu_block_q4_1_t *b = (const kcpu_block_q4_1_t *)row + k;
        int32_t dm;
        memcpy(&dm, b, 4); /* d and m side by side */
        __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128(dm));
        *d_p = _mm_cvtss_f32(f);
        *m_p = _mm_cvtss_f32(_mm_movehdup_ps(f));
        qs = b->qs;
    }
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_insertf128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(15));
}

INLINE void q8x_tile(kcpu_dtype_t type, const kcpu_block_q8x_t *x, int64_t ldx, const uint8_t *w,
                     size_t rbw, int64_t nb, float *out, int64_t ldo, const int MRc, const int NRc)
{
    __m256 acc[4][4];
    float off[4][4];
    const __m256i ones = _mm256_set1_epi16(1);
    const bool q8 = type == KCPU_DTYPE_Q8_0;

    for (int i = 0; i < MRc; i++)
        for (int j = 0; j < NRc; j++) {
            acc[i][j] = _mm256_setzero_ps();
            off[i][j] = 0.0f;
        }
    for (int64_t k = 0; k < nb; k++) {
        __m256i wq[4], wraw[4];
        float wd[4], wm[4];
        for (int j = 0; j < NRc; j++) {
            wraw[j] = load_wblock(type, w + (size_t)j * rbw, k, &wd[j], &wm[j]);
            /* maddubs wants u8 x i8: use |w| and move w's sign onto x */
            wq[j] = q8 ? _mm256_sign_epi8(wraw[j], wraw[j]) : wraw[j];
        }
        for (int i = 0; i < MRc; i++) {
            const kcpu_block_q8x_t *xb = x + i * ldx + k;
            __m256i xq = _mm256_loadu_si256((const __m256i *)xb->qs);
            for (int j = 0; j < NRc; j++) {
                __m256i xs = q8 ? _mm256_sign_epi8(xq, wraw[j]) : xq;
                __m256i p16 = _mm256_maddubs_epi16(wq[j], xs);
                __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(wd[j] * xb->d), p, acc[i][j]);
                if (!q8)
                    off[i][j] += wm[j] * xb->s;
            }
        }
    }
    for (int i = 0; i < MRc; i++)
        for (int j = 0; j < NRc; j++)
            out[i * ldo + j] = hsum8(acc[i][j]) + off[i][j];
}

/* The decode case (one activation row, four weight rows) with every accumulator in a
 * named register (the generic tile spills them).  Same arithmetic per element as
 * q8x_tile: acc = fma(d_w * d_x, cvt(isum8), acc); off += m_w * s_x. */
INLINE void q8x_gemv4(kcpu_dtype_t type, const kcpu_block_q8x_t *x, const uint8_t *w, size_t rbw,
                      int64_t nb, float *out)
{
    const __m256i ones = _mm256_set1_epi16(1);
    const bool q8 = type == KCPU_DTYPE_Q8_0;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    float o0 = 0, o1 = 0, o2 = 0, o3 = 0;
    const uint8_t *w0 = w, *w1 = w + rbw, *w2 = w + 2 * rbw, *w3 = w + 3 * rbw;

#define GEMV_ROW(wr, acc, off)                                                        \
    do {                                                                              \
        float wd_, wm_;                                                               \
        __m256i wq_ = load_wblock(type, (wr), k, &wd_, &wm_);                          \
        __m256i p16_;                                                                 \
        if (q8)                                                                       \
            p16_ = _mm256_maddubs_epi16(_mm256_sign_epi8(wq_, wq_), _mm256_sign_epi8(xq, wq_)); \
        else                                                                          \
            p16_ = _mm256_maddubs_epi16(wq_, xq);                                     \
        __m256 p_ = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16_, ones));                \
        acc = _mm256_fmadd_ps(_mm256_set1_ps(wd_ * xd), p_, acc);                     \
        if (!q8)                                                                      \
            off += wm_ * xs;                                                          \
    } while (0)

    /* four interleaved row streams defeat the hardware prefetcher on long matrices (Q8_0
     * rows of 612 bytes ran at half the bandwidth of one stream): prefetch 2 KiB ahead */
    const size_t bb = type == KCPU_DTYPE_Q8_0 ? sizeof(kcpu_block_q8_0_t)
                      : type == KCPU_DTYPE_Q4_0 ? sizeof(kcpu_block_q4_0_t) : sizeof(kcpu_block_q4_1_t);
    for (int64_t k = 0; k < nb; k++) {
        const __m256i xq = _mm256_loadu_si256((const __m256i *)x[k].qs);
        const float xd = x[k].d, xs = x[k].s;
        if ((k & 1) == 0 || bb > 32) { /* about one new cache line per row per prefetch */
            size_t pf = (size_t)k * bb + 2048;
            _mm_prefetch((const char *)w0 + pf, _MM_HINT_T0);
            _mm_prefetch((const char *)w1 + pf, _MM_HINT_T0);
            _mm_prefetch((const char *)w2 + pf, _MM_HINT_T0);
            _mm_prefetch((const char *)w3 + pf, _MM_HINT_T0);
        }
        GEMV_ROW(w0, a0, o0);
        GEMV_ROW(w1, a1, o1);
        GEMV_ROW(w2, a2, o2);
        GEMV_ROW(w3, a3, o3);
    }
#undef GEMV_ROW
    out[0] = hsum8(a0) + o0;
    out[1] = hsum8(a1) + o1;
    out[2] = hsum8(a2) + o2;
    out[3] = hsum8(a3) + o3;
}

/* Small batches (4 activation rows x 2 weight rows), accumulators in named registers;
 * the same per-element arithmetic as q8x_tile and q8x_gemv4. */
INLINE void q8x_4x2(kcpu_dtype_t type, const kcpu_block_q8x_t *x, int64_t ldx, const uint8_t *w,
                    size_t rbw, int64_t nb, float *out, int64_t ldo)
{
    const __m256i ones = _mm256_set1_epi16(1);
    const bool q8 = type == KCPU_DTYPE_Q8_0;
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
           a30 = a00, a31 = a00;
    float o00 = 0, o01 = 0, o10 = 0, o11 = 0, o20 = 0, o21 = 0, o30 = 0, o31 = 0;

    for (int64_t k = 0; k < nb; k++) {
        float wd0, wm0, wd1, wm1;
        __m256i w0 = load_wblock(type, w, k, &wd0, &wm0);
        __m256i w1 = load_wblock(type, w + rbw, k, &wd1, &wm1);
        __m256i u0 = q8 ? _mm256_sign_epi8(w0, w0) : w0;
        __m256i u1 = q8 ? _mm256_sign_epi8(w1, w1) : w1;
#define Q4X2_ROW(i, acc0, acc1, off0, off1)                                              \
        do {                                                                             \
            const kcpu_block_q8x_t *xb_ = x + (i) * ldx + k;                             \
            __m256i xq_ = _mm256_loadu_si256((const __m256i *)xb_->qs);                  \
            __m256i x0_ = q8 ? _mm256_sign_epi8(xq_, w0) : xq_;                          \
            __m256i x1_ = q8 ? _mm256_sign_epi8(xq_, w1) : xq_;                          \
            __m256 p0_ = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u0, x0_), ones)); \
            __m256 p1_ = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u1, x1_), ones)); \
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(wd0 * xb_->d), p0_, acc0);             \
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(wd1 * xb_->d), p1_, acc1);             \
            if (!q8) {                                                                   \
                off0 += wm0 * xb_->s;                                                    \
                off1 += wm1 * xb_->s;                                                    \
            }                                                                            \
        } while (0)
        Q4X2_ROW(0, a00, a01, o00, o01);
        Q4X2_ROW(1, a10, a11, o10, o11);
        Q4X2_ROW(2, a20, a21, o20, o21);
        Q4X2_ROW(3, a30, a31, o30, o31);
#undef Q4X2_ROW
    }
    out[0] = hsum8(a00) + o00;
    out[1] = hsum8(a01) + o01;
    out[ldo] = hsum8(a10) + o10;
    out[ldo + 1] = hsum8(a11) + o11;
    out[2 * ldo] = hsum8(a20) + o20;
    out[2 * ldo + 1] = hsum8(a21) + o21;
    out[3 * ldo] = hsum8(a30) + o30;
    out[3 * ldo + 1] = hsum8(a31) + o31;
}

void kcpu_gemm_q8x_tile_avx2(kcpu_dtype_t type, const kcpu_block_q8x_t *x, int64_t ldx_blocks,
                             int mr, const uint8_t *w, size_t rbw, int nr, int64_t nb,
                             float *out, int64_t ldo)
{
    if (mr == 4 && nr == 2) {
        switch (type) {
        case KCPU_DTYPE_Q4_1: q8x_4x2(KCPU_DTYPE_Q4_1, x, ldx_blocks, w, rbw, nb, out, ldo); return;
        case KCPU_DTYPE_Q4_0: q8x_4x2(KCPU_DTYPE_Q4_0, x, ldx_blocks, w, rbw, nb, out, ldo); return;
        case KCPU_DTYPE_Q8_0: q8x_4x2(KCPU_DTYPE_Q8_0, x, ldx_blocks, w, rbw, nb, out, ldo); return;
        default: break;
        }
    }
    if (mr == 1 && nr == 4) {
        switch (type) { /* constant type: the loads and branches fold */
        case KCPU_DTYPE_Q4_1: q8x_gemv4(KCPU_DTYPE_Q4_1, x, w, rbw, nb, out); return;
        case KCPU_DTYPE_Q4_0: q8x_gemv4(KCPU_DTYPE_Q4_0, x, w, rbw, nb, out); return;
        case KCPU_DTYPE_Q8_0: q8x_gemv4(KCPU_DTYPE_Q8_0, x, w, rbw, nb, out); return;
        default: break;
        }
    }
#define Q_CASE(a, b) \
    case (a) * 8 + (b): q8x_tile(type, x, ldx_blocks, w, rbw, nb, out, ldo, a, b); return;
    switch (mr * 8 + nr) {
    Q_CASE(1, 1) Q_CASE(1, 2) Q_CASE(1, 3) Q_CASE(1, 4)
    Q_CASE(2, 1) Q_CASE(2, 2)
    Q_CASE(3, 1) Q_CASE(3, 2)
    Q_CASE(4, 1) Q_CASE(4, 2)
    default:
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++)
                q8x_tile(type, x + i * ldx_blocks, ldx_blocks, w + (size_t)j * rbw, rbw, nb,
                         out + i * ldo + j, ldo, 1, 1);
    }
#undef Q_CASE
}

/* acc[g][0..hd) += sum_j p[g * ldp + j] * v[j * ldv + 0..hd) for g < G, j < n: the
 * probability-weighted V sum of one key block, 4 heads of the group at a time so each
 * V vector load feeds 4 FMA chains. */
INLINE void pv_rows(float *acc, int G, int hd, const float *p, int64_t ldp, const float *v,
                    int64_t ldv, int n, int d0, bool tail, __m256i mk)
{
#define LD(ptr) (tail ? _mm256_maskload_ps((ptr), mk) : _mm256_loadu_ps(ptr))
    int g = 0;
    for (; g + 4 <= G; g += 4) {
        float *a = acc + (int64_t)g * hd + d0;
        __m256 a0 = LD(a), a1 = LD(a + hd), a2 = LD(a + 2 * hd), a3 = LD(a + 3 * hd);
        const float *pg = p + (int64_t)g * ldp;
        for (int j = 0; j < n; j++) {
            __m256 vv = LD(v + j * ldv + d0);
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(pg + j), vv, a0);
            a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(pg + ldp + j), vv, a1);
            a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(pg + 2 * ldp + j), vv, a2);
            a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(pg + 3 * ldp + j), vv, a3);
        }
        if (tail) {
            _mm256_maskstore_ps(a, mk, a0);
            _mm256_maskstore_ps(a + hd, mk, a1);
            _mm256_maskstore_ps(a + 2 * hd, mk, a2);
            _mm256_maskstore_ps(a + 3 * hd, mk, a3);
        } else {
            _mm256_storeu_ps(a, a0);
            _mm256_storeu_ps(a + hd, a1);
            _mm256_storeu_ps(a + 2 * hd, a2);
            _mm256_storeu_ps(a + 3 * hd, a3);
        }
    }
    for (; g < G; g++) { /* one chain, the same arithmetic as the 4-row path */
        float *a = acc + (int64_t)g * hd + d0;
        __m256 a0 = LD(a);
        const float *pg = p + (int64_t)g * ldp;
        for (int j = 0; j < n; j++)
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(pg + j), LD(v + j * ldv + d0), a0);
        if (tail)
            _mm256_maskstore_ps(a, mk, a0);
        else
            _mm256_storeu_ps(a, a0);
    }
#undef LD
}

/* acc[g][0..hd) += sum_j p[g * ldp + j] * v[j * ldv + 0..hd) for g < G, j < n: the
 * probability-weighted V sum of one key block, 4 rows at a time so each V vector load
 * feeds 4 FMA chains. */
void kcpu_attn_pv_avx2(float *acc, int G, int hd, const float *p, int64_t ldp, const float *v,
                       int64_t ldv, int n)
{
    int d0 = 0;
    for (; d0 + 8 <= hd; d0 += 8)
        pv_rows(acc, G, hd, p, ldp, v, ldv, n, d0, false, _mm256_setzero_si256());
    if (d0 < hd)
        pv_rows(acc, G, hd, p, ldp, v, ldv, n, d0, true, tail_mask(hd - d0));
}

/* Sums of 8 accumulators at once: out[i] = ((a_i0 + a_i1) + (a_i2 + a_i3)) +
 * ((a_i4 + a_i5) + (a_i6 + a_i7)) for every i (the same tree for each). */
INLINE __m256 hsum8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5,
                      __m256 a6, __m256 a7)
{
    __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
    __m256 t2 = _mm256_hadd_ps(a4, a5), t3 = _mm256_hadd_ps(a6, a7);
    t0 = _mm256_hadd_ps(t0, t1); /* a0..a3: low-lane and high-lane halves */
    t2 = _mm256_hadd_ps(t2, t3); /* a4..a7 */
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20), _mm256_permute2f128_ps(t0, t2, 0x31));
}

/* scores[r * ldsc + j] = scale * dot(q_r, k_j) for r < R, j < n (hd-long rows).  Two query
 * rows x four keys per step (8 accumulators, 6 loads per 8 FMAs); every score goes
 * through the same accumulation and reduction tree whatever its position. */
void kcpu_attn_scores_avx2(const float *q, int R, int hd, const float *k, int64_t ldk, int n,
                           float scale, float *scores, int64_t ldsc)
{
    const __m256 sv = _mm256_set1_ps(scale);
    for (int r0 = 0; r0 < R; r0 += 2) {
        const float *qa = q + (int64_t)r0 * hd;
        const float *qb = r0 + 1 < R ? qa + hd : qa; /* odd row count: duplicate, drop */
        for (int j0 = 0; j0 < n; j0 += 4) {
            const float *kp[4];
            for (int c = 0; c < 4; c++)
                kp[c] = k + (j0 + c < n ? j0 + c : n - 1) * ldk;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            int d = 0;
            for (; d + 8 <= hd; d += 8) {
                __m256 x = _mm256_loadu_ps(qa + d), y = _mm256_loadu_ps(qb + d);
                __m256 k0 = _mm256_loadu_ps(kp[0] + d), k1 = _mm256_loadu_ps(kp[1] + d);
                __m256 k2 = _mm256_loadu_ps(kp[2] + d), k3 = _mm256_loadu_ps(kp[3] + d);
                a0 = _mm256_fmadd_ps(x, k0, a0); a1 = _mm256_fmadd_ps(x, k1, a1);
                a2 = _mm256_fmadd_ps(x, k2, a2); a3 = _mm256_fmadd_ps(x, k3, a3);
                b0 = _mm256_fmadd_ps(y, k0, b0); b1 = _mm256_fmadd_ps(y, k1, b1);
                b2 = _mm256_fmadd_ps(y, k2, b2); b3 = _mm256_fmadd_ps(y, k3, b3);
            }
            if (d < hd) {
                __m256i mk = tail_mask(hd - d);
                __m256 x = _mm256_maskload_ps(qa + d, mk), y = _mm256_maskload_ps(qb + d, mk);
                __m256 k0 = _mm256_maskload_ps(kp[0] + d, mk), k1 = _mm256_maskload_ps(kp[1] + d, mk);
                __m256 k2 = _mm256_maskload_ps(kp[2] + d, mk), k3 = _mm256_maskload_ps(kp[3] + d, mk);
                a0 = _mm256_fmadd_ps(x, k0, a0); a1 = _mm256_fmadd_ps(x, k1, a1);
                a2 = _mm256_fmadd_ps(x, k2, a2); a3 = _mm256_fmadd_ps(x, k3, a3);
                b0 = _mm256_fmadd_ps(y, k0, b0); b1 = _mm256_fmadd_ps(y, k1, b1);
                b2 = _mm256_fmadd_ps(y, k2, b2); b3 = _mm256_fmadd_ps(y, k3, b3);
            }
            float o[8];
            _mm256_storeu_ps(o, _mm256_mul_ps(hsum8x8(a0, a1, a2, a3, b0, b1, b2, b3), sv));
            int nc = n - j0 < 4 ? n - j0 : 4;
            for (int c = 0; c < nc; c++) {
                scores[(int64_t)r0 * ldsc + j0 + c] = o[c];
                if (r0 + 1 < R)
                    scores[(int64_t)(r0 + 1) * ldsc + j0 + c] = o[4 + c];
            }
        }
    }
}

/* out[i] = exp(x[i] - mx) for n floats, returns their sum (vectorised exp: Cody-Waite
 * range reduction and a degree-6 polynomial, ~2 ulp; -inf gives 0). */
float kcpu_exp_sub_sum_avx2(float *x, int n, float mx)
{
    const __m256 m = _mm256_set1_ps(mx);
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
    const __m256 lo_lim = _mm256_set1_ps(-87.3f);
    __m256 sum = _mm256_setzero_ps();
    int i = 0;
    for (; i < n; i += 8) {
        bool tail = n - i < 8;
        __m256i mk = tail_mask(tail ? n - i : 8);
        __m256 v = _mm256_sub_ps(tail ? _mm256_maskload_ps(x + i, mk) : _mm256_loadu_ps(x + i), m);
        __m256 under = _mm256_cmp_ps(v, lo_lim, _CMP_LT_OQ); /* also -inf; NaN stays */
        v = _mm256_max_ps(v, lo_lim);
        __m256 fx = _mm256_round_ps(_mm256_mul_ps(v, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 r = _mm256_fnmadd_ps(fx, ln2_hi, v);
        r = _mm256_fnmadd_ps(fx, ln2_lo, r);
        __m256 p = _mm256_set1_ps(1.9875691500e-4f);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
        p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
        __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
        __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
        y = _mm256_andnot_ps(under, y);
        if (tail) {
            y = _mm256_and_ps(y, _mm256_castsi256_ps(mk));
            _mm256_maskstore_ps(x + i, mk, y);
        } else {
            _mm256_storeu_ps(x + i, y);
        }
        sum = _mm256_add_ps(sum, y);
    }
    return hsum8(sum);
}

/* acc = acc * beta + alpha * v over n floats (the online-softmax update). */
void kcpu_axpy_scale_avx2(float *acc, float alpha, const float *v, float beta, int64_t n)
{
    __m256 a = _mm256_set1_ps(alpha), b = _mm256_set1_ps(beta);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(v + i),
                                                  _mm256_mul_ps(b, _mm256_loadu_ps(acc + i))));
    for (; i < n; i++)
        acc[i] = fmaf(alpha, v[i], beta * acc[i]);
}

#else
typedef int kcpu_avx2_unused_t;
#endif
