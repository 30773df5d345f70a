/* test_safetensors.c - the safetensors reader and writer.
 *
 * The core is a numbered catalogue of corrupt files built in memory (after
 * llama.cpp's test-gguf): each must be refused by st_parse() with a message
 * that names the file, names the tensor where there is one, and states its
 * own rule; no other case's message may contain that rule. Every case is
 * then written to a real file and must give the same message through
 * st_open() and st_open_header(). Positive cases follow: empty header,
 * zero-size and scalar tensors, every dtype, metadata, writer round trips.
 */
#include "format/safetensors.h"
#include "base/fs.h"
#include "base/util.h"
#include "testhelp.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *tmpdir;

/* A file image: u64 little-endian `nfield`, the header bytes, data_len bytes
 * of data. The buffer is allocated at exactly the image size so that ASan
 * catches any read past the end. */
static uint8_t *image(uint64_t nfield, const char *hdr, size_t hdr_len,
                      size_t data_len, size_t *len)
{
    *len = 8 + hdr_len + data_len;
    uint8_t *b = g_malloc(*len ? *len : 1);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(nfield >> (8 * i));
    memcpy(b + 8, hdr, hdr_len);
    for (size_t i = 0; i < data_len; i++)
        b[8 + hdr_len + i] = (uint8_t)(i * 7 + 1);
    return b;
}

/* Image of a header string with a correct length field. */
static uint8_t *simple(const char *json, size_t data_len, size_t *len)
{
    return image(strlen(json), json, strlen(json), data_len, len);
}

/* ---- the catalogue ---- */

#define W2x2 "\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]"

typedef struct {
    const char *what;
    const char *json;   /* NULL: generated (deep nesting) */
    size_t data;        /* bytes of data after the header */
    int64_t nfield;     /* header length field; -1: the header's length */
    int64_t total;      /* cut the image to this many bytes; -1: whole */
    const char *rule;   /* substring that identifies the rule */
    const char *tensor; /* tensor the message must name, or NULL */
} bad_case;

static const bad_case cases[] = {
    /* 1 */ {"file shorter than 8 bytes", "{}", 0, -1, 5,
             "too small for a header length", NULL},
    /* 2 */ {"header length over 100,000,000", "{}", 0, 100000001, -1,
             "exceeds the limit of 100000000 bytes", NULL},
    /* 3 */ {"header length beyond the file", "{}", 0, 4096, -1,
             "runs past the end of the file", NULL},
    /* 4 */ {"header not UTF-8", "{\"w\xff\":{" W2x2 "}}", 16, -1, -1,
             "not valid UTF-8", NULL},
    /* 5 */ {"header not JSON", "{\"w\":{\"dtype\":\"F32\",}", 0, -1, -1,
             "not valid JSON", NULL},
    /* 6 */ {"header an array, not an object", "[{\"w\":1}]", 0, -1, -1,
             "header is not a JSON object", NULL},
    /* 7 */ {"trailing garbage after the JSON", "{} garbage", 0, -1, -1,
             "trailing bytes after the JSON header", NULL},
    /* 8 */ {"__metadata__ not an object", "{\"__metadata__\":[\"pt\"]}", 0, -1,
             -1, "__metadata__ is not an object", NULL},
    /* 9 */ {"__metadata__ with a non-string value",
             "{\"__metadata__\":{\"format\":\"pt\",\"n\":3}}", 0, -1, -1,
             "__metadata__ value of 'n' is not a string", NULL},
    /* 10 */ {"two __metadata__ objects",
              "{\"__metadata__\":{},\"__metadata__\":{}}", 0, -1, -1,
              "duplicate __metadata__", NULL},
    /* 11 */ {"tensor value not an object", "{\"w\":[1,2]}", 0, -1, -1,
              "tensor 'w' is not an object", "w"},
    /* 12 */ {"missing dtype",
              "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1, -1,
              "has no dtype string", "w"},
    /* 13 */ {"unknown dtype",
              "{\"w\":{\"dtype\":\"F12\",\"shape\":[2],\"data_offsets\":[0,8]}}",
              8, -1, -1, "unknown dtype 'F12'", "w"},
    /* 14 */ {"shape not an array",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,16]}}",
              16, -1, -1, "has no shape array", "w"},
    /* 15 */ {"negative dimension",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,0]}}",
              0, -1, -1, "negative dimension -3", "w"},
    /* 16 */ {"non-integer dimension",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,1.5],\"data_offsets\":[0,12]}}",
              12, -1, -1, "shape entry that is not a non-negative integer", "w"},
    /* 17 */ {"too many dimensions",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
              "\"data_offsets\":[0,4]}}", 4, -1, -1,
              "has 9 dimensions (at most 8)", "w"},
    /* 18 */ {"missing data_offsets",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, -1, -1,
              "has no data_offsets array", "w"},
    /* 19 */ {"data_offsets with 3 entries",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,16]}}",
              8, -1, -1, "has 3 data_offsets entries", "w"},
    /* 20 */ {"data_offsets not integers",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,\"8\"]}}",
              8, -1, -1, "data_offsets that are not non-negative integers", "w"},
    /* 21 */ {"reversed data_offsets",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}",
              8, -1, -1, "data_offsets [8, 0] that are reversed", "w"},
    /* 22 */ {"gap between tensors",
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
              20, -1, -1, "gap before tensor 'b'", "b"},
    /* 23 */ {"overlapping tensors",
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
              12, -1, -1, "overlaps the previous tensor", "b"},
    /* 24 */ {"first tensor not at 0",
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
              12, -1, -1, "data does not start at 0", "a"},
    /* 25 */ {"byte length not elements x dtype size",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}",
              12, -1, -1, "needs 16 bytes but data_offsets [0, 12] span 12", "w"},
    /* 26 */ {"shape product overflows (2^32 x 2^32 = 2^64 wraps to 0)",
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
              "\"data_offsets\":[0,0]}}", 0, -1, -1,
              "shape element count overflows", "w"},
    /* 27 */ {"byte size overflows (2^62 F64 elements)",
              "{\"w\":{\"dtype\":\"F64\",\"shape\":[2147483648,2147483648],"
              "\"data_offsets\":[0,0]}}", 0, -1, -1, "byte size overflows", "w"},
    /* 28 */ {"F4 with an odd count does not fill whole bytes",
              "{\"w\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}",
              1, -1, -1, "of 3 F4 elements does not fill whole bytes", "w"},
    /* 29 */ {"file longer than the data", "{\"w\":{" W2x2 "}}", 20, -1, -1,
              "4 bytes after the last tensor", NULL},
    /* 30 */ {"data end past the end of the file", "{\"w\":{" W2x2 "}}", 8, -1,
              -1, "data ends at 16, past the end of the file", NULL},
    /* 31 */ {"duplicate tensor names",
              "{\"w\":{" W2x2 "},\"w\":{" W2x2 "}}", 16, -1, -1,
              "duplicate tensor name 'w'", "w"},
    /* 32 */ {"deep nesting (100,000 levels)", NULL, 0, -1, -1,
              "header nests deeper than 64 levels", NULL},
    /* 33 */ {"F6_E2M3 with 3 elements does not fill whole bytes",
              "{\"w\":{\"dtype\":\"F6_E2M3\",\"shape\":[3],\"data_offsets\":[0,2]}}",
              2, -1, -1, "of 3 F6_E2M3 elements", "w"},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

