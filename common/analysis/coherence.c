/* coherence.c - see coherence.h: the forward-pass gate */
#include "analysis/coherence.h"

#include "text/chat.h"
#include "model/model.h"
#include "analysis/expert_plan.h"
#include "analysis/perplexity.h"
#include "text/tokenizer.h"
#include "base/fs.h"
#include "base/memory.h"
#include "base/util.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

double coh_default_max_ppl(int vocab)
{
    double cap = vocab / 4.0;
    return cap < 100.0 ? cap : 100.0;
}

int coh_router_threshold(int n_experts)
{
    int q = n_experts / 4, h = n_experts / 2;
    int floor8 = h < 8 ? h : 8;
    return q > floor8 ? q : floor8;
}

/* ---- results ---- */

static void prompt_free(gpointer p)
{
    coh_prompt_result *x = p;
    g_free(x->domain);
    g_free(x->lang);
    g_free(x->prompt);
    g_free(x->expected);
    g_free(x->output);
    g_free(x);
}

static void domain_free(gpointer p)
{
    coh_domain_usage *d = p;
    g_free(d->domain);
    g_free(d->weight);
    g_free(d);
}

static void failure_free(gpointer p)
{
    coh_failure *f = p;
    g_free(f->criterion);
    g_free(f->message);
    g_free(f);
}

static void add_failure(coh_result *r, const char *criterion, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static void add_failure(coh_result *r, const char *criterion, const char *fmt, ...)
{
    coh_failure *f = g_new0(coh_failure, 1);
    va_list ap;
    va_start(ap, fmt);
    f->criterion = g_strdup(criterion);
    f->message = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_ptr_array_add(r->failures, f);
}

/* (a), (b), (c) */
static int failure_rank(const coh_failure *f)
{
    return !strcmp(f->criterion, "source") ? 0 : !strcmp(f->criterion, "perplexity") ? 1 : 2;
}

static gint failure_order(gconstpointer a, gconstpointer b)
{
    return failure_rank(*(coh_failure *const *)a) - failure_rank(*(coh_failure *const *)b);
}

void coh_result_free(coh_result *r)
{
    if (!r)
        return;
    g_free(r->model_path);
    g_free(r->mask);
    g_free(r->plan_path);
    for (int k = 0; k < COH_ROWS; k++) {
        g_free(r->rows[k].layer_used);
        g_free(r->rows[k].layer_allowed);
    }
    g_free(r->source_path);
    g_free(r->text_path);
    for (int i = 0; r->layers && i < r->n_moe_layers; i++) {
        g_free(r->layers[i].choices);
        g_free(r->layers[i].weight);
    }
    g_free(r->layers);
    if (r->prompts)
        g_ptr_array_free(r->prompts, TRUE);
    if (r->domains)
        g_ptr_array_free(r->domains, TRUE);
    if (r->failures)
        g_ptr_array_free(r->failures, TRUE);
    g_free(r);
}

/* ---- the prompt set ---- */

static char *opt_string(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? g_strdup(v->valuestring) : NULL;
}

/* Reads the JSON lines of `path` into coh_prompt_result records (domain,
 * lang, prompt, expected filled in). */
static GPtrArray *load_prompts(const char *path, GError **err)
{
    char *text = NULL;
    gsize len = 0;
    if (fs_read_file(path, "cannot read prompt set", &text, &len, err) != 0)
        return NULL;
    GPtrArray *a = g_ptr_array_new_with_free_func(prompt_free);
    char **lines = g_strsplit(text, "\n", -1);
    g_free(text);
    for (int i = 0; lines[i]; i++) {
        char *s = g_strstrip(lines[i]);
        if (!*s)
            continue;
        cJSON *j = cJSON_Parse(s);
        const cJSON *p = j ? cJSON_GetObjectItemCaseSensitive(j, "prompt") : NULL;
        const cJSON *d = j ? cJSON_GetObjectItemCaseSensitive(j, "domain") : NULL;
        const cJSON *x = j ? cJSON_GetObjectItemCaseSensitive(j, "expected") : NULL;
        const char *why = !cJSON_IsObject(j)                ? "not a JSON object"
                          : !cJSON_IsString(p)              ? "\"prompt\" is not a string"
                          : !*p->valuestring                ? "\"prompt\" is empty"
                          : !cJSON_IsString(d)              ? "\"domain\" is not a string"
                          : x && !cJSON_IsString(x) && !cJSON_IsNull(x)
                              ? "\"expected\" is not a string"
                              : NULL;
        if (why) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE, "cannot parse prompt set '%s': line %d: %s",
                        path, i + 1, why);
            cJSON_Delete(j);
            g_strfreev(lines);
            g_ptr_array_free(a, TRUE);
            return NULL;
        }
        coh_prompt_result *pr = g_new0(coh_prompt_result, 1);
        pr->domain = g_strdup(d->valuestring);
        pr->prompt = g_strdup(p->valuestring);
        pr->lang = opt_string(j, "lang");
        pr->expected = opt_string(j, "expected");
        pr->matches = -1;
        g_ptr_array_add(a, pr);
        cJSON_Delete(j);
    }
    g_strfreev(lines);
    if (a->len == 0) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "prompt set '%s' holds no prompt", path);
        g_ptr_array_free(a, TRUE);
        return NULL;
    }
    return a;
}

/* ---- router statistics ---- */

typedef struct {
    coh_result *r;
    const int *moe_index;     /* [n_layers] layer -> MoE layer index, or -1 */
    coh_domain_usage **domain;/* [prompts] each prompt's domain (its sequence id) */
    int n_prompts;            /* sequences with a larger id are the text's */
    int text_end;             /* ... up to this id; beyond: the ablation's */
    uint8_t *text_used;       /* [n_moe_layers x n_experts] experts the
                               * text's tokens went to, or NULL */
} router_ctx;

static void on_route(void *user, int seq, int pos, int token, int layer, int k,
                     const int *experts, const float *weights, const float *out_norms)
{
    (void)pos;
    (void)token;
    (void)out_norms;
    router_ctx *c = user;
    int li = c->moe_index[layer];
    if (li < 0)
        return;
    if (seq >= c->n_prompts) { /* the text's: the comparison's diversity */
        for (int i = 0; c->text_used && seq < c->text_end && i < k; i++)
            if (experts[i] >= 0 && experts[i] < c->r->n_experts)
                c->text_used[(size_t)li * c->r->n_experts + experts[i]] = 1;
        return; /* (c) is the prompt set's */
    }
    coh_domain_usage *dom = c->domain[seq];
    if (li == 0) { /* each token passes every MoE layer once */
        c->r->routed_tokens++;
        dom->n_tokens++;
    }
    coh_layer_usage *u = &c->r->layers[li];
    for (int i = 0; i < k; i++) {
        int e = experts[i];
        if (e < 0 || e >= u->n_experts)
            continue;
        u->choices[e]++;
        u->weight[e] += weights[i];
        dom->weight[(size_t)li * u->n_experts + e] += weights[i];
    }
}

