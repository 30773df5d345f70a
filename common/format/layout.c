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
 * gate_up_proj [E, 2I, H] and down_proj [E, H, I]. */
static const layout qwen3_moe_fused = {
    .name = "qwen3_moe_fused", .model_types = "qwen3_moe", .text_config = "",
    .root = "model.", .lm_head = "lm_head.",
    .experts = "mlp.experts.", .proj = {"gate_up_proj", "gate_up_proj", "down_proj"},
    .count_keys = "num_experts", .inter_key = "moe_intermediate_size",
    .fused = 1,
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
    .norm_topk_default = 1,
    .forward = 1, .router = "mlp.gate", .attn = LT_ATTN_MLA,
    .score = LT_SCORE_SIGMOID_GROUPED,
    .shared = "mlp.shared_experts", .shared_count_key = "n_shared_experts",
};

const layout *const layouts[] = {
    &qwen3_omni_moe, &qwen3_moe, &qwen3_moe_fused, &mixtral,
    &qwen2_moe, &olmoe, &deepseek_v3, NULL,
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

/* How many tensor names this layout recognises as routed experts. */
static int expert_matches(const layout *lt, const ckpt *ck)
{
    int n = 0;
    lt_class c;
    for (int i = 0; i < ck->n_names; i++) {
        layout_classify(lt, ck->names[i], &c);
        n += c.kind == LT_EXPERT || c.kind == LT_FUSED;
    }
    return n;
}

const layout *layout_detect(const ckpt *ck, GError **err)
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

static int key_int(const cJSON *tc, const char *keys, int64_t *out)
{
    gchar **w = g_strsplit(keys, " ", -1);
    int rc = -1;
    for (int i = 0; w[i] && rc; i++)
        rc = qm_json_int(tc, w[i], 0, 1 << 24, out);
    g_strfreev(w);
    return rc;
}

/* Counts from the tensor names alone (a bare .safetensors file). */
static int shape_from_names(const layout *lt, const ckpt *ck, lt_shape *s)
{
    lt_class c;
    for (int i = 0; i < ck->n_names; i++) {
        layout_classify(lt, ck->names[i], &c);
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

int layout_shape(const layout *lt, const ckpt *ck, lt_shape *s, GError **err)
{
    memset(s, 0, sizeof *s);
    if (!ck->config) {
        shape_from_names(lt, ck, s);
    } else {
        const cJSON *tc = config_at(ck->config, lt->text_config);
        const char *cfg = "config.json";
        int64_t v;
        if (!tc) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s/%s': no '%s' object", ck->dir, cfg, lt->text_config);
            return -1;
        }
#define NEED(key, dst)                                                         \
        if (key_int(tc, key, &v)) {                                            \
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,                          \
                        "'%s/%s': missing or invalid '%s'", ck->dir, cfg, key); \
            return -1;                                                         \
        }                                                                      \
        dst = (int)v
        NEED("num_hidden_layers", s->n_layers);
        NEED(lt->count_keys, s->n_experts);
        NEED("hidden_size", s->hidden);
        NEED(lt->inter_key, s->inter);
#undef NEED
        int64_t step = 1, first_dense = 0, freq = 1;
        qm_json_int(tc, "decoder_sparse_step", 1, 1 << 20, &step);
        qm_json_int(tc, "first_k_dense_replace", 0, 1 << 20, &first_dense);
        qm_json_int(tc, "moe_layer_freq", 1, 1 << 20, &freq);
        s->is_moe = g_new0(uint8_t, s->n_layers > 0 ? s->n_layers : 1);
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
    for (int l = 0; l < s->n_layers; l++)
        s->n_moe_layers += s->is_moe[l];
    return 0;
}

void layout_shape_free(lt_shape *s)
{
    if (s) {
        g_free(s->is_moe);
        s->is_moe = NULL;
    }
}
