/*
 * kvx_msg.c - encoder and explicit, length-checked decoder of control messages.
 *
 * Payload fields per type (see kvx_msg.h for the primitives):
 *   HELLO      str engine_id, str model, str dtype, u32 n_layers, u32 n_kv_heads,
 *              u32 head_dim, u32 block_size, u32 layout_id, u32 proto_version,
 *              str compat_hash
 *   HELLO_OK   str engine_id, str connector, u32 n_blocks, u64 block_bytes,
 *              u32 mem_type, bytes desc
 *   ACQUIRE    str req_id, ids
 *   SERVE      str req_id, ids, bytes blob
 *   HEARTBEAT  str req_id
 *   RELEASE    str req_id, u32 n_consumers
 *   ABORT      str req_id
 *   OK         u64 value, str message
 *   ERROR      i32 status, str message
 * The decoder never reads past the frame, never allocates more than the frame could
 * describe (ids count is checked against the bytes left first) and refuses trailing
 * bytes, unknown types, nonzero reserved bits and strings with control characters.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "kvx_msg.h"
#include "pd_log.h"

/* ---- primitives: writer ---- */
static pd_status_t put_bytes(pd_buf_t *b, const void *p, size_t n) { return pd_buf_append(b, p, n); }

static pd_status_t put_u16(pd_buf_t *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    return put_bytes(b, x, 2);
}

