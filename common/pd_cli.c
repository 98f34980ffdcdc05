/*
 * pd_cli.c - the table-driven command-line parser (see pd_cli.h).
 *
 * Values are written into the caller's args struct at each option's offset; a parallel
 * bool array (spec->set_offset) records which options the user gave.  Strings, lists
 * and JSON values are heap-owned by the args struct and released by pd_cli_free().
 * Order of application: defaults, then --config FILE, then argv (so argv wins; a list
 * given on the command line replaces the one from the config file).
 */
#include "pd_cli.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "pd_log.h"
#include "pd_util.h"

#define FIELD(args, opt, type) ((type *)((char *)(args) + (opt)->offset))

typedef struct parse_ctx {
    const pd_cli_spec_t *spec;
    void *args;
    bool *set;
    bool *from_config; /* set by --config (a command-line list replaces it) */
    char *err;
    size_t errlen;
} parse_ctx_t;

static pd_status_t fail(parse_ctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static pd_status_t fail(parse_ctx_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (c->err && c->errlen)
        vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
    return PD_ERR_INVAL;
}

static size_t opt_index(const pd_cli_spec_t *spec, const pd_opt_t *opt) { return (size_t)(opt - spec->opts); }

const pd_opt_t *pd_cli_find(const pd_cli_spec_t *spec, const char *name)
{
    for (size_t i = 0; i < spec->n_opts; i++) {
        const pd_opt_t *o = &spec->opts[i];
        if (strcmp(o->name, name) == 0 || (o->alias && strcmp(o->alias, name) == 0))
            return o;
    }
    return NULL;
}

/* "a,b,c" contains word? */
static bool choice_ok(const char *choices, const char *word)
{
    size_t wl = strlen(word);
    for (const char *p = choices; *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == wl && strncmp(p, word, l) == 0)
            return true;
        if (!e)
            break;
        p = e + 1;
    }
    return false;
}

/* "auto,half" -> "auto, half" for messages */
static void choices_pretty(const char *choices, char *out, size_t outlen)
{
    size_t n = 0;
    for (const char *p = choices; *p && n + 3 < outlen; p++) {
        if (*p == ',') {
            out[n++] = ',';
            out[n++] = ' ';
        } else {
            out[n++] = *p;
        }
    }
    out[n] = '\0';
}

static pd_status_t parse_bool(const char *s, bool *out)
{
    static const char *const t[] = {"true", "1", "yes", "on"}, *const f[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, t[i]) == 0) {
            *out = true;
            return PD_OK;
        }
        if (strcasecmp(s, f[i]) == 0) {
            *out = false;
            return PD_OK;
        }
    }
    return PD_ERR_INVAL;
}

static pd_status_t parse_int(const char *s, int64_t *out)
{
    char *end;
    long long v;
    if (*s == '\0' || isspace((unsigned char)*s))
        return PD_ERR_INVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return PD_ERR_INVAL;
    *out = v;
    return PD_OK;
}

static pd_status_t parse_float(const char *s, double *out)
{
    char *end;
    double v;
    if (*s == '\0' || isspace((unsigned char)*s))
        return PD_ERR_INVAL;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v))
        return PD_ERR_INVAL;
    *out = v;
    return PD_OK;
}

static pd_status_t list_append(pd_strlist_t *l, const char *s)
{
    char **v = realloc(l->v, (l->n + 1) * sizeof(*v));
    if (v == NULL)
        return PD_ERR_NOMEM;
    l->v = v;
    if ((l->v[l->n] = strdup(s)) == NULL)
        return PD_ERR_NOMEM;
    l->n++;
    return PD_OK;
}

