/* test_common.c - status strings, logging levels (what each level lets through, the tag
 * and the request id on the line), buffers, arenas, checked arithmetic. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pd_log.h"
#include "pd_test.h"
#include "pd_util.h"

PD_TEST(test_status_strings)
{
    PD_CHECK_EQ_STR(pd_status_str(PD_OK), "ok");
    PD_CHECK_EQ_STR(pd_status_str(PD_ERR_UNSUPPORTED), "not supported yet");
    PD_CHECK_EQ_STR(pd_status_name(PD_ERR_INVAL), "PD_ERR_INVAL");
    PD_CHECK_EQ_STR(pd_status_str((pd_status_t)12345), "unknown status");
    PD_CHECK(PD_IS_ERR(PD_ERR_NOMEM));
    PD_CHECK(!PD_IS_ERR(PD_INPROGRESS));
    /* every row of the X-macro: its name and string come back, values are distinct, and
     * only PD_OK / PD_INPROGRESS are not errors */
    static const struct { pd_status_t v; const char *name, *str; } rows[] = {
#define PD_STATUS_ROW(name, value, str) {name, #name, str},
        PD_STATUS_MAP(PD_STATUS_ROW)
#undef PD_STATUS_ROW
    };
    const size_t n = sizeof(rows) / sizeof(rows[0]);
    PD_CHECK(n >= 20);
    for (size_t i = 0; i < n; i++) {
        PD_CHECK_EQ_STR(pd_status_name(rows[i].v), rows[i].name);
        PD_CHECK_EQ_STR(pd_status_str(rows[i].v), rows[i].str);
        PD_CHECK(strcmp(rows[i].str, "unknown status") != 0);
        PD_CHECK(PD_IS_ERR(rows[i].v) == (i >= 2));
        for (size_t j = 0; j < i; j++)
            PD_CHECK(rows[i].v != rows[j].v);
    }
}

PD_TEST(test_log_levels)
{
    pd_log_level_t lv = PD_LOG_LEVEL_OFF;
    PD_CHECK_STATUS(pd_log_level_parse("trace", &lv), PD_OK);
    PD_CHECK_EQ_INT(lv, PD_LOG_LEVEL_TRACE);
    PD_CHECK_STATUS(pd_log_level_parse("WARNING", &lv), PD_OK);
    PD_CHECK_EQ_INT(lv, PD_LOG_LEVEL_WARN);
    PD_CHECK_STATUS(pd_log_level_parse("critical", &lv), PD_OK);
    PD_CHECK_EQ_INT(lv, PD_LOG_LEVEL_CRIT);
    PD_CHECK_STATUS(pd_log_level_parse("loud", &lv), PD_ERR_INVAL);
    PD_CHECK_EQ_INT(lv, PD_LOG_LEVEL_CRIT); /* untouched on failure */
    PD_CHECK_STATUS(pd_log_level_parse(NULL, &lv), PD_ERR_INVAL);
    pd_log_set_level(PD_LOG_LEVEL_ERR);
    PD_LOG_INFO("this line is dropped");
    PD_LOG_REQ(ERR, "req-1", "a request line (expected in test output)");
    pd_log_set_level(PD_LOG_LEVEL_INFO);
}

/* Run the log calls with stderr sent to a temporary file; returns what they wrote. */
static char *capture_log(void (*fn)(void))
{
    char path[] = "/tmp/pd_log_test_XXXXXX";
    int fd = mkstemp(path), saved = dup(STDERR_FILENO);
    char *text = NULL;
    size_t len = 0;

    if (fd < 0 || saved < 0)
        return NULL;
    dup2(fd, STDERR_FILENO);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fd);
    if (pd_read_file(path, &text, &len) != PD_OK)
        text = NULL;
    unlink(path);
    return text;
}

static void log_each_level(void)
{
    PD_LOG_TRACE("line at trace %d", 1);
    PD_LOG_DEBUG("line at debug");
    PD_LOG_INFO("line at info");
    PD_LOG_WARN("line at warning");
    PD_LOG_REQ(ERR, "req-42", "line at error");
    PD_LOG_CRIT("line at critical");
}

