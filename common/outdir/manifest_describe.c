/* manifest_describe.c - an OUT opened as a checkpoint, its headers taken
 * from qmoe.json (manifest.h, mf_ckpt_describe).
 *
 * Opening an OUT of 6197 files read every file's header: four system calls
 * and a small parse per file, nearly twice the time of opening its source
 * of 3 shards. qmoe.json already holds each file's size and tensors, so
 * one read of it replaces the 6197: the checkpoint layer is told each
 * header (ckpt_shard_describe) and compares it with the file when the data
 * is first wanted. qmoe.json is ~7 MB, almost all of it what the headers
 * do not need (hashes, CRCs, source offsets): it is scanned here without
 * building a cJSON tree, reading path, size and each tensor's name, dtype,
 * shape and offsets and skipping the rest. Anything the scanner does not
 * understand, or any doubt (incomplete extraction, a file the index names
 * that qmoe.json or the directory listing lacks, a record st_describe
 * refuses), leaves the checkpoint to read its files as before.
 */
#include "outdir/manifest.h"
#include "base/fs.h"
#include "base/json.h"
#include "base/util.h"
#include "outdir/names.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    qm_jcur j;
    GString *s; /* the last string read */
} mcur;

static int byte(mcur *c, char ch)
{
    qm_jcur_ws(&c->j);
    if (c->j.p >= c->j.end || *c->j.p != ch)
        return -1;
    c->j.p++;
    return 0;
}

/* A string into c->s (no NUL inside: a name with one is not ours). */
static int str(mcur *c)
{
    const char *why;
    qm_jcur_ws(&c->j);
    g_string_truncate(c->s, 0);
    const char *q = c->j.p < c->j.end ? qm_json_get_str(c->j.p, c->j.end, c->s, &why) : NULL;
    if (!q || memchr(c->s->str, '\0', c->s->len))
        return -1;
    c->j.p = q;
    return 0;
}

/* A plain integer of up to 15 digits (exact as a double, as written). */
static int unum(mcur *c, uint64_t *v)
{
    qm_jcur_ws(&c->j);
    int n = 0;
    *v = 0;
    while (c->j.p < c->j.end && *c->j.p >= '0' && *c->j.p <= '9' && n < 16) {
        *v = *v * 10 + (uint64_t)(*c->j.p++ - '0');
        n++;
    }
    if (n == 0 || n > 15 ||
        (c->j.p < c->j.end && (*c->j.p == '.' || *c->j.p == 'e' || *c->j.p == 'E')))
        return -1;
    return 0;
}

/* "[int, ...]" of at most max entries. */
static int uints(mcur *c, uint64_t *v, int max, int *n)
{
    *n = 0;
    if (byte(c, '['))
        return -1;
    qm_jcur_ws(&c->j);
    if (c->j.p < c->j.end && *c->j.p == ']') {
        c->j.p++;
        return 0;
    }
    for (;;) {
        if (*n == max || unum(c, &v[*n]))
            return -1;
        (*n)++;
        int more = qm_jcur_next(&c->j, ']');
        if (more <= 0)
            return more;
    }
}

/* The tensors of one record, the names NUL-separated in `names` (their
 * offsets in st_tensor.name until the record is complete). */
typedef struct {
    GArray *t;       /* st_tensor */
    GString *names;
} mtable;

