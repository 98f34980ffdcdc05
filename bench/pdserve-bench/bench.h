/*
 * bench.h - internal interfaces of pdserve-bench, the serving load generator.
 *
 * Pieces, in the order a run uses them:
 *   opts    command line (vLLM `vllm bench serve` flag names) -> bench_opts_t
 *   data    datasets (random, prefix-repetition, sharegpt, sweep) -> bench_sample_t[],
 *           exact input lengths through the target's /tokenize and /detokenize
 *   run     one benchmark at one request rate: libcurl multi + epoll, gamma arrivals,
 *           SSE parsing, per-request timings -> bench_result_t[]
 *   stats   vLLM-definition metrics over the results -> bench_metrics_t
 *   report  the text table, the result JSON, gnuplot charts
 *
 * Times are seconds (double) measured with the monotonic clock; metrics are printed
 * and saved in milliseconds like vLLM.  One process, one thread.
 */
#ifndef BENCH_H
#define BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "pd_status.h"
#include "pd_util.h"

#define BENCH_MAX_URLS 64
#define BENCH_MAX_RATES 64
#define BENCH_MAX_PCTS 32
#define BENCH_MAX_META 64
#define BENCH_MAX_LENS 64

/* ---- options ---- */
typedef enum { BENCH_EP_COMPLETIONS = 0, BENCH_EP_CHAT } bench_ep_kind_t;

typedef enum {
    BENCH_DS_RANDOM = 0,
    BENCH_DS_PREFIX_REP,
    BENCH_DS_SHAREGPT,
    BENCH_DS_SWEEP
} bench_ds_kind_t;

/* Metric selection bits for --percentile-metrics. */
enum { BENCH_M_TTFT = 1, BENCH_M_TPOT = 2, BENCH_M_ITL = 4, BENCH_M_E2EL = 8 };

typedef struct bench_opts {
    /* target */
    char *base_urls[BENCH_MAX_URLS]; /* without trailing '/', malloc'd */
    int n_base_urls;
    char *host;
    int port;
    char *endpoint;     /* "/v1/completions" or "/v1/chat/completions" */
    bench_ep_kind_t ep_kind;
    char *backend;      /* "openai" | "openai-chat" */
    char *model;        /* NULL: first model of GET /v1/models */
    char *served_model_name;
    char *tokenizer;    /* accepted, unused */
    char *api_key;      /* --api-key or OPENAI_API_KEY */
    char *extra_body;   /* JSON object merged into each request */
    double request_timeout_s;
    int ready_check_timeout_s;
    /* traffic */
    int num_prompts;
    double rates[BENCH_MAX_RATES]; /* INFINITY = all at once */
    int n_rates;
    double burstiness;
    int max_concurrency; /* 0 = unlimited */
    uint64_t seed;
    int num_warmups;
    int ramp_strategy;   /* 0 none, 1 linear, 2 exponential (vLLM --ramp-up-strategy) */
    int ramp_start_rps, ramp_end_rps;
    int ignore_eos;      /* -1 unset (random datasets turn it on like vLLM) */
    /* dataset */
    bench_ds_kind_t ds_kind;
    char *dataset_path;
    int random_input_len, random_output_len, random_prefix_len;
    double random_range_ratio;
    int random_vocab_size; /* 0: ask the server, else 32000 */
    int pr_prefix_len, pr_suffix_len, pr_num_prefixes, pr_output_len;
    int sharegpt_output_len; /* 0: from the gpt turn */
    int sweep_input_lens[BENCH_MAX_LENS];
    int n_sweep_input_lens;
    /* sampling (NAN / -1 = not sent; temperature defaults to 0 like vLLM) */
    double temperature, top_p, min_p;
    double frequency_penalty, presence_penalty, repetition_penalty;
    int top_k;
    /* metrics and output */
    int percentile_metrics; /* BENCH_M_* bits */
    double percentiles[BENCH_MAX_PCTS]; /* the asked ones, then 90 and 99 if absent */
    int n_percentiles;
    int n_pct_print;                     /* the asked ones: printed in the table */
    double goodput_ttft_ms, goodput_tpot_ms, goodput_e2el_ms; /* < 0 = no SLO */
    int have_goodput;
    double goodput_attainment; /* fraction of requests that must meet SLOs (sweep) */
    int save_result, save_detailed;
    char *result_dir, *result_filename, *label;
    char *metadata[BENCH_MAX_META]; /* "KEY=VALUE" */
    int n_metadata;
    char *headers[BENCH_MAX_META];  /* "Key: value" lines for every request */
    int n_headers;
    int disable_tqdm;
    int plot;
    int quiet;
} bench_opts_t;

