/*
 * pdserve-prefill - the prefill node binary: parses the `vllm serve` command line and runs
 * the node (engine + OpenAI-compatible HTTP server) in the prefill role.
 */
#include <stdio.h>
#include <stdlib.h>

#include "eng_disagg.h"
#include "eng_server.h"
#include "pd_log.h"
#include "pd_serve_args.h"

int main(int argc, char **argv)
{
    pd_serve_args_t args;
    pd_cli_action_t action;
    pd_log_level_t level;
    char err[512];
    int rc;

    /* before anything initialises UCX (needs a fresh image: docs/disagg.md) */
    eng_disagg_early_env(argc, argv);
    pd_log_set_tag("prefill");
    if (pd_serve_args_parse(PD_ROLE_PREFILL, argc, argv, &args, &action, err, sizeof(err)) != PD_OK) {
        pd_serve_args_free(PD_ROLE_PREFILL, &args);
        return 2;
    }
    if (action == PD_CLI_EXIT_OK) {
        pd_serve_args_free(PD_ROLE_PREFILL, &args);
        return 0;
    }
    if (pd_log_level_parse(args.uvicorn_log_level, &level) == PD_OK)
        pd_log_set_level(level);
    rc = eng_node_main(PD_ROLE_PREFILL, &args);
    pd_serve_args_free(PD_ROLE_PREFILL, &args);
    return rc;
}
