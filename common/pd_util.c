/* pd_util.c - time, growable buffers, arenas, constant-time compare, ids, file reads. */
#include "pd_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pd_log.h"

/* ---- time ---- */
uint64_t pd_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double pd_now_s(void) { return (double)pd_now_ns() * 1e-9; }

int64_t pd_unix_time(void) { return (int64_t)time(NULL); }

/* ---- growable byte buffer ---- */
void pd_buf_init(pd_buf_t *buf) { memset(buf, 0, sizeof(*buf)); }

void pd_buf_cleanup(pd_buf_t *buf)
{
    free(buf->data);
    memset(buf, 0, sizeof(*buf));
}

void pd_buf_reset(pd_buf_t *buf)
{
    buf->len = 0;
    if (buf->data)
        buf->data[0] = '\0';
}

pd_status_t pd_buf_reserve(pd_buf_t *buf, size_t extra)
{
    size_t need, cap;
    char *p;

    if (pd_add_size(buf->len, extra, &need) != PD_OK || pd_add_size(need, 1, &need) != PD_OK)
        return PD_ERR_OVERFLOW;
    if (need <= buf->cap)
        return PD_OK;
    cap = buf->cap ? buf->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2)
            return PD_ERR_OVERFLOW;
        cap *= 2;
    }
    p = realloc(buf->data, cap);
    if (p == NULL)
        return PD_ERR_NOMEM;
    buf->data = p;
    buf->cap = cap;
    return PD_OK;
}

pd_status_t pd_buf_append(pd_buf_t *buf, const void *data, size_t len)
{
    pd_status_t st = pd_buf_reserve(buf, len);
    if (st != PD_OK)
        return st;
    if (len)
        memcpy(buf->data + buf->len, data, len);
    buf->len += len;
    buf->data[buf->len] = '\0';
    return PD_OK;
}

pd_status_t pd_buf_puts(pd_buf_t *buf, const char *s) { return pd_buf_append(buf, s, strlen(s)); }

pd_status_t pd_buf_vprintf(pd_buf_t *buf, const char *fmt, va_list ap)
{
    va_list ap2;
    int n;
    pd_status_t st;

    va_copy(ap2, ap);
    n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return PD_ERR_INVAL;
    st = pd_buf_reserve(buf, (size_t)n);
    if (st != PD_OK)
        return st;
    vsnprintf(buf->data + buf->len, (size_t)n + 1, fmt, ap);
    buf->len += (size_t)n;
    return PD_OK;
}

pd_status_t pd_buf_printf(pd_buf_t *buf, const char *fmt, ...)
{
    va_list ap;
    pd_status_t st;
    va_start(ap, fmt);
    st = pd_buf_vprintf(buf, fmt, ap);
    va_end(ap);
    return st;
}

char *pd_buf_steal(pd_buf_t *buf)
{
    char *p = buf->data;
    if (p == NULL)
        p = calloc(1, 1);
    memset(buf, 0, sizeof(*buf));
    return p;
}

/* ---- arenas ---- */
typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t size;
    size_t used;
    _Alignas(16) unsigned char data[];
} arena_chunk_t;

typedef struct arena_cleanup {
    struct arena_cleanup *next;
    pd_cleanup_cb_t cb;
    void *arg;
} arena_cleanup_t;

struct pd_arena {
    arena_chunk_t *chunks;
    arena_cleanup_t *cleanups;
    size_t chunk_size;
    size_t total;
};

pd_arena_t *pd_arena_create(size_t chunk_size)
{
    pd_arena_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->chunk_size = chunk_size ? chunk_size : 4096;
    return a;
}

void pd_arena_destroy(pd_arena_t *arena)
{
    if (arena == NULL)
        return;
    /* cleanups were pushed at the head, so this runs them in reverse order */
    for (arena_cleanup_t *c = arena->cleanups; c != NULL; c = c->next)
        c->cb(c->arg);
    for (arena_chunk_t *ch = arena->chunks, *next; ch != NULL; ch = next) {
        next = ch->next;
        free(ch);
    }
    free(arena);
}

