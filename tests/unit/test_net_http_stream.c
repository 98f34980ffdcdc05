/*
 * test_net_http_stream.c - direct stream writes of the HTTP layer (common/pd_http.c,
 * "direct stream writes"): while a stream is idle the producing thread frames each
 * event as an HTTP chunk and sends it itself instead of resuming libmicrohttpd.
 *
 * Real sockets on 127.0.0.1 with a hand-written HTTP/1.1 client (so the test controls
 * when it reads, its receive buffer, and checks the chunked framing byte by byte):
 * Every case runs twice: the worker sends (default) and the producer sends (inline).
 * - a reading client gets every event exactly, most of them sent directly;
 * - the same with direct writes turned off (config) gets the same bytes, none direct;
 * - with the default minimum gap, a burst goes through libmicrohttpd (coalesced);
 * - a client that reads nothing while megabytes are written: writes go partial, the
 *   tails wait in order and leave when it reads; the body is exact and ends properly;
 * - a client that leaves mid-stream: on_close(PD_ERR_CLOSED), later writes refused;
 * - an HTTP/1.0 client (no chunked encoding): nothing direct, the body exact;
 * - a client that never reads: cut after the idle timeout (on_close PD_ERR_CLOSED).
 * No check depends on timing: the test waits for conditions (with generous limits).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pd_http.h"
#include "pd_log.h"
#include "pd_test.h"
#include "pd_util.h"

/* ---- one stream per test, produced by a thread ---- */

typedef struct job {
    pd_http_stream_t *stream;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int have_stream;
    atomic_int closed;        /* on_close fired */
    pd_status_t close_status;
} job_t;

static job_t job_g;
static int inline_g; /* the mode under test: 1 = the producer sends (direct_stream_inline) */

static void job_reset(void)
{
    job_g.stream = NULL;
    job_g.have_stream = 0;
    atomic_store(&job_g.closed, 0);
    job_g.close_status = PD_OK;
}

static void on_close(pd_http_stream_t *s, pd_status_t st, void *user)
{
    (void)s;
    (void)user;
    job_g.close_status = st;
    atomic_store(&job_g.closed, 1);
}

static void h_stream(pd_http_req_t *req, void *user)
{
    pd_http_stream_t *s = NULL;
    (void)user;
    if (pd_http_stream_begin(req, "text/event-stream", on_close, NULL, &s) != PD_OK)
        return;
    pthread_mutex_lock(&job_g.mu);
    job_g.stream = s;
    job_g.have_stream = 1;
    pthread_cond_broadcast(&job_g.cv);
    pthread_mutex_unlock(&job_g.mu);
}

static pd_http_stream_t *wait_stream(void)
{
    pthread_mutex_lock(&job_g.mu);
    while (!job_g.have_stream)
        pthread_cond_wait(&job_g.cv, &job_g.mu);
    pd_http_stream_t *s = job_g.stream;
    pthread_mutex_unlock(&job_g.mu);
    return s;
}

static int wait_flag(atomic_int *flag, int seconds)
{
    for (int i = 0; i < seconds * 200 && !atomic_load(flag); i++)
        usleep(5000);
    return atomic_load(flag);
}

static pd_http_server_t *start_gap(int direct, unsigned timeout_s, unsigned gap_us)
{
    pd_http_config_t cfg;
    pd_http_server_t *srv = NULL;
    pd_http_config_init(&cfg);
    cfg.host = "127.0.0.1";
    cfg.port = 0;
    cfg.n_threads = 2;
    cfg.disable_access_log = 1;
    cfg.disable_direct_stream = !direct;
    if (timeout_s)
        cfg.connection_timeout_s = timeout_s;
    cfg.direct_stream_min_gap_us = gap_us;
    cfg.direct_stream_inline = inline_g;
    if (pd_http_server_create(&cfg, &srv) != PD_OK)
        return NULL;
    if (pd_http_route(srv, "GET", "/s", h_stream, NULL) != PD_OK || pd_http_server_start(srv) != PD_OK) {
        pd_http_server_destroy(srv);
        return NULL;
    }
    job_reset();
    return srv;
}

/* Tests that write faster than a token stream set the gap to 1 us: every event of an
 * idle stream is then written directly. */
static pd_http_server_t *start(int direct, unsigned timeout_s)
{
    return start_gap(direct, timeout_s, 1);
}

/* ---- a raw HTTP client ---- */

static int client_connect(uint16_t port, int rcvbuf, const char *version)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
    char req[256];
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    int n = snprintf(req, sizeof(req), "GET /s %s\r\nHost: 127.0.0.1\r\n\r\n", version);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Read until the peer closes or, when chunked, until the last chunk; returns the raw
 * bytes (headers and body). */
