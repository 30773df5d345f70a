/* verify_coherence.c - the coherence gate as a check (see verify_coherence.h). */
#include "verify_coherence.h"

#include <string.h>

#include "base/error.h"

void vf_check_coherence(vf_target *t, const coh_opts *o, vf_result *r, coh_result **out)
{
    *out = NULL;
    int partial = t->have_manifest && t->m->partial;
    if (partial || r->experts_present < r->experts_expected) {
        vf_add(r, VF_COHERENCE, "coherence", NULL, NULL, -1,
               "not run: the forward pass needs every expert, and %s",
               partial ? "the extraction is partial (--layers/--experts)"
                       : "expert files are missing (see coverage)");
        return;
    }
    GError *err = NULL;
    coh_result *c = NULL;
    if (coh_run(t->out, o, &c, &err) < 0) {
        /* the gate's own input unreadable or wrong: no verdict (exit 2) */
        int no_verdict = err->code == QM_ERR_IO || err->code == QM_ERR_USAGE;
        vf_add(r, no_verdict ? VF_IO : VF_COHERENCE, "coherence", NULL, NULL, -1,
               "cannot run the gate: %s", err->message);
        g_error_free(err);
        return;
    }
    static const struct {
        const char *criterion, *label;
    } labels[] = {{"source", "(a) source"}, {"perplexity", "(b) perplexity"},
                  {"router", "(c) router"}};
    for (guint i = 0; i < c->failures->len; i++) {
        const coh_failure *f = c->failures->pdata[i];
        const char *label = f->criterion;
        for (size_t k = 0; k < G_N_ELEMENTS(labels); k++)
            if (!strcmp(labels[k].criterion, f->criterion))
                label = labels[k].label;
        vf_add(r, VF_COHERENCE, "coherence", NULL, NULL, -1, "%s: %s", label, f->message);
    }
    *out = c;
}
