/*
 * eng_tokenizer.c - BPE tokenizers bit-compatible with Hugging Face `tokenizers`.
 *
 * Pipeline of eng_tok_encode, as tokenizers runs it:
 *   1. added tokens are found in the raw text (leftmost-longest) and cut out;
 *   2. every other segment is normalised (NFC, or SentencePiece's "▁" rules);
 *   3. pre-tokenizer stages split it (hand-coded matchers for the known regexes);
 *   4. each piece runs through BPE (merges applied lowest rank first, leftmost on ties,
 *      exactly like tokenizers' Word::merge_all);
 *   5. the post-processor adds its template ids (BOS...) when asked.
 *
 * Invariants: after creation the tokenizer is read-only (encode/decode use per-call
 * scratch only), every id in [0, n_vocab) has a piece or is a hole (piece == NULL),
 * and merge results are vocabulary ids.
 *
 * Byte-level models keep, beside each vocabulary string ("Ġhello"), its raw bytes
 * (" hello"): encoding looks bytes up directly and decoding concatenates them.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* qsort_r, memmem */
#endif
#include "eng_tokenizer.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "eng_unicode.h"
#include "pd_log.h"

/* ---- small hash maps ---- */

static inline uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xC2B2AE3D27D4EB4Full;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    if (n > 0) {
        uint64_t v = 0;
        memcpy(&v, p, n);
        h = (h ^ v) * 0xC2B2AE3D27D4EB4Full;
    }
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ull;
    h ^= h >> 32;
    return h;
}

/* Byte string -> id, open addressing.  Keys are borrowed (they live in the arena). */
typedef struct strmap_ent {
    const uint8_t *key;
    uint32_t len;
    int32_t id;
} strmap_ent_t;

typedef struct strmap {
    strmap_ent_t *ents;
    size_t mask;
    size_t n;
} strmap_t;

static pd_status_t strmap_init(strmap_t *m, size_t n_expected)
{
    size_t cap = 16;
    while (cap < n_expected * 2 + 16)
        cap <<= 1;
    m->ents = calloc(cap, sizeof(*m->ents));
    if (m->ents == NULL)
        return PD_ERR_NOMEM;
    m->mask = cap - 1;
    m->n = 0;
    return PD_OK;
}

static void strmap_cleanup(strmap_t *m)
{
    free(m->ents);
    m->ents = NULL;
}

static int32_t strmap_get(const strmap_t *m, const uint8_t *key, size_t len)
{
    size_t i = hash_bytes(key, len) & m->mask;
    for (;;) {
        const strmap_ent_t *e = &m->ents[i];
        if (e->key == NULL)
            return -1;
        if (e->len == len && memcmp(e->key, key, len) == 0)
            return e->id;
        i = (i + 1) & m->mask;
    }
}

/* Insert unless present (the first id wins, as a JSON object's first key would). */
static void strmap_put(strmap_t *m, const uint8_t *key, size_t len, int32_t id)
{
    size_t i = hash_bytes(key, len) & m->mask;
    if (m->n * 2 >= m->mask) /* sized at creation; never fill past half */
        return;
    for (;;) {
        strmap_ent_t *e = &m->ents[i];
        if (e->key == NULL) {
            e->key = key;
            e->len = (uint32_t)len;
            e->id = id;
            m->n++;
            return;
        }
        if (e->len == len && memcmp(e->key, key, len) == 0)
            return;
        i = (i + 1) & m->mask;
    }
}

/* (left id, right id) -> (rank, merged id). */
typedef struct pairmap_ent {
    uint64_t key; /* UINT64_MAX = empty */
    uint32_t rank;
    int32_t id;
} pairmap_ent_t;

typedef struct pairmap {
    pairmap_ent_t *ents;
    size_t mask;
    size_t n;
} pairmap_t;

static inline uint64_t pair_key(int32_t a, int32_t b)
{
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

static inline size_t pair_slot(uint64_t key, size_t mask)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    return (size_t)(h ^ (h >> 31)) & mask;
}

static pd_status_t pairmap_init(pairmap_t *m, size_t n_expected)
{
    size_t cap = 16;
    while (cap < n_expected * 2 + 16)
        cap <<= 1;
    m->ents = malloc(cap * sizeof(*m->ents));
    if (m->ents == NULL)
        return PD_ERR_NOMEM;
    for (size_t i = 0; i < cap; i++)
        m->ents[i].key = UINT64_MAX;
    m->mask = cap - 1;
    m->n = 0;
    return PD_OK;
}

static void pairmap_cleanup(pairmap_t *m)
{
    free(m->ents);
    m->ents = NULL;
}

static inline const pairmap_ent_t *pairmap_get(const pairmap_t *m, int32_t a, int32_t b)
{
    uint64_t key = pair_key(a, b);
    size_t i = pair_slot(key, m->mask);
    for (;;) {
        const pairmap_ent_t *e = &m->ents[i];
        if (e->key == key)
            return e;
        if (e->key == UINT64_MAX)
            return NULL;
        i = (i + 1) & m->mask;
    }
}

/* Keep the first (lowest-rank) merge of a pair, as tokenizers does when it builds its map. */
static void pairmap_put(pairmap_t *m, int32_t a, int32_t b, uint32_t rank, int32_t id)
{
    uint64_t key = pair_key(a, b);
    size_t i = pair_slot(key, m->mask);
    if (m->n * 2 >= m->mask)
        return;
    for (;;) {
        pairmap_ent_t *e = &m->ents[i];
        if (e->key == key)
            return;
        if (e->key == UINT64_MAX) {
            e->key = key;
            e->rank = rank;
            e->id = id;
            m->n++;
            return;
        }
        i = (i + 1) & m->mask;
    }
}

/* ---- the tokenizer object ---- */

typedef enum { MODEL_BYTELEVEL, MODEL_SPM } model_kind_t;

/* Pre-tokenizer stages, applied in order; each splits every piece of the last. */
typedef enum {
    STAGE_GPT2,      /* ByteLevel use_regex / the GPT-2 Split regex */
    STAGE_LLAMA3,    /* Llama 3 Split regex (\p{N}{1,3}) */
    STAGE_QWEN2,     /* Qwen2 Split regex (\p{N}) */
    STAGE_DIGITS,    /* Digits, individual_digits = false */
    STAGE_DIGITS1,   /* Digits, individual_digits = true */
} stage_t;
#define MAX_STAGES 4

#define TOKF_SPECIAL 1u
#define TOKF_ADDED 2u

typedef struct tok_entry {
    const char *piece;     /* vocabulary form, NUL-terminated; NULL = hole */
    const uint8_t *bytes;  /* what the token decodes to (SPM: "▁" already a space) */
    uint32_t piece_len;
    uint32_t bytes_len;
    int16_t byte_val;      /* SPM "<0xXX>" byte token: XX; else -1 */
    uint8_t flags;
} tok_entry_t;

typedef struct added_tok {
    const uint8_t *content;
    size_t len;
    int32_t id;
    bool special, lstrip, rstrip, single_word;
} added_tok_t;

struct eng_tok {
    model_kind_t model;
    bool nfc;              /* NFC normaliser */
    bool spm_prepend;      /* Prepend("▁") */
    bool metaspace;        /* Metaspace pre-tokenizer (replaces " ", prepends below) */
    int meta_prepend;      /* 0 never, 1 always, 2 first (only at the start of the input) */
    bool meta_split;       /* split before every "▁" (MergedWithNext) */
    bool spm_replace;      /* Replace(" ", "▁") */
    bool bl_prefix_space;  /* ByteLevel add_prefix_space: " " before a segment lacking one */
    bool ignore_merges;
    bool byte_fallback;
    bool fuse_unk;
    bool spm_split_ok;     /* no merge result has "▁" after another character (see below) */
    int spm_strip;         /* decoder Strip(" ", start=N) */
    int n_stages;
    stage_t stages[MAX_STAGES];

    size_t n_vocab;
    tok_entry_t *toks;
    strmap_t piece_map;    /* vocabulary form -> id (model vocabulary) */
    strmap_t bytes_map;    /* byte-level: raw bytes -> id */
    int32_t byte_ids[256]; /* byte-level: id of each single byte, -1 if none */
    int32_t spm_byte_ids[256]; /* SPM: id of "<0xXX>" */
    pairmap_t merges;

    added_tok_t *added;
    size_t n_added;
    uint32_t *added_by_byte;   /* indices, grouped by first byte, longest first */
    uint32_t added_off[257];   /* added_by_byte[added_off[b] .. added_off[b + 1]) start with b */
    uint8_t added_pair[8192];  /* bit (b0 << 8 | b1): some added token starts with b0 b1 */
    bool added_single[256];    /* some added token is the single byte b */

    int32_t *prefix_ids, *suffix_ids;
    size_t n_prefix, n_suffix;

    int32_t bos_id, eos_id, pad_id, unk_id;
    int32_t model_unk_id;  /* the BPE model's unk_token (tokenizer_config may name another) */
    pd_arena_t *arena;
    /* GPT-2's byte <-> printable character table */
    uint32_t bl_byte_to_cp[256];
    int16_t bl_cp_to_byte[512];
};

/* GPT-2's table: printable Latin-1 bytes map to themselves, the others to U+0100.. in order. */
static void bytelevel_tables(eng_tok_t *tok)
{
    int n = 0;
    for (int i = 0; i < 512; i++)
        tok->bl_cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        uint32_t cp = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        tok->bl_byte_to_cp[b] = cp;
        tok->bl_cp_to_byte[cp] = (int16_t)b;
    }
}

/* ---- pre-tokenizer matchers ---- */

/* Character classes for the matchers: the Unicode flags plus CR/LF and "invalid". */
#define C_L ENG_UNI_L
#define C_N ENG_UNI_N
#define C_WS ENG_UNI_WS
#define C_CRLF 16u

/* Classes of ASCII characters (C_L, C_N, C_WS, C_CRLF), constant so that concurrent
 * encodes share nothing writable; tok_alloc checks it against eng_uni_flags. */
static const uint8_t ascii_class[128] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 20, 4, 4, 20, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0,
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0,
};

/* Class and length of the character at s[i] (i < n). */
static inline unsigned char_at(const uint8_t *s, size_t n, size_t i, size_t *len_p)
{
    uint32_t cp;
    if (s[i] < 0x80) {
        *len_p = 1;
        return ascii_class[s[i]];
    }
    *len_p = eng_utf8_decode(s + i, n - i, &cp);
    if (cp == ENG_UNI_INVALID)
        return 0;
    return eng_uni_flags(cp) & (C_L | C_N | C_WS);
}

static inline size_t scan_class(const uint8_t *s, size_t n, size_t i, unsigned want)
{
    size_t l;
    while (i < n && (char_at(s, n, i, &l) & want))
        i += l;
    return i;
}

/* "Punctuation" in these regexes: [^\s\p{L}\p{N}] */
static inline bool is_p(unsigned c)
{
    return (c & (C_L | C_N | C_WS)) == 0;
}

static inline size_t scan_p(const uint8_t *s, size_t n, size_t i)
{
    size_t l;
    while (i < n && is_p(char_at(s, n, i, &l)))
        i += l;
    return i;
}