void *pd_arena_alloc(pd_arena_t *arena, size_t size)
{
    size_t rounded, chunk_bytes;
    arena_chunk_t *ch = arena->chunks;

    if (pd_add_size(size, 15, &rounded) != PD_OK)
        return NULL;
    rounded &= ~(size_t)15;
    if (ch == NULL || ch->size - ch->used < rounded) {
        size_t payload = PD_MAX(arena->chunk_size, rounded);
        if (pd_add_size(payload, sizeof(arena_chunk_t), &chunk_bytes) != PD_OK)
            return NULL;
        ch = malloc(chunk_bytes);
        if (ch == NULL)
            return NULL;
        ch->size = payload;
        ch->used = 0;
        ch->next = arena->chunks;
        arena->chunks = ch;
    }
    void *p = ch->data + ch->used;
    ch->used += rounded;
    arena->total += size;
    return p;
}

void *pd_arena_calloc(pd_arena_t *arena, size_t n, size_t size)
{
    size_t bytes;
    void *p;
    if (pd_mul_size(n, size, &bytes) != PD_OK)
        return NULL;
    p = pd_arena_alloc(arena, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

char *pd_arena_strndup(pd_arena_t *arena, const char *s, size_t n)
{
    char *p = pd_arena_alloc(arena, n + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *pd_arena_strdup(pd_arena_t *arena, const char *s) { return pd_arena_strndup(arena, s, strlen(s)); }

pd_status_t pd_arena_add_cleanup(pd_arena_t *arena, pd_cleanup_cb_t cb, void *arg)
{
    arena_cleanup_t *c = pd_arena_alloc(arena, sizeof(*c));
    if (c == NULL)
        return PD_ERR_NOMEM;
    c->cb = cb;
    c->arg = arg;
    c->next = arena->cleanups;
    arena->cleanups = c;
    return PD_OK;
}

size_t pd_arena_used(const pd_arena_t *arena) { return arena->total; }

/* ---- misc ---- */
int pd_ct_equal(const void *a, size_t a_len, const void *b, size_t b_len)
{
    const unsigned char *x = a, *y = b;
    unsigned char diff = (unsigned char)(a_len != b_len);
    size_t n = PD_MIN(a_len, b_len);
    for (size_t i = 0; i < n; i++)
        diff |= x[i] ^ y[i];
    return diff == 0;
}

void pd_random_hex_id(char out[33])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[16];
    if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw)) {
        uint64_t t = pd_now_ns() ^ (uint64_t)getpid();
        for (size_t i = 0; i < sizeof(raw); i++) {
            t = t * 6364136223846793005ull + 1442695040888963407ull;
            raw[i] = (unsigned char)(t >> 56);
        }
    }
    for (size_t i = 0; i < 16; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[32] = '\0';
}

pd_status_t pd_read_file(const char *path, char **data_p, size_t *len_p)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *data;
    size_t off = 0;

    if (fd < 0) {
        PD_LOG_DEBUG("open %s: %s", path, strerror(errno));
        return errno == ENOENT ? PD_ERR_NOT_FOUND : PD_ERR_IO;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return PD_ERR_IO;
    }
    data = malloc((size_t)st.st_size + 1);
    if (data == NULL) {
        close(fd);
        return PD_ERR_NOMEM;
    }
    while (off < (size_t)st.st_size) {
        ssize_t n = read(fd, data + off, (size_t)st.st_size - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(fd);
    data[off] = '\0';
    *data_p = data;
    if (len_p)
        *len_p = off;
    return PD_OK;
}

int pd_child_wait(int pid, double timeout_s)
{
    uint64_t end = pd_now_ns() + (uint64_t)(timeout_s * 1e9);
    int status = 0;

    for (;;) {
        pid_t r = waitpid((pid_t)pid, &status, WNOHANG);
        if (r == (pid_t)pid)
            break;
        if (r < 0)
            return -1;
        if (pd_now_ns() > end) {
            PD_LOG_WARN("process %d still running after %.0fs: killed", pid, timeout_s);
            kill((pid_t)pid, SIGKILL);
            waitpid((pid_t)pid, &status, 0);
            return -1;
        }
        usleep(5000);
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    PD_LOG_WARN("process %d died with signal %d", pid, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    return -1;
}

int pd_read_full_timeout(int fd, void *buf, size_t len, int timeout_ms)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    size_t got = 0;

    while (got < len) {
        ssize_t r;
        if (poll(&pfd, 1, timeout_ms) != 1)
            return 0;
        r = read(fd, (char *)buf + got, len - got);
        if (r <= 0)
            return 0;
        got += (size_t)r;
    }
    return 1;
}
