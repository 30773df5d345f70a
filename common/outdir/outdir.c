/* outdir.c - see outdir.h */
#include "outdir/outdir.h"
#include "base/fs.h"
#include "base/util.h"
#include "outdir/manifest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *od_mtp_breakdown(int decoder_layers, int mtp_layers, int per_layer)
{
    if (mtp_layers <= 0)
        return NULL;
    if (decoder_layers <= 0) /* a selection of MTP layers only */
        return g_strdup_printf("MTP %d layer%s x %d", mtp_layers,
                               mtp_layers == 1 ? "" : "s", per_layer);
    return g_strdup_printf("%d layer%s x %d + MTP %d layer%s x %d", decoder_layers,
                           decoder_layers == 1 ? "" : "s", per_layer, mtp_layers,
                           mtp_layers == 1 ? "" : "s", per_layer);
}

char *od_plan_mtp_breakdown(const plan *p)
{
    const lt_shape *s = &p->shape;
    int dec = 0, mtp = 0, per = 0;
    for (int l = 0; l < s->n_layers; l++)
        if (p->layer_sel[l] && s->is_moe[l])
            *(lt_is_mtp(s, l) ? &mtp : &dec) += 1;
    for (int e = 0; e < s->n_experts; e++)
        per += p->expert_sel[e];
    return od_mtp_breakdown(dec, mtp, per);
}

/* ---- job records ---- */

void od_job_read(const char *out, const char *rel, od_job *j)
{
    memset(j, 0, sizeof *j);
    j->dir = g_strdup(rel);
    if (od_parse_state_dir(rel, &j->shard, &j->shards)) {
        j->shard = 0;
        j->shards = 1;
    }
    char *pp = g_build_filename(out, rel, OD_PROGRESS, NULL);
    char *lk = g_build_filename(out, rel, OD_LOCK, NULL);
    j->lock_pid = progress_lock_owner(lk, &j->lock_held);
    if (progress_read(pp, &j->prog, NULL) == 0) {
        const progress *p = &j->prog;
        j->present = 1;
        j->pid = p->pid;
        j->remote = p->host && strcmp(p->host, progress_host()) != 0;
        if (strcmp(p->state, "running") == 0) {
            /* a "running" file whose writer is gone: it died without saying so */
            j->alive = progress_owner_alive(p->host, p->pid, p->pid_start, p->updated,
                                            &j->remote);
            j->state = g_strdup(j->alive ? "running" : "crashed");
            j->stale_lock = !j->alive && j->lock_pid > 0;
        } else {
            j->state = g_strdup(p->state);
            j->stale_lock = j->lock_pid > 0 && !j->lock_held;
        }
    } else {
        memset(&j->prog, 0, sizeof j->prog);
        j->pid = j->lock_pid;
        j->alive = j->lock_pid > 0 && j->lock_held;
        j->stale_lock = j->lock_pid > 0 && !j->lock_held;
        j->state = g_strdup(j->alive ? "running" : j->stale_lock ? "crashed" : "none");
    }
    g_free(pp);
    g_free(lk);
}

void od_job_clear(od_job *j)
{
    if (!j)
        return;
    g_free(j->dir);
    g_free(j->state);
    progress_clear(&j->prog);
    memset(j, 0, sizeof *j);
}

GArray *od_jobs_read(const char *out)
{
    GArray *a = g_array_new(FALSE, TRUE, sizeof(od_job));
    od_job j;
    od_job_read(out, OD_STATE, &j);
    g_array_append_val(a, j);
    char *q = g_build_filename(out, OD_STATE, NULL);
    GDir *d = g_dir_open(q, 0, NULL);
    const char *n;
    while (d && (n = g_dir_read_name(d))) {
        int i, k;
        if (od_parse_part_dir(n, &i, &k))
            continue;
        char *rel = g_strconcat(OD_STATE "/", n, NULL);
        od_job_read(out, rel, &j);
        g_array_append_val(a, j);
        g_free(rel);
    }
    if (d)
        g_dir_close(d);
    g_free(q);
    return a;
}

void od_jobs_free(GArray *jobs)
{
    if (!jobs)
        return;
    for (guint i = 0; i < jobs->len; i++)
        od_job_clear(&g_array_index(jobs, od_job, i));
    g_array_free(jobs, TRUE);
}

/* ---- the verdict ---- */

od_verdict od_complete(const od_facts *f)
{
    if (f->live_writer)
        return OD_RUNNING;
    if (f->mixed)
        return OD_MIXED;
    if (f->source_gap)
        return OD_SOURCE_GAP;
    if (f->has_job_record && !f->has_manifest)
        return OD_NO_MANIFEST;
    if (f->has_manifest && !f->manifest_complete)
        return OD_NOT_FINISHED;
    if (f->experts_present < f->experts_expected ||
        (f->others_expected > 0 && f->others_present < f->others_expected))
        return OD_MISSING;
    if (f->experts_expected <= 0 && f->others_expected <= 0)
        return OD_NOTHING;
    if (f->unexpected > 0)
        return OD_UNEXPECTED;
    return OD_COMPLETE;
}

