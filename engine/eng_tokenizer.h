/*
 * eng_tokenizer.h - tokenizers that give exactly the token ids of Hugging Face
 * `tokenizers` for the model families pdserve serves.
 *
 * Supported (anything else is refused with PD_ERR_UNSUPPORTED and a log line naming it):
 *   - byte-level BPE (GPT-2 style) with the pre-tokenizers of GPT-2/SmolLM2
 *     (ByteLevel use_regex, optionally after Digits), Llama 3 and Qwen2/Qwen3 (Split
 *     regex + ByteLevel), optional NFC normaliser, ignore_merges;
 *   - SentencePiece-style BPE with byte fallback (Llama 2, Mistral): normaliser
 *     Prepend("▁") + Replace(" ", "▁"), decoder Replace/ByteFallback/Fuse/Strip;
 *   - added tokens (matched on the raw text before the model, leftmost-longest;
 *     lstrip/rstrip/single_word honoured), post-processors TemplateProcessing,
 *     ByteLevel, Bert/Roberta, Sequence of those.
 *
 * Thread-safety: a tokenizer is immutable after creation; any number of threads may
 * call the encode/decode/lookup functions at once.  An eng_detok_t belongs to one
 * thread at a time.
 */
#ifndef ENG_TOKENIZER_H
#define ENG_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pd_status.h"
#include "pd_util.h"

typedef struct eng_tok eng_tok_t;

/* ---- construction ---- */

/*
 * Load a tokenizer from a Hugging Face tokenizer.json.  config_path (may be NULL)
 * names a tokenizer_config.json: it supplies the bos/eos/pad token strings and, for
 * Llama-class tokenizers, add_bos_token/add_eos_token (as transformers does).
 * Returns PD_ERR_NOT_FOUND/PD_ERR_IO (missing/unreadable file), PD_ERR_FORMAT (malformed JSON or fields),
 * PD_ERR_UNSUPPORTED (a model, normaliser, pre-tokenizer, regex or decoder we do not
 * implement), PD_ERR_NOMEM.  *tok_p is set only on success.
 */
pd_status_t eng_tok_create_from_files(const char *tokenizer_json_path, const char *config_path,
                                      eng_tok_t **tok_p);

/* The same from JSON text in memory (json[0..len)); config_json may be NULL. */
pd_status_t eng_tok_create_from_json(const char *json, size_t len, const char *config_json,
                                     eng_tok_t **tok_p);

/*
 * Load a GPT-2 style tokenizer from the "slow" files vocab.json + merges.txt (OPT,
 * GPT-2 checkpoints without tokenizer.json), as transformers converts them: byte-level
 * BPE, GPT-2 pre-tokenizer (add_prefix_space from the config), BOS prepended when the
 * config says add_bos_token (OPT), bos/eos/unk/pad and added_tokens_decoder entries as
 * added tokens.  config_path may be NULL.  Statuses as eng_tok_create_from_files.
 */
pd_status_t eng_tok_create_from_bpe_files(const char *vocab_path, const char *merges_path,
                                          const char *config_path, eng_tok_t **tok_p);

/* Token types as GGUF numbers them (tokenizer.ggml.token_type). */
typedef enum {
    ENG_TOK_TYPE_UNDEFINED = 0,
    ENG_TOK_TYPE_NORMAL = 1,
    ENG_TOK_TYPE_UNKNOWN = 2,
    ENG_TOK_TYPE_CONTROL = 3,      /* special token: matched in text, skipped by skip_special */
    ENG_TOK_TYPE_USER_DEFINED = 4, /* added token: matched in text, never skipped */
    ENG_TOK_TYPE_UNUSED = 5,
    ENG_TOK_TYPE_BYTE = 6,         /* "<0xXX>" byte-fallback token */
} eng_tok_type_t;

/*
 * A vocabulary as GGUF describes it.  All pointers are borrowed for the duration of
 * eng_tok_create_from_vocab only.  GGUF keys -> fields:
 *   tokenizer.ggml.model -> model, .pre -> pre, .tokens -> tokens (+ token_lens: GGUF
 *   strings are not NUL-terminated), .scores -> scores, .token_type -> token_types,
 *   .merges -> merges, .bos_token_id / .eos_token_id / .unknown_token_id /
 *   .padding_token_id -> *_id, .add_bos_token / .add_eos_token -> add_bos / add_eos,
 *   .add_space_prefix -> add_space_prefix.
 * Tokens of type CONTROL and UNKNOWN become special added tokens, USER_DEFINED plain
 * added tokens (matched in text before BPE, as transformers' GGUF converter does).
 * "qwen2" turns on NFC and "llama-bpe" ignore_merges, as the models' tokenizer.json do.
 */
typedef struct eng_tok_vocab {
    const char *model;      /* "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE) */
    const char *pre;        /* gpt2 only: "default"/"gpt2"/"gpt-2", "smollm" (also
                               "starcoder", "refact"), "llama-bpe"/"llama3", "qwen2";
                               NULL = "default" */
    size_t n_tokens;
    const char *const *tokens;   /* [n_tokens] vocabulary-form strings */
    const size_t *token_lens;    /* [n_tokens] or NULL (NUL-terminated strings) */
    const float *scores;         /* [n_tokens] or NULL; llama without merges needs them */
    const int32_t *token_types;  /* [n_tokens] eng_tok_type_t values, or NULL (all normal) */
    size_t n_merges;
    const char *const *merges;   /* [n_merges] "left right"; llama: may be 0 (derived
                                    from scores as SentencePiece BPE ranks them) */
    int32_t bos_id, eos_id, unk_id, pad_id; /* -1 when absent */
    int add_bos;                 /* 1/0; -1 = model default (llama 1, gpt2 0) */
    int add_eos;                 /* 1/0; -1 = 0 */
    int add_space_prefix;        /* llama: prepend "▁"; -1 = default (1) */
} eng_tok_vocab_t;

