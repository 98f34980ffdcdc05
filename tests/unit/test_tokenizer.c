/*
 * test_tokenizer.c - tokenizer unit tests without Python:
 *   - goldens: a few hundred strings per tokenizer (Llama 2, Llama 3, Qwen3, SmolLM2)
 *     with the ids, decodes and stream text Hugging Face `tokenizers` gives, from
 *     tests/data/tokenizers/<name>.tar.xz unpacked at configure time into
 *     $PD_BINARY_DIR/testdata/tokenizers/<name>/ (see tests/tokenizer/CMakeLists.txt);
 *   - UTF-8, NFC and class tables; the vocabulary (GGUF) constructor on tiny
 *     vocabularies; error statuses; incremental detokenization with prompt context;
 *     concurrent encodes.
 */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "eng_tokenizer.h"
#include "eng_unicode.h"
#include "pd_log.h"
#include "pd_test.h"
#include "pd_util.h"

static const char *NAMES[] = {"llama2", "llama3", "qwen3", "smollm2"};

static int data_path(const char *name, const char *file, char *out, size_t cap)
{
    const char *bin = getenv("PD_BINARY_DIR");
    snprintf(out, cap, "%s/testdata/tokenizers/%s/%s", bin ? bin : "build", name, file);
    FILE *f = fopen(out, "rb");
    if (f == NULL)
        return -1;
    fclose(f);
    return 0;
}

static eng_tok_t *load(const char *name)
{
    char tj[1024], cfg[1024];
    eng_tok_t *tok = NULL;
    if (data_path(name, "tokenizer.json", tj, sizeof(tj)) != 0 ||
        data_path(name, "tokenizer_config.json", cfg, sizeof(cfg)) != 0)
        return NULL;
    if (eng_tok_create_from_files(tj, cfg, &tok) != PD_OK)
        return NULL;
    return tok;
}

static bool ids_equal(const eng_tok_ids_t *got, const cJSON *want)
{
    if ((size_t)cJSON_GetArraySize(want) != got->n)
        return false;
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, want) {
        if ((int32_t)it->valuedouble != got->ids[i++])
            return false;
    }
    return true;
}

static void stream(const eng_tok_t *tok, const int32_t *ids, size_t n, pd_buf_t *out)
{
    eng_detok_t *d = NULL;
    PD_CHECK_STATUS(eng_detok_create(tok, NULL, 0, true, false, &d), PD_OK);
    if (d == NULL)
        return;
    pd_buf_append(out, "", 0);
    for (size_t i = 0; i < n; i++)
        PD_CHECK_STATUS(eng_detok_step(d, ids[i], out), PD_OK);
    PD_CHECK_STATUS(eng_detok_finish(d, out), PD_OK);
    eng_detok_destroy(d);
}

