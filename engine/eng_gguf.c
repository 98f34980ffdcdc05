/*
 * eng_gguf.c - GGUF v2/v3 reader.
 *
 * Layout (little endian): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, then
 * n_kv x (string key, u32 type, value), then n_tensors x (string name, u32 n_dims,
 * u64 ne[n_dims], u32 type, u64 offset), padding to general.alignment (default 32),
 * then the data section.  A string is u64 length + bytes (no NUL).  An array value is
 * u32 element type + u64 count + elements.
 *
 * Invariants after a successful open: every key/value lies inside the buffer, every
 * string array has an offset index, every tensor's bytes lie inside the data section
 * without overlapping another, and tensor offsets are multiples of the alignment.
 * Every size is computed with checked arithmetic before it is used.
 */
#include "eng_gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pd_log.h"
#include "pd_util.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" little endian */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_KEY 65535     /* longer keys are certainly corruption */
#define GGUF_MAX_ALIGNMENT (1u << 20)

typedef struct {
    char *key;
    eng_gguf_type_t type;
    eng_gguf_type_t elem_type; /* arrays */
    uint64_t n;                /* arrays: element count */
    const uint8_t *val;        /* scalar value, string length prefix, or first element */
    uint64_t *str_offs;        /* string arrays: offset of each element's length prefix */
} gguf_kv_t;

struct eng_gguf {
    const uint8_t *base;
    size_t size;
    bool mapped;
    char *path;
    uint32_t version;
    size_t alignment;
    size_t data_offset;
    gguf_kv_t *kv;
    size_t n_kv;
    eng_gguf_tensor_info_t *tensors;
    size_t n_tensors;
    char *names; /* one block holding every tensor name */
};

typedef struct {
    const uint8_t *p;
    size_t size;
    size_t off;
    const char *what; /* for error messages */
} cursor_t;

/* ---- reading primitives ---- */

static pd_status_t need(cursor_t *c, size_t n)
{
    if (n > c->size - c->off) {
        PD_LOG_ERR("gguf: truncated: %s needs %zu bytes at offset %zu, file has %zu", c->what,
                   n, c->off, c->size);
        return PD_ERR_FORMAT;
    }
    return PD_OK;
}

static pd_status_t rd_u32(cursor_t *c, uint32_t *v)
{
    pd_status_t st = need(c, 4);
    if (st != PD_OK)
        return st;
    memcpy(v, c->p + c->off, 4);
    c->off += 4;
    return PD_OK;
}

static pd_status_t rd_u64(cursor_t *c, uint64_t *v)
{
    pd_status_t st = need(c, 8);
    if (st != PD_OK)
        return st;
    memcpy(v, c->p + c->off, 8);
    c->off += 8;
    return PD_OK;
}

/* A string: checks the length against what is left and returns a pointer into the
 * buffer. */
static pd_status_t rd_str(cursor_t *c, const char **s, uint64_t *len)
{
    uint64_t n;
    pd_status_t st = rd_u64(c, &n);
    if (st != PD_OK)
        return st;
    if (n > c->size - c->off) {
        PD_LOG_ERR("gguf: %s: string length %llu at offset %zu runs past the end (%zu)",
                   c->what, (unsigned long long)n, c->off - 8, c->size);
        return PD_ERR_FORMAT;
    }
    *s = (const char *)(c->p + c->off);
    *len = n;
    c->off += (size_t)n;
    return PD_OK;
}

