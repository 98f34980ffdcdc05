/*
 * test_cli.c - the command-line parser: every seed option accepted with a valid value,
 * defaults, aliases, negation, lists, JSON and dotted JSON, --config (YAML and JSON,
 * command line wins), every kind of error, "not supported yet", and docs/options.md
 * being exactly what the table generates.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pd_log.h"
#include "pd_serve_args.h"
#include "pd_test.h"
#include "pd_util.h"

static const pd_cli_spec_t *spec(void) { return pd_serve_cli_spec(PD_ROLE_DECODE); }

/* parse a NULL-terminated word list (argv[0] added) */
static pd_status_t parse_words(pd_serve_args_t *a, char *err, size_t errlen, const char *const *words)
{
    char *argv[64];
    int argc = 0;
    pd_cli_action_t action;
    argv[argc++] = "pdserve-decode";
    for (; *words; words++)
        argv[argc++] = (char *)*words;
    argv[argc] = NULL;
    return pd_cli_parse(spec(), argc, argv, a, "test", &action, err, errlen);
}

#define PARSE(a, err, ...) parse_words((a), (err), sizeof(err), (const char *const[]){__VA_ARGS__, NULL})

/* a valid non-default-ish value for an option, from its table row */
static const char *valid_value(const pd_opt_t *o, char *buf, size_t n)
{
    switch (o->kind) {
    case PD_OPT_BOOL:
        return NULL;
    case PD_OPT_INT:
        if (o->choices) {
            const char *c = strchr(o->choices, ',');
            snprintf(buf, n, "%.*s", c ? (int)(c - o->choices) : (int)strlen(o->choices), o->choices);
            return buf;
        }
        return "2";
    case PD_OPT_FLOAT:
        return "0.5";
    case PD_OPT_STR:
        return "x";
    case PD_OPT_CHOICE: {
        const char *c = strchr(o->choices, ',');
        snprintf(buf, n, "%.*s", c ? (int)(c - o->choices) : (int)strlen(o->choices), o->choices);
        return buf;
    }
    case PD_OPT_JSON:
        return (o->flags & PD_OPTF_JSON_STRARR) ? "[\"a\"]" : "{\"k\": 1}";
    case PD_OPT_LIST:
        return "item";
    }
    return "x";
}

PD_TEST(test_every_seed_option_accepted)
{
    char path[1024], line[256], err[512], buf[256];
    const char *src = getenv("PD_SOURCE_DIR");
    FILE *f;
    int n = 0;

    snprintf(path, sizeof(path), "%s/tests/data/seed_options.txt", src ? src : ".");
    f = fopen(path, "r");
    PD_CHECK(f != NULL);
    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '\0')
            continue;
        const pd_opt_t *o = pd_cli_find(spec(), line);
        if (o == NULL && strncmp(line, "--no-", 5) == 0) {
            char pos[256];
            pd_serve_args_t a;
            snprintf(pos, sizeof(pos), "--%s", line + 5);
            o = pd_cli_find(spec(), pos);
            PD_CHECK(o != NULL && (o->flags & PD_OPTF_NEGATABLE));
            PD_CHECK_STATUS(PARSE(&a, err, line), PD_OK);
            PD_CHECK(pd_cli_is_set(spec(), &a, pos));
            pd_cli_free(spec(), &a);
            n++;
            continue;
        }
        if (o == NULL) {
            fprintf(stderr, "  seed option %s missing from the table\n", line);
            PD_CHECK(o != NULL);
            continue;
        }
        /* --no-enable-prefix-caching is the negated form of its option */
        pd_serve_args_t a;
        const char *v = valid_value(o, buf, sizeof(buf));
        pd_status_t st = v ? PARSE(&a, err, line, v) : PARSE(&a, err, line);
        if (st != PD_OK)
            fprintf(stderr, "  %s %s: %s\n", line, v ? v : "", err);
        PD_CHECK_STATUS(st, PD_OK);
        PD_CHECK(pd_cli_is_set(spec(), &a, line));
        pd_cli_free(spec(), &a);
        n++;
    }
    fclose(f);
    PD_CHECK(n == 131);
    /* the help text names every seed option */
    char *help = NULL;
    size_t help_len = 0;
    FILE *mem = open_memstream(&help, &help_len);
    pd_cli_print_help(spec(), mem);
    fclose(mem);
    f = fopen(path, "r");
    while (f && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] && strncmp(line, "--no-", 5) != 0)
            PD_CHECK(strstr(help, line) != NULL);
    }
    if (f)
        fclose(f);
    PD_CHECK(strstr(help, "--no-enable-prefix-caching") != NULL);
    PD_CHECK(strstr(help, "\nCORS:\n") && strstr(help, "\nSpeculative decoding:\n") && strstr(help, "\nLoRA and adapters:\n"));
    free(help);
}

