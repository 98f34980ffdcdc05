/*
 * kvx_storage.c - SharedStorageConnector: blocks travel through files.
 *
 * The producer writes a leased request's blocks, when the lease starts, to
 *   <shared_storage_path>/<hex(engine_id)>/<hex(req_id)>/<block id>.kv
 * (written to a temporary name, then renamed, so a reader never sees half a block)
 * and removes the directory when the lease ends.  The consumer reads the files of
 * the remote block ids into its local blocks on the connector's own thread.  File
 * names are built from hex-encoded ids only, so wire strings cannot walk the tree.
 * Host memory only.  Meant for tests and debugging, like vLLM's.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvx_internal.h"
#include "pd_log.h"
#include "pd_util.h"

#define HEXID_MAX (2 * KVX_ID_MAX + 1)

typedef struct st_peer {
    char engine_hex[HEXID_MAX];
    atomic_int inflight;
    atomic_int canceled;
} st_peer_t;

typedef struct st_batch {
    struct st_batch *next;
    st_peer_t *peer;
    char req_hex[HEXID_MAX];
    size_t n;
    uint32_t *local_ids;
    uint32_t *remote_ids;
    kvx_read_cb_t cb;
    void *arg;
} st_batch_t;

typedef struct st_state {
    char *path;
    char engine_hex[HEXID_MAX];
    kvx_region_t region;
    int have_region;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    st_batch_t *head, *tail;
    int stop;
} st_state_t;

static int mkdir_p(const char *path)
{
    char tmp[4096];
    size_t n = strlen(path);

    if (n >= sizeof(tmp))
        return -1;
    memcpy(tmp, path, n + 1);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(tmp, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

static pd_status_t read_block(const char *file, void *dst, size_t bytes)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    size_t got = 0;
    pd_status_t st = PD_OK;

    if (fd < 0) {
        PD_LOG_ERR("kvx storage: open %s: %s", file, strerror(errno));
        return errno == ENOENT ? PD_ERR_NOT_FOUND : PD_ERR_IO;
    }
    if (fstat(fd, &sb) != 0 || (size_t)sb.st_size != bytes) {
        PD_LOG_ERR("kvx storage: %s is not one block of %zu bytes", file, bytes);
        st = PD_ERR_FORMAT;
        goto out_close;
    }
    while (got < bytes) {
        ssize_t r = read(fd, (char *)dst + got, bytes - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            PD_LOG_ERR("kvx storage: read %s: %s", file, r < 0 ? strerror(errno) : "short file");
            st = PD_ERR_IO;
            goto out_close;
        }
        got += (size_t)r;
    }
out_close:
    close(fd);
    return st;
}

static pd_status_t write_block(const char *file, const void *src, size_t bytes)
{
    char tmp[4200];
    int fd;
    size_t put = 0;

    snprintf(tmp, sizeof(tmp), "%s.tmp", file);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        PD_LOG_ERR("kvx storage: create %s: %s", tmp, strerror(errno));
        return PD_ERR_IO;
    }
    while (put < bytes) {
        ssize_t w = write(fd, (const char *)src + put, bytes - put);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            PD_LOG_ERR("kvx storage: write %s: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            return PD_ERR_IO;
        }
        put += (size_t)w;
    }
    if (close(fd) != 0 || rename(tmp, file) != 0) {
        PD_LOG_ERR("kvx storage: finish %s: %s", file, strerror(errno));
        unlink(tmp);
        return PD_ERR_IO;
    }
    return PD_OK;
}

static void run_batch(st_state_t *s, st_batch_t *b)
{
    pd_status_t st = PD_OK;
    char file[4096];

    for (size_t i = 0; i < b->n && st == PD_OK; i++) {
        if (atomic_load(&b->peer->canceled)) {
            st = PD_ERR_CANCELED;
            break;
        }
        snprintf(file, sizeof(file), "%s/%s/%s/%u.kv", s->path, b->peer->engine_hex, b->req_hex,
                 b->remote_ids[i]);
        st = read_block(file, kvx_region_block(&s->region, b->local_ids[i]), s->region.block_bytes);
    }
    b->cb(b->arg, st);
    atomic_fetch_sub(&b->peer->inflight, 1);
    free(b->local_ids);
    free(b->remote_ids);
    free(b);
}

static void *st_main(void *arg)
{
    st_state_t *s = arg;

    pthread_mutex_lock(&s->mu);
    for (;;) {
        st_batch_t *b;
        while (s->head == NULL && !s->stop)
            pthread_cond_wait(&s->cv, &s->mu);
        if (s->head == NULL)
            break;
        b = s->head;
        s->head = b->next;
        if (s->head == NULL)
            s->tail = NULL;
        pthread_mutex_unlock(&s->mu);
        run_batch(s, b);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static pd_status_t st_create(const kvx_config_t *cfg, void **state_p)
{
    st_state_t *s;

    if (cfg->shared_storage_path == NULL) {
        PD_LOG_ERR("kvx storage: kv_connector_extra_config.shared_storage_path is not set");
        return PD_ERR_INVAL;
    }
    if (mkdir_p(cfg->shared_storage_path) != 0) {
        PD_LOG_ERR("kvx storage: cannot create %s: %s", cfg->shared_storage_path, strerror(errno));
        return PD_ERR_IO;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL || (s->path = strdup(cfg->shared_storage_path)) == NULL) {
        free(s);
        return PD_ERR_NOMEM;
    }
    kvx_hex_encode(cfg->engine_id, s->engine_hex, sizeof(s->engine_hex));
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->thread, NULL, st_main, s) != 0) {
        free(s->path);
        free(s);
        return PD_ERR_INTERNAL;
    }
    *state_p = s;
    return PD_OK;
}

static void st_destroy(void *state)
{
    st_state_t *s = state;

    pthread_mutex_lock(&s->mu);
    s->stop = 1; /* the thread drains what is queued first: every callback fires */
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->path);
    free(s);
}

