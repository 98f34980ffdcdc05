/*
 * pd_http.h - the HTTP server layer shared by the node servers and the proxy.
 *
 * Built on libmicrohttpd (epoll loops on our worker threads, suspend/resume) and cJSON.
 * The layer knows nothing about models or engines: the user registers handlers by
 * method + exact path and the layer does everything around them: TLS (optionally
 * mutual), CORS (Starlette's CORSMiddleware semantics), api-key checks on protected
 * path prefixes, root-path stripping, request ids, body/header size limits, loaded
 * middleware, request logging, HTTP metrics, streaming (SSE) from any thread,
 * asynchronous responses, and graceful drain.
 *
 * Order of processing for one request:
 *   read headers -> header size check (431) -> request id -> draining? (503)
 *   -> CORS preflight (answered here, never authenticated) -> TLS client-cert check
 *   (403) -> api key on protected prefixes (401) -> read body (413 past the limit)
 *   -> middleware chain -> route (404 / 405 with Allow) -> handler.
 * CORS headers and X-Request-Id are added to every response, errors included.
 *
 * Threads: handlers run on the layer's worker threads; they must not block for long.
 * A handler that needs another thread (the engine) to produce the answer returns
 * without responding: the connection is suspended until pd_http_respond_*() or
 * pd_http_stream_begin() is called for the request, from any thread.
 *
 * Every request gets exactly one response: the first pd_http_respond_*() /
 * pd_http_stream_begin() call wins, later ones return PD_ERR_EXISTS.
 */
#ifndef PD_HTTP_H
#define PD_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "pd_status.h"

typedef struct cJSON cJSON;
typedef struct pd_metrics_registry pd_metrics_registry_t;

typedef struct pd_http_server pd_http_server_t;
typedef struct pd_http_req pd_http_req_t;
typedef struct pd_http_stream pd_http_stream_t;

/* ---- configuration ---- */

/* TLS client-certificate policy (the values of vLLM's --ssl-cert-reqs, Python's ssl). */
typedef enum {
    PD_HTTP_CERT_NONE = 0,     /* no client certificate asked for */
    PD_HTTP_CERT_OPTIONAL = 1, /* asked for; if one is sent it must verify against the CA */
    PD_HTTP_CERT_REQUIRED = 2  /* must be sent and must verify, else 403 and close */
} pd_http_cert_reqs_t;

typedef struct pd_http_config {
    const char *host;      /* address to bind; NULL or "" = all interfaces (0.0.0.0) */
    uint16_t port;         /* 0 = ephemeral: read it back with pd_http_server_port() */
    const char *root_path; /* e.g. "/api": stripped from request paths; NULL = none */

    /* --api-key: "Authorization: Bearer <key>" required on paths starting with one of
     * protected_prefixes (NULL = { "/v1" }).  NULL api_key disables the check. */
    const char *api_key;
    const char *const *protected_prefixes; /* NULL-terminated list, or NULL */

    /* TLS: both key and cert files (PEM) switch HTTPS on. */
    const char *ssl_keyfile;
    const char *ssl_certfile;
    const char *ssl_ca_certs; /* PEM bundle used to verify client certificates */
    const char *ssl_keyfile_password;
    pd_http_cert_reqs_t ssl_cert_reqs;
    const char *ssl_ciphers; /* GnuTLS priority string; NULL = "NORMAL" */

    /* CORS, with Starlette's CORSMiddleware semantics.  NULL-terminated lists; a NULL
     * list means the vLLM default { "*" }.  With allow_credentials and "*" origins the
     * exact request origin is echoed (never "*" beside credentials). */
    const char *const *allowed_origins;
    const char *const *allowed_methods;
    const char *const *allowed_headers;
    const char *const *expose_headers; /* NULL = none */
    int allow_credentials;
    int cors_max_age; /* seconds, 0 = 600 */
    int disable_cors; /* 1 = no CORS processing at all */

    int enable_request_id_headers; /* echo X-Request-Id, or send the generated one */

    /* Limits (0 = default shown). */
    size_t max_body_bytes;       /* 16 MiB; larger bodies get 413 */
    size_t max_header_bytes;     /* 16 KiB of request line + headers; larger get 431 */
    unsigned max_connections;    /* 4096 */
    unsigned connection_timeout_s; /* 60: idle socket timeout (keep-alive idle time, slow
                                    * senders, stalled readers); parked requests and idle
                                    * streams are suspended and never time out here */
    int disable_keep_alive;      /* 1 = "Connection: close" on every response */
    unsigned n_threads;          /* worker threads (each its own epoll loop); 0 = min(cores, 4) */

    int disable_access_log; /* 1 = no per-request log line */
    int disable_direct_stream; /* 1 = stream bytes always leave through libmicrohttpd's
                                * loop (resume, send, suspend per batch) instead of being
                                * written to the socket by the producing thread while
                                * the stream is idle; env PD_HTTP_DIRECT_STREAM=0 does the
                                * same (benchmarks compare both in one binary) */
    int direct_stream_inline;    /* 1 = the producing thread sends an idle stream's event
                                  * itself (one sendmsg, no hand-off: least CPU in all,
                                  * but the producer pays the syscall; the node server
                                  * sets it: its engine thread sends while the GPU runs
                                  * the next step); 0 = it frames the event and the
                                  * connection's worker sends all that is queued, woken
                                  * at most once per batch; env PD_HTTP_DIRECT_STREAM=
                                  * inline / worker overrides it */
    unsigned direct_stream_min_gap_us; /* inline only, 1000: a stream's events closer
                                        * together than this go through the loop, which
                                        * coalesces a burst into one write */
    /* Optional registry: the server registers http_requests_total and
     * http_request_duration_seconds in it (labels method, handler, status class). */
    pd_metrics_registry_t *metrics;
} pd_http_config_t;

