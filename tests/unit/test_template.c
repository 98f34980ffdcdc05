/*
 * test_template.c - the chat template engine without python: committed goldens (made by
 * tests/template/make_goldens.py from jinja2), error reporting, the execution bounds,
 * continue_final_message, concurrent renders and a timing of a 10-turn chat.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "eng_template.h"
#include "pd_test.h"
#include "pd_util.h"

static const char *src_dir(void)
{
    const char *d = getenv("PD_SOURCE_DIR");
    return d ? d : ".";
}

static eng_template_t *load_tpl(const char *name)
{
    char path[1024], err[512];
    char *src;
    size_t len;
    eng_template_t *tpl = NULL;
    snprintf(path, sizeof(path), "%s/tests/data/templates/%s", src_dir(), name);
    if (pd_read_file(path, &src, &len) != PD_OK) {
        fprintf(stderr, "  cannot read %s\n", path);
        return NULL;
    }
    if (eng_template_compile(src, &tpl, err, sizeof(err)) != PD_OK)
        fprintf(stderr, "  compile %s: %s\n", name, err);
    free(src);
    return tpl;
}

/* render src with ctx (JSON text); returns status, output in *out (caller frees) */
static pd_status_t render_str(const char *src, const char *ctx_json, const eng_template_limits_t *lim,
                              char **out, char *err, size_t errlen)
{
    eng_template_t *tpl = NULL;
    pd_buf_t b = {0};
    pd_status_t st = eng_template_compile(src, &tpl, err, errlen);
    if (st != PD_OK)
        return st;
    cJSON *ctx = ctx_json ? cJSON_Parse(ctx_json) : NULL;
    st = eng_template_render(tpl, ctx, lim, &b, err, errlen);
    cJSON_Delete(ctx);
    eng_template_destroy(tpl);
    *out = pd_buf_steal(&b);
    return st;
}

static void check_render(const char *src, const char *ctx, const char *want)
{
    char err[512], *out = NULL;
    pd_status_t st = render_str(src, ctx, NULL, &out, err, sizeof(err));
    PD_CHECK_STATUS(st, PD_OK);
    if (st != PD_OK)
        fprintf(stderr, "  template %s: %s\n", src, err);
    else
        PD_CHECK_EQ_STR(out, want);
    free(out);
}

PD_TEST(test_basics)
{
    check_render("Hello {{ name }}!", "{\"name\": \"world\"}", "Hello world!");
    check_render("{% for m in messages %}{{ m.role }}:{{ m['content'] }};{% endfor %}",
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}",
                 "user:hi;assistant:yo;");
    check_render("{{ 1.0 }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 1/3 }} {{ 2**62 }} {{ none }} {{ [1, 'a'] }}", NULL,
                 "1.0 1e+20 0.30000000000000004 0.3333333333333333 4611686018427387904 None [1, 'a']");
    check_render("  {% if true %}\n    x\n  {% endif %}\n", NULL, "    x\n");
    check_render("{{ {'b': 'é', 'a': [1, 2.5, none, true]} | tojson }}", NULL,
                 "{\"b\": \"é\", \"a\": [1, 2.5, null, true]}");
    check_render("{{ x.y is defined }}|{{ x }}|{{ x | default('d') }}", "{\"x\": {}}", "False|{}|{}");
    check_render("{% for x in t recursive %}{{ x.n }}{% if x.k %}({{ loop(x.k) }}){% endif %}{% endfor %}",
                 "{\"t\": [{\"n\": 1, \"k\": [{\"n\": 2}, {\"n\": 3, \"k\": [{\"n\": 4}]}]}]}", "1(23(4))");
    check_render("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}",
                 NULL, "6");
}

