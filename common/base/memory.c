/* memory.c - see memory.h */
#include "base/memory.h"

#include <glib.h>
#include <stdlib.h>
#include <string.h>

uint64_t qm_meminfo_available(const char *meminfo)
{
    const char *p = meminfo ? strstr(meminfo, "MemAvailable:") : NULL;
    if (!p)
        return 0;
    char *end;
    guint64 kb = g_ascii_strtoull(p + strlen("MemAvailable:"), &end, 10);
    return end == p + strlen("MemAvailable:") ? 0 : (uint64_t)kb << 10;
}

/* The number in FILE, or UINT64_MAX when it is absent, "max" or not a
 * number (no limit that can be read is no limit). */
static uint64_t limit_in(const char *file)
{
    char *s = NULL;
    uint64_t v = UINT64_MAX;
    if (g_file_get_contents(file, &s, NULL, NULL)) {
        char *end;
        guint64 n = g_ascii_strtoull(s, &end, 10);
        /* v1 writes "no limit" as 2^63 rounded down to a page */
        if (end != s && n > 0 && n < (G_GUINT64_CONSTANT(1) << 62))
            v = n;
    }
    g_free(s);
    return v;
}

/* The smallest `name` limit of dir and its parents down to root. */
static uint64_t walk_up(const char *root, const char *rel, const char *name)
{
    uint64_t best = UINT64_MAX;
    char *dir = g_build_filename(root, rel, NULL);
    size_t root_len = strlen(root);
    for (;;) {
        char *file = g_build_filename(dir, name, NULL);
        uint64_t v = limit_in(file);
        g_free(file);
        best = v < best ? v : best;
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < root_len)
            break;
        *slash = '\0';
    }
    g_free(dir);
    return best;
}

uint64_t qm_cgroup_memory_limit(const char *root, const char *proc_cgroup)
{
    uint64_t best = UINT64_MAX;
    gchar **lines = g_strsplit(proc_cgroup ? proc_cgroup : "", "\n", -1);
    for (int i = 0; lines[i]; i++) {
        /* "ID:CONTROLLERS:PATH"; the path may itself hold ':' */
        gchar **f = g_strsplit(lines[i], ":", 3);
        if (f[0] && f[1] && f[2] && f[2][0] == '/' && !strstr(f[2], "/..")) {
            uint64_t v = UINT64_MAX;
            if (!strcmp(f[0], "0") && !f[1][0]) {
                v = walk_up(root, f[2], "memory.max");
            } else {
                gchar **c = g_strsplit(f[1], ",", -1);
                for (int k = 0; c[k]; k++)
                    if (!strcmp(c[k], "memory")) {
                        char *mroot = g_build_filename(root, "memory", NULL);
                        v = walk_up(mroot, f[2], "memory.limit_in_bytes");
                        g_free(mroot);
                    }
                g_strfreev(c);
            }
            best = v < best ? v : best;
        }
        g_strfreev(f);
    }
    g_strfreev(lines);
    return best;
}

uint64_t qm_memory_available(void)
{
    const char *hook = getenv("QMOE_TEST_MEMORY_BYTES");
    if (hook && *hook)
        return g_ascii_strtoull(hook, NULL, 10);
    char *s = NULL;
    uint64_t avail = 0;
    if (g_file_get_contents("/proc/meminfo", &s, NULL, NULL))
        avail = qm_meminfo_available(s);
    g_free(s);
    s = NULL;
    if (g_file_get_contents("/proc/self/cgroup", &s, NULL, NULL)) {
        uint64_t lim = qm_cgroup_memory_limit("/sys/fs/cgroup", s);
        if (lim != UINT64_MAX && (!avail || lim < avail))
            avail = lim;
    }
    g_free(s);
    return avail;
}
