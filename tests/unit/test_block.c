/*
 * test_block.c - block manager: alloc/free, prefix hits, the "one token is always
 * computed" rule, LRU eviction, fork + copy-on-write, swap, reset, and a random
 * stress test that simulates the KV contents of every block (each slot holds a
 * digest of the whole token prefix up to its position) so a prefix hit that would
 * serve wrong KV - e.g. after a forced hash collision - is caught.
 */
#include <stdlib.h>
#include <string.h>

#include "eng_block.h"
#include "pd_test.h"

static eng_block_mgr_t *mk(int n_blocks, int bs, bool cache, int host)
{
    eng_block_cfg_t cfg = {.n_blocks = n_blocks, .block_size = bs, .enable_prefix_caching = cache,
                           .n_host_blocks = host};
    eng_block_mgr_t *m = NULL;
    PD_CHECK_STATUS(eng_block_mgr_create(&cfg, &m), PD_OK);
    return m;
}

PD_TEST(test_alloc_free)
{
    eng_block_mgr_t *m = mk(16, 4, false, 0);
    eng_block_table_t t;
    int32_t tok[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    int cached = -1;

    eng_block_table_init(&t);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 16);
    PD_CHECK_STATUS(eng_block_alloc_prompt(m, &t, tok, 10, 10, 0, 0, &cached), PD_OK);
    PD_CHECK_EQ_INT(cached, 0);
    PD_CHECK_EQ_INT(t.n, 3);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 13);
    for (int i = 0; i < t.n; i++)
        PD_CHECK_EQ_INT(eng_block_ref(m, t.ids[i]), 1);
    /* decode growth: 12 slots fit in 3 blocks, 13 need a 4th */
    PD_CHECK_EQ_INT(eng_block_slots_needed(m, &t, 10, 12), 0);
    PD_CHECK_EQ_INT(eng_block_slots_needed(m, &t, 12, 13), 1);
    int ncow = -1;
    eng_block_copy_t cow;
    PD_CHECK_STATUS(eng_block_append_slots(m, &t, 12, 13, &cow, &ncow), PD_OK);
    PD_CHECK_EQ_INT(ncow, 0);
    PD_CHECK_EQ_INT(t.n, 4);
    /* all-or-nothing when short */
    eng_block_table_t u;
    eng_block_table_init(&u);
    int32_t big[64] = {0};
    PD_CHECK_STATUS(eng_block_alloc_prompt(m, &u, big, 64, 64, 0, 0, &cached), PD_ERR_AGAIN);
    PD_CHECK_EQ_INT(u.n, 0);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 12);
    PD_CHECK_STATUS(eng_block_append_slots(m, &t, 13, 13 + 60, &cow, &ncow), PD_ERR_AGAIN);
    PD_CHECK_EQ_INT(t.n, 4);
    eng_block_free(m, &t);
    PD_CHECK_EQ_INT(t.n, 0);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 16);
    PD_CHECK_STATUS(eng_block_check(m), PD_OK);
    eng_block_table_cleanup(&t);
    eng_block_table_cleanup(&u);
    eng_block_mgr_destroy(m);
}

