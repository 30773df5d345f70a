/* report.c - the router report page (see report.h). */
#include "report/report.h"

#include "base/fs.h"
#include "base/util.h"

#include <math.h>
#include <string.h>

/* ---- text ---- */

/* Appends s escaped for XML text and attribute values; characters XML 1.0
 * cannot hold (C0 controls but tab and newline, U+FFFE, U+FFFF) and
 * invalid UTF-8 become U+FFFD. */
static void esc(GString *o, const char *s)
{
    if (!s)
        return;
    const char *p = s;
    while (*p) {
        gunichar u = g_utf8_get_char_validated(p, -1);
        if (u == (gunichar)-1 || u == (gunichar)-2) {
            g_string_append(o, "\xEF\xBF\xBD");
            p++;
            continue;
        }
        const char *next = g_utf8_next_char(p);
        switch (u) {
        case '&': g_string_append(o, "&amp;"); break;
        case '<': g_string_append(o, "&lt;"); break;
        case '>': g_string_append(o, "&gt;"); break;
        case '"': g_string_append(o, "&quot;"); break;
        case '\'': g_string_append(o, "&#39;"); break;
        default:
            if ((u < 0x20 && u != '\t' && u != '\n') || u == 0xFFFE || u == 0xFFFF)
                g_string_append(o, "\xEF\xBF\xBD");
            else
                g_string_append_len(o, p, next - p);
        }
        p = next;
    }
}

G_GNUC_PRINTF(2, 3) static void put(GString *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_string_append_vprintf(o, fmt, ap);
    va_end(ap);
}

/* ---- colours ---- */

typedef struct {
    int r, g, b;
} rgb;

static rgb mix(rgb a, rgb b, double t)
{
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    return (rgb){(int)lround(a.r + (b.r - a.r) * t), (int)lround(a.g + (b.g - a.g) * t),
                 (int)lround(a.b + (b.b - a.b) * t)};
}

static const rgb WHITE = {247, 247, 247}, RED = {178, 24, 43}, BLUE = {33, 102, 172},
                 NONE = {214, 214, 214}, INK = {37, 52, 148};

#define LIFT_SPAN 3.0  /* log2 lift shown: 1/8 .. 8 */

/* Diverging: blue below lift 1, white at 1, red above. */
static rgb lift_colour(double lift)
{
    double t = lift > 0 ? log2(lift) / LIFT_SPAN : -1;
    return t >= 0 ? mix(WHITE, RED, t) : mix(WHITE, BLUE, -t);
}

/* Sequential: load relative to uniform (1 = 1/n_experts of the picks),
 * white at 0 to dark blue at 4x uniform or more. */
static rgb load_colour(double rel)
{
    return mix(WHITE, INK, rel / 4);
}

static void fill(GString *o, rgb c)
{
    put(o, "fill=\"#%02x%02x%02x\"", c.r, c.g, c.b);
}

/* ---- counts ---- */

static const char *run_name(const rs_stats *s)
{
    return s->mask ? "router masked" : "free router";
}

static void run_label(GString *o, const rs_stats *s)
{
    esc(o, run_name(s));
    if (s->mask) {
        g_string_append(o, " to ");
        esc(o, s->mask);
    }
}

/* ---- pictures ---- */

static int cell_width(int n, int total, int lo, int hi)
{
    int w = n > 0 ? total / n : hi;
    return w < lo ? lo : w > hi ? hi : w;
}

#define LABEL_W 118   /* domain names left of a heatmap */