static size_t scalar_size(eng_gguf_type_t t)
{
    switch (t) {
    case ENG_GGUF_UINT8:
    case ENG_GGUF_INT8:
    case ENG_GGUF_BOOL:
        return 1;
    case ENG_GGUF_UINT16:
    case ENG_GGUF_INT16:
        return 2;
    case ENG_GGUF_UINT32:
    case ENG_GGUF_INT32:
    case ENG_GGUF_FLOAT32:
        return 4;
    case ENG_GGUF_UINT64:
    case ENG_GGUF_INT64:
    case ENG_GGUF_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

static const char *type_name(eng_gguf_type_t t)
{
    static const char *names[] = {"u8",  "i8",   "u16",   "i16", "u32", "i32",  "f32",
                                  "bool", "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < ENG_GGUF_TYPE_COUNT ? names[t] : "?";
}

static pd_status_t parse_kv(cursor_t *c, gguf_kv_t *kv, size_t index)
{
    const char *key;
    uint64_t key_len;
    uint32_t type;
    pd_status_t st;

    c->what = "metadata key";
    st = rd_str(c, &key, &key_len);
    if (st != PD_OK)
        return st;
    if (key_len == 0 || key_len > GGUF_MAX_KEY || memchr(key, 0, (size_t)key_len) != NULL) {
        PD_LOG_ERR("gguf: metadata key %zu at offset %zu: bad key (length %llu)", index,
                   c->off - (size_t)key_len - 8, (unsigned long long)key_len);
        return PD_ERR_FORMAT;
    }
    kv->key = malloc((size_t)key_len + 1);
    if (kv->key == NULL)
        return PD_ERR_NOMEM;
    memcpy(kv->key, key, (size_t)key_len);
    kv->key[key_len] = '\0';
    c->what = kv->key;

    st = rd_u32(c, &type);
    if (st != PD_OK)
        return st;
    if (type >= ENG_GGUF_TYPE_COUNT) {
        PD_LOG_ERR("gguf: key '%s': bad value type %u", kv->key, type);
        return PD_ERR_FORMAT;
    }
    kv->type = (eng_gguf_type_t)type;
    kv->val = c->p + c->off;

    if (kv->type == ENG_GGUF_STRING) {
        const char *s;
        uint64_t len;
        return rd_str(c, &s, &len);
    }
    if (kv->type != ENG_GGUF_ARRAY) {
        st = need(c, scalar_size(kv->type));
        if (st != PD_OK)
            return st;
        if (kv->type == ENG_GGUF_BOOL && c->p[c->off] > 1) {
            PD_LOG_ERR("gguf: key '%s': bool value %u", kv->key, c->p[c->off]);
            return PD_ERR_FORMAT;
        }
        c->off += scalar_size(kv->type);
        return PD_OK;
    }

    /* array */
    uint32_t elem;
    uint64_t n;
    if ((st = rd_u32(c, &elem)) != PD_OK || (st = rd_u64(c, &n)) != PD_OK)
        return st;
    if (elem >= ENG_GGUF_TYPE_COUNT || elem == ENG_GGUF_ARRAY) {
        PD_LOG_ERR("gguf: key '%s': bad array element type %u%s", kv->key, elem,
                   elem == ENG_GGUF_ARRAY ? " (nested arrays are not supported)" : "");
        return PD_ERR_FORMAT;
    }
    kv->elem_type = (eng_gguf_type_t)elem;
    kv->n = n;
    kv->val = c->p + c->off;
    if (elem == ENG_GGUF_STRING) {
        /* each element takes at least its 8-byte length: bound n before allocating */
        if (n > (c->size - c->off) / 8) {
            PD_LOG_ERR("gguf: key '%s': string array of %llu elements cannot fit in the "
                       "%zu bytes left", kv->key, (unsigned long long)n, c->size - c->off);
            return PD_ERR_FORMAT;
        }
        kv->str_offs = malloc((size_t)(n ? n : 1) * sizeof(uint64_t));
        if (kv->str_offs == NULL)
            return PD_ERR_NOMEM;
        for (uint64_t i = 0; i < n; i++) {
            const char *s;
            uint64_t len;
            kv->str_offs[i] = c->off;
            if ((st = rd_str(c, &s, &len)) != PD_OK)
                return st;
        }
        return PD_OK;
    }
    size_t bytes;
    if (pd_mul_size((size_t)n, scalar_size(kv->elem_type), &bytes) != PD_OK || n > SIZE_MAX) {
        PD_LOG_ERR("gguf: key '%s': array of %llu elements overflows", kv->key,
                   (unsigned long long)n);
        return PD_ERR_FORMAT;
    }
    if (need(c, bytes) != PD_OK)
        return PD_ERR_FORMAT;
    if (kv->elem_type == ENG_GGUF_BOOL)
        for (size_t i = 0; i < bytes; i++)
            if (c->p[c->off + i] > 1) {
                PD_LOG_ERR("gguf: key '%s': bool element %zu is %u", kv->key, i,
                           c->p[c->off + i]);
                return PD_ERR_FORMAT;
            }
    c->off += bytes;
    return PD_OK;
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const eng_gguf_tensor_info_t *const *x = a, *const *y = b;
    if ((*x)->offset != (*y)->offset)
        return (*x)->offset < (*y)->offset ? -1 : 1;
    return 0;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    const eng_gguf_tensor_info_t *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static int cmp_kv_key(const void *a, const void *b)
{
    const gguf_kv_t *const *x = a, *const *y = b;
    return strcmp((*x)->key, (*y)->key);
}

static pd_status_t parse_tensors(eng_gguf_t *g, cursor_t *c)
{
    size_t names_len = 0, names_cap;
    pd_status_t st;

    /* names are < 96 bytes each: one block of n * 96 holds them all */
    if (pd_mul_size(g->n_tensors ? g->n_tensors : 1, 96, &names_cap) != PD_OK)
        return PD_ERR_FORMAT;
    g->names = malloc(names_cap);
    if (g->names == NULL)
        return PD_ERR_NOMEM;

    for (size_t i = 0; i < g->n_tensors; i++) {
        eng_gguf_tensor_info_t *t = &g->tensors[i];
        const char *name;
        uint64_t name_len;
        uint32_t n_dims, type;

        c->what = "tensor name";
        if ((st = rd_str(c, &name, &name_len)) != PD_OK)
            return st;
        if (name_len == 0 || name_len >= 96 || memchr(name, 0, (size_t)name_len) != NULL) {
            PD_LOG_ERR("gguf: tensor %zu: bad name (length %llu; at most 95 bytes)", i,
                       (unsigned long long)name_len);
            return PD_ERR_FORMAT;
        }
        memcpy(g->names + names_len, name, (size_t)name_len);
        g->names[names_len + name_len] = '\0';
        t->name = g->names + names_len;
        names_len += (size_t)name_len + 1;
        c->what = t->name;

        if ((st = rd_u32(c, &n_dims)) != PD_OK)
            return st;
        if (n_dims < 1 || n_dims > 4) {
            PD_LOG_ERR("gguf: tensor '%s': %u dimensions (1..4 supported)", t->name, n_dims);
            return PD_ERR_FORMAT;
        }
        t->n_dims = (int)n_dims;
        for (int d = 0; d < 4; d++)
            t->ne[d] = 1;
        for (uint32_t d = 0; d < n_dims; d++) {
            uint64_t ne;
            if ((st = rd_u64(c, &ne)) != PD_OK)
                return st;
            if (ne > (uint64_t)INT64_MAX) {
                PD_LOG_ERR("gguf: tensor '%s': dimension %u is %llu", t->name, d,
                           (unsigned long long)ne);
                return PD_ERR_FORMAT;
            }
            t->ne[d] = (int64_t)ne;
        }
        if ((st = rd_u32(c, &type)) != PD_OK)
            return st;
        if (!eng_dtype_valid((int)type)) {
            PD_LOG_ERR("gguf: tensor '%s': unknown type tag %u", t->name, type);
            return PD_ERR_FORMAT;
        }
        t->type = (eng_dtype_t)type;
        if ((st = rd_u64(c, &t->offset)) != PD_OK)
            return st;

        /* nbytes = row_bytes(ne0) * ne1 * ne2 * ne3, all checked */
        size_t bytes;
        if (t->ne[0] % eng_dtype_block_size(t->type) != 0) {
            PD_LOG_ERR("gguf: tensor '%s': row of %lld elements is not a multiple of the "
                       "%s block size %lld", t->name, (long long)t->ne[0],
                       eng_dtype_name(t->type), (long long)eng_dtype_block_size(t->type));
            return PD_ERR_FORMAT;
        }
        if (eng_dtype_row_bytes(t->type, t->ne[0], &bytes) != PD_OK)
            goto err_size;
        for (int d = 1; d < 4; d++)
            if ((uint64_t)t->ne[d] > SIZE_MAX || pd_mul_size(bytes, (size_t)t->ne[d], &bytes) != PD_OK)
                goto err_size;
        {
            /* the element count must fit int64 too (consumers multiply ne freely) */
            int64_t nel = 1;
            for (int d = 0; d < 4; d++)
                if (__builtin_mul_overflow(nel, t->ne[d], &nel))
                    goto err_size;
        }
        t->nbytes = bytes;
        continue;
err_size:
        PD_LOG_ERR("gguf: tensor '%s': size overflows", t->name);
        return PD_ERR_FORMAT;
    }

    /* the data section starts at the next multiple of the alignment */
    size_t data_off = c->off;
    size_t rem = data_off % g->alignment;
    if (rem != 0 && pd_add_size(data_off, g->alignment - rem, &data_off) != PD_OK)
        return PD_ERR_FORMAT;
    if (data_off > g->size) {
        if (g->n_tensors == 0) {
            data_off = g->size; /* a metadata-only file may omit the final padding */
        } else {
            PD_LOG_ERR("gguf: data section offset %zu is past the end of the file (%zu)",
                       data_off, g->size);
            return PD_ERR_FORMAT;
        }
    }
    g->data_offset = data_off;
    size_t data_size = g->size - data_off;

    eng_gguf_tensor_info_t **order = malloc((g->n_tensors ? g->n_tensors : 1) * sizeof(*order));
    if (order == NULL)
        return PD_ERR_NOMEM;
    for (size_t i = 0; i < g->n_tensors; i++) {
        eng_gguf_tensor_info_t *t = &g->tensors[i];
        if (t->offset % g->alignment != 0) {
            PD_LOG_ERR("gguf: tensor '%s': offset %llu is not a multiple of the alignment %zu",
                       t->name, (unsigned long long)t->offset, g->alignment);
            free(order);
            return PD_ERR_FORMAT;
        }
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            PD_LOG_ERR("gguf: tensor '%s': data [%llu, +%zu) runs past the end of the data "
                       "section (%zu bytes)", t->name, (unsigned long long)t->offset,
                       t->nbytes, data_size);
            free(order);
            return PD_ERR_FORMAT;
        }
        t->data = g->base + data_off + t->offset;
        order[i] = t;
    }
    qsort(order, g->n_tensors, sizeof(*order), cmp_tensor_name);
    for (size_t i = 1; i < g->n_tensors; i++)
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            PD_LOG_ERR("gguf: tensor '%s' appears twice", order[i]->name);
            free(order);
            return PD_ERR_FORMAT;
        }
    qsort(order, g->n_tensors, sizeof(*order), cmp_tensor_offset);
    for (size_t i = 1; i < g->n_tensors; i++)
        if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset) {
            PD_LOG_ERR("gguf: tensors '%s' and '%s' overlap", order[i - 1]->name,
                       order[i]->name);
            free(order);
            return PD_ERR_FORMAT;
        }
    free(order);
    return PD_OK;
}

static pd_status_t parse(eng_gguf_t *g)
{
    cursor_t c = {g->base, g->size, 0, "header"};
    uint32_t magic, version;
    uint64_t n_tensors, n_kv;
    pd_status_t st;

    if ((st = rd_u32(&c, &magic)) != PD_OK)
        return st;
    if (magic != GGUF_MAGIC) {
        PD_LOG_ERR("gguf: bad magic 0x%08x (not a GGUF file)", magic);
        return PD_ERR_FORMAT;
    }
    if ((st = rd_u32(&c, &version)) != PD_OK)
        return st;
    if (version != 2 && version != 3) {
        PD_LOG_ERR("gguf: version %u is not supported (2 and 3 are)", version);
        return PD_ERR_FORMAT;
    }
    g->version = version;
    if ((st = rd_u64(&c, &n_tensors)) != PD_OK || (st = rd_u64(&c, &n_kv)) != PD_OK)
        return st;
    /* bound the counts by the bytes left before allocating: a kv takes >= 8+1+4+1 bytes,
     * a tensor info >= 8+1+4+8+4+8 */
    if (n_kv > (g->size - c.off) / 14 || n_tensors > (g->size - c.off) / 33) {
        PD_LOG_ERR("gguf: %llu keys / %llu tensors cannot fit in a %zu-byte file",
                   (unsigned long long)n_kv, (unsigned long long)n_tensors, g->size);
        return PD_ERR_FORMAT;
    }
    g->n_kv = (size_t)n_kv;
    g->n_tensors = (size_t)n_tensors;
    g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof(*g->kv));
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(*g->tensors));
    if (g->kv == NULL || g->tensors == NULL)
        return PD_ERR_NOMEM;

    for (size_t i = 0; i < g->n_kv; i++) {
        if ((st = parse_kv(&c, &g->kv[i], i)) != PD_OK)
            return st;
    }
    {
        const gguf_kv_t **keys = malloc((g->n_kv ? g->n_kv : 1) * sizeof(*keys));
        if (keys == NULL)
            return PD_ERR_NOMEM;
        for (size_t i = 0; i < g->n_kv; i++)
            keys[i] = &g->kv[i];
        qsort(keys, g->n_kv, sizeof(*keys), cmp_kv_key);
        for (size_t i = 1; i < g->n_kv; i++)
            if (strcmp(keys[i - 1]->key, keys[i]->key) == 0) {
                PD_LOG_ERR("gguf: key '%s' appears twice", keys[i]->key);
                free(keys);
                return PD_ERR_FORMAT;
            }
        free(keys);
    }

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t ai = eng_gguf_find_key(g, "general.alignment");
    if (ai >= 0) {
        uint32_t a;
        if (eng_gguf_get_u32(g, "general.alignment", &a) != PD_OK || a == 0 ||
            (a & (a - 1)) != 0 || a > GGUF_MAX_ALIGNMENT) {
            PD_LOG_ERR("gguf: general.alignment must be a u32 power of two <= %u",
                       GGUF_MAX_ALIGNMENT);
            return PD_ERR_FORMAT;
        }
        g->alignment = a;
    }
    return parse_tensors(g, &c);
}

