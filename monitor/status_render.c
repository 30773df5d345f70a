/* status_render.c - the dashboard, the log line and the JSON (status.h) */
#include "status.h"
#include "outdir/outdir.h"
#include "outdir/progress.h"
#include "base/util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define C_RESET "\033[0m"
#define C_BOLD "\033[1m"
#define C_DIM "\033[2m"
#define C_RED "\033[31m"
#define C_GREEN "\033[32m"
#define C_YELLOW "\033[33m"
#define C_CYAN "\033[36m"

char *qs_human_duration(double secs, char *buf, size_t cap)
{
    if (secs < 0 || !isfinite(secs)) {
        snprintf(buf, cap, "-");
        return buf;
    }
    uint64_t t = (uint64_t)(secs + 0.5);
    if (t < 60)
        snprintf(buf, cap, "%us", (unsigned)t);
    else if (t < 3600)
        snprintf(buf, cap, "%um %02us", (unsigned)(t / 60), (unsigned)(t % 60));
    else if (t < 86400 * 2)
        snprintf(buf, cap, "%uh %02um", (unsigned)(t / 3600), (unsigned)(t / 60 % 60));
    else
        snprintf(buf, cap, "%ud %02uh", (unsigned)(t / 86400), (unsigned)(t / 3600 % 24));
    return buf;
}

static double pct(int64_t a, int64_t b)
{
    return b > 0 ? 100.0 * (double)a / (double)b : 0;
}

static const char *state_color(const char *st)
{
    if (!strcmp(st, "finished"))
        return C_GREEN;
    if (!strcmp(st, "running"))
        return C_CYAN;
    if (!strcmp(st, "stopped"))
        return C_YELLOW;
    if (!strcmp(st, "crashed") || !strcmp(st, "failed"))
        return C_RED;
    return "";
}

/* "running (pid 123)", "crashed (pid 123 gone, stale lock)" ... */
static void state_text(GString *g, const char *st, pid_t pid, int stale_lock)
{
    g_string_append(g, st);
    if (!strcmp(st, "running"))
        g_string_append_printf(g, " (pid %ld)", (long)pid);
    else if (!strcmp(st, "crashed"))
        g_string_append_printf(g, " (pid %ld gone%s; resumable)", (long)pid,
                               stale_lock ? ", stale lock" : "");
    else if (!strcmp(st, "stopped"))
        g_string_append(g, " (resumable)");
    else if (!strcmp(st, "none"))
        g_string_append(g, " (no job record: files scanned)");
}

/* Appends `line`, on a terminal cut to `width` visible columns (escape
 * sequences take none, a UTF-8 character takes one), then a reset if colour
 * is on. */
static void emit(GString *out, const char *line, const qs_style *y)
{
    int cols = 0;
    const char *p = line;
    while (*p) {
        if (*p == '\033') {
            const char *q = p + 1;
            if (*q == '[')
                while (*++q && !(*q >= '@' && *q <= '~'))
                    ;
            if (*q)
                q++;
            g_string_append_len(out, p, q - p);
            p = q;
            continue;
        }
        if (y->cut && y->width > 0 && cols >= y->width) {
            if (((unsigned char)*p & 0xC0) == 0x80) { /* finish a character */
                g_string_append_c(out, *p++);
                continue;
            }
            break;
        }
        if (((unsigned char)*p & 0xC0) != 0x80)
            cols++;
        g_string_append_c(out, *p++);
    }
    /* drop a cut-off continuation tail (only reached if width split one) */
    if (y->color)
        g_string_append(out, C_RESET);
    g_string_append_c(out, '\n');
}

