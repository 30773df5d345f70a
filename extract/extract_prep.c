/* extract_prep.c - see extract_prep.h */
#include "extract_prep.h"

#include "base/fs.h"
#include "base/util.h"
#include "extract_copy.h"
#include "outdir/manifest.h"
#include "outdir/outdir.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>

int ex_run_length(const plan_file *f, int i)
{
    int k = i + 1;
    while (k < f->n && f->t[k].shard == f->t[i].shard &&
           f->t[k].src_offset == f->t[k - 1].src_offset + f->t[k - 1].nbytes)
        k++;
    return k - i;
}

char *ex_gap_one_line(char *gap)
{
    char **lines = g_strsplit(gap, "\n", -1);
    char *one = g_strjoinv("; ", lines);
    g_strfreev(lines);
    g_free(gap);
    return one;
}

int ex_other_blocked(const plan *p)
{
    for (int i = 0; i < p->n_blocked; i++)
        if (p->blocked[i].kind == MF_OTHER)
            return 1;
    return 0;
}

ckpt *ex_open_and_plan(const ex_opts *o, const layout **lt, plan **p, int dry,
                       GError **err)
{
    ckpt *ck = ckpt_open(o->src, err);
    if (!ck)
        return NULL;
    /* an OUT as the source: its headers from qmoe.json, not 6197 reads */
    mf_ckpt_describe(ck);
    if (ck->resolved)
        fprintf(stderr, "qmoe-extract: %s\n", ck->resolved);
    if (o->layout) {
        *lt = layout_find(o->layout);
        if (!*lt) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "unknown layout '%s' (known layouts: %s)", o->layout,
                        layout_names());
            ckpt_close(ck);
            return NULL;
        }
    } else if (!(*lt = layout_detect(ck, err))) {
        ckpt_close(ck);
        return NULL;
    }
    *p = plan_build_sel(ck, *lt, o->layers, o->experts, o->no_other, err);
    if (!*p) {
        ckpt_close(ck);
        return NULL;
    }
    int n_gap = 0;
    char *gap = od_plan_gap(*p, &n_gap);
    if (gap && !o->allow_missing) {
        gap = ex_gap_one_line(gap);
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s' lacks %d expert%s its config declares: %s; nothing written "
                    "(--allow-missing extracts the rest and records the gap)",
                    o->src, n_gap, n_gap == 1 ? "" : "s", gap);
        g_free(gap);
        plan_free(*p);
        *p = NULL;
        ckpt_close(ck);
        return NULL;
    }
    g_free(gap);
    char *ok = NULL, *blocked = dry ? NULL : od_plan_blocked(*p, ck, 1, &ok);
    if (blocked) {
        char *hint = ok ? g_strdup_printf(" (--layers %s%s extracts what the present "
                                          "shards hold)", ok,
                                          ex_other_blocked(*p) ? " --no-other" : "")
                        : g_strdup("");
        g_set_error(err, QM_ERROR, QM_ERR_IO,
                    "'%s': %d file%s of the selection need%s source shards that are "
                    "missing (an incomplete download?): %s; nothing written%s",
                    o->src, (*p)->n_blocked, (*p)->n_blocked == 1 ? "" : "s",
                    (*p)->n_blocked == 1 ? "s" : "", blocked, hint);
        g_free(hint);
        g_free(blocked);
        g_free(ok);
        plan_free(*p);
        *p = NULL;
        ckpt_close(ck);
        return NULL;
    }
    g_free(ok);
    if (o->shards > 1)
        plan_partition(*p, o->shards);
    return ck;
}

void ex_space_count(ex_space *sc, const plan *p, const int *todo, int n_todo,
                    const uint64_t *src_bs)
{
    sc->to_write = sc->shared = 0;
    uint64_t headers = 0;
    for (int k = 0; k < n_todo; k++) {
        const plan_file *f = &p->files[todo[k]];
        sc->to_write += f->bytes;
        headers += SPACE_HEADER_BYTES;
        for (int i = 0; src_bs && i < f->n; i += ex_run_length(f, i)) {
            uint64_t bs = src_bs[f->t[i].shard];
            if (!bs)
                continue;
            const plan_tensor *last = &f->t[i + ex_run_length(f, i) - 1];
            uint64_t a = (f->t[i].src_offset + bs - 1) / bs,
                     b = (last->src_offset + last->nbytes) / bs;
            if (b > a)
                sc->shared += (b - a) * bs;
        }
    }
    sc->needed = sc->to_write + headers - sc->shared;
}

int ex_space_free(ex_space *sc, const char *out, GError **err)
{
    char *dir = g_strdup(out);
    struct stat st;
    while (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        char *up = g_path_get_dirname(dir);
        int top = strcmp(up, dir) == 0;
        g_free(dir);
        dir = up;
        if (top)
            break;
    }
    struct statvfs vs;
    if (statvfs(dir, &vs) != 0) {
        int rc = qm_set_errno(err, errno, "cannot get the free space of", dir);
        g_free(dir);
        return rc;
    }
    sc->avail = (uint64_t)vs.f_bavail * (uint64_t)vs.f_frsize;
    const char *hook = getenv("QMOE_TEST_FREE_BYTES");
    if (hook && *hook) {
        sc->avail = g_ascii_strtoull(hook, NULL, 10);
        sc->simulated = 1;
    }
    /* the mount point: the highest ancestor on the same device */
    char *real = realpath(dir, NULL);
    char *m = g_strdup(real ? real : dir);
    free(real);
    dev_t dev = stat(m, &st) == 0 ? st.st_dev : 0;
    for (;;) {
        char *up = g_path_get_dirname(m);
        struct stat su;
        if (strcmp(up, m) == 0 || stat(up, &su) != 0 || su.st_dev != dev) {
            g_free(up);
            break;
        }
        g_free(m);
        m = up;
    }
    sc->where = m;
    sc->dir = dir;
    return 0;
}

