/*
 * fuzz_oai_request.c - libFuzzer target for eng_oai_parse(), the validation of
 * /v1/completions and /v1/chat/completions bodies (untrusted bytes from the network).
 * The first byte picks the kind (even: completions, odd: chat), the rest is the body.
 * Any input must give PD_OK or an error with a 4xx/5xx status and a message, never a
 * crash, leak or out-of-bounds access (ASan/UBSan); accepted requests must satisfy the
 * limits they were parsed under.  Build: -DPD_FUZZ=ON with clang
 * (tests/fuzz/CMakeLists.txt).
 *   ./fuzz_oai_request -max_total_time=60 -dict=tests/fuzz/oai.dict tests/fuzz/corpus/oai
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "eng_openai.h"
#include "pd_log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    eng_oai_limits_t lim;
    eng_oai_req_t r;
    eng_oai_err_t err;
    eng_oai_kind_t kind;
    char *body;

    if (!quiet) {
        pd_log_set_level(PD_LOG_LEVEL_OFF);
        quiet = 1;
    }
    if (size < 1)
        return 0;
    kind = (data[0] & 1) ? ENG_OAI_CHAT : ENG_OAI_COMPLETION;
    /* an exact-size copy (not NUL-terminated: the parser takes a length) */
    body = malloc(size - 1 ? size - 1 : 1);
    if (body == NULL)
        return 0;
    memcpy(body, data + 1, size - 1);
    eng_oai_limits_init(&lim);
    lim.vocab_size = 49152;
    lim.max_logprobs = 5;
    if (eng_oai_parse(kind, body, size - 1, &lim, &r, &err) == PD_OK) {
        /* what was accepted is within the limits */
        if (r.params.n > lim.max_n || r.logprobs > lim.max_logprobs || r.params.n_stop > lim.max_stop)
            abort();
        if (kind == ENG_OAI_COMPLETION) {
            if (r.n_prompts < 1 || r.prompts == NULL)
                abort();
            for (int i = 0; i < r.n_prompts; i++)
                for (int k = 0; k < r.prompts[i].n_ids; k++)
                    if (r.prompts[i].ids[k] < 0 || r.prompts[i].ids[k] >= lim.vocab_size)
                        abort();
        } else if (r.messages == NULL) {
            abort();
        }
        for (int i = 0; i < r.n_bad_words; i++)
            if (strlen(r.bad_words[i]) > (size_t)lim.max_stop_len)
                abort();
        eng_oai_req_cleanup(&r);
    } else if (err.status < 400 || err.status > 599 || err.message[0] == '\0') {
        abort();
    }
    free(body);
    return 0;
}
