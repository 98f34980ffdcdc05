/*
 * eng_jinja_parse.c - lexer and parser of the Jinja2 subset used by chat templates.
 *
 * The lexer follows jinja2's own rules for whitespace control with trim_blocks and
 * lstrip_blocks on: "{%-"/"{{-"/"{#-" strip all whitespace before the tag, "-%}" etc.
 * all whitespace after; a block or comment tag removes one newline after it unless
 * it ends with "+%}"; spaces and tabs between a line start and a "{%"/"{#" are removed
 * unless the tag opens with "{%+".  The source has already been newline-normalised
 * (and its one trailing newline dropped) by the caller, as jinja2 does.
 *
 * The parser is recursive descent with jinja2's precedence (condexpr < or < and < not <
 * compare < +,- < ~ < *,/,//,% < ** < unary < primary/postfix/filters/tests).  Tree
 * depth is bounded so rendering cannot overflow the C stack.
 */
#include "eng_jinja.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PARSE_DEPTH 96

// ---- tokens ----
enum {
    T_EOF = 0, T_TEXT, T_VBEGIN, T_VEND, T_BBEGIN, T_BEND,
    T_NAME, T_STRING, T_INT, T_FLOAT, T_OP,
};

/* operator token codes */
enum {
    K_ADD = 1, K_SUB, K_MUL, K_DIV, K_FLOORDIV, K_MOD, K_POW, K_TILDE,
    K_LBRACKET, K_RBRACKET, K_LPAREN, K_RPAREN, K_LBRACE, K_RBRACE,
    K_EQ, K_NE, K_LT, K_LE, K_GT, K_GE, K_ASSIGN, K_DOT, K_COLON, K_PIPE, K_COMMA,
    K_SEMICOLON,
};

typedef struct tok {
    int type;
    int op;
    int line;
    const char *s; /* text / name / decoded string (arena) */
    size_t n;
    int64_t i;
    double f;
} tok_t;

typedef struct parser {
    jtemplate_t *t;
    const char *src;
    size_t len;
    tok_t *toks;
    size_t n_toks, cap_toks;
    size_t pos;
    int depth;
    char *err;
    size_t errlen;
    pd_status_t status;
    jmp_buf jb;
} parser_t;

