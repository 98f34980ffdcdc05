/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader, the dequantizers and the GGUF ->
 * config path.  Any input must give a status, never a crash, leak or out-of-bounds read
 * (run under ASan/UBSan).  Build: -DPD_FUZZ=ON with clang (tests/fuzz/CMakeLists.txt).
 *   ./fuzz_gguf -max_total_time=60 tests/fuzz/corpus/gguf
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_gguf.h"
#include "eng_model_int.h"
#include "eng_quant.h"
#include "pd_log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    eng_gguf_t *g = NULL;
    volatile uint64_t sink = 0;

    if (!quiet) {
        pd_log_set_level(PD_LOG_LEVEL_OFF);
        quiet = 1;
    }
    /* an exact-size copy so any read past the end is caught */
    uint8_t *copy = malloc(size ? size : 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);
    if (eng_gguf_open_mem(copy, size, &g) != PD_OK) {
        free(copy);
        return 0;
    }
    for (size_t i = 0; i < eng_gguf_n_kv(g); i++) {
        eng_gguf_type_t type, et;
        const char *key = eng_gguf_kv_key(g, i, &type);
        const char *s;
        size_t len, n;
        uint32_t u32;
        int64_t i64;
        double f64;
        bool b;
        if (eng_gguf_get_str(g, key, &s, &len) == PD_OK && len > 0)
            sink += (uint8_t)s[len - 1];
        if (eng_gguf_get_u32(g, key, &u32) == PD_OK)
            sink += u32;
        if (eng_gguf_get_i64(g, key, &i64) == PD_OK)
            sink += (uint64_t)i64;
        if (eng_gguf_get_f64(g, key, &f64) == PD_OK)
            sink += (uint64_t)(f64 == f64);
        if (eng_gguf_get_bool(g, key, &b) == PD_OK)
            sink += b;
        if (eng_gguf_get_arr_info(g, key, &et, &n) == PD_OK && n > 0 && n < 4096) {
            int64_t *iv = malloc(n * sizeof(*iv));
            float *fv = malloc(n * sizeof(*fv));
            if (iv != NULL && fv != NULL) {
                if (eng_gguf_get_arr_i64(g, key, iv, n) == PD_OK)
                    sink += (uint64_t)iv[n - 1];
                if (eng_gguf_get_arr_f32(g, key, fv, n) == PD_OK)
                    sink += (uint64_t)(fv[n - 1] == fv[n - 1]);
            }
            free(iv);
            free(fv);
            if (eng_gguf_get_arr_str(g, key, n - 1, &s, &len) == PD_OK && len > 0)
                sink += (uint8_t)s[0];
        }
    }
    /* dequantize the first row of every tensor (bounded) */
    float row[4096];
    for (size_t i = 0; i < eng_gguf_n_tensors(g); i++) {
        const eng_gguf_tensor_info_t *t = eng_gguf_tensor(g, i);
        if (eng_dtype_can_dequant(t->type) && t->ne[0] <= 4096 && t->nbytes > 0 &&
            eng_dequant_row(t->type, t->data, row, t->ne[0]) == PD_OK)
            sink += (uint64_t)(row[0] == row[0]);
        if (eng_gguf_find_tensor(g, t->name) != t)
            abort(); /* names are unique: lookup must find this one */
    }
    /* the metadata -> config path the model loader takes */
    cJSON *json = NULL;
    if (eng_hfconfig_from_gguf(g, &json) == PD_OK) {
        eng_model_config_t cfg;
        (void)eng_hfconfig_parse(json, NULL, &cfg);
        cJSON_Delete(json);
    }
    (void)sink;
    eng_gguf_close(g);
    free(copy);
    return 0;
}
