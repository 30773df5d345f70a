/* model.c - see model.h */
#include "model/model.h"
#include "model/matvec.h"
#include "model/team.h"
#include "format/hfconfig.h"
#include "base/util.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Logits computed at once by model_nll (lm_head over this many positions
 * per pass over its weights). */
#define LOGIT_ROWS 32

typedef struct {
    qm_mat q, k, v, o;            /* [H*hd, hidden] x3 (k, v: [KV*hd, hidden]), [hidden, H*hd] */
    float *q_norm, *k_norm;       /* (head_dim), LT_QK_FULL: (H*hd), (KV*hd); or NULL */
    float *q_bias, *k_bias, *v_bias; /* (H*hd), (KV*hd) x2, or NULL */
    float *in_norm, *post_norm;   /* (hidden) */
    qm_mat router;                /* [n_experts, hidden] (MoE layers) */
    qm_mat gate, up, down;        /* dense MLP (other layers) */
    int shared;                   /* MoE layer with a gated shared expert: */
    qm_mat sgate, sup, sdown;     /* its SwiGLU MLP */
    qm_mat sg;                    /* [1, hidden] its sigmoid gate (rows 0: none) */
    float *score_bias;            /* (n_experts) e_score_correction_bias, or NULL */
    uint8_t *allow;               /* (n_experts) this layer's router mask, NULL = all */
    /* MLA (instead of q, k, v): */
    qm_mat qa, qb;                /* [q_lora, hidden], [H*(nope+rope), q_lora] */
    qm_mat kva, kvb;              /* [kv_lora+rope, hidden], [H*(nope+v), kv_lora] */
    float *qa_norm, *kva_norm;    /* (q_lora), (kv_lora) */
} layer_w;

struct model {
    ckpt *ck;
    const layout *lt;
    lt_shape shape;
    model_config c;
    qm_mat embed;                 /* [vocab, hidden] */
    qm_mat lm_head;               /* [vocab, hidden] */
    float *final_norm;            /* (hidden) */
    layer_w *layers;              /* [n_layers] */
    expert_store *store;
    team *team;
    model_router_fn router_fn;
    void *router_user;
    int pos;                      /* next position */
    uint64_t step_bytes;
    int no_prefetch;              /* model_opts.no_prefetch */
    int want_logits;              /* the batch in flight ends with lm_head */
    size_t page;
    /* run state, made once */
    float *x;                     /* (hidden) residual stream */
    float *xb;                    /* (hidden) normalised input of a block */
    float *xb2;                   /* (hidden) output of a block */
    float *q;                     /* (n_heads, head_dim) */
    float *att;                   /* (n_heads, max_seq) attention weights */
    float *att_out;               /* (n_heads, head_dim) */
    float *kcache, *vcache;       /* (n_layers, max_seq, n_kv_heads * head_dim) */
    float *inv_freq;              /* (head_dim / 2) */
    float *rope_cos, *rope_sin;   /* (head_dim / 2) at the current position */
    float *rlogits;               /* (n_experts) router logits, then probabilities */
    int *top;                     /* (top_k) chosen experts, descending probability */
    float *topw;                  /* (top_k) their weights */
    int *order;                   /* (top_k) indices into top, ascending expert id */
    float *hb, *hb2;              /* (max(moe_inter, dense_inter)) */
    /* All chosen experts of a layer at once (moe_batched). */
    float *ehb, *ehb2;            /* (top_k, moe_inter) */
    float *eout;                  /* (top_k, hidden) */
    float **bout;                 /* (2 * top_k) output pointers of a batch */
    const float **bx;             /* (2 * top_k) input pointers */
    const qm_mat **bmat;          /* (2 * top_k) gate, up of each expert */
    const qm_mat **bdown;         /* (top_k) */
    float *moe;                   /* (hidden) weighted sum of expert outputs */
    float *logits;                /* (vocab) for model_generate */
    /* Prefill: a micro-batch of up to max_batch tokens through each layer
     * at once (forward_batch), made once at load. */
    int max_batch;
    float *px, *pxb, *pxb2;       /* (max_batch, hidden) residuals, block inputs, outputs */
    float *pq, *patt_out;         /* (max_batch, n_heads * head_dim) */
    float *pcos, *psin;           /* (max_batch, head_dim / 2) RoPE at each position */
    float *prl;                   /* (max_batch, n_experts) router logits */
    int *ptop;                    /* (n_layers, max_batch, top_k) chosen experts */
    float *ptopw;                 /* (n_layers, max_batch, top_k) their weights */
    float *pnorm;                 /* (n_layers, max_batch, top_k) their output norms */
    int *ppair;                   /* (max_batch * top_k) plist's (token, k) pair */
    float *rnorm;                 /* (top_k) output norms of m->top's experts */
    int *pstart;                  /* (n_experts + 1) start of each expert's tokens in plist */
    int *pord;                    /* (n_experts) the experts a batch routes to */
    int *plist;                   /* (max_batch * top_k) tokens routed to each expert */
    float *plw;                   /* (max_batch * top_k) their routing weights */
    float *pg;                    /* (max_batch, hidden) an expert's gathered inputs */
    float *ph, *ph2;              /* (max_batch, max(moe_inter, dense_inter)) */
    float *pmoe;                  /* (max_batch, hidden) weighted sums of expert outputs */
    float *plg;                   /* (LOGIT_ROWS, vocab) logits for model_nll */
    float *mqa, *mkva, *mkvb;     /* MLA: (max_batch, q_lora / kv_lora+rope / H*(nope+v)) */
    float *rscore;                /* (2 * n_experts) sigmoid routing: choices, group scores */
    int *rgroup;                  /* (2 * n_experts) group order, kept groups */
    char name[512];
};

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
static int moe_layers(const model *m)
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
    hf_rope rope;
    char cfg_path[1100];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", m->ck->dir);
    if (cfg_num(m, tc, "rms_norm_eps", 1e-6, &eps, err) ||
        hf_rope_read(tc, cfg_path, &rope, err) || hf_check_supported(tc, cfg_path, err))
        return -1;
    c->eps = (float)eps;
    c->rope_theta = (float)rope.rope_theta;
    c->norm_topk = m->lt->norm_topk_fixed
                       ? m->lt->norm_topk_default
                       : cfg_bool(m, tc, "norm_topk_prob", m->lt->norm_topk_default);
    c->tie_embeddings = cfg_bool(m, tc, "tie_word_embeddings", 0);
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

