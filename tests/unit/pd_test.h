/*
 * pd_test.h - the minimal unit-test harness every tests/unit/test_*.c uses.
 *
 *   PD_TEST(name) { PD_CHECK(x == 1); PD_CHECK_EQ_INT(a, b); PD_CHECK_STATUS(st, PD_OK); }
 *   int main(void) { PD_RUN(name); ...; return PD_TEST_REPORT(); }
 *
 * A failed check prints file:line and the expression and marks the current test as
 * failed, then the test goes on (so one run shows every broken check).
 */
#ifndef PD_TEST_H
#define PD_TEST_H

#include <stdio.h>
#include <string.h>

#include "pd_status.h"

static int pd_test_failed_checks_g;
static int pd_test_passed_g, pd_test_failed_g;

#define PD_TEST(name) static void name(void)

#define PD_CHECK(cond)                                                              \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            pd_test_failed_checks_g++;                                              \
        }                                                                           \
    } while (0)

#define PD_CHECK_EQ_INT(a, b)                                                       \
    do {                                                                            \
        long long pd_a_ = (long long)(a), pd_b_ = (long long)(b);                   \
        if (pd_a_ != pd_b_) {                                                       \
            fprintf(stderr, "  %s:%d: %s == %s failed: %lld != %lld\n", __FILE__,   \
                    __LINE__, #a, #b, pd_a_, pd_b_);                                \
            pd_test_failed_checks_g++;                                              \
        }                                                                           \
    } while (0)

#define PD_CHECK_EQ_STR(a, b)                                                       \
    do {                                                                            \
        const char *pd_a_ = (a), *pd_b_ = (b);                                      \
        if (pd_a_ == NULL || pd_b_ == NULL || strcmp(pd_a_, pd_b_) != 0) {          \
            fprintf(stderr, "  %s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, \
                    __LINE__, #a, #b, pd_a_ ? pd_a_ : "(null)", pd_b_ ? pd_b_ : "(null)"); \
            pd_test_failed_checks_g++;                                              \
        }                                                                           \
    } while (0)

#define PD_CHECK_STATUS(st, want)                                                   \
    do {                                                                            \
        pd_status_t pd_s_ = (st), pd_w_ = (want);                                   \
        if (pd_s_ != pd_w_) {                                                       \
            fprintf(stderr, "  %s:%d: %s gave %s, wanted %s\n", __FILE__, __LINE__, \
                    #st, pd_status_name(pd_s_), pd_status_name(pd_w_));             \
            pd_test_failed_checks_g++;                                              \
        }                                                                           \
    } while (0)

#define PD_RUN(fn)                                                                  \
    do {                                                                            \
        int pd_before_ = pd_test_failed_checks_g;                                   \
        fn();                                                                       \
        if (pd_test_failed_checks_g == pd_before_) {                                \
            pd_test_passed_g++;                                                     \
            printf("ok   %s\n", #fn);                                               \
        } else {                                                                    \
            pd_test_failed_g++;                                                     \
            printf("FAIL %s\n", #fn);                                               \
        }                                                                           \
        fflush(stdout);                                                             \
    } while (0)

#define PD_TEST_REPORT()                                                            \
    (printf("%d passed, %d failed\n", pd_test_passed_g, pd_test_failed_g),          \
     pd_test_failed_g ? 1 : 0)

#endif /* PD_TEST_H */
