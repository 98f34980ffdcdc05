/*
 * pd_http.c - the HTTP server layer over libmicrohttpd (see pd_http.h for the contract).
 *
 * Thread model: n_threads worker threads, each driving its own MHD daemon in epoll
 * mode (MHD_USE_EPOLL + MHD_ALLOW_SUSPEND_RESUME) with MHD_run_wait(), all daemons on
 * one listening socket (dup'ed).  A connection waiting for an asynchronous answer or
 * for the next stream chunk is *suspended*: it costs no thread and no polling, only its
 * memory pool.  Any thread that produces data resumes it (MHD_resume_connection is
 * thread-safe and wakes the worker through its ITC).  Thread-per-connection could not
 * hold 1,000 streams on 2 cores, and a poll loop that keeps idle streams in the event
 * set would spin calling content readers.  We run the loops ourselves instead of using
 * MHD's internal thread pool because 0.9.75's internal epoll loop can stall ready
 * connections after a full 128-event batch (see worker_main()).
 *
 * An idle stream (suspended by its reader with nothing left to send) is written without
 * MHD: its events are framed as HTTP chunks and sent by the connection's worker (or the
 * producer) with plain sends; see "direct stream writes".
 *
 * MHD does not notice a client leaving while its connection is suspended, so a watcher
 * thread polls the sockets of suspended connections for POLLRDHUP every 50 ms and
 * resumes those that hung up; the stream reader or the access handler then fails the
 * connection and the completion callback reports PD_ERR_CLOSED to the user.
 *
 * Request lifetime: a request is reference-counted.  References: MHD's (from creation
 * to the completion callback), the async owner's (from a handler returning without an
 * answer until the answer is posted), and the stream holder's (from
 * pd_http_stream_begin() to pd_http_stream_release()).  Lock order: req->lock, then
 * srv->lock.  The watcher and drain take srv->lock only to snapshot (taking
 * references), then work on each request under its own lock.
 */
#define _GNU_SOURCE
#include "pd_http.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <dlfcn.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "pd_log.h"
#include "pd_metrics.h"
#include "pd_util.h"

#define DEFAULT_MAX_BODY (16u << 20)
#define DEFAULT_MAX_HEADER (16u << 10)
#define DEFAULT_MAX_CONN 4096u
#define DEFAULT_TIMEOUT_S 60u
#define STREAM_MAX_QUEUED ((size_t)64 << 20)
#define STREAM_BLOCK 32768
#define WATCH_PERIOD_MS 50
/* Default of cfg.direct_stream_min_gap_us: a stream's events closer together than
 * this go through MHD's loop, which sends everything queued in one write.  Direct
 * writes pay off for token-paced streams (milliseconds apart), not for a burst (one
 * syscall per event instead of one per batch). */
#define DEFAULT_DIRECT_GAP_US 1000u

/* srv->direct_stream: who sends an idle stream's events (see "direct stream writes") */
enum { DIRECT_OFF = 0, DIRECT_WORKER = 1, DIRECT_INLINE = 2 };
#define REQ_ID_MAX 128

/* ---- types ---- */

typedef struct route {
    char *method;
    char *path;
    pd_http_handler_cb_t handler;
    void *user;
    unsigned flags;
    /* metric series for this route's own method, looked up once (hot path lock-free) */
    _Atomic(pd_metric_series_t *) m_count[5]; /* by status class 1xx..5xx */
    _Atomic(pd_metric_series_t *) m_dur;
} route_t;

typedef struct middleware {
    pd_http_middleware_cb_t fn;
    void *user;
    void *dl; /* dlopen handle or NULL */
} middleware_t;

typedef struct header {
    char *name, *value;
    struct header *next;
} header_t;

typedef enum { REQ_READING, REQ_IN_HANDLER, REQ_WAITING, REQ_ANSWERED } req_state_t;

struct pd_http_req {
    pd_http_server_t *srv; /* NULL after completion: the server may be gone */
    struct MHD_Connection *conn;
    pthread_mutex_t lock;
    _Atomic int refs;
    req_state_t state;
    const route_t *route; /* matched route (NULL for unknown paths/methods) */
    int path_known;       /* path has some route (for 405 vs 404) */

    char method[16];
    char *path;
    char *full_path; /* as received (for the log) */
    char id[REQ_ID_MAX + 1];
    char client_addr[INET6_ADDRSTRLEN];
    uint16_t client_port;
    uint64_t start_ns;
    pd_buf_t body;
    int body_too_large;
    int has_origin;
    char *origin;
    int has_cookie;

    header_t *extra_headers;
    void *user;
    pd_http_req_close_cb_t on_req_close;
    void *on_req_close_user;

    /* answer */
    struct MHD_Response *pending; /* built, not yet queued */
    unsigned pending_status;
    unsigned status; /* status sent (for log/metrics) */
    int owner_ref;   /* a handler returned without answering: the owner holds a ref */
    size_t discarded; /* body bytes dropped after the limit was passed */
    int suspended;   /* MHD connection suspended by us */
    int gone;        /* client left or server cut the connection */
    int completed;   /* MHD completion callback ran */
    int close_fired;

    /* stream */
    int is_stream;
    int stream_ended;
    pd_buf_t sbuf;
    size_t srd; /* read offset into sbuf */
    pd_http_close_cb_t on_close;
    void *on_close_user;

    struct pd_http_req *prev, *next; /* srv->reqs list (live requests) */
    int watched;                     /* counted in srv->n_suspended */

    /* direct stream writes (see "direct stream writes" below) */
    int direct_ok;   /* plain TCP, HTTP/1.1, not HEAD: the body is chunked by us or by MHD */
    int direct_idle; /* the reader suspended the stream with nothing queued: MHD has sent
                      * everything, holds nothing and will not touch the socket until it
                      * is resumed, so producers may write framed chunks themselves */
    int fd;          /* the connection's socket when direct_ok */
    int sockopt_set; /* TCP_NODELAY on / TCP_CORK off done for direct writes */
    pd_buf_t raw;    /* framed bytes a direct write left unsent (the socket was full):
                      * they go out before anything else, by the next write or the
                      * watcher; while any are left the connection stays suspended */
    size_t raw_off;
    uint64_t raw_progress_ns; /* when raw last filled from empty or sent bytes: a client
                               * that reads nothing for the idle timeout is cut */
    uint64_t last_direct_ns;  /* the last direct write (srv->direct_gap_ns) */
    unsigned worker;          /* index of the worker whose daemon holds the connection */
    int dq_queued;            /* on srv->dq_heads[worker] (holds a reference) */
    struct pd_http_req *dq_next;
};

struct pd_http_server {
    /* configuration (owned copies) */
    char *host;
    uint16_t port;
    char *root_path;
    char *api_key;
    size_t api_key_len;
    char **protected_prefixes;
    char *tls_key, *tls_cert, *tls_ca, *tls_pass, *tls_prio;
    pd_http_cert_reqs_t cert_reqs;
    char **cors_origins, **cors_methods, **cors_headers, **cors_expose;
    int cors_all_origins, cors_all_headers, cors_credentials, cors_max_age, cors_enabled;
    char *cors_methods_joined, *cors_headers_joined, *cors_expose_joined;
    int req_id_headers;
    size_t max_body, max_header;
    unsigned max_conn, timeout_s, n_threads;
    int no_keep_alive, no_access_log;
    int direct_stream; /* DIRECT_*: who writes idle streams' sockets */
    uint64_t direct_gap_ns;
    pthread_mutex_t dq_lock;   /* leaf lock: the per-worker lists below */
    pd_http_req_t **dq_heads;  /* per worker: streams with framed bytes for it to send */
    atomic_ullong n_direct, n_direct_partial, n_loop; /* stream events by path */
    atomic_ullong n_sends;                            /* direct send calls */

    route_t *routes;
    size_t n_routes;
    middleware_t *mws;
    size_t n_mws;

    struct MHD_Daemon **daemons; /* one per worker, all on one listening socket */
    int *wake_fds;               /* one eventfd per worker: written after a resume */
    atomic_int *wake_pending;    /* per worker: a wake-up is written and not yet taken (the
                                  * worker clears it before MHD_run): later resumes skip
                                  * the write, so N streams resumed by one engine step cost
                                  * one eventfd write, not N; freed by destroy */
    atomic_int *mhd_pending;     /* per worker: a connection was resumed since the worker
                                  * last ran MHD (a wake-up only for direct writes skips
                                  * MHD_run); freed by destroy */
    pthread_t *workers;
    unsigned n_workers;
    _Atomic int workers_run;
    int listen_fd;
    uint16_t bound_port;
    int started;
    _Atomic int draining;
    _Atomic int stopping;
    _Atomic unsigned inflight;

    pthread_mutex_t lock; /* reqs list, watcher state */
    pthread_cond_t cond;
    pd_http_req_t *reqs;
    pthread_t watcher;
    int watcher_run;

    pd_metric_t *m_requests, *m_duration;
};

/* ---- small helpers ---- */

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void strv_free(char **v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; v[i]; i++)
        free(v[i]);
    free(v);
}

/* Copy a NULL-terminated list (NULL -> dflt list). */
static char **strv_dup(const char *const *v, const char *const *dflt)
{
    if (v == NULL)
        v = dflt;
    size_t n = 0;
    while (v && v[n])
        n++;
    char **out = calloc(n + 1, sizeof(char *));
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        out[i] = strdup(v[i]);
        if (out[i] == NULL) {
            strv_free(out);
            return NULL;
        }
    }
    return out;
}

static int strv_has(char **v, const char *s, int icase)
{
    for (size_t i = 0; v && v[i]; i++)
        if (icase ? strcasecmp(v[i], s) == 0 : strcmp(v[i], s) == 0)
            return 1;
    return 0;
}

static char *strv_join(char **v, const char *sep)
{
    pd_buf_t b;
    pd_buf_init(&b);
    pd_buf_puts(&b, "");
    for (size_t i = 0; v && v[i]; i++) {
        if (i)
            pd_buf_puts(&b, sep);
        pd_buf_puts(&b, v[i]);
    }
    return pd_buf_steal(&b);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

void pd_http_config_init(pd_http_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->host = "0.0.0.0";
    cfg->port = 8000;
    cfg->max_body_bytes = DEFAULT_MAX_BODY;
    cfg->max_header_bytes = DEFAULT_MAX_HEADER;
    cfg->max_connections = DEFAULT_MAX_CONN;
    cfg->connection_timeout_s = DEFAULT_TIMEOUT_S;
    cfg->cors_max_age = 600;
}

const char *pd_http_error_type(unsigned status)
{
    switch (status) {
    case 400: return "BadRequestError";
    case 401: return "AuthenticationError";
    case 403: return "PermissionDeniedError";
    case 404: return "NotFoundError";
    case 405: return "MethodNotAllowedError";
    case 408: return "RequestTimeoutError";
    case 409: return "ConflictError";
    case 413: return "RequestTooLargeError";
    case 422: return "UnprocessableEntityError";
    case 429: return "RateLimitError";
    case 431: return "RequestHeaderFieldsTooLargeError";
    case 501: return "NotImplementedError";
    case 503: return "ServiceUnavailableError";
    default: return status >= 500 ? "InternalServerError" : "BadRequestError";
    }
}

char *pd_http_error_json(unsigned status, const char *type, const char *message,
                         const char *param, const char *code)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    char *text = NULL;
    if (root == NULL || err == NULL)
        goto done;
    cJSON_AddStringToObject(err, "message", message ? message : "");
    cJSON_AddStringToObject(err, "type", type ? type : pd_http_error_type(status));
    if (param)
        cJSON_AddStringToObject(err, "param", param);
    else
        cJSON_AddNullToObject(err, "param");
    if (code)
        cJSON_AddStringToObject(err, "code", code);
    else
        cJSON_AddNumberToObject(err, "code", status);
    text = cJSON_PrintUnformatted(root);
done:
    cJSON_Delete(root);
    return text;
}

