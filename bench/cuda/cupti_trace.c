/*
 * cupti_trace.c - see cupti_trace.h.  CUPTI hands filled activity buffers to
 * buf_done (on its own thread, or at the flush); the records are copied into two growable
 * arrays and written out at pd_trace_stop.  Kernel names stay mangled (nsys_gaps.py
 * shortens them; c++filt demangles).
 */
#include "cupti_trace.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef PD_HAVE_CUPTI
#include <cupti.h>

typedef struct {
    uint64_t start, end;
    uint32_t corr;
    char kind;     /* 'k' kernel, 'c' memcpy, 's' memset, 'a' runtime API */
    char *name;    /* kernels: strdup'd name; API: NULL (cbid kept) */
    uint32_t cbid;
} rec_t;

static rec_t *g_rec;
static size_t g_n, g_cap;
static int g_oom;

static void push(rec_t r)
{
    if (g_n == g_cap) {
        size_t cap = g_cap ? 2 * g_cap : 65536;
        rec_t *p = realloc(g_rec, cap * sizeof(*p));
        if (p == NULL) {
            g_oom = 1;
            free(r.name);
            return;
        }
        g_rec = p, g_cap = cap;
    }
    g_rec[g_n++] = r;
}

#define BUF_BYTES (8u << 20)

static void CUPTIAPI buf_request(uint8_t **buffer, size_t *size, size_t *max_records)
{
    *buffer = aligned_alloc(8, BUF_BYTES);
    *size = *buffer ? BUF_BYTES : 0;
    *max_records = 0;
}

static void CUPTIAPI buf_done(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid)
{
    CUpti_Activity *a = NULL;
    (void)ctx, (void)stream, (void)size;
    while (cuptiActivityGetNextRecord(buffer, valid, &a) == CUPTI_SUCCESS) {
        rec_t r = {0};
        switch (a->kind) {
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
        case CUPTI_ACTIVITY_KIND_KERNEL: {
            const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)a;
            r = (rec_t){k->start, k->end, k->correlationId, 'k', strdup(k->name ? k->name : "?"), 0};
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY: {
            const CUpti_ActivityMemcpy6 *m = (const CUpti_ActivityMemcpy6 *)a;
            char nm[64];
            snprintf(nm, sizeof nm, "[memcpy kind %u, %llu bytes]", (unsigned)m->copyKind, (unsigned long long)m->bytes);
            r = (rec_t){m->start, m->end, m->correlationId, 'c', strdup(nm), 0};
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMSET: {
            const CUpti_ActivityMemset4 *m = (const CUpti_ActivityMemset4 *)a;
            r = (rec_t){m->start, m->end, m->correlationId, 's', strdup("[memset]"), 0};
            break;
        }
        case CUPTI_ACTIVITY_KIND_RUNTIME:
        case CUPTI_ACTIVITY_KIND_DRIVER: {
            const CUpti_ActivityAPI *p = (const CUpti_ActivityAPI *)a;
            r = (rec_t){p->start, p->end, p->correlationId, 'a', NULL, p->cbid};
            break;
        }
        default:
            continue;
        }
        push(r);
    }
    free(buffer);
}

static const CUpti_ActivityKind g_kinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                              CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_RUNTIME};

static int check(CUptiResult r, const char *what)
{
    if (r == CUPTI_SUCCESS)
        return 0;
    const char *s = NULL;
    cuptiGetResultString(r, &s);
    fprintf(stderr, "cupti_trace: %s: %s\n", what, s ? s : "?");
    return -1;
}

int pd_trace_start(void)
{
    if (check(cuptiActivityRegisterCallbacks(buf_request, buf_done), "cuptiActivityRegisterCallbacks"))
        return -1;
    for (size_t i = 0; i < sizeof g_kinds / sizeof g_kinds[0]; i++)
        if (check(cuptiActivityEnable(g_kinds[i]), "cuptiActivityEnable"))
            return -1;
    return 0;
}

int pd_trace_stop(const char *dir)
{
    char path[4096];
    FILE *g, *a;
    int rc = 0;
    for (size_t i = 0; i < sizeof g_kinds / sizeof g_kinds[0]; i++)
        cuptiActivityDisable(g_kinds[i]);
    if (check(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "cuptiActivityFlushAll"))
        return -1;
    snprintf(path, sizeof path, "%s/tl_cuda_gpu_trace.csv", dir);
    g = fopen(path, "w");
    snprintf(path, sizeof path, "%s/tl_cuda_api_trace.csv", dir);
    a = fopen(path, "w");
    if (g == NULL || a == NULL) {
        fprintf(stderr, "cupti_trace: cannot write the CSVs into %s\n", dir);
        rc = -1;
        goto out;
    }
    fprintf(g, "\"Start (ns)\",\"Duration (ns)\",\"CorrId\",\"Name\"\n");
    fprintf(a, "\"Start (ns)\",\"Duration (ns)\",\"Name\",\"CorrID\"\n");
    for (size_t i = 0; i < g_n; i++) {
        const rec_t *r = &g_rec[i];
        if (r->kind == 'a')
            fprintf(a, "%llu,%llu,\"cbid %u\",%u\n", (unsigned long long)r->start,
                    (unsigned long long)(r->end - r->start), r->cbid, r->corr);
        else
            fprintf(g, "%llu,%llu,%u,\"%s\"\n", (unsigned long long)r->start, (unsigned long long)(r->end - r->start),
                    r->corr, r->name);
    }
    if (g_oom) {
        fprintf(stderr, "cupti_trace: out of memory: records were dropped\n");
        rc = -1;
    }
out:
    if (g)
        fclose(g);
    if (a)
        fclose(a);
    for (size_t i = 0; i < g_n; i++)
        free(g_rec[i].name);
    free(g_rec);
    g_rec = NULL, g_n = g_cap = 0;
    return rc;
}

#else /* !PD_HAVE_CUPTI */

int pd_trace_start(void)
{
    fprintf(stderr, "cupti_trace: bench_cuda was built without CUPTI\n");
    return -1;
}

int pd_trace_stop(const char *dir)
{
    (void)dir;
    return -1;
}

#endif
