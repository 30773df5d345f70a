/* hfconfig.h - the keys of a Hugging Face text config that change the numerics.
 *
 * transformers v4 wrote `rope_theta` and `rope_scaling` at the text config's
 * top level; v5's save_pretrained writes one `rope_parameters` object
 * ({"rope_type": "default", "rope_theta": 1e6, "mrope_section": [...], ...})
 * instead. Both are read here, so that a config converted by a newer
 * transformers does not silently fall back to a default theta.
 *
 * Anything that would change the computation and that qmoe's forward pass
 * does not implement is refused with the key and its value, never ignored:
 * a rope_type other than "default" (M-RoPE with rope_type "default" is
 * exact for text, see attention.c's rope()), sliding-window attention (a
 * sliding_window without use_sliding_window is used, as Mistral/Mixtral
 * do), attention_bias true (Qwen2-MoE's q/k/v biases come from its layout,
 * not a key), OLMoE's clip_qkv, an activation other than SiLU.
 */
#ifndef QMOE_HFCONFIG_H
#define QMOE_HFCONFIG_H

#include <cjson/cJSON.h>
#include <glib.h>

typedef struct {
    double rope_theta;   /* base of the RoPE frequencies */
    int mrope;           /* M-RoPE sections present (text positions: 1-D) */
    const char *format;  /* "v4" (rope_theta/rope_scaling), "v5" (rope_parameters), "default" */
} hf_rope;

/* Reads the RoPE parameters of text config `tc` (either format; theta
 * defaults to 10000 when neither names it, as transformers does). A config
 * with both formats must agree. Errors name `path` and the key. */
int hf_rope_read(const cJSON *tc, const char *path, hf_rope *out, GError **err);

/* Refuses keys of `tc` whose value changes the numerics in a way the
 * forward pass does not implement (the list in the header comment).
 * QM_ERR_FORMAT naming `path`, the key and its value. */
int hf_check_supported(const cJSON *tc, const char *path, GError **err);

#endif
