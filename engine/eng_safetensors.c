/*
 * eng_safetensors.c - safetensors reader: header JSON parsed with cJSON, every entry
 * validated against the file size with checked arithmetic before any pointer is made.
 */
#include "eng_safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pd_log.h"
#include "pd_util.h"

/* Headers above this are corruption (real ones are a few hundred KiB at most). */
#define ST_MAX_HEADER (100u << 20)

struct eng_safetensors {
    const uint8_t *base;
    size_t size;
    bool mapped;
    char *path;
    cJSON *header;
    eng_st_tensor_t *tensors; /* sorted by name */
    size_t n_tensors;
};

typedef struct {
    const char *name;
    eng_dtype_t type;
    size_t elem_size;
} st_dtype_t;

static const st_dtype_t st_dtypes[] = {
    {"F64", ENG_DTYPE_F64, 8},         {"F32", ENG_DTYPE_F32, 4},
    {"F16", ENG_DTYPE_F16, 2},         {"BF16", ENG_DTYPE_BF16, 2},
    {"I64", ENG_DTYPE_I64, 8},         {"I32", ENG_DTYPE_I32, 4},
    {"I16", ENG_DTYPE_I16, 2},         {"I8", ENG_DTYPE_I8, 1},
    {"U64", ENG_DTYPE_INVALID, 8},     {"U32", ENG_DTYPE_INVALID, 4},
    {"U16", ENG_DTYPE_INVALID, 2},     {"U8", ENG_DTYPE_INVALID, 1},
    {"BOOL", ENG_DTYPE_INVALID, 1},    {"F8_E4M3", ENG_DTYPE_INVALID, 1},
    {"F8_E5M2", ENG_DTYPE_INVALID, 1},
};

/* A JSON number that is a non-negative integer exactly representable (< 2^53). */
static bool json_u64(const cJSON *item, uint64_t *v)
{
    double d;
    if (!cJSON_IsNumber(item))
        return false;
    d = item->valuedouble;
    if (!(d >= 0) || d >= 9007199254740992.0 || d != floor(d))
        return false;
    *v = (uint64_t)d;
    return true;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const eng_st_tensor_t *)a)->name, ((const eng_st_tensor_t *)b)->name);
}

static int cmp_offset(const void *a, const void *b)
{
    const eng_st_tensor_t *const *x = a, *const *y = b;
    if ((*x)->offset != (*y)->offset)
        return (*x)->offset < (*y)->offset ? -1 : 1;
    /* empty tensors first so an empty one at the start of another does not "overlap" */
    return (*x)->nbytes < (*y)->nbytes ? -1 : (*x)->nbytes > (*y)->nbytes;
}

