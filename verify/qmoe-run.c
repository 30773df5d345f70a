/* qmoe-run - run the reference forward pass on a checkpoint or an
 * extracted OUT: generate from a text prompt (plain or ChatML) or from token
 * ids, score a text's perplexity, write the prompt's logits and the
 * router's choices, restrict the router, bound the expert cache; and
 * tokenize or detokenize with the model's tokenizer alone.
 * Exit 0 ok, 2 usage or I/O error (a missing expert file too). */
#include "text/chat.h"
#include "model/expert_store.h"
#include "base/fs.h"
#include "base/json.h"
#include "model/model.h"
#include "analysis/expert_plan.h"
#include "analysis/perplexity.h"
#include "text/tokenizer.h"
#include "base/util.h"
#include "cli/cli.h"
#include "run_stats.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static gchar *opt_token_ids, *opt_logits_out, *opt_router_log, *opt_mask, *opt_expert_io;
static gchar *opt_prompt, *opt_perplexity, *opt_router_stats, *opt_report;
static gchar *opt_keep_experts, *opt_by, *opt_plan_out;
static gint opt_keep;
static gint opt_n = 16, opt_threads, opt_cache_mb = 4096, opt_context = PPL_DEFAULT_CONTEXT;
static gint opt_batch;
static gdouble opt_temperature;
static gint64 opt_seed = -1;
static gboolean opt_json, opt_version, opt_ignore_eos, opt_chat, opt_tokenize, opt_detokenize,
    opt_jsonl;

static GOptionEntry entries[] = {
    /* FILENAME: the bytes as given. STRING would convert from the locale's
     * charset, which without setlocale is ASCII: "fährt" was refused. The
     * tokenizer checks that the text is UTF-8. */
    {"prompt", 0, 0, G_OPTION_ARG_FILENAME, &opt_prompt,
     "Prompt text, tokenized with the model's tokenizer; prints the generated text", "TEXT"},
    {"chat", 0, 0, G_OPTION_ARG_NONE, &opt_chat,
     "Wrap --prompt in a ChatML user turn and stop at the end of the answer", NULL},
    {"token-ids", 0, 0, G_OPTION_ARG_STRING, &opt_token_ids,
     "Prompt as comma-separated token ids; prints the generated ids", "LIST"},
    {"n", 'n', 0, G_OPTION_ARG_INT, &opt_n, "New tokens to generate (default 16)", "N"},
    {"temperature", 0, 0, G_OPTION_ARG_DOUBLE, &opt_temperature,
     "Sample at temperature T (default 0: greedy)", "T"},
    {"seed", 0, 0, G_OPTION_ARG_INT64, &opt_seed,
     "Random seed for sampling (default: from the clock, shown in --json)", "S"},
    {"ignore-eos", 0, 0, G_OPTION_ARG_NONE, &opt_ignore_eos,
     "Do not stop at end-of-sequence (or, with --chat, end-of-turn) ids", NULL},
    {"perplexity", 0, 0, G_OPTION_ARG_FILENAME, &opt_perplexity,
     "Print the perplexity and mean negative log-likelihood of the text in FILE", "FILE"},
    {"context", 0, 0, G_OPTION_ARG_INT, &opt_context,
     "--perplexity window in tokens (default 1024)", "N"},
    {"router-stats", 0, 0, G_OPTION_ARG_FILENAME, &opt_router_stats,
     "Count the router's picks per domain over CORPUS (JSON lines {domain, text})",
     "CORPUS"},
    {"report", 0, 0, G_OPTION_ARG_FILENAME, &opt_report,
     "--router-stats: also write an HTML report with SVG heatmaps to DIR/index.html", "DIR"},
    {"tokenize", 0, 0, G_OPTION_ARG_NONE, &opt_tokenize,
     "Print the ids of the text on stdin as a JSON array (no weights needed)", NULL},
    {"detokenize", 0, 0, G_OPTION_ARG_NONE, &opt_detokenize,
     "Print the text of the JSON array of ids on stdin (no weights needed)", NULL},
    {"jsonl", 0, 0, G_OPTION_ARG_NONE, &opt_jsonl,
     "--tokenize/--detokenize: one JSON string (or array) per input and output line", NULL},
    {"mask-experts", 0, 0, G_OPTION_ARG_STRING, &opt_mask,
     "Restrict the router to these experts, e.g. 0-7", "LIST"},
    {"keep-experts", 0, 0, G_OPTION_ARG_FILENAME, &opt_keep_experts,
     "Restrict each layer's router to an expert plan ({\"keep\": {\"LAYER\": [E, ...]}})",
     "PLAN"},
    {"keep", 0, 0, G_OPTION_ARG_INT, &opt_keep,
     "--router-stats: write a plan keeping the N best experts of each MoE layer", "N"},
    {"by", 0, 0, G_OPTION_ARG_STRING, &opt_by,
     "--keep: rank experts by frequency (default), weight or reap", "CRITERION"},
    {"plan-out", 0, 0, G_OPTION_ARG_FILENAME, &opt_plan_out,
     "--keep: the plan file to write", "PLAN"},
    {"cache-mb", 0, 0, G_OPTION_ARG_INT, &opt_cache_mb,
     "Expert cache size in MiB (default 4096; at least one expert is held)", "N"},
    {"batch", 0, 0, G_OPTION_ARG_INT, &opt_batch,
     "Prompt tokens per prefill micro-batch (default 256; 1: one by one)", "N"},
    {"expert-io", 0, 0, G_OPTION_ARG_STRING, &opt_expert_io,
     "How a cache miss brings an expert in: map (default) or read", "map|read"},
    {"router-log", 0, 0, G_OPTION_ARG_FILENAME, &opt_router_log,
     "Write the chosen experts and weights per token and layer (JSON lines)", "FILE"},
    {"logits-out", 0, 0, G_OPTION_ARG_FILENAME, &opt_logits_out,
     "Write the prompt's logits, little-endian float32 [tokens x vocab]", "FILE"},
    {"jobs", 'j', 0, G_OPTION_ARG_INT, &opt_threads,
     "Threads (default: all processors)", "N"},
    /* the spelling before -j/--jobs was the same in every tool */
    {"threads", 0, G_OPTION_FLAG_HIDDEN, G_OPTION_ARG_INT, &opt_threads,
     "Same as --jobs", "N"},
    {"json", 0, 0, G_OPTION_ARG_NONE, &opt_json,
     "Print a machine-readable summary on stdout", NULL},
    {"version", 0, 0, G_OPTION_ARG_NONE, &opt_version, "Print the version", NULL},
    {NULL, 0, 0, 0, NULL, NULL, NULL},
};