static pd_status_t open_common(eng_gguf_t *g, eng_gguf_t **gguf_p)
{
    pd_status_t st = parse(g);
    if (st != PD_OK) {
        eng_gguf_close(g);
        return st;
    }
    *gguf_p = g;
    return PD_OK;
}

pd_status_t eng_gguf_open_mem(const void *data, size_t size, eng_gguf_t **gguf_p)
{
    eng_gguf_t *g;

    if (data == NULL && size != 0)
        return PD_ERR_INVAL;
    g = calloc(1, sizeof(*g));
    if (g == NULL)
        return PD_ERR_NOMEM;
    g->base = data;
    g->size = size;
    g->path = strdup("");
    if (g->path == NULL) {
        free(g);
        return PD_ERR_NOMEM;
    }
    return open_common(g, gguf_p);
}

pd_status_t eng_gguf_open(const char *path, eng_gguf_t **gguf_p)
{
    struct stat sb;
    eng_gguf_t *g;
    void *map;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        PD_LOG_ERR("gguf: cannot open %s: %s", path, strerror(errno));
        return errno == ENOENT ? PD_ERR_NOT_FOUND : PD_ERR_IO;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        PD_LOG_ERR("gguf: %s is not a regular file", path);
        close(fd);
        return PD_ERR_IO;
    }
    if (sb.st_size < 24) {
        PD_LOG_ERR("gguf: %s: file too small (%lld bytes) for a GGUF header", path,
                   (long long)sb.st_size);
        close(fd);
        return PD_ERR_FORMAT;
    }
    map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        PD_LOG_ERR("gguf: cannot map %s: %s", path, strerror(errno));
        return PD_ERR_IO;
    }
    g = calloc(1, sizeof(*g));
    if (g == NULL) {
        munmap(map, (size_t)sb.st_size);
        return PD_ERR_NOMEM;
    }
    g->base = map;
    g->size = (size_t)sb.st_size;
    g->mapped = true;
    g->path = strdup(path);
    if (g->path == NULL) {
        eng_gguf_close(g);
        return PD_ERR_NOMEM;
    }
    pd_status_t st = open_common(g, gguf_p);
    if (st != PD_OK)
        PD_LOG_ERR("gguf: %s is not a valid GGUF file", path);
    return st;
}

