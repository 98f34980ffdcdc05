/*
 * kcpu_dtype.c - storage types of the CPU kernels: sizes, f16/bf16 conversions, and the
 * reference (de)quantization of Q8_0/Q4_0/Q4_1 rows (ggml's block layouts and rounding,
 * so GGUF tensors are read bit-exactly).  Also the run-time SIMD switch.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kcpu.h"
#include "kcpu_internal.h"
#include "pd_log.h"
#include "pd_util.h"

_Static_assert(sizeof(kcpu_block_q8_0_t) == 34, "q8_0 block");
_Static_assert(sizeof(kcpu_block_q4_0_t) == 18, "q4_0 block");
_Static_assert(sizeof(kcpu_block_q4_1_t) == 20, "q4_1 block");

const char *kcpu_dtype_name(kcpu_dtype_t type)
{
    switch (type) {
    case KCPU_DTYPE_F32: return "f32";
    case KCPU_DTYPE_F16: return "f16";
    case KCPU_DTYPE_BF16: return "bf16";
    case KCPU_DTYPE_Q8_0: return "q8_0";
    case KCPU_DTYPE_Q4_0: return "q4_0";
    case KCPU_DTYPE_Q4_1: return "q4_1";
    case KCPU_DTYPE_Q4_K: return "q4_k";
    case KCPU_DTYPE_Q6_K: return "q6_k";
    }
    return "unknown";
}

bool kcpu_dtype_supported(kcpu_dtype_t type)
{
    switch (type) {
    case KCPU_DTYPE_F32: case KCPU_DTYPE_F16: case KCPU_DTYPE_BF16:
    case KCPU_DTYPE_Q8_0: case KCPU_DTYPE_Q4_0: case KCPU_DTYPE_Q4_1:
    case KCPU_DTYPE_Q4_K: case KCPU_DTYPE_Q6_K:
        return true;
    default:
        return false;
    }
}

int64_t kcpu_dtype_block_size(kcpu_dtype_t type)
{
    switch (type) {
    case KCPU_DTYPE_F32: case KCPU_DTYPE_F16: case KCPU_DTYPE_BF16: return 1;
    case KCPU_DTYPE_Q8_0: case KCPU_DTYPE_Q4_0: case KCPU_DTYPE_Q4_1: return KCPU_QK;
    case KCPU_DTYPE_Q4_K: case KCPU_DTYPE_Q6_K: return 256;
    }
    return 0;
}

size_t kcpu_dtype_block_bytes(kcpu_dtype_t type)
{
    switch (type) {
    case KCPU_DTYPE_F32: return 4;
    case KCPU_DTYPE_F16: case KCPU_DTYPE_BF16: return 2;
    case KCPU_DTYPE_Q8_0: return sizeof(kcpu_block_q8_0_t);
    case KCPU_DTYPE_Q4_0: return sizeof(kcpu_block_q4_0_t);
    case KCPU_DTYPE_Q4_1: return sizeof(kcpu_block_q4_1_t);
    case KCPU_DTYPE_Q4_K: return 144;
    case KCPU_DTYPE_Q6_K: return 210;
    }
    return 0;
}

pd_status_t kcpu_dtype_row_bytes(kcpu_dtype_t type, int64_t n, size_t *bytes_p)
{
    int64_t bs = kcpu_dtype_block_size(type);
    size_t bytes;

    if (bs == 0)
        return PD_ERR_UNSUPPORTED;
    if (n < 0 || n % bs != 0)
        return PD_ERR_INVAL;
    if (pd_mul_size((size_t)(n / bs), kcpu_dtype_block_bytes(type), &bytes) != PD_OK)
        return PD_ERR_OVERFLOW;
    *bytes_p = bytes;
    return PD_OK;
}

/* ---- scalar conversions ---- */

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float kcpu_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;

    if (exp == 0x1f) /* inf / nan */
        return bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24 is exact in f32 */
        float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t kcpu_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t abs = u & 0x7fffffffu;

    if (abs >= 0x7f800000u) /* inf or nan (keep a quiet nan) */
        return (uint16_t)(sign | 0x7c00 | (abs > 0x7f800000u ? 0x200 : 0));
    if (abs >= 0x477ff000u) /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00);
    if (abs < 0x38800000u) {
        /* result is subnormal (or zero): round abs * 2^24 to nearest even integer */
        float a = bits_f32(abs) * 16777216.0f; /* exact: power-of-two scaling */
        float r = nearbyintf(a);               /* default rounding mode: nearest even */
        return (uint16_t)(sign | (uint32_t)r);
    }
    /* normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even */
    uint32_t h = ((abs >> 13) - (112u << 10));
    uint32_t rem = abs & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

float kcpu_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t kcpu_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);

    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 64); /* quiet nan */
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

/* ---- rows ---- */

