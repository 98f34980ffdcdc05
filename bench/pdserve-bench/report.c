/*
 * report.c - what a run prints and saves: vLLM's text table, the result JSON with
 * vLLM's key names (plus pdserve's extra keys, all documented in docs/bench.md), the
 * sweep summary, and gnuplot charts.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "bench.h"
#include "pd_log.h"

static void header(const char *title, char fill)
{
    /* Python's "{s:{c}^{n}}".format(s=title, n=50, c=fill) */
    int len = (int)strlen(title), total = 50;
    int left = len >= total ? 0 : (total - len) / 2;
    int right = len >= total ? 0 : total - len - left;
    for (int i = 0; i < left; i++)
        putchar(fill);
    fputs(title, stdout);
    for (int i = 0; i < right; i++)
        putchar(fill);
    putchar('\n');
}

static void row_i(const char *k, long v) { printf("%-40s %-10ld\n", k, v); }
static void row_f(const char *k, double v) { printf("%-40s %-10.2f\n", k, v); }

static void pct_word(double p, char *buf, size_t n)
{
    if (p == floor(p))
        snprintf(buf, n, "%d", (int)p);
    else
        snprintf(buf, n, "%g", p);
}

static void print_metric(const bench_opts_t *o, const bench_stat_t *st, const char *name,
                         const char *title)
{
    char k[64], pw[32];
    header(title, '-');
    snprintf(k, sizeof(k), "Mean %s (ms):", name);
    row_f(k, st->mean);
    snprintf(k, sizeof(k), "Median %s (ms):", name);
    row_f(k, st->median);
    for (int i = 0; i < o->n_pct_print; i++) {
        pct_word(o->percentiles[i], pw, sizeof(pw));
        snprintf(k, sizeof(k), "P%s %s (ms):", pw, name);
        row_f(k, st->pct[i]);
    }
}

void bench_report_print(const bench_opts_t *o, const bench_run_t *run, const bench_metrics_t *m)
{
    header(" Serving Benchmark Result ", '=');
    row_i("Successful requests:", m->completed);
    row_i("Failed requests:", m->failed);
    if (o->max_concurrency > 0)
        row_i("Maximum request concurrency:", o->max_concurrency);
    if (!isinf(run->rate))
        row_f("Request rate configured (RPS):", run->rate);
    row_f("Benchmark duration (s):", m->duration_s);
    row_i("Total input tokens:", m->total_input);
    row_i("Total generated tokens:", m->total_output);
    row_f("Request throughput (req/s):", m->request_throughput);
    if (o->have_goodput)
        row_f("Request goodput (req/s):", m->request_goodput);
    row_f("Output token throughput (tok/s):", m->output_throughput);
    row_f("Peak output token throughput (tok/s):", m->max_output_tokens_per_s);
    row_f("Peak concurrent requests:", m->max_concurrent_requests);
    row_f("Total Token throughput (tok/s):", m->total_token_throughput);
    if (o->percentile_metrics & BENCH_M_TTFT)
        print_metric(o, &m->ttft, "TTFT", "Time to First Token");
    if (o->percentile_metrics & BENCH_M_TPOT)
        print_metric(o, &m->tpot, "TPOT", "Time per Output Token (excl. 1st token)");
    if (o->percentile_metrics & BENCH_M_ITL)
        print_metric(o, &m->itl, "ITL", "Inter-token Latency");
    if (o->percentile_metrics & BENCH_M_E2EL)
        print_metric(o, &m->e2el, "E2EL", "End-to-end Latency");
    header("pdserve extras", '-');
    row_f("Input token throughput (tok/s):", m->input_throughput);
    if (o->have_goodput)
        row_f("Requests meeting all SLOs (%):", 100.0 * m->attainment);
    for (int k = 1; k < BENCH_ERR_COUNT_; k++) {
        char key[64];
        if (m->err_counts[k] == 0)
            continue;
        snprintf(key, sizeof(key), "Errors (%s):", bench_err_kind_name((bench_err_kind_t)k));
        row_i(key, m->err_counts[k]);
    }
    for (int i = 0; i < run->n; i++) {
        /* one line per distinct HTTP error status, first occurrence order */
        long st = run->results[i].http_status;
        int seen = 0, count = 0;
        if (run->results[i].err != BENCH_ERR_HTTP)
            continue;
        for (int j = 0; j < i && !seen; j++)
            seen = run->results[j].err == BENCH_ERR_HTTP && run->results[j].http_status == st;
        if (seen)
            continue;
        for (int j = i; j < run->n; j++)
            count += run->results[j].err == BENCH_ERR_HTTP && run->results[j].http_status == st;
        char key[64];
        snprintf(key, sizeof(key), "  HTTP %ld:", st);
        row_i(key, count);
    }
    printf("%-40s %s\n", "Output token counts from:",
           m->n_counted == 0 ? "server usage"
           : m->n_usage == 0 ? "streamed chunks (no usage sent)"
                             : "usage where sent, else chunks");
    row_f("Client CPU per chunk (us):",
          run->cpu_s * 1e6 / PD_MAX(1.0, (double)(m->itl.n + m->completed)));
    header("", '=');
    fflush(stdout);
}

