/* status_snap.c - taking a snapshot of an extraction directory (status.h) */
#include "status.h"
#include "format/checkpoint.h"
#include "base/fs.h"
#include "format/layout.h"
#include "outdir/outdir.h"
#include "outdir/progress.h"
#include "outdir/view.h"
#include "base/util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- jobs ---- */

/* One job of the view (outdir/view.h), whose state and liveness are
 * decided there, the same for qmoe-verify. */
static void job_from(od_job *o, qs_job *j)
{
    memset(j, 0, sizeof *j);
    j->heartbeat_age = -1;
    j->dir = g_strdup(o->dir);
    j->shard = o->shard;
    j->shards = o->shards;
    j->present = o->present;
    j->state = g_strdup(o->state);
    j->pid = o->pid;
    j->stale_lock = o->stale_lock;
    j->remote = o->remote;
    if (o->present) {
        progress *p = &o->prog;
        j->host = g_strdup(p->host);
        j->heartbeat_age = p->updated > 0 ? qm_now() - p->updated : -1;
        j->started = p->started;
        j->updated = p->updated;
        j->files_done = p->files_done;
        j->files_planned = p->files_planned;
        j->bytes_done = p->bytes_done;
        j->bytes_planned = p->bytes_planned;
        j->experts_done = p->experts_done;
        j->experts_planned = p->experts_planned;
        j->current = g_strdupv(p->current);
        j->last_error = g_strdup(p->last_error);
        j->log = g_strdup(p->log);
        /* optional selection lists (not every writer has them) */
        j->layers = g_strdup(p->layers);
        j->experts = g_strdup(p->experts);
    }
    if (!j->current)
        j->current = g_new0(char *, 1);
}

static void job_clear(qs_job *j)
{
    g_free(j->host);
    g_free(j->dir);
    g_free(j->state);
    g_strfreev(j->current);
    g_free(j->last_error);
    g_free(j->log);
    g_free(j->layers);
    g_free(j->experts);
}

/* The view's jobs (the main one, or the shard parts) and the whole. */
static void load_jobs(qs_snap *s, const od_view *v)
{
    s->sharded = v->sharded;
    s->n_jobs = (int)v->jobs->len;
    s->jobs = g_new0(qs_job, s->n_jobs > 0 ? s->n_jobs : 1);
    for (int i = 0; i < s->n_jobs; i++)
        job_from(v->jobs->pdata[i], &s->jobs[i]);
    s->state = g_strdup(v->state);
    s->pid = v->pid;

    /* the whole */
    double last_err_t = -1;
    s->started = 0;
    s->updated = 0;
    for (int i = 0; i < s->n_jobs; i++) {
        qs_job *j = &s->jobs[i];
        if (j->present) {
            if (j->started > 0 && (s->started == 0 || j->started < s->started))
                s->started = j->started;
            s->updated = MAX(s->updated, j->updated);
            if (!s->log && j->log)
                s->log = g_strdup(j->log);
        }
        if (j->last_error && j->updated > last_err_t) {
            last_err_t = j->updated;
            g_free(s->last_error);
            s->last_error = g_strdup(j->last_error);
        }
    }
    if (s->started > 0) {
        int running = strcmp(s->state, "running") == 0;
        s->elapsed = (running ? s->now : s->updated) - s->started;
        if (s->elapsed < 0)
            s->elapsed = 0;
    }
}

/* ---- the expected set: the view's, as rows ---- */

