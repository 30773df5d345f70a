/* pack_build.c - what qmoe-pack writes, decided before writing (pack.h) */
#include "pack.h"
#include "base/fs.h"
#include "base/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Files of a checkpoint directory that go along with the weights. The
 * processor configs belong to the multimodal model, not to its thinker. */
static const char *const extra_names[] = {
    "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "chat_template.json", "chat_template.jinja", NULL,
};
static const char *const extra_multimodal[] = {
    "preprocessor_config.json", "video_preprocessor_config.json", NULL,
};

static void tensor_clear(pk_tensor *t)
{
    g_free(t->name);
    g_free(t->ranges);
}

void pk_job_free(pk_job *j)
{
    if (!j)
        return;
    for (int i = 0; i < j->n_tensors; i++)
        tensor_clear(&j->tensors[i]);
    g_free(j->tensors);
    for (int i = 0; i < j->n_files; i++)
        g_free(j->files[i].name);
    g_free(j->files);
    for (int i = 0; i < j->n_extra; i++) {
        g_free(j->extra[i].name);
        g_free(j->extra[i].src);
        if (j->extra[i].data)
            g_byte_array_unref(j->extra[i].data);
    }
    g_free(j->extra);
    expert_plan_free(j->plan);
    g_free(j->plan_path);
    layout_shape_free(&j->shape);
    ckpt_close(j->ck);
    g_free(j);
}

/* The text config inside a copy of config.json (lt->text_config is a dotted
 * path, "" for the top level). */
static cJSON *text_config_of(cJSON *config, const char *path)
{
    cJSON *c = config;
    gchar **parts = g_strsplit(path, ".", -1);
    for (int i = 0; c && parts[i] && parts[i][0]; i++)
        c = cJSON_GetObjectItemCaseSensitive(c, parts[i]);
    g_strfreev(parts);
    return cJSON_IsObject(c) ? c : NULL;
}

static void set_number(cJSON *obj, const char *key, double v)
{
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_ReplaceItemInObjectCaseSensitive(obj, key, cJSON_CreateNumber(v));
    else
        cJSON_AddNumberToObject(obj, key, v);
}

/* M-RoPE on text positions is 1-D RoPE (all three position ids are the
 * token's index), so a text-only model drops the sections. */
static void drop_mrope(cJSON *tc, const char *key)
{
    cJSON *r = cJSON_GetObjectItemCaseSensitive(tc, key);
    if (!cJSON_IsObject(r))
        return;
    cJSON_DeleteItemFromObjectCaseSensitive(r, "mrope_section");
    cJSON_DeleteItemFromObjectCaseSensitive(r, "mrope_interleaved");
    cJSON_DeleteItemFromObjectCaseSensitive(r, "interleaved");
    /* What is left of a v4 rope_scaling may say only "default": the
     * Qwen3-MoE config's own way to say that is null. */
    int plain = 1;
    const cJSON *it;
    cJSON_ArrayForEach(it, r)
        plain &= (strcmp(it->string, "rope_type") == 0 || strcmp(it->string, "type") == 0) &&
                 cJSON_IsString(it) && strcmp(it->valuestring, "default") == 0;
    if (plain && strcmp(key, "rope_scaling") == 0)
        cJSON_ReplaceItemInObjectCaseSensitive(tc, key, cJSON_CreateNull());
}

/* The config.json to write: the source's with the expert counts of the
 * plan, or (--as qwen3_moe) the thinker's text config made a Qwen3-MoE
 * one. */
