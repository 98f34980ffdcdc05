/*
 * px_proxy.c - pdserve-proxy's front door and upstream relay.
 *
 * HTTP handlers (pd_http worker threads) parse and sanitise a request, build a px_req_t
 * and hand it to one of the relay threads (--relay-threads, chosen in turn when the
 * request is created).  Each relay thread owns a libcurl multi handle driven through
 * the socket API: libcurl tells it which sockets to watch (relay_sock_cb -> its epoll
 * set) and when its next timeout is due (relay_timer_cb); the thread waits in
 * epoll_wait and hands libcurl only the sockets that are ready, so a wake-up costs work
 * for those transfers, not for every transfer in flight.  An eventfd wakes it for new
 * requests, client disconnects and shutdown.  For a generation request the relay runs
 * the prefill leg (a copy with max_tokens 1, stream false and kv_transfer_params
 * {"do_remote_decode": true, ...}), takes the kv_transfer_params from its answer and
 * runs the decode leg (the original request plus those params), relaying the decode
 * answer: a JSON body as one answer, an SSE stream event by event as it arrives (whole
 * events only, never the whole stream; the complete events of one read go out in one
 * write).
 *
 * Invariants:
 * - Only the request's relay thread touches its curl handle, buffers and leg state;
 *   requests never move between relays (a relay's connections, easy handles and active
 *   list are its own).
 * - A px_req_t is reference-counted: one reference for the relay thread (dropped when it
 *   has answered and cleaned up) and one for the client-close callback (the parked
 *   request's on_close, then the stream's on_close, which fires exactly once).  A close
 *   callback only sets client_gone and wakes the relay; the relay closes the upstream
 *   connections (aborting the request on the nodes) and frees its side.
 * - Before any byte went to the client, failures are retried on another node (at most
 *   --max-retries times per leg) and then answered with the upstream status and error
 *   JSON; after the stream began, a failure is an SSE error event then [DONE].
 * - Every upstream transfer has CURLOPT_TIMEOUT_MS = what is left of --request-timeout.
 * - libcurl is never re-entered from its own callbacks: legs start and end (add/remove
 *   handle) only from the relay loop, after curl_multi_socket_action returned.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "pd_json.h"
#include "pd_log.h"
#include "px.h"

#define PX_MAX_RESP (64u << 20) /* buffered upstream answer bound (non-stream) */
#define PX_MAX_TRIED 20

typedef enum { LEG_PREFILL = 0, LEG_DECODE, LEG_FORWARD } leg_t;

typedef struct px_req px_req_t;
typedef struct px_relay px_relay_t;
struct px_req {
    atomic_int refs;
    px_proxy_t *px;
    px_relay_t *rl;            /* the relay thread that owns it (fixed at creation) */
    pd_http_req_t *hreq;       /* NULL once answered */
    pd_http_stream_t *stream;  /* once the client stream began */
    char id[48];
    char path[32];             /* upstream path */
    int get;                   /* forward with GET */
    leg_t leg;
    int is_stream, is_chat, split;
    cJSON *root;               /* sanitised request (generation) */
    char *fwd_body;            /* the body as received: forward legs, and decode-only generation
                                * requests from which nothing was stripped (sent verbatim
                                * instead of printing the tree again) */
    px_prefix_t prefix;
    px_node_t *node;           /* current leg's node */
    px_node_t *tried[PX_MAX_TRIED];
    unsigned n_tried;
    int retries;
    CURL *easy;
    struct curl_slist *hdrs;
    char *send_body;
    pd_buf_t resp;
    pd_buf_t sse;
    long status;
    char retry_after[24];      /* the upstream's Retry-After (relayed with its 429/503) */
    int started, saw_done;
    /* decode failover mid-stream (see try_failover) */
    int fo_ok;                 /* the request can be resumed elsewhere */
    int finished;              /* a finish_reason went out */
    int resumed;               /* legs started by failover so far */
    int64_t orig_max;          /* the client's max_tokens (-1: absent) */
    unsigned orig_msgs;        /* chat: number of client messages */
    char *orig_prompt;         /* completions: the client's prompt string */
    pd_buf_t gen;              /* text streamed to the client so far */
    int64_t gen_events;        /* content events streamed (about one per token) */
    pd_buf_t out;              /* events kept from one read, written at once */
    atomic_int client_gone;
    uint64_t t_start;
    px_req_t *next, *prev;     /* relay's active list / submit queue */
};

enum { E_BAD_REQUEST, E_OVERLOAD, E_NO_NODE, E_CONNECT, E_TIMEOUT, E_UP4XX, E_UP5XX, E_MIDSTREAM,
       E_CLIENT_GONE, E_PREFILL_FALLBACK, E_N };
static const char *err_kind[E_N] = {"bad_request", "overload", "no_node", "connect", "timeout",
                                    "upstream_4xx", "upstream_5xx", "midstream", "client_disconnect",
                                    "prefill_fallback"};

/* One relay thread: its own libcurl multi handle driven through the socket API
 * (curl_multi_socket_action on the sockets epoll reports, plus libcurl's timer), so a
 * wake-up costs work for the sockets that are ready, not for every transfer; an
 * eventfd wakes it for new requests, client disconnects and shutdown. */
struct px_relay {
    px_proxy_t *px;
    unsigned idx;
    CURLM *multi;
    int epfd, wakefd;
    uint64_t timer_at_ns;      /* libcurl's timeout is due then; 0: none */
    pthread_t thread;
    int started;
    pthread_mutex_t qlock;
    px_req_t *q_head, *q_tail;
    atomic_int gone_pending;
    px_req_t *active;
    CURL *spare[64];           /* finished easy handles, reset, for the next legs */
    unsigned n_spare;
};

struct px_proxy {
    const px_args_t *args;
    px_pools_t pools;
    px_register_t *reg;
    pd_http_server_t *srv;
    pd_metrics_registry_t *metrics;
    char *auth_header;
    uint64_t timeout_ns;
    int max_retries;
    int64_t min_prompt_tokens;
    int64_t max_concurrent;
    int stream_first;
    atomic_int inflight;

    px_relay_t *relays;
    unsigned n_relays;
    atomic_uint next_relay;
    atomic_int relay_run;

    pthread_t health;
    int health_started;
    pthread_mutex_t hlock;
    pthread_cond_t hcond;
    int health_run;

    pd_metric_series_t *m_req[4], *m_err[E_N], *m_retries, *m_lat[3], *m_split[2], *m_inflight, *m_failover;
    pd_metric_t *m_pool;
};

/* ---- request objects ---- */