static void add_stat(cJSON *root, const bench_opts_t *o, const char *name, const bench_stat_t *st)
{
    char k[64], pw[32];
    snprintf(k, sizeof(k), "mean_%s_ms", name);
    cJSON_AddNumberToObject(root, k, st->mean);
    snprintf(k, sizeof(k), "median_%s_ms", name);
    cJSON_AddNumberToObject(root, k, st->median);
    snprintf(k, sizeof(k), "std_%s_ms", name);
    cJSON_AddNumberToObject(root, k, st->std);
    for (int i = 0; i < o->n_percentiles; i++) {
        pct_word(o->percentiles[i], pw, sizeof(pw));
        snprintf(k, sizeof(k), "p%s_%s_ms", pw, name);
        cJSON_DeleteItemFromObject(root, k);
        cJSON_AddNumberToObject(root, k, st->pct[i]);
    }
}

static void date_str(char *buf, size_t n)
{
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(buf, n, "%Y%m%d-%H%M%S", &tm);
}

static void add_common(cJSON *root, const bench_opts_t *o, const char *model)
{
    char date[32];
    date_str(date, sizeof(date));
    cJSON_AddStringToObject(root, "date", date);
    cJSON_AddStringToObject(root, "endpoint_type", o->backend);
    cJSON_AddStringToObject(root, "backend", o->backend);
    if (o->label)
        cJSON_AddStringToObject(root, "label", o->label);
    else
        cJSON_AddNullToObject(root, "label");
    cJSON_AddStringToObject(root, "model_id", model);
    /* There is no local tokenizer: the target tokenizes. */
    cJSON_AddStringToObject(root, "tokenizer_id", model);
    cJSON_AddNumberToObject(root, "num_prompts", o->num_prompts);
    for (int i = 0; i < o->n_metadata; i++) {
        char *eq = strchr(o->metadata[i], '=');
        char *key = strndup(o->metadata[i], (size_t)(eq - o->metadata[i]));
        if (key) {
            cJSON_DeleteItemFromObject(root, key);
            cJSON_AddStringToObject(root, key, eq + 1);
        }
        free(key);
    }
    cJSON_AddNumberToObject(root, "burstiness", o->burstiness);
    if (o->max_concurrency > 0)
        cJSON_AddNumberToObject(root, "max_concurrency", o->max_concurrency);
    else
        cJSON_AddNullToObject(root, "max_concurrency");
}

