/* mksample_coherent.h - the coherent sample model: a Qwen3-MoE / Qwen3-Omni
 * checkpoint whose weights are constructed, not trained, so that greedy
 * decoding of its prompts reproduces known sentences only when every expert
 * is in its place and the router is free. mksample_coherent.c explains the
 * construction.
 *
 * The corpus lives in the module (one table), so that the checkpoint, the
 * prompt set (samples/prompts) and the reference text (samples/reference.txt)
 * cannot drift apart: coherent_prompts_jsonl() and coherent_reference_text()
 * give the exact bytes of those two files and a test compares them.
 */
#ifndef QMOE_MKSAMPLE_COHERENT_H
#define QMOE_MKSAMPLE_COHERENT_H

#include <glib.h>

typedef struct {
    const char *domain;   /* technical, creative, conversational, multilingual */
    const char *prompt;   /* a prefix of a corpus sentence */
    const char *expected; /* the rest of it: the greedy continuation, which
                             then ends with <|endoftext|> */
} coh_prompt;

/* The prompt set (static); *n gets its length. */
const coh_prompt *coherent_prompts(int *n);

/* samples/prompts: one JSON object per line,
 * {"domain":...,"prompt":...,"expected":...}. Caller g_free()s. */
char *coherent_prompts_jsonl(void);

/* samples/reference.txt: every corpus sentence followed by <|endoftext|>
 * and a newline. Caller g_free()s. */
char *coherent_reference_text(void);

/* What the generator measured on its own simulation of the forward pass
 * (the bf16 weights as written, float32 arithmetic as in common/model/forward.c). */
typedef struct {
    int vocab;            /* config vocab_size */
    int n_tokens;         /* tokenizer size (byte tokens, merges, specials) */
    int n_words;          /* distinct corpus tokens (one identity dimension each) */
    int hidden, layers, experts, top_k, inter;
    double min_margin;    /* healthy: min over corpus tokens of
                             logit(successor) - best other logit */
    double min_break;     /* any one expert of any layer zeroed: min over the
                             tokens it serves of logit(decoy) - logit(successor)
                             (a lower bound of the wrong winner's margin) */
    double min_masked;    /* router masked to experts 0-7: the same, over all
                             corpus tokens */
    double ppl, ppl_masked; /* perplexity of the reference text: healthy, masked 0-7 */
} coh_stats;

/* Builds the model for LAYOUT ("qwen3_moe" or "qwen3_omni_moe"), checks it
 * (tokenizer round trip through common/tokenizer, unique successors, logit
 * margins of the healthy model - which make greedy decoding of every prompt
 * give its expected text - every single-expert loss and the 0-7 mask
 * breaking every token they touch, all by at least 8 nats) and writes the checkpoint into directory
 * OUT (created; existing files of the same names are replaced): config.json,
 * generation_config.json, tokenizer.json, tokenizer_config.json, bf16
 * shards model-0000N-of-0000M.safetensors and model.safetensors.index.json.
 * Deterministic: the same bytes on every run. ST (may be NULL) receives the
 * measurements. Returns 0, or -1 with *err set: QM_ERR_CHECK when a check
 * of the construction fails (a bug or a corpus edit that breaks a rule,
 * named in the message), QM_ERR_USAGE for an unknown layout, QM_ERR_IO when
 * writing fails. */
int coherent_write(const char *out, const char *layout, coh_stats *st, GError **err);

#endif
