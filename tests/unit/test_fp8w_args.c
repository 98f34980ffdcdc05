/*
 * test_fp8w_args.c - --quantization fp8 in the node's argument checks (no GPU needed):
 * "fp8" (long and -q forms) passes pd_serve_args_parse and reaches the engine config as
 * fp8_weights; methods still missing are refused with "not supported yet".  The refusal
 * on the CPU backend at start-up is checked through the binary (tests/fp8w).
 */
#include <stdio.h>
#include <string.h>

#include "eng_engine.h"
#include "pd_serve_args.h"
#include "pd_test.h"

static pd_status_t full_parse(pd_serve_args_t *a, char *err, size_t errlen, const char *const *words)
{
    char *argv[64];
    int argc = 0;
    pd_cli_action_t action;
    argv[argc++] = "pdserve-decode";
    for (; *words; words++)
        argv[argc++] = (char *)*words;
    argv[argc] = NULL;
    return pd_serve_args_parse(PD_ROLE_DECODE, argc, argv, a, &action, err, errlen);
}
#define FULL(a, err, ...) full_parse((a), (err), sizeof(err), (const char *const[]){__VA_ARGS__, NULL})

PD_TEST(test_fp8_accepted)
{
    pd_serve_args_t a;
    char err[512] = "";
    PD_CHECK_STATUS(FULL(&a, err, "--quantization", "fp8"), PD_OK);
    PD_CHECK_EQ_STR(a.quantization, "fp8");
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "-q", "fp8"), PD_OK);
    PD_CHECK_EQ_STR(a.quantization, "fp8");
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "-q", "gguf"), PD_OK);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
}

PD_TEST(test_others_refused)
{
    pd_serve_args_t a;
    char err[512] = "";
    PD_CHECK_STATUS(FULL(&a, err, "--quantization", "awq"), PD_ERR_INVAL);
    PD_CHECK(strstr(err, "not supported yet") != NULL);
    PD_CHECK(strstr(err, "fp8") != NULL);
    printf("  -q awq: %s\n", err);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "--quantization", "fbgemm_fp8"), PD_ERR_INVAL);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
}

PD_TEST(test_engine_cfg_default)
{
    eng_engine_cfg_t c;
    eng_engine_cfg_init(&c);
    PD_CHECK(!c.fp8_weights);
}

int main(void)
{
    PD_RUN(test_fp8_accepted);
    PD_RUN(test_others_refused);
    PD_RUN(test_engine_cfg_default);
    return PD_TEST_REPORT();
}
