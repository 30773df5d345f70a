/* expert_store.c - see expert_store.h */
#include "model/expert_store.h"
#include "base/fs.h"
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ALIGN 64

typedef struct entry {
    int layer, expert;          /* -1 when free */
    uint8_t *buf;               /* EXPERT_IO_READ: owned copy */
    uint64_t cap, used;         /* allocated and held bytes */
    void *map[6];               /* EXPERT_IO_MAP: one mapping per tensor
                                   (the three weights, then FP8 scales) */
    size_t map_len[6];
    expert_mats mats;
    struct entry *prev, *next;  /* LRU list: head is the most recent */
} entry;

struct expert_store {
    ckpt *ck;
    const layout *lt;
    const qm_fp8_config *fp8;   /* not owned; NULL: no FP8 experts */
    int n_layers, n_experts, hidden, inter;
    uint64_t limit;
    expert_io io;
    int no_prefetch;
    entry **slot;               /* [n_layers * n_experts] -> entry or NULL */
    uint8_t *used;              /* [n_layers * n_experts] ever asked for */
    int *distinct;              /* [n_layers] */
    entry *head, *tail;
    expert_stats st;
    int fd, fd_shard;           /* last shard opened, kept for the next read */
    char name[512];
};

expert_store *expert_store_new(ckpt *ck, const layout *lt, const qm_fp8_config *fp8,
                               int n_layers, int n_experts, int hidden, int inter,
                               uint64_t cache_bytes, expert_io io, GError **err)
{
    if (n_layers <= 0 || n_experts <= 0 || hidden <= 0 || inter <= 0 ||
        (int64_t)n_layers * n_experts > (1 << 24)) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': cannot size an expert store for %d layers x %d experts",
                    ck->dir, n_layers, n_experts);
        return NULL;
    }
    expert_store *s = g_new0(expert_store, 1);
    s->ck = ck;
    s->lt = lt;
    s->fp8 = fp8;
    s->n_layers = n_layers;
    s->n_experts = n_experts;
    s->hidden = hidden;
    s->inter = inter;
    s->limit = cache_bytes;
    s->io = io;
    s->st.cache_limit = cache_bytes;
    s->slot = g_new0(entry *, (size_t)n_layers * n_experts);
    s->used = g_new0(uint8_t, (size_t)n_layers * n_experts);
    s->distinct = g_new0(int, n_layers);
    s->fd = -1;
    s->fd_shard = -1;
    return s;
}

static void unmap_entry(entry *e)
{
    for (int k = 0; k < 6; k++) {
        if (e->map[k])
            munmap(e->map[k], e->map_len[k]);
        e->map[k] = NULL;
    }
}

static void free_entry(entry *e)
{
    if (e) {
        unmap_entry(e);
        g_aligned_free(e->buf);
        g_free(e);
    }
}

void expert_store_free(expert_store *s)
{
    if (!s)
        return;
    for (entry *e = s->head, *n; e; e = n) {
        n = e->next;
        free_entry(e);
    }
    if (s->fd >= 0)
        close(s->fd);
    g_free(s->slot);
    g_free(s->used);
    g_free(s->distinct);
    g_free(s);
}

