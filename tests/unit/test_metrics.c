/* test_metrics.c - Prometheus registry: exact exposition text, labels and escaping,
 * histograms, registration rules, concurrent updates, collectors. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "pd_log.h"
#include "pd_metrics.h"
#include "pd_test.h"

PD_TEST(test_format_double)
{
    char b[64];
    pd_metrics_format_double(1.0, b, sizeof(b));
    PD_CHECK_EQ_STR(b, "1.0");
    pd_metrics_format_double(0.1, b, sizeof(b));
    PD_CHECK_EQ_STR(b, "0.1");
    pd_metrics_format_double(0.005, b, sizeof(b));
    PD_CHECK_EQ_STR(b, "0.005");
    pd_metrics_format_double(1e21, b, sizeof(b));
    PD_CHECK_EQ_STR(b, "1e+21");
    pd_metrics_format_double(INFINITY, b, sizeof(b));
    PD_CHECK_EQ_STR(b, "+Inf");
    pd_metrics_format_double(-INFINITY, b, sizeof(b));
    PD_CHECK_EQ_STR(b, "-Inf");
    pd_metrics_format_double(NAN, b, sizeof(b));
    PD_CHECK_EQ_STR(b, "NaN");
    pd_metrics_format_double(10, b, sizeof(b));
    PD_CHECK_EQ_STR(b, "10.0");
    pd_metrics_format_double(1.5e-5, b, sizeof(b));
    PD_CHECK_EQ_STR(b, "1.5e-05");
    pd_metrics_format_double(0, b, sizeof(b));
    PD_CHECK_EQ_STR(b, "0.0");
    pd_metrics_format_double(-2.5, b, sizeof(b));
    PD_CHECK_EQ_STR(b, "-2.5");
    pd_metrics_format_double(123456789.0, b, sizeof(b));
    PD_CHECK_EQ_STR(b, "123456789.0");
}

PD_TEST(test_exposition)
{
    pd_metrics_registry_t *reg;
    PD_CHECK_STATUS(pd_metrics_registry_create(&reg), PD_OK);
    pd_metric_t *c, *g, *h, *plain;
    const char *labels[] = {"model_name", "finished_reason"};
    PD_CHECK_STATUS(pd_metrics_counter(reg, "vllm:request_success_total", "Finished requests.", 2,
                                       labels, &c), PD_OK);
    PD_CHECK_STATUS(pd_metrics_gauge(reg, "vllm:num_requests_running", "Running requests.", 1,
                                     labels, &g), PD_OK);
    const double buckets[] = {0.1, 1, 10};
    PD_CHECK_STATUS(pd_metrics_histogram(reg, "vllm:e2e_request_latency_seconds",
                                         "Latency with a \\ and\na newline.", 1, labels, 3, buckets,
                                         &h), PD_OK);
    PD_CHECK_STATUS(pd_metrics_counter(reg, "plain_total", "No labels.", 0, NULL, &plain), PD_OK);

    pd_metric_series_t *s_stop, *s_len, *s_g, *s_h, *s_weird;
    PD_CHECK_STATUS(pd_metric_series(c, (const char *[]){"smol", "stop"}, &s_stop), PD_OK);
    PD_CHECK_STATUS(pd_metric_series(c, (const char *[]){"smol", "length"}, &s_len), PD_OK);
    pd_metric_series_t *again;
    PD_CHECK_STATUS(pd_metric_series(c, (const char *[]){"smol", "stop"}, &again), PD_OK);
    PD_CHECK(again == s_stop);
    PD_CHECK_STATUS(pd_metric_series(g, (const char *[]){"smol"}, &s_g), PD_OK);
    PD_CHECK_STATUS(pd_metric_series(h, (const char *[]){"smol"}, &s_h), PD_OK);
    PD_CHECK_STATUS(pd_metric_series(g, (const char *[]){"a\"b\\c\nd"}, &s_weird), PD_OK);

    pd_metric_inc(s_stop);
    pd_metric_inc(s_stop);
    pd_metric_add(s_len, 3);
    pd_metric_add(s_len, -5); /* counters never go down */
    pd_metric_set(s_g, 7);
    pd_metric_add(s_g, -2);
    pd_metric_set(s_weird, 0.5);
    pd_metric_observe(s_h, 0.05); /* <= 0.1 */
    pd_metric_observe(s_h, 0.1);  /* le is inclusive */
    pd_metric_observe(s_h, 5);    /* <= 10 */
    pd_metric_observe(s_h, 100);  /* +Inf only */
    pd_metric_observe(s_h, NAN);  /* ignored */
    pd_metric_inc(pd_metric_default(plain));
    PD_CHECK(pd_metric_value(s_stop) == 2.0);
    PD_CHECK(pd_metric_value(s_g) == 5.0);
    PD_CHECK_EQ_INT(pd_metric_count(s_h), 4);

    pd_buf_t out;
    pd_buf_init(&out);
    PD_CHECK_STATUS(pd_metrics_render(reg, &out), PD_OK);
    const char *want =
        "# HELP vllm:request_success_total Finished requests.\n"
        "# TYPE vllm:request_success_total counter\n"
        "vllm:request_success_total{model_name=\"smol\",finished_reason=\"stop\"} 2.0\n"
        "vllm:request_success_total{model_name=\"smol\",finished_reason=\"length\"} 3.0\n"
        "# HELP vllm:num_requests_running Running requests.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        "vllm:num_requests_running{model_name=\"smol\"} 5.0\n"
        "vllm:num_requests_running{model_name=\"a\\\"b\\\\c\\nd\"} 0.5\n"
        "# HELP vllm:e2e_request_latency_seconds Latency with a \\\\ and\\na newline.\n"
        "# TYPE vllm:e2e_request_latency_seconds histogram\n"
        "vllm:e2e_request_latency_seconds_bucket{model_name=\"smol\",le=\"0.1\"} 2\n"
        "vllm:e2e_request_latency_seconds_bucket{model_name=\"smol\",le=\"1.0\"} 2\n"
        "vllm:e2e_request_latency_seconds_bucket{model_name=\"smol\",le=\"10.0\"} 3\n"
        "vllm:e2e_request_latency_seconds_bucket{model_name=\"smol\",le=\"+Inf\"} 4\n"
        "vllm:e2e_request_latency_seconds_sum{model_name=\"smol\"} 105.15\n"
        "vllm:e2e_request_latency_seconds_count{model_name=\"smol\"} 4\n"
        "# HELP plain_total No labels.\n"
        "# TYPE plain_total counter\n"
        "plain_total 1.0\n";
    PD_CHECK_EQ_STR(out.data, want);
    if (out.data && strcmp(out.data, want) != 0)
        fprintf(stderr, "----- got:\n%s-----\n", out.data);
    pd_buf_cleanup(&out);
    pd_metrics_registry_destroy(reg);
}

