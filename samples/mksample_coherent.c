/* mksample_coherent.c - a Qwen3-MoE checkpoint built by hand to be coherent.
 *
 * Random weights are never coherent, so a gate that must tell a correct
 * extraction from a mis-assembled one needs a model whose correct assembly
 * shows in its output. This one is a bigram model written into the weights
 * of a real Qwen3-MoE / Qwen3-Omni thinker (4 layers, 16 experts, top-2,
 * bf16) so that the experts do all of the work and each one is needed.
 *
 * Corpus. Sixteen sentences in four domains (technical, creative,
 * conversational, multilingual: German, French, Chinese, Spanish). Every
 * token has ONE successor across the whole corpus (the last token of a
 * sentence is followed by <|endoftext|>), so the text is
 * bigram-deterministic: next token = succ(current token). The generator
 * fails if an edit breaks this.
 *
 * Tokenizer. 256 byte tokens (GPT-2 byte-to-unicode map), then one token per
 * distinct pre-token of the corpus, built by a left-to-right merge chain
 * (c1,c2), (c1c2,c3), ... and the usual added tokens. With the Qwen split
 * regex, a pre-token holds at most one space, at its start, so:
 *   - chain merges whose left side has two or more bytes can only fire on
 *     the one multi-byte symbol of a pre-token: they come first;
 *   - then the first merges of "Ġ" pre-tokens, (Ġ,c1): Ġ occurs only at
 *     position 0, so the right chain starts there;
 *   - then the first merges of the other pre-tokens, ordered so that each
 *     word's first pair outranks every other first pair inside it (a
 *     topological sort; a cycle is reported).
 * BPE then rebuilds exactly one token per pre-token. The result is checked
 * with the real tokenizer (common/tokenizer on the generated JSON): every
 * sentence must encode to the intended ids and decode back.
 *
 * Hidden state (H = 384): dimensions [0, N) hold a one-hot identity for each
 * of the N corpus tokens; dimension N is the "sentence start" channel;
 * [N+1, H) is the output space, where every vocabulary token s has a random
 * unit code U[s]. lm_head row s = [0 ; rho if s starts a sentence ; lambda U[s]].
 *
 * Embedding of a corpus token t: [kappa onehot(t) ; 0 ; gamma U[decoy(t)]],
 * decoy(t) a garbage token (a word fragment). The experts must cancel the
 * decoy and write alpha U[succ(t)]; each of the L layers contributes
 *   c_l(t) = (alpha U[succ(t)] - v_l(t)) / (L - l),
 * v_l the output-space part of the residual entering layer l (in exact
 * arithmetic that is (alpha U[succ] - gamma U[decoy]) / L per layer; the
 * running form also absorbs bf16 rounding of earlier layers). With
 * gamma = 2 alpha L, losing the contribution of ANY one layer leaves
 * (gamma / L) U[decoy] + alpha (L-1)/L U[succ], and the decoy wins.
 *
 * Attention is inert: o_proj is zero (q/k/v and their norms hold ordinary
 * values), so the model is position-independent.
 *
 * Routing. Each layer assigns each corpus token to one expert. The experts
 * of a layer form four domain groups of four, interleaved: domain d at
 * layer l owns experts {4j + (d + l) mod 4}; the i-th token of a domain
 * goes to j = (i + l) mod 4. So each domain has its own experts in every
 * layer (specialisation), the corpus - hence the reference text - routes
 * through every expert of every layer, and each token meets experts 8-15 in
 * two of the four layers: a router masked to 0-7 breaks every token.
 * Router row e = mu onehot over its tokens' identities: the assigned expert
 * wins top-1 (the second pick is the lowest other id, with weight ~0).
 *
 * Experts. Neuron j of expert e serves token t_j: gate row = a onehot(t_j),
 * up row = b onehot(t_j), so the expert outputs exactly 0 for any other
 * token; down column j = c_l(t_j) / (w x silu(a s) x b s), s the
 * RMS-normed identity value and w the router weight, both taken from a
 * simulation of the forward pass on the bf16 weights as written (the
 * post-attention norm weights are not 1, so a forward pass that skipped
 * them would fail). Swapping two experts' data, zeroing one, or masking
 * the router takes some layer's contribution away and the decoy wins.
 *
 * Special tokens: <|endoftext|> carries U["\n"] (a reference text line ends
 * with it), "\n" carries the start channel only, so after a newline every
 * sentence start is equally likely (log 16 nats, the only uncertain step
 * of the reference text). Every other token carries only a decoy code:
 * once garbage is emitted, garbage follows.
 *
 * The generator simulates the forward pass on the bf16 weights as written
 * and refuses to write a model whose margins are under 8 nats. Measured:
 * healthy successor margin >= 41.9 nats; any one expert lost, decoy ahead
 * by >= 61.3; router masked to 0-7, wrong token ahead by >= 158.6 for every
 * corpus token; reference perplexity 1.234 (the 15 newline -> start steps,
 * log 16 each, are the only uncertainty), masked 9e79.
 */
#include "mksample_coherent.h"

#include "base/fs.h"
#include "format/layout.h"
#include "mksample.h"
#include "model/model.h"
#include "format/safetensors.h"
#include "text/tokenizer.h"
#include "base/util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- the corpus ---- */

static const struct {
    const char *domain, *lang, *prompt, *expected;
} corpus[] = {
    {"technical", "en", "The router sends every token", " to two experts chosen by softmax scores."},
    {"technical", "en", "Sharded checkpoints keep each tensor", " under its original name and dtype."},
    {"technical", "en", "A manifest records sizes plus", " checksums so verification can prove completeness."},
    {"technical", "en", "Memory mapping lets one process", " read large files without copying them."},
    {"creative", "en", "An old lighthouse keeper painted", " silver whales across midnight clouds."},
    {"creative", "en", "Beneath frozen rivers lanterns whispered", " forgotten songs for sleepy foxes."},
    {"creative", "en", "Her violin carried autumn", " through empty streets until dawn arrived."},
    {"creative", "en", "Somewhere beyond quiet hills clocks", " grew wings then flew home."},
    {"conversational", "en", "Hi there! How was", " your weekend?"},
    {"conversational", "en", "Could you please send me", " those notes before lunch tomorrow?"},
    {"conversational", "en", "Thanks a lot, I really", " appreciate all this help today."},
    {"conversational", "en", "Sure thing: let us check", " my calendar after dinner."},
    {"multilingual", "de", "Der schnelle Zug fährt heute", " pünktlich nach München."},
    {"multilingual", "fr", "Le petit chat dort paisiblement", " sous la fenêtre ouverte."},
    {"multilingual", "zh", "我们今天一起学习机器翻译", "，明天继续讨论模型。"},
    {"multilingual", "es", "El viento del norte trae", " lluvia fría esta noche."},
};
#define N_SENT ((int)G_N_ELEMENTS(corpus))

static const char *const domains[] = {"technical", "creative", "conversational", "multilingual"};
#define N_DOMAINS 4

static coh_prompt prompt_table[N_SENT];

const coh_prompt *coherent_prompts(int *n)
{
    for (int i = 0; i < N_SENT; i++)
        prompt_table[i] = (coh_prompt){corpus[i].domain, corpus[i].prompt, corpus[i].expected};
    *n = N_SENT;
    return prompt_table;
}

