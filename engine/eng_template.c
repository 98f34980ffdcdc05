/*
 * eng_template.c - the Jinja2 renderer behind eng_template.h: values, Python-compatible
 * printing (str/repr of floats, lists, dicts), transformers' tojson, operators, scopes,
 * filters, tests, string/dict/list methods, macros, loops, and apply_chat_template.
 *
 * Invariants:
 * - The compiled tree is never written during render; every value lives in the render's
 *   arena (freed at once at the end), so no reference counting is needed.  Lists and
 *   dicts are immutable once built (the immutable sandbox forbids append/update);
 *   only namespaces change, through "set ns.attr".
 * - Errors unwind with longjmp to eng_template_render, which restores the output buffer
 *   and frees the arena; nothing malloc'd outside the arena or the output buffer is live
 *   across a call that can fail, except R->tmp which the render frees on both paths.
 * - Scoping follows jinja2: a for-loop iteration, a macro call, a with-block and a call
 *   block each get a fresh scope whose lookups fall through to the enclosing one; if
 *   blocks do not create scopes.
 */
#define _GNU_SOURCE /* memmem */
#include "eng_template.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wctype.h>

#include "eng_jinja.h"
#include "pd_log.h"

#define MAX_EVAL_DEPTH 1000 /* eval/exec frames: bounds the C stack a render can use */
#define MAX_VALUE_DEPTH 512
#define MAX_RANGE 100000

struct eng_template {
    jtemplate_t t;
    char *source; /* normalised source; text nodes point into it */
};

// ---- render state ----
typedef struct scope {
    struct scope *parent;
    int n, cap;
    int *syms;
    jv_t *vals;
} scope_t;

typedef struct jmacro {
    const jnode_t *def; /* N_MACRO or N_CALLBLOCK */
    scope_t *closure;
    jv_t caller;
} jmacro_t;

typedef struct jloop {
    jv_t *items;
    size_t n;
    size_t idx;
    jv_t last_changed;
    int changed_init;
    int depth;                /* 1 for the outermost level of a recursive loop */
    const struct jnode *node; /* the for node (recursive loops call it again) */
    struct scope *outer;      /* the scope the loop runs in */
} jloop_t;

typedef struct jbound {
    jv_t self;
    int method;
} jbound_t;

typedef struct rstate {
    const struct eng_template *tpl;
    pd_arena_t *arena;
    size_t mem_limit;
    pd_buf_t *out;
    size_t out_base;
    size_t out_limit;
    uint64_t steps, max_steps;
    int call_depth, max_call_depth;
    int eval_depth;
    pd_buf_t tmp;
    pd_buf_t scratch[8]; /* nested formatting buffers, freed at the end of the render */
    int n_scratch;
    jmp_buf jb;
    pd_status_t status;
    char *err;
    size_t errlen;
    char ebuf[256]; /* used when the caller passes no error buffer */
    int line;
} rstate_t;

static void rfail(rstate_t *R, pd_status_t st, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5), noreturn));
static void rfail(rstate_t *R, pd_status_t st, int line, const char *fmt, ...)
{
    va_list ap;
    if (R->errlen) {
        int k = 0;
        if (line > 0)
            k = snprintf(R->err, R->errlen, "line %d: ", line);
        if (k >= 0 && (size_t)k < R->errlen) {
            va_start(ap, fmt);
            vsnprintf(R->err + k, R->errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    R->status = st;
    longjmp(R->jb, 1);
}

#define RERR(R, ...) rfail((R), PD_ERR_INVAL, (R)->line, __VA_ARGS__)

static void *ralloc(rstate_t *R, size_t size)
{
    void *p = pd_arena_alloc(R->arena, size ? size : 1);
    if (p == NULL)
        rfail(R, PD_ERR_NOMEM, R->line, "out of memory");
    if (pd_arena_used(R->arena) > R->mem_limit)
        rfail(R, PD_ERR_LIMIT, R->line, "template used more than %zu bytes of memory", R->mem_limit);
    return p;
}

static pd_buf_t *scratch_push(rstate_t *R)
{
    if (R->n_scratch >= (int)PD_ARRAY_SIZE(R->scratch))
        rfail(R, PD_ERR_LIMIT, R->line, "formatting nested too deeply");
    pd_buf_t *b = &R->scratch[R->n_scratch++];
    pd_buf_reset(b);
    return b;
}

static jv_t scratch_pop(rstate_t *R)
{
    pd_buf_t *b = &R->scratch[--R->n_scratch];
    char *p = ralloc(R, b->len + 1);
    if (b->len)
        memcpy(p, b->data, b->len);
    p[b->len] = '\0';
    jv_t v = {.t = JV_STR};
    v.s = p;
    v.n = b->len;
    return v;
}

static void step(rstate_t *R)
{
    if (++R->steps > R->max_steps)
        rfail(R, PD_ERR_LIMIT, R->line, "template exceeded %llu steps", (unsigned long long)R->max_steps);
}

// ---- value constructors ----
static const jv_t V_UNDEFINED = {.t = JV_UNDEF};
static const jv_t V_NONE_ = {.t = JV_NONE};

static jv_t v_bool(int b) { jv_t v = {.t = JV_BOOL}; v.i = b != 0; return v; }
static jv_t v_int(int64_t i) { jv_t v = {.t = JV_INT}; v.i = i; return v; }
static jv_t v_float(double f) { jv_t v = {.t = JV_FLOAT}; v.f = f; return v; }
static jv_t v_str(const char *s, size_t n) { jv_t v = {.t = JV_STR}; v.s = s; v.n = n; return v; }
static jv_t v_cstr(const char *s) { return v_str(s, strlen(s)); }
static jv_t v_undef_name(const char *name) { jv_t v = {.t = JV_UNDEF}; v.s = name; v.aux = 0; return v; }
/* undefined attribute of an object of type objt */
static jv_t v_undef_attr(const char *name, uint32_t objt)
{
    jv_t v = {.t = JV_UNDEF};
    v.s = name;
    v.aux = 1 + objt;
    return v;
}

static jv_t v_strdup(rstate_t *R, const char *s, size_t n)
{
    char *p = ralloc(R, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return v_str(p, n);
}

static jv_t v_list(rstate_t *R, size_t n)
{
    jlist_t *l = ralloc(R, sizeof(*l));
    size_t bytes;
    if (pd_mul_size(n, sizeof(jv_t), &bytes) != PD_OK)
        rfail(R, PD_ERR_LIMIT, R->line, "list too large");
    l->n = n;
    l->pos = 0;
    l->err = NULL;
    l->items = n ? ralloc(R, bytes) : NULL;
    jv_t v = {.t = JV_LIST};
    v.p = l;
    return v;
}

static jlist_t *LST(jv_t v) { return (jlist_t *)v.p; }
static int is_gen(jv_t v) { return v.t == JV_LIST && (v.aux & JV_AUX_GEN); }
static jv_t as_gen(jv_t v)
{
    v.aux = JV_AUX_GEN;
    return v;
}
static jdict_t *DCT(jv_t v) { return (jdict_t *)v.p; }

/* a growable list being built (copied into a jv list at the end) */
typedef struct lbuild {
    jv_t *v;
    size_t n, cap;
} lbuild_t;

static void lb_push(rstate_t *R, lbuild_t *b, jv_t x)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 8;
        jv_t *nv = ralloc(R, cap * sizeof(jv_t));
        if (b->n)
            memcpy(nv, b->v, b->n * sizeof(jv_t));
        b->v = nv;
        b->cap = cap;
    }
    b->v[b->n++] = x;
}

static jv_t lb_finish(lbuild_t *b, rstate_t *R, int tuple)
{
    jlist_t *l = ralloc(R, sizeof(*l));
    l->n = b->n;
    l->pos = 0;
    l->err = NULL;
    l->items = b->v;
    jv_t v = {.t = JV_LIST};
    v.p = l;
    v.aux = tuple ? JV_AUX_TUPLE : 0;
    return v;
}

static jv_t v_dict(rstate_t *R, size_t cap)
{
    jdict_t *d = ralloc(R, sizeof(*d));
    d->n = 0;
    d->cap = cap ? cap : 4;
    d->keys = ralloc(R, d->cap * sizeof(jv_t));
    d->vals = ralloc(R, d->cap * sizeof(jv_t));
    jv_t v = {.t = JV_DICT};
    v.p = d;
    return v;
}

static int jv_eq(rstate_t *R, jv_t a, jv_t b, int depth);

static long dict_find(rstate_t *R, const jdict_t *d, jv_t key)
{
    if (key.t == JV_STR) {
        for (size_t k = 0; k < d->n; k++)
            if (d->keys[k].t == JV_STR && d->keys[k].n == key.n && memcmp(d->keys[k].s, key.s, key.n) == 0)
                return (long)k;
        return -1;
    }
    for (size_t k = 0; k < d->n; k++)
        if (jv_eq(R, d->keys[k], key, 0))
            return (long)k;
    return -1;
}

static long dict_find_str(const jdict_t *d, const char *s, size_t n)
{
    for (size_t k = 0; k < d->n; k++)
        if (d->keys[k].t == JV_STR && d->keys[k].n == n && memcmp(d->keys[k].s, s, n) == 0)
            return (long)k;
    return -1;
}

static void dict_set(rstate_t *R, jdict_t *d, jv_t key, jv_t val)
{
    long k = dict_find(R, d, key);
    if (k >= 0) {
        d->vals[k] = val;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap * 2;
        jv_t *nk = ralloc(R, cap * sizeof(jv_t)), *nv = ralloc(R, cap * sizeof(jv_t));
        memcpy(nk, d->keys, d->n * sizeof(jv_t));
        memcpy(nv, d->vals, d->n * sizeof(jv_t));
        d->keys = nk;
        d->vals = nv;
        d->cap = cap;
    }
    d->keys[d->n] = key;
    d->vals[d->n] = val;
    d->n++;
}

// ---- unicode helpers ----
/* Decode one code point at s[*i] (advancing *i); invalid bytes decode as themselves. */
static uint32_t u8_next(const char *s, size_t n, size_t *i)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned char c = u[*i];
    if (c < 0x80) {
        (*i)++;
        return c;
    }
    int len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (len == 1 || *i + (size_t)len > n) {
        (*i)++;
        return c;
    }
    uint32_t cp = c & (0x7F >> len);
    for (int k = 1; k < len; k++)
        cp = (cp << 6) | (u[*i + (size_t)k] & 0x3F);
    *i += (size_t)len;
    return cp;
}

static int u8_put(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return 0;
    return 1;
}

static size_t u8_len(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* byte offset of code point index ci (ci <= number of code points) */
static size_t u8_offset(const char *s, size_t n, size_t ci)
{
    size_t i = 0;
    while (ci > 0 && i < n) {
        u8_next(s, n, &i);
        ci--;
    }
    return i;
}

/* Python's str.isspace() */
static int py_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

/* Case mapping: the C library's Unicode tables through a C.UTF-8 locale object (never the
 * process locale), falling back to built-in tables for Latin, Greek and Cyrillic when
 * that locale is missing.  Python's one-to-many mappings other than sharp s are not
 * reproduced. */
static locale_t utf8_locale_g;
static pthread_once_t utf8_once_g = PTHREAD_ONCE_INIT;

static void utf8_locale_init(void)
{
    utf8_locale_g = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
    if (utf8_locale_g == (locale_t)0)
        utf8_locale_g = newlocale(LC_CTYPE_MASK, "C.utf8", (locale_t)0);
}

static locale_t utf8_locale(void)
{
    pthread_once(&utf8_once_g, utf8_locale_init);
    return utf8_locale_g;
}

static uint32_t tbl_upper(uint32_t c);
static uint32_t tbl_lower(uint32_t c);

static uint32_t cp_upper(uint32_t c)
{
    if (c < 0x80)
        return (c >= 'a' && c <= 'z') ? c - 32 : c;
    locale_t l = utf8_locale();
    return l ? (uint32_t)towupper_l((wint_t)c, l) : tbl_upper(c);
}

static uint32_t cp_lower(uint32_t c)
{
    if (c < 0x80)
        return (c >= 'A' && c <= 'Z') ? c + 32 : c;
    locale_t l = utf8_locale();
    return l ? (uint32_t)towlower_l((wint_t)c, l) : tbl_lower(c);
}

static uint32_t tbl_upper(uint32_t c)
{
    if (c < 0x80)
        return (c >= 'a' && c <= 'z') ? c - 32 : c;
    if ((c >= 0xE0 && c <= 0xFE && c != 0xF7))
        return c - 32;
    if (c == 0xFF)
        return 0x178;
    if (c == 0xB5)
        return 0x39C;
    if (c >= 0x100 && c <= 0x17F) {
        if (c == 0x131)
            return 'I';
        if (c == 0x17F)
            return 'S';
        if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E))
            return (c & 1) ? c : c - 1;
        if (c == 0x138 || c == 0x149 || c == 0x130)
            return c;
        return (c & 1) ? c - 1 : c;
    }
    if (c >= 0x3B1 && c <= 0x3CB && c != 0x3C2)
        return c - 32;
    if (c == 0x3C2)
        return 0x3A3;
    if (c >= 0x3AC && c <= 0x3AF)
        return c == 0x3AC ? 0x386 : c - 37;
    if (c >= 0x430 && c <= 0x44F)
        return c - 32;
    if (c >= 0x450 && c <= 0x45F)
        return c - 80;
    return c;
}

static uint32_t tbl_lower(uint32_t c)
{
    if (c < 0x80)
        return (c >= 'A' && c <= 'Z') ? c + 32 : c;
    if ((c >= 0xC0 && c <= 0xDE && c != 0xD7))
        return c + 32;
    if (c == 0x178)
        return 0xFF;
    if (c >= 0x100 && c <= 0x17F) {
        if (c == 0x130)
            return 'i';
        if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E))
            return (c & 1) ? c + 1 : c;
        if (c == 0x138 || c == 0x149 || c == 0x131 || c == 0x17F)
            return c;
        return (c & 1) ? c : c + 1;
    }
    if (c >= 0x391 && c <= 0x3AB && c != 0x3A2)
        return c + 32;
    if (c == 0x386)
        return 0x3AC;
    if (c >= 0x388 && c <= 0x38A)
        return c + 37;
    if (c >= 0x410 && c <= 0x42F)
        return c + 32;
    if (c >= 0x400 && c <= 0x40F)
        return c + 80;
    return c;
}

static int cp_cased(uint32_t c)
{
    if (c < 0x80)
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    locale_t l = utf8_locale();
    if (l && (iswlower_l((wint_t)c, l) || iswupper_l((wint_t)c, l)))
        return 1;
    return cp_upper(c) != c || cp_lower(c) != c || c == 0xDF;
}

/* Generated from Python 3.11's str.upper()/str.title(): code points whose upper case is
 * several code points, and those whose title case differs from the upper case. */
static const struct { uint32_t cp; uint32_t to[3]; } SPECIAL_UPPER[] = {
    {0xDF, {0x53, 0x53, 0x0}}, {0x149, {0x2BC, 0x4E, 0x0}}, {0x1F0, {0x4A, 0x30C, 0x0}},
    {0x390, {0x399, 0x308, 0x301}}, {0x3B0, {0x3A5, 0x308, 0x301}}, {0x587, {0x535, 0x552, 0x0}},
    {0x1E96, {0x48, 0x331, 0x0}}, {0x1E97, {0x54, 0x308, 0x0}}, {0x1E98, {0x57, 0x30A, 0x0}},
    {0x1E99, {0x59, 0x30A, 0x0}}, {0x1E9A, {0x41, 0x2BE, 0x0}}, {0x1F50, {0x3A5, 0x313, 0x0}},
    {0x1F52, {0x3A5, 0x313, 0x300}}, {0x1F54, {0x3A5, 0x313, 0x301}},
    {0x1F56, {0x3A5, 0x313, 0x342}}, {0x1F80, {0x1F08, 0x399, 0x0}}, {0x1F81, {0x1F09, 0x399, 0x0}},
    {0x1F82, {0x1F0A, 0x399, 0x0}}, {0x1F83, {0x1F0B, 0x399, 0x0}}, {0x1F84, {0x1F0C, 0x399, 0x0}},
    {0x1F85, {0x1F0D, 0x399, 0x0}}, {0x1F86, {0x1F0E, 0x399, 0x0}}, {0x1F87, {0x1F0F, 0x399, 0x0}},
    {0x1F88, {0x1F08, 0x399, 0x0}}, {0x1F89, {0x1F09, 0x399, 0x0}}, {0x1F8A, {0x1F0A, 0x399, 0x0}},
    {0x1F8B, {0x1F0B, 0x399, 0x0}}, {0x1F8C, {0x1F0C, 0x399, 0x0}}, {0x1F8D, {0x1F0D, 0x399, 0x0}},
    {0x1F8E, {0x1F0E, 0x399, 0x0}}, {0x1F8F, {0x1F0F, 0x399, 0x0}}, {0x1F90, {0x1F28, 0x399, 0x0}},
    {0x1F91, {0x1F29, 0x399, 0x0}}, {0x1F92, {0x1F2A, 0x399, 0x0}}, {0x1F93, {0x1F2B, 0x399, 0x0}},
    {0x1F94, {0x1F2C, 0x399, 0x0}}, {0x1F95, {0x1F2D, 0x399, 0x0}}, {0x1F96, {0x1F2E, 0x399, 0x0}},
    {0x1F97, {0x1F2F, 0x399, 0x0}}, {0x1F98, {0x1F28, 0x399, 0x0}}, {0x1F99, {0x1F29, 0x399, 0x0}},
    {0x1F9A, {0x1F2A, 0x399, 0x0}}, {0x1F9B, {0x1F2B, 0x399, 0x0}}, {0x1F9C, {0x1F2C, 0x399, 0x0}},
    {0x1F9D, {0x1F2D, 0x399, 0x0}}, {0x1F9E, {0x1F2E, 0x399, 0x0}}, {0x1F9F, {0x1F2F, 0x399, 0x0}},
    {0x1FA0, {0x1F68, 0x399, 0x0}}, {0x1FA1, {0x1F69, 0x399, 0x0}}, {0x1FA2, {0x1F6A, 0x399, 0x0}},
    {0x1FA3, {0x1F6B, 0x399, 0x0}}, {0x1FA4, {0x1F6C, 0x399, 0x0}}, {0x1FA5, {0x1F6D, 0x399, 0x0}},
    {0x1FA6, {0x1F6E, 0x399, 0x0}}, {0x1FA7, {0x1F6F, 0x399, 0x0}}, {0x1FA8, {0x1F68, 0x399, 0x0}},
    {0x1FA9, {0x1F69, 0x399, 0x0}}, {0x1FAA, {0x1F6A, 0x399, 0x0}}, {0x1FAB, {0x1F6B, 0x399, 0x0}},
    {0x1FAC, {0x1F6C, 0x399, 0x0}}, {0x1FAD, {0x1F6D, 0x399, 0x0}}, {0x1FAE, {0x1F6E, 0x399, 0x0}},
    {0x1FAF, {0x1F6F, 0x399, 0x0}}, {0x1FB2, {0x1FBA, 0x399, 0x0}}, {0x1FB3, {0x391, 0x399, 0x0}},
    {0x1FB4, {0x386, 0x399, 0x0}}, {0x1FB6, {0x391, 0x342, 0x0}}, {0x1FB7, {0x391, 0x342, 0x399}},
    {0x1FBC, {0x391, 0x399, 0x0}}, {0x1FC2, {0x1FCA, 0x399, 0x0}}, {0x1FC3, {0x397, 0x399, 0x0}},
    {0x1FC4, {0x389, 0x399, 0x0}}, {0x1FC6, {0x397, 0x342, 0x0}}, {0x1FC7, {0x397, 0x342, 0x399}},
    {0x1FCC, {0x397, 0x399, 0x0}}, {0x1FD2, {0x399, 0x308, 0x300}}, {0x1FD3, {0x399, 0x308, 0x301}},
    {0x1FD6, {0x399, 0x342, 0x0}}, {0x1FD7, {0x399, 0x308, 0x342}}, {0x1FE2, {0x3A5, 0x308, 0x300}},
    {0x1FE3, {0x3A5, 0x308, 0x301}}, {0x1FE4, {0x3A1, 0x313, 0x0}}, {0x1FE6, {0x3A5, 0x342, 0x0}},
    {0x1FE7, {0x3A5, 0x308, 0x342}}, {0x1FF2, {0x1FFA, 0x399, 0x0}}, {0x1FF3, {0x3A9, 0x399, 0x0}},
    {0x1FF4, {0x38F, 0x399, 0x0}}, {0x1FF6, {0x3A9, 0x342, 0x0}}, {0x1FF7, {0x3A9, 0x342, 0x399}},
    {0x1FFC, {0x3A9, 0x399, 0x0}}, {0xFB00, {0x46, 0x46, 0x0}}, {0xFB01, {0x46, 0x49, 0x0}},
    {0xFB02, {0x46, 0x4C, 0x0}}, {0xFB03, {0x46, 0x46, 0x49}}, {0xFB04, {0x46, 0x46, 0x4C}},
    {0xFB05, {0x53, 0x54, 0x0}}, {0xFB06, {0x53, 0x54, 0x0}}, {0xFB13, {0x544, 0x546, 0x0}},
    {0xFB14, {0x544, 0x535, 0x0}}, {0xFB15, {0x544, 0x53B, 0x0}}, {0xFB16, {0x54E, 0x546, 0x0}},
    {0xFB17, {0x544, 0x53D, 0x0}},
};
static const struct { uint32_t cp; uint32_t to[3]; } SPECIAL_TITLE[] = {
    {0xDF, {0x53, 0x73, 0x0}}, {0x1C4, {0x1C5, 0x0, 0x0}}, {0x1C5, {0x1C5, 0x0, 0x0}},
    {0x1C6, {0x1C5, 0x0, 0x0}}, {0x1C7, {0x1C8, 0x0, 0x0}}, {0x1C8, {0x1C8, 0x0, 0x0}},
    {0x1C9, {0x1C8, 0x0, 0x0}}, {0x1CA, {0x1CB, 0x0, 0x0}}, {0x1CB, {0x1CB, 0x0, 0x0}},
    {0x1CC, {0x1CB, 0x0, 0x0}}, {0x1F1, {0x1F2, 0x0, 0x0}}, {0x1F2, {0x1F2, 0x0, 0x0}},
    {0x1F3, {0x1F2, 0x0, 0x0}}, {0x587, {0x535, 0x582, 0x0}}, {0x10D0, {0x10D0, 0x0, 0x0}},
    {0x10D1, {0x10D1, 0x0, 0x0}}, {0x10D2, {0x10D2, 0x0, 0x0}}, {0x10D3, {0x10D3, 0x0, 0x0}},
    {0x10D4, {0x10D4, 0x0, 0x0}}, {0x10D5, {0x10D5, 0x0, 0x0}}, {0x10D6, {0x10D6, 0x0, 0x0}},
    {0x10D7, {0x10D7, 0x0, 0x0}}, {0x10D8, {0x10D8, 0x0, 0x0}}, {0x10D9, {0x10D9, 0x0, 0x0}},
    {0x10DA, {0x10DA, 0x0, 0x0}}, {0x10DB, {0x10DB, 0x0, 0x0}}, {0x10DC, {0x10DC, 0x0, 0x0}},
    {0x10DD, {0x10DD, 0x0, 0x0}}, {0x10DE, {0x10DE, 0x0, 0x0}}, {0x10DF, {0x10DF, 0x0, 0x0}},
    {0x10E0, {0x10E0, 0x0, 0x0}}, {0x10E1, {0x10E1, 0x0, 0x0}}, {0x10E2, {0x10E2, 0x0, 0x0}},
    {0x10E3, {0x10E3, 0x0, 0x0}}, {0x10E4, {0x10E4, 0x0, 0x0}}, {0x10E5, {0x10E5, 0x0, 0x0}},
    {0x10E6, {0x10E6, 0x0, 0x0}}, {0x10E7, {0x10E7, 0x0, 0x0}}, {0x10E8, {0x10E8, 0x0, 0x0}},
    {0x10E9, {0x10E9, 0x0, 0x0}}, {0x10EA, {0x10EA, 0x0, 0x0}}, {0x10EB, {0x10EB, 0x0, 0x0}},
    {0x10EC, {0x10EC, 0x0, 0x0}}, {0x10ED, {0x10ED, 0x0, 0x0}}, {0x10EE, {0x10EE, 0x0, 0x0}},
    {0x10EF, {0x10EF, 0x0, 0x0}}, {0x10F0, {0x10F0, 0x0, 0x0}}, {0x10F1, {0x10F1, 0x0, 0x0}},
    {0x10F2, {0x10F2, 0x0, 0x0}}, {0x10F3, {0x10F3, 0x0, 0x0}}, {0x10F4, {0x10F4, 0x0, 0x0}},
    {0x10F5, {0x10F5, 0x0, 0x0}}, {0x10F6, {0x10F6, 0x0, 0x0}}, {0x10F7, {0x10F7, 0x0, 0x0}},
    {0x10F8, {0x10F8, 0x0, 0x0}}, {0x10F9, {0x10F9, 0x0, 0x0}}, {0x10FA, {0x10FA, 0x0, 0x0}},
    {0x10FD, {0x10FD, 0x0, 0x0}}, {0x10FE, {0x10FE, 0x0, 0x0}}, {0x10FF, {0x10FF, 0x0, 0x0}},
    {0x1F80, {0x1F88, 0x0, 0x0}}, {0x1F81, {0x1F89, 0x0, 0x0}}, {0x1F82, {0x1F8A, 0x0, 0x0}},
    {0x1F83, {0x1F8B, 0x0, 0x0}}, {0x1F84, {0x1F8C, 0x0, 0x0}}, {0x1F85, {0x1F8D, 0x0, 0x0}},
    {0x1F86, {0x1F8E, 0x0, 0x0}}, {0x1F87, {0x1F8F, 0x0, 0x0}}, {0x1F88, {0x1F88, 0x0, 0x0}},
    {0x1F89, {0x1F89, 0x0, 0x0}}, {0x1F8A, {0x1F8A, 0x0, 0x0}}, {0x1F8B, {0x1F8B, 0x0, 0x0}},
    {0x1F8C, {0x1F8C, 0x0, 0x0}}, {0x1F8D, {0x1F8D, 0x0, 0x0}}, {0x1F8E, {0x1F8E, 0x0, 0x0}},
    {0x1F8F, {0x1F8F, 0x0, 0x0}}, {0x1F90, {0x1F98, 0x0, 0x0}}, {0x1F91, {0x1F99, 0x0, 0x0}},
    {0x1F92, {0x1F9A, 0x0, 0x0}}, {0x1F93, {0x1F9B, 0x0, 0x0}}, {0x1F94, {0x1F9C, 0x0, 0x0}},
    {0x1F95, {0x1F9D, 0x0, 0x0}}, {0x1F96, {0x1F9E, 0x0, 0x0}}, {0x1F97, {0x1F9F, 0x0, 0x0}},
    {0x1F98, {0x1F98, 0x0, 0x0}}, {0x1F99, {0x1F99, 0x0, 0x0}}, {0x1F9A, {0x1F9A, 0x0, 0x0}},
    {0x1F9B, {0x1F9B, 0x0, 0x0}}, {0x1F9C, {0x1F9C, 0x0, 0x0}}, {0x1F9D, {0x1F9D, 0x0, 0x0}},
    {0x1F9E, {0x1F9E, 0x0, 0x0}}, {0x1F9F, {0x1F9F, 0x0, 0x0}}, {0x1FA0, {0x1FA8, 0x0, 0x0}},
    {0x1FA1, {0x1FA9, 0x0, 0x0}}, {0x1FA2, {0x1FAA, 0x0, 0x0}}, {0x1FA3, {0x1FAB, 0x0, 0x0}},
    {0x1FA4, {0x1FAC, 0x0, 0x0}}, {0x1FA5, {0x1FAD, 0x0, 0x0}}, {0x1FA6, {0x1FAE, 0x0, 0x0}},
    {0x1FA7, {0x1FAF, 0x0, 0x0}}, {0x1FA8, {0x1FA8, 0x0, 0x0}}, {0x1FA9, {0x1FA9, 0x0, 0x0}},
    {0x1FAA, {0x1FAA, 0x0, 0x0}}, {0x1FAB, {0x1FAB, 0x0, 0x0}}, {0x1FAC, {0x1FAC, 0x0, 0x0}},
    {0x1FAD, {0x1FAD, 0x0, 0x0}}, {0x1FAE, {0x1FAE, 0x0, 0x0}}, {0x1FAF, {0x1FAF, 0x0, 0x0}},
    {0x1FB2, {0x1FBA, 0x345, 0x0}}, {0x1FB3, {0x1FBC, 0x0, 0x0}}, {0x1FB4, {0x386, 0x345, 0x0}},
    {0x1FB7, {0x391, 0x342, 0x345}}, {0x1FBC, {0x1FBC, 0x0, 0x0}}, {0x1FC2, {0x1FCA, 0x345, 0x0}},
    {0x1FC3, {0x1FCC, 0x0, 0x0}}, {0x1FC4, {0x389, 0x345, 0x0}}, {0x1FC7, {0x397, 0x342, 0x345}},
    {0x1FCC, {0x1FCC, 0x0, 0x0}}, {0x1FF2, {0x1FFA, 0x345, 0x0}}, {0x1FF3, {0x1FFC, 0x0, 0x0}},
    {0x1FF4, {0x38F, 0x345, 0x0}}, {0x1FF7, {0x3A9, 0x342, 0x345}}, {0x1FFC, {0x1FFC, 0x0, 0x0}},
    {0xFB00, {0x46, 0x66, 0x0}}, {0xFB01, {0x46, 0x69, 0x0}}, {0xFB02, {0x46, 0x6C, 0x0}},
    {0xFB03, {0x46, 0x66, 0x69}}, {0xFB04, {0x46, 0x66, 0x6C}}, {0xFB05, {0x53, 0x74, 0x0}},
    {0xFB06, {0x53, 0x74, 0x0}}, {0xFB13, {0x544, 0x576, 0x0}}, {0xFB14, {0x544, 0x565, 0x0}},
    {0xFB15, {0x544, 0x56B, 0x0}}, {0xFB16, {0x54E, 0x576, 0x0}}, {0xFB17, {0x544, 0x56D, 0x0}},
};

