/*
 * pd_serve_args.c - the node binaries' option table (generated from PD_SERVE_OPTIONS)
 * and the checks that span several options or depend on what pdserve implements.
 */
#include "pd_serve_args.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const pd_opt_t serve_opts[] = {
#define PD_OPT_ROW(g, field, name, alias, kind, def, ch, st, note, fl, help) \
    {g, name, alias, PD_OPT_##kind, def, ch, PD_OPT_##st, note, help, offsetof(pd_serve_args_t, field), fl},
    PD_SERVE_OPTIONS(PD_OPT_ROW)
#undef PD_OPT_ROW
};

static const pd_cli_spec_t serve_specs[2] = {
    [PD_ROLE_DECODE] = {
        "pdserve-decode",
        "pdserve decode node: an OpenAI-compatible server that decodes (and, on its own or\n"
        "without --kv-transfer-config, also prefills). Accepts the options of `vllm serve`.",
        serve_opts, sizeof(serve_opts) / sizeof(serve_opts[0]), sizeof(pd_serve_args_t),
        offsetof(pd_serve_args_t, set), "--model"},
    [PD_ROLE_PREFILL] = {
        "pdserve-prefill",
        "pdserve prefill node: an OpenAI-compatible server that prefills prompts and hands\n"
        "their KV blocks to decode nodes. Accepts the options of `vllm serve`.",
        serve_opts, sizeof(serve_opts) / sizeof(serve_opts[0]), sizeof(pd_serve_args_t),
        offsetof(pd_serve_args_t, set), "--model"},
};

const pd_cli_spec_t *pd_serve_cli_spec(pd_node_role_t role) { return &serve_specs[role]; }