static void perr(parser_t *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4), noreturn));
static void perr(parser_t *p, int line, const char *fmt, ...)
{
    va_list ap;
    if (p->errlen) {
        int k = snprintf(p->err, p->errlen, "line %d: ", line);
        if (k >= 0 && (size_t)k < p->errlen) {
            va_start(ap, fmt);
            vsnprintf(p->err + k, p->errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    if (p->status == PD_OK)
        p->status = PD_ERR_FORMAT;
    longjmp(p->jb, 1);
}

static void *palloc(parser_t *p, size_t size)
{
    void *m = pd_arena_calloc(p->t->arena, 1, size);
    if (m == NULL) {
        p->status = PD_ERR_NOMEM;
        perr(p, 0, "out of memory");
    }
    return m;
}

// ---- symbols ----
static uint32_t hash_name(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

int jinja_sym_find(const jsymtab_t *st, const char *name, size_t len)
{
    if (st->hcap == 0)
        return -1;
    uint32_t h = hash_name(name, len) & (uint32_t)(st->hcap - 1);
    for (;;) {
        int id = st->hash[h];
        if (id < 0)
            return -1;
        if (st->lens[id] == len && memcmp(st->names[id], name, len) == 0)
            return id;
        h = (h + 1) & (uint32_t)(st->hcap - 1);
    }
}

static int sym_intern(parser_t *p, const char *name, size_t len)
{
    jsymtab_t *st = &p->t->syms;
    int id = jinja_sym_find(st, name, len);
    if (id >= 0)
        return id;
    if (st->n == st->cap) {
        int cap = st->cap ? st->cap * 2 : 32;
        const char **names = palloc(p, sizeof(*names) * (size_t)cap);
        size_t *lens = palloc(p, sizeof(*lens) * (size_t)cap);
        if (st->n) {
            memcpy(names, st->names, sizeof(*names) * (size_t)st->n);
            memcpy(lens, st->lens, sizeof(*lens) * (size_t)st->n);
        }
        st->names = names;
        st->lens = lens;
        st->cap = cap;
    }
    if ((st->n + 1) * 2 > st->hcap) {
        int hcap = st->hcap ? st->hcap * 2 : 64;
        while ((st->n + 1) * 2 > hcap)
            hcap *= 2;
        int *hash = palloc(p, sizeof(*hash) * (size_t)hcap);
        memset(hash, 0xff, sizeof(*hash) * (size_t)hcap);
        for (int k = 0; k < st->n; k++) {
            uint32_t h = hash_name(st->names[k], st->lens[k]) & (uint32_t)(hcap - 1);
            while (hash[h] >= 0)
                h = (h + 1) & (uint32_t)(hcap - 1);
            hash[h] = k;
        }
        st->hash = hash;
        st->hcap = hcap;
    }
    id = st->n++;
    char *copy = palloc(p, len + 1);
    memcpy(copy, name, len);
    st->names[id] = copy;
    st->lens[id] = len;
    uint32_t h = hash_name(name, len) & (uint32_t)(st->hcap - 1);
    while (st->hash[h] >= 0)
        h = (h + 1) & (uint32_t)(st->hcap - 1);
    st->hash[h] = id;
    return id;
}

// ---- lexer ----
static tok_t *push_tok(parser_t *p, int type, int line)
{
    if (p->n_toks == p->cap_toks) {
        size_t cap = p->cap_toks ? p->cap_toks * 2 : 256;
        tok_t *nt = realloc(p->toks, cap * sizeof(*nt));
        if (nt == NULL) {
            p->status = PD_ERR_NOMEM;
            perr(p, line, "out of memory");
        }
        p->toks = nt;
        p->cap_toks = cap;
    }
    tok_t *t = &p->toks[p->n_toks++];
    memset(t, 0, sizeof(*t));
    t->type = type;
    t->line = line;
    return t;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* Python's str.isspace() for a code point (what \s matches in jinja2's lexer) */
static int cp_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

static uint32_t dec_at(const char *s, size_t i, size_t n, size_t *len_p)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned char c = u[i];
    int len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (i + (size_t)len > n)
        len = 1;
    uint32_t cp = len == 1 ? c : (uint32_t)(c & (0x7F >> len));
    for (int k = 1; k < len; k++)
        cp = (cp << 6) | (u[i + (size_t)k] & 0x3F);
    *len_p = (size_t)len;
    return cp;
}

/* bytes of the whitespace code point starting at i (0 if none) */
static size_t ws_len_at(const char *s, size_t i, size_t n)
{
    size_t l;
    if (i >= n)
        return 0;
    if ((unsigned char)s[i] < 0x80)
        return cp_space((unsigned char)s[i]) ? 1 : 0;
    uint32_t cp = dec_at(s, i, n, &l);
    return cp_space(cp) ? l : 0;
}

/* bytes of the whitespace code point ending at n (0 if none) */
static size_t ws_len_before(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    size_t st = n - 1;
    while (st > 0 && n - st < 4 && ((unsigned char)s[st] & 0xC0) == 0x80)
        st--;
    size_t l = ws_len_at(s, st, n);
    return st + l == n ? l : 0;
}

/* skip all whitespace from i */
static size_t skip_ws(const char *s, size_t i, size_t n)
{
    size_t l;
    while ((l = ws_len_at(s, i, n)) > 0)
        i += l;
    return i;
}

static int count_nl(const char *s, size_t n)
{
    int k = 0;
    for (size_t i = 0; i < n; i++)
        k += s[i] == '\n';
    return k;
}

/* Emit a text token after applying the strip rules of the tag that follows it. */
static void emit_text(parser_t *p, const char *s, size_t n, int line, int sign, int lstrip_ok,
                      int line_starting)
{
    if (sign == '-') {
        size_t l;
        while ((l = ws_len_before(s, n)) > 0)
            n -= l;
    } else if (sign != '+' && lstrip_ok) {
        size_t l = n;
        while (l > 0 && s[l - 1] != '\n')
            l--;
        if (l > 0 || line_starting) {
            if (skip_ws(s, l, n) == n && n > l)
                n = l;
        }
    }
    if (n > 0) {
        tok_t *t = push_tok(p, T_TEXT, line);
        t->s = s;
        t->n = n;
    }
}

static int utf8_put(char *o, uint32_t cp)
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

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decode a string literal body with Python's unicode-escape rules. */
static void decode_string(parser_t *p, tok_t *t, const char *s, size_t n, int line)
{
    char *o = palloc(p, n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            o[k++] = s[i];
            continue;
        }
        char c = s[++i];
        switch (c) {
        case '\n': break;
        case '\\': o[k++] = '\\'; break;
        case '\'': o[k++] = '\''; break;
        case '"': o[k++] = '"'; break;
        case 'a': o[k++] = '\a'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'n': o[k++] = '\n'; break;
        case 'r': o[k++] = '\r'; break;
        case 't': o[k++] = '\t'; break;
        case 'v': o[k++] = '\v'; break;
        case 'x': case 'u': case 'U': {
            int digits = c == 'x' ? 2 : c == 'u' ? 4 : 8;
            uint32_t cp = 0;
            if (i + (size_t)digits >= n + 0 && i + (size_t)digits > n - 1)
                perr(p, line, "truncated \\%c escape in string literal", c);
            for (int d = 1; d <= digits; d++) {
                int h = hexval(s[i + (size_t)d]);
                if (h < 0)
                    perr(p, line, "truncated \\%c escape in string literal", c);
                cp = cp * 16 + (uint32_t)h;
            }
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                perr(p, line, "illegal unicode escape in string literal");
            i += (size_t)digits;
            k += (size_t)utf8_put(o + k, cp);
            break;
        }
        default:
            if (c >= '0' && c <= '7') {
                uint32_t cp = (uint32_t)(c - '0');
                for (int d = 0; d < 2 && i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '7'; d++)
                    cp = cp * 8 + (uint32_t)(s[++i] - '0');
                k += (size_t)utf8_put(o + k, cp);
            } else {
                o[k++] = '\\';
                o[k++] = c;
            }
        }
    }
    o[k] = '\0';
    t->s = o;
    t->n = k;
}

static int is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* digits with single underscores between them; returns end */
static size_t scan_digits(const char *s, size_t i, size_t n)
{
    if (i >= n || !is_digit(s[i]))
        return i;
    while (i < n) {
        if (is_digit(s[i]))
            i++;
        else if (s[i] == '_' && i + 1 < n && is_digit(s[i + 1]))
            i++;
        else
            break;
    }
    return i;
}

/* Tokenize code inside {{ }} or {% %}; returns the position after the end delimiter. */
static size_t lex_code(parser_t *p, size_t i, int *line, int is_block, int *line_starting)
{
    const char *s = p->src;
    size_t n = p->len;
    char stack[256];
    int depth = 0;
    int start_line = *line;

    for (;;) {
        if (i >= n)
            perr(p, start_line, "unexpected end of template, expected '%s'", is_block ? "end of statement block" : "end of print statement");
        if (depth == 0) {
            if (is_block) {
                if (s[i] == '+' && i + 2 < n + 0 && s[i + 1] == '%' && s[i + 2] == '}') {
                    push_tok(p, T_BEND, *line);
                    *line_starting = 0;
                    return i + 3;
                }
                if (s[i] == '-' && i + 2 < n && s[i + 1] == '%' && s[i + 2] == '}') {
                    push_tok(p, T_BEND, *line);
                    i += 3;
                    size_t j = skip_ws(s, i, n);
                    *line += count_nl(s + i, j - i);
                    *line_starting = j > i && s[j - 1] == '\n';
                    return j;
                }
                if (s[i] == '%' && i + 1 < n && s[i + 1] == '}') {
                    push_tok(p, T_BEND, *line);
                    i += 2;
                    *line_starting = 0;
                    if (i < n && s[i] == '\n') {
                        i++;
                        (*line)++;
                        *line_starting = 1;
                    }
                    return i;
                }
            } else {
                if (s[i] == '-' && i + 2 < n && s[i + 1] == '}' && s[i + 2] == '}') {
                    push_tok(p, T_VEND, *line);
                    i += 3;
                    size_t j = skip_ws(s, i, n);
                    *line += count_nl(s + i, j - i);
                    *line_starting = j > i && s[j - 1] == '\n';
                    return j;
                }
                if (s[i] == '}' && i + 1 < n && s[i + 1] == '}') {
                    push_tok(p, T_VEND, *line);
                    *line_starting = 0;
                    return i + 2;
                }
            }
        }
        char c = s[i];
        if (is_ws(c)) {
            if (c == '\n')
                (*line)++;
            i++;
            continue;
        }
        if (is_name_start(c)) {
            size_t j = i + 1;
            while (j < n && (is_name_start(s[j]) || is_digit(s[j])))
                j++;
            tok_t *t = push_tok(p, T_NAME, *line);
            t->s = s + i;
            t->n = j - i;
            i = j;
            continue;
        }
        if (c == '0' && i + 2 < n && strchr("xXoObB", s[i + 1]) && (hexval(s[i + 2]) >= 0 || s[i + 2] == '_')) {
            /* 0x.., 0o.., 0b.. integer literals (underscores allowed between digits) */
            int base = (s[i + 1] | 0x20) == 'x' ? 16 : (s[i + 1] | 0x20) == 'o' ? 8 : 2;
            size_t j = i + 2;
            uint64_t v = 0;
            int digits = 0;
            while (j < n) {
                if (s[j] == '_' && j + 1 < n && hexval(s[j + 1]) >= 0 && hexval(s[j + 1]) < base) {
                    j++;
                    continue;
                }
                int h = hexval(s[j]);
                if (h < 0 || h >= base)
                    break;
                if (v > (uint64_t)INT64_MAX / (uint64_t)base)
                    perr(p, *line, "integer literal too large");
                v = v * (uint64_t)base + (uint64_t)h;
                digits++;
                j++;
            }
            if (digits) {
                tok_t *t = push_tok(p, T_INT, *line);
                t->i = (int64_t)v;
                i = j;
                continue;
            }
        }
        if (is_digit(c)) {
            size_t j = scan_digits(s, i, n);
            int is_float = 0;
            size_t k = j;
            if (k + 1 < n && s[k] == '.' && is_digit(s[k + 1])) {
                k = scan_digits(s, k + 1, n);
                is_float = 1;
            }
            if (k < n && (s[k] == 'e' || s[k] == 'E')) {
                size_t e = k + 1;
                if (e < n && (s[e] == '+' || s[e] == '-'))
                    e++;
                size_t e2 = scan_digits(s, e, n);
                if (e2 > e) {
                    k = e2;
                    is_float = 1;
                }
            }
            char buf[128];
            size_t bl = 0;
            for (size_t q = i; q < k && bl + 1 < sizeof(buf); q++)
                if (s[q] != '_')
                    buf[bl++] = s[q];
            buf[bl] = '\0';
            if (is_float) {
                tok_t *t = push_tok(p, T_FLOAT, *line);
                t->f = strtod(buf, NULL);
            } else {
                tok_t *t = push_tok(p, T_INT, *line);
                errno = 0;
                long long v = strtoll(buf, NULL, 10);
                if (errno == ERANGE || bl + 1 >= sizeof(buf))
                    perr(p, *line, "integer literal too large");
                t->i = v;
            }
            i = k;
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t j = i + 1;
            int l0 = *line;
            while (j < n && s[j] != c) {
                if (s[j] == '\\' && j + 1 < n)
                    j++;
                j++;
            }
            if (j >= n)
                perr(p, l0, "unexpected end of string");
            tok_t *t = push_tok(p, T_STRING, l0);
            decode_string(p, t, s + i + 1, j - i - 1, l0);
            *line += count_nl(s + i, j - i);
            i = j + 1;
            continue;
        }
        int op = 0, w = 1;
        char c1 = i + 1 < n ? s[i + 1] : 0;
        switch (c) {
        case '+': op = K_ADD; break;
        case '-': op = K_SUB; break;
        case '*': if (c1 == '*') { op = K_POW; w = 2; } else op = K_MUL; break;
        case '/': if (c1 == '/') { op = K_FLOORDIV; w = 2; } else op = K_DIV; break;
        case '%': op = K_MOD; break;
        case '~': op = K_TILDE; break;
        case '[': op = K_LBRACKET; break;
        case ']': op = K_RBRACKET; break;
        case '(': op = K_LPAREN; break;
        case ')': op = K_RPAREN; break;
        case '{': op = K_LBRACE; break;
        case '}': op = K_RBRACE; break;
        case '=': if (c1 == '=') { op = K_EQ; w = 2; } else op = K_ASSIGN; break;
        case '!': if (c1 == '=') { op = K_NE; w = 2; } break;
        case '<': if (c1 == '=') { op = K_LE; w = 2; } else op = K_LT; break;
        case '>': if (c1 == '=') { op = K_GE; w = 2; } else op = K_GT; break;
        case '.': op = K_DOT; break;
        case ':': op = K_COLON; break;
        case '|': op = K_PIPE; break;
        case ',': op = K_COMMA; break;
        case ';': op = K_SEMICOLON; break;
        default: break;
        }
        if (op == 0)
            perr(p, *line, "unexpected char '%c'", c);
        if (op == K_LBRACKET || op == K_LPAREN || op == K_LBRACE) {
            if (depth >= (int)sizeof(stack))
                perr(p, *line, "brackets nested too deeply");
            stack[depth++] = (char)(op == K_LBRACKET ? ']' : op == K_LPAREN ? ')' : '}');
        } else if (op == K_RBRACKET || op == K_RPAREN || op == K_RBRACE) {
            if (depth == 0)
                perr(p, *line, "unexpected '%c'", c);
            if (stack[depth - 1] != c)
                perr(p, *line, "unexpected '%c', expected '%c'", c, stack[depth - 1]);
            depth--;
        }
        tok_t *t = push_tok(p, T_OP, *line);
        t->op = op;
        i += (size_t)w;
    }
}

/* Recognise "{%[-+]? raw [-]?%}" at i (i points at '{'); returns end or 0. */
static size_t match_raw_begin(const char *s, size_t i, size_t n, int *strip_after)
{
    size_t j = i + 2;
    if (j < n && (s[j] == '-' || s[j] == '+'))
        j++;
    while (j < n && is_ws(s[j]))
        j++;
    if (j + 3 > n || memcmp(s + j, "raw", 3) != 0)
        return 0;
    j += 3;
    while (j < n && is_ws(s[j]))
        j++;
    *strip_after = 0;
    if (j < n && s[j] == '-') {
        *strip_after = 1;
        j++;
    }
    if (j + 2 > n || s[j] != '%' || s[j + 1] != '}')
        return 0;
    return j + 2;
}

static void lex(parser_t *p)
{
    const char *s = p->src;
    size_t n = p->len, i = 0;
    int line = 1, line_starting = 1;

    while (i < n) {
        size_t k = i;
        int kind = 0;
        while (k + 1 < n) {
            if (s[k] == '{' && (s[k + 1] == '{' || s[k + 1] == '%' || s[k + 1] == '#')) {
                kind = s[k + 1];
                break;
            }
            k++;
        }
        if (!kind) {
            emit_text(p, s + i, n - i, line, 0, 0, line_starting);
            break;
        }
        int sign = (k + 2 < n && (s[k + 2] == '-' || s[k + 2] == '+')) ? s[k + 2] : 0;
        int text_line = line;
        line += count_nl(s + i, k - i);
        int raw_strip = 0;
        size_t raw_end = kind == '%' ? match_raw_begin(s, k, n, &raw_strip) : 0;
        emit_text(p, s + i, k - i, text_line, sign, kind != '{', line_starting);
        if (raw_end) {
            size_t j = raw_end;
            if (raw_strip)
                j = skip_ws(s, j, n);
            line += count_nl(s + k, j - k);
            int raw_line_starting = j > k && s[j - 1] == '\n';
            /* find {%[-+]? endraw [-+]?%} */
            size_t q = j;
            for (;;) {
                while (q + 1 < n && !(s[q] == '{' && s[q + 1] == '%'))
                    q++;
                if (q + 1 >= n)
                    perr(p, line, "missing end of raw directive");
                size_t r = q + 2;
                int esign = 0;
                if (r < n && (s[r] == '-' || s[r] == '+'))
                    esign = s[r++];
                while (r < n && is_ws(s[r]))
                    r++;
                if (r + 6 <= n && memcmp(s + r, "endraw", 6) == 0) {
                    r += 6;
                    while (r < n && is_ws(s[r]))
                        r++;
                    int tail = 0;
                    if (r < n && (s[r] == '-' || s[r] == '+'))
                        tail = s[r++];
                    if (r + 1 < n && s[r] == '%' && s[r + 1] == '}') {
                        emit_text(p, s + j, q - j, line, esign, 1, raw_line_starting);
                        line += count_nl(s + j, q - j);
                        r += 2;
                        line_starting = 0;
                        if (tail == '-') {
                            size_t r0 = r;
                            r = skip_ws(s, r, n);
                            line_starting = r > r0 && s[r - 1] == '\n';
                        } else if (tail == 0 && r < n && s[r] == '\n') {
                            r++;
                            line_starting = 1;
                        }
                        line += count_nl(s + q, r - q);
                        i = r;
                        break;
                    }
                }
                q += 2;
            }
            continue;
        }
        i = k + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            size_t q = i;
            while (q + 1 < n && !(s[q] == '#' && s[q + 1] == '}'))
                q++;
            if (q + 1 >= n)
                perr(p, line, "missing end of comment tag");
            int csign = q > i && (s[q - 1] == '-' || s[q - 1] == '+') ? s[q - 1] : 0;
            line += count_nl(s + i, q - i);
            i = q + 2;
            line_starting = 0;
            if (csign == '-') {
                size_t r0 = i;
                i = skip_ws(s, i, n);
                line += count_nl(s + r0, i - r0);
                line_starting = i > r0 && s[i - 1] == '\n';
            } else if (csign != '+' && i < n && s[i] == '\n') {
                i++;
                line++;
                line_starting = 1;
            }
            continue;
        }
        push_tok(p, kind == '{' ? T_VBEGIN : T_BBEGIN, line);
        i = lex_code(p, i, &line, kind == '%', &line_starting);
    }
    push_tok(p, T_EOF, line);
}

// ---- parser helpers ----
static tok_t *cur(parser_t *p) { return &p->toks[p->pos]; }
static tok_t *peek(parser_t *p, size_t k)
{
    size_t q = p->pos + k;
    return q < p->n_toks ? &p->toks[q] : &p->toks[p->n_toks - 1];
}
static void advance(parser_t *p)
{
    if (p->pos + 1 < p->n_toks)
        p->pos++;
}
static int is_op(tok_t *t, int op) { return t->type == T_OP && t->op == op; }
static int is_name(tok_t *t, const char *name)
{
    size_t l = strlen(name);
    return t->type == T_NAME && t->n == l && memcmp(t->s, name, l) == 0;
}

static const char *tok_desc(tok_t *t, char *buf, size_t bl)
{
    switch (t->type) {
    case T_EOF: return "end of template";
    case T_TEXT: return "template data";
    case T_VBEGIN: return "begin of print statement";
    case T_VEND: return "end of print statement";
    case T_BBEGIN: return "begin of statement block";
    case T_BEND: return "end of statement block";
    case T_NAME: snprintf(buf, bl, "'%.*s'", (int)PD_MIN(t->n, 40), t->s); return buf;
    case T_STRING: return "string";
    case T_INT: return "integer";
    case T_FLOAT: return "float";
    default: return "operator";
    }
}

static void expect_op(parser_t *p, int op, const char *what)
{
    char b[64];
    if (!is_op(cur(p), op))
        perr(p, cur(p)->line, "expected '%s', got %s", what, tok_desc(cur(p), b, sizeof(b)));
    advance(p);
}

static void expect_type(parser_t *p, int type, const char *what)
{
    char b[64];
    if (cur(p)->type != type)
        perr(p, cur(p)->line, "expected %s, got %s", what, tok_desc(cur(p), b, sizeof(b)));
    advance(p);
}

static jnode_t *mk(parser_t *p, int kind, int line)
{
    jnode_t *nd = palloc(p, sizeof(*nd));
    nd->kind = (uint16_t)kind;
    nd->line = line;
    return nd;
}

/* growable node list used while parsing */
typedef struct nlist {
    jnode_t **v;
    int n, cap;
    const char **names;
} nlist_t;

static void nl_push(parser_t *p, nlist_t *l, jnode_t *nd, const char *name)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 8;
        jnode_t **v = palloc(p, sizeof(*v) * (size_t)cap);
        const char **names = palloc(p, sizeof(*names) * (size_t)cap);
        if (l->n) {
            memcpy(v, l->v, sizeof(*v) * (size_t)l->n);
            memcpy(names, l->names, sizeof(*names) * (size_t)l->n);
        }
        l->v = v;
        l->names = names;
        l->cap = cap;
    }
    l->names[l->n] = name;
    l->v[l->n++] = nd;
}

