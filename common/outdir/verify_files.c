/* verify_files.c - see verify.h: per-file checks (headers, shapes, hashes,
 * bytes against the source), run by a pool of threads. */
#include "outdir/verify.h"
#include "base/crc32.h"
#include "outdir/view.h"
#include "base/fs.h"
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    vf_result *res;       /* this file's problems, merged in path order later */
    int dtype[3];         /* expert projections' dtypes, -1 unknown */
    uint64_t bytes;
} file_out;

typedef struct {
    vf_target *t;
    int quick;
    vf_file **files;
    file_out *outs;
    int n;
    int *order;           /* files in the order the workers take them */
    gint next;
    uint64_t *expect;     /* per file: the bytes it is expected to read */
    uint64_t bytes_done;  /* atomic: read so far, plus what finished files
                             did not read of their share (progress) */
    gint files_done, workers_done; /* atomic */
} pool;

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* "invalid header of 'x': why" -> "invalid header: why" (the file is
 * named by the problem itself). */
static const char *strip_label(const char *msg, const char *label, char *buf,
                               size_t cap)
{
    char *pre = g_strdup_printf("invalid header of '%s': ", label);
    const char *out = msg;
    if (g_str_has_prefix(msg, pre)) {
        snprintf(buf, cap, "invalid header: %s", msg + strlen(pre));
        out = buf;
    }
    g_free(pre);
    return out;
}

/* Parses the header of an open file, as if the file had `parse_size`
 * bytes (the recorded size when the file is truncated, so that the header
 * still tells which tensors were cut). */
static st_file *read_header(int fd, const char *label, uint64_t size,
                            uint64_t parse_size, GError **err)
{
    uint8_t lb[8];
    if (size < 8 || fs_pread_full(fd, lb, 8, 0) != 0)
        return st_parse_header(label, lb, 0, parse_size, err);
    uint64_t n = le64(lb);
    if (n > ST_MAX_HEADER || n > size - 8)
        return st_parse_header(label, lb, 8, parse_size, err);
    uint8_t *buf = g_malloc(8 + n);
    memcpy(buf, lb, 8);
    st_file *h = NULL;
    if (fs_pread_full(fd, buf + 8, n, 8) != 0)
        qm_set_errno(err, errno, "cannot read header of", label);
    else
        h = st_parse_header(label, buf, 8 + n, parse_size, err);
    g_free(buf);
    return h;
}

