/* extract_job.h - one extraction job: plan -> files under OUT.
 *
 * The job takes the lock of its state directory, copies the config and
 * tokenizer files, skips what earlier runs finished (journal + size),
 * writes the rest with -j worker threads (each file: temporary name,
 * SHA-256 and CRC-32 computed from the bytes as they are written, fsync,
 * rename, journal line), rewrites progress.json a few times a second, and
 * at the end writes model.safetensors.index.json and qmoe.json.
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
} ex_opts;

typedef struct {
    uint64_t files_planned, files_done, files_skipped;
    uint64_t bytes_planned, bytes_written;
    uint64_t experts_planned, experts_done;
    double seconds;
    int complete;            /* every file of the whole plan is in place */
    char *layout;
} ex_result;

/* Runs the job. Returns 0 when every planned file of this part is in
 * place; else -1 with *err (QM_ERR_STOPPED after a signal). */
int ex_run(const ex_opts *o, ex_result *res, GError **err);

/* Prints the plan (layout, counts, bytes) without writing anything. */
int ex_dry_run(const ex_opts *o, int json, GError **err);

/* Installs the SIGINT/SIGTERM handlers that ask a running job to stop. */
void ex_install_signals(void);

void ex_result_clear(ex_result *r);

#endif
