/*
 * test_gguf.c - the GGUF reader and the dequantizers.
 *
 * A small valid GGUF is built here (every metadata value type, arrays, four tensor
 * types), then mutated: truncated at every length, counts/lengths/type tags/offsets/
 * alignment/magic/version broken one at a time, and random byte flips.  Every variant
 * is parsed from an exact-size heap copy so ASan sees any read past the end.
 * Dequantization is compared bit for bit with data made by the python gguf package
 * (tests/models/make_quant_golden.py): random blocks of each type and, when the default
 * model is present, a hash of every tensor of it.
 */
#define _GNU_SOURCE /* asprintf */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_gguf.h"
#include "eng_quant.h"
#include "pd_log.h"
#include "pd_test.h"
#include "pd_util.h"

/* ---- a GGUF writer ---- */

typedef struct {
    pd_buf_t b;
    /* offsets of fields the mutation tests poke at */
    size_t off_n_tensors, off_n_kv, off_first_key_len, off_str_val_len, off_arr_type,
        off_arr_count, off_kv_type_u8, off_bool_val, off_align_val;
    size_t off_t_ndims[4], off_t_ne0[4], off_t_type[4], off_t_offset[4];
    size_t data_start;
} gw_t;

static void w_raw(gw_t *w, const void *p, size_t n)
{
    pd_buf_append(&w->b, p, n);
}
static void w_u8(gw_t *w, uint8_t v) { w_raw(w, &v, 1); }
static void w_u32(gw_t *w, uint32_t v) { w_raw(w, &v, 4); }
static void w_u64(gw_t *w, uint64_t v) { w_raw(w, &v, 8); }
static void w_str(gw_t *w, const char *s)
{
    w_u64(w, strlen(s));
    w_raw(w, s, strlen(s));
}
static void w_key(gw_t *w, const char *k, uint32_t type)
{
    w_str(w, k);
    w_u32(w, type);
}

enum { N_KV = 19, N_T = 4 };

/* Tensors: a F32 [8,2] @0 (64 B), b Q8_0 [32,2] @64 (68 B), c Q4_1 [64] @160 (40 B),
 * d F16 [4] @224 (8 B): the data ends exactly at the end of the file. */
static const struct {
    const char *name;
    uint32_t type, n_dims;
    uint64_t ne[2];
    uint64_t offset, nbytes;
} gt[N_T] = {
    {"a", ENG_DTYPE_F32, 2, {8, 2}, 0, 64},
    {"b", ENG_DTYPE_Q8_0, 2, {32, 2}, 64, 68},
    {"c", ENG_DTYPE_Q4_1, 1, {64, 1}, 160, 40},
    {"d", ENG_DTYPE_F16, 1, {4, 1}, 224, 8},
};

