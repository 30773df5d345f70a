/* manifest.c - see manifest.h */
#include "outdir/manifest.h"
#include "base/fs.h"
#include "base/json.h"
#include "base/util.h"
#include "outdir/names.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *kind_names[] = {"expert", "layer", "globals", "other"};

const char *mf_kind_name(mf_kind k)
{
    return (unsigned)k < 4 ? kind_names[k] : "?";
}

static cJSON *num(double v)
{
    return cJSON_CreateNumber(v);
}

cJSON *mf_file_to_json(const mf_file *f)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "path", f->path);
    cJSON_AddStringToObject(j, "kind", mf_kind_name(f->kind));
    cJSON_AddNumberToObject(j, "layer", f->layer);
    cJSON_AddNumberToObject(j, "expert", f->expert);
    cJSON_AddNumberToObject(j, "size", (double)f->size);
    cJSON_AddStringToObject(j, "sha256", f->sha256);
    cJSON_AddNumberToObject(j, "time", f->time);
    if (f->source_id[0])
        cJSON_AddStringToObject(j, "source_id", f->source_id);
    cJSON *ts = cJSON_AddArrayToObject(j, "tensors");
    for (int i = 0; i < f->n_tensors; i++) {
        const mf_tensor *t = &f->tensors[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", t->name);
        cJSON_AddStringToObject(o, "dtype", st_dtype_name(t->dtype));
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(sh, num((double)t->shape[d]));
        cJSON *off = cJSON_AddArrayToObject(o, "offsets");
        cJSON_AddItemToArray(off, num((double)t->begin));
        cJSON_AddItemToArray(off, num((double)t->end));
        cJSON_AddNumberToObject(o, "crc32", t->crc32);
        cJSON *src = cJSON_AddObjectToObject(o, "source");
        cJSON_AddStringToObject(src, "file", t->src_file ? t->src_file : "");
        cJSON_AddStringToObject(src, "tensor", t->src_name ? t->src_name : "");
        cJSON_AddNumberToObject(src, "offset", (double)t->src_offset);
        cJSON_AddNumberToObject(src, "slice", t->slice);
        cJSON_AddItemToArray(ts, o);
    }
    return j;
}

void mf_desc_copy(mf_desc *to, const mf_desc *from)
{
    *to = *from;
    to->name = g_strdup(from->name);
    to->src_name = g_strdup(from->src_name);
}

void mf_desc_clear(mf_desc *d)
{
    g_free(d->name);
    g_free(d->src_name);
    d->name = d->src_name = NULL;
}

/* ---- the same JSON, written directly ----
 *
 * A journal line per file built as cJSON objects (a dozen allocations per
 * tensor, then printed and freed) was a tenth of the extractor's
 * user-space CPU. These write the bytes cJSON_PrintUnformatted gives for
 * mf_file_to_json, byte for byte (the unit test compares them). */

/* ,"key":value; a NULL string leaves the member out, as cJSON does.
 * `first` omits the comma. */
static void put_key(GString *s, const char *key, int first)
{
    if (!first)
        g_string_append_c(s, ',');
    qm_json_put_str(s, key);
    g_string_append_c(s, ':');
}

static void put_str_member(GString *s, const char *key, const char *v, int *first)
{
    if (!v)
        return;
    put_key(s, key, *first);
    *first = 0;
    qm_json_put_str(s, v);
}

static void put_num_member(GString *s, const char *key, double v, int *first)
{
    put_key(s, key, *first);
    *first = 0;
    qm_json_put_num(s, v);
}

