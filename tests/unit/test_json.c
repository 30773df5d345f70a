/* test_json.c - base/json.h: the hand-written JSON string writer and reader
 * against fixed bytes, against cJSON, and against each other. */
#include "base/json.h"
#include "testhelp.h"

#include <cjson/cJSON.h>
#include <stdlib.h>

/* The writer's bytes for LEN bytes of V equal WANT. */
static int put_is(const char *v, size_t len, const char *want)
{
    GString *s = g_string_new(NULL);
    qm_json_put_str_len(s, v, len);
    int ok = s->len == strlen(want) && memcmp(s->str, want, s->len) == 0;
    if (!ok)
        printf("  put %zu bytes: got %s, want %s\n", len, s->str, want);
    g_string_free(s, TRUE);
    return ok;
}

static void test_put_escapes(void)
{
    CHECK(put_is("", 0, "\"\""));
    CHECK(put_is("plain text", 10, "\"plain text\""));
    CHECK(put_is("q\"b\\s/", 6, "\"q\\\"b\\\\s/\""));
    CHECK(put_is("\b\f\n\r\t", 5, "\"\\b\\f\\n\\r\\t\""));
    CHECK(put_is("\x01\x1f\x0b", 3, "\"\\u0001\\u001f\\u000b\""));
    /* NUL inside a length-given string, and at its ends */
    CHECK(put_is("a\0b", 3, "\"a\\u0000b\""));
    CHECK(put_is("\0\0", 2, "\"\\u0000\\u0000\""));
    /* a NUL-terminated string stops at its NUL */
    GString *s = g_string_new(NULL);
    qm_json_put_str(s, "ab\0cd");
    CHECK(strcmp(s->str, "\"ab\"") == 0);
    /* appends: what was there stays */
    qm_json_put_str(s, "x");
    CHECK(strcmp(s->str, "\"ab\"\"x\"") == 0);
    g_string_free(s, TRUE);
    /* DEL and bytes from 0x80 go out as they are, UTF-8 or not */
    CHECK(put_is("\x7f", 1, "\"\x7f\""));
    CHECK(put_is("\xc3\xa9\xe2\x82\xac", 5, "\"\xc3\xa9\xe2\x82\xac\""));
    CHECK(put_is("\xff\xc3(\x80", 4, "\"\xff\xc3(\x80\""));
}

/* Every single byte 1..255 and random NUL-free strings: the bytes
 * cJSON_PrintUnformatted gives. */
static void test_put_matches_cjson(void)
{
    int bad = 0;
    GRand *r = g_rand_new_with_seed(25);
    for (int t = 0; t < 255 + 2000; t++) {
        char v[64];
        size_t n;
        if (t < 255) {
            v[0] = (char)(t + 1);
            n = 1;
        } else {
            n = (size_t)g_rand_int_range(r, 0, (int)sizeof v);
            for (size_t i = 0; i < n; i++)
                v[i] = (char)g_rand_int_range(r, 1, 256);
        }
        v[n] = '\0';
        cJSON *j = cJSON_CreateString(v);
        char *want = cJSON_PrintUnformatted(j);
        GString *got = g_string_new(NULL);
        qm_json_put_str_len(got, v, n);
        if (strcmp(got->str, want) != 0 && bad++ < 3)
            printf("  differs for case %d: cJSON %s, here %s\n", t, want, got->str);
        g_string_free(got, TRUE);
        cJSON_free(want);
        cJSON_Delete(j);
    }
    g_rand_free(r);
    CHECK(bad == 0);
}

static void test_put_num(void)
{
    static const double v[] = {0, -1, 42, 2147483647.0, 2147483648.0, -2147483649.0,
                               0.1, 1.0 / 3, 1e300, 9007199254740993.0, -0.5};
    for (size_t i = 0; i < G_N_ELEMENTS(v); i++) {
        cJSON *j = cJSON_CreateNumber(v[i]);
        char *want = cJSON_PrintUnformatted(j);
        GString *got = g_string_new(NULL);
        qm_json_put_num(got, v[i]);
        CHECK(strcmp(got->str, want) == 0);
        g_string_free(got, TRUE);
        cJSON_free(want);
        cJSON_Delete(j);
    }
    GString *s = g_string_new(NULL);
    qm_json_put_num(s, 0.0 / 0.0);
    CHECK(strcmp(s->str, "null") == 0);
    g_string_free(s, TRUE);
}

