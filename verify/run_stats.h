/* run_stats.h - qmoe-run --router-stats: run a domain-labelled corpus and
 * print which experts the router picks for which domain (routerstats.h),
 * optionally writing the router log and an HTML report (report.h). */
#ifndef QMOE_RUN_STATS_H
#define QMOE_RUN_STATS_H

#include <glib.h>

#include "model/expert_store.h"

typedef struct {
    const char *corpus;       /* CORPUS.jsonl */
    const char *model;        /* MODEL */
    const char *mask;         /* --mask-experts LIST or NULL */
    const char *keep_experts; /* --keep-experts PLAN.json or NULL */
    int keep;                 /* --keep N (0: no plan to write) */
    int by;                   /* --by (plan_by) */
    const char *plan_out;     /* --plan-out PLAN.json */
    const char *router_log;   /* --router-log FILE or NULL */
    const char *report;       /* --report DIR or NULL */
    int threads;
    int cache_mb;
    expert_io io;
    int json;
} run_stats_opts;

/* One --router-log line into s (replacing its contents): {"line":N,"pos":...}
 * with line >= 0 (this mode: the corpus line), {"pos":...} without. The one
 * writer of the router log's format, for both of qmoe-run's modes. */
void run_router_log_line(GString *s, int line, int pos, int token, int layer, int k,
                         const int *experts, const float *weights);

/* Returns 0, or -1 with *err set (the caller reports it). */
int run_router_stats(const run_stats_opts *o, GError **err);

#endif
