/* status.h - one snapshot of an extraction directory, for qmoe-status.
 *
 * A snapshot is the view of OUT (outdir/view.h: jobs, records, expected
 * set, files, the verdict, all read and decided there, the same for
 * qmoe-verify) turned into what the renderers show: rows per layer, the
 * jobs, bytes, the rate over the journal's recent records, ETA and the
 * files in flight.
 *
 * Prefix qs_ (qmoe-status): st_ is the safetensors module's, included in
 * the same translation units.
 */
#ifndef QMOE_STATUS_H
#define QMOE_STATUS_H

#include <glib.h>
#include <stdint.h>
#include <sys/types.h>

/* Seconds of journal history that the rate is measured over. */
#define QS_RATE_WINDOW 60.0

typedef struct {
    int layer;
    int expected;          /* expert files expected in this layer */
    int done;              /* complete expert files found */
    int in_flight;         /* expert files of this layer being written */
} qs_layer;

typedef struct {
    char *path;            /* relative to OUT (final name) */
    pid_t pid;             /* writer: from the temporary's name or the job */
    int alive;             /* that pid is alive */
    int has_tmp;           /* a FINAL.tmp.PID exists */
} qs_flight;

typedef struct {
    char *dir;             /* state dir relative to OUT: ".qmoe", ".qmoe/shard-0-of-4" */
    int shard, shards;     /* 0 and 1 when not sharded */
    int present;           /* progress.json exists and parsed */
    char *state;           /* running finished failed stopped crashed none */
    pid_t pid;
    int stale_lock;        /* lock file whose pid is gone */
    double started, updated;
    uint64_t files_done, files_planned, bytes_done, bytes_planned;
    uint64_t experts_done, experts_planned;
    char **current;        /* NULL-terminated (may be empty) */
    char *last_error;      /* or NULL */
    char *log;             /* relative to OUT, or NULL */
    char *layers, *experts;/* selection lists if progress.json gives them */
    char *host;            /* the writer's host, or NULL */
    int remote;            /* on another host: liveness by heartbeat */
    double heartbeat_age;  /* seconds since progress.json was updated, -1 */
} qs_job;

typedef struct {
    char *out;
    double now;            /* when taken (epoch seconds) */
    double took_ms;        /* how long taking it took */

    /* job */
    char *state;           /* running finished failed stopped crashed none */
    pid_t pid;             /* of the (first) running job, else of the last one */
    int n_jobs;
    qs_job *jobs;          /* the main job, or the shards */
    int sharded;
    char *last_error;      /* newest last_error of any job, or NULL */
    char *log;             /* relative to OUT, or NULL */
    double started, updated; /* 0 when unknown */
    double elapsed;        /* seconds, -1 unknown */

    /* expected set */
    const char *expected_from; /* "manifest", "progress", "config", "scan" */
    int partial;
    int no_other;          /* --no-other: other/ left out of the expected set */
    char *sel_layers, *sel_experts; /* lists, or NULL */
    int n_layers, n_experts; /* grid size */
    qs_layer *layers;      /* n_layers rows */
    int mtp_first, n_mtp;  /* rows [mtp_first, mtp_first + n_mtp) are the MTP
                              block's (layout.h); n_mtp 0 when none */
    int64_t experts_expected, experts_done;
    int layers_expected, layers_complete;
    /* of the above, the MTP block's (counted apart, and said so) */
    int64_t mtp_experts_expected, mtp_experts_done;
    int mtp_layers_expected, mtp_layers_complete;
    int64_t other_expected;/* non-expert files; -1 unknown */
    int64_t other_done;
    int64_t unexpected;    /* expert files outside the expected set */
    int64_t bytes_planned; /* -1 unknown */
    int64_t bytes_done;    /* -1 unknown */
    int complete;          /* od_complete() said so (outdir.h) */
    const char *why;       /* od_verdict_name() when not complete */
    int has_manifest, manifest_complete;
    char *source_gap;      /* qmoe.json's missing_from_source, or NULL */

    /* rate */
    double rate_files, rate_bytes; /* per second over the window; -1 unknown */
    double rate_window;    /* seconds actually covered */
    double eta;            /* seconds, -1 unknown */

    /* in flight */
    int n_flight;
    qs_flight *flight;
    int n_stale_tmp;       /* temporaries whose writer is dead */
    qs_flight *stale_tmp;

    /* journal */
    int64_t journal_records;
    int64_t journal_bad;
} qs_snap;

/* Row l of the grid is an MTP layer. */
static inline int qs_is_mtp(const qs_snap *s, int l)
{
    return s->n_mtp > 0 && l >= s->mtp_first && l < s->mtp_first + s->n_mtp;
}

/* Takes a snapshot of OUT. Errors (QM_ERR_IO): OUT missing or not a
 * directory, or not an extraction directory (names what is missing). */
qs_snap *qs_snap_take(const char *out, GError **err);
void qs_snap_free(qs_snap *s);

/* ---- rendering (status_render.c) ---- */

typedef struct {
    int color;   /* ANSI colours */
    int utf8;    /* Unicode bar marks */
    int width;   /* columns */
    int height;  /* rows, 0 = unlimited */
    int cut;     /* cut lines to width (a terminal); off one, lines stay whole
                  * (a log or a pipe must not lose the end of an error) */
} qs_style;

/* The dashboard, lines ending in "\n". Caller frees. */
char *qs_render_text(const qs_snap *s, const qs_style *y);
/* One plain line (no newline) for logs. Caller frees. */
char *qs_render_line(const qs_snap *s);
/* JSON document with a final newline; pretty = indented, else one line.
 * Caller frees. */
char *qs_render_json(const qs_snap *s, int pretty);

/* "1h 02m", "3m 05s", "12s". */
char *qs_human_duration(double secs, char *buf, size_t cap);

#endif