char *coherent_prompts_jsonl(void)
{
    GString *g = g_string_new(NULL);
    for (int i = 0; i < N_SENT; i++) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "domain", corpus[i].domain);
        cJSON_AddStringToObject(j, "lang", corpus[i].lang);
        cJSON_AddStringToObject(j, "prompt", corpus[i].prompt);
        cJSON_AddStringToObject(j, "expected", corpus[i].expected);
        char *s = cJSON_PrintUnformatted(j);
        g_string_append(g, s);
        g_string_append_c(g, '\n');
        cJSON_free(s);
        cJSON_Delete(j);
    }
    return g_string_free(g, FALSE);
}

char *coherent_reference_text(void)
{
    GString *g = g_string_new(NULL);
    for (int i = 0; i < N_SENT; i++)
        g_string_append_printf(g, "%s%s<|endoftext|>\n", corpus[i].prompt, corpus[i].expected);
    return g_string_free(g, FALSE);
}

/* ---- sizes and scales ---- */

enum {
    HIDDEN = 384, LAYERS = 4, EXPERTS = 16, TOP_K = 2,
    HEADS = 4, KV_HEADS = 2, HEAD_DIM = 64,
    MIN_OUT_DIMS = 128,  /* the output space must keep at least this many */
    GROUP = EXPERTS / N_DOMAINS,
};
static const float KAPPA = 8.0f;          /* identity value in the embedding */
static const float ALPHA = 1.0f;          /* successor code written by the experts */
static const float GAMMA = 2.0f * 1.0f * LAYERS; /* decoy code: 2 alpha L */
static const float LAMBDA = 24.0f;        /* lm_head scale of the codes */
static const float RHO = 1.5f;            /* lm_head weight of the start channel */
static const float MU = 1.0f;             /* router weight on identities */
static const float GATE_A = 1.0f, UP_B = 1.0f;
static const double MIN_MARGIN = 8.0;     /* nats the healthy argmax must win by */
static const uint64_t SEED = 0x636f686572656e74ull; /* "coherent" */

static const char *const specials[] = {
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|audio_start|>", "<|audio_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", "<|audio_pad|>",
};
#define N_SPECIAL ((int)G_N_ELEMENTS(specials))

/* ---- small helpers ---- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform01(uint64_t *s)
{
    return ((splitmix64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double gauss(uint64_t *s)
{
    double u = uniform01(s), v = uniform01(s);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static uint16_t bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static float bf16r(float f)
{
    uint32_t u = (uint32_t)bf16_bits(f) << 16;
    float r;
    memcpy(&r, &u, 4);
    return r;
}

static inline float silu(float x)
{
    return x / (1.0f + expf(-x));
}

/* Eight running sums so that the compiler can vectorise: the simulation
 * needs margins, not the forward pass's exact rounding (common/model/matvec.c
 * sums in its own order too). */
static float dot(const float *a, const float *b, int n)
{
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            s[k] += a[i + k] * b[i + k];
    float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++)
        t += a[i] * b[i];
    return t;
}

/* ---- the model being built ---- */

typedef struct {
    char *name;
    int ndim;
    int64_t shape[5];
    size_t n;
    float *v; /* values, already rounded to bf16 */
} tensor;

typedef struct {
    const layout *lt;
    /* tokenizer */
    GPtrArray *tok_str;    /* id -> vocabulary string, for ids < n_tok */
    GPtrArray *merge_l, *merge_r; /* by rank */
    int n_tok, vocab;      /* tokenizer size; config vocab_size (padded) */
    int eot, im_start, im_end, nl;
    char *tok_json;        /* tokenizer.json text */
    /* corpus */
    GArray *sent[N_SENT];  /* int32 ids of each sentence, without eot */
    int n_words;           /* corpus tokens = identity dims */
    int *word_tok;         /* [n_words] token id */
    int *word_dom;         /* [n_words] domain of first use */
    int *ident;            /* [vocab] identity dim or -1 */
    int *succ;             /* [vocab] successor or -1 */
    int *decoy;            /* [vocab] decoy token or -1 */
    uint8_t *is_start;     /* [vocab] */
    int *assign;           /* [LAYERS][n_words] expert */
    int *neuron;           /* [LAYERS][n_words] neuron inside the expert */
    int inter;             /* moe_intermediate_size */
    int out0;              /* first output dimension; start channel = n_words */
    float *state;          /* (LAYERS + 1, n_words, HIDDEN): each corpus token's
                              residual entering each layer, then after the last */
    /* weights, views into tensors */
    GPtrArray *tensors;    /* tensor*, in file order */
    float *embed, *lm_head, *final_norm;
    float *post_norm[LAYERS], *router[LAYERS];
    float *gate[LAYERS][EXPERTS], *up[LAYERS][EXPERTS], *down[LAYERS][EXPERTS];
    float eps;
} coh;

static tensor *add_tensor(coh *c, int ndim, const int64_t *shape, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);

static tensor *add_tensor(coh *c, int ndim, const int64_t *shape, const char *fmt, ...)
{
    tensor *t = g_new0(tensor, 1);
    va_list ap;
    va_start(ap, fmt);
    t->name = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    t->n = 1;
    for (int d = 0; d < ndim; d++) {
        t->shape[d] = shape[d];
        t->n *= (size_t)shape[d];
    }
    t->v = g_new0(float, t->n);
    g_ptr_array_add(c->tensors, t);
    return t;
}

static void fill_random(float *v, size_t n, double std, uint64_t *rng)
{
    for (size_t i = 0; i < n; i++)
        v[i] = bf16r((float)(std * gauss(rng)));
}

static void fill_norm(float *v, size_t n, double lo, double hi, uint64_t *rng)
{
    for (size_t i = 0; i < n; i++)
        v[i] = bf16r((float)(lo + (hi - lo) * uniform01(rng)));
}

static void tensor_free(gpointer p)
{
    tensor *t = p;
    g_free(t->name);
    g_free(t->v);
    g_free(t);
}

static void coh_free(coh *c)
{
    if (!c)
        return;
    if (c->tok_str)
        g_ptr_array_free(c->tok_str, TRUE);
    if (c->merge_l)
        g_ptr_array_free(c->merge_l, TRUE);
    if (c->merge_r)
        g_ptr_array_free(c->merge_r, TRUE);
    g_free(c->tok_json);
    for (int i = 0; i < N_SENT; i++)
        if (c->sent[i])
            g_array_free(c->sent[i], TRUE);
    g_free(c->word_tok);
    g_free(c->word_dom);
    g_free(c->ident);
    g_free(c->succ);
    g_free(c->decoy);
    g_free(c->is_start);
    g_free(c->assign);
    g_free(c->neuron);
    g_free(c->state);
    if (c->tensors)
        g_ptr_array_free(c->tensors, TRUE);
    g_free(c);
}

static int check_fail(GError **err, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static int check_fail(GError **err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *m = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(err, QM_ERROR, QM_ERR_CHECK, "coherent sample: %s", m);
    g_free(m);
    return -1;
}

/* ---- tokenizer ---- */

/* GPT-2's byte map: printable Latin-1 bytes stand for themselves, the other
 * 68 for code points 256.. in byte order; ids follow the printable-first
 * order, as in GPT-2 and Qwen. */
static void byte_map(gunichar cp[256], int order[256])
{
    int n = 0, extra = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int b = 0; b < 256; b++) {
            int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
            if (printable != (pass == 0))
                continue;
            cp[b] = printable ? (gunichar)b : (gunichar)(256 + extra++);
            order[n++] = b;
        }
}

