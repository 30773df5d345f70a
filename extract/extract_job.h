/* extract_job.h - one extraction job: plan -> files under OUT.
 *
 * The job (extract_job.c; what it does before writing is extract_prep.h)
 * takes the lock of its state directory, copies the config and tokenizer
 * files, skips what earlier runs finished (journal + size), writes the
 * rest with -j worker threads (each file to a temporary name, SHA-256 and
 * CRC-32 computed from the bytes as they are read; a large file's writes
 * done by the worker's writer thread, extract_pipe.h, while the worker
 * reads and hashes on), and in the main thread commits them in batches
 * (fs.h group commit: one syncfs, the renames, one fsync per directory,
 * then the batch's journal lines and one journal fsync) and rewrites
 * progress.json a few times a second; at the end it writes
 * model.safetensors.index.json and qmoe.json. ex_dry_run (extract_dry.c)
 * says what a run would do.
 *
 * Zero-copy: when the source files and OUT are on one filesystem with
 * reflinks (XFS reflink=1, btrfs), tensor blocks are shared with the
 * source instead of written, and headers are padded to line the data up
 * with the source blocks (extract_copy.h says what that changes); the
 * bytes are still read once for the hashes. Elsewhere, or with
 * no_reflink, the plain copy.
 *
 * SIGINT/SIGTERM: the files in flight are discarded, the state becomes
 * "stopped" and the job returns QM_ERR_STOPPED; a rerun resumes.
 */
#ifndef QMOE_EXTRACT_JOB_H
#define QMOE_EXTRACT_JOB_H

#include <glib.h>
#include <stdint.h>

typedef struct {
    const char *src, *out;
    const char *layout;      /* NULL: detect */
    const char *layers;      /* LIST or NULL */
    const char *experts;     /* LIST or NULL */
    int jobs;                /* worker threads */
    int shard, shards;       /* --shard I/N (0 and 1 when not sharded) */
    int progress_bar;        /* draw a bar on stderr */
    int throttle_ms;         /* test knob: sleep per file (QMOE_THROTTLE_MS) */
    int no_reflink;          /* always copy bytes, never share blocks */
    int no_other;            /* leave other/ out (outside the text model) */
    int force;               /* write even when the space check says it will
                                not fit */
    int allow_missing;       /* extract a source lacking experts its config
                                declares; the manifest records the gap */
    int restart;             /* empty OUT of qmoe's files first */
    /* Called once the source is planned and checked against OUT and the
     * lock is taken, before anything is written (--detach forks there);
     * returns 0 to go on. NULL: none. */
    int (*before_write)(void *arg, GError **err);
    void *before_write_arg;
} ex_opts;

typedef struct {
    uint64_t files_planned, files_done, files_skipped;
    uint64_t bytes_planned, bytes_written;
    uint64_t bytes_shared;   /* of bytes_written: blocks shared (reflink) */
    uint64_t experts_planned, experts_done;
    double seconds;
    int complete;            /* every file of the whole plan is in place */
    char *layout;
    char *experts_split;     /* "2 layers x 16 + MTP 1 layer x 16" when the plan
                                has MTP experts, else NULL */
} ex_result;

/* Runs the job. Refuses (QM_ERR_USAGE) before writing when OUT holds files
 * of another source or of this source before it changed (outdir.h source
 * identity), unless o->restart; refuses (QM_ERR_FORMAT) when the source
 * lacks experts its config declares, unless o->allow_missing. Returns 0
 * when every planned file of this part is in place; else -1 with *err
 * (QM_ERR_STOPPED after a signal). */
int ex_run(const ex_opts *o, ex_result *res, GError **err);

/* Prints the plan (layout, counts, bytes) without writing anything. */
int ex_dry_run(const ex_opts *o, int json, GError **err);

/* Installs the SIGINT/SIGTERM handlers that ask a running job to stop. */
void ex_install_signals(void);

void ex_result_clear(ex_result *r);

#endif