static char *deep_json(void)
{
    GString *s = g_string_new("{\"w\":");
    for (int i = 0; i < 100000; i++)
        g_string_append_c(s, '[');
    for (int i = 0; i < 100000; i++)
        g_string_append_c(s, ']');
    g_string_append_c(s, '}');
    return g_string_free(s, FALSE);
}

static uint8_t *case_image(const bad_case *c, size_t *len)
{
    char *gen = c->json ? NULL : deep_json();
    const char *json = c->json ? c->json : gen;
    size_t hl = strlen(json);
    uint8_t *b = image(c->nfield >= 0 ? (uint64_t)c->nfield : hl, json, hl,
                       c->data, len);
    g_free(gen);
    if (c->total >= 0 && (size_t)c->total < *len) {
        /* Reallocate at the cut size so that ASan sees the short end. */
        uint8_t *cut = g_malloc((size_t)c->total ? (size_t)c->total : 1);
        memcpy(cut, b, (size_t)c->total);
        g_free(b);
        b = cut;
        *len = (size_t)c->total;
    }
    return b;
}

/* Every case fails in memory with its rule, the label and the tensor. */
static void test_catalogue_in_memory(void)
{
    char *msgs[N_CASES];
    for (int i = 0; i < N_CASES; i++) {
        const bad_case *c = &cases[i];
        size_t len;
        uint8_t *b = case_image(c, &len);
        char *label = g_strdup_printf("bad-%02d.safetensors", i + 1);
        char *quoted = g_strdup_printf("'%s'", label);
        GError *err = NULL;
        st_file *f = st_parse(label, b, len, &err);
        if (f || !err) {
            printf("  case %d (%s) was accepted\n", i + 1, c->what);
            CHECK(f == NULL && err != NULL);
            st_close(f);
            msgs[i] = g_strdup("");
        } else {
            CHECK(err->domain == QM_ERROR && err->code == QM_ERR_FORMAT);
            CHECK_CONTAINS(err->message, c->rule);
            CHECK_CONTAINS(err->message, quoted);
            CHECK_CONTAINS(err->message, "invalid header of ");
            if (c->tensor) {
                char *t = g_strdup_printf("'%s'", c->tensor);
                CHECK_CONTAINS(err->message, t);
                g_free(t);
            }
            msgs[i] = g_strdup(err->message);
            g_error_free(err);
        }
        g_free(quoted);
        g_free(label);
        g_free(b);
    }
    /* Distinct: no message states another case's rule. */
    for (int i = 0; i < N_CASES; i++)
        for (int j = 0; j < N_CASES; j++)
            if (i != j && strstr(msgs[j], cases[i].rule)) {
                printf("  case %d's message '%s' contains case %d's rule '%s'\n",
                       j + 1, msgs[j], i + 1, cases[i].rule);
                CHECK(!"rules are distinct");
            }
    for (int i = 0; i < N_CASES; i++)
        g_free(msgs[i]);
    CHECK(N_CASES >= 24);
}

/* The same cases as files: st_open and st_open_header give st_parse's
 * message, naming the path. */
static void test_catalogue_files(void)
{
    for (int i = 0; i < N_CASES; i++) {
        size_t len;
        uint8_t *b = case_image(&cases[i], &len);
        char *path = g_strdup_printf("%s/bad-%02d.safetensors", tmpdir, i + 1);
        GError *e0 = NULL, *e1 = NULL, *e2 = NULL;
        CHECK(g_file_set_contents(path, (const char *)b, (gssize)len, NULL));
        st_file *f0 = st_parse(path, b, len, &e0);
        st_file *f1 = st_open(path, &e1);
        st_file *f2 = st_open_header(path, &e2);
        CHECK(!f0 && !f1 && !f2 && e0 && e1 && e2);
        if (e0 && e1 && e2) {
            CHECK_CONTAINS(e1->message, path);
            CHECK_CONTAINS(e1->message, cases[i].rule);
            CHECK(strcmp(e0->message, e1->message) == 0);
            CHECK(strcmp(e1->message, e2->message) == 0);
            CHECK(e1->code == QM_ERR_FORMAT && e2->code == QM_ERR_FORMAT);
        }
        g_clear_error(&e0);
        g_clear_error(&e1);
        g_clear_error(&e2);
        st_close(f0);
        st_close(f1);
        st_close(f2);
        g_unlink(path);
        g_free(path);
        g_free(b);
    }
}

/* Further refusals that share a rule with a catalogue entry. */
static void expect_fail(const char *label, const uint8_t *b, size_t len,
                        const char *rule)
{
    GError *err = NULL;
    st_file *f = st_parse(label, b, len, &err);
    CHECK(f == NULL);
    st_close(f);
    if (err) {
        CHECK(err->code == QM_ERR_FORMAT);
        CHECK_CONTAINS(err->message, label);
        CHECK_CONTAINS(err->message, rule);
        g_error_free(err);
    } else {
        CHECK(!"error set");
    }
}