/* the special mapping of c in tbl (sorted by cp), or NULL */
static const uint32_t *special_case(const void *tbl, size_t n, uint32_t c)
{
    const struct { uint32_t cp; uint32_t to[3]; } *t = tbl;
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (t[mid].cp == c)
            return t[mid].to;
        if (t[mid].cp < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* mode: 0 lower, 1 upper, 2 capitalize, 3 python title, 4 swap-less jinja word title */
static jv_t str_case(rstate_t *R, jv_t s, int mode)
{
    /* a code point maps to at most 3 (each at most 4 bytes) */
    char *o = ralloc(R, s.n * 3 + 16);
    size_t k = 0, i = 0;
    int prev_cased = 0, first = 1;
    while (i < s.n) {
        uint32_t c = u8_next(s.s, s.n, &i), m;
        int up;
        switch (mode) {
        case 0: up = 0; break;
        case 1: up = 1; break;
        case 2: up = first; break;
        default: up = !prev_cased; break;
        }
        if (c >= 0xDF) {
            /* one-to-many mappings (sharp s, ligatures, ...) and title case */
            const uint32_t *sp = NULL;
            if (up && mode == 1)
                sp = special_case(SPECIAL_UPPER, PD_ARRAY_SIZE(SPECIAL_UPPER), c);
            else if (up)
                sp = special_case(SPECIAL_TITLE, PD_ARRAY_SIZE(SPECIAL_TITLE), c);
            if (sp == NULL && up && mode != 1 && special_case(SPECIAL_UPPER, PD_ARRAY_SIZE(SPECIAL_UPPER), c))
                sp = special_case(SPECIAL_UPPER, PD_ARRAY_SIZE(SPECIAL_UPPER), c);
            static const uint32_t DOTTED_I[3] = {0x69, 0x307, 0};
            if (!up && c == 0x130)
                sp = DOTTED_I;
            if (sp) {
                for (int q = 0; q < 3 && sp[q]; q++)
                    k += (size_t)u8_put(o + k, sp[q]);
                if (mode == 3)
                    prev_cased = cp_cased(c);
                first = 0;
                continue;
            }
        }
        m = up ? cp_upper(c) : cp_lower(c);
        if (c == 0x3A3 && !up && k > 0) {
            /* Python's final sigma: after a cased letter and not before one */
            size_t q = i;
            int next_cased = 0;
            if (q < s.n)
                next_cased = cp_cased(u8_next(s.s, s.n, &q));
            size_t pb = k;
            while (pb > 0 && ((unsigned char)o[pb - 1] & 0xC0) == 0x80)
                pb--;
            size_t pq = pb - (pb > 0);
            while (pq > 0 && ((unsigned char)o[pq] & 0xC0) == 0x80)
                pq--;
            size_t pi = pq;
            int prev_c = cp_cased(u8_next(o, k, &pi));
            if (prev_c && !next_cased)
                m = 0x3C2;
        }
        if (mode == 3)
            prev_cased = cp_cased(c);
        first = 0;
        k += (size_t)u8_put(o + k, m);
    }
    o[k] = '\0';
    return v_str(o, k);
}

// ---- printing: str(), repr(), json ----
static void bput(rstate_t *R, pd_buf_t *b, const char *s, size_t n)
{
    if (b == R->out && b->len + n - R->out_base > R->out_limit)
        rfail(R, PD_ERR_LIMIT, R->line, "template output exceeded %zu bytes", R->out_limit);
    if (pd_buf_append(b, s, n) != PD_OK)
        rfail(R, PD_ERR_NOMEM, R->line, "out of memory");
}

static void bputs(rstate_t *R, pd_buf_t *b, const char *s) { bput(R, b, s, strlen(s)); }

/* Python repr() of a float; json: NaN/Infinity spelling of json.dumps */
static void fmt_float(double f, char *buf, size_t bl, int json)
{
    if (isnan(f)) {
        snprintf(buf, bl, "%s", json ? "NaN" : "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(buf, bl, "%s", f > 0 ? (json ? "Infinity" : "inf") : (json ? "-Infinity" : "-inf"));
        return;
    }
    if (f == 0) {
        snprintf(buf, bl, "%s", signbit(f) ? "-0.0" : "0.0");
        return;
    }
    char e[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof(e), "%.*e", prec - 1, f);
        if (strtod(e, NULL) == f)
            break;
    }
    /* e = [-]d[.ddd]e[+-]XX */
    const char *q = e;
    int neg = 0;
    if (*q == '-') {
        neg = 1;
        q++;
    }
    char digits[24];
    int nd = 0;
    for (; *q && *q != 'e'; q++)
        if (*q != '.')
            digits[nd++] = *q;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    int exp = atoi(q + 1);
    char *o = buf;
    size_t left = bl;
#define EMIT(...) do { int w_ = snprintf(o, left, __VA_ARGS__); if (w_ > 0 && (size_t)w_ < left) { o += w_; left -= (size_t)w_; } } while (0)
    if (neg)
        EMIT("-");
    if (exp < -4 || exp >= 16) {
        EMIT("%c", digits[0]);
        if (nd > 1)
            EMIT(".%s", digits + 1);
        EMIT("e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        EMIT("0.");
        for (int k = 0; k < -exp - 1; k++)
            EMIT("0");
        EMIT("%s", digits);
    } else {
        for (int k = 0; k <= exp; k++)
            EMIT("%c", k < nd ? digits[k] : '0');
        EMIT(".");
        if (nd > exp + 1)
            EMIT("%s", digits + exp + 1);
        else
            EMIT("0");
    }
#undef EMIT
}

/* Python's str.isprintable() for one code point, approximately (no unassigned table). */
static int py_printable(uint32_t c)
{
    if (c < 0x20 || c == 0x7F)
        return 0;
    if (c < 0x7F)
        return 1;
    if (c <= 0xA0 || c == 0xAD)
        return 0;
    if ((c >= 0x600 && c <= 0x605) || c == 0x61C || c == 0x6DD || c == 0x70F || c == 0x180E || c == 0x1680)
        return 0;
    if ((c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F) || (c >= 0x205F && c <= 0x206F))
        return 0;
    if (c == 0x3000 || (c >= 0xD800 && c <= 0xF8FF) || c == 0xFEFF || (c >= 0xFFF0 && c <= 0xFFFB) ||
        c == 0xFFFE || c == 0xFFFF)
        return 0;
    if (c >= 0xE0000)
        return 0;
    return 1;
}

static void repr_str(rstate_t *R, pd_buf_t *b, const char *s, size_t n)
{
    int has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char quote = (has_sq && !has_dq) ? '"' : '\'';
    bput(R, b, &quote, 1);
    size_t i = 0, run = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7F && c != '\\' && c != (unsigned char)quote) {
            i++;
            run++;
            continue;
        }
        if (run)
            bput(R, b, s + i - run, run);
        run = 0;
        size_t start = i;
        uint32_t cp = u8_next(s, n, &i);
        char esc[16];
        if (cp == '\\' || cp == (uint32_t)quote) {
            esc[0] = '\\';
            esc[1] = (char)cp;
            bput(R, b, esc, 2);
        } else if (cp == '\n') {
            bput(R, b, "\\n", 2);
        } else if (cp == '\r') {
            bput(R, b, "\\r", 2);
        } else if (cp == '\t') {
            bput(R, b, "\\t", 2);
        } else if (py_printable(cp)) {
            bput(R, b, s + start, i - start);
        } else if (cp <= 0xFF) {
            snprintf(esc, sizeof(esc), "\\x%02x", cp);
            bputs(R, b, esc);
        } else if (cp <= 0xFFFF) {
            snprintf(esc, sizeof(esc), "\\u%04x", cp);
            bputs(R, b, esc);
        } else {
            snprintf(esc, sizeof(esc), "\\U%08x", cp);
            bputs(R, b, esc);
        }
    }
    if (run)
        bput(R, b, s + n - run, run);
    bput(R, b, &quote, 1);
}

static void write_repr(rstate_t *R, pd_buf_t *b, jv_t v, int depth);

static const char *type_name(uint32_t t)
{
    switch (t) {
    case JV_UNDEF: return "Undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "str";
    case JV_LIST: return "list";
    case JV_DICT: return "dict";
    case JV_NS: return "Namespace";
    case JV_MACRO: return "Macro";
    case JV_FUNC: return "function";
    case JV_LOOP: return "LoopContext";
    default: return "object";
    }
}

/* str(v) appended to b */
static void write_str(rstate_t *R, pd_buf_t *b, jv_t v, int depth)
{
    char buf[64];
    switch (v.t) {
    case JV_UNDEF: return;
    case JV_NONE: bput(R, b, "None", 4); return;
    case JV_BOOL: v.i ? bput(R, b, "True", 4) : bput(R, b, "False", 5); return;
    case JV_INT: snprintf(buf, sizeof(buf), "%lld", (long long)v.i); bputs(R, b, buf); return;
    case JV_FLOAT: fmt_float(v.f, buf, sizeof(buf), 0); bputs(R, b, buf); return;
    case JV_STR: bput(R, b, v.s, v.n); return;
    default: write_repr(R, b, v, depth); return;
    }
}

static void write_repr(rstate_t *R, pd_buf_t *b, jv_t v, int depth)
{
    if (depth > MAX_VALUE_DEPTH)
        RERR(R, "value nested too deeply");
    switch (v.t) {
    case JV_UNDEF: bputs(R, b, "Undefined"); return;
    case JV_STR:
        if (v.aux & JV_AUX_MARKUP) {
            bputs(R, b, "Markup(");
            repr_str(R, b, v.s, v.n);
            bputs(R, b, ")");
            return;
        }
        repr_str(R, b, v.s, v.n);
        return;
    case JV_LIST: {
        jlist_t *l = LST(v);
        int tup = v.aux & JV_AUX_TUPLE;
        if (is_gen(v)) {
            bputs(R, b, "<generator object>");
            return;
        }
        const char *view = (v.aux & JV_AUX_VIEW_MASK) == JV_AUX_KEYS ? "dict_keys("
                           : (v.aux & JV_AUX_VIEW_MASK) == JV_AUX_VALUES ? "dict_values("
                           : (v.aux & JV_AUX_VIEW_MASK) == JV_AUX_ITEMS ? "dict_items(" : NULL;
        if (view)
            bputs(R, b, view);
        bput(R, b, tup ? "(" : "[", 1);
        for (size_t k = 0; k < l->n; k++) {
            if (k)
                bput(R, b, ", ", 2);
            write_repr(R, b, l->items[k], depth + 1);
        }
        if (tup && l->n == 1)
            bput(R, b, ",", 1);
        bput(R, b, tup ? ")" : "]", 1);
        if (view)
            bput(R, b, ")", 1);
        return;
    }
    case JV_DICT:
    case JV_NS: {
        jdict_t *d = DCT(v);
        if (v.t == JV_NS)
            bputs(R, b, "<Namespace ");
        bput(R, b, "{", 1);
        for (size_t k = 0; k < d->n; k++) {
            if (k)
                bput(R, b, ", ", 2);
            write_repr(R, b, d->keys[k], depth + 1);
            bput(R, b, ": ", 2);
            write_repr(R, b, d->vals[k], depth + 1);
        }
        bput(R, b, "}", 1);
        if (v.t == JV_NS)
            bputs(R, b, ">");
        return;
    }
    case JV_MACRO: {
        const jmacro_t *m = v.p;
        bputs(R, b, "<Macro '");
        bputs(R, b, m->def->kind == N_MACRO ? m->def->str : "caller");
        bputs(R, b, "'>");
        return;
    }
    case JV_FUNC: bputs(R, b, "<built-in function>"); return;
    case JV_LOOP: bputs(R, b, "<LoopContext>"); return;
    default: write_str(R, b, v, depth); return;
    }
}

/* str(v) as a value (no copy for strings) */
static jv_t to_str(rstate_t *R, jv_t v)
{
    if (v.t == JV_STR)
        return v;
    if (v.t == JV_UNDEF)
        return v_str("", 0);
    pd_buf_reset(&R->tmp);
    write_str(R, &R->tmp, v, 0);
    return v_strdup(R, R->tmp.data ? R->tmp.data : "", R->tmp.len);
}

static jv_t repr_value(rstate_t *R, jv_t v)
{
    pd_buf_t *b = scratch_push(R);
    write_repr(R, b, v, 0);
    return scratch_pop(R);
}

typedef struct json_opts {
    int ensure_ascii;
    const char *indent; /* NULL: no indent */
    size_t indent_len;
    jv_t item_sep, key_sep;
    int sort_keys;
} json_opts_t;

static void json_str(rstate_t *R, pd_buf_t *b, const char *s, size_t n, int ensure_ascii)
{
    bput(R, b, "\"", 1);
    size_t i = 0, run = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && (c < 0x80 || !ensure_ascii)) {
            i++;
            run++;
            continue;
        }
        if (run)
            bput(R, b, s + i - run, run);
        run = 0;
        uint32_t cp = u8_next(s, n, &i);
        char esc[16];
        switch (cp) {
        case '"': bput(R, b, "\\\"", 2); break;
        case '\\': bput(R, b, "\\\\", 2); break;
        case '\n': bput(R, b, "\\n", 2); break;
        case '\r': bput(R, b, "\\r", 2); break;
        case '\t': bput(R, b, "\\t", 2); break;
        case '\b': bput(R, b, "\\b", 2); break;
        case '\f': bput(R, b, "\\f", 2); break;
        default:
            if (cp >= 0x10000) {
                uint32_t v = cp - 0x10000;
                snprintf(esc, sizeof(esc), "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
            } else {
                snprintf(esc, sizeof(esc), "\\u%04x", cp);
            }
            bputs(R, b, esc);
        }
    }
    if (run)
        bput(R, b, s + n - run, run);
    bput(R, b, "\"", 1);
}

static void json_newline(rstate_t *R, pd_buf_t *b, const json_opts_t *o, int level)
{
    bput(R, b, "\n", 1);
    for (int k = 0; k < level; k++)
        bput(R, b, o->indent, o->indent_len);
}

static int jv_lt(rstate_t *R, jv_t a, jv_t b);

static void write_json(rstate_t *R, pd_buf_t *b, jv_t v, const json_opts_t *o, int level)
{
    char buf[64];
    if (level > MAX_VALUE_DEPTH)
        RERR(R, "value nested too deeply for tojson");
    switch (v.t) {
    case JV_NONE: bput(R, b, "null", 4); return;
    case JV_BOOL: v.i ? bput(R, b, "true", 4) : bput(R, b, "false", 5); return;
    case JV_INT: snprintf(buf, sizeof(buf), "%lld", (long long)v.i); bputs(R, b, buf); return;
    case JV_FLOAT: fmt_float(v.f, buf, sizeof(buf), 1); bputs(R, b, buf); return;
    case JV_STR: json_str(R, b, v.s, v.n, o->ensure_ascii); return;
    case JV_LIST: {
        jlist_t *l = LST(v);
        if (is_gen(v))
            RERR(R, "Object of type generator is not JSON serializable");
        if (l->n == 0) {
            bput(R, b, "[]", 2);
            return;
        }
        bput(R, b, "[", 1);
        for (size_t k = 0; k < l->n; k++) {
            if (k)
                bput(R, b, o->item_sep.s, o->item_sep.n);
            if (o->indent)
                json_newline(R, b, o, level + 1);
            write_json(R, b, l->items[k], o, level + 1);
        }
        if (o->indent)
            json_newline(R, b, o, level);
        bput(R, b, "]", 1);
        return;
    }
    case JV_DICT: {
        jdict_t *d = DCT(v);
        if (d->n == 0) {
            bput(R, b, "{}", 2);
            return;
        }
        size_t *order = ralloc(R, d->n * sizeof(size_t));
        for (size_t k = 0; k < d->n; k++)
            order[k] = k;
        if (o->sort_keys) {
            /* insertion sort keeps it simple; dicts in templates are small */
            for (size_t k = 1; k < d->n; k++) {
                size_t x = order[k], j = k;
                while (j > 0 && jv_lt(R, d->keys[x], d->keys[order[j - 1]])) {
                    order[j] = order[j - 1];
                    j--;
                }
                order[j] = x;
            }
        }
        bput(R, b, "{", 1);
        for (size_t q = 0; q < d->n; q++) {
            size_t k = order[q];
            jv_t key = d->keys[k];
            if (q)
                bput(R, b, o->item_sep.s, o->item_sep.n);
            if (o->indent)
                json_newline(R, b, o, level + 1);
            switch (key.t) {
            case JV_STR: json_str(R, b, key.s, key.n, o->ensure_ascii); break;
            case JV_INT: snprintf(buf, sizeof(buf), "\"%lld\"", (long long)key.i); bputs(R, b, buf); break;
            case JV_FLOAT: bput(R, b, "\"", 1); fmt_float(key.f, buf, sizeof(buf), 1); bputs(R, b, buf); bput(R, b, "\"", 1); break;
            case JV_BOOL: bputs(R, b, key.i ? "\"true\"" : "\"false\""); break;
            case JV_NONE: bputs(R, b, "\"null\""); break;
            default: RERR(R, "keys must be str, int, float, bool or None, not %s", type_name(key.t));
            }
            bput(R, b, o->key_sep.s, o->key_sep.n);
            write_json(R, b, d->vals[k], o, level + 1);
        }
        if (o->indent)
            json_newline(R, b, o, level);
        bput(R, b, "}", 1);
        return;
    }
    default:
        RERR(R, "Object of type %s is not JSON serializable", type_name(v.t));
    }
}

