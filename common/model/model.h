/* model.h - the reference forward pass of a MoE text decoder.
 *
 * Families differ where their layout entry (format/layout.h) says so: q/k
 * norms over the whole projection (OLMoE) or none (Mixtral, Qwen2-MoE),
 * q/k/v biases and a sigmoid-gated shared expert (Qwen2-MoE), multi-head
 * latent attention, sigmoid group-limited routing with a selection bias
 * and routed scaling, ungated shared experts (DeepSeek-V3). The base is
 * the network of Hugging Face's modeling_qwen3_moe.py, which is also the
 * text path of the Qwen3-Omni thinker: token embedding; per layer RMSNorm,
 * attention (q/k/v projections, per-head RMSNorm of q and k, rotate-half
 * RoPE, grouped-query heads, causal softmax scaled by head_dim^-0.5, o_proj)
 * and a residual; RMSNorm, then either the routed MoE block (router softmax
 * in float32, top-k, optional renormalisation, SwiGLU experts, weighted sum)
 * or a dense SwiGLU MLP (mlp_only_layers, decoder_sparse_step), and a
 * residual; final RMSNorm and lm_head. Everything is computed in float32
 * from bf16/f16/f32 weights with a KV cache per sequence.
 *
 * One loop (forward.c) computes every batch: one token (decode), a prompt
 * in micro-batches (prefill), or tokens of several sequences at once
 * (model_batch), with the same bits for a token whatever its company.
 *
 * Non-expert weights are mapped from the checkpoint; routed experts come
 * through an expert_store (expert_store.h) so that only the ones the router
 * picks are read, within a bounded cache. The checkpoint may be an original
 * directory or an extracted OUT: both are read through the index.
 *
 * All buffers are made by model_load; the per-token path allocates nothing
 * (except when the expert cache grows towards its bound).
 */
#ifndef QMOE_MODEL_H
#define QMOE_MODEL_H

#include <glib.h>
#include <stdint.h>

#include "format/checkpoint.h"
#include "model/expert_store.h"
#include "format/layout.h"

typedef struct model model;

typedef struct {
    int n_threads;        /* >= 1; 0 = 1 */
    uint64_t cache_bytes; /* expert cache budget; 0 = 4 GiB */
    int max_seq;          /* KV cache length; 0 = min(max_position_embeddings, 4096) */
    expert_io expert_io;  /* how misses bring experts in (expert_store.h) */
    int max_batch;        /* prefill micro-batch in tokens; 0 = MODEL_BATCH */
    int no_prefetch;      /* 1: no read-ahead hints for weights about to be used
                           * (expert_store_prefetch, the dense weights of a
                           * prefill); measures what they are worth */
} model_opts;

/* Default prefill micro-batch: at 128 experts top-8 an expert sees 16 of
 * 256 tokens on average, enough to use each weight it streams many times. */
#define MODEL_BATCH 256

/* The text config as used. */
typedef struct {
    int vocab, hidden, n_layers, n_heads, n_kv_heads, head_dim;
    int n_experts, top_k, moe_inter, dense_inter;
    int shared_inter;     /* shared expert's width (layout.shared), else 0 */
    /* Multi-head latent attention (layout.attn LT_ATTN_MLA): head_dim is
     * qk_nope + qk_rope (the softmax scale's), v_dim the value heads',
     * rope_dim the last dims of a head that RoPE rotates, as adjacent pairs.
     * Otherwise v_dim = head_dim, and rope_dim the first dims of a head
     * that RoPE rotates, as halves: head_dim, or int(head_dim *
     * partial_rotary_factor) for layout.partial_rotary (GLM-4.5). */
    int v_dim, rope_dim, q_lora, kv_lora, nope;
    /* Sigmoid grouped routing (layout.score LT_SCORE_SIGMOID_GROUPED). */
    int n_group, topk_group;
    float routed_scale;
    int norm_topk;        /* renormalise top-k weights (config or layout default) */
    int tie_embeddings;
    int max_seq;          /* KV cache length in tokens */
    float eps, rope_theta;
    const uint8_t *is_moe;/* [n_layers] */
} model_config;

/* Router observer: called once per token and MoE layer, token by token
 * in batch order, with the chosen experts in descending selection score
 * (router probability; DeepSeek-V3: sigmoid + bias) and their mixing
 * weights (after renormalisation and scaling). seq is the token's
 * sequence in a multi-sequence batch (its model_seq id; 0 for
 * single-sequence calls); out_norms[i] is the L2 norm of chosen expert
 * i's output vector (its down projection, before it is multiplied by
 * weights[i]), needed for REAP expert scores. */