static void req_unref(px_req_t *r)
{
    if (atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    cJSON_Delete(r->root);
    free(r->fwd_body);
    free(r->send_body);
    pd_buf_cleanup(&r->resp);
    pd_buf_cleanup(&r->sse);
    pd_buf_cleanup(&r->gen);
    pd_buf_cleanup(&r->out);
    free(r->orig_prompt);
    free(r);
}

static void wake(px_relay_t *rl)
{
    uint64_t one = 1;
    if (write(rl->wakefd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is full, a wake-up is pending anyway */
    }
}

static void on_req_close(pd_http_req_t *hreq, void *user)
{
    px_req_t *r = user;
    (void)hreq;
    px_relay_t *rl = r->rl;
    atomic_store(&r->client_gone, 1);
    atomic_fetch_add(&rl->gone_pending, 1);
    wake(rl);
    req_unref(r);
}

static void on_stream_close(pd_http_stream_t *s, pd_status_t st, void *user)
{
    px_req_t *r = user;
    px_relay_t *rl = r->rl;
    (void)s;
    if (st != PD_OK) {
        atomic_store(&r->client_gone, 1);
        atomic_fetch_add(&rl->gone_pending, 1);
        wake(rl);
    }
    req_unref(r);
}

/* After a respond_*(): the parked request's close callback can no longer fire when the
 * answer was accepted, so its reference is ours to drop. */
static void answered(px_req_t *r, pd_status_t st)
{
    r->hreq = NULL;
    if (st == PD_OK)
        req_unref(r);
}

static void count_err(px_proxy_t *px, int kind) { pd_metric_inc(px->m_err[kind]); }

static void answer_error(px_req_t *r, unsigned status, const char *message, const char *code)
{
    if (r->hreq == NULL)
        return;
    PD_LOG_REQ(WARN, r->id, "proxy: answering %u: %s", status, message);
    answered(r, pd_http_respond_error(r->hreq, status, NULL, message, NULL, code));
}

/* Forward an upstream answer (status + body) to the client; non-JSON error bodies are
 * wrapped into error JSON so the client always gets the OpenAI error shape. */
static void answer_upstream(px_req_t *r, long status, const char *ctype)
{
    if (r->hreq == NULL)
        return;
    /* an overloaded node's hint reaches the client (the openai client honours it) */
    if ((status == 429 || status == 503) && r->retry_after[0])
        pd_http_req_add_header(r->hreq, "Retry-After", r->retry_after);
    const char *body = r->resp.data ? r->resp.data : "";
    int json = 0;
    if (r->resp.len > 0) {
        cJSON *t = cJSON_ParseWithLength(body, r->resp.len);
        json = t != NULL;
        cJSON_Delete(t);
    }
    if (status < 100 || status > 599)
        status = 502;
    if (json) {
        answered(r, pd_http_respond_json(r->hreq, (unsigned)status, NULL, body));
    } else if (status >= 400) {
        char msg[400];
        snprintf(msg, sizeof(msg), "upstream node answered %ld: %.200s", status, body);
        answer_error(r, (unsigned)status, msg, NULL);
    } else {
        answered(r, pd_http_respond_data(r->hreq, (unsigned)status,
                                         ctype ? ctype : "application/octet-stream", body, r->resp.len));
    }
}

/* The relay is done with r: release the stream, the concurrency slot and its ref. */
static void req_finish(px_req_t *r)
{
    px_proxy_t *px = r->px;
    px_relay_t *rl = r->rl;
    if (r->hreq) /* the client left before an answer: a late answer frees the request */
        answered(r, pd_http_respond_error(r->hreq, 499, NULL, "client closed request", NULL, NULL));
    if (r->stream) {
        pd_http_stream_release(r->stream);
        r->stream = NULL;
    }
    if (r->prev)
        r->prev->next = r->next;
    else if (rl->active == r)
        rl->active = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->next = r->prev = NULL;
    atomic_fetch_sub(&px->inflight, 1);
    req_unref(r);
}

static void easy_cleanup(px_req_t *r)
{
    if (r->easy) {
        px_relay_t *rl = r->rl;
        curl_multi_remove_handle(rl->multi, r->easy);
        /* kept for the next leg: an easy handle is a few allocations (and a large
         * zeroed struct) that every leg would otherwise redo */
        if (rl->n_spare < PD_ARRAY_SIZE(rl->spare)) {
            curl_easy_reset(r->easy);
            rl->spare[rl->n_spare++] = r->easy;
        } else {
            curl_easy_cleanup(r->easy);
        }
        r->easy = NULL;
    }
    curl_slist_free_all(r->hdrs);
    r->hdrs = NULL;
    free(r->send_body);
    r->send_body = NULL;
    if (r->node) {
        px_node_done(r->node);
        r->node = NULL;
    }
}

/* ---- SSE relay ---- */

static void leg_start(px_req_t *r);

static int stream_out(px_req_t *r, const char *data, size_t len)
{
    if (!r->started) {
        if (r->hreq == NULL)
            return -1;
        pd_http_stream_t *s;
        pd_status_t st = pd_http_stream_begin(r->hreq, "text/event-stream", on_stream_close, r, &s);
        if (st != PD_OK) {
            atomic_store(&r->client_gone, 1);
            return -1;
        }
        /* the close reference moves to the stream's on_close, which always fires */
        r->hreq = NULL;
        r->stream = s;
        r->started = 1;
    }
    if (len && pd_http_stream_write(r->stream, data, len) != PD_OK) {
        /* the client left (or stopped reading 64 MiB ago) before its close callback
         * ran: the same as client_gone, so the leg ends as a disconnect, never resumed
         * elsewhere for nobody */
        atomic_store(&r->client_gone, 1);
        return -1;
    }
    return 0;
}

/* Look at one event (for failover): note its text and finish_reason; return 0 to drop
 * it (a resumed chat leg's role-only opening chunk). */
static int inspect_event(px_req_t *r, const char *ev, size_t len)
{
    if (len < 6 || strncmp(ev, "data: ", 6) != 0)
        return 1;
    if (len >= 12 && strncmp(ev, "data: [DONE]", 12) == 0) {
        r->saw_done = 1;
        return 1;
    }
    /* the scanner first (no allocation); a full parse only for what it leaves */
    px_sse_event_t se;
    if (px_sse_scan(ev + 6, len - 6, r->is_chat, &se) == 0) {
        size_t before = r->gen.len;
        int ok = 1;
        if (se.text && se.text_len) {
            if (se.text_escaped)
                ok = px_sse_unescape(se.text, se.text_len, &r->gen) == 0;
            else
                ok = pd_buf_append(&r->gen, se.text, se.text_len) == PD_OK;
        }
        if (ok) {
            int has_text = r->gen.len > before;
            if (has_text)
                r->gen_events++;
            if (se.finished)
                r->finished = 1;
            return !(se.has_choice && r->resumed && r->is_chat && !has_text && !se.finished);
        }
    }
    cJSON *j = cJSON_ParseWithLength(ev + 6, len - 6);
    if (j == NULL)
        return 1;
    int keep = 1;
    const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    if (c0) {
        const cJSON *t = r->is_chat ? cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c0, "delta"),
                                                                      "content")
                                    : cJSON_GetObjectItemCaseSensitive(c0, "text");
        const cJSON *fr = cJSON_GetObjectItemCaseSensitive(c0, "finish_reason");
        int has_text = cJSON_IsString(t) && t->valuestring[0];
        if (has_text) {
            pd_buf_puts(&r->gen, t->valuestring);
            r->gen_events++;
        }
        if (cJSON_IsString(fr))
            r->finished = 1;
        if (r->resumed && r->is_chat && !has_text && !cJSON_IsString(fr))
            keep = 0;
    }
    cJSON_Delete(j);
    return keep;
}

/* Append bytes; send every complete event ("...\n\n") now, keep the tail. */
static int relay_sse(px_req_t *r, const char *p, size_t n)
{
    if (pd_buf_append(&r->sse, p, n) != PD_OK)
        return -1;
    size_t end = 0;
    for (size_t i = r->sse.len; i >= 2; i--)
        if (r->sse.data[i - 1] == '\n' && r->sse.data[i - 2] == '\n') {
            end = i;
            break;
        }
    if (end == 0 || r->sse.data == NULL)
        return r->sse.len > PX_MAX_RESP ? -1 : 0;
    int rc;
    if (r->fo_ok) {
        pd_buf_reset(&r->out);
        for (size_t at = 0; at < end;) {
            const char *ev = r->sse.data + at;
            const char *stop = memmem(ev, end - at, "\n\n", 2);
            if (stop == NULL)
                break; /* cannot happen: end is just past a blank line */
            size_t evlen = (size_t)(stop - ev) + 2;
            if (inspect_event(r, ev, evlen - 2))
                pd_buf_append(&r->out, ev, evlen);
            at += evlen;
        }
        rc = r->out.len || !r->started ? stream_out(r, r->out.data ? r->out.data : "", r->out.len) : 0;
    } else {
        if (memmem(r->sse.data, end, "data: [DONE]", 12))
            r->saw_done = 1;
        rc = stream_out(r, r->sse.data, end);
    }
    if (rc != 0)
        return -1;
    memmove(r->sse.data, r->sse.data + end, r->sse.len - end);
    r->sse.len -= end;
    r->sse.data[r->sse.len] = '\0';
    return 0;
}

/* Rewrite r->root to continue after the text already sent (r->gen, r->gen_events
 * content events): see try_failover.  -1 when no tokens are left to generate. */
static int resume_body(px_req_t *r)
{
    cJSON *root = r->root;
    if (r->orig_max > 0) {
        int64_t left = r->orig_max - r->gen_events;
        if (left < 1)
            return -1;
        if (cJSON_HasObjectItem(root, "max_tokens"))
            cJSON_ReplaceItemInObjectCaseSensitive(root, "max_tokens", cJSON_CreateNumber((double)left));
        if (cJSON_HasObjectItem(root, "max_completion_tokens"))
            cJSON_ReplaceItemInObjectCaseSensitive(root, "max_completion_tokens", cJSON_CreateNumber((double)left));
    }
    const char *gen = r->gen.data ? r->gen.data : "";
    if (r->is_chat) {
        cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
        while (cJSON_GetArraySize(msgs) > (int)r->orig_msgs)
            cJSON_DeleteItemFromArray(msgs, cJSON_GetArraySize(msgs) - 1);
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", gen);
        cJSON_AddItemToArray(msgs, m);
        cJSON_DeleteItemFromObjectCaseSensitive(root, "continue_final_message");
        cJSON_DeleteItemFromObjectCaseSensitive(root, "add_generation_prompt");
        cJSON_AddTrueToObject(root, "continue_final_message");
        cJSON_AddFalseToObject(root, "add_generation_prompt");
    } else {
        pd_buf_t p = {0};
        pd_buf_puts(&p, r->orig_prompt);
        pd_buf_puts(&p, gen);
        cJSON_ReplaceItemInObjectCaseSensitive(root, "prompt", cJSON_CreateString(p.data ? p.data : ""));
        pd_buf_cleanup(&p);
    }
    return 0;
}

/* The decode node died mid-stream: resume on another decode node from what the client
 * already has.  Completions: prompt = the client's prompt + the text streamed so far;
 * chat: the messages + an assistant message with that text, continue_final_message
 * true and add_generation_prompt false.  max_tokens (and max_completion_tokens) shrink
 * by the content events already sent (about one per token).  1 when a leg started. */
