/*
 * kcuda_gemv.cu - y[M,N] = x[M,K] . W[N,K]^T for small M (decode, M <= 8) with bf16/f16
 * weights and f32 activations read as they are (no rounding of x, no scratch): one warp
 * per output column n streams its weight row with 16-byte loads and keeps M partial
 * sums; the weights are read exactly once, which is the whole cost of a decode GEMM.
 * cuBLAS's GEMV-shaped calls reach well under the copy bandwidth (see docs/cuda.md).
 */
#include "kcuda_internal.cuh"

#include <stdlib.h>

template <typename WT> __device__ __forceinline__ void kc_unpack8(uint4 u, float *f);
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

/* One warp computes NR consecutive output columns (NR weight rows streamed side by side,
 * so each x chunk read serves NR rows); 8 warps per CTA. */
template <typename WT, int MT, int NR>
__global__ void __launch_bounds__(256) gemv_kernel(const float *x, int M, int64_t K, int64_t ldx, const WT *w,
                                                   int64_t N, float *y, int64_t ldy)
{
    const int lane = threadIdx.x & 31;
    const int64_t n0 = ((int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * NR;
    if (n0 >= N)
        return;
    const int64_t chunks = K / 8;
    const uint4 *wr[NR];
    for (int r = 0; r < NR; r++)
        wr[r] = (const uint4 *)(w + (n0 + r < N ? n0 + r : n0) * K);
    float acc[NR][MT];
    for (int r = 0; r < NR; r++)
        for (int m = 0; m < MT; m++)
            acc[r][m] = 0.0f;
#pragma unroll 2
    for (int64_t c = lane; c < chunks; c += 32) {
        uint4 u[NR];
        for (int r = 0; r < NR; r++)
            u[r] = __ldg(wr[r] + c);
        for (int m = 0; m < MT; m++) {
            if (m < M) {
                const float4 *xr = (const float4 *)(x + m * ldx + c * 8);
                float4 a = __ldg(xr), b = __ldg(xr + 1);
                for (int r = 0; r < NR; r++) {
                    float wf[8];
                    kc_unpack8<WT>(u[r], wf);
                    acc[r][m] += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w + wf[4] * b.x +
                                 wf[5] * b.y + wf[6] * b.z + wf[7] * b.w;
                }
            }
        }
    }
    for (int r = 0; r < NR; r++)
        for (int m = 0; m < MT; m++) {
            float s = kc_warp_sum(acc[r][m]);
            if (lane == 0 && m < M && n0 + r < N)
                y[m * ldy + n0 + r] = s;
        }
}

extern "C" bool kcuda_gemv_ok(int64_t M, int64_t K, int64_t ldx, const void *x, const void *w, kcpu_dtype_t wtype)
{
    return M >= 1 && M <= 8 && K % 8 == 0 && ldx % 4 == 0 && ((uintptr_t)x & 15) == 0 && ((uintptr_t)w & 15) == 0 &&
           (wtype == KCPU_DTYPE_BF16 || wtype == KCPU_DTYPE_F16);
}

template <typename WT, int NR>
static void gemv_launch_nr(const float *x, int M, int64_t K, int64_t ldx, const void *w, int64_t N, float *y,
                           int64_t ldy, cudaStream_t s)
{
    unsigned g = (unsigned)((N + 8 * NR - 1) / (8 * NR));
    const WT *wt = (const WT *)w;
    if (M == 1)
        gemv_kernel<WT, 1, NR><<<g, 256, 0, s>>>(x, M, K, ldx, wt, N, y, ldy);
    else if (M == 2)
        gemv_kernel<WT, 2, NR><<<g, 256, 0, s>>>(x, M, K, ldx, wt, N, y, ldy);
    else if (M <= 4)
        gemv_kernel<WT, 4, NR><<<g, 256, 0, s>>>(x, M, K, ldx, wt, N, y, ldy);
    else
        gemv_kernel<WT, 8, NR><<<g, 256, 0, s>>>(x, M, K, ldx, wt, N, y, ldy);
}

/* Rows per warp: 2 by default (PD_CUDA_GEMV_ROWS=1|2|4 for A/B runs). */
static int gemv_rows(void)
{
    static int rows = 0;
    if (rows == 0) {
        const char *e = getenv("PD_CUDA_GEMV_ROWS");
        int v = e ? atoi(e) : 2;
        rows = (v == 1 || v == 4) ? v : 2;
    }
    return rows;
}

template <typename WT>
static void gemv_launch(const float *x, int M, int64_t K, int64_t ldx, const void *w, int64_t N, float *y,
                        int64_t ldy, cudaStream_t s)
{
    int nr = gemv_rows();
    if (nr == 1)
        gemv_launch_nr<WT, 1>(x, M, K, ldx, w, N, y, ldy, s);
    else if (nr == 4)
        gemv_launch_nr<WT, 4>(x, M, K, ldx, w, N, y, ldy, s);
    else
        gemv_launch_nr<WT, 2>(x, M, K, ldx, w, N, y, ldy, s);
}

extern "C" pd_status_t kcuda_gemv(const float *x, int64_t M, int64_t K, int64_t ldx, const void *w,
                                  kcpu_dtype_t wtype, int64_t N, float *y, int64_t ldy, kcuda_stream_t stream)
{
    if (!kcuda_gemv_ok(M, K, ldx, x, w, wtype) || N <= 0 || ldy < N || N > (int64_t)INT32_MAX * 8) {
        PD_LOG_ERR("kcuda_gemv: shape not supported (M=%lld K=%lld ldx=%lld %s)", (long long)M, (long long)K,
                   (long long)ldx, kcpu_dtype_name(wtype));
        return PD_ERR_INVAL;
    }
    if (wtype == KCPU_DTYPE_BF16)
        gemv_launch<__nv_bfloat16>(x, (int)M, K, ldx, w, N, y, ldy, stream);
    else
        gemv_launch<__half>(x, (int)M, K, ldx, w, N, y, ldy, stream);
    KCUDA_LAUNCHED("kcuda_gemv");
}
