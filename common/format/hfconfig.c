/* hfconfig.c - see hfconfig.h */
#include "format/hfconfig.h"
#include "base/util.h"

#include <math.h>
#include <string.h>

static const cJSON *member(const cJSON *o, const char *key)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNull(j) ? NULL : j;
}

static int positive(const cJSON *j, double *out)
{
    if (!cJSON_IsNumber(j) || !(j->valuedouble > 0) || !isfinite(j->valuedouble))
        return -1;
    *out = j->valuedouble;
    return 0;
}

/* rope_type of a v4 rope_scaling or a v5 rope_parameters object. */
static int rope_type_ok(const cJSON *o, const char *key, const char *path, GError **err)
{
    const cJSON *ty = member(o, "rope_type");
    if (!ty)
        ty = member(o, "type");
    if (!ty)
        return 0;
    if (!cJSON_IsString(ty)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': %s.rope_type is not a string", path, key);
        return -1;
    }
    /* "mrope" is what some v4 configs call default-typed M-RoPE. */
    if (strcmp(ty->valuestring, "default") && strcmp(ty->valuestring, "mrope")) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': %s.rope_type '%s' is not supported (the forward pass "
                    "implements default RoPE only)", path, key, ty->valuestring);
        return -1;
    }
    return 0;
}

int hf_rope_read(const cJSON *tc, const char *path, hf_rope *out, GError **err)
{
    *out = (hf_rope){.rope_theta = 10000.0, .format = "default"};
    const cJSON *theta4 = member(tc, "rope_theta");
    const cJSON *scaling = member(tc, "rope_scaling");
    const cJSON *params = member(tc, "rope_parameters");
    double t4 = 0, t5 = 0;
    if (theta4 && positive(theta4, &t4)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': rope_theta is not a positive number", path);
        return -1;
    }
    if (scaling && !cJSON_IsObject(scaling)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': rope_scaling is not an object", path);
        return -1;
    }
    if (scaling && rope_type_ok(scaling, "rope_scaling", path, err))
        return -1;
    if (params) {
        if (!cJSON_IsObject(params)) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s': rope_parameters is not an object", path);
            return -1;
        }
        /* Per-layer-type parameters ({"full_attention": {...},
         * "sliding_attention": {...}}) belong to models with mixed
         * attention, which the forward pass does not implement. */
        for (const cJSON *c = params->child; c; c = c->next)
            if (cJSON_IsObject(c)) {
                g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                            "'%s': rope_parameters.%s: per-layer-type RoPE parameters "
                            "are not supported", path, c->string);
                return -1;
            }
        if (rope_type_ok(params, "rope_parameters", path, err))
            return -1;
        const cJSON *theta5 = member(params, "rope_theta");
        if (!theta5 && !theta4) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s': rope_parameters has no rope_theta", path);
            return -1;
        }
        if (theta5 && positive(theta5, &t5)) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s': rope_parameters.rope_theta is not a positive number", path);
            return -1;
        }
        if (theta5 && theta4 && t4 != t5) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s': rope_theta %g and rope_parameters.rope_theta %g disagree",
                        path, t4, t5);
            return -1;
        }
        out->rope_theta = theta5 ? t5 : t4;
        out->mrope = member(params, "mrope_section") != NULL;
        out->format = "v5";
        return 0;
    }
    if (theta4) {
        out->rope_theta = t4;
        out->format = "v4";
    }
    out->mrope = scaling && member(scaling, "mrope_section") != NULL;
    return 0;
}

int hf_check_supported(const cJSON *tc, const char *path, GError **err)
{
    const cJSON *j = member(tc, "attention_bias");
    if (cJSON_IsTrue(j)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': attention_bias true is not supported", path);
        return -1;
    }
    j = member(tc, "use_sliding_window");
    if (cJSON_IsTrue(j)) {
        const cJSON *w = member(tc, "sliding_window");
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': use_sliding_window true (sliding_window %g) is not supported",
                    path, cJSON_IsNumber(w) ? w->valuedouble : 0.0);
        return -1;
    }
    /* Mistral's rule (Mixtral): a window is used whenever sliding_window is
     * set; Qwen's configs switch it with use_sliding_window (above). */
    j = member(tc, "sliding_window");
    if (!cJSON_GetObjectItemCaseSensitive(tc, "use_sliding_window") && j) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': sliding_window %g is not supported", path,
                    cJSON_IsNumber(j) ? j->valuedouble : 0.0);
        return -1;
    }
    j = member(tc, "clip_qkv");
    if (j) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': clip_qkv %g is not supported", path,
                    cJSON_IsNumber(j) ? j->valuedouble : 0.0);
        return -1;
    }
    j = member(tc, "hidden_act");
    if (j && (!cJSON_IsString(j) || strcmp(j->valuestring, "silu"))) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': hidden_act '%s' is not supported (the experts compute SiLU)",
                    path, cJSON_IsString(j) ? j->valuestring : "(not a string)");
        return -1;
    }
    j = member(tc, "layer_types");
    if (cJSON_IsArray(j))
        for (const cJSON *t = j->child; t; t = t->next)
            if (!cJSON_IsString(t) || strcmp(t->valuestring, "full_attention")) {
                g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                            "'%s': layer_types holds '%s' (only full_attention is "
                            "supported)", path,
                            cJSON_IsString(t) ? t->valuestring : "(not a string)");
                return -1;
            }
    return 0;
}
