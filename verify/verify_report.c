/* verify_report.c - qmoe-verify --report (see verify_report.h). */
#include "verify_report.h"

#include "base/util.h"
#include "report/report.h"
#include "analysis/routerstats.h"

#include <string.h>

int verify_write_report(const char *dir, const char *out, const coh_opts *co,
                        const coh_result *gate, GError **err)
{
    coh_result *other = NULL;
    rs_corpus *c = rs_corpus_new(co->prompts_path);
    rs_stats *free_s = NULL, *masked_s = NULL;
    int rv = -1;
    /* the corpus: what the prompts should read as, by domain */
    for (guint i = 0; i < gate->prompts->len; i++) {
        const coh_prompt_result *p = gate->prompts->pdata[i];
        char *text = g_strconcat(p->prompt, p->expected ? p->expected : "", NULL);
        int bad = rs_corpus_add(c, (int)i + 1, p->domain, text, err);
        g_free(text);
        if (bad)
            goto out;
    }
    const char *mask = gate->mask ? gate->mask : COH_ABLATION_MASK;
    /* with a plan: the plan's gate next to the free router's; the router
     * pictures are the free router's (a plan is not one mask) */
    int plan = gate->plan_path != NULL;
    int compare = plan || gate->mask || gate->n_experts > 8;
    if (compare) {
        coh_opts o2 = *co;
        o2.mask = gate->mask || plan ? NULL : COH_ABLATION_MASK;
        o2.keep_experts = NULL;
        if (coh_run(out, &o2, &other, err) != 0) {
            g_prefix_error(err, "--report: ");
            goto out;
        }
    }
    if (!(free_s = rs_run(out, c, NULL, co->n_threads, err)) ||
        (compare && !plan && !(masked_s = rs_run(out, c, mask, co->n_threads, err)))) {
        g_prefix_error(err, "--report: ");
        goto out;
    }
    report_input ri = {.title = "qmoe coherence report", .stats = free_s, .masked = masked_s,
                       .gate = gate->mask || plan ? other : gate,
                       .gate_masked = gate->mask || plan ? gate : other};
    rv = report_write(dir, &ri, err);
out:
    coh_result_free(other);
    rs_stats_free(free_s);
    rs_stats_free(masked_s);
    rs_corpus_free(c);
    return rv;
}
