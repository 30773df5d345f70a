/* progress.c - see progress.h */
#include "outdir/progress.h"
#include "base/fs.h"
#include "base/util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

char *progress_state_dir(const char *out, int shard, int shards)
{
    if (shards <= 1)
        return g_build_filename(out, ".qmoe", NULL);
    char name[64];
    snprintf(name, sizeof name, "shard-%d-of-%d", shard, shards);
    return g_build_filename(out, ".qmoe", name, NULL);
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
    cJSON_AddStringToObject(j, "log", p->log ? p->log : ".qmoe/extract.log");
    cJSON_AddNumberToObject(j, "shard", p->shard);
    cJSON_AddNumberToObject(j, "shards", p->shards > 0 ? p->shards : 1);
    if (p->layers)
        cJSON_AddStringToObject(j, "layers", p->layers);
    if (p->experts)
        cJSON_AddStringToObject(j, "experts", p->experts);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    g_free(st);
    g_free(up);
    /* No fsync: progress is advisory and rewritten many times a second;
     * the rename alone keeps readers from seeing half a file. */
    int rc = fs_write_replace(path, text, strlen(text), err);
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
    p->log = g_strdup(cJSON_IsString(lg) ? lg->valuestring : ".qmoe/extract.log");
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
    memset(p, 0, sizeof *p);
}

static pid_t read_pid(int fd)
{
    char buf[32] = {0};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    return n > 0 ? (pid_t)strtol(buf, NULL, 10) : 0;
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
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
        qm_set_errno(err, errno, "cannot write lock", path);
        close(fd);
        return -1;
    }
    return fd;
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
    int fd = fs_open_regular(path, O_RDONLY, "cannot open", NULL);
    if (fd < 0)
        return 0;
    pid_t pid = read_pid(fd);
    close(fd);
    *held = fs_pid_alive(pid);
    return pid;
}