/* Fill cfg with the defaults above (all lists NULL = defaults). */
void pd_http_config_init(pd_http_config_t *cfg);

/* ---- server lifecycle ---- */

/* Create a server (nothing listens yet).  Copies everything it needs from cfg; reads
 * and checks the TLS files now.  Returns PD_ERR_INVAL for inconsistent settings,
 * PD_ERR_IO for unreadable TLS files.  *srv_p set only on success. */
pd_status_t pd_http_server_create(const pd_http_config_t *cfg, pd_http_server_t **srv_p);

/* Bind and start the worker threads.  PD_ERR_IO when the address cannot be bound
 * (logged with the cause).  Routes and middleware must be added before this. */
pd_status_t pd_http_server_start(pd_http_server_t *srv);

/* The bound TCP port (the ephemeral one when cfg.port was 0); 0 before start. */
uint16_t pd_http_server_port(const pd_http_server_t *srv);

/* Graceful shutdown: from now on new requests get 503 (error JSON), in-flight requests
 * (streams and async ones included) may finish for up to timeout_ms; then every stream
 * still open is closed (its on_close fires) and requests still waiting for an async
 * answer get 503.  Returns PD_OK when everything finished in time, PD_ERR_TIMEOUT when
 * some had to be cut.  Thread-safe; callable once the server started. */
pd_status_t pd_http_server_drain(pd_http_server_t *srv, uint64_t timeout_ms);

/* 1 once pd_http_server_drain() was called (for the caller's /health). */
int pd_http_server_draining(const pd_http_server_t *srv);

/* Number of requests received and not yet completed (streams included). */
unsigned pd_http_server_inflight(const pd_http_server_t *srv);

/* How stream events left (for tests and benchmarks): direct = framed by us and written
 * to the socket without libmicrohttpd (by the producer or the connection's worker);
 * sends = the send calls that took (several events queued together share one);
 * direct_partial = sends that left bytes for later (the socket was full); loop =
 * events queued for libmicrohttpd's loop (resume, send, suspend).  Any thread. */
typedef struct pd_http_stream_counts {
    uint64_t direct, direct_partial, loop, sends;
} pd_http_stream_counts_t;
void pd_http_server_stream_counts(pd_http_server_t *srv, pd_http_stream_counts_t *counts_p);

/* Stop listening, close every connection (open streams get on_close), join threads.
 * Safe to call when not started or already stopped. */
void pd_http_server_stop(pd_http_server_t *srv);

/* Stop (if needed) and free.  NULL is a no-op. */
void pd_http_server_destroy(pd_http_server_t *srv);

/* ---- routing ---- */

/* A handler answers with one of pd_http_respond_*() / pd_http_stream_begin(), now or
 * later from any thread.  Returning without an answer suspends the request until one
 * is given.  req stays valid until the response is fully sent or the client left (for
 * an async request: at least until the answer is posted). */
typedef void (*pd_http_handler_cb_t)(pd_http_req_t *req, void *user);

/* Register handler for method ("GET", "POST", ...) + exact path (after root_path is
 * stripped, e.g. "/v1/completions").  HEAD requests use the GET handler.  Unknown
 * paths get 404, known paths with another method 405 with an Allow header.
 * PD_ERR_EXISTS for a duplicate, PD_ERR_BUSY once started. */
pd_status_t pd_http_route(pd_http_server_t *srv, const char *method, const char *path,
                          pd_http_handler_cb_t handler, void *user);

