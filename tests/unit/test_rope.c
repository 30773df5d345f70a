/* test_rope.c - RoPE and YaRN parameters and tables against the numbers
 * of tests/fixtures/fp8yarn/ref/rope_cases.json (written by its
 * make_fixtures.py, see its README.md), and the refusals. */
#include "model/rope.h"
#include "base/util.h"
#include "testhelp.h"

#include <math.h>
#include <string.h>

static char *fix; /* tests/fixtures/fp8yarn */

static double rel(double a, double b)
{
    return fabs(a - b) / MAX(fabs(b), 1e-300);
}

static void test_reference_cases(void)
{
    char *p = g_build_filename(fix, "ref/rope_cases.json", NULL);
    gchar *txt = NULL;
    CHECK(g_file_get_contents(p, &txt, NULL, NULL));
    cJSON *doc = cJSON_Parse(txt ? txt : "");
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(doc, "cases");
    CHECK(cJSON_GetArraySize(cases) == 9);
    int yarn = 0, deepseek_soft = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
        const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(c, "config");
        int dim = cJSON_GetObjectItemCaseSensitive(c, "dim")->valueint;
        GError *err = NULL;
        qm_rope *r = qm_rope_from_config(cfg, name, dim, 0, &err);
        if (!r) {
            printf("  %s: %s\n", name, err->message);
            CHECK(r);
            g_clear_error(&err);
            continue;
        }
        yarn += r->type == QM_ROPE_YARN;
        double att = cJSON_GetObjectItemCaseSensitive(c, "attention_factor")->valuedouble;
        double soft = cJSON_GetObjectItemCaseSensitive(c, "softmax_mult")->valuedouble;
        deepseek_soft += soft != 1.0;
        double w_inv = 0, w_tab = 0;
        const cJSON *inv = cJSON_GetObjectItemCaseSensitive(c, "inv_freq");
        CHECK(cJSON_GetArraySize(inv) == dim / 2);
        for (int i = 0; i < dim / 2 && i < cJSON_GetArraySize(inv); i++)
            w_inv = MAX(w_inv, rel(r->inv_freq[i], cJSON_GetArrayItem(inv, i)->valuedouble));
        const cJSON *pos = cJSON_GetObjectItemCaseSensitive(c, "positions");
        const cJSON *cs = cJSON_GetObjectItemCaseSensitive(c, "cos");
        const cJSON *sn = cJSON_GetObjectItemCaseSensitive(c, "sin");
        float *co = g_new(float, dim / 2), *si = g_new(float, dim / 2);
        for (int k = 0; k < cJSON_GetArraySize(pos); k++) {
            qm_rope_at(r, cJSON_GetArrayItem(pos, k)->valueint, co, si);
            for (int i = 0; i < dim / 2; i++) {
                w_tab = MAX(w_tab, fabs(co[i] - cJSON_GetArrayItem(
                                        cJSON_GetArrayItem(cs, k), i)->valuedouble));
                w_tab = MAX(w_tab, fabs(si[i] - cJSON_GetArrayItem(
                                        cJSON_GetArrayItem(sn, k), i)->valuedouble));
            }
        }
        if (w_inv > 1e-12 || w_tab > 1e-6 || rel(r->attention_factor, att) > 1e-12 ||
            rel(r->softmax_mult, soft) > 1e-12)
            printf("  %s: inv_freq %.3g, tables %.3g, attention_factor %.17g (ref %.17g), "
                   "softmax_mult %.17g (ref %.17g)\n", name, w_inv, w_tab,
                   r->attention_factor, att, r->softmax_mult, soft);
        CHECK(w_inv <= 1e-12);
        CHECK(w_tab <= 1e-6);
        CHECK(rel(r->attention_factor, att) <= 1e-12);
        CHECK(rel(r->softmax_mult, soft) <= 1e-12);
        g_free(co);
        g_free(si);
        qm_rope_free(r);
    }
    CHECK(yarn == 7);
    CHECK(deepseek_soft == 2);  /* dsv3-yarn and dsv3-yarn-mscale */
    cJSON_Delete(doc);
    g_free(txt);
    g_free(p);
}

