/*
 * pdserve-decode - the decode node binary: the `vllm serve` command line and the node
 * (engine + OpenAI-compatible HTTP server) in the decode role.  Everything lives in the
 * engine library (engine/eng_server.c); the binaries differ only in their role.
 */
#include "eng_server.h"

int main(int argc, char **argv) { return eng_node_cli_main(PD_ROLE_DECODE, argc, argv); }
