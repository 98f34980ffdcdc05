/*
 * bench_http.c - throughput and server CPU cost of the HTTP layer (pd_http).
 *
 *   bench_http [--seconds S] [--conns C] [--threads T] [--streams N] [--events E] [--json]
 *
 * 1. Trivial JSON route (GET /json, 60-byte body, keep-alive): requests/s and server
 *    CPU microseconds per request.  Load from wrk (a separate process) when it is on
 *    PATH, else from a forked libcurl client.  Server CPU = getrusage(RUSAGE_SELF) of
 *    this process, which holds only the server then.
 *    Ceiling beside it: the same client against a minimal epoll server in this process
 *    that answers every request with canned bytes and no parsing (the loopback/kernel
 *    cost every HTTP server pays).
 * 2. SSE: N streams opened by a forked libcurl client; a producer thread (the "engine")
 *    sends E events of ~90 bytes to each, then [DONE].  Events/s and server CPU us per
 *    event (producer included).  Ceiling beside it: one write() per event of the same
 *    size over a loopback TCP pair.  The SSE cases run on servers in turn: direct
 *    stream writes sent by the worker (the default), every event through
 *    libmicrohttpd's loop (disable_direct_stream: resume, send, suspend), and (paced
 *    only) direct writes sent by the producer (direct_stream_inline); paced twice each.
 * Prints a table, and one JSON line with --json.  Numbers vary with machine load.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pd_http.h"
#include "pd_log.h"
#include "pd_util.h"

static const char json_body[] = "{\"object\":\"list\",\"data\":[{\"id\":\"model\",\"object\":\"model\"}]}";

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* ---- the server under test ---- */

static _Atomic unsigned long long json_count;

static void h_json(pd_http_req_t *req, void *user)
{
    (void)user;
    atomic_fetch_add_explicit(&json_count, 1, memory_order_relaxed);
    pd_http_respond_json(req, 200, NULL, json_body);
}

#define MAX_STREAMS 4096
static pthread_mutex_t sse_lock = PTHREAD_MUTEX_INITIALIZER;
static pd_http_stream_t *sse_streams[MAX_STREAMS];
static int sse_n;
static _Atomic int sse_closed;

static void sse_close(pd_http_stream_t *s, pd_status_t st, void *user)
{
    (void)s;
    (void)st;
    (void)user;
    atomic_fetch_add(&sse_closed, 1);
}

static void add_stream(pd_http_stream_t *stream)
{
    pthread_mutex_lock(&sse_lock);
    if (sse_n < MAX_STREAMS)
        sse_streams[sse_n++] = stream;
    else
        pd_http_stream_release(stream);
    pthread_mutex_unlock(&sse_lock);
}

static void h_sse(pd_http_req_t *req, void *user)
{
    pd_http_stream_t *stream = NULL;
    (void)user;
    if (pd_http_stream_begin(req, NULL, sse_close, NULL, &stream) != PD_OK)
        return;
    add_stream(stream);
}

/* ---- the ceiling server: canned answers, no parsing ---- */

static char canned[512];
static size_t canned_len;

typedef struct raw_srv {
    int lfd, efd;
    uint16_t port;
    _Atomic int run;
    _Atomic unsigned long long count;
    pthread_t thr;
} raw_srv_t;

