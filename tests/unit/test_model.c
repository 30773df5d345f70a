/* test_model.c - the forward pass and expert store against the golden
 * outputs of tests/fixtures/qwen3moe-tiny (see its README.md): logits
 * within the stated tolerance, identical greedy continuations and router
 * choices, for full and masked routing and both layouts; equivalence of an
 * extracted-style directory; bounded cache; missing expert files; and
 * negative controls showing that the golden comparison catches a wrong
 * eps or un-renormalised top-k weights. */
#include "format/checkpoint.h"
#include "model/expert_store.h"
#include "model/model.h"
#include "format/safetensors.h"
#include "testhelp.h"
#include "base/util.h"

#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#define VOCAB 384
#define NSEQ 3

static char *fix;      /* tests/fixtures/qwen3moe-tiny */
static char *tmp;      /* scratch directory */
static int seq_len[NSEQ];
static int seq_ids[NSEQ][64];
static cJSON *greedy, *router_gold, *router_masked_gold, *nll_gold;

static char *fpath(const char *rel)
{
    return g_build_filename(fix, rel, NULL);
}

static float *read_f32(const char *rel, size_t n)
{
    char *p = fpath(rel);
    gchar *buf = NULL;
    gsize len = 0;
    float *out = NULL;
    if (g_file_get_contents(p, &buf, &len, NULL) && len == n * 4) {
        out = g_new(float, n);
        memcpy(out, buf, len);
    }
    g_free(buf);
    g_free(p);
    return out;
}

/* README's score: max |a - g| / max(1, max |g|). */
static double score(const float *a, const float *g, size_t n)
{
    double d = 0, s = 1;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - g[i]));
        s = fmax(s, fabs((double)g[i]));
    }
    return d / s;
}

static void load_golden(void)
{
    char *p = fpath("golden/tokens.json");
    cJSON *tok = qm_json_load(p, NULL);
    g_free(p);
    const cJSON *seqs = cJSON_GetObjectItem(tok, "sequences");
    for (int s = 0; s < NSEQ; s++) {
        char key[24];
        snprintf(key, sizeof key, "seq%d", s + 1);
        const cJSON *ids = cJSON_GetObjectItem(cJSON_GetObjectItem(seqs, key), "ids");
        const cJSON *x;
        cJSON_ArrayForEach(x, ids)
            seq_ids[s][seq_len[s]++] = x->valueint;
    }
    cJSON_Delete(tok);
    const char *names[] = {"golden/greedy.json", "golden/router_seq.json",
                           "golden/router_masked_seq.json", "golden/nll.json"};
    cJSON **dst[] = {&greedy, &router_gold, &router_masked_gold, &nll_gold};
    for (int i = 0; i < 4; i++) {
        p = fpath(names[i]);
        *dst[i] = qm_json_load(p, NULL);
        g_free(p);
    }
}

static expert_io io_mode = EXPERT_IO_MAP;
static int batch_tokens; /* prefill micro-batch; 0 = the default */

static model *open_model(const char *dir, uint64_t cache, int threads, int masked)
{
    model_opts o = {.n_threads = threads, .cache_bytes = cache, .expert_io = io_mode,
                    .max_batch = batch_tokens};
    GError *err = NULL;
    model *m = model_load(dir, &o, &err);
    if (!m) {
        printf("  model_load %s: %s\n", dir, err->message);
        g_error_free(err);
        return NULL;
    }
    if (masked) {
        uint8_t allow[16] = {1, 1, 1, 1, 1, 1, 1, 1};
        model_set_mask(m, allow, NULL);
    }
    return m;
}

/* Scores every sequence against golden logits (full or masked); keeps the
 * logits of seq3 in keep (if not NULL). Returns the worst score. */
static double golden_score(model *m, int masked, float *keep)
{
    double worst = 0;
    for (int s = 0; s < NSEQ; s++) {
        size_t n = (size_t)seq_len[s] * VOCAB;
        char rel[64];
        snprintf(rel, sizeof rel, "golden/logits_%sseq%d.f32", masked ? "masked_" : "", s + 1);
        float *g = read_f32(rel, n), *a = g_new(float, n);
        GError *err = NULL;
        if (!g || model_sequence_logits(m, seq_ids[s], seq_len[s], a, &err) != 0) {
            printf("  %s: %s\n", rel, err ? err->message : "cannot read golden file");
            g_clear_error(&err);
            worst = INFINITY;
        } else {
            worst = fmax(worst, score(a, g, n));
            if (keep && s == NSEQ - 1)
                memcpy(keep, a, n * sizeof(float));
        }
        g_free(g);
        g_free(a);
    }
    return worst;
}

static int greedy_matches(model *m, int masked)
{
    int ok = 1;
    for (int s = 0; s < NSEQ; s++) {
        char key[24];
        snprintf(key, sizeof key, "seq%d", s + 1);
        const cJSON *want = cJSON_GetObjectItem(
            cJSON_GetObjectItem(cJSON_GetObjectItem(greedy, "greedy"), key),
            masked ? "torch_ref_masked" : "torch_ref");
        int out[16], n = 0;
        model_sampling smp = {0};
        GError *err = NULL;
        if (model_generate(m, seq_ids[s], seq_len[s], 16, &smp, NULL, out, &n, NULL, &err)) {
            printf("  generate: %s\n", err->message);
            g_error_free(err);
            return 0;
        }
        for (int i = 0; i < 16; i++)
            if (i >= n || out[i] != cJSON_GetArrayItem(want, i)->valueint) {
                printf("  %s%s: token %d is %d, golden %d\n", key, masked ? " masked" : "",
                       i, i < n ? out[i] : -1, cJSON_GetArrayItem(want, i)->valueint);
                ok = 0;
                break;
            }
    }
    return ok;
}

static char *dir_of(const char *which)
{
    return fpath(which);
}

/* ---- golden fidelity ---- */

static void fidelity(const char *which, int masked)
{
    char *dir = dir_of(which);
    model *m = open_model(dir, 0, 2, masked);
    CHECK(m != NULL);
    if (m) {
        double sc = golden_score(m, masked, NULL);
        printf("  %s %s: score %.3g\n", which, masked ? "masked" : "full", sc);
        CHECK(sc <= 1e-3);
        CHECK(greedy_matches(m, masked));
    }
    model_free(m);
    g_free(dir);
}

