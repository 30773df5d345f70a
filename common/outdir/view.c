/* view.c - OUT read once (view.h) */
#include "outdir/view.h"
#include "base/fs.h"
#include "base/util.h"
#include "outdir/names.h"
#include "outdir/plan.h"
#include "outdir/progress.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- files ---- */

static void file_free(gpointer p)
{
    od_file *f = p;
    g_free(f->path);
    g_free(f);
}

static void classify(const od_view *v, od_file *f);

od_file *od_view_file(const od_view *v, const char *path)
{
    return g_hash_table_lookup(v->by_path, path);
}

od_file *od_view_add(od_view *v, const char *path)
{
    od_file *f = g_hash_table_lookup(v->by_path, path);
    if (f)
        return f;
    f = g_new0(od_file, 1);
    f->path = g_strdup(path);
    f->kind = MF_OTHER;
    f->layer = f->expert = -1;
    f->size = -1;
    g_ptr_array_add(v->files, f);
    g_hash_table_insert(v->by_path, f->path, f);
    if (v->layer_sel) /* opened: the widths are known */
        classify(v, f);
    return f;
}

/* Kind, indices and whether the name is one qmoe writes (names.h). */
static void classify(const od_view *v, od_file *f)
{
    od_name n;
    od_classify(f->path, v->width_e, v->width_l, &n);
    f->kind = n.kind;
    f->layer = n.layer;
    f->expert = n.expert;
    f->canonical = n.canonical;
}

/* ---- jobs ---- */

/* Precedence when combining shards: one running shard makes the whole
 * running, then the states that need attention, then the rest. */
static int state_rank(const char *s)
{
    static const char *order[] = {"running", "crashed", "failed", "stopped",
                                  "none", "finished", NULL};
    for (int i = 0; order[i]; i++)
        if (strcmp(s, order[i]) == 0)
            return i;
    return 4;
}

static void add_pid(od_view *v, pid_t pid)
{
    for (guint i = 0; i < v->live_pids->len; i++)
        if (g_array_index(v->live_pids, pid_t, i) == pid)
            return;
    g_array_append_val(v->live_pids, pid);
}

static gint cmp_job(gconstpointer a, gconstpointer b)
{
    const od_job *x = *(od_job *const *)a, *y = *(od_job *const *)b;
    return x->shard != y->shard ? (x->shard > y->shard) - (x->shard < y->shard)
                                : (x->shards > y->shards) - (x->shards < y->shards);
}

/* The jobs that describe OUT now: the main one, or the shard parts when a
 * sharded run is newer (with placeholders for parts not started). */
static void read_jobs(od_view *v)
{
    v->all_jobs = od_jobs_read(v->out);
    v->jobs = g_ptr_array_new();
    v->placeholders = g_ptr_array_new();
    od_job *main_job = &g_array_index(v->all_jobs, od_job, 0);
    double sh_updated = 0;
    int n_of = 0;
    for (guint i = 1; i < v->all_jobs->len; i++) {
        od_job *j = &g_array_index(v->all_jobs, od_job, i);
        sh_updated = MAX(sh_updated, j->prog.updated);
        n_of = MAX(n_of, j->shards);
    }
    if (v->all_jobs->len > 1 && (!main_job->present || sh_updated >= main_job->prog.updated)) {
        v->sharded = 1;
        for (guint i = 1; i < v->all_jobs->len; i++)
            g_ptr_array_add(v->jobs, &g_array_index(v->all_jobs, od_job, i));
        for (int s = 0; s < n_of; s++) {
            int have = 0;
            for (guint k = 1; k < v->all_jobs->len; k++) {
                const od_job *j = &g_array_index(v->all_jobs, od_job, k);
                have |= j->shard == s && j->shards == n_of;
            }
            if (!have) {
                od_job *j = g_new0(od_job, 1);
                j->dir = od_state_dir(s, n_of);
                j->shard = s;
                j->shards = n_of;
                j->state = g_strdup("none");
                g_ptr_array_add(v->placeholders, j);
                g_ptr_array_add(v->jobs, j);
            }
        }
        g_ptr_array_sort(v->jobs, cmp_job);
    } else {
        g_ptr_array_add(v->jobs, main_job);
    }
    const char *best = NULL;
    for (guint i = 0; i < v->jobs->len; i++) {
        const od_job *j = v->jobs->pdata[i];
        if (!best || state_rank(j->state) < state_rank(best)) {
            best = j->state;
            v->pid = j->pid;
        }
    }
    v->state = g_strdup(best ? best : "none");

    /* liveness over every state directory, chosen or not */
    for (guint i = 0; i < v->all_jobs->len; i++) {
        const od_job *j = &g_array_index(v->all_jobs, od_job, i);
        if (j->alive || (j->lock_held && !j->remote && j->lock_pid > 0))
            add_pid(v, j->alive ? j->pid : j->lock_pid);
        if (!j->present)
            continue;
        v->has_job_record = 1;
        const progress *p = &j->prog;
        if (!v->prog_layers && !v->prog_experts && (p->layers || p->experts)) {
            v->prog_layers = g_strdup(p->layers);
            v->prog_experts = g_strdup(p->experts);
        }
    }
}