/* ---- request references ---- */

static void req_free(pd_http_req_t *req)
{
    header_t *h = req->extra_headers;
    while (h) {
        header_t *next = h->next;
        free(h->name);
        free(h->value);
        free(h);
        h = next;
    }
    if (req->pending)
        MHD_destroy_response(req->pending);
    pd_buf_cleanup(&req->body);
    pd_buf_cleanup(&req->sbuf);
    pd_buf_cleanup(&req->raw);
    free(req->path);
    free(req->full_path);
    free(req->origin);
    pthread_mutex_destroy(&req->lock);
    free(req);
}

static void req_ref(pd_http_req_t *req)
{
    atomic_fetch_add(&req->refs, 1);
}

static void req_unref(pd_http_req_t *req)
{
    if (atomic_fetch_sub(&req->refs, 1) == 1)
        req_free(req);
}

/* libmicrohttpd 0.9.75 in external-epoll mode does not wake a waiting MHD_run for a
 * connection resumed from another thread; each worker also polls its own eventfd, which
 * the resuming thread writes, so queued stream data goes out at once instead of at the
 * next timeout tick. */
static void wake_worker_idx(pd_http_server_t *srv, unsigned i)
{
    uint64_t one = 1;
    int *fds = srv->wake_fds;
    if (fds == NULL || i >= srv->n_threads)
        return;
    /* the resume (or queueing) is done before this exchange, and the worker clears the
     * flag before it drains its list and runs MHD: a skipped write's work is seen */
    if (srv->wake_pending && atomic_exchange(&srv->wake_pending[i], 1) != 0)
        return;
    if (fds[i] >= 0 && write(fds[i], &one, sizeof(one)) < 0) {
        /* EAGAIN: a wake-up is already pending */
    }
}

/* Index of the worker whose daemon holds conn (0 when unknown). */
static unsigned worker_of(pd_http_server_t *srv, struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_DAEMON);
    for (unsigned i = 0; ci && srv->daemons && i < srv->n_threads; i++)
        if (srv->daemons[i] == ci->daemon)
            return i;
    return 0;
}

static void wake_worker(pd_http_server_t *srv, struct MHD_Connection *conn)
{
    if (srv->wake_fds != NULL) {
        unsigned i = worker_of(srv, conn);
        /* before the wake-up flag: the worker clears that flag first, then reads this */
        if (srv->mhd_pending && i < srv->n_threads)
            atomic_store(&srv->mhd_pending[i], 1);
        wake_worker_idx(srv, i);
    }
}

/* Suspend/resume bookkeeping, called with req->lock held. */
static void req_suspend_locked(pd_http_req_t *req)
{
    pd_http_server_t *srv = req->srv;
    MHD_suspend_connection(req->conn);
    req->suspended = 1;
    pthread_mutex_lock(&srv->lock);
    req->watched = 1;
    pthread_mutex_unlock(&srv->lock);
}

static void req_resume_locked(pd_http_req_t *req)
{
    if (!req->suspended)
        return;
    pd_http_server_t *srv = req->srv;
    pthread_mutex_lock(&srv->lock);
    req->watched = 0;
    pthread_mutex_unlock(&srv->lock);
    req->suspended = 0;
    req->direct_idle = 0;
    MHD_resume_connection(req->conn);
    wake_worker(srv, req->conn);
}

/* ---- response building ---- */

static int cors_origin_allowed(const pd_http_server_t *srv, const char *origin)
{
    return srv->cors_all_origins || strv_has(srv->cors_origins, origin, 0);
}

/* Headers every response gets: CORS (simple-response rules), request id, extras. */
static void add_common_headers(pd_http_req_t *req, struct MHD_Response *resp)
{
    pd_http_server_t *srv = req->srv;
    if (srv->cors_enabled && req->has_origin) {
        /* Starlette: "*" when all origins are allowed, the exact origin when it is listed;
         * never "*" beside credentials or when the request carries cookies. */
        if (srv->cors_all_origins && !srv->cors_credentials && !req->has_cookie) {
            MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
        } else if (cors_origin_allowed(srv, req->origin)) {
            MHD_add_response_header(resp, "Access-Control-Allow-Origin", req->origin);
            MHD_add_response_header(resp, "Vary", "Origin");
        }
        if (srv->cors_credentials)
            MHD_add_response_header(resp, "Access-Control-Allow-Credentials", "true");
        if (srv->cors_expose_joined && srv->cors_expose_joined[0])
            MHD_add_response_header(resp, "Access-Control-Expose-Headers", srv->cors_expose_joined);
    }
    if (srv->req_id_headers)
        MHD_add_response_header(resp, "X-Request-Id", req->id);
    for (header_t *h = req->extra_headers; h; h = h->next)
        MHD_add_response_header(resp, h->name, h->value);
    if (srv->no_keep_alive || atomic_load(&srv->draining))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
}

/* Post a built response for req (takes ownership of resp).  Caller holds req->lock.
 * If the request is parked, wake it; if we are inside the handler or the access
 * callback, the caller queues it when it returns. */
static pd_status_t post_locked(pd_http_req_t *req, unsigned status, struct MHD_Response *resp)
{
    if (req->state == REQ_ANSWERED) {
        MHD_destroy_response(resp);
        return PD_ERR_EXISTS;
    }
    if (req->gone || req->completed) {
        MHD_destroy_response(resp);
        return PD_ERR_CLOSED;
    }
    add_common_headers(req, resp);
    req->pending = resp;
    req->pending_status = status;
    req->status = status;
    req->state = REQ_ANSWERED;
    req_resume_locked(req); /* no-op unless parked waiting for this answer */
    return PD_OK;
}

/* Answer from any thread: lock, post, and drop the async owner's reference. */
static pd_status_t answer(pd_http_req_t *req, unsigned status, struct MHD_Response *resp)
{
    if (resp == NULL)
        return PD_ERR_NOMEM;
    pthread_mutex_lock(&req->lock);
    pd_status_t st = post_locked(req, status, resp);
    int owner_ref = req->owner_ref; /* the owner's answer, whatever its fate, ends its ref */
    req->owner_ref = 0;
    pthread_mutex_unlock(&req->lock);
    if (owner_ref)
        req_unref(req);
    return st;
}

pd_status_t pd_http_respond_data(pd_http_req_t *req, unsigned status, const char *content_type,
                                 const void *data, size_t len)
{
    if (req == NULL || (data == NULL && len > 0) || status < 100 || status > 999)
        return PD_ERR_INVAL;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)(data ? data : ""), MHD_RESPMEM_MUST_COPY);
    if (resp == NULL)
        return PD_ERR_NOMEM;
    if (content_type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    return answer(req, status, resp);
}

pd_status_t pd_http_respond_json(pd_http_req_t *req, unsigned status, const cJSON *json_obj,
                                 const char *json_text)
{
    if (req == NULL || (json_obj == NULL) == (json_text == NULL))
        return PD_ERR_INVAL;
    if (json_text)
        return pd_http_respond_data(req, status, "application/json", json_text, strlen(json_text));
    char *text = cJSON_PrintUnformatted(json_obj);
    if (text == NULL)
        return PD_ERR_NOMEM;
    pd_status_t st = pd_http_respond_data(req, status, "application/json", text, strlen(text));
    cJSON_free(text);
    return st;
}

pd_status_t pd_http_respond_error(pd_http_req_t *req, unsigned status, const char *type,
                                  const char *message, const char *param, const char *code)
{
    char *text = pd_http_error_json(status, type, message, param, code);
    if (text == NULL)
        return PD_ERR_NOMEM;
    pd_status_t st = pd_http_respond_data(req, status, "application/json", text, strlen(text));
    cJSON_free(text);
    return st;
}

/* ---- streaming ---- */

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    pd_http_req_t *req = cls;
    ssize_t n;
    (void)pos;
    pthread_mutex_lock(&req->lock);
    size_t avail = req->sbuf.len - req->srd;
    if (avail > 0) {
        size_t k = avail < max ? avail : max;
        memcpy(buf, req->sbuf.data + req->srd, k);
        req->srd += k;
        if (req->srd == req->sbuf.len) {
            req->srd = 0;
            req->sbuf.len = 0;
        } else if (req->srd > (1u << 20) && req->srd * 2 > req->sbuf.len) {
            memmove(req->sbuf.data, req->sbuf.data + req->srd, req->sbuf.len - req->srd);
            req->sbuf.len -= req->srd;
            req->srd = 0;
        }
        n = (ssize_t)k;
    } else if (req->gone || atomic_load(&req->srv->stopping)) {
        n = MHD_CONTENT_READER_END_WITH_ERROR;
    } else if (req->stream_ended) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        req_suspend_locked(req);
        /* MHD calls the reader only once its write buffer is empty (headers and every
         * earlier chunk sent) and sends nothing after a 0: the socket is ours now */
        req->direct_idle = req->direct_ok;
        n = 0;
    }
    pthread_mutex_unlock(&req->lock);
    return n;
}

pd_status_t pd_http_stream_begin(pd_http_req_t *req, const char *content_type,
                                 pd_http_close_cb_t on_close, void *user,
                                 pd_http_stream_t **stream_p)
{
    if (req == NULL || stream_p == NULL)
        return PD_ERR_INVAL;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_reader, req, NULL);
    if (resp == NULL)
        return PD_ERR_NOMEM;
    const char *ct = content_type ? content_type : "text/event-stream";
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ct);
    if (strncmp(ct, "text/event-stream", 17) == 0) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    }
    pthread_mutex_lock(&req->lock);
    pd_status_t st = post_locked(req, 200, resp);
    if (st == PD_OK) {
        req->is_stream = 1;
        req->on_close = on_close;
        req->on_close_user = user;
        req_ref(req); /* the stream holder's reference */
    }
    int owner_ref = req->owner_ref;
    req->owner_ref = 0;
    pthread_mutex_unlock(&req->lock);
    if (owner_ref)
        req_unref(req);
    if (st == PD_OK)
        *stream_p = (pd_http_stream_t *)req;
    return st;
}

/*
 * ---- direct stream writes ----
 *
 * Per streamed event, the MHD path costs a resume (a lock in MHD and an eventfd write),
 * a worker wake-up, an MHD_run over the connection, one send and a suspend.  While a
 * stream is idle (direct_idle: its reader found nothing to send and suspended it, so MHD
 * has no bytes of it buffered and will not touch its socket until resumed), its events
 * bypass MHD: each is framed as one HTTP chunk ("<hex>\r\n" data "\r\n") and sent
 * with a plain non-blocking send, always under req->lock.  The socket cannot be closed
 * under us: MHD closes it only after the completion callback, which takes req->lock and
 * sets `completed` first.  Who sends (srv->direct_stream):
 *
 * - DIRECT_WORKER (default): the producer appends the framed event to `raw` and puts
 *   the stream on its worker's list (dq_heads, once; the worker is woken at most once
 *   per batch); the worker sends all the stream has in one send (dq_drain).  The
 *   producer (the engine thread) pays no syscall; a burst leaves together.
 * - DIRECT_INLINE: the producer sends the event itself with one send(), if the
 *   stream's previous direct event is at least direct_gap_ns old (a burst goes
 *   through MHD, which coalesces it).  Nothing sent (EAGAIN, an error): the MHD path
 *   (an error then surfaces through MHD's own send).
 *
 * Bytes left unsent (the socket buffer is full) stay in `raw`, in order; later events
 * are framed behind them; the next write, the worker and the watcher (POLLOUT, every
 * WATCH_PERIOD_MS) send more, and a reader stalled for the idle timeout is cut.  The
 * connection stays suspended while raw holds bytes; stream_end resumes it only once
 * raw is empty (MHD then writes the last chunk).  Only for plain TCP (TLS records
 * belong to GnuTLS inside MHD), HTTP/1.1 (where MHD chunks a body of unknown size) and
 * not HEAD (no body).
 */
