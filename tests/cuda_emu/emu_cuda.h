/*
 * emu_cuda.h - a CPU emulation of the CUDA execution model, enough to run the element-wise
 * kcuda kernels on a machine without a GPU and check their index math, vector widths,
 * guards and barriers (not their numerics: no fast-math, no FMA contraction, glibc's
 * sincos).  Inserted by gen_emu.py into a copy of kcuda_internal.cuh after its includes.
 * Each CUDA thread of a CTA is a ucontext with its own stack; __syncthreads and each
 * shuffle yield to a scheduler that runs every live thread to its next sync point, one
 * CTA at a time (so __shared__ can be a function-static).  Kernels must reach the same
 * sequence of sync points in every thread, as on the GPU.
 */
#include <ucontext.h>
#include <algorithm>
#include <functional>
#include <vector>
#include <math.h>
#include <string.h>
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __forceinline__
#define __forceinline__ inline
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __shared__
#define __shared__ static

static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static ucontext_t emu_main;
static std::vector<ucontext_t> emu_ctx;
static std::vector<char> emu_stacks;
static std::vector<char> emu_done;
static int emu_cur;
static std::function<void()> *emu_fn;
static const void *emu_last_kernel;
static long emu_launches;
enum { EMU_STACK = 64 * 1024 };
#define EMU_DYN_SMEM (128 * 1024) /* bytes of an `extern __shared__` array (gen_emu.py) */

static void emu_yield(void) { swapcontext(&emu_ctx[emu_cur], &emu_main); }
static void emu_tramp(void) { (*emu_fn)(); emu_done[emu_cur] = 1; }
/* __syncthreads: a real barrier (the threads of a CTA may reach it after different
 * numbers of warp-level sync points, as warps whose loops ran a different number of
 * times do): wait until every live thread of the CTA has arrived */
static int emu_bar_arrived, emu_bar_gen, emu_live;
static inline void __syncthreads(void)
{
    const int gen = emu_bar_gen;
    if (++emu_bar_arrived == emu_live) {
        emu_bar_arrived = 0;
        emu_bar_gen++;
        emu_yield();
        return;
    }
    while (emu_bar_gen == gen)
        emu_yield();
}
/* Warp-level operations: every lane of a warp reaches the same sequence of them (as the
 * kernels guarantee), so a lane publishes, yields (the scheduler runs every other thread
 * to its next sync point), reads its partners' values and yields again before anyone
 * publishes the next ones. */
static uint64_t emu_xbuf[1024];
template <typename T> static inline T emu_shfl(T v, int src_thread)
{
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "32- and 64-bit shuffles");
    int t = emu_cur;
    memcpy(&emu_xbuf[t], &v, sizeof(T));
    emu_yield();
    T r;
    memcpy(&r, &emu_xbuf[src_thread], sizeof(T));
    emu_yield();
    return r;
}
template <typename T> static inline T __shfl_xor_sync(unsigned, T v, int o) { return emu_shfl(v, emu_cur ^ o); }
template <typename T> static inline T __shfl_sync(unsigned, T v, int src)
{
    return emu_shfl(v, (emu_cur & ~31) | (src & 31));
}
static inline void __syncwarp(unsigned = 0xffffffffu) { emu_yield(); }
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s)
{
    const uint64_t v = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++)
        r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
/* mma.sync.m16n8k16.row.col f32 += f16 x f16: lane (g = lane / 4, q = lane % 4) holds
 * A[g][2q, 2q+1] (a0), A[g+8][..] (a1), A[g][2q+8, 2q+9] (a2), A[g+8][..] (a3),
 * B[2q, 2q+1][g] (b0), B[2q+8, 2q+9][g] (b1), C[g][2q, 2q+1] (c0, c1), C[g+8][..] (c2, c3) */
