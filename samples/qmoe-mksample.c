/* qmoe-mksample - writes deterministic sample checkpoints shaped like the real models.
 *
 * A sample is a Hugging Face checkpoint directory: config.json,
 * generation_config.json, tokenizer.json, tokenizer_config.json, shards
 * model-0000K-of-0000N.safetensors cut by size (so that layers, and
 * experts, span shards as in the real downloads) and
 * model.safetensors.index.json. Values come from splitmix64 seeded by
 * --seed and the tensor's name, so a tensor's bytes do not depend on the
 * sharding. Shards are streamed tensor by tensor through a fixed buffer.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "base/fs.h"
#include "format/fp8.h"
#include "format/layout.h"
#include "mksample.h"
#include "mksample_coherent.h"
#include "mksample_like.h"
#include "format/safetensors.h"
#include "base/util.h"

static const char *prog = "qmoe-mksample";

static char *opt_layout = NULL;
static int opt_layers = 4, opt_experts = 8, opt_hidden = 64, opt_inter = 32;
static int opt_vocab = 384, opt_heads = 4, opt_kv_heads = 2, opt_head_dim = 0;
static int opt_topk = 2, opt_shards = 0, opt_shard_mb = 0;
static char *opt_seed = NULL, *opt_dtype = NULL;
static gboolean opt_list, opt_force, opt_json, opt_version;
static gboolean opt_coherent, opt_print_prompts, opt_print_reference;
static char *opt_like = NULL, *opt_fill_layers = NULL, *opt_tokenizer = NULL;
static gboolean opt_fill_routers, opt_fill_globals, opt_hf_cache, opt_fp8;
static char *opt_fp8_block = NULL, *opt_fp8_scale = NULL, *opt_rope = NULL;

static GOptionEntry entries[] = {
    {"layout", 0, 0, G_OPTION_ARG_STRING, &opt_layout,
     "Model family (default qwen3_omni_moe; see --list)", "NAME"},
    {"layers", 0, 0, G_OPTION_ARG_INT, &opt_layers, "Decoder layers (default 4)", "N"},
    {"experts", 0, 0, G_OPTION_ARG_INT, &opt_experts, "Routed experts per layer (default 8)", "N"},
    {"hidden", 0, 0, G_OPTION_ARG_INT, &opt_hidden, "hidden_size (default 64)", "N"},
    {"inter", 0, 0, G_OPTION_ARG_INT, &opt_inter, "Expert intermediate size (default 32)", "N"},
    {"vocab", 0, 0, G_OPTION_ARG_INT, &opt_vocab, "vocab_size (default 384)", "N"},
    {"heads", 0, 0, G_OPTION_ARG_INT, &opt_heads, "Attention heads (default 4)", "N"},
    {"kv-heads", 0, 0, G_OPTION_ARG_INT, &opt_kv_heads, "Key-value heads (default 2)", "N"},
    {"head-dim", 0, 0, G_OPTION_ARG_INT, &opt_head_dim, "head_dim (default hidden/heads)", "N"},
    {"topk", 0, 0, G_OPTION_ARG_INT, &opt_topk, "num_experts_per_tok (default 2)", "N"},
    {"shards", 0, 0, G_OPTION_ARG_INT, &opt_shards,
     "Cut into N shards of about equal size (default 3; 1 writes model.safetensors)", "N"},
    {"shard-mb", 0, 0, G_OPTION_ARG_INT, &opt_shard_mb,
     "Cut shards at about N MB (10^6 bytes) each instead", "N"},
    {"seed", 0, 0, G_OPTION_ARG_STRING, &opt_seed, "Seed of the values (default 1)", "S"},
    {"dtype", 0, 0, G_OPTION_ARG_STRING, &opt_dtype,
     "Element type: bf16 (default), f16 or f32", "T"},
    {"fp8", 0, 0, G_OPTION_ARG_NONE, &opt_fp8,
     "Linear weights in FP8 E4M3 with a weight_scale_inv per block and the "
     "release's quantization_config (embeddings, norms, routers, lm_head stay --dtype)",
     NULL},
    {"fp8-block", 0, 0, G_OPTION_ARG_STRING, &opt_fp8_block,
     "With --fp8: block size N or ROWSxCOLS (default 128)", "B"},
    {"fp8-scale", 0, 0, G_OPTION_ARG_STRING, &opt_fp8_scale,
     "With --fp8: scale dtype f32 or bf16 (default f32 for deepseek_v3, else bf16)", "T"},
    {"rope", 0, 0, G_OPTION_ARG_STRING, &opt_rope,
     "RoPE: default, or yarn (rope_scaling as DeepSeek-V3, factor 40, or Qwen3, factor 4, "
     "write it)", "TYPE"},
    {"coherent", 0, 0, G_OPTION_ARG_NONE, &opt_coherent,
     "Write the coherent model (qwen3_omni_moe or qwen3_moe; fixed sizes)", NULL},
    {"like", 0, 0, G_OPTION_ARG_STRING, &opt_like,
     "A sparse replica of a real checkpoint (qwen3-omni-30b-a3b-instruct, qwen3-30b-a3b, "
     "qwen3-30b-a3b-fp8, deepseek-v3; the FP8 presets' shard split is a stated rule, "
     "not the release's)", "NAME"},
    {"fill-layers", 0, 0, G_OPTION_ARG_STRING, &opt_fill_layers,
     "With --like: a pattern in every tensor of these decoder layers", "LIST"},
    {"fill-routers", 0, 0, G_OPTION_ARG_NONE, &opt_fill_routers,
     "With --like: a pattern in every layer's router and norms", NULL},
    {"fill-globals", 0, 0, G_OPTION_ARG_NONE, &opt_fill_globals,
     "With --like: a pattern in the embeddings, lm_head and final norm", NULL},
    {"tokenizer", 0, 0, G_OPTION_ARG_FILENAME, &opt_tokenizer,
     "With --like: tokenizer files from DIR's tokenizer.json[.gz] and tokenizer_config.json",
     "DIR"},
    {"hf-cache", 0, 0, G_OPTION_ARG_NONE, &opt_hf_cache,
     "With --like: OUT is a Hugging Face hub cache (models--OWNER--NAME/...)", NULL},
    {"print-prompts", 0, 0, G_OPTION_ARG_NONE, &opt_print_prompts,
     "Print the coherent model's prompt set (samples/prompts) and exit", NULL},
    {"print-reference", 0, 0, G_OPTION_ARG_NONE, &opt_print_reference,
     "Print its reference text (samples/reference.txt) and exit", NULL},
    {"list", 0, 0, G_OPTION_ARG_NONE, &opt_list, "List the layouts and exit", NULL},
    {"force", 0, 0, G_OPTION_ARG_NONE, &opt_force, "Write into a non-empty OUT", NULL},
    {"json", 0, 0, G_OPTION_ARG_NONE, &opt_json, "Print the summary as JSON", NULL},
    {"version", 0, 0, G_OPTION_ARG_NONE, &opt_version, "Print the version and exit", NULL},
    {NULL, 0, 0, 0, NULL, NULL, NULL},
};

static const char *summary_text =
    "Writes a sample checkpoint into OUT: the tensor names, shapes, config keys,\n"
    "sharding and tokenizer files of a real Mixture-of-Experts model at a chosen\n"
    "size, with small deterministic values (same --seed, same bytes).\n"
    "\n"
    "Examples:\n"
    "  qmoe-mksample /tmp/omni                                   tiny Qwen3-Omni\n"
    "  qmoe-mksample --layers 48 --experts 128 /tmp/omni6144     the real expert count\n"
    "  qmoe-mksample --layout mixtral --experts 8 --topk 2 /tmp/mx\n"
    "  qmoe-mksample --coherent --layout qwen3_moe /tmp/coh      a model whose greedy\n"
    "                output reproduces known sentences (samples/prompts)\n"
    "  qmoe-mksample --layers 2 --experts 128 --hidden 2048 --inter 768 \\\n"
    "                --shard-mb 4000 /tmp/big                     real expert size\n"
    "  qmoe-mksample --like qwen3-omni-30b-a3b-instruct /tmp/omni the real 70.5 GB\n"
    "                layout, sparse (holes): seconds and a few MB of disk\n"
    "  qmoe-mksample --layout deepseek_v3 --fp8 --fp8-block 16 --rope yarn /tmp/ds\n"
    "                FP8 block-scaled weights and YaRN as DeepSeek-V3 ships them\n"
    "\n"
    "Exit status: 0 written, 2 bad options or I/O error.";

static void usage_error(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    qm_usage_error(prog, "%s", msg);
    g_free(msg);
    exit(2);
}

/* ---- values ---- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t name_seed(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001b3ULL;
    uint64_t s = seed ^ h;
    return splitmix64(&s);
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFF + ((u >> 16) & 1); /* round to nearest even; no NaN here */
    return (uint16_t)(u >> 16);
}

