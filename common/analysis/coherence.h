/* coherence.h - the coherence gate: does an extraction still make a
 * working model?
 *
 * File checks (verify.h) prove that every byte is where the manifest says;
 * they cannot see a model that is assembled wrongly but consistently (two
 * experts' data exchanged and re-hashed, a router restricted to experts
 * 0-7). This gate runs the reference forward pass (model.h) on the files
 * and judges what comes out. It fails unless:
 *
 *   (a) source      with a source checkpoint: the logits of the first
 *                   prompt of each domain (at most COH_SOURCE_PROMPTS
 *                   prompts) are bit-identical between OUT and the source;
 *   (b) perplexity  the perplexity of the reference text is at most
 *                   max_ppl (coh_default_max_ppl(): min(100, vocab / 4)),
 *                   scored in windows of PPL_DEFAULT_CONTEXT tokens (or
 *                   the model's context) cut as ppl_ids() (perplexity.h)
 *                   cuts them, with its bits, each window a sequence of
 *                   the prompt set's batch;
 *   (c) router      the router is free: in every MoE layer, the experts
 *                   picked as any of the top-k choices while running the
 *                   prompt set (prompt and expected tokens) number more
 *                   than coh_router_threshold(n_experts) =
 *                   max(n_experts / 4, min(8, n_experts / 2)). With 128
 *                   experts that is more than 32, with 16 more than 8, with
 *                   8 more than 4: a router confined to experts 0-7 fails
 *                   whenever the layer has 16 or more.
 *
 * Why these numbers. A model that guesses uniformly has perplexity equal
 * to its vocabulary size, and random weights do about that or worse (the
 * random qmoe-mksample model, vocabulary 384, scores 388 on
 * samples/reference.txt); a healthy real model scores under 20 on ordinary
 * text. The bound 100 sits 5x above the one and, for a real vocabulary
 * (Qwen: 151936), three orders of magnitude below the other; the cap
 * vocab / 4 keeps it below chance for tiny vocabularies. The coherent
 * sample scores 1.23 healthy and 1e5 or more with any expert misplaced.
 * A 16-prompt set at top-8 makes thousands of choices per layer; a real
 * router spreads them over most of its 128 experts, so a quarter is a
 * generous floor, while a masked router uses exactly the mask.
 *
 * Reported besides: the greedy continuation of every prompt (ending at the
 * ids of chat_end_ids(), chat.h, or after n_new tokens, or after the
 * tokens teacher forcing chose when they are more) and, when the
 * prompt carries "expected", whether the model continues as expected,
 * decided by teacher forcing: the prompt and its expected tokens are fed
 * as one sequence, and at every position from the prompt's last the
 * argmax is the next expected token (the verdict greedy generation gives,
 * at the token level, without a step per token; a
 * fact, not a criterion: samples/prompts holds the coherent sample's
 * sentences, which a real model is not meant to reproduce); per layer how
 * often each expert was chosen; per prompt domain and layer the experts
 * that carried the most router weight; and the masked ablation: the
 * reference perplexity with the router restricted to experts 0-7 next to
 * the free router's (when the model has more than 8 experts).
 *
 * With an expert plan (opts.keep_experts, expert_plan.h) the whole gate
 * runs with each listed layer's router restricted to the plan: the model
 * a pack with that plan would write, simulated on this one. It is judged
 * by the same criteria, (c) measured against what the plan allows: a
 * listed layer keeping n experts must use more than
 * coh_router_threshold(n) of them across the prompt set (more than 4 of
 * 8), so a router collapsed inside the plan still fails. Reported besides,
 * as information and not a criterion: the comparison at the same N, three
 * runs of the reference text side by side: the plan, the first N experts
 * of each listed layer (experts 0..N-1: the seed's mistake) and the free
 * router, each with its perplexity and its router diversity, the distinct
 * experts the text's tokens were routed to over the experts the layer
 * allows (summed over the MoE layers, and per layer).
 *
 * How it runs: the prompt set (prompts with their expected texts), the
 * reference text's windows and the masked ablation (the windows again,
 * sequences whose router is masked: model_seq_set_mask) go through the
 * layers as one batch (passes of COH_BATCH tokens: one pass for the
 * sample prompts and text), each row of logits scored as lm_head computes
 * it (model_set_logits_fn); then the greedy continuations advance
 * together, one batch per step, from where teacher forcing left them.
 * With a plan, the comparison's first-N and free rows are two more
 * batches of the text's windows.
 *
 * Prompt set: JSON lines {"domain", "lang", "prompt", "expected"}; domain
 * and prompt are required, blank lines are skipped.
 */
