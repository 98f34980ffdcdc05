/*
 * kcpu_ops.c - row-wise and element-wise ops on f32 activations: RMSNorm/LayerNorm
 * (with fused residual add), RoPE and its inv_freq table (HF's rope init functions),
 * activations, embedding lookup, softmax/log-softmax, argmax.
 *
 * Numerics follow Hugging Face in float32: norm statistics are accumulated in double
 * (closer to torch's pairwise f32 sums than a naive f32 loop), then applied in f32 in
 * HF's order ((x * r) * w).  RoPE angles are (float)pos * inv_freq in f32, like HF.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kcpu.h"
#include "kcpu_internal.h"
#include "pd_log.h"
#include "pd_util.h"

/* rows per pool chunk so that each chunk has ~16k elements of work */
static int64_t row_grain(int64_t D)
{
    return 16384 / (D > 0 ? D : 1) + 1;
}

/* ---- normalisation ---- */

typedef struct {
    float *residual;
    const float *x, *w, *b;
    float *out;
    int64_t D;
    float eps;
    bool layer;
} norm_args_t;

static void norm_row(const norm_args_t *a, int64_t t)
{
    const int64_t D = a->D;
    const float *x = a->x + t * D;
    float *out = a->out + t * D;
    const float *src = x;

    if (a->residual) {
        float *r = a->residual + t * D;
        for (int64_t i = 0; i < D; i++)
            r[i] += x[i];
        src = r;
    }
    if (!a->layer) {
        double ss = 0.0;
        for (int64_t i = 0; i < D; i++)
            ss += (double)src[i] * src[i];
        float r = 1.0f / sqrtf((float)(ss / (double)D) + a->eps);
        for (int64_t i = 0; i < D; i++)
            out[i] = (src[i] * r) * a->w[i];
    } else {
        double s = 0.0, ss = 0.0;
        for (int64_t i = 0; i < D; i++)
            s += src[i];
        float mean = (float)(s / (double)D);
        for (int64_t i = 0; i < D; i++) {
            double d = (double)src[i] - mean;
            ss += d * d;
        }
        float r = 1.0f / sqrtf((float)(ss / (double)D) + a->eps);
        for (int64_t i = 0; i < D; i++) {
            float v = ((src[i] - mean) * r) * a->w[i];
            out[i] = a->b ? v + a->b[i] : v;
        }
    }
}

static void norm_task(void *arg, int64_t begin, int64_t end, int tid)
{
    for (int64_t t = begin; t < end; t++)
        norm_row(arg, t);
}

static void norm_run(kcpu_pool_t *pool, norm_args_t *a, int64_t T)
{
    kcpu_pool_run(pool, T, row_grain(a->D), norm_task, a);
}

void kcpu_rmsnorm(kcpu_pool_t *pool, const float *x, const float *w, float *out, int64_t T,
                  int64_t D, float eps)
{
    norm_args_t a = { NULL, x, w, NULL, out, D, eps, false };
    norm_run(pool, &a, T);
}

void kcpu_add_rmsnorm(kcpu_pool_t *pool, float *residual, const float *x, const float *w,
                      float *out, int64_t T, int64_t D, float eps)
{
    norm_args_t a = { residual, x, w, NULL, out, D, eps, false };
    norm_run(pool, &a, T);
}

void kcpu_layernorm(kcpu_pool_t *pool, const float *x, const float *w, const float *b,
                    float *out, int64_t T, int64_t D, float eps)
{
    norm_args_t a = { NULL, x, w, b, out, D, eps, true };
    norm_run(pool, &a, T);
}

void kcpu_add_layernorm(kcpu_pool_t *pool, float *residual, const float *x, const float *w,
                        const float *b, float *out, int64_t T, int64_t D, float eps)
{
    norm_args_t a = { residual, x, w, b, out, D, eps, true };
    norm_run(pool, &a, T);
}

/* ---- RoPE ---- */

