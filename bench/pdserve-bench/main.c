/*
 * pdserve-bench - serving benchmark for OpenAI-compatible servers.
 *
 * main: parse options, find the model, build the dataset through the target's
 * tokenizer, check the target answers, then run one benchmark per (input length,
 * request rate) and print / save each; several runs end with a sweep summary that
 * names the highest rate meeting the goodput SLOs.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench.h"
#include "pd_log.h"

static void on_sigint(int sig)
{
    (void)sig;
    bench_interrupted_g = 1;
}

/* First Ctrl-C: stop the run and report what finished; a second one kills at once. */
static void catch_sigint(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static char *first_model(const bench_opts_t *o)
{
    char *url = NULL, *body = NULL, *id = NULL;
    long code = 0;
    if (asprintf(&url, "%s/v1/models", o->base_urls[0]) < 0)
        return NULL;
    pd_status_t st = bench_http_get(url, o->api_key, &body, &code);
    if (st != PD_OK) {
        PD_LOG_ERR("no --model given and GET %s failed (%s, HTTP %ld); is the server up?", url,
                   pd_status_str(st), code);
        free(url);
        return NULL;
    }
    cJSON *j = cJSON_Parse(body);
    cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
    cJSON *m0 = cJSON_IsArray(data) ? cJSON_GetArrayItem(data, 0) : NULL;
    cJSON *mid = cJSON_GetObjectItemCaseSensitive(m0, "id");
    if (cJSON_IsString(mid))
        id = strdup(mid->valuestring);
    else
        PD_LOG_ERR("GET %s listed no models", url);
    cJSON_Delete(j);
    free(body);
    free(url);
    return id;
}

/* vLLM's initial single prompt test run: retry until the first request succeeds. */
static int ready_check(const bench_opts_t *o, const char *model, const bench_dataset_t *ds)
{
    bench_opts_t one = *o;
    bench_dataset_t d1 = {ds->samples, 1, ds->exact};
    double deadline = pd_now_s() + o->ready_check_timeout_s;
    const char *last = "no attempt";
    char lastbuf[600];

    one.num_warmups = 0;
    one.disable_tqdm = 1;
    if (!o->quiet)
        printf("Starting initial single prompt test run...\n");
    for (;;) {
        bench_run_t run = {0};
        if (bench_run_execute(&one, model, &d1, INFINITY, &run) == PD_OK) {
            int ok = run.results[0].success;
            snprintf(lastbuf, sizeof(lastbuf), "%s", run.results[0].error ? run.results[0].error : "");
            last = lastbuf;
            bench_run_cleanup(&run);
            if (ok) {
                if (!o->quiet)
                    printf("Initial test run completed.\n");
                return 0;
            }
        }
        if (pd_now_s() + 1.0 > deadline)
            break;
        sleep(1);
    }
    fprintf(stderr, "pdserve-bench: initial test run failed - check the benchmark arguments: %s\n",
            last);
    return -1;
}

/* Dataset seed of the k-th run of a sweep: --seed itself for the first run, then a
 * splitmix64 step of (seed, k), so runs get unrelated prompts, the same ones each time
 * the same command runs. */
static uint64_t run_seed(uint64_t seed, int k)
{
    uint64_t z;

    if (k == 0)
        return seed;
    z = seed + 0x9E3779B97F4A7C15ULL * (uint64_t)k;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

int main(int argc, char **argv)
{
    bench_opts_t o;
    char *model = NULL;
    bench_sweep_row_t *rows = NULL;
    int n_rows = 0, rc = 0, any_ok = 0;
    int pr = bench_opts_parse(&o, argc, argv);

    if (pr != 0) {
        bench_opts_cleanup(&o);
        return pr > 0 ? 0 : 2;
    }
    pd_log_set_tag("bench");
    raise_fd_limit();
    curl_global_init(CURL_GLOBAL_DEFAULT);

    if (o.model)
        model = strdup(o.model);
    else if ((model = first_model(&o)) != NULL && !o.quiet)
        printf("Using model: %s\n", model);
    if (!model) {
        rc = 2;
        goto out;
    }
    const char *api_model = o.served_model_name ? o.served_model_name : model;
    int n_lens = o.ds_kind == BENCH_DS_SWEEP ? o.n_sweep_input_lens : 1;
    rows = calloc((size_t)(n_lens * o.n_rates), sizeof(*rows));
    if (!rows) {
        rc = 1;
        goto out;
    }

    for (int li = 0; li < n_lens; li++) {
        int in_len = o.ds_kind == BENCH_DS_SWEEP ? o.sweep_input_lens[li] : 0;
        for (int ri = 0; ri < o.n_rates; ri++) {
            bench_run_t run = {0};
            bench_metrics_t m;
            bench_dataset_t ds = {0};
            double rate = o.rates[ri];
            /* Every run of a sweep draws its own prompts: with the same prompts a server
             * with prefix caching would serve each later run's prefills from the cache
             * the earlier runs filled, and the later (higher) rates would look better
             * than they are.  The first run keeps --seed as given (as vLLM uses it). */
            bench_opts_t o_ds = o;
            o_ds.seed = run_seed(o.seed, li * o.n_rates + ri);
            if (bench_dataset_build(&o_ds, api_model, in_len, &ds) != PD_OK) {
                rc = 1;
                goto out;
            }
            if (li == 0 && ri == 0 && o.ready_check_timeout_s > 0 &&
                ready_check(&o, api_model, &ds) != 0) {
                bench_dataset_cleanup(&ds);
                rc = 1;
                goto out;
            }
            if (!o.quiet) {
                if (in_len > 0)
                    printf("Input length: %d tokens\n", in_len);
                if (o.ramp_strategy)
                    printf("Traffic ramp-up strategy: %s.\nWill increase RPS from %d to %d RPS "
                           "over the duration of the benchmark.\n",
                           o.ramp_strategy == 2 ? "exponential" : "linear", o.ramp_start_rps,
                           o.ramp_end_rps);
                else
                    printf("Traffic request rate: %g\n", rate);
                printf("Burstiness factor: %g (%s)\n"
                       "Maximum request concurrency: %s%.0d\n",
                       o.burstiness, o.burstiness == 1.0 ? "Poisson process" : "Gamma distribution",
                       o.max_concurrency ? "" : "None", o.max_concurrency);
                fflush(stdout);
            }
            catch_sigint();
            if (bench_run_execute(&o, api_model, &ds, rate, &run) != PD_OK) {
                bench_dataset_cleanup(&ds);
                rc = 1;
                goto out;
            }
            bench_metrics_compute(&o, &run, &m);
            any_ok |= m.completed > 0;
            if (m.completed == 0)
                fprintf(stderr, "pdserve-bench: all requests failed (first error: %s)\n",
                        run.results[0].error ? run.results[0].error : "?");
            bench_report_print(&o, &run, &m);
            if (run.interrupted)
                printf("Interrupted: %d of %d requests were sent; the figures cover those "
                       "(requests in flight count as canceled).\n", run.n, run.n_planned);
            if (!ds.exact && !o.quiet)
                printf("Note: the target has no /tokenize; input lengths are estimates.\n");
            if (o.save_result) {
                char *json = bench_report_json(&o, model, &run, &m, in_len);
                char *path = NULL;
                if (json && bench_report_save(&o, model, rate, in_len, json, &path) == PD_OK &&
                    !o.quiet)
                    printf("Result: %s\n", path);
                free(json);
                free(path);
            }
            if (o.plot) {
                char what[64], rw[32];
                if (isinf(rate))
                    snprintf(rw, sizeof(rw), "inf");
                else
                    snprintf(rw, sizeof(rw), "%g", rate);
                if (in_len > 0)
                    snprintf(what, sizeof(what), "%sqps-in%d", rw, in_len);
                else
                    snprintf(what, sizeof(what), "%sqps", rw);
                char *stem = bench_plot_stem(&o, model, what);
                if (stem)
                    bench_plot_cdfs(&o, &run, stem);
                free(stem);
            }
            rows[n_rows].rate = rate;
            rows[n_rows].input_len = in_len > 0 ? in_len : o.random_input_len;
            rows[n_rows].m = m;
            n_rows++;
            bench_run_cleanup(&run);
            bench_dataset_cleanup(&ds);
            if (bench_interrupted_g)
                break;
        }
        if (bench_interrupted_g)
            break;
    }

    if (n_rows > 1) {
        bench_sweep_print(&o, rows, n_rows);
        if (o.save_result) {
            char *json = bench_sweep_json(&o, model, rows, n_rows);
            char *stem = bench_plot_stem(&o, model, "");
            char *path = NULL;
            if (json && stem && asprintf(&path, "%s-sweep.json", stem) > 0) {
                FILE *f = fopen(path, "w");
                if (f) {
                    fputs(json, f);
                    fclose(f);
                    if (!o.quiet)
                        printf("Sweep result: %s\n", path);
                }
            }
            free(path);
            free(stem);
            free(json);
        }
        if (o.plot) {
            char *stem = bench_plot_stem(&o, model, "");
            if (stem)
                bench_plot_sweep(&o, rows, n_rows, stem);
            free(stem);
        }
    }
    if (!any_ok)
        rc = 3;
    if (bench_interrupted_g)
        rc = 130;
out:
    free(rows);
    free(model);
    bench_opts_cleanup(&o);
    curl_global_cleanup();
    return rc;
}
