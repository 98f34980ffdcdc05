/*
 * eng_block.h - paged KV block manager with prefix caching, fork/copy-on-write,
 * swap space and externally filled (remote KV) blocks.
 *
 * Blocks are reference counted.  A full block whose KV has been computed is
 * registered in the prefix cache under a 64-bit key chained over the parent
 * block's key, the block's token ids, the cache salt and the adapter id
 * (SipHash-1-3 with a fixed key, so prefill and decode nodes agree on keys).
 * Collision safety: a hash match alone never serves KV.  Each cached block stores
 * its token ids, salt, adapter id and the identity (block id + generation) of
 * its parent block; a lookup walks the chain from the first block and accepts a
 * block only when all of those compare equal, so a hit is exact by construction.
 *
 * Free blocks live on two lists: never-cached blocks (handed out first) and cached
 * blocks in LRU order (the least recently freed is evicted - its key dropped - when
 * a block is needed and no uncached one is left).  A cached block with ref 0 that a
 * new request hits is taken off the LRU list.  Every operation is O(1) or
 * O(blocks touched); no allocation happens after create except block tables
 * growing (amortised).
 */
#ifndef ENG_BLOCK_H
#define ENG_BLOCK_H

#include <stdbool.h>
#include <stdint.h>

#include "eng_request.h"
#include "pd_status.h"

typedef struct eng_block_mgr eng_block_mgr_t;

typedef struct eng_block_cfg {
    int n_blocks;               /* device blocks (>= 1) */
    int block_size;             /* tokens per block, 1..1024 (vLLM: 8..128 typical) */
    bool enable_prefix_caching;
    int n_host_blocks;          /* swap space in blocks (0 = none) */
} eng_block_cfg_t;

/* A block copy the engine performs before the next forward (CoW or swap). */
typedef struct eng_block_copy {
    int32_t src;
    int32_t dst;
} eng_block_copy_t;

typedef struct eng_block_stats {
    int n_blocks;
    int n_used;                 /* ref > 0 */
    int n_free;                 /* ref == 0 (includes cached free blocks) */
    int n_cached;               /* blocks holding a prefix-cache key (any ref) */
    int n_cached_free;          /* cached and ref == 0 (evictable) */
    double usage;               /* n_used / n_blocks */
    uint64_t prefix_queries;    /* tokens looked up */
    uint64_t prefix_hits;       /* tokens served from the cache */
    uint64_t evictions;         /* cached blocks whose key was dropped for reuse */
    uint64_t cow_copies;
    int n_host_blocks;
    int n_host_free;
} eng_block_stats_t;

pd_status_t eng_block_mgr_create(const eng_block_cfg_t *cfg, eng_block_mgr_t **mgr_p);
void eng_block_mgr_destroy(eng_block_mgr_t *mgr);

int eng_block_size(const eng_block_mgr_t *mgr);
int eng_block_num_free(const eng_block_mgr_t *mgr);
int eng_block_num_host_free(const eng_block_mgr_t *mgr);
void eng_block_get_stats(const eng_block_mgr_t *mgr, eng_block_stats_t *stats_p);
bool eng_block_prefix_caching(const eng_block_mgr_t *mgr);
void eng_block_set_prefix_caching(eng_block_mgr_t *mgr, bool on);
/* Drop every cached key of free blocks (vLLM's reset_prefix_cache).  Blocks in use
 * keep theirs.  Returns the number of keys dropped. */
int eng_block_reset_prefix_cache(eng_block_mgr_t *mgr);

/* Chain hash of one full block (exposed so remote peers can compute keys). */
uint64_t eng_block_hash(uint64_t parent_hash, uint64_t salt_hash, int32_t lora_id,
                        const int32_t *tokens, int n);
/* Hash of a cache_salt string (0 for NULL or ""). */
uint64_t eng_block_salt_hash(const char *salt);

/* Block tables (one per sequence, normally embedded in eng_request_t). */
void eng_block_table_init(eng_block_table_t *t);
void eng_block_table_cleanup(eng_block_table_t *t); /* frees ids; blocks must be freed */

/* Number of leading tokens of tokens[0..n_tokens) that the prefix cache can serve
 * now (a multiple of block_size, at most n_tokens - 1 rounded down so one token is
 * always computed).  Read-only: no counters change. */
