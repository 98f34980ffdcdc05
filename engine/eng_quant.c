/*
 * eng_quant.c - element type tables, dequantization and float conversions.
 *
 * The dequantizers follow ggml's reference formulas operation for operation, in float,
 * so results are bit-exact with ggml and with the python gguf package (which uses the
 * same float32 formulas).  Floating-point contraction is switched off in this file:
 * fusing `d * q + m` into an FMA would change the last bit.
 */
#include "eng_quant.h"

#include "kcpu.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "pd_log.h"
#include "pd_util.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* ---- type table ---- */

typedef struct {
    const char *name;
    int64_t block_size;
    size_t block_bytes;
} dtype_info_t;

static const dtype_info_t dtype_table[ENG_DTYPE_COUNT] = {
    [ENG_DTYPE_F32] = {"F32", 1, 4},
    [ENG_DTYPE_F16] = {"F16", 1, 2},
    [ENG_DTYPE_Q4_0] = {"Q4_0", 32, 18},
    [ENG_DTYPE_Q4_1] = {"Q4_1", 32, 20},
    [ENG_DTYPE_Q5_0] = {"Q5_0", 32, 22},
    [ENG_DTYPE_Q5_1] = {"Q5_1", 32, 24},
    [ENG_DTYPE_Q8_0] = {"Q8_0", 32, 34},
    [ENG_DTYPE_Q8_1] = {"Q8_1", 32, 36},
    [ENG_DTYPE_Q2_K] = {"Q2_K", 256, 84},
    [ENG_DTYPE_Q3_K] = {"Q3_K", 256, 110},
    [ENG_DTYPE_Q4_K] = {"Q4_K", 256, 144},
    [ENG_DTYPE_Q5_K] = {"Q5_K", 256, 176},
    [ENG_DTYPE_Q6_K] = {"Q6_K", 256, 210},
    [ENG_DTYPE_Q8_K] = {"Q8_K", 256, 292},
    [ENG_DTYPE_I8] = {"I8", 1, 1},
    [ENG_DTYPE_I16] = {"I16", 1, 2},
    [ENG_DTYPE_I32] = {"I32", 1, 4},
    [ENG_DTYPE_I64] = {"I64", 1, 8},
    [ENG_DTYPE_F64] = {"F64", 1, 8},
    [ENG_DTYPE_BF16] = {"BF16", 1, 2},
};

_Static_assert(sizeof(eng_block_q4_0_t) == 18, "q4_0 layout");
_Static_assert(sizeof(eng_block_q4_1_t) == 20, "q4_1 layout");
_Static_assert(sizeof(eng_block_q8_0_t) == 34, "q8_0 layout");
_Static_assert(sizeof(eng_block_q4_k_t) == 144, "q4_k layout");
_Static_assert(sizeof(eng_block_q6_k_t) == 210, "q6_k layout");

bool eng_dtype_valid(int type)
{
    return type >= 0 && type < ENG_DTYPE_COUNT && dtype_table[type].name != NULL;
}

const char *eng_dtype_name(eng_dtype_t type)
{
    return eng_dtype_valid(type) ? dtype_table[type].name : "?";
}

eng_dtype_t eng_dtype_from_name(const char *name)
{
    static const struct {
        const char *alias;
        eng_dtype_t type;
    } aliases[] = {
        {"float32", ENG_DTYPE_F32}, {"float", ENG_DTYPE_F32},     {"fp32", ENG_DTYPE_F32},
        {"float16", ENG_DTYPE_F16}, {"half", ENG_DTYPE_F16},      {"fp16", ENG_DTYPE_F16},
        {"bfloat16", ENG_DTYPE_BF16}, {"float64", ENG_DTYPE_F64}, {"double", ENG_DTYPE_F64},
        {"int8", ENG_DTYPE_I8},     {"int16", ENG_DTYPE_I16},     {"int32", ENG_DTYPE_I32},
        {"int64", ENG_DTYPE_I64},
    };
    if (name == NULL)
        return ENG_DTYPE_INVALID;
    if (strncasecmp(name, "torch.", 6) == 0)
        name += 6;
    for (int t = 0; t < ENG_DTYPE_COUNT; t++)
        if (dtype_table[t].name != NULL && strcasecmp(name, dtype_table[t].name) == 0)
            return (eng_dtype_t)t;
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
        if (strcasecmp(name, aliases[i].alias) == 0)
            return aliases[i].type;
    return ENG_DTYPE_INVALID;
}