PD_TEST(test_defaults)
{
    pd_serve_args_t a;
    char err[256];
    PD_CHECK_STATUS(pd_cli_defaults(spec(), &a, err, sizeof(err)), PD_OK);
    PD_CHECK_EQ_INT(a.port, 8000);
    PD_CHECK_EQ_STR(a.dtype, "auto");
    PD_CHECK_EQ_STR(a.uvicorn_log_level, "info");
    PD_CHECK(a.gpu_memory_utilization == 0.9);
    PD_CHECK(a.swap_space == 4.0);
    PD_CHECK_EQ_INT(a.max_logprobs, 20);
    PD_CHECK_EQ_INT(a.max_seq_len_to_capture, 8192);
    PD_CHECK_EQ_INT(a.seed, 0);
    PD_CHECK(a.enable_prefix_caching == true);
    PD_CHECK(a.enable_lora == false);
    PD_CHECK(a.host == NULL && a.max_model_len == 0 && !a.set[PD_SERVE_OPT_max_model_len]);
    PD_CHECK(cJSON_IsArray(a.allowed_origins) && cJSON_GetArraySize(a.allowed_origins) == 1);
    PD_CHECK_EQ_STR(a.scheduling_policy, "fcfs");
    PD_CHECK(a.kv_transfer_config == NULL);
    PD_CHECK(a.served_model_name.n == 0);
    pd_cli_free(spec(), &a);
}

/* every option holds its declared default after pd_cli_defaults, and no option is marked
 * as given; unset (None) options read as None / false / 0 / empty */
PD_TEST(test_every_default)
{
    pd_serve_args_t a;
    char err[256], buf[512];
    PD_CHECK_STATUS(pd_cli_defaults(spec(), &a, err, sizeof(err)), PD_OK);
    for (size_t i = 0; i < spec()->n_opts; i++) {
        const pd_opt_t *o = &spec()->opts[i];
        bool ok;
        PD_CHECK(!pd_cli_is_set(spec(), &a, o->name));
        PD_CHECK_STATUS(pd_cli_value_text(spec(), &a, o->name, buf, sizeof(buf)), PD_OK);
        if (o->def == NULL) {
            static const char *const none[] = {[PD_OPT_BOOL] = "false", [PD_OPT_INT] = "0", [PD_OPT_FLOAT] = "0",
                                               [PD_OPT_STR] = "None", [PD_OPT_CHOICE] = "None",
                                               [PD_OPT_JSON] = "None", [PD_OPT_LIST] = ""};
            ok = strcmp(buf, none[o->kind]) == 0;
        } else if (o->kind == PD_OPT_FLOAT) {
            ok = strtod(buf, NULL) == strtod(o->def, NULL);
        } else if (o->kind == PD_OPT_JSON) {
            cJSON *d = cJSON_Parse(o->def), *v = cJSON_Parse(buf);
            ok = d && v && cJSON_Compare(d, v, 1);
            cJSON_Delete(d);
            cJSON_Delete(v);
        } else {
            ok = strcmp(buf, o->def) == 0;
        }
        if (!ok)
            fprintf(stderr, "  %s: default reads '%s', table says '%s'\n", o->name, buf, o->def ? o->def : "None");
        PD_CHECK(ok);
    }
    pd_cli_free(spec(), &a);
}

