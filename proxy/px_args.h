/*
 * px_args.h - pdserve-proxy's options, in the same table style as the node options
 * (pd_serve_args.h): one X-macro list generates the struct, the parser table and the
 * proxy section of docs/options.md.
 */
#ifndef PX_ARGS_H
#define PX_ARGS_H

#include "pd_cli.h"

#define PX_POLICY_CHOICES "round_robin,least_loaded,power_of_two,prefix_aware"

/* clang-format off */
#define PX_OPTIONS(X) \
  X("Server", host, "--host", NULL, STR, NULL, NULL, DIFFERS, "default None listens on 127.0.0.1 only; pass --host 0.0.0.0 to listen everywhere", 0, "host name or address to listen on") \
  X("Server", port, "--port", NULL, INT, "8000", NULL, WORKS, NULL, 0, "port to listen on") \
  X("Server", uvicorn_log_level, "--uvicorn-log-level", NULL, CHOICE, "info", "debug,info,warning,error,critical,trace", WORKS, NULL, 0, "log level") \
  X("Server", root_path, "--root-path", NULL, STR, NULL, NULL, WORKS, NULL, 0, "path prefix when behind a path-based routing proxy") \
  X("Server", enable_request_id_headers, "--enable-request-id-headers", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "add an X-Request-Id header to responses") \
  X("Server", disable_log_requests, "--disable-log-requests", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "do not log each request") \
  X("Server", max_concurrent_requests, "--max-concurrent-requests", NULL, INT, "4096", NULL, WORKS, NULL, 0, "requests in flight before new ones get 429") \
  X("Server", drain_timeout, "--drain-timeout", NULL, FLOAT, "30", NULL, WORKS, NULL, 0, "seconds to finish in-flight requests after SIGTERM") \
  X("Server", relay_threads, "--relay-threads", NULL, INT, "0", NULL, WORKS, NULL, 0, "upstream relay threads, each with its own libcurl connections and epoll loop; requests are spread over them in turn (0: one per 4 CPUs, 1 to 4)") \
  X("CORS", allow_credentials, "--allow-credentials", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "allow credentials in CORS requests") \
  X("CORS", allowed_origins, "--allowed-origins", NULL, JSON, "[\"*\"]", NULL, WORKS, NULL, PD_OPTF_JSON_STRARR, "allowed origins, a JSON list") \
  X("CORS", allowed_methods, "--allowed-methods", NULL, JSON, "[\"*\"]", NULL, WORKS, NULL, PD_OPTF_JSON_STRARR, "allowed methods, a JSON list") \
  X("CORS", allowed_headers, "--allowed-headers", NULL, JSON, "[\"*\"]", NULL, WORKS, NULL, PD_OPTF_JSON_STRARR, "allowed headers, a JSON list") \
  X("Security", api_key, "--api-key", NULL, STR, NULL, NULL, WORKS, NULL, PD_OPTF_SECRET, "require 'Authorization: Bearer KEY' on /v1 routes (also env PDSERVE_API_KEY)") \
  X("Security", upstream_api_key, "--upstream-api-key", NULL, STR, NULL, NULL, WORKS, NULL, PD_OPTF_SECRET, "api key the proxy sends to the nodes (env PDSERVE_UPSTREAM_API_KEY)") \
  X("Security", ssl_keyfile, "--ssl-keyfile", NULL, STR, NULL, NULL, WORKS, NULL, 0, "TLS private key file (PEM)") \
  X("Security", ssl_certfile, "--ssl-certfile", NULL, STR, NULL, NULL, WORKS, NULL, 0, "TLS certificate file (PEM)") \
  X("Security", ssl_ca_certs, "--ssl-ca-certs", NULL, STR, NULL, NULL, WORKS, NULL, 0, "CA certificates for verifying client certificates") \
  X("Security", ssl_cert_reqs, "--ssl-cert-reqs", NULL, INT, "0", "0,1,2", WORKS, NULL, 0, "client certificates: 0 none, 1 optional, 2 required") \
  X("Pools", prefill, "--prefill", NULL, LIST, NULL, NULL, WORKS, NULL, 0, "a prefill node's HTTP address host:port (or URL); repeatable") \
  X("Pools", decode, "--decode", NULL, LIST, NULL, NULL, WORKS, NULL, 0, "a decode node's HTTP address host:port (or URL); repeatable") \
  X("Pools", register_bind, "--register-bind", NULL, STR, NULL, NULL, WORKS, NULL, 0, "ZeroMQ address nodes register with and send heartbeats to, e.g. tcp://127.0.0.1:30001") \
  X("Pools", heartbeat_timeout, "--heartbeat-timeout", NULL, FLOAT, "5", NULL, WORKS, NULL, 0, "seconds without a heartbeat before a registered node leaves its pool") \
  X("Routing", policy, "--policy", NULL, CHOICE, "round_robin", PX_POLICY_CHOICES, WORKS, NULL, 0, "routing policy for both pools") \
  X("Routing", prefill_policy, "--prefill-policy", NULL, CHOICE, NULL, PX_POLICY_CHOICES, WORKS, NULL, 0, "routing policy for prefill nodes (default: --policy)") \
  X("Routing", decode_policy, "--decode-policy", NULL, CHOICE, NULL, PX_POLICY_CHOICES, WORKS, NULL, 0, "routing policy for decode nodes (default: --policy)") \
  X("Routing", disagg_min_prompt_tokens, "--disagg-min-prompt-tokens", NULL, INT, "0", NULL, WORKS, NULL, 0, "conditional disaggregation: prompts shorter than this go straight to decode (0: always split)") \
  X("Routing", stream_first_token, "--stream-first-token", NULL, BOOL, NULL, NULL, WORKS, NULL, 0, "stream the prefill node's first token to the client while the KV moves") \
  X("Routing", max_retries, "--max-retries", NULL, INT, "2", NULL, WORKS, NULL, 0, "retries on another node before any output was sent") \
  X("Routing", request_timeout, "--request-timeout", NULL, FLOAT, "600", NULL, WORKS, NULL, 0, "seconds before an upstream request is abandoned") \
  X("pdserve", config, "--config", NULL, STR, NULL, NULL, WORKS, NULL, 0, "read options from a YAML or JSON file (the command line wins)")
/* clang-format on */

enum {
#define PX_OPT_ENUM(g, field, name, alias, kind, def, ch, st, note, fl, help) PX_OPT_##field,
    PX_OPTIONS(PX_OPT_ENUM)
#undef PX_OPT_ENUM
    PX_N_OPTS
};

typedef struct px_args {
#define PX_OPT_FIELD(g, field, name, alias, kind, def, ch, st, note, fl, help) PD_OPT_T_##kind field;
    PX_OPTIONS(PX_OPT_FIELD)
#undef PX_OPT_FIELD
    bool set[PX_N_OPTS];
} px_args_t;

const pd_cli_spec_t *px_cli_spec(void);
pd_status_t px_args_parse(int argc, char **argv, px_args_t *args, pd_cli_action_t *action_p,
                          char *err, size_t errlen);
void px_args_free(px_args_t *args);

#endif /* PX_ARGS_H */
