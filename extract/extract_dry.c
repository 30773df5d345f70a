/* extract_dry.c - qmoe-extract --dry-run: the plan, what OUT already
 * holds, what is left and whether it fits, without writing (see
 * extract_job.h). */
#include "extract_job.h"
#include "extract_prep.h"

#include "base/util.h"
#include "cli/cli.h"
#include "outdir/manifest.h"
#include "outdir/outdir.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* What of this part's plan OUT already holds (files complete as the
 * journals and the files say, of this very source): *todo gets the
 * indices still to write. An OUT that does not exist holds nothing. */
static int dry_done(const ex_opts *o, plan *p, ckpt *ck, int *todo, int *n_todo,
                    int *done_files, uint64_t *done_bytes, GError **err)
{
    uint8_t *done = g_new0(uint8_t, p->n_files > 0 ? p->n_files : 1);
    *n_todo = *done_files = 0;
    *done_bytes = 0;
    struct stat st;
    int rc = 0;
    if (stat(o->out, &st) == 0) {
        cJSON *then = od_source_load(o->out, err), *now = NULL;
        if (then || !(err && *err))
            now = then && od_source_reread(ck, then, err) ? NULL
                                                          : od_source_identity(ck, o->src, err);
        GArray *recs = g_array_new(FALSE, TRUE, sizeof(mf_file));
        if (!now || mf_journals_read_all(o->out, recs, err))
            rc = -1;
        else if (then) {
            /* another source's files are no use: the real run refuses them */
            char *diff = NULL;
            cJSON *merged = od_source_merge(then, now, &diff);
            if (merged)
                od_find_done(p, ck, od_source_id(merged), o->out, recs, done);
            cJSON_Delete(merged);
            g_free(diff);
        }
        mf_files_free(recs);
        cJSON_Delete(then);
        cJSON_Delete(now);
    }
    for (int i = 0; rc == 0 && i < p->n_files; i++) {
        if (p->files[i].part != o->shard)
            continue;
        if (done[i]) {
            (*done_files)++;
            *done_bytes += p->files[i].bytes;
        } else {
            todo[(*n_todo)++] = i;
        }
    }
    g_free(done);
    return rc;
}