static void direct_sockopts(pd_http_req_t *req)
{
    int on = 1, off = 0;
    /* MHD may have left the socket corked between its own sends; an uncorked socket
     * with Nagle off pushes each chunk at once (MHD's state flags only ever think the
     * socket is more corked than it is, which costs it nothing) */
    if (setsockopt(req->fd, IPPROTO_TCP, TCP_CORK, &off, sizeof(off)) != 0 ||
        setsockopt(req->fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)) != 0) {
        /* not a TCP socket after all (e.g. a UNIX socket): plain sends are fine */
    }
    req->sockopt_set = 1;
}

/* Send what raw holds (req->lock held).  Resumes the connection once raw is empty and
 * the stream has ended, so MHD writes the terminating chunk. */
static void raw_flush_locked(pd_http_req_t *req)
{
    while (req->raw_off < req->raw.len) {
        ssize_t n = send(req->fd, req->raw.data + req->raw_off, req->raw.len - req->raw_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        atomic_fetch_add_explicit(&req->srv->n_sends, 1, memory_order_relaxed);
        if (n > 0) {
            req->raw_off += (size_t)n;
            req->raw_progress_ns = pd_now_ns();
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            /* the client is gone: let MHD find out and close the connection */
            req->gone = 1;
            req->raw.len = req->raw_off = 0;
            req_resume_locked(req);
        } else {
            atomic_fetch_add_explicit(&req->srv->n_direct_partial, 1, memory_order_relaxed);
        }
        return;
    }
    req->raw.len = req->raw_off = 0;
    if (req->stream_ended)
        req_resume_locked(req);
}

/* "<len in hex>\r\n", an HTTP chunk's size line (snprintf's "%zx" cost a measurable
 * share of a streamed token); returns its length.  buf holds at least 19 bytes. */
static int chunk_size_line(char *buf, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    int n = 0, k = 0;
    do
        tmp[n++] = hex[len & 15];
    while ((len >>= 4) != 0);
    while (n > 0)
        buf[k++] = tmp[--n];
    buf[k++] = '\r';
    buf[k++] = '\n';
    return k;
}

/* Queue or send one event made of n parts (req->lock held; the caller checked that the
 * stream is open and len > 0). */
static pd_status_t stream_put_locked(pd_http_req_t *req, const struct iovec *parts, int n, size_t len)
{
    char hdr[24];
    struct iovec iov[8];
    int hl = chunk_size_line(hdr, len);
    size_t total = (size_t)hl + len + 2;
    pd_status_t st = PD_OK;

    if (req->direct_idle && req->srv->direct_stream == DIRECT_WORKER) {
        /* frame it behind whatever waits and let the connection's worker send it all
         * with one send (events queued before the worker runs leave together) */
        pd_http_server_t *srv = req->srv;
        int was_empty = req->raw_off == req->raw.len;
        if (!req->sockopt_set)
            direct_sockopts(req);
        st = pd_buf_append(&req->raw, hdr, (size_t)hl);
        for (int i = 0; i < n && st == PD_OK; i++)
            st = pd_buf_append(&req->raw, parts[i].iov_base, parts[i].iov_len);
        if (st == PD_OK)
            st = pd_buf_append(&req->raw, "\r\n", 2);
        if (st != PD_OK) { /* a half-framed event cannot be repaired */
            req->gone = 1;
            req_resume_locked(req);
            return st;
        }
        if (was_empty)
            req->raw_progress_ns = pd_now_ns();
        atomic_fetch_add_explicit(&srv->n_direct, 1, memory_order_relaxed);
        if (!req->dq_queued && srv->dq_heads != NULL) {
            req->dq_queued = 1;
            req_ref(req);
            pthread_mutex_lock(&srv->dq_lock);
            req->dq_next = srv->dq_heads[req->worker];
            srv->dq_heads[req->worker] = req;
            pthread_mutex_unlock(&srv->dq_lock);
            wake_worker_idx(srv, req->worker);
        }
        return PD_OK;
    }
    uint64_t now = req->direct_idle ? pd_now_ns() : 0;
    if (req->direct_idle && n <= 6 &&
        (req->raw_off < req->raw.len || now - req->last_direct_ns >= req->srv->direct_gap_ns)) {
        if (!req->sockopt_set)
            direct_sockopts(req);
        req->last_direct_ns = now;
        if (req->raw_off < req->raw.len) {
            /* behind bytes still waiting: append the framed event, try to send more */
            st = pd_buf_append(&req->raw, hdr, (size_t)hl);
            for (int i = 0; i < n && st == PD_OK; i++)
                st = pd_buf_append(&req->raw, parts[i].iov_base, parts[i].iov_len);
            if (st == PD_OK)
                st = pd_buf_append(&req->raw, "\r\n", 2);
            if (st == PD_OK)
                raw_flush_locked(req);
            return st;
        }
        iov[0] = (struct iovec){hdr, (size_t)hl};
        for (int i = 0; i < n; i++)
            iov[1 + i] = parts[i];
        iov[1 + n] = (struct iovec){(void *)"\r\n", 2};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n + 2};
        /* a token's event (a few hundred bytes) is gathered and sent with send(): the
         * kernel then skips copying and checking the iovec array */
        char flat[2048];
        const int gather = total <= sizeof(flat);
        if (gather) {
            size_t o = 0;
            for (int i = 0; i < n + 2; i++) {
                memcpy(flat + o, iov[i].iov_base, iov[i].iov_len);
                o += iov[i].iov_len;
            }
        }
        ssize_t sent;
        do
            sent = gather ? send(req->fd, flat, total, MSG_NOSIGNAL | MSG_DONTWAIT)
                          : sendmsg(req->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (sent < 0 && errno == EINTR);
        atomic_fetch_add_explicit(&req->srv->n_sends, 1, memory_order_relaxed);
        if (sent == (ssize_t)total) {
            atomic_fetch_add_explicit(&req->srv->n_direct, 1, memory_order_relaxed);
            return PD_OK;
        }
        if (sent > 0) {
            atomic_fetch_add_explicit(&req->srv->n_direct, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&req->srv->n_direct_partial, 1, memory_order_relaxed);
            /* keep the unsent tail of the frame, in order */
            size_t skip = (size_t)sent;
            req->raw.len = req->raw_off = 0;
            req->raw_progress_ns = pd_now_ns();
            for (int i = 0; i < n + 2 && st == PD_OK; i++) {
                if (skip >= iov[i].iov_len) {
                    skip -= iov[i].iov_len;
                    continue;
                }
                st = pd_buf_append(&req->raw, (const char *)iov[i].iov_base + skip, iov[i].iov_len - skip);
                skip = 0;
            }
            if (st != PD_OK) { /* a frame cut in the middle cannot be repaired */
                req->gone = 1;
                req_resume_locked(req);
            }
            return st;
        }
        /* nothing sent: the MHD path below (it reports an error itself) */
    }
    for (int i = 0; i < n && st == PD_OK; i++)
        st = pd_buf_append(&req->sbuf, parts[i].iov_base, parts[i].iov_len);
    if (st == PD_OK)
        req_resume_locked(req);
    atomic_fetch_add_explicit(&req->srv->n_loop, 1, memory_order_relaxed);
    return st;
}

static size_t stream_pending_locked(const pd_http_req_t *req)
{
    return req->sbuf.len - req->srd + req->raw.len - req->raw_off;
}

pd_status_t pd_http_stream_write(pd_http_stream_t *stream, const void *data, size_t len)
{
    pd_http_req_t *req = (pd_http_req_t *)stream;
    if (req == NULL || (data == NULL && len > 0))
        return PD_ERR_INVAL;
    pd_status_t st = PD_OK;
    pthread_mutex_lock(&req->lock);
    if (req->gone || req->completed || req->stream_ended) {
        st = PD_ERR_CLOSED;
    } else if (stream_pending_locked(req) + len > STREAM_MAX_QUEUED) {
        st = PD_ERR_LIMIT;
    } else if (len > 0) { /* an empty chunk would end a chunked body */
        struct iovec part = {(void *)data, len};
        st = stream_put_locked(req, &part, 1, len);
    }
    pthread_mutex_unlock(&req->lock);
    return st;
}

pd_status_t pd_http_sse_send(pd_http_stream_t *stream, const char *json_text)
{
    pd_http_req_t *req = (pd_http_req_t *)stream;
    if (req == NULL || json_text == NULL)
        return PD_ERR_INVAL;
    size_t len = strlen(json_text);
    pd_status_t st = PD_OK;
    /* One event in one piece, so the reader never sends half of it alone. */
    pthread_mutex_lock(&req->lock);
    if (req->gone || req->completed || req->stream_ended)
        st = PD_ERR_CLOSED;
    else if (stream_pending_locked(req) + len + 8 > STREAM_MAX_QUEUED)
        st = PD_ERR_LIMIT;
    if (st == PD_OK) {
        struct iovec parts[3] = {{(void *)"data: ", 6}, {(void *)json_text, len}, {(void *)"\n\n", 2}};
        st = stream_put_locked(req, parts, 3, len + 8);
    }
    pthread_mutex_unlock(&req->lock);
    return st;
}

pd_status_t pd_http_sse_done(pd_http_stream_t *stream)
{
    static const char done[] = "data: [DONE]\n\n";
    return pd_http_stream_write(stream, done, sizeof(done) - 1);
}

pd_status_t pd_http_stream_end(pd_http_stream_t *stream)
{
    pd_http_req_t *req = (pd_http_req_t *)stream;
    if (req == NULL)
        return PD_ERR_INVAL;
    pd_status_t st = PD_OK;
    pthread_mutex_lock(&req->lock);
    if (req->gone || req->completed)
        st = PD_ERR_CLOSED;
    else if (!req->stream_ended) {
        req->stream_ended = 1;
        if (req->raw_off == req->raw.len) /* else raw_flush_locked resumes it when done */
            req_resume_locked(req);
    }
    pthread_mutex_unlock(&req->lock);
    return st;
}

size_t pd_http_stream_queued(const pd_http_stream_t *stream)
{
    pd_http_req_t *req = (pd_http_req_t *)stream;
    pthread_mutex_lock(&req->lock);
    size_t n = stream_pending_locked(req);
    pthread_mutex_unlock(&req->lock);
    return n;
}

int pd_http_stream_closed(const pd_http_stream_t *stream)
{
    pd_http_req_t *req = (pd_http_req_t *)stream;
    pthread_mutex_lock(&req->lock);
    int closed = req->gone || (req->completed && !req->stream_ended);
    pthread_mutex_unlock(&req->lock);
    return closed;
}

const char *pd_http_stream_req_id(const pd_http_stream_t *stream)
{
    return ((const pd_http_req_t *)stream)->id;
}

void pd_http_stream_release(pd_http_stream_t *stream)
{
    pd_http_req_t *req = (pd_http_req_t *)stream;
    if (req == NULL)
        return;
    pd_http_stream_end(stream);
    req_unref(req);
}

/* ---- request accessors ---- */

const char *pd_http_req_method(const pd_http_req_t *req) { return req->method; }
const char *pd_http_req_path(const pd_http_req_t *req) { return req->path; }
const char *pd_http_req_id(const pd_http_req_t *req) { return req->id; }
const char *pd_http_req_client_addr(const pd_http_req_t *req) { return req->client_addr; }
uint16_t pd_http_req_client_port(const pd_http_req_t *req) { return req->client_port; }
pd_http_server_t *pd_http_req_server(const pd_http_req_t *req) { return req->srv; }
void pd_http_req_set_user(pd_http_req_t *req, void *user) { req->user = user; }
void *pd_http_req_get_user(const pd_http_req_t *req) { return req->user; }

/* Headers and arguments live in MHD's connection pool, valid until completion; the
 * handler contract (answer before the request completes) keeps these calls safe. */
const char *pd_http_req_header(const pd_http_req_t *req, const char *name)
{
    if (req->completed)
        return NULL;
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *pd_http_req_query(const pd_http_req_t *req, const char *name)
{
    if (req->completed)
        return NULL;
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *pd_http_req_body(const pd_http_req_t *req, size_t *len_p)
{
    if (len_p)
        *len_p = req->body.len;
    return req->body.data ? req->body.data : "";
}

void pd_http_req_set_on_close(pd_http_req_t *req, pd_http_req_close_cb_t cb, void *user)
{
    pthread_mutex_lock(&req->lock);
    req->on_req_close = cb;
    req->on_req_close_user = user;
    pthread_mutex_unlock(&req->lock);
}

pd_status_t pd_http_req_add_header(pd_http_req_t *req, const char *name, const char *value)
{
    if (req == NULL || name == NULL || value == NULL || has_crlf(name) || has_crlf(value) ||
        name[0] == '\0' || strchr(name, ':') != NULL)
        return PD_ERR_INVAL;
    header_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return PD_ERR_NOMEM;
    h->name = strdup(name);
    h->value = strdup(value);
    if (h->name == NULL || h->value == NULL) {
        free(h->name);
        free(h->value);
        free(h);
        return PD_ERR_NOMEM;
    }
    pthread_mutex_lock(&req->lock);
    if (req->state == REQ_ANSWERED) {
        pthread_mutex_unlock(&req->lock);
        free(h->name);
        free(h->value);
        free(h);
        return PD_ERR_EXISTS;
    }
    h->next = req->extra_headers;
    req->extra_headers = h;
    pthread_mutex_unlock(&req->lock);
    return PD_OK;
}

/* ---- routing ---- */

pd_status_t pd_http_route_ex(pd_http_server_t *srv, const char *method, const char *path,
                             pd_http_handler_cb_t handler, void *user, unsigned flags)
{
    if (srv == NULL || method == NULL || path == NULL || handler == NULL || path[0] != '/' ||
        strlen(method) >= 16)
        return PD_ERR_INVAL;
    if (srv->started)
        return PD_ERR_BUSY;
    for (size_t i = 0; i < srv->n_routes; i++) {
        if (strcmp(srv->routes[i].method, method) == 0 && strcmp(srv->routes[i].path, path) == 0) {
            PD_LOG_ERR("http: route %s %s registered twice", method, path);
            return PD_ERR_EXISTS;
        }
    }
    route_t *r = realloc(srv->routes, (srv->n_routes + 1) * sizeof(*r));
    if (r == NULL)
        return PD_ERR_NOMEM;
    srv->routes = r;
    r = &srv->routes[srv->n_routes];
    r->method = strdup(method);
    r->path = strdup(path);
    if (r->method == NULL || r->path == NULL) {
        free(r->method);
        free(r->path);
        return PD_ERR_NOMEM;
    }
    r->handler = handler;
    r->user = user;
    r->flags = flags;
    for (int k = 0; k < 5; k++)
        atomic_init(&r->m_count[k], NULL);
    atomic_init(&r->m_dur, NULL);
    srv->n_routes++;
    return PD_OK;
}

pd_status_t pd_http_route(pd_http_server_t *srv, const char *method, const char *path,
                          pd_http_handler_cb_t handler, void *user)
{
    return pd_http_route_ex(srv, method, path, handler, user, 0);
}

/* Route for method+path; *path_known_p says whether any method has this path. */
static const route_t *route_find(const pd_http_server_t *srv, const char *method, const char *path,
                                 int *path_known_p)
{
    const char *m = strcmp(method, "HEAD") == 0 ? "GET" : method;
    const route_t *found = NULL;
    *path_known_p = 0;
    for (size_t i = 0; i < srv->n_routes; i++) {
        if (strcmp(srv->routes[i].path, path) != 0)
            continue;
        *path_known_p = 1;
        if (strcmp(srv->routes[i].method, m) == 0)
            found = &srv->routes[i];
    }
    return found;
}

static char *allow_header(const pd_http_server_t *srv, const char *path)
{
    pd_buf_t b;
    pd_buf_init(&b);
    pd_buf_puts(&b, "");
    int has_get = 0;
    for (size_t i = 0; i < srv->n_routes; i++) {
        if (strcmp(srv->routes[i].path, path) != 0)
            continue;
        pd_buf_printf(&b, "%s%s", b.len ? ", " : "", srv->routes[i].method);
        has_get |= strcmp(srv->routes[i].method, "GET") == 0;
    }
    if (has_get)
        pd_buf_puts(&b, ", HEAD");
    return pd_buf_steal(&b);
}

/* ---- middleware ---- */

pd_status_t pd_http_add_middleware(pd_http_server_t *srv, pd_http_middleware_cb_t fn, void *user)
{
    if (srv == NULL || fn == NULL)
        return PD_ERR_INVAL;
    if (srv->started)
        return PD_ERR_BUSY;
    middleware_t *m = realloc(srv->mws, (srv->n_mws + 1) * sizeof(*m));
    if (m == NULL)
        return PD_ERR_NOMEM;
    srv->mws = m;
    srv->mws[srv->n_mws++] = (middleware_t){.fn = fn, .user = user, .dl = NULL};
    return PD_OK;
}

static const pd_http_mw_api_t mw_api = {
    .version = PD_HTTP_MW_API_VERSION,
    .req_method = pd_http_req_method,
    .req_path = pd_http_req_path,
    .req_header = pd_http_req_header,
    .req_query = pd_http_req_query,
    .req_body = pd_http_req_body,
    .req_id = pd_http_req_id,
    .req_client_addr = pd_http_req_client_addr,
    .req_add_header = pd_http_req_add_header,
    .respond_error = pd_http_respond_error,
};

const pd_http_mw_api_t *pd_http_mw_api(void)
{
    return &mw_api;
}

pd_status_t pd_http_load_middleware(pd_http_server_t *srv, const char *spec)
{
    if (srv == NULL || spec == NULL)
        return PD_ERR_INVAL;
    const char *colon = strrchr(spec, ':');
    if (colon == NULL || colon == spec || colon[1] == '\0') {
        PD_LOG_ERR("http: --middleware '%s' must be path.so:symbol", spec);
        return PD_ERR_INVAL;
    }
    char *path = strndup(spec, (size_t)(colon - spec));
    if (path == NULL)
        return PD_ERR_NOMEM;
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        PD_LOG_ERR("http: cannot load middleware library '%s': %s", path, dlerror());
        free(path);
        return PD_ERR_NOT_FOUND;
    }
    dlerror();
    void *sym = dlsym(dl, colon + 1);
    if (sym == NULL) {
        const char *e = dlerror();
        PD_LOG_ERR("http: middleware symbol '%s' not found in '%s': %s", colon + 1, path,
                   e ? e : "NULL symbol");
        dlclose(dl);
        free(path);
        return PD_ERR_NOT_FOUND;
    }
    free(path);
    pd_http_middleware_cb_t fn;
    memcpy(&fn, &sym, sizeof(fn)); /* object->function pointer without a pedantic warning */
    pd_status_t st = pd_http_add_middleware(srv, fn, (void *)&mw_api);
    if (st != PD_OK) {
        dlclose(dl);
        return st;
    }
    srv->mws[srv->n_mws - 1].dl = dl;
    return PD_OK;
}

/* ---- MHD callbacks ---- */

typedef struct conn_ctx {
    int tls_checked;
    int tls_ok; /* 1 verified, 0 none/invalid */
    int tls_present;
} conn_ctx_t;

static void notify_connection(void *cls, struct MHD_Connection *connection, void **socket_context,
                              enum MHD_ConnectionNotificationCode toe)
{
    (void)cls;
    (void)connection;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED)
        *socket_context = calloc(1, sizeof(conn_ctx_t));
    else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        free(*socket_context);
        *socket_context = NULL;
    }
}

