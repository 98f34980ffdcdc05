/*
 * opts.c - pdserve-bench command line.
 *
 * Flag names and defaults follow `vllm bench serve` wherever it has the same thing, so
 * scripts carry over.  One static table drives parsing and --help; both `--flag value`
 * and `--flag=value` work; flags vLLM takes as lists (--goodput, --metadata) also take
 * several space-separated values.  An unknown flag or a bad value prints one line
 * naming the flag, the value and what is accepted; the caller exits non-zero.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench.h"

typedef enum {
    OT_STR,   /* char * (malloc'd copy) */
    OT_INT,   /* int, range [lo, hi] */
    OT_DBL,   /* double, range [lo, hi] */
    OT_FLAG,  /* int set to 1 */
    OT_FUNC,  /* custom setter */
} opt_type_t;

typedef int (*opt_set_fn)(bench_opts_t *o, const char *flag, const char *val);

typedef struct opt_def {
    const char *name;     /* without the leading "--" */
    opt_type_t type;
    size_t off;           /* field for STR/INT/DBL/FLAG */
    double lo, hi;        /* INT/DBL range */
    opt_set_fn fn;        /* OT_FUNC */
    int multi;            /* OT_FUNC: takes one or more following values */
    const char *group;
    const char *metavar;
    const char *help;
    const char *accepted; /* for error lines */
} opt_def_t;

static int bad(const char *flag, const char *val, const char *accepted)
{
    fprintf(stderr, "pdserve-bench: --%s: bad value '%s' (accepted: %s)\n", flag, val,
            accepted);
    return -1;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (s[0] == '\0' || *end != '\0' || errno == ERANGE || isnan(v))
        return -1;
    *out = v;
    return 0;
}

static int parse_int(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (s[0] == '\0' || *end != '\0' || errno == ERANGE)
        return -1;
    *out = v;
    return 0;
}

static void set_str(char **dst, const char *val)
{
    free(*dst);
    *dst = strdup(val);
}

/* ---- custom setters ---- */
static int add_url(bench_opts_t *o, const char *url, size_t len)
{
    while (len > 0 && url[len - 1] == '/')
        len--;
    if (len == 0)
        return 0;
    if (o->n_base_urls >= BENCH_MAX_URLS) {
        fprintf(stderr, "pdserve-bench: --base-url: more than %d targets\n", BENCH_MAX_URLS);
        return -1;
    }
    if (!(len > 7 && strncmp(url, "http://", 7) == 0) &&
        !(len > 8 && strncmp(url, "https://", 8) == 0)) {
        char tmp[256];
        snprintf(tmp, sizeof(tmp), "%.*s", (int)PD_MIN(len, 200), url);
        return bad("base-url", tmp, "http://host:port or https://host:port, comma-separated");
    }
    o->base_urls[o->n_base_urls++] = strndup(url, len);
    return 0;
}

static int set_base_url(bench_opts_t *o, const char *flag, const char *val)
{
    const char *p = val;
    for (;;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        if (add_url(o, p, len) != 0)
            return -1;
        if (!c)
            break;
        p = c + 1;
    }
    return 0;
}

static int set_backend(bench_opts_t *o, const char *flag, const char *val)
{
    if (strcmp(val, "openai") == 0 || strcmp(val, "vllm") == 0) {
        o->ep_kind = BENCH_EP_COMPLETIONS;
        set_str(&o->endpoint, "/v1/completions");
    } else if (strcmp(val, "openai-chat") == 0) {
        o->ep_kind = BENCH_EP_CHAT;
        set_str(&o->endpoint, "/v1/chat/completions");
    } else {
        return bad(flag, val, "openai, vllm (same as openai), openai-chat");
    }
    set_str(&o->backend, val);
    return 0;
}

static int set_endpoint(bench_opts_t *o, const char *flag, const char *val)
{
    if (val[0] != '/')
        return bad(flag, val, "a path such as /v1/completions or /v1/chat/completions");
    set_str(&o->endpoint, val);
    /* The endpoint decides the request shape; --backend only picks a default path. */
    o->ep_kind = strstr(val, "chat/completions") ? BENCH_EP_CHAT : BENCH_EP_COMPLETIONS;
    return 0;
}

