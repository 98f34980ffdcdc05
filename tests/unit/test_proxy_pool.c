/* test_proxy_pool.c - pdserve-proxy's pools and routing policies (proxy/px_pool.c) and
 * the registration message parser (proxy/px_register.c), compiled in here because the
 * unit tests link only the libraries. */
#include "../../proxy/px_pool.c"
#include "../../proxy/px_register.c"

#include "pd_test.h"

static void add3(px_pools_t *p)
{
    PD_CHECK_STATUS(px_pools_add_static(p, PX_ROLE_DECODE, "127.0.0.1:1"), PD_OK);
    PD_CHECK_STATUS(px_pools_add_static(p, PX_ROLE_DECODE, "http://127.0.0.1:2/"), PD_OK);
    PD_CHECK_STATUS(px_pools_add_static(p, PX_ROLE_DECODE, "127.0.0.1:3"), PD_OK);
}

PD_TEST(test_urls_and_round_robin)
{
    px_pools_t p;
    char url[PX_ADDR_MAX + 8];
    PD_CHECK_STATUS(px_node_url("h:1", url, sizeof(url)), PD_OK);
    PD_CHECK_EQ_STR(url, "http://h:1");
    PD_CHECK_STATUS(px_node_url("https://h:1//", url, sizeof(url)), PD_OK);
    PD_CHECK_EQ_STR(url, "https://h:1");
    PD_CHECK_STATUS(px_node_url("ftp://h:1", url, sizeof(url)), PD_ERR_INVAL);
    PD_CHECK_STATUS(px_node_url("h 1", url, sizeof(url)), PD_ERR_INVAL);
    PD_CHECK_STATUS(px_node_url("", url, sizeof(url)), PD_ERR_INVAL);

    px_pools_init(&p, PX_RR, PX_RR);
    add3(&p);
    PD_CHECK_STATUS(px_pools_add_static(&p, PX_ROLE_DECODE, "127.0.0.1:3"), PD_OK); /* duplicate: same node */
    PD_CHECK_EQ_INT(px_pools_eligible(&p, PX_ROLE_DECODE), 3);
    PD_CHECK_EQ_INT(px_pools_eligible(&p, PX_ROLE_PREFILL), 0);
    PD_CHECK(px_pools_pick(&p, PX_ROLE_PREFILL, NULL, NULL, 0) == NULL);
    px_node_t *seen[6];
    for (int i = 0; i < 6; i++) {
        seen[i] = px_pools_pick(&p, PX_ROLE_DECODE, NULL, NULL, 0);
        px_node_done(seen[i]);
    }
    PD_CHECK(seen[0] != seen[1] && seen[1] != seen[2] && seen[0] != seen[2]);
    PD_CHECK(seen[3] == seen[0] && seen[4] == seen[1] && seen[5] == seen[2]);
    /* unhealthy and excluded nodes are skipped */
    atomic_store(&seen[0]->healthy, 0);
    for (int i = 0; i < 4; i++) {
        px_node_t *n = px_pools_pick(&p, PX_ROLE_DECODE, NULL, &seen[1], 1);
        PD_CHECK(n == seen[2]);
        px_node_done(n);
    }
    PD_CHECK_EQ_INT(atomic_load(&seen[2]->inflight), 0);
    px_pools_cleanup(&p);
}

PD_TEST(test_least_loaded_and_p2c)
{
    px_pools_t p;
    px_pools_init(&p, PX_LEAST, PX_LEAST);
    add3(&p);
    px_node_t *a = px_pools_pick(&p, PX_ROLE_DECODE, NULL, NULL, 0);
    px_node_t *b = px_pools_pick(&p, PX_ROLE_DECODE, NULL, NULL, 0);
    px_node_t *c = px_pools_pick(&p, PX_ROLE_DECODE, NULL, NULL, 0);
    PD_CHECK(a != b && b != c && a != c); /* each pick raises the load */
    px_node_done(b);
    PD_CHECK(px_pools_pick(&p, PX_ROLE_DECODE, NULL, NULL, 0) == b);
    px_pools_cleanup(&p);

    /* power of two: with one node far busier, it is never chosen over the others */
    px_pools_init(&p, PX_P2C, PX_P2C);
    add3(&p);
    px_node_t *all[3];
    px_pools_list(&p, PX_ROLE_DECODE, all, 3);
    atomic_store(&all[0]->inflight, 100);
    int hit0 = 0;
    for (int i = 0; i < 200; i++) {
        px_node_t *n = px_pools_pick(&p, PX_ROLE_DECODE, NULL, NULL, 0);
        hit0 += n == all[0];
        px_node_done(n);
    }
    PD_CHECK_EQ_INT(hit0, 0);
    px_pools_cleanup(&p);
}

