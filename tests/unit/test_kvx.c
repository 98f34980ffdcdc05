/*
 * test_kvx.c - kvxfer pieces without a network: --kv-transfer-config parsing and
 * validation, the control-message codec (round trips, truncation, corruption,
 * authentication), the compatibility hash, and connector plugins from a .so built
 * by the test.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvx_msg.h"
#include "test_kvx_common.h"

/* ---- config ---- */
PD_TEST(config_defaults)
{
    kvx_config_t cfg;
    char err[256];

    PD_CHECK_STATUS(kvx_config_parse("{}", &cfg, err, sizeof(err)), PD_OK);
    PD_CHECK_EQ_INT(cfg.connector, KVX_CONN_NONE);
    PD_CHECK_EQ_INT(cfg.role, KVX_ROLE_NONE);
    PD_CHECK_EQ_STR(cfg.kv_ip, "127.0.0.1");
    PD_CHECK_EQ_INT(cfg.kv_port, 14579);
    PD_CHECK(cfg.kv_buffer_size == 1e9);
    PD_CHECK_EQ_INT(cfg.kv_buffer_device, KVX_MEM_CUDA);
    PD_CHECK_EQ_INT(cfg.kv_parallel_size, 1);
    PD_CHECK_EQ_INT(cfg.kv_rank, -1);
    PD_CHECK_EQ_INT(cfg.load_failure_policy, KVX_FAIL_RECOMPUTE);
    PD_CHECK_EQ_INT(strlen(cfg.engine_id), 36); /* a uuid */
    PD_CHECK_EQ_STR(cfg.extra_config_json, "{}");
    kvx_config_cleanup(&cfg);
}

PD_TEST(config_full)
{
    kvx_config_t cfg;
    char err[256];
    const char *json =
        "{\"kv_connector\":\"NixlConnector\",\"engine_id\":\"prefill-0\",\"kv_role\":\"kv_producer\","
        "\"kv_rank\":0,\"kv_parallel_size\":2,\"kv_ip\":\"10.0.0.5\",\"kv_port\":20001,"
        "\"kv_buffer_size\":5e9,\"kv_buffer_device\":\"cpu\",\"kv_load_failure_policy\":\"fail\","
        "\"kv_connector_extra_config\":{\"auth_secret\":\"s3cret\",\"lease_ttl_s\":2.5,"
        "\"pull_workers\":8,\"backends\":[\"UCX\"]}}";

    PD_CHECK_STATUS(kvx_config_parse(json, &cfg, err, sizeof(err)), PD_OK);
    PD_CHECK_EQ_INT(cfg.connector, KVX_CONN_UCX);
    PD_CHECK_EQ_STR(cfg.connector_name, "NixlConnector");
    PD_CHECK_EQ_STR(cfg.engine_id, "prefill-0");
    PD_CHECK_EQ_INT(cfg.role, KVX_ROLE_PRODUCER);
    PD_CHECK_EQ_INT(cfg.kv_rank, 0);
    PD_CHECK_EQ_INT(cfg.kv_parallel_size, 2);
    PD_CHECK_EQ_STR(cfg.kv_ip, "10.0.0.5");
    PD_CHECK_EQ_INT(cfg.kv_port, 20001);
    PD_CHECK(cfg.kv_buffer_size == 5e9);
    PD_CHECK_EQ_INT(cfg.kv_buffer_device, KVX_MEM_HOST);
    PD_CHECK_EQ_INT(cfg.load_failure_policy, KVX_FAIL_FAIL);
    PD_CHECK_EQ_STR(cfg.auth_secret, "s3cret");
    PD_CHECK(cfg.lease_ttl_s == 2.5);
    PD_CHECK_EQ_INT(cfg.pull_workers, 8);
    kvx_config_cleanup(&cfg);

    PD_CHECK_STATUS(kvx_config_parse("{\"kv_connector\":\"P2pNcclConnector\",\"kv_role\":\"kv_both\"}",
                                     &cfg, err, sizeof(err)), PD_OK);
    PD_CHECK_EQ_INT(cfg.connector, KVX_CONN_NCCL);
    PD_CHECK_EQ_INT(cfg.role, KVX_ROLE_BOTH);
    kvx_config_cleanup(&cfg);
    PD_CHECK_STATUS(kvx_config_parse("{\"kv_connector\":\"SharedStorageConnector\",\"kv_role\":"
                                     "\"kv_consumer\",\"kv_connector_extra_config\":"
                                     "{\"shared_storage_path\":\"/tmp/x\"}}",
                                     &cfg, err, sizeof(err)), PD_OK);
    PD_CHECK_EQ_INT(cfg.connector, KVX_CONN_SHARED_STORAGE);
    PD_CHECK_EQ_STR(cfg.shared_storage_path, "/tmp/x");
    kvx_config_cleanup(&cfg);
}