static int get_mat(model *m, const char *name, int rows, int cols, qm_mat *out,
                   GError **err)
{
    const uint8_t *data;
    const st_tensor *t = ckpt_tensor(m->ck, name, 1, &data, err);
    if (!t)
        return -1;
    char label[1100];
    snprintf(label, sizeof label, "'%s'", m->ck->shards[ckpt_shard_index(m->ck, name)].path);
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
    if (get_mat(m, m->name, c->vocab, c->hidden, &m->embed, err))
        return -1;
    if (c->tie_embeddings) {
        m->lm_head = m->embed;
    } else {
        snprintf(m->name, sizeof m->name, "%sweight", m->lt->lm_head);
        if (get_mat(m, m->name, c->vocab, c->hidden, &m->lm_head, err))
            return -1;
    }
    snprintf(m->name, sizeof m->name, "%snorm.weight", m->lt->root);
    if (!(m->final_norm = get_vec(m, m->name, c->hidden, err)))
        return -1;
    m->layers = g_new0(layer_w, c->n_layers);
    for (int l = 0; l < c->n_layers; l++) {
        layer_w *w = &m->layers[l];
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
        if (m->lt->qk_norm != LT_QK_NONE) {
            int full = m->lt->qk_norm == LT_QK_FULL;
            if (!(w->q_norm = get_vec(m, lname(m, l, "self_attn.q_norm.weight"),
                                      full ? qd : c->head_dim, err)) ||
                !(w->k_norm = get_vec(m, lname(m, l, "self_attn.k_norm.weight"),
                                      full ? kvd : c->head_dim, err)))
                return -1;
        }
        if (m->lt->qkv_bias &&
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
                snprintf(part, sizeof part, "%s.weight", m->lt->shared_gate);
                if (m->lt->shared_gate &&
                    get_mat(m, lname(m, l, part), 1, c->hidden, &w->sg, err))
                    return -1;
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
        !(m->store = expert_store_new(m->ck, m->lt, c->n_layers, c->n_experts, c->hidden,
                                      c->moe_inter,
                                      o->cache_bytes ? o->cache_bytes : (4ull << 30),
                                      o->expert_io, err)))
        goto fail;
    m->no_prefetch = o->no_prefetch;
    m->page = (size_t)sysconf(_SC_PAGESIZE);
    if (m->store)
        expert_store_set_prefetch(m->store, !o->no_prefetch);
    if (!(m->team = team_new(o->n_threads > 0 ? o->n_threads : 1, err)))
        goto fail;
    size_t kvd = (size_t)c->n_kv_heads * c->head_dim, qd = (size_t)c->n_heads * c->head_dim;
    size_t inter = (size_t)MAX(MAX(c->moe_inter, c->dense_inter), c->shared_inter);
    size_t cache = (size_t)c->n_layers * c->max_seq * kvd;
    m->x = g_new0(float, c->hidden);
    m->xb = g_new0(float, c->hidden);
    m->xb2 = g_new0(float, c->hidden);
    m->moe = g_new0(float, c->hidden);
    m->q = g_new0(float, qd);
    m->att_out = g_new0(float, qd);
    m->att = g_new0(float, (size_t)c->n_heads * c->max_seq);
    m->kcache = g_try_new0(float, cache);
    m->vcache = g_try_new0(float, cache);
    if (!m->kcache || !m->vcache) {
        g_set_error(err, QM_ERROR, QM_ERR_NOSPACE,
                    "cannot allocate a KV cache of %d tokens (%zu MB)", c->max_seq,
                    cache * 8 >> 20);
        goto fail;
    }
    m->inv_freq = g_new0(float, c->head_dim / 2);
    m->rope_cos = g_new0(float, c->head_dim / 2);
    m->rope_sin = g_new0(float, c->head_dim / 2);
    /* As Hugging Face computes it, in float32: base ** (2i / dim). */
    for (int i = 0; i < c->rope_dim / 2; i++)
        m->inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->rope_dim);
    m->rlogits = g_new0(float, MAX(c->n_experts, 1));
    m->top = g_new0(int, MAX(c->top_k, 1));
    m->topw = g_new0(float, MAX(c->top_k, 1));
    m->order = g_new0(int, MAX(c->top_k, 1));
    m->hb = g_new0(float, inter);
    m->hb2 = g_new0(float, inter);
    size_t k = (size_t)MAX(c->top_k, 1);
    m->ehb = g_new0(float, k * c->moe_inter);
    m->ehb2 = g_new0(float, k * c->moe_inter);
    m->eout = g_new0(float, k * c->hidden);
    m->bout = g_new0(float *, 2 * k);
    m->bx = g_new0(const float *, 2 * k);
    m->bmat = g_new0(const qm_mat *, 2 * k);
    m->bdown = g_new0(const qm_mat *, k);
    m->logits = g_new0(float, c->vocab);
    int B = o->max_batch > 0 ? o->max_batch : MODEL_BATCH;
    m->max_batch = B = B < c->max_seq ? B : c->max_seq;
    size_t nth = (size_t)team_size(m->team), E = (size_t)MAX(c->n_experts, 1);
    m->att = g_renew(float, m->att,
                     (size_t)MAX(c->n_heads, (int)nth * (c->n_heads / c->n_kv_heads)) *
                         c->max_seq);
    m->px = g_new0(float, (size_t)B * c->hidden);
    m->pxb = g_new0(float, (size_t)B * c->hidden);
    m->pxb2 = g_new0(float, (size_t)B * c->hidden);
    m->pq = g_new0(float, (size_t)B * qd);
    m->patt_out = g_new0(float, (size_t)B * qd);
    m->pcos = g_new0(float, (size_t)B * (c->head_dim / 2));
    m->psin = g_new0(float, (size_t)B * (c->head_dim / 2));
    m->prl = g_new0(float, (size_t)B * E);
    m->ptop = g_new0(int, (size_t)c->n_layers * B * k);
    m->ptopw = g_new0(float, (size_t)c->n_layers * B * k);
    m->pnorm = g_new0(float, (size_t)c->n_layers * B * k);
    m->ppair = g_new0(int, (size_t)B * k);
    m->rnorm = g_new0(float, MAX(c->top_k, 1));
    m->pstart = g_new0(int, E + 1);
    m->pord = g_new0(int, E);
    m->plist = g_new0(int, (size_t)B * k);
    m->plw = g_new0(float, (size_t)B * k);
    m->pg = g_new0(float, (size_t)B * c->hidden);
    m->ph = g_new0(float, (size_t)B * inter);
    m->ph2 = g_new0(float, (size_t)B * inter);
    m->pmoe = g_new0(float, (size_t)B * c->hidden);
    m->plg = g_new0(float, (size_t)LOGIT_ROWS * c->vocab);
    m->rscore = g_new0(float, 2 * E);
    m->rgroup = g_new0(int, 2 * E);
    if (m->lt->attn == LT_ATTN_MLA) {
        m->mqa = g_new0(float, (size_t)B * c->q_lora);
        m->mkva = g_new0(float, (size_t)B * (c->kv_lora + c->rope_dim));
        m->mkvb = g_new0(float, (size_t)B * c->n_heads * (c->nope + c->v_dim));
    }
    return m;
fail:
    model_free(m);
    return NULL;
}

void model_free(model *m)
{
    if (!m)
        return;
    if (m->layers)
        for (int l = 0; l < m->c.n_layers; l++) {
            g_free(m->layers[l].q_norm);
            g_free(m->layers[l].k_norm);
            g_free(m->layers[l].q_bias);
            g_free(m->layers[l].k_bias);
            g_free(m->layers[l].v_bias);
            g_free(m->layers[l].score_bias);
            g_free(m->layers[l].qa_norm);
            g_free(m->layers[l].kva_norm);
            g_free(m->layers[l].in_norm);
            g_free(m->layers[l].post_norm);
            g_free(m->layers[l].allow);
        }
    g_free(m->layers);
    g_free(m->final_norm);
    expert_store_free(m->store);
    team_free(m->team);
    g_free(m->x);
    g_free(m->xb);
    g_free(m->xb2);
    g_free(m->moe);
    g_free(m->q);
    g_free(m->att_out);
    g_free(m->att);
    g_free(m->kcache);
    g_free(m->vcache);
    g_free(m->inv_freq);
    g_free(m->rope_cos);
    g_free(m->rope_sin);
    g_free(m->rlogits);
    g_free(m->top);
    g_free(m->topw);
    g_free(m->order);
    g_free(m->hb);
    g_free(m->hb2);
    g_free(m->ehb);
    g_free(m->ehb2);
    g_free(m->eout);
    g_free(m->bout);
    g_free(m->bx);
    g_free(m->bmat);
    g_free(m->bdown);
    g_free(m->logits);
    g_free(m->px);
    g_free(m->pxb);
    g_free(m->pxb2);
    g_free(m->pq);
    g_free(m->patt_out);
    g_free(m->pcos);
    g_free(m->psin);
    g_free(m->prl);
    g_free(m->ptop);
    g_free(m->ptopw);
    g_free(m->pnorm);
    g_free(m->ppair);
    g_free(m->rnorm);
    g_free(m->pstart);
    g_free(m->pord);
    g_free(m->plist);
    g_free(m->plw);
    g_free(m->pg);
    g_free(m->ph);
    g_free(m->ph2);
    g_free(m->pmoe);
    g_free(m->plg);
    g_free(m->mqa);
    g_free(m->mkva);
    g_free(m->mkvb);
    g_free(m->rscore);
    g_free(m->rgroup);
    layout_shape_free(&m->shape);
    ckpt_close(m->ck);
    g_free(m);
}

