/* model_impl.h - the forward pass's insides, shared by its files (not an API).
 *
 * The model is split as llama2.c splits a transformer: weights (mapped or
 * converted at load, read-only afterwards), run state (the buffers of one
 * batch in flight, made once at load) and sequences (a KV cache and a
 * position each). Who does what:
 *   model_load.c  config, weights, load/free, masks and the router observer
 *   forward.c     the one loop over a batch of (sequence, token) pairs, and
 *                 the public calls built on it (step, feed, batches)
 *   attention.c   RoPE (whole or partial heads), q/k norms and biases, MLA
 *                 projections, causal attention
 *   routing.c     the router: softmax top-k, or sigmoid group-limited top-k
 *   moe.c         SwiGLU MLPs and the MoE block of a batch
 *   generate.c    sequence logits, likelihood, sampling and generation
 */
#ifndef QMOE_MODEL_IMPL_H
#define QMOE_MODEL_IMPL_H

#include "model/model.h"
#include "model/matvec.h"
#include "model/team.h"
#include "model/rope.h"

#include <math.h>

/* Logits computed at once by model_nll (lm_head over this many positions
 * per pass over its weights). */
#define LOGIT_ROWS 32
/* Logits per block handed to model_logits_fn: lm_head's weights (622 MB
 * for the Qwen3-Omni thinker) are streamed from memory once per block,
 * and the block is 128 x vocab floats (78 MB there). */
#define SINK_ROWS 128

typedef struct {
    qm_mat q, k, v, o;            /* [H*hd, hidden] x3 (k, v: [KV*hd, hidden]), [hidden, H*hd] */
    float *q_norm, *k_norm;       /* (head_dim), LT_QK_FULL: (H*hd), (KV*hd); or NULL */
    float *q_bias, *k_bias, *v_bias; /* (H*hd), (KV*hd) x2, or NULL */
    float *in_norm, *post_norm;   /* (hidden) */
    qm_mat router;                /* [n_experts, hidden] (MoE layers) */
    qm_mat gate, up, down;        /* dense MLP (other layers) */
    int shared;                   /* MoE layer with a gated shared expert: */
    qm_mat sgate, sup, sdown;     /* its SwiGLU MLP */
    qm_mat sg;                    /* [1, hidden] its sigmoid gate (rows 0: none) */
    float *score_bias;            /* (n_experts) e_score_correction_bias, or NULL */
    /* MLA (instead of q, k, v): */
    qm_mat qa, qb;                /* [q_lora, hidden], [H*(nope+rope), q_lora] */
    qm_mat kva, kvb;              /* [kv_lora+rope, hidden], [H*(nope+v), kv_lora] */
    float *qa_norm, *kva_norm;    /* (q_lora), (kv_lora) */
} layer_w;

/* Weights: read-only once model_load returns. */
typedef struct {
    qm_mat embed;                 /* [vocab, hidden] */
    qm_mat lm_head;               /* [vocab, hidden] */
    float *final_norm;            /* (hidden) */
    layer_w *layers;              /* [n_layers] */
    float *inv_freq;              /* (head_dim / 2) default RoPE frequencies */
    qm_rope *rope;                /* the config's RoPE (rope.c) */
    float *rope_cos, *rope_sin;   /* YaRN: (max_seq, rope_dim / 2), else NULL */
    float att_scale;              /* softmax scale: 1/sqrt(head_dim) x softmax_mult */
} model_weights;

/* One sequence: its KV cache and next position. */
struct model_seq {
    const model *m;
    int id;                       /* reported to the router observer */
    int cap;                      /* KV cache length in tokens */
    int pos;                      /* next position */
    int pending;                  /* tokens of the batch being laid out */
    float *k, *v;                 /* (n_layers, cap, n_kv_heads * head_dim) */
    uint8_t *allow;               /* (n_experts) its router mask, or NULL: the model's */
};

/* A token of the batch in flight. */
typedef struct {
    model_seq *seq;
    int token, pos;
} fwd_tok;

/* The buffers of one batch of up to max_batch tokens, made once at load.
 * B = max_batch, K = top_k, E = n_experts, I = the widest MLP. */