/* Parse argv into opts (defaults first).  Returns 0 to run, 1 when --help/--version was
 * printed (exit 0), -1 on a bad option (one line printed to stderr, exit non-zero). */
int bench_opts_parse(bench_opts_t *opts, int argc, char **argv);
void bench_opts_cleanup(bench_opts_t *opts);

/* ---- datasets ---- */
typedef struct bench_sample {
    char *prompt;      /* malloc'd */
    int prompt_len;    /* tokens (exact when the server tokenizes, else estimated) */
    int output_len;    /* max_tokens asked for */
} bench_sample_t;

typedef struct bench_dataset {
    bench_sample_t *samples;
    int n;
    int exact;         /* 1 when lengths come from the server's /tokenize */
} bench_dataset_t;

/* Build the dataset for one run.  input_len_override > 0 replaces --random-input-len
 * (sweep over input lengths).  Logs the cause on failure. */
pd_status_t bench_dataset_build(const bench_opts_t *opts, const char *model,
                                int input_len_override, bench_dataset_t *ds_p);
void bench_dataset_cleanup(bench_dataset_t *ds);

/* Small blocking HTTP helpers (setup only, never during the measured run). */
/* POST json to url; *body_p malloc'd on success (HTTP 2xx), *http_code_p always set. */
pd_status_t bench_http_post_json(const char *url, const char *api_key, const char *json,
                                 char **body_p, long *http_code_p);
pd_status_t bench_http_get(const char *url, const char *api_key, char **body_p,
                           long *http_code_p);

/* ---- one run ---- */
typedef enum {
    BENCH_ERR_NONE = 0,
    BENCH_ERR_HTTP,        /* non-2xx status */
    BENCH_ERR_TIMEOUT,     /* --request-timeout hit */
    BENCH_ERR_CONNECTION,  /* could not connect / send, or lost before any response */
    BENCH_ERR_DISCONNECT,  /* stream cut after the response began (no [DONE]) */
    BENCH_ERR_STREAM,      /* an SSE error event or an unparsable event */
    BENCH_ERR_EMPTY,       /* finished without any generated text */
    BENCH_ERR_CANCELED,    /* still in flight when the run was interrupted (Ctrl-C) */
    BENCH_ERR_COUNT_
} bench_err_kind_t;

const char *bench_err_kind_name(bench_err_kind_t kind);

typedef struct bench_result {
    int success;
    bench_err_kind_t err;
    long http_status;
    char *error;          /* malloc'd message or NULL */
    int prompt_len;
    int output_tokens;    /* from usage when present, else number of content chunks */
    int usage_tokens;     /* -1 when the server sent no usage */
    int n_chunks;         /* content-bearing chunks */
    double start_s;       /* send time relative to the run start */
    double ttft_s;
    double e2el_s;
    double *itl;          /* gaps between content chunks, n_chunks - 1 of them */
    int n_itl, cap_itl;
} bench_result_t;

typedef struct bench_run {
    double rate;
    double duration_s;
    bench_result_t *results; /* one per sample */
    int n;
    int peak_inflight;
    double cpu_s;            /* this process's user+sys CPU during the run */
    uint64_t bytes_rx;
    int interrupted;         /* Ctrl-C: results hold only the requests sent before it */
    int n_planned;           /* requests the run would have sent */
} bench_run_t;

/* Set from the SIGINT handler: runs stop sending, cancel what is in flight, report. */
extern volatile int bench_interrupted_g;

/* Run the dataset at one rate (INFINITY = all at once).  Warm-ups (opts->num_warmups
 * copies of the first sample) run first and are not part of the result. */
pd_status_t bench_run_execute(const bench_opts_t *opts, const char *model,
                              const bench_dataset_t *ds, double rate, bench_run_t *run_p);
