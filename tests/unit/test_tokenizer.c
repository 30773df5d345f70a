/* test_tokenizer.c - the Qwen3 byte-level BPE tokenizer against the ids of
 * tests/fixtures/qwen3-tokenizer/expected.json (327 strings, 25 categories).
 *
 *   test_tokenizer           the tests
 *   test_tokenizer --bench   also prints encode speed (corpus x100, warm cache)
 */
#include "text/tokenizer.h"
#include "base/util.h"
#include "testhelp.h"
#include "base/json.h"

#include <glib/gstdio.h>
#include <stdlib.h>

typedef struct {
    char *cat;
    char *text; /* may contain NUL */
    size_t len;
    GArray *ids;
} sample_t;

static char *fix_dir;    /* .../tests/fixtures/qwen3-tokenizer */
static char *tmp_dir;
static tok_t *qwen;      /* the real Qwen3 tokenizer */
static sample_t *samples;
static int n_samples;

/* ---- helpers ---- */

/* Decodes the JSON string whose opening quote is at p (cJSON stops its
 * strings at "\u0000"; one sample contains one). */
static char *json_unescape(const char *p, size_t *len_out)
{
    GString *g = g_string_new(NULL);
    const char *why;
    if (!qm_json_get_str(p, p + strlen(p), g, &why)) {
        printf("expected.json: %s\n", why);
        exit(2);
    }
    *len_out = g->len;
    return g_string_free(g, FALSE);
}

static void load_samples(void)
{
    char *path = g_build_filename(fix_dir, "expected.json", NULL);
    char *raw = NULL;
    GError *err = NULL;
    cJSON *j = qm_json_load(path, &err);
    if (!j || !g_file_get_contents(path, &raw, NULL, NULL)) {
        printf("cannot load %s: %s\n", path, err ? err->message : "?");
        exit(2);
    }
    n_samples = cJSON_GetArraySize(j);
    samples = g_new0(sample_t, n_samples);
    const char *p = raw;
    for (int i = 0; i < n_samples; i++) {
        const cJSON *e = cJSON_GetArrayItem(j, i), *id;
        sample_t *s = &samples[i];
        s->cat = g_strdup(cJSON_GetObjectItem(e, "cat")->valuestring);
        p = strstr(p, "\"text\": \"") + 8;
        s->text = json_unescape(p, &s->len);
        s->ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
        cJSON_ArrayForEach(id, cJSON_GetObjectItem(e, "ids")) {
            int32_t v = id->valueint;
            g_array_append_val(s->ids, v);
        }
        /* our unescaper and cJSON agree up to the first NUL */
        const char *cj = cJSON_GetObjectItem(e, "text")->valuestring;
        if (strlen(cj) != strnlen(s->text, s->len) || memcmp(cj, s->text, strlen(cj))) {
            printf("sample %d: text unescaped wrongly\n", i);
            exit(2);
        }
    }
    cJSON_Delete(j);
    g_free(raw);
    g_free(path);
}

/* Text for a message: C escapes for control bytes. */
static char *esc(const char *s, size_t n)
{
    char *d = g_strndup(s, MIN(n, 80));
    char *c = g_strescape(d, NULL);
    g_free(d);
    return c;
}

/* rm -r for the scratch directory */
static void rm_rf(const char *path)
{
    GDir *d = g_dir_open(path, 0, NULL);
    if (d) {
        const char *name;
        while ((name = g_dir_read_name(d))) {
            char *p = g_build_filename(path, name, NULL);
            rm_rf(p);
            g_free(p);
        }
        g_dir_close(d);
        g_rmdir(path);
    } else
        remove(path);
}

static char *ids_str(const int32_t *ids, size_t n)
{
    GString *g = g_string_new("[");
    for (size_t i = 0; i < n && i < 40; i++)
        g_string_append_printf(g, "%s%d", i ? "," : "", ids[i]);
    g_string_append(g, n > 40 ? ",...]" : "]");
    return g_string_free(g, FALSE);
}