/* vLLM's own defaults for `vllm serve` (the version the seed list describes), written
 * down independently of the table; pdserve's --model and --host differ on purpose and
 * say so in docs/options.md */
PD_TEST(test_vllm_defaults)
{
    static const char *const want[][2] = {
        {"--port", "8000"}, {"--uvicorn-log-level", "info"}, {"--allowed-origins", "[\"*\"]"},
        {"--allowed-methods", "[\"*\"]"}, {"--allowed-headers", "[\"*\"]"}, {"--ssl-cert-reqs", "0"},
        {"--allow-credentials", "false"}, {"--tool-parser-plugin", ""}, {"--allowed-local-media-path", ""},
        {"--task", "auto"}, {"--tokenizer-mode", "auto"}, {"--config-format", "auto"}, {"--dtype", "auto"},
        {"--load-format", "auto"}, {"--kv-cache-dtype", "auto"}, {"--model-impl", "auto"}, {"--seed", "0"},
        {"--guided-decoding-backend", "xgrammar"}, {"--block-size", "0"}, {"--swap-space", "4"},
        {"--cpu-offload-gb", "0"}, {"--gpu-memory-utilization", "0.9"}, {"--max-logprobs", "20"},
        {"--pipeline-parallel-size", "1"}, {"--tensor-parallel-size", "1"}, {"--device", "auto"},
        {"--worker-cls", "auto"}, {"--tokenizer-pool-size", "0"}, {"--tokenizer-pool-type", "ray"},
        {"--scheduling-policy", "fcfs"}, {"--scheduler-delay-factor", "0"}, {"--num-scheduler-steps", "1"},
        {"--multi-step-stream-outputs", "true"}, {"--num-lookahead-slots", "0"}, {"--max-seq-len-to-capture", "8192"},
        {"--use-v2-block-manager", "true"}, {"--enforce-eager", "false"}, {"--trust-remote-code", "false"},
        {"--spec-decoding-acceptance-method", "rejection_sampler"}, {"--max-loras", "1"}, {"--max-lora-rank", "16"},
        {"--lora-extra-vocab-size", "256"}, {"--lora-dtype", "auto"}, {"--max-prompt-adapters", "1"},
        {"--max-prompt-adapter-token", "0"}, {"--enable-lora", "false"}, {"--quantization", "None"},
        {"--max-model-len", "0"}, {"--kv-transfer-config", "None"}, {"--served-model-name", ""},
        {"--middleware", ""}, {"--distributed-executor-backend", "None"}, {"--enable-prefix-caching", "true"},
    };
    pd_serve_args_t a;
    char err[256], buf[256];
    PD_CHECK_STATUS(pd_cli_defaults(spec(), &a, err, sizeof(err)), PD_OK);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        PD_CHECK_STATUS(pd_cli_value_text(spec(), &a, want[i][0], buf, sizeof(buf)), PD_OK);
        bool ok = strcmp(buf, want[i][1]) == 0 ||
                  (want[i][1][0] >= '0' && want[i][1][0] <= '9' && strtod(buf, NULL) == strtod(want[i][1], NULL));
        if (!ok)
            fprintf(stderr, "  %s: '%s', vLLM: '%s'\n", want[i][0], buf, want[i][1]);
        PD_CHECK(ok);
    }
    pd_cli_free(spec(), &a);
}