/* 's 't 're 've 'm 'll 'd at s[i] == '\''; returns the match end or 0. */
static size_t match_contraction(const uint8_t *s, size_t n, size_t i, bool icase)
{
    if (i + 1 >= n)
        return 0;
    uint8_t a = s[i + 1];
    if (icase) {
        /* Oniguruma's case folding also maps U+017F LATIN SMALL LETTER LONG S to 's'. */
        if (a == 0xC5 && i + 2 < n && s[i + 2] == 0xBF)
            return i + 3;
        if (a >= 'A' && a <= 'Z')
            a = (uint8_t)(a + 32);
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return i + 2;
    if (i + 2 >= n)
        return 0;
    uint8_t b = s[i + 2];
    if (icase && b >= 'A' && b <= 'Z')
        b = (uint8_t)(b + 32);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return i + 3;
    return 0;
}

/*
 * Whitespace tail shared by all patterns: \s+(?!\S)|\s+ over the run [i, j) whose last
 * character starts at `last`: the whole run at the end of the text, else the run minus
 * its last character (which then leads the next piece), else the single character.
 */
static inline size_t match_ws_tail(size_t i, size_t last, size_t j, size_t n)
{
    if (j == n || last == i)
        return j;
    return last;
}

/* Scan the whitespace run at i; returns its end, *last_p = start of its last character. */
static inline size_t scan_ws(const uint8_t *s, size_t n, size_t i, size_t *last_p)
{
    size_t l, last = i;
    while (i < n && (char_at(s, n, i, &l) & C_WS)) {
        last = i;
        i += l;
    }
    *last_p = last;
    return i;
}

/*
 * GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * Returns the end of the match starting at i (always > i: the pattern covers every
 * character).
 */
static size_t match_gpt2(const uint8_t *s, size_t n, size_t i)
{
    size_t l, l2, e;
    unsigned c = char_at(s, n, i, &l);

    if (s[i] == '\'' && (e = match_contraction(s, n, i, false)) != 0)
        return e;
    if (s[i] == ' ' && i + 1 < n) {
        unsigned c2 = char_at(s, n, i + 1, &l2);
        if (c2 & C_L)
            return scan_class(s, n, i + 1, C_L);
        if (c2 & C_N)
            return scan_class(s, n, i + 1, C_N);
        if (is_p(c2))
            return scan_p(s, n, i + 1);
    }
    if (c & C_L)
        return scan_class(s, n, i, C_L);
    if (c & C_N)
        return scan_class(s, n, i, C_N);
    if (is_p(c))
        return scan_p(s, n, i);
    size_t last;
    e = scan_ws(s, n, i, &last);
    return match_ws_tail(i, last, e, n);
}

/*
 * Llama 3 (max_digits 3) and Qwen2 (max_digits 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 * \s*[\r\n]+|\s+(?!\S)|\s+
 */
static size_t match_llama3(const uint8_t *s, size_t n, size_t i, int max_digits)
{
    size_t l, l2, e;
    unsigned c = char_at(s, n, i, &l);

    if (s[i] == '\'' && (e = match_contraction(s, n, i, true)) != 0)
        return e;
    if (c & C_L)
        return scan_class(s, n, i, C_L);
    if (!(c & (C_CRLF | C_N)) && i + l < n && (char_at(s, n, i + l, &l2) & C_L))
        return scan_class(s, n, i + l, C_L);
    if (c & C_N) {
        e = i + l;
        for (int k = 1; k < max_digits && e < n && (char_at(s, n, e, &l2) & C_N); k++)
            e += l2;
        return e;
    }
    if (s[i] == ' ' && i + 1 < n && is_p(char_at(s, n, i + 1, &l2))) {
        e = scan_p(s, n, i + 1);
        while (e < n && (s[e] == '\r' || s[e] == '\n'))
            e++;
        return e;
    }
    if (is_p(c)) {
        e = scan_p(s, n, i);
        while (e < n && (s[e] == '\r' || s[e] == '\n'))
            e++;
        return e;
    }
    /* whitespace: \s*[\r\n]+ ends after the run's last CR/LF */
    size_t j = i, last = i, last_nl = 0;
    bool has_nl = false;
    while (j < n) {
        unsigned cj = char_at(s, n, j, &l2);
        if (!(cj & C_WS))
            break;
        if (cj & C_CRLF) {
            has_nl = true;
            last_nl = j + 1;
        }
        last = j;
        j += l2;
    }
    if (has_nl)
        return last_nl;
    return match_ws_tail(i, last, j, n);
}

/* ---- encoding ---- */

typedef struct sym {
    int32_t id;
    int32_t prev, next;
    uint32_t len; /* 0 once merged into its left neighbour */
} sym_t;

typedef struct merge_cand {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
} merge_cand_t;

/* Per-call scratch: nothing here is shared between threads. */
typedef struct enc_ctx {
    const eng_tok_t *tok;
    eng_tok_ids_t *out;
    pd_buf_t norm;
    sym_t *syms;
    size_t syms_cap;
    merge_cand_t *heap;
    size_t heap_n, heap_cap;
    struct word_cache_ent *cache; /* NULL for short inputs */
} enc_ctx_t;

/*
 * Per-call cache of BPE results for short words: running prose repeats words, and a
 * lookup is cheaper than merging.  Direct-mapped, overwritten on collision; private to
 * one call, so nothing is shared between threads.
 */
#define WC_SLOTS 2048
#define WC_KEY 22
#define WC_IDS 6
typedef struct word_cache_ent {
    uint8_t key_len; /* 0 = empty */
    uint8_t n_ids;
    uint8_t key[WC_KEY];
    int32_t ids[WC_IDS];
} word_cache_ent_t;
#define WC_MIN_TEXT 1024 /* inputs shorter than this do not set up a cache */

void eng_tok_ids_init(eng_tok_ids_t *ids)
{
    memset(ids, 0, sizeof(*ids));
}

void eng_tok_ids_cleanup(eng_tok_ids_t *ids)
{
    free(ids->ids);
    memset(ids, 0, sizeof(*ids));
}

static pd_status_t ids_reserve(eng_tok_ids_t *ids, size_t extra)
{
    size_t need, cap;
    if (pd_add_size(ids->n, extra, &need) != PD_OK)
        return PD_ERR_OVERFLOW;
    if (need <= ids->cap)
        return PD_OK;
    cap = ids->cap ? ids->cap : 64;
    while (cap < need) {
        if (pd_mul_size(cap, 2, &cap) != PD_OK)
            return PD_ERR_OVERFLOW;
    }
    if (cap > SIZE_MAX / sizeof(int32_t))
        return PD_ERR_OVERFLOW;
    int32_t *p = realloc(ids->ids, cap * sizeof(int32_t));
    if (p == NULL)
        return PD_ERR_NOMEM;
    ids->ids = p;
    ids->cap = cap;
    return PD_OK;
}

pd_status_t eng_tok_ids_push(eng_tok_ids_t *ids, int32_t id)
{
    pd_status_t status = ids_reserve(ids, 1);
    if (status != PD_OK)
        return status;
    ids->ids[ids->n++] = id;
    return PD_OK;
}

static inline bool cand_less(const merge_cand_t *a, const merge_cand_t *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static pd_status_t heap_push(enc_ctx_t *ctx, uint32_t rank, int32_t pos, int32_t new_id)
{
    if (ctx->heap_n == ctx->heap_cap) {
        size_t cap = ctx->heap_cap ? ctx->heap_cap * 2 : 256;
        merge_cand_t *h = realloc(ctx->heap, cap * sizeof(*h));
        if (h == NULL)
            return PD_ERR_NOMEM;
        ctx->heap = h;
        ctx->heap_cap = cap;
    }
    merge_cand_t *h = ctx->heap;
    size_t i = ctx->heap_n++;
    merge_cand_t v = {rank, pos, new_id};
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&v, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
    return PD_OK;
}

static merge_cand_t heap_pop(enc_ctx_t *ctx)
{
    merge_cand_t *h = ctx->heap;
    merge_cand_t top = h[0];
    merge_cand_t v = h[--ctx->heap_n];
    size_t n = ctx->heap_n, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && cand_less(&h[c + 1], &h[c]))
            c++;
        if (!cand_less(&h[c], &v))
            break;
        h[i] = h[c];
        i = c;
    }
    if (n > 0)
        h[i] = v;
    return top;
}

static pd_status_t syms_reserve(enc_ctx_t *ctx, size_t n)
{
    if (n <= ctx->syms_cap)
        return PD_OK;
    size_t cap = ctx->syms_cap ? ctx->syms_cap : 64;
    while (cap < n)
        cap *= 2;
    if (cap > SIZE_MAX / sizeof(sym_t))
        return PD_ERR_OVERFLOW;
    sym_t *p = realloc(ctx->syms, cap * sizeof(sym_t));
    if (p == NULL)
        return PD_ERR_NOMEM;
    ctx->syms = p;
    ctx->syms_cap = cap;
    return PD_OK;
}

static inline void sym_add(sym_t *syms, size_t *n, int32_t id, uint32_t len)
{
    size_t k = *n;
    syms[k].id = id;
    syms[k].len = len;
    syms[k].prev = (int32_t)k - 1;
    syms[k].next = (int32_t)k + 1;
    *n = k + 1;
}

/* Split a word into its initial symbols (bytes, or characters with byte fallback). */
static size_t bpe_init_symbols(enc_ctx_t *ctx, const uint8_t *w, size_t n)
{
    const eng_tok_t *tok = ctx->tok;
    sym_t *syms = ctx->syms;
    size_t ns = 0;

    if (tok->model == MODEL_BYTELEVEL) {
        for (size_t i = 0; i < n; i++) {
            int32_t id = tok->byte_ids[w[i]];
            if (id >= 0)
                sym_add(syms, &ns, id, 1);
            else if (tok->model_unk_id >= 0)
                sym_add(syms, &ns, tok->model_unk_id, 1);
        }
        return ns;
    }
    /* SentencePiece-style: one symbol per character; unknown characters become
     * "<0xXX>" byte tokens (byte_fallback) or unk (fused when fuse_unk). */
    int32_t unk_pending = -1;
    uint32_t unk_len = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = eng_utf8_decode(w + i, n - i, &cp);
        int32_t id = strmap_get(&tok->piece_map, w + i, l);
        if (id >= 0) {
            if (unk_pending >= 0) {
                sym_add(syms, &ns, unk_pending, unk_len);
                unk_pending = -1;
            }
            sym_add(syms, &ns, id, (uint32_t)l);
            i += l;
            continue;
        }
        if (tok->byte_fallback) {
            bool all = true;
            for (size_t k = 0; k < l; k++)
                all = all && tok->spm_byte_ids[w[i + k]] >= 0;
            if (all) {
                if (unk_pending >= 0) {
                    sym_add(syms, &ns, unk_pending, unk_len);
                    unk_pending = -1;
                }
                for (size_t k = 0; k < l; k++)
                    sym_add(syms, &ns, tok->spm_byte_ids[w[i + k]], 1);
                i += l;
                continue;
            }
        }
        if (tok->model_unk_id >= 0) {
            if (unk_pending >= 0 && tok->fuse_unk) {
                unk_len += (uint32_t)l;
            } else {
                if (unk_pending >= 0)
                    sym_add(syms, &ns, unk_pending, unk_len);
                unk_pending = tok->model_unk_id;
                unk_len = (uint32_t)l;
            }
        }
        i += l;
    }
    if (unk_pending >= 0)
        sym_add(syms, &ns, unk_pending, unk_len);
    return ns;
}

/* BPE one pre-tokenized word and append its ids. */
static pd_status_t bpe_merge_word(enc_ctx_t *ctx, const uint8_t *w, size_t n);

static pd_status_t bpe_word(enc_ctx_t *ctx, const uint8_t *w, size_t n)
{
    word_cache_ent_t *e = NULL;
    pd_status_t status;

    if (n == 0)
        return PD_OK;
    if (ctx->cache != NULL && n <= WC_KEY) {
        e = &ctx->cache[hash_bytes(w, n) & (WC_SLOTS - 1)];
        if (e->key_len == n && memcmp(e->key, w, n) == 0) {
            if ((status = ids_reserve(ctx->out, e->n_ids)) != PD_OK)
                return status;
            memcpy(ctx->out->ids + ctx->out->n, e->ids, e->n_ids * sizeof(int32_t));
            ctx->out->n += e->n_ids;
            return PD_OK;
        }
    }
    size_t before = ctx->out->n;
    status = bpe_merge_word(ctx, w, n);
    if (status == PD_OK && e != NULL && ctx->out->n - before <= WC_IDS) {
        e->key_len = (uint8_t)n;
        e->n_ids = (uint8_t)(ctx->out->n - before);
        memcpy(e->key, w, n);
        memcpy(e->ids, ctx->out->ids + before, e->n_ids * sizeof(int32_t));
    }
    return status;
}