static pd_status_t parse_entry(eng_safetensors_t *st, const cJSON *e, eng_st_tensor_t *t,
                               size_t data_size)
{
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    const st_dtype_t *dt = NULL;
    uint64_t begin, end;
    size_t bytes;
    int n;

    t->name = e->string;
    if (!cJSON_IsObject(e) || !cJSON_IsString(dtype) || !cJSON_IsArray(shape) ||
        !cJSON_IsArray(offs)) {
        PD_LOG_ERR("safetensors: entry '%s' needs dtype, shape and data_offsets", t->name);
        return PD_ERR_FORMAT;
    }
    for (size_t i = 0; i < PD_ARRAY_SIZE(st_dtypes); i++)
        if (strcmp(dtype->valuestring, st_dtypes[i].name) == 0)
            dt = &st_dtypes[i];
    if (dt == NULL) {
        PD_LOG_ERR("safetensors: tensor '%s': unknown dtype '%s'", t->name, dtype->valuestring);
        return PD_ERR_FORMAT;
    }
    t->dtype = dt->name;
    t->type = dt->type;
    n = cJSON_GetArraySize(shape);
    if (n > 4) {
        PD_LOG_ERR("safetensors: tensor '%s': %d dimensions (at most 4 supported)", t->name, n);
        return PD_ERR_FORMAT;
    }
    t->n_dims = n;
    bytes = dt->elem_size;
    for (int d = 0; d < 4; d++)
        t->shape[d] = t->ne[d] = 1;
    int64_t nel = 1;
    for (int d = 0; d < n; d++) {
        uint64_t v;
        if (!json_u64(cJSON_GetArrayItem(shape, d), &v)) {
            PD_LOG_ERR("safetensors: tensor '%s': shape[%d] is not a non-negative integer",
                       t->name, d);
            return PD_ERR_FORMAT;
        }
        t->shape[d] = (int64_t)v;
        t->ne[n - 1 - d] = (int64_t)v;
        if (pd_mul_size(bytes, (size_t)v, &bytes) != PD_OK ||
            __builtin_mul_overflow(nel, (int64_t)v, &nel)) {
            PD_LOG_ERR("safetensors: tensor '%s': size overflows", t->name);
            return PD_ERR_FORMAT;
        }
    }
    if (cJSON_GetArraySize(offs) != 2 || !json_u64(cJSON_GetArrayItem(offs, 0), &begin) ||
        !json_u64(cJSON_GetArrayItem(offs, 1), &end) || end < begin) {
        PD_LOG_ERR("safetensors: tensor '%s': data_offsets must be [begin, end] with "
                   "begin <= end", t->name);
        return PD_ERR_FORMAT;
    }
    if (end - begin != bytes) {
        PD_LOG_ERR("safetensors: tensor '%s': %llu bytes in the file, but %s x %lld elements "
                   "need %zu", t->name, (unsigned long long)(end - begin), dt->name,
                   (long long)nel, bytes);
        return PD_ERR_FORMAT;
    }
    if (end > data_size) {
        PD_LOG_ERR("safetensors: tensor '%s': data [%llu, %llu) runs past the end of the data "
                   "(%zu bytes)", t->name, (unsigned long long)begin, (unsigned long long)end,
                   data_size);
        return PD_ERR_FORMAT;
    }
    t->offset = begin;
    t->nbytes = bytes;
    t->data = st->base + 8 + (st->size - 8 - data_size) + begin;
    return PD_OK;
}

static pd_status_t parse(eng_safetensors_t *st)
{
    uint64_t hlen;
    size_t data_size, n = 0, i;
    const cJSON *e;
    eng_st_tensor_t **order = NULL;
    pd_status_t status = PD_ERR_FORMAT;

    if (st->size < 8) {
        PD_LOG_ERR("safetensors: file of %zu bytes is too small for a header", st->size);
        return PD_ERR_FORMAT;
    }
    memcpy(&hlen, st->base, 8);
    if (hlen > st->size - 8 || hlen > ST_MAX_HEADER || hlen < 2) {
        PD_LOG_ERR("safetensors: header length %llu does not fit a %zu-byte file (limit %u)",
                   (unsigned long long)hlen, st->size, ST_MAX_HEADER);
        return PD_ERR_FORMAT;
    }
    data_size = st->size - 8 - (size_t)hlen;
    st->header = cJSON_ParseWithLength((const char *)st->base + 8, (size_t)hlen);
    if (st->header == NULL || !cJSON_IsObject(st->header)) {
        PD_LOG_ERR("safetensors: header is not a JSON object");
        return PD_ERR_FORMAT;
    }
    cJSON_ArrayForEach(e, st->header)
        if (strcmp(e->string, "__metadata__") != 0)
            n++;
    st->tensors = calloc(n ? n : 1, sizeof(*st->tensors));
    order = malloc((n ? n : 1) * sizeof(*order));
    if (st->tensors == NULL || order == NULL) {
        status = PD_ERR_NOMEM;
        goto out;
    }
    i = 0;
    cJSON_ArrayForEach(e, st->header) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(e)) {
                PD_LOG_ERR("safetensors: __metadata__ is not an object");
                goto out;
            }
            continue;
        }
        if ((status = parse_entry(st, e, &st->tensors[i], data_size)) != PD_OK)
            goto out;
        i++;
    }
    st->n_tensors = n;
    status = PD_ERR_FORMAT;
    qsort(st->tensors, n, sizeof(*st->tensors), cmp_name);
    for (i = 1; i < n; i++)
        if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0) {
            PD_LOG_ERR("safetensors: tensor '%s' appears twice", st->tensors[i].name);
            goto out;
        }
    for (i = 0; i < n; i++)
        order[i] = &st->tensors[i];
    qsort(order, n, sizeof(*order), cmp_offset);
    for (i = 1; i < n; i++)
        if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset) {
            PD_LOG_ERR("safetensors: tensors '%s' and '%s' overlap", order[i - 1]->name,
                       order[i]->name);
            goto out;
        }
    status = PD_OK;
