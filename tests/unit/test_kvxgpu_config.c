/*
 * test_kvxgpu_config.c - the NCCL connector's extra-config keys (nccl_force_network,
 * nccl_ipc_copy, nccl_chunk_bytes): defaults, values, and one-line errors naming the
 * key.  CPU only; the GPU paths themselves are tested by test_cuda_kvx.
 */
#include <string.h>

#include "kvx.h"
#include "pd_log.h"
#include "pd_test.h"

static pd_status_t parse(const char *extra, kvx_config_t *cfg, char *err, size_t len)
{
    char json[512];

    snprintf(json, sizeof(json),
             "{\"kv_connector\":\"NcclConnector\",\"kv_role\":\"kv_both\","
             "\"kv_connector_extra_config\":{%s}}", extra);
    return kvx_config_parse(json, cfg, err, len);
}

PD_TEST(defaults)
{
    kvx_config_t cfg;
    char err[256] = "";

    PD_CHECK_STATUS(parse("", &cfg, err, sizeof(err)), PD_OK);
    PD_CHECK(!cfg.nccl_force_network);
    PD_CHECK_EQ_INT(cfg.nccl_ipc_copy, KVX_IPC_COPY_KERNEL);
    PD_CHECK_EQ_INT(cfg.nccl_chunk_bytes, 64 << 20);
    kvx_config_cleanup(&cfg);
}

PD_TEST(values)
{
    kvx_config_t cfg;
    char err[256] = "";

    PD_CHECK_STATUS(parse("\"nccl_force_network\":true,\"nccl_ipc_copy\":\"batch\","
                          "\"nccl_chunk_bytes\":262144", &cfg, err, sizeof(err)), PD_OK);
    PD_CHECK(cfg.nccl_force_network);
    PD_CHECK_EQ_INT(cfg.nccl_ipc_copy, KVX_IPC_COPY_BATCH);
    PD_CHECK_EQ_INT(cfg.nccl_chunk_bytes, 262144);
    kvx_config_cleanup(&cfg);
    PD_CHECK_STATUS(parse("\"nccl_ipc_copy\":\"memcpy\"", &cfg, err, sizeof(err)), PD_OK);
    PD_CHECK_EQ_INT(cfg.nccl_ipc_copy, KVX_IPC_COPY_MEMCPY);
    kvx_config_cleanup(&cfg);
}

PD_TEST(errors_name_the_key)
{
    static const char *const bad[] = {
        "\"nccl_force_network\":1", "\"nccl_force_network\":\"yes\"", "\"nccl_ipc_copy\":\"fast\"",
        "\"nccl_ipc_copy\":2", "\"nccl_chunk_bytes\":100", "\"nccl_chunk_bytes\":-1",
        "\"nccl_chunk_bytes\":4e9",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        kvx_config_t cfg;
        char err[256] = "";
        char key[64];
        const char *q = strchr(bad[i] + 1, '"');
        snprintf(key, sizeof(key), "%.*s", (int)(q - bad[i] - 1), bad[i] + 1);
        PD_CHECK_STATUS(parse(bad[i], &cfg, err, sizeof(err)), PD_ERR_INVAL);
        if (strstr(err, key) == NULL)
            fprintf(stderr, "  %s: error does not name %s: %s\n", bad[i], key, err);
        PD_CHECK(strstr(err, key) != NULL);
        kvx_config_cleanup(&cfg);
    }
}

int main(void)
{
    pd_log_set_level(PD_LOG_LEVEL_ERR);
    PD_RUN(defaults);
    PD_RUN(values);
    PD_RUN(errors_name_the_key);
    return PD_TEST_REPORT();
}