static coh_domain_usage *domain_for(coh_result *r, const char *name)
{
    for (guint i = 0; i < r->domains->len; i++) {
        coh_domain_usage *d = r->domains->pdata[i];
        if (!strcmp(d->domain, name))
            return d;
    }
    coh_domain_usage *d = g_new0(coh_domain_usage, 1);
    d->domain = g_strdup(name);
    d->weight = g_new0(double, (size_t)r->n_moe_layers * r->n_experts);
    g_ptr_array_add(r->domains, d);
    return d;
}

/* ---- pieces of the run ---- */

static int encode(tok_t *tok, const char *text, GArray *ids, const char *what, GError **err)
{
    g_array_set_size(ids, 0);
    GError *e = NULL;
    if (tok_encode(tok, text, strlen(text), 0, ids, &e) < 0) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "%s: %s", what, e->message);
        g_error_free(e);
        return -1;
    }
    return 0;
}

static void progress(const coh_opts *o, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void progress(const coh_opts *o, const char *fmt, ...)
{
    if (!o->progress)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *s = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    o->progress(o->progress_user, s);
    g_free(s);
}

/* A prompt of the set as a sequence of the batch. */
typedef struct {
    model_seq *seq;
    GArray *ids;              /* the prompt's tokens */
    GArray *exp;              /* its expected text's tokens (maybe none) */
    int *am;                  /* (exp->len + 1) argmax after the prompt and
                               * after each expected token */
    int n_new;                /* tokens to generate at most */
    int cap;                  /* tokens the sequence can hold */
    int *out, n_out, done;
    float *logits;            /* (vocab) next-token logits */
    float *all;               /* (prompt tokens, vocab) for the source comparison, or NULL */
} gate_seq;

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* A token of the gate's batches and what is kept of its logits. */
typedef struct {
    model_seq *seq;
    int token;
    float *logits;            /* keep them all here ([vocab]), or NULL */
    int *argmax;              /* keep their argmax here, or NULL */
    double *nll;              /* add -log p(target) here, or NULL */
    int target;
} gate_tok;

/* What gate_batch keeps of a row of logits (model_logits_fn). */
typedef struct {
    const gate_tok *gt;
    int vocab;
} gate_sink;

static void keep_logits(void *user, int i, const float *lg)
{
    const gate_sink *k = user;
    const gate_tok *g = &k->gt[i];
    if (g->logits)
        memcpy(g->logits, lg, sizeof(float) * k->vocab);
    if (g->argmax)
        *g->argmax = argmax(lg, k->vocab);
    if (g->nll)
        *g->nll += model_token_nll(lg, k->vocab, g->target);
}

/* Feeds gt[0..n) through model_batch; each row of logits is kept as its
 * token asks as lm_head computes it (model_set_logits_fn), so no more
 * than a block of rows is held. Each nll is added in token order, as
 * model_nll adds them. */
static int gate_batch(model *m, const gate_tok *gt, int n, GError **err)
{
    static float want; /* a non-NULL `logits`: the row goes to keep_logits */
    gate_sink k = {gt, model_get_config(m)->vocab};
    model_tok *toks = g_new(model_tok, MAX(n, 1));
    for (int t = 0; t < n; t++)
        toks[t] = (model_tok){gt[t].seq, gt[t].token,
                              gt[t].logits || gt[t].argmax || gt[t].nll ? &want : NULL};
    model_set_logits_fn(m, keep_logits, &k);
    int rc = model_batch(m, toks, n, err);
    model_set_logits_fn(m, NULL, NULL);
    g_free(toks);
    return rc;
}

/* The prompts chosen for (a): the first of each domain, then further ones
 * up to COH_SOURCE_PROMPTS, in that order. */
static GArray *source_picks(const coh_result *r)
{
    GPtrArray *seen = g_ptr_array_new();
    GArray *pick = g_array_new(FALSE, FALSE, sizeof(int));
    for (guint i = 0; i < r->prompts->len && pick->len < COH_SOURCE_PROMPTS; i++) {
        const char *d = ((coh_prompt_result *)r->prompts->pdata[i])->domain;
        gboolean known = FALSE;
        for (guint j = 0; j < seen->len; j++)
            known |= !strcmp(seen->pdata[j], d);
        if (!known) {
            g_ptr_array_add(seen, (gpointer)d);
            int v = (int)i;
            g_array_append_val(pick, v);
        }
    }
    for (guint i = 0; i < r->prompts->len && pick->len < COH_SOURCE_PROMPTS; i++) {
        gboolean taken = FALSE;
        for (guint j = 0; j < pick->len; j++)
            taken |= g_array_index(pick, int, j) == (int)i;
        if (!taken) {
            int v = (int)i;
            g_array_append_val(pick, v);
        }
    }
    g_ptr_array_free(seen, TRUE);
    return pick;
}

/* The reference text cut as ppl_ids() cuts it (perplexity.h): windows of
 * ctx tokens overlapping by one, each its own sequence starting afresh;
 * sum[w] gathers window w's nll terms in token order, as model_nll does,
 * so the perplexity has ppl_ids()'s bits. */
typedef struct {
    const int *ids;
    int n, ctx, nw;
    model_seq **seq;          /* [nw] */
    double *sum;              /* [nw] */
} text_win;

static void windows_free(text_win *tw)
{
    for (int w = 0; tw->seq && w < tw->nw; w++)
        model_seq_free(tw->seq[w]);
    g_free(tw->seq);
    g_free(tw->sum);
}

static int win_start(const text_win *tw, int w) { return w * (tw->ctx - 1); }
static int win_len(const text_win *tw, int w) { return MIN(tw->n - win_start(tw, w), tw->ctx); }

/* Sequences ids first_id, first_id + 1, ... for the windows of ids[0..n). */
static int windows_new(model *m, const int *ids, int n, int first_id, text_win *tw,
                       GError **err)
{
    const model_config *c = model_get_config(m);
    *tw = (text_win){.ids = ids, .n = n, .ctx = MIN(c->max_seq, PPL_DEFAULT_CONTEXT)};
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "reference text: token %d (id %d) is outside the model's vocabulary "
                        "[0, %d)", i, ids[i], c->vocab);
            return -1;
        }
    if (tw->ctx < 2) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "reference text: the model's context of %d tokens is shorter than 2",
                    c->max_seq);
        return -1;
    }
    tw->nw = (n - 2) / (tw->ctx - 1) + 1;
    tw->seq = g_new0(model_seq *, tw->nw);
    tw->sum = g_new0(double, tw->nw);
    for (int w = 0; w < tw->nw; w++)
        if (!(tw->seq[w] = model_seq_new(m, first_id + w, win_len(tw, w), err))) {
            g_prefix_error(err, "reference text: ");
            return -1;
        }
    return 0;
}

