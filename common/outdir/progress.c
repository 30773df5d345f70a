/* progress.c - see progress.h */
#include "outdir/progress.h"
#include "base/fs.h"
#include "base/util.h"
#include "outdir/names.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

char *progress_state_dir(const char *out, int shard, int shards)
{
    char *rel = od_state_dir(shard, shards);
    char *dir = g_build_filename(out, rel, NULL);
    g_free(rel);
    return dir;
}

/* On a full disk the atomic replace cannot create its temporary, yet the
 * final state (failed: no space) must still reach progress.json: the
 * existing file is overwritten in place when the text fits in the blocks
 * it already has, then cut to length (neither needs a new block). A reader
 * may see a half-written file for that moment; the state is final. */
static int rewrite_in_place(const char *path, const char *text, size_t len)
{
    GError *e = NULL;
    int fd = fs_open_out(path, O_WRONLY, "cannot open", &e);
    if (fd < 0) {
        g_clear_error(&e);
        return -1;
    }
    struct stat st;
    int rc = -1;
    if (fstat(fd, &st) == 0 && (uint64_t)st.st_blocks * 512 >= len) {
        size_t at = 0;
        while (at < len) {
            ssize_t n = pwrite(fd, text + at, len - at, (off_t)at);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            at += (size_t)n;
        }
        if (at == len && ftruncate(fd, (off_t)len) == 0)
            rc = 0;
    }
    close(fd);
    return rc;
}

int progress_write(const char *path, const progress *p, GError **err)
{
    cJSON *j = cJSON_CreateObject();
    char *st = qm_iso_time(p->started), *up = qm_iso_time(p->updated);
    cJSON_AddNumberToObject(j, "pid", p->pid);
    cJSON_AddStringToObject(j, "state", p->state ? p->state : "running");
    cJSON_AddStringToObject(j, "started", st);
    cJSON_AddStringToObject(j, "updated", up);
    cJSON_AddNumberToObject(j, "started_unix", p->started);
    cJSON_AddNumberToObject(j, "updated_unix", p->updated);
    cJSON_AddNumberToObject(j, "files_done", (double)p->files_done);
    cJSON_AddNumberToObject(j, "files_planned", (double)p->files_planned);
    cJSON_AddNumberToObject(j, "bytes_done", (double)p->bytes_done);
    cJSON_AddNumberToObject(j, "bytes_planned", (double)p->bytes_planned);
    cJSON_AddNumberToObject(j, "experts_done", (double)p->experts_done);
    cJSON_AddNumberToObject(j, "experts_planned", (double)p->experts_planned);
    cJSON_AddNumberToObject(j, "files_skipped", (double)p->files_skipped);
    cJSON *cur = cJSON_AddArrayToObject(j, "current");
    for (int i = 0; p->current && p->current[i]; i++)
        cJSON_AddItemToArray(cur, cJSON_CreateString(p->current[i]));
    if (p->last_error)
        cJSON_AddStringToObject(j, "last_error", p->last_error);
    else
        cJSON_AddNullToObject(j, "last_error");
    cJSON_AddStringToObject(j, "log", p->log ? p->log : OD_LOG);
    cJSON_AddNumberToObject(j, "shard", p->shard);
    cJSON_AddNumberToObject(j, "shards", p->shards > 0 ? p->shards : 1);
    if (p->layers)
        cJSON_AddStringToObject(j, "layers", p->layers);
    if (p->experts)
        cJSON_AddStringToObject(j, "experts", p->experts);
    cJSON_AddStringToObject(j, "host", p->host ? p->host : progress_host());
    cJSON_AddNumberToObject(j, "pid_start",
                            (double)(p->pid_start ? p->pid_start : progress_pid_start(p->pid)));
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    g_free(st);
    g_free(up);
    /* No fsync: progress is advisory and rewritten many times a second;
     * the rename alone keeps readers from seeing half a file. */
    int rc = fs_write_replace(path, text, strlen(text), err);
    if (rc != 0 && rewrite_in_place(path, text, strlen(text)) == 0) {
        if (err)
            g_clear_error(err); /* the state reached the file after all */
        rc = 0;
    }
    cJSON_free(text);
    return rc;
}

static uint64_t get_u64(const cJSON *j, const char *key)
{
    uint64_t v = 0;
    qm_json_uint(cJSON_GetObjectItemCaseSensitive(j, key), &v);
    return v;
}

static double get_num(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

int progress_read(const char *path, progress *p, GError **err)
{
    memset(p, 0, sizeof *p);
    cJSON *j = qm_json_load(path, err);
    if (!j)
        return -1;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "state");
    if (!cJSON_IsObject(j) || !cJSON_IsString(st)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s' has no state", path);
        cJSON_Delete(j);
        return -1;
    }
    p->state = g_strdup(st->valuestring);
    p->pid = (pid_t)get_u64(j, "pid");
    p->started = get_num(j, "started_unix");
    p->updated = get_num(j, "updated_unix");
    p->files_done = get_u64(j, "files_done");
    p->files_planned = get_u64(j, "files_planned");
    p->bytes_done = get_u64(j, "bytes_done");
    p->bytes_planned = get_u64(j, "bytes_planned");
    p->experts_done = get_u64(j, "experts_done");
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(j, "host");
    p->host = cJSON_IsString(h) && *h->valuestring ? g_strdup(h->valuestring) : NULL;
    p->pid_start = (int64_t)get_u64(j, "pid_start");
    p->experts_planned = get_u64(j, "experts_planned");
    p->files_skipped = get_u64(j, "files_skipped");
    p->shard = (int)get_u64(j, "shard");
    p->shards = (int)get_u64(j, "shards");
    if (p->shards < 1)
        p->shards = 1;
    const cJSON *cur = cJSON_GetObjectItemCaseSensitive(j, "current");
    int n = cJSON_GetArraySize(cur), i = 0;
    p->current = g_new0(char *, n + 1);
    const cJSON *x;
    cJSON_ArrayForEach(x, cur)
        if (cJSON_IsString(x))
            p->current[i++] = g_strdup(x->valuestring);
    const cJSON *le = cJSON_GetObjectItemCaseSensitive(j, "last_error");
    if (cJSON_IsString(le))
        p->last_error = g_strdup(le->valuestring);
    const cJSON *lg = cJSON_GetObjectItemCaseSensitive(j, "log");
    p->log = g_strdup(cJSON_IsString(lg) ? lg->valuestring : OD_LOG);
    const cJSON *ls = cJSON_GetObjectItemCaseSensitive(j, "layers");
    const cJSON *es = cJSON_GetObjectItemCaseSensitive(j, "experts");
    p->layers = cJSON_IsString(ls) ? g_strdup(ls->valuestring) : NULL;
    p->experts = cJSON_IsString(es) ? g_strdup(es->valuestring) : NULL;
    cJSON_Delete(j);
    return 0;
}

