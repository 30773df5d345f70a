/* extract_pipe.h - a worker's writes, done behind its reads and hashes.
 *
 * A worker of qmoe-extract reads a piece of the source, hashes it and
 * writes it. Done one after the other, an O_DIRECT write keeps the worker
 * waiting for the disk while its core idles, and the hash of the next
 * piece keeps the disk idle. An xp_writer is a thread that does one
 * worker's writes: the worker fills a buffer, hands it over (xp_put) and
 * reads and hashes the next piece into another while the writer writes
 * this one; it hands over a complete file (xp_finish) and starts the next
 * file while the writer writes the last piece of this one, then closes it
 * and passes it on (the `done` callback). XP_NBUF buffers per writer: one
 * being filled, one being written, one waiting, so that neither side
 * waits for the other while both keep up.
 *
 * Order: the writer does what it is given in the order given. A file is
 * passed to `done` only after every byte of it was written and its
 * writeback started (fs_out_finish): still a temporary, not yet durable;
 * the job's group commit (fs.h) makes it so and records it.
 *
 * Errors: the first failing write or close is kept; the writer then
 * removes the temporary of that file and of every later one instead of
 * writing it (no `done` for them) and xp_close returns the error, once.
 * xp_failed lets the worker stop early.
 */
#ifndef QMOE_EXTRACT_PIPE_H
#define QMOE_EXTRACT_PIPE_H

#include "base/fs.h"

#include <glib.h>
#include <stddef.h>

#define XP_NBUF 3

/* Called in the writer's thread for each file handed over with xp_finish
 * whose writes and close succeeded: o is complete and closed, and the
 * callee's; `file` is what was given to xp_finish. */
typedef void (*xp_done_fn)(void *arg, fs_out *o, void *file);

typedef struct xp_writer xp_writer;

/* Starts a writer with XP_NBUF buffers of `bufsize` bytes (a multiple of
 * FS_DIRECT_ALIGN, aligned to it; of 2 MiB or more: in transparent huge
 * pages where the kernel allows them). Free with xp_close. */
xp_writer *xp_new(size_t bufsize, xp_done_fn done, void (*free_file)(void *file),
                  void *arg);

/* A free buffer of bufsize bytes, the caller's until it gives it back
 * with xp_put or xp_release; waits while all are in use. */
uint8_t *xp_get(xp_writer *w);

/* Gives back a buffer unused. */
void xp_release(xp_writer *w, uint8_t *buf);

/* Appends len bytes of buf (from xp_get, given back by this call) to o.
 * An O_DIRECT o gets the whole blocks directly and a tail shorter than a
 * block through the page cache (fs.h). */
void xp_put(xp_writer *w, fs_out *o, uint8_t *buf, size_t len);

/* After the writes put so far: fs_out_finish(o), then done(arg, o, file).
 * After an error (of o's writes or any earlier ones) the temporary is
 * removed instead and `file` is given back to the worker's free_file. */
void xp_finish(xp_writer *w, fs_out *o, void *file);

/* After the writes put so far, removes o's temporary (the worker gave up
 * on the file) without calling done. */
void xp_abort(xp_writer *w, fs_out *o);

/* 1 once a write or close failed. */
int xp_failed(xp_writer *w);

/* Waits for everything handed over, stops the thread and frees. Returns
 * 0, or -1 with *err the first write or close that failed. Accepts
 * NULL. */
int xp_close(xp_writer *w, GError **err);

#endif
