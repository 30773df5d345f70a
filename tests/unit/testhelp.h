/* testhelp.h - a tiny assertion helper for unit tests (after redis testhelp.h).
 *
 * Each TEST is a function; RUN(name) runs it and prints "ok name" or
 * "FAIL name: file:line: expr" lines that tests/run.sh counts. A test
 * program exits non-zero when anything failed.
 *
 * One test alone: build/tests/test_util NAME runs only the RUN(NAME) of
 * that program (exit 2 when it has none); an argument starting with '-'
 * is left to the program (test_tokenizer --bench).
 */
#ifndef QMOE_TESTHELP_H
#define QMOE_TESTHELP_H

#include <stdio.h>
#include <string.h>

static int th_failed_now, th_failed_total, th_run_total;
static const char *th_only; /* the one test to run, or NULL */

/* Takes NAME from argv[1] before main, so that the programs' main(void)
 * need not pass it on: glibc calls .init_array constructors with (argc,
 * argv, envp). */
__attribute__((constructor)) static void th_args(int argc, char **argv, char **envp)
{
    (void)envp;
    if (argc > 1 && argv[1][0] != '-')
        th_only = argv[1];
}

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            printf("  check failed %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            th_failed_now = 1;                                               \
        }                                                                    \
    } while (0)

/* Checks that a string contains a substring, printing both when not. */
#define CHECK_CONTAINS(hay, needle)                                          \
    do {                                                                     \
        const char *h_ = (hay), *n_ = (needle);                              \
        if (!h_ || !strstr(h_, n_)) {                                        \
            printf("  check failed %s:%d: '%s' does not contain '%s'\n",     \
                   __FILE__, __LINE__, h_ ? h_ : "(null)", n_);              \
            th_failed_now = 1;                                               \
        }                                                                    \
    } while (0)

#define RUN(fn)                                                              \
    do {                                                                     \
        if (th_only && strcmp(th_only, #fn) != 0)                            \
            break;                                                           \
        th_failed_now = 0;                                                   \
        fn();                                                                \
        th_run_total++;                                                      \
        if (th_failed_now) {                                                 \
            th_failed_total++;                                               \
            printf("FAIL %s\n", #fn);                                        \
        } else {                                                             \
            printf("ok %s\n", #fn);                                          \
        }                                                                    \
        fflush(stdout);                                                      \
    } while (0)

#define TEST_EXIT()                                                          \
    do {                                                                     \
        if (th_only && th_run_total == 0) {                                  \
            fprintf(stderr, "no test named '%s' in this program\n", th_only); \
            return 2;                                                        \
        }                                                                    \
        return th_failed_total ? 1 : 0;                                      \
    } while (0)

#endif