void kcpu_dequant_row_scalar(kcpu_dtype_t type, const void *src, float *dst, int64_t n)
{
    switch (type) {
    case KCPU_DTYPE_F32:
        memcpy(dst, src, (size_t)n * 4);
        break;
    case KCPU_DTYPE_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = kcpu_f16_to_f32(s[i]);
        break;
    }
    case KCPU_DTYPE_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = kcpu_bf16_to_f32(s[i]);
        break;
    }
    case KCPU_DTYPE_Q8_0: {
        const kcpu_block_q8_0_t *b = src;
        for (int64_t i = 0; i < n / KCPU_QK; i++) {
            float d = kcpu_f16_to_f32(b[i].d);
            for (int j = 0; j < KCPU_QK; j++)
                dst[i * KCPU_QK + j] = (float)b[i].qs[j] * d;
        }
        break;
    }
    case KCPU_DTYPE_Q4_0: {
        const kcpu_block_q4_0_t *b = src;
        for (int64_t i = 0; i < n / KCPU_QK; i++) {
            float d = kcpu_f16_to_f32(b[i].d);
            for (int j = 0; j < KCPU_QK / 2; j++) {
                dst[i * KCPU_QK + j] = (float)((b[i].qs[j] & 15) - 8) * d;
                dst[i * KCPU_QK + j + 16] = (float)((b[i].qs[j] >> 4) - 8) * d;
            }
        }
        break;
    }
    case KCPU_DTYPE_Q4_1: {
        const kcpu_block_q4_1_t *b = src;
        for (int64_t i = 0; i < n / KCPU_QK; i++) {
            float d = kcpu_f16_to_f32(b[i].d);
            float m = kcpu_f16_to_f32(b[i].m);
            for (int j = 0; j < KCPU_QK / 2; j++) {
                dst[i * KCPU_QK + j] = (float)(b[i].qs[j] & 15) * d + m;
                dst[i * KCPU_QK + j + 16] = (float)(b[i].qs[j] >> 4) * d + m;
            }
        }
        break;
    }
    case KCPU_DTYPE_Q4_K: {
        /* 256 = 4 x 64; each 64 uses two 6-bit (scale, min) pairs packed in 12 bytes */
        const uint8_t *b = src;
        for (int64_t i = 0; i < n / 256; i++, b += 144) {
            uint16_t dh, mh;
            memcpy(&dh, b, 2);
            memcpy(&mh, b + 2, 2);
            const float d = kcpu_f16_to_f32(dh), dmin = kcpu_f16_to_f32(mh);
            const uint8_t *sc = b + 4, *q = b + 16;
            float *y = dst + i * 256;
            for (int j = 0; j < 8; j++) {
                int s6, m6;
                if (j < 4) {
                    s6 = sc[j] & 63;
                    m6 = sc[j + 4] & 63;
                } else {
                    s6 = (sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4);
                    m6 = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
                }
                const float d1 = d * (float)s6, m1 = dmin * (float)m6;
                const uint8_t *qq = q + (j / 2) * 32;
                for (int l = 0; l < 32; l++)
                    y[j * 32 + l] = d1 * (float)((j & 1) ? (qq[l] >> 4) : (qq[l] & 15)) - m1;
            }
        }
        break;
    }
    case KCPU_DTYPE_Q6_K: {
        /* ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16] (one per 16), f16 d */
        const uint8_t *b = src;
        for (int64_t i = 0; i < n / 256; i++, b += 210) {
            uint16_t dh;
            memcpy(&dh, b + 208, 2);
            const float d = kcpu_f16_to_f32(dh);
            const int8_t *sc = (const int8_t *)(b + 192);
            float *y = dst + i * 256;
            for (int h = 0; h < 2; h++) {
                const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
                const int8_t *s = sc + 8 * h;
                float *yy = y + 128 * h;
                for (int l = 0; l < 32; l++) {
                    int is = l / 16;
                    int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    yy[l] = d * (float)s[is] * (float)q1;
                    yy[l + 32] = d * (float)s[is + 2] * (float)q2;
                    yy[l + 64] = d * (float)s[is + 4] * (float)q3;
                    yy[l + 96] = d * (float)s[is + 6] * (float)q4;
                }
            }
        }
        break;
    }
    default:
        /* precondition violated: make it visible rather than silently wrong */
        for (int64_t i = 0; i < n; i++)
            dst[i] = NAN;
        break;
    }
}

void kcpu_dequant_row(kcpu_dtype_t type, const void *src, float *dst, int64_t n)
{
#if KCPU_HAVE_X86
    if (kcpu_simd_enabled() && kcpu_dequant_row_avx2(type, src, dst, n))
        return;
#endif
    kcpu_dequant_row_scalar(type, src, dst, n);
}