static void test_more_refusals(void)
{
    size_t len;
    uint8_t *b;
    static const uint8_t none[1];
    expect_fail("empty", none, 0, "file of 0 bytes is too small");

    b = image(0, "", 0, 0, &len); /* header length 0 */
    expect_fail("zero", b, len, "header is not a JSON object");
    g_free(b);
    b = simple(" {}", 0, &len); /* the header must begin with '{' */
    expect_fail("lead", b, len, "header is not a JSON object");
    g_free(b);
    b = image(4, "{}\0\0", 4, 0, &len); /* NUL padding is not allowed */
    expect_fail("nul", b, len, "not valid UTF-8");
    g_free(b);
    b = simple("{\"w\":{\"dtype\":5,\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
               &len);
    expect_fail("dtnum", b, len, "tensor 'w' has no dtype string");
    g_free(b);
    b = simple("{\"w\":{\"dtype\":\"bf16\",\"shape\":[2],\"data_offsets\":[0,4]}}",
               4, &len); /* dtype names are case-sensitive */
    expect_fail("lower", b, len, "unknown dtype 'bf16'");
    g_free(b);
    b = simple("{\"w\":{\"dtype\":\"U8\",\"shape\":[2],"
               "\"data_offsets\":[0,9007199254740992]}}", 2, &len);
    expect_fail("big", b, len, "not non-negative integers"); /* 2^53 */
    g_free(b);
    b = simple("{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[-2,0]}}",
               2, &len);
    expect_fail("negoff", b, len, "not non-negative integers");
    g_free(b);
    b = simple("{\"w\":{\"dtype\":\"U8\",\"shape\":[\"2\"],\"data_offsets\":[0,2]}}",
               2, &len);
    expect_fail("strdim", b, len, "shape entry that is not");
    g_free(b);
    b = simple("{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}"
               "} \t\r\nx", 2, &len);
    expect_fail("trail", b, len, "trailing bytes");
    g_free(b);
    /* two equal tensors: the second overlaps the first */
    b = simple("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
               "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}",
               2, &len);
    expect_fail("same", b, len, "overlaps the previous tensor");
    g_free(b);
    /* a zero-size tensor beyond the end of the data */
    b = simple("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
               "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[5,5]}}",
               2, &len);
    expect_fail("zgap", b, len, "gap before tensor 'z'");
    g_free(b);
    /* 64 levels pass the depth scan and fail later as a bad shape */
    GString *s = g_string_new("{\"w\":{\"dtype\":\"U8\",\"shape\":");
    for (int i = 0; i < 62; i++)
        g_string_append_c(s, '[');
    for (int i = 0; i < 62; i++)
        g_string_append_c(s, ']');
    g_string_append(s, ",\"data_offsets\":[0,1]}}");
    b = simple(s->str, 1, &len);
    expect_fail("d64", b, len, "shape entry that is not");
    g_free(b);
    /* brackets inside strings do not count as nesting */
    g_string_assign(s, "{\"__metadata__\":{\"k\":\"");
    for (int i = 0; i < 1000; i++)
        g_string_append(s, "[{\\\"");
    g_string_append(s, "\"}}");
    b = simple(s->str, 0, &len);
    GError *err = NULL;
    st_file *f = st_parse("strbr", b, len, &err);
    CHECK(f != NULL && err == NULL);
    if (f)
        CHECK(strlen(st_meta(f, "k")) == 3000);
    st_close(f);
    g_clear_error(&err);
    g_free(b);
    g_string_free(s, TRUE);

    /* st_parse_header with fewer bytes than the header length says */
    b = simple("{\"w\":{" W2x2 "}}", 16, &len);
    f = st_parse_header("trunc", b, 20, len, &err);
    CHECK(f == NULL);
    CHECK(err && strstr(err->message, "'trunc'") &&
          strstr(err->message, "header truncated"));
    g_clear_error(&err);
    g_free(b);
}

/* ---- positive cases ---- */

static st_file *parse_ok(const char *label, const uint8_t *b, size_t len)
{
    GError *err = NULL;
    st_file *f = st_parse(label, b, len, &err);
    if (!f) {
        printf("  %s: %s\n", label, err ? err->message : "(no error)");
        g_clear_error(&err);
    }
    CHECK(f != NULL);
    return f;
}

/* Two parses give the same tensors and metadata (data_start aside). */
static int same_file(const st_file *a, const st_file *b)
{
    if (!a || !b || a->n_tensors != b->n_tensors ||
        a->size - a->data_start != b->size - b->data_start ||
        g_strv_length(a->meta_keys) != g_strv_length(b->meta_keys))
        return 0;
    for (int i = 0; i < a->n_tensors; i++) {
        const st_tensor *x = &a->tensors[i], *y = &b->tensors[i];
        if (strcmp(x->name, y->name) != 0 || x->dtype != y->dtype || x->ndim != y->ndim ||
            x->begin != y->begin || x->end != y->end ||
            memcmp(x->shape, y->shape, sizeof(int64_t) * (size_t)x->ndim) != 0 ||
            st_find(a, x->name) != x)
            return 0;
    }
    for (int i = 0; a->meta_keys[i]; i++)
        if (strcmp(a->meta_keys[i], b->meta_keys[i]) != 0 ||
            strcmp(a->meta_values[i], b->meta_values[i]) != 0)
            return 0;
    return 1;
}

/* The header is read without cJSON when it is laid out as writers do, and
 * by cJSON otherwise: both readings agree. Each pair is one header as a
 * writer lays it out and the same header in forms only cJSON reads
 * (2.0 and 2e0 for 2, sixteen digits, a member it ignores, a repeated
 * key whose first value counts). Then what cJSON alone decides: a name
 * cut at \u0000, a raw control byte in a name. */
