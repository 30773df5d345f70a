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

int hf_check_supported(const cJSON *tc, const char *path, int bias_ok, GError **err)
{
    const cJSON *j = member(tc, "attention_bias");
    if (cJSON_IsTrue(j) && !bias_ok) {
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