PD_TEST(test_prefix_hits)
{
    eng_block_mgr_t *m = mk(16, 4, true, 0);
    eng_block_table_t a, b, c;
    int32_t tok[13];
    int cached;

    for (int i = 0; i < 13; i++)
        tok[i] = 100 + i;
    eng_block_table_init(&a);
    eng_block_table_init(&b);
    eng_block_table_init(&c);
    PD_CHECK_STATUS(eng_block_alloc_prompt(m, &a, tok, 12, 12, 0, 0, &cached), PD_OK);
    PD_CHECK_EQ_INT(cached, 0);
    /* nothing is cached before the KV is committed */
    PD_CHECK_EQ_INT(eng_block_cached_prefix(m, tok, 12, 0, 0), 0);
    eng_block_commit(m, &a, tok, 12, 0, 0);
    PD_CHECK_EQ_INT(a.n_hashed, 3);
    /* 12 tokens: at most (12-1)/4 = 2 blocks may hit so one token is computed */
    PD_CHECK_EQ_INT(eng_block_cached_prefix(m, tok, 12, 0, 0), 8);
    PD_CHECK_EQ_INT(eng_block_cached_prefix(m, tok, 13, 0, 0), 12);
    /* a different salt or adapter misses */
    PD_CHECK_EQ_INT(eng_block_cached_prefix(m, tok, 13, eng_block_salt_hash("alice"), 0), 0);
    PD_CHECK_EQ_INT(eng_block_cached_prefix(m, tok, 13, 0, 7), 0);
    int32_t alt[13];
    memcpy(alt, tok, sizeof(tok));
    alt[5] = 9; /* differs in block 1: only block 0 hits */
    PD_CHECK_EQ_INT(eng_block_cached_prefix(m, alt, 13, 0, 0), 4);
    eng_block_free(m, &a);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 16);
    eng_block_stats_t st;
    eng_block_get_stats(m, &st);
    PD_CHECK_EQ_INT(st.n_cached_free, 3);

    PD_CHECK_STATUS(eng_block_alloc_prompt(m, &b, tok, 12, 12, 0, 0, &cached), PD_OK);
    PD_CHECK_EQ_INT(cached, 8);
    PD_CHECK_EQ_INT(b.n, 3);
    PD_CHECK_STATUS(eng_block_alloc_prompt(m, &c, tok, 13, 13, 0, 0, &cached), PD_OK);
    PD_CHECK_EQ_INT(cached, 12);
    PD_CHECK_EQ_INT(c.n, 4);
    PD_CHECK(b.ids[0] == c.ids[0] && b.ids[1] == c.ids[1]);
    PD_CHECK_EQ_INT(eng_block_ref(m, c.ids[0]), 2);
    PD_CHECK_EQ_INT(eng_block_ref(m, c.ids[2]), 1); /* b computes its own block 2 */
    PD_CHECK(b.ids[2] != c.ids[2]);
    /* b computes block 2 again: same content; it stays uncached, the chain continues */
    eng_block_commit(m, &b, tok, 12, 0, 0);
    PD_CHECK_EQ_INT(b.n_hashed, 3);
    PD_CHECK_EQ_INT(b.canon_id, c.ids[2]);
    eng_block_get_stats(m, &st);
    PD_CHECK_EQ_INT(st.prefix_queries, 12 + 12 + 13);
    PD_CHECK_EQ_INT(st.prefix_hits, 8 + 12);
    PD_CHECK_EQ_INT(st.n_cached, 3);
    eng_block_free(m, &b);
    eng_block_free(m, &c);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 16);
    PD_CHECK_EQ_INT(eng_block_reset_prefix_cache(m), 3);
    PD_CHECK_EQ_INT(eng_block_cached_prefix(m, tok, 13, 0, 0), 0);
    PD_CHECK_STATUS(eng_block_check(m), PD_OK);
    eng_block_table_cleanup(&a);
    eng_block_table_cleanup(&b);
    eng_block_table_cleanup(&c);
    eng_block_mgr_destroy(m);
}

PD_TEST(test_lru_eviction)
{
    eng_block_mgr_t *m = mk(4, 4, true, 0);
    eng_block_table_t a, b, c;
    int32_t ta[9] = {1, 2, 3, 4, 5, 6, 7, 8, 0}, tb[9] = {11, 12, 13, 14, 15, 16, 17, 18, 0}, tc[4] = {21, 22, 23, 24};
    int cached;

    eng_block_table_init(&a);
    eng_block_table_init(&b);
    eng_block_table_init(&c);
    PD_CHECK_STATUS(eng_block_alloc_prompt(m, &a, ta, 8, 8, 0, 0, &cached), PD_OK);
    eng_block_commit(m, &a, ta, 8, 0, 0);
    eng_block_free(m, &a);
    PD_CHECK_STATUS(eng_block_alloc_prompt(m, &b, tb, 8, 8, 0, 0, &cached), PD_OK);
    eng_block_commit(m, &b, tb, 8, 0, 0);
    eng_block_free(m, &b);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 4);
    /* a was freed first and tail first: its second block is the LRU victim */
    PD_CHECK_STATUS(eng_block_alloc_prompt(m, &c, tc, 4, 4, 0, 0, &cached), PD_OK);
    eng_block_stats_t st;
    eng_block_get_stats(m, &st);
    PD_CHECK_EQ_INT(st.evictions, 1);
    PD_CHECK_EQ_INT(eng_block_cached_prefix(m, ta, 9, 0, 0), 4);
    PD_CHECK_EQ_INT(eng_block_cached_prefix(m, tb, 9, 0, 0), 8);
    /* a hit takes a block off the LRU list: it cannot be evicted while used */
    eng_block_table_t d;
    eng_block_table_init(&d);
    PD_CHECK_STATUS(eng_block_alloc_prompt(m, &d, tb, 9, 9, 0, 0, &cached), PD_OK);
    PD_CHECK_EQ_INT(cached, 8);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 0);
    PD_CHECK_STATUS(eng_block_check(m), PD_OK);
    eng_block_free(m, &c);
    eng_block_free(m, &d);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 4);
    PD_CHECK_STATUS(eng_block_check(m), PD_OK);
    eng_block_table_cleanup(&a);
    eng_block_table_cleanup(&b);
    eng_block_table_cleanup(&c);
    eng_block_table_cleanup(&d);
    eng_block_mgr_destroy(m);
}