PD_TEST(config_secret_from_env)
{
    kvx_config_t cfg;

    setenv("PDSERVE_KV_SECRET", "from-env", 1);
    PD_CHECK_STATUS(kvx_config_parse("{\"kv_connector\":\"UcxConnector\",\"kv_role\":\"kv_both\"}",
                                     &cfg, NULL, 0), PD_OK);
    PD_CHECK_EQ_STR(cfg.auth_secret, "from-env");
    kvx_config_cleanup(&cfg);
    /* the extra config wins over the environment */
    PD_CHECK_STATUS(kvx_config_parse("{\"kv_connector\":\"UcxConnector\",\"kv_role\":\"kv_both\","
                                     "\"kv_connector_extra_config\":{\"auth_secret\":\"cfg\"}}",
                                     &cfg, NULL, 0), PD_OK);
    PD_CHECK_EQ_STR(cfg.auth_secret, "cfg");
    kvx_config_cleanup(&cfg);
    unsetenv("PDSERVE_KV_SECRET");
}

static void expect_bad(const char *json, pd_status_t want, const char *needle)
{
    kvx_config_t cfg;
    char err[256];
    pd_status_t st = kvx_config_parse(json, &cfg, err, sizeof(err));

    PD_CHECK_STATUS(st, want);
    if (strstr(err, needle) == NULL || strchr(err, '\n') != NULL) {
        fprintf(stderr, "  %s: error \"%s\" lacks \"%s\"\n", json, err, needle);
        pd_test_failed_checks_g++;
    }
    kvx_config_cleanup(&cfg);
}

PD_TEST(config_errors)
{
    expect_bad("[]", PD_ERR_INVAL, "object");
    expect_bad("{", PD_ERR_INVAL, "JSON");
    expect_bad("{\"kv_connector\":\"UcxConnector\"}", PD_ERR_INVAL, "kv_role");
    expect_bad("{\"kv_connector\":\"UcxConnector\",\"kv_role\":\"kv_decoder\"}", PD_ERR_INVAL, "kv_role");
    expect_bad("{\"kv_connector\":\"FooConnector\",\"kv_role\":\"kv_both\"}", PD_ERR_INVAL, "FooConnector");
    expect_bad("{\"kv_connector\":\"LMCacheConnectorV1\",\"kv_role\":\"kv_both\"}",
               PD_ERR_UNSUPPORTED, "not supported yet");
    expect_bad("{\"kv_connector\":\"MooncakeConnector\",\"kv_role\":\"kv_both\"}",
               PD_ERR_UNSUPPORTED, "not supported yet");
    expect_bad("{\"kv_conector\":\"UcxConnector\"}", PD_ERR_INVAL, "kv_conector");
    expect_bad("{\"kv_port\":70000}", PD_ERR_INVAL, "kv_port");
    expect_bad("{\"kv_port\":-1}", PD_ERR_INVAL, "kv_port");
    expect_bad("{\"kv_port\":\"14579\"}", PD_ERR_INVAL, "kv_port");
    expect_bad("{\"kv_port\":1.5}", PD_ERR_INVAL, "kv_port");
    expect_bad("{\"kv_ip\":5}", PD_ERR_INVAL, "kv_ip");
    expect_bad("{\"kv_ip\":\"1.2.3.4; rm\"}", PD_ERR_INVAL, "kv_ip");
    expect_bad("{\"kv_buffer_size\":-5}", PD_ERR_INVAL, "kv_buffer_size");
    expect_bad("{\"kv_buffer_device\":\"tpu\"}", PD_ERR_INVAL, "kv_buffer_device");
    expect_bad("{\"kv_load_failure_policy\":\"retry\"}", PD_ERR_INVAL, "kv_load_failure_policy");
    expect_bad("{\"kv_rank\":2,\"kv_parallel_size\":2}", PD_ERR_INVAL, "kv_rank");
    expect_bad("{\"kv_parallel_size\":0}", PD_ERR_INVAL, "kv_parallel_size");
    expect_bad("{\"engine_id\":\"\"}", PD_ERR_INVAL, "engine_id");
    expect_bad("{\"engine_id\":\"a b\"}", PD_ERR_INVAL, "engine_id");
    expect_bad("{\"kv_connector_extra_config\":[]}", PD_ERR_INVAL, "kv_connector_extra_config");
    expect_bad("{\"kv_connector_extra_config\":{\"lease_ttl_s\":-1}}", PD_ERR_INVAL, "lease_ttl_s");
    expect_bad("{\"kv_connector_extra_config\":{\"pull_workers\":1000}}", PD_ERR_INVAL, "pull_workers");
    expect_bad("{\"kv_connector_extra_config\":{\"auth_secret\":7}}", PD_ERR_INVAL, "auth_secret");
    expect_bad("{\"kv_role\":\"kv_both\",\"kv_role\":\"kv_producer\"}", PD_ERR_INVAL, "twice");
    expect_bad("{\"kv_connector_module_path\":\"/x.so\"}", PD_ERR_INVAL, "kv_connector");
}

