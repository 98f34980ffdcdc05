/*
 * emu_overrides.h - CPU stand-ins for the kcuda device functions written in inline PTX,
 * which g++ cannot compile.  gen_emu.py replaces each definition that starts with the
 * text after a "//@ " line with the section below that line (brace-matched, a struct's
 * closing ";" included).  Semantics kept: loads read the bytes, cp.async copies at once
 * (zeros for an invalid source; commit and wait have nothing left to do), mma.sync and
 * ldmatrix are the warp-collectives emu_mma16816 / emu_ldmatrix_x4 of emu_cuda.h, the
 * e4m3 pair conversion the host-callable intrinsic.
 */
//@ __device__ __forceinline__ void ld16(
__device__ __forceinline__ void ld16(const void *p, uint32_t *r, bool) { memcpy(r, p, 16); }
//@ __device__ __forceinline__ void ld8(
__device__ __forceinline__ void ld8(const void *p, uint32_t *r, bool) { memcpy(r, p, 8); }
//@ __device__ __forceinline__ void ld4(
__device__ __forceinline__ void ld4(const void *p, uint32_t *r, bool) { memcpy(r, p, 4); }
//@ template <int WORDS> __device__ __forceinline__ void dec_cp_async(
template <int WORDS> __device__ __forceinline__ void dec_cp_async(uint32_t *dst, const void *src, bool valid)
{
    if (valid)
        memcpy(dst, src, 4 * WORDS);
    else
        memset(dst, 0, 4 * WORDS);
}
//@ __device__ __forceinline__ void dec_cp_commit()
__device__ __forceinline__ void dec_cp_commit() {}
//@ template <int N> __device__ __forceinline__ void dec_cp_wait()
template <int N> __device__ __forceinline__ void dec_cp_wait() {}
//@ __device__ __forceinline__ void dec_mma(
__device__ __forceinline__ void dec_mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                        uint32_t b1)
{
    emu_mma16816(c, a0, a1, a2, a3, b0, b1);
}
//@ template <int NW> struct dec_h2<__nv_fp8_e4m3, NW> {
template <int NW> struct dec_h2<__nv_fp8_e4m3, NW> {
    static void run(const uint32_t *r, uint32_t *h)
    {
        for (int i = 0; i < NW; i++) {
            __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(r[i] & 0xffffu), __NV_E4M3);
            __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(r[i] >> 16), __NV_E4M3);
            h[2 * i] = (uint32_t)lo.x | ((uint32_t)lo.y << 16);
            h[2 * i + 1] = (uint32_t)hi.x | ((uint32_t)hi.y << 16);
        }
    }
};
//@ __device__ __forceinline__ uint32_t fa_saddr(
/* 32-bit "shared addresses": offsets from the first address asked for (every __shared__
 * array is a static of this program, within 2 GB of it) */
static char *emu_saddr_base;
__device__ __forceinline__ uint32_t fa_saddr(const void *p)
{
    if (emu_saddr_base == nullptr)
        emu_saddr_base = (char *)p;
    return (uint32_t)((const char *)p - emu_saddr_base);
}
static inline char *emu_sptr(uint32_t a) { return emu_saddr_base + (int32_t)a; }
//@ __device__ __forceinline__ void fa_cp16(
__device__ __forceinline__ void fa_cp16(uint32_t dst, const void *src, bool valid)
{
    if (valid)
        memcpy(emu_sptr(dst), src, 16);
    else
        memset(emu_sptr(dst), 0, 16);
}
//@ __device__ __forceinline__ void fa_commit(
__device__ __forceinline__ void fa_commit(void) {}
//@ template <int N> __device__ __forceinline__ void fa_wait(
template <int N> __device__ __forceinline__ void fa_wait(void) {}
//@ __device__ __forceinline__ void fa_ldsm4(
__device__ __forceinline__ void fa_ldsm4(uint32_t (&r)[4], uint32_t addr) { emu_ldmatrix_x4(r, emu_sptr(addr), false); }
//@ __device__ __forceinline__ void fa_ldsm4_t(
__device__ __forceinline__ void fa_ldsm4_t(uint32_t (&r)[4], uint32_t addr) { emu_ldmatrix_x4(r, emu_sptr(addr), true); }
//@ __device__ __forceinline__ void fa_mma(
__device__ __forceinline__ void fa_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    emu_mma16816(c, a[0], a[1], a[2], a[3], b0, b1);
}
//@ template <bool NA> __device__ __forceinline__ uint4 ldw(
template <bool NA> __device__ __forceinline__ uint4 ldw(const uint4 *p) { return *p; }