static void test_header_two_readers(void)
{
    static const char *pairs[][2] = {
        {"{\"__metadata__\":{\"format\":\"pt\",\"k\\u00e9\":\"v\\\"q\\n\\ud83d\\ude00\"},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[2,18]},"
         "\"a\\u0041\\/\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,2]}}",
         " { \"__metadata__\" : { \"format\" : \"pt\" , \"k\\u00e9\" : \"v\\\"q\\n\\ud83d\\ude00\" } ,"
         "\"b\":{\"shape\":[2.0,2e0],\"x\":[1,{}],\"data_offsets\":[0000000000000002,18],"
         "\"dtype\":\"F32\"},\"aA/\":{\"dtype\":\"BF16\",\"dtype\":\"U8\",\"shape\":[],"
         "\"data_offsets\":[0,2]}}\n"},
        {"{}", "{\"__metadata__\":{}}"},
        {"{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,3],\"data_offsets\":[0,3]}}",
         "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,3],\"data_offsets\":[0,3.0]}}"},
    };
    static const size_t data[] = {18, 0, 3};
    for (size_t i = 0; i < G_N_ELEMENTS(pairs); i++) {
        size_t la, lb;
        /* a header must begin with '{': the second form's leading space
         * is dropped there */
        const char *second = pairs[i][1][0] == ' ' ? pairs[i][1] + 1 : pairs[i][1];
        uint8_t *a = simple(pairs[i][0], data[i], &la), *b = simple(second, data[i], &lb);
        st_file *fa = parse_ok("fast", a, la), *fb = parse_ok("cjson", b, lb);
        CHECK(same_file(fa, fb));
        if (i == 0 && fa) {
            CHECK(strcmp(fa->tensors[1].name, "aA/") == 0 && fa->tensors[1].dtype == ST_BF16);
            CHECK(strcmp(st_meta(fa, "k\xc3\xa9"), "v\"q\n\xf0\x9f\x98\x80") == 0);
        }
        st_close(fa);
        st_close(fb);
        g_free(a);
        g_free(b);
    }
    size_t len;
    uint8_t *b = simple("{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                        1, &len);
    st_file *f = parse_ok("nul", b, len);
    CHECK(f && strcmp(f->tensors[0].name, "a") == 0);
    st_close(f);
    g_free(b);
    b = simple("{\"a\x01\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, &len);
    f = parse_ok("raw", b, len);
    CHECK(f && st_find(f, "a\x01") == &f->tensors[0]);
    st_close(f);
    g_free(b);
    /* and refusals stay the cJSON path's, worded by it */
    b = simple("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
               "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, &len);
    expect_fail("dup2", b, len, "duplicate tensor name 'w'");
    g_free(b);
    b = simple("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
               "\"__metadata__\":{},\"__metadata__\":{}}", 1, &len);
    expect_fail("meta2", b, len, "duplicate __metadata__");
    g_free(b);
    b = simple("{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,1]}}", 1, &len);
    expect_fail("size", b, len, "needs 2 bytes");
    g_free(b);
}

static void test_empty_header(void)
{
    size_t len;
    uint8_t *b = simple("{}", 0, &len);
    st_file *f = parse_ok("empty", b, len);
    if (f) {
        CHECK(f->n_tensors == 0);
        CHECK(f->data_start == 10);
        CHECK(f->meta_keys && f->meta_keys[0] == NULL);
        CHECK(st_find(f, "w") == NULL);
        CHECK(st_meta(f, "format") == NULL);
    }
    st_close(f);
    g_free(b);
    b = simple("{}      ", 0, &len); /* padded with spaces to 8 */
    f = parse_ok("padded", b, len);
    CHECK(f && f->data_start == 16);
    st_close(f);
    g_free(b);
    st_close(NULL);
}

static void test_zero_size_and_scalar(void)
{
    size_t len;
    uint8_t *b = simple(
        "{\"z\":{\"dtype\":\"BF16\",\"shape\":[2,0],\"data_offsets\":[0,0]},"
        "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
        "\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]},"
        "\"h\":{\"dtype\":\"U8\",\"shape\":[1099511627776,1099511627776,0],"
        "\"data_offsets\":[4,4]}}", 4, &len);
    st_file *f = parse_ok("zero", b, len);
    if (f) {
        CHECK(f->n_tensors == 4);
        const st_tensor *z = st_find(f, "z"), *s = st_find(f, "s"),
                        *e = st_find(f, "e");
        CHECK(z && z->ndim == 2 && z->shape[1] == 0 && z->begin == 0 &&
              z->end == 0 && z->dtype == ST_BF16);
        CHECK(s && s->ndim == 0 && s->begin == 0 && s->end == 4);
        CHECK(e && e->begin == 4 && e->end == 4);
        CHECK(s && st_data(f, s) == b + f->data_start);
        CHECK(e && st_data(f, e) == b + len);
        CHECK(strcmp(f->tensors[0].name, "z") == 0); /* header order */
        CHECK(strcmp(f->tensors[3].name, "h") == 0);
    }
    st_close(f);
    g_free(b);
}

static const char *const names[ST_DTYPE_COUNT] = {
    "BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64",
    "F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2", "F8_E8M0",
    "F6_E2M3", "F6_E3M2", "F4"};
static const unsigned bits[ST_DTYPE_COUNT] = {8,  8,  8,  16, 16, 32, 32,
                                              64, 64, 16, 16, 32, 64, 8,
                                              8,  8,  6,  6,  4};

static void test_dtypes(void)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        CHECK(strcmp(st_dtype_name((st_dtype)i), names[i]) == 0);
        CHECK(st_dtype_parse(names[i]) == i);
        CHECK(st_dtype_bits((st_dtype)i) == bits[i]);
    }
    CHECK(st_dtype_parse("bf16") == -1);
    CHECK(st_dtype_parse("") == -1);
    CHECK(st_dtype_parse("F8") == -1);
    CHECK(strcmp(st_dtype_name(ST_DTYPE_COUNT), "?") == 0);
    CHECK(st_dtype_bits(ST_DTYPE_COUNT) == 0);

    /* A hand-written header with every dtype name, 8 elements each (so that
     * 4- and 6-bit kinds fill whole bytes): 8 x bits / 8 = bits bytes. */
    GString *h = g_string_new("{");
    uint64_t at = 0;
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        g_string_append_printf(h, "%s\"t_%s\":{\"dtype\":\"%s\",\"shape\":[8],"
                               "\"data_offsets\":[%llu,%llu]}", i ? "," : "",
                               names[i], names[i], (unsigned long long)at,
                               (unsigned long long)(at + bits[i]));
        at += bits[i];
    }
    g_string_append_c(h, '}');
    size_t len;
    uint8_t *b = simple(h->str, at, &len);
    st_file *f = parse_ok("dtypes", b, len);
    if (f) {
        CHECK(f->n_tensors == ST_DTYPE_COUNT);
        for (int i = 0; i < ST_DTYPE_COUNT; i++) {
            char *n = g_strdup_printf("t_%s", names[i]);
            const st_tensor *t = st_find(f, n);
            CHECK(t && (int)t->dtype == i && t->end - t->begin == bits[i]);
            g_free(n);
        }
    }
    st_close(f);
    g_free(b);
    g_string_free(h, TRUE);

    /* F6 with 4 elements is 3 bytes; F4 with 2 is 1 */
    b = simple("{\"a\":{\"dtype\":\"F6_E3M2\",\"shape\":[4],\"data_offsets\":[0,3]},"
               "\"b\":{\"dtype\":\"F4\",\"shape\":[1,2],\"data_offsets\":[3,4]}}",
               4, &len);
    f = parse_ok("sub-byte", b, len);
    st_close(f);
    g_free(b);
}

