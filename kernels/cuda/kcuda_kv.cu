/*
 * kcuda_kv.cu - the paged KV cache: write K/V rows of T tokens into their slots, and
 * copy whole blocks (copy-on-write).  Layout and strides from kcpu_kv_layout_t (F32, F16,
 * or fp8 e4m3 / e5m2 with per-layer scales: stored = saturate(x / scale)).  A slot or
 * block id outside the cache skips the item and sets an error bit.
 */
#include "kcuda_internal.cuh"
#include "kcuda_vec.cuh"

#include <cuda_fp8.h>

/* kc_from_f32 (kcuda_internal.cuh) for the fp8 cache types too: the fp8 constructors
 * round to nearest even and saturate to the finite range */
template <> __device__ __forceinline__ __nv_fp8_e4m3 kc_from_f32<__nv_fp8_e4m3>(float v) { return __nv_fp8_e4m3(v); }
template <> __device__ __forceinline__ __nv_fp8_e5m2 kc_from_f32<__nv_fp8_e5m2>(float v) { return __nv_fp8_e5m2(v); }

static bool is_fp8(kcpu_dtype_t t)
{
    return t == KCUDA_KV_FP8_E4M3 || t == KCUDA_KV_FP8_E5M2;
}

extern "C" pd_status_t kcuda_kv_layout_init(kcpu_kv_layout_t *L, kcpu_dtype_t dtype, int n_layers, int block_size,
                                            int n_kv_heads, int head_dim, int64_t n_blocks)
{
    kcpu_kv_layout_t l;
    pd_status_t st;
    if (!is_fp8(dtype))
        return kcpu_kv_layout_init(L, dtype, n_layers, block_size, n_kv_heads, head_dim, n_blocks);
    /* the F16 layout with one byte an element: strides (in elements) stay the same */
    st = kcpu_kv_layout_init(&l, KCPU_DTYPE_F16, n_layers, block_size, n_kv_heads, head_dim, n_blocks);
    if (st != PD_OK)
        return st;
    l.dtype = dtype;
    l.elem_bytes = 1;
    l.block_bytes /= 2;
    *L = l;
    return PD_OK;
}

template <typename CT>
__global__ void kv_write_kernel(CT *base, int64_t block_elems, int64_t layer_off, int64_t kv_stride,
                                int64_t token_stride, int bs, int64_t n_blocks, const int64_t *slots,
                                const float *k, int64_t ks, const float *v, int64_t vs, int W, float kinv,
                                float vinv, int *err)
{
    const int64_t t = blockIdx.x;
    const int64_t slot = slots[t];
    if (slot < 0)
        return;
    const int64_t b = slot / bs;
    if (b >= n_blocks) {
        if (threadIdx.x == 0 && err)
            atomicOr(err, KCUDA_ERR_SLOT);
        return;
    }
    CT *dst = base + b * block_elems + layer_off + (slot % bs) * token_stride;
    for (int i = threadIdx.x; i < W; i += blockDim.x) {
        dst[i] = kc_from_f32<CT>(k[t * ks + i] * kinv);
        dst[kv_stride + i] = kc_from_f32<CT>(v[t * vs + i] * vinv);
    }
}

extern "C" pd_status_t kcuda_kv_write(const kcpu_kv_layout_t *L, void *cache_base, int layer,
                                      const int64_t *slot_mapping, int64_t T, const float *k, int64_t k_stride,
                                      const float *v, int64_t v_stride, int *err, kcuda_stream_t stream)
{
    return kcuda_kv_write_scaled(L, cache_base, layer, slot_mapping, T, k, k_stride, v, v_stride, 1.0f, 1.0f, err,
                                 stream);
}

#define KV_WRITE_LAUNCH(CT)                                                                                       \
    kv_write_kernel<CT><<<(unsigned)T, th, 0, stream>>>((CT *)cache_base, be, lo, L->kv_stride, L->token_stride,   \
                                                        L->block_size, L->n_blocks, slot_mapping, k, k_stride, v, \
                                                        v_stride, W, kinv, vinv, err)

