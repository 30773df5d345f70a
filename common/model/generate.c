/* generate.c - whole sequences: their logits, sampling and generation
 * (model.h) */
#include "model/model_impl.h"
#include "base/util.h"

#include <string.h>

int model_sequence_logits(model *m, const int *ids, int n, float *logits,
                          GError **err)
{
    model_reset(m);
    return model_feed(m, ids, n, MODEL_LOGITS_ALL, logits, err);
}


/* splitmix64: a small, well-mixed generator whose stream depends only on
 * the seed, so that --seed reproduces a sample anywhere. */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int pick(const float *logits, int vocab, const model_sampling *s, uint64_t *rng)
{
    int best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    if (!s || s->temperature <= 0)
        return best;
    double sum = 0, mx = logits[best];
    for (int i = 0; i < vocab; i++)
        sum += exp(((double)logits[i] - mx) / s->temperature);
    double r = (double)(next_rand(rng) >> 11) / 9007199254740992.0 * sum, acc = 0;
    for (int i = 0; i < vocab; i++) {
        acc += exp(((double)logits[i] - mx) / s->temperature);
        if (r < acc)
            return i;
    }
    return best;
}

int model_generate(model *m, const int *prompt, int n_prompt, int n_new,
                   const model_sampling *s, float *prompt_logits, int *out,
                   int *n_out, model_gen_stats *gs, GError **err)
{
    const model_config *c = &m->c;
    model_gen_stats local;
    if (!gs)
        gs = &local;
    memset(gs, 0, sizeof *gs);
    *n_out = 0;
    if (n_prompt < 1) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE, "the prompt is empty");
        return -1;
    }
    uint64_t rng = s ? s->seed : 0;
    model_reset(m);
    double t0 = qm_monotonic();
    if (prompt_logits ? model_feed(m, prompt, n_prompt, MODEL_LOGITS_ALL, prompt_logits, err)
                      : model_feed(m, prompt, n_prompt,
                                   n_new > 0 ? MODEL_LOGITS_LAST : MODEL_LOGITS_NONE,
                                   m->r.logits, err))
        return -1;
    if (prompt_logits && n_new > 0)
        memcpy(m->r.logits, prompt_logits + (size_t)(n_prompt - 1) * c->vocab,
               sizeof(float) * c->vocab);
    double t1 = qm_monotonic();
    gs->prefill_s = t1 - t0;
    for (int i = 0; i < n_new; i++) {
        int next = pick(m->r.logits, c->vocab, s, &rng);
        out[(*n_out)++] = next;
        int stop = 0;
        for (int j = 0; s && j < s->n_stop; j++)
            stop |= s->stop_ids[j] == next;
        if (s && s->on_token && s->on_token(s->user, next) != 0)
            stop = 1;
        if (stop || i + 1 == n_new)
            break;
        double ts = qm_monotonic();
        if (model_step(m, next, m->r.logits, err) != 0)
            return -1;
        if (gs->decode_steps < MODEL_STEP_TIMES)
            gs->step_s[gs->decode_steps] = qm_monotonic() - ts;
        gs->decode_steps++;
        gs->decode_weight_bytes += m->step_bytes;
        gs->decode_s = qm_monotonic() - t1;
    }
    return 0;
}