/* Verify the client certificate of a TLS connection once per connection. */
static void tls_check(pd_http_server_t *srv, struct MHD_Connection *conn, conn_ctx_t *cc)
{
    if (cc->tls_checked)
        return;
    cc->tls_checked = 1;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (ci == NULL || ci->tls_session == NULL)
        return;
    gnutls_session_t sess = (gnutls_session_t)ci->tls_session;
    unsigned n_certs = 0;
    if (gnutls_certificate_get_peers(sess, &n_certs) == NULL || n_certs == 0)
        return; /* no certificate sent */
    cc->tls_present = 1;
    unsigned vstatus = 0;
    int rc = gnutls_certificate_verify_peers2(sess, &vstatus);
    if (rc < 0) {
        PD_LOG_INFO("http: client certificate verification failed: %s", gnutls_strerror(rc));
        return;
    }
    if (vstatus != 0) {
        gnutls_datum_t out = {0};
        if (gnutls_certificate_verification_status_print(vstatus, GNUTLS_CRT_X509, &out, 0) == 0) {
            PD_LOG_INFO("http: client certificate rejected: %s", out.data);
            gnutls_free(out.data);
        }
        return;
    }
    (void)srv;
    cc->tls_ok = 1;
}

static int valid_req_id(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if ((unsigned char)s[n] < 0x21 || (unsigned char)s[n] > 0x7e || n >= REQ_ID_MAX)
            return 0;
    return n > 0;
}

typedef struct hdr_acc {
    size_t bytes;
} hdr_acc_t;

static enum MHD_Result count_headers(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    hdr_acc_t *acc = cls;
    (void)kind;
    acc->bytes += strlen(key) + (value ? strlen(value) : 0) + 4;
    return MHD_YES;
}

/* Strip root_path (at a segment boundary) and the query string. */
static char *normalize_path(const pd_http_server_t *srv, const char *url)
{
    size_t len = strcspn(url, "?");
    size_t rl = srv->root_path ? strlen(srv->root_path) : 0;
    if (rl > 0 && len >= rl && strncmp(url, srv->root_path, rl) == 0 &&
        (len == rl || url[rl] == '/')) {
        url += rl;
        len -= rl;
    }
    if (len == 0)
        return strdup("/");
    return strndup(url, len);
}

