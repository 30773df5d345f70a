/* extract_job.c - see extract_job.h */
#include "extract_job.h"

#include "format/checkpoint.h"
#include "base/crc32.h"
#include "extract_copy.h"
#include "extract_pipe.h"
#include "extract_prep.h"
#include "base/fs.h"
#include "cli/cli.h"
#include "format/layout.h"
#include "outdir/manifest.h"
#include "outdir/outdir.h"
#include "outdir/plan.h"
#include "outdir/progress.h"
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (4u << 20) /* bytes per read: large sequential reads */

/* Each read is hashed (SHA-256) and CRCed a slice at a time, so that the
 * CRC finds the bytes in the core's L2 cache, not in memory: a 4 MiB read
 * hashed whole and then CRCed cost 0.3-0.4 s more CPU for 2.47 GB (real
 * case of tests/bench/extract_files.sh, best of 3: 2.69 -> 2.25-2.27 s). */
#define HASH_SLICE (256u << 10)

/* Group commit (fs.h): files are made durable, renamed and journalled a
 * batch at a time, a few filesystem journal commits per batch instead of
 * two per file. A batch closes at BATCH_BYTES or BATCH_FILES or when its
 * first file has waited BATCH_AGE, so that a crash loses little work and
 * a slow run still shows its progress in the journal. The main thread
 * commits, so that no worker waits for a syncfs; files written meanwhile
 * join the next batch, which is larger when the disk is behind. */
#define BATCH_BYTES (64u << 20)
#define BATCH_FILES 256
#define BATCH_AGE_US 250000
#define PROGRESS_US 200000 /* progress.json five times a second */

/* Files smaller than FS_WRITEBACK_MIN (fs.h) go through the page cache,
 * not O_DIRECT: a direct write waits for the disk, once per file, which
 * costs more than copying a small file into the cache and letting the
 * batch's syncfs write them all back in one sweep; larger files gain from
 * the disk writing one while the next is read. Best of 3 on this VM's
 * disk, direct vs cached, interleaved: 16 KiB files 1.71 s vs 1.28 s for
 * 14,848; 192 KiB 1.41 s vs 1.23 s for 6144; 384 KiB 1.11 s vs 1.74 s
 * for 3072; 768 KiB 0.87 s vs 1.29 s for 1536. */

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

void ex_install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* Over a file-size limit (ulimit -f) write() fails with EFBIG only
     * when SIGXFSZ is ignored; by default the signal kills the process
     * mid-file with no message and the state left "running". */
    signal(SIGXFSZ, SIG_IGN);
}

void ex_result_clear(ex_result *r)
{
    if (r) {
        g_free(r->layout);
        r->layout = NULL;
        g_free(r->experts_split);
        r->experts_split = NULL;
    }
}

/* Everything the workers share. Counters and the journal are guarded by
 * `mu`; the plan and the source fds are read-only once workers start. */
typedef struct {
    const ex_opts *o;
    double t0;              /* qm_monotonic() at the start */
    const layout *lt;
    plan *p;
    ckpt *ck;
    char *state_dir;        /* .qmoe/ or this --shard part's directory in it */
    char *lock_path, *prog_path, *log_path;
    int lock_fd;
    pid_t stale;            /* pid whose stale lock was taken over, or 0 */
    uint64_t skipped_bytes; /* of files complete before this run */
    int *src_fd;            /* per source shard */
    uint64_t *src_bs;       /* per source shard: block size when its blocks
                               can be shared with OUT's files (reflink), else 0 */
    gint reflink;           /* cleared when the filesystem refuses a clone */
    uint64_t bytes_shared;  /* guarded by mu */
    int *todo;              /* plan file indices this run writes */
    int n_todo;
    gint next;              /* atomic cursor into todo */
    GMutex mu;
    GCond wake;             /* signalled (under mu) when a worker ends or
                               the open batch is full */
    int live;               /* workers still running, guarded by mu */
    GArray *recs;           /* one-part run (shards 1): the records of every
                               file in place, those found at the start and
                               those committed since (mf_file, guarded by
                               mu); NULL for a --shard part */
    int journal_fd;
    char *journal_path;
    int log_fd;
    struct pending *pend;   /* the open batch, guarded by mu */
    fs_batch *batch;        /* commits it: the main thread's */
    progress prog;
    char **current;         /* per worker slot, NULL-terminated view */
    int failed;
    GError *error;          /* first error of any worker */
    char source_id[17];     /* outdir.h identity of the source */
    cJSON *source_identity;
} job;