const model_config *model_get_config(const model *m) { return &m->c; }
const layout *model_layout(const model *m) { return m->lt; }
ckpt *model_checkpoint(model *m) { return m->ck; }
expert_store *model_experts(model *m) { return m->store; }
int model_pos(const model *m) { return m->pos; }
void model_reset(model *m) { m->pos = 0; }
uint64_t model_step_weight_bytes(const model *m) { return m->step_bytes; }

int model_set_layer_mask(model *m, int layer, const uint8_t *allow, GError **err)
{
    if (layer < 0 || layer >= m->c.n_layers || !m->c.is_moe[layer]) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "cannot restrict the router of layer %d: %s",
                    layer, layer < 0 || layer >= m->c.n_layers ? "no such decoder layer"
                                                               : "it is a dense layer");
        return -1;
    }
    layer_w *w = &m->layers[layer];
    if (!allow) {
        g_free(w->allow);
        w->allow = NULL;
        return 0;
    }
    int n = 0;
    for (int e = 0; e < m->c.n_experts; e++)
        n += allow[e] != 0;
    if (n < m->c.top_k) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "the router mask of layer %d allows %d experts, fewer than the %d each "
                    "token needs", layer, n, m->c.top_k);
        return -1;
    }
    if (!w->allow)
        w->allow = g_new0(uint8_t, m->c.n_experts);
    for (int e = 0; e < m->c.n_experts; e++)
        w->allow[e] = allow[e] != 0;
    return 0;
}

int model_set_mask(model *m, const uint8_t *allow, GError **err)
{
    if (allow) {
        int n = 0;
        for (int e = 0; e < m->c.n_experts; e++)
            n += allow[e] != 0;
        if (n < m->c.top_k) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "the router mask allows %d experts, fewer than the %d each token "
                        "needs", n, m->c.top_k);
            return -1;
        }
    }
    for (int l = 0; l < m->c.n_layers; l++)
        if (m->c.is_moe[l] && model_set_layer_mask(m, l, allow, err))
            return -1;
    return 0;
}

void model_set_router_log(model *m, model_router_fn fn, void *user)
{
    m->router_fn = fn;
    m->router_user = user;
}

/* ---- the forward pass ---- */

/* The sum is kept in double, which only removes noise. */
void model_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++)
        out[i] = w[i] * (x[i] * scale);
}

/* Rotate-half RoPE on one head: pairs (i, i + d/2).
 *
 * Qwen3-Omni uses interleaved M-RoPE: the frequency slots are split into
 * temporal/height/width sections (mrope_section [24, 20, 20] in the real
 * model), each rotated by its own position id. For text every token has
 * the same id on all three axes, so each slot sees the same angle
 * pos * inv_freq[i] as 1-D RoPE: the two are identical, and this is the
 * only form implemented. */
static void rope(float *v, const float *cs, const float *sn, int d)
{
    int h = d / 2;
    for (int i = 0; i < h; i++) {
        float a = v[i], b = v[i + h];
        v[i] = a * cs[i] - b * sn[i];
        v[i + h] = b * cs[i] + a * sn[i];
    }
}

/* Causal attention of the g query heads that share one key-value head
 * over T cached positions: q (g, hd), keys and values at kc, vc (stride
 * floats apart), att (g, T) scratch, o (g, hd) the output. Written with
 * 8-float generic vectors (the compiler left the plain loops scalar: it
 * cannot prove q, k and o apart): eight partial sums per dot product,
 * four positions at once, eight-wide updates of o. The one routine for
 * decode and prefill, so both give the same bits. */
typedef float v8f __attribute__((vector_size(32)));