static uint16_t f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xFF) - 127 + 15;
    uint32_t man = u & 0x7FFFFF;
    if ((u & 0x7FFFFFFF) == 0)
        return (uint16_t)sign;
    if (exp >= 31)
        return (uint16_t)(sign | 0x7C00);
    if (exp <= 0) { /* subnormal: shift the implicit bit in, round to even */
        if (exp < -10)
            return (uint16_t)sign;
        man |= 0x800000;
        int shift = 14 - exp;
        uint32_t half = 1u << (shift - 1);
        uint32_t v = man >> shift, rest = man & ((1u << shift) - 1);
        if (rest > half || (rest == half && (v & 1)))
            v++;
        return (uint16_t)(sign | v);
    }
    uint32_t v = ((uint32_t)exp << 10) | (man >> 13), rest = man & 0x1FFF;
    if (rest > 0x1000 || (rest == 0x1000 && (v & 1)))
        v++; /* may carry into the exponent, which is still correct */
    return (uint16_t)(sign | v);
}

/* 65536 values per (init): a 16-bit random index is the sum of two
 * uniform bytes, a triangular distribution (std 104.5 before scaling):
 * normal enough for a sane forward pass, bounded at 2.45 std, and made with
 * exact IEEE arithmetic only, so every machine writes the same bytes. */