static void test_metadata(void)
{
    size_t len;
    uint8_t *b = simple("{\"__metadata__\":{\"format\":\"pt\",\"note\":\"h\\u00e9 \\\"q\\\"\","
                        "\"empty\":\"\"},"
                        "\"w\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}",
                        3, &len);
    st_file *f = parse_ok("meta", b, len);
    if (f) {
        CHECK(f->n_tensors == 1);
        CHECK(st_meta(f, "format") && strcmp(st_meta(f, "format"), "pt") == 0);
        CHECK(st_meta(f, "note") &&
              strcmp(st_meta(f, "note"), "h\xc3\xa9 \"q\"") == 0);
        CHECK(st_meta(f, "empty") && st_meta(f, "empty")[0] == '\0');
        CHECK(st_meta(f, "missing") == NULL);
        CHECK(g_strv_length(f->meta_keys) == 3);
        CHECK(strcmp(f->meta_keys[1], "note") == 0);
    }
    st_close(f);
    g_free(b);
}

static void test_numel_and_shape_str(void)
{
    int64_t s1[] = {INT64_C(1) << 40, INT64_C(1) << 40, 0};
    int64_t s2[] = {0, INT64_C(1) << 40, INT64_C(1) << 40};
    int64_t s3[] = {INT64_C(1) << 31, INT64_C(1) << 31};
    int64_t s4[] = {INT64_C(1) << 31, INT64_C(1) << 31, 2};
    int64_t s5[] = {4, -1};
    int64_t s6[] = {32, 64};
    CHECK(st_numel(s1, 3) == 0);
    CHECK(st_numel(s2, 3) == 0);
    CHECK(st_numel(s3, 2) == INT64_C(1) << 62);
    CHECK(st_numel(s4, 3) == -1);
    CHECK(st_numel(s5, 2) == -1);
    CHECK(st_numel(s6, 0) == 1);
    CHECK(st_numel(s6, 2) == 2048);
    char buf[64];
    CHECK(strcmp(st_shape_str(s6, 2, buf, sizeof buf), "[32, 64]") == 0);
    CHECK(strcmp(st_shape_str(s6, 0, buf, sizeof buf), "[]") == 0);
    char small[5];
    st_shape_str(s6, 2, small, sizeof small); /* truncates, stays terminated */
    CHECK(strlen(small) < sizeof small);
}

/* ---- writer ---- */

#define N_ENT 5
static const st_entry ents[N_ENT] = {
    {"model.layers.0.mlp.experts.0.gate_proj.weight", ST_BF16, 2, {4, 6}, 48},
    {"scalar", ST_F32, 0, {0}, 4},
    {"empty", ST_F32, 2, {0, 3}, 0},
    {"fp4", ST_F4, 2, {2, 3}, 3},
    {"u8", ST_U8, 3, {1, 1, 5}, 5},
};

static uint8_t *ent_data(int i)
{
    uint8_t *d = g_malloc(ents[i].nbytes + 1);
    for (uint64_t k = 0; k < ents[i].nbytes; k++)
        d[k] = (uint8_t)(31 * i + 7 * k + 3);
    return d;
}

static void check_round_trip(const st_file *f, int with_data)
{
    CHECK(f->n_tensors == N_ENT);
    uint64_t at = 0;
    for (int i = 0; i < N_ENT && i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        CHECK(strcmp(t->name, ents[i].name) == 0);
        CHECK(st_find(f, ents[i].name) == t);
        CHECK(t->dtype == ents[i].dtype && t->ndim == ents[i].ndim);
        for (int d = 0; d < t->ndim; d++)
            CHECK(t->shape[d] == ents[i].shape[d]);
        CHECK(t->begin == at && t->end == at + ents[i].nbytes);
        at += ents[i].nbytes;
        if (with_data) {
            uint8_t *d = ent_data(i);
            CHECK(memcmp(st_data(f, t), d, ents[i].nbytes) == 0);
            g_free(d);
        } else {
            CHECK(st_data(f, t) == NULL);
        }
    }
    CHECK(st_meta(f, "format") && strcmp(st_meta(f, "format"), "pt") == 0);
    CHECK(f->meta_keys && f->meta_keys[0] &&
          strcmp(f->meta_keys[0], "format") == 0);
}

static uint8_t *build_image(uint64_t align, uint64_t phase,
                            const char *const *meta, size_t *len)
{
    GError *err = NULL;
    GByteArray *h = st_header_build(ents, N_ENT, meta, align, phase, &err);
    CHECK(h != NULL && err == NULL);
    if (!h) {
        g_clear_error(&err);
        return NULL;
    }
    size_t total = h->len;
    for (int i = 0; i < N_ENT; i++)
        total += ents[i].nbytes;
    uint8_t *b = g_malloc(total);
    memcpy(b, h->data, h->len);
    size_t at = h->len;
    for (int i = 0; i < N_ENT; i++) {
        uint8_t *d = ent_data(i);
        memcpy(b + at, d, ents[i].nbytes);
        at += ents[i].nbytes;
        g_free(d);
    }
    g_byte_array_free(h, TRUE);
    *len = total;
    return b;
}

/* st_header_build writes its JSON directly: the bytes are what cJSON
 * prints for the same object (as the builder once made it), for escaped
 * names, every dtype, scalars and offsets past 2^31 and 2^32. */
