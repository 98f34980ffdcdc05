/*
 * test_safetensors.c - the safetensors reader on a valid file built here and on broken
 * variants: truncated at every length, malformed headers (bad JSON, dtypes, shapes,
 * offsets, overlaps, duplicates, sizes that overflow), random byte flips.  Every
 * variant is parsed from an exact-size heap copy so ASan catches reads past the end.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_safetensors.h"
#include "pd_log.h"
#include "pd_test.h"
#include "pd_util.h"

#define GOOD_HEADER                                                                   \
    "{\"__metadata__\":{\"format\":\"pt\"},"                                           \
    "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"               \
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"               \
    "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[32,40]},"                 \
    "\"u\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[40,43]}}"
#define GOOD_DATA 43

/* u64 length + header + data_len bytes of a pattern, in an exact-size heap buffer. */
static uint8_t *build(const char *header, size_t data_len, size_t *len_p)
{
    size_t hl = strlen(header), len = 8 + hl + data_len;
    uint8_t *p = malloc(len);
    uint64_t h64 = hl;
    memcpy(p, &h64, 8);
    memcpy(p + 8, header, hl);
    for (size_t i = 0; i < data_len; i++)
        p[8 + hl + i] = (uint8_t)(i * 13 + 1);
    *len_p = len;
    return p;
}

static pd_status_t parse_copy(const uint8_t *data, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    eng_safetensors_t *st = NULL;
    pd_status_t status;

    memcpy(copy, data, len);
    status = eng_safetensors_open_mem(copy, len, &st);
    if (status == PD_OK) {
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < eng_safetensors_n_tensors(st); i++) {
            const eng_st_tensor_t *t = eng_safetensors_tensor(st, i);
            if (t->nbytes > 0)
                sink ^= ((const uint8_t *)t->data)[0] ^ ((const uint8_t *)t->data)[t->nbytes - 1];
        }
        (void)sink;
        eng_safetensors_close(st);
    }
    free(copy);
    return status;
}

static pd_status_t parse_header(const char *header, size_t data_len)
{
    size_t len;
    uint8_t *p = build(header, data_len, &len);
    pd_status_t st = parse_copy(p, len);
    free(p);
    return st;
}

PD_TEST(test_valid)
{
    size_t len;
    uint8_t *p = build(GOOD_HEADER, GOOD_DATA, &len);
    eng_safetensors_t *st = NULL;

    PD_CHECK_STATUS(eng_safetensors_open_mem(p, len, &st), PD_OK);
    if (st != NULL) {
        PD_CHECK_EQ_INT(eng_safetensors_n_tensors(st), 4);
        const eng_st_tensor_t *w = eng_safetensors_find(st, "w");
        PD_CHECK(w != NULL);
        if (w != NULL) {
            PD_CHECK(w->type == ENG_DTYPE_F32);
            PD_CHECK_EQ_INT(w->n_dims, 2);
            PD_CHECK_EQ_INT(w->shape[0], 2);
            PD_CHECK_EQ_INT(w->ne[0], 3); /* fastest first */
            PD_CHECK_EQ_INT(w->ne[1], 2);
            PD_CHECK_EQ_INT(w->nbytes, 24);
            PD_CHECK(w->data == p + 8 + strlen(GOOD_HEADER));
        }
        const eng_st_tensor_t *b = eng_safetensors_find(st, "b");
        PD_CHECK(b != NULL && b->type == ENG_DTYPE_BF16 && b->ne[0] == 4 && b->nbytes == 8);
        const eng_st_tensor_t *s = eng_safetensors_find(st, "s");
        PD_CHECK(s != NULL && s->n_dims == 0 && s->nbytes == 8 && s->type == ENG_DTYPE_I64);
        const eng_st_tensor_t *u = eng_safetensors_find(st, "u");
        PD_CHECK(u != NULL && u->type == ENG_DTYPE_INVALID && strcmp(u->dtype, "U8") == 0);
        PD_CHECK(eng_safetensors_find(st, "zz") == NULL);
        PD_CHECK_EQ_STR(eng_safetensors_meta(st, "format"), "pt");
        PD_CHECK(eng_safetensors_meta(st, "nope") == NULL);
        /* sorted by name */
        PD_CHECK_EQ_STR(eng_safetensors_tensor(st, 0)->name, "b");
        PD_CHECK(eng_safetensors_tensor(st, 4) == NULL);
        eng_safetensors_close(st);
    }
    /* trailing bytes after the last tensor are tolerated */
    PD_CHECK_STATUS(parse_header(GOOD_HEADER, GOOD_DATA + 5), PD_OK);
    free(p);
}

