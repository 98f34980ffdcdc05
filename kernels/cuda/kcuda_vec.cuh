/*
 * kcuda_vec.cuh - four already-rounded values stored with one vector store (the
 * element-wise kernels' 16-byte f32 loads end in 16 / 8 / 4-byte stores of f32, 16-bit
 * or fp8 values).  The caller guarantees the alignment: d 4 * sizeof(T) bytes aligned.
 * Rounding stays the caller's (kc_from_f32), so a vector path stores the same bits as
 * the scalar one.  Internal to kernels/cuda.
 */
#ifndef KCUDA_VEC_CUH
#define KCUDA_VEC_CUH

#include <stdint.h>
#include <string.h>

#include <cuda_runtime.h>

/* the bits of one 1-, 2- or 4-byte value, zero-extended */
template <int N> struct kc_uint_of;
template <> struct kc_uint_of<1> { typedef uint8_t type; };
template <> struct kc_uint_of<2> { typedef uint16_t type; };
template <> struct kc_uint_of<4> { typedef uint32_t type; };

template <typename T> __device__ __forceinline__ uint32_t kc_bits(T v)
{
    typename kc_uint_of<sizeof(T)>::type b;
    memcpy(&b, &v, sizeof(b));
    return (uint32_t)b;
}

template <int N> struct kc_store4_impl;

template <> struct kc_store4_impl<4> {
    template <typename T> static __device__ __forceinline__ void run(T *d, T a, T b, T c, T e)
    {
        *(uint4 *)d = make_uint4(kc_bits(a), kc_bits(b), kc_bits(c), kc_bits(e));
    }
};

template <> struct kc_store4_impl<2> {
    template <typename T> static __device__ __forceinline__ void run(T *d, T a, T b, T c, T e)
    {
        *(uint2 *)d = make_uint2(kc_bits(a) | kc_bits(b) << 16, kc_bits(c) | kc_bits(e) << 16);
    }
};

template <> struct kc_store4_impl<1> {
    template <typename T> static __device__ __forceinline__ void run(T *d, T a, T b, T c, T e)
    {
        *(uint32_t *)d = kc_bits(a) | kc_bits(b) << 8 | kc_bits(c) << 16 | kc_bits(e) << 24;
    }
};

/* d[0..3] = a, b, c, e in one store (d aligned to 4 * sizeof(T)) */
template <typename T> __device__ __forceinline__ void kc_store4(T *d, T a, T b, T c, T e)
{
    kc_store4_impl<sizeof(T)>::run(d, a, b, c, e);
}

/* 16 bytes of f32 from 16-byte aligned memory */
__device__ __forceinline__ float4 kc_load4(const float *p)
{
    return *(const float4 *)p;
}

static inline bool kc_aligned(const void *p, size_t n)
{
    return ((uintptr_t)p & (n - 1)) == 0;
}

#endif /* KCUDA_VEC_CUH */