static inline v8f ld8(const float *p)
{
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void st8(float *p, v8f v)
{
    memcpy(p, &v, sizeof v);
}

static inline float sum8(v8f v)
{
    float s = 0;
    for (int j = 0; j < 8; j++)
        s += v[j];
    return s;
}

static void attend(const float *q, const float *kc, const float *vc, size_t stride, int T,
                   int hd, int g, float *att, float *o)
{
    float scale = 1.0f / sqrtf((float)hd);
    int hd8 = hd & ~7;
    /* four positions at a time: four independent sums in flight */
    int t0 = 0;
    for (; t0 + 4 <= T; t0 += 4) {
        const float *k = kc + (size_t)t0 * stride;
        for (int h = 0; h < g; h++) {
            const float *qh = q + (size_t)h * hd;
            v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (int d = 0; d < hd8; d += 8) {
                v8f qv = ld8(qh + d);
                a0 += qv * ld8(k + d);
                a1 += qv * ld8(k + stride + d);
                a2 += qv * ld8(k + 2 * stride + d);
                a3 += qv * ld8(k + 3 * stride + d);
            }
            float s[4] = {sum8(a0), sum8(a1), sum8(a2), sum8(a3)};
            for (int u = 0; u < 4; u++) {
                for (int d = hd8; d < hd; d++)
                    s[u] += qh[d] * k[u * stride + d];
                att[(size_t)h * T + t0 + u] = s[u] * scale;
            }
        }
    }
    for (int t = t0; t < T; t++) {
        const float *k = kc + (size_t)t * stride;
        for (int h = 0; h < g; h++) {
            const float *qh = q + (size_t)h * hd;
            v8f a0 = {0};
            for (int d = 0; d < hd8; d += 8)
                a0 += ld8(qh + d) * ld8(k + d);
            float s = sum8(a0);
            for (int d = hd8; d < hd; d++)
                s += qh[d] * k[d];
            att[(size_t)h * T + t] = s * scale;
        }
    }
    for (int h = 0; h < g; h++) {
        float *a = att + (size_t)h * T, mx = -INFINITY, sum = 0;
        for (int t = 0; t < T; t++)
            mx = a[t] > mx ? a[t] : mx;
        for (int t = 0; t < T; t++) {
            a[t] = expf(a[t] - mx);
            sum += a[t];
        }
        for (int t = 0; t < T; t++)
            a[t] /= sum;
    }
    memset(o, 0, sizeof(float) * hd * g);
    for (int t = 0; t < T; t++) {
        const float *v = vc + (size_t)t * stride;
        for (int h = 0; h < g; h++) {
            float a = att[(size_t)h * T + t], *oh = o + (size_t)h * hd;
            for (int d = 0; d < hd8; d += 8)
                st8(oh + d, ld8(oh + d) + a * ld8(v + d));
            for (int d = hd8; d < hd; d++)
                oh[d] += a * v[d];
        }
    }
}

typedef struct {
    model *m;
    int layer;
    int n;          /* prefill: tokens of the batch (at positions m->pos..) */
} att_job;

/* Causal attention of the current token, key-value heads split over
 * threads (query heads h*group.. share key-value head h). */
static void attention_part(void *arg, int i, int n)
{
    const att_job *j = arg;
    model *m = j->m;
    const model_config *c = &m->c;
    int hd = c->head_dim, kvd = c->n_kv_heads * hd, group = c->n_heads / c->n_kv_heads;
    const float *kc = m->kcache + (size_t)j->layer * c->max_seq * kvd;
    const float *vc = m->vcache + (size_t)j->layer * c->max_seq * kvd;
    for (int h = c->n_kv_heads * i / n; h < c->n_kv_heads * (i + 1) / n; h++) {
        size_t q0 = (size_t)h * group * hd;
        attend(m->q + q0, kc + (size_t)h * hd, vc + (size_t)h * hd, kvd, m->pos + 1, hd,
               group, m->att + (size_t)h * group * c->max_seq, m->att_out + q0);
    }
}

/* Prefill: query t of the batch (at position m->pos + t) over positions
 * 0..m->pos + t. (token, key-value head) pairs are dealt out round-robin,
 * which balances their growing lengths; thread i uses rows i*group.. of
 * m->att. */
static void attention_batch_part(void *arg, int i, int n)
{
    const att_job *j = arg;
    model *m = j->m;
    const model_config *c = &m->c;
    int hd = c->head_dim, kvd = c->n_kv_heads * hd, group = c->n_heads / c->n_kv_heads;
    size_t qd = (size_t)c->n_heads * hd;
    const float *kc = m->kcache + (size_t)j->layer * c->max_seq * kvd;
    const float *vc = m->vcache + (size_t)j->layer * c->max_seq * kvd;
    float *att = m->att + (size_t)i * group * c->max_seq;
    for (int p = i; p < j->n * c->n_kv_heads; p += n) {
        int t = p / c->n_kv_heads, h = p % c->n_kv_heads;
        size_t q0 = t * qd + (size_t)h * group * hd;
        attend(m->pq + q0, kc + (size_t)h * hd, vc + (size_t)h * hd, kvd, m->pos + t + 1, hd,
               group, att, m->patt_out + q0);
    }
}

static inline float sigmoid(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

static inline float silu(float x)
{
    return x / (1.0f + expf(-x));
}

/* One token's projections before attention, as its family computes them:
 * q/k/v biases, the RMSNorm of q and k (over the whole projection, or per
 * head), then RoPE per head. */
static void qkv_prepare(const model *m, const layer_w *w, float *q, float *k, float *v,
                        const float *cs, const float *sn)
{
    const model_config *c = &m->c;
    int hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
    lt_qk_norm norm = m->lt->qk_norm;
    if (w->q_bias) {
        for (int i = 0; i < qd; i++)
            q[i] += w->q_bias[i];
        for (int i = 0; i < kvd; i++) {
            k[i] += w->k_bias[i];
            v[i] += w->v_bias[i];
        }
    }
    if (norm == LT_QK_FULL) {
        model_rmsnorm(q, q, w->q_norm, qd, c->eps);
        model_rmsnorm(k, k, w->k_norm, kvd, c->eps);
    }
    for (int h = 0; h < c->n_heads; h++) {
        float *qh = q + (size_t)h * hd;
        if (norm == LT_QK_HEAD)
            model_rmsnorm(qh, qh, w->q_norm, hd, c->eps);
        rope(qh, cs, sn, hd);
    }
    for (int h = 0; h < c->n_kv_heads; h++) {
        float *kh = k + (size_t)h * hd;
        if (norm == LT_QK_HEAD)
            model_rmsnorm(kh, kh, w->k_norm, hd, c->eps);
        rope(kh, cs, sn, hd);
    }
}

/* down(silu(gate(x)) * up(x)) into out. */
static void swiglu(model *m, const qm_mat *gate, const qm_mat *up, const qm_mat *down,
                   float *out)
{
    float *o2[2] = {m->hb, m->hb2};
    const qm_mat *w2[2] = {gate, up};
    qm_matvec_multi(m->team, 2, o2, w2, m->xb);
    for (int i = 0; i < gate->rows; i++)
        m->hb[i] = silu(m->hb[i]) * m->hb2[i];
    qm_matvec(m->team, out, down, m->hb);
    m->step_bytes += qm_mat_bytes(gate->dtype, gate->rows, gate->cols) +
                     qm_mat_bytes(up->dtype, up->rows, up->cols) +
                     qm_mat_bytes(down->dtype, down->rows, down->cols);
}

/* Adjacent-pair RoPE on d floats: (x[2i], x[2i+1]) by angle i. This is
 * DeepSeek's rope_interleave as HF applies it (view d/2 x 2, transpose,
 * rotate_half): HF leaves the result in the transposed order, the same
 * permutation for queries and keys, so their dot products are these. */
static void rope_pairs(float *x, const float *cs, const float *sn, int d)
{
    for (int i = 0; i < d / 2; i++) {
        float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * cs[i] - b * sn[i];
        x[2 * i + 1] = b * cs[i] + a * sn[i];
    }
}

/* Multi-head latent attention's projections (DeepseekV3Attention, without
 * absorption) for n tokens x (hidden floats apart): the queries into q
 * (H heads of nope + rope), the keys and values of every head expanded
 * into k and v (kvd floats apart). A head's key is its kv_b slice of the
 * normed latent, then the one RoPE key of the token shared by all heads;
 * its value is padded with zeros to the key width so that attend() treats
 * MLA like any head (compact_heads drops the padding). cs, sn: RoPE of
 * each token, hh floats apart (0: one token). */
static void mla_project(model *m, const layer_w *w, const float *x, int n, float *q,
                        float *k, float *v, const float *cs, const float *sn, int hh)
{
    const model_config *c = &m->c;
    int H = c->n_heads, hd = c->head_dim, nope = c->nope, rd = c->rope_dim, vd = c->v_dim;
    int ql = c->q_lora, kl = c->kv_lora, ka = kl + rd, kb = nope + vd, qd = H * hd;
    /* q_a_layernorm and kv_a_layernorm are DeepseekV3RMSNorm(dim): HF gives
     * them no eps, so its default, not rms_norm_eps. */
    const float lora_eps = 1e-6f;
    float *o2[2] = {m->mqa, m->mkva};
    int ld2[2] = {ql, ka};
    const qm_mat *w2[2] = {&w->qa, &w->kva};
    qm_matmat_multi(m->team, 2, o2, ld2, w2, x, c->hidden, n);
    for (int t = 0; t < n; t++) {
        model_rmsnorm(m->mqa + (size_t)t * ql, m->mqa + (size_t)t * ql, w->qa_norm, ql,
                      lora_eps);
        model_rmsnorm(m->mkva + (size_t)t * ka, m->mkva + (size_t)t * ka, w->kva_norm, kl,
                      lora_eps);
    }
    qm_matmat(m->team, q, qd, &w->qb, m->mqa, ql, n);
    qm_matmat(m->team, m->mkvb, H * kb, &w->kvb, m->mkva, ka, n);
    for (int t = 0; t < n; t++) {
        const float *tc = cs + (size_t)t * hh, *ts = sn + (size_t)t * hh;
        float *kr = m->mkva + (size_t)t * ka + kl;
        rope_pairs(kr, tc, ts, rd);
        for (int h = 0; h < H; h++) {
            float *qh = q + (size_t)t * qd + (size_t)h * hd;
            float *kh = k + (size_t)t * qd + (size_t)h * hd;
            float *vh = v + (size_t)t * qd + (size_t)h * hd;
            const float *b = m->mkvb + (size_t)t * H * kb + (size_t)h * kb;
            rope_pairs(qh + nope, tc, ts, rd);
            memcpy(kh, b, sizeof(float) * nope);
            memcpy(kh + nope, kr, sizeof(float) * rd);
            memcpy(vh, b + nope, sizeof(float) * vd);
            memset(vh + vd, 0, sizeof(float) * (hd - vd));
        }
    }
}

static uint64_t mla_bytes(const layer_w *w)
{
    return qm_mat_bytes(w->qa.dtype, w->qa.rows, w->qa.cols) +
           qm_mat_bytes(w->qb.dtype, w->qb.rows, w->qb.cols) +
           qm_mat_bytes(w->kva.dtype, w->kva.rows, w->kva.cols) +
           qm_mat_bytes(w->kvb.dtype, w->kvb.rows, w->kvb.cols);
}

/* Attention outputs of H heads of width hd whose first vd floats are the
 * values (MLA): packed to H x vd in place, as o_proj reads them (H may
 * count the heads of several tokens: all rows packed). */
static void compact_heads(float *o, int H, int hd, int vd)
{
    for (int h = 1; h < H; h++)
        memmove(o + (size_t)h * vd, o + (size_t)h * hd, sizeof(float) * vd);
}

/* DeepSeek-V3's router (DeepseekV3TopkRouter, noaux_tc) on logits p:
 * scores sigmoid(p) (into p); choices score + e_score_correction_bias,
 * -inf for a masked expert (never chosen, whatever its bias); groups of
 * n_experts / n_group ranked by the sum of their two best choices, the
 * topk_group best kept (more, in rank order, if a mask leaves them fewer
 * than top_k allowed experts); top_k of the kept groups' experts in
 * descending choice (lowest id on ties); weights the unbiased scores,
 * divided by their sum (+1e-20) when norm_topk_prob, times
 * routed_scaling_factor. Experts outside the kept groups are never chosen,
 * as in DeepSeek's reference code; HF fills their choices with 0.0, which
 * differs only when fewer than top_k kept experts have a positive choice. */
static void route_grouped(const model *m, const uint8_t *allow, const float *bias, float *p,
                          int *top, float *topw)
{
    const model_config *c = &m->c;
    int E = c->n_experts, G = c->n_group, per = E / G, K = c->top_k;
    float *ch = m->rscore, *gs = m->rscore + E;
    int *gorder = m->rgroup, *keep = m->rgroup + G;
    for (int e = 0; e < E; e++) {
        p[e] = sigmoid(p[e]);
        ch[e] = allow && !allow[e] ? -INFINITY : p[e] + bias[e];
    }
    for (int g = 0; g < G; g++) {
        float b1 = -INFINITY, b2 = -INFINITY;
        for (int e = g * per; e < (g + 1) * per; e++)
            if (ch[e] > b1) {
                b2 = b1;
                b1 = ch[e];
            } else if (ch[e] > b2) {
                b2 = ch[e];
            }
        gs[g] = b1 + b2;
        keep[g] = 0;
    }
    int avail = 0;
    for (int r = 0; r < G; r++) {
        int best = -1;
        for (int g = 0; g < G; g++)
            if (!keep[g] && (best < 0 || gs[g] > gs[best]))
                best = g;
        gorder[r] = best;
        if (r >= c->topk_group && avail >= K)
            break;
        keep[best] = 1;
        for (int e = best * per; e < (best + 1) * per; e++)
            avail += ch[e] > -INFINITY;
    }
    float wsum = 0;
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            if (!keep[e / per] || ch[e] == -INFINITY)
                continue;
            int taken = 0;
            for (int j = 0; j < k; j++)
                taken |= top[j] == e;
            if (!taken && (best < 0 || ch[e] > ch[best]))
                best = e;
        }
        top[k] = best;
        topw[k] = p[best];
        wsum += p[best];
    }
    for (int k = 0; k < K; k++) {
        if (c->norm_topk)
            topw[k] /= wsum + 1e-20f;
        topw[k] *= c->routed_scale;
    }
}