static void client_read_all(int fd, pd_buf_t *out, int chunked)
{
    char buf[65536];
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 60000) <= 0)
            return;
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            return;
        pd_buf_append(out, buf, (size_t)n);
        if (chunked && out->len >= 5 && memcmp(out->data + out->len - 5, "0\r\n\r\n", 5) == 0)
            return;
    }
}

/* Split a response into headers and a body; a chunked body is decoded, checking each
 * frame.  Returns 0 on a well-formed response. */
static int parse_response(const pd_buf_t *in, int *chunked_p, pd_buf_t *body)
{
    const char *end = memmem(in->data, in->len, "\r\n\r\n", 4);
    if (end == NULL || strncmp(in->data, "HTTP/1.", 7) != 0 || strncmp(in->data + 9, "200", 3) != 0)
        return -1;
    size_t hl = (size_t)(end - in->data) + 4;
    int chunked = memmem(in->data, hl, "Transfer-Encoding: chunked", 26) != NULL ||
                  memmem(in->data, hl, "transfer-encoding: chunked", 26) != NULL;
    *chunked_p = chunked;
    if (!chunked)
        return pd_buf_append(body, in->data + hl, in->len - hl) == PD_OK ? 0 : -1;
    size_t pos = hl;
    for (;;) {
        char *e;
        unsigned long long sz = strtoull(in->data + pos, &e, 16);
        if (e == in->data + pos || (size_t)(e - in->data) + 2 > in->len || memcmp(e, "\r\n", 2) != 0)
            return -1;
        pos = (size_t)(e - in->data) + 2;
        if (sz == 0)
            return (pos + 2 == in->len && memcmp(in->data + pos, "\r\n", 2) == 0) ? 0 : -1;
        if (pos + sz + 2 > in->len || memcmp(in->data + pos + sz, "\r\n", 2) != 0)
            return -1;
        pd_buf_append(body, in->data + pos, (size_t)sz);
        pos += (size_t)sz + 2;
    }
}

/* Event i: "data: {"i":i,"p":"xxx..."}\n\n" with a payload of a size that varies. */
static void event_json(int i, size_t pad, pd_buf_t *b)
{
    char head[64];
    b->len = 0;
    snprintf(head, sizeof(head), "{\"i\":%d,\"p\":\"", i);
    pd_buf_puts(b, head);
    for (size_t k = 0; k < pad; k++)
        pd_buf_append(b, &"abcdefghijklmnopqrstuvwxyz"[(i + (int)k) % 26], 1);
    pd_buf_puts(b, "\"}");
}

/* Produce n events (sizes from size_of(i)) and [DONE], end the stream; the expected
 * body goes to want. */
static void produce(pd_http_stream_t *s, int n, size_t (*size_of)(int), pd_buf_t *want)
{
    pd_buf_t ev;
    pd_buf_init(&ev);
    for (int i = 0; i < n; i++) {
        event_json(i, size_of(i), &ev);
        PD_CHECK_STATUS(pd_http_sse_send(s, ev.data), PD_OK);
        pd_buf_puts(want, "data: ");
        pd_buf_append(want, ev.data, ev.len);
        pd_buf_puts(want, "\n\n");
    }
    PD_CHECK_STATUS(pd_http_sse_done(s), PD_OK);
    pd_buf_puts(want, "data: [DONE]\n\n");
    PD_CHECK_STATUS(pd_http_stream_end(s), PD_OK);
    pd_buf_cleanup(&ev);
}

static size_t small_size(int i) { return (size_t)(i * 37 % 300); }
static size_t big_size(int i) { return 8000 + (size_t)(i % 7) * 100; }

typedef struct prod_arg {
    pd_http_stream_t *s;
    int n;
    size_t (*size_of)(int);
    pd_buf_t want;
} prod_arg_t;

static void *producer_main(void *arg)
{
    prod_arg_t *a = arg;
    produce(a->s, a->n, a->size_of, &a->want);
    return NULL;
}

/* A reading client, events produced one at a time with a tiny pause (token-like);
 * returns the counts seen by the server. */
