/*
 * kcpu_pool.c - the kernels' thread pool: a fixed set of workers that run one
 * parallel-for at a time.  The calling thread is worker 0.
 *
 * A job is split into up to 4 chunks per thread that every thread (caller included)
 * claims dynamically, so a worker that the OS has not scheduled yet (the machine is
 * shared) delays nothing: the others take its chunks.  The claim state lives in one
 * 64-bit word {generation:24, n_chunks:20, next:20} updated by CAS, so a late worker
 * can never claim a chunk of a job other than the one it read, and after a successful
 * claim the job's fields stay valid until that chunk is reported done.  Idle workers
 * spin briefly on a generation counter, then sleep on it (futex).
 *
 * Chunking never changes results: every op computes each output from its own inputs
 * in a fixed order, whatever thread runs it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kcpu.h"
#include "pd_log.h"

/* Pause iterations a waiting thread spins before it sleeps on the futex (a few us here).
 * Short on purpose: on a machine shared with other jobs a spinning thread burns the time
 * slice its sibling (or the caller) needs.  Measured with bench_engine, 2 threads on the
 * 2-vCPU EPYC at load ~8: 20000 -> 300 took batch-1 decode from 55 to 84 tokens per
 * CPU-second (the 1-thread figure) and its wall tokens/s from ~40 to ~85; the ops of one
 * forward follow each other within the spin window, so workers rarely sleep mid-forward. */
#define SPIN_ITERS 300
#define CHUNKS_PER_THREAD 4
#define GEN_BITS 24
#define FIELD_BITS 20
#define FIELD_MASK ((1ull << FIELD_BITS) - 1)
#define GEN_MASK ((1ull << GEN_BITS) - 1)

struct kcpu_pool;

typedef struct {
    struct kcpu_pool *pool;
    pthread_t thread;
    int tid;
} worker_t;

struct kcpu_pool {
    int n_threads;
    worker_t *workers;          /* n_threads - 1 entries (tid 1..) */
    /* current job (written by the caller before the job word is published) */
    kcpu_task_fn_t fn;
    void *arg;
    int64_t n, chunk;
    uint64_t job;               /* {gen, n_chunks, next} */
    uint32_t done;              /* chunks finished */
    uint32_t gen;               /* futex word: bumped per job (and on stop) */
    uint32_t sleepers;          /* workers inside (or entering) FUTEX_WAIT on gen */
    uint32_t caller_sleeping;   /* the caller is inside (or entering) FUTEX_WAIT on done */
    uint32_t job_gen;           /* generation counter for the job word */
    int stop;
};