static void emitf(GString *out, const qs_style *y, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
static void emitf(GString *out, const qs_style *y, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    emit(out, line, y);
    g_free(line);
}

static int digits(int64_t v)
{
    int d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

/* A bar of `w` cells filled to done/exp, eighths in UTF-8. */
static void bar(GString *g, int done, int exp, int w, const qs_style *y)
{
    static const char *eighth[] = {"", "\u258F", "\u258E", "\u258D", "\u258C",
                                   "\u258B", "\u258A", "\u2589"};
    int units = exp > 0 ? (int)((int64_t)MIN(done, exp) * w * 8 / exp) : 0;
    if (done > 0 && units == 0)
        units = 1; /* something was done: show it */
    int full = units / 8, part = units % 8, cells = 0;
    for (int i = 0; i < full; i++, cells++)
        g_string_append(g, y->utf8 ? "\u2588" : "#");
    if (part && cells < w) {
        g_string_append(g, y->utf8 ? eighth[part] : (part >= 4 ? "+" : "-"));
        cells++;
    }
    if (y->color && cells < w)
        g_string_append(g, C_DIM);
    for (; cells < w; cells++)
        g_string_append(g, y->utf8 ? "\u00B7" : ".");
}

static void layer_cell(GString *g, const qs_snap *s, const qs_layer *L, int lw,
                       int cw, int bw, const qs_style *y)
{
    int complete = L->expected > 0 && L->done >= L->expected;
    const char *col = !y->color ? ""
                      : complete ? C_GREEN
                      : (L->done > 0 || L->in_flight) ? C_YELLOW
                                                        : C_DIM;
    /* M: a layer of the MTP block (the "mtp" line says so) */
    g_string_append_printf(g, "%s%c%0*d %*d/%-*d ", col, qs_is_mtp(s, L->layer) ? 'M' : 'L',
                           lw, L->layer, cw, L->done, cw, L->expected);
    bar(g, L->done, L->expected, bw, y);
    if (y->color)
        g_string_append(g, C_RESET);
    if (complete)
        g_string_append(g, y->utf8 ? "\u2713" : "*");
    else if (L->in_flight)
        g_string_append(g, y->utf8 ? "\u25B8" : ">");
    else
        g_string_append_c(g, ' ');
}

/* The per-layer grid: as many columns as fit with a bar of 5+ cells. */
static int grid_lines(const qs_snap *s, int width, int *cols, int *bw)
{
    int lw = MAX(2, digits(MAX(s->n_layers - 1, 0)));
    int cw = digits(MAX(s->n_experts, 1));
    int fixed = 1 + lw + 1 + cw + 1 + cw + 1 + 1; /* L00 128/128 _ + marker */
    int shown = 0;
    for (int l = 0; l < s->n_layers; l++)
        shown += s->layers[l].expected > 0 || s->layers[l].done > 0;
    int c = 1;
    for (int k = 8; k >= 1; k--)
        if ((width - 2 * (k - 1)) / k - fixed >= 5) {
            c = k;
            break;
        }
    *cols = c;
    *bw = MIN(20, MAX(3, (width - 2 * (c - 1)) / c - fixed));
    return shown ? (shown + c - 1) / c : 0;
}

static void render_grid(GString *out, const qs_snap *s, int width, const qs_style *y)
{
    int cols, bw;
    grid_lines(s, width, &cols, &bw);
    int lw = MAX(2, digits(MAX(s->n_layers - 1, 0)));
    int cw = digits(MAX(s->n_experts, 1));
    GString *line = g_string_new(NULL);
    int k = 0;
    for (int l = 0; l < s->n_layers; l++) {
        const qs_layer *L = &s->layers[l];
        if (L->expected == 0 && L->done == 0)
            continue; /* dense or unselected layer */
        if (k % cols)
            g_string_append(line, "  ");
        layer_cell(line, s, L, lw, cw, bw, y);
        if (++k % cols == 0) {
            emit(out, line->str, y);
            g_string_truncate(line, 0);
        }
    }
    if (line->len)
        emit(out, line->str, y);
    g_string_free(line, TRUE);
}

/* One character per layer, for short terminals. */
static void render_strip(GString *out, const qs_snap *s, int width, const qs_style *y)
{
    static const char *lv[] = {"\u2581", "\u2582", "\u2583", "\u2584",
                               "\u2585", "\u2586", "\u2587"};
    GString *line = g_string_new("layers    ");
    int n = 10;
    for (int l = 0; l < s->n_layers; l++) {
        const qs_layer *L = &s->layers[l];
        if (L->expected == 0 && L->done == 0)
            continue;
        if (n >= width) {
            emit(out, line->str, y);
            g_string_assign(line, "          ");
            n = 10;
        }
        int complete = L->expected > 0 && L->done >= L->expected;
        if (y->color)
            g_string_append(line, complete ? C_GREEN : L->done ? C_YELLOW : C_DIM);
        if (complete)
            g_string_append(line, y->utf8 ? "\u2588" : "#");
        else if (L->done == 0)
            g_string_append(line, y->utf8 ? "\u00B7" : ".");
        else {
            int i = (int)((int64_t)L->done * 7 / MAX(L->expected, 1));
            if (y->utf8)
                g_string_append(line, lv[MIN(i, 6)]);
            else
                g_string_append_c(line, (char)('1' + MIN(8, L->done * 9 / MAX(L->expected, 1))));
        }
        if (y->color)
            g_string_append(line, C_RESET);
        n++;
    }
    emit(out, line->str, y);
    g_string_free(line, TRUE);
}

static void bytes_pair(char *buf, size_t cap, int64_t done, int64_t planned)
{
    char a[32], b[32];
    if (done < 0)
        snprintf(buf, cap, "unknown");
    else if (planned > 0)
        snprintf(buf, cap, "%s / %s (%.1f %%)", qm_human_bytes((uint64_t)done, a, sizeof a),
                 qm_human_bytes((uint64_t)planned, b, sizeof b), pct(done, planned));
    else
        snprintf(buf, cap, "%s", qm_human_bytes((uint64_t)done, a, sizeof a));
}

char *qs_render_text(const qs_snap *s, const qs_style *y)
{
    GString *out = g_string_new(NULL);
    char b1[64], b2[64], b3[128];
    const char *B = y->color ? C_BOLD : "", *R = y->color ? C_RESET : "";
    int width = y->width > 0 ? y->width : 80;

    GString *g = g_string_new(NULL);
    state_text(g, s->state, s->pid, s->n_jobs == 1 && s->jobs[0].stale_lock);
    emitf(out, y, "%s%s%s  %s%s%s%s", B, "qmoe-status", R, y->color ? state_color(s->state) : "",
          g->str, R, s->complete ? "  complete" : "");
    emitf(out, y, "dir       %s", s->out);
    if (!s->complete && s->why && strcmp(s->why, "running") != 0)
        emitf(out, y, "%sincomplete%s %s", y->color ? C_YELLOW : "", R, s->why);
    /* whose job, and how its liveness was judged (progress.h) */
    for (int i = 0; i < s->n_jobs && i < 16; i++) {
        const qs_job *j = &s->jobs[i];
        if (!j->host || (strcmp(j->state, "running") && strcmp(j->state, "crashed")))
            continue;
        char part[48] = "";
        if (s->sharded)
            snprintf(part, sizeof part, " (part %d/%d)", j->shard, j->shards);
        if (j->remote)
            emitf(out, y, "owner     pid %ld on %s%s: another host, judged by its "
                  "heartbeat (%.0f s ago, stale after %.0f s)", (long)j->pid, j->host,
                  part, j->heartbeat_age, PROGRESS_HEARTBEAT_STALE);
        else
            emitf(out, y, "owner     pid %ld on %s%s: this host, judged by kill() and "
                  "the process start time", (long)j->pid, j->host, part);
    }
    if (s->source_gap) {
        char **lines = g_strsplit(s->source_gap, "\n", -1);
        for (int i = 0; lines[i]; i++)
            emitf(out, y, "%sgap%s       %s", y->color ? C_YELLOW : "", R, lines[i]);
        g_strfreev(lines);
    }
    emitf(out, y, "experts   %s%" G_GINT64_FORMAT "/%" G_GINT64_FORMAT " (%.1f %%)%s   layers %d/%d complete%s",
          B, s->experts_done - s->unexpected, s->experts_expected,
          pct(s->experts_done - s->unexpected, s->experts_expected), R,
          s->layers_complete, s->layers_expected,
          !strcmp(s->expected_from, "scan") ? "  (expected set guessed from names)" : "");
    if (s->mtp_layers_expected > 0) {
        /* the MTP block's experts, counted apart (layout.h) */
        int ml = s->mtp_layers_expected;
        char *split = od_mtp_breakdown(s->layers_expected - ml, ml,
                                       (int)(s->mtp_experts_expected / ml));
        char which[48];
        if (s->n_mtp > 1)
            snprintf(which, sizeof which, "layers %d-%d", s->mtp_first,
                     s->mtp_first + s->n_mtp - 1);
        else
            snprintf(which, sizeof which, "layer %d", s->mtp_first);
        emitf(out, y, "mtp       %s: %" G_GINT64_FORMAT "/%" G_GINT64_FORMAT
              " experts, %d/%d layer%s complete (multi-token prediction, rows M; "
              "experts in all: %s)", which, s->mtp_experts_done, s->mtp_experts_expected,
              s->mtp_layers_complete, ml, ml > 1 ? "s" : "", split);
        g_free(split);
    }
    if (s->partial)
        emitf(out, y, "selection layers %s, experts %s (partial extraction)",
              s->sel_layers ? s->sel_layers : "?", s->sel_experts ? s->sel_experts : "?");
    if (s->unexpected)
        emitf(out, y, "%sunexpected %" G_GINT64_FORMAT " expert files outside the expected set%s",
              y->color ? C_YELLOW : "", s->unexpected, R);
    if (s->other_expected >= 0)
        emitf(out, y, "other     %" G_GINT64_FORMAT "/%" G_GINT64_FORMAT
              " files (layers/, globals%s)", s->other_done, s->other_expected,
              s->no_other ? "; other/ left out by --no-other" : ", other/");
    else
        emitf(out, y, "other     %" G_GINT64_FORMAT " files (layers/, globals, other/)",
              s->other_done);
    bytes_pair(b3, sizeof b3, s->bytes_done, s->bytes_planned);
    emitf(out, y, "bytes     %s", b3);
    if (s->rate_files >= 0) {
        GString *r = g_string_new(NULL);
        g_string_append_printf(r, "rate      %.1f files/s, %s/s over %s", s->rate_files,
                               qm_human_bytes((uint64_t)s->rate_bytes, b1, sizeof b1),
                               qs_human_duration(s->rate_window, b2, sizeof b2));
        if (s->eta >= 0)
            g_string_append_printf(r, "   ETA %s", qs_human_duration(s->eta, b1, sizeof b1));
        emit(out, r->str, y);
        g_string_free(r, TRUE);
    } else {
        emitf(out, y, "rate      -");
    }
    if (s->elapsed >= 0) {
        char *iso = qm_iso_time(s->started);
        emitf(out, y, "elapsed   %s (started %s)", qs_human_duration(s->elapsed, b1, sizeof b1),
              iso);
        g_free(iso);
    }
    int max_flight = y->height > 0 ? 3 : 8;
    for (int i = 0; i < s->n_flight && i < max_flight; i++)
        emitf(out, y, "%s%s (pid %ld)", i ? "          " : "writing   ", s->flight[i].path,
              (long)s->flight[i].pid);
    if (s->n_flight > max_flight)
        emitf(out, y, "          ... and %d more", s->n_flight - max_flight);
    if (s->n_stale_tmp)
        emitf(out, y, "%sleftover  %d temporaries of dead writers (pid %ld...), e.g. %s.tmp.%ld%s",
              y->color ? C_YELLOW : "", s->n_stale_tmp, (long)s->stale_tmp[0].pid,
              s->stale_tmp[0].path, (long)s->stale_tmp[0].pid, R);
    if (s->last_error)
        emitf(out, y, "%serror     %s%s", y->color ? C_RED : "", s->last_error, R);
    if (s->log)
        emitf(out, y, "log       %s/%s", s->out, s->log);
    if (s->sharded) {
        for (int i = 0; i < s->n_jobs; i++) {
            const qs_job *j = &s->jobs[i];
            g_string_truncate(g, 0);
            state_text(g, j->state, j->pid, j->stale_lock);
            if (j->present)
                emitf(out, y, "%s%d/%d  %s%s%s  experts %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT
                      "  files %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT,
                      i ? "          " : "shards    ", j->shard, j->shards,
                      y->color ? state_color(j->state) : "", g->str, R, j->experts_done,
                      j->experts_planned, j->files_done, j->files_planned);
            else
                emitf(out, y, "%s%d/%d  not started", i ? "          " : "shards    ",
                      j->shard, j->shards);
        }
    }
    g_string_free(g, TRUE);

    /* the layers: a grid when it fits, else one character per layer */
    int used = 0;
    for (const char *p = out->str; *p; p++)
        used += *p == '\n';
    int cols, bw;
    int rows = grid_lines(s, width, &cols, &bw);
    if (rows > 0) {
        if (y->height <= 0 || used + rows <= y->height)
            render_grid(out, s, width, y);
        else if (used + 1 <= y->height)
            render_strip(out, s, width, y);
    }
    return g_string_free(out, FALSE);
}

char *qs_render_line(const qs_snap *s)
{
    GString *g = g_string_new(NULL);
    char *iso = qm_iso_time(s->now), b1[32], b2[32];
    g_string_append_printf(g, "%s %s", iso, s->state);
    g_free(iso);
    if (!strcmp(s->state, "running") || !strcmp(s->state, "crashed"))
        g_string_append_printf(g, " pid %ld", (long)s->pid);
    g_string_append_printf(g, " experts %" G_GINT64_FORMAT "/%" G_GINT64_FORMAT " %.1f%%"
                           " layers %d/%d other %" G_GINT64_FORMAT,
                           s->experts_done - s->unexpected, s->experts_expected,
                           pct(s->experts_done - s->unexpected, s->experts_expected),
                           s->layers_complete, s->layers_expected, s->other_done);
    if (s->other_expected >= 0)
        g_string_append_printf(g, "/%" G_GINT64_FORMAT, s->other_expected);
    if (s->mtp_layers_expected > 0) /* of the experts above: the MTP block's */
        g_string_append_printf(g, " (MTP experts %" G_GINT64_FORMAT "/%" G_GINT64_FORMAT ")",
                               s->mtp_experts_done, s->mtp_experts_expected);
    if (s->bytes_done >= 0) {
        g_string_append_printf(g, " bytes %s", qm_human_bytes((uint64_t)s->bytes_done, b1, sizeof b1));
        if (s->bytes_planned > 0)
            g_string_append_printf(g, "/%s", qm_human_bytes((uint64_t)s->bytes_planned, b2, sizeof b2));
    }
    if (s->rate_files >= 0)
        g_string_append_printf(g, " rate %.1f files/s %s/s", s->rate_files,
                               qm_human_bytes((uint64_t)s->rate_bytes, b1, sizeof b1));
    if (s->eta >= 0)
        g_string_append_printf(g, " eta %s", qs_human_duration(s->eta, b1, sizeof b1));
    if (s->complete)
        g_string_append(g, " complete");
    return g_string_free(g, FALSE);
}

static void add_num_or_null(cJSON *o, const char *k, double v, int known)
{
    if (known)
        cJSON_AddNumberToObject(o, k, v);
    else
        cJSON_AddNullToObject(o, k);
}

static void add_str_or_null(cJSON *o, const char *k, const char *v)
{
    if (v)
        cJSON_AddStringToObject(o, k, v);
    else
        cJSON_AddNullToObject(o, k);
}

static cJSON *flight_json(const qs_flight *f, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "path", f[i].path);
        cJSON_AddNumberToObject(o, "pid", f[i].pid);
        cJSON_AddBoolToObject(o, "alive", f[i].alive);
        cJSON_AddBoolToObject(o, "tmp", f[i].has_tmp);
        cJSON_AddItemToArray(a, o);
    }
    return a;
}

