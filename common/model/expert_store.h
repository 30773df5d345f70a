/* expert_store.h - routed experts loaded on demand through a bounded cache.
 *
 * The model never holds all experts (the Qwen3-Omni thinker has 6144 of
 * them, 58 GB): when the router picks (layer, expert) the model asks the
 * store, which returns the three projections from an LRU cache of at most
 * `cache_bytes`, reading them on a miss with pread from whatever file the
 * checkpoint's index names: experts/expert_EEE_layer_LL.safetensors in an
 * extracted OUT, a byte range of a shard in the original checkpoint. The
 * code path is the same for both. Weights keep their on-disk dtype (FP8
 * experts one byte per weight, with their block scales).
 *
 * Two ways to bring an expert in (measured by tests/bench/run_bench.sh):
 *   EXPERT_IO_MAP   map its byte ranges and compute on the page cache
 *                   directly (pages are faulted in by the threads that
 *                   compute); eviction unmaps. No copy, so a miss costs
 *                   little more than a hit. The default.
 *   EXPERT_IO_READ  pread into buffers owned by the cache; buffers of
 *                   evicted experts are reused, so once the cache is full a
 *                   miss allocates nothing. A copy per miss.
 * Either way the cache holds at most cache_bytes of expert weights (and
 * always at least one expert, even when cache_bytes is smaller). Not
 * thread-safe: one thread asks, the matrix products that use the result
 * may be parallel.
 */
#ifndef QMOE_EXPERT_STORE_H
#define QMOE_EXPERT_STORE_H

#include <glib.h>
#include <stdint.h>

#include "format/checkpoint.h"
#include "format/layout.h"
#include "model/matvec.h"

typedef struct expert_store expert_store;

typedef enum { EXPERT_IO_MAP, EXPERT_IO_READ } expert_io;

typedef struct {
    qm_mat gate; /* [inter, hidden] */
    qm_mat up;   /* [inter, hidden] */
    qm_mat down; /* [hidden, inter] */
} expert_mats;

typedef struct {
    uint64_t hits, misses, evictions;
    uint64_t bytes_read;     /* brought in on misses (read or mapped) */
    uint64_t resident_bytes; /* weights held in the cache now */
    uint64_t peak_bytes;     /* most ever held */
    uint64_t cache_limit;    /* the budget asked for */
    int resident;            /* experts held now */
} expert_stats;

/* A store over ck (not owned; must outlive the store) for n_layers x
 * n_experts experts of the given sizes, named by layout lt. fp8 (not
 * owned, may be NULL) is the checkpoint's FP8 quantization_config: F8_E4M3
 * experts are then read with their weight_scale_inv, one byte per weight
 * plus the scales, and checked as fp8.h says. Opens nothing yet. */
expert_store *expert_store_new(ckpt *ck, const layout *lt, const qm_fp8_config *fp8,
                               int n_layers, int n_experts, int hidden, int inter,
                               uint64_t cache_bytes, expert_io io, GError **err);

/* Frees the cache; accepts NULL. */
void expert_store_free(expert_store *s);

/* The weights of (layer, expert), valid until the next call. On failure
 * (file missing or unreadable, tensor absent, wrong dtype or shape)
 * returns NULL with *err naming the layer, expert and file. */
const expert_mats *expert_store_get(expert_store *s, int layer, int expert,
                                    GError **err);

/* Starts reading the experts[0..n) of `layer` that are not held into the
 * page cache in the background (posix_fadvise WILLNEED on their byte
 * ranges: the kernel reads them in parallel while the caller computes),
 * so that the misses expert_store_get takes for them next wait less. A
 * hint: errors are ignored here and reported by expert_store_get. */
void expert_store_prefetch(expert_store *s, int layer, const int *experts, int n);

/* Bytes per read-ahead request: Linux reads at most the readahead window
 * (max of read_ahead_kb and the device's largest request, 128 KB by
 * default) per POSIX_FADV_WILLNEED / MADV_WILLNEED call and silently
 * drops the rest, so longer ranges are asked for in pieces. */
#define QM_WILLNEED_CHUNK ((size_t)128 << 10)

/* on = 0 makes expert_store_prefetch do nothing (benchmarks measure what
 * it is worth); on by default. */
void expert_store_set_prefetch(expert_store *s, int on);

/* 1 if n experts asked for one after another are all held at once, so
 * that the pointers expert_store_get returned for them stay valid until
 * the next call after the n-th (the cache has room for n; known once one
 * expert has been loaded). 0 otherwise: use each before asking for the
 * next. */
int expert_store_holds(const expert_store *s, int n);

void expert_store_stats(const expert_store *s, expert_stats *out);

/* Distinct experts of `layer` asked for since the store was made. */
int expert_store_distinct(const expert_store *s, int layer);

/* 1 if (layer, expert) was ever asked for. */
int expert_store_used(const expert_store *s, int layer, int expert);

#endif