static pd_status_t refuse(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static pd_status_t refuse(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return PD_ERR_INVAL;
}

static bool str_in(const char *v, const char *const *list)
{
    for (; *list; list++)
        if (v && strcmp(v, *list) == 0)
            return true;
    return false;
}

/* Checks that a single option's type and choices cannot express. */
static pd_status_t check_args(const pd_serve_args_t *a, char *err, size_t errlen)
{
    static const char *const load_ok[] = {"auto", "safetensors", "gguf", "dummy", NULL};
    static const char *const device_ok[] = {"auto", "cuda", "cpu", NULL};
    static const char *const quant_ok[] = {"gguf", "fp8", "None", NULL};
    static const char *const traces_ok[] = {"model", "worker", "all", "model,worker", "worker,model", NULL};

    if (a->port < 0 || a->port > 65535)
        return refuse(err, errlen, "--port: %lld is out of range (0 to 65535)", (long long)a->port);
    if (!(a->gpu_memory_utilization > 0.0 && a->gpu_memory_utilization <= 1.0))
        return refuse(err, errlen, "--gpu-memory-utilization: %g is out of range (0, 1]", a->gpu_memory_utilization);
    if (a->swap_space < 0)
        return refuse(err, errlen, "--swap-space: %g must be >= 0", a->swap_space);
    if (a->set[PD_SERVE_OPT_cpu_kvcache_space] && a->cpu_kvcache_space <= 0)
        return refuse(err, errlen, "--cpu-kvcache-space: %g must be > 0", a->cpu_kvcache_space);
    if (a->set[PD_SERVE_OPT_max_model_len] && a->max_model_len < 1)
        return refuse(err, errlen, "--max-model-len: %lld must be >= 1", (long long)a->max_model_len);
    if (a->set[PD_SERVE_OPT_max_num_seqs] && (a->max_num_seqs < 1 || a->max_num_seqs > 65536))
        return refuse(err, errlen, "--max-num-seqs: %lld is out of range (1 to 65536)", (long long)a->max_num_seqs);
    if (a->set[PD_SERVE_OPT_max_num_batched_tokens] && a->max_num_batched_tokens < 1)
        return refuse(err, errlen, "--max-num-batched-tokens: %lld must be >= 1", (long long)a->max_num_batched_tokens);
    if (a->set[PD_SERVE_OPT_num_gpu_blocks_override] && a->num_gpu_blocks_override < 1)
        return refuse(err, errlen, "--num-gpu-blocks-override: %lld must be >= 1", (long long)a->num_gpu_blocks_override);
    if (a->max_logprobs < -1)
        return refuse(err, errlen, "--max-logprobs: %lld must be >= -1 (-1: the vocabulary size)", (long long)a->max_logprobs);
    if (a->set[PD_SERVE_OPT_max_log_len] && a->max_log_len < 0)
        return refuse(err, errlen, "--max-log-len: %lld must be >= 0", (long long)a->max_log_len);
    if (a->scheduler_delay_factor < 0)
        return refuse(err, errlen, "--scheduler-delay-factor: %g must be >= 0", a->scheduler_delay_factor);
    if (a->max_seq_len_to_capture < 1)
        return refuse(err, errlen, "--max-seq-len-to-capture: %lld must be >= 1", (long long)a->max_seq_len_to_capture);
    if (a->cpu_threads < 0 || a->cpu_threads > 4096)
        return refuse(err, errlen, "--cpu-threads: %lld is out of range (0 to 4096)", (long long)a->cpu_threads);
    if (a->drain_timeout < 0)
        return refuse(err, errlen, "--drain-timeout: %g must be >= 0", a->drain_timeout);
    if (a->max_tokens < 1)
        return refuse(err, errlen, "--max-tokens: %lld must be >= 1", (long long)a->max_tokens);
    if (a->tensor_parallel_size < 1)
        return refuse(err, errlen, "--tensor-parallel-size: %lld must be >= 1", (long long)a->tensor_parallel_size);
    if (a->pipeline_parallel_size < 1)
        return refuse(err, errlen, "--pipeline-parallel-size: %lld must be >= 1", (long long)a->pipeline_parallel_size);
    if ((a->ssl_keyfile == NULL) != (a->ssl_certfile == NULL))
        return refuse(err, errlen, "--ssl-keyfile and --ssl-certfile must be given together");
    if (a->ssl_cert_reqs > 0 && a->ssl_ca_certs == NULL)
        return refuse(err, errlen, "--ssl-cert-reqs %lld needs --ssl-ca-certs to verify client certificates", (long long)a->ssl_cert_reqs);
    if (a->ssl_cert_reqs > 0 && a->ssl_certfile == NULL)
        return refuse(err, errlen, "--ssl-cert-reqs %lld needs --ssl-keyfile and --ssl-certfile", (long long)a->ssl_cert_reqs);
    if (!str_in(a->load_format, load_ok))
        return refuse(err, errlen, "--load-format: '%s' is not supported yet (auto, safetensors, gguf and dummy work)", a->load_format);
    if (!str_in(a->device, device_ok))
        return refuse(err, errlen, "--device: '%s' is not supported yet (auto, cuda and cpu work)", a->device);
    if (a->quantization && !str_in(a->quantization, quant_ok))
        return refuse(err, errlen, "--quantization: '%s' is not supported yet (gguf, fp8 and None work: GGUF files keep their own quantization)", a->quantization);
    if (strcmp(a->tokenizer_mode, "mistral") == 0)
        return refuse(err, errlen, "--tokenizer-mode: 'mistral' is not supported yet (auto and slow work)");
    if (strcmp(a->config_format, "mistral") == 0)
        return refuse(err, errlen, "--config-format: 'mistral' is not supported yet (auto and hf work)");
    if (strcmp(a->model_impl, "transformers") == 0)
        return refuse(err, errlen, "--model-impl: 'transformers' is not supported yet (pdserve has its own implementation of each architecture)");
    if (a->distributed_executor_backend && (strcmp(a->distributed_executor_backend, "ray") == 0 ||
                                            strcmp(a->distributed_executor_backend, "external_launcher") == 0))
        return refuse(err, errlen, "--distributed-executor-backend: '%s' is not supported yet (one process per node: uni or mp)", a->distributed_executor_backend);
    if (a->collect_detailed_traces && !str_in(a->collect_detailed_traces, traces_ok))
        return refuse(err, errlen, "--collect-detailed-traces: '%s' is not one of model, worker, all", a->collect_detailed_traces);
    if (a->compilation_config) {
        const cJSON *lv = cJSON_GetObjectItemCaseSensitive(a->compilation_config, "level");
        if (lv && (!cJSON_IsNumber(lv) || lv->valuedouble < 0 || lv->valuedouble > 3 ||
                   lv->valuedouble != (double)(int)lv->valuedouble))
            return refuse(err, errlen, "--compilation-config: level must be 0, 1, 2 or 3");
    }
    if (strcmp(a->task, "auto") != 0 && strcmp(a->task, "generate") != 0)
        return refuse(err, errlen, "--task: '%s' is not supported yet (auto and generate work)", a->task);
    if (a->enable_auto_tool_choice && a->tool_call_parser == NULL)
        return refuse(err, errlen, "--enable-auto-tool-choice needs --tool-call-parser");
    if (a->enable_reasoning && a->reasoning_parser == NULL)
        return refuse(err, errlen, "--enable-reasoning needs --reasoning-parser");
    return PD_OK;
}

pd_status_t pd_serve_args_parse(pd_node_role_t role, int argc, char **argv, pd_serve_args_t *args,
                                pd_cli_action_t *action_p, char *err, size_t errlen)
{
    const pd_cli_spec_t *spec = pd_serve_cli_spec(role);
    pd_status_t st = pd_cli_parse(spec, argc, argv, args, PD_VERSION " (" PD_GIT_REV ")", action_p, err, errlen);

    if (st != PD_OK || *action_p != PD_CLI_RUN)
        return st;
    if (args->api_key == NULL) {
        const char *k = getenv("PDSERVE_API_KEY");
        if (k == NULL || *k == '\0')
            k = getenv("VLLM_API_KEY");
        if (k && *k && (args->api_key = strdup(k)) == NULL)
            return PD_ERR_NOMEM;
    }
    st = pd_cli_check_unsupported(spec, args, err, errlen);
    if (st == PD_OK)
        st = check_args(args, err, errlen);
    if (st != PD_OK) {
        fprintf(stderr, "%s: error: %s\n", spec->prog, err);
        return st;
    }
    return PD_OK;
}

void pd_serve_args_free(pd_node_role_t role, pd_serve_args_t *args)
{
    pd_cli_free(pd_serve_cli_spec(role), args);
}
