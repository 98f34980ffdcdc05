/*
 * bench_engine.c - prefill and decode tokens/s of the whole engine (eng_engine: scheduler,
 * forward, sampler, detokenizer) on a GGUF model, on the CPU backend.
 *
 *   prefill P:  one request of P prompt tokens, max_tokens 1; tokens/s = P / (time from
 *               submit to the request's last event).  The lm_head + sampling of the one
 *               output token are included (as in llama.cpp's prompt eval, which also
 *               computes the last row's logits).
 *   decode B:   B requests at once, each D_prompt prompt tokens then D + 1 generated
 *               tokens (greedy, ignore_eos); aggregate decode tokens/s = B * D / (time
 *               from the last first-token to the last finish), i.e. the steps that only
 *               decode B sequences.
 *
 * Every case runs `reps` times and prints the best and the median (the machine may be
 * shared: the best run is the one least disturbed).  The ceiling printed beside the
 * decode figures: weight bytes streamed per forward (every weight tensor once; the
 * embedding table only when it is also the lm_head) / memory bandwidth measured in the
 * same run (memcpy: bytes copied per second; read: a streaming sum), i.e. the
 * forward-per-second floor for batch 1 decode when the weights do not fit in cache.
 *
 * Prompt token ids are pseudo-random ids in [1000, 40000) from a fixed LCG
 * (bench/cpu_vs_llamacpp.py draws the same ones for its peer).  Prefix caching is off.
 *
 * Usage: bench_engine [-m model.gguf] [-t threads] [-p 128,512] [-n 128] [-b 1,8,32]
 *                     [-r reps] [--decode-prompt 16] [--exact]
 *        bench_engine --print-prompt SEED N   (the first N <= 64 prompt ids of SEED)
 * Prints a table, then one line "JSON {...}".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/resource.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_engine.h"
#include "eng_model.h"
#include "pd_log.h"
#include "pd_util.h"

#define MAX_LIST 8
#define MAX_BATCH 256

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;
} waiter_t;

typedef struct req_slot {
    waiter_t *w;
    uint64_t t_first, t_done;
    int n_out;
} req_slot_t;

static void on_out(void *user, const eng_output_t *out)
{
    req_slot_t *s = user;
    uint64_t now = pd_now_ns();
    if (s->n_out == 0 && out->n_token_ids > 0)
        s->t_first = now;
    s->n_out += out->n_token_ids;
    if (out->request_done) {
        s->t_done = now;
        pthread_mutex_lock(&s->w->mu);
        s->w->pending--;
        pthread_cond_signal(&s->w->cv);
        pthread_mutex_unlock(&s->w->mu);
    }
}

/* the prompt generator shared with cpu_vs_llamacpp.py */
static void make_prompt(uint64_t seed, int32_t *ids, int n)
{
    uint64_t s = seed * 2862933555777941757ull + 3037000493ull;
    for (int i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = 1000 + (int32_t)((s >> 33) % 39000u);
    }
}

static int g_req_counter;

/* Submit n requests of n_prompt tokens (seeds seed0..) generating max_tokens each; wait. */
static int run_requests(eng_engine_t *e, int n, int n_prompt, int max_tokens, uint64_t seed0,
                        req_slot_t *slots, uint64_t *t_submit_p)
{
    waiter_t w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, n};
    int32_t *ids = malloc((size_t)n_prompt * sizeof(int32_t));
    if (ids == NULL)
        return -1;
    *t_submit_p = pd_now_ns();
    for (int i = 0; i < n; i++) {
        eng_sampling_params_t p;
        eng_submit_t sub = {0};
        char id[48], err[256];
        make_prompt(seed0 + (uint64_t)i, ids, n_prompt);
        eng_sampling_params_init(&p);
        p.max_tokens = max_tokens;
        p.ignore_eos = true;
        p.temperature = 0.0f;
        snprintf(id, sizeof(id), "bench-%d", g_req_counter++);
        slots[i] = (req_slot_t){.w = &w};
        sub.id = id;
        sub.prompt = ids;
        sub.n_prompt = n_prompt;
        sub.params = &p;
        sub.cb = on_out;
        sub.user = &slots[i];
        if (eng_engine_submit(e, &sub, err, sizeof(err)) != PD_OK) {
            fprintf(stderr, "bench_engine: submit failed: %s\n", err);
            eng_sampling_params_cleanup(&p);
            /* the ones submitted still complete: wait for them */
            pthread_mutex_lock(&w.mu);
            w.pending -= n - i;
            while (w.pending > 0)
                pthread_cond_wait(&w.cv, &w.mu);
            pthread_mutex_unlock(&w.mu);
            free(ids);
            return -1;
        }
        eng_sampling_params_cleanup(&p);
    }
    pthread_mutex_lock(&w.mu);
    while (w.pending > 0)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    free(ids);
    return 0;
}

