/* fs.c - see fs.h */
#include "base/fs.h"
#include "base/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- checked opens ---- */

static const char *type_name(mode_t m)
{
    if (S_ISDIR(m))
        return "a directory";
    if (S_ISFIFO(m))
        return "a FIFO";
    if (S_ISCHR(m))
        return "a character device";
    if (S_ISBLK(m))
        return "a block device";
    if (S_ISSOCK(m))
        return "a socket";
    if (S_ISLNK(m))
        return "a symbolic link";
    return "something else";
}

/* Target of the symlink at `path`, or NULL. Caller frees. */
static char *link_target(const char *path)
{
    return g_file_read_link(path, NULL);
}

/* "WHAT 'PATH': is a FIFO", naming the target of a symlink on the way. */
static int set_type_error(GError **err, const char *what, const char *path,
                          mode_t mode, int followed)
{
    int e = S_ISDIR(mode) ? EISDIR : S_ISLNK(mode) ? ELOOP : EINVAL;
    char *to = (followed || S_ISLNK(mode)) ? link_target(path) : NULL;
    const char *t = type_name(mode);
    if (S_ISLNK(mode))
        g_set_error(err, QM_ERROR, QM_ERR_IO, "%s '%s': is a symbolic link to '%s'",
                    what, path, to ? to : "?");
    else if (to)
        g_set_error(err, QM_ERROR, QM_ERR_IO, "%s '%s': is %s (through the symbolic "
                    "link to '%s')", what, path, t, to);
    else
        g_set_error(err, QM_ERROR, QM_ERR_IO, "%s '%s': is %s", what, path, t);
    g_free(to);
    errno = e;
    return -1;
}

/* open() (openat(dirfd, name) when name is given; path names the file in
 * messages) with O_NONBLOCK, then the fstat check (into *st) and
 * O_NONBLOCK cleared unless flags asked for it. */
static int open_checked_at(int dirfd, const char *name, const char *path, int flags,
                           const char *what, struct stat *st, GError **err)
{
    int fd = openat(dirfd, name ? name : path, flags | O_NONBLOCK | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        struct stat ls;
        /* ELOOP from O_NOFOLLOW, EEXIST from O_EXCL, ENXIO from a FIFO
         * opened for writing: say what is there rather than strerror */
        if (lstat(path, &ls) == 0 && !S_ISREG(ls.st_mode) &&
            ((flags & O_NOFOLLOW) || !S_ISLNK(ls.st_mode)))
            return set_type_error(err, what, path, ls.st_mode, 0);
        qm_set_errno(err, e, what, path);
        errno = e;
        return -1;
    }
    if (fstat(fd, st) != 0) {
        int e = errno;
        close(fd);
        qm_set_errno(err, e, what, path);
        errno = e;
        return -1;
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        return set_type_error(err, what, path, st->st_mode, !(flags & O_NOFOLLOW));
    }
    /* F_SETFL changes only the status flags (O_APPEND, O_NONBLOCK, ...), so
     * the caller's flags less O_NONBLOCK are the file's: no F_GETFL */
    if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        qm_set_errno(err, e, what, path);
        errno = e;
        return -1;
    }
    return fd;
}

static int open_checked(const char *path, int flags, const char *what, struct stat *st,
                        GError **err)
{
    return open_checked_at(AT_FDCWD, NULL, path, flags, what, st, err);
}

static int open_regular_at(int dirfd, const char *name, const char *path, int flags,
                           const char *what, struct stat *st, GError **err)
{
    if (fstatat(dirfd, name ? name : path, st, 0) != 0) {
        int e = errno;
        qm_set_errno(err, e, what, path);
        errno = e;
        return -1;
    }
    if (!S_ISREG(st->st_mode))
        return set_type_error(err, what, path, st->st_mode, 1);
    return open_checked_at(dirfd, name, path, flags & ~O_CREAT, what, st, err);
}

int fs_open_regular_stat(const char *path, int flags, const char *what, struct stat *st,
                         GError **err)
{
    return open_regular_at(AT_FDCWD, NULL, path, flags, what, st, err);
}

int fs_open_regular(const char *path, int flags, const char *what, GError **err)
{
    struct stat st;
    return fs_open_regular_stat(path, flags, what, &st, err);
}