static void list_clear(pd_strlist_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static pd_status_t check_json_shape(parse_ctx_t *c, const pd_opt_t *o, const cJSON *j)
{
    if ((o->flags & PD_OPTF_JSON_OBJECT) && !cJSON_IsObject(j))
        return fail(c, "%s: expected a JSON object, e.g. '{\"key\": \"value\"}'", o->name);
    if (o->flags & PD_OPTF_JSON_STRARR) {
        const cJSON *e;
        if (!cJSON_IsArray(j))
            return fail(c, "%s: expected a JSON list of strings, e.g. '[\"*\"]'", o->name);
        cJSON_ArrayForEach(e, j) {
            if (!cJSON_IsString(e))
                return fail(c, "%s: expected a JSON list of strings, e.g. '[\"*\"]'", o->name);
        }
    }
    return PD_OK;
}

/* Set one option from its text form. */
static pd_status_t set_value(parse_ctx_t *c, const pd_opt_t *o, const char *text)
{
    char pretty[512];

    switch (o->kind) {
    case PD_OPT_BOOL:
        if (parse_bool(text, FIELD(c->args, o, bool)) != PD_OK)
            return fail(c, "%s: '%s' is not a boolean (true or false)", o->name, text);
        break;
    case PD_OPT_INT: {
        int64_t v;
        if (parse_int(text, &v) != PD_OK)
            return fail(c, "%s: '%s' is not an integer", o->name, text);
        if (o->choices && !choice_ok(o->choices, text)) {
            choices_pretty(o->choices, pretty, sizeof(pretty));
            return fail(c, "%s: '%s' is not one of %s", o->name, text, pretty);
        }
        *FIELD(c->args, o, int64_t) = v;
        break;
    }
    case PD_OPT_FLOAT:
        if (parse_float(text, FIELD(c->args, o, double)) != PD_OK)
            return fail(c, "%s: '%s' is not a number", o->name, text);
        break;
    case PD_OPT_CHOICE:
        if (!choice_ok(o->choices, text)) {
            choices_pretty(o->choices, pretty, sizeof(pretty));
            return fail(c, "%s: '%s' is not one of %s", o->name, text, pretty);
        }
        /* fall through */
    case PD_OPT_STR: {
        char **f = FIELD(c->args, o, char *);
        char *dup = strdup(text);
        if (dup == NULL)
            return PD_ERR_NOMEM;
        free(*f);
        *f = dup;
        break;
    }
    case PD_OPT_JSON: {
        cJSON **f = FIELD(c->args, o, cJSON *);
        cJSON *j;
        int64_t level;
        pd_status_t st;
        if ((o->flags & PD_OPTF_INT_OR_JSON) && parse_int(text, &level) == PD_OK) {
            j = cJSON_CreateObject();
            if (j == NULL || cJSON_AddNumberToObject(j, "level", (double)level) == NULL) {
                cJSON_Delete(j);
                return PD_ERR_NOMEM;
            }
        } else {
            const char *end = NULL;
            j = cJSON_ParseWithOpts(text, &end, 1);
            if (j == NULL) {
                size_t at = end ? (size_t)(end - text) : 0;
                return fail(c, "%s: '%s' is not valid JSON (error near character %zu)", o->name,
                            text, at);
            }
        }
        st = check_json_shape(c, o, j);
        if (st != PD_OK) {
            cJSON_Delete(j);
            return st;
        }
        cJSON_Delete(*f);
        *f = j;
        break;
    }
    case PD_OPT_LIST: {
        pd_strlist_t *l = FIELD(c->args, o, pd_strlist_t);
        if (list_append(l, text) != PD_OK)
            return PD_ERR_NOMEM;
        break;
    }
    }
    return PD_OK;
}

/* --opt.key.sub value: set a key inside a JSON-valued option, creating objects on the way. */
static pd_status_t set_dotted(parse_ctx_t *c, const pd_opt_t *o, const char *path, const char *text)
{
    cJSON **f = FIELD(c->args, o, cJSON *);
    cJSON *node, *val;
    char key[128];

    if (o->kind != PD_OPT_JSON)
        return fail(c, "%s: the dotted form %s.%s is only for JSON-valued options", o->name, o->name, path);
    if (*f == NULL || !cJSON_IsObject(*f)) {
        cJSON_Delete(*f);
        if ((*f = cJSON_CreateObject()) == NULL)
            return PD_ERR_NOMEM;
    }
    node = *f;
    for (;;) {
        const char *dot = strchr(path, '.');
        size_t kl = dot ? (size_t)(dot - path) : strlen(path);
        if (kl == 0 || kl >= sizeof(key))
            return fail(c, "%s: bad key path '%s'", o->name, path);
        memcpy(key, path, kl);
        key[kl] = '\0';
        if (!dot) {
            /* numbers, booleans, null and JSON literals keep their type; anything else is a string */
            val = cJSON_Parse(text);
            if (val == NULL && (val = cJSON_CreateString(text)) == NULL)
                return PD_ERR_NOMEM;
            cJSON_DeleteItemFromObjectCaseSensitive(node, key);
            cJSON_AddItemToObject(node, key, val);
            return PD_OK;
        }
        cJSON *child = cJSON_GetObjectItemCaseSensitive(node, key);
        if (child == NULL || !cJSON_IsObject(child)) {
            cJSON_DeleteItemFromObjectCaseSensitive(node, key);
            child = cJSON_AddObjectToObject(node, key);
            if (child == NULL)
                return PD_ERR_NOMEM;
        }
        node = child;
        path = dot + 1;
    }
}

pd_status_t pd_cli_defaults(const pd_cli_spec_t *spec, void *args, char *err, size_t errlen)
{
    bool from_config[1] = {false};
    parse_ctx_t c = {spec, args, (bool *)((char *)args + spec->set_offset), from_config, err, errlen};
    memset(args, 0, spec->args_size);
    for (size_t i = 0; i < spec->n_opts; i++) {
        const pd_opt_t *o = &spec->opts[i];
        pd_status_t st;
        if (o->def == NULL)
            continue;
        if (o->kind == PD_OPT_LIST) {
            continue; /* list defaults are empty; a def text documents what "empty" means */
        }
        c.from_config = NULL;
        st = set_value(&c, o, o->def);
        if (st != PD_OK)
            return st;
    }
    return PD_OK;
}

void pd_cli_free(const pd_cli_spec_t *spec, void *args)
{
    for (size_t i = 0; i < spec->n_opts; i++) {
        const pd_opt_t *o = &spec->opts[i];
        switch (o->kind) {
        case PD_OPT_STR:
        case PD_OPT_CHOICE:
            free(*FIELD(args, o, char *));
            *FIELD(args, o, char *) = NULL;
            break;
        case PD_OPT_JSON:
            cJSON_Delete(*FIELD(args, o, cJSON *));
            *FIELD(args, o, cJSON *) = NULL;
            break;
        case PD_OPT_LIST:
            list_clear(FIELD(args, o, pd_strlist_t));
            break;
        default:
            break;
        }
    }
}

bool pd_cli_is_set(const pd_cli_spec_t *spec, const void *args, const char *name)
{
    const pd_opt_t *o = pd_cli_find(spec, name);
    const bool *set = (const bool *)((const char *)args + spec->set_offset);
    return o != NULL && set[opt_index(spec, o)];
}

/* ---- --config FILE (YAML or JSON) ---- */

static cJSON *yaml_node_to_json(yaml_document_t *doc, yaml_node_t *n, int depth)
{
    if (n == NULL || depth > 32)
        return NULL;
    switch (n->type) {
    case YAML_SCALAR_NODE: {
        const char *s = (const char *)n->data.scalar.value;
        bool b;
        double d;
        if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
            return cJSON_CreateString(s);
        if (strcmp(s, "~") == 0 || strcasecmp(s, "null") == 0 || *s == '\0')
            return cJSON_CreateNull();
        if (strcasecmp(s, "true") == 0 || strcasecmp(s, "false") == 0) {
            parse_bool(s, &b);
            return cJSON_CreateBool(b);
        }
        if (parse_float(s, &d) == PD_OK)
            return cJSON_CreateRaw(s); /* keep the number's text exactly (ints stay ints) */
        return cJSON_CreateString(s);
    }
    case YAML_SEQUENCE_NODE: {
        cJSON *arr = cJSON_CreateArray();
        for (yaml_node_item_t *it = n->data.sequence.items.start; arr && it < n->data.sequence.items.top; it++) {
            cJSON *v = yaml_node_to_json(doc, yaml_document_get_node(doc, *it), depth + 1);
            if (v == NULL) {
                cJSON_Delete(arr);
                return NULL;
            }
            cJSON_AddItemToArray(arr, v);
        }
        return arr;
    }
    case YAML_MAPPING_NODE: {
        cJSON *obj = cJSON_CreateObject();
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; obj && p < n->data.mapping.pairs.top; p++) {
            yaml_node_t *k = yaml_document_get_node(doc, p->key);
            cJSON *v;
            if (k == NULL || k->type != YAML_SCALAR_NODE) {
                cJSON_Delete(obj);
                return NULL;
            }
            v = yaml_node_to_json(doc, yaml_document_get_node(doc, p->value), depth + 1);
            if (v == NULL) {
                cJSON_Delete(obj);
                return NULL;
            }
            cJSON_AddItemToObject(obj, (const char *)k->data.scalar.value, v);
        }
        return obj;
    }
    default:
        return NULL;
    }
}