PD_TEST(test_goldens)
{
    char path[1024], err[1024];
    char *data;
    size_t len;
    snprintf(path, sizeof(path), "%s/tests/data/templates/goldens.jsonl", src_dir());
    PD_CHECK_STATUS(pd_read_file(path, &data, &len), PD_OK);
    if (data == NULL)
        return;
    int n = 0, good = 0;
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *g = cJSON_Parse(line);
        PD_CHECK(g != NULL);
        if (g == NULL)
            continue;
        const char *name = cJSON_GetObjectItem(g, "template")->valuestring;
        const cJSON *c = cJSON_GetObjectItem(g, "case");
        const char *want = cJSON_GetObjectItem(g, "expected")->valuestring;
        eng_template_t *tpl = load_tpl(name);
        PD_CHECK(tpl != NULL);
        if (tpl) {
            pd_buf_t out = {0};
            const cJSON *bos = cJSON_GetObjectItem(c, "bos_token"), *eos = cJSON_GetObjectItem(c, "eos_token");
            pd_status_t st = eng_chat_apply(
                tpl, cJSON_GetObjectItem(c, "messages"), cJSON_GetObjectItem(c, "tools"),
                cJSON_GetObjectItem(c, "documents"), cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt")),
                cJSON_IsTrue(cJSON_GetObjectItem(c, "continue_final_message")), cJSON_GetObjectItem(c, "kwargs"),
                cJSON_IsString(bos) ? bos->valuestring : NULL, cJSON_IsString(eos) ? eos->valuestring : NULL, &out,
                err, sizeof(err));
            PD_CHECK_STATUS(st, PD_OK);
            if (st == PD_OK && strcmp(out.data, want) == 0)
                good++;
            else
                fprintf(stderr, "  golden %d (%s) differs: %s\n", n, name, st == PD_OK ? out.data : err);
            pd_buf_cleanup(&out);
            eng_template_destroy(tpl);
        }
        cJSON_Delete(g);
        n++;
    }
    printf("  %d/%d goldens match\n", good, n);
    PD_CHECK(n >= 30);
    PD_CHECK_EQ_INT(good, n);
    free(data);
}

static void check_compile_error(const char *src, const char *needle)
{
    char err[512];
    eng_template_t *tpl = NULL;
    pd_status_t st = eng_template_compile(src, &tpl, err, sizeof(err));
    PD_CHECK_STATUS(st, PD_ERR_FORMAT);
    PD_CHECK(tpl == NULL);
    if (strstr(err, needle) == NULL) {
        fprintf(stderr, "  error for %s was \"%s\", wanted \"%s\"\n", src, err, needle);
        PD_CHECK(0);
    }
    eng_template_destroy(tpl);
}

PD_TEST(test_syntax_errors)
{
    check_compile_error("{{ 1 + }}", "line 1:");
    check_compile_error("a\nb\n{% if x %}never closed", "line 3: unexpected end of template");
    check_compile_error("\n\n{{ x | nosuch }}", "line 3: no filter named 'nosuch'");
    check_compile_error("{{ x is nosuchtest }}", "no test named 'nosuchtest'");
    check_compile_error("{% endfor %}", "unknown tag 'endfor'");
    check_compile_error("{% frobnicate %}", "unknown tag");
    check_compile_error("{{ 'abc }}", "unexpected end of string");
    check_compile_error("{# open", "missing end of comment");
    check_compile_error("{{ (1 }}", "line 1");
    check_compile_error("{% include 'other.jinja' %}", "unknown tag 'include'");
    check_compile_error("{{ x | groupby }}{{ x | wordwrap }}", "no filter named 'wordwrap'");
    /* deep nesting is refused, not a stack overflow */
    char deep[8192];
    size_t k = 0;
    k += (size_t)snprintf(deep + k, sizeof(deep) - k, "{{ ");
    for (int i = 0; i < 2000; i++)
        deep[k++] = '(';
    deep[k++] = '1';
    for (int i = 0; i < 2000; i++)
        deep[k++] = ')';
    snprintf(deep + k, sizeof(deep) - k, " }}");
    check_compile_error(deep, "nested too deeply");
    k = 0;
    for (int i = 0; i < 500; i++)
        k += (size_t)snprintf(deep + k, sizeof(deep) - k, "{%% if x %%}");
    check_compile_error(deep, "nested too deeply");
}

static void check_render_error(const char *src, const char *ctx, const eng_template_limits_t *lim,
                               pd_status_t want, const char *needle)
{
    char err[512], *out = NULL;
    pd_status_t st = render_str(src, ctx, lim, &out, err, sizeof(err));
    PD_CHECK_STATUS(st, want);
    if (strstr(err, needle) == NULL) {
        fprintf(stderr, "  error for %.60s was \"%s\", wanted \"%s\"\n", src, err, needle);
        PD_CHECK(0);
    }
    if (out)
        PD_CHECK_EQ_STR(out, ""); /* output rolled back */
    free(out);
}

PD_TEST(test_runtime_errors)
{
    char err[256], *out = NULL;
    PD_CHECK_STATUS(render_str("x{{ raise_exception('Roles must alternate!') }}", NULL, NULL, &out, err, sizeof(err)),
                    PD_ERR_INVAL);
    PD_CHECK_EQ_STR(err, "Roles must alternate!");
    free(out);
    check_render_error("\n{{ a.b.c }}", "{\"a\": {}}", NULL, PD_ERR_INVAL, "line 2: 'dict object' has no attribute 'b'");
    check_render_error("{{ nothing.x }}", NULL, NULL, PD_ERR_INVAL, "'nothing' is undefined");
    check_render_error("{{ 1 + 'a' }}", NULL, NULL, PD_ERR_INVAL, "unsupported operand");
    check_render_error("{{ messages.append(1) }}", "{\"messages\": []}", NULL, PD_ERR_INVAL, "has no attribute 'append'");
    check_render_error("{{ x | tojson }}", NULL, NULL, PD_ERR_INVAL, "not JSON serializable");
    check_render_error("{{ range(200000) | length }}", NULL, NULL, PD_ERR_INVAL, "Range too big");
}

