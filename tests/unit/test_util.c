/* test_util.c - number lists, JSON helpers, errors, sizes and atomic files
 * (common/base/util.c, fs.c and memory.c). */
#include "base/crc32.h"
#include "base/fs.h"
#include "base/memory.h"
#include "base/util.h"
#include "outdir/manifest.h"
#include "testhelp.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static char *tmpdir;

/* ---- number lists ---- */

#define LIM 48

static int count(const uint8_t *m, int n)
{
    int c = 0;
    for (int i = 0; i < n; i++)
        c += m[i];
    return c;
}

static void list_ok(const char *list, const char *want_formatted, int want_n)
{
    uint8_t mask[LIM];
    GError *err = NULL;
    int rc = qm_list_parse(list, LIM, mask, "--layers", &err);
    if (rc != 0)
        printf("  '%s': %s\n", list, err ? err->message : "(no error)");
    CHECK(rc == 0 && err == NULL);
    g_clear_error(&err);
    char *s = qm_list_format(mask, LIM);
    if (strcmp(s, want_formatted) != 0)
        printf("  '%s' formats as '%s', not '%s'\n", list, s, want_formatted);
    CHECK(strcmp(s, want_formatted) == 0);
    CHECK(count(mask, LIM) == want_n);
    g_free(s);
}

static void list_bad(const char *list, const char *want)
{
    uint8_t mask[LIM];
    GError *err = NULL;
    CHECK(qm_list_parse(list, LIM, mask, "--experts", &err) == -1);
    CHECK(err && err->domain == QM_ERROR && err->code == QM_ERR_USAGE);
    CHECK_CONTAINS(err ? err->message : NULL, want);
    CHECK_CONTAINS(err ? err->message : NULL, "--experts '");
    CHECK(qm_exit_code(err) == 2);
    g_clear_error(&err);
}