static const char *tok_cstr(parser_t *p, tok_t *t)
{
    char *s = palloc(p, t->n + 1);
    memcpy(s, t->s, t->n);
    return s;
}

static void enter(parser_t *p)
{
    if (++p->depth > MAX_PARSE_DEPTH)
        perr(p, cur(p)->line, "template nested too deeply");
}
static void leave(parser_t *p) { p->depth--; }

static jnode_t *parse_expression(parser_t *p, int with_condexpr);
static jnode_t *parse_unary(parser_t *p, int with_filter);
static jnode_t *parse_primary(parser_t *p);
static jnode_t *parse_postfix(parser_t *p, jnode_t *nd);
static jnode_t *parse_filter_chain(parser_t *p, jnode_t *nd, int one);

/* Is the current token one that ends a tuple? */
static int tuple_end(parser_t *p, const char *const *extra)
{
    tok_t *t = cur(p);
    if (t->type == T_VEND || t->type == T_BEND || t->type == T_EOF || is_op(t, K_RPAREN))
        return 1;
    for (; extra && *extra; extra++)
        if (is_name(t, *extra))
            return 1;
    return 0;
}

static jnode_t *parse_tuple(parser_t *p, int simplified, int with_condexpr,
                            const char *const *extra, int explicit_parens)
{
    int line = cur(p)->line;
    nlist_t items = {0};
    int is_tuple = 0;
    for (;;) {
        if (items.n > 0)
            expect_op(p, K_COMMA, ",");
        if (tuple_end(p, extra))
            break;
        jnode_t *e;
        if (simplified)
            e = parse_primary(p);
        else
            e = parse_expression(p, with_condexpr);
        nl_push(p, &items, e, NULL);
        if (is_op(cur(p), K_COMMA))
            is_tuple = 1;
        else
            break;
    }
    if (!is_tuple) {
        if (items.n)
            return items.v[0];
        if (!explicit_parens) {
            char b[64];
            perr(p, line, "expected an expression, got %s", tok_desc(cur(p), b, sizeof(b)));
        }
    }
    jnode_t *nd = mk(p, N_TUPLE, line);
    nd->kids = items.v;
    nd->n_kids = items.n;
    return nd;
}