static uint32_t emu_mbuf[1024][6];
static inline float emu_h(uint32_t w, int hi)
{
    __half_raw r;
    r.x = (unsigned short)(hi ? w >> 16 : w & 0xffff);
    return __half2float(__half(r));
}
static inline void emu_mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                uint32_t b1)
{
    const int t = emu_cur, w0 = t & ~31, g = (t & 31) >> 2, q = t & 3;
    const uint32_t mine[6] = {a0, a1, a2, a3, b0, b1};
    memcpy(emu_mbuf[t], mine, sizeof(mine));
    emu_yield();
    float A[2][16], B[16][2]; /* rows g, g + 8 of A; columns 2q, 2q + 1 of B */
    for (int l = 0; l < 4; l++) {
        const uint32_t *f = emu_mbuf[w0 + g * 4 + l];
        for (int h = 0; h < 2; h++) {
            A[0][2 * l + h] = emu_h(f[0], h), A[1][2 * l + h] = emu_h(f[1], h);
            A[0][2 * l + 8 + h] = emu_h(f[2], h), A[1][2 * l + 8 + h] = emu_h(f[3], h);
        }
        for (int j = 0; j < 2; j++) {
            const uint32_t *fb = emu_mbuf[w0 + (2 * q + j) * 4 + l];
            for (int h = 0; h < 2; h++)
                B[2 * l + h][j] = emu_h(fb[4], h), B[2 * l + 8 + h][j] = emu_h(fb[5], h);
        }
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            float acc = c[2 * i + j];
            for (int k = 0; k < 16; k++)
                acc += A[i][k] * B[k][j];
            c[2 * i + j] = acc;
        }
    emu_yield();
}
/* ldmatrix.sync.m8n8.x4.b16 (trans: .trans): lanes 8m .. 8m + 7 give the row addresses
 * of matrix m; lane l receives of each matrix m the 16-bit pair (row l / 4, columns
 * 2 (l % 4), + 1), transposed: (rows 2 (l % 4), + 1, column l / 4) */
static const void *emu_lbuf[1024];
static inline void emu_ldmatrix_x4(uint32_t (&r)[4], const void *row, bool trans)
{
    const int t = emu_cur, w0 = t & ~31, l = t & 31;
    emu_lbuf[t] = row;
    emu_yield();
    for (int m = 0; m < 4; m++) {
        uint16_t lo, hi;
        if (!trans) {
            const uint16_t *rp = (const uint16_t *)emu_lbuf[w0 + 8 * m + l / 4];
            lo = rp[2 * (l % 4)], hi = rp[2 * (l % 4) + 1];
        } else {
            lo = ((const uint16_t *)emu_lbuf[w0 + 8 * m + 2 * (l % 4)])[l / 4];
            hi = ((const uint16_t *)emu_lbuf[w0 + 8 * m + 2 * (l % 4) + 1])[l / 4];
        }
        r[m] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
    emu_yield();
}
static inline int atomicOr(int *p, int v) { int o = *p; *p |= v; return o; }
static inline int atomicMax(int *p, int v) { int o = *p; if (v > o) *p = v; return o; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
using std::max;
using std::min;
/* the C++ form of the runtime call (cuda_runtime.h has it for nvcc only); nothing to set */
template <typename F> static inline cudaError_t cudaFuncSetAttribute(F *, enum cudaFuncAttribute, int)
{
    return cudaSuccess;
}
template <typename T> static inline T __ldg(const T *p) { return *p; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
/* the correctly rounded operations (g++ without fast math on x86-64 rounds each one) */
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }

/* the runtime calls KCUDA_LAUNCHED makes after a launch (nothing can fail here) */
extern "C" cudaError_t cudaGetLastError(void) { return cudaSuccess; }
extern "C" const char *cudaGetErrorString(cudaError_t) { return "emu"; }

template <typename K, typename... A> static void emu_run(K k, dim3 grid, dim3 block, A... args)
{
    std::function<void()> f = [&]() { k(args...); };
    emu_fn = &f;
    emu_last_kernel = (const void *)k;
    emu_launches++;
    const int n = (int)(block.x * block.y * block.z);
    if ((int)emu_ctx.size() < n) {
        emu_ctx.resize(n);
        emu_stacks.resize((size_t)n * EMU_STACK);
        emu_done.resize(n);
    }
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx = make_uint3(bx, by, bz);
                for (int i = 0; i < n; i++) {
                    getcontext(&emu_ctx[i]);
                    emu_ctx[i].uc_stack.ss_sp = &emu_stacks[(size_t)i * EMU_STACK];
                    emu_ctx[i].uc_stack.ss_size = EMU_STACK;
                    emu_ctx[i].uc_link = &emu_main;
                    makecontext(&emu_ctx[i], emu_tramp, 0);
                    emu_done[i] = 0;
                }
                int left = n;
                emu_live = n, emu_bar_arrived = 0;
                while (left > 0)
                    for (int i = 0; i < n; i++) {
                        if (emu_done[i])
                            continue;
                        emu_cur = i;
                        threadIdx = make_uint3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
                        swapcontext(&emu_main, &emu_ctx[i]);
                        if (emu_done[i])
                            left--, emu_live--;
                    }
            }
}

template <typename K> struct emu_launcher {
    K k;
    dim3 g, b;
    template <typename... A> void operator()(A... args) const { emu_run(k, g, b, args...); }
};
template <typename K, typename G, typename B, typename... R> static emu_launcher<K> emu_launch(K k, G g, B b, R...)
{
    return emu_launcher<K>{k, dim3(g), dim3(b)};
}
