/* status_snap.c - taking a snapshot of an extraction directory (status.h) */
#include "status.h"
#include "format/checkpoint.h"
#include "base/fs.h"
#include "format/layout.h"
#include "outdir/outdir.h"
#include "outdir/progress.h"
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

typedef struct {
    int layer, expert;
} pair;

typedef struct {
    GArray *experts;      /* pair: complete expert files */
    GPtrArray *tmps;      /* char*: temporaries, relative to OUT */
    int64_t other_done;   /* complete non-expert files */
    int64_t stat_bytes;   /* sizes (only when asked) */
} scan;

/* One readdir of OUT/sub. sizes: fstatat each complete file (scan-only). */
static int scan_dir(const char *out, const char *sub, scan *sc, int experts,
                    int sizes)
{
    char *path = sub ? g_build_filename(out, sub, NULL) : g_strdup(out);
    DIR *d = opendir(path);
    g_free(path);
    if (!d)
        return -1;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        if (n[0] == '.')
            continue;
        if (fs_is_tmp(n)) {
            if (strstr(n, ".safetensors.tmp.") || !sub)
                g_ptr_array_add(sc->tmps, sub ? g_strdup_printf("%s/%s", sub, n)
                                              : g_strdup(n));
            continue;
        }
        if (!g_str_has_suffix(n, ".safetensors"))
            continue;
        pair p;
        if (experts) {
            if (od_parse_expert(n, &p.expert, &p.layer))
                continue;
            g_array_append_val(sc->experts, p);
        } else {
            sc->other_done++;
        }
        if (sizes) {
            struct stat st;
            if (fstatat(dirfd(d), n, &st, 0) == 0)
                sc->stat_bytes += st.st_size;
        }
    }
    closedir(d);
    return 0;
}

/* Sets *mixed when qmoe.json's "source"."id" and source.json's differ
 * (both present). Reads only the head of qmoe.json, where "source" is. */
static void manifest_src_id(const char *mpath, const cJSON *sj, int *mixed)
{
    *mixed = 0;
    if (!sj)
        return;
    int fd = fs_open_regular(mpath, O_RDONLY, "cannot open", NULL);
    if (fd < 0)
        return;
    char buf[4096];
    ssize_t r = pread(fd, buf, sizeof buf - 1, 0);
    close(fd);
    buf[r > 0 ? r : 0] = 0;
    const char *src = strstr(buf, "\"source\":{");
    const char *id = src ? strstr(src, "\"id\":\"") : NULL;
    if (!id)
        return;
    id += 6;
    const char *want = od_source_id(sj);
    *mixed = *want && (strncmp(id, want, strlen(want)) != 0 || id[strlen(want)] != '"');
}

/* ---- jobs ---- */

/* One state directory through the module's job reader (outdir.h): the
 * state and liveness are decided there, the same for qmoe-verify. */
static void job_load(const char *out, const char *rel, st_job *j)
{
    memset(j, 0, sizeof *j);
    j->heartbeat_age = -1;
    od_job o;
    od_job_read(out, rel, &o);
    j->dir = g_strdup(rel);
    j->shards = 1;
    j->present = o.present;
    j->state = g_strdup(o.state);
    j->pid = o.pid;
    j->stale_lock = o.stale_lock;
    j->remote = o.remote;
    if (o.present) {
        progress *p = &o.prog;
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
        j->current = p->current;
        p->current = NULL;
        j->last_error = p->last_error;
        p->last_error = NULL;
        j->log = p->log;
        p->log = NULL;
        j->shard = p->shard;
        j->shards = p->shards;
        /* optional selection lists (not every writer has them) */
        j->layers = p->layers;
        p->layers = NULL;
        j->experts = p->experts;
        p->experts = NULL;
    }
    if (!j->current)
        j->current = g_new0(char *, 1);
    od_job_clear(&o);
}

static void job_clear(st_job *j)
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

