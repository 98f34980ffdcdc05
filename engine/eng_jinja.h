/*
 * eng_jinja.h - internals of the Jinja2 engine shared by the parser (eng_jinja_parse.c)
 * and the renderer (eng_template.c).  Not a public header.
 *
 * The parser turns normalised template text into a tree of jnode_t allocated in the
 * template's arena; names are interned to small integers (symbols) so the renderer
 * resolves variables by integer compare.  The tree is immutable after compile.
 */
#ifndef ENG_JINJA_H
#define ENG_JINJA_H

#include <stddef.h>
#include <stdint.h>

#include "pd_util.h"

/* ---- values ---- */
typedef enum {
    JV_UNDEF = 0, /* s: name hint or NULL, n: hint kind (see undef_msg) */
    JV_NONE,
    JV_BOOL,  /* i */
    JV_INT,   /* i */
    JV_FLOAT, /* f */
    JV_STR,   /* s, n bytes (UTF-8, not NUL-terminated) */
    JV_LIST,  /* p -> jlist_t; aux JV_AUX_TUPLE for tuples */
    JV_DICT,  /* p -> jdict_t */
    JV_NS,    /* p -> jdict_t (mutable) */
    JV_MACRO, /* p -> jmacro_t */
    JV_FUNC,  /* aux: builtin id; p -> jbound_t for methods (or NULL) */
    JV_LOOP,  /* p -> jloop_t */
} jv_type_t;

#define JV_AUX_TUPLE 1u
/* lists made by dict.keys()/values()/items(): they print as dict_keys([...]) etc. */
#define JV_AUX_KEYS 2u
#define JV_AUX_VALUES 4u
#define JV_AUX_ITEMS 6u
#define JV_AUX_VIEW_MASK 6u
/* a generator (what jinja2's map/select/reject/selectattr/rejectattr/items/unique/batch
 * filters and reverse on lists return): iterating consumes it, it is always true, it has
 * no len() and subscripting it gives undefined */
#define JV_AUX_GEN 8u
/* strings: markupsafe.Markup (from safe/escape): repr is Markup('...'), "+" escapes the
 * other operand */
#define JV_AUX_MARKUP 16u
/* tuples made by groupby: (grouper, list) with those two attributes */
#define JV_AUX_GROUP 32u

typedef struct jv {
    uint32_t t;
    uint32_t aux;
    union {
        int64_t i;
        double f;
        const char *s;
        void *p;
    };
    size_t n;
} jv_t;

typedef struct jlist {
    size_t n;
    jv_t *items;
    size_t pos;      /* generators: items before pos were consumed */
    const char *err; /* generators: the error to raise when first iterated */
} jlist_t;

typedef struct jdict {
    size_t n, cap;
    jv_t *keys;
    jv_t *vals;
} jdict_t;

/* ---- tokens and nodes ---- */
typedef enum {
    /* expressions */
    N_CONST = 1, /* val */
    N_NAME,      /* sym */
    N_GETATTR,   /* a . str */
    N_GETITEM,   /* a [ b ] */
    N_SLICE,     /* a [ b : c : d ] (each may be NULL) */
    N_CALL,      /* a ( kids; kw names + kw values ) */
    N_FILTER,    /* op = filter id; a operand (NULL in filter blocks); kids args; kw */
    N_TEST,      /* op = test id; a operand; kids args; flag negate */
    N_BINOP,     /* op: one of the OP_* below; a, b */
    N_NEG,
    N_POS,
    N_NOT,
    N_AND,
    N_OR,
    N_COMPARE, /* a first; kids operands; ops[] */
    N_CONCAT,  /* kids */
    N_COND,    /* a = test, b = then, c = else (NULL: undefined) */
    N_LIST,
    N_TUPLE,
    N_DICT, /* kids = keys, kids2 = values */
    /* statements */
    N_BODY,     /* kids */
    N_TEXT,     /* str */
    N_PRINT,    /* a */
    N_IF,       /* a cond, b body, c else (body or N_IF) */
    N_FOR,      /* a target, b iter, c body, d else, e filter */
    N_SET,      /* a target, b value */
    N_SETBLOCK, /* a target, b body, c filter chain (N_FILTER with a=NULL chain) */
    N_MACRO,    /* sym name, names params, kids2 defaults (NULL entries), b body */
    N_CALLBLOCK,/* a call expr, names params, kids2 defaults, b body */
    N_FILTERBLOCK, /* c filter chain, b body */
    N_WITH,     /* names targets(sym in syms), kids2 values, b body */
    N_BREAK,
    N_CONTINUE,
    N_NSATTR,   /* assignment target ns.attr: sym of ns, str attr */
} jnode_kind_t;

enum {
    OP_ADD = 1, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW,
    OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN,
};

typedef struct jnode jnode_t;
struct jnode {
    uint16_t kind;
    uint16_t op;
    int line;
    int flag;
    int sym;
    jnode_t *a, *b, *c, *d, *e;
    jnode_t **kids;
    int n_kids;
    jnode_t **kids2; /* kwarg values / defaults / dict values */
    int n_kids2;
    const char **names; /* kwarg names / macro params (n_kids2 of them) */
    int *syms;          /* symbols of names (macro params, with targets) */
    int *ops;           /* compare ops */
    const char *str;
    size_t slen;
    jv_t val;
};

/* Builtin global names are interned first, in this order, so symbol == builtin id. */
#define JINJA_GLOBALS(X)          \
    X(G_RANGE, "range")           \
    X(G_NAMESPACE, "namespace")   \
    X(G_DICT, "dict")             \
    X(G_RAISE, "raise_exception") \
    X(G_STRFTIME, "strftime_now") \
    X(G_LOOP, "loop")             \
    X(G_VARARGS, "varargs")       \
    X(G_KWARGS, "kwargs")         \
    X(G_CALLER, "caller")         \
    X(G_JOINER, "joiner")         \
    X(G_CYCLER, "cycler")

enum {
#define JG_ENUM(id, name) id,
    JINJA_GLOBALS(JG_ENUM)
#undef JG_ENUM
    G_COUNT
};

typedef struct jsymtab {
    int n, cap;
    const char **names;
    size_t *lens;
    int *hash; /* open addressing, -1 empty, size hcap */
    int hcap;
} jsymtab_t;

typedef struct jtemplate {
    pd_arena_t *arena;
    jnode_t *root;
    jsymtab_t syms;
} jtemplate_t;

/* Parse normalised source.  Returns PD_OK or an error with "line N: ..." in err. */
pd_status_t jinja_parse(jtemplate_t *t, const char *src, size_t len, char *err, size_t errlen);

/* Symbol of a name, -1 if the template never mentions it. */
int jinja_sym_find(const jsymtab_t *st, const char *name, size_t len);

/* Filter and test ids by name (-1 when unknown). */
int jinja_filter_id(const char *name, size_t len);
int jinja_test_id(const char *name, size_t len);

#endif /* ENG_JINJA_H */
