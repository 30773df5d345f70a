/* view_json.c - reading a few top-level fields of big JSON quickly (view.h).
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
#include "outdir/view.h"
#include "base/fs.h"
#include "base/json.h"
#include "base/util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef qm_jcur jcur; /* base/json.h */

/* The buffers scanned here are the callers' and writable (a path is
 * NUL-terminated in place); the cursor only reads. */
static char *wr(const char *p)
{
    return (char *)p;
}

static int read_number(jcur *c, double *out)
{
    char buf[64];
    size_t n = 0;
    qm_jcur_ws(c);
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
       F_SRCID = 64, F_ALL = 127 };

static mf_kind kind_of(const char *s, size_t n)
{
    static const char *names[] = {"expert", "layer", "globals", "other"};
    for (int i = 0; i < 4; i++)
        if (strlen(names[i]) == n && memcmp(s, names[i], n) == 0)
            return (mf_kind)i;
    return MF_OTHER;
}

static int scan_line(char *p, char *end, od_rec *r)
{
    jcur c = {p, end};
    int seen = 0;
    qm_jcur_ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return -1;
    c.p++;
    for (;;) {
        qm_jcur_ws(&c);
        if (c.p < c.end && *c.p == '}')
            break;
        char *k = wr(c.p + 1);
        int plain;
        if (qm_jcur_skip_str(&c, &plain) || !plain)
            return -1;
        size_t klen = (size_t)(c.p - 1 - k);
        qm_jcur_ws(&c);
        if (c.p >= c.end || *c.p != ':')
            return -1;
        c.p++;
        qm_jcur_ws(&c);
#define KEY(s) (klen == sizeof(s) - 1 && memcmp(k, s, klen) == 0)
        double v;
        if (KEY("path") || KEY("kind") || KEY("source_id")) {
            char *s = wr(c.p + 1);
            if (qm_jcur_skip_str(&c, &plain) || !plain)
                return -1;
            size_t n = (size_t)(c.p - 1 - s);
            if (KEY("path")) {
                wr(c.p)[-1] = '\0';
                r->path = s;
                seen |= F_PATH;
            } else if (KEY("kind")) {
                r->kind = kind_of(s, n);
                seen |= F_KIND;
            } else {
                if (n < sizeof r->source_id) {
                    memcpy(r->source_id, s, n);
                    r->source_id[n] = '\0';
                }
                seen |= F_SRCID;
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
        } else if (qm_jcur_skip(&c)) {
            return -1;
        }
#undef KEY
        if ((seen & F_ALL) == F_ALL)
            return 0;
        qm_jcur_ws(&c);
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
static int parse_line(char *p, char *end, od_rec *r)
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
    const cJSON *sid = cJSON_GetObjectItemCaseSensitive(j, "source_id");
    int rc = -1;
    if (cJSON_IsString(path) && strlen(path->valuestring) < (size_t)(end - p)) {
        r->kind = cJSON_IsString(kind) ? kind_of(kind->valuestring, strlen(kind->valuestring))
                                       : MF_OTHER;
        if (cJSON_IsString(sid) && strlen(sid->valuestring) < sizeof r->source_id)
            strcpy(r->source_id, sid->valuestring);
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

int od_rec_scan(char *p, char *end, od_rec *r)
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

/* One member of an object: reads its key and colon; *k, *klen are the
 * key's bytes as written, and c then stands at the value. -1 at the end of
 * the object or on malformed input. */
static int member_key(jcur *c, char **k, size_t *klen)
{
    qm_jcur_ws(c);
    char *start = wr(c->p + 1);
    if (qm_jcur_skip_str(c, NULL))
        return -1;
    *k = start;
    *klen = (size_t)(c->p - 1 - start);
    qm_jcur_ws(c);
    if (c->p >= c->end || *c->p != ':')
        return -1;
    c->p++;
    qm_jcur_ws(c);
    return 0;
}

/* After a member's value: 1 when a comma announces another member. */
static int member_next(jcur *c)
{
    qm_jcur_ws(c);
    if (c->p < c->end && *c->p == ',') {
        c->p++;
        return 1;
    }
    return 0;
}

/* Reads the top-level members of qmoe.json's head in [buf, buf+len) up to
 * "expected" (the writer puts "complete", "source" and "layout" before it).
 * Returns the parsed "expected", or NULL with *need_more when the buffer
 * ended first. */
static cJSON *head_in(char *buf, size_t len, od_mhead *h, int *need_more)
{
    jcur c = {buf, buf + len};
    *need_more = 0;
    qm_jcur_ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return NULL;
    c.p++;
    cJSON *found = NULL;
    for (;;) {
        char *k;
        size_t klen;
        if (member_key(&c, &k, &klen))
            break;
        char *v = wr(c.p);
        if (qm_jcur_skip(&c))
            break;
#define KEY(s) (klen == sizeof(s) - 1 && memcmp(k, s, klen) == 0)
        if (KEY("complete")) {
            h->complete = c.p - v == 4 && memcmp(v, "true", 4) == 0;
        } else if (KEY("expected")) {
            found = cJSON_ParseWithLength(v, (size_t)(c.p - v));
        } else if ((KEY("layout") && !h->layout) || (KEY("source") && !h->source_id)) {
            cJSON *x = cJSON_ParseWithLength(v, (size_t)(c.p - v));
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(x, "id");
            if (KEY("layout") && cJSON_IsString(x))
                h->layout = g_strdup(x->valuestring);
            else if (KEY("source") && cJSON_IsString(id))
                h->source_id = g_strdup(id->valuestring);
            cJSON_Delete(x);
        }
#undef KEY
        if (found)
            return found;
        if (!member_next(&c))
            break;
    }
    *need_more = c.p >= c.end;
    return NULL;
}

int od_manifest_head(const char *path, od_mhead *h)
{
    memset(h, 0, sizeof *h);
    int fd = fs_open_regular(path, O_RDONLY, "cannot open", NULL);
    if (fd < 0)
        return -1;
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
        od_mhead_clear(h);
        if ((found = head_in(buf, len, h, &more)) || !more)
            break;
        cap *= 2;
        buf = g_realloc(buf, cap);
    }
    if (!found) {
        int more;
        od_mhead_clear(h);
        found = head_in(buf, len, h, &more);
    }
    close(fd);
    g_free(buf);
    if (found && !cJSON_IsObject(found)) {
        cJSON_Delete(found);
        found = NULL;
    }
    h->expected = found;
    return found ? 0 : -1;
}

void od_mhead_clear(od_mhead *h)
{
    g_free(h->layout);
    g_free(h->source_id);
    cJSON_Delete(h->expected);
    memset(h, 0, sizeof *h);
}

int od_manifest_records(const char *path, void (*each)(const od_rec *r, void *ctx),
                        void *ctx)
{
    char *buf = NULL;
    size_t len = 0;
    if (fs_read_file(path, "cannot read", &buf, &len, NULL))
        return -1;
    jcur c = {buf, buf + len};
    int rc = -1;
    qm_jcur_ws(&c);
    if (c.p < c.end && *c.p == '{') {
        c.p++;
        for (;;) {
            char *k;
            size_t klen;
            if (member_key(&c, &k, &klen))
                break;
            if (klen == 5 && memcmp(k, "files", 5) == 0 && c.p < c.end && *c.p == '[') {
                c.p++;
                rc = 0;
                for (;;) {
                    qm_jcur_ws(&c);
                    if (c.p >= c.end || *c.p == ']')
                        break;
                    char *b = wr(c.p);
                    if (qm_jcur_skip(&c)) {
                        rc = -1;
                        break;
                    }
                    char *e = wr(c.p), save = *e; /* the record's scan may write a NUL */
                    od_rec r;
                    if (od_rec_scan(b, e, &r) == 0)
                        each(&r, ctx);
                    *e = save;
                    qm_jcur_ws(&c);
                    if (c.p < c.end && *c.p == ',')
                        c.p++;
                }
                break;
            }
            if (qm_jcur_skip(&c) || !member_next(&c))
                break;
        }
    }
    g_free(buf);
    return rc;
}