static void lru_unlink(expert_store *s, entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        s->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(expert_store *s, entry *e)
{
    e->next = s->head;
    e->prev = NULL;
    if (s->head)
        s->head->prev = e;
    s->head = e;
    if (!s->tail)
        s->tail = e;
}

/* Drops the least recently used expert, keeping its entry for reuse. */
static entry *evict_lru(expert_store *s)
{
    entry *e = s->tail;
    lru_unlink(s, e);
    s->slot[(size_t)e->layer * s->n_experts + e->expert] = NULL;
    s->st.resident_bytes -= e->used;
    s->st.resident--;
    s->st.evictions++;
    unmap_entry(e);
    e->layer = e->expert = -1;
    e->used = 0;
    return e;
}

static int open_shard(expert_store *s, int shard, GError **err)
{
    const char *path = s->ck->shards[shard].path;
    if (s->fd_shard != shard) {
        if (s->fd >= 0)
            close(s->fd);
        s->fd_shard = -1;
        s->fd = fs_open_regular(path, O_RDONLY, "cannot open", err);
        if (s->fd < 0)
            return -1;
        s->fd_shard = shard;
    }
    return 0;
}

/* Maps [off, off + len) of a shard, widened to whole 2 MiB blocks of the
 * file (within its size). A page cache that holds the file in 2 MiB folios
 * (the kernel reads large files so) is then mapped a block per fault: the
 * first touch of 4.8 GB of experts went from 1.3-3 GB/s per thread, a 64 KiB
 * fault-around at a time, to 13-16 GB/s. Nothing outside [off, off + len)
 * is read, so the wider mapping costs address space only.
 * Not MAP_POPULATE: that fills the page table one page at a time on this
 * thread (get_user_pages), ~20 % of a decode step when every expert is a
 * miss. Left to faults, the threads of the matrix product fill it in
 * parallel (43 -> 65 tokens/s on the benchmark). */
#define MAP_BLOCK ((uint64_t)2 << 20)
static const uint8_t *map_at(expert_store *s, int shard, entry *e, int k, uint64_t len,
                             uint64_t off, GError **err)
{
    if (open_shard(s, shard, err) != 0)
        return NULL;
    /* the size its header was read with (locate() needed the header) */
    uint64_t size = s->ck->shards[shard].st->size;
    uint64_t base = off / MAP_BLOCK * MAP_BLOCK;
    uint64_t end = (off + len + MAP_BLOCK - 1) / MAP_BLOCK * MAP_BLOCK;
    if (end > size)
        end = size > off + len ? size : off + len;
    size_t n = (size_t)(end - base);
    void *p = mmap(NULL, n, PROT_READ, MAP_SHARED, s->fd, (off_t)base);
    if (p == MAP_FAILED) {
        qm_set_errno(err, errno, "cannot map", s->ck->shards[shard].path);
        return NULL;
    }
    e->map[k] = p;
    e->map_len[k] = n;
    s->st.bytes_read += len;
    return (const uint8_t *)p + (off - base);
}

static int read_at(expert_store *s, int shard, uint8_t *dst, uint64_t len,
                   uint64_t off, GError **err)
{
    const char *path = s->ck->shards[shard].path;
    if (open_shard(s, shard, err) != 0)
        return -1;
    while (len > 0) {
        ssize_t n = pread(s->fd, dst, len > (1u << 30) ? (1u << 30) : len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                g_set_error(err, QM_ERROR, QM_ERR_IO,
                            "cannot read '%s': file ends before offset %" G_GUINT64_FORMAT,
                            path, off + len);
            else
                qm_set_errno(err, errno, "cannot read", path);
            return -1;
        }
        dst += n;
        off += (uint64_t)n;
        len -= (uint64_t)n;
        s->st.bytes_read += (uint64_t)n;
    }
    return 0;
}

/* One projection of an expert: where its bytes are and what they hold;
 * FP8 weights also where their scales are. */
typedef struct {
    int shard;
    uint64_t off, len;          /* absolute offset in the shard file, bytes */
    st_dtype dtype;
    int sshard;                 /* F8_E4M3: the scale's shard, else -1 */
    uint64_t soff, slen;
    st_dtype sdtype;
} piece;

/* The scale of FP8 weight t (s->name), as locate() places a piece. */
static int locate_scale(expert_store *s, const st_tensor *t, piece *pc, GError **err)
{
    const char *path = s->ck->shards[pc->shard].path;
    if (!s->fp8) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': tensor '%s' is F8_E4M3 but '%s/config.json' has no FP8 "
                    "quantization_config", path, t->name, s->ck->dir);
        return -1;
    }
    if (s->lt->fused) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': tensor '%s': FP8 experts stacked in one tensor are not supported",
                    path, t->name);
        return -1;
    }
    char sname[600];
    snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
    int sh = ckpt_shard_index(s->ck, sname);
    const st_tensor *sc = sh >= 0 ? ckpt_tensor(s->ck, sname, 0, NULL, err) : NULL;
    if (sh >= 0 && !sc)
        return -1;
    if (qm_fp8_check_weight(s->fp8, path, t, sc, err) != 0)
        return -1;
    int64_t gr, gc;
    qm_fp8_grid(s->fp8, t->shape[0], t->shape[1], &gr, &gc);
    pc->sshard = sh;
    pc->sdtype = sc->dtype;
    pc->slen = (uint64_t)gr * (uint64_t)gc * (st_dtype_bits(sc->dtype) / 8);
    pc->soff = s->ck->shards[sh].st->data_start + sc->begin;
    return 0;
}

/* Where projection k of (layer, expert) lives. Per-expert layouts name one
 * tensor per projection. A fused layout stacks the experts of a layer
 * (gate_up_proj [E, 2I, H], down_proj [E, H, I], as transformers v5
 * computes them: gate is the first I rows of gate_up, up the next I); its
 * extraction holds one slice per expert under the slice name
 * ("experts.5.gate_up_proj" [2I, H]). Either is read: the slice when the
 * checkpoint has it (an OUT), else expert E's rows of the stacked tensor
 * (the source), so both give the same bytes. */