/* Appends the windows' tokens to gt (each scoring the next token of its
 * window, the last none); returns how many. */
static int windows_toks(text_win *tw, gate_tok *gt)
{
    int k = 0;
    for (int w = 0; w < tw->nw; w++) {
        int s = win_start(tw, w), len = win_len(tw, w);
        tw->sum[w] = 0;
        model_seq_reset(tw->seq[w]);
        for (int t = 0; t < len; t++)
            gt[k++] = (gate_tok){.seq = tw->seq[w], .token = tw->ids[s + t],
                                 .nll = t < len - 1 ? &tw->sum[w] : NULL,
                                 .target = t < len - 1 ? tw->ids[s + t + 1] : 0};
    }
    return k;
}

/* The mean nll per scored token, as ppl_ids() forms it. */
static double windows_nll(const text_win *tw)
{
    double sum = 0;
    for (int w = 0; w < tw->nw; w++) {
        int len = win_len(tw, w);
        double mean = tw->sum[w] / (len - 1);
        sum += mean * (len - 1);
    }
    return sum / (tw->n - 1);
}

static void gate_seqs_free(gate_seq *g, guint n)
{
    for (guint i = 0; g && i < n; i++) {
        model_seq_free(g[i].seq);
        if (g[i].ids)
            g_array_free(g[i].ids, TRUE);
        if (g[i].exp)
            g_array_free(g[i].exp, TRUE);
        g_free(g[i].am);
        g_free(g[i].out);
        g_free(g[i].logits);
        g_free(g[i].all);
    }
    g_free(g);
}

/* Appends a chosen token to a continuation; 1 when it ends there. */
static int take(gate_seq *g, int token, const GArray *stop)
{
    g->out[g->n_out++] = token;
    for (guint j = 0; j < stop->len; j++)
        if (g_array_index(stop, int32_t, j) == token)
            return g->done = 1;
    return g->done = g->n_out == g->n_new;
}

/* The prompt set as one batch: every prompt its own sequence, followed by
 * its expected text when it has one, all of them through the layers
 * together (keeping every position's logits of the prompts in `pick`, for
 * the source comparison). "Continues as expected" is teacher forcing: the
 * argmax after the prompt and after each expected token is the next
 * expected token. That is the greedy continuation's prefix, so greedy
 * generation goes on from the first expected token the model would not
 * have chosen (the sequence truncated there), all prompts advancing
 * together, one batch per step. A token's bits do not depend on its batch
 * (model_batch), so everything is what running the prompts one after
 * another gives; the router observer (c) sees the prompt and expected
 * tokens only, so the verdict does not depend on --gen-tokens. */
