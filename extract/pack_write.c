/* pack_write.c - qmoe-pack's writing: shards streamed range by range (pack.h) */
#include "pack.h"
#include "extract_copy.h"
#include "base/fs.h"
#include "base/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* Bytes read at a time per writer: the memory bound of a job is this
 * times the writer threads, whatever the size of the tensors. A multiple of
 * every block size, so that a chunk boundary keeps a range's phase. */
#define PK_CHUNK (8u << 20)

static st_entry *file_entries(const pk_job *j, const pk_file *f)
{
    st_entry *e = g_new0(st_entry, f->n);
    for (int i = 0; i < f->n; i++) {
        const pk_tensor *t = &j->tensors[f->first + i];
        e[i].name = t->name;
        e[i].dtype = t->dtype;
        e[i].ndim = t->ndim;
        memcpy(e[i].shape, t->shape, sizeof e[i].shape);
        e[i].nbytes = t->nbytes;
    }
    return e;
}

uint64_t pk_job_bytes(const pk_job *j)
{
    uint64_t n = 0;
    for (int i = 0; i < j->n_files; i++) {
        st_entry *e = file_entries(j, &j->files[i]);
        GByteArray *h = st_header_build(e, j->files[i].n, NULL, 8, 0, NULL);
        n += j->files[i].data_bytes + (h ? h->len : 0);
        if (h)
            g_byte_array_unref(h);
        g_free(e);
    }
    for (int i = 0; i < j->n_extra; i++)
        n += j->extra[i].size;
    return n;
}

typedef struct {
    pk_job *j;
    const pk_write_opts *o;
    char *dest;
    uint64_t bs;          /* reflink block size, 0 = copy */
    gint reflink;         /* still worth trying */
    gint next;            /* next file to take */
    gint finished;        /* workers done */
    guint64 done;         /* bytes written, for progress */
    guint64 shared;
    GMutex lock;
    GError *error;        /* the first failure */
    GPtrArray *written;   /* final paths put in DEST (for the cleanup) */
} pk_run;

static void run_fail(pk_run *r, GError *e)
{
    g_mutex_lock(&r->lock);
    if (!r->error)
        r->error = e;
    else
        g_error_free(e);
    g_mutex_unlock(&r->lock);
}

static int run_failed(pk_run *r)
{
    g_mutex_lock(&r->lock);
    int f = r->error != NULL;
    g_mutex_unlock(&r->lock);
    return f || (r->o->stop && *r->o->stop);
}

static void sha_hex(EVP_MD_CTX *sha, char out[65])
{
    unsigned char md[32];
    unsigned int n = 0;
    EVP_DigestFinal_ex(sha, md, &n);
    qm_hex(md, 32, out);
}