/* The main job, or the shard jobs when a sharded run is newer. */
static void load_jobs(st_snap *s)
{
    char *q = g_build_filename(s->out, ".qmoe", NULL);
    st_job main_job;
    job_load(s->out, ".qmoe", &main_job);
    GArray *sh = g_array_new(FALSE, TRUE, sizeof(st_job));
    DIR *d = opendir(q);
    struct dirent *de;
    int n_of = 0;
    while (d && (de = readdir(d))) {
        int i, n;
        if (sscanf(de->d_name, "shard-%d-of-%d", &i, &n) != 2 || n < 1 || i < 0 ||
            i >= n)
            continue;
        char *rel = g_strdup_printf(".qmoe/%s", de->d_name);
        st_job j;
        job_load(s->out, rel, &j);
        j.shard = i;
        j.shards = n;
        if (n > n_of)
            n_of = n;
        g_array_append_val(sh, j);
        g_free(rel);
    }
    if (d)
        closedir(d);
    g_free(q);
    double sh_updated = 0;
    for (guint i = 0; i < sh->len; i++)
        sh_updated = MAX(sh_updated, g_array_index(sh, st_job, i).updated);
    if (sh->len > 0 && (!main_job.present || sh_updated >= main_job.updated)) {
        /* shards that have not started yet have no directory */
        for (int i = 0; i < n_of; i++) {
            int have = 0;
            for (guint k = 0; k < sh->len; k++)
                have |= g_array_index(sh, st_job, k).shard == i &&
                        g_array_index(sh, st_job, k).shards == n_of;
            if (!have) {
                st_job j = {0};
                j.dir = g_strdup_printf(".qmoe/shard-%d-of-%d", i, n_of);
                j.shard = i;
                j.shards = n_of;
                j.state = g_strdup("none");
                j.current = g_new0(char *, 1);
                g_array_append_val(sh, j);
            }
        }
        for (guint a = 1; a < sh->len; a++) /* insertion sort by shard */
            for (guint b = a; b > 0; b--) {
                st_job *x = &g_array_index(sh, st_job, b - 1);
                st_job *y = &g_array_index(sh, st_job, b);
                if (x->shard < y->shard || (x->shard == y->shard && x->shards <= y->shards))
                    break;
                st_job t = *x;
                *x = *y;
                *y = t;
            }
        job_clear(&main_job);
        s->sharded = 1;
        s->n_jobs = (int)sh->len;
        s->jobs = (st_job *)g_array_free(sh, FALSE);
    } else {
        for (guint i = 0; i < sh->len; i++)
            job_clear(&g_array_index(sh, st_job, i));
        g_array_free(sh, TRUE);
        s->n_jobs = 1;
        s->jobs = g_new(st_job, 1);
        s->jobs[0] = main_job;
    }

    /* the whole */
    const char *best = NULL;
    double last_err_t = -1;
    s->started = 0;
    s->updated = 0;
    for (int i = 0; i < s->n_jobs; i++) {
        st_job *j = &s->jobs[i];
        if (!best || state_rank(j->state) < state_rank(best)) {
            best = j->state;
            s->pid = j->pid;
        }
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
    s->state = g_strdup(best ? best : "none");
    if (s->started > 0) {
        int running = strcmp(s->state, "running") == 0;
        s->elapsed = (running ? s->now : s->updated) - s->started;
        if (s->elapsed < 0)
            s->elapsed = 0;
    }
}

/* ---- expected set ---- */

static int list_count(const char *list, int limit, uint8_t *mask)
{
    if (!list || !*list || limit <= 0)
        return -1;
    if (qm_list_parse(list, limit, mask, "list", NULL))
        return -1;
    int n = 0;
    for (int i = 0; i < limit; i++)
        n += mask[i];
    return n;
}

/* Rows for layers [0, n_layers) with `per` experts expected where
 * is_moe[l] (and lsel[l] when given). */
static void grid(st_snap *s, int n_layers, int n_experts, const uint8_t *is_moe,
                 const uint8_t *lsel, int per)
{
    s->n_layers = n_layers;
    s->n_experts = n_experts;
    s->layers = g_new0(st_layer, n_layers > 0 ? n_layers : 1);
    s->experts_expected = 0;
    for (int l = 0; l < n_layers; l++) {
        s->layers[l].layer = l;
        if ((!is_moe || is_moe[l]) && (!lsel || lsel[l]))
            s->layers[l].expected = per;
        s->experts_expected += s->layers[l].expected;
    }
}

static int from_manifest(st_snap *s)
{
    char *path = g_build_filename(s->out, "qmoe.json", NULL);
    cJSON *e = st_manifest_expected(path, NULL, &s->manifest_complete);
    g_free(path);
    if (!e)
        return -1;
    s->has_manifest = 1;
    const cJSON *gap = cJSON_GetObjectItemCaseSensitive(e, "missing_from_source");
    if (cJSON_IsString(gap) && *gap->valuestring)
        s->source_gap = g_strdup(gap->valuestring);
    int64_t nl = 0, ne = 0, count = -1, files = -1;
    double bytes = -1;
    int rc = -1;
    int64_t mtp = 0;
    if (cJSON_GetObjectItemCaseSensitive(e, "mtp_layers") &&
        qm_json_int(e, "mtp_layers", 0, 1 << 16, &mtp) != 0)
        nl = -1; /* a damaged count: the manifest cannot size the grid */
    else if (qm_json_int(e, "num_layers", 1, 1 << 16, &nl) != 0)
        nl = -1;
    if (nl > 0 && qm_json_int(e, "num_experts", 0, 1 << 16, &ne) == 0) {
        /* the MTP block's layers follow the decoder's */
        s->mtp_first = (int)nl;
        s->n_mtp = (int)mtp;
        nl += mtp;
        qm_json_int(e, "count", 0, INT64_MAX, &count);
        qm_json_int(e, "files", 0, INT64_MAX, &files);
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(e, "bytes");
        if (cJSON_IsNumber(b))
            bytes = b->valuedouble;
        const cJSON *ml = cJSON_GetObjectItemCaseSensitive(e, "moe_layers");
        const cJSON *ls = cJSON_GetObjectItemCaseSensitive(e, "layers");
        const cJSON *es = cJSON_GetObjectItemCaseSensitive(e, "experts");
        const cJSON *pa = cJSON_GetObjectItemCaseSensitive(e, "partial");
        uint8_t *moe = g_new0(uint8_t, nl), *lsel = g_new0(uint8_t, nl);
        uint8_t *esel = g_new0(uint8_t, ne > 0 ? ne : 1);
        int have_moe = cJSON_IsString(ml) && list_count(ml->valuestring, (int)nl, moe) >= 0;
        int have_l = cJSON_IsString(ls) && list_count(ls->valuestring, (int)nl, lsel) >= 0;
        int per = cJSON_IsString(es) ? list_count(es->valuestring, (int)ne, esel) : -1;
        if (per < 0)
            per = (int)ne;
        grid(s, (int)nl, (int)ne, have_moe ? moe : NULL, have_l ? lsel : NULL, per);
        if (count >= 0)
            s->experts_expected = count;
        s->partial = cJSON_IsTrue(pa);
        s->no_other = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "no_other"));
        if (cJSON_IsString(ls) && s->partial)
            s->sel_layers = g_strdup(ls->valuestring);
        if (cJSON_IsString(es) && s->partial)
            s->sel_experts = g_strdup(es->valuestring);
        if (files >= 0 && count >= 0)
            s->other_expected = files - count;
        if (bytes >= 0)
            s->bytes_planned = (int64_t)bytes;
        s->expected_from = "manifest";
        g_free(moe);
        g_free(lsel);
        g_free(esel);
        rc = 0;
    }
    cJSON_Delete(e);
    return rc;
}

