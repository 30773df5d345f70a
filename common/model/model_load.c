/* model_load.c - config, weights, load and free of the model (model.h) */
#include "model/model_impl.h"
#include "format/hfconfig.h"
#include "base/util.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- config ---- */

static int cfg_int(const model *m, const cJSON *tc, const char *key, int64_t lo,
                   int64_t hi, int dflt, int *out, GError **err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(tc, key);
    int64_t v;
    if (!j || cJSON_IsNull(j)) {
        if (dflt >= 0) {
            *out = dflt;
            return 0;
        }
    } else if (qm_json_int(tc, key, lo, hi, &v) == 0) {
        *out = (int)v;
        return 0;
    }
    g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                "'%s/config.json': %s text config key '%s' (need an integer in "
                "[%" G_GINT64_FORMAT ", %" G_GINT64_FORMAT "])", m->ck->dir,
                j ? "invalid" : "missing", key, lo, hi);
    return -1;
}

static int cfg_num(const model *m, const cJSON *tc, const char *key, double dflt,
                   double *out, GError **err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(tc, key);
    if (!j || cJSON_IsNull(j)) {
        if (!isnan(dflt)) {
            *out = dflt;
            return 0;
        }
    } else if (cJSON_IsNumber(j) && j->valuedouble > 0 && isfinite(j->valuedouble)) {
        *out = j->valuedouble;
        return 0;
    }
    g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                "'%s/config.json': %s text config key '%s' (need a positive number)",
                m->ck->dir, j ? "invalid" : "missing", key);
    return -1;
}

/* true/false from the text config, else the top level, else dflt. */
static int cfg_bool(const model *m, const cJSON *tc, const char *key, int dflt)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(tc, key);
    if (!cJSON_IsBool(j))
        j = cJSON_GetObjectItemCaseSensitive(m->ck->config, key);
    return cJSON_IsBool(j) ? cJSON_IsTrue(j) : dflt;
}

/* A string key that must have one value (absent is fine). */
static int cfg_str_is(const model *m, const cJSON *tc, const char *key, const char *want,
                      GError **err)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(tc, key);
    if (!j || cJSON_IsNull(j) || (cJSON_IsString(j) && strcmp(j->valuestring, want) == 0))
        return 0;
    g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                "'%s/config.json': %s '%s' is not supported (the forward pass implements "
                "%s)", m->ck->dir, key, cJSON_IsString(j) ? j->valuestring : "(not a string)",
                want);
    return -1;
}

/* DeepSeek's multi-head latent attention. config.head_dim, when present,
 * is HF's name for qk_rope_head_dim (it sizes RoPE): the heads are
 * qk_nope + qk_rope wide and the softmax scale is theirs. */
static int read_mla(model *m, const cJSON *tc, GError **err)
{
    model_config *c = &m->c;
    const cJSON *ql = cJSON_GetObjectItemCaseSensitive(tc, "q_lora_rank");
    if (!cJSON_IsNumber(ql)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s/config.json': q_lora_rank %s is not supported (the forward pass "
                    "implements MLA with a query low-rank projection)", m->ck->dir,
                    ql ? "null" : "missing");
        return -1;
    }
    if (cfg_int(m, tc, "q_lora_rank", 1, 1 << 16, -1, &c->q_lora, err) ||
        cfg_int(m, tc, "kv_lora_rank", 1, 1 << 16, -1, &c->kv_lora, err) ||
        cfg_int(m, tc, "qk_nope_head_dim", 0, 1 << 12, -1, &c->nope, err) ||
        cfg_int(m, tc, "qk_rope_head_dim", 2, 1 << 12, -1, &c->rope_dim, err) ||
        cfg_int(m, tc, "v_head_dim", 1, 1 << 12, -1, &c->v_dim, err))
        return -1;
    const cJSON *il = cJSON_GetObjectItemCaseSensitive(tc, "rope_interleave");
    if (il && !cJSON_IsNull(il) && !cJSON_IsTrue(il)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s/config.json': rope_interleave false is not supported", m->ck->dir);
        return -1;
    }
    c->head_dim = c->nope + c->rope_dim;
    c->n_kv_heads = c->n_heads; /* one K and V per head (the cache holds them expanded) */
    if (c->v_dim > c->head_dim) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s/config.json': v_head_dim %d wider than the %d-wide query heads is "
                    "not supported", m->ck->dir, c->v_dim, c->head_dim);
        return -1;
    }
    return 0;
}