static pd_http_req_t *req_create(pd_http_server_t *srv, struct MHD_Connection *conn,
                                 const char *url, const char *method)
{
    pd_http_req_t *req = calloc(1, sizeof(*req));
    if (req == NULL)
        return NULL;
    pthread_mutex_init(&req->lock, NULL);
    atomic_init(&req->refs, 1);
    req->srv = srv;
    req->conn = conn;
    req->start_ns = pd_now_ns();
    snprintf(req->method, sizeof(req->method), "%s", method);
    req->path = normalize_path(srv, url);
    req->full_path = strdup(url);
    pd_buf_init(&req->body);
    pd_buf_init(&req->sbuf);
    pd_buf_init(&req->raw);
    req->fd = -1;
    if (req->path == NULL || req->full_path == NULL) {
        req_free(req);
        return NULL;
    }
    const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (rid && valid_req_id(rid))
        snprintf(req->id, sizeof(req->id), "%s", rid);
    else
        pd_random_hex_id(req->id);
    const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    if (origin && !has_crlf(origin)) {
        req->has_origin = 1;
        req->origin = strdup(origin);
        if (req->origin == NULL) {
            req_free(req);
            return NULL;
        }
    }
    req->has_cookie = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Cookie") != NULL;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
            inet_ntop(AF_INET, &in->sin_addr, req->client_addr, sizeof(req->client_addr));
            req->client_port = ntohs(in->sin_port);
        } else if (sa->sa_family == AF_INET6) {
            const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
            inet_ntop(AF_INET6, &in6->sin6_addr, req->client_addr, sizeof(req->client_addr));
            req->client_port = ntohs(in6->sin6_port);
        }
    }
    req->route = route_find(srv, req->method, req->path, &req->path_known);
    /* the access line comes when the request ends; trace shows it arriving */
    PD_LOG_REQ(TRACE, req->id, "%s:%u \"%s %s\" arrived", req->client_addr, req->client_port, req->method,
               req->full_path);
    pthread_mutex_lock(&srv->lock);
    req->next = srv->reqs;
    if (srv->reqs)
        srv->reqs->prev = req;
    srv->reqs = req;
    pthread_mutex_unlock(&srv->lock);
    atomic_fetch_add(&srv->inflight, 1);
    return req;
}

/* Answer immediately with an error from inside the access callback. */
static void early_error(pd_http_req_t *req, unsigned status, const char *message,
                        const char *code)
{
    pd_http_respond_error(req, status, NULL, message, NULL, code);
}

static void preflight(pd_http_req_t *req, struct MHD_Connection *conn)
{
    pd_http_server_t *srv = req->srv;
    const char *req_method =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Access-Control-Request-Method");
    const char *req_headers =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Access-Control-Request-Headers");
    pd_buf_t fail;
    pd_buf_init(&fail);
    pd_buf_puts(&fail, "");
    int explicit_origin = !srv->cors_all_origins || srv->cors_credentials;
    int origin_ok = cors_origin_allowed(srv, req->origin);
    if (!origin_ok)
        pd_buf_puts(&fail, "origin");
    if (!strv_has(srv->cors_methods, req_method, 0))
        pd_buf_printf(&fail, "%smethod", fail.len ? ", " : "");
    if (req_headers && !srv->cors_all_headers) {
        char *copy = strdup(req_headers);
        char *save = NULL;
        for (char *tok = copy ? strtok_r(copy, ",", &save) : NULL; tok; tok = strtok_r(NULL, ",", &save)) {
            while (*tok == ' ' || *tok == '\t')
                tok++;
            size_t l = strlen(tok);
            while (l > 0 && (tok[l - 1] == ' ' || tok[l - 1] == '\t'))
                tok[--l] = '\0';
            if (!strv_has(srv->cors_headers, tok, 1)) {
                pd_buf_printf(&fail, "%sheaders", fail.len ? ", " : "");
                break;
            }
        }
        free(copy);
    }
    int ok = fail.len == 0;
    char *text = NULL;
    if (!ok) {
        pd_buf_t t;
        pd_buf_init(&t);
        pd_buf_printf(&t, "Disallowed CORS %s", fail.data);
        text = pd_buf_steal(&t);
    }
    const char *body = ok ? "OK" : (text ? text : "Disallowed CORS");
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    free(text);
    pd_buf_cleanup(&fail);
    if (resp == NULL)
        return;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (explicit_origin) {
        MHD_add_response_header(resp, "Vary", "Origin");
        if (origin_ok)
            MHD_add_response_header(resp, "Access-Control-Allow-Origin", req->origin);
    } else {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
    }
    MHD_add_response_header(resp, "Access-Control-Allow-Methods", srv->cors_methods_joined);
    char age[32];
    snprintf(age, sizeof(age), "%d", srv->cors_max_age);
    MHD_add_response_header(resp, "Access-Control-Max-Age", age);
    if (srv->cors_all_headers) {
        if (req_headers)
            MHD_add_response_header(resp, "Access-Control-Allow-Headers", req_headers);
    } else {
        MHD_add_response_header(resp, "Access-Control-Allow-Headers", srv->cors_headers_joined);
    }
    if (srv->cors_credentials)
        MHD_add_response_header(resp, "Access-Control-Allow-Credentials", "true");
    if (srv->req_id_headers)
        MHD_add_response_header(resp, "X-Request-Id", req->id);
    pthread_mutex_lock(&req->lock);
    req->pending = resp;
    req->pending_status = ok ? 200 : 400;
    req->status = req->pending_status;
    req->state = REQ_ANSWERED;
    pthread_mutex_unlock(&req->lock);
}

static int path_protected(const pd_http_server_t *srv, const char *path)
{
    for (size_t i = 0; srv->protected_prefixes && srv->protected_prefixes[i]; i++) {
        const char *p = srv->protected_prefixes[i];
        if (strncmp(path, p, strlen(p)) == 0)
            return 1;
    }
    return 0;
}

static int auth_ok(const pd_http_server_t *srv, struct MHD_Connection *conn)
{
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    h += 7;
    while (*h == ' ')
        h++;
    return pd_ct_equal(h, strlen(h), srv->api_key, srv->api_key_len);
}

/* Checks made once headers are in; may post an early answer. */
static void on_headers(pd_http_req_t *req, struct MHD_Connection *conn)
{
    pd_http_server_t *srv = req->srv;
    hdr_acc_t acc = {strlen(req->full_path) + strlen(req->method) + 16};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, count_headers, &acc);
    if (acc.bytes > srv->max_header) {
        early_error(req, 431, "Request headers are too large.", NULL);
        return;
    }
    if (atomic_load(&srv->draining) &&
        !(req->route && (req->route->flags & PD_HTTP_ROUTE_DURING_DRAIN))) {
        early_error(req, 503, "The server is shutting down.", NULL);
        return;
    }
    if (srv->cors_enabled && req->has_origin && strcmp(req->method, "OPTIONS") == 0 &&
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Access-Control-Request-Method")) {
        preflight(req, conn);
        return;
    }
    if (srv->tls_key && srv->cert_reqs != PD_HTTP_CERT_NONE) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        conn_ctx_t *cc = ci ? (conn_ctx_t *)ci->socket_context : NULL;
        if (cc == NULL) {
            early_error(req, 500, "Internal error.", NULL);
            return;
        }
        tls_check(srv, conn, cc);
        if ((srv->cert_reqs == PD_HTTP_CERT_REQUIRED && !cc->tls_ok) ||
            (cc->tls_present && !cc->tls_ok)) {
            early_error(req, 403, "A valid client certificate is required.", "client_certificate_required");
            return;
        }
    }
    if (srv->api_key && path_protected(srv, req->path) &&
        !(req->route && (req->route->flags & PD_HTTP_ROUTE_NO_AUTH)) &&
        strcmp(req->method, "OPTIONS") != 0 && !auth_ok(srv, conn)) {
        early_error(req, 401, "Unauthorized: a valid API key is required.", "invalid_api_key");
        return;
    }
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (cl) {
        char *end = NULL;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno == 0 && end != cl && n > srv->max_body) {
            req->body_too_large = 1;
            early_error(req, 413, "The request body is too large.", NULL);
            return;
        }
    }
}

/* Everything after the body: middleware, routing, handler. */
static void dispatch(pd_http_req_t *req)
{
    pd_http_server_t *srv = req->srv;
    for (size_t i = 0; i < srv->n_mws; i++) {
        int rc = srv->mws[i].fn(req, srv->mws[i].user);
        if (req->state == REQ_ANSWERED)
            return;
        if (rc >= 400 && rc <= 599) {
            early_error(req, (unsigned)rc, "The request was rejected.", NULL);
            return;
        }
    }
    if (req->route == NULL) {
        if (req->path_known) {
            char *allow = allow_header(srv, req->path);
            pd_http_req_add_header(req, "Allow", allow ? allow : "");
            free(allow);
            early_error(req, 405, "Method Not Allowed", NULL);
        } else {
            early_error(req, 404, "Not Found", NULL);
        }
        return;
    }
    pthread_mutex_lock(&req->lock);
    req->state = REQ_IN_HANDLER;
    pthread_mutex_unlock(&req->lock);
    req->route->handler(req, req->route->user);
}

/* Queue the pending answer or park the connection.  Returns MHD_NO to drop it. */
static enum MHD_Result finish_call(pd_http_req_t *req, struct MHD_Connection *conn)
{
    enum MHD_Result ret = MHD_YES;
    pthread_mutex_lock(&req->lock);
    if (req->pending) {
        /* Queue outside req->lock: MHD holds the response's mutex while it calls
         * stream_reader(), which takes req->lock, so the order must stay one way. */
        struct MHD_Response *resp = req->pending;
        unsigned status = req->pending_status;
        req->pending = NULL;
        pthread_mutex_unlock(&req->lock);
        ret = MHD_queue_response(conn, status, resp);
        MHD_destroy_response(resp);
        return ret;
    } else if (req->gone || atomic_load(&req->srv->stopping)) {
        req->gone = 1;
        ret = MHD_NO;
    } else {
        if (req->state == REQ_IN_HANDLER) {
            /* the reference goes with the flag, under the lock: an answer from another
             * thread may drop it the moment the lock is released */
            req->state = REQ_WAITING;
            req->owner_ref = 1;
            req_ref(req);
        }
        req_suspend_locked(req);
    }
    pthread_mutex_unlock(&req->lock);
    return ret;
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    pd_http_server_t *srv = cls;
    pd_http_req_t *req = *con_cls;
    if (req == NULL) {
        req = req_create(srv, conn, url, method);
        if (req == NULL)
            return MHD_NO;
        *con_cls = req;
        if (srv->direct_stream && version && strcmp(version, MHD_HTTP_VERSION_1_1) == 0 &&
            strcmp(method, "HEAD") != 0) {
            const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
            if (ci && ci->connect_fd >= 0) {
                req->fd = ci->connect_fd;
                req->direct_ok = 1;
                req->worker = worker_of(srv, conn);
            }
        }
        on_headers(req, conn);
        if (req->state == REQ_ANSWERED)
            return finish_call(req, conn);
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (req->state != REQ_READING)
            return MHD_YES; /* answered early (e.g. 413): discard */
        if (req->body_too_large || req->body.len + n > srv->max_body) {
            /* Chunked body past the limit: keep discarding up to twice the limit so the
             * client can read a 413, then cut the connection. */
            if (!req->body_too_large) {
                req->body_too_large = 1;
                pd_buf_cleanup(&req->body);
                pd_buf_init(&req->body);
            }
            req->discarded += n;
            if (req->discarded > 2 * srv->max_body + (1u << 20))
                return MHD_NO;
            return MHD_YES;
        }
        if (pd_buf_append(&req->body, upload_data, n) != PD_OK)
            return MHD_NO;
        return MHD_YES;
    }
    /* Final call (or a call after resume). */
    if (req->state == REQ_READING) {
        if (req->body_too_large) {
            early_error(req, 413, "The request body is too large.", NULL);
        } else {
            if (req->body.data == NULL)
                pd_buf_puts(&req->body, "");
            dispatch(req);
        }
    }
    return finish_call(req, conn);
}