static int same_shape(const int64_t *a, int na, const int64_t *b, int nb)
{
    if (na != nb)
        return 0;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

static void header_vs_record(const vf_file *f, const st_file *h, vf_result *res)
{
    const mf_file *rec = f->rec;
    char s1[128], s2[128];
    GHashTable *rt = g_hash_table_new(g_str_hash, g_str_equal);
    for (int k = 0; k < rec->n_tensors; k++)
        g_hash_table_insert(rt, rec->tensors[k].name, &rec->tensors[k]);
    for (int i = 0; i < h->n_tensors; i++) {
        const st_tensor *ht = &h->tensors[i];
        const mf_tensor *mt = g_hash_table_lookup(rt, ht->name);
        if (!mt) {
            vf_add(res, VF_HEADER, "header", f->path, ht->name, -1,
                   "in the header but not in the manifest record");
            continue;
        }
        g_hash_table_remove(rt, ht->name);
        if (mt->dtype != ht->dtype)
            vf_add(res, VF_HEADER, "header", f->path, ht->name, -1,
                   "dtype %s, the manifest says %s", st_dtype_name(ht->dtype),
                   st_dtype_name(mt->dtype));
        else if (!same_shape(ht->shape, ht->ndim, mt->shape, mt->ndim))
            vf_add(res, VF_HEADER, "header", f->path, ht->name, -1,
                   "shape %s, the manifest says %s",
                   st_shape_str(ht->shape, ht->ndim, s1, sizeof s1),
                   st_shape_str(mt->shape, mt->ndim, s2, sizeof s2));
        else if (mt->begin != ht->begin || mt->end != ht->end)
            vf_add(res, VF_HEADER, "header", f->path, ht->name, -1,
                   "data_offsets [%llu, %llu], the manifest says [%llu, %llu]",
                   (unsigned long long)ht->begin, (unsigned long long)ht->end,
                   (unsigned long long)mt->begin, (unsigned long long)mt->end);
    }
    GHashTableIter it;
    gpointer k;
    g_hash_table_iter_init(&it, rt);
    while (g_hash_table_iter_next(&it, &k, NULL))
        vf_add(res, VF_HEADER, "header", f->path, k, -1,
               "in the manifest record but not in the header");
    g_hash_table_destroy(rt);
}

/* Name of projection k of expert e in layer l as the layout writes it. */
static char *proj_name(const layout *lt, int l, int e, int k)
{
    char *base = g_strdup_printf("%slayers.%d.%s", lt->root, l, lt->experts);
    char *name;
    if (lt->fused) {
        char *stack = g_strdup_printf("%s%s", base, lt->proj[k]);
        name = layout_fused_slice_name(lt, stack, e);
        g_free(stack);
    } else {
        name = g_strdup_printf("%s%d.%s.weight", base, e, lt->proj[k]);
    }
    g_free(base);
    return name;
}

/* Names, dtypes and shapes that the config implies for the file. */
static void check_against_config(const vf_target *t, const vf_file *f,
                                 const st_file *h, file_out *o)
{
    const layout *lt = t->lt;
    const lt_shape *s = &t->shape;
    char s1[128], s2[128];
    lt_class c;
    if (f->kind == MF_EXPERT && f->layer >= 0) {
        int64_t H = s->hidden, I = s->inter;
        for (int k = 0; k < 3; k++) {
            if (k == LT_UP && lt->fused)
                continue; /* gate and up share one stacked tensor */
            char *name = proj_name(lt, f->layer, f->expert, k);
            const st_tensor *ht = st_find(h, name);
            int64_t want[2] = {k == LT_DOWN ? H : (lt->fused ? 2 * I : I),
                               k == LT_DOWN ? I : H};
            if (!ht) {
                vf_add(o->res, VF_SHAPE, "shape", f->path, name, -1,
                       "missing: layer %d expert %d needs its %s", f->layer,
                       f->expert, lt->proj[k]);
            } else {
                o->dtype[k] = (int)ht->dtype;
                if (!same_shape(ht->shape, ht->ndim, want, 2))
                    vf_add(o->res, VF_SHAPE, "shape", f->path, name, -1,
                           "shape %s, config.json implies %s (%s %lld, hidden_size "
                           "%lld)", st_shape_str(ht->shape, ht->ndim, s1, sizeof s1),
                           st_shape_str(want, 2, s2, sizeof s2), lt->inter_key,
                           (long long)I, (long long)H);
            }
            g_free(name);
        }
        for (int i = 0; i < h->n_tensors; i++) {
            layout_classify(lt, h->tensors[i].name, &c);
            if (c.kind != LT_EXPERT || c.layer != f->layer || c.expert != f->expert)
                vf_add(o->res, VF_SHAPE, "shape", f->path, h->tensors[i].name, -1,
                       "does not belong to layer %d expert %d", f->layer, f->expert);
        }
    } else if (f->kind == MF_LAYER && f->layer >= 0) {
        for (int i = 0; i < h->n_tensors; i++) {
            layout_classify(lt, h->tensors[i].name, &c);
            if (c.kind != LT_LAYER || c.layer != f->layer)
                vf_add(o->res, VF_SHAPE, "shape", f->path, h->tensors[i].name, -1,
                       "does not belong to layer %d", f->layer);
        }
        /* the router scores every expert: [num_experts, hidden_size] */
        if (f->layer < s->n_layers && s->is_moe[f->layer]) {
            size_t el = strlen(lt->experts);
            const char *tail = el >= 8 && strcmp(lt->experts + el - 8, "experts.") == 0
                                   ? "gate.weight" : NULL;
            if (tail) {
                char *name = g_strdup_printf("%slayers.%d.%.*s%s", lt->root, f->layer,
                                             (int)(el - 8), lt->experts, tail);
                const st_tensor *ht = st_find(h, name);
                int64_t want[2] = {s->n_experts, s->hidden};
                if (ht && !same_shape(ht->shape, ht->ndim, want, 2))
                    vf_add(o->res, VF_SHAPE, "shape", f->path, name, -1,
                           "router shape %s, config.json implies %s",
                           st_shape_str(ht->shape, ht->ndim, s1, sizeof s1),
                           st_shape_str(want, 2, s2, sizeof s2));
                g_free(name);
            }
        }
    }
}

/* A tensor whose bytes are compared with the source while the file is read. */
typedef struct {
    uint64_t b, e;            /* range in the output file */
    const uint8_t *src;       /* its bytes in the mapped source */
    const plan_tensor *pt;
    int64_t diff;             /* offset in the file of the first difference */
} src_cmp;

static int cmp_src(const void *a, const void *b)
{
    const src_cmp *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b;
}

static GArray *source_plan(vf_target *t, const vf_file *f, const st_file *h,
                           int quick, file_out *o)
{
    const plan_file *pf = f->src;
    GArray *c = g_array_new(FALSE, FALSE, sizeof(src_cmp));
    char s1[128], s2[128];
    GHashTable *in_plan = g_hash_table_new(g_str_hash, g_str_equal);
    for (int k = 0; k < pf->n; k++) {
        const plan_tensor *pt = &pf->t[k];
        const char *sname = t->src->shards[pt->shard].name;
        g_hash_table_add(in_plan, pt->name);
        const st_tensor *ht = st_find(h, pt->name);
        if (!ht) {
            vf_add(o->res, VF_SOURCE, "source", f->path, pt->name, -1,
                   "missing: the source has it ('%s' in '%s')", pt->src_name, sname);
            continue;
        }
        if (ht->dtype != pt->dtype ||
            !same_shape(ht->shape, ht->ndim, pt->shape, pt->ndim)) {
            vf_add(o->res, VF_SOURCE, "source", f->path, pt->name, -1,
                   "%s %s, the source's '%s' is %s %s", st_dtype_name(ht->dtype),
                   st_shape_str(ht->shape, ht->ndim, s1, sizeof s1), pt->src_name,
                   st_dtype_name(pt->dtype),
                   st_shape_str(pt->shape, pt->ndim, s2, sizeof s2));
            continue;
        }
        if (quick)
            continue; /* names, dtypes and shapes only: no need to map the source */
        GError *e = NULL;
        st_file *sf = ckpt_shard_load(t->src, pt->shard, 1, &e);
        if (!sf) {
            vf_add(o->res, VF_IO, "source", f->path, pt->name, -1, "%s", e->message);
            g_clear_error(&e);
            continue;
        }
        src_cmp x = {.b = h->data_start + ht->begin, .e = h->data_start + ht->end,
                     .src = sf->base + pt->src_offset, .pt = pt, .diff = -1};
        g_array_append_val(c, x);
    }
    for (int i = 0; i < h->n_tensors; i++)
        if (!g_hash_table_contains(in_plan, h->tensors[i].name))
            vf_add(o->res, VF_SOURCE, "source", f->path, h->tensors[i].name, -1,
                   "not in the source checkpoint");
    g_hash_table_destroy(in_plan);
    g_array_sort(c, cmp_src);
    return c;
}

/* The source is mapped; each byte is compared once, so its pages are
 * released behind the comparison (whole pages inside the range only).
 * Without it the mapped source stays resident: 10 GB for the real Omni
 * checkpoint, counted against a Slurm job's memory. Other threads that
 * share the mapping fault the pages back in from the file if they need them. */
static void drop_pages(const uint8_t *p, size_t n)
{
    static long page;
    if (!page)
        page = sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t hi = ((uintptr_t)p + n) & ~((uintptr_t)page - 1);
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* Compares the part of each tensor that lies in buf = file[pos, pos+n). */
static void compare_chunk(GArray *c, guint *cur, const uint8_t *buf, uint64_t pos,
                          size_t n)
{
    uint64_t end = pos + n;
    while (*cur < c->len && g_array_index(c, src_cmp, *cur).e <= pos)
        (*cur)++;
    for (guint j = *cur; j < c->len; j++) {
        src_cmp *x = &g_array_index(c, src_cmp, j);
        if (x->b >= end)
            break;
        if (x->diff >= 0)
            continue;
        uint64_t lo = x->b > pos ? x->b : pos, hi = x->e < end ? x->e : end;
        const uint8_t *a = buf + (lo - pos), *b = x->src + (lo - x->b);
        if (hi > lo && memcmp(a, b, hi - lo) != 0) {
            uint64_t i = 0;
            while (a[i] == b[i])
                i++;
            x->diff = (int64_t)(lo + i);
        }
        if (hi > lo)
            drop_pages(b, hi - lo);
    }
}

/* After a hash mismatch: which tensors do not match their recorded CRC-32. */
static void locate_damage(const vf_file *f, int fd, uint64_t size, uint8_t *buf,
                          const char *sha, file_out *o)
{
    const mf_file *rec = f->rec;
    uint64_t last = 0;
    for (int k = 0; k < rec->n_tensors; k++)
        if (rec->tensors[k].end > last)
            last = rec->tensors[k].end;
    uint64_t ds = rec->size - last; /* from the record: the header may be the damage */
    int damaged = 0;
    for (int k = 0; k < rec->n_tensors; k++) {
        const mf_tensor *mt = &rec->tensors[k];
        uint64_t b = ds + mt->begin, e = ds + mt->end;
        if (e > size)
            continue;
        uint32_t crc = 0;
        for (uint64_t p = b; p < e;) {
            size_t n = (size_t)(e - p < VF_READ_CHUNK ? e - p : VF_READ_CHUNK);
            if (fs_pread_full(fd, buf, n, p) != 0) {
                vf_add(o->res, VF_IO, "hash", f->path, mt->name, (int64_t)p,
                       "read error: %s", g_strerror(errno));
                return;
            }
            crc = qm_crc32(crc, buf, n);
            p += n;
        }
        if (crc != mt->crc32) {
            damaged++;
            vf_add(o->res, VF_DAMAGED, "hash", f->path, mt->name, (int64_t)b,
                   "damaged: crc32 %08x, the manifest says %08x (tensor bytes "
                   "%llu-%llu of the file)", (unsigned)crc, (unsigned)mt->crc32,
                   (unsigned long long)b, (unsigned long long)e);
        }
    }
    vf_add(o->res, VF_HASH, "hash", f->path, NULL, -1,
           "sha256 %.16s... differs from the manifest's %.16s...%s", sha,
           rec->sha256, damaged ? ""
           : "; every tensor's crc32 matches, so the header bytes or the "
             "recorded hash changed");
}

static void check_one(pool *pl, int idx, uint8_t *buf, EVP_MD_CTX *ctx)
{
    vf_target *t = pl->t;
    vf_file *f = pl->files[idx];
    file_out *o = &pl->outs[idx];
    const mf_file *rec = f->rec;
    char *abs = g_build_filename(t->out, f->path, NULL);
    GError *oe = NULL;
    int fd = fs_open_regular(abs, O_RDONLY, "cannot open", &oe);
    g_free(abs);
    if (fd < 0) {
        /* the finding names f->path already: keep the reason only */
        const char *why = g_strrstr(oe->message, "': ");
        vf_add(o->res, VF_IO, "read", f->path, NULL, -1, "cannot open: %s",
               why ? why + 3 : oe->message);
        g_error_free(oe);
        return;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        vf_add(o->res, VF_IO, "read", f->path, NULL, -1, "cannot stat: %s",
               g_strerror(errno));
        close(fd);
        return;
    }
    uint64_t size = (uint64_t)st.st_size;
    int size_ok = !rec || rec->size == size;
    GError *e = NULL;
    st_file *h = read_header(fd, f->path, size, size_ok ? size : rec->size, &e);
    if (!size_ok) {
        GString *cut = g_string_new(NULL);
        int ncut = 0;
        for (int i = 0; h && i < h->n_tensors; i++)
            if (h->data_start + h->tensors[i].end > size && ncut++ < 3)
                g_string_append_printf(cut, "%s'%s'", cut->len ? ", " : "",
                                       h->tensors[i].name);
        vf_add(o->res, VF_SIZE, "size", f->path, NULL, (int64_t)size,
               "%s: %llu bytes, the manifest says %llu%s%s%s",
               size < rec->size ? "truncated" : "too long",
               (unsigned long long)size, (unsigned long long)rec->size,
               ncut ? "; cut tensors: " : "", cut->str,
               ncut > 3 ? ", ..." : "");
        g_string_free(cut, TRUE);
    }
    if (!h) {
        char mb[1024];
        if (size_ok || !g_str_has_prefix(e->message, "invalid header"))
            vf_add(o->res, e->domain == QM_ERROR && e->code == QM_ERR_IO ? VF_IO
                   : VF_HEADER, "header", f->path, NULL, -1, "%s",
                   strip_label(e->message, f->path, mb, sizeof mb));
        g_clear_error(&e);
    } else {
        if (rec)
            header_vs_record(f, h, o->res);
        if (t->have_config && t->lt)
            check_against_config(t, f, h, o);
    }
    GArray *cmp = NULL;
    if (h && f->src && size_ok)
        cmp = source_plan(t, f, h, pl->quick, o);

    if (!pl->quick && size_ok && (rec || cmp)) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
        guint cur = 0;
        int failed = 0;
        for (uint64_t pos = 0; pos < size;) {
            size_t n = (size_t)(size - pos < VF_READ_CHUNK ? size - pos : VF_READ_CHUNK);
            if (fs_pread_full(fd, buf, n, pos) != 0) {
                vf_add(o->res, VF_IO, "hash", f->path, NULL, (int64_t)pos,
                       "read error: %s", g_strerror(errno));
                failed = 1;
                break;
            }
            EVP_DigestUpdate(ctx, buf, n);
            if (cmp)
                compare_chunk(cmp, &cur, buf, pos, n);
            pos += n;
            o->bytes += n;
            __atomic_add_fetch(&pl->bytes_done, (uint64_t)n, __ATOMIC_RELAXED);
        }
        unsigned char md[32];
        unsigned mdlen = 0;
        EVP_DigestFinal_ex(ctx, md, &mdlen);
        char hex[65];
        qm_hex(md, 32, hex);
        if (!failed && rec && strcmp(hex, rec->sha256) != 0)
            locate_damage(f, fd, size, buf, hex, o);
        for (guint j = 0; !failed && cmp && j < cmp->len; j++) {
            const src_cmp *x = &g_array_index(cmp, src_cmp, j);
            if (x->diff >= 0)
                vf_add(o->res, VF_SOURCE, "source", f->path, x->pt->name, x->diff,
                       "differs from the source's '%s' in '%s' at byte %lld of the "
                       "tensor (file offset %lld)", x->pt->src_name,
                       t->src->shards[x->pt->shard].name,
                       (long long)((uint64_t)x->diff - x->b), (long long)x->diff);
        }
    }
    if (cmp)
        g_array_free(cmp, TRUE);
    st_close(h);
    close(fd);
}

static gpointer worker(gpointer data)
{
    pool *pl = data;
    uint8_t *buf = pl->quick ? NULL : g_malloc(VF_READ_CHUNK);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int i;
    int k;
    while ((k = g_atomic_int_add(&pl->next, 1)) < pl->n) {
        i = pl->order[k];
        check_one(pl, i, buf, ctx);
        /* a file read short (or not at all) still counts its share as done */
        if (pl->outs[i].bytes < pl->expect[i])
            __atomic_add_fetch(&pl->bytes_done, pl->expect[i] - pl->outs[i].bytes,
                               __ATOMIC_RELAXED);
        g_atomic_int_inc(&pl->files_done);
    }
    EVP_MD_CTX_free(ctx);
    g_free(buf);
    g_atomic_int_inc(&pl->workers_done);
    return NULL;
}

/* An expert whose projection dtype differs from what most experts use. */
static void dtype_outliers(pool *pl)
{
    for (int k = 0; k < 3; k++) {
        int count[ST_DTYPE_COUNT] = {0}, best = -1;
        for (int i = 0; i < pl->n; i++)
            if (pl->outs[i].dtype[k] >= 0)
                count[pl->outs[i].dtype[k]]++;
        for (int d = 0; d < ST_DTYPE_COUNT; d++)
            if (count[d] && (best < 0 || count[d] > count[best]))
                best = d;
        for (int i = 0; best >= 0 && i < pl->n; i++) {
            int d = pl->outs[i].dtype[k];
            if (d >= 0 && d != best) {
                const vf_file *f = pl->files[i];
                char *name = proj_name(pl->t->lt, f->layer, f->expert, k);
                vf_add(pl->outs[i].res, VF_SHAPE, "shape", f->path, name, -1,
                       "dtype %s, while %d other experts have %s",
                       st_dtype_name((st_dtype)d), count[best],
                       st_dtype_name((st_dtype)best));
                g_free(name);
            }
        }
    }
}

/* The reverse of the order the forward pass reads files in (layer by
 * layer, each layer's attention before its experts; non-layer files
 * first), ties in path order: what is read last here is what the gate
 * wants first, and a model larger than memory keeps only what was read
 * last in the page cache. */
static gint gate_last_first(gconstpointer a, gconstpointer b, gpointer user)
{
    vf_file *const *files = user;
    const vf_file *x = files[*(const int *)a], *y = files[*(const int *)b];
    int lx = x->layer < 0 ? INT_MAX : x->layer, ly = y->layer < 0 ? INT_MAX : y->layer;
    if (lx != ly)
        return lx > ly ? -1 : 1;
    int ex = x->expert >= 0, ey = y->expert >= 0;
    if (ex != ey)
        return ex ? -1 : 1;
    if (x->expert != y->expert)
        return x->expert > y->expert ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

void vf_check_files(vf_target *t, int quick, int jobs, vf_result *r)
{
    vf_check_files_progress(t, quick, jobs, r, NULL, NULL);
}

void vf_check_files_progress(vf_target *t, int quick, int jobs, vf_result *r,
                             vf_progress_fn report, void *user)
{
    double t0 = qm_monotonic();
    pool pl = {.t = t, .quick = quick};
    pl.files = g_new(vf_file *, t->files->len + 1);
    for (guint i = 0; i < t->files->len; i++) {
        vf_file *f = t->files->pdata[i];
        /* unexpected files are checked too: their header tells what they are */
        if (f->present)
            pl.files[pl.n++] = f;
    }
    pl.outs = g_new0(file_out, pl.n + 1);
    for (int i = 0; i < pl.n; i++) {
        pl.outs[i].res = vf_result_new();
        pl.outs[i].dtype[0] = pl.outs[i].dtype[1] = pl.outs[i].dtype[2] = -1;
    }
    pl.order = g_new(int, pl.n + 1);
    for (int i = 0; i < pl.n; i++)
        pl.order[i] = i;
    if (t->gate_next)
        g_qsort_with_data(pl.order, pl.n, sizeof(int), gate_last_first, pl.files);
    if (jobs < 1)
        jobs = 1;
    if (jobs > pl.n)
        jobs = pl.n > 0 ? pl.n : 1;
    /* what each file will read: all of it when there is a record or a
     * source to compare with (check_one) */
    pl.expect = g_new0(uint64_t, pl.n + 1);
    uint64_t total = 0;
    for (int i = 0; i < pl.n && !quick; i++) {
        const vf_file *f = pl.files[i];
        if (!f->rec && !f->src)
            continue;
        char *abs = g_build_filename(t->out, f->path, NULL);
        struct stat st;
        pl.expect[i] = f->rec ? f->rec->size : stat(abs, &st) == 0 ? (uint64_t)st.st_size : 0;
        g_free(abs);
        total += pl.expect[i];
    }
    GThread **th = g_new(GThread *, jobs);
    for (int i = 0; i < jobs; i++)
        th[i] = g_thread_new("verify", worker, &pl);
    while (report && total && g_atomic_int_get(&pl.workers_done) < jobs) {
        g_usleep(50000);
        report(user, __atomic_load_n(&pl.bytes_done, __ATOMIC_RELAXED), total,
                 g_atomic_int_get(&pl.files_done), pl.n, 0);
    }
    for (int i = 0; i < jobs; i++)
        g_thread_join(th[i]);
    g_free(th);
    if (report && total)
        report(user, total, total, pl.n, pl.n, 1);
    g_free(pl.expect);
    if (t->lt)
        dtype_outliers(&pl);

    /* merge in path order; a file with a problem is not complete (the
     * view's rule: od_view_mark_bad), so neither is its layer */
    for (int i = 0; i < pl.n; i++) {
        vf_result *fr = pl.outs[i].res;
        const vf_file *f = pl.files[i];
        if (fr->problems->len && f->expected)
            od_view_mark_bad(t->view, f->path);
        for (guint k = 0; k < fr->problems->len; k++)
            g_ptr_array_add(r->problems, fr->problems->pdata[k]);
        g_ptr_array_set_free_func(fr->problems, NULL);
        r->bytes_read += pl.outs[i].bytes;
        vf_result_free(fr);
    }
    od_view_count(t->view);
    /* experts N/M stays coverage's count (the coherence gate runs on a
     * damaged file, to show what it does); the layers are the view's now */
    r->layers_complete = t->view->layers_complete;
    r->files_checked += pl.n;
    r->hashed = !quick;
    if (t->src_plan && !quick) {
        r->source_checked = 1;
        for (int i = 0; i < pl.n; i++)
            r->source_tensors += pl.files[i]->src ? pl.files[i]->src->n : 0;
    }
    r->seconds += qm_monotonic() - t0;
    g_free(pl.files);
    g_free(pl.order);
    g_free(pl.outs);
}
