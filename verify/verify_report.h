/* verify_report.h - qmoe-verify --coherence --report DIR: the gate's
 * verdicts and router statistics, free router next to masked, as one HTML
 * page (report.h). */
#ifndef QMOE_VERIFY_REPORT_H
#define QMOE_VERIFY_REPORT_H

#include <glib.h>

#include "analysis/coherence.h"

/* Given the gate that ran on `out` with options co (gate != NULL), runs
 * the other side of the comparison: the gate with the router masked to
 * COH_ABLATION_MASK when it ran free (and the model has more than 8
 * experts), or free when it ran masked; counts the router's picks over
 * the prompt set (prompt and expected text, by domain) both ways, and
 * writes DIR/index.html. Returns 0, or -1 with *err set. */
int verify_write_report(const char *dir, const char *out, const coh_opts *co,
                        const coh_result *gate, GError **err);

#endif
