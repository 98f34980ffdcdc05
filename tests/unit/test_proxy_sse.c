/* test_proxy_sse.c - the relay's per-event scanner (proxy/px_sse.c), compiled in here
 * because the unit tests link only the libraries.  Fixed cases (the node's chunk
 * shapes, escapes, surrogates, duplicates, odd shapes) and a differential test: many
 * events and byte-level mutations of them, each scanned and also parsed with cJSON the
 * way the relay did before the scanner; whenever the scanner answers, its text and
 * finish flag must equal cJSON's. */
#include "../../proxy/px_sse.c"

#include <stdio.h>
#include <stdlib.h>

#include "pd_test.h"

/* The relay's old reading of an event: 0 = not JSON; else has_choice, text, finished. */
typedef struct oracle {
    int valid, has_choice, finished, has_text;
    char text[512];
} oracle_t;

static void oracle(const char *json, size_t len, int is_chat, oracle_t *o)
{
    memset(o, 0, sizeof(*o));
    cJSON *j = cJSON_ParseWithLength(json, len);
    if (j == NULL)
        return;
    o->valid = 1;
    const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    if (c0) {
        o->has_choice = 1;
        const cJSON *t = is_chat ? cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c0, "delta"),
                                                                    "content")
                                 : cJSON_GetObjectItemCaseSensitive(c0, "text");
        const cJSON *fr = cJSON_GetObjectItemCaseSensitive(c0, "finish_reason");
        if (cJSON_IsString(t) && t->valuestring[0]) {
            o->has_text = 1;
            snprintf(o->text, sizeof(o->text), "%s", t->valuestring);
        }
        o->finished = cJSON_IsString(fr);
    }
    cJSON_Delete(j);
}

/* 1 when the scanner answered (and the relay's outcome equals cJSON's: the text
 * recorded, the finish flag, and whether a resumed chat leg's event would be dropped),
 * 0 when it left the event to cJSON; a disagreement fails the test. */
static int scan_agrees(const char *json, size_t len, int is_chat)
{
    px_sse_event_t ev;
    oracle_t o;
    oracle(json, len, is_chat, &o);
    if (px_sse_scan(json, len, is_chat, &ev) != 0)
        return 0;
    pd_buf_t b = {0};
    int ok = 1;
    if (ev.text && ev.text_len)
        ok = ev.text_escaped ? px_sse_unescape(ev.text, ev.text_len, &b) == 0
                             : pd_buf_append(&b, ev.text, ev.text_len) == PD_OK;
    if (!ok) {
        pd_buf_cleanup(&b);
        return 0;
    }
    int s_text = b.len > 0, s_drop = ev.has_choice && !s_text && !ev.finished;
    int o_drop = o.has_choice && !o.has_text && !o.finished;
    int agree = o.finished == ev.finished && o.has_text == s_text && o_drop == s_drop &&
                (!o.has_text || strcmp(o.text, b.data) == 0);
    if (!agree) {
        printf("  disagree (chat %d): %.*s\n    cJSON: valid %d choice %d fin %d text '%s'; scan: choice %d fin %d "
               "text '%s'\n",
               is_chat, (int)len, json, o.valid, o.has_choice, o.finished, o.text, ev.has_choice, ev.finished,
               b.data ? b.data : "");
    }
    PD_CHECK(agree);
    pd_buf_cleanup(&b);
    return 1;
}