/* One shard: header, then every range of every tensor, chunk by chunk. */
static int write_file(pk_run *r, pk_file *f, uint8_t *buf, GError **err)
{
    pk_job *j = r->j;
    st_entry *e = file_entries(j, f);
    uint64_t align = 8, phase = 0;
    if (r->bs && g_atomic_int_get(&r->reflink)) {
        int n = 0;
        for (int i = 0; i < f->n; i++)
            n += j->tensors[f->first + i].n_ranges;
        uint64_t *off = g_new(uint64_t, n), *len = g_new(uint64_t, n);
        int *ok = g_new(int, n), k = 0, use = 0;
        for (int i = 0; i < f->n; i++)
            for (int q = 0; q < j->tensors[f->first + i].n_ranges; q++, k++) {
                off[k] = j->tensors[f->first + i].ranges[q].off;
                len[k] = j->tensors[f->first + i].ranges[q].len;
                ok[k] = 1;
            }
        phase = ec_phase(off, len, ok, n, r->bs, &use);
        if (use)
            align = r->bs;
        else
            phase = 0;
        g_free(off);
        g_free(len);
        g_free(ok);
    }
    GByteArray *hdr = st_header_build(e, f->n, NULL, align, phase, err);
    g_free(e);
    if (!hdr)
        return -1;
    char *path = g_build_filename(r->dest, f->name, NULL);
    fs_out *o = fs_out_open(path, err);
    g_free(path);
    if (!o) {
        g_byte_array_unref(hdr);
        return -1;
    }
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    EVP_DigestInit_ex(sha, EVP_sha256(), NULL);
    EVP_DigestUpdate(sha, hdr->data, hdr->len);
    int rc = fs_out_write(o, hdr->data, hdr->len, err);
    g_byte_array_unref(hdr);
    int fd = -1, fd_shard = -1;
    uint64_t shared = 0;
    for (int i = 0; rc == 0 && i < f->n; i++) {
        const pk_tensor *t = &j->tensors[f->first + i];
        for (int q = 0; rc == 0 && q < t->n_ranges; q++) {
            const pk_range *g = &t->ranges[q];
            const ckpt_shard *s = &j->ck->shards[g->shard];
            if (fd_shard != g->shard) {
                if (fd >= 0)
                    close(fd);
                fd_shard = g->shard;
                if ((fd = fs_open_regular(s->path, O_RDONLY, "cannot open", err)) < 0) {
                    rc = -1;
                    break;
                }
            }
            for (uint64_t at = 0; rc == 0 && at < g->len;) {
                if (r->o->stop && *r->o->stop) {
                    g_set_error(err, QM_ERROR, QM_ERR_STOPPED, "stopped by a signal");
                    rc = -1;
                    break;
                }
                size_t want = (size_t)MIN((uint64_t)PK_CHUNK, g->len - at);
                ssize_t got = pread(fd, buf, want, (off_t)(g->off + at));
                if (got < 0 && errno == EINTR)
                    continue;
                if (got <= 0) {
                    if (got == 0)
                        g_set_error(err, QM_ERROR, QM_ERR_IO,
                                    "cannot read '%s': tensor '%s' ends past the end of "
                                    "the file (was it truncated?)", s->path, t->src);
                    else
                        qm_set_errno(err, errno, "cannot read", s->path);
                    rc = -1;
                    break;
                }
                EVP_DigestUpdate(sha, buf, (size_t)got);
                rc = ec_put(o, fd, g->off + at, buf, (size_t)got, r->bs, &r->reflink,
                            &shared, err);
                at += (uint64_t)got;
                g_atomic_pointer_add(&r->done, (gssize)got);
            }
        }
    }
    if (fd >= 0)
        close(fd);
    f->size = o->written;
    sha_hex(sha, f->sha256);
    EVP_MD_CTX_free(sha);
    if (rc) {
        fs_out_abort(o);
        return -1;
    }
    char *final = g_strdup(o->path);
    if (fs_out_commit(o, err)) {
        g_free(final);
        return -1;
    }
    g_mutex_lock(&r->lock);
    g_ptr_array_add(r->written, final);
    r->shared += shared;
    g_mutex_unlock(&r->lock);
    return 0;
}

static gpointer worker(gpointer data)
{
    pk_run *r = data;
    uint8_t *buf = g_malloc(PK_CHUNK);
    for (;;) {
        int i = g_atomic_int_add(&r->next, 1);
        if (i >= r->j->n_files || run_failed(r))
            break;
        GError *e = NULL;
        if (write_file(r, &r->j->files[i], buf, &e)) {
            run_fail(r, e);
            break;
        }
    }
    g_free(buf);
    g_atomic_int_inc(&r->finished);
    return NULL;
}

/* Writes bytes to DEST/name atomically and records its size and hash. */
static int put_small(pk_run *r, const char *name, const void *data, size_t len,
                     uint64_t *size, char sha256[65], GError **err)
{
    char *path = g_build_filename(r->dest, name, NULL);
    if (fs_write_atomic(path, data, len, err)) {
        g_free(path);
        return -1;
    }
    g_ptr_array_add(r->written, path);
    if (size) {
        EVP_MD_CTX *sha = EVP_MD_CTX_new();
        EVP_DigestInit_ex(sha, EVP_sha256(), NULL);
        EVP_DigestUpdate(sha, data, len);
        sha_hex(sha, sha256);
        EVP_MD_CTX_free(sha);
        *size = len;
    }
    return 0;
}

/* DEST absent (made, *made = 1) or an empty directory. */
static int prepare_dest(const char *dest, int *made, GError **err)
{
    struct stat st;
    *made = 0;
    if (stat(dest, &st) != 0) {
        if (errno != ENOENT)
            return qm_set_errno(err, errno, "cannot use destination", dest);
        if (fs_mkdir_p(dest, err))
            return -1;
        *made = 1;
        return 0;
    }
    if (!S_ISDIR(st.st_mode)) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "destination '%s' exists and is not a "
                    "directory", dest);
        return -1;
    }
    DIR *d = opendir(dest);
    if (!d)
        return qm_set_errno(err, errno, "cannot read destination", dest);
    struct dirent *de;
    const char *first = NULL;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            first = de->d_name;
            break;
        }
    if (first)
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "destination '%s' is not empty (it holds "
                    "'%s'): qmoe-pack writes into a new or empty directory", dest, first);
    closedir(d);
    return first ? -1 : 0;
}