PD_TEST(config_dotted_form)
{
    char *json = NULL;
    kvx_config_t cfg;

    PD_CHECK_STATUS(kvx_config_json_set(&json, "kv_connector", "NixlConnector"), PD_OK);
    PD_CHECK_STATUS(kvx_config_json_set(&json, "kv_role", "kv_both"), PD_OK);
    PD_CHECK_STATUS(kvx_config_json_set(&json, "kv_port", "20002"), PD_OK);
    PD_CHECK_STATUS(kvx_config_json_set(&json, "kv_connector_extra_config.auth_secret", "x y"), PD_OK);
    PD_CHECK_STATUS(kvx_config_json_set(&json, "kv_connector_extra_config.lease_ttl_s", "7"), PD_OK);
    PD_CHECK_STATUS(kvx_config_json_set(&json, "kv_role", "kv_consumer"), PD_OK); /* last wins */
    PD_CHECK_STATUS(kvx_config_json_set(&json, "", "x"), PD_ERR_INVAL);
    PD_CHECK_STATUS(kvx_config_json_set(&json, "kv_role.x", "1"), PD_ERR_INVAL);
    PD_CHECK_STATUS(kvx_config_parse(json, &cfg, NULL, 0), PD_OK);
    PD_CHECK_EQ_INT(cfg.connector, KVX_CONN_UCX);
    PD_CHECK_EQ_INT(cfg.role, KVX_ROLE_CONSUMER);
    PD_CHECK_EQ_INT(cfg.kv_port, 20002);
    PD_CHECK_EQ_STR(cfg.auth_secret, "x y");
    PD_CHECK(cfg.lease_ttl_s == 7);
    kvx_config_cleanup(&cfg);
    free(json);
}

PD_TEST(stats_prometheus)
{
    kvx_stats_t s;
    pd_buf_t out = {0};

    memset(&s, 0, sizeof(s));
    s.bytes = 12345;
    s.lease_expiries = 2;
    s.blocks_held = 9;
    PD_CHECK_STATUS(kvx_stats_prometheus(&s, "m1", &out), PD_OK);
    PD_CHECK(out.data != NULL && strstr(out.data, "vllm:nixl_bytes_transferred{model_name=\"m1\"} 12345\n"));
    PD_CHECK(strstr(out.data, "pdserve:kv_lease_expiries_total{model_name=\"m1\"} 2\n") != NULL);
    PD_CHECK(strstr(out.data, "# TYPE pdserve:kv_blocks_held gauge\npdserve:kv_blocks_held{model_name=\"m1\"} 9\n") != NULL);
    pd_buf_reset(&out);
    PD_CHECK_STATUS(kvx_stats_prometheus(&s, "bad\"name", &out), PD_ERR_INVAL);
    pd_buf_cleanup(&out);
}

/* ---- wire format ---- */
static pd_status_t roundtrip(const kvx_msg_t *in, const char *enc_secret, const char *dec_secret,
                             kvx_msg_t *out, pd_buf_t *buf)
{
    pd_status_t st;

    pd_buf_reset(buf);
    st = kvx_msg_encode(in, enc_secret, buf);
    if (st != PD_OK)
        return st;
    return kvx_msg_decode((const uint8_t *)buf->data, buf->len, dec_secret, out);
}