static int bin_depth_ok(parser_t *p, int *chain)
{
    if (++*chain > 400)
        perr(p, cur(p)->line, "expression too long");
    return 1;
}

static jnode_t *mk_bin(parser_t *p, int kind, int op, jnode_t *a, jnode_t *b, int line)
{
    jnode_t *nd = mk(p, kind, line);
    nd->op = (uint16_t)op;
    nd->a = a;
    nd->b = b;
    return nd;
}

static void parse_call_args(parser_t *p, jnode_t *call)
{
    nlist_t args = {0}, kw = {0};
    expect_op(p, K_LPAREN, "(");
    while (!is_op(cur(p), K_RPAREN)) {
        if (args.n || kw.n)
            expect_op(p, K_COMMA, ",");
        if (is_op(cur(p), K_RPAREN))
            break;
        if (is_op(cur(p), K_MUL) || is_op(cur(p), K_POW))
            perr(p, cur(p)->line, "*args and **kwargs in calls are not supported");
        if (cur(p)->type == T_NAME && is_op(peek(p, 1), K_ASSIGN)) {
            const char *name = tok_cstr(p, cur(p));
            advance(p);
            advance(p);
            nl_push(p, &kw, parse_expression(p, 1), name);
        } else {
            if (kw.n)
                perr(p, cur(p)->line, "invalid syntax for function call expression");
            nl_push(p, &args, parse_expression(p, 1), NULL);
        }
    }
    expect_op(p, K_RPAREN, ")");
    call->kids = args.v;
    call->n_kids = args.n;
    call->kids2 = kw.v;
    call->n_kids2 = kw.n;
    call->names = kw.names;
}