void eng_gguf_close(eng_gguf_t *g)
{
    if (g == NULL)
        return;
    if (g->kv != NULL)
        for (size_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            free(g->kv[i].str_offs);
        }
    free(g->kv);
    free(g->tensors);
    free(g->names);
    free(g->path);
    if (g->mapped)
        munmap((void *)g->base, g->size);
    free(g);
}

uint32_t eng_gguf_version(const eng_gguf_t *g) { return g->version; }
size_t eng_gguf_alignment(const eng_gguf_t *g) { return g->alignment; }
const char *eng_gguf_path(const eng_gguf_t *g) { return g->path; }
size_t eng_gguf_n_kv(const eng_gguf_t *g) { return g->n_kv; }
size_t eng_gguf_n_tensors(const eng_gguf_t *g) { return g->n_tensors; }

const char *eng_gguf_kv_key(const eng_gguf_t *g, size_t i, eng_gguf_type_t *type_p)
{
    if (i >= g->n_kv)
        return NULL;
    if (type_p != NULL)
        *type_p = g->kv[i].type;
    return g->kv[i].key;
}

int64_t eng_gguf_find_key(const eng_gguf_t *g, const char *key)
{
    for (size_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key != NULL && strcmp(g->kv[i].key, key) == 0)
            return (int64_t)i;
    return -1;
}