static const char summary[] =
    "Runs the reference forward pass of a Qwen3-MoE / Qwen3-Omni thinker text\n"
    "model on MODEL (an extracted OUT or an original checkpoint directory).\n"
    "Routed experts are read on demand through a cache of --cache-mb.\n"
    "\n"
    "One of:\n"
    "  --prompt TEXT      Generate from TEXT; the text is printed as it comes\n"
    "  --token-ids LIST   Generate from token ids; prints the generated ids\n"
    "  --perplexity FILE  Score the text in FILE\n"
    "  --router-stats CORPUS  Which experts each domain's tokens pick: load,\n"
    "                     mutual information (bits), purity, top experts with\n"
    "                     lift per layer (--report DIR: HTML with heatmaps)\n"
    "  --tokenize         Stdin text -> JSON array of ids (MODEL may be a\n"
    "  --detokenize       JSON array of ids -> text      tokenizer.json[.gz])\n"
    "Generation is greedy unless --temperature is given and stops at the\n"
    "end-of-sequence ids of generation_config.json; with --chat also at\n"
    "<|im_end|> and tokenizer_config.json's eos_token. Expert cache statistics\n"
    "and timing go to stderr.\n"
    "\n"
    "Exit status: 0 ok, 2 usage or I/O error (including a missing expert file\n"
    "or tokenizer, malformed input on stdin, an id outside the vocabulary).";

/* Token ids travel as int32_t (tokenizer) and int (model) arrays; they are
 * the same type on every platform we build for. */
G_STATIC_ASSERT(sizeof(int) == sizeof(int32_t));

typedef struct {
    model *m;
    tok_t *tok;          /* --prompt, --chat, --perplexity */
    fs_out *router_out;
    GString *line;
    GError *router_err;  /* first write error of the router log */
    GArray *stops;       /* int32_t ids that end a generation */
    tok_stream_t *stream;/* text mode: decodes generated ids as they come */
    GString *text;       /* the generated text (valid UTF-8), for --json */
    int gaps;            /* generated ids without a token (printed as placeholders) */
} run_ctx;

