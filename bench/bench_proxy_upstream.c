/*
 * bench_proxy_upstream.c - a fast fake OpenAI upstream for bench/bench_proxy.py.
 *
 * One thread, epoll, non-blocking sockets: it answers GET /health and GET /v1/models,
 * and POST /v1/completions (and /v1/chat/completions) with a token stream on a fixed
 * schedule: token k (0-based) of a request is sent at t_recv + ttft + k * itl
 * (absolute, so a late tick does not shift later tokens), one SSE event per token,
 * then the usage event (when the body asks for include_usage) and [DONE].  The number
 * of tokens is the request's max_tokens (default 16).  A non-streaming request gets
 * one JSON answer when its last token is due.  It exists because the Python fake
 * (tests/bench/fake_openai.py) saturates long before 1,000 concurrent streams, and a
 * saturated upstream measures its own queue, not the proxy.
 *
 * It is a benchmark tool, not a server: requests are parsed just enough (request
 * line, Content-Length, a few substrings of the body); anything odd closes the
 * connection.  Invariants: a connection is either reading a request or streaming one
 * (keep-alive: back to reading after the answer); out holds bytes the socket did not
 * take yet and is flushed before anything new is queued.
 *
 *   cc -O2 -o upstream bench/bench_proxy_upstream.c && ./upstream PORT TTFT_MS ITL_MS
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FD 65536
#define IN_CAP 65536

typedef struct conn {
    int fd;
    int streaming;      /* 1 while answering a generation request */
    int stream;         /* SSE (1) or one JSON answer (0) */
    int chat, usage;
    int n_tokens, next; /* tokens to send, index of the next one */
    uint64_t t0;        /* when the request was complete (ns) */
    size_t in_len;
    char *in;
    char *out;
    size_t out_len, out_cap;
} conn_t;

static conn_t *g_conns[MAX_FD];
static int g_ep;
static uint64_t g_ttft_ns, g_itl_ns;
static int g_max_fd; /* highest fd ever accepted: bounds the scans */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void conn_close(conn_t *c)
{
    epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    g_conns[c->fd] = NULL;
    free(c->in);
    free(c->out);
    free(c);
}

