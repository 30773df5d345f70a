/* test_samples.c - every qmoe-mksample layout read back through libqmoe.
 *
 * Runs $QMOE_BIN/qmoe-mksample into $QMOE_TMP and checks each sample with
 * the checkpoint and layout modules: index and shards agree, the layout is
 * detected, the config gives the requested counts, every expected expert
 * has its three projections with the right shapes, shard cuts fall inside
 * an expert, the Omni parts outside the thinker (its talker has experts
 * too) are OTHER, and the values are small, centred and deterministic.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "format/checkpoint.h"
#include "format/layout.h"
#include "testhelp.h"
#include "text/tokenizer.h"
#include "base/util.h"

static const char *bin_dir, *tmp_dir;

/* Runs qmoe-mksample with the given arguments (NULL-terminated) writing to
 * a fresh OUT named `name`; returns OUT (caller frees) or NULL on failure. */
static char *mksample(const char *name, ...)
{
    char *out = g_build_filename(tmp_dir, "test_samples", name, NULL);
    char *rm[] = {"rm", "-rf", out, NULL};
    g_spawn_sync(NULL, rm, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL, NULL, NULL);
    GPtrArray *argv = g_ptr_array_new();
    g_ptr_array_add(argv, g_build_filename(bin_dir, "qmoe-mksample", NULL));
    va_list ap;
    va_start(ap, name);
    for (const char *a; (a = va_arg(ap, const char *));)
        g_ptr_array_add(argv, g_strdup(a));
    va_end(ap);
    g_ptr_array_add(argv, g_strdup(out));
    g_ptr_array_add(argv, NULL);
    char *sout = NULL, *serr = NULL;
    int status = 0;
    GError *err = NULL;
    gboolean ok = g_spawn_sync(NULL, (char **)argv->pdata, NULL, 0, NULL, NULL, &sout,
                               &serr, &status, &err) &&
                  g_spawn_check_wait_status(status, &err);
    if (!ok) {
        printf("  qmoe-mksample %s failed: %s %s\n", name, err ? err->message : "", serr);
        g_clear_error(&err);
        g_free(out);
        out = NULL;
    }
    g_strfreev((char **)g_ptr_array_free(argv, FALSE));
    g_free(sout);
    g_free(serr);
    return out;
}

static int shape_is(const st_tensor *t, int ndim, int64_t d0, int64_t d1, int64_t d2)
{
    int64_t want[3] = {d0, d1, d2};
    if (t->ndim != ndim)
        return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != want[i])
            return 0;
    return 1;
}

#define CHECK_SHAPE(t, ...)                                                  \
    do {                                                                     \
        if (!shape_is(t, __VA_ARGS__)) {                                     \
            char b_[64];                                                     \
            printf("  %s has shape %s\n", (t)->name,                         \
                   st_shape_str((t)->shape, (t)->ndim, b_, sizeof b_));      \
            th_failed_now = 1;                                               \
        }                                                                    \
    } while (0)

static float to_f32(st_dtype dt, const uint8_t *p)
{
    uint32_t u;
    float f;
    if (dt == ST_F32) {
        memcpy(&f, p, 4);
        return f;
    }
    uint16_t h = (uint16_t)(p[0] | p[1] << 8);
    if (dt == ST_BF16) {
        u = (uint32_t)h << 16;
        memcpy(&f, &u, 4);
        return f;
    }
    int e = (h >> 10) & 31, m = h & 1023; /* f16 */
    f = e ? ldexpf((float)(m | 1024), e - 25) : ldexpf((float)m, -24);
    return (h & 0x8000) ? -f : f;
}

/* Mean and standard deviation of a tensor's values. */
static void moments(ckpt *ck, const char *name, double *mean, double *sd)
{
    GError *err = NULL;
    const uint8_t *d = NULL;
    const st_tensor *t = ckpt_tensor(ck, name, 1, &d, &err);
    *mean = *sd = NAN;
    if (!t) {
        printf("  %s\n", err->message);
        g_error_free(err);
        return;
    }
    int64_t n = st_numel(t->shape, t->ndim);
    size_t es = st_dtype_bits(t->dtype) / 8;
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = to_f32(t->dtype, d + i * es);
        s += v;
        s2 += v * v;
    }
    *mean = s / n;
    *sd = sqrt(s2 / n - *mean * *mean);
}