/* Experts (columns) x domains (rows) of MoE layer li, coloured by lift. */
static void svg_heatmap(GString *o, const rs_stats *s, int li)
{
    int cw = cell_width(s->n_experts, 720, 4, 24), ch = 18;
    int w = LABEL_W + s->n_experts * cw + 8, h = 22 + s->n_domains * ch + 18;
    int tick = s->n_experts <= 32 ? 1 : s->n_experts <= 64 ? 4 : 16;
    put(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
           "viewBox=\"0 0 %d %d\" role=\"img\">\n", w, h, w, h);
    put(o, "<text x=\"0\" y=\"13\" class=\"t\">layer %d, ", s->layer_ids[li]);
    run_label(o, s);
    rs_layer_summary sm;
    rs_summarise(s, li, &sm);
    put(o, ": NMI %.3f, purity %.3f</text>\n", sm.nmi, sm.purity);
    for (int d = 0; d < s->n_domains; d++) {
        int y = 22 + d * ch;
        put(o, "<text x=\"%d\" y=\"%d\" class=\"l\" text-anchor=\"end\">", LABEL_W - 6,
            y + ch - 5);
        esc(o, s->domains[d]);
        g_string_append(o, "</text>\n");
        uint64_t nd = rs_domain_total(s, li, d);
        for (int e = 0; e < s->n_experts; e++) {
            uint64_t ne = rs_expert_total(s, li, e), n = rs_count(s, li, d, e);
            double lift = rs_lift(s, li, d, e);
            put(o, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" ", LABEL_W + e * cw, y,
                cw, ch);
            fill(o, ne ? lift_colour(lift) : NONE);
            put(o, "><title>layer %d, expert %d, ", s->layer_ids[li], e);
            esc(o, s->domains[d]);
            if (ne)
                put(o, ": %" G_GUINT64_FORMAT " picks, %.1f %% of the domain's, lift %.2f",
                    n, nd ? 100.0 * n / nd : 0.0, lift);
            else
                g_string_append(o, ": never chosen");
            g_string_append(o, "</title></rect>\n");
        }
    }
    int yb = 22 + s->n_domains * ch;
    for (int e = 0; e < s->n_experts; e += tick)
        put(o, "<text x=\"%d\" y=\"%d\" class=\"n\" text-anchor=\"middle\">%d</text>\n",
            LABEL_W + e * cw + cw / 2, yb + 13, e);
    g_string_append(o, "</svg>\n");
}

static void svg_lift_legend(GString *o)
{
    int steps = 48, sw = 6, x0 = 10, w = x0 * 2 + steps * sw + 120, h = 44;
    put(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
           "viewBox=\"0 0 %d %d\" role=\"img\">\n", w, h, w, h);
    g_string_append(o, "<title>lift colour scale</title>\n");
    for (int i = 0; i < steps; i++) {
        double lg = -LIFT_SPAN + 2 * LIFT_SPAN * (i + 0.5) / steps;
        put(o, "<rect x=\"%d\" y=\"4\" width=\"%d\" height=\"14\" ", x0 + i * sw, sw);
        fill(o, lift_colour(exp2(lg)));
        g_string_append(o, "/>\n");
    }
    static const char *ticks[] = {"1/8", "1/4", "1/2", "1", "2", "4", "8"};
    for (int i = 0; i < 7; i++)
        put(o, "<text x=\"%d\" y=\"32\" class=\"n\" text-anchor=\"middle\">%s</text>\n",
            x0 + i * steps * sw / 6, ticks[i]);
    int xn = x0 + steps * sw + 16;
    put(o, "<rect x=\"%d\" y=\"4\" width=\"14\" height=\"14\" ", xn);
    fill(o, NONE);
    put(o, "/>\n<text x=\"%d\" y=\"16\" class=\"n\">never chosen</text>\n", xn + 18);
    put(o, "<text x=\"%d\" y=\"42\" class=\"n\" text-anchor=\"middle\">lift = share of the "
           "domain's picks / share of all picks</text>\n", x0 + steps * sw / 2);
    g_string_append(o, "</svg>\n");
}