/* Equal id arrays (memcmp with an empty array's NULL data is UB). */
static int same_ids(const GArray *a, const GArray *b)
{
    return a->len == b->len &&
           (a->len == 0 || !memcmp(a->data, b->data, a->len * sizeof(int32_t)));
}

static GArray *encode(tok_t *t, const char *s, size_t n, unsigned flags)
{
    GArray *a = g_array_new(FALSE, FALSE, sizeof(int32_t));
    GError *err = NULL;
    if (tok_encode(t, s, n, flags, a, &err) < 0) {
        printf("  encode failed: %s\n", err->message);
        g_error_free(err);
    }
    return a;
}

/* NFC of text that may contain NUL bytes. */
static GString *nfc(const char *s, size_t n)
{
    GString *g = g_string_new(NULL);
    for (size_t i = 0; i < n;) {
        size_t m = strnlen(s + i, n - i);
        char *t = g_utf8_normalize(s + i, (gssize)m, G_NORMALIZE_NFC);
        g_string_append(g, t);
        g_free(t);
        i += m;
        if (i < n) {
            g_string_append_c(g, 0);
            i++;
        }
    }
    return g;
}

static char *fix(const char *name)
{
    return g_build_filename(fix_dir, name, NULL);
}

static void copy_file(const char *from, const char *to)
{
    char *d = NULL;
    gsize n = 0;
    if (!g_file_get_contents(from, &d, &n, NULL) ||
        !g_file_set_contents(to, d, (gssize)n, NULL)) {
        printf("cannot copy %s to %s\n", from, to);
        exit(2);
    }
    g_free(d);
}

/* ---- tests ---- */

static void test_load(void)
{
    CHECK(qwen != NULL);
    CHECK(tok_vocab_size(qwen) == 151669);
    CHECK(tok_token_id(qwen, "<|endoftext|>") == 151643);
    CHECK(tok_token_id(qwen, "<|im_start|>") == 151644);
    CHECK(tok_token_id(qwen, "<|im_end|>") == 151645);
    CHECK(tok_token_id(qwen, "<think>") == 151667);
    CHECK(tok_token_id(qwen, "Ġhello") == 23811);
    CHECK(tok_token_id(qwen, "no such token") == -1);
    CHECK(tok_is_special(qwen, 151645) && !tok_is_special(qwen, 151667));
    CHECK(!tok_is_special(qwen, 23811) && !tok_is_special(qwen, -1));
    CHECK(!strcmp(tok_token_str(qwen, 23811), "Ġhello"));
    CHECK(!strcmp(tok_token_str(qwen, 151645), "<|im_end|>"));
    CHECK(tok_token_str(qwen, 151669) == NULL && tok_token_str(qwen, -5) == NULL);
    size_t n = 0;
    const uint8_t *b = tok_token_bytes(qwen, 23811, &n);
    CHECK(b && n == 6 && !memcmp(b, " hello", 6));
    CHECK(tok_token_bytes(qwen, 200000, &n) == NULL && n == 0);
}

static void test_expected_ids(void)
{
    int bad = 0;
    GHashTable *per_cat = g_hash_table_new(g_str_hash, g_str_equal);
    for (int i = 0; i < n_samples; i++) {
        sample_t *s = &samples[i];
        GArray *got = encode(qwen, s->text, s->len, 0);
        if (!same_ids(got, s->ids)) {
            char *e = esc(s->text, s->len);
            char *g = ids_str((int32_t *)got->data, got->len);
            char *w = ids_str((int32_t *)s->ids->data, s->ids->len);
            printf("  mismatch #%d [%s] \"%s\": got %s want %s\n", i, s->cat, e, g, w);
            g_free(e), g_free(g), g_free(w);
            g_hash_table_insert(per_cat, s->cat,
                                GINT_TO_POINTER(GPOINTER_TO_INT(
                                    g_hash_table_lookup(per_cat, s->cat)) + 1));
            bad++;
        }
        g_array_free(got, TRUE);
    }
    if (bad) {
        GHashTableIter it;
        gpointer k, v;
        g_hash_table_iter_init(&it, per_cat);
        while (g_hash_table_iter_next(&it, &k, &v))
            printf("  category %s: %d failed\n", (char *)k, GPOINTER_TO_INT(v));
    }
    printf("  %d of %d strings give the expected ids\n", n_samples - bad, n_samples);
    CHECK(bad == 0);
    g_hash_table_destroy(per_cat);
}