static int try_failover(px_req_t *r)
{
    px_proxy_t *px = r->px;
    if (!r->fo_ok || r->finished || r->saw_done || r->retries >= px->max_retries ||
        atomic_load(&r->client_gone))
        return 0;
    px_node_t *probe = px_pools_pick(&px->pools, PX_ROLE_DECODE, NULL, r->tried, r->n_tried);
    if (probe == NULL)
        return 0;
    px_node_done(probe);
    atomic_fetch_sub(&probe->requests, 1);
    cJSON_DeleteItemFromObjectCaseSensitive(r->root, "kv_transfer_params");
    if (resume_body(r) != 0)
        return 0;
    r->retries++;
    r->resumed++;
    pd_metric_inc(px->m_failover);
    PD_LOG_REQ(WARN, r->id, "proxy: resuming the stream on another decode node after %lld content events",
               (long long)r->gen_events);
    r->leg = LEG_DECODE;
    leg_start(r);
    return 1;
}

/* libcurl's header callback: keeps the upstream's Retry-After (delta-seconds or an
 * HTTP date: printable ASCII only, so nothing can smuggle a header through). */
static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
    px_req_t *r = ud;
    size_t len = size * n;
    static const char key[] = "retry-after:";
    const size_t kl = sizeof(key) - 1;
    if (len <= kl || strncasecmp(buf, key, kl) != 0)
        return len;
    const char *v = buf + kl;
    size_t vl = len - kl;
    while (vl > 0 && (*v == ' ' || *v == '\t'))
        v++, vl--;
    while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;
    if (vl == 0 || vl >= sizeof(r->retry_after))
        return len;
    for (size_t i = 0; i < vl; i++)
        if (v[i] < 0x20 || v[i] > 0x7e)
            return len;
    memcpy(r->retry_after, v, vl);
    r->retry_after[vl] = '\0';
    return len;
}

static size_t on_data(char *p, size_t sz, size_t nm, void *user)
{
    px_req_t *r = user;
    size_t n = sz * nm;
    if (atomic_load(&r->client_gone))
        return 0; /* aborts the transfer: the node sees the connection close */
    if (r->status == 0)
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->leg == LEG_DECODE && r->is_stream && r->status == 200)
        return relay_sse(r, p, n) == 0 ? n : 0;
    if (r->resp.len + n > PX_MAX_RESP || pd_buf_append(&r->resp, p, n) != PD_OK)
        return 0;
    return n;
}

/* ---- legs ---- */


static char *prefill_body(const px_req_t *r)
{
    cJSON *b = cJSON_Duplicate(r->root, 1);
    if (b == NULL)
        return NULL;
    cJSON_DeleteItemFromObjectCaseSensitive(b, "max_tokens");
    cJSON_AddNumberToObject(b, "max_tokens", 1);
    if (r->is_chat || cJSON_HasObjectItem(b, "max_completion_tokens")) {
        cJSON_DeleteItemFromObjectCaseSensitive(b, "max_completion_tokens");
        cJSON_AddNumberToObject(b, "max_completion_tokens", 1);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(b, "stream");
    cJSON_AddFalseToObject(b, "stream");
    cJSON_DeleteItemFromObjectCaseSensitive(b, "stream_options");
    cJSON_DeleteItemFromObjectCaseSensitive(b, "min_tokens");
    cJSON *k = cJSON_CreateObject();
    cJSON_AddTrueToObject(k, "do_remote_decode");
    cJSON_AddFalseToObject(k, "do_remote_prefill");
    cJSON_AddNullToObject(k, "remote_engine_id");
    cJSON_AddNullToObject(k, "remote_block_ids");
    cJSON_AddNullToObject(k, "remote_host");
    cJSON_AddNullToObject(k, "remote_port");
    cJSON_AddItemToObject(b, "kv_transfer_params", k);
    char *s = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    return s;
}

static void leg_fail_no_node(px_req_t *r, px_role_t role)
{
    char msg[160];
    snprintf(msg, sizeof(msg), "no healthy %s node is available", px_role_name(role));
    count_err(r->px, E_NO_NODE);
    answer_error(r, 503, msg, NULL);
    req_finish(r);
}

static void leg_start(px_req_t *r)
{
    px_proxy_t *px = r->px;
    px_role_t role = r->leg == LEG_PREFILL ? PX_ROLE_PREFILL : PX_ROLE_DECODE;
    if (atomic_load(&r->client_gone)) {
        count_err(px, E_CLIENT_GONE);
        req_finish(r);
        return;
    }
    px_node_t *n = px_pools_pick(&px->pools, role, &r->prefix, r->tried, r->n_tried);
    if (n == NULL && r->leg == LEG_PREFILL && r->n_tried == 0) {
        /* the prefill pool emptied since admission: decode prefills locally */
        PD_LOG_REQ(INFO, r->id, "proxy: no healthy prefill node; sending the request straight to decode");
        r->leg = LEG_DECODE;
        role = PX_ROLE_DECODE;
        n = px_pools_pick(&px->pools, role, &r->prefix, r->tried, r->n_tried);
    }
    if (n == NULL) {
        leg_fail_no_node(r, role);
        return;
    }
    r->node = n;
    if (r->n_tried < PX_MAX_TRIED)
        r->tried[r->n_tried++] = n;
    r->status = 0;
    r->retry_after[0] = '\0';
    pd_buf_reset(&r->resp);
    pd_buf_reset(&r->sse);
    const char *post = NULL;
    if (r->leg == LEG_PREFILL)
        post = r->send_body = prefill_body(r);
    else if (r->leg == LEG_DECODE && r->fwd_body && !r->split && !r->resumed)
        post = r->fwd_body; /* unchanged since it arrived */
    else if (r->leg == LEG_DECODE)
        post = r->send_body = cJSON_PrintUnformatted(r->root);
    else if (!r->get)
        post = r->fwd_body ? r->fwd_body : "";
    char url[PX_ADDR_MAX + 48], hid[80];
    snprintf(url, sizeof(url), "%s%s", n->url, r->path);
    snprintf(hid, sizeof(hid), "X-Request-Id: %s", r->id);
    r->easy = r->rl->n_spare ? r->rl->spare[--r->rl->n_spare] : curl_easy_init();
    if (r->easy == NULL || (!r->get && post == NULL)) {
        easy_cleanup(r);
        answer_error(r, 500, "out of memory", NULL);
        req_finish(r);
        return;
    }
    r->hdrs = curl_slist_append(r->hdrs, "Content-Type: application/json");
    r->hdrs = curl_slist_append(r->hdrs, hid);
    r->hdrs = curl_slist_append(r->hdrs, "Expect:");
    if (px->auth_header)
        r->hdrs = curl_slist_append(r->hdrs, px->auth_header);
    uint64_t now = pd_now_ns(), spent = now - r->t_start;
    long left_ms = spent >= px->timeout_ns ? 1 : (long)((px->timeout_ns - spent) / 1000000) + 1;
    curl_easy_setopt(r->easy, CURLOPT_URL, url);
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->hdrs);
    if (!r->get) {
        curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, post);
        curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(post));
    }
    curl_easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(r->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(r->easy, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(r->easy, CURLOPT_PRIVATE, r);
    curl_easy_setopt(r->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS, left_ms);
    curl_easy_setopt(r->easy, CURLOPT_CONNECTTIMEOUT_MS, PD_MIN(left_ms, 5000L));
    curl_easy_setopt(r->easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYPEER, 0L); /* nodes on a private network */
    curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYHOST, 0L);
    PD_LOG_REQ(DEBUG, r->id, "proxy: %s leg -> %s%s",
               r->leg == LEG_PREFILL ? "prefill" : r->leg == LEG_DECODE ? "decode" : "forward", n->url, r->path);
    if (curl_multi_add_handle(r->rl->multi, r->easy) != CURLM_OK) {
        easy_cleanup(r);
        answer_error(r, 500, "cannot start the upstream request", NULL);
        req_finish(r);
    }
}

/* Retry this leg on another node if the budget allows; 1 when a retry started. */
static int leg_retry(px_req_t *r)
{
    if (r->retries >= r->px->max_retries || atomic_load(&r->client_gone))
        return 0;
    px_role_t role = r->leg == LEG_PREFILL ? PX_ROLE_PREFILL : PX_ROLE_DECODE;
    px_node_t *probe = px_pools_pick(&r->px->pools, role, NULL, r->tried, r->n_tried);
    if (probe == NULL)
        return 0;
    px_node_done(probe);
    atomic_fetch_sub(&probe->requests, 1);
    r->retries++;
    pd_metric_inc(r->px->m_retries);
    leg_start(r);
    return 1;
}

/* --stream-first-token: send the prefill node's token to the client now (built as the
 * decode node would: a role chunk for chat, then the token), then run the decode leg as
 * a continuation after that token (resume_body: prompt + token, or an assistant message
 * with continue_final_message), keeping the prefill's kv_transfer_params, so the text
 * stays consistent whatever the sampling.  If the token ended the request (EOS, or
 * max_tokens 1) the stream ends here.  1 when it took over the request. */