static void build_gguf(gw_t *w, uint32_t version)
{
    memset(w, 0, sizeof(*w));
    pd_buf_init(&w->b);
    w_raw(w, "GGUF", 4);
    w_u32(w, version);
    w->off_n_tensors = w->b.len;
    w_u64(w, N_T);
    w->off_n_kv = w->b.len;
    w_u64(w, N_KV);

    w->off_first_key_len = w->b.len;
    w_key(w, "general.architecture", ENG_GGUF_STRING);
    w->off_str_val_len = w->b.len;
    w_str(w, "llama");
    w->off_kv_type_u8 = w->b.len + 8 + strlen("k.u8");
    w_key(w, "k.u8", ENG_GGUF_UINT8);
    w_u8(w, 200);
    w_key(w, "k.i8", ENG_GGUF_INT8);
    w_u8(w, (uint8_t)-5);
    w_key(w, "k.u16", ENG_GGUF_UINT16);
    uint16_t u16 = 65000;
    w_raw(w, &u16, 2);
    w_key(w, "k.i16", ENG_GGUF_INT16);
    int16_t i16 = -300;
    w_raw(w, &i16, 2);
    w_key(w, "k.u32", ENG_GGUF_UINT32);
    w_u32(w, 4000000000u);
    w_key(w, "k.i32", ENG_GGUF_INT32);
    w_u32(w, (uint32_t)-7);
    w_key(w, "k.f32", ENG_GGUF_FLOAT32);
    float f = 0.25f;
    w_raw(w, &f, 4);
    w_key(w, "k.bool", ENG_GGUF_BOOL);
    w->off_bool_val = w->b.len;
    w_u8(w, 1);
    w_key(w, "k.u64", ENG_GGUF_UINT64);
    w_u64(w, 1ull << 40);
    w_key(w, "k.i64", ENG_GGUF_INT64);
    w_u64(w, (uint64_t)-9);
    w_key(w, "k.f64", ENG_GGUF_FLOAT64);
    double d = -1.5;
    w_raw(w, &d, 8);
    w_key(w, "k.strs", ENG_GGUF_ARRAY);
    w->off_arr_type = w->b.len;
    w_u32(w, ENG_GGUF_STRING);
    w->off_arr_count = w->b.len;
    w_u64(w, 3);
    w_str(w, "a");
    w_str(w, "bc");
    w_str(w, "");
    w_key(w, "k.ints", ENG_GGUF_ARRAY);
    w_u32(w, ENG_GGUF_INT32);
    w_u64(w, 3);
    w_u32(w, 1);
    w_u32(w, (uint32_t)-2);
    w_u32(w, 3);
    w_key(w, "k.floats", ENG_GGUF_ARRAY);
    w_u32(w, ENG_GGUF_FLOAT32);
    w_u64(w, 2);
    f = 0.5f;
    w_raw(w, &f, 4);
    f = 1.5f;
    w_raw(w, &f, 4);
    w_key(w, "k.u8s", ENG_GGUF_ARRAY);
    w_u32(w, ENG_GGUF_UINT8);
    w_u64(w, 2);
    w_u8(w, 7);
    w_u8(w, 250);
    w_key(w, "k.bools", ENG_GGUF_ARRAY);
    w_u32(w, ENG_GGUF_BOOL);
    w_u64(w, 2);
    w_u8(w, 0);
    w_u8(w, 1);
    w_key(w, "k.empty", ENG_GGUF_ARRAY);
    w_u32(w, ENG_GGUF_UINT64);
    w_u64(w, 0);
    w_key(w, "general.alignment", ENG_GGUF_UINT32);
    w->off_align_val = w->b.len;
    w_u32(w, 32);

    for (int i = 0; i < N_T; i++) {
        w_str(w, gt[i].name);
        w->off_t_ndims[i] = w->b.len;
        w_u32(w, gt[i].n_dims);
        w->off_t_ne0[i] = w->b.len;
        for (uint32_t k = 0; k < gt[i].n_dims; k++)
            w_u64(w, gt[i].ne[k]);
        w->off_t_type[i] = w->b.len;
        w_u32(w, gt[i].type);
        w->off_t_offset[i] = w->b.len;
        w_u64(w, gt[i].offset);
    }
    while (w->b.len % 32 != 0)
        w_u8(w, 0);
    w->data_start = w->b.len;
    for (size_t i = 0; i < 232; i++)
        w_u8(w, (uint8_t)(i * 7 + 3));
    /* give b and c finite f16 scales (1.0 = 0x3c00) so dequantization is well defined */
    uint8_t *data = (uint8_t *)w->b.data + w->data_start;
    for (int blk = 0; blk < 2; blk++) {
        data[64 + blk * 34] = 0x00;
        data[64 + blk * 34 + 1] = 0x3c;
        data[160 + blk * 20] = 0x00;
        data[160 + blk * 20 + 1] = 0x38; /* 0.5 */
        data[160 + blk * 20 + 2] = 0x00;
        data[160 + blk * 20 + 3] = 0xbc; /* -1.0 */
    }
}

/* Parse an exact-size heap copy; returns the status (closing the handle). */
static pd_status_t parse_copy(const void *data, size_t size)
{
    void *copy = malloc(size ? size : 1);
    eng_gguf_t *g = NULL;
    pd_status_t st;

    memcpy(copy, data, size);
    st = eng_gguf_open_mem(copy, size, &g);
    if (st == PD_OK) {
        /* touch every tensor's first and last byte and every key: ASan checks bounds */
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < eng_gguf_n_tensors(g); i++) {
            const eng_gguf_tensor_info_t *t = eng_gguf_tensor(g, i);
            if (t->nbytes > 0)
                sink ^= ((const uint8_t *)t->data)[0] ^ ((const uint8_t *)t->data)[t->nbytes - 1];
        }
        for (size_t i = 0; i < eng_gguf_n_kv(g); i++) {
            eng_gguf_type_t type;
            const char *k = eng_gguf_kv_key(g, i, &type);
            const char *s;
            size_t len, n;
            if (type == ENG_GGUF_STRING && eng_gguf_get_str(g, k, &s, &len) == PD_OK && len)
                sink ^= (uint8_t)s[len - 1];
            if (type == ENG_GGUF_ARRAY && eng_gguf_get_arr_info(g, k, NULL, &n) == PD_OK)
                for (size_t j = 0; j < n && j < 8; j++)
                    if (eng_gguf_get_arr_str(g, k, j, &s, &len) == PD_OK && len)
                        sink ^= (uint8_t)s[len - 1];
        }
        (void)sink;
        eng_gguf_close(g);
    }
    free(copy);
    return st;
}

