/* mksample_model.c - the tensors and config.json of each family, at any size.
 *
 * Names, shapes and config keys follow the real Hugging Face checkpoints
 * (Qwen3-Omni-30B-A3B, Qwen3-30B-A3B, Mixtral-8x7B, Qwen1.5/2-MoE, OLMoE,
 * DeepSeek-V3 in bf16, GLM-4.5). The parts of Qwen3-Omni outside the thinker's text
 * model (audio tower, vision tower, talker, code2wav) are stubs of a few
 * tensors each, with the real prefixes, so that tools see what they must
 * leave alone (the talker has MoE experts of its own).
 */
#include "mksample.h"
#include "base/util.h"

#include <stdarg.h>
#include <string.h>

static int is(const ms_opts *o, const char *name)
{
    return strcmp(o->lt->name, name) == 0;
}

/* Appends one tensor: `ndim` dims follow, then a printf format for the name. */
static void add(GArray *plan, const ms_opts *o, ms_init init, st_dtype dt,
                int group, int ndim, ...)
{
    ms_tensor t = {0};
    va_list ap;
    va_start(ap, ndim);
    t.dtype = dt;
    t.ndim = ndim;
    uint64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        t.shape[d] = va_arg(ap, int64_t);
        n *= (uint64_t)t.shape[d];
    }
    const char *fmt = va_arg(ap, const char *);
    t.name = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    t.nbytes = n * st_dtype_bits(dt) / 8;
    t.init = init;
    t.group = group;
    t.last = 0;
    t.shard = -1;
    (void)o;
    g_array_append_val(plan, t);
}

/* Shorthands in the sample's dtype; names are printf formats. */
#define W1(d0, ...) add(plan, o, MS_WEIGHT, o->dtype, -1, 1, (int64_t)(d0), __VA_ARGS__)
#define N1(d0, ...) add(plan, o, MS_NORM, o->dtype, -1, 1, (int64_t)(d0), __VA_ARGS__)
#define W2(d0, d1, ...) \
    add(plan, o, MS_WEIGHT, o->dtype, -1, 2, (int64_t)(d0), (int64_t)(d1), __VA_ARGS__)
#define G2(g, d0, d1, ...) \
    add(plan, o, MS_WEIGHT, o->dtype, g, 2, (int64_t)(d0), (int64_t)(d1), __VA_ARGS__)

static void mark_last(GArray *plan)
{
    g_array_index(plan, ms_tensor, plan->len - 1).last = 1;
}

/* MLA sizes of the deepseek_v3 sample (real: 1536, 512, 128, 64, 128). */
static int ds_q_rank(const ms_opts *o) { return MAX(o->hidden / 2, 4); }
static int ds_kv_rank(const ms_opts *o) { return MAX(o->hidden / 4, 4); }
static int ds_rope(const ms_opts *o) { return MAX(o->head_dim / 2 & ~1, 2); }

/* Dense MLP size where a family has one (deepseek's first layers, qwen2's
 * shared expert); real models use a few times the expert size. */
static int dense_inter(const ms_opts *o) { return 4 * o->inter; }

static void attention(GArray *plan, const ms_opts *o, const char *p)
{
    int H = o->hidden, hd = o->head_dim;
    int q = o->heads * hd, kv = o->kv_heads * hd;
    if (is(o, "deepseek_v3")) {
        int qr = ds_q_rank(o), kvr = ds_kv_rank(o), rope = ds_rope(o);
        W2(qr, H, "%sself_attn.q_a_proj.weight", p);
        N1(qr, "%sself_attn.q_a_layernorm.weight", p);
        W2(o->heads * (hd + rope), qr, "%sself_attn.q_b_proj.weight", p);
        W2(kvr + rope, H, "%sself_attn.kv_a_proj_with_mqa.weight", p);
        N1(kvr, "%sself_attn.kv_a_layernorm.weight", p);
        W2(o->heads * (hd + hd), kvr, "%sself_attn.kv_b_proj.weight", p);
        W2(H, o->heads * hd, "%sself_attn.o_proj.weight", p);
        return;
    }
    /* as the layout computes them (GLM-4.5 has both: its config switches) */
    int bias = o->lt->qkv_bias;
    W2(q, H, "%sself_attn.q_proj.weight", p);
    if (bias)
        W1(q, "%sself_attn.q_proj.bias", p);
    W2(kv, H, "%sself_attn.k_proj.weight", p);
    if (bias)
        W1(kv, "%sself_attn.k_proj.bias", p);
    W2(kv, H, "%sself_attn.v_proj.weight", p);
    if (bias)
        W1(kv, "%sself_attn.v_proj.bias", p);
    W2(H, q, "%sself_attn.o_proj.weight", p);
    if (o->lt->qk_norm == LT_QK_FULL) { /* OLMoE normalises the whole projection */
        N1(q, "%sself_attn.q_norm.weight", p);
        N1(kv, "%sself_attn.k_norm.weight", p);
    } else if (o->lt->qk_norm == LT_QK_HEAD) {
        N1(hd, "%sself_attn.q_norm.weight", p);
        N1(hd, "%sself_attn.k_norm.weight", p);
    }
}