/* MoE layers (rows) x experts (columns), coloured by load. */
static void svg_load(GString *o, const rs_stats *s)
{
    int cw = cell_width(s->n_experts, 512, 3, 20), ch = cell_width(s->n_layers, 384, 6, 20);
    int lw = 40, w = lw + s->n_experts * cw + 8, h = 20 + s->n_layers * ch + 20;
    int tick = s->n_experts <= 32 ? 2 : 16, ltick = s->n_layers <= 16 ? 1 : 4;
    put(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
           "viewBox=\"0 0 %d %d\" role=\"img\">\n", w, h, w, h);
    g_string_append(o, "<text x=\"0\" y=\"13\" class=\"t\">expert load, ");
    run_label(o, s);
    g_string_append(o, "</text>\n");
    for (int li = 0; li < s->n_layers; li++) {
        int y = 20 + li * ch;
        if (li % ltick == 0)
            put(o, "<text x=\"%d\" y=\"%d\" class=\"n\" text-anchor=\"end\">L%d</text>\n",
                lw - 4, y + ch - 2, s->layer_ids[li]);
        for (int e = 0; e < s->n_experts; e++) {
            double load = rs_load(s, li, e);
            put(o, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" ", lw + e * cw, y, cw,
                ch);
            fill(o, load > 0 ? load_colour(load * s->n_experts) : NONE);
            put(o, "><title>layer %d, expert %d: %.2f %% of the picks</title></rect>\n",
                s->layer_ids[li], e, 100 * load);
        }
    }
    int yb = 20 + s->n_layers * ch;
    for (int e = 0; e < s->n_experts; e += tick)
        put(o, "<text x=\"%d\" y=\"%d\" class=\"n\" text-anchor=\"middle\">%d</text>\n",
            lw + e * cw + cw / 2, yb + 13, e);
    g_string_append(o, "</svg>\n");
}

static void svg_load_legend(GString *o, int n_experts)
{
    int steps = 32, sw = 8, x0 = 10, w = x0 * 2 + steps * sw + 120, h = 44;
    put(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
           "viewBox=\"0 0 %d %d\" role=\"img\">\n", w, h, w, h);
    g_string_append(o, "<title>load colour scale</title>\n");
    for (int i = 0; i < steps; i++) {
        put(o, "<rect x=\"%d\" y=\"4\" width=\"%d\" height=\"14\" ", x0 + i * sw, sw);
        fill(o, load_colour(4.0 * (i + 0.5) / steps));
        g_string_append(o, "/>\n");
    }
    for (int i = 0; i <= 4; i++)
        put(o, "<text x=\"%d\" y=\"32\" class=\"n\" text-anchor=\"middle\">%dx</text>\n",
            x0 + i * steps * sw / 4, i);
    int xn = x0 + steps * sw + 16;
    put(o, "<rect x=\"%d\" y=\"4\" width=\"14\" height=\"14\" ", xn);
    fill(o, NONE);
    put(o, "/>\n<text x=\"%d\" y=\"16\" class=\"n\">never chosen</text>\n", xn + 18);
    put(o, "<text x=\"%d\" y=\"42\" class=\"n\" text-anchor=\"middle\">load relative to "
           "uniform (1x = 1/%d of the picks)</text>\n", x0 + steps * sw / 2, n_experts);
    g_string_append(o, "</svg>\n");
}

/* Normalised MI per layer, one bar per run and layer. */
static void svg_nmi(GString *o, const rs_stats *const *runs, int n_runs)
{
    static const rgb colours[2] = {{68, 119, 170}, {238, 102, 119}};
    const rs_stats *s = runs[0];
    int bw = cell_width(s->n_layers * n_runs, 640, 3, 28), gap = bw / 2 + 2;
    int gw = bw * n_runs + gap, ph = 160, x0 = 44, top = 26;
    int w = x0 + s->n_layers * gw + 16, h = top + ph + 40;
    if (w < 360)
        w = 360;
    put(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
           "viewBox=\"0 0 %d %d\" role=\"img\">\n", w, h, w, h);
    g_string_append(o, "<text x=\"0\" y=\"13\" class=\"t\">normalised MI(domain; expert) "
                       "per layer</text>\n");
    for (int i = 0; i <= 4; i++) {
        int y = top + ph - i * ph / 4;
        put(o, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#cccccc\"/>\n", x0, y,
            w - 8, y);
        put(o, "<text x=\"%d\" y=\"%d\" class=\"n\" text-anchor=\"end\">%.2f</text>\n", x0 - 4,
            y + 4, i / 4.0);
    }
    int ltick = s->n_layers <= 16 ? 1 : 4;
    for (int li = 0; li < s->n_layers; li++) {
        for (int r = 0; r < n_runs; r++) {
            rs_layer_summary sm;
            rs_summarise(runs[r], li, &sm);
            int bh = (int)lround(sm.nmi * ph);
            put(o, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" ",
                x0 + li * gw + gap / 2 + r * bw, top + ph - bh, bw, bh);
            fill(o, colours[r]);
            put(o, "><title>layer %d, ", s->layer_ids[li]);
            run_label(o, runs[r]);
            put(o, ": NMI %.4f, MI %.4f bits</title></rect>\n", sm.nmi, sm.mi);
        }
        if (li % ltick == 0)
            put(o, "<text x=\"%d\" y=\"%d\" class=\"n\" text-anchor=\"middle\">%d</text>\n",
                x0 + li * gw + gw / 2, top + ph + 14, s->layer_ids[li]);
    }
    for (int r = 0; r < n_runs; r++) {
        int x = x0 + r * 180;
        put(o, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" ", x, top + ph + 24);
        fill(o, colours[r]);
        put(o, "/>\n<text x=\"%d\" y=\"%d\" class=\"n\">", x + 16, top + ph + 34);
        run_label(o, runs[r]);
        g_string_append(o, "</text>\n");
    }
    g_string_append(o, "</svg>\n");
}

