/* qmoe-pack - write a standard Hugging Face checkpoint from a checkpoint or
 * an extracted OUT: optionally only the experts of a plan, renumbered, or
 * the Qwen3-Omni thinker's text model as a Qwen3MoeForCausalLM.
 *
 * Exit codes: 0 written (or, with --dry-run, planned), 1 stopped by a
 * signal (nothing left behind), 2 usage, bad plan or I/O error.
 */
#include "pack.h"
#include "base/util.h"
#include "cli/cli.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

static const char *prog = "qmoe-pack";

static gchar *opt_as, *opt_plan, *opt_max_shard;
static gint opt_jobs;
static gboolean opt_dry_run, opt_json, opt_no_progress, opt_no_reflink, opt_version;

static GOptionEntry entries[] = {
    {"as", 0, 0, G_OPTION_ARG_STRING, &opt_as,
     "Write the text model as this family: qwen3_moe (the Qwen3-Omni thinker alone)", "NAME"},
    {"keep-experts", 0, 0, G_OPTION_ARG_FILENAME, &opt_plan,
     "Keep only the plan's experts per layer, renumbered in plan order", "PLAN.json"},
    {"dry-run", 0, 0, G_OPTION_ARG_NONE, &opt_dry_run,
     "List the files, tensors (names, shapes, bytes) and space; write nothing", NULL},
    {"jobs", 'j', 0, G_OPTION_ARG_INT, &opt_jobs, "Shards written at once (default 2)", "N"},
    {"max-shard-size", 0, 0, G_OPTION_ARG_STRING, &opt_max_shard,
     "Tensor bytes per shard at most (default 5000000000, as transformers)", "BYTES"},
    {"json", 0, 0, G_OPTION_ARG_NONE, &opt_json, "Machine-readable summary on stdout", NULL},
    {"no-progress", 0, 0, G_OPTION_ARG_NONE, &opt_no_progress,
     "No progress line even on a terminal", NULL},
    {"no-reflink", 0, 0, G_OPTION_ARG_NONE, &opt_no_reflink,
     "Always copy the bytes, even where blocks could be shared with SRC", NULL},
    {"version", 0, 0, G_OPTION_ARG_NONE, &opt_version, "Print the version", NULL},
    {NULL, 0, 0, 0, NULL, NULL, NULL},
};

static const char *description =
    "SRC is a checkpoint directory or an extracted OUT (qmoe-extract). DEST, a new\n"
    "or empty directory, receives model-0000K-of-0000N.safetensors (at most\n"
    "--max-shard-size bytes of tensors each, {\"format\": \"pt\"} metadata),\n"
    "model.safetensors.index.json (weight_map, metadata.total_size), config.json,\n"
    "generation_config.json, the tokenizer files and chat template, and\n"
    "qmoe-pack.json (the plan, the original expert ids, each file's SHA-256).\n"
    "\n"
    "--keep-experts PLAN.json ({\"keep\": {\"LAYER\": [EXPERT, ...], ...}}, e.g. from\n"
    "qmoe-run --router-stats CORPUS --keep N --plan-out PLAN.json) keeps the same\n"
    "number N of experts in every MoE layer, numbered 0..N-1 in plan order; the\n"
    "routers' rows (and DeepSeek's e_score_correction_bias) and stacked experts\n"
    "are sliced to match, the config's expert count becomes N and\n"
    "num_experts_per_tok at most N; every other tensor is copied byte for byte.\n"
    "With group-limited routing (DeepSeek-V3) the plan keeps N/n_group experts of\n"
    "each group, listed group by group. A bad plan is refused before anything is\n"
    "written, naming the entry. DeepSeek-V3's multi-token-prediction block (the\n"
    "layers after num_hidden_layers, used only for speculative decoding) is\n"
    "kept when the plan lists its layers and dropped when it lists none of them,\n"
    "as a plan from router statistics does (the forward pass never routes through\n"
    "it): its tensors are left out and num_nextn_predict_layers becomes 0, which\n"
    "qmoe-pack says on stderr and records in qmoe-pack.json (\"mtp\").\n"
    "\n"
    "--as qwen3_moe (a Qwen3-Omni source) writes the thinker's text model only,\n"
    "under model.* and lm_head.weight, with a Qwen3MoeForCausalLM config made\n"
    "from thinker_config.text_config (M-RoPE fields dropped: on text it is 1-D\n"
    "RoPE). Both options combine.\n"
    "\n"
    "Tensors are streamed a chunk at a time (memory stays bounded whatever\n"
    "their size); where SRC and DEST share a filesystem with reflinks the data\n"
    "blocks are shared, not copied. Every file appears under its name only when\n"
    "complete; a failed or interrupted pack removes what it wrote.\n"
    "\n"
    "Exit status: 0 written (or planned), 1 stopped by a signal, 2 usage, bad\n"
    "plan or I/O error.";

