/*
 * kcuda_gemv.cu - y[M,N] = x[M,K] . W[N,K]^T for small M (decode, M <= 8) with bf16/f16
 * weights, or fp8 e4m3 weights times a per-tensor scale (--quantization fp8: 16 elements
 * a 16-byte load, the scale applied to the column sum), and f32 activations read as they
 * are (no rounding of x, no scratch): one warp
 * per output column n (or 4 warps, each a quarter of the row, when there are few
 * columns) streams its weight row with 16-byte loads and keeps M partial sums; the
 * weights are read exactly once, which is the whole cost of a decode GEMM.  (Two or four
 * columns per warp were measured slower: docs/cuda.md.)
 * cuBLAS's GEMV-shaped calls reach well under the copy bandwidth (see docs/cuda.md).
 *
 * Programmatic dependent launch (Hopper; kcuda_gemv_set_pdl, env PD_CUDA_GEMV_PDL=1):
 * the GEMV is launched with programmatic stream serialization, so its CTAs may start
 * while the kernel before it (a norm, an activation, attention) drains.  The weights do
 * not depend on earlier kernels: each lane loads its first batch of weight chunks, then
 * waits (griddepcontrol.wait: every earlier kernel complete and its writes visible)
 * before it reads x or writes y.  Without the launch attribute the wait is a no-op, so
 * the kernel is the same either way; graphs record the programmatic edge.
 * kcuda_gemv_set_noalloc / PD_CUDA_GEMV_NOALLOC=1 loads the weights without allocating
 * in L1 (A/B runs; off by default until measured).
 * kcuda_gemv_ex: the same loop with the decode layer's neighbours folded in (an RMSNorm
 * prologue computed inside the loop, a residual-accumulate or GLU epilogue): see the
 * section below.
 */
#include "kcuda_internal.cuh"
#include "kcuda_act.cuh"

#include <cuda_fp8.h>
#include <stdlib.h>

/* One lane-load is 16 bytes: 8 bf16/f16 elements, or 16 fp8 e4m3 elements (--quantization
 * fp8; SUB = 2 runs of 8 against the activations, so the f32 activation loads and the
 * norm weights keep their 8-element indexing).  The fp8 weight's per-tensor scale
 * multiplies the column sum at the end. */
template <typename WT> struct wtraits {
    static const int SUB = 1;
};
template <> struct wtraits<__nv_fp8_e4m3> {
    static const int SUB = 2;
};

/* 16 bytes of weights into 8 * SUB floats. */
template <typename WT> __device__ __forceinline__ void kc_unpack8(uint4 u, float *f);
template <> __device__ __forceinline__ void kc_unpack8<__nv_fp8_e4m3>(uint4 u, float *f)
{
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
    for (int i = 0; i < 4; i++) {
        /* e4m3 -> f16 is exact (every e4m3 value is an f16 value); the low byte is the
         * lower-addressed element */
        __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w[i] & 0xffffu), __NV_E4M3);
        __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w[i] >> 16), __NV_E4M3);
        float2 a = __half22float2(__half2(lo)), b = __half22float2(__half2(hi));
        f[4 * i] = a.x;
        f[4 * i + 1] = a.y;
        f[4 * i + 2] = b.x;
        f[4 * i + 3] = b.y;
    }
}
template <> __device__ __forceinline__ void kc_unpack8<__nv_bfloat16>(uint4 u, float *f)
{
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
template <> __device__ __forceinline__ void kc_unpack8<__half>(uint4 u, float *f)
{
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
    for (int i = 0; i < 4; i++) {
        __half2 h = *(const __half2 *)&w[i];
        float2 v = __half22float2(h);
        f[2 * i] = v.x;
        f[2 * i + 1] = v.y;
    }
}

#define PF 4 /* weight chunks per lane loaded before the dependency wait */

/* A 16-byte weight load: through the read-only path (NA false), or without allocating in
 * L1 (NA true: the weights are read once, so they need not evict the activation rows
 * every column re-reads from L1). */
template <bool NA> __device__ __forceinline__ uint4 ldw(const uint4 *p)
{
    if (NA) {
        uint4 r;
        asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
            : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
            : "l"(p));
        return r;
    }
    return __ldg(p);
}

