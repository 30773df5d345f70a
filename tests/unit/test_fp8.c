/* test_fp8.c - E4M3 decoding, quantization_config, scale checks and the FP8
 * row kernels against the numbers of tests/fixtures/fp8yarn (written by its
 * make_fixtures.py from the format's definition, see its README.md). */
#include "format/fp8.h"
#include "base/util.h"
#include "testhelp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static char *fix; /* tests/fixtures/fp8yarn */

static char *fixture_path(const char *rel)
{
    return g_build_filename(fix, rel, NULL);
}

static void test_e4m3_all_codes(void)
{
    char *p = fixture_path("ref/e4m3.f32");
    gchar *buf = NULL;
    gsize len = 0;
    CHECK(g_file_get_contents(p, &buf, &len, NULL));
    CHECK(len == 256 * 4);
    int same = 0;
    for (int c = 0; buf && len == 1024 && c < 256; c++) {
        float want, got = qm_e4m3((uint8_t)c);
        memcpy(&want, buf + 4 * c, 4);
        if (isnan(want) ? isnan(got) : memcmp(&want, &got, 4) == 0)
            same++;
        else
            printf("  code 0x%02x: %.9g, reference %.9g\n", c, got, want);
    }
    CHECK(same == 256);
    g_free(buf);
    g_free(p);
}

static void test_e4m3_edges(void)
{
    CHECK(qm_e4m3(0x00) == 0.0f && !signbit(qm_e4m3(0x00)));
    CHECK(qm_e4m3(0x80) == 0.0f && signbit(qm_e4m3(0x80)));
    CHECK(qm_e4m3(0x01) == ldexpf(1, -9));     /* smallest subnormal */
    CHECK(qm_e4m3(0x07) == ldexpf(7, -9));     /* largest subnormal */
    CHECK(qm_e4m3(0x08) == ldexpf(1, -6));     /* smallest normal */
    CHECK(qm_e4m3(0x38) == 1.0f);
    CHECK(qm_e4m3(0x3F) == 1.875f);
    CHECK(qm_e4m3(0x7E) == 448.0f);            /* largest finite */
    CHECK(qm_e4m3(0xFE) == -448.0f);
    CHECK(qm_e4m3(0x78) == 256.0f);            /* exponent 15 is finite but for m = 7 */
    CHECK(isnan(qm_e4m3(0x7F)) && isnan(qm_e4m3(0xFF)));
    int nans = 0, infs = 0;
    for (int c = 0; c < 256; c++) {
        nans += isnan(qm_e4m3((uint8_t)c)) != 0;
        infs += isinf(qm_e4m3((uint8_t)c)) != 0;
    }
    CHECK(nans == 2 && infs == 0);
    CHECK(qm_e4m3_table() == qm_e4m3_table());
}

/* Parses `json` as a config and reads its quantization_config. */
static int read_cfg(const char *json, qm_fp8_config **c, GError **err)
{
    cJSON *j = cJSON_Parse(json);
    int rc = qm_fp8_config_read(j, "cfg.json", c, err);
    cJSON_Delete(j);
    return rc;
}

static void test_config_fixtures(void)
{
    const char *dirs[] = {"dsv3-fp8/hf/config.json", "qwen3moe-fp8/hf/config.json"};
    for (int i = 0; i < 2; i++) {
        char *p = fixture_path(dirs[i]);
        gchar *txt = NULL;
        CHECK(g_file_get_contents(p, &txt, NULL, NULL));
        qm_fp8_config *c = NULL;
        GError *err = NULL;
        CHECK(read_cfg(txt ? txt : "{}", &c, &err) == 1 && c);
        if (c && i == 0) {
            CHECK(c->block_rows == 16 && c->block_cols == 16);
            CHECK(c->not_convert && c->not_convert[0] == NULL);
        }
        if (c && i == 1) {
            CHECK(c->block_rows == 24 && c->block_cols == 40);
            CHECK(g_strv_length(c->not_convert) == 5);
            CHECK(!strcmp(c->not_convert[0], "lm_head"));
        }
        qm_fp8_config_free(c);
        g_free(txt);
        g_free(p);
    }
}