static cJSON *load_config_file(parse_ctx_t *c, const char *path)
{
    char *data = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    yaml_parser_t parser;
    yaml_document_t doc;

    if (pd_read_file(path, &data, &len) != PD_OK) {
        fail(c, "--config: cannot read '%s'", path);
        return NULL;
    }
    root = cJSON_ParseWithLength(data, len); /* JSON first: it is also valid YAML, but exact */
    if (root == NULL) {
        if (!yaml_parser_initialize(&parser)) {
            free(data);
            fail(c, "--config: out of memory");
            return NULL;
        }
        yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
        if (!yaml_parser_load(&parser, &doc)) {
            fail(c, "--config: '%s' is neither JSON nor valid YAML (line %zu: %s)", path,
                 parser.problem_mark.line + 1, parser.problem ? parser.problem : "parse error");
            yaml_parser_delete(&parser);
            free(data);
            return NULL;
        }
        root = yaml_node_to_json(&doc, yaml_document_get_root_node(&doc), 0);
        yaml_document_delete(&doc);
        yaml_parser_delete(&parser);
    }
    free(data);
    if (root == NULL || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        fail(c, "--config: '%s' must hold a mapping of option names to values", path);
        return NULL;
    }
    return root;
}

static pd_status_t apply_config_value(parse_ctx_t *c, const pd_opt_t *o, const cJSON *v)
{
    char num[64];
    const char *text = NULL;
    char *printed = NULL;
    pd_status_t st;

    if (o->kind == PD_OPT_LIST) {
        const cJSON *e;
        if (cJSON_IsString(v))
            return set_value(c, o, v->valuestring);
        if (!cJSON_IsArray(v))
            return fail(c, "--config: '%s' must be a string or a list of strings", o->name + 2);
        cJSON_ArrayForEach(e, v) {
            if (!cJSON_IsString(e))
                return fail(c, "--config: '%s' must be a list of strings", o->name + 2);
            if ((st = set_value(c, o, e->valuestring)) != PD_OK)
                return st;
        }
        return PD_OK;
    }
    if (o->kind == PD_OPT_JSON && (cJSON_IsObject(v) || cJSON_IsArray(v))) {
        printed = cJSON_PrintUnformatted(v);
        if (printed == NULL)
            return PD_ERR_NOMEM;
        st = set_value(c, o, printed);
        cJSON_free(printed);
        return st;
    }
    if (cJSON_IsString(v))
        text = v->valuestring;
    else if (cJSON_IsRaw(v))
        text = v->valuestring;
    else if (cJSON_IsBool(v))
        text = cJSON_IsTrue(v) ? "true" : "false";
    else if (cJSON_IsNumber(v)) {
        snprintf(num, sizeof(num), "%.17g", v->valuedouble);
        text = num;
    } else if (cJSON_IsNull(v)) {
        return PD_OK; /* None: keep the default */
    } else {
        return fail(c, "--config: unsupported value for '%s'", o->name + 2);
    }
    return set_value(c, o, text);
}