typedef void (*model_router_fn)(void *user, int seq, int pos, int token, int layer, int k,
                                const int *experts, const float *weights,
                                const float *out_norms);

/* Opens the checkpoint at `path`, detects its layout (one whose entry has
 * `forward` set), reads the text config, maps the non-expert weights and
 * checks every shape against the config. Errors name the file and the
 * tensor or key (QM_ERR_FORMAT, QM_ERR_IO). */
model *model_load(const char *path, const model_opts *o, GError **err);

/* Frees everything, closing the checkpoint; accepts NULL. */
void model_free(model *m);

const model_config *model_get_config(const model *m);
const layout *model_layout(const model *m);
ckpt *model_checkpoint(model *m);
expert_store *model_experts(model *m);

/* Restricts the router of decoder layer `layer` (a MoE layer) to experts
 * with allow[e] != 0 (n_experts entries, copied); the others' logits
 * become -inf before softmax and top-k. NULL lifts that layer's
 * restriction. model_set_mask(m, allow, err) stays and sets every MoE
 * layer alike. Fails (GError naming the layer) for a dense or
 * out-of-range layer, or when fewer than top_k experts are allowed. */
int model_set_layer_mask(model *m, int layer, const uint8_t *allow, GError **err);
int model_set_mask(model *m, const uint8_t *allow, GError **err);

/* Router observer (NULL to stop). */
void model_set_router_log(model *m, model_router_fn fn, void *user);

/* Logits without a buffer per token: with fn set, model_batch computes the
 * logits of the tokens whose `logits` is non-NULL (then only a flag) a
 * block of rows at a time into a scratch of the model's and calls
 * fn(user, i, row) for each, i its index in model_batch's toks, in
 * ascending i, before model_batch returns; row ([vocab]) is valid during
 * the call only. The bits are the same as into a buffer. A caller that
 * only scores thousands of positions (argmax, likelihood) so never holds
 * thousands x vocab floats. NULL: each token's `logits` (the default).
 * Only model_batch uses it. */
typedef void (*model_logits_fn)(void *user, int index, const float *logits);
void model_set_logits_fn(model *m, model_logits_fn fn, void *user);

/* ---- sequences ----
 *
 * A sequence is a KV cache and a position. The model has one of its own
 * (model_step, model_feed, model_generate use it); more can be made to
 * run several sequences in one batch (model_batch), e.g. decode one token
 * of each of M sequences, or the prompts of a test set together. */
typedef struct model_seq model_seq;

/* A sequence of at most max_len tokens (0 or more than the model's
 * max_seq: max_seq) whose tokens the router observer reports with `id`.
 * Its KV cache is n_layers x max_len x n_kv_heads x head_dim x 2 floats.
 * Fails (QM_ERR_NOSPACE) when that cannot be allocated. The model must
 * outlive it. */
model_seq *model_seq_new(model *m, int id, int max_len, GError **err);
/* Accepts NULL. */
void model_seq_free(model_seq *s);
/* Forgets the tokens: the next one is at position 0. */
void model_seq_reset(model_seq *s);
/* Forgets the tokens from position pos on (pos below the next position):
 * e.g. to continue a sequence fed with a guess from where the guess went
 * wrong. */
void model_seq_truncate(model_seq *s, int pos);
int model_seq_pos(const model_seq *s);
int model_seq_id(const model_seq *s);
/* Restricts the router for this sequence's tokens, at every MoE layer,
 * to experts with allow[e] != 0 (n_experts entries, copied), in place of
 * the model's masks (model_set_mask); NULL: the model's masks again. A
 * batch can so hold sequences routed differently (the gate's masked
 * ablation beside the free run). Fails when fewer than top_k experts are
 * allowed. */
int model_seq_set_mask(model_seq *s, const uint8_t *allow, GError **err);
/* The keys (values = 0) or values (values = 1) of layer `layer`: pos rows
 * of n_kv_heads x head_dim floats (MLA: n_heads x head_dim, values padded
 * with zeros), after RoPE; for tests and inspection. */
const float *model_seq_kv(const model_seq *s, int layer, int values);

/* The model's own sequence (id 0). */
model_seq *model_default_seq(model *m);

/* Forgets the model's own sequence: the next token is at position 0. */
void model_reset(model *m);

/* Position of the next token of the model's own sequence. */
int model_pos(const model *m);

