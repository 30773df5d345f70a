/* layout.c - the family table and tensor-name classification */
#include "format/layout.h"
#include "base/util.h"

#include <stdlib.h>
#include <string.h>

static const layout qwen3_omni_moe = {
    .name = "qwen3_omni_moe", .model_types = "qwen3_omni_moe",
    .text_config = "thinker_config.text_config",
    .root = "thinker.model.", .lm_head = "thinker.lm_head.",
    .experts = "mlp.experts.", .proj = {"gate_proj", "up_proj", "down_proj"},
    .count_keys = "num_experts", .inter_key = "moe_intermediate_size",
    .norm_topk_default = 1,
    .forward = 1, .router = "mlp.gate", .qk_norm = LT_QK_HEAD,
};
static const layout qwen3_moe = {
    .name = "qwen3_moe", .model_types = "qwen3_moe", .text_config = "",
    .root = "model.", .lm_head = "lm_head.",
    .experts = "mlp.experts.", .proj = {"gate_proj", "up_proj", "down_proj"},
    .count_keys = "num_experts", .inter_key = "moe_intermediate_size",
    .forward = 1, .router = "mlp.gate", .qk_norm = LT_QK_HEAD,
};
/* Experts stacked in one parameter per layer (transformers v5 style):
 * gate_up_proj [E, 2I, H] (gate the first I rows, up the next I) and
 * down_proj [E, H, I]; computed as qwen3_moe (expert_store.c reads a
 * stack's rows, or an extraction's per-expert slices). */
static const layout qwen3_moe_fused = {
    .name = "qwen3_moe_fused", .model_types = "qwen3_moe", .text_config = "",
    .root = "model.", .lm_head = "lm_head.",
    .experts = "mlp.experts.", .proj = {"gate_up_proj", "gate_up_proj", "down_proj"},
    .count_keys = "num_experts", .inter_key = "moe_intermediate_size",
    .fused = 1,
    .forward = 1, .router = "mlp.gate", .qk_norm = LT_QK_HEAD,
};
static const layout mixtral = {
    .name = "mixtral", .model_types = "mixtral", .text_config = "",
    .root = "model.", .lm_head = "lm_head.",
    .experts = "block_sparse_moe.experts.", .proj = {"w1", "w3", "w2"},
    .count_keys = "num_local_experts", .inter_key = "intermediate_size",
    .norm_topk_default = 1,
    .forward = 1, .norm_topk_fixed = 1, .router = "block_sparse_moe.gate",
};
/* q/k/v biases (no config key in the real configs), a shared expert
 * scaled by sigmoid(shared_expert_gate . h) added to the routed sum. */
static const layout qwen2_moe = {
    .name = "qwen2_moe", .model_types = "qwen2_moe", .text_config = "",
    .root = "model.", .lm_head = "lm_head.",
    .experts = "mlp.experts.", .proj = {"gate_proj", "up_proj", "down_proj"},
    .count_keys = "num_experts", .inter_key = "moe_intermediate_size",
    .forward = 1, .router = "mlp.gate", .qkv_bias = 1,
    .shared = "mlp.shared_expert", .shared_gate = "mlp.shared_expert_gate",
    .shared_inter_key = "shared_expert_intermediate_size",
};
/* q_norm/k_norm over the whole projection, before the per-head view. */
static const layout olmoe = {
    .name = "olmoe", .model_types = "olmoe", .text_config = "",
    .root = "model.", .lm_head = "lm_head.",
    .experts = "mlp.experts.", .proj = {"gate_proj", "up_proj", "down_proj"},
    .count_keys = "num_experts", .inter_key = "intermediate_size",
    .forward = 1, .router = "mlp.gate", .qk_norm = LT_QK_FULL,
};
static const layout deepseek_v3 = {
    .name = "deepseek_v3", .model_types = "deepseek_v3 deepseek_v2", .text_config = "",
    .root = "model.", .lm_head = "lm_head.",
    .experts = "mlp.experts.", .proj = {"gate_proj", "up_proj", "down_proj"},
    .count_keys = "n_routed_experts", .inter_key = "moe_intermediate_size",
    .mtp_key = "num_nextn_predict_layers",
    .norm_topk_default = 1,
    .forward = 1, .router = "mlp.gate", .attn = LT_ATTN_MLA,
    .score = LT_SCORE_SIGMOID_GROUPED,
    .shared = "mlp.shared_experts", .shared_count_key = "n_shared_experts",
};
/* GLM-4.5 / GLM-4.5-Air (Glm4MoeForCausalLM): DeepSeek-V3's router and
 * shared experts on grouped-query attention whose q/k/v biases and per-head
 * q/k norms are config switches, RoPE on the first half of each head
 * (partial_rotary_factor 0.5), an MTP block after the decoder's layers. */
