/* routing.c - the router: which experts a token goes to, with what weights
 * (model_impl.h) */
#include "model/model_impl.h"

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
    float *ch = m->r.rscore, *gs = m->r.rscore + E;
    int *gorder = m->r.rgroup, *keep = m->r.rgroup + G;
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

int route_mask_copy(const model_config *c, const uint8_t *allow, uint8_t *out)
{
    int n = 0;
    for (int e = 0; e < c->n_experts; e++) {
        n += allow[e] != 0;
        if (out)
            out[e] = allow[e] != 0;
    }
    return n;
}

/* Router: softmax over the (allowed) experts in float32, top-k in
 * descending probability (lowest id first on ties), renormalised when
 * norm_topk_prob. */
void route_pick(const model *m, int l, const uint8_t *allow, float *p, int *top, float *topw)
{
    const model_config *c = &m->c;
    if (m->lt->score == LT_SCORE_SIGMOID_GROUPED) {
        route_grouped(m, allow, m->w.layers[l].score_bias, p, top, topw);
        return;
    }
    float mx = -INFINITY;
    for (int e = 0; e < c->n_experts; e++) {
        if (allow && !allow[e])
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
            if (allow && !allow[e])
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
