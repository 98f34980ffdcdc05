/*
 * fastsse.c - a trivial, fast OpenAI-style streaming server for measuring how many
 * concurrent streams one pdserve-bench process holds (the Python fake server runs out
 * of CPU long before the bench does).
 *
 * One thread, epoll, HTTP/1.1 keep-alive.  POST /v1/completions (or chat) streams
 * max_tokens chunks (found with a plain substring search) in the SSE format of vLLM:
 * the first after TTFT microseconds, then one every ITL microseconds, then a usage
 * chunk and [DONE].  GET /v1/models names "fast-model".  Anything else: 404 (so the
 * bench falls back to word prompts).  Not a real HTTP server: no pipelining, small
 * requests only.  Test tool, not part of pdserve.
 *
 * build: cc -O2 -o fastsse bench/scripts/fastsse.c
 * run:   ./fastsse PORT TTFT_US ITL_US      (prints "PORT n", stats on SIGINT)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct conn {
    int fd;
    char in[65536];
    size_t in_len;
    char *out;           /* unsent bytes */
    size_t out_len, out_cap;
    int streaming;
    int left, sent;      /* chunks left / sent */
    uint64_t next_ns;
    int chat;
    struct conn *next_active, *prev_active;
} conn_t;

static conn_t **g_conns; /* by fd */
static conn_t *g_active; /* streaming connections */
static uint64_t g_ttft_ns, g_itl_ns, g_chunks, g_requests;
static int g_ep;
static volatile sig_atomic_t g_stop;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void conn_close(conn_t *c)
{
    if (c->streaming) {
        if (c->prev_active)
            c->prev_active->next_active = c->next_active;
        else
            g_active = c->next_active;
        if (c->next_active)
            c->next_active->prev_active = c->prev_active;
    }
    epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    g_conns[c->fd] = NULL;
    free(c->out);
    free(c);
}

/* Send now or keep the rest for EPOLLOUT.  Returns -1 when the peer is gone. */
static int conn_send(conn_t *c, const char *p, size_t n)
{
    if (c->out_len == 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN)
            return -1;
        if (w < 0)
            w = 0;
        p += w;
        n -= (size_t)w;
        if (n == 0)
            return 0;
    }
    if (c->out_len + n > c->out_cap) {
        size_t cap = (c->out_len + n) * 2;
        char *q = realloc(c->out, cap);
        if (!q)
            return -1;
        c->out = q;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = c->fd};
    epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

static int send_chunk(conn_t *c, const char *data)
{
    char buf[512];
    int len = (int)strlen(data) + 8; /* "data: " + data + "\n\n" */
    int n = snprintf(buf, sizeof(buf), "%x\r\ndata: %s\n\n\r\n", len, data);
    return conn_send(c, buf, (size_t)n);
}

static int stream_step(conn_t *c)
{
    char ev[256];
    if (c->left > 0) {
        if (c->chat)
            snprintf(ev, sizeof(ev), "{\"id\":\"x\",\"object\":\"chat.completion.chunk\","
                     "\"choices\":[{\"index\":0,\"delta\":{\"content\":\" tok\"},"
                     "\"finish_reason\":%s}]}", c->left == 1 ? "\"length\"" : "null");
        else
            snprintf(ev, sizeof(ev), "{\"id\":\"x\",\"object\":\"text_completion\","
                     "\"choices\":[{\"index\":0,\"text\":\" tok\",\"finish_reason\":%s}]}",
                     c->left == 1 ? "\"length\"" : "null");
        c->left--;
        c->sent++;
        g_chunks++;
        c->next_ns += g_itl_ns;
        if (send_chunk(c, ev) != 0)
            return -1;
        if (c->left > 0)
            return 0;
    }
    snprintf(ev, sizeof(ev), "{\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":8,"
             "\"completion_tokens\":%d,\"total_tokens\":%d}}", c->sent, c->sent + 8);
    if (send_chunk(c, ev) != 0 || send_chunk(c, "[DONE]") != 0 || conn_send(c, "0\r\n\r\n", 5) != 0)
        return -1;
    /* back to reading: leave the active list */
    if (c->prev_active)
        c->prev_active->next_active = c->next_active;
    else
        g_active = c->next_active;
    if (c->next_active)
        c->next_active->prev_active = c->prev_active;
    c->next_active = c->prev_active = NULL;
    c->streaming = 0;
    return 0;
}