static pd_status_t bpe_merge_word(enc_ctx_t *ctx, const uint8_t *w, size_t n)
{
    const eng_tok_t *tok = ctx->tok;
    pd_status_t status;

    if (tok->ignore_merges) {
        int32_t id = tok->model == MODEL_BYTELEVEL ? strmap_get(&tok->bytes_map, w, n)
                                                   : strmap_get(&tok->piece_map, w, n);
        if (id >= 0)
            return eng_tok_ids_push(ctx->out, id);
    }
    if (n > INT32_MAX / 2)
        return PD_ERR_OVERFLOW;
    status = syms_reserve(ctx, n);
    if (status != PD_OK)
        return status;
    size_t ns = bpe_init_symbols(ctx, w, n);
    if (ns == 0)
        return PD_OK;
    sym_t *syms = ctx->syms;
    syms[ns - 1].next = -1;

    ctx->heap_n = 0;
    for (size_t k = 0; k + 1 < ns; k++) {
        const pairmap_ent_t *m = pairmap_get(&tok->merges, syms[k].id, syms[k + 1].id);
        if (m != NULL && (status = heap_push(ctx, m->rank, (int32_t)k, m->id)) != PD_OK)
            return status;
    }
    while (ctx->heap_n > 0) {
        merge_cand_t top = heap_pop(ctx);
        sym_t *cur = &syms[top.pos];
        if (cur->len == 0 || cur->next < 0)
            continue;
        int32_t next_pos = cur->next;
        sym_t right = syms[next_pos];
        const pairmap_ent_t *m = pairmap_get(&tok->merges, cur->id, right.id);
        if (m == NULL || m->id != top.new_id)
            continue; /* stale candidate */
        cur->id = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        syms[next_pos].len = 0;
        if (right.next >= 0)
            syms[right.next].prev = top.pos;
        if (cur->prev >= 0) {
            const pairmap_ent_t *pm = pairmap_get(&tok->merges, syms[cur->prev].id, cur->id);
            if (pm != NULL && (status = heap_push(ctx, pm->rank, cur->prev, pm->id)) != PD_OK)
                return status;
        }
        if (cur->next >= 0) {
            const pairmap_ent_t *nm = pairmap_get(&tok->merges, cur->id, syms[cur->next].id);
            if (nm != NULL && (status = heap_push(ctx, nm->rank, top.pos, nm->id)) != PD_OK)
                return status;
        }
    }
    status = ids_reserve(ctx->out, ns);
    if (status != PD_OK)
        return status;
    for (int32_t k = 0; k >= 0; k = syms[k].next)
        ctx->out->ids[ctx->out->n++] = syms[k].id;
    return PD_OK;
}

/* Run pre-tokenizer stage `stage` over s[0..n) and BPE the final pieces. */
static pd_status_t pretok_run(enc_ctx_t *ctx, int stage, const uint8_t *s, size_t n)
{
    const eng_tok_t *tok = ctx->tok;
    pd_status_t status;
    size_t i = 0, e, l;

    if (stage == tok->n_stages)
        return bpe_word(ctx, s, n);
    stage_t st = tok->stages[stage];
    while (i < n) {
        switch (st) {
        case STAGE_GPT2:
            e = match_gpt2(s, n, i);
            break;
        case STAGE_LLAMA3:
            e = match_llama3(s, n, i, 3);
            break;
        case STAGE_QWEN2:
            e = match_llama3(s, n, i, 1);
            break;
        case STAGE_DIGITS:
        case STAGE_DIGITS1: {
            /* Isolated numeric characters (runs of them unless individual); the text
             * between them is a piece of its own. */
            bool num = char_at(s, n, i, &l) & C_N;
            e = i + l;
            if (!num || st == STAGE_DIGITS) {
                while (e < n && ((char_at(s, n, e, &l) & C_N) != 0) == num)
                    e += l;
            }
            break;
        }
        default:
            return PD_ERR_INTERNAL;
        }
        status = pretok_run(ctx, stage + 1, s + i, e - i);
        if (status != PD_OK)
            return status;
        i = e;
    }
    return PD_OK;
}

/*
 * SentencePiece models have no pre-tokenizer: the whole segment is one BPE word.  When
 * no merge can produce a piece with "▁" after some other character (checked at load,
 * true for Llama 2 and Mistral), no merge can cross a point where "▁" follows another
 * character, and BPE of the whole equals BPE of the parts cut at those points (merges
 * in different parts never interact).  Cutting keeps BPE words short.
 */
static pd_status_t spm_split_words(enc_ctx_t *ctx, const uint8_t *s, size_t n)
{
    pd_status_t status;
    size_t start = 0;
    for (size_t i = 3; i + 3 <= n; i++) {
        if (s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81 &&
            !(s[i - 3] == 0xE2 && s[i - 2] == 0x96 && s[i - 1] == 0x81) && i > start) {
            if ((status = bpe_word(ctx, s + start, i - start)) != PD_OK)
                return status;
            start = i;
        }
    }
    return bpe_word(ctx, s + start, n - start);
}

/* Metaspace with split: every "▁" starts a new word. */
static pd_status_t meta_split_words(enc_ctx_t *ctx, const uint8_t *s, size_t n)
{
    pd_status_t status;
    size_t start = 0;
    for (size_t i = 1; i + 3 <= n; i++) {
        if (s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81 && i > start) {
            if ((status = bpe_word(ctx, s + start, i - start)) != PD_OK)
                return status;
            start = i;
        }
    }
    return bpe_word(ctx, s + start, n - start);
}

/*
 * Normalise and model one segment of text that holds no added token; at_start tells
 * whether it begins the input (Metaspace's prepend_scheme "first").
 */
static pd_status_t encode_segment(enc_ctx_t *ctx, const uint8_t *s, size_t n, bool at_start)
{
    const eng_tok_t *tok = ctx->tok;
    pd_status_t status;

    if (n == 0)
        return PD_OK;
    if (tok->nfc && !eng_uni_nfc_quick(s, n)) {
        pd_buf_reset(&ctx->norm);
        status = eng_uni_nfc(s, n, &ctx->norm);
        if (status != PD_OK)
            return status;
        s = (const uint8_t *)ctx->norm.data;
        n = ctx->norm.len;
    }
    if (tok->spm_prepend || tok->spm_replace || tok->metaspace) {
        static const uint8_t meta[3] = {0xE2, 0x96, 0x81}; /* U+2581 "▁" */
        bool replace = tok->spm_replace || tok->metaspace;
        bool prepend = tok->spm_prepend;
        if (tok->metaspace && (tok->meta_prepend == 1 || (tok->meta_prepend == 2 && at_start)))
            prepend = s[0] != ' ' && !(n >= 3 && memcmp(s, meta, 3) == 0);
        pd_buf_t tmp;
        pd_buf_init(&tmp);
        status = pd_buf_reserve(&tmp, n * 3 + 3);
        if (status == PD_OK && prepend)
            status = pd_buf_append(&tmp, meta, 3);
        for (size_t i = 0; i < n && status == PD_OK;) {
            size_t j = i;
            while (j < n && !(s[j] == ' ' && replace))
                j++;
            status = pd_buf_append(&tmp, s + i, j - i);
            if (j < n && status == PD_OK)
                status = pd_buf_append(&tmp, meta, 3);
            i = j + 1;
        }
        if (status == PD_OK && tok->meta_split)
            status = meta_split_words(ctx, (const uint8_t *)tmp.data, tmp.len);
        else if (status == PD_OK && !tok->spm_split_ok)
            status = pretok_run(ctx, 0, (const uint8_t *)tmp.data, tmp.len);
        else if (status == PD_OK)
            status = spm_split_words(ctx, (const uint8_t *)tmp.data, tmp.len);
        pd_buf_cleanup(&tmp);
        return status;
    }
    if (tok->bl_prefix_space && s[0] != ' ') {
        pd_buf_t tmp;
        pd_buf_init(&tmp);
        status = pd_buf_append(&tmp, " ", 1);
        if (status == PD_OK)
            status = pd_buf_append(&tmp, s, n);
        if (status == PD_OK)
            status = pretok_run(ctx, 0, (const uint8_t *)tmp.data, tmp.len);
        pd_buf_cleanup(&tmp);
        return status;
    }
    return pretok_run(ctx, 0, s, n);
}

static inline bool is_ws_at(const uint8_t *s, size_t n, size_t i, size_t *len_p)
{
    return (char_at(s, n, i, len_p) & C_WS) != 0;
}

/* Length of the whitespace character that ends at s[i-1], 0 if there is none. */
static size_t ws_before(const uint8_t *s, size_t i)
{
    size_t k = 1, l;
    if (i == 0)
        return 0;
    while (k < 4 && k < i && (s[i - k] & 0xC0) == 0x80)
        k++; /* back to the lead byte of the last character */
    if (is_ws_at(s, i, i - k, &l) && l == k)
        return k;
    return 0;
}

/* single_word's "word character": alphanumeric or '_' (tokenizers' rule; we take
 * alphanumeric as \p{L} or \p{N}, close to Rust's Alphabetic || Numeric). */
static bool word_char_at(const uint8_t *s, size_t n, size_t i)
{
    size_t l;
    return s[i] == '_' || (char_at(s, n, i, &l) & (C_L | C_N)) != 0;
}

static bool word_char_before(const uint8_t *s, size_t i)
{
    size_t k = 1;
    if (i == 0)
        return false;
    while (k < 4 && k < i && (s[i - k] & 0xC0) == 0x80)
        k++;
    return word_char_at(s, i, i - k);
}

/* Find the next added token at or after `from`: leftmost, then longest. */
static const added_tok_t *find_added(const eng_tok_t *tok, const uint8_t *s, size_t n, size_t from,
                                     size_t *start_p)
{
    for (size_t i = from; i < n; i++) {
        uint8_t b = s[i];
        if (tok->added_off[b] == tok->added_off[b + 1])
            continue;
        if (!tok->added_single[b]) {
            unsigned pair = i + 1 < n ? (unsigned)b << 8 | s[i + 1] : 0;
            if (i + 1 >= n || !(tok->added_pair[pair >> 3] & (1u << (pair & 7))))
                continue;
        }
        for (uint32_t k = tok->added_off[b]; k < tok->added_off[b + 1]; k++) {
            const added_tok_t *a = &tok->added[tok->added_by_byte[k]];
            if (a->len <= n - i && memcmp(s + i, a->content, a->len) == 0) {
                *start_p = i;
                return a;
            }
        }
    }
    return NULL;
}

pd_status_t eng_tok_encode(const eng_tok_t *tok, const char *text, size_t len,
                           bool add_special_tokens, eng_tok_ids_t *out)
{
    const uint8_t *s = (const uint8_t *)text;
    enc_ctx_t ctx = {.tok = tok, .out = out};
    pd_status_t status = PD_OK;
    size_t seg = 0, pos = 0;

    if (add_special_tokens && tok->n_prefix > 0) {
        status = ids_reserve(out, tok->n_prefix);
        if (status != PD_OK)
            return status;
        memcpy(out->ids + out->n, tok->prefix_ids, tok->n_prefix * sizeof(int32_t));
        out->n += tok->n_prefix;
    }
    pd_buf_init(&ctx.norm);
    if (len >= WC_MIN_TEXT && (ctx.cache = calloc(WC_SLOTS, sizeof(word_cache_ent_t))) == NULL) {
        status = PD_ERR_NOMEM;
        goto cleanup;
    }
    while (tok->n_added > 0 && pos < len) {
        size_t start, stop, l;
        const added_tok_t *a = find_added(tok, s, len, pos, &start);
        if (a == NULL)
            break;
        stop = start + a->len;
        if (a->single_word && (word_char_before(s, start) || (stop < len && word_char_at(s, len, stop)))) {
            pos = stop; /* tokenizers moves past a rejected match, too */
            continue;
        }
        if (a->lstrip) {
            size_t k;
            while (start > seg && (k = ws_before(s, start)) != 0)
                start -= k;
        }
        if (a->rstrip) {
            while (stop < len && is_ws_at(s, len, stop, &l))
                stop += l;
        }
        status = encode_segment(&ctx, s + seg, start - seg, seg == 0);
        if (status == PD_OK)
            status = eng_tok_ids_push(out, a->id);
        if (status != PD_OK)
            goto cleanup;
        seg = pos = stop;
    }
    status = encode_segment(&ctx, s + seg, len - seg, seg == 0);
    if (status != PD_OK)
        goto cleanup;
    if (add_special_tokens && tok->n_suffix > 0) {
        status = ids_reserve(out, tok->n_suffix);
        if (status != PD_OK)
            goto cleanup;
        memcpy(out->ids + out->n, tok->suffix_ids, tok->n_suffix * sizeof(int32_t));
        out->n += tok->n_suffix;
    }
cleanup:
    pd_buf_cleanup(&ctx.norm);
    free(ctx.syms);
    free(ctx.heap);
    free(ctx.cache);
    return status;
}

/* ---- decoding ---- */

static inline const tok_entry_t *entry(const eng_tok_t *tok, int32_t id)
{
    if (id < 0 || (size_t)id >= tok->n_vocab || tok->toks[id].piece == NULL)
        return NULL;
    return &tok->toks[id];
}