/* ---- records ---- */

typedef struct {
    od_view *v;
    int journal;           /* from a journal (times kept for rates) */
} rec_ctx;

static void take_record(const od_rec *r, void *data)
{
    rec_ctx *c = data;
    od_view *v = c->v;
    od_file *f = od_view_add(v, r->path);
    if (!f->recorded)
        v->n_records++;
    f->recorded = 1;
    f->rec_size = r->size;
    f->rec_time = r->time;
    memcpy(f->source_id, r->source_id, sizeof f->source_id);
    if (c->journal) {
        v->journal_records++;
        g_array_append_val(v->times, r->time);
        g_array_append_val(v->sizes, r->size);
    }
}

/* Reads a journal in fixed chunks: a 7 MB journal read whole costs ~1700
 * page faults, which is most of a snapshot's time. A torn last line (no
 * newline) is ignored like mf_journal_read does: the file it describes is
 * redone. */
static void read_journal(od_view *v, const char *path)
{
    int fd = fs_open_regular(path, O_RDONLY, "cannot open", NULL);
    if (fd < 0)
        return;
    rec_ctx c = {v, 1};
    size_t cap = 256 << 10, have = 0;
    char *buf = g_malloc(cap);
    for (;;) {
        if (have == cap) { /* a line longer than the buffer */
            cap *= 2;
            buf = g_realloc(buf, cap);
        }
        ssize_t n = read(fd, buf + have, cap - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        char *p = buf, *end = buf + have;
        for (;;) {
            char *nl = memchr(p, '\n', (size_t)(end - p));
            if (!nl)
                break;
            if (nl > p) {
                od_rec r;
                if (od_rec_scan(p, nl, &r) == 0)
                    take_record(&r, &c);
                else
                    v->journal_bad++;
            }
            p = nl + 1;
        }
        have = (size_t)(end - p);
        memmove(buf, p, have);
    }
    g_free(buf);
    close(fd);
}

/* Every journal: .qmoe/journal.jsonl, then each shard part's. */
static void read_journals(od_view *v)
{
    char *q = g_build_filename(v->out, OD_STATE, NULL);
    char *mj = g_build_filename(q, OD_JOURNAL, NULL);
    read_journal(v, mj);
    g_free(mj);
    GDir *d = g_dir_open(q, 0, NULL);
    const char *n;
    int pi, pn;
    while (d && (n = g_dir_read_name(d)))
        if (od_parse_part_dir(n, &pi, &pn) == 0) {
            char *j = g_build_filename(q, n, OD_JOURNAL, NULL);
            read_journal(v, j);
            g_free(j);
        }
    if (d)
        g_dir_close(d);
    g_free(q);
}

static char *json_str(const cJSON *o, const char *key)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(x) ? g_strdup(x->valuestring) : NULL;
}

static int64_t json_num(const cJSON *o, const char *key)
{
    int64_t n;
    return qm_json_int(o, key, 0, INT64_MAX, &n) == 0 ? n : -1;
}

