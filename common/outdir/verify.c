/* verify.c - see verify.h: results, opening OUT, coverage */
#include "outdir/verify.h"
#include "outdir/plan.h"
#include "base/fs.h"
#include "outdir/outdir.h"
#include "outdir/progress.h"
#include "outdir/view.h"
#include "base/util.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- results ---- */

static const char *kind_names[VF_KIND_COUNT] = {
    "missing", "unexpected", "incomplete", "manifest", "size", "header",
    "shape", "hash", "damaged", "source", "io", "coherence",
};

const char *vf_kind_name(vf_kind k)
{
    return (unsigned)k < VF_KIND_COUNT ? kind_names[k] : "?";
}

static void problem_free(gpointer p)
{
    vf_problem *x = p;
    g_free(x->phase);
    g_free(x->file);
    g_free(x->tensor);
    g_free(x->message);
    g_free(x);
}

vf_result *vf_result_new(void)
{
    vf_result *r = g_new0(vf_result, 1);
    r->missing_layers = g_array_new(FALSE, TRUE, sizeof(vf_missing_layer));
    r->problems = g_ptr_array_new_with_free_func(problem_free);
    r->notes = g_ptr_array_new_with_free_func(g_free);
    return r;
}

void vf_result_free(vf_result *r)
{
    if (!r)
        return;
    for (guint i = 0; i < r->missing_layers->len; i++)
        g_free(g_array_index(r->missing_layers, vf_missing_layer, i).experts);
    g_array_free(r->missing_layers, TRUE);
    g_ptr_array_free(r->problems, TRUE);
    g_ptr_array_free(r->notes, TRUE);
    g_free(r->job_state);
    g_free(r->job_error);
    g_free(r);
}

void vf_add(vf_result *r, vf_kind kind, const char *phase, const char *file,
            const char *tensor, int64_t offset, const char *fmt, ...)
{
    vf_problem *p = g_new0(vf_problem, 1);
    va_list ap;
    va_start(ap, fmt);
    p->message = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    p->kind = kind;
    p->phase = g_strdup(phase);
    p->file = g_strdup(file);
    p->tensor = g_strdup(tensor);
    p->offset = offset;
    g_ptr_array_add(r->problems, p);
}

int vf_failed(const vf_result *r)
{
    return r->problems->len > 0 || r->running;
}

int vf_exit_code(const vf_result *r)
{
    for (guint i = 0; i < r->problems->len; i++)
        if (((const vf_problem *)r->problems->pdata[i])->kind == VF_IO)
            return 2;
    return vf_failed(r) ? 1 : 0;
}