typedef struct {
    int heads, kv, hd, vocab, topk;
} dims;

/* The checks every sample must pass; `want` are the requested sizes. */
static void check_sample(const char *dir, const char *lname, const lt_shape *want,
                         const dims *dm)
{
    GError *err = NULL;
    ckpt *ck = ckpt_open(dir, &err);
    CHECK(ck != NULL);
    if (!ck) {
        printf("  %s\n", err->message);
        g_error_free(err);
        return;
    }
    int loaded = ckpt_load_all(ck, &err) == 0;
    CHECK(loaded);
    if (!loaded) {
        printf("  %s\n", err->message);
        g_clear_error(&err);
    }
    const layout *lt = layout_detect(ck, &err);
    CHECK(lt == layout_find(lname));
    if (lt != layout_find(lname)) {
        printf("  %s detected as %s\n", lname, lt ? lt->name : err->message);
        g_clear_error(&err);
        ckpt_close(ck);
        return;
    }
    lt_shape s;
    CHECK(layout_shape(lt, ck, &s, &err) == 0);
    CHECK(s.n_layers == want->n_layers);
    CHECK(s.n_experts == want->n_experts);
    CHECK(s.hidden == want->hidden);
    CHECK(s.inter == want->inter);
    CHECK(s.n_moe_layers == want->n_moe_layers);
    int64_t H = s.hidden, I = s.inter, E = s.n_experts;
    int ds = strcmp(lname, "deepseek_v3") == 0, olmoe = strcmp(lname, "olmoe") == 0;
    int glm = strcmp(lname, "glm4_moe") == 0;

    /* have[(layer * E + expert) * 3 + proj] = 1 + shard */
    int *have = g_new0(int, (size_t)s.n_layers * E * 3);
    int *fused = g_new0(int, (size_t)s.n_layers * 2);
    int unexpected = 0, n_router = 0, n_inorm = 0;
    for (int i = 0; i < ck->n_names; i++) {
        const char *name = ck->names[i];
        const st_tensor *t = ckpt_tensor(ck, name, 0, NULL, &err);
        CHECK(t != NULL);
        if (!t) {
            g_clear_error(&err);
            continue;
        }
        lt_class c;
        layout_classify(lt, name, &c);
        int shard = ckpt_shard_index(ck, name);
        if (c.kind == LT_EXPERT) {
            if (c.layer >= s.n_layers || !s.is_moe[c.layer] || c.expert >= E ||
                c.proj < 0) {
                unexpected++;
                continue;
            }
            have[((size_t)c.layer * E + c.expert) * 3 + c.proj] = 1 + shard;
            if (c.proj == LT_DOWN)
                CHECK_SHAPE(t, 2, H, I, 0);
            else
                CHECK_SHAPE(t, 2, I, H, 0);
        } else if (c.kind == LT_FUSED) {
            if (c.layer >= s.n_layers || !s.is_moe[c.layer]) {
                unexpected++;
                continue;
            }
            fused[c.layer * 2 + (c.proj == LT_DOWN)] = 1 + shard;
            if (c.proj == LT_DOWN)
                CHECK_SHAPE(t, 3, E, H, I);
            else
                CHECK_SHAPE(t, 3, E, 2 * I, H);
        } else if (c.kind == LT_LAYER) {
            int64_t q = (int64_t)dm->heads * dm->hd, kv = (int64_t)dm->kv * dm->hd;
            if (g_str_has_suffix(name, ".q_proj.weight"))
                CHECK_SHAPE(t, 2, q, H, 0);
            else if (g_str_has_suffix(name, ".k_proj.weight") ||
                     g_str_has_suffix(name, ".v_proj.weight"))
                CHECK_SHAPE(t, 2, kv, H, 0);
            else if (g_str_has_suffix(name, ".o_proj.weight"))
                CHECK_SHAPE(t, 2, H, q, 0);
            else if (g_str_has_suffix(name, ".q_norm.weight"))
                CHECK_SHAPE(t, 1, olmoe ? q : dm->hd, 0, 0);
            else if (g_str_has_suffix(name, ".k_norm.weight"))
                CHECK_SHAPE(t, 1, olmoe ? kv : dm->hd, 0, 0);
            else if (g_str_has_suffix(name, "layernorm.weight") &&
                     strstr(name, "self_attn") == NULL)
                CHECK_SHAPE(t, 1, H, 0, 0);
            else if (g_str_has_suffix(name, "mlp.gate.weight") ||
                     g_str_has_suffix(name, "block_sparse_moe.gate.weight")) {
                CHECK_SHAPE(t, 2, E, H, 0);
                n_router++;
            } else if (g_str_has_suffix(name, "e_score_correction_bias")) {
                CHECK_SHAPE(t, 1, E, 0, 0);
                CHECK(t->dtype == ST_F32);
            }
            n_inorm += g_str_has_suffix(name, ".input_layernorm.weight");
        } else if (c.kind == LT_GLOBAL) {
            if (g_str_has_suffix(name, "embed_tokens.weight") ||
                g_str_has_suffix(name, "lm_head.weight"))
                CHECK_SHAPE(t, 2, dm->vocab, H, 0);
            else
                CHECK_SHAPE(t, 1, H, 0, 0);
        }
    }
    CHECK(unexpected == 0);
    CHECK(n_router == s.n_moe_layers);
    CHECK(n_inorm == s.n_layers);

    /* every expected expert complete; some expert (or fused layer) has its
     * tensors in two shards */
    int missing = 0, straddle = 0;
    for (int l = 0; l < s.n_layers; l++) {
        if (!s.is_moe[l])
            continue;
        if (lt->fused) {
            missing += !fused[l * 2] + !fused[l * 2 + 1];
            straddle |= fused[l * 2] && fused[l * 2 + 1] && fused[l * 2] != fused[l * 2 + 1];
            continue;
        }
        for (int e = 0; e < E; e++) {
            int *h = &have[((size_t)l * E + e) * 3];
            missing += !h[0] + !h[1] + !h[2];
            straddle |= h[0] && (h[0] != h[1] || h[0] != h[2]);
        }
    }
    CHECK(missing == 0);
    if (missing)
        printf("  %s: %d expert projections missing\n", lname, missing);
    CHECK(straddle || ck->n_shards == 1);
    if (glm) { /* GLM-4.5: q/k/v biases and per-head q/k norms, as its config says */
        CHECK(ckpt_shard_index(ck, "model.layers.0.self_attn.k_proj.bias") >= 0);
        CHECK(ckpt_shard_index(ck, "model.layers.1.self_attn.q_norm.weight") >= 0);
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(ckpt_text_config(ck), "attention_bias")));
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(ckpt_text_config(ck), "use_qk_norm")));
    }
    if (ds || glm) { /* dense first layer with its own MLP */
        CHECK(!s.is_moe[0]);
        CHECK(ckpt_shard_index(ck, "model.layers.0.mlp.gate_proj.weight") >= 0);
        CHECK(ckpt_shard_index(ck, "model.layers.1.mlp.shared_experts.up_proj.weight") >= 0);
    }
    if (!strcmp(lname, "qwen2_moe"))
        CHECK(ckpt_shard_index(ck, "model.layers.0.mlp.shared_expert_gate.weight") >= 0);

    /* top-k and eos from the config */
    const cJSON *tc = ckpt_text_config(ck);
    int64_t v;
    CHECK(qm_json_int(tc, "num_experts_per_tok", 1, 1 << 20, &v) == 0 && v == dm->topk);
    CHECK(qm_json_int(tc, "vocab_size", 1, 1 << 30, &v) == 0 && v == dm->vocab);
    g_free(have);
    g_free(fused);
    layout_shape_free(&s);
    ckpt_close(ck);
}