/* Initialise a vocabulary description with every id -1 and every flag "default". */
void eng_tok_vocab_init(eng_tok_vocab_t *vocab);

/*
 * Build a tokenizer from a vocabulary description (the GGUF path).  Statuses as for
 * eng_tok_create_from_json; PD_ERR_INVAL for inconsistent input (merge of unknown
 * tokens, ids out of range).
 */
pd_status_t eng_tok_create_from_vocab(const eng_tok_vocab_t *vocab, eng_tok_t **tok_p);

void eng_tok_destroy(eng_tok_t *tok);

/* ---- encoding ---- */

/* A growable array of token ids.  Zero-initialised storage is a valid empty array. */
typedef struct eng_tok_ids {
    int32_t *ids;
    size_t n;
    size_t cap;
} eng_tok_ids_t;

void eng_tok_ids_init(eng_tok_ids_t *ids);
void eng_tok_ids_cleanup(eng_tok_ids_t *ids);
pd_status_t eng_tok_ids_push(eng_tok_ids_t *ids, int32_t id);

/*
 * Encode text[0..len) (UTF-8) and APPEND the ids to out.  add_special_tokens applies
 * the post-processor (e.g. BOS) as `tokenizer.encode(text, add_special_tokens=...)`.
 * Malformed UTF-8 is accepted: each bad byte is a character of its own class
 * ("punctuation") and reaches the model as that raw byte.
 * Returns PD_ERR_NOMEM/PD_ERR_OVERFLOW; on failure out may hold a partial result.
 */
pd_status_t eng_tok_encode(const eng_tok_t *tok, const char *text, size_t len,
                           bool add_special_tokens, eng_tok_ids_t *out);

/* ---- decoding ---- */

/*
 * Decode ids and APPEND the UTF-8 text to out, as `tokenizer.decode(ids,
 * skip_special_tokens=...)` does (invalid byte sequences become U+FFFD).  Ids out of
 * range are ignored.  spaces_between_special_tokens=true reproduces transformers'
 * slow-tokenizer joining (a space between added tokens and the text around them);
 * vLLM ignores the flag for fast tokenizers, so pass false to match vLLM output.
 */
pd_status_t eng_tok_decode(const eng_tok_t *tok, const int32_t *ids, size_t n, bool skip_special,
                           bool spaces_between_special, pd_buf_t *out);

/* ---- vocabulary ---- */

size_t eng_tok_vocab_size(const eng_tok_t *tok);     /* highest id + 1, added tokens included */
int32_t eng_tok_bos_id(const eng_tok_t *tok);         /* -1 when none */
int32_t eng_tok_eos_id(const eng_tok_t *tok);
int32_t eng_tok_pad_id(const eng_tok_t *tok);
int32_t eng_tok_unk_id(const eng_tok_t *tok);
/* Whether encode(add_special_tokens=true) puts BOS first / EOS last (chat templates
 * that write BOS themselves are encoded without special tokens to avoid a double BOS). */
bool eng_tok_adds_bos(const eng_tok_t *tok);
bool eng_tok_adds_eos(const eng_tok_t *tok);
bool eng_tok_is_special(const eng_tok_t *tok, int32_t id);  /* skipped by skip_special */
bool eng_tok_is_added(const eng_tok_t *tok, int32_t id);    /* an added token (special or not) */

/*
 * The token's string in vocabulary form ("Ġhello", "▁hello", "<0x0A>", "<|im_end|>"),
 * as convert_ids_to_tokens gives it; NUL-terminated, borrowed.  NULL when out of range.
 */
const char *eng_tok_token_to_piece(const eng_tok_t *tok, int32_t id, size_t *len_p);

/*
 * The raw bytes this token contributes to decoded text ("Ġhello" -> " hello",
 * "<0x0A>" -> "\n"), possibly a partial UTF-8 sequence; borrowed.  For logprobs'
 * "bytes".  NULL when out of range.
 */
const uint8_t *eng_tok_token_bytes(const eng_tok_t *tok, int32_t id, size_t *len_p);

/* Id of a vocabulary-form string (added tokens included); -1 when unknown. */
int32_t eng_tok_piece_to_id(const eng_tok_t *tok, const char *piece, size_t len);

/* ---- incremental detokenization (streaming) ---- */

typedef struct eng_detok eng_detok_t;

/*
 * Start a stream.  prompt_ids (may be NULL/0) give context so the first generated
 * token decodes as it would after the prompt (a leading "▁" stays a space); only the
 * last few prompt ids are kept.  Follows vLLM's prefix/read offsets: text is released
 * only when it no longer ends in an incomplete character.
 */
pd_status_t eng_detok_create(const eng_tok_t *tok, const int32_t *prompt_ids, size_t n_prompt,
                             bool skip_special, bool spaces_between_special, eng_detok_t **detok_p);
void eng_detok_destroy(eng_detok_t *detok);

/*
 * Feed one generated id; APPEND the new text (possibly empty) to delta.  The delta is
 * always whole UTF-8 characters.
 */
pd_status_t eng_detok_step(eng_detok_t *detok, int32_t id, pd_buf_t *delta);

/*
 * End of the stream: APPEND whatever text is still held back (an incomplete character
 * shows as U+FFFD), so that all deltas together equal eng_tok_decode of all generated ids.
 */
pd_status_t eng_detok_finish(eng_detok_t *detok, pd_buf_t *delta);

#endif /* ENG_TOKENIZER_H */