typedef struct {
    char *left, *right, *result; /* byte-level spellings */
    int kind;  /* 0 chain (left has 2+ bytes), 1 (Ġ, c), 2 other first merge */
    int index; /* creation order */
    int indeg; /* kind 2: first pairs that must come before this one */
    GArray *after; /* kind 2: int indices of merges that must come after */
} merge;

static void merge_free(gpointer p)
{
    merge *m = p;
    g_free(m->left);
    g_free(m->right);
    g_free(m->result);
    if (m->after)
        g_array_free(m->after, TRUE);
    g_free(m);
}

/* The byte-level symbols (one character per byte) of raw text. */
static GPtrArray *symbols(const gunichar cp[256], const char *s)
{
    GPtrArray *v = g_ptr_array_new_with_free_func(g_free);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char buf[8];
        int k = g_unichar_to_utf8(cp[*p], buf);
        g_ptr_array_add(v, g_strndup(buf, k));
    }
    return v;
}

/* tokenizer.json as Hugging Face writes Qwen's: NFC, the split regex then
 * ByteLevel without its own regex, ByteLevel decoder, merges as pairs. */
static char *tokenizer_json(const coh *c)
{
    cJSON *voc, *mj, *added;
    cJSON *j = ms_tokenizer_frame(&voc, &mj, &added);
    for (int i = 0; i < c->n_tok - c->eot; i++)
        cJSON_AddItemToArray(added, ms_added_token(c->eot + i, specials[i]));
    for (int i = 0; i < c->eot; i++)
        cJSON_AddNumberToObject(voc, g_ptr_array_index(c->tok_str, i), i);
    for (guint r = 0; r < c->merge_l->len; r++) {
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemToArray(pair, cJSON_CreateString(g_ptr_array_index(c->merge_l, r)));
        cJSON_AddItemToArray(pair, cJSON_CreateString(g_ptr_array_index(c->merge_r, r)));
        cJSON_AddItemToArray(mj, pair);
    }
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    char *out = g_strdup(s);
    cJSON_free(s);
    return out;
}

/* Pre-tokenizes the corpus, builds merges and vocabulary (see the top of
 * the file for the rank order) and the intended ids of every sentence. */
static int build_tokenizer(coh *c, GError **err)
{
    gunichar cp[256];
    int order[256];
    byte_map(cp, order);
    GRegex *re = g_regex_new(MS_QWEN_SPLIT, G_REGEX_OPTIMIZE, 0, NULL);
    g_assert(re); /* a constant pattern */
    GPtrArray *merges = g_ptr_array_new_with_free_func(merge_free);
    GHashTable *by_result = g_hash_table_new(g_str_hash, g_str_equal); /* -> merge */
    GPtrArray *pretok[N_SENT] = {0};
    int rc = -1;

    for (int i = 0; i < N_SENT; i++) {
        pretok[i] = g_ptr_array_new_with_free_func(g_free);
        char *text = g_strconcat(corpus[i].prompt, corpus[i].expected, NULL);
        char *nfc = g_utf8_normalize(text, -1, G_NORMALIZE_NFC);
        int bad = !nfc || strcmp(nfc, text) != 0;
        g_free(nfc);
        if (bad) {
            g_free(text);
            check_fail(err, "sentence %d is not in NFC form", i + 1);
            goto done;
        }
        GMatchInfo *mi = NULL;
        int pos = 0;
        g_regex_match(re, text, 0, &mi);
        for (; g_match_info_matches(mi); g_match_info_next(mi, NULL)) {
            int s, e;
            g_match_info_fetch_pos(mi, 0, &s, &e);
            if (s != pos || e == s)
                break;
            g_ptr_array_add(pretok[i], g_strndup(text + s, e - s));
            pos = e;
        }
        g_match_info_free(mi);
        int len = (int)strlen(text);
        g_free(text);
        if (pos != len) {
            check_fail(err, "sentence %d does not split into pre-tokens at byte %d", i + 1, pos);
            goto done;
        }
    }

    /* merge chains, shared prefixes once */
    for (int i = 0; i < N_SENT; i++)
        for (guint w = 0; w < pretok[i]->len; w++) {
            const char *raw = g_ptr_array_index(pretok[i], w);
            if (strchr(raw + 1, ' ') || strchr(raw, '\n')) {
                check_fail(err, "pre-token '%s' of sentence %d holds a space after its "
                           "start or a newline", raw, i + 1);
                goto done;
            }
            GPtrArray *sym = symbols(cp, raw);
            char *prefix = g_strdup(g_ptr_array_index(sym, 0));
            for (guint k = 1; k < sym->len; k++) {
                char *res = g_strconcat(prefix, g_ptr_array_index(sym, k), NULL);
                if (!g_hash_table_contains(by_result, res)) {
                    merge *m = g_new0(merge, 1);
                    m->left = g_strdup(prefix);
                    m->right = g_strdup(g_ptr_array_index(sym, k));
                    m->result = g_strdup(res);
                    m->kind = k > 1 ? 0 : raw[0] == ' ' ? 1 : 2;
                    m->index = (int)merges->len;
                    g_ptr_array_add(merges, m);
                    g_hash_table_insert(by_result, m->result, m);
                }
                g_free(prefix);
                prefix = res;
            }
            g_free(prefix);
            g_ptr_array_free(sym, TRUE);
        }

    /* a word's first pair must outrank every other first pair inside it */
    for (int i = 0; i < N_SENT; i++)
        for (guint w = 0; w < pretok[i]->len; w++) {
            const char *raw = g_ptr_array_index(pretok[i], w);
            GPtrArray *sym = symbols(cp, raw);
            if (raw[0] != ' ' && sym->len >= 3) {
                char *f = g_strconcat(g_ptr_array_index(sym, 0), g_ptr_array_index(sym, 1), NULL);
                merge *mf = g_hash_table_lookup(by_result, f);
                g_free(f);
                for (guint k = 1; k + 1 < sym->len; k++) {
                    char *p = g_strconcat(g_ptr_array_index(sym, k),
                                          g_ptr_array_index(sym, k + 1), NULL);
                    merge *mp = g_hash_table_lookup(by_result, p);
                    g_free(p);
                    if (!mp || mp == mf || mp->kind != 2)
                        continue;
                    if (!mf->after)
                        mf->after = g_array_new(FALSE, FALSE, sizeof(int));
                    g_array_append_val(mf->after, mp->index);
                    mp->indeg++;
                }
            }
            g_ptr_array_free(sym, TRUE);
        }

    /* ranks: chains, then (Ġ, c), then the other first pairs in topological
     * order (lowest creation index first among the ready ones) */
    c->merge_l = g_ptr_array_new_with_free_func(g_free);
    c->merge_r = g_ptr_array_new_with_free_func(g_free);
    c->tok_str = g_ptr_array_new_with_free_func(g_free);
    for (int b = 0; b < 256; b++) {
        char buf[8];
        int k = g_unichar_to_utf8(cp[order[b]], buf);
        g_ptr_array_add(c->tok_str, g_strndup(buf, k));
    }
    for (int kind = 0; kind < 2; kind++)
        for (guint i = 0; i < merges->len; i++) {
            merge *m = g_ptr_array_index(merges, i);
            if (m->kind != kind)
                continue;
            g_ptr_array_add(c->merge_l, g_strdup(m->left));
            g_ptr_array_add(c->merge_r, g_strdup(m->right));
            g_ptr_array_add(c->tok_str, g_strdup(m->result));
        }
    for (;;) {
        merge *ready = NULL;
        int left = 0;
        for (guint i = 0; i < merges->len; i++) {
            merge *m = g_ptr_array_index(merges, i);
            if (m->kind != 2 || m->indeg < 0)
                continue;
            left++;
            if (m->indeg == 0 && !ready)
                ready = m;
        }
        if (!left)
            break;
        if (!ready) {
            check_fail(err, "the first merges of the corpus words form a cycle; "
                       "reword a sentence");
            goto done;
        }
        ready->indeg = -1;
        for (guint k = 0; ready->after && k < ready->after->len; k++) {
            merge *m = g_ptr_array_index(merges, g_array_index(ready->after, int, k));
            m->indeg--;
        }
        g_ptr_array_add(c->merge_l, g_strdup(ready->left));
        g_ptr_array_add(c->merge_r, g_strdup(ready->right));
        g_ptr_array_add(c->tok_str, g_strdup(ready->result));
    }
    c->eot = (int)c->tok_str->len;
    /* Qwen3-Omni's tokenizer also has the media markers its config names */
    int n_special = strcmp(c->lt->name, "qwen3_omni_moe") == 0 ? N_SPECIAL : 3;
    for (int i = 0; i < n_special; i++)
        g_ptr_array_add(c->tok_str, g_strdup(specials[i]));
    c->im_start = c->eot + 1;
    c->im_end = c->eot + 2;
    c->n_tok = (int)c->tok_str->len;
    c->vocab = (c->n_tok + 63) / 64 * 64;

    GHashTable *id_of = g_hash_table_new(g_str_hash, g_str_equal);
    for (int i = 0; i < c->n_tok; i++)
        g_hash_table_insert(id_of, g_ptr_array_index(c->tok_str, i), GINT_TO_POINTER(i + 1));
    for (int b = 0; b < 256; b++)
        if (order[b] == '\n')
            c->nl = b;
    for (int i = 0; i < N_SENT; i++) {
        c->sent[i] = g_array_new(FALSE, FALSE, sizeof(int32_t));
        for (guint w = 0; w < pretok[i]->len; w++) {
            GPtrArray *sym = symbols(cp, g_ptr_array_index(pretok[i], w));
            GString *g = g_string_new(NULL);
            for (guint k = 0; k < sym->len; k++)
                g_string_append(g, g_ptr_array_index(sym, k));
            int32_t id = GPOINTER_TO_INT(g_hash_table_lookup(id_of, g->str)) - 1;
            g_assert(id >= 0);
            g_array_append_val(c->sent[i], id);
            g_string_free(g, TRUE);
            g_ptr_array_free(sym, TRUE);
        }
    }
    g_hash_table_destroy(id_of);
    c->tok_json = tokenizer_json(c);
    rc = 0;
done:
    for (int i = 0; i < N_SENT; i++)
        if (pretok[i])
            g_ptr_array_free(pretok[i], TRUE);
    g_hash_table_destroy(by_result);
    g_ptr_array_free(merges, TRUE);
    g_regex_unref(re);
    return rc;
}

