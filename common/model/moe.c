/* moe.c - SwiGLU MLPs and the MoE block of a batch (model_impl.h) */
#include "model/model_impl.h"

#include <string.h>

static void swiglu(float *h, const float *h2, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h[i] = silu(h[i]) * h2[i];
}

void mlp(model *m, const qm_mat *gate, const qm_mat *up, const qm_mat *down,
         const float *x, int n, float *out)
{
    run_state *r = &m->r;
    int H = m->c.hidden, I = gate->rows;
    float *o2[2] = {r->h, r->h2};
    int ld2[2] = {I, I};
    const qm_mat *w2[2] = {gate, up};
    proj_multi(m, 2, o2, ld2, w2, x, H, n);
    swiglu(r->h, r->h2, (size_t)n * I);
    proj(m, out, H, down, r->h, I, n);
}

/* Adds the output o of pair i (token i / K, its choice i % K) times its
 * routing weight to the token's sum, and keeps the output's L2 norm for
 * the router observer. A token's experts arrive in ascending id, the order
 * Hugging Face's loop adds them in. */
static void add_expert(run_state *r, int K, int H, int i, const float *topw, float *topn,
                       const float *o)
{
    float w = topw[i], *acc = r->moe + (size_t)(i / K) * H;
    double ss = 0;
    for (int d = 0; d < H; d++) {
        acc[d] += w * o[d];
        ss += (double)o[d] * o[d];
    }
    topn[i] = (float)sqrt(ss);
}

/* Read-ahead of a layer's routed experts, at most this many bytes ahead of
 * the one computing: asked for all at once, a layer of the real-width
 * sample (1.2 GB) overran a 1.5 GB memory cgroup, whose page cache then
 * dropped the first experts before they were used and read them twice
 * (the gate read 4.7 GB in its 3 GB pass). A window keeps the disk busy
 * while the experts before it compute. Small batches (decode, the gate's
 * generation steps) wait on the disk, not on compute: they ask for all
 * their experts at once, as before, for the deepest queue. */
#define EXPERT_AHEAD_BYTES ((uint64_t)96 << 20)
#define EXPERT_AHEAD_MIN_TOKENS 64

/* Experts in the window: at least 2 (the one computing and the next); all
 * for a batch of n <= EXPERT_AHEAD_MIN_TOKENS tokens. */
static int ahead_count(const model *m, int n)
{
    const model_config *c = &m->c;
    if (n <= EXPERT_AHEAD_MIN_TOKENS)
        return c->n_experts;
    uint64_t one = 3 * (uint64_t)c->hidden * c->moe_inter * 2; /* bf16; a guess is enough */
    uint64_t fit = EXPERT_AHEAD_BYTES / (one ? one : 1);
    return fit < 2 ? 2 : fit > (uint64_t)c->n_experts ? c->n_experts : (int)fit;
}

/* Read-ahead of the used experts [from, to) of layer l; past the last,
 * the next layer's dense weights (or lm_head). */
static void read_ahead(model *m, int l, int nused, int from, int to, int dense)
{
    run_state *r = &m->r;
    to = to < nused ? to : nused;
    if (from < to)
        expert_store_prefetch(m->store, l, r->used + from, to - from);
    if (dense && from < nused && to == nused)
        prefetch_dense(m, l + 1);
}

/* Each routed expert once for all its tokens: gather their inputs, one
 * product per projection (the weights streamed once for all of them). */
static int experts_one_by_one(model *m, int l, int n, int nused, const float *topw,
                              float *topn, GError **err)
{
    run_state *r = &m->r;
    int K = m->c.top_k, H = m->c.hidden, W = ahead_count(m, n);
    for (int u = 0; u < nused; u++) {
        int e = r->used[u], a = r->start[e], cnt = r->start[e + 1] - a;
        read_ahead(m, l, nused, u + W - 1, u + W, n > 1);
        const expert_mats *em = expert_store_get(m->store, l, e, err);
        if (!em)
            return -1;
        const float *x = r->xb + (size_t)(r->list[a] / K) * H;
        if (cnt > 1) {
            for (int i = 0; i < cnt; i++)
                memcpy(r->g + (size_t)i * H, r->xb + (size_t)(r->list[a + i] / K) * H,
                       sizeof(float) * H);
            x = r->g;
        }
        mlp(m, &em->gate, &em->up, &em->down, x, cnt, r->g);
        for (int i = 0; i < cnt; i++)
            add_expert(r, K, H, r->list[a + i], topw, topn, r->g + (size_t)i * H);
    }
    return 0;
}

static void count(model *m, const qm_mat *w)
{
    m->step_bytes += qm_mat_bytes(w->dtype, w->rows, w->cols);
}