PD_TEST(test_forms)
{
    pd_serve_args_t a;
    char err[512];

    PD_CHECK_STATUS(PARSE(&a, err, "--port=9001", "--max-num-seqs", "7", "-tp", "1", "-pp=1", "-q", "gguf",
                          "--dtype", "bfloat16", "-spec-draft-tp", "1"), PD_OK);
    PD_CHECK_EQ_INT(a.port, 9001);
    PD_CHECK_EQ_INT(a.max_num_seqs, 7);
    PD_CHECK_EQ_INT(a.tensor_parallel_size, 1);
    PD_CHECK_EQ_STR(a.quantization, "gguf");
    PD_CHECK_EQ_STR(a.dtype, "bfloat16");
    pd_cli_free(spec(), &a);

    /* -O3, -O 3, -O '{"level": 2}' */
    PD_CHECK_STATUS(PARSE(&a, err, "-O3"), PD_OK);
    PD_CHECK(cJSON_GetObjectItem(a.compilation_config, "level")->valuedouble == 3);
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "-O", "0"), PD_OK);
    PD_CHECK(cJSON_GetObjectItem(a.compilation_config, "level")->valuedouble == 0);
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--compilation-config", "{\"level\": 2}"), PD_OK);
    PD_CHECK(cJSON_GetObjectItem(a.compilation_config, "level")->valuedouble == 2);
    pd_cli_free(spec(), &a);

    /* negation and optional boolean values */
    PD_CHECK_STATUS(PARSE(&a, err, "--no-enable-prefix-caching", "--enable-chunked-prefill", "false"), PD_OK);
    PD_CHECK(!a.enable_prefix_caching);
    PD_CHECK(!a.enable_chunked_prefill && a.set[PD_SERVE_OPT_enable_chunked_prefill]);
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--enable-chunked-prefill", "--enforce-eager"), PD_OK);
    PD_CHECK(a.enable_chunked_prefill && a.enforce_eager);
    pd_cli_free(spec(), &a);

    /* underscores mean dashes, like vLLM */
    PD_CHECK_STATUS(PARSE(&a, err, "--max_num_seqs", "3"), PD_OK);
    PD_CHECK_EQ_INT(a.max_num_seqs, 3);
    pd_cli_free(spec(), &a);

    /* lists: nargs='+' and repeatable; positional model */
    PD_CHECK_STATUS(PARSE(&a, err, "some/model", "--served-model-name", "a", "b", "--middleware", "x.so:f",
                          "--middleware", "y.so:g"), PD_OK);
    PD_CHECK_EQ_STR(a.model, "some/model");
    PD_CHECK_EQ_INT(a.served_model_name.n, 2);
    PD_CHECK_EQ_STR(a.served_model_name.v[1], "b");
    PD_CHECK_EQ_INT(a.middleware.n, 2);
    PD_CHECK_EQ_STR(a.middleware.v[1], "y.so:g");
    pd_cli_free(spec(), &a);

    /* JSON and the dotted form */
    PD_CHECK_STATUS(PARSE(&a, err, "--kv-transfer-config", "{\"kv_connector\":\"UcxConnector\"}",
                          "--kv-transfer-config.kv_role", "kv_both", "--kv-transfer-config.kv_port", "14600",
                          "--kv-transfer-config.kv_connector_extra_config.auth_secret", "s3"), PD_OK);
    PD_CHECK_EQ_STR(cJSON_GetObjectItem(a.kv_transfer_config, "kv_connector")->valuestring, "UcxConnector");
    PD_CHECK_EQ_STR(cJSON_GetObjectItem(a.kv_transfer_config, "kv_role")->valuestring, "kv_both");
    PD_CHECK(cJSON_GetObjectItem(a.kv_transfer_config, "kv_port")->valuedouble == 14600);
    PD_CHECK_EQ_STR(cJSON_GetObjectItem(cJSON_GetObjectItem(a.kv_transfer_config, "kv_connector_extra_config"),
                                        "auth_secret")->valuestring, "s3");
    pd_cli_free(spec(), &a);
    /* dotted form alone creates the object */
    PD_CHECK_STATUS(PARSE(&a, err, "--kv-transfer-config.kv_role=kv_producer"), PD_OK);
    PD_CHECK_EQ_STR(cJSON_GetObjectItem(a.kv_transfer_config, "kv_role")->valuestring, "kv_producer");
    pd_cli_free(spec(), &a);
}

