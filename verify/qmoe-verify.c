/* qmoe-verify - prove an extraction complete and intact.
 *
 * The checks live in common/outdir/verify.{h,c}, common/analysis/coherence.{h,c}
 * and verify_coherence.c (the gate as a check); this file parses options, runs them in order (coverage, per-file checks, the
 * coherence gate) and presents the result: one line per problem, a
 * summary, or the same facts as JSON.
 */
#include "analysis/coherence.h"
#include "verify_coherence.h"
#include "verify_report.h"
#include "base/util.h"
#include "cli/cli.h"
#include "outdir/outdir.h"
#include "outdir/verify.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *prog = "qmoe-verify";

static gboolean opt_quick, opt_json, opt_version, opt_coherence, opt_no_progress;
static char *opt_source, *opt_text, *opt_prompts, *opt_mask, *opt_keep, *opt_report;
static int opt_expect = -1, opt_jobs, opt_gen_tokens = -1;
static double opt_max_ppl;

static GOptionEntry entries[] = {
    {"quick", 0, 0, G_OPTION_ARG_NONE, &opt_quick,
     "Presence, sizes and headers only; read no tensor data", NULL},
    {"source", 0, 0, G_OPTION_ARG_FILENAME, &opt_source,
     "Also compare every tensor byte for byte with the source checkpoint SRC", "SRC"},
    {"expect", 0, 0, G_OPTION_ARG_INT, &opt_expect,
     "Expect N expert files (e.g. the full count for a partial extraction)", "N"},
    {"coherence", 0, 0, G_OPTION_ARG_NONE, &opt_coherence,
     "Also run the forward-pass gate: perplexity, router, continuations", NULL},
    {"text", 0, 0, G_OPTION_ARG_FILENAME, &opt_text,
     "--coherence: reference text (default: samples/reference.txt)", "FILE"},
    {"prompts", 0, 0, G_OPTION_ARG_FILENAME, &opt_prompts,
     "--coherence: prompt set, JSON lines (default: samples/prompts)", "FILE"},
    {"max-ppl", 0, 0, G_OPTION_ARG_DOUBLE, &opt_max_ppl,
     "--coherence: highest passing perplexity (default: min(100, vocab/4))", "X"},
    {"gen-tokens", 0, 0, G_OPTION_ARG_INT, &opt_gen_tokens,
     "--coherence: tokens generated per prompt, all prompts one step per batch (default: "
     "4, or 1 when the model is larger than the memory available; an expected text is "
     "checked by teacher forcing, whatever N)", "N"},
    {"mask-experts", 0, 0, G_OPTION_ARG_STRING, &opt_mask,
     "--coherence: restrict the router to LIST for the whole gate (shows a masked run failing)",
     "LIST"},
    {"keep-experts", 0, 0, G_OPTION_ARG_FILENAME, &opt_keep,
     "--coherence: restrict each layer's router to the expert plan PLAN for the whole gate "
     "(the pruned model simulated), and compare it with the first N experts and the free "
     "router", "PLAN"},
    {"report", 0, 0, G_OPTION_ARG_FILENAME, &opt_report,
     "--coherence: write DIR/index.html: verdicts, continuations and router heatmaps, free "
     "router next to masked to 0-7", "DIR"},
    {"jobs", 'j', 0, G_OPTION_ARG_INT, &opt_jobs,
     "Files checked in parallel, forward-pass threads (default: the number of CPUs)", "N"},
    {"json", 0, 0, G_OPTION_ARG_NONE, &opt_json,
     "Print the result as JSON on stdout", NULL},
    {"no-progress", 0, 0, G_OPTION_ARG_NONE, &opt_no_progress,
     "No progress on stderr (reading and hashing, the coherence gate's steps)", NULL},
    {"version", 0, 0, G_OPTION_ARG_NONE, &opt_version, "Print the version", NULL},
    {NULL, 0, 0, 0, NULL, NULL, NULL},
};