/* SPM: flush a run of byte-fallback bytes the way tokenizers' ByteFallback does. */
static pd_status_t flush_bytes(pd_buf_t *out, const uint8_t *run, size_t n)
{
    static const uint8_t fffd[3] = {0xEF, 0xBF, 0xBD};
    pd_status_t status = PD_OK;
    if (eng_utf8_valid(run, n))
        return pd_buf_append(out, run, n);
    for (size_t i = 0; i < n && status == PD_OK; i++)
        status = pd_buf_append(out, fffd, 3);
    return status;
}

/* The fast (tokenizers) decode of ids[0..n) appended to out. */
static pd_status_t decode_plain(const eng_tok_t *tok, const int32_t *ids, size_t n, bool skip_special,
                                pd_buf_t *out)
{
    pd_status_t status = PD_OK;
    pd_buf_t raw;
    size_t start = out->len;

    pd_buf_init(&raw);
    if (tok->model == MODEL_BYTELEVEL) {
        /* a streamed token's window (a few ids) gathers on the stack: no allocation per
         * token; a longer decode moves to the growing buffer once it outgrows it */
        char small[256];
        size_t used = 0;
        for (size_t i = 0; i < n && status == PD_OK; i++) {
            const tok_entry_t *t = entry(tok, ids[i]);
            if (t == NULL || (skip_special && (t->flags & TOKF_SPECIAL)))
                continue;
            if (raw.len == 0 && t->bytes_len <= sizeof(small) - used) {
                memcpy(small + used, t->bytes, t->bytes_len);
                used += t->bytes_len;
                continue;
            }
            if (raw.len == 0 && used > 0)
                status = pd_buf_append(&raw, small, used);
            if (status == PD_OK)
                status = pd_buf_append(&raw, t->bytes, t->bytes_len);
        }
        if (status == PD_OK)
            status = raw.len > 0 ? eng_utf8_append_lossy(out, (const uint8_t *)raw.data, raw.len)
                                 : eng_utf8_append_lossy(out, (const uint8_t *)small, used);
        pd_buf_cleanup(&raw);
        return status;
    }
    /* SentencePiece: Replace("▁", " "), ByteFallback, Fuse, Strip(" ", start) */
    for (size_t i = 0; i < n && status == PD_OK; i++) {
        const tok_entry_t *t = entry(tok, ids[i]);
        if (t == NULL || (skip_special && (t->flags & TOKF_SPECIAL)))
            continue;
        if (t->byte_val >= 0) {
            uint8_t b = (uint8_t)t->byte_val;
            status = pd_buf_append(&raw, &b, 1);
            continue;
        }
        if (raw.len > 0) {
            status = flush_bytes(out, (const uint8_t *)raw.data, raw.len);
            pd_buf_reset(&raw);
        }
        if (status == PD_OK)
            status = pd_buf_append(out, t->bytes, t->bytes_len);
    }
    if (status == PD_OK && raw.len > 0)
        status = flush_bytes(out, (const uint8_t *)raw.data, raw.len);
    pd_buf_cleanup(&raw);
    if (status == PD_OK) {
        int strip = tok->spm_strip;
        while (strip-- > 0 && out->len > start && out->data[start] == ' ') {
            memmove(out->data + start, out->data + start + 1, out->len - start - 1);
            out->len--;
            out->data[out->len] = '\0';
        }
    }
    return status;
}

pd_status_t eng_tok_decode(const eng_tok_t *tok, const int32_t *ids, size_t n, bool skip_special,
                           bool spaces_between_special, pd_buf_t *out)
{
    pd_status_t status = PD_OK;
    size_t seg = 0;
    bool first = true;

    if (!spaces_between_special) {
        /* A zero-length append makes out->data non-NULL for callers that print it. */
        status = pd_buf_append(out, "", 0);
        return status == PD_OK ? decode_plain(tok, ids, n, skip_special, out) : status;
    }
    /* transformers' slow path: text runs and added tokens joined by single spaces */
    for (size_t i = 0; i <= n && status == PD_OK; i++) {
        const tok_entry_t *t = i < n ? entry(tok, ids[i]) : NULL;
        if (i < n && (t == NULL || !(t->flags & TOKF_ADDED)))
            continue;
        if (i < n && skip_special && (t->flags & TOKF_SPECIAL))
            continue; /* a skipped special does not split the text run */
        if (i > seg) {
            /* decode the run ids[seg..i) minus skipped specials */
            size_t before = out->len;
            if (!first)
                status = pd_buf_append(out, " ", 1);
            size_t mark = out->len;
            if (status == PD_OK)
                status = decode_plain(tok, ids + seg, i - seg, true, out);
            if (status == PD_OK && out->len == mark) {
                out->len = before; /* an empty run adds no separator */
                if (out->data != NULL)
                    out->data[before] = '\0';
            } else {
                first = false;
            }
        }
        if (i < n && status == PD_OK) {
            if (!first)
                status = pd_buf_append(out, " ", 1);
            if (status == PD_OK)
                status = pd_buf_append(out, t->bytes, t->bytes_len);
            first = false;
        }
        seg = i + 1;
    }
    if (status == PD_OK)
        status = pd_buf_append(out, "", 0);
    return status;
}

/* ---- vocabulary queries ---- */

size_t eng_tok_vocab_size(const eng_tok_t *tok)
{
    return tok->n_vocab;
}

int32_t eng_tok_bos_id(const eng_tok_t *tok)
{
    return tok->bos_id;
}

int32_t eng_tok_eos_id(const eng_tok_t *tok)
{
    return tok->eos_id;
}

int32_t eng_tok_pad_id(const eng_tok_t *tok)
{
    return tok->pad_id;
}

int32_t eng_tok_unk_id(const eng_tok_t *tok)
{
    return tok->unk_id;
}

bool eng_tok_adds_bos(const eng_tok_t *tok)
{
    return tok->n_prefix > 0 && tok->bos_id >= 0 && tok->prefix_ids[0] == tok->bos_id;
}

bool eng_tok_adds_eos(const eng_tok_t *tok)
{
    return tok->n_suffix > 0 && tok->eos_id >= 0 && tok->suffix_ids[tok->n_suffix - 1] == tok->eos_id;
}

bool eng_tok_is_special(const eng_tok_t *tok, int32_t id)
{
    const tok_entry_t *t = entry(tok, id);
    return t != NULL && (t->flags & TOKF_SPECIAL);
}

bool eng_tok_is_added(const eng_tok_t *tok, int32_t id)
{
    const tok_entry_t *t = entry(tok, id);
    return t != NULL && (t->flags & TOKF_ADDED);
}

const char *eng_tok_token_to_piece(const eng_tok_t *tok, int32_t id, size_t *len_p)
{
    const tok_entry_t *t = entry(tok, id);
    if (t == NULL)
        return NULL;
    if (len_p != NULL)
        *len_p = t->piece_len;
    return t->piece;
}

const uint8_t *eng_tok_token_bytes(const eng_tok_t *tok, int32_t id, size_t *len_p)
{
    const tok_entry_t *t = entry(tok, id);
    if (t == NULL)
        return NULL;
    if (t->byte_val >= 0) {
        /* the byte itself lives in the piece "<0xXX>"?  No: keep one static table */
        static const uint8_t all_bytes[256] = {
#define B4(x) x, x + 1, x + 2, x + 3
#define B16(x) B4(x), B4(x + 4), B4(x + 8), B4(x + 12)
#define B64(x) B16(x), B16(x + 16), B16(x + 32), B16(x + 48)
            B64(0), B64(64), B64(128), B64(192)
#undef B64
#undef B16
#undef B4
        };
        if (len_p != NULL)
            *len_p = 1;
        return &all_bytes[t->byte_val];
    }
    if (len_p != NULL)
        *len_p = t->bytes_len;
    return t->bytes;
}

int32_t eng_tok_piece_to_id(const eng_tok_t *tok, const char *piece, size_t len)
{
    for (size_t i = 0; i < tok->n_added; i++) {
        if (tok->added[i].len == len && memcmp(tok->added[i].content, piece, len) == 0)
            return tok->added[i].id;
    }
    return strmap_get(&tok->piece_map, (const uint8_t *)piece, len);
}

/* ---- construction helpers ---- */

void eng_tok_destroy(eng_tok_t *tok)
{
    if (tok == NULL)
        return;
    strmap_cleanup(&tok->piece_map);
    strmap_cleanup(&tok->bytes_map);
    pairmap_cleanup(&tok->merges);
    free(tok->toks);
    free(tok->added);
    free(tok->added_by_byte);
    free(tok->prefix_ids);
    free(tok->suffix_ids);
    pd_arena_destroy(tok->arena);
    free(tok);
}

static pd_status_t tok_alloc(model_kind_t model, eng_tok_t **tok_p)
{
    eng_tok_t *tok = calloc(1, sizeof(*tok));
    if (tok == NULL)
        return PD_ERR_NOMEM;
    tok->arena = pd_arena_create(1 << 20);
    if (tok->arena == NULL) {
        free(tok);
        return PD_ERR_NOMEM;
    }
    tok->model = model;
    tok->bos_id = tok->eos_id = tok->pad_id = tok->unk_id = tok->model_unk_id = -1;
    for (int b = 0; b < 256; b++)
        tok->byte_ids[b] = tok->spm_byte_ids[b] = -1;
    bytelevel_tables(tok);
    for (uint32_t c = 0; c < 128; c++) {
        unsigned want = (eng_uni_flags(c) & (C_L | C_N | C_WS)) | ((c == '\r' || c == '\n') ? C_CRLF : 0);
        if (ascii_class[c] != want) {
            PD_LOG_ERR("tokenizer: ASCII class table disagrees with the Unicode tables at %u", c);
            eng_tok_destroy(tok);
            return PD_ERR_INTERNAL;
        }
    }
    *tok_p = tok;
    return PD_OK;
}

