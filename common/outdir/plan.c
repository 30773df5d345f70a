/* plan.c - see plan.h */
#include "outdir/plan.h"
#include "base/json.h"
#include "base/util.h"
#include "outdir/names.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int plan_width(int count)
{
    int n = count > 0 ? count - 1 : 0, d = 1;
    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d < 2 ? 2 : d;
}

void plan_free(plan *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n_files; i++) {
        plan_file *f = &p->files[i];
        for (int k = 0; k < f->n; k++)
            mf_desc_clear(&f->t[k].desc);
        g_free(f->t);
        g_free(f->path);
    }
    g_free(p->files);
    for (int i = 0; i < p->n_blocked; i++)
        g_free(p->blocked[i].path);
    g_free(p->blocked);
    g_free(p->layer_sel);
    g_free(p->expert_sel);
    layout_shape_free(&p->shape);
    g_free(p);
}

char *plan_expert_path(const plan *p, int layer, int expert)
{
    return od_expert_path(p->width_e, expert, p->width_l, layer);
}

int plan_blocked_covers(const plan_blocked *b, const char *path)
{
    if (b->kind != MF_OTHER)
        return strcmp(b->path, path) == 0;
    return od_other_in_group(b->path, path);
}

/* Files under construction: path -> index into a GArray of plan_file, each
 * with a GArray of plan_tensor; files blocked by a missing shard. */
typedef struct {
    GHashTable *index;
    GArray *files;    /* plan_file; .t is a GArray* until finished */
    GHashTable *blocked; /* path -> 1 + index into blocks */
    GArray *blocks;   /* plan_blocked */
} builder;

static void block(builder *b, char *path, mf_kind kind, int layer, int expert,
                  int shard)
{
    if (g_hash_table_contains(b->blocked, path)) {
        g_free(path);
        return;
    }
    plan_blocked x = {.path = path, .kind = kind, .layer = layer, .expert = expert,
                      .shard = shard};
    g_array_append_val(b->blocks, x);
    g_hash_table_insert(b->blocked, path, GINT_TO_POINTER(b->blocks->len));
}

static plan_file *file_for(builder *b, char *path, mf_kind kind, int layer,
                           int expert)
{
    gpointer v;
    if (g_hash_table_lookup_extended(b->index, path, NULL, &v)) {
        g_free(path);
        return &g_array_index(b->files, plan_file, GPOINTER_TO_INT(v));
    }
    plan_file f = {.path = path, .kind = kind, .layer = layer, .expert = expert};
    f.t = (plan_tensor *)g_array_new(FALSE, TRUE, sizeof(plan_tensor));
    g_array_append_val(b->files, f);
    g_hash_table_insert(b->index, path, GINT_TO_POINTER(b->files->len - 1));
    return &g_array_index(b->files, plan_file, b->files->len - 1);
}

static void add_tensor(plan_file *f, const char *name, const char *src_name,
                       int shard, uint64_t off, uint64_t nbytes, st_dtype dt,
                       int ndim, const int64_t *shape, int slice)
{
    plan_tensor t = {.name = g_strdup(name), .src_name = g_strdup(src_name),
                     .shard = shard, .src_offset = off, .nbytes = nbytes,
                     .dtype = dt, .ndim = ndim, .slice = slice};
    memcpy(t.shape, shape, sizeof(int64_t) * (size_t)ndim);
    g_array_append_val((GArray *)f->t, t);
    f->bytes += nbytes;
}

/* Frees a file still being built (its tensors are a GArray of plan_tensor
 * until the plan is finished). */
static void building_file_clear(plan_file *f)
{
    GArray *ts = (GArray *)f->t;
    for (guint k = 0; k < ts->len; k++)
        mf_desc_clear(&g_array_index(ts, plan_tensor, k).desc);
    g_array_free(ts, TRUE);
    g_free(f->path);
}

static int cmp_tensor(const void *a, const void *b)
{
    return strcmp(((const plan_tensor *)a)->name, ((const plan_tensor *)b)->name);
}