static int set_rates(bench_opts_t *o, const char *flag, const char *val)
{
    const char *p = val;
    o->n_rates = 0;
    for (;;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        char tmp[64];
        double r;
        if (len == 0 || len >= sizeof(tmp))
            return bad(flag, val, "inf or a positive number, or a comma-separated list");
        memcpy(tmp, p, len);
        tmp[len] = '\0';
        if (strcasecmp(tmp, "inf") == 0)
            r = INFINITY;
        else if (parse_double(tmp, &r) != 0 || !(r > 0))
            return bad(flag, tmp, "inf or a positive number, or a comma-separated list");
        if (o->n_rates >= BENCH_MAX_RATES)
            return bad(flag, val, "at most 64 rates");
        o->rates[o->n_rates++] = r;
        if (!c)
            break;
        p = c + 1;
    }
    return 0;
}

static int set_dataset(bench_opts_t *o, const char *flag, const char *val)
{
    static const struct { const char *n; bench_ds_kind_t k; } t[] = {
        {"random", BENCH_DS_RANDOM},       {"prefix-repetition", BENCH_DS_PREFIX_REP},
        {"sharegpt", BENCH_DS_SHAREGPT},   {"sweep", BENCH_DS_SWEEP},
        /* vLLM's spelling of the name, so its scripts carry over */
        {"prefix_repetition", BENCH_DS_PREFIX_REP}};
    for (size_t i = 0; i < PD_ARRAY_SIZE(t); i++) {
        if (strcmp(val, t[i].n) == 0) {
            o->ds_kind = t[i].k;
            return 0;
        }
    }
    return bad(flag, val, "random, prefix-repetition (or prefix_repetition), sharegpt, sweep");
}

static int set_pmetrics(bench_opts_t *o, const char *flag, const char *val)
{
    const char *p = val;
    o->percentile_metrics = 0;
    for (;;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        if (len == 4 && strncmp(p, "ttft", 4) == 0)
            o->percentile_metrics |= BENCH_M_TTFT;
        else if (len == 4 && strncmp(p, "tpot", 4) == 0)
            o->percentile_metrics |= BENCH_M_TPOT;
        else if (len == 3 && strncmp(p, "itl", 3) == 0)
            o->percentile_metrics |= BENCH_M_ITL;
        else if (len == 4 && strncmp(p, "e2el", 4) == 0)
            o->percentile_metrics |= BENCH_M_E2EL;
        else
            return bad(flag, val, "a comma-separated list of ttft, tpot, itl, e2el");
        if (!c)
            break;
        p = c + 1;
    }
    return 0;
}

static int set_percentiles(bench_opts_t *o, const char *flag, const char *val)
{
    const char *p = val;
    o->n_percentiles = 0;
    for (;;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        char tmp[64];
        double v;
        if (len == 0 || len >= sizeof(tmp))
            return bad(flag, val, "comma-separated numbers in [0, 100], e.g. 25,50,99");
        memcpy(tmp, p, len);
        tmp[len] = '\0';
        if (parse_double(tmp, &v) != 0 || v < 0 || v > 100)
            return bad(flag, tmp, "comma-separated numbers in [0, 100], e.g. 25,50,99");
        if (o->n_percentiles >= BENCH_MAX_PCTS)
            return bad(flag, val, "at most 32 percentiles");
        o->percentiles[o->n_percentiles++] = v;
        if (!c)
            break;
        p = c + 1;
    }
    return 0;
}

static int set_goodput(bench_opts_t *o, const char *flag, const char *val)
{
    const char *colon = strchr(val, ':');
    double v;
    if (!colon || parse_double(colon + 1, &v) != 0 || v < 0)
        return bad(flag, val, "KEY:MS pairs with KEY one of ttft, tpot, e2el and MS >= 0");
    size_t klen = (size_t)(colon - val);
    if (klen == 4 && strncmp(val, "ttft", 4) == 0)
        o->goodput_ttft_ms = v;
    else if (klen == 4 && strncmp(val, "tpot", 4) == 0)
        o->goodput_tpot_ms = v;
    else if (klen == 4 && strncmp(val, "e2el", 4) == 0)
        o->goodput_e2el_ms = v;
    else
        return bad(flag, val, "KEY:MS pairs with KEY one of ttft, tpot, e2el and MS >= 0");
    o->have_goodput = 1;
    return 0;
}

