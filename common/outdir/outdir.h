/* outdir.h - the extracted directory OUT: its jobs, what of the source it
 * lacks, resuming and starting over, and the one verdict on whether it is
 * complete. Its names are names.h's; its source's identity source.h's.
 *
 * The verdict: qmoe-status, qmoe-verify and qmoe-extract's end all decide
 * "complete" with od_complete() from the facts they gathered, so that they
 * cannot disagree on a state of OUT.
 */
#ifndef QMOE_OUTDIR_H
#define QMOE_OUTDIR_H

#include <cjson/cJSON.h>
#include <glib.h>
#include <stdint.h>

#include "format/checkpoint.h"
#include "outdir/names.h"
#include "outdir/source.h"
#include "outdir/plan.h"
#include "outdir/progress.h"

/* How the expert files of a selection split between the decoder's layers
 * and the MTP block's (layout.h), in the words every tool uses: "2 layers
 * x 16 + MTP 1 layer x 16". NULL when no MTP layer is in it. Caller frees. */
char *od_mtp_breakdown(int decoder_layers, int mtp_layers, int per_layer);
/* The same for the expert files of a plan's selection. */
char *od_plan_mtp_breakdown(const plan *p);

/* ---- job records ---- */

/* One state directory's job: its progress.json and lock, and the state
 * they mean together. */
typedef struct {
    char *dir;             /* relative to OUT: ".qmoe", ".qmoe/shard-0-of-4" */
    int shard, shards;     /* from the name (0 and 1 for .qmoe) */
    int present;           /* progress.json exists and parsed */
    progress prog;         /* when present (else zeroed) */
    pid_t lock_pid;        /* pid in the lock file, 0 none (released) */
    int lock_held;         /* the lock's owner lives (progress_lock_owner) */
    char *state;           /* running finished failed stopped crashed none */
    pid_t pid;             /* the job's pid: progress's, else the lock's */
    int alive;             /* its writer lives: state "running" */
    int remote;            /* its writer is on another host */
    int stale_lock;        /* a lock file naming a writer that is gone */
} od_job;

/* Reads OUT/rel (a state directory) into *j (free with od_job_clear). A
 * "running" progress file whose writer is gone (progress_owner_alive:
 * kill() and start time here, heartbeat elsewhere) is "crashed"; without
 * progress.json, a held lock is "running", a stale one "crashed", else
 * "none". */
void od_job_read(const char *out, const char *rel, od_job *j);
void od_job_clear(od_job *j);

/* Every state directory of OUT: .qmoe first (always, present or not), then
 * each .qmoe/shard-I-of-N in readdir order. GArray of od_job. */
GArray *od_jobs_read(const char *out);
void od_jobs_free(GArray *jobs);

/* ---- the verdict ---- */

typedef enum {
    OD_COMPLETE,
    OD_RUNNING,          /* a live writer holds OUT */
    OD_MIXED,            /* files from more than one source */
    OD_SOURCE_GAP,       /* the source lacked experts its config declares */
    OD_NO_MANIFEST,      /* a job record but no qmoe.json: did not finish */
    OD_NOT_FINISHED,     /* qmoe.json says "complete": false */
    OD_MISSING,          /* expected files absent */
    OD_NOTHING,          /* nothing expected (no config, no manifest) */
    OD_UNEXPECTED,       /* files that nothing expects (a foreign or stray file) */
} od_verdict;

typedef struct {
    int64_t experts_expected, experts_present; /* present: complete, of the expected set */
    int64_t others_expected;   /* non-expert files expected, -1 unknown */
    int64_t others_present;
    int has_job_record;        /* .qmoe/ holds a progress file or a journal */
    int has_manifest;          /* qmoe.json read */
    int manifest_complete;     /* its "complete" */
    int live_writer;           /* a live lock holder or temporary owner */
    int source_gap;            /* experts missing from the source (manifest) */
    int mixed;                 /* records of more than one source */
    int64_t unexpected;        /* present files that nothing expects */
} od_facts;

/* The one decision: complete, else the first reason why not (in the order
 * of the enum; OD_UNEXPECTED last, after OD_NOTHING). A directory with neither job record nor manifest (written
 * by another tool with the same names) is complete when every file the
 * config and the layout expect is present. */
od_verdict od_complete(const od_facts *f);
/* "running", "mixed sources", ... for messages and --json. */
const char *od_verdict_name(od_verdict v);

/* ---- source completeness ---- */

/* The experts of the plan's selection (MoE layers x selected experts) that
 * the source holds no tensor for, one line per run of layers with the same
 * gap: "layers 0-2: experts 16-31 missing from the source (config.json
 * declares 32)". NULL when nothing is missing; else a newline-separated
 * string (caller frees) and *count the number of (layer, expert) files. */
char *od_plan_gap(const plan *p, int *count);

/* The files of the plan's selection that a missing source shard blocks
 * (plan.h), one clause per missing shard: "shard 'model-00007-of-00015.safetensors'
 * (a symlink to '../../blobs/HASH', which does not exist) blocks 642
 * files: layers 21-25". Newline-separated, or "; " with one_line; NULL when
 * nothing is blocked. With layers_ok, *layers_ok (caller frees) is the
 * LIST of selected layers none of whose files is blocked, or NULL when
 * there is none (or the globals are blocked). Caller frees. */
char *od_plan_blocked(const plan *p, const ckpt *ck, int one_line, char **layers_ok);

/* ---- resuming (qmoe-extract) ---- */

/* The rule for one file under its final name that a record describes:
 * in place with the recorded size (size_now: its size, -1 absent), read
 * from OUT's source (the record's id, when it has one, equals out_id;
 * NULL or "" out_id: unknown, not held against it). qmoe-extract's resume
 * (od_find_done) and the view of OUT (view.h, for qmoe-status and
 * qmoe-verify) both decide with it. */
int od_record_in_place(uint64_t rec_size, const char *rec_source_id, int64_t size_now,
                       const char *out_id);

/* Marks in done[] (p->n_files) the plan files that a record in `recs`
 * (journals, mf_file) describes and that are in place with the recorded
 * size, read from this source: the record's source_id (when it has one)
 * equals `source_id`, and each tensor's name, length, source file and
 * offset equal the plan's. */
void od_find_done(const plan *p, const ckpt *ck, const char *source_id,
                  const char *out, GArray *recs, uint8_t *done);

/* Removes temporaries FINAL.tmp.PID left by extractors that died, for the
 * part `shard` of `shards` (see the comment in outdir.c on why the pid
 * alone does not decide). Call with OUT/.qmoe/manifest.lock held. */
void od_remove_stale_tmps(const char *out, const plan *p, int shard, int shards);

/* ---- starting over ---- */

/* Removes qmoe's files from OUT and nothing else: every file a journal or
 * qmoe.json records, temporaries FINAL.tmp.PID of output names, qmoe.json,
 * model.safetensors.index.json and the journals, progress files and
 * source.json under .qmoe/ (locks and the log stay). *removed counts the
 * files removed. */
int od_restart(const char *out, int *removed, GError **err);

#endif