PD_TEST(test_errors)
{
    pd_serve_args_t a;
    char err[512];

    PD_CHECK_STATUS(PARSE(&a, err, "--dtype", "float17"), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "--dtype: 'float17' is not one of auto, half, float16, bfloat16, float, float32");
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--port", "eighty"), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "--port: 'eighty' is not an integer");
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--block-size", "24"), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "--block-size: '24' is not one of 8, 16, 32, 64, 128");
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--gpu-memory-utilization", "nan"), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "--gpu-memory-utilization: 'nan' is not a number");
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--frobnicate"), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "unknown option '--frobnicate' (see --help)");
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--max-num-seqs"), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "--max-num-seqs: expected a value");
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--hf-overrides", "{bad"), PD_ERR_INVAL);
    PD_CHECK(strstr(err, "--hf-overrides: '{bad' is not valid JSON") == err);
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--hf-overrides", "[1]"), PD_ERR_INVAL);
    PD_CHECK(strstr(err, "expected a JSON object") != NULL);
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--allowed-origins", "[1]"), PD_ERR_INVAL);
    PD_CHECK(strstr(err, "list of strings") != NULL);
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--enforce-eager=maybe"), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "--enforce-eager: 'maybe' is not a boolean (true or false)");
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "model-a", "model-b"), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "unexpected argument 'model-b'");
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--no-enforce-eager"), PD_ERR_INVAL); /* not negatable */
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--port.x", "1"), PD_ERR_INVAL);
    PD_CHECK(strstr(err, "only for JSON-valued options") != NULL);
    pd_cli_free(spec(), &a);
}

/* every JSON-valued option parses and validates its value: malformed JSON, the wrong
 * JSON type, and the dotted form on each object-valued one */
PD_TEST(test_every_json_option)
{
    int n_json = 0;
    for (size_t i = 0; i < spec()->n_opts; i++) {
        const pd_opt_t *o = &spec()->opts[i];
        pd_serve_args_t a;
        char err[512], want[256], dotted[128];
        if (o->kind != PD_OPT_JSON)
            continue;
        n_json++;
        PD_CHECK_STATUS(PARSE(&a, err, o->name, "{bad"), PD_ERR_INVAL);
        snprintf(want, sizeof(want), "%s: '{bad' is not valid JSON", o->name);
        PD_CHECK(strncmp(err, want, strlen(want)) == 0);
        pd_cli_free(spec(), &a);
        if (o->flags & PD_OPTF_JSON_OBJECT) {
            PD_CHECK_STATUS(PARSE(&a, err, o->name, "[1]"), PD_ERR_INVAL);
            snprintf(want, sizeof(want), "%s: expected a JSON object", o->name);
            PD_CHECK(strncmp(err, want, strlen(want)) == 0);
            pd_cli_free(spec(), &a);
            PD_CHECK_STATUS(PARSE(&a, err, o->name, "{\"a\": {\"b\": [1, 2]}}"), PD_OK);
            const cJSON *v = *(cJSON *const *)(const void *)((const char *)&a + o->offset);
            PD_CHECK(cJSON_IsArray(cJSON_GetObjectItem(cJSON_GetObjectItem(v, "a"), "b")));
            pd_cli_free(spec(), &a);
            /* the dotted form builds (or extends) the object; a number stays a number */
            snprintf(dotted, sizeof(dotted), "%s.x.y", o->name);
            PD_CHECK_STATUS(PARSE(&a, err, o->name, "{\"k\": \"v\"}", dotted, "7"), PD_OK);
            v = *(cJSON *const *)(const void *)((const char *)&a + o->offset);
            PD_CHECK_EQ_STR(cJSON_GetObjectItem(v, "k")->valuestring, "v");
            PD_CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(v, "x"), "y")->valuedouble == 7);
            pd_cli_free(spec(), &a);
        } else if (o->flags & PD_OPTF_JSON_STRARR) {
            PD_CHECK_STATUS(PARSE(&a, err, o->name, "{\"a\": 1}"), PD_ERR_INVAL);
            PD_CHECK(strstr(err, "expected a JSON list of strings") != NULL);
            pd_cli_free(spec(), &a);
            PD_CHECK_STATUS(PARSE(&a, err, o->name, "[\"GET\", \"POST\"]"), PD_OK);
            const cJSON *v = *(cJSON *const *)(const void *)((const char *)&a + o->offset);
            PD_CHECK(cJSON_GetArraySize(v) == 2);
            pd_cli_free(spec(), &a);
        }
    }
    PD_CHECK_EQ_INT(n_json, 13);
}