void mf_file_append_json(GString *s, const mf_file *f)
{
    int first = 1;
    g_string_append_c(s, '{');
    put_str_member(s, "path", f->path, &first);
    put_str_member(s, "kind", mf_kind_name(f->kind), &first);
    put_num_member(s, "layer", f->layer, &first);
    put_num_member(s, "expert", f->expert, &first);
    put_num_member(s, "size", (double)f->size, &first);
    put_str_member(s, "sha256", f->sha256, &first);
    put_num_member(s, "time", f->time, &first);
    if (f->source_id[0])
        put_str_member(s, "source_id", f->source_id, &first);
    put_key(s, "tensors", first);
    g_string_append_c(s, '[');
    for (int i = 0; i < f->n_tensors; i++) {
        const mf_tensor *t = &f->tensors[i];
        int tf = 1;
        if (i)
            g_string_append_c(s, ',');
        g_string_append_c(s, '{');
        put_str_member(s, "name", t->name, &tf);
        put_str_member(s, "dtype", st_dtype_name(t->dtype), &tf);
        put_key(s, "shape", tf);
        tf = 0;
        g_string_append_c(s, '[');
        for (int d = 0; d < t->ndim; d++) {
            if (d)
                g_string_append_c(s, ',');
            qm_json_put_num(s, (double)t->shape[d]);
        }
        g_string_append(s, "],");
        qm_json_put_str(s, "offsets");
        g_string_append(s, ":[");
        qm_json_put_num(s, (double)t->begin);
        g_string_append_c(s, ',');
        qm_json_put_num(s, (double)t->end);
        g_string_append_c(s, ']');
        put_num_member(s, "crc32", t->crc32, &tf);
        put_key(s, "source", 0);
        int sf = 1;
        g_string_append_c(s, '{');
        put_str_member(s, "file", t->src_file ? t->src_file : "", &sf);
        put_str_member(s, "tensor", t->src_name ? t->src_name : "", &sf);
        put_num_member(s, "offset", (double)t->src_offset, &sf);
        put_num_member(s, "slice", t->slice, &sf);
        g_string_append(s, "}}");
    }
    g_string_append(s, "]}");
}

void mf_file_clear(mf_file *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->n_tensors; i++) {
        mf_desc_clear(&f->tensors[i].desc);
        g_free(f->tensors[i].src_file);
    }
    g_free(f->tensors);
    g_free(f->path);
    memset(f, 0, sizeof *f);
}

#define BAD(...)                                                              \
    do {                                                                      \
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, __VA_ARGS__);               \
        goto fail;                                                            \
    } while (0)

static const char *str_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int uint_of(const cJSON *o, const char *key, uint64_t *out)
{
    return qm_json_uint(cJSON_GetObjectItemCaseSensitive(o, key), out);
}