/* An activation load: through the read-only (non-coherent) path, or (CO) a plain
 * coherent load.  Under PDL the kernel before this one writes x while this grid is
 * already resident, which breaks the read-only path's contract (data constant for the
 * kernel's lifetime), so PDL launches read x with plain loads after the wait. */
template <bool CO> __device__ __forceinline__ float4 ld_act(const float4 *p)
{
    if (CO)
        return *p;
    return __ldg(p);
}

/* One 16-byte weight chunk (chunk c: 8 * SUB elements) against the M activation rows. */
template <typename WT, int MT, bool CO>
__device__ __forceinline__ void gemv_chunk(uint4 raw, int64_t c, const float *x, int M, int64_t ldx, float *acc)
{
    const int SUB = wtraits<WT>::SUB;
    float wf[8 * SUB];
    kc_unpack8<WT>(raw, wf);
    for (int m = 0; m < MT; m++) {
        if (m < M) {
#pragma unroll
            for (int s = 0; s < SUB; s++) {
                const float *v = wf + 8 * s;
                const float4 *xr = (const float4 *)(x + m * ldx + (c * SUB + s) * 8);
                float4 a = ld_act<CO>(xr), b = ld_act<CO>(xr + 1);
                acc[m] += v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w + v[4] * b.x + v[5] * b.y + v[6] * b.z +
                          v[7] * b.w;
            }
        }
    }
}

/* KS warps share one output column (each a 1/KS slice of K, summed through shared memory;
 * used when there are too few columns to fill the GPU), 8 warps per CTA.  NA: weight
 * loads skip L1; CO: coherent activation loads (the PDL launches). */
