/*
 * kcuda_rt.cu - thin checked wrappers over the CUDA runtime (device, memory, streams,
 * copies, events) so that C code never includes CUDA headers.
 */
#include "kcuda_internal.cuh"

#include <string.h>

extern "C" pd_status_t kcuda_device_open(int device, char *name, size_t name_len, int *sm_count_p)
{
    cudaDeviceProp prop;
    int n = 0;
    KCUDA_CALL(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
    if (device < 0 || device >= n) {
        PD_LOG_ERR("cuda: device %d does not exist (%d devices)", device, n);
        return PD_ERR_INVAL;
    }
    KCUDA_CALL(cudaSetDevice(device), "cudaSetDevice");
    KCUDA_CALL(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    if (name && name_len) {
        strncpy(name, prop.name, name_len - 1);
        name[name_len - 1] = 0;
    }
    if (sm_count_p)
        *sm_count_p = prop.multiProcessorCount;
    return PD_OK;
}

extern "C" pd_status_t kcuda_mem_info(size_t *free_p, size_t *total_p)
{
    size_t f = 0, t = 0;
    KCUDA_CALL(cudaMemGetInfo(&f, &t), "cudaMemGetInfo");
    if (free_p)
        *free_p = f;
    if (total_p)
        *total_p = t;
    return PD_OK;
}

extern "C" pd_status_t kcuda_malloc(size_t bytes, void **ptr_p)
{
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        PD_LOG_ERR("cudaMalloc(%zu): %s", bytes, cudaGetErrorString(e));
        cudaGetLastError(); /* clear the sticky-free error so later launches are clean */
        return e == cudaErrorMemoryAllocation ? PD_ERR_NOMEM : PD_ERR_CUDA;
    }
    *ptr_p = p;
    return PD_OK;
}

extern "C" void kcuda_free(void *ptr)
{
    if (ptr)
        cudaFree(ptr);
}

extern "C" pd_status_t kcuda_host_alloc(size_t bytes, void **ptr_p)
{
    void *p = NULL;
    KCUDA_CALL(cudaMallocHost(&p, bytes), "cudaMallocHost");
    *ptr_p = p;
    return PD_OK;
}

extern "C" void kcuda_host_free(void *ptr)
{
    if (ptr)
        cudaFreeHost(ptr);
}

extern "C" pd_status_t kcuda_stream_create(kcuda_stream_t *stream_p)
{
    cudaStream_t s;
    KCUDA_CALL(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    *stream_p = s;
    return PD_OK;
}

extern "C" void kcuda_stream_destroy(kcuda_stream_t stream)
{
    if (stream)
        cudaStreamDestroy(stream);
}

extern "C" pd_status_t kcuda_stream_sync(kcuda_stream_t stream)
{
    KCUDA_CALL(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    return PD_OK;
}

extern "C" pd_status_t kcuda_memcpy_async(void *dst, const void *src, size_t n, kcuda_stream_t stream)
{
    if (n == 0)
        return PD_OK;
    KCUDA_CALL(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, stream), "cudaMemcpyAsync");
    return PD_OK;
}

extern "C" pd_status_t kcuda_memset_async(void *dst, int value, size_t n, kcuda_stream_t stream)
{
    if (n == 0)
        return PD_OK;
    KCUDA_CALL(cudaMemsetAsync(dst, value, n, stream), "cudaMemsetAsync");
    return PD_OK;
}

extern "C" const char *kcuda_last_error(void)
{
    return cudaGetErrorString(cudaPeekAtLastError());
}

extern "C" pd_status_t kcuda_event_create(kcuda_event_t *ev_p)
{
    cudaEvent_t e;
    KCUDA_CALL(cudaEventCreate(&e), "cudaEventCreate");
    *ev_p = e;
    return PD_OK;
}

extern "C" void kcuda_event_destroy(kcuda_event_t ev)
{
    if (ev)
        cudaEventDestroy(ev);
}

extern "C" pd_status_t kcuda_event_record(kcuda_event_t ev, kcuda_stream_t stream)
{
    KCUDA_CALL(cudaEventRecord(ev, stream), "cudaEventRecord");
    return PD_OK;
}

extern "C" pd_status_t kcuda_event_elapsed_ms(kcuda_event_t start, kcuda_event_t end, float *ms_p)
{
    KCUDA_CALL(cudaEventSynchronize(end), "cudaEventSynchronize");
    KCUDA_CALL(cudaEventElapsedTime(ms_p, start, end), "cudaEventElapsedTime");
    return PD_OK;
}

/* ---- CUDA graphs ---- */

extern "C" pd_status_t kcuda_capture_begin(kcuda_stream_t stream)
{
    KCUDA_CALL(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    return PD_OK;
}

extern "C" pd_status_t kcuda_capture_end(kcuda_stream_t stream, kcuda_graph_t *graph_p)
{
    cudaGraph_t g = NULL;
    cudaGraphExec_t x = NULL;
    cudaError_t e = cudaStreamEndCapture(stream, &g);
    if (e != cudaSuccess || g == NULL) {
        PD_LOG_ERR("cudaStreamEndCapture: %s", cudaGetErrorString(e));
        if (g)
            cudaGraphDestroy(g);
        cudaGetLastError(); /* an invalidated capture leaves a launch error behind */
        return PD_ERR_CUDA;
    }
    e = cudaGraphInstantiateWithFlags(&x, g, 0);
    cudaGraphDestroy(g); /* the executable graph keeps what it needs */
    if (e != cudaSuccess) {
        PD_LOG_ERR("cudaGraphInstantiate: %s", cudaGetErrorString(e));
        cudaGetLastError();
        return PD_ERR_CUDA;
    }
    *graph_p = x;
    return PD_OK;
}

extern "C" bool kcuda_capturing(kcuda_stream_t stream)
{
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &cs) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return cs != cudaStreamCaptureStatusNone;
}

extern "C" pd_status_t kcuda_graph_launch(kcuda_graph_t graph, kcuda_stream_t stream)
{
    KCUDA_CALL(cudaGraphLaunch(graph, stream), "cudaGraphLaunch");
    return PD_OK;
}

extern "C" void kcuda_graph_destroy(kcuda_graph_t graph)
{
    if (graph)
        cudaGraphExecDestroy(graph);
}
