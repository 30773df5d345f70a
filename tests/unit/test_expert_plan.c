/* test_expert_plan.c - expert plans (analysis/expert_plan.h) and the model
 * hooks they use: parsing from memory with every refusal naming its entry,
 * the pack checks (one count, every MoE layer, DeepSeek's groups), scores
 * and choices by each criterion on hand-made router choices, per-layer
 * router masks on the qwen3moe-tiny fixture (the other layers stay free),
 * and the experts' output norms the router observer gets: the same bits
 * from model_step and from a batched model_feed, positive and not all
 * alike. */
#include "analysis/expert_plan.h"
#include "model/model.h"
#include "testhelp.h"
#include "base/util.h"

#include <math.h>
#include <stdlib.h>

static char *fix; /* tests/fixtures/qwen3moe-tiny */

/* 4 layers, layer 0 dense, layer 3 an MTP block; 8 experts */
static uint8_t is_moe[4] = {0, 1, 1, 1};
static lt_shape shape = {.n_layers = 4, .n_mtp = 1, .n_experts = 8, .is_moe = is_moe};

static expert_plan *parse(const char *json, GError **err)
{
    cJSON *doc = cJSON_Parse(json);
    expert_plan *p = expert_plan_from_json("p.json", doc, &shape, err);
    cJSON_Delete(doc);
    return p;
}

static void refused(const char *json, const char *msg)
{
    GError *err = NULL;
    expert_plan *p = parse(json, &err);
    CHECK(p == NULL);
    CHECK(err != NULL);
    if (err)
        CHECK_CONTAINS(err->message, msg);
    g_clear_error(&err);
    expert_plan_free(p);
}

static void test_parse(void)
{
    GError *err = NULL;
    expert_plan *p = parse("{\"keep\":{\"1\":[5,0,3],\"2\":[1,2,7]},\"criterion\":\"x\"}", &err);
    CHECK(p != NULL);
    if (!p)
        return;
    CHECK(p->n_listed == 2 && p->n_keep[1] == 3 && p->keep[0] == NULL && p->keep[3] == NULL);
    CHECK(expert_plan_index(p, 1, 5) == 0 && expert_plan_index(p, 1, 3) == 2);
    CHECK(expert_plan_index(p, 1, 4) == -1 && expert_plan_index(p, 0, 0) == -1);
    uint8_t *a = expert_plan_allow(p, 1);
    CHECK(a && a[0] && a[3] && a[5] && !a[1] && !a[7]);
    g_free(a);
    CHECK(expert_plan_allow(p, 3) == NULL);
    expert_plan_free(p);
}

static void test_refusals(void)
{
    refused("[1]", "'p.json': not a plan");
    refused("{\"keep\":[1]}", "no \"keep\" object");
    refused("{\"keep\":{}}", "keeps no layer");
    refused("{\"keep\":{\"01\":[1]}}", "keep key \"01\" is not a layer index");
    refused("{\"keep\":{\"-1\":[1]}}", "keep key \"-1\"");
    refused("{\"keep\":{\"4\":[1]}}", "keep[\"4\"]: the model has 4 layers (0-3)");
    refused("{\"keep\":{\"0\":[1]}}", "keep[\"0\"]: layer 0 is dense");
    refused("{\"keep\":{\"1\":[1],\"1\":[2]}}", "layer 1 is listed twice");
    refused("{\"keep\":{\"1\":3}}", "keep[\"1\"]: not an array");
    refused("{\"keep\":{\"1\":[]}}", "keep[\"1\"]: keeps no expert");
    refused("{\"keep\":{\"1\":[0,1,2,3,4,5,6,7,0]}}", "keeps 9 experts, the model has 8");
    refused("{\"keep\":{\"1\":[0,8]}}", "keep[\"1\"][1]: 8 is not an expert id of the model (0-7)");
    refused("{\"keep\":{\"1\":[0,-1]}}", "keep[\"1\"][1]: -1 is not");
    refused("{\"keep\":{\"1\":[0,\"2\"]}}", "keep[\"1\"][1]: \"2\" is not");
    refused("{\"keep\":{\"1\":[0,2.5]}}", "keep[\"1\"][1]: 2.5 is not");
    refused("{\"keep\":{\"2\":[4,0,4]}}", "keep[\"2\"][2]: expert 4 is listed twice (also at [0])");
}