static void progress_line(pk_run *r, uint64_t total, int end)
{
    char a[32], b[32];
    uint64_t done = (uint64_t)g_atomic_pointer_get(&r->done);
    fprintf(stderr, "\rqmoe-pack: %s / %s (%.1f %%)%s", qm_human_bytes(done, a, sizeof a),
            qm_human_bytes(total, b, sizeof b), total ? 100.0 * (double)done / (double)total
            : 100.0, end ? "\n" : "");
    fflush(stderr);
}

int pk_job_write(pk_job *j, const char *dest, const pk_write_opts *o, uint64_t *shared,
                 GError **err)
{
    int made;
    if (prepare_dest(dest, &made, err))
        return -1;
    pk_run r = {.j = j, .o = o, .dest = g_strdup(dest), .reflink = 1,
                .written = g_ptr_array_new_with_free_func(g_free)};
    g_mutex_init(&r.lock);
    int rc = -1;
    /* Blocks are shared when the first shard of SRC clones into DEST. */
    if (!o->no_reflink && j->ck->n_shards > 0) {
        int fd = fs_open_regular(j->ck->shards[0].path, O_RDONLY, "cannot open", NULL);
        if (fd >= 0) {
            char *probe = g_build_filename(dest, ".qmoe-pack-probe", NULL);
            r.bs = ec_probe(fd, probe);
            g_free(probe);
            close(fd);
        }
    }
    uint64_t need = pk_job_bytes(j);
    struct statvfs sv;
    if (!r.bs && statvfs(dest, &sv) == 0 &&
        (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize < need) {
        char a[32], b[32];
        g_set_error(err, QM_ERROR, QM_ERR_NOSPACE,
                    "not enough space in '%s': the checkpoint needs %s, %s are free", dest,
                    qm_human_bytes(need, a, sizeof a),
                    qm_human_bytes((uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize, b, sizeof b));
        goto out;
    }
    int nw = MAX(1, MIN(o->jobs, j->n_files));
    GThread **th = g_new(GThread *, nw);
    for (int i = 0; i < nw; i++)
        th[i] = g_thread_new("pack", worker, &r);
    while (o->progress && g_atomic_int_get(&r.finished) < nw) {
        progress_line(&r, j->total_size, 0);
        g_usleep(200000);
    }
    for (int i = 0; i < nw; i++)
        g_thread_join(th[i]);
    g_free(th);
    if (o->progress)
        progress_line(&r, j->total_size, 1);
    if (r.error) {
        g_propagate_error(err, r.error);
        r.error = NULL;
        goto out;
    }
    if (o->stop && *o->stop) {
        g_set_error(err, QM_ERROR, QM_ERR_STOPPED, "stopped by a signal");
        goto out;
    }
    for (int i = 0; i < j->n_extra; i++) {
        pk_extra *x = &j->extra[i];
        char *data = NULL;
        size_t len = 0;
        if (x->data) {
            data = (char *)x->data->data;
            len = x->data->len;
        } else if (fs_read_file(x->src, "cannot read", &data, &len, err)) {
            goto out;
        }
        int bad = put_small(&r, x->name, data, len, &x->size, x->sha256, err);
        if (!x->data)
            g_free(data);
        if (bad)
            goto out;
    }
    /* The record last: a DEST with qmoe-pack.json is complete. */
    cJSON *rec = pk_record_json(j);
    char *txt = cJSON_Print(rec);
    cJSON_Delete(rec);
    GString *s = g_string_new(txt);
    g_string_append_c(s, '\n');
    cJSON_free(txt);
    rc = put_small(&r, "qmoe-pack.json", s->str, s->len, NULL, NULL, err);
    g_string_free(s, TRUE);
    if (rc == 0 && fs_fsync_dir(dest, err))
        rc = -1;
out:
    if (rc) {
        /* Nothing of a failed pack stays behind: what it wrote is only
         * part of a checkpoint. */
        for (guint i = 0; i < r.written->len; i++)
            unlink(g_ptr_array_index(r.written, i));
        if (made)
            rmdir(dest);
    }
    *shared = r.shared;
    g_ptr_array_free(r.written, TRUE);
    g_mutex_clear(&r.lock);
    if (r.error)
        g_error_free(r.error);
    g_free(r.dest);
    return rc;
}