static pd_status_t tok_set_size(eng_tok_t *tok, size_t n_vocab)
{
    if (n_vocab == 0 || n_vocab > (size_t)INT32_MAX) {
        PD_LOG_ERR("tokenizer: vocabulary size %zu out of range", n_vocab);
        return PD_ERR_FORMAT;
    }
    tok->toks = calloc(n_vocab, sizeof(*tok->toks));
    if (tok->toks == NULL)
        return PD_ERR_NOMEM;
    for (size_t i = 0; i < n_vocab; i++)
        tok->toks[i].byte_val = -1;
    tok->n_vocab = n_vocab;
    return PD_OK;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Store a token's vocabulary string and derive what it decodes to. */
static pd_status_t tok_set_piece(eng_tok_t *tok, int32_t id, const char *piece, size_t len)
{
    tok_entry_t *t = &tok->toks[id];
    const uint8_t *p = (const uint8_t *)piece;
    char *copy = pd_arena_strndup(tok->arena, piece, len);
    if (copy == NULL)
        return PD_ERR_NOMEM;
    t->piece = copy;
    t->piece_len = (uint32_t)len;
    t->byte_val = -1;
    if (tok->model == MODEL_BYTELEVEL) {
        /* ByteLevel decoder: every character maps back to a byte, or the whole token
         * is taken as its UTF-8 text (added tokens with spaces, for instance). */
        uint8_t *bytes = pd_arena_alloc(tok->arena, len + 1);
        size_t nb = 0;
        bool all = true;
        if (bytes == NULL)
            return PD_ERR_NOMEM;
        for (size_t i = 0; i < len && all;) {
            uint32_t cp;
            size_t l = eng_utf8_decode(p + i, len - i, &cp);
            if (cp < 512 && tok->bl_cp_to_byte[cp] >= 0)
                bytes[nb++] = (uint8_t)tok->bl_cp_to_byte[cp];
            else
                all = false;
            i += l;
        }
        if (!all) {
            memcpy(bytes, p, len);
            nb = len;
        }
        t->bytes = bytes;
        t->bytes_len = (uint32_t)nb;
        return PD_OK;
    }
    /* SentencePiece: "<0xXX>" is a byte; otherwise "▁" reads as a space */
    if (len == 6 && memcmp(p, "<0x", 3) == 0 && p[5] == '>' && hexval(p[3]) >= 0 && hexval(p[4]) >= 0)
        t->byte_val = (int16_t)(hexval(p[3]) * 16 + hexval(p[4]));
    uint8_t *bytes = pd_arena_alloc(tok->arena, len + 1);
    size_t nb = 0;
    if (bytes == NULL)
        return PD_ERR_NOMEM;
    for (size_t i = 0; i < len;) {
        if (i + 3 <= len && p[i] == 0xE2 && p[i + 1] == 0x96 && p[i + 2] == 0x81) {
            bytes[nb++] = ' ';
            i += 3;
        } else {
            bytes[nb++] = p[i++];
        }
    }
    t->bytes = bytes;
    t->bytes_len = (uint32_t)nb;
    return PD_OK;
}

/* Build the lookup maps over the model vocabulary (ids marked in `in_model`). */
static pd_status_t tok_build_maps(eng_tok_t *tok, const uint8_t *in_model)
{
    pd_status_t status = strmap_init(&tok->piece_map, tok->n_vocab);
    if (status != PD_OK)
        return status;
    if (tok->model == MODEL_BYTELEVEL && (status = strmap_init(&tok->bytes_map, tok->n_vocab)) != PD_OK)
        return status;
    for (size_t i = 0; i < tok->n_vocab; i++) {
        const tok_entry_t *t = &tok->toks[i];
        if (t->piece == NULL || !in_model[i])
            continue;
        strmap_put(&tok->piece_map, (const uint8_t *)t->piece, t->piece_len, (int32_t)i);
        if (tok->model == MODEL_BYTELEVEL) {
            strmap_put(&tok->bytes_map, t->bytes, t->bytes_len, (int32_t)i);
            if (t->bytes_len == 1 && tok->byte_ids[t->bytes[0]] < 0)
                tok->byte_ids[t->bytes[0]] = (int32_t)i;
        } else if (t->byte_val >= 0 && tok->spm_byte_ids[t->byte_val] < 0) {
            tok->spm_byte_ids[t->byte_val] = (int32_t)i;
        }
    }
    return PD_OK;
}

/* Add one merge given its two vocabulary strings. */
static pd_status_t tok_add_merge(eng_tok_t *tok, const char *l, size_t ll, const char *r, size_t rl,
                                 uint32_t rank)
{
    int32_t a = strmap_get(&tok->piece_map, (const uint8_t *)l, ll);
    int32_t b = strmap_get(&tok->piece_map, (const uint8_t *)r, rl);
    char stackbuf[256];
    char *cat = stackbuf;
    int32_t m;

    if (a < 0 || b < 0) {
        PD_LOG_ERR("tokenizer: merge %u uses a token missing from the vocabulary", rank);
        return PD_ERR_FORMAT;
    }
    if (ll + rl > sizeof(stackbuf) && (cat = malloc(ll + rl)) == NULL)
        return PD_ERR_NOMEM;
    memcpy(cat, l, ll);
    memcpy(cat + ll, r, rl);
    m = strmap_get(&tok->piece_map, (const uint8_t *)cat, ll + rl);
    if (cat != stackbuf)
        free(cat);
    if (m < 0) {
        PD_LOG_ERR("tokenizer: merge %u gives a token missing from the vocabulary", rank);
        return PD_ERR_FORMAT;
    }
    pairmap_put(&tok->merges, a, b, rank, m);
    return PD_OK;
}

/* See spm_split_words: true when every merge result is "▁"* followed by no "▁". */
static void spm_check_split(eng_tok_t *tok)
{
    tok->spm_split_ok = false;
    if (tok->model != MODEL_SPM || (tok->model_unk_id >= 0 && !tok->byte_fallback))
        return; /* fused unknowns could span a cut */
    for (size_t i = 0; i <= tok->merges.mask; i++) {
        const pairmap_ent_t *e = &tok->merges.ents[i];
        if (e->key == UINT64_MAX)
            continue;
        const tok_entry_t *t = &tok->toks[e->id];
        const uint8_t *p = (const uint8_t *)t->piece;
        size_t k = 0, n = t->piece_len;
        while (k + 3 <= n && p[k] == 0xE2 && p[k + 1] == 0x96 && p[k + 2] == 0x81)
            k += 3;
        if (memmem(p + k, n - k, "\xE2\x96\x81", 3) != NULL)
            return;
    }
    tok->spm_split_ok = true;
}

static int cmp_added_len(const void *pa, const void *pb, void *arg)
{
    const added_tok_t *added = arg;
    const added_tok_t *a = &added[*(const uint32_t *)pa], *b = &added[*(const uint32_t *)pb];
    if (a->content[0] != b->content[0])
        return a->content[0] < b->content[0] ? -1 : 1;
    if (a->len != b->len)
        return a->len > b->len ? -1 : 1;
    return *(const uint32_t *)pa < *(const uint32_t *)pb ? -1 : 1;
}

/* Register an added token (the array is grown by the caller). */
static pd_status_t tok_add_added(eng_tok_t *tok, int32_t id, const char *content, size_t len, bool special,
                                 bool lstrip, bool rstrip, bool single_word)
{
    added_tok_t *a;
    pd_status_t status;

    if (len == 0)
        return PD_OK; /* an empty token can never match */
    if (tok->toks[id].piece == NULL || tok->toks[id].piece_len != len ||
        memcmp(tok->toks[id].piece, content, len) != 0) {
        status = tok_set_piece(tok, id, content, len);
        if (status != PD_OK)
            return status;
    }
    tok->toks[id].flags |= TOKF_ADDED | (special ? TOKF_SPECIAL : 0);
    a = &tok->added[tok->n_added++];
    a->content = (const uint8_t *)tok->toks[id].piece;
    a->len = len;
    a->id = id;
    a->special = special;
    a->lstrip = lstrip;
    a->rstrip = rstrip;
    a->single_word = single_word;
    return PD_OK;
}

static pd_status_t tok_index_added(eng_tok_t *tok)
{
    if (tok->n_added == 0)
        return PD_OK;
    tok->added_by_byte = malloc(tok->n_added * sizeof(uint32_t));
    if (tok->added_by_byte == NULL)
        return PD_ERR_NOMEM;
    for (size_t i = 0; i < tok->n_added; i++)
        tok->added_by_byte[i] = (uint32_t)i;
    qsort_r(tok->added_by_byte, tok->n_added, sizeof(uint32_t), cmp_added_len, tok->added);
    size_t counts[256] = {0};
    for (size_t i = 0; i < tok->n_added; i++) {
        const added_tok_t *a = &tok->added[i];
        counts[a->content[0]]++;
        if (a->len == 1) {
            tok->added_single[a->content[0]] = true;
        } else {
            unsigned pair = (unsigned)a->content[0] << 8 | a->content[1];
            tok->added_pair[pair >> 3] |= (uint8_t)(1u << (pair & 7));
        }
    }
    tok->added_off[0] = 0;
    for (int b = 0; b < 256; b++)
        tok->added_off[b + 1] = tok->added_off[b] + (uint32_t)counts[b];
    return PD_OK;
}

static pd_status_t ids_dup(const int32_t *src, size_t n, int32_t **dst_p)
{
    int32_t *d;
    if (n == 0) {
        *dst_p = NULL;
        return PD_OK;
    }
    d = malloc(n * sizeof(int32_t));
    if (d == NULL)
        return PD_ERR_NOMEM;
    memcpy(d, src, n * sizeof(int32_t));
    *dst_p = d;
    return PD_OK;
}

/* ---- tokenizer.json ---- */

static const char RE_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char RE_LLAMA3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static const char *json_str(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool json_bool(const cJSON *obj, const char *key, bool dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v);
    return dflt;
}

static bool is_null(const cJSON *v)
{
    return v == NULL || cJSON_IsNull(v);
}

static bool type_is(const cJSON *obj, const char *type)
{
    const char *t = json_str(obj, "type");
    return t != NULL && strcmp(t, type) == 0;
}

static pd_status_t unsupported(const char *what, const cJSON *node)
{
    const char *t = node != NULL ? json_str(node, "type") : NULL;
    PD_LOG_ERR("tokenizer: unsupported %s%s%s", what, t ? " type " : "", t ? t : "");
    return PD_ERR_UNSUPPORTED;
}

static pd_status_t add_stage(eng_tok_t *tok, stage_t st)
{
    if (tok->n_stages >= MAX_STAGES)
        return unsupported("pre-tokenizer (too many stages)", NULL);
    tok->stages[tok->n_stages++] = st;
    return PD_OK;
}

static pd_status_t parse_pretok(eng_tok_t *tok, const cJSON *pt)
{
    pd_status_t status;
    if (is_null(pt))
        return PD_OK;
    if (type_is(pt, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers"), *it;
        if (!cJSON_IsArray(arr))
            return PD_ERR_FORMAT;
        cJSON_ArrayForEach(it, arr) {
            if ((status = parse_pretok(tok, it)) != PD_OK)
                return status;
        }
        return PD_OK;
    }
    if (type_is(pt, "ByteLevel")) {
        if (json_bool(pt, "add_prefix_space", false)) {
            /* it prepends to every piece that reaches it: fine first, not after a Split */
            if (tok->n_stages > 0)
                return unsupported("ByteLevel add_prefix_space after another pre-tokenizer", NULL);
            tok->bl_prefix_space = true;
        }
        if (tok->model != MODEL_BYTELEVEL)
            return unsupported("ByteLevel pre-tokenizer without a ByteLevel decoder", NULL);
        return json_bool(pt, "use_regex", true) ? add_stage(tok, STAGE_GPT2) : PD_OK;
    }
    if (type_is(pt, "Metaspace")) {
        const char *rep = json_str(pt, "replacement");
        const char *scheme = json_str(pt, "prepend_scheme");
        if (tok->model != MODEL_SPM || rep == NULL || strcmp(rep, "\xE2\x96\x81") != 0)
            return unsupported("Metaspace pre-tokenizer (only \"\xE2\x96\x81\" with a SentencePiece decoder)", NULL);
        tok->metaspace = true;
        if (scheme == NULL) /* older files: add_prefix_space */
            tok->meta_prepend = json_bool(pt, "add_prefix_space", true) ? 1 : 0;
        else if (strcmp(scheme, "always") == 0)
            tok->meta_prepend = 1;
        else if (strcmp(scheme, "first") == 0)
            tok->meta_prepend = 2;
        else if (strcmp(scheme, "never") == 0)
            tok->meta_prepend = 0;
        else
            return unsupported("Metaspace prepend_scheme", NULL);
        tok->meta_split = json_bool(pt, "split", true);
        return PD_OK;
    }
    if (type_is(pt, "Digits"))
        return add_stage(tok, json_bool(pt, "individual_digits", false) ? STAGE_DIGITS1 : STAGE_DIGITS);
    if (type_is(pt, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pt, "pattern");
        const char *re = json_str(pat, "Regex");
        const char *beh = json_str(pt, "behavior");
        if (beh == NULL || strcmp(beh, "Isolated") != 0 || json_bool(pt, "invert", false))
            return unsupported("Split behaviour (only Isolated, not inverted)", NULL);
        if (re != NULL && strcmp(re, RE_LLAMA3) == 0)
            return add_stage(tok, STAGE_LLAMA3);
        if (re != NULL && strcmp(re, RE_QWEN2) == 0)
            return add_stage(tok, STAGE_QWEN2);
        if (re != NULL && strcmp(re, RE_GPT2) == 0)
            return add_stage(tok, STAGE_GPT2);
        PD_LOG_ERR("tokenizer: unsupported Split pattern %s", re ? re : "(not a regex)");
        return PD_ERR_UNSUPPORTED;
    }
    return unsupported("pre-tokenizer", pt);
}

static pd_status_t parse_normalizer(eng_tok_t *tok, const cJSON *nm)
{
    if (is_null(nm))
        return PD_OK;
    if (type_is(nm, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(nm, "normalizers"), *it;
        pd_status_t status;
        if (!cJSON_IsArray(arr))
            return PD_ERR_FORMAT;
        cJSON_ArrayForEach(it, arr) {
            if ((status = parse_normalizer(tok, it)) != PD_OK)
                return status;
        }
        return PD_OK;
    }
    if (type_is(nm, "NFC")) {
        tok->nfc = true;
        return PD_OK;
    }
    if (type_is(nm, "Prepend")) {
        const char *p = json_str(nm, "prepend");
        if (p == NULL || strcmp(p, "\xE2\x96\x81") != 0 || tok->spm_replace)
            return unsupported("Prepend normaliser (only \"\xE2\x96\x81\" before Replace)", NULL);
        tok->spm_prepend = true;
        return PD_OK;
    }
    if (type_is(nm, "Replace")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(nm, "pattern");
        const char *from = json_str(pat, "String"), *to = json_str(nm, "content");
        if (from == NULL || to == NULL || strcmp(from, " ") != 0 || strcmp(to, "\xE2\x96\x81") != 0)
            return unsupported("Replace normaliser (only \" \" -> \"\xE2\x96\x81\")", NULL);
        tok->spm_replace = true;
        return PD_OK;
    }
    return unsupported("normaliser", nm);
}

/* Decoder: ByteLevel, or SentencePiece's Replace/ByteFallback/Fuse/Strip sequence. */
static pd_status_t parse_decoder_kind(const cJSON *dec, model_kind_t *kind_p, int *strip_p)
{
    if (type_is(dec, "ByteLevel")) {
        *kind_p = MODEL_BYTELEVEL;
        return PD_OK;
    }
    if (type_is(dec, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(dec, "decoders"), *it;
        bool replace = false, fallback = false;
        int strip = 0;
        if (!cJSON_IsArray(arr))
            return PD_ERR_FORMAT;
        cJSON_ArrayForEach(it, arr) {
            if (type_is(it, "Replace")) {
                const cJSON *pat = cJSON_GetObjectItemCaseSensitive(it, "pattern");
                const char *from = json_str(pat, "String"), *to = json_str(it, "content");
                if (from == NULL || to == NULL || strcmp(from, "\xE2\x96\x81") != 0 || strcmp(to, " ") != 0)
                    return unsupported("Replace decoder", NULL);
                replace = true;
            } else if (type_is(it, "ByteFallback")) {
                fallback = true;
            } else if (type_is(it, "Fuse")) {
            } else if (type_is(it, "Strip")) {
                const char *c = json_str(it, "content");
                const cJSON *start = cJSON_GetObjectItemCaseSensitive(it, "start");
                const cJSON *stop = cJSON_GetObjectItemCaseSensitive(it, "stop");
                if (c == NULL || strcmp(c, " ") != 0 || !cJSON_IsNumber(start) ||
                    (cJSON_IsNumber(stop) && stop->valueint != 0) || start->valueint < 0 ||
                    start->valueint > 8)
                    return unsupported("Strip decoder", NULL);
                strip = start->valueint;
            } else {
                return unsupported("decoder in Sequence", it);
            }
        }
        if (!replace)
            return unsupported("decoder Sequence without Replace(\"\xE2\x96\x81\", \" \")", NULL);
        (void)fallback;
        *kind_p = MODEL_SPM;
        *strip_p = strip;
        return PD_OK;
    }
    return unsupported("decoder", dec);
}

/* Post-processor: the ids put before and after the sequence for add_special_tokens. */
static pd_status_t parse_post(eng_tok_t *tok, const cJSON *pp, eng_tok_ids_t *pre, eng_tok_ids_t *suf)
{
    pd_status_t status;
    if (is_null(pp) || type_is(pp, "ByteLevel"))
        return PD_OK;
    if (type_is(pp, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(pp, "processors"), *it;
        if (!cJSON_IsArray(arr))
            return PD_ERR_FORMAT;
        cJSON_ArrayForEach(it, arr) {
            if ((status = parse_post(tok, it, pre, suf)) != PD_OK)
                return status;
        }
        return PD_OK;
    }
    if (type_is(pp, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single"), *it;
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(pp, "special_tokens");
        bool after = false;
        pre->n = suf->n = 0;
        if (!cJSON_IsArray(single))
            return PD_ERR_FORMAT;
        cJSON_ArrayForEach(it, single) {
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
            if (cJSON_GetObjectItemCaseSensitive(it, "Sequence") != NULL) {
                after = true;
                continue;
            }
            const char *name = json_str(sp, "id");
            const cJSON *def = name ? cJSON_GetObjectItemCaseSensitive(specials, name) : NULL;
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids"), *idv;
            if (!cJSON_IsArray(ids)) {
                PD_LOG_ERR("tokenizer: template names an undefined special token");
                return PD_ERR_FORMAT;
            }
            cJSON_ArrayForEach(idv, ids) {
                if (!cJSON_IsNumber(idv) || idv->valuedouble < 0 || idv->valuedouble >= (double)tok->n_vocab)
                    return PD_ERR_FORMAT;
                if ((status = eng_tok_ids_push(after ? suf : pre, (int32_t)idv->valuedouble)) != PD_OK)
                    return status;
            }
        }
        return PD_OK;
    }
    if (type_is(pp, "BertProcessing") || type_is(pp, "RobertaProcessing")) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(pp, "cls");
        const cJSON *sep = cJSON_GetObjectItemCaseSensitive(pp, "sep");
        const cJSON *cid = cJSON_GetArrayItem(cls, 1), *sid = cJSON_GetArrayItem(sep, 1);
        if (!cJSON_IsNumber(cid) || !cJSON_IsNumber(sid))
            return PD_ERR_FORMAT;
        pre->n = suf->n = 0;
        if ((status = eng_tok_ids_push(pre, cid->valueint)) != PD_OK)
            return status;
        return eng_tok_ids_push(suf, sid->valueint);
    }
    return unsupported("post-processor", pp);
}

/* A token named in tokenizer_config.json: a string or {"content": ...}. */
static int32_t config_token(const eng_tok_t *tok, const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s = cJSON_IsString(v) ? v->valuestring : json_str(v, "content");
    return s != NULL ? eng_tok_piece_to_id(tok, s, strlen(s)) : -1;
}

static pd_status_t apply_config(eng_tok_t *tok, const char *config_json, eng_tok_ids_t *pre,
                                eng_tok_ids_t *suf)
{
    cJSON *cfg = cJSON_Parse(config_json);
    pd_status_t status = PD_OK;
    if (cfg == NULL) {
        PD_LOG_ERR("tokenizer: tokenizer_config.json is not valid JSON");
        return PD_ERR_FORMAT;
    }
    int32_t id;
    if ((id = config_token(tok, cfg, "bos_token")) >= 0)
        tok->bos_id = id;
    if ((id = config_token(tok, cfg, "eos_token")) >= 0)
        tok->eos_id = id;
    if ((id = config_token(tok, cfg, "pad_token")) >= 0)
        tok->pad_id = id;
    if ((id = config_token(tok, cfg, "unk_token")) >= 0)
        tok->unk_id = id;
    /* transformers rebuilds the template from add_bos/add_eos for Llama-class fast
     * tokenizers only; other classes keep the tokenizer.json post-processor. */
    const char *cls = json_str(cfg, "tokenizer_class");
    if (cls != NULL && (strncmp(cls, "Llama", 5) == 0 || strncmp(cls, "CodeLlama", 9) == 0 ||
                        strncmp(cls, "Gemma", 5) == 0)) {
        const cJSON *ab = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
        const cJSON *ae = cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token");
        if (cJSON_IsBool(ab) || cJSON_IsBool(ae)) {
            bool add_bos = cJSON_IsBool(ab) ? cJSON_IsTrue(ab) : true;
            bool add_eos = cJSON_IsBool(ae) && cJSON_IsTrue(ae);
            pre->n = suf->n = 0;
            if (add_bos && tok->bos_id >= 0)
                status = eng_tok_ids_push(pre, tok->bos_id);
            if (status == PD_OK && add_eos && tok->eos_id >= 0)
                status = eng_tok_ids_push(suf, tok->eos_id);
        }
    }
    cJSON_Delete(cfg);
    return status;
}

static pd_status_t finish_template(eng_tok_t *tok, eng_tok_ids_t *pre, eng_tok_ids_t *suf)
{
    pd_status_t status;
    tok->n_prefix = pre->n;
    tok->n_suffix = suf->n;
    status = ids_dup(pre->ids, pre->n, &tok->prefix_ids);
    if (status == PD_OK)
        status = ids_dup(suf->ids, suf->n, &tok->suffix_ids);
    return status;
}

pd_status_t eng_tok_create_from_json(const char *json, size_t len, const char *config_json,
                                     eng_tok_t **tok_p)
{
    cJSON *root = cJSON_ParseWithLength(json, len);
    eng_tok_t *tok = NULL;
    uint8_t *in_model = NULL;
    eng_tok_ids_t pre, suf;
    pd_status_t status;
    model_kind_t kind = MODEL_BYTELEVEL;
    int strip = 0;
    const cJSON *it;

    eng_tok_ids_init(&pre);
    eng_tok_ids_init(&suf);
    if (root == NULL) {
        PD_LOG_ERR("tokenizer: tokenizer.json is not valid JSON");
        return PD_ERR_FORMAT;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!type_is(model, "BPE")) {
        status = unsupported("model", model);
        goto err_json;
    }
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        PD_LOG_ERR("tokenizer: BPE model without vocab or merges");
        status = PD_ERR_FORMAT;
        goto err_json;
    }
    const char *csp = json_str(model, "continuing_subword_prefix");
    const char *eow = json_str(model, "end_of_word_suffix");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if ((csp != NULL && *csp) || (eow != NULL && *eow) || !is_null(dropout)) {
        status = unsupported("BPE option (continuing_subword_prefix, end_of_word_suffix or dropout)", NULL);
        goto err_json;
    }
    status = parse_decoder_kind(cJSON_GetObjectItemCaseSensitive(root, "decoder"), &kind, &strip);
    if (status != PD_OK)
        goto err_json;
    status = tok_alloc(kind, &tok);
    if (status != PD_OK)
        goto err_json;
    tok->spm_strip = strip;
    tok->ignore_merges = json_bool(model, "ignore_merges", false);
    tok->byte_fallback = json_bool(model, "byte_fallback", false);
    tok->fuse_unk = json_bool(model, "fuse_unk", false);
    if ((status = parse_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"))) != PD_OK ||
        (status = parse_pretok(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"))) != PD_OK)
        goto err_tok;
    if (kind == MODEL_SPM && tok->n_stages > 0) {
        status = unsupported("pre-tokenizer for a SentencePiece-style model", NULL);
        goto err_tok;
    }

    /* size: highest id among vocabulary and added tokens */
    double max_id = -1;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > INT32_MAX - 1) {
            status = PD_ERR_FORMAT;
            goto err_tok;
        }
        max_id = PD_MAX(max_id, it->valuedouble);
    }
    size_t n_added = 0;
    cJSON_ArrayForEach(it, added) {
        const cJSON *idv = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (!cJSON_IsNumber(idv) || idv->valuedouble < 0 || idv->valuedouble > INT32_MAX - 1 ||
            json_str(it, "content") == NULL) {
            PD_LOG_ERR("tokenizer: malformed added token");
            status = PD_ERR_FORMAT;
            goto err_tok;
        }
        max_id = PD_MAX(max_id, idv->valuedouble);
        n_added++;
    }
    if ((status = tok_set_size(tok, (size_t)(max_id + 1))) != PD_OK)
        goto err_tok;
    in_model = calloc(tok->n_vocab, 1);
    tok->added = calloc(n_added + 1, sizeof(*tok->added));
    if (in_model == NULL || tok->added == NULL) {
        status = PD_ERR_NOMEM;
        goto err_tok;
    }
    cJSON_ArrayForEach(it, vocab) {
        int32_t id = (int32_t)it->valuedouble;
        if (tok->toks[id].piece != NULL)
            continue;
        if ((status = tok_set_piece(tok, id, it->string, strlen(it->string))) != PD_OK)
            goto err_tok;
        in_model[id] = 1;
    }
    if ((status = tok_build_maps(tok, in_model)) != PD_OK)
        goto err_tok;

    /* merges: "left right" strings or [left, right] pairs, rank = position */
    if ((status = pairmap_init(&tok->merges, (size_t)cJSON_GetArraySize(merges))) != PD_OK)
        goto err_tok;
    uint32_t rank = 0;
    cJSON_ArrayForEach(it, merges) {
        const char *l, *r;
        size_t ll, rl;
        if (cJSON_IsString(it)) {
            const char *sp = strchr(it->valuestring, ' ');
            if (sp == NULL || strchr(sp + 1, ' ') != NULL) {
                PD_LOG_ERR("tokenizer: merge %u is not \"left right\"", rank);
                status = PD_ERR_FORMAT;
                goto err_tok;
            }
            l = it->valuestring;
            ll = (size_t)(sp - l);
            r = sp + 1;
            rl = strlen(r);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 0)) && cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            l = cJSON_GetArrayItem(it, 0)->valuestring;
            r = cJSON_GetArrayItem(it, 1)->valuestring;
            ll = strlen(l);
            rl = strlen(r);
        } else {
            PD_LOG_ERR("tokenizer: merge %u is malformed", rank);
            status = PD_ERR_FORMAT;
            goto err_tok;
        }
        if ((status = tok_add_merge(tok, l, ll, r, rl, rank++)) != PD_OK)
            goto err_tok;
    }

    const char *unk = json_str(model, "unk_token");
    if (unk != NULL)
        tok->unk_id = tok->model_unk_id = strmap_get(&tok->piece_map, (const uint8_t *)unk, strlen(unk));
    spm_check_split(tok);

    cJSON_ArrayForEach(it, added) {
        const char *content = json_str(it, "content");
        if (json_bool(it, "normalized", false) && (tok->nfc || tok->spm_prepend || tok->spm_replace)) {
            /* would need matching on normalised text; no supported model has it */
            status = unsupported("added token with normalized=true under a normaliser", NULL);
            goto err_tok;
        }
        status = tok_add_added(tok, (int32_t)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble, content,
                               strlen(content), json_bool(it, "special", false), json_bool(it, "lstrip", false),
                               json_bool(it, "rstrip", false), json_bool(it, "single_word", false));
        if (status != PD_OK)
            goto err_tok;
    }
    if ((status = tok_index_added(tok)) != PD_OK)
        goto err_tok;

    status = parse_post(tok, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), &pre, &suf);
    if (status != PD_OK)
        goto err_tok;
    if (pre.n == 1)
        tok->bos_id = pre.ids[0];
    if (config_json != NULL && (status = apply_config(tok, config_json, &pre, &suf)) != PD_OK)
        goto err_tok;
    if ((status = finish_template(tok, &pre, &suf)) != PD_OK)
        goto err_tok;

    free(in_model);
    eng_tok_ids_cleanup(&pre);
    eng_tok_ids_cleanup(&suf);
    cJSON_Delete(root);
    *tok_p = tok;
    return PD_OK;

err_tok:
    free(in_model);
    eng_tok_destroy(tok);
err_json:
    eng_tok_ids_cleanup(&pre);
    eng_tok_ids_cleanup(&suf);
    cJSON_Delete(root);
    return status;
}

pd_status_t eng_tok_create_from_files(const char *tokenizer_json_path, const char *config_path,
                                      eng_tok_t **tok_p)
{
    char *json = NULL, *cfg = NULL;
    size_t len = 0, cfg_len = 0;
    pd_status_t status = pd_read_file(tokenizer_json_path, &json, &len);
    if (status != PD_OK) {
        PD_LOG_ERR("tokenizer: cannot read %s", tokenizer_json_path);
        return status;
    }
    if (config_path != NULL && (status = pd_read_file(config_path, &cfg, &cfg_len)) != PD_OK) {
        PD_LOG_ERR("tokenizer: cannot read %s", config_path);
        free(json);
        return status;
    }
    status = eng_tok_create_from_json(json, len, cfg, tok_p);
    free(json);
    free(cfg);
    return status;
}

/* ---- GPT-2 style vocab.json + merges.txt ---- */

/* Add an added-token entry for a config token (string or {"content": ...}) found in vocab. */
static void gpt2_add_config_special(cJSON *added, const cJSON *vocab, const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *content = cJSON_IsString(v) ? v->valuestring : json_str(v, "content");
    const cJSON *id = content ? cJSON_GetObjectItemCaseSensitive(vocab, content) : NULL, *it;
    if (!cJSON_IsNumber(id))
        return;
    cJSON_ArrayForEach(it, added) {
        if (strcmp(json_str(it, "content"), content) == 0)
            return;
    }
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "id", id->valuedouble);
    cJSON_AddStringToObject(t, "content", content);
    cJSON_AddBoolToObject(t, "special", 1);
    cJSON_AddItemToArray(added, t);
}

/*
 * Build the tokenizer.json that transformers' GPT2Converter makes from the slow files
 * (OPT, GPT-2): BPE over vocab/merges, ByteLevel pre-tokenizer and decoder, BOS template
 * when add_bos_token, special tokens from tokenizer_config.json.
 */
static pd_status_t gpt2_files_json(const char *vocab_json, size_t vocab_len, const char *merges_txt,
                                   const char *config_json, char **json_p)
{
    cJSON *root = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(root, "model");
    cJSON *vocab = cJSON_ParseWithLength(vocab_json, vocab_len);
    cJSON *cfg = config_json ? cJSON_Parse(config_json) : cJSON_CreateObject();
    cJSON *merges = cJSON_CreateArray(), *added = cJSON_AddArrayToObject(root, "added_tokens");
    pd_status_t status = PD_OK;

    if (!cJSON_IsObject(vocab) || cfg == NULL) {
        PD_LOG_ERR("tokenizer: vocab.json or tokenizer_config.json is not valid JSON");
        status = PD_ERR_FORMAT;
        goto cleanup;
    }
    for (const char *line = merges_txt; line != NULL && *line;) {
        const char *eol = strchr(line, '\n');
        size_t l = eol ? (size_t)(eol - line) : strlen(line);
        size_t tl = l;
        while (tl > 0 && line[tl - 1] == '\r')
            tl--;
        if (tl > 0 && strncmp(line, "#version", 8) != 0) {
            char *m = strndup(line, tl);
            if (m == NULL) {
                status = PD_ERR_NOMEM;
                goto cleanup;
            }
            cJSON_AddItemToArray(merges, cJSON_CreateString(m));
            free(m);
        }
        line = eol ? eol + 1 : NULL;
    }
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddItemReferenceToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    merges = NULL;
    /* added_tokens_decoder first (with their flags), then the named special tokens */
    const cJSON *atd = cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder"), *it;
    cJSON_ArrayForEach(it, atd) {
        cJSON *t = cJSON_Duplicate(it, 1);
        cJSON_AddNumberToObject(t, "id", strtod(it->string, NULL));
        cJSON_AddItemToArray(added, t);
    }
    gpt2_add_config_special(added, vocab, cfg, "bos_token");
    gpt2_add_config_special(added, vocab, cfg, "eos_token");
    gpt2_add_config_special(added, vocab, cfg, "unk_token");
    gpt2_add_config_special(added, vocab, cfg, "pad_token");
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddBoolToObject(pre, "add_prefix_space", json_bool(cfg, "add_prefix_space", false));
    cJSON_AddBoolToObject(pre, "use_regex", 1);
    cJSON_AddStringToObject(cJSON_AddObjectToObject(root, "decoder"), "type", "ByteLevel");
    const cJSON *bos = cJSON_GetObjectItemCaseSensitive(cfg, "bos_token");
    const char *bos_s = cJSON_IsString(bos) ? bos->valuestring : json_str(bos, "content");
    const cJSON *bos_id = bos_s ? cJSON_GetObjectItemCaseSensitive(vocab, bos_s) : NULL;
    if (json_bool(cfg, "add_bos_token", false) && cJSON_IsNumber(bos_id)) {
        /* {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": bos}}, {"Sequence": {"id": "A"}}],
         *  "special_tokens": {bos: {"id": bos, "ids": [id], "tokens": [bos]}}} */
        cJSON *pp = cJSON_AddObjectToObject(root, "post_processor");
        cJSON_AddStringToObject(pp, "type", "TemplateProcessing");
        cJSON *single = cJSON_AddArrayToObject(pp, "single");
        cJSON *sp = cJSON_CreateObject();
        cJSON_AddStringToObject(cJSON_AddObjectToObject(sp, "SpecialToken"), "id", bos_s);
        cJSON_AddItemToArray(single, sp);
        cJSON *seq = cJSON_CreateObject();
        cJSON_AddStringToObject(cJSON_AddObjectToObject(seq, "Sequence"), "id", "A");
        cJSON_AddItemToArray(single, seq);
        cJSON *def = cJSON_AddObjectToObject(cJSON_AddObjectToObject(pp, "special_tokens"), bos_s);
        cJSON_AddStringToObject(def, "id", bos_s);
        cJSON_AddItemToObject(def, "ids", cJSON_CreateIntArray((const int[]){(int)bos_id->valuedouble}, 1));
    }
    *json_p = cJSON_PrintUnformatted(root);
    if (*json_p == NULL)
        status = PD_ERR_NOMEM;
cleanup:
    cJSON_Delete(merges);
    cJSON_Delete(root);
    cJSON_Delete(vocab);
    cJSON_Delete(cfg);
    return status;
}

pd_status_t eng_tok_create_from_bpe_files(const char *vocab_path, const char *merges_path,
                                          const char *config_path, eng_tok_t **tok_p)
{
    char *vocab = NULL, *merges = NULL, *cfg = NULL, *json = NULL;
    size_t vlen, mlen, clen;
    pd_status_t status;

    if ((status = pd_read_file(vocab_path, &vocab, &vlen)) != PD_OK) {
        PD_LOG_ERR("tokenizer: cannot read %s", vocab_path);
        return status;
    }
    if ((status = pd_read_file(merges_path, &merges, &mlen)) != PD_OK) {
        PD_LOG_ERR("tokenizer: cannot read %s", merges_path);
        goto cleanup;
    }
    if (config_path != NULL && (status = pd_read_file(config_path, &cfg, &clen)) != PD_OK) {
        PD_LOG_ERR("tokenizer: cannot read %s", config_path);
        goto cleanup;
    }
    if ((status = gpt2_files_json(vocab, vlen, merges, cfg, &json)) != PD_OK)
        goto cleanup;
    status = eng_tok_create_from_json(json, strlen(json), cfg, tok_p);
cleanup:
    free(json);
    free(cfg);
    free(merges);
    free(vocab);
    return status;
}

/* ---- vocabulary description (GGUF) ---- */

void eng_tok_vocab_init(eng_tok_vocab_t *vocab)
{
    memset(vocab, 0, sizeof(*vocab));
    vocab->bos_id = vocab->eos_id = vocab->unk_id = vocab->pad_id = -1;
    vocab->add_bos = vocab->add_eos = vocab->add_space_prefix = -1;
}

typedef struct spm_merge {
    float score;
    int32_t piece, left, right;
} spm_merge_t;

static int cmp_spm_merge(const void *pa, const void *pb)
{
    const spm_merge_t *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    if (a->piece != b->piece)
        return a->piece < b->piece ? -1 : 1;
    if (a->left != b->left)
        return a->left < b->left ? -1 : 1;
    return a->right < b->right ? -1 : (a->right > b->right);
}

/*
 * SentencePiece BPE ranks merges by the score of the piece they make.  We derive the
 * merge list as transformers' GGUF converter does: every split of every piece into two
 * vocabulary pieces, ordered by score (high first), then piece id, then the halves' ids.
 */
static pd_status_t spm_merges_from_scores(eng_tok_t *tok, const float *scores)
{
    spm_merge_t *list = NULL;
    size_t n = 0, cap = 0;
    pd_status_t status = PD_OK;

    for (size_t id = 0; id < tok->n_vocab; id++) {
        const tok_entry_t *t = &tok->toks[id];
        if (t->piece == NULL)
            continue;
        const uint8_t *p = (const uint8_t *)t->piece;
        for (size_t k = 1; k < t->piece_len; k++) {
            if ((p[k] & 0xC0) == 0x80)
                continue; /* split between characters only */
            int32_t l = strmap_get(&tok->piece_map, p, k);
            int32_t r = l >= 0 ? strmap_get(&tok->piece_map, p + k, t->piece_len - k) : -1;
            if (r < 0)
                continue;
            if (n == cap) {
                cap = cap ? cap * 2 : 4096;
                spm_merge_t *nl = realloc(list, cap * sizeof(*nl));
                if (nl == NULL) {
                    free(list);
                    return PD_ERR_NOMEM;
                }
                list = nl;
            }
            list[n++] = (spm_merge_t){scores[id], (int32_t)id, l, r};
        }
    }
    if (n > 0)
        qsort(list, n, sizeof(*list), cmp_spm_merge);
    status = pairmap_init(&tok->merges, n);
    for (size_t i = 0; i < n && status == PD_OK; i++)
        pairmap_put(&tok->merges, list[i].left, list[i].right, (uint32_t)i, list[i].piece);
    free(list);
    return status;
}

pd_status_t eng_tok_create_from_vocab(const eng_tok_vocab_t *v, eng_tok_t **tok_p)
{
    eng_tok_t *tok = NULL;
    uint8_t *in_model = NULL;
    eng_tok_ids_t pre, suf;
    pd_status_t status;
    model_kind_t kind;

    eng_tok_ids_init(&pre);
    eng_tok_ids_init(&suf);
    if (v->model == NULL || v->tokens == NULL || v->n_tokens == 0) {
        PD_LOG_ERR("tokenizer: vocabulary without model name or tokens");
        return PD_ERR_INVAL;
    }
    if (strcmp(v->model, "gpt2") == 0) {
        kind = MODEL_BYTELEVEL;
    } else if (strcmp(v->model, "llama") == 0) {
        kind = MODEL_SPM;
    } else {
        PD_LOG_ERR("tokenizer: unsupported tokenizer model \"%s\"", v->model);
        return PD_ERR_UNSUPPORTED;
    }
    if ((status = tok_alloc(kind, &tok)) != PD_OK)
        return status;
    if (kind == MODEL_BYTELEVEL) {
        const char *pre_name = v->pre ? v->pre : "default";
        if (!strcmp(pre_name, "default") || !strcmp(pre_name, "gpt2") || !strcmp(pre_name, "gpt-2")) {
            status = add_stage(tok, STAGE_GPT2);
        } else if (!strcmp(pre_name, "smollm") || !strcmp(pre_name, "starcoder") ||
                   !strcmp(pre_name, "refact")) {
            status = add_stage(tok, STAGE_DIGITS1);
            if (status == PD_OK)
                status = add_stage(tok, STAGE_GPT2);
        } else if (!strcmp(pre_name, "llama-bpe") || !strcmp(pre_name, "llama3")) {
            status = add_stage(tok, STAGE_LLAMA3);
            tok->ignore_merges = true;
        } else if (!strcmp(pre_name, "qwen2")) {
            status = add_stage(tok, STAGE_QWEN2);
            tok->nfc = true;
        } else {
            PD_LOG_ERR("tokenizer: unsupported pre-tokenizer \"%s\"", pre_name);
            status = PD_ERR_UNSUPPORTED;
        }
        if (status != PD_OK)
            goto err_tok;
    } else {
        bool prefix = v->add_space_prefix != 0;
        tok->spm_prepend = prefix;
        tok->spm_replace = true;
        tok->spm_strip = prefix ? 1 : 0;
        tok->byte_fallback = true;
        tok->fuse_unk = true;
    }
    if ((status = tok_set_size(tok, v->n_tokens)) != PD_OK)
        goto err_tok;
    in_model = calloc(v->n_tokens, 1);
    tok->added = calloc(v->n_tokens, sizeof(*tok->added));
    if (in_model == NULL || tok->added == NULL) {
        status = PD_ERR_NOMEM;
        goto err_tok;
    }
    for (size_t i = 0; i < v->n_tokens; i++) {
        const char *s = v->tokens[i];
        if (s == NULL) {
            status = PD_ERR_INVAL;
            goto err_tok;
        }
        size_t l = v->token_lens ? v->token_lens[i] : strlen(s);
        if ((status = tok_set_piece(tok, (int32_t)i, s, l)) != PD_OK)
            goto err_tok;
        in_model[i] = 1;
    }
    if ((status = tok_build_maps(tok, in_model)) != PD_OK)
        goto err_tok;
    if (v->n_merges > 0) {
        if ((status = pairmap_init(&tok->merges, v->n_merges)) != PD_OK)
            goto err_tok;
        for (size_t i = 0; i < v->n_merges; i++) {
            const char *m = v->merges[i], *sp = m ? strchr(m, ' ') : NULL;
            if (sp == NULL) {
                PD_LOG_ERR("tokenizer: merge %zu is not \"left right\"", i);
                status = PD_ERR_INVAL;
                goto err_tok;
            }
            status = tok_add_merge(tok, m, (size_t)(sp - m), sp + 1, strlen(sp + 1), (uint32_t)i);
            if (status != PD_OK) {
                status = PD_ERR_INVAL;
                goto err_tok;
            }
        }
    } else if (kind == MODEL_SPM && v->scores != NULL) {
        if ((status = spm_merges_from_scores(tok, v->scores)) != PD_OK)
            goto err_tok;
    } else {
        PD_LOG_ERR("tokenizer: vocabulary has neither merges nor scores");
        status = PD_ERR_INVAL;
        goto err_tok;
    }
    for (size_t i = 0; v->token_types != NULL && i < v->n_tokens; i++) {
        int32_t ty = v->token_types[i];
        if (ty != ENG_TOK_TYPE_CONTROL && ty != ENG_TOK_TYPE_USER_DEFINED && ty != ENG_TOK_TYPE_UNKNOWN)
            continue;
        status = tok_add_added(tok, (int32_t)i, tok->toks[i].piece, tok->toks[i].piece_len,
                               ty != ENG_TOK_TYPE_USER_DEFINED, false, false, false);
        if (status != PD_OK)
            goto err_tok;
    }
    if ((status = tok_index_added(tok)) != PD_OK)
        goto err_tok;
    int32_t ids[4] = {v->bos_id, v->eos_id, v->unk_id, v->pad_id};
    for (int k = 0; k < 4; k++) {
        if (ids[k] < -1 || ids[k] >= (int32_t)v->n_tokens) {
            PD_LOG_ERR("tokenizer: special token id %d out of range", ids[k]);
            status = PD_ERR_INVAL;
            goto err_tok;
        }
    }
    tok->bos_id = v->bos_id;
    tok->eos_id = v->eos_id;
    tok->unk_id = v->unk_id;
    tok->pad_id = v->pad_id;
    /* GGUF names unk for both; byte-level vocabularies cover every byte anyway, and
     * transformers' converter gives the gpt2 model no unk_token. */
    tok->model_unk_id = kind == MODEL_SPM ? v->unk_id : -1;
    spm_check_split(tok);
    bool add_bos = v->add_bos >= 0 ? v->add_bos != 0 : kind == MODEL_SPM;
    if (add_bos && tok->bos_id >= 0 && (status = eng_tok_ids_push(&pre, tok->bos_id)) != PD_OK)
        goto err_tok;
    if (v->add_eos > 0 && tok->eos_id >= 0 && (status = eng_tok_ids_push(&suf, tok->eos_id)) != PD_OK)
        goto err_tok;
    if ((status = finish_template(tok, &pre, &suf)) != PD_OK)
        goto err_tok;
    free(in_model);
    eng_tok_ids_cleanup(&pre);
    eng_tok_ids_cleanup(&suf);
    *tok_p = tok;
    return PD_OK;

err_tok:
    free(in_model);
    eng_tok_ids_cleanup(&pre);
    eng_tok_ids_cleanup(&suf);
    eng_tok_destroy(tok);
    return status;
}

/* ---- incremental detokenization ---- */

struct eng_detok {
    const eng_tok_t *tok;
    bool skip_special, spaces_between;
    eng_tok_ids_t ids;      /* context ids, then every generated id */
    size_t n_ctx;           /* context ids at the front of ids */
    size_t prefix_off, read_off;
    pd_buf_t emitted;       /* everything handed out, to check and complete at finish */
    pd_buf_t a, b;          /* scratch */
};

static pd_status_t detok_decode(eng_detok_t *d, size_t from, size_t to, pd_buf_t *out)
{
    pd_buf_reset(out);
    if (from == to) /* ids.ids may still be NULL */
        return pd_buf_append(out, "", 0);
    return eng_tok_decode(d->tok, d->ids.ids + from, to - from, d->skip_special, d->spaces_between, out);
}

static bool ends_with_fffd(const pd_buf_t *b)
{
    return b->len >= 3 && memcmp(b->data + b->len - 3, "\xEF\xBF\xBD", 3) == 0;
}

pd_status_t eng_detok_create(const eng_tok_t *tok, const int32_t *prompt_ids, size_t n_prompt,
                             bool skip_special, bool spaces_between_special, eng_detok_t **detok_p)
{
    eng_detok_t *d = calloc(1, sizeof(*d));
    pd_status_t status = PD_OK;
    if (d == NULL)
        return PD_ERR_NOMEM;
    d->tok = tok;
    d->skip_special = skip_special;
    d->spaces_between = spaces_between_special;
    /* Context: the shortest prompt suffix of at least 4 ids (at most 24) that decodes
     * without a broken character, as vLLM primes its decode stream. */
    size_t take = PD_MIN(n_prompt, (size_t)4);
    if (n_prompt > 4) {
        for (size_t k = 4; k <= PD_MIN(n_prompt, (size_t)24); k++) {
            pd_buf_reset(&d->a);
            status = eng_tok_decode(tok, prompt_ids + n_prompt - k, k, skip_special, spaces_between_special,
                                    &d->a);
            if (status != PD_OK)
                goto err;
            take = k;
            if (!ends_with_fffd(&d->a) && memmem(d->a.data, d->a.len, "\xEF\xBF\xBD", 3) == NULL)
                break;
        }
    }
    for (size_t k = n_prompt - take; k < n_prompt && status == PD_OK; k++)
        status = eng_tok_ids_push(&d->ids, prompt_ids[k]);
    if (status != PD_OK)
        goto err;
    d->n_ctx = take;
    d->prefix_off = 0;
    d->read_off = take;
    *detok_p = d;
    return PD_OK;
err:
    eng_detok_destroy(d);
    return status;
}

void eng_detok_destroy(eng_detok_t *d)
{
    if (d == NULL)
        return;
    eng_tok_ids_cleanup(&d->ids);
    pd_buf_cleanup(&d->emitted);
    pd_buf_cleanup(&d->a);
    pd_buf_cleanup(&d->b);
    free(d);
}

pd_status_t eng_detok_step(eng_detok_t *d, int32_t id, pd_buf_t *delta)
{
    pd_status_t status = eng_tok_ids_push(&d->ids, id);
    if (status != PD_OK)
        return status;
    if ((status = detok_decode(d, d->prefix_off, d->read_off, &d->a)) != PD_OK ||
        (status = detok_decode(d, d->prefix_off, d->ids.n, &d->b)) != PD_OK)
        return status;
    /* Release text only when it grew and ends on a whole character (vLLM's rule). */
    if (d->b.len <= d->a.len || ends_with_fffd(&d->b))
        return PD_OK;
    /* Normally the window's text extends what was released before.  SentencePiece's
     * ByteFallback can rewrite earlier text (a stray byte turns a byte run into
     * U+FFFDs); text already sent cannot be taken back, so continue after the same
     * number of bytes, at the next character boundary. */
    size_t from = d->a.len;
    while (from < d->b.len && (d->b.data[from] & 0xC0) == 0x80)
        from++;
    if (from >= d->b.len)
        return PD_OK;
    size_t n_new = d->b.len - from;
    if ((status = pd_buf_append(delta, d->b.data + from, n_new)) != PD_OK ||
        (status = pd_buf_append(&d->emitted, d->b.data + from, n_new)) != PD_OK)
        return status;
    d->prefix_off = d->read_off;
    d->read_off = d->ids.n;
    return PD_OK;
}

pd_status_t eng_detok_finish(eng_detok_t *d, pd_buf_t *delta)
{
    pd_status_t status;
    /* expected = decode(context + generated) minus decode(context) */
    if ((status = detok_decode(d, 0, d->n_ctx, &d->a)) != PD_OK ||
        (status = detok_decode(d, 0, d->ids.n, &d->b)) != PD_OK)
        return status;
    size_t skip = 0;
    if (d->b.len >= d->a.len && (d->a.len == 0 || memcmp(d->a.data, d->b.data, d->a.len) == 0))
        skip = d->a.len;
    const char *exp = d->b.data + skip;
    size_t exp_len = d->b.len - skip;
    size_t from = d->emitted.len;
    if (exp_len < from || (from > 0 && memcmp(exp, d->emitted.data, from) != 0)) {
        /* Text already sent cannot be taken back (see eng_detok_step): send the rest
         * from the next character boundary. */
        PD_LOG_DEBUG("tokenizer: streamed text diverged from the full decode");
        while (from < exp_len && (exp[from] & 0xC0) == 0x80)
            from++;
        if (from >= exp_len)
            return PD_OK;
    }
    status = pd_buf_append(delta, exp + from, exp_len - from);
    if (status == PD_OK)
        status = pd_buf_append(&d->emitted, exp + from, exp_len - from);
    return status;
}