static void test_qwen3moe_full(void) { fidelity("qwen3moe", 0); }
static void test_qwen3moe_masked(void) { fidelity("qwen3moe", 1); }
static void test_omni_full(void) { fidelity("omni", 0); }
static void test_omni_masked(void) { fidelity("omni", 1); }

/* Same weights under two namings: the same code must give the same bits. */
static void test_layouts_identical(void)
{
    size_t n = (size_t)seq_len[2] * VOCAB;
    float *a = g_new(float, n), *b = g_new(float, n);
    char *d1 = dir_of("qwen3moe"), *d2 = dir_of("omni");
    model *m1 = open_model(d1, 0, 1, 0), *m2 = open_model(d2, 0, 2, 0);
    CHECK(m1 && m2);
    if (m1 && m2) {
        CHECK(model_sequence_logits(m1, seq_ids[2], seq_len[2], a, NULL) == 0);
        CHECK(model_sequence_logits(m2, seq_ids[2], seq_len[2], b, NULL) == 0);
        CHECK(memcmp(a, b, n * sizeof(float)) == 0);
        CHECK(strcmp(model_layout(m1)->name, "qwen3_moe") == 0);
        CHECK(strcmp(model_layout(m2)->name, "qwen3_omni_moe") == 0);
        CHECK(model_get_config(m2)->head_dim == 32);
        CHECK(model_get_config(m2)->n_kv_heads == 2);
    }
    model_free(m1);
    model_free(m2);
    g_free(d1);
    g_free(d2);
    g_free(a);
    g_free(b);
}

static void test_nll(void)
{
    char *dir = dir_of("qwen3moe");
    model *m = open_model(dir, 0, 1, 0);
    CHECK(m != NULL);
    const cJSON *nl = cJSON_GetObjectItem(nll_gold, "nll");
    for (int s = 1; m && s < NSEQ; s++) {
        char key[24];
        snprintf(key, sizeof key, "seq%d", s + 1);
        double want = cJSON_GetObjectItem(cJSON_GetObjectItem(nl, key), "nll_full")->valuedouble;
        double got = 0;
        CHECK(model_nll(m, seq_ids[s], seq_len[s], &got, NULL) == 0);
        CHECK(fabs(got - want) < 1e-4);
    }
    GError *err = NULL;
    CHECK(m && model_nll(m, seq_ids[0], 1, &(double){0}, &err) != 0);
    g_clear_error(&err);
    model_free(m);
    g_free(dir);
}

/* ---- router log ---- */

typedef struct {
    int n;            /* calls */
    int bad_k;        /* calls with k != 4 */
    double worst_sum; /* max |sum of weights - 1| */
    int out_of_mask;  /* experts >= 8 chosen */
    int exp[3][24][4];
    float w[3][24][4];
} router_rec;

static void record(void *user, int seq, int pos, int token, int layer, int k, const int *e,
                   const float *w, const float *norms)
{
    (void)seq;
    (void)norms;
    router_rec *r = user;
    (void)token;
    r->bad_k += seq != 0;
    for (int i = 0; i < k; i++)
        r->bad_k += !(norms[i] > 0 && isfinite(norms[i]));
    r->n++;
    r->bad_k += k != 4;
    double s = 0;
    for (int i = 0; i < k && i < 4; i++) {
        s += w[i];
        r->out_of_mask += e[i] >= 8;
        if (layer < 3 && pos < 24) {
            r->exp[layer][pos][i] = e[i];
            r->w[layer][pos][i] = w[i];
        }
    }
    r->worst_sum = fmax(r->worst_sum, fabs(s - 1));
}

static void router_check(int masked)
{
    char *dir = dir_of("qwen3moe");
    model *m = open_model(dir, 0, 2, masked);
    router_rec *r = g_new0(router_rec, 1);
    CHECK(m != NULL);
    if (!m)
        goto out;
    model_set_router_log(m, record, r);
    float *lg = g_new(float, (size_t)seq_len[2] * VOCAB);
    CHECK(model_sequence_logits(m, seq_ids[2], seq_len[2], lg, NULL) == 0);
    g_free(lg);
    CHECK(r->n == 3 * 24);
    CHECK(r->bad_k == 0);
    CHECK(r->worst_sum < 1e-5);
    if (masked)
        CHECK(r->out_of_mask == 0);
    const cJSON *layers = cJSON_GetObjectItem(masked ? router_masked_gold : router_gold,
                                              "layers");
    int set_bad = 0, order_bad = 0;
    double wdiff = 0;
    for (int l = 0; l < 3; l++) {
        const cJSON *L = cJSON_GetArrayItem(layers, l);
        for (int t = 0; t < 24; t++) {
            const cJSON *ge = cJSON_GetArrayItem(cJSON_GetObjectItem(L, "experts"), t);
            const cJSON *gw = cJSON_GetArrayItem(cJSON_GetObjectItem(L, "weights"), t);
            for (int i = 0; i < 4; i++) {
                int want = cJSON_GetArrayItem(ge, i)->valueint, found = 0;
                for (int j = 0; j < 4; j++)
                    found |= r->exp[l][t][j] == want;
                set_bad += !found;
                order_bad += r->exp[l][t][i] != want;
                wdiff = fmax(wdiff, fabs(r->w[l][t][i] - cJSON_GetArrayItem(gw, i)->valuedouble));
            }
        }
    }
    printf("  router %s: %d set mismatches, %d order mismatches, max weight diff %.2g\n",
           masked ? "masked" : "full", set_bad, order_bad, wdiff);
    CHECK(set_bad == 0);
    CHECK(order_bad == 0);
    CHECK(wdiff < 1e-5);
    if (masked) {
        /* the store was never asked for an expert outside the mask */
        int outside = 0;
        for (int l = 0; l < 3; l++)
            for (int e = 8; e < 16; e++)
                outside += expert_store_used(model_experts(m), l, e);
        CHECK(outside == 0);
    }
out:
    g_free(r);
    model_free(m);
    g_free(dir);
}

static void test_router_full(void) { router_check(0); }
static void test_router_masked(void) { router_check(1); }

/* ---- batched prefill against token by token ---- */

typedef struct {
    GString *log; /* one line per call, in call order */
} route_log;