/* qmoe.json's head: the selection and the counts it states. */
static void read_manifest(od_view *v, int64_t *nl, int64_t *mtp, int64_t *ne, char **moe)
{
    char *path = g_build_filename(v->out, "qmoe.json", NULL);
    v->has_manifest_file = g_file_test(path, G_FILE_TEST_EXISTS);
    od_mhead h;
    *nl = *ne = -1;
    *mtp = 0;
    *moe = NULL;
    if (v->has_manifest_file && od_manifest_head(path, &h) == 0) {
        const cJSON *e = h.expected;
        v->has_manifest = 1;
        v->manifest_complete = h.complete;
        v->layout_name = h.layout;
        v->manifest_source_id = h.source_id;
        h.layout = h.source_id = NULL;
        v->m_count = json_num(e, "count");
        v->m_files = json_num(e, "files");
        v->m_bytes = json_num(e, "bytes");
        v->m_layers = json_str(e, "layers");
        v->m_experts = json_str(e, "experts");
        v->partial = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "partial"));
        v->no_other = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "no_other"));
        char *gap = json_str(e, "missing_from_source");
        if (gap && *gap)
            v->source_gap = gap;
        else
            g_free(gap);
        /* the MTP block's layers follow the decoder's (layout.h) */
        if (qm_json_int(e, "num_layers", 1, 1 << 16, nl) ||
            qm_json_int(e, "num_experts", 0, 1 << 16, ne) ||
            (cJSON_GetObjectItemCaseSensitive(e, "mtp_layers") &&
             qm_json_int(e, "mtp_layers", 0, 1 << 16, mtp)))
            *nl = *ne = -1;
        *moe = json_str(e, "moe_layers");
        od_mhead_clear(&h);
    }
    g_free(path);
}

/* ---- the shape ---- */

/* The text model's shape from config.json through the layout table: the
 * layout qmoe.json names, else the one its model_type gives. */
static int config_shape(od_view *v)
{
    char *path = g_build_filename(v->out, "config.json", NULL);
    cJSON *cfg = g_file_test(path, G_FILE_TEST_EXISTS) ? qm_json_load(path, NULL) : NULL;
    g_free(path);
    if (!cfg)
        return -1;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(cfg, "model_type");
    lt_model m = {.dir = v->out, .config = cfg,
                  .model_type = cJSON_IsString(mt) ? mt->valuestring : NULL};
    const layout *lt = v->layout_name ? layout_find(v->layout_name) : NULL;
    if (!lt)
        lt = layout_detect_model(&m, NULL);
    int rc = -1;
    if (lt && layout_shape_model(lt, &m, &v->shape, NULL) == 0) {
        v->lt = lt;
        rc = 0;
    }
    cJSON_Delete(cfg);
    return rc;
}

static void shape_of(od_view *v, int nl, int n_mtp, int ne, const char *moe)
{
    layout_shape_free(&v->shape);
    memset(&v->shape, 0, sizeof v->shape);
    v->shape.n_layers = nl + n_mtp;
    v->shape.n_mtp = n_mtp;
    nl += n_mtp;
    v->shape.n_experts = ne;
    v->shape.is_moe = g_new0(uint8_t, nl > 0 ? nl : 1);
    if (!moe || qm_list_parse(moe, nl, v->shape.is_moe, "moe_layers", NULL))
        memset(v->shape.is_moe, 1, (size_t)(nl > 0 ? nl : 1));
    for (int l = 0; l < nl; l++) {
        v->shape.n_moe_layers += v->shape.is_moe[l];
        v->shape.n_moe_mtp += v->shape.is_moe[l] && lt_is_mtp(&v->shape, l);
    }
}

/* The expected (layer, expert) set: qmoe.json's lists, else the job's own
 * selection (a stopped or running partial job), else everything. */
static void selection(od_view *v)
{
    int nl = v->shape.n_layers, ne = v->shape.n_experts;
    v->layer_sel = g_new0(uint8_t, nl > 0 ? nl : 1);
    v->expert_sel = g_new0(uint8_t, ne > 0 ? ne : 1);
    memset(v->layer_sel, 1, (size_t)(nl > 0 ? nl : 1));
    memset(v->expert_sel, 1, (size_t)(ne > 0 ? ne : 1));
    const char *ls = v->has_manifest ? v->m_layers : v->prog_layers;
    const char *es = v->has_manifest ? v->m_experts : v->prog_experts;
    if (ls && *ls && nl > 0 && qm_list_parse(ls, nl, v->layer_sel, "layers", NULL))
        memset(v->layer_sel, 1, (size_t)nl);
    if (es && *es && ne > 0 && qm_list_parse(es, ne, v->expert_sel, "experts", NULL))
        memset(v->expert_sel, 1, (size_t)ne);
    int sel_l = 0, sel_e = 0;
    for (int l = 0; l < nl; l++) {
        v->layer_sel[l] &= v->shape.is_moe[l];
        sel_l += v->layer_sel[l];
    }
    for (int e = 0; e < ne; e++)
        sel_e += v->expert_sel[e];
    if (!v->has_manifest)
        v->partial = sel_l < v->shape.n_moe_layers || sel_e < ne;
}