static const char *summary =
    "Checks that an extraction written by qmoe-extract is complete and intact.";

static const char *description =
    "Checks, in order:\n"
    "  coverage   every expected expert file (from qmoe.json's expected set, or\n"
    "             from config.json when only the journal exists) and every other\n"
    "             recorded file is present; nothing unexpected in experts/,\n"
    "             layers/, other/; qmoe.json, config.json and\n"
    "             model.safetensors.index.json agree. A running extraction (a\n"
    "             live lock or temporaries) is reported with its pid, incomplete.\n"
    "  integrity  every header parses strictly and matches the manifest; sizes\n"
    "             and SHA-256 match the manifest (on a mismatch the per-tensor\n"
    "             CRC-32s name the damaged tensor); tensor names, dtypes and\n"
    "             shapes fit config.json; every FP8 (F8_E4M3) weight has a\n"
    "             weight_scale_inv of its quantization_config block grid.\n"
    "             --quick skips reading the data.\n"
    "  source     with --source SRC: every tensor is byte-identical to the\n"
    "             source checkpoint's, and for a full extraction every source\n"
    "             tensor is present in OUT.\n"
    "  coherence  with --coherence: the reference forward pass on OUT's files.\n"
    "             It fails unless\n"
    "             (a) with --source: the logits of the first prompt of each\n"
    "                 domain (4 prompts at most) are bit-identical between OUT\n"
    "                 and SRC;\n"
    "             (b) the perplexity of the reference text is at most --max-ppl\n"
    "                 (default min(100, vocab/4): chance is ppl = vocab, random\n"
    "                 weights score about that, a healthy model under 20 on\n"
    "                 ordinary text);\n"
    "             (c) the router is free: every MoE layer picks more than\n"
    "                 max(experts/4, min(8, experts/2)) distinct experts among\n"
    "                 its top-k choices over the prompt set (128 experts: more\n"
    "                 than 32; 16: more than 8).\n"
    "             It reports each prompt's greedy continuation (and whether it\n"
    "             begins with the prompt's \"expected\" text: a fact, not a\n"
    "             criterion), per-layer expert usage, the experts carrying most\n"
    "             router weight per prompt domain, and the reference perplexity\n"
    "             with the router masked to experts 0-7 next to the free one's.\n"
    "             It needs every expert: with files missing it is not run.\n"
    "             --keep-experts PLAN runs the whole gate with each layer the\n"
    "             plan lists restricted to its experts (the model qmoe-pack\n"
    "             --keep-experts PLAN would write) and judges it by the same\n"
    "             criteria, (c) against what the plan allows: a layer keeping\n"
    "             N experts must choose more than max(N/4, min(8, N/2)) of\n"
    "             them (8 kept: more than 4). Shown besides, as information,\n"
    "             not a criterion: the comparison at the same N, the\n"
    "             reference perplexity and the router diversity (distinct\n"
    "             experts the text was routed to / experts allowed, over the\n"
    "             MoE layers) of the plan, of the first N experts of each\n"
    "             listed layer (experts 0..N-1) and of the free router.\n"
    "             Default files: $QMOE_DATA/{reference.txt,prompts} when\n"
    "             QMOE_DATA is set, else the first of\n"
    "             <bindir>/../share/qmoe/ (make install) and\n"
    "             <bindir>/../../samples/ (the build tree) that has them.\n"
    "\n"
    "--expect N: N expert files must be present. When N is the model's full\n"
    "count (MoE layers x experts in config.json), every expert is expected and\n"
    "the missing ones are listed, which checks a partial extraction against\n"
    "the whole model; otherwise only the count is compared.\n"
    "\n"
    "Output: one line per problem, 'PHASE: FILE: tensor 'NAME': at offset N:\n"
    "WHAT', then a summary; --json prints the same facts as one object.\n"
    "Progress goes to stderr: reading and hashing that lasts more than a second\n"
    "(bytes, rate, ETA; redrawn on a terminal, else a line a second), and the\n"
    "coherence gate's steps. --no-progress leaves it out.\n"
    "\n"
    "Exit status:\n"
    "  0  complete and intact\n"
    "  1  a check failed (missing, unexpected, corrupt, mismatched, incomplete,\n"
    "     an extraction still running, or a coherence criterion)\n"
    "  2  usage error, OUT (or SRC) missing or unreadable, a file in OUT\n"
    "     that could not be read, or --coherence's text or prompt set\n"
    "     unreadable or malformed (the verdict is unknown)\n";