static cJSON *make_config(pk_job *j, GError **err)
{
    cJSON *src = cJSON_Duplicate(j->ck->config, 1);
    cJSON *tc = text_config_of(src, j->lt->text_config);
    if (!tc) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s/config.json': no text config at '%s'",
                    j->ck->dir, j->lt->text_config);
        cJSON_Delete(src);
        return NULL;
    }
    cJSON *out = src;
    if (j->as_qwen3 && tc != src) {
        out = cJSON_Duplicate(tc, 1);
        /* The thinker's own tie flag where the text config has none. */
        const cJSON *thinker = cJSON_GetObjectItemCaseSensitive(src, "thinker_config");
        const cJSON *tie = cJSON_GetObjectItemCaseSensitive(thinker, "tie_word_embeddings");
        if (!cJSON_GetObjectItemCaseSensitive(out, "tie_word_embeddings") && cJSON_IsBool(tie))
            cJSON_AddBoolToObject(out, "tie_word_embeddings", cJSON_IsTrue(tie));
        cJSON_Delete(src);
        tc = out;
    }
    if (j->as_qwen3) {
        cJSON_DeleteItemFromObjectCaseSensitive(tc, "architectures");
        cJSON_DeleteItemFromObjectCaseSensitive(tc, "model_type");
        const char *arch = "Qwen3MoeForCausalLM";
        cJSON_AddItemToObject(tc, "architectures", cJSON_CreateStringArray(&arch, 1));
        cJSON_AddStringToObject(tc, "model_type", "qwen3_moe");
        drop_mrope(tc, "rope_scaling");
        drop_mrope(tc, "rope_parameters");
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(tc, "dtype");
        if (cJSON_IsString(dt) && !cJSON_GetObjectItemCaseSensitive(tc, "torch_dtype"))
            cJSON_AddStringToObject(tc, "torch_dtype", dt->valuestring);
    }
    if (j->plan) {
        gchar **keys = g_strsplit(j->lt->count_keys, " ", -1);
        int set = 0;
        for (int i = 0; keys[i]; i++)
            if (keys[i][0] && cJSON_GetObjectItemCaseSensitive(tc, keys[i])) {
                set_number(tc, keys[i], j->n_keep);
                set = 1;
            }
        if (!set)
            set_number(tc, keys[0], j->n_keep);
        g_strfreev(keys);
        set_number(tc, "num_experts_per_tok", j->top_k_out);
    }
    if (j->drop_mtp)
        set_number(tc, j->lt->mtp_key, 0);
    return out;
}

/* "thinker.model.x" -> "model.x", "thinker.lm_head.weight" ->
 * "lm_head.weight" for --as qwen3_moe; else the name. Caller frees. */
static char *out_name(const pk_job *j, const char *name)
{
    if (!j->as_qwen3)
        return g_strdup(name);
    if (g_str_has_prefix(name, j->lt->root))
        return g_strconcat("model.", name + strlen(j->lt->root), NULL);
    if (g_str_has_prefix(name, j->lt->lm_head))
        return g_strconcat("lm_head.", name + strlen(j->lt->lm_head), NULL);
    return g_strdup(name);
}

/* An expert tensor's name with its expert number replaced by `to`. */
static char *renumber(const pk_job *j, const char *name, int to)
{
    const char *at = strstr(name + strlen(j->lt->root), j->lt->experts);
    const char *num = at + strlen(j->lt->experts);
    const char *rest = num;
    while (g_ascii_isdigit(*rest))
        rest++;
    return g_strdup_printf("%.*s%d%s", (int)(num - name), name, to, rest);
}

/* Rows of dim 0 in plan order: a stack of experts, or a router. */
static int slice_rows(pk_job *j, pk_tensor *t, const st_tensor *st, int shard,
                      uint64_t base, int layer, GError **err)
{
    int E = j->shape.n_experts, N = j->n_keep;
    if (st->ndim < 1 || st->shape[0] != E) {
        char buf[96];
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': tensor '%s' has shape %s: its first dimension should be the "
                    "%d experts", j->ck->shards[shard].path, st->name,
                    st_shape_str(st->shape, st->ndim, buf, sizeof buf), E);
        return -1;
    }
    uint64_t row = (st->end - st->begin) / (uint64_t)E;
    t->shape[0] = N;
    t->nbytes = row * (uint64_t)N;
    t->n_ranges = N;
    t->ranges = g_new(pk_range, N);
    for (int i = 0; i < N; i++)
        t->ranges[i] = (pk_range){shard, base + row * (uint64_t)j->plan->keep[layer][i], row};
    return 0;
}

