/* qmoe-run - run the reference forward pass on a checkpoint or an
 * extracted OUT: generate from a prompt of token ids, write the prompt's
 * logits and the router's choices, restrict the router, bound the expert
 * cache. Exit 0 ok, 2 usage or I/O error (a missing expert file too). */
#include "expert_store.h"
#include "fs.h"
#include "model.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static gchar *opt_token_ids, *opt_logits_out, *opt_router_log, *opt_mask, *opt_expert_io;
static gint opt_n = 16, opt_threads, opt_cache_mb = 4096;
static gdouble opt_temperature;
static gint64 opt_seed = -1;
static gboolean opt_json, opt_version, opt_ignore_eos;

static GOptionEntry entries[] = {
    {"token-ids", 0, 0, G_OPTION_ARG_STRING, &opt_token_ids,
     "prompt as comma-separated token ids", "LIST"},
    {"n", 'n', 0, G_OPTION_ARG_INT, &opt_n, "new tokens to generate (default 16)", "N"},
    {"temperature", 0, 0, G_OPTION_ARG_DOUBLE, &opt_temperature,
     "sample at temperature T (default 0: greedy)", "T"},
    {"seed", 0, 0, G_OPTION_ARG_INT64, &opt_seed,
     "random seed for sampling (default: from the clock, shown in --json)", "S"},
    {"ignore-eos", 0, 0, G_OPTION_ARG_NONE, &opt_ignore_eos,
     "do not stop at the end-of-sequence ids of generation_config.json", NULL},
    {"mask-experts", 0, 0, G_OPTION_ARG_STRING, &opt_mask,
     "restrict the router to these experts, e.g. 0-7", "LIST"},
    {"cache-mb", 0, 0, G_OPTION_ARG_INT, &opt_cache_mb,
     "expert cache size in MiB (default 4096; at least one expert is held)", "N"},
    {"expert-io", 0, 0, G_OPTION_ARG_STRING, &opt_expert_io,
     "how a cache miss brings an expert in: map (default) or read", "map|read"},
    {"router-log", 0, 0, G_OPTION_ARG_FILENAME, &opt_router_log,
     "write the chosen experts and weights per token and layer (JSON lines)", "FILE"},
    {"logits-out", 0, 0, G_OPTION_ARG_FILENAME, &opt_logits_out,
     "write the prompt's logits, little-endian float32 [tokens x vocab]", "FILE"},
    {"threads", 'j', 0, G_OPTION_ARG_INT, &opt_threads,
     "threads (default: all processors)", "N"},
    {"json", 0, 0, G_OPTION_ARG_NONE, &opt_json,
     "print a machine-readable summary on stdout", NULL},
    {"version", 0, 0, G_OPTION_ARG_NONE, &opt_version, "print the version", NULL},
    {NULL, 0, 0, 0, NULL, NULL, NULL},
};

static const char summary[] =
    "Runs the reference forward pass of a Qwen3-MoE / Qwen3-Omni thinker text\n"
    "model on MODEL (an extracted OUT or an original checkpoint directory).\n"
    "Routed experts are read on demand through a cache of --cache-mb.\n"
    "Prints the generated token ids (comma-separated) on stdout and expert\n"
    "cache statistics on stderr.\n"
    "\n"
    "Exit status: 0 ok, 2 usage or I/O error (including a missing expert file).";

typedef struct {
    model *m;
    fs_out *router_out;
    GString *line;
    GError *router_err;  /* first write error of the router log */
} run_ctx;

static void router_line(void *user, int pos, int token, int layer, int k,
                        const int *experts, const float *weights)
{
    run_ctx *rc = user;
    if (rc->router_err)
        return;
    GString *s = rc->line;
    g_string_printf(s, "{\"pos\":%d,\"token\":%d,\"layer\":%d,\"experts\":[", pos, token, layer);
    for (int i = 0; i < k; i++)
        g_string_append_printf(s, "%s%d", i ? "," : "", experts[i]);
    g_string_append(s, "],\"weights\":[");
    for (int i = 0; i < k; i++)
        g_string_append_printf(s, "%s%.9g", i ? "," : "", weights[i]);
    g_string_append(s, "]}\n");
    fs_out_write(rc->router_out, s->str, s->len, &rc->router_err);
}