static jnode_t *parse_primary(parser_t *p)
{
    tok_t *t = cur(p);
    jnode_t *nd;
    char b[64];
    enter(p);
    switch (t->type) {
    case T_NAME:
        if (is_name(t, "true") || is_name(t, "True") || is_name(t, "false") || is_name(t, "False")) {
            nd = mk(p, N_CONST, t->line);
            nd->val.t = JV_BOOL;
            nd->val.i = t->s[0] == 't' || t->s[0] == 'T';
        } else if (is_name(t, "none") || is_name(t, "None")) {
            nd = mk(p, N_CONST, t->line);
            nd->val.t = JV_NONE;
        } else {
            nd = mk(p, N_NAME, t->line);
            nd->sym = sym_intern(p, t->s, t->n);
            nd->str = tok_cstr(p, t);
        }
        advance(p);
        break;
    case T_STRING: {
        /* adjacent string literals concatenate */
        size_t total = 0, k = p->pos;
        while (p->toks[k].type == T_STRING)
            total += p->toks[k++].n;
        char *s = palloc(p, total + 1);
        size_t o = 0;
        nd = mk(p, N_CONST, t->line);
        while (cur(p)->type == T_STRING) {
            memcpy(s + o, cur(p)->s, cur(p)->n);
            o += cur(p)->n;
            advance(p);
        }
        nd->val.t = JV_STR;
        nd->val.s = s;
        nd->val.n = total;
        break;
    }
    case T_INT:
        nd = mk(p, N_CONST, t->line);
        nd->val.t = JV_INT;
        nd->val.i = t->i;
        advance(p);
        break;
    case T_FLOAT:
        nd = mk(p, N_CONST, t->line);
        nd->val.t = JV_FLOAT;
        nd->val.f = t->f;
        advance(p);
        break;
    case T_OP:
        if (t->op == K_LPAREN) {
            advance(p);
            nd = parse_tuple(p, 0, 1, NULL, 1);
            expect_op(p, K_RPAREN, ")");
            break;
        }
        if (t->op == K_LBRACKET) {
            nlist_t items = {0};
            int line = t->line;
            advance(p);
            while (!is_op(cur(p), K_RBRACKET)) {
                if (items.n)
                    expect_op(p, K_COMMA, ",");
                if (is_op(cur(p), K_RBRACKET))
                    break;
                nl_push(p, &items, parse_expression(p, 1), NULL);
            }
            expect_op(p, K_RBRACKET, "]");
            nd = mk(p, N_LIST, line);
            nd->kids = items.v;
            nd->n_kids = items.n;
            break;
        }
        if (t->op == K_LBRACE) {
            nlist_t keys = {0}, vals = {0};
            int line = t->line;
            advance(p);
            while (!is_op(cur(p), K_RBRACE)) {
                if (keys.n)
                    expect_op(p, K_COMMA, ",");
                if (is_op(cur(p), K_RBRACE))
                    break;
                nl_push(p, &keys, parse_expression(p, 1), NULL);
                expect_op(p, K_COLON, ":");
                nl_push(p, &vals, parse_expression(p, 1), NULL);
            }
            expect_op(p, K_RBRACE, "}");
            nd = mk(p, N_DICT, line);
            nd->kids = keys.v;
            nd->n_kids = keys.n;
            nd->kids2 = vals.v;
            nd->n_kids2 = vals.n;
            break;
        }
        /* fallthrough */
    default:
        perr(p, t->line, "unexpected %s", tok_desc(t, b, sizeof(b)));
    }
    leave(p);
    return nd;
}

static jnode_t *parse_subscript(parser_t *p, jnode_t *obj)
{
    tok_t *t = cur(p);
    int line = t->line;
    if (is_op(t, K_DOT)) {
        advance(p);
        tok_t *a = cur(p);
        if (a->type == T_NAME) {
            jnode_t *nd = mk(p, N_GETATTR, line);
            nd->a = obj;
            nd->str = tok_cstr(p, a);
            nd->slen = a->n;
            advance(p);
            return nd;
        }
        if (a->type == T_INT) {
            jnode_t *nd = mk(p, N_GETITEM, line);
            nd->a = obj;
            nd->b = mk(p, N_CONST, line);
            nd->b->val.t = JV_INT;
            nd->b->val.i = a->i;
            advance(p);
            return nd;
        }
        perr(p, line, "expected name or number after '.'");
    }
    /* '[' */
    advance(p);
    jnode_t *parts[3] = {NULL, NULL, NULL};
    int is_slice = 0, k = 0;
    for (;;) {
        if (is_op(cur(p), K_COLON)) {
            is_slice = 1;
            if (++k > 2)
                perr(p, cur(p)->line, "invalid slice");
            advance(p);
            continue;
        }
        if (is_op(cur(p), K_RBRACKET))
            break;
        if (parts[k])
            perr(p, cur(p)->line, "expected ']'");
        parts[k] = parse_expression(p, 1);
        if (is_op(cur(p), K_COMMA) && !is_slice) {
            /* a[x, y]: the key is the tuple (x, y) */
            nlist_t items = {0};
            nl_push(p, &items, parts[0], NULL);
            while (is_op(cur(p), K_COMMA)) {
                advance(p);
                if (is_op(cur(p), K_RBRACKET))
                    break;
                nl_push(p, &items, parse_expression(p, 1), NULL);
            }
            jnode_t *tup = mk(p, N_TUPLE, line);
            tup->kids = items.v;
            tup->n_kids = items.n;
            parts[0] = tup;
            break;
        }
    }
    expect_op(p, K_RBRACKET, "]");
    if (!is_slice) {
        if (!parts[0])
            perr(p, line, "expected subscript expression");
        jnode_t *nd = mk(p, N_GETITEM, line);
        nd->a = obj;
        nd->b = parts[0];
        return nd;
    }
    jnode_t *nd = mk(p, N_SLICE, line);
    nd->a = obj;
    nd->b = parts[0];
    nd->c = parts[1];
    nd->d = parts[2];
    return nd;
}

static jnode_t *parse_postfix(parser_t *p, jnode_t *nd)
{
    for (;;) {
        tok_t *t = cur(p);
        if (is_op(t, K_DOT) || is_op(t, K_LBRACKET)) {
            nd = parse_subscript(p, nd);
        } else if (is_op(t, K_LPAREN)) {
            jnode_t *call = mk(p, N_CALL, t->line);
            call->a = nd;
            parse_call_args(p, call);
            nd = call;
        } else {
            break;
        }
        enter(p);
    }
    return nd;
}