static int tensor(mcur *c, mtable *tb)
{
    st_tensor t = {0};
    int seen = 0;
    if (byte(c, '{'))
        return -1;
    for (;;) {
        if (str(c) || byte(c, ':'))
            return -1;
        uint64_t v[ST_MAX_DIMS];
        int n, d;
        if (strcmp(c->s->str, "name") == 0 && !(seen & 1)) {
            if (str(c))
                return -1;
            t.name = GSIZE_TO_POINTER(tb->names->len);
            g_string_append_len(tb->names, c->s->str, (gssize)c->s->len + 1);
            seen |= 1;
        } else if (strcmp(c->s->str, "dtype") == 0 && !(seen & 2)) {
            if (str(c) || (d = st_dtype_parse(c->s->str)) < 0)
                return -1;
            t.dtype = (st_dtype)d;
            seen |= 2;
        } else if (strcmp(c->s->str, "shape") == 0 && !(seen & 4)) {
            if (uints(c, v, ST_MAX_DIMS, &n))
                return -1;
            t.ndim = n;
            for (int k = 0; k < n; k++)
                t.shape[k] = (int64_t)v[k];
            seen |= 4;
        } else if (strcmp(c->s->str, "offsets") == 0 && !(seen & 8)) {
            if (uints(c, v, 2, &n) || n != 2)
                return -1;
            t.begin = v[0];
            t.end = v[1];
            seen |= 8;
        } else if (qm_jcur_skip(&c->j)) {
            return -1;
        }
        int more = qm_jcur_next(&c->j, '}');
        if (more < 0)
            return -1;
        if (!more)
            break;
    }
    if (seen != 15)
        return -1;
    g_array_append_val(tb->t, t);
    return 0;
}

/* One record of "files": its path into *path (caller frees), size, and
 * tensors into tb. */
static int record(mcur *c, char **path, uint64_t *size, mtable *tb)
{
    int seen = 0;
    g_array_set_size(tb->t, 0);
    g_string_truncate(tb->names, 0);
    if (byte(c, '{'))
        return -1;
    for (;;) {
        if (str(c) || byte(c, ':'))
            return -1;
        if (strcmp(c->s->str, "path") == 0 && !(seen & 1)) {
            if (str(c))
                return -1;
            *path = g_strndup(c->s->str, c->s->len);
            seen |= 1;
        } else if (strcmp(c->s->str, "size") == 0 && !(seen & 2)) {
            if (unum(c, size))
                return -1;
            seen |= 2;
        } else if (strcmp(c->s->str, "tensors") == 0 && !(seen & 4)) {
            if (byte(c, '['))
                return -1;
            qm_jcur_ws(&c->j);
            if (c->j.p < c->j.end && *c->j.p == ']') {
                c->j.p++;
            } else {
                for (int more = 1; more > 0;) {
                    if (tensor(c, tb))
                        return -1;
                    if ((more = qm_jcur_next(&c->j, ']')) < 0)
                        return -1;
                }
            }
            seen |= 4;
        } else if (qm_jcur_skip(&c->j)) {
            return -1;
        }
        int more = qm_jcur_next(&c->j, '}');
        if (more < 0)
            return -1;
        if (!more)
            return seen == 7 ? 0 : -1;
    }
}

static int cmp_shard(const void *key, const void *s)
{
    return strcmp(key, ((const ckpt_shard *)s)->name);
}

/* Reads "files" into hdr[] (by shard index; records of files the index
 * does not name are skipped). -1 when anything is not as expected. */
static int scan_files(mcur *c, ckpt *ck, st_file **hdr, uint64_t dev)
{
    mtable tb = {g_array_new(FALSE, FALSE, sizeof(st_tensor)), g_string_sized_new(512)};
    int rc = -1;
    if (byte(c, '['))
        goto out;
    qm_jcur_ws(&c->j);
    if (c->j.p < c->j.end && *c->j.p == ']') {
        c->j.p++;
        rc = 0;
        goto out;
    }
    for (int more = 1; more > 0;) {
        char *path = NULL;
        uint64_t size = 0;
        if (record(c, &path, &size, &tb)) {
            g_free(path);
            goto out;
        }
        const ckpt_shard *s = bsearch(path, ck->shards, (size_t)ck->n_shards,
                                      sizeof *ck->shards, cmp_shard);
        g_free(path);
        if (s) {
            int i = (int)(s - ck->shards);
            st_tensor *t = (st_tensor *)(void *)tb.t->data;
            for (guint k = 0; k < tb.t->len; k++)
                t[k].name = tb.names->str + GPOINTER_TO_SIZE(t[k].name);
            if (hdr[i]) /* a path twice: not what qmoe writes */
                goto out;
            hdr[i] = st_describe(s->path, t, (int)tb.t->len, size, NULL);
            if (!hdr[i])
                goto out;
            hdr[i]->dev = dev;
        }
        if ((more = qm_jcur_next(&c->j, ']')) < 0)
            goto out;
    }
    rc = 0;
out:
    g_array_free(tb.t, TRUE);
    g_string_free(tb.names, TRUE);
    return rc;
}

