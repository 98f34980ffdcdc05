/*
 * eng_gguf.h - a GGUF (v2 and v3) reader over a read-only memory map.
 *
 * The whole header is validated when the file is opened: every count, string length,
 * array length, type tag, tensor dimension, offset and the alignment are checked with
 * overflow-safe arithmetic against the file size, and tensor data ranges must lie in
 * the data section without overlapping.  After a successful open every accessor is
 * safe on any input.  Tensor data pointers point into the map (no copies).
 *
 * Strings in GGUF are not NUL-terminated: accessors hand out pointer + length.
 * Numeric metadata may sit at any alignment in the file: accessors copy values out.
 *
 * Thread-safety: an opened eng_gguf_t is immutable; concurrent readers are fine.
 */
#ifndef ENG_GGUF_H
#define ENG_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_quant.h"
#include "pd_status.h"

typedef struct eng_gguf eng_gguf_t;

/* GGUF metadata value types (gguf_type). */
typedef enum {
    ENG_GGUF_UINT8 = 0,
    ENG_GGUF_INT8 = 1,
    ENG_GGUF_UINT16 = 2,
    ENG_GGUF_INT16 = 3,
    ENG_GGUF_UINT32 = 4,
    ENG_GGUF_INT32 = 5,
    ENG_GGUF_FLOAT32 = 6,
    ENG_GGUF_BOOL = 7,
    ENG_GGUF_STRING = 8,
    ENG_GGUF_ARRAY = 9,
    ENG_GGUF_UINT64 = 10,
    ENG_GGUF_INT64 = 11,
    ENG_GGUF_FLOAT64 = 12,
    ENG_GGUF_TYPE_COUNT
} eng_gguf_type_t;

/* One tensor as described by the file. */
typedef struct eng_gguf_tensor_info {
    const char *name;   /* NUL-terminated copy */
    eng_dtype_t type;
    int n_dims;         /* 1..4 */
    int64_t ne[4];      /* ne[0] fastest; unused dims are 1 */
    uint64_t offset;    /* relative to the data section */
    size_t nbytes;
    const void *data;   /* into the map */
} eng_gguf_tensor_info_t;

/* Open and validate a GGUF file (mmap).  PD_ERR_IO (cannot open/map), PD_ERR_FORMAT
 * (bad magic, version, or any malformed field; the log says which and where),
 * PD_ERR_UNSUPPORTED (a tensor type this reader does not know), PD_ERR_NOMEM. */
pd_status_t eng_gguf_open(const char *path, eng_gguf_t **gguf_p);

/* Same over a caller-owned buffer (tests, fuzzing); the buffer must outlive the handle. */
pd_status_t eng_gguf_open_mem(const void *data, size_t size, eng_gguf_t **gguf_p);

void eng_gguf_close(eng_gguf_t *gguf);

/* "u32", "string", "array", ...; "?" for unknown values. */
const char *eng_gguf_type_name(eng_gguf_type_t type);

uint32_t eng_gguf_version(const eng_gguf_t *gguf);
size_t eng_gguf_alignment(const eng_gguf_t *gguf);
const char *eng_gguf_path(const eng_gguf_t *gguf); /* "" for memory buffers */

/* ---- metadata ---- */
size_t eng_gguf_n_kv(const eng_gguf_t *gguf);
/* Key i (NUL-terminated) and its type; NULL when i is out of range. */
const char *eng_gguf_kv_key(const eng_gguf_t *gguf, size_t i, eng_gguf_type_t *type_p);
/* Index of a key or -1. */
int64_t eng_gguf_find_key(const eng_gguf_t *gguf, const char *key);
/* Type of a key's value; PD_ERR_NOT_FOUND when absent. */
pd_status_t eng_gguf_kv_type(const eng_gguf_t *gguf, const char *key, eng_gguf_type_t *type_p);

/* Scalar getters.  PD_ERR_NOT_FOUND when absent; PD_ERR_MISMATCH when the value has an
 * incompatible type; PD_ERR_RANGE when an integer does not fit the requested type.
 * Any integer type converts to the integer getters; get_f32/f64 accept floats and
 * integers; get_bool accepts BOOL and integers (nonzero = true). */
pd_status_t eng_gguf_get_str(const eng_gguf_t *gguf, const char *key, const char **str_p,
                             size_t *len_p);
/* A malloc'd NUL-terminated copy (caller frees). */
pd_status_t eng_gguf_get_str_dup(const eng_gguf_t *gguf, const char *key, char **str_p);
pd_status_t eng_gguf_get_u32(const eng_gguf_t *gguf, const char *key, uint32_t *val_p);
pd_status_t eng_gguf_get_i64(const eng_gguf_t *gguf, const char *key, int64_t *val_p);
pd_status_t eng_gguf_get_f32(const eng_gguf_t *gguf, const char *key, float *val_p);
pd_status_t eng_gguf_get_f64(const eng_gguf_t *gguf, const char *key, double *val_p);
pd_status_t eng_gguf_get_bool(const eng_gguf_t *gguf, const char *key, bool *val_p);

/* Arrays: element type and length.  PD_ERR_MISMATCH when the key is not an array. */
pd_status_t eng_gguf_get_arr_info(const eng_gguf_t *gguf, const char *key,
                                  eng_gguf_type_t *elem_type_p, size_t *n_p);
/* Element i of a string array as pointer + length (O(1): an index is built at open). */
pd_status_t eng_gguf_get_arr_str(const eng_gguf_t *gguf, const char *key, size_t i,
                                 const char **str_p, size_t *len_p);
/* Copy a whole integer array (any integer or bool element type) converted to int32 /
 * int64 into dst (capacity n_dst elements; must be >= the array length).  PD_ERR_RANGE
 * if a value does not fit, PD_ERR_LIMIT if n_dst is too small. */
pd_status_t eng_gguf_get_arr_i32(const eng_gguf_t *gguf, const char *key, int32_t *dst,
                                 size_t n_dst);
pd_status_t eng_gguf_get_arr_i64(const eng_gguf_t *gguf, const char *key, int64_t *dst,
                                 size_t n_dst);
/* Copy a float array (FLOAT32/FLOAT64 or integer elements) converted to float. */
pd_status_t eng_gguf_get_arr_f32(const eng_gguf_t *gguf, const char *key, float *dst,
                                 size_t n_dst);

/* ---- tensors ---- */
size_t eng_gguf_n_tensors(const eng_gguf_t *gguf);
/* Tensor i (borrowed) or NULL when out of range. */
const eng_gguf_tensor_info_t *eng_gguf_tensor(const eng_gguf_t *gguf, size_t i);
/* Tensor by name or NULL. */
const eng_gguf_tensor_info_t *eng_gguf_find_tensor(const eng_gguf_t *gguf, const char *name);

#endif /* ENG_GGUF_H */