struct fs_dir {
    int fd;
    GMutex lock;
    GHashTable *listed; /* subdirectory ("" for the top) -> fs_sub */
};

/* A subdirectory held open, and the names readdir showed there as regular
 * files. */
typedef struct {
    int fd; /* -1 when it could not be read: its files are opened by path */
    GHashTable *regular;
} fs_sub;

static void sub_free(gpointer p)
{
    fs_sub *s = p;
    if (s->fd >= 0)
        close(s->fd);
    g_hash_table_destroy(s->regular);
    g_free(s);
}

fs_dir *fs_dir_open(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    fs_dir *d = g_new0(fs_dir, 1);
    d->fd = fd;
    g_mutex_init(&d->lock);
    d->listed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, sub_free);
    return d;
}

void fs_dir_close(fs_dir *d)
{
    if (!d)
        return;
    g_hash_table_destroy(d->listed);
    close(d->fd);
    g_mutex_clear(&d->lock);
    g_free(d);
}

/* SUB, opened and listed on first use. */
static fs_sub *listing(fs_dir *d, const char *sub)
{
    fs_sub *s = g_hash_table_lookup(d->listed, sub);
    if (s)
        return s;
    s = g_new0(fs_sub, 1);
    s->regular = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    s->fd = *sub ? openat(d->fd, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : dup(d->fd);
    int lfd = s->fd >= 0 ? dup(s->fd) : -1; /* closedir closes its own */
    DIR *dir = lfd >= 0 ? fdopendir(lfd) : NULL;
    if (dir) {
        const struct dirent *e;
        while ((e = readdir(dir)))
            if (e->d_type == DT_REG)
                g_hash_table_add(s->regular, g_strdup(e->d_name));
        closedir(dir);
    } else if (lfd >= 0) {
        close(lfd);
    }
    g_hash_table_insert(d->listed, g_strdup(sub), s);
    return s;
}

int fs_dir_lists(fs_dir *d, const char *name)
{
    const char *slash = strrchr(name, '/'), *base = slash ? slash + 1 : name;
    char *sub = slash ? g_strndup(name, (gsize)(slash - name)) : g_strdup("");
    g_mutex_lock(&d->lock);
    int regular = g_hash_table_contains(listing(d, sub)->regular, base);
    g_mutex_unlock(&d->lock);
    g_free(sub);
    return regular;
}

int fs_dir_open_regular(fs_dir *d, const char *name, const char *path, int flags,
                        const char *what, struct stat *st, GError **err)
{
    if (!d)
        return open_regular_at(AT_FDCWD, NULL, path, flags, what, st, err);
    const char *slash = strrchr(name, '/'), *base = slash ? slash + 1 : name;
    char *sub = slash ? g_strndup(name, (gsize)(slash - name)) : g_strdup("");
    g_mutex_lock(&d->lock);
    fs_sub *s = listing(d, sub);
    int regular = g_hash_table_contains(s->regular, base);
    g_mutex_unlock(&d->lock);
    g_free(sub);
    if (s->fd < 0)
        return open_regular_at(AT_FDCWD, NULL, path, flags, what, st, err);
    /* listed as a regular file: the stat() before the open is done; the
     * fstat() after it still checks the file opened */
    if (regular)
        return open_checked_at(s->fd, base, path, flags & ~O_CREAT, what, st, err);
    return open_regular_at(s->fd, base, path, flags, what, st, err);
}

int fs_open_out(const char *path, int flags, const char *what, GError **err)
{
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return set_type_error(err, what, path, st.st_mode, 0);
    struct stat ost;
    return open_checked(path, flags | O_NOFOLLOW, what, &ost, err);
}

static int read_all(int fd, const char *path, const char *what, char **data, size_t *len,
                    GError **err)
{
    if (fd < 0)
        return -1;
    struct stat st;
    /* room for the size fstat gives, the NUL and one byte more, so that
     * EOF is seen without growing the buffer */
    size_t cap = fstat(fd, &st) == 0 && st.st_size > 0 ? (size_t)st.st_size + 2 : 4096;
    size_t n = 0;
    char *buf = g_malloc(cap);
    for (;;) {
        if (n + 1 >= cap) /* the file grew: read on */
            buf = g_realloc(buf, cap *= 2);
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            g_free(buf);
            close(fd);
            qm_set_errno(err, e, what, path);
            errno = e;
            return -1;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *data = buf;
    if (len)
        *len = n;
    return 0;
}

int fs_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return -1;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int fs_read_file(const char *path, const char *what, char **data, size_t *len,
                 GError **err)
{
    *data = NULL;
    if (len)
        *len = 0;
    return read_all(fs_open_regular(path, O_RDONLY, what, err), path, what, data, len,
                    err);
}

int fs_read_out_file(const char *path, const char *what, char **data, size_t *len,
                     GError **err)
{
    *data = NULL;
    if (len)
        *len = 0;
    return read_all(fs_open_out(path, O_RDONLY, what, err), path, what, data, len, err);
}

int fs_check_regular(const char *path, GError **err)
{
    struct stat st;
    if (stat(path, &st) != 0 || S_ISREG(st.st_mode))
        return 0; /* absent (or a dangling link): its reader says so */
    const char *t = type_name(st.st_mode);
    char *to = link_target(path);
    if (to)
        g_set_error(err, QM_ERROR, QM_ERR_IO, "'%s' is %s (through the symbolic link "
                    "to '%s'), not a regular file", path, t, to);
    else
        g_set_error(err, QM_ERROR, QM_ERR_IO, "'%s' is %s, not a regular file", path, t);
    g_free(to);
    return -1;
}

int fs_mkdir_out(const char *out, const char *path, GError **err)
{
    if (fs_mkdir_p(out, err))
        return -1;
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/')
        n--;
    if (strncmp(path, out, n) != 0 || (path[n] && path[n] != '/')) {
        g_set_error(err, QM_ERROR, QM_ERR_IO, "'%s' is not inside '%s'", path, out);
        return -1;
    }
    GString *p = g_string_new_len(out, (gssize)n);
    const char *s = path + n;
    int rc = 0;
    while (*s && !rc) {
        while (*s == '/')
            s++;
        const char *e = s;
        while (*e && *e != '/')
            e++;
        if (e == s)
            break;
        g_string_append_c(p, '/');
        g_string_append_len(p, s, e - s);
        s = e;
        if (mkdir(p->str, 0755) != 0 && errno != EEXIST) {
            rc = qm_set_errno(err, errno, "cannot create directory", p->str);
            break;
        }
        struct stat st;
        if (lstat(p->str, &st) != 0) {
            rc = qm_set_errno(err, errno, "cannot create directory", p->str);
        } else if (S_ISLNK(st.st_mode)) {
            char *to = link_target(p->str);
            g_set_error(err, QM_ERROR, QM_ERR_IO, "'%s' is a symbolic link to '%s': "
                        "refusing to write outside '%s'", p->str, to ? to : "?", out);
            g_free(to);
            rc = -1;
        } else if (!S_ISDIR(st.st_mode)) {
            const char *t = type_name(st.st_mode);
            g_set_error(err, QM_ERROR, QM_ERR_IO, "cannot create directory '%s': "
                        "it is %s", p->str, S_ISREG(st.st_mode) ? "a file" : t);
            rc = -1;
        }
    }
    g_string_free(p, TRUE);
    return rc;
}

/* ---- files complete under their final name ---- */

/* The pid in temporaries' names, asked once per process: a child of
 * fork() (--detach) asks again, as its temporaries must name it. */
static pid_t tmp_pid;

static void tmp_pid_forget(void)
{
    tmp_pid = 0;
}

static pid_t tmp_pid_get(void)
{
    static gsize once;
    if (g_once_init_enter(&once)) {
        pthread_atfork(NULL, NULL, tmp_pid_forget);
        g_once_init_leave(&once, 1);
    }
    pid_t p = __atomic_load_n(&tmp_pid, __ATOMIC_RELAXED);
    if (!p) {
        p = getpid();
        __atomic_store_n(&tmp_pid, p, __ATOMIC_RELAXED);
    }
    return p;
}

/* Creates the temporary: O_EXCL | O_NOFOLLOW make the new file regular
 * and ours by construction, so none of fs_open_out's checks (lstat before,
 * fstat after, O_NONBLOCK on and off) is needed: four syscalls less per
 * file. Only when something is in the way is it looked at: a regular
 * leftover of an earlier process with our pid (or of a filesystem that
 * created the file before refusing O_DIRECT) is replaced, anything else
 * refused by name. -1 with *err set. */
static int create_tmp(const char *tmp, int direct, int *is_direct, GError **err)
{
    int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    for (int tries = 0; tries < 4; tries++) {
        int fd = open(tmp, flags | (direct ? O_DIRECT : 0), 0644);
        if (fd >= 0) {
            *is_direct = direct;
            return fd;
        }
        int e = errno;
        struct stat st;
        if (e == EINVAL && direct) { /* no O_DIRECT here (tmpfs) */
            direct = 0;
            continue;
        }
        if (e == EEXIST && lstat(tmp, &st) == 0) {
            if (!S_ISREG(st.st_mode))
                return set_type_error(err, "cannot create", tmp, st.st_mode, 0);
            if (unlink(tmp) == 0 || errno == ENOENT)
                continue;
            e = errno;
        }
        qm_set_errno(err, e, "cannot create", tmp);
        errno = e;
        return -1;
    }
    qm_set_errno(err, EEXIST, "cannot create", tmp);
    errno = EEXIST;
    return -1;
}

static fs_out *out_open(const char *path, int direct, GError **err)
{
    fs_out *o = g_new0(fs_out, 1);
    o->tmp = g_strdup_printf("%s.tmp.%ld", path, (long)tmp_pid_get());
    o->fd = create_tmp(o->tmp, direct, &o->direct, err);
    if (o->fd < 0) {
        g_free(o->tmp);
        g_free(o);
        return NULL;
    }
    o->path = g_strdup(path);
    return o;
}

fs_out *fs_out_open(const char *path, GError **err)
{
    return out_open(path, 0, err);
}

fs_out *fs_out_open_direct(const char *path, GError **err)
{
    return out_open(path, 1, err);
}

/* O_DIRECT off for the rest of o. */
static void out_buffered(fs_out *o)
{
    /* the status flags are known (create_tmp): no F_GETFL */
    (void)fcntl(o->fd, F_SETFL, 0);
    o->direct = 0;
}

int fs_out_write(fs_out *o, const void *buf, size_t len, GError **err)
{
    const uint8_t *p = buf;
    if (o->direct && (len % FS_DIRECT_ALIGN || (uintptr_t)p % FS_DIRECT_ALIGN ||
                      o->written % FS_DIRECT_ALIGN))
        out_buffered(o);
    while (len > 0) {
        ssize_t n = write(o->fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EINVAL && o->direct) {
                out_buffered(o);
                continue;
            }
            return qm_set_errno(err, errno, "cannot write", o->path);
        }
        if (n == 0)
            return qm_set_errno(err, ENOSPC, "cannot write", o->path);
        p += n;
        len -= (size_t)n;
        o->written += (uint64_t)n;
        if (!o->direct)
            o->cached += (uint64_t)n;
    }
    return 0;
}

static void out_free(fs_out *o)
{
    g_free(o->path);
    g_free(o->tmp);
    g_free(o);
}

int fs_out_commit(fs_out *o, GError **err)
{
    if (fsync(o->fd) != 0) {
        qm_set_errno(err, errno, "cannot sync", o->path);
        goto fail;
    }
    if (close(o->fd) != 0) {
        o->fd = -1;
        qm_set_errno(err, errno, "cannot close", o->path);
        goto fail;
    }
    o->fd = -1;
    if (rename(o->tmp, o->path) != 0) {
        qm_set_errno(err, errno, "cannot rename into place", o->path);
        goto fail;
    }
    char *dir = g_path_get_dirname(o->path);
    int rc = fs_fsync_dir(dir, err);
    g_free(dir);
    out_free(o);
    return rc;
fail:
    fs_out_abort(o);
    return -1;
}

void fs_out_abort(fs_out *o)
{
    if (!o)
        return;
    if (o->fd >= 0)
        close(o->fd);
    unlink(o->tmp);
    out_free(o);
}

typedef struct {
    int fd;
    const char *path; /* the table's key */
    int other_fs; /* not on the anchor's filesystem: a syncfs of its own */
} batch_dir;

struct fs_batch {
    int anchor;        /* fd on the filesystem, for syncfs and its errors */
    dev_t dev;         /* its device */
    char *dir;         /* where it was opened, for messages */
    GPtrArray *outs;   /* fs_out, closed */
    uint64_t bytes;
    GHashTable *dirs;  /* directory path -> batch_dir, open for the batch's life */
};

static void batch_dir_free(gpointer p)
{
    batch_dir *d = p;
    close(d->fd);
    g_free(d);
}

fs_batch *fs_batch_new(const char *dir, GError **err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        qm_set_errno(err, errno, "cannot open directory", dir);
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    fs_batch *b = g_new0(fs_batch, 1);
    b->anchor = fd;
    b->dev = st.st_dev;
    b->dir = g_strdup(dir);
    b->outs = g_ptr_array_new();
    b->dirs = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, batch_dir_free);
    return b;
}