/* The text-model shape from config.json through the layout table. Only
 * config and dir of the ckpt are used by layout_shape, so a checkpoint
 * without an index (there is none before the extraction ends) will do. */
static int config_shape(const char *out, lt_shape *shape)
{
    char *path = g_build_filename(out, "config.json", NULL);
    cJSON *cfg = qm_json_load(path, NULL);
    g_free(path);
    if (!cfg)
        return -1;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(cfg, "model_type");
    const layout *lt = NULL;
    for (int i = 0; layouts[i] && cJSON_IsString(mt) && !lt; i++) {
        char **types = g_strsplit(layouts[i]->model_types, " ", -1);
        for (int k = 0; types[k]; k++)
            if (strcmp(types[k], mt->valuestring) == 0)
                lt = layouts[i];
        g_strfreev(types);
    }
    int rc = -1;
    if (lt) {
        ckpt ck;
        memset(&ck, 0, sizeof ck);
        ck.dir = (char *)out;
        ck.config = cfg;
        rc = layout_shape(lt, &ck, shape, NULL);
    }
    cJSON_Delete(cfg);
    return rc;
}

static void expected_set(st_snap *s, const scan *sc)
{
    s->other_expected = -1;
    s->bytes_planned = -1;
    if (from_manifest(s) == 0)
        return;

    int64_t planned = 0, files = 0, bytes = 0;
    int have_prog = 0;
    for (int i = 0; i < s->n_jobs; i++)
        if (s->jobs[i].present) {
            have_prog++;
            planned += (int64_t)s->jobs[i].experts_planned;
            files += (int64_t)s->jobs[i].files_planned;
            bytes += (int64_t)s->jobs[i].bytes_planned;
        }
    /* progress totals are whole only when every shard has reported */
    int prog_whole = have_prog == s->n_jobs && have_prog > 0;

    lt_shape sh;
    if (config_shape(s->out, &sh) == 0) {
        const char *ls = s->jobs[0].layers, *es = s->jobs[0].experts;
        uint8_t *lsel = g_new0(uint8_t, sh.n_layers > 0 ? sh.n_layers : 1);
        uint8_t *esel = g_new0(uint8_t, sh.n_experts > 0 ? sh.n_experts : 1);
        int have_l = ls && list_count(ls, sh.n_layers, lsel) >= 0;
        int per = es ? list_count(es, sh.n_experts, esel) : -1;
        grid(s, sh.n_layers, sh.n_experts, sh.is_moe, have_l ? lsel : NULL,
             per >= 0 ? per : sh.n_experts);
        s->mtp_first = lt_decoder_layers(&sh);
        s->n_mtp = sh.n_mtp;
        s->partial = have_l || (per >= 0 && per < sh.n_experts);
        if (s->partial) {
            s->sel_layers = g_strdup(ls);
            s->sel_experts = g_strdup(es);
        }
        g_free(lsel);
        g_free(esel);
        layout_shape_free(&sh);
        s->expected_from = "config";
        if (prog_whole && planned != s->experts_expected) {
            /* a selection the config cannot show: the total is the job's */
            s->experts_expected = planned;
            s->partial = 1;
        }
    } else {
        int ml = -1, me = -1;
        for (guint i = 0; i < sc->experts->len; i++) {
            pair p = g_array_index(sc->experts, pair, i);
            ml = MAX(ml, p.layer);
            me = MAX(me, p.expert);
        }
        grid(s, ml + 1, me + 1, NULL, NULL, me + 1);
        s->expected_from = "scan";
        if (prog_whole)
            s->experts_expected = planned;
    }
    if (prog_whole) {
        s->expected_from = strcmp(s->expected_from, "scan") ? s->expected_from : "progress";
        s->other_expected = files - planned;
        s->bytes_planned = bytes;
    }
}