/* Reads IN (one literal, maybe followed by more text): the decoded bytes
 * are WANT (WLEN bytes) and the reader stops after the closing quote, at
 * REST. */
static int get_is(const char *in, const char *want, size_t wlen, const char *rest)
{
    GString *g = g_string_new(NULL);
    const char *why = NULL;
    const char *end = qm_json_get_str(in, in + strlen(in), g, &why);
    int ok = end && g->len == wlen && memcmp(g->str, want, wlen) == 0 && strcmp(end, rest) == 0;
    if (!ok)
        printf("  get %s: %s\n", in, end ? "wrong bytes or end" : why);
    g_string_free(g, TRUE);
    return ok;
}

static void test_get_escapes(void)
{
    CHECK(get_is("\"\"", "", 0, ""));
    CHECK(get_is("\"abc\",\"x\"", "abc", 3, ",\"x\""));
    CHECK(get_is("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t", 8, ""));
    CHECK(get_is("\"a\\u0000b\"", "a\0b", 3, ""));
    CHECK(get_is("\"\\u00e9\\u20AC\"", "\xc3\xa9\xe2\x82\xac", 5, ""));
    CHECK(get_is("\"\\u0041\\u007f\"", "A\x7f", 2, ""));
    /* a surrogate pair is one code point: U+1F600 and U+10FFFF */
    CHECK(get_is("\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80", 4, ""));
    CHECK(get_is("\"\\uDBFF\\uDFFF!\"", "\xf4\x8f\xbf\xbf!", 5, ""));
    /* raw bytes from 0x20 up are copied, UTF-8 or not */
    CHECK(get_is("\"\xc3\xa9 \xff\x7f\"", "\xc3\xa9 \xff\x7f", 5, ""));
    /* only checked: no output, same end */
    const char *in = "\"a\\n\\ud83d\\ude00\" tail", *why;
    CHECK(qm_json_get_str(in, in + strlen(in), NULL, &why) == in + 17);
    /* the end bound is honoured: a quote past END does not close */
    CHECK(qm_json_get_str(in, in + 3, NULL, &why) == NULL);
}

/* IN is refused with a message containing WHY. */
static int refused(const char *in, const char *want_why)
{
    GString *g = g_string_new(NULL);
    const char *why = NULL;
    const char *end = qm_json_get_str(in, in + strlen(in), g, &why);
    int ok = !end && why && strstr(why, want_why);
    if (!ok)
        printf("  %s: %s\n", in, end ? "accepted" : why);
    g_string_free(g, TRUE);
    return ok;
}

static void test_get_refuses(void)
{
    CHECK(refused("", "expected a JSON string"));
    CHECK(refused("abc", "expected a JSON string"));
    CHECK(refused(" \"a\"", "expected a JSON string"));
    CHECK(refused("\"abc", "not closed"));
    CHECK(refused("\"abc\\", "not closed"));
    CHECK(refused("\"a\\x\"", "unknown escape"));
    CHECK(refused("\"a\\U0041\"", "unknown escape"));
    CHECK(refused("\"a\\'\"", "unknown escape"));
    CHECK(refused("\"\\u12\"", "four hex digits"));
    CHECK(refused("\"\\u12g4\"", "four hex digits"));
    CHECK(refused("\"\\u004", "four hex digits"));
    CHECK(refused("\"\\udc00\"", "lone low surrogate"));
    CHECK(refused("\"\\ud800\"", "without its low half"));
    CHECK(refused("\"\\ud800x\\udc00\"", "without its low half"));
    CHECK(refused("\"\\ud800\\u0041\"", "without its low half"));
    CHECK(refused("\"\\ud800\\ud800\"", "without its low half"));
    CHECK(refused("\"a\nb\"", "control character"));
    CHECK(refused("\"a\tb\"", "control character"));
    /* a NUL byte inside the given length is a raw control byte */
    const char nul[] = "\"a\0b\"", *why;
    CHECK(qm_json_get_str(nul, nul + 5, NULL, &why) == NULL && strstr(why, "control"));
}