/* ---- tables ---- */

static void table_layers(GString *o, const rs_stats *s)
{
    g_string_append(o, "<table>\n<caption>");
    run_label(o, s);
    g_string_append(o, "</caption>\n<tr><th>layer</th><th>picks</th><th>used</th>"
                       "<th>MI bits</th><th>H(domain)</th><th>NMI</th><th>purity</th>"
                       "<th>never chosen</th></tr>\n");
    uint8_t *never = g_new0(uint8_t, s->n_experts > 0 ? s->n_experts : 1);
    for (int li = 0; li < s->n_layers; li++) {
        rs_layer_summary sm;
        rs_summarise(s, li, &sm);
        for (int e = 0; e < s->n_experts; e++)
            never[e] = rs_expert_total(s, li, e) == 0;
        char *l = qm_list_format(never, s->n_experts);
        put(o, "<tr><td>%d</td><td>%" G_GUINT64_FORMAT "</td><td>%d/%d</td><td>%.4f</td>"
               "<td>%.4f</td><td>%.3f</td><td>%.3f</td><td>%s</td></tr>\n",
            s->layer_ids[li], sm.picks, sm.used, s->n_experts, sm.mi, sm.h_domain, sm.nmi,
            sm.purity, *l ? l : "-");
        g_free(l);
    }
    g_free(never);
    g_string_append(o, "</table>\n");
}

static void table_top(GString *o, const rs_stats *s)
{
    g_string_append(o, "<table>\n<caption>top experts per domain, ");
    run_label(o, s);
    g_string_append(o, " (expert: share of the domain's picks, lift)</caption>\n"
                       "<tr><th>layer</th>");
    for (int d = 0; d < s->n_domains; d++) {
        g_string_append(o, "<th>");
        esc(o, s->domains[d]);
        g_string_append(o, "</th>");
    }
    g_string_append(o, "</tr>\n");
    rs_top_entry top[RS_TOP];
    for (int li = 0; li < s->n_layers; li++) {
        put(o, "<tr><td>%d</td>", s->layer_ids[li]);
        for (int d = 0; d < s->n_domains; d++) {
            g_string_append(o, "<td>");
            int n = rs_top(s, li, d, RS_TOP, top);
            for (int i = 0; i < n; i++)
                put(o, "%s<b>%d</b>: %.0f %% x%.1f", i ? "<br/>" : "", top[i].expert,
                    100 * top[i].share, top[i].lift);
            g_string_append(o, "</td>");
        }
        g_string_append(o, "</tr>\n");
    }
    g_string_append(o, "</table>\n");
}

/* ---- the gate ---- */

static void verdict(GString *o, int ok)
{
    put(o, "<span class=\"%s\">%s</span>", ok ? "ok" : "bad", ok ? "ok" : "FAIL");
}