PD_TEST(test_goldens)
{
    int n_found = 0;
    for (size_t k = 0; k < PD_ARRAY_SIZE(NAMES); k++) {
        char gp[1024];
        char *data = NULL;
        size_t len;
        if (data_path(NAMES[k], "goldens.jsonl", gp, sizeof(gp)) != 0) {
            printf("skip goldens for %s: %s not found (configure with tests/tokenizer)\n", NAMES[k], gp);
            continue;
        }
        eng_tok_t *tok = load(NAMES[k]);
        PD_CHECK(tok != NULL);
        PD_CHECK_STATUS(pd_read_file(gp, &data, &len), PD_OK);
        if (tok == NULL || data == NULL) {
            eng_tok_destroy(tok);
            free(data);
            continue;
        }
        n_found++;
        int n_cases = 0, n_bad = 0;
        for (char *line = strtok(data, "\n"); line != NULL; line = strtok(NULL, "\n")) {
            cJSON *j = cJSON_Parse(line);
            const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(j, "text"));
            eng_tok_ids_t ids, ids_sp;
            pd_buf_t dec, dec_skip, st;
            eng_tok_ids_init(&ids);
            eng_tok_ids_init(&ids_sp);
            pd_buf_init(&dec);
            pd_buf_init(&dec_skip);
            pd_buf_init(&st);
            PD_CHECK(text != NULL);
            if (text == NULL) {
                cJSON_Delete(j);
                continue;
            }
            PD_CHECK_STATUS(eng_tok_encode(tok, text, strlen(text), false, &ids), PD_OK);
            PD_CHECK_STATUS(eng_tok_encode(tok, text, strlen(text), true, &ids_sp), PD_OK);
            PD_CHECK_STATUS(eng_tok_decode(tok, ids_sp.ids, ids_sp.n, false, false, &dec), PD_OK);
            PD_CHECK_STATUS(eng_tok_decode(tok, ids_sp.ids, ids_sp.n, true, false, &dec_skip), PD_OK);
            stream(tok, ids_sp.ids, ids_sp.n, &st);
            const char *want_dec = cJSON_GetStringValue(cJSON_GetObjectItem(j, "decode"));
            const char *want_skip = cJSON_GetStringValue(cJSON_GetObjectItem(j, "decode_skip"));
            bool ok = ids_equal(&ids, cJSON_GetObjectItem(j, "ids")) &&
                      ids_equal(&ids_sp, cJSON_GetObjectItem(j, "ids_special")) && want_dec && want_skip &&
                      strcmp(dec.data, want_dec) == 0 && strcmp(dec_skip.data, want_skip) == 0 &&
                      strcmp(st.data, want_skip) == 0;
            if (!ok && n_bad++ < 5)
                fprintf(stderr, "  %s: mismatch on %.80s\n", NAMES[k], line);
            n_cases++;
            eng_tok_ids_cleanup(&ids);
            eng_tok_ids_cleanup(&ids_sp);
            pd_buf_cleanup(&dec);
            pd_buf_cleanup(&dec_skip);
            pd_buf_cleanup(&st);
            cJSON_Delete(j);
        }
        PD_CHECK(n_cases >= 250);
        PD_CHECK_EQ_INT(n_bad, 0);
        printf("     %s: %d golden cases\n", NAMES[k], n_cases);
        free(data);
        eng_tok_destroy(tok);
    }
    if (n_found == 0)
        printf("skip test_goldens: no unpacked tokenizer data\n");
}