/* DeepSeek-V3's router: sigmoid, noaux_tc group-limited top-k. */
static int read_grouped(model *m, const cJSON *tc, GError **err)
{
    model_config *c = &m->c;
    double rs;
    if (cfg_str_is(m, tc, "scoring_func", "sigmoid", err) ||
        cfg_str_is(m, tc, "topk_method", "noaux_tc", err) ||
        cfg_int(m, tc, "n_group", 1, c->n_experts, 1, &c->n_group, err) ||
        cfg_int(m, tc, "topk_group", 1, c->n_group, c->n_group, &c->topk_group, err) ||
        cfg_num(m, tc, "routed_scaling_factor", 1.0, &rs, err))
        return -1;
    c->routed_scale = (float)rs;
    int per = c->n_experts / c->n_group;
    if (c->n_experts % c->n_group != 0 || per < 2 || c->top_k > c->topk_group * per) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s/config.json': %d experts in n_group %d groups, top %d of "
                    "topk_group %d groups: not a valid grouping", m->ck->dir, c->n_experts,
                    c->n_group, c->top_k, c->topk_group);
        return -1;
    }
    return 0;
}

/* MoE layers of the decoder: the forward pass never runs the MTP block's
 * (layout.h), which the shape counts too. */
int moe_layers(const model *m)
{
    return m->shape.n_moe_layers - m->shape.n_moe_mtp;
}

static int read_config(model *m, GError **err)
{
    model_config *c = &m->c;
    const cJSON *tc = ckpt_text_config(m->ck);
    if (!tc) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': the forward pass needs config.json", m->ck->dir);
        return -1;
    }
    const int big = 1 << 24;
    if (cfg_int(m, tc, "vocab_size", 1, big, -1, &c->vocab, err) ||
        cfg_int(m, tc, "hidden_size", 1, 1 << 16, -1, &c->hidden, err) ||
        cfg_int(m, tc, "num_hidden_layers", 1, 4096, -1, &c->n_layers, err) ||
        cfg_int(m, tc, "num_attention_heads", 1, 4096, -1, &c->n_heads, err) ||
        cfg_int(m, tc, "num_key_value_heads", 1, 4096, c->n_heads, &c->n_kv_heads, err) ||
        cfg_int(m, tc, "head_dim", 2, 1 << 14, c->hidden / c->n_heads, &c->head_dim, err))
        return -1;
    if (moe_layers(m) > 0 &&
        (cfg_int(m, tc, m->lt->count_keys, 1, 1 << 16, -1, &c->n_experts, err) ||
         cfg_int(m, tc, "num_experts_per_tok", 1, c->n_experts, -1, &c->top_k, err) ||
         cfg_int(m, tc, m->lt->inter_key, 1, big, -1, &c->moe_inter, err)))
        return -1;
    if (moe_layers(m) < c->n_layers &&
        cfg_int(m, tc, "intermediate_size", 1, big, -1, &c->dense_inter, err))
        return -1;
    if (moe_layers(m) > 0 && m->lt->shared_inter_key &&
        cfg_int(m, tc, m->lt->shared_inter_key, 1, big, -1, &c->shared_inter, err))
        return -1;
    int max_pos = 4096;
    if (cfg_int(m, tc, "max_position_embeddings", 1, INT32_MAX, 4096, &max_pos, err))
        return -1;
    double eps;
    char cfg_path[1100];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", m->ck->dir);
    if (cfg_num(m, tc, "rms_norm_eps", 1e-6, &eps, err) ||
        hf_check_supported(tc, cfg_path,
                           m->lt->qkv_bias_key && !strcmp(m->lt->qkv_bias_key, "attention_bias"),
                           err) ||
        qm_fp8_config_read(m->ck->config, cfg_path, &m->fp8, err) < 0)
        return -1;
    c->eps = (float)eps;
    c->norm_topk = m->lt->norm_topk_fixed
                       ? m->lt->norm_topk_default
                       : cfg_bool(m, tc, "norm_topk_prob", m->lt->norm_topk_default);
    c->tie_embeddings = cfg_bool(m, tc, "tie_word_embeddings", 0);
    /* layout.h: a *_key turns the capability on (absent: off, HF's default) */
    m->qk_norm = m->lt->qk_norm_key && !cfg_bool(m, tc, m->lt->qk_norm_key, 0)
                     ? LT_QK_NONE : m->lt->qk_norm;
    m->qkv_bias = m->lt->qkv_bias &&
                  (!m->lt->qkv_bias_key || cfg_bool(m, tc, m->lt->qkv_bias_key, 0));
    c->is_moe = m->shape.is_moe;
    c->v_dim = c->rope_dim = c->head_dim;
    if ((m->lt->attn == LT_ATTN_MLA && read_mla(m, tc, err)) ||
        (m->lt->score == LT_SCORE_SIGMOID_GROUPED && moe_layers(m) > 0 &&
         read_grouped(m, tc, err)))
        return -1;
    if (m->lt->shared_count_key && moe_layers(m) > 0) {
        int ns = 0;
        if (cfg_int(m, tc, m->lt->shared_count_key, 0, 1 << 10, 0, &ns, err))
            return -1;
        c->shared_inter = ns * c->moe_inter;
    }
    /* rope.c falls back to theta 10000 like transformers; a v5 file that
     * names no theta anywhere was damaged, not written that way */
    const cJSON *p5 = cJSON_GetObjectItemCaseSensitive(tc, "rope_parameters");
    if (cJSON_IsObject(p5) && !cJSON_GetObjectItemCaseSensitive(p5, "rope_theta") &&
        !cJSON_GetObjectItemCaseSensitive(tc, "rope_theta")) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': rope_parameters has no rope_theta",
                    cfg_path);
        return -1;
    }
    /* after read_mla: DeepSeek rotates qk_rope_head_dim dims, others head_dim,
     * or its first int(head_dim * partial_rotary_factor) (layout.partial_rotary) */
    if (!(m->w.rope = qm_rope_from_config(tc, cfg_path, c->rope_dim, m->lt->partial_rotary,
                                          err)))
        return -1;
    c->rope_dim = m->w.rope->dim;
    c->rope_theta = (float)m->w.rope->theta;
    if (c->n_heads % c->n_kv_heads != 0 || c->head_dim % 2 != 0 || c->rope_dim % 2 != 0) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s/config.json': %d attention heads cannot share %d key-value "
                    "heads of dimension %d", m->ck->dir, c->n_heads, c->n_kv_heads,
                    c->head_dim);
        return -1;
    }
    if (c->max_seq <= 0)
        c->max_seq = max_pos < 4096 ? max_pos : 4096;
    return 0;
}