static const char *status_class(unsigned status)
{
    static const char *cls[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    unsigned c = status / 100;
    return (c >= 1 && c <= 5) ? cls[c - 1] : "5xx";
}

static const char *norm_method(const char *m)
{
    static const char *known[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"};
    for (size_t i = 0; i < PD_ARRAY_SIZE(known); i++)
        if (strcmp(known[i], m) == 0)
            return known[i];
    return "OTHER";
}

static void completed_cb(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    pd_http_server_t *srv = cls;
    pd_http_req_t *req = *con_cls;
    (void)conn;
    if (req == NULL)
        return;
    *con_cls = NULL;

    pd_http_close_cb_t on_close = NULL;
    pd_http_req_close_cb_t on_req_close = NULL;
    void *close_user = NULL;
    pd_status_t close_status = PD_ERR_CLOSED;

    pthread_mutex_lock(&req->lock);
    int ok = (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    if (!ok)
        req->gone = 1;
    req->completed = 1;
    if (!req->close_fired) {
        if (req->is_stream) {
            req->close_fired = 1;
            on_close = req->on_close;
            close_user = req->on_close_user;
            close_status = (ok && req->stream_ended) ? PD_OK : PD_ERR_CLOSED;
        } else if (req->state == REQ_WAITING && req->on_req_close) {
            req->close_fired = 1;
            on_req_close = req->on_req_close;
            close_user = req->on_req_close_user;
        }
    }
    unsigned status = req->status ? req->status : 499; /* nginx's "client closed request" */
    pthread_mutex_lock(&srv->lock);
    if (req->prev)
        req->prev->next = req->next;
    else
        srv->reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
    req->watched = 0;
    pthread_mutex_unlock(&srv->lock);
    pthread_mutex_unlock(&req->lock);

    if (on_close)
        on_close((pd_http_stream_t *)req, close_status, close_user);
    if (on_req_close)
        on_req_close(req, close_user);

    double secs = (double)(pd_now_ns() - req->start_ns) / 1e9;
    if (!srv->no_access_log)
        PD_LOG_REQ(INFO, req->id, "%s:%u \"%s %s\" %u %.3f ms%s", req->client_addr,
                   req->client_port, req->method, req->full_path, status, secs * 1e3,
                   ok ? "" : " (connection closed)");
    if (srv->m_requests) {
        const char *handler = req->route ? req->route->path : "none";
        const char *method = norm_method(req->method);
        unsigned scls = status / 100 - 1;
        /* Routes cache their series (routes are never freed while the server lives);
         * unknown paths and HEAD-on-GET take the registry lock. */
        route_t *rt = (route_t *)req->route;
        int cache = rt != NULL && scls < 5 && strcmp(rt->method, req->method) == 0;
        pd_metric_series_t *s = cache ? atomic_load(&rt->m_count[scls]) : NULL;
        if (s == NULL &&
            pd_metric_series(srv->m_requests, (const char *[]){method, handler, status_class(status)},
                             &s) == PD_OK && cache)
            atomic_store(&rt->m_count[scls], s);
        pd_metric_inc(s);
        s = cache ? atomic_load(&rt->m_dur) : NULL;
        if (s == NULL && pd_metric_series(srv->m_duration, (const char *[]){method, handler}, &s) == PD_OK &&
            cache)
            atomic_store(&rt->m_dur, s);
        pd_metric_observe(s, secs);
    }
    atomic_fetch_sub(&srv->inflight, 1);
    req_unref(req);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    (void)cls;
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    PD_LOG_DEBUG("http: microhttpd: %s", line);
}

/* ---- watcher: disconnects of suspended connections ---- */

typedef struct snap {
    pd_http_req_t **reqs;
    size_t n, cap;
} snap_t;

/* Take references to live requests (all, or only suspended ones) under srv->lock. */
static void snapshot(pd_http_server_t *srv, snap_t *sn, int only_watched)
{
    sn->n = 0;
    pthread_mutex_lock(&srv->lock);
    for (pd_http_req_t *r = srv->reqs; r; r = r->next) {
        if (only_watched && !r->watched)
            continue;
        if (sn->n == sn->cap) {
            size_t cap = sn->cap ? sn->cap * 2 : 64;
            pd_http_req_t **a = realloc(sn->reqs, cap * sizeof(*a));
            if (a == NULL)
                break;
            sn->reqs = a;
            sn->cap = cap;
        }
        req_ref(r);
        sn->reqs[sn->n++] = r;
    }
    pthread_mutex_unlock(&srv->lock);
}

/* Mark a request gone and wake it so MHD closes it; fire the async close callback. */
static void cut_request(pd_http_req_t *req)
{
    pd_http_req_close_cb_t cb = NULL;
    void *user = NULL;
    pthread_mutex_lock(&req->lock);
    if (!req->completed) {
        req->gone = 1;
        if (req->state == REQ_WAITING && !req->close_fired && req->on_req_close) {
            req->close_fired = 1;
            cb = req->on_req_close;
            user = req->on_req_close_user;
        }
        req_resume_locked(req);
    }
    pthread_mutex_unlock(&req->lock);
    if (cb)
        cb(req, user);
}

static void *watcher_main(void *arg)
{
    pd_http_server_t *srv = arg;
    snap_t sn = {0};
    struct pollfd *pfds = NULL;
    size_t pcap = 0;
    pthread_mutex_lock(&srv->lock);
    while (srv->watcher_run) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += WATCH_PERIOD_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&srv->cond, &srv->lock, &ts);
        if (!srv->watcher_run)
            break;
        pthread_mutex_unlock(&srv->lock);

        snapshot(srv, &sn, 1);
        if (sn.n > pcap) {
            struct pollfd *p = realloc(pfds, sn.n * sizeof(*p));
            if (p) {
                pfds = p;
                pcap = sn.n;
            }
        }
        size_t np = 0;
        for (size_t i = 0; i < sn.n && i < pcap; i++) {
            pd_http_req_t *r = sn.reqs[i];
            int fd = -1;
            short ev = POLLRDHUP;
            pthread_mutex_lock(&r->lock);
            if (r->suspended && !r->completed) {
                const union MHD_ConnectionInfo *ci =
                    MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
                if (ci)
                    fd = ci->connect_fd;
                if (r->raw_off < r->raw.len) /* a direct write's tail waits for room */
                    ev |= POLLOUT;
            }
            pthread_mutex_unlock(&r->lock);
            pfds[np].fd = fd;
            pfds[np].events = ev;
            pfds[np].revents = 0;
            np++;
        }
        if (np > 0 && poll(pfds, np, 0) < 0)
            for (size_t i = 0; i < np; i++)
                pfds[i].revents = 0;
        {
            /* (every time, not only when poll saw an event: stalled readers) */
            for (size_t i = 0; i < np; i++)
                if (pfds[i].fd >= 0 && (pfds[i].revents & (POLLRDHUP | POLLHUP | POLLERR))) {
                    cut_request(sn.reqs[i]);
                } else if (pfds[i].fd >= 0 && (pfds[i].events & POLLOUT)) {
                    pd_http_req_t *r = sn.reqs[i];
                    int stalled = 0;
                    pthread_mutex_lock(&r->lock);
                    if (r->direct_idle && !r->completed && !r->gone && r->raw_off < r->raw.len) {
                        if (pfds[i].revents & POLLOUT)
                            raw_flush_locked(r);
                        /* the same idle timeout as MHD applies to a stalled reader */
                        stalled = r->raw_off < r->raw.len && srv->timeout_s > 0 &&
                                  pd_now_ns() - r->raw_progress_ns > (uint64_t)srv->timeout_s * 1000000000ull;
                    }
                    pthread_mutex_unlock(&r->lock);
                    if (stalled)
                        cut_request(r);
                }
        }
        for (size_t i = 0; i < sn.n; i++)
            req_unref(sn.reqs[i]);
        pthread_mutex_lock(&srv->lock);
    }
    pthread_mutex_unlock(&srv->lock);
    free(sn.reqs);
    free(pfds);
    return NULL;
}

/* ---- lifecycle ---- */

static pd_status_t read_pem(const char *path, const char *what, char **out_p)
{
    size_t len = 0;
    pd_status_t st = pd_read_file(path, out_p, &len);
    if (st != PD_OK)
        PD_LOG_ERR("http: cannot read %s '%s': %s", what, path, pd_status_str(st));
    return st;
}

pd_status_t pd_http_server_create(const pd_http_config_t *cfg, pd_http_server_t **srv_p)
{
    static const char *const all[] = {"*", NULL};
    static const char *const v1[] = {"/v1", NULL};
    static const char *const all_methods[] = {"DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", NULL};
    static const char *const safelisted[] = {"Accept", "Accept-Language", "Content-Language", "Content-Type", NULL};
    pd_status_t st = PD_ERR_NOMEM;
    if (cfg == NULL || srv_p == NULL)
        return PD_ERR_INVAL;
    if ((cfg->ssl_keyfile == NULL) != (cfg->ssl_certfile == NULL)) {
        PD_LOG_ERR("http: --ssl-keyfile and --ssl-certfile must be given together");
        return PD_ERR_INVAL;
    }
    if (cfg->ssl_cert_reqs != PD_HTTP_CERT_NONE && cfg->ssl_keyfile && cfg->ssl_ca_certs == NULL) {
        PD_LOG_ERR("http: --ssl-cert-reqs %d needs --ssl-ca-certs", (int)cfg->ssl_cert_reqs);
        return PD_ERR_INVAL;
    }
    if ((unsigned)cfg->ssl_cert_reqs > 2) {
        PD_LOG_ERR("http: --ssl-cert-reqs must be 0, 1 or 2");
        return PD_ERR_INVAL;
    }
    if (cfg->root_path && cfg->root_path[0] && cfg->root_path[0] != '/') {
        PD_LOG_ERR("http: --root-path must start with '/'");
        return PD_ERR_INVAL;
    }
    pd_http_server_t *srv = calloc(1, sizeof(*srv));
    if (srv == NULL)
        return PD_ERR_NOMEM;
    pthread_mutex_init(&srv->lock, NULL);
    pthread_mutex_init(&srv->dq_lock, NULL);
    pthread_cond_init(&srv->cond, NULL);
    srv->listen_fd = -1;
    srv->host = xstrdup(cfg->host && cfg->host[0] ? cfg->host : "0.0.0.0");
    srv->port = cfg->port;
    if (cfg->root_path && cfg->root_path[0]) {
        srv->root_path = strdup(cfg->root_path);
        if (srv->root_path == NULL)
            goto err_free;
        size_t l = strlen(srv->root_path);
        while (l > 0 && srv->root_path[l - 1] == '/')
            srv->root_path[--l] = '\0';
    }
    if (cfg->api_key && cfg->api_key[0]) {
        srv->api_key = strdup(cfg->api_key);
        if (srv->api_key == NULL)
            goto err_free;
        srv->api_key_len = strlen(srv->api_key);
    }
    srv->protected_prefixes = strv_dup(cfg->protected_prefixes, v1);
    srv->cors_enabled = !cfg->disable_cors;
    srv->cors_origins = strv_dup(cfg->allowed_origins, all);
    srv->cors_methods = strv_dup(cfg->allowed_methods, all);
    const char *const *hdrs = cfg->allowed_headers ? cfg->allowed_headers : all;
    srv->cors_expose = strv_dup(cfg->expose_headers, (const char *const[]){NULL});
    if (srv->host == NULL || srv->protected_prefixes == NULL || srv->cors_origins == NULL ||
        srv->cors_methods == NULL || srv->cors_expose == NULL)
        goto err_free;
    srv->cors_all_origins = strv_has(srv->cors_origins, "*", 0);
    if (strv_has(srv->cors_methods, "*", 0)) {
        strv_free(srv->cors_methods);
        srv->cors_methods = strv_dup(all_methods, NULL);
    }
    /* Allowed headers: the request's list plus the CORS-safelisted ones (Starlette). */
    {
        size_t n = 0, k = 0;
        while (hdrs[n])
            n++;
        const char **merged = calloc(n + 5, sizeof(char *));
        if (merged == NULL)
            goto err_free;
        for (size_t i = 0; safelisted[i]; i++)
            merged[k++] = safelisted[i];
        for (size_t i = 0; i < n; i++) {
            int dup = 0;
            for (size_t j = 0; j < k; j++)
                dup |= strcasecmp(merged[j], hdrs[i]) == 0;
            if (!dup && strcmp(hdrs[i], "*") != 0)
                merged[k++] = hdrs[i];
        }
        srv->cors_all_headers = 0;
        for (size_t i = 0; i < n; i++)
            srv->cors_all_headers |= strcmp(hdrs[i], "*") == 0;
        /* Starlette lists them sorted (Python's code-point order). */
        qsort(merged, k, sizeof(char *), cmp_str);
        srv->cors_headers = strv_dup(merged, NULL);
        free(merged);
    }
    srv->cors_credentials = cfg->allow_credentials != 0;
    srv->cors_max_age = cfg->cors_max_age > 0 ? cfg->cors_max_age : 600;
    srv->cors_methods_joined = strv_join(srv->cors_methods, ", ");
    srv->cors_headers_joined = strv_join(srv->cors_headers, ", ");
    srv->cors_expose_joined = strv_join(srv->cors_expose, ", ");
    if (srv->cors_methods == NULL || srv->cors_headers == NULL || srv->cors_methods_joined == NULL ||
        srv->cors_headers_joined == NULL || srv->cors_expose_joined == NULL)
        goto err_free;
    srv->req_id_headers = cfg->enable_request_id_headers;
    srv->max_body = cfg->max_body_bytes ? cfg->max_body_bytes : DEFAULT_MAX_BODY;
    srv->max_header = cfg->max_header_bytes ? cfg->max_header_bytes : DEFAULT_MAX_HEADER;
    srv->max_conn = cfg->max_connections ? cfg->max_connections : DEFAULT_MAX_CONN;
    srv->timeout_s = cfg->connection_timeout_s ? cfg->connection_timeout_s : DEFAULT_TIMEOUT_S;
    if (cfg->n_threads) {
        srv->n_threads = cfg->n_threads;
    } else {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        srv->n_threads = nc < 1 ? 1 : (nc > 4 ? 4 : (unsigned)nc);
    }
    srv->no_keep_alive = cfg->disable_keep_alive;
    srv->no_access_log = cfg->disable_access_log;
    {
        const char *d = getenv("PD_HTTP_DIRECT_STREAM");
        /* the environment overrides the configuration (A/B runs of one binary) */
        srv->direct_stream = cfg->disable_direct_stream || (d && strcmp(d, "0") == 0) || cfg->ssl_keyfile != NULL
                                 ? DIRECT_OFF
                             : d && strcmp(d, "worker") == 0 ? DIRECT_WORKER
                             : (cfg->direct_stream_inline || (d && strcmp(d, "inline") == 0)) ? DIRECT_INLINE
                                                                                            : DIRECT_WORKER;
        srv->direct_gap_ns = (uint64_t)(cfg->direct_stream_min_gap_us ? cfg->direct_stream_min_gap_us
                                                                       : DEFAULT_DIRECT_GAP_US) * 1000u;
    }
    srv->cert_reqs = cfg->ssl_cert_reqs;
    if (cfg->ssl_keyfile) {
        if ((st = read_pem(cfg->ssl_keyfile, "--ssl-keyfile", &srv->tls_key)) != PD_OK ||
            (st = read_pem(cfg->ssl_certfile, "--ssl-certfile", &srv->tls_cert)) != PD_OK)
            goto err_free;
        if (cfg->ssl_ca_certs &&
            (st = read_pem(cfg->ssl_ca_certs, "--ssl-ca-certs", &srv->tls_ca)) != PD_OK)
            goto err_free;
        srv->tls_pass = xstrdup(cfg->ssl_keyfile_password);
        srv->tls_prio = xstrdup(cfg->ssl_ciphers);
        st = PD_ERR_NOMEM;
    }
    if (cfg->metrics) {
        static const double buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
        if ((st = pd_metrics_counter(cfg->metrics, "http_requests_total",
                                     "Total number of requests by method, handler and status class.",
                                     3, (const char *[]){"method", "handler", "status"},
                                     &srv->m_requests)) != PD_OK ||
            (st = pd_metrics_histogram(cfg->metrics, "http_request_duration_seconds",
                                       "Latency of HTTP requests (until the last byte) by handler.",
                                       2, (const char *[]){"method", "handler"},
                                       PD_ARRAY_SIZE(buckets), buckets, &srv->m_duration)) != PD_OK)
            goto err_free;
    }
    *srv_p = srv;
    return PD_OK;

err_free:
    pd_http_server_destroy(srv);
    return st;
}

/* A worker drives one MHD daemon: it polls MHD's epoll fd and its own wake-up eventfd
 * with the timeout MHD asks for (MHD_get_timeout(): 0 while connections are already
 * marked ready, e.g. after a full 128-event epoll batch, else the earliest connection
 * timeout), then runs MHD_run(), whose epoll_wait() does not block.  Every event that
 * needs the worker either is a socket event in MHD's epoll set or writes the eventfd
 * (resumes from other threads, queued direct writes, stop), so the wait without
 * timeouts is only a safety bound: an idle server wakes once a second per worker, not
 * 50 times (the bound was 20 ms, which cost ~1 us per streamed token in wake-ups). */
#define WORKER_WAIT_MS 1000

typedef struct worker_arg {
    pd_http_server_t *srv;
    struct MHD_Daemon *daemon;
    int wake_fd;
    atomic_int *wake_pending; /* or NULL */
    unsigned idx;
} worker_arg_t;

/* The worker's share of direct writes: send what the streams queued for it. */
static void dq_drain(pd_http_server_t *srv, unsigned idx)
{
    pd_http_req_t *r;
    pthread_mutex_lock(&srv->dq_lock);
    r = srv->dq_heads ? srv->dq_heads[idx] : NULL;
    if (r)
        srv->dq_heads[idx] = NULL;
    pthread_mutex_unlock(&srv->dq_lock);
    while (r) {
        pd_http_req_t *next = r->dq_next;
        pthread_mutex_lock(&r->lock);
        r->dq_queued = 0;
        r->dq_next = NULL;
        if (r->direct_idle && !r->completed && !r->gone && r->raw_off < r->raw.len)
            raw_flush_locked(r);
        pthread_mutex_unlock(&r->lock);
        req_unref(r);
        r = next;
    }
}

static void *worker_main(void *arg)
{
    pd_http_server_t *srv = ((worker_arg_t *)arg)->srv;
    struct MHD_Daemon *d = ((worker_arg_t *)arg)->daemon;
    int wake_fd = ((worker_arg_t *)arg)->wake_fd;
    atomic_int *pending = ((worker_arg_t *)arg)->wake_pending;
    unsigned idx = ((worker_arg_t *)arg)->idx;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_EPOLL_FD);
    int ep = di ? di->epoll_fd : -1;
    free(arg);
    while (atomic_load_explicit(&srv->workers_run, memory_order_relaxed)) {
        struct pollfd pfd[2] = {{ep, POLLIN, 0}, {wake_fd, POLLIN, 0}};
        MHD_UNSIGNED_LONG_LONG to = WORKER_WAIT_MS;
        int timeout = WORKER_WAIT_MS;
        if (ep < 0 || wake_fd < 0) {
            dq_drain(srv, idx); /* no wake-up fd: streams wait for the timeout */
            MHD_run_wait(d, WORKER_WAIT_MS);
            continue;
        }
        if (MHD_get_timeout(d, &to) == MHD_YES && to < (MHD_UNSIGNED_LONG_LONG)timeout)
            timeout = (int)to;
        int r = poll(pfd, 2, timeout);
        if (r > 0 && (pfd[1].revents & POLLIN)) {
            uint64_t v;
            if (read(wake_fd, &v, sizeof(v)) < 0) {
                /* EAGAIN: another reader took it */
            }
        }
        /* woken only to send direct writes (no socket event, no resume, no timeout):
         * MHD has nothing to do */
        int only_wake = r == 1 && (pfd[1].revents & POLLIN) && pfd[0].revents == 0;
        if (pending)
            atomic_store(pending, 0);
        int resumed = srv->mhd_pending ? atomic_exchange(&srv->mhd_pending[idx], 0) : 1;
        dq_drain(srv, idx);
        if (!only_wake || resumed)
            MHD_run(d);
    }
    return NULL;
}