static const coh_failure *failure_of(const coh_result *g, const char *criterion)
{
    for (guint i = 0; g && i < g->failures->len; i++) {
        const coh_failure *f = g->failures->pdata[i];
        if (!strcmp(f->criterion, criterion))
            return f;
    }
    return NULL;
}

static void gate_cell(GString *o, const coh_result *g, int row)
{
    g_string_append(o, "<td>");
    if (!g) {
        g_string_append(o, "not run</td>");
        return;
    }
    const coh_failure *f = NULL;
    switch (row) {
    case 0:
        if (g->source_checked) {
            verdict(o, g->source_identical);
            put(o, " logits of %d prompts %s", g->source_prompts,
                g->source_identical ? "bit-identical to the source" : "differ");
        } else {
            g_string_append(o, "not checked (no --source)");
        }
        f = failure_of(g, "source");
        break;
    case 1:
        verdict(o, g->ppl_ok);
        put(o, " perplexity %.6g (at most %.6g) on %d tokens", g->ppl, g->max_ppl,
            g->text_tokens);
        f = failure_of(g, "perplexity");
        break;
    case 2: {
        int lo = g->n_experts, at = 0;
        for (int i = 0; i < g->n_moe_layers; i++)
            if (g->layers[i].used < lo) {
                lo = g->layers[i].used;
                at = g->layers[i].layer;
            }
        verdict(o, g->router_ok);
        put(o, " fewest experts chosen: %d of %d (layer %d), needs more than %d", lo,
            g->n_experts, at, g->router_threshold);
        f = failure_of(g, "router");
        break;
    }
    case 3:
        put(o, "%d of %d prompts continue as expected", g->n_matching, g->n_expected);
        break;
    default:
        verdict(o, g->failures->len == 0);
        put(o, " %u problem%s", g->failures->len, g->failures->len == 1 ? "" : "s");
    }
    if (f) {
        g_string_append(o, "<br/><small>");
        esc(o, f->message);
        g_string_append(o, "</small>");
    }
    g_string_append(o, "</td>");
}

static void gate_label(GString *o, const coh_result *g, const char *fallback)
{
    if (!g) {
        esc(o, fallback);
    } else if (g->mask) {
        g_string_append(o, "router masked to ");
        esc(o, g->mask);
    } else if (g->plan_path) {
        g_string_append(o, "router restricted to the plan ");
        esc(o, g->plan_path);
    } else {
        g_string_append(o, "free router");
    }
}

