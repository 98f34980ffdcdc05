/* pd_log.c - levelled, thread-safe, one-write-per-line logging to stderr. */
#include "pd_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

pd_log_level_t pd_log_level_g = PD_LOG_LEVEL_INFO;
static char log_tag[32] = "pdserve";

static const char *const level_names[] = {"TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"};

void pd_log_set_level(pd_log_level_t level) { pd_log_level_g = level; }

void pd_log_set_tag(const char *tag)
{
    snprintf(log_tag, sizeof(log_tag), "%s", tag ? tag : "pdserve");
}

pd_status_t pd_log_level_parse(const char *name, pd_log_level_t *level_p)
{
    static const struct { const char *name; pd_log_level_t level; } map[] = {
        {"trace", PD_LOG_LEVEL_TRACE}, {"debug", PD_LOG_LEVEL_DEBUG},
        {"info", PD_LOG_LEVEL_INFO},   {"warning", PD_LOG_LEVEL_WARN},
        {"error", PD_LOG_LEVEL_ERR},   {"critical", PD_LOG_LEVEL_CRIT},
    };
    if (name == NULL)
        return PD_ERR_INVAL;
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        if (strcasecmp(name, map[i].name) == 0) {
            *level_p = map[i].level;
            return PD_OK;
        }
    }
    return PD_ERR_INVAL;
}

void pd_log_write(pd_log_level_t level, const char *req_id, const char *file, int line,
                  const char *fmt, ...)
{
    char buf[4096];
    struct timespec ts;
    struct tm tm;
    size_t n;
    va_list ap;
    const char *base = strrchr(file, '/');

    if (level < PD_LOG_LEVEL_TRACE || level > PD_LOG_LEVEL_CRIT)
        level = PD_LOG_LEVEL_ERR;
    base = base ? base + 1 : file;
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    n = (size_t)snprintf(buf, sizeof(buf), "%s %s %02d-%02d %02d:%02d:%02d.%03ld %s:%d]%s%s%s ",
                         log_tag, level_names[level], tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec, ts.tv_nsec / 1000000, base, line, req_id ? " [" : "",
                         req_id ? req_id : "", req_id ? "]" : "");
    if (n < sizeof(buf)) {
        va_start(ap, fmt);
        int m = vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
        va_end(ap);
        if (m > 0)
            n += (size_t)m;
    }
    if (n > sizeof(buf) - 2)
        n = sizeof(buf) - 2;
    buf[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, n);
    (void)w;
}
