/* matvec.h - matrix-vector products over weights stored as bf16, f16, f32
 * or block-scaled FP8 (E4M3).
 *
 * Weights stay in their on-disk dtype (mapped or read into the expert
 * cache) and are widened to float32 inside the dot product, so each byte of
 * weight is read once per token; all arithmetic is float32. A product is
 * split over a team's threads by output rows.
 */
#ifndef QMOE_MATVEC_H
#define QMOE_MATVEC_H

#include <glib.h>
#include <stdint.h>

#include "format/fp8.h"
#include "format/safetensors.h"
#include "model/team.h"

/* A row-major [rows, cols] matrix view; data and scale are not owned.
 * FP8 (fp8.h): W[r][c] = e4m3(data[r][c]) * scale[r / block_rows][c /
 * block_cols], the scales row-major [ceil(rows / block_rows),
 * ceil(cols / block_cols)]; the kernels dequantise each weight to float32
 * in registers (never to bf16). */
typedef struct {
    const uint8_t *data;
    st_dtype dtype;   /* ST_BF16, ST_F16, ST_F32 or ST_F8_E4M3 */
    int rows, cols;
    const uint8_t *scale;   /* ST_F8_E4M3 only, else NULL */
    st_dtype scale_dtype;   /* ST_F32 or ST_BF16 */
    int block_rows, block_cols;
} qm_mat;

/* 1 if dtype is one the forward pass computes with unscaled (bf16, f16,
 * f32; FP8 needs its scales, qm_mat_view_fp8). */
int qm_mat_dtype_ok(st_dtype dtype);

/* Bytes of a rows x cols matrix of dtype. */
uint64_t qm_mat_bytes(st_dtype dtype, int rows, int cols);

/* Makes a view of a tensor after checking its dtype (bf16/f16/f32) and
 * shape ([rows, cols], or [rows] when cols == 0). `label` names it in the
 * error ("'x.safetensors': tensor 'model.norm.weight' ..."). */
int qm_mat_view(qm_mat *m, const st_tensor *t, const uint8_t *data, int rows,
                int cols, const char *label, GError **err);

/* Makes a view of an F8_E4M3 weight `w` [rows, cols] and its scale `s`
 * (NULL when the checkpoint has none) after qm_fp8_check_weight and the
 * shape check; errors (QM_ERR_FORMAT) name `file` (unquoted) and the
 * tensor. */
int qm_mat_view_fp8(qm_mat *m, const qm_fp8_config *c, const st_tensor *w,
                    const uint8_t *codes, const st_tensor *s, const uint8_t *scale,
                    int rows, int cols, const char *file, GError **err);

/* The instruction set the products were compiled for: "avx512" (16 lanes
 * in one register), "avx2" (two registers) or "portable" (plain C; the
 * only one whose sums differ, by rounding, since it has no fused
 * multiply-add). -march decides at build time. */
const char *qm_kernel_isa(void);

/* Converts row r to float32 into out[cols] (FP8: code value x scale). */
void qm_mat_row(const qm_mat *m, int r, float *out);

/* out[r] = sum_c m[r][c] * x[c] for r in [r0, r1). */
void qm_matvec_rows(float *out, const qm_mat *m, const float *x, int r0, int r1);

/* Several products of the same input vector in one parallel pass (q, k and
 * v; gate and up): out[j] = mats[j] x for j < n (n <= 4); rows of all
 * matrices are split evenly over the threads. */
void qm_matvec_multi(team *t, int n, float *const *out, const qm_mat *const *mats,
                     const float *x);

/* Products of different inputs in one parallel pass (the experts a token
 * chose): out[j] = mats[j] xs[j] for j < n; rows of all matrices are split
 * evenly over the threads. One wake-up of the team for all of them: a
 * small matrix takes less time than waking the threads. */
void qm_matvec_batch(team *t, int n, float *const *out, const qm_mat *const *mats,
                     const float *const *xs);

/* out = m x, parallel over rows. */
void qm_matvec(team *t, float *out, const qm_mat *m, const float *x);

/* Matrix-matrix products for a batch of n_tok tokens (prefill): each
 * weight row is read once per batch and used for every token.
 * out[t * ldo + r] = sum_c m[r][c] * x[t * ldx + c] for t < n_tok and
 * r in [r0, r1). Every output is bit-identical to qm_matvec_rows on that
 * token's row (the same sums in the same order). */
void qm_matmat_rows(float *out, int ldo, const qm_mat *m, const float *x, int ldx,
                    int n_tok, int r0, int r1);

/* Several products of the same n_tok inputs in one parallel pass (q, k, v;
 * gate, up): out[j] (leading dimension ldo[j]) = mats[j] x; rows of all
 * matrices are split evenly over the threads. */
void qm_matmat_multi(team *t, int n, float *const *out, const int *ldo,
                     const qm_mat *const *mats, const float *x, int ldx, int n_tok);

/* out = m x for n_tok inputs, parallel over rows. */
void qm_matmat(team *t, float *out, int ldo, const qm_mat *m, const float *x, int ldx,
               int n_tok);

#endif