/* ---- the files ---- */

/* One readdir of OUT/sub ("" for OUT): final names with their sizes, and
 * temporaries. At the top only *.safetensors are output files. */
static int scan_dir(od_view *v, const char *sub, GError **err)
{
    char *dir = *sub ? g_build_filename(v->out, sub, NULL) : g_strdup(v->out);
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        int rc = !*sub ? qm_set_errno(err, e, "cannot read", dir) : 0;
        if (*sub && e != ENOENT)
            g_ptr_array_add(v->unreadable, g_strdup_printf("%s\t%s", sub, g_strerror(e)));
        g_free(dir);
        return rc;
    }
    if (strcmp(sub, "experts") == 0)
        v->has_experts_dir = 1;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        if (n[0] == '.')
            continue;
        char *rel = *sub ? g_strdup_printf("%s/%s", sub, n) : g_strdup(n);
        if (fs_is_tmp(n)) {
            od_tmp t = {g_strdup(rel), NULL, fs_tmp_pid(n), 0};
            t.final = g_strndup(rel, (gsize)(g_strrstr(rel, ".tmp.") - rel));
            t.alive = fs_pid_alive(t.pid);
            if (t.alive)
                add_pid(v, t.pid);
            g_array_append_val(v->tmps, t);
        } else if (*sub || g_str_has_suffix(n, ".safetensors")) {
            struct stat st;
            od_file *f = od_view_add(v, rel);
            if (fstatat(dirfd(d), n, &st, 0) == 0 && S_ISREG(st.st_mode)) {
                f->present = 1;
                f->size = st.st_size;
            } else {
                f->irregular = 1;
            }
        }
        g_free(rel);
    }
    closedir(d);
    g_free(dir);
    return 0;
}

/* The readers skip state files they cannot read (an extraction starting
 * has none yet); a FIFO or a device in their place is an error to report,
 * not a file to skip. */
static int check_state_files(const char *out, GError **err)
{
    static const char *top[] = {OD_MANIFEST, OD_CONFIG, OD_INDEX,
                                OD_STATE "/" OD_JOURNAL, OD_STATE "/" OD_PROGRESS,
                                OD_STATE "/" OD_LOCK, NULL};
    static const char *per_shard[] = {OD_JOURNAL, OD_PROGRESS, OD_LOCK, NULL};
    int rc = 0, pi, pn;
    for (int i = 0; top[i] && !rc; i++) {
        char *p = g_build_filename(out, top[i], NULL);
        rc = fs_check_regular(p, err);
        g_free(p);
    }
    char *q = g_build_filename(out, ".qmoe", NULL);
    GDir *d = rc ? NULL : g_dir_open(q, 0, NULL);
    const char *n;
    while (d && !rc && (n = g_dir_read_name(d)))
        for (int i = 0; od_parse_part_dir(n, &pi, &pn) == 0 && per_shard[i] && !rc; i++) {
            char *p = g_build_filename(q, n, per_shard[i], NULL);
            rc = fs_check_regular(p, err);
            g_free(p);
        }
    if (d)
        g_dir_close(d);
    g_free(q);
    return rc;
}

/* The index names the files a loader opens: expected, when no finished
 * qmoe.json lists them all already. */
static void read_index(od_view *v)
{
    if (v->manifest_complete)
        return;
    char *path = g_build_filename(v->out, "model.safetensors.index.json", NULL);
    cJSON *ix = g_file_test(path, G_FILE_TEST_EXISTS) ? qm_json_load(path, NULL) : NULL;
    g_free(path);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(ix, "weight_map"), *x;
    cJSON_ArrayForEach(x, wm)
        if (cJSON_IsString(x) && !g_str_has_prefix(x->valuestring, "experts/"))
            od_view_add(v, x->valuestring)->indexed = 1;
    cJSON_Delete(ix);
}