/* Route flags for pd_http_route_ex(). */
#define PD_HTTP_ROUTE_DURING_DRAIN 0x1 /* still served while draining (/health, /metrics) */
#define PD_HTTP_ROUTE_NO_AUTH 0x2      /* never needs the api key, even under a prefix */

pd_status_t pd_http_route_ex(pd_http_server_t *srv, const char *method, const char *path,
                             pd_http_handler_cb_t handler, void *user, unsigned flags);

/* ---- middleware ---- */

/* Called for each request before routing (after CORS preflight, auth and body read).
 * Return 0 to go on; return an HTTP status >= 400 to reject: if the middleware did not
 * answer itself (pd_http_respond_error), the layer sends an error JSON with that
 * status.  It may add response headers with pd_http_req_add_header(). */
typedef int (*pd_http_middleware_cb_t)(pd_http_req_t *req, void *user);

/* Add a middleware function (run in the order added).  PD_ERR_BUSY once started. */
pd_status_t pd_http_add_middleware(pd_http_server_t *srv, pd_http_middleware_cb_t fn,
                                   void *user);

/* What a middleware loaded from a shared object receives as `user`: the request API as
 * function pointers, so the library needs no symbols from the executable (which is
 * usually not linked with -rdynamic).  Check version first; fields are only added. */
#define PD_HTTP_MW_API_VERSION 1
typedef struct pd_http_mw_api {
    unsigned version;
    const char *(*req_method)(const pd_http_req_t *req);
    const char *(*req_path)(const pd_http_req_t *req);
    const char *(*req_header)(const pd_http_req_t *req, const char *name);
    const char *(*req_query)(const pd_http_req_t *req, const char *name);
    const char *(*req_body)(const pd_http_req_t *req, size_t *len_p);
    const char *(*req_id)(const pd_http_req_t *req);
    const char *(*req_client_addr)(const pd_http_req_t *req);
    pd_status_t (*req_add_header)(pd_http_req_t *req, const char *name, const char *value);
    pd_status_t (*respond_error)(pd_http_req_t *req, unsigned status, const char *type,
                                 const char *message, const char *param, const char *code);
} pd_http_mw_api_t;

/* The table above (also handy for in-process middleware). */
const pd_http_mw_api_t *pd_http_mw_api(void);

/* Load "path/to/lib.so:symbol" with dlopen/dlsym and add it (user = pd_http_mw_api()).  A missing
 * file or symbol is logged with dlerror() and returns PD_ERR_NOT_FOUND; a spec without
 * ':' returns PD_ERR_INVAL.  The library stays loaded until the server is destroyed. */
pd_status_t pd_http_load_middleware(pd_http_server_t *srv, const char *spec);

/* ---- the request ---- */

const char *pd_http_req_method(const pd_http_req_t *req);
/* Path with root_path stripped and without the query string. */
const char *pd_http_req_path(const pd_http_req_t *req);
/* Header value (case-insensitive name) or NULL.  Header and query values live in the
 * connection's memory: call these from the handler or middleware (the worker thread)
 * and copy what another thread needs; method, path, body, id and client address are
 * owned by the request and stay valid as long as it does. */
const char *pd_http_req_header(const pd_http_req_t *req, const char *name);
/* Decoded query-string argument or NULL (same validity as pd_http_req_header). */
const char *pd_http_req_query(const pd_http_req_t *req, const char *name);
/* The whole body, NUL-terminated (the NUL is not counted in len); "" when none. */
const char *pd_http_req_body(const pd_http_req_t *req, size_t *len_p);
/* The request id: the client's X-Request-Id when present and sane (printable ASCII,
 * <= 128 bytes), else a generated 32-hex id.  Never NULL. */
const char *pd_http_req_id(const pd_http_req_t *req);
/* Client address as text ("127.0.0.1" or "::1"), and its port. */
const char *pd_http_req_client_addr(const pd_http_req_t *req);
uint16_t pd_http_req_client_port(const pd_http_req_t *req);
/* The server the request came to. */
pd_http_server_t *pd_http_req_server(const pd_http_req_t *req);
/* Per-request user pointer (e.g. for middleware to pass data to handlers). */
void pd_http_req_set_user(pd_http_req_t *req, void *user);
void *pd_http_req_get_user(const pd_http_req_t *req);

/* For a request answered asynchronously: cb fires once (on a layer thread) if the
 * client disconnects before the answer was posted, so the caller can abort the work.
 * The request stays valid; the later answer returns PD_ERR_CLOSED and frees it.
 * Set it before returning from the handler. */