static void job_log(job *j, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void job_log(job *j, const char *fmt, ...)
{
    if (j->log_fd < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    char *ts = qm_iso_time(qm_now());
    char *line = g_strdup_printf("%s [%ld] %s\n", ts, (long)getpid(), msg);
    ssize_t n = write(j->log_fd, line, strlen(line));
    (void)n; /* the log is best effort; errors are reported elsewhere */
    g_free(line);
    g_free(ts);
    g_free(msg);
}

static int read_at(job *j, const plan_tensor *t, int fd, uint8_t *buf, size_t len,
                   uint64_t off, GError **err)
{
    while (len) {
        ssize_t n = pread(fd, buf, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        const char *name = j->ck->shards[t->shard].name;
        if (n < 0)
            return qm_set_errno(err, errno, "cannot read source", name);
        if (n == 0) {
            g_set_error(err, QM_ERROR, QM_ERR_IO,
                        "cannot read source '%s': file ends before tensor '%s' "
                        "(truncated?)", j->ck->shards[t->shard].path, t->src_name);
            return -1;
        }
        buf += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static void record_tensor(job *j, mf_file *rec, const plan_tensor *t, uint64_t at,
                          uint32_t crc)
{
    mf_tensor *m = &rec->tensors[rec->n_tensors++];
    mf_desc_copy(&m->desc, &t->desc); /* name, dtype, shape, source range */
    m->begin = at;
    m->end = at + t->nbytes;
    m->crc32 = crc;
    m->src_file = g_strdup(j->ck->shards[t->shard].name);
}

/* The header alignment that lets most of the file's blocks be shared with
 * the source (extract_copy.h): *bs 0 for the compact header. */
static uint64_t file_phase(job *j, const plan_file *f, uint64_t *bs)
{
    uint64_t *off = g_new(uint64_t, f->n), *len = g_new(uint64_t, f->n), phase = 0;
    int *ok = g_new(int, f->n), n = 0, use = 0;
    *bs = 0;
    for (int i = 0; i < f->n; i += ex_run_length(f, i), n++) {
        const plan_tensor *last = &f->t[i + ex_run_length(f, i) - 1];
        off[n] = f->t[i].src_offset;
        len[n] = last->src_offset + last->nbytes - off[n];
        ok[n] = j->src_bs[f->t[i].shard] != 0;
        if (ok[n])
            *bs = j->src_bs[f->t[i].shard];
    }
    if (*bs)
        phase = ec_phase(off, len, ok, n, *bs, &use);
    if (!use)
        *bs = 0;
    g_free(off);
    g_free(len);
    g_free(ok);
    return use ? phase : 0;
}

/* Files written but not yet committed: their temporaries (closed),
 * records and plan entries. */
typedef struct pending {
    GPtrArray *files; /* fs_out, finished */
    uint64_t bytes;
    GArray *recs;     /* mf_file */
    GPtrArray *plan;  /* const plan_file * */
    gint64 started;   /* g_get_monotonic_time() of the first file */
} pending;

static int batch_full(const pending *p)
{
    return p->recs->len >= BATCH_FILES || p->bytes >= BATCH_BYTES;
}

static pending *pending_new(void)
{
    pending *p = g_new0(pending, 1);
    p->files = g_ptr_array_new();
    p->recs = g_array_new(FALSE, TRUE, sizeof(mf_file));
    p->plan = g_ptr_array_new();
    return p;
}

/* Removes the temporaries still in the batch and frees. */
static void pending_free(pending *p)
{
    if (!p)
        return;
    for (guint i = 0; i < p->files->len; i++)
        fs_out_abort(p->files->pdata[i]);
    g_ptr_array_free(p->files, TRUE);
    mf_files_free(p->recs);
    g_ptr_array_free(p->plan, TRUE);
    g_free(p);
}

/* A file written, on its way to the batch: its record and plan entry. */
typedef struct {
    mf_file rec;
    const plan_file *f;
} written;

static void written_free(void *data)
{
    written *wf = data;
    if (wf) {
        mf_file_clear(&wf->rec);
        g_free(wf);
    }
}

/* A complete, closed temporary joins the open batch (the main thread
 * commits it, woken when it is due). Called by a worker's writer thread
 * (extract_pipe.h) or, for a file written in line, by the worker. */
static void file_written(void *arg, fs_out *o, void *data)
{
    job *j = arg;
    written *wf = data;
    g_mutex_lock(&j->mu);
    pending *p = j->pend;
    if (!p->recs->len)
        p->started = g_get_monotonic_time();
    g_ptr_array_add(p->files, o);
    p->bytes += o->written;
    g_array_append_val(p->recs, wf->rec);
    g_ptr_array_add(p->plan, (gpointer)wf->f);
    if (batch_full(p))
        g_cond_signal(&j->wake);
    g_mutex_unlock(&j->mu);
    g_free(wf); /* the record now belongs to the batch */
}

/* Writes one output file to its temporary, filling wf->rec. On success
 * the file is handed on (wf with it): to the worker's writer `w`, which
 * passes it to file_written once written, or straight to file_written;
 * on failure wf stays the caller's. *bufp is a buffer of w (CHUNK bytes,
 * FS_DIRECT_ALIGN-aligned), maybe another one on return.
 *
 * Without reflinks the header and the data are assembled in the buffer
 * (each source read lands right after the bytes before it), which is
 * written whenever it is full and at the end: a small file is one write,
 * done here. A file of FS_WRITEBACK_MIN bytes or more goes out with
 * O_DIRECT (fs.h), so that its bytes are copied once (the source read),
 * not also into the page cache, and through `w`: its full buffers are
 * written while the next are read and hashed. With reflinks (ec_put) the
 * writes stay in line. */
static int write_file(job *j, const plan_file *f, xp_writer *w, uint8_t **bufp,
                      written *wf, GError **err)
{
    mf_file *rec = &wf->rec;
    uint8_t *buf = *bufp;
    st_entry *e = g_new0(st_entry, f->n);
    for (int i = 0; i < f->n; i++) {
        e[i].name = f->t[i].name;
        e[i].dtype = f->t[i].dtype;
        e[i].ndim = f->t[i].ndim;
        memcpy(e[i].shape, f->t[i].shape, sizeof e[i].shape);
        e[i].nbytes = f->t[i].nbytes;
    }
    const char *meta[] = {"qmoe_version", QMOE_VERSION, "qmoe_kind",
                          mf_kind_name(f->kind), NULL};
    /* With reflinks, pad the header so that the data lines up with the
     * source blocks; else the compact header. */
    uint64_t bs = 0, phase = 0;
    if (g_atomic_int_get(&j->reflink))
        phase = file_phase(j, f, &bs);
    GByteArray *hdr = st_header_build(e, f->n, meta, bs, phase, err);
    g_free(e);
    if (!hdr)
        return -1;
    int assemble = !bs && hdr->len <= CHUNK / 2;
    int direct = assemble && f->bytes >= FS_WRITEBACK_MIN;
    int piped = direct; /* a direct write waits for the disk: not in line */
    size_t fill = 0; /* assemble: bytes in buf, not yet written */
    char *path = g_build_filename(j->o->out, f->path, NULL);
    fs_out *o = direct ? fs_out_open_direct(path, err) : fs_out_open(path, err);
    g_free(path);
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    int rc = o ? 0 : -1;
    if (!rc && !EVP_DigestInit_ex(sha, EVP_sha256(), NULL)) {
        g_set_error(err, QM_ERROR, QM_ERR_IO, "cannot initialise SHA-256");
        rc = -1;
    }
    if (!rc) {
        EVP_DigestUpdate(sha, hdr->data, hdr->len);
        if (assemble) {
            memcpy(buf, hdr->data, hdr->len);
            fill = hdr->len;
        } else {
            rc = fs_out_write(o, hdr->data, hdr->len, err);
        }
    }
    memset(rec, 0, sizeof *rec);
    rec->tensors = g_new0(mf_tensor, f->n);
    uint64_t at = 0, shared = 0;
    /* The output's data is the source's runs of bytes in order: read each
     * run in chunks (ending on source block boundaries, so that whole
     * blocks can be shared), hash it as a whole, CRC it per tensor. */
    for (int i = 0; i < f->n && !rc;) {
        int k = i + ex_run_length(f, i);
        const plan_tensor *t0 = &f->t[i], *tl = &f->t[k - 1];
        int fd = j->src_fd[t0->shard];
        uint64_t sbs = bs ? j->src_bs[t0->shard] : 0;
        uint64_t pos = t0->src_offset, end = tl->src_offset + tl->nbytes;
        int cur = i;          /* tensor being CRCed */
        uint64_t tdone = 0;   /* its bytes seen */
        uint32_t crc = 0;
        for (;;) {
            while (cur < k && tdone == f->t[cur].nbytes) { /* done (or empty) */
                record_tensor(j, rec, &f->t[cur], at, crc);
                at += f->t[cur].nbytes;
                cur++;
                tdone = 0;
                crc = 0;
            }
            if (pos >= end || rc)
                break;
            if (stop_requested) {
                g_set_error(err, QM_ERROR, QM_ERR_STOPPED, "stopped by signal");
                rc = -1;
                break;
            }
            if (piped && xp_failed(w)) { /* xp_close reports what failed */
                g_set_error(err, QM_ERROR, QM_ERR_STOPPED, "an earlier write failed");
                rc = -1;
                break;
            }
            size_t len = (size_t)MIN((uint64_t)CHUNK - fill - (sbs ? pos % sbs : 0),
                                     end - pos);
            uint8_t *at_buf = buf + fill;
            rc = read_at(j, &f->t[cur], fd, at_buf, len, pos, err);
            if (rc)
                break;
            for (size_t used = 0; used < len;) { /* SHA, then CRC, a slice at a time */
                size_t slice_end = MIN(len, used + HASH_SLICE);
                EVP_DigestUpdate(sha, at_buf + used, slice_end - used);
                while (used < slice_end) {
                    while (tdone == f->t[cur].nbytes) { /* crossed into the next */
                        record_tensor(j, rec, &f->t[cur], at, crc);
                        at += f->t[cur].nbytes;
                        cur++;
                        tdone = 0;
                        crc = 0;
                    }
                    size_t take = (size_t)MIN((uint64_t)(slice_end - used),
                                              f->t[cur].nbytes - tdone);
                    crc = qm_crc32(crc, at_buf + used, take);
                    used += take;
                    tdone += take;
                }
            }
            if (assemble) {
                fill += len;
                if (fill == CHUNK && piped) {
                    xp_put(w, o, buf, fill);
                    buf = *bufp = xp_get(w);
                    fill = 0;
                } else if (fill == CHUNK) {
                    rc = fs_out_write(o, buf, fill, err);
                    fill = 0;
                }
            } else {
                rc = ec_put(o, fd, pos, buf, len, sbs, &j->reflink, &shared, err);
            }
            pos += len;
        }
        i = k;
    }
    if (!rc && fill && piped) {
        xp_put(w, o, buf, fill);
        buf = *bufp = xp_get(w);
    } else if (!rc && fill) { /* direct: whole blocks, then the tail through the cache */
        size_t whole = o->direct ? fill / FS_DIRECT_ALIGN * FS_DIRECT_ALIGN : fill;
        rc = fs_out_write(o, buf, whole, err);
        if (!rc && fill > whole)
            rc = fs_out_write(o, buf + whole, fill - whole, err);
    }
    if (!rc && stop_requested) {
        g_set_error(err, QM_ERROR, QM_ERR_STOPPED, "stopped by signal");
        rc = -1;
    }
    if (!rc) {
        uint8_t md[32];
        unsigned mdlen = 0;
        EVP_DigestFinal_ex(sha, md, &mdlen);
        qm_hex(md, 32, rec->sha256);
        rec->size = hdr->len + at;
        rec->path = g_strdup(f->path);
        g_strlcpy(rec->source_id, j->source_id, sizeof rec->source_id);
        rec->kind = f->kind;
        rec->layer = f->layer;
        rec->expert = f->expert;
        rec->time = qm_now();
    }
    EVP_MD_CTX_free(sha);
    g_byte_array_free(hdr, TRUE);
    if (rc) {
        if (piped && o)
            xp_abort(w, o); /* after the writes already handed over */
        else
            fs_out_abort(o);
        return -1;
    }
    if (shared) {
        g_mutex_lock(&j->mu);
        j->bytes_shared += shared;
        g_mutex_unlock(&j->mu);
    }
    if (piped) {
        xp_finish(w, o, wf);
    } else if (fs_out_finish(o, err)) {
        fs_out_abort(o);
        return -1;
    } else {
        file_written(j, o, wf);
    }
    return 0;
}

/* Makes a closed batch durable and in place, then records it: journal
 * lines only for renamed, durable files, and the journal synced once. */
static void commit_pending(job *j, pending *p)
{
    GError *err = NULL;
    int n = (int)p->recs->len;
    for (int i = 0; i < n; i++)
        fs_batch_add(j->batch, p->files->pdata[i]);
    g_ptr_array_set_size(p->files, 0);
    int rc = fs_batch_commit(j->batch, &err);
    if (!rc)
        rc = mf_journal_append_n(j->journal_fd, j->journal_path,
                                 (const mf_file *)(void *)p->recs->data, n, &err);
    if (!rc && fsync(j->journal_fd) != 0)
        rc = qm_set_errno(&err, errno, "cannot sync journal", j->journal_path);
    g_mutex_lock(&j->mu);
    if (rc) {
        if (!j->error)
            j->error = err;
        else
            g_error_free(err);
        j->failed = 1;
    } else {
        for (int i = 0; i < n; i++) {
            const plan_file *f = p->plan->pdata[i];
            j->prog.files_done++;
            j->prog.bytes_done += f->bytes;
            j->prog.experts_done += f->kind == MF_EXPERT;
        }
        if (j->recs) { /* handed over: pending_free clears what is left */
            g_array_append_vals(j->recs, p->recs->data, p->recs->len);
            g_array_set_size(p->recs, 0);
        }
    }
    g_mutex_unlock(&j->mu);
    pending_free(p);
}

/* Keeps the first error of the run; takes e. Called with j->mu held. */
static void job_fail(job *j, GError *e)
{
    if (!j->error)
        j->error = e;
    else
        g_error_free(e);
    j->failed = 1;
}

static gpointer worker(gpointer arg)
{
    job *j = ((void **)arg)[0];
    int slot = GPOINTER_TO_INT(((void **)arg)[1]);
    xp_writer *w = xp_new(CHUNK, file_written, written_free, j);
    uint8_t *buf = xp_get(w);
    for (;;) {
        int k = g_atomic_int_add(&j->next, 1);
        g_mutex_lock(&j->mu);
        int stop = j->failed || stop_requested || k >= j->n_todo || xp_failed(w);
        const plan_file *f = stop ? NULL : &j->p->files[j->todo[k]];
        g_free(j->current[slot]);
        j->current[slot] = f ? g_strdup(f->path) : NULL;
        g_mutex_unlock(&j->mu);
        if (stop)
            break;
        written *wf = g_new0(written, 1);
        wf->f = f;
        GError *err = NULL;
        int rc = write_file(j, f, w, &buf, wf, &err);
        if (rc)
            written_free(wf);
        else if (j->o->throttle_ms > 0)
            g_usleep((gulong)j->o->throttle_ms * 1000);
        g_mutex_lock(&j->mu);
        if (rc && err->code == QM_ERR_STOPPED)
            g_error_free(err); /* a signal, not a failure: ex_run reports the
                                  "stopped" state (or xp_close the write) */
        else if (rc)
            job_fail(j, err);
        g_free(j->current[slot]);
        j->current[slot] = NULL;
        g_mutex_unlock(&j->mu);
    }
    xp_release(w, buf);
    GError *err = NULL;
    int wrc = xp_close(w, &err); /* the files handed over are in the batch */
    g_mutex_lock(&j->mu);
    if (wrc)
        job_fail(j, err);
    j->live--;
    g_cond_signal(&j->wake);
    g_mutex_unlock(&j->mu);
    return NULL;
}

/* Copies the small files that make OUT a loadable checkpoint. */
static int copy_side_files(const char *src_dir, const char *out, GError **err)
{
    static const char *names[] = {
        "config.json", "generation_config.json", "tokenizer.json",
        "tokenizer_config.json", "vocab.json", "merges.txt",
        "special_tokens_map.json", "added_tokens.json",
        "preprocessor_config.json", NULL};
    GDir *d = g_dir_open(src_dir, 0, NULL);
    if (!d)
        return 0;
    const char *n;
    int rc = 0;
    while ((n = g_dir_read_name(d)) && !rc) {
        int wanted = g_str_has_prefix(n, "chat_template");
        for (int i = 0; names[i] && !wanted; i++)
            wanted = strcmp(n, names[i]) == 0;
        if (!wanted)
            continue;
        char *from = g_build_filename(src_dir, n, NULL);
        char *to = g_build_filename(out, n, NULL);
        gchar *data = NULL;
        gsize len = 0;
        if (fs_read_file(from, "cannot read", &data, &len, err) != 0) {
            rc = -1;
        } else {
            gchar *old = NULL;
            gsize olen = 0;
            if (fs_read_file(to, "cannot read", &old, &olen, NULL) != 0 || olen != len ||
                memcmp(old, data, len) != 0)
                rc = fs_write_atomic(to, data, len, err);
            g_free(old);
        }
        g_free(data);
        g_free(from);
        g_free(to);
    }
    g_dir_close(d);
    return rc;
}

/* Takes OUT/.qmoe/manifest.lock, which serialises every write to OUT's top
 * directory among the parts of a --shard run (on one machine or several).
 * Returns the fd to close to release it, or -1 (then the caller goes on
 * unlocked: flock is advisory and some shared filesystems lack it). */
static int lock_top(const char *out)
{
    char *path = g_build_filename(out, OD_MANIFEST_LOCK, NULL);
    int fd = fs_open_out(path, O_RDWR | O_CREAT, "cannot open", NULL);
    g_free(path);
    if (fd >= 0)
        while (flock(fd, LOCK_EX) != 0 && errno == EINTR)
            ;
    return fd;
}

static void draw_bar(const job *j, double t0)
{
    const progress *pr = &j->prog;
    double el = qm_monotonic() - t0;
    double frac = pr->files_planned ? (double)pr->files_done / (double)pr->files_planned : 1;
    double rate = el > 0 ? (double)(pr->bytes_done - 0) / el : 0;
    char bar[31];
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    fprintf(stderr, "\r[%s] %llu/%llu files %5.1f %%  %.0f MB/s ", bar,
            (unsigned long long)pr->files_done, (unsigned long long)pr->files_planned,
            100 * frac, rate / 1e6);
}

static int write_progress_err(job *j, const char *path, const char *state, GError **err)
{
    g_mutex_lock(&j->mu);
    j->prog.updated = qm_now();
    g_free(j->prog.state);
    j->prog.state = g_strdup(state);
    int n = 0;
    for (int i = 0; i < j->o->jobs; i++)
        if (j->current[i])
            n++;
    char **cur = g_new0(char *, n + 1);
    for (int i = 0, k = 0; i < j->o->jobs; i++)
        if (j->current[i])
            cur[k++] = g_strdup(j->current[i]);
    g_strfreev(j->prog.current);
    j->prog.current = cur;
    int rc = progress_write(path, &j->prog, err);
    g_mutex_unlock(&j->mu);
    return rc;
}

static int write_progress(job *j, const char *path, const char *state)
{
    GError *err = NULL;
    int rc = write_progress_err(j, path, state, &err);
    if (err)
        g_error_free(err); /* advisory; a full disk shows up in the files */
    return rc;
}

/* Writes the index and qmoe.json from the records of the files in place:
 * a one-part run's own (j->recs: when no --shard part has a journal in
 * OUT, it alone wrote OUT, under its lock, so rereading its journal would
 * give the same), else all journals, under a lock so that the last of
 * several --shard processes to finish sees everyone's records. */
static int finish_outputs(job *j, const char *src_path, int *complete, GError **err)
{
    const char *out = j->o->out;
    int lfd = lock_top(out);
    GArray *recs = j->recs;
    int rc = 0;
    j->recs = NULL;
    if (recs && mf_journals_has_parts(out)) { /* a --shard part beside us */
        mf_files_free(recs);
        recs = NULL;
    }
    if (recs) { /* one part: the records kept since the start are all */
        mf_files_sort_unique(recs);
    } else {
        recs = g_array_new(FALSE, TRUE, sizeof(mf_file));
        rc = mf_journals_read_all(out, recs, err);
    }
    uint8_t *done = g_new0(uint8_t, j->p->n_files > 0 ? j->p->n_files : 1);
    manifest *m = g_new0(manifest, 1);
    if (rc == 0) {
        od_find_done(j->p, j->ck, j->source_id, out, recs, done);
        *complete = 1;
        for (int i = 0; i < j->p->n_files; i++)
            *complete &= done[i];
        plan_describe(j->p, j->ck, src_path, m);
        m->shards = j->o->shards;
        m->source_id = g_strdup(j->source_id);
        m->source_identity = cJSON_Duplicate(j->source_identity, 1);
        m->missing_from_source = od_plan_gap(j->p, &m->missing_count);
        /* a gap kept by --allow-missing is never complete (od_complete) */
        m->complete = *complete && !m->missing_from_source;
        /* keep only records of files that are in place */
        GHashTable *in = g_hash_table_new(g_str_hash, g_str_equal);
        for (int i = 0; i < j->p->n_files; i++)
            if (done[i])
                g_hash_table_add(in, j->p->files[i].path);
        m->files = g_new0(mf_file, recs->len > 0 ? recs->len : 1);
        for (guint i = 0; i < recs->len; i++) {
            mf_file *r = &g_array_index(recs, mf_file, i);
            if (g_hash_table_contains(in, r->path)) {
                m->files[m->n_files++] = *r;
                memset(r, 0, sizeof *r);
            }
        }
        g_hash_table_destroy(in);
        if (*complete) {
            char *idx = plan_index_json(j->p, done);
            char *ip = g_build_filename(out, OD_INDEX, NULL);
            rc = fs_write_atomic(ip, idx, strlen(idx), err);
            g_free(ip);
            g_free(idx);
        }
        char *mp = g_build_filename(out, OD_MANIFEST, NULL);
        if (rc == 0)
            rc = manifest_save(m, mp, err);
        g_free(mp);
    }
    mf_files_free(recs);
    manifest_free(m);
    g_free(done);
    if (lfd >= 0)
        close(lfd); /* releases the flock */
    return rc;
}

/* The source identity against OUT's record of it (outdir.h): refuses a
 * different or changed source before anything is written. Empties OUT of
 * qmoe's files first with --restart. Called with the lock held. */
static int check_source(job *j, GError **err)
{
    const char *out = j->o->out;
    int top = lock_top(out);
    int rc = 0;
    if (j->o->restart) {
        int removed = 0;
        rc = od_restart(out, &removed, err);
        if (rc == 0) {
            job_log(j, "--restart: removed %d files of an earlier extraction", removed);
            fprintf(stderr, "qmoe-extract: --restart: removed %d files of an earlier "
                    "extraction from '%s'\n", removed, out);
        }
    }
    cJSON *then = rc == 0 ? od_source_load(out, err) : NULL;
    if (rc == 0 && !then && err && *err)
        rc = -1;
    /* the shards earlier runs read are checked again, needed now or not */
    if (rc == 0 && then)
        rc = od_source_reread(j->ck, then, err);
    if (rc == 0 && !(j->source_identity = od_source_identity(j->ck, j->o->src, err)))
        rc = -1;
    if (rc == 0)
        g_strlcpy(j->source_id, od_source_id(j->source_identity), sizeof j->source_id);
    if (rc == 0 && then) {
        char *diff = NULL;
        cJSON *merged = od_source_merge(then, j->source_identity, &diff);
        if (merged) { /* the same source, maybe read further now: keep its id */
            cJSON_Delete(j->source_identity);
            j->source_identity = merged;
            g_strlcpy(j->source_id, od_source_id(merged), sizeof j->source_id);
            rc = od_source_save(out, merged, err);
        }
        if (diff) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "'%s' holds an extraction of another source than '%s' (or of "
                        "it before it changed): %s; nothing written (--restart empties "
                        "OUT of qmoe's files and starts over)", out, j->o->src, diff);
            rc = -1;
        }
        g_free(diff);
    } else if (rc == 0) {
        rc = od_source_save(out, j->source_identity, err);
    }
    cJSON_Delete(then);
    if (top >= 0)
        close(top);
    return rc;
}

/* ---- the run, phase by phase ----
 *
 * ex_run: take_lock, check_source, scan_done, open_sources, check_space,
 * hand_over (--detach), prepare_out, run_workers (threads, progress loop,
 * the last commit), then finish. Each phase returns 0 or -1 with *err;
 * job_clear undoes what any of them made. */

/* The state directory and its lock; the log. */
static int take_lock(job *j, GError **err)
{
    if (fs_mkdir_out(j->o->out, j->state_dir, err))
        return -1;
    j->lock_fd = progress_lock(j->lock_path, &j->stale, err);
    if (j->lock_fd < 0)
        return -1;
    /* said at once: the source checks below take time, and a kill during
     * them must not hide that the stale lock was taken over */
    if (j->stale)
        fprintf(stderr, "qmoe-extract: taking over the stale lock of pid %ld (no longer "
                "running); resuming\n", (long)j->stale);
    j->log_fd = fs_open_out(j->log_path, O_WRONLY | O_APPEND | O_CREAT, "cannot open log",
                            err);
    return j->log_fd < 0 ? -1 : 0;
}

/* What earlier runs (of any part) finished stays: fills j->todo with the
 * files of this part still to write, and the progress counters. */
static int scan_done(job *j, GError **err)
{
    const ex_opts *o = j->o;
    const plan *p = j->p;
    GArray *recs = g_array_new(FALSE, TRUE, sizeof(mf_file));
    if (mf_journals_read_all(o->out, recs, err)) {
        g_array_free(recs, TRUE);
        return -1;
    }
    uint8_t *done = g_new0(uint8_t, p->n_files > 0 ? p->n_files : 1);
    od_find_done(p, j->ck, j->source_id, o->out, recs, done);
    if (o->shards == 1)
        j->recs = recs; /* finish_outputs needs no second read */
    else
        mf_files_free(recs);

    j->todo = g_new(int, p->n_files > 0 ? p->n_files : 1);
    j->prog.pid = getpid();
    j->prog.started = qm_now();
    j->prog.shard = o->shard;
    j->prog.shards = o->shards;
    j->prog.log = g_strdup(OD_LOG);
    if (p->partial) { /* a full run leaves them out: nothing to narrow */
        j->prog.layers = qm_list_format(p->layer_sel, p->shape.n_layers);
        j->prog.experts = qm_list_format(p->expert_sel, p->shape.n_experts);
    }
    for (int i = 0; i < p->n_files; i++) {
        const plan_file *f = &p->files[i];
        if (f->part != o->shard)
            continue;
        j->prog.files_planned++;
        j->prog.bytes_planned += f->bytes;
        j->prog.experts_planned += f->kind == MF_EXPERT;
        if (done[i]) {
            j->prog.files_done++;
            j->prog.files_skipped++;
            j->prog.bytes_done += f->bytes;
            j->prog.experts_done += f->kind == MF_EXPERT;
        } else {
            j->todo[j->n_todo++] = i;
        }
    }
    g_free(done);
    j->skipped_bytes = j->prog.bytes_done;
    return 0;
}

/* The source shards open, and which of them share blocks with OUT. */
static int open_sources(job *j, GError **err)
{
    j->src_fd = g_new(int, j->ck->n_shards);
    for (int i = 0; i < j->ck->n_shards; i++)
        j->src_fd[i] = -1;
    j->src_bs = g_new0(uint64_t, j->ck->n_shards);
    char *probe = g_build_filename(j->state_dir, "reflink-probe", NULL);
    int n_shared = ex_open_sources(j->ck, j->src_fd, j->src_bs, j->o->no_reflink, probe,
                                   err);
    g_free(probe);
    if (n_shared < 0)
        return -1;
    g_atomic_int_set(&j->reflink, n_shared > 0);
    if (n_shared)
        job_log(j, "zero-copy: %d of %d source files share blocks with '%s' "
                "(reflink)", n_shared, j->ck->n_shards, j->o->out);
    return 0;
}

/* Refuses, before anything is written, a run that will not fit (unless
 * --force). */
static int check_space(job *j, GError **err)
{
    ex_space sc = {0};
    ex_space_count(&sc, j->p, j->todo, j->n_todo, j->src_bs);
    if (ex_space_free(&sc, j->o->out, err))
        return -1;
    char *stext = ex_space_text(&sc);
    job_log(j, "space: %s", stext);
    int rc = 0;
    if (sc.needed > sc.avail && !j->o->force) {
        g_set_error(err, QM_ERROR, QM_ERR_IO, "'%s': %s; nothing written (--force "
                    "tries anyway)", j->o->out, stext);
        rc = -1;
    }
    g_free(stext);
    ex_space_clear(&sc);
    return rc;
}

/* o->before_write (--detach forks there); the lock and progress.json then
 * name the process that goes on. */
static int hand_over(job *j, GError **err)
{
    const ex_opts *o = j->o;
    if (o->before_write) {
        if (o->before_write(o->before_write_arg, err))
            return -1;
        /* maybe another process now (--detach's child): the lock says who,
         * and so must progress.json (qmoe-status judges liveness by it) */
        if (progress_lock_handover(j->lock_fd, j->lock_path, err))
            return -1;
        j->prog.pid = getpid();
        j->prog.pid_start = 0; /* the writer reads the new process's */
    }
    if (j->stale)
        job_log(j, "took over the stale lock of pid %ld", (long)j->stale);
    return 0;
}

/* OUT's directories, side files and journal; leftovers of dead runs
 * removed; the batch opened before the first file is written (fs.h). */
static int prepare_out(job *j, GError **err)
{
    const ex_opts *o = j->o;
    static const char *subdirs[] = {"experts", "layers", "other"};
    for (int i = 0; i < 3; i++) {
        char *d = g_build_filename(o->out, subdirs[i], NULL);
        int r = fs_mkdir_out(o->out, d, err);
        g_free(d);
        if (r)
            return -1;
    }
    int top = lock_top(o->out);
    od_remove_stale_tmps(o->out, j->p, o->shard, o->shards);
    int side = copy_side_files(j->ck->dir, o->out, err);
    if (top >= 0)
        close(top);
    if (side)
        return -1;
    j->journal_fd = mf_journal_open(j->journal_path, err);
    if (j->journal_fd < 0)
        return -1;
    job_log(j, "extracting '%s' (%s) to '%s': %llu files planned, %llu already "
            "complete, %d to write with %d threads", o->src, j->lt->name, o->out,
            (unsigned long long)j->prog.files_planned,
            (unsigned long long)j->prog.files_skipped, j->n_todo, o->jobs);
    j->current = g_new0(char *, o->jobs + 1);
    j->pend = pending_new();
    if (!(j->batch = fs_batch_new(o->out, err)))
        return -1;
    /* the first write is checked: .qmoe/ refusing it (a symlink planted at
     * the temporary's name) stops the run before any work */
    return write_progress_err(j, j->prog_path, "running", err);
}

/* The workers; meanwhile this thread commits each batch when it is due
 * (woken when it is full or the last worker ends, else at its age or the
 * next progress tick) and rewrites progress.json five times a second;
 * then the last batch. Failures are left in j->failed / j->error. */
static void run_workers(job *j)
{
    const ex_opts *o = j->o;
    GThread **th = g_new(GThread *, o->jobs);
    void **args = g_new(void *, 2 * o->jobs);
    j->live = o->jobs;
    for (int i = 0; i < o->jobs; i++) {
        args[2 * i] = j;
        args[2 * i + 1] = GINT_TO_POINTER(i);
        th[i] = g_thread_new("extract", worker, &args[2 * i]);
    }
    gint64 next_progress = 0;
    g_mutex_lock(&j->mu);
    for (;;) {
        gint64 now = g_get_monotonic_time();
        pending *p = j->pend;
        int due = p->recs->len && (batch_full(p) || now >= p->started + BATCH_AGE_US);
        if (due && !j->failed) {
            j->pend = pending_new();
            g_mutex_unlock(&j->mu);
            commit_pending(j, p);
            g_mutex_lock(&j->mu);
            continue;
        }
        if (j->live == 0)
            break;
        if (now >= next_progress) {
            g_mutex_unlock(&j->mu);
            write_progress(j, j->prog_path, "running");
            if (o->progress_bar)
                draw_bar(j, j->t0);
            next_progress = now + PROGRESS_US;
            g_mutex_lock(&j->mu);
            continue;
        }
        gint64 until = next_progress;
        if (p->recs->len && !j->failed)
            until = MIN(until, p->started + BATCH_AGE_US);
        g_cond_wait_until(&j->wake, &j->mu, until);
    }
    g_mutex_unlock(&j->mu);
    for (int i = 0; i < o->jobs; i++)
        g_thread_join(th[i]);
    g_free(th);
    g_free(args);
    /* What the workers finished goes in place, also after a signal (files
     * in flight were discarded); after a failure it is discarded too. */
    if (!j->failed && j->pend->recs->len) {
        commit_pending(j, j->pend);
        j->pend = NULL;
    }
    if (o->progress_bar) {
        draw_bar(j, j->t0);
        fputc('\n', stderr);
    }
}

/* After the workers: the failure or the stop reported, or the index and
 * qmoe.json written and the state "finished". */
static int finish(job *j, ex_result *res, GError **err)
{
    const ex_opts *o = j->o;
    res->files_planned = j->prog.files_planned;
    res->files_done = j->prog.files_done;
    res->files_skipped = j->prog.files_skipped;
    res->bytes_planned = j->prog.bytes_planned;
    res->bytes_written = j->prog.bytes_done - j->skipped_bytes;
    res->experts_planned = j->prog.experts_planned;
    res->experts_done = j->prog.experts_done;
    res->bytes_shared = j->bytes_shared;
    if (j->failed) {
        j->prog.last_error = g_strdup(j->error->message);
        job_log(j, "failed: %s", j->error->message);
        write_progress(j, j->prog_path, "failed");
        g_propagate_error(err, j->error);
        j->error = NULL;
        return -1;
    }
    unsigned long long n_done = j->prog.files_done, n_planned = j->prog.files_planned;
    if (n_done < n_planned) {
        /* workers end early only on a signal or a failure (j->failed) */
        const char *why = stop_requested ? "stopped by signal"
                                         : "stopped early with no error recorded";
        job_log(j, "%s after %llu/%llu files", why, n_done, n_planned);
        write_progress(j, j->prog_path, "stopped");
        g_set_error(err, QM_ERROR, QM_ERR_STOPPED, "%s: %llu/%llu files complete; run "
                    "the same command again to resume", why, n_done, n_planned);
        return -1;
    }
    /* A stop asked for after the last file was in place: what is left is
     * the index and qmoe.json, as quick as stopping, so the run finishes
     * and says so instead of calling a complete OUT stopped. */
    if (stop_requested) {
        job_log(j, "a stop signal came after the last file; finishing");
        fprintf(stderr, "qmoe-extract: the stop signal came after the last of %llu files "
                "was complete; finishing\n", n_planned);
    }
    /* The part that finishes last merges every journal; on NFS another
     * machine sees our last lines only once they reach the server. */
    if (fsync(j->journal_fd) != 0)
        return qm_set_errno(err, errno, "cannot sync journal", j->journal_path);
    if (finish_outputs(j, o->src, &res->complete, err)) {
        j->prog.last_error = g_strdup((*err)->message);
        write_progress(j, j->prog_path, "failed");
        return -1;
    }
    write_progress(j, j->prog_path, "finished");
    int n_gap = 0;
    char *gap = od_plan_gap(j->p, &n_gap);
    if (gap) {
        gap = ex_gap_one_line(gap);
        fprintf(stderr, "qmoe-extract: '%s' is incomplete (--allow-missing): %s; "
                "recorded in qmoe.json\n", o->out, gap);
        job_log(j, "incomplete (--allow-missing): %s", gap);
        g_free(gap);
    }
    res->seconds = qm_monotonic() - j->t0;
    job_log(j, "finished: %llu files (%llu written, %llu already complete) in %.2f s%s",
            (unsigned long long)res->files_planned,
            (unsigned long long)(res->files_done - res->files_skipped),
            (unsigned long long)res->files_skipped, res->seconds,
            res->complete ? "" : "; other --shard parts still to finish");
    return 0;
}

static void job_init(job *j, const ex_opts *o)
{
    memset(j, 0, sizeof *j);
    j->o = o;
    j->t0 = qm_monotonic();
    j->journal_fd = j->log_fd = j->lock_fd = -1;
    g_mutex_init(&j->mu);
    g_cond_init(&j->wake);
    j->state_dir = progress_state_dir(o->out, o->shard, o->shards);
    j->lock_path = g_build_filename(j->state_dir, OD_LOCK, NULL);
    j->prog_path = g_build_filename(j->state_dir, OD_PROGRESS, NULL);
    j->log_path = g_build_filename(o->out, OD_LOG, NULL);
    j->journal_path = g_build_filename(j->state_dir, OD_JOURNAL, NULL);
}

/* Undoes every phase: temporaries of an uncommitted batch removed, fds
 * closed, the lock released. */
static void job_clear(job *j)
{
    pending_free(j->pend);
    mf_files_free(j->recs);
    fs_batch_free(j->batch);
    if (j->journal_fd >= 0)
        close(j->journal_fd);
    if (j->log_fd >= 0)
        close(j->log_fd);
    if (j->lock_fd >= 0)
        progress_unlock(j->lock_fd, j->lock_path);
    if (j->error)
        g_error_free(j->error);
    g_strfreev(j->current);
    if (j->src_fd)
        for (int i = 0; i < j->ck->n_shards; i++)
            if (j->src_fd[i] >= 0)
                close(j->src_fd[i]);
    g_free(j->src_fd);
    g_free(j->src_bs);
    g_free(j->todo);
    progress_clear(&j->prog);
    cJSON_Delete(j->source_identity);
    g_mutex_clear(&j->mu);
    g_cond_clear(&j->wake);
    plan_free(j->p);
    ckpt_close(j->ck);
    g_free(j->journal_path);
    g_free(j->state_dir);
    g_free(j->lock_path);
    g_free(j->prog_path);
    g_free(j->log_path);
}

int ex_run(const ex_opts *o, ex_result *res, GError **err)
{
    memset(res, 0, sizeof *res);
    job j;
    job_init(&j, o);
    int rc = -1;
    j.ck = ex_open_and_plan(o, &j.lt, &j.p, 0, err);
    if (j.ck) {
        res->layout = g_strdup(j.lt->name);
        res->experts_split = od_plan_mtp_breakdown(j.p);
    }
    if (j.ck && !take_lock(&j, err) && !check_source(&j, err) && !scan_done(&j, err) &&
        !open_sources(&j, err) && !check_space(&j, err) && !hand_over(&j, err) &&
        !prepare_out(&j, err)) {
        run_workers(&j);
        rc = finish(&j, res, err);
    }
    res->seconds = qm_monotonic() - j.t0;
    job_clear(&j);
    return rc;
}