typedef struct {
    st_dtype dtype;
    void *tab[3]; /* [MS_WEIGHT], [MS_NORM], [MS_SCALE]: 65536 elements of dtype,
                   * or NULL for a dtype the sample does not use */
} ms_tables;

/* The E4M3 code nearest to v (ties to the even code), never a NaN code:
 * |v| beyond 448 saturates. */
static uint8_t f32_to_e4m3(float v)
{
    const float *tab = qm_e4m3_table();
    uint8_t sign = v < 0 ? 0x80 : 0;
    float a = fabsf(v);
    int best = 0;
    for (int c = 1; c <= 0x7E; c++) {
        float d = fabsf(tab[c] - a), db = fabsf(tab[best] - a);
        if (d < db || (d == db && !(c & 1)))
            best = c;
    }
    return (uint8_t)(sign | best);
}

/* The FP8 codes span the format: the weight table's +-2.45 std maps to
 * +-448, which the scale (MS_SCALE, 0.75-1.25 of 0.049 / 448) maps back. */
#define FP8_UNIT (448.0 / 2.45)

static void tables_init(ms_tables *t, st_dtype dt)
{
    t->dtype = dt;
    size_t es = st_dtype_bits(dt) / 8;
    for (int k = 0; k < 3; k++) {
        t->tab[k] = g_malloc(65536 * es);
        for (int i = 0; i < 65536; i++) {
            double z = ((i >> 8) + (i & 255) - 255) / 104.5;
            float v = (float)(k == MS_NORM ? 1.0 + 0.02 * z : 0.02 * z);
            if (k == MS_SCALE)
                v = (float)(0.02 / FP8_UNIT * (0.75 + 0.5 * i / 65535.0));
            if (dt == ST_F8_E4M3)
                ((uint8_t *)t->tab[k])[i] = f32_to_e4m3((float)(z * FP8_UNIT));
            else if (dt == ST_F32)
                ((float *)t->tab[k])[i] = v;
            else
                ((uint16_t *)t->tab[k])[i] = dt == ST_F16 ? f32_to_f16(v) : f32_to_bf16(v);
        }
    }
}

static void tables_free(ms_tables *t)
{
    for (int k = 0; k < 3; k++)
        g_free(t->tab[k]);
}

/* Fills n elements; n is a multiple of 4 except at a tensor's end, so the
 * stream is the same however a tensor is cut into chunks. */
static void fill(const ms_tables *t, ms_init init, uint64_t *state, void *out, uint64_t n)
{
    /* One 64-bit draw gives four 16-bit table indices. */
#define FILL(T)                                                             \
    do {                                                                    \
        const T *tab = t->tab[init];                                        \
        T *o = out;                                                         \
        uint64_t i = 0;                                                     \
        for (; i + 4 <= n; i += 4) {                                        \
            uint64_t r = splitmix64(state);                                 \
            o[i] = tab[r & 0xFFFF];                                         \
            o[i + 1] = tab[(r >> 16) & 0xFFFF];                             \
            o[i + 2] = tab[(r >> 32) & 0xFFFF];                             \
            o[i + 3] = tab[r >> 48];                                        \
        }                                                                   \
        for (uint64_t r = n > i ? splitmix64(state) : 0; i < n; i++, r >>= 16) \
            o[i] = tab[r & 0xFFFF];                                         \
    } while (0)
    if (t->dtype == ST_F32)
        FILL(float);
    else if (t->dtype == ST_F8_E4M3)
        FILL(uint8_t);
    else
        FILL(uint16_t);
#undef FILL
}

/* ---- shards ---- */

/* Values are made in one thread while another writes the previous buffer:
 * generation costs about a quarter of the write time, so overlapping the
 * two is most of what there is to gain. */
enum { BUF_BYTES = 8 << 20, N_BUFS = 3 };

typedef struct {
    uint8_t *buf;
    size_t used;
} chunk;

typedef struct {
    fs_out *out;
    chunk pool[N_BUFS];
    chunk *cur;               /* being filled by the generator */
    GAsyncQueue *full, *empty;
    GThread *thread;
    int failed;               /* atomic: the writer hit an error */
    GError *err;              /* the writer's first error */
} writer;

static chunk stop_chunk; /* tells the writer thread to finish */

static gpointer writer_main(gpointer data)
{
    writer *w = data;
    for (;;) {
        chunk *c = g_async_queue_pop(w->full);
        if (c == &stop_chunk)
            break;
        if (!w->failed && fs_out_write(w->out, c->buf, c->used, &w->err))
            g_atomic_int_set(&w->failed, 1);
        c->used = 0;
        g_async_queue_push(w->empty, c);
    }
    return NULL;
}