static const layout glm4_moe = {
    .name = "glm4_moe", .model_types = "glm4_moe", .text_config = "",
    .root = "model.", .lm_head = "lm_head.",
    .experts = "mlp.experts.", .proj = {"gate_proj", "up_proj", "down_proj"},
    .count_keys = "n_routed_experts", .inter_key = "moe_intermediate_size",
    .mtp_key = "num_nextn_predict_layers",
    .norm_topk_default = 1,
    .forward = 1, .router = "mlp.gate",
    .qk_norm = LT_QK_HEAD, .qk_norm_key = "use_qk_norm",
    .qkv_bias = 1, .qkv_bias_key = "attention_bias",
    .score = LT_SCORE_SIGMOID_GROUPED,
    .shared = "mlp.shared_experts", .shared_count_key = "n_shared_experts",
    .partial_rotary = 1,
};

const layout *const layouts[] = {
    &qwen3_omni_moe, &qwen3_moe, &qwen3_moe_fused, &mixtral,
    &qwen2_moe, &olmoe, &deepseek_v3, &glm4_moe, NULL,
};

const layout *layout_find(const char *name)
{
    for (int i = 0; layouts[i]; i++)
        if (strcmp(layouts[i]->name, name) == 0)
            return layouts[i];
    return NULL;
}

const char *layout_names(void)
{
    static char buf[256];
    if (!buf[0])
        for (int i = 0; layouts[i]; i++) {
            if (i)
                g_strlcat(buf, ", ", sizeof buf);
            g_strlcat(buf, layouts[i]->name, sizeof buf);
        }
    return buf;
}

/* Reads a decimal number at *p followed by '.', advancing past both. */
static int take_index(const char **p, int *out)
{
    const char *s = *p;
    long v = 0;
    if (!g_ascii_isdigit(*s))
        return 0;
    while (g_ascii_isdigit(*s)) {
        v = v * 10 + (*s - '0');
        if (v > 1000000)
            return 0;
        s++;
    }
    if (*s != '.')
        return 0;
    *p = s + 1;
    *out = (int)v;
    return 1;
}

int layout_proj_of(const layout *lt, const char *suffix)
{
    for (int k = 0; k < 3; k++) {
        size_t n = strlen(lt->proj[k]);
        if (strncmp(suffix, lt->proj[k], n) == 0 &&
            (suffix[n] == '\0' || suffix[n] == '.'))
            return k;
    }
    return -1;
}

void layout_classify(const layout *lt, const char *name, lt_class *out)
{
    out->layer = out->expert = out->proj = -1;
    size_t rl = strlen(lt->root);
    if (strncmp(name, lt->root, rl) != 0) {
        out->kind = g_str_has_prefix(name, lt->lm_head) ? LT_GLOBAL : LT_OTHER;
        return;
    }
    const char *p = name + rl;
    int layer;
    if (!g_str_has_prefix(p, "layers.") || (p += 7, !take_index(&p, &layer))) {
        out->kind = LT_GLOBAL;
        return;
    }
    out->kind = LT_LAYER;
    out->layer = layer;
    if (!g_str_has_prefix(p, lt->experts))
        return;
    p += strlen(lt->experts);
    int expert;
    if (take_index(&p, &expert)) {
        out->kind = LT_EXPERT;
        out->expert = expert;
        out->proj = layout_proj_of(lt, p);
    } else if (lt->fused && (out->proj = layout_proj_of(lt, p)) >= 0) {
        out->kind = LT_FUSED;
    }
}

