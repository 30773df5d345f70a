/* attention.c - RoPE, the projections before attention and causal attention
 * of a batch of tokens over their own sequences' KV caches (model_impl.h) */
#include "model/model_impl.h"

#include <string.h>

/* Rotate-half RoPE on the first d dims of one head: pairs (i, i + d/2); the
 * rest of the head passes unrotated (partial RoPE, GLM-4.5's
 * partial_rotary_factor: d = rope_dim, the whole head elsewhere).
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
                   int hd, int g, float scale, float *att, float *o)
{
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

/* One token's projections before attention, as its family computes them:
 * q/k/v biases, the RMSNorm of q and k (over the whole projection, or per
 * head), then RoPE per head. */
static void qkv_prepare(const model *m, const layer_w *w, float *q, float *k, float *v,
                        const float *cs, const float *sn)
{
    const model_config *c = &m->c;
    int hd = c->head_dim, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
    lt_qk_norm norm = m->qk_norm;
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
        rope(qh, cs, sn, c->rope_dim);
    }
    for (int h = 0; h < c->n_kv_heads; h++) {
        float *kh = k + (size_t)h * hd;
        if (norm == LT_QK_HEAD)
            model_rmsnorm(kh, kh, w->k_norm, hd, c->eps);
        rope(kh, cs, sn, c->rope_dim);
    }
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
 * each token, hh floats apart. */
static void mla_project(model *m, const layer_w *w, const float *x, int n, float *q,
                        float *k, float *v, const float *cs, const float *sn, int hh)
{
    const model_config *c = &m->c;
    int H = c->n_heads, hd = c->head_dim, nope = c->nope, rd = c->rope_dim, vd = c->v_dim;
    int ql = c->q_lora, kl = c->kv_lora, ka = kl + rd, kb = nope + vd, qd = H * hd;
    /* q_a_layernorm and kv_a_layernorm are DeepseekV3RMSNorm(dim): HF gives
     * them no eps, so its default, not rms_norm_eps. */
    const float lora_eps = 1e-6f;
    float *o2[2] = {m->r.mqa, m->r.mkva};
    int ld2[2] = {ql, ka};
    const qm_mat *w2[2] = {&w->qa, &w->kva};
    proj_multi(m, 2, o2, ld2, w2, x, c->hidden, n);
    for (int t = 0; t < n; t++) {
        model_rmsnorm(m->r.mqa + (size_t)t * ql, m->r.mqa + (size_t)t * ql, w->qa_norm, ql,
                      lora_eps);
        model_rmsnorm(m->r.mkva + (size_t)t * ka, m->r.mkva + (size_t)t * ka, w->kva_norm, kl,
                      lora_eps);
    }
    proj(m, q, qd, &w->qb, m->r.mqa, ql, n);
    proj(m, m->r.mkvb, H * kb, &w->kvb, m->r.mkva, ka, n);
    for (int t = 0; t < n; t++) {
        const float *tc = cs + (size_t)t * hh, *ts = sn + (size_t)t * hh;
        float *kr = m->r.mkva + (size_t)t * ka + kl;
        rope_pairs(kr, tc, ts, rd);
        for (int h = 0; h < H; h++) {
            float *qh = q + (size_t)t * qd + (size_t)h * hd;
            float *kh = k + (size_t)t * qd + (size_t)h * hd;
            float *vh = v + (size_t)t * qd + (size_t)h * hd;
            const float *b = m->r.mkvb + (size_t)t * H * kb + (size_t)h * kb;
            rope_pairs(qh + nope, tc, ts, rd);
            memcpy(kh, b, sizeof(float) * nope);
            memcpy(kh + nope, kr, sizeof(float) * rd);
            memcpy(vh, b + nope, sizeof(float) * vd);
            memset(vh + vd, 0, sizeof(float) * (hd - vd));
        }
    }
}

/* Attention outputs of H heads of width hd whose first vd floats are the
 * values (MLA): packed to H x vd in place, as o_proj reads them (H may
 * count the heads of several tokens: all rows packed). */
static void compact_heads(float *o, int H, int hd, int vd)
{
    for (int h = 1; h < H; h++)
        memmove(o + (size_t)h * vd, o + (size_t)h * hd, sizeof(float) * vd);
}