static void test_writer_json_bytes(void)
{
    static const char *const meta[] = {"qmoe_version", "0.1.0", "k\"ey\\", "v\nal", NULL};
    static const char *tnames[] = {"model.layers.0.mlp.experts.3.up_proj.weight",
                                  "q\"uote\\ \t\x01 \xc3\xa9", "scalar", "big"};
    st_entry e[4];
    memset(e, 0, sizeof e);
    for (int i = 0; i < 4; i++) {
        e[i].name = tnames[i];
        e[i].dtype = (st_dtype)(i % ST_DTYPE_COUNT);
        e[i].ndim = i == 2 ? 0 : 2;
        e[i].shape[0] = i == 3 ? 65536 : 3;
        e[i].shape[1] = i == 3 ? 65536 * 2 : 5;
        int64_t numel = e[i].ndim ? e[i].shape[0] * e[i].shape[1] : 1;
        e[i].nbytes = (uint64_t)numel * st_dtype_bits(e[i].dtype) / 8;
    }
    e[1].dtype = ST_BF16;
    e[1].nbytes = 3 * 5 * 2;
    for (int rep = 0; rep < 2; rep++) {
        GError *err = NULL;
        GByteArray *h = st_header_build(e, 4, rep ? meta : NULL, 0, 0, &err);
        CHECK(h != NULL);
        if (!h) {
            g_clear_error(&err);
            continue;
        }
        cJSON *root = cJSON_CreateObject();
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        cJSON_AddStringToObject(m, "format", "pt");
        for (int i = 0; rep && meta[i]; i += 2)
            cJSON_AddStringToObject(m, meta[i], meta[i + 1]);
        uint64_t at = 0;
        for (int i = 0; i < 4; i++) {
            cJSON *t = cJSON_AddObjectToObject(root, e[i].name);
            cJSON_AddStringToObject(t, "dtype", st_dtype_name(e[i].dtype));
            cJSON *sh = cJSON_AddArrayToObject(t, "shape");
            for (int d = 0; d < e[i].ndim; d++)
                cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e[i].shape[d]));
            cJSON *off = cJSON_AddArrayToObject(t, "data_offsets");
            cJSON_AddItemToArray(off, cJSON_CreateNumber((double)at));
            cJSON_AddItemToArray(off, cJSON_CreateNumber((double)(at + e[i].nbytes)));
            at += e[i].nbytes;
        }
        char *want = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        size_t wl = strlen(want);
        int same = h->len >= 8 + wl && memcmp(h->data + 8, want, wl) == 0;
        for (size_t i = 8 + wl; i < h->len; i++)
            same &= h->data[i] == ' ';
        if (!same)
            printf("  header differs:\n  cJSON: %s\n  here:  %.*s\n", want,
                   (int)(h->len - 8), (const char *)h->data + 8);
        CHECK(same);
        CHECK(at > (1ull << 32));
        cJSON_free(want);
        g_byte_array_free(h, TRUE);
    }
}

static void test_writer_round_trip(void)
{
    static const char *const meta[] = {"source", "model-00001-of-00002",
                                       "layer", "7", NULL};
    size_t len;
    uint8_t *b = build_image(0, 0, meta, &len);
    if (!b)
        return;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | b[i];
    CHECK(n % 8 == 0);
    CHECK(b[8] == '{');
    CHECK(memmem(b + 8, n, "\"format\":\"pt\"", 13) != NULL);
    st_file *f = parse_ok("round", b, len);
    if (f) {
        check_round_trip(f, 1);
        CHECK(f->data_start == 8 + n && f->data_start % 8 == 0);
        CHECK(st_meta(f, "source") &&
              strcmp(st_meta(f, "source"), "model-00001-of-00002") == 0);
        CHECK(st_meta(f, "layer") && strcmp(st_meta(f, "layer"), "7") == 0);
    }
    st_close(f);
    g_free(b);
}

static void test_writer_align(void)
{
    static const uint64_t phases[] = {0, 8, 1234, 4095, 4096 + 100, 1 << 20};
    for (size_t i = 0; i < sizeof phases / sizeof phases[0]; i++) {
        size_t len;
        uint8_t *b = build_image(4096, phases[i], NULL, &len);
        if (!b)
            return;
        st_file *f = parse_ok("aligned", b, len);
        if (f) {
            check_round_trip(f, 1);
            if (f->data_start % 4096 != phases[i] % 4096)
                printf("  phase %llu: data starts at %llu\n",
                       (unsigned long long)phases[i],
                       (unsigned long long)f->data_start);
            CHECK(f->data_start % 4096 == phases[i] % 4096);
            CHECK(f->data_start < 8 + 4096 + 1024); /* padding below align */
        }
        st_close(f);
        g_free(b);
    }
}

static void test_writer_refuses(void)
{
    GError *err = NULL;
    st_entry e[2] = {{"w", ST_F32, 2, {2, 2}, 12}, {"v", ST_U8, 1, {1}, 1}};
    CHECK(st_header_build(e, 1, NULL, 0, 0, &err) == NULL);
    CHECK(err && strstr(err->message, "tensor 'w'") &&
          strstr(err->message, "12 bytes do not match"));
    g_clear_error(&err);

    e[0].nbytes = 16;
    e[1].name = "w";
    CHECK(st_header_build(e, 2, NULL, 0, 0, &err) == NULL);
    CHECK(err && strstr(err->message, "duplicate"));
    g_clear_error(&err);

    e[1].name = "__metadata__";
    CHECK(st_header_build(e, 2, NULL, 0, 0, &err) == NULL);
    CHECK(err && strstr(err->message, "'__metadata__'"));
    g_clear_error(&err);

    e[1].name = "v";
    e[1].ndim = ST_MAX_DIMS + 1;
    CHECK(st_header_build(e, 2, NULL, 0, 0, &err) == NULL);
    CHECK(err && strstr(err->message, "tensor 'v'"));
    g_clear_error(&err);

    st_entry odd = {"f4", ST_F4, 1, {3}, 1}; /* 12 bits */
    CHECK(st_header_build(&odd, 1, NULL, 0, 0, &err) == NULL);
    g_clear_error(&err);

    st_entry huge = {"h", ST_F64, 2, {INT64_C(1) << 31, INT64_C(1) << 31}, 0};
    CHECK(st_header_build(&huge, 1, NULL, 0, 0, &err) == NULL); /* wraps */
    g_clear_error(&err);

    /* st_write_file refuses the same way and leaves nothing behind */
    char *path = g_build_filename(tmpdir, "refused.safetensors", NULL);
    const void *data[1] = {"xxxx"};
    e[0].nbytes = 12;
    CHECK(st_write_file(path, e, 1, data, NULL, &err) == -1);
    CHECK(err != NULL);
    g_clear_error(&err);
    CHECK(!g_file_test(path, G_FILE_TEST_EXISTS));
    char *tmp = g_strdup_printf("%s.tmp.%ld", path, (long)getpid());
    CHECK(!g_file_test(tmp, G_FILE_TEST_EXISTS));
    g_free(tmp);
    g_free(path);
}