/* Routed experts of one layer, each a group so that shard boundaries can be
 * placed inside one. Projections in module definition order. */
static void experts(GArray *plan, const ms_opts *o, const char *p, int l)
{
    const layout *lt = o->lt;
    int H = o->hidden, I = o->inter, E = o->experts;
    if (lt->fused) {
        add(plan, o, MS_WEIGHT, o->dtype, l, 3, (int64_t)E, (int64_t)2 * I, (int64_t)H,
            "%s%sgate_up_proj", p, lt->experts);
        add(plan, o, MS_WEIGHT, o->dtype, l, 3, (int64_t)E, (int64_t)H, (int64_t)I,
            "%s%sdown_proj", p, lt->experts);
        mark_last(plan);
        return;
    }
    for (int e = 0; e < E; e++) {
        int g = l * E + e;
        const char *x = lt->experts;
        if (is(o, "mixtral")) { /* w1 gate, w2 down, w3 up */
            G2(g, I, H, "%s%s%d.w1.weight", p, x, e);
            G2(g, H, I, "%s%s%d.w2.weight", p, x, e);
            G2(g, I, H, "%s%s%d.w3.weight", p, x, e);
        } else {
            G2(g, I, H, "%s%s%d.gate_proj.weight", p, x, e);
            G2(g, I, H, "%s%s%d.up_proj.weight", p, x, e);
            G2(g, H, I, "%s%s%d.down_proj.weight", p, x, e);
        }
        mark_last(plan);
    }
}

static void mlp(GArray *plan, const ms_opts *o, const char *p, int l)
{
    int H = o->hidden, I = o->inter, E = o->experts;
    if (l < o->n_dense) {
        int D = dense_inter(o);
        W2(D, H, "%smlp.gate_proj.weight", p);
        W2(D, H, "%smlp.up_proj.weight", p);
        W2(H, D, "%smlp.down_proj.weight", p);
        return;
    }
    if (o->lt->score == LT_SCORE_SIGMOID_GROUPED) { /* deepseek_v3, glm4_moe */
        experts(plan, o, p, l);
        W2(E, H, "%smlp.gate.weight", p);
        /* stored in float32 in the real checkpoint */
        add(plan, o, MS_WEIGHT, ST_F32, -1, 1, (int64_t)E,
            "%smlp.gate.e_score_correction_bias", p);
        W2(I, H, "%smlp.shared_experts.gate_proj.weight", p);
        W2(I, H, "%smlp.shared_experts.up_proj.weight", p);
        W2(H, I, "%smlp.shared_experts.down_proj.weight", p);
        return;
    }
    if (is(o, "mixtral")) {
        W2(E, H, "%sblock_sparse_moe.gate.weight", p);
        experts(plan, o, p, l);
        return;
    }
    W2(E, H, "%smlp.gate.weight", p);
    experts(plan, o, p, l);
    if (is(o, "qwen2_moe")) {
        int S = dense_inter(o);
        W2(S, H, "%smlp.shared_expert.gate_proj.weight", p);
        W2(S, H, "%smlp.shared_expert.up_proj.weight", p);
        W2(H, S, "%smlp.shared_expert.down_proj.weight", p);
        W2(1, H, "%smlp.shared_expert_gate.weight", p);
    }
}

/* Sizes of the Omni stubs (real: audio d_model 1280, vision 1152, talker
 * hidden 1024 with 128 experts, code2wav 1024). */