static void run_paced(int direct, pd_http_stream_counts_t *delta_p)
{
    pd_http_server_t *srv = start(direct, 0);
    PD_CHECK(srv != NULL);
    if (srv == NULL)
        return;
    pd_http_stream_counts_t c0, c1;
    pd_http_server_stream_counts(srv, &c0);
    int fd = client_connect(pd_http_server_port(srv), 0, "HTTP/1.1");
    PD_CHECK(fd >= 0);
    pd_http_stream_t *s = wait_stream();
    pd_buf_t want, got, body, ev;
    pd_buf_init(&want);
    pd_buf_init(&got);
    pd_buf_init(&body);
    pd_buf_init(&ev);
    for (int i = 0; i < 300; i++) {
        event_json(i, small_size(i), &ev);
        PD_CHECK_STATUS(pd_http_sse_send(s, ev.data), PD_OK);
        pd_buf_puts(&want, "data: ");
        pd_buf_append(&want, ev.data, ev.len);
        pd_buf_puts(&want, "\n\n");
        usleep(200); /* the worker usually gets to suspend the stream in between */
    }
    PD_CHECK_STATUS(pd_http_sse_done(s), PD_OK);
    pd_buf_puts(&want, "data: [DONE]\n\n");
    PD_CHECK_STATUS(pd_http_stream_end(s), PD_OK);
    client_read_all(fd, &got, 1);
    int chunked = 0;
    PD_CHECK(parse_response(&got, &chunked, &body) == 0);
    PD_CHECK(chunked);
    PD_CHECK_EQ_INT(body.len, want.len);
    PD_CHECK(body.len == want.len && memcmp(body.data, want.data, want.len) == 0);
    PD_CHECK(wait_flag(&job_g.closed, 30));
    PD_CHECK_STATUS(job_g.close_status, PD_OK);
    pd_http_stream_release(s);
    pd_http_server_stream_counts(srv, &c1);
    delta_p->direct = c1.direct - c0.direct;
    delta_p->direct_partial = c1.direct_partial - c0.direct_partial;
    delta_p->loop = c1.loop - c0.loop;
    close(fd);
    pd_http_server_destroy(srv);
    pd_buf_cleanup(&want);
    pd_buf_cleanup(&got);
    pd_buf_cleanup(&body);
    pd_buf_cleanup(&ev);
}

PD_TEST(test_direct_paced)
{
    pd_http_stream_counts_t d;
    run_paced(1, &d);
    /* 301 events: the first ones may go through MHD (the stream is not idle yet) */
    PD_CHECK(d.direct > 0);
    PD_CHECK_EQ_INT(d.direct + d.loop, 301);
    fprintf(stderr, "  direct on: %llu direct (%llu partial), %llu through the loop\n",
            (unsigned long long)d.direct, (unsigned long long)d.direct_partial, (unsigned long long)d.loop);
}

PD_TEST(test_direct_off)
{
    pd_http_stream_counts_t d;
    run_paced(0, &d);
    PD_CHECK_EQ_INT(d.direct, 0);
    PD_CHECK_EQ_INT(d.loop, 301);
}

/* The client reads nothing while ~8 MB are written (small receive buffer): direct
 * writes go partial, their tails wait in order; then it reads everything. */
PD_TEST(test_direct_slow_reader)
{
    pd_http_server_t *srv = start(1, 0);
    PD_CHECK(srv != NULL);
    if (srv == NULL)
        return;
    pd_http_stream_counts_t c0, c1;
    pd_http_server_stream_counts(srv, &c0);
    int fd = client_connect(pd_http_server_port(srv), 4096, "HTTP/1.1");
    PD_CHECK(fd >= 0);
    pd_http_stream_t *s = wait_stream();
    /* the first event makes the stream idle (headers and that chunk sent by MHD) */
    PD_CHECK_STATUS(pd_http_sse_send(s, "{\"first\":1}"), PD_OK);
    for (int i = 0; i < 2000 && pd_http_stream_queued(s) > 0; i++) /* MHD took it */
        usleep(5000);
    usleep(20000); /* and (almost surely) sent it and suspended the stream */
    prod_arg_t a = {.s = s, .n = 1000, .size_of = big_size};
    pd_buf_init(&a.want);
    pd_buf_puts(&a.want, "data: {\"first\":1}\n\n");
    pthread_t th;
    pthread_create(&th, NULL, producer_main, &a);
    pthread_join(th, NULL); /* never blocks on the client: writes are non-blocking */
    pd_http_server_stream_counts(srv, &c1);
    PD_CHECK(c1.direct_partial > c0.direct_partial);
    PD_CHECK(pd_http_stream_queued(s) > 0); /* tails wait for the client */
    pd_buf_t got, body;
    pd_buf_init(&got);
    pd_buf_init(&body);
    client_read_all(fd, &got, 1);
    int chunked = 0;
    PD_CHECK(parse_response(&got, &chunked, &body) == 0);
    PD_CHECK(chunked);
    PD_CHECK_EQ_INT(body.len, a.want.len);
    PD_CHECK(body.len == a.want.len && memcmp(body.data, a.want.data, a.want.len) == 0);
    PD_CHECK(wait_flag(&job_g.closed, 30));
    PD_CHECK_STATUS(job_g.close_status, PD_OK);
    fprintf(stderr, "  slow reader: %llu direct, %llu partial, %llu through the loop\n",
            (unsigned long long)(c1.direct - c0.direct), (unsigned long long)(c1.direct_partial - c0.direct_partial),
            (unsigned long long)(c1.loop - c0.loop));
    pd_http_stream_release(s);
    close(fd);
    pd_http_server_destroy(srv);
    pd_buf_cleanup(&a.want);
    pd_buf_cleanup(&got);
    pd_buf_cleanup(&body);
}