#ifndef QMOE_COHERENCE_H
#define QMOE_COHERENCE_H

#include <cjson/cJSON.h>
#include <glib.h>
#include <stdint.h>

#define COH_SOURCE_PROMPTS 4   /* prompts whose logits are compared (a) */
/* Tokens generated per prompt by default. Each greedy step of the
 * 16-prompt set at top-8 of 128 experts routes to most experts: nearly
 * free while the model's weights stay in the page cache, a read of most
 * of the model when they do not (the 6.2 GB real-width sample in a 3 GB
 * cgroup: about 3 GB and 9 s a step). So the default is COH_DEFAULT_NEW
 * when the files the prompt batch read fit in the memory available
 * (qm_memory_available(), base/memory.h) and 1 when they do not: the
 * tokens teacher forcing chose, which cost nothing, and the gate reads the
 * model once. A continuation is never cut shorter than what teacher
 * forcing already chose; --gen-tokens N asks for N whatever the memory. */
#define COH_DEFAULT_NEW 4
#define COH_ABLATION_MASK "0-7"
/* Tokens per pass over the layers (capped by the model's context): a
 * prompt set, reference text and ablation of this size read each expert
 * once (the sample's: 2155 tokens). The run state grows with the tokens
 * a pass holds (about 85 KB each at the Qwen3-Omni thinker's widths). */
#define COH_BATCH 4096

typedef struct {
    const char *text_path;    /* reference text, read whole (required) */
    const char *prompts_path; /* the prompt set (required) */
    const char *source;       /* checkpoint for (a), or NULL: not checked */
    double max_ppl;           /* (b) bound; <= 0: coh_default_max_ppl() */
    const char *mask;         /* LIST restricting the router for the whole
                               * run (to show what a masked router does),
                               * or NULL: free */
    const char *keep_experts; /* an expert plan (expert_plan.h) restricting
                               * each listed layer's router for the whole
                               * run, or NULL; not with mask */
    int n_threads;            /* forward-pass threads; <= 0: 1 */
    int n_new;                /* tokens per prompt; <= 0: the default
                               * (COH_DEFAULT_NEW, or 1 when the model is
                               * larger than memory) */
    /* Optional: told as each step of the gate starts, with what it is
     * ("source: prompt 2 of 4 [creative], 9 tokens, both models"); on the
     * real model a step takes minutes. */
    void (*progress)(void *user, const char *step);
    void *progress_user;
} coh_opts;

typedef struct {
    char *domain, *lang, *prompt;
    char *expected;           /* or NULL */
    int n_prompt_tokens;
    char *output;             /* decoded continuation, stop token excluded;
                               * invalid UTF-8 replaced by U+FFFD */
    int n_output_tokens;      /* generated, stop token included */
    int stopped;              /* ended on an end-of-text id */
    int matches;              /* teacher forcing: the argmax after the
                               * prompt and after each expected token is
                               * the next expected token; -1: no expected */
} coh_prompt_result;

typedef struct {
    int layer;
    int n_experts;
    int used;                 /* experts chosen at least once (top-k) */
    int used_first;           /* experts chosen at least once as top-1 */
    int allowed;              /* experts the router may choose: the plan's
                               * count for a listed layer, else n_experts */
    int threshold;            /* coh_router_threshold(allowed) */
    int ok;                   /* used > threshold */
    uint32_t *choices;        /* [n_experts] times chosen among the top-k */
    double *weight;           /* [n_experts] router weight received */
} coh_layer_usage;

typedef struct {
    char *domain;
    int n_prompts;
    int n_tokens;             /* tokens routed for this domain */
    double *weight;           /* [n_moe_layers x n_experts] router weight */
} coh_domain_usage;

/* One row of the comparison at the same N (a run with a plan). */
enum { COH_ROW_PLAN, COH_ROW_FIRST, COH_ROW_FREE, COH_ROWS };