static int run_prompts(model *m, tok_t *tok, const coh_opts *o, const int *moe_index,
                       const GArray *pick, text_win *tw, text_win *abl, uint8_t *text_used,
                       coh_result *r, gate_seq **seqs_out, GError **err)
{
    const model_config *c = model_get_config(m);
    /* a continuation ends where a generation would: end of text or turn */
    GArray *stop = g_array_new(FALSE, FALSE, sizeof(int32_t));
    if (chat_end_ids(model_checkpoint(m), tok, stop, err) < 0) {
        g_array_free(stop, TRUE);
        return -1;
    }
    guint np = r->prompts->len;
    gate_seq *g = g_new0(gate_seq, np);
    coh_domain_usage **dom = g_new0(coh_domain_usage *, np);
    router_ctx rc = {.r = r, .moe_index = moe_index, .domain = dom, .n_prompts = (int)np,
                     .text_end = (int)np + tw->nw, .text_used = text_used};
    gate_tok *gt = NULL;
    model_tok *toks = NULL;
    int rc_ok = -1, total = 0, n_new = o->n_new > 0 ? o->n_new : COH_DEFAULT_NEW;
    for (guint i = 0; i < np; i++) {
        coh_prompt_result *p = r->prompts->pdata[i];
        char what[64];
        snprintf(what, sizeof what, "prompt %u", i + 1);
        g[i].ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
        g[i].exp = g_array_new(FALSE, FALSE, sizeof(int32_t));
        if (encode(tok, p->prompt, g[i].ids, what, err) < 0 ||
            (p->expected && encode(tok, p->expected, g[i].exp, what, err) < 0))
            goto out;
        int n = (int)g[i].ids->len, ne = (int)g[i].exp->len;
        if (n < 1) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE, "%s: the prompt is empty", what);
            goto out;
        }
        for (int t = 0; t < n + ne; t++) {
            int id = t < n ? g_array_index(g[i].ids, int32_t, t)
                           : g_array_index(g[i].exp, int32_t, t - n);
            if (id < 0 || id >= c->vocab) {
                g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                            "%s: token id %d is outside the vocabulary [0, %d)", what, id,
                            c->vocab);
                goto out;
            }
        }
        if (n + ne > c->max_seq) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "%s: the prompt%s is longer than the context of %d tokens", what,
                        ne ? " with its expected text" : "", c->max_seq);
            goto out;
        }
        g[i].n_new = n_new;
        /* the prompt with its expected text, or with the generated tokens
         * fed back */
        g[i].cap = MIN(MAX(n + ne, n + n_new - 1), c->max_seq);
        if (!(g[i].seq = model_seq_new(m, (int)i, g[i].cap, err))) {
            g_prefix_error(err, "%s: ", what);
            goto out;
        }
        g[i].am = g_new(int, ne + 1);
        g[i].out = g_new(int, MAX(n_new, ne + 1));
        g[i].logits = g_new(float, c->vocab);
        for (guint k = 0; k < pick->len; k++)
            if (g_array_index(pick, int, k) == (int)i)
                g[i].all = g_new(float, (size_t)n * c->vocab);
        p->n_prompt_tokens = n;
        dom[i] = domain_for(r, p->domain);
        dom[i]->n_prompts++;
        total += n + ne;
    }
    progress(o, "prompt set: %u prompt%s, %d tokens with the expected texts, and the "
             "reference text, %d tokens in %d window%s, in one batch; then up to %d "
             "generated tokens each, all prompts one step per batch", np, np == 1 ? "" : "s",
             total, tw->n, tw->nw, tw->nw == 1 ? "" : "s", n_new);
    if (abl)
        progress(o, "ablation: perplexity with the router masked to %s, %d tokens in one "
                 "batch with the prompt set", COH_ABLATION_MASK, abl->n);
    gt = g_new0(gate_tok, (size_t)total + tw->nw * (size_t)tw->ctx +
                              (abl ? abl->nw * (size_t)abl->ctx : 0));
    int n = 0;
    for (guint i = 0; i < np; i++) {
        int len = (int)g[i].ids->len, ne = (int)g[i].exp->len;
        for (int t = 0; t < len + ne; t++) {
            gate_tok *x = &gt[n++];
            x->seq = g[i].seq;
            x->token = t < len ? g_array_index(g[i].ids, int32_t, t)
                               : g_array_index(g[i].exp, int32_t, t - len);
            x->logits = g[i].all && t < len ? g[i].all + (size_t)t * c->vocab : NULL;
            x->argmax = t >= len - 1 ? &g[i].am[t - len + 1] : NULL;
        }
    }
    n += windows_toks(tw, gt + n);
    if (abl)
        n += windows_toks(abl, gt + n);
    model_set_router_log(m, on_route, &rc);
    int bad = gate_batch(m, gt, n, err) < 0;
    model_set_router_log(m, NULL, NULL);
    if (bad) {
        g_prefix_error(err, "prompt set: ");
        goto out;
    }
    /* by default, no step that would read the model again */
    r->weights_bytes = ckpt_loaded_bytes(model_checkpoint(m));
    r->memory_bytes = qm_memory_available();
    if (o->n_new <= 0 && r->memory_bytes && r->weights_bytes > r->memory_bytes) {
        n_new = 1;
        r->gen_limited = 1;
        char w[32], a[32];
        progress(o, "continuations: the tokens teacher forcing chose; the model's files "
                 "(%s) are larger than the memory available (%s), so each generated token "
                 "would read them again (--gen-tokens N generates N)",
                 qm_human_bytes(r->weights_bytes, w, sizeof w),
                 qm_human_bytes(r->memory_bytes, a, sizeof a));
    }
    r->gen_tokens = n_new;
    /* the greedy tokens teacher forcing already gives: up to and
     * including the first that differs from the expected text */
    for (guint i = 0; i < np; i++) {
        coh_prompt_result *p = r->prompts->pdata[i];
        int len = (int)g[i].ids->len, ne = (int)g[i].exp->len, j = 0;
        while (j < ne && g[i].am[j] == g_array_index(g[i].exp, int32_t, j))
            j++;
        if (p->expected) {
            p->matches = j == ne;
            r->n_expected++;
            r->n_matching += p->matches;
        }
        /* those cost nothing: shown even beyond --gen-tokens */
        g[i].n_new = MAX(n_new, j + 1);
        for (int k = 0; k <= j && !g[i].done; k++)
            take(&g[i], g[i].am[k], stop);
        /* fed: the prompt and the chosen tokens but the last */
        model_seq_truncate(g[i].seq, len + g[i].n_out - 1);
    }
    toks = g_new(model_tok, np);
    for (int step = 0;; step++) {
        n = 0;
        for (guint i = 0; i < np; i++) {
            if (g[i].done)
                continue;
            if (model_seq_pos(g[i].seq) >= g[i].cap) {
                g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                            "prompt %u: the sequence is longer than the context of %d "
                            "tokens", i + 1, c->max_seq);
                goto out;
            }
            toks[n++] = (model_tok){g[i].seq, g[i].out[g[i].n_out - 1], g[i].logits};
        }
        if (n == 0)
            break;
        if (model_batch(m, toks, n, err) < 0) {
            g_prefix_error(err, "prompt set, generated token %d: ", step + 2);
            goto out;
        }
        for (guint i = 0; i < np; i++)
            if (!g[i].done)
                take(&g[i], argmax(g[i].logits, c->vocab), stop);
    }
    for (guint i = 0; i < np; i++) {
        coh_prompt_result *p = r->prompts->pdata[i];
        int n_out = g[i].n_out, n_text = n_out;
        p->n_output_tokens = n_out;
        for (guint j = 0; n_out > 0 && j < stop->len; j++)
            if (g[i].out[n_out - 1] == g_array_index(stop, int32_t, j)) {
                p->stopped = 1;
                n_text = n_out - 1;
            }
        /* a garbled continuation can end mid-character: U+FFFD keeps the
         * report (and its JSON) valid UTF-8 */
        size_t n_bytes = 0;
        char *raw = tok_decode(tok, (const int32_t *)g[i].out, (size_t)n_text, &n_bytes);
        p->output = g_utf8_make_valid(raw, (gssize)n_bytes);
        g_free(raw);
    }
    rc_ok = 0;