static void log_route(void *user, int seq, int pos, int token, int layer, int k,
                      const int *e, const float *w, const float *norms)
{
    (void)seq;
    (void)norms;
    route_log *r = user;
    g_string_append_printf(r->log, "%d %d %d %d:", seq, pos, token, layer);
    for (int i = 0; i < k; i++)
        g_string_append_printf(r->log, " %d %a %a", e[i], w[i], norms[i]);
    g_string_append_c(r->log, '\n');
}

/* Feeds seq by model_step and by model_feed in micro-batches of `batch`,
 * then decodes 4 more tokens after each: logits of every position within
 * 1e-5 of the logit scale (in fact the same bits), the decode after the
 * prefill identical (the KV cache is the same), router logs identical
 * call for call. */
static void batched_vs_steps(const char *which, int masked, int batch)
{
    char *dir = dir_of(which);
    model *ms = open_model(dir, 0, 2, masked);
    batch_tokens = batch;
    model *mb = open_model(dir, 0, 2, masked);
    batch_tokens = 0;
    CHECK(ms && mb);
    if (!ms || !mb)
        goto out;
    int n = seq_len[2], more = 4;
    size_t nv = (size_t)(n + more) * VOCAB;
    float *a = g_new(float, nv), *b = g_new(float, nv);
    route_log ra = {g_string_new(NULL)}, rb = {g_string_new(NULL)};
    model_set_router_log(ms, log_route, &ra);
    model_set_router_log(mb, log_route, &rb);
    GError *err = NULL;
    for (int t = 0; t < n; t++)
        CHECK(model_step(ms, seq_ids[2][t], a + (size_t)t * VOCAB, NULL) == 0);
    CHECK(model_feed(mb, seq_ids[2], n, MODEL_LOGITS_ALL, b, &err) == 0);
    CHECK(model_pos(mb) == n);
    for (int t = n; t < n + more; t++) {
        int id = (t * 37) % VOCAB;
        CHECK(model_step(ms, id, a + (size_t)t * VOCAB, NULL) == 0);
        CHECK(model_step(mb, id, b + (size_t)t * VOCAB, NULL) == 0);
    }
    double sc = score(b, a, nv);
    int same = memcmp(a, b, nv * sizeof(float)) == 0;
    printf("  %s %s batch %d: score %.3g%s, router log %s\n", which, masked ? "masked" : "full",
           batch, sc, same ? " (identical)" : "",
           strcmp(ra.log->str, rb.log->str) == 0 ? "identical" : "DIFFERS");
    CHECK(sc <= 1e-5);
    CHECK(ra.log->len > 0);
    CHECK(strcmp(ra.log->str, rb.log->str) == 0);
    /* the last position only, and none */
    float *last = g_new(float, VOCAB);
    model_reset(mb);
    CHECK(model_feed(mb, seq_ids[2], n, MODEL_LOGITS_LAST, last, NULL) == 0);
    CHECK(score(last, a + (size_t)(n - 1) * VOCAB, VOCAB) <= 1e-5);
    model_reset(mb);
    CHECK(model_feed(mb, seq_ids[2], n - 1, MODEL_LOGITS_NONE, NULL, NULL) == 0);
    CHECK(model_feed(mb, seq_ids[2] + n - 1, 1, MODEL_LOGITS_LAST, last, NULL) == 0);
    CHECK(score(last, a + (size_t)(n - 1) * VOCAB, VOCAB) <= 1e-5);
    /* the likelihood: batched against the token-by-token logits */
    double want = 0, got = 0;
    for (int t = 0; t + 1 < n; t++) {
        const float *lg = a + (size_t)t * VOCAB;
        double mx = -INFINITY, sum = 0;
        for (int i = 0; i < VOCAB; i++)
            mx = fmax(mx, lg[i]);
        for (int i = 0; i < VOCAB; i++)
            sum += exp(lg[i] - mx);
        want += log(sum) + mx - lg[seq_ids[2][t + 1]];
    }
    want /= n - 1;
    CHECK(model_nll(mb, seq_ids[2], n, &got, NULL) == 0);
    CHECK(fabs(got - want) < 1e-6);
    g_free(last);
    g_string_free(ra.log, TRUE);
    g_string_free(rb.log, TRUE);
    g_free(a);
    g_free(b);
out:
    model_free(ms);
    model_free(mb);
    g_free(dir);
}

static void test_batched_prefill(void)
{
    const char *which[] = {"qwen3moe", "omni"};
    int batches[] = {1, 3, 7, 0};
    for (int w = 0; w < 2; w++)
        for (int masked = 0; masked < 2; masked++)
            for (int b = 0; b < 4; b++)
                batched_vs_steps(which[w], masked, batches[b]);
}

/* ---- batch composition ---- */

#define NCOMP 4

typedef struct {
    GString *log[NSEQ]; /* each sequence's router log, in call order */
} seq_logs;

static void log_by_seq(void *user, int seq, int pos, int token, int layer, int k,
                       const int *e, const float *w, const float *norms)
{
    seq_logs *r = user;
    if (seq >= 0 && seq < NSEQ)
        log_route(&(route_log){r->log[seq]}, seq, pos, token, layer, k, e, w, norms);
}

/* The NSEQ sequences through one model in one of NCOMP compositions:
 * 0 one token per model_batch call, sequence after sequence; 1 each
 * sequence as one call (micro-batches of the model's max_batch); 2 the
 * first half of the longest sequence alone, then the rest of all sequences
 * interleaved round-robin in one call (tokens of different sequences and
 * positions side by side); 3 the same in reverse sequence order. Logits
 * of every position into lg[s]. */