PD_TEST(test_utf8_and_tables)
{
    uint32_t cp;
    PD_CHECK_EQ_INT(eng_utf8_decode((const uint8_t *)"\xE2\x96\x81", 3, &cp), 3);
    PD_CHECK_EQ_INT(cp, 0x2581);
    PD_CHECK_EQ_INT(eng_utf8_decode((const uint8_t *)"\xED\xA0\x80", 3, &cp), 1); /* surrogate */
    PD_CHECK_EQ_INT(cp, ENG_UNI_INVALID);
    PD_CHECK_EQ_INT(eng_utf8_decode((const uint8_t *)"\xC0\x80", 2, &cp), 1);     /* overlong */
    PD_CHECK_EQ_INT(eng_utf8_decode((const uint8_t *)"\xF0\x9F\x98", 3, &cp), 1); /* truncated */
    PD_CHECK(eng_utf8_valid((const uint8_t *)"h\xC3\xA9llo", 6));
    PD_CHECK(!eng_utf8_valid((const uint8_t *)"h\xC3", 2));

    /* maximal subparts: F0 9F 98 (truncated 4-byte) is one U+FFFD; lone 80 one; E0 80 two */
    pd_buf_t b;
    pd_buf_init(&b);
    PD_CHECK_STATUS(eng_utf8_append_lossy(&b, (const uint8_t *)"a\xF0\x9F\x98" "b\x80" "c\xE0\x80", 9), PD_OK);
    PD_CHECK_EQ_STR(b.data, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD" "c\xEF\xBF\xBD\xEF\xBF\xBD");
    pd_buf_cleanup(&b);

    PD_CHECK(eng_uni_flags('a') & ENG_UNI_L);
    PD_CHECK(eng_uni_flags(0x4E2D) & ENG_UNI_L);  /* 中 */
    PD_CHECK(eng_uni_flags(0x0663) & ENG_UNI_N);  /* Arabic-Indic 3 */
    PD_CHECK(eng_uni_flags(0x00BD) & ENG_UNI_N);  /* ½ */
    PD_CHECK(eng_uni_flags(0x3000) & ENG_UNI_WS);
    PD_CHECK(eng_uni_flags(0x0085) & ENG_UNI_WS);
    PD_CHECK(!(eng_uni_flags(0x001C) & ENG_UNI_WS)); /* isspace() yes, \s no */
    PD_CHECK(!(eng_uni_flags(0x200B) & ENG_UNI_WS));
    PD_CHECK(eng_uni_flags(0x1C89) & ENG_UNI_L);  /* Unicode 16 letter, as Oniguruma has it */
    PD_CHECK_EQ_INT(eng_uni_ccc(0x0301), 230);
    PD_CHECK_EQ_INT(eng_uni_ccc(0x0323), 220);
    PD_CHECK_EQ_INT(eng_uni_flags(0x110000), 0);
}

static void nfc_is(const char *in, const char *want)
{
    pd_buf_t b;
    pd_buf_init(&b);
    PD_CHECK_STATUS(eng_uni_nfc((const uint8_t *)in, strlen(in), &b), PD_OK);
    PD_CHECK_EQ_STR(b.data, want);
    pd_buf_cleanup(&b);
}

PD_TEST(test_nfc)
{
    nfc_is("e\xCC\x81", "\xC3\xA9");                              /* e + acute -> é */
    nfc_is("o\xCC\xA3\xCC\x82", "\xE1\xBB\x99");                  /* o + dot below + circumflex -> ộ */
    nfc_is("o\xCC\x82\xCC\xA3", "\xE1\xBB\x99");                  /* same, marks reordered */
    nfc_is("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", "\xEA\xB0\x81"); /* jamo L V T -> 각 */
    nfc_is("\xEA\xB0\x80\xE1\x86\xA8", "\xEA\xB0\x81");            /* LV + T */
    nfc_is("\xE2\x84\xAB", "\xC3\x85");                            /* Angstrom sign -> Å */
    nfc_is("\xEF\xAC\x81", "\xEF\xAC\x81");                        /* ﬁ stays (compatibility only) */
    nfc_is("a\xFF" "e\xCC\x81", "a\xFF\xC3\xA9");                  /* bad bytes pass through */
    PD_CHECK(eng_uni_nfc_quick((const uint8_t *)"plain ascii", 11));
    PD_CHECK(!eng_uni_nfc_quick((const uint8_t *)"e\xCC\x81", 3));
}

/* A byte-level vocabulary: the 256 byte characters, then merged pieces. */
static eng_tok_t *tiny_bytelevel(const char *pre)
{
    static char storage[256][4];
    const char *toks[256 + 8];
    int n = 0;
    for (int b = 0; b < 256; b++) {
        /* GPT-2's byte-to-character map */
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        static int extra;
        if (b == 0)
            extra = 0;
        uint32_t cp = printable ? (uint32_t)b : (uint32_t)(256 + extra++);
        size_t l = eng_utf8_encode(cp, (uint8_t *)storage[b]);
        storage[b][l] = '\0';
        toks[n++] = storage[b];
    }
    toks[n++] = "\xC4\xA0t";        /* 256 "Ġt" */
    toks[n++] = "he";               /* 257 */
    toks[n++] = "\xC4\xA0the";      /* 258 "Ġthe" */
    toks[n++] = "<|end|>";          /* 259 */
    const char *merges[] = {"\xC4\xA0 t", "h e", "\xC4\xA0t he"};
    int32_t types[260];
    for (int i = 0; i < 260; i++)
        types[i] = ENG_TOK_TYPE_NORMAL;
    types[259] = ENG_TOK_TYPE_CONTROL;
    eng_tok_vocab_t v;
    eng_tok_vocab_init(&v);
    v.model = "gpt2";
    v.pre = pre;
    v.n_tokens = (size_t)n;
    v.tokens = toks;
    v.token_types = types;
    v.n_merges = 3;
    v.merges = merges;
    v.eos_id = 259;
    v.bos_id = 259;
    eng_tok_t *tok = NULL;
    if (eng_tok_create_from_vocab(&v, &tok) != PD_OK)
        return NULL;
    return tok;
}

static void encode_is(const eng_tok_t *tok, const char *text, bool special, const int32_t *want, size_t n)
{
    eng_tok_ids_t ids;
    eng_tok_ids_init(&ids);
    PD_CHECK_STATUS(eng_tok_encode(tok, text, strlen(text), special, &ids), PD_OK);
    PD_CHECK_EQ_INT(ids.n, n);
    for (size_t i = 0; i < n && i < ids.n; i++)
        PD_CHECK_EQ_INT(ids.ids[i], want[i]);
    eng_tok_ids_cleanup(&ids);
}

PD_TEST(test_vocab_bytelevel)
{
    eng_tok_t *tok = tiny_bytelevel("smollm");
    PD_CHECK(tok != NULL);
    if (tok == NULL)
        return;
    /* "a the<|end|>12": a, Ġthe, <|end|>, 1, 2 (digits split one by one) */
    int32_t want[] = {'a', 258, 259, '1', '2'};
    encode_is(tok, "a the<|end|>12", false, want, 5);
    PD_CHECK_EQ_INT(eng_tok_vocab_size(tok), 260);
    PD_CHECK(eng_tok_is_special(tok, 259));
    PD_CHECK(!eng_tok_is_special(tok, 258));
    PD_CHECK_EQ_INT(eng_tok_piece_to_id(tok, "\xC4\xA0the", 5), 258);
    PD_CHECK_EQ_INT(eng_tok_piece_to_id(tok, "<|end|>", 7), 259);
    PD_CHECK_EQ_INT(eng_tok_piece_to_id(tok, "nope", 4), -1);
    size_t len = 0;
    const uint8_t *bytes = eng_tok_token_bytes(tok, 258, &len);
    PD_CHECK(bytes != NULL && len == 4 && memcmp(bytes, " the", 4) == 0);
    const char *piece = eng_tok_token_to_piece(tok, 258, &len);
    PD_CHECK(piece != NULL && len == 5);
    PD_CHECK(eng_tok_token_to_piece(tok, 260, NULL) == NULL);
    PD_CHECK(eng_tok_token_to_piece(tok, -1, NULL) == NULL);

    pd_buf_t b;
    pd_buf_init(&b);
    int32_t ids[] = {'a', 258, 259, 99999, '1'};
    PD_CHECK_STATUS(eng_tok_decode(tok, ids, 5, false, false, &b), PD_OK);
    PD_CHECK_EQ_STR(b.data, "a the<|end|>1");
    pd_buf_reset(&b);
    PD_CHECK_STATUS(eng_tok_decode(tok, ids, 5, true, false, &b), PD_OK);
    PD_CHECK_EQ_STR(b.data, "a the1");
    pd_buf_reset(&b);
    PD_CHECK_STATUS(eng_tok_decode(tok, ids, 5, false, true, &b), PD_OK);
    PD_CHECK_EQ_STR(b.data, "a the <|end|> 1");
    pd_buf_cleanup(&b);
    eng_tok_destroy(tok);

    /* unknown pre-tokenizer names are refused */
    tok = tiny_bytelevel("no-such-pre");
    PD_CHECK(tok == NULL);
}

PD_TEST(test_vocab_spm_scores)
{
    /* SentencePiece vocabulary without merges: ranks come from the pieces' scores. */
    const char *toks[] = {"<unk>", "<s>", "</s>", "<0x41>", "<0xC3>", "<0xA9>",
                          "\xE2\x96\x81", "a", "b", "ab", "\xE2\x96\x81\x61\x62" /* "▁ab" */, "c", "bc"};
    float scores[] = {0, 0, 0, 0, 0, 0, -5, -6, -6, -1, -0.5f, -6, -2};
    int32_t types[] = {2, 3, 3, 6, 6, 6, 1, 1, 1, 1, 1, 1, 1};
    eng_tok_vocab_t v;
    eng_tok_vocab_init(&v);
    v.model = "llama";
    v.n_tokens = PD_ARRAY_SIZE(toks);
    v.tokens = toks;
    v.scores = scores;
    v.token_types = types;
    v.bos_id = 1;
    v.eos_id = 2;
    v.unk_id = 0;
    eng_tok_t *tok = NULL;
    PD_CHECK_STATUS(eng_tok_create_from_vocab(&v, &tok), PD_OK);
    if (tok == NULL)
        return;
    /* "abc": ▁ a b c -> (a b) ranks above (b c) -> ▁ ab c -> ▁ab c */
    int32_t w1[] = {1, 10, 11};
    encode_is(tok, "abc", true, w1, 3);
    /* "é" is not in the vocabulary: byte fallback <0xC3> <0xA9>; "A" -> <0x41> */
    int32_t w2[] = {6, 4, 5, 3};
    encode_is(tok, "\xC3\xA9" "A", false, w2, 4);
    pd_buf_t b;
    pd_buf_init(&b);
    int32_t ids[] = {1, 10, 11, 6, 4, 5, 3};
    PD_CHECK_STATUS(eng_tok_decode(tok, ids, PD_ARRAY_SIZE(ids), true, false, &b), PD_OK);
    PD_CHECK_EQ_STR(b.data, "abc \xC3\xA9" "A");
    pd_buf_reset(&b);
    int32_t bad[] = {10, 4, 11}; /* a lone 0xC3 byte decodes to U+FFFD */
    PD_CHECK_STATUS(eng_tok_decode(tok, bad, 3, true, false, &b), PD_OK);
    PD_CHECK_EQ_STR(b.data, "ab\xEF\xBF\xBD" "c");
    pd_buf_cleanup(&b);
    eng_tok_destroy(tok);
}

PD_TEST(test_errors)
{
    eng_tok_t *tok = NULL;
    const char *bad_json = "{\"model\": ";
    PD_CHECK_STATUS(eng_tok_create_from_json(bad_json, strlen(bad_json), NULL, &tok), PD_ERR_FORMAT);
    const char *wp = "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}, \"decoder\": null}";
    PD_CHECK_STATUS(eng_tok_create_from_json(wp, strlen(wp), NULL, &tok), PD_ERR_UNSUPPORTED);
    const char *re =
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
        " \"decoder\": {\"type\": \"ByteLevel\"},"
        " \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\w+\"},"
        " \"behavior\": \"Isolated\", \"invert\": false}}";
    PD_CHECK_STATUS(eng_tok_create_from_json(re, strlen(re), NULL, &tok), PD_ERR_UNSUPPORTED);
    const char *badmerge =
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]},"
        " \"decoder\": {\"type\": \"ByteLevel\"}, \"pre_tokenizer\": null}";
    PD_CHECK_STATUS(eng_tok_create_from_json(badmerge, strlen(badmerge), NULL, &tok), PD_ERR_FORMAT);
    PD_CHECK(tok == NULL);
    PD_CHECK_STATUS(eng_tok_create_from_files("/nonexistent/tokenizer.json", NULL, &tok), PD_ERR_NOT_FOUND);
    eng_tok_vocab_t v;
    eng_tok_vocab_init(&v);
    PD_CHECK_STATUS(eng_tok_create_from_vocab(&v, &tok), PD_ERR_INVAL);
    PD_CHECK(tok == NULL);
}

