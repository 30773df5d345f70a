/* expert_plan.c - see expert_plan.h */
#include "analysis/expert_plan.h"
#include "base/util.h"
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static expert_plan *plan_new(const char *label, int n_layers, int n_experts)
{
    expert_plan *p = g_new0(expert_plan, 1);
    p->label = g_strdup(label);
    p->n_layers = n_layers;
    p->n_experts = n_experts;
    p->n_keep = g_new0(int, n_layers);
    p->keep = g_new0(int *, n_layers);
    return p;
}

void expert_plan_free(expert_plan *p)
{
    if (!p)
        return;
    for (int l = 0; l < p->n_layers; l++)
        g_free(p->keep[l]);
    g_free(p->keep);
    g_free(p->n_keep);
    g_free(p->label);
    g_free(p);
}

/* A layer key: decimal digits only, no sign or leading zero. */
static int parse_layer_key(const char *key, int *out)
{
    if (!key[0] || (key[0] == '0' && key[1]) || strlen(key) > 9)
        return 0;
    int v = 0;
    for (const char *c = key; *c; c++) {
        if (!g_ascii_isdigit(*c))
            return 0;
        v = v * 10 + (*c - '0');
    }
    *out = v;
    return 1;
}

static expert_plan *bad(expert_plan *p, GError **err, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
static expert_plan *bad(expert_plan *p, GError **err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': %s", p->label, msg);
    g_free(msg);
    expert_plan_free(p);
    return NULL;
}

expert_plan *expert_plan_from_json(const char *label, const cJSON *doc,
                                   const lt_shape *s, GError **err)
{
    expert_plan *p = plan_new(label, s->n_layers, s->n_experts);
    if (!cJSON_IsObject(doc))
        return bad(p, err, "not a plan: the file is not a JSON object");
    const cJSON *keep = cJSON_GetObjectItemCaseSensitive(doc, "keep");
    if (!cJSON_IsObject(keep))
        return bad(p, err, "not a plan: no \"keep\" object (layer -> expert ids)");
    const cJSON *ent;
    cJSON_ArrayForEach(ent, keep) {
        const char *key = ent->string;
        int l;
        if (!parse_layer_key(key, &l))
            return bad(p, err, "keep key \"%s\" is not a layer index", key);
        if (l >= s->n_layers)
            return bad(p, err, "keep[\"%s\"]: the model has %d layers (0-%d)", key,
                       s->n_layers, s->n_layers - 1);
        if (!s->is_moe[l])
            return bad(p, err, "keep[\"%s\"]: layer %d is dense (it has no routed experts)",
                       key, l);
        if (p->keep[l])
            return bad(p, err, "keep[\"%s\"]: layer %d is listed twice", key, l);
        if (!cJSON_IsArray(ent))
            return bad(p, err, "keep[\"%s\"]: not an array of expert ids", key);
        int n = cJSON_GetArraySize(ent);
        if (n == 0)
            return bad(p, err, "keep[\"%s\"]: keeps no expert", key);
        if (n > s->n_experts)
            return bad(p, err, "keep[\"%s\"]: keeps %d experts, the model has %d", key, n,
                       s->n_experts);
        int *ids = g_new(int, n);
        int *seen = g_new(int, s->n_experts); /* position + 1, 0 = not yet */
        memset(seen, 0, sizeof(int) * (size_t)s->n_experts);
        p->keep[l] = ids;
        p->n_keep[l] = n;
        p->n_listed++;
        int i = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, ent) {
            double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
            if (!cJSON_IsNumber(v) || d != floor(d) || d < 0 || d >= s->n_experts) {
                char *txt = cJSON_PrintUnformatted(v);
                g_free(seen);
                expert_plan *r = bad(p, err, "keep[\"%s\"][%d]: %s is not an expert id of "
                                     "the model (0-%d)", key, i, txt ? txt : "?",
                                     s->n_experts - 1);
                cJSON_free(txt);
                return r;
            }
            int e = (int)d;
            if (seen[e]) {
                int at = seen[e] - 1;
                g_free(seen);
                return bad(p, err, "keep[\"%s\"][%d]: expert %d is listed twice (also at [%d])",
                           key, i, e, at);
            }
            seen[e] = i + 1;
            ids[i++] = e;
        }
        g_free(seen);
    }
    if (p->n_listed == 0)
        return bad(p, err, "the plan keeps no layer (\"keep\" is empty)");
    return p;
}

expert_plan *expert_plan_load(const char *path, const lt_shape *s, GError **err)
{
    cJSON *doc = qm_json_load(path, err);
    if (!doc)
        return NULL;
    expert_plan *p = expert_plan_from_json(path, doc, s, err);
    cJSON_Delete(doc);
    return p;
}