static void test_list_parse(void)
{
    list_ok("0-7,12,40-47", "0-7,12,40-47", 17);
    list_ok("47", "47", 1);
    list_ok("0", "0", 1);
    list_ok("0-47", "0-47", 48);
    list_ok(" 1 , 3-4 ", "1,3-4", 3);
    list_ok("5,5,3-5", "3-5", 3);   /* repeats and overlaps are fine */
    list_ok("9,2,0", "0,2,9", 3);   /* any order */
    list_ok("4-4", "4", 1);
    list_ok("007", "7", 1);

    list_bad("7-3", "range 7-3 is reversed");
    list_bad("48", "48 is out of range (0-47)");
    list_bad("40-50", "50 is out of range (0-47)");
    list_bad("4294967296", "4294967296 is out of range");
    static const char *const junk[] = {
        "", "a", "1,", ",1", "1-", "-1", "1--2", "1;2", "1 2", "0x1", "+1",
        "1,,2", "1-2-3", "1 - 2", "99999999999999999999999", "\t1", "1.5"};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        list_bad(junk[i], "expected a list such as 0-7,12,40-47");

    uint8_t mask[LIM];
    GError *err = NULL;
    CHECK(qm_list_parse(NULL, LIM, mask, "--layers", &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "--layers ''");
    g_clear_error(&err);

    /* the mask is cleared first */
    memset(mask, 1, sizeof mask);
    CHECK(qm_list_parse("3", LIM, mask, "--layers", NULL) == 0);
    CHECK(count(mask, LIM) == 1 && mask[3] == 1);
}

static void test_list_format(void)
{
    uint8_t m[10] = {0};
    char *s = qm_list_format(m, 10);
    CHECK(strcmp(s, "") == 0);
    g_free(s);
    for (int i = 0; i < 10; i += 2)
        m[i] = 1;
    s = qm_list_format(m, 10);
    CHECK(strcmp(s, "0,2,4,6,8") == 0);
    g_free(s);
    memset(m, 1, 10);
    s = qm_list_format(m, 10);
    CHECK(strcmp(s, "0-9") == 0);
    g_free(s);
    m[0] = m[5] = 0;
    s = qm_list_format(m, 10);
    CHECK(strcmp(s, "1-4,6-9") == 0);
    g_free(s);
    s = qm_list_format(m, 0);
    CHECK(strcmp(s, "") == 0);
    g_free(s);
}

/* format then parse gives the same mask, for many masks */
static void test_list_round_trip(void)
{
    enum { N = 130 };
    uint32_t seed = 12345;
    for (int iter = 0; iter < 500; iter++) {
        uint8_t a[N], b[N];
        /* runs of random length so that ranges appear */
        int i = 0, on = iter & 1;
        while (i < N) {
            seed = seed * 1103515245u + 12345u;
            int run = 1 + (int)((seed >> 16) % (iter % 7 == 0 ? 40 : 5));
            for (int k = 0; k < run && i < N; k++)
                a[i++] = (uint8_t)on;
            on = !on;
        }
        char *s = qm_list_format(a, N);
        GError *err = NULL;
        if (count(a, N) == 0) {
            CHECK(s[0] == '\0');
            CHECK(qm_list_parse(s, N, b, "x", &err) == -1); /* "" is an error */
        } else {
            CHECK(qm_list_parse(s, N, b, "x", &err) == 0);
            CHECK(memcmp(a, b, N) == 0);
            char *t = qm_list_format(b, N);
            CHECK(strcmp(s, t) == 0);
            CHECK(strstr(s, ",,") == NULL && s[strlen(s) - 1] != ',');
            g_free(t);
        }
        g_clear_error(&err);
        g_free(s);
    }
}

/* ---- JSON ---- */

static void test_json_uint(void)
{
    cJSON *a = cJSON_Parse("[0, 1, 9007199254740991, 9007199254740992, "
                           "9007199254740993, -1, 1.5, 1e300, \"3\", null, "
                           "true, 1e2, 4096.0, 0.1]");
    CHECK(a != NULL);
    if (!a)
        return;
    static const struct {
        int ok;
        uint64_t v;
    } want[] = {{1, 0}, {1, 1}, {1, UINT64_C(9007199254740991)}, {0, 0},
                {0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0},
                {1, 100}, {1, 4096}, {0, 0}};
    CHECK(cJSON_GetArraySize(a) == (int)(sizeof want / sizeof want[0]));
    int i = 0;
    for (const cJSON *x = a->child; x; x = x->next, i++) {
        uint64_t v = 777;
        int ok = qm_json_uint(x, &v);
        if (ok != want[i].ok)
            printf("  entry %d: qm_json_uint gives %d\n", i, ok);
        CHECK(ok == want[i].ok);
        CHECK(v == (ok ? want[i].v : 777)); /* untouched on failure */
    }
    uint64_t v;
    CHECK(qm_json_uint(NULL, &v) == 0);
    cJSON_Delete(a);
}

static void test_json_int(void)
{
    cJSON *o = cJSON_Parse("{\"a\":5,\"b\":-3,\"c\":1.5,\"d\":\"x\","
                           "\"e\":9223372036854775808,"
                           "\"f\":-9223372036854775808,\"g\":1e19,"
                           "\"h\":9007199254740992}");
    CHECK(o != NULL);
    if (!o)
        return;
    int64_t v = 0;
    CHECK(qm_json_int(o, "a", 0, 10, &v) == 0 && v == 5);
    CHECK(qm_json_int(o, "a", 0, 4, &v) == -1);
    CHECK(qm_json_int(o, "a", 6, 10, &v) == -1);
    CHECK(qm_json_int(o, "b", -3, 0, &v) == 0 && v == -3);
    CHECK(qm_json_int(o, "b", 0, 10, &v) == -1);
    CHECK(qm_json_int(o, "c", 0, 10, &v) == -1);
    CHECK(qm_json_int(o, "d", 0, 10, &v) == -1);
    CHECK(qm_json_int(o, "missing", 0, 10, &v) == -1);
    /* 2^63 does not fit an int64 although it equals (double)INT64_MAX */
    v = 1;
    CHECK(qm_json_int(o, "e", INT64_MIN, INT64_MAX, &v) == -1 && v == 1);
    CHECK(qm_json_int(o, "f", INT64_MIN, INT64_MAX, &v) == 0 && v == INT64_MIN);
    CHECK(qm_json_int(o, "f", INT64_MIN + 1, INT64_MAX, &v) == -1);
    CHECK(qm_json_int(o, "g", INT64_MIN, INT64_MAX, &v) == -1);
    /* hi compared exactly, not through a rounded double */
    CHECK(qm_json_int(o, "h", 0, INT64_C(9007199254740991), &v) == -1);
    CHECK(qm_json_int(o, "h", 0, INT64_C(9007199254740992), &v) == 0 &&
          v == INT64_C(9007199254740992));
    cJSON_Delete(o);
}

static char *write_tmp(const char *name, const char *text)
{
    char *p = g_build_filename(tmpdir, name, NULL);
    CHECK(g_file_set_contents(p, text, -1, NULL));
    return p;
}

static void json_load_bad(const char *path, int code, const char *want)
{
    GError *err = NULL;
    cJSON *j = qm_json_load(path, &err);
    CHECK(j == NULL);
    cJSON_Delete(j);
    CHECK(err && err->code == code);
    char *q = g_strdup_printf("'%s'", path);
    CHECK_CONTAINS(err ? err->message : NULL, q);
    CHECK_CONTAINS(err ? err->message : NULL, want);
    g_free(q);
    g_clear_error(&err);
}

static void test_json_load(void)
{
    char *p = write_tmp("ok.json", "\n {\"a\": [1, 2]}\r\n\t \n");
    GError *err = NULL;
    cJSON *j = qm_json_load(p, &err);
    CHECK(j && err == NULL);
    CHECK(j && cJSON_GetArraySize(cJSON_GetObjectItem(j, "a")) == 2);
    cJSON_Delete(j);
    g_unlink(p);
    g_free(p);

    p = write_tmp("trail.json", "{\"a\": 1} {\"b\": 2}");
    json_load_bad(p, QM_ERR_FORMAT, "trailing bytes after the JSON value at byte 9");
    g_unlink(p);
    g_free(p);
    p = write_tmp("cut.json", "{\"a\": ");
    json_load_bad(p, QM_ERR_FORMAT, "invalid JSON near byte");
    g_unlink(p);
    g_free(p);
    p = write_tmp("empty.json", "");
    json_load_bad(p, QM_ERR_FORMAT, "invalid JSON near byte 0");
    g_unlink(p);
    g_free(p);
    p = g_build_filename(tmpdir, "missing.json", NULL);
    json_load_bad(p, QM_ERR_IO, "cannot read");
    g_free(p);
    json_load_bad(tmpdir, QM_ERR_IO, "is a directory");
}

/* ---- errors ---- */

static void test_set_errno(void)
{
    static const struct {
        int errnum, code;
        const char *why;
    } cases[] = {
        {ENOSPC, QM_ERR_NOSPACE, "no space left on device"},
        {EFBIG, QM_ERR_NOSPACE, "file too large"},
        {EDQUOT, QM_ERR_NOSPACE, NULL},
        {ENOENT, QM_ERR_IO, NULL},
        {EACCES, QM_ERR_IO, NULL},
        {EIO, QM_ERR_IO, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        GError *err = NULL;
        CHECK(qm_set_errno(&err, cases[i].errnum, "cannot write", "a/b.json") ==
              -1);
        CHECK(err && err->domain == QM_ERROR && err->code == cases[i].code);
        const char *why = cases[i].why ? cases[i].why
                                       : g_strerror(cases[i].errnum);
        char *want = g_strdup_printf("cannot write 'a/b.json': %s", why);
        CHECK_CONTAINS(err ? err->message : NULL, want);
        CHECK(qm_exit_code(err) == 2);
        g_free(want);
        g_clear_error(&err);
    }
    CHECK(qm_set_errno(NULL, ENOSPC, "x", "y") == -1); /* err may be NULL */
}

static void test_exit_codes(void)
{
    static const struct {
        int code, exit;
    } m[] = {{QM_ERR_IO, 2},      {QM_ERR_FORMAT, 2}, {QM_ERR_USAGE, 2},
             {QM_ERR_NOSPACE, 2}, {QM_ERR_LOCKED, 2}, {QM_ERR_STOPPED, 1},
             {QM_ERR_CHECK, 1}};
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        GError *err = g_error_new(QM_ERROR, m[i].code, "x");
        CHECK(qm_exit_code(err) == m[i].exit);
        g_error_free(err);
    }
    GError *other = g_error_new(G_FILE_ERROR, QM_ERR_CHECK, "x");
    CHECK(qm_exit_code(other) == 2); /* another domain is never a check */
    g_error_free(other);
    CHECK(qm_exit_code(NULL) == 0);
}

/* ---- formatting ---- */

static void test_human_bytes(void)
{
    static const struct {
        uint64_t n;
        const char *s;
    } c[] = {
        {0, "0 B"},
        {1, "1 B"},
        {999, "999 B"},
        {1000, "1.0 kB"},
        {999949, "999.9 kB"},
        {999950, "1.0 MB"}, /* not "1000.0 kB" */
        {999999, "1.0 MB"},
        {9437184, "9.4 MB"},
        {999999999, "1.0 GB"},
        {UINT64_C(58000000000), "58.0 GB"},
        {UINT64_C(1000000000000), "1.0 TB"},
        {UINT64_C(1000000000000000000), "1000.0 PB"}, /* PB is the top unit */
        {UINT64_MAX, "18446.7 PB"},
    };
    char buf[32];
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        qm_human_bytes(c[i].n, buf, sizeof buf);
        if (strcmp(buf, c[i].s) != 0)
            printf("  %llu: '%s', want '%s'\n", (unsigned long long)c[i].n, buf,
                   c[i].s);
        CHECK(strcmp(buf, c[i].s) == 0);
    }
    char small[4];
    CHECK(qm_human_bytes(9437184, small, sizeof small) == small);
    CHECK(strcmp(small, "9.4") == 0); /* truncated, terminated */
}