static int set_metadata(bench_opts_t *o, const char *flag, const char *val)
{
    if (!strchr(val, '=') || val[0] == '=')
        return bad(flag, val, "KEY=VALUE pairs");
    if (o->n_metadata >= BENCH_MAX_META)
        return bad(flag, val, "at most 64 KEY=VALUE pairs");
    o->metadata[o->n_metadata++] = strdup(val);
    return 0;
}

static int set_header(bench_opts_t *o, const char *flag, const char *val)
{
    const char *eq = strchr(val, '=');
    if (!eq || eq == val || strpbrk(val, "\r\n"))
        return bad(flag, val, "KEY=VALUE pairs, e.g. --header x-tenant=blue");
    if (o->n_headers >= BENCH_MAX_META)
        return bad(flag, val, "at most 64 headers");
    if (asprintf(&o->headers[o->n_headers], "%.*s: %s", (int)(eq - val), val, eq + 1) < 0)
        return -1;
    o->n_headers++;
    return 0;
}

static int set_ramp(bench_opts_t *o, const char *flag, const char *val)
{
    if (strcmp(val, "linear") == 0)
        o->ramp_strategy = 1;
    else if (strcmp(val, "exponential") == 0)
        o->ramp_strategy = 2;
    else
        return bad(flag, val, "linear, exponential");
    return 0;
}

static int set_lens(bench_opts_t *o, const char *flag, const char *val)
{
    const char *p = val;
    o->n_sweep_input_lens = 0;
    for (;;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        char tmp[32];
        long v;
        if (len == 0 || len >= sizeof(tmp))
            return bad(flag, val, "comma-separated token counts >= 1, e.g. 128,512,2048");
        memcpy(tmp, p, len);
        tmp[len] = '\0';
        if (parse_int(tmp, &v) != 0 || v < 1 || v > 10000000)
            return bad(flag, tmp, "comma-separated token counts >= 1, e.g. 128,512,2048");
        if (o->n_sweep_input_lens >= BENCH_MAX_LENS)
            return bad(flag, val, "at most 64 lengths");
        o->sweep_input_lens[o->n_sweep_input_lens++] = (int)v;
        if (!c)
            break;
        p = c + 1;
    }
    return 0;
}

static int set_input_len(bench_opts_t *o, const char *flag, const char *val)
{
    long v;
    if (parse_int(val, &v) != 0 || v < 1 || v > 10000000)
        return bad(flag, val, "an integer in [1, 10000000]");
    o->random_input_len = (int)v;
    return 0;
}

static int set_output_len(bench_opts_t *o, const char *flag, const char *val)
{
    long v;
    if (parse_int(val, &v) != 0 || v < 1 || v > 10000000)
        return bad(flag, val, "an integer in [1, 10000000]");
    /* vLLM maps the general --output-len onto every dataset's own flag. */
    o->random_output_len = o->pr_output_len = o->sharegpt_output_len = (int)v;
    return 0;
}

static int set_ignore_eos(bench_opts_t *o, const char *flag, const char *val)
{
    o->ignore_eos = 1;
    return 0;
}

static int set_quiet(bench_opts_t *o, const char *flag, const char *val)
{
    o->quiet = 1;
    o->disable_tqdm = 1;
    return 0;
}

#define F(field) offsetof(bench_opts_t, field)
#define G_TARGET "target"
#define G_TRAFFIC "traffic"
#define G_DATA "dataset"
#define G_SAMPLING "sampling parameters (sent only when given; temperature defaults to 0)"
#define G_OUT "metrics and output"