static int first_token_out(px_req_t *r, const cJSON *ans)
{
    const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(ans, "choices"), 0);
    const cJSON *t = r->is_chat ? cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c0, "message"),
                                                                  "content")
                                : cJSON_GetObjectItemCaseSensitive(c0, "text");
    const cJSON *fr = cJSON_GetObjectItemCaseSensitive(c0, "finish_reason");
    if (!cJSON_IsString(t))
        return 0;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(ans, "model");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(ans, "id");
    int last = (cJSON_IsString(fr) && strcmp(fr->valuestring, "length") != 0) || r->orig_max == 1;
    pd_buf_t out = {0};
    for (int k = r->is_chat ? 0 : 1; k < 3; k++) {
        if (k == 2 && !last)
            break;
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddStringToObject(ch, "id", cJSON_IsString(id) ? id->valuestring : r->id);
        cJSON_AddStringToObject(ch, "object", r->is_chat ? "chat.completion.chunk" : "text_completion");
        cJSON_AddNumberToObject(ch, "created", (double)pd_unix_time());
        cJSON_AddStringToObject(ch, "model", cJSON_IsString(model) ? model->valuestring : "");
        cJSON *arr = cJSON_AddArrayToObject(ch, "choices");
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "index", 0);
        const char *txt = k == 1 ? t->valuestring : "";
        if (r->is_chat) {
            cJSON *d = cJSON_AddObjectToObject(c, "delta");
            if (k == 0)
                cJSON_AddStringToObject(d, "role", "assistant");
            cJSON_AddStringToObject(d, "content", txt);
        } else {
            cJSON_AddStringToObject(c, "text", txt);
        }
        cJSON_AddNullToObject(c, "logprobs");
        if (k == 2)
            cJSON_AddStringToObject(c, "finish_reason", cJSON_IsString(fr) ? fr->valuestring : "length");
        else
            cJSON_AddNullToObject(c, "finish_reason");
        cJSON_AddItemToArray(arr, c);
        char *js = cJSON_PrintUnformatted(ch);
        cJSON_Delete(ch);
        if (js)
            pd_buf_printf(&out, "data: %s\n\n", js);
        free(js);
    }
    if (last)
        pd_buf_puts(&out, "data: [DONE]\n\n");
    int rc = stream_out(r, out.data ? out.data : "", out.len);
    pd_buf_cleanup(&out);
    if (rc != 0) { /* the client left */
        req_finish(r);
        return 1;
    }
    pd_buf_puts(&r->gen, t->valuestring);
    r->gen_events = 1;
    r->resumed = 1; /* drop the decode leg's role-only chunk */
    if (last) {
        r->saw_done = 1;
        pd_http_stream_end(r->stream);
        req_finish(r);
        return 1;
    }
    if (resume_body(r) != 0) {
        pd_http_sse_done(r->stream);
        pd_http_stream_end(r->stream);
        req_finish(r);
        return 1;
    }
    leg_start(r);
    return 1;
}

static void leg_done(px_req_t *r, CURLcode rc)
{
    px_proxy_t *px = r->px;
    long status = 0;
    double ttfb = 0;
    char ctype[128] = "";
    char *ct = NULL;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(r->easy, CURLINFO_STARTTRANSFER_TIME, &ttfb);
    if (curl_easy_getinfo(r->easy, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct)
        snprintf(ctype, sizeof(ctype), "%s", ct);
    px_node_t *node = r->node;
    const char *nurl = node ? node->url : "?";
    char node_url[PX_ADDR_MAX + 8];
    snprintf(node_url, sizeof(node_url), "%s", nurl);
    if (rc == CURLE_OK && ttfb > 0)
        pd_metric_observe(px->m_lat[r->leg], ttfb);
    int client_gone = atomic_load(&r->client_gone);
    /* a client that closes right after [DONE] (before the upstream's last chunk was
     * read) had the whole answer: not a disconnect */
    int had_all = client_gone && r->saw_done;
    int transport = rc != CURLE_OK;
    if (node && !client_gone && (transport || status >= 500)) {
        atomic_fetch_add(&node->failures, 1);
        if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST)
            atomic_store(&node->healthy, 0); /* the health checker revives it */
    }
    if (client_gone && !had_all)
        count_err(px, E_CLIENT_GONE); /* before the connection closes: the node sees that */
    long up_status = r->status;
    easy_cleanup(r);

    if (client_gone) {
        if (!had_all)
            PD_LOG_REQ(INFO, r->id, "proxy: client left; upstream request to %s closed", node_url);
        req_finish(r);
        return;
    }
    if (r->started) {
        /* output already went out: finish the stream, resume it elsewhere, or end it
         * with an error event */
        if (!(rc == CURLE_OK && r->saw_done) && try_failover(r))
            return;
        if (rc == CURLE_OK && r->saw_done) {
            if (r->sse.len)
                stream_out(r, r->sse.data, r->sse.len);
            pd_http_stream_end(r->stream);
        } else {
            char msg[600];
            count_err(px, E_MIDSTREAM);
            if (transport)
                snprintf(msg, sizeof(msg), "decode node %s failed mid-stream: %s", node_url, curl_easy_strerror(rc));
            else if (up_status != 200)
                snprintf(msg, sizeof(msg), "decode node %s answered %ld mid-stream: %.300s", node_url, up_status,
                         r->resp.data ? r->resp.data : "");
            else
                snprintf(msg, sizeof(msg), "decode node %s failed mid-stream: the stream ended without [DONE]",
                         node_url);
            PD_LOG_REQ(WARN, r->id, "proxy: %s", msg);
            char *ej = pd_http_error_json(502, NULL, msg, NULL, NULL);
            if (ej)
                pd_http_sse_send(r->stream, ej);
            free(ej);
            pd_http_sse_done(r->stream);
            pd_http_stream_end(r->stream);
        }
        req_finish(r);
        return;
    }
    if (transport || status >= 500) {
        if (leg_retry(r))
            return;
        /* every prefill node tried is overloaded (a full queue says so with Retry-After):
         * moving its work onto the decode nodes would overload them too; the client
         * gets the 503 and the hint instead */
        int overloaded = !transport && (status == 503 || status == 429) && r->retry_after[0];
        if (r->leg == LEG_PREFILL && !overloaded) {
            /* no prefill node could do it: the decode node prefills locally (counted,
             * logged; the answer is the same, only slower) */
            count_err(px, E_PREFILL_FALLBACK);
            PD_LOG_REQ(WARN, r->id, "proxy: prefill failed on every node tried (last %s: %s); decode prefills",
                       node_url, transport ? curl_easy_strerror(rc) : "5xx");
            cJSON_DeleteItemFromObjectCaseSensitive(r->root, "kv_transfer_params");
            r->leg = LEG_DECODE;
            r->retries = 0;
            r->n_tried = 0;
            leg_start(r);
            return;
        }
        if (!transport) {
            count_err(px, E_UP5XX);
            answer_upstream(r, status, ctype);
        } else {
            char msg[600];
            int to = rc == CURLE_OPERATION_TIMEDOUT;
            count_err(px, to ? E_TIMEOUT : E_CONNECT);
            snprintf(msg, sizeof(msg), "%s node %s: %s", r->leg == LEG_PREFILL ? "prefill" : "decode",
                     node_url, curl_easy_strerror(rc));
            answer_error(r, to ? 504 : rc == CURLE_COULDNT_CONNECT ? 503 : 502, msg, NULL);
        }
        req_finish(r);
        return;
    }
    if (status >= 400) {
        count_err(px, E_UP4XX);
        answer_upstream(r, status, ctype);
        req_finish(r);
        return;
    }
    if (r->leg == LEG_PREFILL) {
        cJSON *ans = cJSON_ParseWithLength(r->resp.data ? r->resp.data : "", r->resp.len);
        cJSON *kvp = ans ? cJSON_GetObjectItemCaseSensitive(ans, "kv_transfer_params") : NULL;
        cJSON_DeleteItemFromObjectCaseSensitive(r->root, "kv_transfer_params");
        if (cJSON_IsObject(kvp)) {
            cJSON_AddItemToObject(r->root, "kv_transfer_params", cJSON_Duplicate(kvp, 1));
        } else {
            PD_LOG_REQ(WARN, r->id, "proxy: prefill node %s gave no kv_transfer_params; decode recomputes",
                       node_url);
        }
        r->leg = LEG_DECODE;
        r->retries = 0;
        r->n_tried = 0;
        if (px->stream_first && r->is_stream && r->fo_ok && first_token_out(r, ans)) {
            cJSON_Delete(ans);
            return;
        }
        cJSON_Delete(ans);
        leg_start(r);
        return;
    }
    if (r->leg == LEG_DECODE && r->is_stream && status == 200) {
        if (r->sse.len == 0 && !r->saw_done) {
            count_err(px, E_UP5XX);
            answer_error(r, 502, "decode node sent an empty stream", NULL);
        } else if (stream_out(r, r->sse.data, r->sse.len) == 0) {
            pd_http_stream_end(r->stream);
        }
        req_finish(r);
        return;
    }
    answer_upstream(r, status, ctype);
    req_finish(r);
}

/* ---- relay threads ---- */

/* libcurl's socket callback: keep the epoll set equal to what libcurl waits for.
 * sockp (curl_multi_assign) marks a socket already in the set, so a new interest is one
 * epoll_ctl: ADD for a socket libcurl starts watching (again: it forgets sockp when it
 * stops), MOD for a change. */
