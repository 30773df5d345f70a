/* layout.h - where each model family keeps its experts.
 *
 * A layout is a table entry, not code: the tensor-name prefix of the text
 * model, the path to the routed experts inside a layer, the names of the
 * expert projections, the config keys that give counts and sizes. Adding a
 * family means adding a row to the table in layout.c.
 *
 * The same entry says how the family computes its parts where families
 * differ (the fields after `fused`): the router's name, q/k norms, q/k/v
 * biases, a gated shared expert, renormalisation, partial RoPE; the forward
 * pass (common/model/) branches on them, so a family is a row here, not a
 * copy of the forward pass. A field left out of a row is 0 or NULL (C's
 * designated initializers): every new field must mean "as before" at 0.
 *
 * Every tensor of a checkpoint is classified as one of:
 *   EXPERT  one routed expert E of layer L   -> experts/expert_EEE_layer_LL
 *   FUSED   all experts of layer L stacked along dim 0 (sliced per expert)
 *   LAYER   the rest of layer L (attention, norms, router, shared experts)
 *   GLOBAL  embeddings, final norm, lm_head  -> globals.safetensors
 *   OTHER   outside the text model (audio_tower, visual, talker, code2wav)
 */
#ifndef QMOE_LAYOUT_H
#define QMOE_LAYOUT_H

#include <cjson/cJSON.h>
#include <glib.h>
#include <stdint.h>

#include "format/checkpoint.h"

typedef enum { LT_EXPERT, LT_FUSED, LT_LAYER, LT_GLOBAL, LT_OTHER } lt_kind;

enum { LT_GATE, LT_UP, LT_DOWN }; /* order of layout.proj[] */

/* Where a family normalises queries and keys (before RoPE):
 * per head with a [head_dim] weight (Qwen3), over the whole projection
 * with a [heads * head_dim] weight (OLMoE), or not at all. */
typedef enum { LT_QK_NONE, LT_QK_HEAD, LT_QK_FULL } lt_qk_norm;

/* Attention: grouped-query heads from q/k/v_proj, or DeepSeek's
 * multi-head latent attention (q_a/q_b, kv_a_proj_with_mqa, kv_b). */
typedef enum { LT_ATTN_GQA, LT_ATTN_MLA } lt_attn;

/* Router scoring: softmax then top-k; or DeepSeek-V3's sigmoid with
 * e_score_correction_bias for the choice only, group-limited top-k and
 * routed_scaling_factor. */
typedef enum { LT_SCORE_SOFTMAX, LT_SCORE_SIGMOID_GROUPED } lt_score;

typedef struct {
    const char *name;         /* "qwen3_omni_moe" */
    const char *model_types;  /* space-separated config model_type values */
    const char *text_config;  /* dotted path of the text config, "" = top */
    const char *root;         /* text model prefix: "thinker.model." */
    const char *lm_head;      /* "thinker.lm_head." */
    const char *experts;      /* inside "layers.L.": "mlp.experts." */
    const char *proj[3];      /* gate, up, down names: "gate_proj", ... */
    const char *count_keys;   /* config keys for experts per layer */
    const char *inter_key;    /* config key of the expert intermediate size */
    const char *mtp_key;      /* config key of the multi-token-prediction layers
                                 stored after the decoder's, or NULL */
    int fused;                /* experts stored stacked: "<experts><proj>" */
    int norm_topk_default;    /* Hugging Face default for norm_topk_prob */
    /* How the family computes (the forward pass, common/model/). */
    int forward;              /* the forward pass implements this family */
    int norm_topk_fixed;      /* norm_topk_default always (Mixtral: no key) */
    const char *router;       /* inside "layers.L.": "mlp.gate" */
    lt_qk_norm qk_norm;       /* RMSNorm of q and k before RoPE */
    int qkv_bias;             /* q/k/v projections have biases */
    const char *shared;       /* inside "layers.L.": "mlp.shared_expert", or NULL */
    const char *shared_gate;  /* sigmoid gate of the shared expert, or NULL */
    const char *shared_inter_key; /* its width, or NULL: */
    const char *shared_count_key; /* this many expert widths ("n_shared_experts") */
    lt_attn attn;
    lt_score score;
    /* Switched by the config: the bool key that turns qk_norm or qkv_bias
     * on (GLM-4.5: "use_qk_norm", "attention_bias"; absent = false, as HF
     * defaults them), or NULL: the row's value always holds. */
    const char *qk_norm_key;
    const char *qkv_bias_key;
    /* RoPE rotates only the first int(head_dim * partial_rotary_factor)
     * dims of each head, rotate-half within them, and passes the rest
     * (GLM-4.5: 0.5); 0: partial_rotary_factor other than 1 is refused. */
    int partial_rotary;
} layout;

typedef struct {
    lt_kind kind;
    int layer;   /* -1 for GLOBAL/OTHER */
    int expert;  /* EXPERT only, else -1 */
    int proj;    /* LT_GATE/UP/DOWN for expert weights, -1 otherwise */
} lt_class;

