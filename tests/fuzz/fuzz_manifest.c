/* fuzz_manifest - libFuzzer target for the journal and qmoe.json readers.
 *
 * The readers take paths, so the input is written to a temporary file
 * (in /dev/shm when there is one) and read back as a journal
 * (mf_journal_read, which must ignore a torn last line and reject any other
 * bad one) and as a manifest (manifest_load). Accepted records are turned
 * back into JSON and looked up, so the writer sees what the reader let in.
 */
#include "outdir/manifest.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *dir, *jpath, *mpath;

static void setup(void)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : g_get_tmp_dir();
    char *tmpl = g_build_filename(base, "qmoe-fuzz-mf.XXXXXX", NULL);
    dir = g_mkdtemp(tmpl);
    if (!dir)
        abort();
    jpath = g_build_filename(dir, "journal.jsonl", NULL);
    mpath = g_build_filename(dir, "qmoe.json", NULL);
}

static void put(const char *path, const uint8_t *data, size_t size)
{
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(data, 1, size, fp) != size || fclose(fp) != 0)
        abort();
}

static void rewrite(const mf_file *f)
{
    cJSON *j = mf_file_to_json(f);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_free(s);
    cJSON_Delete(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir)
        setup();
    GError *err = NULL;

    put(jpath, data, size);
    GArray *files = g_array_new(FALSE, TRUE, sizeof(mf_file));
    if (mf_journal_read(jpath, files, &err) == 0) {
        mf_files_sort_unique(files);
        for (guint i = 0; i < files->len; i++)
            rewrite(&g_array_index(files, mf_file, i));
    } else {
        if (!err)
            abort();
        g_clear_error(&err);
    }
    mf_files_free(files);

    put(mpath, data, size);
    manifest *m = manifest_load(mpath, &err);
    if (m) {
        for (int i = 0; i < m->n_files; i++) {
            rewrite(&m->files[i]);
            if (m->files[i].path && !manifest_find(m, m->files[i].path))
                abort(); /* files must come back sorted and findable */
        }
        manifest_free(m);
    } else {
        if (!err)
            abort();
        g_clear_error(&err);
    }
    return 0;
}