static int relay_sock_cb(CURL *e, curl_socket_t fd, int what, void *user, void *sockp)
{
    px_relay_t *rl = user;
    (void)e;
    if (what == CURL_POLL_REMOVE) {
        /* ENOENT/EBADF: libcurl closed it first; epoll forgot it with the close */
        epoll_ctl(rl->epfd, EPOLL_CTL_DEL, fd, NULL);
        return 0;
    }
    struct epoll_event ev = {.events = 0, .data.fd = fd};
    if (what & CURL_POLL_IN)
        ev.events |= EPOLLIN;
    if (what & CURL_POLL_OUT)
        ev.events |= EPOLLOUT;
    int op = sockp ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(rl->epfd, op, fd, &ev) != 0) {
        /* the set disagrees with sockp (a socket closed and its number reused without
         * a REMOVE): the other operation fixes it */
        op = op == EPOLL_CTL_ADD ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
        if (epoll_ctl(rl->epfd, op, fd, &ev) != 0) {
            PD_LOG_ERR("proxy: relay %u: epoll_ctl(%d): %s", rl->idx, (int)fd, strerror(errno));
            return -1;
        }
    }
    if (!sockp)
        curl_multi_assign(rl->multi, fd, rl);
    return 0;
}

/* libcurl's timer callback: -1 removes the timer, 0 means "as soon as possible". */
static int relay_timer_cb(CURLM *m, long timeout_ms, void *user)
{
    px_relay_t *rl = user;
    (void)m;
    rl->timer_at_ns = timeout_ms < 0 ? 0 : pd_now_ns() + (uint64_t)timeout_ms * 1000000u + 1;
    return 0;
}

static void relay_done_msgs(px_relay_t *rl)
{
    CURLMsg *m;
    int left = 0;
    while ((m = curl_multi_info_read(rl->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        px_req_t *r = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        if (r)
            leg_done(r, m->data.result);
    }
}

#define RELAY_EVENTS 256

static void *relay_main(void *arg)
{
    px_relay_t *rl = arg;
    px_proxy_t *px = rl->px;
    struct epoll_event evs[RELAY_EVENTS];
    char tname[16];
    snprintf(tname, sizeof(tname), "px-relay-%u", rl->idx);
    pthread_setname_np(pthread_self(), tname);
    while (atomic_load(&px->relay_run)) {
        pthread_mutex_lock(&rl->qlock);
        px_req_t *q = rl->q_head;
        rl->q_head = rl->q_tail = NULL;
        pthread_mutex_unlock(&rl->qlock);
        while (q) {
            px_req_t *r = q;
            q = q->next;
            r->prev = NULL;
            r->next = rl->active;
            if (rl->active)
                rl->active->prev = r;
            rl->active = r;
            leg_start(r);
        }
        if (atomic_exchange(&rl->gone_pending, 0) > 0) {
            for (px_req_t *r = rl->active, *nx; r; r = nx) {
                nx = r->next;
                if (atomic_load(&r->client_gone) && r->easy) {
                    leg_done(r, CURLE_ABORTED_BY_CALLBACK);
                }
            }
        }
        int timeout = 1000, running = 0;
        if (rl->timer_at_ns) {
            uint64_t now = pd_now_ns();
            timeout = now >= rl->timer_at_ns ? 0 : (int)PD_MIN((rl->timer_at_ns - now + 999999) / 1000000, 1000u);
        }
        int n = epoll_wait(rl->epfd, evs, RELAY_EVENTS, timeout);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == rl->wakefd) {
                uint64_t v;
                if (read(rl->wakefd, &v, sizeof(v)) < 0) {
                    /* EAGAIN: nothing pending */
                }
                continue;
            }
            int flags = 0;
            if (evs[i].events & EPOLLIN)
                flags |= CURL_CSELECT_IN;
            if (evs[i].events & EPOLLOUT)
                flags |= CURL_CSELECT_OUT;
            if (evs[i].events & (EPOLLERR | EPOLLHUP))
                flags |= CURL_CSELECT_ERR;
            curl_multi_socket_action(rl->multi, fd, flags, &running);
        }
        if (rl->timer_at_ns && pd_now_ns() >= rl->timer_at_ns) {
            rl->timer_at_ns = 0;
            curl_multi_socket_action(rl->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        }
        relay_done_msgs(rl);
    }
    /* shutting down: answer what is left */
    pthread_mutex_lock(&rl->qlock);
    px_req_t *q = rl->q_head;
    rl->q_head = rl->q_tail = NULL;
    pthread_mutex_unlock(&rl->qlock);
    while (q) {
        px_req_t *r = q;
        q = q->next;
        r->next = r->prev = NULL;
        answer_error(r, 503, "the proxy is shutting down", NULL);
        atomic_fetch_sub(&px->inflight, 1);
        req_unref(r);
    }
    while (rl->active) {
        px_req_t *r = rl->active;
        easy_cleanup(r);
        if (r->started) {
            pd_http_sse_send(r->stream, "{\"error\": {\"message\": \"the proxy is shutting down\", \"type\": "
                                        "\"ServiceUnavailableError\", \"param\": null, \"code\": 503}}");
            pd_http_sse_done(r->stream);
            pd_http_stream_end(r->stream);
        } else {
            answer_error(r, 503, "the proxy is shutting down", NULL);
        }
        req_finish(r);
    }
    return NULL;
}

static void submit(px_req_t *r)
{
    px_relay_t *rl = r->rl;
    pthread_mutex_lock(&rl->qlock);
    r->next = NULL;
    if (rl->q_tail)
        rl->q_tail->next = r;
    else
        rl->q_head = r;
    rl->q_tail = r;
    pthread_mutex_unlock(&rl->qlock);
    wake(rl);
}

/* --relay-threads: 0 picks one relay per 4 CPUs, 1 to 4 (one relay with the socket API
 * carries 1,000 streams on a core; more help when the HTTP workers and the relay
 * compete on a big host). */
static unsigned px_relay_threads(int64_t opt)
{
    if (opt > 0)
        return (unsigned)opt;
    long nc = sysconf(_SC_NPROCESSORS_ONLN);
    long n = nc < 4 ? 1 : nc / 4;
    return (unsigned)(n > 4 ? 4 : n);
}

static pd_status_t relay_init(px_proxy_t *px, px_relay_t *rl, unsigned idx)
{
    rl->px = px;
    rl->idx = idx;
    rl->epfd = rl->wakefd = -1;
    pthread_mutex_init(&rl->qlock, NULL);
    rl->epfd = epoll_create1(EPOLL_CLOEXEC);
    rl->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (rl->epfd < 0 || rl->wakefd < 0) {
        PD_LOG_ERR("proxy: relay %u: epoll/eventfd: %s", idx, strerror(errno));
        return PD_ERR_IO;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = rl->wakefd};
    if (epoll_ctl(rl->epfd, EPOLL_CTL_ADD, rl->wakefd, &ev) != 0) {
        PD_LOG_ERR("proxy: relay %u: epoll_ctl: %s", idx, strerror(errno));
        return PD_ERR_IO;
    }
    rl->multi = curl_multi_init();
    if (rl->multi == NULL)
        return PD_ERR_NOMEM;
    curl_multi_setopt(rl->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    curl_multi_setopt(rl->multi, CURLMOPT_SOCKETFUNCTION, relay_sock_cb);
    curl_multi_setopt(rl->multi, CURLMOPT_SOCKETDATA, rl);
    curl_multi_setopt(rl->multi, CURLMOPT_TIMERFUNCTION, relay_timer_cb);
    curl_multi_setopt(rl->multi, CURLMOPT_TIMERDATA, rl);
    return PD_OK;
}

static void relay_cleanup(px_relay_t *rl)
{
    if (rl->px == NULL) /* never initialised */
        return;
    for (unsigned i = 0; i < rl->n_spare; i++)
        curl_easy_cleanup(rl->spare[i]);
    if (rl->multi)
        curl_multi_cleanup(rl->multi);
    if (rl->epfd >= 0)
        close(rl->epfd);
    if (rl->wakefd >= 0)
        close(rl->wakefd);
    pthread_mutex_destroy(&rl->qlock);
}

/* ---- health checks of static nodes ---- */

static size_t discard(char *p, size_t sz, size_t nm, void *u)
{
    (void)p;
    (void)u;
    return sz * nm;
}

static void *health_main(void *arg)
{
    px_proxy_t *px = arg;
    CURL *e = curl_easy_init();
    pthread_mutex_lock(&px->hlock);
    while (px->health_run && e) {
        pthread_mutex_unlock(&px->hlock);
        for (int role = 0; role < 2; role++) {
            px_node_t *nodes[PX_MAX_NODES];
            unsigned n = px_pools_list(&px->pools, (px_role_t)role, nodes, PX_MAX_NODES);
            for (unsigned i = 0; i < n; i++) {
                if (!nodes[i]->is_static)
                    continue;
                char url[PX_ADDR_MAX + 16];
                long code = 0;
                snprintf(url, sizeof(url), "%s/health", nodes[i]->url);
                curl_easy_reset(e);
                curl_easy_setopt(e, CURLOPT_URL, url);
                curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
                curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 2000L);
                curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
                curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
                curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
                CURLcode rc = curl_easy_perform(e);
                if (rc == CURLE_OK)
                    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
                int ok = rc == CURLE_OK && code == 200;
                int was = atomic_exchange(&nodes[i]->healthy, ok);
                if (was != ok)
                    PD_LOG_WARN("proxy: %s node %s is %s", px_role_name((px_role_t)role), nodes[i]->url,
                                ok ? "healthy again" : "unhealthy");
            }
        }
        pthread_mutex_lock(&px->hlock);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 2;
        if (px->health_run)
            pthread_cond_timedwait(&px->hcond, &px->hlock, &ts);
    }
    pthread_mutex_unlock(&px->hlock);
    curl_easy_cleanup(e);
    return NULL;
}

/* ---- HTTP handlers ---- */

/* Prompt text for the length estimate and prefix hashing: the completion prompt (first
 * string, or the token ids' bytes) or the chat messages' roles and text contents. */
static void prompt_text(const cJSON *root, int is_chat, pd_buf_t *out)
{
    if (!is_chat) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
        if (cJSON_IsArray(p) && cJSON_GetArraySize(p) > 0 && !cJSON_IsNumber(cJSON_GetArrayItem(p, 0)))
            p = cJSON_GetArrayItem(p, 0);
        if (cJSON_IsString(p)) {
            pd_buf_puts(out, p->valuestring);
        } else if (cJSON_IsArray(p)) {
            const cJSON *t;
            cJSON_ArrayForEach(t, p)
            {
                char tb[24];
                int k = snprintf(tb, sizeof(tb), "%.0f,", t->valuedouble);
                pd_buf_append(out, tb, (size_t)k);
            }
        }
        return;
    }
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(root, "messages"))
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (cJSON_IsString(role))
            pd_buf_printf(out, "<%s>", role->valuestring);
        if (cJSON_IsString(c)) {
            pd_buf_puts(out, c->valuestring);
        } else if (cJSON_IsArray(c)) {
            const cJSON *part;
            cJSON_ArrayForEach(part, c)
            {
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
                if (cJSON_IsString(t))
                    pd_buf_puts(out, t->valuestring);
            }
        }
    }
}