static int compose(model *m, int mode, model_seq **sq, float **lg)
{
    model_tok *toks = g_new(model_tok, NSEQ * 64);
    int n = 0, rc = 0, at[NSEQ] = {0};
    GError *err = NULL;
    if (mode == 0) {
        for (int s = 0; s < NSEQ; s++)
            for (int t = 0; t < seq_len[s] && rc == 0; t++) {
                model_tok one = {sq[s], seq_ids[s][t], lg[s] + (size_t)t * VOCAB};
                rc = model_batch(m, &one, 1, &err);
            }
    } else if (mode == 1) {
        for (int s = 0; s < NSEQ && rc == 0; s++) {
            for (int t = 0; t < seq_len[s]; t++)
                toks[t] = (model_tok){sq[s], seq_ids[s][t], lg[s] + (size_t)t * VOCAB};
            rc = model_batch(m, toks, seq_len[s], &err);
        }
    } else {
        for (; at[2] < seq_len[2] / 2; at[2]++)
            toks[n++] = (model_tok){sq[2], seq_ids[2][at[2]], lg[2] + (size_t)at[2] * VOCAB};
        rc = model_batch(m, toks, n, &err);
        for (int left = 1; left && rc == 0;) {
            left = 0;
            n = 0;
            for (int i = 0; i < NSEQ; i++) {
                int s = mode == 2 ? i : NSEQ - 1 - i;
                if (at[s] < seq_len[s]) {
                    toks[n++] = (model_tok){sq[s], seq_ids[s][at[s]],
                                            lg[s] + (size_t)at[s] * VOCAB};
                    at[s]++;
                    left = 1;
                }
            }
            if (n)
                rc = model_batch(m, toks, n, &err);
        }
    }
    if (rc != 0)
        printf("  composition %d: %s\n", mode, err ? err->message : "?");
    g_clear_error(&err);
    g_free(toks);
    return rc;
}

/* Logits, KV caches and router logs are the same bits whatever the
 * batch's composition (the promise), for both layouts, full and
 * masked routing; the batch sizes 1, 4 and the default cut the
 * interleaved stream at different tokens. */
static void test_batch_composition(void)
{
    const char *which[] = {"qwen3moe", "omni"};
    int batches[] = {4, 0, 1};
    for (int w = 0; w < 2; w++)
        for (int masked = 0; masked < 2; masked++) {
            char *dir = dir_of(which[w]);
            float *lg[NCOMP][NSEQ];
            seq_logs logs[NCOMP];
            model *mm[NCOMP] = {0};
            model_seq *sq[NCOMP][NSEQ] = {{0}};
            int ok = 1;
            for (int c = 0; c < NCOMP; c++) {
                batch_tokens = batches[c % 3];
                mm[c] = open_model(dir, 0, 2, masked);
                batch_tokens = 0;
                CHECK(mm[c] != NULL);
                ok &= mm[c] != NULL;
                for (int s = 0; s < NSEQ; s++) {
                    lg[c][s] = g_new0(float, (size_t)seq_len[s] * VOCAB);
                    logs[c].log[s] = g_string_new(NULL);
                    sq[c][s] = mm[c] ? model_seq_new(mm[c], s, 64, NULL) : NULL;
                    ok &= sq[c][s] != NULL;
                }
                if (!ok)
                    continue;
                model_set_router_log(mm[c], log_by_seq, &logs[c]);
                CHECK(compose(mm[c], c, sq[c], lg[c]) == 0);
            }
            int kv_same = 1, lg_same = 1, log_same = 1;
            const model_config *mc = ok ? model_get_config(mm[0]) : NULL;
            for (int c = 1; c < NCOMP && ok; c++)
                for (int s = 0; s < NSEQ; s++) {
                    size_t kvn = (size_t)seq_len[s] * mc->n_kv_heads * mc->head_dim;
                    CHECK(model_seq_pos(sq[c][s]) == seq_len[s]);
                    lg_same &= memcmp(lg[0][s], lg[c][s],
                                      (size_t)seq_len[s] * VOCAB * sizeof(float)) == 0;
                    log_same &= logs[0].log[s]->len > 0 &&
                                strcmp(logs[0].log[s]->str, logs[c].log[s]->str) == 0;
                    for (int l = 0; l < mc->n_layers; l++)
                        for (int v = 0; v < 2; v++)
                            kv_same &= memcmp(model_seq_kv(sq[0][s], l, v),
                                              model_seq_kv(sq[c][s], l, v),
                                              kvn * sizeof(float)) == 0;
                }
            printf("  %s %s: logits %s, KV caches %s, router logs %s\n", which[w],
                   masked ? "masked" : "full", lg_same ? "identical" : "DIFFER",
                   kv_same ? "identical" : "DIFFER", log_same ? "identical" : "DIFFER");
            CHECK(ok && lg_same && kv_same && log_same);
            /* and the same as the model's own sequence fed by model_step */
            if (ok) {
                float *a = g_new(float, VOCAB);
                model_set_router_log(mm[0], NULL, NULL);
                model_reset(mm[0]);
                int same = 1;
                for (int t = 0; t < seq_len[1]; t++) {
                    CHECK(model_step(mm[0], seq_ids[1][t], a, NULL) == 0);
                    same &= memcmp(a, lg[0][1] + (size_t)t * VOCAB, VOCAB * sizeof(float)) == 0;
                }
                CHECK(same);
                g_free(a);
            }
            for (int c = 0; c < NCOMP; c++) {
                for (int s = 0; s < NSEQ; s++) {
                    model_seq_free(sq[c][s]);
                    g_free(lg[c][s]);
                    g_string_free(logs[c].log[s], TRUE);
                }
                model_free(mm[c]);
            }
            g_free(dir);
        }
}

/* model_batch checks every token before feeding any. */
static void test_batch_errors(void)
{
    char *dir = dir_of("qwen3moe");
    model *m = open_model(dir, 0, 1, 0), *other = open_model(dir, 0, 1, 0);
    CHECK(m && other);
    if (m && other) {
        model_seq *a = model_seq_new(m, 1, 4, NULL), *b = model_seq_new(m, 2, 0, NULL);
        model_seq *x = model_seq_new(other, 3, 4, NULL);
        GError *err = NULL;
        model_tok t[6] = {{a, 1, NULL}, {b, 2, NULL}, {a, 3, NULL},
                          {a, 4, NULL}, {a, 5, NULL}, {a, 6, NULL}};
        CHECK(model_batch(m, t, 6, &err) != 0);
        CHECK_CONTAINS(err ? err->message : NULL, "longer than the context of 4 tokens");
        g_clear_error(&err);
        CHECK(model_seq_pos(a) == 0 && model_seq_pos(b) == 0);
        t[1].token = VOCAB;
        CHECK(model_batch(m, t, 2, &err) != 0);
        CHECK_CONTAINS(err ? err->message : NULL, "token id 384 is outside");
        g_clear_error(&err);
        t[1] = (model_tok){x, 2, NULL};
        CHECK(model_batch(m, t, 2, &err) != 0);
        CHECK_CONTAINS(err ? err->message : NULL, "a sequence of another model");
        g_clear_error(&err);
        t[1] = (model_tok){NULL, 2, NULL};
        CHECK(model_batch(m, t, 5, NULL) == 0);
        CHECK(model_seq_pos(a) == 4 && model_pos(m) == 1 && model_seq_pos(b) == 0);
        CHECK(model_seq_id(b) == 2);
        model_seq_free(a);
        model_seq_free(b);
        model_seq_free(x);
    }
    model_free(m);
    model_free(other);
    g_free(dir);
}

