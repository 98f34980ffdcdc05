/*
 * kv_swap_check.h - one check of a backend's swap ops (host_alloc, kv_swap) shared by
 * test_engine.c (the "cpu" backend) and test_cuda_swap.c ("cuda"): a cache filled with
 * a known pattern goes to host swap blocks and back into other cache blocks, adjacent
 * pairs (merged copies) and lone ones, and every byte is compared; out-of-range ids are
 * refused before anything is copied.
 */
#ifndef KV_SWAP_CHECK_H
#define KV_SWAP_CHECK_H

#include <stdlib.h>
#include <string.h>

#include "eng_backend.h"
#include "pd_test.h"

static inline float kv_swap_pattern(int64_t block, size_t i) { return (float)(block * 100003 + (int64_t)i % 9973) * 0.5f; }

static void kv_swap_check(const eng_backend_ops_t *ops, eng_backend_t *be)
{
    kcpu_kv_layout_t L;
    const int64_t NB = 32, NH = 16;
    void *cache = NULL, *host = NULL;
    float *pat = NULL, *back = NULL;
    PD_CHECK_STATUS(kcpu_kv_layout_init(&L, KCPU_DTYPE_F32, 2, 16, 2, 64, NB), PD_OK);
    const size_t bb = L.block_bytes, per = bb / sizeof(float);
    PD_CHECK(ops->host_alloc != NULL && ops->kv_swap != NULL);
    if (ops->host_alloc == NULL || ops->kv_swap == NULL)
        return;
    PD_CHECK_STATUS(ops->buf_alloc(be, (size_t)NB * bb, &cache), PD_OK);
    PD_CHECK_STATUS(ops->host_alloc(be, (size_t)NH * bb, &host), PD_OK);
    pat = malloc((size_t)NB * bb);
    back = malloc((size_t)NB * bb);
    PD_CHECK(pat && back && cache && host);
    if (!pat || !back || !cache || !host)
        goto cleanup;
    for (int64_t b = 0; b < NB; b++)
        for (size_t i = 0; i < per; i++)
            pat[(size_t)b * per + i] = kv_swap_pattern(b, i);
    PD_CHECK_STATUS(ops->memcpy_h2d(be, cache, pat, (size_t)NB * bb), PD_OK);
    memset(host, 0, (size_t)NH * bb);

    /* out: cache 3,4,5 -> host 0,1,2 (one run), 10 -> 7, 0 -> 15, 31 -> 8 */
    const int32_t out_src[] = {3, 4, 5, 10, 0, 31}, out_dst[] = {0, 1, 2, 7, 15, 8};
    PD_CHECK_STATUS(ops->kv_swap(be, &L, cache, host, NH, out_src, out_dst, 6, true), PD_OK);
    for (int j = 0; j < 6; j++)
        PD_CHECK(memcmp((char *)host + (size_t)out_dst[j] * bb, pat + (size_t)out_src[j] * per, bb) == 0);
    /* clear the cache, then in: host 0,1,2 -> cache 20,21,22, 7 -> 1, 15 -> 31, 8 -> 0 */
    PD_CHECK_STATUS(ops->memset(be, cache, 0, (size_t)NB * bb), PD_OK);
    const int32_t in_src[] = {0, 1, 2, 7, 15, 8}, in_dst[] = {20, 21, 22, 1, 31, 0};
    PD_CHECK_STATUS(ops->kv_swap(be, &L, cache, host, NH, in_src, in_dst, 6, false), PD_OK);
    PD_CHECK_STATUS(ops->memcpy_d2h(be, back, cache, (size_t)NB * bb), PD_OK);
    int bad = 0;
    for (int64_t b = 0; b < NB; b++) {
        int64_t from = -1; /* which original block should be here now (-1: zeros) */
        for (int j = 0; j < 6; j++)
            if (in_dst[j] == b)
                from = out_src[j];
        for (size_t i = 0; i < per; i++)
            bad += back[(size_t)b * per + i] != (from < 0 ? 0.0f : kv_swap_pattern(from, i));
    }
    PD_CHECK_EQ_INT(bad, 0);
    /* ids out of range: refused, nothing copied */
    const int32_t bad_src[] = {1, (int32_t)NB}, bad_dst[] = {2, 3};
    memset(host, 0x5a, bb * 4);
    PD_CHECK_STATUS(ops->kv_swap(be, &L, cache, host, NH, bad_src, bad_dst, 2, true), PD_ERR_RANGE);
    PD_CHECK(((unsigned char *)host)[2 * bb] == 0x5a);
    const int32_t bad_h[] = {(int32_t)NH};
    PD_CHECK_STATUS(ops->kv_swap(be, &L, cache, host, NH, bad_h, bad_dst, 1, false), PD_ERR_RANGE);
    PD_CHECK_STATUS(ops->kv_swap(be, &L, cache, host, NH, NULL, NULL, 0, true), PD_OK);
cleanup:
    free(pat);
    free(back);
    if (host)
        ops->host_free(be, host);
    ops->buf_free(be, cache);
}

#endif /* KV_SWAP_CHECK_H */