/* Router: softmax over the (allowed) experts in float32, top-k in
 * descending probability (lowest id first on ties), renormalised when
 * norm_topk_prob. */
static void route_pick(const model *m, const layer_w *w, float *p, int *top, float *topw)
{
    const model_config *c = &m->c;
    if (m->lt->score == LT_SCORE_SIGMOID_GROUPED) {
        route_grouped(m, w->allow, w->score_bias, p, top, topw);
        return;
    }
    float mx = -INFINITY;
    for (int e = 0; e < c->n_experts; e++) {
        if (w->allow && !w->allow[e])
            p[e] = -INFINITY;
        mx = p[e] > mx ? p[e] : mx;
    }
    float sum = 0;
    for (int e = 0; e < c->n_experts; e++) {
        p[e] = p[e] == -INFINITY ? 0.0f : expf(p[e] - mx);
        sum += p[e];
    }
    for (int e = 0; e < c->n_experts; e++)
        p[e] /= sum;
    float wsum = 0;
    for (int k = 0; k < c->top_k; k++) {
        int best = -1;
        for (int e = 0; e < c->n_experts; e++) {
            if (w->allow && !w->allow[e])
                continue;
            int taken = 0;
            for (int j = 0; j < k; j++)
                taken |= top[j] == e;
            if (!taken && (best < 0 || p[e] > p[best]))
                best = e;
        }
        top[k] = best;
        topw[k] = p[best];
        wsum += p[best];
    }
    if (c->norm_topk)
        for (int k = 0; k < c->top_k; k++)
            topw[k] /= wsum;
}

static void route(model *m, int l)
{
    const model_config *c = &m->c;
    qm_matvec(m->team, m->rlogits, &m->layers[l].router, m->xb);
    m->step_bytes += qm_mat_bytes(m->layers[l].router.dtype, c->n_experts, c->hidden);
    route_pick(m, &m->layers[l], m->rlogits, m->top, m->topw);
}

/* The chosen experts of layer l, in m->order, computed together: gate and
 * up of all of them in one parallel pass, down of all in a second, so the
 * team wakes twice per layer instead of twice per expert. The same float
 * operations in the same order as one expert at a time (swiglu): the
 * logits are bit-identical. Needs all top_k experts held at once. */
static int moe_batched(model *m, int l, GError **err)
{
    const model_config *c = &m->c;
    int n = c->top_k, inter = c->moe_inter;
    for (int k = 0; k < n; k++) {
        const expert_mats *em = expert_store_get(m->store, l, m->top[m->order[k]], err);
        if (!em)
            return -1;
        m->bmat[2 * k] = &em->gate;
        m->bmat[2 * k + 1] = &em->up;
        m->bdown[k] = &em->down;
        m->bout[2 * k] = m->ehb + (size_t)k * inter;
        m->bout[2 * k + 1] = m->ehb2 + (size_t)k * inter;
        m->bx[2 * k] = m->bx[2 * k + 1] = m->xb;
        m->step_bytes += qm_mat_bytes(em->gate.dtype, em->gate.rows, em->gate.cols) +
                         qm_mat_bytes(em->up.dtype, em->up.rows, em->up.cols) +
                         qm_mat_bytes(em->down.dtype, em->down.rows, em->down.cols);
    }
    qm_matvec_batch(m->team, 2 * n, m->bout, m->bmat, m->bx);
    for (size_t i = 0; i < (size_t)n * inter; i++)
        m->ehb[i] = silu(m->ehb[i]) * m->ehb2[i];
    for (int k = 0; k < n; k++) {
        m->bout[k] = m->eout + (size_t)k * c->hidden;
        m->bx[k] = m->ehb + (size_t)k * inter;
    }
    qm_matvec_batch(m->team, n, m->bout, m->bdown, m->bx);
    memset(m->moe, 0, sizeof(float) * c->hidden);
    for (int k = 0; k < n; k++) {
        float w = m->topw[m->order[k]];
        const float *o = m->eout + (size_t)k * c->hidden;
        for (int d = 0; d < c->hidden; d++)
            m->moe[d] += w * o[d];
    }
    return 0;
}

/* L2 norm of an expert's output (before its router weight), for the
 * router observer (REAP scores). */
static float l2norm(const float *v, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += (double)v[i] * v[i];
    return (float)sqrt(s);
}

static void route_observed(model *m, int l, int token)
{
    if (m->router_fn)
        m->router_fn(m->router_user, 0, m->pos, token, l, m->c.top_k, m->top, m->topw,
                     m->rnorm);
}

