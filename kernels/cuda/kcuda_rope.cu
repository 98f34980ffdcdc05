/*
 * kcuda_rope.cu - rotary embedding in place on q and k (neox: pairs (i, i + rot/2);
 * gptj: pairs (2i, 2i + 1)) from the precomputed inv_freq table, angle = (float)pos *
 * inv_freq[i] in f32 like kcpu_rope.  One CTA per token; threads over (head, pair).
 * sincosf is the precise one: the build uses --use_fast_math, so call the IEEE path
 * explicitly for large angles (positions up to 128k).
 */
#include "kcuda_internal.cuh"

__device__ __forceinline__ void rope_pair(float *x, int i, int half, float c, float s, bool neox)
{
    int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    float x0 = x[a], x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x1 * c + x0 * s;
}

__global__ void rope_kernel(float *q, int64_t qs, float *k, int64_t ks, const int32_t *pos, int n_heads,
                            int n_kv_heads, int head_dim, int half, const float *inv_freq, float af, bool neox)
{
    const int64_t t = blockIdx.x;
    const float p = (float)pos[t];
    const int nh = (q ? n_heads : 0) + (k ? n_kv_heads : 0);
    for (int it = threadIdx.x; it < nh * half; it += blockDim.x) {
        int h = it / half, i = it % half;
        float s, c;
        /* the same f32 angle as the CPU, then an accurate sin/cos of it */
        float ang = p * inv_freq[i];
        double sd, cd;
        sincos((double)ang, &sd, &cd);
        s = (float)sd * af;
        c = (float)cd * af;
        float *x;
        if (q && h < n_heads)
            x = q + t * qs + (int64_t)h * head_dim;
        else
            x = k + t * ks + (int64_t)(h - (q ? n_heads : 0)) * head_dim;
        rope_pair(x, i, half, c, s, neox);
    }
}

extern "C" pd_status_t kcuda_rope(float *q, int64_t q_stride, float *k, int64_t k_stride, const int32_t *pos,
                                  int64_t T, int n_heads, int n_kv_heads, int head_dim, int rotary_dim,
                                  const float *inv_freq, float attn_factor, kcpu_rope_style_t style,
                                  kcuda_stream_t stream)
{
    if (T < 0 || T > INT32_MAX || head_dim <= 0 || rotary_dim <= 0 || rotary_dim % 2 != 0 ||
        rotary_dim > head_dim || (q && (n_heads <= 0 || q_stride < (int64_t)n_heads * head_dim)) ||
        (k && (n_kv_heads <= 0 || k_stride < (int64_t)n_kv_heads * head_dim)) ||
        (style != KCPU_ROPE_NEOX && style != KCPU_ROPE_GPTJ)) {
        PD_LOG_ERR("kcuda_rope: bad shape (T=%lld heads=%d/%d head_dim=%d rotary_dim=%d)", (long long)T, n_heads,
                   n_kv_heads, head_dim, rotary_dim);
        return PD_ERR_INVAL;
    }
    if (T == 0 || (q == NULL && k == NULL))
        return PD_OK;
    rope_kernel<<<(unsigned)T, 256, 0, stream>>>(q, q_stride, k, k_stride, pos, n_heads, n_kv_heads, head_dim,
                                                  rotary_dim / 2, inv_freq, attn_factor, style == KCPU_ROPE_NEOX);
    KCUDA_LAUNCHED("kcuda_rope");
}