/* CPU seconds of the whole process (all threads) so far: tokens per CPU-second is the
 * figure that survives a shared machine (spinning workers count against it). */
static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void best_median(double *v, int n, double *best_p, double *median_p)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    *best_p = v[n - 1];
    *median_p = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- bandwidth ceiling ---- */

static double memcpy_gbs(void)
{
    size_t n = 256u << 20;
    char *a = malloc(n), *b = malloc(n);
    double best = 0;
    if (a == NULL || b == NULL) {
        free(a);
        free(b);
        return 0;
    }
    memset(a, 1, n);
    memset(b, 2, n);
    for (int r = 0; r < 5; r++) {
        uint64_t t0 = pd_now_ns();
        memcpy(r % 2 ? a : b, r % 2 ? b : a, n);
        double s = (double)(pd_now_ns() - t0) * 1e-9;
        if (s > 0 && n / s * 1e-9 > best)
            best = (double)n / s * 1e-9;
    }
    /* keep the copies observable */
    if (a[n / 3] == 7)
        fprintf(stderr, "?");
    free(a);
    free(b);
    return best;
}

static double read_gbs(void)
{
    size_t n = (256u << 20) / sizeof(uint64_t);
    uint64_t *a = malloc(n * sizeof(uint64_t));
    double best = 0;
    volatile uint64_t sink = 0;
    if (a == NULL)
        return 0;
    for (size_t i = 0; i < n; i++)
        a[i] = i;
    for (int r = 0; r < 5; r++) {
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        uint64_t t0 = pd_now_ns();
        for (size_t i = 0; i < n; i += 4) {
            s0 += a[i];
            s1 += a[i + 1];
            s2 += a[i + 2];
            s3 += a[i + 3];
        }
        double s = (double)(pd_now_ns() - t0) * 1e-9;
        sink += s0 + s1 + s2 + s3;
        if (s > 0 && (double)(n * sizeof(uint64_t)) / s * 1e-9 > best)
            best = (double)(n * sizeof(uint64_t)) / s * 1e-9;
    }
    (void)sink;
    free(a);
    return best;
}

/* Bytes of weights one forward streams: all tensors, minus the embedding table unless it
 * is also the lm_head (tied embeddings: no output.weight). */
static double weight_bytes_per_forward(const eng_model_t *m)
{
    double bytes = 0;
    bool tied = eng_model_tensor(m, "output.weight") == NULL;
    for (size_t i = 0; i < eng_model_n_tensors(m); i++) {
        const eng_tensor_t *t = eng_model_tensor_at(m, i);
        if (!tied && strcmp(t->name, "token_embd.weight") == 0)
            continue;
        bytes += (double)t->nbytes;
    }
    return bytes;
}