static int locate(expert_store *s, int layer, int expert, int k, piece *pc, GError **err)
{
    const layout *lt = s->lt;
    int H = s->hidden, I = s->inter;
    int rows = k == LT_DOWN ? H : I, cols = k == LT_DOWN ? I : H;
    const st_tensor *t;
    int stacked = 0;
    if (!lt->fused) {
        snprintf(s->name, sizeof s->name, "%slayers.%d.%s%d.%s.weight", lt->root, layer,
                 lt->experts, expert, lt->proj[k]);
        t = ckpt_tensor(s->ck, s->name, 0, NULL, err);
    } else {
        char *stack = g_strdup_printf("%slayers.%d.%s%s", lt->root, layer, lt->experts,
                                      lt->proj[k]);
        char *slice = layout_fused_slice_name(lt, stack, expert);
        g_strlcpy(s->name, slice, sizeof s->name);
        t = ckpt_shard_index(s->ck, s->name) >= 0 ? ckpt_tensor(s->ck, s->name, 0, NULL, err)
                                                  : NULL;
        if (!t && !(err && *err)) {
            g_strlcpy(s->name, stack, sizeof s->name);
            t = ckpt_tensor(s->ck, s->name, 0, NULL, err);
            stacked = 1;
        }
        g_free(slice);
        g_free(stack);
    }
    if (!t)
        return -1;
    pc->shard = ckpt_shard_index(s->ck, s->name);
    const char *path = s->ck->shards[pc->shard].path;
    /* the whole tensor a per-expert view is checked against */
    int fr = lt->fused && k != LT_DOWN ? 2 * I : rows;
    int64_t want[3] = {s->n_experts, fr, cols};
    int wn = stacked ? 3 : 2;
    const int64_t *w = stacked ? want : want + 1;
    int same = t->ndim == wn;
    for (int d = 0; same && d < wn; d++)
        same = t->shape[d] == w[d];
    char got[64], exp[64];
    if (!qm_mat_dtype_ok(t->dtype) && t->dtype != ST_F8_E4M3) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': tensor '%s' has dtype %s (the forward pass needs BF16, F16 "
                    "or F32)", path, t->name, st_dtype_name(t->dtype));
        return -1;
    }
    if (!same) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "'%s': tensor '%s' has shape %s, the config implies %s", path,
                    t->name, st_shape_str(t->shape, t->ndim, got, sizeof got),
                    st_shape_str(w, wn, exp, sizeof exp));
        return -1;
    }
    pc->dtype = t->dtype;
    pc->len = qm_mat_bytes(t->dtype, rows, cols);
    pc->sshard = -1;
    pc->soff = pc->slen = 0;
    if (t->dtype == ST_F8_E4M3 && locate_scale(s, t, pc, err) != 0)
        return -1;
    /* expert E's rows of a stack; up after gate in gate_up */
    uint64_t at = stacked ? (uint64_t)expert * qm_mat_bytes(t->dtype, fr, cols) : 0;
    if (lt->fused && k == LT_UP)
        at += pc->len;
    pc->off = s->ck->shards[pc->shard].st->data_start + t->begin + at;
    return 0;
}

/* Locates the three projections of (layer, expert) and reads them into e:
 * ranges 0-2 the weights, 3-5 their FP8 scales (length 0: none). FP8
 * weights stay one byte each; their scales count in the cache's bytes. */
static int load(expert_store *s, entry *e, int layer, int expert, GError **err)
{
    piece pc[3];
    int shard[6];
    uint64_t at[6], len[6], off[6], need = 0;
    qm_mat *mats[3] = {&e->mats.gate, &e->mats.up, &e->mats.down};
    for (int k = 0; k < 3; k++) {
        if (locate(s, layer, expert, k, &pc[k], err) != 0)
            return -1;
        qm_mat *m = mats[k];
        *m = (qm_mat){.dtype = pc[k].dtype,
                      .rows = k == LT_DOWN ? s->hidden : s->inter,
                      .cols = k == LT_DOWN ? s->inter : s->hidden};
        if (pc[k].sshard >= 0) {
            m->scale_dtype = pc[k].sdtype;
            m->block_rows = s->fp8->block_rows;
            m->block_cols = s->fp8->block_cols;
        }
        shard[k] = pc[k].shard, at[k] = pc[k].off, len[k] = pc[k].len;
        shard[k + 3] = pc[k].sshard, at[k + 3] = pc[k].soff, len[k + 3] = pc[k].slen;
    }
    for (int k = 0; k < 6; k++) {
        off[k] = need;
        need += (len[k] + ALIGN - 1) / ALIGN * ALIGN;
    }
    /* Sizes and offsets come from headers the checkpoint has checked
     * against the file size. */
    const uint8_t *data[6] = {0};
    if (s->io == EXPERT_IO_MAP) {
        need = 0;
        for (int k = 0; k < 6; k++) {
            if (len[k] && !(data[k] = map_at(s, shard[k], e, k, len[k], at[k], err)))
                return -1;
            need += len[k];
        }
    } else {
        /* in huge pages (fs_buf_alloc): a 9.4 MB expert read into fresh
         * 4 KiB pages cost 2,300 page faults, each an exit to the
         * hypervisor here (a 64-token prompt took 10 s, 1.1 s mapped) */
        if (e->cap < need) {
            g_aligned_free(e->buf);
            e->buf = fs_buf_alloc(need);
            e->cap = need;
        }
        for (int k = 0; k < 6; k++) {
            if (len[k] && read_at(s, shard[k], e->buf + off[k], len[k], at[k], err) != 0)
                return -1;
            data[k] = len[k] ? e->buf + off[k] : NULL;
        }
    }
    for (int k = 0; k < 3; k++) {
        mats[k]->data = data[k];
        mats[k]->scale = data[k + 3];
    }
    e->used = need;
    return 0;
}