static const gguf_kv_t *find(const eng_gguf_t *g, const char *key)
{
    int64_t i = eng_gguf_find_key(g, key);
    return i < 0 ? NULL : &g->kv[i];
}

pd_status_t eng_gguf_kv_type(const eng_gguf_t *g, const char *key, eng_gguf_type_t *type_p)
{
    const gguf_kv_t *kv = find(g, key);
    if (kv == NULL)
        return PD_ERR_NOT_FOUND;
    *type_p = kv->type;
    return PD_OK;
}

/* ---- value decoding ---- */

static bool is_int_type(eng_gguf_type_t t)
{
    return t == ENG_GGUF_UINT8 || t == ENG_GGUF_INT8 || t == ENG_GGUF_UINT16 ||
           t == ENG_GGUF_INT16 || t == ENG_GGUF_UINT32 || t == ENG_GGUF_INT32 ||
           t == ENG_GGUF_UINT64 || t == ENG_GGUF_INT64 || t == ENG_GGUF_BOOL;
}

/* Decode an integer of type t at p.  PD_ERR_RANGE for u64 values above INT64_MAX. */
static pd_status_t dec_int(eng_gguf_type_t t, const uint8_t *p, int64_t *v)
{
    switch (t) {
    case ENG_GGUF_UINT8:
    case ENG_GGUF_BOOL:
        *v = p[0];
        return PD_OK;
    case ENG_GGUF_INT8:
        *v = (int8_t)p[0];
        return PD_OK;
    case ENG_GGUF_UINT16: {
        uint16_t x;
        memcpy(&x, p, 2);
        *v = x;
        return PD_OK;
    }
    case ENG_GGUF_INT16: {
        int16_t x;
        memcpy(&x, p, 2);
        *v = x;
        return PD_OK;
    }
    case ENG_GGUF_UINT32: {
        uint32_t x;
        memcpy(&x, p, 4);
        *v = x;
        return PD_OK;
    }
    case ENG_GGUF_INT32: {
        int32_t x;
        memcpy(&x, p, 4);
        *v = x;
        return PD_OK;
    }
    case ENG_GGUF_UINT64: {
        uint64_t x;
        memcpy(&x, p, 8);
        if (x > (uint64_t)INT64_MAX)
            return PD_ERR_RANGE;
        *v = (int64_t)x;
        return PD_OK;
    }
    case ENG_GGUF_INT64:
        memcpy(v, p, 8);
        return PD_OK;
    default:
        return PD_ERR_MISMATCH;
    }
}