static pd_status_t apply_config(parse_ctx_t *c, const char *path)
{
    cJSON *root = load_config_file(c, path), *item;
    char name[160];
    pd_status_t st = PD_OK;

    if (root == NULL)
        return PD_ERR_INVAL;
    cJSON_ArrayForEach(item, root) {
        const pd_opt_t *o;
        size_t i;
        snprintf(name, sizeof(name), "--%s", item->string);
        for (i = 2; name[i]; i++)
            if (name[i] == '_')
                name[i] = '-';
        o = pd_cli_find(c->spec, name);
        if (o == NULL || strcmp(o->name, "--config") == 0) {
            st = fail(c, "--config: unknown option '%s' in %s", item->string, path);
            break;
        }
        if ((st = apply_config_value(c, o, item)) != PD_OK)
            break;
        c->set[opt_index(c->spec, o)] = true;
        c->from_config[opt_index(c->spec, o)] = true;
    }
    cJSON_Delete(root);
    return st;
}

/* ---- argv ---- */

static bool looks_like_option(const char *s)
{
    /* "-1" and "-0.5" are values, not options */
    return s[0] == '-' && s[1] != '\0' && !isdigit((unsigned char)s[1]) && s[1] != '.';
}

static void print_version(const pd_cli_spec_t *spec, const char *version)
{
    printf("%s %s\n", spec->prog, version ? version : "");
}

