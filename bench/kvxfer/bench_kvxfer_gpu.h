/*
 * bench_kvxfer_gpu.h - the --gpu part of bench_kvxfer (built with CUDA only).
 */
#ifndef BENCH_KVXFER_GPU_H
#define BENCH_KVXFER_GPU_H

#include <stddef.h>

/* Ceilings and every GPU path for each block size in block_kib ("2048,16"), total bytes
 * per pull, iters timed pulls; modes: comma list ("ipc,nccl", NULL or "" = all);
 * conc_list: pulls in flight at once, a comma list ("1,4"; NULL or "" = "1").
 * Prints a table (unless json_only) and a "bench_kvxfer_gpu {...}" JSON line.
 * Returns 0, or 77 without a CUDA device. */
int bench_kvxfer_gpu(size_t total, int iters, const char *block_kib, const char *modes, const char *conc_list,
                     int json_only);

#endif /* BENCH_KVXFER_GPU_H */
