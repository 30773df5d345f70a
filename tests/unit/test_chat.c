/* test_chat.c - ChatML prompts, end-of-turn ids, and the perplexity
 * windows against the golden nll of tests/fixtures/qwen3moe-tiny. */
#include "text/chat.h"
#include "model/model.h"
#include "analysis/perplexity.h"
#include "text/tokenizer.h"
#include "base/util.h"
#include "testhelp.h"

#include <glib/gstdio.h>
#include <math.h>
#include <stdlib.h>

static char *fix;  /* tests/fixtures/qwen3moe-tiny */
static char *tmp;
static tok_t *tok; /* the tiny model's tokenizer: 381-383 are special */

/* A checkpoint as far as chat.h looks at it: a directory and two configs. */
static ckpt fake_ckpt(const char *config, const char *gen, const char *tokcfg)
{
    ckpt ck = {0};
    ck.dir = tmp;
    ck.config = config ? cJSON_Parse(config) : NULL;
    ck.generation_config = gen ? cJSON_Parse(gen) : NULL;
    char *p = g_build_filename(tmp, "tokenizer_config.json", NULL);
    if (tokcfg)
        g_file_set_contents(p, tokcfg, -1, NULL);
    else
        g_unlink(p);
    g_free(p);
    return ck;
}

static void free_ckpt(ckpt *ck)
{
    cJSON_Delete(ck->config);
    cJSON_Delete(ck->generation_config);
}

/* ids as "a,b,c" for comparison */
static char *ids_str(const GArray *ids)
{
    GString *s = g_string_new(NULL);
    for (guint i = 0; i < ids->len; i++)
        g_string_append_printf(s, "%s%d", i ? "," : "", g_array_index(ids, int32_t, i));
    return g_string_free(s, FALSE);
}

static void test_user_prompt(void)
{
    size_t n;
    char *s = chat_user_prompt("a\0b", 3, &n);
    static const char want[] = "<|im_start|>user\na\0b<|im_end|>\n<|im_start|>assistant\n";
    CHECK(n == sizeof want - 1);
    CHECK(memcmp(s, want, sizeof want - 1) == 0);
    CHECK(s[n] == 0);
    g_free(s);
    /* the tokenizer sees the markers as special tokens */
    s = chat_user_prompt("hi", 2, &n);
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    CHECK(tok_encode(tok, s, n, 0, ids, NULL) == 0);
    CHECK(ids->len > 4 && g_array_index(ids, int32_t, 0) == 382);
    int ends = 0;
    for (guint i = 0; i < ids->len; i++)
        ends += g_array_index(ids, int32_t, i) == 383;
    CHECK(ends == 1);
    g_array_free(ids, TRUE);
    g_free(s);
}

static void test_eos_ids(void)
{
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    /* generation_config first, duplicates once, junk ignored */
    ckpt ck = fake_ckpt("{\"eos_token_id\": 7}", "{\"eos_token_id\": [383, 381, 383, -1, 2.5]}",
                        NULL);
    CHECK(chat_eos_ids(&ck, ids) == 2);
    char *s = ids_str(ids);
    CHECK(strcmp(s, "383,381") == 0);
    g_free(s);
    free_ckpt(&ck);
    /* no generation_config: config.json, text config before top level */
    g_array_set_size(ids, 0);
    ck = fake_ckpt("{\"eos_token_id\": 7, \"thinker_config\": {\"text_config\": "
                   "{\"eos_token_id\": 9}}}", NULL, NULL);
    CHECK(chat_eos_ids(&ck, ids) == 1 && g_array_index(ids, int32_t, 0) == 9);
    free_ckpt(&ck);
    g_array_set_size(ids, 0);
    ck = fake_ckpt("{\"eos_token_id\": 7}", "{}", NULL);
    CHECK(chat_eos_ids(&ck, ids) == 1 && g_array_index(ids, int32_t, 0) == 7);
    free_ckpt(&ck);
    g_array_free(ids, TRUE);
}