int fs_out_finish(fs_out *o, GError **err)
{
    if (o->cached >= FS_WRITEBACK_MIN)
        (void)sync_file_range(o->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    int r = close(o->fd);
    o->fd = -1;
    if (r != 0)
        return qm_set_errno(err, errno, "cannot close", o->path);
    return 0;
}

void fs_batch_add(fs_batch *b, fs_out *o)
{
    g_ptr_array_add(b->outs, o);
    b->bytes += o->written;
}

int fs_batch_count(const fs_batch *b)
{
    return (int)b->outs->len;
}

uint64_t fs_batch_bytes(const fs_batch *b)
{
    return b->bytes;
}

void fs_batch_abort(fs_batch *b)
{
    for (guint i = 0; i < b->outs->len; i++)
        fs_out_abort(b->outs->pdata[i]);
    g_ptr_array_set_size(b->outs, 0);
    b->bytes = 0;
}

void fs_batch_free(fs_batch *b)
{
    if (!b)
        return;
    fs_batch_abort(b);
    g_ptr_array_free(b->outs, TRUE);
    g_hash_table_destroy(b->dirs);
    close(b->anchor);
    g_free(b->dir);
    g_free(b);
}

/* The open directory of o's final name, opened on first use. */
static batch_dir *dir_of(fs_batch *b, const fs_out *o, GError **err)
{
    char *path = g_path_get_dirname(o->path);
    batch_dir *d = g_hash_table_lookup(b->dirs, path);
    if (d) {
        g_free(path);
        return d;
    }
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        qm_set_errno(err, errno, "cannot open directory", path);
        if (fd >= 0)
            close(fd);
        g_free(path);
        return NULL;
    }
    d = g_new0(batch_dir, 1);
    d->fd = fd;
    d->path = path;
    d->other_fs = st.st_dev != b->dev;
    g_hash_table_insert(b->dirs, path, d);
    return d;
}

