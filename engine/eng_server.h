/*
 * eng_server.h - the node server: an OpenAI-compatible HTTP API (pd_http) in front of
 * an engine, for both node roles.  With no --kv-transfer-config a decode node is a
 * complete single-node server.
 */
#ifndef ENG_SERVER_H
#define ENG_SERVER_H

#include "pd_serve_args.h"
#include "pd_status.h"

/* Run a node until SIGTERM/SIGINT (then drain for --drain-timeout seconds and exit) or,
 * with --generate, generate once and return.  Returns the process exit code. */
int eng_node_main(pd_node_role_t role, pd_serve_args_t *args);

/* The whole main() of a node binary: parse the `vllm serve` command line for the role,
 * set the log level, run the node.  Returns the process exit code (2 for bad options). */
int eng_node_cli_main(pd_node_role_t role, int argc, char **argv);

#endif /* ENG_SERVER_H */
