/*
 * eng_safetensors.h - a safetensors file reader over a read-only memory map.
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {"k": "v"}}, then the data section; offsets are relative to it.
 *
 * At open every entry is validated: known dtype string, non-negative integer shape of
 * at most 4 dimensions whose byte size (checked arithmetic) equals end - begin, the
 * range inside the data section, no two ranges overlapping, no duplicate names.  After
 * a successful open every accessor is safe.  Data pointers point into the map.
 *
 * Thread-safety: an opened file is immutable.
 */
#ifndef ENG_SAFETENSORS_H
#define ENG_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "eng_quant.h"
#include "pd_status.h"

typedef struct eng_safetensors eng_safetensors_t;

typedef struct eng_st_tensor {
    const char *name;     /* NUL-terminated */
    const char *dtype;    /* the file's dtype string ("BF16", "U8", ...) */
    eng_dtype_t type;     /* ENG_DTYPE_INVALID for dtypes with no eng type (U8, BOOL,
                             F8_*): present and checked, but not loadable as weights */
    int n_dims;           /* 0..4 (0 = scalar) */
    int64_t shape[4];     /* as in the file: shape[n_dims-1] fastest */
    int64_t ne[4];        /* reversed: ne[0] fastest; unused dims 1 */
    uint64_t offset;      /* relative to the data section */
    size_t nbytes;
    const void *data;     /* into the map; may be unaligned */
} eng_st_tensor_t;

/* Open and validate.  PD_ERR_NOT_FOUND / PD_ERR_IO (cannot open or map), PD_ERR_FORMAT
 * (malformed; logged with the cause), PD_ERR_NOMEM. */
pd_status_t eng_safetensors_open(const char *path, eng_safetensors_t **st_p);

/* Same over a caller-owned buffer that must outlive the handle (tests, fuzzing). */
pd_status_t eng_safetensors_open_mem(const void *data, size_t size, eng_safetensors_t **st_p);

void eng_safetensors_close(eng_safetensors_t *st);

size_t eng_safetensors_n_tensors(const eng_safetensors_t *st);
/* Tensor i (sorted by name) or NULL. */
const eng_st_tensor_t *eng_safetensors_tensor(const eng_safetensors_t *st, size_t i);
/* Tensor by name or NULL (binary search). */
const eng_st_tensor_t *eng_safetensors_find(const eng_safetensors_t *st, const char *name);
/* A "__metadata__" string value, or NULL. */
const char *eng_safetensors_meta(const eng_safetensors_t *st, const char *key);
const char *eng_safetensors_path(const eng_safetensors_t *st); /* "" for memory */

#endif /* ENG_SAFETENSORS_H */
