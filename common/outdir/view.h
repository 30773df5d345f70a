/* view.h - OUT read once: the one reader of an extracted directory.
 *
 * qmoe-status and qmoe-verify (its coverage) both look at OUT through an
 * od_view, so that they count the same files the same way. Opening reads,
 * once each:
 *   .qmoe/ (and every .qmoe/shard-I-of-N/)   the jobs: progress and lock
 *                                            (od_jobs_read), the state
 *   .qmoe/source.json                        the source identity's id
 *   qmoe.json                                the head: complete, layout,
 *                                            source id, "expected"
 *   every journal (all shard parts)          the records: path, kind,
 *                                            size, time, source_id
 *   qmoe.json "files"                        the records, when no journal has any
 *   model.safetensors.index.json             expected non-expert files (only
 *                                            without a complete qmoe.json)
 *   config.json + the layout                 the shape (else qmoe.json's counts,
 *                                            else the names found)
 *   OUT, experts/, layers/, other/           one readdir + fstatat each: the
 *                                            files, their sizes, temporaries
 * Records are scanned, not parsed into trees (view_json.c): a journal of
 * 6144 records is 7 MB of JSON, and a status snapshot must stay ~10 ms.
 * qmoe-verify reads the full records (tensors, hashes) itself for its
 * integrity checks.
 *
 * The rules, here only:
 *   expected   expert files: MoE layers of the selection (qmoe.json's
 *              lists, else the job's progress lists, else all) x selected
 *              experts, canonical names; other files: recorded or indexed
 *   complete   a file: present (regular, final name), canonical, and, when
 *              OUT has any record, recorded with that size from OUT's
 *              source and not marked bad (od_view_mark_bad); without any
 *              record (files written by another tool) present is enough
 *   layer      complete when every expected expert file of it is
 *              (od_view_layer_complete)
 *   OUT        complete by od_complete() over od_view_facts()
 */
#ifndef QMOE_VIEW_H
#define QMOE_VIEW_H

#include <glib.h>
#include <stdint.h>
#include <sys/types.h>

#include "format/layout.h"
#include "outdir/manifest.h"
#include "outdir/outdir.h"

/* One file of OUT, present or expected or recorded. */
typedef struct od_file_s {
    char *path;            /* relative to OUT */
    mf_kind kind;          /* from the name (MF_OTHER for names we do not write) */
    int layer, expert;     /* -1 where not applicable */
    int canonical;         /* a name qmoe writes (expert/layer padding included) */
    int expected;          /* in the expected set */
    int present;           /* a regular file under this name */
    int irregular;         /* the name exists but is not a regular file */
    int64_t size;          /* when present */
    int recorded;          /* a journal or qmoe.json record names it */
    int indexed;           /* model.safetensors.index.json names it */
    int wanted;            /* a caller expects it (verify --source: the source has it) */
    uint64_t rec_size;     /* the record's size */
    double rec_time;       /* the record's finish time */
    char source_id[17];    /* the record's source id, or "" */
    int in_flight;         /* a live writer's temporary of it exists */
    int bad;               /* od_view_mark_bad: a reader found it damaged */
    int complete;          /* the rule above */
} od_file;

/* A temporary FINAL.tmp.PID. */
typedef struct {
    char *path;            /* relative to OUT */
    char *final;           /* its final name, relative to OUT */
    pid_t pid;
    int alive;             /* its writer lives */
} od_tmp;