/* --uvicorn-log-level goes through pd_log_level_parse + pd_log_set_level: each level
 * lets through itself and everything above it, trace lets everything through */
PD_TEST(test_log_output)
{
    static const char *const names[] = {"trace", "debug", "info", "warning", "error", "critical"};
    static const char *const lines[] = {"line at trace 1", "line at debug", "line at info",
                                        "line at warning", "line at error", "line at critical"};
    static const char *const tags[] = {"testtag TRACE ", "testtag DEBUG ", "testtag INFO ",
                                       "testtag WARNING ", "testtag ERROR ", "testtag CRITICAL "};
    pd_log_level_t saved = pd_log_level_g, lv;

    pd_log_set_tag("testtag");
    for (int l = 0; l < 6; l++) {
        PD_CHECK_STATUS(pd_log_level_parse(names[l], &lv), PD_OK);
        pd_log_set_level(lv);
        char *out = capture_log(log_each_level);
        PD_CHECK(out != NULL);
        if (out == NULL)
            continue;
        for (int k = 0; k < 6; k++) {
            const char *hit = strstr(out, lines[k]);
            PD_CHECK((hit != NULL) == (k >= l));
            if (hit && k >= l) {
                /* the line starts with the tag and its level name */
                const char *bol = hit;
                while (bol > out && bol[-1] != '\n')
                    bol--;
                PD_CHECK(strncmp(bol, tags[k], strlen(tags[k])) == 0);
            }
        }
        /* the request id is printed in brackets, right before the message */
        if (l <= 4)
            PD_CHECK(strstr(out, "] [req-42] line at error\n") != NULL);
        free(out);
    }
    pd_log_set_level(PD_LOG_LEVEL_OFF);
    char *none = capture_log(log_each_level);
    PD_CHECK(none != NULL && none[0] == '\0');
    free(none);
    pd_log_set_tag(NULL);
    pd_log_set_level(saved);
}

PD_TEST(test_checked_arith)
{
    size_t r = 7;
    PD_CHECK_STATUS(pd_add_size(SIZE_MAX, 1, &r), PD_ERR_OVERFLOW);
    PD_CHECK_EQ_INT(r, 7);
    PD_CHECK_STATUS(pd_mul_size(SIZE_MAX / 2 + 1, 2, &r), PD_ERR_OVERFLOW);
    PD_CHECK_STATUS(pd_mul_size(1000, 1000, &r), PD_OK);
    PD_CHECK_EQ_INT(r, 1000000);
    uint64_t u;
    PD_CHECK_STATUS(pd_mul_u64(UINT64_MAX, 3, &u), PD_ERR_OVERFLOW);
    PD_CHECK_STATUS(pd_add_u64(1, 2, &u), PD_OK);
    PD_CHECK_EQ_INT(u, 3);
}

PD_TEST(test_buf)
{
    pd_buf_t b;
    pd_buf_init(&b);
    for (int i = 0; i < 1000; i++)
        PD_CHECK_STATUS(pd_buf_printf(&b, "%d,", i), PD_OK);
    PD_CHECK(strncmp(b.data, "0,1,2,", 6) == 0);
    PD_CHECK_EQ_INT(strlen(b.data), b.len);
    pd_buf_reset(&b);
    PD_CHECK_EQ_INT(b.len, 0);
    PD_CHECK_STATUS(pd_buf_append(&b, "ab\0c", 4), PD_OK);
    PD_CHECK_EQ_INT(b.len, 4);
    char *s = pd_buf_steal(&b);
    PD_CHECK(s != NULL && memcmp(s, "ab\0c", 5) == 0);
    PD_CHECK(b.data == NULL && b.len == 0);
    free(s);
    pd_buf_cleanup(&b);
}

static int cleanup_order[4], n_cleanups;
static void record_cleanup(void *arg) { cleanup_order[n_cleanups++] = (int)(intptr_t)arg; }