static int moe(model *m, int l, int token, GError **err)
{
    const model_config *c = &m->c;
    route(m, l);
    /* Sum in ascending expert id, the order Hugging Face's loop adds in. */
    for (int k = 0; k < c->top_k; k++) {
        int j = k;
        while (j > 0 && m->top[m->order[j - 1]] > m->top[k]) {
            m->order[j] = m->order[j - 1];
            j--;
        }
        m->order[j] = k;
    }
    expert_store_prefetch(m->store, l, m->top, c->top_k);
    if (expert_store_holds(m->store, c->top_k)) {
        if (moe_batched(m, l, err) != 0)
            return -1;
        for (int k = 0; m->router_fn && k < c->top_k; k++)
            m->rnorm[m->order[k]] = l2norm(m->eout + (size_t)k * c->hidden, c->hidden);
        for (int d = 0; d < c->hidden; d++)
            m->x[d] += m->moe[d];
        route_observed(m, l, token);
        return 0;
    }
    memset(m->moe, 0, sizeof(float) * c->hidden);
    for (int k = 0; k < c->top_k; k++) {
        int i = m->order[k];
        const expert_mats *em = expert_store_get(m->store, l, m->top[i], err);
        if (!em)
            return -1;
        swiglu(m, &em->gate, &em->up, &em->down, m->xb2);
        if (m->router_fn)
            m->rnorm[i] = l2norm(m->xb2, c->hidden);
        for (int d = 0; d < c->hidden; d++)
            m->moe[d] += m->topw[i] * m->xb2[d];
    }
    for (int d = 0; d < c->hidden; d++)
        m->x[d] += m->moe[d];
    route_observed(m, l, token);
    return 0;
}

/* Read-ahead of mapped weights about to be used: MADV_WILLNEED starts
 * reading the pages that are not in the page cache and returns, so that
 * on a cold cache (or under a memory limit) the disk works while the
 * previous step computes. Prefill issues them in the order of use: the
 * embedding rows and layer 0's dense weights first, then for each layer
 * its experts (moe_batch) followed by the next layer's dense weights,
 * lm_head last. An embedding row is also asked for ahead in decode: a
 * fault on it would otherwise read the readahead window around it (8 MB
 * with read_ahead_kb 8192) for 4 KB. */
static void prefetch_rows(const model *m, const qm_mat *w, int r0, int nr)
{
    if (m->no_prefetch || !w->data || nr <= 0)
        return;
    uintptr_t a = (uintptr_t)w->data + qm_mat_bytes(w->dtype, r0, w->cols);
    uintptr_t lo = a / m->page * m->page, hi = a + qm_mat_bytes(w->dtype, nr, w->cols);
    /* in pieces: one call reads at most the readahead window (see
     * expert_store_prefetch); a hint, errors change nothing */
    for (uintptr_t p = lo; p < hi; p += QM_WILLNEED_CHUNK)
        madvise((void *)p, hi - p < QM_WILLNEED_CHUNK ? hi - p : QM_WILLNEED_CHUNK,
                MADV_WILLNEED);
}

static void prefetch_mat(const model *m, const qm_mat *w)
{
    prefetch_rows(m, w, 0, w->rows);
}

int model_step(model *m, int token, float *logits, GError **err)
{
    const model_config *c = &m->c;
    if (token < 0 || token >= c->vocab) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "token id %d is outside the vocabulary [0, %d)", token, c->vocab);
        return -1;
    }
    if (m->pos >= c->max_seq) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "the sequence is longer than the context of %d tokens", c->max_seq);
        return -1;
    }
    int hd = c->head_dim, kvd = c->n_kv_heads * hd;
    m->step_bytes = qm_mat_bytes(m->embed.dtype, 1, c->hidden);
    prefetch_rows(m, &m->embed, token, 1);
    qm_mat_row(&m->embed, token, m->x);
    for (int i = 0; i < hd / 2; i++) {
        float f = (float)m->pos * m->inv_freq[i];
        m->rope_cos[i] = cosf(f);
        m->rope_sin[i] = sinf(f);
    }
    for (int l = 0; l < c->n_layers; l++) {
        layer_w *w = &m->layers[l];
        size_t at = ((size_t)l * c->max_seq + m->pos) * kvd;
        float *k = m->kcache + at, *v = m->vcache + at;
        model_rmsnorm(m->xb, m->x, w->in_norm, c->hidden, c->eps);
        if (m->lt->attn == LT_ATTN_MLA) {
            mla_project(m, w, m->xb, 1, m->q, k, v, m->rope_cos, m->rope_sin, 0);
            m->step_bytes += mla_bytes(w);
        } else {
            float *o3[3] = {m->q, k, v};
            const qm_mat *w3[3] = {&w->q, &w->k, &w->v};
            qm_matvec_multi(m->team, 3, o3, w3, m->xb);
            qkv_prepare(m, w, m->q, k, v, m->rope_cos, m->rope_sin);
            m->step_bytes += qm_mat_bytes(w->q.dtype, w->q.rows, w->q.cols) +
                             qm_mat_bytes(w->k.dtype, w->k.rows, w->k.cols) +
                             qm_mat_bytes(w->v.dtype, w->v.rows, w->v.cols);
        }
        att_job aj = {m, l, 1};
        if (c->n_kv_heads > 1 && m->pos >= 64)
            team_run(m->team, attention_part, &aj);
        else
            attention_part(&aj, 0, 1);
        if (c->v_dim != hd)
            compact_heads(m->att_out, c->n_heads, hd, c->v_dim);
        qm_matvec(m->team, m->xb2, &w->o, m->att_out);
        m->step_bytes += qm_mat_bytes(w->o.dtype, w->o.rows, w->o.cols);
        for (int d = 0; d < c->hidden; d++)
            m->x[d] += m->xb2[d];
        model_rmsnorm(m->xb, m->x, w->post_norm, c->hidden, c->eps);
        if (c->is_moe[l]) {
            if (moe(m, l, token, err) != 0)
                return -1;
            if (w->shared) {
                float g = 1.0f;
                swiglu(m, &w->sgate, &w->sup, &w->sdown, m->xb2);
                if (w->sg.rows) {
                    qm_matvec(m->team, &g, &w->sg, m->xb);
                    m->step_bytes += qm_mat_bytes(w->sg.dtype, 1, c->hidden);
                    g = sigmoid(g);
                }
                for (int d = 0; d < c->hidden; d++)
                    m->x[d] += g * m->xb2[d];
            }
        } else {
            swiglu(m, &w->gate, &w->up, &w->down, m->xb2);
            for (int d = 0; d < c->hidden; d++)
                m->x[d] += m->xb2[d];
        }
    }
    m->pos++;
    if (logits) {
        model_rmsnorm(m->xb, m->x, m->final_norm, c->hidden, c->eps);
        qm_matvec(m->team, logits, &m->lm_head, m->xb);
        m->step_bytes += qm_mat_bytes(m->lm_head.dtype, c->vocab, c->hidden);
    }
    return 0;
}

/* ---- prefill: a micro-batch through each layer at once ----
 *
 * Every float operation of a token is the one model_step does, in the same
 * order (the matrix products are bit-identical to the matrix-vector ones,
 * the experts of a token are added in ascending id as in moe()), so the
 * KV cache, the logits and the router choices are exactly those of
 * feeding the tokens one by one; only the order of the work differs. */

/* Layer l's weights outside the routed experts; l == n_layers: lm_head
 * when the batch in flight needs logits. */