static void print_problem(const vf_problem *p)
{
    GString *s = g_string_new(p->phase);
    g_string_append(s, ": ");
    if (p->file)
        g_string_append_printf(s, "%s: ", p->file);
    if (p->tensor)
        g_string_append_printf(s, "tensor '%s': ", p->tensor);
    if (p->offset >= 0 && p->kind != VF_SOURCE && p->kind != VF_DAMAGED)
        g_string_append_printf(s, "at offset %lld: ", (long long)p->offset);
    g_string_append(s, p->message);
    puts(s->str);
    g_string_free(s, TRUE);
}

/* Text for one line: control characters as escapes, the rest as it is. */
static char *one_line(const char *s)
{
    GString *g = g_string_new(NULL);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\n')
            g_string_append(g, "\\n");
        else if (*p == '\t')
            g_string_append(g, "\\t");
        else if (*p < 0x20 || *p == 0x7f)
            g_string_append_printf(g, "\\x%02x", *p);
        else
            g_string_append_c(g, (char)*p);
    }
    return g_string_free(g, FALSE);
}

/* vf_check_files_progress: after the first interval, the bytes read so
 * far, rate and ETA: redrawn in place on a terminal (every 0.2 s), else a
 * whole line a second, for logs; a closing line when any was shown.
 * QMOE_PROGRESS_INTERVAL (seconds) is a test hook for the interval. */
typedef struct {
    double t0, last, interval;
    int tty, shown;
    const char *what;
} read_progress;

static void files_progress(void *user, uint64_t done, uint64_t total, int files_done,
                           int files, int final)
{
    read_progress *p = user;
    double now = qm_monotonic(), dt = now - p->t0;
    if (final ? !p->shown : now - p->last < p->interval)
        return;
    char a[32], b[32], c[32], eta[48] = "";
    double rate = dt > 0 ? (double)done / dt : 0;
    if (!final && rate > 0) {
        double left = (double)(total - done) / rate;
        if (left < 60)
            snprintf(eta, sizeof eta, ", ETA %.0fs", left);
        else
            snprintf(eta, sizeof eta, ", ETA %dm %02ds", (int)(left / 60), (int)left % 60);
    }
    if (final)
        snprintf(eta, sizeof eta, " in %.1f s", dt);
    fprintf(stderr, "%sqmoe-verify: %s: %s of %s (%.1f %%), %d/%d files, %s/s%s%s",
            p->tty ? "\r\033[K" : "", p->what, qm_human_bytes(done, a, sizeof a),
            qm_human_bytes(total, b, sizeof b),
            total ? 100.0 * (double)done / (double)total : 100.0, files_done, files,
            qm_human_bytes((uint64_t)rate, c, sizeof c), eta, p->tty && !final ? "" : "\n");
    fflush(stderr);
    p->shown = 1;
    p->last = now;
}

/* coh_opts.progress: one line per step on stderr, with the time so far. */
static void coherence_progress(void *user, const char *step)
{
    fprintf(stderr, "qmoe-verify: coherence: %s (%.1f s)\n", step,
            qm_monotonic() - *(const double *)user);
}

static const char *verdict(int ok)
{
    return ok ? "ok" : "FAILED";
}

