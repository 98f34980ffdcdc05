/*
 * eng_textscan.h - the two scans the output parsers (eng_toolcall.c, eng_reasoning.c)
 * run over model text that is not NUL-terminated: find a marker, and measure how much of
 * a marker the text may be cut in the middle of (a stream holds that tail back until the
 * next delta decides it).
 */
#ifndef ENG_TEXTSCAN_H
#define ENG_TEXTSCAN_H

#include <stddef.h>
#include <string.h>

/* The first occurrence of needle in s[0..n), or NULL. */
static inline const char *eng_text_find(const char *s, size_t n, const char *needle)
{
    const size_t m = strlen(needle);
    for (size_t i = 0; m <= n && i <= n - m; i++)
        if (memcmp(s + i, needle, m) == 0)
            return s + i;
    return NULL;
}

/* The length of the longest tail of s[0..n) that is a proper prefix of marker (0: none). */
static inline size_t eng_text_partial(const char *s, size_t n, const char *marker)
{
    const size_t m = strlen(marker);
    for (size_t k = m - 1 < n ? m - 1 : n; k > 0; k--)
        if (memcmp(s + n - k, marker, k) == 0)
            return k;
    return 0;
}

#endif /* ENG_TEXTSCAN_H */