static int cmp_source(const void *a, const void *b)
{
    const plan_file *x = a, *y = b;
    /* t[] is sorted by name; order files by where their first bytes live */
    const plan_tensor *tx = &x->t[0], *ty = &y->t[0];
    for (int i = 1; i < x->n; i++)
        if (x->t[i].shard < tx->shard ||
            (x->t[i].shard == tx->shard && x->t[i].src_offset < tx->src_offset))
            tx = &x->t[i];
    for (int i = 1; i < y->n; i++)
        if (y->t[i].shard < ty->shard ||
            (y->t[i].shard == ty->shard && y->t[i].src_offset < ty->src_offset))
            ty = &y->t[i];
    if (tx->shard != ty->shard)
        return tx->shard < ty->shard ? -1 : 1;
    if (tx->src_offset != ty->src_offset)
        return tx->src_offset < ty->src_offset ? -1 : 1;
    return strcmp(x->path, y->path);
}

static int selection(const char *list, int n, uint8_t *mask, const char *what,
                     GError **err)
{
    if (!list) {
        memset(mask, 1, (size_t)n);
        return 0;
    }
    return qm_list_parse(list, n, mask, what, err);
}

/* other/ tensors are grouped by prefix and cut into parts of bounded size. */
static void add_other(builder *b, GPtrArray *names, const layout *lt, ckpt *ck)
{
    GHashTable *groups = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    GPtrArray *order = g_ptr_array_new_with_free_func(g_free);
    for (guint i = 0; i < names->len; i++) {
        char *prefix = layout_other_prefix(lt, names->pdata[i]);
        char *bpath = od_other_path(prefix, -1);
        int blocked = g_hash_table_contains(b->blocked, bpath);
        g_free(bpath);
        if (blocked) { /* a shard of the group is missing: its split is unknown */
            g_free(prefix);
            continue;
        }
        GPtrArray *g = g_hash_table_lookup(groups, prefix);
        if (!g) {
            g = g_ptr_array_new();
            g_hash_table_insert(groups, g_strdup(prefix), g);
            g_ptr_array_add(order, g_strdup(prefix));
        }
        g_ptr_array_add(g, names->pdata[i]);
        g_free(prefix);
    }
    for (guint gi = 0; gi < order->len; gi++) {
        const char *prefix = order->pdata[gi];
        GPtrArray *g = g_hash_table_lookup(groups, prefix);
        uint64_t total = 0;
        for (guint i = 0; i < g->len; i++) {
            const st_tensor *t = ckpt_tensor(ck, g->pdata[i], 0, NULL, NULL);
            total += t->end - t->begin;
        }
        int split = total > PLAN_OTHER_PART_BYTES, part = 1;
        uint64_t in_part = 0;
        for (guint i = 0; i < g->len; i++) {
            const char *name = g->pdata[i];
            int s = ckpt_shard_index(ck, name);
            const st_tensor *t = ckpt_tensor(ck, name, 0, NULL, NULL);
            uint64_t nb = t->end - t->begin;
            if (split && in_part > 0 && in_part + nb > PLAN_OTHER_PART_BYTES) {
                part++;
                in_part = 0;
            }
            in_part += nb;
            char *path = od_other_path(prefix, split ? part : 0);
            plan_file *f = file_for(b, path, MF_OTHER, -1, -1);
            add_tensor(f, name, name, s, ck->shards[s].st->data_start + t->begin, nb,
                       t->dtype, t->ndim, t->shape, -1);
        }
        g_ptr_array_free(g, TRUE);
    }
    g_ptr_array_free(order, TRUE);
    g_hash_table_destroy(groups);
}

plan *plan_build(ckpt *ck, const layout *lt, const char *layers,
                 const char *experts, GError **err)
{
    return plan_build_sel(ck, lt, layers, experts, 0, err);
}

