/* fs.h - files that appear under their final name only when complete.
 *
 * An fs_out writes to "FINAL.tmp.PID" in the same directory; fs_out_commit
 * fsyncs it, renames it to FINAL and fsyncs the directory; fs_out_abort
 * removes the temporary. Any name containing ".tmp." is a temporary.
 */
#ifndef QMOE_FS_H
#define QMOE_FS_H

#include <glib.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
    int fd;
    char *path; /* final name */
    char *tmp;  /* temporary name */
    uint64_t written;
} fs_out;

/* Opens a temporary beside `path`. Returns NULL with *err set. */
fs_out *fs_out_open(const char *path, GError **err);

/* Writes all of buf (retrying short writes and EINTR). Errors name the
 * final file; ENOSPC/EFBIG give QM_ERR_NOSPACE. */
int fs_out_write(fs_out *o, const void *buf, size_t len, GError **err);

/* fsync, rename into place, fsync the directory, free. On failure the
 * temporary is removed and o is freed all the same. */
int fs_out_commit(fs_out *o, GError **err);

/* Removes the temporary and frees; accepts NULL. */
void fs_out_abort(fs_out *o);

/* Whole-file atomic write through an fs_out. */
int fs_write_atomic(const char *path, const void *data, size_t len, GError **err);

/* mkdir -p. */
int fs_mkdir_p(const char *path, GError **err);

/* fsync a directory so that renames in it survive a crash. */
int fs_fsync_dir(const char *dir, GError **err);

/* 1 if `name` (a basename or path) is one of our temporaries: its last
 * component contains ".tmp." (directories above it do not count). */
int fs_is_tmp(const char *name);

/* pid encoded in a temporary's name (digits after the last ".tmp." of the
 * last component, to the end), or 0. */
pid_t fs_tmp_pid(const char *name);

/* Size of a regular file, or -1 (errno set) if missing / not regular. */
int64_t fs_file_size(const char *path);

/* 1 if process `pid` exists. */
int fs_pid_alive(pid_t pid);

#endif
