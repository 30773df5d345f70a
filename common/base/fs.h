/* fs.h - files that are what they claim to be, and files that appear under
 * their final name only when complete.
 *
 * Every file qmoe opens goes through fs_open_regular (files it reads) or
 * fs_open_out (files it creates or appends inside OUT): a FIFO or a device
 * where a file belongs would block open() or read() forever, or yield
 * endless bytes; a symlink planted in OUT would redirect a write outside it.
 * The temporaries of fs_out are the exception: created with O_CREAT |
 * O_EXCL | O_NOFOLLOW, they are new regular files by construction, and
 * what is in the way is looked at only when the open fails.
 *
 * An fs_out writes to "FINAL.tmp.PID" in the same directory; fs_out_commit
 * fsyncs it, renames it to FINAL and fsyncs the directory; fs_out_abort
 * removes the temporary. Any name containing ".tmp." is a temporary.
 */
#ifndef QMOE_FS_H
#define QMOE_FS_H

#include <glib.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

typedef struct {
    int fd;
    char *path; /* final name */
    char *tmp;  /* temporary name */
    uint64_t written;
    uint64_t cached; /* of written, the bytes that went through the page cache */
    int direct; /* O_DIRECT still on */
} fs_out;

/* ---- checked opens ---- */

/* Opens an existing regular file without blocking: stat() first, so a FIFO
 * or a device is refused before it is opened; open with O_NONBLOCK (a FIFO
 * swapped in meanwhile cannot block), fstat() the fd, clear O_NONBLOCK.
 * Symlinks are followed and the check applies to their target (SRC may be
 * a Hugging Face cache, which is made of links). flags: O_RDONLY or O_RDWR
 * plus e.g. O_APPEND; O_CLOEXEC is added. Returns the fd, or -1 with *err
 * "WHAT 'PATH': is a FIFO" ("is a character device", "is a directory", or
 * strerror) and errno kept (ENOENT for a missing file). */
int fs_open_regular(const char *path, int flags, const char *what, GError **err);
/* The same, with *st the open file's fstat (its size, device): a caller
 * that needs them makes no other call. */
int fs_open_regular_stat(const char *path, int flags, const char *what, struct stat *st,
                         GError **err);
/* A directory of many files to read (an OUT opened as a checkpoint: 6197):
 * its files are opened relative to it (openat: the path above them is
 * walked once), and what readdir shows of a subdirectory, read once on
 * first use, stands for the stat() before each open: a name listed as a
 * regular file is opened at once, then checked by fstat() as above; any
 * other name (a symlink, one that appeared since) is stat()ed first. */
typedef struct fs_dir fs_dir;
/* NULL when PATH cannot be opened as a directory (open files by path). */
fs_dir *fs_dir_open(const char *path);
void fs_dir_close(fs_dir *d); /* accepts NULL */
/* fs_open_regular_stat of NAME (relative, "experts/x.safetensors") under
 * D; PATH names the file in messages; D NULL opens PATH. O_NONBLOCK in
 * flags leaves it set and saves an fcntl, for a caller that only maps or
 * preads the file (it has no effect on a regular file, open(2)). */
int fs_dir_open_regular(fs_dir *d, const char *name, const char *path, int flags,
                        const char *what, struct stat *st, GError **err);
/* 1 when the listing of NAME's directory under D (read once, as for
 * fs_dir_open_regular) shows NAME as a regular file, else 0: absent, of
 * another type, or a filesystem whose listing does not say (DT_UNKNOWN). */
int fs_dir_lists(fs_dir *d, const char *name);

/* Opens (O_CREAT: creates, mode 0644 before umask) a file qmoe writes inside
 * OUT. As fs_open_regular, but the last component must not be a symlink
 * (O_NOFOLLOW; the refusal names its target: "WHAT 'PATH': is a symbolic
 * link to 'TARGET'"). The directories above it are checked by fs_mkdir_out
 * when they are made. O_EXCL in flags refuses an existing file. */
int fs_open_out(const char *path, int flags, const char *what, GError **err);

