/*
 * kvx_msg.h - the control-plane wire format (internal to kvxfer; fuzzed).
 *
 * Every message is one ZeroMQ frame:
 *   header (40 bytes, little-endian):
 *     u32 magic "KVXM" | u16 version | u16 type | u16 flags | u16 reserved (0)
 *     u64 seq | u64 ts_ms (unix) | u64 nonce | u32 payload_len
 *   payload (payload_len bytes, fields per type, see kvx_msg.c)
 *   mac (32 bytes, only with KVX_MSG_F_AUTH): HMAC-SHA256(secret, header || payload)
 * Strings are u16 length + bytes (no NUL, no control characters), byte strings u32
 * length + bytes, id arrays u32 count + count * u32.  The decoder checks every length
 * against the frame and the limits below, and refuses trailing bytes.  No pointer,
 * address or offset is ever taken from the wire: blocks travel as indexes.
 */
#ifndef KVX_MSG_H
#define KVX_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "kvx.h"
#include "pd_util.h"

#define KVX_MSG_MAGIC       0x4d58564bu /* "KVXM" little-endian */
#define KVX_MSG_HDR_BYTES   40u
#define KVX_MSG_MAC_BYTES   32u
#define KVX_MSG_MAX_BYTES   (1u << 20)  /* also ZMQ_MAXMSGSIZE */
#define KVX_MSG_MAX_DESC    (64u << 10)
#define KVX_MSG_MSG_MAX     256
#define KVX_MSG_F_AUTH      1u
#define KVX_MSG_CLOCK_SKEW_MS 60000u    /* authenticated messages older/newer are refused */

typedef enum {
    KVX_MSG_HELLO = 1,     /* consumer -> producer: compat fields + hash */
    KVX_MSG_HELLO_OK = 2,  /* producer -> consumer: region description */
    KVX_MSG_ACQUIRE = 3,   /* consumer: I am about to read these ids of req_id */
    KVX_MSG_HEARTBEAT = 4, /* consumer: still reading req_id */
    KVX_MSG_RELEASE = 5,   /* consumer: done with req_id (vLLM "<req_id>:<n>") */
    KVX_MSG_ABORT = 6,     /* consumer: drop req_id without reading */
    KVX_MSG_OK = 7,        /* reply */
    KVX_MSG_ERROR = 8,     /* reply: status + one line */
    KVX_MSG_SERVE = 9,     /* consumer: send me these ids of req_id (two-sided
                            * transports), with the connector's blob */
    KVX_MSG_TYPE_MAX = 9
} kvx_msg_type_t;

typedef struct kvx_msg {
    uint16_t type;
    uint16_t flags;
    uint64_t seq;
    uint64_t ts_ms;
    uint64_t nonce;

    /* HELLO */
    char engine_id[KVX_ID_MAX];       /* also HELLO_OK */
    kvx_compat_t compat;
    uint32_t proto_version;
    char compat_hash[65];
    /* HELLO_OK */
    char connector[KVX_NAME_MAX];
    uint32_t n_blocks;
    uint64_t block_bytes;
    uint32_t mem_type;
    const uint8_t *desc;              /* borrowed from the decoded frame; SERVE's blob too */
    uint32_t desc_len;
    /* ACQUIRE / HEARTBEAT / RELEASE / ABORT / SERVE */
    char req_id[KVX_ID_MAX];
    uint32_t n_ids;                   /* ACQUIRE, SERVE */
    uint32_t *ids;                    /* malloc'd by the decoder; kvx_msg_cleanup */
    uint32_t n_consumers;             /* RELEASE */
    /* OK / ERROR */
    int32_t status;
    uint64_t value;                   /* OK: lease ms left */
    char message[KVX_MSG_MSG_MAX];
} kvx_msg_t;

/* Encode m into out (appended).  ts_ms/nonce are filled in when zero.  With a
 * non-NULL secret the message carries the auth flag and a MAC.
 * PD_ERR_INVAL for a field over its limit. */
pd_status_t kvx_msg_encode(const kvx_msg_t *m, const char *secret, pd_buf_t *out);

/* Decode one frame into *m (zeroed first; call kvx_msg_cleanup afterwards, also on
 * failure).  With a non-NULL secret the frame must carry a valid MAC and a fresh
 * timestamp (PD_ERR_PERM otherwise); without one an authenticated frame is refused
 * with PD_ERR_PERM too (the peer expects auth we cannot check).  PD_ERR_FORMAT for
 * anything malformed, PD_ERR_MISMATCH for another protocol version. */
pd_status_t kvx_msg_decode(const uint8_t *buf, size_t len, const char *secret, kvx_msg_t *m);

void kvx_msg_cleanup(kvx_msg_t *m);

const char *kvx_msg_type_name(unsigned type);

#endif /* KVX_MSG_H */
