/* checkpoint.c - see checkpoint.h */
#include "format/checkpoint.h"
#include "base/fs.h"
#include "base/util.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_shard_name(const void *a, const void *b)
{
    return strcmp((*(ckpt_shard *const *)a)->name, (*(ckpt_shard *const *)b)->name);
}

void ckpt_close(ckpt *ck)
{
    if (!ck)
        return;
    for (int i = 0; i < ck->n_shards; i++) {
        g_free(ck->shards[i].name);
        g_free(ck->shards[i].path);
        st_close(ck->shards[i].st);
        st_close(ck->shards[i].retired);
        st_close(ck->shards[i].desc);
        g_free(ck->shards[i].names);
        g_free(ck->shards[i].missing);
    }
    g_free(ck->shards);
    g_strfreev(ck->names);
    if (ck->shard_of)
        g_hash_table_destroy(ck->shard_of);
    cJSON_Delete(ck->config);
    cJSON_Delete(ck->generation_config);
    g_free(ck->model_type);
    g_free(ck->resolved);
    g_free(ck->described_by);
    g_free(ck->dir);
    fs_dir_close(ck->dir_h);
    g_mutex_clear(&ck->lock);
    g_free(ck);
}

/* A shard name from the index must stay inside the checkpoint directory. */
static int safe_relative(const char *name)
{
    if (!*name || name[0] == '/')
        return 0;
    gchar **parts = g_strsplit(name, "/", -1);
    int ok = 1;
    for (int i = 0; parts[i]; i++)
        if (strcmp(parts[i], "..") == 0 || parts[i][0] == '\0')
            ok = 0;
    g_strfreev(parts);
    return ok;
}

static int add_shard(ckpt *ck, GHashTable *idx, const char *name)
{
    gpointer v;
    if (g_hash_table_lookup_extended(idx, name, NULL, &v))
        return GPOINTER_TO_INT(v);
    int i = ck->n_shards++;
    ck->shards = g_renew(ckpt_shard, ck->shards, ck->n_shards);
    memset(&ck->shards[i], 0, sizeof ck->shards[i]);
    ck->shards[i].name = g_strdup(name);
    ck->shards[i].path = g_build_filename(ck->dir, name, NULL);
    g_hash_table_insert(idx, ck->shards[i].name, GINT_TO_POINTER(i));
    return i;
}

static int shard_of(const ckpt *ck, const char *name)
{
    return GPOINTER_TO_INT(g_hash_table_lookup(ck->shard_of, name)) - 1;
}

/* Sorts shards by name and the tensor names, and builds the lookup. */
static void finish_tables(ckpt *ck, GPtrArray *names, GArray *shard_ix)
{
    /* An OUT has thousands of shards: sort pointers (n log n), not the
     * structs in place by insertion. */
    ckpt_shard **order = g_new(ckpt_shard *, ck->n_shards > 0 ? ck->n_shards : 1);
    ckpt_shard *sorted = g_new(ckpt_shard, ck->n_shards > 0 ? ck->n_shards : 1);
    int *rank = g_new(int, ck->n_shards > 0 ? ck->n_shards : 1);
    for (int i = 0; i < ck->n_shards; i++)
        order[i] = &ck->shards[i];
    qsort(order, (size_t)ck->n_shards, sizeof *order, cmp_shard_name);
    for (int i = 0; i < ck->n_shards; i++) {
        sorted[i] = *order[i];
        rank[order[i] - ck->shards] = i;
    }
    g_free(ck->shards);
    ck->shards = sorted;
    ck->shard_of = g_hash_table_new(g_str_hash, g_str_equal);
    ck->n_names = (int)names->len;
    ck->names = g_new0(char *, names->len + 1);
    for (guint i = 0; i < names->len; i++)
        ck->names[i] = names->pdata[i];
    qsort(ck->names, names->len, sizeof(char *), cmp_str);
    /* shard_ix is parallel to the unsorted names; map via pointer */
    for (guint i = 0; i < names->len; i++)
        g_hash_table_insert(ck->shard_of, names->pdata[i],
                            GINT_TO_POINTER(rank[g_array_index(shard_ix, int, i)] + 1));
    /* Each shard's own names (sorted, as ck->names is), so that checking a
     * shard against the index costs its own names, not all of them. */
    for (int k = 0; k < ck->n_names; k++)
        ck->shards[shard_of(ck, ck->names[k])].n_names++;
    for (int i = 0; i < ck->n_shards; i++) {
        ck->shards[i].names = g_new(char *, ck->shards[i].n_names + 1);
        ck->shards[i].n_names = 0;
    }
    for (int k = 0; k < ck->n_names; k++) {
        ckpt_shard *s = &ck->shards[shard_of(ck, ck->names[k])];
        s->names[s->n_names++] = ck->names[k];
    }
    for (int i = 0; i < ck->n_shards; i++)
        ck->shards[i].names[ck->shards[i].n_names] = NULL;
    g_free(order);
    g_free(rank);
}

