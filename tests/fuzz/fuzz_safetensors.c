/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors reader and the Hugging Face
 * tensor name mapping.  Any input must give a status, never a crash, leak or
 * out-of-bounds read (run under ASan/UBSan).  Build: -DPD_FUZZ=ON with clang.
 *   ./fuzz_safetensors -max_total_time=60 tests/fuzz/corpus/safetensors
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_model_int.h"
#include "eng_safetensors.h"
#include "pd_log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    eng_safetensors_t *st = NULL;
    volatile uint64_t sink = 0;

    if (!quiet) {
        pd_log_set_level(PD_LOG_LEVEL_OFF);
        quiet = 1;
    }
    uint8_t *copy = malloc(size ? size : 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);
    if (eng_safetensors_open_mem(copy, size, &st) != PD_OK) {
        free(copy);
        return 0;
    }
    for (size_t i = 0; i < eng_safetensors_n_tensors(st); i++) {
        const eng_st_tensor_t *t = eng_safetensors_tensor(st, i);
        char canon[ENG_TENSOR_NAME_MAX];
        if (t->nbytes > 0)
            sink += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->nbytes - 1];
        if (eng_safetensors_find(st, t->name) != t)
            abort(); /* sorted and unique: lookup must find this one */
        for (int a = 0; a < ENG_ARCH_COUNT; a++)
            if (eng_hfconfig_map_name((eng_arch_t)a, t->name, canon) == PD_OK)
                sink += (uint8_t)canon[0];
    }
    const char *fmt = eng_safetensors_meta(st, "format");
    if (fmt != NULL)
        sink += (uint8_t)fmt[0];
    (void)sink;
    eng_safetensors_close(st);
    free(copy);
    return 0;
}