static const char *const chat_events[] = {
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}",
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"content\":\" Hello\"},\"logprobs\":null,\"finish_reason\":null}]}",
    "{\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"line\\nnext \\\"q\\\" \\u00e9\\ud83d\\ude00\"},"
    "\"finish_reason\":null}]}",
    "{\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}",
    "{\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":16,\"total_tokens\":21}}",
    "{\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\",\"content\":\"y\"},\"finish_reason\":null,"
    "\"finish_reason\":\"length\"}]}",
    "{\"choices\":[{\"delta\":{\"content\":\"a\"},\"logprobs\":{\"content\":[{\"token\":\"a\",\"logprob\":-0.5,"
    "\"bytes\":[97],\"top_logprobs\":[]}]},\"finish_reason\":null},{\"delta\":{\"content\":\"b\"}}]}",
    "{\"choices\":[5]}",
    "{\"choices\":[{\"delta\":\"content\",\"finish_reason\":1}]}",
    "{\"choices\":[{\"delta\":{\"content\":7},\"finish_reason\":true}]}",
    " { \"choices\" : [ { \"delta\" : { \"content\" : \"sp\" } , \"finish_reason\" : \"stop\" } ] } ",
    "{\"error\":{\"message\":\"boom\",\"type\":\"InternalServerError\",\"param\":null,\"code\":500}}",
    "{\"choices\":[{\"delta\":{\"content\":\"1e5 -2.5E-3\"},\"n\":[-1,2.5e10,true,false,null,{}],\"finish_reason\":null}]}",
};

static const char *const cmpl_events[] = {
    "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,"
    "\"text\":\" world\",\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null}]}",
    "{\"id\":\"cmpl-1\",\"choices\":[{\"index\":0,\"text\":\"\",\"logprobs\":null,\"finish_reason\":\"length\"}]}",
    "{\"choices\":[{\"text\":\"tab\\there\\\\ slash\\/\"}]}",
    "{\"choices\":[{\"text\":\"\\u0000nul\"}]}",
    "{\"choices\":[{\"text\":\"\\ud83d alone\"}]}",
    "{\"choices\":[{\"text\":\"bad \\x escape\"}]}",
    "{\"choices\":{\"0\":{\"text\":\"object choices\"}}}",
    "{\"choices\":[{\"text\":\"a\"}]} trailing",
    "{\"choices\":[{\"text\":\"unterminated}]}",
    "[1,2,3]",
    "",
    "{\"choices\":[{\"text\":\"a\",\"x\":\"\\udc00\",\"n\":1-2}]}",
    "{\"choices\":[{\"te\\u0078t\":\"escaped key\"}]}",
};

