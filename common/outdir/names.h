/* names.h - every file and folder name in OUT, formatted and parsed here
 * only (DESIGN.md):
 *
 *   experts/expert_EEE_layer_LL.safetensors   EEE, LL zero-padded to the
 *                                             plan's widths (plan_width)
 *   layers/layer_LL.safetensors
 *   globals.safetensors
 *   other/PREFIX.safetensors, other/PREFIX-PP.safetensors (a split group)
 *   qmoe.json, model.safetensors.index.json, config.json
 *   .qmoe/                    the state directory of a whole run
 *   .qmoe/shard-I-of-N/       the state directory of part I of a --shard
 *                             I/N run: 0 <= I < N, 2 <= N, decimal digits
 *                             without leading zeros (what od_part_dir
 *                             writes, and nothing else)
 *   each state directory: journal.jsonl, progress.json, lock
 *   .qmoe/source.json, .qmoe/manifest.lock, .qmoe/extract.log
 *
 * A parser accepts exactly what its formatter writes, so that a stray
 * ".qmoe/shard-3-of-2" or "expert_1_layer_02" is not taken for qmoe's.
 */
#ifndef QMOE_OUTDIR_NAMES_H
#define QMOE_OUTDIR_NAMES_H

#include <stddef.h>

#include "outdir/manifest.h"

/* Fixed names, relative to OUT unless said. */
#define OD_MANIFEST "qmoe.json"
#define OD_INDEX "model.safetensors.index.json"
#define OD_CONFIG "config.json"
#define OD_GLOBALS "globals.safetensors"
#define OD_STATE ".qmoe"
#define OD_SOURCE_JSON OD_STATE "/source.json"
#define OD_MANIFEST_LOCK OD_STATE "/manifest.lock"
#define OD_LOG OD_STATE "/extract.log"
/* In every state directory. */
#define OD_JOURNAL "journal.jsonl"
#define OD_PROGRESS "progress.json"
#define OD_LOCK "lock"

/* "experts", "layers", "other", NULL: the subdirectories of output files. */
extern const char *const od_subdirs[];

/* "experts/expert_EEE_layer_LL.safetensors". Caller frees. */
char *od_expert_path(int width_e, int expert, int width_l, int layer);
/* The same into buf, without printf's padding: the view checks thousands
 * of names per snapshot. */
void od_expert_path_buf(char *buf, size_t cap, int width_e, int expert, int width_l,
                        int layer);
/* "layers/layer_LL.safetensors". Caller frees. */
char *od_layer_path(int width_l, int layer);
/* "other/PREFIX.safetensors", or with part > 0 "other/PREFIX-PP.safetensors";
 * part < 0: "other/PREFIX", the group's name (a key, not a file). Caller
 * frees. */
char *od_other_path(const char *prefix, int part);

/* Whether path is a file of the other/ group named by od_other_path(PREFIX,
 * -1): its whole file or one of its parts. */
int od_other_in_group(const char *group, const char *path);

/* Parses an expert file name, with or without "experts/": 0 and the
 * indices, or -1 when it is not one (any padding accepted; od_classify
 * says whether it is canonical). */
int od_parse_expert(const char *name, int *expert, int *layer);

/* What a path relative to OUT names, from the path alone. */
typedef struct {
    mf_kind kind;   /* MF_OTHER for anything not an expert, layer or globals file */
    int layer, expert; /* -1 when not in the name */
    int canonical;  /* a name qmoe writes with these widths (padding included) */
} od_name;
void od_classify(const char *path, int width_e, int width_l, od_name *n);

/* "shard-I-of-N", the name of part I of N's state directory inside .qmoe.
 * Caller frees. */
char *od_part_dir(int shard, int shards);
/* 0 with I and N when name (an entry of .qmoe) is what od_part_dir writes
 * for some 0 <= I < N, N >= 2; else -1. */
int od_parse_part_dir(const char *name, int *shard, int *shards);
/* A state directory relative to OUT: ".qmoe" when shards <= 1, else
 * ".qmoe/shard-I-of-N". Caller frees. */
char *od_state_dir(int shard, int shards);
/* The inverse: 0 with (0, 1) for ".qmoe", (I, N) for a part directory;
 * -1 for anything else. */
int od_parse_state_dir(const char *rel, int *shard, int *shards);

#endif
