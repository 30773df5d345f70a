/* routerstats.c - counting the router's picks per domain; the statistics. */
#include "analysis/routerstats.h"
#include "base/fs.h"

#include "base/util.h"

#include <math.h>
#include <string.h>

/* ---- the corpus ---- */

static void entry_free(gpointer p)
{
    rs_entry *e = p;
    if (e) {
        g_free(e->text);
        g_free(e);
    }
}

rs_corpus *rs_corpus_new(const char *path)
{
    rs_corpus *c = g_new0(rs_corpus, 1);
    c->path = g_strdup(path);
    c->domains = g_ptr_array_new_with_free_func(g_free);
    c->entries = g_ptr_array_new_with_free_func(entry_free);
    return c;
}

void rs_corpus_free(rs_corpus *c)
{
    if (!c)
        return;
    g_free(c->path);
    g_ptr_array_free(c->domains, TRUE);
    g_ptr_array_free(c->entries, TRUE);
    g_free(c);
}

static const char *where_of(const rs_corpus *c)
{
    return c->path ? c->path : "corpus";
}

int rs_corpus_add(rs_corpus *c, int line, const char *domain, const char *text,
                  GError **err)
{
    const char *why = !*domain                        ? "\"domain\" is empty"
                      : !g_utf8_validate(domain, -1, NULL) ? "\"domain\" is not valid UTF-8"
                      : !*text                        ? "\"text\" is empty"
                      : !g_utf8_validate(text, -1, NULL)   ? "\"text\" is not valid UTF-8"
                                                      : NULL;
    if (why) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "corpus '%s': line %d: %s", where_of(c),
                    line, why);
        return -1;
    }
    guint d = 0;
    while (d < c->domains->len && strcmp(c->domains->pdata[d], domain) != 0)
        d++;
    if (d == c->domains->len) {
        if (d >= RS_MAX_DOMAINS) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "corpus '%s': line %d: more than %d domains", where_of(c), line,
                        RS_MAX_DOMAINS);
            return -1;
        }
        g_ptr_array_add(c->domains, g_strdup(domain));
    }
    rs_entry *e = g_new0(rs_entry, 1);
    e->line = line;
    e->domain = (int)d;
    e->text = g_strdup(text);
    g_ptr_array_add(c->entries, e);
    return 0;
}

rs_corpus *rs_corpus_load(const char *path, GError **err)
{
    char *buf = NULL;
    size_t len = 0;
    if (fs_read_file(path, "cannot read corpus", &buf, &len, err))
        return NULL;
    if (memchr(buf, '\0', len)) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "corpus '%s': holds a NUL byte", path);
        g_free(buf);
        return NULL;
    }
    rs_corpus *c = rs_corpus_new(path);
    char **lines = g_strsplit(buf, "\n", -1);
    g_free(buf);
    int rv = 0;
    for (int i = 0; lines[i] && rv == 0; i++) {
        char *s = g_strstrip(lines[i]);
        if (!*s)
            continue;
        cJSON *j = cJSON_Parse(s);
        const cJSON *d = j ? cJSON_GetObjectItemCaseSensitive(j, "domain") : NULL;
        const cJSON *t = j ? cJSON_GetObjectItemCaseSensitive(j, "text") : NULL;
        /* cJSON ends a string at \u0000: refuse rather than count a cut text */
        const char *why = !cJSON_IsObject(j)        ? "not a JSON object"
                          : !cJSON_IsString(d)      ? "\"domain\" is not a string"
                          : !cJSON_IsString(t)      ? "\"text\" is not a string"
                          : strstr(s, "\\u0000")    ? "a string holds \\u0000"
                                                    : NULL;
        if (why) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE, "corpus '%s': line %d: %s", path, i + 1,
                        why);
            rv = -1;
        } else {
            rv = rs_corpus_add(c, i + 1, d->valuestring, t->valuestring, err);
        }
        cJSON_Delete(j);
    }
    g_strfreev(lines);
    if (rv == 0 && c->entries->len == 0) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "corpus '%s' holds no entry", path);
        rv = -1;
    }
    if (rv != 0) {
        rs_corpus_free(c);
        return NULL;
    }
    return c;
}

