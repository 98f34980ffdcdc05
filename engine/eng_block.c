/*
 * eng_block.c - paged KV block manager: reference counts, prefix cache, LRU
 * eviction, fork / copy-on-write, swap space.
 *
 * Invariants (checked by eng_block_check):
 *  - every device block is on exactly one of: in use (ref > 0, on no list), the
 *    uncached free list (ref 0, no key), the LRU list (ref 0, has a key);
 *  - a block has a key (cached) iff the hash table maps its hash to it; the table
 *    holds at most one block per hash value;
 *  - gen of a block increases each time its key is dropped, so a child block that
 *    recorded (parent id, parent gen) can tell whether its parent still holds the
 *    same content: a lookup accepts a block only if its recorded parent identity,
 *    salt, adapter and token ids all equal the ones being looked up.  A 64-bit hash
 *    collision therefore costs a cache miss, never wrong KV.
 *  - host blocks (swap space) are a plain stack; host copies are never shared.
 */
#include "eng_block.h"

#include <stdlib.h>
#include <string.h>

#include "pd_log.h"
#include "pd_util.h"

enum { LIST_NONE = 0, LIST_FREE = 1, LIST_LRU = 2 };

typedef struct blk {
    int32_t ref;
    int32_t prev, next;      /* list links (-1 = none) */
    uint8_t list;            /* LIST_* */
    bool cached;             /* holds a key in the hash table */
    int32_t lora;
    int32_t parent;          /* parent block at commit (-1 = first block of a chain) */
    uint32_t parent_gen;
    uint32_t gen;
    uint64_t hash;
    uint64_t salt;
} blk_t;

typedef struct dlist {
    int32_t head, tail;
    int count;
} dlist_t;

typedef struct ht_entry {
    uint64_t hash;
    int32_t block;           /* -1 = empty */
} ht_entry_t;

struct eng_block_mgr {
    int n_blocks;
    int bs;
    bool prefix_caching;
    blk_t *blk;              /* (n_blocks) */
    int32_t *tok;            /* (n_blocks, bs) token ids of cached blocks */
    dlist_t free_list;       /* ref 0, no key: handed out first */
    dlist_t lru;             /* ref 0, keyed: head = least recently freed */
    ht_entry_t *ht;          /* (ht_cap) open addressing, linear probing */
    uint32_t ht_mask;
    int n_cached;
    int32_t *scratch;        /* (n_blocks) lookup results */
    int n_host;
    int32_t *host_free;      /* (n_host) stack */
    int n_host_free;
    uint64_t prefix_queries, prefix_hits, evictions, cow_copies;
    uint64_t hash_mask;      /* ~0; tests narrow it to force collisions */
};

static inline uint64_t mhash(const eng_block_mgr_t *m, uint64_t parent, uint64_t salt, int32_t lora,
                             const int32_t *tokens)
{
    return eng_block_hash(parent, salt, lora, tokens, m->bs) & m->hash_mask;
}

void eng_block_debug_hash_bits(eng_block_mgr_t *m, int bits)
{
    m->hash_mask = bits >= 64 ? ~0ull : ((1ull << bits) - 1);
}

// ---- hashing: SipHash-1-3 over 64-bit words, fixed key ----

#define SIP_K0 0x736f6d6570736575ull
#define SIP_K1 0x646f72616e646f6dull

typedef struct sip {
    uint64_t v0, v1, v2, v3;
    uint64_t n;
} sip_t;

static inline uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

#define SIPROUND(s)                                                                              \
    do {                                                                                         \
        (s)->v0 += (s)->v1; (s)->v1 = rotl((s)->v1, 13); (s)->v1 ^= (s)->v0; (s)->v0 = rotl((s)->v0, 32); \
        (s)->v2 += (s)->v3; (s)->v3 = rotl((s)->v3, 16); (s)->v3 ^= (s)->v2;                     \
        (s)->v0 += (s)->v3; (s)->v3 = rotl((s)->v3, 21); (s)->v3 ^= (s)->v0;                     \
        (s)->v2 += (s)->v1; (s)->v1 = rotl((s)->v1, 17); (s)->v1 ^= (s)->v2; (s)->v2 = rotl((s)->v2, 32); \
    } while (0)

