/* fp8.h - FP8 (E4M3) block-scaled weights, as DeepSeek-V3/R1 and Qwen3 FP8
 * checkpoints store them.
 *
 * A quantised linear weight W [rows, cols] is stored as F8_E4M3 codes under
 * its own name plus `<name>_scale_inv`, F32 or BF16, of shape
 * [ceil(rows / Bn), ceil(cols / Bk)] with [Bn, Bk] = quantization_config's
 * weight_block_size (edge blocks are partial: DeepSeek-V3's
 * kv_a_proj_with_mqa is 576 x 7168 with 128 x 128 blocks). Its value is
 *
 *     W[r][c] = e4m3(code[r][c]) * scale_inv[r / Bn][c / Bk]
 *
 * ("_inv" because the quantiser divided by it). E4M3 here is the OCP "fn"
 * variant every FP8 checkpoint uses: 1 sign bit, 4 exponent bits with bias
 * 7, 3 mantissa bits, subnormals at exponent 0, no infinity, 0x7F and 0xFF
 * NaN, largest finite 448.
 *
 * Dequantisation is to float32 only, inside the kernels (bf16 rounding of
 * the product moves the logits by 1e-2); activations stay float32.
 */
#ifndef QMOE_FP8_H
#define QMOE_FP8_H

#include <cjson/cJSON.h>
#include <glib.h>
#include <stdint.h>

#include "format/checkpoint.h"
#include "format/safetensors.h"

/* The 256 E4M3 values indexed by code (NaN at 0x7F and 0xFF), built on
 * first use (thread-safe); the table lives for the process. */
const float *qm_e4m3_table(void);

/* One code's value (the table's entry). */
float qm_e4m3(uint8_t code);

/* ---- quantization_config ---- */

typedef struct {
    int block_rows, block_cols;  /* weight_block_size [Bn, Bk] */
    char **not_convert;          /* modules_to_not_convert, NULL-terminated,
                                    possibly empty */
} qm_fp8_config;

/* Reads the `quantization_config` object of config.json `cfg` (the whole
 * file, where transformers writes it). Returns 1 with *out set (owned by the
 * caller, qm_fp8_config_free) for an FP8 block-scaled checkpoint, 0 with
 * *out NULL when there is no quantization_config, -1 with *err set
 * (QM_ERR_FORMAT naming `path` and the key) otherwise:
 * - quant_method other than "fp8" (refused by name: the forward pass
 *   decodes FP8 only);
 * - fmt other than "e4m3" (absent means e4m3, as transformers assumes);
 * - activation_scheme other than "dynamic" (absent means dynamic);
 * - weight_block_size not two integers in 1..65536 (absent means
 *   [128, 128], transformers' default);
 * - modules_to_not_convert not null or an array of non-empty strings. */
int qm_fp8_config_read(const cJSON *cfg, const char *path, qm_fp8_config **out,
                       GError **err);

/* Frees; accepts NULL. */
void qm_fp8_config_free(qm_fp8_config *c);

/* Whether tensor `name` (".weight" and any "_scale_inv" dropped: the module
 * path) is in modules_to_not_convert: equal to an entry or ending with
 * "." + entry, at a module boundary ("mlp.gate" matches
 * "model.layers.3.mlp.gate" but not "...mlp.gate_proj"). */
gboolean qm_fp8_excluded(const qm_fp8_config *c, const char *name);

/* Scale grid of a [rows, cols] weight: ceil(rows / Bn), ceil(cols / Bk). */
void qm_fp8_grid(const qm_fp8_config *c, int64_t rows, int64_t cols,
                 int64_t *grid_rows, int64_t *grid_cols);

/* Checks one F8_E4M3 weight `w` and its scale `s` (NULL when the
 * checkpoint has no `<w->name>_scale_inv`): w is 2-D, not in
 * modules_to_not_convert, s exists with dtype F32 or BF16 and shape
 * qm_fp8_grid(rows, cols). `label` names the file in the message.
 * Returns 0, or -1 with *err set (QM_ERR_FORMAT) naming the tensor. */
int qm_fp8_check_weight(const qm_fp8_config *c, const char *label,
                        const st_tensor *w, const st_tensor *s, GError **err);

/* One problem found by qm_fp8_check_ckpt: the shard holding `tensor`
 * (its name as the index writes it), the tensor, and what is wrong (no
 * file prefix). The strings live only during the call. */
typedef void (*qm_fp8_problem_fn)(void *user, const char *file, const char *tensor,
                                  const char *message);

/* Checks every tensor of an opened checkpoint (headers only, loading them
 * all): each F8_E4M3 tensor as qm_fp8_check_weight does, each
 * `*_scale_inv` has its F8_E4M3 weight, and FP8 tensors appear only when
 * config.json has an FP8 quantization_config. With `report`, every
 * problem goes to it and the check goes on; without, the first problem is
 * an error (QM_ERR_FORMAT, naming the shard's path). Sets *n_fp8 (may be
 * NULL) to the number of F8_E4M3 tensors seen. Returns 0 when all is well,
 * 1 when problems were reported, -1 with *err set for a config that
 * cannot be read (qm_fp8_config_read), a shard that cannot be read, or
 * (no report) the first problem. */
int qm_fp8_check_ckpt(ckpt *ck, qm_fp8_problem_fn report, void *user, int *n_fp8,
                      GError **err);

/* ---- kernels ---- */

/* An FP8 matrix in memory (bytes of a mapped checkpoint; not owned). */
typedef struct {
    const uint8_t *codes;   /* rows x cols, row-major */
    const uint8_t *scale;   /* grid_rows x grid_cols, F32 or BF16, little-endian */
    st_dtype scale_dtype;   /* ST_F32 or ST_BF16 */
    int64_t rows, cols;
    int block_rows, block_cols;
} qm_fp8_mat;

/* Fills *m from a checked weight/scale pair and their bytes. */
void qm_fp8_mat_init(qm_fp8_mat *m, const qm_fp8_config *c, const st_tensor *w,
                     const uint8_t *codes, const st_tensor *s, const uint8_t *scale);

/* Scale of block (i, j) as float32. */
float qm_fp8_scale(const qm_fp8_mat *m, int64_t i, int64_t j);

/* Row r of m dequantised into out[cols]: each code's value times its
 * block's scale, in float32. */
void qm_fp8_row(const qm_fp8_mat *m, int64_t r, float *out);

/* Dot product of row r with x[cols] without materialising the row: per
 * column block, the sum of value x x (16 lanes with AVX2 and F16C) times
 * the block's scale. Equal to dotting qm_fp8_row up to float32 summation
 * order. The forward pass does not use it (model/matvec.c has its own
 * tile kernel; tests/bench/fp8dot.c measures that one). */
float qm_fp8_dot(const qm_fp8_mat *m, int64_t r, const float *x);

#endif
