/*
 * pd_cli.h - one command-line parser for every pdserve binary.
 *
 * A binary describes its options in a static table of pd_opt_t (usually generated
 * from an X-macro list together with the struct that receives the values, see
 * pd_serve_args.h) and calls pd_cli_parse().  The parser understands what vLLM's
 * argparse-based command line accepts:
 *   --flag value, --flag=value, short aliases (-tp 2, -O3, -O 3), --no-<flag> for
 *   negatable booleans, booleans with an optional value (--enable-chunked-prefill false),
 *   repeatable options (--middleware a --middleware b), nargs='+' lists
 *   (--served-model-name a b), JSON-valued options validated at parse time, the dotted
 *   form (--kv-transfer-config.kv_role kv_both), one positional model argument, and
 *   --config FILE (YAML or JSON; the command line wins).
 * Errors are one line naming the option, the bad value and what is accepted.
 *
 * Every option carries a status (works / works differently / accepted without effect /
 * not supported yet) with a note; pd_cli_check_unsupported() refuses a non-default
 * value for a "not supported yet" option, so nothing is silently ignored, and
 * pd_cli_print_markdown() generates docs/options.md from the same table.
 */
#ifndef PD_CLI_H
#define PD_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "pd_status.h"

typedef enum {
    PD_OPT_BOOL,   /* bool      */
    PD_OPT_INT,    /* int64_t   (choices, when given, are the only accepted numbers) */
    PD_OPT_FLOAT,  /* double    */
    PD_OPT_STR,    /* char *    */
    PD_OPT_CHOICE, /* char *    one of the comma-separated choices */
    PD_OPT_JSON,   /* cJSON *   */
    PD_OPT_LIST,   /* pd_strlist_t, repeatable and/or nargs='+' */
} pd_opt_kind_t;

typedef enum {
    PD_OPT_WORKS,     /* works as in vLLM */
    PD_OPT_DIFFERS,   /* works, with a documented difference */
    PD_OPT_NOOP,      /* accepted and has no effect, by design (the note says why) */
    PD_OPT_NOT_YET,   /* the feature does not exist yet: a non-default value is refused */
} pd_opt_status_t;

/* option flags */
#define PD_OPTF_NEGATABLE   0x01 /* --no-<name> sets false */
#define PD_OPTF_OPTVAL      0x02 /* boolean that may take true/false as the next word */
#define PD_OPTF_NARGS_PLUS  0x04 /* list: consumes following words up to the next option */
#define PD_OPTF_JSON_OBJECT 0x08 /* JSON must be an object */
#define PD_OPTF_JSON_STRARR 0x10 /* JSON must be an array of strings */
#define PD_OPTF_INT_OR_JSON 0x20 /* -O: a bare number n means {"level": n} */
#define PD_OPTF_HIDDEN      0x40 /* not in --help (still in docs) */
#define PD_OPTF_SECRET      0x80 /* value never printed (api keys) */

typedef struct pd_strlist {
    char **v;
    size_t n;
} pd_strlist_t;

/* The C type of each kind, for X-macro option tables that generate their args struct
 * (PD_OPT_T_##kind). */
#define PD_OPT_T_BOOL bool
#define PD_OPT_T_INT int64_t
#define PD_OPT_T_FLOAT double
#define PD_OPT_T_STR char *
#define PD_OPT_T_CHOICE char *
#define PD_OPT_T_JSON cJSON *
#define PD_OPT_T_LIST pd_strlist_t

typedef struct pd_opt {
    const char *group;     /* help group title */
    const char *name;      /* "--max-num-seqs" */
    const char *alias;     /* "-tp", or NULL */
    pd_opt_kind_t kind;
    const char *def;       /* default as text; NULL = None (unset) */
    const char *choices;   /* "auto,half,float16" or NULL */
    pd_opt_status_t status;
    const char *note;      /* why it differs / what is missing; may be NULL */
    const char *help;
    size_t offset;         /* where the value lives in the args struct */
    unsigned flags;
} pd_opt_t;

typedef struct pd_cli_spec {
    const char *prog;          /* "pdserve-decode" */
    const char *summary;       /* one line for --help */
    const pd_opt_t *opts;
    size_t n_opts;
    size_t args_size;          /* sizeof the args struct */
    size_t set_offset;         /* offset of a bool[n_opts] "was set" array in the args struct */
    const char *positional;    /* option name a single positional word sets ("--model"), or NULL */
} pd_cli_spec_t;

typedef enum {
    PD_CLI_RUN = 0,   /* parsed; run the program */
    PD_CLI_EXIT_OK,   /* --help / --version printed; exit 0 */
} pd_cli_action_t;

/*
 * Fill *args with defaults, apply --config FILE (if given), then argv.
 * On error prints one line "<prog>: error: ..." to stderr, writes the same line (without
 * the prefix) into err, and returns PD_ERR_INVAL; *args then holds partial values and
 * must still be released with pd_cli_free().  --help and --version print to stdout and
 * give *action_p = PD_CLI_EXIT_OK.  version may be NULL.
 */
pd_status_t pd_cli_parse(const pd_cli_spec_t *spec, int argc, char **argv, void *args,
                         const char *version, pd_cli_action_t *action_p, char *err, size_t errlen);

/* Fill *args with the defaults of every option. */
pd_status_t pd_cli_defaults(const pd_cli_spec_t *spec, void *args, char *err, size_t errlen);

/* Release strings, lists and JSON values held by *args. */
void pd_cli_free(const pd_cli_spec_t *spec, void *args);

/* Was this option given (on the command line or in --config)? name: "--max-num-seqs". */
bool pd_cli_is_set(const pd_cli_spec_t *spec, const void *args, const char *name);

/* Refuse every PD_OPT_NOT_YET option whose value differs from its default:
 * "--enable-lora: not supported yet (LoRA adapters)".  PD_OK when none. */
pd_status_t pd_cli_check_unsupported(const pd_cli_spec_t *spec, const void *args, char *err,
                                     size_t errlen);

/* Log one warning for each PD_OPT_NOOP option whose value differs from its default:
 * "--trust-remote-code: accepted, no effect (why)", so that nothing the user asked for is
 * dropped without a word.  Call after the log level is set.  Returns how many it logged. */
size_t pd_cli_warn_noop(const pd_cli_spec_t *spec, const void *args);

/* Grouped --help text. */
void pd_cli_print_help(const pd_cli_spec_t *spec, FILE *out);

/* docs/options.md body: every option with meaning, default and status. */
void pd_cli_print_markdown(const pd_cli_spec_t *spec, FILE *out);

/* Find an option by long name or alias; NULL when unknown. */
const pd_opt_t *pd_cli_find(const pd_cli_spec_t *spec, const char *name);

/* Typed access by name for code that does not include the args struct (tests, tools). */
pd_status_t pd_cli_value_text(const pd_cli_spec_t *spec, const void *args, const char *name,
                              char *buf, size_t buflen);

#endif /* PD_CLI_H */
