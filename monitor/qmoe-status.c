/* qmoe-status - how far an extraction is, and whether its job is alive.
 *
 *   qmoe-status [--watch[=SECS]] [--json] OUT
 *
 * Exit: 0 complete (every expected file present), 1 incomplete (running,
 * stopped, failed, crashed or never finished), 2 error (no such directory,
 * not an extraction directory, bad usage).
 *
 * Sources (monitor/status.h): one readdir of experts/, layers/, other/ and
 * OUT; .qmoe/progress.json and lock (or one per .qmoe/shard-I-of-N); the
 * journals for bytes and rate; the expected set from qmoe.json "expected",
 * else the planned counts of progress.json with the layer grid from
 * config.json (its model_type through the layout table), else the largest
 * layer and expert numbers among the names in experts/ ("scan").
 *
 * States: running (job alive), finished, failed, stopped (by a signal;
 * resumable), crashed (progress.json says running but its pid is gone, or
 * a lock whose pid is gone), none (no progress.json: files scanned only).
 * With shards, the whole is running if any part runs, else crashed, failed,
 * stopped, none, finished in that order.
 *
 * --json fields (stable; null where unknown):
 *   out                 the directory as given
 *   time                ISO time of the snapshot
 *   state               running|finished|failed|stopped|crashed|none
 *   pid                 pid of the (running) job, or null
 *   complete            true when every expected file is present
 *   expected_from       manifest|progress|config|scan: where the expected set came from
 *   partial             a --layers/--experts selection
 *   selected_layers, selected_experts   LIST strings of the selection, or null
 *   experts_done        expected expert files present
 *   experts_expected    expert files expected
 *   experts_unexpected  expert files present outside the expected set
 *   percent             100 * experts_done / experts_expected, one decimal
 *   layers_complete, layers_expected    layers with all their experts / with any expected
 *   num_layers, num_experts             size of the grid (num_layers without the
 *                                       MTP block's rows, which follow it)
 *   mtp_layers          layers of a DeepSeek-V3 MTP block (0 when none)
 *   mtp_experts_done, mtp_experts_expected, mtp_layers_complete,
 *   mtp_layers_expected of the counts above, the MTP block's
 *   other_done          non-expert files present (layers/, globals, other/)
 *   other_expected      non-expert files expected, or null
 *   bytes_done, bytes_planned           bytes written (journal sizes) / planned
 *   rate_files_per_s, rate_bytes_per_s  over the last rate_window_s seconds
 *                                       (up to 60) of journal times
 *   eta_s               seconds left at that rate (running jobs only)
 *   elapsed_s           since the job started (to its last update when ended)
 *   started_unix, updated_unix
 *   last_error          the newest job's last error, or null
 *   log                 path of the extraction log, or null
 *   in_flight           [{path, pid, alive, tmp}] files being written
 *   stale_tmp           [{path, pid, alive, tmp}] temporaries of dead writers
 *   layers              [{layer, done, expected, complete, in_flight, mtp}]
 *                       (layers with nothing expected and nothing present omitted)
 *   jobs                [{dir, shard, shards, state, pid, stale_lock,
 *                         files_done, files_planned, experts_done, experts_planned,
 *                         bytes_done, bytes_planned, started_unix, updated_unix,
 *                         current, last_error, log}] the main job or each shard
 *   journal_records, journal_bad_lines
 *   snapshot_ms         time taken by the snapshot
 */
#include "status.h"
#include "base/util.h"
#include "cli/cli.h"

#include <errno.h>
#include <langinfo.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

static const char *PROG = "qmoe-status";

static gboolean opt_json, opt_version;
static double opt_watch = -1; /* seconds; < 0 = no watch */

static gboolean parse_watch(const char *name, const char *value, gpointer data,
                            GError **err)
{
    (void)name;
    (void)data;
    if (!value) {
        opt_watch = 1;
        return TRUE;
    }
    char *end;
    double v = g_ascii_strtod(value, &end);
    if (*end || end == value || !(v >= 0.05 && v <= 86400)) {
        g_set_error(err, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "--watch: '%s' is not a number of seconds in [0.05, 86400]", value);
        return FALSE;
    }
    opt_watch = v;
    return TRUE;
}