// ---- truthiness, equality, ordering ----
static int truthy(jv_t v)
{
    switch (v.t) {
    case JV_UNDEF: case JV_NONE: return 0;
    case JV_BOOL: case JV_INT: return v.i != 0;
    case JV_FLOAT: return v.f != 0;
    case JV_STR: return v.n != 0;
    case JV_LIST: return is_gen(v) || LST(v)->n != 0;
    case JV_DICT: return DCT(v)->n != 0;
    default: return 1;
    }
}

static int is_num(jv_t v) { return v.t == JV_INT || v.t == JV_BOOL || v.t == JV_FLOAT; }
static double num_f(jv_t v) { return v.t == JV_FLOAT ? v.f : (double)v.i; }

static void undef_fail(rstate_t *R, jv_t u) __attribute__((noreturn));
static void undef_fail(rstate_t *R, jv_t u)
{
    if (u.aux == 0 && u.s)
        RERR(R, "'%s' is undefined", u.s);
    if (u.aux > 0 && u.s) {
        uint32_t ot = u.aux - 1;
        if (ot == JV_NONE)
            RERR(R, "'None' has no attribute '%s'", u.s);
        RERR(R, "'%s object' has no attribute '%s'", type_name(ot), u.s);
    }
    RERR(R, "value is undefined");
}

static int jv_eq(rstate_t *R, jv_t a, jv_t b, int depth)
{
    if (depth > MAX_VALUE_DEPTH)
        RERR(R, "value nested too deeply");
    if (is_num(a) && is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT)
            return a.i == b.i;
        return num_f(a) == num_f(b);
    }
    if (a.t != b.t)
        return 0;
    switch (a.t) {
    case JV_UNDEF: case JV_NONE: return 1;
    case JV_STR: return a.n == b.n && memcmp(a.s, b.s, a.n) == 0;
    case JV_LIST: {
        jlist_t *x = LST(a), *y = LST(b);
        if (is_gen(a) || is_gen(b))
            return a.p == b.p;
        if ((a.aux & JV_AUX_TUPLE) != (b.aux & JV_AUX_TUPLE) || x->n != y->n)
            return 0;
        for (size_t k = 0; k < x->n; k++)
            if (!jv_eq(R, x->items[k], y->items[k], depth + 1))
                return 0;
        return 1;
    }
    case JV_DICT: {
        jdict_t *x = DCT(a), *y = DCT(b);
        if (x->n != y->n)
            return 0;
        for (size_t k = 0; k < x->n; k++) {
            long j = dict_find(R, y, x->keys[k]);
            if (j < 0 || !jv_eq(R, x->vals[k], y->vals[j], depth + 1))
                return 0;
        }
        return 1;
    }
    default: return a.p == b.p;
    }
}

static int jv_cmp(rstate_t *R, jv_t a, jv_t b, const char *opname)
{
    if (a.t == JV_UNDEF)
        undef_fail(R, a);
    if (b.t == JV_UNDEF)
        undef_fail(R, b);
    if (is_num(a) && is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT)
            return a.i < b.i ? -1 : a.i > b.i;
        double x = num_f(a), y = num_f(b);
        return x < y ? -1 : x > y ? 1 : 0;
    }
    if (a.t == JV_STR && b.t == JV_STR) {
        int c = memcmp(a.s, b.s, PD_MIN(a.n, b.n));
        if (c)
            return c < 0 ? -1 : 1;
        return a.n < b.n ? -1 : a.n > b.n;
    }
    if (a.t == JV_LIST && b.t == JV_LIST && !is_gen(a) && !is_gen(b) &&
        (a.aux & JV_AUX_TUPLE) == (b.aux & JV_AUX_TUPLE)) {
        jlist_t *x = LST(a), *y = LST(b);
        for (size_t k = 0; k < x->n && k < y->n; k++) {
            if (jv_eq(R, x->items[k], y->items[k], 0))
                continue;
            return jv_cmp(R, x->items[k], y->items[k], opname);
        }
        return x->n < y->n ? -1 : x->n > y->n;
    }
    RERR(R, "'%s' not supported between instances of '%s' and '%s'", opname,
         (a.t == JV_LIST && (a.aux & JV_AUX_TUPLE)) ? "tuple" : type_name(a.t),
         (b.t == JV_LIST && (b.aux & JV_AUX_TUPLE)) ? "tuple" : type_name(b.t));
}

static int jv_lt(rstate_t *R, jv_t a, jv_t b) { return jv_cmp(R, a, b, "<") < 0; }

// ---- scopes ----
static scope_t *scope_new(rstate_t *R, scope_t *parent)
{
    scope_t *sc = ralloc(R, sizeof(*sc));
    sc->parent = parent;
    sc->n = sc->cap = 0;
    sc->syms = NULL;
    sc->vals = NULL;
    return sc;
}

static void scope_set(rstate_t *R, scope_t *sc, int sym, jv_t v)
{
    for (int k = 0; k < sc->n; k++)
        if (sc->syms[k] == sym) {
            sc->vals[k] = v;
            return;
        }
    if (sc->n == sc->cap) {
        int cap = sc->cap ? sc->cap * 2 : 4;
        int *ns = ralloc(R, sizeof(int) * (size_t)cap);
        jv_t *nv = ralloc(R, sizeof(jv_t) * (size_t)cap);
        if (sc->n) {
            memcpy(ns, sc->syms, sizeof(int) * (size_t)sc->n);
            memcpy(nv, sc->vals, sizeof(jv_t) * (size_t)sc->n);
        }
        sc->syms = ns;
        sc->vals = nv;
        sc->cap = cap;
    }
    sc->syms[sc->n] = sym;
    sc->vals[sc->n] = v;
    sc->n++;
}

/* callable builtins: globals, then methods bound to a value */
enum {
    FN_RANGE = 1, FN_NAMESPACE, FN_DICT, FN_RAISE, FN_STRFTIME,
    /* str methods */
    FN_S_STRIP, FN_S_LSTRIP, FN_S_RSTRIP, FN_S_SPLIT, FN_S_RSPLIT, FN_S_STARTSWITH, FN_S_ENDSWITH,
    FN_S_UPPER, FN_S_LOWER, FN_S_REPLACE, FN_S_TITLE, FN_S_CAPITALIZE, FN_S_FORMAT, FN_S_JOIN,
    FN_S_FIND, FN_S_RFIND, FN_S_COUNT, FN_S_SPLITLINES, FN_S_ISDIGIT, FN_S_ISALPHA, FN_S_ISALNUM,
    FN_S_ISSPACE, FN_S_ISLOWER, FN_S_ISUPPER, FN_S_CASEFOLD, FN_S_INDEX, FN_S_RINDEX,
    /* dict methods */
    FN_D_ITEMS, FN_D_KEYS, FN_D_VALUES, FN_D_GET, FN_D_COPY,
    /* list methods */
    FN_L_INDEX, FN_L_COUNT,
    /* loop methods */
    FN_LOOP_CYCLE, FN_LOOP_CHANGED,
    FN_UNSAFE, /* a modifying method the immutable sandbox refuses */
};

static const struct {
    const char *name;
    size_t len;
    int fn;
} STR_METHODS[] = {
    {"strip", 5, FN_S_STRIP}, {"lstrip", 6, FN_S_LSTRIP}, {"rstrip", 6, FN_S_RSTRIP}, {"split", 5, FN_S_SPLIT},
    {"rsplit", 6, FN_S_RSPLIT}, {"startswith", 10, FN_S_STARTSWITH}, {"endswith", 8, FN_S_ENDSWITH},
    {"upper", 5, FN_S_UPPER}, {"lower", 5, FN_S_LOWER}, {"replace", 7, FN_S_REPLACE}, {"title", 5, FN_S_TITLE},
    {"capitalize", 10, FN_S_CAPITALIZE}, {"format", 6, FN_S_FORMAT}, {"join", 4, FN_S_JOIN}, {"find", 4, FN_S_FIND},
    {"rfind", 5, FN_S_RFIND}, {"count", 5, FN_S_COUNT}, {"splitlines", 10, FN_S_SPLITLINES},
    {"isdigit", 7, FN_S_ISDIGIT}, {"isalpha", 7, FN_S_ISALPHA}, {"isalnum", 7, FN_S_ISALNUM},
    {"isspace", 7, FN_S_ISSPACE}, {"islower", 7, FN_S_ISLOWER}, {"isupper", 7, FN_S_ISUPPER},
    {"casefold", 8, FN_S_CASEFOLD}, {"index", 5, FN_S_INDEX}, {"rindex", 6, FN_S_RINDEX},
}, DICT_METHODS[] = {
    {"items", 5, FN_D_ITEMS}, {"keys", 4, FN_D_KEYS}, {"values", 6, FN_D_VALUES}, {"get", 3, FN_D_GET},
    {"copy", 4, FN_D_COPY}, {"pop", 3, FN_UNSAFE}, {"popitem", 7, FN_UNSAFE}, {"setdefault", 10, FN_UNSAFE},
    {"update", 6, FN_UNSAFE}, {"clear", 5, FN_UNSAFE},
}, LIST_METHODS[] = {
    {"index", 5, FN_L_INDEX}, {"count", 5, FN_L_COUNT}, {"append", 6, FN_UNSAFE}, {"extend", 6, FN_UNSAFE},
    {"insert", 6, FN_UNSAFE}, {"pop", 3, FN_UNSAFE}, {"remove", 6, FN_UNSAFE}, {"reverse", 7, FN_UNSAFE},
    {"sort", 4, FN_UNSAFE}, {"clear", 5, FN_UNSAFE},
};

#define FIND_METHOD(table, name, len, out)                                             \
    do {                                                                               \
        out = 0;                                                                       \
        for (size_t k_ = 0; k_ < PD_ARRAY_SIZE(table); k_++)                           \
            if (table[k_].len == (len) && memcmp(table[k_].name, name, len) == 0) {         \
                out = table[k_].fn;                                                    \
                break;                                                                 \
            }                                                                          \
    } while (0)

static jv_t v_func(rstate_t *R, int fn, const jv_t *self)
{
    jv_t v = {.t = JV_FUNC};
    v.aux = (uint32_t)fn;
    if (self) {
        jbound_t *b = ralloc(R, sizeof(*b));
        b->self = *self;
        b->method = fn;
        v.p = b;
    }
    return v;
}

static jv_t lookup(rstate_t *R, const scope_t *sc, const jnode_t *nd)
{
    int sym = nd->sym;
    for (; sc; sc = sc->parent)
        for (int k = 0; k < sc->n; k++)
            if (sc->syms[k] == sym)
                return sc->vals[k];
    switch (sym) {
    case G_RANGE: return v_func(R, FN_RANGE, NULL);
    case G_NAMESPACE: return v_func(R, FN_NAMESPACE, NULL);
    case G_DICT: return v_func(R, FN_DICT, NULL);
    case G_RAISE: return v_func(R, FN_RAISE, NULL);
    case G_STRFTIME: return v_func(R, FN_STRFTIME, NULL);
    default: return v_undef_name(nd->str);
    }
}

// ---- attribute and item access ----
static jv_t loop_attr(rstate_t *R, jv_t v, const char *name, size_t len)
{
    jloop_t *l = v.p;
#define IS(s) (len == sizeof(s) - 1 && memcmp(name, s, len) == 0)
    if (IS("index"))
        return v_int((int64_t)l->idx + 1);
    if (IS("index0"))
        return v_int((int64_t)l->idx);
    if (IS("revindex"))
        return v_int((int64_t)(l->n - l->idx));
    if (IS("revindex0"))
        return v_int((int64_t)(l->n - l->idx - 1));
    if (IS("first"))
        return v_bool(l->idx == 0);
    if (IS("last"))
        return v_bool(l->idx + 1 == l->n);
    if (IS("length"))
        return v_int((int64_t)l->n);
    if (IS("depth"))
        return v_int(l->depth);
    if (IS("depth0"))
        return v_int(l->depth - 1);
    if (IS("previtem"))
        return l->idx > 0 ? l->items[l->idx - 1] : v_undef_name("there is no previous item");
    if (IS("nextitem"))
        return l->idx + 1 < l->n ? l->items[l->idx + 1] : v_undef_name("there is no next item");
    if (IS("cycle"))
        return v_func(R, FN_LOOP_CYCLE, &v);
    if (IS("changed"))
        return v_func(R, FN_LOOP_CHANGED, &v);
#undef IS
    return v_undef_attr(name, JV_LOOP);
}

/* getattr(obj, name) as the sandbox does it, falling back to obj[name] */
static jv_t get_attr(rstate_t *R, jv_t obj, const char *name, size_t len)
{
    int fn;
    switch (obj.t) {
    case JV_UNDEF:
        undef_fail(R, obj);
    case JV_DICT: {
        FIND_METHOD(DICT_METHODS, name, len, fn);
        if (fn == FN_UNSAFE)
            return v_undef_attr(name, JV_DICT);
        if (fn)
            return v_func(R, fn, &obj);
        long k = dict_find_str(DCT(obj), name, len);
        return k >= 0 ? DCT(obj)->vals[k] : v_undef_attr(name, JV_DICT);
    }
    case JV_NS: {
        long k = dict_find_str(DCT(obj), name, len);
        return k >= 0 ? DCT(obj)->vals[k] : v_undef_attr(name, JV_NS);
    }
    case JV_STR:
        FIND_METHOD(STR_METHODS, name, len, fn);
        if (fn)
            return v_func(R, fn, &obj);
        return v_undef_attr(name, JV_STR);
    case JV_LIST:
        if (obj.aux & JV_AUX_GROUP) {
            if (len == 7 && memcmp(name, "grouper", 7) == 0)
                return LST(obj)->items[0];
            if (len == 4 && memcmp(name, "list", 4) == 0)
                return LST(obj)->items[1];
        }
        FIND_METHOD(LIST_METHODS, name, len, fn);
        if (fn && fn != FN_UNSAFE)
            return v_func(R, fn, &obj);
        return v_undef_attr(name, JV_LIST);
    case JV_LOOP:
        return loop_attr(R, obj, name, len);
    default:
        return v_undef_attr(name, obj.t);
    }
}

static int64_t to_index(rstate_t *R, jv_t v)
{
    if (v.t == JV_INT || v.t == JV_BOOL)
        return v.i;
    if (v.t == JV_NONE)
        return INT64_MIN;
    RERR(R, "slice indices must be integers or None");
}

static jv_t get_item(rstate_t *R, jv_t obj, jv_t key)
{
    switch (obj.t) {
    case JV_UNDEF:
        undef_fail(R, obj);
    case JV_DICT: {
        long k = dict_find(R, DCT(obj), key);
        if (k >= 0)
            return DCT(obj)->vals[k];
        break;
    }
    case JV_LIST:
    case JV_STR:
        if (obj.t == JV_LIST && (obj.aux & (JV_AUX_GEN | JV_AUX_VIEW_MASK)))
            return v_undef_attr("item", JV_LIST); /* generators and dict views are not subscriptable */
        if (key.t == JV_INT || key.t == JV_BOOL) {
            int64_t i = key.i;
            if (obj.t == JV_LIST) {
                int64_t n = (int64_t)LST(obj)->n;
                if (i < 0)
                    i += n;
                if (i < 0 || i >= n)
                    return v_undef_attr("index", JV_LIST);
                return LST(obj)->items[i];
            }
            int ascii = is_ascii(obj.s, obj.n);
            int64_t n = ascii ? (int64_t)obj.n : (int64_t)u8_len(obj.s, obj.n);
            if (i < 0)
                i += n;
            if (i < 0 || i >= n)
                return v_undef_attr("index", JV_STR);
            if (ascii)
                return v_str(obj.s + i, 1);
            size_t off = u8_offset(obj.s, obj.n, (size_t)i), end = off;
            u8_next(obj.s, obj.n, &end);
            return v_str(obj.s + off, end - off);
        }
        break;
    default:
        break;
    }
    if (key.t == JV_STR) {
        char *name = ralloc(R, key.n + 1);
        memcpy(name, key.s, key.n);
        name[key.n] = '\0';
        return get_attr(R, obj, name, key.n);
    }
    return v_undef_attr("item", obj.t);
}

/* Python slice index normalisation */
static void slice_bounds(int64_t n, int64_t *start, int64_t *stop, int64_t step)
{
    if (*start == INT64_MIN)
        *start = step < 0 ? n - 1 : 0;
    else {
        if (*start < 0)
            *start += n;
        if (*start < 0)
            *start = step < 0 ? -1 : 0;
        if (*start >= n)
            *start = step < 0 ? n - 1 : n;
    }
    if (*stop == INT64_MIN)
        *stop = step < 0 ? -1 : n;
    else {
        if (*stop < 0)
            *stop += n;
        if (*stop < 0)
            *stop = step < 0 ? -1 : 0;
        if (*stop >= n)
            *stop = step < 0 ? n - 1 : n;
    }
}

static jv_t do_slice(rstate_t *R, jv_t obj, jv_t a, jv_t b, jv_t c)
{
    int64_t start = to_index(R, a), stop = to_index(R, b), stp = to_index(R, c);
    if (stp == INT64_MIN)
        stp = 1;
    if (stp == 0)
        RERR(R, "slice step cannot be zero");
    if (obj.t == JV_UNDEF)
        undef_fail(R, obj);
    if (is_gen(obj))
        return v_undef_attr("item", JV_LIST);
    if (obj.t == JV_LIST) {
        jlist_t *l = LST(obj);
        slice_bounds((int64_t)l->n, &start, &stop, stp);
        lbuild_t lb = {0};
        for (int64_t i = start; stp > 0 ? i < stop : i > stop; i += stp)
            lb_push(R, &lb, l->items[i]);
        return lb_finish(&lb, R, obj.aux & JV_AUX_TUPLE);
    }
    if (obj.t == JV_STR) {
        if (is_ascii(obj.s, obj.n)) {
            slice_bounds((int64_t)obj.n, &start, &stop, stp);
            if (stp == 1)
                return stop > start ? v_str(obj.s + start, (size_t)(stop - start)) : v_str("", 0);
            char *o = ralloc(R, obj.n + 1);
            size_t k = 0;
            for (int64_t i = start; stp > 0 ? i < stop : i > stop; i += stp)
                o[k++] = obj.s[i];
            return v_str(o, k);
        }
        /* decode to code points */
        size_t n = 0, i = 0;
        uint32_t *cps = ralloc(R, (obj.n + 1) * sizeof(uint32_t));
        while (i < obj.n)
            cps[n++] = u8_next(obj.s, obj.n, &i);
        slice_bounds((int64_t)n, &start, &stop, stp);
        char *o = ralloc(R, obj.n + 1);
        size_t k = 0;
        for (int64_t q = start; stp > 0 ? q < stop : q > stop; q += stp)
            k += (size_t)u8_put(o + k, cps[q]);
        return v_str(o, k);
    }
    RERR(R, "'%s' object is not subscriptable", type_name(obj.t));
}

/* list(v): the items iterating v yields */
static void iter_items(rstate_t *R, jv_t v, jv_t **items_p, size_t *n_p)
{
    switch (v.t) {
    case JV_UNDEF:
        *items_p = NULL;
        *n_p = 0;
        return;
    case JV_LIST:
        if (is_gen(v)) {
            jlist_t *l = LST(v);
            if (l->err)
                rfail(R, PD_ERR_INVAL, 0, "%s", l->err);
            *items_p = l->items ? l->items + l->pos : NULL;
            *n_p = l->n - l->pos;
            l->pos = l->n;
            return;
        }
        *items_p = LST(v)->items;
        *n_p = LST(v)->n;
        return;
    case JV_DICT:
        *items_p = DCT(v)->keys;
        *n_p = DCT(v)->n;
        return;
    case JV_STR: {
        size_t n = 0, i = 0;
        jv_t *out = ralloc(R, (v.n + 1) * sizeof(jv_t));
        while (i < v.n) {
            size_t s = i;
            u8_next(v.s, v.n, &i);
            out[n++] = v_str(v.s + s, i - s);
        }
        *items_p = out;
        *n_p = n;
        return;
    }
    default:
        RERR(R, "'%s' object is not iterable", type_name(v.t));
    }
}

static jv_t list_of(rstate_t *R, jv_t *items, size_t n)
{
    jv_t l = v_list(R, n);
    if (n)
        memcpy(LST(l)->items, items, n * sizeof(jv_t));
    return l;
}

static int contains(rstate_t *R, jv_t container, jv_t item)
{
    switch (container.t) {
    case JV_STR:
        if (item.t != JV_STR)
            RERR(R, "'in <string>' requires string as left operand, not %s", type_name(item.t));
        if (item.n == 0)
            return 1;
        return memmem(container.s, container.n, item.s, item.n) != NULL;
    case JV_LIST: {
        jlist_t *l = LST(container);
        size_t start = is_gen(container) ? l->pos : 0;
        if ((container.aux & JV_AUX_VIEW_MASK) != 0 && (container.aux & JV_AUX_VIEW_MASK) != JV_AUX_VALUES &&
            ((item.t == JV_LIST && !(item.aux & JV_AUX_TUPLE)) || item.t == JV_DICT || item.t == JV_NS))
            RERR(R, "unhashable type: '%s'", type_name(item.t));
        if (l->err)
            rfail(R, PD_ERR_INVAL, 0, "%s", l->err);
        for (size_t k = start; k < l->n; k++)
            if (jv_eq(R, l->items[k], item, 0)) {
                if (is_gen(container))
                    l->pos = k + 1;
                return 1;
            }
        if (is_gen(container))
            l->pos = l->n;
        return 0;
    }
    case JV_DICT:
    case JV_NS:
        if ((item.t == JV_LIST && !(item.aux & JV_AUX_TUPLE)) || item.t == JV_DICT || item.t == JV_NS)
            RERR(R, "unhashable type: '%s'", is_gen(item) ? "generator" : type_name(item.t));
        return dict_find(R, DCT(container), item) >= 0;
    case JV_UNDEF:
        return 0;
    default:
        RERR(R, "argument of type '%s' is not iterable", type_name(container.t));
    }
}

// ---- operators ----
static jv_t repeat(rstate_t *R, jv_t seq, int64_t times)
{
    if (times < 0)
        times = 0;
    if (seq.t == JV_STR) {
        size_t total;
        if (pd_mul_size(seq.n, (size_t)times, &total) != PD_OK || total > R->mem_limit)
            rfail(R, PD_ERR_LIMIT, R->line, "string repetition too large");
        char *o = ralloc(R, total + 1);
        for (int64_t k = 0; k < times; k++)
            memcpy(o + (size_t)k * seq.n, seq.s, seq.n);
        return v_str(o, total);
    }
    jlist_t *l = LST(seq);
    size_t total;
    if (pd_mul_size(l->n, (size_t)times, &total) != PD_OK || total > R->mem_limit / sizeof(jv_t))
        rfail(R, PD_ERR_LIMIT, R->line, "list repetition too large");
    jv_t out = v_list(R, total);
    for (int64_t k = 0; k < times; k++)
        if (l->n)
            memcpy(LST(out)->items + (size_t)k * l->n, l->items, l->n * sizeof(jv_t));
    out.aux = seq.aux & JV_AUX_TUPLE;
    return out;
}