static int open_index(ckpt *ck, const char *index_path, GError **err)
{
    cJSON *idx = qm_json_load(index_path, err);
    if (!idx)
        return -1;
    int rc = -1;
    GHashTable *by_shard = g_hash_table_new(g_str_hash, g_str_equal);
    GPtrArray *names = g_ptr_array_new();
    GArray *shard_ix = g_array_new(FALSE, FALSE, sizeof(int));
    GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    if (!cJSON_IsObject(wm)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "cannot use '%s': no weight_map object", index_path);
        goto out;
    }
    for (const cJSON *it = wm->child; it; it = it->next) {
        if (!cJSON_IsString(it)) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "cannot use '%s': weight_map entry '%s' is not a file name",
                        index_path, it->string);
            goto out;
        }
        if (!safe_relative(it->valuestring)) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "cannot use '%s': file name '%s' of tensor '%s' leaves the "
                        "checkpoint directory", index_path, it->valuestring,
                        it->string);
            goto out;
        }
        if (g_hash_table_contains(seen, it->string)) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "cannot use '%s': tensor '%s' is listed twice", index_path,
                        it->string);
            goto out;
        }
        char *name = g_strdup(it->string);
        g_hash_table_add(seen, name);
        int s = add_shard(ck, by_shard, it->valuestring);
        g_ptr_array_add(names, name);
        g_array_append_val(shard_ix, s);
    }
    finish_tables(ck, names, shard_ix);
    rc = 0;
out:
    if (rc)
        for (guint i = 0; i < names->len; i++)
            g_free(names->pdata[i]);
    g_ptr_array_free(names, TRUE);
    g_array_free(shard_ix, TRUE);
    g_hash_table_destroy(by_shard);
    g_hash_table_destroy(seen);
    cJSON_Delete(idx);
    return rc;
}

/* A single .safetensors file: its header is the index. */
static int open_single(ckpt *ck, const char *file, GError **err)
{
    GHashTable *by_shard = g_hash_table_new(g_str_hash, g_str_equal);
    char *base = g_path_get_basename(file);
    int s = add_shard(ck, by_shard, base);
    g_free(base);
    g_hash_table_destroy(by_shard);
    st_file *st = st_open_header(ck->shards[s].path, err);
    if (!st)
        return -1;
    ck->shards[s].st = st;
    GPtrArray *names = g_ptr_array_new();
    GArray *shard_ix = g_array_new(FALSE, FALSE, sizeof(int));
    for (int i = 0; i < st->n_tensors; i++) {
        g_ptr_array_add(names, g_strdup(st->tensors[i].name));
        g_array_append_val(shard_ix, s);
    }
    finish_tables(ck, names, shard_ix);
    g_ptr_array_free(names, TRUE);
    g_array_free(shard_ix, TRUE);
    return 0;
}

/* One file of a sharded checkpoint is not a checkpoint: refuses `file`
 * when the index beside it names other shards too. */
static int lone_shard(const char *file, const char *dir, GError **err)
{
    char *ipath = g_build_filename(dir, "model.safetensors.index.json", NULL);
    cJSON *idx = g_file_test(ipath, G_FILE_TEST_IS_REGULAR) ? qm_json_load(ipath, NULL) : NULL;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    char *base = g_path_get_basename(file);
    GHashTable *files = g_hash_table_new(g_str_hash, g_str_equal);
    int mine = 0;
    for (const cJSON *e = cJSON_IsObject(wm) ? wm->child : NULL; e; e = e->next)
        if (cJSON_IsString(e)) {
            g_hash_table_add(files, e->valuestring);
            mine |= !strcmp(e->valuestring, base);
        }
    int n = (int)g_hash_table_size(files), rc = 0;
    if (mine && n > 1) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "'%s' is one of the %d shards of the checkpoint in '%s' (its "
                    "model.safetensors.index.json lists them all): give the directory",
                    file, n, dir);
        rc = -1;
    }
    g_hash_table_destroy(files);
    g_free(base);
    cJSON_Delete(idx);
    g_free(ipath);
    return rc;
}