out:
    g_array_free(stop, TRUE);
    g_free(gt);
    g_free(toks);
    g_free(dom);
    if (rc_ok == 0 && seqs_out) {
        *seqs_out = g;
    } else {
        gate_seqs_free(g, np);
        if (seqs_out)
            *seqs_out = NULL;
    }
    return rc_ok;
}
static void check_router(coh_result *r)
{
    r->router_threshold = coh_router_threshold(r->n_experts);
    r->router_ok = 1;
    int worst_threshold = r->router_threshold;
    uint8_t *bad = g_new0(uint8_t, r->n_moe_layers > 0 ? r->n_moe_layers : 1);
    int n_bad = 0, least = r->n_experts;
    for (int i = 0; i < r->n_moe_layers; i++) {
        coh_layer_usage *u = &r->layers[i];
        u->used = u->used_first = 0;
        for (int e = 0; e < u->n_experts; e++)
            u->used += u->choices[e] > 0;
        u->ok = u->used > u->threshold;
        if (!u->ok) {
            bad[i] = 1;
            n_bad++;
            if (u->used < least)
                least = u->used;
        }
    }
    long choices = (long)r->routed_tokens * r->top_k;
    if (r->n_moe_layers > 0 && choices <= r->router_threshold) {
        r->router_ok = 0;
        add_failure(r, "router",
                    "the prompt set routes %d tokens (%ld top-%d choices per layer): too few "
                    "to show more than %d of %d experts in use",
                    r->routed_tokens, choices, r->top_k, r->router_threshold, r->n_experts);
    } else if (n_bad) {
        r->router_ok = 0;
        /* name the experts the worst layer was confined to */
        int worst = -1;
        for (int i = 0; i < r->n_moe_layers; i++)
            if (bad[i] && (worst < 0 || r->layers[i].used < r->layers[worst].used))
                worst = i;
        worst_threshold = r->layers[worst].threshold;
        int allowed = r->layers[worst].allowed;
        uint8_t *set = g_new0(uint8_t, r->n_experts);
        for (int e = 0; e < r->n_experts; e++)
            set[e] = r->layers[worst].choices[e] > 0;
        /* layer numbers, not MoE indices: they differ with dense layers */
        int n_layers = r->layers[r->n_moe_layers - 1].layer + 1;
        uint8_t *bad_layers = g_new0(uint8_t, n_layers);
        for (int i = 0; i < r->n_moe_layers; i++)
            bad_layers[r->layers[i].layer] = bad[i];
        char *which = qm_list_format(set, r->n_experts);
        char *layers = qm_list_format(bad_layers, n_layers);
        add_failure(r, "router",
                    "confined: %d of %d MoE layers (%s) chose at most %d of %d "
                    "experts%s across the prompt set (needs more than %d); layer %d used "
                    "only experts %s",
                    n_bad, r->n_moe_layers, layers, least, allowed,
                    allowed < r->n_experts ? " the plan allows" : "", worst_threshold,
                    r->layers[worst].layer, which);
        g_free(bad_layers);
        g_free(which);
        g_free(layers);
        g_free(set);
    }
    g_free(bad);
}

/* (a): the source model on the picked prompts, against the logits the
 * prompt set's batch kept for them. */
static int compare_source(const coh_opts *o, const uint8_t *mask, const expert_plan *plan,
                          const GArray *pick, const gate_seq *g, coh_result *r,
                          GError **err)
{
    model_opts mo = {.n_threads = o->n_threads > 0 ? o->n_threads : 1};
    model *s = model_load(o->source, &mo, err);
    if (!s) {
        g_prefix_error(err, "source '%s': ", o->source);
        return -1;
    }
    int rc = 0;
    if (model_get_config(s)->vocab != r->vocab) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "source '%s' has a vocabulary of %d tokens, '%s' of %d", o->source,
                    model_get_config(s)->vocab, r->model_path, r->vocab);
        model_free(s);
        return -1;
    }
    if ((mask && model_set_mask(s, mask, err) < 0) ||
        (plan && expert_plan_apply(s, plan, err) < 0)) {
        g_prefix_error(err, "source '%s': ", o->source);
        model_free(s);
        return -1;
    }
    r->source_checked = 1;
    r->source_path = g_strdup(o->source);
    r->source_identical = 1;
    r->source_first_prompt = r->source_first_pos = -1;
    float *b = NULL;
    for (guint k = 0; k < pick->len && rc == 0; k++) {
        int pi = g_array_index(pick, int, k);
        const coh_prompt_result *p = r->prompts->pdata[pi];
        const GArray *ids = g[pi].ids;
        const float *a = g[pi].all;
        progress(o, "source: prompt %u of %u [%s], %u tokens", k + 1, pick->len, p->domain,
                 ids->len);
        size_t n = (size_t)ids->len * r->vocab;
        b = g_renew(float, b, n);
        if (model_sequence_logits(s, (const int *)ids->data, (int)ids->len, b, err) < 0) {
            rc = -1;
            break;
        }
        r->source_prompts++;
        if (!memcmp(a, b, n * sizeof(float)))
            continue;
        for (size_t i = 0; i < n; i++) {
            uint32_t ua, ub;
            memcpy(&ua, &a[i], 4);
            memcpy(&ub, &b[i], 4);
            if (ua == ub)
                continue;
            if (r->source_identical) {
                r->source_identical = 0;
                r->source_first_prompt = pi;
                r->source_first_pos = (int)(i / (size_t)r->vocab);
            }
            double d = fabs((double)a[i] - (double)b[i]);
            if (!(d <= r->source_max_diff)) /* NaN counts as largest */
                r->source_max_diff = isnan(d) ? INFINITY : d;
        }
    }
    g_free(b);
    model_free(s);
    if (rc == 0 && !r->source_identical)
        add_failure(r, "source",
                    "logits differ from the source '%s': prompt %d, position %d first; "
                    "largest difference %.6g",
                    o->source, r->source_first_prompt + 1, r->source_first_pos,
                    r->source_max_diff);
    return rc;
}

/* One row of the comparison: its perplexity, from the text's nll, and its
 * diversity, from the experts the text went to (used, cleared after). */
static void fill_row(coh_result *r, int k, const char *name, const text_win *tw,
                     uint8_t *used)
{
    coh_row *row = &r->rows[k];
    row->name = name;
    row->nll = windows_nll(tw);
    row->ppl = exp(row->nll);
    row->layer_used = g_new0(int, MAX(r->n_moe_layers, 1));
    row->layer_allowed = g_new0(int, MAX(r->n_moe_layers, 1));
    for (int i = 0; i < r->n_moe_layers; i++) {
        for (int e = 0; e < r->n_experts; e++)
            row->layer_used[i] += used[(size_t)i * r->n_experts + e];
        row->layer_allowed[i] = k == COH_ROW_FREE ? r->n_experts : r->layers[i].allowed;
        row->used += row->layer_used[i];
        row->allowed += row->layer_allowed[i];
    }
    memset(used, 0, (size_t)r->n_moe_layers * r->n_experts);
}

/* The rows beyond the plan's (which the prompt set's batch gave): the
 * reference text again with each listed layer confined to its first N
 * experts, then with the router free. Leaves the router free. */