enum { AU_D = 32, AU_FFN = 64, AU_MEL = 16, AU_DS = 8,
       VI_D = 32, VI_FFN = 64, VI_PATCH = 4, VI_POS = 16,
       TK_H = 32, TK_HEADS = 2, TK_KV = 1, TK_HD = 16, TK_E = 4, TK_I = 16,
       TK_S = 32, TK_LAYERS = 2, TK_VOCAB = 64,
       C2W_D = 32, C2W_BOOK = 64, C2W_NQ = 4 };

static void omni_audio_visual(GArray *plan, const ms_opts *o)
{
    const char *a = "thinker.audio_tower.";
    add(plan, o, MS_WEIGHT, o->dtype, -1, 4, (int64_t)AU_DS, (int64_t)1, (int64_t)3,
        (int64_t)3, "%sconv2d1.weight", a);
    W1(AU_DS, "%sconv2d1.bias", a);
    W2(AU_D, AU_DS * (AU_MEL / 8), "%sconv_out.weight", a);
    W2(AU_D, AU_D, "%slayers.0.self_attn.q_proj.weight", a);
    W2(AU_D, AU_D, "%slayers.0.self_attn.k_proj.weight", a);
    W2(AU_D, AU_D, "%slayers.0.self_attn.v_proj.weight", a);
    W2(AU_D, AU_D, "%slayers.0.self_attn.out_proj.weight", a);
    N1(AU_D, "%slayers.0.self_attn_layer_norm.weight", a);
    W2(AU_FFN, AU_D, "%slayers.0.fc1.weight", a);
    W2(AU_D, AU_FFN, "%slayers.0.fc2.weight", a);
    N1(AU_D, "%slayers.0.final_layer_norm.weight", a);
    N1(AU_D, "%sln_post.weight", a);
    W2(AU_D, AU_D, "%sproj1.weight", a);
    W2(o->hidden, AU_D, "%sproj2.weight", a);

    const char *v = "thinker.visual.";
    add(plan, o, MS_WEIGHT, o->dtype, -1, 5, (int64_t)VI_D, (int64_t)3, (int64_t)2,
        (int64_t)VI_PATCH, (int64_t)VI_PATCH, "%spatch_embed.proj.weight", v);
    W1(VI_D, "%spatch_embed.proj.bias", v);
    W2(VI_POS, VI_D, "%spos_embed.weight", v);
    N1(VI_D, "%sblocks.0.norm1.weight", v);
    W2(3 * VI_D, VI_D, "%sblocks.0.attn.qkv.weight", v);
    W2(VI_D, VI_D, "%sblocks.0.attn.proj.weight", v);
    N1(VI_D, "%sblocks.0.norm2.weight", v);
    W2(VI_FFN, VI_D, "%sblocks.0.mlp.linear_fc1.weight", v);
    W2(VI_D, VI_FFN, "%sblocks.0.mlp.linear_fc2.weight", v);
    N1(VI_D, "%smerger.ln_q.weight", v);
    W2(4 * VI_D, 4 * VI_D, "%smerger.mlp.0.weight", v);
    W2(o->hidden, 4 * VI_D, "%smerger.mlp.2.weight", v);
}