cJSON *vf_result_to_json(const vf_result *r, const char *out)
{
    cJSON *j = cJSON_CreateObject();
    int code = vf_exit_code(r);
    cJSON_AddStringToObject(j, "out", out);
    cJSON_AddStringToObject(j, "status", code == 2 ? "error" : r->running ? "running"
                                         : code ? "failed" : "ok");
    cJSON_AddNumberToObject(j, "exit", code);
    cJSON_AddBoolToObject(j, "ok", !vf_failed(r));
    cJSON *job = cJSON_AddObjectToObject(j, "job");
    cJSON_AddBoolToObject(job, "running", r->running);
    if (r->pid > 0)
        cJSON_AddNumberToObject(job, "pid", r->pid);
    else
        cJSON_AddNullToObject(job, "pid");
    if (r->job_state)
        cJSON_AddStringToObject(job, "state", r->job_state);
    if (r->job_error)
        cJSON_AddStringToObject(job, "last_error", r->job_error);
    cJSON_AddBoolToObject(job, "manifest_from_journal", r->from_journal);
    cJSON *e = cJSON_AddObjectToObject(j, "experts");
    cJSON_AddNumberToObject(e, "present", r->experts_present);
    cJSON_AddNumberToObject(e, "expected", r->experts_expected);
    cJSON_AddBoolToObject(e, "expect_override", r->expect_override);
    /* of present/expected: the MTP block's (counted apart) */
    cJSON_AddNumberToObject(e, "mtp_present", r->mtp_experts_present);
    cJSON_AddNumberToObject(e, "mtp_expected", r->mtp_experts_expected);
    cJSON *l = cJSON_AddObjectToObject(j, "layers");
    cJSON_AddNumberToObject(l, "complete", r->layers_complete);
    cJSON_AddNumberToObject(l, "expected", r->layers_expected);
    cJSON_AddNumberToObject(l, "mtp_complete", r->mtp_layers_complete);
    cJSON_AddNumberToObject(l, "mtp_expected", r->mtp_layers_expected);
    cJSON *o = cJSON_AddObjectToObject(j, "other_files");
    cJSON_AddNumberToObject(o, "present", r->others_present);
    cJSON_AddNumberToObject(o, "expected", r->others_expected);
    cJSON *ml = cJSON_AddArrayToObject(j, "missing");
    for (guint i = 0; i < r->missing_layers->len; i++) {
        const vf_missing_layer *m = &g_array_index(r->missing_layers, vf_missing_layer, i);
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "layer", m->layer);
        cJSON_AddNumberToObject(x, "count", m->n_missing);
        cJSON_AddStringToObject(x, "experts", m->experts);
        cJSON_AddItemToArray(ml, x);
    }
    cJSON *c = cJSON_AddObjectToObject(j, "checked");
    cJSON_AddNumberToObject(c, "files", r->files_checked);
    cJSON_AddNumberToObject(c, "bytes_read", (double)r->bytes_read);
    cJSON_AddBoolToObject(c, "data", r->hashed);
    cJSON_AddBoolToObject(c, "source", r->source_checked);
    cJSON_AddNumberToObject(c, "source_tensors", r->source_tensors);
    cJSON_AddNumberToObject(c, "seconds", r->seconds);
    cJSON *ps = cJSON_AddArrayToObject(j, "problems");
    for (guint i = 0; i < r->problems->len; i++) {
        const vf_problem *p = r->problems->pdata[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "kind", vf_kind_name(p->kind));
        cJSON_AddStringToObject(x, "phase", p->phase);
        if (p->file)
            cJSON_AddStringToObject(x, "file", p->file);
        else
            cJSON_AddNullToObject(x, "file");
        if (p->tensor)
            cJSON_AddStringToObject(x, "tensor", p->tensor);
        else
            cJSON_AddNullToObject(x, "tensor");
        if (p->offset >= 0)
            cJSON_AddNumberToObject(x, "offset", (double)p->offset);
        else
            cJSON_AddNullToObject(x, "offset");
        cJSON_AddStringToObject(x, "message", p->message);
        cJSON_AddItemToArray(ps, x);
    }
    cJSON *ns = cJSON_AddArrayToObject(j, "notes");
    for (guint i = 0; i < r->notes->len; i++)
        cJSON_AddItemToArray(ns, cJSON_CreateString(r->notes->pdata[i]));
    return j;
}

/* ---- the target ---- */

static void file_free(gpointer p)
{
    vf_file *f = p;
    g_free(f->path);
    g_free(f);
}

/* The target's file for a path: one per file of the view (outdir/view.h),
 * which decided its kind, whether it is expected and present. */
static vf_file *file_get(vf_target *t, const char *path)
{
    vf_file *f = g_hash_table_lookup(t->by_path, path);
    if (f)
        return f;
    const od_file *of = od_view_add(t->view, path);
    f = g_new0(vf_file, 1);
    f->path = g_strdup(path);
    f->of = of;
    f->kind = of->kind;
    f->layer = of->layer;
    f->expert = of->expert;
    f->expected = of->expected;
    f->present = of->present;
    g_ptr_array_add(t->files, f);
    g_hash_table_insert(t->by_path, f->path, f);
    return f;
}

/* The job's last recorded state, from the view's jobs. */
static void read_job(vf_target *t, vf_result *r)
{
    GArray *jobs = t->view->all_jobs;
    for (guint i = 0; i < jobs->len; i++) {
        const od_job *j = &g_array_index(jobs, od_job, i);
        if (!j->present)
            continue;
        const progress *p = &j->prog;
        int bad = strcmp(p->state, "finished") != 0;
        if (!r->job_state || bad) {
            g_free(r->job_state);
            r->job_state = g_strdup(p->state);
            if (!r->pid)
                r->pid = p->pid;
        }
        if (p->last_error && !r->job_error)
            r->job_error = g_strdup(p->last_error);
    }
}

/* A manifest made of the journals alone (qmoe.json not written yet). */
static manifest *manifest_from_files(GArray *files)
{
    manifest *m = g_new0(manifest, 1);
    m->shards = 1;
    m->n_files = (int)files->len;
    m->files = (mf_file *)g_array_free(files, FALSE);
    return m;
}