static pd_status_t dec_f64(eng_gguf_type_t t, const uint8_t *p, double *v)
{
    if (t == ENG_GGUF_FLOAT32) {
        float f;
        memcpy(&f, p, 4);
        *v = f;
        return PD_OK;
    }
    if (t == ENG_GGUF_FLOAT64) {
        memcpy(v, p, 8);
        return PD_OK;
    }
    if (is_int_type(t)) {
        int64_t i;
        pd_status_t st = dec_int(t, p, &i);
        if (st == PD_OK)
            *v = (double)i;
        return st;
    }
    return PD_ERR_MISMATCH;
}

pd_status_t eng_gguf_get_str(const eng_gguf_t *g, const char *key, const char **str_p,
                             size_t *len_p)
{
    const gguf_kv_t *kv = find(g, key);
    uint64_t len;

    if (kv == NULL)
        return PD_ERR_NOT_FOUND;
    if (kv->type != ENG_GGUF_STRING)
        return PD_ERR_MISMATCH;
    memcpy(&len, kv->val, 8);
    *str_p = (const char *)kv->val + 8;
    if (len_p != NULL)
        *len_p = (size_t)len;
    return PD_OK;
}

pd_status_t eng_gguf_get_str_dup(const eng_gguf_t *g, const char *key, char **str_p)
{
    const char *s;
    size_t len;
    char *copy;
    pd_status_t st = eng_gguf_get_str(g, key, &s, &len);

    if (st != PD_OK)
        return st;
    copy = malloc(len + 1);
    if (copy == NULL)
        return PD_ERR_NOMEM;
    memcpy(copy, s, len);
    copy[len] = '\0';
    *str_p = copy;
    return PD_OK;
}

