/*
 * eng_reasoning.h - reasoning content out of a model's text (--enable-reasoning with
 * --reasoning-parser), as vLLM's parser of the same name:
 *   deepseek_r1  everything before the first </think> is the reasoning (a leading
 *                <think>, which DeepSeek-R1 puts in its prompt rather than its output,
 *                is dropped when the model writes it), the rest is the content; without
 *                </think> the whole output is reasoning (the model was still thinking).
 * Chat completions only: the response's message.reasoning_content and, streamed,
 * delta.reasoning_content.
 */
#ifndef ENG_REASONING_H
#define ENG_REASONING_H

#include <stdbool.h>
#include <stddef.h>

#include "pd_status.h"
#include "pd_util.h"

typedef enum {
    ENG_REASONING_NONE = 0,
    ENG_REASONING_DEEPSEEK_R1,
} eng_reasoning_parser_t;

/* --reasoning-parser NAME: PD_OK, or PD_ERR_INVAL for an unknown name. */
pd_status_t eng_reasoning_parser_lookup(const char *name, eng_reasoning_parser_t *parser_p);

/* A whole output: *reasoning_p and *content_p are malloc'd copies of the two parts, NULL
 * when a part is empty.  PD_ERR_NOMEM leaves both NULL. */
pd_status_t eng_reasoning_split(eng_reasoning_parser_t parser, const char *text, size_t len, char **reasoning_p,
                                char **content_p);

/* Streaming: the text deltas in order; text that may still be part of a marker is held
 * back until the next delta (or the end: final). */
typedef struct eng_reasoning_stream {
    eng_reasoning_parser_t parser;
    pd_buf_t held;
    int state;       /* 0: nothing yet, 1: reasoning, 2: content */
} eng_reasoning_stream_t;

void eng_reasoning_stream_init(eng_reasoning_stream_t *s, eng_reasoning_parser_t parser);
void eng_reasoning_stream_cleanup(eng_reasoning_stream_t *s);

/* Append this delta's reasoning part to reasoning and its content part to content. */
pd_status_t eng_reasoning_stream_feed(eng_reasoning_stream_t *s, const char *text, size_t len, bool final,
                                      pd_buf_t *reasoning, pd_buf_t *content);

#endif /* ENG_REASONING_H */
