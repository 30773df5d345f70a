/* outdir.c - see outdir.h */
#include "outdir/outdir.h"
#include "base/fs.h"
#include "base/util.h"
#include "outdir/manifest.h"

#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *od_mtp_breakdown(int decoder_layers, int mtp_layers, int per_layer)
{
    if (mtp_layers <= 0)
        return NULL;
    if (decoder_layers <= 0) /* a selection of MTP layers only */
        return g_strdup_printf("MTP %d layer%s x %d", mtp_layers,
                               mtp_layers == 1 ? "" : "s", per_layer);
    return g_strdup_printf("%d layer%s x %d + MTP %d layer%s x %d", decoder_layers,
                           decoder_layers == 1 ? "" : "s", per_layer, mtp_layers,
                           mtp_layers == 1 ? "" : "s", per_layer);
}

char *od_plan_mtp_breakdown(const plan *p)
{
    const lt_shape *s = &p->shape;
    int dec = 0, mtp = 0, per = 0;
    for (int l = 0; l < s->n_layers; l++)
        if (p->layer_sel[l] && s->is_moe[l])
            *(lt_is_mtp(s, l) ? &mtp : &dec) += 1;
    for (int e = 0; e < s->n_experts; e++)
        per += p->expert_sel[e];
    return od_mtp_breakdown(dec, mtp, per);
}

/* ---- job records ---- */

void od_job_read(const char *out, const char *rel, od_job *j)
{
    memset(j, 0, sizeof *j);
    j->dir = g_strdup(rel);
    if (od_parse_state_dir(rel, &j->shard, &j->shards)) {
        j->shard = 0;
        j->shards = 1;
    }
    char *pp = g_build_filename(out, rel, OD_PROGRESS, NULL);
    char *lk = g_build_filename(out, rel, OD_LOCK, NULL);
    j->lock_pid = progress_lock_owner(lk, &j->lock_held);
    if (progress_read(pp, &j->prog, NULL) == 0) {
        const progress *p = &j->prog;
        j->present = 1;
        j->pid = p->pid;
        j->remote = p->host && strcmp(p->host, progress_host()) != 0;
        if (strcmp(p->state, "running") == 0) {
            /* a "running" file whose writer is gone: it died without saying so */
            j->alive = progress_owner_alive(p->host, p->pid, p->pid_start, p->updated,
                                            &j->remote);
            j->state = g_strdup(j->alive ? "running" : "crashed");
            j->stale_lock = !j->alive && j->lock_pid > 0;
        } else {
            j->state = g_strdup(p->state);
            j->stale_lock = j->lock_pid > 0 && !j->lock_held;
        }
    } else {
        memset(&j->prog, 0, sizeof j->prog);
        j->pid = j->lock_pid;
        j->alive = j->lock_pid > 0 && j->lock_held;
        j->stale_lock = j->lock_pid > 0 && !j->lock_held;
        j->state = g_strdup(j->alive ? "running" : j->stale_lock ? "crashed" : "none");
    }
    g_free(pp);
    g_free(lk);
}

void od_job_clear(od_job *j)
{
    if (!j)
        return;
    g_free(j->dir);
    g_free(j->state);
    progress_clear(&j->prog);
    memset(j, 0, sizeof *j);
}

GArray *od_jobs_read(const char *out)
{
    GArray *a = g_array_new(FALSE, TRUE, sizeof(od_job));
    od_job j;
    od_job_read(out, OD_STATE, &j);
    g_array_append_val(a, j);
    char *q = g_build_filename(out, OD_STATE, NULL);
    GDir *d = g_dir_open(q, 0, NULL);
    const char *n;
    while (d && (n = g_dir_read_name(d))) {
        int i, k;
        if (od_parse_part_dir(n, &i, &k))
            continue;
        char *rel = g_strconcat(OD_STATE "/", n, NULL);
        od_job_read(out, rel, &j);
        g_array_append_val(a, j);
        g_free(rel);
    }
    if (d)
        g_dir_close(d);
    g_free(q);
    return a;
}

void od_jobs_free(GArray *jobs)
{
    if (!jobs)
        return;
    for (guint i = 0; i < jobs->len; i++)
        od_job_clear(&g_array_index(jobs, od_job, i));
    g_array_free(jobs, TRUE);
}

/* ---- the verdict ---- */

od_verdict od_complete(const od_facts *f)
{
    if (f->live_writer)
        return OD_RUNNING;
    if (f->mixed)
        return OD_MIXED;
    if (f->source_gap)
        return OD_SOURCE_GAP;
    if (f->has_job_record && !f->has_manifest)
        return OD_NO_MANIFEST;
    if (f->has_manifest && !f->manifest_complete)
        return OD_NOT_FINISHED;
    if (f->experts_present < f->experts_expected ||
        (f->others_expected > 0 && f->others_present < f->others_expected))
        return OD_MISSING;
    if (f->experts_expected <= 0 && f->others_expected <= 0)
        return OD_NOTHING;
    if (f->unexpected > 0)
        return OD_UNEXPECTED;
    return OD_COMPLETE;
}