PD_TEST(test_detok_prompt_context)
{
    eng_tok_t *tok = load("llama2");
    if (tok == NULL) {
        printf("skip test_detok_prompt_context: llama2 data not unpacked\n");
        return;
    }
    eng_tok_ids_t prompt, gen;
    eng_tok_ids_init(&prompt);
    eng_tok_ids_init(&gen);
    PD_CHECK_STATUS(eng_tok_encode(tok, "Say hi:", 7, true, &prompt), PD_OK);
    /* "Hello 世界!" has byte-fallback-free pieces and multi-byte characters */
    const char *g = " Hello \xE4\xB8\x96\xE7\x95\x8C! \xF0\x9F\x99\x82";
    PD_CHECK_STATUS(eng_tok_encode(tok, g + 1, strlen(g + 1), false, &gen), PD_OK);
    eng_detok_t *d = NULL;
    PD_CHECK_STATUS(eng_detok_create(tok, prompt.ids, prompt.n, true, false, &d), PD_OK);
    pd_buf_t all, delta;
    pd_buf_init(&all);
    pd_buf_init(&delta);
    for (size_t i = 0; d != NULL && i < gen.n; i++) {
        pd_buf_reset(&delta);
        PD_CHECK_STATUS(eng_detok_step(d, gen.ids[i], &delta), PD_OK);
        PD_CHECK(eng_utf8_valid((const uint8_t *)delta.data, delta.len));
        pd_buf_append(&all, delta.data, delta.len);
    }
    if (d != NULL)
        PD_CHECK_STATUS(eng_detok_finish(d, &all), PD_OK);
    PD_CHECK(eng_tok_adds_bos(tok));
    PD_CHECK(!eng_tok_adds_eos(tok));
    PD_CHECK_EQ_INT(eng_tok_bos_id(tok), 1);
    PD_CHECK_EQ_INT(eng_tok_eos_id(tok), 2);
    /* after a prompt the first "▁Hello" keeps its space, as vLLM streams it */
    PD_CHECK_EQ_STR(all.data, g);
    eng_detok_destroy(d);
    pd_buf_cleanup(&all);
    pd_buf_cleanup(&delta);
    eng_tok_ids_cleanup(&prompt);
    eng_tok_ids_cleanup(&gen);
    eng_tok_destroy(tok);
}

