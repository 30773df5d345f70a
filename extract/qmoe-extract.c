/* qmoe-extract - split a MoE checkpoint into one file per (layer, expert).
 *
 * Exit codes: 0 all planned files complete, 1 stopped by a signal
 * (resumable), 2 usage or I/O error (bad input, no space, locked OUT).
 */
#include "extract_job.h"
#include "base/fs.h"
#include "base/util.h"
#include "cli/cli.h"
#include "outdir/names.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *prog = "qmoe-extract";

static gchar *opt_layers, *opt_experts, *opt_layout, *opt_shard;
static gint opt_jobs;
static gboolean opt_detach, opt_dry_run, opt_json, opt_version, opt_no_progress;
static gboolean opt_no_reflink, opt_restart, opt_allow_missing, opt_force, opt_no_other;

static GOptionEntry entries[] = {
    {"layers", 0, 0, G_OPTION_ARG_STRING, &opt_layers,
     "Extract only these layers (e.g. 0-7,12)", "LIST"},
    {"experts", 0, 0, G_OPTION_ARG_STRING, &opt_experts,
     "Extract only these experts of each layer", "LIST"},
    {"layout", 0, 0, G_OPTION_ARG_STRING, &opt_layout,
     "Model family (default: detected from config.json and tensor names)", "NAME"},
    {"jobs", 'j', 0, G_OPTION_ARG_INT, &opt_jobs,
     "Worker threads (default: twice the CPUs, so that one file's fsync overlaps another's hashing)", "N"},
    {"shard", 0, 0, G_OPTION_ARG_STRING, &opt_shard,
     "Write only part I of N (0 <= I < N) so that N processes can share OUT", "I/N"},
    {"detach", 0, 0, G_OPTION_ARG_NONE, &opt_detach,
     "Run in the background; print the pid and the log path", NULL},
    {"dry-run", 0, 0, G_OPTION_ARG_NONE, &opt_dry_run,
     "Print the plan (layout, counts, bytes) and write nothing", NULL},
    {"json", 0, 0, G_OPTION_ARG_NONE, &opt_json,
     "Machine-readable summary on stdout", NULL},
    {"no-progress", 0, 0, G_OPTION_ARG_NONE, &opt_no_progress,
     "No progress bar even on a terminal", NULL},
    {"no-reflink", 0, 0, G_OPTION_ARG_NONE, &opt_no_reflink,
     "Always copy the bytes, even where blocks could be shared with SRC", NULL},
    {"restart", 0, 0, G_OPTION_ARG_NONE, &opt_restart,
     "Empty OUT of qmoe's files first and start over (another or a changed source)", NULL},
    {"allow-missing", 0, 0, G_OPTION_ARG_NONE, &opt_allow_missing,
     "Extract a source that lacks experts its config declares; qmoe.json records the gap", NULL},
    {"no-other", 0, 0, G_OPTION_ARG_NONE, &opt_no_other,
     "Leave out other/ (the tensors outside the text model: talker, audio, vision, ...); globals stay", NULL},
    {"force", 0, 0, G_OPTION_ARG_NONE, &opt_force,
     "Write even when OUT's filesystem has less free space than the bytes still to write", NULL},
    {"version", 0, 0, G_OPTION_ARG_NONE, &opt_version, "Print the version", NULL},
    {NULL, 0, 0, 0, NULL, NULL, NULL},
};

static const char *description =
    "SRC is a checkpoint directory (config.json with model.safetensors.index.json\n"
    "and its shards, or model.safetensors) or one .safetensors file. OUT receives\n"
    "experts/expert_EEE_layer_LL.safetensors, layers/layer_LL.safetensors,\n"
    "globals.safetensors, other/*.safetensors, model.safetensors.index.json,\n"
    "qmoe.json and .qmoe/ (lock, progress.json, journal.jsonl, extract.log).\n"
    "\n"
    "A rerun resumes: complete files are kept, the rest is redone. SIGINT or\n"
    "SIGTERM stops cleanly (files in flight are discarded). A rerun with another\n"
    "source, or with the source changed since, refuses (exit 2) unless --restart.\n"
    "A source lacking experts its config declares is refused (exit 2, listed per\n"
    "layer) unless --allow-missing. --detach checks all this and takes the lock\n"
    "before it returns. Before writing, the bytes still to write (less what\n"
    "reflinks share) are compared with OUT's free space: too little is refused\n"
    "(exit 2) unless --force.\n"
    "\n"
    "When SRC and OUT are on one filesystem with reflinks (XFS reflink=1, btrfs),\n"
    "the files share SRC's data blocks instead of copying them; their headers are\n"
    "then padded to line the data up with SRC's blocks (valid safetensors, other\n"
    "bytes than a plain copy; --no-reflink gives the plain copy everywhere).\n"
    "\n"
    "Exit status: 0 all planned files complete, 1 stopped by a signal,\n"
    "2 usage or I/O error.";

static int parse_shard(const char *s, int *i, int *n)
{
    char *end;
    long a = strtol(s, &end, 10);
    if (end == s || *end != '/')
        return -1;
    const char *q = end + 1;
    long b = strtol(q, &end, 10);
    if (end == q || *end || b < 1 || b > 100000 || a < 0 || a >= b)
        return -1;
    *i = (int)a;
    *n = (int)b;
    return 0;
}