const char *od_verdict_name(od_verdict v)
{
    static const char *names[] = {"complete", "running", "mixed sources",
                                  "experts missing from the source",
                                  "qmoe.json not written", "not finished",
                                  "files missing", "nothing expected",
                                  "unexpected files"};
    return v <= OD_UNEXPECTED ? names[v] : "?";
}

/* ---- source completeness ---- */

char *od_plan_gap(const plan *p, int *count)
{
    int nl = p->shape.n_layers, ne = p->shape.n_experts;
    *count = 0;
    if (nl <= 0 || ne <= 0)
        return NULL;
    uint8_t *have = g_new0(uint8_t, (gsize)nl * (gsize)ne);
    for (int i = 0; i < p->n_files; i++) {
        const plan_file *f = &p->files[i];
        if (f->kind == MF_EXPERT && f->layer >= 0 && f->layer < nl && f->expert >= 0 &&
            f->expert < ne)
            have[(gsize)f->layer * (gsize)ne + (gsize)f->expert] = 1;
    }
    for (int i = 0; i < p->n_blocked; i++) { /* in the source, not yet readable */
        const plan_blocked *b = &p->blocked[i];
        if (b->kind == MF_EXPERT && b->layer >= 0 && b->layer < nl && b->expert >= 0 &&
            b->expert < ne)
            have[(gsize)b->layer * (gsize)ne + (gsize)b->expert] = 1;
    }
    /* per layer: the selected experts it lacks, as a list */
    char **gap = g_new0(char *, nl);
    uint8_t *miss = g_new0(uint8_t, ne);
    for (int l = 0; l < nl; l++) {
        if (!p->layer_sel[l] || !p->shape.is_moe[l])
            continue;
        int n = 0;
        for (int e = 0; e < ne; e++) {
            miss[e] = p->expert_sel[e] && !have[(gsize)l * (gsize)ne + (gsize)e];
            n += miss[e];
        }
        if (n) {
            gap[l] = qm_list_format(miss, ne);
            *count += n;
        }
    }
    GString *s = NULL;
    for (int l = 0; l < nl;) {
        if (!gap[l]) {
            l++;
            continue;
        }
        int k = l + 1; /* a run of layers with the same gap, MTP apart */
        while (k < nl && gap[k] && strcmp(gap[k], gap[l]) == 0 &&
               lt_is_mtp(&p->shape, k) == lt_is_mtp(&p->shape, l))
            k++;
        if (!s)
            s = g_string_new(NULL);
        else
            g_string_append_c(s, '\n');
        if (k - l > 1)
            g_string_append_printf(s, "layers %d-%d%s: ", l, k - 1,
                                   lt_is_mtp(&p->shape, l) ? " (MTP)" : "");
        else
            g_string_append_printf(s, "layer %d%s: ", l,
                                   lt_is_mtp(&p->shape, l) ? " (MTP)" : "");
        g_string_append_printf(s, "expert%s %s missing from the source (config.json "
                               "declares %d)", strpbrk(gap[l], ",-") ? "s" : "",
                               gap[l], ne);
        l = k;
    }
    for (int l = 0; l < nl; l++)
        g_free(gap[l]);
    g_free(gap);
    g_free(miss);
    g_free(have);
    return s ? g_string_free(s, FALSE) : NULL;
}