/* What qmoe accepts from a config (or tensor names): far above any real
 * model (Qwen3-Omni 48 x 128, DeepSeek-V3 61 x 256), low enough that a
 * hostile count cannot make a giant allocation or loop. */
#define LT_MAX_LAYERS 65536
#define LT_MAX_EXPERTS 65536
#define LT_MAX_EXPERT_FILES (1 << 20) /* MoE layers x experts */
#define LT_MAX_HIDDEN (1 << 20)
#define LT_MAX_INTER (1 << 24)

/* Text-model shape as the config gives it.
 *
 * The layers of the checkpoint are the decoder's (num_hidden_layers) and,
 * after them, a multi-token-prediction block when the layout has an
 * mtp_key (DeepSeek-V3's num_nextn_predict_layers 1 stores it as
 * "model.layers.61.*" after 61 decoder layers). The MTP layers are part of
 * the checkpoint: they are extracted, named and counted like any layer
 * (indices n_layers - n_mtp ... n_layers - 1), reported apart, and never run
 * by the forward pass. */
typedef struct {
    int n_layers;      /* layers in the checkpoint: num_hidden_layers + n_mtp */
    int n_mtp;         /* the last n_mtp of them are the MTP block */
    int n_experts;     /* routed experts per MoE layer */
    int hidden;        /* hidden_size */
    int inter;         /* expert intermediate size */
    uint8_t *is_moe;   /* [n_layers]: layer has routed experts */
    int n_moe_layers;  /* MoE layers of all n_layers */
    int n_moe_mtp;     /* of which in the MTP block */
} lt_shape;

/* The decoder's layers (num_hidden_layers): what the forward pass runs. */
static inline int lt_decoder_layers(const lt_shape *s)
{
    return s->n_layers - s->n_mtp;
}

/* Layer l belongs to the MTP block. */
static inline int lt_is_mtp(const lt_shape *s, int l)
{
    return l >= s->n_layers - s->n_mtp && l < s->n_layers;
}

/* The table, NULL-terminated. */
extern const layout *const layouts[];

/* Layout by name or NULL. */
const layout *layout_find(const char *name);

/* Comma-separated names of all layouts (static string). */
const char *layout_names(void);

/* What the layout functions read of a model: its config and its tensor
 * names, not a checkpoint (an extracted OUT before its index exists, or a
 * manifest's records, have names and a config but no shards). */
typedef struct {
    const char *dir;          /* the model's directory, for messages */
    const cJSON *config;      /* config.json, or NULL */
    const char *model_type;   /* its "model_type", or NULL */
    char *const *names;       /* tensor names */
    int n_names;
    /* the file holding a tensor, for messages (NULL: dir) */
    const char *(*file_of)(const void *ctx, const char *name);
    const void *ctx;
} lt_model;

/* Picks the layout: by config model_type when present (a fused variant
 * when the expert tensors are stacked), else by tensor names. Fails with
 * a message listing the known layouts. */
const layout *layout_detect_model(const lt_model *m, GError **err);
/* layout_detect_model of a checkpoint's config and names. */
const layout *layout_detect(const ckpt *ck, GError **err);

/* Classifies one tensor name. Always succeeds (unmatched names are OTHER). */
void layout_classify(const layout *lt, const char *name, lt_class *out);

/* For OTHER tensors: the group prefix that names other/PREFIX.safetensors
 * ("thinker.audio_tower", "talker", ...). Caller frees. */
char *layout_other_prefix(const layout *lt, const char *name);

/* For an expert tensor: the projection index (LT_GATE...) if `suffix`
 * ("gate_proj.weight") names one, else -1. */
int layout_proj_of(const layout *lt, const char *suffix);

/* Reads the text config into *out (free with layout_shape_free). When the
 * checkpoint has no config, counts are inferred from the tensor names.
 * Counts are distrusted like sizes in a file: each must be an integer
 * within the caps below (the MTP layers included: decoder + MTP layers at
 * most LT_MAX_LAYERS), and MoE layers x experts at most
 * LT_MAX_EXPERT_FILES. Errors name config.json and the key (with its
 * path: 'thinker_config.text_config.num_experts') and say what is wrong;
 * on error *out holds nothing to free. */
int layout_shape_model(const layout *lt, const lt_model *m, lt_shape *out, GError **err);
/* layout_shape_model of a checkpoint's config and names. */
int layout_shape(const layout *lt, const ckpt *ck, lt_shape *out, GError **err);
void layout_shape_free(lt_shape *s);

/* Name of the per-expert tensor sliced from a fused one:
 * "model.layers.3.mlp.experts.gate_up_proj" + 5 ->
 * "model.layers.3.mlp.experts.5.gate_up_proj". Caller frees. */
char *layout_fused_slice_name(const layout *lt, const char *fused_name, int expert);

#endif