/* cos and sin of each token's position times the RoPE frequencies. */
void rope_tables(const model *m, int n)
{
    const run_state *r = &m->r;
    int hh = m->c.head_dim / 2, rh = m->c.rope_dim / 2;
    if (m->w.rope_cos) {
        /* YaRN: rows of the tables made at load (pos < cap <= max_seq) */
        for (int t = 0; t < n; t++) {
            size_t at = (size_t)r->tok[t].pos * rh;
            memcpy(r->cos + (size_t)t * hh, m->w.rope_cos + at, sizeof(float) * rh);
            memcpy(r->sin + (size_t)t * hh, m->w.rope_sin + at, sizeof(float) * rh);
        }
        return;
    }
    for (int t = 0; t < n; t++)
        for (int i = 0; i < hh; i++) {
            float f = (float)r->tok[t].pos * m->w.inv_freq[i];
            r->cos[(size_t)t * hh + i] = cosf(f);
            r->sin[(size_t)t * hh + i] = sinf(f);
        }
}

void qkv(model *m, const layer_w *w, int l, int n)
{
    const model_config *c = &m->c;
    run_state *r = &m->r;
    int hd = c->head_dim, hh = hd / 2, kvd = c->n_kv_heads * hd, qd = c->n_heads * hd;
    if (m->lt->attn == LT_ATTN_MLA) {
        mla_project(m, w, r->xb, n, r->q, r->k, r->v, r->cos, r->sin, hh);
    } else {
        float *o3[3] = {r->q, r->k, r->v};
        int ld3[3] = {qd, kvd, kvd};
        const qm_mat *w3[3] = {&w->q, &w->k, &w->v};
        proj_multi(m, 3, o3, ld3, w3, r->xb, c->hidden, n);
        for (int t = 0; t < n; t++)
            qkv_prepare(m, w, r->q + (size_t)t * qd, r->k + (size_t)t * kvd,
                        r->v + (size_t)t * kvd, r->cos + (size_t)t * hh,
                        r->sin + (size_t)t * hh);
    }
    /* into each token's sequence: attention reads only the caches */
    for (int t = 0; t < n; t++) {
        const model_seq *s = r->tok[t].seq;
        size_t at = ((size_t)l * s->cap + r->tok[t].pos) * kvd;
        memcpy(s->k + at, r->k + (size_t)t * kvd, sizeof(float) * kvd);
        memcpy(s->v + at, r->v + (size_t)t * kvd, sizeof(float) * kvd);
    }
}

typedef struct {
    model *m;
    int layer, n;
} att_job;

/* Token t of the batch over positions 0..pos of its sequence. (token,
 * key-value head) pairs are dealt out round-robin, which balances their
 * lengths; thread i uses rows i*group.. of r.att. */
static void attention_part(void *arg, int i, int nth)
{
    const att_job *j = arg;
    model *m = j->m;
    const model_config *c = &m->c;
    const run_state *r = &m->r;
    int hd = c->head_dim, kvd = c->n_kv_heads * hd, group = c->n_heads / c->n_kv_heads;
    size_t qd = (size_t)c->n_heads * hd;
    float *att = r->att + (size_t)i * group * c->max_seq;
    for (int p = i; p < j->n * c->n_kv_heads; p += nth) {
        int t = p / c->n_kv_heads, h = p % c->n_kv_heads;
        const model_seq *s = r->tok[t].seq;
        const float *kc = s->k + (size_t)j->layer * s->cap * kvd;
        const float *vc = s->v + (size_t)j->layer * s->cap * kvd;
        size_t q0 = t * qd + (size_t)h * group * hd;
        attend(r->q + q0, kc + (size_t)h * hd, vc + (size_t)h * hd, kvd, r->tok[t].pos + 1,
               hd, group, m->w.att_scale, att, r->att_out + q0);
    }
}

void attention(model *m, int l, int n)
{
    const model_config *c = &m->c;
    att_job aj = {m, l, n};
    /* one short sequence: waking the team costs more than it saves */
    if (n == 1 && (c->n_kv_heads == 1 || m->r.tok[0].pos < 64))
        attention_part(&aj, 0, 1);
    else
        team_run(m->team, attention_part, &aj);
    /* MLA: o_proj reads the values packed, n x H*v_dim */
    if (c->v_dim != c->head_dim)
        compact_heads(m->r.att_out, n * c->n_heads, c->head_dim, c->v_dim);
}