static int out_add(conn_t *c, const char *p, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        size_t cap = (c->out_len + n) * 2 + 4096;
        char *o = realloc(c->out, cap);
        if (!o)
            return -1;
        c->out = o;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

/* Write what the socket takes; ask for EPOLLOUT while something is left. */
static int flush_out(conn_t *c)
{
    size_t off = 0;
    while (off < c->out_len) {
        ssize_t w = send(c->fd, c->out + off, c->out_len - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            return -1;
        }
        off += (size_t)w;
    }
    if (off > 0 && off < c->out_len)
        memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    struct epoll_event ev = {.events = EPOLLIN | (c->out_len ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

static int chunk(conn_t *c, const char *data, size_t n)
{
    char h[32];
    int hl = snprintf(h, sizeof(h), "%zx\r\n", n);
    return out_add(c, h, (size_t)hl) || out_add(c, data, n) || out_add(c, "\r\n", 2);
}

static int respond(conn_t *c, int status, const char *type, const char *body)
{
    char h[256];
    int hl = snprintf(h, sizeof(h), "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n", status,
                      status == 200 ? "OK" : "Not Found", type, strlen(body));
    return out_add(c, h, (size_t)hl) || out_add(c, body, strlen(body));
}

/* Send every token that is due; finish the answer after the last one. */
static int advance(conn_t *c, uint64_t now)
{
    char ev[512];
    while (c->streaming && c->next < c->n_tokens && now >= c->t0 + g_ttft_ns + (uint64_t)c->next * g_itl_ns) {
        int last = c->next == c->n_tokens - 1;
        c->next++;
        if (!c->stream) {
            if (!last)
                continue;
            int n = snprintf(ev, sizeof(ev),
                             "{\"id\":\"cmpl-fake\",\"object\":\"text_completion\",\"created\":0,\"model\":\"fake\","
                             "\"choices\":[{\"index\":0,\"text\":\"%d tokens\",\"finish_reason\":\"length\"}],"
                             "\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":%d,\"total_tokens\":%d}}",
                             c->n_tokens, c->n_tokens, c->n_tokens + 8);
            if (n < 0 || respond(c, 200, "application/json", ev))
                return -1;
            c->streaming = 0;
            break;
        }
        const char *fin = last ? "\"length\"" : "null";
        int n = c->chat ? snprintf(ev, sizeof(ev),
                                   "data: {\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion.chunk\",\"created\":0,"
                                   "\"model\":\"fake\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" t%d\"},"
                                   "\"finish_reason\":%s}]}\n\n", c->next, fin)
                        : snprintf(ev, sizeof(ev),
                                   "data: {\"id\":\"cmpl-fake\",\"object\":\"text_completion\",\"created\":0,"
                                   "\"model\":\"fake\",\"choices\":[{\"index\":0,\"text\":\" t%d\",\"logprobs\":null,"
                                   "\"finish_reason\":%s}]}\n\n", c->next, fin);
        if (chunk(c, ev, (size_t)n))
            return -1;
        if (last) {
            if (c->usage) {
                n = snprintf(ev, sizeof(ev),
                             "data: {\"id\":\"cmpl-fake\",\"object\":\"%s\",\"created\":0,\"model\":\"fake\","
                             "\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":%d,"
                             "\"total_tokens\":%d}}\n\n", c->chat ? "chat.completion.chunk" : "text_completion",
                             c->n_tokens, c->n_tokens + 8);
                if (chunk(c, ev, (size_t)n))
                    return -1;
            }
            static const char done[] = "data: [DONE]\n\n";
            if (chunk(c, done, sizeof(done) - 1) || out_add(c, "0\r\n\r\n", 5))
                return -1;
            c->streaming = 0;
        }
    }
    return flush_out(c);
}

/* A whole request is in c->in: answer it (or start its stream). Returns bytes used, 0
 * when incomplete, -1 to close. */
static long handle(conn_t *c)
{
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end)
        return c->in_len >= IN_CAP ? -1 : 0;
    size_t head = (size_t)(end - c->in) + 4, clen = 0;
    for (char *p = c->in; p && p < end; p = memchr(p, '\n', (size_t)(end - p))) {
        p += (*p == '\n');
        if (strncasecmp(p, "content-length:", 15) == 0)
            clen = strtoul(p + 15, NULL, 10);
    }
    if (head + clen > IN_CAP)
        return -1;
    if (c->in_len < head + clen)
        return 0;
    char *body = c->in + head;
    char saved = body[clen];
    body[clen] = 0; /* in has room: IN_CAP + 1 */
    if (strncmp(c->in, "GET /health", 11) == 0) {
        respond(c, 200, "application/json", "{}");
    } else if (strncmp(c->in, "GET /v1/models", 14) == 0) {
        respond(c, 200, "application/json",
                "{\"object\":\"list\",\"data\":[{\"id\":\"fake\",\"object\":\"model\",\"owned_by\":\"bench\","
                "\"max_model_len\":4096}]}");
    } else if (strncmp(c->in, "POST /v1/completions", 20) == 0 ||
               strncmp(c->in, "POST /v1/chat/completions", 25) == 0) {
        c->chat = strncmp(c->in + 9, "chat", 4) == 0;
        c->stream = strstr(body, "\"stream\":true") || strstr(body, "\"stream\": true");
        c->usage = strstr(body, "include_usage") != NULL;
        char *mt = strstr(body, "\"max_tokens\"");
        c->n_tokens = mt ? atoi(mt + 13 + strspn(mt + 13, " :")) : 16;
        if (c->n_tokens < 1 || c->n_tokens > 100000)
            c->n_tokens = 16;
        c->next = 0;
        c->t0 = now_ns();
        c->streaming = 1;
        if (c->stream) {
            static const char h[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                    "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
            out_add(c, h, sizeof(h) - 1);
        }
    } else {
        respond(c, 404, "application/json", "{\"error\":{\"message\":\"not found\",\"code\":404}}");
    }
    body[clen] = saved;
    return (long)(head + clen);
}

static void on_readable(conn_t *c)
{
    for (;;) {
        if (c->in_len >= IN_CAP) {
            conn_close(c);
            return;
        }
        ssize_t r = recv(c->fd, c->in + c->in_len, IN_CAP - c->in_len, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
            conn_close(c);
            return;
        }
        if (r < 0)
            break;
        c->in_len += (size_t)r;
    }
    while (!c->streaming && c->in_len) {
        long used = handle(c);
        if (used < 0) {
            conn_close(c);
            return;
        }
        if (used == 0)
            break;
        memmove(c->in, c->in + used, c->in_len - (size_t)used);
        c->in_len -= (size_t)used;
    }
    if (advance(c, now_ns()) < 0)
        conn_close(c);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s PORT TTFT_MS ITL_MS\n", argv[0]);
        return 2;
    }
    g_ttft_ns = (uint64_t)(atof(argv[2]) * 1e6);
    g_itl_ns = (uint64_t)(atof(argv[3]) * 1e6);
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 4096)) {
        perror("bind/listen");
        return 1;
    }
    g_ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(g_ep, EPOLL_CTL_ADD, ls, &lev);
    printf("READY\n");
    fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        /* sleep until the earliest due token (ms resolution, rounded down: never late by
         * more than the scheduler makes us) */
        uint64_t now = now_ns(), due = UINT64_MAX;
        for (int fd = 0; fd <= g_max_fd; fd++) {
            conn_t *c = g_conns[fd];
            if (c && c->streaming) {
                uint64_t t = c->t0 + g_ttft_ns + (uint64_t)c->next * g_itl_ns;
                if (t < due)
                    due = t;
            }
        }
        int timeout = due == UINT64_MAX ? 1000 : due <= now ? 0 : (int)((due - now) / 1000000);
        int n = epoll_wait(g_ep, evs, 256, timeout);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (fd >= MAX_FD || !(c = calloc(1, sizeof(*c))) || !(c->in = malloc(IN_CAP + 1))) {
                        free(c);
                        close(fd);
                        continue;
                    }
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    c->fd = fd;
                    g_conns[fd] = c;
                    if (fd > g_max_fd)
                        g_max_fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                conn_close(c);
                continue;
            }
            if ((evs[i].events & EPOLLOUT) && flush_out(c) < 0) {
                conn_close(c);
                continue;
            }
            if (evs[i].events & EPOLLIN)
                on_readable(c);
        }
        now = now_ns();
        for (int fd = 0; fd <= g_max_fd; fd++) {
            conn_t *c = g_conns[fd];
            if (c && c->streaming && advance(c, now) < 0)
                conn_close(c);
        }
    }
}