PD_TEST(test_prefix_aware)
{
    px_pools_t p;
    px_pools_init(&p, PX_PREFIX, PX_PREFIX);
    add3(&p);
    char doc_a[400], doc_b[400];
    memset(doc_a, 'a', sizeof(doc_a) - 1);
    doc_a[sizeof(doc_a) - 1] = '\0';
    memset(doc_b, 'b', sizeof(doc_b) - 1);
    doc_b[sizeof(doc_b) - 1] = '\0';
    px_prefix_t pa, pb, pa2;
    px_prefix_compute(doc_a, strlen(doc_a), &pa);
    px_prefix_compute(doc_b, strlen(doc_b), &pb);
    PD_CHECK_EQ_INT(pa.n, 6); /* 399 bytes: 6 full 64-byte blocks */
    PD_CHECK(pa.h[0] != pb.h[0]);
    /* same first blocks, different tail: shares the chained hashes of the shared blocks */
    doc_a[300] = 'z';
    px_prefix_compute(doc_a, strlen(doc_a), &pa2);
    PD_CHECK(pa2.h[3] == pa.h[3] && pa2.h[4] != pa.h[4]);
    doc_a[300] = 'a';

    px_node_t *na = px_pools_pick(&p, PX_ROLE_DECODE, &pa, NULL, 0);
    px_node_done(na);
    px_node_t *nb = px_pools_pick(&p, PX_ROLE_DECODE, &pb, NULL, 0);
    px_node_done(nb);
    for (int i = 0; i < 5; i++) {
        px_node_t *x = px_pools_pick(&p, PX_ROLE_DECODE, &pa, NULL, 0);
        px_node_t *y = px_pools_pick(&p, PX_ROLE_DECODE, &pa2, NULL, 0); /* longest shared prefix */
        PD_CHECK(x == na && y == na);
        px_node_done(x);
        px_node_done(y);
    }
    /* affinity yields when the node is far busier than the least loaded */
    atomic_store(&na->inflight, 50);
    px_node_t *z = px_pools_pick(&p, PX_ROLE_DECODE, &pa, NULL, 0);
    PD_CHECK(z != na);
    px_node_done(z);
    atomic_store(&na->inflight, 0);
    px_pools_cleanup(&p);
}

PD_TEST(test_registration_messages)
{
    px_pools_t p;
    px_pools_init(&p, PX_RR, PX_RR);
    const char *ok = "{\"type\":\"P\",\"http_address\":\"10.0.0.1:8100\",\"zmq_address\":\"tcp://10.0.0.1:5\","
                     "\"load\":2,\"queue\":1,\"kv_usage\":0.5,\"prefix_hashes\":[\"ab\",\"cd\"]}";
    PD_CHECK_STATUS(px_register_apply(&p, ok, strlen(ok)), PD_OK);
    PD_CHECK_EQ_INT(px_pools_eligible(&p, PX_ROLE_PREFILL), 1);
    px_node_t *n;
    px_pools_list(&p, PX_ROLE_PREFILL, &n, 1);
    PD_CHECK_EQ_STR(n->url, "http://10.0.0.1:8100");
    PD_CHECK(n->queue == 1 && n->kv_usage == 0.5 && n->n_prefix_hashes == 2 && !n->is_static);
    const char *bad[] = {"", "[]", "{\"type\":\"X\",\"http_address\":\"a:1\"}", "{\"type\":\"D\"}",
                         "{\"type\":\"D\",\"http_address\":\"a b\"}", "{\"type\":\"D\",\"http_address\":5}",
                         "{\"type\":\"D\",\"http_address\":\"a:1\",\"kv_usage\":7}",
                         "{\"type\":\"D\",\"http_address\":\"a:1\",\"load\":\"x\"}",
                         "{\"type\":\"D\",\"http_address\":\"a:1\",\"prefix_hashes\":{}}", "{\"type\":\"D\",\"\xff\":1}"};
    for (size_t i = 0; i < PD_ARRAY_SIZE(bad); i++)
        PD_CHECK(px_register_apply(&p, bad[i], strlen(bad[i])) != PD_OK);
    PD_CHECK_EQ_INT(px_pools_eligible(&p, PX_ROLE_DECODE), 0);
    /* expiry and revival */
    PD_CHECK_EQ_INT(px_pools_expire(&p, pd_now_ns() + 10000000000ULL, 5000000000ULL), 1);
    PD_CHECK_EQ_INT(px_pools_eligible(&p, PX_ROLE_PREFILL), 0);
    PD_CHECK_STATUS(px_register_apply(&p, ok, strlen(ok)), PD_OK);
    PD_CHECK_EQ_INT(px_pools_eligible(&p, PX_ROLE_PREFILL), 1);
    const char *bye = "{\"type\":\"P\",\"http_address\":\"10.0.0.1:8100\",\"bye\":true}";
    PD_CHECK_STATUS(px_register_apply(&p, bye, strlen(bye)), PD_OK);
    PD_CHECK_EQ_INT(px_pools_eligible(&p, PX_ROLE_PREFILL), 0);
    px_pools_cleanup(&p);
}

int main(void)
{
    pd_log_set_level(PD_LOG_LEVEL_OFF);
    PD_RUN(test_urls_and_round_robin);
    PD_RUN(test_least_loaded_and_p2c);
    PD_RUN(test_prefix_aware);
    PD_RUN(test_registration_messages);
    return PD_TEST_REPORT();
}