/* ---- weights ---- */

/* An F8_E4M3 weight with its `_scale_inv` (absent: NULL, which
 * qm_fp8_check_weight refuses naming the weight). */
static int get_fp8(model *m, const st_tensor *t, const uint8_t *data, int rows, int cols,
                   qm_mat *out, const char *path, GError **err)
{
    if (!m->fp8) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': tensor '%s' is F8_E4M3 but '%s/config.json' has no FP8 "
                    "quantization_config", path, t->name, m->ck->dir);
        return -1;
    }
    char sname[600];
    snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
    const st_tensor *s = NULL;
    const uint8_t *sdata = NULL;
    if (ckpt_shard_index(m->ck, sname) >= 0 &&
        !(s = ckpt_tensor(m->ck, sname, 1, &sdata, err)))
        return -1;
    return qm_mat_view_fp8(out, m->fp8, t, data, s, sdata, rows, cols, path, err);
}

static int get_mat(model *m, const char *name, int rows, int cols, qm_mat *out,
                   GError **err)
{
    const uint8_t *data;
    const st_tensor *t = ckpt_tensor(m->ck, name, 1, &data, err);
    if (!t)
        return -1;
    const char *path = m->ck->shards[ckpt_shard_index(m->ck, name)].path;
    if (t->dtype == ST_F8_E4M3 && cols > 0)
        return get_fp8(m, t, data, rows, cols, out, path, err);
    char label[1100];
    snprintf(label, sizeof label, "'%s'", path);
    return qm_mat_view(out, t, data, rows, cols, label, err);
}

/* A norm weight as float32, owned by the model. */
static float *get_vec(model *m, const char *name, int n, GError **err)
{
    qm_mat v;
    if (get_mat(m, name, n, 0, &v, err) != 0)
        return NULL;
    float *out = g_new(float, n);
    /* a [n] vector is n rows of one column */
    for (int i = 0; i < n; i++)
        qm_mat_row(&v, i, out + i);
    return out;
}