static void test_roundtrip(void)
{
    int bad = 0;
    for (int i = 0; i < n_samples; i++) {
        sample_t *s = &samples[i];
        size_t n = 0;
        char *d = tok_decode(qwen, (int32_t *)s->ids->data, s->ids->len, &n);
        GString *want = nfc(s->text, s->len);
        if (n != want->len || memcmp(d, want->str, n)) {
            char *e = esc(s->text, s->len);
            printf("  decode(encode(#%d [%s] \"%s\")) is not its NFC\n", i, s->cat, e);
            g_free(e);
            bad++;
        }
        CHECK(d[n] == 0);
        g_free(d);
        g_string_free(want, TRUE);
    }
    CHECK(bad == 0);
}

static void test_special_in_text(void)
{
    const char *chat = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
    GArray *a = encode(qwen, chat, strlen(chat), 0);
    CHECK(a->len > 4);
    CHECK(g_array_index(a, int32_t, 0) == 151644);
    int n_end = 0;
    for (guint i = 0; i < a->len; i++)
        n_end += g_array_index(a, int32_t, i) == 151645;
    CHECK(n_end == 1);
    size_t n;
    char *d = tok_decode(qwen, (int32_t *)a->data, a->len, &n);
    CHECK(n == strlen(chat) && !strcmp(d, chat));
    g_free(d);
    g_array_free(a, TRUE);

    /* mid-word, adjacent, and non-special added tokens */
    a = encode(qwen, "ab<|im_end|><|im_end|>cd<think>x</think>", 40, 0);
    int32_t want[] = {370, 151645, 151645, 4385, 151667, 87, 151668};
    CHECK(a->len == 7 && !memcmp(a->data, want, sizeof want));
    g_array_free(a, TRUE);

    /* TOK_PLAIN: no added tokens at all */
    a = encode(qwen, "<|im_end|>", 10, TOK_PLAIN);
    CHECK(a->len > 1);
    for (guint i = 0; i < a->len; i++)
        CHECK(g_array_index(a, int32_t, i) < 151643);
    g_array_free(a, TRUE);

    /* a near miss is text */
    a = encode(qwen, "<|im_start", 10, 0);
    for (guint i = 0; i < a->len; i++)
        CHECK(g_array_index(a, int32_t, i) != 151644);
    g_array_free(a, TRUE);
}

static void test_bad_text(void)
{
    GArray *a = g_array_new(FALSE, FALSE, sizeof(int32_t));
    GError *err = NULL;
    CHECK(tok_encode(qwen, "ab\xC3(", 4, 0, a, &err) == -1);
    CHECK(err && err->code == QM_ERR_FORMAT);
    CHECK_CONTAINS(err ? err->message : NULL, "not valid UTF-8 at byte 2");
    g_clear_error(&err);
    CHECK(tok_encode(qwen, "\xED\xA0\x80", 3, 0, a, &err) == -1); /* surrogate */
    g_clear_error(&err);
    CHECK(tok_encode(qwen, "ok\xE2\x82", 4, 0, a, &err) == -1); /* truncated */
    g_clear_error(&err);
    CHECK(a->len == 0);
    CHECK(tok_encode(qwen, "", 0, 0, a, &err) == 0 && a->len == 0);
    g_array_free(a, TRUE);
}