const char *od_verdict_name(od_verdict v)
{
    static const char *names[] = {"complete", "running", "mixed sources",
                                  "experts missing from the source",
                                  "qmoe.json not written", "not finished",
                                  "files missing", "nothing expected",
                                  "unexpected files"};
    return v <= OD_UNEXPECTED ? names[v] : "?";
}

/* ---- source completeness ---- */

char *od_plan_gap(const plan *p, int *count)
{
    int nl = p->shape.n_layers, ne = p->shape.n_experts;
    *count = 0;
    if (nl <= 0 || ne <= 0)
        return NULL;
    uint8_t *have = g_new0(uint8_t, (gsize)nl * (gsize)ne);
    for (int i = 0; i < p->n_files; i++) {
        const plan_file *f = &p->files[i];
        if (f->kind == MF_EXPERT && f->layer >= 0 && f->layer < nl && f->expert >= 0 &&
            f->expert < ne)
            have[(gsize)f->layer * (gsize)ne + (gsize)f->expert] = 1;
    }
    for (int i = 0; i < p->n_blocked; i++) { /* in the source, not yet readable */
        const plan_blocked *b = &p->blocked[i];
        if (b->kind == MF_EXPERT && b->layer >= 0 && b->layer < nl && b->expert >= 0 &&
            b->expert < ne)
            have[(gsize)b->layer * (gsize)ne + (gsize)b->expert] = 1;
    }
    /* per layer: the selected experts it lacks, as a list */
    char **gap = g_new0(char *, nl);
    uint8_t *miss = g_new0(uint8_t, ne);
    for (int l = 0; l < nl; l++) {
        if (!p->layer_sel[l] || !p->shape.is_moe[l])
            continue;
        int n = 0;
        for (int e = 0; e < ne; e++) {
            miss[e] = p->expert_sel[e] && !have[(gsize)l * (gsize)ne + (gsize)e];
            n += miss[e];
        }
        if (n) {
            gap[l] = qm_list_format(miss, ne);
            *count += n;
        }
    }
    GString *s = NULL;
    for (int l = 0; l < nl;) {
        if (!gap[l]) {
            l++;
            continue;
        }
        int k = l + 1; /* a run of layers with the same gap, MTP apart */
        while (k < nl && gap[k] && strcmp(gap[k], gap[l]) == 0 &&
               lt_is_mtp(&p->shape, k) == lt_is_mtp(&p->shape, l))
            k++;
        if (!s)
            s = g_string_new(NULL);
        else
            g_string_append_c(s, '\n');
        if (k - l > 1)
            g_string_append_printf(s, "layers %d-%d%s: ", l, k - 1,
                                   lt_is_mtp(&p->shape, l) ? " (MTP)" : "");
        else
            g_string_append_printf(s, "layer %d%s: ", l,
                                   lt_is_mtp(&p->shape, l) ? " (MTP)" : "");
        g_string_append_printf(s, "expert%s %s missing from the source (config.json "
                               "declares %d)", strpbrk(gap[l], ",-") ? "s" : "",
                               gap[l], ne);
        l = k;
    }
    for (int l = 0; l < nl; l++)
        g_free(gap[l]);
    g_free(gap);
    g_free(miss);
    g_free(have);
    return s ? g_string_free(s, FALSE) : NULL;
}