static const opt_def_t OPTS[] = {
    {"base-url", OT_FUNC, 0, 0, 0, set_base_url, 0, G_TARGET, "URL[,URL...]",
     "server base URL(s); repeat or comma-separate for several targets, used round-robin", NULL},
    {"host", OT_STR, F(host), 0, 0, NULL, 0, G_TARGET, "HOST",
     "target host when --base-url is not given (default 127.0.0.1)", NULL},
    {"port", OT_INT, F(port), 1, 65535, NULL, 0, G_TARGET, "PORT",
     "target port when --base-url is not given (default 8000)", "an integer in [1, 65535]"},
    {"endpoint", OT_FUNC, 0, 0, 0, set_endpoint, 0, G_TARGET, "PATH",
     "API path: /v1/completions (default) or /v1/chat/completions", NULL},
    {"backend", OT_FUNC, 0, 0, 0, set_backend, 0, G_TARGET, "NAME",
     "openai (-> /v1/completions) or openai-chat (-> /v1/chat/completions)", NULL},
    {"model", OT_STR, F(model), 0, 0, NULL, 0, G_TARGET, "NAME",
     "model name sent in requests (default: first model of GET /v1/models)", NULL},
    {"served-model-name", OT_STR, F(served_model_name), 0, 0, NULL, 0, G_TARGET, "NAME",
     "model name used in the API when it differs from --model", NULL},
    {"tokenizer", OT_STR, F(tokenizer), 0, 0, NULL, 0, G_TARGET, "NAME",
     "accepted for vLLM compatibility and unused: prompts are tokenized by the server's "
     "/tokenize and /detokenize", NULL},
    {"api-key", OT_STR, F(api_key), 0, 0, NULL, 0, G_TARGET, "KEY",
     "bearer token (default: env OPENAI_API_KEY)", NULL},
    {"header", OT_FUNC, 0, 0, 0, set_header, 1, G_TARGET, "KEY=VALUE ...",
     "extra HTTP headers for every request", NULL},
    {"extra-body", OT_STR, F(extra_body), 0, 0, NULL, 0, G_TARGET, "JSON",
     "JSON object merged into every request body", NULL},
    {"request-timeout", OT_DBL, F(request_timeout_s), 0, 1e7, NULL, 0, G_TARGET, "S",
     "per-request timeout in seconds, 0 = none (default 21600 like vLLM's 6 h)",
     "a number of seconds >= 0"},
    {"ready-check-timeout-sec", OT_INT, F(ready_check_timeout_s), 0, 1e7, NULL, 0, G_TARGET,
     "S", "wait up to S seconds for the first test request to succeed; 0 skips it (default 600)",
     "an integer >= 0"},

    {"num-prompts", OT_INT, F(num_prompts), 1, 1e8, NULL, 0, G_TRAFFIC, "N",
     "requests per benchmark (default 1000)", "an integer >= 1"},
    {"request-rate", OT_FUNC, 0, 0, 0, set_rates, 0, G_TRAFFIC, "R[,R...]",
     "requests/s (inf = all at once, default); a list runs one benchmark per rate (sweep)",
     NULL},
    {"sweep", OT_FUNC, 0, 0, 0, set_rates, 0, G_TRAFFIC, "R,R,...",
     "same as --request-rate with a list", NULL},
    {"burstiness", OT_DBL, F(burstiness), 1e-6, INFINITY, NULL, 0, G_TRAFFIC, "B",
     "gamma shape of the arrival gaps: 1.0 = Poisson (default), < 1 burstier, > 1 smoother",
     "a number > 0"},
    {"max-concurrency", OT_INT, F(max_concurrency), 1, 1e8, NULL, 0, G_TRAFFIC, "N",
     "at most N requests in flight (default unlimited)", "an integer >= 1"},
    {"seed", OT_INT, F(seed), 0, 2147483647.0, NULL, 0, G_TRAFFIC, "N",
     "random seed for datasets and arrivals (default 0)", "an integer >= 0"},
    {"num-warmups", OT_INT, F(num_warmups), 0, 1e7, NULL, 0, G_TRAFFIC, "N",
     "warm-up requests before the measured run, not counted (default 0)", "an integer >= 0"},
    {"ramp-up-strategy", OT_FUNC, 0, 0, 0, set_ramp, 0, G_TRAFFIC, "NAME",
     "linear or exponential: the rate ramps from --ramp-up-start-rps to --ramp-up-end-rps "
     "over the run (instead of --request-rate)", NULL},
    {"ramp-up-start-rps", OT_INT, F(ramp_start_rps), 0, 1e7, NULL, 0, G_TRAFFIC, "N",
     "ramp-up: starting requests/s", "an integer >= 0"},
    {"ramp-up-end-rps", OT_INT, F(ramp_end_rps), 0, 1e7, NULL, 0, G_TRAFFIC, "N",
     "ramp-up: final requests/s", "an integer >= 0"},
    {"ignore-eos", OT_FUNC, 0, 0, 0, set_ignore_eos, 0, G_TRAFFIC, NULL,
     "send ignore_eos (always on for the random datasets, like vLLM)", NULL},

    {"dataset-name", OT_FUNC, 0, 0, 0, set_dataset, 0, G_DATA, "NAME",
     "random (default), prefix-repetition, sharegpt, sweep (fixed lengths)", NULL},
    {"dataset-path", OT_STR, F(dataset_path), 0, 0, NULL, 0, G_DATA, "FILE",
     "ShareGPT JSON file", NULL},
    {"input-len", OT_FUNC, 0, 0, 0, set_input_len, 0, G_DATA, "N",
     "general input length (sets --random-input-len)", NULL},
    {"output-len", OT_FUNC, 0, 0, 0, set_output_len, 0, G_DATA, "N",
     "general output length (sets every dataset's output length)", NULL},
    {"random-input-len", OT_INT, F(random_input_len), 1, 1e7, NULL, 0, G_DATA, "N",
     "input tokens per request (default 1024)", "an integer in [1, 10000000]"},
    {"random-output-len", OT_INT, F(random_output_len), 1, 1e7, NULL, 0, G_DATA, "N",
     "output tokens per request (default 128)", "an integer in [1, 10000000]"},
    {"random-range-ratio", OT_DBL, F(random_range_ratio), 0, 0.999999, NULL, 0, G_DATA, "R",
     "lengths uniform in [L(1-R), L(1+R)] (default 0.0)", "a number in [0, 1)"},
    {"random-prefix-len", OT_INT, F(random_prefix_len), 0, 1e7, NULL, 0, G_DATA, "N",
     "random tokens shared by every prompt, before its own input (default 0)",
     "an integer >= 0"},
    {"random-vocab-size", OT_INT, F(random_vocab_size), 2, 1e8, NULL, 0, G_DATA, "N",
     "token id range for random prompts (default: the server's /tokenizer_info "
     "vocab_size, else 32000)", "an integer >= 2"},
    {"prefix-repetition-prefix-len", OT_INT, F(pr_prefix_len), 0, 1e7, NULL, 0, G_DATA, "N",
     "tokens per shared prefix (default 256)", "an integer >= 0"},
    {"prefix-repetition-suffix-len", OT_INT, F(pr_suffix_len), 1, 1e7, NULL, 0, G_DATA, "N",
     "random tokens after the prefix (default 256)", "an integer >= 1"},
    {"prefix-repetition-num-prefixes", OT_INT, F(pr_num_prefixes), 1, 1e6, NULL, 0, G_DATA,
     "N", "number of distinct prefixes (default 10)", "an integer >= 1"},
    {"prefix-repetition-output-len", OT_INT, F(pr_output_len), 1, 1e7, NULL, 0, G_DATA, "N",
     "output tokens per request (default 128)", "an integer >= 1"},
    {"sharegpt-output-len", OT_INT, F(sharegpt_output_len), 1, 1e7, NULL, 0, G_DATA, "N",
     "override the output length taken from the gpt turn", "an integer >= 1"},
    {"sweep-input-lens", OT_FUNC, 0, 0, 0, set_lens, 0, G_DATA, "N,N,...",
     "sweep dataset: one benchmark per input length (default: --random-input-len)", NULL},

    {"temperature", OT_DBL, F(temperature), 0, 100, NULL, 0, G_SAMPLING, "T",
     "temperature (default 0.0, greedy, like vLLM)", "a number in [0, 100]"},
    {"top-p", OT_DBL, F(top_p), 0, 1, NULL, 0, G_SAMPLING, "P", "top_p", "a number in [0, 1]"},
    {"top-k", OT_INT, F(top_k), -1, 1e7, NULL, 0, G_SAMPLING, "K", "top_k",
     "an integer >= -1"},
    {"min-p", OT_DBL, F(min_p), 0, 1, NULL, 0, G_SAMPLING, "P", "min_p", "a number in [0, 1]"},
    {"frequency-penalty", OT_DBL, F(frequency_penalty), -2, 2, NULL, 0, G_SAMPLING, "F",
     "frequency_penalty", "a number in [-2, 2]"},
    {"presence-penalty", OT_DBL, F(presence_penalty), -2, 2, NULL, 0, G_SAMPLING, "F",
     "presence_penalty", "a number in [-2, 2]"},
    {"repetition-penalty", OT_DBL, F(repetition_penalty), 1e-6, 100, NULL, 0, G_SAMPLING, "F",
     "repetition_penalty", "a number in (0, 100]"},

    {"percentile-metrics", OT_FUNC, 0, 0, 0, set_pmetrics, 0, G_OUT, "M,M",
     "metrics to report: ttft,tpot,itl,e2el (default ttft,tpot,itl)", NULL},
    {"metric-percentiles", OT_FUNC, 0, 0, 0, set_percentiles, 0, G_OUT, "P,P",
     "percentiles to report, e.g. 25,50,99 (default 99; p90 and p99 are always saved)",
     NULL},
    {"goodput", OT_FUNC, 0, 0, 0, set_goodput, 1, G_OUT, "KEY:MS ...",
     "SLOs for goodput, e.g. --goodput ttft:500 tpot:50 e2el:5000", NULL},
    {"goodput-attainment", OT_DBL, F(goodput_attainment), 0, 1, NULL, 0, G_OUT, "F",
     "sweep: a rate passes when this fraction of requests meets every SLO (default 0.9, "
     "DistServe)", "a number in [0, 1]"},
    {"save-result", OT_FLAG, F(save_result), 0, 0, NULL, 0, G_OUT, NULL,
     "write the result JSON", NULL},
    {"save-detailed", OT_FLAG, F(save_detailed), 0, 0, NULL, 0, G_OUT, NULL,
     "include per-request arrays (input_lens, output_lens, ttfts, itls, errors)", NULL},
    {"result-dir", OT_STR, F(result_dir), 0, 0, NULL, 0, G_OUT, "DIR",
     "directory for results and plots (default .)", NULL},
    {"result-filename", OT_STR, F(result_filename), 0, 0, NULL, 0, G_OUT, "FILE",
     "file name (default {label}-{rate}qps[-concurrencyN]-{model}-{date}.json)", NULL},
    {"label", OT_STR, F(label), 0, 0, NULL, 0, G_OUT, "NAME",
     "result label / file prefix (default: the backend)", NULL},
    {"metadata", OT_FUNC, 0, 0, 0, set_metadata, 1, G_OUT, "KEY=VALUE ...",
     "extra keys saved in the result JSON", NULL},
    {"plot", OT_FLAG, F(plot), 0, 0, NULL, 0, G_OUT, NULL,
     "PNG charts with gnuplot: latency CDFs; throughput and goodput vs rate for a sweep",
     NULL},
    {"disable-tqdm", OT_FLAG, F(disable_tqdm), 0, 0, NULL, 0, G_OUT, NULL,
     "no progress bar (it is drawn on stderr only when stderr is a terminal)", NULL},
    {"quiet", OT_FUNC, 0, 0, 0, set_quiet, 0, G_OUT, NULL,
     "print only the result tables", NULL},
};