typedef struct {
    const eng_tok_t *tok;
    const char *text;
    eng_tok_ids_t ids;
    int rounds;
} thr_arg_t;

static void *encode_thread(void *p)
{
    thr_arg_t *a = p;
    for (int r = 0; r < a->rounds; r++) {
        a->ids.n = 0;
        if (eng_tok_encode(a->tok, a->text, strlen(a->text), true, &a->ids) != PD_OK)
            return (void *)1;
    }
    return NULL;
}

PD_TEST(test_concurrent_encode)
{
    eng_tok_t *tok = load("qwen3");
    if (tok == NULL) {
        printf("skip test_concurrent_encode: qwen3 data not unpacked\n");
        return;
    }
    const char *text = "The quick brown fox jumps over the lazy dog. 12345 \xE6\x97\xA5\xE6\x9C\xAC "
                       "e\xCC\x81 <|im_start|>user\nhi<|im_end|>\n";
    eng_tok_ids_t ref;
    eng_tok_ids_init(&ref);
    PD_CHECK(!eng_tok_adds_bos(tok));
    PD_CHECK_EQ_INT(eng_tok_bos_id(tok), -1);
    PD_CHECK_EQ_INT(eng_tok_eos_id(tok), 151645); /* <|im_end|> */
    PD_CHECK_EQ_INT(eng_tok_pad_id(tok), 151643); /* <|endoftext|> */
    PD_CHECK_STATUS(eng_tok_encode(tok, text, strlen(text), true, &ref), PD_OK);
    thr_arg_t args[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thr_arg_t){tok, text, {0}, 200};
        pthread_create(&th[i], NULL, encode_thread, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        void *rv;
        pthread_join(th[i], &rv);
        PD_CHECK(rv == NULL);
        PD_CHECK_EQ_INT(args[i].ids.n, ref.n);
        PD_CHECK(args[i].ids.n == ref.n && memcmp(args[i].ids.ids, ref.ids, ref.n * sizeof(int32_t)) == 0);
        eng_tok_ids_cleanup(&args[i].ids);
    }
    eng_tok_ids_cleanup(&ref);
    eng_tok_destroy(tok);
}

int main(void)
{
    pd_log_set_level(PD_LOG_LEVEL_CRIT); /* the error tests log on purpose */
    PD_RUN(test_utf8_and_tables);
    PD_RUN(test_nfc);
    PD_RUN(test_vocab_bytelevel);
    PD_RUN(test_vocab_spm_scores);
    PD_RUN(test_errors);
    PD_RUN(test_goldens);
    PD_RUN(test_detok_prompt_context);
    PD_RUN(test_concurrent_encode);
    return PD_TEST_REPORT();
}