static jv_t py_format_percent(rstate_t *R, jv_t fmt, jv_t args);
static jv_t html_escape(rstate_t *R, jv_t s);

static const char *op_sym(int op)
{
    switch (op) {
    case OP_ADD: return "+";
    case OP_SUB: return "-";
    case OP_MUL: return "*";
    case OP_DIV: return "/";
    case OP_FLOORDIV: return "//";
    case OP_MOD: return "%";
    case OP_POW: return "**";
    default: return "?";
    }
}

static jv_t binop(rstate_t *R, int op, jv_t a, jv_t b)
{
    /* str % Undefined: Undefined looks like a mapping to Python's % formatting */
    if (op == OP_MOD && a.t == JV_STR && b.t == JV_UNDEF)
        return py_format_percent(R, a, b);
    if (a.t == JV_UNDEF)
        undef_fail(R, a);
    if (b.t == JV_UNDEF)
        undef_fail(R, b);
    if (is_gen(a) || is_gen(b) || (a.t == JV_LIST && (a.aux & JV_AUX_VIEW_MASK)) ||
        (b.t == JV_LIST && (b.aux & JV_AUX_VIEW_MASK)))
        RERR(R, "unsupported operand type(s) for %s: '%s' and '%s'", op_sym(op), is_gen(a) ? "generator" : type_name(a.t),
             is_gen(b) ? "generator" : type_name(b.t));
    if (is_num(a) && is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT) {
            int64_t x = a.i, y = b.i, r;
            switch (op) {
            case OP_ADD:
                if (__builtin_add_overflow(x, y, &r))
                    RERR(R, "integer overflow");
                return v_int(r);
            case OP_SUB:
                if (__builtin_sub_overflow(x, y, &r))
                    RERR(R, "integer overflow");
                return v_int(r);
            case OP_MUL:
                if (__builtin_mul_overflow(x, y, &r))
                    RERR(R, "integer overflow");
                return v_int(r);
            case OP_DIV:
                if (y == 0)
                    RERR(R, "division by zero");
                return v_float((double)x / (double)y);
            case OP_FLOORDIV:
            case OP_MOD: {
                if (y == 0)
                    RERR(R, "integer division or modulo by zero");
                if (x == INT64_MIN && y == -1)
                    RERR(R, "integer overflow");
                int64_t q = x / y, m = x % y;
                if (m != 0 && ((m < 0) != (y < 0))) {
                    q--;
                    m += y;
                }
                return v_int(op == OP_MOD ? m : q);
            }
            case OP_POW: {
                if (y < 0) {
                    if (x == 0)
                        RERR(R, "0.0 cannot be raised to a negative power");
                    return v_float(pow((double)x, (double)y));
                }
                int64_t acc = 1, base = x;
                for (int64_t e = y; e > 0; e >>= 1) {
                    if (e & 1)
                        if (__builtin_mul_overflow(acc, base, &acc))
                            RERR(R, "integer overflow");
                    if (e > 1 && __builtin_mul_overflow(base, base, &base))
                        RERR(R, "integer overflow");
                }
                return v_int(acc);
            }
            default: break;
            }
        } else {
            double x = num_f(a), y = num_f(b);
            switch (op) {
            case OP_ADD: return v_float(x + y);
            case OP_SUB: return v_float(x - y);
            case OP_MUL: return v_float(x * y);
            case OP_DIV:
                if (y == 0)
                    RERR(R, "float division by zero");
                return v_float(x / y);
            case OP_FLOORDIV:
            case OP_MOD: {
                if (y == 0)
                    RERR(R, "float modulo");
                double m = fmod(x, y);
                if (m != 0 && ((m < 0) != (y < 0)))
                    m += y;
                if (op == OP_MOD)
                    return v_float(m);
                double div = (x - m) / y, fl = floor(div);
                if (div - fl > 0.5)
                    fl += 1;
                return v_float(fl);
            }
            case OP_POW: {
                double pr = pow(x, y);
                if (isinf(pr) && isfinite(x) && isfinite(y))
                    RERR(R, "(34, 'Numerical result out of range')");
                return v_float(pr);
            }
            default: break;
            }
        }
    }
    if (op == OP_ADD && a.t == JV_STR && b.t == JV_STR) {
        size_t total;
        if ((a.aux ^ b.aux) & JV_AUX_MARKUP) {
            /* Markup + str escapes the str; the result is Markup */
            if (!(a.aux & JV_AUX_MARKUP))
                a = html_escape(R, a);
            else
                b = html_escape(R, b);
        }
        if (pd_add_size(a.n, b.n, &total) != PD_OK)
            RERR(R, "string too long");
        char *o = ralloc(R, total + 1);
        memcpy(o, a.s, a.n);
        memcpy(o + a.n, b.s, b.n);
        o[total] = '\0';
        jv_t r = v_str(o, total);
        r.aux = (a.aux | b.aux) & JV_AUX_MARKUP;
        return r;
    }
    if (op == OP_ADD && a.t == JV_LIST && b.t == JV_LIST && (a.aux & JV_AUX_TUPLE) == (b.aux & JV_AUX_TUPLE)) {
        jlist_t *x = LST(a), *y = LST(b);
        jv_t out = v_list(R, x->n + y->n);
        if (x->n)
            memcpy(LST(out)->items, x->items, x->n * sizeof(jv_t));
        if (y->n)
            memcpy(LST(out)->items + x->n, y->items, y->n * sizeof(jv_t));
        out.aux = a.aux & JV_AUX_TUPLE;
        return out;
    }
    if (op == OP_MUL && (a.t == JV_STR || a.t == JV_LIST) && (b.t == JV_INT || b.t == JV_BOOL))
        return repeat(R, a, b.i);
    if (op == OP_MUL && (b.t == JV_STR || b.t == JV_LIST) && (a.t == JV_INT || a.t == JV_BOOL))
        return repeat(R, b, a.i);
    if (op == OP_MOD && a.t == JV_STR)
        return py_format_percent(R, a, b);
    if (op == OP_ADD && a.t == JV_STR)
        RERR(R, "can only concatenate str (not \"%s\") to str", type_name(b.t));
    RERR(R, "unsupported operand type(s) for %s: '%s' and '%s'", op_sym(op), type_name(a.t), type_name(b.t));
}

// ---- call arguments ----
typedef struct cargs {
    jv_t *pos;
    int npos;
    const char **kwn;
    jv_t *kwv;
    int nkw;
} cargs_t;

static int arg_get(const cargs_t *a, int idx, const char *name, jv_t *out)
{
    if (idx >= 0 && idx < a->npos) {
        *out = a->pos[idx];
        return 1;
    }
    for (int k = 0; k < a->nkw; k++)
        if (name && strcmp(a->kwn[k], name) == 0) {
            *out = a->kwv[k];
            return 1;
        }
    return 0;
}

static jv_t arg_or(const cargs_t *a, int idx, const char *name, jv_t def)
{
    jv_t v;
    return arg_get(a, idx, name, &v) ? v : def;
}

static const char *cstr_of(rstate_t *R, jv_t s)
{
    char *o = ralloc(R, s.n + 1);
    memcpy(o, s.s, s.n);
    o[s.n] = '\0';
    return o;
}

static jv_t need_str(rstate_t *R, jv_t v, const char *what)
{
    if (v.t == JV_UNDEF)
        undef_fail(R, v);
    if (v.t != JV_STR)
        RERR(R, "%s must be a string, not %s", what, type_name(v.t));
    return v;
}

static int64_t need_int(rstate_t *R, jv_t v, const char *what)
{
    if (v.t == JV_UNDEF)
        undef_fail(R, v);
    if (v.t != JV_INT && v.t != JV_BOOL)
        RERR(R, "%s must be an integer, not %s", what, type_name(v.t));
    return v.i;
}

// ---- string helpers (Python str methods) ----
static int in_chars(uint32_t c, jv_t chars)
{
    size_t i = 0;
    while (i < chars.n)
        if (u8_next(chars.s, chars.n, &i) == c)
            return 1;
    return 0;
}

/* which: 1 left, 2 right, 3 both; chars NONE/UNDEF = whitespace */
static jv_t str_strip(rstate_t *R, jv_t s, jv_t chars, int which)
{
    int ws = chars.t != JV_STR;
    if (!ws && chars.t == JV_STR && 0)
        return s;
    size_t b = 0, e = s.n;
    if (which & 1) {
        while (b < e) {
            size_t i = b;
            uint32_t c = u8_next(s.s, e, &i);
            if (ws ? !py_space(c) : !in_chars(c, chars))
                break;
            b = i;
        }
    }
    if (which & 2) {
        while (e > b) {
            size_t st = e - 1;
            while (st > b && ((unsigned char)s.s[st] & 0xC0) == 0x80)
                st--;
            size_t i = st;
            uint32_t c = u8_next(s.s, e, &i);
            if (ws ? !py_space(c) : !in_chars(c, chars))
                break;
            e = st;
        }
    }
    (void)R;
    return v_str(s.s + b, e - b);
}

static const char *find_sub(const char *h, size_t hn, const char *nd, size_t nn)
{
    if (nn == 0)
        return h;
    return memmem(h, hn, nd, nn);
}

static jv_t str_split(rstate_t *R, jv_t s, jv_t sep, int64_t maxsplit)
{
    lbuild_t lb = {0};
    if (sep.t != JV_STR) {
        size_t i = 0;
        for (;;) {
            /* skip whitespace */
            while (i < s.n) {
                size_t q = i;
                if (!py_space(u8_next(s.s, s.n, &q)))
                    break;
                i = q;
            }
            if (i >= s.n)
                break;
            if (maxsplit >= 0 && (int64_t)lb.n >= maxsplit) {
                size_t e = s.n;
                jv_t rest = str_strip(R, v_str(s.s + i, e - i), V_NONE_, 2);
                lb_push(R, &lb, rest);
                break;
            }
            size_t st = i;
            while (i < s.n) {
                size_t q = i;
                if (py_space(u8_next(s.s, s.n, &q)))
                    break;
                i = q;
            }
            lb_push(R, &lb, v_str(s.s + st, i - st));
        }
        return lb_finish(&lb, R, 0);
    }
    if (sep.n == 0)
        RERR(R, "empty separator");
    size_t i = 0;
    for (;;) {
        const char *f = (maxsplit < 0 || (int64_t)lb.n < maxsplit) ? find_sub(s.s + i, s.n - i, sep.s, sep.n) : NULL;
        if (!f) {
            lb_push(R, &lb, v_str(s.s + i, s.n - i));
            break;
        }
        lb_push(R, &lb, v_str(s.s + i, (size_t)(f - (s.s + i))));
        i = (size_t)(f - s.s) + sep.n;
    }
    return lb_finish(&lb, R, 0);
}

static jv_t str_rsplit(rstate_t *R, jv_t s, jv_t sep, int64_t maxsplit)
{
    if (sep.t != JV_STR || maxsplit < 0)
        return str_split(R, s, sep, maxsplit);
    if (sep.n == 0)
        RERR(R, "empty separator");
    /* collect from the right, then reverse */
    lbuild_t lb = {0};
    size_t e = s.n;
    while ((int64_t)lb.n < maxsplit) {
        const char *found = NULL;
        for (size_t q = e >= sep.n ? e - sep.n + 1 : 0; q-- > 0;)
            if (memcmp(s.s + q, sep.s, sep.n) == 0) {
                found = s.s + q;
                break;
            }
        if (!found)
            break;
        size_t at = (size_t)(found - s.s);
        lb_push(R, &lb, v_str(s.s + at + sep.n, e - at - sep.n));
        e = at;
    }
    lb_push(R, &lb, v_str(s.s, e));
    for (size_t a = 0, b = lb.n - 1; a < b; a++, b--) {
        jv_t t = lb.v[a];
        lb.v[a] = lb.v[b];
        lb.v[b] = t;
    }
    return lb_finish(&lb, R, 0);
}

static jv_t str_replace(rstate_t *R, jv_t s, jv_t old, jv_t new_, int64_t count)
{
    pd_buf_reset(&R->tmp);
    int64_t done = 0;
    if (old.n == 0) {
        /* Python inserts new before every code point and at the end */
        size_t i = 0;
        for (;;) {
            if (count < 0 || done < count) {
                bput(R, &R->tmp, new_.s, new_.n);
                done++;
            }
            if (i >= s.n)
                break;
            size_t st = i;
            u8_next(s.s, s.n, &i);
            bput(R, &R->tmp, s.s + st, i - st);
        }
        return v_strdup(R, R->tmp.data ? R->tmp.data : "", R->tmp.len);
    }
    size_t i = 0;
    for (;;) {
        const char *f = (count < 0 || done < count) ? find_sub(s.s + i, s.n - i, old.s, old.n) : NULL;
        if (!f) {
            bput(R, &R->tmp, s.s + i, s.n - i);
            break;
        }
        bput(R, &R->tmp, s.s + i, (size_t)(f - (s.s + i)));
        bput(R, &R->tmp, new_.s, new_.n);
        i = (size_t)(f - s.s) + old.n;
        done++;
    }
    return v_strdup(R, R->tmp.data ? R->tmp.data : "", R->tmp.len);
}

static int is_line_break(uint32_t c)
{
    return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1E) || c == 0x85 ||
           c == 0x2028 || c == 0x2029;
}

static jv_t str_splitlines(rstate_t *R, jv_t s)
{
    lbuild_t lb = {0};
    size_t i = 0, st = 0;
    while (i < s.n) {
        size_t q = i;
        uint32_t c = u8_next(s.s, s.n, &q);
        if (is_line_break(c)) {
            lb_push(R, &lb, v_str(s.s + st, i - st));
            if (c == '\r' && q < s.n && s.s[q] == '\n')
                q++;
            st = q;
        }
        i = q;
    }
    if (st < s.n)
        lb_push(R, &lb, v_str(s.s + st, s.n - st));
    return lb_finish(&lb, R, 0);
}

static int prefix_match(rstate_t *R, jv_t s, jv_t pre, int suffix)
{
    if (pre.t == JV_LIST && (pre.aux & JV_AUX_TUPLE)) {
        for (size_t k = 0; k < LST(pre)->n; k++)
            if (prefix_match(R, s, LST(pre)->items[k], suffix))
                return 1;
        return 0;
    }
    if (pre.t != JV_STR)
        RERR(R, "%s first arg must be str or a tuple of str, not %s", suffix ? "endswith" : "startswith",
             type_name(pre.t));
    if (pre.n > s.n)
        return 0;
    return memcmp(suffix ? s.s + s.n - pre.n : s.s, pre.s, pre.n) == 0;
}

static jv_t html_escape(rstate_t *R, jv_t s)
{
    pd_buf_reset(&R->tmp);
    for (size_t i = 0; i < s.n; i++) {
        switch (s.s[i]) {
        case '&': bputs(R, &R->tmp, "&amp;"); break;
        case '<': bputs(R, &R->tmp, "&lt;"); break;
        case '>': bputs(R, &R->tmp, "&gt;"); break;
        case '"': bputs(R, &R->tmp, "&#34;"); break;
        case '\'': bputs(R, &R->tmp, "&#39;"); break;
        default: bput(R, &R->tmp, s.s + i, 1);
        }
    }
    return v_strdup(R, R->tmp.data ? R->tmp.data : "", R->tmp.len);
}