const expert_mats *expert_store_get(expert_store *s, int layer, int expert,
                                    GError **err)
{
    if (layer < 0 || layer >= s->n_layers || expert < 0 || expert >= s->n_experts) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "no expert (layer %d, expert %d): the model has %d layers x %d "
                    "experts", layer, expert, s->n_layers, s->n_experts);
        return NULL;
    }
    size_t i = (size_t)layer * s->n_experts + expert;
    if (!s->used[i]) {
        s->used[i] = 1;
        s->distinct[layer]++;
    }
    entry *e = s->slot[i];
    if (e) {
        s->st.hits++;
        lru_unlink(s, e);
        lru_push(s, e);
        return &e->mats;
    }
    s->st.misses++;
    /* Make room: evict until the expert fits (sized by the last one read:
     * all experts of a model have the same shape), keeping one at least. */
    uint64_t expect = s->head ? s->head->used : 0;
    e = NULL;
    while (s->head && s->st.resident_bytes + expect > s->limit) {
        entry *old = evict_lru(s);
        free_entry(e);
        e = old;
    }
    if (!e)
        e = g_new0(entry, 1);
    GError *why = NULL;
    if (load(s, e, layer, expert, &why) != 0) {
        g_set_error(err, QM_ERROR, why->domain == QM_ERROR ? why->code : QM_ERR_IO,
                    "cannot load expert (layer %d, expert %d): %s", layer, expert,
                    why->message);
        g_error_free(why);
        free_entry(e);
        return NULL;
    }
    e->layer = layer;
    e->expert = expert;
    s->slot[i] = e;
    lru_push(s, e);
    s->st.resident++;
    s->st.resident_bytes += e->used;
    if (s->st.resident_bytes > s->st.peak_bytes)
        s->st.peak_bytes = s->st.resident_bytes;
    return &e->mats;
}

void expert_store_set_prefetch(expert_store *s, int on)
{
    s->no_prefetch = !on;
}

void expert_store_prefetch(expert_store *s, int layer, const int *experts, int n)
{
    if (s->no_prefetch || layer < 0 || layer >= s->n_layers)
        return;
    for (int j = 0; j < n; j++) {
        int x = experts[j];
        if (x < 0 || x >= s->n_experts || s->slot[(size_t)layer * s->n_experts + x])
            continue;
        for (int k = 0; k < 3; k++) {
            piece pc;
            /* a failure shows when the expert is asked for */
            if (locate(s, layer, x, k, &pc, NULL) != 0 || open_shard(s, pc.shard, NULL) != 0)
                continue;
            for (uint64_t at = pc.off, end = pc.off + pc.len; at < end; at += QM_WILLNEED_CHUNK)
                posix_fadvise(s->fd, (off_t)at,
                              (off_t)(end - at < QM_WILLNEED_CHUNK ? end - at
                                                                   : QM_WILLNEED_CHUNK),
                              POSIX_FADV_WILLNEED);
            /* an FP8 scale is 1/(block area) of its weight: one request */
            if (pc.sshard >= 0 && open_shard(s, pc.sshard, NULL) == 0)
                posix_fadvise(s->fd, (off_t)pc.soff, (off_t)pc.slen, POSIX_FADV_WILLNEED);
        }
    }
}

int expert_store_holds(const expert_store *s, int n)
{
    /* Asking for one evicts least recently used ones only until it fits:
     * when n fit, none of the n - 1 asked for just before is the least
     * recently used one while room is still missing. */
    return s->head && n >= 1 && (uint64_t)n * s->head->used <= s->limit;
}

void expert_store_stats(const expert_store *s, expert_stats *out)
{
    *out = s->st;
}

int expert_store_distinct(const expert_store *s, int layer)
{
    return layer >= 0 && layer < s->n_layers ? s->distinct[layer] : 0;
}

int expert_store_used(const expert_store *s, int layer, int expert)
{
    if (layer < 0 || layer >= s->n_layers || expert < 0 || expert >= s->n_experts)
        return 0;
    return s->used[(size_t)layer * s->n_experts + expert];
}