char *bench_report_json(const bench_opts_t *o, const char *model, const bench_run_t *run,
                        const bench_metrics_t *m, int input_len)
{
    cJSON *root = cJSON_CreateObject();
    char *out;
    if (!root)
        return NULL;
    add_common(root, o, model);
    if (isinf(run->rate))
        cJSON_AddStringToObject(root, "request_rate", "inf");
    else
        cJSON_AddNumberToObject(root, "request_rate", run->rate);
    if (o->ramp_strategy) {
        cJSON_AddStringToObject(root, "ramp_up_strategy", o->ramp_strategy == 2 ? "exponential" : "linear");
        cJSON_AddNumberToObject(root, "ramp_up_start_rps", o->ramp_start_rps);
        cJSON_AddNumberToObject(root, "ramp_up_end_rps", o->ramp_end_rps);
    }
    cJSON_AddNumberToObject(root, "duration", m->duration_s);
    cJSON_AddNumberToObject(root, "completed", m->completed);
    cJSON_AddNumberToObject(root, "failed", m->failed);
    cJSON_AddNumberToObject(root, "total_input_tokens", (double)m->total_input);
    cJSON_AddNumberToObject(root, "total_output_tokens", (double)m->total_output);
    cJSON_AddNumberToObject(root, "request_throughput", m->request_throughput);
    if (o->have_goodput)
        cJSON_AddNumberToObject(root, "request_goodput", m->request_goodput);
    else
        cJSON_AddNullToObject(root, "request_goodput");
    cJSON_AddNumberToObject(root, "output_throughput", m->output_throughput);
    cJSON_AddNumberToObject(root, "total_token_throughput", m->total_token_throughput);
    cJSON_AddNumberToObject(root, "max_output_tokens_per_s", m->max_output_tokens_per_s);
    cJSON_AddNumberToObject(root, "max_concurrent_requests", m->max_concurrent_requests);
    add_stat(root, o, "ttft", &m->ttft);
    add_stat(root, o, "tpot", &m->tpot);
    add_stat(root, o, "itl", &m->itl);
    add_stat(root, o, "e2el", &m->e2el);

    /* pdserve extras */
    cJSON_AddNumberToObject(root, "input_throughput", m->input_throughput);
    cJSON *ek = cJSON_AddObjectToObject(root, "errors_by_kind");
    for (int k = 1; k < BENCH_ERR_COUNT_; k++)
        cJSON_AddNumberToObject(ek, bench_err_kind_name((bench_err_kind_t)k), m->err_counts[k]);
    cJSON *hs = cJSON_AddObjectToObject(root, "http_error_statuses");
    for (int i = 0; i < run->n; i++) {
        char code[24];
        if (run->results[i].err != BENCH_ERR_HTTP)
            continue;
        snprintf(code, sizeof(code), "%ld", run->results[i].http_status);
        cJSON *c = cJSON_GetObjectItemCaseSensitive(hs, code);
        if (c)
            cJSON_SetNumberValue(c, c->valuedouble + 1);
        else
            cJSON_AddNumberToObject(hs, code, 1);
    }
    cJSON_AddStringToObject(root, "output_token_source",
                            m->n_counted == 0 ? "usage" : m->n_usage == 0 ? "chunks" : "mixed");
    if (o->have_goodput) {
        cJSON *slo = cJSON_AddObjectToObject(root, "goodput_slo_ms");
        if (o->goodput_ttft_ms >= 0)
            cJSON_AddNumberToObject(slo, "ttft", o->goodput_ttft_ms);
        if (o->goodput_tpot_ms >= 0)
            cJSON_AddNumberToObject(slo, "tpot", o->goodput_tpot_ms);
        if (o->goodput_e2el_ms >= 0)
            cJSON_AddNumberToObject(slo, "e2el", o->goodput_e2el_ms);
        cJSON_AddNumberToObject(root, "good_requests", m->good);
        cJSON_AddNumberToObject(root, "slo_attainment", m->attainment);
    }
    cJSON_AddNumberToObject(root, "peak_inflight", run->peak_inflight);
    cJSON_AddNumberToObject(root, "client_cpu_s", run->cpu_s);
    if (input_len > 0)
        cJSON_AddNumberToObject(root, "sweep_input_len", input_len);

    if (o->save_detailed) {
        cJSON *il = cJSON_AddArrayToObject(root, "input_lens");
        cJSON *ol = cJSON_AddArrayToObject(root, "output_lens");
        cJSON *tt = cJSON_AddArrayToObject(root, "ttfts");
        cJSON *it = cJSON_AddArrayToObject(root, "itls");
        cJSON *er = cJSON_AddArrayToObject(root, "errors");
        cJSON *sk = cJSON_AddArrayToObject(root, "error_kinds");
        cJSON *st = cJSON_AddArrayToObject(root, "start_times");
        cJSON *el = cJSON_AddArrayToObject(root, "e2els");
        for (int i = 0; i < run->n; i++) {
            const bench_result_t *r = &run->results[i];
            cJSON_AddItemToArray(il, cJSON_CreateNumber(r->prompt_len));
            cJSON_AddItemToArray(ol, cJSON_CreateNumber(r->success ? r->output_tokens : 0));
            cJSON_AddItemToArray(tt, cJSON_CreateNumber(r->success ? r->ttft_s : 0));
            cJSON *one = cJSON_CreateArray();
            for (int k = 0; r->success && k < r->n_itl; k++)
                cJSON_AddItemToArray(one, cJSON_CreateNumber(r->itl[k]));
            cJSON_AddItemToArray(it, one);
            cJSON_AddItemToArray(er, cJSON_CreateString(r->error ? r->error : ""));
            cJSON_AddItemToArray(sk, cJSON_CreateString(bench_err_kind_name(r->err)));
            cJSON_AddItemToArray(st, cJSON_CreateNumber(r->start_s));
            cJSON_AddItemToArray(el, cJSON_CreateNumber(r->success ? r->e2el_s : 0));
        }
    }
    out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

static pd_status_t mkdir_p(const char *dir)
{
    char *tmp = strdup(dir);
    if (!tmp)
        return PD_ERR_NOMEM;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        mkdir(tmp, 0755);
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) {
        PD_LOG_ERR("mkdir %s: %s", dir, strerror(errno));
        free(tmp);
        return PD_ERR_IO;
    }
    free(tmp);
    return PD_OK;
}

