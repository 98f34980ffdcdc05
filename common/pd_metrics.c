/*
 * pd_metrics.c - Prometheus registry: families, series and text exposition.
 *
 * Invariants: families and series are never freed before the registry, so pointers
 * handed out stay valid; values are stored as the bits of a double in an atomic
 * 64-bit word (updated with compare-and-swap), histogram buckets as atomic counts per
 * bucket (non-cumulative; cumulated at render).  The registry mutex guards the family
 * list, each family's series array and the collectors; updates never take it.
 */
#include "pd_metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pd_log.h"

struct pd_metric_series {
    pd_metric_t *family;
    char **label_values;              /* family->n_labels strings */
    _Atomic unsigned long long value; /* bits of a double: counter/gauge value or histogram sum */
    _Atomic unsigned long long count; /* histogram observations */
    _Atomic unsigned long long *buckets; /* histogram: n_buckets + 1 (+Inf) */
};

struct pd_metric {
    pd_metrics_registry_t *reg;
    pd_metric_type_t type;
    char *name;
    char *help;
    size_t n_labels;
    char *label_names[PD_METRIC_MAX_LABELS];
    size_t n_buckets;
    double buckets[PD_METRIC_MAX_BUCKETS];
    pd_metric_series_t **series;
    size_t n_series, cap_series;
    struct pd_metric *next;
};

typedef struct collector {
    pd_metrics_collect_cb_t cb;
    void *user;
    struct collector *next;
} collector_t;

struct pd_metrics_registry {
    pthread_mutex_t lock;
    pd_metric_t *head, *tail;
    collector_t *collectors;
};

/* ---- atomic doubles ---- */

static unsigned long long dbl_bits(double v)
{
    unsigned long long u;
    memcpy(&u, &v, sizeof(u));
    return u;
}

static double bits_dbl(unsigned long long u)
{
    double v;
    memcpy(&v, &u, sizeof(v));
    return v;
}

