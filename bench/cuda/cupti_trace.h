/*
 * cupti_trace.h - a small CUPTI activity tracer for bench_cuda --trace: every kernel,
 * memcpy and memset the GPU ran, with its real start and end (nothing serialized or
 * replayed, unlike Nsight Compute), and the runtime API calls that queued them, written
 * as two CSV files that scripts/nsys_gaps.py reads (the same columns as
 * `nsys stats -r cuda_gpu_trace,cuda_api_trace -f csv`).  Built when CMake finds CUPTI
 * (CUDA::cupti); otherwise the functions say so and fail.
 */
#ifndef PD_CUPTI_TRACE_H
#define PD_CUPTI_TRACE_H

#ifdef __cplusplus
extern "C" {
#endif

/* Start recording (0 on success; a message on stderr otherwise). */
int pd_trace_start(void);
/* Stop, flush and write DIR/tl_cuda_gpu_trace.csv and DIR/tl_cuda_api_trace.csv. */
int pd_trace_stop(const char *dir);

#ifdef __cplusplus
}
#endif
#endif