PD_TEST(test_limits)
{
    eng_template_limits_t lim = {0};
    lim.max_steps = 100000;
    check_render_error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", NULL, &lim,
                       PD_ERR_LIMIT, "steps");
    memset(&lim, 0, sizeof(lim));
    lim.max_output = 1000;
    check_render_error("{% for i in range(10000) %}{{ i }}{% endfor %}", NULL, &lim, PD_ERR_LIMIT, "output exceeded 1000");
    memset(&lim, 0, sizeof(lim));
    lim.max_memory = 1 << 20;
    check_render_error("{% set ns = namespace(s='xx') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
                       NULL, &lim, PD_ERR_LIMIT, "memory");
    check_render_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, NULL, PD_ERR_LIMIT,
                       "nested deeper than");
    check_render_error("{{ 'ab' * 1000000000000 }}", NULL, NULL, PD_ERR_LIMIT, "too large");
    /* a value nested deeper than printing allows is an error, not a crash */
    check_render_error("{% set ns = namespace(v=1) %}{% for i in range(5000) %}{% set ns.v = [ns.v] %}{% endfor %}{{ ns.v }}",
                       NULL, NULL, PD_ERR_INVAL, "nested too deeply");
}

PD_TEST(test_raw_numbers)
{
    eng_template_t *tpl = NULL;
    char err[256];
    pd_buf_t out = {0};
    PD_CHECK_STATUS(eng_template_compile("{{ a }} {{ b }} {{ c }} {{ [a, b, c, d] | tojson }}", &tpl, err, sizeof(err)), PD_OK);
    cJSON *ctx = cJSON_CreateObject();
    cJSON_AddItemToObject(ctx, "a", cJSON_CreateRaw("1.0"));
    cJSON_AddItemToObject(ctx, "b", cJSON_CreateRaw("7"));
    cJSON_AddItemToObject(ctx, "c", cJSON_CreateNumber(1.0));
    cJSON_AddItemToObject(ctx, "d", cJSON_CreateRaw("2e3"));
    PD_CHECK_STATUS(eng_template_render(tpl, ctx, NULL, &out, err, sizeof(err)), PD_OK);
    PD_CHECK_EQ_STR(out.data, "1.0 7 1 [1.0, 7, 1, 2000.0]");
    cJSON_Delete(ctx);
    pd_buf_cleanup(&out);
    eng_template_destroy(tpl);
}

PD_TEST(test_output_appends)
{
    eng_template_t *tpl = NULL;
    char err[256];
    pd_buf_t out = {0};
    PD_CHECK_STATUS(eng_template_compile("[{{ x }}]", &tpl, err, sizeof(err)), PD_OK);
    pd_buf_puts(&out, "prefix:");
    cJSON *ctx = cJSON_Parse("{\"x\": 5}");
    PD_CHECK_STATUS(eng_template_render(tpl, ctx, NULL, &out, err, sizeof(err)), PD_OK);
    PD_CHECK_EQ_STR(out.data, "prefix:[5]");
    eng_template_destroy(tpl);
    PD_CHECK_STATUS(eng_template_compile("more{{ x.y.z }}", &tpl, err, sizeof(err)), PD_OK);
    PD_CHECK_STATUS(eng_template_render(tpl, ctx, NULL, &out, err, sizeof(err)), PD_ERR_INVAL);
    PD_CHECK_EQ_STR(out.data, "prefix:[5]");
    cJSON_Delete(ctx);
    eng_template_destroy(tpl);
    pd_buf_cleanup(&out);
}

