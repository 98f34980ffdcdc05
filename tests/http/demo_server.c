/*
 * demo_server.c - a tiny OpenAI-shaped server on the pd_http layer, for black-box tests
 * with the official openai client (tests/http/test_http_openai.py builds and runs it).
 *
 *   demo_server [--api-key KEY] [--root-path P]     prints "port N" once listening,
 *                                                   exits when stdin closes
 *
 * POST /v1/completions: validates with pd_json (max_tokens 1..64, temperature 0..2,
 * stream bool, prompt string); answers "tok0 tok1 ..." as one JSON or, with stream,
 * as SSE chunks from a separate thread then [DONE].  GET /v1/models, GET /health.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pd_http.h"
#include "pd_json.h"
#include "pd_log.h"
#include "pd_metrics.h"
#include "pd_util.h"

static void h_models(pd_http_req_t *req, void *user)
{
    (void)user;
    pd_http_respond_json(req, 200, NULL,
                         "{\"object\":\"list\",\"data\":[{\"id\":\"demo\",\"object\":\"model\","
                         "\"created\":0,\"owned_by\":\"pdserve\"}]}");
}

static void h_health(pd_http_req_t *req, void *user)
{
    (void)user;
    pd_http_respond_data(req, 200, "text/plain", "", 0);
}

typedef struct job {
    pd_http_stream_t *stream;
    int n;
    char id[40];
} job_t;

static void *streamer(void *arg)
{
    job_t *job = arg;
    char ev[256];
    for (int i = 0; i < job->n; i++) {
        snprintf(ev, sizeof(ev),
                 "{\"id\":\"%s\",\"object\":\"text_completion\",\"created\":0,\"model\":\"demo\","
                 "\"choices\":[{\"index\":0,\"text\":\"%stok%d\",\"logprobs\":null,"
                 "\"finish_reason\":%s}]}",
                 job->id, i ? " " : "", i, i + 1 == job->n ? "\"length\"" : "null");
        if (pd_http_sse_send(job->stream, ev) != PD_OK)
            break;
        usleep(2000);
    }
    pd_http_sse_done(job->stream);
    pd_http_stream_release(job->stream);
    free(job);
    return NULL;
}

static void h_completions(pd_http_req_t *req, void *user)
{
    (void)user;
    size_t len;
    const char *body = pd_http_req_body(req, &len);
    cJSON *root = NULL;
    pd_json_err_t err;
    if (pd_json_parse(body, len, 0, 1, &root, &err) != PD_OK) {
        pd_http_respond_error(req, 400, NULL, err.message, NULL, NULL);
        return;
    }
    int64_t max_tokens = 16;
    double temperature = 1.0;
    int stream = 0;
    const char *prompt = NULL;
    if (pd_json_get_int(root, "max_tokens", 1, 64, &max_tokens, &err) != PD_OK ||
        pd_json_get_double(root, "temperature", 0, 2, &temperature, &err) != PD_OK ||
        pd_json_get_bool(root, "stream", &stream, &err) != PD_OK ||
        pd_json_get_string(root, "prompt", 4096, &prompt, &err) != PD_OK) {
        pd_http_respond_error(req, 400, NULL, err.message, err.param, NULL);
        cJSON_Delete(root);
        return;
    }
    cJSON_Delete(root);
    if (stream) {
        job_t *job = calloc(1, sizeof(*job));
        job->n = (int)max_tokens;
        snprintf(job->id, sizeof(job->id), "cmpl-%s", pd_http_req_id(req));
        if (pd_http_stream_begin(req, "text/event-stream", NULL, NULL, &job->stream) != PD_OK) {
            free(job);
            return;
        }
        pthread_t t;
        pthread_create(&t, NULL, streamer, job);
        pthread_detach(t);
        return;
    }
    pd_buf_t text;
    pd_buf_init(&text);
    for (int64_t i = 0; i < max_tokens; i++)
        pd_buf_printf(&text, "%stok%lld", i ? " " : "", (long long)i);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", "cmpl-demo");
    cJSON_AddStringToObject(o, "object", "text_completion");
    cJSON_AddNumberToObject(o, "created", 0);
    cJSON_AddStringToObject(o, "model", "demo");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    cJSON_AddStringToObject(c, "text", text.data);
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", "length");
    cJSON_AddItemToArray(choices, c);
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", 1);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)max_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", (double)max_tokens + 1);
    pd_http_respond_json(req, 200, o, NULL);
    cJSON_Delete(o);
    pd_buf_cleanup(&text);
}

int main(int argc, char **argv)
{
    pd_http_config_t cfg;
    pd_http_config_init(&cfg);
    cfg.host = "127.0.0.1";
    cfg.port = 0;
    cfg.enable_request_id_headers = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--api-key") == 0)
            cfg.api_key = argv[i + 1];
        else if (strcmp(argv[i], "--root-path") == 0)
            cfg.root_path = argv[i + 1];
    }
    pd_log_set_level(PD_LOG_LEVEL_WARN);
    pd_http_server_t *srv;
    if (pd_http_server_create(&cfg, &srv) != PD_OK)
        return 1;
    pd_http_route(srv, "GET", "/v1/models", h_models, NULL);
    pd_http_route(srv, "POST", "/v1/completions", h_completions, NULL);
    pd_http_route(srv, "GET", "/health", h_health, NULL);
    if (pd_http_server_start(srv) != PD_OK)
        return 1;
    printf("port %u\n", pd_http_server_port(srv));
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof(buf)) > 0)
        ;
    pd_http_server_drain(srv, 1000);
    pd_http_server_destroy(srv);
    return 0;
}
