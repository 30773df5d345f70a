/* source.c - see source.h */
#include "outdir/source.h"
#include "base/fs.h"
#include "base/util.h"
#include "outdir/names.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bytes of data at each end of a shard that its identity hashes: seeds of
 * one sample shape differ there, at the cost of two small reads. */
#define OD_SAMPLE (64u << 10)

/* SHA-256 of [a0, a1) followed by [b0, b1) of the file. */
static int range_sha(const char *path, uint64_t a0, uint64_t a1, uint64_t b0,
                     uint64_t b1, char hex[65], GError **err)
{
    int fd = fs_open_regular(path, O_RDONLY, "cannot open source", err);
    if (fd < 0)
        return -1;
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    EVP_DigestInit_ex(sha, EVP_sha256(), NULL);
    uint8_t buf[1 << 16];
    int rc = 0;
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
    uint64_t off = pass ? b0 : a0, len = pass ? b1 : a1;
    while (off < len) {
        size_t want = (size_t)MIN((uint64_t)sizeof buf, len - off);
        ssize_t n = pread(fd, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? qm_set_errno(err, errno, "cannot read source", path) : -1;
            if (n == 0)
                g_set_error(err, QM_ERROR, QM_ERR_IO,
                            "cannot read source '%s': shorter than its header", path);
            break;
        }
        EVP_DigestUpdate(sha, buf, (size_t)n);
        off += (uint64_t)n;
    }
    }
    uint8_t md[32];
    unsigned mdlen = 0;
    EVP_DigestFinal_ex(sha, md, &mdlen);
    EVP_MD_CTX_free(sha);
    close(fd);
    qm_hex(md, 32, hex);
    return rc;
}

cJSON *od_source_identity(const ckpt *ck, const char *src_path, GError **err)
{
    cJSON *id = cJSON_CreateObject();
    cJSON *files = cJSON_CreateArray();
    EVP_MD_CTX *all = EVP_MD_CTX_new();
    EVP_DigestInit_ex(all, EVP_sha256(), NULL);
    cJSON *unread = cJSON_CreateArray(), *missing = cJSON_CreateArray();
    for (int i = 0; i < ck->n_shards; i++) {
        const ckpt_shard *s = &ck->shards[i];
        struct stat st;
        char hex[65], sample[65];
        if (!s->st) { /* not read for this plan: named, not fingerprinted */
            if (s->missing) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "name", s->name);
                cJSON_AddStringToObject(o, "why", s->missing);
                cJSON_AddItemToArray(missing, o);
            } else {
                cJSON_AddItemToArray(unread, cJSON_CreateString(s->name));
            }
            continue;
        }
        if (stat(s->path, &st) != 0) {
            qm_set_errno(err, errno, "cannot stat source", s->path);
            goto fail;
        }
        uint64_t hlen = s->st ? s->st->data_start : 0, size = (uint64_t)st.st_size;
        uint64_t head_end = MIN(size, hlen + OD_SAMPLE);
        uint64_t tail = size > OD_SAMPLE ? MAX(size - OD_SAMPLE, head_end) : head_end;
        if (range_sha(s->path, 0, hlen, 0, 0, hex, err) ||
            range_sha(s->path, hlen < size ? hlen : size, head_end, tail, size, sample,
                      err))
            goto fail;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", s->name);
        cJSON_AddNumberToObject(o, "size", (double)st.st_size);
        cJSON_AddNumberToObject(o, "mtime",
                                (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9);
        cJSON_AddStringToObject(o, "header_sha256", hex);
        cJSON_AddStringToObject(o, "sample_sha256", sample);
        cJSON_AddItemToArray(files, o);
        char *line = g_strdup_printf("%s\t%lld\t%s\t%s\n", s->name,
                                     (long long)st.st_size, hex, sample);
        EVP_DigestUpdate(all, line, strlen(line));
        g_free(line);
    }
    uint8_t md[32];
    unsigned mdlen = 0;
    char hex[65];
    EVP_DigestFinal_ex(all, md, &mdlen);
    EVP_MD_CTX_free(all);
    qm_hex(md, 8, hex);
    cJSON_AddStringToObject(id, "id", hex);
    cJSON_AddStringToObject(id, "path", src_path ? src_path : "");
    cJSON_AddItemToObject(id, "files", files);
    if (cJSON_GetArraySize(unread))
        cJSON_AddItemToObject(id, "unread", unread);
    else
        cJSON_Delete(unread);
    if (cJSON_GetArraySize(missing))
        cJSON_AddItemToObject(id, "missing", missing);
    else
        cJSON_Delete(missing);
    return id;