extern "C" pd_status_t kcuda_kv_write_scaled(const kcpu_kv_layout_t *L, void *cache_base, int layer,
                                             const int64_t *slot_mapping, int64_t T, const float *k,
                                             int64_t k_stride, const float *v, int64_t v_stride, float k_scale,
                                             float v_scale, int *err, kcuda_stream_t stream)
{
    const int W = L ? L->n_kv_heads * L->head_dim : 0;
    if (L == NULL || T < 0 || T > INT32_MAX || k_stride < W || v_stride < W ||
        (L->dtype != KCPU_DTYPE_F32 && L->dtype != KCPU_DTYPE_F16 && !is_fp8(L->dtype)) || !(k_scale > 0.0f) ||
        !(v_scale > 0.0f) || !isfinite(k_scale) || !isfinite(v_scale)) {
        PD_LOG_ERR("kcuda_kv_write: bad parameters");
        return PD_ERR_INVAL;
    }
    if (layer < 0 || layer >= L->n_layers) {
        PD_LOG_ERR("kcuda_kv_write: layer %d outside [0, %d)", layer, L->n_layers);
        return PD_ERR_RANGE;
    }
    if (T == 0)
        return PD_OK;
    int64_t be = (int64_t)(L->block_bytes / L->elem_bytes), lo = (int64_t)layer * L->layer_stride;
    int th = W >= 256 ? 256 : 128;
    const float kinv = k_scale == 1.0f ? 1.0f : 1.0f / k_scale, vinv = v_scale == 1.0f ? 1.0f : 1.0f / v_scale;
    if (L->dtype == KCPU_DTYPE_F32)
        KV_WRITE_LAUNCH(float);
    else if (L->dtype == KCPU_DTYPE_F16)
        KV_WRITE_LAUNCH(__half);
    else if (L->dtype == KCUDA_KV_FP8_E4M3)
        KV_WRITE_LAUNCH(__nv_fp8_e4m3);
    else
        KV_WRITE_LAUNCH(__nv_fp8_e5m2);
    KCUDA_LAUNCHED("kcuda_kv_write");
}

/* max |x| of the rows with a non-negative slot; non-negative floats order like their bits */
__global__ void absmax_kernel(const float *x, int64_t T, int64_t W, int64_t ld, const int64_t *slots, float *out)
{
    float m = 0.0f;
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        if (slots && slots[t] < 0)
            continue;
        for (int64_t i = threadIdx.x; i < W; i += blockDim.x)
            m = fmaxf(m, fabsf(x[t * ld + i]));
    }
    for (int o = 16; o > 0; o >>= 1)
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0 && m > 0.0f && isfinite(m))
        atomicMax((int *)out, __float_as_int(m));
}

extern "C" pd_status_t kcuda_absmax_rows(const float *x, int64_t T, int64_t W, int64_t ld, const int64_t *slots,
                                         float *out, kcuda_stream_t stream)
{
    if (x == NULL || out == NULL || T < 0 || W <= 0 || ld < W)
        return PD_ERR_INVAL;
    if (T == 0)
        return PD_OK;
    absmax_kernel<<<kcuda_grid(T, 1) > 1024 ? 1024 : kcuda_grid(T, 1), 256, 0, stream>>>(x, T, W, ld, slots, out);
    KCUDA_LAUNCHED("kcuda_absmax_rows");
}

template <typename WT>
__global__ void copy_blocks_kernel(uint8_t *base, size_t block_bytes, const int32_t *src, const int32_t *dst,
                                   int64_t n_blocks, int *err)
{
    const int32_t s = src[blockIdx.x], d = dst[blockIdx.x];
    if (s < 0 || s >= n_blocks || d < 0 || d >= n_blocks) {
        if (threadIdx.x == 0 && err)
            atomicOr(err, KCUDA_ERR_BLOCK);
        return;
    }
    const WT *from = (const WT *)(base + (size_t)s * block_bytes);
    WT *to = (WT *)(base + (size_t)d * block_bytes);
    size_t n = block_bytes / sizeof(WT);
    for (size_t i = blockIdx.y * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.y * blockDim.x)
        to[i] = from[i];
}