char *od_plan_blocked(const plan *p, const ckpt *ck, int one_line, char **layers_ok)
{
    int nl = p->shape.n_layers;
    if (layers_ok) {
        /* the selected layers none of whose files is blocked (none at all
         * when the globals are: every extraction has them) */
        uint8_t *ok = g_new0(uint8_t, nl > 0 ? nl : 1);
        int globals = 0;
        for (int l = 0; l < nl; l++)
            ok[l] = p->layer_sel[l];
        for (int i = 0; i < p->n_blocked; i++) {
            if (p->blocked[i].layer >= 0 && p->blocked[i].layer < nl)
                ok[p->blocked[i].layer] = 0;
            globals |= p->blocked[i].kind == MF_GLOBALS;
        }
        int any = 0;
        for (int l = 0; l < nl && !globals; l++)
            any |= ok[l];
        *layers_ok = any ? qm_list_format(ok, nl) : NULL;
        g_free(ok);
    }
    if (p->n_blocked == 0)
        return NULL;
    GString *s = g_string_new(NULL);
    uint8_t *lay = g_new0(uint8_t, nl > 0 ? nl : 1);
    for (int sh = 0; sh < ck->n_shards; sh++) {
        int n = 0, globals = 0, any_layer = 0;
        memset(lay, 0, (size_t)(nl > 0 ? nl : 1));
        GString *other = g_string_new(NULL);
        for (int i = 0; i < p->n_blocked; i++) {
            const plan_blocked *b = &p->blocked[i];
            if (b->shard != sh)
                continue;
            n++;
            if (b->layer >= 0 && b->layer < nl)
                lay[b->layer] = any_layer = 1;
            globals |= b->kind == MF_GLOBALS;
            if (b->kind == MF_OTHER)
                g_string_append_printf(other, ", %s", b->path);
        }
        if (n) {
            const ckpt_shard *x = &ck->shards[sh];
            if (s->len)
                g_string_append(s, one_line ? "; " : "\n");
            g_string_append_printf(s, "shard '%s' (%s) blocks %d file%s:", x->name,
                                   x->missing ? x->missing : "missing", n,
                                   n == 1 ? "" : "s");
            const char *sep = " ";
            if (any_layer) {
                char *l = qm_list_format(lay, nl);
                g_string_append_printf(s, " layer%s %s", strpbrk(l, ",-") ? "s" : "", l);
                g_free(l);
                sep = ", ";
            }
            if (globals) {
                g_string_append_printf(s, "%sglobals.safetensors", sep);
                sep = ", ";
            }
            if (other->len)
                g_string_append_printf(s, "%s%s*", sep, other->str + 2);
        }
        g_string_free(other, TRUE);
    }
    g_free(lay);
    return g_string_free(s, FALSE);
}

/* ---- resuming ---- */

int od_record_in_place(uint64_t rec_size, const char *rec_source_id, int64_t size_now,
                       const char *out_id)
{
    int same_source = !rec_source_id || !rec_source_id[0] || !out_id || !out_id[0] ||
                      strcmp(rec_source_id, out_id) == 0;
    return same_source && size_now >= 0 && (uint64_t)size_now == rec_size;
}

/* Marks in done[] the plan files that a journal records and that are in
 * place with the recorded size, from this source (its identity, and each
 * tensor's source file and range). */
void od_find_done(const plan *p, const ckpt *ck, const char *source_id,
                      const char *out, GArray *recs, uint8_t *done)
{
    GHashTable *by = g_hash_table_new(g_str_hash, g_str_equal);
    for (guint i = 0; i < recs->len; i++) {
        mf_file *r = &g_array_index(recs, mf_file, i);
        g_hash_table_insert(by, r->path, r);
    }
    for (int i = 0; i < p->n_files; i++) {
        const plan_file *f = &p->files[i];
        mf_file *r = g_hash_table_lookup(by, f->path);
        if (!r || r->n_tensors != f->n)
            continue;
        int same = 1;
        for (int k = 0; k < f->n && same; k++)
            same = strcmp(r->tensors[k].name, f->t[k].name) == 0 &&
                   r->tensors[k].end - r->tensors[k].begin == f->t[k].nbytes &&
                   r->tensors[k].src_offset == f->t[k].src_offset &&
                   g_strcmp0(r->tensors[k].src_file, ck->shards[f->t[k].shard].name) == 0;
        char *path = g_build_filename(out, f->path, NULL);
        done[i] = same && od_record_in_place(r->size, r->source_id, fs_file_size(path),
                                             source_id);
        g_free(path);
    }
    g_hash_table_destroy(by);
}

/* Final path (relative to OUT) of the temporary `name` found in `dir`
 * ("" for OUT itself). Caller frees. */
static char *tmp_final(const char *dir, const char *name)
{
    const char *t = g_strrstr(name, ".tmp.");
    char *base = g_strndup(name, (gsize)(t - name));
    char *rel = *dir ? g_build_filename(dir, base, NULL) : g_strdup(base);
    g_free(base);
    return rel;
}

/* Removes temporaries left by extractors that died. A temporary's pid says
 * nothing about a process on another machine that shares OUT, so the pid
 * is not what decides: a temporary of a file of this part is stale because
 * only the holder of this part's lock (us) writes such files; one of a
 * file outside the plan (config, tokenizer, index, qmoe.json) is stale
 * because every writer of those holds .qmoe/manifest.lock, which the
 * caller holds. Temporaries of other parts' files are left to those parts
 * (an unsharded run owns every file); one outside the plan in a
 * subdirectory (from a run with another --layers/--experts) goes only when
 * unsharded and its pid is dead, as nothing else can tell. */