PD_TEST(msg_roundtrip)
{
    kvx_msg_t m, d;
    pd_buf_t buf = {0};
    uint32_t ids[5] = {0, 7, 99, 4096, 65535};
    uint8_t desc[40];

    memset(&m, 0, sizeof(m));
    m.type = KVX_MSG_HELLO;
    m.seq = 42;
    snprintf(m.engine_id, sizeof(m.engine_id), "decode-1");
    m.compat = tk_compat();
    m.proto_version = KVX_PROTO_VERSION;
    kvx_compat_hash(&m.compat, m.compat_hash);
    PD_CHECK_STATUS(roundtrip(&m, NULL, NULL, &d, &buf), PD_OK);
    PD_CHECK_EQ_INT(d.type, KVX_MSG_HELLO);
    PD_CHECK_EQ_INT(d.seq, 42);
    PD_CHECK_EQ_STR(d.engine_id, "decode-1");
    PD_CHECK_EQ_STR(d.compat.model, m.compat.model);
    PD_CHECK_EQ_INT(d.compat.block_size, 16);
    PD_CHECK_EQ_STR(d.compat_hash, m.compat_hash);
    kvx_msg_cleanup(&d);

    memset(&m, 0, sizeof(m));
    m.type = KVX_MSG_ACQUIRE;
    snprintf(m.req_id, sizeof(m.req_id), "cmpl-123");
    m.ids = ids;
    m.n_ids = 5;
    PD_CHECK_STATUS(roundtrip(&m, "k", "k", &d, &buf), PD_OK);
    PD_CHECK_EQ_INT(d.n_ids, 5);
    PD_CHECK(d.ids != NULL && d.ids[4] == 65535 && d.ids[2] == 99);
    PD_CHECK_EQ_STR(d.req_id, "cmpl-123");
    kvx_msg_cleanup(&d);

    memset(&m, 0, sizeof(m));
    for (size_t i = 0; i < sizeof(desc); i++)
        desc[i] = (uint8_t)i;
    m.type = KVX_MSG_HELLO_OK;
    snprintf(m.engine_id, sizeof(m.engine_id), "p");
    snprintf(m.connector, sizeof(m.connector), "UcxConnector");
    m.n_blocks = 1000;
    m.block_bytes = (uint64_t)3 << 32;
    m.desc = desc;
    m.desc_len = sizeof(desc);
    PD_CHECK_STATUS(roundtrip(&m, NULL, NULL, &d, &buf), PD_OK);
    PD_CHECK_EQ_INT(d.n_blocks, 1000);
    PD_CHECK(d.block_bytes == (uint64_t)3 << 32);
    PD_CHECK(d.desc_len == sizeof(desc) && memcmp(d.desc, desc, sizeof(desc)) == 0);
    kvx_msg_cleanup(&d);

    memset(&m, 0, sizeof(m));
    m.type = KVX_MSG_ERROR;
    m.status = PD_ERR_EXPIRED;
    snprintf(m.message, sizeof(m.message), "lease expired");
    PD_CHECK_STATUS(roundtrip(&m, NULL, NULL, &d, &buf), PD_OK);
    PD_CHECK_EQ_INT(d.status, PD_ERR_EXPIRED);
    PD_CHECK_EQ_STR(d.message, "lease expired");
    kvx_msg_cleanup(&d);
    pd_buf_cleanup(&buf);
}