out:
    free(order);
    return status;
}

static pd_status_t open_common(eng_safetensors_t *st, eng_safetensors_t **st_p)
{
    pd_status_t status = parse(st);
    if (status != PD_OK) {
        eng_safetensors_close(st);
        return status;
    }
    *st_p = st;
    return PD_OK;
}

pd_status_t eng_safetensors_open_mem(const void *data, size_t size, eng_safetensors_t **st_p)
{
    eng_safetensors_t *st;

    if (data == NULL && size != 0)
        return PD_ERR_INVAL;
    st = calloc(1, sizeof(*st));
    if (st == NULL)
        return PD_ERR_NOMEM;
    st->base = data;
    st->size = size;
    st->path = strdup("");
    if (st->path == NULL) {
        free(st);
        return PD_ERR_NOMEM;
    }
    return open_common(st, st_p);
}

pd_status_t eng_safetensors_open(const char *path, eng_safetensors_t **st_p)
{
    struct stat sb;
    eng_safetensors_t *st;
    void *map;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        PD_LOG_ERR("safetensors: cannot open %s: %s", path, strerror(errno));
        return errno == ENOENT ? PD_ERR_NOT_FOUND : PD_ERR_IO;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        PD_LOG_ERR("safetensors: %s is not a regular file", path);
        close(fd);
        return PD_ERR_IO;
    }
    if (sb.st_size < 10) {
        PD_LOG_ERR("safetensors: %s: file too small (%lld bytes)", path, (long long)sb.st_size);
        close(fd);
        return PD_ERR_FORMAT;
    }
    map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        PD_LOG_ERR("safetensors: cannot map %s: %s", path, strerror(errno));
        return PD_ERR_IO;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL) {
        munmap(map, (size_t)sb.st_size);
        return PD_ERR_NOMEM;
    }
    st->base = map;
    st->size = (size_t)sb.st_size;
    st->mapped = true;
    st->path = strdup(path);
    if (st->path == NULL) {
        eng_safetensors_close(st);
        return PD_ERR_NOMEM;
    }
    pd_status_t status = open_common(st, st_p);
    if (status != PD_OK)
        PD_LOG_ERR("safetensors: %s is not a valid safetensors file", path);
    return status;
}

void eng_safetensors_close(eng_safetensors_t *st)
{
    if (st == NULL)
        return;
    free(st->tensors);
    cJSON_Delete(st->header);
    free(st->path);
    if (st->mapped)
        munmap((void *)st->base, st->size);
    free(st);
}

size_t eng_safetensors_n_tensors(const eng_safetensors_t *st)
{
    return st->n_tensors;
}

const eng_st_tensor_t *eng_safetensors_tensor(const eng_safetensors_t *st, size_t i)
{
    return i < st->n_tensors ? &st->tensors[i] : NULL;
}

const eng_st_tensor_t *eng_safetensors_find(const eng_safetensors_t *st, const char *name)
{
    size_t lo = 0, hi = st->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, st->tensors[mid].name);
        if (c == 0)
            return &st->tensors[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *eng_safetensors_meta(const eng_safetensors_t *st, const char *key)
{
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(st->header, "__metadata__");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

const char *eng_safetensors_path(const eng_safetensors_t *st)
{
    return st->path;
}