PD_TEST(test_arena)
{
    pd_arena_t *a = pd_arena_create(64);
    PD_CHECK(a != NULL);
    for (int i = 0; i < 100; i++) {
        char *p = pd_arena_alloc(a, (size_t)i + 1);
        PD_CHECK(p != NULL && ((uintptr_t)p & 15) == 0);
        memset(p, 0xab, (size_t)i + 1);
    }
    PD_CHECK(pd_arena_alloc(a, SIZE_MAX) == NULL);
    PD_CHECK(pd_arena_calloc(a, SIZE_MAX / 2, 4) == NULL);
    int *z = pd_arena_calloc(a, 10, sizeof(int));
    PD_CHECK(z != NULL && z[9] == 0);
    PD_CHECK_EQ_STR(pd_arena_strdup(a, "hello"), "hello");
    PD_CHECK_EQ_STR(pd_arena_strndup(a, "hello", 3), "hel");
    n_cleanups = 0;
    PD_CHECK_STATUS(pd_arena_add_cleanup(a, record_cleanup, (void *)1), PD_OK);
    PD_CHECK_STATUS(pd_arena_add_cleanup(a, record_cleanup, (void *)2), PD_OK);
    pd_arena_destroy(a);
    PD_CHECK_EQ_INT(n_cleanups, 2);
    PD_CHECK_EQ_INT(cleanup_order[0], 2);
    PD_CHECK_EQ_INT(cleanup_order[1], 1);
}

PD_TEST(test_misc)
{
    PD_CHECK(pd_ct_equal("secret", 6, "secret", 6));
    PD_CHECK(!pd_ct_equal("secret", 6, "secreT", 6));
    PD_CHECK(!pd_ct_equal("secret", 6, "secret2", 7));
    char id1[33], id2[33];
    pd_random_hex_id(id1);
    pd_random_hex_id(id2);
    PD_CHECK_EQ_INT(strlen(id1), 32);
    PD_CHECK(strcmp(id1, id2) != 0);
    char *data;
    size_t len;
    PD_CHECK_STATUS(pd_read_file("/nonexistent/file", &data, &len), PD_ERR_NOT_FOUND);
    PD_CHECK_STATUS(pd_read_file("CMakeLists.txt", &data, &len), PD_OK);
    PD_CHECK(len > 0 && strstr(data, "pdserve") != NULL);
    free(data);
    PD_CHECK(pd_now_ns() > 0);
}

PD_TEST(test_child_helpers)
{
    int fds[2];
    pid_t pid;
    char buf[8];

    /* exit code comes back; a child past its time is killed: -1 */
    pid = fork();
    if (pid == 0)
        _exit(3);
    PD_CHECK_EQ_INT(pd_child_wait(pid, 10), 3);
    pid = fork();
    if (pid == 0) {
        sleep(30);
        _exit(0);
    }
    PD_CHECK_EQ_INT(pd_child_wait(pid, 0.2), -1);
    /* a read in pieces is whole; a short one times out */
    PD_CHECK(pipe(fds) == 0);
    pid = fork();
    if (pid == 0) {
        (void)!write(fds[1], "abc", 3);
        usleep(20000);
        (void)!write(fds[1], "defg", 4);
        _exit(0);
    }
    PD_CHECK_EQ_INT(pd_read_full_timeout(fds[0], buf, 7, 10000), 1);
    PD_CHECK(memcmp(buf, "abcdefg", 7) == 0);
    PD_CHECK_EQ_INT(pd_child_wait(pid, 10), 0);
    PD_CHECK_EQ_INT(pd_read_full_timeout(fds[0], buf, 1, 50), 0);
    close(fds[0]);
    close(fds[1]);
}

int main(void)
{
    PD_RUN(test_status_strings);
    PD_RUN(test_log_levels);
    PD_RUN(test_log_output);
    PD_RUN(test_checked_arith);
    PD_RUN(test_buf);
    PD_RUN(test_arena);
    PD_RUN(test_misc);
    PD_RUN(test_child_helpers);
    return PD_TEST_REPORT();
}