static const char *const names[] = {
    "qwen3_omni_moe", "qwen3_moe", "qwen3_moe_fused", "mixtral",
    "qwen2_moe", "olmoe", "deepseek_v3", "glm4_moe",
};

static void test_every_layout_default(void)
{
    for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
        char *out = mksample(names[i], "--layout", names[i], NULL);
        CHECK(out != NULL);
        if (!out)
            continue;
        /* first_k_dense_replace 1 */
        int dense0 = !strcmp(names[i], "deepseek_v3") || !strcmp(names[i], "glm4_moe");
        lt_shape want = {.n_layers = 4, .n_experts = 8, .hidden = 64, .inter = 32,
                         .n_moe_layers = dense0 ? 3 : 4};
        dims dm = {.heads = 4, .kv = 2, .hd = 16, .vocab = 384, .topk = 2};
        check_sample(out, names[i], &want, &dm);
        g_free(out);
    }
}

static void test_every_layout_odd_sizes(void)
{
    for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
        int ds = strcmp(names[i], "deepseek_v3") == 0;
        int dense0 = ds || strcmp(names[i], "glm4_moe") == 0;
        int olmoe = strcmp(names[i], "olmoe") == 0;
        char *out = mksample(names[i], "--layout", names[i], "--layers", "3", "--experts",
                             "5", "--hidden", "48", "--inter", "24", "--heads", "6",
                             "--kv-heads", "3", "--head-dim", olmoe ? "8" : "12",
                             "--topk", "3", "--vocab", "400", "--shards", "4",
                             "--seed", "7", NULL);
        CHECK(out != NULL);
        if (!out)
            continue;
        lt_shape want = {.n_layers = 3, .n_experts = 5, .hidden = 48, .inter = 24,
                         .n_moe_layers = dense0 ? 2 : 3};
        dims dm = {.heads = 6, .kv = ds ? 6 : 3, .hd = olmoe ? 8 : 12, .vocab = 400,
                   .topk = 3};
        if (ds) /* MLA: no q/k/v_proj, o_proj is [H, heads * v_head_dim] */
            dm.kv = 6;
        check_sample(out, names[i], &want, &dm);
        g_free(out);
    }
}