pd_status_t eng_gguf_get_i64(const eng_gguf_t *g, const char *key, int64_t *val_p)
{
    const gguf_kv_t *kv = find(g, key);
    int64_t v;
    pd_status_t st;

    if (kv == NULL)
        return PD_ERR_NOT_FOUND;
    if (!is_int_type(kv->type))
        return PD_ERR_MISMATCH;
    st = dec_int(kv->type, kv->val, &v);
    if (st == PD_OK)
        *val_p = v;
    return st;
}

pd_status_t eng_gguf_get_u32(const eng_gguf_t *g, const char *key, uint32_t *val_p)
{
    int64_t v;
    pd_status_t st = eng_gguf_get_i64(g, key, &v);

    if (st != PD_OK)
        return st;
    if (v < 0 || v > (int64_t)UINT32_MAX)
        return PD_ERR_RANGE;
    *val_p = (uint32_t)v;
    return PD_OK;
}

pd_status_t eng_gguf_get_f64(const eng_gguf_t *g, const char *key, double *val_p)
{
    const gguf_kv_t *kv = find(g, key);
    if (kv == NULL)
        return PD_ERR_NOT_FOUND;
    if (kv->type == ENG_GGUF_BOOL)
        return PD_ERR_MISMATCH;
    return dec_f64(kv->type, kv->val, val_p);
}

pd_status_t eng_gguf_get_f32(const eng_gguf_t *g, const char *key, float *val_p)
{
    double v;
    pd_status_t st = eng_gguf_get_f64(g, key, &v);
    if (st == PD_OK)
        *val_p = (float)v;
    return st;
}

pd_status_t eng_gguf_get_bool(const eng_gguf_t *g, const char *key, bool *val_p)
{
    int64_t v;
    pd_status_t st = eng_gguf_get_i64(g, key, &v);
    if (st == PD_OK)
        *val_p = v != 0;
    return st;
}

pd_status_t eng_gguf_get_arr_info(const eng_gguf_t *g, const char *key,
                                  eng_gguf_type_t *elem_type_p, size_t *n_p)
{
    const gguf_kv_t *kv = find(g, key);
    if (kv == NULL)
        return PD_ERR_NOT_FOUND;
    if (kv->type != ENG_GGUF_ARRAY)
        return PD_ERR_MISMATCH;
    if (elem_type_p != NULL)
        *elem_type_p = kv->elem_type;
    if (n_p != NULL)
        *n_p = (size_t)kv->n;
    return PD_OK;
}

