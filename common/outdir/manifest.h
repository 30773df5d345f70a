/* manifest.h - what an extraction wrote: qmoe.json and .qmoe/journal.jsonl.
 *
 * Each finished output file is one record: its path relative to OUT, kind,
 * (layer, expert), size, SHA-256, and per tensor name, dtype, shape, data
 * offsets, CRC-32 and where it came from in the source. The extractor
 * appends one JSON line per record to the journal once the file is durable
 * under its final name (a batch of files at a time, then one fsync), so a
 * crash loses at most the batch being committed.
 * qmoe.json is the journal(s) merged, plus the source, the layout and the
 * expected set, rewritten atomically.
 *
 * JSON record (one journal line, and each element of qmoe.json "files"):
 *   {"path":"experts/expert_003_layer_05.safetensors","kind":"expert",
 *    "layer":5,"expert":3,"size":9437336,"sha256":"<64 hex>","time":1764197000.5,
 *    "tensors":[{"name":"...","dtype":"BF16","shape":[768,2048],
 *                "offsets":[0,3145728],"crc32":305419896,
 *                "source":{"file":"model-00003-of-00015.safetensors",
 *                          "tensor":"...","offset":123456,"slice":-1}}]}
 * "kind" is expert, layer, globals or other; layer/expert are -1 where
 * they do not apply; "source.offset" is the absolute byte offset in the
 * source file; "slice" >= 0 for a fused tensor's expert slice.
 *
 * qmoe.json:
 *   {"tool":"qmoe","version":"0.1.0","created":"...","complete":true,
 *    "source":{"path":"...","files":[{"name":"...","size":N}],"bytes":N},
 *    "layout":"qwen3_omni_moe","model_type":"qwen3_omni_moe",
 *    "expected":{"num_layers":48,"num_experts":128,"moe_layers":"0-47",
 *                "layers":"0-47","experts":"0-127","count":6144,
 *                "files":6200,"bytes":N,"partial":false},
 *               ("no_other":true after --no-other: other/ is not expected)
 *    "shards":N, "files":[record...]}
 * Added fields (absent in older files): each record's "source_id" and
 * "source":{"id":...,"identity":{...}} (outdir.h, source identity), and
 * "expected":{"missing_from_source":"layers 0-2: experts 16-31 missing ...",
 * "missing_count":48} when --allow-missing kept a gap; "expected":{"mtp_layers":1}
 * and "mtp_count":16 when the checkpoint has a multi-token-prediction block
 * (DeepSeek-V3's num_nextn_predict_layers): num_layers stays the decoder's,
 * the MTP layers are the indices num_layers ... num_layers + mtp_layers - 1,
 * moe_layers, layers, count and the files include them, and mtp_count says
 * how many of count are theirs.
 */
#ifndef QMOE_MANIFEST_H
#define QMOE_MANIFEST_H

#include <cjson/cJSON.h>
#include <glib.h>
#include <stdint.h>

#include "format/checkpoint.h"
#include "format/safetensors.h"

typedef enum { MF_EXPERT, MF_LAYER, MF_GLOBALS, MF_OTHER } mf_kind;

/* An output tensor as the plan (plan_tensor) and the manifest (mf_tensor)
 * both describe it: name, type and shape, and where in the source its
 * bytes are. The fields are declared once, here; each of the two types
 * holds them both as a member `desc` (an mf_desc, to pass or copy whole)
 * and, through an anonymous union, under their own names (t->name). */
#define MF_DESC_FIELDS                                                        \
    char *name;            /* output tensor name (source name, or a slice's) */ \
    st_dtype dtype;                                                           \
    int ndim;                                                                 \
    int64_t shape[ST_MAX_DIMS];                                               \
    char *src_name;        /* source tensor name */                           \
    uint64_t src_offset;   /* absolute byte offset of the bytes in the source file */ \
    int slice;             /* expert index of a fused slice, else -1 */

typedef struct {
    MF_DESC_FIELDS
} mf_desc;

/* Copies a descriptor, strings included (free with mf_desc_clear). */
void mf_desc_copy(mf_desc *to, const mf_desc *from);
void mf_desc_clear(mf_desc *d);

typedef struct {
    union {
        mf_desc desc;
        struct { MF_DESC_FIELDS };
    };
    uint64_t begin, end;   /* offsets within the output file's data section */
    uint32_t crc32;
    char *src_file;        /* source file name (relative to the source dir) */
} mf_tensor;

typedef struct {
    char *path;            /* relative to OUT */
    mf_kind kind;
    int layer, expert;     /* -1 where not applicable */
    uint64_t size;
    char sha256[65];
    double time;           /* when it was finished (seconds since epoch) */
    char source_id[17];    /* outdir.h source identity it was read from, or "" */
    int n_tensors;
    mf_tensor *tensors;
} mf_file;

