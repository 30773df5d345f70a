/* forward.c - the forward pass: one loop over a batch of tokens that may
 * belong to several sequences (model.h, model_impl.h) */
#include "model/model_impl.h"
#include "base/util.h"

#include <string.h>
#include <sys/mman.h>

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

/* ---- sequences and run state ---- */

model_seq *model_seq_new(model *m, int id, int max_len, GError **err)
{
    const model_config *c = &m->c;
    int cap = max_len > 0 && max_len < c->max_seq ? max_len : c->max_seq;
    size_t n = (size_t)c->n_layers * cap * c->n_kv_heads * c->head_dim;
    model_seq *s = g_new0(model_seq, 1);
    s->m = m;
    s->id = id;
    s->cap = cap;
    s->k = g_try_new0(float, n);
    s->v = g_try_new0(float, n);
    if (!s->k || !s->v) {
        g_set_error(err, QM_ERROR, QM_ERR_NOSPACE,
                    "cannot allocate a KV cache of %d tokens (%zu MB)", cap, n * 8 >> 20);
        model_seq_free(s);
        return NULL;
    }
    return s;
}

void model_seq_free(model_seq *s)
{
    if (!s)
        return;
    g_free(s->k);
    g_free(s->v);
    g_free(s->allow);
    g_free(s);
}

int model_seq_set_mask(model_seq *s, const uint8_t *allow, GError **err)
{
    const model_config *c = &s->m->c;
    g_free(s->allow);
    s->allow = NULL;
    if (!allow)
        return 0;
    int n = route_mask_copy(c, allow, NULL);
    if (n < c->top_k) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "the router mask allows %d experts, fewer than the %d each token needs",
                    n, c->top_k);
        return -1;
    }
    s->allow = g_new(uint8_t, c->n_experts);
    route_mask_copy(c, allow, s->allow);
    return 0;
}

void model_seq_reset(model_seq *s) { s->pos = 0; }
void model_seq_truncate(model_seq *s, int pos) { s->pos = pos < s->pos ? MAX(pos, 0) : s->pos; }
int model_seq_pos(const model_seq *s) { return s->pos; }
int model_seq_id(const model_seq *s) { return s->id; }

const float *model_seq_kv(const model_seq *s, int layer, int values)
{
    const model_config *c = &s->m->c;
    size_t at = (size_t)layer * s->cap * c->n_kv_heads * c->head_dim;
    return (values ? s->v : s->k) + at;
}

void run_state_init(model *m, int B)
{
    const model_config *c = &m->c;
    run_state *r = &m->r;
    B = B < c->max_seq ? B : c->max_seq;
    r->max_batch = B;
    size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    size_t I = (size_t)MAX(MAX(c->moe_inter, c->dense_inter), c->shared_inter);
    size_t E = (size_t)MAX(c->n_experts, 1), K = (size_t)MAX(c->top_k, 1), H = c->hidden;
    size_t nth = (size_t)team_size(m->team), group = c->n_heads / c->n_kv_heads;
    size_t hh = c->head_dim / 2;
    r->tok = g_new0(fwd_tok, B);
    r->lgp = g_new0(float *, B);
    r->lgt = g_new0(int, B);
    r->x = g_new0(float, B * H);
    r->xb = g_new0(float, B * H);
    r->xb2 = g_new0(float, B * H);
    r->q = g_new0(float, B * qd);
    r->k = g_new0(float, B * kvd);
    r->v = g_new0(float, B * kvd);
    r->att_out = g_new0(float, B * qd);
    r->att = g_new0(float, nth * group * c->max_seq);
    r->cos = g_new0(float, B * hh);
    r->sin = g_new0(float, B * hh);
    r->rl = g_new0(float, B * E);
    r->top = g_new0(int, (size_t)c->n_layers * B * K);
    r->topw = g_new0(float, (size_t)c->n_layers * B * K);
    r->topn = g_new0(float, (size_t)c->n_layers * B * K);
    r->start = g_new0(int, E + 1);
    r->used = g_new0(int, E);
    r->list = g_new0(int, B * K);
    r->g = g_new0(float, B * H);
    r->h = g_new0(float, B * I);
    r->h2 = g_new0(float, B * I);
    r->moe = g_new0(float, B * H);
    r->lg = g_new0(float, (size_t)LOGIT_ROWS * c->vocab);
    r->rscore = g_new0(float, 2 * E);
    r->rgroup = g_new0(int, 2 * E);
    if (m->lt->attn == LT_ATTN_MLA) {
        r->mqa = g_new0(float, B * c->q_lora);
        r->mkva = g_new0(float, B * (c->kv_lora + c->rope_dim));
        r->mkvb = g_new0(float, B * c->n_heads * (c->nope + c->v_dim));
    }
    r->npair = (int)MIN(E, B * K);
    r->eh = g_new0(float, (size_t)r->npair * c->moe_inter);
    r->eh2 = g_new0(float, (size_t)r->npair * c->moe_inter);
    r->eout = g_new0(float, (size_t)r->npair * H);
    r->bout = g_new0(float *, 2 * (size_t)r->npair);
    r->bx = g_new0(const float *, 2 * (size_t)r->npair);
    r->bmat = g_new0(const qm_mat *, 2 * (size_t)r->npair);
    r->bdown = g_new0(const qm_mat *, (size_t)r->npair);
    r->logits = g_new0(float, c->vocab);
}