int ex_dry_run(const ex_opts *o, int json, GError **err)
{
    const layout *lt;
    plan *p;
    ckpt *ck = ex_open_and_plan(o, &lt, &p, 1, err);
    if (!ck)
        return -1;
    int count[4] = {0};
    uint64_t bytes[4] = {0}, mine = 0;
    int mine_files = 0;
    for (int i = 0; i < p->n_files; i++) {
        count[p->files[i].kind]++;
        bytes[p->files[i].kind] += p->files[i].bytes;
        if (p->files[i].part == o->shard) {
            mine_files++;
            mine += p->files[i].bytes;
        }
    }
    /* what is left, and whether it fits (the real run's space check);
     * whether reflinks will share blocks is guessed without writing: the
     * real run's probe makes a file, and a dry run makes none */
    int *todo = g_new(int, p->n_files > 0 ? p->n_files : 1), n_todo = 0, done_files = 0;
    uint64_t done_bytes = 0;
    uint64_t *bs = g_new0(uint64_t, ck->n_shards);
    ex_space sc = {0};
    int rc = dry_done(o, p, ck, todo, &n_todo, &done_files, &done_bytes, err);
    if (rc == 0)
        rc = ex_space_free(&sc, o->out, err);
    ex_reflink reflink = EX_REFLINK_NO;
    if (rc == 0 && !o->no_reflink)
        reflink = ex_reflink_guess(ck, bs, sc.dir);
    if (rc) {
        g_free(bs);
        g_free(todo);
        ex_space_clear(&sc);
        plan_free(p);
        ckpt_close(ck);
        return -1;
    }
    ex_space_count(&sc, p, todo, n_todo, bs);
    g_free(bs);
    g_free(todo);
    int fits = sc.needed <= sc.avail;
    char *stext = ex_space_text(&sc);
    char *layers = qm_list_format(p->layer_sel, p->shape.n_layers);
    char *experts = qm_list_format(p->expert_sel, p->shape.n_experts);
    if (json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "layout", lt->name);
        /* as in qmoe.json: num_layers the decoder's, the MTP block's apart */
        cJSON_AddNumberToObject(j, "num_layers", lt_decoder_layers(&p->shape));
        cJSON_AddNumberToObject(j, "moe_layers", p->shape.n_moe_layers - p->shape.n_moe_mtp);
        cJSON_AddNumberToObject(j, "num_experts", p->shape.n_experts);
        cJSON_AddStringToObject(j, "layers", layers);
        cJSON_AddStringToObject(j, "experts", experts);
        cJSON_AddNumberToObject(j, "expert_files", count[MF_EXPERT]);
        cJSON_AddNumberToObject(j, "layer_files", count[MF_LAYER]);
        cJSON_AddNumberToObject(j, "globals_files", count[MF_GLOBALS]);
        cJSON_AddNumberToObject(j, "other_files", count[MF_OTHER]);
        cJSON_AddNumberToObject(j, "files", p->n_files);
        cJSON_AddNumberToObject(j, "bytes", (double)p->total_bytes);
        cJSON_AddNumberToObject(j, "expert_bytes", (double)bytes[MF_EXPERT]);
        cJSON_AddNumberToObject(j, "mtp_layers", p->shape.n_mtp);
        cJSON_AddNumberToObject(j, "mtp_moe_layers", p->shape.n_moe_mtp);
        int mtp_files = 0;
        for (int i = 0; i < p->n_files; i++)
            mtp_files += p->files[i].kind == MF_EXPERT &&
                         lt_is_mtp(&p->shape, p->files[i].layer);
        cJSON_AddNumberToObject(j, "mtp_expert_files", mtp_files);
        cJSON_AddNumberToObject(j, "shard", o->shard);
        cJSON_AddNumberToObject(j, "shards", o->shards);
        cJSON_AddNumberToObject(j, "shard_files", mine_files);
        cJSON_AddNumberToObject(j, "shard_bytes", (double)mine);
        cJSON_AddNumberToObject(j, "done_files", done_files);
        cJSON_AddNumberToObject(j, "done_bytes", (double)done_bytes);
        cJSON_AddNumberToObject(j, "todo_files", n_todo);
        cJSON_AddNumberToObject(j, "todo_bytes", (double)sc.to_write);
        cJSON_AddNumberToObject(j, "shared_bytes", (double)sc.shared);
        cJSON_AddNumberToObject(j, "needed_bytes", (double)sc.needed);
        cJSON_AddNumberToObject(j, "available_bytes", (double)sc.avail);
        cJSON_AddStringToObject(j, "filesystem", sc.where);
        cJSON_AddBoolToObject(j, "fits", fits);
        cJSON_AddStringToObject(j, "reflink", ex_reflink_name(reflink));
        int n_gap = 0;
        char *gap = od_plan_gap(p, &n_gap);
        cJSON_AddNumberToObject(j, "missing_from_source_count", n_gap);
        if (gap)
            cJSON_AddStringToObject(j, "missing_from_source", gap);
        else
            cJSON_AddNullToObject(j, "missing_from_source");
        g_free(gap);
        cJSON_AddNumberToObject(j, "blocked_files", p->n_blocked);
        cJSON *ms = cJSON_AddArrayToObject(j, "missing_shards");
        for (int sh = 0; sh < ck->n_shards; sh++) {
            int n = 0;
            uint8_t *lay = g_new0(uint8_t, p->shape.n_layers > 0 ? p->shape.n_layers : 1);
            cJSON *files = cJSON_CreateArray();
            for (int i = 0; i < p->n_blocked; i++)
                if (p->blocked[i].shard == sh) {
                    n++;
                    if (p->blocked[i].layer >= 0 && p->blocked[i].layer < p->shape.n_layers)
                        lay[p->blocked[i].layer] = 1;
                    if (p->blocked[i].kind != MF_EXPERT && p->blocked[i].kind != MF_LAYER)
                        cJSON_AddItemToArray(files, cJSON_CreateString(p->blocked[i].path));
                }
            if (n) {
                cJSON *x = cJSON_CreateObject();
                cJSON_AddStringToObject(x, "name", ck->shards[sh].name);
                cJSON_AddStringToObject(x, "why", ck->shards[sh].missing ? ck->shards[sh].missing : "");
                cJSON_AddNumberToObject(x, "blocked_files", n);
                char *l = qm_list_format(lay, p->shape.n_layers);
                cJSON_AddStringToObject(x, "layers", l);
                g_free(l);
                cJSON_AddItemToObject(x, "other", files);
                cJSON_AddItemToArray(ms, x);
            } else {
                cJSON_Delete(files);
            }
            g_free(lay);
        }
        char *ok = NULL;
        g_free(od_plan_blocked(p, ck, 1, &ok));
        if (p->n_blocked && ok)
            cJSON_AddStringToObject(j, "extractable_layers", ok);
        else if (p->n_blocked)
            cJSON_AddNullToObject(j, "extractable_layers");
        g_free(ok);
        qm_json_out(j, 0);
    } else {
        char b1[32], b2[32];
        printf("layout:   %s\n", lt->name);
        if (p->shape.n_mtp) {
            /* the MTP block's layers follow the decoder's, counted apart */
            char *split = od_plan_mtp_breakdown(p);
            int d = lt_decoder_layers(&p->shape);
            char which[32];
            if (p->shape.n_mtp > 1)
                snprintf(which, sizeof which, "layers %d-%d", d, p->shape.n_layers - 1);
            else
                snprintf(which, sizeof which, "layer %d", d);
            printf("layers:   %s of %d + MTP %d (%d + MTP %d MoE; MTP: %s)\n", layers, d,
                   p->shape.n_mtp, p->shape.n_moe_layers - p->shape.n_moe_mtp,
                   p->shape.n_moe_mtp, which);
            printf("experts:  %s of %d per layer%s%s\n", experts, p->shape.n_experts,
                   split ? ": " : "", split ? split : "");
            g_free(split);
        } else {
            printf("layers:   %s of %d (%d MoE)\n", layers, p->shape.n_layers,
                   p->shape.n_moe_layers);
            printf("experts:  %s of %d per layer\n", experts, p->shape.n_experts);
        }
        printf("files:    %d expert, %d layer, %d globals, %d other (%d in all)\n",
               count[MF_EXPERT], count[MF_LAYER], count[MF_GLOBALS], count[MF_OTHER],
               p->n_files);
        printf("bytes:    %s (experts %s)\n",
               qm_human_bytes(p->total_bytes, b1, sizeof b1),
               qm_human_bytes(bytes[MF_EXPERT], b2, sizeof b2));
        if (o->shards > 1)
            printf("shard:    %d/%d: %d files, %s\n", o->shard, o->shards, mine_files,
                   qm_human_bytes(mine, b1, sizeof b1));
        printf("done:     %d files, %s already complete in '%s'\n", done_files,
               qm_human_bytes(done_bytes, b1, sizeof b1), o->out);
        printf("to write: %d files, %s", n_todo,
               qm_human_bytes(sc.to_write, b1, sizeof b1));
        if (sc.shared)
            printf(" (%s of it shared with the source by reflinks)",
                   qm_human_bytes(sc.shared, b2, sizeof b2));
        else if (reflink == EX_REFLINK_UNKNOWN)
            printf(" (whether reflinks share blocks with the source is known only when "
                   "the run tries; counted as copied)");
        printf("\nspace:    %s: %s\n", stext,
               fits ? "fits" : "too little (the run refuses unless --force)");
        int n_gap = 0;
        char *gap = od_plan_gap(p, &n_gap);
        if (gap) {
            char **lines = g_strsplit(gap, "\n", -1);
            for (int i = 0; lines[i]; i++)
                printf("missing:  %s\n", lines[i]);
            g_strfreev(lines);
        }
        g_free(gap);
        char *ok = NULL, *blocked = od_plan_blocked(p, ck, 0, &ok);
        if (blocked) {
            char **lines = g_strsplit(blocked, "\n", -1);
            for (int i = 0; lines[i]; i++)
                printf("blocked:  %s\n", lines[i]);
            g_strfreev(lines);
            printf("blocked:  %d file%s wait for missing shards (not counted above); the "
                   "run refuses %s", p->n_blocked, p->n_blocked == 1 ? "" : "s",
                   p->n_blocked == 1 ? "it" : "them");
            if (ok)
                printf(": --layers %s%s extracts what the present shards hold", ok,
                       ex_other_blocked(p) ? " --no-other" : "");
            printf("\n");
        }
        g_free(blocked);
        g_free(ok);
    }
    g_free(stext);
    ex_space_clear(&sc);
    g_free(layers);
    g_free(experts);
    plan_free(p);
    ckpt_close(ck);
    return 0;
}
