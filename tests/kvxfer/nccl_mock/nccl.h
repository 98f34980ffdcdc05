/*
 * nccl.h (mock) - the NCCL declarations kvxfer/kvx_nccl.c uses, implemented in-process
 * by mock_cuda_nccl.c: a communicator is one end of a pair found by its unique id; a
 * send queues a message on the pair when its stream reaches it, a receive completes when
 * one is there.  Non-blocking init: ncclCommGetAsyncError says ncclInProgress until
 * both ranks joined.  See cuda_runtime_api.h here.
 */
#ifndef MOCK_NCCL_H
#define MOCK_NCCL_H

#include <stddef.h>

#include "cuda_runtime_api.h"

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7
} ncclResult_t;

typedef struct {
    char internal[128];
} ncclUniqueId;

typedef struct ncclComm *ncclComm_t;
typedef enum { ncclChar = 0 } ncclDataType_t;

typedef struct ncclConfig_v {
    size_t size;
    unsigned int magic;
    unsigned int version;
    int blocking;
} ncclConfig_t;

#define NCCL_CONFIG_INITIALIZER {sizeof(ncclConfig_t), 0xcafebeef, 0, 1}

ncclResult_t ncclGetVersion(int *version);
ncclResult_t ncclGetUniqueId(ncclUniqueId *id);
ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t *config);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *state);
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclSend(const void *buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream);
ncclResult_t ncclRecv(void *buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream);
const char *ncclGetErrorString(ncclResult_t r);

/* test hooks */
void mock_nccl_drop_sends(int on);   /* sends vanish: a frozen producer */
size_t mock_nccl_messages_sent(void);
size_t mock_cuda_kernel_launches(void);
/* cudaMemcpyAsync calls (stream copies) and cudaIpcOpenMemHandle calls so far */
size_t mock_cuda_stream_copies(void);
size_t mock_cuda_ipc_opens(void);
/* cudaHostRegister calls not yet undone by cudaHostUnregister */
long mock_cuda_host_regs_live(void);
size_t mock_cuda_bytes_live(void);   /* cudaMalloc'd bytes not freed */

#endif
