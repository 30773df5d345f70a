/* mksample_like.h - qmoe-mksample --like: replicas of real checkpoints.
 *
 * A replica has the real release's tensor names, shapes, dtypes, shard
 * files (names, sizes, which tensor in which shard, offsets), index and
 * config.json, but its tensor data is a hole (reads as zeros, takes no
 * disk) except where a --fill option asks for a deterministic pattern. It
 * lets the extractor, the status and the verifier be tried on the real
 * layout (28,010 tensors, 70.5 GB for Qwen3-Omni) in seconds. The facts
 * live as tables in mksample_like.c; each preset says where they come
 * from and which of them are not checked against the release.
 */
#ifndef QMOE_MKSAMPLE_LIKE_H
#define QMOE_MKSAMPLE_LIKE_H

#include <glib.h>
#include <stdint.h>

typedef struct {
    const char *fill_layers; /* LIST of decoder layers to fill, or NULL */
    int fill_routers;        /* routers and norms of every decoder layer */
    int fill_globals;        /* embeddings, lm_head, final norm */
    const char *tokenizer;   /* directory with tokenizer.json[.gz] and
                              * tokenizer_config.json, or NULL: no tokenizer */
    int hf_cache;            /* write the Hugging Face hub cache layout */
} like_opts;

typedef struct {
    int tensors, shards;
    uint64_t logical_bytes; /* the shard files' sizes */
    uint64_t filled_bytes;  /* of which patterns (the rest are holes) */
    char *where;            /* the checkpoint directory written (a snapshot
                             * with hf_cache); the caller g_free()s */
} like_stats;

/* The preset names, comma-separated, for messages. */
const char *like_names(void);

/* 1 if `name` is a preset. */
int like_known(const char *name);

/* Writes the replica `name` into `out` (which the caller has made and
 * checked empty). Returns 0, or -1 with *err naming the file and the
 * problem (a bad --fill-layers list is QM_ERR_USAGE). */
int like_write(const char *out, const char *name, const like_opts *o, like_stats *st,
               GError **err);

#endif