static void test_write_and_open(void)
{
    char *path = g_build_filename(tmpdir, "expert_000_layer_00.safetensors",
                                  NULL);
    const void *data[N_ENT];
    uint8_t *bufs[N_ENT];
    for (int i = 0; i < N_ENT; i++)
        data[i] = bufs[i] = ent_data(i);
    static const char *const meta[] = {"k", "v", NULL};
    GError *err = NULL;
    CHECK(st_write_file(path, ents, N_ENT, data, meta, &err) == 0);
    CHECK(err == NULL);
    g_clear_error(&err);
    for (int i = 0; i < N_ENT; i++)
        g_free(bufs[i]);

    /* nothing but the final file in the directory */
    GDir *d = g_dir_open(tmpdir, 0, NULL);
    const char *name;
    int n = 0;
    while (d && (name = g_dir_read_name(d))) {
        CHECK(!fs_is_tmp(name));
        n++;
    }
    if (d)
        g_dir_close(d);
    CHECK(n == 1);

    st_file *f = st_open(path, &err);
    CHECK(f != NULL);
    st_file *h = st_open_header(path, &err);
    CHECK(h != NULL);
    if (err)
        printf("  %s\n", err->message);
    g_clear_error(&err);
    if (f && h) {
        check_round_trip(f, 1);
        check_round_trip(h, 0);
        CHECK(strcmp(f->path, path) == 0 && strcmp(h->path, path) == 0);
        CHECK(f->size == (uint64_t)fs_file_size(path) && h->size == f->size);
        CHECK(h->data_start == f->data_start && h->base == NULL);
        CHECK(h->n_tensors == f->n_tensors);
        for (int i = 0; i < f->n_tensors && i < h->n_tensors; i++) {
            CHECK(strcmp(h->tensors[i].name, f->tensors[i].name) == 0);
            CHECK(h->tensors[i].begin == f->tensors[i].begin);
            CHECK(h->tensors[i].end == f->tensors[i].end);
            CHECK(h->tensors[i].dtype == f->tensors[i].dtype);
            CHECK(h->tensors[i].ndim == f->tensors[i].ndim);
            CHECK(memcmp(h->tensors[i].shape, f->tensors[i].shape,
                         sizeof f->tensors[i].shape) == 0);
        }
        CHECK(g_strv_equal((const gchar *const *)h->meta_keys,
                           (const gchar *const *)f->meta_keys));
        CHECK(g_strv_equal((const gchar *const *)h->meta_values,
                           (const gchar *const *)f->meta_values));
        CHECK(st_meta(f, "k") && strcmp(st_meta(f, "k"), "v") == 0);
    }
    st_close(f);
    st_close(h);

    /* an empty header written as a file */
    char *p2 = g_build_filename(tmpdir, "none.safetensors", NULL);
    CHECK(st_write_file(p2, NULL, 0, NULL, NULL, &err) == 0);
    g_clear_error(&err);
    f = st_open(p2, &err);
    CHECK(f && f->n_tensors == 0 && f->size == f->data_start);
    st_close(f);
    g_clear_error(&err);
    g_unlink(p2);
    g_free(p2);

    /* an empty file */
    CHECK(g_file_set_contents(p2 = g_build_filename(tmpdir, "zero", NULL), "",
                              0, NULL));
    CHECK(st_open(p2, &err) == NULL);
    CHECK(err && err->code == QM_ERR_FORMAT &&
          strstr(err->message, "file of 0 bytes"));
    g_clear_error(&err);
    CHECK(st_open_header(p2, &err) == NULL);
    CHECK(err && err->code == QM_ERR_FORMAT &&
          strstr(err->message, "file of 0 bytes"));
    g_clear_error(&err);
    g_unlink(p2);
    g_free(p2);

    g_unlink(path);
    g_free(path);
}

static void test_open_errors(void)
{
    char *missing = g_build_filename(tmpdir, "no-such.safetensors", NULL);
    char *qmissing = g_strdup_printf("'%s'", missing);
    char *qdir = g_strdup_printf("'%s'", tmpdir);
    GError *err = NULL;
    CHECK(st_open(missing, &err) == NULL);
    CHECK(err && err->domain == QM_ERROR && err->code == QM_ERR_IO);
    CHECK_CONTAINS(err ? err->message : NULL, qmissing);
    g_clear_error(&err);
    CHECK(st_open_header(missing, &err) == NULL);
    CHECK(err && err->code == QM_ERR_IO);
    CHECK_CONTAINS(err ? err->message : NULL, qmissing);
    g_clear_error(&err);
    CHECK(st_open(tmpdir, &err) == NULL);
    CHECK(err && err->code == QM_ERR_IO);
    CHECK_CONTAINS(err ? err->message : NULL, qdir);
    CHECK_CONTAINS(err ? err->message : NULL, "is a directory");
    g_clear_error(&err);
    CHECK(st_open_header(tmpdir, &err) == NULL);
    CHECK(err && err->code == QM_ERR_IO);
    CHECK_CONTAINS(err ? err->message : NULL, qdir);
    g_clear_error(&err);
    CHECK(qm_exit_code(NULL) == 0);
    g_free(qdir);
    g_free(qmissing);
    g_free(missing);
}

/* Lookups on both sides of the size that gets a name table, duplicates
 * refused on both, and st_open_header on headers that fit its first read
 * and headers that do not. */