static void omni_talker_code2wav(GArray *plan, const ms_opts *o)
{
    W2(TK_H, o->hidden, "talker.text_projection.linear_fc1.weight");
    W2(TK_H, TK_H, "talker.text_projection.linear_fc2.weight");
    W2(TK_H, o->hidden, "talker.hidden_projection.linear_fc1.weight");
    W2(TK_H, TK_H, "talker.hidden_projection.linear_fc2.weight");
    W2(TK_VOCAB, TK_H, "talker.model.codec_embedding.weight");
    for (int l = 0; l < TK_LAYERS; l++) {
        char *p = g_strdup_printf("talker.model.layers.%d.", l);
        int q = TK_HEADS * TK_HD, kv = TK_KV * TK_HD;
        W2(q, TK_H, "%sself_attn.q_proj.weight", p);
        W2(kv, TK_H, "%sself_attn.k_proj.weight", p);
        W2(kv, TK_H, "%sself_attn.v_proj.weight", p);
        W2(TK_H, q, "%sself_attn.o_proj.weight", p);
        N1(TK_HD, "%sself_attn.q_norm.weight", p);
        N1(TK_HD, "%sself_attn.k_norm.weight", p);
        W2(TK_E, TK_H, "%smlp.gate.weight", p);
        for (int e = 0; e < TK_E; e++) {
            W2(TK_I, TK_H, "%smlp.experts.%d.gate_proj.weight", p, e);
            W2(TK_I, TK_H, "%smlp.experts.%d.up_proj.weight", p, e);
            W2(TK_H, TK_I, "%smlp.experts.%d.down_proj.weight", p, e);
        }
        W2(TK_S, TK_H, "%smlp.shared_expert.gate_proj.weight", p);
        W2(TK_S, TK_H, "%smlp.shared_expert.up_proj.weight", p);
        W2(TK_H, TK_S, "%smlp.shared_expert.down_proj.weight", p);
        W2(1, TK_H, "%smlp.shared_expert_gate.weight", p);
        N1(TK_H, "%sinput_layernorm.weight", p);
        N1(TK_H, "%spost_attention_layernorm.weight", p);
        g_free(p);
    }
    N1(TK_H, "talker.model.norm.weight");
    W2(TK_VOCAB, TK_H, "talker.codec_head.weight");

    W2(C2W_BOOK * C2W_NQ, C2W_D, "code2wav.code_embedding.weight");
    W2(C2W_D, C2W_D, "code2wav.pre_transformer.layers.0.self_attn.q_proj.weight");
    N1(C2W_D, "code2wav.pre_transformer.norm.weight");
    add(plan, o, MS_WEIGHT, o->dtype, -1, 3, (int64_t)C2W_D, (int64_t)C2W_D, (int64_t)2,
        "code2wav.upsample.0.0.conv.weight");
    add(plan, o, MS_WEIGHT, o->dtype, -1, 3, (int64_t)1, (int64_t)C2W_D, (int64_t)7,
        "code2wav.decoder.6.conv.weight");
}

int ms_fp8_quantised(const ms_opts *o, const char *name)
{
    if (!g_str_has_suffix(name, ".weight") || strstr(name, "embed_tokens") ||
        g_str_has_prefix(name, o->lt->lm_head) || g_str_has_suffix(name, ".gate.weight") ||
        g_str_has_suffix(name, "shared_expert_gate.weight"))
        return 0;
    return 1;
}

/* --fp8: each quantised weight becomes F8_E4M3 and is followed by its
 * scale grid, `<module>.weight_scale_inv`, in the same group (so an expert
 * keeps its scales when a shard cut moves). */
static void fp8_rewrite(const ms_opts *o, GArray *plan)
{
    GArray *in = g_array_sized_new(FALSE, TRUE, sizeof(ms_tensor), plan->len);
    g_array_append_vals(in, plan->data, plan->len);
    g_array_set_size(plan, 0);
    for (guint i = 0; i < in->len; i++) {
        ms_tensor t = g_array_index(in, ms_tensor, i);
        if (t.ndim != 2 || t.dtype != o->dtype || !ms_fp8_quantised(o, t.name)) {
            g_array_append_val(plan, t);
            continue;
        }
        ms_tensor s = t;
        int last = t.last;
        t.dtype = ST_F8_E4M3;
        t.nbytes = (uint64_t)t.shape[0] * (uint64_t)t.shape[1];
        t.last = 0;
        g_array_append_val(plan, t);
        s.name = g_strdup_printf("%s_scale_inv", t.name);
        s.dtype = o->fp8_scale;
        s.shape[0] = (t.shape[0] + o->fp8_block[0] - 1) / o->fp8_block[0];
        s.shape[1] = (t.shape[1] + o->fp8_block[1] - 1) / o->fp8_block[1];
        s.nbytes = (uint64_t)s.shape[0] * (uint64_t)s.shape[1] * st_dtype_bits(s.dtype) / 8;
        s.init = MS_SCALE;
        s.last = last;
        g_array_append_val(plan, s);
    }
    g_array_free(in, TRUE);
}

void ms_plan_build(const ms_opts *o, GArray *plan)
{
    const layout *lt = o->lt;
    int omni = is(o, "qwen3_omni_moe");
    if (omni)
        omni_audio_visual(plan, o);
    W2(o->vocab, o->hidden, "%sembed_tokens.weight", lt->root);
    for (int l = 0; l < o->layers; l++) {
        char *p = g_strdup_printf("%slayers.%d.", lt->root, l);
        attention(plan, o, p);
        mlp(plan, o, p, l);
        N1(o->hidden, "%sinput_layernorm.weight", p);
        N1(o->hidden, "%spost_attention_layernorm.weight", p);
        g_free(p);
    }
    N1(o->hidden, "%snorm.weight", lt->root);
    W2(o->vocab, o->hidden, "%sweight", lt->lm_head);
    if (omni)
        omni_talker_code2wav(plan, o);
    if (o->fp8)
        fp8_rewrite(o, plan);
}

