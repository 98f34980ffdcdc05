/*
 * fuzz_tokenizer.c - libFuzzer target: encode arbitrary bytes, then decode and stream.
 *
 * Tokenizers: the tokenizer.json files named in $PD_FUZZ_TOKENIZERS (colon-separated),
 * else those unpacked for the tests under $PD_BINARY_DIR/testdata/tokenizers/ (or
 * build/testdata/...), plus always a tiny built-in byte-level vocabulary.  The first
 * input byte picks the tokenizer; the rest is the text (any bytes, invalid UTF-8
 * included).  Checks: encode succeeds, every id is in range, decode and decode of the
 * raw input bytes read as ids succeed and are valid UTF-8, and for byte-level models the
 * streamed deltas add up to the decode.
 *
 * Build (PD_FUZZ=ON with clang): link against pd_engine and pd_common with
 * -fsanitize=fuzzer,address,undefined.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_tokenizer.h"
#include "eng_unicode.h"
#include "pd_log.h"
#include "pd_util.h"

#define MAX_TOKS 8
static eng_tok_t *toks[MAX_TOKS];
static int n_toks;

static void add_file(const char *path)
{
    eng_tok_t *tok = NULL;
    if (n_toks < MAX_TOKS && eng_tok_create_from_files(path, NULL, &tok) == PD_OK)
        toks[n_toks++] = tok;
}

static eng_tok_t *tiny_vocab(void)
{
    static char storage[256][4];
    const char *tokens[260];
    int n = 0, extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        uint32_t cp = printable ? (uint32_t)b : (uint32_t)(256 + extra++);
        storage[b][eng_utf8_encode(cp, (uint8_t *)storage[b])] = '\0';
        tokens[n++] = storage[b];
    }
    tokens[n++] = "\xC4\xA0t";
    tokens[n++] = "he";
    tokens[n++] = "\xC4\xA0the";
    tokens[n++] = "<|end|>";
    const char *merges[] = {"\xC4\xA0 t", "h e", "\xC4\xA0t he"};
    int32_t types[260];
    for (int i = 0; i < 260; i++)
        types[i] = i == 259 ? ENG_TOK_TYPE_CONTROL : ENG_TOK_TYPE_NORMAL;
    eng_tok_vocab_t v;
    eng_tok_vocab_init(&v);
    v.model = "gpt2";
    v.pre = "smollm";
    v.n_tokens = (size_t)n;
    v.tokens = tokens;
    v.token_types = types;
    v.n_merges = 3;
    v.merges = merges;
    eng_tok_t *tok = NULL;
    eng_tok_create_from_vocab(&v, &tok);
    return tok;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    pd_log_set_level(PD_LOG_LEVEL_CRIT);
    const char *list = getenv("PD_FUZZ_TOKENIZERS");
    if (list != NULL) {
        char *copy = strdup(list), *save = NULL;
        for (char *p = strtok_r(copy, ":", &save); p != NULL; p = strtok_r(NULL, ":", &save))
            add_file(p);
        free(copy);
    } else {
        const char *bin = getenv("PD_BINARY_DIR");
        const char *names[] = {"llama2", "llama3", "qwen3", "smollm2"};
        for (int i = 0; i < 4; i++) {
            char path[1024];
            snprintf(path, sizeof(path), "%s/testdata/tokenizers/%s/tokenizer.json", bin ? bin : "build", names[i]);
            add_file(path);
        }
    }
    eng_tok_t *tiny = tiny_vocab();
    if (tiny != NULL)
        toks[n_toks++] = tiny;
    fprintf(stderr, "fuzz_tokenizer: %d tokenizers\n", n_toks);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || n_toks == 0)
        return 0;
    const eng_tok_t *tok = toks[data[0] % n_toks];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    eng_tok_ids_t ids;
    pd_buf_t dec, st;
    eng_tok_ids_init(&ids);
    pd_buf_init(&dec);
    pd_buf_init(&st);

    if (eng_tok_encode(tok, text, len, (data[0] & 0x80) != 0, &ids) != PD_OK)
        abort();
    size_t nv = eng_tok_vocab_size(tok);
    for (size_t i = 0; i < ids.n; i++) {
        if (ids.ids[i] < 0 || (size_t)ids.ids[i] >= nv)
            abort();
    }
    if (eng_tok_decode(tok, ids.ids, ids.n, false, false, &dec) != PD_OK ||
        !eng_utf8_valid((const uint8_t *)dec.data, dec.len))
        abort();
    /* (Decoding need not give the input back: SmolLM2's vocabulary lacks some control
     * bytes, which BPE drops exactly as the reference does.) */

    eng_detok_t *d = NULL;
    if (eng_detok_create(tok, NULL, 0, false, (data[0] & 0x40) != 0, &d) != PD_OK)
        abort();
    for (size_t i = 0; i < ids.n; i++) {
        pd_buf_t delta;
        pd_buf_init(&delta);
        if (eng_detok_step(d, ids.ids[i], &delta) != PD_OK ||
            !eng_utf8_valid((const uint8_t *)delta.data, delta.len))
            abort();
        pd_buf_append(&st, delta.data, delta.len);
        pd_buf_cleanup(&delta);
    }
    if (eng_detok_finish(d, &st) != PD_OK)
        abort();
    eng_detok_destroy(d);
    if ((data[0] & 0x40) == 0 && (st.len != dec.len || memcmp(st.data ? st.data : "", dec.data, dec.len) != 0)) {
        /* SentencePiece ByteFallback may rewrite streamed text (see eng_detok_step);
         * everything else must stream exactly */
        if (memmem(dec.data, dec.len, "\xEF\xBF\xBD", 3) == NULL)
            abort();
    }

    /* the input read as token ids (any values, specials and holes included) */
    eng_tok_ids_t raw;
    eng_tok_ids_init(&raw);
    for (size_t i = 0; i + 2 <= len; i += 2)
        eng_tok_ids_push(&raw, (int32_t)((data[1 + i] | (data[2 + i] << 8)) * 3) - 7);
    pd_buf_reset(&dec);
    if (eng_tok_decode(tok, raw.ids, raw.n, (data[0] & 1) != 0, (data[0] & 2) != 0, &dec) != PD_OK ||
        !eng_utf8_valid((const uint8_t *)dec.data, dec.len))
        abort();
    eng_tok_ids_cleanup(&raw);
    eng_tok_ids_cleanup(&ids);
    pd_buf_cleanup(&dec);
    pd_buf_cleanup(&st);
    return 0;
}
