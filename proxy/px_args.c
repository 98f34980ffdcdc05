/* px_args.c - pdserve-proxy's option table and the checks across options. */
#include "px_args.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const pd_opt_t px_opts[] = {
#define PX_OPT_ROW(g, field, name, alias, kind, def, ch, st, note, fl, help) \
    {g, name, alias, PD_OPT_##kind, def, ch, PD_OPT_##st, note, help, offsetof(px_args_t, field), fl},
    PX_OPTIONS(PX_OPT_ROW)
#undef PX_OPT_ROW
};

static const pd_cli_spec_t px_spec = {
    "pdserve-proxy",
    "pdserve proxy: the OpenAI-compatible front door that splits each request into a\n"
    "prefill run on one node and a decode run on another.",
    px_opts, sizeof(px_opts) / sizeof(px_opts[0]), sizeof(px_args_t), offsetof(px_args_t, set), NULL};

const pd_cli_spec_t *px_cli_spec(void) { return &px_spec; }

pd_status_t px_args_parse(int argc, char **argv, px_args_t *a, pd_cli_action_t *action_p,
                          char *err, size_t errlen)
{
    pd_status_t st = pd_cli_parse(&px_spec, argc, argv, a, PD_VERSION " (" PD_GIT_REV ")", action_p, err, errlen);
    const char *msg = NULL;
    char buf[256];

    if (st != PD_OK || *action_p != PD_CLI_RUN)
        return st;
    if (a->api_key == NULL && getenv("PDSERVE_API_KEY") && *getenv("PDSERVE_API_KEY"))
        a->api_key = strdup(getenv("PDSERVE_API_KEY"));
    if (a->upstream_api_key == NULL && getenv("PDSERVE_UPSTREAM_API_KEY") && *getenv("PDSERVE_UPSTREAM_API_KEY"))
        a->upstream_api_key = strdup(getenv("PDSERVE_UPSTREAM_API_KEY"));
    /* same style as the node checks: the option, the bad value, what is accepted */
    if (a->port < 0 || a->port > 65535) {
        snprintf(buf, sizeof(buf), "--port: %lld is out of range (0 to 65535)", (long long)a->port);
        msg = buf;
    } else if ((a->ssl_keyfile == NULL) != (a->ssl_certfile == NULL)) {
        msg = "--ssl-keyfile and --ssl-certfile must be given together";
    } else if (a->ssl_cert_reqs > 0 && a->ssl_ca_certs == NULL) {
        snprintf(buf, sizeof(buf), "--ssl-cert-reqs %lld needs --ssl-ca-certs to verify client certificates",
                 (long long)a->ssl_cert_reqs);
        msg = buf;
    } else if (a->decode.n == 0 && a->register_bind == NULL) {
        msg = "no decode nodes: give --decode host:port (repeatable) or --register-bind for nodes that register";
    } else if (a->max_retries < 0 || a->max_retries > 16) {
        snprintf(buf, sizeof(buf), "--max-retries: %lld is out of range (0 to 16)", (long long)a->max_retries);
        msg = buf;
    } else if (!(a->request_timeout > 0)) {
        snprintf(buf, sizeof(buf), "--request-timeout: %g must be > 0", a->request_timeout);
        msg = buf;
    } else if (!(a->heartbeat_timeout > 0)) {
        snprintf(buf, sizeof(buf), "--heartbeat-timeout: %g must be > 0", a->heartbeat_timeout);
        msg = buf;
    } else if (!(a->drain_timeout >= 0)) {
        snprintf(buf, sizeof(buf), "--drain-timeout: %g must be >= 0", a->drain_timeout);
        msg = buf;
    } else if (a->disagg_min_prompt_tokens < 0) {
        snprintf(buf, sizeof(buf), "--disagg-min-prompt-tokens: %lld must be >= 0", (long long)a->disagg_min_prompt_tokens);
        msg = buf;
    } else if (a->max_concurrent_requests < 1) {
        snprintf(buf, sizeof(buf), "--max-concurrent-requests: %lld must be >= 1", (long long)a->max_concurrent_requests);
        msg = buf;
    } else if (a->relay_threads < 0 || a->relay_threads > 64) {
        snprintf(buf, sizeof(buf), "--relay-threads: %lld is out of range (0 to 64; 0: one per 4 CPUs, at most 4)",
                 (long long)a->relay_threads);
        msg = buf;
    }
    if (msg) {
        snprintf(err, errlen, "%s", msg);
        fprintf(stderr, "pdserve-proxy: error: %s\n", err);
        return PD_ERR_INVAL;
    }
    return PD_OK;
}

void px_args_free(px_args_t *args) { pd_cli_free(&px_spec, args); }
