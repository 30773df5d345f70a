/* mksample.h - pieces of qmoe-mksample: the model plan and the JSON files.
 *
 * A sample is planned first (every tensor's name, dtype, shape and how its
 * values are drawn) and then streamed shard by shard, so that nothing but
 * the plan is ever held in memory. Values depend only on the seed and the
 * tensor's name, never on the order or the sharding.
 */
#ifndef QMOE_MKSAMPLE_H
#define QMOE_MKSAMPLE_H

#include <cjson/cJSON.h>
#include <glib.h>
#include <stdint.h>

#include "format/layout.h"
#include "format/safetensors.h"

typedef struct {
    const layout *lt;
    int layers, experts, hidden, inter, vocab;
    int heads, kv_heads, head_dim, topk;
    int n_dense;       /* leading dense layers (deepseek_v3 first_k_dense_replace) */
    uint64_t seed;
    st_dtype dtype;    /* ST_BF16, ST_F16 or ST_F32 */
    /* --fp8: linear weights in F8_E4M3 with a `weight_scale_inv` per
     * fp8_block[0] x fp8_block[1] block in fp8_scale (ST_F32 or ST_BF16);
     * embeddings, norms, routers and lm_head stay in dtype */
    int fp8;
    int fp8_block[2];
    st_dtype fp8_scale;
    int yarn;          /* --rope yarn: rope_scaling as the family's release writes it */
} ms_opts;

typedef enum {
    MS_WEIGHT, /* centred, std about 0.02 */
    MS_NORM,   /* about 1.0 (RMSNorm scales) */
    MS_SCALE,  /* FP8 block scales, about 1.1e-4 (0.75-1.25 of 0.049 / 448) */
} ms_init;

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    ms_init init;
    int group;  /* routed expert (layer * E + expert), fused layer, or -1 */
    int last;   /* 1 on the last tensor of its group in plan order */
    int shard;  /* assigned by the writer */
} ms_tensor;

/* Appends every tensor of the sample to `plan` (GArray of ms_tensor) in the
 * order the modules define them (the order Hugging Face shards in). */
void ms_plan_build(const ms_opts *o, GArray *plan);

/* Whether the FP8 sample quantises 2-D tensor `name`: every linear weight
 * except the embeddings, lm_head and the routers (as the DeepSeek-V3 and
 * Qwen3 FP8 releases leave them). */
int ms_fp8_quantised(const ms_opts *o, const char *name);

/* Frees the names in a plan and the array; accepts NULL. */
void ms_plan_free(GArray *plan);

/* Tokenizer ids shared by the config and the tokenizer files. */
typedef struct {
    int n_merges;     /* merges kept so that everything fits in --vocab */
    int n_bpe;        /* 256 + n_merges */
    int n_special;    /* added tokens, ids n_bpe .. n_bpe + n_special - 1 */
    int endoftext, im_start, im_end;
} ms_tok;

/* Smallest vocab that holds the byte tokens and the added tokens. */
int ms_tok_min_vocab(const ms_opts *o);

/* Fills the ids for o->vocab (which must be >= ms_tok_min_vocab). */
void ms_tok_ids(const ms_opts *o, ms_tok *t);

/* tokenizer.json and tokenizer_config.json as Hugging Face writes them for
 * Qwen: byte-level BPE (NFC, the Qwen split regex, GPT-2 byte map). NULL
 * only if the built-in merge table is inconsistent (a bug). */
cJSON *ms_tokenizer_json(const ms_opts *o, const ms_tok *t);
/* Pieces of a Hugging Face tokenizer.json, shared with the coherent model:
 * an added special token entry and a ByteLevel step (pre-tokenizer,
 * post-processor or decoder). */
cJSON *ms_added_token(int id, const char *content);
cJSON *ms_byte_level_step(void);

/* The split regex of Qwen2/Qwen3's tokenizer.json. */
#define MS_QWEN_SPLIT                                                          \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"           \
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* A Qwen tokenizer.json without its vocabulary: see mksample_tok.c. Sets
 * *vocab, *pairs (the merges array) and *added to the parts the caller
 * fills. */
cJSON *ms_tokenizer_frame(cJSON **vocab, cJSON **pairs, cJSON **added);
cJSON *ms_tokenizer_config_json(const ms_opts *o, const ms_tok *t);

/* config.json and generation_config.json of the family. */
cJSON *ms_config_json(const ms_opts *o, const ms_tok *t);
cJSON *ms_generation_config_json(const ms_opts *o, const ms_tok *t);

#endif
