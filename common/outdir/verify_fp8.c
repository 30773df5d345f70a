/* verify_fp8.c - qmoe-verify's FP8 check: every F8_E4M3 weight in OUT has
 * a weight_scale_inv of its block grid (format/fp8.h does the checking). */
#include "outdir/verify.h"
#include "format/fp8.h"
#include "base/util.h"

static void add_problem(void *user, const char *file, const char *tensor, const char *message)
{
    vf_add(user, VF_SHAPE, "fp8", file, tensor, -1, "%s", message);
}

void vf_check_fp8(vf_target *t, vf_result *r)
{
    GError *err = NULL;
    ckpt *ck = ckpt_open(t->out, &err);
    if (!ck) {
        /* the coverage and file checks have said what is missing */
        g_error_free(err);
        return;
    }
    qm_fp8_config *c = NULL;
    char *cfg = g_build_filename(t->out, "config.json", NULL);
    int n = 0;
    if (qm_fp8_config_read(ck->config, cfg, &c, &err) < 0) {
        vf_add(r, VF_SHAPE, "fp8", NULL, NULL, -1, "%s", err->message);
        g_clear_error(&err);
    } else if (qm_fp8_check_ckpt(ck, add_problem, r, &n, &err) < 0) {
        /* a file that cannot be read is the other checks' finding; only an
         * FP8 checkpoint says that its scales went unchecked */
        if (c)
            g_ptr_array_add(r->notes, g_strdup_printf("fp8: scales not checked: %s",
                                                      err->message));
        g_clear_error(&err);
    } else if (n > 0 && c) {
        g_ptr_array_add(r->notes, g_strdup_printf(
            "fp8: %d F8_E4M3 weights checked against their weight_scale_inv (%dx%d "
            "blocks)", n, c->block_rows, c->block_cols));
    }
    qm_fp8_config_free(c);
    g_free(cfg);
    ckpt_close(ck);
}