static gint cmp_file(gconstpointer a, gconstpointer b)
{
    const od_file *x = *(od_file *const *)a, *y = *(od_file *const *)b;
    return strcmp(x->path, y->path);
}

/* ---- the rules ---- */

int od_file_complete(const od_view *v, const od_file *f)
{
    if (!f->present || !f->canonical || f->bad)
        return 0;
    if (v->n_records == 0)
        return 1; /* files only: nothing to hold them to */
    return f->recorded && od_record_in_place(f->rec_size, f->source_id, f->size,
                                             v->source_id);
}

static int expert_expected(const od_view *v, const od_file *f)
{
    return f->kind == MF_EXPERT && f->canonical && f->layer < v->shape.n_layers &&
           f->expert < v->shape.n_experts && v->layer_sel[f->layer] &&
           v->expert_sel[f->expert];
}

void od_view_count(od_view *v)
{
    v->experts_complete = v->experts_present = v->experts_unexpected = 0;
    v->others_expected = v->others_complete = v->unexpected = v->bytes_present = 0;
    int64_t named_others = 0;
    for (guint i = 0; i < v->files->len; i++) {
        od_file *f = v->files->pdata[i];
        if (f->kind == MF_EXPERT)
            f->expected = expert_expected(v, f);
        else
            /* recorded, indexed, or (files only) a name qmoe writes */
            f->expected = f->recorded || f->indexed || f->wanted ||
                          (v->n_records == 0 && f->present && f->canonical &&
                           (f->kind != MF_LAYER || f->layer < v->shape.n_layers));
        f->complete = f->expected && od_file_complete(v, f);
        if (f->present)
            v->bytes_present += f->size;
        if ((f->present || f->irregular) && !f->expected) {
            v->unexpected++;
            if (f->kind == MF_EXPERT)
                v->experts_unexpected++;
        }
        if (f->kind == MF_EXPERT) {
            v->experts_present += f->expected && f->present;
            v->experts_complete += f->complete;
        } else if (f->expected) {
            named_others++;
            v->others_complete += f->complete;
        }
    }
    /* other files the manifest or every job's plan counts, named or not */
    int64_t stated = -1;
    if (v->has_manifest && v->m_files >= 0 && v->m_count >= 0)
        stated = v->m_files - v->m_count;
    else if (!v->has_manifest) {
        int64_t files = 0, experts = 0, have = 0;
        for (guint i = 0; i < v->jobs->len; i++) {
            const od_job *j = v->jobs->pdata[i];
            if (j->present) {
                have++;
                files += (int64_t)j->prog.files_planned;
                experts += (int64_t)j->prog.experts_planned;
            }
        }
        if (have == (int64_t)v->jobs->len && have > 0)
            stated = files - experts;
    }
    v->others_expected = stated < 0 && named_others == 0 ? -1 /* unknown */
                                                         : MAX(named_others, stated);
    g_free(v->layer_done);
    v->layer_done = g_new0(int, v->shape.n_layers > 0 ? v->shape.n_layers : 1);
    for (guint i = 0; i < v->files->len; i++) {
        const od_file *f = v->files->pdata[i];
        if (f->kind == MF_EXPERT && f->complete)
            v->layer_done[f->layer]++;
    }
    v->experts_expected = v->mtp_experts_expected = v->mtp_experts_complete = 0;
    v->layers_expected = v->layers_complete = 0;
    v->mtp_layers_expected = v->mtp_layers_complete = 0;
    int sel_e = 0;
    for (int e = 0; e < v->shape.n_experts; e++)
        sel_e += v->expert_sel[e];
    for (int l = 0; l < v->shape.n_layers; l++)
        if (v->layer_sel[l]) {
            int done, complete = od_view_layer_complete(v, l, &done, NULL);
            v->experts_expected += sel_e;
            v->layers_expected++;
            v->layers_complete += complete;
            if (lt_is_mtp(&v->shape, l)) {
                v->mtp_experts_expected += sel_e;
                v->mtp_experts_complete += MIN(done, sel_e);
                v->mtp_layers_expected++;
                v->mtp_layers_complete += complete;
            }
        }
}

