/* rope.h - RoPE frequencies and cos/sin tables: default RoPE and YaRN.
 *
 * Position p rotates pair i of a head's rotated dims by the angle
 * p * inv_freq[i], i < dim/2; how pairs are laid out (adjacent for
 * DeepSeek's interleave, halves otherwise) is the caller's business: the
 * tables are the same.
 *
 * Default: inv_freq[i] = theta^(-2i/dim).
 *
 * YaRN (DeepSeek-V3's rope_scaling "type" yarn and transformers' rope_type
 * "yarn", one algorithm): with s = factor and L = original_max_position_
 * embeddings, the correction dims d(b) = dim ln(L / (2 pi b)) / (2 ln theta)
 * give the range [low, high] = [floor d(beta_fast), ceil d(beta_slow)]
 * (no floor/ceil with "truncate": false), clamped to [0, dim-1]; with
 * ramp[i] = clamp((i - low) / (high - low), 0, 1) each frequency blends the
 * unscaled one (extrapolation) and the one divided by s (interpolation):
 *
 *     inv_freq[i] = theta^(-2i/dim) * ((1 - ramp[i]) + ramp[i] / s)
 *
 * cos and sin are multiplied by attention_factor: as given, else
 * mscale(s, mscale) / mscale(s, mscale_all_dim) when both keys are set and
 * non-zero, else mscale(s, 1) = 0.1 ln s + 1, where
 * mscale(s, m) = 0.1 m ln s + 1 (1 for s <= 1). DeepSeek models
 * (model_type deepseek_*) also multiply their attention softmax scale by
 * mscale(s, mscale_all_dim)^2 when mscale_all_dim is set: softmax_mult.
 * Which factor: the config's `factor`; only when it is absent
 * max_position_embeddings / L (transformers 4.5x preferred that ratio even
 * when `factor` was given; DeepSeek's and Qwen's configs keep the two equal).
 * As transformers does, YaRN applies at every sequence length (DeepSeek's
 * own inference code switches it on only past L, and scales its softmax by
 * mscale rather than mscale_all_dim: the same for V3's 1.0 and 1.0).
 *
 * Wiring: qm_rope_from_config(text config, its path, rotated dims) at load
 * (DeepSeek: qk_rope_head_dim; others head_dim, partial for GLM-4.5's
 * partial_rotary_factor), qm_rope_tables once for
 * the context, multiply the softmax scale by softmax_mult.
 */
#ifndef QMOE_ROPE_H
#define QMOE_ROPE_H

#include <cjson/cJSON.h>
#include <glib.h>
#include <stdint.h>

typedef enum { QM_ROPE_DEFAULT, QM_ROPE_YARN } qm_rope_type;

typedef struct {
    qm_rope_type type;
    int dim;                  /* rotated dims per head (even) */
    double theta;             /* rope_theta */
    /* YaRN only (factor 1, the rest 0 for default RoPE) */
    double factor, original_max_pos, beta_fast, beta_slow;
    double mscale, mscale_all_dim;  /* 0 when absent */
    int truncate;
    double low, high;         /* the correction range the ramp spans */
    double attention_factor;  /* multiplies cos and sin (1 for default) */
    double softmax_mult;      /* multiplies the softmax scale (1 unless DeepSeek YaRN) */
    double *inv_freq;         /* dim / 2 */
} qm_rope;

/* Reads the RoPE of text config `tc` for heads rotating `dim` dims (with
 * `partial`: heads `dim` wide rotating int(dim * partial_rotary_factor) of
 * them, the factor in (0, 1] read from rope_parameters or the config; r->dim
 * says how many): v4's
 * rope_theta and rope_scaling ({"type" or "rope_type": ...}) or v5's
 * rope_parameters ({"rope_type", "rope_theta", ...}); theta 10000 when no
 * key names it. Refused with QM_ERR_FORMAT naming `path` and the key: any
 * rope type other than default ("mrope" counts as default) and yarn, by
 * name; per-layer-type rope_parameters; v4 and v5 keys that disagree;
 * partial_rotary_factor other than 1 (without `partial`); a factor below 1, a non-positive
 * original_max_position_embeddings, attention_factor or theta, beta_fast
 * not above beta_slow, negative mscales, a non-boolean truncate; dim odd
 * or outside 2..65536. Returns the parameters (caller frees with
 * qm_rope_free) or NULL. */
qm_rope *qm_rope_from_config(const cJSON *tc, const char *path, int dim, int partial,
                             GError **err);

/* Frees; accepts NULL. */
void qm_rope_free(qm_rope *r);

/* cos and sin (dim / 2 each, attention_factor included) at position pos,
 * computed in double. */
void qm_rope_at(const qm_rope *r, int64_t pos, float *cos_out, float *sin_out);

/* Tables for positions 0..n_pos-1: cos_out and sin_out (n_pos, dim / 2),
 * caller-allocated (at load time: the forward pass allocates nothing per
 * token). */
void qm_rope_tables(const qm_rope *r, int n_pos, float *cos_out, float *sin_out);

#endif