int eng_block_cached_prefix(const eng_block_mgr_t *mgr, const int32_t *tokens, int n_tokens,
                            uint64_t salt_hash, int32_t lora_id);

/* Allocate an empty table for a sequence: take the cached prefix blocks of
 * tokens[0..n_tokens) (at most (n_tokens - 1) / block_size of them), then fresh
 * blocks so the table covers n_slots tokens (n_slots >= cached tokens; pass
 * n_tokens to allocate the whole prompt or less for a prefill chunk).  All or
 * nothing: PD_ERR_AGAIN when the free blocks do not suffice (the table unchanged).
 * *n_cached_p gets the cached token count.  Counts a prefix query.
 * External (remote KV) blocks use the same call: it reserves blocks for the whole
 * prompt, the transfer writes tokens [*n_cached_p, n_remote) into them, and
 * eng_block_commit(.., n_remote, ..) registers their keys once it has arrived. */
pd_status_t eng_block_alloc_prompt(eng_block_mgr_t *mgr, eng_block_table_t *t,
                                   const int32_t *tokens, int n_tokens, int n_slots,
                                   uint64_t salt_hash, int32_t lora_id, int *n_cached_p);

/* Blocks needed to grow table t (holding n_have_tokens tokens' worth of blocks) to
 * n_slots tokens, including a copy-on-write block when the last block is shared
 * and partially filled and the growth writes into it. */
int eng_block_slots_needed(const eng_block_mgr_t *mgr, const eng_block_table_t *t,
                           int n_filled, int n_slots);

/* Grow table t so it covers n_slots tokens; n_filled tokens already have KV.  When
 * the block holding token n_filled is shared (ref > 1) and n_filled is not at a
 * block boundary, it is copied first: a new block replaces it in t and *cow_p gets
 * (src, dst) with *n_cow_p = 1 (else 0).  All or nothing: PD_ERR_AGAIN when out of
 * blocks.  cow_p / n_cow_p may be NULL only when no sharing is possible. */
pd_status_t eng_block_append_slots(eng_block_mgr_t *mgr, eng_block_table_t *t, int n_filled,
                                   int n_slots, eng_block_copy_t *cow_p, int *n_cow_p);

/* Register the full blocks among the first n_computed tokens (KV now written) in
 * the prefix cache.  O(new full blocks).  No-op when prefix caching is off. */
void eng_block_commit(eng_block_mgr_t *mgr, eng_block_table_t *t, const int32_t *tokens,
                      int n_computed, uint64_t salt_hash, int32_t lora_id);

/* Release every block of t (ref--, in reverse so a sequence's tail is evicted
 * before its head); t is left empty.  Swapped-out tables release host blocks. */
void eng_block_free(eng_block_mgr_t *mgr, eng_block_table_t *t);

/* dst (empty) shares every block of src: ref++ each.  Never fails except NOMEM
 * growing dst. */
pd_status_t eng_block_fork(eng_block_mgr_t *mgr, const eng_block_table_t *src,
                           eng_block_table_t *dst);

/* Move t's blocks to host blocks: fills pairs (device src -> host dst, t->n of them;
 * pairs must hold t->n), releases the device blocks and marks t on_host.
 * PD_ERR_AGAIN when host space is short (t unchanged). */
pd_status_t eng_block_swap_out(eng_block_mgr_t *mgr, eng_block_table_t *t,
                               eng_block_copy_t *pairs);
/* Reverse: host src -> device dst; PD_ERR_AGAIN when device blocks are short. */
pd_status_t eng_block_swap_in(eng_block_mgr_t *mgr, eng_block_table_t *t,
                              eng_block_copy_t *pairs);

/* Reference count of a block (tests, debugging). */
int eng_block_ref(const eng_block_mgr_t *mgr, int32_t block);
/* Test hook: keep only the low `bits` bits of every key (64 = all), so tests can
 * force hash collisions and check they never serve wrong KV. */
void eng_block_debug_hash_bits(eng_block_mgr_t *mgr, int bits);
/* Full consistency check (lists, counts, hash table); PD_ERR_INTERNAL with a
 * logged cause when broken.  O(n_blocks) - tests only. */
pd_status_t eng_block_check(const eng_block_mgr_t *mgr);

#endif /* ENG_BLOCK_H */
