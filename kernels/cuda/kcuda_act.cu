/*
 * kcuda_act.cu - activations: silu/gelu(gate) * up (strided rows, so a fused gate_up
 * output works), and plain gelu / silu / relu.  Formulas as kcpu (silu = x / (1 + e^-x),
 * gelu erf form or tanh approximation).
 */
#include "kcuda_internal.cuh"
#include "kcuda_act.cuh"

__global__ void glu_kernel(const float *gate, int64_t gs, const float *up, int64_t us, float *out, int64_t T,
                           int64_t I, int act)
{
    kc_launch_dependents(); /* the decode GEMV after this waits before it reads */
    int64_t n = T * I;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = e / I, i = e % I;
        float g = gate[t * gs + i], u = up[t * us + i];
        out[e] = (act == 0 ? kc_silu(g) : kc_gelu(g, act == 2)) * u;
    }
}

__global__ void unary_kernel(const float *x, float *out, int64_t n, int act)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = x[i];
        out[i] = act == 0 ? kc_silu(v) : act == 3 ? (v > 0.0f ? v : 0.0f) : kc_gelu(v, act == 2);
    }
}

static pd_status_t glu(const char *name, const float *gate, int64_t gs, const float *up, int64_t us, float *out,
                       int64_t T, int64_t I, int act, kcuda_stream_t stream)
{
    if (T < 0 || I <= 0 || gs < I || us < I) {
        PD_LOG_ERR("%s: bad shape T=%lld I=%lld", name, (long long)T, (long long)I);
        return PD_ERR_INVAL;
    }
    if (T == 0)
        return PD_OK;
    glu_kernel<<<kcuda_grid(T * I, 256), 256, 0, stream>>>(gate, gs, up, us, out, T, I, act);
    KCUDA_LAUNCHED(name);
}

extern "C" pd_status_t kcuda_silu_and_mul(const float *gate, int64_t gate_stride, const float *up,
                                          int64_t up_stride, float *out, int64_t T, int64_t I,
                                          kcuda_stream_t stream)
{
    return glu("kcuda_silu_and_mul", gate, gate_stride, up, up_stride, out, T, I, 0, stream);
}

extern "C" pd_status_t kcuda_gelu_and_mul(const float *gate, int64_t gate_stride, const float *up,
                                          int64_t up_stride, float *out, int64_t T, int64_t I,
                                          bool approx_tanh, kcuda_stream_t stream)
{
    return glu("kcuda_gelu_and_mul", gate, gate_stride, up, up_stride, out, T, I, approx_tanh ? 2 : 1, stream);
}

static pd_status_t unary(const char *name, const float *x, float *out, int64_t n, int act, kcuda_stream_t stream)
{
    if (n < 0)
        return PD_ERR_INVAL;
    if (n == 0)
        return PD_OK;
    unary_kernel<<<kcuda_grid(n, 256), 256, 0, stream>>>(x, out, n, act);
    KCUDA_LAUNCHED(name);
}

extern "C" pd_status_t kcuda_gelu(const float *x, float *out, int64_t n, bool approx_tanh, kcuda_stream_t stream)
{
    return unary("kcuda_gelu", x, out, n, approx_tanh ? 2 : 1, stream);
}

extern "C" pd_status_t kcuda_silu(const float *x, float *out, int64_t n, kcuda_stream_t stream)
{
    return unary("kcuda_silu", x, out, n, 0, stream);
}

extern "C" pd_status_t kcuda_relu(const float *x, float *out, int64_t n, kcuda_stream_t stream)
{
    return unary("kcuda_relu", x, out, n, 3, stream);
}