/* Python int(str, base) for base 10 (and base 0/2/8/16 prefixes) */
static int parse_py_int(const char *s, size_t n, int base, int64_t *out)
{
    size_t i = 0;
    while (i < n && py_space((unsigned char)s[i]))
        i++;
    while (n > i && py_space((unsigned char)s[n - 1]))
        n--;
    int neg = 0;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        neg = s[i++] == '-';
    if ((base == 0 || base == 16 || base == 8 || base == 2) && i + 1 < n && s[i] == '0') {
        char p = (char)(s[i + 1] | 0x20);
        int pb = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
        if (pb && (base == 0 || base == pb)) {
            base = pb;
            i += 2;
            if (i < n && s[i] == '_')
                i++;
        }
    }
    if (base == 0)
        base = 10;
    if (i >= n)
        return 0;
    int64_t v = 0;
    int prev_us = 1;
    for (; i < n; i++) {
        if (s[i] == '_') {
            if (prev_us)
                return 0;
            prev_us = 1;
            continue;
        }
        int d = (s[i] >= '0' && s[i] <= '9') ? s[i] - '0' : ((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z') ? (s[i] | 0x20) - 'a' + 10 : 99;
        if (d >= base)
            return 0;
        if (__builtin_mul_overflow(v, base, &v) || __builtin_add_overflow(v, d, &v))
            return 0;
        prev_us = 0;
    }
    if (prev_us)
        return 0;
    *out = neg ? -v : v;
    return 1;
}

static int parse_py_float(const char *s, size_t n, double *out)
{
    char buf[128];
    size_t i = 0, k = 0;
    while (i < n && py_space((unsigned char)s[i]))
        i++;
    while (n > i && py_space((unsigned char)s[n - 1]))
        n--;
    if (i >= n || n - i >= sizeof(buf))
        return 0;
    for (; i < n; i++)
        if (s[i] != '_')
            buf[k++] = s[i];
    buf[k] = '\0';
    char *end;
    double v = strtod(buf, &end);
    if (*end != '\0' || end == buf)
        return 0;
    /* strtod accepts hex floats and "infinity"/"nan(...)"; Python float() accepts inf/nan too */
    if (strchr(buf, 'x') || strchr(buf, 'X') || strchr(buf, '('))
        return 0;
    *out = v;
    return 1;
}

// ---- Python formatting: str % args and str.format ----
#define FMT_MAX_WIDTH (1L << 20)
#define FMT_MAX_PREC 300
static void pad_to(rstate_t *R, pd_buf_t *b, jv_t s, long width, char align, uint32_t fill)
{
    long len = (long)u8_len(s.s, s.n);
    long pad = width > len ? width - len : 0;
    char f[4];
    int fl = u8_put(f, fill);
    long left = align == '>' ? pad : align == '^' ? pad / 2 : 0;
    long right = pad - left;
    for (long k = 0; k < left; k++)
        bput(R, b, f, (size_t)fl);
    bput(R, b, s.s, s.n);
    for (long k = 0; k < right; k++)
        bput(R, b, f, (size_t)fl);
}

static jv_t fmt_number(rstate_t *R, jv_t v, char type, int prec)
{
    char buf[512];
    if (type == 'd' || type == 'i') {
        if (v.t == JV_FLOAT && !isfinite(v.f))
            RERR(R, "cannot convert float %s to integer", isnan(v.f) ? "NaN" : "infinity");
        if (v.t == JV_FLOAT && fabs(v.f) >= 9.2e18)
            snprintf(buf, sizeof(buf), "%.0f", trunc(v.f)); /* the exact integer value, as int() gives */
        else if (v.t == JV_FLOAT)
            snprintf(buf, sizeof(buf), "%lld", (long long)v.f);
        else
            snprintf(buf, sizeof(buf), "%lld", (long long)v.i);
    } else if (type == 'f' || type == 'F' || type == 'e' || type == 'E' || type == 'g' || type == 'G') {
        char spec[8] = {'%', '.', '*', type, 0};
        snprintf(buf, sizeof(buf), spec, prec < 0 ? 6 : prec, num_f(v));
    } else {
        RERR(R, "unsupported format character '%c'", type);
    }
    return v_strdup(R, buf, strlen(buf));
}

static jv_t py_format_percent(rstate_t *R, jv_t fmt, jv_t args)
{
    jv_t *items = &args;
    size_t n = 1, used = 0;
    if (args.t == JV_LIST && (args.aux & JV_AUX_TUPLE)) {
        items = LST(args)->items;
        n = LST(args)->n;
    }
    pd_buf_t *out = scratch_push(R);
    for (size_t i = 0; i < fmt.n; i++) {
        char c = fmt.s[i];
        if (c != '%') {
            bput(R, out, &fmt.s[i], 1);
            continue;
        }
        if (++i >= fmt.n)
            RERR(R, "incomplete format");
        jv_t arg = V_UNDEFINED;
        if (fmt.s[i] == '(') {
            size_t e = i + 1;
            while (e < fmt.n && fmt.s[e] != ')')
                e++;
            if (e >= fmt.n || args.t != JV_DICT)
                RERR(R, "format requires a mapping");
            long k = dict_find_str(DCT(args), fmt.s + i + 1, e - i - 1);
            if (k < 0)
                RERR(R, "format key not found");
            arg = DCT(args)->vals[k];
            i = e + 1;
        }
        char align = '>';
        long width = 0;
        int prec = -1, zero = 0;
        while (i < fmt.n && strchr("-+ #0", fmt.s[i])) {
            if (fmt.s[i] == '-')
                align = '<';
            if (fmt.s[i] == '0')
                zero = 1;
            i++;
        }
        while (i < fmt.n && fmt.s[i] >= '0' && fmt.s[i] <= '9')
            if ((width = width * 10 + (fmt.s[i++] - '0')) > FMT_MAX_WIDTH)
                RERR(R, "format width too large");
        if (i < fmt.n && fmt.s[i] == '.') {
            prec = 0;
            i++;
            while (i < fmt.n && fmt.s[i] >= '0' && fmt.s[i] <= '9')
                if ((prec = prec * 10 + (fmt.s[i++] - '0')) > FMT_MAX_PREC)
                    RERR(R, "format precision too large");
        }
        if (i >= fmt.n)
            RERR(R, "incomplete format");
        char t = fmt.s[i];
        if (t == '%') {
            bput(R, out, "%", 1);
            continue;
        }
        if (arg.t == JV_UNDEF) {
            if (used >= n)
                RERR(R, "not enough arguments for format string");
            arg = items[used++];
        }
        jv_t piece;
        if (t == 's')
            piece = to_str(R, arg);
        else if (t == 'r') {
            piece = repr_value(R, arg);
        } else {
            if (!is_num(arg))
                RERR(R, "%%%c format: a real number is required, not %s", t, type_name(arg.t));
            piece = fmt_number(R, arg, t, prec);
        }
        if (zero && align == '>' && t != 's' && t != 'r' && piece.n > 0 && (long)piece.n < width) {
            /* zero padding goes after the sign */
            size_t sign = piece.s[0] == '-' || piece.s[0] == '+';
            bput(R, out, piece.s, sign);
            for (long k = (long)piece.n; k < width; k++)
                bput(R, out, "0", 1);
            bput(R, out, piece.s + sign, piece.n - sign);
        } else {
            pad_to(R, out, piece, width, align, ' ');
        }
    }
    /* like CPython, a list or dict argument (a "mapping") is never "left over" */
    if (args.t != JV_DICT && args.t != JV_UNDEF && used < n && !(args.t == JV_LIST && !(args.aux & JV_AUX_TUPLE)))
        RERR(R, "not all arguments converted during string formatting");
    return scratch_pop(R);
}

static jv_t py_str_format(rstate_t *R, jv_t fmt, const cargs_t *a)
{
    pd_buf_t *bb = scratch_push(R);
    int auto_idx = 0;
    jv_t result;
    for (size_t i = 0; i < fmt.n; i++) {
        char c = fmt.s[i];
        if (c == '}' ) {
            if (i + 1 < fmt.n && fmt.s[i + 1] == '}')
                i++;
            else {
                RERR(R, "single '}' encountered in format string");
            }
            bput(R, bb, "}", 1);
            continue;
        }
        if (c != '{') {
            bput(R, bb, &fmt.s[i], 1);
            continue;
        }
        if (i + 1 < fmt.n && fmt.s[i + 1] == '{') {
            bput(R, bb, "{", 1);
            i++;
            continue;
        }
        size_t e = i + 1;
        while (e < fmt.n && fmt.s[e] != '}')
            e++;
        if (e >= fmt.n) {
            RERR(R, "expected '}' before end of string");
        }
        const char *f = fmt.s + i + 1;
        size_t fl = e - i - 1, nl = 0;
        while (nl < fl && f[nl] != ':' && f[nl] != '!')
            nl++;
        jv_t arg;
        if (nl == 0) {
            if (!arg_get(a, auto_idx++, NULL, &arg)) {
                RERR(R, "Replacement index %d out of range for positional args tuple", auto_idx - 1);
            }
        } else if (f[0] >= '0' && f[0] <= '9') {
            long idx_l = strtol(f, NULL, 10);
            int idx = idx_l > 1000000 ? 1000000 : (int)idx_l;
            if (!arg_get(a, idx, NULL, &arg)) {
                RERR(R, "Replacement index %d out of range for positional args tuple", idx);
            }
        } else {
            char name[64];
            snprintf(name, sizeof(name), "%.*s", (int)PD_MIN(nl, 63), f);
            if (!arg_get(a, -1, name, &arg)) {
                RERR(R, "format key '%s' not found", name);
            }
        }
        size_t q = nl;
        int conv_repr = 0;
        if (q < fl && f[q] == '!') {
            conv_repr = q + 1 < fl && f[q + 1] == 'r';
            q += 2;
        }
        jv_t piece;
        if (conv_repr) {
            piece = repr_value(R, arg);
        } else {
            piece = arg;
        }
        if (q < fl && f[q] == ':') {
            /* [[fill]align][width][.prec][type] */
            const char *sp = f + q + 1;
            size_t sl = fl - q - 1, k = 0;
            char align = 0;
            uint32_t fill = ' ';
            if (sl >= 2 && strchr("<>^", sp[1])) {
                fill = (unsigned char)sp[0];
                align = sp[1];
                k = 2;
            } else if (sl >= 1 && strchr("<>^", sp[0])) {
                align = sp[0];
                k = 1;
            }
            long width = 0;
            int prec = -1;
            while (k < sl && sp[k] >= '0' && sp[k] <= '9')
                if ((width = width * 10 + (sp[k++] - '0')) > FMT_MAX_WIDTH)
                    RERR(R, "format width too large");
            if (k < sl && sp[k] == '.') {
                prec = 0;
                k++;
                while (k < sl && sp[k] >= '0' && sp[k] <= '9')
                    if ((prec = prec * 10 + (sp[k++] - '0')) > FMT_MAX_PREC)
                        RERR(R, "format precision too large");
            }
            char type = k < sl ? sp[k] : 0;
            if (type && type != 's' && is_num(piece))
                piece = fmt_number(R, piece, type, prec);
            else
                piece = to_str(R, piece);
            if (!align)
                align = is_num(arg) && !type ? '>' : (type && type != 's') ? '>' : '<';
            pad_to(R, bb, piece, width, align, fill);
        } else {
            write_str(R, bb, piece, 0);
        }
        i = e;
    }
    result = scratch_pop(R);
    return result;
}

// ---- filters and tests ----
#define JINJA_FILTERS(X)                                                               \
    X(F_ABS, "abs") X(F_ATTR, "attr") X(F_BATCH, "batch") X(F_CAPITALIZE, "capitalize") \
    X(F_CENTER, "center") X(F_COUNT, "count") X(F_D, "d") X(F_DEFAULT, "default")       \
    X(F_DICTSORT, "dictsort") X(F_E, "e") X(F_ESCAPE, "escape") X(F_FIRST, "first")     \
    X(F_FLOAT, "float") X(F_FORCEESCAPE, "forceescape") X(F_FORMAT, "format")           \
    X(F_INDENT, "indent") X(F_INT, "int") X(F_ITEMS, "items") X(F_JOIN, "join")         \
    X(F_LAST, "last") X(F_LENGTH, "length") X(F_LIST, "list") X(F_LOWER, "lower")       \
    X(F_MAP, "map") X(F_MAX, "max") X(F_MIN, "min") X(F_REJECT, "reject")               \
    X(F_REJECTATTR, "rejectattr") X(F_REPLACE, "replace") X(F_REVERSE, "reverse")       \
    X(F_ROUND, "round") X(F_SAFE, "safe") X(F_SELECT, "select")                         \
    X(F_SELECTATTR, "selectattr") X(F_SORT, "sort") X(F_STRING, "string") X(F_SUM, "sum") \
    X(F_TITLE, "title") X(F_TOJSON, "tojson") X(F_TRIM, "trim") X(F_UNIQUE, "unique")   \
    X(F_UPPER, "upper") X(F_WORDCOUNT, "wordcount") X(F_GROUPBY, "groupby") X(F_SLICE, "slice")   \
    X(F_TRUNCATE, "truncate")

#define JINJA_TESTS(X)                                                                  \
    X(T_BOOLEAN, "boolean") X(T_CALLABLE, "callable") X(T_DEFINED, "defined")           \
    X(T_DIVISIBLEBY, "divisibleby") X(T_EQ, "eq") X(T_EQUALTO, "equalto") X(T_EQOP, "==") \
    X(T_ESCAPED, "escaped") X(T_EVEN, "even") X(T_FALSE, "false") X(T_FILTER, "filter") \
    X(T_FLOAT, "float") X(T_GE, "ge") X(T_GEOP, ">=") X(T_GT, "gt")                     \
    X(T_GREATERTHAN, "greaterthan") X(T_GTOP, ">") X(T_IN, "in") X(T_INTEGER, "integer") \
    X(T_ITERABLE, "iterable") X(T_LE, "le") X(T_LEOP, "<=") X(T_LOWER, "lower")         \
    X(T_LT, "lt") X(T_LESSTHAN, "lessthan") X(T_LTOP, "<") X(T_MAPPING, "mapping")      \
    X(T_NE, "ne") X(T_NEOP, "!=") X(T_NONE, "none") X(T_NUMBER, "number") X(T_ODD, "odd") \
    X(T_SAMEAS, "sameas") X(T_SEQUENCE, "sequence") X(T_STRING, "string") X(T_TEST, "test") \
    X(T_TRUE, "true") X(T_UNDEFINED, "undefined") X(T_UPPER, "upper")

enum {
#define X_ENUM(id, name) id,
    JINJA_FILTERS(X_ENUM) F_COUNT_
};
enum {
    JINJA_TESTS(X_ENUM) T_COUNT_
#undef X_ENUM
};

static const char *const FILTER_NAMES[] = {
#define X_NAME(id, name) name,
    JINJA_FILTERS(X_NAME)
};
static const char *const TEST_NAMES[] = {JINJA_TESTS(X_NAME)
#undef X_NAME
};

static int find_name(const char *const *names, int n, const char *name, size_t len)
{
    for (int k = 0; k < n; k++)
        if (strlen(names[k]) == len && memcmp(names[k], name, len) == 0)
            return k;
    return -1;
}

int jinja_filter_id(const char *name, size_t len) { return find_name(FILTER_NAMES, F_COUNT_, name, len); }
int jinja_test_id(const char *name, size_t len) { return find_name(TEST_NAMES, T_COUNT_, name, len); }

static jv_t apply_filter(rstate_t *R, int id, jv_t v, const cargs_t *a);

static int test_arity(int id)
{
    switch (id) {
    case T_DIVISIBLEBY: case T_EQ: case T_EQUALTO: case T_EQOP: case T_NE: case T_NEOP: case T_LT:
    case T_LESSTHAN: case T_LTOP: case T_LE: case T_LEOP: case T_GT: case T_GREATERTHAN: case T_GTOP:
    case T_GE: case T_GEOP: case T_IN: case T_SAMEAS:
        return 1;
    default:
        return 0;
    }
}

static int apply_test(rstate_t *R, int id, jv_t v, const cargs_t *a)
{
    jv_t x;
    int arity = test_arity(id);
    if (a->npos + a->nkw > arity)
        RERR(R, "test_%s() takes %d positional argument%s but %d were given", TEST_NAMES[id], arity + 1,
             arity ? "s" : "", a->npos + a->nkw + 1);
    if (arity && a->npos + a->nkw < arity)
        RERR(R, "test_%s() missing 1 required positional argument", TEST_NAMES[id]);
    switch (id) {
    case T_BOOLEAN: return v.t == JV_BOOL;
    case T_CALLABLE: return v.t == JV_MACRO || v.t == JV_FUNC || v.t == JV_UNDEF;
    case T_DEFINED: return v.t != JV_UNDEF;
    case T_UNDEFINED: return v.t == JV_UNDEF;
    case T_DIVISIBLEBY: {
        x = arg_or(a, 0, "num", V_UNDEFINED);
        jv_t m = binop(R, OP_MOD, v, x);
        return m.t == JV_FLOAT ? m.f == 0 : m.i == 0;
    }
    case T_EQ: case T_EQUALTO: case T_EQOP:
        return jv_eq(R, v, arg_or(a, 0, "other", V_UNDEFINED), 0);
    case T_NE: case T_NEOP:
        return !jv_eq(R, v, arg_or(a, 0, "other", V_UNDEFINED), 0);
    case T_LT: case T_LESSTHAN: case T_LTOP: return jv_cmp(R, v, arg_or(a, 0, "other", V_UNDEFINED), "<") < 0;
    case T_LE: case T_LEOP: return jv_cmp(R, v, arg_or(a, 0, "other", V_UNDEFINED), "<=") <= 0;
    case T_GT: case T_GREATERTHAN: case T_GTOP: return jv_cmp(R, v, arg_or(a, 0, "other", V_UNDEFINED), ">") > 0;
    case T_GE: case T_GEOP: return jv_cmp(R, v, arg_or(a, 0, "other", V_UNDEFINED), ">=") >= 0;
    case T_ESCAPED: return 0;
    case T_EVEN: case T_ODD: {
        if (v.t == JV_UNDEF)
            undef_fail(R, v);
        /* jinja2: value % 2 == 1 (odd), value % 2 == 0 (even) */
        jv_t m = binop(R, OP_MOD, v, v_int(2));
        double mv = m.t == JV_FLOAT ? m.f : (double)m.i;
        return id == T_ODD ? mv == 1 : mv == 0;
    }
    case T_FALSE: return v.t == JV_BOOL && !v.i;
    case T_TRUE: return v.t == JV_BOOL && v.i;
    case T_FILTER: return v.t == JV_STR && jinja_filter_id(v.s, v.n) >= 0;
    case T_TEST: return v.t == JV_STR && jinja_test_id(v.s, v.n) >= 0;
    case T_FLOAT: return v.t == JV_FLOAT;
    case T_INTEGER: return v.t == JV_INT;
    case T_NUMBER: return is_num(v);
    case T_IN: return contains(R, arg_or(a, 0, "seq", V_UNDEFINED), v);
    case T_ITERABLE:
        return v.t == JV_STR || v.t == JV_LIST || v.t == JV_DICT || v.t == JV_UNDEF;
    case T_SEQUENCE:
        return v.t == JV_STR || (v.t == JV_LIST && !(v.aux & (JV_AUX_GEN | JV_AUX_VIEW_MASK))) || v.t == JV_DICT ||
               v.t == JV_UNDEF;
    case T_MAPPING: return v.t == JV_DICT;
    case T_NONE: return v.t == JV_NONE;
    case T_STRING: return v.t == JV_STR;
    case T_LOWER: case T_UPPER: {
        v = to_str(R, v);
        int cased = 0;
        size_t i = 0;
        while (i < v.n) {
            uint32_t c = u8_next(v.s, v.n, &i);
            if (id == T_LOWER ? cp_lower(c) != c : cp_upper(c) != c)
                return 0;
            cased |= cp_cased(c);
        }
        return cased;
    }
    case T_SAMEAS: {
        x = arg_or(a, 0, "other", V_UNDEFINED);
        if (v.t != x.t)
            return 0;
        if (v.t == JV_NONE || v.t == JV_UNDEF)
            return 1;
        if (v.t == JV_BOOL || v.t == JV_INT)
            return v.i == x.i;
        return v.p == x.p;
    }
    default: RERR(R, "unknown test");
    }
}

/* environment.getitem along a dotted attribute path ("a.b", "0.name") */
static jv_t get_path(rstate_t *R, jv_t v, jv_t path)
{
    if (path.t == JV_INT)
        return get_item(R, v, path);
    path = need_str(R, path, "attribute");
    size_t i = 0;
    while (i <= path.n) {
        size_t e = i;
        while (e < path.n && path.s[e] != '.')
            e++;
        jv_t part = v_str(path.s + i, e - i);
        int digits = e > i;
        for (size_t k = i; k < e; k++)
            digits &= path.s[k] >= '0' && path.s[k] <= '9';
        if (digits) {
            int64_t idx = 0;
            parse_py_int(part.s, part.n, 10, &idx);
            v = get_item(R, v, v_int(idx));
        } else {
            v = get_item(R, v, part);
        }
        i = e + 1;
    }
    return v;
}

typedef struct sort_key {
    jv_t key[4];
    int n_keys;
    jv_t item;
} sort_key_t;

static jv_t ignore_case(rstate_t *R, jv_t v) { return v.t == JV_STR ? str_case(R, v, 0) : v; }

static int key_cmp(rstate_t *R, const sort_key_t *x, const sort_key_t *y)
{
    for (int k = 0; k < x->n_keys; k++) {
        int c = jv_cmp(R, x->key[k], y->key[k], "<");
        if (c)
            return c;
    }
    return 0;
}

/* stable merge sort; the comparator may longjmp, so only arena memory is used */
static void merge_sort(rstate_t *R, sort_key_t *v, size_t n, int reverse)
{
    if (n < 2)
        return;
    sort_key_t *tmp = ralloc(R, n * sizeof(*tmp));
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = PD_MIN(lo + width, n), hi = PD_MIN(lo + 2 * width, n);
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int c = key_cmp(R, &v[j], &v[i]);
                /* take from the right only when strictly before (reverse keeps stability like Python) */
                if (reverse ? c > 0 : c < 0)
                    tmp[k++] = v[j++];
                else
                    tmp[k++] = v[i++];
            }
            while (i < mid)
                tmp[k++] = v[i++];
            while (j < hi)
                tmp[k++] = v[j++];
        }
        memcpy(v, tmp, n * sizeof(*tmp));
        step(R);
    }
}

static sort_key_t *make_keys(rstate_t *R, jv_t *items, size_t n, jv_t attribute, int case_sensitive)
{
    sort_key_t *keys = ralloc(R, (n ? n : 1) * sizeof(*keys));
    jv_t parts[4];
    int n_parts = 0;
    if (attribute.t == JV_STR) {
        size_t i = 0;
        while (i <= attribute.n && n_parts < 4) {
            size_t e = i;
            while (e < attribute.n && attribute.s[e] != ',')
                e++;
            parts[n_parts++] = v_str(attribute.s + i, e - i);
            i = e + 1;
        }
    } else if (attribute.t == JV_INT) {
        parts[n_parts++] = attribute;
    }
    for (size_t k = 0; k < n; k++) {
        keys[k].item = items[k];
        if (n_parts == 0) {
            keys[k].key[0] = case_sensitive ? items[k] : ignore_case(R, items[k]);
            keys[k].n_keys = 1;
        } else {
            for (int q = 0; q < n_parts; q++) {
                jv_t kv = get_path(R, items[k], parts[q]);
                keys[k].key[q] = case_sensitive ? kv : ignore_case(R, kv);
            }
            keys[k].n_keys = n_parts;
        }
    }
    return keys;
}

static jv_t tojson_value(rstate_t *R, jv_t v, const cargs_t *a)
{
    json_opts_t o;
    jv_t ea = arg_or(a, 0, "ensure_ascii", v_bool(0));
    jv_t indent = arg_or(a, 1, "indent", V_NONE_);
    jv_t seps = arg_or(a, 2, "separators", V_NONE_);
    jv_t sk = arg_or(a, 3, "sort_keys", v_bool(0));
    char *ind = NULL;
    memset(&o, 0, sizeof(o));
    o.ensure_ascii = truthy(ea);
    o.sort_keys = truthy(sk);
    if (indent.t == JV_INT) {
        int64_t w = indent.i < 0 ? 0 : indent.i;
        if (w > 1024)
            RERR(R, "tojson indent too large");
        ind = ralloc(R, (size_t)w + 1);
        memset(ind, ' ', (size_t)w);
        o.indent = ind;
        o.indent_len = (size_t)w;
    } else if (indent.t == JV_STR) {
        o.indent = indent.s;
        o.indent_len = indent.n;
    } else if (indent.t != JV_NONE) {
        RERR(R, "tojson indent must be an integer or a string");
    }
    if (seps.t == JV_LIST && LST(seps)->n == 2 && LST(seps)->items[0].t == JV_STR && LST(seps)->items[1].t == JV_STR) {
        o.item_sep = LST(seps)->items[0];
        o.key_sep = LST(seps)->items[1];
    } else if (seps.t == JV_NONE) {
        o.item_sep = o.indent ? v_str(",", 1) : v_str(", ", 2);
        o.key_sep = v_str(": ", 2);
    } else {
        RERR(R, "tojson separators must be a pair of strings");
    }
    pd_buf_t *b = scratch_push(R);
    write_json(R, b, v, &o, 0);
    return scratch_pop(R);
}

static int64_t py_len(rstate_t *R, jv_t v)
{
    switch (v.t) {
    case JV_UNDEF: return 0;
    case JV_STR: return (int64_t)u8_len(v.s, v.n);
    case JV_LIST:
        if (is_gen(v))
            RERR(R, "object of type 'generator' has no len()");
        return (int64_t)LST(v)->n;
    case JV_DICT: return (int64_t)DCT(v)->n;
    default: RERR(R, "object of type '%s' has no len()", type_name(v.t));
    }
}

static jv_t select_common(rstate_t *R, int id, jv_t seq, const cargs_t *a)
{
    jv_t *items;
    size_t n;
    iter_items(R, seq, &items, &n);
    int attr_mode = id == F_SELECTATTR || id == F_REJECTATTR;
    int reject = id == F_REJECT || id == F_REJECTATTR;
    int off = attr_mode ? 1 : 0;
    jv_t attr = V_UNDEFINED, tname;
    if (attr_mode && !arg_get(a, 0, NULL, &attr))
        RERR(R, "missing parameter for attribute name");
    int test = -1;
    if (arg_get(a, off, NULL, &tname)) {
        tname = need_str(R, tname, "test name");
        test = jinja_test_id(tname.s, tname.n);
        if (test < 0)
            RERR(R, "no test named '%.*s'", (int)PD_MIN(tname.n, 60), tname.s);
    }
    cargs_t ta = {0};
    if (a->npos > off + 1) {
        ta.pos = a->pos + off + 1;
        ta.npos = a->npos - off - 1;
    }
    ta.kwn = a->kwn;
    ta.kwv = a->kwv;
    ta.nkw = a->nkw;
    lbuild_t lb = {0};
    for (size_t k = 0; k < n; k++) {
        jv_t x = attr_mode ? get_path(R, items[k], attr) : items[k];
        int ok = test < 0 ? truthy(x) : apply_test(R, test, x, &ta);
        if (ok != reject)
            lb_push(R, &lb, items[k]);
        step(R);
    }
    return as_gen(lb_finish(&lb, R, 0));
}

static jv_t filter_map(rstate_t *R, jv_t seq, const cargs_t *a)
{
    jv_t *items;
    size_t n;
    iter_items(R, seq, &items, &n);
    jv_t attr, def = V_UNDEFINED;
    lbuild_t lb = {0};
    if (a->npos == 0 && arg_get(a, -1, "attribute", &attr)) {
        int has_def = arg_get(a, -1, "default", &def);
        for (size_t k = 0; k < n; k++) {
            jv_t x = get_path(R, items[k], attr);
            if (has_def && x.t == JV_UNDEF)
                x = def;
            lb_push(R, &lb, x);
        }
        return as_gen(lb_finish(&lb, R, 0));
    }
    jv_t fname;
    if (!arg_get(a, 0, NULL, &fname))
        RERR(R, "map requires a filter argument");
    fname = need_str(R, fname, "filter name");
    int fid = jinja_filter_id(fname.s, fname.n);
    if (fid < 0)
        RERR(R, "no filter named '%.*s'", (int)PD_MIN(fname.n, 60), fname.s);
    cargs_t fa = *a;
    fa.pos = a->pos + 1;
    fa.npos = a->npos - 1;
    for (size_t k = 0; k < n; k++) {
        lb_push(R, &lb, apply_filter(R, fid, items[k], &fa));
        step(R);
    }
    return as_gen(lb_finish(&lb, R, 0));
}

static jv_t py_round(rstate_t *R, jv_t v, int64_t prec, jv_t method)
{
    if (!is_num(v)) {
        if (v.t == JV_UNDEF)
            undef_fail(R, v);
        RERR(R, "type %s doesn't define __round__ method", type_name(v.t));
    }
    if (method.t == JV_STR && !(method.n == 6 && memcmp(method.s, "common", 6) == 0)) {
        int ceil_ = method.n == 4 && memcmp(method.s, "ceil", 4) == 0;
        int floor_ = method.n == 5 && memcmp(method.s, "floor", 5) == 0;
        if (!ceil_ && !floor_)
            RERR(R, "method must be common, ceil or floor");
        double m = pow(10.0, (double)prec), x = num_f(v) * m;
        return v_float((ceil_ ? ceil(x) : floor(x)) / m);
    }
    if (v.t != JV_FLOAT)
        return v_int(v.i);
    if (!isfinite(v.f) || prec > 300)
        return v;
    if (prec < 0) {
        double m = pow(10.0, (double)-prec);
        double y = v.f / m, r = nearbyint(y);
        return v_float(r * m);
    }
    char buf[400];
    snprintf(buf, sizeof(buf), "%.*f", (int)prec, v.f);
    return v_float(strtod(buf, NULL));
}

/* Parameter names of each filter after its operand; "*" takes anything (jinja2 checks
 * the call against the Python signature and raises TypeError). */
static const char *filter_params(int id)
{
    switch (id) {
    case F_ATTR: return "name";
    case F_BATCH: return "linecount,fill_with";
    case F_CENTER: return "width";
    case F_D: case F_DEFAULT: return "default_value,boolean";
    case F_DICTSORT: return "case_sensitive,by,reverse";
    case F_FLOAT: return "default";
    case F_INDENT: return "width,first,blank";
    case F_INT: return "default,base";
    case F_JOIN: return "d,attribute";
    case F_MAX: case F_MIN: return "case_sensitive,attribute";
    case F_REPLACE: return "old,new,count";
    case F_ROUND: return "precision,method";
    case F_SORT: return "reverse,case_sensitive,attribute";
    case F_SUM: return "attribute,start";
    case F_TOJSON: return "ensure_ascii,indent,separators,sort_keys";
    case F_TRIM: return "chars";
    case F_UNIQUE: return "case_sensitive,attribute";
    case F_GROUPBY: return "attribute,default,case_sensitive";
    case F_SLICE: return "slices,fill_with";
    case F_TRUNCATE: return "length,killwords,end,leeway";
    case F_FORMAT: case F_MAP: case F_SELECT: case F_REJECT: case F_SELECTATTR: case F_REJECTATTR: return "*";
    default: return "";
    }
}

static void check_filter_args(rstate_t *R, int id, const cargs_t *a)
{
    const char *params = filter_params(id);
    if (params[0] == '*')
        return;
    int n = 0;
    for (const char *p = params; *p; p++)
        n += *p == ',';
    n += params[0] != '\0';
    if (a->npos > n)
        RERR(R, "filter %s() takes at most %d argument%s (%d given)", FILTER_NAMES[id], n, n == 1 ? "" : "s", a->npos);
    for (int k = 0; k < a->nkw; k++) {
        const char *kw = a->kwn[k];
        size_t kl = strlen(kw);
        int idx = 0, found = -1;
        for (const char *p = params; *p;) {
            const char *e = strchr(p, ',');
            size_t l = e ? (size_t)(e - p) : strlen(p);
            if (l == kl && memcmp(p, kw, l) == 0)
                found = idx;
            idx++;
            p += l + (e != NULL);
        }
        if (found < 0)
            RERR(R, "filter %s() got an unexpected keyword argument '%s'", FILTER_NAMES[id], kw);
        if (found < a->npos)
            RERR(R, "filter %s() got multiple values for argument '%s'", FILTER_NAMES[id], kw);
    }
}