/* The real Qwen3-Omni expert grid, 48 x 128 = 6144 experts, at tiny dims. */
static void test_real_expert_count(void)
{
    char *out = mksample("grid", "--layers", "48", "--experts", "128", "--hidden", "16",
                         "--inter", "8", "--heads", "2", "--kv-heads", "1", "--topk", "8",
                         NULL);
    CHECK(out != NULL);
    if (!out)
        return;
    lt_shape want = {.n_layers = 48, .n_experts = 128, .hidden = 16, .inter = 8,
                     .n_moe_layers = 48};
    dims dm = {.heads = 2, .kv = 1, .hd = 8, .vocab = 384, .topk = 8};
    check_sample(out, "qwen3_omni_moe", &want, &dm);
    GError *err = NULL;
    ckpt *ck = ckpt_open(out, &err);
    const layout *lt = layout_find("qwen3_omni_moe");
    int n = 0;
    for (int i = 0; ck && i < ck->n_names; i++) {
        lt_class c;
        layout_classify(lt, ck->names[i], &c);
        n += c.kind == LT_EXPERT;
    }
    CHECK(n == 6144 * 3);
    ckpt_close(ck);
    g_free(out);
}

/* Omni: everything outside thinker.model / thinker.lm_head is OTHER,
 * including the talker's own MoE experts. */