typedef struct {
    int max_batch;
    fwd_tok *tok;                 /* (B) the batch's tokens */
    float **lgp;                  /* (B) where each token's logits go, or NULL */
    int *lgt;                     /* (B) the batch index of each row lm_head computes */
    float *sink;                  /* (sink_rows, vocab) logits for model_logits_fn */
    int sink_rows;
    float *x, *xb, *xb2;          /* (B, hidden) residuals, block inputs, block outputs */
    float *q, *k, *v;             /* (B, H*hd), (B, KV*hd) x2 projections of the batch */
    float *att_out;               /* (B, H*hd) */
    float *att;                   /* (threads * group, max_seq) attention weights */
    float *cos, *sin;             /* (B, head_dim / 2) RoPE at each token's position */
    float *rl;                    /* (B, E) router logits, then scores */
    int *top;                     /* (n_layers, B, K) chosen experts */
    float *topw;                  /* (n_layers, B, K) their weights */
    float *topn;                  /* (n_layers, B, K) L2 norms of their outputs */
    int *start;                   /* (E + 1) start of each expert's pairs in list */
    int *used;                    /* (E) the experts a batch routes to, ascending */
    int *list;                    /* (B * K) (token * K + choice) routed to each expert */
    float *g;                     /* (B, hidden) an expert's gathered inputs, then outputs */
    float *h, *h2;                /* (B, I) gate and up activations */
    float *moe;                   /* (B, hidden) weighted sums of expert outputs */
    float *lg;                    /* (LOGIT_ROWS, vocab) logits for model_nll */
    float *mqa, *mkva, *mkvb;     /* MLA: (B, q_lora / kv_lora+rope / H*(nope+v)) */
    float *rscore;                /* (2 * E) sigmoid routing: choices, group scores */
    int *rgroup;                  /* (2 * E) group order, kept groups */
    /* experts of a batch where each has one token, all held: one team wake */
    int npair;                    /* min(E, B * K) */
    float *eh, *eh2, *eout;       /* (npair, moe_inter) x2, (npair, hidden) */
    float **bout;                 /* (2 * npair) output pointers */
    const float **bx;             /* (2 * npair) input pointers */
    const qm_mat **bmat;          /* (2 * npair) gate, up of each expert */
    const qm_mat **bdown;         /* (npair) */
    float *logits;                /* (vocab) for model_generate */
} run_state;

struct model {
    ckpt *ck;
    const layout *lt;
    lt_qk_norm qk_norm;           /* lt's q/k norm and q/k/v biases as the */
    int qkv_bias;                 /* config switches them (layout.h *_key) */
    lt_shape shape;
    qm_fp8_config *fp8;           /* FP8 quantization_config, or NULL */
    model_config c;
    model_weights w;
    expert_store *store;
    team *team;
    uint8_t **allow;              /* [n_layers] router masks (n_experts each), NULL = all */
    model_router_fn router_fn;
    void *router_user;
    model_logits_fn logits_fn;    /* model_set_logits_fn */
    void *logits_user;
    int batch_base;               /* model_batch: index of the batch in flight's first token */
    int in_batch;                 /* model_batch is running (logits_fn applies) */
    model_seq *seq0;              /* the sequence of model_step and model_feed */
    uint64_t step_bytes;          /* weights the last batch read */
    int no_prefetch;              /* model_opts.no_prefetch */
    int want_logits;              /* the batch in flight ends with lm_head */
    size_t page;
    run_state r;
    char name[512];
};

/* model_load.c */
int moe_layers(const model *m);

/* forward.c: the run state for batches of up to max_batch tokens
 * (clamped to max_seq); run_state_free accepts a zeroed one. */
void run_state_init(model *m, int max_batch);
void run_state_free(run_state *r);

/* forward.c: the batch r.tok[0..n) through every layer, leaving each
 * token's last residual in r.x; then the router observer. */
int forward(model *m, int n, GError **err);
/* rmsnorm and lm_head of rows t0..t0+nt-1 of the batch into out (nt x vocab). */
void batch_logits(model *m, int t0, int nt, float *out);
/* out = w x for n tokens (ldo, ldx floats apart): a matrix-vector product
 * for one token, else matrix-matrix (bit-identical per token); counted in
 * step_bytes. proj_multi: several of the same x (n <= 4). */
void proj(model *m, float *out, int ldo, const qm_mat *w, const float *x, int ldx, int n);
void proj_multi(model *m, int nm, float *const *out, const int *ldo,
                const qm_mat *const *w, const float *x, int ldx, int n);
void prefetch_dense(const model *m, int l);

/* attention.c */
void rope_tables(const model *m, int n);
void attention(model *m, int l, int n);
/* The batch's q, k, v for layer l from r.xb, stored into each token's
 * sequence at its position. */
void qkv(model *m, const layer_w *w, int l, int n);

/* routing.c: top-k of the router scores p (n_experts) of layer l. */
void route_pick(const model *m, int l, const uint8_t *allow, float *p, int *top, float *topw);

/* A router mask as the engine keeps it: allow[0..n_experts) as 0/1 into
 * out (may be NULL: only counted). Returns how many experts it allows; the
 * caller refuses fewer than top_k, in its own words. */
int route_mask_copy(const model_config *c, const uint8_t *allow, uint8_t *out);

/* moe.c */
static inline float silu(float x) { return x / (1.0f + expf(-x)); }
static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
/* out = down(silu(gate x) * up x) for n tokens of x (hidden floats apart). */
void mlp(model *m, const qm_mat *gate, const qm_mat *up, const qm_mat *down,
         const float *x, int n, float *out);
/* Layer l's MoE block (routed experts and the shared one) for the batch,
 * added to r.x. */
int moe(model *m, int l, int n, GError **err);

#endif