/* ---- journal ---- */

typedef struct {
    double time;
    uint64_t size;
} tick;

/* Reads a journal in fixed chunks: a 7 MB journal read whole costs ~1700
 * page faults, which is most of a snapshot's time. Paths are kept in
 * `paths`. A torn last line (no newline) is ignored like mf_journal_read
 * does: the file it describes is redone. */
static void read_journal(const char *path, GHashTable *sizes, GArray *ticks,
                         st_snap *s, GStringChunk *paths)
{
    int fd = fs_open_regular(path, O_RDONLY, "cannot open", NULL);
    if (fd < 0)
        return;
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
                st_rec r;
                if (st_journal_line(p, nl, &r) == 0) {
                    s->journal_records++;
                    char *key = g_string_chunk_insert(paths, r.path);
                    g_hash_table_insert(sizes, key, GSIZE_TO_POINTER(r.size + 1));
                    tick t = {r.time, r.size};
                    g_array_append_val(ticks, t);
                } else {
                    s->journal_bad++;
                }
            }
            p = nl + 1;
        }
        have = (size_t)(end - p);
        memmove(buf, p, have);
    }
    g_free(buf);
    close(fd);
}

static gint cmp_tick(gconstpointer a, gconstpointer b)
{
    const tick *x = a, *y = b;
    return x->time < y->time ? -1 : x->time > y->time;
}