/* Streaming decode gives the same text, valid UTF-8 at every step. */
static void test_stream(void)
{
    tok_stream_t *st = tok_stream_new(qwen);
    for (int i = 0; i < n_samples; i++) {
        sample_t *s = &samples[i];
        GString *all = g_string_new(NULL);
        for (guint k = 0; k < s->ids->len; k++) {
            size_t n;
            const char *p = tok_stream_push(st, g_array_index(s->ids, int32_t, k), &n);
            CHECK(p[n] == 0);
            CHECK(g_utf8_validate_len(p, n, NULL) || memchr(p, 0, n));
            g_string_append_len(all, p, (gssize)n);
        }
        size_t n;
        const char *p = tok_stream_flush(st, &n);
        CHECK(n == 0);
        g_string_append_len(all, p, (gssize)n);
        GString *want = nfc(s->text, s->len);
        CHECK(all->len == want->len && !memcmp(all->str, want->str, all->len));
        g_string_free(all, TRUE);
        g_string_free(want, TRUE);
    }
    /* an emoji split over tokens is held back, then appears whole */
    const char *emoji = "\xF0\xA0\x80\x80"; /* U+20000, not one token */
    GArray *a = encode(qwen, emoji, 4, 0);
    CHECK(a->len >= 2);
    size_t n;
    const char *p = tok_stream_push(st, g_array_index(a, int32_t, 0), &n);
    CHECK(n == 0 && *p == 0);
    GString *rest = g_string_new(NULL);
    for (guint k = 1; k < a->len; k++) {
        p = tok_stream_push(st, g_array_index(a, int32_t, k), &n);
        g_string_append_len(rest, p, (gssize)n);
    }
    CHECK(!strcmp(rest->str, emoji));
    g_string_free(rest, TRUE);
    /* incomplete at the end: one U+FFFD on flush; a broken prefix too */
    tok_stream_push(st, g_array_index(a, int32_t, 0), &n);
    p = tok_stream_flush(st, &n);
    CHECK(n == 3 && !strcmp(p, "\xEF\xBF\xBD"));
    tok_stream_push(st, g_array_index(a, int32_t, 0), &n);
    p = tok_stream_push(st, tok_token_id(qwen, "a"), &n);
    CHECK(!strcmp(p, "\xEF\xBF\xBD" "a"));
    p = tok_stream_push(st, 999999, &n); /* an id without a token: visible */
    CHECK(!strcmp(p, "<|id 999999|>") && n == 13);
    tok_stream_push(st, g_array_index(a, int32_t, 0), &n); /* breaks a held prefix */
    p = tok_stream_push(st, 999999, &n);
    CHECK(!strcmp(p, "\xEF\xBF\xBD<|id 999999|>"));
    int32_t gap[] = {tok_token_id(qwen, "a"), 999999, tok_token_id(qwen, "a")};
    char *dg = tok_decode(qwen, gap, 3, &n);
    CHECK(!strcmp(dg, "a<|id 999999|>a") && n == 15);
    g_free(dg);
    g_array_free(a, TRUE);
    tok_stream_free(st);
    tok_stream_free(NULL);
}

/* Long runs of one character: BPE must not be quadratic, result exact. */
static void test_long_runs(void)
{
    const char *units[] = {"a", " ", "\n", "7", "\xE4\xB8\xAD" /* 中 */,
                           "\xF0\x9F\x98\x80" /* 😀 */, "e\xCC\x81" /* NFD é */, "ab "};
    for (size_t u = 0; u < G_N_ELEMENTS(units); u++) {
        GString *g = g_string_new(NULL);
        while (g->len < 100000)
            g_string_append(g, units[u]);
        double t0 = qm_monotonic();
        GArray *a = encode(qwen, g->str, g->len, 0);
        double dt = qm_monotonic() - t0;
        size_t n;
        char *d = tok_decode(qwen, (int32_t *)a->data, a->len, &n);
        GString *want = nfc(g->str, g->len);
        CHECK(n == want->len && !memcmp(d, want->str, n));
        char *e = g_strescape(units[u], NULL);
        printf("  100 kB of \"%s\": %u tokens in %.3f s\n", e, a->len, dt);
        g_free(e);
        g_free(d);
        g_string_free(want, TRUE);
        g_string_free(g, TRUE);
        g_array_free(a, TRUE);
    }
}