static jv_t apply_filter(rstate_t *R, int id, jv_t v, const cargs_t *a)
{
    jv_t x, y;
    check_filter_args(R, id, a);
    switch (id) {
    case F_ABS:
        if (v.t == JV_INT || v.t == JV_BOOL) {
            if (v.i == INT64_MIN)
                RERR(R, "integer overflow");
            return v_int(v.i < 0 ? -v.i : v.i);
        }
        if (v.t == JV_FLOAT)
            return v_float(fabs(v.f));
        if (v.t == JV_UNDEF)
            undef_fail(R, v);
        RERR(R, "bad operand type for abs(): '%s'", type_name(v.t));
    case F_ATTR: {
        x = need_str(R, arg_or(a, 0, "name", V_UNDEFINED), "attribute name");
        if (v.t == JV_DICT || v.t == JV_LIST)
            return v_undef_attr(cstr_of(R, x), v.t);
        return get_attr(R, v, cstr_of(R, x), x.n);
    }
    case F_BATCH: {
        int64_t cnt = need_int(R, arg_or(a, 0, "linecount", V_UNDEFINED), "linecount");
        int has_fill = arg_get(a, 1, "fill_with", &y) && y.t != JV_NONE;
        if (cnt <= 0)
            RERR(R, "batch size must be positive");
        jv_t *items;
        size_t n;
        iter_items(R, v, &items, &n);
        lbuild_t outer = {0};
        for (size_t k = 0; k < n; k += (size_t)cnt) {
            lbuild_t inner = {0};
            for (size_t q = k; q < k + (size_t)cnt; q++) {
                if (q < n)
                    lb_push(R, &inner, items[q]);
                else if (has_fill)
                    lb_push(R, &inner, y);
            }
            lb_push(R, &outer, lb_finish(&inner, R, 0));
        }
        return as_gen(lb_finish(&outer, R, 0));
    }
    case F_CAPITALIZE: return str_case(R, to_str(R, v), 2);
    case F_CENTER: {
        jv_t s = to_str(R, v);
        int64_t w = need_int(R, arg_or(a, 0, "width", v_int(80)), "width");
        int64_t len = (int64_t)u8_len(s.s, s.n);
        if (w > 1 << 20)
            RERR(R, "width too large");
        if (w <= len)
            return s;
        int64_t pad = w - len, left = pad / 2 + (pad & w & 1);
        char *o = ralloc(R, s.n + (size_t)pad + 1);
        memset(o, ' ', (size_t)left);
        memcpy(o + left, s.s, s.n);
        memset(o + left + (int64_t)s.n, ' ', (size_t)(pad - left));
        return v_str(o, s.n + (size_t)pad);
    }
    case F_COUNT:
    case F_LENGTH: return v_int(py_len(R, v));
    case F_D:
    case F_DEFAULT: {
        x = arg_or(a, 0, "default_value", v_str("", 0));
        y = arg_or(a, 1, "boolean", v_bool(0));
        if (v.t == JV_UNDEF || (truthy(y) && !truthy(v)))
            return x;
        return v;
    }
    case F_DICTSORT: {
        if (v.t != JV_DICT)
            RERR(R, "dictsort requires a mapping, not %s", type_name(v.t));
        int cs = truthy(arg_or(a, 0, "case_sensitive", v_bool(0)));
        jv_t by = arg_or(a, 1, "by", v_str("key", 3));
        int rev = truthy(arg_or(a, 2, "reverse", v_bool(0)));
        int pos = 0;
        if (by.t == JV_STR && by.n == 5 && memcmp(by.s, "value", 5) == 0)
            pos = 1;
        else if (!(by.t == JV_STR && by.n == 3 && memcmp(by.s, "key", 3) == 0))
            RERR(R, "You can only sort by either \"key\" or \"value\"");
        jdict_t *d = DCT(v);
        sort_key_t *keys = ralloc(R, (d->n ? d->n : 1) * sizeof(*keys));
        for (size_t k = 0; k < d->n; k++) {
            jv_t pair = v_list(R, 2);
            LST(pair)->items[0] = d->keys[k];
            LST(pair)->items[1] = d->vals[k];
            pair.aux = JV_AUX_TUPLE;
            keys[k].item = pair;
            keys[k].key[0] = cs ? (pos ? d->vals[k] : d->keys[k]) : ignore_case(R, pos ? d->vals[k] : d->keys[k]);
            keys[k].n_keys = 1;
        }
        merge_sort(R, keys, d->n, rev);
        jv_t out = v_list(R, d->n);
        for (size_t k = 0; k < d->n; k++)
            LST(out)->items[k] = keys[k].item;
        return out;
    }
    case F_E:
    case F_ESCAPE:
    case F_FORCEESCAPE: {
        jv_t r = (v.t == JV_STR && (v.aux & JV_AUX_MARKUP) && id != F_FORCEESCAPE) ? v : html_escape(R, to_str(R, v));
        r.aux = JV_AUX_MARKUP;
        return r;
    }
    case F_FIRST:
    case F_LAST: {
        jv_t *items;
        size_t n;
        if (is_gen(v)) {
            jlist_t *gl = LST(v);
            if (gl->err)
                rfail(R, PD_ERR_INVAL, 0, "%s", gl->err);
            if (id == F_LAST)
                RERR(R, "'generator' object is not reversible");
            if (gl->pos >= gl->n)
                return v_undef_name("No first item, sequence was empty.");
            return gl->items[gl->pos++];
        }
        iter_items(R, v, &items, &n);
        if (n == 0)
            return v_undef_name(id == F_FIRST ? "No first item, sequence was empty." : "No last item, sequence was empty.");
        return items[id == F_FIRST ? 0 : n - 1];
    }
    case F_FLOAT: {
        x = arg_or(a, 0, "default", v_float(0.0));
        if (v.t == JV_UNDEF)
            undef_fail(R, v);
        if (is_num(v))
            return v_float(num_f(v));
        double f;
        if (v.t == JV_STR && parse_py_float(v.s, v.n, &f))
            return v_float(f);
        return x;
    }
    case F_FORMAT: {
        jv_t s = to_str(R, v);
        if (a->nkw && a->npos)
            RERR(R, "can't handle positional and keyword arguments at the same time");
        if (a->nkw) {
            jv_t d = v_dict(R, (size_t)a->nkw);
            for (int k = 0; k < a->nkw; k++)
                dict_set(R, DCT(d), v_cstr(a->kwn[k]), a->kwv[k]);
            return py_format_percent(R, s, d);
        }
        jv_t tup = list_of(R, a->pos, (size_t)a->npos);
        tup.aux = JV_AUX_TUPLE;
        return py_format_percent(R, s, tup);
    }
    case F_INDENT: {
        if (v.t == JV_UNDEF)
            undef_fail(R, v);
        if (v.t != JV_STR)
            RERR(R, "unsupported operand type(s) for +=: '%s' and 'str'", type_name(v.t));
        jv_t s = v;
        jv_t w = arg_or(a, 0, "width", v_int(4));
        int first = truthy(arg_or(a, 1, "first", v_bool(0)));
        int blank = truthy(arg_or(a, 2, "blank", v_bool(0)));
        jv_t ind;
        if (w.t == JV_STR)
            ind = w;
        else {
            int64_t wi = need_int(R, w, "width");
            if (wi > 4096)
                RERR(R, "indent too large");
            char *sp = ralloc(R, (size_t)(wi > 0 ? wi : 0) + 1);
            memset(sp, ' ', (size_t)(wi > 0 ? wi : 0));
            ind = v_str(sp, (size_t)(wi > 0 ? wi : 0));
        }
        jv_t s2 = binop(R, OP_ADD, s, v_str("\n", 1));
        jv_t lines = str_splitlines(R, s2);
        jlist_t *l = LST(lines);
        pd_buf_t *b = scratch_push(R);
        if (first)
            bput(R, b, ind.s, ind.n);
        for (size_t k = 0; k < l->n; k++) {
            if (k > 0) {
                bput(R, b, "\n", 1);
                if (blank || l->items[k].n)
                    bput(R, b, ind.s, ind.n);
            }
            bput(R, b, l->items[k].s, l->items[k].n);
        }
        return scratch_pop(R);
    }
    case F_INT: {
        x = arg_or(a, 0, "default", v_int(0));
        int64_t base = need_int(R, arg_or(a, 1, "base", v_int(10)), "base");
        if (v.t == JV_UNDEF)
            undef_fail(R, v);
        if (v.t == JV_INT || v.t == JV_BOOL)
            return v_int(v.i);
        if (v.t == JV_FLOAT) {
            if (!isfinite(v.f))
                RERR(R, "cannot convert float infinity or NaN to integer");
            if (fabs(v.f) >= 9.2e18)
                RERR(R, "integer overflow");
            return v_int((int64_t)v.f);
        }
        if (v.t == JV_STR) {
            int64_t i;
            double f;
            if (parse_py_int(v.s, v.n, (int)base, &i))
                return v_int(i);
            if (parse_py_float(v.s, v.n, &f) && isfinite(f) && fabs(f) < 9.2e18)
                return v_int((int64_t)f);
        }
        return x;
    }
    case F_ITEMS: {
        if (v.t == JV_UNDEF)
            return as_gen(v_list(R, 0));
        if (v.t != JV_DICT)
            RERR(R, "items filter requires a mapping, not %s", type_name(v.t));
        jdict_t *d = DCT(v);
        jv_t out = v_list(R, d->n);
        for (size_t k = 0; k < d->n; k++) {
            jv_t pair = v_list(R, 2);
            LST(pair)->items[0] = d->keys[k];
            LST(pair)->items[1] = d->vals[k];
            pair.aux = JV_AUX_TUPLE;
            LST(out)->items[k] = pair;
        }
        return as_gen(out);
    }
    case F_JOIN: {
        jv_t sep = arg_or(a, 0, "d", v_str("", 0));
        jv_t attr;
        int has_attr = arg_get(a, 1, "attribute", &attr) && attr.t != JV_NONE;
        jv_t *items;
        size_t n;
        iter_items(R, v, &items, &n);
        sep = to_str(R, sep);
        pd_buf_t *b = scratch_push(R);
        for (size_t k = 0; k < n; k++) {
            if (k)
                bput(R, b, sep.s, sep.n);
            write_str(R, b, has_attr ? get_path(R, items[k], attr) : items[k], 0);
        }
        return scratch_pop(R);
    }
    case F_LIST: {
        jv_t *items;
        size_t n;
        iter_items(R, v, &items, &n);
        return list_of(R, items, n);
    }
    case F_LOWER: return str_case(R, to_str(R, v), 0);
    case F_UPPER: return str_case(R, to_str(R, v), 1);
    case F_TITLE: {
        /* jinja: split on runs of [-\s({[<], upper-case each piece's first char */
        jv_t s = to_str(R, v);
        pd_buf_t *b = scratch_push(R);
        size_t i = 0;
        int at_start = 1;
        while (i < s.n) {
            size_t st = i;
            uint32_t c = u8_next(s.s, s.n, &i);
            int sepc = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py_space(c);
            if (sepc) {
                bput(R, b, s.s + st, i - st);
                at_start = 1;
                continue;
            }
            /* item[0].upper() + item[1:].lower(), the rest lowered as one string so the
             * final-sigma rule sees the same context as Python */
            jv_t first_up = str_case(R, v_str(s.s + st, i - st), 1);
            bput(R, b, first_up.s, first_up.n);
            size_t e = i;
            while (e < s.n) {
                size_t q = e;
                uint32_t c2 = u8_next(s.s, s.n, &q);
                if (c2 == '-' || c2 == '(' || c2 == '{' || c2 == '[' || c2 == '<' || py_space(c2))
                    break;
                e = q;
            }
            jv_t rest = str_case(R, v_str(s.s + i, e - i), 0);
            bput(R, b, rest.s, rest.n);
            i = e;
            at_start = 0;
        }
        (void)at_start;
        return scratch_pop(R);
    }
    case F_MAP: return filter_map(R, v, a);
    case F_MAX:
    case F_MIN: {
        int cs = truthy(arg_or(a, 0, "case_sensitive", v_bool(0)));
        jv_t attr = arg_or(a, 1, "attribute", V_NONE_);
        jv_t *items;
        size_t n;
        iter_items(R, v, &items, &n);
        if (n == 0)
            return v_undef_name(id == F_MAX ? "No aggregated item, sequence was empty." : "No aggregated item, sequence was empty.");
        sort_key_t *keys = make_keys(R, items, n, attr, cs);
        size_t best = 0;
        for (size_t k = 1; k < n; k++) {
            int c = key_cmp(R, &keys[k], &keys[best]);
            if (id == F_MAX ? c > 0 : c < 0)
                best = k;
        }
        return items[best];
    }
    case F_SELECT:
    case F_REJECT:
    case F_SELECTATTR:
    case F_REJECTATTR: return select_common(R, id, v, a);
    case F_REPLACE: {
        jv_t s = to_str(R, v);
        x = to_str(R, arg_or(a, 0, "old", V_UNDEFINED));
        y = to_str(R, arg_or(a, 1, "new", V_UNDEFINED));
        jv_t c = arg_or(a, 2, "count", V_NONE_);
        return str_replace(R, s, x, y, c.t == JV_NONE ? -1 : need_int(R, c, "count"));
    }
    case F_REVERSE: {
        if (v.t == JV_STR)
            return do_slice(R, v, V_NONE_, V_NONE_, v_int(-1));
        jv_t *items;
        size_t n;
        int was_gen = is_gen(v);
        iter_items(R, v, &items, &n);
        jv_t out = v_list(R, n);
        for (size_t k = 0; k < n; k++)
            LST(out)->items[k] = items[n - 1 - k];
        /* reversed(list) is an iterator; a generator is listed and reversed */
        return (v.t == JV_LIST && !was_gen) || v.t == JV_DICT || v.t == JV_UNDEF ? as_gen(out) : out;
    }
    case F_ROUND:
        return py_round(R, v, need_int(R, arg_or(a, 0, "precision", v_int(0)), "precision"),
                        arg_or(a, 1, "method", v_str("common", 6)));
    case F_SAFE: {
        jv_t r = v.t == JV_STR ? v : to_str(R, v);
        r.aux = JV_AUX_MARKUP;
        return r;
    }
    case F_SORT: {
        int rev = truthy(arg_or(a, 0, "reverse", v_bool(0)));
        int cs = truthy(arg_or(a, 1, "case_sensitive", v_bool(0)));
        jv_t attr = arg_or(a, 2, "attribute", V_NONE_);
        jv_t *items;
        size_t n;
        iter_items(R, v, &items, &n);
        sort_key_t *keys = make_keys(R, items, n, attr, cs);
        merge_sort(R, keys, n, rev);
        jv_t out = v_list(R, n);
        for (size_t k = 0; k < n; k++)
            LST(out)->items[k] = keys[k].item;
        return out;
    }
    case F_STRING: return to_str(R, v);
    case F_SUM: {
        jv_t attr = arg_or(a, 0, "attribute", V_NONE_);
        jv_t acc = arg_or(a, 1, "start", v_int(0));
        jv_t *items;
        size_t n;
        iter_items(R, v, &items, &n);
        for (size_t k = 0; k < n; k++)
            acc = binop(R, OP_ADD, acc, attr.t == JV_NONE ? items[k] : get_path(R, items[k], attr));
        return acc;
    }
    case F_TOJSON: return tojson_value(R, v, a);
    case F_TRIM: {
        jv_t chars = arg_or(a, 0, "chars", V_NONE_);
        return str_strip(R, to_str(R, v), chars, 3);
    }
    case F_UNIQUE: {
        int cs = truthy(arg_or(a, 0, "case_sensitive", v_bool(0)));
        jv_t attr = arg_or(a, 1, "attribute", V_NONE_);
        jv_t *items;
        size_t n;
        iter_items(R, v, &items, &n);
        lbuild_t seen = {0}, out = {0};
        for (size_t k = 0; k < n; k++) {
            jv_t key = attr.t == JV_NONE ? items[k] : get_path(R, items[k], attr);
            if (!cs)
                key = ignore_case(R, key);
            int dup = 0;
            for (size_t q = 0; q < seen.n && !dup; q++)
                dup = jv_eq(R, seen.v[q], key, 0);
            if (!dup) {
                lb_push(R, &seen, key);
                lb_push(R, &out, items[k]);
            }
            step(R);
        }
        return as_gen(lb_finish(&out, R, 0));
    }
    case F_GROUPBY: {
        jv_t attr;
        if (!arg_get(a, 0, "attribute", &attr))
            RERR(R, "groupby() missing required argument 'attribute'");
        jv_t def = arg_or(a, 1, "default", V_NONE_);
        int cs = truthy(arg_or(a, 2, "case_sensitive", v_bool(0)));
        jv_t *items;
        size_t n;
        iter_items(R, v, &items, &n);
        sort_key_t *keys = ralloc(R, (n ? n : 1) * sizeof(*keys));
        for (size_t k = 0; k < n; k++) {
            jv_t kv = get_path(R, items[k], attr);
            if (kv.t == JV_UNDEF && def.t != JV_NONE)
                kv = def;
            keys[k].item = items[k];
            keys[k].key[0] = cs ? kv : ignore_case(R, kv);
            keys[k].key[1] = kv; /* the real key of the group's first item */
            keys[k].n_keys = 1;
        }
        merge_sort(R, keys, n, 0);
        lbuild_t groups = {0};
        for (size_t k = 0; k < n;) {
            size_t e = k + 1;
            while (e < n && jv_eq(R, keys[e].key[0], keys[k].key[0], 0))
                e++;
            lbuild_t members = {0};
            for (size_t q = k; q < e; q++)
                lb_push(R, &members, keys[q].item);
            jv_t g = v_list(R, 2);
            LST(g)->items[0] = keys[k].key[1];
            LST(g)->items[1] = lb_finish(&members, R, 0);
            g.aux = JV_AUX_TUPLE | JV_AUX_GROUP;
            lb_push(R, &groups, g);
            k = e;
        }
        return lb_finish(&groups, R, 0);
    }
    case F_SLICE: {
        int64_t slices = need_int(R, arg_or(a, 0, "slices", V_UNDEFINED), "slices");
        jv_t fill = arg_or(a, 1, "fill_with", V_NONE_);
        jv_t *items;
        size_t n;
        iter_items(R, v, &items, &n);
        if (slices <= 0)
            RERR(R, "slices must be positive");
        if (slices > 1 << 20)
            RERR(R, "too many slices");
        int64_t per = (int64_t)n / slices, extra = (int64_t)n % slices, offset = 0;
        lbuild_t out = {0};
        for (int64_t sn = 0; sn < slices; sn++) {
            int64_t start = offset + sn * per;
            if (sn < extra)
                offset++;
            int64_t end = offset + (sn + 1) * per;
            lbuild_t part = {0};
            for (int64_t q = start; q < end; q++)
                lb_push(R, &part, items[q]);
            if (fill.t != JV_NONE && sn >= extra)
                lb_push(R, &part, fill);
            lb_push(R, &out, lb_finish(&part, R, 0));
        }
        return as_gen(lb_finish(&out, R, 0));
    }
    case F_TRUNCATE: {
        jv_t str = v;
        int64_t length = need_int(R, arg_or(a, 0, "length", v_int(255)), "length");
        int killwords = truthy(arg_or(a, 1, "killwords", v_bool(0)));
        jv_t end = need_str(R, arg_or(a, 2, "end", v_str("...", 3)), "end");
        jv_t lw = arg_or(a, 3, "leeway", V_NONE_);
        int64_t leeway = lw.t == JV_NONE ? 5 : need_int(R, lw, "leeway");
        int64_t endlen = (int64_t)u8_len(end.s, end.n);
        if (length < endlen)
            RERR(R, "expected length >= %lld, got %lld", (long long)endlen, (long long)length);
        if (leeway < 0)
            RERR(R, "expected leeway >= 0, got %lld", (long long)leeway);
        if (py_len(R, str) <= length + leeway)
            return str;
        if (str.t != JV_STR)
            RERR(R, "truncate needs a string, not %s", type_name(str.t));
        jv_t head = do_slice(R, str, V_NONE_, v_int(length - endlen), V_NONE_);
        if (!killwords) {
            jv_t parts = str_rsplit(R, head, v_str(" ", 1), 1);
            head = LST(parts)->items[0];
        }
        return binop(R, OP_ADD, head, end);
    }
    case F_WORDCOUNT: {
        jv_t s = to_str(R, v);
        int64_t words = 0;
        int in_word = 0;
        size_t i = 0;
        while (i < s.n) {
            uint32_t c = u8_next(s.s, s.n, &i);
            int w = (c < 0x80) ? ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_')
                               : !py_space(c) && py_printable(c);
            if (w && !in_word)
                words++;
            in_word = w;
        }
        return v_int(words);
    }
    default: RERR(R, "unknown filter");
    }
}

// ---- evaluation ----
enum { FL_NORMAL = 0, FL_BREAK, FL_CONTINUE };

static jv_t eval(rstate_t *R, const jnode_t *nd, scope_t *sc);
static int exec(rstate_t *R, const jnode_t *nd, scope_t *sc);

/* render a body into a string in a fresh child scope */
static jv_t capture(rstate_t *R, const jnode_t *body, scope_t *sc)
{
    size_t mark = R->out->len;
    exec(R, body, sc);
    jv_t s = v_strdup(R, R->out->data + mark, R->out->len - mark);
    R->out->len = mark;
    R->out->data[mark] = '\0';
    return s;
}

static jv_t call_macro(rstate_t *R, const jmacro_t *m, const cargs_t *a, jv_t caller)
{
    const jnode_t *def = m->def;
    if (R->call_depth >= R->max_call_depth)
        rfail(R, PD_ERR_LIMIT, R->line, "macro calls nested deeper than %d", R->max_call_depth);
    R->call_depth++;
    scope_t *sc = scope_new(R, m->closure);
    int np = def->n_kids2;
    for (int k = 0; k < np; k++) {
        jv_t v;
        if (k < a->npos)
            v = a->pos[k];
        else if (arg_get(a, -1, def->names[k], &v))
            ;
        else if (def->kids2[k])
            v = eval(R, def->kids2[k], sc);
        else
            v = v_undef_name(def->names[k]);
        scope_set(R, sc, def->syms[k], v);
    }
    lbuild_t extra = {0};
    for (int k = np; k < a->npos; k++)
        lb_push(R, &extra, a->pos[k]);
    scope_set(R, sc, G_VARARGS, lb_finish(&extra, R, 1));
    jv_t kw = v_dict(R, 4);
    for (int k = 0; k < a->nkw; k++) {
        int known = 0;
        for (int q = 0; q < np && !known; q++)
            known = strcmp(def->names[q], a->kwn[k]) == 0;
        if (!known && strcmp(a->kwn[k], "caller") != 0)
            dict_set(R, DCT(kw), v_cstr(a->kwn[k]), a->kwv[k]);
    }
    scope_set(R, sc, G_KWARGS, kw);
    if (caller.t != JV_UNDEF)
        scope_set(R, sc, G_CALLER, caller);
    jv_t out = capture(R, def->b, sc);
    R->call_depth--;
    return out;
}