PD_TEST(test_fork_cow)
{
    eng_block_mgr_t *m = mk(8, 4, true, 0);
    eng_block_table_t a, b;
    int32_t tok[6] = {1, 2, 3, 4, 5, 6};
    int cached, ncow;
    eng_block_copy_t cow;

    eng_block_table_init(&a);
    eng_block_table_init(&b);
    PD_CHECK_STATUS(eng_block_alloc_prompt(m, &a, tok, 6, 6, 0, 0, &cached), PD_OK);
    eng_block_commit(m, &a, tok, 6, 0, 0);
    PD_CHECK_STATUS(eng_block_fork(m, &a, &b), PD_OK);
    PD_CHECK_EQ_INT(eng_block_ref(m, a.ids[0]), 2);
    PD_CHECK_EQ_INT(eng_block_ref(m, a.ids[1]), 2);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 6);
    int32_t shared = a.ids[1];
    /* a writes token 6 into the shared partial block 1: copy first */
    PD_CHECK_EQ_INT(eng_block_slots_needed(m, &a, 6, 7), 1);
    PD_CHECK_STATUS(eng_block_append_slots(m, &a, 6, 7, &cow, &ncow), PD_OK);
    PD_CHECK_EQ_INT(ncow, 1);
    PD_CHECK_EQ_INT(cow.src, shared);
    PD_CHECK_EQ_INT(cow.dst, a.ids[1]);
    PD_CHECK(a.ids[1] != shared);
    PD_CHECK_EQ_INT(eng_block_ref(m, shared), 1);
    PD_CHECK_EQ_INT(eng_block_ref(m, a.ids[0]), 2); /* full block stays shared */
    /* b is now the only owner: writes in place */
    PD_CHECK_STATUS(eng_block_append_slots(m, &b, 6, 7, &cow, &ncow), PD_OK);
    PD_CHECK_EQ_INT(ncow, 0);
    PD_CHECK_EQ_INT(b.ids[1], shared);
    /* appending at a block boundary never copies */
    PD_CHECK_STATUS(eng_block_fork(m, &b, &a) == PD_ERR_INVAL ? PD_OK : PD_ERR_INTERNAL, PD_OK);
    eng_block_free(m, &a);
    eng_block_free(m, &b);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 8);
    PD_CHECK_STATUS(eng_block_check(m), PD_OK);
    eng_block_table_cleanup(&a);
    eng_block_table_cleanup(&b);
    eng_block_mgr_destroy(m);
}

PD_TEST(test_swap)
{
    eng_block_mgr_t *m = mk(6, 4, true, 3);
    eng_block_table_t a;
    int32_t tok[10] = {0};
    int cached;
    eng_block_copy_t pairs[8];

    eng_block_table_init(&a);
    PD_CHECK_STATUS(eng_block_alloc_prompt(m, &a, tok, 10, 10, 0, 0, &cached), PD_OK);
    eng_block_commit(m, &a, tok, 10, 0, 0);
    int32_t dev[3];
    memcpy(dev, a.ids, sizeof(dev));
    PD_CHECK_STATUS(eng_block_swap_out(m, &a, pairs), PD_OK);
    PD_CHECK(a.on_host);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 6);
    PD_CHECK_EQ_INT(eng_block_num_host_free(m), 0);
    for (int i = 0; i < 3; i++) {
        PD_CHECK_EQ_INT(pairs[i].src, dev[i]);
        PD_CHECK_EQ_INT(pairs[i].dst, a.ids[i]);
    }
    eng_block_table_t b;
    eng_block_table_init(&b);
    PD_CHECK_STATUS(eng_block_alloc_prompt(m, &b, tok, 10, 10, 0, 0, &cached), PD_OK);
    PD_CHECK_STATUS(eng_block_swap_out(m, &b, pairs), PD_ERR_AGAIN); /* host full */
    int32_t host[3];
    memcpy(host, a.ids, sizeof(host));
    PD_CHECK_STATUS(eng_block_swap_in(m, &a, pairs), PD_OK);
    PD_CHECK(!a.on_host);
    for (int i = 0; i < 3; i++) {
        PD_CHECK_EQ_INT(pairs[i].src, host[i]);
        PD_CHECK_EQ_INT(pairs[i].dst, a.ids[i]);
    }
    PD_CHECK_EQ_INT(eng_block_num_host_free(m), 3);
    eng_block_free(m, &a);
    eng_block_free(m, &b);
    PD_CHECK_EQ_INT(eng_block_num_free(m), 6);
    PD_CHECK_STATUS(eng_block_check(m), PD_OK);
    eng_block_table_cleanup(&a);
    eng_block_table_cleanup(&b);
    eng_block_mgr_destroy(m);
}

