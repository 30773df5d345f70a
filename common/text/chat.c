/* chat.c - ChatML prompts and end-of-turn ids. */
#include "text/chat.h"

#include <stdint.h>
#include <string.h>

#include "base/util.h"

char *chat_user_prompt(const char *text, size_t len, size_t *len_out)
{
    GString *s = g_string_new("<|im_start|>user\n");
    g_string_append_len(s, text, (gssize)len);
    g_string_append(s, "<|im_end|>\n<|im_start|>assistant\n");
    if (len_out)
        *len_out = s->len;
    return g_string_free(s, FALSE);
}

static int has_id(const GArray *ids, int32_t id)
{
    for (guint i = 0; i < ids->len; i++)
        if (g_array_index(ids, int32_t, i) == id)
            return 1;
    return 0;
}

static int add_id(GArray *ids, int32_t id)
{
    if (has_id(ids, id))
        return 0;
    g_array_append_val(ids, id);
    return 1;
}

static int add_json_ids(GArray *ids, const cJSON *e)
{
    uint64_t v;
    int n = 0;
    if (cJSON_IsArray(e)) {
        const cJSON *x;
        cJSON_ArrayForEach(x, e)
            if (qm_json_uint(x, &v) && v <= INT32_MAX)
                n += add_id(ids, (int32_t)v);
    } else if (e && qm_json_uint(e, &v) && v <= INT32_MAX) {
        n += add_id(ids, (int32_t)v);
    }
    return n;
}

int chat_eos_ids(const ckpt *ck, GArray *ids)
{
    const cJSON *e = NULL;
    if (ck->generation_config)
        e = cJSON_GetObjectItemCaseSensitive(ck->generation_config, "eos_token_id");
    if (!e && ck->config) {
        /* Qwen3-Omni keeps it in the text config, Qwen3-MoE at the top. */
        e = cJSON_GetObjectItemCaseSensitive(ckpt_text_config(ck), "eos_token_id");
        if (!e)
            e = cJSON_GetObjectItemCaseSensitive(ck->config, "eos_token_id");
    }
    return add_json_ids(ids, e);
}

int chat_end_ids(const ckpt *ck, const tok_t *tok, GArray *ids, GError **err)
{
    guint before = ids->len;
    int32_t im_end = tok_token_id(tok, "<|im_end|>");
    char *path = g_build_filename(ck->dir, "tokenizer_config.json", NULL);
    cJSON *tc = NULL;
    if (g_file_test(path, G_FILE_TEST_EXISTS) && !(tc = qm_json_load(path, err)))
        goto fail;
    int32_t eos = -1;
    const cJSON *e = tc ? cJSON_GetObjectItemCaseSensitive(tc, "eos_token") : NULL;
    if (cJSON_IsObject(e)) /* older configs: {"content": "<|im_end|>", ...} */
        e = cJSON_GetObjectItemCaseSensitive(e, "content");
    if (cJSON_IsString(e)) {
        if ((eos = tok_token_id(tok, e->valuestring)) < 0) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "cannot use '%s': eos_token '%s' is not in the tokenizer's "
                        "vocabulary", path, e->valuestring);
            goto fail;
        }
    } else if (e && !cJSON_IsNull(e)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "cannot use '%s': eos_token is neither a string nor "
                    "{\"content\": string}", path);
        goto fail;
    }
    chat_eos_ids(ck, ids);
    if (im_end >= 0)
        add_id(ids, im_end);
    if (eos >= 0)
        add_id(ids, eos);
    cJSON_Delete(tc);
    g_free(path);
    return (int)(ids->len - before);
fail:
    cJSON_Delete(tc);
    g_free(path);
    return -1;
}
