/* fs.c - see fs.h */
#include "base/fs.h"
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

fs_out *fs_out_open(const char *path, GError **err)
{
    fs_out *o = g_new0(fs_out, 1);
    o->path = g_strdup(path);
    o->tmp = g_strdup_printf("%s.tmp.%ld", path, (long)getpid());
    o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (o->fd < 0) {
        qm_set_errno(err, errno, "cannot create", o->tmp);
        g_free(o->path);
        g_free(o->tmp);
        g_free(o);
        return NULL;
    }
    return o;
}

int fs_out_write(fs_out *o, const void *buf, size_t len, GError **err)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(o->fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return qm_set_errno(err, errno, "cannot write", o->path);
        }
        if (n == 0)
            return qm_set_errno(err, ENOSPC, "cannot write", o->path);
        p += n;
        len -= (size_t)n;
        o->written += (uint64_t)n;
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

int fs_write_atomic(const char *path, const void *data, size_t len, GError **err)
{
    fs_out *o = fs_out_open(path, err);
    if (!o)
        return -1;
    if (fs_out_write(o, data, len, err) != 0) {
        fs_out_abort(o);
        return -1;
    }
    return fs_out_commit(o, err);
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
