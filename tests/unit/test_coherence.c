/* test_coherence.c - the numbers behind the coherence gate's criteria
 * (common/analysis/coherence.c); the gate itself is exercised on the coherent
 * sample by tests/cli/coherence.sh. */
#include "analysis/coherence.h"
#include "testhelp.h"

/* (c): a router confined to experts 0-7 fails whenever a layer has 16 or
 * more experts; the bound is a quarter of the experts for large layers. */
static void test_router_threshold(void)
{
    CHECK(coh_router_threshold(128) == 32);
    CHECK(coh_router_threshold(64) == 16);
    CHECK(coh_router_threshold(60) == 15);
    CHECK(coh_router_threshold(32) == 8);
    CHECK(coh_router_threshold(16) == 8);
    CHECK(coh_router_threshold(8) == 4);
    CHECK(coh_router_threshold(2) == 1);
    for (int n = 16; n <= 256; n++)
        CHECK(coh_router_threshold(n) >= 8 && coh_router_threshold(n) < n);
}

/* (b): 100, but never more than a quarter of the vocabulary */
static void test_default_max_ppl(void)
{
    CHECK(coh_default_max_ppl(151936) == 100.0);
    CHECK(coh_default_max_ppl(400) == 100.0);
    CHECK(coh_default_max_ppl(384) == 96.0);
    CHECK(coh_default_max_ppl(960) == 100.0);
    CHECK(coh_default_max_ppl(10) == 2.5);
}

static void test_top_experts(void)
{
    double w[6] = {0.5, 0, 2.0, 0.5, 1.0, 0};
    int ids[4];
    double sh[4];
    CHECK(coh_top_experts(w, 6, 3, ids, sh) == 3);
    CHECK(ids[0] == 2 && ids[1] == 4 && ids[2] == 0); /* ties: lower id first */
    CHECK(sh[0] == 0.5 && sh[1] == 0.25 && sh[2] == 0.125);
    CHECK(coh_top_experts(w, 6, 4, ids, sh) == 4 && ids[3] == 3);
    double z[3] = {0, 0, 0};
    CHECK(coh_top_experts(z, 3, 2, ids, sh) == 0); /* no weight, no expert */
}

int main(void)
{
    RUN(test_router_threshold);
    RUN(test_default_max_ppl);
    RUN(test_top_experts);
    TEST_EXIT();
}
