/* report.h - the router report: one self-contained HTML page with SVG.
 *
 * DIR/index.html shows router statistics (routerstats.h) as pictures:
 * per MoE layer a heatmap of experts x domains coloured by lift (with a
 * legend), a layers x experts load overview, normalised MI per layer as a
 * bar chart, and the tables (per layer picks, used, MI, NMI, purity, never
 * chosen; per domain the top experts with share and lift). Given a second
 * run (the router masked, e.g. to 0-7) every picture and table shows both
 * side by side; given coherence gate results (coherence.h) the page opens
 * with their verdicts and greedy continuations, free next to masked.
 *
 * The page needs no network and no script: styles are inline, the SVG is
 * written directly into the page, and the file is well-formed XML (XHTML
 * served as HTML), so xmllint --noout checks it. Text from the model or the
 * corpus is escaped; characters XML cannot hold become U+FFFD.
 */
#ifndef QMOE_REPORT_H
#define QMOE_REPORT_H

#include <glib.h>

#include "analysis/coherence.h"
#include "analysis/routerstats.h"

typedef struct {
    const char *title;           /* or NULL: "qmoe router report" */
    const rs_stats *stats;       /* required: the run (free router, or as given) */
    const rs_stats *masked;      /* optional: the same corpus, router masked */
    const coh_result *gate;      /* optional: the gate with stats' router */
    const coh_result *gate_masked; /* optional: the gate with masked's router */
} report_input;

/* The page as a new NUL-terminated string (caller g_free()s); *len gets
 * its length when len is not NULL. */
char *report_html(const report_input *in, size_t *len);

/* Creates DIR when missing and writes DIR/index.html atomically. Errors
 * name the directory or file (QM_ERR_IO, QM_ERR_NOSPACE). */
int report_write(const char *dir, const report_input *in, GError **err);

#endif