/* dotted filter/test name */
static void parse_dotted(parser_t *p, char *buf, size_t bl, size_t *len_p)
{
    size_t l = 0;
    tok_t *t = cur(p);
    if (t->type != T_NAME)
        perr(p, t->line, "expected a filter or test name");
    for (;;) {
        t = cur(p);
        if (l + t->n + 2 > bl)
            perr(p, t->line, "name too long");
        memcpy(buf + l, t->s, t->n);
        l += t->n;
        advance(p);
        if (is_op(cur(p), K_DOT) && peek(p, 1)->type == T_NAME) {
            buf[l++] = '.';
            advance(p);
            continue;
        }
        break;
    }
    buf[l] = '\0';
    *len_p = l;
}

static jnode_t *parse_filter_one(parser_t *p, jnode_t *operand)
{
    char name[128];
    size_t l;
    int line = cur(p)->line;
    parse_dotted(p, name, sizeof(name), &l);
    int id = jinja_filter_id(name, l);
    if (id < 0)
        perr(p, line, "no filter named '%s'", name);
    jnode_t *nd = mk(p, N_FILTER, line);
    nd->op = (uint16_t)id;
    nd->a = operand;
    nd->str = palloc(p, l + 1);
    memcpy((char *)nd->str, name, l);
    if (is_op(cur(p), K_LPAREN))
        parse_call_args(p, nd);
    return nd;
}

static jnode_t *parse_test(parser_t *p, jnode_t *operand)
{
    char name[128];
    size_t l;
    int line = cur(p)->line;
    int negate = 0;
    advance(p); /* 'is' */
    if (is_name(cur(p), "not")) {
        negate = 1;
        advance(p);
    }
    parse_dotted(p, name, sizeof(name), &l);
    int id = jinja_test_id(name, l);
    if (id < 0)
        perr(p, line, "no test named '%s'", name);
    jnode_t *nd = mk(p, N_TEST, line);
    nd->op = (uint16_t)id;
    nd->a = operand;
    nd->flag = negate;
    tok_t *t = cur(p);
    if (is_op(t, K_LPAREN)) {
        parse_call_args(p, nd);
    } else if ((t->type == T_NAME || t->type == T_STRING || t->type == T_INT || t->type == T_FLOAT ||
                is_op(t, K_LPAREN) || is_op(t, K_LBRACKET) || is_op(t, K_LBRACE)) &&
               !is_name(t, "else") && !is_name(t, "or") && !is_name(t, "and")) {
        if (is_name(t, "is"))
            perr(p, t->line, "you cannot chain multiple tests with is");
        jnode_t *arg = parse_postfix(p, parse_primary(p));
        nd->kids = palloc(p, sizeof(jnode_t *));
        nd->kids[0] = arg;
        nd->n_kids = 1;
    }
    return nd;
}

/* filters ('|') and tests ('is') and calls after a unary */
static jnode_t *parse_filter_chain(parser_t *p, jnode_t *nd, int one)
{
    for (;;) {
        tok_t *t = cur(p);
        if (is_op(t, K_PIPE)) {
            advance(p);
            nd = parse_filter_one(p, nd);
        } else if (is_name(t, "is")) {
            nd = parse_test(p, nd);
        } else if (is_op(t, K_LPAREN)) {
            jnode_t *call = mk(p, N_CALL, t->line);
            call->a = nd;
            parse_call_args(p, call);
            nd = call;
        } else {
            break;
        }
        enter(p);
        if (one)
            break;
    }
    return nd;
}

static jnode_t *parse_unary(parser_t *p, int with_filter)
{
    tok_t *t = cur(p);
    jnode_t *nd;
    int saved = p->depth;
    enter(p);
    if (is_op(t, K_SUB)) {
        advance(p);
        nd = mk(p, N_NEG, t->line);
        nd->a = parse_unary(p, 0);
    } else if (is_op(t, K_ADD)) {
        advance(p);
        nd = mk(p, N_POS, t->line);
        nd->a = parse_unary(p, 0);
    } else {
        nd = parse_primary(p);
    }
    nd = parse_postfix(p, nd);
    if (with_filter)
        nd = parse_filter_chain(p, nd, 0);
    p->depth = saved;
    return nd;
}

static jnode_t *parse_pow(parser_t *p)
{
    int chain = 0;
    jnode_t *l = parse_unary(p, 1);
    while (is_op(cur(p), K_POW)) {
        int line = cur(p)->line;
        bin_depth_ok(p, &chain);
        advance(p);
        l = mk_bin(p, N_BINOP, OP_POW, l, parse_unary(p, 1), line);
    }
    return l;
}

static jnode_t *parse_math2(parser_t *p)
{
    int chain = 0;
    jnode_t *l = parse_pow(p);
    for (;;) {
        tok_t *t = cur(p);
        int op = is_op(t, K_MUL) ? OP_MUL : is_op(t, K_DIV) ? OP_DIV : is_op(t, K_FLOORDIV) ? OP_FLOORDIV
                 : is_op(t, K_MOD) ? OP_MOD : 0;
        if (!op)
            break;
        bin_depth_ok(p, &chain);
        advance(p);
        l = mk_bin(p, N_BINOP, op, l, parse_pow(p), t->line);
    }
    return l;
}

static jnode_t *parse_concat(parser_t *p)
{
    jnode_t *first = parse_math2(p);
    if (!is_op(cur(p), K_TILDE))
        return first;
    nlist_t items = {0};
    int line = cur(p)->line;
    nl_push(p, &items, first, NULL);
    while (is_op(cur(p), K_TILDE)) {
        advance(p);
        nl_push(p, &items, parse_math2(p), NULL);
    }
    jnode_t *nd = mk(p, N_CONCAT, line);
    nd->kids = items.v;
    nd->n_kids = items.n;
    return nd;
}

static jnode_t *parse_math1(parser_t *p)
{
    int chain = 0;
    jnode_t *l = parse_concat(p);
    for (;;) {
        tok_t *t = cur(p);
        int op = is_op(t, K_ADD) ? OP_ADD : is_op(t, K_SUB) ? OP_SUB : 0;
        if (!op)
            break;
        bin_depth_ok(p, &chain);
        advance(p);
        l = mk_bin(p, N_BINOP, op, l, parse_concat(p), t->line);
    }
    return l;
}

static jnode_t *parse_compare(parser_t *p)
{
    int line = cur(p)->line;
    jnode_t *first = parse_math1(p);
    nlist_t operands = {0};
    int ops[64];
    for (;;) {
        tok_t *t = cur(p);
        int op = 0;
        if (t->type == T_OP) {
            switch (t->op) {
            case K_EQ: op = OP_EQ; break;
            case K_NE: op = OP_NE; break;
            case K_LT: op = OP_LT; break;
            case K_LE: op = OP_LE; break;
            case K_GT: op = OP_GT; break;
            case K_GE: op = OP_GE; break;
            default: break;
            }
            if (op)
                advance(p);
        } else if (is_name(t, "in")) {
            op = OP_IN;
            advance(p);
        } else if (is_name(t, "not") && is_name(peek(p, 1), "in")) {
            op = OP_NOTIN;
            advance(p);
            advance(p);
        }
        if (!op)
            break;
        if (operands.n >= (int)PD_ARRAY_SIZE(ops))
            perr(p, t->line, "comparison chain too long");
        ops[operands.n] = op;
        nl_push(p, &operands, parse_math1(p), NULL);
    }
    if (operands.n == 0)
        return first;
    jnode_t *nd = mk(p, N_COMPARE, line);
    nd->a = first;
    nd->kids = operands.v;
    nd->n_kids = operands.n;
    nd->ops = palloc(p, sizeof(int) * (size_t)operands.n);
    memcpy(nd->ops, ops, sizeof(int) * (size_t)operands.n);
    return nd;
}