char *od_plan_blocked(const plan *p, const ckpt *ck, int one_line, char **layers_ok)
{
    int nl = p->shape.n_layers;
    if (layers_ok) {
        /* the selected layers none of whose files is blocked (none at all
         * when the globals are: every extraction has them) */
        uint8_t *ok = g_new0(uint8_t, nl > 0 ? nl : 1);
        int globals = 0;
        for (int l = 0; l < nl; l++)
            ok[l] = p->layer_sel[l];
        for (int i = 0; i < p->n_blocked; i++) {
            if (p->blocked[i].layer >= 0 && p->blocked[i].layer < nl)
                ok[p->blocked[i].layer] = 0;
            globals |= p->blocked[i].kind == MF_GLOBALS;
        }
        int any = 0;
        for (int l = 0; l < nl && !globals; l++)
            any |= ok[l];
        *layers_ok = any ? qm_list_format(ok, nl) : NULL;
        g_free(ok);
    }
    if (p->n_blocked == 0)
        return NULL;
    GString *s = g_string_new(NULL);
    uint8_t *lay = g_new0(uint8_t, nl > 0 ? nl : 1);
    for (int sh = 0; sh < ck->n_shards; sh++) {
        int n = 0, globals = 0, any_layer = 0;
        memset(lay, 0, (size_t)(nl > 0 ? nl : 1));
        GString *other = g_string_new(NULL);
        for (int i = 0; i < p->n_blocked; i++) {
            const plan_blocked *b = &p->blocked[i];
            if (b->shard != sh)
                continue;
            n++;
            if (b->layer >= 0 && b->layer < nl)
                lay[b->layer] = any_layer = 1;
            globals |= b->kind == MF_GLOBALS;
            if (b->kind == MF_OTHER)
                g_string_append_printf(other, ", %s", b->path);
        }
        if (n) {
            const ckpt_shard *x = &ck->shards[sh];
            if (s->len)
                g_string_append(s, one_line ? "; " : "\n");
            g_string_append_printf(s, "shard '%s' (%s) blocks %d file%s:", x->name,
                                   x->missing ? x->missing : "missing", n,
                                   n == 1 ? "" : "s");
            const char *sep = " ";
            if (any_layer) {
                char *l = qm_list_format(lay, nl);
                g_string_append_printf(s, " layer%s %s", strpbrk(l, ",-") ? "s" : "", l);
                g_free(l);
                sep = ", ";
            }
            if (globals) {
                g_string_append_printf(s, "%sglobals.safetensors", sep);
                sep = ", ";
            }
            if (other->len)
                g_string_append_printf(s, "%s%s*", sep, other->str + 2);
        }
        g_string_free(other, TRUE);
    }
    g_free(lay);
    return g_string_free(s, FALSE);
}

/* ---- source identity ---- */

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

/* ---- resuming ---- */

int od_record_in_place(uint64_t rec_size, const char *rec_source_id, int64_t size_now,
                       const char *out_id)
{
    int same_source = !rec_source_id || !rec_source_id[0] || !out_id || !out_id[0] ||
                      strcmp(rec_source_id, out_id) == 0;
    return same_source && size_now >= 0 && (uint64_t)size_now == rec_size;
}

/* Marks in done[] the plan files that a journal records and that are in
 * place with the recorded size, from this source (its identity, and each
 * tensor's source file and range). */
void od_find_done(const plan *p, const ckpt *ck, const char *source_id,
                      const char *out, GArray *recs, uint8_t *done)
{
    GHashTable *by = g_hash_table_new(g_str_hash, g_str_equal);
    for (guint i = 0; i < recs->len; i++) {
        mf_file *r = &g_array_index(recs, mf_file, i);
        g_hash_table_insert(by, r->path, r);
    }
    for (int i = 0; i < p->n_files; i++) {
        const plan_file *f = &p->files[i];
        mf_file *r = g_hash_table_lookup(by, f->path);
        if (!r || r->n_tensors != f->n)
            continue;
        int same = 1;
        for (int k = 0; k < f->n && same; k++)
            same = strcmp(r->tensors[k].name, f->t[k].name) == 0 &&
                   r->tensors[k].end - r->tensors[k].begin == f->t[k].nbytes &&
                   r->tensors[k].src_offset == f->t[k].src_offset &&
                   g_strcmp0(r->tensors[k].src_file, ck->shards[f->t[k].shard].name) == 0;
        char *path = g_build_filename(out, f->path, NULL);
        done[i] = same && od_record_in_place(r->size, r->source_id, fs_file_size(path),
                                             source_id);
        g_free(path);
    }
    g_hash_table_destroy(by);
}

/* Final path (relative to OUT) of the temporary `name` found in `dir`
 * ("" for OUT itself). Caller frees. */
static char *tmp_final(const char *dir, const char *name)
{
    const char *t = g_strrstr(name, ".tmp.");
    char *base = g_strndup(name, (gsize)(t - name));
    char *rel = *dir ? g_build_filename(dir, base, NULL) : g_strdup(base);
    g_free(base);
    return rel;
}

/* Removes temporaries left by extractors that died. A temporary's pid says
 * nothing about a process on another machine that shares OUT, so the pid
 * is not what decides: a temporary of a file of this part is stale because
 * only the holder of this part's lock (us) writes such files; one of a
 * file outside the plan (config, tokenizer, index, qmoe.json) is stale
 * because every writer of those holds .qmoe/manifest.lock, which the
 * caller holds. Temporaries of other parts' files are left to those parts
 * (an unsharded run owns every file); one outside the plan in a
 * subdirectory (from a run with another --layers/--experts) goes only when
 * unsharded and its pid is dead, as nothing else can tell. */