static void test_hex_and_time(void)
{
    static const uint8_t b[] = {0x00, 0xab, 0xff, 0x10};
    char out[9];
    qm_hex(b, 4, out);
    CHECK(strcmp(out, "00abff10") == 0);
    qm_hex(b, 0, out);
    CHECK(out[0] == '\0');
    char *t = qm_iso_time(0);
    CHECK(strcmp(t, "1970-01-01T00:00:00Z") == 0);
    g_free(t);
    t = qm_iso_time(1000000000.7);
    CHECK(strcmp(t, "2001-09-09T01:46:40Z") == 0);
    g_free(t);
    CHECK(qm_now() > 1.6e9);
    double a = qm_monotonic(), b2 = qm_monotonic();
    CHECK(b2 >= a);
}

/* ---- atomic files ---- */

static int dir_entries(const char *dir, int *tmps)
{
    GDir *d = g_dir_open(dir, 0, NULL);
    int n = 0;
    *tmps = 0;
    const char *name;
    while (d && (name = g_dir_read_name(d))) {
        n++;
        *tmps += fs_is_tmp(name);
    }
    if (d)
        g_dir_close(d);
    return n;
}

static void test_fs_out_commit(void)
{
    char *dir = g_build_filename(tmpdir, "commit", NULL);
    CHECK(fs_mkdir_p(dir, NULL) == 0);
    char *path = g_build_filename(dir, "qmoe.json", NULL);
    GError *err = NULL;
    fs_out *o = fs_out_open(path, &err);
    CHECK(o != NULL && err == NULL);
    if (!o)
        return;
    char *want_tmp = g_strdup_printf("%s.tmp.%ld", path, (long)getpid());
    CHECK(strcmp(o->tmp, want_tmp) == 0 && strcmp(o->path, path) == 0);
    CHECK(fs_is_tmp(o->tmp) && fs_tmp_pid(o->tmp) == getpid());
    CHECK(!fs_is_tmp(o->path));
    CHECK(fs_out_write(o, "hello ", 6, &err) == 0);
    CHECK(fs_out_write(o, "world", 5, &err) == 0);
    CHECK(fs_out_write(o, "", 0, &err) == 0);
    CHECK(o->written == 11);
    /* before commit: only the temporary */
    CHECK(g_file_test(want_tmp, G_FILE_TEST_IS_REGULAR));
    CHECK(!g_file_test(path, G_FILE_TEST_EXISTS));
    CHECK(fs_file_size(want_tmp) == 11);
    CHECK(fs_out_commit(o, &err) == 0 && err == NULL);
    g_clear_error(&err);
    /* after: only the final file, complete */
    CHECK(!g_file_test(want_tmp, G_FILE_TEST_EXISTS));
    gchar *text = NULL;
    CHECK(g_file_get_contents(path, &text, NULL, NULL));
    CHECK(text && strcmp(text, "hello world") == 0);
    g_free(text);
    int tmps, n = dir_entries(dir, &tmps);
    CHECK(n == 1 && tmps == 0);

    /* replacing an existing file */
    CHECK(fs_write_atomic(path, "new", 3, &err) == 0);
    CHECK(g_file_get_contents(path, &text, NULL, NULL));
    CHECK(text && strcmp(text, "new") == 0);
    g_free(text);
    n = dir_entries(dir, &tmps);
    CHECK(n == 1 && tmps == 0);
    g_clear_error(&err);

    g_unlink(path);
    g_rmdir(dir);
    g_free(want_tmp);
    g_free(path);
    g_free(dir);
}

static void test_fs_out_abort(void)
{
    char *dir = g_build_filename(tmpdir, "abort", NULL);
    CHECK(fs_mkdir_p(dir, NULL) == 0);
    char *path = g_build_filename(dir, "x.safetensors", NULL);
    GError *err = NULL;
    fs_out *o = fs_out_open(path, &err);
    CHECK(o != NULL);
    if (o) {
        CHECK(fs_out_write(o, "partial", 7, &err) == 0);
        fs_out_abort(o);
    }
    int tmps, n = dir_entries(dir, &tmps);
    CHECK(n == 0 && tmps == 0);
    CHECK(!g_file_test(path, G_FILE_TEST_EXISTS));
    fs_out_abort(NULL);

    /* an existing final file is untouched by an aborted rewrite */
    CHECK(g_file_set_contents(path, "old", -1, NULL));
    o = fs_out_open(path, &err);
    CHECK(o != NULL);
    if (o) {
        CHECK(fs_out_write(o, "new", 3, &err) == 0);
        fs_out_abort(o);
    }
    gchar *text = NULL;
    CHECK(g_file_get_contents(path, &text, NULL, NULL));
    CHECK(text && strcmp(text, "old") == 0);
    g_free(text);
    n = dir_entries(dir, &tmps);
    CHECK(n == 1 && tmps == 0);
    g_clear_error(&err);
    g_unlink(path);
    g_rmdir(dir);
    g_free(path);
    g_free(dir);
}

/* file_is DIR NAME TEXT LEN: DIR/NAME holds exactly those bytes */
static int file_is(const char *dir, const char *name, const void *want, size_t len)
{
    char *path = g_build_filename(dir, name, NULL);
    gchar *text = NULL;
    gsize n = 0;
    int same = g_file_get_contents(path, &text, &n, NULL) && n == len &&
               memcmp(text, want, len) == 0;
    g_free(text);
    g_free(path);
    return same;
}

static fs_out *batch_file(const char *dir, const char *name, const void *data, size_t len,
                          int direct)
{
    char *path = g_build_filename(dir, name, NULL);
    GError *err = NULL;
    fs_out *o = direct ? fs_out_open_direct(path, &err) : fs_out_open(path, &err);
    g_free(path);
    CHECK(o != NULL);
    if (!o)
        return NULL;
    CHECK(fs_out_write(o, data, len, &err) == 0);
    CHECK(fs_out_finish(o, &err) == 0 && o->fd == -1);
    g_clear_error(&err);
    return o;
}

