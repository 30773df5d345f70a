/* run_stats.c - qmoe-run --router-stats (see run_stats.h). */
#include "run_stats.h"

#include "base/fs.h"
#include "cli/cli.h"
#include "base/util.h"
#include "analysis/expert_plan.h"
#include "model/model.h"
#include "report/report.h"
#include "analysis/routerstats.h"
#include "text/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct {
    fs_out *out;
    GString *line;
    GError *err;               /* first write error */
    plan_scores *scores;       /* --keep: the experts' scores, or NULL */
} log_ctx;

void run_router_log_line(GString *s, int line, int pos, int token, int layer, int k,
                         const int *experts, const float *weights)
{
    g_string_truncate(s, 0);
    if (line >= 0)
        g_string_append_printf(s, "{\"line\":%d,\"pos\":%d", line, pos);
    else
        g_string_append_printf(s, "{\"pos\":%d", pos);
    g_string_append_printf(s, ",\"token\":%d,\"layer\":%d,\"experts\":[", token, layer);
    for (int i = 0; i < k; i++)
        g_string_append_printf(s, "%s%d", i ? "," : "", experts[i]);
    g_string_append(s, "],\"weights\":[");
    for (int i = 0; i < k; i++)
        g_string_append_printf(s, "%s%.9g", i ? "," : "", weights[i]);
    g_string_append(s, "]}\n");
}

/* --router-log in this mode: the run's usual line with the corpus line
 * first, so that a pick can be traced back to its domain. */
static void log_pick(void *user, int line, int pos, int token, int layer, int k,
                     const int *experts, const float *weights, const float *out_norms)
{
    log_ctx *lc = user;
    if (lc->scores)
        plan_scores_add(lc->scores, layer, k, experts, weights, out_norms);
    if (!lc->out || lc->err)
        return;
    GString *s = lc->line;
    run_router_log_line(s, line, pos, token, layer, k, experts, weights);
    fs_out_write(lc->out, s->str, s->len, &lc->err);
}

static void print_list(const rs_stats *s, int li)
{
    /* the never-chosen experts as a compact LIST */
    uint8_t *never = g_new0(uint8_t, s->n_experts > 0 ? s->n_experts : 1);
    int n = 0;
    for (int e = 0; e < s->n_experts; e++) {
        uint64_t c = 0;
        for (int d = 0; d < s->n_domains; d++)
            c += rs_count(s, li, d, e);
        never[e] = c == 0;
        n += never[e];
    }
    if (n) {
        char *l = qm_list_format(never, s->n_experts);
        printf("  %s", l);
        g_free(l);
    } else {
        printf("  -");
    }
    g_free(never);
}

static void print_text(const rs_stats *s)
{
    printf("router statistics: '%s' on '%s'%s%s\n", s->corpus_path, s->model_path,
           s->mask ? ", router masked to " : "", s->mask ? s->mask : "");
    printf("  %d MoE layers x %d experts, top-%d; %" G_GUINT64_FORMAT " tokens in %d "
           "sequences, %d domains\n", s->n_layers, s->n_experts, s->top_k, s->tokens,
           s->sequences, s->n_domains);
    for (int d = 0; d < s->n_domains; d++)
        printf("    %-16s %4d lines %7" G_GUINT64_FORMAT " tokens\n", s->domains[d],
               s->domain_lines[d], s->domain_tokens[d]);
    printf("  layer    picks  used  MI bits  H(dom)  NMI    purity  never chosen\n");
    for (int li = 0; li < s->n_layers; li++) {
        rs_layer_summary sm;
        rs_summarise(s, li, &sm);
        printf("  %5d %8" G_GUINT64_FORMAT " %5d  %7.4f  %6.4f  %5.3f  %6.3f", s->layer_ids[li],
               sm.picks, sm.used, sm.mi, sm.h_domain, sm.nmi, sm.purity);
        print_list(s, li);
        printf("\n");
    }
    printf("  top experts per domain (expert: share of the domain's picks, lift)\n");
    rs_top_entry top[RS_TOP];
    for (int li = 0; li < s->n_layers; li++) {
        printf("  layer %d\n", s->layer_ids[li]);
        for (int d = 0; d < s->n_domains; d++) {
            printf("    %-16s", s->domains[d]);
            int n = rs_top(s, li, d, RS_TOP, top);
            for (int i = 0; i < n; i++)
                printf("  %3d: %5.1f %% x%.2f", top[i].expert, 100 * top[i].share,
                       top[i].lift);
            printf("\n");
        }
    }
}