/* Bind the listening socket ourselves so several daemons can share it. */
static pd_status_t listen_socket(pd_http_server_t *srv, int *ipv6_p)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof(port), "%u", (unsigned)srv->port);
    int rc = getaddrinfo(srv->host, port, &hints, &ai);
    if (rc != 0 || ai == NULL) {
        PD_LOG_ERR("http: cannot resolve host '%s': %s", srv->host, gai_strerror(rc));
        return PD_ERR_INVAL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1, zero = 0;
    if (fd < 0)
        goto err_sys;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ai->ai_family == AF_INET6) /* "::" also takes IPv4, like uvicorn */
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1024) != 0)
        goto err_sys;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        goto err_sys;
    srv->bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                     : ((struct sockaddr_in *)&ss)->sin_port);
    *ipv6_p = ai->ai_family == AF_INET6;
    srv->listen_fd = fd;
    freeaddrinfo(ai);
    return PD_OK;

err_sys:
    PD_LOG_ERR("http: cannot listen on %s:%u: %s", srv->host, (unsigned)srv->port, strerror(errno));
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return PD_ERR_IO;
}

static void stop_workers(pd_http_server_t *srv)
{
    atomic_store(&srv->workers_run, 0);
    for (unsigned i = 0; i < srv->n_workers; i++)
        wake_worker_idx(srv, i); /* the loop checks workers_run after every wake-up */
    for (unsigned i = 0; i < srv->n_workers; i++)
        pthread_join(srv->workers[i], NULL);
    srv->n_workers = 0;
    int *fds = srv->wake_fds;
    srv->wake_fds = NULL; /* late resumes (after the workers stopped) skip the wake-up */
    for (unsigned i = 0; fds && i < srv->n_threads; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(fds);
}

static void stop_daemons(pd_http_server_t *srv)
{
    for (unsigned i = 0; srv->daemons && i < srv->n_threads; i++) {
        if (srv->daemons[i])
            MHD_stop_daemon(srv->daemons[i]); /* closes its dup of the listening socket */
        srv->daemons[i] = NULL;
    }
    if (srv->listen_fd >= 0)
        close(srv->listen_fd);
    srv->listen_fd = -1;
}

pd_status_t pd_http_server_start(pd_http_server_t *srv)
{
    if (srv == NULL)
        return PD_ERR_INVAL;
    if (srv->started)
        return PD_ERR_BUSY;
    int ipv6 = 0;
    pd_status_t st = listen_socket(srv, &ipv6);
    if (st != PD_OK)
        return st;
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ipv6)
        flags |= MHD_USE_IPv6;
    if (srv->tls_key)
        flags |= MHD_USE_TLS;
    /* Memory pool per connection: the request line and headers must fit, with room for
     * the read buffer's tail and the response headers.  libmicrohttpd 0.9.75 mmaps a
     * pool over 32 KiB per connection: page faults as it is first written, then munmap
     * and its TLB shootdown at close (~250 us of server CPU per new connection on
     * this 2-core VM); a pool of 32 KiB or less comes from malloc and is reused. */
    size_t pool = srv->max_header + 16384;
    if (pool < 32768)
        pool = 32768;
    unsigned per_daemon = (srv->max_conn + srv->n_threads - 1) / srv->n_threads;

    srv->daemons = calloc(srv->n_threads, sizeof(*srv->daemons));
    srv->workers = calloc(srv->n_threads, sizeof(*srv->workers));
    if (srv->daemons == NULL || srv->workers == NULL) {
        st = PD_ERR_NOMEM;
        goto err_daemons;
    }
    for (unsigned i = 0; i < srv->n_threads; i++) {
        int fd = dup(srv->listen_fd);
        if (fd < 0) {
            PD_LOG_ERR("http: dup of the listening socket failed: %s", strerror(errno));
            st = PD_ERR_IO;
            goto err_daemons;
        }
        struct MHD_OptionItem opts[24];
        size_t n = 0;
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, fd, NULL};
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)completed_cb, srv};
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)notify_connection, srv};
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT, per_daemon, NULL};
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT, srv->timeout_s, NULL};
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)pool, NULL};
        if (srv->tls_key) {
            opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, srv->tls_key};
            opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, srv->tls_cert};
            if (srv->tls_pass)
                opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_KEY_PASSWORD, 0, srv->tls_pass};
            if (srv->tls_ca && srv->cert_reqs != PD_HTTP_CERT_NONE)
                opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_TRUST, 0, srv->tls_ca};
            if (srv->tls_prio)
                opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_PRIORITIES, 0, srv->tls_prio};
        }
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
        srv->daemons[i] = MHD_start_daemon(flags, 0, NULL, NULL, access_cb, srv,
                                           MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, srv,
                                           MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
        if (srv->daemons[i] == NULL) {
            close(fd);
            PD_LOG_ERR("http: cannot start libmicrohttpd on %s:%u (bad TLS key/certificate?)",
                       srv->host, (unsigned)srv->bound_port);
            st = PD_ERR_IO;
            goto err_daemons;
        }
    }
    srv->wake_fds = malloc(srv->n_threads * sizeof(int));
    if (srv->wake_pending == NULL)
        srv->wake_pending = calloc(srv->n_threads, sizeof(*srv->wake_pending));
    if (srv->mhd_pending == NULL)
        srv->mhd_pending = calloc(srv->n_threads, sizeof(*srv->mhd_pending));
    for (unsigned i = 0; srv->mhd_pending && i < srv->n_threads; i++)
        atomic_init(&srv->mhd_pending[i], 0);
    for (unsigned i = 0; srv->wake_pending && i < srv->n_threads; i++)
        atomic_init(&srv->wake_pending[i], 0);
    for (unsigned i = 0; srv->wake_fds && i < srv->n_threads; i++)
        srv->wake_fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (srv->dq_heads == NULL && srv->direct_stream == DIRECT_WORKER)
        srv->dq_heads = calloc(srv->n_threads, sizeof(*srv->dq_heads));
    if (srv->dq_heads == NULL && srv->direct_stream == DIRECT_WORKER)
        srv->direct_stream = DIRECT_OFF;
    atomic_store(&srv->workers_run, 1);
    for (unsigned i = 0; i < srv->n_threads; i++) {
        worker_arg_t *wa = malloc(sizeof(*wa));
        if (wa != NULL) {
            wa->srv = srv;
            wa->daemon = srv->daemons[i];
            wa->wake_fd = srv->wake_fds ? srv->wake_fds[i] : -1;
            wa->wake_pending = srv->wake_pending ? &srv->wake_pending[i] : NULL;
            wa->idx = i;
        }
        if (wa == NULL || pthread_create(&srv->workers[i], NULL, worker_main, wa) != 0) {
            free(wa);
            PD_LOG_ERR("http: cannot start worker threads");
            st = PD_ERR_NOMEM;
            goto err_workers;
        }
        srv->n_workers++;
    }
    srv->watcher_run = 1;
    if (pthread_create(&srv->watcher, NULL, watcher_main, srv) != 0) {
        srv->watcher_run = 0;
        PD_LOG_ERR("http: cannot start the watcher thread");
        st = PD_ERR_NOMEM;
        goto err_workers;
    }
    srv->started = 1;
    PD_LOG_INFO("http: listening on %s://%s:%u%s (%u threads)", srv->tls_key ? "https" : "http",
                srv->host, (unsigned)srv->bound_port, srv->root_path ? srv->root_path : "",
                srv->n_threads);
    return PD_OK;

