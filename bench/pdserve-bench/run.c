/*
 * run.c - one benchmark run: send the dataset at a request rate and time every stream.
 *
 * One thread drives every stream through libcurl's multi interface in socket-action
 * mode with epoll, so thousands of concurrent streams cost only the sockets that have
 * data.  Request bodies are built before the clock starts; the hot path per SSE event
 * is one cJSON parse plus a clock read.
 *
 * Invariants:
 *   - a request is a success only if the response was 200, the stream ended with
 *     [DONE], no error event arrived, and at least one chunk carried text;
 *   - timestamps are taken when curl hands us bytes, before any parsing of later events;
 *   - with --max-concurrency, a request's clock starts when it is actually sent (as in
 *     vLLM: waiting for a slot is not part of TTFT);
 *   - arrivals are precomputed (bench_arrivals) and sent in order.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench.h"
#include "pd_log.h"

const char *bench_err_kind_name(bench_err_kind_t kind)
{
    switch (kind) {
    case BENCH_ERR_NONE: return "none";
    case BENCH_ERR_HTTP: return "http";
    case BENCH_ERR_TIMEOUT: return "timeout";
    case BENCH_ERR_CONNECTION: return "connection";
    case BENCH_ERR_DISCONNECT: return "disconnect";
    case BENCH_ERR_STREAM: return "stream_error";
    case BENCH_ERR_EMPTY: return "empty_output";
    case BENCH_ERR_CANCELED: return "canceled";
    default: return "unknown";
    }
}

/* ---- request bodies ---- */
static char *build_body(const bench_opts_t *o, const char *model, const bench_sample_t *s)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *so;
    char *out = NULL;

    if (!root)
        return NULL;
    cJSON_AddStringToObject(root, "model", model);
    if (o->ep_kind == BENCH_EP_CHAT) {
        cJSON *msgs = cJSON_AddArrayToObject(root, "messages");
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "user");
        cJSON_AddStringToObject(m, "content", s->prompt);
        cJSON_AddItemToArray(msgs, m);
        cJSON_AddNumberToObject(root, "max_completion_tokens", s->output_len);
    } else {
        cJSON_AddStringToObject(root, "prompt", s->prompt);
        cJSON_AddNumberToObject(root, "max_tokens", s->output_len);
    }
    cJSON_AddBoolToObject(root, "stream", 1);
    so = cJSON_AddObjectToObject(root, "stream_options");
    cJSON_AddBoolToObject(so, "include_usage", 1);
    if (o->ignore_eos)
        cJSON_AddBoolToObject(root, "ignore_eos", 1);
    cJSON_AddNumberToObject(root, "temperature", isnan(o->temperature) ? 0.0 : o->temperature);
    if (!isnan(o->top_p))
        cJSON_AddNumberToObject(root, "top_p", o->top_p);
    if (o->top_k >= -1)
        cJSON_AddNumberToObject(root, "top_k", o->top_k);
    if (!isnan(o->min_p))
        cJSON_AddNumberToObject(root, "min_p", o->min_p);
    if (!isnan(o->frequency_penalty))
        cJSON_AddNumberToObject(root, "frequency_penalty", o->frequency_penalty);
    if (!isnan(o->presence_penalty))
        cJSON_AddNumberToObject(root, "presence_penalty", o->presence_penalty);
    if (!isnan(o->repetition_penalty))
        cJSON_AddNumberToObject(root, "repetition_penalty", o->repetition_penalty);
    if (o->extra_body) {
        cJSON *extra = cJSON_Parse(o->extra_body);
        if (!extra || !cJSON_IsObject(extra)) {
            PD_LOG_ERR("--extra-body is not a JSON object: %s", o->extra_body);
            cJSON_Delete(extra);
            cJSON_Delete(root);
            return NULL;
        }
        cJSON *it = extra->child;
        while (it) {
            cJSON *next = it->next;
            cJSON_DetachItemViaPointer(extra, it);
            cJSON_DeleteItemFromObject(root, it->string);
            cJSON_AddItemToObject(root, it->string, it);
            it = next;
        }
        cJSON_Delete(extra);
    }
    out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