/* an "accepted, no effect" option the user gives is never dropped without a word */
PD_TEST(test_noop_options_warned)
{
    pd_serve_args_t a;
    char err[256];
    pd_log_level_t saved = pd_log_level_g;

    pd_log_set_level(PD_LOG_LEVEL_OFF); /* the count is what is checked here */
    PD_CHECK_STATUS(PARSE(&a, err, "--port", "9000"), PD_OK);
    PD_CHECK_EQ_INT(pd_cli_warn_noop(spec(), &a), 0);
    pd_cli_free(spec(), &a);
    /* --use-v2-block-manager true is its default: nothing to say about it */
    PD_CHECK_STATUS(PARSE(&a, err, "--trust-remote-code", "--tokenizer-pool-size", "4", "--use-v2-block-manager",
                          "true", "--disable-custom-all-reduce=false"), PD_OK);
    PD_CHECK_EQ_INT(pd_cli_warn_noop(spec(), &a), 2);
    pd_cli_free(spec(), &a);
    pd_log_set_level(saved);
}

/* full parse: ranges, combinations and "not supported yet" */
static pd_status_t full_parse(pd_serve_args_t *a, char *err, size_t errlen, const char *const *words)
{
    char *argv[64];
    int argc = 0;
    pd_cli_action_t action;
    argv[argc++] = "pdserve-decode";
    for (; *words; words++)
        argv[argc++] = (char *)*words;
    return pd_serve_args_parse(PD_ROLE_DECODE, argc, argv, a, &action, err, errlen);
}
#define FULL(a, err, ...) full_parse((a), (err), sizeof(err), (const char *const[]){__VA_ARGS__, NULL})

PD_TEST(test_semantic_checks)
{
    pd_serve_args_t a;
    char err[512];
    int n_not_yet = 0;

    PD_CHECK_STATUS(FULL(&a, err, "--port", "70000"), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "--port: 70000 is out of range (0 to 65535)");
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "--gpu-memory-utilization", "1.5"), PD_ERR_INVAL);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "--load-format", "pt"), PD_ERR_INVAL);
    PD_CHECK(strstr(err, "not supported yet") != NULL);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "--ssl-keyfile", "k.pem"), PD_ERR_INVAL);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "-O", "7"), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "--compilation-config: level must be 0, 1, 2 or 3");
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "--tensor-parallel-size", "1", "--enable-prefix-caching", "--dtype", "half"), PD_OK);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    /* a "not supported yet" option with its default value is fine; any other value is refused */
    PD_CHECK_STATUS(FULL(&a, err, "--max-loras", "1", "--enable-lora=false"), PD_OK);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    for (size_t i = 0; i < spec()->n_opts; i++) {
        const pd_opt_t *o = &spec()->opts[i];
        char buf[64];
        const char *v;
        pd_status_t st;
        if (o->status != PD_OPT_NOT_YET)
            continue;
        v = valid_value(o, buf, sizeof(buf));
        if (v && o->def && strcmp(v, o->def) == 0) {
            if (o->kind == PD_OPT_CHOICE)
                v = strrchr(o->choices, ',') + 1; /* another valid choice */
            else
                v = o->kind == PD_OPT_INT ? "3" : "other";
        }
        st = v ? FULL(&a, err, o->name, v) : FULL(&a, err, o->name);
        if (st != PD_ERR_UNSUPPORTED)
            fprintf(stderr, "  %s %s -> %s (%s)\n", o->name, v ? v : "", pd_status_name(st), err);
        PD_CHECK(st == PD_ERR_UNSUPPORTED || st == PD_ERR_INVAL);
        PD_CHECK(strstr(err, "not supported yet") != NULL || strstr(err, "needs") != NULL);
        pd_serve_args_free(PD_ROLE_DECODE, &a);
        n_not_yet++;
    }
    PD_CHECK(n_not_yet > 10);
}