/* The real DeepSeek-V3 numbers, from the formulas by hand. */
static void test_deepseek_v3_values(void)
{
    cJSON *tc = cJSON_Parse(
        "{\"model_type\":\"deepseek_v3\",\"rope_theta\":10000,\"max_position_embeddings\":163840,"
        "\"rope_scaling\":{\"beta_fast\":32,\"beta_slow\":1,\"factor\":40,\"mscale\":1.0,"
        "\"mscale_all_dim\":1.0,\"original_max_position_embeddings\":4096,\"type\":\"yarn\"}}");
    GError *err = NULL;
    qm_rope *r = qm_rope_from_config(tc, "config.json", 64, 0, &err);
    CHECK(r && !err);
    if (r) {
        double m = 0.1 * log(40.0) + 1;
        CHECK(fabs(r->softmax_mult - m * m) < 1e-15);
        CHECK(r->attention_factor == 1.0);
        /* d(32) = 64 ln(4096 / 64 pi) / (2 ln 1e4) = 10.5 -> 10; d(1) = 22.5 -> 23 */
        CHECK(r->low == 10 && r->high == 23);
        CHECK(r->inv_freq[10] == 1.0 / pow(1e4, 20.0 / 64));
        CHECK(fabs(r->inv_freq[31] - 1.0 / pow(1e4, 62.0 / 64) / 40) < 1e-20);
        double ramp = (16 - 10) / 13.0;
        CHECK(rel(r->inv_freq[16], pow(1e4, -32.0 / 64) * ((1 - ramp) + ramp / 40)) < 1e-14);
        float tc0[32], ts0[32];
        qm_rope_tables(r, 1, tc0, ts0);
        CHECK(tc0[0] == 1.0f && ts0[31] == 0.0f);
    }
    qm_rope_free(r);
    /* the same for Qwen3 (not a deepseek model): no softmax multiplier */
    cJSON_ReplaceItemInObjectCaseSensitive(tc, "model_type", cJSON_CreateString("qwen3_moe"));
    r = qm_rope_from_config(tc, "config.json", 64, 0, &err);
    CHECK(r && r->softmax_mult == 1.0 && r->attention_factor == 1.0);
    qm_rope_free(r);
    cJSON_Delete(tc);
}

static void test_tables_match_at(void)
{
    cJSON *tc = cJSON_Parse("{\"rope_theta\":1e6,\"max_position_embeddings\":131072,"
                            "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4,"
                            "\"original_max_position_embeddings\":32768}}");
    qm_rope *r = qm_rope_from_config(tc, "c", 32, 0, NULL);
    CHECK(r && fabs(r->attention_factor - (0.1 * log(4.0) + 1)) < 1e-15);
    if (r) {
        float tcos[40 * 16], tsin[40 * 16], c1[16], s1[16];
        qm_rope_tables(r, 40, tcos, tsin);
        int same = 1;
        for (int p = 0; p < 40; p++) {
            qm_rope_at(r, p, c1, s1);
            same &= !memcmp(c1, tcos + p * 16, sizeof c1) && !memcmp(s1, tsin + p * 16, sizeof s1);
        }
        CHECK(same);
        /* cos^2 + sin^2 = attention_factor^2 */
        CHECK(fabs(tcos[39 * 16 + 5] * tcos[39 * 16 + 5] + tsin[39 * 16 + 5] * tsin[39 * 16 + 5] -
                   r->attention_factor * r->attention_factor) < 1e-6);
    }
    qm_rope_free(r);
    cJSON_Delete(tc);
}

static void test_refusals(void)
{
    static const struct { const char *json, *msg; } bad[] = {
        {"{\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":2}}",
         "rope_scaling.rope_type 'linear' is not supported"},
        {"{\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":2}}",
         "rope_scaling.type 'dynamic' is not supported"},
        {"{\"rope_parameters\":{\"rope_type\":\"llama3\",\"rope_theta\":5e5}}",
         "rope_parameters.rope_type 'llama3' is not supported"},
        {"{\"rope_scaling\":{\"rope_type\":\"longrope\"}}", "'longrope' is not supported"},
        {"{\"rope_scaling\":{\"rope_type\":3}}", "rope_scaling.rope_type is not a string"},
        {"{\"rope_scaling\":\"yarn\"}", "rope_scaling is not an object"},
        {"{\"max_position_embeddings\":4096,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":0.5}}",
         "rope_scaling.factor 0.5 is below 1"},
        {"{\"max_position_embeddings\":4096,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":\"4\"}}",
         "rope_scaling.factor is not a number"},
        {"{\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}",
         "has no original_max_position_embeddings and the config no max_position_embeddings"},
        {"{\"max_position_embeddings\":4096,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4,"
         "\"original_max_position_embeddings\":-1}}",
         "original_max_position_embeddings -1 is not positive"},
        {"{\"max_position_embeddings\":4096,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4,"
         "\"beta_fast\":1,\"beta_slow\":32}}", "need beta_fast > beta_slow > 0"},
        {"{\"max_position_embeddings\":4096,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4,"
         "\"mscale\":-1}}", "rope_scaling.mscale -1 is negative"},
        {"{\"max_position_embeddings\":4096,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4,"
         "\"attention_factor\":0}}", "attention_factor 0 is not positive"},
        {"{\"max_position_embeddings\":4096,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4,"
         "\"truncate\":\"no\"}}", "rope_scaling.truncate is not true or false"},
        {"{\"partial_rotary_factor\":0.5}", "partial_rotary_factor 0.5 is not supported"},
        {"{\"rope_theta\":1e4,\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":1e6}}",
         "rope_theta 10000 and rope_parameters.rope_theta 1e+06 disagree"},
        {"{\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4},"
         "\"rope_parameters\":{\"rope_type\":\"default\"}}",
         "rope_scaling says 'yarn' and rope_parameters 'default'"},
        {"{\"rope_parameters\":{\"full_attention\":{\"rope_type\":\"default\"}}}",
         "per-layer-type RoPE parameters are not supported"},
        {"{\"rope_theta\":-5}", "rope_theta -5 is not above 1"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        cJSON *tc = cJSON_Parse(bad[i].json);
        CHECK(tc);
        GError *err = NULL;
        qm_rope *r = qm_rope_from_config(tc, "cfg.json", 16, 0, &err);
        CHECK(!r);
        CHECK_CONTAINS(err ? err->message : NULL, bad[i].msg);
        CHECK_CONTAINS(err ? err->message : NULL, "'cfg.json'");
        g_clear_error(&err);
        qm_rope_free(r);
        cJSON_Delete(tc);
    }
    GError *err = NULL;
    cJSON *tc = cJSON_Parse("{}");
    CHECK(!qm_rope_from_config(tc, "cfg.json", 7, 0, &err));
    CHECK_CONTAINS(err ? err->message : NULL, "7 rotated dims");
    g_clear_error(&err);
    /* no key at all: default RoPE with theta 10000; "mrope" is default */
    qm_rope *r = qm_rope_from_config(tc, "cfg.json", 8, 0, &err);
    CHECK(r && r->type == QM_ROPE_DEFAULT && r->theta == 10000 && r->inv_freq[1] == 0.1);
    qm_rope_free(r);
    cJSON_Delete(tc);
    tc = cJSON_Parse("{\"rope_scaling\":{\"type\":\"mrope\",\"mrope_section\":[2,1,1]}}");
    r = qm_rope_from_config(tc, "cfg.json", 8, 0, &err);
    CHECK(r && r->type == QM_ROPE_DEFAULT && r->attention_factor == 1);
    qm_rope_free(r);
    cJSON_Delete(tc);
    /* no factor: max_position_embeddings / original */
    tc = cJSON_Parse("{\"max_position_embeddings\":8192,\"rope_scaling\":{\"rope_type\":\"yarn\","
                     "\"original_max_position_embeddings\":2048}}");
    r = qm_rope_from_config(tc, "cfg.json", 8, 0, &err);
    CHECK(r && r->factor == 4);
    qm_rope_free(r);
    cJSON_Delete(tc);
}