static volatile int stop_int;

static void on_signal(int sig)
{
    (void)sig;
    stop_int = 1;
}

static const char *const mtp_note =
    "the plan does not list the multi-token-prediction block: it is dropped "
    "(num_nextn_predict_layers 0; list its layers in the plan to keep it)";

static void dry_run_text(const pk_job *j, const char *dest, uint64_t need)
{
    char a[32], b[32];
    printf("%s: %s (%s) -> %s%s\n", prog, j->src_path, j->lt->name, dest,
           j->as_qwen3 ? " as qwen3_moe (Qwen3MoeForCausalLM)" : "");
    int moe = 0;
    for (int l = 0; l < j->shape.n_layers; l++)
        moe += j->shape.is_moe[l];
    if (j->plan)
        printf("experts: keep %d of %d in each of %d MoE layers (plan '%s'); "
               "num_experts_per_tok %d -> %d\n", j->n_keep, j->shape.n_experts, moe,
               j->plan_path, j->top_k, j->top_k_out);
    else
        printf("experts: all %d in each of %d MoE layers\n", j->shape.n_experts, moe);
    if (j->drop_mtp)
        printf("%s\n", mtp_note);
    printf("would write %d shard%s, %d tensors of %llu in the source, %s of tensor data; "
           "%s in all\n", j->n_files, j->n_files == 1 ? "" : "s", j->n_tensors,
           (unsigned long long)j->src_tensors, qm_human_bytes(j->total_size, a, sizeof a),
           qm_human_bytes(need, b, sizeof b));
    struct statvfs sv;
    char *dir = g_path_get_dirname(dest);
    const char *where = g_file_test(dest, G_FILE_TEST_IS_DIR) ? dest : dir;
    if (statvfs(where, &sv) == 0)
        printf("space: needs %s; '%s' has %s free (less is needed where reflinks share "
               "blocks with the source)\n", qm_human_bytes(need, a, sizeof a), where,
               qm_human_bytes((uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize, b, sizeof b));
    g_free(dir);
    printf("files:\n");
    for (int i = 0; i < j->n_files; i++)
        printf("  %-40s %10s  %d tensors\n", j->files[i].name,
               qm_human_bytes(j->files[i].data_bytes, a, sizeof a), j->files[i].n);
    for (int i = 0; i < j->n_extra; i++)
        printf("  %-40s %10s\n", j->extra[i].name, qm_human_bytes(j->extra[i].size, a, sizeof a));
    printf("  %-40s %10s\n", "qmoe-pack.json", "(record)");
    printf("tensors:\n");
    for (int i = 0; i < j->n_tensors; i++) {
        const pk_tensor *t = &j->tensors[i];
        char sh[96];
        printf("  %s %s %s %llu", t->name, st_dtype_name(t->dtype),
               st_shape_str(t->shape, t->ndim, sh, sizeof sh), (unsigned long long)t->nbytes);
        if (strcmp(t->name, t->src) != 0 || t->n_ranges > 1)
            printf("  <- %s%s", t->src, t->n_ranges > 1 ? " (sliced)" : "");
        printf("\n");
    }
}

static cJSON *summary_json(const pk_job *j, const char *dest, uint64_t need, int dry,
                           uint64_t shared)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddStringToObject(doc, "state", dry ? "planned" : "finished");
    cJSON_AddStringToObject(doc, "source", j->src_path);
    cJSON_AddStringToObject(doc, "dest", dest);
    cJSON_AddStringToObject(doc, "source_layout", j->lt->name);
    cJSON_AddStringToObject(doc, "model_type", j->as_qwen3 ? "qwen3_moe" :
                            j->ck->model_type ? j->ck->model_type : "");
    cJSON_AddNumberToObject(doc, "experts_before", j->shape.n_experts);
    cJSON_AddNumberToObject(doc, "experts_after", j->n_keep);
    cJSON_AddNumberToObject(doc, "top_k_after", j->top_k_out);
    pk_mtp_json(j, doc);
    cJSON_AddNumberToObject(doc, "tensors", j->n_tensors);
    cJSON_AddNumberToObject(doc, "total_size", (double)j->total_size);
    cJSON_AddNumberToObject(doc, "bytes", (double)need);
    cJSON_AddNumberToObject(doc, "bytes_shared", (double)shared);
    cJSON *files = cJSON_AddArrayToObject(doc, "files");
    for (int i = 0; i < j->n_files; i++) {
        cJSON *f = cJSON_CreateObject();
        cJSON_AddStringToObject(f, "path", j->files[i].name);
        cJSON_AddNumberToObject(f, "tensor_bytes", (double)j->files[i].data_bytes);
        cJSON_AddNumberToObject(f, "tensors", j->files[i].n);
        if (!dry) {
            cJSON_AddNumberToObject(f, "size", (double)j->files[i].size);
            cJSON_AddStringToObject(f, "sha256", j->files[i].sha256);
        }
        cJSON_AddItemToArray(files, f);
    }
    for (int i = 0; i < j->n_extra; i++) {
        cJSON *f = cJSON_CreateObject();
        cJSON_AddStringToObject(f, "path", j->extra[i].name);
        cJSON_AddNumberToObject(f, "size", (double)j->extra[i].size);
        cJSON_AddItemToArray(files, f);
    }
    if (dry) {
        cJSON *ts = cJSON_AddArrayToObject(doc, "tensor_list");
        for (int i = 0; i < j->n_tensors; i++) {
            const pk_tensor *t = &j->tensors[i];
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", t->name);
            cJSON_AddStringToObject(o, "source", t->src);
            cJSON_AddStringToObject(o, "dtype", st_dtype_name(t->dtype));
            cJSON *sh = cJSON_AddArrayToObject(o, "shape");
            for (int d = 0; d < t->ndim; d++)
                cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
            cJSON_AddNumberToObject(o, "bytes", (double)t->nbytes);
            cJSON_AddStringToObject(o, "file", j->files[t->file].name);
            cJSON_AddItemToArray(ts, o);
        }
    }
    return doc;
}