static void test_omni_other_parts(void)
{
    char *out = mksample("omni", NULL);
    CHECK(out != NULL);
    if (!out)
        return;
    GError *err = NULL;
    ckpt *ck = ckpt_open(out, &err);
    CHECK(ck != NULL);
    const layout *lt = layout_find("qwen3_omni_moe");
    int talker_experts = 0, audio = 0, visual = 0, c2w = 0, bad = 0;
    for (int i = 0; ck && i < ck->n_names; i++) {
        const char *name = ck->names[i];
        lt_class c;
        layout_classify(lt, name, &c);
        int outside = !g_str_has_prefix(name, "thinker.model.") &&
                      !g_str_has_prefix(name, "thinker.lm_head.");
        if (outside != (c.kind == LT_OTHER)) {
            printf("  %s classified as %d\n", name, c.kind);
            bad++;
        }
        talker_experts += g_str_has_prefix(name, "talker.model.layers.") &&
                          strstr(name, ".mlp.experts.") != NULL;
        audio += g_str_has_prefix(name, "thinker.audio_tower.");
        visual += g_str_has_prefix(name, "thinker.visual.");
        c2w += g_str_has_prefix(name, "code2wav.");
    }
    CHECK(bad == 0);
    CHECK(talker_experts >= 6);
    CHECK(audio >= 3 && visual >= 3 && c2w >= 3);
    char *p = layout_other_prefix(lt, "talker.model.layers.0.mlp.experts.1.up_proj.weight");
    CHECK(strcmp(p, "talker") == 0);
    g_free(p);
    p = layout_other_prefix(lt, "thinker.audio_tower.conv2d1.weight");
    CHECK(strcmp(p, "thinker.audio_tower") == 0);
    g_free(p);
    /* M-RoPE sections add up to head_dim / 2 */
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(ckpt_text_config(ck), "rope_scaling");
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(rs, "mrope_section"), *x;
    int sum = 0;
    cJSON_ArrayForEach(x, sec) sum += x->valueint;
    CHECK(sum == 8);
    ckpt_close(ck);
    g_free(out);
}

/* Values: small and centred for weights, about 1 for norms; the same seed
 * gives the same tensor bytes whatever the sharding, another seed not. */
static void test_values(void)
{
    char *a = mksample("seed1", "--layout", "qwen3_moe", NULL);
    char *b = mksample("seed1_one_shard", "--layout", "qwen3_moe", "--shards", "1", NULL);
    char *c = mksample("seed2", "--layout", "qwen3_moe", "--seed", "2", NULL);
    CHECK(a && b && c);
    if (!a || !b || !c)
        goto out;
    GError *err = NULL;
    ckpt *ka = ckpt_open(a, &err), *kb = ckpt_open(b, &err), *kc = ckpt_open(c, &err);
    CHECK(ka && kb && kc);
    if (!ka || !kb || !kc)
        goto close;
    CHECK(kb->n_shards == 1 && g_str_has_suffix(kb->shards[0].path, "/model.safetensors"));
    CHECK(ka->n_shards == 3);
    double m, sd;
    moments(ka, "model.embed_tokens.weight", &m, &sd);
    CHECK(fabs(m) < 0.002 && sd > 0.015 && sd < 0.025);
    moments(ka, "model.layers.2.mlp.experts.3.down_proj.weight", &m, &sd);
    CHECK(fabs(m) < 0.004 && sd > 0.015 && sd < 0.025);
    moments(ka, "model.layers.1.input_layernorm.weight", &m, &sd);
    CHECK(fabs(m - 1.0) < 0.01 && sd < 0.03);
    int same = 1, differ = 0;
    for (int i = 0; i < ka->n_names; i++) {
        const uint8_t *da, *db, *dc;
        const st_tensor *ta = ckpt_tensor(ka, ka->names[i], 1, &da, &err);
        const st_tensor *tb = ckpt_tensor(kb, ka->names[i], 1, &db, &err);
        const st_tensor *tc = ckpt_tensor(kc, ka->names[i], 1, &dc, &err);
        if (!ta || !tb || !tc) {
            same = 0;
            g_clear_error(&err);
            continue;
        }
        size_t n = ta->end - ta->begin;
        same &= n == tb->end - tb->begin && memcmp(da, db, n) == 0;
        differ += memcmp(da, dc, n) != 0;
    }
    CHECK(same);
    CHECK(differ == ka->n_names);
close:
    ckpt_close(ka);
    ckpt_close(kb);
    ckpt_close(kc);
out:
    g_free(a);
    g_free(b);
    g_free(c);
}