PD_TEST(test_fixed_events)
{
    px_sse_event_t ev;
    /* the common shapes are scanned (no fallback) with the right fields */
    PD_CHECK_EQ_INT(px_sse_scan(chat_events[1], strlen(chat_events[1]), 1, &ev), 0);
    PD_CHECK(ev.has_choice && !ev.finished && ev.text && ev.text_len == 6 && memcmp(ev.text, " Hello", 6) == 0);
    PD_CHECK_EQ_INT(px_sse_scan(chat_events[3], strlen(chat_events[3]), 1, &ev), 0);
    PD_CHECK(ev.has_choice && ev.finished && ev.text == NULL);
    PD_CHECK_EQ_INT(px_sse_scan(chat_events[4], strlen(chat_events[4]), 1, &ev), 0);
    PD_CHECK(!ev.has_choice && !ev.finished);
    PD_CHECK_EQ_INT(px_sse_scan(chat_events[5], strlen(chat_events[5]), 1, &ev), 0);
    PD_CHECK(ev.text_len == 1 && ev.text[0] == 'x' && !ev.finished); /* first duplicate wins */
    PD_CHECK_EQ_INT(px_sse_scan(cmpl_events[0], strlen(cmpl_events[0]), 0, &ev), 0);
    PD_CHECK(ev.text_len == 6 && memcmp(ev.text, " world", 6) == 0 && !ev.finished);
    /* chat text key is not read for completions and the other way round */
    PD_CHECK_EQ_INT(px_sse_scan(cmpl_events[0], strlen(cmpl_events[0]), 1, &ev), 0);
    PD_CHECK(ev.text == NULL);
    /* escapes decode */
    PD_CHECK_EQ_INT(px_sse_scan(chat_events[2], strlen(chat_events[2]), 1, &ev), 0);
    PD_CHECK(ev.text_escaped);
    pd_buf_t b = {0};
    PD_CHECK_EQ_INT(px_sse_unescape(ev.text, ev.text_len, &b), 0);
    PD_CHECK_EQ_STR(b.data, "line\nnext \"q\" \xc3\xa9\xf0\x9f\x98\x80");
    /* bad escapes leave the buffer as it was */
    size_t before = b.len;
    PD_CHECK_EQ_INT(px_sse_unescape("ok\\ud83d", 8, &b), -1);
    PD_CHECK_EQ_INT(px_sse_unescape("\\u0000", 6, &b), -1);
    PD_CHECK_EQ_INT(px_sse_unescape("\\q", 2, &b), -1);
    PD_CHECK_EQ_INT(px_sse_unescape("\\u12", 4, &b), -1);
    PD_CHECK(b.len == before && b.data[before] == '\0');
    pd_buf_cleanup(&b);
    /* shapes left to cJSON */
    PD_CHECK_EQ_INT(px_sse_scan(cmpl_events[6], strlen(cmpl_events[6]), 0, &ev), -1); /* object choices */
    PD_CHECK_EQ_INT(px_sse_scan(cmpl_events[7], strlen(cmpl_events[7]), 0, &ev), -1); /* trailing */
    PD_CHECK_EQ_INT(px_sse_scan(cmpl_events[8], strlen(cmpl_events[8]), 0, &ev), -1);
    PD_CHECK_EQ_INT(px_sse_scan(cmpl_events[9], strlen(cmpl_events[9]), 0, &ev), -1);
    PD_CHECK_EQ_INT(px_sse_scan("", 0, 0, &ev), -1);
    PD_CHECK_EQ_INT(px_sse_scan(cmpl_events[11], strlen(cmpl_events[11]), 0, &ev), -1); /* \\udc00, 1-2 */
    PD_CHECK_EQ_INT(px_sse_scan(cmpl_events[12], strlen(cmpl_events[12]), 0, &ev), -1); /* escaped key */
    /* deep nesting is refused, not recursed into without bound */
    char deep[400];
    size_t n = 0;
    n += (size_t)snprintf(deep, sizeof(deep), "{\"a\":");
    for (int i = 0; i < 150; i++)
        deep[n++] = '[';
    for (int i = 0; i < 150; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    PD_CHECK_EQ_INT(px_sse_scan(deep, n, 0, &ev), -1);
    /* every fixed case agrees with cJSON when scanned */
    int scanned = 0;
    for (size_t i = 0; i < PD_ARRAY_SIZE(chat_events); i++)
        scanned += scan_agrees(chat_events[i], strlen(chat_events[i]), 1);
    for (size_t i = 0; i < PD_ARRAY_SIZE(cmpl_events); i++)
        scanned += scan_agrees(cmpl_events[i], strlen(cmpl_events[i]), 0);
    PD_CHECK(scanned >= 16);
}

/* Mutations of the fixed events (a byte replaced by a JSON-significant one, a byte
 * dropped, a truncation): wherever the scanner answers, it agrees with cJSON. */
PD_TEST(test_differential_mutations)
{
    static const char alphabet[] = "{}[]\",:\\ u0aen-1.tE";
    uint64_t rng = 0x9e3779b97f4a7c15ULL;
    int answered = 0, total = 0;
    char buf[1024];
    for (int round = 0; round < 20000; round++) {
        int is_chat = round & 1;
        const char *src = is_chat ? chat_events[(size_t)(round / 2) % PD_ARRAY_SIZE(chat_events)]
                                  : cmpl_events[(size_t)(round / 2) % PD_ARRAY_SIZE(cmpl_events)];
        size_t n = strlen(src);
        if (n == 0 || n >= sizeof(buf))
            continue;
        memcpy(buf, src, n);
        int edits = 1 + (int)((rng >> 60) & 3);
        for (int k = 0; k < edits; k++) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            size_t at = (size_t)(rng % n);
            switch ((rng >> 32) % 3) {
            case 0: buf[at] = alphabet[(rng >> 40) % (sizeof(alphabet) - 1)]; break;
            case 1:
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
                break;
            default: n = at + 1; break;
            }
            if (n == 0)
                break;
        }
        total++;
        answered += scan_agrees(buf, n, is_chat);
    }
    printf("  %d of %d mutated events scanned without cJSON\n", answered, total);
    PD_CHECK(answered > 100);
}

int main(void)
{
    PD_RUN(test_fixed_events);
    PD_RUN(test_differential_mutations);
    return PD_TEST_REPORT();
}