static int tensor_from_json(const cJSON *o, mf_tensor *t, const char *where,
                            GError **err)
{
    const char *name = str_of(o, "name"), *dt = str_of(o, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(o, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(o, "offsets");
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(o, "source");
    uint64_t crc, v;
    if (!name || !dt || st_dtype_parse(dt) < 0 || !cJSON_IsArray(sh) ||
        cJSON_GetArraySize(sh) > ST_MAX_DIMS || !cJSON_IsArray(off) ||
        cJSON_GetArraySize(off) != 2 || !uint_of(o, "crc32", &crc) ||
        crc > UINT32_MAX)
        BAD("%s: tensor entry needs name, dtype, shape, offsets and crc32", where);
    t->name = g_strdup(name);
    t->dtype = (st_dtype)st_dtype_parse(dt);
    t->ndim = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, sh) {
        if (!qm_json_uint(x, &v))
            BAD("%s: tensor '%s' has a bad shape", where, name);
        t->shape[t->ndim++] = (int64_t)v;
    }
    if (!qm_json_uint(off->child, &t->begin) ||
        !qm_json_uint(off->child->next, &t->end) || t->end < t->begin)
        BAD("%s: tensor '%s' has bad offsets", where, name);
    t->crc32 = (uint32_t)crc;
    t->slice = -1;
    if (cJSON_IsObject(src)) {
        t->src_file = g_strdup(str_of(src, "file"));
        t->src_name = g_strdup(str_of(src, "tensor"));
        uint_of(src, "offset", &t->src_offset);
        int64_t s;
        if (qm_json_int(src, "slice", -1, 1 << 24, &s) == 0)
            t->slice = (int)s;
    }
    return 0;
fail:
    return -1;
}

int mf_file_from_json(const cJSON *j, mf_file *f, const char *where, GError **err)
{
    memset(f, 0, sizeof *f);
    const char *path = str_of(j, "path"), *kind = str_of(j, "kind");
    const char *sha = str_of(j, "sha256");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(j, "tensors");
    int64_t layer, expert;
    if (!cJSON_IsObject(j) || !path || !kind || !sha || strlen(sha) != 64 ||
        !uint_of(j, "size", &f->size) || !cJSON_IsArray(ts) ||
        qm_json_int(j, "layer", -1, 1 << 24, &layer) ||
        qm_json_int(j, "expert", -1, 1 << 24, &expert))
        BAD("%s: file record needs path, kind, layer, expert, size, sha256 and "
            "tensors", where);
    f->kind = MF_OTHER + 1;
    for (int k = 0; k < 4; k++)
        if (strcmp(kind, kind_names[k]) == 0)
            f->kind = (mf_kind)k;
    if (f->kind > MF_OTHER)
        BAD("%s: unknown kind '%s'", where, kind);
    f->path = g_strdup(path);
    f->layer = (int)layer;
    f->expert = (int)expert;
    memcpy(f->sha256, sha, 65);
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(j, "time");
    f->time = cJSON_IsNumber(tm) ? tm->valuedouble : 0;
    const char *sid = str_of(j, "source_id");
    if (sid)
        g_strlcpy(f->source_id, sid, sizeof f->source_id);
    int n = cJSON_GetArraySize(ts);
    f->tensors = g_new0(mf_tensor, n > 0 ? n : 1);
    const cJSON *o;
    cJSON_ArrayForEach(o, ts) {
        if (tensor_from_json(o, &f->tensors[f->n_tensors], where, err)) {
            f->n_tensors++; /* so that clear frees its name */
            goto fail;
        }
        f->n_tensors++;
    }
    return 0;
fail:
    mf_file_clear(f);
    return -1;
}

int mf_journal_append(int fd, const char *journal_path, const mf_file *f,
                      GError **err)
{
    return mf_journal_append_n(fd, journal_path, f, 1, err);
}

int mf_journal_append_n(int fd, const char *journal_path, const mf_file *f, int n,
                        GError **err)
{
    GString *buf = g_string_sized_new(1024 * (gsize)(n > 0 ? n : 1));
    for (int i = 0; i < n; i++) {
        mf_file_append_json(buf, &f[i]);
        g_string_append_c(buf, '\n');
    }
    off_t before = lseek(fd, 0, SEEK_END);
    ssize_t w;
    do
        w = write(fd, buf->str, buf->len);
    while (w < 0 && errno == EINTR);
    int rc = 0;
    if (w != (ssize_t)buf->len) {
        int e = w < 0 ? errno : ENOSPC;
        /* A short write (disk full) leaves part of a line with no newline;
         * the next append would glue onto it and make a bad line in the
         * middle of the journal, which no reader accepts. Cut it all off
         * again (none of the records stays), unless another appender has
         * written since. */
        struct stat st;
        if (w > 0 && before >= 0 && fstat(fd, &st) == 0 && st.st_size == before + w &&
            ftruncate(fd, before) != 0) {
            /* nothing more to do: mf_journal_open drops the torn tail */
        }
        rc = qm_set_errno(err, e, "cannot append to", journal_path);
    }
    g_string_free(buf, TRUE);
    return rc;
}

int mf_journal_open(const char *path, GError **err)
{
    int fd = fs_open_out(path, O_RDWR | O_APPEND | O_CREAT, "cannot open journal", err);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        qm_set_errno(err, errno, "cannot read journal", path);
        close(fd);
        return -1;
    }
    /* Find the end of the last complete line, reading backwards. */
    off_t end = st.st_size, keep = 0;
    char buf[65536];
    while (end > 0) {
        off_t from = end > (off_t)sizeof buf ? end - (off_t)sizeof buf : 0;
        ssize_t n = pread(fd, buf, (size_t)(end - from), from);
        if (n != end - from) {
            qm_set_errno(err, n < 0 ? errno : EIO, "cannot read journal", path);
            close(fd);
            return -1;
        }
        char *nl = memrchr(buf, '\n', (size_t)n);
        if (nl) {
            keep = from + (nl - buf) + 1;
            break;
        }
        end = from;
    }
    if (keep != st.st_size && ftruncate(fd, keep) != 0) {
        qm_set_errno(err, errno, "cannot cut the torn last line of journal", path);
        close(fd);
        return -1;
    }
    return fd;
}

