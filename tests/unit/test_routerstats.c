/* test_routerstats.c - the statistics of routerstats.h on counts with known
 * answers (perfect specialisation, independence, a worked example), the
 * top-expert order, and the report's escaping (report.h). */
#include "report/report.h"
#include "analysis/routerstats.h"
#include "testhelp.h"

#include <math.h>
#include <string.h>

#define NEAR(a, b) (fabs((a) - (b)) < 1e-12)

/* A config of one MoE layer with n experts, top-k, and a corpus with the
 * given domains (one entry each). */
static rs_stats *make(int n_experts, int k, int n_domains, const char *const *names)
{
    static const uint8_t moe[1] = {1};
    model_config mc = {.n_layers = 1, .n_experts = n_experts, .top_k = k, .is_moe = moe};
    rs_corpus *c = rs_corpus_new("t.jsonl");
    for (int d = 0; d < n_domains; d++)
        CHECK(rs_corpus_add(c, d + 1, names[d], "text", NULL) == 0);
    rs_stats *s = rs_stats_new(&mc, c);
    rs_corpus_free(c);
    return s;
}

static const char *const AB[] = {"a", "b", "c", "d"};

static void add_n(rs_stats *s, int d, int e, int n)
{
    for (int i = 0; i < n; i++)
        rs_stats_add(s, 0, d, 1, &e);
}

static void test_perfect_specialisation(void)
{
    /* 4 equally frequent domains, each with its own expert: MI = H = 2 bits */
    rs_stats *s = make(8, 1, 4, AB);
    for (int d = 0; d < 4; d++)
        add_n(s, d, 2 * d, 10);
    rs_layer_summary sm;
    rs_summarise(s, 0, &sm);
    CHECK(sm.picks == 40 && sm.used == 4);
    CHECK(NEAR(sm.h_domain, 2) && NEAR(sm.mi, 2) && NEAR(sm.nmi, 1) && NEAR(sm.purity, 1));
    CHECK(NEAR(rs_lift(s, 0, 1, 2), 4) && NEAR(rs_lift(s, 0, 0, 2), 0));
    CHECK(NEAR(rs_load(s, 0, 6), 0.25) && rs_load(s, 0, 7) == 0);
    rs_stats_free(s);
}

static void test_independent(void)
{
    /* every domain spreads the same way: MI 0, lift 1 */
    rs_stats *s = make(3, 1, 2, AB);
    for (int d = 0; d < 2; d++) {
        add_n(s, d, 0, 6);
        add_n(s, d, 1, 3);
        add_n(s, d, 2, 1);
    }
    rs_layer_summary sm;
    rs_summarise(s, 0, &sm);
    CHECK(NEAR(sm.h_domain, 1) && NEAR(sm.mi, 0) && NEAR(sm.nmi, 0));
    CHECK(NEAR(sm.purity, 0.5));
    CHECK(NEAR(rs_lift(s, 0, 1, 1), 1));
    rs_stats_free(s);
}

static void test_worked_example(void)
{
    /* counts a: e0 3, e1 1; b: e1 4 (N = 8). p(a) = 1/2, p(e0) = 3/8,
     * p(e1) = 5/8. MI = 3/8 log2((3/8)/(1/2 * 3/8)) + 1/8 log2((1/8)/(1/2 * 5/8))
     *             + 4/8 log2((4/8)/(1/2 * 5/8)) */
    rs_stats *s = make(2, 1, 2, AB);
    add_n(s, 0, 0, 3);
    add_n(s, 0, 1, 1);
    add_n(s, 1, 1, 4);
    double mi = 3.0 / 8 * log2(2) + 1.0 / 8 * log2(0.4) + 0.5 * log2(1.6);
    rs_layer_summary sm;
    rs_summarise(s, 0, &sm);
    CHECK(NEAR(sm.mi, mi) && NEAR(sm.h_domain, 1) && NEAR(sm.nmi, mi));
    CHECK(NEAR(sm.purity, 7.0 / 8));
    CHECK(NEAR(rs_lift(s, 0, 1, 1), 1.0 / (5.0 / 8)));
    rs_stats_free(s);
}

static void test_top_order(void)
{
    rs_stats *s = make(6, 1, 1, AB);
    add_n(s, 0, 4, 2);
    add_n(s, 0, 1, 5);
    add_n(s, 0, 3, 2);
    add_n(s, 0, 0, 1);
    rs_top_entry t[3];
    int n = rs_top(s, 0, 0, 3, t);
    /* most first, lower id on ties, the rest cut */
    CHECK(n == 3 && t[0].expert == 1 && t[1].expert == 3 && t[2].expert == 4);
    CHECK(t[0].count == 5 && NEAR(t[0].share, 0.5) && NEAR(t[0].lift, 1));
    rs_top_entry all[6];
    CHECK(rs_top(s, 0, 0, 6, all) == 4 && all[3].expert == 0);
    /* experts out of range are not counted */
    int bad[2] = {-1, 6};
    rs_stats_add(s, 0, 0, 2, bad);
    rs_layer_summary sm;
    rs_summarise(s, 0, &sm);
    CHECK(sm.picks == 10);
    rs_stats_free(s);
}

static void test_empty_layer(void)
{
    rs_stats *s = make(4, 2, 1, AB);
    rs_layer_summary sm;
    rs_summarise(s, 0, &sm);
    CHECK(sm.picks == 0 && sm.mi == 0 && sm.nmi == 0 && sm.purity == 0);
    CHECK(rs_lift(s, 0, 0, 0) == 0 && rs_top(s, 0, 0, 3, (rs_top_entry[3]){{0}}) == 0);
    rs_stats_free(s);
}

static void test_corpus_errors(void)
{
    rs_corpus *c = rs_corpus_new("x.jsonl");
    GError *err = NULL;
    CHECK(rs_corpus_add(c, 4, "", "t", &err) != 0);
    CHECK_CONTAINS(err ? err->message : NULL, "corpus 'x.jsonl': line 4: \"domain\" is empty");
    g_clear_error(&err);
    CHECK(rs_corpus_add(c, 5, "d", "\xff", &err) != 0);
    CHECK_CONTAINS(err ? err->message : NULL, "\"text\" is not valid UTF-8");
    g_clear_error(&err);
    CHECK(rs_corpus_add(c, 6, "d", "t", &err) == 0 && rs_corpus_add(c, 7, "d", "u", &err) == 0);
    CHECK(c->domains->len == 1 && c->entries->len == 2);
    rs_corpus_free(c);
}

static void test_report_escapes(void)
{
    static const char *const names[] = {"<x & \"y\">", "z\x01\xef\xbf\xbe"};
    rs_stats *s = make(2, 1, 2, names);
    add_n(s, 0, 0, 1);
    add_n(s, 1, 1, 1);
    report_input in = {.title = "t<", .stats = s};
    char *html = report_html(&in, NULL);
    CHECK_CONTAINS(html, "&lt;x &amp; &quot;y&quot;&gt;");
    CHECK_CONTAINS(html, "z\xef\xbf\xbd\xef\xbf\xbd");
    CHECK(!strstr(html, "\x01") && !strstr(html, "<x"));
    CHECK_CONTAINS(html, "<title>t&lt;</title>");
    g_free(html);
    rs_stats_free(s);
}

int main(void)
{
    RUN(test_perfect_specialisation);
    RUN(test_independent);
    RUN(test_worked_example);
    RUN(test_top_order);
    RUN(test_empty_layer);
    RUN(test_corpus_errors);
    RUN(test_report_escapes);
    TEST_EXIT();
}