static void load_records(vf_target *t, vf_result *r)
{
    char *mpath = g_build_filename(t->out, OD_MANIFEST, NULL);
    GError *e = NULL;
    if (g_file_test(mpath, G_FILE_TEST_EXISTS)) {
        t->m = manifest_load(mpath, &e);
        if (!t->m) {
            vf_add(r, VF_MANIFEST, "coverage", OD_MANIFEST, NULL, -1, "%s", e->message);
            g_clear_error(&e);
        }
    }
    g_free(mpath);
    t->have_manifest = t->m != NULL;
    if (t->m && t->m->complete)
        return; /* the finished manifest is the authority */
    /* Unfinished: the journals know about files finished since. */
    GArray *files = g_array_new(FALSE, TRUE, sizeof(mf_file));
    if (mf_journals_read_all(t->out, files, &e)) {
        vf_add(r, VF_MANIFEST, "coverage", ".qmoe/journal.jsonl", NULL, -1, "%s",
               e->message);
        g_clear_error(&e);
    }
    if (!t->m) {
        t->m = manifest_from_files(files);
        r->from_journal = 1;
        return;
    }
    for (int i = 0; i < t->m->n_files; i++) {
        g_array_append_val(files, t->m->files[i]); /* moved, not copied */
    }
    g_free(t->m->files);
    mf_files_sort_unique(files);
    t->m->n_files = (int)files->len;
    t->m->files = (mf_file *)g_array_free(files, FALSE);
}

/* Reads config.json and works out the layout and the text model's shape
 * from it and the recorded tensor names. */
static void load_config(vf_target *t, vf_result *r)
{
    char *cpath = g_build_filename(t->out, "config.json", NULL);
    GError *e = NULL;
    cJSON *config = NULL;
    lt_model ck = {.dir = t->out};
    if (g_file_test(cpath, G_FILE_TEST_EXISTS)) {
        ck.config = config = qm_json_load(cpath, &e);
        if (!ck.config) {
            vf_add(r, VF_MANIFEST, "coverage", "config.json", NULL, -1, "%s",
                   e->message);
            g_clear_error(&e);
        } else {
            const cJSON *mt = cJSON_GetObjectItemCaseSensitive(ck.config, "model_type");
            ck.model_type = cJSON_IsString(mt) ? mt->valuestring : NULL;
        }
    } else if (t->have_manifest && t->m->model_type && *t->m->model_type) {
        vf_add(r, VF_MISSING, "coverage", "config.json", NULL, -1,
               "missing (the source is a '%s' model with a config)",
               t->m->model_type);
    }
    g_free(cpath);

    if (t->m->layout && *t->m->layout)
        t->lt = layout_find(t->m->layout);
    /* names from the records help pick between a layout and its fused twin */
    GPtrArray *names = g_ptr_array_new();
    for (int i = 0; i < t->m->n_files; i++)
        for (int k = 0; k < t->m->files[i].n_tensors; k++)
            g_ptr_array_add(names, t->m->files[i].tensors[k].name);
    ck.n_names = (int)names->len;
    ck.names = (char **)names->pdata;
    if (!t->lt && (ck.config || ck.n_names)) {
        t->lt = layout_detect_model(&ck, &e);
        if (!t->lt) {
            vf_add(r, VF_MANIFEST, "coverage", NULL, NULL, -1, "%s", e->message);
            g_clear_error(&e);
        }
    }
    if (t->lt && ck.config) {
        if (layout_shape_model(t->lt, &ck, &t->shape, &e) == 0) {
            t->have_config = 1;
        } else {
            vf_add(r, VF_MANIFEST, "coverage", "config.json", NULL, -1, "%s",
                   e->message);
            g_clear_error(&e);
        }
    }
    if (!t->have_config) {
        /* counts from the manifest; sizes unknown, so no shape checks */
        layout_shape_free(&t->shape);
        memset(&t->shape, 0, sizeof t->shape);
        int nl = t->m->num_layers + t->m->mtp_layers; /* the MTP block after */
        t->shape.n_layers = nl;
        t->shape.n_mtp = t->m->mtp_layers;
        t->shape.n_experts = t->m->num_experts;
        t->shape.is_moe = g_new0(uint8_t, nl > 0 ? nl : 1);
        if (t->m->moe_layers && *t->m->moe_layers)
            qm_list_parse(t->m->moe_layers, nl, t->shape.is_moe, "moe_layers", NULL);
        for (int l = 0; l < nl; l++) {
            t->shape.n_moe_layers += t->shape.is_moe[l];
            t->shape.n_moe_mtp += t->shape.is_moe[l] && lt_is_mtp(&t->shape, l);
        }
    }
    g_ptr_array_free(names, TRUE);
    cJSON_Delete(config);
}