extern "C" pd_status_t kcuda_kv_copy_blocks(const kcpu_kv_layout_t *L, void *cache_base, const int32_t *src,
                                            const int32_t *dst, int64_t n, int *err, kcuda_stream_t stream)
{
    if (L == NULL || n < 0 || n > INT32_MAX)
        return PD_ERR_INVAL;
    if (n == 0)
        return PD_OK;
    dim3 grid((unsigned)n, 16);
    if (L->block_bytes % 16 == 0)
        copy_blocks_kernel<uint4><<<grid, 256, 0, stream>>>((uint8_t *)cache_base, L->block_bytes, src, dst,
                                                            L->n_blocks, err);
    else
        copy_blocks_kernel<uint16_t><<<grid, 256, 0, stream>>>((uint8_t *)cache_base, L->block_bytes, src, dst,
                                                               L->n_blocks, err);
    KCUDA_LAUNCHED("kcuda_kv_copy_blocks");
}

/* ---- RoPE and the KV write in one kernel (kcuda_rope_kv_write) ----
 * One CTA per token (8 for T <= 8, 2 up to 64 tokens, each a slice of the work): q
 * rotated in place; k rotated in place and written (rotated) to the token's slot
 * together with v, so k is read once and no second kernel runs.  The angle and the pair
 * arithmetic are kcuda_rope's (the same f32 angle, an accurate double sincos of it, times
 * attn_factor; r0 = x0 c - x1 s, r1 = x1 c + x0 s), the stores kcuda_kv_write_scaled's.
 *
 * rope_kv_tab_kernel (the default): the angle depends on (token, pair) only, so each CTA
 * first computes its token's rot/2 (cos, sin) pairs into shared memory (rot/2 sincos, not
 * (q + kv heads) * rot/2 of them: 40x fewer at the 8B shape) and every head reads the
 * table; the values are the same bits as the old kernel's.  While the table is computed
 * the CTA issues its first q/k loads and copies v (and k's dims past the rotary part) to
 * the cache.  VEC (head_dim % 4 == 0, rot/2 % 4 == 0 for neox or % 2 == 0 for gpt-j,
 * 16-byte aligned rows, cache offsets multiples of 4 elements): a thread takes 4 neox
 * pairs (i .. i+3 and i+half .. i+half+3: two float4s) or 2 gpt-j pairs (one float4),
 * and the cache gets 4 elements a store; otherwise one pair a thread as before.  The copy
 * work is dealt from the top thread down, so at decode (8 CTAs a token) the CTAs the
 * rotation leaves idle take it.
 * rope_kv_kernel (the old one, PD_CUDA_ROPE_KV_TAB=0 or rot/2 > ROPE_TAB_MAX_HALF): one
 * (head, pair) a thread, a sincos each. */