static const char *lname(model *m, int l, const char *suffix)
{
    snprintf(m->name, sizeof m->name, "%slayers.%d.%s", m->lt->root, l, suffix);
    return m->name;
}

/* DeepSeek's attention weights. */
static int load_mla(model *m, int l, layer_w *w, GError **err)
{
    const model_config *c = &m->c;
    int H = c->n_heads;
    return get_mat(m, lname(m, l, "self_attn.q_a_proj.weight"), c->q_lora, c->hidden,
                   &w->qa, err) ||
           !(w->qa_norm = get_vec(m, lname(m, l, "self_attn.q_a_layernorm.weight"),
                                  c->q_lora, err)) ||
           get_mat(m, lname(m, l, "self_attn.q_b_proj.weight"), H * c->head_dim, c->q_lora,
                   &w->qb, err) ||
           get_mat(m, lname(m, l, "self_attn.kv_a_proj_with_mqa.weight"),
                   c->kv_lora + c->rope_dim, c->hidden, &w->kva, err) ||
           !(w->kva_norm = get_vec(m, lname(m, l, "self_attn.kv_a_layernorm.weight"),
                                   c->kv_lora, err)) ||
           get_mat(m, lname(m, l, "self_attn.kv_b_proj.weight"), H * (c->nope + c->v_dim),
                   c->kv_lora, &w->kvb, err) ||
           get_mat(m, lname(m, l, "self_attn.o_proj.weight"), c->hidden, H * c->v_dim, &w->o,
                   err)
               ? -1 : 0;
}

static int load_weights(model *m, GError **err)
{
    const model_config *c = &m->c;
    int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    snprintf(m->name, sizeof m->name, "%sembed_tokens.weight", m->lt->root);
    if (get_mat(m, m->name, c->vocab, c->hidden, &m->w.embed, err))
        return -1;
    if (c->tie_embeddings) {
        m->w.lm_head = m->w.embed;
    } else {
        snprintf(m->name, sizeof m->name, "%sweight", m->lt->lm_head);
        if (get_mat(m, m->name, c->vocab, c->hidden, &m->w.lm_head, err))
            return -1;
    }
    snprintf(m->name, sizeof m->name, "%snorm.weight", m->lt->root);
    if (!(m->w.final_norm = get_vec(m, m->name, c->hidden, err)))
        return -1;
    m->w.layers = g_new0(layer_w, c->n_layers);
    for (int l = 0; l < c->n_layers; l++) {
        layer_w *w = &m->w.layers[l];
        if (m->lt->attn == LT_ATTN_MLA) {
            if (load_mla(m, l, w, err))
                return -1;
        } else if (get_mat(m, lname(m, l, "self_attn.q_proj.weight"), qd, c->hidden, &w->q,
                           err) ||
                   get_mat(m, lname(m, l, "self_attn.k_proj.weight"), kvd, c->hidden, &w->k,
                           err) ||
                   get_mat(m, lname(m, l, "self_attn.v_proj.weight"), kvd, c->hidden, &w->v,
                           err) ||
                   get_mat(m, lname(m, l, "self_attn.o_proj.weight"), c->hidden, qd, &w->o,
                           err)) {
            return -1;
        }
        if (!(w->in_norm = get_vec(m, lname(m, l, "input_layernorm.weight"), c->hidden, err)) ||
            !(w->post_norm = get_vec(m, lname(m, l, "post_attention_layernorm.weight"),
                                     c->hidden, err)))
            return -1;
        if (m->qk_norm != LT_QK_NONE) {
            int full = m->qk_norm == LT_QK_FULL;
            if (!(w->q_norm = get_vec(m, lname(m, l, "self_attn.q_norm.weight"),
                                      full ? qd : c->head_dim, err)) ||
                !(w->k_norm = get_vec(m, lname(m, l, "self_attn.k_norm.weight"),
                                      full ? kvd : c->head_dim, err)))
                return -1;
        }
        if (m->qkv_bias &&
            (!(w->q_bias = get_vec(m, lname(m, l, "self_attn.q_proj.bias"), qd, err)) ||
             !(w->k_bias = get_vec(m, lname(m, l, "self_attn.k_proj.bias"), kvd, err)) ||
             !(w->v_bias = get_vec(m, lname(m, l, "self_attn.v_proj.bias"), kvd, err))))
            return -1;
        if (c->is_moe[l]) {
            char part[256];
            snprintf(part, sizeof part, "%s.weight", m->lt->router);
            if (get_mat(m, lname(m, l, part), c->n_experts, c->hidden, &w->router, err))
                return -1;
            if (m->lt->score == LT_SCORE_SIGMOID_GROUPED) {
                snprintf(part, sizeof part, "%s.e_score_correction_bias", m->lt->router);
                if (!(w->score_bias = get_vec(m, lname(m, l, part), c->n_experts, err)))
                    return -1;
            }
            if (m->lt->shared && c->shared_inter > 0) {
                int si = c->shared_inter;
                const char *sp = m->lt->shared;
                w->shared = 1;
                snprintf(part, sizeof part, "%s.gate_proj.weight", sp);
                if (get_mat(m, lname(m, l, part), si, c->hidden, &w->sgate, err))
                    return -1;
                snprintf(part, sizeof part, "%s.up_proj.weight", sp);
                if (get_mat(m, lname(m, l, part), si, c->hidden, &w->sup, err))
                    return -1;
                snprintf(part, sizeof part, "%s.down_proj.weight", sp);
                if (get_mat(m, lname(m, l, part), c->hidden, si, &w->sdown, err))
                    return -1;
                if (m->lt->shared_gate) { /* DeepSeek-V3's shared experts have none */
                    snprintf(part, sizeof part, "%s.weight", m->lt->shared_gate);
                    if (get_mat(m, lname(m, l, part), 1, c->hidden, &w->sg, err))
                        return -1;
                }
            }
        } else if (get_mat(m, lname(m, l, "mlp.gate_proj.weight"), c->dense_inter,
                           c->hidden, &w->gate, err) ||
                   get_mat(m, lname(m, l, "mlp.up_proj.weight"), c->dense_inter,
                           c->hidden, &w->up, err) ||
                   get_mat(m, lname(m, l, "mlp.down_proj.weight"), c->hidden,
                           c->dense_inter, &w->down, err)) {
            return -1;
        }
    }
    return 0;
}