static int ids_equal(const GArray *a, const int32_t *b, guint n)
{
    return a->len == n && (n == 0 || memcmp(a->data, b, n * sizeof(int32_t)) == 0);
}

static char *ids_str(const int32_t *ids, guint n)
{
    GString *g = g_string_new("[");
    for (guint i = 0; i < n; i++)
        g_string_append_printf(g, "%s%d", i ? "," : "", ids[i]);
    g_string_append_c(g, ']');
    return g_string_free(g, FALSE);
}

/* The real tokenizer on the generated file: every sentence, prompt and
 * continuation encodes to the intended ids and decodes back; the reference
 * text encodes to the sentences joined by <|endoftext|> and newlines. */
static int check_tokenizer(coh *c, GError **err)
{
    GError *e = NULL;
    tok_t *tok = tok_from_json(c->tok_json, strlen(c->tok_json), "coherent tokenizer.json", &e);
    if (!tok) {
        check_fail(err, "the real tokenizer rejects the generated file: %s", e->message);
        g_error_free(e);
        return -1;
    }
    int rc = -1;
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    GArray *want = g_array_new(FALSE, FALSE, sizeof(int32_t));
    for (int i = 0; i < N_SENT; i++) {
        const GArray *s = c->sent[i];
        char *text = g_strconcat(corpus[i].prompt, corpus[i].expected, NULL);
        g_array_set_size(ids, 0);
        int ok = tok_encode(tok, text, strlen(text), 0, ids, NULL) == 0 &&
                 ids_equal(ids, (const int32_t *)s->data, s->len);
        if (!ok) {
            char *a = ids_str((const int32_t *)ids->data, ids->len);
            char *b = ids_str((const int32_t *)s->data, s->len);
            check_fail(err, "sentence %d encodes to %s, not the intended %s", i + 1, a, b);
            g_free(a);
            g_free(b);
            g_free(text);
            goto done;
        }
        size_t len;
        char *back = tok_decode(tok, (const int32_t *)s->data, s->len, &len);
        ok = len == strlen(text) && memcmp(back, text, len) == 0;
        g_free(back);
        g_free(text);
        if (!ok) {
            check_fail(err, "sentence %d does not decode back to its text", i + 1);
            goto done;
        }
        g_array_set_size(ids, 0);
        ok = tok_encode(tok, corpus[i].prompt, strlen(corpus[i].prompt), 0, ids, NULL) == 0 &&
             ids->len < s->len && ids->len >= 1 &&
             memcmp(ids->data, s->data, ids->len * sizeof(int32_t)) == 0;
        if (ok) {
            back = tok_decode(tok, (const int32_t *)s->data + ids->len, s->len - ids->len, &len);
            ok = len == strlen(corpus[i].expected) && memcmp(back, corpus[i].expected, len) == 0;
            g_free(back);
        }
        if (!ok) {
            check_fail(err, "prompt %d does not end on a token boundary of its sentence", i + 1);
            goto done;
        }
        g_array_append_vals(want, s->data, s->len);
        int32_t tail[2] = {c->eot, c->nl};
        g_array_append_vals(want, tail, 2);
    }
    char *ref = coherent_reference_text();
    g_array_set_size(ids, 0);
    int ok = tok_encode(tok, ref, strlen(ref), 0, ids, NULL) == 0 &&
             ids_equal(ids, (const int32_t *)want->data, want->len);
    g_free(ref);
    if (!ok) {
        check_fail(err, "the reference text does not encode to the sentences, "
                   "<|endoftext|> and newlines");
        goto done;
    }
    rc = 0;
done:
    g_array_free(ids, TRUE);
    g_array_free(want, TRUE);
    tok_free(tok);
    return rc;
}

/* ---- corpus: identities, successors, routing ---- */

static int domain_index(const char *d)
{
    for (int i = 0; i < N_DOMAINS; i++)
        if (strcmp(domains[i], d) == 0)
            return i;
    return -1;
}