/* vocab.json + merges.txt give what tokenizer.json gives (tiny model). */
static void test_tiny_two_paths(void)
{
    char *tiny = fix("tiny"), *bpe_dir = g_build_filename(tmp_dir, "bpe", NULL);
    const char *files[] = {"vocab.json", "merges.txt", "tokenizer_config.json"};
    g_mkdir_with_parents(bpe_dir, 0755);
    for (size_t i = 0; i < G_N_ELEMENTS(files); i++) {
        char *a = g_build_filename(tiny, files[i], NULL);
        char *b = g_build_filename(bpe_dir, files[i], NULL);
        copy_file(a, b);
        g_free(a), g_free(b);
    }
    GError *err = NULL;
    tok_t *tj = tok_load(tiny, &err);
    CHECK(tj != NULL);
    g_clear_error(&err);
    tok_t *tb = tok_load(bpe_dir, &err);
    CHECK(tb != NULL);
    if (err)
        printf("  %s\n", err->message);
    g_clear_error(&err);
    if (!tj || !tb)
        goto out;
    CHECK(tok_vocab_size(tj) == 384 && tok_vocab_size(tb) == 384);
    CHECK(tok_token_id(tb, "<|im_end|>") == 383 && tok_is_special(tb, 383));
    CHECK(tok_token_id(tj, "<|im_start|>") == 382);
    /* the tiny tokenizer.json has no normalizer while Qwen2Tokenizer applies
     * NFC, so compare on text that is already NFC */
    int compared = 0, bad = 0;
    for (int i = 0; i < n_samples; i++) {
        sample_t *s = &samples[i];
        GString *n = nfc(s->text, s->len);
        int is_nfc = n->len == s->len && !memcmp(n->str, s->text, s->len);
        g_string_free(n, TRUE);
        if (!is_nfc)
            continue;
        GArray *a = encode(tj, s->text, s->len, 0), *b = encode(tb, s->text, s->len, 0);
        compared++;
        if (!same_ids(a, b)) {
            char *e = esc(s->text, s->len);
            printf("  paths differ on #%d [%s] \"%s\"\n", i, s->cat, e);
            g_free(e);
            bad++;
        }
        size_t len;
        char *d = tok_decode(tb, (int32_t *)b->data, b->len, &len);
        CHECK(len == s->len && !memcmp(d, s->text, len));
        g_free(d);
        g_array_free(a, TRUE), g_array_free(b, TRUE);
    }
    printf("  %d NFC strings compared, %d differ\n", compared, bad);
    CHECK(compared > 300 && bad == 0);
    const char *text = "<|im_start|>user\nthe cat with hat<|im_end|>";
    GArray *a = encode(tb, text, strlen(text), 0);
    int32_t want0 = 382, wantn = 383;
    CHECK(a->len > 2 && !memcmp(a->data, &want0, 4) &&
          !memcmp(&g_array_index(a, int32_t, a->len - 1), &wantn, 4));
    g_array_free(a, TRUE);
out:
    tok_free(tj);
    tok_free(tb);
    g_free(tiny);
    g_free(bpe_dir);
}

/* Loads a tokenizer.json text from memory and checks the error message. */
static void expect_json_error(const char *json, const char *msg)
{
    GError *err = NULL;
    tok_t *t = tok_from_json(json, strlen(json), "t.json", &err);
    CHECK(t == NULL);
    CHECK(err && err->code == QM_ERR_FORMAT);
    CHECK_CONTAINS(err ? err->message : NULL, msg);
    CHECK_CONTAINS(err ? err->message : NULL, "'t.json'");
    g_clear_error(&err);
    tok_free(t);
}

#define PRE "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"use_regex\":true}"