static void pack_check(const char *json, int n_group, int want_n, const char *msg)
{
    GError *err = NULL;
    expert_plan *p = parse(json, &err);
    CHECK(p != NULL);
    if (!p) {
        g_clear_error(&err);
        return;
    }
    int n = -1;
    int rc = expert_plan_check_pack(p, &shape, n_group, &n, &err);
    if (msg) {
        CHECK(rc != 0 && err);
        if (err)
            CHECK_CONTAINS(err->message, msg);
    } else {
        CHECK(rc == 0 && n == want_n);
    }
    g_clear_error(&err);
    expert_plan_free(p);
}

static void test_pack_checks(void)
{
    pack_check("{\"keep\":{\"1\":[0,1,2,3],\"2\":[4,5,6,7],\"3\":[0,2,4,6]}}", 1, 4, NULL);
    /* the MTP block left out: the pack drops it */
    pack_check("{\"keep\":{\"1\":[0,1,2,3],\"2\":[4,5,6,7]}}", 1, 4, NULL);
    pack_check("{\"keep\":{\"1\":[0,1,2,3],\"3\":[4,5,6,7]}}", 1, 0,
               "MoE layer 2 is not in the plan");
    pack_check("{\"keep\":{\"1\":[0,1,2,3],\"2\":[4,5,6,7],\"3\":[0,2,4]}}", 1, 0,
               "keep[\"3\"] keeps 3 experts but keep[\"1\"] keeps 4");
    GError *err = NULL;
    expert_plan *p = parse("{\"keep\":{\"1\":[0,1,2,3],\"2\":[4,5,6,7]}}", &err);
    expert_plan *q = parse("{\"keep\":{\"1\":[0,1,2,3],\"2\":[4,5,6,7],\"3\":[0,2,4,6]}}",
                           &err);
    CHECK(p && q && expert_plan_mtp_listed(p, &shape) == 0 &&
          expert_plan_mtp_listed(q, &shape) == 1);
    g_clear_error(&err);
    expert_plan_free(p);
    expert_plan_free(q);
    pack_check("{\"keep\":{\"1\":[0,1,2,3],\"2\":[4,5,6],\"3\":[0,2,4,6]}}", 1, 0,
               "keep[\"2\"] keeps 3 experts but keep[\"1\"] keeps 4");
    /* 2 groups of 4: two of each, group by group */
    pack_check("{\"keep\":{\"1\":[0,3,5,6],\"2\":[1,2,4,7],\"3\":[0,1,4,5]}}", 2, 4, NULL);
    pack_check("{\"keep\":{\"1\":[0,5,3,6],\"2\":[1,2,4,7],\"3\":[0,1,4,5]}}", 2, 0,
               "keep[\"1\"][1]: expert 5 is in group 1, but position 1");
    pack_check("{\"keep\":{\"1\":[0,1,2],\"2\":[1,2,4],\"3\":[0,1,4]}}", 2, 0,
               "routes within 2 groups");
    pack_check("{\"keep\":{\"1\":[0,4],\"2\":[1,5],\"3\":[0,4]}}", 2, 0, "at least 2");
}

