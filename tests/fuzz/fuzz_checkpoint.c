/* fuzz_checkpoint - libFuzzer target for config.json and
 * model.safetensors.index.json, and everything that trusts them: layout
 * detection, the shape read from the config, the extraction plan and the
 * index written for OUT.
 *
 * Input: CONFIG SEP INDEX [SEP SHARD] with SEP = "\n#-#\n". The parts are
 * written into a temporary checkpoint directory (in /dev/shm when there is
 * one) next to a fixed, valid shard "model-00001-of-00001.safetensors" of a
 * 2-layer, 2-expert qwen3_moe model (replaced by SHARD when given), and
 * the directory is opened with ckpt_open as qmoe-extract opens it.
 */
#include "format/checkpoint.h"
#include "format/layout.h"
#include "outdir/plan.h"
#include "format/safetensors.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SEP "\n#-#\n"
#define SHARD "model-00001-of-00001.safetensors"

static char *dir, *cfg_path, *idx_path, *shard_path;
static GByteArray *default_shard;

static void put(const char *path, const uint8_t *data, size_t size)
{
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(data, 1, size, fp) != size || fclose(fp) != 0)
        abort();
}

/* The names and shapes of a real Qwen3-MoE at toy size (BF16). */
static void make_default_shard(void)
{
    static const char *names[] = {
        "lm_head.weight", "model.embed_tokens.weight", "model.norm.weight",
        "model.layers.0.input_layernorm.weight", "model.layers.0.mlp.gate.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.experts.0.gate_proj.weight",
        "model.layers.0.mlp.experts.0.up_proj.weight",
        "model.layers.0.mlp.experts.0.down_proj.weight",
        "model.layers.0.mlp.experts.1.gate_proj.weight",
        "model.layers.0.mlp.experts.1.up_proj.weight",
        "model.layers.0.mlp.experts.1.down_proj.weight",
        "model.layers.1.input_layernorm.weight", "model.layers.1.mlp.gate.weight",
        "model.layers.1.mlp.experts.0.gate_proj.weight",
        "model.layers.1.mlp.experts.0.up_proj.weight",
        "model.layers.1.mlp.experts.0.down_proj.weight",
        "model.layers.1.mlp.experts.1.gate_proj.weight",
        "model.layers.1.mlp.experts.1.up_proj.weight",
        "model.layers.1.mlp.experts.1.down_proj.weight",
    };
    int n = (int)(sizeof names / sizeof names[0]);
    st_entry e[32];
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        memset(&e[i], 0, sizeof e[i]);
        e[i].name = names[i];
        e[i].dtype = ST_BF16;
        int vec = strstr(names[i], "norm") != NULL;
        e[i].ndim = vec ? 1 : 2;
        e[i].shape[0] = strstr(names[i], "embed") || strstr(names[i], "lm_head") ? 8 : 4;
        e[i].shape[1] = 4;
        e[i].nbytes = (uint64_t)e[i].shape[0] * (vec ? 1 : 4) * 2;
        total += e[i].nbytes;
    }
    GError *err = NULL;
    default_shard = st_header_build(e, n, NULL, 0, 0, &err);
    if (!default_shard)
        abort();
    for (uint64_t i = 0; i < total; i++) {
        uint8_t b = (uint8_t)(i * 7);
        g_byte_array_append(default_shard, &b, 1);
    }
}

static void setup(void)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : g_get_tmp_dir();
    char *tmpl = g_build_filename(base, "qmoe-fuzz-ck.XXXXXX", NULL);
    dir = g_mkdtemp(tmpl);
    if (!dir)
        abort();
    cfg_path = g_build_filename(dir, "config.json", NULL);
    idx_path = g_build_filename(dir, "model.safetensors.index.json", NULL);
    shard_path = g_build_filename(dir, SHARD, NULL);
    make_default_shard();
}

static const uint8_t *find_sep(const uint8_t *p, size_t n)
{
    return memmem(p, n, SEP, strlen(SEP));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir)
        setup();
    const uint8_t *s1 = find_sep(data, size);
    if (!s1)
        return 0;
    size_t sl = strlen(SEP);
    const uint8_t *idx = s1 + sl, *end = data + size;
    const uint8_t *s2 = find_sep(idx, (size_t)(end - idx));
    put(cfg_path, data, (size_t)(s1 - data));
    put(idx_path, idx, (size_t)((s2 ? s2 : end) - idx));
    if (s2)
        put(shard_path, s2 + sl, (size_t)(end - s2 - sl));
    else
        put(shard_path, default_shard->data, default_shard->len);

    GError *err = NULL;
    ckpt *ck = ckpt_open(dir, &err);
    if (!ck) {
        if (!err)
            abort();
        g_clear_error(&err);
        return 0;
    }
    const layout *lt = NULL;
    if (ckpt_load_all(ck, &err) == 0 && (lt = layout_detect(ck, &err))) {
        (void)ckpt_text_config(ck);
        for (int i = 0; i < ck->n_names; i++) {
            lt_class c;
            layout_classify(lt, ck->names[i], &c);
        }
        plan *p = plan_build(ck, lt, NULL, NULL, &err);
        if (p) {
            plan_partition(p, 3);
            char *ix = plan_index_json(p, NULL);
            g_free(ix);
            if (p->shape.n_layers > 0 && p->shape.n_experts > 0) {
                char *e = plan_expert_path(p, p->shape.n_layers - 1,
                                           p->shape.n_experts - 1);
                g_free(e);
            }
            plan_free(p);
        }
        g_clear_error(&err);
        p = plan_build(ck, lt, "0", "1", &err);
        plan_free(p);
        /* the data of the first tensor, mapped */
        if (ck->n_names > 0) {
            const uint8_t *d = NULL;
            const st_tensor *t = ckpt_tensor(ck, ck->names[0], 1, &d, &err);
            if (t && d && t->end > t->begin) {
                volatile uint8_t b = d[t->end - t->begin - 1];
                (void)b;
            }
        }
    }
    g_clear_error(&err);
    ckpt_close(ck);
    return 0;
}
