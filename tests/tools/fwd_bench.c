/* fwd_bench.c - qmoe's forward pass measured the way llama-bench measures
 * llama.cpp, so that the two can be compared as ratios: load the model,
 * one untimed warm-up, then timed repetitions.
 *
 *   fwd_bench MODEL THREADS PROMPT TOKENS REPS [CACHE_MB]
 *
 * The warm-up feeds a prompt of 256 random ids, then brings in every
 * expert of every layer and reads all of its weights once (a product with
 * a vector of ones; random weights route most tokens to a few experts, so
 * a prompt alone leaves many untouched), as llama.cpp maps its whole file
 * (MAP_POPULATE) at load. That needs a cache that holds every expert
 * (CACHE_MB). qmoe-run's own timings are of a fresh process instead: its
 * prompt pays the first touch of every expert page it reads.
 *
 * pp: a prompt of PROMPT random ids from an empty cache, logits of the
 * last position (llama-bench -p PROMPT -n 0). tg: TOKENS random ids one at
 * a time, each with its logits, after a prompt of PROMPT ids (llama-bench
 * -p 0 -n TOKENS -d PROMPT). Random ids, as llama-bench's, so decode
 * routes like text does, not to one expert set a greedy loop repeats.
 * Prints "pp_tokens_per_s tg_tokens_per_s", each the mean of REPS.
 * tests/bench/run_prefill.sh runs it beside llama-bench; devtools.sh
 * checks that it runs. */
#include "model/expert_store.h"
#include "model/matvec.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* xorshift64: the same ids every run */
static int next_id(uint64_t *s, int vocab)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (int)(*s % (uint64_t)vocab);
}

static void fill(int *ids, int n, uint64_t *s, int vocab)
{
    for (int i = 0; i < n; i++)
        ids[i] = next_id(s, vocab);
}

static int fail(GError *err)
{
    fprintf(stderr, "fwd_bench: %s\n", err->message);
    g_error_free(err);
    return 1;
}

/* Every expert brought into the cache and each weight read once. */
static int touch_experts(model *m, GError **err)
{
    const model_config *c = model_get_config(m);
    expert_store *s = model_experts(m);
    if (!s || c->n_experts <= 0)
        return 0;
    int n = c->hidden > c->moe_inter ? c->hidden : c->moe_inter;
    float *x = g_new(float, n), *out = g_new(float, n);
    for (int i = 0; i < n; i++)
        x[i] = 1.0f;
    int rc = 0;
    for (int l = 0; l < c->n_layers && rc == 0; l++) {
        if (!c->is_moe[l])
            continue;
        for (int e = 0; e < c->n_experts; e++) {
            const expert_mats *em = expert_store_get(s, l, e, err);
            if (!em) {
                rc = -1;
                break;
            }
            qm_matvec(NULL, out, &em->gate, x);
            qm_matvec(NULL, out, &em->up, x);
            qm_matvec(NULL, out, &em->down, x);
        }
    }
    g_free(x);
    g_free(out);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 6 || argc > 7) {
        fprintf(stderr, "usage: fwd_bench MODEL THREADS PROMPT TOKENS REPS [CACHE_MB]\n");
        return 2;
    }
    int threads = atoi(argv[2]), prompt = atoi(argv[3]), tokens = atoi(argv[4]);
    int reps = atoi(argv[5]);
    long cache_mb = argc == 7 ? atol(argv[6]) : 8192;
    if (threads < 1 || prompt < 1 || tokens < 1 || reps < 1 || cache_mb < 1) {
        fprintf(stderr, "fwd_bench: THREADS, PROMPT, TOKENS, REPS and CACHE_MB must be >= 1\n");
        return 2;
    }
    model_opts o = {.n_threads = threads, .cache_bytes = (uint64_t)cache_mb << 20,
                    .max_seq = (prompt > 256 ? prompt : 256) + tokens + 1};
    GError *err = NULL;
    model *m = model_load(argv[1], &o, &err);
    if (!m)
        return fail(err);
    int vocab = model_get_config(m)->vocab;
    int n_ids = prompt > 256 ? prompt : 256;
    int *ids = g_new(int, n_ids);
    float *logits = g_new(float, vocab);
    uint64_t seed = 0x9e3779b97f4a7c15u;

    fill(ids, 256, &seed, vocab); /* the warm-up */
    model_reset(m);
    if (model_feed(m, ids, 256, MODEL_LOGITS_LAST, logits, &err) != 0 ||
        model_step(m, next_id(&seed, vocab), logits, &err) != 0)
        return fail(err);

    if (touch_experts(m, &err) != 0)
        return fail(err);

    double pp = 0, tg = 0;
    for (int r = 0; r < reps; r++) {
        fill(ids, prompt, &seed, vocab);
        model_reset(m);
        double t0 = now();
        if (model_feed(m, ids, prompt, MODEL_LOGITS_LAST, logits, &err) != 0)
            return fail(err);
        pp += prompt / (now() - t0);

        fill(ids, prompt, &seed, vocab);
        model_reset(m);
        if (model_feed(m, ids, prompt, MODEL_LOGITS_NONE, NULL, &err) != 0)
            return fail(err);
        t0 = now();
        for (int i = 0; i < tokens; i++)
            if (model_step(m, next_id(&seed, vocab), logits, &err) != 0)
                return fail(err);
        tg += tokens / (now() - t0);
    }
    printf("%.3f %.3f\n", pp / reps, tg / reps);
    g_free(logits);
    g_free(ids);
    model_free(m);
    return 0;
}
