/*
 * pd_register.c - heartbeats from a node to pdserve-proxy over ZeroMQ PUSH (see
 * pd_register.h).  One thread, one socket; the message is built with cJSON so every
 * string is escaped.  Sends never block: with the proxy away, heartbeats are dropped.
 */
#include "pd_register.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "pd_log.h"
#include "pd_util.h"

struct pd_register {
    void *ctx, *sock;
    char type[2];
    char *http_address, *zmq_address;
    double interval_s;
    pd_register_stats_cb_t cb;
    void *user;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int run;
};

static char *build(const pd_register_t *r, const pd_register_stats_t *s, int bye)
{
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return NULL;
    cJSON_AddStringToObject(o, "type", r->type);
    cJSON_AddStringToObject(o, "http_address", r->http_address);
    if (bye) {
        cJSON_AddTrueToObject(o, "bye");
    } else {
        if (r->zmq_address)
            cJSON_AddStringToObject(o, "zmq_address", r->zmq_address);
        cJSON_AddNumberToObject(o, "load", s->load >= 0 ? s->load : 0);
        cJSON_AddNumberToObject(o, "queue", s->queue >= 0 ? s->queue : 0);
        cJSON_AddNumberToObject(o, "kv_usage", s->kv_usage < 0 ? 0 : s->kv_usage > 1 ? 1 : s->kv_usage);
        cJSON *a = cJSON_AddArrayToObject(o, "prefix_hashes");
        for (size_t i = 0; a && i < s->n_prefix_hashes && i < PD_REGISTER_MAX_HASHES; i++) {
            char hex[17];
            snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)s->prefix_hashes[i]);
            cJSON_AddItemToArray(a, cJSON_CreateString(hex));
        }
    }
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return txt;
}

static void send_one(pd_register_t *r, int bye)
{
    pd_register_stats_t s;
    memset(&s, 0, sizeof(s));
    if (!bye && r->cb)
        r->cb(&s, r->user);
    char *txt = build(r, &s, bye);
    if (txt == NULL)
        return;
    if (zmq_send(r->sock, txt, strlen(txt), ZMQ_DONTWAIT) < 0)
        PD_LOG_DEBUG("register: heartbeat dropped: %s", zmq_strerror(zmq_errno()));
    free(txt);
}

static void *reg_main(void *arg)
{
    pd_register_t *r = arg;
    pthread_mutex_lock(&r->lock);
    while (r->run) {
        pthread_mutex_unlock(&r->lock);
        send_one(r, 0);
        pthread_mutex_lock(&r->lock);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)(r->interval_s * 1e9);
        ts.tv_sec += (time_t)(ns / 1000000000ULL);
        ts.tv_nsec = (long)(ns % 1000000000ULL);
        if (r->run)
            pthread_cond_timedwait(&r->cond, &r->lock, &ts);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

pd_status_t pd_register_start(const char *proxy_addr, const pd_register_info_t *info,
                              pd_register_stats_cb_t stats_cb, void *user, pd_register_t **reg_p)
{
    if (proxy_addr == NULL || info == NULL || reg_p == NULL || info->type == NULL ||
        (strcmp(info->type, "P") != 0 && strcmp(info->type, "D") != 0) || info->http_address == NULL ||
        info->http_address[0] == '\0' || strlen(info->http_address) > 256)
        return PD_ERR_INVAL;
    pd_register_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return PD_ERR_NOMEM;
    r->type[0] = info->type[0];
    r->http_address = strdup(info->http_address);
    r->zmq_address = info->zmq_address ? strdup(info->zmq_address) : NULL;
    r->interval_s = info->interval_s > 0 ? info->interval_s : 1.0;
    r->cb = stats_cb;
    r->user = user;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    pd_status_t st = PD_ERR_IO;
    r->ctx = zmq_ctx_new();
    r->sock = r->ctx ? zmq_socket(r->ctx, ZMQ_PUSH) : NULL;
    if (r->sock == NULL || r->http_address == NULL)
        goto fail;
    int hwm = 4, linger = 200;
    zmq_setsockopt(r->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(r->sock, ZMQ_LINGER, &linger, sizeof(linger));
    if (zmq_connect(r->sock, proxy_addr) != 0) {
        PD_LOG_ERR("register: cannot connect to the proxy at %s: %s", proxy_addr, zmq_strerror(zmq_errno()));
        st = PD_ERR_INVAL;
        goto fail;
    }
    r->run = 1;
    if (pthread_create(&r->thread, NULL, reg_main, r) != 0) {
        st = PD_ERR_INTERNAL;
        goto fail;
    }
    PD_LOG_INFO("register: heartbeats to %s every %.1f s as %s node %s", proxy_addr, r->interval_s, r->type,
                r->http_address);
    *reg_p = r;
    return PD_OK;
fail:
    if (r->sock)
        zmq_close(r->sock);
    if (r->ctx)
        zmq_ctx_term(r->ctx);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
    free(r->http_address);
    free(r->zmq_address);
    free(r);
    return st;
}

void pd_register_stop(pd_register_t *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->lock);
    r->run = 0;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->thread, NULL);
    send_one(r, 1);
    zmq_close(r->sock); /* lingers up to 200 ms to deliver the goodbye */
    zmq_ctx_term(r->ctx);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
    free(r->http_address);
    free(r->zmq_address);
    free(r);
}
