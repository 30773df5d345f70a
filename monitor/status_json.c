/* status_json.c - reading a few top-level fields of big JSON quickly.
 *
 * A journal of 6144 records is ~7 MB of JSON, almost all of it the
 * "tensors" arrays. Building cJSON trees for it takes ~30 ms and
 * mf_journal_read ~70 ms, more than a snapshot may take, so the journal is
 * scanned here: top-level keys are read until path, kind, layer, expert,
 * size and time are all seen (the writer puts "tensors" last), and other
 * values are skipped without building anything. A line the scanner does
 * not understand (escapes in the path, unusual spacing it cannot skip) is
 * handed to cJSON, so the scanner only has to be right on the fast path.
 */
#include "status.h"
#include "base/fs.h"
#include "base/util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    char *p, *end;
} jcur;

static void ws(jcur *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r' ||
                             *c->p == '\n'))
        c->p++;
}

/* At an opening quote: leaves p after the closing quote. Sets *plain when
 * the string has no escapes. */
static int skip_string(jcur *c, int *plain)
{
    if (c->p >= c->end || *c->p != '"')
        return -1;
    c->p++;
    if (plain)
        *plain = 1;
    while (c->p < c->end) {
        char ch = *c->p++;
        if (ch == '"')
            return 0;
        if (ch == '\\') {
            if (plain)
                *plain = 0;
            if (c->p >= c->end)
                return -1;
            c->p++;
        }
    }
    return -1;
}

static int skip_value(jcur *c)
{
    ws(c);
    if (c->p >= c->end)
        return -1;
    if (*c->p == '"')
        return skip_string(c, NULL);
    if (*c->p != '{' && *c->p != '[') {
        while (c->p < c->end && *c->p != ',' && *c->p != '}' && *c->p != ']')
            c->p++;
        return 0;
    }
    int depth = 0;
    while (c->p < c->end) {
        char ch = *c->p;
        if (ch == '"') {
            if (skip_string(c, NULL))
                return -1;
            continue;
        }
        c->p++;
        if (ch == '{' || ch == '[')
            depth++;
        else if ((ch == '}' || ch == ']') && --depth == 0)
            return 0;
    }
    return -1;
}

static int read_number(jcur *c, double *out)
{
    char buf[64];
    size_t n = 0;
    ws(c);
    while (c->p < c->end && n + 1 < sizeof buf &&
           (strchr("+-.eE", *c->p) || (*c->p >= '0' && *c->p <= '9')))
        buf[n++] = *c->p++;
    if (n == 0)
        return -1;
    buf[n] = '\0';
    char *e;
    errno = 0;
    *out = strtod(buf, &e);
    return (*e || errno) ? -1 : 0;
}

enum { F_PATH = 1, F_KIND = 2, F_LAYER = 4, F_EXPERT = 8, F_SIZE = 16, F_TIME = 32,
       F_ALL = 63 };

static int scan_line(char *p, char *end, st_rec *r)
{
    jcur c = {p, end};
    int seen = 0;
    ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return -1;
    c.p++;
    for (;;) {
        ws(&c);
        if (c.p < c.end && *c.p == '}')
            break;
        char *k = c.p + 1;
        int plain;
        if (skip_string(&c, &plain) || !plain)
            return -1;
        size_t klen = (size_t)(c.p - 1 - k);
        ws(&c);
        if (c.p >= c.end || *c.p != ':')
            return -1;
        c.p++;
        ws(&c);
#define KEY(s) (klen == sizeof(s) - 1 && memcmp(k, s, klen) == 0)
        double v;
        if (KEY("path") || KEY("kind")) {
            char *s = c.p + 1;
            if (skip_string(&c, &plain) || !plain)
                return -1;
            if (KEY("path")) {
                c.p[-1] = '\0';
                r->path = s;
                seen |= F_PATH;
            } else {
                r->kind_expert = c.p - 1 - s == 6 && memcmp(s, "expert", 6) == 0;
                seen |= F_KIND;
            }
        } else if (KEY("layer") || KEY("expert") || KEY("size") || KEY("time")) {
            if (read_number(&c, &v))
                return -1;
            if (KEY("layer")) {
                r->layer = (int)v;
                seen |= F_LAYER;
            } else if (KEY("expert")) {
                r->expert = (int)v;
                seen |= F_EXPERT;
            } else if (KEY("size")) {
                r->size = v > 0 ? (uint64_t)v : 0;
                seen |= F_SIZE;
            } else {
                r->time = v;
                seen |= F_TIME;
            }
        } else if (skip_value(&c)) {
            return -1;
        }
#undef KEY
        if ((seen & F_ALL) == F_ALL)
            return 0;
        ws(&c);
        if (c.p < c.end && *c.p == ',') {
            c.p++;
            continue;
        }
        break;
    }
    return (seen & F_PATH) ? 0 : -1;
}