static void router_line(void *user, int seq, int pos, int token, int layer, int k,
                        const int *experts, const float *weights, const float *out_norms)
{
    (void)seq;
    (void)out_norms;
    run_ctx *rc = user;
    if (rc->router_err)
        return;
    GString *s = rc->line;
    run_router_log_line(s, -1, pos, token, layer, k, experts, weights);
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
        errno = 0;
        long v = strtol(p, &end, 10);
        if (!*p || *end || v < 0 || v > INT32_MAX || errno) {
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

static int is_stop(const run_ctx *rc, int id)
{
    for (guint i = 0; rc->stops && i < rc->stops->len; i++)
        if (g_array_index(rc->stops, int32_t, i) == id)
            return 1;
    return 0;
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

/* ---- JSON strings: texts may hold NUL bytes, and cJSON stops a string at
 * "\u0000", so their JSON is read and written by base/json.h. ---- */

/* Parses S[0..len) as exactly one JSON string (whitespace around it
 * allowed) into OUT. Returns 0, or -1 with *why set to the problem. */
static int json_str_parse(const char *s, size_t len, GString *out, const char **why)
{
    const char *p = s, *end = s + len;
    while (p < end && g_ascii_isspace(*p))
        p++;
    if (!(p = qm_json_get_str(p, end, out, why)))
        return -1;
    for (; p < end; p++)
        if (!g_ascii_isspace(*p)) {
            *why = "trailing characters after the JSON string";
            return -1;
        }
    return 0;
}

/* ---- --tokenize / --detokenize ---- */

static int read_stdin(GString *buf, GError **err)
{
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
        g_string_append_len(buf, chunk, (gssize)n);
    if (ferror(stdin))
        return qm_set_errno(err, errno, "cannot read", "stdin");
    return 0;
}

/* Appends ids as a compact JSON array. */
static void ids_append(GString *out, const GArray *ids)
{
    g_string_append_c(out, '[');
    for (guint i = 0; i < ids->len; i++)
        g_string_append_printf(out, "%s%d", i ? "," : "", g_array_index(ids, int32_t, i));
    g_string_append_c(out, ']');
}

/* "stdin" or "stdin line 3", for messages. */
static char *where(int line)
{
    return line ? g_strdup_printf("stdin line %d", line) : g_strdup("stdin");
}

/* Parses one JSON array of token ids, each in TOK's vocabulary. */
static int parse_id_array(const tok_t *tok, const char *s, size_t len, int line, GArray *ids,
                          GError **err)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(s, len, &end, 0);
    char *w = where(line);
    int rv = -1;
    if (!j) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "--detokenize: %s is not a JSON array of token ids: invalid JSON near "
                    "byte %zu", w, end ? (size_t)(end - s) : (size_t)0);
        goto out;
    }
    for (const char *p = end; p < s + len; p++)
        if (!g_ascii_isspace(*p)) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "--detokenize: %s: trailing characters after the JSON array at "
                        "byte %zu", w, (size_t)(p - s));
            goto out;
        }
    if (!cJSON_IsArray(j)) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "--detokenize: %s is not a JSON array of token ids", w);
        goto out;
    }
    const cJSON *x;
    int i = 0;
    cJSON_ArrayForEach(x, j) {
        uint64_t v;
        if (!qm_json_uint(x, &v)) {
            char *t = cJSON_PrintUnformatted(x);
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "--detokenize: %s: element %d (%.40s) is not a token id", w, i,
                        t ? t : "?");
            free(t);
            goto out;
        }
        if (v >= (uint64_t)tok_vocab_size(tok) || !tok_token_bytes(tok, (int32_t)v, NULL)) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "--detokenize: %s: id %" G_GUINT64_FORMAT " is outside the "
                        "tokenizer's vocabulary [0, %d)", w, v, tok_vocab_size(tok));
            goto out;
        }
        int32_t id = (int32_t)v;
        g_array_append_val(ids, id);
        i++;
    }
    rv = 0;
out:
    g_free(w);
    cJSON_Delete(j);
    return rv;
}

/* The text of ids as valid UTF-8 (incomplete or invalid sequences become
 * U+FFFD), for JSON output. */
