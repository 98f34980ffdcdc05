/*
 * kcuda_act.cuh - the activation functions of the GLU kernels, shared by kcuda_act.cu and
 * the fused decode GEMV (kcuda_gemv.cu), so both compute silu/gelu with one formula
 * (silu = x / (1 + e^-x); gelu erf form or tanh approximation, as kcpu).
 * Internal to kernels/cuda.
 */
#ifndef KCUDA_ACT_CUH
#define KCUDA_ACT_CUH

__device__ __forceinline__ float kc_silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float kc_gelu(float x, bool approx)
{
    if (approx) {
        const float k = 0.7978845608028654f;
        return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
    }
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

/* act 0: silu, 1: gelu (erf), 2: gelu (tanh approximation) */
__device__ __forceinline__ float kc_glu_act(float g, int act)
{
    return act == 0 ? kc_silu(g) : kc_gelu(g, act == 2);
}

#endif /* KCUDA_ACT_CUH */