/* When every routed expert has one token (decode) and the cache holds
 * them all at once: gate and up of all of them in one parallel pass, down
 * of all in a second, so the team wakes twice per layer instead of twice
 * per expert. The same float operations as one by one. */
static int experts_together(model *m, int l, int nused, const float *topw, float *topn,
                            GError **err)
{
    run_state *r = &m->r;
    int K = m->c.top_k, H = m->c.hidden, I = m->c.moe_inter;
    for (int u = 0; u < nused; u++) {
        int i = r->list[r->start[r->used[u]]];
        const expert_mats *em = expert_store_get(m->store, l, r->used[u], err);
        if (!em)
            return -1;
        r->bmat[2 * u] = &em->gate;
        r->bmat[2 * u + 1] = &em->up;
        r->bdown[u] = &em->down;
        r->bout[2 * u] = r->eh + (size_t)u * I;
        r->bout[2 * u + 1] = r->eh2 + (size_t)u * I;
        r->bx[2 * u] = r->bx[2 * u + 1] = r->xb + (size_t)(i / K) * H;
        count(m, &em->gate);
        count(m, &em->up);
        count(m, &em->down);
    }
    qm_matvec_batch(m->team, 2 * nused, r->bout, r->bmat, r->bx);
    swiglu(r->eh, r->eh2, (size_t)nused * I);
    for (int u = 0; u < nused; u++) {
        r->bout[u] = r->eout + (size_t)u * H;
        r->bx[u] = r->eh + (size_t)u * I;
    }
    qm_matvec_batch(m->team, nused, r->bout, r->bdown, r->bx);
    for (int u = 0; u < nused; u++)
        add_expert(r, K, H, r->list[r->start[r->used[u]]], topw, topn,
                   r->eout + (size_t)u * H);
    return 0;
}

/* The gated shared expert (Qwen2-MoE; ungated: DeepSeek-V3), added to the
 * residual stream after the routed ones. */
static void shared_expert(model *m, const layer_w *w, int n)
{
    run_state *r = &m->r;
    int H = m->c.hidden;
    mlp(m, &w->sgate, &w->sup, &w->sdown, r->xb, n, r->xb2);
    if (w->sg.rows)
        proj(m, r->rl, 1, &w->sg, r->xb, H, n);
    for (int t = 0; t < n; t++) {
        float g = w->sg.rows ? sigmoid(r->rl[t]) : 1.0f;
        for (int d = 0; d < H; d++)
            r->x[(size_t)t * H + d] += g * r->xb2[(size_t)t * H + d];
    }
}

int moe(model *m, int l, int n, GError **err)
{
    const model_config *c = &m->c;
    run_state *r = &m->r;
    const layer_w *w = &m->w.layers[l];
    int K = c->top_k, E = c->n_experts, H = c->hidden;
    size_t at = (size_t)l * r->max_batch * K;
    int *top = r->top + at;
    float *topw = r->topw + at, *topn = r->topn + at;
    proj(m, r->rl, E, &w->router, r->xb, H, n);
    const uint8_t *allow = m->allow ? m->allow[l] : NULL;
    for (int t = 0; t < n; t++) {
        const uint8_t *own = r->tok[t].seq->allow;
        route_pick(m, l, own ? own : allow, r->rl + (size_t)t * E, top + (size_t)t * K,
                   topw + (size_t)t * K);
    }
    /* counting sort of the (token, choice) pairs by expert, tokens ascending */
    memset(r->start, 0, sizeof(int) * (E + 1));
    for (int i = 0; i < n * K; i++)
        r->start[top[i] + 1]++;
    for (int e = 0; e < E; e++)
        r->start[e + 1] += r->start[e];
    for (int i = 0; i < n * K; i++)
        r->list[r->start[top[i]]++] = i;
    for (int e = E; e > 0; e--)
        r->start[e] = r->start[e - 1];
    r->start[0] = 0;
    int nused = 0, single = 1;
    for (int e = 0; e < E; e++) {
        int cnt = r->start[e + 1] - r->start[e];
        if (cnt > 0)
            r->used[nused++] = e;
        single &= cnt <= 1;
    }
    memset(r->moe, 0, sizeof(float) * n * H);
    int together = single && nused <= r->npair && expert_store_holds(m->store, nused);
    /* together: every expert at once (decode: a few); one by one: the
     * first window, then one more as each starts */
    read_ahead(m, l, nused, 0, together ? nused : ahead_count(m, n) - 1, n > 1);
    if (together ? experts_together(m, l, nused, topw, topn, err)
                 : experts_one_by_one(m, l, n, nused, topw, topn, err))
        return -1;
    for (size_t i = 0; i < (size_t)n * H; i++)
        r->x[i] += r->moe[i];
    if (w->shared)
        shared_expert(m, w, n);
    return 0;
}