/* The model-input options of issue #3 at the command line: every --load-format value the
 * engine loads is accepted, the others are refused as "not supported yet"; --tokenizer-mode
 * auto and slow work and mistral is refused; --config-format likewise; --trust-remote-code
 * is accepted (nothing ever executes). */
PD_TEST(test_model_input_options)
{
    static const char *const load_ok[] = {"auto", "safetensors", "gguf", "dummy"};
    static const char *const load_not_yet[] = {"pt", "npcache", "tensorizer", "sharded_state",
                                               "bitsandbytes", "mistral", "runai_streamer"};
    pd_serve_args_t a;
    char err[512];

    for (size_t i = 0; i < PD_ARRAY_SIZE(load_ok); i++) {
        PD_CHECK_STATUS(FULL(&a, err, "--load-format", load_ok[i]), PD_OK);
        PD_CHECK_EQ_STR(a.load_format, load_ok[i]);
        pd_serve_args_free(PD_ROLE_DECODE, &a);
    }
    for (size_t i = 0; i < PD_ARRAY_SIZE(load_not_yet); i++) {
        PD_CHECK_STATUS(FULL(&a, err, "--load-format", load_not_yet[i]), PD_ERR_INVAL);
        PD_CHECK(strstr(err, "--load-format") != NULL && strstr(err, "not supported yet") != NULL);
        PD_CHECK(strstr(err, load_not_yet[i]) != NULL);
        pd_serve_args_free(PD_ROLE_DECODE, &a);
    }
    PD_CHECK_STATUS(FULL(&a, err, "--tokenizer-mode", "auto"), PD_OK);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "--tokenizer-mode", "slow"), PD_OK);
    PD_CHECK_EQ_STR(a.tokenizer_mode, "slow");
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "--tokenizer-mode", "mistral"), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "--tokenizer-mode: 'mistral' is not supported yet (auto and slow work)");
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "--config-format", "hf"), PD_OK);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "--config-format", "mistral"), PD_ERR_INVAL);
    PD_CHECK(strstr(err, "not supported yet") != NULL);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "--trust-remote-code"), PD_OK);
    PD_CHECK(a.trust_remote_code);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "--max-model-len", "0"), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "--max-model-len: 0 must be >= 1");
    pd_serve_args_free(PD_ROLE_DECODE, &a);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

PD_TEST(test_config_file)
{
    pd_serve_args_t a;
    char err[512];
    char yml[] = "/tmp/pd_cli_test_XXXXXX";
    int fd = mkstemp(yml);
    close(fd);
    write_file(yml,
               "# a vLLM-style config\n"
               "port: 9100\n"
               "max_num_seqs: 12\n"
               "dtype: \"float32\"\n"
               "enable-prefix-caching: false\n"
               "served-model-name: [one, two]\n"
               "kv-transfer-config:\n  kv_connector: UcxConnector\n  kv_role: kv_both\n");
    PD_CHECK_STATUS(PARSE(&a, err, "--config", yml, "--port", "9200", "--served-model-name", "three"), PD_OK);
    PD_CHECK_EQ_INT(a.port, 9200);          /* command line wins */
    PD_CHECK_EQ_INT(a.max_num_seqs, 12);    /* from the file */
    PD_CHECK_EQ_STR(a.dtype, "float32");
    PD_CHECK(!a.enable_prefix_caching);
    PD_CHECK_EQ_INT(a.served_model_name.n, 1); /* command-line list replaces the file's */
    PD_CHECK_EQ_STR(a.served_model_name.v[0], "three");
    PD_CHECK_EQ_STR(cJSON_GetObjectItem(a.kv_transfer_config, "kv_role")->valuestring, "kv_both");
    pd_cli_free(spec(), &a);

    write_file(yml, "{\"port\": 9300, \"block_size\": 32, \"served_model_name\": \"solo\"}");
    PD_CHECK_STATUS(PARSE(&a, err, "--config=" /* joined form */ "", "x"), PD_ERR_INVAL);
    pd_cli_free(spec(), &a);
    char opt[128];
    snprintf(opt, sizeof(opt), "--config=%s", yml);
    PD_CHECK_STATUS(PARSE(&a, err, opt), PD_OK);
    PD_CHECK_EQ_INT(a.port, 9300);
    PD_CHECK_EQ_INT(a.block_size, 32);
    PD_CHECK_EQ_STR(a.served_model_name.v[0], "solo");
    pd_cli_free(spec(), &a);

    write_file(yml, "port: [1, 2\n");
    PD_CHECK_STATUS(PARSE(&a, err, "--config", yml), PD_ERR_INVAL);
    PD_CHECK(strstr(err, "neither JSON nor valid YAML") != NULL);
    pd_cli_free(spec(), &a);
    write_file(yml, "no_such_option: 1\n");
    PD_CHECK_STATUS(PARSE(&a, err, "--config", yml), PD_ERR_INVAL);
    PD_CHECK(strstr(err, "unknown option 'no_such_option'") != NULL);
    pd_cli_free(spec(), &a);
    write_file(yml, "block-size: 24\n");
    PD_CHECK_STATUS(PARSE(&a, err, "--config", yml), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "--block-size: '24' is not one of 8, 16, 32, 64, 128");
    pd_cli_free(spec(), &a);
    PD_CHECK_STATUS(PARSE(&a, err, "--config", "/nonexistent.yaml"), PD_ERR_INVAL);
    pd_cli_free(spec(), &a);
    unlink(yml);
}