/* Forks a background job whose output goes to OUT/.qmoe/extract.log: called
 * by the job once SRC is planned and checked and the lock is taken (the
 * child inherits the lock). The parent prints the pid and exits 0; the
 * child returns 0 and goes on. */
static int detach(void *arg, GError **err)
{
    const char *out = arg;
    char *qdir = g_build_filename(out, OD_STATE, NULL);
    char *log = g_build_filename(out, OD_LOG, NULL);
    int rc = fs_mkdir_out(out, qdir, err);
    if (rc == 0) {
        int fd = fs_open_out(log, O_WRONLY | O_APPEND | O_CREAT, "cannot open log", err);
        if (fd < 0) {
            rc = -1;
        } else {
            fflush(NULL);
            pid_t pid = fork();
            if (pid < 0) {
                rc = qm_set_errno(err, errno, "cannot fork for", out);
            } else if (pid > 0) {
                printf("extracting in the background: pid %ld\nlog: %s\n"
                       "watch: qmoe-status --watch %s\n", (long)pid, log, out);
                fflush(stdout);
                _exit(0); /* the lock, fds and files are the child's now */
            } else {
                setsid();
                int nul = open("/dev/null", O_RDONLY);
                dup2(nul, 0);
                dup2(fd, 1);
                dup2(fd, 2);
                if (nul > 2)
                    close(nul);
            }
            close(fd);
        }
    }
    g_free(qdir);
    g_free(log);
    return rc;
}

int main(int argc, char **argv)
{
    GError *err = NULL;
    GOptionContext *ctx = g_option_context_new("SRC OUT");
    g_option_context_set_summary(ctx, "Split a Mixture-of-Experts checkpoint into one "
                                      "safetensors file per (layer, expert).");
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
    if (argc != 3) {
        qm_usage_error(prog, "expected SRC and OUT");
        return 2;
    }
    ex_opts o = {.src = argv[1], .out = argv[2], .layout = opt_layout,
                 .layers = opt_layers, .experts = opt_experts, .shard = 0,
                 .shards = 1};
    o.jobs = opt_jobs > 0 ? opt_jobs : 2 * (int)g_get_num_processors();
    if (o.jobs > 64)
        o.jobs = 64;
    if (opt_shard && parse_shard(opt_shard, &o.shard, &o.shards)) {
        fprintf(stderr, "%s: --shard '%s': expected I/N with 0 <= I < N\n", prog,
                opt_shard);
        return 2;
    }
    const char *thr = getenv("QMOE_THROTTLE_MS");
    o.throttle_ms = thr ? atoi(thr) : 0;
    o.progress_bar = !opt_json && !opt_detach && !opt_no_progress && isatty(2);
    o.no_reflink = opt_no_reflink;
    o.force = opt_force;
    o.no_other = opt_no_other;

    o.allow_missing = opt_allow_missing;
    if (opt_dry_run) {
        int rc = ex_dry_run(&o, opt_json, &err) ? qm_exit_code(err) : 0;
        qm_report(prog, err);
        g_clear_error(&err);
        return rc;
    }
    o.allow_missing = opt_allow_missing;
    o.restart = opt_restart;
    if (opt_detach) {
        o.before_write = detach;
        o.before_write_arg = (void *)o.out;
    }
    ex_install_signals();
    ex_result res;
    int rc = ex_run(&o, &res, &err);
    if (opt_json) {
        printf("{\"state\":\"%s\",\"layout\":\"%s\",\"files_planned\":%llu,"
               "\"files_done\":%llu,\"files_skipped\":%llu,\"experts_planned\":%llu,"
               "\"experts_done\":%llu,\"bytes_planned\":%llu,\"bytes_done\":%llu,"
               "\"bytes_shared\":%llu,\"complete\":%s,\"seconds\":%.3f}\n",
               rc == 0 ? "finished" : err && err->code == QM_ERR_STOPPED ? "stopped"
                                                                         : "failed",
               res.layout ? res.layout : "", (unsigned long long)res.files_planned,
               (unsigned long long)res.files_done, (unsigned long long)res.files_skipped,
               (unsigned long long)res.experts_planned,
               (unsigned long long)res.experts_done,
               (unsigned long long)res.bytes_planned,
               (unsigned long long)res.bytes_written,
               (unsigned long long)res.bytes_shared, res.complete ? "true" : "false",
               res.seconds);
    } else if (rc == 0) {
        char b[32];
        double mb = res.seconds > 0 ? (double)(res.bytes_written) / 1e6 / res.seconds : 0;
        char sh[64] = "", b2[32];
        if (res.bytes_shared)
            snprintf(sh, sizeof sh, ", %s of it shared with the source (reflink)",
                     qm_human_bytes(res.bytes_shared, b2, sizeof b2));
        printf("%s: %llu/%llu files complete (%llu expert%s%s%s), %s in %.2f s (%.0f MB/s)%s%s\n",
               prog, (unsigned long long)res.files_done,
               (unsigned long long)res.files_planned,
               (unsigned long long)res.experts_done, res.experts_done == 1 ? "" : "s",
               res.experts_split && o.shards <= 1 ? ": " : "",
               res.experts_split && o.shards <= 1 ? res.experts_split : "",
               qm_human_bytes(res.bytes_written, b, sizeof b), res.seconds, mb,
               sh, res.files_skipped ? " (resumed)" : "");
    }
    if (rc) {
        qm_report(prog, err);
        rc = qm_exit_code(err);
        g_error_free(err);
    }
    ex_result_clear(&res);
    return rc;
}
