/*
 * pd_status.h - the one status type of pdserve.
 *
 * Every fallible function in every module returns pd_status_t.  The values and
 * their strings come from one X-macro table so they can never drift apart.
 * PD_INPROGRESS is not an error: a non-blocking operation has started and will
 * complete later (its callback fires exactly once, never from inside the call).
 */
#ifndef PD_STATUS_H
#define PD_STATUS_H

#define PD_STATUS_MAP(X)                                                   \
    X(PD_OK,              0,  "ok")                                        \
    X(PD_INPROGRESS,      1,  "operation in progress")                     \
    X(PD_ERR_NOMEM,      -1,  "out of memory")                             \
    X(PD_ERR_INVAL,      -2,  "invalid argument")                          \
    X(PD_ERR_RANGE,      -3,  "value out of range")                        \
    X(PD_ERR_OVERFLOW,   -4,  "arithmetic overflow")                       \
    X(PD_ERR_FORMAT,     -5,  "malformed input")                           \
    X(PD_ERR_IO,         -6,  "input/output error")                        \
    X(PD_ERR_NOT_FOUND,  -7,  "not found")                                 \
    X(PD_ERR_UNSUPPORTED,-8,  "not supported yet")                         \
    X(PD_ERR_PERM,       -9,  "permission denied")                         \
    X(PD_ERR_TIMEOUT,    -10, "timed out")                                 \
    X(PD_ERR_CLOSED,     -11, "connection closed")                         \
    X(PD_ERR_BUSY,       -12, "resource busy")                             \
    X(PD_ERR_AGAIN,      -13, "try again")                                 \
    X(PD_ERR_CANCELED,   -14, "canceled")                                  \
    X(PD_ERR_TRANSPORT,  -15, "transport error")                           \
    X(PD_ERR_MISMATCH,   -16, "incompatible peer or data")                 \
    X(PD_ERR_EXPIRED,    -17, "lease expired")                             \
    X(PD_ERR_EXISTS,     -18, "already exists")                            \
    X(PD_ERR_LIMIT,      -19, "limit exceeded")                            \
    X(PD_ERR_CUDA,       -20, "cuda error")                                \
    X(PD_ERR_INTERNAL,   -21, "internal error")

typedef enum {
#define PD_STATUS_ENUM(name, value, str) name = value,
    PD_STATUS_MAP(PD_STATUS_ENUM)
#undef PD_STATUS_ENUM
} pd_status_t;

/* Human-readable string for a status; never NULL (unknown values give "unknown status"). */
const char *pd_status_str(pd_status_t status);

/* Symbolic name of a status ("PD_ERR_INVAL"); never NULL. */
const char *pd_status_name(pd_status_t status);

#define PD_IS_ERR(s) ((s) < 0)

#endif /* PD_STATUS_H */