static void print_coherence(const coh_result *c)
{
    printf("coherence: %d MoE layers x %d experts, top-%d, vocabulary %d (tokenizer %d)%s%s"
           "%s%s%s\n",
           c->n_moe_layers, c->n_experts, c->top_k, c->vocab, c->tok_vocab,
           c->mask ? ", router masked to " : "", c->mask ? c->mask : "",
           c->plan_path ? ", router restricted to the plan '" : "",
           c->plan_path ? c->plan_path : "", c->plan_path ? "'" : "");
    if (c->source_checked)
        printf("  (a) source: logits of %d prompt%s %s  %s\n", c->source_prompts,
               c->source_prompts == 1 ? "" : "s",
               c->source_identical ? "bit-identical to the source" : "differ from the source",
               verdict(c->source_identical));
    else
        printf("  (a) source: not checked (no --source)\n");
    printf("  (b) perplexity of '%s' (%d tokens): %.6g (at most %.6g)  %s\n", c->text_path,
           c->text_tokens, c->ppl, c->max_ppl, verdict(c->ppl_ok));
    if (c->ablation_run)
        printf("      ablation, router masked to %s: %.6g (%s: %.6g)\n", COH_ABLATION_MASK,
               c->ablation_ppl,
               c->mask ? "router masked as above" : c->plan_path ? "the plan" : "free router",
               c->ppl);
    else
        printf("      ablation: not run (%d experts, top-%d: masking to %s changes nothing)\n",
               c->n_experts, c->top_k, COH_ABLATION_MASK);
    if (c->compare_run) {
        printf("      comparison at the same N (%d layer%s in the plan; information, not a "
               "criterion):\n", c->plan_layers, c->plan_layers == 1 ? "" : "s");
        static const char *const what[COH_ROWS] = {"plan", "first N experts", "free router"};
        for (int k = 0; k < COH_ROWS; k++) {
            const coh_row *w = &c->rows[k];
            printf("        %-16s perplexity %-10.6g router diversity %d/%d (%.0f %%)\n",
                   what[k], w->ppl, w->used, w->allowed,
                   w->allowed ? 100.0 * w->used / w->allowed : 0.0);
        }
    }
    if (c->plan_path)
        printf("  (c) router: each MoE layer must choose more than max(N/4, min(8, N/2)) of "
               "the N experts it may use over the prompt set (%d tokens)  %s\n",
               c->routed_tokens, verdict(c->router_ok));
    else
        printf("  (c) router: each MoE layer must choose more than %d of %d experts over the "
               "prompt set (%d tokens)  %s\n",
               c->router_threshold, c->n_experts, c->routed_tokens, verdict(c->router_ok));
    for (int i = 0; i < c->n_moe_layers; i++) {
        const coh_layer_usage *u = &c->layers[i];
        int ids[3];
        double sh[3];
        int k = coh_top_experts(u->weight, u->n_experts, 3, ids, sh);
        printf("      layer %2d: %3d/%d chosen  %-6s most weight:", u->layer, u->used,
               u->allowed, verdict(u->ok));
        for (int j = 0; j < k; j++)
            printf(" %d (%.0f %%)", ids[j], 100 * sh[j]);
        printf("\n");
    }
    printf("  experts with the most router weight, per domain (layer: experts)\n");
    for (guint i = 0; i < c->domains->len; i++) {
        const coh_domain_usage *d = c->domains->pdata[i];
        GString *line = g_string_new(NULL);
        g_string_printf(line, "    %-15s", d->domain);
        for (int l = 0; l < c->n_moe_layers; l++) {
            int ids[3];
            double sh[3];
            int k = coh_top_experts(d->weight + (size_t)l * c->n_experts, c->n_experts, 3,
                                    ids, sh);
            if (l > 0 && l % 5 == 0) {
                printf("%s\n", line->str);
                g_string_printf(line, "    %-15s", "");
            } else if (l > 0) { /* columns: pad the previous entry */
                while ((line->len - 19) % 16)
                    g_string_append_c(line, ' ');
            }
            g_string_append_printf(line, " %2d:", c->layers[l].layer);
            for (int j = 0; j < k; j++)
                g_string_append_printf(line, "%s%d", j ? "," : "", ids[j]);
        }
        printf("%s\n", line->str);
        g_string_free(line, TRUE);
    }
    printf("  greedy continuations (%u prompts", c->prompts->len);
    if (c->n_expected)
        printf(", %d of %d begin with the expected text", c->n_matching, c->n_expected);
    printf(")\n");
    if (c->gen_limited) {
        char w[32], a[32];
        printf("    the tokens teacher forcing chose: the model's files (%s) are larger than "
               "the memory available (%s), each generated token would read them again "
               "(--gen-tokens N generates N)\n",
               qm_human_bytes(c->weights_bytes, w, sizeof w),
               qm_human_bytes(c->memory_bytes, a, sizeof a));
    }
    for (guint i = 0; i < c->prompts->len; i++) {
        const coh_prompt_result *p = c->prompts->pdata[i];
        char *a = one_line(p->prompt), *b = one_line(p->output ? p->output : "");
        printf("    [%s] %s -> %s%s%s\n", p->domain, a, b, p->stopped ? " <end>" : "",
               p->matches == 1 ? "  (as expected)" : p->matches == 0 ? "  (differs)" : "");
        g_free(a);
        g_free(b);
    }
    char pk[32];
    printf("  gate: %.1f s, peak resident memory %s\n", c->seconds,
           qm_human_bytes(c->peak_rss_bytes, pk, sizeof pk));
}