fail:
    EVP_MD_CTX_free(all);
    cJSON_Delete(unread);
    cJSON_Delete(missing);
    cJSON_Delete(files);
    cJSON_Delete(id);
    return NULL;
}

const char *od_source_id(const cJSON *identity)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(identity, "id");
    return cJSON_IsString(v) ? v->valuestring : "";
}

static double num_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static const char *str_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

/* The entry named `name` in identity list `key` ("files": objects with a
 * name; "unread": strings; "missing": objects with a name), or NULL. */
static const cJSON *listed(const cJSON *identity, const char *key, const char *name)
{
    const cJSON *x;
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(identity, key)) {
        const char *n = cJSON_IsString(x) ? x->valuestring : str_of(x, "name");
        if (strcmp(n, name) == 0)
            return x;
    }
    return NULL;
}

static int in_index(const cJSON *identity, const char *name)
{
    return listed(identity, "files", name) || listed(identity, "unread", name) ||
           listed(identity, "missing", name);
}

static gint cmp_entry(gconstpointer a, gconstpointer b)
{
    return strcmp(str_of(*(const cJSON *const *)a, "name"),
                  str_of(*(const cJSON *const *)b, "name"));
}

cJSON *od_source_merge(const cJSON *then, const cJSON *now, char **diff)
{
    GString *s = g_string_new(NULL);
    int n = 0;
#define CLAUSE(fmt, ...)                                                      \
    do {                                                                      \
        if (n < 4)                                                            \
            g_string_append_printf(s, "%s" fmt, n ? "; " : "", __VA_ARGS__);  \
        n++;                                                                  \
    } while (0)
    GPtrArray *keep = g_ptr_array_new(); /* then's files, carried over */
    const cJSON *x;
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(then, "files")) {
        const char *name = str_of(x, "name");
        const cJSON *y = listed(now, "files", name);
        if (!y) {
            /* not read now (a plan that needs it refuses while it is
             * missing): the files already written from it stay, and when it
             * is read again it must be what it was */
            if (listed(now, "unread", name) || listed(now, "missing", name))
                g_ptr_array_add(keep, (gpointer)x);
            else
                CLAUSE("'%s' was read then and is absent now", name);
            continue;
        }
        if (num_of(x, "size") != num_of(y, "size"))
            CLAUSE("'%s': size %.0f then, %.0f now", name,
                   num_of(x, "size"), num_of(y, "size"));
        else if (strcmp(str_of(x, "header_sha256"), str_of(y, "header_sha256")) != 0)
            CLAUSE("'%s': its header differs", name);
        else if (strcmp(str_of(x, "sample_sha256"), str_of(y, "sample_sha256")) != 0)
            CLAUSE("'%s': its data differs (first and last %d KiB)", name,
                   OD_SAMPLE >> 10);
        else if (fabs(num_of(x, "mtime") - num_of(y, "mtime")) > 1e-5) /* JSON's digits */
            CLAUSE("'%s': modified since (mtime %.3f then, %.3f now)", name, num_of(x, "mtime"), num_of(y, "mtime"));
    }
    /* a shard unread or missing then may be read now (the download went
     * on); one the index did not list then is another source */
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(now, "files"))
        if (!in_index(then, str_of(x, "name")))
            CLAUSE("'%s' is new", str_of(x, "name"));
    static const char *const lists[] = {"unread", "missing"};
    for (int k = 0; k < 2; k++)
        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(then, lists[k])) {
            const char *name = cJSON_IsString(x) ? x->valuestring : str_of(x, "name");
            if (!in_index(now, name))
                CLAUSE("'%s' is no longer in the index", name);
        }