static void test_config_refusals(void)
{
    static const struct { const char *json, *msg; } bad[] = {
        {"{\"quantization_config\":{\"quant_method\":\"fp8\",\"fmt\":\"e5m2\"}}",
         "quantization_config.fmt 'e5m2' is not supported"},
        {"{\"quantization_config\":{\"quant_method\":\"awq\"}}",
         "quantization_config.quant_method 'awq' is not supported"},
        {"{\"quantization_config\":{\"fmt\":\"e4m3\"}}", "has no quant_method"},
        {"{\"quantization_config\":{\"quant_method\":\"fp8\",\"activation_scheme\":\"static\"}}",
         "activation_scheme 'static' is not supported"},
        {"{\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[128]}}",
         "weight_block_size is not two integers"},
        {"{\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[0,128]}}",
         "weight_block_size is not two integers"},
        {"{\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[128,1.5]}}",
         "weight_block_size is not two integers"},
        {"{\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[128,1e9]}}",
         "weight_block_size is not two integers"},
        {"{\"quantization_config\":{\"quant_method\":\"fp8\",\"modules_to_not_convert\":[\"a\",1]}}",
         "modules_to_not_convert[1] is not a non-empty string"},
        {"{\"quantization_config\":{\"quant_method\":\"fp8\",\"modules_to_not_convert\":\"lm_head\"}}",
         "modules_to_not_convert is not an array"},
        {"{\"quantization_config\":[1]}", "quantization_config is not an object"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        qm_fp8_config *c = (qm_fp8_config *)1;
        GError *err = NULL;
        CHECK(read_cfg(bad[i].json, &c, &err) == -1 && c == NULL);
        CHECK_CONTAINS(err ? err->message : NULL, bad[i].msg);
        CHECK_CONTAINS(err ? err->message : NULL, "'cfg.json'");
        g_clear_error(&err);
    }
    /* absent: not quantised; defaults: e4m3, dynamic, 128 x 128 */
    qm_fp8_config *c = NULL;
    CHECK(read_cfg("{\"quantization_config\":null}", &c, NULL) == 0 && !c);
    CHECK(read_cfg("{}", &c, NULL) == 0 && !c);
    CHECK(read_cfg("{\"quantization_config\":{\"quant_method\":\"fp8\"}}", &c, NULL) == 1);
    CHECK(c && c->block_rows == 128 && c->block_cols == 128 && c->not_convert[0] == NULL);
    qm_fp8_config_free(c);
}

static void test_excluded(void)
{
    char *mods[] = {"lm_head", "model.layers.0.mlp.gate", "0.self_attn.o_proj", NULL};
    qm_fp8_config c = {.block_rows = 128, .block_cols = 128, .not_convert = mods};
    CHECK(qm_fp8_excluded(&c, "lm_head.weight"));
    CHECK(qm_fp8_excluded(&c, "model.layers.0.mlp.gate.weight"));
    CHECK(qm_fp8_excluded(&c, "model.layers.0.mlp.gate.weight_scale_inv"));
    CHECK(qm_fp8_excluded(&c, "model.layers.0.self_attn.o_proj.weight"));
    CHECK(!qm_fp8_excluded(&c, "model.layers.0.mlp.gate_proj.weight"));
    CHECK(!qm_fp8_excluded(&c, "model.layers.10.mlp.gate.weight"));
    CHECK(!qm_fp8_excluded(&c, "model.layers.10.self_attn.o_proj.weight"));
    CHECK(!qm_fp8_excluded(&c, "model.layers.0.mlp.experts.0.gate_proj.weight"));
    CHECK(!qm_fp8_excluded(NULL, "lm_head.weight"));
}

static st_tensor tensor(const char *name, st_dtype dt, int ndim, int64_t r, int64_t c)
{
    st_tensor t = {.name = (char *)name, .dtype = dt, .ndim = ndim};
    t.shape[0] = r;
    t.shape[1] = c;
    t.shape[2] = 2;
    return t;
}

static void test_check_weight(void)
{
    char *mods[] = {"mlp.gate", NULL};
    qm_fp8_config c = {.block_rows = 16, .block_cols = 16, .not_convert = mods};
    const char *wn = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight";
    const char *sn = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv";
    st_tensor w = tensor(wn, ST_F8_E4M3, 2, 40, 64);
    st_tensor ok32 = tensor(sn, ST_F32, 2, 3, 4), ok16 = tensor(sn, ST_BF16, 2, 3, 4);
    GError *err = NULL;
    CHECK(qm_fp8_check_weight(&c, "a.safetensors", &w, &ok32, &err) == 0 && !err);
    CHECK(qm_fp8_check_weight(&c, "a.safetensors", &w, &ok16, &err) == 0 && !err);
    int64_t gr, gc;
    qm_fp8_grid(&c, 576, 7168, &gr, &gc);
    CHECK(gr == 36 && gc == 448);
    c.block_rows = c.block_cols = 128;
    qm_fp8_grid(&c, 576, 7168, &gr, &gc);
    CHECK(gr == 5 && gc == 56);  /* DeepSeek-V3's kv_a_proj_with_mqa: a partial row block */
    c.block_rows = c.block_cols = 16;

    static const struct { st_tensor s; int null_scale; const char *msg; } bad[] = {
        {{0}, 1, "FP8 weight 'model.layers.0.self_attn.kv_a_proj_with_mqa.weight' has no "
                 "'model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv'"},
        {{.dtype = ST_F32, .ndim = 2, .shape = {2, 4}}, 0,
         "has shape [2, 4], but weight [40, 64] in 16x16 blocks needs [3, 4]"},
        {{.dtype = ST_F32, .ndim = 2, .shape = {4, 3}}, 0, "has shape [4, 3]"},
        {{.dtype = ST_F32, .ndim = 1, .shape = {12}}, 0, "has shape [12]"},
        {{.dtype = ST_F16, .ndim = 2, .shape = {3, 4}}, 0, "has dtype F16 (F32 or BF16 expected)"},
        {{.dtype = ST_F8_E4M3, .ndim = 2, .shape = {3, 4}}, 0, "has dtype F8_E4M3"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        st_tensor s = bad[i].s;
        s.name = (char *)sn;
        CHECK(qm_fp8_check_weight(&c, "a.safetensors", &w, bad[i].null_scale ? NULL : &s,
                                  &err) == -1);
        CHECK_CONTAINS(err ? err->message : NULL, bad[i].msg);
        CHECK_CONTAINS(err ? err->message : NULL, "'a.safetensors'");
        if (!bad[i].null_scale)
            CHECK_CONTAINS(err ? err->message : NULL, sn);
        g_clear_error(&err);
    }
    st_tensor w3 = tensor(wn, ST_F8_E4M3, 3, 40, 64);
    CHECK(qm_fp8_check_weight(&c, "a.safetensors", &w3, &ok32, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "has shape [40, 64, 2] (block-scaled FP8 weights are 2-D)");
    g_clear_error(&err);
    st_tensor wg = tensor("model.layers.1.mlp.gate.weight", ST_F8_E4M3, 2, 16, 64);
    st_tensor sg = tensor("model.layers.1.mlp.gate.weight_scale_inv", ST_F32, 2, 1, 4);
    CHECK(qm_fp8_check_weight(&c, "a.safetensors", &wg, &sg, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL,
                   "'model.layers.1.mlp.gate.weight' is F8_E4M3 but its module is in "
                   "quantization_config.modules_to_not_convert");
    g_clear_error(&err);
}

static ckpt *open_fixture(const char *rel)
{
    char *p = fixture_path(rel);
    GError *err = NULL;
    ckpt *ck = ckpt_open(p, &err);
    if (!ck)
        printf("  %s\n", err->message);
    g_clear_error(&err);
    g_free(p);
    return ck;
}

/* Collects qm_fp8_check_ckpt's problems as "file|tensor|message". */
static void collect(void *user, const char *file, const char *tensor, const char *message)
{
    g_ptr_array_add(user, g_strdup_printf("%s|%s|%s", file, tensor, message));
}

static void test_check_ckpt(void)
{
    static const struct { const char *dir; int fp8; } good[] = {
        {"dsv3-fp8/hf", 177}, {"qwen3moe-fp8/hf", 155}, {"dsv3-yarn/hf", 0},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(good); i++) {
        ckpt *ck = open_fixture(good[i].dir);
        CHECK(ck);
        if (!ck)
            continue;
        GError *err = NULL;
        int n = -1;
        CHECK(qm_fp8_check_ckpt(ck, NULL, NULL, &n, &err) == 0);
        if (err)
            printf("  %s\n", err->message);
        g_clear_error(&err);
        CHECK(n == good[i].fp8);
        ckpt_close(ck);
    }

    /* the same files under a config that says otherwise */
    ckpt *ck = open_fixture("dsv3-fp8/hf");
    if (!ck)
        return;
    cJSON *q = cJSON_GetObjectItemCaseSensitive(ck->config, "quantization_config");
    cJSON_ReplaceItemInObjectCaseSensitive(q, "weight_block_size", cJSON_Parse("[32, 32]"));
    GError *err = NULL;
    GPtrArray *probs = g_ptr_array_new_with_free_func(g_free);
    CHECK(qm_fp8_check_ckpt(ck, collect, probs, NULL, &err) == 1 && !err);
    /* every FP8 weight here spans more than one 16-block in some direction,
     * so every [ceil(r/32), ceil(c/32)] grid differs from the stored one */
    CHECK(probs->len == 177);
    CHECK_CONTAINS(probs->len ? (char *)probs->pdata[0] : NULL,
                   "model-00001-of-00004.safetensors|model.layers.0.mlp.down_proj.weight|"
                   "scale 'model.layers.0.mlp.down_proj.weight_scale_inv' has shape [4, 6], "
                   "but weight [64, 96] in 32x32 blocks needs [2, 3]");
    g_ptr_array_set_size(probs, 0);
    CHECK(qm_fp8_check_ckpt(ck, NULL, NULL, NULL, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "model-00001-of-00004.safetensors': scale '");
    g_clear_error(&err);

    cJSON_ReplaceItemInObjectCaseSensitive(q, "weight_block_size", cJSON_Parse("[16, 16]"));
    cJSON_AddItemToObject(q, "modules_to_not_convert", cJSON_Parse("[\"q_a_proj\"]"));
    CHECK(qm_fp8_check_ckpt(ck, collect, probs, NULL, &err) == 1);
    CHECK(probs->len == 4);  /* layers 0-2 and the MTP block */
    CHECK_CONTAINS(probs->len ? (char *)probs->pdata[0] : NULL,
                   "'model.layers.0.self_attn.q_a_proj.weight' is F8_E4M3 but its module");
    g_ptr_array_free(probs, TRUE);

    cJSON_DeleteItemFromObjectCaseSensitive(ck->config, "quantization_config");
    CHECK(qm_fp8_check_ckpt(ck, NULL, NULL, NULL, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL,
                   "is F8_E4M3 but config.json has no fp8 quantization_config");
    g_clear_error(&err);
    cJSON_AddItemToObject(ck->config, "quantization_config",
                          cJSON_Parse("{\"quant_method\":\"fp8\",\"fmt\":\"e5m2\"}"));
    CHECK(qm_fp8_check_ckpt(ck, NULL, NULL, NULL, &err) == -1);
    CHECK_CONTAINS(err ? err->message : NULL, "config.json': quantization_config.fmt 'e5m2'");
    g_clear_error(&err);
    ckpt_close(ck);
}

/* Every row of the fixtures' FP8 weights in ref/dequant.safetensors, through
 * qm_fp8_row (to the float32 rounding of code x scale) and qm_fp8_dot. */
static void test_dequant_rows(void)
{
    char *p = fixture_path("ref/dequant.safetensors");
    GError *err = NULL;
    st_file *ref = st_open(p, &err);
    CHECK(ref);
    g_free(p);
    g_clear_error(&err);
    if (!ref)
        return;
    CHECK(ref->n_tensors == 4);
    for (int i = 0; i < ref->n_tensors; i++) {
        const st_tensor *rt = &ref->tensors[i];
        const float *want = (const float *)st_data(ref, rt);
        char **parts = g_strsplit(rt->name, ":", 2);
        char *dir = g_strconcat(parts[0], "/hf", NULL);
        ckpt *ck = open_fixture(dir);
        CHECK(ck);
        qm_fp8_config *c = NULL;
        const uint8_t *codes = NULL, *scale = NULL;
        char *sn = g_strconcat(parts[1], "_scale_inv", NULL);
        const st_tensor *w = ck ? ckpt_tensor(ck, parts[1], 1, &codes, &err) : NULL;
        const st_tensor *s = ck ? ckpt_tensor(ck, sn, 1, &scale, &err) : NULL;
        CHECK(w && s && w->dtype == ST_F8_E4M3);
        CHECK(ck && qm_fp8_config_read(ck->config, "config.json", &c, &err) == 1);
        if (w && s && c && qm_fp8_check_weight(c, "x", w, s, &err) == 0) {
            CHECK(w->shape[0] == rt->shape[0] && w->shape[1] == rt->shape[1]);
            qm_fp8_mat m;
            qm_fp8_mat_init(&m, c, w, codes, s, scale);
            int64_t R = m.rows, C = m.cols;
            float *row = g_new(float, C), *x = g_new(float, C);
            for (int64_t k = 0; k < C; k++)
                x[k] = (float)sin(0.37 * (double)k + 0.1 * (double)i);
            double worst = 0, worst_dot = 0;
            for (int64_t r = 0; r < R; r++) {
                qm_fp8_row(&m, r, row);
                double dot = 0, mag = 0;
                for (int64_t k = 0; k < C; k++) {
                    double wv = want[r * C + k];
                    worst = MAX(worst, fabs(row[k] - wv) / MAX(fabs(wv), 1e-30));
                    dot += wv * x[k];
                    mag += fabs(wv * x[k]);
                }
                worst_dot = MAX(worst_dot, fabs(qm_fp8_dot(&m, r, x) - dot) / mag);
            }
            if (worst > 1.2e-7 || worst_dot > 1e-6)
                printf("  %s: row rel %.3g, dot rel %.3g\n", rt->name, worst, worst_dot);
            CHECK(worst <= 1.2e-7);  /* one float32 rounding of the product */
            CHECK(worst_dot <= 1e-6);
            g_free(row);
            g_free(x);
        }
        if (err)
            printf("  %s\n", err->message);
        g_clear_error(&err);
        qm_fp8_config_free(c);
        ckpt_close(ck);
        g_free(sn);
        g_free(dir);
        g_strfreev(parts);
    }
    st_close(ref);
}

/* A hand-made 3 x 5 matrix in 2 x 2 blocks, bf16 scales: each element must
 * take its own block's scale, the edges partial. */
static void test_partial_blocks(void)
{
    uint8_t codes[15];
    for (int k = 0; k < 15; k++)
        codes[k] = 0x38;  /* 1.0 */
    codes[14] = 0xBC;     /* -1.5 */
    /* grid 2 x 3: scales 1, 2, 4 / 8, 16, 0.5 as bf16 */
    const float sv[6] = {1, 2, 4, 8, 16, 0.5f};
    uint8_t scale[12];
    for (int k = 0; k < 6; k++) {
        uint32_t b;
        memcpy(&b, &sv[k], 4);
        scale[2 * k] = (uint8_t)(b >> 16);
        scale[2 * k + 1] = (uint8_t)(b >> 24);
    }
    qm_fp8_mat m = {.codes = codes, .scale = scale, .scale_dtype = ST_BF16, .rows = 3,
                    .cols = 5, .block_rows = 2, .block_cols = 2};
    const float want[15] = {1, 1, 2, 2, 4, 1, 1, 2, 2, 4, 8, 8, 16, 16, -0.75f};
    float row[5], x[5] = {1, 10, 100, 1000, 10000};
    int ok = 1;
    for (int r = 0; r < 3; r++) {
        qm_fp8_row(&m, r, row);
        float dot = 0;
        for (int k = 0; k < 5; k++) {
            ok &= row[k] == want[r * 5 + k];
            dot += want[r * 5 + k] * x[k];
        }
        ok &= qm_fp8_dot(&m, r, x) == dot;
    }
    CHECK(ok);
    CHECK(qm_fp8_scale(&m, 1, 2) == 0.5f);
}

/* The kernels decode sixteen codes at a time without the table: every
 * code, in every lane position (16 rows, each shifted by one), must give
 * the table's value times the scale bit for bit, before and in the tail. */
static void test_row_all_codes(void)
{
    enum { R = 16, C = 259 };
    static uint8_t codes[R * C];
    for (int r = 0; r < R; r++)
        for (int k = 0; k < C; k++)
            codes[r * C + k] = (uint8_t)(k + r);
    float sc[R];
    for (int r = 0; r < R; r++)
        sc[r] = ldexpf(1.0f + (float)r / 16, r - 8);
    qm_fp8_mat m = {.codes = codes, .scale = (const uint8_t *)sc, .scale_dtype = ST_F32,
                    .rows = R, .cols = C, .block_rows = 1, .block_cols = C};
    float row[C];
    int same = 0;
    for (int r = 0; r < R; r++) {
        qm_fp8_row(&m, r, row);
        for (int k = 0; k < C; k++) {
            float want = qm_e4m3(codes[r * C + k]) * sc[r];
            same += isnan(want) ? isnan(row[k]) != 0 : memcmp(&want, &row[k], 4) == 0;
        }
    }
    CHECK(same == R * C);
    /* a dot product over a NaN code is NaN, as the dequantised row's */
    float x[C];
    for (int k = 0; k < C; k++)
        x[k] = 1;
    CHECK(isnan(qm_fp8_dot(&m, 0, x)));
    m.cols = 127;  /* codes 0..126 of row 0: all finite */
    double want = 0;
    for (int k = 0; k < 127; k++)
        want += (double)qm_e4m3((uint8_t)k) * sc[0];
    CHECK(fabs(qm_fp8_dot(&m, 0, x) - want) <= 1e-6 * fabs(want));
}

int main(void)
{
    const char *root = g_getenv("QMOE_ROOT");
    fix = g_build_filename(root ? root : ".", "tests/fixtures/fp8yarn", NULL);
    RUN(test_e4m3_all_codes);
    RUN(test_e4m3_edges);
    RUN(test_config_fixtures);
    RUN(test_config_refusals);
    RUN(test_excluded);
    RUN(test_check_weight);
    RUN(test_check_ckpt);
    RUN(test_dequant_rows);
    RUN(test_partial_blocks);
    RUN(test_row_all_codes);
    g_free(fix);
    TEST_EXIT();
}