PD_TEST(test_registration_rules)
{
    pd_metrics_registry_t *reg;
    PD_CHECK_STATUS(pd_metrics_registry_create(&reg), PD_OK);
    pd_metric_t *m, *m2;
    const char *l1[] = {"model_name"};
    const char *l2[] = {"other"};
    const char *le[] = {"le"};
    const char *bad[] = {"1abc"};
    PD_CHECK_STATUS(pd_metrics_counter(reg, "x_total", "h", 1, l1, &m), PD_OK);
    PD_CHECK_STATUS(pd_metrics_counter(reg, "x_total", "h", 1, l1, &m2), PD_OK);
    PD_CHECK(m == m2); /* same shape: shared */
    PD_CHECK_STATUS(pd_metrics_counter(reg, "x_total", "h", 1, l2, &m2), PD_ERR_EXISTS);
    PD_CHECK_STATUS(pd_metrics_gauge(reg, "x_total", "h", 1, l1, &m2), PD_ERR_EXISTS);
    PD_CHECK_STATUS(pd_metrics_counter(reg, "bad name", "h", 0, NULL, &m2), PD_ERR_INVAL);
    PD_CHECK_STATUS(pd_metrics_counter(reg, "9x", "h", 0, NULL, &m2), PD_ERR_INVAL);
    PD_CHECK_STATUS(pd_metrics_counter(reg, "y", "h", 1, bad, &m2), PD_ERR_INVAL);
    PD_CHECK_STATUS(pd_metrics_histogram(reg, "h1", "h", 1, le, 1, (double[]){1}, &m2), PD_ERR_INVAL);
    PD_CHECK_STATUS(pd_metrics_histogram(reg, "h2", "h", 0, NULL, 2, (double[]){2, 1}, &m2), PD_ERR_INVAL);
    PD_CHECK_STATUS(pd_metrics_histogram(reg, "h3", "h", 0, NULL, 1, (double[]){INFINITY}, &m2), PD_ERR_INVAL);
    PD_CHECK_STATUS(pd_metrics_histogram(reg, "h4", "h", 0, NULL, 0, NULL, &m2), PD_ERR_INVAL);
    PD_CHECK(pd_metric_default(m) == NULL); /* has labels: no default series */
    pd_metric_series_t *s;
    PD_CHECK_STATUS(pd_metric_series(m, (const char *[]){NULL}, &s), PD_ERR_INVAL);
    /* Label explosion is bounded. */
    char v[32];
    pd_status_t st = PD_OK;
    int n = 0;
    for (; n < PD_METRIC_MAX_SERIES + 10 && st == PD_OK; n++) {
        snprintf(v, sizeof(v), "v%d", n);
        st = pd_metric_series(m, (const char *[]){v}, &s);
    }
    PD_CHECK_STATUS(st, PD_ERR_LIMIT);
    PD_CHECK_EQ_INT(n - 1, PD_METRIC_MAX_SERIES);
    pd_metrics_registry_destroy(reg);
}