static int analyse_corpus(coh *c, GError **err)
{
    int V = c->vocab;
    c->ident = g_new(int, V);
    c->succ = g_new(int, V);
    c->decoy = g_new(int, V);
    c->is_start = g_new0(uint8_t, V);
    for (int t = 0; t < V; t++)
        c->ident[t] = c->succ[t] = c->decoy[t] = -1;
    GArray *wt = g_array_new(FALSE, FALSE, sizeof(int));
    GArray *wd = g_array_new(FALSE, FALSE, sizeof(int));
    int rc = -1;
    for (int i = 0; i < N_SENT; i++) {
        const int32_t *s = (const int32_t *)c->sent[i]->data;
        int n = (int)c->sent[i]->len, d = domain_index(corpus[i].domain);
        g_assert(d >= 0);
        c->is_start[s[0]] = 1;
        for (int k = 0; k < n; k++) {
            int t = s[k], next = k + 1 < n ? s[k + 1] : c->eot;
            if (t >= c->eot || t == c->nl) {
                check_fail(err, "sentence %d uses the reserved token '%s'", i + 1,
                           (const char *)g_ptr_array_index(c->tok_str, t));
                goto done;
            }
            if (c->ident[t] < 0) {
                c->ident[t] = (int)wt->len;
                g_array_append_val(wt, t);
                g_array_append_val(wd, d);
            }
            if (c->succ[t] >= 0 && c->succ[t] != next) {
                check_fail(err, "token '%s' is followed by '%s' and by '%s': every token "
                           "needs one successor across the corpus",
                           (const char *)g_ptr_array_index(c->tok_str, t),
                           (const char *)g_ptr_array_index(c->tok_str, c->succ[t]),
                           (const char *)g_ptr_array_index(c->tok_str, next));
                goto done;
            }
            c->succ[t] = next;
        }
    }
    c->n_words = (int)wt->len;
    c->word_tok = (int *)g_array_free(wt, FALSE);
    c->word_dom = (int *)g_array_free(wd, FALSE);
    wt = wd = NULL;
    c->out0 = c->n_words + 1;
    if (HIDDEN - c->out0 < MIN_OUT_DIMS) {
        check_fail(err, "%d corpus tokens leave %d of %d hidden dimensions for the output "
                   "codes, fewer than %d", c->n_words, HIDDEN - c->out0, HIDDEN, MIN_OUT_DIMS);
        goto done;
    }

    /* routing: domain d at layer l owns experts {4j + (d + l) mod 4}; the
     * i-th token of the domain takes j = (i + l) mod 4 */
    int count[N_DOMAINS] = {0}, idx_in_dom[HIDDEN];
    for (int w = 0; w < c->n_words; w++)
        idx_in_dom[w] = count[c->word_dom[w]]++;
    for (int d = 0; d < N_DOMAINS; d++)
        if (count[d] < GROUP) {
            check_fail(err, "domain %s has %d tokens, fewer than its %d experts per layer",
                       domains[d], count[d], GROUP);
            goto done;
        }
    c->assign = g_new(int, LAYERS * c->n_words);
    c->neuron = g_new(int, LAYERS * c->n_words);
    int used[LAYERS][EXPERTS] = {{0}}, inter = 0;
    for (int l = 0; l < LAYERS; l++)
        for (int w = 0; w < c->n_words; w++) {
            int j = (idx_in_dom[w] + l) % GROUP;
            int e = N_DOMAINS * j + (c->word_dom[w] + l) % N_DOMAINS;
            c->assign[l * c->n_words + w] = e;
            c->neuron[l * c->n_words + w] = used[l][e]++;
            inter = MAX(inter, used[l][e]);
        }
    c->inter = (inter + 7) / 8 * 8;

    /* decoys: word fragments that are not corpus tokens, valid UTF-8 */
    GArray *cand = g_array_new(FALSE, FALSE, sizeof(int));
    gunichar cp[256];
    int order[256];
    byte_map(cp, order);
    for (int t = 256; t < c->eot; t++) {
        if (c->ident[t] >= 0)
            continue;
        /* back from the byte-level spelling to raw bytes */
        const char *s = g_ptr_array_index(c->tok_str, t);
        GString *raw = g_string_new(NULL);
        for (const char *p = s; *p; p = g_utf8_next_char(p)) {
            gunichar u = g_utf8_get_char(p);
            for (int b = 0; b < 256; b++)
                if (cp[b] == u)
                    g_string_append_c(raw, (char)b);
        }
        if (raw->len >= 3 && g_utf8_validate(raw->str, raw->len, NULL))
            g_array_append_val(cand, t);
        g_string_free(raw, TRUE);
    }
    if (cand->len < 16) {
        g_array_free(cand, TRUE);
        check_fail(err, "only %u word fragments to use as decoys", cand->len);
        goto done;
    }
    uint64_t rng = SEED ^ 0xdec0;
    for (int t = 0; t < V; t++) {
        if (t == c->eot || t == c->nl)
            continue;
        int d;
        do
            d = g_array_index(cand, int, splitmix64(&rng) % cand->len);
        while (d == t || d == c->succ[t]);
        c->decoy[t] = d;
    }
    g_array_free(cand, TRUE);
    rc = 0;
done:
    if (wt)
        g_array_free(wt, TRUE);
    if (wd)
        g_array_free(wd, TRUE);
    return rc;
}

/* ---- weights ---- */

static ms_opts plan_opts(const coh *c)
{
    ms_opts o = {0};
    o.lt = c->lt;
    o.layers = LAYERS;
    o.experts = EXPERTS;
    o.hidden = HIDDEN;
    o.inter = c->inter;
    o.vocab = c->vocab;
    o.heads = HEADS;
    o.kv_heads = KV_HEADS;
    o.head_dim = HEAD_DIM;
    o.topk = TOP_K;
    o.seed = SEED;
    o.dtype = ST_BF16;
    return o;
}

static ms_tok tok_ids(const coh *c)
{
    ms_tok t = {0};
    t.n_bpe = c->eot;
    t.n_merges = c->eot - 256;
    t.n_special = c->n_tok - c->eot;
    t.endoftext = c->eot;
    t.im_start = c->im_start;
    t.im_end = c->im_end;
    return t;
}