void run_state_free(run_state *r)
{
    void *bufs[] = {r->tok, r->lgp, r->lgt, r->sink, r->x, r->xb, r->xb2, r->q, r->k,
                    r->v, r->att_out, r->att, r->cos, r->sin, r->rl, r->top, r->topw, r->topn, r->start,
                    r->used, r->list, r->g, r->h, r->h2, r->moe, r->lg, r->rscore,
                    r->rgroup, r->mqa, r->mkva, r->mkvb, r->eh, r->eh2, r->eout, r->bout,
                    r->bx, r->bmat, r->bdown, r->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        g_free(bufs[i]);
    memset(r, 0, sizeof *r);
}

/* ---- projections and read-ahead ---- */

void proj(model *m, float *out, int ldo, const qm_mat *w, const float *x, int ldx, int n)
{
    if (n == 1)
        qm_matvec(m->team, out, w, x);
    else
        qm_matmat(m->team, out, ldo, w, x, ldx, n);
    m->step_bytes += qm_mat_bytes(w->dtype, w->rows, w->cols);
}

void proj_multi(model *m, int nm, float *const *out, const int *ldo,
                const qm_mat *const *w, const float *x, int ldx, int n)
{
    if (n == 1)
        qm_matvec_multi(m->team, nm, out, w, x);
    else
        qm_matmat_multi(m->team, nm, out, ldo, w, x, ldx, n);
    for (int j = 0; j < nm; j++)
        m->step_bytes += qm_mat_bytes(w[j]->dtype, w[j]->rows, w[j]->cols);
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

/* Layer l's weights outside the routed experts, read ahead while the
 * batch computes (prefill and larger batches only: for one token the
 * calls cost more than they save); l == n_layers: lm_head when the batch
 * in flight needs logits. */
void prefetch_dense(const model *m, int l)
{
    if (m->no_prefetch || l > m->c.n_layers)
        return;
    if (l == m->c.n_layers) {
        if (m->want_logits)
            prefetch_mat(m, &m->w.lm_head);
        return;
    }
    const layer_w *w = &m->w.layers[l];
    const qm_mat *mats[] = {&w->q, &w->k, &w->v, &w->qa, &w->qb, &w->kva, &w->kvb, &w->o,
                            &w->router, &w->sgate, &w->sup, &w->sdown, &w->sg,
                            &w->gate, &w->up, &w->down};
    for (size_t i = 0; i < sizeof mats / sizeof *mats; i++)
        prefetch_mat(m, mats[i]);
}

/* ---- the forward pass ---- */

/* rmsnorm of every token of x into out (both n x hidden). */
static void norm_rows(const model *m, float *out, const float *x, const float *w, int n)
{
    int H = m->c.hidden;
    for (int t = 0; t < n; t++)
        model_rmsnorm(out + (size_t)t * H, x + (size_t)t * H, w, H, m->c.eps);
}

static void add_rows(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* The tokens r.tok[0..n) (at their positions, in their sequences) through
 * every layer. A token's float operations are the same whatever else is
 * in the batch (a matrix-matrix product gives each token the bits of a
 * matrix-vector one; each token attends only to its own sequence), so
 * logits, KV caches and router choices do not depend on how tokens are
 * batched; only the order of the work does. Then the router observer,
 * token by token; then logits where r.lgp asks. The sequences' positions
 * move only when every layer succeeded. */
int forward(model *m, int n, GError **err)
{
    const model_config *c = &m->c;
    run_state *r = &m->r;
    int H = c->hidden;
    m->step_bytes = (uint64_t)n * qm_mat_bytes(m->w.embed.dtype, 1, H);
    for (int t = 0; t < n; t++)
        prefetch_rows(m, &m->w.embed, r->tok[t].token, 1);
    for (int t = 0; t < n; t++)
        qm_mat_row(&m->w.embed, r->tok[t].token, r->x + (size_t)t * H);
    rope_tables(m, n);
    if (n > 1)
        prefetch_dense(m, 0);
    for (int l = 0; l < c->n_layers; l++) {
        const layer_w *w = &m->w.layers[l];
        norm_rows(m, r->xb, r->x, w->in_norm, n);
        qkv(m, w, l, n);
        attention(m, l, n);
        proj(m, r->xb2, H, &w->o, r->att_out, w->o.cols, n);
        add_rows(r->x, r->xb2, (size_t)n * H);
        norm_rows(m, r->xb, r->x, w->post_norm, n);
        if (c->is_moe[l]) {
            if (moe(m, l, n, err) != 0)
                return -1;
        } else {
            if (n > 1)
                prefetch_dense(m, l + 1);
            mlp(m, &w->gate, &w->up, &w->down, r->xb, n, r->xb2);
            add_rows(r->x, r->xb2, (size_t)n * H);
        }
    }
    for (int t = 0; t < n; t++)
        r->tok[t].seq->pos = r->tok[t].pos + 1;
    if (m->router_fn)
        for (int t = 0; t < n; t++)
            for (int l = 0; l < c->n_layers; l++) {
                if (!c->is_moe[l])
                    continue;
                size_t i = ((size_t)l * r->max_batch + t) * c->top_k;
                m->router_fn(m->router_user, r->tok[t].seq->id, r->tok[t].pos,
                             r->tok[t].token, l, c->top_k, r->top + i, r->topw + i,
                             r->topn + i);
            }
    /* lm_head over the rows that want logits, gathered (normed) to the
     * front of xb; one product per run of adjacent destinations, or per
     * block of sink rows handed to logits_fn */
    int nw = 0;
    for (int t = 0; t < n; t++)
        if (r->lgp[t]) {
            model_rmsnorm(r->xb + (size_t)nw * H, r->x + (size_t)t * H, m->w.final_norm, H,
                          c->eps);
            r->lgt[nw] = t;
            r->lgp[nw++] = r->lgp[t];
        }
    if (m->logits_fn && m->in_batch) {
        if (nw > 0 && !r->sink) {
            r->sink_rows = MIN(SINK_ROWS, r->max_batch);
            r->sink = g_new(float, (size_t)r->sink_rows * c->vocab);
        }
        for (int a = 0; a < nw; a += r->sink_rows) {
            int b = MIN(nw, a + r->sink_rows);
            proj(m, r->sink, c->vocab, &m->w.lm_head, r->xb + (size_t)a * H, H, b - a);
            for (int i = a; i < b; i++)
                m->logits_fn(m->logits_user, m->batch_base + r->lgt[i],
                             r->sink + (size_t)(i - a) * c->vocab);
        }
        return 0;
    }
    for (int a = 0, b; a < nw; a = b) {
        for (b = a + 1; b < nw && r->lgp[b] == r->lgp[b - 1] + c->vocab; b++)
            ;
        proj(m, r->lgp[a], c->vocab, &m->w.lm_head, r->xb + (size_t)a * H, H, b - a);
    }
    return 0;
}

void batch_logits(model *m, int t0, int nt, float *out)
{
    const model_config *c = &m->c;
    norm_rows(m, m->r.xb + (size_t)t0 * c->hidden, m->r.x + (size_t)t0 * c->hidden,
              m->w.final_norm, nt);
    proj(m, out, c->vocab, &m->w.lm_head, m->r.xb + (size_t)t0 * c->hidden, c->hidden, nt);
}

/* ---- batches of the public API ---- */

/* Lays out toks[0..n) after checking all of them: ids in the vocabulary,
 * sequences of this model with room for their tokens. */
static int check_batch(model *m, const model_tok *toks, int n, GError **err)
{
    int rc = 0;
    for (int t = 0; t < n && rc == 0; t++) {
        model_seq *s = toks[t].seq ? toks[t].seq : m->seq0;
        if (toks[t].token < 0 || toks[t].token >= m->c.vocab) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "token id %d is outside the vocabulary [0, %d)", toks[t].token,
                        m->c.vocab);
            rc = -1;
        } else if (s->m != m) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "token %d of the batch belongs to a sequence of another model", t);
            rc = -1;
        } else if (s->pos + s->pending >= s->cap) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "the sequence is longer than the context of %d tokens", s->cap);
            rc = -1;
        } else {
            s->pending++;
        }
    }
    for (int t = 0; t < n; t++)
        (toks[t].seq ? toks[t].seq : m->seq0)->pending = 0;
    return rc;
}