/* "1,2, 3" -> ids. */
static int *parse_ids(const char *list, int *n, GError **err)
{
    gchar **parts = g_strsplit(list, ",", -1);
    int count = (int)g_strv_length(parts);
    int *ids = g_new(int, count > 0 ? count : 1);
    *n = 0;
    for (int i = 0; i < count; i++) {
        const char *p = g_strstrip(parts[i]);
        char *end;
        long v = strtol(p, &end, 10);
        if (!*p || *end || v < 0 || v > INT32_MAX) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "--token-ids: '%s' is not a token id", p);
            g_strfreev(parts);
            g_free(ids);
            return NULL;
        }
        ids[(*n)++] = (int)v;
    }
    g_strfreev(parts);
    if (*n == 0) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "--token-ids: the list is empty");
        g_free(ids);
        return NULL;
    }
    return ids;
}

/* End-of-sequence ids from generation_config.json, else config.json. */
static int stop_ids(model *m, int *out, int cap)
{
    ckpt *ck = model_checkpoint(m);
    const cJSON *e = ck->generation_config
                         ? cJSON_GetObjectItemCaseSensitive(ck->generation_config, "eos_token_id")
                         : NULL;
    if (!e && ck->config)
        e = cJSON_GetObjectItemCaseSensitive(ck->config, "eos_token_id");
    int n = 0;
    uint64_t v;
    if (cJSON_IsArray(e)) {
        const cJSON *x;
        cJSON_ArrayForEach(x, e)
            if (n < cap && qm_json_uint(x, &v) && v < INT32_MAX)
                out[n++] = (int)v;
    } else if (e && qm_json_uint(e, &v) && v < INT32_MAX) {
        out[n++] = (int)v;
    }
    return n;
}

static int write_logits(const char *path, float *logits, size_t n, GError **err)
{
#if G_BYTE_ORDER == G_BIG_ENDIAN
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &logits[i], 4);
        u = GUINT32_SWAP_LE_BE(u);
        memcpy(&logits[i], &u, 4);
    }
#endif
    return fs_write_atomic(path, logits, n * sizeof(float), err);
}

static void print_stats(run_ctx *rc, const model_gen_stats *gs, int n_prompt)
{
    expert_store *st = model_experts(rc->m);
    const model_config *c = model_get_config(rc->m);
    char b1[32], b2[32], b3[32];
    if (st) {
        expert_stats s;
        expert_store_stats(st, &s);
        uint64_t asks = s.hits + s.misses;
        fprintf(stderr,
                "qmoe-run: experts: %" G_GUINT64_FORMAT " hits, %" G_GUINT64_FORMAT
                " misses (%.1f %% hits), %" G_GUINT64_FORMAT " evictions, %s read; cache "
                "%s of %s\n",
                s.hits, s.misses, asks ? 100.0 * s.hits / asks : 0.0, s.evictions,
                qm_human_bytes(s.bytes_read, b1, sizeof b1),
                qm_human_bytes(s.peak_bytes, b2, sizeof b2),
                qm_human_bytes(s.cache_limit, b3, sizeof b3));
        fprintf(stderr, "qmoe-run: distinct experts per layer:");
        for (int l = 0; l < c->n_layers; l++)
            if (c->is_moe[l])
                fprintf(stderr, " %d", expert_store_distinct(st, l));
        fprintf(stderr, " (of %d)\n", c->n_experts);
    }
    fprintf(stderr, "qmoe-run: prompt %d tokens in %.3f s; %d decode steps in %.3f s "
            "(%.2f tokens/s)\n", n_prompt, gs->prefill_s, gs->decode_steps, gs->decode_s,
            gs->decode_s > 0 ? gs->decode_steps / gs->decode_s : 0.0);
}

