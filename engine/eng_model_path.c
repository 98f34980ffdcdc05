#define _GNU_SOURCE /* asprintf */
/*
 * eng_model_path.c - resolving --model / --tokenizer to a local path.
 *
 * A path that exists is used as is.  Otherwise the name is taken as a Hugging Face
 * model id ("org/name" or "name") and looked up in the hub cache layout, offline:
 *   <cache>/models--org--name/refs/<revision>  -> commit hash
 *   <cache>/models--org--name/snapshots/<commit or revision>/
 * Caches searched in order: --download-dir, $HF_HUB_CACHE, $HF_HOME/hub,
 * $XDG_CACHE_HOME/huggingface/hub, $HOME/.cache/huggingface/hub.  There is no network
 * access; a miss is PD_ERR_NOT_FOUND with every place looked named in the log.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "eng_model_int.h"
#include "pd_log.h"
#include "pd_util.h"

static bool is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* A model id: one or two non-empty components of safe characters. */
static bool valid_id(const char *id)
{
    int slashes = 0;
    if (id[0] == '\0' || id[0] == '/' || id[0] == '.' || strstr(id, "..") != NULL ||
        strstr(id, "--") != NULL)
        return false;
    for (const char *p = id; *p; p++) {
        if (*p == '/') {
            if (++slashes > 1 || p[1] == '\0')
                return false;
        } else if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                     (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.')) {
            return false;
        }
    }
    return true;
}

static bool valid_revision(const char *rev)
{
    if (rev[0] == '\0' || rev[0] == '/' || strstr(rev, "..") != NULL)
        return false;
    for (const char *p = rev; *p; p++)
        if (*p < 0x21 || *p > 0x7e)
            return false;
    return true;
}

/* Look in one cache; appends what it tried to `tried`.  Returns a malloc'd path or NULL. */
static char *try_cache(const char *cache, const char *id, const char *rev, pd_buf_t *tried)
{
    pd_buf_t repo, p;
    char *result = NULL;

    pd_buf_init(&repo);
    pd_buf_init(&p);
    if (pd_buf_printf(&repo, "%s/models--", cache) != PD_OK)
        goto out;
    for (const char *c = id; *c; c++)
        if (*c == '/' ? pd_buf_puts(&repo, "--") != PD_OK : pd_buf_append(&repo, c, 1) != PD_OK)
            goto out;
    if (!is_dir(repo.data)) {
        pd_buf_printf(tried, "\n  %s (no such directory)", repo.data);
        goto out;
    }
    /* refs/<rev> holds the commit hash of a branch or tag */
    if (pd_buf_printf(&p, "%s/refs/%s", repo.data, rev) != PD_OK)
        goto out;
    char *hash = NULL;
    size_t len = 0;
    if (exists(p.data) && pd_read_file(p.data, &hash, &len) == PD_OK) {
        while (len > 0 && (hash[len - 1] == '\n' || hash[len - 1] == '\r' || hash[len - 1] == ' '))
            hash[--len] = '\0';
        pd_buf_reset(&p);
        if (len > 0 && valid_revision(hash) && strchr(hash, '/') == NULL &&
            pd_buf_printf(&p, "%s/snapshots/%s", repo.data, hash) == PD_OK && is_dir(p.data)) {
            free(hash);
            result = pd_buf_steal(&p);
            goto out;
        }
        pd_buf_printf(tried, "\n  %s/refs/%s -> %s (snapshot missing)", repo.data, rev,
                      hash ? hash : "?");
        free(hash);
    } else {
        pd_buf_printf(tried, "\n  %s/refs/%s (no such ref)", repo.data, rev);
    }
    pd_buf_reset(&p);
    if (pd_buf_printf(&p, "%s/snapshots/%s", repo.data, rev) == PD_OK) {
        if (is_dir(p.data)) {
            result = pd_buf_steal(&p);
            goto out;
        }
        pd_buf_printf(tried, "\n  %s (no such snapshot)", p.data);
    }
out:
    pd_buf_cleanup(&repo);
    pd_buf_cleanup(&p);
    return result;
}

pd_status_t eng_model_resolve_path(const char *model, const char *revision,
                                   const char *download_dir, char **path_p)
{
    const char *caches[5];
    char *owned[3] = {NULL, NULL, NULL};
    size_t n = 0;
    pd_buf_t tried;
    const char *rev = revision && revision[0] ? revision : "main";
    const char *env;
    char *found = NULL;

    if (model == NULL || model[0] == '\0') {
        PD_LOG_ERR("no model given");
        return PD_ERR_INVAL;
    }
    if (exists(model)) {
        found = strdup(model);
        if (found == NULL)
            return PD_ERR_NOMEM;
        *path_p = found;
        return PD_OK;
    }
    pd_buf_init(&tried);
    pd_buf_printf(&tried, "\n  %s (no such file or directory)", model);
    if (!valid_id(model) || !valid_revision(rev)) {
        PD_LOG_ERR("model '%s' not found; looked at:%s (and it is not a model id to look "
                   "up in the Hugging Face cache)", model, tried.data);
        pd_buf_cleanup(&tried);
        return PD_ERR_NOT_FOUND;
    }
    if (download_dir != NULL && download_dir[0] != '\0')
        caches[n++] = download_dir;
    if ((env = getenv("HF_HUB_CACHE")) != NULL && env[0] != '\0')
        caches[n++] = env;
    if ((env = getenv("HF_HOME")) != NULL && env[0] != '\0') {
        if (asprintf(&owned[0], "%s/hub", env) > 0)
            caches[n++] = owned[0];
    }
    if ((env = getenv("XDG_CACHE_HOME")) != NULL && env[0] != '\0') {
        if (asprintf(&owned[1], "%s/huggingface/hub", env) > 0)
            caches[n++] = owned[1];
    }
    if ((env = getenv("HOME")) != NULL && env[0] != '\0') {
        if (asprintf(&owned[2], "%s/.cache/huggingface/hub", env) > 0)
            caches[n++] = owned[2];
    }
    for (size_t i = 0; i < n && found == NULL; i++) {
        bool dup = false;
        for (size_t j = 0; j < i; j++)
            dup |= strcmp(caches[i], caches[j]) == 0;
        if (!dup)
            found = try_cache(caches[i], model, rev, &tried);
    }
    for (size_t i = 0; i < 3; i++)
        free(owned[i]);
    if (found == NULL) {
        PD_LOG_ERR("model '%s' (revision %s) not found locally (no network access is "
                   "attempted); looked at:%s", model, rev, tried.data);
        pd_buf_cleanup(&tried);
        return PD_ERR_NOT_FOUND;
    }
    pd_buf_cleanup(&tried);
    PD_LOG_INFO("model '%s' resolved to %s", model, found);
    *path_p = found;
    return PD_OK;
}
