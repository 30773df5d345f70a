/* stmutate - damage an extraction consistently (a test tool for qmoe-verify).
 *
 *   stmutate reshape FILE TENSOR D0,D1,...   rewrite FILE with TENSOR's shape
 *                                            changed (same byte count)
 *   stmutate setdata FILE TENSOR FROM FROMT  rewrite FILE with TENSOR's bytes
 *                                            taken from FROM's tensor FROMT
 *   stmutate remanifest OUT REL              refresh OUT/qmoe.json's record of
 *                                            OUT/REL (size, sha256, tensors,
 *                                            crc32) from the file as it is
 *
 * Together they make files that agree with their header and manifest but
 * not with the config (reshape) or the source (setdata): damage that only
 * the config and --source checks can see. Exit 0, or 1 with a message.
 */
#include "outdir/manifest.h"
#include "format/safetensors.h"
#include "base/util.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static int die(GError *e, const char *msg)
{
    fprintf(stderr, "stmutate: %s\n", e ? e->message : msg);
    return 1;
}

/* Rewrites f with tensor `name` given a new shape and/or new bytes. */
static int rewrite(st_file *f, const char *path, const char *name,
                   const int64_t *shape, int ndim, const uint8_t *bytes)
{
    st_entry *e = g_new0(st_entry, f->n_tensors);
    const void **data = g_new0(const void *, f->n_tensors);
    int found = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        e[i].name = t->name;
        e[i].dtype = t->dtype;
        e[i].ndim = t->ndim;
        memcpy(e[i].shape, t->shape, sizeof t->shape);
        e[i].nbytes = t->end - t->begin;
        data[i] = st_data(f, t);
        if (strcmp(t->name, name) == 0) {
            found = 1;
            if (shape) {
                e[i].ndim = ndim;
                memcpy(e[i].shape, shape, sizeof(int64_t) * (size_t)ndim);
            }
            if (bytes)
                data[i] = bytes;
        }
    }
    GError *err = NULL;
    int rc = found ? st_write_file(path, e, f->n_tensors, data, NULL, &err) : -1;
    if (!found)
        fprintf(stderr, "stmutate: no tensor '%s' in '%s'\n", name, path);
    else if (rc)
        die(err, NULL);
    g_free(e);
    g_free(data);
    return rc ? 1 : 0;
}

static int remanifest(const char *out, const char *rel)
{
    GError *err = NULL;
    char *mpath = g_build_filename(out, "qmoe.json", NULL);
    char *fpath = g_build_filename(out, rel, NULL);
    manifest *m = manifest_load(mpath, &err);
    if (!m)
        return die(err, NULL);
    mf_file *rec = (mf_file *)manifest_find(m, rel);
    st_file *f = st_open(fpath, &err);
    if (!rec || !f)
        return die(err, "no record of that file");
    unsigned char md[32];
    unsigned len = 0;
    EVP_Digest(f->base, f->size, md, &len, EVP_sha256(), NULL);
    qm_hex(md, 32, rec->sha256);
    rec->size = f->size;
    for (int k = 0; k < rec->n_tensors; k++) {
        mf_tensor *mt = &rec->tensors[k];
        const st_tensor *t = st_find(f, mt->name);
        if (!t)
            return die(NULL, "record names a tensor the file lacks");
        mt->dtype = t->dtype;
        mt->ndim = t->ndim;
        memcpy(mt->shape, t->shape, sizeof t->shape);
        mt->begin = t->begin;
        mt->end = t->end;
        mt->crc32 = (uint32_t)crc32_z(0L, st_data(f, t), (size_t)(t->end - t->begin));
    }
    int rc = manifest_save(m, mpath, &err) ? die(err, NULL) : 0;
    st_close(f);
    manifest_free(m);
    g_free(mpath);
    g_free(fpath);
    return rc;
}

int main(int argc, char **argv)
{
    GError *err = NULL;
    if (argc == 4 && strcmp(argv[1], "remanifest") == 0)
        return remanifest(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "reshape") == 0) {
        int64_t shape[ST_MAX_DIMS];
        int nd = 0;
        gchar **dims = g_strsplit(argv[4], ",", -1);
        for (int i = 0; dims[i] && nd < ST_MAX_DIMS; i++)
            shape[nd++] = g_ascii_strtoll(dims[i], NULL, 10);
        g_strfreev(dims);
        st_file *f = st_open(argv[2], &err);
        if (!f)
            return die(err, NULL);
        int rc = rewrite(f, argv[2], argv[3], shape, nd, NULL);
        st_close(f);
        return rc;
    }
    if (argc == 6 && strcmp(argv[1], "setdata") == 0) {
        st_file *f = st_open(argv[2], &err), *g = f ? st_open(argv[4], &err) : NULL;
        if (!f || !g)
            return die(err, NULL);
        const st_tensor *a = st_find(f, argv[3]), *b = st_find(g, argv[5]);
        if (!a || !b || a->end - a->begin != b->end - b->begin)
            return die(NULL, "tensors missing or of different byte sizes");
        /* copy: the rewrite replaces the file that f maps */
        uint8_t *bytes = g_memdup2(st_data(g, b), b->end - b->begin);
        int rc = rewrite(f, argv[2], argv[3], NULL, 0, bytes);
        g_free(bytes);
        st_close(f);
        st_close(g);
        return rc;
    }
    fprintf(stderr, "usage: stmutate reshape FILE TENSOR D0,D1 | setdata FILE TENSOR "
                    "FROM FROMTENSOR | remanifest OUT REL\n");
    return 2;
}