/* A burst: inline, with the default gap (1 ms), it goes through the loop after its
 * first event, which coalesces it; handed to the worker, what queued before it ran
 * leaves in one send.  The bytes are the same. */
PD_TEST(test_burst_uses_loop)
{
    pd_http_server_t *srv = start_gap(1, 0, 0);
    PD_CHECK(srv != NULL);
    if (srv == NULL)
        return;
    pd_http_stream_counts_t c0, c1;
    pd_http_server_stream_counts(srv, &c0);
    int fd = client_connect(pd_http_server_port(srv), 0, "HTTP/1.1");
    PD_CHECK(fd >= 0);
    pd_http_stream_t *s = wait_stream();
    PD_CHECK_STATUS(pd_http_sse_send(s, "{\"first\":1}"), PD_OK);
    for (int i = 0; i < 2000 && pd_http_stream_queued(s) > 0; i++)
        usleep(5000);
    usleep(20000);
    prod_arg_t a = {.s = s, .n = 500, .size_of = small_size};
    pd_buf_init(&a.want);
    pd_buf_puts(&a.want, "data: {\"first\":1}\n\n");
    produce(s, a.n, a.size_of, &a.want);
    pd_buf_t got, body;
    pd_buf_init(&got);
    pd_buf_init(&body);
    client_read_all(fd, &got, 1);
    int chunked = 0;
    PD_CHECK(parse_response(&got, &chunked, &body) == 0);
    PD_CHECK(body.len == a.want.len && memcmp(body.data, a.want.data, a.want.len) == 0);
    pd_http_server_stream_counts(srv, &c1);
    if (inline_g) /* 502 events back to back: a few direct (one per idle period), most queued */
        PD_CHECK(c1.loop - c0.loop > 400);
    else /* events queued while the worker had not run yet leave in one send */
        PD_CHECK(c1.sends - c0.sends < 400);
    fprintf(stderr, "  burst: %llu direct in %llu sends, %llu through the loop\n",
            (unsigned long long)(c1.direct - c0.direct), (unsigned long long)(c1.sends - c0.sends),
            (unsigned long long)(c1.loop - c0.loop));
    PD_CHECK(wait_flag(&job_g.closed, 30));
    pd_http_stream_release(s);
    close(fd);
    pd_http_server_destroy(srv);
    pd_buf_cleanup(&a.want);
    pd_buf_cleanup(&got);
    pd_buf_cleanup(&body);
}

/* The client leaves after the first bytes: on_close(PD_ERR_CLOSED), writes refused. */
PD_TEST(test_direct_client_leaves)
{
    pd_http_server_t *srv = start(1, 0);
    PD_CHECK(srv != NULL);
    if (srv == NULL)
        return;
    int fd = client_connect(pd_http_server_port(srv), 0, "HTTP/1.1");
    PD_CHECK(fd >= 0);
    pd_http_stream_t *s = wait_stream();
    PD_CHECK_STATUS(pd_http_sse_send(s, "{\"a\":1}"), PD_OK);
    char buf[4096];
    struct pollfd p = {fd, POLLIN, 0};
    PD_CHECK(poll(&p, 1, 30000) == 1 && read(fd, buf, sizeof(buf)) > 0);
    close(fd);
    pd_status_t st = PD_OK;
    for (int i = 0; i < 6000 && st == PD_OK; i++) { /* up to 30 s */
        st = pd_http_sse_send(s, "{\"b\":2}");
        usleep(5000);
    }
    PD_CHECK_STATUS(st, PD_ERR_CLOSED);
    PD_CHECK(wait_flag(&job_g.closed, 30));
    PD_CHECK_STATUS(job_g.close_status, PD_ERR_CLOSED);
    PD_CHECK(pd_http_stream_closed(s));
    pd_http_stream_release(s);
    pd_http_server_destroy(srv);
}