static void *raw_main(void *arg)
{
    raw_srv_t *rs = arg;
    struct epoll_event evs[256];
    char buf[16384];
    while (atomic_load(&rs->run)) {
        int n = epoll_wait(rs->efd, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == rs->lfd) {
                int c;
                while ((c = accept4(rs->lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int one = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    struct epoll_event ev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(rs->efd, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof(buf));
            if (r <= 0) {
                close(fd);
                continue;
            }
            /* one answer per request head in what was read (wrk pipelines nothing) */
            int reqs = 0;
            for (ssize_t k = 3; k < r; k++)
                if (buf[k] == '\n' && buf[k - 1] == '\r' && buf[k - 2] == '\n' && buf[k - 3] == '\r')
                    reqs++;
            for (int q = 0; q < reqs; q++)
                if (write(fd, canned, canned_len) < 0)
                    break;
            atomic_fetch_add(&rs->count, (unsigned long long)reqs);
        }
    }
    return NULL;
}

static int raw_start(raw_srv_t *rs)
{
    canned_len = (size_t)snprintf(canned, sizeof(canned),
                                  "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                  "Content-Length: %zu\r\n\r\n%s",
                                  sizeof(json_body) - 1, json_body);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    rs->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (rs->lfd < 0 || bind(rs->lfd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        listen(rs->lfd, 1024) != 0 || getsockname(rs->lfd, (struct sockaddr *)&a, &al) != 0)
        return -1;
    rs->port = ntohs(a.sin_port);
    rs->efd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = rs->lfd};
    epoll_ctl(rs->efd, EPOLL_CTL_ADD, rs->lfd, &ev);
    atomic_store(&rs->run, 1);
    return pthread_create(&rs->thr, NULL, raw_main, rs);
}

static void raw_stop(raw_srv_t *rs)
{
    atomic_store(&rs->run, 0);
    pthread_join(rs->thr, NULL);
    close(rs->efd);
    close(rs->lfd); /* client sockets die with the client */
}

/* ---- load generators ---- */

static int have_wrk(void)
{
    return system("command -v wrk >/dev/null 2>&1") == 0;
}

/* wrk in a child process; returns its requests/s (or -1). */
static double run_wrk(uint16_t port, const char *path, int conns, int secs)
{
    char cmd[256], line[512];
    double rps = -1;
    snprintf(cmd, sizeof(cmd), "wrk -t2 -c%d -d%ds http://127.0.0.1:%u%s 2>&1", conns, secs, port, path);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    while (fgets(line, sizeof(line), p))
        if (strncmp(line, "Requests/sec:", 13) == 0)
            rps = atof(line + 13);
    pclose(p);
    return rps;
}

static size_t sink(char *p, size_t sz, size_t n, void *u)
{
    (void)p;
    (void)u;
    return sz * n;
}

/* Forked libcurl client: `conns` keep-alive connections doing GETs for `secs`. */
static void curl_json_client(uint16_t port, int conns, int secs)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/json", port);
    curl_global_init(CURL_GLOBAL_ALL);
    CURLM *m = curl_multi_init();
    CURL **e = calloc((size_t)conns, sizeof(*e));
    for (int i = 0; i < conns; i++) {
        e[i] = curl_easy_init();
        curl_easy_setopt(e[i], CURLOPT_URL, url);
        curl_easy_setopt(e[i], CURLOPT_WRITEFUNCTION, sink);
        curl_multi_add_handle(m, e[i]);
    }
    double end = pd_now_s() + secs;
    int running;
    while (pd_now_s() < end) {
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            if (msg->msg == CURLMSG_DONE) { /* re-arm the same handle: keeps its connection */
                curl_multi_remove_handle(m, msg->easy_handle);
                curl_multi_add_handle(m, msg->easy_handle);
            }
        }
        curl_multi_poll(m, NULL, 0, 10, NULL);
    }
    _exit(0);
}

static void curl_sse_client(uint16_t port, int streams)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/sse", port);
    curl_global_init(CURL_GLOBAL_ALL);
    CURLM *m = curl_multi_init();
    for (int i = 0; i < streams; i++) {
        CURL *e = curl_easy_init();
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "{}");
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink);
        curl_multi_add_handle(m, e);
    }
    int running = 1;
    while (running) {
        curl_multi_perform(m, &running);
        if (running)
            curl_multi_poll(m, NULL, 0, 50, NULL);
    }
    _exit(0);
}

/* ---- SSE ceiling: one write() per event over loopback TCP ---- */

typedef struct pair_arg {
    int fd;
    size_t total;
} pair_arg_t;