template <typename CT>
__global__ void rope_kv_kernel(float *q, int64_t qs, float *k, int64_t kst, const float *v, int64_t vst,
                               const int32_t *pos, int n_heads, int n_kv, int hd, int half, const float *inv_freq,
                               float af, bool neox, CT *base, int64_t block_elems, int64_t layer_off,
                               int64_t kv_stride, int64_t token_stride, int bs, int64_t n_blocks,
                               const int64_t *slots, float kinv, float vinv, int *err)
{
    /* launched with PDL after the q|k|v GEMV: nothing is read before it completes */
    kc_griddep_wait();
    const int64_t t = blockIdx.x;
    const float p = (float)pos[t];
    const int64_t slot = slots[t];
    CT *dst = NULL;
    if (slot >= 0) {
        const int64_t b = slot / bs;
        if (b < n_blocks)
            dst = base + b * block_elems + layer_off + (slot % bs) * token_stride;
        else if (threadIdx.x == 0 && blockIdx.y == 0 && err)
            atomicOr(err, KCUDA_ERR_SLOT);
    }
    const int nh = n_heads + n_kv;
    /* gridDim.y CTAs share a token (decode: one token would leave all but one SM idle) */
    const int tid = blockIdx.y * blockDim.x + threadIdx.x, nth = gridDim.y * blockDim.x;
    for (int it = tid; it < nh * half; it += nth) {
        int h = it / half, i = it % half;
        float ang = p * inv_freq[i];
        double sd, cd;
        sincos((double)ang, &sd, &cd);
        float s = (float)sd * af, c = (float)cd * af;
        int ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
        float *x = h < n_heads ? q + t * qs + (int64_t)h * hd : k + t * kst + (int64_t)(h - n_heads) * hd;
        float x0 = x[ia], x1 = x[ib];
        float r0 = x0 * c - x1 * s, r1 = x1 * c + x0 * s;
        x[ia] = r0;
        x[ib] = r1;
        if (h >= n_heads && dst != NULL) {
            CT *d = dst + (int64_t)(h - n_heads) * hd;
            d[ia] = kc_from_f32<CT>(r0 * kinv);
            d[ib] = kc_from_f32<CT>(r1 * kinv);
        }
    }
    if (dst == NULL)
        return;
    const int W = n_kv * hd, rot = 2 * half;
    for (int i = tid; i < W; i += nth) {
        if (i % hd >= rot) /* dims past the rotary part: k as it is */
            dst[i] = kc_from_f32<CT>(k[t * kst + i] * kinv);
        dst[kv_stride + i] = kc_from_f32<CT>(v[t * vst + i] * vinv);
    }
}

enum { ROPE_TAB_MAX_HALF = 256 }; /* (cos, sin) pairs in the shared table: head_dim <= 512 */

template <typename CT> struct rope_kv_args {
    float *q;        /* [T, qs]: n_heads * hd rotated in place */
    int64_t qs;
    float *k;        /* [T, kst]: n_kv * hd rotated in place */
    int64_t kst;
    const float *v;  /* [T, vst] */
    int64_t vst;
    const int32_t *pos;
    int n_heads, n_kv, hd, half;
    const float *inv_freq; /* [half] */
    float af;
    bool neox;
    CT *base;        /* the cache and its strides (elements) */
    int64_t block_elems, layer_off, kv_stride, token_stride;
    int bs;
    int64_t n_blocks;
    const int64_t *slots;
    float kinv, vinv;
    int *err;
};

/* a pair rotated: the old kernel's expression, term for term */
__device__ __forceinline__ void rope_rot(float x0, float x1, float c, float s, float *r0, float *r1)
{
    *r0 = x0 * c - x1 * s;
    *r1 = x1 * c + x0 * s;
}

/* four values times sc, rounded to CT, in one store */
template <typename CT> __device__ __forceinline__ void kv_store4(CT *d, float4 v, float sc)
{
    kc_store4(d, kc_from_f32<CT>(v.x * sc), kc_from_f32<CT>(v.y * sc), kc_from_f32<CT>(v.z * sc),
              kc_from_f32<CT>(v.w * sc));
}

enum { ROPE_UR = 2 }; /* VEC units a thread loads before it computes (more bytes in flight) */

/* The pointer to unit u of token row (qt | kt): head u / per, first element 4 (u % per). */
__device__ __forceinline__ float *rope_unit_ptr(float *qt, float *kt, int u, int per, int n_heads, int hd)
{
    const int h = u / per;
    return (h < n_heads ? qt + (int64_t)h * hd : kt + (int64_t)(h - n_heads) * hd) + 4 * (u % per);
}