static px_req_t *req_new(px_proxy_t *px, pd_http_req_t *hreq, const char *path)
{
    px_req_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    atomic_init(&r->refs, 2); /* relay + client-close callback */
    r->px = px;
    r->hreq = hreq;
    char hex[33];
    pd_random_hex_id(hex);
    snprintf(r->id, sizeof(r->id), "px-%s", hex);
    snprintf(r->path, sizeof(r->path), "%s", path);
    r->t_start = pd_now_ns();
    /* spread requests over the relay threads in turn (before the close callback is
     * set: it wakes this relay) */
    r->rl = &px->relays[atomic_fetch_add(&px->next_relay, 1) % px->n_relays];
    return r;
}

static int admit(px_proxy_t *px, pd_http_req_t *hreq)
{
    if (atomic_fetch_add(&px->inflight, 1) >= px->max_concurrent) {
        atomic_fetch_sub(&px->inflight, 1);
        count_err(px, E_OVERLOAD);
        pd_http_respond_error(hreq, 429, NULL, "too many requests in flight; retry later", NULL, NULL);
        return 0;
    }
    return 1;
}

static const char *strip_fields[] = {"kv_transfer_params", "request_id", "disaggregated_params",
                                     "bootstrap_host", "bootstrap_port", "bootstrap_room",
                                     "bootstrap_pair_key", NULL};

static void h_generate(pd_http_req_t *hreq, void *user)
{
    px_proxy_t *px = user;
    int is_chat = strcmp(pd_http_req_path(hreq), "/v1/chat/completions") == 0;
    pd_metric_inc(px->m_req[is_chat ? 0 : 1]);
    size_t len;
    const char *body = pd_http_req_body(hreq, &len);
    cJSON *root = NULL;
    pd_json_err_t je;
    if (pd_json_parse(body, len, PD_JSON_DEFAULT_MAX_DEPTH, 1, &root, &je) != PD_OK) {
        count_err(px, E_BAD_REQUEST);
        pd_http_respond_error(hreq, 400, NULL, je.message, je.param[0] ? je.param : NULL, NULL);
        return;
    }
    /* the proxy makes its own request ids; a client's is still checked as a node would */
    const cJSON *rid = cJSON_GetObjectItemCaseSensitive(root, "request_id");
    if (rid != NULL && !cJSON_IsNull(rid) && (!cJSON_IsString(rid) || strlen(rid->valuestring) > 128)) {
        cJSON_Delete(root);
        count_err(px, E_BAD_REQUEST);
        pd_http_respond_error(hreq, 400, NULL, "request_id must be a string of at most 128 bytes.", "request_id",
                              NULL);
        return;
    }
    if (!admit(px, hreq)) {
        cJSON_Delete(root);
        return;
    }
    px_req_t *r = req_new(px, hreq, pd_http_req_path(hreq));
    if (r == NULL) {
        cJSON_Delete(root);
        atomic_fetch_sub(&px->inflight, 1);
        pd_http_respond_error(hreq, 500, NULL, "out of memory", NULL, NULL);
        return;
    }
    int stripped = 0;
    for (int i = 0; strip_fields[i]; i++) {
        cJSON *f;
        while ((f = cJSON_DetachItemFromObjectCaseSensitive(root, strip_fields[i])) != NULL) {
            stripped = 1; /* every copy: a duplicate key must not slip through */
            cJSON_Delete(f);
        }
    }
    r->root = root;
    r->is_chat = is_chat;
    r->is_stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "stream"));
    pd_buf_t text = {0};
    prompt_text(root, is_chat, &text);
    px_prefix_compute(text.data ? text.data : "", text.len, &r->prefix);
    int64_t est_tokens = (int64_t)(text.len / 4);
    pd_buf_cleanup(&text);
    if (r->is_stream) {
        const cJSON *nn = cJSON_GetObjectItemCaseSensitive(root, "n");
        const cJSON *mx = cJSON_GetObjectItemCaseSensitive(root, is_chat ? "max_completion_tokens" : "max_tokens");
        if (!cJSON_IsNumber(mx))
            mx = cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
        r->orig_max = cJSON_IsNumber(mx) ? (int64_t)mx->valuedouble : (is_chat ? -1 : 16);
        const cJSON *pr = cJSON_GetObjectItemCaseSensitive(root, "prompt");
        const cJSON *ms = cJSON_GetObjectItemCaseSensitive(root, "messages");
        int single = !cJSON_IsNumber(nn) || nn->valuedouble == 1;
        int no_echo = !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "echo")) &&
                      !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "continue_final_message"));
        if (single && no_echo && !is_chat && cJSON_IsString(pr)) {
            r->orig_prompt = strdup(pr->valuestring);
            r->fo_ok = r->orig_prompt != NULL;
        } else if (single && no_echo && is_chat && cJSON_IsArray(ms)) {
            /* not with tools the decode node may parse calls from: a continuation (the
             * first token streamed from prefill, a mid-stream failover) would hide the
             * start of the output from its parser */
            const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
            const cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
            int parsed = cJSON_GetArraySize(tools) > 0 && !(cJSON_IsString(tc) && strcmp(tc->valuestring, "none") == 0);
            r->orig_msgs = (unsigned)cJSON_GetArraySize(ms);
            r->fo_ok = !parsed;
        }
    }
    /* a disaggregated leg carries one prompt: completions with several go to decode */
    const cJSON *prompts = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    int multi = !is_chat && cJSON_IsArray(prompts) && cJSON_GetArraySize(prompts) > 1 &&
                !cJSON_IsNumber(cJSON_GetArrayItem(prompts, 0));
    r->split = px_pools_eligible(&px->pools, PX_ROLE_PREFILL) > 0 && est_tokens >= px->min_prompt_tokens && !multi;
    r->leg = r->split ? LEG_PREFILL : LEG_DECODE;
    /* a decode-only request the proxy did not change goes out as it came (no second
     * print of the tree; legs that change it print r->root) */
    if (!r->split && !stripped)
        r->fwd_body = strndup(body, len);
    pd_metric_inc(px->m_split[r->split]);
    pd_http_req_set_on_close(hreq, on_req_close, r);
    submit(r);
}

static void h_forward(pd_http_req_t *hreq, void *user)
{
    px_proxy_t *px = user;
    const char *path = pd_http_req_path(hreq);
    pd_metric_inc(px->m_req[strcmp(path, "/v1/models") == 0 ? 2 : 3]);
    if (!admit(px, hreq))
        return;
    px_req_t *r = req_new(px, hreq, path);
    size_t len;
    const char *body = pd_http_req_body(hreq, &len);
    if (r == NULL || (r->fwd_body = strdup(body)) == NULL) {
        free(r);
        atomic_fetch_sub(&px->inflight, 1);
        pd_http_respond_error(hreq, 500, NULL, "out of memory", NULL, NULL);
        return;
    }
    r->get = strcmp(pd_http_req_method(hreq), "GET") == 0 || strcmp(pd_http_req_method(hreq), "HEAD") == 0;
    r->leg = LEG_FORWARD;
    pd_http_req_set_on_close(hreq, on_req_close, r);
    submit(r);
}