static pd_status_t st_reg(void *state, const kvx_region_t *region, void *desc, size_t desc_cap,
                          size_t *desc_len_p)
{
    st_state_t *s = state;

    if (region->mem_type != KVX_MEM_HOST) {
        PD_LOG_ERR("kvx storage: only host memory is supported");
        return PD_ERR_UNSUPPORTED;
    }
    s->region = *region;
    s->have_region = 1;
    if (desc_cap < 7)
        return PD_ERR_LIMIT;
    memcpy(desc, "storage", 7);
    *desc_len_p = 7;
    return PD_OK;
}

static pd_status_t st_peer_connect(void *state, const kvx_peer_info_t *info, void **peer_p)
{
    st_peer_t *p = calloc(1, sizeof(*p));

    (void)state;
    if (p == NULL)
        return PD_ERR_NOMEM;
    kvx_hex_encode(info->engine_id, p->engine_hex, sizeof(p->engine_hex));
    *peer_p = p;
    return PD_OK;
}

static void st_peer_close(void *state, void *peer)
{
    st_peer_t *p = peer;
    uint64_t give_up = pd_now_ns() + 10000000000ull;

    (void)state;
    atomic_store(&p->canceled, 1);
    while (atomic_load(&p->inflight) > 0 && pd_now_ns() < give_up)
        usleep(1000);
    if (atomic_load(&p->inflight) > 0) {
        PD_LOG_CRIT("kvx storage: reads still running at peer close; leaking the peer");
        kvx_graveyard_add(p);
        return;
    }
    free(p);
}

static pd_status_t st_read(void *state, void *peer, const kvx_read_t *rd, kvx_read_cb_t cb, void *arg)
{
    st_state_t *s = state;
    st_peer_t *p = peer;
    st_batch_t *b;

    if (!s->have_region)
        return PD_ERR_INVAL;
    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return PD_ERR_NOMEM;
    b->n = rd->n;
    b->local_ids = malloc(rd->n * sizeof(uint32_t) + 1);
    b->remote_ids = malloc(rd->n * sizeof(uint32_t) + 1);
    if (b->local_ids == NULL || b->remote_ids == NULL) {
        free(b->local_ids);
        free(b->remote_ids);
        free(b);
        return PD_ERR_NOMEM;
    }
    memcpy(b->local_ids, rd->local_ids, rd->n * sizeof(uint32_t));
    memcpy(b->remote_ids, rd->remote_ids, rd->n * sizeof(uint32_t));
    kvx_hex_encode(rd->remote_req_id, b->req_hex, sizeof(b->req_hex));
    b->peer = p;
    b->cb = cb;
    b->arg = arg;
    atomic_fetch_add(&p->inflight, 1);
    pthread_mutex_lock(&s->mu);
    if (s->tail)
        s->tail->next = b;
    else
        s->head = b;
    s->tail = b;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return PD_OK;
}

static void req_dir(st_state_t *s, const char *req_id, char *out, size_t len)
{
    char req_hex[HEXID_MAX];

    kvx_hex_encode(req_id, req_hex, sizeof(req_hex));
    snprintf(out, len, "%s/%s/%s", s->path, s->engine_hex, req_hex);
}

static void st_unexport(void *state, const char *req_id)
{
    st_state_t *s = state;
    char dir[4096], file[4400];
    DIR *d;
    struct dirent *e;

    req_dir(s, req_id, dir, sizeof(dir));
    d = opendir(dir);
    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(file, sizeof(file), "%s/%s", dir, e->d_name);
        unlink(file);
    }
    closedir(d);
    rmdir(dir);
}

static pd_status_t st_export(void *state, const char *req_id, const uint32_t *ids, size_t n)
{
    st_state_t *s = state;
    char dir[4096], file[4400];
    pd_status_t st = PD_OK;

    if (!s->have_region)
        return PD_ERR_INVAL;
    req_dir(s, req_id, dir, sizeof(dir));
    if (mkdir_p(dir) != 0) {
        PD_LOG_ERR("kvx storage: cannot create %s: %s", dir, strerror(errno));
        return PD_ERR_IO;
    }
    for (size_t i = 0; i < n && st == PD_OK; i++) {
        snprintf(file, sizeof(file), "%s/%u.kv", dir, ids[i]);
        st = write_block(file, kvx_region_block(&s->region, ids[i]), s->region.block_bytes);
    }
    if (st != PD_OK)
        st_unexport(s, req_id);
    return st;
}

const kvx_conn_ops_t kvx_storage_ops = {
    .abi_version = KVX_CONN_ABI_VERSION,
    .name = "SharedStorageConnector",
    .create = st_create,
    .destroy = st_destroy,
    .reg = st_reg,
    .peer_connect = st_peer_connect,
    .peer_close = st_peer_close,
    .read = st_read,
    .lease_export = st_export,
    .lease_unexport = st_unexport,
};