static void print_text(const vf_result *r, const char *out, int quick, const coh_result *c)
{
    for (guint i = 0; i < r->problems->len; i++)
        print_problem(r->problems->pdata[i]);
    for (guint i = 0; i < r->notes->len; i++)
        printf("note: %s\n", (char *)r->notes->pdata[i]);
    printf("%s\n", out);
    /* the MTP block's experts and layers are counted apart (layout.h) */
    int ml = r->mtp_layers_expected;
    char *split = ml ? od_mtp_breakdown(r->layers_expected - ml, ml,
                                        r->mtp_experts_expected / ml) : NULL;
    char mtp[160] = "", mtp_l[64] = "";
    if (split) {
        snprintf(mtp, sizeof mtp, " (%s; MTP %d/%d)", split, r->mtp_experts_present,
                 r->mtp_experts_expected);
        snprintf(mtp_l, sizeof mtp_l, " (MTP %d/%d)", r->mtp_layers_complete, ml);
    }
    g_free(split);
    printf("  experts: %d/%d%s%s\n", r->experts_present, r->experts_expected,
           r->expect_override ? " (--expect)" : "", mtp);
    printf("  layers complete: %d/%d%s\n", r->layers_complete, r->layers_expected, mtp_l);
    printf("  other files: %d/%d\n", r->others_present, r->others_expected);
    char hb[32];
    if (r->hashed)
        printf("  checked: %d files, %s read in %.1f s%s\n", r->files_checked,
               qm_human_bytes(r->bytes_read, hb, sizeof hb), r->seconds,
               r->source_checked ? ", compared with the source" : "");
    else
        printf("  checked: %d files%s\n", r->files_checked,
               quick ? " (--quick: sizes and headers, data not read)" : "");
    if (c)
        print_coherence(c);
    if (vf_exit_code(r) == 2)
        printf("ERROR: %u problem%s, some files or inputs could not be used: no verdict\n",
               r->problems->len,
               r->problems->len == 1 ? "" : "s");
    else if (r->running)
        printf("INCOMPLETE: extraction running (pid %ld)\n", (long)r->pid);
    else if (r->problems->len)
        printf("FAILED: %u problem%s\n", r->problems->len,
               r->problems->len == 1 ? "" : "s");
    else
        printf("OK\n");
}

