/* mkbig.c - writes a random qwen3_moe checkpoint large enough that its
 * experts are many times the expert cache of a decode benchmark:
 *
 *   mkbig OUT [LAYERS EXPERTS HIDDEN INTER]   (default 8 64 1024 512)
 *
 * One bf16 shard per layer plus one for the globals, an index, a config.
 * Weights are uniform in +-0.05 from a fixed seed, so the router spreads
 * tokens over all experts (the worst case for a cache). Built and run by
 * tests/bench/run_bench.sh until qmoe-mksample can write such a model. */
#include "base/fs.h"
#include "format/safetensors.h"
#include "base/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint16_t rand_bf16(float scale)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    float f = ((float)(rng >> 40) / 16777216.0f * 2 - 1) * scale;
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

typedef struct {
    GPtrArray *names;
    GArray *entries; /* st_entry */
    GPtrArray *data;
} shard;

static void add(shard *s, const char *name, int64_t d0, int64_t d1, float scale,
                int ones)
{
    st_entry e = {0};
    e.name = g_strdup(name);
    e.dtype = ST_BF16;
    e.ndim = d1 ? 2 : 1;
    e.shape[0] = d0;
    e.shape[1] = d1;
    size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    e.nbytes = n * 2;
    uint16_t *p = g_malloc(n * 2);
    for (size_t i = 0; i < n; i++)
        p[i] = ones ? 0x3f80 /* 1.0 */ : rand_bf16(scale);
    g_ptr_array_add(s->names, (char *)e.name);
    g_array_append_val(s->entries, e);
    g_ptr_array_add(s->data, p);
}

static int flush(shard *s, const char *dir, const char *file, cJSON *wm, GError **err)
{
    char *path = g_build_filename(dir, file, NULL);
    int rv = st_write_file(path, (st_entry *)(void *)s->entries->data, (int)s->entries->len,
                           (const void *const *)s->data->pdata, NULL, err);
    for (guint i = 0; i < s->names->len; i++)
        cJSON_AddStringToObject(wm, s->names->pdata[i], file);
    g_ptr_array_set_size(s->names, 0);
    g_ptr_array_set_size(s->data, 0);
    g_array_set_size(s->entries, 0);
    g_free(path);
    return rv;
}

int main(int argc, char **argv)
{
    if (argc != 2 && argc != 6) {
        fprintf(stderr, "usage: mkbig OUT [LAYERS EXPERTS HIDDEN INTER]\n");
        return 2;
    }
    int L = 8, E = 64, H = 1024, I = 512, heads = 8, kv = 2, hd = 128, vocab = 8192, topk = 8;
    if (argc == 6) {
        L = atoi(argv[2]);
        E = atoi(argv[3]);
        H = atoi(argv[4]);
        I = atoi(argv[5]);
    }
    const char *dir = argv[1];
    GError *err = NULL;
    if (fs_mkdir_p(dir, &err) != 0)
        goto fail;
    cJSON *idx = cJSON_CreateObject();
    cJSON *wm = cJSON_AddObjectToObject(idx, "weight_map");
    shard s = {g_ptr_array_new_with_free_func(g_free), g_array_new(FALSE, FALSE, sizeof(st_entry)),
               g_ptr_array_new_with_free_func(g_free)};
    char name[256], file[64];
    float ws = 0.05f;
    for (int l = 0; l < L; l++) {
#define T(suffix, d0, d1, sc, one) \
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), add(&s, name, d0, d1, sc, one)
        T("input_layernorm.weight", H, 0, 0, 1);
        T("post_attention_layernorm.weight", H, 0, 0, 1);
        T("self_attn.q_proj.weight", heads * hd, H, ws, 0);
        T("self_attn.k_proj.weight", kv * hd, H, ws, 0);
        T("self_attn.v_proj.weight", kv * hd, H, ws, 0);
        T("self_attn.o_proj.weight", H, heads * hd, ws, 0);
        T("self_attn.q_norm.weight", hd, 0, 0, 1);
        T("self_attn.k_norm.weight", hd, 0, 0, 1);
        T("mlp.gate.weight", E, H, ws, 0);
#undef T
        for (int e = 0; e < E; e++) {
            const char *proj[3] = {"gate_proj", "up_proj", "down_proj"};
            for (int k = 0; k < 3; k++) {
                snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.%s.weight", l, e,
                         proj[k]);
                add(&s, name, k == 2 ? H : I, k == 2 ? I : H, ws, 0);
            }
        }
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", l + 1, L + 1);
        if (flush(&s, dir, file, wm, &err) != 0)
            goto fail;
    }
    add(&s, "model.embed_tokens.weight", vocab, H, 1.0f, 0);
    add(&s, "model.norm.weight", H, 0, 0, 1);
    add(&s, "lm_head.weight", vocab, H, ws, 0);
    snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", L + 1, L + 1);
    if (flush(&s, dir, file, wm, &err) != 0)
        goto fail;
    char *text = cJSON_Print(idx);
    char *p = g_build_filename(dir, "model.safetensors.index.json", NULL);
    int rv = fs_write_atomic(p, text, strlen(text), &err);
    free(text);
    g_free(p);
    if (rv)
        goto fail;
    char *cfg = g_strdup_printf(
        "{\"model_type\": \"qwen3_moe\", \"architectures\": [\"Qwen3MoeForCausalLM\"],\n"
        " \"vocab_size\": %d, \"hidden_size\": %d, \"num_hidden_layers\": %d,\n"
        " \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d,\n"
        " \"num_experts\": %d, \"num_experts_per_tok\": %d, \"moe_intermediate_size\": %d,\n"
        " \"intermediate_size\": %d, \"norm_topk_prob\": true, \"rms_norm_eps\": 1e-06,\n"
        " \"rope_theta\": 1000000.0, \"max_position_embeddings\": 4096,\n"
        " \"tie_word_embeddings\": false, \"decoder_sparse_step\": 1, \"mlp_only_layers\": []}\n",
        vocab, H, L, heads, kv, hd, E, topk, I, 4 * I);
    p = g_build_filename(dir, "config.json", NULL);
    rv = fs_write_atomic(p, cfg, strlen(cfg), &err);
    g_free(p);
    g_free(cfg);
    cJSON_Delete(idx);
    g_ptr_array_free(s.names, TRUE);
    g_ptr_array_free(s.data, TRUE);
    g_array_free(s.entries, TRUE);
    if (rv)
        goto fail;
    return 0;
fail:
    qm_report("mkbig", err);
    return 2;
}