static void test_dtypes_and_shard_mb(void)
{
    const char *dts[] = {"f16", "f32"};
    st_dtype want[] = {ST_F16, ST_F32};
    for (int i = 0; i < 2; i++) {
        char *out = mksample(dts[i], "--layout", "mixtral", "--dtype", dts[i], NULL);
        CHECK(out != NULL);
        if (!out)
            continue;
        GError *err = NULL;
        ckpt *ck = ckpt_open(out, &err);
        CHECK(ck && ckpt_load_all(ck, &err) == 0);
        const st_tensor *t = ck ? ckpt_tensor(ck, "model.layers.0.block_sparse_moe.experts.1.w2.weight",
                                              0, NULL, &err) : NULL;
        CHECK(t && t->dtype == want[i]);
        double m, sd;
        if (ck) {
            moments(ck, "model.layers.3.block_sparse_moe.experts.7.w1.weight", &m, &sd);
            CHECK(fabs(m) < 0.004 && sd > 0.015 && sd < 0.025);
        }
        const cJSON *td = ck ? cJSON_GetObjectItemCaseSensitive(ck->config, "torch_dtype") : NULL;
        CHECK(cJSON_IsString(td) &&
              strcmp(td->valuestring, i ? "float32" : "float16") == 0);
        ckpt_close(ck);
        g_free(out);
    }
    /* about 3.3 MB in shards of at most 1 MB (plus at most one tensor) */
    char *out = mksample("mb", "--layout", "qwen2_moe", "--experts", "16", "--hidden", "128",
                         "--inter", "64", "--shard-mb", "1", NULL);
    CHECK(out != NULL);
    if (!out)
        return;
    GError *err = NULL;
    ckpt *ck = ckpt_open(out, &err);
    CHECK(ck && ckpt_load_all(ck, &err) == 0);
    CHECK(ck && ck->n_shards >= 4);
    for (int i = 0; ck && i < ck->n_shards; i++)
        CHECK(ck->shards[i].st->size < 1000000 + 200000);
    ckpt_close(ck);
    g_free(out);
}

/* tokenizer.json: 256 byte tokens, merges, added tokens after them, all
 * inside the config's vocab_size; the config's eos is <|im_end|>. */