PD_TEST(msg_rejects_bad_frames)
{
    kvx_msg_t m, d;
    pd_buf_t buf = {0};
    uint32_t ids[3] = {1, 2, 3};
    size_t good_len;
    uint8_t *copy;

    memset(&m, 0, sizeof(m));
    m.type = KVX_MSG_ACQUIRE;
    snprintf(m.req_id, sizeof(m.req_id), "r1");
    m.ids = ids;
    m.n_ids = 3;
    PD_CHECK_STATUS(kvx_msg_encode(&m, NULL, &buf), PD_OK);
    good_len = buf.len;
    copy = malloc(good_len + 8);
    /* every truncation is refused */
    for (size_t n = 0; n < good_len; n++) {
        pd_status_t st = kvx_msg_decode((const uint8_t *)buf.data, n, NULL, &d);
        kvx_msg_cleanup(&d);
        if (st == PD_OK) {
            fprintf(stderr, "  truncated to %zu accepted\n", n);
            pd_test_failed_checks_g++;
        }
    }
    /* trailing bytes */
    memcpy(copy, buf.data, good_len);
    copy[good_len] = 0;
    PD_CHECK_STATUS(kvx_msg_decode(copy, good_len + 1, NULL, &d), PD_ERR_FORMAT);
    kvx_msg_cleanup(&d);
    /* an id count larger than the frame */
    memcpy(copy, buf.data, good_len);
    copy[KVX_MSG_HDR_BYTES + 2 + 2] = 0xff;
    copy[KVX_MSG_HDR_BYTES + 2 + 3] = 0xff;
    PD_CHECK_STATUS(kvx_msg_decode(copy, good_len, NULL, &d), PD_ERR_FORMAT);
    kvx_msg_cleanup(&d);
    /* wrong magic, other version, unknown type, reserved bits */
    memcpy(copy, buf.data, good_len);
    copy[0] ^= 1;
    PD_CHECK_STATUS(kvx_msg_decode(copy, good_len, NULL, &d), PD_ERR_FORMAT);
    memcpy(copy, buf.data, good_len);
    copy[4] = 9;
    PD_CHECK_STATUS(kvx_msg_decode(copy, good_len, NULL, &d), PD_ERR_MISMATCH);
    memcpy(copy, buf.data, good_len);
    copy[6] = 77;
    PD_CHECK_STATUS(kvx_msg_decode(copy, good_len, NULL, &d), PD_ERR_FORMAT);
    memcpy(copy, buf.data, good_len);
    copy[10] = 1;
    PD_CHECK_STATUS(kvx_msg_decode(copy, good_len, NULL, &d), PD_ERR_FORMAT);
    /* a control character in a string */
    memcpy(copy, buf.data, good_len);
    copy[KVX_MSG_HDR_BYTES + 2] = '\n';
    PD_CHECK_STATUS(kvx_msg_decode(copy, good_len, NULL, &d), PD_ERR_FORMAT);
    free(copy);
    pd_buf_cleanup(&buf);
}

PD_TEST(msg_auth)
{
    kvx_msg_t m, d;
    pd_buf_t buf = {0};

    memset(&m, 0, sizeof(m));
    m.type = KVX_MSG_RELEASE;
    snprintf(m.req_id, sizeof(m.req_id), "r1");
    PD_CHECK_STATUS(roundtrip(&m, "secret", "secret", &d, &buf), PD_OK);
    PD_CHECK_STATUS(roundtrip(&m, "secret", "other", &d, &buf), PD_ERR_PERM);
    PD_CHECK_STATUS(roundtrip(&m, NULL, "secret", &d, &buf), PD_ERR_PERM);
    PD_CHECK_STATUS(roundtrip(&m, "secret", NULL, &d, &buf), PD_ERR_PERM);
    /* a flipped payload byte breaks the MAC */
    pd_buf_reset(&buf);
    PD_CHECK_STATUS(kvx_msg_encode(&m, "secret", &buf), PD_OK);
    buf.data[KVX_MSG_HDR_BYTES + 2] ^= 1;
    PD_CHECK_STATUS(kvx_msg_decode((const uint8_t *)buf.data, buf.len, "secret", &d), PD_ERR_PERM);
    /* a stale timestamp is refused even with the right MAC */
    m.ts_ms = 1000;
    PD_CHECK_STATUS(roundtrip(&m, "secret", "secret", &d, &buf), PD_ERR_PERM);
    pd_buf_cleanup(&buf);
}

PD_TEST(compat_hash_changes)
{
    kvx_compat_t a = tk_compat(), b = tk_compat();
    char ha[65], hb[65];

    kvx_compat_hash(&a, ha);
    kvx_compat_hash(&b, hb);
    PD_CHECK_EQ_STR(ha, hb);
    PD_CHECK_EQ_INT(strlen(ha), 64);
    b.head_dim = 128;
    kvx_compat_hash(&b, hb);
    PD_CHECK(strcmp(ha, hb) != 0);
}