void od_remove_stale_tmps(const char *out, const plan *p, int shard, int shards)
{
    GHashTable *owner = g_hash_table_new(g_str_hash, g_str_equal);
    for (int i = 0; i < p->n_files; i++)
        g_hash_table_insert(owner, p->files[i].path, GINT_TO_POINTER(p->files[i].part + 1));
    const char *dirs[] = {"", od_subdirs[0], od_subdirs[1], od_subdirs[2], NULL};
    for (int i = 0; dirs[i]; i++) {
        char *dir = g_build_filename(out, dirs[i], NULL);
        GDir *d = g_dir_open(dir, 0, NULL);
        const char *n;
        while (d && (n = g_dir_read_name(d))) {
            if (!fs_is_tmp(n))
                continue;
            char *rel = tmp_final(dirs[i], n);
            int part = GPOINTER_TO_INT(g_hash_table_lookup(owner, rel)) - 1;
            pid_t pid = fs_tmp_pid(n);
            if (part == shard || (part < 0 && !*dirs[i]) ||
                (part < 0 && shards == 1 && (!fs_pid_alive(pid) || pid == getpid()))) {
                char *path = g_build_filename(dir, n, NULL);
                unlink(path);
                g_free(path);
            }
            g_free(rel);
        }
        if (d)
            g_dir_close(d);
        g_free(dir);
    }
    g_hash_table_destroy(owner);
}

/* ---- starting over ---- */

static int remove_rel(const char *out, const char *rel, int *removed, GError **err)
{
    /* recorded paths come from a file: only our own names, never "..". */
    if (!*rel || rel[0] == '/' || strstr(rel, ".."))
        return 0;
    char *path = g_build_filename(out, rel, NULL);
    int rc = 0;
    if (unlink(path) == 0)
        (*removed)++;
    else if (errno != ENOENT)
        rc = qm_set_errno(err, errno, "cannot remove", path);
    g_free(path);
    return rc;
}

static int is_output_tmp(const char *sub, const char *n)
{
    if (!fs_is_tmp(n))
        return 0;
    if (*sub)
        return strstr(n, ".safetensors.tmp.") != NULL;
    return g_str_has_prefix(n, "qmoe.json.tmp.") ||
           g_str_has_prefix(n, "model.safetensors.index.json.tmp.") ||
           g_str_has_prefix(n, "globals.safetensors.tmp.");
}

int od_restart(const char *out, int *removed, GError **err)
{
    *removed = 0;
    GArray *recs = g_array_new(FALSE, TRUE, sizeof(mf_file));
    int rc = mf_journals_read_all(out, recs, err);
    char *mp = g_build_filename(out, OD_MANIFEST, NULL);
    manifest *m = rc == 0 && g_file_test(mp, G_FILE_TEST_EXISTS)
                      ? manifest_load(mp, NULL) : NULL;
    g_free(mp);
    for (guint i = 0; i < recs->len && rc == 0; i++)
        rc = remove_rel(out, g_array_index(recs, mf_file, i).path, removed, err);
    for (int i = 0; m && i < m->n_files && rc == 0; i++)
        rc = remove_rel(out, m->files[i].path, removed, err);
    manifest_free(m);
    mf_files_free(recs);
    static const char *const tops[] = {"", "experts", "layers", "other", NULL};
    for (int i = 0; tops[i] && rc == 0; i++) {
        char *dir = g_build_filename(out, tops[i], NULL);
        GDir *d = g_dir_open(dir, 0, NULL);
        const char *n;
        while (d && (n = g_dir_read_name(d)) && rc == 0)
            if (is_output_tmp(tops[i], n)) {
                char *rel = *tops[i] ? g_strdup_printf("%s/%s", tops[i], n) : g_strdup(n);
                rc = remove_rel(out, rel, removed, err);
                g_free(rel);
            }
        if (d)
            g_dir_close(d);
        g_free(dir);
    }
    static const char *const files[] = {OD_MANIFEST, OD_INDEX,
                                        OD_STATE "/" OD_JOURNAL, OD_STATE "/" OD_PROGRESS,
                                        OD_SOURCE_JSON, NULL};
    for (int i = 0; files[i] && rc == 0; i++)
        rc = remove_rel(out, files[i], removed, err);
    char *q = g_build_filename(out, OD_STATE, NULL);
    GDir *d = g_dir_open(q, 0, NULL);
    const char *n;
    int pi, pn;
    while (d && (n = g_dir_read_name(d)) && rc == 0)
        if (od_parse_part_dir(n, &pi, &pn) == 0) {
            char *j = g_strconcat(OD_STATE "/", n, "/" OD_JOURNAL, NULL);
            char *p = g_strconcat(OD_STATE "/", n, "/" OD_PROGRESS, NULL);
            rc = remove_rel(out, j, removed, err);
            if (rc == 0)
                rc = remove_rel(out, p, removed, err);
            g_free(j);
            g_free(p);
        }
    if (d)
        g_dir_close(d);
    g_free(q);
    return rc;
}