pd_status_t kcpu_quant_row(kcpu_dtype_t type, const float *src, void *dst, int64_t n)
{
    if (type == KCPU_DTYPE_Q4_K || type == KCPU_DTYPE_Q6_K)
        return PD_ERR_UNSUPPORTED; /* read-only types (GGUF files) */
    if (n < 0 || (kcpu_dtype_block_size(type) > 1 && n % KCPU_QK != 0) || !kcpu_dtype_supported(type))
        return n < 0 ? PD_ERR_INVAL : (kcpu_dtype_supported(type) ? PD_ERR_INVAL : PD_ERR_UNSUPPORTED);
    switch (type) {
    case KCPU_DTYPE_F32:
        memcpy(dst, src, (size_t)n * 4);
        break;
    case KCPU_DTYPE_F16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++)
            d[i] = kcpu_f32_to_f16(src[i]);
        break;
    }
    case KCPU_DTYPE_BF16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++)
            d[i] = kcpu_f32_to_bf16(src[i]);
        break;
    }
    case KCPU_DTYPE_Q8_0: {
        kcpu_block_q8_0_t *b = dst;
        for (int64_t i = 0; i < n / KCPU_QK; i++) {
            const float *x = src + i * KCPU_QK;
            float amax = 0.0f;
            for (int j = 0; j < KCPU_QK; j++)
                amax = fmaxf(amax, fabsf(x[j]));
            float d = amax / 127.0f;
            float id = d != 0.0f ? 1.0f / d : 0.0f;
            b[i].d = kcpu_f32_to_f16(d);
            for (int j = 0; j < KCPU_QK; j++)
                b[i].qs[j] = (int8_t)roundf(x[j] * id);
        }
        break;
    }
    case KCPU_DTYPE_Q4_0: {
        kcpu_block_q4_0_t *b = dst;
        for (int64_t i = 0; i < n / KCPU_QK; i++) {
            const float *x = src + i * KCPU_QK;
            float amax = 0.0f, max = 0.0f;
            for (int j = 0; j < KCPU_QK; j++) {
                if (amax < fabsf(x[j])) {
                    amax = fabsf(x[j]);
                    max = x[j];
                }
            }
            float d = max / -8.0f;
            float id = d != 0.0f ? 1.0f / d : 0.0f;
            b[i].d = kcpu_f32_to_f16(d);
            for (int j = 0; j < KCPU_QK / 2; j++) {
                int q0 = (int)(int8_t)(x[j] * id + 8.5f);
                int q1 = (int)(int8_t)(x[j + 16] * id + 8.5f);
                q0 = q0 > 15 ? 15 : q0;
                q1 = q1 > 15 ? 15 : q1;
                b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
            }
        }
        break;
    }
    case KCPU_DTYPE_Q4_1: {
        kcpu_block_q4_1_t *b = dst;
        for (int64_t i = 0; i < n / KCPU_QK; i++) {
            const float *x = src + i * KCPU_QK;
            float min = INFINITY, max = -INFINITY;
            for (int j = 0; j < KCPU_QK; j++) {
                min = fminf(min, x[j]);
                max = fmaxf(max, x[j]);
            }
            float d = (max - min) / 15.0f;
            float id = d != 0.0f ? 1.0f / d : 0.0f;
            b[i].d = kcpu_f32_to_f16(d);
            b[i].m = kcpu_f32_to_f16(min);
            for (int j = 0; j < KCPU_QK / 2; j++) {
                int q0 = (int)(int8_t)((x[j] - min) * id + 0.5f);
                int q1 = (int)(int8_t)((x[j + 16] - min) * id + 0.5f);
                q0 = q0 > 15 ? 15 : q0;
                q1 = q1 > 15 ? 15 : q1;
                b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
            }
        }
        break;
    }
    default:
        return PD_ERR_UNSUPPORTED;
    }
    return PD_OK;
}

/* ---- SIMD switch ---- */

static int simd_state_g = -1; /* -1 unknown, 0 off, 1 on */

bool kcpu_simd_enabled(void)
/* clang 14 does not know "f16c" in __builtin_cpu_supports; every x86 CPU with AVX2 has F16C */
#if defined(__clang__)
#define HAS_F16C() 1
#else
#define HAS_F16C() __builtin_cpu_supports("f16c")
#endif

{
    int s = __atomic_load_n(&simd_state_g, __ATOMIC_RELAXED);
    if (s < 0) {
        s = 0;
#if KCPU_HAVE_X86
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
            HAS_F16C() && getenv("PD_KCPU_NO_SIMD") == NULL)
            s = 1;
#endif
        __atomic_store_n(&simd_state_g, s, __ATOMIC_RELAXED);
    }
    return s == 1;
}

void kcpu_set_simd(bool on)
{
    int s = 0;
#if KCPU_HAVE_X86
    __builtin_cpu_init();
    if (on && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        HAS_F16C())
        s = 1;
#endif
    __atomic_store_n(&simd_state_g, s, __ATOMIC_RELAXED);
}