pd_status_t kcpu_rope_inv_freq(float theta, int rotary_dim, const kcpu_rope_scaling_t *sc,
                               int64_t seq_len, float *inv_freq, float *attn_factor_p)
{
    const int half = rotary_dim / 2;
    float base = theta;
    float attn_factor = 1.0f;
    kcpu_rope_scaling_type_t type = sc ? sc->type : KCPU_ROPE_SCALING_NONE;

    if (rotary_dim <= 0 || rotary_dim % 2 != 0 || !(theta > 0.0f) || inv_freq == NULL) {
        PD_LOG_ERR("kcpu_rope_inv_freq: bad rotary_dim %d or theta %g", rotary_dim, (double)theta);
        return PD_ERR_INVAL;
    }
    if (type != KCPU_ROPE_SCALING_NONE && !(sc->factor > 0.0f)) {
        PD_LOG_ERR("kcpu_rope_inv_freq: scaling factor must be > 0");
        return PD_ERR_INVAL;
    }
    if (type == KCPU_ROPE_SCALING_DYNAMIC && sc->original_max_position > 0 &&
        seq_len > sc->original_max_position) {
        /* HF _compute_dynamic_ntk_parameters */
        double f = (double)sc->factor * (double)seq_len / (double)sc->original_max_position -
                   ((double)sc->factor - 1.0);
        base = (float)((double)theta * pow(f, (double)rotary_dim / (double)(rotary_dim - 2)));
    }
    for (int i = 0; i < half; i++) {
        /* torch: 1.0 / (base ** (arange(0, dim, 2).float() / dim)) in f32 */
        float e = (float)(2 * i) / (float)rotary_dim;
        inv_freq[i] = 1.0f / powf(base, e);
    }
    switch (type) {
    case KCPU_ROPE_SCALING_NONE:
    case KCPU_ROPE_SCALING_DYNAMIC:
        break;
    case KCPU_ROPE_SCALING_LINEAR:
        for (int i = 0; i < half; i++)
            inv_freq[i] /= sc->factor;
        break;
    case KCPU_ROPE_SCALING_LLAMA3: {
        if (sc->original_max_position <= 0 || !(sc->high_freq_factor > sc->low_freq_factor) ||
            !(sc->low_freq_factor > 0.0f)) {
            PD_LOG_ERR("kcpu_rope_inv_freq: llama3 scaling needs original_max_position and "
                       "high_freq_factor > low_freq_factor > 0");
            return PD_ERR_INVAL;
        }
        float old_ctx = (float)sc->original_max_position;
        float low_wl = old_ctx / sc->low_freq_factor;
        float high_wl = old_ctx / sc->high_freq_factor;
        for (int i = 0; i < half; i++) {
            float f = inv_freq[i];
            float wl = 2.0f * (float)M_PI / f;
            float g = wl > low_wl ? f / sc->factor : f;
            if (!(wl < high_wl) && !(wl > low_wl)) {
                float smooth = (old_ctx / wl - sc->low_freq_factor) /
                               (sc->high_freq_factor - sc->low_freq_factor);
                g = (1.0f - smooth) * g / sc->factor + smooth * g;
            }
            inv_freq[i] = g;
        }
        break;
    }
    case KCPU_ROPE_SCALING_YARN: {
        /* HF _compute_yarn_parameters (without truncate=false variants) */
        if (sc->original_max_position <= 0) {
            PD_LOG_ERR("kcpu_rope_inv_freq: yarn scaling needs original_max_position");
            return PD_ERR_INVAL;
        }
        double beta_fast = sc->beta_fast > 0 ? sc->beta_fast : 32.0;
        double beta_slow = sc->beta_slow > 0 ? sc->beta_slow : 1.0;
        double dim = rotary_dim, omp = (double)sc->original_max_position;
#define YARN_DIM(rot) ((dim * log(omp / ((rot) * 2.0 * M_PI))) / (2.0 * log((double)base)))
        double low = floor(YARN_DIM(beta_fast)), high = ceil(YARN_DIM(beta_slow));
#undef YARN_DIM
        if (low < 0) low = 0;
        if (high > dim - 1) high = dim - 1;
        if (low == high) high += 0.001;
        for (int i = 0; i < half; i++) {
            float pos_freq = powf(base, (float)(2 * i) / (float)rotary_dim);
            float interp = 1.0f / (sc->factor * pos_freq);
            float extrap = 1.0f / pos_freq;
            float ramp = (float)(((double)i - low) / (high - low));
            ramp = ramp < 0 ? 0 : (ramp > 1 ? 1 : ramp);
            float extrap_factor = 1.0f - ramp;
            inv_freq[i] = interp * (1.0f - extrap_factor) + extrap * extrap_factor;
        }
#define YARN_MSCALE(s, m) ((s) <= 1.0 ? 1.0 : 0.1 * (m) * log(s) + 1.0)
        if (sc->attention_factor > 0)
            attn_factor = sc->attention_factor;
        else if (sc->mscale > 0 && sc->mscale_all_dim > 0)
            attn_factor = (float)(YARN_MSCALE(sc->factor, sc->mscale) /
                                  YARN_MSCALE(sc->factor, sc->mscale_all_dim));
        else
            attn_factor = (float)YARN_MSCALE(sc->factor, 1.0);
#undef YARN_MSCALE
        break;
    }
    default:
        PD_LOG_ERR("kcpu_rope_inv_freq: unknown scaling type %d", (int)type);
        return PD_ERR_UNSUPPORTED;
    }
    if (attn_factor_p)
        *attn_factor_p = attn_factor;
    return PD_OK;
}

#define ROPE_MAX_HALF 512