/* The slow path: a real parse. The path is copied back over the line
 * (it is never longer than its JSON form) so it can point into the line. */
static int parse_line(char *p, char *end, st_rec *r)
{
    cJSON *j = cJSON_ParseWithLength(p, (size_t)(end - p));
    if (!j)
        return -1;
    const cJSON *path = cJSON_GetObjectItemCaseSensitive(j, "path");
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(j, "kind");
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(j, "layer");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "expert");
    const cJSON *sz = cJSON_GetObjectItemCaseSensitive(j, "size");
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(j, "time");
    int rc = -1;
    if (cJSON_IsString(path) && strlen(path->valuestring) < (size_t)(end - p)) {
        r->kind_expert = cJSON_IsString(kind) && strcmp(kind->valuestring, "expert") == 0;
        r->layer = cJSON_IsNumber(l) ? l->valueint : -1;
        r->expert = cJSON_IsNumber(e) ? e->valueint : -1;
        r->size = cJSON_IsNumber(sz) && sz->valuedouble > 0 ? (uint64_t)sz->valuedouble : 0;
        r->time = cJSON_IsNumber(tm) ? tm->valuedouble : 0;
        strcpy(p, path->valuestring);
        r->path = p;
        rc = 0;
    }
    cJSON_Delete(j);
    return rc;
}

int st_journal_line(char *p, char *end, st_rec *r)
{
    memset(r, 0, sizeof *r);
    r->layer = r->expert = -1;
    if (scan_line(p, end, r) == 0)
        return 0;
    memset(r, 0, sizeof *r);
    r->layer = r->expert = -1;
    /* scan_line may have written a NUL at the path's closing quote */
    for (char *q = p; q < end; q++)
        if (*q == '\0')
            *q = '"';
    return parse_line(p, end, r);
}

/* Finds the top-level "expected" value in [buf, buf+len) and parses it. */
static cJSON *expected_in(char *buf, size_t len, char **layout, int *need_more)
{
    jcur c = {buf, buf + len};
    *need_more = 0;
    ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return NULL;
    c.p++;
    cJSON *found = NULL;
    for (;;) {
        ws(&c);
        char *k = c.p + 1;
        if (skip_string(&c, NULL))
            break;
        size_t klen = (size_t)(c.p - 1 - k);
        ws(&c);
        if (c.p >= c.end || *c.p != ':')
            break;
        c.p++;
        ws(&c);
        char *v = c.p;
        if (skip_value(&c))
            break;
        if (klen == 8 && memcmp(k, "expected", 8) == 0) {
            found = cJSON_ParseWithLength(v, (size_t)(c.p - v));
        } else if (klen == 6 && memcmp(k, "layout", 6) == 0 && layout && !*layout) {
            cJSON *s = cJSON_ParseWithLength(v, (size_t)(c.p - v));
            if (cJSON_IsString(s))
                *layout = g_strdup(s->valuestring);
            cJSON_Delete(s);
        }
        if (found)
            return found;
        ws(&c);
        if (c.p < c.end && *c.p == ',') {
            c.p++;
            continue;
        }
        break;
    }
    *need_more = c.p >= c.end;
    return NULL;
}

cJSON *st_manifest_expected(const char *path, char **layout)
{
    int fd = fs_open_regular(path, O_RDONLY, "cannot open", NULL);
    if (fd < 0)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = g_malloc(cap);
    cJSON *found = NULL;
    for (;;) {
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len < cap)
            continue;
        /* a full buffer: try it, else read more */
        int more;
        if ((found = expected_in(buf, len, layout, &more)) || !more)
            break;
        cap *= 2;
        buf = g_realloc(buf, cap);
    }
    if (!found) {
        int more;
        found = expected_in(buf, len, layout, &more);
    }
    close(fd);
    g_free(buf);
    if (found && !cJSON_IsObject(found)) {
        cJSON_Delete(found);
        found = NULL;
    }
    return found;
}