static void test_fs_batch(void)
{
    char *dir = g_build_filename(tmpdir, "batch", NULL);
    char *sub = g_build_filename(dir, "experts", NULL);
    CHECK(fs_mkdir_p(sub, NULL) == 0);
    GError *err = NULL;
    fs_batch *b = fs_batch_new(dir, &err);
    CHECK(b != NULL && err == NULL);
    if (!b)
        return;
    /* O_DIRECT: whole aligned blocks, then an unaligned tail */
    size_t big = 3 * FS_DIRECT_ALIGN + 123;
    uint8_t *data = g_aligned_alloc(1, 4 * FS_DIRECT_ALIGN, FS_DIRECT_ALIGN);
    for (size_t i = 0; i < big; i++)
        data[i] = (uint8_t)(i * 7 + 1);
    char *sub_a = g_build_filename("experts", "a", NULL);
    fs_out *o[3] = {batch_file(dir, sub_a, data, big, 1),
                    batch_file(sub, "b", "bee", 3, 0), batch_file(dir, "c", "", 0, 1)};
    for (int i = 0; i < 3; i++)
        if (o[i])
            fs_batch_add(b, o[i]);
    CHECK(fs_batch_count(b) == 3 && fs_batch_bytes(b) == big + 3);
    /* before the commit: temporaries only */
    int tmps, n = dir_entries(sub, &tmps);
    CHECK(n == 2 && tmps == 2);
    char *final_a = g_build_filename(dir, sub_a, NULL);
    CHECK(!g_file_test(final_a, G_FILE_TEST_EXISTS));
    g_free(final_a);
    CHECK(fs_batch_commit(b, &err) == 0 && err == NULL);
    g_clear_error(&err);
    CHECK(fs_batch_count(b) == 0 && fs_batch_bytes(b) == 0);
    n = dir_entries(sub, &tmps);
    CHECK(n == 2 && tmps == 0);
    CHECK(file_is(dir, sub_a, data, big));
    CHECK(file_is(sub, "b", "bee", 3));
    CHECK(file_is(dir, "c", "", 0));
    /* an empty batch commits trivially */
    CHECK(fs_batch_commit(b, &err) == 0);

    /* abort: the temporaries go, an existing final file stays */
    fs_out *x = batch_file(sub, "b", "new", 3, 0);
    if (x)
        fs_batch_add(b, x);
    fs_batch_abort(b);
    n = dir_entries(sub, &tmps);
    CHECK(n == 2 && tmps == 0 && file_is(sub, "b", "bee", 3));

    /* a rename that fails (the final name is a non-empty directory): an
     * error naming it, the files after it removed, the batch empty */
    char *blocker = g_build_filename(dir, "d", "inner", NULL);
    CHECK(fs_mkdir_p(blocker, NULL) == 0);
    fs_out *y[2] = {batch_file(dir, "d", "dd", 2, 0), batch_file(sub, "e", "ee", 2, 0)};
    for (int i = 0; i < 2; i++)
        if (y[i])
            fs_batch_add(b, y[i]);
    CHECK(fs_batch_commit(b, &err) == -1 && err && strstr(err->message, "/d'") &&
          strstr(err->message, "cannot rename into place"));
    g_clear_error(&err);
    CHECK(fs_batch_count(b) == 0);
    n = dir_entries(sub, &tmps);
    CHECK(n == 2 && tmps == 0);
    n = dir_entries(dir, &tmps);
    CHECK(n == 3 && tmps == 0); /* experts/, c, d/ */
    fs_batch_free(b);
    fs_batch_free(NULL);

    /* a directory that cannot be opened */
    char *missing = g_build_filename(dir, "missing", NULL);
    CHECK(fs_batch_new(missing, &err) == NULL && err && strstr(err->message, "missing"));
    g_clear_error(&err);

    g_rmdir(blocker);
    char *d = g_build_filename(dir, "d", NULL);
    g_rmdir(d);
    g_free(d);
    char *p = g_build_filename(dir, sub_a, NULL);
    g_unlink(p);
    g_free(p);
    p = g_build_filename(sub, "b", NULL);
    g_unlink(p);
    g_free(p);
    p = g_build_filename(dir, "c", NULL);
    g_unlink(p);
    g_free(p);
    g_rmdir(sub);
    g_rmdir(dir);
    g_free(missing);
    g_free(blocker);
    g_free(sub_a);
    g_aligned_free(data);
    g_free(sub);
    g_free(dir);
}

/* A batch's records go in one write; a reader sees each as a line. */
/* ---- CRC-32 ---- */

/* qm_crc32 against zlib's crc32_z on random buffers: every length up to
 * 1 KiB (each tail and lane count), odd alignments, chained calls with
 * random split points, and 4 MiB at once. */
static void test_crc32(void)
{
    size_t big = 4u << 20;
    uint8_t *buf = g_malloc(big + 64);
    GRand *r = g_rand_new_with_seed(13);
    for (size_t i = 0; i < big + 64; i++)
        buf[i] = (uint8_t)g_rand_int(r);
    int bad = 0;
    for (size_t len = 0; len <= 1024; len++)
        for (size_t al = 0; al < 3; al++) {
            const uint8_t *p = buf + al * 7;
            uint32_t seed = len % 5 ? g_rand_int(r) : 0;
            bad += qm_crc32(seed, p, len) != (uint32_t)crc32_z(seed, p, len);
        }
    CHECK(bad == 0);
    uint32_t want = (uint32_t)crc32_z(0, buf + 1, big);
    CHECK(qm_crc32(0, buf + 1, big) == want);
    CHECK(qm_crc32_plain(0, buf + 1, big) == want);
    bad = 0;
    for (int t = 0; t < 200; t++) {
        size_t a = g_rand_int_range(r, 0, 70000), b = g_rand_int_range(r, 0, 70000);
        uint32_t c = qm_crc32(0, buf, a);
        c = qm_crc32(c, buf + a, b);
        bad += c != (uint32_t)crc32_z(0, buf, a + b);
    }
    CHECK(bad == 0);
    /* the check value of the CRC-32 catalogue */
    CHECK(qm_crc32(0, "123456789", 9) == 0xcbf43926u);
    if (!qm_crc32_fast())
        printf("  (no PCLMULQDQ on this CPU: the zlib path was tested twice)\n");
    g_rand_free(r);
    g_free(buf);
}

/* The journal's hand-written JSON is cJSON_PrintUnformatted of
 * mf_file_to_json, byte for byte, for records of every shape: numbers
 * around the int range and 2^53, times with and without a fraction,
 * negative layers, NULL and escaped strings, no tensors; and it reads
 * back. */