/* A truncated sequence continues as if fed only the tokens it kept (the
 * gate truncates after teacher forcing). */
static void test_seq_truncate(void)
{
    char *dir = dir_of("qwen3moe");
    model *m = open_model(dir, 0, 1, 0);
    CHECK(m != NULL);
    if (m) {
        model_seq *a = model_seq_new(m, 1, 8, NULL), *b = model_seq_new(m, 2, 8, NULL);
        float *la = g_new(float, VOCAB), *lb = g_new(float, VOCAB);
        model_tok ta[4] = {{a, 1, NULL}, {a, 2, NULL}, {a, 3, NULL}, {a, 4, NULL}};
        model_tok tb[3] = {{b, 1, NULL}, {b, 2, NULL}, {b, 7, lb}};
        CHECK(model_batch(m, ta, 4, NULL) == 0);
        model_seq_truncate(a, 100); /* beyond the end: nothing forgotten */
        CHECK(model_seq_pos(a) == 4);
        model_seq_truncate(a, 2);
        CHECK(model_seq_pos(a) == 2);
        ta[0] = (model_tok){a, 7, la};
        CHECK(model_batch(m, ta, 1, NULL) == 0 && model_batch(m, tb, 3, NULL) == 0);
        CHECK(model_seq_pos(a) == 3);
        CHECK(memcmp(la, lb, sizeof(float) * VOCAB) == 0);
        g_free(la);
        g_free(lb);
        model_seq_free(a);
        model_seq_free(b);
    }
    model_free(m);
    g_free(dir);
}

/* model_logits_fn: keeps the rows it is handed by batch index. */
typedef struct {
    float *rows; /* (n, VOCAB) */
    int calls, last, ordered;
} sink_log;

static void keep_row(void *user, int i, const float *lg)
{
    sink_log *k = user;
    k->ordered &= i > k->last;
    k->last = i;
    k->calls++;
    memcpy(k->rows + (size_t)i * VOCAB, lg, sizeof(float) * VOCAB);
}

/* A sequence's own router mask and the logits sink: one batch of a masked
 * and a free sequence, logits handed to a callback, gives the bits of
 * each fed alone with the model's mask set or lifted. */
static void test_seq_mask_and_sink(void)
{
    char *dir = dir_of("qwen3moe");
    model *m = open_model(dir, 0, 1, 0), *ref = open_model(dir, 0, 1, 1);
    CHECK(m != NULL && ref != NULL);
    if (m && ref) {
        int n = seq_len[NSEQ - 1]; /* the longest */
        const int *ids = seq_ids[NSEQ - 1];
        uint8_t allow[16] = {1, 1, 1, 1, 1, 1, 1, 1}, few[16] = {1};
        model_seq *a = model_seq_new(m, 1, n, NULL), *b = model_seq_new(m, 2, n, NULL);
        GError *err = NULL;
        CHECK(model_seq_set_mask(a, few, &err) != 0);
        CHECK_CONTAINS(err ? err->message : NULL, "allows 1 experts");
        g_clear_error(&err);
        CHECK(model_seq_set_mask(a, allow, NULL) == 0);
        static float want;
        model_tok *t = g_new(model_tok, 2 * n);
        for (int i = 0; i < n; i++) {
            t[i] = (model_tok){a, ids[i], &want};
            t[n + i] = (model_tok){b, ids[i], i % 2 ? &want : NULL};
        }
        sink_log k = {g_new0(float, (size_t)2 * n * VOCAB), 0, -1, 1};
        model_set_logits_fn(m, keep_row, &k);
        CHECK(model_batch(m, t, 2 * n, NULL) == 0);
        model_set_logits_fn(m, NULL, NULL);
        CHECK(k.calls == n + n / 2 && k.ordered);
        float *masked = g_new(float, (size_t)n * VOCAB);
        float *free_ = g_new(float, (size_t)n * VOCAB);
        CHECK(model_sequence_logits(ref, ids, n, masked, NULL) == 0);
        CHECK(model_set_mask(ref, NULL, NULL) == 0);
        CHECK(model_sequence_logits(ref, ids, n, free_, NULL) == 0);
        CHECK(memcmp(k.rows, masked, sizeof(float) * n * VOCAB) == 0);
        int same = 1, differs = 0;
        for (int i = 1; i < n; i += 2) {
            same &= !memcmp(k.rows + (size_t)(n + i) * VOCAB, free_ + (size_t)i * VOCAB,
                            sizeof(float) * VOCAB);
            differs |= memcmp(free_ + (size_t)i * VOCAB, masked + (size_t)i * VOCAB,
                              sizeof(float) * VOCAB) != 0;
        }
        CHECK(same && differs);
        /* lifted: the sequence routes freely again */
        CHECK(model_seq_set_mask(a, NULL, NULL) == 0);
        model_seq_reset(a);
        for (int i = 0; i < n; i++)
            t[i] = (model_tok){a, ids[i], masked + (size_t)i * VOCAB};
        CHECK(model_batch(m, t, n, NULL) == 0);
        CHECK(memcmp(masked, free_, sizeof(float) * n * VOCAB) == 0);
        g_free(masked);
        g_free(free_);
        g_free(k.rows);
        g_free(t);
        model_seq_free(a);
        model_seq_free(b);
    }
    model_free(m);
    model_free(ref);
    g_free(dir);
}

