/* progress.h - the live state of an extraction job: .qmoe/progress.json and
 * .qmoe/lock.
 *
 * A job's state directory is OUT/.qmoe, or OUT/.qmoe/shard-I-of-N for one
 * part of a --shard I/N run (I from 0). It holds:
 *   lock           "PID HOST START\n" of the live extractor (START: its
 *                  /proc/PID/stat start time); held with flock(), so a lock
 *                  file whose owner is gone is stale and can be taken over
 *   progress.json  rewritten atomically a few times a second:
 *     {"pid":123,"state":"running","started":"<iso>","updated":"<iso>",
 *      "started_unix":1764197000.1,"updated_unix":1764197012.3,
 *      "files_done":1739,"files_planned":6200,"bytes_done":N,"bytes_planned":N,
 *      "experts_done":1739,"experts_planned":6144,"files_skipped":0,
 *      "current":["experts/expert_003_layer_05.safetensors"],
 *      "last_error":null,"log":".qmoe/extract.log","shard":0,"shards":1,
 *      "layers":"0-47","experts":"0-127","host":"node1","pid_start":123456}
 *     state: running, finished, failed, stopped. A "running" file whose pid
 *     is dead means the job crashed.
 *   journal.jsonl  see manifest.h
 *   extract.log    human-readable log of the job (OUT/.qmoe/extract.log)
 */
#ifndef QMOE_PROGRESS_H
#define QMOE_PROGRESS_H

#include <glib.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
    pid_t pid;
    char *state;            /* "running", "finished", "failed", "stopped" */
    double started, updated;/* seconds since the epoch */
    uint64_t files_done, files_planned;
    uint64_t bytes_done, bytes_planned;
    uint64_t experts_done, experts_planned;
    uint64_t files_skipped; /* complete before this run started */
    char **current;         /* NULL-terminated, files in flight */
    char *last_error;       /* or NULL */
    char *log;              /* log path relative to OUT */
    int shard, shards;      /* 0 and 1 when not sharded */
    char *layers, *experts; /* selection as LISTs ("0-47", "0-7"), or NULL */
    char *host;             /* the writer's host name, or NULL (older qmoe) */
    int64_t pid_start;      /* the writer's start time (/proc/PID/stat field
                               22, clock ticks after boot), or 0 unknown */
} progress;

/* Heartbeat: progress.json is rewritten every 0.2 s while a job runs, so a
 * job on another host whose file is older than this is taken for dead. */
#define PROGRESS_HEARTBEAT_STALE 30.0

/* This host's name (g_get_host_name; not freed). */
const char *progress_host(void);
/* Start time of process pid from /proc/PID/stat (field 22), 0 unknown. */
int64_t progress_pid_start(pid_t pid);

/* Whether the owner (host, pid, start) of a lock or progress file lives.
 * On this host (host NULL or ours): kill(pid, 0), and when start is known
 * it must equal the process's start time (a reused pid is another
 * process). On another host kill() means nothing: alive while the
 * heartbeat `updated` (epoch seconds, 0 unknown) is younger than
 * PROGRESS_HEARTBEAT_STALE. *by_heartbeat (may be NULL) says which test
 * decided. */
int progress_owner_alive(const char *host, pid_t pid, int64_t start, double updated,
                         int *by_heartbeat);

/* "OUT/.qmoe" or "OUT/.qmoe/shard-I-of-N" (shards > 1). Caller frees. */
char *progress_state_dir(const char *out, int shard, int shards);

int progress_write(const char *path, const progress *p, GError **err);
/* Reads progress.json; a missing file is QM_ERR_IO with errno ENOENT
 * described. Fills *p (free with progress_clear). */
int progress_read(const char *path, progress *p, GError **err);
void progress_clear(progress *p);

/* Takes the lock file `path` for this process: refuses with QM_ERR_LOCKED
 * naming the pid while another live process holds it; takes over a stale
 * one, setting *stale_pid to the dead owner's pid (else 0). Returns an fd
 * to keep open for the life of the job, or -1. */
int progress_lock(const char *path, pid_t *stale_pid, GError **err);

/* Rewrites a held lock with this process's pid: for a child that
 * inherited the lock fd across fork() (qmoe-extract --detach). */
int progress_lock_handover(int fd, const char *path, GError **err);

/* Releases the lock, leaving the file empty (pid 0: nobody holds it). */
void progress_unlock(int fd, const char *path);

/* pid written in a lock file, 0 if none; *held set to 1 when a live
 * process holds it (progress_owner_alive with no heartbeat: an owner on
 * another host counts as holding it). */
pid_t progress_lock_owner(const char *path, int *held);

/* The owner recorded in a lock file: pid (0 none), host (caller frees,
 * NULL when the file has none) and start time (0 unknown). */
pid_t progress_lock_read(const char *path, char **host, int64_t *start);

#endif