typedef struct {
    char *version;
    char *created;
    int complete;
    char *source_path;
    int n_source_files;
    char **source_names;
    uint64_t *source_sizes;
    uint64_t source_bytes;
    char *source_id;       /* outdir.h identity digest, or "" (older qmoe) */
    cJSON *source_identity;/* .qmoe/source.json as written into "source", or NULL */
    char *layout;
    char *model_type;
    int num_layers, num_experts; /* num_layers: the decoder's (num_hidden_layers) */
    int mtp_layers;        /* MTP layers after them (layer indices num_layers...) */
    int mtp_count;         /* of expected_count, the MTP layers' expert files */
    char *moe_layers, *layers, *experts; /* lists such as "0-47" */
    int expected_count;    /* expert files expected */
    int expected_files;    /* all files expected */
    uint64_t expected_bytes;
    int partial;
    int no_other;          /* --no-other: other/ not extracted, not expected */
    char *missing_from_source; /* od_plan_gap text ("" none), --allow-missing */
    int missing_count;     /* (layer, expert) files the source lacks */
    int shards;            /* number of --shard parts (1 when unsharded) */
    int n_files;
    mf_file *files;        /* sorted by path */
} manifest;

const char *mf_kind_name(mf_kind k);

/* Record <-> JSON. mf_file_from_json fills *f (free with mf_file_clear);
 * errors name `where` (a file and line). */
cJSON *mf_file_to_json(const mf_file *f);
int mf_file_from_json(const cJSON *j, mf_file *f, const char *where, GError **err);
void mf_file_clear(mf_file *f);

/* Appends to s exactly what cJSON_PrintUnformatted(mf_file_to_json(f))
 * gives, without building the objects (the journal's lines). */
void mf_file_append_json(GString *s, const mf_file *f);

/* Appends one record as a line to an open journal (O_APPEND fd). The write
 * is a single write() so that concurrent appenders do not interleave; a
 * short write (disk full) is cut off again and reported. */
int mf_journal_append(int fd, const char *journal_path, const mf_file *f,
                      GError **err);

/* Appends n records (a group commit's batch) in one write(); on a short
 * write none of them stays. The caller fsyncs. */
int mf_journal_append_n(int fd, const char *journal_path, const mf_file *f, int n,
                        GError **err);

/* Opens a journal for appending (creating it), first cutting off a torn
 * last line (no newline: a crash or a full disk mid-write) so that the
 * next record starts on a line of its own. For the journal's only writer.
 * Returns the fd or -1 with *err set. */
int mf_journal_open(const char *path, GError **err);

/* Reads a journal into `files` (GArray of mf_file, appended; later records
 * for the same path replace earlier ones). A torn last line (no newline,
 * from a crash mid-write) is ignored; any other bad line is an error. A
 * missing journal is not an error. */
int mf_journal_read(const char *path, GArray *files, GError **err);

/* Reads every journal of OUT: .qmoe/journal.jsonl and the per-shard ones
 * .qmoe/shard-I-of-N/journal.jsonl, merged, sorted by path. */
int mf_journals_read_all(const char *out, GArray *files, GError **err);

/* 1 when OUT holds a journal of a --shard part (of this run or an
 * earlier one): then only all journals together say what is in place. */
int mf_journals_has_parts(const char *out);

/* qmoe.json */
manifest *manifest_load(const char *path, GError **err);
int manifest_save(const manifest *m, const char *path, GError **err);
void manifest_free(manifest *m);

/* When ck (just opened, ckpt_open) is a complete qmoe OUT, gives each
 * shard the header its OUT_DIR/qmoe.json record describes
 * (ckpt_shard_describe) instead of reading 6197 files: the file is opened
 * when its data is wanted and refused there if it changed since. Only when
 * qmoe.json says complete, parses as qmoe writes it, and has a valid
 * record for every file the index names, each of which the directory
 * lists as a regular file; otherwise, or for a record that disagrees
 * with the index, the files are read as before (not an error: the files
 * are the truth). Reads qmoe.json only (one scan, no cJSON tree). Returns
 * how many shards were described. */
int mf_ckpt_describe(ckpt *ck);

/* Record for a path, or NULL (binary search; files sorted by path). */
const mf_file *manifest_find(const manifest *m, const char *path);

/* Sorts a GArray of mf_file by path and drops earlier duplicates. */
void mf_files_sort_unique(GArray *files);

/* Clears every record of a GArray of mf_file and frees it; accepts NULL. */
void mf_files_free(GArray *files);

#endif