static int is_router(const pk_job *j, const char *name, int layer)
{
    char *p = g_strdup_printf("%slayers.%d.%s.", j->lt->root, layer, j->lt->router);
    int hit = g_str_has_prefix(name, p);
    g_free(p);
    return hit;
}

/* The tensor belongs to a layer of the MTP block ("model.layers.61.*",
 * its embedding, projections and head included). */
static int in_mtp(const pk_job *j, const char *name)
{
    for (int l = lt_decoder_layers(&j->shape); l < j->shape.n_layers; l++) {
        char *p = g_strdup_printf("%slayers.%d.", j->lt->root, l);
        int hit = g_str_has_prefix(name, p);
        g_free(p);
        if (hit)
            return 1;
    }
    return 0;
}

static int plan_tensors(pk_job *j, GError **err)
{
    ckpt *ck = j->ck;
    int E = j->shape.n_experts;
    uint8_t *seen = j->plan ? g_malloc0((gsize)j->shape.n_layers * (gsize)E) : NULL;
    j->tensors = g_new0(pk_tensor, ck->n_names);
    int rc = -1;
    for (int i = 0; i < ck->n_names; i++) {
        const char *name = ck->names[i];
        const st_tensor *st = ckpt_tensor(ck, name, 0, NULL, err);
        if (!st)
            goto out;
        int shard = ckpt_shard_index(ck, name);
        uint64_t base = ck->shards[shard].st->data_start + st->begin;
        lt_class c;
        layout_classify(j->lt, name, &c);
        if (j->as_qwen3 && c.kind == LT_OTHER)
            continue;
        if (j->drop_mtp && in_mtp(j, name))
            continue;
        if (c.kind == LT_EXPERT && j->lt->fused) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "'%s': an extraction of a checkpoint with stacked experts ('%s'): "
                        "pack its source checkpoint instead", ck->dir, name);
            goto out;
        }
        int moe = c.layer >= 0 && c.layer < j->shape.n_layers && j->shape.is_moe[c.layer];
        pk_tensor *t = &j->tensors[j->n_tensors];
        t->src = name;
        t->dtype = st->dtype;
        t->ndim = st->ndim;
        memcpy(t->shape, st->shape, sizeof t->shape);
        t->nbytes = st->end - st->begin;
        char *nm = NULL;
        if (j->plan && c.kind == LT_EXPERT && moe) {
            int to = expert_plan_index(j->plan, c.layer, c.expert);
            if (to < 0)
                continue; /* not kept */
            seen[(size_t)c.layer * (size_t)E + (size_t)c.expert] = 1;
            nm = renumber(j, name, to);
        } else if (j->plan && moe && (c.kind == LT_FUSED || is_router(j, name, c.layer))) {
            if (slice_rows(j, t, st, shard, base, c.layer, err))
                goto out;
            for (int k = 0; c.kind == LT_FUSED && k < j->n_keep; k++)
                seen[(size_t)c.layer * (size_t)E + (size_t)j->plan->keep[c.layer][k]] = 1;
        }
        if (!t->ranges) {
            t->n_ranges = 1;
            t->ranges = g_new(pk_range, 1);
            t->ranges[0] = (pk_range){shard, base, t->nbytes};
        }
        char *final = out_name(j, nm ? nm : name);
        g_free(nm);
        t->name = final;
        j->n_tensors++;
    }
    /* A kept expert must be there: a partial extraction may lack it. */
    for (int l = 0; j->plan && l < j->shape.n_layers; l++)
        for (int k = 0; j->plan->keep[l] && k < j->plan->n_keep[l]; k++)
            if (!seen[(size_t)l * (size_t)E + (size_t)j->plan->keep[l][k]]) {
                g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                            "'%s': layer %d has no tensors of expert %d, which the plan "
                            "keeps (a partial extraction?)", ck->dir, l, j->plan->keep[l][k]);
                goto out;
            }
    rc = 0;