static int compare_rows(model *m, const coh_opts *o, const expert_plan *plan,
                        const int *moe_index, text_win *tw, uint8_t *used, coh_result *r,
                        GError **err)
{
    const model_config *c = model_get_config(m);
    /* no prompts in this batch: every sequence is the text's */
    router_ctx rc = {.r = r, .moe_index = moe_index, .n_prompts = 0, .text_end = INT_MAX,
                     .text_used = used};
    gate_tok *gt = g_new0(gate_tok, (size_t)tw->nw * tw->ctx);
    uint8_t *first = g_new0(uint8_t, c->n_experts);
    int rc_ok = 0;
    for (int k = COH_ROW_FIRST; k <= COH_ROW_FREE && rc_ok == 0; k++) {
        progress(o, "comparison: perplexity with %s, %d tokens in one batch",
                 k == COH_ROW_FIRST ? "each listed layer's router confined to its first N "
                                      "experts"
                                    : "the router free",
                 tw->n);
        for (int l = 0; l < c->n_layers && rc_ok == 0; l++) {
            if (!c->is_moe[l])
                continue;
            int n = l < plan->n_layers && plan->keep[l] ? plan->n_keep[l] : 0;
            for (int e = 0; e < c->n_experts; e++)
                first[e] = e < n;
            rc_ok = model_set_layer_mask(m, l, k == COH_ROW_FIRST && n ? first : NULL, err);
        }
        if (rc_ok < 0)
            break;
        int n = windows_toks(tw, gt);
        model_set_router_log(m, on_route, &rc);
        rc_ok = gate_batch(m, gt, n, err);
        model_set_router_log(m, NULL, NULL);
        if (rc_ok == 0)
            fill_row(r, k, k == COH_ROW_FIRST ? "first" : "free", tw, used);
    }
    g_free(first);
    g_free(gt);
    if (rc_ok < 0)
        g_prefix_error(err, "comparison: ");
    return rc_ok;
}

int coh_run(const char *path, const coh_opts *o, coh_result **out, GError **err)
{
    double t0 = qm_monotonic();
    *out = NULL;
    model_opts mo = {.n_threads = o->n_threads > 0 ? o->n_threads : 1,
                     .max_batch = COH_BATCH};
    coh_result *r = g_new0(coh_result, 1);
    r->model_path = g_strdup(path);
    r->text_path = g_strdup(o->text_path);
    r->prompts = NULL;
    r->domains = g_ptr_array_new_with_free_func(domain_free);
    r->failures = g_ptr_array_new_with_free_func(failure_free);
    r->source_first_prompt = r->source_first_pos = -1;
    model *m = NULL;
    tok_t *tok = NULL;
    uint8_t *mask = NULL, *text_used = NULL;
    expert_plan *plan = NULL;
    int *moe_index = NULL;
    GArray *pick = NULL;
    gate_seq *gs = NULL;
    text_win tw = {0}, abl = {0};
    int ablate = 0;
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    char *text = NULL;
    gsize text_len = 0;
    int rc = -1;

    if (!(r->prompts = load_prompts(o->prompts_path, err)))
        goto done;
    if (fs_read_file(o->text_path, "cannot read reference text", &text, &text_len, err))
        goto done;
    if (!(m = model_load(path, &mo, err)) || !(tok = tok_load(path, err)))
        goto done;
    const model_config *c = model_get_config(m);
    r->vocab = c->vocab;
    r->tok_vocab = tok_vocab_size(tok);
    r->n_experts = c->n_experts;
    r->top_k = c->top_k;
    moe_index = g_new(int, c->n_layers);
    for (int l = 0; l < c->n_layers; l++)
        moe_index[l] = c->is_moe[l] ? r->n_moe_layers++ : -1;
    r->layers = g_new0(coh_layer_usage, r->n_moe_layers > 0 ? r->n_moe_layers : 1);
    for (int l = 0, i = 0; l < c->n_layers; l++)
        if (moe_index[l] >= 0) {
            coh_layer_usage *u = &r->layers[i++];
            u->layer = l;
            u->n_experts = r->n_experts;
            u->allowed = r->n_experts;
            u->threshold = coh_router_threshold(r->n_experts);
            u->choices = g_new0(uint32_t, r->n_experts > 0 ? r->n_experts : 1);
            u->weight = g_new0(double, r->n_experts > 0 ? r->n_experts : 1);
        }
    r->max_ppl = o->max_ppl > 0 ? o->max_ppl : coh_default_max_ppl(r->vocab);

    if (o->mask) {
        mask = g_new0(uint8_t, r->n_experts > 0 ? r->n_experts : 1);
        if (r->n_experts <= 0) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "--mask-experts: '%s' has no routed experts", path);
            goto done;
        }
        if (qm_list_parse(o->mask, r->n_experts, mask, "--mask-experts", err) < 0 ||
            model_set_mask(m, mask, err) < 0)
            goto done;
        r->mask = qm_list_format(mask, r->n_experts);
    }
    if (o->keep_experts) {
        if (o->mask) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "--mask-experts and --keep-experts both restrict the router: "
                        "give one");
            goto done;
        }
        if (r->n_experts <= 0) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "--keep-experts: '%s' has no routed experts", path);
            goto done;
        }
        if (!(plan = expert_plan_load_model(o->keep_experts, m, err)) ||
            expert_plan_apply(m, plan, err) < 0) {
            /* a plan that does not fit is the gate's input, not a verdict */
            if (*err && (*err)->code == QM_ERR_FORMAT)
                (*err)->code = QM_ERR_USAGE;
            goto done;
        }
        r->plan_path = g_strdup(o->keep_experts);
        for (int i = 0; i < r->n_moe_layers; i++) {
            coh_layer_usage *u = &r->layers[i];
            if (u->layer < plan->n_layers && plan->keep[u->layer]) {
                r->plan_layers++;
                u->allowed = plan->n_keep[u->layer];
                u->threshold = coh_router_threshold(u->allowed);
            }
        }
        r->compare_run = 1;
        text_used = g_new0(uint8_t, (size_t)MAX(r->n_moe_layers, 1) * r->n_experts);
    }

    if (encode(tok, text, ids, "reference text", err) < 0)
        goto done;
    r->text_tokens = (int)ids->len;
    if (ids->len < 2) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "reference text '%s' has %u token%s: perplexity needs at least 2",
                    o->text_path, ids->len, ids->len == 1 ? "" : "s");
        goto done;
    }
    if (windows_new(m, (const int *)ids->data, (int)ids->len, (int)r->prompts->len, &tw,
                    err) < 0)
        goto done;
    /* the ablation: the text's windows again, as sequences of their own
     * whose router is masked, in the same batch (each layer's experts
     * read once for both) */
    if (r->n_experts > 8 && r->top_k <= 8) {
        uint8_t *am = g_new0(uint8_t, r->n_experts);
        int bad = qm_list_parse(COH_ABLATION_MASK, r->n_experts, am, "ablation", err) < 0 ||
                  windows_new(m, (const int *)ids->data, (int)ids->len,
                              (int)r->prompts->len + tw.nw, &abl, err) < 0;
        for (int w = 0; !bad && w < abl.nw; w++)
            bad = model_seq_set_mask(abl.seq[w], am, err) < 0;
        g_free(am);
        if (bad)
            goto done;
        ablate = 1;
    }
    /* the prompt set, the reference text and its ablation, one batch:
     * continuations, router usage (c), the logits (a) compares and the
     * perplexities (b) */
    pick = o->source ? source_picks(r) : g_array_new(FALSE, FALSE, sizeof(int));
    if (run_prompts(m, tok, o, moe_index, pick, &tw, ablate ? &abl : NULL, text_used, r, &gs,
                    err) < 0)
        goto done;
    /* (a) */
    if (o->source && compare_source(o, mask, plan, pick, gs, r, err) < 0)
        goto done;
    gate_seqs_free(gs, r->prompts->len);
    gs = NULL;
    if (r->n_experts > 0)
        check_router(r);
    else
        r->router_ok = 1;

    /* (b) */
    r->nll = windows_nll(&tw);
    r->ppl = exp(r->nll);
    r->ppl_ok = r->ppl <= r->max_ppl;
    if (plan)
        fill_row(r, COH_ROW_PLAN, "plan", &tw, text_used);
    if (!r->ppl_ok)
        add_failure(r, "perplexity",
                    "%.6g on the reference text '%s' (%d tokens) is above the maximum %.6g",
                    r->ppl, o->text_path, r->text_tokens, r->max_ppl);
    if (ablate) {
        r->ablation_nll = windows_nll(&abl);
        r->ablation_run = 1;
        r->ablation_ppl = exp(r->ablation_nll);
    }
    /* the comparison at the same N: first N and free after the plan */
    if (plan && compare_rows(m, o, plan, moe_index, &tw, text_used, r, err) < 0)
        goto done;
    g_ptr_array_sort(r->failures, failure_order);
    rc = 0;
