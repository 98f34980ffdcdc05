/*
 * test_disagg_params.c - kv_transfer_params as eng_oai_parse accepts and refuses them
 * (vLLM's NixlConnector shapes only), and the role checks of eng_disagg_parse_config.
 */
#include <stdlib.h>
#include <string.h>

#include "eng_disagg.h"
#include "eng_openai.h"
#include "pd_test.h"

static pd_status_t parse(const char *kv, eng_oai_req_t *r, eng_oai_err_t *err)
{
    char body[2048];
    eng_oai_limits_t lim;
    eng_oai_limits_init(&lim);
    lim.vocab_size = 1000;
    snprintf(body, sizeof(body), "{\"prompt\": \"hi\", \"max_tokens\": 1, \"kv_transfer_params\": %s}", kv);
    memset(err, 0, sizeof(*err));
    return eng_oai_parse(ENG_OAI_COMPLETION, body, strlen(body), &lim, r, err);
}

PD_TEST(test_prefill_shape)
{
    eng_oai_req_t r;
    eng_oai_err_t err;
    PD_CHECK_STATUS(parse("{\"do_remote_decode\": true, \"do_remote_prefill\": false, \"remote_engine_id\": null, "
                          "\"remote_block_ids\": null, \"remote_host\": null, \"remote_port\": null}", &r, &err),
                    PD_OK);
    PD_CHECK(r.kv.do_remote_decode && !r.kv.do_remote_prefill);
    PD_CHECK(r.kv.remote_block_ids == NULL && r.kv.remote_host == NULL);
    eng_oai_req_cleanup(&r);
    PD_CHECK_STATUS(parse("null", &r, &err), PD_OK);
    PD_CHECK(!r.kv.do_remote_decode && !r.kv.do_remote_prefill);
    eng_oai_req_cleanup(&r);
}

PD_TEST(test_decode_shape)
{
    eng_oai_req_t r;
    eng_oai_err_t err;
    PD_CHECK_STATUS(parse("{\"do_remote_prefill\": true, \"do_remote_decode\": false, \"remote_block_ids\": [5, 0, 7],"
                          " \"remote_engine_id\": \"e1\", \"remote_request_id\": \"cmpl-1\", \"remote_host\": \"::1\","
                          " \"remote_port\": 14579, \"tp_size\": 1}", &r, &err),
                    PD_OK);
    PD_CHECK(r.kv.do_remote_prefill);
    PD_CHECK_EQ_INT(r.kv.n_remote_block_ids, 3);
    PD_CHECK_EQ_INT(r.kv.remote_block_ids[0], 5);
    PD_CHECK_EQ_INT(r.kv.remote_block_ids[2], 7);
    PD_CHECK_EQ_INT(r.kv.remote_port, 14579);
    PD_CHECK_EQ_STR(r.kv.remote_host, "::1");
    PD_CHECK_EQ_STR(r.kv.remote_engine_id, "e1");
    PD_CHECK_EQ_STR(r.kv.remote_request_id, "cmpl-1");
    eng_oai_req_cleanup(&r);
}

PD_TEST(test_refused_shapes)
{
    static const char *const bad[] = {
        "[]",
        "{\"do_remote_decode\": true, \"evil\": 1}",
        "{\"do_remote_decode\": true, \"do_remote_prefill\": true}",
        "{\"do_remote_decode\": \"yes\"}",
        "{\"do_remote_decode\": true, \"remote_host\": \"10.0.0.1\"}",
        "{\"do_remote_decode\": true, \"tp_size\": 2}",
        "{\"do_remote_prefill\": true, \"remote_block_ids\": [1], \"remote_engine_id\": \"e\", "
        "\"remote_request_id\": \"r\", \"remote_port\": 1}",
        "{\"do_remote_prefill\": true, \"remote_block_ids\": [-1], \"remote_engine_id\": \"e\", "
        "\"remote_request_id\": \"r\", \"remote_host\": \"h\", \"remote_port\": 1}",
        "{\"do_remote_prefill\": true, \"remote_block_ids\": [1.5], \"remote_engine_id\": \"e\", "
        "\"remote_request_id\": \"r\", \"remote_host\": \"h\", \"remote_port\": 1}",
        "{\"do_remote_prefill\": true, \"remote_block_ids\": [1], \"remote_engine_id\": \"e\", "
        "\"remote_request_id\": \"r\", \"remote_host\": \"h\", \"remote_port\": 65536}",
        "{\"do_remote_prefill\": true, \"remote_block_ids\": [1], \"remote_engine_id\": \"\", "
        "\"remote_request_id\": \"r\", \"remote_host\": \"h\", \"remote_port\": 1}",
        "{\"do_remote_prefill\": true, \"remote_block_ids\": {}, \"remote_engine_id\": \"e\", "
        "\"remote_request_id\": \"r\", \"remote_host\": \"h\", \"remote_port\": 1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        eng_oai_req_t r;
        eng_oai_err_t err;
        pd_status_t st = parse(bad[i], &r, &err);
        PD_CHECK(st != PD_OK);
        PD_CHECK_EQ_INT(err.status, 400);
        if (st == PD_OK) {
            fprintf(stderr, "  accepted: %s\n", bad[i]);
            eng_oai_req_cleanup(&r);
        } else if (i > 0 && strncmp(err.message, "kv_transfer_params", 18) != 0) {
            fprintf(stderr, "  message does not name kv_transfer_params: %s\n", err.message);
            PD_CHECK(0);
        }
    }
}

PD_TEST(test_roles)
{
    kvx_config_t cfg;
    char err[512];
    PD_CHECK_STATUS(eng_disagg_parse_config(PD_ROLE_PREFILL,
                                            "{\"kv_connector\": \"UcxConnector\", \"kv_role\": \"kv_producer\"}",
                                            &cfg, err, sizeof(err)),
                    PD_OK);
    kvx_config_cleanup(&cfg);
    PD_CHECK_STATUS(eng_disagg_parse_config(PD_ROLE_PREFILL,
                                            "{\"kv_connector\": \"UcxConnector\", \"kv_role\": \"kv_both\"}",
                                            &cfg, err, sizeof(err)),
                    PD_ERR_INVAL);
    PD_CHECK(strstr(err, "kv_producer") != NULL);
    kvx_config_cleanup(&cfg);
    PD_CHECK_STATUS(eng_disagg_parse_config(PD_ROLE_DECODE,
                                            "{\"kv_connector\": \"NixlConnector\", \"kv_role\": \"kv_both\"}",
                                            &cfg, err, sizeof(err)),
                    PD_OK);
    kvx_config_cleanup(&cfg);
    PD_CHECK_STATUS(eng_disagg_parse_config(PD_ROLE_DECODE,
                                            "{\"kv_connector\": \"UcxConnector\", \"kv_role\": \"kv_producer\"}",
                                            &cfg, err, sizeof(err)),
                    PD_ERR_INVAL);
    PD_CHECK(strstr(err, "pdserve-decode") != NULL);
    kvx_config_cleanup(&cfg);
    PD_CHECK_STATUS(eng_disagg_parse_config(PD_ROLE_DECODE, "{\"kv_role\": \"kv_consumer\"}", &cfg, err, sizeof(err)),
                    PD_ERR_INVAL);
    PD_CHECK(strchr(err, '\n') == NULL);
    kvx_config_cleanup(&cfg);
}

int main(void)
{
    PD_RUN(test_prefill_shape);
    PD_RUN(test_decode_shape);
    PD_RUN(test_refused_shapes);
    PD_RUN(test_roles);
    return PD_TEST_REPORT();
}