void bench_run_cleanup(bench_run_t *run);

/* Gamma-distributed arrival offsets (seconds from the start, cumulative) for n requests
 * with shape = burstiness and mean gap 1/rate, rescaled so the last one lands at n/rate
 * as vLLM does.  rate INFINITY: all zero. */
void bench_arrivals(double rate, double burstiness, uint64_t seed, int n, double *out);
/* Arrivals whose rate ramps from start to end rps over the n requests (linear or
 * exponential, vLLM's ramp-up; strategy 1 or 2); no rescaling. */
void bench_arrivals_ramp(int strategy, double start, double end, double burstiness,
                         uint64_t seed, int n, double *out);

/* ---- random numbers (splitmix64 seeded xoshiro256**) ---- */
typedef struct { uint64_t s[4]; } bench_rng_t;
void bench_rng_seed(bench_rng_t *rng, uint64_t seed);
uint64_t bench_rng_u64(bench_rng_t *rng);
double bench_rng_uniform(bench_rng_t *rng);           /* [0, 1) */
int bench_rng_int(bench_rng_t *rng, int lo, int hi);   /* [lo, hi] inclusive */
double bench_rng_gamma(bench_rng_t *rng, double shape, double scale);

/* ---- metrics ---- */
typedef struct bench_stat {
    double mean, median, std;
    double pct[BENCH_MAX_PCTS]; /* at opts->percentiles */
    int n;
} bench_stat_t;

typedef struct bench_metrics {
    int completed, failed;
    int err_counts[BENCH_ERR_COUNT_];
    long total_input, total_output;
    double duration_s;
    double request_throughput, request_goodput, output_throughput, total_token_throughput;
    double input_throughput;   /* prompt tokens of completed requests / duration */
    int good;                  /* requests meeting every SLO */
    double attainment;         /* good / all requests */
    bench_stat_t ttft, tpot, itl, e2el; /* milliseconds */
    int n_usage, n_counted;    /* requests whose output count came from usage / chunks */
    double max_output_tokens_per_s;
    int max_concurrent_requests;
} bench_metrics_t;

/* numpy.percentile(a, p) with linear interpolation; a sorted ascending, n > 0. */
double bench_percentile_sorted(const double *a, int n, double p);
/* Mean, median, population std and percentiles of v (n may be 0: all zero). */
void bench_stat_compute(const double *v, int n, const double *pcts, int n_pcts,
                        double scale, bench_stat_t *st);
void bench_metrics_compute(const bench_opts_t *opts, const bench_run_t *run,
                           bench_metrics_t *m);

/* ---- report ---- */
void bench_report_print(const bench_opts_t *opts, const bench_run_t *run,
                        const bench_metrics_t *m);
/* Result JSON (vLLM key names); caller frees with free().  NULL when out of memory. */
char *bench_report_json(const bench_opts_t *opts, const char *model,
                        const bench_run_t *run, const bench_metrics_t *m, int input_len);
pd_status_t bench_report_save(const bench_opts_t *opts, const char *model, double rate,
                              int input_len, const char *json, char **path_p);
/* Path stem (no extension) for plots and the sweep JSON: {label}[-what][-concurrencyN]-
 * {model} inside --result-dir (created).  NULL on failure.  Caller frees. */
char *bench_plot_stem(const bench_opts_t *opts, const char *model, const char *what);
pd_status_t bench_plot_cdfs(const bench_opts_t *opts, const bench_run_t *run,
                            const char *stem);

typedef struct bench_sweep_row {
    double rate;
    int input_len;
    bench_metrics_t m;
} bench_sweep_row_t;

void bench_sweep_print(const bench_opts_t *opts, const bench_sweep_row_t *rows, int n);
char *bench_sweep_json(const bench_opts_t *opts, const char *model,
                       const bench_sweep_row_t *rows, int n);
pd_status_t bench_plot_sweep(const bench_opts_t *opts, const bench_sweep_row_t *rows,
                             int n, const char *stem);
/* Index of the highest rate whose attainment >= opts->goodput_attainment, or -1. */
int bench_sweep_best(const bench_opts_t *opts, const bench_sweep_row_t *rows, int n,
                     int input_len);

#endif /* BENCH_H */