static void writer_start(writer *w, fs_out *out)
{
    memset(w, 0, sizeof *w);
    w->out = out;
    w->full = g_async_queue_new();
    w->empty = g_async_queue_new();
    for (int i = 0; i < N_BUFS; i++) {
        w->pool[i].buf = g_malloc(BUF_BYTES);
        if (i)
            g_async_queue_push(w->empty, &w->pool[i]);
    }
    w->cur = &w->pool[0];
    w->thread = g_thread_new("mksample-write", writer_main, w);
}

/* Hands the current buffer to the writer and takes an empty one. */
static int flush(writer *w)
{
    if (w->cur->used) {
        g_async_queue_push(w->full, w->cur);
        w->cur = g_async_queue_pop(w->empty);
    }
    return g_atomic_int_get(&w->failed) ? -1 : 0;
}

/* Writes what is left, stops the thread, frees the buffers. Returns the
 * writer's error if it had one. */
static int writer_finish(writer *w, GError **err)
{
    flush(w);
    g_async_queue_push(w->full, &stop_chunk);
    g_thread_join(w->thread);
    for (int i = 0; i < N_BUFS; i++)
        g_free(w->pool[i].buf);
    g_async_queue_unref(w->full);
    g_async_queue_unref(w->empty);
    if (w->err) {
        g_propagate_error(err, w->err);
        return -1;
    }
    return 0;
}

static int write_tensor(writer *w, const ms_tensor *t, uint64_t seed,
                        const ms_tables *tabs)
{
    size_t es = st_dtype_bits(t->dtype) / 8;
    uint64_t left = t->nbytes / es;
    uint64_t state = name_seed(seed, t->name);
    while (left > 0) {
        chunk *c = w->cur;
        uint64_t room = (BUF_BYTES - c->used) / es;
        if (room < left)
            room &= ~(uint64_t)3;
        if (room == 0) {
            if (flush(w))
                return -1;
            continue;
        }
        uint64_t n = MIN(room, left);
        fill(&tabs[t->dtype], t->init, &state, c->buf + c->used, n);
        c->used += n * es;
        left -= n;
    }
    return 0;
}

/* Inside a shard, tensors go in the order safetensors writes them: wider
 * dtypes first, then by name. */
static int cmp_in_shard(const void *a, const void *b)
{
    const ms_tensor *x = *(ms_tensor *const *)a, *y = *(ms_tensor *const *)b;
    unsigned bx = st_dtype_bits(x->dtype), by = st_dtype_bits(y->dtype);
    if (bx != by)
        return bx > by ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int write_shard(const char *path, ms_tensor **ts, int n, uint64_t seed,
                       const ms_tables *tabs, GError **err)
{
    qsort(ts, (size_t)n, sizeof *ts, cmp_in_shard);
    st_entry *e = g_new0(st_entry, n);
    for (int i = 0; i < n; i++) {
        e[i].name = ts[i]->name;
        e[i].dtype = ts[i]->dtype;
        e[i].ndim = ts[i]->ndim;
        memcpy(e[i].shape, ts[i]->shape, sizeof e[i].shape);
        e[i].nbytes = ts[i]->nbytes;
    }
    GByteArray *h = st_header_build(e, n, NULL, 0, 0, err);
    g_free(e);
    if (!h)
        return -1;
    fs_out *out = fs_out_open(path, err);
    int rc = out ? fs_out_write(out, h->data, h->len, err) : -1;
    g_byte_array_free(h, TRUE);
    if (rc) {
        fs_out_abort(out);
        return -1;
    }
    writer w;
    writer_start(&w, out);
    for (int i = 0; i < n && !rc; i++)
        rc = write_tensor(&w, ts[i], seed, tabs);
    if (writer_finish(&w, err) || rc) {
        fs_out_abort(out);
        return -1;
    }
    return fs_out_commit(out, err);
}

/* Cuts the plan into shards by size, ignoring layers: --shards N gives
 * pieces of about total/N bytes, --shard-mb a maximum (a tensor is never
 * split, so a shard exceeds it only by holding one larger tensor). Where a
 * cut falls between two experts it moves back by one tensor, so that the
 * expert before it straddles the two shards as in the real downloads.
 * Returns the number of shards. */
static int assign_shards(GArray *plan, int n_shards, uint64_t shard_bytes)
{
    ms_tensor *t = (ms_tensor *)plan->data;
    int n = (int)plan->len;
    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += t[i].nbytes;
    if (!shard_bytes) {
        uint64_t piece = MAX((total + (uint64_t)n_shards - 1) / (uint64_t)n_shards, 1);
        uint64_t at = 0;
        for (int i = 0; i < n; i++) {
            t[i].shard = (int)(at / piece);
            at += t[i].nbytes;
        }
    } else {
        uint64_t cur = 0;
        int s = 0;
        for (int i = 0; i < n; i++) {
            if (cur > 0 && cur + t[i].nbytes > shard_bytes) {
                s++;
                cur = 0;
            }
            t[i].shard = s;
            cur += t[i].nbytes;
        }
    }
    for (int i = 2; i < n; i++)
        if (t[i].shard != t[i - 1].shard && t[i - 1].last && t[i - 1].group >= 0 &&
            t[i - 2].group == t[i - 1].group && t[i - 2].shard == t[i - 1].shard)
            t[i - 1].shard = t[i].shard;
    int k = 0; /* renumber without gaps (a huge tensor may skip a number) */
    for (int i = 0, prev = -1; i < n; i++) {
        if (t[i].shard != prev) {
            prev = t[i].shard;
            k++;
        }
        t[i].shard = k - 1;
    }
    return k;
}

static int write_json(const char *dir, const char *file, cJSON *j, GError **err)
{
    char *path = g_build_filename(dir, file, NULL);
    char *text = cJSON_Print(j);
    GString *s = g_string_new(text);
    g_string_append_c(s, '\n');
    int rc = fs_write_atomic(path, s->str, s->len, err);
    g_string_free(s, TRUE);
    cJSON_free(text);
    cJSON_Delete(j);
    g_free(path);
    return rc;
}

static char *shard_name(int k, int n)
{
    return n == 1 ? g_strdup("model.safetensors")
                  : g_strdup_printf("model-%05d-of-%05d.safetensors", k + 1, n);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(ms_tensor *const *)a)->name, (*(ms_tensor *const *)b)->name);
}

