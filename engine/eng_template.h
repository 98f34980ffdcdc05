/*
 * eng_template.h - Jinja2 chat templates, rendered byte for byte like Python jinja2 in
 * the environment transformers' apply_chat_template uses:
 * ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
 * extensions=[loopcontrols]) with transformers' tojson filter and its raise_exception,
 * strftime_now, namespace and dict globals.
 *
 * A template is parsed once (eng_template_compile) into an immutable tree; rendering
 * never changes it, so one compiled template may be rendered from many threads at once.
 * Every render works in its own scratch arena and is bounded: a step budget, an output
 * size limit, a scratch-memory limit and a call-depth limit turn runaway templates into
 * errors.  Errors carry the template line ("line 3: ...").
 *
 * Values are Python's as jinja2 sees them: None, bool, int (64-bit here; overflow is an
 * error), float (printed like Python's repr), str (UTF-8, indexed by code point), list,
 * dict (insertion ordered), namespace, macro; undefined follows jinja2's default
 * Undefined (prints as "", is falsy, iterates as empty, errors on attribute access).
 * JSON numbers from the context become int when they are integral and fit in 53 bits,
 * float otherwise (cJSON keeps no source text, so "1.0" arrives as int 1).  A caller that
 * needs the exact distinction can pass a number as a raw item (cJSON_CreateRaw("1.0")):
 * raw text that is a JSON number becomes a float when it has '.', 'e' or 'E', else an int.
 *
 * Supported: {{ }}, {% %}, {# #}, whitespace control, raw, if/elif/else, for (tuple
 * targets, loop filter, else, loop.* incl. previtem/nextitem/cycle/changed, break/continue),
 * set (names, tuples, ns.attr, block set with filters), macro (defaults, varargs, kwargs,
 * caller), call blocks, filter blocks, with, {% generation %}; the filters and tests of
 * jinja2 chat templates use (unknown ones fail at compile time, like jinja2); Python str,
 * dict and list methods; range, namespace, dict, raise_exception, strftime_now.  Generators
 * (map/select/reject/selectattr/rejectattr/items/unique/batch, reverse) behave like
 * jinja2's: single use, always true, no len(), errors deferred until iterated.
 * Recursive for loops (loop(children), loop.depth) are supported too.
 * Known differences: ints are 64-bit (Python's are unbounded: overflow is an error here);
 * a printed generator reads "<generator object>" (no address); case mappings come from the
 * C library's Unicode tables plus Python's one-to-many mappings (a few Unicode-version
 * differences remain possible); include/import/extends and the rarely used filters
 * (wordwrap, urlize, urlencode, striptags, xmlattr, filesizeformat, pprint, random) are
 * not implemented.
 */
#ifndef ENG_TEMPLATE_H
#define ENG_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "pd_status.h"
#include "pd_util.h"

typedef struct eng_template eng_template_t;

/* Bounds for one render.  A zero field means "use the default". */
typedef struct eng_template_limits {
    uint64_t max_steps;  /* evaluated nodes + loop iterations (default 5,000,000) */
    size_t max_output;   /* bytes of rendered text (default 16 MiB) */
    size_t max_memory;   /* bytes of scratch values (default 256 MiB) */
    int max_depth;       /* nested macro / caller calls (default 64) */
} eng_template_limits_t;

#define ENG_TEMPLATE_DEFAULT_STEPS 5000000ull
#define ENG_TEMPLATE_DEFAULT_OUTPUT (16u << 20)
#define ENG_TEMPLATE_DEFAULT_MEMORY (256u << 20)
#define ENG_TEMPLATE_DEFAULT_DEPTH 64

/*
 * Parse a template.  source: NUL-terminated UTF-8 text.  On success *tpl_p owns the
 * compiled template (free with eng_template_destroy).  Returns PD_ERR_FORMAT for syntax
 * errors, unknown filters or tests (jinja2 rejects those at compile time too), with
 * "line N: ..." written to err (errlen bytes, may be 0); PD_ERR_NOMEM; PD_ERR_INVAL for
 * NULL arguments.  *tpl_p is untouched on failure.  Thread-safe.
 */
pd_status_t eng_template_compile(const char *source, eng_template_t **tpl_p, char *err,
                                 size_t errlen);

/* Free a compiled template (NULL is fine). */
void eng_template_destroy(eng_template_t *tpl);

/*
 * Render tpl with the keys of the JSON object ctx as variables (ctx may be NULL).
 * The text is appended to out.  limits may be NULL (defaults).
 * Returns PD_OK; PD_ERR_INVAL for template runtime errors (type errors, undefined
 * attribute chains, raise_exception(msg) whose message is copied to err verbatim);
 * PD_ERR_LIMIT when a bound is hit; PD_ERR_NOMEM.  On failure out is restored to the
 * length it had on entry and err says why ("line N: ...").  Thread-safe for a shared tpl.
 */
pd_status_t eng_template_render(const eng_template_t *tpl, const cJSON *ctx,
                                const eng_template_limits_t *limits, pd_buf_t *out,
                                char *err, size_t errlen);

/*
 * What apply_chat_template(tokenize=False) does: render tpl with messages, tools,
 * documents (each may be NULL: None in the template), add_generation_prompt, bos_token
 * and eos_token (NULL: undefined) and the keys of chat_template_kwargs (an object or
 * NULL; they override bos_token/eos_token but never messages/tools/documents/
 * add_generation_prompt).  Messages carrying reasoning under "reasoning_content",
 * "thinking" or "reasoning" get it under "thinking" and "reasoning_content" too, as
 * transformers does.
 *
 * continue_final_message: the last message must be an assistant message with string
 * content (or content parts with a "text" part); the text is tagged, the chat rendered
 * and cut just before the tag, so the output ends inside that message ready to be
 * continued.  add_generation_prompt together with continue_final_message is an error
 * (vLLM's rule).  Appends to out; same statuses as eng_template_render, PD_ERR_INVAL for
 * the argument errors above.  Default limits.
 */
pd_status_t eng_chat_apply(const eng_template_t *tpl, const cJSON *messages,
                           const cJSON *tools, const cJSON *documents,
                           bool add_generation_prompt, bool continue_final_message,
                           const cJSON *chat_template_kwargs, const char *bos_token,
                           const char *eos_token, pd_buf_t *out, char *err, size_t errlen);

/* eng_chat_apply with explicit limits (NULL: defaults). */
pd_status_t eng_chat_apply_ex(const eng_template_t *tpl, const cJSON *messages,
                              const cJSON *tools, const cJSON *documents,
                              bool add_generation_prompt, bool continue_final_message,
                              const cJSON *chat_template_kwargs, const char *bos_token,
                              const char *eos_token, const eng_template_limits_t *limits,
                              pd_buf_t *out, char *err, size_t errlen);

#endif /* ENG_TEMPLATE_H */
