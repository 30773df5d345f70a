/* routerstats.h - which experts the router picks for which content.
 *
 * A labelled corpus (JSON lines {"domain": "...", "text": "..."}) is run
 * through the model, each line its own sequence, and every top-k pick of
 * every token is counted per (MoE layer, domain, expert). From the counts,
 * per layer, over all picks (each token contributes top_k picks):
 *
 *   load       share of the layer's picks that went to each expert
 *   never      experts with no pick at all
 *   H(domain)  entropy of the domain of a pick, in bits
 *   MI         mutual information between the domain of a pick and the
 *              expert picked, in bits: sum p(d,e) log2(p(d,e) / p(d)p(e))
 *   NMI        MI / H(domain), in [0, 1] (0 when there is one domain):
 *              1 means the expert tells the domain
 *   purity     share of the picks that went to their expert's majority
 *              domain (sum over experts of max_d count(d,e), over picks)
 *   top        per domain the experts with the most picks, with their
 *              share of the domain's picks and their lift: that share
 *              divided by the expert's share of all the layer's picks
 *              (1 = no preference, 2 = twice as often as usual)
 *
 * The statistics are computed from the counts alone, so an independent
 * script over the router log gets the same figures
 * (tests/routerstats_check.py).
 */
#ifndef QMOE_ROUTERSTATS_H
#define QMOE_ROUTERSTATS_H

#include <cjson/cJSON.h>
#include <glib.h>
#include <stdint.h>

#include "model/model.h"
#include "text/tokenizer.h"

#define RS_MAX_DOMAINS 4096
#define RS_TOP 3               /* top experts per domain in texts and tables */

/* ---- the corpus ---- */

typedef struct {
    int line;                  /* 1-based line of the corpus file */
    int domain;                /* index into rs_corpus.domains */
    char *text;                /* valid UTF-8, not empty */
} rs_entry;

typedef struct {
    char *path;                /* for messages; may be NULL */
    GPtrArray *domains;        /* char*, in order of first appearance */
    GPtrArray *entries;        /* rs_entry*, in file order */
} rs_corpus;

/* An empty corpus (entries added with rs_corpus_add). */
rs_corpus *rs_corpus_new(const char *path);

/* Adds one entry; `line` is only used in messages and logs. Fails
 * (QM_ERR_USAGE) for an empty or invalid UTF-8 domain or text, or more
 * than RS_MAX_DOMAINS domains. */
int rs_corpus_add(rs_corpus *c, int line, const char *domain, const char *text,
                  GError **err);

/* Reads JSON lines {"domain": STRING, "text": STRING} (other members are
 * ignored, blank lines skipped). Errors name the file and line:
 * QM_ERR_IO when it cannot be read, QM_ERR_USAGE for a malformed line or
 * a corpus with no entry. */
rs_corpus *rs_corpus_load(const char *path, GError **err);

void rs_corpus_free(rs_corpus *c);   /* accepts NULL */

/* ---- the counts ---- */

typedef struct {
    int n_layers;              /* MoE layers */
    int *layer_ids;            /* [n_layers] the model's layer index */
    int n_experts, top_k;
    int n_domains;
    char **domains;            /* [n_domains] */
    uint64_t *counts;          /* [n_layers x n_domains x n_experts] picks */
    uint64_t *domain_tokens;   /* [n_domains] tokens routed */
    int *domain_lines;         /* [n_domains] corpus entries */
    uint64_t tokens;           /* tokens routed in all */
    int sequences;             /* sequences run (an entry longer than the
                                * context is several) */
    char *mask;                /* the router mask (LIST), or NULL: free */
    char *model_path, *corpus_path; /* or NULL */
    double seconds;            /* time spent running the corpus */
} rs_stats;

/* Empty counts for the MoE layers of a model config, and the corpus's
 * domains (copied). */
rs_stats *rs_stats_new(const model_config *mc, const rs_corpus *c);

void rs_stats_free(rs_stats *s);     /* accepts NULL */

/* Counts one token's picks in MoE layer index li (0..n_layers) for domain
 * d; experts outside [0, n_experts) are ignored. */
void rs_stats_add(rs_stats *s, int li, int d, int k, const int *experts);

/* picks of (li, d, e) */
static inline uint64_t rs_count(const rs_stats *s, int li, int d, int e)
{
    return s->counts[((size_t)li * s->n_domains + d) * s->n_experts + e];
}

/* Picks of expert e in layer li over all domains, and of domain d over all
 * experts (the marginals of rs_count). */
uint64_t rs_expert_total(const rs_stats *s, int li, int e);
uint64_t rs_domain_total(const rs_stats *s, int li, int d);

/* ---- running the corpus ---- */

/* Also told of every pick, with the corpus line (e.g. to write a log) and
 * the chosen experts' output norms (model_router_fn). */
typedef void (*rs_observer)(void *user, int line, int pos, int token, int layer, int k,
                            const int *experts, const float *weights,
                            const float *out_norms);

/* Runs every entry of c through m (tokenized with tok, no BOS; each entry
 * its own sequence from position 0, cut into windows of the model's
 * max_seq when longer) and counts the picks into s. The model's router
 * log hook is used during the call and cleared after. Fails with the
 * tokenizer's or the model's error, prefixed with the corpus line. */
int rs_collect(model *m, tok_t *tok, const rs_corpus *c, rs_stats *s, rs_observer obs,
               void *obs_user, GError **err);

/* The most tokens of one entry (tok_encode, no BOS) into *max: the
 * KV cache a run needs (capped at RS_MAX_CONTEXT by the caller). */
int rs_corpus_max_tokens(tok_t *tok, const rs_corpus *c, int *max, GError **err);

#define RS_MAX_CONTEXT 4096     /* longer entries are cut into windows */

/* Loads the model at path (and its tokenizer), restricts the router to
 * mask (a LIST, or NULL), runs the corpus and returns new counts (caller
 * rs_stats_free()s), or NULL with *err set. */
rs_stats *rs_run(const char *path, const rs_corpus *c, const char *mask, int n_threads,
                 GError **err);

/* ---- statistics ---- */

typedef struct {
    uint64_t picks;
    int used;                  /* experts picked at least once */
    double h_domain;           /* bits */
    double mi;                 /* bits */
    double nmi;                /* mi / h_domain, 0 when h_domain is 0 */
    double purity;             /* 0 when there is no pick */
} rs_layer_summary;

void rs_summarise(const rs_stats *s, int li, rs_layer_summary *out);

/* Share of layer li's picks that went to expert e (0 without picks). */
double rs_load(const rs_stats *s, int li, int e);

/* Lift of expert e for domain d in layer li: its share of d's picks over
 * its share of all picks; 0 when the expert is never picked or the domain
 * has no picks. */
double rs_lift(const rs_stats *s, int li, int d, int e);

typedef struct {
    int expert;
    uint64_t count;
    double share;              /* of the domain's picks in the layer */
    double lift;
} rs_top_entry;

/* The (at most) n experts with the most picks of domain d in layer li,
 * most first (lower id on ties), experts with no pick left out. Returns
 * how many. */
int rs_top(const rs_stats *s, int li, int d, int n, rs_top_entry *out);

/* Everything as one JSON object (caller cJSON_Delete()s): the corpus and
 * domains, and per layer load, never chosen, MI, NMI, purity, the counts
 * and the top n_top experts per domain. */
cJSON *rs_stats_to_json(const rs_stats *s, int n_top);

#endif