/* ---- per-stream state ---- */
typedef struct stream {
    CURL *easy;
    bench_result_t *res;  /* NULL for warm-ups */
    bench_result_t scratch;
    double t_send, t_last;
    int done;             /* saw data: [DONE] */
    int n_events;         /* SSE data: lines seen */
    int status_checked;
    pd_buf_t line;        /* partial SSE line */
    pd_buf_t errbody;     /* body of a non-200 response (first 1 KiB) */
    const bench_opts_t *opts;
    struct loop *loop;
    struct shard *shard;
    struct stream *prev, *next; /* the loop's list of streams in flight */
} stream_t;

/* libcurl 7.x walks every connection of a multi handle on each curl_multi_remove_handle
 * (and when it looks for a connection to reuse), so one multi handle costs
 * O(connections) per request: 54 us per request at 250 connections, 149 us at 4000 on
 * the reference machine.  Streams are therefore spread over shards, each its own multi
 * handle (and connection cache) with at most about SHARD_CONNS connections, all driven
 * from one epoll set. */
#define MAX_SHARDS 128
#define SHARD_CONNS 128

typedef struct shard {
    CURLM *multi;
    struct loop *loop;
    int idx;
    double deadline;       /* libcurl's timer; < 0: none */
    int inflight;
    int idle_conns;        /* finished transfers whose connection may be reused */
} shard_t;

typedef struct loop {
    shard_t shards[MAX_SHARDS];
    int n_shards;
    int epfd;
    int inflight;
    int finished;
    uint64_t bytes_rx;
    struct curl_slist *headers;
    stream_t *streams;     /* in flight */
} loop_t;

volatile int bench_interrupted_g;

