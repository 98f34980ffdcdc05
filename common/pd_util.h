/*
 * pd_util.h - small helpers every module uses: checked arithmetic, time, growable
 * byte buffers and per-request arenas.
 *
 * Checked arithmetic is for every size or offset that comes from a file, the network
 * or a user: it returns PD_ERR_OVERFLOW instead of wrapping.
 */
#ifndef PD_UTIL_H
#define PD_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "pd_status.h"

#define PD_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define PD_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PD_MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- checked arithmetic ---- */
static inline pd_status_t pd_add_size(size_t a, size_t b, size_t *out_p)
{
    size_t r;
    if (__builtin_add_overflow(a, b, &r))
        return PD_ERR_OVERFLOW;
    *out_p = r;
    return PD_OK;
}

static inline pd_status_t pd_mul_size(size_t a, size_t b, size_t *out_p)
{
    size_t r;
    if (__builtin_mul_overflow(a, b, &r))
        return PD_ERR_OVERFLOW;
    *out_p = r;
    return PD_OK;
}

static inline pd_status_t pd_add_u64(uint64_t a, uint64_t b, uint64_t *out_p)
{
    uint64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return PD_ERR_OVERFLOW;
    *out_p = r;
    return PD_OK;
}

static inline pd_status_t pd_mul_u64(uint64_t a, uint64_t b, uint64_t *out_p)
{
    uint64_t r;
    if (__builtin_mul_overflow(a, b, &r))
        return PD_ERR_OVERFLOW;
    *out_p = r;
    return PD_OK;
}

/* ---- time ---- */
/* Monotonic clock in nanoseconds / seconds. */
uint64_t pd_now_ns(void);
double pd_now_s(void);
/* Wall clock in seconds since the epoch (for "created" fields). */
int64_t pd_unix_time(void);

/* ---- growable byte buffer ---- */
/* A NUL-terminated growable buffer.  Zero-initialised storage is a valid empty buffer. */
typedef struct pd_buf {
    char *data;  /* NULL until the first append; always NUL-terminated after it */
    size_t len;
    size_t cap;
} pd_buf_t;

void pd_buf_init(pd_buf_t *buf);
void pd_buf_cleanup(pd_buf_t *buf);
void pd_buf_reset(pd_buf_t *buf); /* len = 0, keeps the memory */
pd_status_t pd_buf_reserve(pd_buf_t *buf, size_t extra);
pd_status_t pd_buf_append(pd_buf_t *buf, const void *data, size_t len);
pd_status_t pd_buf_puts(pd_buf_t *buf, const char *s);
pd_status_t pd_buf_printf(pd_buf_t *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
pd_status_t pd_buf_vprintf(pd_buf_t *buf, const char *fmt, va_list ap);
/* Takes the data out of the buffer (caller frees it); the buffer is left empty. */
char *pd_buf_steal(pd_buf_t *buf);

/* ---- arenas ---- */
/* A bump allocator whose memory is freed all at once.  Registered cleanups run in
 * reverse order of registration when the arena is destroyed.  Not thread-safe. */
typedef struct pd_arena pd_arena_t;
typedef void (*pd_cleanup_cb_t)(void *arg);

pd_arena_t *pd_arena_create(size_t chunk_size);
void pd_arena_destroy(pd_arena_t *arena);
/* 16-byte aligned memory, NULL when out of memory or size overflows. */
void *pd_arena_alloc(pd_arena_t *arena, size_t size);
void *pd_arena_calloc(pd_arena_t *arena, size_t n, size_t size);
char *pd_arena_strdup(pd_arena_t *arena, const char *s);
char *pd_arena_strndup(pd_arena_t *arena, const char *s, size_t n);
pd_status_t pd_arena_add_cleanup(pd_arena_t *arena, pd_cleanup_cb_t cb, void *arg);
/* Bytes handed out so far (for tests and accounting). */
size_t pd_arena_used(const pd_arena_t *arena);

/* ---- misc ---- */
/* Constant-time comparison of two byte strings (length leaks, contents do not). */
int pd_ct_equal(const void *a, size_t a_len, const void *b, size_t b_len);
/* Random 128-bit id as 32 lowercase hex chars + NUL into out (33 bytes). */
void pd_random_hex_id(char out[33]);
/* Read a whole file; *data_p is NUL-terminated and malloc'd. */
pd_status_t pd_read_file(const char *path, char **data_p, size_t *len_p);

/* Child processes (tests and benchmarks that fork): wait for pid at most timeout_s,
 * SIGKILL it after that.  Returns its exit code, or -1 when it was killed, died of a
 * signal or could not be waited for (logged at WARN). */
int pd_child_wait(int pid, double timeout_s);

/* Read exactly len bytes from fd, waiting at most timeout_ms for each piece.  1 when
 * they all came, 0 on timeout, end of file or error. */
int pd_read_full_timeout(int fd, void *buf, size_t len, int timeout_ms);

#endif /* PD_UTIL_H */
