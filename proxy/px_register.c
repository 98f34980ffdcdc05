/*
 * px_register.c - the ZeroMQ receiver nodes register with (--register-bind).
 *
 * One PULL socket bound to the configured address only.  Each message is one JSON
 * object (at most PX_REG_MAX_MSG bytes, checked by ZeroMQ before it allocates):
 *   {"type": "P"|"D", "http_address": "host:port", "zmq_address": "...",
 *    "load": n, "queue": n, "kv_usage": 0..1, "prefix_hashes": [...], "bye": false}
 * Unknown keys are ignored; wrong types or sizes drop the message (logged at debug).
 * Nothing from the wire is executed or deserialised beyond JSON.  The thread also
 * expires registered nodes whose last heartbeat is older than --heartbeat-timeout.
 */
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "pd_json.h"
#include "pd_log.h"
#include "px.h"

#define PX_REG_MAX_MSG 65536

struct px_register {
    void *ctx;
    void *sock;
    pthread_t thread;
    atomic_int run;
    uint64_t timeout_ns;
    px_pools_t *pools;
};

pd_status_t px_register_apply(px_pools_t *pools, const char *msg, size_t len)
{
    cJSON *root = NULL;
    pd_json_err_t je;
    pd_status_t st = pd_json_parse(msg, len, 8, 1, &root, &je);
    if (st != PD_OK)
        return PD_ERR_FORMAT;
    const char *type = NULL, *http = NULL, *zmqa = NULL;
    double load = 0, queue = 0, kv = 0;
    int bye = 0;
    const cJSON *hashes = NULL;
    st = PD_ERR_FORMAT;
    if (pd_json_get_string(root, "type", 8, &type, &je) != PD_OK || type == NULL ||
        (strcmp(type, "P") != 0 && strcmp(type, "D") != 0))
        goto done;
    if (pd_json_get_string(root, "http_address", PX_ADDR_MAX, &http, &je) != PD_OK || http == NULL)
        goto done;
    if (pd_json_get_string(root, "zmq_address", PX_ADDR_MAX - 1, &zmqa, &je) != PD_OK ||
        pd_json_get_double(root, "load", 0, 1e9, &load, &je) != PD_OK ||
        pd_json_get_double(root, "queue", 0, 1e9, &queue, &je) != PD_OK ||
        pd_json_get_double(root, "kv_usage", 0, 1, &kv, &je) != PD_OK ||
        pd_json_get_bool(root, "bye", &bye, &je) != PD_OK ||
        pd_json_get_array(root, "prefix_hashes", 4096, &hashes, &je) != PD_OK)
        goto done;
    px_role_t role = type[0] == 'P' ? PX_ROLE_PREFILL : PX_ROLE_DECODE;
    if (bye) {
        px_pools_leave(pools, role, http);
        st = PD_OK;
    } else {
        st = px_pools_heartbeat(pools, role, http, zmqa, load, queue, kv,
                                hashes ? (unsigned)cJSON_GetArraySize(hashes) : 0);
    }
done:
    cJSON_Delete(root);
    return st;
}

static void *reg_main(void *arg)
{
    px_register_t *r = arg;
    char *buf = malloc(PX_REG_MAX_MSG + 1);
    uint64_t last_expire = 0;
    while (buf && atomic_load(&r->run)) {
        zmq_pollitem_t it = {r->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, 200);
        if (rc > 0 && (it.revents & ZMQ_POLLIN)) {
            for (int k = 0; k < 256; k++) {
                int n = zmq_recv(r->sock, buf, PX_REG_MAX_MSG, ZMQ_DONTWAIT);
                if (n < 0)
                    break;
                if (n > PX_REG_MAX_MSG)
                    continue; /* truncated: cannot happen with ZMQ_MAXMSGSIZE, be safe */
                buf[n] = '\0';
                if (px_register_apply(r->pools, buf, (size_t)n) != PD_OK)
                    PD_LOG_DEBUG("proxy: dropped a malformed registration message (%d bytes)", n);
            }
        }
        uint64_t now = pd_now_ns();
        if (now - last_expire > 100000000ULL) {
            px_pools_expire(r->pools, now, r->timeout_ns);
            last_expire = now;
        }
    }
    free(buf);
    return NULL;
}

pd_status_t px_register_start(const char *bind_addr, double heartbeat_timeout_s, px_pools_t *pools,
                              px_register_t **reg_p)
{
    px_register_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return PD_ERR_NOMEM;
    r->pools = pools;
    r->timeout_ns = (uint64_t)(heartbeat_timeout_s * 1e9);
    r->ctx = zmq_ctx_new();
    r->sock = r->ctx ? zmq_socket(r->ctx, ZMQ_PULL) : NULL;
    if (r->sock == NULL)
        goto fail;
    int64_t maxmsg = PX_REG_MAX_MSG;
    int linger = 0, hwm = 10000;
    zmq_setsockopt(r->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
    zmq_setsockopt(r->sock, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(r->sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
    if (zmq_bind(r->sock, bind_addr) != 0) {
        PD_LOG_ERR("proxy: cannot bind the registration socket to %s: %s", bind_addr, zmq_strerror(zmq_errno()));
        goto fail;
    }
    atomic_store(&r->run, 1);
    if (pthread_create(&r->thread, NULL, reg_main, r) != 0)
        goto fail;
    PD_LOG_INFO("proxy: nodes register at %s (heartbeat timeout %.1f s)", bind_addr, heartbeat_timeout_s);
    *reg_p = r;
    return PD_OK;
fail:
    if (r->sock)
        zmq_close(r->sock);
    if (r->ctx)
        zmq_ctx_term(r->ctx);
    free(r);
    return PD_ERR_IO;
}

void px_register_stop(px_register_t *r)
{
    if (r == NULL)
        return;
    atomic_store(&r->run, 0);
    pthread_join(r->thread, NULL);
    zmq_close(r->sock);
    zmq_ctx_term(r->ctx);
    free(r);
}
