/*
 * bench_tokenizer.c - encoding and decoding speed of the tokenizers on English text.
 *
 *   bench_tokenizer [--mb N] [--doc-bytes B] [--threads T] [--dump text.txt] [tokenizer.json ...]
 *
 * The text is generated (fixed seed): English words with a Zipf-like frequency, with
 * capitals, punctuation, numbers and paragraph breaks, cut into documents of B bytes
 * (default 4096, like prompts) that are encoded one by one.  Without file arguments the
 * tokenizers unpacked for the tests ($PD_BINARY_DIR or build/testdata/tokenizers/) are
 * used.  Prints a table and one JSON line per tokenizer.
 */
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "eng_tokenizer.h"
#include "pd_util.h"

static const char *WORDS[] = {
    "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are", "with",
    "as", "I", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "not", "word",
    "but", "what", "some", "we", "can", "out", "other", "were", "all", "there", "when", "up", "use", "your",
    "how", "said", "an", "each", "she", "which", "do", "their", "time", "if", "will", "way", "about", "many",
    "then", "them", "write", "would", "like", "so", "these", "her", "long", "make", "thing", "see", "him",
    "two", "has", "look", "more", "day", "could", "go", "come", "did", "number", "sound", "no", "most",
    "people", "my", "over", "know", "water", "than", "call", "first", "who", "may", "down", "side", "been",
    "now", "find", "any", "new", "work", "part", "take", "get", "place", "made", "live", "where", "after",
    "back", "little", "only", "round", "man", "year", "came", "show", "every", "good", "me", "give", "our",
    "under", "name", "very", "through", "just", "form", "sentence", "great", "think", "say", "help", "low",
    "line", "differ", "turn", "cause", "much", "mean", "before", "move", "right", "boy", "old", "too",
    "same", "tell", "does", "set", "three", "want", "air", "well", "also", "play", "small", "end", "put",
    "home", "read", "hand", "port", "large", "spell", "add", "even", "land", "here", "must", "big", "high",
    "such", "follow", "act", "why", "ask", "men", "change", "went", "light", "kind", "off", "need", "house",
    "picture", "try", "us", "again", "animal", "point", "mother", "world", "near", "build", "self", "earth",
    "father", "head", "stand", "own", "page", "should", "country", "found", "answer", "school", "grow",
    "study", "still", "learn", "plant", "cover", "food", "sun", "four", "between", "state", "keep", "eye",
    "never", "last", "let", "thought", "city", "tree", "cross", "farm", "hard", "start", "might", "story",
    "saw", "far", "sea", "draw", "left", "late", "run", "don't", "while", "press", "close", "night", "real",
    "life", "few", "north", "government", "development", "international", "understanding", "particularly",
    "responsibility", "environmental", "characteristics", "unfortunately", "administration", "opportunity",
    "mountains", "river", "journey", "ancient", "whispered", "lantern", "harbor", "merchant", "village",
};

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static char *make_text(size_t bytes)
{
    pd_buf_t b;
    size_t nw = PD_ARRAY_SIZE(WORDS), in_sentence = 0;
    pd_buf_init(&b);
    while (b.len < bytes) {
        /* Zipf-like: index = nw * u^3 favours the first (most common) words */
        double u = (double)(rng() % 1000000) / 1e6;
        size_t w = (size_t)(u * u * u * (double)nw);
        const char *word = WORDS[w < nw ? w : nw - 1];
        if (in_sentence == 0 && b.len > 0)
            pd_buf_puts(&b, " ");
        if (in_sentence == 0) {
            char cap[64];
            snprintf(cap, sizeof(cap), "%s", word);
            if (cap[0] >= 'a' && cap[0] <= 'z')
                cap[0] = (char)(cap[0] - 32);
            pd_buf_puts(&b, cap);
        } else {
            pd_buf_printf(&b, " %s", word);
        }
        in_sentence++;
        uint64_t r = rng() % 100;
        if (r < 4)
            pd_buf_puts(&b, ",");
        else if (r == 5)
            pd_buf_printf(&b, " %u", (unsigned)(rng() % 5000));
        if (in_sentence > 6 && rng() % 12 == 0) {
            pd_buf_puts(&b, rng() % 9 == 0 ? "?" : ".");
            in_sentence = 0;
            if (rng() % 7 == 0)
                pd_buf_puts(&b, "\n\n");
        }
    }
    return pd_buf_steal(&b);
}

typedef struct {
    const eng_tok_t *tok;
    const char *text;
    size_t len, doc;
    size_t n_tokens;
    double cpu_s; /* thread CPU time: the machine may be shared, wall time then lies */
    int status;
} job_t;

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *encode_job(void *p)
{
    job_t *j = p;
    eng_tok_ids_t ids;
    eng_tok_ids_init(&ids);
    double c0 = thread_cpu_s();
    for (size_t off = 0; off < j->len; off += j->doc) {
        size_t n = PD_MIN(j->doc, j->len - off);
        ids.n = 0;
        if (eng_tok_encode(j->tok, j->text + off, n, false, &ids) != PD_OK) {
            j->status = 1;
            break;
        }
        j->n_tokens += ids.n;
    }
    j->cpu_s = thread_cpu_s() - c0;
    eng_tok_ids_cleanup(&ids);
    return NULL;
}