int expert_plan_mtp_listed(const expert_plan *p, const lt_shape *s)
{
    int n = 0;
    for (int l = 0; l < s->n_layers && l < p->n_layers; l++)
        n += lt_is_mtp(s, l) && p->keep[l] != NULL;
    return n;
}

int expert_plan_check_pack(const expert_plan *p, const lt_shape *s, int n_group,
                           int *n_keep, GError **err)
{
    int n = -1, first = -1;
    /* a plan without the MTP block drops it (expert_plan_mtp_listed) */
    int skip_mtp = expert_plan_mtp_listed(p, s) == 0;
    for (int l = 0; l < s->n_layers; l++) {
        if (!s->is_moe[l] || (skip_mtp && lt_is_mtp(s, l)))
            continue;
        if (!p->keep[l]) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s': MoE layer %d%s is not in the plan: a packed model keeps "
                        "experts in every MoE layer, so the plan must list each%s", p->label,
                        l, lt_is_mtp(s, l) ? " (the multi-token-prediction block)" : "",
                        lt_is_mtp(s, l) ? " MTP layer or none (then the block is dropped)"
                                        : "");
            return -1;
        }
        if (n < 0) {
            n = p->n_keep[l];
            first = l;
        } else if (p->n_keep[l] != n) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s': keep[\"%d\"] keeps %d experts but keep[\"%d\"] keeps %d: a "
                        "Hugging Face config has one expert count per model, so every "
                        "layer must keep the same number", p->label, l, p->n_keep[l],
                        first, n);
            return -1;
        }
    }
    if (n < 0) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s': the model has no MoE layer",
                    p->label);
        return -1;
    }
    if (n_group > 1) {
        int per_old = s->n_experts / n_group;
        if (n % n_group || n / n_group < 2) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s': keeps %d experts per layer, the model routes within %d "
                        "groups: keep the same number of each group, at least 2 (a "
                        "multiple of %d, at least %d)", p->label, n, n_group, n_group,
                        2 * n_group);
            return -1;
        }
        int per = n / n_group;
        for (int l = 0; l < s->n_layers; l++)
            for (int i = 0; p->keep[l] && i < n; i++) {
                int g = p->keep[l][i] / per_old;
                if (g != i / per) {
                    g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                                "'%s': keep[\"%d\"][%d]: expert %d is in group %d, but "
                                "position %d of the plan numbers it into group %d: list "
                                "%d experts of group 0, then %d of group 1, ...", p->label,
                                l, i, p->keep[l][i], g, i, i / per, per, per);
                    return -1;
                }
            }
    }
    *n_keep = n;
    return 0;
}

uint8_t *expert_plan_allow(const expert_plan *p, int layer)
{
    if (layer < 0 || layer >= p->n_layers || !p->keep[layer])
        return NULL;
    uint8_t *allow = g_malloc0((gsize)p->n_experts);
    for (int i = 0; i < p->n_keep[layer]; i++)
        allow[p->keep[layer][i]] = 1;
    return allow;
}

int expert_plan_index(const expert_plan *p, int layer, int e)
{
    if (layer < 0 || layer >= p->n_layers || !p->keep[layer])
        return -1;
    for (int i = 0; i < p->n_keep[layer]; i++)
        if (p->keep[layer][i] == e)
            return i;
    return -1;
}

expert_plan *expert_plan_load_model(const char *path, model *m, GError **err)
{
    lt_shape s;
    if (layout_shape(model_layout(m), model_checkpoint(m), &s, err))
        return NULL;
    expert_plan *p = expert_plan_load(path, &s, err);
    layout_shape_free(&s);
    return p;
}

int expert_plan_apply(model *m, const expert_plan *p, GError **err)
{
    const model_config *c = model_get_config(m);
    for (int l = 0; l < c->n_layers && l < p->n_layers; l++) {
        if (!p->keep[l] || !c->is_moe[l])
            continue;
        if (p->n_keep[l] < c->top_k) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "'%s': keep[\"%d\"] keeps %d experts, fewer than the %d the router "
                        "picks per token: the packed model would pick %d (qmoe-pack sets "
                        "num_experts_per_tok to %d), which a mask on this model cannot "
                        "simulate; run the packed model instead", p->label, l, p->n_keep[l],
                        c->top_k, p->n_keep[l], p->n_keep[l]);
            return -1;
        }
        uint8_t *allow = expert_plan_allow(p, l);
        int rc = model_set_layer_mask(m, l, allow, err);
        g_free(allow);
        if (rc)
            return -1;
    }
    return 0;
}

/* ---- plans from router statistics ---- */

static const char *const by_names[] = {"frequency", "weight", "reap"};

const char *plan_by_name(plan_by by)
{
    return by_names[by];
}

int plan_by_parse(const char *name)
{
    for (int i = 0; i < 3; i++)
        if (strcmp(name, by_names[i]) == 0)
            return i;
    return -1;
}