static void set_error(bench_result_t *r, bench_err_kind_t kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_error(bench_result_t *r, bench_err_kind_t kind, const char *fmt, ...)
{
    va_list ap;
    char msg[512];
    if (r->err != BENCH_ERR_NONE)
        return; /* the first cause wins */
    r->err = kind;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    free(r->error);
    r->error = strdup(msg);
}

static void itl_push(bench_result_t *r, double v)
{
    if (r->n_itl == r->cap_itl) {
        int cap = r->cap_itl ? r->cap_itl * 2 : 64;
        double *p = realloc(r->itl, sizeof(double) * (size_t)cap);
        if (!p)
            return; /* drop the sample rather than the request */
        r->itl = p;
        r->cap_itl = cap;
    }
    r->itl[r->n_itl++] = v;
}

static const char *chunk_text(const cJSON *json, int chat)
{
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(json, "choices");
    const cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    const cJSON *t;
    if (!c0)
        return NULL;
    if (chat) {
        const cJSON *delta = cJSON_GetObjectItemCaseSensitive(c0, "delta");
        t = cJSON_GetObjectItemCaseSensitive(delta, "content");
        if (cJSON_IsString(t) && t->valuestring[0])
            return t->valuestring;
        /* reasoning models stream their thinking first; it is generated output too */
        t = cJSON_GetObjectItemCaseSensitive(delta, "reasoning_content");
        if (!cJSON_IsString(t))
            t = cJSON_GetObjectItemCaseSensitive(delta, "reasoning");
    } else {
        t = cJSON_GetObjectItemCaseSensitive(c0, "text");
    }
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static void handle_event(stream_t *st, char *payload, double now)
{
    bench_result_t *r = st->res;
    cJSON *json, *err, *usage;
    const char *text;

    if (strcmp(payload, "[DONE]") == 0) {
        st->done = 1;
        return;
    }
    json = cJSON_Parse(payload);
    if (!json) {
        set_error(r, BENCH_ERR_STREAM, "unparsable stream event: %.120s", payload);
        return;
    }
    err = cJSON_GetObjectItemCaseSensitive(json, "error");
    if (err && !cJSON_IsNull(err)) {
        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(err, "message");
        set_error(r, BENCH_ERR_STREAM, "error event: %.300s",
                  cJSON_IsString(msg) ? msg->valuestring
                  : cJSON_IsString(err) ? err->valuestring : "(no message)");
        cJSON_Delete(json);
        return;
    }
    text = chunk_text(json, st->opts->ep_kind == BENCH_EP_CHAT);
    if (text && text[0]) {
        if (r->n_chunks == 0)
            r->ttft_s = now - st->t_send;
        else
            itl_push(r, now - st->t_last);
        st->t_last = now;
        r->n_chunks++;
    }
    usage = cJSON_GetObjectItemCaseSensitive(json, "usage");
    if (cJSON_IsObject(usage)) {
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens");
        if (cJSON_IsNumber(ct))
            r->usage_tokens = ct->valueint;
    }
    cJSON_Delete(json);
}

static void handle_line(stream_t *st, char *line, size_t len, double now)
{
    if (len > 0 && line[len - 1] == '\r')
        line[--len] = '\0';
    if (len < 5 || strncmp(line, "data:", 5) != 0)
        return; /* blank separators, comments, event:/id: fields */
    line += 5;
    if (*line == ' ')
        line++;
    st->n_events++;
    handle_event(st, line, now);
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userp)
{
    stream_t *st = userp;
    size_t n = size * nmemb;
    double now = pd_now_s();

    st->loop->bytes_rx += n;
    if (!st->status_checked) {
        long code = 0;
        curl_easy_getinfo(st->easy, CURLINFO_RESPONSE_CODE, &code);
        st->res->http_status = code;
        st->status_checked = 1;
    }
    if (st->res->http_status != 200) {
        size_t room = st->errbody.len < 1024 ? 1024 - st->errbody.len : 0;
        if (room)
            pd_buf_append(&st->errbody, ptr, PD_MIN(room, n));
        return n;
    }
    /* Split into lines; a line may straddle callbacks, so carry the tail in st->line. */
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (ptr[i] != '\n')
            continue;
        if (st->line.len > 0) {
            if (pd_buf_append(&st->line, ptr + start, i - start) != PD_OK)
                return 0;
            handle_line(st, st->line.data, st->line.len, now);
            pd_buf_reset(&st->line);
        } else {
            ptr[i] = '\0'; /* curl's buffer is ours to scribble on until we return */
            handle_line(st, ptr + start, i - start, now);
        }
        start = i + 1;
    }
    if (start < n && pd_buf_append(&st->line, ptr + start, n - start) != PD_OK)
        return 0;
    return n;
}

/* ---- libcurl <-> epoll glue ---- */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    shard_t *sh = userp;
    loop_t *lp = sh->loop;
    struct epoll_event ev = {0};

    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(lp->epfd, EPOLL_CTL_DEL, s, NULL);
        return 0;
    }
    ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
    ev.data.u64 = ((uint64_t)sh->idx << 32) | (uint32_t)s;
    if (epoll_ctl(lp->epfd, socketp ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s, &ev) != 0) {
        /* fd numbers are reused: fall back to the other operation */
        if (epoll_ctl(lp->epfd, socketp ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, s, &ev) != 0)
            PD_LOG_WARN("epoll_ctl(%d): %s", (int)s, strerror(errno));
    }
    if (!socketp)
        curl_multi_assign(sh->multi, s, sh);
    return 0;
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    shard_t *sh = userp;
    sh->deadline = timeout_ms < 0 ? -1 : pd_now_s() + (double)timeout_ms / 1000.0;
    return 0;
}

/* A shard with an idle connection to reuse, else the one with the fewest connections. */
static shard_t *pick_shard(loop_t *lp)
{
    shard_t *best = &lp->shards[0];
    for (int i = 0; i < lp->n_shards; i++) {
        shard_t *sh = &lp->shards[i];
        if (sh->idle_conns > 0)
            return sh;
        if (sh->inflight + sh->idle_conns < best->inflight + best->idle_conns)
            best = sh;
    }
    return best;
}