/* Any byte string goes out and comes back the same: the writer's output is
 * what the reader and cJSON (up to the first NUL) read. */
static void test_round_trip(void)
{
    GRand *r = g_rand_new_with_seed(7);
    int bad = 0;
    for (int t = 0; t < 3000; t++) {
        char v[48];
        size_t n = (size_t)g_rand_int_range(r, 0, (int)sizeof v);
        for (size_t i = 0; i < n; i++)
            v[i] = (char)(t % 3 ? g_rand_int_range(r, 0, 256) : g_rand_int_range(r, 0, 40));
        GString *s = g_string_new(NULL), *back = g_string_new(NULL);
        qm_json_put_str_len(s, v, n);
        const char *why;
        const char *end = qm_json_get_str(s->str, s->str + s->len, back, &why);
        if (end != s->str + s->len || back->len != n || memcmp(back->str, v, n) != 0)
            bad++;
        cJSON *j = cJSON_ParseWithLength(s->str, s->len);
        if (!cJSON_IsString(j) || strcmp(j->valuestring, back->str) != 0)
            bad++;
        cJSON_Delete(j);
        g_string_free(s, TRUE);
        g_string_free(back, TRUE);
    }
    g_rand_free(r);
    CHECK(bad == 0);
}

/* The scanning cursor: steps over what is not wanted, stops where a
 * caller must fall back to cJSON. */
static void test_jcur(void)
{
    const char *t = " {\"a\": [1, {\"b\": \"x]}\\\"\"}], \"c\": 12 , \"d\":true}";
    qm_jcur c = {t, t + strlen(t)};
    qm_jcur_ws(&c);
    CHECK(*c.p == '{');
    c.p++;
    qm_jcur_ws(&c);
    int plain = -1;
    CHECK(qm_jcur_skip_str(&c, &plain) == 0 && plain == 1); /* "a" */
    CHECK(*c.p == ':');
    c.p++;
    CHECK(qm_jcur_skip(&c) == 0); /* the array, brackets inside a string ignored */
    CHECK(qm_jcur_next(&c, '}') == 1);
    CHECK(qm_jcur_skip(&c) == 0 && *c.p == ':'); /* "c" */
    c.p++;
    CHECK(qm_jcur_skip(&c) == 0 && *c.p == ' '); /* 12 ends at white space */
    CHECK(qm_jcur_next(&c, '}') == 1);
    CHECK(qm_jcur_skip(&c) == 0 && *c.p == ':');
    c.p++;
    CHECK(qm_jcur_skip(&c) == 0 && *c.p == '}'); /* true */
    CHECK(qm_jcur_next(&c, '}') == 0 && c.p == c.end);
    CHECK(qm_jcur_skip(&c) == -1); /* nothing left */

    const char *e = "\"a\\\"b\"";          /* "a\"b": escapes, not plain */
    c = (qm_jcur){e, e + strlen(e)};
    CHECK(qm_jcur_skip_str(&c, &plain) == 0 && plain == 0 && c.p == c.end);
    const char *cut[] = {"\"abc", "\"ab\\", "[1, [2]", "{\"a\": \"}", "", ",", "x"};
    for (size_t i = 0; i < sizeof cut / sizeof *cut; i++) {
        c = (qm_jcur){cut[i], cut[i] + strlen(cut[i])};
        int r = cut[i][0] == '"' ? qm_jcur_skip_str(&c, NULL) : qm_jcur_skip(&c);
        if (r != -1 && strcmp(cut[i], "x") != 0)
            printf("  '%s' was stepped over\n", cut[i]);
        CHECK(strcmp(cut[i], "x") == 0 ? r == 0 : r == -1);
    }
    c = (qm_jcur){"; ", NULL};
    c.end = c.p + 2;
    CHECK(qm_jcur_next(&c, ']') == -1);
}

int main(void)
{
    RUN(test_put_escapes);
    RUN(test_put_matches_cjson);
    RUN(test_put_num);
    RUN(test_get_escapes);
    RUN(test_get_refuses);
    RUN(test_round_trip);
    RUN(test_jcur);
    TEST_EXIT();
}