static void h_health(pd_http_req_t *hreq, void *user)
{
    px_proxy_t *px = user;
    unsigned d = px_pools_eligible(&px->pools, PX_ROLE_DECODE);
    if (pd_http_server_draining(px->srv))
        pd_http_respond_error(hreq, 503, NULL, "the proxy is shutting down", NULL, NULL);
    else if (d == 0)
        pd_http_respond_error(hreq, 503, NULL, "no healthy decode node", NULL, NULL);
    else
        pd_http_respond_data(hreq, 200, "application/json", "{}", 2);
}

static void h_metrics(pd_http_req_t *hreq, void *user)
{
    px_proxy_t *px = user;
    pd_buf_t b = {0};
    if (pd_metrics_render(px->metrics, &b) == PD_OK)
        pd_http_respond_data(hreq, 200, PD_METRICS_CONTENT_TYPE, b.data ? b.data : "", b.len);
    else
        pd_http_respond_error(hreq, 500, NULL, "cannot render metrics", NULL, NULL);
    pd_buf_cleanup(&b);
}

static cJSON *status_json(px_proxy_t *px)
{
    static const char *pol[] = {"round_robin", "least_loaded", "power_of_two", "prefix_aware"};
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "requests_in_flight", atomic_load(&px->inflight));
    for (int role = 0; role < 2; role++) {
        cJSON *pool = cJSON_AddObjectToObject(root, px_role_name((px_role_t)role));
        cJSON_AddStringToObject(pool, "policy", pol[px->pools.pool[role].policy]);
        cJSON *arr = cJSON_AddArrayToObject(pool, "nodes");
        px_node_t *nodes[PX_MAX_NODES];
        unsigned n = px_pools_list(&px->pools, (px_role_t)role, nodes, PX_MAX_NODES);
        for (unsigned i = 0; i < n; i++) {
            px_node_t *nd = nodes[i];
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "url", nd->url);
            cJSON_AddStringToObject(o, "source", nd->is_static ? "static" : "registered");
            cJSON_AddBoolToObject(o, "healthy", atomic_load(&nd->healthy) && !atomic_load(&nd->gone));
            cJSON_AddNumberToObject(o, "in_flight", atomic_load(&nd->inflight));
            cJSON_AddNumberToObject(o, "requests", (double)atomic_load(&nd->requests));
            cJSON_AddNumberToObject(o, "failures", (double)atomic_load(&nd->failures));
            if (!nd->is_static) {
                char zaddr[PX_ADDR_MAX];
                pthread_mutex_lock(&px->pools.lock);
                snprintf(zaddr, sizeof(zaddr), "%s", nd->zmq_address);
                pthread_mutex_unlock(&px->pools.lock);
                cJSON_AddStringToObject(o, "zmq_address", zaddr);
                cJSON_AddNumberToObject(o, "load", nd->load);
                cJSON_AddNumberToObject(o, "queue", nd->queue);
                cJSON_AddNumberToObject(o, "kv_usage", nd->kv_usage);
                cJSON_AddNumberToObject(o, "prefix_hashes", nd->n_prefix_hashes);
                cJSON_AddNumberToObject(o, "last_heartbeat_age_s",
                                        (double)(pd_now_ns() - nd->last_seen_ns) / 1e9);
            }
            cJSON_AddItemToArray(arr, o);
        }
    }
    return root;
}

static void h_status(pd_http_req_t *hreq, void *user)
{
    px_proxy_t *px = user;
    cJSON *st = status_json(px);
    const char *fmt = pd_http_req_query(hreq, "format");
    const char *accept = pd_http_req_header(hreq, "Accept");
    int html = (fmt && strcmp(fmt, "html") == 0) || (!fmt && accept && strstr(accept, "text/html"));
    if (!html) {
        pd_http_respond_json(hreq, 200, st, NULL);
        cJSON_Delete(st);
        return;
    }
    pd_buf_t b = {0};
    pd_buf_puts(&b, "<!doctype html><html><head><meta charset=\"utf-8\"><title>pdserve-proxy</title>"
                    "<meta http-equiv=\"refresh\" content=\"2\"></head><body><h1>pdserve-proxy</h1>");
    pd_buf_printf(&b, "<p>requests in flight: %d</p>", atomic_load(&px->inflight));
    for (int role = 0; role < 2; role++) {
        const cJSON *pool = cJSON_GetObjectItem(st, px_role_name((px_role_t)role));
        pd_buf_printf(&b, "<h2>%s pool (%s)</h2><table border=\"1\"><tr><th>node</th><th>source</th>"
                          "<th>healthy</th><th>in flight</th><th>requests</th><th>failures</th>"
                          "<th>queue</th><th>kv usage</th></tr>",
                      px_role_name((px_role_t)role), cJSON_GetObjectItem(pool, "policy")->valuestring);
        const cJSON *o;
        cJSON_ArrayForEach(o, cJSON_GetObjectItem(pool, "nodes"))
        {
            /* urls were checked to be printable ASCII without spaces; escape <>& anyway */
            pd_buf_puts(&b, "<tr><td>");
            for (const char *c = cJSON_GetObjectItem(o, "url")->valuestring; *c; c++)
                pd_buf_puts(&b, *c == '<' ? "&lt;" : *c == '>' ? "&gt;" : *c == '&' ? "&amp;" : (char[]){*c, 0});
            const cJSON *q = cJSON_GetObjectItem(o, "queue"), *kv = cJSON_GetObjectItem(o, "kv_usage");
            pd_buf_printf(&b, "</td><td>%s</td><td>%s</td><td>%.0f</td><td>%.0f</td><td>%.0f</td><td>%s%.0f</td>"
                              "<td>%s%.2f</td></tr>",
                          cJSON_GetObjectItem(o, "source")->valuestring,
                          cJSON_IsTrue(cJSON_GetObjectItem(o, "healthy")) ? "yes" : "NO",
                          cJSON_GetObjectItem(o, "in_flight")->valuedouble,
                          cJSON_GetObjectItem(o, "requests")->valuedouble,
                          cJSON_GetObjectItem(o, "failures")->valuedouble, q ? "" : "-", q ? q->valuedouble : 0,
                          kv ? "" : "-", kv ? kv->valuedouble : 0);
        }
        pd_buf_puts(&b, "</table>");
    }
    pd_buf_puts(&b, "</body></html>");
    pd_http_respond_data(hreq, 200, "text/html; charset=utf-8", b.data, b.len);
    pd_buf_cleanup(&b);
    cJSON_Delete(st);
}

static void collect(pd_metrics_registry_t *reg, void *user)
{
    px_proxy_t *px = user;
    (void)reg;
    pd_metric_set(px->m_inflight, atomic_load(&px->inflight));
    for (int role = 0; role < 2; role++) {
        px_node_t *nodes[PX_MAX_NODES];
        unsigned n = px_pools_list(&px->pools, (px_role_t)role, nodes, PX_MAX_NODES), h = 0, u = 0;
        for (unsigned i = 0; i < n; i++) {
            if (atomic_load(&nodes[i]->gone))
                continue;
            if (atomic_load(&nodes[i]->healthy))
                h++;
            else
                u++;
        }
        pd_metric_series_t *s;
        if (pd_metric_series(px->m_pool, (const char *[]){px_role_name((px_role_t)role), "healthy"}, &s) == PD_OK)
            pd_metric_set(s, h);
        if (pd_metric_series(px->m_pool, (const char *[]){px_role_name((px_role_t)role), "unhealthy"}, &s) == PD_OK)
            pd_metric_set(s, u);
    }
}