PD_TEST(test_truncated_everywhere)
{
    size_t len;
    uint8_t *p = build(GOOD_HEADER, GOOD_DATA, &len);
    int bad = 0;

    for (size_t l = 0; l < len; l++)
        if (parse_copy(p, l) != PD_ERR_FORMAT && bad++ < 5)
            fprintf(stderr, "  truncation at %zu was not a format error\n", l);
    PD_CHECK_EQ_INT(bad, 0);
    free(p);
}

PD_TEST(test_bad_headers)
{
    static const char *bad[] = {
        "not json",
        "[1,2,3]",
        "{\"w\":{\"dtype\":\"F12\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
        "\"data_offsets\":[0,4]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,4]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[40,44]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1152921504606846976,"
        "1152921504606846980]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"v\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
        "{\"__metadata__\":[1],\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        "{\"w\":[1,2]}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}",
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":null}}",
    };
    for (size_t i = 0; i < PD_ARRAY_SIZE(bad); i++) {
        pd_status_t st = parse_header(bad[i], 40);
        if (st != PD_ERR_FORMAT)
            fprintf(stderr, "  header %zu gave %s: %s\n", i, pd_status_name(st), bad[i]);
        PD_CHECK_STATUS(st, PD_ERR_FORMAT);
    }
    /* a header length past the file, huge, or tiny */
    size_t len;
    uint8_t *p = build(GOOD_HEADER, GOOD_DATA, &len);
    uint64_t vals[] = {len - 7, UINT64_MAX, 1ull << 40, 0, 1};
    for (size_t i = 0; i < PD_ARRAY_SIZE(vals); i++) {
        memcpy(p, &vals[i], 8);
        PD_CHECK_STATUS(parse_copy(p, len), PD_ERR_FORMAT);
    }
    free(p);
    /* an empty object is a valid file with no tensors */
    PD_CHECK_STATUS(parse_header("{}", 0), PD_OK);
}

PD_TEST(test_random_flips)
{
    size_t len;
    uint8_t *p = build(GOOD_HEADER, GOOD_DATA, &len);
    uint8_t *copy = malloc(len);
    uint64_t rng = 42;
    int ok = 0;

    for (int iter = 0; iter < 4000; iter++) {
        memcpy(copy, p, len);
        int n = 1 + (int)(rng % 3);
        for (int k = 0; k < n; k++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (size_t)(rng >> 33) % (8 + strlen(GOOD_HEADER));
            uint8_t v = (uint8_t)(rng >> 17);
            copy[pos] = (rng & 0x10000) ? (uint8_t)("0123456789[]{},:\"-.e"[v % 20]) : v;
        }
        if (parse_copy(copy, len) == PD_OK)
            ok++;
    }
    printf("  random flips: %d of 4000 variants still parsed\n", ok);
    free(copy);
    free(p);
}

int main(void)
{
    pd_log_set_level(PD_LOG_LEVEL_CRIT);
    PD_RUN(test_valid);
    PD_RUN(test_truncated_everywhere);
    PD_RUN(test_bad_headers);
    PD_RUN(test_random_flips);
    return PD_TEST_REPORT();
}