static void print_help(void)
{
    const char *groups[] = {G_TARGET, G_TRAFFIC, G_DATA, G_SAMPLING, G_OUT};
    printf("usage: pdserve-bench [options]\n\n"
           "Serving benchmark for OpenAI-compatible servers (pdserve, vLLM, ...). Flags follow\n"
           "`vllm bench serve`. Every flag also takes the --flag=value form.\n");
    for (size_t g = 0; g < PD_ARRAY_SIZE(groups); g++) {
        printf("\n%s:\n", groups[g]);
        for (size_t i = 0; i < PD_ARRAY_SIZE(OPTS); i++) {
            char head[96];
            if (strcmp(OPTS[i].group, groups[g]) != 0)
                continue;
            snprintf(head, sizeof(head), "--%s%s%s", OPTS[i].name, OPTS[i].metavar ? " " : "",
                     OPTS[i].metavar ? OPTS[i].metavar : "");
            if (strlen(head) > 30)
                printf("  %s\n  %-30s %s\n", head, "", OPTS[i].help);
            else
                printf("  %-30s %s\n", head, OPTS[i].help);
        }
    }
    printf("\nother:\n  %-30s %s\n  %-30s %s\n", "--help", "this text", "--version",
           "print the version");
    printf("\nexit status: 0 done, 1 set-up failed (dataset, ready check), 2 bad option,\n"
           "3 every request failed, 130 interrupted (Ctrl-C; the partial result is reported)\n");
}

