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
    int direct; /* O_DIRECT still on */
} fs_out;

/* Opens a temporary beside `path`. Returns NULL with *err set. */
fs_out *fs_out_open(const char *path, GError **err);

/* Alignment of O_DIRECT writes: buffer address, length, file offset. */
#define FS_DIRECT_ALIGN 4096

/* The same, with O_DIRECT where the filesystem takes it: writes of whole
 * FS_DIRECT_ALIGN blocks from aligned buffers go from the caller's memory
 * to the disk, with no copy into the page cache (that copy costs about as
 * much CPU as SHA-256). The first write that is not aligned (a file's
 * tail), or that the filesystem refuses (EINVAL), turns O_DIRECT off for
 * the rest of the file: the bytes are the same either way. */
fs_out *fs_out_open_direct(const char *path, GError **err);

/* Writes all of buf (retrying short writes and EINTR). Errors name the
 * final file; ENOSPC/EFBIG give QM_ERR_NOSPACE. */
int fs_out_write(fs_out *o, const void *buf, size_t len, GError **err);

/* fsync, rename into place, fsync the directory, free. On failure the
 * temporary is removed and o is freed all the same. */
int fs_out_commit(fs_out *o, GError **err);

/* Removes the temporary and frees; accepts NULL. */
void fs_out_abort(fs_out *o);

/* Group commit: many fs_outs made durable and put in place together, at
 * a few filesystem journal commits per batch instead of two per file.
 * fs_out_finish ends a complete file: starts its writeback at once
 * (sync_file_range: the disk works while the caller writes the next
 * files) and closes it; fs_batch_add collects finished files.
 * fs_batch_commit makes the data of all of them durable with one syncfs()
 * of their filesystem, then renames every file into place and fsyncs each
 * directory touched once. When it returns 0,
 * every file of the batch is complete and durable under its final name.
 * On failure the files not yet renamed are removed (those renamed stay,
 * durable but maybe not recorded: the caller records none of the batch).
 * Either way the batch is empty again afterwards.
 *
 * Why syncfs and not fdatasync per file: on ext4 with a volatile disk
 * cache each fdatasync after the first of a batch still sends the disk a
 * cache flush of its own, which costs about as much as the file; syncfs
 * is one writeback sweep, one journal commit and one flush. Its price:
 * it also writes back (and waits for) the dirty pages of every other
 * writer on the same filesystem, other --shard parts included. That is
 * work the disk has to do anyway, and the pages of our own batch are
 * already on their way (fs_out_finish started them), so it mostly costs
 * latency per batch, not throughput; a filesystem shared with a heavy
 * writer makes batches slower, never wrong. Writeback errors of other
 * writers' files also fail the commit: safe, if not precise. */
typedef struct fs_batch fs_batch;

/* A batch for files under directory `dir`, reusable: open it before the
 * first file is written, so that syncfs sees every writeback error since.
 * It keeps the directories of the files committed open (for their fsync)
 * and gives one on another filesystem than dir's a syncfs of its own.
 * NULL with *err set when dir cannot be opened. */
fs_batch *fs_batch_new(const char *dir, GError **err);

/* Starts the writeback of complete o and closes its fd (o stays the
 * caller's: fs_out_abort still removes the temporary). */
int fs_out_finish(fs_out *o, GError **err);

/* Takes ownership of finished o. */
void fs_batch_add(fs_batch *b, fs_out *o);

/* Files and bytes in the batch. */
int fs_batch_count(const fs_batch *b);
uint64_t fs_batch_bytes(const fs_batch *b);

int fs_batch_commit(fs_batch *b, GError **err);

/* Removes every temporary of the batch, which stays usable (empty). */
void fs_batch_abort(fs_batch *b);

/* Aborts what is left and frees; accepts NULL. */
void fs_batch_free(fs_batch *b);

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