static void rate_word(double rate, char *buf, size_t n)
{
    /* Python's str(float): "inf", "4.0", "2.5" */
    if (isinf(rate))
        snprintf(buf, n, "inf");
    else if (rate == floor(rate) && rate < 1e15)
        snprintf(buf, n, "%.1f", rate);
    else
        snprintf(buf, n, "%g", rate);
}

static char *result_path(const bench_opts_t *o, const char *model, const char *what, double rate,
                         int input_len)
{
    char date[32], rw[32], conc[32] = "", len[32] = "";
    char *name = NULL, *path = NULL;
    const char *base = strrchr(model, '/') ? strrchr(model, '/') + 1 : model;
    int many = o->n_rates > 1 || o->n_sweep_input_lens > 1;

    date_str(date, sizeof(date));
    rate_word(rate, rw, sizeof(rw));
    if (o->max_concurrency > 0)
        snprintf(conc, sizeof(conc), "-concurrency%d", o->max_concurrency);
    if (input_len > 0 && o->n_sweep_input_lens > 1)
        snprintf(len, sizeof(len), "-in%d", input_len);
    if (o->result_filename && strcmp(what, "result") == 0) {
        if (many) {
            /* several runs: keep one file each, named from the user's name */
            const char *dot = strrchr(o->result_filename, '.');
            int stem = dot ? (int)(dot - o->result_filename) : (int)strlen(o->result_filename);
            if (asprintf(&name, "%.*s-%sqps%s%s", stem, o->result_filename, rw, len,
                         dot ? dot : ".json") < 0)
                return NULL;
        } else {
            name = strdup(o->result_filename);
        }
    } else if (strcmp(what, "result") == 0 && o->ramp_strategy) {
        if (asprintf(&name, "%s-ramp-up-%s-%dqps-%dqps%s-%s-%s.json", o->label ? o->label : o->backend,
                     o->ramp_strategy == 2 ? "exponential" : "linear", o->ramp_start_rps,
                     o->ramp_end_rps, conc, base, date) < 0)
            return NULL;
    } else if (strcmp(what, "result") == 0) {
        if (asprintf(&name, "%s-%sqps%s%s-%s-%s.json", o->label ? o->label : o->backend, rw, len,
                     conc, base, date) < 0)
            return NULL;
    } else {
        /* plot / sweep stems: {label}[-{what}][-concurrencyN]-{model} */
        if (asprintf(&name, "%s%s%s%s-%s", o->label ? o->label : o->backend, what[0] ? "-" : "",
                     what, conc, base) < 0)
            return NULL;
    }
    if (!name)
        return NULL;
    if (o->result_dir) {
        if (asprintf(&path, "%s/%s", o->result_dir, name) < 0)
            path = NULL;
        free(name);
        return path;
    }
    return name;
}

static pd_status_t write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        PD_LOG_ERR("cannot write %s: %s", path, strerror(errno));
        return PD_ERR_IO;
    }
    fputs(text, f);
    if (fclose(f) != 0) {
        PD_LOG_ERR("cannot write %s: %s", path, strerror(errno));
        return PD_ERR_IO;
    }
    return PD_OK;
}