static void decode_valid(const tok_t *tok, const GArray *ids, GString *out)
{
    tok_stream_t *st = tok_stream_new(tok);
    size_t n;
    for (guint i = 0; i < ids->len; i++) {
        const char *t = tok_stream_push(st, g_array_index(ids, int32_t, i), &n);
        g_string_append_len(out, t, (gssize)n);
    }
    const char *t = tok_stream_flush(st, &n);
    g_string_append_len(out, t, (gssize)n);
    tok_stream_free(st);
}

/* Encodes (ENCODE) or decodes one input: the whole of stdin (line 0) or
 * one JSONL line; appends the output line (or raw text) to OUT. */
static int convert_one(tok_t *tok, int encode, const char *s, size_t len, int line,
                       GString *out, GError **err)
{
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    int rv = -1;
    if (encode) {
        GString *text = NULL;
        if (line) {
            const char *why;
            text = g_string_new(NULL);
            if (json_str_parse(s, len, text, &why) != 0) {
                g_set_error(err, QM_ERROR, QM_ERR_USAGE, "--tokenize: stdin line %d: %s",
                            line, why);
                g_string_free(text, TRUE);
                goto out;
            }
            s = text->str;
            len = text->len;
        }
        GError *e = NULL;
        rv = tok_encode(tok, s, len, 0, ids, &e);
        if (text)
            g_string_free(text, TRUE);
        if (rv != 0) {
            char *w = where(line);
            g_set_error(err, QM_ERROR, QM_ERR_USAGE, "--tokenize: %s: %s", w, e->message);
            g_free(w);
            g_error_free(e);
            goto out;
        }
        ids_append(out, ids);
        g_string_append_c(out, '\n');
    } else {
        if (parse_id_array(tok, s, len, line, ids, err) != 0)
            goto out;
        if (line) {
            GString *text = g_string_new(NULL);
            decode_valid(tok, ids, text);
            qm_json_put_str_len(out, text->str, text->len);
            g_string_append_c(out, '\n');
            g_string_free(text, TRUE);
        } else {
            /* the exact bytes, so that detokenize(tokenize(text)) == text */
            size_t n;
            char *t = tok_decode(tok, (const int32_t *)(void *)ids->data, ids->len, &n);
            g_string_append_len(out, t, (gssize)n);
            g_free(t);
        }
    }
    rv = 0;
out:
    g_array_free(ids, TRUE);
    return rv;
}

/* --tokenize / --detokenize on stdin. Output is written only when all
 * input converted, so a failing batch leaves no partial result. */
static int convert_stdin(tok_t *tok, int encode, GError **err)
{
    GString *in = g_string_new(NULL), *out = g_string_new(NULL);
    int rv = read_stdin(in, err);
    if (rv == 0 && !opt_jsonl) {
        rv = convert_one(tok, encode, in->str, in->len, 0, out, err);
    } else if (rv == 0) {
        const char *p = in->str, *end = in->str + in->len;
        for (int line = 1; rv == 0 && p < end; line++) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *e = nl ? nl : end;
            size_t n = (size_t)(e - p);
            if (n && p[n - 1] == '\r')
                n--;
            rv = convert_one(tok, encode, p, n, line, out, err);
            p = nl ? nl + 1 : end;
        }
    }
    if (rv == 0 && (fwrite(out->str, 1, out->len, stdout) != out->len || fflush(stdout) != 0))
        rv = qm_set_errno(err, errno, "cannot write", "stdout");
    g_string_free(in, TRUE);
    g_string_free(out, TRUE);
    return rv;
}

/* ---- generation ---- */

/* model_sampling.on_token in text mode: print each token's text as soon
 * as it is complete UTF-8; the end-of-turn token itself is not shown. */
static int on_token(void *user, int token)
{
    run_ctx *rc = user;
    if (is_stop(rc, token))
        return 0;
    if (!tok_token_bytes(rc->tok, token, NULL) && rc->gaps++ == 0)
        fprintf(stderr, "qmoe-run: warning: generated id %d has no token (model vocabulary "
                "%d, tokenizer %d): printed as " TOK_GAP_FORMAT "\n", token,
                model_get_config(rc->m)->vocab, tok_vocab_size(rc->tok), token);
    size_t n;
    const char *t = tok_stream_push(rc->stream, token, &n);
    if (opt_json) {
        g_string_append_len(rc->text, t, (gssize)n);
    } else if (n) {
        fwrite(t, 1, n, stdout);
        fflush(stdout);
    }
    return 0;
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
    if (gs)
        fprintf(stderr, "qmoe-run: prompt %d tokens in %.3f s; %d decode steps in %.3f s "
                "(%.2f tokens/s)\n", n_prompt, gs->prefill_s, gs->decode_steps, gs->decode_s,
                gs->decode_s > 0 ? gs->decode_steps / gs->decode_s : 0.0);
}