typedef struct hammer {
    pd_metric_series_t *c, *h;
    int n;
} hammer_t;

static void *hammer_main(void *arg)
{
    hammer_t *hm = arg;
    for (int i = 0; i < hm->n; i++) {
        pd_metric_inc(hm->c);
        pd_metric_observe(hm->h, (i % 3) * 0.5);
    }
    return NULL;
}

PD_TEST(test_concurrent_updates)
{
    pd_metrics_registry_t *reg;
    PD_CHECK_STATUS(pd_metrics_registry_create(&reg), PD_OK);
    pd_metric_t *c, *h;
    pd_metrics_counter(reg, "c_total", "c", 0, NULL, &c);
    pd_metrics_histogram(reg, "h_seconds", "h", 0, NULL, 2, (double[]){0.25, 0.75}, &h);
    hammer_t hm = {pd_metric_default(c), pd_metric_default(h), 100000};
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, hammer_main, &hm);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    PD_CHECK(pd_metric_value(hm.c) == 400000.0);
    PD_CHECK_EQ_INT(pd_metric_count(hm.h), 400000);
    /* sum of (i%3)*0.5 over 100000 i, times 4; exact in binary (multiples of 0.5) */
    double per = 0;
    for (int i = 0; i < 100000; i++)
        per += (i % 3) * 0.5;
    PD_CHECK(pd_metric_value(hm.h) == 4 * per);
    pd_buf_t out;
    pd_buf_init(&out);
    pd_metrics_render(reg, &out);
    PD_CHECK(strstr(out.data, "h_seconds_bucket{le=\"0.25\"} 133336\n") != NULL);
    PD_CHECK(strstr(out.data, "h_seconds_bucket{le=\"+Inf\"} 400000\n") != NULL);
    pd_buf_cleanup(&out);
    pd_metrics_registry_destroy(reg);
}

static void collect(pd_metrics_registry_t *reg, void *user)
{
    (void)reg;
    pd_metric_set(pd_metric_default(user), 42);
}

PD_TEST(test_collector)
{
    pd_metrics_registry_t *reg;
    PD_CHECK_STATUS(pd_metrics_registry_create(&reg), PD_OK);
    pd_metric_t *g;
    pd_metrics_gauge(reg, "vllm:kv_cache_usage_perc", "KV usage.", 0, NULL, &g);
    PD_CHECK_STATUS(pd_metrics_add_collector(reg, collect, g), PD_OK);
    pd_buf_t out;
    pd_buf_init(&out);
    pd_metrics_render(reg, &out);
    PD_CHECK(strstr(out.data, "vllm:kv_cache_usage_perc 42.0\n") != NULL);
    pd_buf_cleanup(&out);
    pd_metrics_registry_destroy(reg);
}

int main(void)
{
    pd_log_set_level(PD_LOG_LEVEL_CRIT); /* the rule tests log their refusals */
    PD_RUN(test_format_double);
    PD_RUN(test_exposition);
    PD_RUN(test_registration_rules);
    PD_RUN(test_concurrent_updates);
    PD_RUN(test_collector);
    return PD_TEST_REPORT();
}