/* qmoe.json's top level: tool "qmoe", complete true, and the files. */
static int scan(const char *text, size_t len, ckpt *ck, st_file **hdr, uint64_t dev)
{
    GString *s = g_string_sized_new(64);
    mcur c = {{text, text + len}, s};
    int rc = -1, qmoe = 0, complete = 0, files = 0;
    if (byte(&c, '{'))
        goto out;
    for (;;) {
        if (str(&c) || byte(&c, ':'))
            goto out;
        if (strcmp(s->str, "tool") == 0) {
            if (str(&c))
                goto out;
            qmoe = strcmp(s->str, "qmoe") == 0;
        } else if (strcmp(s->str, "complete") == 0) {
            qm_jcur_ws(&c.j);
            complete = c.j.end - c.j.p >= 4 && memcmp(c.j.p, "true", 4) == 0;
            if (qm_jcur_skip(&c.j))
                goto out;
        } else if (strcmp(s->str, "files") == 0 && !files) {
            if (scan_files(&c, ck, hdr, dev))
                goto out;
            files = 1;
        } else if (qm_jcur_skip(&c.j)) {
            goto out;
        }
        int more = qm_jcur_next(&c.j, '}');
        if (more < 0)
            goto out;
        if (!more)
            break;
    }
    rc = qmoe && complete && files ? 0 : -1;
out:
    g_string_free(s, TRUE);
    return rc;
}

int mf_ckpt_describe(ckpt *ck)
{
    if (ck->n_shards == 0 || ck->described_by)
        return 0;
    for (int i = 0; i < ck->n_shards; i++)
        if (ck->shards[i].st)
            return 0; /* a single file, read at open: nothing to save */
    char *path = g_build_filename(ck->dir, OD_MANIFEST, NULL);
    struct stat st;
    st_file **hdr = g_new0(st_file *, ck->n_shards);
    fs_dir *own = NULL, *d = ck->dir_h;
    /* read into huge pages: 7 MB into fresh 4 KiB pages cost ~1700 page
     * faults, more than the scan; a mapping would die of SIGBUS if the
     * file were cut short under it */
    int n = 0, ok = 0, fd = fs_open_regular_stat(path, O_RDONLY, "cannot open", &st, NULL);
    if (fd >= 0 && st.st_size > 0 && (uint64_t)st.st_size < ((uint64_t)1 << 32)) {
        size_t len = (size_t)st.st_size;
        uint8_t *buf = fs_buf_alloc(len);
        /* a file cut short while read is left to the fallback */
        if (fs_pread_full(fd, buf, len, 0) == 0)
            ok = scan((const char *)buf, len, ck, hdr, (uint64_t)st.st_dev) == 0;
        g_aligned_free(buf);
    }
    if (fd >= 0)
        close(fd);
    /* every file the index names: in qmoe.json, and in the directory as a
     * regular file (one listing per folder, no stat per file) */
    if (ok && !d)
        d = own = fs_dir_open(ck->dir);
    for (int i = 0; ok && i < ck->n_shards; i++)
        ok = hdr[i] && d && fs_dir_lists(d, ck->shards[i].name);
    /* a description that disagrees with the index leaves that shard to
     * be read (ckpt_shard_describe refuses it) */
    for (int i = 0; i < ck->n_shards; i++) {
        st_file *h = hdr[i];
        if (ok && ckpt_shard_describe(ck, i, h, OD_MANIFEST, NULL) == 0)
            n++;
        else if (!ok)
            st_close(h);
    }
    fs_dir_close(own);
    g_free(hdr);
    g_free(path);
    return n;
}
