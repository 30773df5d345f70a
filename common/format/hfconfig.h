/* hfconfig.h - the keys of a Hugging Face text config that change the numerics.
 *
 * RoPE (v4's rope_theta/rope_scaling, v5's rope_parameters, default and
 * YaRN) is read by model/rope.c, which refuses other rope types by name.
 * Anything else that would change the computation and that qmoe's forward
 * pass does not implement is refused here with the key and its value,
 * never ignored: sliding-window attention (a sliding_window without
 * use_sliding_window is used, as Mistral/Mixtral do), attention_bias true
 * unless the layout reads it (Qwen2-MoE's q/k/v biases come from its
 * layout, not a key; GLM-4.5's from this key: layout.qkv_bias_key), OLMoE's
 * clip_qkv, an activation other than SiLU, layer types other than full
 * attention.
 */
#ifndef QMOE_HFCONFIG_H
#define QMOE_HFCONFIG_H

#include <cjson/cJSON.h>
#include <glib.h>

/* Refuses keys of `tc` whose value changes the numerics in a way the
 * forward pass does not implement (the list in the header comment;
 * attention_bias true is accepted with `bias_ok`). QM_ERR_FORMAT naming
 * `path`, the key and its value. */
int hf_check_supported(const cJSON *tc, const char *path, int bias_ok, GError **err);

#endif