pd_status_t bench_report_save(const bench_opts_t *o, const char *model, double rate, int input_len,
                              const char *json, char **path_p)
{
    pd_status_t st;
    char *path;
    if (o->result_dir && (st = mkdir_p(o->result_dir)) != PD_OK)
        return st;
    path = result_path(o, model, "result", rate, input_len);
    if (!path)
        return PD_ERR_NOMEM;
    st = write_file(path, json);
    if (st == PD_OK && path_p)
        *path_p = path;
    else
        free(path);
    return st;
}

/* ---- sweep ---- */
int bench_sweep_best(const bench_opts_t *o, const bench_sweep_row_t *rows, int n, int input_len)
{
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (rows[i].input_len != input_len)
            continue;
        if (rows[i].m.attainment + 1e-12 >= o->goodput_attainment &&
            (best < 0 || rows[i].rate > rows[best].rate))
            best = i;
    }
    return best;
}

void bench_sweep_print(const bench_opts_t *o, const bench_sweep_row_t *rows, int n)
{
    char rw[32];
    header(" Sweep Summary ", '=');
    printf("%-8s %-7s %9s %10s %9s %7s %9s %9s %9s %9s %6s\n", "rate", "in_len", "req/s",
           "out tok/s", "good/s", "SLO%", "mTTFT", "p99TTFT", "mTPOT", "p99TPOT", "fail");
    for (int i = 0; i < n; i++) {
        const bench_metrics_t *m = &rows[i].m;
        int p99 = -1;
        for (int k = 0; k < o->n_percentiles; k++)
            if (o->percentiles[k] == 99)
                p99 = k;
        rate_word(rows[i].rate, rw, sizeof(rw));
        printf("%-8s %-7d %9.2f %10.2f %9.2f %7.1f %9.2f %9.2f %9.2f %9.2f %6d\n", rw,
               rows[i].input_len, m->request_throughput, m->output_throughput,
               m->request_goodput, 100.0 * m->attainment, m->ttft.mean,
               p99 >= 0 ? m->ttft.pct[p99] : NAN, m->tpot.mean,
               p99 >= 0 ? m->tpot.pct[p99] : NAN, m->failed);
    }
    if (o->have_goodput) {
        int lens[BENCH_MAX_LENS + 1], nl = 0;
        for (int i = 0; i < n; i++) {
            int seen = 0;
            for (int k = 0; k < nl; k++)
                seen |= lens[k] == rows[i].input_len;
            if (!seen && nl < BENCH_MAX_LENS)
                lens[nl++] = rows[i].input_len;
        }
        for (int k = 0; k < nl; k++) {
            int b = bench_sweep_best(o, rows, n, lens[k]);
            if (b < 0)
                printf("No rate met the SLOs for %.0f%% of requests (input len %d).\n",
                       100.0 * o->goodput_attainment, lens[k]);
            else {
                rate_word(rows[b].rate, rw, sizeof(rw));
                printf("Highest rate with >= %.0f%% of requests meeting all SLOs (input len %d): "
                       "%s req/s (goodput %.2f req/s)\n",
                       100.0 * o->goodput_attainment, lens[k], rw, rows[b].m.request_goodput);
            }
        }
    } else {
        printf("(give --goodput ttft:MS tpot:MS to find the highest rate meeting SLOs)\n");
    }
    header("", '=');
    fflush(stdout);
}

char *bench_sweep_json(const bench_opts_t *o, const char *model, const bench_sweep_row_t *rows,
                       int n)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *arr;
    char *out;
    add_common(root, o, model);
    cJSON_AddNumberToObject(root, "goodput_attainment_target", o->goodput_attainment);
    arr = cJSON_AddArrayToObject(root, "runs");
    for (int i = 0; i < n; i++) {
        const bench_metrics_t *m = &rows[i].m;
        cJSON *r = cJSON_CreateObject();
        if (isinf(rows[i].rate))
            cJSON_AddStringToObject(r, "request_rate", "inf");
        else
            cJSON_AddNumberToObject(r, "request_rate", rows[i].rate);
        cJSON_AddNumberToObject(r, "input_len", rows[i].input_len);
        cJSON_AddNumberToObject(r, "completed", m->completed);
        cJSON_AddNumberToObject(r, "failed", m->failed);
        cJSON_AddNumberToObject(r, "request_throughput", m->request_throughput);
        cJSON_AddNumberToObject(r, "request_goodput", m->request_goodput);
        cJSON_AddNumberToObject(r, "output_throughput", m->output_throughput);
        cJSON_AddNumberToObject(r, "slo_attainment", m->attainment);
        cJSON_AddNumberToObject(r, "mean_ttft_ms", m->ttft.mean);
        cJSON_AddNumberToObject(r, "mean_tpot_ms", m->tpot.mean);
        cJSON_AddNumberToObject(r, "mean_e2el_ms", m->e2el.mean);
        cJSON_AddItemToArray(arr, r);
    }
    if (o->have_goodput) {
        int b = bench_sweep_best(o, rows, n, rows[0].input_len);
        if (b >= 0)
            cJSON_AddNumberToObject(root, "max_rate_meeting_slo", rows[b].rate);
        else
            cJSON_AddNullToObject(root, "max_rate_meeting_slo");
    }
    out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