typedef struct {
    float *q, *k;
    int64_t q_stride, k_stride;
    const int32_t *pos;
    int n_heads, n_kv_heads, head_dim, rotary_dim;
    const float *inv_freq;
    float attn_factor;
    kcpu_rope_style_t style;
} rope_args_t;

static void rope_head(float *x, const float *c, const float *s, int half, kcpu_rope_style_t style)
{
    if (style == KCPU_ROPE_NEOX) {
        for (int i = 0; i < half; i++) {
            float x0 = x[i], x1 = x[i + half];
            x[i] = x0 * c[i] - x1 * s[i];
            x[i + half] = x1 * c[i] + x0 * s[i];
        }
    } else {
        for (int i = 0; i < half; i++) {
            float x0 = x[2 * i], x1 = x[2 * i + 1];
            x[2 * i] = x0 * c[i] - x1 * s[i];
            x[2 * i + 1] = x1 * c[i] + x0 * s[i];
        }
    }
}

static void rope_task(void *arg, int64_t begin, int64_t end, int tid)
{
    const rope_args_t *a = arg;
    const int half = a->rotary_dim / 2;
    float c[ROPE_MAX_HALF], s[ROPE_MAX_HALF];

    for (int64_t t = begin; t < end; t++) {
        float p = (float)a->pos[t];
        for (int i = 0; i < half; i++) {
            float ang = p * a->inv_freq[i];
            c[i] = cosf(ang) * a->attn_factor;
            s[i] = sinf(ang) * a->attn_factor;
        }
        if (a->q)
            for (int h = 0; h < a->n_heads; h++)
                rope_head(a->q + t * a->q_stride + (int64_t)h * a->head_dim, c, s, half, a->style);
        if (a->k)
            for (int h = 0; h < a->n_kv_heads; h++)
                rope_head(a->k + t * a->k_stride + (int64_t)h * a->head_dim, c, s, half, a->style);
    }
}

pd_status_t kcpu_rope(kcpu_pool_t *pool, float *q, int64_t q_stride, float *k, int64_t k_stride,
                      const int32_t *pos, int64_t T, int n_heads, int n_kv_heads, int head_dim,
                      int rotary_dim, const float *inv_freq, float attn_factor,
                      kcpu_rope_style_t style)
{
    if (T < 0 || head_dim <= 0 || rotary_dim <= 0 || rotary_dim % 2 != 0 || rotary_dim > head_dim ||
        rotary_dim / 2 > ROPE_MAX_HALF || (T > 0 && (pos == NULL || inv_freq == NULL)) ||
        (q && (n_heads <= 0 || q_stride < (int64_t)n_heads * head_dim)) ||
        (k && (n_kv_heads <= 0 || k_stride < (int64_t)n_kv_heads * head_dim)) ||
        (style != KCPU_ROPE_NEOX && style != KCPU_ROPE_GPTJ)) {
        PD_LOG_ERR("kcpu_rope: bad shape (T=%lld heads=%d/%d head_dim=%d rotary_dim=%d)",
                   (long long)T, n_heads, n_kv_heads, head_dim, rotary_dim);
        return PD_ERR_INVAL;
    }
    rope_args_t a = { q, k, q_stride, k_stride, pos, n_heads, n_kv_heads, head_dim, rotary_dim,
                      inv_freq, attn_factor, style };
    kcpu_pool_run(pool, T, 4, rope_task, &a);
    return PD_OK;
}

/* ---- activations ---- */

static inline float silu1(float x)
{
    return x / (1.0f + expf(-x));
}

static inline float gelu1(float x, bool approx)
{
    if (approx) {
        const float k = 0.7978845608028654f; /* sqrt(2/pi) */
        return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
    }
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

typedef struct {
    const float *gate, *up;
    int64_t gate_stride, up_stride;
    float *out;
    int64_t I;
    int act; /* 0 silu, 1 gelu erf, 2 gelu tanh */
} glu_args_t;

static void glu_task(void *arg, int64_t begin, int64_t end, int tid)
{
    const glu_args_t *a = arg;
    for (int64_t t = begin; t < end; t++) {
        const float *g = a->gate + t * a->gate_stride;
        const float *u = a->up + t * a->up_stride;
        float *o = a->out + t * a->I;
        if (a->act == 0)
            for (int64_t i = 0; i < a->I; i++)
                o[i] = silu1(g[i]) * u[i];
        else
            for (int64_t i = 0; i < a->I; i++)
                o[i] = gelu1(g[i], a->act == 2) * u[i];
    }
}

void kcpu_silu_and_mul(kcpu_pool_t *pool, const float *gate, int64_t gate_stride,
                       const float *up, int64_t up_stride, float *out, int64_t T, int64_t I)
{
    glu_args_t a = { gate, up, gate_stride, up_stride, out, I, 0 };
    kcpu_pool_run(pool, T, row_grain(I), glu_task, &a);
}

void kcpu_gelu_and_mul(kcpu_pool_t *pool, const float *gate, int64_t gate_stride,
                       const float *up, int64_t up_stride, float *out, int64_t T, int64_t I,
                       bool approx_tanh)
{
    glu_args_t a = { gate, up, gate_stride, up_stride, out, I, approx_tanh ? 2 : 1 };
    kcpu_pool_run(pool, T, row_grain(I), glu_task, &a);
}

void kcpu_gelu(const float *x, float *out, int64_t n, bool approx_tanh)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = gelu1(x[i], approx_tanh);
}

