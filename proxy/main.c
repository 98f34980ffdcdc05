/* pdserve-proxy - the OpenAI-compatible front door of a disaggregated cluster. */
#include <stdio.h>

#include "pd_log.h"
#include "px_args.h"

int main(int argc, char **argv)
{
    px_args_t args;
    pd_cli_action_t action;
    pd_log_level_t level;
    char err[512];
    int rc;

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
    fprintf(stderr, "pdserve-proxy: error: the proxy is not built yet (see the open issues)\n");
    rc = 3;
    px_args_free(&args);
    return rc;
}