static void test_lookup_and_first_read(void)
{
    static const int counts[] = {1, 3, 8, 9, 40, 200};
    for (size_t c = 0; c < G_N_ELEMENTS(counts); c++) {
        int n = counts[c];
        GString *js = g_string_new("{");
        for (int i = 0; i < n; i++)
            g_string_append_printf(js, "%s\"w%d\":{\"dtype\":\"F32\",\"shape\":[1],"
                                   "\"data_offsets\":[%d,%d]}",
                                   i ? "," : "", i, 4 * i, 4 * i + 4);
        GString *dup = g_string_new(js->str);
        g_string_append(js, "}");
        g_string_append_printf(dup, ",\"w0\":{\"dtype\":\"F32\",\"shape\":[1],"
                                    "\"data_offsets\":[%d,%d]}}", 4 * n, 4 * n + 4);
        size_t len;
        uint8_t *b = simple(js->str, (size_t)n * 4, &len);
        st_file *f = parse_ok("lookup", b, len);
        for (int i = 0; f && i < n; i++) {
            char name[16];
            g_snprintf(name, sizeof name, "w%d", i);
            CHECK(st_find(f, name) == &f->tensors[i]);
        }
        CHECK(f && st_find(f, "w") == NULL && st_find(f, "nope") == NULL);
        st_close(f);
        /* the same bytes from a file: one read or two */
        char *path = g_build_filename(tmpdir, "lookup.safetensors", NULL);
        CHECK(g_file_set_contents(path, (const char *)b, (gssize)len, NULL));
        GError *err = NULL;
        f = st_open_header(path, &err);
        CHECK(f != NULL && err == NULL);
        CHECK(f && f->n_tensors == n && f->data_start == 8 + js->len && f->size == len);
        CHECK(f && st_find(f, "w0") == &f->tensors[0] && f->dev != 0);
        st_close(f);
        g_clear_error(&err);
        g_free(b);
        b = simple(dup->str, (size_t)(n + 1) * 4, &len);
        expect_fail("dup", b, len, "duplicate tensor name 'w0'");
        g_free(b);
        unlink(path);
        g_free(path);
        g_string_free(js, TRUE);
        g_string_free(dup, TRUE);
    }
}

/* st_describe: what a file holds, said elsewhere, checked as a header is;
 * st_header_diff: the file against it. */
static void test_describe(void)
{
    const char *js = "{\"a\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
                     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}";
    size_t len;
    uint8_t *b = simple(js, 20, &len);
    st_file *f = parse_ok("file", b, len);
    GError *err = NULL;
    st_file *d = f ? st_describe("said", f->tensors, f->n_tensors, len, &err) : NULL;
    CHECK(d && !err && d->n_tensors == 2 && d->data_start == f->data_start);
    CHECK(d && st_find(d, "b") && st_find(d, "b")->begin == 12 && !d->base);
    char *diff = d ? st_header_diff(d, f, "qmoe.json") : g_strdup("no description");
    CHECK(diff == NULL);
    g_free(diff);
    /* another size; another shape with the same bytes; a tensor gone */
    if (d) {
        d->size++;
        diff = st_header_diff(d, f, "qmoe.json");
        char *want = g_strdup_printf("it is %zu bytes, qmoe.json says %zu", len, len + 1);
        CHECK_CONTAINS(diff ? diff : "", want);
        g_free(want);
        g_free(diff);
        d->size--;
        d->tensors[0].shape[0] = 3, d->tensors[0].shape[1] = 2;
        diff = st_header_diff(d, f, "qmoe.json");
        CHECK_CONTAINS(diff ? diff : "", "tensor 'a' is BF16 [2, 3] at [0, 12], qmoe.json "
                                         "says BF16 [3, 2] at [0, 12]");
        g_free(diff);
        d->n_tensors = 1;
        d->tensors[0].shape[0] = 2, d->tensors[0].shape[1] = 3;
        diff = st_header_diff(d, f, "qmoe.json");
        CHECK_CONTAINS(diff ? diff : "", "it holds 2 tensors, qmoe.json lists 1");
        g_free(diff);
        d->n_tensors = 2;
    }
    /* every number distrusted: each as the reader words it */
    st_tensor t[2];
    if (f)
        memcpy(t, f->tensors, sizeof t);
    struct { const char *rule; int what; uint64_t size; } bad[] = {
        {"needs 12 bytes but data_offsets [0, 14] span 14", 1, 0},
        {"gap before tensor 'b'", 2, 0},
        {"negative dimension", 3, 0},
        {"duplicate tensor name 'a'", 4, 0},
        {"has 9 dimensions", 5, 0},
        {"unknown dtype", 6, 0},
        {"past the end of the file", 0, 25},
        {"overlaps the previous tensor", 7, 0},
    };
    for (size_t i = 0; f && i < G_N_ELEMENTS(bad); i++) {
        st_tensor x[2];
        memcpy(x, t, sizeof x);
        switch (bad[i].what) {
        case 1: x[0].end = 14; break;
        case 2: x[1].begin = 14, x[1].end = 22; break;
        case 3: x[0].shape[0] = -2; break;
        case 4: x[1].name = "a"; break;
        case 5: x[0].ndim = 9; break;
        case 6: x[0].dtype = ST_DTYPE_COUNT; break;
        case 7: x[1].begin = 8, x[1].end = 16; break;
        }
        g_clear_error(&err);
        st_file *y = st_describe("said", x, 2, bad[i].size ? bad[i].size : len, &err);
        CHECK(y == NULL);
        CHECK_CONTAINS(err ? err->message : "", bad[i].rule);
        st_close(y);
    }
    g_clear_error(&err);
    st_close(d);
    st_close(f);
    g_free(b);
}

int main(void)
{
    tmpdir = g_dir_make_tmp("qmoe-st-XXXXXX", NULL);
    if (!tmpdir) {
        printf("FAIL cannot make a temporary directory\n");
        return 1;
    }
    RUN(test_catalogue_in_memory);
    RUN(test_lookup_and_first_read);
    RUN(test_catalogue_files);
    RUN(test_more_refusals);
    RUN(test_empty_header);
    RUN(test_header_two_readers);
    RUN(test_zero_size_and_scalar);
    RUN(test_dtypes);
    RUN(test_metadata);
    RUN(test_numel_and_shape_str);
    RUN(test_writer_round_trip);
    RUN(test_writer_json_bytes);
    RUN(test_writer_align);
    RUN(test_writer_refuses);
    RUN(test_write_and_open);
    RUN(test_open_errors);
    RUN(test_describe);
    g_rmdir(tmpdir);
    g_free(tmpdir);
    TEST_EXIT();
}