/* The fields every --json summary starts with: layout and options. */
static cJSON *json_common(run_ctx *rc)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "layout", model_layout(rc->m)->name);
    cJSON_AddStringToObject(j, "mask_experts", opt_mask ? opt_mask : "");
    cJSON_AddStringToObject(j, "expert_io", opt_expert_io ? opt_expert_io : "map");
    cJSON_AddNumberToObject(j, "threads", opt_threads);
    cJSON *v = cJSON_AddObjectToObject(j, "vocab");
    cJSON_AddNumberToObject(v, "model", model_get_config(rc->m)->vocab);
    if (rc->tok)
        cJSON_AddNumberToObject(v, "tokenizer", tok_vocab_size(rc->tok));
    else
        cJSON_AddNullToObject(v, "tokenizer");
    return j;
}

/* ... and ends with: the expert cache's statistics. */
static void json_print(run_ctx *rc, cJSON *j)
{
    const model_config *c = model_get_config(rc->m);
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
    qm_json_out(j, 1);
}

/* A string member that may hold NUL bytes (cJSON's strings cannot). */
static void json_add_text(cJSON *j, const char *key, const char *s, size_t len)
{
    GString *g = g_string_new(NULL);
    qm_json_put_str_len(g, s, len);
    cJSON_AddRawToObject(j, key, g->str);
    g_string_free(g, TRUE);
}

static void print_json(run_ctx *rc, const int *ids, int n_prompt, const int *gen,
                       int n_gen, const model_gen_stats *gs, uint64_t seed)
{
    cJSON *j = json_common(rc);
    if (opt_prompt) {
        json_add_text(j, "prompt", opt_prompt, strlen(opt_prompt));
        cJSON_AddBoolToObject(j, "chat", opt_chat);
    }
    cJSON_AddItemToObject(j, "prompt_ids", cJSON_CreateIntArray(ids, n_prompt));
    cJSON_AddItemToObject(j, "generated_ids", cJSON_CreateIntArray(gen, n_gen));
    if (rc->tok)
        cJSON_AddNumberToObject(j, "generated_ids_without_token", rc->gaps);
    if (rc->text)
        json_add_text(j, "generated_text", rc->text->str, rc->text->len);
    cJSON_AddStringToObject(j, "finish",
                            n_gen > 0 && is_stop(rc, gen[n_gen - 1]) ? "stop" : "length");
    cJSON_AddNumberToObject(j, "temperature", opt_temperature);
    if (opt_temperature > 0)
        cJSON_AddNumberToObject(j, "seed", (double)seed);
    cJSON *t = cJSON_AddObjectToObject(j, "timing");
    cJSON_AddNumberToObject(t, "prefill_s", gs->prefill_s);
    cJSON_AddNumberToObject(t, "decode_s", gs->decode_s);
    cJSON_AddNumberToObject(t, "decode_steps", gs->decode_steps);
    cJSON_AddNumberToObject(t, "decode_tokens_per_s",
                            gs->decode_s > 0 ? gs->decode_steps / gs->decode_s : 0);
    cJSON_AddNumberToObject(t, "decode_weight_bytes", (double)gs->decode_weight_bytes);
    cJSON *steps = cJSON_AddArrayToObject(t, "decode_step_s");
    for (int i = 0; i < gs->decode_steps && i < MODEL_STEP_TIMES; i++)
        cJSON_AddItemToArray(steps, cJSON_CreateNumber(gs->step_s[i]));
    json_print(rc, j);
}

/* The prompt-driven part of a run: given token ids (from --token-ids, or
 * the tokenized --prompt), generate, write the logits and print the
 * result: ids for --token-ids, text (streamed) for --prompt. Returns 0 or
 * -1 with *err set. */