pd_status_t eng_gguf_get_arr_str(const eng_gguf_t *g, const char *key, size_t i,
                                 const char **str_p, size_t *len_p)
{
    const gguf_kv_t *kv = find(g, key);
    uint64_t len;

    if (kv == NULL)
        return PD_ERR_NOT_FOUND;
    if (kv->type != ENG_GGUF_ARRAY || kv->elem_type != ENG_GGUF_STRING)
        return PD_ERR_MISMATCH;
    if (i >= kv->n)
        return PD_ERR_RANGE;
    memcpy(&len, g->base + kv->str_offs[i], 8);
    *str_p = (const char *)g->base + kv->str_offs[i] + 8;
    if (len_p != NULL)
        *len_p = (size_t)len;
    return PD_OK;
}

pd_status_t eng_gguf_get_arr_i64(const eng_gguf_t *g, const char *key, int64_t *dst,
                                 size_t n_dst)
{
    const gguf_kv_t *kv = find(g, key);
    size_t es;

    if (kv == NULL)
        return PD_ERR_NOT_FOUND;
    if (kv->type != ENG_GGUF_ARRAY || !is_int_type(kv->elem_type))
        return PD_ERR_MISMATCH;
    if (kv->n > n_dst)
        return PD_ERR_LIMIT;
    es = scalar_size(kv->elem_type);
    for (size_t i = 0; i < kv->n; i++) {
        pd_status_t st = dec_int(kv->elem_type, kv->val + i * es, &dst[i]);
        if (st != PD_OK)
            return st;
    }
    return PD_OK;
}

pd_status_t eng_gguf_get_arr_i32(const eng_gguf_t *g, const char *key, int32_t *dst,
                                 size_t n_dst)
{
    const gguf_kv_t *kv = find(g, key);
    size_t es;

    if (kv == NULL)
        return PD_ERR_NOT_FOUND;
    if (kv->type != ENG_GGUF_ARRAY || !is_int_type(kv->elem_type))
        return PD_ERR_MISMATCH;
    if (kv->n > n_dst)
        return PD_ERR_LIMIT;
    es = scalar_size(kv->elem_type);
    for (size_t i = 0; i < kv->n; i++) {
        int64_t v;
        pd_status_t st = dec_int(kv->elem_type, kv->val + i * es, &v);
        if (st != PD_OK)
            return st;
        if (v < INT32_MIN || v > INT32_MAX)
            return PD_ERR_RANGE;
        dst[i] = (int32_t)v;
    }
    return PD_OK;
}

pd_status_t eng_gguf_get_arr_f32(const eng_gguf_t *g, const char *key, float *dst,
                                 size_t n_dst)
{
    const gguf_kv_t *kv = find(g, key);
    size_t es;

    if (kv == NULL)
        return PD_ERR_NOT_FOUND;
    if (kv->type != ENG_GGUF_ARRAY || kv->elem_type == ENG_GGUF_STRING ||
        kv->elem_type == ENG_GGUF_BOOL)
        return PD_ERR_MISMATCH;
    if (kv->n > n_dst)
        return PD_ERR_LIMIT;
    es = scalar_size(kv->elem_type);
    for (size_t i = 0; i < kv->n; i++) {
        double v;
        pd_status_t st = dec_f64(kv->elem_type, kv->val + i * es, &v);
        if (st != PD_OK)
            return st;
        dst[i] = (float)v;
    }
    return PD_OK;
}

const eng_gguf_tensor_info_t *eng_gguf_tensor(const eng_gguf_t *g, size_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const eng_gguf_tensor_info_t *eng_gguf_find_tensor(const eng_gguf_t *g, const char *name)
{
    for (size_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0)
            return &g->tensors[i];
    return NULL;
}

const char *eng_gguf_type_name(eng_gguf_type_t t)
{
    return type_name(t);
}