int od_view_layer_complete(const od_view *v, int l, int *done, int *expected)
{
    int d = 0, x = 0;
    if (l >= 0 && l < v->shape.n_layers && v->layer_sel[l]) {
        for (int e = 0; e < v->shape.n_experts; e++)
            x += v->expert_sel[e];
        d = v->layer_done[l];
    }
    if (done)
        *done = d;
    if (expected)
        *expected = x;
    return x > 0 && d >= x;
}

void od_view_mark_bad(od_view *v, const char *path)
{
    od_file *f = od_view_file(v, path);
    if (f)
        f->bad = 1;
}

od_facts od_view_facts(const od_view *v)
{
    od_facts f = {
        .experts_expected = v->experts_expected,
        .experts_present = v->experts_complete,
        .others_expected = v->others_expected,
        .others_present = v->others_complete,
        .has_job_record = v->has_job_record,
        .has_manifest = v->has_manifest,
        .manifest_complete = v->manifest_complete,
        .live_writer = v->live_pids->len > 0,
        .source_gap = v->source_gap != NULL,
        .mixed = v->mixed,
        .unexpected = v->unexpected,
    };
    if (strcmp(v->expected_from, "scan") == 0) {
        /* names alone expect nothing: they are what is there */
        f.experts_expected = f.experts_present = 0;
        f.others_expected = 0;
    }
    return f;
}

/* Every expected expert file, present or not, into the table. */
static void add_expected(od_view *v)
{
    for (int l = 0; l < v->shape.n_layers; l++)
        for (int e = 0; v->layer_sel[l] && e < v->shape.n_experts; e++)
            if (v->expert_sel[e]) {
                char path[96];
                od_expert_path_buf(path, sizeof path, v->width_e, e, v->width_l, l);
                od_view_add(v, path);
            }
}

void od_view_expect_all(od_view *v)
{
    for (int l = 0; l < v->shape.n_layers; l++)
        v->layer_sel[l] = v->shape.is_moe[l];
    memset(v->expert_sel, 1, (size_t)(v->shape.n_experts > 0 ? v->shape.n_experts : 1));
    add_expected(v);
    od_view_count(v);
}

/* ---- opening ---- */