/* ---- plugin connector from a .so built here ---- */
PD_TEST(plugin_module)
{
    const char *src_dir = getenv("PD_SOURCE_DIR");
    char so[256], cmd[2048], json[1024];
    kvx_compat_t compat = tk_compat();
    kvx_ctx_t *prod, *cons;
    uint8_t *pbase, *cbase;
    uint32_t ids[3] = {5, 1, 9}, lids[3] = {0, 2, 4};
    tk_leases_t leases = {.mu = PTHREAD_MUTEX_INITIALIZER};
    kvx_pull_desc_t desc;
    char msg[256];

    if (src_dir == NULL)
        src_dir = ".";
    snprintf(so, sizeof(so), "/tmp/kvx_plugin_%d.so", (int)getpid());
    snprintf(cmd, sizeof(cmd), "cc -shared -fPIC -O1 -o %s -I%s/kvxfer -I%s/common "
             "%s/tests/kvxfer/kvx_plugin_loop.c 2>&1", so, src_dir, src_dir, src_dir);
    if (system(cmd) != 0) {
        printf("skip plugin_module: cannot build the test plugin (no cc?)\n");
        return;
    }
    snprintf(json, sizeof(json), "{\"kv_connector\":\"LoopConnector\",\"kv_role\":\"kv_producer\","
             "\"kv_port\":0,\"kv_connector_module_path\":\"%s\"}", so);
    prod = tk_ctx(json, &compat);
    snprintf(json, sizeof(json), "{\"kv_connector\":\"LoopConnector\",\"kv_role\":\"kv_consumer\","
             "\"kv_connector_module_path\":\"%s\"}", so);
    cons = tk_ctx(json, &compat);
    PD_CHECK(prod != NULL && cons != NULL);
    if (prod == NULL || cons == NULL)
        goto out;
    pbase = calloc(16, 256);
    cbase = calloc(16, 256);
    tk_fill(pbase, 16, 256, 3);
    PD_CHECK_STATUS(kvx_ctx_register_region(prod, &(kvx_region_t){pbase, 16, 256, KVX_MEM_HOST}), PD_OK);
    PD_CHECK_STATUS(kvx_ctx_register_region(cons, &(kvx_region_t){cbase, 16, 256, KVX_MEM_HOST}), PD_OK);
    PD_CHECK_STATUS(kvx_lease_create(prod, "req-plugin", ids, 3, 0, tk_lease_cb, &leases), PD_OK);
    desc = (kvx_pull_desc_t){.remote_host = "127.0.0.1", .remote_port = kvx_ctx_port(prod),
                             .remote_req_id = "req-plugin", .n = 3, .remote_ids = ids,
                             .local_ids = lids};
    PD_CHECK_STATUS(kvx_pull_sync(cons, &desc, msg, sizeof(msg)), PD_OK);
    for (int i = 0; i < 3; i++)
        PD_CHECK(tk_block_is(cbase, 256, lids[i], ids[i], 3));
    PD_CHECK(tk_wait_ended(&leases, KVX_LEASE_RELEASED, 1, 5));
    PD_CHECK_EQ_INT(kvx_lease_count(prod), 0);

    /* the producer drops the lease while the consumer is reading: the read finishes,
     * but RELEASE reports the lease gone, so the pull fails instead of handing out
     * blocks that may have been reused meanwhile */
    {
        tk_pull_t res;
        memset(&res, 0, sizeof(res));
        pthread_mutex_init(&res.mu, NULL);
        setenv("KVX_LOOP_DELAY_MS", "300", 1);
        kvx_ctx_destroy(cons);
        snprintf(json, sizeof(json), "{\"kv_connector\":\"LoopConnector\",\"kv_role\":"
                 "\"kv_consumer\",\"kv_connector_module_path\":\"%s\"}", so);
        cons = tk_ctx(json, &compat);
        unsetenv("KVX_LOOP_DELAY_MS");
        PD_CHECK(cons != NULL);
        if (cons != NULL) {
            PD_CHECK_STATUS(kvx_ctx_register_region(cons, &(kvx_region_t){cbase, 16, 256, KVX_MEM_HOST}), PD_OK);
            PD_CHECK_STATUS(kvx_lease_create(prod, "req-race", ids, 3, 0, tk_lease_cb, &leases), PD_OK);
            desc.remote_req_id = "req-race";
            PD_CHECK_STATUS(kvx_pull(cons, &desc, tk_pull_cb, &res), PD_OK);
            usleep(100000); /* acquired, reading */
            PD_CHECK_STATUS(kvx_lease_abort(prod, "req-race"), PD_OK);
            PD_CHECK(tk_pull_wait(&res, 10));
            PD_CHECK_STATUS(res.status, PD_ERR_EXPIRED);
            PD_CHECK(strstr(res.msg, "aborted") != NULL);

            /* heartbeats keep a 0.1 s lease alive through a 0.3 s read */
            PD_CHECK_STATUS(kvx_lease_create(prod, "req-hb", ids, 3, 0.1, tk_lease_cb, &leases), PD_OK);
            desc.remote_req_id = "req-hb";
            PD_CHECK_STATUS(kvx_pull_sync(cons, &desc, msg, sizeof(msg)), PD_OK);
            PD_CHECK_EQ_INT(tk_ended(&leases, KVX_LEASE_EXPIRED), 0);
        }
    }
    /* the two-sided path: the consumer's SERVE makes the producer push the blocks */
    {
        uint32_t lids2[3] = {10, 11, 12};
        memset(cbase, 0, 16 * 256);
        setenv("KVX_LOOP_PUSH", "1", 1);
        kvx_ctx_destroy(cons);
        kvx_ctx_destroy(prod);
        snprintf(json, sizeof(json), "{\"kv_connector\":\"LoopConnector\",\"kv_role\":"
                 "\"kv_producer\",\"kv_port\":0,\"kv_connector_module_path\":\"%s\"}", so);
        prod = tk_ctx(json, &compat);
        snprintf(json, sizeof(json), "{\"kv_connector\":\"LoopConnector\",\"kv_role\":"
                 "\"kv_consumer\",\"kv_connector_module_path\":\"%s\"}", so);
        cons = tk_ctx(json, &compat);
        unsetenv("KVX_LOOP_PUSH");
        PD_CHECK(prod != NULL && cons != NULL);
        if (prod != NULL && cons != NULL) {
            PD_CHECK_STATUS(kvx_ctx_register_region(prod, &(kvx_region_t){pbase, 16, 256, KVX_MEM_HOST}), PD_OK);
            PD_CHECK_STATUS(kvx_ctx_register_region(cons, &(kvx_region_t){cbase, 16, 256, KVX_MEM_HOST}), PD_OK);
            PD_CHECK_STATUS(kvx_lease_create(prod, "req-push", ids, 3, 0, tk_lease_cb, &leases), PD_OK);
            desc = (kvx_pull_desc_t){.remote_host = "127.0.0.1", .remote_port = kvx_ctx_port(prod),
                                     .remote_req_id = "req-push", .n = 3, .remote_ids = ids,
                                     .local_ids = lids2};
            PD_CHECK_STATUS(kvx_pull_sync(cons, &desc, msg, sizeof(msg)), PD_OK);
            for (int i = 0; i < 3; i++)
                PD_CHECK(tk_block_is(cbase, 256, lids2[i], ids[i], 3));
            PD_CHECK_EQ_INT(kvx_lease_count(prod), 0);
            /* a SERVE for ids outside the lease is refused like an ACQUIRE */
            uint32_t bad[1] = {2};
            PD_CHECK_STATUS(kvx_lease_create(prod, "req-push2", ids, 3, 0, tk_lease_cb, &leases), PD_OK);
            desc.remote_req_id = "req-push2";
            desc.n = 1;
            desc.remote_ids = bad;
            PD_CHECK_STATUS(kvx_pull_sync(cons, &desc, msg, sizeof(msg)), PD_ERR_RANGE);
            PD_CHECK_STATUS(kvx_lease_abort(prod, "req-push2"), PD_OK);
        }
    }
    kvx_ctx_destroy(cons);
    kvx_ctx_destroy(prod);
    cons = prod = NULL;
    free(pbase);
    free(cbase);
out:
    kvx_ctx_destroy(cons);
    kvx_ctx_destroy(prod);
    unlink(so);

    /* a .so without the symbol, and a missing file, are refused */
    {
        kvx_config_t cfg;
        kvx_ctx_t *ctx = NULL;
        PD_CHECK_STATUS(kvx_config_parse("{\"kv_connector\":\"X\",\"kv_role\":\"kv_consumer\","
                                         "\"kv_connector_module_path\":\"/nonexistent/x.so\"}",
                                         &cfg, NULL, 0), PD_OK);
        PD_CHECK_EQ_INT(cfg.connector, KVX_CONN_MODULE);
        PD_CHECK_STATUS(kvx_ctx_create(&cfg, &compat, &ctx), PD_ERR_NOT_FOUND);
        PD_CHECK(ctx == NULL);
        kvx_config_cleanup(&cfg);
    }
}