err_workers:
    stop_workers(srv);
err_daemons:
    stop_daemons(srv);
    free(srv->daemons);
    free(srv->workers);
    srv->daemons = NULL;
    srv->workers = NULL;
    return st;
}

uint16_t pd_http_server_port(const pd_http_server_t *srv)
{
    return srv && srv->started ? srv->bound_port : 0;
}

void pd_http_server_stream_counts(pd_http_server_t *srv, pd_http_stream_counts_t *counts_p)
{
    counts_p->direct = atomic_load(&srv->n_direct);
    counts_p->direct_partial = atomic_load(&srv->n_direct_partial);
    counts_p->loop = atomic_load(&srv->n_loop);
    counts_p->sends = atomic_load(&srv->n_sends);
}

int pd_http_server_draining(const pd_http_server_t *srv)
{
    return atomic_load(&((pd_http_server_t *)srv)->draining);
}

unsigned pd_http_server_inflight(const pd_http_server_t *srv)
{
    return atomic_load(&((pd_http_server_t *)srv)->inflight);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Cut every live request: streams and parked requests are woken and closed; requests
 * still waiting for an async answer get 503 (drain) or are dropped (stop). */
static void cut_all(pd_http_server_t *srv, int answer_waiting)
{
    snap_t sn = {0};
    snapshot(srv, &sn, 0);
    for (size_t i = 0; i < sn.n; i++) {
        pd_http_req_t *r = sn.reqs[i];
        int waiting;
        pthread_mutex_lock(&r->lock);
        waiting = r->state == REQ_WAITING && !r->gone;
        pthread_mutex_unlock(&r->lock);
        if (waiting && answer_waiting) {
            /* The owner keeps its reference; its later answer gets PD_ERR_EXISTS. */
            char *text = pd_http_error_json(503, NULL, "The server is shutting down.", NULL, NULL);
            struct MHD_Response *resp = text ? MHD_create_response_from_buffer(
                                                   strlen(text), text, MHD_RESPMEM_MUST_COPY)
                                             : NULL;
            cJSON_free(text);
            if (resp) {
                MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
                pthread_mutex_lock(&r->lock);
                pd_status_t st = post_locked(r, 503, resp); /* the owner's answer gets EXISTS */
                pthread_mutex_unlock(&r->lock);
                if (st == PD_OK)
                    continue;
            }
        }
        cut_request(r);
    }
    for (size_t i = 0; i < sn.n; i++)
        req_unref(sn.reqs[i]);
    free(sn.reqs);
}

pd_status_t pd_http_server_drain(pd_http_server_t *srv, uint64_t timeout_ms)
{
    if (srv == NULL || !srv->started)
        return PD_ERR_INVAL;
    atomic_store(&srv->draining, 1);
    PD_LOG_INFO("http: draining (%u in flight, up to %llu ms)", pd_http_server_inflight(srv),
                (unsigned long long)timeout_ms);
    uint64_t deadline = pd_now_ns() + timeout_ms * 1000000ull;
    while (pd_http_server_inflight(srv) > 0 && pd_now_ns() < deadline)
        sleep_ms(5);
    if (pd_http_server_inflight(srv) == 0)
        return PD_OK;
    PD_LOG_WARN("http: drain timed out with %u requests in flight; closing them",
                pd_http_server_inflight(srv));
    cut_all(srv, 1);
    deadline = pd_now_ns() + 1000000000ull;
    while (pd_http_server_inflight(srv) > 0 && pd_now_ns() < deadline)
        sleep_ms(5);
    return PD_ERR_TIMEOUT;
}

void pd_http_server_stop(pd_http_server_t *srv)
{
    if (srv == NULL || !srv->started)
        return;
    atomic_store(&srv->stopping, 1);
    /* MHD must not be stopped with suspended connections: wake them all; readers and
     * the access callback see `stopping` and fail the connection instead of parking. */
    uint64_t deadline = pd_now_ns() + 2000000000ull;
    do {
        cut_all(srv, 0);
        int any_suspended = 0;
        pthread_mutex_lock(&srv->lock);
        for (pd_http_req_t *r = srv->reqs; r; r = r->next)
            any_suspended |= r->watched;
        pthread_mutex_unlock(&srv->lock);
        if (!any_suspended)
            break;
        sleep_ms(2);
    } while (pd_now_ns() < deadline);
    pthread_mutex_lock(&srv->lock);
    srv->watcher_run = 0;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->lock);
    pthread_join(srv->watcher, NULL);
    /* Let the workers finish the connections just cut before the loops end. */
    deadline = pd_now_ns() + 1000000000ull;
    while (pd_http_server_inflight(srv) > 0 && pd_now_ns() < deadline)
        sleep_ms(2);
    stop_workers(srv);
    stop_daemons(srv);
    free(srv->daemons);
    free(srv->workers);
    srv->daemons = NULL;
    srv->workers = NULL;
    srv->started = 0;
}

void pd_http_server_destroy(pd_http_server_t *srv)
{
    if (srv == NULL)
        return;
    pd_http_server_stop(srv);
    for (size_t i = 0; i < srv->n_routes; i++) {
        free(srv->routes[i].method);
        free(srv->routes[i].path);
    }
    free(srv->routes);
    for (size_t i = 0; i < srv->n_mws; i++)
        if (srv->mws[i].dl)
            dlclose(srv->mws[i].dl);
    free(srv->mws);
    free(srv->host);
    free(srv->root_path);
    if (srv->api_key) {
        memset(srv->api_key, 0, srv->api_key_len);
        free(srv->api_key);
    }
    strv_free(srv->protected_prefixes);
    free(srv->tls_key);
    free(srv->tls_cert);
    free(srv->tls_ca);
    free(srv->tls_pass);
    free(srv->tls_prio);
    free(srv->wake_pending);
    free(srv->mhd_pending);
    /* streams still queued for a worker (written after the workers stopped) */
    for (unsigned i = 0; srv->dq_heads && i < srv->n_threads; i++) {
        for (pd_http_req_t *r = srv->dq_heads[i], *next; r; r = next) {
            next = r->dq_next;
            req_unref(r);
        }
    }
    free(srv->dq_heads);
    pthread_mutex_destroy(&srv->dq_lock);
    strv_free(srv->cors_origins);
    strv_free(srv->cors_methods);
    strv_free(srv->cors_headers);
    strv_free(srv->cors_expose);
    free(srv->cors_methods_joined);
    free(srv->cors_headers_joined);
    free(srv->cors_expose_joined);
    pthread_cond_destroy(&srv->cond);
    pthread_mutex_destroy(&srv->lock);
    free(srv);
}
