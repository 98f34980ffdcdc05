/*
 * tok_driver.c - test helper: loads a tokenizer and answers JSON lines on stdin.
 *
 *   tok_driver <tokenizer.json> [tokenizer_config.json]        (JSON files)
 *   tok_driver --bpe-files <vocab.json> <merges.txt> [tokenizer_config.json]
 *   tok_driver --gguf-vocab <vocab.json>                        (eng_tok_vocab_t as JSON:
 *        {"model","pre","tokens","token_types","scores","merges","bos_id",...})
 *
 * Each input line is a JSON string (text to encode) and gets one output line:
 *   {"ids": [...], "ids_special": [...], "decode": hex, "decode_skip": hex, "stream": hex}
 * where the texts are the UTF-8 bytes in hex and stream is the concatenation of the
 * eng_detok deltas (skip specials).  A line {"decode": [ids]} decodes those ids instead
 * of encoding text.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_tokenizer.h"
#include "eng_unicode.h"
#include "pd_util.h"

static cJSON *ids_json(const eng_tok_ids_t *ids)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < ids->n; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids->ids[i]));
    return arr;
}

/* Decoded text as hex: it may hold NUL, which JSON strings from cJSON cannot. */
static cJSON *hex_json(const pd_buf_t *b)
{
    static const char hx[] = "0123456789abcdef";
    char *h = malloc(b->len * 2 + 1);
    for (size_t i = 0; i < b->len; i++) {
        h[2 * i] = hx[(uint8_t)b->data[i] >> 4];
        h[2 * i + 1] = hx[(uint8_t)b->data[i] & 15];
    }
    h[b->len * 2] = '\0';
    cJSON *j = cJSON_CreateString(h);
    free(h);
    return j;
}

static int stream_decode(const eng_tok_t *tok, const int32_t *ids, size_t n, bool skip, pd_buf_t *out)
{
    eng_detok_t *d;
    if (eng_detok_create(tok, NULL, 0, skip, false, &d) != PD_OK)
        return -1;
    pd_buf_append(out, "", 0);
    for (size_t i = 0; i < n; i++) {
        pd_buf_t delta;
        pd_buf_init(&delta);
        if (eng_detok_step(d, ids[i], &delta) != PD_OK)
            return -1;
        /* every delta must be whole characters */
        if (!eng_utf8_valid((const uint8_t *)delta.data, delta.len)) {
            fprintf(stderr, "delta is not valid UTF-8\n");
            return -1;
        }
        pd_buf_append(out, delta.data, delta.len);
        pd_buf_cleanup(&delta);
    }
    if (eng_detok_finish(d, out) != PD_OK)
        return -1;
    eng_detok_destroy(d);
    return 0;
}