static int handle_request(conn_t *c)
{
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end)
        return 0;
    size_t head = (size_t)(end - c->in) + 4, body = 0;
    char *cl = memmem(c->in, head, "Content-Length:", 15);
    if (!cl)
        cl = memmem(c->in, head, "content-length:", 15);
    if (cl)
        body = (size_t)strtoul(cl + 15, NULL, 10);
    if (c->in_len < head + body)
        return 0;
    c->in[c->in_len < sizeof(c->in) ? c->in_len : sizeof(c->in) - 1] = '\0';
    int gen = strncmp(c->in, "POST /v1/completions", 20) == 0 ||
              strncmp(c->in, "POST /v1/chat/completions", 25) == 0;
    if (gen) {
        char *mt = strstr(c->in + head, "\"max_tokens\":");
        if (!mt)
            mt = strstr(c->in + head, "\"max_completion_tokens\":");
        int n = 16;
        if (mt)
            n = atoi(strchr(mt, ':') + 1);
        c->chat = strncmp(c->in, "POST /v1/chat", 13) == 0;
        c->left = n > 0 ? n : 1;
        c->sent = 0;
        c->streaming = 1;
        c->next_ns = now_ns() + g_ttft_ns;
        c->next_active = g_active;
        c->prev_active = NULL;
        if (g_active)
            g_active->prev_active = c;
        g_active = c;
        g_requests++;
        const char *h = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n";
        if (conn_send(c, h, strlen(h)) != 0)
            return -1;
    } else if (strncmp(c->in, "GET /v1/models", 14) == 0) {
        const char *b = "{\"object\":\"list\",\"data\":[{\"id\":\"fast-model\",\"object\":\"model\"}]}";
        char h[256];
        int n = snprintf(h, sizeof(h), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\n\r\n%s", strlen(b), b);
        if (conn_send(c, h, (size_t)n) != 0)
            return -1;
    } else {
        const char *h = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        if (conn_send(c, h, strlen(h)) != 0)
            return -1;
    }
    memmove(c->in, c->in + head + body, c->in_len - head - body);
    c->in_len -= head + body;
    return 0;
}

static void on_sig(int s)
{
    (void)s;
    g_stop = 1;
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 0;
    g_ttft_ns = (uint64_t)(argc > 2 ? atol(argv[2]) : 1000) * 1000;
    g_itl_ns = (uint64_t)(argc > 3 ? atol(argv[3]) : 10000) * 1000;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    g_conns = calloc(rl.rlim_max + 1, sizeof(conn_t *));
    signal(SIGINT, on_sig);
    signal(SIGTERM, on_sig);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 65535) != 0) {
        perror("bind/listen");
        return 1;
    }
    socklen_t al = sizeof(a);
    getsockname(ls, (struct sockaddr *)&a, &al);
    printf("PORT %d\n", ntohs(a.sin_port));
    fflush(stdout);
    g_ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[1024];
    epoll_ctl(g_ep, EPOLL_CTL_ADD, ls, &ev);

    while (!g_stop) {
        int n = epoll_wait(g_ep, evs, 1024, 1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int cfd;
                while ((cfd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    conn_t *c = calloc(1, sizeof(*c));
                    c->fd = cfd;
                    g_conns[cfd] = c;
                    struct epoll_event e2 = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(g_ep, EPOLL_CTL_ADD, cfd, &e2);
                }
                continue;
            }
            conn_t *c = g_conns[fd];
            if (!c)
                continue;
            if (evs[i].events & EPOLLOUT && c->out_len) {
                ssize_t w = send(fd, c->out, c->out_len, MSG_NOSIGNAL);
                if (w > 0) {
                    memmove(c->out, c->out + w, c->out_len - (size_t)w);
                    c->out_len -= (size_t)w;
                }
                if (c->out_len == 0) {
                    struct epoll_event e2 = {.events = EPOLLIN, .data.fd = fd};
                    epoll_ctl(g_ep, EPOLL_CTL_MOD, fd, &e2);
                }
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t r = recv(fd, c->in + c->in_len, sizeof(c->in) - 1 - c->in_len, 0);
                if (r == 0 || (r < 0 && errno != EAGAIN)) {
                    conn_close(c);
                    continue;
                }
                if (r > 0) {
                    c->in_len += (size_t)r;
                    if (!c->streaming && handle_request(c) != 0)
                        conn_close(c);
                }
            }
        }
        uint64_t t = now_ns();
        for (conn_t *c = g_active, *nx; c; c = nx) {
            nx = c->next_active;
            if (c->next_ns <= t && stream_step(c) != 0)
                conn_close(c);
        }
    }
    fprintf(stderr, "fastsse: %llu requests, %llu chunks\n", (unsigned long long)g_requests,
            (unsigned long long)g_chunks);
    return 0;
}