/* HTTP/1.0: no chunked encoding, so no direct writes; the body ends at close. */
PD_TEST(test_http10_not_direct)
{
    pd_http_server_t *srv = start(1, 0);
    PD_CHECK(srv != NULL);
    if (srv == NULL)
        return;
    pd_http_stream_counts_t c0, c1;
    pd_http_server_stream_counts(srv, &c0);
    int fd = client_connect(pd_http_server_port(srv), 0, "HTTP/1.0");
    PD_CHECK(fd >= 0);
    pd_http_stream_t *s = wait_stream();
    pd_buf_t want, got, body;
    pd_buf_init(&want);
    pd_buf_init(&got);
    pd_buf_init(&body);
    for (int i = 0; i < 50; i++) {
        PD_CHECK_STATUS(pd_http_sse_send(s, "{\"x\":1}"), PD_OK);
        pd_buf_puts(&want, "data: {\"x\":1}\n\n");
        usleep(500);
    }
    PD_CHECK_STATUS(pd_http_stream_end(s), PD_OK);
    client_read_all(fd, &got, 0);
    int chunked = 1;
    PD_CHECK(parse_response(&got, &chunked, &body) == 0);
    PD_CHECK(!chunked);
    PD_CHECK(body.len == want.len && memcmp(body.data, want.data, want.len) == 0);
    pd_http_server_stream_counts(srv, &c1);
    PD_CHECK_EQ_INT(c1.direct - c0.direct, 0);
    PD_CHECK(wait_flag(&job_g.closed, 30));
    pd_http_stream_release(s);
    close(fd);
    pd_http_server_destroy(srv);
    pd_buf_cleanup(&want);
    pd_buf_cleanup(&got);
    pd_buf_cleanup(&body);
}

/* A client that never reads: once a direct write is left partly unsent, the idle
 * timeout (1 s here) cuts the connection. */
PD_TEST(test_direct_stalled_reader_cut)
{
    pd_http_server_t *srv = start(1, 1);
    PD_CHECK(srv != NULL);
    if (srv == NULL)
        return;
    int fd = client_connect(pd_http_server_port(srv), 4096, "HTTP/1.1");
    PD_CHECK(fd >= 0);
    pd_http_stream_t *s = wait_stream();
    PD_CHECK_STATUS(pd_http_sse_send(s, "{\"first\":1}"), PD_OK);
    for (int i = 0; i < 2000 && pd_http_stream_queued(s) > 0; i++)
        usleep(5000);
    usleep(20000);
    pd_http_stream_counts_t c0, c;
    pd_http_server_stream_counts(srv, &c0);
    pd_buf_t ev;
    pd_buf_init(&ev);
    for (int i = 0; i < 4000; i++) {
        pd_http_server_stream_counts(srv, &c);
        if (c.direct_partial > c0.direct_partial)
            break;
        event_json(i, 8000, &ev);
        if (pd_http_sse_send(s, ev.data) != PD_OK)
            break;
    }
    pd_buf_cleanup(&ev);
    PD_CHECK(c.direct_partial > c0.direct_partial);
    PD_CHECK(wait_flag(&job_g.closed, 60));
    PD_CHECK_STATUS(job_g.close_status, PD_ERR_CLOSED);
    PD_CHECK_STATUS(pd_http_sse_send(s, "{\"late\":1}"), PD_ERR_CLOSED);
    pd_http_stream_release(s);
    close(fd);
    pd_http_server_destroy(srv);
}

int main(void)
{
    if (getenv("PD_HTTP_TEST_VERBOSE") == NULL)
        pd_log_set_level(PD_LOG_LEVEL_ERR);
    pthread_mutex_init(&job_g.mu, NULL);
    pthread_cond_init(&job_g.cv, NULL);
    for (inline_g = 0; inline_g < 2; inline_g++) {
        fprintf(stderr, "-- %s\n", inline_g ? "the producer sends (inline)" : "the worker sends (default)");
        PD_RUN(test_direct_paced);
        PD_RUN(test_direct_off);
        PD_RUN(test_direct_slow_reader);
        PD_RUN(test_burst_uses_loop);
        PD_RUN(test_direct_client_leaves);
        PD_RUN(test_http10_not_direct);
        PD_RUN(test_direct_stalled_reader_cut);
    }
    pthread_cond_destroy(&job_g.cv);
    pthread_mutex_destroy(&job_g.mu);
    return PD_TEST_REPORT();
}