done:
    windows_free(&tw);
    windows_free(&abl);
    if (gs)
        gate_seqs_free(gs, r->prompts->len);
    if (pick)
        g_array_free(pick, TRUE);
    g_free(text);
    g_array_free(ids, TRUE);
    g_free(moe_index);
    g_free(mask);
    g_free(text_used);
    expert_plan_free(plan);
    tok_free(tok);
    model_free(m);
    r->seconds = qm_monotonic() - t0;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        r->peak_rss_bytes = (uint64_t)ru.ru_maxrss << 10; /* Linux: KiB */
    if (rc < 0)
        coh_result_free(r);
    else
        *out = r;
    return rc;
}

/* ---- JSON ---- */

int coh_top_experts(const double *w, int ne, int n, int *ids, double *shares)
{
    double total = 0;
    for (int e = 0; e < ne; e++)
        total += w[e];
    int k = 0;
    for (; k < n; k++) {
        int best = -1;
        for (int e = 0; e < ne; e++) {
            int taken = 0;
            for (int i = 0; i < k; i++)
                taken |= ids[i] == e;
            if (!taken && w[e] > 0 && (best < 0 || w[e] > w[best]))
                best = e;
        }
        if (best < 0)
            break;
        ids[k] = best;
        shares[k] = w[best] / total;
    }
    return k;
}

static cJSON *top_experts(const double *w, int ne, int n)
{
    int ids[8];
    double sh[8];
    cJSON *a = cJSON_CreateArray();
    int k = coh_top_experts(w, ne, n < 8 ? n : 8, ids, sh);
    for (int i = 0; i < k; i++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "expert", ids[i]);
        cJSON_AddNumberToObject(x, "share", sh[i]);
        cJSON_AddItemToArray(a, x);
    }
    return a;
}