static void test_journal_json(void)
{
    GRand *r = g_rand_new_with_seed(7);
    static const char *names[] = {"model.layers.3.mlp.experts.7.up_proj.weight",
                                  "q\"uote\\back\nnl\ttab\x01\x1f ctl", "utf8 \xc3\xa9\xe2\x82\xac",
                                  "", NULL};
    static const double nums[] = {0, 1, -1, 2147483647.0, 2147483648.0, -2147483648.0,
                                  -2147483649.0, 4294967295.0, 9007199254740992.0,
                                  9007199254740993.0, 1e15, 123456789012345678.0};
    int bad = 0, n = 0;
    for (int t = 0; t < 400; t++) {
        mf_file f;
        memset(&f, 0, sizeof f);
        f.path = g_strdup_printf("experts/expert_%03d_layer_%02d.safetensors", t, t % 61);
        f.kind = (mf_kind)(t % 4);
        f.layer = t % 7 == 0 ? -1 : t;
        f.expert = t % 5 == 0 ? -1 : g_rand_int_range(r, 0, 1 << 20);
        f.size = t < 12 ? (uint64_t)nums[t] : (uint64_t)g_rand_int(r) << (t % 33);
        memset(f.sha256, "0123456789abcdef"[t % 16], 64);
        f.time = t % 3 == 0 ? 1764197000.0 + t
                            : 1764197000.0 + g_rand_double(r) * 1e6;
        if (t % 9 == 4)
            f.time = g_rand_double(r);
        if (t % 2)
            g_strlcpy(f.source_id, "0123456789abcdef", sizeof f.source_id);
        f.n_tensors = t % 4;
        f.tensors = g_new0(mf_tensor, 4);
        for (int i = 0; i < f.n_tensors; i++) {
            mf_tensor *m = &f.tensors[i];
            m->name = (char *)names[(t + i) % 4];
            m->dtype = (st_dtype)((t + i) % ST_DTYPE_COUNT);
            m->ndim = (t + i) % (ST_MAX_DIMS + 1);
            for (int d = 0; d < m->ndim; d++)
                m->shape[d] = (int64_t)nums[(t + d) % 12];
            m->begin = (uint64_t)g_rand_int(r) << (i * 11);
            m->end = m->begin + (uint64_t)nums[(t * 3 + i) % 12];
            m->crc32 = g_rand_int(r);
            m->src_file = (char *)names[(t + i + 1) % 5];
            m->src_name = (char *)names[(t + i + 2) % 5];
            m->src_offset = t < 12 ? (uint64_t)nums[(t + i) % 12] : (uint64_t)g_rand_int(r) << 20;
            m->slice = i % 2 ? -1 : t;
        }
        cJSON *j = mf_file_to_json(&f);
        char *want = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        GString *got = g_string_new(NULL);
        mf_file_append_json(got, &f);
        if (strcmp(got->str, want) != 0 && bad++ < 3)
            printf("  differs:\n  cJSON: %s\n  here:  %s\n", want, got->str);
        /* and what the reader takes back */
        cJSON *back = cJSON_Parse(got->str);
        mf_file g;
        GError *err = NULL;
        if (!back)
            bad++;
        else if (mf_file_from_json(back, &g, "test", &err) == 0) {
            n += g.size == f.size && g.n_tensors == f.n_tensors && g.layer == f.layer;
            mf_file_clear(&g);
        }
        g_clear_error(&err);
        cJSON_Delete(back);
        cJSON_free(want);
        g_string_free(got, TRUE);
        g_free(f.path);
        g_free(f.tensors);
    }
    CHECK(bad == 0);
    /* the reader refuses some of the records (no name, dtype "?"), all
     * the same for both renderings: those with a good one read back */
    CHECK(n > 50);
    g_rand_free(r);
}

/* qmoe.json's "files" is spliced in by hand after cJSON printed the
 * rest: the file is still what cJSON prints for it (parse and print
 * again give the same bytes), for none and for several records, and it
 * loads back. */
static void test_manifest_splice(void)
{
    for (int nf = 0; nf <= 3; nf += 3) {
        manifest *m = g_new0(manifest, 1);
        m->source_path = g_strdup("/src \"q\"");
        m->layout = g_strdup("qwen3_moe");
        m->shards = 1;
        m->n_files = nf;
        m->files = g_new0(mf_file, 3);
        for (int i = 0; i < nf; i++) {
            mf_file *f = &m->files[i];
            f->path = g_strdup_printf("experts/expert_%03d_layer_00.safetensors", i);
            f->layer = 0;
            f->expert = i;
            f->size = 5000000000ull + (uint64_t)i;
            memset(f->sha256, 'c', 64);
            f->time = 1764197000.123456 + i;
            f->n_tensors = 1;
            f->tensors = g_new0(mf_tensor, 1);
            f->tensors[0].name = g_strdup("w");
            f->tensors[0].ndim = 1;
            f->tensors[0].shape[0] = 4;
            f->tensors[0].end = 8;
            f->tensors[0].slice = -1;
        }
        char *path = g_build_filename(tmpdir, "qmoe.json", NULL);
        GError *err = NULL;
        CHECK(manifest_save(m, path, &err) == 0);
        gchar *text = NULL;
        gsize len = 0;
        CHECK(g_file_get_contents(path, &text, &len, NULL) && len > 2 && text[len - 1] == '\n');
        if (text && len) {
            text[len - 1] = '\0';
            cJSON *j = cJSON_Parse(text);
            char *again = j ? cJSON_PrintUnformatted(j) : NULL;
            CHECK(again && strcmp(again, text) == 0);
            CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(j, "files")) == nf);
            cJSON_free(again);
            cJSON_Delete(j);
        }
        manifest *back = manifest_load(path, &err);
        CHECK(back && back->n_files == nf && err == NULL);
        if (back && nf)
            CHECK(back->files[2].size == 5000000002ull && back->files[2].expert == 2);
        manifest_free(back);
        g_clear_error(&err);
        g_free(text);
        g_unlink(path);
        g_free(path);
        manifest_free(m);
    }
}

static void test_journal_append_n(void)
{
    char *path = g_build_filename(tmpdir, "journal.jsonl", NULL);
    GError *err = NULL;
    int fd = mf_journal_open(path, &err);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    mf_tensor t[3];
    mf_file f[3];
    memset(t, 0, sizeof t);
    memset(f, 0, sizeof f);
    for (int i = 0; i < 3; i++) {
        t[i].name = g_strdup_printf("model.layers.0.mlp.experts.%d.up_proj.weight", i);
        t[i].dtype = ST_BF16;
        t[i].ndim = 2;
        t[i].shape[0] = 4;
        t[i].shape[1] = 8;
        t[i].end = 64;
        t[i].crc32 = 0xdeadbeefu + (uint32_t)i;
        t[i].src_file = g_strdup("model.safetensors");
        t[i].src_name = g_strdup(t[i].name);
        t[i].slice = -1;
        f[i].path = g_strdup_printf("experts/expert_%d_layer_0.safetensors", i);
        f[i].layer = 0;
        f[i].expert = i;
        f[i].size = 200 + (uint64_t)i;
        memset(f[i].sha256, 'a' + i, 64);
        f[i].n_tensors = 1;
        f[i].tensors = &t[i];
    }
    CHECK(mf_journal_append_n(fd, path, f, 2, &err) == 0 && err == NULL);
    CHECK(mf_journal_append(fd, path, &f[2], &err) == 0 && err == NULL);
    CHECK(mf_journal_append_n(fd, path, f, 0, &err) == 0); /* nothing */
    close(fd);
    gchar *text = NULL;
    CHECK(g_file_get_contents(path, &text, NULL, NULL));
    int lines = 0;
    for (const char *c = text; c && *c; c++)
        lines += *c == '\n';
    CHECK(lines == 3 && text && g_str_has_suffix(text, "}\n"));
    g_free(text);
    GArray *got = g_array_new(FALSE, TRUE, sizeof(mf_file));
    CHECK(mf_journal_read(path, got, &err) == 0 && got->len == 3);
    for (guint i = 0; i < got->len && i < 3; i++) {
        mf_file *r = &g_array_index(got, mf_file, i);
        CHECK(strcmp(r->path, f[i].path) == 0 && r->size == f[i].size &&
              r->n_tensors == 1 && r->tensors[0].crc32 == t[i].crc32);
        mf_file_clear(r);
    }
    g_array_free(got, TRUE);
    g_clear_error(&err);
    for (int i = 0; i < 3; i++) {
        g_free(t[i].name);
        g_free(t[i].src_file);
        g_free(t[i].src_name);
        g_free(f[i].path);
    }
    g_unlink(path);
    g_free(path);
}

