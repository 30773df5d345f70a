/* names.c - see names.h */
#include "outdir/names.h"

#include <glib.h>
#include <string.h>

const char *const od_subdirs[] = {"experts", "layers", "other", NULL};

char *od_expert_path(int width_e, int expert, int width_l, int layer)
{
    return g_strdup_printf("experts/expert_%0*d_layer_%0*d.safetensors", width_e,
                           expert, width_l, layer);
}

static int n_digits(int n)
{
    int d = 1;
    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d;
}

/* n (>= 0) as decimal digits zero-padded to width w, at p; returns the end. */
static char *put_padded(char *p, int n, int w)
{
    int d = n_digits(n);
    for (int i = d; i < w; i++)
        *p++ = '0';
    for (int i = d - 1; i >= 0; i--, n /= 10)
        p[i] = (char)('0' + n % 10);
    return p + d;
}

void od_expert_path_buf(char *buf, size_t cap, int width_e, int expert, int width_l,
                        int layer)
{
    char tmp[128];
    if (expert < 0 || layer < 0 || width_e > 32 || width_l > 32) { /* not written by qmoe */
        char *s = od_expert_path(width_e, expert, width_l, layer);
        g_strlcpy(buf, s, cap);
        g_free(s);
        return;
    }
    char *p = tmp;
    memcpy(p, "experts/expert_", 15);
    p = put_padded(p + 15, expert, width_e);
    memcpy(p, "_layer_", 7);
    p = put_padded(p + 7, layer, width_l);
    memcpy(p, ".safetensors", 13);
    g_strlcpy(buf, tmp, cap);
}

char *od_layer_path(int width_l, int layer)
{
    return g_strdup_printf("layers/layer_%0*d.safetensors", width_l, layer);
}

char *od_other_path(const char *prefix, int part)
{
    if (part < 0)
        return g_strdup_printf("other/%s", prefix);
    if (part == 0)
        return g_strdup_printf("other/%s.safetensors", prefix);
    return g_strdup_printf("other/%s-%02d.safetensors", prefix, part);
}

int od_other_in_group(const char *group, const char *path)
{
    size_t n = strlen(group);
    return strncmp(path, group, n) == 0 &&
           (strcmp(path + n, ".safetensors") == 0 ||
            (path[n] == '-' && g_str_has_suffix(path + n, ".safetensors")));
}

/* Decimal digits at *p (at least one) into *v, at most max; *ndig their
 * count. Leaves *p after them. */
static int digits(const char **p, long max, long *v, int *ndig)
{
    const char *s = *p;
    long x = 0;
    int n = 0;
    while (s[n] >= '0' && s[n] <= '9') {
        x = x * 10 + (s[n] - '0');
        if (x > max)
            return -1;
        n++;
    }
    if (n == 0)
        return -1;
    *v = x;
    *ndig = n;
    *p = s + n;
    return 0;
}

/* Parses "expert_E_layer_L.safetensors"; *de, *dl the digit counts. */
static int parse_expert(const char *n, int *expert, int *layer, int *de, int *dl)
{
    if (g_str_has_prefix(n, "experts/"))
        n += 8;
    if (strncmp(n, "expert_", 7) != 0)
        return -1;
    const char *p = n + 7;
    long ev, lv;
    if (digits(&p, 1 << 20, &ev, de) || strncmp(p, "_layer_", 7) != 0)
        return -1;
    p += 7;
    if (digits(&p, 1 << 20, &lv, dl) || strcmp(p, ".safetensors") != 0)
        return -1;
    *expert = (int)ev;
    *layer = (int)lv;
    return 0;
}

int od_parse_expert(const char *name, int *expert, int *layer)
{
    int de, dl;
    return parse_expert(name, expert, layer, &de, &dl);
}

void od_classify(const char *path, int width_e, int width_l, od_name *n)
{
    int e, l, de, dl;
    long lv;
    const char *p;
    n->layer = n->expert = -1;
    n->canonical = 0;
    n->kind = MF_OTHER;
    if (g_str_has_prefix(path, "experts/") && parse_expert(path, &e, &l, &de, &dl) == 0) {
        n->kind = MF_EXPERT;
        n->expert = e;
        n->layer = l;
        n->canonical = de == MAX(width_e, n_digits(e)) && dl == MAX(width_l, n_digits(l));
    } else if (g_str_has_prefix(path, "layers/layer_") && (p = path + 13) &&
               digits(&p, 1 << 20, &lv, &dl) == 0 && strcmp(p, ".safetensors") == 0) {
        n->kind = MF_LAYER;
        n->layer = (int)lv;
        n->canonical = dl == MAX(width_l, n_digits((int)lv));
    } else if (strcmp(path, OD_GLOBALS) == 0) {
        n->kind = MF_GLOBALS;
        n->canonical = 1;
    } else if (g_str_has_prefix(path, "other/") && g_str_has_suffix(path, ".safetensors") &&
               !strchr(path + 6, '/')) {
        n->canonical = 1;
    }
}

/* Same bound as qmoe-extract's --shard I/N. */
#define MAX_PARTS 100000

char *od_part_dir(int shard, int shards)
{
    return g_strdup_printf("shard-%d-of-%d", shard, shards);
}

int od_parse_part_dir(const char *name, int *shard, int *shards)
{
    if (strncmp(name, "shard-", 6) != 0)
        return -1;
    const char *p = name + 6;
    long i, n;
    int di, dn;
    if (digits(&p, MAX_PARTS, &i, &di) || strncmp(p, "-of-", 4) != 0)
        return -1;
    p += 4;
    if (digits(&p, MAX_PARTS, &n, &dn) || *p)
        return -1;
    /* leading zeros would give two names to one part */
    if (di != n_digits((int)i) || dn != n_digits((int)n) || n < 2 || i >= n)
        return -1;
    *shard = (int)i;
    *shards = (int)n;
    return 0;
}

char *od_state_dir(int shard, int shards)
{
    if (shards <= 1)
        return g_strdup(OD_STATE);
    char *part = od_part_dir(shard, shards);
    char *rel = g_strconcat(OD_STATE "/", part, NULL);
    g_free(part);
    return rel;
}

int od_parse_state_dir(const char *rel, int *shard, int *shards)
{
    if (strcmp(rel, OD_STATE) == 0) {
        *shard = 0;
        *shards = 1;
        return 0;
    }
    if (strncmp(rel, OD_STATE "/", sizeof OD_STATE) != 0)
        return -1;
    return od_parse_part_dir(rel + sizeof OD_STATE, shard, shards);
}