void ms_plan_free(GArray *plan)
{
    if (!plan)
        return;
    for (guint i = 0; i < plan->len; i++)
        g_free(g_array_index(plan, ms_tensor, i).name);
    g_array_free(plan, TRUE);
}

/* ---- config.json ---- */

static const char *dtype_word(st_dtype t)
{
    return t == ST_F32 ? "float32" : t == ST_F16 ? "float16" : "bfloat16";
}

static void num(cJSON *j, const char *k, double v) { cJSON_AddNumberToObject(j, k, v); }
static void str(cJSON *j, const char *k, const char *v) { cJSON_AddStringToObject(j, k, v); }
static void boolean(cJSON *j, const char *k, int v) { cJSON_AddBoolToObject(j, k, v); }
static void null(cJSON *j, const char *k) { cJSON_AddNullToObject(j, k); }

static void int_array(cJSON *j, const char *k, const int *v, int n)
{
    cJSON *a = cJSON_AddArrayToObject(j, k);
    for (int i = 0; i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
}

static void architectures(cJSON *j, const char *arch)
{
    cJSON *a = cJSON_AddArrayToObject(j, "architectures");
    cJSON_AddItemToArray(a, cJSON_CreateString(arch));
}

/* Hugging Face writes configs with sorted keys; so do we, recursively. */
static void sort_keys(cJSON *j)
{
    if (!cJSON_IsObject(j) && !cJSON_IsArray(j))
        return;
    int n = 0;
    for (cJSON *c = j->child; c; c = c->next, n++)
        sort_keys(c);
    if (!cJSON_IsObject(j) || n < 2)
        return;
    cJSON **v = g_new(cJSON *, n);
    int i = 0;
    for (cJSON *c = j->child; c; c = c->next)
        v[i++] = c;
    for (i = 1; i < n; i++) /* insertion sort: configs are small */
        for (int k = i; k > 0 && strcmp(v[k - 1]->string, v[k]->string) > 0; k--) {
            cJSON *t = v[k];
            v[k] = v[k - 1];
            v[k - 1] = t;
        }
    for (i = 0; i < n; i++) {
        v[i]->prev = i ? v[i - 1] : v[n - 1]; /* cJSON: child->prev is the tail */
        v[i]->next = i + 1 < n ? v[i + 1] : NULL;
    }
    j->child = v[0];
    g_free(v);
}

/* Keys every family shares. */
static void common_text(cJSON *j, const ms_opts *o, const ms_tok *t)
{
    num(j, "bos_token_id", t->endoftext);
    num(j, "eos_token_id", t->im_end);
    str(j, "hidden_act", "silu");
    num(j, "hidden_size", o->hidden);
    num(j, "initializer_range", 0.02);
    num(j, "max_position_embeddings", 32768);
    num(j, "num_attention_heads", o->heads);
    num(j, "num_hidden_layers", o->layers);
    num(j, "num_key_value_heads", o->kv_heads);
    num(j, "num_experts_per_tok", o->topk);
    boolean(j, "output_router_logits", 0);
    boolean(j, "tie_word_embeddings", 0);
    str(j, "torch_dtype", dtype_word(o->dtype));
    boolean(j, "use_cache", 1);
    num(j, "vocab_size", o->vocab);
    num(j, "attention_dropout", 0.0);
}

/* Qwen3-MoE text keys (also the Omni thinker's text_config). */
static void qwen3_text(cJSON *j, const ms_opts *o, const ms_tok *t)
{
    common_text(j, o, t);
    boolean(j, "attention_bias", 0);
    num(j, "decoder_sparse_step", 1);
    num(j, "head_dim", o->head_dim);
    num(j, "intermediate_size", 8 * o->inter);
    num(j, "max_window_layers", o->layers);
    cJSON_AddArrayToObject(j, "mlp_only_layers");
    num(j, "moe_intermediate_size", o->inter);
    boolean(j, "norm_topk_prob", 1);
    num(j, "num_experts", o->experts);
    num(j, "rms_norm_eps", 1e-6);
    num(j, "rope_theta", 1000000.0);
    num(j, "router_aux_loss_coef", 0.001);
    null(j, "sliding_window");
    boolean(j, "use_sliding_window", 0);
}

static cJSON *omni_config(const ms_opts *o, const ms_tok *t)
{
    cJSON *j = cJSON_CreateObject();
    architectures(j, "Qwen3OmniMoeForConditionalGeneration");
    str(j, "model_type", "qwen3_omni_moe");
    boolean(j, "enable_audio_output", 1);
    num(j, "im_start_token_id", t->im_start);
    num(j, "im_end_token_id", t->im_end);
    boolean(j, "tie_word_embeddings", 0);
    str(j, "transformers_version", "4.57.0");

    cJSON *th = cJSON_AddObjectToObject(j, "thinker_config");
    str(th, "model_type", "qwen3_omni_moe_thinker");
    int sp = t->im_end + 1; /* the added tokens after <|im_end|> */
    num(th, "audio_start_token_id", sp + 0);
    num(th, "audio_end_token_id", sp + 1);
    num(th, "vision_start_token_id", sp + 2);
    num(th, "vision_end_token_id", sp + 3);
    num(th, "image_token_id", sp + 4);
    num(th, "video_token_id", sp + 5);
    num(th, "audio_token_id", sp + 6);
    num(th, "position_id_per_seconds", 13);
    num(th, "seconds_per_chunk", 2);
    num(th, "initializer_range", 0.02);
    str(th, "torch_dtype", dtype_word(o->dtype));
    boolean(th, "tie_word_embeddings", 0);

    cJSON *tc = cJSON_AddObjectToObject(th, "text_config");
    qwen3_text(tc, o, t);
    str(tc, "model_type", "qwen3_omni_moe_text");
    num(tc, "shared_expert_intermediate_size", 0);
    boolean(tc, "use_qk_norm", 1);
    /* M-RoPE over (time, height, width); the sections add up to head_dim / 2
     * in the real ratio 24:20:20. */
    int half = o->head_dim / 2, hw = half * 20 / 64;
    int sec[3] = {half - 2 * hw, hw, hw};
    cJSON *rs = cJSON_AddObjectToObject(tc, "rope_scaling");
    boolean(rs, "interleaved", 1);
    boolean(rs, "mrope_interleaved", 1);
    int_array(rs, "mrope_section", sec, 3);
    str(rs, "rope_type", "default");
    str(rs, "type", "default");

    cJSON *au = cJSON_AddObjectToObject(th, "audio_config");
    str(au, "model_type", "qwen3_omni_moe_audio_encoder");
    num(au, "d_model", AU_D);
    num(au, "encoder_layers", 1);
    num(au, "encoder_attention_heads", 2);
    num(au, "encoder_ffn_dim", AU_FFN);
    num(au, "num_mel_bins", AU_MEL);
    num(au, "downsample_hidden_size", AU_DS);
    num(au, "output_dim", o->hidden);

    cJSON *vi = cJSON_AddObjectToObject(th, "vision_config");
    str(vi, "model_type", "qwen3_omni_moe_vision_encoder");
    num(vi, "depth", 1);
    num(vi, "hidden_size", VI_D);
    num(vi, "intermediate_size", VI_FFN);
    num(vi, "num_heads", 2);
    num(vi, "out_hidden_size", o->hidden);
    num(vi, "num_position_embeddings", VI_POS);
    num(vi, "patch_size", VI_PATCH);
    num(vi, "spatial_merge_size", 2);
    num(vi, "temporal_patch_size", 2);
    int deep[1] = {0};
    int_array(vi, "deepstack_visual_indexes", deep, 1);

    cJSON *tk = cJSON_AddObjectToObject(j, "talker_config");
    str(tk, "model_type", "qwen3_omni_moe_talker");
    num(tk, "thinker_hidden_size", o->hidden);
    cJSON *ttc = cJSON_AddObjectToObject(tk, "text_config");
    str(ttc, "model_type", "qwen3_omni_moe_talker_text");
    num(ttc, "hidden_size", TK_H);
    num(ttc, "num_hidden_layers", TK_LAYERS);
    num(ttc, "num_attention_heads", TK_HEADS);
    num(ttc, "num_key_value_heads", TK_KV);
    num(ttc, "head_dim", TK_HD);
    num(ttc, "num_experts", TK_E);
    num(ttc, "num_experts_per_tok", 2);
    num(ttc, "moe_intermediate_size", TK_I);
    num(ttc, "shared_expert_intermediate_size", TK_S);
    num(ttc, "vocab_size", TK_VOCAB);
    num(ttc, "rms_norm_eps", 1e-6);

    cJSON *cw = cJSON_AddObjectToObject(j, "code2wav_config");
    str(cw, "model_type", "qwen3_omni_moe_code2wav");
    num(cw, "hidden_size", C2W_D);
    num(cw, "codebook_size", C2W_BOOK);
    num(cw, "num_quantizers", C2W_NQ);
    num(cw, "num_hidden_layers", 1);
    return j;
}

/* quantization_config as the FP8 releases write it: DeepSeek-V3's four
 * keys; Qwen3-FP8's adds modules_to_not_convert (lm_head and every
 * layer's router). */
static void fp8_config(cJSON *j, const ms_opts *o)
{
    cJSON *q = cJSON_AddObjectToObject(j, "quantization_config");
    str(q, "activation_scheme", "dynamic");
    str(q, "fmt", "e4m3");
    str(q, "quant_method", "fp8");
    int_array(q, "weight_block_size", o->fp8_block, 2);
    if (is(o, "deepseek_v3"))
        return;
    cJSON *m = cJSON_AddArrayToObject(q, "modules_to_not_convert");
    cJSON_AddItemToArray(m, cJSON_CreateString("lm_head"));
    const char *gate = is(o, "mixtral") ? "block_sparse_moe.gate" : "mlp.gate";
    for (int l = 0; l < o->layers; l++) {
        if (l < o->n_dense)
            continue; /* no router in a dense layer */
        char *name = g_strdup_printf("%slayers.%d.%s", o->lt->root, l, gate);
        cJSON_AddItemToArray(m, cJSON_CreateString(name));
        g_free(name);
    }
}

/* --rope yarn: DeepSeek-V3's rope_scaling (with its 163840 positions) or
 * the transformers form Qwen3's model card asks users to add. */
static void yarn_config(cJSON *j, const ms_opts *o)
{
    cJSON_DeleteItemFromObjectCaseSensitive(j, "rope_scaling");
    cJSON *r = cJSON_AddObjectToObject(j, "rope_scaling");
    if (is(o, "deepseek_v3")) {
        num(r, "beta_fast", 32);
        num(r, "beta_slow", 1);
        num(r, "factor", 40);
        num(r, "mscale", 1.0);
        num(r, "mscale_all_dim", 1.0);
        num(r, "original_max_position_embeddings", 4096);
        str(r, "type", "yarn");
        cJSON_ReplaceItemInObjectCaseSensitive(j, "max_position_embeddings",
                                               cJSON_CreateNumber(163840));
        return;
    }
    str(r, "rope_type", "yarn");
    num(r, "factor", 4.0);
    num(r, "original_max_position_embeddings", 32768);
}

cJSON *ms_config_json(const ms_opts *o, const ms_tok *t)
{
    cJSON *j;
    if (is(o, "qwen3_omni_moe")) {
        j = omni_config(o, t);
        sort_keys(j);
        return j;
    }
    j = cJSON_CreateObject();
    str(j, "transformers_version", "4.57.0");
    if (is(o, "qwen3_moe") || is(o, "qwen3_moe_fused")) {
        architectures(j, "Qwen3MoeForCausalLM");
        str(j, "model_type", "qwen3_moe");
        qwen3_text(j, o, t);
        null(j, "rope_scaling");
    } else if (is(o, "mixtral")) {
        architectures(j, "MixtralForCausalLM");
        str(j, "model_type", "mixtral");
        common_text(j, o, t);
        num(j, "head_dim", o->head_dim);
        num(j, "intermediate_size", o->inter);
        num(j, "num_local_experts", o->experts);
        num(j, "rms_norm_eps", 1e-5);
        num(j, "rope_theta", 1000000.0);
        num(j, "router_aux_loss_coef", 0.02);
        num(j, "router_jitter_noise", 0.0);
        null(j, "sliding_window");
    } else if (is(o, "qwen2_moe")) {
        architectures(j, "Qwen2MoeForCausalLM");
        str(j, "model_type", "qwen2_moe");
        common_text(j, o, t);
        num(j, "decoder_sparse_step", 1);
        num(j, "intermediate_size", dense_inter(o));
        num(j, "max_window_layers", o->layers);
        cJSON_AddArrayToObject(j, "mlp_only_layers");
        num(j, "moe_intermediate_size", o->inter);
        boolean(j, "norm_topk_prob", 0);
        num(j, "num_experts", o->experts);
        num(j, "rms_norm_eps", 1e-6);
        num(j, "rope_theta", 1000000.0);
        num(j, "router_aux_loss_coef", 0.001);
        num(j, "shared_expert_intermediate_size", dense_inter(o));
        num(j, "sliding_window", 32768);
        boolean(j, "use_sliding_window", 0);
    } else if (is(o, "olmoe")) {
        architectures(j, "OlmoeForCausalLM");
        str(j, "model_type", "olmoe");
        common_text(j, o, t);
        num(j, "pad_token_id", t->endoftext);
        boolean(j, "attention_bias", 0);
        null(j, "clip_qkv");
        num(j, "intermediate_size", o->inter);
        boolean(j, "norm_topk_prob", 0);
        num(j, "num_experts", o->experts);
        num(j, "rms_norm_eps", 1e-5);
        num(j, "rope_theta", 10000.0);
        null(j, "rope_scaling");
        num(j, "router_aux_loss_coef", 0.01);
    } else if (is(o, "glm4_moe")) { /* GLM-4.5's keys (GLM-4.5-Air: use_qk_norm false) */
        architectures(j, "Glm4MoeForCausalLM");
        str(j, "model_type", "glm4_moe");
        common_text(j, o, t);
        num(j, "pad_token_id", t->endoftext);
        boolean(j, "attention_bias", 1);
        num(j, "first_k_dense_replace", o->n_dense);
        num(j, "head_dim", o->head_dim);
        num(j, "intermediate_size", dense_inter(o));
        num(j, "moe_intermediate_size", o->inter);
        num(j, "n_group", 1);
        num(j, "n_routed_experts", o->experts);
        num(j, "n_shared_experts", 1);
        boolean(j, "norm_topk_prob", 1);
        num(j, "num_nextn_predict_layers", 0);
        num(j, "partial_rotary_factor", 0.5);
        num(j, "rms_norm_eps", 1e-5);
        null(j, "rope_scaling");
        num(j, "rope_theta", 1000000.0);
        num(j, "routed_scaling_factor", 2.5);
        num(j, "topk_group", 1);
        boolean(j, "use_qk_norm", 1);
    } else { /* deepseek_v3 */
        architectures(j, "DeepseekV3ForCausalLM");
        str(j, "model_type", "deepseek_v3");
        common_text(j, o, t);
        cJSON_ReplaceItemInObjectCaseSensitive(j, "num_key_value_heads",
                                               cJSON_CreateNumber(o->heads));
        boolean(j, "attention_bias", 0);
        num(j, "first_k_dense_replace", o->n_dense);
        num(j, "intermediate_size", dense_inter(o));
        num(j, "kv_lora_rank", ds_kv_rank(o));
        num(j, "moe_intermediate_size", o->inter);
        num(j, "moe_layer_freq", 1);
        num(j, "n_group", 1);
        num(j, "n_routed_experts", o->experts);
        num(j, "n_shared_experts", 1);
        boolean(j, "norm_topk_prob", 1);
        num(j, "num_nextn_predict_layers", 0);
        num(j, "q_lora_rank", ds_q_rank(o));
        num(j, "qk_nope_head_dim", o->head_dim);
        num(j, "qk_rope_head_dim", ds_rope(o));
        num(j, "rms_norm_eps", 1e-6);
        null(j, "rope_scaling");
        num(j, "rope_theta", 10000.0);
        num(j, "routed_scaling_factor", 2.5);
        str(j, "scoring_func", "sigmoid");
        num(j, "topk_group", 1);
        str(j, "topk_method", "noaux_tc");
        num(j, "v_head_dim", o->head_dim);
    }
    if (o->fp8)
        fp8_config(j, o);
    if (o->yarn)
        yarn_config(j, o);
    sort_keys(j);
    return j;
}

cJSON *ms_generation_config_json(const ms_opts *o, const ms_tok *t)
{
    (void)o;
    cJSON *j = cJSON_CreateObject();
    num(j, "bos_token_id", t->endoftext);
    int eos[2] = {t->im_end, t->endoftext};
    int_array(j, "eos_token_id", eos, 2);
    num(j, "pad_token_id", t->endoftext);
    boolean(j, "do_sample", 0);
    str(j, "transformers_version", "4.57.0");
    sort_keys(j);
    return j;
}