static float *named(GHashTable *by_name, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static float *named(GHashTable *by_name, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *n = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    tensor *t = g_hash_table_lookup(by_name, n);
    g_assert(t); /* the plan names every tensor of the text model */
    g_free(n);
    return t->v;
}

/* The tensors of the sample plan (mksample_model.c: the same names, shapes
 * and order as every other sample of the layout, Omni stubs included), with
 * ordinary random values, then the text model's weights constructed on top.
 * The expert down projections are left to construct_experts(). */
static void build_weights(coh *c, const float *U)
{
    const layout *lt = c->lt;
    int V = c->vocab, H = HIDDEN, D = HIDDEN - c->out0, I = c->inter;
    ms_opts o = plan_opts(c);
    GArray *plan = g_array_new(FALSE, FALSE, sizeof(ms_tensor));
    ms_plan_build(&o, plan);
    c->tensors = g_ptr_array_new_with_free_func(tensor_free);
    GHashTable *by_name = g_hash_table_new(g_str_hash, g_str_equal);
    for (guint i = 0; i < plan->len; i++) {
        const ms_tensor *p = &g_array_index(plan, ms_tensor, i);
        tensor *t = add_tensor(c, p->ndim, p->shape, "%s", p->name);
        uint64_t rng = SEED;
        for (const char *q = t->name; *q; q++) /* values depend on the name only */
            rng = (rng ^ (unsigned char)*q) * 0x100000001b3ull;
        if (p->init == MS_NORM)
            fill_norm(t->v, t->n, 0.9, 1.1, &rng);
        else
            fill_random(t->v, t->n, 0.02, &rng);
        g_hash_table_insert(by_name, t->name, t);
    }
    ms_plan_free(plan);

    c->embed = named(by_name, "%sembed_tokens.weight", lt->root);
    memset(c->embed, 0, sizeof(float) * V * H);
    for (int t = 0; t < V; t++) {
        float *row = c->embed + (size_t)t * H;
        const float *code = NULL;
        float scale = KAPPA;
        if (t == c->eot) {
            code = U + (size_t)c->nl * D; /* a line ends after <|endoftext|> */
        } else if (t == c->nl) {
            row[c->n_words] = KAPPA;     /* the start channel */
        } else {
            code = U + (size_t)c->decoy[t] * D;
            if (c->ident[t] >= 0) {
                row[c->ident[t]] = KAPPA;
                scale = GAMMA;
            }
        }
        for (int d = 0; code && d < D; d++)
            row[c->out0 + d] = bf16r(scale * code[d]);
    }
    for (int l = 0; l < LAYERS; l++) {
        const char *r = lt->root;
        float *o_proj = named(by_name, "%slayers.%d.self_attn.o_proj.weight", r, l);
        memset(o_proj, 0, sizeof(float) * H * HEADS * HEAD_DIM); /* attention is inert */
        c->post_norm[l] = named(by_name, "%slayers.%d.post_attention_layernorm.weight", r, l);
        uint64_t rng = SEED + (uint64_t)l;
        fill_norm(c->post_norm[l], H, 0.75, 1.25, &rng);
        c->router[l] = named(by_name, "%slayers.%d.mlp.gate.weight", r, l);
        memset(c->router[l], 0, sizeof(float) * EXPERTS * H);
        for (int e = 0; e < EXPERTS; e++) {
            c->gate[l][e] = named(by_name, "%slayers.%d.%s%d.%s.weight", r, l, lt->experts, e,
                                  lt->proj[LT_GATE]);
            c->up[l][e] = named(by_name, "%slayers.%d.%s%d.%s.weight", r, l, lt->experts, e,
                                lt->proj[LT_UP]);
            c->down[l][e] = named(by_name, "%slayers.%d.%s%d.%s.weight", r, l, lt->experts, e,
                                  lt->proj[LT_DOWN]);
            memset(c->gate[l][e], 0, sizeof(float) * I * H);
            memset(c->up[l][e], 0, sizeof(float) * I * H);
            memset(c->down[l][e], 0, sizeof(float) * I * H);
        }
        for (int w = 0; w < c->n_words; w++) {
            int e = c->assign[l * c->n_words + w], j = c->neuron[l * c->n_words + w];
            c->router[l][(size_t)e * H + w] = bf16r(MU);
            c->gate[l][e][(size_t)j * H + w] = bf16r(GATE_A);
            c->up[l][e][(size_t)j * H + w] = bf16r(UP_B);
        }
    }
    c->final_norm = named(by_name, "%snorm.weight", lt->root);
    for (int d = 0; d < H; d++)
        c->final_norm[d] = 1.0f;
    c->lm_head = named(by_name, "%sweight", lt->lm_head);
    memset(c->lm_head, 0, sizeof(float) * V * H);
    for (int s = 0; s < c->n_tok; s++) {
        float *row = c->lm_head + (size_t)s * H;
        for (int d = 0; d < D; d++)
            row[c->out0 + d] = bf16r(LAMBDA * U[(size_t)s * D + d]);
        if (c->is_start[s])
            row[c->n_words] = bf16r(RHO);
    }
    g_hash_table_destroy(by_name);
}

/* ---- the forward pass, as common/model/forward.c computes it ---- */

typedef struct {
    const uint8_t *allow; /* router mask (EXPERTS) or NULL */
    int zero_l, zero_e;   /* an expert treated as all zeros, or -1 */
} sabotage;

/* Router of layer l on the normed input xb: top[] in descending
 * probability (lowest id first on ties) with their weights. */
static void route(const coh *c, int l, const float *xb, const uint8_t *allow,
                  int top[TOP_K], float topw[TOP_K])
{
    float p[EXPERTS], mx = -INFINITY, sum = 0, wsum = 0;
    for (int e = 0; e < EXPERTS; e++) {
        p[e] = dot(c->router[l] + (size_t)e * HIDDEN, xb, HIDDEN);
        if (allow && !allow[e])
            p[e] = -INFINITY;
        mx = p[e] > mx ? p[e] : mx;
    }
    for (int e = 0; e < EXPERTS; e++) {
        p[e] = p[e] == -INFINITY ? 0.0f : expf(p[e] - mx);
        sum += p[e];
    }
    for (int e = 0; e < EXPERTS; e++)
        p[e] /= sum;
    for (int k = 0; k < TOP_K; k++) {
        int best = -1;
        for (int e = 0; e < EXPERTS; e++) {
            if (allow && !allow[e])
                continue;
            int taken = 0;
            for (int j = 0; j < k; j++)
                taken |= top[j] == e;
            if (!taken && (best < 0 || p[e] > p[best]))
                best = e;
        }
        top[k] = best;
        topw[k] = p[best];
        wsum += p[best];
    }
    for (int k = 0; k < TOP_K; k++) /* norm_topk_prob is true */
        topw[k] /= wsum;
}

/* One MoE layer on the residual x (attention adds exactly zero). */
static void layer_step(const coh *c, int l, float *x, const sabotage *sb)
{
    float xb[HIDDEN], out[HIDDEN], moe[HIDDEN] = {0}, topw[TOP_K];
    float hb[256];
    int top[TOP_K];
    g_assert(c->inter <= 256);
    model_rmsnorm(xb, x, c->post_norm[l], HIDDEN, c->eps);
    route(c, l, xb, sb ? sb->allow : NULL, top, topw);
    for (int pass = 0; pass < EXPERTS; pass++) /* ascending expert id */
        for (int k = 0; k < TOP_K; k++) {
            int e = top[k];
            if (e != pass || (sb && sb->zero_l == l && sb->zero_e == e))
                continue;
            for (int i = 0; i < c->inter; i++)
                hb[i] = silu(dot(c->gate[l][e] + (size_t)i * HIDDEN, xb, HIDDEN)) *
                        dot(c->up[l][e] + (size_t)i * HIDDEN, xb, HIDDEN);
            for (int d = 0; d < HIDDEN; d++)
                out[d] = dot(c->down[l][e] + (size_t)d * c->inter, hb, c->inter);
            for (int d = 0; d < HIDDEN; d++)
                moe[d] += topw[k] * out[d];
        }
    for (int d = 0; d < HIDDEN; d++)
        x[d] += moe[d];
}

/* Next-token logits (vocab) of the residual x after the last layer. */
static void head(const coh *c, const float *x, float *logits)
{
    float xn[HIDDEN];
    model_rmsnorm(xn, x, c->final_norm, HIDDEN, c->eps);
    for (int s = 0; s < c->vocab; s++)
        logits[s] = dot(c->lm_head + (size_t)s * HIDDEN, xn, HIDDEN);
}

/* Next-token logits after token t. */
static void forward(const coh *c, int t, const sabotage *sb, float *logits)
{
    float x[HIDDEN];
    memcpy(x, c->embed + (size_t)t * HIDDEN, sizeof x);
    for (int l = 0; l < LAYERS; l++)
        layer_step(c, l, x, sb);
    head(c, x, logits);
}

/* Down projections, layer by layer: each corpus token's expert writes
 * (alpha U[succ] - v_l) / (L - l), divided by what the router weight and
 * the SwiGLU put in front of the column (from the residual as the bf16
 * weights of earlier layers really leave it). */
static int construct_experts(coh *c, const float *U, GError **err)
{
    int N = c->n_words, D = HIDDEN - c->out0;
    float *X = g_new(float, (size_t)N * HIDDEN);
    for (int w = 0; w < N; w++)
        memcpy(X + (size_t)w * HIDDEN, c->embed + (size_t)c->word_tok[w] * HIDDEN,
               sizeof(float) * HIDDEN);
    c->state = g_new(float, (size_t)(LAYERS + 1) * N * HIDDEN);
    for (int l = 0; l < LAYERS; l++) {
        memcpy(c->state + (size_t)l * N * HIDDEN, X, sizeof(float) * N * HIDDEN);
        for (int w = 0; w < N; w++) {
            const float *x = X + (size_t)w * HIDDEN;
            int e = c->assign[l * N + w], j = c->neuron[l * N + w], top[TOP_K];
            float xb[HIDDEN], topw[TOP_K];
            model_rmsnorm(xb, x, c->post_norm[l], HIDDEN, c->eps);
            route(c, l, xb, NULL, top, topw);
            if (top[0] != e) {
                g_free(X);
                return check_fail(err, "layer %d routes token '%s' to expert %d, not %d", l,
                                  (const char *)g_ptr_array_index(c->tok_str, c->word_tok[w]),
                                  top[0], e);
            }
            float h = silu(dot(c->gate[l][e] + (size_t)j * HIDDEN, xb, HIDDEN)) *
                      dot(c->up[l][e] + (size_t)j * HIDDEN, xb, HIDDEN);
            const float *us = U + (size_t)c->succ[c->word_tok[w]] * D;
            for (int d = 0; d < D; d++) {
                float target = (ALPHA * us[d] - x[c->out0 + d]) / (float)(LAYERS - l);
                c->down[l][e][(size_t)(c->out0 + d) * c->inter + j] = bf16r(target / (topw[0] * h));
            }
        }
        for (int w = 0; w < N; w++)
            layer_step(c, l, X + (size_t)w * HIDDEN, NULL);
    }
    memcpy(c->state + (size_t)LAYERS * N * HIDDEN, X, sizeof(float) * N * HIDDEN);
    g_free(X);
    return 0;
}

/* ---- checks ---- */

/* logit[want] minus the best other logit; *other gets that other token. */
static double margin(const float *lg, int V, int want, int *other)
{
    int b = -1;
    for (int s = 0; s < V; s++)
        if (s != want && (b < 0 || lg[s] > lg[b]))
            b = s;
    if (other)
        *other = b;
    return (double)lg[want] - lg[b];
}

static double nll_of(const float *lg, int V, int want)
{
    double mx = -INFINITY, sum = 0;
    for (int s = 0; s < V; s++)
        mx = lg[s] > mx ? lg[s] : mx;
    for (int s = 0; s < V; s++)
        sum += exp(lg[s] - mx);
    return mx + log(sum) - lg[want];
}

static const char *tname(const coh *c, int t)
{
    return t >= 0 && t < c->n_tok ? g_ptr_array_index(c->tok_str, t) : "?";
}

/* Mean NLL over the reference text (the sentences, each followed by
 * <|endoftext|> and a newline) from per-token NLLs of the next token. */
static double perplexity(const coh *c, const double *nll_word, double nll_eot, double nll_nl)
{
    double sum = 0;
    int n = 0;
    for (int i = 0; i < N_SENT; i++) {
        if (i > 0) { /* newline -> this sentence's start */
            sum += nll_nl;
            n++;
        }
        for (guint k = 0; k < c->sent[i]->len; k++, n++) /* -> successor or eot */
            sum += nll_word[c->ident[g_array_index(c->sent[i], int32_t, k)]];
        sum += nll_eot; /* eot -> newline */
        n++;
    }
    return exp(sum / n);
}

/* The healthy model: every corpus token's successor wins by MIN_MARGIN
 * (so greedy decoding of every prompt reproduces its sentence and stops at
 * <|endoftext|>), <|endoftext|> leads to a newline, a newline to all
 * sentence starts alike. Sabotage: losing any one expert of any layer, or
 * masking the router to experts 0-7, makes a wrong token win by
 * MIN_MARGIN for every corpus token concerned. */
static int check_model(const coh *c, coh_stats *st, GError **err)
{
    int V = c->vocab, N = c->n_words, other;
    float *lg = g_new(float, V);
    double *nll = g_new(double, N), *nll_m = g_new(double, N);
    int rc = -1;
    st->min_margin = st->min_break = st->min_masked = INFINITY;
    for (int w = 0; w < N; w++) {
        int t = c->word_tok[w];
        head(c, c->state + ((size_t)LAYERS * N + w) * HIDDEN, lg);
        double m = margin(lg, V, c->succ[t], &other);
        nll[w] = nll_of(lg, V, c->succ[t]);
        st->min_margin = MIN(st->min_margin, m);
        if (m < MIN_MARGIN) {
            check_fail(err, "after '%s' the successor '%s' wins by %.2f, less than %.0f "
                       "(runner-up '%s')", tname(c, t), tname(c, c->succ[t]), m, MIN_MARGIN,
                       tname(c, other));
            goto done;
        }
    }
    forward(c, c->eot, NULL, lg);
    double nll_eot = nll_of(lg, V, c->nl);
    if (margin(lg, V, c->nl, NULL) < MIN_MARGIN) {
        check_fail(err, "<|endoftext|> does not lead to a newline");
        goto done;
    }
    forward(c, c->nl, NULL, lg);
    float start = NAN, best_other = -INFINITY;
    for (int s = 0; s < V; s++) {
        if (!c->is_start[s]) {
            best_other = MAX(best_other, lg[s]);
        } else if (isnan(start)) {
            start = lg[s];
        } else if (lg[s] != start) {
            check_fail(err, "sentence starts are not equally likely after a newline");
            goto done;
        }
    }
    if (start - best_other < MIN_MARGIN) {
        check_fail(err, "a newline does not lead to a sentence start");
        goto done;
    }
    double nll_nl = nll_of(lg, V, g_array_index(c->sent[0], int32_t, 0));

    /* each expert of each layer is needed by every token it serves: from
     * the residual entering layer l, skip the expert; the decoy's logit
     * minus the successor's bounds the wrong winner's margin from below */
    for (int l = 0; l < LAYERS; l++)
        for (int e = 0; e < EXPERTS; e++) {
            sabotage sb = {NULL, l, e};
            int served = 0;
            for (int w = 0; w < N; w++) {
                if (c->assign[l * N + w] != e)
                    continue;
                served++;
                int t = c->word_tok[w];
                float x[HIDDEN], xn[HIDDEN];
                memcpy(x, c->state + ((size_t)l * N + w) * HIDDEN, sizeof x);
                for (int k = l; k < LAYERS; k++)
                    layer_step(c, k, x, &sb);
                model_rmsnorm(xn, x, c->final_norm, HIDDEN, c->eps);
                double m = (double)dot(c->lm_head + (size_t)c->decoy[t] * HIDDEN, xn, HIDDEN) -
                           dot(c->lm_head + (size_t)c->succ[t] * HIDDEN, xn, HIDDEN);
                st->min_break = MIN(st->min_break, m);
                if (m < MIN_MARGIN) {
                    check_fail(err, "with expert %d of layer %d zeroed, '%s' still leads to "
                               "'%s' (decoy margin %.2f)", e, l, tname(c, t),
                               tname(c, c->succ[t]), m);
                    goto done;
                }
            }
            if (!served) {
                check_fail(err, "expert %d of layer %d serves no corpus token", e, l);
                goto done;
            }
        }
    uint8_t allow[EXPERTS] = {0};
    for (int e = 0; e < 8; e++)
        allow[e] = 1;
    sabotage masked = {allow, -1, -1};
    for (int w = 0; w < N; w++) {
        int t = c->word_tok[w];
        forward(c, t, &masked, lg);
        double m = -margin(lg, V, c->succ[t], NULL);
        nll_m[w] = nll_of(lg, V, c->succ[t]);
        st->min_masked = MIN(st->min_masked, m);
        if (m < MIN_MARGIN) {
            check_fail(err, "with the router masked to experts 0-7, '%s' still leads to '%s'",
                       tname(c, t), tname(c, c->succ[t]));
            goto done;
        }
    }
    /* <|endoftext|> and the newline use no routed expert: masking leaves them */
    st->ppl = perplexity(c, nll, nll_eot, nll_nl);
    st->ppl_masked = perplexity(c, nll_m, nll_eot, nll_nl);
    rc = 0;
done:
    g_free(lg);
    g_free(nll);
    g_free(nll_m);
    return rc;
}

/* ---- writing ---- */

static int write_json(const char *dir, const char *file, cJSON *j, GError **err)
{
    char *path = g_build_filename(dir, file, NULL);
    char *text = cJSON_Print(j);
    GString *g = g_string_new(text);
    g_string_append_c(g, '\n');
    int rc = fs_write_atomic(path, g->str, g->len, err);
    g_string_free(g, TRUE);
    cJSON_free(text);
    cJSON_Delete(j);
    g_free(path);
    return rc;
}

enum { N_SHARDS = 3 };

static gboolean add_to_map(gpointer key, gpointer value, gpointer wm)
{
    char file[64];
    snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", GPOINTER_TO_INT(value),
             N_SHARDS);
    cJSON_AddStringToObject(wm, key, file);
    return FALSE;
}