template <typename WT, int MT, int KS, bool NA, bool CO>
__global__ void __launch_bounds__(256) gemv_kernel(const float *x, int M, int64_t K, int64_t ldx, const WT *w,
                                                   const float *wscale, int64_t N, float *y, int64_t ldy)
{
    __shared__ float part[8][MT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t n = (int64_t)blockIdx.x * (8 / KS) + warp / KS;
    const int ks = warp % KS;
    const int64_t chunks = K / (8 * wtraits<WT>::SUB);
    const uint4 *wr = (const uint4 *)(w + (n < N ? n : 0) * K);
    float acc[MT];
    for (int m = 0; m < MT; m++)
        acc[m] = 0.0f;
    /* the first PF chunks of this lane: independent of earlier kernels (see the top) */
    uint4 pre[PF];
    const int64_t c0 = (int64_t)ks * 32 + lane;
#pragma unroll
    for (int p = 0; p < PF; p++) {
        const int64_t c = c0 + (int64_t)p * 32 * KS;
        pre[p] = (n < N && c < chunks) ? ldw<NA>(wr + c) : make_uint4(0, 0, 0, 0);
    }
    kc_griddep_wait();
    if (n < N) {
#pragma unroll
        for (int p = 0; p < PF; p++) {
            const int64_t c = c0 + (int64_t)p * 32 * KS;
            if (c < chunks)
                gemv_chunk<WT, MT, CO>(pre[p], c, x, M, ldx, acc);
        }
#pragma unroll 4
        for (int64_t c = c0 + (int64_t)PF * 32 * KS; c < chunks; c += 32 * KS)
            gemv_chunk<WT, MT, CO>(ldw<NA>(wr + c), c, x, M, ldx, acc);
    }
    /* all weight loads done: a PDL-launched successor may start (it waits for this grid's
     * completion before it reads anything; see gemv_ex_kernel) */
    kc_launch_dependents();
    /* the fp8 weight's per-tensor scale (read after the wait: its conversion may be the
     * kernel before this one); 1 for bf16/f16 */
    const float sc = wscale != NULL ? *wscale : 1.0f;
    for (int m = 0; m < MT; m++) {
        float sum = kc_warp_sum(acc[m]);
        if (KS == 1) {
            if (lane == 0 && m < M && n < N)
                y[m * ldy + n] = sum * sc;
        } else if (lane == 0) {
            part[warp][m] = sum;
        }
    }
    if (KS > 1) {
        __syncthreads();
        if (ks == 0 && lane < MT && lane < M && n < N) {
            float sum = 0.0f;
            for (int i = 0; i < KS; i++)
                sum += part[warp + i][lane];
            y[lane * ldy + n] = sum * sc;
        }
    }
}

extern "C" bool kcuda_gemv_ok(int64_t M, int64_t K, int64_t ldx, const void *x, const void *w, kcpu_dtype_t wtype)
{
    return M >= 1 && M <= 8 && K % 8 == 0 && ldx % 4 == 0 && ((uintptr_t)x & 15) == 0 && ((uintptr_t)w & 15) == 0 &&
           (wtype == KCPU_DTYPE_BF16 || wtype == KCPU_DTYPE_F16 || (wtype == KCUDA_W_FP8_E4M3 && K % 16 == 0));
}

/* -1: not decided yet (env PD_CUDA_GEMV_PDL / PD_CUDA_GEMV_NOALLOC, default off); 0 / 1 */
static int pdl_g = -1, noalloc_g = -1;

extern "C" void kcuda_gemv_set_noalloc(int on)
{
    noalloc_g = on < 0 ? -1 : on != 0;
}

static bool use_noalloc(void)
{
    if (noalloc_g < 0) {
        /* on by default since the 20:30 UTC H200 run (docs/cuda.md): 62-93% of the copy
         * rate against 64-89% for the decode shapes; PD_CUDA_GEMV_NOALLOC=0 turns it off */
        const char *e = getenv("PD_CUDA_GEMV_NOALLOC");
        noalloc_g = e == NULL || atoi(e) != 0;
    }
    return noalloc_g == 1;
}

extern "C" void kcuda_gemv_set_pdl(int on)
{
    pdl_g = on < 0 ? -1 : on != 0;
}

static bool use_pdl(void)
{
    if (pdl_g < 0) {
        /* on by default since the same run: batch 1 graph step 5.10 -> 4.84 ms with the
         * weights not in L1 (test_cuda_engine: the same tokens); PD_CUDA_GEMV_PDL=0 */
        const char *e = getenv("PD_CUDA_GEMV_PDL");
        pdl_g = e == NULL || atoi(e) != 0;
    }
    return pdl_g == 1;
}

extern "C" bool kcuda_gemv_pdl_on(void)
{
    return use_pdl();
}

template <typename WT, int MT, int KS>
static void gemv_launch_one(unsigned g, const float *x, int M, int64_t K, int64_t ldx, const WT *w,
                            const float *ws, int64_t N, float *y, int64_t ldy, cudaStream_t s)
{
    typedef void (*kern_t)(const float *, int, int64_t, int64_t, const WT *, const float *, int64_t, float *,
                           int64_t);
    const bool na = use_noalloc(), pdl = use_pdl();
    kern_t kern = pdl ? (na ? gemv_kernel<WT, MT, KS, true, true> : gemv_kernel<WT, MT, KS, false, true>)
                      : (na ? gemv_kernel<WT, MT, KS, true, false> : gemv_kernel<WT, MT, KS, false, false>);
    kc_launch_pdl(pdl, kern, dim3(g), dim3(256), s, x, M, K, ldx, w, ws, N, y, ldy);
}

template <typename WT, int KS>
static void gemv_launch_ks(const float *x, int M, int64_t K, int64_t ldx, const void *w, const float *ws, int64_t N,
                           float *y, int64_t ldy, cudaStream_t s)
{
    const int per = 8 / KS;
    unsigned g = (unsigned)((N + per - 1) / per);
    const WT *wt = (const WT *)w;
    if (M == 1)
        gemv_launch_one<WT, 1, KS>(g, x, M, K, ldx, wt, ws, N, y, ldy, s);
    else if (M == 2)
        gemv_launch_one<WT, 2, KS>(g, x, M, K, ldx, wt, ws, N, y, ldy, s);
    else if (M <= 4)
        gemv_launch_one<WT, 4, KS>(g, x, M, K, ldx, wt, ws, N, y, ldy, s);
    else
        gemv_launch_one<WT, 8, KS>(g, x, M, K, ldx, wt, ws, N, y, ldy, s);
}

/* Warps per output column: 4 when N is small (k/v projections: 1024 columns would give
 * too few warps to cover the memory latency), else 1.  PD_CUDA_GEMV_KSPLIT=1|2|4 forces it
 * (A/B runs). */
static int ksplit_g = -1; /* -1: from env PD_CUDA_GEMV_KSPLIT at the next launch; 0: automatic */

extern "C" void kcuda_gemv_set_ksplit(int ks)
{
    ksplit_g = ks < 0 ? -1 : (ks == 1 || ks == 2 || ks == 4) ? ks : 0;
}

/* warps per column of the narrow decode shapes (2048 < N <= 8192: q|k|v, o, down at the
 * 8B shape); -1: from env PD_CUDA_GEMV_KS_NARROW (default 1, what was measured) */
static int ks_narrow_g = -1;

extern "C" void kcuda_gemv_set_ksplit_narrow(int ks)
{
    ks_narrow_g = ks < 0 ? -1 : (ks == 2 || ks == 4) ? ks : 1;
}

static int gemv_ks(int64_t N, int64_t K)
{
    if (ksplit_g < 0) {
        const char *e = getenv("PD_CUDA_GEMV_KSPLIT");
        int v = e ? atoi(e) : 0;
        ksplit_g = (v == 1 || v == 2 || v == 4) ? v : 0;
    }
    if (ks_narrow_g < 0) {
        const char *e = getenv("PD_CUDA_GEMV_KS_NARROW");
        int v = e ? atoi(e) : 1;
        ks_narrow_g = (v == 2 || v == 4) ? v : 1;
    }
    if (ksplit_g)
        return ksplit_g;
    if (N <= 2048 && K >= 1024)
        return 4;
    return N <= 8192 && K >= 1024 ? ks_narrow_g : 1;
}

template <typename WT>
static void gemv_launch(const float *x, int M, int64_t K, int64_t ldx, const void *w, const float *ws, int64_t N,
                        float *y, int64_t ldy, cudaStream_t s)
{
    int ks = gemv_ks(N, K);
    if (ks == 4)
        gemv_launch_ks<WT, 4>(x, M, K, ldx, w, ws, N, y, ldy, s);
    else if (ks == 2)
        gemv_launch_ks<WT, 2>(x, M, K, ldx, w, ws, N, y, ldy, s);
    else
        gemv_launch_ks<WT, 1>(x, M, K, ldx, w, ws, N, y, ldy, s);
}

extern "C" pd_status_t kcuda_gemv_scaled(const float *x, int64_t M, int64_t K, int64_t ldx, const void *w,
                                         kcpu_dtype_t wtype, const float *w_scale, int64_t N, float *y, int64_t ldy,
                                         kcuda_stream_t stream)
{
    if (!kcuda_gemv_ok(M, K, ldx, x, w, wtype) || N <= 0 || ldy < N || N > (int64_t)INT32_MAX * 8) {
        PD_LOG_ERR("kcuda_gemv: shape not supported (M=%lld K=%lld ldx=%lld %s)", (long long)M, (long long)K,
                   (long long)ldx, kcpu_dtype_name(wtype));
        return PD_ERR_INVAL;
    }
    if (wtype == KCPU_DTYPE_BF16)
        gemv_launch<__nv_bfloat16>(x, (int)M, K, ldx, w, w_scale, N, y, ldy, stream);
    else if (wtype == KCPU_DTYPE_F16)
        gemv_launch<__half>(x, (int)M, K, ldx, w, w_scale, N, y, ldy, stream);
    else
        gemv_launch<__nv_fp8_e4m3>(x, (int)M, K, ldx, w, w_scale, N, y, ldy, stream);
    KCUDA_LAUNCHED("kcuda_gemv");
}

extern "C" pd_status_t kcuda_gemv(const float *x, int64_t M, int64_t K, int64_t ldx, const void *w,
                                  kcpu_dtype_t wtype, int64_t N, float *y, int64_t ldy, kcuda_stream_t stream)
{
    return kcuda_gemv_scaled(x, M, K, ldx, w, wtype, NULL, N, y, ldy, stream);
}

/* ---- fused decode GEMVs (kcuda_gemv_ex) ----
 *
 * The same streaming loop as gemv_kernel (KS warps per column, 8 warps per CTA, PF weight
 * chunks in flight before the dependency wait, coherent activation loads), with:
 *  NORM: x is the residual stream and the GEMV consumes rmsnorm(x) * norm_w.  Each warp
 *    reads its whole slice of every x row anyway, so it also sums the squares of what it
 *    reads (free FMAs), multiplies the weights by norm_w as they are unpacked, and scales
 *    the column sum by rsqrt(mean square + eps) at the end: no normalised copy of x is
 *    written and no norm kernel runs (with KS > 1 the partial sums of squares of a
 *    column's warps are added like the dot products).
 *  EPI 0: y = d; 1: y += d (the residual add of the o / down projection, in place: each
 *    y element is read and written by the one thread that owns its column, after the
 *    wait); 2: GLU: the CTA's first half of columns are gate rows i, its second half the
 *    matching up rows I + i (W is gate|up, N = 2I), and y[m, i] = act(gate) * up.
 * d = dot (+ bias[n]).  Every CTA reaches every __syncthreads (no early return). */
struct gemv_ex_args {
    const float *x;
    int M;
    int64_t K, ldx;
    const void *w;
    int64_t N;     /* weight rows (GLU: 2 I) */
    const float *nw;
    float eps;
    const float *bias;
    float *y;
    int64_t ldy;
    int act;       /* GLU: 0 silu, 1 gelu, 2 gelu tanh */
    const float *ws; /* per-tensor weight scale (fp8) or NULL */
};

/* One 16-byte weight chunk (chunk c: 8 * SUB elements) against the M activation rows. */
template <typename WT, int MT, bool NORM>
__device__ __forceinline__ void gemv_ex_step(uint4 raw, int64_t c, const gemv_ex_args &a, float *acc, float *ss)
{
    const int SUB = wtraits<WT>::SUB;
    float wf[8 * SUB];
    kc_unpack8<WT>(raw, wf);
#pragma unroll
    for (int s = 0; s < SUB; s++) {
        float *v = wf + 8 * s;
        const int64_t e = (c * SUB + s) * 8; /* first column of this run of 8 */
        if (NORM) {
            const float4 *nr = (const float4 *)(a.nw + e);
            float4 g0 = nr[0], g1 = nr[1];
            v[0] *= g0.x; v[1] *= g0.y; v[2] *= g0.z; v[3] *= g0.w;
            v[4] *= g1.x; v[5] *= g1.y; v[6] *= g1.z; v[7] *= g1.w;
        }
#pragma unroll
        for (int m = 0; m < MT; m++) {
            if (m < a.M) {
                const float4 *xr = (const float4 *)(a.x + m * a.ldx + e);
                float4 u = xr[0], w = xr[1];
                acc[m] += v[0] * u.x + v[1] * u.y + v[2] * u.z + v[3] * u.w + v[4] * w.x + v[5] * w.y +
                          v[6] * w.z + v[7] * w.w;
                if (NORM)
                    ss[m] += u.x * u.x + u.y * u.y + u.z * u.z + u.w * u.w + w.x * w.x + w.y * w.y + w.z * w.z +
                             w.w * w.w;
            }
        }
    }
}

template <typename WT, int MT, int KS, bool NA, bool NORM, int EPI>
__global__ void __launch_bounds__(256) gemv_ex_kernel(const gemv_ex_args a)
{
    __shared__ float part[8][MT];
    __shared__ float pss[8][MT];
    __shared__ float col[8][MT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int per = 8 / KS;          /* columns per CTA */
    const int j = warp / KS;         /* this warp's column in the CTA */
    const int ks = warp % KS;
    const int64_t K = a.K, chunks = K / (8 * wtraits<WT>::SUB);
    int64_t n;                       /* weight row of column j */
    bool valid;
    if (EPI == 2) {
        const int half = per / 2;
        const int64_t I = a.N / 2, p = (int64_t)blockIdx.x * half + (j % half);
        valid = p < I;
        n = (j < half ? p : I + p);
    } else {
        n = (int64_t)blockIdx.x * per + j;
        valid = n < a.N;
    }
    const uint4 *wr = (const uint4 *)((const WT *)a.w + (valid ? n : 0) * K);
    float acc[MT], ss[MT];
    for (int m = 0; m < MT; m++)
        acc[m] = ss[m] = 0.0f;
    uint4 pre[PF];
    const int64_t c0 = (int64_t)ks * 32 + lane;
#pragma unroll
    for (int p = 0; p < PF; p++) {
        const int64_t c = c0 + (int64_t)p * 32 * KS;
        pre[p] = (valid && c < chunks) ? ldw<NA>(wr + c) : make_uint4(0, 0, 0, 0);
    }
    kc_griddep_wait();
    if (valid) {
#pragma unroll
        for (int p = 0; p < PF; p++) {
            const int64_t c = c0 + (int64_t)p * 32 * KS;
            if (c < chunks)
                gemv_ex_step<WT, MT, NORM>(pre[p], c, a, acc, ss);
        }
#pragma unroll 4
        for (int64_t c = c0 + (int64_t)PF * 32 * KS; c < chunks; c += 32 * KS)
            gemv_ex_step<WT, MT, NORM>(ldw<NA>(wr + c), c, a, acc, ss);
    }
    /* every weight byte of this CTA is in: let the next kernel's CTAs (a GEMV or the
     * RoPE/KV write, launched with PDL) take the SMs this grid's tail leaves idle and
     * start their prefetch; they wait for this grid's completion before reading what it
     * writes (griddepcontrol.wait), so the early trigger is always safe */
    kc_launch_dependents();
    for (int m = 0; m < MT; m++) {
        float s = kc_warp_sum(acc[m]);
        float q = NORM ? kc_warp_sum(ss[m]) : 0.0f;
        if (lane == 0) {
            part[warp][m] = s;
            pss[warp][m] = q;
        }
    }
    __syncthreads();
    /* thread t < per * MT finishes column t / MT of row t % MT */
    const int t = threadIdx.x, tj = t / MT, tm = t % MT;
    int64_t tn = 0;
    bool tvalid = false;
    float d = 0.0f;
    if (t < per * MT) {
        if (EPI == 2) {
            const int half = per / 2;
            const int64_t I = a.N / 2, p = (int64_t)blockIdx.x * half + (tj % half);
            tvalid = p < I;
            tn = tj < half ? p : I + p;
        } else {
            tn = (int64_t)blockIdx.x * per + tj;
            tvalid = tn < a.N;
        }
        tvalid = tvalid && tm < a.M;
        for (int i = 0; i < KS; i++)
            d += part[tj * KS + i][tm];
        if (a.ws != NULL)
            d *= *a.ws; /* after the PDL wait, like every read of an earlier kernel's output */
        if (NORM) {
            float q = 0.0f;
            for (int i = 0; i < KS; i++)
                q += pss[tj * KS + i][tm];
            d *= rsqrtf(q / (float)K + a.eps);
        }
        if (tvalid && a.bias != NULL)
            d += a.bias[tn];
        if (EPI == 0 && tvalid)
            a.y[tm * a.ldy + tn] = d;
        else if (EPI == 1 && tvalid)
            a.y[tm * a.ldy + tn] += d;
        else if (EPI == 2)
            col[tj][tm] = d;
    }
    if (EPI == 2) {
        __syncthreads();
        const int half = per / 2;
        if (t < half * MT) {
            const int64_t p = (int64_t)blockIdx.x * half + tj;
            if (p < a.N / 2 && tm < a.M)
                a.y[tm * a.ldy + p] = kc_glu_act(col[tj][tm], a.act) * col[tj + half][tm];
        }
    }
}

template <typename WT, int MT, int KS, bool NORM, int EPI>
static void gemv_ex_launch_one(unsigned g, const gemv_ex_args &a, cudaStream_t s)
{
    typedef void (*kern_t)(const gemv_ex_args);
    kern_t kern = use_noalloc() ? gemv_ex_kernel<WT, MT, KS, true, NORM, EPI>
                                : gemv_ex_kernel<WT, MT, KS, false, NORM, EPI>;
    kc_launch_pdl(use_pdl(), kern, dim3(g), dim3(256), s, a);
}

template <typename WT, int KS, bool NORM, int EPI>
static void gemv_ex_launch_ks(const gemv_ex_args &a, cudaStream_t s)
{
    const int per = 8 / KS;
    const int64_t cols = EPI == 2 ? a.N / 2 : a.N, per_cta = EPI == 2 ? per / 2 : per;
    unsigned g = (unsigned)((cols + per_cta - 1) / per_cta);
    if (a.M == 1)
        gemv_ex_launch_one<WT, 1, KS, NORM, EPI>(g, a, s);
    else if (a.M == 2)
        gemv_ex_launch_one<WT, 2, KS, NORM, EPI>(g, a, s);
    else if (a.M <= 4)
        gemv_ex_launch_one<WT, 4, KS, NORM, EPI>(g, a, s);
    else
        gemv_ex_launch_one<WT, 8, KS, NORM, EPI>(g, a, s);
}

template <typename WT, bool NORM, int EPI> static void gemv_ex_launch(const gemv_ex_args &a, cudaStream_t s)
{
    int ks = gemv_ks(a.N, a.K);
    if (ks == 4)
        gemv_ex_launch_ks<WT, 4, NORM, EPI>(a, s);
    else if (ks == 2)
        gemv_ex_launch_ks<WT, 2, NORM, EPI>(a, s);
    else
        gemv_ex_launch_ks<WT, 1, NORM, EPI>(a, s);
}

/* The (norm, epilogue) pairs instantiated: what the decode forward uses. */
static bool ex_combo_ok(bool norm, kcuda_gemv_epi_t epi)
{
    return (norm && epi == KCUDA_GEMV_STORE) || (norm && epi == KCUDA_GEMV_GLU) || (!norm && epi == KCUDA_GEMV_ACCUMULATE);
}

extern "C" bool kcuda_gemv_ex_ok(const kcuda_gemv_ex_t *a)
{
    if (a == NULL || a->y == NULL || a->N <= 0 || a->N > (int64_t)INT32_MAX * 4 ||
        !kcuda_gemv_ok(a->M, a->K, a->ldx, a->x, a->w, a->wtype) || !ex_combo_ok(a->norm_w != NULL, a->epi))
        return false;
    /* the norm's sum of squares costs each warp as many FMAs as its dot products: with
     * more than 4 rows that would make the loop compute-bound (8 rows: 128 FMAs a 16-byte
     * chunk), so those calls keep the norm kernel */
    if (a->norm_w != NULL && (((uintptr_t)a->norm_w & 15) != 0 || a->M > KCUDA_GEMV_NORM_MAX_M))
        return false;
    if (a->epi == KCUDA_GEMV_GLU)
        return a->N % 2 == 0 && a->ldy >= a->N / 2 && a->glu_act >= 0 && a->glu_act <= 2;
    return a->ldy >= a->N;
}

extern "C" pd_status_t kcuda_gemv_ex(const kcuda_gemv_ex_t *a, kcuda_stream_t stream)
{
    if (!kcuda_gemv_ex_ok(a)) {
        PD_LOG_ERR("kcuda_gemv_ex: shape not supported (M=%lld K=%lld N=%lld epi=%d norm=%d)",
                   a ? (long long)a->M : 0LL, a ? (long long)a->K : 0LL, a ? (long long)a->N : 0LL,
                   a ? (int)a->epi : -1, a ? a->norm_w != NULL : 0);
        return PD_ERR_INVAL;
    }
    gemv_ex_args g;
    g.x = a->x;
    g.M = (int)a->M;
    g.K = a->K;
    g.ldx = a->ldx;
    g.w = a->w;
    g.N = a->N;
    g.nw = a->norm_w;
    g.eps = a->eps;
    g.bias = a->bias;
    g.y = a->y;
    g.ldy = a->ldy;
    g.act = a->glu_act;
    g.ws = a->w_scale;
    const bool bf = a->wtype == KCPU_DTYPE_BF16, f8 = a->wtype == KCUDA_W_FP8_E4M3;
    if (a->norm_w != NULL && a->epi == KCUDA_GEMV_STORE) {
        if (bf)
            gemv_ex_launch<__nv_bfloat16, true, 0>(g, stream);
        else if (f8)
            gemv_ex_launch<__nv_fp8_e4m3, true, 0>(g, stream);
        else
            gemv_ex_launch<__half, true, 0>(g, stream);
    } else if (a->norm_w != NULL) {
        if (bf)
            gemv_ex_launch<__nv_bfloat16, true, 2>(g, stream);
        else if (f8)
            gemv_ex_launch<__nv_fp8_e4m3, true, 2>(g, stream);
        else
            gemv_ex_launch<__half, true, 2>(g, stream);
    } else {
        if (bf)
            gemv_ex_launch<__nv_bfloat16, false, 1>(g, stream);
        else if (f8)
            gemv_ex_launch<__nv_fp8_e4m3, false, 1>(g, stream);
        else
            gemv_ex_launch<__half, false, 1>(g, stream);
    }
    KCUDA_LAUNCHED("kcuda_gemv_ex");
}