void kcpu_silu(const float *x, float *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = silu1(x[i]);
}

void kcpu_relu(const float *x, float *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void kcpu_add(const float *a, const float *b, float *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

void kcpu_scale(const float *x, float s, float *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * s;
}

void kcpu_add_bias(float *out, const float *bias, int64_t T, int64_t N)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < N; i++)
            out[t * N + i] += bias[i];
}

/* ---- embedding ---- */

pd_status_t kcpu_embedding(const void *table, kcpu_dtype_t type, int64_t vocab, int64_t D,
                           const int32_t *ids, int64_t T, float *out)
{
    size_t row_bytes;
    pd_status_t st;

    if (!kcpu_dtype_supported(type)) {
        PD_LOG_ERR("kcpu_embedding: type %s not supported", kcpu_dtype_name(type));
        return PD_ERR_UNSUPPORTED;
    }
    if (vocab <= 0 || D <= 0 || T < 0 || table == NULL || (T > 0 && (ids == NULL || out == NULL))) {
        PD_LOG_ERR("kcpu_embedding: bad shape vocab=%lld D=%lld T=%lld", (long long)vocab,
                   (long long)D, (long long)T);
        return PD_ERR_INVAL;
    }
    st = kcpu_dtype_row_bytes(type, D, &row_bytes);
    if (st != PD_OK) {
        PD_LOG_ERR("kcpu_embedding: D=%lld not a multiple of the %s block", (long long)D,
                   kcpu_dtype_name(type));
        return st;
    }
    for (int64_t t = 0; t < T; t++) {
        if (ids[t] < 0 || ids[t] >= vocab) {
            PD_LOG_ERR("kcpu_embedding: token id %d outside [0, %lld)", ids[t], (long long)vocab);
            return PD_ERR_RANGE;
        }
    }
    for (int64_t t = 0; t < T; t++)
        kcpu_dequant_row(type, (const uint8_t *)table + (size_t)ids[t] * row_bytes, out + t * D, D);
    return PD_OK;
}

/* ---- softmax / argmax ---- */

static float row_max(const float *x, int64_t n)
{
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        if (x[i] > m)
            m = x[i];
    return m;
}

void kcpu_softmax(const float *x, float *out, int64_t T, int64_t n)
{
    for (int64_t t = 0; t < T; t++) {
        const float *r = x + t * n;
        float *o = out + t * n;
        float m = row_max(r, n);
        double sum = 0.0;
        if (m == -INFINITY) { /* all masked: uniform is undefined; give zeros */
            for (int64_t i = 0; i < n; i++)
                o[i] = 0.0f;
            continue;
        }
        for (int64_t i = 0; i < n; i++) {
            o[i] = expf(r[i] - m);
            sum += o[i];
        }
        float inv = (float)(1.0 / sum);
        for (int64_t i = 0; i < n; i++)
            o[i] *= inv;
    }
}

void kcpu_log_softmax(const float *x, float *out, int64_t T, int64_t n)
{
    for (int64_t t = 0; t < T; t++) {
        const float *r = x + t * n;
        float *o = out + t * n;
        float m = row_max(r, n);
        double sum = 0.0;
        if (m == -INFINITY) { /* all masked: every log-probability is -inf */
            for (int64_t i = 0; i < n; i++)
                o[i] = -INFINITY;
            continue;
        }
        for (int64_t i = 0; i < n; i++)
            sum += expf(r[i] - m);
        float lse = m + (float)log(sum);
        for (int64_t i = 0; i < n; i++)
            o[i] = r[i] - lse;
    }
}

void kcpu_argmax(const float *x, int64_t T, int64_t n, int32_t *idx)
{
    for (int64_t t = 0; t < T; t++) {
        const float *r = x + t * n;
        int64_t best = 0;
        float bv = NAN;
        for (int64_t i = 0; i < n; i++) {
            if (isnan(r[i]))
                continue;
            if (isnan(bv) || r[i] > bv) {
                bv = r[i];
                best = i;
            }
        }
        idx[t] = (int32_t)best;
    }
}