static pd_status_t put_u32(pd_buf_t *b, uint32_t v)
{
    uint8_t x[4];
    for (int i = 0; i < 4; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    return put_bytes(b, x, 4);
}

static pd_status_t put_u64(pd_buf_t *b, uint64_t v)
{
    uint8_t x[8];
    for (int i = 0; i < 8; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    return put_bytes(b, x, 8);
}

static pd_status_t put_str(pd_buf_t *b, const char *s, size_t max)
{
    size_t n = strlen(s);
    pd_status_t st;

    if (n >= max || n > 0xffff)
        return PD_ERR_INVAL;
    if ((st = put_u16(b, (uint16_t)n)) != PD_OK)
        return st;
    return put_bytes(b, s, n);
}

/* ---- primitives: reader ---- */
typedef struct {
    const uint8_t *p;
    size_t left;
} rd_t;

static int get_raw(rd_t *r, void *out, size_t n)
{
    if (r->left < n)
        return 0;
    memcpy(out, r->p, n);
    r->p += n;
    r->left -= n;
    return 1;
}

static int get_u16(rd_t *r, uint16_t *v)
{
    uint8_t x[2];
    if (!get_raw(r, x, 2))
        return 0;
    *v = (uint16_t)(x[0] | (x[1] << 8));
    return 1;
}

static int get_u32(rd_t *r, uint32_t *v)
{
    uint8_t x[4];
    if (!get_raw(r, x, 4))
        return 0;
    *v = (uint32_t)x[0] | (uint32_t)x[1] << 8 | (uint32_t)x[2] << 16 | (uint32_t)x[3] << 24;
    return 1;
}

static int get_u64(rd_t *r, uint64_t *v)
{
    uint32_t lo, hi;
    if (!get_u32(r, &lo) || !get_u32(r, &hi))
        return 0;
    *v = (uint64_t)hi << 32 | lo;
    return 1;
}

/* A string into dst (cap bytes incl. NUL); refuses control characters. */
static int get_str(rd_t *r, char *dst, size_t cap)
{
    uint16_t n;

    if (!get_u16(r, &n) || n >= cap || r->left < n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (r->p[i] < 0x20 || r->p[i] == 0x7f)
            return 0;
    memcpy(dst, r->p, n);
    dst[n] = '\0';
    r->p += n;
    r->left -= n;
    return 1;
}

static uint64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

static int hmac(const char *secret, const void *data, size_t len, uint8_t out[32])
{
    return gnutls_hmac_fast(GNUTLS_MAC_SHA256, secret, strlen(secret), data, len, out) == 0;
}

const char *kvx_msg_type_name(unsigned type)
{
    static const char *const names[] = {"?", "HELLO", "HELLO_OK", "ACQUIRE", "HEARTBEAT",
                                        "RELEASE", "ABORT", "OK", "ERROR", "SERVE"};
    return type <= KVX_MSG_TYPE_MAX ? names[type] : "?";
}

/* ---- encode ---- */
static pd_status_t encode_payload(const kvx_msg_t *m, pd_buf_t *b)
{
    pd_status_t st = PD_OK;

#define TRY(x) do { if ((st = (x)) != PD_OK) return st; } while (0)
    switch (m->type) {
    case KVX_MSG_HELLO:
        TRY(put_str(b, m->engine_id, KVX_ID_MAX));
        TRY(put_str(b, m->compat.model, sizeof(m->compat.model)));
        TRY(put_str(b, m->compat.dtype, sizeof(m->compat.dtype)));
        TRY(put_u32(b, m->compat.n_layers));
        TRY(put_u32(b, m->compat.n_kv_heads));
        TRY(put_u32(b, m->compat.head_dim));
        TRY(put_u32(b, m->compat.block_size));
        TRY(put_u32(b, m->compat.layout_id));
        TRY(put_u32(b, m->proto_version));
        TRY(put_str(b, m->compat_hash, sizeof(m->compat_hash)));
        break;
    case KVX_MSG_HELLO_OK:
        if (m->desc_len > KVX_MSG_MAX_DESC)
            return PD_ERR_INVAL;
        TRY(put_str(b, m->engine_id, KVX_ID_MAX));
        TRY(put_str(b, m->connector, KVX_NAME_MAX));
        TRY(put_u32(b, m->n_blocks));
        TRY(put_u64(b, m->block_bytes));
        TRY(put_u32(b, m->mem_type));
        TRY(put_u32(b, m->desc_len));
        if (m->desc_len)
            TRY(put_bytes(b, m->desc, m->desc_len));
        break;
    case KVX_MSG_ACQUIRE:
    case KVX_MSG_SERVE:
        if (m->n_ids > KVX_MAX_BLOCKS_PER_REQ || m->desc_len > KVX_MSG_MAX_DESC)
            return PD_ERR_INVAL;
        TRY(put_str(b, m->req_id, KVX_ID_MAX));
        TRY(put_u32(b, m->n_ids));
        for (uint32_t i = 0; i < m->n_ids; i++)
            TRY(put_u32(b, m->ids[i]));
        if (m->type == KVX_MSG_SERVE) {
            TRY(put_u32(b, m->desc_len));
            if (m->desc_len)
                TRY(put_bytes(b, m->desc, m->desc_len));
        }
        break;
    case KVX_MSG_HEARTBEAT:
    case KVX_MSG_ABORT:
        TRY(put_str(b, m->req_id, KVX_ID_MAX));
        break;
    case KVX_MSG_RELEASE:
        TRY(put_str(b, m->req_id, KVX_ID_MAX));
        TRY(put_u32(b, m->n_consumers));
        break;
    case KVX_MSG_OK:
        TRY(put_u64(b, m->value));
        TRY(put_str(b, m->message, KVX_MSG_MSG_MAX));
        break;
    case KVX_MSG_ERROR:
        TRY(put_u32(b, (uint32_t)m->status));
        TRY(put_str(b, m->message, KVX_MSG_MSG_MAX));
        break;
    default:
        return PD_ERR_INVAL;
    }
#undef TRY
    return st;
}

pd_status_t kvx_msg_encode(const kvx_msg_t *m, const char *secret, pd_buf_t *out)
{
    pd_buf_t payload = {0};
    pd_status_t st;
    size_t start = out->len, total;
    uint64_t nonce = m->nonce;

    if ((st = encode_payload(m, &payload)) != PD_OK)
        goto out_payload;
    if (payload.len > KVX_MSG_MAX_BYTES - KVX_MSG_HDR_BYTES - KVX_MSG_MAC_BYTES) {
        st = PD_ERR_LIMIT;
        goto out_payload;
    }
    if (nonce == 0 && gnutls_rnd(GNUTLS_RND_NONCE, &nonce, sizeof(nonce)) != 0) {
        st = PD_ERR_INTERNAL;
        goto out_payload;
    }
    if ((st = put_u32(out, KVX_MSG_MAGIC)) || (st = put_u16(out, KVX_PROTO_VERSION)) ||
        (st = put_u16(out, m->type)) || (st = put_u16(out, secret ? KVX_MSG_F_AUTH : 0)) ||
        (st = put_u16(out, 0)) || (st = put_u64(out, m->seq)) ||
        (st = put_u64(out, m->ts_ms ? m->ts_ms : now_ms())) || (st = put_u64(out, nonce)) ||
        (st = put_u32(out, (uint32_t)payload.len)))
        goto out_payload;
    if (payload.len && (st = pd_buf_append(out, payload.data, payload.len)) != PD_OK)
        goto out_payload;
    total = out->len - start;
    if (secret != NULL) {
        uint8_t mac[32];
        if (!hmac(secret, out->data + start, total, mac)) {
            st = PD_ERR_INTERNAL;
            goto out_payload;
        }
        st = pd_buf_append(out, mac, sizeof(mac));
    }
out_payload:
    pd_buf_cleanup(&payload);
    return st;
}

/* ---- decode ---- */
static pd_status_t decode_payload(rd_t *r, kvx_msg_t *m)
{
    switch (m->type) {
    case KVX_MSG_HELLO:
        if (!get_str(r, m->engine_id, sizeof(m->engine_id)) ||
            !get_str(r, m->compat.model, sizeof(m->compat.model)) ||
            !get_str(r, m->compat.dtype, sizeof(m->compat.dtype)) ||
            !get_u32(r, &m->compat.n_layers) || !get_u32(r, &m->compat.n_kv_heads) ||
            !get_u32(r, &m->compat.head_dim) || !get_u32(r, &m->compat.block_size) ||
            !get_u32(r, &m->compat.layout_id) || !get_u32(r, &m->proto_version) ||
            !get_str(r, m->compat_hash, sizeof(m->compat_hash)))
            return PD_ERR_FORMAT;
        return PD_OK;
    case KVX_MSG_HELLO_OK:
        if (!get_str(r, m->engine_id, sizeof(m->engine_id)) ||
            !get_str(r, m->connector, sizeof(m->connector)) || !get_u32(r, &m->n_blocks) ||
            !get_u64(r, &m->block_bytes) || !get_u32(r, &m->mem_type) ||
            !get_u32(r, &m->desc_len))
            return PD_ERR_FORMAT;
        if (m->mem_type > KVX_MEM_CUDA || m->desc_len > KVX_MSG_MAX_DESC || m->desc_len > r->left)
            return PD_ERR_FORMAT;
        m->desc = r->p;
        r->p += m->desc_len;
        r->left -= m->desc_len;
        return PD_OK;
    case KVX_MSG_ACQUIRE:
    case KVX_MSG_SERVE:
        if (!get_str(r, m->req_id, sizeof(m->req_id)) || !get_u32(r, &m->n_ids))
            return PD_ERR_FORMAT;
        /* the count must fit in what is left before anything is allocated */
        if (m->n_ids > KVX_MAX_BLOCKS_PER_REQ || (size_t)m->n_ids * 4u > r->left)
            return PD_ERR_FORMAT;
        if (m->n_ids) {
            m->ids = malloc((size_t)m->n_ids * sizeof(uint32_t));
            if (m->ids == NULL)
                return PD_ERR_NOMEM;
            for (uint32_t i = 0; i < m->n_ids; i++)
                (void)get_u32(r, &m->ids[i]);
        }
        if (m->type == KVX_MSG_SERVE) {
            if (!get_u32(r, &m->desc_len) || m->desc_len > KVX_MSG_MAX_DESC || m->desc_len > r->left)
                return PD_ERR_FORMAT;
            m->desc = r->p;
            r->p += m->desc_len;
            r->left -= m->desc_len;
        }
        return PD_OK;
    case KVX_MSG_HEARTBEAT:
    case KVX_MSG_ABORT:
        return get_str(r, m->req_id, sizeof(m->req_id)) ? PD_OK : PD_ERR_FORMAT;
    case KVX_MSG_RELEASE:
        return get_str(r, m->req_id, sizeof(m->req_id)) && get_u32(r, &m->n_consumers)
                   ? PD_OK : PD_ERR_FORMAT;
    case KVX_MSG_OK:
        return get_u64(r, &m->value) && get_str(r, m->message, sizeof(m->message))
                   ? PD_OK : PD_ERR_FORMAT;
    case KVX_MSG_ERROR: {
        uint32_t s;
        if (!get_u32(r, &s) || !get_str(r, m->message, sizeof(m->message)))
            return PD_ERR_FORMAT;
        m->status = (int32_t)s;
        /* an error reply must carry an error status */
        return m->status < 0 && m->status > -1000 ? PD_OK : PD_ERR_FORMAT;
    }
    default:
        return PD_ERR_FORMAT;
    }
}

pd_status_t kvx_msg_decode(const uint8_t *buf, size_t len, const char *secret, kvx_msg_t *m)
{
    rd_t r = {buf, len};
    uint32_t magic, plen;
    uint16_t version, reserved;
    size_t body;
    pd_status_t st;

    memset(m, 0, sizeof(*m));
    if (buf == NULL || len < KVX_MSG_HDR_BYTES || len > KVX_MSG_MAX_BYTES)
        return PD_ERR_FORMAT;
    (void)get_u32(&r, &magic);
    (void)get_u16(&r, &version);
    (void)get_u16(&r, &m->type);
    (void)get_u16(&r, &m->flags);
    (void)get_u16(&r, &reserved);
    (void)get_u64(&r, &m->seq);
    (void)get_u64(&r, &m->ts_ms);
    (void)get_u64(&r, &m->nonce);
    (void)get_u32(&r, &plen);
    if (magic != KVX_MSG_MAGIC || reserved != 0 || (m->flags & ~KVX_MSG_F_AUTH) != 0)
        return PD_ERR_FORMAT;
    if (version != KVX_PROTO_VERSION)
        return PD_ERR_MISMATCH;
    if (m->type == 0 || m->type > KVX_MSG_TYPE_MAX)
        return PD_ERR_FORMAT;
    if (pd_add_size(KVX_MSG_HDR_BYTES, plen, &body) != PD_OK ||
        body + ((m->flags & KVX_MSG_F_AUTH) ? KVX_MSG_MAC_BYTES : 0) != len)
        return PD_ERR_FORMAT;
    if (secret != NULL) {
        uint8_t mac[32];
        uint64_t now = now_ms();

        if (!(m->flags & KVX_MSG_F_AUTH))
            return PD_ERR_PERM;
        if (!hmac(secret, buf, body, mac) || !pd_ct_equal(mac, 32, buf + body, 32))
            return PD_ERR_PERM;
        if (m->ts_ms + KVX_MSG_CLOCK_SKEW_MS < now || m->ts_ms > now + KVX_MSG_CLOCK_SKEW_MS)
            return PD_ERR_PERM;
    } else if (m->flags & KVX_MSG_F_AUTH) {
        return PD_ERR_PERM;
    }
    r.left = plen;
    st = decode_payload(&r, m);
    if (st == PD_OK && r.left != 0)
        st = PD_ERR_FORMAT;
    return st;
}

void kvx_msg_cleanup(kvx_msg_t *m)
{
    if (m == NULL)
        return;
    free(m->ids);
    m->ids = NULL;
    m->n_ids = 0;
}
