/*
 * emu_test.h - what the emulated test programs share besides the emulation itself: a
 * xorshift64 generator seeded per program (#define EMU_SEED before the include), frand()
 * in [-1, 1) on a 2^-23 grid and irand(n) in [0, n).
 */
#ifndef EMU_TEST_H
#define EMU_TEST_H
#include <stdint.h>

static uint64_t rng = EMU_SEED;
static float frand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}
static inline int irand(int n) { frand(); return (int)((rng >> 20) % (uint64_t)n); }
#endif