static void test_tokenizer(void)
{
    char *out = mksample("tok", "--layout", "qwen3_moe", "--vocab", "300", NULL);
    CHECK(out != NULL);
    if (!out)
        return;
    GError *err = NULL;
    char *p = g_build_filename(out, "tokenizer.json", NULL);
    cJSON *t = qm_json_load(p, &err);
    g_free(p);
    CHECK(t != NULL);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(t, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    int nv = cJSON_GetArraySize(vocab), nm = cJSON_GetArraySize(merges);
    CHECK(nv == 256 + nm && nm == 300 - 256 - 3);
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(vocab, "\xc4\xa0"); /* Ġ = space, 220 as in GPT-2 */
    CHECK(cJSON_IsNumber(sp) && sp->valueint == 220);
    const cJSON *bang = cJSON_GetObjectItemCaseSensitive(vocab, "!");
    CHECK(cJSON_IsNumber(bang) && bang->valueint == 0);
    const cJSON *the = cJSON_GetObjectItemCaseSensitive(vocab, "\xc4\xa0the");
    CHECK(cJSON_IsNumber(the));
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(t, "added_tokens"), *x;
    int im_end = -1, max_id = 0;
    cJSON_ArrayForEach(x, added) {
        int id = cJSON_GetObjectItemCaseSensitive(x, "id")->valueint;
        max_id = MAX(max_id, id);
        if (!strcmp(cJSON_GetObjectItemCaseSensitive(x, "content")->valuestring, "<|im_end|>"))
            im_end = id;
    }
    CHECK(im_end == 256 + nm + 2 && max_id < 300);
    p = g_build_filename(out, "config.json", NULL);
    cJSON *cfg = qm_json_load(p, &err);
    g_free(p);
    int64_t eos = -1;
    CHECK(cfg && qm_json_int(cfg, "eos_token_id", 0, 1 << 30, &eos) == 0 && eos == im_end);
    cJSON_Delete(cfg);
    cJSON_Delete(t);

    /* libqmoe's tokenizer reads it: specials, a merge, byte round trip */
    tok_t *tk = tok_load(out, &err);
    CHECK(tk != NULL);
    if (tk) {
        const char *text = "<|im_start|>user\nthe cat is on the mat\xc3\xa9<|im_end|>";
        GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
        CHECK(tok_encode(tk, text, strlen(text), 0, ids, &err) == 0);
        CHECK(ids->len > 4 && g_array_index(ids, int32_t, 0) == im_end - 1);
        CHECK(g_array_index(ids, int32_t, ids->len - 1) == im_end);
        int the_id = tok_token_id(tk, "\xc4\xa0the"), seen = 0;
        for (guint i = 0; i < ids->len; i++)
            seen += g_array_index(ids, int32_t, i) == the_id;
        CHECK(the_id > 255 && seen == 1); /* " the"; the first "the" has no space */
        size_t n;
        char *back = tok_decode(tk, (int32_t *)ids->data, ids->len, &n);
        CHECK(n == strlen(text) && memcmp(back, text, n) == 0);
        g_free(back);
        g_array_free(ids, TRUE);
        tok_free(tk);
    } else {
        printf("  %s\n", err->message);
        g_clear_error(&err);
    }
    g_free(out);
}

/* Opening is one pass over the names: loading every shard looks each index
 * name up once, in its own shard (the old check scanned every name for
 * every shard: n_shards x n_names lookups, 67x slower on a 6144-file OUT).
 * Each shard's list holds exactly its own names, sorted. */
static void test_open_linear(void)
{
    char *out = mksample("many-shards", "--layers", "4", "--experts", "8", "--shards", "40",
                         NULL);
    CHECK(out != NULL);
    if (!out)
        return;
    GError *err = NULL;
    ckpt *ck = ckpt_open(out, &err);
    CHECK(ck && ck->n_shards >= 30);
    CHECK(ck && ck->name_checks == 0); /* headers are read lazily */
    CHECK(ck && ckpt_load_all(ck, &err) == 0);
    CHECK(ck && ck->name_checks == (uint64_t)ck->n_names);
    int total = 0;
    for (int i = 0; ck && i < ck->n_shards; i++) {
        const ckpt_shard *s = &ck->shards[i];
        total += s->n_names;
        CHECK(s->n_names > 0 && s->names[s->n_names] == NULL);
        CHECK(s->n_names == s->st->n_tensors);
        for (int k = 0; k < s->n_names; k++) {
            CHECK(ckpt_shard_index(ck, s->names[k]) == i);
            CHECK(k == 0 || strcmp(s->names[k - 1], s->names[k]) < 0);
        }
        CHECK(i == 0 || strcmp(ck->shards[i - 1].name, s->name) < 0);
    }
    CHECK(ck && total == ck->n_names);
    /* a second load (mapping) checks nothing again */
    if (ck && ck->n_names) {
        const uint8_t *d = NULL;
        CHECK(ckpt_tensor(ck, ck->names[0], 1, &d, &err) && d);
        CHECK(ck->name_checks == (uint64_t)ck->n_names);
    }
    if (err) {
        printf("  %s\n", err->message);
        g_clear_error(&err);
    }
    ckpt_close(ck);
    g_free(out);
}

int main(void)
{
    bin_dir = getenv("QMOE_BIN");
    tmp_dir = getenv("QMOE_TMP");
    if (!bin_dir || !tmp_dir) {
        printf("FAIL test_samples: QMOE_BIN and QMOE_TMP not set (run via make check)\n");
        return 1;
    }
    RUN(test_every_layout_default);
    RUN(test_every_layout_odd_sizes);
    RUN(test_real_expert_count);
    RUN(test_omni_other_parts);
    RUN(test_values);
    RUN(test_dtypes_and_shard_mb);
    RUN(test_tokenizer);
    RUN(test_open_linear);
    TEST_EXIT();
}