static void prefetch_dense(const model *m, int l)
{
    if (m->no_prefetch || l > m->c.n_layers)
        return;
    if (l == m->c.n_layers) {
        if (m->want_logits)
            prefetch_mat(m, &m->lm_head);
        return;
    }
    const layer_w *w = &m->layers[l];
    const qm_mat *mats[] = {&w->q, &w->k, &w->v, &w->qa, &w->qb, &w->kva, &w->kvb, &w->o,
                            &w->router, &w->sgate, &w->sup, &w->sdown, &w->sg,
                            &w->gate, &w->up, &w->down};
    for (size_t i = 0; i < sizeof mats / sizeof *mats; i++)
        prefetch_mat(m, mats[i]);
}

/* The routed experts of layer l for the n tokens of the batch: per
 * expert, in ascending id, gather the tokens routed to it, one product per
 * projection (its weights streamed once for all of them), SwiGLU, then add
 * each output times its routing weight to the token's sum. */
static int moe_batch(model *m, int l, int n, GError **err)
{
    const model_config *c = &m->c;
    int K = c->top_k, E = c->n_experts, H = c->hidden, I = c->moe_inter;
    int *top = m->ptop + (size_t)l * m->max_batch * K;
    float *topw = m->ptopw + (size_t)l * m->max_batch * K;
    qm_matmat(m->team, m->prl, E, &m->layers[l].router, m->pxb, H, n);
    for (int t = 0; t < n; t++)
        route_pick(m, &m->layers[l], m->prl + (size_t)t * E, top + (size_t)t * K,
                   topw + (size_t)t * K);
    /* counting sort of (token, expert) pairs by expert, tokens ascending */
    memset(m->pstart, 0, sizeof(int) * (E + 1));
    for (int i = 0; i < n * K; i++)
        m->pstart[top[i] + 1]++;
    for (int e = 0; e < E; e++)
        m->pstart[e + 1] += m->pstart[e];
    for (int i = 0; i < n * K; i++) {
        int at = m->pstart[top[i]]++;
        m->plist[at] = i / K;
        m->plw[at] = topw[i];
        m->ppair[at] = i;
    }
    for (int e = E; e > 0; e--)
        m->pstart[e] = m->pstart[e - 1];
    m->pstart[0] = 0;
    /* every expert the batch routes to, read ahead at once */
    int nused = 0;
    for (int e = 0; e < E; e++)
        if (m->pstart[e + 1] > m->pstart[e])
            m->pord[nused++] = e;
    expert_store_prefetch(m->store, l, m->pord, nused);
    prefetch_dense(m, l + 1);
    memset(m->pmoe, 0, sizeof(float) * n * H);
    for (int e = 0; e < E; e++) {
        int a = m->pstart[e], cnt = m->pstart[e + 1] - a;
        if (cnt == 0)
            continue;
        const expert_mats *em = expert_store_get(m->store, l, e, err);
        if (!em)
            return -1;
        for (int i = 0; i < cnt; i++)
            memcpy(m->pg + (size_t)i * H, m->pxb + (size_t)m->plist[a + i] * H,
                   sizeof(float) * H);
        float *o2[2] = {m->ph, m->ph2};
        int ld2[2] = {I, I};
        const qm_mat *w2[2] = {&em->gate, &em->up};
        qm_matmat_multi(m->team, 2, o2, ld2, w2, m->pg, H, cnt);
        for (size_t i = 0; i < (size_t)cnt * I; i++)
            m->ph[i] = silu(m->ph[i]) * m->ph2[i];
        qm_matmat(m->team, m->pg, H, &em->down, m->ph, I, cnt);
        float *norm = m->pnorm + (size_t)l * m->max_batch * K;
        for (int i = 0; m->router_fn && i < cnt; i++)
            norm[m->ppair[a + i]] = l2norm(m->pg + (size_t)i * H, H);
        for (int i = 0; i < cnt; i++) {
            float w = m->plw[a + i];
            const float *o = m->pg + (size_t)i * H;
            float *acc = m->pmoe + (size_t)m->plist[a + i] * H;
            for (int d = 0; d < H; d++)
                acc[d] += w * o[d];
        }
    }
    return 0;
}

/* The gated shared expert of a MoE layer for the n tokens of the batch,
 * added to the residual stream: the same operations as model_step's. */
static void shared_batch(model *m, const layer_w *w, int n)
{
    int H = m->c.hidden, I = w->sgate.rows;
    float *o2[2] = {m->ph, m->ph2};
    int ld2[2] = {I, I};
    const qm_mat *w2[2] = {&w->sgate, &w->sup};
    qm_matmat_multi(m->team, 2, o2, ld2, w2, m->pxb, H, n);
    for (size_t i = 0; i < (size_t)n * I; i++)
        m->ph[i] = silu(m->ph[i]) * m->ph2[i];
    qm_matmat(m->team, m->pxb2, H, &w->sdown, m->ph, I, n);
    if (w->sg.rows)
        qm_matmat(m->team, m->prl, 1, &w->sg, m->pxb, H, n);
    for (int t = 0; t < n; t++) {
        float g = w->sg.rows ? sigmoid(m->prl[t]) : 1.0f;
        for (int d = 0; d < H; d++)
            m->px[(size_t)t * H + d] += g * m->pxb2[(size_t)t * H + d];
    }
}

/* Feeds ids[0..n) (n <= max_batch, checked by the caller) at positions
 * pos..pos+n-1 through all layers, leaving the residual stream in px;
 * then reports the router choices token by token, as model_step would. */
static int forward_batch(model *m, const int *ids, int n, int logits, GError **err)
{
    const model_config *c = &m->c;
    int hd = c->head_dim, hh = hd / 2, kvd = c->n_kv_heads * hd, H = c->hidden;
    int qd = c->n_heads * hd;
    for (int t = 0; t < n; t++)
        prefetch_rows(m, &m->embed, ids[t], 1);
    for (int t = 0; t < n; t++) {
        qm_mat_row(&m->embed, ids[t], m->px + (size_t)t * H);
        for (int i = 0; i < hh; i++) {
            float f = (float)(m->pos + t) * m->inv_freq[i];
            m->pcos[(size_t)t * hh + i] = cosf(f);
            m->psin[(size_t)t * hh + i] = sinf(f);
        }
    }
    m->want_logits = logits;
    prefetch_dense(m, 0);
    for (int l = 0; l < c->n_layers; l++) {
        layer_w *w = &m->layers[l];
        size_t at = ((size_t)l * c->max_seq + m->pos) * kvd;
        float *k = m->kcache + at, *v = m->vcache + at;
        for (int t = 0; t < n; t++)
            model_rmsnorm(m->pxb + (size_t)t * H, m->px + (size_t)t * H, w->in_norm, H,
                          c->eps);
        if (m->lt->attn == LT_ATTN_MLA) {
            mla_project(m, w, m->pxb, n, m->pq, k, v, m->pcos, m->psin, hh);
        } else {
            float *o3[3] = {m->pq, k, v};
            int ld3[3] = {qd, kvd, kvd};
            const qm_mat *w3[3] = {&w->q, &w->k, &w->v};
            qm_matmat_multi(m->team, 3, o3, ld3, w3, m->pxb, H, n);
            for (int t = 0; t < n; t++)
                qkv_prepare(m, w, m->pq + (size_t)t * qd, k + (size_t)t * kvd,
                            v + (size_t)t * kvd, m->pcos + (size_t)t * hh,
                            m->psin + (size_t)t * hh);
        }
        att_job aj = {m, l, n};
        team_run(m->team, attention_batch_part, &aj);
        /* MLA: o_proj reads the values packed, n x H*v_dim */
        if (c->v_dim != hd)
            compact_heads(m->patt_out, n * c->n_heads, hd, c->v_dim);
        qm_matmat(m->team, m->pxb2, H, &w->o, m->patt_out, w->o.cols, n);
        for (size_t i = 0; i < (size_t)n * H; i++)
            m->px[i] += m->pxb2[i];
        for (int t = 0; t < n; t++)
            model_rmsnorm(m->pxb + (size_t)t * H, m->px + (size_t)t * H, w->post_norm, H,
                          c->eps);
        if (c->is_moe[l]) {
            if (moe_batch(m, l, n, err) != 0)
                return -1;
            for (size_t i = 0; i < (size_t)n * H; i++)
                m->px[i] += m->pmoe[i];
            if (w->shared)
                shared_batch(m, w, n);
        } else {
            int I = w->gate.rows;
            prefetch_dense(m, l + 1);
            float *o2[2] = {m->ph, m->ph2};
            int ld2[2] = {I, I};
            const qm_mat *w2[2] = {&w->gate, &w->up};
            qm_matmat_multi(m->team, 2, o2, ld2, w2, m->pxb, H, n);
            for (size_t i = 0; i < (size_t)n * I; i++)
                m->ph[i] = silu(m->ph[i]) * m->ph2[i];
            qm_matmat(m->team, m->pxb2, H, &w->down, m->ph, I, n);
            for (size_t i = 0; i < (size_t)n * H; i++)
                m->px[i] += m->pxb2[i];
        }
    }
    if (m->router_fn)
        for (int t = 0; t < n; t++)
            for (int l = 0; l < c->n_layers; l++) {
                if (!c->is_moe[l])
                    continue;
                size_t i = ((size_t)l * m->max_batch + t) * c->top_k;
                m->router_fn(m->router_user, 0, m->pos + t, ids[t], l, c->top_k, m->ptop + i,
                             m->ptopw + i, m->pnorm + i);
            }
    m->pos += n;
    return 0;
}