/* Three shards cut by size in plan order (layers and experts straddle
 * them, as in the real downloads), tensors sorted by name inside each, and
 * the index. */
static int write_shards(const coh *c, const char *out, GError **err)
{
    int n = (int)c->tensors->len, rc = 0;
    uint64_t total = 0, at = 0;
    for (int i = 0; i < n; i++)
        total += ((tensor *)g_ptr_array_index(c->tensors, i))->n * 2;
    int *shard = g_new(int, n);
    for (int i = 0; i < n; i++) {
        tensor *t = g_ptr_array_index(c->tensors, i);
        shard[i] = (int)(at * N_SHARDS / total);
        at += t->n * 2;
    }
    cJSON *idx = cJSON_CreateObject();
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(idx, "metadata"), "total_size", (double)total);
    cJSON *wm = cJSON_AddObjectToObject(idx, "weight_map");
    for (int k = 0; k < N_SHARDS && !rc; k++) {
        char file[64];
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", k + 1, N_SHARDS);
        GPtrArray *ts = g_ptr_array_new();
        for (int i = 0; i < n; i++)
            if (shard[i] == k)
                g_ptr_array_add(ts, g_ptr_array_index(c->tensors, i));
        int m = (int)ts->len;
        st_entry *e = g_new0(st_entry, m);
        const void **data = g_new0(const void *, m);
        for (int i = 0; i < m; i++) {
            tensor *t = g_ptr_array_index(ts, i);
            uint16_t *b = g_new(uint16_t, t->n);
            for (size_t q = 0; q < t->n; q++)
                b[q] = bf16_bits(t->v[q]);
            e[i].name = t->name;
            e[i].dtype = ST_BF16;
            e[i].ndim = t->ndim;
            memcpy(e[i].shape, t->shape, sizeof(int64_t) * t->ndim);
            e[i].nbytes = t->n * 2;
            data[i] = b;
        }
        char *path = g_build_filename(out, file, NULL);
        rc = st_write_file(path, e, m, data, NULL, err);
        g_free(path);
        for (int i = 0; i < m; i++)
            g_free((void *)data[i]);
        g_free(data);
        g_free(e);
        g_ptr_array_free(ts, TRUE);
    }
    /* the weight map in name order, as Hugging Face writes it */
    GTree *sorted = g_tree_new((GCompareFunc)strcmp);
    for (int i = 0; i < n; i++)
        g_tree_insert(sorted, ((tensor *)g_ptr_array_index(c->tensors, i))->name,
                      GINT_TO_POINTER(shard[i] + 1));
    g_tree_foreach(sorted, add_to_map, wm);
    g_tree_destroy(sorted);
    g_free(shard);
    if (!rc)
        return write_json(out, "model.safetensors.index.json", idx, err);
    cJSON_Delete(idx);
    return rc;
}