template <typename CT, bool VEC>
__global__ void __launch_bounds__(256) rope_kv_tab_kernel(const rope_kv_args<CT> a)
{
    __shared__ __align__(16) float2 cs[ROPE_TAB_MAX_HALF]; /* (cos, sin) * af of pair i */
    /* launched with PDL after the q|k|v GEMV: nothing is read before it completes */
    kc_griddep_wait();
    const int64_t t = blockIdx.x;
    const int64_t slot = a.slots[t];
    CT *dst = NULL;
    if (slot >= 0) {
        const int64_t b = slot / a.bs;
        if (b < a.n_blocks)
            dst = a.base + b * a.block_elems + a.layer_off + (slot % a.bs) * a.token_stride;
        else if (threadIdx.x == 0 && blockIdx.y == 0 && a.err)
            atomicOr(a.err, KCUDA_ERR_SLOT);
    }
    const int n_heads = a.n_heads, hd = a.hd, half = a.half, rot = 2 * half, nh = n_heads + a.n_kv;
    const int W = a.n_kv * hd;
    const int tid = blockIdx.y * blockDim.x + threadIdx.x, nth = gridDim.y * blockDim.x;
    float *qt = a.q + t * a.qs, *kt = a.k + t * a.kst;
    const float *vt = a.v + t * a.vst;
    /* rotation work: VEC units of 4 (neox: A = x[4g..], B = x[half + 4g..]) or 2 (gpt-j:
     * A = x[4g..]) pairs, ROPE_UR of them a round (units u, u + nth, ...); else single pairs */
    const int per = VEC ? (a.neox ? half / 4 : half / 2) : half, nu = nh * per;
    int u = tid;
    float4 A[ROPE_UR], B[ROPE_UR];
#pragma unroll
    for (int j = 0; j < ROPE_UR; j++) { /* the first round's loads in flight during the table */
        A[j] = B[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (VEC && u + j * nth < nu) {
            const float *x = rope_unit_ptr(qt, kt, u + j * nth, per, n_heads, hd);
            A[j] = kc_load4(x);
            if (a.neox)
                B[j] = kc_load4(x + half);
        }
    }
    const float p = (float)a.pos[t];
    /* the table only where it is read: decode CTAs past the rotation work skip it */
    const int table_n = (int)(blockIdx.y * blockDim.x) < nu ? half : 0;
    for (int i = threadIdx.x; i < table_n; i += blockDim.x) {
        const float ang = p * a.inv_freq[i];
        double sd, cd;
        sincos((double)ang, &sd, &cd);
        cs[i] = make_float2((float)cd * a.af, (float)sd * a.af);
    }
    /* v, and k past the rotary dims, into the cache (no table needed) */
    if (dst != NULL) {
        if (VEC) {
            for (int e = 4 * (nth - 1 - tid); e < W; e += 4 * nth) {
                if (e % hd >= rot)
                    kv_store4(dst + e, kc_load4(kt + e), a.kinv);
                kv_store4(dst + a.kv_stride + e, kc_load4(vt + e), a.vinv);
            }
        } else {
            for (int e = nth - 1 - tid; e < W; e += nth) {
                if (e % hd >= rot)
                    dst[e] = kc_from_f32<CT>(kt[e] * a.kinv);
                dst[a.kv_stride + e] = kc_from_f32<CT>(vt[e] * a.vinv);
            }
        }
    }
    __syncthreads();
    if (!VEC) {
        for (; u < nu; u += nth) {
            const int h = u / half, i = u % half;
            const int ia = a.neox ? i : 2 * i, ib = a.neox ? i + half : 2 * i + 1;
            float *xs = h < n_heads ? qt + (int64_t)h * hd : kt + (int64_t)(h - n_heads) * hd;
            const float2 c = cs[i];
            float r0, r1;
            rope_rot(xs[ia], xs[ib], c.x, c.y, &r0, &r1);
            xs[ia] = r0;
            xs[ib] = r1;
            if (h >= n_heads && dst != NULL) {
                CT *d = dst + (int64_t)(h - n_heads) * hd;
                d[ia] = kc_from_f32<CT>(r0 * a.kinv);
                d[ib] = kc_from_f32<CT>(r1 * a.kinv);
            }
        }
        return;
    }
    const float4 *cs4 = (const float4 *)cs; /* (c, s) of pairs 2m and 2m + 1 */
    while (u < nu) {
#pragma unroll
        for (int j = 0; j < ROPE_UR; j++) {
            const int uj = u + j * nth;
            if (uj >= nu)
                break;
            const int h = uj / per, g = uj % per;
            float *x = rope_unit_ptr(qt, kt, uj, per, n_heads, hd);
            float4 ra, rb;
            if (a.neox) { /* pair 4g + m: (A[m], B[m]) */
                const float4 c01 = cs4[2 * g], c23 = cs4[2 * g + 1];
                rope_rot(A[j].x, B[j].x, c01.x, c01.y, &ra.x, &rb.x);
                rope_rot(A[j].y, B[j].y, c01.z, c01.w, &ra.y, &rb.y);
                rope_rot(A[j].z, B[j].z, c23.x, c23.y, &ra.z, &rb.z);
                rope_rot(A[j].w, B[j].w, c23.z, c23.w, &ra.w, &rb.w);
                *(float4 *)x = ra;
                *(float4 *)(x + half) = rb;
            } else { /* pairs 2g, 2g + 1: (A.x, A.y), (A.z, A.w) */
                const float4 c01 = cs4[g];
                rope_rot(A[j].x, A[j].y, c01.x, c01.y, &ra.x, &ra.y);
                rope_rot(A[j].z, A[j].w, c01.z, c01.w, &ra.z, &ra.w);
                *(float4 *)x = ra;
            }
            if (h >= n_heads && dst != NULL) {
                CT *d = dst + (int64_t)(h - n_heads) * hd + 4 * g;
                kv_store4(d, ra, a.kinv);
                if (a.neox)
                    kv_store4(d + half, rb, a.kinv);
            }
        }
        u += ROPE_UR * nth;
#pragma unroll
        for (int j = 0; j < ROPE_UR; j++) { /* the next round */
            if (u + j * nth < nu) {
                const float *x = rope_unit_ptr(qt, kt, u + j * nth, per, n_heads, hd);
                A[j] = kc_load4(x);
                if (a.neox)
                    B[j] = kc_load4(x + half);
            }
        }
    }
}

/* -1: not read yet; PD_CUDA_ROPE_KV_TAB=0 sends every launch to the old kernel (A/B runs) */
static int rope_tab_g = -1;

static bool rope_tab_on(void)
{
    if (rope_tab_g < 0) {
        const char *e = getenv("PD_CUDA_ROPE_KV_TAB");
        rope_tab_g = e == NULL || atoi(e) != 0;
    }
    return rope_tab_g == 1;
}

/* Launched with programmatic stream serialization when the GEMVs are (kcuda_gemv_pdl_on):
 * its CTAs are resident while the q|k|v GEMV drains, then wait for it. */
template <typename CT>
static void rope_kv_launch(unsigned T, float *q, int64_t qs, float *k, int64_t kst, const float *v, int64_t vst,
                           const int32_t *pos, int n_heads, int n_kv, int hd, int half, const float *inv_freq,
                           float af, bool neox, void *base, int64_t block_elems, int64_t layer_off,
                           int64_t kv_stride, int64_t token_stride, int bs, int64_t n_blocks, const int64_t *slots,
                           float kinv, float vinv, int *err, cudaStream_t s)
{
    const dim3 grid(T, T <= 8 ? 8 : T <= 64 ? 2 : 1);
    const bool pdl = kcuda_gemv_pdl_on();
    if (!rope_tab_on() || half > ROPE_TAB_MAX_HALF) {
        kc_launch_pdl(pdl, rope_kv_kernel<CT>, grid, dim3(256), s, q, qs, k, kst, v, vst, pos, n_heads, n_kv, hd,
                      half, inv_freq, af, neox, (CT *)base, block_elems, layer_off, kv_stride, token_stride, bs,
                      n_blocks, slots, kinv, vinv, err);
        return;
    }
    /* in the field order of rope_kv_args */
    const rope_kv_args<CT> a = {q, qs, k, kst, v, vst, pos,
                                n_heads, n_kv, hd, half, inv_freq, af, neox,
                                (CT *)base, block_elems, layer_off, kv_stride, token_stride, bs, n_blocks,
                                slots, kinv, vinv, err};
    /* every float4 / 4-element store aligned: rows, head and pair offsets, cache strides */
    const bool vec = hd % 4 == 0 && half % (neox ? 4 : 2) == 0 && kc_aligned(q, 16) && kc_aligned(k, 16) &&
                     kc_aligned(v, 16) && qs % 4 == 0 && kst % 4 == 0 && vst % 4 == 0 &&
                     kc_aligned(base, 4 * sizeof(CT)) && block_elems % 4 == 0 && layer_off % 4 == 0 &&
                     kv_stride % 4 == 0 && token_stride % 4 == 0;
    if (vec)
        kc_launch_pdl(pdl, rope_kv_tab_kernel<CT, true>, grid, dim3(256), s, a);
    else
        kc_launch_pdl(pdl, rope_kv_tab_kernel<CT, false>, grid, dim3(256), s, a);
}

#define ROPE_KV_LAUNCH(CT)                                                                                       \
    rope_kv_launch<CT>((unsigned)T, q, q_stride, k, k_stride, v, v_stride, pos, n_heads, L->n_kv_heads,         \
                       L->head_dim, rotary_dim / 2, inv_freq, attn_factor, style == KCPU_ROPE_NEOX, cache_base, be, \
                       lo, L->kv_stride, L->token_stride, L->block_size, L->n_blocks, slot_mapping, kinv, vinv, err, \
                       stream)

extern "C" pd_status_t kcuda_rope_kv_write(float *q, int64_t q_stride, float *k, int64_t k_stride, const float *v,
                                           int64_t v_stride, const int32_t *pos, int64_t T, int n_heads,
                                           int rotary_dim, const float *inv_freq, float attn_factor,
                                           kcpu_rope_style_t style, const kcpu_kv_layout_t *L, void *cache_base,
                                           int layer, const int64_t *slot_mapping, float k_scale, float v_scale,
                                           int *err, kcuda_stream_t stream)
{
    const int W = L ? L->n_kv_heads * L->head_dim : 0;
    if (L == NULL || q == NULL || k == NULL || v == NULL || T < 0 || T > INT32_MAX || n_heads <= 0 ||
        L->n_kv_heads <= 0 || L->head_dim <= 0 || rotary_dim <= 0 || rotary_dim % 2 != 0 ||
        rotary_dim > L->head_dim || q_stride < (int64_t)n_heads * L->head_dim || k_stride < W || v_stride < W ||
        (style != KCPU_ROPE_NEOX && style != KCPU_ROPE_GPTJ) ||
        (L->dtype != KCPU_DTYPE_F32 && L->dtype != KCPU_DTYPE_F16 && !is_fp8(L->dtype)) || !(k_scale > 0.0f) ||
        !(v_scale > 0.0f) || !isfinite(k_scale) || !isfinite(v_scale)) {
        PD_LOG_ERR("kcuda_rope_kv_write: bad parameters (T=%lld heads=%d rotary_dim=%d)", (long long)T, n_heads,
                   rotary_dim);
        return PD_ERR_INVAL;
    }
    if (layer < 0 || layer >= L->n_layers) {
        PD_LOG_ERR("kcuda_rope_kv_write: layer %d outside [0, %d)", layer, L->n_layers);
        return PD_ERR_RANGE;
    }
    if (T == 0)
        return PD_OK;
    int64_t be = (int64_t)(L->block_bytes / L->elem_bytes), lo = (int64_t)layer * L->layer_stride;
    const float kinv = k_scale == 1.0f ? 1.0f : 1.0f / k_scale, vinv = v_scale == 1.0f ? 1.0f : 1.0f / v_scale;
    if (L->dtype == KCPU_DTYPE_F32)
        ROPE_KV_LAUNCH(float);
    else if (L->dtype == KCPU_DTYPE_F16)
        ROPE_KV_LAUNCH(__half);
    else if (L->dtype == KCUDA_KV_FP8_E4M3)
        ROPE_KV_LAUNCH(__nv_fp8_e4m3);
    else
        ROPE_KV_LAUNCH(__nv_fp8_e5m2);
    KCUDA_LAUNCHED("kcuda_rope_kv_write");
}