static void print_json(run_ctx *rc, const int *ids, int n_prompt, const int *gen,
                       int n_gen, const model_gen_stats *gs, uint64_t seed)
{
    const model_config *c = model_get_config(rc->m);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "layout", model_layout(rc->m)->name);
    cJSON_AddItemToObject(j, "prompt_ids", cJSON_CreateIntArray(ids, n_prompt));
    cJSON_AddItemToObject(j, "generated_ids", cJSON_CreateIntArray(gen, n_gen));
    cJSON_AddNumberToObject(j, "temperature", opt_temperature);
    if (opt_temperature > 0)
        cJSON_AddNumberToObject(j, "seed", (double)seed);
    cJSON_AddStringToObject(j, "mask_experts", opt_mask ? opt_mask : "");
    cJSON_AddStringToObject(j, "expert_io", opt_expert_io ? opt_expert_io : "map");
    cJSON_AddNumberToObject(j, "threads", opt_threads);
    cJSON *t = cJSON_AddObjectToObject(j, "timing");
    cJSON_AddNumberToObject(t, "prefill_s", gs->prefill_s);
    cJSON_AddNumberToObject(t, "decode_s", gs->decode_s);
    cJSON_AddNumberToObject(t, "decode_steps", gs->decode_steps);
    cJSON_AddNumberToObject(t, "decode_tokens_per_s",
                            gs->decode_s > 0 ? gs->decode_steps / gs->decode_s : 0);
    cJSON_AddNumberToObject(t, "decode_weight_bytes", (double)gs->decode_weight_bytes);
    expert_store *st = model_experts(rc->m);
    if (st) {
        expert_stats s;
        expert_store_stats(st, &s);
        cJSON *e = cJSON_AddObjectToObject(j, "experts");
        cJSON_AddNumberToObject(e, "hits", (double)s.hits);
        cJSON_AddNumberToObject(e, "misses", (double)s.misses);
        cJSON_AddNumberToObject(e, "evictions", (double)s.evictions);
        cJSON_AddNumberToObject(e, "bytes_read", (double)s.bytes_read);
        cJSON_AddNumberToObject(e, "cache_limit_bytes", (double)s.cache_limit);
        cJSON_AddNumberToObject(e, "cache_peak_bytes", (double)s.peak_bytes);
        cJSON_AddNumberToObject(e, "resident", s.resident);
        cJSON *d = cJSON_AddArrayToObject(e, "distinct_per_layer");
        for (int l = 0; l < c->n_layers; l++)
            if (c->is_moe[l])
                cJSON_AddItemToArray(d, cJSON_CreateNumber(expert_store_distinct(st, l)));
    }
    char *s = cJSON_Print(j);
    printf("%s\n", s);
    free(s);
    cJSON_Delete(j);
}

/* The prompt-driven part of a run: given token ids (from --token-ids now;
 * a tokenizer's --prompt/--chat later), generate, write the logits and
 * print the result. Returns 0 or -1 with *err set. */
static int run_ids(run_ctx *rc, const int *ids, int n_prompt, GError **err)
{
    const model_config *c = model_get_config(rc->m);
    int stops[16], n_stop = opt_ignore_eos ? 0 : stop_ids(rc->m, stops, 16);
    uint64_t seed = opt_seed >= 0 ? (uint64_t)opt_seed : (uint64_t)(qm_now() * 1e6);
    model_sampling smp = {.temperature = (float)opt_temperature, .seed = seed,
                          .stop_ids = stops, .n_stop = n_stop};
    float *logits = NULL;
    if (opt_logits_out) {
        logits = g_try_new(float, (size_t)n_prompt * c->vocab);
        if (!logits) {
            g_set_error(err, QM_ERROR, QM_ERR_NOSPACE,
                        "cannot hold the logits of %d tokens x %d", n_prompt, c->vocab);
            return -1;
        }
    }
    int *gen = g_new(int, opt_n > 0 ? opt_n : 1), n_gen = 0;
    model_gen_stats gs;
    int rv = model_generate(rc->m, ids, n_prompt, opt_n, &smp, logits, gen, &n_gen, &gs, err);
    if (rv == 0 && rc->router_err) {
        g_propagate_error(err, rc->router_err);
        rc->router_err = NULL;
        rv = -1;
    }
    if (rv == 0 && logits)
        rv = write_logits(opt_logits_out, logits, (size_t)n_prompt * c->vocab, err);
    if (rv == 0) {
        if (opt_json) {
            print_json(rc, ids, n_prompt, gen, n_gen, &gs, seed);
        } else {
            for (int i = 0; i < n_gen; i++)
                printf("%s%d", i ? "," : "", gen[i]);
            printf("\n");
        }
        print_stats(rc, &gs, n_prompt);
    }
    g_free(gen);
    g_free(logits);
    return rv;
}