char *layout_other_prefix(const layout *lt, const char *name)
{
    /* Keep two components under the text model's own top ("thinker.visual")
     * and one elsewhere ("talker", "code2wav"). */
    const char *dot = strchr(lt->root, '.');
    size_t top = dot ? (size_t)(dot - lt->root) : 0;
    int parts = (top && strncmp(name, lt->root, top) == 0 && name[top] == '.' &&
                 strcmp(lt->root + top, ".model.") == 0) ? 2 : 1;
    const char *p = name;
    for (int i = 0; i < parts; i++) {
        const char *d = strchr(p, '.');
        if (!d)
            return g_strdup(name);
        p = d + 1;
    }
    return g_strndup(name, (gsize)(p - 1 - name));
}

char *layout_fused_slice_name(const layout *lt, const char *fused_name, int expert)
{
    const char *at = strstr(fused_name, lt->experts);
    if (!at)
        return g_strdup_printf("%s.%d", fused_name, expert);
    size_t head = (size_t)(at - fused_name) + strlen(lt->experts);
    return g_strdup_printf("%.*s%d.%s", (int)head, fused_name, expert,
                           fused_name + head);
}

static int word_in(const char *word, const char *list)
{
    gchar **w = g_strsplit(list, " ", -1);
    int hit = 0;
    for (int i = 0; w[i]; i++)
        hit |= strcmp(w[i], word) == 0;
    g_strfreev(w);
    return hit;
}

/* How many tensor names this layout recognises as routed experts: a
 * stack, or one expert's projection by a name the layout gives it (an
 * extraction of a fused layout holds "experts.5.gate_up_proj", which the
 * unfused twin would take for an expert with an unknown projection). */
static int expert_matches(const layout *lt, const lt_model *ck)
{
    int n = 0;
    lt_class c;
    for (int i = 0; i < ck->n_names; i++) {
        layout_classify(lt, ck->names[i], &c);
        n += c.kind == LT_FUSED || (c.kind == LT_EXPERT && c.proj >= 0);
    }
    return n;
}

const layout *layout_detect_model(const lt_model *ck, GError **err)
{
    const layout *best = NULL;
    int best_n = -1;
    for (int i = 0; layouts[i]; i++) {
        if (ck->model_type && !word_in(ck->model_type, layouts[i]->model_types))
            continue;
        int n = expert_matches(layouts[i], ck);
        if (n > best_n && (ck->model_type || n > 0)) {
            best = layouts[i];
            best_n = n;
        }
    }
    if (!best) {
        if (ck->model_type)
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s/config.json': unknown model_type '%s' (known layouts: "
                        "%s; choose one with --layout)", ck->dir, ck->model_type,
                        layout_names());
        else
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s': no config.json and no tensor names of a known layout "
                        "(known layouts: %s)", ck->dir, layout_names());
    }
    return best;
}

/* Follows a dotted path ("thinker_config.text_config") from the root. */
static const cJSON *config_at(const cJSON *root, const char *path)
{
    if (!*path)
        return root;
    gchar **parts = g_strsplit(path, ".", -1);
    const cJSON *j = root;
    for (int i = 0; parts[i] && j; i++)
        j = cJSON_GetObjectItemCaseSensitive(j, parts[i]);
    g_strfreev(parts);
    return cJSON_IsObject(j) ? j : NULL;
}

/* "thinker_config.text_config.num_experts": where a key lives, for errors. */
static char *key_path(const layout *lt, const char *key)
{
    return *lt->text_config ? g_strdup_printf("%s.%s", lt->text_config, key)
                            : g_strdup(key);
}

/* A count from config.json, distrusted like a size in a file: the first of
 * the space-separated `keys` present (and not null) must be an integer in
 * [lo, hi]. Absent: 1 when `optional` (out untouched), else an error. */
