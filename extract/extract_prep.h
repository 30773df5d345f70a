/* extract_prep.h - what qmoe-extract does before it writes, for the run
 * (extract_job.c) and the dry run (extract_dry.c) alike: open and plan the
 * source, refusing what cannot be extracted; check the free space; open
 * the source shards and probe reflinks. Internal to qmoe-extract. */
#ifndef QMOE_EXTRACT_PREP_H
#define QMOE_EXTRACT_PREP_H

#include "extract_job.h"
#include "format/checkpoint.h"
#include "format/layout.h"
#include "outdir/plan.h"

#include <glib.h>
#include <stdint.h>

/* Opens SRC and plans (the selection of o, its --shard part). Refuses,
 * with nothing written: an unknown layout; experts the config declares
 * and the source lacks, unless o->allow_missing; files that a missing
 * shard blocks, unless `dry` (the dry run lists them). NULL with *err. */
ckpt *ex_open_and_plan(const ex_opts *o, const layout **lt, plan **p, int dry,
                       GError **err);

/* Number of tensors from f->t[i] on whose bytes follow one another in one
 * source file (at least 1): one stretch of bytes to read, and to share as
 * a whole with a reflink, block boundaries between tensors included. */
int ex_run_length(const plan_file *f, int i);

/* od_plan_gap's lines joined into one ("; "): errors are one line. Takes
 * gap. */
char *ex_gap_one_line(char *gap);

/* 1 when a missing shard blocks a file of other/ (the hint then adds
 * --no-other). */
int ex_other_blocked(const plan *p);

/* ---- space check ----
 *
 * Before writing, the bytes still to write are compared with the free
 * space of OUT's filesystem. Bytes to write: the tensor bytes of the files
 * not yet complete, plus one block per file for its header, less the whole
 * blocks that reflinks will share with the source (an estimate: every
 * stretch of a file taken as lined up, as the padded header makes the
 * first one). */
#define SPACE_HEADER_BYTES 4096

typedef struct {
    uint64_t to_write;    /* tensor bytes of the files still to write */
    uint64_t shared;      /* of them: whole blocks reflinks will share */
    uint64_t needed;      /* to_write + headers - shared */
    uint64_t avail;       /* statvfs f_bavail, or the test hook's figure */
    char *where;          /* mount point of OUT's filesystem */
    char *dir;            /* OUT, or its nearest existing ancestor */
    int simulated;        /* avail came from QMOE_TEST_FREE_BYTES */
} ex_space;

/* The bytes of files p->files[todo[0..n_todo)] (src_bs: per source shard
 * the block size it shares with OUT, 0 for none; NULL: no reflinks). */
void ex_space_count(ex_space *sc, const plan *p, const int *todo, int n_todo,
                    const uint64_t *src_bs);

/* The free space for OUT (its nearest existing directory when OUT is not
 * made yet) and the mount point that holds it. QMOE_TEST_FREE_BYTES is a
 * test hook: a simulated free-space figure in bytes. */
int ex_space_free(ex_space *sc, const char *out, GError **err);

/* "needs 57.9 GB, 41.2 GB available on /data"; caller g_free()s. */
char *ex_space_text(const ex_space *sc);

/* Frees what ex_space_free filled in. */
void ex_space_clear(ex_space *sc);

/* Opens the source shards the plan reads (fds into src_fd, which the
 * caller closes) and probes which can share blocks with files made at
 * probe_path, a scratch name inside OUT (src_bs; all 0 with no_reflink or
 * no probe_path). One probe per source filesystem (st_dev): an OUT taken
 * as SRC has thousands of files on one. A header described by qmoe.json
 * is first compared with its file (ckpt_shard_confirm). Returns the number
 * of shards that can share, or -1 with *err. */
int ex_open_sources(ckpt *ck, int *src_fd, uint64_t *src_bs, int no_reflink,
                    const char *probe_path, GError **err);

/* What the dry run can say about reflinks without writing anything. */
typedef enum {
    EX_REFLINK_NO,      /* another filesystem, or one without shared extents */
    EX_REFLINK_YES,     /* one btrfs: blocks are always shareable there */
    EX_REFLINK_UNKNOWN, /* XFS (only if made with reflink=1), btrfs
                         * subvolumes, network filesystems: the run probes */
} ex_reflink;

/* For each source shard the plan reads, whether blocks can be shared
 * with files made in directory `out_dir` (OUT or its nearest existing
 * ancestor), from st_dev and the filesystem type (statfs, once per
 * device) alone: sets src_bs[i] to the block size where they can for sure,
 * 0 elsewhere. Returns the least certain answer over the shards. Opens
 * nothing and writes nothing: one stat() per shard. */
ex_reflink ex_reflink_guess(const ckpt *ck, uint64_t *src_bs, const char *out_dir);

/* "yes", "no", "unknown" */
const char *ex_reflink_name(ex_reflink r);

#endif
