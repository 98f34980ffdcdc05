/*
 * fuzz_template.c - libFuzzer target for the chat template engine: the input is template
 * source; it is compiled and, when it compiles, rendered against a fixed chat context
 * with small limits.  Any crash, leak, sanitizer report or hang is a bug: errors must come
 * back as statuses.
 *
 * Build (from the source root, with clang):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon -Iengine \
 *     tests/fuzz/fuzz_template.c engine/eng_template.c engine/eng_jinja_parse.c \
 *     common/pd_util.c common/pd_log.c common/pd_status.c -lcjson -lm -lpthread -o fuzz_template
 *   ./fuzz_template -max_total_time=60 -max_len=4096
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "eng_template.h"
#include "pd_log.h"

static const char CTX[] =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"sys\"},"
    " {\"role\": \"user\", \"content\": \"h\\u00e9llo <think>x</think> 42\"},"
    " {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"type\": \"function\","
    "   \"function\": {\"name\": \"f\", \"arguments\": {\"a\": 1, \"b\": [1.5, null, true]}}}]},"
    " {\"role\": \"tool\", \"content\": \"{\\\"r\\\": 2}\"}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {}}}],"
    " \"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\","
    " \"n\": 3, \"f\": 2.5, \"s\": \"abc\", \"d\": {\"k\": \"v\"}, \"l\": [3, 1, 2]}";

static cJSON *ctx_g;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    eng_template_t *tpl = NULL;
    char *src = malloc(size + 1);
    if (src == NULL)
        return 0;
    memcpy(src, data, size);
    src[size] = '\0';
    if (ctx_g == NULL) {
        ctx_g = cJSON_Parse(CTX);
        pd_log_set_level(PD_LOG_LEVEL_OFF);
    }
    if (eng_template_compile(src, &tpl, err, sizeof(err)) == PD_OK) {
        eng_template_limits_t lim = {.max_steps = 20000, .max_output = 1 << 16, .max_memory = 8 << 20,
                                     .max_depth = 16};
        pd_buf_t out = {0};
        eng_template_render(tpl, ctx_g, &lim, &out, err, sizeof(err));
        pd_buf_cleanup(&out);
        eng_template_destroy(tpl);
    }
    free(src);
    return 0;
}