pd_status_t pd_cli_parse(const pd_cli_spec_t *spec, int argc, char **argv, void *args,
                         const char *version, pd_cli_action_t *action_p, char *err, size_t errlen)
{
    bool *from_config = calloc(spec->n_opts ? spec->n_opts : 1, sizeof(bool));
    bool *replaced = calloc(spec->n_opts ? spec->n_opts : 1, sizeof(bool));
    parse_ctx_t c = {spec, args, (bool *)((char *)args + spec->set_offset), from_config, err, errlen};
    char keybuf[256];
    pd_status_t st;
    bool positional_done = false;

    if (err && errlen)
        err[0] = '\0';
    *action_p = PD_CLI_RUN;
    if (from_config == NULL || replaced == NULL) {
        st = PD_ERR_NOMEM;
        goto out;
    }
    if ((st = pd_cli_defaults(spec, args, err, errlen)) != PD_OK)
        goto out;

    /* --help / --version win over everything, even bad options */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            pd_cli_print_help(spec, stdout);
            *action_p = PD_CLI_EXIT_OK;
            goto out;
        }
        if (strcmp(argv[i], "--version") == 0) {
            print_version(spec, version);
            *action_p = PD_CLI_EXIT_OK;
            goto out;
        }
        if (strcmp(argv[i], "--help-markdown") == 0) {
            pd_cli_print_markdown(spec, stdout);
            *action_p = PD_CLI_EXIT_OK;
            goto out;
        }
    }
    /* --config first, so the command line wins */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *path = NULL;
        if (strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) {
                st = fail(&c, "--config: expected a file name");
                goto out;
            }
            path = argv[i + 1];
        } else if (strncmp(a, "--config=", 9) == 0) {
            path = a + 9;
        }
        if (path && pd_cli_find(spec, "--config") != NULL) {
            if ((st = apply_config(&c, path)) != PD_OK)
                goto out;
        }
    }

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL, *dotpath = NULL;
        const pd_opt_t *o = NULL;
        bool negate = false;
        size_t idx;

        if (!looks_like_option(a)) {
            const pd_opt_t *po = spec->positional ? pd_cli_find(spec, spec->positional) : NULL;
            if (po == NULL || positional_done) {
                st = fail(&c, "unexpected argument '%s'", a);
                goto out;
            }
            positional_done = true;
            if ((st = set_value(&c, po, a)) != PD_OK)
                goto out;
            c.set[opt_index(spec, po)] = true;
            continue;
        }
        if (a[1] == '-') {
            /* --name[.path][=value]; underscores in the name mean dashes (vLLM accepts both) */
            const char *eq = strchr(a, '=');
            size_t kl = eq ? (size_t)(eq - a) : strlen(a);
            if (kl >= sizeof(keybuf)) {
                st = fail(&c, "unknown option '%.40s...'", a);
                goto out;
            }
            memcpy(keybuf, a, kl);
            keybuf[kl] = '\0';
            char *dot = strchr(keybuf, '.');
            if (dot) {
                *dot = '\0';
                dotpath = dot + 1; /* stays valid: keybuf lives for this iteration */
            }
            for (char *p = keybuf + 2; *p; p++)
                if (*p == '_')
                    *p = '-';
            if (eq)
                val = eq + 1;
            o = pd_cli_find(spec, keybuf);
            if (o == NULL && strncmp(keybuf, "--no-", 5) == 0) {
                char pos[256];
                snprintf(pos, sizeof(pos), "--%s", keybuf + 5);
                o = pd_cli_find(spec, pos);
                if (o && (o->flags & PD_OPTF_NEGATABLE) && !val && !dotpath)
                    negate = true;
                else
                    o = NULL;
            }
        } else {
            /* short alias: exact (-tp, -O, -q), with "=value", or a one-letter alias with the
             * value attached (-O3) */
            const char *eq = strchr(a, '=');
            size_t kl = eq ? (size_t)(eq - a) : strlen(a);
            if (kl < sizeof(keybuf)) {
                memcpy(keybuf, a, kl);
                keybuf[kl] = '\0';
                o = pd_cli_find(spec, keybuf);
                if (o && eq)
                    val = eq + 1;
            }
            if (o == NULL && strlen(a) > 2) {
                char shortname[3] = {a[0], a[1], '\0'};
                const pd_opt_t *so = pd_cli_find(spec, shortname);
                if (so && so->alias && strcmp(so->alias, shortname) == 0) {
                    o = so;
                    val = a + 2;
                    if (*val == '=')
                        val++;
                }
            }
            if (o != NULL && dotpath == NULL && val == NULL && strchr(a, '.') != NULL)
                o = NULL;
        }
        if (o == NULL) {
            st = fail(&c, "unknown option '%s' (see --help)", a);
            goto out;
        }
        idx = opt_index(spec, o);
        if (strcmp(o->name, "--config") == 0) {
            if (!val)
                i++;
            continue; /* applied above */
        }
        if (o->kind == PD_OPT_BOOL && !dotpath) {
            if (negate) {
                *FIELD(args, o, bool) = false;
            } else if (val) {
                if ((st = set_value(&c, o, val)) != PD_OK)
                    goto out;
            } else {
                bool b;
                if ((o->flags & PD_OPTF_OPTVAL) && i + 1 < argc && parse_bool(argv[i + 1], &b) == PD_OK) {
                    *FIELD(args, o, bool) = b;
                    i++;
                } else {
                    *FIELD(args, o, bool) = true;
                }
            }
            c.set[idx] = true;
            continue;
        }
        if (o->kind == PD_OPT_LIST && from_config[idx] && !replaced[idx]) {
            list_clear(FIELD(args, o, pd_strlist_t));
        }
        if (o->kind == PD_OPT_LIST)
            replaced[idx] = true;
        if (!val) {
            if (i + 1 >= argc || (looks_like_option(argv[i + 1]) && o->kind != PD_OPT_STR)) {
                st = fail(&c, "%s: expected a value", dotpath ? a : o->name);
                goto out;
            }
            val = argv[++i];
        }
        if (dotpath)
            st = set_dotted(&c, o, dotpath, val);
        else
            st = set_value(&c, o, val);
        if (st != PD_OK)
            goto out;
        /* nargs='+': keep consuming words that are not options */
        if (o->kind == PD_OPT_LIST && (o->flags & PD_OPTF_NARGS_PLUS)) {
            while (i + 1 < argc && !looks_like_option(argv[i + 1])) {
                if ((st = set_value(&c, o, argv[++i])) != PD_OK)
                    goto out;
            }
        }
        c.set[idx] = true;
    }
    st = PD_OK;
