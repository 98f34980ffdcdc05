/*
 * pd_log.h - levelled logging to stderr.
 *
 * Levels follow uvicorn's names (trace, debug, info, warning, error, critical) so
 * `--uvicorn-log-level` sets them directly.  Lines about a request carry its id:
 * use PD_LOG_REQ(level, req_id, ...).  Logging is thread-safe; one call writes one
 * whole line with a single write(2).
 */
#ifndef PD_LOG_H
#define PD_LOG_H

#include "pd_status.h"

typedef enum {
    PD_LOG_LEVEL_TRACE = 0,
    PD_LOG_LEVEL_DEBUG,
    PD_LOG_LEVEL_INFO,
    PD_LOG_LEVEL_WARN,
    PD_LOG_LEVEL_ERR,
    PD_LOG_LEVEL_CRIT,
    PD_LOG_LEVEL_OFF
} pd_log_level_t;

extern pd_log_level_t pd_log_level_g;

/* Set the threshold; lines below it are dropped cheaply. */
void pd_log_set_level(pd_log_level_t level);

/* Parse a uvicorn level name ("trace", "debug", "info", "warning", "error",
 * "critical").  Returns PD_ERR_INVAL for anything else; *level_p untouched then. */
pd_status_t pd_log_level_parse(const char *name, pd_log_level_t *level_p);

/* Set the component tag printed on every line ("decode", "prefill", "proxy"). */
void pd_log_set_tag(const char *tag);

void pd_log_write(pd_log_level_t level, const char *req_id, const char *file, int line,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define PD_LOG_AT(level, req_id, ...)                                        \
    do {                                                                     \
        if ((level) >= pd_log_level_g)                                       \
            pd_log_write((level), (req_id), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

#define PD_LOG_TRACE(...) PD_LOG_AT(PD_LOG_LEVEL_TRACE, NULL, __VA_ARGS__)
#define PD_LOG_DEBUG(...) PD_LOG_AT(PD_LOG_LEVEL_DEBUG, NULL, __VA_ARGS__)
#define PD_LOG_INFO(...)  PD_LOG_AT(PD_LOG_LEVEL_INFO, NULL, __VA_ARGS__)
#define PD_LOG_WARN(...)  PD_LOG_AT(PD_LOG_LEVEL_WARN, NULL, __VA_ARGS__)
#define PD_LOG_ERR(...)   PD_LOG_AT(PD_LOG_LEVEL_ERR, NULL, __VA_ARGS__)
#define PD_LOG_CRIT(...)  PD_LOG_AT(PD_LOG_LEVEL_CRIT, NULL, __VA_ARGS__)
/* A line about one request: the id is printed in brackets. */
#define PD_LOG_REQ(level, req_id, ...) PD_LOG_AT(PD_LOG_LEVEL_##level, (req_id), __VA_ARGS__)

#endif /* PD_LOG_H */