// ---- random stress with simulated KV ----

#define NSEQ 12
#define BS 4
#define NBLK 48
#define NHOST 16

typedef struct sim {
    eng_block_table_t t;
    int32_t tok[256];
    int n_tok;       /* tokens in the sequence */
    int n_done;      /* tokens whose KV is written */
    uint64_t salt;
    bool live;
} sim_t;

static uint64_t kv_dev[NBLK * BS], kv_host[NHOST * BS];

static uint64_t digest(const sim_t *s, int pos)
{
    uint64_t v = 0x12345678u ^ s->salt;
    for (int i = 0; i <= pos; i++)
        v = (v ^ (uint64_t)(uint32_t)s->tok[i]) * 0x100000001b3ull + 0x9e37;
    return v;
}

static void write_kv(sim_t *s, int from, int to)
{
    for (int p = from; p < to; p++)
        kv_dev[s->t.ids[p / BS] * BS + p % BS] = digest(s, p);
}

static int verify_kv(const sim_t *s, int upto)
{
    for (int p = 0; p < upto; p++)
        if (kv_dev[s->t.ids[p / BS] * BS + p % BS] != digest(s, p))
            return p;
    return -1;
}

static void copy_blocks(uint64_t *dst_arr, const uint64_t *src_arr, const eng_block_copy_t *pairs, int n)
{
    for (int i = 0; i < n; i++)
        memcpy(dst_arr + pairs[i].dst * BS, src_arr + pairs[i].src * BS, BS * sizeof(uint64_t));
}