plan *plan_build_sel(ckpt *ck, const layout *lt, const char *layers,
                     const char *experts, int no_other, GError **err)
{
    if (ck->n_names == 0) {
        /* an empty weight_map would "extract" nothing and report success */
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "checkpoint '%s' has no tensors",
                    ck->dir);
        return NULL;
    }
    plan *p = g_new0(plan, 1);
    p->lt = lt;
    builder b = {g_hash_table_new(g_str_hash, g_str_equal),
                 g_array_new(FALSE, TRUE, sizeof(plan_file)),
                 g_hash_table_new(g_str_hash, g_str_equal),
                 g_array_new(FALSE, TRUE, sizeof(plan_blocked))};
    GPtrArray *others = g_ptr_array_new();
    int rc = -1;
    if (layout_shape(lt, ck, &p->shape, err))
        goto out;
    int nl = p->shape.n_layers, ne = p->shape.n_experts;
    if (ne <= 0) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': the config has no routed experts (%s)", ck->dir,
                    lt->count_keys);
        goto out;
    }
    p->width_e = plan_width(ne);
    p->width_l = plan_width(nl);
    p->layer_sel = g_new0(uint8_t, nl > 0 ? nl : 1);
    p->expert_sel = g_new0(uint8_t, ne);
    if (selection(layers, nl, p->layer_sel, "--layers", err) ||
        selection(experts, ne, p->expert_sel, "--experts", err))
        goto out;
    p->partial = layers != NULL || experts != NULL;
    p->no_other = no_other;

    for (int i = 0; i < ck->n_names; i++) {
        const char *name = ck->names[i];
        lt_class c;
        layout_classify(lt, name, &c);
        if ((c.kind == LT_EXPERT || c.kind == LT_FUSED) &&
            (c.layer >= nl || !p->shape.is_moe[c.layer])) {
            /* a layer past the config's: most likely an MTP block the config
             * does not declare (layout.h) */
            char *why = c.layer < nl ? g_strdup("no experts in that layer")
                        : lt->mtp_key ? g_strdup_printf(
                              "fewer layers (num_hidden_layers %d, %s %d)",
                              lt_decoder_layers(&p->shape), lt->mtp_key, p->shape.n_mtp)
                        : g_strdup("fewer layers");
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s': tensor '%s' is an expert of layer %d, but the config "
                        "has %s", ck->dir, name, c.layer, why);
            g_free(why);
            goto out;
        }
        if (c.kind == LT_EXPERT && c.expert >= ne) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "'%s': the config says %d experts per layer but tensor "
                        "'%s' is expert %d", ck->dir, ne, name, c.expert);
            goto out;
        }
        int wanted = c.kind == LT_EXPERT ? p->layer_sel[c.layer] && p->expert_sel[c.expert]
                   : c.kind == LT_FUSED  ? p->layer_sel[c.layer]
                   : c.kind == LT_LAYER  ? c.layer >= nl || p->layer_sel[c.layer]
                   : c.kind == LT_OTHER  ? !no_other
                                         : 1;
        if (!wanted)
            continue; /* its shard is not read for it */
        int s = ckpt_shard_index(ck, name);
        GError *e = NULL;
        st_file *sst = ckpt_shard_need(ck, s, &e);
        if (!sst && ck->shards[s].missing) {
            g_clear_error(&e);
            switch (c.kind) {
            case LT_EXPERT:
                block(&b, plan_expert_path(p, c.layer, c.expert), MF_EXPERT, c.layer,
                      c.expert, s);
                break;
            case LT_FUSED:
                for (int x = 0; x < ne; x++)
                    if (p->expert_sel[x])
                        block(&b, plan_expert_path(p, c.layer, x), MF_EXPERT, c.layer,
                              x, s);
                break;
            case LT_LAYER:
                block(&b, od_layer_path(p->width_l, c.layer), MF_LAYER, c.layer, -1, s);
                break;
            case LT_GLOBAL:
                block(&b, g_strdup(OD_GLOBALS), MF_GLOBALS, -1, -1, s);
                break;
            case LT_OTHER: {
                char *prefix = layout_other_prefix(lt, name);
                block(&b, od_other_path(prefix, -1), MF_OTHER, -1, -1, s);
                g_free(prefix);
                break;
            }
            }
            continue;
        }
        if (!sst) {
            g_propagate_error(err, e);
            goto out;
        }
        const st_tensor *t = st_find(sst, name);
        uint64_t off = sst->data_start + t->begin;
        uint64_t nb = t->end - t->begin;
        switch (c.kind) {
        case LT_EXPERT:
            add_tensor(file_for(&b, plan_expert_path(p, c.layer, c.expert),
                                MF_EXPERT, c.layer, c.expert),
                       name, name, s, off, nb, t->dtype, t->ndim, t->shape, -1);
            break;
        case LT_FUSED:
            if (t->ndim < 2 || t->shape[0] != ne) {
                g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                            "'%s': fused expert tensor '%s' has %lld rows in dim 0, "
                            "the config says %d experts", ck->dir, name,
                            (long long)(t->ndim ? t->shape[0] : 0), ne);
                goto out;
            }
            for (int x = 0; x < ne; x++) {
                if (!p->expert_sel[x])
                    continue;
                char *sname = layout_fused_slice_name(lt, name, x);
                uint64_t per = nb / (uint64_t)ne;
                add_tensor(file_for(&b, plan_expert_path(p, c.layer, x), MF_EXPERT,
                                    c.layer, x),
                           sname, name, s, off + per * (uint64_t)x, per, t->dtype,
                           t->ndim - 1, t->shape + 1, x);
                g_free(sname);
            }
            break;
        case LT_LAYER:
            add_tensor(file_for(&b, od_layer_path(p->width_l, c.layer), MF_LAYER, c.layer, -1),
                       name, name, s, off, nb, t->dtype, t->ndim, t->shape, -1);
            break;
        case LT_GLOBAL:
            add_tensor(file_for(&b, g_strdup(OD_GLOBALS), MF_GLOBALS, -1, -1),
                       name, name, s, off, nb, t->dtype, t->ndim, t->shape, -1);
            break;
        case LT_OTHER:
            g_ptr_array_add(others, (gpointer)name);
            break;
        }
    }
    add_other(&b, others, lt, ck);

    /* a file with a tensor in a missing shard is left out as a whole */
    for (guint i = 0; i < b.files->len;) {
        plan_file *f = &g_array_index(b.files, plan_file, i);
        if (!g_hash_table_contains(b.blocked, f->path)) {
            i++;
            continue;
        }
        building_file_clear(f);
        g_array_remove_index_fast(b.files, i);
    }
    p->n_blocked = (int)b.blocks->len;
    p->blocked = (plan_blocked *)g_array_free(b.blocks, FALSE);
    b.blocks = NULL;
    p->n_files = (int)b.files->len;
    p->files = (plan_file *)g_array_free(b.files, FALSE);
    b.files = NULL;
    for (int i = 0; i < p->n_files; i++) {
        plan_file *f = &p->files[i];
        GArray *ts = (GArray *)f->t;
        f->n = (int)ts->len;
        f->t = (plan_tensor *)g_array_free(ts, FALSE);
        qsort(f->t, (size_t)f->n, sizeof *f->t, cmp_tensor);
        p->expected_experts += f->kind == MF_EXPERT;
        p->total_bytes += f->bytes;
    }
    if (p->n_files > 1) /* qsort(NULL, 0) is undefined */
        qsort(p->files, (size_t)p->n_files, sizeof *p->files, cmp_source);
    rc = 0;