static jnode_t *parse_not(parser_t *p)
{
    if (is_name(cur(p), "not")) {
        int line = cur(p)->line;
        advance(p);
        enter(p);
        jnode_t *nd = mk(p, N_NOT, line);
        nd->a = parse_not(p);
        leave(p);
        return nd;
    }
    return parse_compare(p);
}

static jnode_t *parse_and(parser_t *p)
{
    int chain = 0;
    jnode_t *l = parse_not(p);
    while (is_name(cur(p), "and")) {
        int line = cur(p)->line;
        bin_depth_ok(p, &chain);
        advance(p);
        l = mk_bin(p, N_AND, 0, l, parse_not(p), line);
    }
    return l;
}

static jnode_t *parse_or(parser_t *p)
{
    int chain = 0;
    jnode_t *l = parse_and(p);
    while (is_name(cur(p), "or")) {
        int line = cur(p)->line;
        bin_depth_ok(p, &chain);
        advance(p);
        l = mk_bin(p, N_OR, 0, l, parse_and(p), line);
    }
    return l;
}

static jnode_t *parse_condexpr(parser_t *p)
{
    int saved = p->depth;
    jnode_t *e1 = parse_or(p);
    while (is_name(cur(p), "if")) {
        int line = cur(p)->line;
        enter(p);
        advance(p);
        jnode_t *cond = parse_or(p);
        jnode_t *e3 = NULL;
        if (is_name(cur(p), "else")) {
            advance(p);
            e3 = parse_condexpr(p);
        }
        jnode_t *nd = mk(p, N_COND, line);
        nd->a = cond;
        nd->b = e1;
        nd->c = e3;
        e1 = nd;
    }
    p->depth = saved;
    return e1;
}

static jnode_t *parse_expression(parser_t *p, int with_condexpr)
{
    jnode_t *nd;
    enter(p);
    nd = with_condexpr ? parse_condexpr(p) : parse_or(p);
    leave(p);
    return nd;
}

// ---- statements ----
static jnode_t *subparse(parser_t *p, const char *const *end_names);

static void expect_block_end(parser_t *p)
{
    expect_type(p, T_BEND, "end of statement block");
}

/* After subparse stopped at "{% name", check the name and consume it. */
static int at_block_name(parser_t *p, const char *name)
{
    return is_name(cur(p), name);
}

static jnode_t *parse_assign_target(parser_t *p, int with_tuple, int with_namespace,
                                    const char *const *extra)
{
    tok_t *t = cur(p);
    if (with_namespace && t->type == T_NAME && is_op(peek(p, 1), K_DOT) && peek(p, 2)->type == T_NAME) {
        jnode_t *nd = mk(p, N_NSATTR, t->line);
        nd->sym = sym_intern(p, t->s, t->n);
        nd->str = tok_cstr(p, peek(p, 2));
        nd->slen = peek(p, 2)->n;
        advance(p);
        advance(p);
        advance(p);
        return nd;
    }
    jnode_t *target;
    if (with_tuple)
        target = parse_tuple(p, 1, 1, extra, 0);
    else {
        target = parse_primary(p);
    }
    /* every leaf must be a plain name */
    if (target->kind == N_NAME)
        return target;
    if (target->kind == N_TUPLE) {
        for (int k = 0; k < target->n_kids; k++)
            if (target->kids[k]->kind != N_NAME)
                perr(p, t->line, "can't assign to %s", "expression");
        return target;
    }
    perr(p, t->line, "can't assign to %s", target->kind == N_CONST ? "literal" : "expression");
}

static const char *const END_FOR_ELSE[] = {"endfor", "else", NULL};
static const char *const END_FOR[] = {"endfor", NULL};
static const char *const END_IF[] = {"elif", "else", "endif", NULL};
static const char *const END_IF2[] = {"endif", NULL};
static const char *const END_SET[] = {"endset", NULL};
static const char *const END_MACRO[] = {"endmacro", NULL};
static const char *const END_CALL[] = {"endcall", NULL};
static const char *const END_FILTER[] = {"endfilter", NULL};
static const char *const END_WITH[] = {"endwith", NULL};
static const char *const END_GEN[] = {"endgeneration", NULL};

static void parse_signature(parser_t *p, jnode_t *nd)
{
    nlist_t defs = {0};
    expect_op(p, K_LPAREN, "(");
    while (!is_op(cur(p), K_RPAREN)) {
        if (defs.n)
            expect_op(p, K_COMMA, ",");
        tok_t *t = cur(p);
        if (t->type != T_NAME)
            perr(p, t->line, "expected a parameter name");
        const char *name = tok_cstr(p, t);
        advance(p);
        jnode_t *def = NULL;
        if (is_op(cur(p), K_ASSIGN)) {
            advance(p);
            def = parse_expression(p, 1);
        } else if (defs.n && defs.v[defs.n - 1]) {
            perr(p, t->line, "non-default argument follows default argument");
        }
        nl_push(p, &defs, def, name);
    }
    expect_op(p, K_RPAREN, ")");
    nd->kids2 = defs.v;
    nd->n_kids2 = defs.n;
    nd->names = defs.names;
    nd->syms = palloc(p, sizeof(int) * (size_t)(defs.n + 1));
    for (int k = 0; k < defs.n; k++)
        nd->syms[k] = sym_intern(p, defs.names[k], strlen(defs.names[k]));
}

static jnode_t *parse_filter_block_chain(parser_t *p)
{
    /* name[(args)] | name ... applied to the block's output */
    jnode_t *chain = parse_filter_one(p, NULL);
    while (is_op(cur(p), K_PIPE)) {
        advance(p);
        chain = parse_filter_one(p, chain);
    }
    return chain;
}