static double round3(double v)
{
    return round(v * 1000) / 1000;
}

char *qs_render_json(const qs_snap *s, int pretty)
{
    cJSON *j = cJSON_CreateObject();
    char *iso = qm_iso_time(s->now);
    cJSON_AddStringToObject(j, "out", s->out);
    cJSON_AddStringToObject(j, "time", iso);
    g_free(iso);
    cJSON_AddStringToObject(j, "state", s->state);
    add_num_or_null(j, "pid", s->pid, s->pid > 0);
    cJSON_AddBoolToObject(j, "complete", s->complete);
    add_str_or_null(j, "incomplete_reason", s->why);
    add_str_or_null(j, "missing_from_source", s->source_gap);
    cJSON_AddStringToObject(j, "expected_from", s->expected_from);
    cJSON_AddBoolToObject(j, "partial", s->partial);
    add_str_or_null(j, "selected_layers", s->sel_layers);
    add_str_or_null(j, "selected_experts", s->sel_experts);
    cJSON_AddNumberToObject(j, "experts_done", (double)(s->experts_done - s->unexpected));
    cJSON_AddNumberToObject(j, "experts_expected", (double)s->experts_expected);
    cJSON_AddNumberToObject(j, "experts_unexpected", (double)s->unexpected);
    cJSON_AddNumberToObject(j, "percent",
                            round(pct(s->experts_done - s->unexpected, s->experts_expected) * 10) / 10);
    cJSON_AddNumberToObject(j, "layers_complete", s->layers_complete);
    cJSON_AddNumberToObject(j, "layers_expected", s->layers_expected);
    /* num_layers: the decoder's, as in qmoe.json; the MTP block's follow */
    cJSON_AddNumberToObject(j, "num_layers", s->n_mtp ? s->mtp_first : s->n_layers);
    cJSON_AddNumberToObject(j, "mtp_layers", s->n_mtp);
    cJSON_AddNumberToObject(j, "mtp_experts_done", (double)s->mtp_experts_done);
    cJSON_AddNumberToObject(j, "mtp_experts_expected", (double)s->mtp_experts_expected);
    cJSON_AddNumberToObject(j, "mtp_layers_complete", s->mtp_layers_complete);
    cJSON_AddNumberToObject(j, "mtp_layers_expected", s->mtp_layers_expected);
    cJSON_AddNumberToObject(j, "num_experts", s->n_experts);
    cJSON_AddNumberToObject(j, "other_done", (double)s->other_done);
    add_num_or_null(j, "other_expected", (double)s->other_expected, s->other_expected >= 0);
    add_num_or_null(j, "bytes_done", (double)s->bytes_done, s->bytes_done >= 0);
    add_num_or_null(j, "bytes_planned", (double)s->bytes_planned, s->bytes_planned >= 0);
    add_num_or_null(j, "rate_files_per_s", round3(s->rate_files), s->rate_files >= 0);
    add_num_or_null(j, "rate_bytes_per_s", round(s->rate_bytes), s->rate_bytes >= 0);
    add_num_or_null(j, "rate_window_s", round3(s->rate_window), s->rate_files >= 0);
    add_num_or_null(j, "eta_s", round(s->eta), s->eta >= 0);
    add_num_or_null(j, "elapsed_s", round3(s->elapsed), s->elapsed >= 0);
    add_num_or_null(j, "started_unix", s->started, s->started > 0);
    add_num_or_null(j, "updated_unix", s->updated, s->updated > 0);
    add_str_or_null(j, "last_error", s->last_error);
    char *log = s->log ? g_build_filename(s->out, s->log, NULL) : NULL;
    add_str_or_null(j, "log", log);
    g_free(log);
    cJSON_AddItemToObject(j, "in_flight", flight_json(s->flight, s->n_flight));
    cJSON_AddItemToObject(j, "stale_tmp", flight_json(s->stale_tmp, s->n_stale_tmp));
    cJSON *ls = cJSON_AddArrayToObject(j, "layers");
    for (int l = 0; l < s->n_layers; l++) {
        const qs_layer *L = &s->layers[l];
        if (L->expected == 0 && L->done == 0)
            continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "layer", L->layer);
        cJSON_AddNumberToObject(o, "done", L->done);
        cJSON_AddNumberToObject(o, "expected", L->expected);
        cJSON_AddBoolToObject(o, "complete", L->expected > 0 && L->done >= L->expected);
        cJSON_AddNumberToObject(o, "in_flight", L->in_flight);
        cJSON_AddBoolToObject(o, "mtp", qs_is_mtp(s, L->layer));
        cJSON_AddItemToArray(ls, o);
    }
    cJSON *jobs = cJSON_AddArrayToObject(j, "jobs");
    for (int i = 0; i < s->n_jobs; i++) {
        const qs_job *b = &s->jobs[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "dir", b->dir);
        cJSON_AddNumberToObject(o, "shard", b->shard);
        cJSON_AddNumberToObject(o, "shards", b->shards);
        cJSON_AddStringToObject(o, "state", b->state);
        add_num_or_null(o, "pid", b->pid, b->pid > 0);
        cJSON_AddBoolToObject(o, "stale_lock", b->stale_lock);
        add_str_or_null(o, "host", b->host);
        add_str_or_null(o, "liveness", !b->host ? NULL : b->remote ? "heartbeat" : "pid");
        add_num_or_null(o, "heartbeat_age_s", b->heartbeat_age, b->heartbeat_age >= 0);
        add_num_or_null(o, "files_done", (double)b->files_done, b->present);
        add_num_or_null(o, "files_planned", (double)b->files_planned, b->present);
        add_num_or_null(o, "experts_done", (double)b->experts_done, b->present);
        add_num_or_null(o, "experts_planned", (double)b->experts_planned, b->present);
        add_num_or_null(o, "bytes_done", (double)b->bytes_done, b->present);
        add_num_or_null(o, "bytes_planned", (double)b->bytes_planned, b->present);
        add_num_or_null(o, "started_unix", b->started, b->present);
        add_num_or_null(o, "updated_unix", b->updated, b->present);
        cJSON *cur = cJSON_AddArrayToObject(o, "current");
        for (int k = 0; b->current && b->current[k]; k++)
            cJSON_AddItemToArray(cur, cJSON_CreateString(b->current[k]));
        add_str_or_null(o, "last_error", b->last_error);
        add_str_or_null(o, "log", b->log);
        cJSON_AddItemToArray(jobs, o);
    }
    cJSON_AddNumberToObject(j, "journal_records", (double)s->journal_records);
    cJSON_AddNumberToObject(j, "journal_bad_lines", (double)s->journal_bad);
    cJSON_AddNumberToObject(j, "snapshot_ms", round3(s->took_ms));
    char *text = pretty ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    char *res = g_strconcat(text, "\n", NULL);
    cJSON_free(text);
    return res;
}