static pd_status_t parse_mutated(const gw_t *w, size_t off, const void *bytes, size_t n)
{
    uint8_t *copy = malloc(w->b.len);
    pd_status_t st;
    memcpy(copy, w->b.data, w->b.len);
    memcpy(copy + off, bytes, n);
    st = parse_copy(copy, w->b.len);
    free(copy);
    return st;
}

static pd_status_t mut_u32(const gw_t *w, size_t off, uint32_t v)
{
    return parse_mutated(w, off, &v, 4);
}

static pd_status_t mut_u64(const gw_t *w, size_t off, uint64_t v)
{
    return parse_mutated(w, off, &v, 8);
}

/* ---- tests ---- */

PD_TEST(test_valid_and_accessors)
{
    gw_t w;
    eng_gguf_t *g = NULL;
    const char *s;
    size_t len, n;
    uint32_t u32;
    int64_t i64;
    float f;
    double d;
    bool b;
    eng_gguf_type_t et;

    for (uint32_t version = 2; version <= 3; version++) {
        build_gguf(&w, version);
        PD_CHECK_STATUS(eng_gguf_open_mem(w.b.data, w.b.len, &g), PD_OK);
        if (g == NULL) {
            pd_buf_cleanup(&w.b);
            return;
        }
        PD_CHECK_EQ_INT(eng_gguf_version(g), version);
        PD_CHECK_EQ_INT(eng_gguf_n_kv(g), N_KV);
        PD_CHECK_EQ_INT(eng_gguf_n_tensors(g), N_T);
        PD_CHECK_EQ_INT(eng_gguf_alignment(g), 32);
        PD_CHECK_STATUS(eng_gguf_get_str(g, "general.architecture", &s, &len), PD_OK);
        PD_CHECK(len == 5 && memcmp(s, "llama", 5) == 0);
        PD_CHECK_STATUS(eng_gguf_get_u32(g, "k.u8", &u32), PD_OK);
        PD_CHECK_EQ_INT(u32, 200);
        PD_CHECK_STATUS(eng_gguf_get_i64(g, "k.i8", &i64), PD_OK);
        PD_CHECK_EQ_INT(i64, -5);
        PD_CHECK_STATUS(eng_gguf_get_u32(g, "k.i8", &u32), PD_ERR_RANGE);
        PD_CHECK_STATUS(eng_gguf_get_i64(g, "k.u16", &i64), PD_OK);
        PD_CHECK_EQ_INT(i64, 65000);
        PD_CHECK_STATUS(eng_gguf_get_i64(g, "k.i16", &i64), PD_OK);
        PD_CHECK_EQ_INT(i64, -300);
        PD_CHECK_STATUS(eng_gguf_get_u32(g, "k.u32", &u32), PD_OK);
        PD_CHECK_EQ_INT(u32, 4000000000u);
        PD_CHECK_STATUS(eng_gguf_get_i64(g, "k.i32", &i64), PD_OK);
        PD_CHECK_EQ_INT(i64, -7);
        PD_CHECK_STATUS(eng_gguf_get_f32(g, "k.f32", &f), PD_OK);
        PD_CHECK(f == 0.25f);
        PD_CHECK_STATUS(eng_gguf_get_bool(g, "k.bool", &b), PD_OK);
        PD_CHECK(b);
        PD_CHECK_STATUS(eng_gguf_get_u32(g, "k.u64", &u32), PD_ERR_RANGE);
        PD_CHECK_STATUS(eng_gguf_get_i64(g, "k.u64", &i64), PD_OK);
        PD_CHECK_EQ_INT(i64, 1ll << 40);
        PD_CHECK_STATUS(eng_gguf_get_i64(g, "k.i64", &i64), PD_OK);
        PD_CHECK_EQ_INT(i64, -9);
        PD_CHECK_STATUS(eng_gguf_get_f64(g, "k.f64", &d), PD_OK);
        PD_CHECK(d == -1.5);
        PD_CHECK_STATUS(eng_gguf_get_f64(g, "k.i32", &d), PD_OK);
        PD_CHECK(d == -7.0);
        PD_CHECK_STATUS(eng_gguf_get_str(g, "k.u32", &s, &len), PD_ERR_MISMATCH);
        PD_CHECK_STATUS(eng_gguf_get_u32(g, "general.architecture", &u32), PD_ERR_MISMATCH);
        PD_CHECK_STATUS(eng_gguf_get_u32(g, "no.such.key", &u32), PD_ERR_NOT_FOUND);

        PD_CHECK_STATUS(eng_gguf_get_arr_info(g, "k.strs", &et, &n), PD_OK);
        PD_CHECK(et == ENG_GGUF_STRING && n == 3);
        PD_CHECK_STATUS(eng_gguf_get_arr_str(g, "k.strs", 1, &s, &len), PD_OK);
        PD_CHECK(len == 2 && memcmp(s, "bc", 2) == 0);
        PD_CHECK_STATUS(eng_gguf_get_arr_str(g, "k.strs", 2, &s, &len), PD_OK);
        PD_CHECK_EQ_INT(len, 0);
        PD_CHECK_STATUS(eng_gguf_get_arr_str(g, "k.strs", 3, &s, &len), PD_ERR_RANGE);
        PD_CHECK_STATUS(eng_gguf_get_arr_str(g, "k.ints", 0, &s, &len), PD_ERR_MISMATCH);
        int32_t ints[3];
        int64_t i64s[3];
        float fl[3];
        PD_CHECK_STATUS(eng_gguf_get_arr_i32(g, "k.ints", ints, 3), PD_OK);
        PD_CHECK(ints[0] == 1 && ints[1] == -2 && ints[2] == 3);
        PD_CHECK_STATUS(eng_gguf_get_arr_i32(g, "k.ints", ints, 2), PD_ERR_LIMIT);
        PD_CHECK_STATUS(eng_gguf_get_arr_i64(g, "k.u8s", i64s, 3), PD_OK);
        PD_CHECK(i64s[0] == 7 && i64s[1] == 250);
        PD_CHECK_STATUS(eng_gguf_get_arr_i32(g, "k.bools", ints, 3), PD_OK);
        PD_CHECK(ints[0] == 0 && ints[1] == 1);
        PD_CHECK_STATUS(eng_gguf_get_arr_f32(g, "k.floats", fl, 3), PD_OK);
        PD_CHECK(fl[0] == 0.5f && fl[1] == 1.5f);
        PD_CHECK_STATUS(eng_gguf_get_arr_f32(g, "k.ints", fl, 3), PD_OK);
        PD_CHECK(fl[1] == -2.0f);
        PD_CHECK_STATUS(eng_gguf_get_arr_f32(g, "k.strs", fl, 3), PD_ERR_MISMATCH);
        PD_CHECK_STATUS(eng_gguf_get_arr_info(g, "k.empty", &et, &n), PD_OK);
        PD_CHECK(n == 0 && et == ENG_GGUF_UINT64);

        for (int i = 0; i < N_T; i++) {
            const eng_gguf_tensor_info_t *t = eng_gguf_find_tensor(g, gt[i].name);
            PD_CHECK(t != NULL);
            if (t == NULL)
                continue;
            PD_CHECK_EQ_INT(t->type, gt[i].type);
            PD_CHECK_EQ_INT(t->ne[0], gt[i].ne[0]);
            PD_CHECK_EQ_INT(t->ne[1], gt[i].ne[1]);
            PD_CHECK_EQ_INT(t->nbytes, gt[i].nbytes);
            PD_CHECK(t->data == (const uint8_t *)w.b.data + w.data_start + gt[i].offset);
        }
        PD_CHECK(eng_gguf_find_tensor(g, "zz") == NULL);
        /* dequantize the Q8_0 and Q4_1 tensors and check a few values by hand */
        const eng_gguf_tensor_info_t *tb = eng_gguf_find_tensor(g, "b");
        const eng_gguf_tensor_info_t *tc = eng_gguf_find_tensor(g, "c");
        float out[64];
        if (tb != NULL && tc != NULL) {
            const uint8_t *qb = tb->data;
            PD_CHECK_STATUS(eng_dequant_row(ENG_DTYPE_Q8_0, qb, out, 32), PD_OK);
            PD_CHECK(out[5] == (float)(int8_t)qb[2 + 5]);
            const uint8_t *qc = tc->data;
            PD_CHECK_STATUS(eng_dequant_row(ENG_DTYPE_Q4_1, qc, out, 64), PD_OK);
            PD_CHECK(out[3] == (float)(qc[4 + 3] & 15) * 0.5f - 1.0f);
            PD_CHECK(out[16 + 3] == (float)(qc[4 + 3] >> 4) * 0.5f - 1.0f);
        }
        eng_gguf_close(g);
        pd_buf_cleanup(&w.b);
    }
}