static gint cmp_path(gconstpointer a, gconstpointer b)
{
    const mf_file *x = a, *y = b;
    int c = strcmp(x->path, y->path);
    if (c)
        return c;
    return x->time < y->time ? -1 : x->time > y->time;
}

void mf_files_sort_unique(GArray *files)
{
    /* g_array_sort is stable: records of one path with equal times keep
     * their order, so the last one read wins. */
    g_array_sort(files, cmp_path);
    guint w = 0;
    for (guint i = 0; i < files->len; i++) {
        mf_file *f = &g_array_index(files, mf_file, i);
        if (i + 1 < files->len &&
            strcmp(f->path, g_array_index(files, mf_file, i + 1).path) == 0) {
            mf_file_clear(f); /* superseded by a later record */
            continue;
        }
        g_array_index(files, mf_file, w++) = *f;
    }
    g_array_set_size(files, w);
}

void mf_files_free(GArray *files)
{
    if (!files)
        return;
    for (guint i = 0; i < files->len; i++)
        mf_file_clear(&g_array_index(files, mf_file, i));
    g_array_free(files, TRUE);
}

int mf_journal_read(const char *path, GArray *files, GError **err)
{
    gchar *text = NULL;
    gsize len = 0;
    GError *ge = NULL;
    if (fs_read_out_file(path, "cannot read", &text, &len, &ge) != 0) {
        int missing = errno == ENOENT;
        if (!missing)
            g_propagate_error(err, ge);
        else
            g_error_free(ge);
        return missing ? 0 : -1;
    }
    int rc = 0, lineno = 0;
    char *p = text, *end = text + len;
    while (p < end && rc == 0) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        lineno++;
        if (!nl)
            break; /* torn last line: the file it describes is redone */
        *nl = '\0';
        if (nl > p) {
            char where[512];
            snprintf(where, sizeof where, "'%s' line %d", path, lineno);
            cJSON *j = cJSON_Parse(p);
            mf_file f;
            if (!j) {
                g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "%s: invalid JSON", where);
                rc = -1;
            } else if (mf_file_from_json(j, &f, where, err) == 0) {
                g_array_append_val(files, f);
            } else {
                rc = -1;
            }
            cJSON_Delete(j);
        }
        p = nl + 1;
    }
    g_free(text);
    return rc;
}

/* The journals of OUT's --shard parts (.qmoe/shard-I-of-N/journal.jsonl),
 * present or not: one path per part directory. */
static GPtrArray *part_journals(const char *out)
{
    GPtrArray *paths = g_ptr_array_new_with_free_func(g_free);
    char *qdir = g_build_filename(out, OD_STATE, NULL);
    GDir *d = g_dir_open(qdir, 0, NULL);
    if (d) {
        const char *n;
        int i, k;
        while ((n = g_dir_read_name(d)))
            if (od_parse_part_dir(n, &i, &k) == 0)
                g_ptr_array_add(paths, g_build_filename(qdir, n, OD_JOURNAL, NULL));
        g_dir_close(d);
    }
    g_free(qdir);
    return paths;
}

int mf_journals_read_all(const char *out, GArray *files, GError **err)
{
    char *main_j = g_build_filename(out, OD_STATE, OD_JOURNAL, NULL);
    int rc = mf_journal_read(main_j, files, err);
    g_free(main_j);
    GPtrArray *parts = rc ? NULL : part_journals(out);
    for (guint i = 0; parts && i < parts->len && rc == 0; i++)
        rc = mf_journal_read(parts->pdata[i], files, err);
    if (parts)
        g_ptr_array_free(parts, TRUE);
    if (rc == 0)
        mf_files_sort_unique(files);
    return rc;
}

int mf_journals_has_parts(const char *out)
{
    GPtrArray *parts = part_journals(out);
    int any = 0;
    for (guint i = 0; i < parts->len && !any; i++)
        any = g_file_test(parts->pdata[i], G_FILE_TEST_EXISTS);
    g_ptr_array_free(parts, TRUE);
    return any;
}

/* ---- qmoe.json ---- */