char *ex_space_text(const ex_space *sc)
{
    char a[32], b[32];
    return g_strdup_printf("needs %s, %s available on %s%s",
                           qm_human_bytes(sc->needed, a, sizeof a),
                           qm_human_bytes(sc->avail, b, sizeof b), sc->where,
                           sc->simulated ? " (QMOE_TEST_FREE_BYTES)" : "");
}

/* The probe needs a source of at least one block; 1 MiB is more than any
 * block size ec_probe accepts. */
#define PROBE_MIN_SOURCE (1u << 20)

int ex_open_sources(ckpt *ck, int *src_fd, uint64_t *src_bs, int no_reflink,
                    const char *probe_path, GError **err)
{
    int n_shared = 0;
    /* the answer per source filesystem, from its first shard long enough */
    GHashTable *by_dev = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, g_free);
    for (int i = 0; i < ck->n_shards; i++) {
        if (!ck->shards[i].st)
            continue; /* the plan reads nothing from it */
        /* its data is read at offsets from the header: the file's own */
        if (ckpt_shard_confirm(ck, i, err)) {
            g_hash_table_destroy(by_dev);
            return -1;
        }
        src_fd[i] = fs_open_regular(ck->shards[i].path, O_RDONLY, "cannot open source", err);
        if (src_fd[i] < 0) {
            g_hash_table_destroy(by_dev);
            return -1;
        }
        posix_fadvise(src_fd[i], 0, 0, POSIX_FADV_SEQUENTIAL);
        if (no_reflink || !probe_path)
            continue;
        struct stat st;
        int known = fstat(src_fd[i], &st) == 0 && st.st_size >= PROBE_MIN_SOURCE;
        gint64 dev = known ? (gint64)st.st_dev : 0;
        const uint64_t *seen = known ? g_hash_table_lookup(by_dev, &dev) : NULL;
        if (seen) {
            src_bs[i] = *seen;
        } else {
            src_bs[i] = ec_probe(src_fd[i], probe_path);
            if (known)
                g_hash_table_insert(by_dev, g_memdup2(&dev, sizeof dev),
                                    g_memdup2(&src_bs[i], sizeof src_bs[i]));
        }
        n_shared += src_bs[i] != 0;
    }
    g_hash_table_destroy(by_dev);
    return n_shared;
}

const char *ex_reflink_name(ex_reflink r)
{
    return r == EX_REFLINK_YES ? "yes" : r == EX_REFLINK_NO ? "no" : "unknown";
}

#ifndef BCACHEFS_SUPER_MAGIC
#define BCACHEFS_SUPER_MAGIC 0xca451a4e
#endif
#ifndef OCFS2_SUPER_MAGIC
#define OCFS2_SUPER_MAGIC 0x7461636f
#endif

/* Filesystems on which FICLONERANGE may work, depending on how they were
 * made or mounted (XFS reflink=1) or on the server. */
static int may_share(long type)
{
    return type == XFS_SUPER_MAGIC || type == (long)BCACHEFS_SUPER_MAGIC ||
           type == OCFS2_SUPER_MAGIC || type == NFS_SUPER_MAGIC;
}

ex_reflink ex_reflink_guess(const ckpt *ck, uint64_t *src_bs, const char *out_dir)
{
    struct stat ost;
    struct statfs ofs, sfs;
    struct statvfs ovs;
    ex_reflink worst = EX_REFLINK_NO;
    int have_out = stat(out_dir, &ost) == 0 && statfs(out_dir, &ofs) == 0 &&
                   statvfs(out_dir, &ovs) == 0;
    dev_t last_dev = 0;
    int have_sfs = 0; /* sfs is last_dev's (shards of one checkpoint share one) */
    for (int i = 0; i < ck->n_shards; i++) {
        src_bs[i] = 0;
        if (!ck->shards[i].st)
            continue; /* the plan reads nothing from it */
        ex_reflink r;
        /* the device its open saw (safetensors.h): no stat per shard */
        dev_t sdev = (dev_t)ck->shards[i].st->dev;
        if (!have_out) {
            r = EX_REFLINK_UNKNOWN;
        } else if (sdev == ost.st_dev) {
            r = ofs.f_type == BTRFS_SUPER_MAGIC ? EX_REFLINK_YES
                : may_share(ofs.f_type)         ? EX_REFLINK_UNKNOWN
                                                : EX_REFLINK_NO;
        } else {
            if (!have_sfs || sdev != last_dev) {
                have_sfs = statfs(ck->shards[i].path, &sfs) == 0;
                last_dev = sdev;
            }
            /* extents are not shared across filesystems, but two
             * subvolumes of one btrfs have two st_dev */
            r = !have_sfs ? EX_REFLINK_UNKNOWN
                : sfs.f_type == BTRFS_SUPER_MAGIC && ofs.f_type == BTRFS_SUPER_MAGIC
                    ? EX_REFLINK_UNKNOWN
                    : EX_REFLINK_NO;
        }
        if (r == EX_REFLINK_YES) {
            /* as ec_probe: the filesystem block, odd answers distrusted */
            uint64_t bs = (uint64_t)ovs.f_bsize;
            src_bs[i] = bs < 512 || bs > (1u << 20) || (bs & (bs - 1)) ? 4096 : bs;
            if (worst == EX_REFLINK_NO)
                worst = EX_REFLINK_YES;
        } else if (r == EX_REFLINK_UNKNOWN) {
            worst = EX_REFLINK_UNKNOWN;
        }
    }
    return worst;
}

void ex_space_clear(ex_space *sc)
{
    g_free(sc->where);
    g_free(sc->dir);
    sc->where = sc->dir = NULL;
}