static void test_fs_out_errors(void)
{
    char *path = g_build_filename(tmpdir, "no", "such", "dir", "f.json", NULL);
    GError *err = NULL;
    CHECK(fs_out_open(path, &err) == NULL);
    CHECK(err && err->code == QM_ERR_IO);
    CHECK_CONTAINS(err ? err->message : NULL, "cannot create '");
    CHECK_CONTAINS(err ? err->message : NULL, path);
    g_clear_error(&err);
    CHECK(fs_write_atomic(path, "x", 1, &err) == -1);
    CHECK(err && err->code == QM_ERR_IO);
    g_clear_error(&err);
    g_free(path);

    /* a file size limit makes write() fail with EFBIG: NOSPACE, named after
     * the final file, and the abort leaves nothing behind */
    path = g_build_filename(tmpdir, "big.bin", NULL);
    struct rlimit old, lim;
    CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
    lim = old;
    lim.rlim_cur = 4096;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    fs_out *o = fs_out_open(path, &err);
    CHECK(o != NULL);
    if (o && setrlimit(RLIMIT_FSIZE, &lim) == 0) {
        static char buf[3 * 4096];
        int rc = fs_out_write(o, buf, sizeof buf, &err);
        setrlimit(RLIMIT_FSIZE, &old);
        CHECK(rc == -1);
        CHECK(err && err->code == QM_ERR_NOSPACE);
        char *q = g_strdup_printf("cannot write '%s': file too large", path);
        CHECK_CONTAINS(err ? err->message : NULL, q);
        g_free(q);
        CHECK(o->written == 4096);
        fs_out_abort(o);
    } else {
        fs_out_abort(o);
        CHECK(!"setrlimit");
    }
    signal(SIGXFSZ, prev);
    g_clear_error(&err);
    int tmps;
    CHECK(dir_entries(tmpdir, &tmps) == 0 && tmps == 0);
    g_free(path);
}

static void test_tmp_names(void)
{
    static const struct {
        const char *name;
        int is_tmp;
        long pid;
    } c[] = {
        {"expert_000_layer_00.safetensors.tmp.123", 1, 123},
        {"/out/experts/x.safetensors.tmp.4194304", 1, 4194304},
        {"qmoe.json", 0, 0},
        {"x.tmp", 0, 0},
        {"x.tmp.", 1, 0},
        {"x.tmp.12x", 1, 0},
        {"x.tmp.-5", 1, 0},
        {"x.tmp.0", 1, 0},
        {"x.tmp.y.tmp.42", 1, 42},          /* pid after the last .tmp. */
        {"/data/run.tmp.7/out.json", 0, 0}, /* a directory does not count */
        {"/data/run.tmp.7/out.json.tmp.9", 1, 9},
        {"run.tmp.7/", 0, 0},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        int t = fs_is_tmp(c[i].name);
        long p = (long)fs_tmp_pid(c[i].name);
        if (t != c[i].is_tmp || p != c[i].pid)
            printf("  '%s': is_tmp %d pid %ld\n", c[i].name, t, p);
        CHECK(t == c[i].is_tmp && p == c[i].pid);
    }
}

static void test_fs_misc(void)
{
    char *deep = g_build_filename(tmpdir, "a", "b", "c", NULL);
    GError *err = NULL;
    CHECK(fs_mkdir_p(deep, &err) == 0);
    CHECK(fs_mkdir_p(deep, &err) == 0); /* existing is fine */
    CHECK(g_file_test(deep, G_FILE_TEST_IS_DIR));
    CHECK(fs_fsync_dir(deep, &err) == 0);
    g_clear_error(&err);
    char *file = g_build_filename(deep, "f", NULL);
    CHECK(g_file_set_contents(file, "12345", -1, NULL));
    CHECK(fs_file_size(file) == 5);
    errno = 0;
    CHECK(fs_file_size(deep) == -1 && errno == EISDIR);
    char *missing = g_build_filename(deep, "missing", NULL);
    errno = 0;
    CHECK(fs_file_size(missing) == -1 && errno == ENOENT);
    CHECK(fs_fsync_dir(missing, &err) == -1);
    CHECK(err && err->code == QM_ERR_IO);
    CHECK_CONTAINS(err ? err->message : NULL, missing);
    g_clear_error(&err);
    char *under = g_build_filename(file, "x", NULL); /* below a regular file */
    CHECK(fs_mkdir_p(under, &err) == -1);
    CHECK(err && err->code == QM_ERR_IO);
    CHECK_CONTAINS(err ? err->message : NULL, under);
    g_clear_error(&err);

    CHECK(fs_pid_alive(getpid()) == 1);
    CHECK(fs_pid_alive(0) == 0);
    CHECK(fs_pid_alive(-1) == 0);

    g_unlink(file);
    for (int i = 0; i < 3; i++) {
        g_rmdir(deep);
        char *up = g_path_get_dirname(deep);
        g_free(deep);
        deep = up;
    }
    g_free(deep);
    g_free(under);
    g_free(missing);
    g_free(file);
}

/* ---- memory available (base/memory.c) ---- */

static void put(const char *dir, const char *name, const char *text)
{
    GError *err = NULL;
    CHECK(fs_mkdir_p(dir, &err) == 0);
    g_clear_error(&err);
    char *f = g_build_filename(dir, name, NULL);
    CHECK(g_file_set_contents(f, text, -1, NULL));
    g_free(f);
}

static void test_memory_available(void)
{
    CHECK(qm_meminfo_available("MemTotal:       24000000 kB\nMemFree:  1 kB\n"
                               "MemAvailable:   20000000 kB\n") == 20000000ull << 10);
    CHECK(qm_meminfo_available("MemTotal: 5 kB\n") == 0);
    CHECK(qm_meminfo_available("MemAvailable: x kB\n") == 0);
    CHECK(qm_meminfo_available(NULL) == 0);

    /* v2: the smallest memory.max from the process's group up to the root */
    char *root = g_build_filename(tmpdir, "cg", NULL);
    char *a = g_build_filename(root, "a", NULL), *ab = g_build_filename(a, "b", NULL);
    put(root, "memory.max", "max\n");
    put(a, "memory.max", "3221225472\n");
    put(ab, "memory.max", "max\n");
    CHECK(qm_cgroup_memory_limit(root, "0::/a/b\n") == 3221225472ull);
    put(ab, "memory.max", "1000000\n");
    CHECK(qm_cgroup_memory_limit(root, "0::/a/b\n") == 1000000);
    CHECK(qm_cgroup_memory_limit(root, "0::/\n") == UINT64_MAX);
    CHECK(qm_cgroup_memory_limit(root, "0::/nowhere\n") == UINT64_MAX);
    /* a path climbing out of the cgroup filesystem is not followed */
    CHECK(qm_cgroup_memory_limit(root, "0::/a/b/../../..\n") == UINT64_MAX);
    /* v1: the memory controller's line; 2^63 rounded to a page is no limit */
    char *m = g_build_filename(root, "memory", "job", NULL);
    put(m, "memory.limit_in_bytes", "9223372036854771712\n");
    CHECK(qm_cgroup_memory_limit(root, "5:cpu,cpuacct:/job\n4:memory:/job\n") == UINT64_MAX);
    put(m, "memory.limit_in_bytes", "2147483648\n");
    CHECK(qm_cgroup_memory_limit(root, "5:cpu,cpuacct:/job\n4:memory:/job\n") ==
          2147483648ull);
    CHECK(qm_cgroup_memory_limit(root, "4:cpu:/job\n") == UINT64_MAX);
    CHECK(qm_cgroup_memory_limit(root, "") == UINT64_MAX);
    CHECK(qm_cgroup_memory_limit(root, NULL) == UINT64_MAX);

    /* the process's own reading is something, and the hook replaces it */
    g_unsetenv("QMOE_TEST_MEMORY_BYTES");
    CHECK(qm_memory_available() > 0);
    g_setenv("QMOE_TEST_MEMORY_BYTES", "12345", TRUE);
    CHECK(qm_memory_available() == 12345);
    g_unsetenv("QMOE_TEST_MEMORY_BYTES");
    char *cmd = g_strdup_printf("rm -rf '%s'", root);
    CHECK(system(cmd) == 0);
    g_free(cmd);
    g_free(m);
    g_free(ab);
    g_free(a);
    g_free(root);
}