void manifest_free(manifest *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->n_files; i++)
        mf_file_clear(&m->files[i]);
    g_free(m->files);
    g_strfreev(m->source_names);
    g_free(m->source_sizes);
    g_free(m->version);
    g_free(m->created);
    g_free(m->source_path);
    g_free(m->source_id);
    cJSON_Delete(m->source_identity);
    g_free(m->missing_from_source);
    g_free(m->layout);
    g_free(m->model_type);
    g_free(m->moe_layers);
    g_free(m->layers);
    g_free(m->experts);
    g_free(m);
}

int manifest_save(const manifest *m, const char *path, GError **err)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "tool", "qmoe");
    cJSON_AddStringToObject(j, "version", m->version ? m->version : QMOE_VERSION);
    cJSON_AddStringToObject(j, "created", m->created ? m->created : "");
    cJSON_AddBoolToObject(j, "complete", m->complete);
    cJSON *src = cJSON_AddObjectToObject(j, "source");
    cJSON_AddStringToObject(src, "path", m->source_path ? m->source_path : "");
    cJSON *sf = cJSON_AddArrayToObject(src, "files");
    for (int i = 0; i < m->n_source_files; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", m->source_names[i]);
        cJSON_AddNumberToObject(o, "size", (double)m->source_sizes[i]);
        cJSON_AddItemToArray(sf, o);
    }
    cJSON_AddNumberToObject(src, "bytes", (double)m->source_bytes);
    if (m->source_id && *m->source_id)
        cJSON_AddStringToObject(src, "id", m->source_id);
    if (m->source_identity)
        cJSON_AddItemToObject(src, "identity", cJSON_Duplicate(m->source_identity, 1));
    cJSON_AddStringToObject(j, "layout", m->layout ? m->layout : "");
    cJSON_AddStringToObject(j, "model_type", m->model_type ? m->model_type : "");
    cJSON *e = cJSON_AddObjectToObject(j, "expected");
    cJSON_AddNumberToObject(e, "num_layers", m->num_layers);
    cJSON_AddNumberToObject(e, "num_experts", m->num_experts);
    if (m->mtp_layers > 0)
        cJSON_AddNumberToObject(e, "mtp_layers", m->mtp_layers);
    cJSON_AddStringToObject(e, "moe_layers", m->moe_layers ? m->moe_layers : "");
    cJSON_AddStringToObject(e, "layers", m->layers ? m->layers : "");
    cJSON_AddStringToObject(e, "experts", m->experts ? m->experts : "");
    cJSON_AddNumberToObject(e, "count", m->expected_count);
    if (m->mtp_layers > 0)
        cJSON_AddNumberToObject(e, "mtp_count", m->mtp_count);
    cJSON_AddNumberToObject(e, "files", m->expected_files);
    cJSON_AddNumberToObject(e, "bytes", (double)m->expected_bytes);
    cJSON_AddBoolToObject(e, "partial", m->partial);
    if (m->no_other)
        cJSON_AddBoolToObject(e, "no_other", 1);
    if (m->missing_from_source && *m->missing_from_source) {
        cJSON_AddStringToObject(e, "missing_from_source", m->missing_from_source);
        cJSON_AddNumberToObject(e, "missing_count", m->missing_count);
    }
    cJSON_AddNumberToObject(j, "shards", m->shards > 0 ? m->shards : 1);
    /* "files" comes last: the rest printed by cJSON, its closing brace
     * replaced by the records written directly (mf_file_append_json),
     * which for 15,000 files saves building and printing 400,000 objects */
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    size_t len = strlen(text);
    GString *s = g_string_sized_new(len + 16 + (gsize)m->n_files * 1024);
    g_string_append_len(s, text, (gssize)len - 1);
    cJSON_free(text);
    g_string_append(s, ",\"files\":[");
    for (int i = 0; i < m->n_files; i++) {
        if (i)
            g_string_append_c(s, ',');
        mf_file_append_json(s, &m->files[i]);
    }
    g_string_append(s, "]}\n");
    int rc = fs_write_atomic(path, s->str, s->len, err);
    g_string_free(s, TRUE);
    return rc;
}

static char *dup_str(const cJSON *o, const char *key)
{
    const char *s = str_of(o, key);
    return g_strdup(s ? s : "");
}