/* The default of --text / --prompts: NAME in $QMOE_DATA, else next to
 * the binary, installed (<bindir>/../share/qmoe) or in the build tree
 * (<bindir>/../../samples). NULL when none has it. */
static char *data_file(const char *name)
{
    const char *env = g_getenv("QMOE_DATA");
    if (env && *env)
        return g_build_filename(env, name, NULL);
    char *exe = g_file_read_link("/proc/self/exe", NULL);
    if (!exe)
        return NULL;
    char *bindir = g_path_get_dirname(exe);
    g_free(exe);
    const char *const rel[] = {"../share/qmoe", "../../samples"};
    char *found = NULL;
    for (size_t i = 0; !found && i < G_N_ELEMENTS(rel); i++) {
        char *rp = g_build_filename(bindir, rel[i], name, NULL);
        char *p = g_canonicalize_filename(rp, NULL);
        g_free(rp);
        if (g_file_test(p, G_FILE_TEST_IS_REGULAR))
            found = p;
        else
            g_free(p);
    }
    g_free(bindir);
    return found;
}

int main(int argc, char **argv)
{
    GError *err = NULL;
    GOptionContext *ctx = g_option_context_new("OUT");
    g_option_context_set_summary(ctx, summary);
    g_option_context_set_description(ctx, description);
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (qm_options_parse(ctx, &argc, &argv, "j", &err)) {
        qm_usage_error(prog, "%s", err->message);
        g_error_free(err);
        g_option_context_free(ctx);
        return 2;
    }
    g_option_context_free(ctx);
    if (opt_version) {
        printf("%s %s\n", prog, QMOE_VERSION);
        return 0;
    }
    if (argc != 2) {
        qm_usage_error(prog, "%s", argc < 2 ? "missing OUT (the extracted directory)"
                                            : "too many arguments");
        return 2;
    }
    if (opt_expect < -1) {
        fprintf(stderr, "%s: --expect wants a count of at least 0\n", prog);
        return 2;
    }
    int jobs = opt_jobs > 0 ? opt_jobs : (int)g_get_num_processors();
    if (opt_jobs < 0) {
        fprintf(stderr, "%s: -j wants a positive number of jobs\n", prog);
        return 2;
    }
    if (!opt_coherence && (opt_text || opt_prompts || opt_max_ppl != 0 || opt_mask ||
                           opt_keep || opt_report || opt_gen_tokens != -1)) {
        fprintf(stderr, "%s: --text, --prompts, --max-ppl, --gen-tokens, --mask-experts, "
                "--keep-experts and --report need --coherence\n", prog);
        return 2;
    }
    if (opt_mask && opt_keep) {
        fprintf(stderr, "%s: --mask-experts and --keep-experts both restrict the router: "
                "give one\n", prog);
        return 2;
    }
    if (opt_gen_tokens != -1 && (opt_gen_tokens < 1 || opt_gen_tokens > 4096)) {
        fprintf(stderr, "%s: --gen-tokens wants a number of tokens in [1, 4096]\n", prog);
        return 2;
    }
    if (opt_max_ppl < 0 || isnan(opt_max_ppl)) {
        fprintf(stderr, "%s: --max-ppl wants a positive number\n", prog);
        return 2;
    }
    char *ref_text = NULL, *prompts = NULL;
    if (opt_coherence) {
        ref_text = opt_text ? g_strdup(opt_text) : data_file("reference.txt");
        prompts = opt_prompts ? g_strdup(opt_prompts) : data_file("prompts");
        if (!ref_text || !prompts) {
            fprintf(stderr, "%s: cannot find the default %s (samples/%s): give %s FILE or set "
                    "QMOE_DATA to the directory holding it\n", prog,
                    !ref_text ? "reference text" : "prompt set",
                    !ref_text ? "reference.txt" : "prompts", !ref_text ? "--text" : "--prompts");
            g_free(ref_text);
            g_free(prompts);
            return 2;
        }
    }
    const char *out = argv[1];
    vf_result *r = vf_result_new();
    vf_target *t = vf_target_open(out, opt_expect, r, &err);
    if (t && opt_source)
        vf_attach_source(t, opt_source, r, &err);
    if (err) {
        qm_report(prog, err);
        int code = qm_exit_code(err);
        if (opt_json) { /* machines get an answer on stdout all the same */
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "out", out);
            cJSON_AddStringToObject(j, "status", "error");
            cJSON_AddNumberToObject(j, "exit", code ? code : 2);
            cJSON_AddBoolToObject(j, "ok", 0);
            cJSON_AddStringToObject(j, "error", err->message);
            qm_json_out(j, 1);
        }
        g_error_free(err);
        vf_target_close(t);
        vf_result_free(r);
        g_free(ref_text);
        g_free(prompts);
        return code ? code : 2;
    }
    vf_check_coverage(t, r);
    t->gate_next = opt_coherence;
    const char *term = getenv("TERM"); /* a dumb terminal cannot clear a line */
    read_progress rp = {.t0 = qm_monotonic(),
                        .tty = isatty(2) && !(term && !strcmp(term, "dumb")),
                        .what = opt_source ? "reading, hashing and comparing with the source"
                                           : "reading and hashing"};
    rp.interval = rp.tty ? 0.2 : 1.0;
    const char *hook = getenv("QMOE_PROGRESS_INTERVAL");
    if (hook && *hook)
        rp.interval = g_ascii_strtod(hook, NULL);
    rp.last = rp.t0;
    vf_check_files_progress(t, opt_quick, jobs, r, opt_no_progress ? NULL : files_progress,
                            &rp);
    vf_check_fp8(t, r);
    coh_result *coh = NULL;
    int report_failed = 0;
    if (opt_coherence) {
        double t0 = qm_monotonic();
        coh_opts co = {.text_path = ref_text, .prompts_path = prompts, .source = opt_source,
                       .max_ppl = opt_max_ppl, .mask = opt_mask, .keep_experts = opt_keep,
                       .n_threads = jobs,
                       .n_new = opt_gen_tokens > 0 ? opt_gen_tokens : 0,
                       .progress = opt_no_progress ? NULL : coherence_progress,
                       .progress_user = &t0};
        vf_check_coherence(t, &co, r, &coh);
        if (opt_report && coh && verify_write_report(opt_report, out, &co, coh, &err) != 0) {
            qm_report(prog, err);
            g_clear_error(&err);
            report_failed = 1;
        } else if (opt_report && !coh) {
            fprintf(stderr, "%s: --report: no report: the coherence gate did not run\n", prog);
            report_failed = 1;
        }
    }
    if (opt_json) {
        cJSON *j = vf_result_to_json(r, out);
        if (opt_coherence)
            cJSON_AddItemToObject(j, "coherence",
                                  coh ? coh_result_to_json(coh) : cJSON_CreateNull());
        if (opt_report && !report_failed) {
            char *p = g_build_filename(opt_report, "index.html", NULL);
            cJSON_AddStringToObject(j, "report", p);
            g_free(p);
        }
        qm_json_out(j, 1);
    } else {
        print_text(r, out, opt_quick, coh);
        if (opt_report && !report_failed)
            printf("report: %s/index.html\n", opt_report);
    }
    /* a report that was asked for and not written is an I/O error */
    int code = report_failed ? 2 : vf_exit_code(r);
    coh_result_free(coh);
    g_free(ref_text);
    g_free(prompts);
    g_free(opt_text);
    g_free(opt_prompts);
    g_free(opt_mask);
    g_free(opt_keep);
    g_free(opt_report);
    vf_target_close(t);
    vf_result_free(r);
    g_free(opt_source);
    return code;
}