/* ---- checked opens (issue 17) ---- */

/* Each call returns at once (a FIFO opened without O_NONBLOCK would block
 * this test forever, which tests/run.sh reports as a hang). */
/* fs_dir: files opened relative to a directory listed once; what the
 * listing says never stands for the check on the file opened. */
static void test_fs_dir(void)
{
    char *d = g_build_filename(tmpdir, "fsdir", NULL);
    char *sub = g_build_filename(d, "sub", NULL);
    char *reg = g_build_filename(sub, "a", NULL);
    char *fifo = g_build_filename(sub, "fifo", NULL);
    char *late = g_build_filename(sub, "late", NULL);
    char *top = g_build_filename(d, "top", NULL);
    GError *err = NULL;
    struct stat st;
    CHECK(g_mkdir_with_parents(sub, 0755) == 0);
    CHECK(g_file_set_contents(reg, "abcd", -1, NULL));
    CHECK(g_file_set_contents(top, "xy", -1, NULL));
    CHECK(mkfifo(fifo, 0644) == 0);
    char *link = g_build_filename(sub, "link", NULL), *zero = g_build_filename(sub, "zero", NULL);
    CHECK(symlink("a", link) == 0);
    CHECK(symlink("/dev/zero", zero) == 0);
    fs_dir *h = fs_dir_open(d);
    CHECK(h != NULL);
    CHECK(fs_dir_open(reg) == NULL); /* not a directory */

    int fd = fs_dir_open_regular(h, "sub/a", reg, O_RDONLY | O_NONBLOCK, "cannot open", &st,
                                 &err);
    CHECK(fd >= 0 && err == NULL && st.st_size == 4);
    char buf[8] = {0};
    CHECK(fd >= 0 && pread(fd, buf, sizeof buf, 0) == 4 && memcmp(buf, "abcd", 4) == 0);
    if (fd >= 0)
        close(fd);
    fd = fs_dir_open_regular(h, "top", top, O_RDONLY, "cannot open", &st, &err);
    CHECK(fd >= 0 && st.st_size == 2);
    CHECK(fd < 0 || (fcntl(fd, F_GETFL) & O_NONBLOCK) == 0);
    if (fd >= 0)
        close(fd);
    /* a link is not listed as a regular file: stat()ed, followed */
    fd = fs_dir_open_regular(h, "sub/link", "L", O_RDONLY, "cannot open", &st, &err);
    CHECK(fd >= 0 && st.st_size == 4);
    if (fd >= 0)
        close(fd);
    /* refused before open, the message naming the path given */
    CHECK(fs_dir_open_regular(h, "sub/fifo", fifo, O_RDONLY, "cannot open", &st, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, fifo);
    CHECK_CONTAINS(err ? err->message : NULL, "is a FIFO");
    g_clear_error(&err);
    CHECK(fs_dir_open_regular(h, "sub/zero", "Z", O_RDONLY, "cannot open", &st, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "is a character device");
    g_clear_error(&err);
    CHECK(fs_dir_open_regular(h, "sub/none", "N", O_RDONLY, "cannot open", &st, &err) == -1 &&
          errno == ENOENT);
    CHECK_CONTAINS(err ? err->message : NULL, "'N'");
    g_clear_error(&err);
    /* after the listing: a new file opens; a listed file replaced by a
     * FIFO is refused by the check on the open file, without blocking */
    CHECK(g_file_set_contents(late, "123", -1, NULL));
    fd = fs_dir_open_regular(h, "sub/late", late, O_RDONLY, "cannot open", &st, &err);
    CHECK(fd >= 0 && st.st_size == 3);
    if (fd >= 0)
        close(fd);
    CHECK(unlink(reg) == 0 && mkfifo(reg, 0644) == 0);
    CHECK(fs_dir_open_regular(h, "sub/a", reg, O_RDONLY, "cannot open", &st, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "is a FIFO");
    g_clear_error(&err);
    fs_dir_close(h);
    /* no directory: by path */
    fd = fs_dir_open_regular(NULL, "ignored", top, O_RDONLY, "cannot open", &st, &err);
    CHECK(fd >= 0 && st.st_size == 2);
    if (fd >= 0)
        close(fd);
    fs_dir_close(NULL);
    char *rm = g_strdup_printf("rm -rf '%s'", d);
    CHECK(system(rm) == 0);
    g_free(rm);
    g_free(d);
    g_free(sub);
    g_free(reg);
    g_free(fifo);
    g_free(late);
    g_free(top);
    g_free(link);
    g_free(zero);
}

static void test_fs_checked_opens(void)
{
    char *d = g_build_filename(tmpdir, "chk", NULL);
    char *reg = g_build_filename(d, "reg", NULL);
    char *fifo = g_build_filename(d, "fifo", NULL);
    char *to_zero = g_build_filename(d, "zero", NULL);
    char *to_reg = g_build_filename(d, "link", NULL);
    char *sentinel = g_build_filename(tmpdir, "sentinel", NULL);
    GError *err = NULL;
    CHECK(g_mkdir(d, 0755) == 0);
    CHECK(g_file_set_contents(reg, "abc", -1, NULL));
    CHECK(g_file_set_contents(sentinel, "keep", -1, NULL));
    CHECK(mkfifo(fifo, 0644) == 0);
    CHECK(symlink("/dev/zero", to_zero) == 0);
    CHECK(symlink(sentinel, to_reg) == 0);

    /* reading: regular files and links to them; FIFOs and devices refused */
    int fd = fs_open_regular(reg, O_RDONLY, "cannot open", &err);
    CHECK(fd >= 0 && err == NULL);
    CHECK(fd < 0 || (fcntl(fd, F_GETFL) & O_NONBLOCK) == 0);
    if (fd >= 0)
        close(fd);
    fd = fs_open_regular(to_reg, O_RDONLY, "cannot open", &err);
    CHECK(fd >= 0); /* SRC may be made of links (the hub cache) */
    if (fd >= 0)
        close(fd);
    CHECK(fs_open_regular(fifo, O_RDONLY, "cannot open", &err) == -1);
    CHECK(err && err->code == QM_ERR_IO);
    CHECK_CONTAINS(err ? err->message : NULL, fifo);
    CHECK_CONTAINS(err ? err->message : NULL, "is a FIFO");
    g_clear_error(&err);
    CHECK(fs_open_regular(to_zero, O_RDONLY, "cannot open source", &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "cannot open source");
    CHECK_CONTAINS(err ? err->message : NULL, "is a character device");
    CHECK_CONTAINS(err ? err->message : NULL, "'/dev/zero'");
    g_clear_error(&err);
    CHECK(fs_open_regular(d, O_RDONLY, "cannot open", &err) == -1 && errno == EISDIR);
    CHECK_CONTAINS(err ? err->message : NULL, "is a directory");
    g_clear_error(&err);
    char *missing = g_build_filename(d, "missing", NULL);
    CHECK(fs_open_regular(missing, O_RDONLY, "cannot open", &err) == -1 && errno == ENOENT);
    CHECK_CONTAINS(err ? err->message : NULL, g_strerror(ENOENT));
    g_clear_error(&err);

    char *data = NULL;
    size_t len = 0;
    CHECK(fs_read_file(reg, "cannot read", &data, &len, &err) == 0);
    CHECK(len == 3 && data && strcmp(data, "abc") == 0);
    g_free(data);
    CHECK(fs_read_file(fifo, "cannot read", &data, &len, &err) == -1 && !data);
    CHECK_CONTAINS(err ? err->message : NULL, "is a FIFO");
    g_clear_error(&err);
    CHECK(fs_read_file(to_zero, "cannot read", &data, &len, &err) == -1);
    g_clear_error(&err);
    CHECK(fs_read_out_file(to_reg, "cannot read", &data, &len, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "is a symbolic link to");
    g_clear_error(&err);
    CHECK(fs_check_regular(reg, &err) == 0 && fs_check_regular(missing, &err) == 0);
    CHECK(fs_check_regular(fifo, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "is a FIFO, not a regular file");
    g_clear_error(&err);

    /* writing in OUT: no symlink followed, no FIFO opened, 0644 */
    CHECK(fs_open_out(to_reg, O_WRONLY | O_APPEND | O_CREAT, "cannot open log", &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, to_reg);
    CHECK_CONTAINS(err ? err->message : NULL, sentinel); /* what it points at */
    g_clear_error(&err);
    CHECK(fs_open_out(fifo, O_WRONLY | O_APPEND | O_CREAT, "cannot open", &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "is a FIFO");
    g_clear_error(&err);
    mode_t old_mask = umask(0);
    char *made = g_build_filename(d, "made", NULL);
    fd = fs_open_out(made, O_WRONLY | O_CREAT, "cannot create", &err);
    CHECK(fd >= 0);
    if (fd >= 0)
        close(fd);
    struct stat st;
    CHECK(stat(made, &st) == 0 && (st.st_mode & 07777) == 0644);

    /* a symlink at the temporary's name is refused; a regular leftover of
     * an earlier process with our pid is replaced */
    char *fin = g_build_filename(d, "final", NULL);
    char *tmp = g_strdup_printf("%s.tmp.%ld", fin, (long)getpid());
    CHECK(symlink(sentinel, tmp) == 0);
    CHECK(fs_write_atomic(fin, "new", 3, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, tmp);
    CHECK_CONTAINS(err ? err->message : NULL, "is a symbolic link to");
    g_clear_error(&err);
    g_unlink(tmp);
    CHECK(g_file_set_contents(tmp, "leftover", -1, NULL));
    CHECK(fs_write_atomic(fin, "new", 3, &err) == 0);
    CHECK(stat(fin, &st) == 0 && (st.st_mode & 07777) == 0644);
    CHECK(fs_write_replace(fin, "newer", 5, &err) == 0);
    CHECK(fs_read_file(fin, "cannot read", &data, &len, &err) == 0 && len == 5);
    g_free(data);
    CHECK(!g_file_test(tmp, G_FILE_TEST_EXISTS));
    CHECK(g_file_get_contents(sentinel, &data, NULL, NULL) && strcmp(data, "keep") == 0);
    g_free(data);

    /* directories: OUT may be a link, its subdirectories may not */
    char *real = g_build_filename(d, "real", NULL);
    char *out = g_build_filename(d, "out", NULL);
    char *sub = g_build_filename(out, ".qmoe", "shard-0-of-2", NULL);
    CHECK(g_mkdir(real, 0755) == 0 && symlink(real, out) == 0);
    CHECK(fs_mkdir_out(out, sub, &err) == 0);
    CHECK(stat(sub, &st) == 0 && (st.st_mode & 07777) == 0755);
    char *ex = g_build_filename(out, "experts", NULL);
    CHECK(symlink(d, ex) == 0);
    CHECK(fs_mkdir_out(out, ex, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, ex);
    CHECK_CONTAINS(err ? err->message : NULL, d); /* its target */
    g_clear_error(&err);
    CHECK(fs_mkdir_out(out, "/elsewhere", &err) == -1);
    g_clear_error(&err);
    umask(old_mask);

    g_unlink(ex);
    g_rmdir(sub);
    char *q = g_path_get_dirname(sub);
    g_rmdir(q);
    g_free(q);
    g_unlink(out);
    g_rmdir(real);
    g_unlink(fin);
    g_unlink(made);
    g_unlink(reg);
    g_unlink(fifo);
    g_unlink(to_zero);
    g_unlink(to_reg);
    g_rmdir(d);
    g_unlink(sentinel);
    g_free(ex);
    g_free(sub);
    g_free(out);
    g_free(real);
    g_free(fin);
    g_free(tmp);
    g_free(made);
    g_free(missing);
    g_free(sentinel);
    g_free(to_reg);
    g_free(to_zero);
    g_free(fifo);
    g_free(reg);
    g_free(d);
}

int main(void)
{
    tmpdir = g_dir_make_tmp("qmoe-util-XXXXXX", NULL);
    if (!tmpdir) {
        printf("FAIL cannot make a temporary directory\n");
        return 1;
    }
    RUN(test_list_parse);
    RUN(test_list_format);
    RUN(test_list_round_trip);
    RUN(test_json_uint);
    RUN(test_json_int);
    RUN(test_json_load);
    RUN(test_set_errno);
    RUN(test_exit_codes);
    RUN(test_human_bytes);
    RUN(test_hex_and_time);
    RUN(test_fs_out_commit);
    RUN(test_fs_out_abort);
    RUN(test_fs_out_errors);
    RUN(test_fs_batch);
    RUN(test_journal_append_n);
    RUN(test_crc32);
    RUN(test_journal_json);
    RUN(test_manifest_splice);
    RUN(test_tmp_names);
    RUN(test_fs_misc);
    RUN(test_memory_available);
    RUN(test_fs_checked_opens);
    RUN(test_fs_dir);
    g_rmdir(tmpdir);
    g_free(tmpdir);
    TEST_EXIT();
}