/* Manifest and config must describe the same model: a qmoe.json copied
 * from another run is caught here. */
static void cross_check(vf_target *t, vf_result *r)
{
    if (!t->have_manifest || !t->have_config)
        return;
    const manifest *m = t->m;
    if (m->num_layers != lt_decoder_layers(&t->shape))
        vf_add(r, VF_MANIFEST, "coverage", OD_MANIFEST, NULL, -1,
               "expected.num_layers is %d but config.json has %d layers",
               m->num_layers, lt_decoder_layers(&t->shape));
    if (m->mtp_layers != t->shape.n_mtp)
        vf_add(r, VF_MANIFEST, "coverage", OD_MANIFEST, NULL, -1,
               "expected.mtp_layers is %d but config.json has %d MTP layers",
               m->mtp_layers, t->shape.n_mtp);
    if (m->num_experts != t->shape.n_experts)
        vf_add(r, VF_MANIFEST, "coverage", OD_MANIFEST, NULL, -1,
               "expected.num_experts is %d but config.json has %d experts per layer",
               m->num_experts, t->shape.n_experts);
    char *moe = qm_list_format(t->shape.is_moe, t->shape.n_layers);
    if (m->moe_layers && *m->moe_layers && strcmp(moe, m->moe_layers) != 0)
        vf_add(r, VF_MANIFEST, "coverage", OD_MANIFEST, NULL, -1,
               "expected.moe_layers is '%s' but config.json gives '%s'",
               m->moe_layers, moe);
    g_free(moe);
}

/* The expected (layer, expert) set is the view's; what is wrong with the
 * lists it came from is reported here, and --expect for exactly the whole
 * model widens it to that. */
static void expected_set(vf_target *t, int expect, vf_result *r)
{
    od_view *v = t->view;
    int nl = v->shape.n_layers, ne = v->shape.n_experts;
    uint8_t *scratch = g_new0(uint8_t, (nl > ne ? nl : ne) + 1);
    GError *e = NULL;
    if (t->have_manifest &&
        ((t->m->layers && *t->m->layers &&
          qm_list_parse(t->m->layers, nl, scratch, "expected.layers", &e)) ||
         (t->m->experts && *t->m->experts &&
          qm_list_parse(t->m->experts, ne, scratch, "expected.experts", &e)))) {
        vf_add(r, VF_MANIFEST, "coverage", OD_MANIFEST, NULL, -1, "%s", e->message);
        g_clear_error(&e);
    } else if (!t->have_manifest &&
               ((v->prog_layers &&
                 qm_list_parse(v->prog_layers, nl, scratch, "progress.json layers", &e)) ||
                (v->prog_experts &&
                 qm_list_parse(v->prog_experts, ne, scratch, "progress.json experts", &e)))) {
        vf_add(r, VF_MANIFEST, "coverage", ".qmoe/progress.json", NULL, -1, "%s",
               e->message);
        g_clear_error(&e);
    }
    g_free(scratch);
    t->layer_sel = v->layer_sel;
    t->expert_sel = v->expert_sel;
    t->expect = expect;
    if (expect >= 0) {
        r->expect_override = 1;
        if (expect == v->shape.n_moe_layers * ne)
            od_view_expect_all(t->view);
    }
}