/* A token of a batch: its sequence (NULL: the model's own), id, and
 * where its next-token logits go ([vocab]), or NULL (no lm_head). */
typedef struct {
    model_seq *seq;
    int token;
    float *logits;
} model_tok;

/* Feeds toks[0..n), each at the next position of its sequence (tokens of
 * one sequence in the order given), through the model in batches of
 * max_batch tokens: each layer's weights and each routed expert read once
 * per batch. Logits, KV caches and the router log are bit-identical to
 * feeding the tokens one at a time, whatever the batch's composition.
 * Fails before feeding anything for an id outside the vocabulary, a
 * sequence of another model or one its tokens would overflow; fails for
 * an expert that cannot be loaded (the sequences then keep the positions
 * of the batches before). */
int model_batch(model *m, const model_tok *toks, int n, GError **err);

/* Feeds one token at the next position. With logits != NULL writes the
 * vocab next-token logits there (skipping lm_head otherwise). Fails for an
 * id outside the vocabulary, a full KV cache or an expert that cannot be
 * loaded. */
int model_step(model *m, int token, float *logits, GError **err);

typedef enum {
    MODEL_LOGITS_NONE, /* no lm_head */
    MODEL_LOGITS_LAST, /* logits is [vocab]: the last position's */
    MODEL_LOGITS_ALL,  /* logits is [n x vocab] */
} model_logits;

/* Feeds n tokens at the next positions in micro-batches of max_batch
 * (prefill): the KV cache, the logits asked for and the router log are
 * bit-identical to n model_step calls, at matrix-matrix speed. Fails
 * before feeding anything if an id is outside the vocabulary or the
 * tokens do not fit the KV cache; fails for an expert that cannot be
 * loaded. */
int model_feed(model *m, const int *ids, int n, model_logits which, float *logits,
               GError **err);

/* Resets and computes the logits of every position of ids:
 * logits is [n x vocab]. */
int model_sequence_logits(model *m, const int *ids, int n, float *logits,
                          GError **err);

/* Resets and computes the mean negative log-likelihood (nats per token)
 * of ids[1..n-1] given their prefixes (n >= 2). */
int model_nll(model *m, const int *ids, int n, double *nll, GError **err);

/* -log softmax(logits)[id], in double: the term model_nll sums (in
 * position order), for callers that score tokens of their own batches. */
double model_token_nll(const float *logits, int vocab, int id);

typedef struct {
    float temperature;    /* <= 0: greedy (argmax, first on ties) */
    uint64_t seed;        /* for sampling */
    const int *stop_ids;  /* generation ends after emitting one of these */
    int n_stop;
    /* Optional: called with each token as soon as it is chosen (before it
     * is fed back), e.g. to print text while generating. A non-zero
     * return ends the generation early (not an error). */
    int (*on_token)(void *user, int token);
    void *user;
} model_sampling;

/* Per-step times kept by model_gen_stats (the first steps show how decode
 * speeds up while the expert cache fills). */
#define MODEL_STEP_TIMES 64

/* Timing of a model_generate call. */
typedef struct {
    double prefill_s;        /* feeding the prompt */
    double decode_s;         /* feeding generated tokens back */
    int decode_steps;        /* tokens fed back (n_out - 1 at most) */
    uint64_t decode_weight_bytes; /* weights those steps touched */
    double step_s[MODEL_STEP_TIMES]; /* seconds of each of the first steps */
} model_gen_stats;

/* Resets, feeds the prompt (n_prompt >= 1), then produces up to n_new
 * tokens into out; *n_out gets how many (fewer when a stop id came).
 * prompt_logits, when not NULL, receives [n_prompt x vocab]; gs, when not
 * NULL, the timing. */
int model_generate(model *m, const int *prompt, int n_prompt, int n_new,
                   const model_sampling *s, float *prompt_logits, int *out,
                   int *n_out, model_gen_stats *gs, GError **err);

/* Weight bytes read by the matrix products of the last model_step (the
 * weights a token touches: attention, router, chosen experts, dense MLPs,
 * lm_head when asked, one embedding row). */
uint64_t model_step_weight_bytes(const model *m);

/* out = x / sqrt(mean(x^2) + eps) * w over n floats, as Hugging Face's
 * Qwen3MoeRMSNorm computes it in float32; out may be x. Exposed so that a
 * simulation of the model (the coherent sample) rounds the same way. */
void model_rmsnorm(float *out, const float *x, const float *w, int n, float eps);

#endif