static void journal_figures(st_snap *s, int *have_bytes)
{
    GHashTable *sizes = g_hash_table_new(g_str_hash, g_str_equal);
    GArray *ticks = g_array_new(FALSE, FALSE, sizeof(tick));
    GStringChunk *paths = g_string_chunk_new(64 << 10);
    char *mj = g_build_filename(s->out, ".qmoe", "journal.jsonl", NULL);
    read_journal(mj, sizes, ticks, s, paths);
    g_free(mj);
    for (int i = 0; i < s->n_jobs; i++)
        if (s->sharded) {
            char *j = g_build_filename(s->out, s->jobs[i].dir, "journal.jsonl", NULL);
            read_journal(j, sizes, ticks, s, paths);
            g_free(j);
        }
    *have_bytes = g_hash_table_size(sizes) > 0;
    if (*have_bytes) {
        GHashTableIter it;
        gpointer k, v;
        s->bytes_done = 0;
        g_hash_table_iter_init(&it, sizes);
        while (g_hash_table_iter_next(&it, &k, &v))
            s->bytes_done += (int64_t)GPOINTER_TO_SIZE(v) - 1;
    }

    /* rate: files finished in the last window, ending now while running
     * (so a stall shows as a falling rate) or at the last record */
    s->rate_files = s->rate_bytes = -1;
    if (ticks->len > 0) {
        g_array_sort(ticks, cmp_tick);
        int running = strcmp(s->state, "running") == 0;
        double last = g_array_index(ticks, tick, ticks->len - 1).time;
        double t_end = running ? MAX(s->now, last) : last;
        double t_begin = t_end - ST_RATE_WINDOW;
        double first = s->started > 0 ? s->started : g_array_index(ticks, tick, 0).time;
        if (t_begin < first)
            t_begin = first;
        uint64_t n = 0, b = 0;
        for (guint i = ticks->len; i-- > 0;) {
            tick *t = &g_array_index(ticks, tick, i);
            if (t->time <= t_begin)
                break;
            n++;
            b += t->size;
        }
        double w = t_end - t_begin;
        if (w >= 0.5 && n > 0) {
            s->rate_window = w;
            s->rate_files = (double)n / w;
            s->rate_bytes = (double)b / w;
        }
    }
    g_array_free(ticks, TRUE);
    g_hash_table_destroy(sizes);
    g_string_chunk_free(paths);
}

/* ---- the snapshot ---- */

static gint cmp_flight(gconstpointer a, gconstpointer b)
{
    return strcmp(((const st_flight *)a)->path, ((const st_flight *)b)->path);
}

static void add_flight(GArray *a, const char *path, pid_t pid, int has_tmp)
{
    for (guint i = 0; i < a->len; i++) {
        st_flight *f = &g_array_index(a, st_flight, i);
        if (strcmp(f->path, path) == 0) {
            f->has_tmp |= has_tmp;
            if (has_tmp)
                f->pid = pid;
            f->alive = fs_pid_alive(f->pid);
            return;
        }
    }
    st_flight f = {g_strdup(path), pid, fs_pid_alive(pid), has_tmp};
    g_array_append_val(a, f);
}

/* The readers below skip files they cannot read (an extraction starting
 * has none yet); a FIFO or a device in their place is an error to report,
 * not a file to skip: exit 2 naming it. */