/* ---- load / free ---- */

model *model_load(const char *path, const model_opts *o, GError **err)
{
    model_opts dflt = {0};
    if (!o)
        o = &dflt;
    model *m = g_new0(model, 1);
    if (!(m->ck = ckpt_open(path, err)) || !(m->lt = layout_detect(m->ck, err)))
        goto fail;
    if (!m->lt->forward) {
        GString *names = g_string_new(NULL);
        for (int i = 0; layouts[i]; i++)
            if (layouts[i]->forward)
                g_string_append_printf(names, "%s%s", names->len ? ", " : "",
                                       layouts[i]->name);
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': the forward pass supports the %s layouts, not %s", path,
                    names->str, m->lt->name);
        g_string_free(names, TRUE);
        goto fail;
    }
    if (layout_shape(m->lt, m->ck, &m->shape, err) != 0)
        goto fail;
    m->c.max_seq = o->max_seq;
    if (read_config(m, err) != 0 || load_weights(m, err) != 0)
        goto fail;
    model_config *c = &m->c;
    if (moe_layers(m) > 0 &&
        !(m->store = expert_store_new(m->ck, m->lt, m->fp8, c->n_layers, c->n_experts,
                                      c->hidden, c->moe_inter,
                                      o->cache_bytes ? o->cache_bytes : (4ull << 30),
                                      o->expert_io, err)))
        goto fail;
    m->no_prefetch = o->no_prefetch;
    m->page = (size_t)sysconf(_SC_PAGESIZE);
    if (m->store)
        expert_store_set_prefetch(m->store, !o->no_prefetch);
    if (!(m->team = team_new(o->n_threads > 0 ? o->n_threads : 1, err)))
        goto fail;
    m->w.inv_freq = g_new0(float, c->head_dim / 2);
    /* As Hugging Face computes it, in float32: base ** (2i / dim). Default
     * RoPE keeps this float32 path so its logits stay bit for bit those of
     * the family goldens; YaRN takes rope.c's tables (angles in double,
     * attention_factor included), one row per position of the context. */
    for (int i = 0; i < c->rope_dim / 2; i++)
        m->w.inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->rope_dim);
    m->w.att_scale = 1.0f / sqrtf((float)c->head_dim);
    if (m->w.rope->type == QM_ROPE_YARN) {
        size_t n = (size_t)c->max_seq * (c->rope_dim / 2);
        m->w.rope_cos = g_new(float, n);
        m->w.rope_sin = g_new(float, n);
        qm_rope_tables(m->w.rope, c->max_seq, m->w.rope_cos, m->w.rope_sin);
        /* DeepSeek's mscale(factor, mscale_all_dim)^2 on the softmax */
        m->w.att_scale = (float)(m->w.rope->softmax_mult / sqrt((double)c->head_dim));
    }
    run_state_init(m, o->max_batch > 0 ? o->max_batch : MODEL_BATCH);
    if (!(m->seq0 = model_seq_new(m, 0, 0, err)))
        goto fail;
    return m;