static jv_t list_index(rstate_t *R, jv_t l, jv_t x)
{
    for (size_t k = 0; k < LST(l)->n; k++)
        if (jv_eq(R, LST(l)->items[k], x, 0))
            return v_int((int64_t)k);
    RERR(R, "value is not in list");
}

static jv_t str_find(rstate_t *R, jv_t s, jv_t sub, int reverse, int raise)
{
    sub = need_str(R, sub, "substring");
    const char *f = NULL;
    if (!reverse)
        f = find_sub(s.s, s.n, sub.s, sub.n);
    else if (sub.n <= s.n)
        for (size_t q = s.n - sub.n + 1; q-- > 0;)
            if (memcmp(s.s + q, sub.s, sub.n) == 0) {
                f = s.s + q;
                break;
            }
    if (!f) {
        if (raise)
            RERR(R, "substring not found");
        return v_int(-1);
    }
    return v_int((int64_t)u8_len(s.s, (size_t)(f - s.s)));
}

static int str_all(jv_t s, int kind)
{
    if (s.n == 0)
        return 0;
    size_t i = 0;
    int cased = 0;
    while (i < s.n) {
        uint32_t c = u8_next(s.s, s.n, &i);
        int digit = c >= '0' && c <= '9';
        int alpha = cp_cased(c) || (c >= 0x80 && !py_space(c) && py_printable(c) && !(c >= 0x2000 && c <= 0x2BFF));
        switch (kind) {
        case 0: if (!digit) return 0; break;
        case 1: if (!alpha) return 0; break;
        case 2: if (!alpha && !digit) return 0; break;
        case 3: if (!py_space(c)) return 0; break;
        case 4: if (cp_lower(c) != c) return 0; cased |= cp_cased(c); break;
        case 5: if (cp_upper(c) != c) return 0; cased |= cp_cased(c); break;
        default: break;
        }
    }
    return kind >= 4 ? cased : 1;
}

static jv_t call_builtin(rstate_t *R, jv_t fv, const cargs_t *a)
{
    int fn = (int)fv.aux;
    jv_t self = fv.p ? ((jbound_t *)fv.p)->self : V_UNDEFINED;
    jv_t x, y;
    switch (fn) {
    case FN_RANGE: {
        int64_t start = 0, stop, stp = 1;
        if (a->npos == 1)
            stop = need_int(R, a->pos[0], "range() argument");
        else if (a->npos == 2 || a->npos == 3) {
            start = need_int(R, a->pos[0], "range() argument");
            stop = need_int(R, a->pos[1], "range() argument");
            if (a->npos == 3)
                stp = need_int(R, a->pos[2], "range() argument");
        } else
            RERR(R, "range expected 1 to 3 arguments, got %d", a->npos);
        if (stp == 0)
            RERR(R, "range() arg 3 must not be zero");
        int64_t n = 0;
        if (stp > 0 && stop > start)
            n = (int64_t)(((uint64_t)stop - (uint64_t)start - 1) / (uint64_t)stp) + 1;
        else if (stp < 0 && stop < start)
            n = (int64_t)(((uint64_t)start - (uint64_t)stop - 1) / (uint64_t)(-(stp + 1) + 1)) + 1;
        if (n > MAX_RANGE)
            RERR(R, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (%d).", MAX_RANGE);
        jv_t out = v_list(R, (size_t)n);
        for (int64_t k = 0; k < n; k++)
            LST(out)->items[k] = v_int(start + k * stp);
        return out;
    }
    case FN_NAMESPACE:
    case FN_DICT: {
        jv_t d = v_dict(R, (size_t)a->nkw + 4);
        if (a->npos > 1)
            RERR(R, "%s expected at most 1 positional argument", fn == FN_DICT ? "dict" : "namespace");
        if (a->npos == 1) {
            jv_t src = a->pos[0];
            if (src.t == JV_DICT || src.t == JV_NS) {
                for (size_t k = 0; k < DCT(src)->n; k++)
                    dict_set(R, DCT(d), DCT(src)->keys[k], DCT(src)->vals[k]);
            } else if (src.t == JV_LIST) {
                for (size_t k = 0; k < LST(src)->n; k++) {
                    jv_t pair = LST(src)->items[k];
                    if (pair.t != JV_LIST || LST(pair)->n != 2)
                        RERR(R, "dictionary update sequence element has wrong length");
                    dict_set(R, DCT(d), LST(pair)->items[0], LST(pair)->items[1]);
                }
            } else
                RERR(R, "'%s' object is not iterable", type_name(src.t));
        }
        for (int k = 0; k < a->nkw; k++) {
            if (fn == FN_NAMESPACE && a->kwn[k][0] == '_')
                RERR(R, "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '%s'.", a->kwn[k]);
            dict_set(R, DCT(d), v_cstr(a->kwn[k]), a->kwv[k]);
        }
        if (fn == FN_NAMESPACE)
            d.t = JV_NS;
        return d;
    }
    case FN_RAISE: {
        x = to_str(R, arg_or(a, 0, "message", v_str("", 0)));
        if (R->errlen)
            snprintf(R->err, R->errlen, "%.*s", (int)PD_MIN(x.n, (size_t)1 << 20), x.s);
        R->status = PD_ERR_INVAL;
        longjmp(R->jb, 1);
    }
    case FN_STRFTIME: {
        x = need_str(R, arg_or(a, 0, "format", V_UNDEFINED), "format");
        time_t now = time(NULL);
        struct tm tm;
        char buf[512];
        localtime_r(&now, &tm);
        size_t n = strftime(buf, sizeof(buf), cstr_of(R, x), &tm);
        return v_strdup(R, buf, n);
    }
    case FN_S_STRIP: return str_strip(R, self, arg_or(a, 0, "chars", V_NONE_), 3);
    case FN_S_LSTRIP: return str_strip(R, self, arg_or(a, 0, "chars", V_NONE_), 1);
    case FN_S_RSTRIP: return str_strip(R, self, arg_or(a, 0, "chars", V_NONE_), 2);
    case FN_S_SPLIT:
    case FN_S_RSPLIT: {
        x = arg_or(a, 0, "sep", V_NONE_);
        if (x.t != JV_NONE)
            need_str(R, x, "separator");
        y = arg_or(a, 1, "maxsplit", v_int(-1));
        int64_t ms = need_int(R, y, "maxsplit");
        return fn == FN_S_SPLIT ? str_split(R, self, x, ms) : str_rsplit(R, self, x, ms);
    }
    case FN_S_STARTSWITH: return v_bool(prefix_match(R, self, arg_or(a, 0, "prefix", V_UNDEFINED), 0));
    case FN_S_ENDSWITH: return v_bool(prefix_match(R, self, arg_or(a, 0, "suffix", V_UNDEFINED), 1));
    case FN_S_UPPER: return str_case(R, self, 1);
    case FN_S_LOWER:
    case FN_S_CASEFOLD: return str_case(R, self, 0);
    case FN_S_TITLE: return str_case(R, self, 3);
    case FN_S_CAPITALIZE: return str_case(R, self, 2);
    case FN_S_REPLACE: {
        x = need_str(R, arg_or(a, 0, "old", V_UNDEFINED), "old");
        y = need_str(R, arg_or(a, 1, "new", V_UNDEFINED), "new");
        jv_t c = arg_or(a, 2, "count", v_int(-1));
        return str_replace(R, self, x, y, need_int(R, c, "count"));
    }
    case FN_S_FORMAT: return py_str_format(R, self, a);
    case FN_S_JOIN: {
        jv_t *items;
        size_t n;
        iter_items(R, arg_or(a, 0, "iterable", V_UNDEFINED), &items, &n);
        pd_buf_t *b = scratch_push(R);
        for (size_t k = 0; k < n; k++) {
            if (items[k].t != JV_STR)
                RERR(R, "sequence item %zu: expected str instance, %s found", k, type_name(items[k].t));
            if (k)
                bput(R, b, self.s, self.n);
            bput(R, b, items[k].s, items[k].n);
        }
        return scratch_pop(R);
    }
    case FN_S_FIND: return str_find(R, self, arg_or(a, 0, "sub", V_UNDEFINED), 0, 0);
    case FN_S_RFIND: return str_find(R, self, arg_or(a, 0, "sub", V_UNDEFINED), 1, 0);
    case FN_S_INDEX: return str_find(R, self, arg_or(a, 0, "sub", V_UNDEFINED), 0, 1);
    case FN_S_RINDEX: return str_find(R, self, arg_or(a, 0, "sub", V_UNDEFINED), 1, 1);
    case FN_S_COUNT: {
        x = need_str(R, arg_or(a, 0, "sub", V_UNDEFINED), "substring");
        if (x.n == 0)
            return v_int((int64_t)u8_len(self.s, self.n) + 1);
        int64_t c = 0;
        size_t i = 0;
        const char *f;
        while ((f = find_sub(self.s + i, self.n - i, x.s, x.n)) != NULL) {
            c++;
            i = (size_t)(f - self.s) + x.n;
        }
        return v_int(c);
    }
    case FN_S_SPLITLINES: return str_splitlines(R, self);
    case FN_S_ISDIGIT: return v_bool(str_all(self, 0));
    case FN_S_ISALPHA: return v_bool(str_all(self, 1));
    case FN_S_ISALNUM: return v_bool(str_all(self, 2));
    case FN_S_ISSPACE: return v_bool(str_all(self, 3));
    case FN_S_ISLOWER: return v_bool(str_all(self, 4));
    case FN_S_ISUPPER: return v_bool(str_all(self, 5));
    case FN_D_ITEMS: {
        jv_t r = apply_filter(R, F_ITEMS, self, &(cargs_t){0});
        r.aux = JV_AUX_ITEMS;
        return r;
    }
    case FN_D_KEYS: {
        jv_t r = list_of(R, DCT(self)->keys, DCT(self)->n);
        r.aux |= JV_AUX_KEYS;
        return r;
    }
    case FN_D_VALUES: {
        jv_t r = list_of(R, DCT(self)->vals, DCT(self)->n);
        r.aux |= JV_AUX_VALUES;
        return r;
    }
    case FN_D_GET: {
        if (!arg_get(a, 0, NULL, &x))
            RERR(R, "get expected at least 1 argument, got 0");
        long k = dict_find(R, DCT(self), x);
        return k >= 0 ? DCT(self)->vals[k] : arg_or(a, 1, NULL, V_NONE_);
    }
    case FN_D_COPY: {
        jv_t d = v_dict(R, DCT(self)->n);
        for (size_t k = 0; k < DCT(self)->n; k++)
            dict_set(R, DCT(d), DCT(self)->keys[k], DCT(self)->vals[k]);
        return d;
    }
    case FN_L_INDEX: return list_index(R, self, arg_or(a, 0, NULL, V_UNDEFINED));
    case FN_L_COUNT: {
        x = arg_or(a, 0, NULL, V_UNDEFINED);
        int64_t c = 0;
        for (size_t k = 0; k < LST(self)->n; k++)
            c += jv_eq(R, LST(self)->items[k], x, 0);
        return v_int(c);
    }
    case FN_LOOP_CYCLE: {
        jloop_t *l = self.p;
        if (a->npos == 0)
            RERR(R, "no items for cycling given");
        return a->pos[l->idx % (size_t)a->npos];
    }
    case FN_LOOP_CHANGED: {
        jloop_t *l = self.p;
        jv_t cur = list_of(R, a->pos, (size_t)a->npos);
        if (l->changed_init && jv_eq(R, cur, l->last_changed, 0))
            return v_bool(0);
        l->changed_init = 1;
        l->last_changed = cur;
        return v_bool(1);
    }
    default:
        RERR(R, "access to this attribute is unsafe");
    }
}

static void eval_args(rstate_t *R, const jnode_t *nd, scope_t *sc, cargs_t *a, int extra_kw)
{
    a->npos = nd->n_kids;
    a->pos = nd->n_kids ? ralloc(R, sizeof(jv_t) * (size_t)nd->n_kids) : NULL;
    for (int k = 0; k < nd->n_kids; k++)
        a->pos[k] = eval(R, nd->kids[k], sc);
    a->nkw = nd->n_kids2;
    a->kwn = ralloc(R, sizeof(char *) * (size_t)(nd->n_kids2 + extra_kw + 1));
    a->kwv = ralloc(R, sizeof(jv_t) * (size_t)(nd->n_kids2 + extra_kw + 1));
    for (int k = 0; k < nd->n_kids2; k++) {
        a->kwn[k] = nd->names[k];
        a->kwv[k] = eval(R, nd->kids2[k], sc);
    }
}

static jv_t call_loop(rstate_t *R, jv_t lv, const cargs_t *a);

static jv_t call_value(rstate_t *R, jv_t f, const cargs_t *a, jv_t caller)
{
    switch (f.t) {
    case JV_MACRO: return call_macro(R, f.p, a, caller);
    case JV_FUNC: return call_builtin(R, f, a);
    case JV_LOOP: return call_loop(R, f, a);
    case JV_UNDEF: undef_fail(R, f);
    default: RERR(R, "'%s' object is not callable", type_name(f.t));
    }
}

static __attribute__((noinline)) jv_t eval_call(rstate_t *R, const jnode_t *nd, scope_t *sc, jv_t caller)
{
    jv_t f = eval(R, nd->a, sc);
    cargs_t a;
    eval_args(R, nd, sc, &a, 1);
    if (caller.t != JV_UNDEF) {
        a.kwn[a.nkw] = "caller";
        a.kwv[a.nkw++] = caller;
    }
    R->line = nd->line;
    return call_value(R, f, &a, caller);
}

static __attribute__((noinline)) jv_t concat_values(rstate_t *R, const jnode_t *nd, scope_t *sc)
{
    jv_t parts[16];
    jv_t *pv = nd->n_kids <= 16 ? parts : ralloc(R, sizeof(jv_t) * (size_t)nd->n_kids);
    size_t total = 0;
    for (int k = 0; k < nd->n_kids; k++) {
        pv[k] = to_str(R, eval(R, nd->kids[k], sc));
        total += pv[k].n;
    }
    char *o = ralloc(R, total + 1);
    size_t off = 0;
    for (int k = 0; k < nd->n_kids; k++) {
        memcpy(o + off, pv[k].s, pv[k].n);
        off += pv[k].n;
    }
    o[total] = '\0';
    return v_str(o, total);
}

/* jinja2's map/select/reject/selectattr/rejectattr/items/unique/batch are generator
 * functions: nothing runs until the result is iterated.  The C engine computes the list
 * at once but keeps an error for the first iteration, so a generator that is never
 * iterated (or only tested for truth) never fails, as in jinja2. */
static int is_lazy_filter(int id)
{
    return id == F_MAP || id == F_SELECT || id == F_REJECT || id == F_SELECTATTR || id == F_REJECTATTR ||
           id == F_ITEMS || id == F_UNIQUE || id == F_BATCH || id == F_SLICE;
}

static jv_t apply_filter_deferred(rstate_t *R, int id, jv_t operand, const cargs_t *a)
{
    jmp_buf saved;
    int eval_depth = R->eval_depth, call_depth = R->call_depth, n_scratch = R->n_scratch, line = R->line;
    jv_t r;

    memcpy(saved, R->jb, sizeof(saved));
    if (setjmp(R->jb) == 0) {
        r = apply_filter(R, id, operand, a);
        memcpy(R->jb, saved, sizeof(saved));
        return r;
    }
    memcpy(R->jb, saved, sizeof(saved));
    if (R->status != PD_ERR_INVAL || R->errlen == 0)
        longjmp(R->jb, 1); /* limits and out-of-memory are never deferred */
    R->eval_depth = eval_depth;
    R->call_depth = call_depth;
    R->n_scratch = n_scratch;
    R->line = line;
    r = as_gen(v_list(R, 0));
    LST(r)->err = pd_arena_strdup(R->arena, R->err);
    if (LST(r)->err == NULL)
        rfail(R, PD_ERR_NOMEM, line, "out of memory");
    R->status = PD_OK;
    R->err[0] = '\0';
    return r;
}

static __attribute__((noinline)) jv_t apply_filter_node(rstate_t *R, const jnode_t *nd, jv_t operand, scope_t *sc)
{
    cargs_t a;
    eval_args(R, nd, sc, &a, 0);
    R->line = nd->line;
    if (is_lazy_filter(nd->op))
        return apply_filter_deferred(R, nd->op, operand, &a);
    return apply_filter(R, nd->op, operand, &a);
}

/* a filter-block chain: the innermost node has a == NULL and gets the captured text */
static jv_t apply_chain(rstate_t *R, const jnode_t *chain, jv_t base, scope_t *sc)
{
    jv_t operand = chain->a ? apply_chain(R, chain->a, base, sc) : base;
    return apply_filter_node(R, chain, operand, sc);
}

static __attribute__((noinline)) jv_t eval_slice(rstate_t *R, const jnode_t *nd, scope_t *sc)
{
    jv_t a = eval(R, nd->a, sc);
    jv_t x = nd->b ? eval(R, nd->b, sc) : V_NONE_;
    jv_t y = nd->c ? eval(R, nd->c, sc) : V_NONE_;
    jv_t z = nd->d ? eval(R, nd->d, sc) : V_NONE_;
    R->line = nd->line;
    return do_slice(R, a, x, y, z);
}

static __attribute__((noinline)) jv_t eval_test(rstate_t *R, const jnode_t *nd, scope_t *sc)
{
    jv_t a = eval(R, nd->a, sc);
    cargs_t ca;
    eval_args(R, nd, sc, &ca, 0);
    R->line = nd->line;
    int t = apply_test(R, nd->op, a, &ca);
    return v_bool(nd->flag ? !t : t);
}

static __attribute__((noinline)) jv_t eval_compare(rstate_t *R, const jnode_t *nd, scope_t *sc)
{
    jv_t a = eval(R, nd->a, sc), b;
    for (int k = 0; k < nd->n_kids; k++) {
        b = eval(R, nd->kids[k], sc);
        R->line = nd->line;
        int ok;
        switch (nd->ops[k]) {
        case OP_EQ: ok = jv_eq(R, a, b, 0); break;
        case OP_NE: ok = !jv_eq(R, a, b, 0); break;
        case OP_LT: ok = jv_cmp(R, a, b, "<") < 0; break;
        case OP_LE: ok = jv_cmp(R, a, b, "<=") <= 0; break;
        case OP_GT: ok = jv_cmp(R, a, b, ">") > 0; break;
        case OP_GE: ok = jv_cmp(R, a, b, ">=") >= 0; break;
        case OP_IN: ok = contains(R, b, a); break;
        default: ok = !contains(R, b, a); break;
        }
        if (!ok)
            return v_bool(0);
        a = b;
    }
    return v_bool(1);
}

static __attribute__((noinline)) jv_t eval_unary(rstate_t *R, const jnode_t *nd, scope_t *sc)
{
    jv_t a = eval(R, nd->a, sc);
    R->line = nd->line;
    if (a.t == JV_UNDEF)
        undef_fail(R, a);
    if (!is_num(a))
        RERR(R, "bad operand type for unary %c: '%s'", nd->kind == N_NEG ? '-' : '+', type_name(a.t));
    if (nd->kind == N_POS)
        return a.t == JV_BOOL ? v_int(a.i) : a;
    if (a.t == JV_FLOAT)
        return v_float(-a.f);
    if (a.i == INT64_MIN)
        RERR(R, "integer overflow");
    return v_int(-a.i);
}

static __attribute__((noinline)) jv_t eval_dict(rstate_t *R, const jnode_t *nd, scope_t *sc)
{
    jv_t r = v_dict(R, (size_t)nd->n_kids);
    for (int k = 0; k < nd->n_kids; k++) {
        jv_t key = eval(R, nd->kids[k], sc);
        jv_t val = eval(R, nd->kids2[k], sc);
        if (key.t == JV_LIST && !(key.aux & JV_AUX_TUPLE))
            RERR(R, "unhashable type: 'list'");
        if (key.t == JV_DICT || key.t == JV_NS)
            RERR(R, "unhashable type: '%s'", type_name(key.t));
        dict_set(R, DCT(r), key, val);
    }
    return r;
}

static jv_t eval(rstate_t *R, const jnode_t *nd, scope_t *sc)
{
    jv_t a, b;
    step(R);
    if (++R->eval_depth > MAX_EVAL_DEPTH)
        rfail(R, PD_ERR_LIMIT, nd->line, "template evaluation nested too deeply");
    R->line = nd->line;
    jv_t r;
    switch (nd->kind) {
    case N_CONST: r = nd->val; break;
    case N_NAME: r = lookup(R, sc, nd); break;
    case N_GETATTR:
        a = eval(R, nd->a, sc);
        R->line = nd->line;
        r = get_attr(R, a, nd->str, nd->slen);
        break;
    case N_GETITEM:
        a = eval(R, nd->a, sc);
        b = eval(R, nd->b, sc);
        R->line = nd->line;
        r = get_item(R, a, b);
        break;
    case N_SLICE: r = eval_slice(R, nd, sc); break;
    case N_CALL: r = eval_call(R, nd, sc, V_UNDEFINED); break;
    case N_FILTER:
        a = eval(R, nd->a, sc);
        r = apply_filter_node(R, nd, a, sc);
        break;
    case N_TEST: r = eval_test(R, nd, sc); break;
    case N_BINOP:
        a = eval(R, nd->a, sc);
        b = eval(R, nd->b, sc);
        R->line = nd->line;
        r = binop(R, nd->op, a, b);
        break;
    case N_NEG:
    case N_POS: r = eval_unary(R, nd, sc); break;
    case N_NOT: r = v_bool(!truthy(eval(R, nd->a, sc))); break;
    case N_AND:
        a = eval(R, nd->a, sc);
        r = truthy(a) ? eval(R, nd->b, sc) : a;
        break;
    case N_OR:
        a = eval(R, nd->a, sc);
        r = truthy(a) ? a : eval(R, nd->b, sc);
        break;
    case N_COMPARE: r = eval_compare(R, nd, sc); break;
    case N_CONCAT: r = concat_values(R, nd, sc); break;
    case N_COND:
        if (truthy(eval(R, nd->a, sc)))
            r = eval(R, nd->b, sc);
        else
            r = nd->c ? eval(R, nd->c, sc) : v_undef_name("the inline if-expression evaluated to false and no else section was defined.");
        break;
    case N_LIST:
    case N_TUPLE: {
        r = v_list(R, (size_t)nd->n_kids);
        for (int k = 0; k < nd->n_kids; k++)
            LST(r)->items[k] = eval(R, nd->kids[k], sc);
        if (nd->kind == N_TUPLE)
            r.aux = JV_AUX_TUPLE;
        break;
    }
    case N_DICT: r = eval_dict(R, nd, sc); break;
    default:
        rfail(R, PD_ERR_INTERNAL, nd->line, "bad expression node %d", nd->kind);
    }
    R->eval_depth--;
    return r;
}

// ---- statements ----
static void assign(rstate_t *R, const jnode_t *target, jv_t v, scope_t *sc)
{
    if (target->kind == N_NAME) {
        scope_set(R, sc, target->sym, v);
        return;
    }
    if (target->kind == N_NSATTR) {
        jnode_t fake = {0};
        fake.sym = target->sym;
        fake.str = "namespace";
        jv_t ns = lookup(R, sc, &fake);
        if (ns.t != JV_NS)
            RERR(R, "cannot assign attribute on non-namespace object");
        if (target->str[0] == '_')
            RERR(R, "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '%s'.", target->str);
        dict_set(R, DCT(ns), v_str(target->str, target->slen), v);
        return;
    }
    /* tuple unpacking */
    jv_t *items;
    size_t n;
    if (v.t == JV_UNDEF)
        undef_fail(R, v);
    iter_items(R, v, &items, &n);
    if ((int)n != target->n_kids || n != (size_t)target->n_kids)
        RERR(R, n < (size_t)target->n_kids ? "not enough values to unpack (expected %d, got %zu)"
                                           : "too many values to unpack (expected %d, got %zu)",
             target->n_kids, n);
    for (int k = 0; k < target->n_kids; k++)
        scope_set(R, sc, target->kids[k]->sym, items[k]);
}

static int exec_for_seq(rstate_t *R, const jnode_t *nd, scope_t *sc, jv_t seq, int depth);

static int exec_for(rstate_t *R, const jnode_t *nd, scope_t *sc)
{
    return exec_for_seq(R, nd, sc, eval(R, nd->b, sc), 1);
}

/* loop(children) inside a recursive for: the loop body over children, one level deeper */
static jv_t call_loop(rstate_t *R, jv_t lv, const cargs_t *a)
{
    jloop_t *l = lv.p;
    if (l->node == NULL || !l->node->flag)
        RERR(R, "Tried to call non recursive loop.  Maybe you forgot the 'recursive' modifier.");
    if (a->npos != 1 || a->nkw)
        RERR(R, "loop() takes exactly one argument");
    if (R->call_depth >= R->max_call_depth)
        rfail(R, PD_ERR_LIMIT, R->line, "recursive loop nested deeper than %d", R->max_call_depth);
    R->call_depth++;
    size_t mark = R->out->len;
    exec_for_seq(R, l->node, l->outer, a->pos[0], l->depth + 1);
    jv_t s = v_strdup(R, R->out->data + mark, R->out->len - mark);
    R->out->len = mark;
    R->out->data[mark] = '\0';
    R->call_depth--;
    return s;
}

static int exec_for_seq(rstate_t *R, const jnode_t *nd, scope_t *sc, jv_t seq, int depth)
{
    jv_t *items;
    size_t n;
    R->line = nd->line;
    if (seq.t == JV_NS || seq.t == JV_NONE || seq.t == JV_INT || seq.t == JV_FLOAT || seq.t == JV_BOOL)
        RERR(R, "'%s' object is not iterable", type_name(seq.t));
    iter_items(R, seq, &items, &n);
    if (nd->e) {
        /* the loop filter sees the target but not `loop`; loop.* counts kept items */
        jv_t *kept = ralloc(R, (n ? n : 1) * sizeof(jv_t));
        size_t nk = 0;
        for (size_t k = 0; k < n; k++) {
            scope_t *fs = scope_new(R, sc);
            assign(R, nd->a, items[k], fs);
            if (truthy(eval(R, nd->e, fs)))
                kept[nk++] = items[k];
        }
        items = kept;
        n = nk;
    }
    if (n == 0) {
        if (nd->d)
            exec(R, nd->d, scope_new(R, sc));
        return FL_NORMAL;
    }
    jloop_t *loop = ralloc(R, sizeof(*loop));
    memset(loop, 0, sizeof(*loop));
    loop->items = items;
    loop->n = n;
    loop->depth = depth;
    loop->node = nd;
    loop->outer = sc;
    jv_t lv = {.t = JV_LOOP};
    lv.p = loop;
    /* jinja2 runs the else block unless some iteration reached the end of the body
     * (an iteration left by break or continue does not count) */
    int completed = 0;
    for (size_t k = 0; k < n; k++) {
        step(R);
        loop->idx = k;
        scope_t *is = scope_new(R, sc);
        scope_set(R, is, G_LOOP, lv);
        assign(R, nd->a, items[k], is);
        int fl = exec(R, nd->c, is);
        if (fl == FL_NORMAL)
            completed = 1;
        if (fl == FL_BREAK)
            break;
    }
    if (!completed && nd->d)
        exec(R, nd->d, scope_new(R, sc));
    return FL_NORMAL;
}

static int exec(rstate_t *R, const jnode_t *nd, scope_t *sc)
{
    step(R);
    R->line = nd->line;
    switch (nd->kind) {
    case N_BODY:
        for (int k = 0; k < nd->n_kids; k++) {
            int fl = exec(R, nd->kids[k], sc);
            if (fl != FL_NORMAL)
                return fl;
        }
        return FL_NORMAL;
    case N_TEXT:
        bput(R, R->out, nd->str, nd->slen);
        return FL_NORMAL;
    case N_PRINT: {
        jv_t v = eval(R, nd->a, sc);
        if (v.t == JV_STR)
            bput(R, R->out, v.s, v.n);
        else
            write_str(R, R->out, v, 0);
        return FL_NORMAL;
    }
    case N_IF:
        if (truthy(eval(R, nd->a, sc)))
            return exec(R, nd->b, sc);
        if (nd->c)
            return exec(R, nd->c, sc);
        return FL_NORMAL;
    case N_FOR: {
        if (++R->eval_depth > MAX_EVAL_DEPTH)
            rfail(R, PD_ERR_LIMIT, nd->line, "template evaluation nested too deeply");
        int fl = exec_for(R, nd, sc);
        R->eval_depth--;
        return fl;
    }
    case N_SET:
        assign(R, nd->a, eval(R, nd->b, sc), sc);
        return FL_NORMAL;
    case N_SETBLOCK: {
        jv_t v = capture(R, nd->b, scope_new(R, sc));
        if (nd->c)
            v = apply_chain(R, nd->c, v, sc);
        assign(R, nd->a, v, sc);
        return FL_NORMAL;
    }
    case N_MACRO: {
        jmacro_t *m = ralloc(R, sizeof(*m));
        m->def = nd;
        m->closure = sc;
        m->caller = V_UNDEFINED;
        jv_t v = {.t = JV_MACRO};
        v.p = m;
        scope_set(R, sc, nd->sym, v);
        return FL_NORMAL;
    }
    case N_CALLBLOCK: {
        jmacro_t *m = ralloc(R, sizeof(*m));
        m->def = nd;
        m->closure = sc;
        m->caller = V_UNDEFINED;
        jv_t caller = {.t = JV_MACRO};
        caller.p = m;
        jv_t v = eval_call(R, nd->a, sc, caller);
        write_str(R, R->out, v, 0);
        return FL_NORMAL;
    }
    case N_FILTERBLOCK: {
        jv_t v = capture(R, nd->b, scope_new(R, sc));
        v = apply_chain(R, nd->c, v, sc);
        write_str(R, R->out, v, 0);
        return FL_NORMAL;
    }
    case N_WITH: {
        scope_t *ws = scope_new(R, sc);
        for (int k = 0; k < nd->n_kids2; k++)
            scope_set(R, ws, nd->syms[k], eval(R, nd->kids2[k], sc));
        return exec(R, nd->b, ws);
    }
    case N_BREAK: return FL_BREAK;
    case N_CONTINUE: return FL_CONTINUE;
    default:
        rfail(R, PD_ERR_INTERNAL, nd->line, "bad statement node %d", nd->kind);
    }
}

// ---- context from JSON ----
static jv_t from_json(rstate_t *R, const cJSON *j)
{
    if (j == NULL)
        return V_NONE_;
    if (cJSON_IsNull(j))
        return V_NONE_;
    if (cJSON_IsTrue(j))
        return v_bool(1);
    if (cJSON_IsFalse(j))
        return v_bool(0);
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) <= 9007199254740992.0)
            return v_int((int64_t)d);
        return v_float(d);
    }
    if (cJSON_IsRaw(j) && j->valuestring) {
        /* a raw item holding a JSON number keeps Python's int/float distinction
         * ("1.0" is a float, "1" an int), which cJSON's parsed numbers lose */
        const char *t = j->valuestring;
        char *end;
        size_t tl = strlen(t);
        int is_float = strpbrk(t, ".eE") != NULL;
        if (tl > 0 && (t[0] == '-' || (t[0] >= '0' && t[0] <= '9'))) {
            if (!is_float) {
                errno = 0;
                long long iv = strtoll(t, &end, 10);
                if (*end == '\0' && errno == 0)
                    return v_int(iv);
            }
            double dv = strtod(t, &end);
            if (*end == '\0')
                return v_float(dv);
        }
        return v_str(t, tl);
    }
    if (cJSON_IsString(j))
        return j->valuestring ? v_str(j->valuestring, strlen(j->valuestring)) : v_str("", 0);
    if (cJSON_IsArray(j)) {
        size_t n = (size_t)cJSON_GetArraySize(j), k = 0;
        jv_t l = v_list(R, n);
        for (const cJSON *c = j->child; c && k < n; c = c->next)
            LST(l)->items[k++] = from_json(R, c);
        LST(l)->n = k;
        return l;
    }
    if (cJSON_IsObject(j)) {
        size_t n = (size_t)cJSON_GetArraySize(j);
        jv_t d = v_dict(R, n);
        for (const cJSON *c = j->child; c; c = c->next)
            dict_set(R, DCT(d), c->string ? v_cstr(c->string) : v_str("", 0), from_json(R, c));
        return d;
    }
    return V_NONE_;
}

