/*
 * tpl_driver.c - command-line driver of the chat template engine for the python
 * reference tests (tests/template/test_template_ref.py) and for manual checks.
 *
 *   tpl_driver TEMPLATE_FILE < cases.jsonl > results.jsonl
 *
 * Each input line is a JSON object: either {"ctx": {...}} (plain eng_template_render) or
 * {"messages": [...], "tools": ..., "documents": ..., "add_generation_prompt": bool,
 *  "continue_final_message": bool, "kwargs": {...}, "bos_token": str, "eos_token": str}
 * (eng_chat_apply), optionally with "limits": {"steps", "output", "memory", "depth"}.
 * Each output line is {"ok": true, "text": "..."} or {"ok": false, "status": "...",
 * "error": "..."}.  A template that fails to compile gives one {"ok": false, "compile": true}
 * line per input line.  With TEMPLATE_FILE "-" every case carries its own "template"
 * source.  "--bench N" renders every case N times and prints timings.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "eng_template.h"
#include "pd_util.h"

static char *read_line(FILE *f)
{
    pd_buf_t b = {0};
    int c;
    while ((c = fgetc(f)) != EOF && c != '\n') {
        char ch = (char)c;
        if (pd_buf_append(&b, &ch, 1) != PD_OK) {
            pd_buf_cleanup(&b);
            return NULL;
        }
    }
    if (c == EOF && b.len == 0) {
        pd_buf_cleanup(&b);
        return NULL;
    }
    return pd_buf_steal(&b);
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static pd_status_t run_case(const eng_template_t *tpl, const cJSON *c, pd_buf_t *out, char *err,
                            size_t errlen)
{
    eng_template_limits_t lim = {0};
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(c, "limits");
    if (cJSON_IsObject(l)) {
        const cJSON *v;
        if ((v = cJSON_GetObjectItemCaseSensitive(l, "steps")) && cJSON_IsNumber(v))
            lim.max_steps = (uint64_t)v->valuedouble;
        if ((v = cJSON_GetObjectItemCaseSensitive(l, "output")) && cJSON_IsNumber(v))
            lim.max_output = (size_t)v->valuedouble;
        if ((v = cJSON_GetObjectItemCaseSensitive(l, "memory")) && cJSON_IsNumber(v))
            lim.max_memory = (size_t)v->valuedouble;
        if ((v = cJSON_GetObjectItemCaseSensitive(l, "depth")) && cJSON_IsNumber(v))
            lim.max_depth = (int)v->valuedouble;
    }
    const cJSON *ctx = cJSON_GetObjectItemCaseSensitive(c, "ctx");
    if (ctx)
        return eng_template_render(tpl, ctx, &lim, out, err, errlen);
    return eng_chat_apply_ex(tpl, cJSON_GetObjectItemCaseSensitive(c, "messages"),
                             cJSON_GetObjectItemCaseSensitive(c, "tools"),
                             cJSON_GetObjectItemCaseSensitive(c, "documents"),
                             cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "add_generation_prompt")),
                             cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "continue_final_message")),
                             cJSON_GetObjectItemCaseSensitive(c, "kwargs"), jstr(c, "bos_token"),
                             jstr(c, "eos_token"), &lim, out, err, errlen);
}

int main(int argc, char **argv)
{
    char *src = NULL, err[4096];
    size_t len;
    eng_template_t *tpl = NULL;
    long bench = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s TEMPLATE_FILE [--bench N] < cases.jsonl\n", argv[0]);
        return 2;
    }
    if (argc >= 4 && strcmp(argv[2], "--bench") == 0)
        bench = atol(argv[3]);
    int inline_tpl = strcmp(argv[1], "-") == 0;
    pd_status_t cst = PD_OK;
    if (!inline_tpl) {
        if (pd_read_file(argv[1], &src, &len) != PD_OK) {
            fprintf(stderr, "cannot read %s\n", argv[1]);
            return 2;
        }
        cst = eng_template_compile(src, &tpl, err, sizeof(err));
        free(src);
    }
    char *line;
    pd_buf_t out = {0};
    while ((line = read_line(stdin)) != NULL) {
        cJSON *c = cJSON_Parse(line);
        cJSON *res = cJSON_CreateObject();
        free(line);
        if (inline_tpl) {
            const char *ts = c ? jstr(c, "template") : NULL;
            eng_template_destroy(tpl);
            tpl = NULL;
            cst = eng_template_compile(ts ? ts : "", &tpl, err, sizeof(err));
        }
        if (cst != PD_OK) {
            cJSON_AddFalseToObject(res, "ok");
            cJSON_AddTrueToObject(res, "compile");
            cJSON_AddStringToObject(res, "status", pd_status_name(cst));
            cJSON_AddStringToObject(res, "error", err);
        } else if (c == NULL) {
            cJSON_AddFalseToObject(res, "ok");
            cJSON_AddStringToObject(res, "error", "bad input json");
        } else if (bench > 0) {
            uint64_t t0 = pd_now_ns();
            pd_status_t st = PD_OK;
            size_t bytes = 0;
            for (long k = 0; k < bench; k++) {
                pd_buf_reset(&out);
                st = run_case(tpl, c, &out, err, sizeof(err));
                bytes = out.len;
            }
            uint64_t t1 = pd_now_ns();
            cJSON_AddBoolToObject(res, "ok", st == PD_OK);
            cJSON_AddNumberToObject(res, "us_per_render", (double)(t1 - t0) / 1e3 / (double)bench);
            cJSON_AddNumberToObject(res, "bytes", (double)bytes);
        } else {
            pd_buf_reset(&out);
            pd_status_t st = run_case(tpl, c, &out, err, sizeof(err));
            if (st == PD_OK) {
                cJSON_AddTrueToObject(res, "ok");
                cJSON_AddStringToObject(res, "text", out.data ? out.data : "");
            } else {
                cJSON_AddFalseToObject(res, "ok");
                cJSON_AddStringToObject(res, "status", pd_status_name(st));
                cJSON_AddStringToObject(res, "error", err);
            }
        }
        char *s = cJSON_PrintUnformatted(res);
        if (s) {
            fputs(s, stdout);
            fputc('\n', stdout);
            free(s);
        }
        fflush(stdout);
        cJSON_Delete(res);
        cJSON_Delete(c);
    }
    pd_buf_cleanup(&out);
    eng_template_destroy(tpl);
    return 0;
}