bool eng_dtype_can_dequant(eng_dtype_t type)
{
    switch (type) {
    case ENG_DTYPE_F32:
    case ENG_DTYPE_F16:
    case ENG_DTYPE_BF16:
    case ENG_DTYPE_Q8_0:
    case ENG_DTYPE_Q4_0:
    case ENG_DTYPE_Q4_1:
    case ENG_DTYPE_Q4_K:
    case ENG_DTYPE_Q6_K:
    case ENG_DTYPE_Q5_0:
    case ENG_DTYPE_Q5_1:
    case ENG_DTYPE_Q2_K:
    case ENG_DTYPE_Q3_K:
    case ENG_DTYPE_Q5_K:
        return true;
    default:
        return false;
    }
}

bool eng_dtype_is_quantized(eng_dtype_t type)
{
    return eng_dtype_valid(type) && dtype_table[type].block_size > 1;
}

int64_t eng_dtype_block_size(eng_dtype_t type)
{
    return eng_dtype_valid(type) ? dtype_table[type].block_size : 0;
}

size_t eng_dtype_block_bytes(eng_dtype_t type)
{
    return eng_dtype_valid(type) ? dtype_table[type].block_bytes : 0;
}

pd_status_t eng_dtype_row_bytes(eng_dtype_t type, int64_t n, size_t *bytes_p)
{
    size_t bytes;

    if (!eng_dtype_valid(type) || n < 0 || n % dtype_table[type].block_size != 0)
        return PD_ERR_INVAL;
    if ((uint64_t)n > SIZE_MAX)
        return PD_ERR_OVERFLOW;
    if (pd_mul_size((size_t)(n / dtype_table[type].block_size), dtype_table[type].block_bytes,
                    &bytes) != PD_OK)
        return PD_ERR_OVERFLOW;
    *bytes_p = bytes;
    return PD_OK;
}

/* ---- scalar conversions ---- */

/* The scalar conversions are the kernels' (one implementation, round to nearest even). */
float eng_f16_to_f32(uint16_t h) { return kcpu_f16_to_f32(h); }
uint16_t eng_f32_to_f16(float f) { return kcpu_f32_to_f16(f); }
float eng_bf16_to_f32(uint16_t h) { return kcpu_bf16_to_f32(h); }
uint16_t eng_f32_to_bf16(float f) { return kcpu_f32_to_bf16(f); }

void eng_f32_to_f16_row(const float *src, uint16_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = eng_f32_to_f16(src[i]);
}

void eng_f32_to_bf16_row(const float *src, uint16_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = eng_f32_to_bf16(src[i]);
}

/* ---- dequantization (one function per type, ggml's reference formulas) ---- */

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static void dequant_q4_0(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 18, y += 32) {
        const float d = eng_f16_to_f32(rd16(src));
        const uint8_t *qs = src + 2;
        for (int j = 0; j < 16; j++) {
            const int x0 = (qs[j] & 0x0f) - 8;
            const int x1 = (qs[j] >> 4) - 8;
            y[j] = (float)x0 * d;
            y[j + 16] = (float)x1 * d;
        }
    }
}

static void dequant_q4_1(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 20, y += 32) {
        const float d = eng_f16_to_f32(rd16(src));
        const float m = eng_f16_to_f32(rd16(src + 2));
        const uint8_t *qs = src + 4;
        for (int j = 0; j < 16; j++) {
            const int x0 = qs[j] & 0x0f;
            const int x1 = qs[j] >> 4;
            y[j] = (float)x0 * d + m;
            y[j + 16] = (float)x1 * d + m;
        }
    }
}

static void dequant_q8_0(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 34, y += 32) {
        const float d = eng_f16_to_f32(rd16(src));
        const int8_t *qs = (const int8_t *)(src + 2);
        for (int j = 0; j < 32; j++)
            y[j] = (float)qs[j] * d;
    }
}