typedef struct {
    const char *name;         /* "plan", "first", "free" (static) */
    double nll, ppl;          /* on the reference text */
    int used, allowed;        /* summed over the MoE layers: distinct experts
                               * the text was routed to, experts allowed */
    int *layer_used;          /* [n_moe_layers] */
    int *layer_allowed;       /* [n_moe_layers] */
} coh_row;

typedef struct {
    char *criterion;          /* "source", "perplexity", "router" */
    char *message;            /* lowercase, says what was measured */
} coh_failure;

typedef struct {
    char *model_path;
    int vocab, n_experts, top_k, n_moe_layers;
    int tok_vocab;            /* the tokenizer's (may differ from the model's) */
    char *mask;               /* the mask of the whole run, or NULL */
    char *plan_path;          /* the plan of the whole run, or NULL */
    int plan_layers;          /* MoE layers it lists */
    int compare_run;          /* rows[] filled: a plan was given */
    coh_row rows[COH_ROWS];
    /* (a) */
    int source_checked;
    char *source_path;
    int source_prompts;       /* prompts compared */
    int source_identical;     /* all logits bit for bit */
    int source_first_prompt;  /* first differing prompt (index), or -1 */
    int source_first_pos;     /* its first differing position, or -1 */
    double source_max_diff;   /* largest |difference| of a logit */
    /* (b) */
    char *text_path;
    int text_tokens;
    double nll, ppl, max_ppl;
    int ppl_ok;
    /* ablation: reference perplexity with the router masked to 0-7 */
    int ablation_run;         /* 0 when the model has <= 8 experts */
    double ablation_nll, ablation_ppl;
    /* (c) */
    int router_threshold;     /* a layer must use more experts than this
                               * (a layer the plan lists: its own
                               * coh_layer_usage.threshold) */
    int routed_tokens;        /* tokens fed while running the prompt set */
    int router_ok;
    coh_layer_usage *layers;  /* [n_moe_layers] */
    /* report */
    GPtrArray *prompts;       /* coh_prompt_result* in file order */
    GPtrArray *domains;       /* coh_domain_usage* in order of appearance */
    int n_expected, n_matching;
    int gen_tokens;           /* tokens per prompt the continuations had */
    int gen_limited;          /* 1: the default cut to 1 because the model
                               * (weights_bytes) is larger than the memory
                               * available (memory_bytes) */
    uint64_t weights_bytes;   /* the files the prompt batch read */
    uint64_t memory_bytes;    /* qm_memory_available(); 0: unknown */
    GPtrArray *failures;      /* coh_failure*; empty when the gate passes */
    double seconds;
    /* the process's peak resident memory when the gate ended (bounded by
     * the expert cache, the KV caches of the prompt set and its batch) */
    uint64_t peak_rss_bytes;
} coh_result;

/* The default bound of (b) for a vocabulary of `vocab` tokens. */
double coh_default_max_ppl(int vocab);

/* The number of experts a layer of n_experts must exceed for (c). */
int coh_router_threshold(int n_experts);

/* The (at most) n experts of w[0..ne) with the most weight, heaviest
 * first, into ids[] and their shares of the row's total into shares[];
 * experts with no weight are left out. Returns how many. */
int coh_top_experts(const double *w, int ne, int n, int *ids, double *shares);

/* Runs the gate on the model at `path` (an extracted OUT or a checkpoint
 * directory). Returns 0 with *out set (caller coh_result_free()s) when the
 * gate ran, whatever its verdict: criteria that fail are listed in
 * (*out)->failures. Returns -1 with *err set when it could not run:
 * QM_ERR_IO when the model, text, prompt set or source cannot be read;
 * QM_ERR_USAGE when the gate's own input is wrong (a malformed prompt set,
 * text that is not UTF-8 or has fewer than 2 tokens, an invalid mask, both
 * a mask and a plan); QM_ERR_FORMAT for a plan that does not fit the model
 * (expert_plan_load_model);
 * the model's error (QM_ERR_FORMAT ...) when it cannot be loaded or an
 * expert cannot be used during the forward pass. */
int coh_run(const char *path, const coh_opts *o, coh_result **out, GError **err);

void coh_result_free(coh_result *r);

/* All of the result as one JSON object (caller cJSON_Delete()s). */
cJSON *coh_result_to_json(const coh_result *r);

#endif