static void bind_json_object(rstate_t *R, scope_t *root, const cJSON *obj)
{
    if (obj == NULL || !cJSON_IsObject(obj))
        return;
    const jsymtab_t *st = &R->tpl->t.syms;
    for (const cJSON *c = obj->child; c; c = c->next) {
        if (c->string == NULL)
            continue;
        int sym = jinja_sym_find(st, c->string, strlen(c->string));
        if (sym >= 0)
            scope_set(R, root, sym, from_json(R, c));
    }
}

static void bind_name(rstate_t *R, scope_t *root, const char *name, jv_t v)
{
    int sym = jinja_sym_find(&R->tpl->t.syms, name, strlen(name));
    if (sym >= 0)
        scope_set(R, root, sym, v);
}

// ---- render entry points ----
typedef struct chat_in {
    const cJSON *messages, *tools, *documents, *kwargs;
    const char *bos, *eos;
    bool add_generation_prompt, continue_final;
    jv_t final_text; /* set during setup when continue_final */
} chat_in_t;

#define CONTINUE_TAG "CONTINUE_FINAL_MESSAGE_TAG "

static const char *const REASONING_FIELDS[] = {"reasoning_content", "thinking", "reasoning"};

/* transformers' _alias_reasoning_fields for one message */
static jv_t alias_reasoning(rstate_t *R, jv_t msg)
{
    jdict_t *d = DCT(msg);
    jv_t reasoning = V_UNDEFINED;
    for (size_t k = 0; k < PD_ARRAY_SIZE(REASONING_FIELDS) && reasoning.t == JV_UNDEF; k++) {
        long at = dict_find_str(d, REASONING_FIELDS[k], strlen(REASONING_FIELDS[k]));
        if (at >= 0 && d->vals[at].t != JV_NONE)
            reasoning = d->vals[at];
    }
    if (reasoning.t == JV_UNDEF)
        return msg;
    jv_t out = v_dict(R, d->n + 2);
    dict_set(R, DCT(out), v_cstr("thinking"), reasoning);
    for (size_t k = 0; k < d->n; k++)
        dict_set(R, DCT(out), d->keys[k], d->vals[k]);
    dict_set(R, DCT(out), v_cstr("reasoning_content"), reasoning);
    return out;
}

static jv_t dict_copy(rstate_t *R, jv_t d)
{
    jv_t out = v_dict(R, DCT(d)->n + 1);
    for (size_t k = 0; k < DCT(d)->n; k++)
        dict_set(R, DCT(out), DCT(d)->keys[k], DCT(d)->vals[k]);
    return out;
}

static void setup_chat(rstate_t *R, scope_t *root, chat_in_t *ci)
{
    if (ci->bos)
        bind_name(R, root, "bos_token", v_cstr(ci->bos));
    if (ci->eos)
        bind_name(R, root, "eos_token", v_cstr(ci->eos));
    if (ci->kwargs && cJSON_IsObject(ci->kwargs)) {
        const jsymtab_t *st = &R->tpl->t.syms;
        for (const cJSON *c = ci->kwargs->child; c; c = c->next) {
            if (c->string == NULL || strcmp(c->string, "messages") == 0 || strcmp(c->string, "tools") == 0 ||
                strcmp(c->string, "documents") == 0 || strcmp(c->string, "add_generation_prompt") == 0)
                continue;
            int sym = jinja_sym_find(st, c->string, strlen(c->string));
            if (sym >= 0)
                scope_set(R, root, sym, from_json(R, c));
        }
    }
    R->line = 0;
    jv_t msgs = ci->messages ? from_json(R, ci->messages) : v_list(R, 0);
    if (msgs.t != JV_LIST)
        RERR(R, "messages must be a list");
    jlist_t *l = LST(msgs);
    for (size_t k = 0; k < l->n; k++) {
        if (l->items[k].t != JV_DICT)
            RERR(R, "Chat messages should be dicts, but got %s", type_name(l->items[k].t));
        l->items[k] = alias_reasoning(R, l->items[k]);
    }
    if (ci->continue_final) {
        if (l->n == 0)
            RERR(R, "continue_final_message is set but the conversation is empty!");
        jv_t last = dict_copy(R, l->items[l->n - 1]);
        long role = dict_find_str(DCT(last), "role", 4);
        if (role < 0 || DCT(last)->vals[role].t != JV_STR || DCT(last)->vals[role].n != 9 ||
            memcmp(DCT(last)->vals[role].s, "assistant", 9) != 0)
            RERR(R, "continue_final_message is set but the final message is not an assistant message");
        long c = dict_find_str(DCT(last), "content", 7);
        if (c < 0 || DCT(last)->vals[c].t == JV_NONE)
            RERR(R, "continue_final_message is set but the final message has no \"content\" to continue!");
        if (strstr(R->tpl->source, "content") == NULL)
            RERR(R, "continue_final_message is set to \"content\" but this is not an accepted field in the chat_template");
        jv_t content = DCT(last)->vals[c];
        jv_t tag = v_str(CONTINUE_TAG, sizeof(CONTINUE_TAG) - 1);
        if (content.t == JV_LIST) {
            jlist_t *parts = LST(content);
            jv_t np = list_of(R, parts->items, parts->n);
            long found = -1;
            for (size_t q = parts->n; q-- > 0;) {
                if (parts->items[q].t == JV_DICT && dict_find_str(DCT(parts->items[q]), "text", 4) >= 0) {
                    found = (long)q;
                    break;
                }
            }
            if (found < 0)
                RERR(R, "continue_final_message is set but we could not find any text to continue in the final message!");
            jv_t part = dict_copy(R, parts->items[found]);
            long t = dict_find_str(DCT(part), "text", 4);
            ci->final_text = DCT(part)->vals[t];
            DCT(part)->vals[t] = binop(R, OP_ADD, DCT(part)->vals[t], tag);
            LST(np)->items[found] = part;
            DCT(last)->vals[c] = np;
        } else {
            if (content.t != JV_STR)
                RERR(R, "continue_final_message is set but the final message content is not a string");
            ci->final_text = content;
            DCT(last)->vals[c] = binop(R, OP_ADD, content, tag);
        }
        l->items[l->n - 1] = last;
    }
    bind_name(R, root, "messages", msgs);
    bind_name(R, root, "tools", ci->tools ? from_json(R, ci->tools) : V_NONE_);
    bind_name(R, root, "documents", ci->documents ? from_json(R, ci->documents) : V_NONE_);
    bind_name(R, root, "add_generation_prompt", v_bool(ci->add_generation_prompt));
}

/* Python's str.strip() / rstrip() bounds on the rendered text */
static int rendered_contains_stripped(const char *h, size_t hn, jv_t s)
{
    size_t b = 0, e = s.n;
    while (b < e) {
        size_t i = b;
        if (!py_space(u8_next(s.s, e, &i)))
            break;
        b = i;
    }
    while (e > b) {
        size_t st = e - 1;
        while (st > b && ((unsigned char)s.s[st] & 0xC0) == 0x80)
            st--;
        size_t i = st;
        if (!py_space(u8_next(s.s, e, &i)))
            break;
        e = st;
    }
    return find_sub(h, hn, s.s + b, e - b) != NULL;
}

static void finish_continue(rstate_t *R, chat_in_t *ci)
{
    pd_buf_t *out = R->out;
    const char *h = out->data + R->out_base;
    size_t hn = out->len - R->out_base;
    const char *tag = CONTINUE_TAG;
    size_t tl = sizeof(CONTINUE_TAG) - 1, tsl = tl - 1; /* without the trailing space */
    R->line = 0;
    if (!rendered_contains_stripped(h, hn, ci->final_text) || find_sub(h, hn, tag, tsl) == NULL)
        RERR(R, "continue_final_message is set but the final message does not appear in the chat after "
                "applying the chat template! This can happen if the chat template deletes portions of the "
                "final message. Please verify the chat template and final message in your chat to ensure "
                "they are compatible.");
    size_t loc = 0;
    for (size_t q = hn - tsl + 1; q-- > 0;)
        if (memcmp(h + q, tag, tsl) == 0) {
            loc = q;
            break;
        }
    size_t cut = loc;
    if (!(hn - loc >= tl && memcmp(h + loc, tag, tl) == 0)) {
        while (cut > 0) {
            size_t st = cut - 1;
            while (st > 0 && ((unsigned char)h[st] & 0xC0) == 0x80)
                st--;
            size_t i = st;
            if (!py_space(u8_next(h, cut, &i)))
                break;
            cut = st;
        }
    }
    out->len = R->out_base + cut;
    out->data[out->len] = '\0';
}

static pd_status_t render_internal(const eng_template_t *tpl, const cJSON *ctx, chat_in_t *ci,
                                   const eng_template_limits_t *limits, pd_buf_t *out, char *err,
                                   size_t errlen)
{
    rstate_t *R;
    pd_status_t st;

    if (err && errlen)
        err[0] = '\0';
    if (tpl == NULL || out == NULL)
        return PD_ERR_INVAL;
    R = calloc(1, sizeof(*R));
    if (R == NULL)
        return PD_ERR_NOMEM;
    R->tpl = tpl;
    R->err = err && errlen ? err : R->ebuf;
    R->errlen = err && errlen ? errlen : sizeof(R->ebuf);
    R->out = out;
    R->out_base = out->len;
    R->max_steps = limits && limits->max_steps ? limits->max_steps : ENG_TEMPLATE_DEFAULT_STEPS;
    R->out_limit = limits && limits->max_output ? limits->max_output : ENG_TEMPLATE_DEFAULT_OUTPUT;
    R->mem_limit = limits && limits->max_memory ? limits->max_memory : ENG_TEMPLATE_DEFAULT_MEMORY;
    R->max_call_depth = limits && limits->max_depth > 0 ? limits->max_depth : ENG_TEMPLATE_DEFAULT_DEPTH;
    R->arena = pd_arena_create(16384);
    if (R->arena == NULL || pd_buf_reserve(out, 256) != PD_OK) {
        pd_arena_destroy(R->arena);
        free(R);
        return PD_ERR_NOMEM;
    }
    if (setjmp(R->jb) == 0) {
        scope_t *root = scope_new(R, NULL);
        bind_json_object(R, root, ctx);
        if (ci)
            setup_chat(R, root, ci);
        exec(R, tpl->t.root, root);
        if (ci && ci->continue_final)
            finish_continue(R, ci);
        st = PD_OK;
    } else {
        st = R->status != PD_OK ? R->status : PD_ERR_INTERNAL;
        out->len = R->out_base;
        if (out->data)
            out->data[out->len] = '\0';
        if (st == PD_ERR_NOMEM || st == PD_ERR_INTERNAL)
            PD_LOG_ERR("chat template render failed: %s", R->err);
    }
    pd_buf_cleanup(&R->tmp);
    for (size_t k = 0; k < PD_ARRAY_SIZE(R->scratch); k++)
        pd_buf_cleanup(&R->scratch[k]);
    pd_arena_destroy(R->arena);
    free(R);
    return st;
}

pd_status_t eng_template_render(const eng_template_t *tpl, const cJSON *ctx,
                                const eng_template_limits_t *limits, pd_buf_t *out, char *err,
                                size_t errlen)
{
    return render_internal(tpl, ctx, NULL, limits, out, err, errlen);
}

pd_status_t eng_chat_apply_ex(const eng_template_t *tpl, const cJSON *messages,
                              const cJSON *tools, const cJSON *documents,
                              bool add_generation_prompt, bool continue_final_message,
                              const cJSON *chat_template_kwargs, const char *bos_token,
                              const char *eos_token, const eng_template_limits_t *limits,
                              pd_buf_t *out, char *err, size_t errlen)
{
    chat_in_t ci;
    if (err && errlen)
        err[0] = '\0';
    if (add_generation_prompt && continue_final_message) {
        if (err && errlen)
            snprintf(err, errlen, "continue_final_message and add_generation_prompt are not compatible. "
                                  "Use continue_final_message when you want the model to continue the final "
                                  "message, and add_generation_prompt when you want to add a header that will "
                                  "prompt it to start a new assistant message instead.");
        return PD_ERR_INVAL;
    }
    if (messages != NULL && !cJSON_IsArray(messages)) {
        if (err && errlen)
            snprintf(err, errlen, "messages must be a list");
        return PD_ERR_INVAL;
    }
    memset(&ci, 0, sizeof(ci));
    ci.messages = messages;
    ci.tools = tools && !cJSON_IsNull(tools) ? tools : NULL;
    ci.documents = documents && !cJSON_IsNull(documents) ? documents : NULL;
    ci.kwargs = chat_template_kwargs;
    ci.bos = bos_token;
    ci.eos = eos_token;
    ci.add_generation_prompt = add_generation_prompt;
    ci.continue_final = continue_final_message;
    return render_internal(tpl, NULL, &ci, limits, out, err, errlen);
}

pd_status_t eng_chat_apply(const eng_template_t *tpl, const cJSON *messages,
                           const cJSON *tools, const cJSON *documents,
                           bool add_generation_prompt, bool continue_final_message,
                           const cJSON *chat_template_kwargs, const char *bos_token,
                           const char *eos_token, pd_buf_t *out, char *err, size_t errlen)
{
    return eng_chat_apply_ex(tpl, messages, tools, documents, add_generation_prompt,
                             continue_final_message, chat_template_kwargs, bos_token, eos_token,
                             NULL, out, err, errlen);
}

// ---- compile ----
pd_status_t eng_template_compile(const char *source, eng_template_t **tpl_p, char *err,
                                 size_t errlen)
{
    eng_template_t *tpl;
    pd_status_t st;
    size_t n, k = 0;

    if (err && errlen)
        err[0] = '\0';
    if (source == NULL || tpl_p == NULL)
        return PD_ERR_INVAL;
    n = strlen(source);
    tpl = calloc(1, sizeof(*tpl));
    if (tpl == NULL)
        return PD_ERR_NOMEM;
    tpl->source = malloc(n + 1);
    tpl->t.arena = pd_arena_create(16384);
    if (tpl->source == NULL || tpl->t.arena == NULL) {
        st = PD_ERR_NOMEM;
        goto err_free;
    }
    /* jinja2: split on \r\n|\r|\n, drop one trailing empty line, join with \n */
    for (size_t i = 0; i < n; i++) {
        if (source[i] == '\r') {
            tpl->source[k++] = '\n';
            if (i + 1 < n && source[i + 1] == '\n')
                i++;
        } else {
            tpl->source[k++] = source[i];
        }
    }
    if (k > 0 && tpl->source[k - 1] == '\n')
        k--;
    tpl->source[k] = '\0';
    st = jinja_parse(&tpl->t, tpl->source, k, err, err ? errlen : 0);
    if (st != PD_OK)
        goto err_free;
    *tpl_p = tpl;
    return PD_OK;

err_free:
    eng_template_destroy(tpl);
    return st;
}

void eng_template_destroy(eng_template_t *tpl)
{
    if (tpl == NULL)
        return;
    pd_arena_destroy(tpl->t.arena);
    free(tpl->source);
    free(tpl);
}