/* every example config under configs/kv parses */
PD_TEST(example_configs_parse)
{
    const char *src_dir = getenv("PD_SOURCE_DIR");
    char dir[512], path[1024];
    DIR *d;
    struct dirent *e;
    int n = 0;

    snprintf(dir, sizeof(dir), "%s/configs/kv", src_dir ? src_dir : ".");
    d = opendir(dir);
    PD_CHECK(d != NULL);
    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        char *text = NULL, err[256];
        size_t len;
        kvx_config_t cfg;

        if (strstr(e->d_name, ".json") == NULL)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        PD_CHECK_STATUS(pd_read_file(path, &text, &len), PD_OK);
        if (text == NULL)
            continue;
        if (kvx_config_parse(text, &cfg, err, sizeof(err)) != PD_OK) {
            fprintf(stderr, "  %s: %s\n", e->d_name, err);
            pd_test_failed_checks_g++;
        }
        PD_CHECK(cfg.connector != KVX_CONN_NONE && cfg.role != KVX_ROLE_NONE);
        kvx_config_cleanup(&cfg);
        free(text);
        n++;
    }
    closedir(d);
    PD_CHECK(n >= 5);
}

/* A bounded queue: BUSY when full; destroy fails queued and running pulls, each
 * callback exactly once. */