out:
    if (st != PD_OK && err && err[0])
        fprintf(stderr, "%s: error: %s\n", spec->prog, err);
    free(from_config);
    free(replaced);
    return st;
}

/* ---- status checks ---- */

static bool value_is_default(const pd_cli_spec_t *spec, const void *args, const pd_opt_t *o)
{
    const bool *set = (const bool *)((const char *)args + spec->set_offset);
    if (!set[opt_index(spec, o)])
        return true;
    switch (o->kind) {
    case PD_OPT_BOOL: {
        bool d = false;
        if (o->def)
            parse_bool(o->def, &d);
        return *FIELD(args, o, bool) == d;
    }
    case PD_OPT_INT: {
        int64_t d;
        return o->def && parse_int(o->def, &d) == PD_OK && d == *FIELD(args, o, int64_t);
    }
    case PD_OPT_FLOAT: {
        double d;
        return o->def && parse_float(o->def, &d) == PD_OK && d == *FIELD(args, o, double);
    }
    case PD_OPT_STR:
    case PD_OPT_CHOICE: {
        const char *v = *FIELD(args, o, char *);
        if (o->def == NULL)
            return v == NULL || strcasecmp(v, "none") == 0;
        return v && strcmp(v, o->def) == 0;
    }
    case PD_OPT_JSON: {
        cJSON *v = *FIELD(args, o, cJSON *);
        bool same;
        if (o->def == NULL)
            return v == NULL || cJSON_IsNull(v);
        cJSON *d = cJSON_Parse(o->def);
        same = d && v && cJSON_Compare(d, v, 1);
        cJSON_Delete(d);
        return same;
    }
    case PD_OPT_LIST:
        return FIELD(args, o, pd_strlist_t)->n == 0;
    }
    return true;
}