/* ---- gnuplot ---- */
static pd_status_t run_gnuplot(const char *script_path)
{
    char *cmd = NULL;
    int rc;
    if (asprintf(&cmd, "gnuplot '%s'", script_path) < 0)
        return PD_ERR_NOMEM;
    rc = system(cmd);
    free(cmd);
    if (rc != 0) {
        PD_LOG_ERR("gnuplot failed on %s (exit %d); is gnuplot installed?", script_path,
                   WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
        return PD_ERR_IO;
    }
    return PD_OK;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void write_cdf(FILE *f, double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_d);
    /* At most ~2000 points per curve keeps the file small; the steps stay exact. */
    int step = n > 2000 ? n / 2000 : 1;
    if (n > 0)
        fprintf(f, "%.6f 0.0\n", v[0] * 1000.0);
    for (int i = 0; i < n; i += step)
        fprintf(f, "%.6f %.6f\n", v[i] * 1000.0, (double)(i + 1) / n);
    if (n > 0)
        fprintf(f, "%.6f 1.0\n", v[n - 1] * 1000.0);
    fprintf(f, "\n\n");
}

pd_status_t bench_plot_cdfs(const bench_opts_t *o, const bench_run_t *run, const char *stem)
{
    char *dat = NULL, *gp = NULL, *png = NULL;
    FILE *f;
    pd_status_t st = PD_OK;
    int n = run->n, n_itl = 0, k;
    double *v[4];

    if (asprintf(&dat, "%s-cdf.dat", stem) < 0 || asprintf(&gp, "%s-cdf.gp", stem) < 0 ||
        asprintf(&png, "%s-cdf.png", stem) < 0) {
        st = PD_ERR_NOMEM;
        goto out;
    }
    for (int i = 0; i < n; i++)
        if (run->results[i].success)
            n_itl += run->results[i].n_itl;
    for (k = 0; k < 4; k++)
        v[k] = calloc((size_t)(k == 2 ? n_itl : n) + 1, sizeof(double));
    int c[4] = {0};
    for (int i = 0; i < n; i++) {
        const bench_result_t *r = &run->results[i];
        if (!r->success)
            continue;
        v[0][c[0]++] = r->ttft_s;
        if (r->output_tokens > 1)
            v[1][c[1]++] = (r->e2el_s - r->ttft_s) / (r->output_tokens - 1);
        for (int j = 0; j < r->n_itl; j++)
            v[2][c[2]++] = r->itl[j];
        v[3][c[3]++] = r->e2el_s;
    }
    f = fopen(dat, "w");
    if (!f) {
        PD_LOG_ERR("cannot write %s: %s", dat, strerror(errno));
        st = PD_ERR_IO;
    } else {
        for (k = 0; k < 4; k++)
            write_cdf(f, v[k], c[k]);
        fclose(f);
    }
    for (k = 0; k < 4; k++)
        free(v[k]);
    if (st != PD_OK)
        goto out;
    f = fopen(gp, "w");
    if (!f) {
        st = PD_ERR_IO;
        goto out;
    }
    char rw[32];
    rate_word(run->rate, rw, sizeof(rw));
    fprintf(f,
            "set terminal pngcairo size 1200,900 font ',10'\n"
            "set output '%s'\n"
            "set multiplot layout 2,2 title 'pdserve-bench latency CDFs (rate %s req/s, %d requests)'\n"
            "set grid\nset yrange [0:1.02]\nunset key\n",
            png, rw, n);
    const char *names[4] = {"TTFT (ms)", "TPOT (ms)", "ITL (ms, every gap)", "E2E latency (ms)"};
    for (k = 0; k < 4; k++) {
        /* ITL pools every gap of every request: its CDF is over gaps, not requests */
        fprintf(f, "set ylabel 'fraction of %s'\n", k == 2 ? "gaps" : "requests");
        if (c[k] == 0)
            fprintf(f, "set title '%s: no data'\nset xlabel '%s'\nplot [0:1] 0 with lines\n",
                    names[k], names[k]);
        else
            fprintf(f, "set title '%s'\nset xlabel '%s'\nplot '%s' index %d using 1:2 with steps lw 2\n",
                    names[k], names[k], dat, k);
    }
    fprintf(f, "unset multiplot\n");
    fclose(f);
    st = run_gnuplot(gp);
    if (st == PD_OK && !o->quiet)
        printf("Plot: %s\n", png);
out:
    free(dat);
    free(gp);
    free(png);
    return st;
}

pd_status_t bench_plot_sweep(const bench_opts_t *o, const bench_sweep_row_t *rows, int n,
                             const char *stem)
{
    char *dat = NULL, *gp = NULL, *png = NULL;
    FILE *f;
    pd_status_t st = PD_OK;

    if (asprintf(&dat, "%s-sweep.dat", stem) < 0 || asprintf(&gp, "%s-sweep.gp", stem) < 0 ||
        asprintf(&png, "%s-sweep.png", stem) < 0) {
        st = PD_ERR_NOMEM;
        goto out;
    }
    f = fopen(dat, "w");
    if (!f) {
        PD_LOG_ERR("cannot write %s: %s", dat, strerror(errno));
        st = PD_ERR_IO;
        goto out;
    }
    fprintf(f, "# rate input_len req_s out_tok_s goodput_req_s attainment_pct mean_ttft mean_tpot\n");
    int prev_len = rows[0].input_len;
    for (int i = 0; i < n; i++) {
        if (isinf(rows[i].rate))
            continue; /* an "all at once" point has no x position */
        if (rows[i].input_len != prev_len) {
            fprintf(f, "\n\n");
            prev_len = rows[i].input_len;
        }
        const bench_metrics_t *m = &rows[i].m;
        fprintf(f, "%g %d %g %g %g %g %g %g\n", rows[i].rate, rows[i].input_len,
                m->request_throughput, m->output_throughput, m->request_goodput,
                100.0 * m->attainment, m->ttft.mean, m->tpot.mean);
    }
    fclose(f);
    f = fopen(gp, "w");
    if (!f) {
        st = PD_ERR_IO;
        goto out;
    }
    fprintf(f,
            "set terminal pngcairo size 1200,900 font ',10'\n"
            "set output '%s'\n"
            "set multiplot layout 2,2 title 'pdserve-bench sweep'\nset grid\n"
            "set key top left\nset xlabel 'request rate (req/s)'\n"
            "set title 'request throughput and goodput'\nset ylabel 'req/s'\n"
            "plot '%s' using 1:3 with linespoints lw 2 title 'throughput', "
            "'' using 1:5 with linespoints lw 2 title 'goodput', x with lines dt 2 title 'offered'\n"
            "set title 'output token throughput'\nset ylabel 'tok/s'\n"
            "plot '%s' using 1:4 with linespoints lw 2 title 'output tok/s'\n"
            "set title 'requests meeting all SLOs'\nset ylabel '%%'\nset yrange [0:105]\nset key bottom left\n"
            "plot '%s' using 1:6 with linespoints lw 2 title 'attained', %g with lines dt 2 title 'target'\n"
            "set autoscale y\nset key top left\nset title 'mean latency'\nset ylabel 'ms'\n"
            "plot '%s' using 1:7 with linespoints lw 2 title 'TTFT', '' using 1:8 with linespoints lw 2 title 'TPOT'\n"
            "unset multiplot\n",
            png, dat, dat, dat, 100.0 * o->goodput_attainment, dat);
    fclose(f);
    st = run_gnuplot(gp);
    if (st == PD_OK && !o->quiet)
        printf("Plot: %s\n", png);
out:
    free(dat);
    free(gp);
    free(png);
    return st;
}

char *bench_plot_stem(const bench_opts_t *o, const char *model, const char *what)
{
    if (o->result_dir && mkdir_p(o->result_dir) != PD_OK)
        return NULL;
    return result_path(o, model, what, 0, 0);
}