PD_TEST(test_truncated_everywhere)
{
    gw_t w;
    int bad = 0;

    build_gguf(&w, 3);
    PD_CHECK_STATUS(parse_copy(w.b.data, w.b.len), PD_OK);
    for (size_t len = 0; len < w.b.len; len++)
        if (parse_copy(w.b.data, len) != PD_ERR_FORMAT) {
            if (bad++ < 5)
                fprintf(stderr, "  truncation at %zu was not a format error\n", len);
        }
    PD_CHECK_EQ_INT(bad, 0);
    pd_buf_cleanup(&w.b);
}

PD_TEST(test_targeted_mutations)
{
    gw_t w;
    build_gguf(&w, 3);

    /* magic and version */
    PD_CHECK_STATUS(parse_mutated(&w, 0, "GGUG", 4), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u32(&w, 4, 1), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u32(&w, 4, 4), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u32(&w, 4, 0xffffffffu), PD_ERR_FORMAT);
    /* huge counts */
    PD_CHECK_STATUS(mut_u64(&w, w.off_n_tensors, UINT64_MAX), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_n_tensors, 1ull << 40), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_n_kv, UINT64_MAX), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_n_kv, N_KV + 1), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_n_tensors, N_T + 1), PD_ERR_FORMAT);
    /* huge string lengths */
    PD_CHECK_STATUS(mut_u64(&w, w.off_first_key_len, UINT64_MAX), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_first_key_len, 0), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_str_val_len, UINT64_MAX - 3), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_str_val_len, 1ull << 62), PD_ERR_FORMAT);
    /* arrays: huge count, nested arrays, bad element type */
    PD_CHECK_STATUS(mut_u64(&w, w.off_arr_count, UINT64_MAX), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_arr_count, 1ull << 61), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u32(&w, w.off_arr_type, ENG_GGUF_ARRAY), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u32(&w, w.off_arr_type, 13), PD_ERR_FORMAT);
    /* bad value type tag; bool value 2 */
    PD_CHECK_STATUS(mut_u32(&w, w.off_kv_type_u8, 77), PD_ERR_FORMAT);
    PD_CHECK_STATUS(parse_mutated(&w, w.off_bool_val, "\x02", 1), PD_ERR_FORMAT);
    /* alignment: not a power of two, zero, huge */
    PD_CHECK_STATUS(mut_u32(&w, w.off_align_val, 3), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u32(&w, w.off_align_val, 0), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u32(&w, w.off_align_val, 1u << 31), PD_ERR_FORMAT);
    /* alignment 64: tensor b's offset 64 is fine, c's 160 is not */
    PD_CHECK_STATUS(mut_u32(&w, w.off_align_val, 64), PD_ERR_FORMAT);
    /* alignment 16: still a valid file (offsets are multiples of 16), but the data
     * section moves to the next multiple of 16 so every tensor shifts: must stay in
     * bounds or fail, never crash */
    pd_status_t st16 = mut_u32(&w, w.off_align_val, 16);
    PD_CHECK(st16 == PD_OK || st16 == PD_ERR_FORMAT);
    /* tensors: bad type tags (4 and 5 were removed from ggml), n_dims, dims */
    PD_CHECK_STATUS(mut_u32(&w, w.off_t_type[0], 4), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u32(&w, w.off_t_type[0], 99), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u32(&w, w.off_t_type[1], 0xffffffffu), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u32(&w, w.off_t_ndims[0], 0), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u32(&w, w.off_t_ndims[0], 5), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_t_ne0[0], UINT64_MAX), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_t_ne0[0], 1ull << 62), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_t_ne0[0] + 8, 1ull << 62), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_t_ne0[1], 33), PD_ERR_FORMAT); /* not a block multiple */
    PD_CHECK_STATUS(mut_u64(&w, w.off_t_ne0[0], 9), PD_ERR_FORMAT);  /* overlaps b */
    /* offsets: overlapping, unaligned, past the end, wrapping */
    PD_CHECK_STATUS(mut_u64(&w, w.off_t_offset[1], 0), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_t_offset[2], 64), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_t_offset[1], 65), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_t_offset[3], 256), PD_ERR_FORMAT);
    PD_CHECK_STATUS(mut_u64(&w, w.off_t_offset[3], UINT64_MAX - 31), PD_ERR_FORMAT);
    /* duplicate tensor name and duplicate key */
    PD_CHECK_STATUS(parse_mutated(&w, w.off_t_ndims[1] - 1, "a", 1), PD_ERR_FORMAT);
    PD_CHECK_STATUS(parse_mutated(&w, w.off_kv_type_u8 - 2, "i8", 2), PD_ERR_FORMAT);
    /* an embedded NUL in a key */
    PD_CHECK_STATUS(parse_mutated(&w, w.off_kv_type_u8 - 1, "\0", 1), PD_ERR_FORMAT);
    pd_buf_cleanup(&w.b);
}