static GOptionEntry entries[] = {
    {"watch", 'w', G_OPTION_FLAG_OPTIONAL_ARG, G_OPTION_ARG_CALLBACK, parse_watch,
     "Redraw every SECS seconds (default 1) until the job ends; q or Ctrl-C quits",
     "SECS"},
    {"json", 0, 0, G_OPTION_ARG_NONE, &opt_json,
     "Print the snapshot as JSON (with --watch: one document per interval)", NULL},
    {"version", 0, 0, G_OPTION_ARG_NONE, &opt_version, "Print the version", NULL},
    {NULL, 0, 0, 0, NULL, NULL, NULL},
};

static const char *SUMMARY =
    "Shows how far an extraction in OUT is: experts done and expected, complete\n"
    "layers, a row per layer, bytes, rate, ETA, and whether the job is running,\n"
    "finished, stopped, failed or crashed (stale lock). Works without\n"
    ".qmoe/progress.json by scanning experts/.";
static const char *DESCRIPTION =
    "Exit status: 0 complete, 1 incomplete, 2 error.\n"
    "Colour only on a terminal and never with NO_COLOR set.";

/* ---- terminal ---- */

static volatile sig_atomic_t got_signal, got_winch;
static struct termios saved_tio;
static int tio_saved;
static int drew_tty; /* cursor hidden, to be shown again */

static void restore_terminal(void)
{
    if (tio_saved) {
        tcsetattr(STDIN_FILENO, TCSANOW, &saved_tio);
        tio_saved = 0;
    }
    if (drew_tty) {
        fputs("\033[?25h", stdout); /* show the cursor */
        fflush(stdout);
        drew_tty = 0;
    }
}

static void on_signal(int sig)
{
    if (sig == SIGWINCH)
        got_winch = 1;
    else
        got_signal = sig;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    /* no SA_RESTART: poll() must return so that the loop sees the flag */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    sigaction(SIGWINCH, &sa, NULL);
}

/* Non-canonical, no echo: single keys (q) arrive without Enter. ISIG stays
 * on so Ctrl-C is a signal, handled by the loop. */
static void raw_input(void)
{
    if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_tio) != 0)
        return;
    struct termios t = saved_tio;
    t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
    t.c_cc[VMIN] = 0;
    t.c_cc[VTIME] = 0;
    if (tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0)
        tio_saved = 1;
}

static void term_size(int *w, int *h)
{
    struct winsize ws;
    *w = 80;
    *h = 24;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) {
        *w = ws.ws_col;
        *h = ws.ws_row;
    }
}

/* Waits up to `secs`; returns 1 when the user asked to quit. */
static int wait_input(double secs)
{
    double until = qm_monotonic() + secs;
    for (;;) {
        if (got_signal)
            return 1;
        double left = until - qm_monotonic();
        if (left <= 0 || got_winch)
            return 0;
        struct pollfd pf = {STDIN_FILENO, POLLIN, 0};
        int n = poll(&pf, tio_saved ? 1 : 0, (int)(left * 1000) + 1);
        if (n > 0 && (pf.revents & POLLIN)) {
            char c[16];
            ssize_t r = read(STDIN_FILENO, c, sizeof c);
            for (ssize_t i = 0; i < r; i++)
                if (c[i] == 'q' || c[i] == 'Q')
                    return 1;
            if (r == 0) /* input closed: stop polling it */
                tio_saved = 0;
        }
    }
}

static int job_ended(const qs_snap *s)
{
    const char *st = s->state;
    return !strcmp(st, "finished") || !strcmp(st, "failed") || !strcmp(st, "stopped") ||
           !strcmp(st, "crashed") || (!strcmp(st, "none") && s->complete);
}

static int exit_for(const qs_snap *s)
{
    return s->complete ? 0 : 1;
}

static void print_snapshot(const qs_snap *s, int tty, int utf8, int color)
{
    if (opt_json) {
        char *j = qs_render_json(s, 1);
        fputs(j, stdout);
        g_free(j);
        return;
    }
    qs_style y = {color, utf8, 80, 0, tty};
    if (tty) {
        int h;
        term_size(&y.width, &h);
    }
    char *t = qs_render_text(s, &y);
    fputs(t, stdout);
    g_free(t);
}

