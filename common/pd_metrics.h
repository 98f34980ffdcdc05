/*
 * pd_metrics.h - a Prometheus metrics registry (text exposition format 0.0.4).
 *
 * A registry holds metric families (counter, gauge, histogram), each with a small
 * fixed list of label names.  A family's series (one per combination of label values)
 * is looked up once with pd_metric_series() and then updated on the hot path with
 * lock-free atomic operations; series pointers stay valid until the registry is
 * destroyed, so callers cache them.  Only series creation and rendering take a lock.
 *
 *   pd_metric_t *ttft;
 *   pd_metrics_histogram(reg, "vllm:time_to_first_token_seconds", "TTFT.",
 *                        1, (const char *[]){"model_name"}, 3, (double[]){0.1, 1, 10}, &ttft);
 *   pd_metric_series_t *s;
 *   pd_metric_series(ttft, (const char *[]){"smollm2"}, &s);
 *   pd_metric_observe(s, 0.25);
 *   pd_metrics_render(reg, &buf);   -> HELP/TYPE, _bucket{le=...}, _sum, _count
 */
#ifndef PD_METRICS_H
#define PD_METRICS_H

#include <stddef.h>

#include "pd_status.h"
#include "pd_util.h"

typedef struct pd_metrics_registry pd_metrics_registry_t;
typedef struct pd_metric pd_metric_t;               /* one family */
typedef struct pd_metric_series pd_metric_series_t; /* one label-value combination */

typedef enum { PD_METRIC_COUNTER, PD_METRIC_GAUGE, PD_METRIC_HISTOGRAM } pd_metric_type_t;

#define PD_METRIC_MAX_LABELS 8
#define PD_METRIC_MAX_BUCKETS 64
#define PD_METRIC_MAX_SERIES 4096 /* per family: bounds memory against label explosions */

pd_status_t pd_metrics_registry_create(pd_metrics_registry_t **reg_p);
void pd_metrics_registry_destroy(pd_metrics_registry_t *reg);

/* Register a family.  name must match [a-zA-Z_:][a-zA-Z0-9_:]*, label names
 * [a-zA-Z_][a-zA-Z0-9_]* (not "le" for histograms).  Registering the same name again
 * with the same type and labels returns the existing family (so two components can
 * share one); a conflicting one gives PD_ERR_EXISTS.  Histogram buckets must be
 * strictly increasing and finite; +Inf is implicit.  Thread-safe. */
pd_status_t pd_metrics_counter(pd_metrics_registry_t *reg, const char *name, const char *help,
                               size_t n_labels, const char *const *label_names,
                               pd_metric_t **metric_p);
pd_status_t pd_metrics_gauge(pd_metrics_registry_t *reg, const char *name, const char *help,
                             size_t n_labels, const char *const *label_names,
                             pd_metric_t **metric_p);
pd_status_t pd_metrics_histogram(pd_metrics_registry_t *reg, const char *name, const char *help,
                                 size_t n_labels, const char *const *label_names,
                                 size_t n_buckets, const double *buckets,
                                 pd_metric_t **metric_p);

/* Find or create the series for these label values (n_labels strings, any bytes:
 * escaped at render).  PD_ERR_LIMIT past PD_METRIC_MAX_SERIES.  Thread-safe. */
pd_status_t pd_metric_series(pd_metric_t *metric, const char *const *label_values,
                             pd_metric_series_t **series_p);

/* Hot-path updates: lock-free, any thread.  Counters ignore negative increments. */
void pd_metric_inc(pd_metric_series_t *s);             /* counter/gauge += 1 */
void pd_metric_add(pd_metric_series_t *s, double v);   /* counter/gauge += v */
void pd_metric_set(pd_metric_series_t *s, double v);   /* gauge = v */
void pd_metric_observe(pd_metric_series_t *s, double v); /* histogram */
double pd_metric_value(const pd_metric_series_t *s);   /* counter/gauge value, histogram sum */
unsigned long long pd_metric_count(const pd_metric_series_t *s); /* histogram count */

/* Convenience for labelless families: the one series (created on first use).
 * Returns NULL only when out of memory. */
pd_metric_series_t *pd_metric_default(pd_metric_t *metric);

/* A callback run at the start of every render, to set gauges computed on demand
 * (e.g. KV-cache usage).  Thread-safe registration. */
typedef void (*pd_metrics_collect_cb_t)(pd_metrics_registry_t *reg, void *user);
pd_status_t pd_metrics_add_collector(pd_metrics_registry_t *reg, pd_metrics_collect_cb_t cb,
                                     void *user);

/* Append the whole registry in Prometheus text format 0.0.4 to out (families in
 * registration order, series in creation order).  Content type:
 * PD_METRICS_CONTENT_TYPE. */
pd_status_t pd_metrics_render(pd_metrics_registry_t *reg, pd_buf_t *out);
#define PD_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Format a double the way Prometheus clients do ("+Inf", "-Inf", "NaN", shortest
 * round-trip decimal otherwise) into buf (>= 32 bytes). */
void pd_metrics_format_double(double v, char *buf, size_t size);

#endif /* PD_METRICS_H */
