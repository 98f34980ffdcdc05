/*
 * eng_unicode.h - the Unicode facts the tokenizer needs: UTF-8 decoding, the regex
 * classes \p{L}, \p{N}, \s, canonical combining classes and NFC normalisation.
 *
 * The tables come from scripts/gen_unicode_tables.py (Python's unicodedata); see
 * ENG_UNI_VERSION.  Everything here is pure and thread-safe.
 */
#ifndef ENG_UNICODE_H
#define ENG_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#include "pd_util.h"

/* Code point classes (bit flags returned by eng_uni_flags). */
#define ENG_UNI_L 1u      /* general category L* */
#define ENG_UNI_N 2u      /* general category N* */
#define ENG_UNI_WS 4u     /* White_Space property (the regex \s) */
#define ENG_UNI_NFC 8u    /* NFC may change a string holding this code point */

/* Unicode version of the generated tables ("14.0.0"). */
extern const char *const ENG_UNI_VERSION;

/* Class flags of a code point (0 for anything above U+10FFFF). */
unsigned eng_uni_flags(uint32_t cp);

/* Canonical combining class of a code point. */
unsigned eng_uni_ccc(uint32_t cp);

/*
 * Decode one UTF-8 sequence at s[0..n) (n >= 1).  Returns its length in bytes and
 * stores the code point in *cp_p.  Malformed input (bad lead, truncated, overlong,
 * surrogate, > U+10FFFF) gives length 1 and *cp_p = ENG_UNI_INVALID, so a caller
 * always makes progress and keeps the raw byte.
 */
#define ENG_UNI_INVALID 0xFFFFFFFFu
size_t eng_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp_p);

/* Encode a code point (<= U+10FFFF) as UTF-8 into out[4]; returns the length. */
size_t eng_utf8_encode(uint32_t cp, uint8_t out[4]);

/* 1 when s[0..n) is entirely valid UTF-8, 0 otherwise. */
int eng_utf8_valid(const uint8_t *s, size_t n);

/*
 * Append s[0..n) to out, replacing every maximal invalid subsequence with U+FFFD the
 * way Rust's String::from_utf8_lossy (and Python's errors="replace") do.
 */
pd_status_t eng_utf8_append_lossy(pd_buf_t *out, const uint8_t *s, size_t n);

/*
 * 1 when s[0..n) is certainly in NFC (quick check: no code point that NFC could touch),
 * 0 when eng_uni_nfc must run.
 */
int eng_uni_nfc_quick(const uint8_t *s, size_t n);

/*
 * Append the NFC normalisation of s[0..n) to out.  Malformed UTF-8 bytes are copied
 * through unchanged and act as starters.  Returns PD_ERR_NOMEM on allocation failure
 * (out then holds a partial result).
 */
pd_status_t eng_uni_nfc(const uint8_t *s, size_t n, pd_buf_t *out);

#endif /* ENG_UNICODE_H */
