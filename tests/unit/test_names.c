/* test_names.c - OUT's names (common/outdir/names.c): each formatter's
 * output parses back to what it was made from, and the near-misses a
 * stray file or another tool could leave are refused. */
#include "outdir/names.h"
#include "testhelp.h"

#include <string.h>

static void test_expert(void)
{
    char *p = od_expert_path(3, 5, 2, 7);
    CHECK(strcmp(p, "experts/expert_005_layer_07.safetensors") == 0);
    int e = -1, l = -1;
    CHECK(od_parse_expert(p, &e, &l) == 0 && e == 5 && l == 7);
    CHECK(od_parse_expert(p + 8, &e, &l) == 0 && e == 5 && l == 7);
    g_free(p);
    /* the by-hand formatter writes what printf does, across widths */
    for (int we = 1; we <= 4; we++)
        for (int wl = 1; wl <= 3; wl++)
            for (int x = 0; x < 1200; x += 37) {
                char buf[128];
                char *want = od_expert_path(we, x, wl, x % 100);
                od_expert_path_buf(buf, sizeof buf, we, x, wl, x % 100);
                CHECK(strcmp(buf, want) == 0);
                od_name n;
                od_classify(want, we, wl, &n);
                CHECK(n.kind == MF_EXPERT && n.expert == x && n.layer == x % 100 &&
                      n.canonical);
                g_free(want);
            }
    CHECK(od_parse_expert("expert_1_layer_2.safetensors.tmp.12", &e, &l) != 0);
    CHECK(od_parse_expert("expert_-1_layer_2.safetensors", &e, &l) != 0);
    CHECK(od_parse_expert("expert_+1_layer_2.safetensors", &e, &l) != 0);
    CHECK(od_parse_expert("expert__layer_2.safetensors", &e, &l) != 0);
    CHECK(od_parse_expert("expert_1_layer_99999999.safetensors", &e, &l) != 0);
    CHECK(od_parse_expert("layers/layer_01.safetensors", &e, &l) != 0);
    CHECK(strcmp(od_subdirs[0], "experts") == 0 && od_subdirs[3] == NULL);
}

/* Names that parse but that qmoe would not write with these widths. */
static void test_canonical(void)
{
    od_name n;
    od_classify("experts/expert_1_layer_02.safetensors", 3, 2, &n);
    CHECK(n.kind == MF_EXPERT && n.expert == 1 && n.layer == 2 && !n.canonical);
    od_classify("experts/expert_001_layer_002.safetensors", 3, 2, &n);
    CHECK(n.kind == MF_EXPERT && !n.canonical);
    od_classify("experts/expert_1234_layer_02.safetensors", 3, 2, &n);
    CHECK(n.kind == MF_EXPERT && n.expert == 1234 && n.canonical); /* wider than padding */
    od_classify("expert_001_layer_02.safetensors", 3, 2, &n); /* not under experts/ */
    CHECK(n.kind == MF_OTHER && !n.canonical);
    char *p = od_layer_path(2, 3);
    CHECK(strcmp(p, "layers/layer_03.safetensors") == 0);
    od_classify(p, 3, 2, &n);
    CHECK(n.kind == MF_LAYER && n.layer == 3 && n.expert == -1 && n.canonical);
    g_free(p);
    od_classify("layers/layer_3.safetensors", 3, 2, &n);
    CHECK(n.kind == MF_LAYER && n.layer == 3 && !n.canonical);
    od_classify("layers/layer_+3.safetensors", 3, 2, &n);
    CHECK(n.kind != MF_LAYER && !n.canonical);
    od_classify("layers/layer_03.safetensors.bak", 3, 2, &n);
    CHECK(n.kind == MF_OTHER && !n.canonical);
    od_classify(OD_GLOBALS, 3, 2, &n);
    CHECK(n.kind == MF_GLOBALS && n.canonical);
    od_classify("other/visual.safetensors", 3, 2, &n);
    CHECK(n.kind == MF_OTHER && n.canonical);
    od_classify("other/a/b.safetensors", 3, 2, &n);
    CHECK(n.kind == MF_OTHER && !n.canonical);
}

static void test_other(void)
{
    char *g = od_other_path("visual", -1), *whole = od_other_path("visual", 0),
         *part = od_other_path("visual", 3);
    CHECK(strcmp(g, "other/visual") == 0);
    CHECK(strcmp(whole, "other/visual.safetensors") == 0);
    CHECK(strcmp(part, "other/visual-03.safetensors") == 0);
    CHECK(od_other_in_group(g, whole) && od_other_in_group(g, part));
    CHECK(!od_other_in_group(g, "other/visualx.safetensors"));
    CHECK(!od_other_in_group(g, "other/visual-03.safetensors.tmp.5"));
    g_free(g);
    g_free(whole);
    g_free(part);
}

static void test_parts(void)
{
    int i = -1, n = -1;
    for (int k = 2; k <= 12; k += 5)
        for (int s = 0; s < k; s++) {
            char *d = od_part_dir(s, k);
            CHECK(od_parse_part_dir(d, &i, &n) == 0 && i == s && n == k);
            char *rel = od_state_dir(s, k);
            CHECK(g_str_has_prefix(rel, OD_STATE "/") && strcmp(rel + 6, d) == 0);
            CHECK(od_parse_state_dir(rel, &i, &n) == 0 && i == s && n == k);
            g_free(rel);
            g_free(d);
        }
    char *p02 = od_part_dir(0, 2);
    CHECK(strcmp(p02, "shard-0-of-2") == 0);
    g_free(p02);
    char *top = od_state_dir(0, 1);
    CHECK(strcmp(top, ".qmoe") == 0);
    CHECK(od_parse_state_dir(top, &i, &n) == 0 && i == 0 && n == 1);
    g_free(top);
    static const char *const near[] = {
        "shard-2-of-2",  "shard-3-of-2",  "shard-0-of-1",  "shard-0-of-0",
        "shard-00-of-2", "shard-0-of-02", "shard-+0-of-2", "shard--1-of-2",
        "shard- 0-of-2", "shard-0-of-2x", "shard-0-of-2/", "shard-0-of-",
        "shard--of-2",   "shard-0of-2",   "Shard-0-of-2",  "shard-0-of-100001",
        "shard-x",       "shard-",        "",              NULL};
    for (int k = 0; near[k]; k++) {
        int got = od_parse_part_dir(near[k], &i, &n);
        if (got == 0)
            fprintf(stderr, "  accepted '%s'\n", near[k]);
        CHECK(got != 0);
    }
    CHECK(od_parse_state_dir(".qmoe/shard-3-of-2", &i, &n) != 0);
    CHECK(od_parse_state_dir(".qmoex/shard-0-of-2", &i, &n) != 0);
    CHECK(od_parse_state_dir(".qmoe/", &i, &n) != 0);
    CHECK(od_parse_state_dir("qmoe", &i, &n) != 0);
}

int main(void)
{
    RUN(test_expert);
    RUN(test_canonical);
    RUN(test_other);
    RUN(test_parts);
    TEST_EXIT();
}