static int check_state_files(const char *out, GError **err)
{
    static const char *top[] = {"qmoe.json", "config.json", "model.safetensors.index.json",
                                ".qmoe/journal.jsonl", ".qmoe/progress.json", ".qmoe/lock",
                                NULL};
    static const char *per_shard[] = {"journal.jsonl", "progress.json", "lock", NULL};
    int rc = 0;
    for (int i = 0; top[i] && !rc; i++) {
        char *p = g_build_filename(out, top[i], NULL);
        rc = fs_check_regular(p, err);
        g_free(p);
    }
    char *q = g_build_filename(out, ".qmoe", NULL);
    GDir *d = rc ? NULL : g_dir_open(q, 0, NULL);
    const char *n;
    while (d && !rc && (n = g_dir_read_name(d)))
        for (int i = 0; g_str_has_prefix(n, "shard-") && per_shard[i] && !rc; i++) {
            char *p = g_build_filename(q, n, per_shard[i], NULL);
            rc = fs_check_regular(p, err);
            g_free(p);
        }
    if (d)
        g_dir_close(d);
    g_free(q);
    return rc;
}

st_snap *st_snap_take(const char *out, GError **err)
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
    if (check_state_files(out, err))
        return NULL;

    scan sc = {g_array_new(FALSE, FALSE, sizeof(pair)),
               g_ptr_array_new_with_free_func(g_free), 0, 0};
    char *qdir = g_build_filename(out, ".qmoe", NULL);
    char *mpath = g_build_filename(out, "qmoe.json", NULL);
    int have_q = g_file_test(qdir, G_FILE_TEST_IS_DIR);
    int have_m = g_file_test(mpath, G_FILE_TEST_EXISTS);
    g_free(qdir);
    g_free(mpath);
    int have_x = scan_dir(out, "experts", &sc, 1, 0) == 0;
    if (!have_q && !have_m && !have_x) {
        g_set_error(err, QM_ERROR, QM_ERR_IO,
                    "'%s' is not an extraction directory: it has no .qmoe/, "
                    "qmoe.json or experts/", out);
        g_array_free(sc.experts, TRUE);
        g_ptr_array_free(sc.tmps, TRUE);
        return NULL;
    }

    st_snap *s = g_new0(st_snap, 1);
    s->out = g_strdup(out);
    s->now = qm_now();
    s->elapsed = s->eta = -1;
    s->bytes_done = -1;
    load_jobs(s);
    /* a job record: any progress file, or a journal */
    int job_record = 0;
    for (int i = 0; i < s->n_jobs; i++)
        job_record |= s->jobs[i].present;
    /* a mixed OUT: its source.json names another source than qmoe.json */
    int mixed = 0;
    {
        cJSON *sj = od_source_load(out, NULL);
        char *mp = g_build_filename(out, "qmoe.json", NULL);
        manifest_src_id(mp, sj, &mixed);
        g_free(mp);
        cJSON_Delete(sj);
    }
    int have_journal_bytes = 0;
    journal_figures(s, &have_journal_bytes);
    job_record |= s->journal_records > 0;
    /* bytes: the jobs count tensor bytes like the plan does, so prefer
     * them; the journal (file sizes) for a directory without progress;
     * stat() only when there is neither */
    int have_prog = 0;
    int64_t prog_bytes = 0;
    for (int i = 0; i < s->n_jobs; i++)
        if (s->jobs[i].present) {
            have_prog = 1;
            prog_bytes += (int64_t)s->jobs[i].bytes_done;
        }
    int need_stat = !have_journal_bytes && !have_prog;
    if (need_stat && have_x) { /* scan only: sizes from the files themselves */
        g_array_set_size(sc.experts, 0);
        g_ptr_array_set_size(sc.tmps, 0);
        scan_dir(out, "experts", &sc, 1, 1);
    }
    scan_dir(out, "layers", &sc, 0, need_stat);
    scan_dir(out, "other", &sc, 0, need_stat);
    scan_dir(out, NULL, &sc, 0, need_stat); /* globals.safetensors, temporaries */
    if (have_prog)
        s->bytes_done = prog_bytes;
    else if (need_stat)
        s->bytes_done = sc.stat_bytes;
    s->other_done = sc.other_done;

    expected_set(s, &sc);

    /* count the files found against the grid, growing it for strays */
    for (guint i = 0; i < sc.experts->len; i++) {
        pair p = g_array_index(sc.experts, pair, i);
        if (p.layer >= s->n_layers) {
            s->layers = g_renew(st_layer, s->layers, p.layer + 1);
            for (int l = s->n_layers; l <= p.layer; l++)
                s->layers[l] = (st_layer){l, 0, 0, 0};
            s->n_layers = p.layer + 1;
        }
        s->layers[p.layer].done++;
        s->experts_done++;
        if (s->layers[p.layer].expected == 0 || p.expert >= s->n_experts)
            s->unexpected++;
    }
    for (int l = 0; l < s->n_layers; l++) {
        st_layer *L = &s->layers[l];
        int mtp = st_is_mtp(s, l);
        if (L->expected > 0) {
            s->layers_expected++;
            s->layers_complete += L->done >= L->expected;
            s->mtp_layers_expected += mtp;
            s->mtp_layers_complete += mtp && L->done >= L->expected;
        }
        if (mtp) {
            s->mtp_experts_expected += L->expected;
            s->mtp_experts_done += MIN(L->done, L->expected);
        }
    }

    /* in flight: the jobs' current files and the temporaries */
    GArray *fl = g_array_new(FALSE, FALSE, sizeof(st_flight));
    GArray *stale = g_array_new(FALSE, FALSE, sizeof(st_flight));
    for (int i = 0; i < s->n_jobs; i++)
        if (strcmp(s->jobs[i].state, "running") == 0)
            for (int k = 0; s->jobs[i].current[k]; k++)
                add_flight(fl, s->jobs[i].current[k], s->jobs[i].pid, 0);
    for (guint i = 0; i < sc.tmps->len; i++) {
        char *t = sc.tmps->pdata[i];
        pid_t pid = fs_tmp_pid(t);
        char *final = g_strndup(t, (gsize)(strstr(t, ".tmp.") - t));
        if (fs_pid_alive(pid)) {
            add_flight(fl, final, pid, 1);
        } else {
            st_flight f = {g_strdup(final), pid, 0, 1};
            g_array_append_val(stale, f);
        }
        g_free(final);
    }
    g_array_sort(fl, cmp_flight);
    g_array_sort(stale, cmp_flight);
    s->n_flight = (int)fl->len;
    s->flight = (st_flight *)g_array_free(fl, FALSE);
    s->n_stale_tmp = (int)stale->len;
    s->stale_tmp = (st_flight *)g_array_free(stale, FALSE);
    for (int i = 0; i < s->n_flight; i++) {
        int e, l;
        const char *b = strrchr(s->flight[i].path, '/');
        if (b && od_parse_expert(b + 1, &e, &l) == 0 && l < s->n_layers)
            s->layers[l].in_flight++;
    }

    /* complete: the one verdict (outdir.h) from what the snapshot found */
    od_facts facts = {
        .experts_expected = s->experts_expected,
        .experts_present = s->experts_done - s->unexpected,
        .others_expected = s->other_expected,
        .others_present = s->other_done,
        .has_job_record = job_record,
        .has_manifest = s->has_manifest,
        .manifest_complete = s->manifest_complete,
        .live_writer = strcmp(s->state, "running") == 0 || s->n_flight > 0,
        .source_gap = s->source_gap != NULL,
        .mixed = mixed,
    };
    od_verdict v = od_complete(&facts);
    s->complete = v == OD_COMPLETE;
    s->why = s->complete ? NULL : od_verdict_name(v);

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

    g_array_free(sc.experts, TRUE);
    g_ptr_array_free(sc.tmps, TRUE);
    s->took_ms = (qm_monotonic() - t0) * 1e3;
    return s;
}

void st_snap_free(st_snap *s)
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
