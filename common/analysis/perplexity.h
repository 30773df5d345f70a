/* perplexity.h - how well a model predicts a text.
 *
 * The mean negative log-likelihood (nats per token) of a text's tokens
 * after the first, each given the tokens before it, and the perplexity
 * exp(mean nll). Texts longer than the context are cut into windows of
 * CONTEXT tokens that overlap by one token: window w covers
 * ids[w(C-1) .. w(C-1)+C), and its tokens after the first are scored given
 * the window's earlier tokens only. So every token but the text's first is
 * scored exactly once, with between 1 and C-1 tokens of context, and the
 * model starts afresh (empty KV cache) at each window. No BOS is added
 * (Qwen has none): the first token of the text is not scored.
 *
 * Used by qmoe-run --perplexity and the coherence gate of qmoe-verify.
 */
#ifndef QMOE_PERPLEXITY_H
#define QMOE_PERPLEXITY_H

#include <glib.h>
#include <stddef.h>

#include "model/model.h"
#include "text/tokenizer.h"

/* Default window: long enough for a page of text, short enough that a
 * 30B model scores it in minutes on a CPU. */
#define PPL_DEFAULT_CONTEXT 1024

typedef struct {
    int n_tokens;  /* tokens in the text */
    int n_scored;  /* tokens scored: n_tokens - 1 */
    int context;   /* window length used */
    int n_windows;
    double nll;    /* mean negative log-likelihood, nats per scored token */
    double ppl;    /* exp(nll) */
} ppl_result;

/* Scores ids[0..n) under M (n >= 2; context >= 2, and a window,
 * min(n, context) tokens, must fit the model's KV cache,
 * model_get_config(m)->max_seq). Resets M. Returns 0 and fills
 * *out, or -1 with *err set: QM_ERR_USAGE for too few tokens, a bad
 * context or an id outside the model's vocabulary; the model's error when
 * an expert cannot be loaded. */
int ppl_ids(model *m, const int *ids, int n, int context, ppl_result *out,
            GError **err);

/* Encodes LEN bytes of TEXT with TOK (added tokens matched, as the model
 * saw them in training) and scores them with ppl_ids(). Fails also when
 * TEXT is not valid UTF-8 (QM_ERR_FORMAT). */
int ppl_text(model *m, tok_t *tok, const char *text, size_t len, int context,
             ppl_result *out, GError **err);

#endif