out:
    g_free(seen);
    return rc;
}

/* Names with their numbers compared as numbers ("layers.2" before
 * "layers.10"), so that a shard holds consecutive layers, and experts in
 * their new order, as a model's own state_dict order would. */
static int natural_cmp(const char *a, const char *b)
{
    while (*a && *b) {
        if (g_ascii_isdigit(*a) && g_ascii_isdigit(*b)) {
            while (*a == '0' && g_ascii_isdigit(a[1]))
                a++;
            while (*b == '0' && g_ascii_isdigit(b[1]))
                b++;
            size_t la = 0, lb = 0;
            while (g_ascii_isdigit(a[la]))
                la++;
            while (g_ascii_isdigit(b[lb]))
                lb++;
            if (la != lb)
                return la < lb ? -1 : 1;
            int c = strncmp(a, b, la);
            if (c)
                return c;
            a += la;
            b += lb;
        } else {
            if (*a != *b)
                return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++;
            b++;
        }
    }
    return *a ? 1 : *b ? -1 : 0;
}

static int tensor_order(const void *x, const void *y)
{
    return natural_cmp(((const pk_tensor *)x)->name, ((const pk_tensor *)y)->name);
}

/* Consecutive tensors into shards of at most max bytes of data (a larger
 * tensor alone in one), named model-0000K-of-0000N. */
static void plan_files(pk_job *j, uint64_t max)
{
    int cap = 16;
    qsort(j->tensors, (size_t)j->n_tensors, sizeof *j->tensors, tensor_order);
    j->files = g_new0(pk_file, cap);
    uint64_t cur = 0;
    for (int i = 0; i < j->n_tensors; i++) {
        pk_tensor *t = &j->tensors[i];
        if (j->n_files == 0 || (cur > 0 && cur + t->nbytes > max)) {
            if (j->n_files == cap)
                j->files = g_renew(pk_file, j->files, cap *= 2);
            memset(&j->files[j->n_files], 0, sizeof(pk_file));
            j->files[j->n_files].first = i;
            j->n_files++;
            cur = 0;
        }
        pk_file *f = &j->files[j->n_files - 1];
        f->n++;
        f->data_bytes += t->nbytes;
        t->file = j->n_files - 1;
        cur += t->nbytes;
        j->total_size += t->nbytes;
    }
    for (int i = 0; i < j->n_files; i++)
        j->files[i].name = g_strdup_printf("model-%05d-of-%05d.safetensors", i + 1,
                                           j->n_files);
}

static void add_extra(pk_job *j, const char *name, char *src, GByteArray *data)
{
    j->extra = g_renew(pk_extra, j->extra, j->n_extra + 1);
    pk_extra *x = &j->extra[j->n_extra++];
    memset(x, 0, sizeof *x);
    x->name = g_strdup(name);
    x->src = src;
    x->data = data;
    x->size = data ? data->len : (uint64_t)fs_file_size(src);
}

static int plan_extras(pk_job *j, GError **err)
{
    cJSON *cfg = make_config(j, err);
    if (!cfg)
        return -1;
    char *txt = cJSON_Print(cfg);
    cJSON_Delete(cfg);
    GByteArray *b = g_byte_array_new();
    g_byte_array_append(b, (const guint8 *)txt, (guint)strlen(txt));
    g_byte_array_append(b, (const guint8 *)"\n", 1);
    cJSON_free(txt);
    add_extra(j, "config.json", NULL, b);
    cJSON *idx = pk_index_json(j);
    txt = cJSON_Print(idx);
    cJSON_Delete(idx);
    b = g_byte_array_new();
    g_byte_array_append(b, (const guint8 *)txt, (guint)strlen(txt));
    g_byte_array_append(b, (const guint8 *)"\n", 1);
    cJSON_free(txt);
    add_extra(j, "model.safetensors.index.json", NULL, b);
    for (int pass = 0; pass < 2; pass++) {
        const char *const *names = pass ? extra_multimodal : extra_names;
        if (pass && j->as_qwen3)
            break;
        for (int i = 0; names[i]; i++) {
            char *p = g_build_filename(j->ck->dir, names[i], NULL);
            if (!g_file_test(p, G_FILE_TEST_EXISTS)) {
                g_free(p);
                continue;
            }
            if (fs_check_regular(p, err) || fs_file_size(p) < 0) {
                if (err && !*err)
                    qm_set_errno(err, errno, "cannot read", p);
                g_free(p);
                return -1;
            }
            add_extra(j, names[i], p, NULL);
        }
    }
    return 0;
}