/* GLM-4.5's partial_rotary_factor: with `partial` the rotated dims are
 * int(head_dim * factor) and the frequencies are theirs (theta^(-2i/dim)
 * with dim 64 of a 128-wide head), from the config or rope_parameters;
 * without `partial` the same config is refused, and so is a factor
 * outside (0, 1] or one leaving an odd number of dims. */
static void test_partial_rotary(void)
{
    GError *err = NULL;
    cJSON *tc = cJSON_Parse("{\"partial_rotary_factor\":0.5,\"rope_theta\":10000}");
    qm_rope *r = qm_rope_from_config(tc, "cfg.json", 128, 1, &err);
    CHECK(r && r->dim == 64);
    CHECK(r && fabs(r->inv_freq[1] - pow(10000.0, -2.0 / 64)) < 1e-15);
    CHECK(r && fabs(r->inv_freq[31] - pow(10000.0, -62.0 / 64)) < 1e-15);
    qm_rope_free(r);
    CHECK(!qm_rope_from_config(tc, "cfg.json", 128, 0, &err));
    CHECK_CONTAINS(err ? err->message : NULL, "partial_rotary_factor 0.5 is not supported");
    g_clear_error(&err);
    cJSON_Delete(tc);
    tc = cJSON_Parse("{\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":1e6,"
                     "\"partial_rotary_factor\":0.25}}");
    r = qm_rope_from_config(tc, "cfg.json", 16, 1, &err);
    CHECK(r && r->dim == 4 && r->theta == 1e6);
    qm_rope_free(r);
    cJSON_Delete(tc);
    static const struct { const char *json, *msg; } bad[] = {
        {"{\"partial_rotary_factor\":0}", "partial_rotary_factor 0 is not in (0, 1]"},
        {"{\"partial_rotary_factor\":1.5}", "partial_rotary_factor 1.5 is not in (0, 1]"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        tc = cJSON_Parse(bad[i].json);
        r = qm_rope_from_config(tc, "cfg.json", 14, 1, &err);
        CHECK(!r);
        CHECK_CONTAINS(err ? err->message : NULL, bad[i].msg);
        g_clear_error(&err);
        qm_rope_free(r);
        cJSON_Delete(tc);
    }
    tc = cJSON_Parse("{\"partial_rotary_factor\":0.5}");
    CHECK(!qm_rope_from_config(tc, "cfg.json", 14, 1, &err)); /* 7 dims: odd */
    CHECK_CONTAINS(err ? err->message : NULL, "7 rotated dims");
    g_clear_error(&err);
    cJSON_Delete(tc);
}

int main(void)
{
    const char *root = g_getenv("QMOE_ROOT");
    fix = g_build_filename(root ? root : ".", "tests/fixtures/fp8yarn", NULL);
    RUN(test_reference_cases);
    RUN(test_deepseek_v3_values);
    RUN(test_tables_match_at);
    RUN(test_refusals);
    RUN(test_partial_rotary);
    g_free(fix);
    TEST_EXIT();
}