static void set_defaults(bench_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->host = strdup("127.0.0.1");
    o->port = 8000;
    o->endpoint = strdup("/v1/completions");
    o->backend = strdup("openai");
    o->ep_kind = BENCH_EP_COMPLETIONS;
    o->request_timeout_s = 6 * 3600;
    o->ready_check_timeout_s = 600;
    o->num_prompts = 1000;
    o->rates[0] = INFINITY;
    o->n_rates = 1;
    o->burstiness = 1.0;
    o->ignore_eos = -1;
    o->ds_kind = BENCH_DS_RANDOM;
    o->random_input_len = 1024;
    o->random_output_len = 128;
    o->pr_prefix_len = 256;
    o->pr_suffix_len = 256;
    o->pr_num_prefixes = 10;
    o->pr_output_len = 128;
    o->temperature = NAN;
    o->top_p = NAN;
    o->min_p = NAN;
    o->frequency_penalty = NAN;
    o->presence_penalty = NAN;
    o->repetition_penalty = NAN;
    o->top_k = -2; /* unset */
    o->percentile_metrics = BENCH_M_TTFT | BENCH_M_TPOT | BENCH_M_ITL;
    o->percentiles[0] = 99;
    o->n_percentiles = 1;
    o->goodput_ttft_ms = o->goodput_tpot_ms = o->goodput_e2el_ms = -1;
    o->goodput_attainment = 0.9;
}