void od_remove_stale_tmps(const char *out, const plan *p, int shard, int shards)
{
    GHashTable *owner = g_hash_table_new(g_str_hash, g_str_equal);
    for (int i = 0; i < p->n_files; i++)
        g_hash_table_insert(owner, p->files[i].path, GINT_TO_POINTER(p->files[i].part + 1));
    const char *dirs[] = {"", od_subdirs[0], od_subdirs[1], od_subdirs[2], NULL};
    for (int i = 0; dirs[i]; i++) {
        char *dir = g_build_filename(out, dirs[i], NULL);
        GDir *d = g_dir_open(dir, 0, NULL);
        const char *n;
        while (d && (n = g_dir_read_name(d))) {
            if (!fs_is_tmp(n))
                continue;
            char *rel = tmp_final(dirs[i], n);
            int part = GPOINTER_TO_INT(g_hash_table_lookup(owner, rel)) - 1;
            pid_t pid = fs_tmp_pid(n);
            if (part == shard || (part < 0 && !*dirs[i]) ||
                (part < 0 && shards == 1 && (!fs_pid_alive(pid) || pid == getpid()))) {
                char *path = g_build_filename(dir, n, NULL);
                unlink(path);
                g_free(path);
            }
            g_free(rel);
        }
        if (d)
            g_dir_close(d);
        g_free(dir);
    }
    g_hash_table_destroy(owner);
}

/* ---- starting over ---- */

static int remove_rel(const char *out, const char *rel, int *removed, GError **err)
{
    /* recorded paths come from a file: only our own names, never "..". */
    if (!*rel || rel[0] == '/' || strstr(rel, ".."))
        return 0;
    char *path = g_build_filename(out, rel, NULL);
    int rc = 0;
    if (unlink(path) == 0)
        (*removed)++;
    else if (errno != ENOENT)
        rc = qm_set_errno(err, errno, "cannot remove", path);
    g_free(path);
    return rc;
}

static int is_output_tmp(const char *sub, const char *n)
{
    if (!fs_is_tmp(n))
        return 0;
    if (*sub)
        return strstr(n, ".safetensors.tmp.") != NULL;
    return g_str_has_prefix(n, "qmoe.json.tmp.") ||
           g_str_has_prefix(n, "model.safetensors.index.json.tmp.") ||
           g_str_has_prefix(n, "globals.safetensors.tmp.");
}

int od_restart(const char *out, int *removed, GError **err)
{
    *removed = 0;
    GArray *recs = g_array_new(FALSE, TRUE, sizeof(mf_file));
    int rc = mf_journals_read_all(out, recs, err);
    char *mp = g_build_filename(out, OD_MANIFEST, NULL);
    manifest *m = rc == 0 && g_file_test(mp, G_FILE_TEST_EXISTS)
                      ? manifest_load(mp, NULL) : NULL;
    g_free(mp);
    for (guint i = 0; i < recs->len && rc == 0; i++)
        rc = remove_rel(out, g_array_index(recs, mf_file, i).path, removed, err);
    for (int i = 0; m && i < m->n_files && rc == 0; i++)
        rc = remove_rel(out, m->files[i].path, removed, err);
    manifest_free(m);
    mf_files_free(recs);
    static const char *const tops[] = {"", "experts", "layers", "other", NULL};
    for (int i = 0; tops[i] && rc == 0; i++) {
        char *dir = g_build_filename(out, tops[i], NULL);
        GDir *d = g_dir_open(dir, 0, NULL);
        const char *n;
        while (d && (n = g_dir_read_name(d)) && rc == 0)
            if (is_output_tmp(tops[i], n)) {
                char *rel = *tops[i] ? g_strdup_printf("%s/%s", tops[i], n) : g_strdup(n);
                rc = remove_rel(out, rel, removed, err);
                g_free(rel);
            }
        if (d)
            g_dir_close(d);
        g_free(dir);
    }
    static const char *const files[] = {OD_MANIFEST, OD_INDEX,
                                        OD_STATE "/" OD_JOURNAL, OD_STATE "/" OD_PROGRESS,
                                        OD_SOURCE_JSON, NULL};
    for (int i = 0; files[i] && rc == 0; i++)
        rc = remove_rel(out, files[i], removed, err);
    char *q = g_build_filename(out, OD_STATE, NULL);
    GDir *d = g_dir_open(q, 0, NULL);
    const char *n;
    int pi, pn;
    while (d && (n = g_dir_read_name(d)) && rc == 0)
        if (od_parse_part_dir(n, &pi, &pn) == 0) {
            char *j = g_strconcat(OD_STATE "/", n, "/" OD_JOURNAL, NULL);
            char *p = g_strconcat(OD_STATE "/", n, "/" OD_PROGRESS, NULL);
            rc = remove_rel(out, j, removed, err);
            if (rc == 0)
                rc = remove_rel(out, p, removed, err);
            g_free(j);
            g_free(p);
        }
    if (d)
        g_dir_close(d);
    g_free(q);
    return rc;
}