static pd_status_t load_vocab(const char *path, eng_tok_t **tok_p)
{
    char *data;
    size_t len;
    pd_status_t status = pd_read_file(path, &data, &len);
    if (status != PD_OK)
        return status;
    cJSON *j = cJSON_ParseWithLength(data, len);
    free(data);
    if (j == NULL)
        return PD_ERR_FORMAT;
    eng_tok_vocab_t v;
    eng_tok_vocab_init(&v);
    v.model = cJSON_GetObjectItem(j, "model")->valuestring;
    cJSON *pre = cJSON_GetObjectItem(j, "pre");
    v.pre = cJSON_IsString(pre) ? pre->valuestring : NULL;
    cJSON *toks = cJSON_GetObjectItem(j, "tokens"), *types = cJSON_GetObjectItem(j, "token_types");
    cJSON *scores = cJSON_GetObjectItem(j, "scores"), *merges = cJSON_GetObjectItem(j, "merges");
    size_t n = (size_t)cJSON_GetArraySize(toks), nm = merges ? (size_t)cJSON_GetArraySize(merges) : 0;
    const char **tv = calloc(n, sizeof(char *));
    int32_t *tt = calloc(n, sizeof(int32_t));
    float *sc = calloc(n, sizeof(float));
    const char **mv = calloc(nm + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        tv[i] = cJSON_GetArrayItem(toks, (int)i)->valuestring;
        tt[i] = types ? cJSON_GetArrayItem(types, (int)i)->valueint : 1;
        sc[i] = scores ? (float)cJSON_GetArrayItem(scores, (int)i)->valuedouble : 0.0f;
    }
    for (size_t i = 0; i < nm; i++)
        mv[i] = cJSON_GetArrayItem(merges, (int)i)->valuestring;
    v.n_tokens = n;
    v.tokens = tv;
    v.token_types = tt;
    v.scores = scores ? sc : NULL;
    v.n_merges = nm;
    v.merges = mv;
#define GETI(k)                                                   \
    do {                                                          \
        cJSON *x = cJSON_GetObjectItem(j, #k);                    \
        if (cJSON_IsNumber(x))                                    \
            v.k = x->valueint;                                    \
    } while (0)
    GETI(bos_id);
    GETI(eos_id);
    GETI(unk_id);
    GETI(pad_id);
    GETI(add_bos);
    GETI(add_eos);
    GETI(add_space_prefix);
    status = eng_tok_create_from_vocab(&v, tok_p);
    free(tv);
    free(tt);
    free(sc);
    free(mv);
    cJSON_Delete(j);
    return status;
}

int main(int argc, char **argv)
{
    eng_tok_t *tok = NULL;
    pd_status_t status;
    if (argc < 2) {
        fprintf(stderr, "usage: %s tokenizer.json [tokenizer_config.json] | --gguf-vocab vocab.json\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "--gguf-vocab") == 0 && argc >= 3)
        status = load_vocab(argv[2], &tok);
    else if (strcmp(argv[1], "--bpe-files") == 0 && argc >= 4)
        status = eng_tok_create_from_bpe_files(argv[2], argv[3], argc > 4 ? argv[4] : NULL, &tok);
    else
        status = eng_tok_create_from_files(argv[1], argc > 2 ? argv[2] : NULL, &tok);
    if (status != PD_OK) {
        fprintf(stderr, "load failed: %s\n", pd_status_str(status));
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, stdin)) > 0) {
        cJSON *in = cJSON_ParseWithLength(line, (size_t)got);
        cJSON *out = cJSON_CreateObject();
        eng_tok_ids_t ids, ids_sp;
        pd_buf_t a, b, c;
        eng_tok_ids_init(&ids);
        eng_tok_ids_init(&ids_sp);
        pd_buf_init(&a);
        pd_buf_init(&b);
        pd_buf_init(&c);
        if (cJSON_IsString(in)) {
            const char *s = in->valuestring;
            /* cJSON strings stop at NUL; the corpus has none */
            size_t len = strlen(s);
            if (eng_tok_encode(tok, s, len, false, &ids) != PD_OK ||
                eng_tok_encode(tok, s, len, true, &ids_sp) != PD_OK)
                return 1;
            cJSON_AddItemToObject(out, "ids", ids_json(&ids));
            cJSON_AddItemToObject(out, "ids_special", ids_json(&ids_sp));
        } else if (cJSON_IsObject(in) && cJSON_IsArray(cJSON_GetObjectItem(in, "decode"))) {
            cJSON *it;
            cJSON_ArrayForEach(it, cJSON_GetObjectItem(in, "decode"))
                eng_tok_ids_push(&ids_sp, (int32_t)it->valuedouble);
        } else {
            fprintf(stderr, "bad input line\n");
            return 1;
        }
        if (eng_tok_decode(tok, ids_sp.ids, ids_sp.n, false, false, &a) != PD_OK ||
            eng_tok_decode(tok, ids_sp.ids, ids_sp.n, true, false, &b) != PD_OK ||
            stream_decode(tok, ids_sp.ids, ids_sp.n, true, &c) != 0)
            return 1;
        cJSON_AddItemToObject(out, "decode", hex_json(&a));
        cJSON_AddItemToObject(out, "decode_skip", hex_json(&b));
        cJSON_AddItemToObject(out, "stream", hex_json(&c));
        char *txt = cJSON_PrintUnformatted(out);
        fputs(txt, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(txt);
        cJSON_Delete(out);
        cJSON_Delete(in);
        eng_tok_ids_cleanup(&ids);
        eng_tok_ids_cleanup(&ids_sp);
        pd_buf_cleanup(&a);
        pd_buf_cleanup(&b);
        pd_buf_cleanup(&c);
    }
    free(line);
    eng_tok_destroy(tok);
    return 0;
}