out:
    g_hash_table_destroy(b.index);
    if (b.files) { /* failed mid-way: free what was built */
        for (guint i = 0; i < b.files->len; i++)
            building_file_clear(&g_array_index(b.files, plan_file, i));
        g_array_free(b.files, TRUE);
    }
    g_ptr_array_free(others, TRUE);
    g_hash_table_destroy(b.blocked);
    if (b.blocks) {
        for (guint i = 0; i < b.blocks->len; i++)
            g_free(g_array_index(b.blocks, plan_blocked, i).path);
        g_array_free(b.blocks, TRUE);
    }
    if (rc) {
        plan_free(p);
        return NULL;
    }
    return p;
}

static int cmp_bytes_desc(const void *a, const void *b)
{
    const plan_file *x = *(plan_file *const *)a, *y = *(plan_file *const *)b;
    if (x->bytes != y->bytes)
        return x->bytes > y->bytes ? -1 : 1;
    return strcmp(x->path, y->path);
}

void plan_partition(plan *p, int n)
{
    if (n < 1)
        n = 1;
    plan_file **by = g_new(plan_file *, p->n_files > 0 ? p->n_files : 1);
    uint64_t *load = g_new0(uint64_t, n);
    for (int i = 0; i < p->n_files; i++)
        by[i] = &p->files[i];
    qsort(by, (size_t)p->n_files, sizeof *by, cmp_bytes_desc);
    for (int i = 0; i < p->n_files; i++) {
        int best = 0;
        for (int k = 1; k < n; k++)
            if (load[k] < load[best])
                best = k;
        by[i]->part = best;
        /* a file costs its bytes plus a little fixed work (open, fsync) */
        load[best] += by[i]->bytes + 4096;
    }
    g_free(by);
    g_free(load);
}