/* Reads a whole regular file through fs_open_regular. *data is
 * NUL-terminated (not counted in *len, which may be NULL); caller g_free()s.
 * Returns 0, or -1 with *err "WHAT 'PATH': ..." and errno kept. */
int fs_read_file(const char *path, const char *what, char **data, size_t *len,
                 GError **err);

/* fs_read_file for OUT's own state files (.qmoe/): a symlink is refused as
 * by fs_open_out. */
int fs_read_out_file(const char *path, const char *what, char **data, size_t *len,
                     GError **err);

/* Reads len bytes at off into buf, through short reads and EINTR.
 * Returns 0, or -1 with errno set (EIO when the file ends first). */
int fs_pread_full(int fd, void *buf, size_t len, uint64_t off);

/* 0 if `path` is absent or (after symlinks) a regular file, else -1 with
 * *err "'PATH' is a FIFO, not a regular file" (no file is opened). For
 * readers that skip missing files but must not meet a FIFO. */
int fs_check_regular(const char *path, GError **err);

/* Makes `path`, which is `out` or a directory below it, with mode 0755
 * (before umask). OUT itself may be a symlink (the user chose it) and is
 * made with its parents; every component below it must be a directory of
 * its own, not a symlink: "'OUT/experts' is a symbolic link to 'TARGET':
 * refusing to write outside OUT". */
int fs_mkdir_out(const char *out, const char *path, GError **err);

/* ---- files complete under their final name ---- */

/* Opens a temporary beside `path` (created O_EXCL | O_NOFOLLOW: a symlink
 * planted at the temporary's name is refused; a regular leftover of an
 * earlier process with our pid is replaced). Returns NULL with *err set. */
fs_out *fs_out_open(const char *path, GError **err);

/* Alignment of O_DIRECT writes: buffer address, length, file offset. */
#define FS_DIRECT_ALIGN 4096

/* A buffer of `size` bytes in transparent huge pages where the kernel
 * gives them (THP "madvise" or "always"), FS_DIRECT_ALIGN-aligned
 * otherwise: a 4 KiB page costs a fault on first touch and a pin on
 * every O_DIRECT write (get_user_pages), each an exit to the hypervisor
 * in a paravirtualised guest; 2 MiB pages make both 512 times rarer.
 * Free with g_aligned_free. */
uint8_t *fs_buf_alloc(size_t size);

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
 * fs_out_finish ends a complete file: starts the writeback of a large
 * one at once (sync_file_range: the disk works while the caller writes
 * the next files) and closes it; fs_batch_add collects finished files.
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
 * work the disk has to do anyway, and most bytes of our own batch are
 * already on their way (O_DIRECT, or started by fs_out_finish), so it
 * mostly costs latency per batch, not throughput; a filesystem shared
 * with a heavy writer makes batches slower, never wrong. Writeback
 * errors of other writers' files also fail the commit: safe, if not
 * precise. */
typedef struct fs_batch fs_batch;

/* A batch for files under directory `dir`, reusable: open it before the
 * first file is written, so that syncfs sees every writeback error since.
 * It keeps the directories of the files committed open (for their fsync)
 * and gives one on another filesystem than dir's a syncfs of its own.
 * NULL with *err set when dir cannot be opened. */
fs_batch *fs_batch_new(const char *dir, GError **err);

/* Closes complete o's fd (o stays the caller's: fs_out_abort still
 * removes the temporary), first starting the writeback of what o wrote
 * through the page cache when that is at least FS_WRITEBACK_MIN bytes.
 * A smaller part (an O_DIRECT file's tail, a small file) is left to the
 * batch's syncfs, which writes all such pages in one sweep: started one
 * file at a time, each would be an I/O request (here a VM exit) of its
 * own, costlier than the bytes (16 KiB files: 1.71 s -> 1.28 s for
 * 14,848 of them, tests/bench/extract_files.sh). The same size is where
 * qmoe-extract stops writing files with O_DIRECT (extract_job.c). */
#define FS_WRITEBACK_MIN (256u << 10)
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

/* fs_write_atomic without the fsyncs, for advisory files rewritten many
 * times a second: the rename alone keeps readers from seeing half a file. */
int fs_write_replace(const char *path, const void *data, size_t len, GError **err);

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