vf_target *vf_target_open(const char *out, int expect, vf_result *r, GError **err)
{
    struct stat st;
    if (stat(out, &st) != 0) {
        qm_set_errno(err, errno, "cannot open", out);
        return NULL;
    }
    if (!S_ISDIR(st.st_mode)) {
        g_set_error(err, QM_ERROR, QM_ERR_IO,
                    "cannot open '%s': not a directory (an extraction is a directory)",
                    out);
        return NULL;
    }
    if (access(out, R_OK | X_OK) != 0) {
        qm_set_errno(err, errno, "cannot read", out);
        return NULL;
    }
    od_view *v = od_view_open(out, err);
    if (!v)
        return NULL;
    vf_target *t = g_new0(vf_target, 1);
    t->out = g_strdup(out);
    t->view = v;
    t->files = g_ptr_array_new_with_free_func(file_free);
    t->by_path = g_hash_table_new(g_str_hash, g_str_equal);
    read_job(t, r);
    load_records(t, r);
    /* files only (another tool, same names): checked against the config */
    t->files_only = !t->have_manifest && t->m->n_files == 0 && !v->has_job_record;
    if (!t->have_manifest && t->m->n_files == 0 && !v->has_qmoe_dir) {
        if (!v->has_experts_dir) {
            g_set_error(err, QM_ERROR, QM_ERR_IO,
                        "'%s' holds no qmoe extraction (no qmoe.json, no "
                        ".qmoe/journal.jsonl and no experts/)", out);
            vf_target_close(t);
            return NULL;
        }
    }
    if (t->files_only)
        r->from_journal = 0;
    load_config(t, r);
    cross_check(t, r);
    t->width_e = v->width_e;
    t->width_l = v->width_l;
    expected_set(t, expect, r);

    /* the index names the files a loader will open (checked in coverage) */
    char *ipath = g_build_filename(out, OD_INDEX, NULL);
    if (g_file_test(ipath, G_FILE_TEST_EXISTS)) {
        GError *e = NULL;
        t->index = qm_json_load(ipath, &e);
        if (!t->index) {
            vf_add(r, VF_MANIFEST, "coverage", OD_INDEX, NULL,
                   -1, "%s", e->message);
            g_clear_error(&e);
        }
    }
    g_free(ipath);

    for (guint i = 0; i < v->unreadable->len; i++) {
        char **w = g_strsplit(v->unreadable->pdata[i], "\t", 2);
        vf_add(r, VF_IO, "coverage", w[0], NULL, -1, "cannot read directory: %s",
               w[1] ? w[1] : "");
        g_strfreev(w);
    }
    /* every file of the view, with its full record when there is one */
    for (guint i = 0; i < v->files->len; i++) {
        const od_file *of = v->files->pdata[i];
        file_get(t, of->path)->rec = manifest_find(t->m, of->path);
    }
    for (int i = 0; i < t->m->n_files; i++)
        file_get(t, t->m->files[i].path)->rec = &t->m->files[i];
    return t;
}

void vf_target_close(vf_target *t)
{
    if (!t)
        return;
    g_free(t->out);
    manifest_free(t->m);
    layout_shape_free(&t->shape);
    cJSON_Delete(t->index);
    if (t->by_path)
        g_hash_table_destroy(t->by_path);
    if (t->files)
        g_ptr_array_free(t->files, TRUE);
    plan_free(t->src_plan);
    ckpt_close(t->src);
    od_view_close(t->view);
    g_free(t);
}

static gint cmp_file(gconstpointer a, gconstpointer b)
{
    const vf_file *x = *(vf_file *const *)a, *y = *(vf_file *const *)b;
    return strcmp(x->path, y->path);
}

/* A source shard that is missing (plan.h: blocked files) leaves the
 * files that need it uncompared: an error for a full extraction (every
 * shard is needed to prove nothing is missing), and for a partial one when
 * OUT holds such a file. */
static int source_blocked(vf_target *t, GError **err)
{
    const plan *p = t->src_plan;
    if (p->n_blocked == 0)
        return 0;
    if (!t->src_partial) {
        char *why = od_plan_blocked(p, t->src, 1, NULL);
        g_set_error(err, QM_ERROR, QM_ERR_IO,
                    "cannot compare '%s' with the source '%s': a full extraction is "
                    "compared with every shard, and %s", t->out, t->src->dir, why);
        g_free(why);
        return -1;
    }
    int n = 0, shard = -1;
    const char *first = NULL;
    for (guint i = 0; i < t->files->len; i++) {
        const vf_file *f = t->files->pdata[i];
        if (!f->present && !f->rec)
            continue;
        for (int k = 0; k < p->n_blocked; k++)
            if (plan_blocked_covers(&p->blocked[k], f->path)) {
                if (!n++) {
                    first = f->path;
                    shard = p->blocked[k].shard;
                }
                break;
            }
    }
    if (!n)
        return 0;
    const ckpt_shard *s = &t->src->shards[shard];
    g_set_error(err, QM_ERROR, QM_ERR_IO,
                "cannot compare '%s' with the source '%s': %d of its files (%s%s) need "
                "shard '%s', which is missing (%s: an incomplete download?)", t->out,
                t->src->dir, n, first, n > 1 ? ", ..." : "", s->name,
                s->missing ? s->missing : g_strerror(ENOENT));
    return -1;
}