PD_TEST(test_random_flips)
{
    gw_t w;
    uint64_t rng = 0x1234567;
    int ok = 0;

    build_gguf(&w, 3);
    uint8_t *copy = malloc(w.b.len);
    for (int iter = 0; iter < 4000; iter++) {
        memcpy(copy, w.b.data, w.b.len);
        int n = 1 + (int)(rng % 4);
        for (int k = 0; k < n; k++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (size_t)(rng >> 33) % w.data_start; /* the header */
            uint8_t v = (uint8_t)(rng >> 17);
            copy[pos] = (rng & 0x10000) ? v : (uint8_t)(copy[pos] ^ (1u << (v & 7)));
        }
        size_t len = (rng & 0x100000) ? w.b.len : (size_t)((rng >> 40) % (w.b.len + 1));
        if (parse_copy(copy, len) == PD_OK)
            ok++;
    }
    free(copy);
    printf("  random flips: %d of 4000 variants still parsed\n", ok);
    pd_buf_cleanup(&w.b);
}

PD_TEST(test_f16_conversions)
{
    int bad = 0;
    /* exhaustive: every finite half survives f16 -> f32 -> f16; midpoints round to even */
    for (uint32_t h = 0; h < 0x10000; h++) {
        uint16_t hh = (uint16_t)h;
        float f = eng_f16_to_f32(hh);
        if ((h & 0x7c00) == 0x7c00) {
            if ((h & 0x3ff) != 0 && !isnan(f))
                bad++;
            if ((h & 0x3ff) == 0 && !isinf(f))
                bad++;
            continue;
        }
        if (eng_f32_to_f16(f) != hh)
            bad++;
        if ((h & 0x7fff) == 0x7bff)
            continue; /* next is inf */
        float next = eng_f16_to_f32((uint16_t)(hh + 1));
        float mid = (float)(((double)f + (double)next) / 2.0);
        uint16_t want = (h & 1) ? (uint16_t)(hh + 1) : hh;
        if (eng_f32_to_f16(mid) != want) {
            if (bad < 5)
                fprintf(stderr, "  midpoint after 0x%04x rounded to 0x%04x\n", h,
                        eng_f32_to_f16(mid));
            bad++;
        }
    }
    PD_CHECK_EQ_INT(bad, 0);
    PD_CHECK_EQ_INT(eng_f32_to_f16(65504.0f), 0x7bff);
    PD_CHECK_EQ_INT(eng_f32_to_f16(65519.0f), 0x7bff);
    PD_CHECK_EQ_INT(eng_f32_to_f16(65520.0f), 0x7c00);
    PD_CHECK_EQ_INT(eng_f32_to_f16(-INFINITY), 0xfc00);
    PD_CHECK_EQ_INT(eng_f32_to_f16(1e-10f), 0);
    PD_CHECK_EQ_INT(eng_f32_to_f16(5.960464477539063e-08f), 1);
    PD_CHECK((eng_f32_to_f16(NAN) & 0x7e00) == 0x7e00);
    PD_CHECK_EQ_INT(eng_f32_to_bf16(1.0f), 0x3f80);
    PD_CHECK_EQ_INT(eng_f32_to_bf16(1.00390625f), 0x3f80); /* tie -> even */
    PD_CHECK_EQ_INT(eng_f32_to_bf16(1.01171875f), 0x3f82); /* tie -> even (up) */
    PD_CHECK(eng_bf16_to_f32(0x4049) == 3.140625f);
    PD_CHECK((eng_f32_to_bf16(NAN) & 0x7fc0) == 0x7fc0);
}