/* ---- the counts ---- */

rs_stats *rs_stats_new(const model_config *mc, const rs_corpus *c)
{
    rs_stats *s = g_new0(rs_stats, 1);
    for (int l = 0; l < mc->n_layers; l++)
        s->n_layers += mc->is_moe[l] != 0;
    s->layer_ids = g_new0(int, s->n_layers > 0 ? s->n_layers : 1);
    for (int l = 0, i = 0; l < mc->n_layers; l++)
        if (mc->is_moe[l])
            s->layer_ids[i++] = l;
    s->n_experts = mc->n_experts;
    s->top_k = mc->top_k;
    s->n_domains = (int)c->domains->len;
    s->domains = g_new0(char *, s->n_domains + 1);
    for (int d = 0; d < s->n_domains; d++)
        s->domains[d] = g_strdup(c->domains->pdata[d]);
    s->counts = g_new0(uint64_t, (size_t)(s->n_layers > 0 ? s->n_layers : 1) *
                                     (s->n_domains > 0 ? s->n_domains : 1) *
                                     (s->n_experts > 0 ? s->n_experts : 1));
    s->domain_tokens = g_new0(uint64_t, s->n_domains > 0 ? s->n_domains : 1);
    s->domain_lines = g_new0(int, s->n_domains > 0 ? s->n_domains : 1);
    s->corpus_path = g_strdup(c->path);
    return s;
}

void rs_stats_free(rs_stats *s)
{
    if (!s)
        return;
    g_free(s->layer_ids);
    g_strfreev(s->domains);
    g_free(s->counts);
    g_free(s->domain_tokens);
    g_free(s->domain_lines);
    g_free(s->mask);
    g_free(s->model_path);
    g_free(s->corpus_path);
    g_free(s);
}

void rs_stats_add(rs_stats *s, int li, int d, int k, const int *experts)
{
    if (li < 0 || li >= s->n_layers || d < 0 || d >= s->n_domains)
        return;
    uint64_t *row = s->counts + ((size_t)li * s->n_domains + d) * s->n_experts;
    for (int i = 0; i < k; i++)
        if (experts[i] >= 0 && experts[i] < s->n_experts)
            row[experts[i]]++;
}

/* ---- running the corpus ---- */

static int encode_entry(tok_t *tok, const rs_corpus *c, const rs_entry *e, GArray *ids,
                        GError **err)
{
    GError *te = NULL;
    g_array_set_size(ids, 0);
    if (tok_encode(tok, e->text, strlen(e->text), 0, ids, &te) != 0) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "corpus '%s': line %d: %s", where_of(c),
                    e->line, te->message);
        g_error_free(te);
        return -1;
    }
    return 0;
}

typedef struct {
    rs_stats *s;
    const int *moe_index;      /* [n_layers] layer -> MoE layer index or -1 */
    int domain, line;
    int tokens;                /* of the current window */
    int last_pos;
    rs_observer obs;
    void *obs_user;
} collect_ctx;

static void on_route(void *user, int seq, int pos, int token, int layer, int k,
                     const int *experts, const float *weights, const float *out_norms)
{
    (void)seq;
    collect_ctx *c = user;
    if (c->obs)
        c->obs(c->obs_user, c->line, pos, token, layer, k, experts, weights, out_norms);
    int li = c->moe_index[layer];
    if (li < 0)
        return;
    if (pos != c->last_pos) {
        c->last_pos = pos;
        c->s->domain_tokens[c->domain]++;
        c->s->tokens++;
    }
    rs_stats_add(c->s, li, c->domain, k, experts);
}