static int parse_list(const char *s, int *v)
{
    int n = 0;
    while (*s && n < MAX_LIST) {
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s || x <= 0)
            return -1;
        v[n++] = (int)x;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

static const char *default_model(char *buf, size_t cap)
{
    const char *env = getenv("PD_MODEL_GGUF"), *home = getenv("HOME");
    if (env && *env)
        return env;
    snprintf(buf, cap, "%s/.cache/pdserve/models/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "/root");
    return buf;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_engine [-m model.gguf] [-t threads] [-p 128,512] [-n 128] [-b 1,8,32]\n"
                    "                    [-r reps] [--decode-prompt N] [--exact]\n");
}

int main(int argc, char **argv)
{
    char mbuf[4096];
    const char *model = default_model(mbuf, sizeof(mbuf));
    int threads = 2, n_decode = 128, reps = 3, decode_prompt = 16;
    int prefill[MAX_LIST] = {128, 512}, n_prefill = 2;
    int batches[MAX_LIST] = {1, 8, 32}, n_batches = 3;
    bool exact = false;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--exact") == 0) {
            exact = true;
            continue;
        }
        if (strcmp(a, "--print-prompt") == 0 && i + 2 < argc) {
            /* --print-prompt SEED N: the prompt ids (tests check the Python copy) */
            int n = atoi(argv[i + 2]);
            int32_t ids[64];
            if (n < 1 || n > 64)
                return 2;
            make_prompt(strtoull(argv[i + 1], NULL, 10), ids, n);
            for (int k = 0; k < n; k++)
                printf("%s%d", k ? " " : "", ids[k]);
            printf("\n");
            return 0;
        }
        if (v == NULL) {
            usage();
            return 2;
        }
        i++;
        if (strcmp(a, "-m") == 0)
            model = v;
        else if (strcmp(a, "-t") == 0)
            threads = atoi(v);
        else if (strcmp(a, "-n") == 0)
            n_decode = atoi(v);
        else if (strcmp(a, "-r") == 0)
            reps = atoi(v);
        else if (strcmp(a, "--decode-prompt") == 0)
            decode_prompt = atoi(v);
        else if (strcmp(a, "-p") == 0)
            n_prefill = parse_list(v, prefill);
        else if (strcmp(a, "-b") == 0)
            n_batches = parse_list(v, batches);
        else {
            usage();
            return 2;
        }
    }
    if (threads < 1 || n_decode < 1 || reps < 1 || decode_prompt < 1 || n_prefill < 0 || n_batches < 0) {
        usage();
        return 2;
    }
    if (access(model, R_OK) != 0) {
        fprintf(stderr, "bench_engine: model %s not found (set PD_MODEL_GGUF or -m)\n", model);
        return 77;
    }
    for (int i = 0; i < n_batches; i++)
        if (batches[i] > MAX_BATCH) {
            fprintf(stderr, "bench_engine: batch %d > %d\n", batches[i], MAX_BATCH);
            return 2;
        }

    int max_prefill = 1, max_batch = 1;
    for (int i = 0; i < n_prefill; i++)
        max_prefill = PD_MAX(max_prefill, prefill[i]);
    for (int i = 0; i < n_batches; i++)
        max_batch = PD_MAX(max_batch, batches[i]);

    eng_engine_cfg_t c;
    eng_engine_t *e = NULL;
    eng_engine_cfg_init(&c);
    c.load.model = model;
    /* room for the largest case and the 64-token warm-up */
    c.load.max_model_len = PD_MAX(PD_MAX(max_prefill + 2, decode_prompt + n_decode + 2) + 16, 96);
    c.load.keep_quantized = true;
    c.exact_matmul = exact;
    c.n_threads = threads;
    c.enable_prefix_caching = false;
    c.max_num_seqs = PD_MAX(max_batch, 1);
    c.max_num_batched_tokens = PD_MAX(8192, max_prefill);
    c.block_size = 16;
    {
        int64_t per_seq = (c.load.max_model_len + 15) / 16;
        c.num_blocks = per_seq * max_batch + 16;
    }
    if (eng_engine_create(&c, &e) != PD_OK) {
        fprintf(stderr, "bench_engine: cannot create the engine for %s\n", model);
        return 1;
    }
    const eng_model_t *m = eng_engine_model(e);
    double wbytes = weight_bytes_per_forward(m);
    double cp_gbs = memcpy_gbs(), rd_gbs = read_gbs();
    double floor_cp = cp_gbs > 0 ? cp_gbs * 1e9 / wbytes : 0, floor_rd = rd_gbs > 0 ? rd_gbs * 1e9 / wbytes : 0;
    req_slot_t *slots = calloc(MAX_BATCH, sizeof(*slots));
    double *v = calloc((size_t)reps, sizeof(double));
    double pf_best[MAX_LIST] = {0}, pf_med[MAX_LIST] = {0}, dc_best[MAX_LIST] = {0}, dc_med[MAX_LIST] = {0};
    double pf_cpu[MAX_LIST] = {0}, dc_cpu[MAX_LIST] = {0};
    uint64_t seed = 1, t_sub;
    int rc = 0;
    if (slots == NULL || v == NULL) {
        rc = 1;
        goto out;
    }

    /* warm-up: page the weights in, start the pool's threads */
    if (run_requests(e, 1, 64, 4, 999999, slots, &t_sub) != 0) {
        rc = 1;
        goto out;
    }

    for (int i = 0; i < n_prefill; i++) {
        double c0 = cpu_seconds();
        for (int r = 0; r < reps; r++) {
            if (run_requests(e, 1, prefill[i], 1, seed++, slots, &t_sub) != 0) {
                rc = 1;
                goto out;
            }
            v[r] = prefill[i] / ((double)(slots[0].t_done - t_sub) * 1e-9);
        }
        pf_cpu[i] = (double)prefill[i] * reps / (cpu_seconds() - c0);
        best_median(v, reps, &pf_best[i], &pf_med[i]);
    }
    for (int i = 0; i < n_batches; i++) {
        int B = batches[i];
        double c0 = cpu_seconds();
        for (int r = 0; r < reps; r++) {
            uint64_t first = 0, done = 0;
            if (run_requests(e, B, decode_prompt, n_decode + 1, seed, slots, &t_sub) != 0) {
                rc = 1;
                goto out;
            }
            seed += (uint64_t)B;
            for (int k = 0; k < B; k++) {
                first = PD_MAX(first, slots[k].t_first);
                done = PD_MAX(done, slots[k].t_done);
            }
            v[r] = (double)B * n_decode / ((double)(done - first) * 1e-9);
        }
        /* CPU time of the whole requests (their short prompts included) */
        dc_cpu[i] = (double)B * (n_decode + 1) * reps / (cpu_seconds() - c0);
        best_median(v, reps, &dc_best[i], &dc_med[i]);
    }

    printf("bench_engine: %s, %d threads, matmul %s, %d reps (best / median)\n", model, threads,
           exact ? "exact" : "fast", reps);
    printf("weights per forward %.1f MB; memcpy %.2f GB/s, read %.2f GB/s -> decode ceiling %.0f (memcpy) / %.0f (read) forwards/s\n",
           wbytes * 1e-6, cp_gbs, rd_gbs, floor_cp, floor_rd);
    printf("%-22s %12s %12s %14s\n", "case", "best tok/s", "median", "tok/CPU-s");
    for (int i = 0; i < n_prefill; i++) {
        char name[64];
        snprintf(name, sizeof(name), "prefill %d", prefill[i]);
        printf("%-22s %12.1f %12.1f %14.1f\n", name, pf_best[i], pf_med[i], pf_cpu[i]);
    }
    for (int i = 0; i < n_batches; i++) {
        char name[64];
        snprintf(name, sizeof(name), "decode %d x b%d", n_decode, batches[i]);
        printf("%-22s %12.1f %12.1f %14.1f\n", name, dc_best[i], dc_med[i], dc_cpu[i]);
    }
    printf("JSON {\"threads\":%d,\"mode\":\"%s\",\"reps\":%d,\"weight_bytes\":%.0f,\"memcpy_gbs\":%.3f,\"read_gbs\":%.3f,"
           "\"ceiling_memcpy_tok_s\":%.1f,\"ceiling_read_tok_s\":%.1f,\"decode_prompt\":%d,\"n_decode\":%d,\"prefill\":[",
           threads, exact ? "exact" : "fast", reps, wbytes, cp_gbs, rd_gbs, floor_cp, floor_rd, decode_prompt, n_decode);
    for (int i = 0; i < n_prefill; i++)
        printf("%s{\"n\":%d,\"best\":%.2f,\"median\":%.2f,\"per_cpu_s\":%.2f}", i ? "," : "", prefill[i],
               pf_best[i], pf_med[i], pf_cpu[i]);
    printf("],\"decode\":[");
    for (int i = 0; i < n_batches; i++)
        printf("%s{\"batch\":%d,\"best\":%.2f,\"median\":%.2f,\"per_cpu_s\":%.2f}", i ? "," : "", batches[i],
               dc_best[i], dc_med[i], dc_cpu[i]);
    printf("]}\n");
out:
    free(v);
    free(slots);
    eng_engine_destroy(e);
    return rc;
}
