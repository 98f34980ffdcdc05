/*
 * fuzz_kvx_msg.c - libFuzzer target for kvxfer's control-plane decoder.
 *
 * Every frame a peer can send goes through kvx_msg_decode first.  The target
 * decodes the input without and with a secret (authenticated frames check their MAC
 * before the payload), and re-encodes what decoded so the encoder sees every shape
 * the decoder accepts; a re-encoded frame must decode again to the same fields.
 *
 * Build (clang, from the source root, after a normal cmake configure):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon -Ikvxfer \
 *     tests/fuzz/fuzz_kvx_msg.c kvxfer/kvx_msg.c common/pd_util.c common/pd_log.c \
 *     common/pd_status.c $(pkg-config --cflags --libs gnutls) -o fuzz_kvx_msg
 *   ./fuzz_kvx_msg -dict=tests/fuzz/kvx_msg.dict -max_len=70000 -max_total_time=60
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvx_msg.h"

static void check_reencode(const kvx_msg_t *m)
{
    pd_buf_t buf = {0};
    kvx_msg_t again;

    if (kvx_msg_encode(m, NULL, &buf) == PD_OK) {
        if (kvx_msg_decode((const uint8_t *)buf.data, buf.len, NULL, &again) != PD_OK ||
            again.type != m->type || again.seq != m->seq || again.n_ids != m->n_ids ||
            strcmp(again.req_id, m->req_id) != 0 || again.desc_len != m->desc_len)
            abort();
        if (m->n_ids && memcmp(again.ids, m->ids, m->n_ids * sizeof(uint32_t)) != 0)
            abort();
        kvx_msg_cleanup(&again);
    }
    pd_buf_cleanup(&buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kvx_msg_t m;

    if (kvx_msg_decode(data, size, NULL, &m) == PD_OK)
        check_reencode(&m);
    kvx_msg_cleanup(&m);
    if (kvx_msg_decode(data, size, "fuzz-secret", &m) == PD_OK)
        check_reencode(&m);
    kvx_msg_cleanup(&m);
    return 0;
}
