/* perplexity.c - windowed mean negative log-likelihood of a text. */
#include "analysis/perplexity.h"

#include <math.h>
#include <stdint.h>

#include "base/util.h"

int ppl_ids(model *m, const int *ids, int n, int context, ppl_result *out,
            GError **err)
{
    const model_config *c = model_get_config(m);
    if (n < 2) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "the text has %d token%s; a perplexity needs at least 2", n,
                    n == 1 ? "" : "s");
        return -1;
    }
    int longest = n < context ? n : context;
    if (context < 2 || longest > c->max_seq) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "a perplexity window of %d tokens does not fit the model's context "
                    "of %d (or is shorter than 2)", context < 2 ? context : longest,
                    c->max_seq);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "token %d of the text (id %d) is outside the model's "
                        "vocabulary [0, %d)", i, ids[i], c->vocab);
            return -1;
        }
    double sum = 0;
    int windows = 0;
    for (int s = 0; s < n - 1; s += context - 1) {
        int len = n - s < context ? n - s : context;
        double mean;
        if (model_nll(m, ids + s, len, &mean, err) != 0)
            return -1;
        sum += mean * (len - 1);
        windows++;
    }
    out->n_tokens = n;
    out->n_scored = n - 1;
    out->context = context;
    out->n_windows = windows;
    out->nll = sum / (n - 1);
    out->ppl = exp(out->nll);
    return 0;
}

int ppl_text(model *m, tok_t *tok, const char *text, size_t len, int context,
             ppl_result *out, GError **err)
{
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    int rv = -1;
    if (tok_encode(tok, text, len, 0, ids, err) == 0) {
        if (ids->len > INT32_MAX / 2) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE, "the text has too many tokens (%u)",
                        ids->len);
        } else {
            /* int32_t and int are the same on every platform we build for,
             * but do not rely on it. */
            int *v = g_new(int, ids->len ? ids->len : 1);
            for (guint i = 0; i < ids->len; i++)
                v[i] = g_array_index(ids, int32_t, i);
            rv = ppl_ids(m, v, (int)ids->len, context, out, err);
            g_free(v);
        }
    }
    g_array_free(ids, TRUE);
    return rv;
}