static int write_index(const char *dir, GArray *plan, int n_shards, uint64_t total,
                       GError **err)
{
    int n = (int)plan->len;
    ms_tensor **by = g_new(ms_tensor *, n);
    for (int i = 0; i < n; i++)
        by[i] = &g_array_index(plan, ms_tensor, i);
    qsort(by, (size_t)n, sizeof *by, cmp_name);
    char **names = g_new0(char *, n_shards);
    for (int k = 0; k < n_shards; k++)
        names[k] = shard_name(k, n_shards);
    cJSON *j = cJSON_CreateObject();
    cJSON *m = cJSON_AddObjectToObject(j, "metadata");
    cJSON_AddNumberToObject(m, "total_size", (double)total);
    cJSON *wm = cJSON_AddObjectToObject(j, "weight_map");
    for (int i = 0; i < n; i++)
        cJSON_AddStringToObject(wm, by[i]->name, names[by[i]->shard]);
    int rc = write_json(dir, "model.safetensors.index.json", j, err);
    for (int k = 0; k < n_shards; k++)
        g_free(names[k]);
    g_free(names);
    g_free(by);
    return rc;
}

/* OUT must be new or empty unless --force; with --force, shards and index
 * of an earlier sample go so that no stale file is left beside the new. */
static int prepare_out(const char *out, GError **err)
{
    GDir *d = g_dir_open(out, 0, NULL);
    if (!d) {
        if (g_file_test(out, G_FILE_TEST_EXISTS)) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE, "'%s' exists and is not a directory",
                        out);
            return -1;
        }
        return fs_mkdir_p(out, err);
    }
    const char *f;
    int rc = 0, nonempty = 0;
    while ((f = g_dir_read_name(d)) && !rc) {
        nonempty = 1;
        if (!opt_force)
            break;
        if (g_str_has_prefix(f, "model") && (g_str_has_suffix(f, ".safetensors") ||
                                             !strcmp(f, "model.safetensors.index.json"))) {
            char *p = g_build_filename(out, f, NULL);
            if (unlink(p) != 0)
                rc = qm_set_errno(err, errno, "cannot remove", p);
            g_free(p);
        }
    }
    g_dir_close(d);
    if (nonempty && !opt_force) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "'%s' exists and is not empty (use --force to write into it)", out);
        return -1;
    }
    return rc;
}

static void list_layouts(void)
{
    for (int i = 0; layouts[i]; i++) {
        const layout *lt = layouts[i];
        printf("%-16s model_type %-24s %slayers.L.%s%s{%s,%s,%s}\n", lt->name,
               lt->model_types, lt->root, lt->experts, lt->fused ? "" : "E.",
               lt->proj[0], lt->proj[1], lt->proj[2]);
    }
}

static int in_range(const char *what, int v, int lo, int hi)
{
    if (v < lo || v > hi)
        usage_error("%s must be between %d and %d, not %d", what, lo, hi, v);
    return v;
}

