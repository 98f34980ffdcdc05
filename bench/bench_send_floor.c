/*
 * bench_send_floor.c - the kernel's cost of sending one streamed token, with no server:
 * the floor beside bench_server.sh's per-token figure, measured in the same run.
 *
 *   bench_send_floor [--conns N] [--events E] [--bytes B] [--pace-us P] [--delay-ms D]
 *
 * A forked client opens N loopback TCP connections and reads them until EOF.  After D
 * ms (time for a profiler to attach), this process sends E rounds; each round sends one
 * event of B bytes to every connection, as the node sends a token: one non-blocking
 * send() of the HTTP chunk (size line, the SSE event, "\r\n") on a socket with Nagle
 * off (--iov: one sendmsg() of the three parts, as the node sent it before).  Between
 * rounds it waits P us (an engine step), busy in spin_until(), as the node's engine
 * thread computes between its sends (a sleep would add the idle CPU's wake-up to every
 * round); bench_server.sh counts spin_until as "model".  It then prints "done" on
 * stdout and waits for SIGTERM or SIGINT, so the caller can read its CPU time (and stop
 * a profiler) before it exits.  Everything this process spends is the sender's side of
 * the kernel's TCP path plus the loopback receive the kernel runs on the sending
 * thread; bench_server.sh splits the two with the same perf accounting as the node's.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1024

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#if defined(__x86_64__)
#include <x86intrin.h>
static double tsc_per_ns = 0;
#endif

/* the stand-in for an engine step: busy until the clock passes deadline_ns (on x86 it
 * reads the TSC, so the samples' leaf is this function, not the vDSO) */
__attribute__((noinline)) static void spin_until(long long deadline_ns)
{
#if defined(__x86_64__)
    if (tsc_per_ns > 0) {
        long long now = now_ns();
        unsigned long long end = __rdtsc() + (unsigned long long)((double)(deadline_ns - now) * tsc_per_ns);
        while (__rdtsc() < end)
            __asm__ volatile("pause");
        return;
    }
#endif
    while (now_ns() < deadline_ns) {
    }
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* the client: connect n sockets, read every one until the server closes it */
static void client(uint16_t port, int n)
{
    int fds[MAX_CONNS];
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&sa, sizeof(sa)) != 0)
            die("client connect");
    }
    char buf[65536];
    int open_n = n;
    while (open_n > 0) {
        fd_set rs;
        FD_ZERO(&rs);
        int mx = -1;
        for (int i = 0; i < n; i++)
            if (fds[i] >= 0) {
                FD_SET(fds[i], &rs);
                if (fds[i] > mx)
                    mx = fds[i];
            }
        if (select(mx + 1, &rs, NULL, NULL, NULL) < 0) {
            if (errno == EINTR)
                continue;
            die("select");
        }
        for (int i = 0; i < n; i++)
            if (fds[i] >= 0 && FD_ISSET(fds[i], &rs)) {
                ssize_t r = read(fds[i], buf, sizeof(buf));
                if (r <= 0) {
                    close(fds[i]);
                    fds[i] = -1;
                    open_n--;
                }
            }
    }
    _exit(0);
}

static volatile sig_atomic_t stop_flag;
static void on_stop(int sig)
{
    (void)sig;
    stop_flag = 1;
}

int main(int argc, char **argv)
{
    int conns = 16, events = 256, bytes = 229;
    long pace_us = 4000, delay_ms = 1000;
    int use_iov = 0; /* --iov: sendmsg() of the three parts instead of send() of one buffer */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--conns") == 0 && i + 1 < argc)
            conns = atoi(argv[++i]);
        else if (strcmp(argv[i], "--events") == 0 && i + 1 < argc)
            events = atoi(argv[++i]);
        else if (strcmp(argv[i], "--bytes") == 0 && i + 1 < argc)
            bytes = atoi(argv[++i]);
        else if (strcmp(argv[i], "--pace-us") == 0 && i + 1 < argc)
            pace_us = atol(argv[++i]);
        else if (strcmp(argv[i], "--delay-ms") == 0 && i + 1 < argc)
            delay_ms = atol(argv[++i]);
        else if (strcmp(argv[i], "--iov") == 0)
            use_iov = 1;
        else {
            fprintf(stderr, "usage: %s [--conns N] [--events E] [--bytes B] [--pace-us P] [--delay-ms D] [--iov]\n",
                    argv[0]);
            return 2;
        }
    }
    if (conns < 1 || conns > MAX_CONNS || events < 1 || bytes < 1 || bytes > 60000 || pace_us < 0) {
        fprintf(stderr, "bench_send_floor: conns 1..%d, events >= 1, bytes 1..60000, pace-us >= 0\n", MAX_CONNS);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);

    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t sl = sizeof(sa);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(ls, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(ls, MAX_CONNS) != 0 ||
        getsockname(ls, (struct sockaddr *)&sa, &sl) != 0)
        die("listen");
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        close(ls);
        client(ntohs(sa.sin_port), conns);
    }
    int fds[MAX_CONNS];
    for (int i = 0; i < conns; i++) {
        fds[i] = accept(ls, NULL, NULL);
        if (fds[i] < 0 || setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
            die("accept");
    }
    close(ls);

    char *event = malloc((size_t)bytes);
    if (event == NULL)
        die("malloc");
    memset(event, 'x', (size_t)bytes);
    char size_line[24];
    int hl = snprintf(size_line, sizeof(size_line), "%x\r\n", bytes);
    struct iovec iov[3] = {{size_line, (size_t)hl}, {event, (size_t)bytes}, {(void *)"\r\n", 2}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 3};
    size_t frame = (size_t)hl + (size_t)bytes + 2;
    char *flat = malloc(frame); /* the same frame in one buffer, as the node sends it */
    if (flat == NULL)
        die("malloc");
    memcpy(flat, size_line, (size_t)hl);
    memcpy(flat + hl, event, (size_t)bytes);
    memcpy(flat + hl + bytes, "\r\n", 2);
    long short_sends = 0;

#if defined(__x86_64__)
    {
        long long t0 = now_ns();
        unsigned long long c0 = __rdtsc();
        sleep_us(50000);
        tsc_per_ns = (double)(__rdtsc() - c0) / (double)(now_ns() - t0);
    }
#endif
    sleep_us(delay_ms * 1000);
    for (int e = 0; e < events; e++) {
        for (int i = 0; i < conns; i++) {
            ssize_t n = use_iov ? sendmsg(fds[i], &mh, MSG_NOSIGNAL | MSG_DONTWAIT)
                                : send(fds[i], flat, frame, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n != (ssize_t)frame)
                short_sends++; /* the client fell behind: a full buffer, not a failure */
        }
        if (pace_us > 0)
            spin_until(now_ns() + pace_us * 1000LL);
    }
    printf("done %ld events %ld short\n", (long)events * conns, short_sends);
    fflush(stdout);
    while (!stop_flag)
        pause();
    for (int i = 0; i < conns; i++)
        close(fds[i]);
    waitpid(child, NULL, 0);
    free(event);
    free(flat);
    return 0;
}