fail:
    model_free(m);
    return NULL;
}

void model_free(model *m)
{
    if (!m)
        return;
    model_seq_free(m->seq0);
    if (m->w.layers)
        for (int l = 0; l < m->c.n_layers; l++) {
            layer_w *w = &m->w.layers[l];
            g_free(w->q_norm);
            g_free(w->k_norm);
            g_free(w->q_bias);
            g_free(w->k_bias);
            g_free(w->v_bias);
            g_free(w->score_bias);
            g_free(w->qa_norm);
            g_free(w->kva_norm);
            g_free(w->in_norm);
            g_free(w->post_norm);
        }
    g_free(m->w.layers);
    g_free(m->w.final_norm);
    g_free(m->w.inv_freq);
    qm_fp8_config_free(m->fp8);
    g_free(m->w.rope_cos);
    g_free(m->w.rope_sin);
    qm_rope_free(m->w.rope);
    if (m->allow)
        for (int l = 0; l < m->c.n_layers; l++)
            g_free(m->allow[l]);
    g_free(m->allow);
    run_state_free(&m->r);
    expert_store_free(m->store);
    team_free(m->team);
    layout_shape_free(&m->shape);
    ckpt_close(m->ck);
    g_free(m);
}

const model_config *model_get_config(const model *m) { return &m->c; }
const layout *model_layout(const model *m) { return m->lt; }
ckpt *model_checkpoint(model *m) { return m->ck; }
expert_store *model_experts(model *m) { return m->store; }
int model_pos(const model *m) { return m->seq0->pos; }
void model_reset(model *m) { m->seq0->pos = 0; }
model_seq *model_default_seq(model *m) { return m->seq0; }
uint64_t model_step_weight_bytes(const model *m) { return m->step_bytes; }

int model_set_layer_mask(model *m, int layer, const uint8_t *allow, GError **err)
{
    const model_config *c = &m->c;
    if (layer < 0 || layer >= c->n_layers || !c->is_moe[layer]) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "cannot restrict the router of layer %d: %s", layer,
                    layer < 0 || layer >= c->n_layers ? "the model has no such layer"
                                                      : "a dense layer has no router");
        return -1;
    }
    if (!allow) {
        if (m->allow) {
            g_free(m->allow[layer]);
            m->allow[layer] = NULL;
        }
        return 0;
    }
    int n = route_mask_copy(c, allow, NULL);
    if (n < c->top_k) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "the router mask of layer %d allows %d experts, fewer than the %d each "
                    "token needs", layer, n, c->top_k);
        return -1;
    }
    if (!m->allow)
        m->allow = g_new0(uint8_t *, c->n_layers);
    if (!m->allow[layer])
        m->allow[layer] = g_new0(uint8_t, c->n_experts);
    route_mask_copy(c, allow, m->allow[layer]);
    return 0;
}

int model_set_mask(model *m, const uint8_t *allow, GError **err)
{
    const model_config *c = &m->c;
    if (allow) {
        int n = route_mask_copy(c, allow, NULL);
        if (n < c->top_k) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "the router mask allows %d experts, fewer than the %d each token "
                        "needs", n, c->top_k);
            return -1;
        }
    }
    for (int l = 0; l < c->n_layers; l++)
        if (c->is_moe[l] && model_set_layer_mask(m, l, allow, err) != 0)
            return -1;
    return 0;
}

void model_set_router_log(model *m, model_router_fn fn, void *user)
{
    m->router_fn = fn;
    m->router_user = user;
}