PD_TEST(test_chat_apply)
{
    eng_template_t *tpl = load_tpl("smollm2.jinja");
    char err[1024];
    pd_buf_t out = {0};
    PD_CHECK(tpl != NULL);
    if (tpl == NULL)
        return;
    cJSON *msgs = cJSON_Parse("[{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"The answer is \"}]");
    PD_CHECK_STATUS(eng_chat_apply(tpl, msgs, NULL, NULL, false, true, NULL, NULL, NULL, &out, err, sizeof(err)), PD_OK);
    PD_CHECK_EQ_STR(out.data, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                              "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nThe answer is ");
    pd_buf_reset(&out);
    PD_CHECK_STATUS(eng_chat_apply(tpl, msgs, NULL, NULL, true, true, NULL, NULL, NULL, &out, err, sizeof(err)),
                    PD_ERR_INVAL);
    PD_CHECK(strstr(err, "not compatible") != NULL);
    PD_CHECK_EQ_INT(out.len, 0);
    cJSON_Delete(msgs);
    msgs = cJSON_Parse("[{\"role\": \"user\", \"content\": \"Hi\"}]");
    PD_CHECK_STATUS(eng_chat_apply(tpl, msgs, NULL, NULL, false, true, NULL, NULL, NULL, &out, err, sizeof(err)),
                    PD_ERR_INVAL);
    PD_CHECK(strstr(err, "not an assistant message") != NULL);
    PD_CHECK_STATUS(eng_chat_apply(tpl, msgs, NULL, NULL, true, false, NULL, NULL, NULL, &out, err, sizeof(err)), PD_OK);
    PD_CHECK(strstr(out.data, "<|im_start|>assistant\n") != NULL);
    cJSON_Delete(msgs);
    pd_buf_cleanup(&out);
    eng_template_destroy(tpl);
}

/* a 10-turn conversation with tools */
static cJSON *ten_turns(void)
{
    cJSON *msgs = cJSON_CreateArray();
    cJSON_AddItemToArray(msgs, cJSON_Parse("{\"role\": \"system\", \"content\": \"You are a helpful assistant.\"}"));
    for (int i = 0; i < 5; i++) {
        cJSON_AddItemToArray(msgs, cJSON_Parse("{\"role\": \"user\", \"content\": \"What is the weather like in Paris today? Please answer briefly.\"}"));
        cJSON_AddItemToArray(msgs, cJSON_Parse("{\"role\": \"assistant\", \"content\": \"<think>\\nThe user wants weather.\\n</think>\\n\\nIt is sunny and 21 degrees in Paris today.\"}"));
    }
    return msgs;
}

typedef struct thr_arg {
    const eng_template_t *tpl;
    const cJSON *msgs;
    const char *want;
    int bad;
} thr_arg_t;

static void *thr_main(void *p)
{
    thr_arg_t *a = p;
    char err[256];
    pd_buf_t out = {0};
    for (int i = 0; i < 200; i++) {
        pd_buf_reset(&out);
        if (eng_chat_apply(a->tpl, a->msgs, NULL, NULL, true, false, NULL, NULL, "<|im_end|>", &out, err, sizeof(err)) != PD_OK ||
            strcmp(out.data, a->want) != 0)
            a->bad++;
    }
    pd_buf_cleanup(&out);
    return NULL;
}

PD_TEST(test_concurrent_and_speed)
{
    eng_template_t *tpl = load_tpl("qwen3.jinja");
    char err[256];
    pd_buf_t out = {0};
    PD_CHECK(tpl != NULL);
    if (tpl == NULL)
        return;
    cJSON *msgs = ten_turns();
    PD_CHECK_STATUS(eng_chat_apply(tpl, msgs, NULL, NULL, true, false, NULL, NULL, "<|im_end|>", &out, err, sizeof(err)), PD_OK);
    thr_arg_t args[4];
    pthread_t th[4];
    for (int k = 0; k < 4; k++) {
        args[k] = (thr_arg_t){tpl, msgs, out.data, 0};
        pthread_create(&th[k], NULL, thr_main, &args[k]);
    }
    for (int k = 0; k < 4; k++) {
        pthread_join(th[k], NULL);
        PD_CHECK_EQ_INT(args[k].bad, 0);
    }
    int iters = 2000;
    pd_buf_t o2 = {0};
    uint64_t t0 = pd_now_ns();
    for (int i = 0; i < iters; i++) {
        pd_buf_reset(&o2);
        eng_chat_apply(tpl, msgs, NULL, NULL, true, false, NULL, NULL, "<|im_end|>", &o2, err, sizeof(err));
    }
    double us = (double)(pd_now_ns() - t0) / 1e3 / iters;
    printf("  qwen3 10-turn chat: %.1f us per render (%zu bytes)\n", us, o2.len);
    PD_CHECK(us < 5000); /* loose: sanitizer builds are slow; the figure is printed */
    pd_buf_cleanup(&o2);
    pd_buf_cleanup(&out);
    cJSON_Delete(msgs);
    eng_template_destroy(tpl);
}

int main(void)
{
    PD_RUN(test_basics);
    PD_RUN(test_goldens);
    PD_RUN(test_syntax_errors);
    PD_RUN(test_runtime_errors);
    PD_RUN(test_limits);
    PD_RUN(test_raw_numbers);
    PD_RUN(test_output_appends);
    PD_RUN(test_chat_apply);
    PD_RUN(test_concurrent_and_speed);
    return PD_TEST_REPORT();
}