/* A per-layer mask restricts that layer only; errors name the layer. */
static void test_layer_mask(void)
{
    char *dir = dir_of("qwen3moe");
    model *m = open_model(dir, 0, 1, 0);
    CHECK(m != NULL);
    if (m) {
        uint8_t allow[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1}, few[16] = {1};
        GError *err = NULL;
        CHECK(model_set_layer_mask(m, 3, allow, &err) != 0);
        CHECK_CONTAINS(err ? err->message : NULL, "layer 3: the model has no such layer");
        g_clear_error(&err);
        CHECK(model_set_layer_mask(m, -1, allow, &err) != 0);
        g_clear_error(&err);
        CHECK(model_set_layer_mask(m, 1, few, &err) != 0);
        CHECK_CONTAINS(err ? err->message : NULL, "mask of layer 1 allows 1 experts");
        g_clear_error(&err);
        CHECK(model_set_layer_mask(m, 1, allow, &err) == 0);
        route_log r = {g_string_new(NULL)};
        model_set_router_log(m, log_route, &r);
        CHECK(model_feed(m, seq_ids[0], seq_len[0], MODEL_LOGITS_NONE, NULL, NULL) == 0);
        /* layer 1 picks only experts >= 8; layers 0 and 2 also some below */
        int low[3] = {0};
        gchar **lines = g_strsplit(r.log->str, "\n", -1);
        for (int i = 0; lines[i] && lines[i][0]; i++) {
            int sq, pos, tok, layer, n = 0;
            if (sscanf(lines[i], "%d %d %d %d:%n", &sq, &pos, &tok, &layer, &n) < 4)
                continue;
            gchar **f = g_strsplit(lines[i] + n, " ", -1);
            for (int j = 1; f[j]; j += 3)
                low[layer] += atoi(f[j]) < 8;
            g_strfreev(f);
        }
        g_strfreev(lines);
        printf("  choices below expert 8: layer 0 %d, layer 1 %d, layer 2 %d\n", low[0],
               low[1], low[2]);
        CHECK(low[1] == 0 && low[0] > 0 && low[2] > 0);
        /* lifted: layer 1 routes as before */
        CHECK(model_set_layer_mask(m, 1, NULL, NULL) == 0);
        g_string_free(r.log, TRUE);
    }
    model_free(m);
    g_free(dir);
}

