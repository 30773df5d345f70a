/* expert_plan.h - which routed experts a smaller model keeps, per layer.
 *
 * A plan is a JSON file:
 *
 *   {"keep": {"1": [5, 0, 9, ...], "2": [...], ...}, ...}
 *
 * keys the decoder layer index of a MoE layer (a decimal string), values
 * the distinct expert ids kept, in the order a packed model numbers them
 * (the first becomes expert 0). Other keys (criterion, corpus, scores) are
 * allowed and ignored by the reader. Plans come from router statistics
 * (plan_scores below, `qmoe-run --router-stats --keep N --plan-out`) or by
 * hand; both are read by expert_plan_load, which refuses anything that
 * does not fit the model, naming the entry.
 *
 * Uses: `qmoe-run --keep-experts` restricts each layer's router to its
 * plan (layers not listed stay free); `qmoe-pack --keep-experts` writes a
 * checkpoint holding only the plan's experts, which needs the stricter
 * expert_plan_check_pack (every MoE layer, one count, DeepSeek's groups).
 */
#ifndef QMOE_EXPERT_PLAN_H
#define QMOE_EXPERT_PLAN_H

#include <cjson/cJSON.h>
#include <glib.h>
#include <stdint.h>

#include "format/layout.h"

typedef struct {
    char *label;     /* the plan's file, for messages */
    int n_layers;    /* the model's layers (lt_shape.n_layers) */
    int n_experts;   /* routed experts per MoE layer of the model */
    int *n_keep;     /* [n_layers]: experts kept, 0 = layer not in the plan */
    int **keep;      /* [n_layers]: kept ids in plan order, NULL when not listed */
    int n_listed;    /* layers in the plan */
} expert_plan;

/* Reads doc (a parsed plan; label names it in errors) against the model's
 * shape: every key a MoE layer of the model, listed once; every value a
 * non-empty array of distinct integer expert ids below n_experts. Errors
 * (QM_ERR_FORMAT) name the file and the entry: "'plan.json': keep[\"1\"][4]:
 * expert 5 is listed twice (also at [2])". Caller frees the result. */
expert_plan *expert_plan_from_json(const char *label, const cJSON *doc,
                                   const lt_shape *s, GError **err);

/* expert_plan_from_json of a file (QM_ERR_IO when it cannot be read). */
expert_plan *expert_plan_load(const char *path, const lt_shape *s, GError **err);

/* Accepts NULL. */
void expert_plan_free(expert_plan *p);

/* What a packed checkpoint needs beyond a valid plan: every MoE layer of
 * the model listed, the same count N in each (a config has one expert
 * count), and with group-limited routing
 * (n_group > 1, DeepSeek-V3) N/n_group experts of each group, at least
 * two (the group score sums a group's best two), listed group by group so
 * that the renumbered experts stay in their groups. Sets *n_keep to N.
 * Errors (QM_ERR_FORMAT) name the plan and the layer or entry. */
int expert_plan_check_pack(const expert_plan *p, const lt_shape *s, int n_group,
                           int *n_keep, GError **err);
/* The MTP block (DeepSeek-V3's multi-token-prediction layers, which the
 * forward pass never runs) is the exception: router statistics cannot
 * score its experts, so a plan from them does not list it. A plan listing
 * none of its layers passes expert_plan_check_pack and the pack drops the
 * block (num_nextn_predict_layers 0); listing some of them and not others
 * is refused. Returns how many MTP layers p lists. */
int expert_plan_mtp_listed(const expert_plan *p, const lt_shape *s);

/* The router mask of one layer: allow[e] = 1 for the kept experts
 * (n_experts bytes, caller frees), or NULL when the layer is not listed. */
uint8_t *expert_plan_allow(const expert_plan *p, int layer);

/* The position of expert e in layer's list (its id in a packed model),
 * or -1 when the layer does not keep it. */
int expert_plan_index(const expert_plan *p, int layer, int e);

/* ---- the plan on a model (qmoe-run --keep-experts) ---- */

struct model;

/* expert_plan_load against the checkpoint of m (its layout's shape, the
 * MTP block included, so that a plan made for qmoe-pack reads too). */
expert_plan *expert_plan_load_model(const char *path, struct model *m, GError **err);

/* Restricts each listed decoder layer's router to its plan
 * (model_set_layer_mask); MTP layers, which the forward pass does not run,
 * are skipped. A layer keeping fewer experts than the model's top-k is
 * refused (QM_ERR_USAGE): its packed model routes top-N instead, which a
 * mask on the original cannot simulate. */
int expert_plan_apply(struct model *m, const expert_plan *p, GError **err);

/* ---- plans from router statistics ---- */

typedef enum {
    PLAN_BY_FREQUENCY, /* how often the router picks the expert (top-k picks) */
    PLAN_BY_WEIGHT,    /* the sum of its router weights */
    PLAN_BY_REAP,      /* mean, over the tokens routed to it, of router weight
                        * x L2 norm of its output (REAP, Cerebras 2025) */
} plan_by;

/* "frequency", "weight", "reap"; plan_by_parse returns -1 for others. */
const char *plan_by_name(plan_by by);
int plan_by_parse(const char *name);

/* Accumulated router choices: per (layer, expert) the picks, the sum of
 * weights and the sum of weight x output norm. */
typedef struct {
    int n_layers, n_experts;
    uint64_t *picks;   /* [n_layers x n_experts] */
    double *weight;    /* [n_layers x n_experts] */
    double *reap;      /* [n_layers x n_experts] sum of weight x norm */
    uint64_t tokens;   /* token x layer observations */
} plan_scores;

plan_scores *plan_scores_new(int n_layers, int n_experts);
void plan_scores_free(plan_scores *sc);

/* Adds one token's choice in one layer (the arguments of a model_router_fn;
 * out_norms may be NULL when the REAP score is not wanted). Ignores a
 * layer or expert out of range. */
void plan_scores_add(plan_scores *sc, int layer, int k, const int *experts,
                     const float *weights, const float *out_norms);

/* Score of expert e in layer by the criterion. */
double plan_score(const plan_scores *sc, plan_by by, int layer, int e);

/* The plan keeping, in every MoE layer of is_moe (n_layers entries), the
 * `keep` experts of highest score (ties: the lower id), listed by
 * decreasing score; with n_group > 1 keep/n_group of each group, listed
 * group by group (as expert_plan_check_pack wants). Fails (QM_ERR_USAGE)
 * when keep is not in 1..n_experts or not a multiple of n_group with at
 * least two per group. */
expert_plan *plan_scores_choose(const plan_scores *sc, plan_by by, int keep,
                                const uint8_t *is_moe, int n_group, GError **err);

/* The plan as a document: "keep", and "criterion", "corpus" (when not
 * NULL), "tokens" and per layer the kept experts' "scores" when sc is
 * given. Caller deletes. */
cJSON *expert_plan_to_json(const expert_plan *p, const plan_scores *sc, plan_by by,
                           const char *corpus);

#endif