static void test_errors(void)
{
    GError *err = NULL;
    tok_t *t;
    char *missing = g_build_filename(tmp_dir, "nope.json", NULL);
    t = tok_load(missing, &err);
    CHECK(!t && err && err->code == QM_ERR_IO);
    CHECK_CONTAINS(err ? err->message : NULL, missing);
    g_clear_error(&err);

    /* a directory with none of the files */
    t = tok_load(tmp_dir, &err);
    CHECK(!t && err && err->code == QM_ERR_IO);
    CHECK_CONTAINS(err ? err->message : NULL, "no tokenizer.json");
    g_clear_error(&err);

    /* truncated gzip */
    char *gz = fix("tokenizer.json.gz"), *data = NULL;
    gsize n = 0;
    CHECK(g_file_get_contents(gz, &data, &n, NULL));
    char *cut = g_build_filename(tmp_dir, "cut.json.gz", NULL);
    g_file_set_contents(cut, data, (gssize)(n / 2), NULL);
    t = tok_load(cut, &err);
    CHECK(!t && err);
    CHECK_CONTAINS(err ? err->message : NULL, "truncated gzip data");
    CHECK_CONTAINS(err ? err->message : NULL, cut);
    g_clear_error(&err);
    /* corrupt gzip */
    data[n / 2] ^= 0x55;
    data[n / 2 + 1] ^= 0x55;
    g_file_set_contents(cut, data, (gssize)n, NULL);
    t = tok_load(cut, &err);
    CHECK(!t && err && err->code == QM_ERR_FORMAT);
    CHECK_CONTAINS(err ? err->message : NULL, cut);
    g_clear_error(&err);
    g_free(data);

    /* not JSON */
    char *nj = g_build_filename(tmp_dir, "tokenizer.json", NULL);
    g_file_set_contents(nj, "this is not json", -1, NULL);
    t = tok_load(tmp_dir, &err); /* a directory finds tokenizer.json */
    CHECK(!t && err && err->code == QM_ERR_FORMAT);
    CHECK_CONTAINS(err ? err->message : NULL, "invalid JSON");
    CHECK_CONTAINS(err ? err->message : NULL, nj);
    g_clear_error(&err);
    remove(nj);

    /* a catalogue of malformed tokenizer.json files */
    expect_json_error("[1,2]", "not a JSON object");
    expect_json_error("{}", "model is missing");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0}}," PRE "}", "model.merges is missing");
    expect_json_error("{\"model\":{\"merges\":[]}}", "model.vocab is missing");
    expect_json_error("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{},\"merges\":[]}}",
                      "only BPE");
    expect_json_error("{\"model\":{\"vocab\":{},\"merges\":[]}," PRE "}", "is empty");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":-1},\"merges\":[]}," PRE "}",
                      "bad id");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0.5},\"merges\":[]}," PRE "}",
                      "bad id");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":99999999},\"merges\":[]}," PRE "}",
                      "bad id");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}," PRE "}",
                      "appears twice");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a c\"]},"
                      PRE "}", "merge 0 uses 'c', which is not in the vocabulary");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":[[\"a\",\"b\"]]},"
                      PRE "}", "merge 0 ('a' 'b') makes 'ab', which is not");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[\"a\"]}," PRE "}",
                      "model.merges[0] is not a pair");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[[\"a\",1]]}," PRE "}",
                      "model.merges[0] is not a pair");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}",
                      "no ByteLevel step");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},"
                      "\"pre_tokenizer\":{\"type\":\"Metaspace\"}}",
                      "unsupported pre_tokenizer type 'Metaspace'");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},"
                      "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},"
                      "\"behavior\":\"Isolated\"}}", "regex does not compile");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},"
                      "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
                      "\"behavior\":\"Removed\"}}", "behavior 'Removed'");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},\"normalizer\":"
                      "{\"type\":\"NFKC\"}," PRE "}", "unsupported normalizer 'NFKC'");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[],\"byte_fallback\":true},"
                      PRE "}", "byte_fallback");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},\"added_tokens\":"
                      "[{\"id\":0,\"content\":\"x\"}]," PRE "}", "id 0 is already taken");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},\"added_tokens\":"
                      "[{\"id\":\"1\",\"content\":\"x\"}]," PRE "}", "bad id or content");
    expect_json_error("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},\"added_tokens\":"
                      "[{\"id\":1,\"content\":\"\"}]," PRE "}", "bad id or content");

    /* merges.txt with a bad line */
    char *bdir = g_build_filename(tmp_dir, "badbpe", NULL);
    g_mkdir_with_parents(bdir, 0755);
    char *v = g_build_filename(bdir, "vocab.json", NULL);
    char *m = g_build_filename(bdir, "merges.txt", NULL);
    g_file_set_contents(v, "{\"a\":0,\"b\":1,\"ab\":2}", -1, NULL);
    g_file_set_contents(m, "#version: 0.2\na b\nab\n", -1, NULL);
    t = tok_load(bdir, &err);
    CHECK(!t && err);
    CHECK_CONTAINS(err ? err->message : NULL, "merges.txt': line 3 is not a pair");
    g_clear_error(&err);
    g_file_set_contents(v, "[]", -1, NULL);
    t = tok_load(bdir, &err);
    CHECK(!t && err);
    CHECK_CONTAINS(err ? err->message : NULL, "vocab.json': not a JSON object");
    g_clear_error(&err);
    remove(v), remove(m), g_rmdir(bdir);

    g_free(bdir), g_free(v), g_free(m);
    g_free(gz), g_free(cut), g_free(nj), g_free(missing);
    tok_free(NULL);
}

