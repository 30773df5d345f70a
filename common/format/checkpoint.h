/* checkpoint.h - a Hugging Face checkpoint: config, index, shards.
 *
 * A checkpoint is a directory with config.json and either
 * model.safetensors.index.json (weight_map: tensor name -> file) plus the
 * files it names, or a single model.safetensors; or a path to one
 * .safetensors file. An extracted qmoe OUT is itself such a directory (its
 * index maps into experts/, layers/, ...), so everything that reads a
 * checkpoint reads an extraction the same way.
 *
 * Everything is driven by the weight map: a layer may span several shards.
 * Shard headers are read lazily, on first use, so that opening a
 * checkpoint of 6144 files costs one index parse and a missing file is
 * reported when (and only when) one of its tensors is wanted. Loading
 * every shard costs one pass over the names (each shard checks its own
 * list).
 *
 * A shard's header may also be described rather than read
 * (ckpt_shard_describe: an OUT's qmoe.json records every file's tensors,
 * and reading that one file instead of 6197 headers opens an OUT about as
 * fast as its source; outdir.h od_ckpt_describe). The file is then first
 * opened when its data is wanted: a mapping (ckpt_shard_load, map = 1) or
 * ckpt_shard_confirm compare the real header with the description and
 * refuse a file that changed since, so a description never yields wrong
 * data.
 */
#ifndef QMOE_CHECKPOINT_H
#define QMOE_CHECKPOINT_H

#include <cjson/cJSON.h>
#include <glib.h>
#include <stdint.h>

#include "format/safetensors.h"

typedef struct {
    char *name;   /* as written in the index, relative to dir */
    char *path;   /* dir/name */
    st_file *st;  /* NULL until loaded (ckpt_shard_load) */
    int mapped;   /* st maps the data (1) or holds the header only (0) */
    int checked;  /* both ways against the index (ckpt_shard_need) */
    char *missing;/* set when a load found the file absent or a dangling
                     symlink (a download in progress): strerror(ENOENT),
                     or "a symlink to 'T', which does not exist" */
    st_file *retired; /* header-only st replaced by a mapping; kept so that
                         pointers handed out earlier stay valid */
    st_file *desc;/* the header ckpt_shard_describe was told, until the
                     shard is loaded (then it becomes st) */
    int described;/* st is that description, not yet compared with the
                     file (ckpt_shard_confirm) */
    int n_names;
    char **names; /* the tensor names the index puts in this file, sorted;
                     they point into ckpt.names (not owned) */
} ckpt_shard;

typedef struct {
    char *dir;               /* directory holding the files */
    struct fs_dir *dir_h;    /* dir held open for its many shards (base/fs.h),
                                or NULL: shards open by path */
    cJSON *config;           /* config.json, or NULL when absent */
    cJSON *generation_config;/* generation_config.json, or NULL */
    char *model_type;        /* config.json "model_type", or NULL */
    char *resolved;          /* how a hub cache folder was resolved (a sentence
                                for the user), or NULL */
    int n_shards;
    ckpt_shard *shards;      /* sorted by name */
    int n_names;
    char **names;            /* every tensor name, sorted (strcmp) */
    GHashTable *shard_of;    /* name -> GINT_TO_POINTER(shard index + 1) */
    char *described_by;      /* where described headers came from ("qmoe.json"),
                                or NULL (ckpt_shard_describe) */
    GMutex lock;             /* guards lazy loading */
    uint64_t name_checks;    /* index names looked up in shard headers so far:
                                one per name once every shard is loaded (a
                                test hook: opening stays linear) */
} ckpt;

/* Opens a checkpoint directory or a single .safetensors file. A Hugging
 * Face hub cache folder (models--ORG--NAME) opens the snapshot refs/main
 * names, else the only one (ck->dir is the snapshot; ck->resolved says
 * so). A .safetensors file that is one shard of a sharded checkpoint (the
 * index beside it lists others) is refused (QM_ERR_USAGE). Reads
 * config.json (required for a directory that has an index; optional
 * otherwise) and the index; a single-file checkpoint's header is read
 * now. Errors name the path and problem (QM_ERR_IO for missing files,
 * QM_ERR_FORMAT for malformed ones). */
ckpt *ckpt_open(const char *path, GError **err);

/* The directory or file ckpt_open opens for `path`: a hub cache folder's
 * snapshot (with *note a sentence saying which, caller frees), else a copy
 * of path (*note NULL). For tools that read other files of the checkpoint
 * (the tokenizer) before or without opening it. NULL with *err set when a
 * hub cache folder cannot be resolved. Caller frees. */
char *ckpt_resolve(const char *path, char **note, GError **err);

/* Frees everything, unmapping shards; accepts NULL. */
void ckpt_close(ckpt *ck);

/* Index of the shard holding `name`, or -1. */
int ckpt_shard_index(const ckpt *ck, const char *name);

/* Loads shard i: header only (map = 0) or mapped with data (map = 1). A
 * header-only shard is upgraded when map is later asked for (a described
 * one is then compared with the file, as ckpt_shard_confirm). Checks that
 * every tensor the index assigns to it is present. Thread-safe. Returns
 * the st_file (owned by ck) or NULL with *err set. */
st_file *ckpt_shard_load(ckpt *ck, int i, int map, GError **err);

/* Gives shard i the header `st` (st_describe; ck takes it, also on
 * failure) instead of reading it from the file, which is then opened only
 * when its data is wanted. The shard still counts as not loaded (st NULL:
 * callers tell the shards a plan reads by that) until ckpt_shard_load
 * asks for it, which then takes the description without reading. `by` says where the description came from, for
 * messages ("qmoe.json"). The shard must not be loaded yet; st must hold
 * every tensor the index assigns to it. Returns 0, or -1 with *err set. */
int ckpt_shard_describe(ckpt *ck, int i, st_file *st, const char *by, GError **err);

/* Before reading shard i's data other than through ckpt_shard_load's
 * mapping (pread on a path of its own): a described header is compared
 * with the file's, once. A file that is missing, unreadable or differs
 * (another size, a tensor's dtype, shape or offsets) is an error naming
 * it and the difference. 0 at once for a header read from the file.
 * Thread-safe. */
int ckpt_shard_confirm(ckpt *ck, int i, GError **err);

/* The header of shard i for a plan: ckpt_shard_load (map = 0) and, once,
 * the reverse check (every tensor in the file is in the index there). A
 * file that is absent or a dangling symlink sets ck->shards[i].missing
 * (the caller may go on without it: the tensors it holds are then known
 * by name only); any failure returns NULL with *err set. */
st_file *ckpt_shard_need(ckpt *ck, int i, GError **err);

/* Loads every shard header (map = 0) and checks that the index and the
 * files agree both ways (a tensor in a file but not in the index is an
 * error too). Used by extraction and verification. */
int ckpt_load_all(ckpt *ck, GError **err);

/* Finds a tensor, loading (and with map = 1 mapping) its shard. *data is
 * set to its bytes when map = 1. Returns NULL with *err set when the name
 * is unknown or its shard cannot be read. */
const st_tensor *ckpt_tensor(ckpt *ck, const char *name, int map,
                             const uint8_t **data, GError **err);

/* The text model's config: thinker_config.text_config for Qwen3-Omni,
 * text_config where present, else the top level. NULL if no config. */
const cJSON *ckpt_text_config(const ckpt *ck);

/* The sizes of the files whose headers were loaded so far, summed: after
 * a forward pass, the bytes of the files it read from (a shard counts
 * whole). Thread-safe. */
uint64_t ckpt_loaded_bytes(ckpt *ck);

#endif