static pd_status_t metrics_init(px_proxy_t *px)
{
    pd_metric_t *m;
    pd_status_t st = pd_metrics_registry_create(&px->metrics);
    if (st != PD_OK)
        return st;
    static const char *eps[] = {"chat_completions", "completions", "models", "other"};
    st = pd_metrics_counter(px->metrics, "pdserve_proxy_requests_total", "Requests received by endpoint.", 1,
                            (const char *[]){"endpoint"}, &m);
    for (int i = 0; i < 4 && st == PD_OK; i++)
        st = pd_metric_series(m, (const char *[]){eps[i]}, &px->m_req[i]);
    if (st == PD_OK)
        st = pd_metrics_counter(px->metrics, "pdserve_proxy_errors_total", "Failed requests by kind.", 1,
                                (const char *[]){"kind"}, &m);
    for (int i = 0; i < E_N && st == PD_OK; i++)
        st = pd_metric_series(m, (const char *[]){err_kind[i]}, &px->m_err[i]);
    if (st == PD_OK)
        st = pd_metrics_counter(px->metrics, "pdserve_proxy_retries_total",
                                "Legs retried on another node before any output.", 0, NULL, &m);
    if (st == PD_OK)
        px->m_retries = pd_metric_default(m);
    if (st == PD_OK)
        st = pd_metrics_counter(px->metrics, "pdserve_proxy_failovers_total",
                                "Streams resumed on another decode node after output began.", 0, NULL, &m);
    if (st == PD_OK)
        px->m_failover = pd_metric_default(m);
    static const double lb[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
    if (st == PD_OK)
        st = pd_metrics_histogram(px->metrics, "pdserve_proxy_upstream_latency_seconds",
                                  "Upstream time to first response byte per leg.", 1, (const char *[]){"leg"},
                                  PD_ARRAY_SIZE(lb), lb, &m);
    static const char *legs[] = {"prefill", "decode", "forward"};
    for (int i = 0; i < 3 && st == PD_OK; i++)
        st = pd_metric_series(m, (const char *[]){legs[i]}, &px->m_lat[i]);
    if (st == PD_OK)
        st = pd_metrics_counter(px->metrics, "pdserve_proxy_routed_total",
                                "Generation requests by path: split (prefill then decode) or decode_only.", 1,
                                (const char *[]){"path"}, &m);
    if (st == PD_OK)
        st = pd_metric_series(m, (const char *[]){"decode_only"}, &px->m_split[0]);
    if (st == PD_OK)
        st = pd_metric_series(m, (const char *[]){"split"}, &px->m_split[1]);
    if (st == PD_OK)
        st = pd_metrics_gauge(px->metrics, "pdserve_proxy_requests_in_flight", "Requests in flight.", 0, NULL, &m);
    if (st == PD_OK)
        px->m_inflight = pd_metric_default(m);
    if (st == PD_OK)
        st = pd_metrics_gauge(px->metrics, "pdserve_proxy_pool_nodes", "Nodes per pool and state.", 2,
                              (const char *[]){"role", "state"}, &px->m_pool);
    if (st == PD_OK)
        st = pd_metrics_add_collector(px->metrics, collect, px);
    return st;
}

/* ---- lifecycle ---- */

pd_status_t px_proxy_create(const px_args_t *a, px_proxy_t **px_p)
{
    px_policy_t pp, dp;
    if (px_policy_parse(a->prefill_policy ? a->prefill_policy : a->policy, &pp) != PD_OK ||
        px_policy_parse(a->decode_policy ? a->decode_policy : a->policy, &dp) != PD_OK)
        return PD_ERR_INVAL;
    px_proxy_t *px = calloc(1, sizeof(*px));
    if (px == NULL)
        return PD_ERR_NOMEM;
    px->args = a;
    px_pools_init(&px->pools, pp, dp);
    pthread_mutex_init(&px->hlock, NULL);
    pthread_cond_init(&px->hcond, NULL);
    px->timeout_ns = (uint64_t)(a->request_timeout * 1e9);
    px->max_retries = (int)a->max_retries;
    px->min_prompt_tokens = a->disagg_min_prompt_tokens;
    px->max_concurrent = a->max_concurrent_requests;
    px->stream_first = a->stream_first_token;
    pd_status_t st = PD_OK;
    for (size_t i = 0; i < a->prefill.n && st == PD_OK; i++)
        st = px_pools_add_static(&px->pools, PX_ROLE_PREFILL, a->prefill.v[i]);
    for (size_t i = 0; i < a->decode.n && st == PD_OK; i++)
        st = px_pools_add_static(&px->pools, PX_ROLE_DECODE, a->decode.v[i]);
    if (st == PD_OK && a->upstream_api_key) {
        size_t n = strlen(a->upstream_api_key) + 32;
        px->auth_header = malloc(n);
        if (px->auth_header)
            snprintf(px->auth_header, n, "Authorization: Bearer %s", a->upstream_api_key);
    }
    if (st == PD_OK)
        st = metrics_init(px);
    if (st == PD_OK) {
        px->n_relays = px_relay_threads(a->relay_threads);
        px->relays = calloc(px->n_relays, sizeof(*px->relays));
        if (px->relays == NULL)
            st = PD_ERR_NOMEM;
        for (unsigned i = 0; st == PD_OK && i < px->n_relays; i++)
            st = relay_init(px, &px->relays[i], i);
    }
    if (st == PD_OK) {
        pd_http_config_t cfg;
        pd_http_config_init(&cfg);
        cfg.host = a->host ? a->host : "127.0.0.1";
        cfg.port = (uint16_t)a->port;
        cfg.root_path = a->root_path;
        cfg.api_key = a->api_key;
        cfg.ssl_keyfile = a->ssl_keyfile;
        cfg.ssl_certfile = a->ssl_certfile;
        cfg.ssl_ca_certs = a->ssl_ca_certs;
        cfg.ssl_cert_reqs = (pd_http_cert_reqs_t)a->ssl_cert_reqs;
        cfg.allow_credentials = a->allow_credentials;
        cfg.enable_request_id_headers = a->enable_request_id_headers;
        cfg.disable_access_log = a->disable_log_requests;
        cfg.metrics = px->metrics;
        /* CORS lists: JSON arrays of strings (checked by the CLI) */
        const char **lists[3] = {NULL, NULL, NULL};
        const cJSON *src[3] = {a->allowed_origins, a->allowed_methods, a->allowed_headers};
        for (int k = 0; k < 3; k++) {
            int n = src[k] ? cJSON_GetArraySize(src[k]) : 0;
            if (n <= 0)
                continue;
            lists[k] = calloc((size_t)n + 1, sizeof(char *));
            for (int i = 0; lists[k] && i < n; i++)
                lists[k][i] = cJSON_GetStringValue(cJSON_GetArrayItem(src[k], i));
        }
        cfg.allowed_origins = lists[0];
        cfg.allowed_methods = lists[1];
        cfg.allowed_headers = lists[2];
        st = pd_http_server_create(&cfg, &px->srv);
        for (int k = 0; k < 3; k++)
            free(lists[k]);
    }
    if (st == PD_OK) {
        pd_http_route(px->srv, "POST", "/v1/chat/completions", h_generate, px);
        pd_http_route(px->srv, "POST", "/v1/completions", h_generate, px);
        pd_http_route(px->srv, "GET", "/v1/models", h_forward, px);
        pd_http_route(px->srv, "POST", "/tokenize", h_forward, px);
        pd_http_route(px->srv, "POST", "/detokenize", h_forward, px);
        pd_http_route(px->srv, "GET", "/tokenizer_info", h_forward, px);
        /* vLLM's pooling endpoints: the decode nodes answer them (today a clear 400
         * "not supported yet"), so the proxy says what a node says */
        static const char *const pooling[] = {"/v1/embeddings", "/pooling", "/classify", "/v1/score", "/score",
                                              "/v1/rerank", "/rerank", "/v2/rerank", NULL};
        for (int i = 0; pooling[i]; i++)
            pd_http_route(px->srv, "POST", pooling[i], h_forward, px);
        pd_http_route_ex(px->srv, "GET", "/health", h_health, px, PD_HTTP_ROUTE_DURING_DRAIN);
        pd_http_route_ex(px->srv, "GET", "/metrics", h_metrics, px, PD_HTTP_ROUTE_DURING_DRAIN);
        pd_http_route_ex(px->srv, "GET", "/status", h_status, px, PD_HTTP_ROUTE_DURING_DRAIN);
    }
    if (st != PD_OK) {
        px_proxy_destroy(px);
        return st;
    }
    *px_p = px;
    return PD_OK;
}

pd_status_t px_proxy_start(px_proxy_t *px)
{
    const px_args_t *a = px->args;
    if (a->register_bind) {
        pd_status_t st = px_register_start(a->register_bind, a->heartbeat_timeout, &px->pools, &px->reg);
        if (st != PD_OK)
            return st;
    }
    atomic_store(&px->relay_run, 1);
    for (unsigned i = 0; i < px->n_relays; i++) {
        if (pthread_create(&px->relays[i].thread, NULL, relay_main, &px->relays[i]) != 0)
            return PD_ERR_INTERNAL;
        px->relays[i].started = 1;
    }
    px->health_run = 1;
    if (pthread_create(&px->health, NULL, health_main, px) != 0)
        return PD_ERR_INTERNAL;
    px->health_started = 1;
    return pd_http_server_start(px->srv);
}

uint16_t px_proxy_port(const px_proxy_t *px) { return pd_http_server_port(px->srv); }

void px_proxy_drain(px_proxy_t *px, uint64_t timeout_ms)
{
    if (px->srv)
        pd_http_server_drain(px->srv, timeout_ms);
}

void px_proxy_destroy(px_proxy_t *px)
{
    if (px == NULL)
        return;
    if (px->srv)
        pd_http_server_stop(px->srv); /* streams get on_close; parked requests stay ours */
    atomic_store(&px->relay_run, 0);
    for (unsigned i = 0; px->relays && i < px->n_relays; i++) {
        if (px->relays[i].started) {
            wake(&px->relays[i]);
            pthread_join(px->relays[i].thread, NULL);
        }
    }
    if (px->health_started) {
        pthread_mutex_lock(&px->hlock);
        px->health_run = 0;
        pthread_cond_signal(&px->hcond);
        pthread_mutex_unlock(&px->hlock);
        pthread_join(px->health, NULL);
    }
    px_register_stop(px->reg);
    pd_http_server_destroy(px->srv);
    for (unsigned i = 0; px->relays && i < px->n_relays; i++)
        relay_cleanup(&px->relays[i]);
    free(px->relays);
    pd_metrics_registry_destroy(px->metrics);
    px_pools_cleanup(&px->pools);
    pthread_mutex_destroy(&px->hlock);
    pthread_cond_destroy(&px->hcond);
    free(px->auth_header);
    free(px);
}