/* A minimal tokenizer.json from memory works: "a b" merges, prefix space. */
static void test_minimal_json(void)
{
    const char *json =
        "{\"model\":{\"vocab\":{\"a\":0,\"b\":1,\"Ġ\":2,\"ab\":3,\"Ġab\":4},"
        "\"merges\":[\"a b\",\"Ġ ab\"]},\"pre_tokenizer\":{\"type\":\"ByteLevel\","
        "\"add_prefix_space\":true},\"added_tokens\":[{\"id\":5,\"content\":\"<x>\","
        "\"special\":true,\"lstrip\":true}]}";
    GError *err = NULL;
    tok_t *t = tok_from_json(json, strlen(json), "mem", &err);
    CHECK(t != NULL);
    if (!t) {
        printf("  %s\n", err->message);
        g_error_free(err);
        return;
    }
    GArray *a = encode(t, "ab ab  <x>ab", 12, 0);
    /* " ab" " ab" (prefix space added), lstrip takes both spaces before
     * <x>, " ab" again */
    int32_t want[] = {4, 4, 5, 4};
    CHECK(a->len == 4 && !memcmp(a->data, want, sizeof want));
    /* bytes without a token (here 'c') are dropped, not a crash */
    g_array_set_size(a, 0);
    CHECK(tok_encode(t, "acb", 3, 0, a, NULL) == 0);
    g_array_free(a, TRUE);
    tok_free(t);
}

/* Random strings over awkward characters: decode(encode(s)) == NFC(s), the
 * stream gives the same text, every id is in the vocabulary. */