int run_router_stats(const run_stats_opts *o, GError **err)
{
    rs_corpus *c = NULL;
    tok_t *tok = NULL;
    model *m = NULL;
    rs_stats *s = NULL;
    log_ctx lc = {0};
    int rv = -1, max = 0;
    if (!(c = rs_corpus_load(o->corpus, err)) || !(tok = tok_load(o->model, err)) ||
        rs_corpus_max_tokens(tok, c, &max, err) != 0)
        goto out;
    model_opts mo = {.n_threads = o->threads,
                     .cache_bytes = o->cache_mb ? (uint64_t)o->cache_mb << 20 : 1,
                     .max_seq = max < 1 ? 1 : max < RS_MAX_CONTEXT ? max : RS_MAX_CONTEXT,
                     .expert_io = o->io};
    if (!(m = model_load(o->model, &mo, err)))
        goto out;
    const model_config *mc = model_get_config(m);
    if (!model_experts(m)) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "--router-stats: '%s' has no routed experts",
                    o->model);
        goto out;
    }
    if (o->mask) {
        uint8_t *allow = g_new0(uint8_t, mc->n_experts);
        int bad = qm_list_parse(o->mask, mc->n_experts, allow, "--mask-experts", err) ||
                  model_set_mask(m, allow, err);
        g_free(allow);
        if (bad)
            goto out;
    }
    if (o->keep_experts) {
        expert_plan *ep = expert_plan_load_model(o->keep_experts, m, err);
        int bad = !ep || expert_plan_apply(m, ep, err);
        expert_plan_free(ep);
        if (bad)
            goto out;
    }
    int n_group = model_layout(m)->score == LT_SCORE_SIGMOID_GROUPED ? mc->n_group : 1;
    if (o->keep) {
        /* refuse a bad N before the corpus runs */
        plan_scores *probe = plan_scores_new(mc->n_layers, mc->n_experts);
        expert_plan *p = plan_scores_choose(probe, o->by, o->keep, mc->is_moe, n_group, err);
        plan_scores_free(probe);
        if (!p)
            goto out;
        expert_plan_free(p);
        lc.scores = plan_scores_new(mc->n_layers, mc->n_experts);
    }
    if (o->router_log) {
        if (!(lc.out = fs_out_open(o->router_log, err)))
            goto out;
        lc.line = g_string_sized_new(256);
    }
    s = rs_stats_new(mc, c);
    s->mask = g_strdup(o->mask);
    s->model_path = g_strdup(o->model);
    if (rs_collect(m, tok, c, s, lc.out || lc.scores ? log_pick : NULL, &lc, err) != 0)
        goto out;
    if (lc.scores) {
        expert_plan *p = plan_scores_choose(lc.scores, o->by, o->keep, mc->is_moe, n_group,
                                            err);
        if (!p)
            goto out;
        cJSON *doc = expert_plan_to_json(p, lc.scores, o->by, o->corpus);
        cJSON_AddStringToObject(doc, "model", o->model);
        char *txt = cJSON_Print(doc);
        cJSON_Delete(doc);
        GString *t = g_string_new(txt);
        g_string_append_c(t, '\n');
        cJSON_free(txt);
        int bad = fs_write_atomic(o->plan_out, t->str, t->len, err);
        g_string_free(t, TRUE);
        expert_plan_free(p);
        if (bad)
            goto out;
        fprintf(stderr, "qmoe-run: plan keeping %d of %d experts per MoE layer by %s "
                "written to '%s'\n", o->keep, mc->n_experts, plan_by_name(o->by), o->plan_out);
    }
    if (lc.err) {
        g_propagate_error(err, lc.err);
        lc.err = NULL;
        goto out;
    }
    if (lc.out) {
        fs_out *f = lc.out;
        lc.out = NULL;
        if (fs_out_commit(f, err) != 0)
            goto out;
    }
    if (o->report) {
        report_input ri = {.stats = s};
        if (report_write(o->report, &ri, err) != 0)
            goto out;
    }
    if (o->json) {
        cJSON *j = rs_stats_to_json(s, s->n_experts);
        cJSON_AddStringToObject(j, "layout", model_layout(m)->name);
        if (o->report) {
            char *p = g_build_filename(o->report, "index.html", NULL);
            cJSON_AddStringToObject(j, "report", p);
            g_free(p);
        }
        qm_json_out(j, 1);
    } else {
        print_text(s);
        if (o->report)
            printf("report: %s/index.html\n", o->report);
    }
    fprintf(stderr, "qmoe-run: routed %" G_GUINT64_FORMAT " tokens in %.3f s\n", s->tokens,
            s->seconds);
    rv = 0;
out:
    fs_out_abort(lc.out);
    if (lc.line)
        g_string_free(lc.line, TRUE);
    g_clear_error(&lc.err);
    plan_scores_free(lc.scores);
    rs_stats_free(s);
    model_free(m);
    tok_free(tok);
    rs_corpus_free(c);
    return rv;
}
