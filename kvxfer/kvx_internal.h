/*
 * kvx_internal.h - declarations shared by kvxfer's own files (not installed).
 */
#ifndef KVX_INTERNAL_H
#define KVX_INTERNAL_H

#include "kvx.h"

/* Built-in connectors; each is defined only when compiled in (see CMakeLists.txt). */
extern const kvx_conn_ops_t kvx_ucx_ops;        /* KVX_HAVE_UCX */
extern const kvx_conn_ops_t kvx_fabric_ops;     /* KVX_HAVE_LIBFABRIC */
extern const kvx_conn_ops_t kvx_nccl_ops;       /* KVX_HAVE_NCCL */
extern const kvx_conn_ops_t kvx_storage_ops;    /* always */

/* Keep memory that a stuck transport may still write (a read that could not be
 * cancelled) reachable for the life of the process instead of freeing it. */
void kvx_graveyard_add(void *p);

/* Hex-encode s into out (2*strlen+1 bytes): file names built from wire strings. */
void kvx_hex_encode(const char *s, char *out, size_t out_len);

/* Checked address of block idx in a region: NULL when idx is out of range. */
static inline void *kvx_region_block(const kvx_region_t *r, uint64_t idx)
{
    if (idx >= r->n_blocks)
        return NULL;
    return (char *)r->base + (size_t)idx * r->block_bytes; /* extent checked at register */
}

#endif /* KVX_INTERNAL_H */