static void test_random(void)
{
    static const char *const pool[] = {
        "a", "Z", "q", "7", " ", "  ", "\n", "\r\n", "\t", "'s", "'LL", ".", "!!", "$",
        "\xC2\x85", "\xC2\xA0", "\xEF\xBB\xBF", "\xE1\xA0\x8E", "\xE3\x80\x80",
        "\xCC\x81", "e\xCC\x81", "\xC3\xA9", "\xE1\x84\x80", "\xE1\x85\xA1",
        "\xE4\xB8\xAD", "\xF0\x9F\x91\xA9", "\xE2\x80\x8D", "\xE0\xA4\xB9",
        "\xE0\xA5\x8D", "\xF0\xA0\x80\x80", "<|im_end|>", "<|im_start", "<think>",
        "\x00", "\xD9\xA3", "\xE2\x85\xAB"};
    GRand *r = g_rand_new_with_seed(1234);
    tok_stream_t *st = tok_stream_new(qwen);
    int bad = 0;
    for (int k = 0; k < 3000 && bad < 5; k++) {
        GString *g = g_string_new(NULL);
        int n = g_rand_int_range(r, 0, 24);
        for (int i = 0; i < n; i++) {
            const char *p = pool[g_rand_int_range(r, 0, G_N_ELEMENTS(pool))];
            g_string_append_len(g, p, *p ? (gssize)strlen(p) : 1);
        }
        GArray *a = encode(qwen, g->str, g->len, 0);
        for (guint i = 0; i < a->len; i++) {
            int32_t id = g_array_index(a, int32_t, i);
            CHECK(id >= 0 && id < tok_vocab_size(qwen));
        }
        size_t len;
        char *d = tok_decode(qwen, (int32_t *)a->data, a->len, &len);
        GString *want = nfc(g->str, g->len), *streamed = g_string_new(NULL);
        for (guint i = 0; i < a->len; i++) {
            size_t m;
            const char *p = tok_stream_push(st, g_array_index(a, int32_t, i), &m);
            g_string_append_len(streamed, p, (gssize)m);
        }
        tok_stream_flush(st, NULL);
        if (len != want->len || memcmp(d, want->str, len) || streamed->len != len ||
            memcmp(streamed->str, d, len)) {
            char *e = g_strescape(g->str, NULL);
            printf("  round trip fails on \"%s\"\n", e);
            g_free(e);
            bad++;
        }
        g_free(d);
        g_string_free(want, TRUE);
        g_string_free(streamed, TRUE);
        g_string_free(g, TRUE);
        g_array_free(a, TRUE);
    }
    CHECK(bad == 0);
    tok_stream_free(st);
    g_rand_free(r);
}

static void bench(void)
{
    size_t bytes = 0, tokens = 0;
    GArray *a = g_array_new(FALSE, FALSE, sizeof(int32_t));
    for (int i = 0; i < n_samples; i++) /* warm the cache */
        tok_encode(qwen, samples[i].text, samples[i].len, 0, a, NULL);
    double t0 = qm_monotonic();
    for (int r = 0; r < 100; r++)
        for (int i = 0; i < n_samples; i++) {
            g_array_set_size(a, 0);
            tok_encode(qwen, samples[i].text, samples[i].len, 0, a, NULL);
            tokens += a->len;
            bytes += samples[i].len;
        }
    double dt = qm_monotonic() - t0;
    printf("bench: corpus x100: %zu tokens, %zu bytes in %.3f s: %.0f tokens/s, "
           "%.2f MB/s\n", tokens, bytes, dt, tokens / dt, bytes / dt / 1e6);
    g_array_free(a, TRUE);
}

int main(int argc, char **argv)
{
    const char *root = getenv("QMOE_ROOT");
    fix_dir = root ? g_build_filename(root, "tests/fixtures/qwen3-tokenizer", NULL)
                   : g_strdup("tests/fixtures/qwen3-tokenizer");
    tmp_dir = g_dir_make_tmp("qmoe-tok-XXXXXX", NULL);
    load_samples();
    char *gz = fix("tokenizer.json.gz");
    GError *err = NULL;
    double t0 = qm_monotonic();
    qwen = tok_load(gz, &err);
    printf("  loaded %s in %.2f s\n", gz, qm_monotonic() - t0);
    if (!qwen) {
        printf("FAIL load: %s\n", err->message);
        return 1;
    }
    if (argc > 1 && !strcmp(argv[1], "--bench")) {
        bench();
    } else {
        RUN(test_load);
        RUN(test_expected_ids);
        RUN(test_roundtrip);
        RUN(test_special_in_text);
        RUN(test_bad_text);
        RUN(test_stream);
        RUN(test_long_runs);
        RUN(test_random);
        RUN(test_tiny_two_paths);
        RUN(test_errors);
        RUN(test_minimal_json);
    }
    tok_free(qwen);
    for (int i = 0; i < n_samples; i++) {
        g_free(samples[i].cat);
        g_free(samples[i].text);
        g_array_free(samples[i].ids, TRUE);
    }
    g_free(samples);
    g_free(gz);
    rm_rf(tmp_dir);
    g_free(tmp_dir);
    g_free(fix_dir);
    TEST_EXIT();
}
