/* ckcmp - compare two checkpoints tensor by tensor (a test tool).
 *
 *   ckcmp SRC OUT [LAYOUT]
 *
 * Both are opened as index-driven checkpoints. Every tensor of SRC must be
 * in OUT with the same dtype, shape and bytes, and OUT must hold nothing
 * else. For a fused layout, SRC's stacked expert tensors are compared with
 * OUT's per-expert slices. With --subset, OUT may lack tensors of SRC
 * (a partial extraction) but everything it has must match.
 * Prints "same: N tensors, B bytes" and exits 0, or names the first
 * difference and exits 1.
 */
#include "format/checkpoint.h"
#include "format/layout.h"
#include "base/util.h"

#include <stdio.h>
#include <string.h>

static int fail(const char *msg, const char *name)
{
    printf("differ: %s '%s'\n", msg, name);
    return 1;
}

static int same_meta(const st_tensor *a, const st_tensor *b, int skip_dim0)
{
    if (a->dtype != b->dtype || a->ndim != b->ndim + skip_dim0)
        return 0;
    for (int d = 0; d < b->ndim; d++)
        if (a->shape[d + skip_dim0] != b->shape[d])
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    int subset = argc > 1 && strcmp(argv[1], "--subset") == 0;
    if (argc - subset < 3) {
        fprintf(stderr, "usage: ckcmp [--subset] SRC OUT\n");
        return 2;
    }
    GError *err = NULL;
    ckpt *a = ckpt_open(argv[1 + subset], &err), *b = a ? ckpt_open(argv[2 + subset], &err) : NULL;
    if (!a || !b) {
        qm_report("ckcmp", err);
        return 2;
    }
    const layout *lt = layout_detect(a, &err);
    if (!lt) {
        qm_report("ckcmp", err);
        return 2;
    }
    GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
    uint64_t bytes = 0;
    int n = 0, rc = 0;
    for (int i = 0; i < a->n_names && !rc; i++) {
        const char *name = a->names[i];
        const uint8_t *da, *db;
        const st_tensor *ta = ckpt_tensor(a, name, 1, &da, &err);
        if (!ta) {
            qm_report("ckcmp", err);
            return 2;
        }
        lt_class c;
        layout_classify(lt, name, &c);
        int parts = c.kind == LT_FUSED ? (int)ta->shape[0] : 1;
        uint64_t per = (ta->end - ta->begin) / (uint64_t)parts;
        for (int e = 0; e < parts && !rc; e++) {
            char *bn = c.kind == LT_FUSED ? layout_fused_slice_name(lt, name, e) : g_strdup(name);
            if (ckpt_shard_index(b, bn) < 0) {
                if (!subset)
                    rc = fail("missing in OUT:", bn);
                g_free(bn);
                continue;
            }
            const st_tensor *tb = ckpt_tensor(b, bn, 1, &db, &err);
            if (!tb) {
                qm_report("ckcmp", err);
                return 2;
            }
            if (!same_meta(ta, tb, c.kind == LT_FUSED))
                rc = fail("dtype or shape differ for", bn);
            else if (tb->end - tb->begin != per || memcmp(da + per * (uint64_t)e, db, per) != 0)
                rc = fail("bytes differ for", bn);
            g_hash_table_add(seen, g_strdup(bn));
            bytes += per;
            n++;
            g_free(bn);
        }
    }
    for (int i = 0; i < b->n_names && !rc; i++)
        if (!g_hash_table_contains(seen, b->names[i]))
            rc = fail("not in SRC:", b->names[i]);
    if (!rc)
        printf("same: %d tensors, %llu bytes\n", n, (unsigned long long)bytes);
    GHashTableIter it;
    gpointer k;
    g_hash_table_iter_init(&it, seen);
    while (g_hash_table_iter_next(&it, &k, NULL))
        g_free(k);
    g_hash_table_destroy(seen);
    ckpt_close(a);
    ckpt_close(b);
    return rc;
}