plan_scores *plan_scores_new(int n_layers, int n_experts)
{
    plan_scores *sc = g_new0(plan_scores, 1);
    size_t n = (size_t)n_layers * (size_t)n_experts;
    sc->n_layers = n_layers;
    sc->n_experts = n_experts;
    sc->picks = g_new0(uint64_t, n);
    sc->weight = g_new0(double, n);
    sc->reap = g_new0(double, n);
    return sc;
}

void plan_scores_free(plan_scores *sc)
{
    if (!sc)
        return;
    g_free(sc->picks);
    g_free(sc->weight);
    g_free(sc->reap);
    g_free(sc);
}

void plan_scores_add(plan_scores *sc, int layer, int k, const int *experts,
                     const float *weights, const float *out_norms)
{
    if (layer < 0 || layer >= sc->n_layers)
        return;
    sc->tokens++;
    for (int i = 0; i < k; i++) {
        int e = experts[i];
        if (e < 0 || e >= sc->n_experts)
            continue;
        size_t at = (size_t)layer * (size_t)sc->n_experts + (size_t)e;
        sc->picks[at]++;
        sc->weight[at] += weights[i];
        if (out_norms)
            sc->reap[at] += (double)weights[i] * out_norms[i];
    }
}

double plan_score(const plan_scores *sc, plan_by by, int layer, int e)
{
    size_t at = (size_t)layer * (size_t)sc->n_experts + (size_t)e;
    switch (by) {
    case PLAN_BY_FREQUENCY:
        return (double)sc->picks[at];
    case PLAN_BY_WEIGHT:
        return sc->weight[at];
    case PLAN_BY_REAP:
        return sc->picks[at] ? sc->reap[at] / (double)sc->picks[at] : 0.0;
    }
    return 0.0;
}

typedef struct {
    int e;
    double s;
} ranked;

static int by_score_desc(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->s != y->s)
        return x->s > y->s ? -1 : 1;
    return x->e - y->e;
}

expert_plan *plan_scores_choose(const plan_scores *sc, plan_by by, int keep,
                                const uint8_t *is_moe, int n_group, GError **err)
{
    int E = sc->n_experts, G = n_group > 1 ? n_group : 1;
    if (keep < 1 || keep > E) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "--keep %d: the model has %d experts per layer (keep 1-%d)", keep, E, E);
        return NULL;
    }
    if (G > 1 && (keep % G || keep / G < 2)) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "--keep %d: the model routes within %d groups of experts; keep the "
                    "same number of each group, at least 2 (a multiple of %d, at least %d)",
                    keep, G, G, 2 * G);
        return NULL;
    }
    expert_plan *p = plan_new("plan", sc->n_layers, E);
    int per_old = E / G, per = keep / G;
    ranked *r = g_new(ranked, per_old);
    for (int l = 0; l < sc->n_layers; l++) {
        if (!is_moe[l])
            continue;
        p->keep[l] = g_new(int, keep);
        p->n_keep[l] = keep;
        p->n_listed++;
        for (int g = 0; g < G; g++) {
            for (int i = 0; i < per_old; i++) {
                r[i].e = g * per_old + i;
                r[i].s = plan_score(sc, by, l, r[i].e);
            }
            qsort(r, (size_t)per_old, sizeof *r, by_score_desc);
            for (int i = 0; i < per; i++)
                p->keep[l][g * per + i] = r[i].e;
        }
    }
    g_free(r);
    return p;
}

cJSON *expert_plan_to_json(const expert_plan *p, const plan_scores *sc, plan_by by,
                           const char *corpus)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON *keep = cJSON_AddObjectToObject(doc, "keep");
    cJSON *scores = sc ? cJSON_CreateObject() : NULL;
    for (int l = 0; l < p->n_layers; l++) {
        if (!p->keep[l])
            continue;
        char key[16];
        g_snprintf(key, sizeof key, "%d", l);
        cJSON_AddItemToObject(keep, key, cJSON_CreateIntArray(p->keep[l], p->n_keep[l]));
        if (sc && l < sc->n_layers) {
            double *v = g_new(double, p->n_keep[l]);
            for (int i = 0; i < p->n_keep[l]; i++)
                v[i] = plan_score(sc, by, l, p->keep[l][i]);
            cJSON_AddItemToObject(scores, key, cJSON_CreateDoubleArray(v, p->n_keep[l]));
            g_free(v);
        }
    }
    if (sc) {
        cJSON_AddStringToObject(doc, "criterion", plan_by_name(by));
        if (corpus)
            cJSON_AddStringToObject(doc, "corpus", corpus);
        cJSON_AddNumberToObject(doc, "observations", (double)sc->tokens);
        cJSON_AddItemToObject(doc, "scores", scores);
    }
    return doc;
}