static int cmp_pair(const void *a, const void *b)
{
    return strcmp((*(char **const *)a)[0], (*(char **const *)b)[0]);
}

char *plan_index_json(const plan *p, const uint8_t *done)
{
    uint64_t total = 0;
    GPtrArray *pairs = g_ptr_array_new();
    for (int i = 0; i < p->n_files; i++) {
        if (done && !done[i])
            continue;
        total += p->files[i].bytes;
        for (int k = 0; k < p->files[i].n; k++) {
            g_ptr_array_add(pairs, p->files[i].t[k].name);
            g_ptr_array_add(pairs, p->files[i].path);
        }
    }
    int n = (int)pairs->len / 2;
    char ***v = g_new(char **, n > 0 ? n : 1);
    for (int i = 0; i < n; i++)
        v[i] = (char **)&pairs->pdata[2 * i];
    qsort(v, (size_t)n, sizeof *v, cmp_pair);
    /* Laid out as Hugging Face writes it: sorted, two-space indent (by
     * hand: cJSON prints its own layout). */
    GString *s = g_string_new(NULL);
    g_string_append_printf(s, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n"
                              "  \"weight_map\": {\n", (unsigned long long)total);
    for (int i = 0; i < n; i++) {
        g_string_append(s, "    ");
        qm_json_put_str(s, v[i][0]);
        g_string_append(s, ": ");
        qm_json_put_str(s, v[i][1]);
        g_string_append(s, i + 1 < n ? ",\n" : "\n");
    }
    g_string_append(s, "  }\n}\n");
    g_free(v);
    g_ptr_array_free(pairs, TRUE);
    return g_string_free(s, FALSE);
}

void plan_describe(const plan *p, const ckpt *ck, const char *src_path, manifest *m)
{
    m->version = g_strdup(QMOE_VERSION);
    m->created = qm_iso_time(qm_now());
    m->source_path = g_strdup(src_path);
    m->n_source_files = ck->n_shards;
    m->source_names = g_new0(char *, ck->n_shards + 1);
    m->source_sizes = g_new0(uint64_t, ck->n_shards > 0 ? ck->n_shards : 1);
    for (int i = 0; i < ck->n_shards; i++) {
        m->source_names[i] = g_strdup(ck->shards[i].name);
        struct stat st; /* a shard the plan did not read: its size on disk, if any */
        m->source_sizes[i] = ck->shards[i].st ? ck->shards[i].st->size
                             : stat(ck->shards[i].path, &st) == 0 ? (uint64_t)st.st_size
                                                                  : 0;
        m->source_bytes += m->source_sizes[i];
    }
    m->layout = g_strdup(p->lt->name);
    m->model_type = g_strdup(ck->model_type ? ck->model_type : "");
    m->num_layers = lt_decoder_layers(&p->shape);
    m->mtp_layers = p->shape.n_mtp;
    m->num_experts = p->shape.n_experts;
    m->moe_layers = qm_list_format(p->shape.is_moe, p->shape.n_layers);
    uint8_t *sel = g_new0(uint8_t, p->shape.n_layers > 0 ? p->shape.n_layers : 1);
    for (int l = 0; l < p->shape.n_layers; l++)
        sel[l] = p->layer_sel[l] && p->shape.is_moe[l];
    m->layers = qm_list_format(sel, p->shape.n_layers);
    g_free(sel);
    m->experts = qm_list_format(p->expert_sel, p->shape.n_experts);
    m->expected_count = p->expected_experts;
    m->mtp_count = 0;
    for (int i = 0; i < p->n_files; i++)
        m->mtp_count += p->files[i].kind == MF_EXPERT && lt_is_mtp(&p->shape, p->files[i].layer);
    m->expected_files = p->n_files;
    m->expected_bytes = p->total_bytes;
    m->partial = p->partial;
    m->no_other = p->no_other;
    if (m->shards < 1)
        m->shards = 1;
}
