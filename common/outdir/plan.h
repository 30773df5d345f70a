/* plan.h - which output files an extraction writes, and from which bytes.
 *
 * The plan is a pure function of the checkpoint, the layout and the
 * selection (--layers, --experts): the same on every machine, so that
 * --shard I/N processes agree on who writes what, and so that qmoe-verify
 * can recompute the expected set.
 *
 * Output names (DESIGN.md):
 *   experts/expert_EEE_layer_LL.safetensors   routed expert E of layer L
 *   layers/layer_LL.safetensors               the rest of layer L
 *   globals.safetensors                       embeddings, final norm, lm_head
 *   other/PREFIX.safetensors                  outside the text model; split
 *                                             into PREFIX-NN parts when large
 * EEE and LL are zero-padded to the width of the largest index.
 */
#ifndef QMOE_PLAN_H
#define QMOE_PLAN_H

#include <glib.h>
#include <stdint.h>

#include "format/checkpoint.h"
#include "format/layout.h"
#include "outdir/manifest.h"

typedef struct {
    union {                /* name, dtype, shape, source range (manifest.h) */
        mf_desc desc;
        struct { MF_DESC_FIELDS };
    };
    int shard;             /* source shard index in the ckpt */
    uint64_t nbytes;
} plan_tensor;

typedef struct {
    char *path;            /* relative to OUT */
    mf_kind kind;
    int layer, expert;
    int n;
    plan_tensor *t;        /* in output order (sorted by name) */
    uint64_t bytes;        /* tensor bytes (excluding the header) */
    int part;              /* --shard part this file belongs to */
} plan_file;

/* A file of the selection that cannot be planned because a source shard
 * it needs is missing (ckpt_shard.missing: a download in progress): its
 * tensors are known by name only, so neither its size nor, for other/,
 * its split into parts. */
typedef struct {
    char *path;            /* relative to OUT; for other/ "other/PREFIX",
                              standing for all its parts */
    mf_kind kind;
    int layer, expert;     /* -1 when not a layer's or an expert's */
    int shard;             /* the (first) missing shard it needs */
} plan_blocked;

typedef struct {
    const layout *lt;
    lt_shape shape;
    uint8_t *layer_sel;    /* [shape.n_layers] selected layers */
    uint8_t *expert_sel;   /* [shape.n_experts] selected experts */
    int partial;           /* a selection narrower than everything */
    int no_other;          /* --no-other: other/ left out of the plan */
    int n_files;
    plan_file *files;      /* in source order (sequential reads) */
    int expected_experts;  /* expert files in the plan */
    uint64_t total_bytes;
    int width_e, width_l;  /* zero padding of EEE and LL */
    int n_blocked;
    plan_blocked *blocked; /* files left out for a missing shard, by path */
} plan;

/* Maximum bytes of one other/ part before it is split. */
#define PLAN_OTHER_PART_BYTES (2ULL << 30)

/* Builds the plan. Loads the headers of the shards that hold a tensor of
 * the selection (ckpt_shard_need), and only those: a shard that is missing
 * (absent, or a dangling symlink) blocks only the files that need it,
 * listed in p->blocked and left out of files[] (the caller decides whether
 * that is an error); any other failure to read a shard is an error. `layers`/`experts` are
 * LIST strings or NULL for all. Errors: a selection out of range, an
 * expert tensor whose layer or expert index is beyond the config's counts
 * ("config says 16 experts but tensor '...' is expert 17"). */
plan *plan_build(ckpt *ck, const layout *lt, const char *layers,
                 const char *experts, GError **err);
/* plan_build with other/ (the tensors outside the text model) left out
 * when no_other (--no-other); globals and layer files stay. */
plan *plan_build_sel(ckpt *ck, const layout *lt, const char *layers,
                     const char *experts, int no_other, GError **err);
void plan_free(plan *p);

/* Whether blocked entry b stands for output file `path` (for other/, any
 * part of its prefix). */
int plan_blocked_covers(const plan_blocked *b, const char *path);

/* Assigns every file a part in [0, n): greedy by bytes, largest first,
 * ties broken by path, so parts are balanced and deterministic. */
void plan_partition(plan *p, int n);

/* Zero-padding width for indices 0..count-1: the digits of count-1, at
 * least 2 (3 for 128 experts, 2 for 48 layers). */
int plan_width(int count);

/* Relative output path of expert E of layer L. Caller frees. */
char *plan_expert_path(const plan *p, int layer, int expert);

/* model.safetensors.index.json for the files of the plan that are listed
 * in `done` (NULL: all): {"metadata":{"total_size":N},"weight_map":{...}}.
 * Caller frees with g_free. */
char *plan_index_json(const plan *p, const uint8_t *done);

/* Fills the expected-set fields of a manifest from the plan. */
void plan_describe(const plan *p, const ckpt *ck, const char *src_path,
                   manifest *m);

#endif