static void test_scores(void)
{
    plan_scores *sc = plan_scores_new(4, 8);
    /* layer 1: expert 2 picked 3 times at weight 0.1 with a big output,
     * expert 5 once at weight 0.9 with a small one, expert 0 twice at
     * 0.3 */
    int e2[2] = {2, 0}, e5[2] = {5, 2};
    float w1[2] = {0.1f, 0.3f}, n1[2] = {10.0f, 1.0f};
    float w2[2] = {0.9f, 0.1f}, n2[2] = {0.5f, 10.0f};
    plan_scores_add(sc, 1, 2, e2, w1, n1);
    plan_scores_add(sc, 1, 2, e2, w1, n1);
    plan_scores_add(sc, 1, 2, e5, w2, n2);
    plan_scores_add(sc, 9, 2, e5, w2, n2); /* out of range: ignored */
    CHECK(plan_score(sc, PLAN_BY_FREQUENCY, 1, 2) == 3);
    CHECK(fabs(plan_score(sc, PLAN_BY_WEIGHT, 1, 5) - 0.9) < 1e-6);
    CHECK(fabs(plan_score(sc, PLAN_BY_REAP, 1, 2) - 1.0) < 1e-6);   /* (1 + 1 + 1) / 3 */
    CHECK(fabs(plan_score(sc, PLAN_BY_REAP, 1, 0) - 0.3) < 1e-6);
    CHECK(fabs(plan_score(sc, PLAN_BY_REAP, 1, 5) - 0.45) < 1e-6);
    GError *err = NULL;
    expert_plan *f = plan_scores_choose(sc, PLAN_BY_FREQUENCY, 2, is_moe, 1, &err);
    expert_plan *w = plan_scores_choose(sc, PLAN_BY_WEIGHT, 2, is_moe, 1, &err);
    expert_plan *r = plan_scores_choose(sc, PLAN_BY_REAP, 2, is_moe, 1, &err);
    CHECK(f && w && r);
    if (f && w && r) {
        CHECK(f->keep[1][0] == 2 && f->keep[1][1] == 0);
        CHECK(w->keep[1][0] == 5 && w->keep[1][1] == 0);
        CHECK(r->keep[1][0] == 2 && r->keep[1][1] == 5);
        CHECK(f->keep[0] == NULL && f->n_keep[2] == 2 && f->keep[2][0] == 0); /* ties: low id */
        cJSON *doc = expert_plan_to_json(r, sc, PLAN_BY_REAP, "c.jsonl");
        char *txt = cJSON_PrintUnformatted(doc);
        CHECK_CONTAINS(txt, "\"keep\":{\"1\":[2,5],\"2\":[0,1],\"3\":[0,1]}");
        CHECK_CONTAINS(txt, "\"criterion\":\"reap\",\"corpus\":\"c.jsonl\"");
        /* what it writes reads back as the same plan */
        expert_plan *back = expert_plan_from_json("back", doc, &shape, &err);
        CHECK(back && back->keep[1][0] == 2 && back->keep[1][1] == 5);
        expert_plan_free(back);
        cJSON_free(txt);
        cJSON_Delete(doc);
    }
    expert_plan_free(f);
    expert_plan_free(w);
    expert_plan_free(r);
    /* groups: 2 groups of 4, two of each, group by group */
    expert_plan *g = plan_scores_choose(sc, PLAN_BY_WEIGHT, 4, is_moe, 2, &err);
    CHECK(g && g->keep[1][0] == 0 && g->keep[1][1] == 2 && g->keep[1][2] == 5 &&
          g->keep[1][3] == 4);
    expert_plan_free(g);
    CHECK(plan_scores_choose(sc, PLAN_BY_WEIGHT, 3, is_moe, 2, &err) == NULL);
    CHECK(err && strstr(err->message, "--keep 3"));
    g_clear_error(&err);
    CHECK(plan_scores_choose(sc, PLAN_BY_WEIGHT, 9, is_moe, 1, &err) == NULL);
    g_clear_error(&err);
    CHECK(plan_by_parse("reap") == PLAN_BY_REAP && plan_by_parse("x") == -1);
    plan_scores_free(sc);
}

/* ---- on the model ---- */

typedef struct {
    int n;
    int layer[4096], expert[4096];
    float norm[4096];
} picks;

static void collect(void *user, int seq, int pos, int token, int layer, int k,
                    const int *e, const float *w, const float *norms)
{
    (void)pos;
    (void)token;
    (void)w;
    picks *p = user;
    CHECK(seq == 0);
    for (int i = 0; i < k && p->n < 4096; i++, p->n++) {
        p->layer[p->n] = layer;
        p->expert[p->n] = e[i];
        p->norm[p->n] = norms[i];
    }
}

static model *open_model(int batch)
{
    char *dir = g_build_filename(fix, "qwen3moe", NULL);
    model_opts o = {.n_threads = 2, .max_batch = batch};
    GError *err = NULL;
    model *m = model_load(dir, &o, &err);
    if (!m)
        printf("  model_load: %s\n", err->message);
    g_clear_error(&err);
    g_free(dir);
    return m;
}