static int run_ids(run_ctx *rc, const int *ids, int n_prompt, GError **err)
{
    const model_config *c = model_get_config(rc->m);
    uint64_t seed = opt_seed >= 0 ? (uint64_t)opt_seed : (uint64_t)(qm_now() * 1e6);
    model_sampling smp = {.temperature = (float)opt_temperature, .seed = seed,
                          .stop_ids = (const int *)(void *)rc->stops->data,
                          .n_stop = (int)rc->stops->len};
    if (rc->tok) {
        rc->stream = tok_stream_new(rc->tok);
        if (opt_json)
            rc->text = g_string_new(NULL);
        smp.on_token = on_token;
        smp.user = rc;
    }
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
    if (rc->stream) {
        size_t n;
        const char *t = tok_stream_flush(rc->stream, &n);
        if (opt_json) {
            g_string_append_len(rc->text, t, (gssize)n);
        } else {
            fwrite(t, 1, n, stdout);
            printf("\n");
        }
    }
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
        } else if (!rc->tok) {
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

/* --perplexity FILE */
static int run_perplexity(run_ctx *rc, const char *path, const int *ids, int n,
                          GError **err)
{
    ppl_result r;
    double t0 = qm_monotonic();
    if (ppl_ids(rc->m, ids, n, opt_context, &r, err) != 0)
        return -1;
    double secs = qm_monotonic() - t0;
    if (rc->router_err) {
        g_propagate_error(err, rc->router_err);
        rc->router_err = NULL;
        return -1;
    }
    if (opt_json) {
        cJSON *j = json_common(rc);
        cJSON_AddStringToObject(j, "file", path);
        cJSON_AddNumberToObject(j, "tokens", r.n_tokens);
        cJSON_AddNumberToObject(j, "scored", r.n_scored);
        cJSON_AddNumberToObject(j, "context", r.context);
        cJSON_AddNumberToObject(j, "windows", r.n_windows);
        cJSON_AddNumberToObject(j, "mean_nll", r.nll);
        cJSON_AddNumberToObject(j, "perplexity", r.ppl);
        cJSON *t = cJSON_AddObjectToObject(j, "timing");
        cJSON_AddNumberToObject(t, "seconds", secs);
        cJSON_AddNumberToObject(t, "tokens_per_s", secs > 0 ? r.n_tokens / secs : 0);
        json_print(rc, j);
    } else {
        printf("perplexity %.8g\n", r.ppl);
        printf("mean_nll %.8g nats/token\n", r.nll);
        printf("tokens %d, scored %d, windows %d of at most %d tokens\n", r.n_tokens,
               r.n_scored, r.n_windows, r.context);
    }
    print_stats(rc, NULL, n);
    fprintf(stderr, "qmoe-run: scored %d tokens in %.3f s (%.2f tokens/s)\n", r.n_tokens, secs,
            secs > 0 ? r.n_tokens / secs : 0.0);
    return 0;
}

/* Tokenizes TEXT (LEN bytes) into a new int array. */
static int *encode_ids(tok_t *tok, const char *what, const char *text, size_t len, int *n,
                       GError **err)
{
    GArray *a = g_array_new(FALSE, FALSE, sizeof(int32_t));
    GError *e = NULL;
    int *ids = NULL;
    if (tok_encode(tok, text, len, 0, a, &e) != 0) {
        g_set_error(err, QM_ERROR, e->code, "%s: %s", what, e->message);
        g_error_free(e);
    } else if (a->len == 0 || a->len > INT32_MAX / 2) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "%s: the text has %u tokens", what, a->len);
    } else {
        ids = g_new(int, a->len);
        for (guint i = 0; i < a->len; i++)
            ids[i] = g_array_index(a, int32_t, i);
        *n = (int)a->len;
    }
    g_array_free(a, TRUE);
    return ids;
}

/* The tokenizer of the model at PATH: its directory, or the directory
 * holding a single-file checkpoint. */
static tok_t *model_tokenizer(const char *path, GError **err)
{
    if (g_file_test(path, G_FILE_TEST_IS_DIR))
        return tok_load(path, err);
    char *dir = g_path_get_dirname(path);
    tok_t *t = tok_load(dir, err);
    g_free(dir);
    return t;
}