manifest *manifest_load(const char *path, GError **err)
{
    cJSON *j = qm_json_load(path, err);
    if (!j)
        return NULL;
    manifest *m = g_new0(manifest, 1);
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(j, "source");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "expected");
    const cJSON *fs = cJSON_GetObjectItemCaseSensitive(j, "files");
    const char *tool = str_of(j, "tool");
    int64_t v;
    if (!cJSON_IsObject(j) || !tool || strcmp(tool, "qmoe") != 0 ||
        !cJSON_IsObject(src) || !cJSON_IsObject(e) || !cJSON_IsArray(fs))
        BAD("'%s' is not a qmoe manifest (needs tool, source, expected, files)",
            path);
    m->version = dup_str(j, "version");
    m->created = dup_str(j, "created");
    m->complete = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "complete"));
    m->layout = dup_str(j, "layout");
    m->model_type = dup_str(j, "model_type");
    m->source_path = dup_str(src, "path");
    uint_of(src, "bytes", &m->source_bytes);
    const cJSON *sf = cJSON_GetObjectItemCaseSensitive(src, "files");
    int ns = cJSON_GetArraySize(sf);
    m->source_names = g_new0(char *, ns + 1);
    m->source_sizes = g_new0(uint64_t, ns > 0 ? ns : 1);
    const cJSON *x;
    cJSON_ArrayForEach(x, sf) {
        m->source_names[m->n_source_files] = dup_str(x, "name");
        uint_of(x, "size", &m->source_sizes[m->n_source_files]);
        m->n_source_files++;
    }
    if (qm_json_int(e, "num_layers", 0, 1 << 20, &v))
        BAD("'%s': expected.num_layers missing", path);
    m->num_layers = (int)v;
    if (qm_json_int(e, "num_experts", 0, 1 << 24, &v))
        BAD("'%s': expected.num_experts missing", path);
    m->num_experts = (int)v;
    if (cJSON_GetObjectItemCaseSensitive(e, "mtp_layers")) {
        if (qm_json_int(e, "mtp_layers", 0, (1 << 20) - m->num_layers, &v))
            BAD("'%s': expected.mtp_layers is not an integer in [0, %d]", path,
                (1 << 20) - m->num_layers);
        m->mtp_layers = (int)v;
    }
    if (qm_json_int(e, "count", 0, 1 << 30, &v))
        BAD("'%s': expected.count missing", path);
    m->expected_count = (int)v;
    if (qm_json_int(e, "mtp_count", 0, m->expected_count, &v) == 0)
        m->mtp_count = (int)v;
    if (qm_json_int(e, "files", 0, 1 << 30, &v) == 0)
        m->expected_files = (int)v;
    uint_of(e, "bytes", &m->expected_bytes);
    m->moe_layers = dup_str(e, "moe_layers");
    m->layers = dup_str(e, "layers");
    m->experts = dup_str(e, "experts");
    m->partial = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "partial"));
    m->no_other = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "no_other"));
    m->missing_from_source = dup_str(e, "missing_from_source");
    if (qm_json_int(e, "missing_count", 0, 1 << 30, &v) == 0)
        m->missing_count = (int)v;
    m->source_id = dup_str(src, "id");
    const cJSON *ident = cJSON_GetObjectItemCaseSensitive(src, "identity");
    if (cJSON_IsObject(ident))
        m->source_identity = cJSON_Duplicate(ident, 1);
    m->shards = qm_json_int(j, "shards", 1, 1 << 20, &v) == 0 ? (int)v : 1;
    GArray *files = g_array_new(FALSE, TRUE, sizeof(mf_file));
    int i = 0;
    cJSON_ArrayForEach(x, fs) {
        char where[512];
        snprintf(where, sizeof where, "'%s' files[%d]", path, i++);
        mf_file f;
        if (mf_file_from_json(x, &f, where, err)) {
            mf_files_free(files);
            goto fail;
        }
        g_array_append_val(files, f);
    }
    mf_files_sort_unique(files);
    m->n_files = (int)files->len;
    m->files = (mf_file *)g_array_free(files, FALSE);
    cJSON_Delete(j);
    return m;
fail:
    cJSON_Delete(j);
    manifest_free(m);
    return NULL;
}

const mf_file *manifest_find(const manifest *m, const char *path)
{
    int lo = 0, hi = m->n_files - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int c = strcmp(m->files[mid].path, path);
        if (c == 0)
            return &m->files[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}