/* --like: a replica of a real checkpoint (mksample_like.c). */
static int write_like(const char *out)
{
    GError *err = NULL;
    like_opts o = {opt_fill_layers, opt_fill_routers, opt_fill_globals, opt_tokenizer,
                   opt_hf_cache};
    like_stats st;
    double t0 = qm_monotonic();
    if (!like_known(opt_like))
        usage_error("unknown --like '%s' (known: %s)", opt_like, like_names());
    if (prepare_out(out, &err) || like_write(out, opt_like, &o, &st, &err)) {
        qm_report(prog, err);
        int code = qm_exit_code(err);
        g_error_free(err);
        return code;
    }
    double secs = qm_monotonic() - t0;
    if (opt_json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "out", st.where);
        cJSON_AddStringToObject(j, "like", opt_like);
        cJSON_AddNumberToObject(j, "tensors", st.tensors);
        cJSON_AddNumberToObject(j, "shards", st.shards);
        cJSON_AddNumberToObject(j, "file_bytes", (double)st.logical_bytes);
        cJSON_AddNumberToObject(j, "filled_bytes", (double)st.filled_bytes);
        cJSON_AddBoolToObject(j, "tokenizer", opt_tokenizer != NULL);
        cJSON_AddNumberToObject(j, "seconds", secs);
        qm_json_out(j, 0);
    } else {
        char hb[32], fb[32];
        printf("%s: %s replica, %d tensors in %d shards, %s (%" G_GUINT64_FORMAT
               " bytes) of which %s patterns, the rest holes; %s in %.2f s\n", st.where,
               opt_like, st.tensors, st.shards, qm_human_bytes(st.logical_bytes, hb, sizeof hb),
               st.logical_bytes, qm_human_bytes(st.filled_bytes, fb, sizeof fb),
               opt_tokenizer ? "tokenizer" : "no tokenizer (--tokenizer DIR)", secs);
    }
    g_free(st.where);
    return 0;
}

/* --coherent: the sizes are the construction's own (mksample_coherent.c). */
static int write_coherent(const char *out)
{
    GError *err = NULL;
    coh_stats st;
    const char *lt = opt_layout ? opt_layout : "qwen3_omni_moe";
    double t0 = qm_monotonic();
    if (prepare_out(out, &err) || coherent_write(out, lt, &st, &err)) {
        qm_report(prog, err);
        int code = qm_exit_code(err);
        g_error_free(err);
        return code;
    }
    double secs = qm_monotonic() - t0;
    if (opt_json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "out", out);
        cJSON_AddStringToObject(j, "layout", lt);
        cJSON_AddNumberToObject(j, "layers", st.layers);
        cJSON_AddNumberToObject(j, "experts", st.experts);
        cJSON_AddNumberToObject(j, "hidden", st.hidden);
        cJSON_AddNumberToObject(j, "moe_intermediate_size", st.inter);
        cJSON_AddNumberToObject(j, "vocab_size", st.vocab);
        cJSON_AddNumberToObject(j, "tokens", st.n_tokens);
        cJSON_AddNumberToObject(j, "corpus_tokens", st.n_words);
        cJSON_AddNumberToObject(j, "min_margin", st.min_margin);
        cJSON_AddNumberToObject(j, "min_break_margin", st.min_break);
        cJSON_AddNumberToObject(j, "min_masked_margin", st.min_masked);
        cJSON_AddNumberToObject(j, "perplexity", st.ppl);
        cJSON_AddNumberToObject(j, "perplexity_masked", st.ppl_masked);
        cJSON_AddNumberToObject(j, "seconds", secs);
        qm_json_out(j, 0);
    } else {
        printf("%s: coherent %s, %d layers x %d experts, %d corpus tokens; logit margins: "
               "healthy >= %.1f, one expert lost >= %.1f, router masked to 0-7 >= %.1f; "
               "reference perplexity %.3f (masked %.3g) in %.2f s\n",
               out, lt, st.layers, st.experts, st.n_words, st.min_margin, st.min_break,
               st.min_masked, st.ppl, st.ppl_masked, secs);
    }
    return 0;
}