/* Bad input to model_feed fails before anything is fed. */
static void test_feed_errors(void)
{
    char *dir = dir_of("qwen3moe");
    model_opts o = {.n_threads = 1, .max_seq = 8};
    model *m = model_load(dir, &o, NULL);
    CHECK(m != NULL);
    if (m) {
        int ids[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
        GError *err = NULL;
        CHECK(model_feed(m, ids, 9, MODEL_LOGITS_NONE, NULL, &err) != 0);
        CHECK_CONTAINS(err ? err->message : NULL, "longer than the context of 8 tokens");
        g_clear_error(&err);
        CHECK(model_pos(m) == 0);
        ids[2] = VOCAB;
        CHECK(model_feed(m, ids, 4, MODEL_LOGITS_NONE, NULL, &err) != 0);
        CHECK_CONTAINS(err ? err->message : NULL, "token id 384 is outside");
        g_clear_error(&err);
        CHECK(model_pos(m) == 0);
        ids[2] = 3;
        CHECK(model_feed(m, ids, 8, MODEL_LOGITS_NONE, NULL, NULL) == 0);
        CHECK(model_pos(m) == 8);
        CHECK(model_step(m, 1, NULL, &err) != 0);
        g_clear_error(&err);
    }
    model_free(m);
    g_free(dir);
}

/* A batch asks the store once per distinct expert of each layer. */
static void test_batch_lookups(void)
{
    char *dir = dir_of("qwen3moe");
    model *m = open_model(dir, 0, 2, 0);
    CHECK(m != NULL);
    if (m) {
        CHECK(model_feed(m, seq_ids[2], seq_len[2], MODEL_LOGITS_NONE, NULL, NULL) == 0);
        expert_stats st;
        expert_store_stats(model_experts(m), &st);
        int distinct = 0;
        for (int l = 0; l < 3; l++)
            distinct += expert_store_distinct(model_experts(m), l);
        CHECK(st.hits == 0);
        CHECK(st.misses == (uint64_t)distinct);
    }
    model_free(m);
    g_free(dir);
}

static void test_mask_too_small(void)
{
    char *dir = dir_of("qwen3moe");
    model *m = open_model(dir, 0, 1, 0);
    uint8_t allow[16] = {1, 1, 1};
    GError *err = NULL;
    CHECK(m && model_set_mask(m, allow, &err) != 0);
    CHECK(err && err->code == QM_ERR_USAGE);
    CHECK_CONTAINS(err ? err->message : NULL, "allows 3 experts");
    g_clear_error(&err);
    model_free(m);
    g_free(dir);
}

/* ---- the cache ---- */

static void small_cache(void)
{
    char *dir = dir_of("qwen3moe");
    size_t n = (size_t)seq_len[2] * VOCAB;
    float *a = g_new(float, n), *b = g_new(float, n);
    /* one expert is 3 x 32 x 64 bf16 = 12 KiB; 250000 bytes hold twenty;
     * micro-batches of one token ask the store once per token and layer */
    batch_tokens = 1;
    model *big = open_model(dir, 0, 1, 0), *tiny = open_model(dir, 250000, 2, 0),
          *one = open_model(dir, 1, 1, 0);
    batch_tokens = 0;
    CHECK(big && tiny && one);
    if (big && tiny && one) {
        CHECK(model_sequence_logits(big, seq_ids[2], seq_len[2], a, NULL) == 0);
        CHECK(model_sequence_logits(tiny, seq_ids[2], seq_len[2], b, NULL) == 0);
        CHECK(memcmp(a, b, n * sizeof(float)) == 0);
        CHECK(model_sequence_logits(one, seq_ids[2], seq_len[2], b, NULL) == 0);
        CHECK(memcmp(a, b, n * sizeof(float)) == 0);
        expert_stats sb, st, so;
        expert_store_stats(model_experts(big), &sb);
        expert_store_stats(model_experts(tiny), &st);
        expert_store_stats(model_experts(one), &so);
        printf("  big: %llu hits %llu misses; tiny: %llu hits %llu misses %llu evictions "
               "peak %llu; one: %llu misses\n",
               (unsigned long long)sb.hits, (unsigned long long)sb.misses,
               (unsigned long long)st.hits, (unsigned long long)st.misses,
               (unsigned long long)st.evictions, (unsigned long long)st.peak_bytes,
               (unsigned long long)so.misses);
        CHECK(sb.hits + sb.misses == 3 * 24 * 4);
        CHECK(st.hits + st.misses == 3 * 24 * 4);
        CHECK(so.hits + so.misses == 3 * 24 * 4);
        /* everything fits in the big cache: one miss per distinct expert */
        int distinct = 0;
        for (int l = 0; l < 3; l++)
            distinct += expert_store_distinct(model_experts(big), l);
        CHECK(sb.misses == (uint64_t)distinct);
        CHECK(sb.evictions == 0);
        CHECK(sb.bytes_read == sb.misses * 3 * 32 * 64 * 2);
        CHECK(st.misses > sb.misses);
        CHECK(st.evictions > 0);
        CHECK(st.hits > 0);
        CHECK(st.peak_bytes <= 250000);
        CHECK(st.resident == 20);
        CHECK(so.resident == 1);
        CHECK(so.misses > st.misses);
        CHECK(st.bytes_read == st.misses * 3 * 32 * 64 * 2);
    }
    model_free(big);
    model_free(tiny);
    model_free(one);
    g_free(dir);
    g_free(a);
    g_free(b);
}

/* the cache with experts mapped, and read into copies */
static void test_small_cache_mapped(void) { small_cache(); }
static void test_small_cache_read(void) { small_cache(); }

/* ---- variants of the fixture in scratch directories ---- */

static void rm_rf(const char *path)
{
    if (g_file_test(path, G_FILE_TEST_IS_DIR) && !g_file_test(path, G_FILE_TEST_IS_SYMLINK)) {
        GDir *d = g_dir_open(path, 0, NULL);
        const char *f;
        while (d && (f = g_dir_read_name(d))) {
            char *p = g_build_filename(path, f, NULL);
            rm_rf(p);
            g_free(p);
        }
        if (d)
            g_dir_close(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}


static void write_json(const char *path, const cJSON *j)
{
    char *s = cJSON_Print(j);
    g_file_set_contents(path, s, -1, NULL);
    free(s);
}

/* dst gets symlinks to src's shards and copies of its JSON files, which
 * the caller then edits. */
static char *variant(const char *src_name, const char *dst_name)
{
    char *src = dir_of(src_name);
    char *dst = g_build_filename(tmp, dst_name, NULL);
    rm_rf(dst);
    g_mkdir_with_parents(dst, 0755);
    GDir *d = g_dir_open(src, 0, NULL);
    const char *f;
    while ((f = g_dir_read_name(d))) {
        char *from = g_build_filename(src, f, NULL), *to = g_build_filename(dst, f, NULL);
        char *abs = g_canonicalize_filename(from, NULL);
        if (g_str_has_suffix(f, ".safetensors")) {
            if (symlink(abs, to) != 0)
                printf("  cannot link %s\n", to);
        } else {
            gchar *buf;
            gsize len;
            if (g_file_get_contents(from, &buf, &len, NULL)) {
                g_file_set_contents(to, buf, (gssize)len, NULL);
                g_free(buf);
            }
        }
        g_free(abs);
        g_free(from);
        g_free(to);
    }
    g_dir_close(d);
    g_free(src);
    return dst;
}

static cJSON *load_in(const char *dir, const char *f)
{
    char *p = g_build_filename(dir, f, NULL);
    cJSON *j = qm_json_load(p, NULL);
    g_free(p);
    return j;
}

static void save_in(const char *dir, const char *f, const cJSON *j)
{
    char *p = g_build_filename(dir, f, NULL);
    write_json(p, j);
    g_free(p);
}

/* Rewrites the index so that every routed expert lives in
 * experts/expert_EEE_layer_LL.safetensors, as qmoe-extract lays it out;
 * with write_files the files are written from the original bytes. */
static void split_experts(const char *dir, int write_files)
{
    GError *err = NULL;
    ckpt *ck = ckpt_open(dir, &err);
    if (!ck) {
        printf("  %s\n", err->message);
        g_error_free(err);
        return;
    }
    cJSON *idx = load_in(dir, "model.safetensors.index.json");
    cJSON *wm = cJSON_GetObjectItem(idx, "weight_map");
    char *ed = g_build_filename(dir, "experts", NULL);
    g_mkdir_with_parents(ed, 0755);
    for (int l = 0; l < 3; l++)
        for (int e = 0; e < 16; e++) {
            char file[64], names[3][96];
            const char *proj[3] = {"gate_proj", "up_proj", "down_proj"};
            st_entry ent[3];
            const void *data[3];
            snprintf(file, sizeof file, "experts/expert_%03d_layer_%02d.safetensors", e, l);
            for (int k = 0; k < 3; k++) {
                snprintf(names[k], sizeof names[k], "model.layers.%d.mlp.experts.%d.%s.weight",
                         l, e, proj[k]);
                const uint8_t *bytes = NULL;
                const st_tensor *t = ckpt_tensor(ck, names[k], 1, &bytes, NULL);
                memset(&ent[k], 0, sizeof ent[k]);
                ent[k].name = names[k];
                ent[k].dtype = t->dtype;
                ent[k].ndim = t->ndim;
                memcpy(ent[k].shape, t->shape, sizeof t->shape);
                ent[k].nbytes = t->end - t->begin;
                data[k] = bytes;
                cJSON_ReplaceItemInObject(wm, names[k], cJSON_CreateString(file));
            }
            if (write_files) {
                char *p = g_build_filename(dir, file, NULL);
                if (st_write_file(p, ent, 3, data, NULL, &err) != 0) {
                    printf("  %s\n", err->message);
                    g_clear_error(&err);
                }
                g_free(p);
            }
        }
    save_in(dir, "model.safetensors.index.json", idx);
    cJSON_Delete(idx);
    g_free(ed);
    ckpt_close(ck);
}

static void test_extracted_equivalent(void)
{
    char *dir = variant("qwen3moe", "split"), *orig = dir_of("qwen3moe");
    split_experts(dir, 1);
    size_t n = (size_t)seq_len[2] * VOCAB;
    float *a = g_new(float, n), *b = g_new(float, n);
    model *mo = open_model(orig, 0, 1, 0), *ms = open_model(dir, 20000, 2, 0);
    CHECK(mo && ms);
    if (mo && ms) {
        CHECK(model_sequence_logits(mo, seq_ids[2], seq_len[2], a, NULL) == 0);
        CHECK(model_sequence_logits(ms, seq_ids[2], seq_len[2], b, NULL) == 0);
        CHECK(memcmp(a, b, n * sizeof(float)) == 0);
        expert_stats st;
        expert_store_stats(model_experts(ms), &st);
        CHECK(st.misses > 0 && st.evictions > 0);
    }
    model_free(mo);
    model_free(ms);
    g_free(a);
    g_free(b);
    g_free(dir);
    g_free(orig);
}

static void test_missing_expert(void)
{
    char *dir = variant("qwen3moe", "missing");
    split_experts(dir, 0); /* index names expert files that do not exist */
    model *m = open_model(dir, 0, 1, 0);
    CHECK(m != NULL);
    if (m) {
        float *lg = g_new(float, VOCAB);
        GError *err = NULL;
        /* token 0 of seq3 routes layer 0 to expert 9 first in id order: 3 */
        CHECK(model_sequence_logits(m, seq_ids[2], 1, lg, &err) != 0);
        CHECK(err && err->code == QM_ERR_IO);
        CHECK_CONTAINS(err ? err->message : NULL, "cannot load expert (layer 0, expert 3)");
        CHECK_CONTAINS(err ? err->message : NULL, "experts/expert_003_layer_00.safetensors");
        g_clear_error(&err);
        g_free(lg);
    }
    model_free(m);
    g_free(dir);
}

/* The golden comparison must catch the classic mistakes. */
static void negative_control(const char *name, const char *key, cJSON *value,
                             double min_score)
{
    char *dir = variant("qwen3moe", name);
    cJSON *cfg = load_in(dir, "config.json");
    cJSON_ReplaceItemInObject(cfg, key, value);
    save_in(dir, "config.json", cfg);
    cJSON_Delete(cfg);
    model *m = open_model(dir, 0, 1, 0);
    CHECK(m != NULL);
    if (m) {
        double sc = golden_score(m, 0, NULL);
        printf("  %s: score %.3g\n", name, sc);
        CHECK(sc >= min_score);
    }
    model_free(m);
    g_free(dir);
}

static void test_wrong_eps_caught(void)
{
    negative_control("eps", "rms_norm_eps", cJSON_CreateNumber(1e-5), 0.05);
}

static void test_unnormalised_topk_caught(void)
{
    negative_control("topk", "norm_topk_prob", cJSON_CreateFalse(), 0.1);
}

static void test_wrong_head_dim_rejected(void)
{
    /* hidden / heads = 16 is the classic wrong head_dim: shapes disagree */
    char *dir = variant("qwen3moe", "headdim");
    cJSON *cfg = load_in(dir, "config.json");
    cJSON_DeleteItemFromObject(cfg, "head_dim");
    save_in(dir, "config.json", cfg);
    cJSON_Delete(cfg);
    GError *err = NULL;
    model *m = model_load(dir, NULL, &err);
    CHECK(m == NULL);
    CHECK(err && err->code == QM_ERR_FORMAT);
    CHECK_CONTAINS(err ? err->message : NULL, "q_proj.weight' has shape [128, 64], the config implies [64, 64]");
    g_clear_error(&err);
    g_free(dir);
}

static void test_sampling_seeded(void)
{
    char *dir = dir_of("qwen3moe");
    model *m = open_model(dir, 0, 1, 0);
    CHECK(m != NULL);
    if (m) {
        int a[8], b[8], c[8], na, nb, nc;
        model_sampling s = {.temperature = 1.0f, .seed = 42};
        CHECK(model_generate(m, seq_ids[1], seq_len[1], 8, &s, NULL, a, &na, NULL, NULL) == 0);
        CHECK(model_generate(m, seq_ids[1], seq_len[1], 8, &s, NULL, b, &nb, NULL, NULL) == 0);
        s.seed = 43;
        CHECK(model_generate(m, seq_ids[1], seq_len[1], 8, &s, NULL, c, &nc, NULL, NULL) == 0);
        CHECK(na == 8 && nb == 8 && nc == 8);
        CHECK(memcmp(a, b, sizeof a) == 0);
        CHECK(memcmp(a, c, sizeof a) != 0);
        /* a stop id ends generation after emitting it */
        int stop = 52; /* first greedy token of seq2 */
        model_sampling g = {.stop_ids = &stop, .n_stop = 1};
        CHECK(model_generate(m, seq_ids[1], seq_len[1], 8, &g, NULL, a, &na, NULL, NULL) == 0);
        CHECK(na == 1 && a[0] == 52);
        GError *err = NULL;
        CHECK(model_step(m, VOCAB, NULL, &err) != 0);
        CHECK_CONTAINS(err ? err->message : NULL, "token id 384 is outside");
        g_clear_error(&err);
    }
    model_free(m);
    g_free(dir);
}

int main(void)
{
    const char *root = g_getenv("QMOE_ROOT");
    fix = g_build_filename(root ? root : ".", "tests/fixtures/qwen3moe-tiny", NULL);
    tmp = g_dir_make_tmp("qmoe-test-model.XXXXXX", NULL);
    load_golden();
    printf("  sequences of %d, %d, %d tokens\n", seq_len[0], seq_len[1], seq_len[2]);
    RUN(test_qwen3moe_full);
    RUN(test_qwen3moe_masked);
    RUN(test_omni_full);
    RUN(test_omni_masked);
    RUN(test_layouts_identical);
    RUN(test_nll);
    RUN(test_router_full);
    RUN(test_router_masked);
    RUN(test_mask_too_small);
    RUN(test_batched_prefill);
    RUN(test_batch_composition);
    RUN(test_batch_errors);
    RUN(test_seq_truncate);
    RUN(test_layer_mask);
    RUN(test_seq_mask_and_sink);
    RUN(test_feed_errors);
    RUN(test_batch_lookups);
    RUN(test_small_cache_mapped);
    io_mode = EXPERT_IO_READ; /* the same with copies instead of mappings */
    RUN(test_small_cache_read);
    RUN(test_extracted_equivalent);
    RUN(test_missing_expert);
    RUN(test_qwen3moe_full);
    RUN(test_batched_prefill);
    io_mode = EXPERT_IO_MAP;
    RUN(test_extracted_equivalent);
    RUN(test_missing_expert);
    RUN(test_wrong_eps_caught);
    RUN(test_unnormalised_topk_caught);
    RUN(test_wrong_head_dim_rejected);
    RUN(test_sampling_seeded);
    cJSON_Delete(greedy);
    cJSON_Delete(router_gold);
    cJSON_Delete(router_masked_gold);
    cJSON_Delete(nll_gold);
    rm_rf(tmp);
    g_free(tmp);
    g_free(fix);
    TEST_EXIT();
}