PD_TEST(test_dtype_tables)
{
    size_t b;
    PD_CHECK_EQ_INT(eng_dtype_block_size(ENG_DTYPE_Q4_K), 256);
    PD_CHECK_EQ_INT(eng_dtype_block_bytes(ENG_DTYPE_Q6_K), 210);
    PD_CHECK_STATUS(eng_dtype_row_bytes(ENG_DTYPE_Q4_1, 64, &b), PD_OK);
    PD_CHECK_EQ_INT(b, 40);
    PD_CHECK_STATUS(eng_dtype_row_bytes(ENG_DTYPE_Q4_1, 33, &b), PD_ERR_INVAL);
    PD_CHECK_STATUS(eng_dtype_row_bytes(ENG_DTYPE_F32, INT64_MAX, &b), PD_ERR_OVERFLOW);
    PD_CHECK_STATUS(eng_dtype_row_bytes((eng_dtype_t)4, 32, &b), PD_ERR_INVAL);
    PD_CHECK(eng_dtype_from_name("bfloat16") == ENG_DTYPE_BF16);
    PD_CHECK(eng_dtype_from_name("torch.float16") == ENG_DTYPE_F16);
    PD_CHECK(eng_dtype_from_name("q8_0") == ENG_DTYPE_Q8_0);
    PD_CHECK(eng_dtype_from_name("int4") == ENG_DTYPE_INVALID);
    PD_CHECK_EQ_STR(eng_dtype_name(ENG_DTYPE_Q4_K), "Q4_K");
    float out[32];
    PD_CHECK_STATUS(eng_dequant_row(ENG_DTYPE_Q8_1, "", out, 32), PD_ERR_UNSUPPORTED);
}