static void expected_set(qs_snap *s, const od_view *v)
{
    s->expected_from = v->expected_from;
    s->has_manifest = v->has_manifest;
    s->manifest_complete = v->manifest_complete;
    s->source_gap = g_strdup(v->source_gap);
    s->partial = v->partial;
    s->no_other = v->no_other;
    if (s->partial) {
        s->sel_layers = g_strdup(v->has_manifest ? v->m_layers : v->prog_layers);
        s->sel_experts = g_strdup(v->has_manifest ? v->m_experts : v->prog_experts);
    }
    s->n_layers = v->shape.n_layers;
    s->n_experts = v->shape.n_experts;
    s->layers = g_new0(qs_layer, s->n_layers > 0 ? s->n_layers : 1);
    for (int l = 0; l < s->n_layers; l++) {
        s->layers[l].layer = l;
        od_view_layer_complete(v, l, &s->layers[l].done, &s->layers[l].expected);
    }
    s->experts_expected = v->experts_expected;
    /* the renderers show experts_done - unexpected */
    s->experts_done = v->experts_complete + v->experts_unexpected;
    s->unexpected = v->experts_unexpected;
    s->layers_expected = v->layers_expected;
    s->layers_complete = v->layers_complete;
    /* the MTP block's rows follow the decoder's (layout.h) */
    s->mtp_first = lt_decoder_layers(&v->shape);
    s->n_mtp = v->shape.n_mtp;
    s->mtp_experts_expected = v->mtp_experts_expected;
    s->mtp_experts_done = v->mtp_experts_complete;
    s->mtp_layers_expected = v->mtp_layers_expected;
    s->mtp_layers_complete = v->mtp_layers_complete;
    s->other_expected = v->others_expected;
    s->other_done = v->others_complete;

    /* planned bytes: qmoe.json's, else every job's plan */
    s->bytes_planned = v->m_bytes;
    int64_t bytes = 0;
    int have = 0;
    for (int i = 0; i < s->n_jobs; i++)
        if (s->jobs[i].present) {
            have++;
            bytes += (int64_t)s->jobs[i].bytes_planned;
        }
    if (s->bytes_planned < 0 && have == s->n_jobs && have > 0)
        s->bytes_planned = bytes;
}

/* ---- bytes and rate ---- */

typedef struct {
    double time;
    uint64_t size;
} tick;

static gint cmp_tick(gconstpointer a, gconstpointer b)
{
    const tick *x = a, *y = b;
    return x->time < y->time ? -1 : x->time > y->time;
}

static void figures(qs_snap *s, const od_view *v)
{
    s->journal_records = v->journal_records;
    s->journal_bad = v->journal_bad;
    /* bytes: the jobs count tensor bytes like the plan does, so prefer
     * them; the records (file sizes) for a directory without progress;
     * the files themselves when there is neither */
    int have_prog = 0;
    int64_t prog_bytes = 0, rec_bytes = 0;
    for (int i = 0; i < s->n_jobs; i++)
        if (s->jobs[i].present) {
            have_prog = 1;
            prog_bytes += (int64_t)s->jobs[i].bytes_done;
        }
    for (guint i = 0; i < v->files->len; i++) {
        const od_file *f = v->files->pdata[i];
        if (f->recorded)
            rec_bytes += (int64_t)f->rec_size;
    }
    s->bytes_done = have_prog ? prog_bytes : v->n_records ? rec_bytes : v->bytes_present;

    /* rate: files finished in the last window, ending now while running
     * (so a stall shows as a falling rate) or at the last record */
    s->rate_files = s->rate_bytes = -1;
    guint n_t = v->times->len;
    if (n_t > 0) {
        tick *ticks = g_new(tick, n_t);
        for (guint i = 0; i < n_t; i++)
            ticks[i] = (tick){g_array_index(v->times, double, i),
                              g_array_index(v->sizes, uint64_t, i)};
        qsort(ticks, n_t, sizeof *ticks, (int (*)(const void *, const void *))cmp_tick);
        int running = strcmp(s->state, "running") == 0;
        double last = ticks[n_t - 1].time;
        double t_end = running ? MAX(s->now, last) : last;
        double t_begin = t_end - QS_RATE_WINDOW;
        double first = s->started > 0 ? s->started : ticks[0].time;
        if (t_begin < first)
            t_begin = first;
        uint64_t n = 0, b = 0;
        for (guint i = n_t; i-- > 0;) {
            if (ticks[i].time <= t_begin)
                break;
            n++;
            b += ticks[i].size;
        }
        double w = t_end - t_begin;
        if (w >= 0.5 && n > 0) {
            s->rate_window = w;
            s->rate_files = (double)n / w;
            s->rate_bytes = (double)b / w;
        }
        g_free(ticks);
    }
}

/* ---- the snapshot ---- */

static gint cmp_flight(gconstpointer a, gconstpointer b)
{
    return strcmp(((const qs_flight *)a)->path, ((const qs_flight *)b)->path);
}

static void add_flight(GArray *a, const char *path, pid_t pid, int has_tmp)
{
    for (guint i = 0; i < a->len; i++) {
        qs_flight *f = &g_array_index(a, qs_flight, i);
        if (strcmp(f->path, path) == 0) {
            f->has_tmp |= has_tmp;
            if (has_tmp)
                f->pid = pid;
            f->alive = fs_pid_alive(f->pid);
            return;
        }
    }
    qs_flight f = {g_strdup(path), pid, fs_pid_alive(pid), has_tmp};
    g_array_append_val(a, f);
}

/* In flight: the running jobs' current files and the live temporaries;
 * the dead writers' temporaries apart. */