/* A name present in the directory, even as a dangling or looping symlink:
 * such a file is then opened and its real problem reported ("Too many
 * levels of symbolic links"), not called missing. */
static int present(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

static cJSON *load_optional_json(const char *dir, const char *file, GError **err,
                                 int *failed)
{
    char *p = g_build_filename(dir, file, NULL);
    cJSON *j = NULL;
    if (present(p)) {
        j = qm_json_load(p, err);
        if (!j)
            *failed = 1;
    }
    g_free(p);
    return j;
}

/* A huggingface_hub cache folder (models--ORG--NAME/ with refs/ and
 * snapshots/REV/, whose files are symlinks into blobs/): the snapshot
 * refs/main names, else the only one. Returns a new path, or NULL when
 * `dir` is not such a folder (*err unset) or cannot be resolved (*err set). */
static char *hub_snapshot(const char *dir, char **how, GError **err)
{
    char *snaps = g_build_filename(dir, "snapshots", NULL);
    char *out = NULL;
    GDir *d = g_file_test(snaps, G_FILE_TEST_IS_DIR) ? g_dir_open(snaps, 0, NULL) : NULL;
    if (!d) {
        g_free(snaps);
        return NULL;
    }
    char *ref_path = g_build_filename(dir, "refs", "main", NULL), *ref = NULL;
    if (g_file_test(ref_path, G_FILE_TEST_EXISTS) &&
        fs_read_file(ref_path, "cannot read", &ref, NULL, err) != 0) {
        g_dir_close(d);
        g_free(ref_path);
        g_free(snaps);
        return NULL;
    }
    if (ref) {
        g_strstrip(ref);
        if (!*ref || strchr(ref, '/') || !strcmp(ref, "..")) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "hub cache '%s': refs/main holds no revision", dir);
        } else {
            out = g_build_filename(snaps, ref, NULL);
            if (!g_file_test(out, G_FILE_TEST_IS_DIR)) {
                g_set_error(err, QM_ERROR, QM_ERR_IO,
                            "hub cache '%s': refs/main names revision %s, which has no "
                            "snapshots/%s", dir, ref, ref);
                g_clear_pointer(&out, g_free);
            } else {
                *how = g_strdup_printf("snapshot %s (refs/main)", ref);
            }
        }
    } else {
        GPtrArray *revs = g_ptr_array_new_with_free_func(g_free);
        for (const char *n; (n = g_dir_read_name(d));)
            g_ptr_array_add(revs, g_strdup(n));
        if (revs->len == 1) {
            out = g_build_filename(snaps, revs->pdata[0], NULL);
            *how = g_strdup_printf("snapshot %s (the only one; no refs/main)",
                                   (char *)revs->pdata[0]);
        } else {
            g_set_error(err, QM_ERROR, QM_ERR_IO,
                        "hub cache '%s': %u snapshots and no refs/main: give "
                        "snapshots/REV", dir, revs->len);
        }
        g_ptr_array_free(revs, TRUE);
    }
    g_dir_close(d);
    g_free(ref);
    g_free(ref_path);
    g_free(snaps);
    return out;
}

char *ckpt_resolve(const char *path, char **note, GError **err)
{
    *note = NULL;
    char *index = g_build_filename(path, "model.safetensors.index.json", NULL);
    char *single = g_build_filename(path, "model.safetensors", NULL);
    int plain = !g_file_test(path, G_FILE_TEST_IS_DIR) || present(index) || present(single);
    g_free(index);
    g_free(single);
    if (plain)
        return g_strdup(path);
    GError *e = NULL;
    char *how = NULL, *snap = hub_snapshot(path, &how, &e);
    if (e) {
        g_propagate_error(err, e);
        return NULL;
    }
    if (!snap)
        return g_strdup(path);
    *note = g_strdup_printf("'%s' is a Hugging Face hub cache folder: using %s", path, how);
    g_free(how);
    return snap;
}

static ckpt *open_path(const char *path, GError **err);

ckpt *ckpt_open(const char *path, GError **err)
{
    char *note, *real = ckpt_resolve(path, &note, err);
    ckpt *ck = real ? open_path(real, err) : NULL;
    if (ck)
        ck->resolved = note;
    else
        g_free(note);
    g_free(real);
    return ck;
}

/* Shards from which a checkpoint holds its directory open (fs_dir). */
#define CKPT_DIR_MIN 64