static char *data_path(const char *rel)
{
    const char *root = getenv("PD_SOURCE_DIR");
    char *p = NULL;
    if (asprintf(&p, "%s/%s", root ? root : ".", rel) < 0)
        return NULL;
    return p;
}

PD_TEST(test_dequant_golden)
{
    char *path = data_path("tests/data/models/quant_golden.bin");
    char *data = NULL;
    size_t len = 0, off = 0;
    int records = 0;

    PD_CHECK_STATUS(pd_read_file(path, &data, &len), PD_OK);
    free(path);
    while (data != NULL && off + 16 <= len) {
        uint32_t hdr[4];
        memcpy(hdr, data + off, 16);
        off += 16;
        size_t raw_bytes = (size_t)hdr[1] * hdr[3], n = (size_t)hdr[1] * hdr[2];
        PD_CHECK_EQ_INT(eng_dtype_block_size((eng_dtype_t)hdr[0]), hdr[2]);
        PD_CHECK_EQ_INT(eng_dtype_block_bytes((eng_dtype_t)hdr[0]), hdr[3]);
        if (off + raw_bytes + n * 4 > len) {
            PD_CHECK(!"golden file truncated");
            break;
        }
        float *got = malloc(n * 4);
        PD_CHECK_STATUS(eng_dequant_row((eng_dtype_t)hdr[0], data + off, got, (int64_t)n), PD_OK);
        size_t diff = 0;
        for (size_t i = 0; i < n; i++)
            if (memcmp(&got[i], data + off + raw_bytes + i * 4, 4) != 0) {
                if (diff++ < 3) {
                    float want;
                    memcpy(&want, data + off + raw_bytes + i * 4, 4);
                    fprintf(stderr, "  %s element %zu: got %.9g want %.9g\n",
                            eng_dtype_name((eng_dtype_t)hdr[0]), i, got[i], want);
                }
            }
        PD_CHECK_EQ_INT(diff, 0);
        /* the f16/bf16 conversion path gives the same values rounded */
        uint16_t *h = malloc(n * 2);
        PD_CHECK_STATUS(eng_convert_row((eng_dtype_t)hdr[0], data + off, ENG_DTYPE_F16, h,
                                        (int64_t)n), PD_OK);
        size_t cdiff = 0;
        for (size_t i = 0; i < n; i++)
            cdiff += h[i] != eng_f32_to_f16(got[i]);
        PD_CHECK_EQ_INT(cdiff, 0);
        free(h);
        free(got);
        off += raw_bytes + n * 4;
        records++;
    }
    PD_CHECK_EQ_INT(records, 12);
    free(data);
}