static void section_gate(GString *o, const coh_result *a, const coh_result *b)
{
    const coh_result *g = a ? a : b;
    g_string_append(o, "<h2 id=\"gate\">Coherence gate</h2>\n<p>");
    put(o, "%d MoE layers x %d experts, top-%d, vocabulary %d; reference text <code>",
        g->n_moe_layers, g->n_experts, g->top_k, g->vocab);
    esc(o, g->text_path);
    g_string_append(o, "</code>.</p>\n<table class=\"gate\">\n<tr><th>criterion</th><th>");
    gate_label(o, a, "free router");
    g_string_append(o, "</th><th>");
    gate_label(o, b, "router masked");
    g_string_append(o, "</th></tr>\n");
    static const char *rows[] = {"(a) source", "(b) perplexity", "(c) router",
                                 "continuations", "verdict"};
    for (int r = 0; r < 5; r++) {
        put(o, "<tr><th>%s</th>", rows[r]);
        gate_cell(o, a, r);
        gate_cell(o, b, r);
        g_string_append(o, "</tr>\n");
    }
    g_string_append(o, "</table>\n");

    g_string_append(o, "<table class=\"gate\">\n<caption>experts chosen per layer over the "
                       "prompt set</caption>\n<tr><th>layer</th><th>");
    gate_label(o, a, "free router");
    g_string_append(o, "</th><th>");
    gate_label(o, b, "router masked");
    g_string_append(o, "</th></tr>\n");
    for (int i = 0; i < g->n_moe_layers; i++) {
        put(o, "<tr><td>%d</td>", g->layers[i].layer);
        const coh_result *x[2] = {a, b};
        for (int j = 0; j < 2; j++) {
            g_string_append(o, "<td>");
            if (x[j] && i < x[j]->n_moe_layers) {
                verdict(o, x[j]->layers[i].ok);
                put(o, " %d/%d", x[j]->layers[i].used, x[j]->layers[i].allowed);
            }
            g_string_append(o, "</td>");
        }
        g_string_append(o, "</tr>\n");
    }
    g_string_append(o, "</table>\n");

    const coh_result *pl = a && a->compare_run ? a : b && b->compare_run ? b : NULL;
    if (pl) {
        g_string_append(o, "<table class=\"gate\">\n<caption>the plan at the same N, on the "
                           "reference text (information, not a criterion)</caption>\n"
                           "<tr><th>router</th><th>perplexity</th><th>router diversity "
                           "(distinct experts used / allowed)</th></tr>\n");
        static const char *const what[COH_ROWS] = {"the plan", "first N experts",
                                                   "free router"};
        for (int k = 0; k < COH_ROWS; k++) {
            const coh_row *w = &pl->rows[k];
            put(o, "<tr><th>%s</th><td>%.6g</td><td>%d/%d (%.0f %%)</td></tr>\n", what[k],
                w->ppl, w->used, w->allowed, w->allowed ? 100.0 * w->used / w->allowed : 0.0);
        }
        g_string_append(o, "</table>\n");
    }

    g_string_append(o, "<h3>Greedy continuations</h3>\n");
    if (a->gen_limited) {
        char w[32], m[32];
        g_string_append_printf(o, "<p>The tokens teacher forcing chose: the model's files "
                               "(%s) are larger than the memory available (%s), so each "
                               "generated token would read them again "
                               "(<code>--gen-tokens N</code> generates N).</p>\n",
                               qm_human_bytes(a->weights_bytes, w, sizeof w),
                               qm_human_bytes(a->memory_bytes, m, sizeof m));
    }
    g_string_append(o, "<table class=\"cont\">\n"
                       "<tr><th>domain</th><th>prompt</th><th>expected</th><th>");
    gate_label(o, a, "free router");
    g_string_append(o, "</th><th>");
    gate_label(o, b, "router masked");
    g_string_append(o, "</th></tr>\n");
    for (guint i = 0; i < g->prompts->len; i++) {
        const coh_prompt_result *p = g->prompts->pdata[i];
        g_string_append(o, "<tr><td>");
        esc(o, p->domain);
        g_string_append(o, "</td><td>");
        esc(o, p->prompt);
        g_string_append(o, "</td><td>");
        esc(o, p->expected ? p->expected : "");
        g_string_append(o, "</td>");
        const coh_result *x[2] = {a, b};
        for (int j = 0; j < 2; j++) {
            const coh_prompt_result *q =
                x[j] && i < x[j]->prompts->len ? x[j]->prompts->pdata[i] : NULL;
            put(o, "<td class=\"%s\">",
                !q ? "" : q->matches == 1 ? "match" : q->matches == 0 ? "differ" : "");
            if (q)
                esc(o, q->output ? q->output : "");
            g_string_append(o, "</td>");
        }
        g_string_append(o, "</tr>\n");
    }
    g_string_append(o, "</table>\n");
}

/* ---- the page ---- */

static const char style[] =
    "body{font-family:sans-serif;margin:16px 24px;color:#222;background:#fff}"
    "h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}"
    "h3{font-size:15px}table{border-collapse:collapse;margin:8px 16px 8px 0;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
    "caption{text-align:left;font-weight:bold;padding:4px 0}"
    ".pair{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}"
    ".ok{color:#1a7f37;font-weight:bold}.bad{color:#cf222e;font-weight:bold}"
    "td.match{background:#e6f4ea}td.differ{background:#fde8e8}"
    "svg .t{font-size:13px;font-weight:bold}svg .l{font-size:12px}svg .n{font-size:10px}"
    "svg text{font-family:sans-serif;fill:#222}.meta{color:#555;font-size:13px}";