static void test_end_ids(void)
{
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    GError *err = NULL;
    /* eos, then <|im_end|>, then tokenizer_config's eos_token */
    ckpt ck = fake_ckpt(NULL, "{\"eos_token_id\": 5}", "{\"eos_token\": \"<|endoftext|>\"}");
    CHECK(chat_end_ids(&ck, tok, ids, &err) == 3);
    char *s = ids_str(ids);
    CHECK(strcmp(s, "5,383,381") == 0);
    g_free(s);
    free_ckpt(&ck);
    /* the older {"content": ...} form; no tokenizer_config at all */
    g_array_set_size(ids, 0);
    ck = fake_ckpt(NULL, NULL, "{\"eos_token\": {\"content\": \"<|endoftext|>\"}}");
    CHECK(chat_end_ids(&ck, tok, ids, &err) == 2);
    free_ckpt(&ck);
    g_array_set_size(ids, 0);
    ck = fake_ckpt(NULL, NULL, NULL);
    CHECK(chat_end_ids(&ck, tok, ids, &err) == 1 && g_array_index(ids, int32_t, 0) == 383);
    free_ckpt(&ck);
    /* errors name the file; IDS untouched */
    g_array_set_size(ids, 0);
    ck = fake_ckpt(NULL, "{\"eos_token_id\": 5}", "{\"eos_token\": \"<|nope|>\"}");
    CHECK(chat_end_ids(&ck, tok, ids, &err) == -1 && ids->len == 0);
    CHECK_CONTAINS(err ? err->message : NULL, "tokenizer_config.json");
    CHECK_CONTAINS(err ? err->message : NULL, "'<|nope|>'");
    g_clear_error(&err);
    free_ckpt(&ck);
    ck = fake_ckpt(NULL, NULL, "{\"eos_token\": ");
    CHECK(chat_end_ids(&ck, tok, ids, &err) == -1 && ids->len == 0);
    CHECK_CONTAINS(err ? err->message : NULL, "tokenizer_config.json");
    g_clear_error(&err);
    free_ckpt(&ck);
    ck = fake_ckpt(NULL, NULL, "{\"eos_token\": 12}");
    CHECK(chat_end_ids(&ck, tok, ids, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "eos_token is neither");
    g_clear_error(&err);
    free_ckpt(&ck);
    g_array_free(ids, TRUE);
}

/* golden seq3 (24 ids) of tests/fixtures/qwen3moe-tiny and its nll */
static const int seq3[] = {382, 293, 260, 302, 327, 262, 366, 332, 256, 105, 109, 287,
                           334, 260, 302, 327, 260, 288, 296, 332, 256, 105, 109, 287};
static const double seq3_nll = 9.147906793815531;

static void test_perplexity(void)
{
    GError *err = NULL;
    char *path = g_build_filename(fix, "qwen3moe", NULL);
    model_opts o = {.n_threads = 2, .max_seq = 24};
    model *m = model_load(path, &o, &err);
    g_free(path);
    CHECK(m != NULL);
    if (!m) {
        g_clear_error(&err);
        return;
    }
    ppl_result r;
    CHECK(ppl_ids(m, seq3, 24, 1024, &r, &err) == 0);
    CHECK(fabs(r.nll - seq3_nll) <= 1e-5 * seq3_nll);
    CHECK(fabs(r.ppl - exp(seq3_nll)) <= 1e-4 * exp(seq3_nll));
    CHECK(r.n_tokens == 24 && r.n_scored == 23 && r.n_windows == 1 && r.context == 1024);
    /* windows of 8 overlapping by one: 0-7, 7-14, 14-21, 21-23 */
    double sum = 0, w;
    int starts[] = {0, 7, 14, 21}, lens[] = {8, 8, 8, 3};
    for (int i = 0; i < 4; i++) {
        CHECK(model_nll(m, seq3 + starts[i], lens[i], &w, &err) == 0);
        sum += w * (lens[i] - 1);
    }
    CHECK(ppl_ids(m, seq3, 24, 8, &r, &err) == 0);
    CHECK(r.n_windows == 4 && fabs(r.nll - sum / 23) <= 1e-12 * r.nll);
    CHECK(r.nll != seq3_nll);
    /* errors */
    CHECK(ppl_ids(m, seq3, 1, 8, &r, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "at least 2");
    g_clear_error(&err);
    CHECK(ppl_ids(m, seq3, 24, 1, &r, &err) == -1);
    g_clear_error(&err);
    int bad[] = {1, 384};
    CHECK(ppl_ids(m, bad, 2, 8, &r, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "id 384");
    g_clear_error(&err);
    /* a window longer than the KV cache */
    int many[30] = {0};
    CHECK(ppl_ids(m, many, 30, 30, &r, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "context of 24");
    g_clear_error(&err);
    /* the text path: the golden text tokenizes back to seq3 */
    static const char text[] = "<|im_start|>it was the best of times it was the worst of times";
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    CHECK(tok_encode(tok, text, sizeof text - 1, 0, ids, NULL) == 0);
    int same = ids->len == 24;
    for (guint i = 0; same && i < 24; i++)
        same = g_array_index(ids, int32_t, i) == seq3[i];
    g_array_free(ids, TRUE);
    CHECK(same);
    CHECK(ppl_text(m, tok, text, sizeof text - 1, 1024, &r, &err) == 0);
    CHECK(fabs(r.nll - seq3_nll) <= 1e-5 * seq3_nll);
    CHECK(ppl_text(m, tok, "\xff", 1, 1024, &r, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "UTF-8");
    g_clear_error(&err);
    model_free(m);
}

int main(void)
{
    const char *root = g_getenv("QMOE_ROOT");
    fix = g_build_filename(root ? root : ".", "tests/fixtures/qwen3moe-tiny", NULL);
    tmp = g_dir_make_tmp("qmoe-test-chat.XXXXXX", NULL);
    char *tp = g_build_filename(fix, "qwen3moe", NULL);
    tok = tok_load(tp, NULL);
    g_free(tp);
    if (!tok) {
        printf("FAIL test_chat: cannot load the tiny tokenizer\n");
        return 1;
    }
    RUN(test_user_prompt);
    RUN(test_eos_ids);
    RUN(test_end_ids);
    RUN(test_perplexity);
    char *p = g_build_filename(tmp, "tokenizer_config.json", NULL);
    g_unlink(p);
    g_free(p);
    g_rmdir(tmp);
    g_free(tmp);
    g_free(fix);
    tok_free(tok);
    TEST_EXIT();
}