int rs_collect(model *m, tok_t *tok, const rs_corpus *c, rs_stats *s, rs_observer obs,
               void *obs_user, GError **err)
{
    const model_config *mc = model_get_config(m);
    int *moe_index = g_new(int, mc->n_layers > 0 ? mc->n_layers : 1);
    for (int l = 0, i = 0; l < mc->n_layers; l++)
        moe_index[l] = mc->is_moe[l] ? i++ : -1;
    collect_ctx cc = {.s = s, .moe_index = moe_index, .obs = obs, .obs_user = obs_user};
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    int rv = 0;
    double t0 = qm_monotonic();
    model_set_router_log(m, on_route, &cc);
    for (guint i = 0; i < c->entries->len && rv == 0; i++) {
        const rs_entry *e = c->entries->pdata[i];
        if (encode_entry(tok, c, e, ids, err) != 0) {
            rv = -1;
            break;
        }
        cc.domain = e->domain;
        cc.line = e->line;
        s->domain_lines[e->domain]++;
        const int32_t *id = (const int32_t *)(void *)ids->data;
        for (guint t = 0; t < ids->len && rv == 0; t++)
            if (id[t] < 0 || id[t] >= mc->vocab) {
                g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                            "corpus '%s': line %d: the tokenizer gives id %d, outside the "
                            "model's vocabulary [0, %d)", where_of(c), e->line, id[t],
                            mc->vocab);
                rv = -1;
            }
        /* windows of the context, each fed in batches (model_feed): the
         * router log is the one of feeding token by token */
        for (guint t = 0; t < ids->len && rv == 0; t += (guint)mc->max_seq) {
            guint len = MIN(ids->len - t, (guint)mc->max_seq);
            model_reset(m);
            cc.last_pos = -1;
            s->sequences++;
            if (model_feed(m, (const int *)id + t, (int)len, MODEL_LOGITS_NONE, NULL,
                           err) != 0) {
                g_prefix_error(err, "corpus '%s': line %d: ", where_of(c), e->line);
                rv = -1;
            }
        }
    }
    model_set_router_log(m, NULL, NULL);
    s->seconds += qm_monotonic() - t0;
    g_array_free(ids, TRUE);
    g_free(moe_index);
    return rv;
}

int rs_corpus_max_tokens(tok_t *tok, const rs_corpus *c, int *max, GError **err)
{
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    *max = 0;
    int rv = 0;
    for (guint i = 0; i < c->entries->len && rv == 0; i++) {
        rv = encode_entry(tok, c, c->entries->pdata[i], ids, err);
        if (rv == 0 && (int)ids->len > *max)
            *max = ids->len > INT32_MAX / 2 ? INT32_MAX / 2 : (int)ids->len;
    }
    g_array_free(ids, TRUE);
    return rv;
}

rs_stats *rs_run(const char *path, const rs_corpus *c, const char *mask, int n_threads,
                 GError **err)
{
    model *m = NULL;
    rs_stats *s = NULL;
    int max = 0;
    tok_t *tok = tok_load(path, err);
    if (!tok || rs_corpus_max_tokens(tok, c, &max, err) != 0)
        goto out;
    model_opts mo = {.n_threads = n_threads > 0 ? n_threads : 1,
                     .max_seq = max < 1 ? 1 : max < RS_MAX_CONTEXT ? max : RS_MAX_CONTEXT};
    if (!(m = model_load(path, &mo, err)))
        goto out;
    const model_config *mc = model_get_config(m);
    if (mask) {
        uint8_t *allow = g_new0(uint8_t, mc->n_experts > 0 ? mc->n_experts : 1);
        int bad = mc->n_experts <= 0;
        if (bad)
            g_set_error(err, QM_ERROR, QM_ERR_USAGE, "--mask-experts: '%s' has no routed "
                        "experts", path);
        bad = bad || qm_list_parse(mask, mc->n_experts, allow, "--mask-experts", err) ||
              model_set_mask(m, allow, err);
        g_free(allow);
        if (bad)
            goto out;
    }
    s = rs_stats_new(mc, c);
    s->mask = g_strdup(mask);
    s->model_path = g_strdup(path);
    if (rs_collect(m, tok, c, s, NULL, NULL, err) != 0) {
        rs_stats_free(s);
        s = NULL;
    }
out:
    tok_free(tok);
    model_free(m);
    return s;
}