pd_status_t pd_cli_check_unsupported(const pd_cli_spec_t *spec, const void *args, char *err,
                                     size_t errlen)
{
    for (size_t i = 0; i < spec->n_opts; i++) {
        const pd_opt_t *o = &spec->opts[i];
        if (o->status != PD_OPT_NOT_YET || value_is_default(spec, args, o))
            continue;
        snprintf(err, errlen, "%s: not supported yet%s%s%s", o->name, o->note ? " (" : "",
                 o->note ? o->note : "", o->note ? ")" : "");
        return PD_ERR_UNSUPPORTED;
    }
    return PD_OK;
}

size_t pd_cli_warn_noop(const pd_cli_spec_t *spec, const void *args)
{
    size_t n = 0;
    for (size_t i = 0; i < spec->n_opts; i++) {
        const pd_opt_t *o = &spec->opts[i];
        if (o->status != PD_OPT_NOOP || value_is_default(spec, args, o))
            continue;
        PD_LOG_WARN("%s: accepted, no effect%s%s%s", o->name, o->note ? " (" : "", o->note ? o->note : "",
                    o->note ? ")" : "");
        n++;
    }
    return n;
}

/* ---- printing ---- */

static const char *kind_meta(const pd_opt_t *o)
{
    switch (o->kind) {
    case PD_OPT_BOOL:
        return (o->flags & PD_OPTF_OPTVAL) ? "[BOOL]" : "";
    case PD_OPT_INT:
        return "INT";
    case PD_OPT_FLOAT:
        return "FLOAT";
    case PD_OPT_STR:
        return "STR";
    case PD_OPT_CHOICE:
        return "CHOICE";
    case PD_OPT_JSON:
        return "JSON";
    case PD_OPT_LIST:
        return (o->flags & PD_OPTF_NARGS_PLUS) ? "STR [STR ...]" : "STR (repeatable)";
    }
    return "";
}

static const char *status_word(pd_opt_status_t s)
{
    switch (s) {
    case PD_OPT_WORKS:
        return "works";
    case PD_OPT_DIFFERS:
        return "works differently";
    case PD_OPT_NOOP:
        return "accepted, no effect";
    case PD_OPT_NOT_YET:
        return "not supported yet";
    }
    return "";
}

pd_status_t pd_cli_value_text(const pd_cli_spec_t *spec, const void *args, const char *name,
                              char *buf, size_t buflen)
{
    const pd_opt_t *o = pd_cli_find(spec, name);
    if (o == NULL)
        return PD_ERR_NOT_FOUND;
    switch (o->kind) {
    case PD_OPT_BOOL:
        snprintf(buf, buflen, "%s", *FIELD(args, o, bool) ? "true" : "false");
        break;
    case PD_OPT_INT:
        snprintf(buf, buflen, "%lld", (long long)*FIELD(args, o, int64_t));
        break;
    case PD_OPT_FLOAT:
        snprintf(buf, buflen, "%g", *FIELD(args, o, double));
        break;
    case PD_OPT_STR:
    case PD_OPT_CHOICE: {
        const char *v = *FIELD(args, o, char *);
        snprintf(buf, buflen, "%s", v ? v : "None");
        break;
    }
    case PD_OPT_JSON: {
        cJSON *v = *FIELD(args, o, cJSON *);
        char *p = v ? cJSON_PrintUnformatted(v) : NULL;
        snprintf(buf, buflen, "%s", p ? p : "None");
        cJSON_free(p);
        break;
    }
    case PD_OPT_LIST: {
        const pd_strlist_t *l = FIELD(args, o, pd_strlist_t);
        size_t n = 0;
        buf[0] = '\0';
        for (size_t i = 0; i < l->n && n < buflen; i++)
            n += (size_t)snprintf(buf + n, buflen - n, "%s%s", i ? "," : "", l->v[i]);
        break;
    }
    }
    return PD_OK;
}