static void flights(qs_snap *s, const od_view *v)
{
    GArray *fl = g_array_new(FALSE, FALSE, sizeof(qs_flight));
    GArray *stale = g_array_new(FALSE, FALSE, sizeof(qs_flight));
    for (int i = 0; i < s->n_jobs; i++)
        if (strcmp(s->jobs[i].state, "running") == 0)
            for (int k = 0; s->jobs[i].current[k]; k++)
                add_flight(fl, s->jobs[i].current[k], s->jobs[i].pid, 0);
    for (guint i = 0; i < v->tmps->len; i++) {
        const od_tmp *t = &g_array_index(v->tmps, od_tmp, i);
        if (t->alive) {
            add_flight(fl, t->final, t->pid, 1);
        } else {
            qs_flight f = {g_strdup(t->final), t->pid, 0, 1};
            g_array_append_val(stale, f);
        }
    }
    g_array_sort(fl, cmp_flight);
    g_array_sort(stale, cmp_flight);
    s->n_flight = (int)fl->len;
    s->flight = (qs_flight *)g_array_free(fl, FALSE);
    s->n_stale_tmp = (int)stale->len;
    s->stale_tmp = (qs_flight *)g_array_free(stale, FALSE);
    for (int i = 0; i < s->n_flight; i++) {
        int e, l;
        const char *b = strrchr(s->flight[i].path, '/');
        if (b && od_parse_expert(b + 1, &e, &l) == 0 && l < s->n_layers)
            s->layers[l].in_flight++;
    }
}

qs_snap *qs_snap_take(const char *out, GError **err)
{
    double t0 = qm_monotonic();
    struct stat st;
    if (stat(out, &st) != 0) {
        qm_set_errno(err, errno, "cannot open", out);
        return NULL;
    }
    if (!S_ISDIR(st.st_mode)) {
        g_set_error(err, QM_ERROR, QM_ERR_IO, "'%s' is not a directory", out);
        return NULL;
    }
    od_view *v = od_view_open(out, err);
    if (!v)
        return NULL;
    if (v->state_file_error) {
        g_propagate_error(err, v->state_file_error);
        v->state_file_error = NULL;
        od_view_close(v);
        return NULL;
    }
    if (!v->has_qmoe_dir && !v->has_manifest_file && !v->has_experts_dir) {
        g_set_error(err, QM_ERROR, QM_ERR_IO,
                    "'%s' is not an extraction directory: it has no .qmoe/, "
                    "qmoe.json or experts/", out);
        od_view_close(v);
        return NULL;
    }

    qs_snap *s = g_new0(qs_snap, 1);
    s->out = g_strdup(out);
    s->now = qm_now();
    s->elapsed = s->eta = -1;
    load_jobs(s, v);
    expected_set(s, v);
    figures(s, v);
    flights(s, v);

    /* complete: the one verdict (outdir.h) on the view's facts */
    od_facts facts = od_view_facts(v);
    od_verdict verdict = od_complete(&facts);
    s->complete = verdict == OD_COMPLETE;
    s->why = s->complete ? NULL : od_verdict_name(verdict);

    if (strcmp(s->state, "running") == 0 && s->rate_files > 0) {
        int64_t left_b = s->bytes_planned >= 0 && s->bytes_done >= 0
                             ? s->bytes_planned - s->bytes_done : -1;
        int64_t left_f = s->experts_expected - (s->experts_done - s->unexpected) +
                         (s->other_expected > 0 ? s->other_expected - s->other_done : 0);
        if (left_b >= 0 && s->rate_bytes > 0)
            s->eta = (double)left_b / s->rate_bytes;
        else if (left_f >= 0)
            s->eta = (double)left_f / s->rate_files;
        if (s->eta < 0)
            s->eta = 0;
    }
    od_view_close(v);
    s->took_ms = (qm_monotonic() - t0) * 1e3;
    return s;
}

void qs_snap_free(qs_snap *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n_jobs; i++)
        job_clear(&s->jobs[i]);
    g_free(s->jobs);
    for (int i = 0; i < s->n_flight; i++)
        g_free(s->flight[i].path);
    g_free(s->flight);
    for (int i = 0; i < s->n_stale_tmp; i++)
        g_free(s->stale_tmp[i].path);
    g_free(s->stale_tmp);
    g_free(s->layers);
    g_free(s->out);
    g_free(s->state);
    g_free(s->last_error);
    g_free(s->log);
    g_free(s->sel_layers);
    g_free(s->sel_experts);
    g_free(s->source_gap);
    g_free(s);
}