static int apply(bench_opts_t *o, const opt_def_t *d, const char *val)
{
    char *base = (char *)o;
    switch (d->type) {
    case OT_STR:
        set_str((char **)(base + d->off), val);
        return 0;
    case OT_INT: {
        long v;
        if (parse_int(val, &v) != 0 || v < d->lo || v > d->hi)
            return bad(d->name, val, d->accepted);
        if (d->off == offsetof(bench_opts_t, seed))
            o->seed = (uint64_t)v;
        else
            *(int *)(base + d->off) = (int)v;
        return 0;
    }
    case OT_DBL: {
        double v;
        if (strcasecmp(val, "inf") == 0)
            v = INFINITY;
        else if (parse_double(val, &v) != 0)
            return bad(d->name, val, d->accepted);
        if (v < d->lo || v > d->hi)
            return bad(d->name, val, d->accepted);
        *(double *)(base + d->off) = v;
        return 0;
    }
    case OT_FLAG:
        *(int *)(base + d->off) = 1;
        return 0;
    case OT_FUNC:
        return d->fn(o, d->name, val);
    }
    return -1;
}

int bench_opts_parse(bench_opts_t *o, int argc, char **argv)
{
    set_defaults(o);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *eq;
        size_t nlen;
        const opt_def_t *d = NULL;

        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            print_help();
            return 1;
        }
        if (strcmp(arg, "--version") == 0) {
            printf("pdserve-bench %s (%s)\n", PD_VERSION, PD_GIT_REV);
            return 1;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "pdserve-bench: unexpected argument '%s' (options start with --; "
                            "see --help)\n", arg);
            return -1;
        }
        arg += 2;
        eq = strchr(arg, '=');
        nlen = eq ? (size_t)(eq - arg) : strlen(arg);
        for (size_t k = 0; k < PD_ARRAY_SIZE(OPTS); k++) {
            /* vLLM's argparse also takes underscores (--result_dir). */
            const char *n = OPTS[k].name;
            size_t j;
            if (strlen(n) != nlen)
                continue;
            for (j = 0; j < nlen; j++) {
                char c = arg[j] == '_' ? '-' : arg[j];
                if (c != n[j])
                    break;
            }
            if (j == nlen) {
                d = &OPTS[k];
                break;
            }
        }
        if (!d) {
            fprintf(stderr, "pdserve-bench: unknown option '--%.*s' (see --help)\n", (int)nlen,
                    arg);
            return -1;
        }
        int takes_value = !(d->type == OT_FLAG || d->fn == set_ignore_eos || d->fn == set_quiet);
        if (!takes_value) {
            if (eq) {
                fprintf(stderr, "pdserve-bench: --%s: takes no value (got '%s')\n", d->name,
                        eq + 1);
                return -1;
            }
            if (apply(o, d, "") != 0)
                return -1;
            continue;
        }
        if (eq) {
            if (apply(o, d, eq + 1) != 0)
                return -1;
        } else {
            if (i + 1 >= argc) {
                fprintf(stderr, "pdserve-bench: --%s: missing value (expected %s)\n", d->name,
                        d->metavar ? d->metavar : "a value");
                return -1;
            }
            if (apply(o, d, argv[++i]) != 0)
                return -1;
        }
        /* nargs='+' flags: keep taking values until the next flag. */
        while (d->multi && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
            if (apply(o, d, argv[++i]) != 0)
                return -1;
        }
    }

    if (!o->api_key) {
        const char *env = getenv("OPENAI_API_KEY");
        if (env && env[0])
            o->api_key = strdup(env);
    }
    if (o->n_base_urls == 0) {
        char url[512];
        int v6 = strchr(o->host, ':') != NULL;
        snprintf(url, sizeof(url), "http://%s%s%s:%d", v6 ? "[" : "", o->host, v6 ? "]" : "",
                 o->port);
        o->base_urls[o->n_base_urls++] = strdup(url);
    }
    if (o->ds_kind == BENCH_DS_SHAREGPT && !o->dataset_path) {
        fprintf(stderr, "pdserve-bench: --dataset-name sharegpt needs --dataset-path FILE\n");
        return -1;
    }
    if (o->ramp_strategy) {
        if (o->n_rates != 1 || !isinf(o->rates[0])) {
            fprintf(stderr, "pdserve-bench: --ramp-up-strategy: do not give --request-rate; the "
                            "ramp sets the rate\n");
            return -1;
        }
        if (o->ramp_end_rps <= 0 || o->ramp_start_rps > o->ramp_end_rps) {
            fprintf(stderr, "pdserve-bench: --ramp-up-strategy needs --ramp-up-start-rps <= "
                            "--ramp-up-end-rps, and an end rate > 0\n");
            return -1;
        }
        if (o->ramp_strategy == 2 && o->ramp_start_rps == 0) {
            fprintf(stderr, "pdserve-bench: --ramp-up-start-rps: bad value '0' for exponential "
                            "ramp-up (accepted: an integer >= 1)\n");
            return -1;
        }
    } else if (o->ramp_start_rps || o->ramp_end_rps) {
        fprintf(stderr, "pdserve-bench: --ramp-up-start-rps/--ramp-up-end-rps need "
                        "--ramp-up-strategy\n");
        return -1;
    }
    if (o->ignore_eos < 0)
        o->ignore_eos = (o->ds_kind == BENCH_DS_RANDOM || o->ds_kind == BENCH_DS_SWEEP);
    if (o->n_sweep_input_lens > 0 && o->ds_kind != BENCH_DS_SWEEP) {
        fprintf(stderr, "pdserve-bench: --sweep-input-lens needs --dataset-name sweep\n");
        return -1;
    }
    if (o->ds_kind == BENCH_DS_SWEEP && o->n_sweep_input_lens == 0) {
        o->sweep_input_lens[0] = o->random_input_len;
        o->n_sweep_input_lens = 1;
    }
    /* p90 and p99 are always saved; the table shows only the asked percentiles. */
    o->n_pct_print = o->n_percentiles;
    for (int k = 0; k < 2; k++) {
        double want = k == 0 ? 90 : 99;
        int have = 0;
        for (int i = 0; i < o->n_percentiles; i++)
            have |= o->percentiles[i] == want;
        if (!have && o->n_percentiles < BENCH_MAX_PCTS)
            o->percentiles[o->n_percentiles++] = want;
    }
    if (o->random_prefix_len > 0 && o->ds_kind != BENCH_DS_RANDOM) {
        fprintf(stderr, "pdserve-bench: --random-prefix-len needs --dataset-name random\n");
        return -1;
    }
    return 0;
}

void bench_opts_cleanup(bench_opts_t *o)
{
    for (int i = 0; i < o->n_base_urls; i++)
        free(o->base_urls[i]);
    for (int i = 0; i < o->n_metadata; i++)
        free(o->metadata[i]);
    for (int i = 0; i < o->n_headers; i++)
        free(o->headers[i]);
    free(o->host);
    free(o->endpoint);
    free(o->backend);
    free(o->model);
    free(o->served_model_name);
    free(o->tokenizer);
    free(o->api_key);
    free(o->extra_body);
    free(o->dataset_path);
    free(o->result_dir);
    free(o->result_filename);
    free(o->label);
    memset(o, 0, sizeof(*o));
}