void progress_clear(progress *p)
{
    if (!p)
        return;
    g_free(p->state);
    g_strfreev(p->current);
    g_free(p->last_error);
    g_free(p->log);
    g_free(p->layers);
    g_free(p->experts);
    g_free(p->host);
    memset(p, 0, sizeof *p);
}

const char *progress_host(void)
{
    return g_get_host_name();
}

int64_t progress_pid_start(pid_t pid)
{
    if (pid <= 0)
        return 0;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    int fd = fs_open_regular(path, O_RDONLY, "cannot open", NULL);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    /* the command name (field 2) may hold spaces and parentheses */
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p++;
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p + 1, ' ');
    }
    return p ? (int64_t)strtoll(p + 1, NULL, 10) : 0;
}

int progress_owner_alive(const char *host, pid_t pid, int64_t start, double updated,
                         int *by_heartbeat)
{
    int remote = host && *host && strcmp(host, progress_host()) != 0;
    if (by_heartbeat)
        *by_heartbeat = remote;
    if (remote)
        return updated > 0 && qm_now() - updated < PROGRESS_HEARTBEAT_STALE;
    if (!fs_pid_alive(pid))
        return 0;
    int64_t now_start = progress_pid_start(pid);
    return !start || !now_start || now_start == start;
}

/* "PID HOST START\n" (older files: "PID\n") */
static pid_t parse_lock(const char *buf, char **host, int64_t *start)
{
    char *end;
    pid_t pid = (pid_t)strtol(buf, &end, 10);
    if (host)
        *host = NULL;
    if (start)
        *start = 0;
    char h[256];
    long long st = 0;
    if (sscanf(end, " %255s %lld", h, &st) == 2) {
        if (host)
            *host = g_strdup(h);
        if (start)
            *start = st;
    }
    return pid;
}

static pid_t read_pid(int fd)
{
    char buf[320] = {0};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    return n > 0 ? parse_lock(buf, NULL, NULL) : 0;
}

/* This process's lock line. */
static int lock_line(char *buf, size_t cap)
{
    return snprintf(buf, cap, "%ld %s %lld\n", (long)getpid(), progress_host(),
                    (long long)progress_pid_start(getpid()));
}

pid_t progress_lock_read(const char *path, char **host, int64_t *start)
{
    *host = NULL;
    *start = 0;
    int fd = fs_open_regular(path, O_RDONLY, "cannot open", NULL);
    if (fd < 0)
        return 0;
    char buf[320] = {0};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    close(fd);
    return n > 0 ? parse_lock(buf, host, start) : 0;
}

int progress_lock(const char *path, pid_t *stale_pid, GError **err)
{
    *stale_pid = 0;
    int fd = fs_open_out(path, O_RDWR | O_CREAT, "cannot create lock", err);
    if (fd < 0)
        return -1;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        pid_t owner = read_pid(fd);
        close(fd);
        g_set_error(err, QM_ERROR, QM_ERR_LOCKED,
                    "'%s' is held by another extraction (pid %ld); wait for it or "
                    "stop it first", path, (long)owner);
        return -1;
    }
    pid_t old = read_pid(fd);
    if (old > 0 && old != getpid())
        *stale_pid = old;
    char buf[320];
    int n = lock_line(buf, sizeof buf);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
        qm_set_errno(err, errno, "cannot write lock", path);
        close(fd);
        return -1;
    }
    return fd;
}

int progress_lock_handover(int fd, const char *path, GError **err)
{
    char buf[320];
    int n = lock_line(buf, sizeof buf);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n)
        return qm_set_errno(err, errno, "cannot write lock", path);
    return 0;
}

void progress_unlock(int fd, const char *path)
{
    (void)path;
    if (fd < 0)
        return;
    /* Emptied, not removed: a process that opened the file just before an
     * unlink would lock the old inode while a newcomer locks a new one, and
     * both would think they hold the lock. */
    if (ftruncate(fd, 0) != 0) {
        /* the flock is released by close() all the same */
    }
    close(fd);
}

pid_t progress_lock_owner(const char *path, int *held)
{
    *held = 0;
    char *host;
    int64_t start;
    pid_t pid = progress_lock_read(path, &host, &start);
    /* no heartbeat here: an owner on another host is taken to hold it */
    int remote = host && strcmp(host, progress_host()) != 0;
    *held = pid > 0 && (remote || progress_owner_alive(host, pid, start, 0, NULL));
    g_free(host);
    return pid;
}