typedef void (*pd_http_req_close_cb_t)(pd_http_req_t *req, void *user);
void pd_http_req_set_on_close(pd_http_req_t *req, pd_http_req_close_cb_t cb, void *user);

/* Add a header to whatever response this request will get (copied).  Callable from
 * middleware and handlers before the response is given.  PD_ERR_INVAL for names or
 * values containing CR/LF. */
pd_status_t pd_http_req_add_header(pd_http_req_t *req, const char *name, const char *value);

/* ---- responses (callable from any thread, exactly one per request) ---- */

/* JSON response.  json is either a cJSON tree (json_obj, borrowed: serialised now) or
 * text (json_text); pass exactly one, the other NULL. */
pd_status_t pd_http_respond_json(pd_http_req_t *req, unsigned status, const cJSON *json_obj,
                                 const char *json_text);

/* Error in vLLM/OpenAI shape: {"error": {"message", "type", "param", "code"}}.
 * type NULL = derived from status (pd_http_error_type()); param NULL = null;
 * code NULL = the numeric status. */
pd_status_t pd_http_respond_error(pd_http_req_t *req, unsigned status, const char *type,
                                  const char *message, const char *param, const char *code);

/* Any body with a content type (e.g. "text/plain; version=0.0.4" for /metrics).
 * data is copied. */
pd_status_t pd_http_respond_data(pd_http_req_t *req, unsigned status, const char *content_type,
                                 const void *data, size_t len);

/* The error type name used for a status: 400 "BadRequestError", 401
 * "AuthenticationError", 403 "PermissionDeniedError", 404 "NotFoundError", 405
 * "MethodNotAllowedError", 408 "RequestTimeoutError", 413 "RequestTooLargeError",
 * 429 "RateLimitError", 431 "RequestHeaderFieldsTooLargeError", 501
 * "NotImplementedError", 503 "ServiceUnavailableError", other 5xx
 * "InternalServerError", other 4xx "BadRequestError" (the openai client's classes). */
const char *pd_http_error_type(unsigned status);

/* Build the error JSON text (malloc'd) without sending it (for SSE error events and
 * proxies). */
char *pd_http_error_json(unsigned status, const char *type, const char *message,
                         const char *param, const char *code);

/* ---- streaming (chunked; SSE helpers) ---- */

/* Called once when the stream is finished for any reason: status PD_OK after
 * pd_http_stream_end() and a complete send, PD_ERR_CLOSED when the client went away
 * (or the server was stopped/drained) first.  Runs on a layer thread; it must not call
 * back into the stream except pd_http_stream_release(). */
typedef void (*pd_http_close_cb_t)(pd_http_stream_t *stream, pd_status_t status, void *user);

/* Start a 200 streaming response ("text/event-stream" for SSE; Cache-Control no-cache
 * is added then).  on_close (may be NULL) and user are kept for the stream.  The
 * returned stream handle is owned by the caller until pd_http_stream_release(); it is
 * valid after the connection closed (writes then return PD_ERR_CLOSED). */
pd_status_t pd_http_stream_begin(pd_http_req_t *req, const char *content_type,
                                 pd_http_close_cb_t on_close, void *user,
                                 pd_http_stream_t **stream_p);

/* Queue bytes (copied) and wake the connection.  Any thread.  PD_ERR_CLOSED once the
 * client left or the stream ended; PD_ERR_LIMIT when more than 64 MiB are queued and
 * unsent (a stalled client). */
pd_status_t pd_http_stream_write(pd_http_stream_t *stream, const void *data, size_t len);

/* SSE: "data: <json_text>\n\n" / "data: [DONE]\n\n". */
pd_status_t pd_http_sse_send(pd_http_stream_t *stream, const char *json_text);
pd_status_t pd_http_sse_done(pd_http_stream_t *stream);

/* Finish the response once queued data is sent.  Any thread.  PD_ERR_CLOSED when the
 * client already left. */
pd_status_t pd_http_stream_end(pd_http_stream_t *stream);

/* Bytes queued and not yet handed to the socket (for backpressure: a relay can stop
 * reading upstream while this is large).  Any thread. */
size_t pd_http_stream_queued(const pd_http_stream_t *stream);

/* 1 when the client is known to have gone away. */
int pd_http_stream_closed(const pd_http_stream_t *stream);

/* The request id of the stream's request (valid until release). */
const char *pd_http_stream_req_id(const pd_http_stream_t *stream);

/* Drop the caller's reference.  If the stream was neither ended nor closed it is ended
 * first.  The handle must not be used afterwards. */
void pd_http_stream_release(pd_http_stream_t *stream);

#endif /* PD_HTTP_H */
