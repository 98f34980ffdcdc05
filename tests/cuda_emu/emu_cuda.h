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

static void emu_yield(void) { swapcontext(&emu_ctx[emu_cur], &emu_main); }
static void emu_tramp(void) { (*emu_fn)(); emu_done[emu_cur] = 1; }
static inline void __syncthreads(void) { emu_yield(); }
static float emu_xbuf[1024];
static inline float __shfl_xor_sync(unsigned, float v, int o)
{
    int t = emu_cur;
    emu_xbuf[t] = v;
    emu_yield();
    float r = emu_xbuf[t ^ o];
    emu_yield();
    return r;
}
static inline int atomicOr(int *p, int v) { int o = *p; *p |= v; return o; }
static inline int atomicMax(int *p, int v) { int o = *p; if (v > o) *p = v; return o; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }

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
                while (left > 0)
                    for (int i = 0; i < n; i++) {
                        if (emu_done[i])
                            continue;
                        emu_cur = i;
                        threadIdx = make_uint3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
                        swapcontext(&emu_main, &emu_ctx[i]);
                        if (emu_done[i])
                            left--;
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