/* The 12 scale bytes of Q4_K/Q5_K hold eight 6-bit scales and eight 6-bit mins. */
static inline void k4_scale_min(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void dequant_q4_k(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 144) {
        const float d = eng_f16_to_f32(rd16(src));
        const float dmin = eng_f16_to_f32(rd16(src + 2));
        const uint8_t *scales = src + 4;
        const uint8_t *q = src + 16;
        int is = 0;
        for (int j = 0; j < ENG_QK_K; j += 64, q += 32, is += 2) {
            uint8_t sc, m;
            k4_scale_min(is, scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            k4_scale_min(is + 1, scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)(q[l] & 0xf) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

static void dequant_q6_k(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 210) {
        const uint8_t *ql = src;
        const uint8_t *qh = src + 128;
        const int8_t *sc = (const int8_t *)(src + 192);
        const float d = eng_f16_to_f32(rd16(src + 208));
        for (int n = 0; n < ENG_QK_K; n += 128) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = (int8_t)((ql[l] & 0xf) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = (int8_t)((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = (int8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

static void dequant_q5_0(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 22, y += 32) {
        const float d = eng_f16_to_f32(rd16(src));
        uint32_t qh;
        memcpy(&qh, src + 2, 4);
        const uint8_t *qs = src + 6;
        for (int j = 0; j < 16; j++) {
            const uint8_t xh0 = (uint8_t)(((qh >> j) << 4) & 0x10);
            const uint8_t xh1 = (uint8_t)((qh >> (j + 12)) & 0x10);
            const int x0 = ((qs[j] & 0x0f) | xh0) - 16;
            const int x1 = ((qs[j] >> 4) | xh1) - 16;
            y[j] = (float)x0 * d;
            y[j + 16] = (float)x1 * d;
        }
    }
}

static void dequant_q5_1(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 24, y += 32) {
        const float d = eng_f16_to_f32(rd16(src));
        const float m = eng_f16_to_f32(rd16(src + 2));
        uint32_t qh;
        memcpy(&qh, src + 4, 4);
        const uint8_t *qs = src + 8;
        for (int j = 0; j < 16; j++) {
            const uint8_t xh0 = (uint8_t)(((qh >> j) << 4) & 0x10);
            const uint8_t xh1 = (uint8_t)((qh >> (j + 12)) & 0x10);
            const int x0 = (qs[j] & 0x0f) | xh0;
            const int x1 = (qs[j] >> 4) | xh1;
            y[j] = (float)x0 * d + m;
            y[j + 16] = (float)x1 * d + m;
        }
    }
}

/* Q2_K: 16 scale bytes (4-bit scale, 4-bit min), 64 bytes of 2-bit quants, d, dmin. */
static void dequant_q2_k(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 84) {
        const uint8_t *scales = src;
        const uint8_t *q = src + 16;
        const float d = eng_f16_to_f32(rd16(src + 80));
        const float dmin = eng_f16_to_f32(rd16(src + 82));
        int is = 0;
        for (int n = 0; n < ENG_QK_K; n += 128, q += 32) {
            int shift = 0;
            for (int j = 0; j < 4; j++, shift += 2) {
                uint8_t sc = scales[is++];
                float dl = d * (float)(sc & 0xf), ml = dmin * (float)(sc >> 4);
                for (int l = 0; l < 16; l++)
                    *y++ = dl * (float)(int8_t)((q[l] >> shift) & 3) - ml;
                sc = scales[is++];
                dl = d * (float)(sc & 0xf);
                ml = dmin * (float)(sc >> 4);
                for (int l = 0; l < 16; l++)
                    *y++ = dl * (float)(int8_t)((q[l + 16] >> shift) & 3) - ml;
            }
        }
    }
}

/* Q3_K: 32 bytes of high bits, 64 of 2-bit quants, 12 bytes of 6-bit scales, d. */
static void dequant_q3_k(const uint8_t *src, float *y, int64_t nb)
{
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
    for (int64_t i = 0; i < nb; i++, src += 110) {
        const uint8_t *hm = src;
        const uint8_t *q = src + 32;
        const float d_all = eng_f16_to_f32(rd16(src + 108));
        uint32_t aux[4];
        int8_t scales[16];
        memcpy(aux, src + 96, 12);
        const uint32_t tmp = aux[2];
        aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
        aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
        aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
        aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
        memcpy(scales, aux, 16);
        int is = 0;
        uint8_t m = 1;
        for (int n = 0; n < ENG_QK_K; n += 128, q += 32) {
            int shift = 0;
            for (int j = 0; j < 4; j++, shift += 2, m = (uint8_t)(m << 1)) {
                float dl = d_all * (float)(scales[is++] - 32);
                for (int l = 0; l < 16; l++)
                    *y++ = dl * (float)((int8_t)((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
                dl = d_all * (float)(scales[is++] - 32);
                for (int l = 0; l < 16; l++)
                    *y++ = dl * (float)((int8_t)((q[l + 16] >> shift) & 3) -
                                        ((hm[l + 16] & m) ? 0 : 4));
            }
        }
    }
}

static void dequant_q5_k(const uint8_t *src, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, src += 176) {
        const float d = eng_f16_to_f32(rd16(src));
        const float dmin = eng_f16_to_f32(rd16(src + 2));
        const uint8_t *scales = src + 4;
        const uint8_t *qh = src + 16;
        const uint8_t *ql = src + 48;
        int is = 0;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < ENG_QK_K; j += 64, ql += 32, is += 2) {
            uint8_t sc, m;
            k4_scale_min(is, scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            k4_scale_min(is + 1, scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)((ql[l] & 0xf) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            u1 = (uint8_t)(u1 << 2);
            u2 = (uint8_t)(u2 << 2);
        }
    }
}

pd_status_t eng_dequant_row(eng_dtype_t type, const void *src, float *dst, int64_t n)
{
    const uint8_t *s = src;
    int64_t bs;

    if (!eng_dtype_can_dequant(type))
        return PD_ERR_UNSUPPORTED;
    bs = dtype_table[type].block_size;
    if (n < 0 || n % bs != 0)
        return PD_ERR_INVAL;
    switch (type) {
    case ENG_DTYPE_F32:
        memcpy(dst, src, (size_t)n * 4);
        break;
    case ENG_DTYPE_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = eng_f16_to_f32(rd16(s + 2 * i));
        break;
    case ENG_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = eng_bf16_to_f32(rd16(s + 2 * i));
        break;
    case ENG_DTYPE_Q4_0:
        dequant_q4_0(s, dst, n / bs);
        break;
    case ENG_DTYPE_Q4_1:
        dequant_q4_1(s, dst, n / bs);
        break;
    case ENG_DTYPE_Q8_0:
        dequant_q8_0(s, dst, n / bs);
        break;
    case ENG_DTYPE_Q4_K:
        dequant_q4_k(s, dst, n / bs);
        break;
    case ENG_DTYPE_Q6_K:
        dequant_q6_k(s, dst, n / bs);
        break;
    case ENG_DTYPE_Q5_0:
        dequant_q5_0(s, dst, n / bs);
        break;
    case ENG_DTYPE_Q5_1:
        dequant_q5_1(s, dst, n / bs);
        break;
    case ENG_DTYPE_Q2_K:
        dequant_q2_k(s, dst, n / bs);
        break;
    case ENG_DTYPE_Q3_K:
        dequant_q3_k(s, dst, n / bs);
        break;
    case ENG_DTYPE_Q5_K:
        dequant_q5_k(s, dst, n / bs);
        break;
    default:
        return PD_ERR_UNSUPPORTED;
    }
    return PD_OK;
}

pd_status_t eng_convert_row(eng_dtype_t src_type, const void *src, eng_dtype_t dst_type,
                            void *dst, int64_t n)
{
    enum { CHUNK = 4096 };
    float tmp[CHUNK];
    int64_t bs;

    if (dst_type != ENG_DTYPE_F32 && dst_type != ENG_DTYPE_F16 && dst_type != ENG_DTYPE_BF16)
        return PD_ERR_UNSUPPORTED;
    if (!eng_dtype_can_dequant(src_type))
        return PD_ERR_UNSUPPORTED;
    bs = dtype_table[src_type].block_size;
    if (n < 0 || n % bs != 0)
        return PD_ERR_INVAL;
    if (src_type == dst_type) {
        size_t bytes;
        pd_status_t st = eng_dtype_row_bytes(src_type, n, &bytes);
        if (st != PD_OK)
            return st;
        memcpy(dst, src, bytes);
        return PD_OK;
    }
    if (dst_type == ENG_DTYPE_F32)
        return eng_dequant_row(src_type, src, dst, n);
    /* CHUNK is a multiple of every block size (256), so chunks start on block bounds. */
    for (int64_t off = 0; off < n; off += CHUNK) {
        int64_t len = PD_MIN(n - off, (int64_t)CHUNK);
        size_t src_off = (size_t)(off / bs) * dtype_table[src_type].block_bytes;
        pd_status_t st = eng_dequant_row(src_type, (const uint8_t *)src + src_off, tmp, len);
        if (st != PD_OK)
            return st;
        if (dst_type == ENG_DTYPE_F16)
            eng_f32_to_f16_row(tmp, (uint16_t *)dst + off, (size_t)len);
        else
            eng_f32_to_bf16_row(tmp, (uint16_t *)dst + off, (size_t)len);
    }
    return PD_OK;
}