#undef CLAUSE
    if (n > 4)
        g_string_append_printf(s, "; %d more differences", n - 4);
    if (n) {
        g_ptr_array_free(keep, TRUE);
        *diff = g_string_free(s, FALSE);
        return NULL;
    }
    g_string_free(s, TRUE);
    *diff = NULL;
    /* the same source, known as far as either run read it, under the id it
     * had when OUT was started: the files already written carry that id */
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", od_source_id(then));
    cJSON_AddStringToObject(m, "path", str_of(now, "path"));
    GPtrArray *all = g_ptr_array_new();
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(now, "files"))
        g_ptr_array_add(all, (gpointer)x);
    for (guint i = 0; i < keep->len; i++)
        g_ptr_array_add(all, keep->pdata[i]);
    g_ptr_array_free(keep, TRUE);
    g_ptr_array_sort(all, cmp_entry); /* by name, as od_source_identity lists them */
    cJSON *files = cJSON_AddArrayToObject(m, "files");
    for (guint i = 0; i < all->len; i++)
        cJSON_AddItemToArray(files, cJSON_Duplicate(all->pdata[i], 1));
    cJSON *unread = cJSON_CreateArray(), *missing = cJSON_CreateArray();
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(now, "unread"))
        if (!listed(m, "files", x->valuestring))
            cJSON_AddItemToArray(unread, cJSON_Duplicate(x, 1));
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(now, "missing"))
        if (!listed(m, "files", str_of(x, "name")))
            cJSON_AddItemToArray(missing, cJSON_Duplicate(x, 1));
    g_ptr_array_free(all, TRUE);
    if (cJSON_GetArraySize(unread))
        cJSON_AddItemToObject(m, "unread", unread);
    else
        cJSON_Delete(unread);
    if (cJSON_GetArraySize(missing))
        cJSON_AddItemToObject(m, "missing", missing);
    else
        cJSON_Delete(missing);
    return m;
}

int od_source_reread(ckpt *ck, const cJSON *then, GError **err)
{
    GHashTable *by = g_hash_table_new(g_str_hash, g_str_equal);
    for (int i = 0; i < ck->n_shards; i++)
        g_hash_table_insert(by, ck->shards[i].name, GINT_TO_POINTER(i + 1));
    int rc = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(then, "files")) {
        int i = GPOINTER_TO_INT(g_hash_table_lookup(by, str_of(x, "name"))) - 1;
        if (i < 0 || ck->shards[i].st)
            continue; /* not in the index now (the merge says so), or read */
        GError *e = NULL;
        if (!ckpt_shard_load(ck, i, 0, &e)) {
            if (ck->shards[i].missing) {
                g_error_free(e);
            } else {
                g_propagate_error(err, e);
                rc = -1;
                break;
            }
        }
    }
    g_hash_table_destroy(by);
    return rc;
}

char *od_source_diff(const cJSON *then, const cJSON *now)
{
    char *diff = NULL;
    cJSON_Delete(od_source_merge(then, now, &diff));
    return diff;
}

cJSON *od_source_load(const char *out, GError **err)
{
    char *path = g_build_filename(out, OD_SOURCE_JSON, NULL);
    cJSON *j = NULL;
    if (g_file_test(path, G_FILE_TEST_EXISTS)) {
        j = qm_json_load(path, err);
        if (j && !cJSON_IsObject(j)) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "'%s' is not a JSON object", path);
            cJSON_Delete(j);
            j = NULL;
        }
    }
    g_free(path);
    return j;
}

int od_source_save(const char *out, const cJSON *identity, GError **err)
{
    char *path = g_build_filename(out, OD_SOURCE_JSON, NULL);
    char *text = cJSON_PrintUnformatted(identity);
    GString *s = g_string_new(text);
    g_string_append_c(s, '\n');
    cJSON_free(text);
    int rc = fs_write_atomic(path, s->str, s->len, err);
    g_string_free(s, TRUE);
    g_free(path);
    return rc;
}

