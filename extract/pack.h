/* pack.h - qmoe-pack: a standard Hugging Face checkpoint from a checkpoint
 * or an extracted OUT, optionally with fewer experts (an expert plan) or as
 * the Qwen3-Omni thinker's text model alone (Qwen3MoeForCausalLM).
 *
 * pk_job_build decides everything before a byte is written: which source
 * tensors go out under which names, each as a list of byte ranges of the
 * source (a whole tensor is one range; a router or a stack of experts
 * sliced to the plan is one range per kept row or expert, in plan order),
 * the shards (at most max_shard bytes of data each, in tensor order) and
 * the config. Bad plans and unsupported sources fail here, so that a
 * refusal leaves DEST untouched. pk_job_write then streams the ranges
 * (bounded buffers, reflinks where the filesystem shares blocks), every
 * file through a temporary that is renamed into place once complete.
 */
#ifndef QMOE_PACK_H
#define QMOE_PACK_H

#include <cjson/cJSON.h>
#include <glib.h>
#include <stdint.h>

#include "format/checkpoint.h"
#include "format/layout.h"
#include "format/safetensors.h"
#include "analysis/expert_plan.h"

/* Hugging Face's default max_shard_size ("5GB", decimal). */
#define PK_MAX_SHARD 5000000000ULL

typedef struct {
    int shard;      /* source shard (ck->shards index) */
    uint64_t off;   /* byte offset in that file */
    uint64_t len;
} pk_range;

typedef struct {
    char *name;          /* name in the packed checkpoint */
    const char *src;     /* source tensor name (owned by the checkpoint) */
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    int n_ranges;
    pk_range *ranges;    /* the bytes, in order */
    int file;            /* output shard */
} pk_tensor;

typedef struct {
    char *name;          /* "model-00001-of-00003.safetensors" */
    int first, n;        /* tensors[first .. first + n - 1] */
    uint64_t data_bytes;
    uint64_t size;       /* whole file, once written */
    char sha256[65];     /* once written */
} pk_file;

typedef struct {
    char *name;          /* in DEST */
    char *src;           /* path in SRC, NULL for files made here */
    GByteArray *data;    /* made here (config.json), else NULL */
    uint64_t size;
    char sha256[65];
} pk_extra;

typedef struct {
    const char *src_path;
    ckpt *ck;
    const layout *lt;
    lt_shape shape;
    int as_qwen3;        /* --as qwen3_moe */
    expert_plan *plan;   /* --keep-experts, or NULL */
    char *plan_path;
    int n_keep;          /* experts per layer kept (n_experts without a plan) */
    int drop_mtp;        /* the plan lists no layer of the MTP block: its
                          * tensors are left out, num_nextn_predict_layers 0
                          * (expert_plan_mtp_listed) */
    int top_k, top_k_out;/* num_experts_per_tok before and after */
    int n_tensors;
    pk_tensor *tensors;
    int n_files;
    pk_file *files;
    int n_extra;
    pk_extra *extra;     /* config.json, generation config, tokenizer files */
    uint64_t total_size; /* bytes of tensor data (the index's metadata.total_size) */
    uint64_t src_tensors;/* tensors in the source */
} pk_job;

typedef struct {
    int as_qwen3;
    const char *plan_path;    /* NULL: every expert */
    uint64_t max_shard;       /* 0: PK_MAX_SHARD */
} pk_opts;

/* Opens SRC and plans the job (nothing written). A plan that lists no
 * layer of DeepSeek-V3's multi-token-prediction block drops the block
 * (drop_mtp): router statistics never see it, the forward pass of
 * transformers does not run it, and a config with num_nextn_predict_layers
 * 0 describes what is left. Errors name the file and
 * the problem: a bad plan (QM_ERR_FORMAT, the entry named), --as qwen3_moe
 * of a source that is not Qwen3-Omni (QM_ERR_USAGE), an extraction of a
 * stacked-expert checkpoint (QM_ERR_USAGE: pack its source). */
pk_job *pk_job_build(const char *src, const pk_opts *o, GError **err);
void pk_job_free(pk_job *j);

/* Bytes the job writes (shards with headers, index, other files). */
uint64_t pk_job_bytes(const pk_job *j);

typedef struct {
    int jobs;            /* writer threads (>= 1) */
    int progress;        /* redraw a progress line on stderr */
    int no_reflink;
    volatile int *stop;  /* set by a signal: stop, remove what was written */
} pk_write_opts;

/* Writes the job into `dest` (absent, or an empty directory: anything else
 * is refused). On any failure or a stop, every file this call put in DEST
 * is removed again (and DEST if it made it). *shared gets the bytes shared
 * by reflink. */
int pk_job_write(pk_job *j, const char *dest, const pk_write_opts *o,
                 uint64_t *shared, GError **err);

/* The index (weight_map, metadata.total_size) and the record
 * qmoe-pack.json (plan, original ids, each file's size and SHA-256; files
 * must have been written). Caller deletes. */
cJSON *pk_index_json(const pk_job *j);
/* Adds "mtp": {layers_before, layers_after, dropped} to doc. */
void pk_mtp_json(const pk_job *j, cJSON *doc);
cJSON *pk_record_json(const pk_job *j);

#endif