/* Logits of rows t0..t0+nt-1 of the last batch into out[nt x vocab]. */
static void batch_logits(model *m, int t0, int nt, float *out)
{
    const model_config *c = &m->c;
    for (int t = t0; t < t0 + nt; t++)
        model_rmsnorm(m->pxb + (size_t)t * c->hidden, m->px + (size_t)t * c->hidden,
                      m->final_norm, c->hidden, c->eps);
    qm_matmat(m->team, out, c->vocab, &m->lm_head, m->pxb + (size_t)t0 * c->hidden,
              c->hidden, nt);
}

/* The checks model_step makes for every token, for all of them first. */
static int feed_check(const model *m, const int *ids, int n, GError **err)
{
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= m->c.vocab) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "token id %d is outside the vocabulary [0, %d)", ids[t], m->c.vocab);
            return -1;
        }
    if (n > m->c.max_seq - m->pos) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "the sequence is longer than the context of %d tokens", m->c.max_seq);
        return -1;
    }
    return 0;
}

int model_feed(model *m, const int *ids, int n, model_logits which, float *logits,
               GError **err)
{
    if (n <= 0)
        return 0;
    if (feed_check(m, ids, n, err) != 0)
        return -1;
    for (int s = 0; s < n; s += m->max_batch) {
        int len = n - s < m->max_batch ? n - s : m->max_batch;
        int last = s + len == n;
        if (forward_batch(m, ids + s, len,
                          which == MODEL_LOGITS_ALL || (which == MODEL_LOGITS_LAST && last),
                          err) != 0)
            return -1;
        if (which == MODEL_LOGITS_ALL)
            batch_logits(m, 0, len, logits + (size_t)s * m->c.vocab);
        else if (which == MODEL_LOGITS_LAST && last)
            batch_logits(m, len - 1, 1, logits);
    }
    return 0;
}

int model_sequence_logits(model *m, const int *ids, int n, float *logits,
                          GError **err)
{
    model_reset(m);
    return model_feed(m, ids, n, MODEL_LOGITS_ALL, logits, err);
}

/* log sum exp(logits) - logits[id] */
static double nll_of(const float *logits, int vocab, int id)
{
    float mx = -INFINITY;
    for (int i = 0; i < vocab; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double s = 0;
    for (int i = 0; i < vocab; i++)
        s += exp((double)logits[i] - mx);
    return log(s) + mx - logits[id];
}

int model_nll(model *m, const int *ids, int n, double *nll, GError **err)
{
    if (n < 2) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "a likelihood needs at least 2 tokens, got %d", n);
        return -1;
    }
    model_reset(m);
    if (feed_check(m, ids, n - 1, err) != 0 || feed_check(m, ids + n - 1, 1, err) != 0)
        return -1;
    double sum = 0;
    for (int s = 0; s < n - 1; s += m->max_batch) {
        int len = n - 1 - s < m->max_batch ? n - 1 - s : m->max_batch;
        if (forward_batch(m, ids + s, len, 1, err) != 0)
            return -1;
        for (int t = 0; t < len; t += LOGIT_ROWS) {
            int nt = len - t < LOGIT_ROWS ? len - t : LOGIT_ROWS;
            batch_logits(m, t, nt, m->plg);
            for (int i = 0; i < nt; i++)
                sum += nll_of(m->plg + (size_t)i * m->c.vocab, m->c.vocab, ids[s + t + i + 1]);
        }
    }
    *nll = sum / (n - 1);
    return 0;
}

/* splitmix64: a small, well-mixed generator whose stream depends only on
 * the seed, so that --seed reproduces a sample anywhere. */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int pick(const float *logits, int vocab, const model_sampling *s, uint64_t *rng)
{
    int best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    if (!s || s->temperature <= 0)
        return best;
    double sum = 0, mx = logits[best];
    for (int i = 0; i < vocab; i++)
        sum += exp(((double)logits[i] - mx) / s->temperature);
    double r = (double)(next_rand(rng) >> 11) / 9007199254740992.0 * sum, acc = 0;
    for (int i = 0; i < vocab; i++) {
        acc += exp(((double)logits[i] - mx) / s->temperature);
        if (r < acc)
            return i;
    }
    return best;
}

int model_generate(model *m, const int *prompt, int n_prompt, int n_new,
                   const model_sampling *s, float *prompt_logits, int *out,
                   int *n_out, model_gen_stats *gs, GError **err)
{
    const model_config *c = &m->c;
    model_gen_stats local;
    if (!gs)
        gs = &local;
    memset(gs, 0, sizeof *gs);
    *n_out = 0;
    if (n_prompt < 1) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "the prompt is empty");
        return -1;
    }
    uint64_t rng = s ? s->seed : 0;
    model_reset(m);
    double t0 = qm_monotonic();
    if (prompt_logits ? model_feed(m, prompt, n_prompt, MODEL_LOGITS_ALL, prompt_logits, err)
                      : model_feed(m, prompt, n_prompt,
                                   n_new > 0 ? MODEL_LOGITS_LAST : MODEL_LOGITS_NONE,
                                   m->logits, err))
        return -1;
    if (prompt_logits && n_new > 0)
        memcpy(m->logits, prompt_logits + (size_t)(n_prompt - 1) * c->vocab,
               sizeof(float) * c->vocab);
    double t1 = qm_monotonic();
    gs->prefill_s = t1 - t0;
    for (int i = 0; i < n_new; i++) {
        int next = pick(m->logits, c->vocab, s, &rng);
        out[(*n_out)++] = next;
        int stop = 0;
        for (int j = 0; s && j < s->n_stop; j++)
            stop |= s->stop_ids[j] == next;
        if (s && s->on_token && s->on_token(s->user, next) != 0)
            stop = 1;
        if (stop || i + 1 == n_new)
            break;
        double ts = qm_monotonic();
        if (model_step(m, next, m->logits, err) != 0)
            return -1;
        if (gs->decode_steps < MODEL_STEP_TIMES)
            gs->step_s[gs->decode_steps] = qm_monotonic() - ts;
        gs->decode_steps++;
        gs->decode_weight_bytes += m->step_bytes;
        gs->decode_s = qm_monotonic() - t1;
    }
    return 0;
}