static int usage_error(const char *msg)
{
    return qm_usage_error("qmoe-run", "%s", msg);
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
    char *text = NULL;
    if (qm_options_parse(ctx, &argc, &argv, "jn", &err)) {
        usage_error(err->message);
        g_clear_error(&err);
        goto out;
    }
    if (opt_version) {
        printf("qmoe-run %s\n", QMOE_VERSION);
        rv = 0;
        goto out;
    }
    if (argc != 2) {
        usage_error(argc < 2 ? "give the MODEL directory" : "give one MODEL directory");
        goto out;
    }
    int modes = !!opt_prompt + !!opt_token_ids + !!opt_perplexity + !!opt_tokenize +
                !!opt_detokenize + !!opt_router_stats;
    if (modes == 0) {
        fprintf(stderr, "qmoe-run: give the prompt with --prompt TEXT or --token-ids LIST "
                "(or use --perplexity FILE, --router-stats CORPUS, --tokenize, "
                "--detokenize)\n");
        goto out;
    }
    if (modes > 1) {
        usage_error("--prompt, --token-ids, --perplexity, --router-stats, --tokenize and "
                    "--detokenize exclude each other");
        goto out;
    }
    if (opt_chat && !opt_prompt) {
        usage_error("--chat needs --prompt TEXT");
        goto out;
    }
    if (opt_jsonl && !opt_tokenize && !opt_detokenize) {
        usage_error("--jsonl works with --tokenize and --detokenize");
        goto out;
    }
    if ((opt_keep || opt_by || opt_plan_out) && !opt_router_stats) {
        usage_error("--keep, --by and --plan-out work with --router-stats");
        goto out;
    }
    if (!opt_keep != !opt_plan_out) {
        usage_error("--keep N and --plan-out PLAN.json go together");
        goto out;
    }
    if (opt_by && plan_by_parse(opt_by) < 0) {
        usage_error("--by: expected frequency, weight or reap");
        goto out;
    }
    if (opt_keep_experts && opt_mask) {
        usage_error("--keep-experts and --mask-experts exclude each other");
        goto out;
    }
    if (opt_report && !opt_router_stats) {
        usage_error("--report works with --router-stats");
        goto out;
    }
    if (opt_logits_out && (opt_perplexity || opt_tokenize || opt_detokenize ||
                           opt_router_stats)) {
        usage_error("--logits-out works with --prompt and --token-ids");
        goto out;
    }
    if (opt_n < 0 || opt_cache_mb < 0 || opt_threads < 0 || opt_temperature < 0 ||
        opt_batch < 0) {
        fprintf(stderr, "qmoe-run: -n, --cache-mb, --batch, -j and --temperature cannot be "
                "negative\n");
        goto out;
    }
    if (opt_context < 2) {
        usage_error("--context must be at least 2 tokens");
        goto out;
    }

    char *note = NULL, *model_path = ckpt_resolve(argv[1], &note, &err);
    if (!model_path)
        goto fail;
    if (note)
        fprintf(stderr, "qmoe-run: %s\n", note);
    g_free(note);
    argv[1] = model_path; /* lives to the end, like argv */
    if (opt_tokenize || opt_detokenize) {
        /* the tokenizer alone: MODEL may be a directory or a tokenizer.json */
        if (!(rc.tok = tok_load(argv[1], &err)) ||
            convert_stdin(rc.tok, opt_tokenize, &err) != 0)
            goto fail;
        rv = 0;
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
    if (opt_router_stats) {
        run_stats_opts so = {.corpus = opt_router_stats, .model = argv[1], .mask = opt_mask,
                             .keep_experts = opt_keep_experts, .keep = opt_keep,
                             .by = opt_by ? plan_by_parse(opt_by) : PLAN_BY_FREQUENCY,
                             .plan_out = opt_plan_out,
                             .router_log = opt_router_log, .report = opt_report,
                             .threads = opt_threads, .cache_mb = opt_cache_mb, .io = io,
                             .json = opt_json};
        if (run_router_stats(&so, &err) != 0)
            goto fail;
        if (fflush(stdout) != 0 || ferror(stdout)) {
            qm_set_errno(&err, errno, "cannot write", "stdout");
            goto fail;
        }
        rv = 0;
        goto out;
    }
    int n_prompt = 0;
    if (opt_token_ids) {
        if (!(ids = parse_ids(opt_token_ids, &n_prompt, &err)))
            goto fail;
    } else {
        /* the tokenizer first: no point in mapping weights for a text
         * that cannot be tokenized */
        if (!(rc.tok = model_tokenizer(argv[1], &err)))
            goto fail;
        if (opt_prompt) {
            size_t len = strlen(opt_prompt);
            if (opt_chat)
                text = chat_user_prompt(opt_prompt, len, &len);
            if (!(ids = encode_ids(rc.tok, "--prompt", text ? text : opt_prompt, len,
                                   &n_prompt, &err)))
                goto fail;
        } else {
            gsize len;
            GError *e = NULL;
            if (!g_file_get_contents(opt_perplexity, &text, &len, &e)) {
                g_set_error(&err, QM_ERROR, QM_ERR_IO, "cannot read '%s': %s", opt_perplexity,
                            e->message);
                g_error_free(e);
                goto fail;
            }
            char *what = g_strdup_printf("--perplexity: '%s'", opt_perplexity);
            ids = encode_ids(rc.tok, what, text, len, &n_prompt, &err);
            g_free(what);
            if (!ids)
                goto fail;
        }
    }
    int max_seq = opt_perplexity ? (n_prompt < opt_context ? n_prompt : opt_context)
                                 : n_prompt + opt_n;
    model_opts mo = {.n_threads = opt_threads,
                     .cache_bytes = opt_cache_mb ? (uint64_t)opt_cache_mb << 20 : 1,
                     .max_seq = max_seq > 0 ? max_seq : 1, .expert_io = io,
                     .max_batch = opt_batch,
                     /* hidden: benchmarks measure the read-ahead against none */
                     .no_prefetch = g_strcmp0(g_getenv("QMOE_PREFETCH"), "0") == 0};
    if (!(rc.m = model_load(argv[1], &mo, &err)))
        goto fail;
    const model_config *c = model_get_config(rc.m);
    for (int i = 0; i < n_prompt; i++)
        if (ids[i] >= c->vocab) {
            if (opt_token_ids)
                g_set_error(&err, QM_ERROR, QM_ERR_USAGE,
                            "--token-ids: %d is outside the vocabulary [0, %d)", ids[i],
                            c->vocab);
            else
                g_set_error(&err, QM_ERROR, QM_ERR_FORMAT,
                            "the tokenizer of '%s' gives id %d, outside the model's "
                            "vocabulary [0, %d)", argv[1], ids[i], c->vocab);
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
    if (opt_keep_experts) {
        expert_plan *plan = expert_plan_load_model(opt_keep_experts, rc.m, &err);
        int bad = !plan || expert_plan_apply(rc.m, plan, &err);
        expert_plan_free(plan);
        if (bad)
            goto fail;
    }
    if (opt_router_log) {
        if (!(rc.router_out = fs_out_open(opt_router_log, &err)))
            goto fail;
        rc.line = g_string_sized_new(256);
        model_set_router_log(rc.m, router_line, &rc);
    }
    rc.stops = g_array_new(FALSE, FALSE, sizeof(int32_t));
    if (!opt_ignore_eos) {
        if (opt_chat) {
            if (chat_end_ids(model_checkpoint(rc.m), rc.tok, rc.stops, &err) < 0)
                goto fail;
        } else {
            chat_eos_ids(model_checkpoint(rc.m), rc.stops);
        }
    }
    if (opt_perplexity ? run_perplexity(&rc, opt_perplexity, ids, n_prompt, &err)
                       : run_ids(&rc, ids, n_prompt, &err))
        goto fail;
    if (rc.router_out) {
        fs_out *o = rc.router_out;
        rc.router_out = NULL;
        if (fs_out_commit(o, &err) != 0)
            goto fail;
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        qm_set_errno(&err, errno, "cannot write", "stdout");
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
    if (rc.text)
        g_string_free(rc.text, TRUE);
    if (rc.stops)
        g_array_free(rc.stops, TRUE);
    g_clear_error(&rc.router_err);
    tok_stream_free(rc.stream);
    model_free(rc.m);
    tok_free(rc.tok);
    g_free(ids);
    g_free(text);
    g_option_context_free(ctx);
    g_free(opt_token_ids);
    g_free(opt_prompt);
    g_free(opt_perplexity);
    g_free(opt_router_stats);
    g_free(opt_report);
    g_free(opt_logits_out);
    g_free(opt_router_log);
    g_free(opt_mask);
    g_free(opt_keep_experts);
    g_free(opt_by);
    g_free(opt_plan_out);
    g_free(opt_expert_io);
    return rv;
}