static const int ids[] = {1, 7, 42, 99, 5, 250, 17, 3, 64, 128, 77, 300};
#define NIDS ((int)(sizeof ids / sizeof ids[0]))

static void test_layer_mask(void)
{
    model *m = open_model(0);
    CHECK(m != NULL);
    if (!m)
        return;
    GError *err = NULL;
    uint8_t allow[16] = {0};
    for (int e = 8; e < 16; e++)
        allow[e] = 1;
    CHECK(model_set_layer_mask(m, 3, allow, &err) != 0);
    CHECK(err && strstr(err->message, "layer 3: the model has no such layer"));
    g_clear_error(&err);
    uint8_t few[16] = {1, 1, 1};
    CHECK(model_set_layer_mask(m, 1, few, &err) != 0);
    CHECK(err && strstr(err->message, "the router mask of layer 1 allows 3 experts, fewer "
                                      "than the 4"));
    g_clear_error(&err);
    CHECK(model_set_layer_mask(m, 1, allow, &err) == 0);
    picks *p = g_new0(picks, 1);
    model_set_router_log(m, collect, p);
    float *lg = g_new(float, (size_t)NIDS * 384);
    CHECK(model_feed(m, ids, NIDS, MODEL_LOGITS_ALL, lg, &err) == 0);
    int low[3] = {0};
    for (int i = 0; i < p->n; i++)
        low[p->layer[i]] += p->expert[i] < 8;
    CHECK(low[1] == 0);            /* layer 1 confined to 8-15 */
    CHECK(low[0] > 0 && low[2] > 0); /* the others free */
    /* lifting it gives back the free router's logits */
    float *lf = g_new(float, (size_t)NIDS * 384);
    CHECK(model_set_layer_mask(m, 1, NULL, &err) == 0);
    model_reset(m);
    CHECK(model_feed(m, ids, NIDS, MODEL_LOGITS_ALL, lf, &err) == 0);
    model *free_m = open_model(0);
    float *lr = g_new(float, (size_t)NIDS * 384);
    CHECK(free_m && model_feed(free_m, ids, NIDS, MODEL_LOGITS_ALL, lr, &err) == 0);
    CHECK(memcmp(lf, lr, sizeof(float) * NIDS * 384) == 0);
    CHECK(memcmp(lg, lr, sizeof(float) * NIDS * 384) != 0);
    model_free(free_m);
    g_free(lg);
    g_free(lf);
    g_free(lr);
    g_free(p);
    model_free(m);
}

static void test_out_norms(void)
{
    model *ms = open_model(1), *mb = open_model(0);
    CHECK(ms && mb);
    if (!ms || !mb) {
        model_free(ms);
        model_free(mb);
        return;
    }
    picks *a = g_new0(picks, 1), *b = g_new0(picks, 1);
    model_set_router_log(ms, collect, a);
    model_set_router_log(mb, collect, b);
    GError *err = NULL;
    for (int t = 0; t < NIDS; t++)
        CHECK(model_step(ms, ids[t], NULL, &err) == 0);
    CHECK(model_feed(mb, ids, NIDS, MODEL_LOGITS_NONE, NULL, &err) == 0);
    CHECK(a->n == b->n && a->n == NIDS * 3 * 4);
    int same = 1, positive = 1, distinct = 0;
    for (int i = 0; i < a->n && i < b->n; i++) {
        same &= a->expert[i] == b->expert[i] && a->norm[i] == b->norm[i];
        positive &= a->norm[i] > 0 && isfinite(a->norm[i]);
        distinct += i > 0 && a->norm[i] != a->norm[i - 1];
    }
    CHECK(same);
    CHECK(positive);
    CHECK(distinct > a->n / 2);
    g_free(a);
    g_free(b);
    model_free(ms);
    model_free(mb);
}

int main(void)
{
    const char *root = g_getenv("QMOE_ROOT");
    fix = g_build_filename(root ? root : ".", "tests/fixtures/qwen3moe-tiny", NULL);
    RUN(test_parse);
    RUN(test_refusals);
    RUN(test_pack_checks);
    RUN(test_scores);
    RUN(test_layer_mask);
    RUN(test_out_norms);
    g_free(fix);
    TEST_EXIT();
}