int main(int argc, char **argv)
{
    GError *err = NULL;
    GOptionContext *ctx = g_option_context_new("OUT");
    g_option_context_set_summary(ctx, summary_text);
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (qm_options_parse(ctx, &argc, &argv, NULL, &err)) {
        /* freed first: exit() from usage_error would leave them to LeakSanitizer */
        g_option_context_free(ctx);
        qm_usage_error(prog, "%s", err->message);
        g_error_free(err);
        return 2;
    }
    g_option_context_free(ctx);
    if (opt_version) {
        printf("%s %s\n", prog, QMOE_VERSION);
        return 0;
    }
    if (opt_list) {
        list_layouts();
        return 0;
    }
    if (opt_print_prompts || opt_print_reference) {
        char *text = opt_print_prompts ? coherent_prompts_jsonl() : coherent_reference_text();
        fputs(text, stdout);
        g_free(text);
        return 0;
    }
    if (argc != 2)
        usage_error(argc < 2 ? "missing OUT directory" : "too many arguments");
    const char *out = argv[1];
    if (opt_like && opt_coherent)
        usage_error("--like and --coherent exclude each other");
    if ((opt_like || opt_coherent) && (opt_fp8 || opt_fp8_block || opt_fp8_scale || opt_rope))
        usage_error("--fp8, --fp8-block, --fp8-scale and --rope go with a sized sample "
                    "(not --like or --coherent)");
    if (!opt_like && (opt_fill_layers || opt_fill_routers || opt_fill_globals ||
                      opt_tokenizer || opt_hf_cache))
        usage_error("--fill-layers, --fill-routers, --fill-globals, --tokenizer and "
                    "--hf-cache go with --like");
    if (opt_like)
        return write_like(out);
    if (opt_coherent)
        return write_coherent(out);

    ms_opts o = {0};
    o.lt = layout_find(opt_layout ? opt_layout : "qwen3_omni_moe");
    if (!o.lt)
        usage_error("unknown layout '%s' (known layouts: %s)", opt_layout, layout_names());
    o.layers = in_range("--layers", opt_layers, 1, 100000);
    o.experts = in_range("--experts", opt_experts, 1, 65536);
    o.hidden = in_range("--hidden", opt_hidden, 1, 1 << 20);
    o.inter = in_range("--inter", opt_inter, 1, 1 << 20);
    o.heads = in_range("--heads", opt_heads, 1, 4096);
    o.kv_heads = in_range("--kv-heads", opt_kv_heads, 1, o.heads);
    o.topk = in_range("--topk", opt_topk, 1, o.experts);
    if (o.heads % o.kv_heads)
        usage_error("--heads %d is not a multiple of --kv-heads %d", o.heads, o.kv_heads);
    if (!opt_head_dim && o.hidden % o.heads)
        usage_error("--hidden %d is not a multiple of --heads %d; give --head-dim",
                    o.hidden, o.heads);
    o.head_dim = opt_head_dim ? opt_head_dim : o.hidden / o.heads;
    in_range("--head-dim", o.head_dim, 2, 1 << 16);
    if (o.head_dim % 2)
        usage_error("--head-dim must be even (rotary embeddings rotate pairs), not %d",
                    o.head_dim);
    if (!strcmp(o.lt->name, "olmoe") && o.head_dim * o.heads != o.hidden)
        usage_error("olmoe has no head_dim in its config: --head-dim must be "
                    "hidden/heads (%d/%d)", o.hidden, o.heads);
    o.vocab = in_range("--vocab", opt_vocab, ms_tok_min_vocab(&o), 1 << 24);
    if (o.lt->partial_rotary && o.head_dim % 4)
        usage_error("%s rotates half of each head (partial_rotary_factor 0.5): --head-dim "
                    "must be a multiple of 4, not %d", o.lt->name, o.head_dim);
    /* first_k_dense_replace 1, as DeepSeek-V3's sample and GLM-4.5-Air */
    o.n_dense = (!strcmp(o.lt->name, "deepseek_v3") || !strcmp(o.lt->name, "glm4_moe")) &&
                o.layers > 1 ? 1 : 0;
    if (opt_shards && opt_shard_mb)
        usage_error("--shards and --shard-mb exclude each other");
    int n_shards = opt_shards ? in_range("--shards", opt_shards, 1, 99999) : 3;
    uint64_t shard_bytes = opt_shard_mb ?
        (uint64_t)in_range("--shard-mb", opt_shard_mb, 1, 1 << 30) * 1000000 : 0;
    o.seed = 1;
    if (opt_seed) {
        char *end;
        errno = 0;
        o.seed = g_ascii_strtoull(opt_seed, &end, 0);
        if (errno || !*opt_seed || *end || *opt_seed == '-')
            usage_error("--seed wants a non-negative integer, not '%s'", opt_seed);
    }
    const char *dt = opt_dtype ? opt_dtype : "bf16";
    if (!strcmp(dt, "bf16"))
        o.dtype = ST_BF16;
    else if (!strcmp(dt, "f16"))
        o.dtype = ST_F16;
    else if (!strcmp(dt, "f32"))
        o.dtype = ST_F32;
    else
        usage_error("--dtype must be bf16, f16 or f32, not '%s'", dt);

    if (!opt_fp8 && (opt_fp8_block || opt_fp8_scale))
        usage_error("--fp8-block and --fp8-scale go with --fp8");
    if (opt_fp8) {
        if (o.lt->fused || !strcmp(o.lt->name, "qwen3_omni_moe"))
            usage_error("--fp8 is for layouts with one tensor per expert projection outside "
                        "Omni (block-scaled FP8 weights are 2-D), not %s", o.lt->name);
        o.fp8 = 1;
        o.fp8_block[0] = o.fp8_block[1] = 128;
        if (opt_fp8_block) {
            char *end;
            long r = strtol(opt_fp8_block, &end, 10), c = r;
            if (*end == 'x' && end > opt_fp8_block)
                c = strtol(end + 1, &end, 10);
            if (*end || end == opt_fp8_block || r < 1 || c < 1 || r > 65536 || c > 65536)
                usage_error("--fp8-block wants N or ROWSxCOLS in 1..65536, not '%s'",
                            opt_fp8_block);
            o.fp8_block[0] = (int)r;
            o.fp8_block[1] = (int)c;
        }
        const char *sc = opt_fp8_scale ? opt_fp8_scale
                         : !strcmp(o.lt->name, "deepseek_v3") ? "f32" : "bf16";
        if (!strcmp(sc, "f32"))
            o.fp8_scale = ST_F32;
        else if (!strcmp(sc, "bf16"))
            o.fp8_scale = ST_BF16;
        else
            usage_error("--fp8-scale must be f32 or bf16, not '%s'", sc);
    }
    if (opt_rope && !strcmp(opt_rope, "yarn")) {
        if (!strcmp(o.lt->name, "qwen3_omni_moe"))
            usage_error("--rope yarn: qwen3_omni_moe uses M-RoPE (rope_scaling holds its "
                        "sections); choose another layout");
        o.yarn = 1;
    } else if (opt_rope && strcmp(opt_rope, "default"))
        usage_error("--rope must be default or yarn, not '%s'", opt_rope);

    ms_tok tok;
    ms_tok_ids(&o, &tok);
    cJSON *tj = ms_tokenizer_json(&o, &tok);
    if (!tj) {
        fprintf(stderr, "%s: internal error: inconsistent merge table\n", prog);
        return 2;
    }
    double t0 = qm_monotonic();
    if (prepare_out(out, &err)) {
        cJSON_Delete(tj);
        qm_report(prog, err);
        return qm_exit_code(err);
    }

    GArray *plan = g_array_new(FALSE, TRUE, sizeof(ms_tensor));
    ms_plan_build(&o, plan);
    int n_out = assign_shards(plan, n_shards, shard_bytes);
    uint64_t total = 0;
    for (guint i = 0; i < plan->len; i++)
        total += g_array_index(plan, ms_tensor, i).nbytes;

    ms_tables tabs[ST_DTYPE_COUNT] = {0}; /* by dtype, the ones the plan uses */
    for (guint i = 0; i < plan->len; i++) {
        st_dtype d = g_array_index(plan, ms_tensor, i).dtype;
        if (!tabs[d].tab[0])
            tables_init(&tabs[d], d);
    }
    ms_tensor **ts = g_new(ms_tensor *, plan->len);
    int rc = 0;
    uint64_t file_bytes = 0;
    for (int k = 0, i = 0; k < n_out && !rc; k++) {
        int n = 0;
        for (; i < (int)plan->len && g_array_index(plan, ms_tensor, i).shard == k; i++)
            ts[n++] = &g_array_index(plan, ms_tensor, i);
        char *name = shard_name(k, n_out);
        char *path = g_build_filename(out, name, NULL);
        rc = write_shard(path, ts, n, o.seed, tabs, &err);
        if (!rc)
            file_bytes += (uint64_t)fs_file_size(path);
        g_free(path);
        g_free(name);
    }
    g_free(ts);
    for (int d = 0; d < ST_DTYPE_COUNT; d++)
        tables_free(&tabs[d]);

    if (!rc && n_out > 1)
        rc = write_index(out, plan, n_out, total, &err);
    if (!rc)
        rc = write_json(out, "config.json", ms_config_json(&o, &tok), &err);
    if (!rc)
        rc = write_json(out, "generation_config.json",
                        ms_generation_config_json(&o, &tok), &err);
    if (!rc)
        rc = write_json(out, "tokenizer.json", tj, &err);
    else
        cJSON_Delete(tj);
    if (!rc)
        rc = write_json(out, "tokenizer_config.json",
                        ms_tokenizer_config_json(&o, &tok), &err);
    int n_tensors = (int)plan->len;
    ms_plan_free(plan);
    if (rc) {
        qm_report(prog, err);
        int code = qm_exit_code(err);
        g_error_free(err);
        return code;
    }

    double secs = qm_monotonic() - t0;
    double mbps = secs > 0 ? file_bytes / 1e6 / secs : 0;
    if (opt_json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "out", out);
        cJSON_AddStringToObject(j, "layout", o.lt->name);
        cJSON_AddNumberToObject(j, "layers", o.layers);
        cJSON_AddNumberToObject(j, "experts", o.experts);
        cJSON_AddNumberToObject(j, "tensors", n_tensors);
        cJSON_AddNumberToObject(j, "shards", n_out);
        cJSON_AddNumberToObject(j, "tensor_bytes", (double)total);
        cJSON_AddNumberToObject(j, "file_bytes", (double)file_bytes);
        cJSON_AddNumberToObject(j, "seconds", secs);
        cJSON_AddNumberToObject(j, "mb_per_s", mbps);
        qm_json_out(j, 0);
    } else {
        char hb[32];
        printf("%s: %s, %d layers x %d experts, %d tensors in %d shard%s, %s in %.2f s "
               "(%.0f MB/s)\n", out, o.lt->name, o.layers, o.experts, n_tensors, n_out,
               n_out == 1 ? "" : "s", qm_human_bytes(file_bytes, hb, sizeof hb), secs, mbps);
    }
    return 0;
}