int vf_attach_source(vf_target *t, const char *src, vf_result *r, GError **err)
{
    (void)r;
    t->src = ckpt_open(src, err);
    if (!t->src)
        return -1;
    const layout *lt = t->lt;
    if (!lt && !(lt = layout_detect(t->src, err)))
        return -1;
    /* The whole source is planned: a partial extraction's files are then
     * compared with their counterparts, and a full one must have them all. */
    t->src_plan = plan_build_sel(t->src, lt, NULL, NULL,
                                 t->have_manifest && t->m->no_other, err);
    if (!t->src_plan) {
        g_prefix_error(err, "cannot plan the source: ");
        return -1;
    }
    t->src_partial = t->have_manifest ? t->m->partial : 0;
    if (source_blocked(t, err))
        return -1;
    for (int i = 0; i < t->src_plan->n_files; i++) {
        const plan_file *pf = &t->src_plan->files[i];
        vf_file *f = t->src_partial ? g_hash_table_lookup(t->by_path, pf->path)
                                    : file_get(t, pf->path);
        if (!f)
            continue;
        f->src = pf;
        if (!t->src_partial && f->kind != MF_EXPERT)
            od_view_add(t->view, pf->path)->wanted = 1;
    }
    od_view_count(t->view);
    return 0;
}

/* ---- coverage ---- */