static void *pair_reader(void *arg)
{
    pair_arg_t *pa = arg;
    char buf[65536];
    size_t got = 0;
    while (got < pa->total) {
        ssize_t r = read(pa->fd, buf, sizeof(buf));
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return NULL;
}

static double sse_ceiling(long n_events, size_t ev_len, size_t write_size, double *cpu_us_p)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    bind(l, (struct sockaddr *)&a, sizeof(a));
    listen(l, 1);
    getsockname(l, (struct sockaddr *)&a, &al);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    connect(c, (struct sockaddr *)&a, sizeof(a));
    int s = accept(l, NULL, NULL);
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    char *ev = malloc(write_size);
    memset(ev, 'x', write_size);
    size_t total = (size_t)n_events * ev_len;
    pair_arg_t pa = {c, total};
    pthread_t t;
    double c0 = cpu_s(), t0 = pd_now_s();
    pthread_create(&t, NULL, pair_reader, &pa);
    for (size_t off = 0; off < total;) {
        size_t k = PD_MIN(write_size, total - off);
        ssize_t w = write(s, ev, k);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    pthread_join(t, NULL);
    double dt = pd_now_s() - t0, dc = cpu_s() - c0;
    free(ev);
    close(s);
    close(c);
    close(l);
    *cpu_us_p = dc * 1e6 / (double)n_events; /* writer + reader */
    return dt;
}

typedef struct sse_result {
    double ev_per_s, cpu_us;
    int n_streams, ev_len;
} sse_result_t;

static sse_result_t run_sse(uint16_t port, int streams, int events, int pace_us)
{
    sse_result_t res = {0};
    pthread_mutex_lock(&sse_lock);
    sse_n = 0;
    pthread_mutex_unlock(&sse_lock);
    atomic_store(&sse_closed, 0);
    pid_t pid = fork();
    if (pid == 0)
        curl_sse_client(port, streams);
    for (int i = 0; i < 3000; i++) {
        pthread_mutex_lock(&sse_lock);
        int n = sse_n;
        pthread_mutex_unlock(&sse_lock);
        if (n == streams)
            break;
        usleep(2000);
    }
    char ev[160];
    int ev_len = 0;
    double c0 = cpu_s(), t0 = pd_now_s();
    for (int e = 0; e < events; e++) {
        for (int s = 0; s < sse_n; s++) {
            ev_len = snprintf(ev, sizeof(ev),
                              "{\"id\":\"cmpl-%04d\",\"object\":\"text_completion\","
                              "\"choices\":[{\"text\":\"tok%05d\"}]}", s, e);
            pd_http_sse_send(sse_streams[s], ev);
        }
        if (pace_us > 0)
            usleep((useconds_t)pace_us);
        else if ((e & 15) == 15)
            usleep(100);
    }
    for (int s = 0; s < sse_n; s++) {
        pd_http_sse_done(sse_streams[s]);
        pd_http_stream_release(sse_streams[s]);
    }
    while (atomic_load(&sse_closed) < sse_n && pd_now_s() - t0 < 120)
        usleep(1000);
    double dt = pd_now_s() - t0, dc = cpu_s() - c0;
    waitpid(pid, NULL, 0);
    long n_ev = (long)sse_n * events;
    res.n_streams = sse_n;
    res.ev_len = ev_len + 8; /* "data: " + "\n\n" */
    res.ev_per_s = n_ev / dt;
    res.cpu_us = dc * 1e6 / (double)n_ev;
    return res;
}

int main(int argc, char **argv)
{
    int secs = 3, conns = 32, threads = 2, streams = 100, events = 1000, json_out = 0;
    int pace_us = 2000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            secs = atoi(argv[++i]);
        else if (strcmp(argv[i], "--conns") == 0 && i + 1 < argc)
            conns = atoi(argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--streams") == 0 && i + 1 < argc)
            streams = atoi(argv[++i]);
        else if (strcmp(argv[i], "--events") == 0 && i + 1 < argc)
            events = atoi(argv[++i]);
        else if (strcmp(argv[i], "--pace-us") == 0 && i + 1 < argc)
            pace_us = atoi(argv[++i]);
        else if (strcmp(argv[i], "--json") == 0)
            json_out = 1;
        else {
            fprintf(stderr, "usage: %s [--seconds S] [--conns C] [--threads T] [--streams N] "
                            "[--events E] [--json]\n", argv[0]);
            return 2;
        }
    }
    if (streams < 1 || streams > MAX_STREAMS || secs < 1 || conns < 1 || events < 1) {
        fprintf(stderr, "bench_http: bad arguments\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    pd_log_set_level(PD_LOG_LEVEL_WARN);

    pd_http_config_t cfg;
    pd_http_config_init(&cfg);
    cfg.host = "127.0.0.1";
    cfg.port = 0;
    cfg.n_threads = (unsigned)threads;
    cfg.disable_access_log = 1;
    pd_http_server_t *srv = NULL, *srv_loop = NULL, *srv_inline = NULL;
    if (pd_http_server_create(&cfg, &srv) != PD_OK ||
        pd_http_route(srv, "GET", "/json", h_json, NULL) != PD_OK ||
        pd_http_route(srv, "POST", "/sse", h_sse, NULL) != PD_OK || pd_http_server_start(srv) != PD_OK) {
        fprintf(stderr, "bench_http: cannot start the server\n");
        return 1;
    }
    cfg.direct_stream_inline = 1;
    if (pd_http_server_create(&cfg, &srv_inline) != PD_OK ||
        pd_http_route(srv_inline, "POST", "/sse", h_sse, NULL) != PD_OK || pd_http_server_start(srv_inline) != PD_OK) {
        fprintf(stderr, "bench_http: cannot start the third server\n");
        return 1;
    }
    cfg.direct_stream_inline = 0;
    cfg.disable_direct_stream = 1;
    if (pd_http_server_create(&cfg, &srv_loop) != PD_OK ||
        pd_http_route(srv_loop, "POST", "/sse", h_sse, NULL) != PD_OK || pd_http_server_start(srv_loop) != PD_OK) {
        fprintf(stderr, "bench_http: cannot start the second server\n");
        return 1;
    }
    uint16_t port = pd_http_server_port(srv), port_loop = pd_http_server_port(srv_loop),
             port_inline = pd_http_server_port(srv_inline);
    int wrk = have_wrk();
    const char *client = wrk ? "wrk -t2" : "libcurl multi (forked)";

    /* 1. JSON */
    double c0 = cpu_s(), t0 = pd_now_s();
    if (wrk) {
        run_wrk(port, "/json", conns, secs);
    } else {
        pid_t pid = fork();
        if (pid == 0)
            curl_json_client(port, conns, secs);
        waitpid(pid, NULL, 0);
    }
    double dt = pd_now_s() - t0, dc = cpu_s() - c0;
    unsigned long long nreq = atomic_load(&json_count);
    double rps = nreq / dt, us_req = nreq ? dc * 1e6 / nreq : 0;

    raw_srv_t rs = {0};
    double raw_rps = 0, raw_us = 0;
    if (raw_start(&rs) == 0) {
        c0 = cpu_s();
        t0 = pd_now_s();
        if (wrk) {
            run_wrk(rs.port, "/json", conns, secs);
        } else {
            pid_t pid = fork();
            if (pid == 0)
                curl_json_client(rs.port, conns, secs);
            waitpid(pid, NULL, 0);
        }
        dt = pd_now_s() - t0;
        dc = cpu_s() - c0;
        unsigned long long rn = atomic_load(&rs.count);
        raw_rps = rn / dt;
        raw_us = rn ? dc * 1e6 / rn : 0;
        raw_stop(&rs);
    }

    /* 2. SSE: burst (events queue up and leave in shared writes) and paced (one round
     * of events every pace_us, like engine steps: about one write per event). */
    sse_result_t burst = run_sse(port, streams, events, 0);
    sse_result_t burst_loop = run_sse(port_loop, streams, events, 0);
    int n_paced = events / 5 > 0 ? events / 5 : 1;
    sse_result_t paced = run_sse(port, streams, n_paced, pace_us);
    sse_result_t paced_loop = run_sse(port_loop, streams, n_paced, pace_us);
    sse_result_t paced_inline = run_sse(port_inline, streams, n_paced, pace_us);
    sse_result_t paced2 = run_sse(port, streams, n_paced, pace_us);
    sse_result_t paced_loop2 = run_sse(port_loop, streams, n_paced, pace_us);
    sse_result_t paced_inline2 = run_sse(port_inline, streams, n_paced, pace_us);
    long n_ev = (long)burst.n_streams * events;
    double ceil_cpu_us = 0, ceil1_cpu_us = 0;
    double ceil_dt = sse_ceiling(n_ev, (size_t)burst.ev_len, 32768, &ceil_cpu_us);
    long n1 = PD_MIN(n_ev, 200000L);
    double ceil1_dt = sse_ceiling(n1, (size_t)burst.ev_len, (size_t)burst.ev_len, &ceil1_cpu_us);
    pd_http_server_destroy(srv);
    pd_http_server_destroy(srv_loop);
    pd_http_server_destroy(srv_inline);

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    printf("bench_http: %ld cores, %d server threads, client %s\n", ncpu, threads, client);
    printf("%-38s %14s %16s\n", "case", "rate", "server CPU us");
    printf("%-38s %11.0f/s %16.1f\n", "json GET (pd_http)", rps, us_req);
    printf("%-38s %11.0f/s %16.1f\n", "json GET (canned epoll, ceiling)", raw_rps, raw_us);
    printf("%-38s %11.0f/s %16.2f\n", "SSE event, burst (pd_http)", burst.ev_per_s, burst.cpu_us);
    printf("%-38s %11.0f/s %16.2f\n", "SSE event, burst (mhd loop only)", burst_loop.ev_per_s, burst_loop.cpu_us);
    printf("%-38s %11.0f/s %16.2f\n", "SSE bytes, 32 KiB writes (ceiling)", n_ev / ceil_dt, ceil_cpu_us);
    printf("%-38s %11.0f/s %9.2f %6.2f\n", "SSE event, paced (pd_http), 2 runs", paced.ev_per_s, paced.cpu_us,
           paced2.cpu_us);
    printf("%-38s %11.0f/s %9.2f %6.2f\n", "SSE event, paced (mhd loop only)", paced_loop.ev_per_s, paced_loop.cpu_us,
           paced_loop2.cpu_us);
    printf("%-38s %11.0f/s %9.2f %6.2f\n", "SSE event, paced (producer sends)", paced_inline.ev_per_s,
           paced_inline.cpu_us, paced_inline2.cpu_us);
    printf("%-38s %11.0f/s %16.2f\n", "SSE event, 1 write each (ceiling)", n1 / ceil1_dt, ceil1_cpu_us);
    printf("(%d connections for json; %d streams x %d events of %d bytes burst, x %d paced every %d us;\n"
           " ceilings: loopback TCP in this process, writer + reader CPU)\n",
           conns, burst.n_streams, events, burst.ev_len, events / 5 > 0 ? events / 5 : 1, pace_us);
    if (json_out)
        printf("{\"bench\":\"http\",\"cores\":%ld,\"threads\":%d,\"client\":\"%s\",\"json_rps\":%.0f,"
               "\"json_cpu_us\":%.2f,\"json_ceiling_rps\":%.0f,\"json_ceiling_cpu_us\":%.2f,"
               "\"sse_burst_events_per_s\":%.0f,\"sse_burst_cpu_us\":%.3f,"
               "\"sse_bulk_ceiling_events_per_s\":%.0f,\"sse_bulk_ceiling_cpu_us\":%.3f,"
               "\"sse_paced_events_per_s\":%.0f,\"sse_paced_cpu_us\":%.3f,"
               "\"sse_burst_loop_cpu_us\":%.3f,\"sse_paced_loop_cpu_us\":%.3f,"
               "\"sse_write_ceiling_events_per_s\":%.0f,\"sse_write_ceiling_cpu_us\":%.3f,"
               "\"streams\":%d,\"events\":%d}\n",
               ncpu, threads, wrk ? "wrk" : "curl", rps, us_req, raw_rps, raw_us, burst.ev_per_s,
               burst.cpu_us, n_ev / ceil_dt, ceil_cpu_us, paced.ev_per_s, paced.cpu_us, burst_loop.cpu_us,
               paced_loop.cpu_us,
               n1 / ceil1_dt, ceil1_cpu_us, burst.n_streams, events);
    return 0;
}