int fs_batch_commit(fs_batch *b, GError **err)
{
    guint n = b->outs->len;
    if (n == 0)
        return 0;
    /* The directories touched (a batch has a few: a linear look-up). */
    GPtrArray *dirs = g_ptr_array_new();
    int rc = 0;
    for (guint i = 0; i < n && !rc; i++) {
        batch_dir *d = dir_of(b, b->outs->pdata[i], err);
        if (!d)
            rc = -1;
        else if (!g_ptr_array_find(dirs, d, NULL))
            g_ptr_array_add(dirs, d);
    }
    /* syncfs reports the writeback errors of the filesystem since the
     * anchor was opened (Linux >= 5.8), those of files already closed
     * included. A directory on another filesystem (a mount inside OUT)
     * gets its own, which sees errors since its first batch. */
    if (!rc && syncfs(b->anchor) != 0)
        rc = qm_set_errno(err, errno, "cannot sync the filesystem of", b->dir);
    for (guint k = 0; k < dirs->len && !rc; k++) {
        batch_dir *d = dirs->pdata[k];
        if (d->other_fs && syncfs(d->fd) != 0)
            rc = qm_set_errno(err, errno, "cannot sync the filesystem of", d->path);
    }
    /* Renamed files leave the array; a failure aborts the rest. */
    for (guint i = 0; i < n && !rc; i++) {
        fs_out *o = b->outs->pdata[i];
        if (rename(o->tmp, o->path) != 0) {
            rc = qm_set_errno(err, errno, "cannot rename into place", o->path);
            break;
        }
        out_free(o);
        b->outs->pdata[i] = NULL;
    }
    for (guint k = 0; k < dirs->len && !rc; k++) {
        batch_dir *d = dirs->pdata[k];
        if (fsync(d->fd) != 0 && errno != EINVAL)
            rc = qm_set_errno(err, errno, "cannot sync directory", d->path);
    }
    g_ptr_array_free(dirs, TRUE);
    for (guint i = 0; i < n; i++)
        if (b->outs->pdata[i])
            fs_out_abort(b->outs->pdata[i]);
    g_ptr_array_set_size(b->outs, 0);
    b->bytes = 0;
    return rc;
}