void vf_check_coverage(vf_target *t, vf_result *r)
{
    g_ptr_array_sort(t->files, cmp_file);
    const od_view *v = t->view;
    int nl = v->shape.n_layers, ne = v->shape.n_experts;
    if (v->live_pids->len > 0) {
        r->running = 1;
        r->pid = g_array_index(v->live_pids, pid_t, 0);
    }
    /* the counts are the view's (the same as qmoe-status's) */
    r->experts_expected = (int)v->experts_expected;
    r->experts_present = (int)v->experts_complete;
    r->others_expected = (int)MAX(v->others_expected, 0);
    r->others_present = (int)v->others_complete;
    r->layers_expected = v->layers_expected;
    r->layers_complete = v->layers_complete;
    r->mtp_experts_expected = (int)v->mtp_experts_expected;
    r->mtp_experts_present = (int)v->mtp_experts_complete;
    r->mtp_layers_expected = v->mtp_layers_expected;
    r->mtp_layers_complete = v->mtp_layers_complete;
    uint8_t *miss = g_new0(uint8_t, (gsize)(nl > 0 ? nl : 1) * (ne > 0 ? ne : 1));
    int *miss_n = g_new0(int, nl > 0 ? nl : 1);
    uint8_t *extra = g_new0(uint8_t, (gsize)(nl > 0 ? nl : 1) * (ne > 0 ? ne : 1));
    int *extra_n = g_new0(int, nl > 0 ? nl : 1);
    for (guint i = 0; i < t->files->len; i++) {
        vf_file *f = t->files->pdata[i];
        f->expected = f->of->expected;
        f->present = f->of->present;
        if (f->kind == MF_EXPERT && f->expected && !f->present) {
            miss[(gsize)f->layer * (gsize)ne + (gsize)f->expert] = 1;
            miss_n[f->layer]++;
        }
        if (f->expected && !f->present && f->kind != MF_EXPERT && !r->running)
            vf_add(r, VF_MISSING, "coverage", f->path, NULL, -1, "missing%s",
                   f->rec ? " (listed in qmoe.json)"
                   : f->src ? " (the source has its tensors)" : "");
        if (f->of->irregular) {
            vf_add(r, VF_UNEXPECTED, "coverage", f->path, NULL, -1, "not a regular file");
        } else if (f->present && !f->expected) {
            int canonical = f->kind == MF_EXPERT && f->of->canonical;
            if (canonical && f->layer < nl && f->expert < ne) {
                /* listed per layer below, like missing ones */
                extra[(gsize)f->layer * (gsize)ne + (gsize)f->expert] = 1;
                extra_n[f->layer]++;
            } else if (canonical)
                vf_add(r, VF_UNEXPECTED, "coverage", f->path, NULL, -1,
                       "unexpected file: layer %d expert %d is beyond the config's "
                       "counts (%d layers, %d experts)", f->layer, f->expert, nl, ne);
            else
                vf_add(r, VF_UNEXPECTED, "coverage", f->path, NULL, -1,
                       "unexpected file");
        } else if (f->present && !f->rec && !r->running && !t->files_only) {
            vf_add(r, VF_MANIFEST, "coverage", f->path, NULL, -1,
                   "not recorded in %s", r->from_journal ? "the journal" : OD_MANIFEST);
        } else if (f->rec && f->src == NULL && t->src_plan && !t->src_partial) {
            vf_add(r, VF_SOURCE, "source", f->path, NULL, -1,
                   "the source checkpoint has no such file");
        }
    }
    for (int l = 0; l < nl; l++) {
        if (extra_n[l]) {
            char *list = qm_list_format(extra + (gsize)l * (gsize)ne, ne);
            vf_add(r, VF_UNEXPECTED, "coverage", NULL, NULL, -1,
                   "layer %0*d: unexpected expert file%s %s (not in the expected "
                   "set: layers %s, experts %s)", t->width_l, l,
                   extra_n[l] > 1 ? "s" : "", list,
                   t->have_manifest && *t->m->layers ? t->m->layers : "all",
                   t->have_manifest && *t->m->experts ? t->m->experts : "all");
            g_free(list);
        }
        if (!v->layer_sel[l] || miss_n[l] == 0)
            continue;
        int mtp = lt_is_mtp(&v->shape, l);
        vf_missing_layer m = {.layer = l, .n_missing = miss_n[l],
                              .experts = qm_list_format(miss + (gsize)l * (gsize)ne, ne)};
        g_array_append_val(r->missing_layers, m);
        if (!r->running)
            vf_add(r, VF_MISSING, "coverage", NULL, NULL, -1,
                   "layer %0*d%s: expert%s %s missing", t->width_l, l,
                   mtp ? " (MTP)" : "", miss_n[l] > 1 ? "s" : "", m.experts);
    }
    g_free(miss);
    g_free(miss_n);
    g_free(extra);
    g_free(extra_n);

    /* files of more than one source (outdir.h source identity), found by the view */
    if (v->mixed && strcmp(v->mixed_path, OD_MANIFEST) == 0)
        vf_add(r, VF_SOURCE, "coverage", OD_MANIFEST, NULL, -1,
               "names source %s but .qmoe/source.json names %s", v->mixed_id,
               v->source_id);
    else if (v->mixed)
        vf_add(r, VF_SOURCE, "coverage", v->mixed_path, NULL, -1,
               "read from source %s, but OUT's source is %s: OUT mixes files of "
               "two sources (qmoe-extract --restart starts over)", v->mixed_id,
               v->source_id);
    /* the verdict: the same function as qmoe-status and qmoe-extract */
    od_facts facts = od_view_facts(v);
    switch (od_complete(&facts)) {
    case OD_RUNNING:
        vf_add(r, VF_INCOMPLETE, "coverage", NULL, NULL, -1,
               "extraction running (pid %ld): %d/%d expert files so far",
               (long)r->pid, r->experts_present, r->experts_expected);
        break;
    case OD_SOURCE_GAP: {
        char **lines = g_strsplit(t->m->missing_from_source, "\n", -1);
        for (int i = 0; lines[i]; i++)
            vf_add(r, VF_INCOMPLETE, "coverage", OD_MANIFEST, NULL, -1,
                   "%s (extracted with --allow-missing)", lines[i]);
        g_strfreev(lines);
        break;
    }
    case OD_NO_MANIFEST:
        vf_add(r, VF_INCOMPLETE, "coverage", OD_MANIFEST, NULL, -1,
               "missing: the extraction did not finish (%s%s%s); checked the files "
               "its journal records", r->job_state ? "job state: " : "no progress.json",
               r->job_state ? r->job_state : "",
               r->job_state && strcmp(r->job_state, "running") == 0 ? ", process gone"
                                                                    : "");
        break;
    case OD_NOT_FINISHED:
        vf_add(r, VF_INCOMPLETE, "coverage", OD_MANIFEST, NULL, -1,
               "the extraction is not complete (\"complete\": false)");
        break;
    case OD_NOTHING:
        vf_add(r, VF_MISSING, "coverage", NULL, NULL, -1,
               "nothing expected: no usable qmoe.json or config.json");
        break;
    case OD_MIXED:     /* reported above */
    case OD_MISSING:   /* listed above */
    case OD_UNEXPECTED:
    case OD_COMPLETE:
        break;
    }
    if (t->files_only)
        g_ptr_array_add(r->notes, g_strdup("no job record and no qmoe.json: coverage "
                                           "from config.json and the layout, every "
                                           "header checked"));
    if (r->expect_override && r->experts_present != t->expect) {
        r->experts_expected = t->expect;
        vf_add(r, VF_MISSING, "coverage", NULL, NULL, -1,
               "%d expert files present, --expect says %d", r->experts_present,
               t->expect);
    }
    /* counts that the manifest states about itself */
    if (t->have_manifest && !r->expect_override &&
        t->m->expected_count + t->m->missing_count != r->experts_expected)
        vf_add(r, VF_MANIFEST, "coverage", OD_MANIFEST, NULL, -1,
               "expected.count is %d but its layer and expert lists give %d",
               t->m->expected_count, r->experts_expected);
    if (t->have_manifest && !r->expect_override && t->m->mtp_layers > 0 &&
        !t->m->missing_count &&
        t->m->mtp_count != r->mtp_experts_expected)
        vf_add(r, VF_MANIFEST, "coverage", OD_MANIFEST, NULL, -1,
               "expected.mtp_count is %d but its layer and expert lists give %d MTP "
               "expert files", t->m->mtp_count, r->mtp_experts_expected);
    if (t->have_manifest && t->m->complete && t->m->expected_files > 0 &&
        t->m->n_files != t->m->expected_files)
        vf_add(r, VF_MANIFEST, "coverage", OD_MANIFEST, NULL, -1,
               "lists %d files but expected.files is %d", t->m->n_files,
               t->m->expected_files);

    /* the index must map every recorded tensor to its file, and only those */
    if (t->have_manifest && t->m->complete && !t->index) {
        vf_add(r, VF_MISSING, "coverage", OD_INDEX, NULL, -1,
               "missing: OUT is not loadable as a checkpoint");
    } else if (t->index && !t->files_only) {
        const cJSON *wm = cJSON_GetObjectItemCaseSensitive(t->index, "weight_map");
        GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
        /* cJSON looks members up linearly: index the weight_map once */
        GHashTable *map = g_hash_table_new(g_str_hash, g_str_equal);
        const cJSON *x;
        cJSON_ArrayForEach(x, wm)
            if (x->string)
                g_hash_table_insert(map, x->string, (gpointer)x);
        for (int i = 0; i < t->m->n_files; i++) {
            const mf_file *rec = &t->m->files[i];
            for (int k = 0; k < rec->n_tensors; k++) {
                const char *name = rec->tensors[k].name;
                const cJSON *wv = g_hash_table_lookup(map, name);
                g_hash_table_add(seen, (gpointer)name);
                if (!cJSON_IsString(wv))
                    vf_add(r, VF_MANIFEST, "coverage", OD_INDEX,
                           name, -1, "tensor of '%s' is not in the weight_map",
                           rec->path);
                else if (strcmp(wv->valuestring, rec->path) != 0)
                    vf_add(r, VF_MANIFEST, "coverage", OD_INDEX,
                           name, -1, "weight_map says '%s', qmoe.json says '%s'",
                           wv->valuestring, rec->path);
            }
        }
        int n_extra = 0;
        cJSON_ArrayForEach(x, wm)
            if (!g_hash_table_contains(seen, x->string) && n_extra++ < 10)
                vf_add(r, VF_MANIFEST, "coverage", OD_INDEX,
                       x->string, -1, "weight_map names a tensor that no recorded "
                       "file holds");
        if (n_extra > 10)
            vf_add(r, VF_MANIFEST, "coverage", OD_INDEX, NULL,
                   -1, "%d more weight_map entries name unrecorded tensors",
                   n_extra - 10);
        g_hash_table_destroy(seen);
        g_hash_table_destroy(map);
    }

    for (guint i = 0; i < v->tmps->len; i++) {
        const od_tmp *x = &g_array_index(v->tmps, od_tmp, i);
        if (!x->alive)
            g_ptr_array_add(r->notes,
                            g_strdup_printf("%s: temporary left by a stopped or crashed "
                                            "extraction (pid %ld gone)", x->path,
                                            (long)x->pid));
    }
    if (!r->running && r->job_state && strcmp(r->job_state, "finished") != 0)
        g_ptr_array_add(r->notes, g_strdup_printf(
                            "last job state: %s (pid %ld)%s%s", r->job_state,
                            (long)r->pid, r->job_error ? ": " : "",
                            r->job_error ? r->job_error : ""));
    if (!t->have_config)
        g_ptr_array_add(r->notes, g_strdup("no usable config.json: tensor shapes "
                                           "not checked against the config"));
}