od_view *od_view_open(const char *out, GError **err)
{
    od_view *v = g_new0(od_view, 1);
    check_state_files(out, &v->state_file_error);
    v->out = g_strdup(out);
    v->files = g_ptr_array_new_with_free_func(file_free);
    v->by_path = g_hash_table_new(g_str_hash, g_str_equal);
    v->tmps = g_array_new(FALSE, TRUE, sizeof(od_tmp));
    v->live_pids = g_array_new(FALSE, FALSE, sizeof(pid_t));
    v->times = g_array_new(FALSE, FALSE, sizeof(double));
    v->sizes = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    v->unreadable = g_ptr_array_new_with_free_func(g_free);
    v->m_count = v->m_files = v->m_bytes = -1;
    char *q = g_build_filename(out, ".qmoe", NULL);
    v->has_qmoe_dir = g_file_test(q, G_FILE_TEST_IS_DIR);
    g_free(q);

    read_jobs(v);
    cJSON *sj = od_source_load(out, NULL);
    if (sj && *od_source_id(sj))
        v->source_id = g_strdup(od_source_id(sj));
    cJSON_Delete(sj);
    int64_t nl, ne, mtp;
    char *moe;
    read_manifest(v, &nl, &mtp, &ne, &moe);
    if (!v->source_id && v->manifest_source_id && *v->manifest_source_id)
        v->source_id = g_strdup(v->manifest_source_id);
    read_journals(v);
    if (v->n_records == 0 && v->has_manifest_file) {
        char *mp = g_build_filename(out, "qmoe.json", NULL);
        rec_ctx c = {v, 0};
        od_manifest_records(mp, take_record, &c);
        g_free(mp);
    }
    v->has_job_record |= v->journal_records > 0;
    read_index(v);
    static const char *const subs[] = {"", "experts", "layers", "other"};
    for (int i = 0; i < 4; i++)
        if (scan_dir(v, subs[i], err)) {
            g_free(moe);
            od_view_close(v);
            return NULL;
        }

    /* the shape: config.json, else qmoe.json's counts, else the names */
    if (config_shape(v) == 0) {
        v->expected_from = v->has_manifest ? "manifest" : "config";
    } else if (nl > 0) {
        shape_of(v, (int)nl, (int)mtp, (int)ne, moe);
        v->expected_from = "manifest";
    } else {
        int ml = -1, me = -1, e, l;
        for (guint i = 0; i < v->files->len; i++) {
            const od_file *f = v->files->pdata[i];
            if (f->present && od_parse_expert(f->path, &e, &l) == 0 &&
                g_str_has_prefix(f->path, "experts/")) {
                ml = MAX(ml, l);
                me = MAX(me, e);
            }
        }
        shape_of(v, ml + 1, 0, me + 1, NULL);
        v->expected_from = "scan";
    }
    g_free(moe);
    v->width_e = plan_width(v->shape.n_experts);
    v->width_l = plan_width(v->shape.n_layers);
    selection(v);

    for (guint i = 0; i < v->files->len; i++)
        classify(v, v->files->pdata[i]);
    add_expected(v);
    for (guint i = 0; i < v->tmps->len; i++) {
        od_file *f = od_view_file(v, g_array_index(v->tmps, od_tmp, i).final);
        if (f && g_array_index(v->tmps, od_tmp, i).alive)
            f->in_flight = 1;
    }
    g_ptr_array_sort(v->files, cmp_file);

    /* files of another source: a record, or qmoe.json against source.json */
    for (guint i = 0; i < v->files->len && v->source_id && !v->mixed; i++) {
        const od_file *f = v->files->pdata[i];
        if (f->recorded && f->source_id[0] && strcmp(f->source_id, v->source_id) != 0) {
            v->mixed = 1;
            v->mixed_path = g_strdup(f->path);
            v->mixed_id = g_strdup(f->source_id);
        }
    }
    if (!v->mixed && v->source_id && v->manifest_source_id && *v->manifest_source_id &&
        strcmp(v->source_id, v->manifest_source_id) != 0) {
        v->mixed = 1;
        v->mixed_path = g_strdup("qmoe.json");
        v->mixed_id = g_strdup(v->manifest_source_id);
    }
    od_view_count(v);
    return v;
}

void od_view_close(od_view *v)
{
    if (!v)
        return;
    od_jobs_free(v->all_jobs);
    if (v->jobs)
        g_ptr_array_free(v->jobs, TRUE);
    for (guint i = 0; v->placeholders && i < v->placeholders->len; i++) {
        od_job_clear(v->placeholders->pdata[i]);
        g_free(v->placeholders->pdata[i]);
    }
    if (v->placeholders)
        g_ptr_array_free(v->placeholders, TRUE);
    for (guint i = 0; v->tmps && i < v->tmps->len; i++) {
        g_free(g_array_index(v->tmps, od_tmp, i).path);
        g_free(g_array_index(v->tmps, od_tmp, i).final);
    }
    if (v->tmps)
        g_array_free(v->tmps, TRUE);
    if (v->live_pids)
        g_array_free(v->live_pids, TRUE);
    if (v->times)
        g_array_free(v->times, TRUE);
    if (v->sizes)
        g_array_free(v->sizes, TRUE);
    if (v->unreadable)
        g_ptr_array_free(v->unreadable, TRUE);
    if (v->by_path)
        g_hash_table_destroy(v->by_path);
    if (v->files)
        g_ptr_array_free(v->files, TRUE);
    layout_shape_free(&v->shape);
    g_free(v->layer_sel);
    g_free(v->expert_sel);
    g_free(v->layer_done);
    g_free(v->state);
    g_free(v->prog_layers);
    g_free(v->prog_experts);
    g_free(v->layout_name);
    g_free(v->manifest_source_id);
    g_free(v->m_layers);
    g_free(v->m_experts);
    g_free(v->source_gap);
    g_free(v->source_id);
    g_free(v->mixed_path);
    g_free(v->mixed_id);
    g_clear_error(&v->state_file_error);
    g_free(v->out);
    g_free(v);
}
