/* verify_coherence.h - the coherence gate as a check of qmoe-verify.
 *
 * The gate itself (analysis/coherence.h) knows nothing of an extracted
 * directory's verdict; this glue turns its failures into qmoe-verify
 * problems, so that the analysis library does not depend on outdir/. */
#ifndef QMOE_VERIFY_COHERENCE_H
#define QMOE_VERIFY_COHERENCE_H

#include "analysis/coherence.h"
#include "outdir/verify.h"

/* The gate as a check of qmoe-verify: runs coh_run on t->out unless expert
 * files are missing or the extraction is partial (the forward pass needs
 * every expert; that is reported instead), and adds a VF_COHERENCE
 * problem per failed criterion, phase "coherence", message
 * "(b) perplexity: ...". A gate that cannot run is one problem: VF_IO for
 * QM_ERR_IO and QM_ERR_USAGE (no verdict: exit 2), VF_COHERENCE for a
 * model that does not load or run (exit 1). *out gets
 * the result when the gate ran, else NULL. */
void vf_check_coherence(vf_target *t, const coh_opts *o, vf_result *r,
                        coh_result **out);

#endif
