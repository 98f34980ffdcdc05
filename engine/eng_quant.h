/*
 * eng_quant.h - tensor element types (ggml numbering) and their row layouts,
 * dequantization and float conversions.
 *
 * Types use ggml's numbers so a GGUF type tag maps to eng_dtype_t directly.  A
 * quantized type stores a row of n elements as n / block_size blocks of
 * block_bytes bytes; n must be a multiple of the block size.  The dequantization
 * routines are bit-exact with ggml's reference (dequantize_row_* in ggml-quants.c,
 * the same arithmetic in the same float order), which tests compare against the
 * python gguf package.
 *
 * Everything here is pure and thread-safe.
 */
#ifndef ENG_QUANT_H
#define ENG_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pd_status.h"

typedef enum {
    ENG_DTYPE_F32 = 0,
    ENG_DTYPE_F16 = 1,
    ENG_DTYPE_Q4_0 = 2,
    ENG_DTYPE_Q4_1 = 3,
    ENG_DTYPE_Q5_0 = 6,
    ENG_DTYPE_Q5_1 = 7,
    ENG_DTYPE_Q8_0 = 8,
    ENG_DTYPE_Q8_1 = 9,
    ENG_DTYPE_Q2_K = 10,
    ENG_DTYPE_Q3_K = 11,
    ENG_DTYPE_Q4_K = 12,
    ENG_DTYPE_Q5_K = 13,
    ENG_DTYPE_Q6_K = 14,
    ENG_DTYPE_Q8_K = 15,
    ENG_DTYPE_I8 = 24,
    ENG_DTYPE_I16 = 25,
    ENG_DTYPE_I32 = 26,
    ENG_DTYPE_I64 = 27,
    ENG_DTYPE_F64 = 28,
    ENG_DTYPE_BF16 = 30,
    ENG_DTYPE_COUNT = 40, /* bound for tables; not a type */
    ENG_DTYPE_INVALID = -1
} eng_dtype_t;

/* Block sizes of the quantized layouts (elements per block). */
#define ENG_QK4_0 32
#define ENG_QK4_1 32
#define ENG_QK8_0 32
#define ENG_QK_K 256

/* Storage layouts, matching ggml byte for byte (f16 fields are IEEE half bits). */
typedef struct { uint16_t d; uint8_t qs[ENG_QK4_0 / 2]; } eng_block_q4_0_t;           /* 18 B */
typedef struct { uint16_t d; uint16_t m; uint8_t qs[ENG_QK4_1 / 2]; } eng_block_q4_1_t; /* 20 B */
typedef struct { uint16_t d; int8_t qs[ENG_QK8_0]; } eng_block_q8_0_t;                   /* 34 B */
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[ENG_QK_K / 2];
} eng_block_q4_k_t; /* 144 B */
typedef struct {
    uint8_t ql[ENG_QK_K / 2];
    uint8_t qh[ENG_QK_K / 4];
    int8_t scales[ENG_QK_K / 16];
    uint16_t d;
} eng_block_q6_k_t; /* 210 B */

/* Name as ggml spells it ("F32", "Q4_1", ...); "?" for unknown values.  Never NULL. */
const char *eng_dtype_name(eng_dtype_t type);

/* Parse a ggml or torch/safetensors name: "F32", "float32", "F16", "BF16", "Q8_0", ...
 * (case-insensitive).  Returns ENG_DTYPE_INVALID when unknown. */
eng_dtype_t eng_dtype_from_name(const char *name);

/* True for values this project knows the layout of (block size and bytes are defined). */
bool eng_dtype_valid(int type);

/* True for types eng_dequant_row() supports: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
 * Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (F64/I8..I64 are not weights: false). */
bool eng_dtype_can_dequant(eng_dtype_t type);

/* True for block-quantized types (Q*). */
bool eng_dtype_is_quantized(eng_dtype_t type);

/* Elements per block (1 for plain types) and bytes per block; 0 for unknown types. */
int64_t eng_dtype_block_size(eng_dtype_t type);
size_t eng_dtype_block_bytes(eng_dtype_t type);

/* Bytes of a row of n elements.  PD_ERR_INVAL for unknown types, negative n or n not a
 * multiple of the block size; PD_ERR_OVERFLOW when the product does not fit. */
pd_status_t eng_dtype_row_bytes(eng_dtype_t type, int64_t n, size_t *bytes_p);

/* Dequantize one row of n elements (n a multiple of the block size) from src (any
 * alignment) into dst.  PD_ERR_UNSUPPORTED for types without a dequantizer,
 * PD_ERR_INVAL for a bad n.  Bit-exact with ggml's reference. */
pd_status_t eng_dequant_row(eng_dtype_t type, const void *src, float *dst, int64_t n);

/* Scalar conversions (round to nearest even, NaN kept NaN; as ggml's reference). */
float eng_f16_to_f32(uint16_t h);
uint16_t eng_f32_to_f16(float f);
float eng_bf16_to_f32(uint16_t h);
uint16_t eng_f32_to_bf16(float f);

/* Bulk conversions of n values. */
void eng_f32_to_f16_row(const float *src, uint16_t *dst, size_t n);
void eng_f32_to_bf16_row(const float *src, uint16_t *dst, size_t n);

/* Convert a row of n elements of type src_type into dst_type (F32, F16 or BF16).
 * Quantized sources are dequantized first.  PD_ERR_UNSUPPORTED when either side is not
 * supported. */
pd_status_t eng_convert_row(eng_dtype_t src_type, const void *src, eng_dtype_t dst_type,
                            void *dst, int64_t n);

#endif /* ENG_QUANT_H */