pk_job *pk_job_build(const char *src, const pk_opts *o, GError **err)
{
    pk_job *j = g_new0(pk_job, 1);
    j->src_path = src;
    j->as_qwen3 = o->as_qwen3;
    if (!(j->ck = ckpt_open(src, err)) || ckpt_load_all(j->ck, err) ||
        !(j->lt = layout_detect(j->ck, err)) || layout_shape(j->lt, j->ck, &j->shape, err))
        goto fail;
    j->src_tensors = (uint64_t)j->ck->n_names;
    if (!j->ck->config) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "'%s' has no config.json: a Hugging Face checkpoint needs one", src);
        goto fail;
    }
    if (j->as_qwen3 && strcmp(j->lt->name, "qwen3_omni_moe") != 0 &&
        strcmp(j->lt->name, "qwen3_moe") != 0) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "--as qwen3_moe: '%s' is a %s checkpoint; only a Qwen3-Omni (or "
                    "Qwen3-MoE) one can be written as qwen3_moe", src, j->lt->name);
        goto fail;
    }
    if (j->as_qwen3 && strcmp(j->lt->name, "qwen3_moe") == 0)
        j->as_qwen3 = 0; /* already one: nothing to rename */
    const cJSON *tc = ckpt_text_config(j->ck);
    int64_t v = 0;
    j->top_k = qm_json_int(tc, "num_experts_per_tok", 1, LT_MAX_EXPERTS, &v) == 0 ? (int)v : 0;
    j->n_keep = j->shape.n_experts;
    j->top_k_out = j->top_k;
    if (o->plan_path) {
        j->plan_path = g_strdup(o->plan_path);
        if (!(j->plan = expert_plan_load(o->plan_path, &j->shape, err)))
            goto fail;
        int n_group = 1, topk_group = 1;
        if (j->lt->score == LT_SCORE_SIGMOID_GROUPED) {
            if (qm_json_int(tc, "n_group", 1, LT_MAX_EXPERTS, &v) == 0)
                n_group = (int)v;
            if (qm_json_int(tc, "topk_group", 1, LT_MAX_EXPERTS, &v) == 0)
                topk_group = (int)v;
        }
        if (expert_plan_check_pack(j->plan, &j->shape, n_group, &j->n_keep, err))
            goto fail;
        j->drop_mtp = j->shape.n_mtp > 0 && expert_plan_mtp_listed(j->plan, &j->shape) == 0;
        j->top_k_out = MIN(j->top_k, j->n_keep);
        if (n_group > 1 && j->top_k_out > topk_group * (j->n_keep / n_group)) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s': keeps %d experts per group, but %d per token must come from "
                        "topk_group %d groups: keep at least %d per group", o->plan_path,
                        j->n_keep / n_group, j->top_k_out, topk_group,
                        (j->top_k_out + topk_group - 1) / topk_group);
            goto fail;
        }
    }
    if (plan_tensors(j, err))
        goto fail;
    plan_files(j, o->max_shard ? o->max_shard : PK_MAX_SHARD);
    if (plan_extras(j, err))
        goto fail;
    return j;
fail:
    pk_job_free(j);
    return NULL;
}