static void add_number_or_null(cJSON *o, const char *key, double v)
{
    if (isfinite(v))
        cJSON_AddNumberToObject(o, key, v);
    else /* JSON has no infinity: an overflowing perplexity is a string */
        cJSON_AddStringToObject(o, key, isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
}

cJSON *coh_result_to_json(const coh_result *r)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddBoolToObject(j, "ok", r->failures->len == 0);
    cJSON *fa = cJSON_AddArrayToObject(j, "failures");
    for (guint i = 0; i < r->failures->len; i++) {
        const coh_failure *f = r->failures->pdata[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "criterion", f->criterion);
        cJSON_AddStringToObject(x, "message", f->message);
        cJSON_AddItemToArray(fa, x);
    }
    cJSON_AddStringToObject(j, "model", r->model_path);
    cJSON_AddNumberToObject(j, "vocab", r->vocab);
    cJSON_AddNumberToObject(j, "tokenizer_vocab", r->tok_vocab);
    cJSON_AddNumberToObject(j, "experts", r->n_experts);
    cJSON_AddNumberToObject(j, "top_k", r->top_k);
    cJSON_AddNumberToObject(j, "moe_layers", r->n_moe_layers);
    if (r->mask)
        cJSON_AddStringToObject(j, "mask_experts", r->mask);
    else
        cJSON_AddNullToObject(j, "mask_experts");

    cJSON *s = cJSON_AddObjectToObject(j, "source");
    cJSON_AddBoolToObject(s, "checked", r->source_checked);
    if (r->source_checked) {
        cJSON_AddStringToObject(s, "path", r->source_path);
        cJSON_AddNumberToObject(s, "prompts", r->source_prompts);
        cJSON_AddBoolToObject(s, "identical", r->source_identical);
        cJSON_AddBoolToObject(s, "ok", r->source_identical);
        if (!r->source_identical) {
            cJSON_AddNumberToObject(s, "first_prompt", r->source_first_prompt + 1);
            cJSON_AddNumberToObject(s, "first_position", r->source_first_pos);
            add_number_or_null(s, "max_abs_diff", r->source_max_diff);
        }
    }

    cJSON *p = cJSON_AddObjectToObject(j, "perplexity");
    cJSON_AddStringToObject(p, "text", r->text_path);
    cJSON_AddNumberToObject(p, "tokens", r->text_tokens);
    add_number_or_null(p, "nll", r->nll);
    add_number_or_null(p, "ppl", r->ppl);
    cJSON_AddNumberToObject(p, "max_ppl", r->max_ppl);
    cJSON_AddBoolToObject(p, "ok", r->ppl_ok);

    cJSON *ab = cJSON_AddObjectToObject(j, "ablation");
    cJSON_AddStringToObject(ab, "mask_experts", COH_ABLATION_MASK);
    cJSON_AddBoolToObject(ab, "run", r->ablation_run);
    if (r->ablation_run) {
        add_number_or_null(ab, "nll", r->ablation_nll);
        add_number_or_null(ab, "ppl", r->ablation_ppl);
        add_number_or_null(ab, "free_ppl", r->ppl);
    }

    if (r->plan_path)
        cJSON_AddStringToObject(j, "keep_experts", r->plan_path);
    else
        cJSON_AddNullToObject(j, "keep_experts");
    if (r->compare_run) {
        cJSON *cmp = cJSON_AddObjectToObject(j, "comparison");
        cJSON_AddNumberToObject(cmp, "plan_layers", r->plan_layers);
        cJSON_AddStringToObject(cmp, "diversity",
                                "distinct experts the reference text was routed to / "
                                "experts the layer allows, summed over the MoE layers");
        cJSON *rows = cJSON_AddArrayToObject(cmp, "rows");
        for (int k = 0; k < COH_ROWS; k++) {
            const coh_row *w = &r->rows[k];
            cJSON *x = cJSON_CreateObject();
            cJSON_AddStringToObject(x, "router", w->name);
            add_number_or_null(x, "nll", w->nll);
            add_number_or_null(x, "ppl", w->ppl);
            cJSON_AddNumberToObject(x, "used", w->used);
            cJSON_AddNumberToObject(x, "allowed", w->allowed);
            cJSON_AddNumberToObject(x, "diversity", w->allowed ? (double)w->used / w->allowed : 0);
            cJSON *ly = cJSON_AddArrayToObject(x, "layers");
            for (int i = 0; i < r->n_moe_layers; i++) {
                cJSON *y = cJSON_CreateObject();
                cJSON_AddNumberToObject(y, "layer", r->layers[i].layer);
                cJSON_AddNumberToObject(y, "used", w->layer_used[i]);
                cJSON_AddNumberToObject(y, "allowed", w->layer_allowed[i]);
                cJSON_AddItemToArray(ly, y);
            }
            cJSON_AddItemToArray(rows, x);
        }
    }

    cJSON *ro = cJSON_AddObjectToObject(j, "router");
    cJSON_AddNumberToObject(ro, "threshold", r->router_threshold);
    cJSON_AddStringToObject(ro, "criterion",
                            "every MoE layer chooses more than threshold = max(experts/4, "
                            "min(8, experts/2)) distinct experts among its top-k choices "
                            "across the prompt set");
    cJSON_AddNumberToObject(ro, "routed_tokens", r->routed_tokens);
    cJSON_AddBoolToObject(ro, "ok", r->router_ok);
    cJSON *la = cJSON_AddArrayToObject(ro, "layers");
    for (int i = 0; i < r->n_moe_layers; i++) {
        const coh_layer_usage *u = &r->layers[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "layer", u->layer);
        cJSON_AddNumberToObject(x, "used", u->used);
        cJSON_AddNumberToObject(x, "allowed", u->allowed);
        cJSON_AddNumberToObject(x, "threshold", u->threshold);
        cJSON_AddBoolToObject(x, "ok", u->ok);
        cJSON *ch = cJSON_AddArrayToObject(x, "choices");
        for (int e = 0; e < u->n_experts; e++)
            cJSON_AddItemToArray(ch, cJSON_CreateNumber(u->choices[e]));
        cJSON_AddItemToObject(x, "top", top_experts(u->weight, u->n_experts, 3));
        cJSON_AddItemToArray(la, x);
    }

    cJSON *da = cJSON_AddArrayToObject(j, "domains");
    for (guint i = 0; i < r->domains->len; i++) {
        const coh_domain_usage *d = r->domains->pdata[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "domain", d->domain);
        cJSON_AddNumberToObject(x, "prompts", d->n_prompts);
        cJSON_AddNumberToObject(x, "tokens", d->n_tokens);
        cJSON *ly = cJSON_AddArrayToObject(x, "layers");
        for (int l = 0; l < r->n_moe_layers; l++) {
            cJSON *y = cJSON_CreateObject();
            cJSON_AddNumberToObject(y, "layer", r->layers[l].layer);
            cJSON_AddItemToObject(y, "top",
                                  top_experts(d->weight + (size_t)l * r->n_experts,
                                              r->n_experts, 3));
            cJSON_AddItemToArray(ly, y);
        }
        cJSON_AddItemToArray(da, x);
    }

    cJSON *pa = cJSON_AddArrayToObject(j, "prompts");
    for (guint i = 0; i < r->prompts->len; i++) {
        const coh_prompt_result *q = r->prompts->pdata[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "domain", q->domain);
        if (q->lang)
            cJSON_AddStringToObject(x, "lang", q->lang);
        cJSON_AddStringToObject(x, "prompt", q->prompt);
        cJSON_AddStringToObject(x, "output", q->output ? q->output : "");
        cJSON_AddNumberToObject(x, "prompt_tokens", q->n_prompt_tokens);
        cJSON_AddNumberToObject(x, "output_tokens", q->n_output_tokens);
        cJSON_AddBoolToObject(x, "stopped", q->stopped);
        if (q->expected) {
            cJSON_AddStringToObject(x, "expected", q->expected);
            cJSON_AddBoolToObject(x, "matches", q->matches == 1);
        } else {
            cJSON_AddNullToObject(x, "expected");
            cJSON_AddNullToObject(x, "matches");
        }
        cJSON_AddItemToArray(pa, x);
    }
    cJSON_AddNumberToObject(j, "expected", r->n_expected);
    cJSON_AddNumberToObject(j, "matching", r->n_matching);
    cJSON_AddNumberToObject(j, "gen_tokens", r->gen_tokens);
    cJSON_AddBoolToObject(j, "gen_limited", r->gen_limited);
    cJSON_AddNumberToObject(j, "weights_bytes", (double)r->weights_bytes);
    cJSON_AddNumberToObject(j, "memory_bytes", (double)r->memory_bytes);
    cJSON_AddNumberToObject(j, "seconds", r->seconds);
    cJSON_AddNumberToObject(j, "peak_rss_bytes", (double)r->peak_rss_bytes);
    return j;
}