static void stress(int hash_bits, unsigned seed, int min_hits)
{
    eng_block_mgr_t *m = mk(NBLK, BS, true, NHOST);
    sim_t seqs[NSEQ];
    int bad_kv = 0, bad_check = 0, hits = 0;

    eng_block_debug_hash_bits(m, hash_bits);
    srand(seed);
    memset(seqs, 0, sizeof(seqs));
    for (int i = 0; i < NSEQ; i++)
        eng_block_table_init(&seqs[i].t);
    for (int it = 0; it < 20000; it++) {
        int i = rand() % NSEQ;
        sim_t *s = &seqs[i];
        int op = rand() % 10;
        if (!s->live) {
            /* new prompt from a small alphabet so prefixes repeat; sometimes fork a live one */
            int j = rand() % NSEQ;
            if (op < 2 && seqs[j].live && !seqs[j].t.on_host && j != i) {
                if (eng_block_fork(m, &seqs[j].t, &s->t) == PD_OK) {
                    memcpy(s->tok, seqs[j].tok, sizeof(s->tok));
                    s->n_tok = seqs[j].n_tok;
                    s->n_done = seqs[j].n_done;
                    s->salt = seqs[j].salt;
                    s->live = true;
                }
                continue;
            }
            s->n_tok = 1 + rand() % 40;
            s->salt = (rand() % 4 == 0) ? 77 : 0;
            int pre = rand() % 24; /* a shared "system prompt" prefix of random length */
            for (int k = 0; k < s->n_tok; k++)
                s->tok[k] = k < pre ? (k * 7) % 3 : rand() % 3;
            int cached = 0;
            pd_status_t st = eng_block_alloc_prompt(m, &s->t, s->tok, s->n_tok, s->n_tok, s->salt, 0, &cached);
            if (st != PD_OK)
                continue;
            if (cached > 0)
                hits++;
            if (verify_kv(s, cached) >= 0)
                bad_kv++;
            s->n_done = cached;
            write_kv(s, cached, s->n_tok);
            s->n_done = s->n_tok;
            eng_block_commit(m, &s->t, s->tok, s->n_done, s->salt, 0);
            s->live = true;
        } else if (op < 5 && s->n_tok < 200 && !s->t.on_host) {
            /* decode: append one token (copy on write when shared) */
            eng_block_copy_t cow;
            int ncow = 0;
            if (eng_block_append_slots(m, &s->t, s->n_done, s->n_done + 1, &cow, &ncow) != PD_OK)
                continue;
            copy_blocks(kv_dev, kv_dev, &cow, ncow);
            s->tok[s->n_tok++] = rand() % 3;
            write_kv(s, s->n_done, s->n_tok);
            s->n_done = s->n_tok;
            eng_block_commit(m, &s->t, s->tok, s->n_done, s->salt, 0);
        } else if (op == 5) {
            eng_block_copy_t pairs[64];
            if (!s->t.on_host && s->t.n <= 64) {
                if (eng_block_swap_out(m, &s->t, pairs) == PD_OK)
                    copy_blocks(kv_host, kv_dev, pairs, s->t.n);
            } else if (s->t.on_host) {
                int n = s->t.n;
                if (eng_block_swap_in(m, &s->t, pairs) == PD_OK) {
                    copy_blocks(kv_dev, kv_host, pairs, n);
                    if (verify_kv(s, s->n_done) >= 0)
                        bad_kv++;
                    eng_block_commit(m, &s->t, s->tok, s->n_done, s->salt, 0);
                }
            }
        } else if (op >= 8) {
            if (!s->t.on_host && verify_kv(s, s->n_done) >= 0)
                bad_kv++;
            eng_block_free(m, &s->t);
            s->live = false;
        }
        if (it % 97 == 0 && eng_block_check(m) != PD_OK)
            bad_check++;
    }
    for (int i = 0; i < NSEQ; i++) {
        if (seqs[i].live && !seqs[i].t.on_host && verify_kv(&seqs[i], seqs[i].n_done) >= 0)
            bad_kv++;
        eng_block_free(m, &seqs[i].t);
        eng_block_table_cleanup(&seqs[i].t);
    }
    PD_CHECK_EQ_INT(bad_kv, 0);
    PD_CHECK_EQ_INT(bad_check, 0);
    printf("  %d prefix hits\n", hits);
    if (hits < min_hits)
        fprintf(stderr, "  only %d prefix hits\n", hits);
    PD_CHECK(hits >= min_hits);
    PD_CHECK_EQ_INT(eng_block_num_free(m), NBLK);
    PD_CHECK_EQ_INT(eng_block_num_host_free(m), NHOST);
    PD_CHECK_STATUS(eng_block_check(m), PD_OK);
    eng_block_mgr_destroy(m);
}

PD_TEST(test_stress_full_hash) { stress(64, 1, 500); }
/* 3-bit keys: collisions everywhere; a hit must still always be exact. */
PD_TEST(test_stress_collisions) { stress(3, 2, 20); }

PD_TEST(test_hash_properties)
{
    int32_t a[16], b[16];
    for (int i = 0; i < 16; i++)
        a[i] = b[i] = i * 7;
    uint64_t h1 = eng_block_hash(0, 0, 0, a, 16);
    PD_CHECK(h1 == eng_block_hash(0, 0, 0, b, 16));
    b[15]++;
    PD_CHECK(h1 != eng_block_hash(0, 0, 0, b, 16));
    PD_CHECK(h1 != eng_block_hash(1, 0, 0, a, 16));
    PD_CHECK(h1 != eng_block_hash(0, 1, 0, a, 16));
    PD_CHECK(h1 != eng_block_hash(0, 0, 1, a, 16));
    PD_CHECK(eng_block_salt_hash(NULL) == 0 && eng_block_salt_hash("") == 0);
    PD_CHECK(eng_block_salt_hash("a") != eng_block_salt_hash("b"));
    PD_CHECK(eng_block_salt_hash("abcdefgh") != eng_block_salt_hash("abcdefgh\x01"));
}

int main(void)
{
    PD_RUN(test_alloc_free);
    PD_RUN(test_prefix_hits);
    PD_RUN(test_lru_eviction);
    PD_RUN(test_fork_cow);
    PD_RUN(test_swap);
    PD_RUN(test_hash_properties);
    PD_RUN(test_stress_full_hash);
    PD_RUN(test_stress_collisions);
    return PD_TEST_REPORT();
}