static long futex(uint32_t *addr, int op, uint32_t val)
{
    return syscall(SYS_futex, addr, op, val, NULL, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Claim and run chunks of the job generation `gen` until none is left. */
static void run_chunks(struct kcpu_pool *pool, uint64_t gen, int tid)
{
    uint64_t w = __atomic_load_n(&pool->job, __ATOMIC_ACQUIRE);

    for (;;) {
        uint64_t wgen = w >> (2 * FIELD_BITS);
        uint64_t n_chunks = (w >> FIELD_BITS) & FIELD_MASK;
        uint64_t next = w & FIELD_MASK;
        if (wgen != gen || next >= n_chunks)
            return;
        if (!__atomic_compare_exchange_n(&pool->job, &w, w + 1, false, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            continue; /* w was reloaded */
        /* chunk `next` is ours: the job cannot complete (nor its fields change) before
         * we report it done */
        int64_t begin = (int64_t)next * pool->chunk;
        int64_t end = begin + pool->chunk < pool->n ? begin + pool->chunk : pool->n;
        pool->fn(pool->arg, begin, end, tid);
        if (__atomic_add_fetch(&pool->done, 1, __ATOMIC_SEQ_CST) == (uint32_t)n_chunks &&
            __atomic_load_n(&pool->caller_sleeping, __ATOMIC_SEQ_CST))
            futex(&pool->done, FUTEX_WAKE_PRIVATE, 1);
        w = __atomic_load_n(&pool->job, __ATOMIC_ACQUIRE);
    }
}

static void *worker_main(void *p)
{
    worker_t *w = p;
    struct kcpu_pool *pool = w->pool;
    uint32_t seen = 0;

    for (;;) {
        uint32_t g;
        int spins = 0;
        while ((g = __atomic_load_n(&pool->gen, __ATOMIC_ACQUIRE)) == seen) {
            if (spins < SPIN_ITERS) {
                spins++;
                cpu_relax();
            } else {
                /* seq_cst pairs with the caller's gen bump + sleepers load: either it
                 * sees us and wakes, or FUTEX_WAIT sees the new gen and returns */
                __atomic_add_fetch(&pool->sleepers, 1, __ATOMIC_SEQ_CST);
                futex(&pool->gen, FUTEX_WAIT_PRIVATE, seen);
                __atomic_sub_fetch(&pool->sleepers, 1, __ATOMIC_SEQ_CST);
                spins = 0;
            }
        }
        seen = g;
        if (__atomic_load_n(&pool->stop, __ATOMIC_ACQUIRE))
            break;
        uint64_t job = __atomic_load_n(&pool->job, __ATOMIC_ACQUIRE);
        run_chunks(pool, job >> (2 * FIELD_BITS), w->tid);
    }
    return NULL;
}

pd_status_t kcpu_pool_create(int n_threads, kcpu_pool_t **pool_p)
{
    struct kcpu_pool *pool;

    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 1024)
        n_threads = 1024;
    pool = calloc(1, sizeof(*pool));
    if (pool == NULL)
        return PD_ERR_NOMEM;
    pool->n_threads = n_threads;
    if (n_threads > 1) {
        pool->workers = calloc((size_t)n_threads - 1, sizeof(worker_t));
        if (pool->workers == NULL) {
            free(pool);
            return PD_ERR_NOMEM;
        }
    }
    for (int i = 1; i < n_threads; i++) {
        worker_t *w = &pool->workers[i - 1];
        int rc;
        w->pool = pool;
        w->tid = i;
        rc = pthread_create(&w->thread, NULL, worker_main, w);
        if (rc != 0) {
            PD_LOG_ERR("kcpu pool: pthread_create: %s", strerror(rc));
            pool->n_threads = i; /* join the ones started */
            kcpu_pool_destroy(pool);
            return PD_ERR_INTERNAL;
        }
    }
    *pool_p = pool;
    return PD_OK;
}

void kcpu_pool_destroy(kcpu_pool_t *pool)
{
    if (pool == NULL)
        return;
    if (pool->n_threads > 1) {
        __atomic_store_n(&pool->stop, 1, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&pool->gen, 1, __ATOMIC_SEQ_CST);
        futex(&pool->gen, FUTEX_WAKE_PRIVATE, INT_MAX);
        for (int i = 1; i < pool->n_threads; i++)
            pthread_join(pool->workers[i - 1].thread, NULL);
    }
    free(pool->workers);
    free(pool);
}

int kcpu_pool_n_threads(const kcpu_pool_t *pool)
{
    return pool ? pool->n_threads : 1;
}

void kcpu_pool_run(kcpu_pool_t *pool, int64_t n, int64_t grain, kcpu_task_fn_t fn, void *arg)
{
    int64_t chunk, n_chunks;

    if (n <= 0)
        return;
    if (grain <= 0)
        grain = 1;
    if (pool == NULL || pool->n_threads == 1 || n <= grain) {
        fn(arg, 0, n, 0);
        return;
    }
    int64_t target = (int64_t)pool->n_threads * CHUNKS_PER_THREAD;
    chunk = (n + target - 1) / target;
    if (chunk < grain)
        chunk = grain;
    n_chunks = (n + chunk - 1) / chunk;
    if (n_chunks > (int64_t)FIELD_MASK) { /* keep the count in its field */
        chunk = (n + (int64_t)FIELD_MASK - 1) / (int64_t)FIELD_MASK;
        n_chunks = (n + chunk - 1) / chunk;
    }

    pool->fn = fn;
    pool->arg = arg;
    pool->n = n;
    pool->chunk = chunk;
    __atomic_store_n(&pool->done, 0, __ATOMIC_RELAXED);
    uint64_t gen = (++pool->job_gen) & GEN_MASK;
    __atomic_store_n(&pool->job, (gen << (2 * FIELD_BITS)) | ((uint64_t)n_chunks << FIELD_BITS),
                     __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&pool->gen, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&pool->sleepers, __ATOMIC_SEQ_CST) != 0)
        futex(&pool->gen, FUTEX_WAKE_PRIVATE, INT_MAX);

    run_chunks(pool, gen, 0);

    int spins = 0;
    uint32_t d;
    while ((d = __atomic_load_n(&pool->done, __ATOMIC_SEQ_CST)) != (uint32_t)n_chunks) {
        if (spins < SPIN_ITERS) {
            spins++;
            cpu_relax();
        } else {
            __atomic_store_n(&pool->caller_sleeping, 1, __ATOMIC_SEQ_CST);
            if (__atomic_load_n(&pool->done, __ATOMIC_SEQ_CST) != (uint32_t)n_chunks)
                futex(&pool->done, FUTEX_WAIT_PRIVATE, d);
            __atomic_store_n(&pool->caller_sleeping, 0, __ATOMIC_SEQ_CST);
        }
    }
}