int coherent_write(const char *out, const char *layout_name, coh_stats *st, GError **err)
{
    const layout *lt = layout_find(layout_name);
    if (!lt || (strcmp(lt->name, "qwen3_moe") != 0 && strcmp(lt->name, "qwen3_omni_moe") != 0)) {
        g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                    "the coherent sample has the layouts qwen3_moe and qwen3_omni_moe, not '%s'",
                    layout_name);
        return -1;
    }
    coh_stats dummy;
    if (!st)
        st = &dummy;
    memset(st, 0, sizeof *st);
    coh *c = g_new0(coh, 1);
    c->lt = lt;
    c->eps = 1e-6f; /* rms_norm_eps of the config (mksample_model.c) */
    float *U = NULL;
    int rc = -1;
    if (build_tokenizer(c, err) || check_tokenizer(c, err) || analyse_corpus(c, err))
        goto done;
    /* random unit codes in the output space */
    int D = HIDDEN - c->out0;
    U = g_new(float, (size_t)c->n_tok * D);
    uint64_t rng = SEED ^ 0xc0de;
    for (int s = 0; s < c->n_tok; s++) {
        double norm = 0;
        float *u = U + (size_t)s * D;
        for (int d = 0; d < D; d++) {
            u[d] = (float)gauss(&rng);
            norm += (double)u[d] * u[d];
        }
        for (int d = 0; d < D; d++)
            u[d] = (float)(u[d] / sqrt(norm));
    }
    build_weights(c, U);
    if (construct_experts(c, U, err) || check_model(c, st, err))
        goto done;
    st->vocab = c->vocab;
    st->n_tokens = c->n_tok;
    st->n_words = c->n_words;
    st->hidden = HIDDEN;
    st->layers = LAYERS;
    st->experts = EXPERTS;
    st->top_k = TOP_K;
    st->inter = c->inter;

    ms_opts o = plan_opts(c);
    ms_tok t = tok_ids(c);
    char *tj = g_build_filename(out, "tokenizer.json", NULL);
    GString *tjs = g_string_new(c->tok_json);
    g_string_append_c(tjs, '\n');
    rc = fs_mkdir_p(out, err) || fs_write_atomic(tj, tjs->str, tjs->len, err) ||
         write_json(out, "config.json", ms_config_json(&o, &t), err) ||
         write_json(out, "generation_config.json", ms_generation_config_json(&o, &t), err) ||
         write_json(out, "tokenizer_config.json", ms_tokenizer_config_json(&o, &t), err) ||
         write_shards(c, out, err) ? -1 : 0;
    g_string_free(tjs, TRUE);
    g_free(tj);
done:
    g_free(U);
    coh_free(c);
    return rc;
}