/* ---- statistics ---- */

uint64_t rs_expert_total(const rs_stats *s, int li, int e)
{
    uint64_t n = 0;
    for (int d = 0; d < s->n_domains; d++)
        n += rs_count(s, li, d, e);
    return n;
}

uint64_t rs_domain_total(const rs_stats *s, int li, int d)
{
    uint64_t n = 0;
    for (int e = 0; e < s->n_experts; e++)
        n += rs_count(s, li, d, e);
    return n;
}

void rs_summarise(const rs_stats *s, int li, rs_layer_summary *out)
{
    memset(out, 0, sizeof *out);
    uint64_t *pe = g_new0(uint64_t, s->n_experts > 0 ? s->n_experts : 1);
    uint64_t *pd = g_new0(uint64_t, s->n_domains > 0 ? s->n_domains : 1);
    for (int d = 0; d < s->n_domains; d++)
        for (int e = 0; e < s->n_experts; e++) {
            uint64_t n = rs_count(s, li, d, e);
            pe[e] += n;
            pd[d] += n;
            out->picks += n;
        }
    if (out->picks > 0) {
        double N = (double)out->picks;
        for (int d = 0; d < s->n_domains; d++)
            if (pd[d])
                out->h_domain -= pd[d] / N * log2(pd[d] / N);
        uint64_t pure = 0;
        for (int e = 0; e < s->n_experts; e++) {
            if (!pe[e])
                continue;
            out->used++;
            uint64_t best = 0;
            for (int d = 0; d < s->n_domains; d++) {
                uint64_t n = rs_count(s, li, d, e);
                if (n > best)
                    best = n;
                /* p(d,e) / (p(d) p(e)) = n N / (n_d n_e) */
                if (n)
                    out->mi += n / N * log2((double)n * N / ((double)pd[d] * (double)pe[e]));
            }
            pure += best;
        }
        out->purity = pure / N;
        if (out->mi < 0) /* rounding of a zero MI */
            out->mi = 0;
        out->nmi = out->h_domain > 0 ? out->mi / out->h_domain : 0;
    }
    g_free(pe);
    g_free(pd);
}

double rs_load(const rs_stats *s, int li, int e)
{
    uint64_t all = 0;
    for (int d = 0; d < s->n_domains; d++)
        all += rs_domain_total(s, li, d);
    return all ? (double)rs_expert_total(s, li, e) / (double)all : 0;
}

double rs_lift(const rs_stats *s, int li, int d, int e)
{
    uint64_t all = 0;
    for (int x = 0; x < s->n_domains; x++)
        all += rs_domain_total(s, li, x);
    uint64_t ne = rs_expert_total(s, li, e), nd = rs_domain_total(s, li, d);
    if (!ne || !nd)
        return 0;
    return ((double)rs_count(s, li, d, e) / (double)nd) / ((double)ne / (double)all);
}

int rs_top(const rs_stats *s, int li, int d, int n, rs_top_entry *out)
{
    int got = 0;
    for (int e = 0; e < s->n_experts; e++) {
        uint64_t c = rs_count(s, li, d, e);
        if (!c)
            continue;
        /* insertion into the sorted prefix: n is small */
        int at = got;
        while (at > 0 && out[at - 1].count < c)
            at--;
        if (at >= n)
            continue;
        int last = got < n ? got : n - 1;
        for (int i = last; i > at; i--)
            out[i] = out[i - 1];
        out[at] = (rs_top_entry){.expert = e, .count = c};
        if (got < n)
            got++;
    }
    uint64_t nd = rs_domain_total(s, li, d);
    for (int i = 0; i < got; i++) {
        out[i].share = nd ? (double)out[i].count / (double)nd : 0;
        out[i].lift = rs_lift(s, li, d, out[i].expert);
    }
    return got;
}