static int config_count(const layout *lt, const lt_model *ck, const cJSON *tc,
                        const char *keys, int64_t lo, int64_t hi, int optional,
                        int64_t *out, GError **err)
{
    gchar **w = g_strsplit(keys, " ", -1);
    const cJSON *j = NULL;
    const char *key = w[0];
    for (int i = 0; w[i] && !j; i++) {
        j = cJSON_GetObjectItemCaseSensitive(tc, w[i]);
        if (j && cJSON_IsNull(j))
            j = NULL;
        if (j)
            key = w[i];
    }
    int rc = 0;
    char *where = key_path(lt, key);
    if (!j) {
        if (optional) {
            rc = 1;
        } else {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s/config.json': missing '%s'",
                        ck->dir, where);
            rc = -1;
        }
    } else if (qm_json_int(tc, key, lo, hi, out) != 0) {
        char *v = cJSON_PrintUnformatted(j);
        if (cJSON_IsNumber(j) && j->valuedouble > (double)hi)
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s/config.json': '%s' is %.40s, more than qmoe supports (%"
                        G_GINT64_FORMAT ")", ck->dir, where, v ? v : "?", hi);
        else
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s/config.json': '%s' is %.40s, not an integer in [%"
                        G_GINT64_FORMAT ", %" G_GINT64_FORMAT "]", ck->dir, where,
                        v ? v : "?", lo, hi);
        cJSON_free(v);
        rc = -1;
    }
    g_free(where);
    g_strfreev(w);
    return rc;
}

/* Counts from the tensor names alone (a bare .safetensors file), bounded
 * like the config's. */
static int shape_from_names(const layout *lt, const lt_model *ck, lt_shape *s, GError **err)
{
    lt_class c;
    for (int i = 0; i < ck->n_names; i++) {
        layout_classify(lt, ck->names[i], &c);
        if (c.layer >= LT_MAX_LAYERS ||
            (c.kind == LT_EXPERT && c.expert >= LT_MAX_EXPERTS)) {
            const char *file = ck->file_of ? ck->file_of(ck->ctx, ck->names[i]) : NULL;
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s': tensor '%s': %s index %d is more than qmoe supports "
                        "(%d at most)", file ? file : ck->dir,
                        ck->names[i],
                        c.layer >= LT_MAX_LAYERS ? "layer" : "expert",
                        c.layer >= LT_MAX_LAYERS ? c.layer : c.expert,
                        (c.layer >= LT_MAX_LAYERS ? LT_MAX_LAYERS : LT_MAX_EXPERTS) - 1);
            return -1;
        }
        if (c.layer >= s->n_layers)
            s->n_layers = c.layer + 1;
        if (c.kind == LT_EXPERT && c.expert >= s->n_experts)
            s->n_experts = c.expert + 1;
    }
    s->is_moe = g_new0(uint8_t, s->n_layers > 0 ? s->n_layers : 1);
    for (int i = 0; i < ck->n_names; i++) {
        layout_classify(lt, ck->names[i], &c);
        if (c.kind == LT_EXPERT || c.kind == LT_FUSED)
            s->is_moe[c.layer] = 1;
    }
    return 0;
}