int main(int argc, char **argv)
{
    double mb = 16;
    size_t doc = 4096;
    int threads = 1;
    const char *files[16];
    int n_files = 0;
    char defaults[4][1024];
    const char *names[] = {"llama2", "llama3", "qwen3", "smollm2"};
    const char *dump = NULL;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mb") && i + 1 < argc)
            mb = atof(argv[++i]);
        else if (!strcmp(argv[i], "--doc-bytes") && i + 1 < argc)
            doc = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dump") && i + 1 < argc)
            dump = argv[++i];
        else if (n_files < 16)
            files[n_files++] = argv[i];
    }
    if (n_files == 0) {
        const char *bin = getenv("PD_BINARY_DIR");
        for (int k = 0; k < 4; k++) {
            snprintf(defaults[k], sizeof(defaults[k]), "%s/testdata/tokenizers/%s/tokenizer.json",
                     bin ? bin : "build", names[k]);
            files[n_files++] = defaults[k];
        }
    }
    if (doc == 0 || threads < 1 || threads > 64 || mb <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    size_t len = (size_t)(mb * 1e6);
    char *text = make_text(len);
    if (dump != NULL) {
        /* the same text for other tokenizers (e.g. Hugging Face's, as the reference) */
        FILE *f = fopen(dump, "wb");
        if (f == NULL || fwrite(text, 1, len, f) != len) {
            fprintf(stderr, "cannot write %s\n", dump);
            return 1;
        }
        fclose(f);
    }
    printf("%-10s %8s %14s %14s %12s %14s %10s\n", "tokenizer", "MB", "enc MB/s wall", "enc MB/s core",
           "tokens/s", "dec MB/s core", "bytes/tok");
    for (int f = 0; f < n_files; f++) {
        eng_tok_t *tok = NULL;
        double t0 = pd_now_s();
        if (eng_tok_create_from_files(files[f], NULL, &tok) != PD_OK) {
            fprintf(stderr, "cannot load %s\n", files[f]);
            continue;
        }
        double load_s = pd_now_s() - t0;
        job_t jobs[64];
        pthread_t th[64];
        size_t per = len / (size_t)threads;
        t0 = pd_now_s();
        for (int t = 0; t < threads; t++) {
            jobs[t] = (job_t){tok, text + per * (size_t)t, t == threads - 1 ? len - per * (size_t)t : per, doc, 0, 0, 0};
            pthread_create(&th[t], NULL, encode_job, &jobs[t]);
        }
        size_t n_tokens = 0;
        double cpu_s = 0;
        for (int t = 0; t < threads; t++) {
            pthread_join(th[t], NULL);
            n_tokens += jobs[t].n_tokens;
            cpu_s += jobs[t].cpu_s;
        }
        double enc_s = pd_now_s() - t0;

        /* decode speed: re-encode the first 4 MB and decode it in 256-token pieces */
        eng_tok_ids_t ids;
        pd_buf_t out;
        eng_tok_ids_init(&ids);
        pd_buf_init(&out);
        size_t dlen = PD_MIN(len, (size_t)4000000);
        eng_tok_encode(tok, text, dlen, false, &ids);
        t0 = thread_cpu_s();
        size_t out_bytes = 0;
        for (size_t i = 0; i < ids.n; i += 256) {
            pd_buf_reset(&out);
            eng_tok_decode(tok, ids.ids + i, PD_MIN((size_t)256, ids.n - i), true, false, &out);
            out_bytes += out.len;
        }
        double dec_s = thread_cpu_s() - t0;
        const char *slash = strrchr(files[f], '/');
        char name[64];
        snprintf(name, sizeof(name), "%s", files[f]);
        if (slash != NULL && slash > files[f]) {
            const char *p = slash - 1;
            while (p > files[f] && *(p - 1) != '/')
                p--;
            snprintf(name, sizeof(name), "%.*s", (int)(slash - p), p);
        }
        double enc_mbs = (double)len / 1e6 / enc_s;
        double cpu_mbs = (double)len / 1e6 / cpu_s; /* per core */
        double tok_s = (double)n_tokens / enc_s;
        double dec_mbs = (double)out_bytes / 1e6 / dec_s;
        printf("%-10s %8.1f %14.2f %14.2f %12.0f %14.1f %10.2f\n", name, (double)len / 1e6, enc_mbs, cpu_mbs,
               tok_s, dec_mbs, (double)len / (double)n_tokens);
        printf("{\"bench\":\"tokenizer\",\"tokenizer\":\"%s\",\"threads\":%d,\"doc_bytes\":%zu,\"mb\":%.1f,"
               "\"encode_mb_s\":%.3f,\"encode_mb_s_per_core\":%.3f,\"tokens_s\":%.0f,\"decode_mb_s\":%.2f,\"bytes_per_token\":%.3f,"
               "\"load_s\":%.3f}\n",
               name, threads, doc, (double)len / 1e6, enc_mbs, cpu_mbs, tok_s, dec_mbs, (double)len / (double)n_tokens,
               load_s);
        fflush(stdout);
        eng_tok_ids_cleanup(&ids);
        pd_buf_cleanup(&out);
        eng_tok_destroy(tok);
    }
    free(text);
    return 0;
}