static inline void sip_init(sip_t *s)
{
    s->v0 = SIP_K0 ^ 0x736f6d6570736575ull;
    s->v1 = SIP_K1 ^ 0x646f72616e646f6dull;
    s->v2 = SIP_K0 ^ 0x6c7967656e657261ull;
    s->v3 = SIP_K1 ^ 0x7465646279746573ull;
    s->n = 0;
}

static inline void sip_word(sip_t *s, uint64_t m)
{
    s->v3 ^= m;
    SIPROUND(s);
    s->v0 ^= m;
    s->n++;
}

static inline uint64_t sip_final(sip_t *s)
{
    uint64_t b = s->n << 56;
    s->v3 ^= b;
    SIPROUND(s);
    s->v0 ^= b;
    s->v2 ^= 0xff;
    SIPROUND(s);
    SIPROUND(s);
    SIPROUND(s);
    return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

uint64_t eng_block_hash(uint64_t parent_hash, uint64_t salt_hash, int32_t lora_id,
                        const int32_t *tokens, int n)
{
    sip_t s;
    int i;

    sip_init(&s);
    sip_word(&s, parent_hash);
    sip_word(&s, salt_hash);
    sip_word(&s, (uint64_t)(uint32_t)lora_id | ((uint64_t)(uint32_t)n << 32));
    for (i = 0; i + 1 < n; i += 2)
        sip_word(&s, (uint64_t)(uint32_t)tokens[i] | ((uint64_t)(uint32_t)tokens[i + 1] << 32));
    if (i < n)
        sip_word(&s, (uint64_t)(uint32_t)tokens[i] | (0xffffffffull << 32));
    uint64_t h = sip_final(&s);
    return h != 0 ? h : 1; /* 0 means "no parent" */
}

uint64_t eng_block_salt_hash(const char *salt)
{
    sip_t s;
    size_t len, i;

    if (salt == NULL || salt[0] == '\0')
        return 0;
    len = strlen(salt);
    sip_init(&s);
    for (i = 0; i + 8 <= len; i += 8) {
        uint64_t m;
        memcpy(&m, salt + i, 8);
        sip_word(&s, m);
    }
    uint64_t last = (uint64_t)(len & 0xff) << 56;
    for (size_t j = 0; i + j < len; j++)
        last |= (uint64_t)(uint8_t)salt[i + j] << (8 * j);
    sip_word(&s, last);
    uint64_t h = sip_final(&s);
    return h != 0 ? h : 1;
}

// ---- lists ----

static void list_push_tail(eng_block_mgr_t *m, dlist_t *l, uint8_t which, int32_t b)
{
    blk_t *x = &m->blk[b];
    x->list = which;
    x->next = -1;
    x->prev = l->tail;
    if (l->tail >= 0)
        m->blk[l->tail].next = b;
    else
        l->head = b;
    l->tail = b;
    l->count++;
}

static void list_remove(eng_block_mgr_t *m, dlist_t *l, int32_t b)
{
    blk_t *x = &m->blk[b];
    if (x->prev >= 0)
        m->blk[x->prev].next = x->next;
    else
        l->head = x->next;
    if (x->next >= 0)
        m->blk[x->next].prev = x->prev;
    else
        l->tail = x->prev;
    x->prev = x->next = -1;
    x->list = LIST_NONE;
    l->count--;
}

// ---- hash table ----

static inline uint32_t ht_slot(const eng_block_mgr_t *m, uint64_t h)
{
    return (uint32_t)(h ^ (h >> 29)) & m->ht_mask;
}

static int32_t ht_find(const eng_block_mgr_t *m, uint64_t h)
{
    for (uint32_t i = ht_slot(m, h);; i = (i + 1) & m->ht_mask) {
        if (m->ht[i].block < 0)
            return -1;
        if (m->ht[i].hash == h)
            return m->ht[i].block;
    }
}

static void ht_insert(eng_block_mgr_t *m, uint64_t h, int32_t b)
{
    uint32_t i = ht_slot(m, h);
    while (m->ht[i].block >= 0)
        i = (i + 1) & m->ht_mask;
    m->ht[i].hash = h;
    m->ht[i].block = b;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void ht_remove(eng_block_mgr_t *m, uint64_t h)
{
    uint32_t i = ht_slot(m, h);
    while (m->ht[i].block >= 0 && m->ht[i].hash != h)
        i = (i + 1) & m->ht_mask;
    if (m->ht[i].block < 0)
        return;
    uint32_t j = i;
    for (;;) {
        j = (j + 1) & m->ht_mask;
        if (m->ht[j].block < 0)
            break;
        uint32_t k = ht_slot(m, m->ht[j].hash);
        /* Move j back to i unless its home slot k lies cyclically in (i, j]. */
        bool k_in = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);
        if (!k_in) {
            m->ht[i] = m->ht[j];
            i = j;
        }
    }
    m->ht[i].block = -1;
}

// ---- keys ----

/* Drop b's key: it no longer serves prefix hits, and its children become stale. */
static void drop_key(eng_block_mgr_t *m, int32_t b)
{
    blk_t *x = &m->blk[b];
    if (!x->cached)
        return;
    ht_remove(m, x->hash);
    x->cached = false;
    x->gen++;
    m->n_cached--;
    if (x->list == LIST_LRU) {
        list_remove(m, &m->lru, b);
        list_push_tail(m, &m->free_list, LIST_FREE, b);
    }
}

static bool stale(const eng_block_mgr_t *m, int32_t b)
{
    const blk_t *x = &m->blk[b];
    return x->parent >= 0 && (m->blk[x->parent].gen != x->parent_gen || !m->blk[x->parent].cached);
}

static bool key_matches(const eng_block_mgr_t *m, int32_t b, int32_t parent, uint32_t parent_gen,
                        uint64_t salt, int32_t lora, const int32_t *tokens)
{
    const blk_t *x = &m->blk[b];
    return x->cached && x->parent == parent && (parent < 0 || x->parent_gen == parent_gen) &&
           x->salt == salt && x->lora == lora &&
           memcmp(m->tok + (size_t)b * m->bs, tokens, (size_t)m->bs * sizeof(int32_t)) == 0;
}

/* Walk the cache along tokens; fills out with up to max_blocks hits. */
static int walk(const eng_block_mgr_t *m, const int32_t *tokens, int max_blocks, uint64_t salt,
                int32_t lora, int32_t *out, uint64_t *last_hash_p)
{
    uint64_t h = 0;
    int32_t parent = -1;
    uint32_t pgen = 0;
    int n = 0;

    while (n < max_blocks) {
        const int32_t *t = tokens + (size_t)n * m->bs;
        uint64_t hn = mhash(m, h, salt, lora, t);
        int32_t b = ht_find(m, hn);
        if (b < 0 || !key_matches(m, b, parent, pgen, salt, lora, t))
            break;
        out[n++] = b;
        parent = b;
        pgen = m->blk[b].gen;
        h = hn;
    }
    *last_hash_p = h;
    return n;
}

// ---- blocks ----

static int32_t pop_block(eng_block_mgr_t *m)
{
    int32_t b;
    if (m->free_list.head >= 0) {
        b = m->free_list.head;
        list_remove(m, &m->free_list, b);
    } else {
        b = m->lru.head;
        if (b < 0)
            return -1;
        list_remove(m, &m->lru, b);
        /* Eviction: the key goes now, as the block is about to be overwritten. */
        ht_remove(m, m->blk[b].hash);
        m->blk[b].cached = false;
        m->blk[b].gen++;
        m->n_cached--;
        m->evictions++;
    }
    m->blk[b].ref = 1;
    return b;
}

static void release(eng_block_mgr_t *m, int32_t b)
{
    blk_t *x = &m->blk[b];
    if (x->ref <= 0) {
        PD_LOG_CRIT("block %d released with ref %d", b, x->ref);
        abort(); /* broken invariant: a double free would hand one block to two sequences */
    }
    if (--x->ref > 0)
        return;
    if (x->cached)
        list_push_tail(m, &m->lru, LIST_LRU, b);
    else
        list_push_tail(m, &m->free_list, LIST_FREE, b);
}

static void take(eng_block_mgr_t *m, int32_t b)
{
    blk_t *x = &m->blk[b];
    if (x->ref == 0) {
        if (x->list == LIST_LRU)
            list_remove(m, &m->lru, b);
        else if (x->list == LIST_FREE)
            list_remove(m, &m->free_list, b);
    }
    x->ref++;
}

static pd_status_t table_reserve(eng_block_table_t *t, int n)
{
    if (n <= t->cap)
        return PD_OK;
    int cap = t->cap > 0 ? t->cap : 8;
    while (cap < n) {
        if (cap > INT32_MAX / 2)
            return PD_ERR_OVERFLOW;
        cap *= 2;
    }
    int32_t *ids = realloc(t->ids, (size_t)cap * sizeof(int32_t));
    if (ids == NULL)
        return PD_ERR_NOMEM;
    t->ids = ids;
    t->cap = cap;
    return PD_OK;
}

// ---- public ----

pd_status_t eng_block_mgr_create(const eng_block_cfg_t *cfg, eng_block_mgr_t **mgr_p)
{
    eng_block_mgr_t *m;
    size_t ntok, ht_cap = 16;

    if (cfg->n_blocks < 1 || cfg->block_size < 1 || cfg->block_size > 1024 || cfg->n_host_blocks < 0) {
        PD_LOG_ERR("block manager: bad geometry (%d blocks of %d tokens, %d host blocks)", cfg->n_blocks,
                   cfg->block_size, cfg->n_host_blocks);
        return PD_ERR_INVAL;
    }
    if (pd_mul_size((size_t)cfg->n_blocks, (size_t)cfg->block_size, &ntok) != PD_OK)
        return PD_ERR_OVERFLOW;
    while (ht_cap < (size_t)cfg->n_blocks * 2)
        ht_cap *= 2;
    m = calloc(1, sizeof(*m));
    if (m == NULL)
        return PD_ERR_NOMEM;
    m->n_blocks = cfg->n_blocks;
    m->bs = cfg->block_size;
    m->prefix_caching = cfg->enable_prefix_caching;
    m->hash_mask = ~0ull;
    m->blk = calloc((size_t)m->n_blocks, sizeof(blk_t));
    m->tok = malloc(ntok * sizeof(int32_t));
    m->ht = malloc(ht_cap * sizeof(ht_entry_t));
    m->scratch = malloc((size_t)m->n_blocks * sizeof(int32_t));
    m->n_host = cfg->n_host_blocks;
    m->host_free = malloc(((size_t)m->n_host + 1) * sizeof(int32_t));
    if (m->blk == NULL || m->tok == NULL || m->ht == NULL || m->scratch == NULL || m->host_free == NULL) {
        PD_LOG_ERR("block manager: out of memory for %d blocks", cfg->n_blocks);
        eng_block_mgr_destroy(m);
        return PD_ERR_NOMEM;
    }
    m->ht_mask = (uint32_t)(ht_cap - 1);
    for (size_t i = 0; i < ht_cap; i++)
        m->ht[i].block = -1;
    m->free_list.head = m->free_list.tail = -1;
    m->lru.head = m->lru.tail = -1;
    for (int32_t b = 0; b < m->n_blocks; b++) {
        m->blk[b].prev = m->blk[b].next = -1;
        m->blk[b].parent = -1;
        list_push_tail(m, &m->free_list, LIST_FREE, b);
    }
    /* Host blocks pop in ascending order. */
    for (int i = 0; i < m->n_host; i++)
        m->host_free[i] = m->n_host - 1 - i;
    m->n_host_free = m->n_host;
    *mgr_p = m;
    return PD_OK;
}

void eng_block_mgr_destroy(eng_block_mgr_t *m)
{
    if (m == NULL)
        return;
    free(m->blk);
    free(m->tok);
    free(m->ht);
    free(m->scratch);
    free(m->host_free);
    free(m);
}

int eng_block_size(const eng_block_mgr_t *m) { return m->bs; }
int eng_block_num_free(const eng_block_mgr_t *m) { return m->free_list.count + m->lru.count; }
int eng_block_num_host_free(const eng_block_mgr_t *m) { return m->n_host_free; }
bool eng_block_prefix_caching(const eng_block_mgr_t *m) { return m->prefix_caching; }
void eng_block_set_prefix_caching(eng_block_mgr_t *m, bool on) { m->prefix_caching = on; }
int eng_block_ref(const eng_block_mgr_t *m, int32_t b)
{
    return (b >= 0 && b < m->n_blocks) ? m->blk[b].ref : -1;
}

void eng_block_get_stats(const eng_block_mgr_t *m, eng_block_stats_t *s)
{
    memset(s, 0, sizeof(*s));
    s->n_blocks = m->n_blocks;
    s->n_free = eng_block_num_free(m);
    s->n_used = m->n_blocks - s->n_free;
    s->n_cached = m->n_cached;
    s->n_cached_free = m->lru.count;
    s->usage = (double)s->n_used / (double)m->n_blocks;
    s->prefix_queries = m->prefix_queries;
    s->prefix_hits = m->prefix_hits;
    s->evictions = m->evictions;
    s->cow_copies = m->cow_copies;
    s->n_host_blocks = m->n_host;
    s->n_host_free = m->n_host_free;
}

int eng_block_reset_prefix_cache(eng_block_mgr_t *m)
{
    int n = 0;
    while (m->lru.head >= 0) {
        drop_key(m, m->lru.head); /* moves it to the free list */
        n++;
    }
    return n;
}

void eng_block_table_init(eng_block_table_t *t)
{
    memset(t, 0, sizeof(*t));
    t->canon_id = -1;
}

void eng_block_table_cleanup(eng_block_table_t *t)
{
    free(t->ids);
    eng_block_table_init(t);
}

static int max_prefix_blocks(const eng_block_mgr_t *m, int n_tokens)
{
    return n_tokens > 0 ? (n_tokens - 1) / m->bs : 0;
}

int eng_block_cached_prefix(const eng_block_mgr_t *m, const int32_t *tokens, int n_tokens,
                            uint64_t salt_hash, int32_t lora_id)
{
    uint64_t h;
    if (!m->prefix_caching)
        return 0;
    /* scratch is only written, and only by this (single-threaded) manager */
    return walk(m, tokens, max_prefix_blocks(m, n_tokens), salt_hash, lora_id,
                ((eng_block_mgr_t *)m)->scratch, &h) * m->bs;
}

static int blocks_for(const eng_block_mgr_t *m, int n_slots)
{
    return (int)(((int64_t)n_slots + m->bs - 1) / m->bs);
}

pd_status_t eng_block_alloc_prompt(eng_block_mgr_t *m, eng_block_table_t *t, const int32_t *tokens,
                                   int n_tokens, int n_slots, uint64_t salt_hash, int32_t lora_id,
                                   int *n_cached_p)
{
    uint64_t last_hash = 0;
    int nhit = 0, need, free_hits = 0;
    pd_status_t st;

    if (t->n != 0 || t->on_host || n_tokens < 0 || n_slots < 0) {
        PD_LOG_ERR("alloc_prompt on a non-empty table (%d blocks) or bad sizes", t->n);
        return PD_ERR_INVAL;
    }
    if (m->prefix_caching)
        nhit = walk(m, tokens, max_prefix_blocks(m, n_tokens), salt_hash, lora_id, m->scratch, &last_hash);
    if (n_slots < nhit * m->bs)
        n_slots = nhit * m->bs;
    need = blocks_for(m, n_slots) - nhit;
    for (int i = 0; i < nhit; i++)
        if (m->blk[m->scratch[i]].ref == 0)
            free_hits++;
    if (need > eng_block_num_free(m) - free_hits)
        return PD_ERR_AGAIN;
    st = table_reserve(t, nhit + need);
    if (st != PD_OK)
        return st;
    for (int i = 0; i < nhit; i++) {
        take(m, m->scratch[i]);
        t->ids[i] = m->scratch[i];
    }
    for (int i = 0; i < need; i++)
        t->ids[nhit + i] = pop_block(m);
    t->n = nhit + need;
    t->n_hashed = nhit;
    t->last_hash = last_hash;
    t->canon_id = nhit > 0 ? t->ids[nhit - 1] : -1;
    t->canon_gen = nhit > 0 ? m->blk[t->canon_id].gen : 0;
    t->hash_broken = false;
    if (m->prefix_caching) {
        m->prefix_queries += (uint64_t)n_tokens;
        m->prefix_hits += (uint64_t)nhit * (uint64_t)m->bs;
    }
    *n_cached_p = nhit * m->bs;
    return PD_OK;
}

static bool needs_cow(const eng_block_mgr_t *m, const eng_block_table_t *t, int n_filled, int n_slots)
{
    int idx = n_filled / m->bs;
    return n_slots > n_filled && n_filled % m->bs != 0 && idx < t->n && m->blk[t->ids[idx]].ref > 1;
}

int eng_block_slots_needed(const eng_block_mgr_t *m, const eng_block_table_t *t, int n_filled, int n_slots)
{
    int extra = blocks_for(m, n_slots) - t->n;
    if (extra < 0)
        extra = 0;
    return extra + (needs_cow(m, t, n_filled, n_slots) ? 1 : 0);
}

pd_status_t eng_block_append_slots(eng_block_mgr_t *m, eng_block_table_t *t, int n_filled, int n_slots,
                                   eng_block_copy_t *cow_p, int *n_cow_p)
{
    int extra = blocks_for(m, n_slots) - t->n;
    bool cow = needs_cow(m, t, n_filled, n_slots);
    pd_status_t st;

    if (t->on_host) {
        PD_LOG_ERR("append_slots on a swapped-out table");
        return PD_ERR_INVAL;
    }
    if (extra < 0)
        extra = 0;
    if (extra + (cow ? 1 : 0) > eng_block_num_free(m))
        return PD_ERR_AGAIN;
    if (cow && (cow_p == NULL || n_cow_p == NULL)) {
        PD_LOG_ERR("append_slots needs a copy-on-write but the caller cannot take one");
        return PD_ERR_INVAL;
    }
    st = table_reserve(t, t->n + extra);
    if (st != PD_OK)
        return st;
    if (n_cow_p != NULL)
        *n_cow_p = 0;
    if (cow) {
        int idx = n_filled / m->bs;
        int32_t src = t->ids[idx], dst = pop_block(m);
        release(m, src); /* ref > 1 before: stays in use by the siblings */
        t->ids[idx] = dst;
        cow_p->src = src;
        cow_p->dst = dst;
        *n_cow_p = 1;
        m->cow_copies++;
    }
    for (int i = 0; i < extra; i++)
        t->ids[t->n++] = pop_block(m);
    return PD_OK;
}

void eng_block_commit(eng_block_mgr_t *m, eng_block_table_t *t, const int32_t *tokens, int n_computed,
                      uint64_t salt_hash, int32_t lora_id)
{
    int full;

    if (!m->prefix_caching || t->hash_broken || t->on_host)
        return;
    full = n_computed / m->bs;
    if (full > t->n)
        full = t->n;
    while (t->n_hashed < full) {
        int i = t->n_hashed;
        const int32_t *tk = tokens + (size_t)i * m->bs;
        int32_t parent = i == 0 ? -1 : t->canon_id;
        uint32_t pgen = i == 0 ? 0 : t->canon_gen;
        int32_t mine = t->ids[i], canon;

        if (i > 0 && (parent < 0 || m->blk[parent].gen != pgen || !m->blk[parent].cached)) {
            /* The canonical parent lost its key: nothing after it can be reached. */
            t->hash_broken = true;
            return;
        }
        uint64_t h = mhash(m, t->last_hash, salt_hash, lora_id, tk);
        int32_t e = ht_find(m, h);
        if (e >= 0 && key_matches(m, e, parent, pgen, salt_hash, lora_id, tk)) {
            canon = e; /* same content already cached (maybe this very block) */
        } else if (e >= 0 && !stale(m, e)) {
            /* A genuine 64-bit collision with different live content: keep the
             * existing entry, stop caching this sequence. */
            PD_LOG_DEBUG("prefix cache: hash collision on %016llx; not caching", (unsigned long long)h);
            t->hash_broken = true;
            return;
        } else {
            if (e >= 0)
                drop_key(m, e); /* stale: its parent was evicted */
            if (m->blk[mine].cached) {
                t->hash_broken = true; /* cannot happen: a block holds one key */
                return;
            }
            blk_t *x = &m->blk[mine];
            x->cached = true;
            x->hash = h;
            x->salt = salt_hash;
            x->lora = lora_id;
            x->parent = parent;
            x->parent_gen = pgen;
            memcpy(m->tok + (size_t)mine * m->bs, tk, (size_t)m->bs * sizeof(int32_t));
            ht_insert(m, h, mine);
            m->n_cached++;
            canon = mine;
        }
        t->n_hashed++;
        t->last_hash = h;
        t->canon_id = canon;
        t->canon_gen = m->blk[canon].gen;
    }
}

static void table_reset_chain(eng_block_table_t *t)
{
    t->n_hashed = 0;
    t->last_hash = 0;
    t->canon_id = -1;
    t->canon_gen = 0;
    t->hash_broken = false;
}

void eng_block_free(eng_block_mgr_t *m, eng_block_table_t *t)
{
    if (t->on_host) {
        for (int i = t->n - 1; i >= 0; i--)
            m->host_free[m->n_host_free++] = t->ids[i];
    } else {
        for (int i = t->n - 1; i >= 0; i--)
            release(m, t->ids[i]);
    }
    t->n = 0;
    t->on_host = false;
    table_reset_chain(t);
}

pd_status_t eng_block_fork(eng_block_mgr_t *m, const eng_block_table_t *src, eng_block_table_t *dst)
{
    pd_status_t st;

    if (dst->n != 0 || src->on_host) {
        PD_LOG_ERR("fork into a non-empty table or from a swapped-out one");
        return PD_ERR_INVAL;
    }
    st = table_reserve(dst, src->n);
    if (st != PD_OK)
        return st;
    for (int i = 0; i < src->n; i++) {
        take(m, src->ids[i]);
        dst->ids[i] = src->ids[i];
    }
    dst->n = src->n;
    dst->n_hashed = src->n_hashed;
    dst->last_hash = src->last_hash;
    dst->canon_id = src->canon_id;
    dst->canon_gen = src->canon_gen;
    dst->hash_broken = src->hash_broken;
    return PD_OK;
}

pd_status_t eng_block_swap_out(eng_block_mgr_t *m, eng_block_table_t *t, eng_block_copy_t *pairs)
{
    if (t->on_host)
        return PD_ERR_INVAL;
    if (t->n > m->n_host_free)
        return PD_ERR_AGAIN;
    for (int i = 0; i < t->n; i++) {
        int32_t h = m->host_free[--m->n_host_free];
        pairs[i].src = t->ids[i];
        pairs[i].dst = h;
    }
    for (int i = t->n - 1; i >= 0; i--)
        release(m, t->ids[i]);
    for (int i = 0; i < t->n; i++)
        t->ids[i] = pairs[i].dst;
    t->on_host = true;
    /* Swapped-in blocks are fresh copies: re-register them from the start. */
    table_reset_chain(t);
    return PD_OK;
}

pd_status_t eng_block_swap_in(eng_block_mgr_t *m, eng_block_table_t *t, eng_block_copy_t *pairs)
{
    if (!t->on_host)
        return PD_ERR_INVAL;
    if (t->n > eng_block_num_free(m))
        return PD_ERR_AGAIN;
    for (int i = 0; i < t->n; i++) {
        pairs[i].src = t->ids[i];
        pairs[i].dst = pop_block(m);
        m->host_free[m->n_host_free++] = t->ids[i];
        t->ids[i] = pairs[i].dst;
    }
    t->on_host = false;
    return PD_OK;
}

pd_status_t eng_block_check(const eng_block_mgr_t *m)
{
    int n_free = 0, n_lru = 0, n_cached = 0, ht_used = 0;

#define CHECK(cond, ...)                  \
    do {                                  \
        if (!(cond)) {                    \
            PD_LOG_ERR(__VA_ARGS__);      \
            return PD_ERR_INTERNAL;       \
        }                                 \
    } while (0)

    for (int32_t b = m->free_list.head, prev = -1; b >= 0; prev = b, b = m->blk[b].next) {
        CHECK(m->blk[b].list == LIST_FREE && m->blk[b].ref == 0 && !m->blk[b].cached && m->blk[b].prev == prev,
              "block %d on the free list is inconsistent", b);
        CHECK(++n_free <= m->n_blocks, "free list loops");
    }
    for (int32_t b = m->lru.head, prev = -1; b >= 0; prev = b, b = m->blk[b].next) {
        CHECK(m->blk[b].list == LIST_LRU && m->blk[b].ref == 0 && m->blk[b].cached && m->blk[b].prev == prev,
              "block %d on the LRU list is inconsistent", b);
        CHECK(++n_lru <= m->n_blocks, "LRU list loops");
    }
    CHECK(n_free == m->free_list.count && n_lru == m->lru.count, "list counts drifted");
    for (int32_t b = 0; b < m->n_blocks; b++) {
        const blk_t *x = &m->blk[b];
        CHECK(x->ref >= 0, "block %d has ref %d", b, x->ref);
        CHECK((x->ref == 0) == (x->list != LIST_NONE), "block %d ref %d list %d", b, x->ref, x->list);
        if (x->cached) {
            n_cached++;
            CHECK(ht_find(m, x->hash) == b, "cached block %d not in the hash table", b);
        }
    }
    for (uint32_t i = 0; i <= m->ht_mask; i++) {
        if (m->ht[i].block < 0)
            continue;
        ht_used++;
        CHECK(m->blk[m->ht[i].block].cached && m->blk[m->ht[i].block].hash == m->ht[i].hash,
              "hash table slot %u points at block %d that does not hold the key", i, m->ht[i].block);
    }
    CHECK(n_cached == m->n_cached && ht_used == n_cached, "cached count %d, table %d, counter %d", n_cached,
          ht_used, m->n_cached);
    CHECK(m->n_host_free >= 0 && m->n_host_free <= m->n_host, "host free count %d", m->n_host_free);
#undef CHECK
    return PD_OK;
}
