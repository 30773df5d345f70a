/* qmoe-verify - prove an extraction complete and intact.
 *
 * The checks live in common/verify.{h,c}; this file parses options, runs
 * them in order (coverage, then per-file checks) and presents the result:
 * one line per problem, a summary, or the same facts as JSON.
 */
#include "util.h"
#include "verify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *prog = "qmoe-verify";

static gboolean opt_quick, opt_json, opt_version;
static char *opt_source;
static int opt_expect = -1, opt_jobs;

static GOptionEntry entries[] = {
    {"quick", 0, 0, G_OPTION_ARG_NONE, &opt_quick,
     "Presence, sizes and headers only; read no tensor data", NULL},
    {"source", 0, 0, G_OPTION_ARG_FILENAME, &opt_source,
     "Also compare every tensor byte for byte with the source checkpoint SRC", "SRC"},
    {"expect", 0, 0, G_OPTION_ARG_INT, &opt_expect,
     "Expect N expert files (e.g. the full count for a partial extraction)", "N"},
    {"jobs", 'j', 0, G_OPTION_ARG_INT, &opt_jobs,
     "Files checked in parallel (default: the number of CPUs)", "N"},
    {"json", 0, 0, G_OPTION_ARG_NONE, &opt_json,
     "Print the result as JSON on stdout", NULL},
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
    "             shapes fit config.json. --quick skips reading the data.\n"
    "  source     with --source SRC: every tensor is byte-identical to the\n"
    "             source checkpoint's, and for a full extraction every source\n"
    "             tensor is present in OUT.\n"
    "\n"
    "--expect N: N expert files must be present. When N is the model's full\n"
    "count (MoE layers x experts in config.json), every expert is expected and\n"
    "the missing ones are listed, which checks a partial extraction against\n"
    "the whole model; otherwise only the count is compared.\n"
    "\n"
    "Output: one line per problem, 'PHASE: FILE: tensor 'NAME': at offset N:\n"
    "WHAT', then a summary; --json prints the same facts as one object.\n"
    "\n"
    "Exit status:\n"
    "  0  complete and intact\n"
    "  1  a check failed (missing, unexpected, corrupt, mismatched, incomplete,\n"
    "     or an extraction still running)\n"
    "  2  usage error, OUT (or SRC) missing or unreadable, or a file in OUT\n"
    "     that could not be read (the verdict is unknown)\n";

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

static void print_text(const vf_result *r, const char *out, int quick)
{
    for (guint i = 0; i < r->problems->len; i++)
        print_problem(r->problems->pdata[i]);
    for (guint i = 0; i < r->notes->len; i++)
        printf("note: %s\n", (char *)r->notes->pdata[i]);
    printf("%s\n", out);
    printf("  experts: %d/%d%s\n", r->experts_present, r->experts_expected,
           r->expect_override ? " (--expect)" : "");
    printf("  layers complete: %d/%d\n", r->layers_complete, r->layers_expected);
    printf("  other files: %d/%d\n", r->others_present, r->others_expected);
    char hb[32];
    if (r->hashed)
        printf("  checked: %d files, %s read in %.1f s%s\n", r->files_checked,
               qm_human_bytes(r->bytes_read, hb, sizeof hb), r->seconds,
               r->source_checked ? ", compared with the source" : "");
    else
        printf("  checked: %d files%s\n", r->files_checked,
               quick ? " (--quick: sizes and headers, data not read)" : "");
    if (vf_exit_code(r) == 2)
        printf("ERROR: %u problem%s, some files could not be read\n", r->problems->len,
               r->problems->len == 1 ? "" : "s");
    else if (r->running)
        printf("INCOMPLETE: extraction running (pid %ld)\n", (long)r->pid);
    else if (r->problems->len)
        printf("FAILED: %u problem%s\n", r->problems->len,
               r->problems->len == 1 ? "" : "s");
    else
        printf("OK\n");
}

int main(int argc, char **argv)
{
    GError *err = NULL;
    GOptionContext *ctx = g_option_context_new("OUT");
    g_option_context_set_summary(ctx, summary);
    g_option_context_set_description(ctx, description);
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "%s: %s\n", prog, err->message);
        fprintf(stderr, "Try '%s --help' for more information.\n", prog);
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
        fprintf(stderr, "%s: %s\nTry '%s --help' for more information.\n", prog,
                argc < 2 ? "missing OUT (the extracted directory)"
                         : "too many arguments", prog);
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
            char *text = cJSON_Print(j);
            puts(text);
            cJSON_free(text);
            cJSON_Delete(j);
        }
        g_error_free(err);
        vf_target_close(t);
        vf_result_free(r);
        return code ? code : 2;
    }
    vf_check_coverage(t, r);
    vf_check_files(t, opt_quick, jobs, r);
    if (opt_json) {
        cJSON *j = vf_result_to_json(r, out);
        char *text = cJSON_Print(j);
        puts(text);
        cJSON_free(text);
        cJSON_Delete(j);
    } else {
        print_text(r, out, opt_quick);
    }
    int code = vf_exit_code(r);
    vf_target_close(t);
    vf_result_free(r);
    g_free(opt_source);
    return code;
}