int model_batch(model *m, const model_tok *toks, int n, GError **err)
{
    if (n <= 0)
        return 0;
    if (check_batch(m, toks, n, err) != 0)
        return -1;
    run_state *r = &m->r;
    for (int s = 0; s < n; s += r->max_batch) {
        int len = n - s < r->max_batch ? n - s : r->max_batch;
        m->want_logits = 0;
        for (int t = 0; t < len; t++) {
            const model_tok *mt = &toks[s + t];
            model_seq *sq = mt->seq ? mt->seq : m->seq0;
            r->tok[t] = (fwd_tok){sq, mt->token, sq->pos + sq->pending++};
            r->lgp[t] = mt->logits;
            m->want_logits |= mt->logits != NULL;
        }
        for (int t = 0; t < len; t++)
            r->tok[t].seq->pending = 0;
        m->batch_base = s;
        m->in_batch = 1;
        int rc = forward(m, len, err);
        m->in_batch = 0;
        if (rc != 0)
            return -1;
    }
    return 0;
}

void model_set_logits_fn(model *m, model_logits_fn fn, void *user)
{
    m->logits_fn = fn;
    m->logits_user = user;
}

int model_step(model *m, int token, float *logits, GError **err)
{
    model_tok t = {NULL, token, logits};
    return model_batch(m, &t, 1, err);
}