int main(int argc, char **argv)
{
    GError *err = NULL;
    GOptionContext *ctx = g_option_context_new("SRC DEST");
    g_option_context_set_summary(ctx, "Write a standard Hugging Face checkpoint: with fewer "
                                      "experts (an expert plan) or the Qwen3-Omni thinker "
                                      "as Qwen3-MoE.");
    g_option_context_set_description(ctx, description);
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (qm_options_parse(ctx, &argc, &argv, "j", &err)) {
        int rc = qm_usage_error(prog, "%s", err->message);
        g_error_free(err);
        g_option_context_free(ctx);
        return rc;
    }
    g_option_context_free(ctx);
    if (opt_version) {
        printf("%s %s\n", prog, QMOE_VERSION);
        return 0;
    }
    if (argc != 3)
        return qm_usage_error(prog, "expected SRC and DEST");
    pk_opts po = {.plan_path = opt_plan};
    if (opt_as) {
        if (strcmp(opt_as, "qwen3_moe") != 0)
            return qm_usage_error(prog, "--as '%s': the one family it writes is qwen3_moe",
                                  opt_as);
        po.as_qwen3 = 1;
    }
    if (opt_max_shard) {
        char *end;
        unsigned long long v = g_ascii_strtoull(opt_max_shard, &end, 10);
        if (end == opt_max_shard || *end || v < 1)
            return qm_usage_error(prog, "--max-shard-size '%s': expected a number of bytes",
                                  opt_max_shard);
        po.max_shard = v;
    }
    if (opt_jobs < 0 || opt_jobs > 64)
        return qm_usage_error(prog, "-j %d: expected 1 to 64", opt_jobs);
    const char *src = argv[1], *dest = argv[2];
    pk_job *j = pk_job_build(src, &po, &err);
    int rc = 0;
    if (!j)
        goto fail;
    if (j->drop_mtp && !opt_dry_run) /* the dry run lists it on stdout */
        fprintf(stderr, "%s: %s\n", prog, mtp_note);
    uint64_t need = pk_job_bytes(j), shared = 0;
    if (opt_dry_run) {
        if (opt_json)
            qm_json_out(summary_json(j, dest, need, 1, 0), 1);
        else
            dry_run_text(j, dest, need);
        pk_job_free(j);
        return 0;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    pk_write_opts wo = {.jobs = opt_jobs > 0 ? opt_jobs : 2,
                        .progress = !opt_json && !opt_no_progress && isatty(2),
                        .no_reflink = opt_no_reflink, .stop = &stop_int};
    double t0 = qm_monotonic();
    if (pk_job_write(j, dest, &wo, &shared, &err))
        goto fail;
    if (opt_json) {
        qm_json_out(summary_json(j, dest, need, 0, shared), 1);
    } else {
        char a[32], b[32];
        printf("%s: wrote %s: %d shard%s, %d tensors, %s", prog, dest, j->n_files,
               j->n_files == 1 ? "" : "s", j->n_tensors, qm_human_bytes(need, a, sizeof a));
        if (shared)
            printf(" (%s shared with the source by reflink)", qm_human_bytes(shared, b, sizeof b));
        printf(" in %.2f s\n", qm_monotonic() - t0);
    }
    pk_job_free(j);
    return 0;
fail:
    qm_report(prog, err);
    rc = qm_exit_code(err);
    g_error_free(err);
    pk_job_free(j);
    return rc;
}