static ckpt *open_path(const char *path, GError **err)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        qm_set_errno(err, errno, "cannot open checkpoint", path);
        return NULL;
    }
    ckpt *ck = g_new0(ckpt, 1);
    g_mutex_init(&ck->lock);
    int failed = 0;
    if (S_ISDIR(st.st_mode)) {
        ck->dir = g_strdup(path);
        char *index = g_build_filename(path, "model.safetensors.index.json", NULL);
        char *single = g_build_filename(path, "model.safetensors", NULL);
        char *cfg = g_build_filename(path, "config.json", NULL);
        int have_index = present(index);
        int have_single = present(single);
        if (!have_index && !have_single) {
            g_set_error(err, QM_ERROR, QM_ERR_IO,
                        "cannot open checkpoint '%s': no model.safetensors.index.json "
                        "or model.safetensors", path);
            failed = 1;
        } else if (have_index && !present(cfg)) {
            g_set_error(err, QM_ERROR, QM_ERR_IO,
                        "cannot open checkpoint '%s': no config.json", path);
            failed = 1;
        }
        if (!failed)
            ck->config = load_optional_json(path, "config.json", err, &failed);
        if (!failed)
            ck->generation_config =
                load_optional_json(path, "generation_config.json", err, &failed);
        if (!failed)
            failed = have_index ? open_index(ck, index, err) != 0
                                : open_single(ck, single, err) != 0;
        /* an OUT's 6197 files: one walk and one listing of their
         * directories, not a stat() each (a few shards: paths do) */
        if (!failed && ck->n_shards >= CKPT_DIR_MIN)
            ck->dir_h = fs_dir_open(path);
        g_free(index);
        g_free(single);
        g_free(cfg);
    } else {
        ck->dir = g_path_get_dirname(path);
        failed = lone_shard(path, ck->dir, err) || open_single(ck, path, err) != 0;
    }
    if (!failed && ck->config) {
        if (!cJSON_IsObject(ck->config)) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "cannot use '%s/config.json': not a JSON object", ck->dir);
            failed = 1;
        } else {
            const cJSON *mt = cJSON_GetObjectItemCaseSensitive(ck->config, "model_type");
            if (cJSON_IsString(mt))
                ck->model_type = g_strdup(mt->valuestring);
        }
    }
    if (failed) {
        ckpt_close(ck);
        return NULL;
    }
    return ck;
}

int ckpt_shard_index(const ckpt *ck, const char *name)
{
    return shard_of(ck, name);
}

/* Checks that each tensor the index puts in shard i is in the file. */
static int check_shard(ckpt *ck, int i, st_file *st, GError **err)
{
    const ckpt_shard *s = &ck->shards[i];
    for (int k = 0; k < s->n_names; k++) {
        ck->name_checks++;
        if (!st_find(st, s->names[k])) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "checkpoint '%s': tensor '%s' is not in '%s' as the index "
                        "says", ck->dir, s->names[k], s->name);
            return -1;
        }
    }
    return 0;
}

/* Passes on a shard's open error; a file that is absent, or a symlink
 * whose target is missing (a hub cache still downloading or pruned:
 * snapshots/REV/FILE -> ../../blobs/HASH), is marked missing and said so,
 * naming the target, not just the link. */
static void explain_missing(ckpt_shard *s, GError *e, GError **err)
{
    struct stat ls, ts;
    char *target = NULL;
    if (lstat(s->path, &ls) != 0 && errno == ENOENT) {
        g_free(s->missing);
        s->missing = g_strdup(g_strerror(ENOENT));
        g_propagate_error(err, e);
    } else if (S_ISLNK(ls.st_mode) && stat(s->path, &ts) != 0 && errno == ENOENT &&
               (target = g_file_read_link(s->path, NULL))) {
        g_free(s->missing);
        s->missing = g_strdup_printf("a symlink to '%s', which does not exist", target);
        g_set_error(err, QM_ERROR, QM_ERR_IO,
                    "cannot open shard '%s': it is a symlink to '%s', which does not "
                    "exist (an incomplete download?)", s->path, target);
        g_error_free(e);
    } else {
        g_propagate_error(err, e);
    }
    g_free(target);
}

/* The file read (st) against what shard s was described as: an error
 * naming the file and the first difference. */
static int same_as_described(const ckpt *ck, const ckpt_shard *s, const st_file *said,
                             const st_file *st, GError **err)
{
    char *diff = st_header_diff(said, st, ck->described_by);
    if (diff)
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "cannot read '%s': the file changed after %s was written: %s",
                    s->path, ck->described_by, diff);
    g_free(diff);
    return diff ? -1 : 0;
}