cJSON *rs_stats_to_json(const rs_stats *s, int n_top)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", s->model_path ? s->model_path : "");
    cJSON_AddStringToObject(j, "corpus", s->corpus_path ? s->corpus_path : "");
    cJSON_AddStringToObject(j, "mask_experts", s->mask ? s->mask : "");
    cJSON_AddNumberToObject(j, "n_moe_layers", s->n_layers);
    cJSON_AddNumberToObject(j, "n_experts", s->n_experts);
    cJSON_AddNumberToObject(j, "top_k", s->top_k);
    cJSON_AddNumberToObject(j, "tokens", (double)s->tokens);
    cJSON_AddNumberToObject(j, "sequences", s->sequences);
    cJSON_AddNumberToObject(j, "seconds", s->seconds);
    cJSON *ds = cJSON_AddArrayToObject(j, "domains");
    for (int d = 0; d < s->n_domains; d++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "domain", s->domains[d]);
        cJSON_AddNumberToObject(o, "lines", s->domain_lines[d]);
        cJSON_AddNumberToObject(o, "tokens", (double)s->domain_tokens[d]);
        cJSON_AddItemToArray(ds, o);
    }
    cJSON *ls = cJSON_AddArrayToObject(j, "layers");
    rs_top_entry *top = g_new(rs_top_entry, n_top > 0 ? n_top : 1);
    double *load = g_new(double, s->n_experts > 0 ? s->n_experts : 1);
    for (int li = 0; li < s->n_layers; li++) {
        rs_layer_summary sm;
        rs_summarise(s, li, &sm);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "layer", s->layer_ids[li]);
        cJSON_AddNumberToObject(o, "picks", (double)sm.picks);
        cJSON_AddNumberToObject(o, "used", sm.used);
        cJSON_AddNumberToObject(o, "h_domain_bits", sm.h_domain);
        cJSON_AddNumberToObject(o, "mi_bits", sm.mi);
        cJSON_AddNumberToObject(o, "nmi", sm.nmi);
        cJSON_AddNumberToObject(o, "purity", sm.purity);
        cJSON *never = cJSON_AddArrayToObject(o, "never_chosen");
        for (int e = 0; e < s->n_experts; e++) {
            load[e] = rs_load(s, li, e);
            if (rs_expert_total(s, li, e) == 0)
                cJSON_AddItemToArray(never, cJSON_CreateNumber(e));
        }
        cJSON_AddItemToObject(o, "load", cJSON_CreateDoubleArray(load, s->n_experts));
        cJSON *counts = cJSON_AddArrayToObject(o, "counts");
        cJSON *tops = cJSON_AddArrayToObject(o, "top");
        for (int d = 0; d < s->n_domains; d++) {
            cJSON *row = cJSON_CreateArray();
            for (int e = 0; e < s->n_experts; e++)
                cJSON_AddItemToArray(row, cJSON_CreateNumber((double)rs_count(s, li, d, e)));
            cJSON_AddItemToArray(counts, row);
            cJSON *t = cJSON_CreateObject();
            cJSON_AddStringToObject(t, "domain", s->domains[d]);
            cJSON *es = cJSON_AddArrayToObject(t, "experts");
            int n = rs_top(s, li, d, n_top, top);
            for (int i = 0; i < n; i++) {
                cJSON *x = cJSON_CreateObject();
                cJSON_AddNumberToObject(x, "expert", top[i].expert);
                cJSON_AddNumberToObject(x, "count", (double)top[i].count);
                cJSON_AddNumberToObject(x, "share", top[i].share);
                cJSON_AddNumberToObject(x, "lift", top[i].lift);
                cJSON_AddItemToArray(es, x);
            }
            cJSON_AddItemToArray(tops, t);
        }
        cJSON_AddItemToArray(ls, o);
    }
    g_free(top);
    g_free(load);
    return j;
}