void pd_cli_print_help(const pd_cli_spec_t *spec, FILE *out)
{
    const char *group = NULL;
    char pretty[512];

    fprintf(out, "usage: %s [options]%s\n\n%s\n", spec->prog,
            spec->positional ? " [MODEL]" : "", spec->summary);
    fprintf(out, "\n  -h, --help            show this help and exit\n");
    fprintf(out, "  --version             show the version and exit\n");
    fprintf(out, "  --help-markdown       print the option reference (docs/options.md) and exit\n");
    for (size_t i = 0; i < spec->n_opts; i++) {
        const pd_opt_t *o = &spec->opts[i];
        if (o->flags & PD_OPTF_HIDDEN)
            continue;
        if (group == NULL || strcmp(group, o->group) != 0) {
            group = o->group;
            fprintf(out, "\n%s:\n", group);
        }
        fprintf(out, "  %s%s%s%s%s %s\n", o->name, o->alias ? ", " : "", o->alias ? o->alias : "",
                (o->flags & PD_OPTF_NEGATABLE) ? ", --no-" : "",
                (o->flags & PD_OPTF_NEGATABLE) ? o->name + 2 : "", kind_meta(o));
        fprintf(out, "        %s", o->help);
        if (o->choices) {
            choices_pretty(o->choices, pretty, sizeof(pretty));
            fprintf(out, " {%s}", pretty);
        }
        if (o->kind != PD_OPT_BOOL || o->def)
            fprintf(out, " [default: %s]", (o->flags & PD_OPTF_SECRET) ? "None" : o->def ? o->def : "None");
        if (o->status != PD_OPT_WORKS)
            fprintf(out, " (%s%s%s)", status_word(o->status), o->note ? ": " : "", o->note ? o->note : "");
        fputc('\n', out);
    }
}

static void md_escape(FILE *out, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '|')
            fputs("\\|", out);
        else if (*s == '\n')
            fputc(' ', out);
        else
            fputc(*s, out);
    }
}

void pd_cli_print_markdown(const pd_cli_spec_t *spec, FILE *out)
{
    const char *group = NULL;
    char pretty[512];

    for (size_t i = 0; i < spec->n_opts; i++) {
        const pd_opt_t *o = &spec->opts[i];
        if (group == NULL || strcmp(group, o->group) != 0) {
            group = o->group;
            fprintf(out, "\n### %s\n\n| option | value | default | status | meaning |\n|---|---|---|---|---|\n", group);
        }
        fprintf(out, "| `%s`", o->name);
        if (o->alias)
            fprintf(out, ", `%s`", o->alias);
        if (o->flags & PD_OPTF_NEGATABLE)
            fprintf(out, ", `--no-%s`", o->name + 2);
        fprintf(out, " | %s", kind_meta(o));
        if (o->choices) {
            choices_pretty(o->choices, pretty, sizeof(pretty));
            fprintf(out, " {");
            md_escape(out, pretty);
            fprintf(out, "}");
        }
        fprintf(out, " | ");
        md_escape(out, o->def ? o->def : (o->kind == PD_OPT_BOOL ? "false" : "None"));
        fprintf(out, " | %s", status_word(o->status));
        if (o->note) {
            fprintf(out, ": ");
            md_escape(out, o->note);
        }
        fprintf(out, " | ");
        md_escape(out, o->help);
        fprintf(out, " |\n");
    }
}