/* A temporary beside path holding data, or NULL with *err set. */
static fs_out *out_with(const char *path, const void *data, size_t len, GError **err)
{
    fs_out *o = fs_out_open(path, err);
    if (o && fs_out_write(o, data, len, err) != 0) {
        fs_out_abort(o);
        o = NULL;
    }
    return o;
}

int fs_write_atomic(const char *path, const void *data, size_t len, GError **err)
{
    fs_out *o = out_with(path, data, len, err);
    return o ? fs_out_commit(o, err) : -1;
}

int fs_write_replace(const char *path, const void *data, size_t len, GError **err)
{
    fs_out *o = out_with(path, data, len, err);
    if (!o)
        return -1;
    int rc = 0;
    if (close(o->fd) != 0)
        rc = qm_set_errno(err, errno, "cannot close", o->path);
    o->fd = -1;
    if (rc == 0 && rename(o->tmp, o->path) != 0)
        rc = qm_set_errno(err, errno, "cannot rename into place", o->path);
    if (rc != 0) {
        fs_out_abort(o);
        return -1;
    }
    out_free(o);
    return 0;
}

int fs_mkdir_p(const char *path, GError **err)
{
    if (g_mkdir_with_parents(path, 0755) != 0)
        return qm_set_errno(err, errno, "cannot create directory", path);
    return 0;
}