/* The checks model_batch makes, for a prompt of the model's sequence. */
static int feed_check(const model *m, const int *ids, int n, GError **err)
{
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= m->c.vocab) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "token id %d is outside the vocabulary [0, %d)", ids[t], m->c.vocab);
            return -1;
        }
    if (n > m->seq0->cap - m->seq0->pos) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "the sequence is longer than the context of %d tokens", m->seq0->cap);
        return -1;
    }
    return 0;
}

/* Lays out ids[0..n) (n <= max_batch) as the next tokens of the model's
 * sequence; logits (n x vocab) for every token, the last, or none. */
static void lay_out(model *m, const int *ids, int n, float *logits, int all)
{
    run_state *r = &m->r;
    for (int t = 0; t < n; t++) {
        r->tok[t] = (fwd_tok){m->seq0, ids[t], m->seq0->pos + t};
        r->lgp[t] = !logits ? NULL
                    : all   ? logits + (size_t)t * m->c.vocab
                    : t == n - 1 ? logits : NULL;
    }
    m->want_logits = logits != NULL;
}

int model_feed(model *m, const int *ids, int n, model_logits which, float *logits,
               GError **err)
{
    if (n <= 0)
        return 0;
    if (feed_check(m, ids, n, err) != 0)
        return -1;
    int B = m->r.max_batch;
    for (int s = 0; s < n; s += B) {
        int len = n - s < B ? n - s : B, last = s + len == n;
        if (which == MODEL_LOGITS_ALL)
            lay_out(m, ids + s, len, logits + (size_t)s * m->c.vocab, 1);
        else
            lay_out(m, ids + s, len, which == MODEL_LOGITS_LAST && last ? logits : NULL, 0);
        if (forward(m, len, err) != 0)
            return -1;
    }
    return 0;
}

/* Mean negative log-likelihood: the batch's residuals are kept and
 * lm_head runs LOGIT_ROWS positions at a time, so a 256-token batch
 * never holds 256 x vocab logits. */
double model_token_nll(const float *logits, int vocab, int id)
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
    int B = m->r.max_batch;
    for (int s = 0; s < n - 1; s += B) {
        int len = n - 1 - s < B ? n - 1 - s : B;
        lay_out(m, ids + s, len, NULL, 0);
        m->want_logits = 1;
        if (forward(m, len, err) != 0)
            return -1;
        for (int t = 0; t < len; t += LOGIT_ROWS) {
            int nt = len - t < LOGIT_ROWS ? len - t : LOGIT_ROWS;
            batch_logits(m, t, nt, m->r.lg);
            for (int i = 0; i < nt; i++)
                sum += model_token_nll(m->r.lg + (size_t)i * m->c.vocab, m->c.vocab, ids[s + t + i + 1]);
        }
    }
    *nll = sum / (n - 1);
    return 0;
}
