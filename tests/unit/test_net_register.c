/* test_net_register.c - pd_register (the node side of proxy registration) against a
 * real ZeroMQ PULL socket on loopback: heartbeat contents and period, the stats
 * callback, the goodbye message, argument checks. */
#include <cjson/cJSON.h>
#include <string.h>
#include <zmq.h>

#include "pd_log.h"
#include "pd_register.h"
#include "pd_test.h"
#include "pd_util.h"

static int calls_g;

static void stats(pd_register_stats_t *s, void *user)
{
    calls_g++;
    s->load = 3;
    s->queue = *(double *)user;
    s->kv_usage = 2.0; /* clamped to 1 */
    s->prefix_hashes[0] = 0xabcdef0123456789ULL;
    s->prefix_hashes[1] = 1;
    s->n_prefix_hashes = 2;
}

static cJSON *recv_json(void *sock, int timeout_ms)
{
    char buf[4096];
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout_ms, sizeof(timeout_ms));
    int n = zmq_recv(sock, buf, sizeof(buf) - 1, 0);
    if (n < 0 || n >= (int)sizeof(buf))
        return NULL;
    buf[n] = '\0';
    return cJSON_Parse(buf);
}

PD_TEST(test_heartbeats_and_bye)
{
    void *ctx = zmq_ctx_new();
    void *pull = zmq_socket(ctx, ZMQ_PULL);
    int linger = 0;
    zmq_setsockopt(pull, ZMQ_LINGER, &linger, sizeof(linger));
    PD_CHECK(zmq_bind(pull, "tcp://127.0.0.1:*") == 0);
    char ep[256];
    size_t eplen = sizeof(ep);
    zmq_getsockopt(pull, ZMQ_LAST_ENDPOINT, ep, &eplen);

    double queue = 7;
    pd_register_info_t info = {.type = "D", .http_address = "127.0.0.1:8123",
                               .zmq_address = "tcp://127.0.0.1:14579", .interval_s = 0.05};
    pd_register_t *reg = NULL;
    PD_CHECK_STATUS(pd_register_start(ep, &info, stats, &queue, &reg), PD_OK);
    uint64_t t0 = pd_now_ns();
    int got = 0;
    for (int i = 0; i < 4; i++) {
        cJSON *m = recv_json(pull, 2000);
        PD_CHECK(m != NULL);
        if (m == NULL)
            break;
        got++;
        PD_CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(m, "type")), "D");
        PD_CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(m, "http_address")), "127.0.0.1:8123");
        PD_CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(m, "zmq_address")), "tcp://127.0.0.1:14579");
        PD_CHECK(cJSON_GetObjectItem(m, "load")->valuedouble == 3);
        PD_CHECK(cJSON_GetObjectItem(m, "queue")->valuedouble == 7);
        PD_CHECK(cJSON_GetObjectItem(m, "kv_usage")->valuedouble == 1);
        cJSON *h = cJSON_GetObjectItem(m, "prefix_hashes");
        PD_CHECK_EQ_INT(cJSON_GetArraySize(h), 2);
        PD_CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetArrayItem(h, 0)), "abcdef0123456789");
        PD_CHECK(cJSON_GetObjectItem(m, "bye") == NULL);
        cJSON_Delete(m);
    }
    double secs = (double)(pd_now_ns() - t0) / 1e9;
    PD_CHECK(got == 4 && secs > 0.1 && secs < 1.5); /* about every 50 ms */
    pd_register_stop(reg);
    /* drain heartbeats until the goodbye */
    int bye = 0;
    for (int i = 0; i < 10 && !bye; i++) {
        cJSON *m = recv_json(pull, 1000);
        if (m == NULL)
            break;
        bye = cJSON_IsTrue(cJSON_GetObjectItem(m, "bye"));
        cJSON_Delete(m);
    }
    PD_CHECK(bye);
    PD_CHECK(calls_g >= 4);
    zmq_close(pull);
    zmq_ctx_term(ctx);
}

PD_TEST(test_bad_arguments)
{
    pd_register_t *reg = NULL;
    pd_register_info_t info = {.type = "X", .http_address = "127.0.0.1:1"};
    PD_CHECK_STATUS(pd_register_start("tcp://127.0.0.1:1", &info, NULL, NULL, &reg), PD_ERR_INVAL);
    info.type = "P";
    info.http_address = "";
    PD_CHECK_STATUS(pd_register_start("tcp://127.0.0.1:1", &info, NULL, NULL, &reg), PD_ERR_INVAL);
    info.http_address = "127.0.0.1:1";
    PD_CHECK_STATUS(pd_register_start("not-an-endpoint", &info, NULL, NULL, &reg), PD_ERR_INVAL);
    PD_CHECK(reg == NULL);
    /* a proxy that is not there: start works, heartbeats are dropped, stop is quick */
    PD_CHECK_STATUS(pd_register_start("tcp://127.0.0.1:1", &info, NULL, NULL, &reg), PD_OK);
    uint64_t t0 = pd_now_ns();
    pd_register_stop(reg);
    PD_CHECK((pd_now_ns() - t0) < 2000000000ULL);
    pd_register_stop(NULL);
}

int main(void)
{
    pd_log_set_level(PD_LOG_LEVEL_OFF);
    PD_RUN(test_heartbeats_and_bye);
    PD_RUN(test_bad_arguments);
    return PD_TEST_REPORT();
}