st_file *ckpt_shard_load(ckpt *ck, int i, int map, GError **err)
{
    g_mutex_lock(&ck->lock);
    ckpt_shard *s = &ck->shards[i];
    if (!s->st && s->desc && !map) { /* described: no read */
        s->st = s->desc;
        s->desc = NULL;
        s->described = 1;
    }
    st_file *st = s->st;
    if (!st || (map && !s->mapped)) {
        GError *e = NULL;
        st = map ? st_open_at(ck->dir_h, s->name, s->path, &e)
                 : st_open_header_at(ck->dir_h, s->name, s->path, &e);
        if (!st)
            explain_missing(s, e, err);
        else
            g_clear_pointer(&s->missing, g_free); /* it arrived */
        /* a description (checked against the index) must be what the
         * file holds; a header read is checked against the index once */
        const st_file *said = s->described ? s->st : s->desc;
        if (st && (said ? same_as_described(ck, s, said, st, err)
                        : !s->st ? check_shard(ck, i, st, err) : 0) != 0) {
            st_close(st);
            st = NULL;
        }
        if (st) {
            if (s->st)
                s->retired = s->st;
            s->st = st;
            s->mapped = map;
            s->described = 0;
            g_clear_pointer(&s->desc, st_close);
        }
    }
    g_mutex_unlock(&ck->lock);
    return st;
}

int ckpt_shard_describe(ckpt *ck, int i, st_file *st, const char *by, GError **err)
{
    g_mutex_lock(&ck->lock);
    ckpt_shard *s = &ck->shards[i];
    int rc = -1;
    if (s->st || s->desc)
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "checkpoint '%s': '%s' is read already, not to be described", ck->dir,
                    s->name);
    else if (check_shard(ck, i, st, err) == 0) {
        s->desc = st;
        st = NULL;
        if (!ck->described_by)
            ck->described_by = g_strdup(by);
        rc = 0;
    }
    g_mutex_unlock(&ck->lock);
    st_close(st);
    return rc;
}

int ckpt_shard_confirm(ckpt *ck, int i, GError **err)
{
    g_mutex_lock(&ck->lock);
    ckpt_shard *s = &ck->shards[i];
    int rc = 0;
    st_file *said = s->described ? s->st : s->desc;
    if (said) {
        GError *e = NULL;
        st_file *st = st_open_header_at(ck->dir_h, s->name, s->path, &e);
        if (!st) {
            explain_missing(s, e, err);
            rc = -1;
        } else {
            rc = same_as_described(ck, s, said, st, err);
            if (rc == 0)
                said->dev = st->dev;
            if (rc == 0 && s->described)
                s->described = 0;
            st_close(st);
        }
    }
    g_mutex_unlock(&ck->lock);
    return rc;
}

st_file *ckpt_shard_need(ckpt *ck, int i, GError **err)
{
    st_file *st = ckpt_shard_load(ck, i, 0, err);
    if (!st || ck->shards[i].checked)
        return st;
    for (int k = 0; k < st->n_tensors; k++) {
        if (ckpt_shard_index(ck, st->tensors[k].name) != i) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "checkpoint '%s': tensor '%s' in '%s' is not in the "
                        "index there", ck->dir, st->tensors[k].name,
                        ck->shards[i].name);
            return NULL;
        }
    }
    ck->shards[i].checked = 1;
    return st;
}

int ckpt_load_all(ckpt *ck, GError **err)
{
    for (int i = 0; i < ck->n_shards; i++)
        if (!ckpt_shard_need(ck, i, err))
            return -1;
    return 0;
}

const st_tensor *ckpt_tensor(ckpt *ck, const char *name, int map,
                             const uint8_t **data, GError **err)
{
    int i = ckpt_shard_index(ck, name);
    if (i < 0) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "checkpoint '%s' has no tensor '%s'", ck->dir, name);
        return NULL;
    }
    st_file *st = ckpt_shard_load(ck, i, map, err);
    if (!st)
        return NULL;
    const st_tensor *t = st_find(st, name);
    if (data)
        *data = map ? st_data(st, t) : NULL;
    return t;
}

const cJSON *ckpt_text_config(const ckpt *ck)
{
    if (!ck->config)
        return NULL;
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(ck->config, "thinker_config");
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(th ? th : ck->config,
                                                       "text_config");
    return cJSON_IsObject(tc) ? tc : ck->config;
}

uint64_t ckpt_loaded_bytes(ckpt *ck)
{
    uint64_t sum = 0;
    g_mutex_lock(&ck->lock);
    for (int i = 0; i < ck->n_shards; i++)
        if (ck->shards[i].st)
            sum += ck->shards[i].st->size;
    g_mutex_unlock(&ck->lock);
    return sum;
}