static void atomic_dbl_add(_Atomic unsigned long long *a, double v)
{
    unsigned long long old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, dbl_bits(bits_dbl(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

/* ---- registry ---- */

pd_status_t pd_metrics_registry_create(pd_metrics_registry_t **reg_p)
{
    pd_metrics_registry_t *reg = calloc(1, sizeof(*reg));
    if (reg == NULL)
        return PD_ERR_NOMEM;
    pthread_mutex_init(&reg->lock, NULL);
    *reg_p = reg;
    return PD_OK;
}

static void series_free(pd_metric_series_t *s, size_t n_labels)
{
    if (s == NULL)
        return;
    if (s->label_values != NULL) {
        for (size_t i = 0; i < n_labels; i++)
            free(s->label_values[i]);
        free(s->label_values);
    }
    free(s->buckets);
    free(s);
}

static void family_free(pd_metric_t *m)
{
    for (size_t i = 0; i < m->n_series; i++)
        series_free(m->series[i], m->n_labels);
    free(m->series);
    for (size_t i = 0; i < m->n_labels; i++)
        free(m->label_names[i]);
    free(m->name);
    free(m->help);
    free(m);
}

void pd_metrics_registry_destroy(pd_metrics_registry_t *reg)
{
    if (reg == NULL)
        return;
    pd_metric_t *m = reg->head;
    while (m != NULL) {
        pd_metric_t *next = m->next;
        family_free(m);
        m = next;
    }
    collector_t *c = reg->collectors;
    while (c != NULL) {
        collector_t *next = c->next;
        free(c);
        c = next;
    }
    pthread_mutex_destroy(&reg->lock);
    free(reg);
}

static int valid_name(const char *s, int allow_colon)
{
    if (s == NULL || *s == '\0')
        return 0;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (allow_colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

static int same_shape(const pd_metric_t *m, pd_metric_type_t type, size_t n_labels,
                      const char *const *label_names, size_t n_buckets, const double *buckets)
{
    if (m->type != type || m->n_labels != n_labels)
        return 0;
    for (size_t i = 0; i < n_labels; i++)
        if (strcmp(m->label_names[i], label_names[i]) != 0)
            return 0;
    if (type == PD_METRIC_HISTOGRAM) {
        if (m->n_buckets != n_buckets)
            return 0;
        for (size_t i = 0; i < n_buckets; i++)
            if (m->buckets[i] != buckets[i])
                return 0;
    }
    return 1;
}

static pd_status_t family_register(pd_metrics_registry_t *reg, pd_metric_type_t type,
                                   const char *name, const char *help, size_t n_labels,
                                   const char *const *label_names, size_t n_buckets,
                                   const double *buckets, pd_metric_t **metric_p)
{
    if (reg == NULL || metric_p == NULL || !valid_name(name, 1) || n_labels > PD_METRIC_MAX_LABELS ||
        (n_labels > 0 && label_names == NULL)) {
        PD_LOG_ERR("metrics: invalid registration of '%s'", name ? name : "(null)");
        return PD_ERR_INVAL;
    }
    for (size_t i = 0; i < n_labels; i++) {
        if (!valid_name(label_names[i], 0) ||
            (type == PD_METRIC_HISTOGRAM && strcmp(label_names[i], "le") == 0)) {
            PD_LOG_ERR("metrics: invalid label name for '%s'", name);
            return PD_ERR_INVAL;
        }
    }
    if (type == PD_METRIC_HISTOGRAM) {
        if (n_buckets == 0 || n_buckets > PD_METRIC_MAX_BUCKETS || buckets == NULL) {
            PD_LOG_ERR("metrics: histogram '%s' needs 1..%d buckets", name, PD_METRIC_MAX_BUCKETS);
            return PD_ERR_INVAL;
        }
        for (size_t i = 0; i < n_buckets; i++) {
            if (!isfinite(buckets[i]) || (i > 0 && !(buckets[i] > buckets[i - 1]))) {
                PD_LOG_ERR("metrics: histogram '%s' buckets must be finite and increasing", name);
                return PD_ERR_INVAL;
            }
        }
    }

    pd_status_t status = PD_OK;
    pthread_mutex_lock(&reg->lock);
    for (pd_metric_t *m = reg->head; m != NULL; m = m->next) {
        if (strcmp(m->name, name) == 0) {
            if (same_shape(m, type, n_labels, label_names, n_buckets, buckets)) {
                *metric_p = m;
            } else {
                PD_LOG_ERR("metrics: '%s' already registered with another shape", name);
                status = PD_ERR_EXISTS;
            }
            pthread_mutex_unlock(&reg->lock);
            return status;
        }
    }
    pd_metric_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        goto err_nomem;
    m->reg = reg;
    m->type = type;
    m->name = strdup(name);
    m->help = strdup(help ? help : "");
    if (m->name == NULL || m->help == NULL)
        goto err_free;
    m->n_labels = n_labels;
    for (size_t i = 0; i < n_labels; i++) {
        m->label_names[i] = strdup(label_names[i]);
        if (m->label_names[i] == NULL)
            goto err_free;
    }
    m->n_buckets = n_buckets;
    for (size_t i = 0; i < n_buckets; i++)
        m->buckets[i] = buckets[i];
    if (reg->tail)
        reg->tail->next = m;
    else
        reg->head = m;
    reg->tail = m;
    pthread_mutex_unlock(&reg->lock);
    *metric_p = m;
    return PD_OK;

err_free:
    family_free(m);
err_nomem:
    pthread_mutex_unlock(&reg->lock);
    return PD_ERR_NOMEM;
}

pd_status_t pd_metrics_counter(pd_metrics_registry_t *reg, const char *name, const char *help,
                               size_t n_labels, const char *const *label_names,
                               pd_metric_t **metric_p)
{
    return family_register(reg, PD_METRIC_COUNTER, name, help, n_labels, label_names, 0, NULL,
                           metric_p);
}

pd_status_t pd_metrics_gauge(pd_metrics_registry_t *reg, const char *name, const char *help,
                             size_t n_labels, const char *const *label_names,
                             pd_metric_t **metric_p)
{
    return family_register(reg, PD_METRIC_GAUGE, name, help, n_labels, label_names, 0, NULL,
                           metric_p);
}

pd_status_t pd_metrics_histogram(pd_metrics_registry_t *reg, const char *name, const char *help,
                                 size_t n_labels, const char *const *label_names,
                                 size_t n_buckets, const double *buckets,
                                 pd_metric_t **metric_p)
{
    return family_register(reg, PD_METRIC_HISTOGRAM, name, help, n_labels, label_names,
                           n_buckets, buckets, metric_p);
}

pd_status_t pd_metric_series(pd_metric_t *metric, const char *const *label_values,
                             pd_metric_series_t **series_p)
{
    if (metric == NULL || series_p == NULL || (metric->n_labels > 0 && label_values == NULL))
        return PD_ERR_INVAL;
    for (size_t i = 0; i < metric->n_labels; i++)
        if (label_values[i] == NULL)
            return PD_ERR_INVAL;

    pd_metrics_registry_t *reg = metric->reg;
    pthread_mutex_lock(&reg->lock);
    for (size_t i = 0; i < metric->n_series; i++) {
        pd_metric_series_t *s = metric->series[i];
        size_t j = 0;
        while (j < metric->n_labels && strcmp(s->label_values[j], label_values[j]) == 0)
            j++;
        if (j == metric->n_labels) {
            pthread_mutex_unlock(&reg->lock);
            *series_p = s;
            return PD_OK;
        }
    }
    if (metric->n_series >= PD_METRIC_MAX_SERIES) {
        pthread_mutex_unlock(&reg->lock);
        PD_LOG_WARN("metrics: '%s' has too many label combinations", metric->name);
        return PD_ERR_LIMIT;
    }
    if (metric->n_series == metric->cap_series) {
        size_t cap = metric->cap_series ? metric->cap_series * 2 : 8;
        pd_metric_series_t **arr = realloc(metric->series, cap * sizeof(*arr));
        if (arr == NULL)
            goto err_nomem;
        metric->series = arr;
        metric->cap_series = cap;
    }
    pd_metric_series_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto err_nomem;
    s->family = metric;
    s->label_values = calloc(metric->n_labels ? metric->n_labels : 1, sizeof(char *));
    if (s->label_values == NULL)
        goto err_series;
    for (size_t i = 0; i < metric->n_labels; i++) {
        s->label_values[i] = strdup(label_values[i]);
        if (s->label_values[i] == NULL)
            goto err_series;
    }
    if (metric->type == PD_METRIC_HISTOGRAM) {
        s->buckets = calloc(metric->n_buckets + 1, sizeof(*s->buckets));
        if (s->buckets == NULL)
            goto err_series;
    }
    atomic_init(&s->value, dbl_bits(0.0));
    metric->series[metric->n_series++] = s;
    pthread_mutex_unlock(&reg->lock);
    *series_p = s;
    return PD_OK;

err_series:
    series_free(s, metric->n_labels);
err_nomem:
    pthread_mutex_unlock(&reg->lock);
    return PD_ERR_NOMEM;
}

pd_metric_series_t *pd_metric_default(pd_metric_t *metric)
{
    pd_metric_series_t *s = NULL;
    if (metric == NULL || metric->n_labels != 0)
        return NULL;
    if (pd_metric_series(metric, NULL, &s) != PD_OK)
        return NULL;
    return s;
}

/* ---- hot path ---- */

void pd_metric_inc(pd_metric_series_t *s)
{
    pd_metric_add(s, 1.0);
}

void pd_metric_add(pd_metric_series_t *s, double v)
{
    if (s == NULL || isnan(v))
        return;
    if (s->family->type == PD_METRIC_COUNTER && v < 0)
        return;
    atomic_dbl_add(&s->value, v);
}

void pd_metric_set(pd_metric_series_t *s, double v)
{
    if (s == NULL)
        return;
    atomic_store_explicit(&s->value, dbl_bits(v), memory_order_relaxed);
}

void pd_metric_observe(pd_metric_series_t *s, double v)
{
    if (s == NULL || s->family->type != PD_METRIC_HISTOGRAM || isnan(v))
        return;
    const pd_metric_t *m = s->family;
    size_t i = 0;
    while (i < m->n_buckets && v > m->buckets[i])
        i++;
    atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
    atomic_dbl_add(&s->value, v);
    atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
}

double pd_metric_value(const pd_metric_series_t *s)
{
    if (s == NULL)
        return 0.0;
    return bits_dbl(atomic_load_explicit(&((pd_metric_series_t *)s)->value, memory_order_relaxed));
}

unsigned long long pd_metric_count(const pd_metric_series_t *s)
{
    if (s == NULL)
        return 0;
    return atomic_load_explicit(&((pd_metric_series_t *)s)->count, memory_order_relaxed);
}

pd_status_t pd_metrics_add_collector(pd_metrics_registry_t *reg, pd_metrics_collect_cb_t cb,
                                     void *user)
{
    if (reg == NULL || cb == NULL)
        return PD_ERR_INVAL;
    collector_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return PD_ERR_NOMEM;
    c->cb = cb;
    c->user = user;
    pthread_mutex_lock(&reg->lock);
    c->next = reg->collectors;
    reg->collectors = c;
    pthread_mutex_unlock(&reg->lock);
    return PD_OK;
}

/* ---- exposition ---- */

void pd_metrics_format_double(double v, char *buf, size_t size)
{
    if (isnan(v)) {
        snprintf(buf, size, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, size, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    /* Shortest text that round-trips, laid out like Python's repr() (which the reference
     * client uses): fixed notation for 1e-4 <= |v| < 1e16 with at least one decimal
     * ("10.0", "0.005"), exponent notation outside ("1e+21", "1.5e-05"). */
    double a = fabs(v);
    if (a != 0 && (a >= 1e16 || a < 1e-4)) {
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(buf, size, "%.*g", prec, v);
            if (strtod(buf, NULL) == v)
                break;
        }
        return;
    }
    for (int dec = 0; dec <= 20; dec++) {
        snprintf(buf, size, "%.*f", dec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    if (strchr(buf, '.') == NULL && strlen(buf) + 3 <= size)
        strcat(buf, ".0");
}

/* HELP text escapes backslash and newline; label values also the double quote. */
static pd_status_t append_escaped(pd_buf_t *out, const char *s, int quote)
{
    pd_status_t st = PD_OK;
    for (; *s && st == PD_OK; s++) {
        if (*s == '\\')
            st = pd_buf_puts(out, "\\\\");
        else if (*s == '\n')
            st = pd_buf_puts(out, "\\n");
        else if (quote && *s == '"')
            st = pd_buf_puts(out, "\\\"");
        else
            st = pd_buf_append(out, s, 1);
    }
    return st;
}

/* {a="x",b="y"[,le="..."]} or nothing when there are no labels at all. */
static pd_status_t append_labels(pd_buf_t *out, const pd_metric_t *m, const pd_metric_series_t *s,
                                 const char *le)
{
    pd_status_t st = PD_OK;
    if (m->n_labels == 0 && le == NULL)
        return PD_OK;
    st = pd_buf_puts(out, "{");
    for (size_t i = 0; i < m->n_labels && st == PD_OK; i++) {
        st = pd_buf_printf(out, "%s%s=\"", i ? "," : "", m->label_names[i]);
        if (st == PD_OK)
            st = append_escaped(out, s->label_values[i], 1);
        if (st == PD_OK)
            st = pd_buf_puts(out, "\"");
    }
    if (st == PD_OK && le != NULL)
        st = pd_buf_printf(out, "%sle=\"%s\"", m->n_labels ? "," : "", le);
    if (st == PD_OK)
        st = pd_buf_puts(out, "}");
    return st;
}

static pd_status_t render_family(pd_buf_t *out, const pd_metric_t *m)
{
    static const char *type_names[] = {"counter", "gauge", "histogram"};
    char num[64], le[64];
    pd_status_t st = pd_buf_printf(out, "# HELP %s ", m->name);
    if (st == PD_OK)
        st = append_escaped(out, m->help, 0);
    if (st == PD_OK)
        st = pd_buf_printf(out, "\n# TYPE %s %s\n", m->name, type_names[m->type]);
    for (size_t i = 0; i < m->n_series && st == PD_OK; i++) {
        const pd_metric_series_t *s = m->series[i];
        if (m->type != PD_METRIC_HISTOGRAM) {
            pd_metrics_format_double(pd_metric_value(s), num, sizeof(num));
            st = pd_buf_puts(out, m->name);
            if (st == PD_OK)
                st = append_labels(out, m, s, NULL);
            if (st == PD_OK)
                st = pd_buf_printf(out, " %s\n", num);
            continue;
        }
        /* Read count first and clamp the cumulative +Inf bucket to it, so a scrape
         * racing with observe() never shows _count below a bucket. */
        unsigned long long cum = 0;
        for (size_t b = 0; b <= m->n_buckets && st == PD_OK; b++) {
            cum += atomic_load_explicit(&s->buckets[b], memory_order_relaxed);
            if (b < m->n_buckets)
                pd_metrics_format_double(m->buckets[b], le, sizeof(le));
            else
                snprintf(le, sizeof(le), "+Inf");
            st = pd_buf_printf(out, "%s_bucket", m->name);
            if (st == PD_OK)
                st = append_labels(out, m, s, le);
            if (st == PD_OK)
                st = pd_buf_printf(out, " %llu\n", cum);
        }
        pd_metrics_format_double(pd_metric_value(s), num, sizeof(num));
        if (st == PD_OK)
            st = pd_buf_printf(out, "%s_sum", m->name);
        if (st == PD_OK)
            st = append_labels(out, m, s, NULL);
        if (st == PD_OK)
            st = pd_buf_printf(out, " %s\n%s_count", num, m->name);
        if (st == PD_OK)
            st = append_labels(out, m, s, NULL);
        if (st == PD_OK)
            st = pd_buf_printf(out, " %llu\n", cum);
    }
    return st;
}

pd_status_t pd_metrics_render(pd_metrics_registry_t *reg, pd_buf_t *out)
{
    if (reg == NULL || out == NULL)
        return PD_ERR_INVAL;
    /* Collectors run unlocked: they set gauges, which may create series. */
    pthread_mutex_lock(&reg->lock);
    size_t n = 0;
    for (collector_t *c = reg->collectors; c; c = c->next)
        n++;
    collector_t *copy = n ? calloc(n, sizeof(*copy)) : NULL;
    size_t k = 0;
    for (collector_t *c = reg->collectors; c && copy; c = c->next)
        copy[k++] = *c;
    pthread_mutex_unlock(&reg->lock);
    for (size_t i = 0; i < k; i++)
        copy[i].cb(reg, copy[i].user);
    free(copy);

    pd_status_t st = PD_OK;
    pthread_mutex_lock(&reg->lock);
    for (pd_metric_t *m = reg->head; m != NULL && st == PD_OK; m = m->next)
        st = render_family(out, m);
    pthread_mutex_unlock(&reg->lock);
    return st;
}