int main(int argc, char **argv)
{
    GError *err = NULL;
    GOptionContext *ctx = g_option_context_new("MODEL");
    g_option_context_set_summary(ctx, summary);
    g_option_context_add_main_entries(ctx, entries, NULL);
    int rv = 2;
    run_ctx rc = {0};
    int *ids = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "qmoe-run: %s (see qmoe-run --help)\n", err->message);
        g_clear_error(&err);
        goto out;
    }
    if (opt_version) {
        printf("qmoe-run %s\n", QMOE_VERSION);
        rv = 0;
        goto out;
    }
    if (argc != 2) {
        fprintf(stderr, "qmoe-run: %s (see qmoe-run --help)\n",
                argc < 2 ? "give the MODEL directory" : "give one MODEL directory");
        goto out;
    }
    if (!opt_token_ids) {
        fprintf(stderr, "qmoe-run: give the prompt with --token-ids LIST\n");
        goto out;
    }
    if (opt_n < 0 || opt_cache_mb < 0 || opt_threads < 0 || opt_temperature < 0) {
        fprintf(stderr, "qmoe-run: -n, --cache-mb, -j and --temperature cannot be negative\n");
        goto out;
    }
    expert_io io = EXPERT_IO_MAP;
    if (opt_expert_io && strcmp(opt_expert_io, "read") == 0) {
        io = EXPERT_IO_READ;
    } else if (opt_expert_io && strcmp(opt_expert_io, "map") != 0) {
        fprintf(stderr, "qmoe-run: --expert-io: '%s' is neither map nor read\n", opt_expert_io);
        goto out;
    }
    if (opt_threads == 0)
        opt_threads = (int)g_get_num_processors();
    int n_prompt = 0;
    if (!(ids = parse_ids(opt_token_ids, &n_prompt, &err)))
        goto fail;
    model_opts mo = {.n_threads = opt_threads,
                     .cache_bytes = opt_cache_mb ? (uint64_t)opt_cache_mb << 20 : 1,
                     .max_seq = n_prompt + opt_n, .expert_io = io};
    if (!(rc.m = model_load(argv[1], &mo, &err)))
        goto fail;
    const model_config *c = model_get_config(rc.m);
    for (int i = 0; i < n_prompt; i++)
        if (ids[i] >= c->vocab) {
            g_set_error(&err, QM_ERROR, QM_ERR_USAGE,
                        "--token-ids: %d is outside the vocabulary [0, %d)", ids[i], c->vocab);
            goto fail;
        }
    if (opt_mask) {
        if (!model_experts(rc.m)) {
            g_set_error(&err, QM_ERROR, QM_ERR_USAGE,
                        "--mask-experts: '%s' has no routed experts", argv[1]);
            goto fail;
        }
        uint8_t *allow = g_new0(uint8_t, c->n_experts);
        int bad = qm_list_parse(opt_mask, c->n_experts, allow, "--mask-experts", &err) ||
                  model_set_mask(rc.m, allow, &err);
        g_free(allow);
        if (bad)
            goto fail;
    }
    if (opt_router_log) {
        if (!(rc.router_out = fs_out_open(opt_router_log, &err)))
            goto fail;
        rc.line = g_string_sized_new(256);
        model_set_router_log(rc.m, router_line, &rc);
    }
    if (run_ids(&rc, ids, n_prompt, &err) != 0)
        goto fail;
    if (rc.router_out) {
        fs_out *o = rc.router_out;
        rc.router_out = NULL;
        if (fs_out_commit(o, &err) != 0)
            goto fail;
    }
    rv = 0;
    goto out;
fail:
    qm_report("qmoe-run", err);
    rv = qm_exit_code(err);
    g_clear_error(&err);
out:
    fs_out_abort(rc.router_out);
    if (rc.line)
        g_string_free(rc.line, TRUE);
    g_clear_error(&rc.router_err);
    model_free(rc.m);
    g_free(ids);
    g_option_context_free(ctx);
    g_free(opt_token_ids);
    g_free(opt_logits_out);
    g_free(opt_router_log);
    g_free(opt_mask);
    g_free(opt_expert_io);
    return rv;
}