static jnode_t *parse_statement(parser_t *p)
{
    tok_t *t = cur(p);
    int line = t->line;
    char b[64];
    if (t->type != T_NAME)
        perr(p, line, "tag name expected");
    enter(p);
    jnode_t *nd = NULL;
    if (is_name(t, "if")) {
        advance(p);
        nd = mk(p, N_IF, line);
        jnode_t *node = nd;
        node->a = parse_tuple(p, 0, 1, NULL, 0);
        expect_block_end(p);
        for (;;) {
            node->b = subparse(p, END_IF);
            if (at_block_name(p, "elif")) {
                int l2 = cur(p)->line;
                advance(p);
                jnode_t *n2 = mk(p, N_IF, l2);
                n2->a = parse_tuple(p, 0, 1, NULL, 0);
                expect_block_end(p);
                node->c = n2;
                node = n2;
                continue;
            }
            if (at_block_name(p, "else")) {
                advance(p);
                expect_block_end(p);
                node->c = subparse(p, END_IF2);
            }
            break;
        }
        advance(p); /* endif */
    } else if (is_name(t, "for")) {
        static const char *const in_end[] = {"in", NULL};
        static const char *const rec_end[] = {"recursive", NULL};
        advance(p);
        nd = mk(p, N_FOR, line);
        nd->a = parse_assign_target(p, 1, 0, in_end);
        if (!is_name(cur(p), "in"))
            perr(p, cur(p)->line, "expected 'in'");
        advance(p);
        nd->b = parse_tuple(p, 0, 0, rec_end, 0);
        if (is_name(cur(p), "if")) {
            advance(p);
            nd->e = parse_expression(p, 1);
        }
        if (is_name(cur(p), "recursive")) {
            nd->flag = 1; /* the body may call loop(children) */
            advance(p);
        }
        expect_block_end(p);
        nd->c = subparse(p, END_FOR_ELSE);
        if (at_block_name(p, "else")) {
            advance(p);
            expect_block_end(p);
            nd->d = subparse(p, END_FOR);
        }
        advance(p);
    } else if (is_name(t, "set")) {
        advance(p);
        jnode_t *target = parse_assign_target(p, 1, 1, NULL);
        if (is_op(cur(p), K_ASSIGN)) {
            advance(p);
            nd = mk(p, N_SET, line);
            nd->a = target;
            nd->b = parse_tuple(p, 0, 1, NULL, 0);
        } else {
            nd = mk(p, N_SETBLOCK, line);
            nd->a = target;
            if (is_op(cur(p), K_PIPE)) {
                advance(p);
                nd->c = parse_filter_block_chain(p);
            }
            expect_block_end(p);
            nd->b = subparse(p, END_SET);
            advance(p);
        }
    } else if (is_name(t, "macro")) {
        advance(p);
        nd = mk(p, N_MACRO, line);
        if (cur(p)->type != T_NAME)
            perr(p, line, "expected macro name");
        nd->sym = sym_intern(p, cur(p)->s, cur(p)->n);
        nd->str = tok_cstr(p, cur(p));
        advance(p);
        parse_signature(p, nd);
        expect_block_end(p);
        nd->b = subparse(p, END_MACRO);
        advance(p);
    } else if (is_name(t, "call")) {
        advance(p);
        nd = mk(p, N_CALLBLOCK, line);
        if (is_op(cur(p), K_LPAREN))
            parse_signature(p, nd);
        nd->a = parse_expression(p, 1);
        if (nd->a->kind != N_CALL)
            perr(p, line, "expected call");
        expect_block_end(p);
        nd->b = subparse(p, END_CALL);
        advance(p);
    } else if (is_name(t, "filter")) {
        advance(p);
        nd = mk(p, N_FILTERBLOCK, line);
        nd->c = parse_filter_block_chain(p);
        expect_block_end(p);
        nd->b = subparse(p, END_FILTER);
        advance(p);
    } else if (is_name(t, "with")) {
        nlist_t vals = {0};
        advance(p);
        nd = mk(p, N_WITH, line);
        while (cur(p)->type != T_BEND) {
            if (vals.n)
                expect_op(p, K_COMMA, ",");
            tok_t *nt = cur(p);
            if (nt->type != T_NAME)
                perr(p, nt->line, "expected a name");
            const char *name = tok_cstr(p, nt);
            advance(p);
            expect_op(p, K_ASSIGN, "=");
            nl_push(p, &vals, parse_expression(p, 1), name);
        }
        nd->kids2 = vals.v;
        nd->n_kids2 = vals.n;
        nd->names = vals.names;
        nd->syms = palloc(p, sizeof(int) * (size_t)(vals.n + 1));
        for (int k = 0; k < vals.n; k++)
            nd->syms[k] = sym_intern(p, vals.names[k], strlen(vals.names[k]));
        expect_block_end(p);
        nd->b = subparse(p, END_WITH);
        advance(p);
    } else if (is_name(t, "generation")) {
        /* transformers' assistant-mask marker: renders its body unchanged */
        advance(p);
        expect_block_end(p);
        nd = subparse(p, END_GEN);
        advance(p);
    } else if (is_name(t, "break")) {
        advance(p);
        nd = mk(p, N_BREAK, line);
    } else if (is_name(t, "continue")) {
        advance(p);
        nd = mk(p, N_CONTINUE, line);
    } else {
        perr(p, line, "encountered unknown tag %s", tok_desc(t, b, sizeof(b)));
    }
    expect_block_end(p);
    leave(p);
    return nd;
}

static jnode_t *subparse(parser_t *p, const char *const *end_names)
{
    nlist_t body = {0};
    int line = cur(p)->line;
    for (;;) {
        tok_t *t = cur(p);
        if (t->type == T_EOF) {
            if (end_names)
                perr(p, t->line, "unexpected end of template, expected '%s'", end_names[0]);
            break;
        }
        if (t->type == T_TEXT) {
            jnode_t *nd = mk(p, N_TEXT, t->line);
            nd->str = t->s;
            nd->slen = t->n;
            nl_push(p, &body, nd, NULL);
            advance(p);
        } else if (t->type == T_VBEGIN) {
            advance(p);
            jnode_t *nd = mk(p, N_PRINT, t->line);
            nd->a = parse_tuple(p, 0, 1, NULL, 0);
            expect_type(p, T_VEND, "end of print statement");
            nl_push(p, &body, nd, NULL);
        } else if (t->type == T_BBEGIN) {
            advance(p);
            if (end_names) {
                for (const char *const *e = end_names; *e; e++)
                    if (is_name(cur(p), *e))
                        goto done;
            }
            if (cur(p)->type == T_NAME && cur(p)->n >= 3 && memcmp(cur(p)->s, "end", 3) == 0) {
                perr(p, cur(p)->line, "encountered unknown tag '%.*s'%s%s", (int)PD_MIN(cur(p)->n, 40),
                     cur(p)->s, end_names ? ", expected " : "", end_names ? end_names[0] : "");
            }
            nl_push(p, &body, parse_statement(p), NULL);
        } else {
            char b[64];
            perr(p, t->line, "unexpected %s", tok_desc(t, b, sizeof(b)));
        }
    }
done:;
    jnode_t *nd = mk(p, N_BODY, line);
    nd->kids = body.v;
    nd->n_kids = body.n;
    return nd;
}

pd_status_t jinja_parse(jtemplate_t *t, const char *src, size_t len, char *err, size_t errlen)
{
    parser_t *p = calloc(1, sizeof(*p));
    pd_status_t st;
    if (p == NULL)
        return PD_ERR_NOMEM;
    p->t = t;
    p->src = src;
    p->len = len;
    p->err = err;
    p->errlen = errlen;
    if (setjmp(p->jb) == 0) {
        /* builtin globals take the first symbols */
#define JG_INTERN(id, name) sym_intern(p, name, sizeof(name) - 1);
        JINJA_GLOBALS(JG_INTERN)
#undef JG_INTERN
        lex(p);
        t->root = subparse(p, NULL);
        st = PD_OK;
    } else {
        st = p->status != PD_OK ? p->status : PD_ERR_FORMAT;
    }
    free(p->toks);
    free(p);
    return st;
}