cJSON *pk_index_json(const pk_job *j)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(doc, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)j->total_size);
    cJSON *map = cJSON_AddObjectToObject(doc, "weight_map");
    /* sorted by name, as transformers writes it */
    int *ord = g_new(int, j->n_tensors);
    for (int i = 0; i < j->n_tensors; i++)
        ord[i] = i;
    for (int i = 1; i < j->n_tensors; i++) { /* insertion sort on indices: names mostly sorted */
        int k = ord[i], p = i - 1;
        while (p >= 0 && strcmp(j->tensors[ord[p]].name, j->tensors[k].name) > 0) {
            ord[p + 1] = ord[p];
            p--;
        }
        ord[p + 1] = k;
    }
    for (int i = 0; i < j->n_tensors; i++) {
        const pk_tensor *t = &j->tensors[ord[i]];
        cJSON_AddStringToObject(map, t->name, j->files[t->file].name);
    }
    g_free(ord);
    return doc;
}

void pk_mtp_json(const pk_job *j, cJSON *doc)
{
    cJSON *m = cJSON_AddObjectToObject(doc, "mtp");
    cJSON_AddNumberToObject(m, "layers_before", j->shape.n_mtp);
    cJSON_AddNumberToObject(m, "layers_after", j->drop_mtp ? 0 : j->shape.n_mtp);
    cJSON_AddBoolToObject(m, "dropped", j->drop_mtp);
}

cJSON *pk_record_json(const pk_job *j)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddStringToObject(doc, "tool", "qmoe-pack");
    cJSON_AddStringToObject(doc, "version", QMOE_VERSION);
    cJSON_AddStringToObject(doc, "source", j->src_path);
    cJSON_AddStringToObject(doc, "source_layout", j->lt->name);
    if (j->as_qwen3)
        cJSON_AddStringToObject(doc, "as", "qwen3_moe");
    else
        cJSON_AddNullToObject(doc, "as");
    cJSON_AddNumberToObject(doc, "experts_before", j->shape.n_experts);
    cJSON_AddNumberToObject(doc, "experts_after", j->n_keep);
    cJSON_AddNumberToObject(doc, "top_k_before", j->top_k);
    cJSON_AddNumberToObject(doc, "top_k_after", j->top_k_out);
    pk_mtp_json(j, doc);
    if (j->plan) {
        cJSON *p = cJSON_AddObjectToObject(doc, "plan");
        cJSON_AddStringToObject(p, "file", j->plan_path);
        /* original_ids[L][i]: the source expert that is expert i of layer L */
        cJSON *ids = cJSON_AddObjectToObject(p, "original_ids");
        for (int l = 0; l < j->plan->n_layers; l++)
            if (j->plan->keep[l]) {
                char key[16];
                g_snprintf(key, sizeof key, "%d", l);
                cJSON_AddItemToObject(ids, key,
                                      cJSON_CreateIntArray(j->plan->keep[l], j->plan->n_keep[l]));
            }
    } else {
        cJSON_AddNullToObject(doc, "plan");
    }
    cJSON_AddNumberToObject(doc, "total_size", (double)j->total_size);
    cJSON *files = cJSON_AddArrayToObject(doc, "files");
    for (int i = 0; i < j->n_files; i++) {
        cJSON *f = cJSON_CreateObject();
        cJSON_AddStringToObject(f, "path", j->files[i].name);
        cJSON_AddNumberToObject(f, "size", (double)j->files[i].size);
        cJSON_AddStringToObject(f, "sha256", j->files[i].sha256);
        cJSON_AddNumberToObject(f, "tensors", j->files[i].n);
        cJSON_AddItemToArray(files, f);
    }
    for (int i = 0; i < j->n_extra; i++) {
        cJSON *f = cJSON_CreateObject();
        cJSON_AddStringToObject(f, "path", j->extra[i].name);
        cJSON_AddNumberToObject(f, "size", (double)j->extra[i].size);
        cJSON_AddStringToObject(f, "sha256", j->extra[i].sha256);
        cJSON_AddItemToArray(files, f);
    }
    return doc;
}