int fs_fsync_dir(const char *dir, GError **err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return qm_set_errno(err, errno, "cannot open directory", dir);
    int rc = 0;
    if (fsync(fd) != 0 && errno != EINVAL)
        rc = qm_set_errno(err, errno, "cannot sync directory", dir);
    close(fd);
    return rc;
}

/* Only the last component counts: a directory such as "run.tmp.3/" does
 * not make every file under it a temporary. */
static const char *base_name(const char *name)
{
    const char *s = strrchr(name, '/');
    return s ? s + 1 : name;
}

int fs_is_tmp(const char *name)
{
    return strstr(base_name(name), ".tmp.") != NULL;
}

pid_t fs_tmp_pid(const char *name)
{
    /* The pid follows the last ".tmp." (the final name may contain one). */
    const char *p = NULL;
    for (const char *q = base_name(name); (q = strstr(q, ".tmp.")); q++)
        p = q;
    if (!p)
        return 0;
    char *end;
    long v = strtol(p + 5, &end, 10);
    return (*end == '\0' && v > 0) ? (pid_t)v : 0;
}

int64_t fs_file_size(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    if (!S_ISREG(st.st_mode)) {
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        return -1;
    }
    return (int64_t)st.st_size;
}

int fs_pid_alive(pid_t pid)
{
    if (pid <= 0)
        return 0;
    return kill(pid, 0) == 0 || errno == EPERM;
}

#define FS_HUGE (2u << 20)

uint8_t *fs_buf_alloc(size_t size)
{
    uint8_t *b = g_aligned_alloc(1, size ? size : 1, size >= FS_HUGE ? FS_HUGE : FS_DIRECT_ALIGN);
    if (size >= FS_HUGE)
        (void)madvise(b, size / FS_HUGE * FS_HUGE, MADV_HUGEPAGE); /* a hint */
    return b;
}