static const char *default_model(char *buf, size_t n)
{
    const char *env = getenv("PD_MODEL_GGUF");
    if (env != NULL && env[0] != '\0')
        return env;
    snprintf(buf, n, "%s/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf",
             getenv("HOME") ? getenv("HOME") : "/root");
    return buf;
}

PD_TEST(test_default_model_dequant_matches_reference)
{
    char buf[512];
    const char *model = default_model(buf, sizeof(buf));
    eng_gguf_t *g = NULL;
    char *path = data_path("tests/data/models/smollm2_dequant_hashes.txt");
    char *hashes = NULL;
    size_t hlen;

    if (access(model, R_OK) != 0) {
        printf("  SKIP: default model %s absent\n", model);
        free(path);
        return;
    }
    pd_log_set_level(PD_LOG_LEVEL_WARN);
    double t0 = pd_now_s();
    PD_CHECK_STATUS(eng_gguf_open(model, &g), PD_OK);
    double t_open = pd_now_s() - t0;
    PD_CHECK_STATUS(pd_read_file(path, &hashes, &hlen), PD_OK);
    free(path);
    if (g == NULL || hashes == NULL) {
        eng_gguf_close(g);
        free(hashes);
        return;
    }
    size_t checked = 0, max_n = 0;
    for (size_t i = 0; i < eng_gguf_n_tensors(g); i++) {
        const eng_gguf_tensor_info_t *t = eng_gguf_tensor(g, i);
        size_t n = (size_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        max_n = n > max_n ? n : max_n;
    }
    float *vals = malloc(max_n * 4);
    t0 = pd_now_s();
    for (char *line = strtok(hashes, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        char name[128], type[16];
        unsigned long long want;
        if (line[0] == '#' || sscanf(line, "%127s %15s %llx", name, type, &want) != 3)
            continue;
        const eng_gguf_tensor_info_t *t = eng_gguf_find_tensor(g, name);
        PD_CHECK(t != NULL);
        if (t == NULL)
            continue;
        PD_CHECK_EQ_STR(eng_dtype_name(t->type), type);
        size_t n = (size_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        PD_CHECK_STATUS(eng_dequant_row(t->type, t->data, vals, (int64_t)n), PD_OK);
        uint64_t h = 0;
        for (size_t k = 0; k < n; k++) {
            uint32_t u;
            memcpy(&u, &vals[k], 4);
            h += (uint64_t)u * ((uint64_t)(k + 1) * 0x9E3779B97F4A7C15ull);
        }
        if (h != want)
            fprintf(stderr, "  %s (%s): hash %016llx, reference %016llx\n", name, type,
                    (unsigned long long)h, want);
        PD_CHECK(h == want);
        checked++;
    }
    double t_deq = pd_now_s() - t0;
    PD_CHECK_EQ_INT(checked, eng_gguf_n_tensors(g));
    printf("  default model: open %.2f ms, dequantized and hashed %zu tensors in %.0f ms\n",
           t_open * 1e3, checked, t_deq * 1e3);
    free(vals);
    free(hashes);
    eng_gguf_close(g);
}

int main(void)
{
    pd_log_set_level(PD_LOG_LEVEL_CRIT); /* the mutation tests log thousands of errors */
    PD_RUN(test_valid_and_accessors);
    PD_RUN(test_truncated_everywhere);
    PD_RUN(test_targeted_mutations);
    PD_RUN(test_random_flips);
    PD_RUN(test_f16_conversions);
    PD_RUN(test_dtype_tables);
    PD_RUN(test_dequant_golden);
    PD_RUN(test_default_model_dequant_matches_reference);
    return PD_TEST_REPORT();
}