typedef struct od_view_s {
    char *out;
    /* what exists */
    int has_qmoe_dir;      /* .qmoe/ */
    int has_manifest_file; /* qmoe.json exists (readable or not) */
    int has_experts_dir;   /* experts/ */
    GError *state_file_error; /* a state file (qmoe.json, a journal, a lock ...)
                            * that is not a regular file: not read; qmoe-status
                            * reports it (exit 2), qmoe-verify its own way */
    /* jobs */
    GArray *all_jobs;      /* od_job: every state directory (od_jobs_read) */
    GPtrArray *jobs;       /* od_job*: the main job, or the shard parts when a
                            * sharded run is newer (parts not started yet are
                            * placeholders in state "none") */
    GPtrArray *placeholders; /* od_job* owned here: those placeholders */
    int sharded;
    char *state;           /* of `jobs` combined: running crashed failed stopped
                            * none finished, the first that applies */
    pid_t pid;             /* of the job that gave the state */
    GArray *live_pids;     /* pid_t: live lock holders and temporary owners */
    int has_job_record;    /* a progress file or a journal record */
    char *prog_layers, *prog_experts; /* a job's selection lists, or NULL */
    /* qmoe.json */
    int has_manifest;      /* its head read: "expected" found */
    int manifest_complete;
    char *layout_name;     /* "layout", or NULL */
    char *manifest_source_id; /* "source"."id", or NULL */
    int64_t m_count, m_files, m_bytes; /* expected.count/files/bytes, -1 absent */
    char *m_layers, *m_experts; /* expected.layers/experts, or NULL */
    int partial, no_other;
    char *source_gap;      /* expected.missing_from_source, or NULL */
    /* records */
    int64_t n_records;     /* distinct paths recorded */
    int64_t journal_records, journal_bad; /* journal lines read, lines not understood */
    GArray *times;         /* double: each journal record's time, for rates */
    GArray *sizes;         /* uint64_t: the size of the same records */
    char *source_id;       /* OUT's source: source.json's id, else qmoe.json's, or NULL */
    int mixed;             /* records or qmoe.json of another source */
    char *mixed_path;      /* the first file read from another source, or NULL */
    char *mixed_id;        /* its source id */
    /* the expected set */
    const char *expected_from; /* "manifest", "config", "scan" */
    const layout *lt;      /* NULL when unknown */
    lt_shape shape;        /* n_layers, n_experts, is_moe */
    int width_e, width_l;  /* zero padding of names */
    uint8_t *layer_sel;    /* [shape.n_layers] expert layers expected (MoE only) */
    uint8_t *expert_sel;   /* [shape.n_experts] */
    /* the files */
    GPtrArray *files;      /* od_file*, sorted by path */
    GHashTable *by_path;   /* path -> od_file* */
    GArray *tmps;          /* od_tmp */
    GPtrArray *unreadable; /* "SUBDIR\tstrerror" of subdirectories that exist
                            * but could not be listed */
    /* counts (od_view_count) */
    int64_t experts_expected, experts_complete, experts_present;
    int64_t experts_unexpected; /* expert files present outside the expected set */
    int64_t others_expected, others_complete;
    int64_t unexpected;    /* present files that nothing expects */
    int64_t bytes_present; /* sizes of the present output files */
    int layers_expected, layers_complete;
    /* of the above, the MTP block's (layout.h: counted apart, and said so) */
    int64_t mtp_experts_expected, mtp_experts_complete;
    int mtp_layers_expected, mtp_layers_complete;
    int *layer_done;       /* [shape.n_layers] complete expected expert files */
} od_view;

/* Reads OUT (a directory; the caller has said how it wants a missing one
 * worded). Fails only when OUT cannot be read (QM_ERR_IO). A state file
 * that is not a regular file (a FIFO in qmoe.json's place) is never opened
 * (the readers open regular files only) and is named in state_file_error. */
od_view *od_view_open(const char *out, GError **err);
void od_view_close(od_view *v);

/* The file of that path, or NULL. */
od_file *od_view_file(const od_view *v, const char *path);
/* Adds a file to the view (verify --source: files the source has), or
 * returns the one there. */
od_file *od_view_add(od_view *v, const char *path);
/* Marks a present file damaged (a reader found it so): no longer complete;
 * call od_view_count() again after marking. */
void od_view_mark_bad(od_view *v, const char *path);
/* Widens the expected set to every expert of every MoE layer (verify
 * --expect N when N is the whole model), and recounts. */
void od_view_expect_all(od_view *v);
/* Recomputes each file's `complete` and the counts. */
void od_view_count(od_view *v);

/* Whether a file is complete (the rule above). */
int od_file_complete(const od_view *v, const od_file *f);
/* Layer l is in the expected set and every expected expert file of it is
 * complete. Counts of it in *done and *expected (may be NULL). */
int od_view_layer_complete(const od_view *v, int l, int *done, int *expected);

/* The facts od_complete() decides on. */
od_facts od_view_facts(const od_view *v);

/* ---- scanning records and qmoe.json's head (view_json.c) ---- */

/* One record's top-level fields; path points into the scanned text. */
typedef struct {
    const char *path;
    mf_kind kind;
    int layer, expert;
    uint64_t size;
    double time;
    char source_id[17];
} od_rec;

/* Scans one record [p, end) (a journal line without its newline, or an
 * element of qmoe.json "files") without building a tree; stops after the
 * fields it needs (the writer puts "tensors" last). Writes a NUL after the
 * path in place. Falls back to cJSON for what it cannot scan. 0 or -1. */
int od_rec_scan(char *p, char *end, od_rec *r);

/* qmoe.json's head: what precedes its "files" array. */
typedef struct {
    int complete;
    char *layout;          /* or NULL */
    char *source_id;       /* "source"."id", or NULL */
    struct cJSON *expected;/* the "expected" object */
} od_mhead;

/* Reads the head only (the "files" after it can be megabytes): 0, or -1
 * when the file is absent or has no "expected" object. */
int od_manifest_head(const char *path, od_mhead *h);
void od_mhead_clear(od_mhead *h);
/* Calls each() for every record of qmoe.json's "files": 0, or -1 when it
 * has no such array. */
int od_manifest_records(const char *path, void (*each)(const od_rec *r, void *ctx),
                        void *ctx);

#endif
