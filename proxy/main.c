/* pdserve-proxy - the OpenAI-compatible front door of a disaggregated cluster.
 * main() parses the options, starts the proxy, waits for SIGINT/SIGTERM (blocked in
 * every thread and taken with sigwait), drains for --drain-timeout and exits. */
#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>

#include "pd_log.h"
#include "px.h"
#include "px_args.h"

int main(int argc, char **argv)
{
    px_args_t args;
    pd_cli_action_t action;
    pd_log_level_t level;
    char err[512];
    int rc = 0;
    px_proxy_t *px = NULL;

    pd_log_set_tag("proxy");
    if (px_args_parse(argc, argv, &args, &action, err, sizeof(err)) != PD_OK) {
        px_args_free(&args);
        return 2;
    }
    if (action == PD_CLI_EXIT_OK) {
        px_args_free(&args);
        return 0;
    }
    if (pd_log_level_parse(args.uvicorn_log_level, &level) == PD_OK)
        pd_log_set_level(level);
    signal(SIGPIPE, SIG_IGN);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* every thread started later inherits it */
    curl_global_init(CURL_GLOBAL_ALL);
    pd_status_t st = px_proxy_create(&args, &px);
    if (st == PD_OK)
        st = px_proxy_start(px);
    if (st != PD_OK) {
        fprintf(stderr, "pdserve-proxy: error: cannot start: %s\n", pd_status_str(st));
        rc = 1;
        goto cleanup;
    }
    PD_LOG_INFO("proxy: serving on http%s://%s:%u (%zu prefill, %zu decode static nodes)",
                args.ssl_keyfile ? "s" : "", args.host ? args.host : "127.0.0.1", px_proxy_port(px),
                args.prefill.n, args.decode.n);
    int sig = 0;
    sigwait(&sigs, &sig);
    PD_LOG_INFO("proxy: signal %d: draining for up to %.0f s", sig, args.drain_timeout);
    px_proxy_drain(px, (uint64_t)(args.drain_timeout * 1000));
cleanup:
    px_proxy_destroy(px);
    curl_global_cleanup();
    px_args_free(&args);
    return rc;
}
