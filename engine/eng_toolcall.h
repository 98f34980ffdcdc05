/*
 * eng_toolcall.h - tool calls out of a model's text (--enable-auto-tool-choice with
 * --tool-call-parser), the C form of vLLM's tool parsers for the three formats most
 * models use:
 *   hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call>, one block per
 *                call (Hermes, Qwen2.5, Qwen3); the text before the first block is the
 *                content.
 *   llama3_json  the whole output is one JSON object {"name": ..., "parameters"|
 *                "arguments": {...}} or several separated by ';', optionally after
 *                <|python_tag|> (Llama 3.1 / 3.2); no content.
 *   mistral      [TOOL_CALLS] then a JSON array of {"name": ..., "arguments": {...}}
 *                (Mistral 7B v0.3 and later); the text before the marker is the content.
 *                The marker is a special token: requests keep special tokens in their
 *                text (skip_special_tokens false), as vLLM's parser does.
 * Output that does not parse as its format is content, never an error (vLLM's rule).
 * A call becomes an OpenAI tool call: {"id", "type": "function", "function": {"name",
 * "arguments": JSON text}}; ids are "chatcmpl-tool-" + 32 hex digits (mistral: 9
 * letters and digits, which its template demands).
 */
#ifndef ENG_TOOLCALL_H
#define ENG_TOOLCALL_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "pd_status.h"
#include "pd_util.h"

typedef enum {
    ENG_TOOL_PARSER_NONE = 0,
    ENG_TOOL_PARSER_HERMES,
    ENG_TOOL_PARSER_LLAMA3_JSON,
    ENG_TOOL_PARSER_MISTRAL,
} eng_tool_parser_t;

/* The parser of --tool-call-parser NAME: PD_OK; PD_ERR_UNSUPPORTED for another of
 * vLLM's parser names (not implemented here), PD_ERR_INVAL for an unknown name. */
pd_status_t eng_tool_parser_lookup(const char *name, eng_tool_parser_t *parser_p);

/* "hermes, llama3_json, mistral" (for messages and --help) */
const char *eng_tool_parser_names(void);

/* A whole output.  Returns true when it holds tool calls: *calls_p is a new array of
 * OpenAI tool calls and *content_p the content beside them (malloc'd; NULL when empty
 * or only whitespace).  false: no call (the text is all content); nothing is set.
 * (Out of memory counts as no call.) */
bool eng_tool_parse(eng_tool_parser_t parser, const char *text, size_t len, char **content_p, cJSON **calls_p);

/* Streaming: text deltas in, content to send and complete calls out.  Content that may
 * still turn out to start a call (a partial marker at the end of the text, a llama3_json
 * output that starts with '{') is held back until it is decided. */
typedef struct eng_tool_stream {
    eng_tool_parser_t parser;
    pd_buf_t held;   /* text not decided yet */
    int state;       /* parser-specific */
    int n_calls;     /* calls handed out so far */
} eng_tool_stream_t;

void eng_tool_stream_init(eng_tool_stream_t *s, eng_tool_parser_t parser);
void eng_tool_stream_cleanup(eng_tool_stream_t *s);

/* Feed the next delta (final: the output ended, everything held is decided now).
 * Appends the content to send now to content, and each call completed by this delta to
 * *calls_p (an array created on the first call; every element also has "index": its
 * number in this output, as the streamed tool_calls deltas carry). */
pd_status_t eng_tool_stream_feed(eng_tool_stream_t *s, const char *text, size_t len, bool final,
                                 pd_buf_t *content, cJSON **calls_p);

#endif /* ENG_TOOLCALL_H */
