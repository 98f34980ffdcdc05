/*
 * kcpu_pool.c - the kernels' thread pool: a fixed set of workers that run one
 * parallel-for at a time.  The calling thread is worker 0.  A job is published by
 * bumping a generation counter; workers spin on it for a short while (cheap hand-off
 * between the many small ops of a forward pass), then sleep on a futex.  The split of
 * [0, n) is static (depends only on n, grain and the worker count) so results are
 * reproducible.
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

#define SPIN_ITERS 20000

struct kcpu_pool;

typedef struct {
    struct kcpu_pool *pool;
    pthread_t thread;
    int tid;
} worker_t;

struct kcpu_pool {
    int n_threads;
    worker_t *workers;          /* n_threads - 1 entries (tid 1..) */
    /* current job */
    kcpu_task_fn_t fn;
    void *arg;
    int64_t n, chunk;
    uint32_t gen;               /* futex word: bumped per job (and on stop) */
    uint32_t pending;           /* workers still running the current job */
    uint32_t done_word;         /* futex word the caller sleeps on */
    uint32_t sleepers;          /* workers inside (or entering) FUTEX_WAIT on gen */
    uint32_t caller_sleeping;   /* the caller is inside (or entering) FUTEX_WAIT */
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

static void run_chunk(struct kcpu_pool *pool, int tid)
{
    int64_t begin = (int64_t)tid * pool->chunk;
    int64_t end = begin + pool->chunk;

    if (end > pool->n)
        end = pool->n;
    if (begin < end)
        pool->fn(pool->arg, begin, end, tid);
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
            }
        }
        seen = g;
        if (__atomic_load_n(&pool->stop, __ATOMIC_ACQUIRE))
            break;
        run_chunk(pool, w->tid);
        if (__atomic_sub_fetch(&pool->pending, 1, __ATOMIC_SEQ_CST) == 0) {
            __atomic_store_n(&pool->done_word, 1, __ATOMIC_SEQ_CST);
            if (__atomic_load_n(&pool->caller_sleeping, __ATOMIC_SEQ_CST))
                futex(&pool->done_word, FUTEX_WAKE_PRIVATE, 1);
        }
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
        __atomic_store_n(&pool->stop, 1, __ATOMIC_RELEASE);
        __atomic_add_fetch(&pool->gen, 1, __ATOMIC_ACQ_REL);
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
    int64_t chunk;
    int nth;

    if (n <= 0)
        return;
    if (grain <= 0)
        grain = 1;
    if (pool == NULL || pool->n_threads == 1 || n <= grain) {
        fn(arg, 0, n, 0);
        return;
    }
    nth = pool->n_threads;
    chunk = (n + nth - 1) / nth;
    chunk = (chunk + grain - 1) / grain * grain;

    pool->fn = fn;
    pool->arg = arg;
    pool->n = n;
    pool->chunk = chunk;
    __atomic_store_n(&pool->done_word, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&pool->pending, (uint32_t)(nth - 1), __ATOMIC_RELAXED);
    __atomic_add_fetch(&pool->gen, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&pool->sleepers, __ATOMIC_SEQ_CST) != 0)
        futex(&pool->gen, FUTEX_WAKE_PRIVATE, INT_MAX);

    run_chunk(pool, 0);

    int spins = 0;
    while (__atomic_load_n(&pool->pending, __ATOMIC_ACQUIRE) != 0) {
        if (spins < SPIN_ITERS) {
            spins++;
            cpu_relax();
        } else {
            __atomic_store_n(&pool->caller_sleeping, 1, __ATOMIC_SEQ_CST);
            futex(&pool->done_word, FUTEX_WAIT_PRIVATE, 0);
            __atomic_store_n(&pool->caller_sleeping, 0, __ATOMIC_SEQ_CST);
        }
    }
}