/* docs/options.md holds exactly what --help-markdown generates (so it cannot drift) */
PD_TEST(test_docs_in_sync)
{
    char path[1024];
    const char *src = getenv("PD_SOURCE_DIR");
    char *doc = NULL, *gen = NULL;
    size_t doc_len, gen_len;
    FILE *mem;

    snprintf(path, sizeof(path), "%s/docs/options.md", src ? src : ".");
    PD_CHECK_STATUS(pd_read_file(path, &doc, &doc_len), PD_OK);
    if (doc == NULL)
        return;
    mem = open_memstream(&gen, &gen_len);
    pd_cli_print_markdown(spec(), mem);
    fclose(mem);
    PD_CHECK(strstr(doc, gen) != NULL);
    if (strstr(doc, gen) == NULL)
        fprintf(stderr, "  docs/options.md is stale: run scripts/gen_options_md.sh\n");
    free(doc);
    free(gen);
}

/* --quantization fp8 (-q fp8) parses (the engine refuses it on the CPU backend:
 * tests/fp8w); other methods are refused naming what works. */
PD_TEST(test_quantization_fp8)
{
    pd_serve_args_t a;
    char err[512] = "";
    PD_CHECK_STATUS(FULL(&a, err, "--quantization", "fp8"), PD_OK);
    PD_CHECK_EQ_STR(a.quantization, "fp8");
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "-q", "fp8"), PD_OK);
    PD_CHECK_EQ_STR(a.quantization, "fp8");
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "-q", "gguf"), PD_OK);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "--quantization", "awq"), PD_ERR_INVAL);
    PD_CHECK(strstr(err, "not supported yet") != NULL);
    PD_CHECK(strstr(err, "fp8") != NULL);
    printf("  -q awq: %s\n", err);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
    PD_CHECK_STATUS(FULL(&a, err, "--quantization", "fbgemm_fp8"), PD_ERR_INVAL);
    pd_serve_args_free(PD_ROLE_DECODE, &a);
}

int main(void)
{
    PD_RUN(test_every_seed_option_accepted);
    PD_RUN(test_quantization_fp8);
    PD_RUN(test_defaults);
    PD_RUN(test_every_default);
    PD_RUN(test_vllm_defaults);
    PD_RUN(test_forms);
    PD_RUN(test_errors);
    PD_RUN(test_every_json_option);
    PD_RUN(test_noop_options_warned);
    PD_RUN(test_semantic_checks);
    PD_RUN(test_model_input_options);
    PD_RUN(test_config_file);
    PD_RUN(test_docs_in_sync);
    return PD_TEST_REPORT();
}