int layout_shape_model(const layout *lt, const lt_model *ck, lt_shape *s, GError **err)
{
    memset(s, 0, sizeof *s);
    if (!ck->config) {
        if (shape_from_names(lt, ck, s, err)) {
            layout_shape_free(s);
            return -1;
        }
    } else {
        const cJSON *tc = config_at(ck->config, lt->text_config);
        int64_t nl, ne, hidden, inter;
        if (!tc) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s/config.json': no '%s' object", ck->dir, lt->text_config);
            return -1;
        }
        int64_t step = 1, first_dense = 0, freq = 1;
        if (config_count(lt, ck, tc, "num_hidden_layers", 1, LT_MAX_LAYERS, 0, &nl, err) < 0 ||
            config_count(lt, ck, tc, lt->count_keys, 0, LT_MAX_EXPERTS, 0, &ne, err) < 0 ||
            config_count(lt, ck, tc, "hidden_size", 1, LT_MAX_HIDDEN, 0, &hidden, err) < 0 ||
            config_count(lt, ck, tc, lt->inter_key, 1, LT_MAX_INTER, 0, &inter, err) < 0 ||
            config_count(lt, ck, tc, "decoder_sparse_step", 1, LT_MAX_LAYERS, 1, &step,
                         err) < 0 ||
            config_count(lt, ck, tc, "first_k_dense_replace", 0, LT_MAX_LAYERS, 1,
                         &first_dense, err) < 0 ||
            config_count(lt, ck, tc, "moe_layer_freq", 1, LT_MAX_LAYERS, 1, &freq, err) < 0)
            return -1;
        /* the MTP block's layers follow the decoder's (layout.h) */
        int64_t mtp = 0;
        if (lt->mtp_key &&
            config_count(lt, ck, tc, lt->mtp_key, 0, LT_MAX_LAYERS, 1, &mtp, err) < 0)
            return -1;
        if (nl + mtp > LT_MAX_LAYERS) {
            char *a = key_path(lt, "num_hidden_layers"), *b = key_path(lt, lt->mtp_key);
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s/config.json': '%s' %" G_GINT64_FORMAT " + '%s' %"
                        G_GINT64_FORMAT " make %" G_GINT64_FORMAT " layers, more than "
                        "qmoe supports (%d)", ck->dir, a, nl, b, mtp, nl + mtp,
                        LT_MAX_LAYERS);
            g_free(a);
            g_free(b);
            return -1;
        }
        s->n_layers = (int)(nl + mtp);
        s->n_mtp = (int)mtp;
        s->n_experts = (int)ne;
        s->hidden = (int)hidden;
        s->inter = (int)inter;
        s->is_moe = g_new0(uint8_t, s->n_layers);
        for (int l = 0; l < s->n_layers; l++)
            s->is_moe[l] = s->n_experts > 0 && (l + 1) % step == 0 &&
                           l >= first_dense && l % freq == 0;
        const cJSON *only = cJSON_GetObjectItemCaseSensitive(tc, "mlp_only_layers");
        const cJSON *x;
        cJSON_ArrayForEach(x, only) {
            uint64_t l;
            if (qm_json_uint(x, &l) && l < (uint64_t)s->n_layers)
                s->is_moe[l] = 0;
        }
    }
    for (int l = 0; l < s->n_layers; l++) {
        s->n_moe_layers += s->is_moe[l];
        s->n_moe_mtp += s->is_moe[l] && lt_is_mtp(s, l);
    }
    if ((int64_t)s->n_moe_layers * s->n_experts > LT_MAX_EXPERT_FILES) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s%s': %d MoE layers%s x %d experts make %" G_GINT64_FORMAT
                    " expert files, more than qmoe supports (%d)", ck->dir,
                    ck->config ? "/config.json" : "", s->n_moe_layers,
                    s->n_moe_mtp ? " (MTP included)" : "", s->n_experts,
                    (int64_t)s->n_moe_layers * s->n_experts, LT_MAX_EXPERT_FILES);
        layout_shape_free(s);
        return -1;
    }
    return 0;
}

/* ---- a checkpoint as a model ---- */

static const char *shard_path_of(const void *ctx, const char *name)
{
    const ckpt *ck = ctx;
    int sh = ck->shard_of ? ckpt_shard_index(ck, name) : -1;
    return sh >= 0 ? ck->shards[sh].path : NULL;
}

static lt_model model_of(const ckpt *ck)
{
    lt_model m = {.dir = ck->dir, .config = ck->config, .model_type = ck->model_type,
                  .names = ck->names, .n_names = ck->n_names,
                  .file_of = shard_path_of, .ctx = ck};
    return m;
}

const layout *layout_detect(const ckpt *ck, GError **err)
{
    lt_model m = model_of(ck);
    return layout_detect_model(&m, err);
}

int layout_shape(const layout *lt, const ckpt *ck, lt_shape *s, GError **err)
{
    lt_model m = model_of(ck);
    return layout_shape_model(lt, &m, s, err);
}

void layout_shape_free(lt_shape *s)
{
    if (s) {
        g_free(s->is_moe);
        s->is_moe = NULL;
    }
}