static int watch(const char *out, int tty, int utf8, int color)
{
    install_signals();
    atexit(restore_terminal);
    int redraw = tty && !opt_json;
    if (redraw) {
        raw_input();
        fputs("\033[?25l\033[H\033[2J", stdout); /* hide cursor, clear once */
        drew_tty = 1;
    }
    int rc = 2, quit = 0;
    qs_snap *s = NULL;
    for (;;) {
        GError *err = NULL;
        qs_snap_free(s);
        s = qs_snap_take(out, &err);
        if (!s) {
            restore_terminal();
            qm_report(PROG, err);
            g_error_free(err);
            return 2;
        }
        int ended = job_ended(s);
        rc = exit_for(s);
        if (redraw) {
            qs_style y = {color, utf8, 80, 24, 1};
            term_size(&y.width, &y.height);
            y.height -= 1; /* the footer */
            char *t = qs_render_text(s, &y);
            /* home, each line erased to its end, the rest of the screen
             * cleared: no scrolling and no flicker */
            GString *g = g_string_new("\033[H");
            for (char *p = t; *p;) {
                char *nl = strchr(p, '\n');
                size_t n = nl ? (size_t)(nl - p) : strlen(p);
                g_string_append_len(g, p, (gssize)n);
                g_string_append(g, "\033[K\n");
                p += n + (nl ? 1 : 0);
            }
            g_string_append_printf(g, "%s%s  every %gs%s\033[K\033[J",
                                   color ? "\033[2m" : "",
                                   ended ? "job ended" : "q or Ctrl-C quits", opt_watch,
                                   color ? "\033[0m" : "");
            fputs(g->str, stdout);
            g_string_free(g, TRUE);
            g_free(t);
        } else if (opt_json) {
            char *j = qs_render_json(s, 0); /* one document per line */
            fputs(j, stdout);
            g_free(j);
        } else {
            char *l = qs_render_line(s);
            puts(l);
            g_free(l);
        }
        fflush(stdout);
        got_winch = 0;
        if (ended)
            break;
        if (wait_input(opt_watch)) {
            quit = 1;
            break;
        }
    }
    restore_terminal();
    /* the final summary */
    if (redraw) {
        fputs("\n", stdout);
        char *l = qs_render_line(s);
        printf("%s\n", l);
        g_free(l);
    } else if (!opt_json) {
        printf("%s\n", quit ? "watch stopped; last snapshot:" : "job ended; final snapshot:");
        print_snapshot(s, 0, utf8, 0);
    }
    fflush(stdout);
    qs_snap_free(s);
    return rc;
}

int main(int argc, char **argv)
{
    setlocale(LC_ALL, "");
    GOptionContext *ctx = g_option_context_new("OUT");
    g_option_context_set_summary(ctx, SUMMARY);
    g_option_context_set_description(ctx, DESCRIPTION);
    g_option_context_add_main_entries(ctx, entries, NULL);
    /* GLib would take the word after a bare --watch as its value, so
     * "--watch OUT" would eat OUT: the interval is given only as --watch=SECS */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--"))
            break;
        if (!strcmp(argv[i], "--watch") || !strcmp(argv[i], "-w"))
            argv[i] = (char *)"--watch=1";
    }
    GError *err = NULL;
    if (qm_options_parse(ctx, &argc, &argv, NULL, &err)) {
        qm_usage_error(PROG, "%s", err->message);
        g_error_free(err);
        g_option_context_free(ctx);
        return 2;
    }
    g_option_context_free(ctx);
    if (opt_version) {
        printf("%s %s\n", PROG, QMOE_VERSION);
        return 0;
    }
    if (argc != 2) {
        qm_usage_error(PROG, "%s", argc < 2 ? "missing OUT" : "too many arguments");
        return 2;
    }
    const char *out = argv[1];
    int tty = isatty(STDOUT_FILENO);
    const char *term = getenv("TERM");
    const char *nc = getenv("NO_COLOR");
    int color = tty && !(nc && *nc) && !(term && !strcmp(term, "dumb"));
    const char *cs = nl_langinfo(CODESET);
    int utf8 = cs && (!g_ascii_strcasecmp(cs, "UTF-8") || !g_ascii_strcasecmp(cs, "utf8"));

    if (opt_watch > 0) {
        int rc = watch(out, tty, utf8, color);
        return rc;
    }
    qs_snap *s = qs_snap_take(out, &err);
    if (!s) {
        qm_report(PROG, err);
        g_error_free(err);
        return 2;
    }
    print_snapshot(s, tty, utf8, color);
    int rc = exit_for(s);
    qs_snap_free(s);
    return rc;
}