static pd_status_t stream_start(loop_t *lp, const bench_opts_t *o, const char *url,
                                 const char *body, bench_result_t *res)
{
    stream_t *st = calloc(1, sizeof(*st));
    if (!st)
        return PD_ERR_NOMEM;
    st->opts = o;
    st->loop = lp;
    st->shard = pick_shard(lp);
    st->res = res ? res : &st->scratch;
    st->res->usage_tokens = -1;
    st->easy = curl_easy_init();
    if (!st->easy) {
        free(st);
        return PD_ERR_NOMEM;
    }
    curl_easy_setopt(st->easy, CURLOPT_URL, url);
    curl_easy_setopt(st->easy, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(st->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    curl_easy_setopt(st->easy, CURLOPT_HTTPHEADER, lp->headers);
    curl_easy_setopt(st->easy, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(st->easy, CURLOPT_WRITEDATA, st);
    curl_easy_setopt(st->easy, CURLOPT_PRIVATE, st);
    curl_easy_setopt(st->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(st->easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(st->easy, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
    /* libcurl looks for a reusable connection by scanning every connection to the host,
     * which costs O(connections) per request; when we know none is idle, skip the scan
     * (halves client-side set-up time when thousands of streams start at once). */
    if (st->shard->idle_conns <= 0)
        curl_easy_setopt(st->easy, CURLOPT_FRESH_CONNECT, 1L);
    else
        st->shard->idle_conns--;
    if (o->request_timeout_s > 0)
        curl_easy_setopt(st->easy, CURLOPT_TIMEOUT_MS, (long)(o->request_timeout_s * 1000.0));
    st->t_send = pd_now_s();
    if (curl_multi_add_handle(st->shard->multi, st->easy) != CURLM_OK) {
        curl_easy_cleanup(st->easy);
        free(st);
        return PD_ERR_INTERNAL;
    }
    lp->inflight++;
    st->shard->inflight++;
    st->next = lp->streams;
    if (lp->streams)
        lp->streams->prev = st;
    lp->streams = st;
    return PD_OK;
}

static void stream_finish(loop_t *lp, stream_t *st, CURLcode code)
{
    double now = pd_now_s();
    bench_result_t *r = st->res;
    long status = r->http_status;

    if (!st->status_checked) {
        curl_easy_getinfo(st->easy, CURLINFO_RESPONSE_CODE, &status);
        r->http_status = status;
    }
    /* Flush a final line that had no trailing newline. */
    if (st->line.len > 0 && status == 200) {
        handle_line(st, st->line.data, st->line.len, now);
        pd_buf_reset(&st->line);
    }
    r->e2el_s = now - st->t_send;
    if (code == CURLE_OPERATION_TIMEDOUT) {
        set_error(r, BENCH_ERR_TIMEOUT, "timed out after %.3f s", r->e2el_s);
    } else if (code != CURLE_OK) {
        if (status == 200 && (r->n_chunks > 0 || st->line.len > 0 || code == CURLE_PARTIAL_FILE ||
                              code == CURLE_RECV_ERROR))
            set_error(r, BENCH_ERR_DISCONNECT, "stream cut: %s", curl_easy_strerror(code));
        else if (status != 0 && status != 200)
            set_error(r, BENCH_ERR_HTTP, "HTTP %ld then %s", status, curl_easy_strerror(code));
        else
            set_error(r, BENCH_ERR_CONNECTION, "%s", curl_easy_strerror(code));
    } else if (status != 200) {
        set_error(r, BENCH_ERR_HTTP, "HTTP %ld: %.300s", status,
                  st->errbody.data ? st->errbody.data : "");
    } else if (st->n_events == 0 && r->err == BENCH_ERR_NONE) {
        set_error(r, BENCH_ERR_STREAM, "the response was not an SSE stream (stream ignored?)");
    } else if (!st->done && r->err == BENCH_ERR_NONE) {
        set_error(r, BENCH_ERR_DISCONNECT, "stream ended without [DONE]");
    } else if (r->n_chunks == 0) {
        set_error(r, BENCH_ERR_EMPTY, "no generated text");
    }
    r->success = r->err == BENCH_ERR_NONE;
    if (code == CURLE_OK)
        st->shard->idle_conns++;
    r->output_tokens = r->usage_tokens >= 0 ? r->usage_tokens : r->n_chunks;

    curl_multi_remove_handle(st->shard->multi, st->easy);
    curl_easy_cleanup(st->easy);
    pd_buf_cleanup(&st->line);
    pd_buf_cleanup(&st->errbody);
    if (r == &st->scratch) {
        free(r->itl);
        free(r->error);
    }
    st->shard->inflight--;
    if (st->prev)
        st->prev->next = st->next;
    else
        lp->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    free(st);
    lp->inflight--;
    lp->finished++;
}

static void drain_done(loop_t *lp, shard_t *sh)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(sh->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        stream_t *st = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&st);
        stream_finish(lp, st, msg->data.result);
    }
}

static void progress(int done, int total, double elapsed, int force)
{
    static double last;
    double now = pd_now_s();
    if (!force && now - last < 0.1)
        return;
    last = now;
    int w = 40, fill = total > 0 ? (int)((double)done / total * w) : w;
    char bar[48];
    for (int i = 0; i < w; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[w] = '\0';
    fprintf(stderr, "\r[%s] %d/%d %.1fs", bar, done, total, elapsed);
    if (force)
        fputc('\n', stderr);
}

static pd_status_t loop_init(loop_t *lp, const bench_opts_t *o)
{
    long expect = o->max_concurrency > 0 ? o->max_concurrency : o->num_prompts;
    memset(lp, 0, sizeof(*lp));
    lp->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (lp->epfd < 0) {
        PD_LOG_ERR("epoll_create1: %s", strerror(errno));
        return PD_ERR_IO;
    }
    lp->n_shards = (int)PD_MIN((long)MAX_SHARDS, PD_MAX(1L, (expect + SHARD_CONNS - 1) / SHARD_CONNS));
    for (int i = 0; i < lp->n_shards; i++) {
        shard_t *sh = &lp->shards[i];
        sh->idx = i;
        sh->loop = lp;
        sh->deadline = -1;
        sh->multi = curl_multi_init();
        if (!sh->multi) {
            for (int k = 0; k < i; k++)
                curl_multi_cleanup(lp->shards[k].multi);
            close(lp->epfd);
            return PD_ERR_NOMEM;
        }
        curl_multi_setopt(sh->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
        curl_multi_setopt(sh->multi, CURLMOPT_SOCKETDATA, sh);
        curl_multi_setopt(sh->multi, CURLMOPT_TIMERFUNCTION, on_timer);
        curl_multi_setopt(sh->multi, CURLMOPT_TIMERDATA, sh);
        /* Keep every connection for reuse: the next request reuses a warm one. */
        curl_multi_setopt(sh->multi, CURLMOPT_MAXCONNECTS, 100000L);
        curl_multi_setopt(sh->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    }
    lp->headers = curl_slist_append(NULL, "Content-Type: application/json");
    lp->headers = curl_slist_append(lp->headers, "Accept: text/event-stream");
    /* No "Expect: 100-continue" round trip for big prompts. */
    lp->headers = curl_slist_append(lp->headers, "Expect:");
    for (int i = 0; i < o->n_headers; i++)
        lp->headers = curl_slist_append(lp->headers, o->headers[i]);
    if (o->api_key) {
        char *h = NULL;
        if (asprintf(&h, "Authorization: Bearer %s", o->api_key) > 0) {
            lp->headers = curl_slist_append(lp->headers, h);
            free(h);
        }
    }
    return PD_OK;
}

static void loop_cleanup(loop_t *lp)
{
    for (int i = 0; i < lp->n_shards; i++)
        curl_multi_cleanup(lp->shards[i].multi);
    curl_slist_free_all(lp->headers);
    close(lp->epfd);
}

/* Drive n requests (bodies[i], arrival offsets at[i]) to completion.  results may be
 * NULL (warm-ups).  *t0_p is the run start, *t_end_p the last completion. */
static pd_status_t drive(loop_t *lp, const bench_opts_t *o, char **bodies, int n,
                         const double *at, bench_result_t *results, int show_progress,
                         double *t0_p, double *t_end_p, int *peak_p, int *n_sent_p)
{
    char **urls = calloc((size_t)o->n_base_urls, sizeof(char *));
    struct epoll_event evs[512];
    int next = 0, running = 0, peak = 0;
    double t0;
    pd_status_t status = PD_OK;

    if (!urls)
        return PD_ERR_NOMEM;
    for (int u = 0; u < o->n_base_urls; u++) {
        if (asprintf(&urls[u], "%s%s", o->base_urls[u], o->endpoint) < 0) {
            status = PD_ERR_NOMEM;
            goto out_free_urls;
        }
    }
    lp->finished = 0;
    t0 = pd_now_s();
    while (lp->finished < n) {
        double now = pd_now_s();
        if (bench_interrupted_g) {
            /* Ctrl-C: send nothing more, cancel what is in flight, report the rest. */
            while (lp->streams) {
                stream_t *st = lp->streams;
                set_error(st->res, BENCH_ERR_CANCELED, "interrupted");
                stream_finish(lp, st, CURLE_ABORTED_BY_CALLBACK);
            }
            n = next;
            break;
        }
        while (next < n && t0 + at[next] <= now &&
               (o->max_concurrency == 0 || lp->inflight < o->max_concurrency)) {
            bench_result_t *r = results ? &results[next] : NULL;
            status = stream_start(lp, o, urls[next % o->n_base_urls], bodies[next], r);
            if (status != PD_OK)
                goto out_free_urls;
            if (r)
                r->start_s = pd_now_s() - t0;
            next++;
            peak = PD_MAX(peak, lp->inflight);
        }
        /* Sleep until a socket is ready, curl's timer fires or the next arrival is due. */
        double wake = -1;
        for (int k = 0; k < lp->n_shards; k++) {
            double d = lp->shards[k].deadline;
            if (d >= 0 && (wake < 0 || d < wake))
                wake = d;
        }
        if (next < n && (o->max_concurrency == 0 || lp->inflight < o->max_concurrency)) {
            double arr = t0 + at[next];
            wake = wake < 0 ? arr : PD_MIN(wake, arr);
        }
        int timeout_ms;
        if (wake < 0)
            timeout_ms = 1000;
        else {
            double d = (wake - pd_now_s()) * 1000.0;
            timeout_ms = d <= 0 ? 0 : (int)ceil(d);
            if (timeout_ms > 1000)
                timeout_ms = 1000;
        }
        int ne = epoll_wait(lp->epfd, evs, (int)PD_ARRAY_SIZE(evs), timeout_ms);
        if (ne < 0 && errno != EINTR) {
            PD_LOG_ERR("epoll_wait: %s", strerror(errno));
            status = PD_ERR_IO;
            goto out_free_urls;
        }
        for (int i = 0; i < ne; i++) {
            int flags = ((evs[i].events & EPOLLIN) ? CURL_CSELECT_IN : 0) |
                        ((evs[i].events & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                        ((evs[i].events & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
            shard_t *sh = &lp->shards[evs[i].data.u64 >> 32];
            curl_multi_socket_action(sh->multi, (curl_socket_t)(evs[i].data.u64 & 0xffffffffu),
                                     flags, &running);
        }
        double tnow = pd_now_s();
        for (int k = 0; k < lp->n_shards; k++) {
            shard_t *sh = &lp->shards[k];
            if (sh->deadline >= 0 && tnow >= sh->deadline) {
                sh->deadline = -1;
                curl_multi_socket_action(sh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
            }
        }
        for (int k = 0; k < lp->n_shards; k++)
            drain_done(lp, &lp->shards[k]);
        if (show_progress)
            progress(lp->finished, n, pd_now_s() - t0, 0);
    }
    *t0_p = t0;
    *t_end_p = pd_now_s();
    *peak_p = peak;
    *n_sent_p = n;
    if (show_progress)
        progress(lp->finished, n, *t_end_p - t0, 1);
out_free_urls:
    for (int u = 0; u < o->n_base_urls; u++)
        free(urls[u]);
    free(urls);
    return status;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

pd_status_t bench_run_execute(const bench_opts_t *o, const char *model, const bench_dataset_t *ds,
                              double rate, bench_run_t *run_p)
{
    loop_t lp;
    pd_status_t status;
    char **bodies = NULL;
    double *at = NULL;
    bench_result_t *results = NULL;
    double t0, t_end, cpu0;
    int peak = 0, n = ds->n;
    int show = !o->disable_tqdm && isatty(2);

    if (n <= 0)
        return PD_ERR_INVAL;
    status = loop_init(&lp, o);
    if (status != PD_OK)
        return status;
    bodies = calloc((size_t)n, sizeof(char *));
    at = calloc((size_t)(n + o->num_warmups + 1), sizeof(double));
    results = calloc((size_t)n, sizeof(bench_result_t));
    if (!bodies || !at || !results) {
        status = PD_ERR_NOMEM;
        goto out;
    }
    for (int i = 0; i < n; i++) {
        bodies[i] = build_body(o, model, &ds->samples[i]);
        if (!bodies[i]) {
            status = PD_ERR_INVAL;
            goto out;
        }
        results[i].prompt_len = ds->samples[i].prompt_len;
    }

    if (o->num_warmups > 0) {
        /* Warm-ups: copies of the first request, all at once under the concurrency cap;
         * their timings are thrown away. */
        char **wb = calloc((size_t)o->num_warmups, sizeof(char *));
        if (!wb) {
            status = PD_ERR_NOMEM;
            goto out;
        }
        for (int i = 0; i < o->num_warmups; i++)
            wb[i] = bodies[0];
        if (!o->quiet)
            printf("Warming up with %d requests...\n", o->num_warmups);
        int n_sent = 0;
        status = drive(&lp, o, wb, o->num_warmups, at, NULL, show, &t0, &t_end, &peak, &n_sent);
        free(wb);
        if (status != PD_OK)
            goto out;
        if (!o->quiet)
            printf("Warmup run completed.\n");
    }

    if (o->ramp_strategy)
        bench_arrivals_ramp(o->ramp_strategy, o->ramp_start_rps, o->ramp_end_rps, o->burstiness,
                            o->seed, n, at);
    else
        bench_arrivals(rate, o->burstiness, o->seed, n, at);
    lp.bytes_rx = 0;
    cpu0 = cpu_seconds();
    int n_sent = n;
    status = drive(&lp, o, bodies, n, at, results, show, &t0, &t_end, &peak, &n_sent);
    if (status != PD_OK)
        goto out;
    run_p->rate = rate;
    run_p->duration_s = t_end - t0;
    run_p->results = results;
    run_p->n = n_sent;
    run_p->n_planned = n;
    run_p->interrupted = n_sent < n || bench_interrupted_g;
    run_p->peak_inflight = peak;
    run_p->cpu_s = cpu_seconds() - cpu0;
    run_p->bytes_rx = lp.bytes_rx;
    results = NULL;

out:
    if (results) {
        for (int i = 0; i < n; i++) {
            free(results[i].itl);
            free(results[i].error);
        }
        free(results);
    }
    if (bodies)
        for (int i = 0; i < n; i++)
            free(bodies[i]);
    free(bodies);
    free(at);
    loop_cleanup(&lp);
    return status;
}

void bench_run_cleanup(bench_run_t *run)
{
    for (int i = 0; i < run->n; i++) {
        free(run->results[i].itl);
        free(run->results[i].error);
    }
    free(run->results);
    memset(run, 0, sizeof(*run));
}