PD_TEST(pull_queue_bounded)
{
    kvx_compat_t compat = tk_compat();
    kvx_ctx_t *cons;
    uint8_t *base = calloc(8, 64);
    uint32_t ids[1] = {0};
    tk_pull_t res[4];
    int accepted = 0, busy = 0;

    cons = tk_ctx("{\"kv_connector\":\"SharedStorageConnector\",\"kv_role\":\"kv_consumer\","
                  "\"kv_connector_extra_config\":{\"pull_workers\":1,\"pull_queue\":2,"
                  "\"control_timeout_s\":2,\"shared_storage_path\":\"/tmp/kvx_q_test\"}}", &compat);
    PD_CHECK(cons != NULL);
    if (cons == NULL) {
        free(base);
        return;
    }
    PD_CHECK_STATUS(kvx_ctx_register_region(cons, &(kvx_region_t){base, 8, 64, KVX_MEM_HOST}), PD_OK);
    memset(res, 0, sizeof(res));
    for (int i = 0; i < 4; i++) {
        /* nobody listens on port 1: the one worker is stuck for control_timeout_s */
        kvx_pull_desc_t d = {.remote_host = "127.0.0.1", .remote_port = 1, .remote_req_id = "q",
                             .n = 1, .remote_ids = ids, .local_ids = ids};
        pthread_mutex_init(&res[i].mu, NULL);
        pd_status_t st = kvx_pull(cons, &d, tk_pull_cb, &res[i]);
        if (st == PD_OK)
            accepted++;
        else if (st == PD_ERR_BUSY)
            busy++;
        if (i == 0)
            usleep(100000); /* let the worker take the first one */
    }
    PD_CHECK_EQ_INT(accepted, 3);
    PD_CHECK_EQ_INT(busy, 1);
    {
        uint64_t t0 = pd_now_ns();
        kvx_ctx_destroy(cons);
        PD_CHECK(pd_now_ns() - t0 < 3000000000ull); /* destroy does not wait out timeouts */
    }
    for (int i = 0; i < 3; i++) {
        PD_CHECK_EQ_INT(res[i].fired, 1);
        PD_CHECK(res[i].status == PD_ERR_CANCELED || res[i].status == PD_ERR_TIMEOUT);
    }
    PD_CHECK_EQ_INT(res[3].fired, 0);
    rmdir("/tmp/kvx_q_test");
    free(base);
}

int main(void)
{
    PD_RUN(config_defaults);
    PD_RUN(config_full);
    PD_RUN(config_secret_from_env);
    PD_RUN(config_errors);
    PD_RUN(config_dotted_form);
    PD_RUN(stats_prometheus);
    PD_RUN(msg_roundtrip);
    PD_RUN(msg_rejects_bad_frames);
    PD_RUN(msg_auth);
    PD_RUN(compat_hash_changes);
    PD_RUN(plugin_module);
    PD_RUN(example_configs_parse);
    PD_RUN(pull_queue_bounded);
    return PD_TEST_REPORT();
}