static void meta(GString *o, const rs_stats *s)
{
    g_string_append(o, "<li>");
    run_label(o, s);
    put(o, ": %" G_GUINT64_FORMAT " tokens in %d sequences (", s->tokens, s->sequences);
    for (int d = 0; d < s->n_domains; d++) {
        if (d)
            g_string_append(o, ", ");
        esc(o, s->domains[d]);
        put(o, " %" G_GUINT64_FORMAT, s->domain_tokens[d]);
    }
    g_string_append(o, ")</li>\n");
}

char *report_html(const report_input *in, size_t *len)
{
    const rs_stats *s = in->stats;
    const rs_stats *runs[2] = {s, in->masked};
    int n_runs = in->masked ? 2 : 1;
    GString *o = g_string_sized_new(1 << 16);
    const char *title = in->title ? in->title : "qmoe router report";
    g_string_append(o, "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" "
                       "lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>");
    esc(o, title);
    put(o, "</title>\n<style>%s</style>\n</head>\n<body>\n<h1>", style);
    esc(o, title);
    g_string_append(o, "</h1>\n<p class=\"meta\">model <code>");
    esc(o, s->model_path);
    g_string_append(o, "</code>, corpus <code>");
    esc(o, s->corpus_path);
    put(o, "</code>: %d MoE layers x %d experts, top-%d, %d domains</p>\n<ul class=\"meta\">\n",
        s->n_layers, s->n_experts, s->top_k, s->n_domains);
    for (int r = 0; r < n_runs; r++)
        meta(o, runs[r]);
    g_string_append(o, "</ul>\n");

    if (in->gate || in->gate_masked)
        section_gate(o, in->gate, in->gate_masked);

    g_string_append(o, "<h2 id=\"nmi\">Specialisation per layer</h2>\n<p>Normalised "
                       "mutual information between the domain of a token and the experts "
                       "it is routed to: 0 = the expert says nothing about the domain, "
                       "1 = it tells the domain.</p>\n");
    svg_nmi(o, runs, n_runs);

    g_string_append(o, "<h2 id=\"load\">Expert load, layers x experts</h2>\n");
    svg_load_legend(o, s->n_experts);
    g_string_append(o, "<div class=\"pair\">\n");
    for (int r = 0; r < n_runs; r++) {
        g_string_append(o, "<div>\n");
        svg_load(o, runs[r]);
        g_string_append(o, "</div>\n");
    }
    g_string_append(o, "</div>\n");

    g_string_append(o, "<h2 id=\"heatmaps\">Which experts each domain picks</h2>\n"
                       "<p>Per MoE layer, experts (columns) x domains (rows), coloured by "
                       "lift: red = the domain picks the expert more often than the other "
                       "domains do, blue = less often.</p>\n");
    svg_lift_legend(o);
    for (int li = 0; li < s->n_layers; li++) {
        g_string_append(o, "<div class=\"pair\">\n");
        for (int r = 0; r < n_runs; r++) {
            g_string_append(o, "<div>\n");
            svg_heatmap(o, runs[r], li);
            g_string_append(o, "</div>\n");
        }
        g_string_append(o, "</div>\n");
    }

    g_string_append(o, "<h2 id=\"tables\">Tables</h2>\n<div class=\"pair\">\n");
    for (int r = 0; r < n_runs; r++)
        table_layers(o, runs[r]);
    g_string_append(o, "</div>\n<div class=\"pair\">\n");
    for (int r = 0; r < n_runs; r++)
        table_top(o, runs[r]);
    put(o, "</div>\n<p class=\"meta\">written by qmoe %s</p>\n</body>\n</html>\n",
        QMOE_VERSION);
    if (len)
        *len = o->len;
    return g_string_free(o, FALSE);
}

int report_write(const char *dir, const report_input *in, GError **err)
{
    if (fs_mkdir_p(dir, err) != 0)
        return -1;
    size_t len = 0;
    char *html = report_html(in, &len);
    char *path = g_build_filename(dir, "index.html", NULL);
    int rv = fs_write_atomic(path, html, len, err);
    g_free(path);
    g_free(html);
    return rv;
}
