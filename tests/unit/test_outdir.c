/* test_outdir.c - the one verdict, the source identity diff,
 * the gap listing, the MTP block's wording, the owner liveness and the view
 * of OUT (common/outdir/outdir.c, source.c, progress.c, view.c). */
#include "base/util.h"
#include "outdir/manifest.h"
#include "outdir/outdir.h"
#include "outdir/progress.h"
#include "outdir/view.h"
#include "testhelp.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Every state the verdict distinguishes, in its order of precedence. */
static void test_verdict(void)
{
    od_facts done = {.experts_expected = 48, .experts_present = 48,
                     .others_expected = 4, .others_present = 4,
                     .has_job_record = 1, .has_manifest = 1, .manifest_complete = 1};
    CHECK(od_complete(&done) == OD_COMPLETE);
    od_facts f = done;
    f.live_writer = 1;
    f.mixed = 1;
    CHECK(od_complete(&f) == OD_RUNNING);
    f = done;
    f.mixed = 1;
    CHECK(od_complete(&f) == OD_MIXED);
    f = done;
    f.source_gap = 1;
    CHECK(od_complete(&f) == OD_SOURCE_GAP);
    f = done;
    f.has_manifest = f.manifest_complete = 0;
    CHECK(od_complete(&f) == OD_NO_MANIFEST);
    f.has_job_record = 0; /* files only: the counts decide */
    CHECK(od_complete(&f) == OD_COMPLETE);
    f.experts_present = 47;
    CHECK(od_complete(&f) == OD_MISSING);
    f = done;
    f.manifest_complete = 0;
    CHECK(od_complete(&f) == OD_NOT_FINISHED);
    f = done;
    f.others_present = 3;
    CHECK(od_complete(&f) == OD_MISSING);
    f = done;
    f.unexpected = 1;
    CHECK(od_complete(&f) == OD_UNEXPECTED);
    od_facts none = {.others_expected = -1};
    CHECK(od_complete(&none) == OD_NOTHING);
    CHECK(strcmp(od_verdict_name(OD_UNEXPECTED), "unexpected files") == 0);
    CHECK(strcmp(od_verdict_name(OD_NO_MANIFEST), "qmoe.json not written") == 0);
}

static cJSON *ident(const char *size2, const char *hdr2, double mtime2)
{
    char *text = g_strdup_printf(
        "{\"id\":\"x\",\"files\":[{\"name\":\"a.safetensors\",\"size\":10,\"mtime\":1.5,"
        "\"header_sha256\":\"aa\",\"sample_sha256\":\"s\"},{\"name\":\"b.safetensors\","
        "\"size\":%s,\"mtime\":%.6f,\"header_sha256\":\"%s\",\"sample_sha256\":\"s\"}]}",
        size2, mtime2, hdr2);
    cJSON *j = cJSON_Parse(text);
    g_free(text);
    return j;
}

static void test_source_diff(void)
{
    cJSON *a = ident("20", "bb", 1764197000.25), *b = ident("20", "bb", 1764197000.25);
    CHECK(od_source_diff(a, b) == NULL);
    cJSON_Delete(b);
    b = ident("21", "bb", 1764197000.25);
    char *d = od_source_diff(a, b);
    CHECK_CONTAINS(d, "'b.safetensors': size 20 then, 21 now");
    g_free(d);
    cJSON_Delete(b);
    b = ident("20", "cc", 1764197000.25);
    d = od_source_diff(a, b);
    CHECK_CONTAINS(d, "'b.safetensors': its header differs");
    g_free(d);
    cJSON_Delete(b);
    b = ident("20", "bb", 1764197001.25);
    d = od_source_diff(a, b);
    CHECK_CONTAINS(d, "'b.safetensors': modified since");
    CHECK(d && strncmp(d, "'b", 2) == 0); /* no leading separator */
    g_free(d);
    cJSON_Delete(b);
    cJSON_Delete(a);
}

/* An identity from JSON text (the lists as od_source_identity writes them). */
static cJSON *parsed(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    CHECK(j != NULL);
    return j;
}

#define SHARD(n, h) "{\"name\":\"" n "\",\"size\":10,\"mtime\":1.5," \
                    "\"header_sha256\":\"" h "\",\"sample_sha256\":\"s\"}"

/* A download that went on: shards unread or missing then, read now, extend
 * the record under then's id; a shard read then must be the same now. */
static void test_source_merge(void)
{
    cJSON *then = parsed("{\"id\":\"aaaa\",\"path\":\"src\",\"files\":[" SHARD("m1", "h1")
                         "],\"unread\":[\"m2\"],\"missing\":[{\"name\":\"m3\","
                         "\"why\":\"a symlink to 'blob', which does not exist\"}]}");
    cJSON *now = parsed("{\"id\":\"bbbb\",\"path\":\"src2\",\"files\":[" SHARD("m2", "h2")
                        "," SHARD("m3", "h3") "],\"unread\":[\"m1\"]}");
    char *diff = NULL;
    cJSON *m = od_source_merge(then, now, &diff);
    CHECK(m && !diff);
    CHECK(strcmp(od_source_id(m), "aaaa") == 0);
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(m, "files");
    CHECK(cJSON_GetArraySize(files) == 3); /* m1 kept from then, m2 and m3 now */
    CHECK(strcmp(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(files, 0), "name")->valuestring, "m1") == 0);
    CHECK(strcmp(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(files, 2), "name")->valuestring, "m3") == 0);
    CHECK(!cJSON_GetObjectItemCaseSensitive(m, "unread") && !cJSON_GetObjectItemCaseSensitive(m, "missing"));
    /* merging the merged record with itself changes nothing */
    char *d2 = od_source_diff(m, m);
    CHECK(d2 == NULL);
    cJSON_Delete(m);
    cJSON_Delete(now);
    /* m1 read then, missing now (not needed by this run): its record stays */
    now = parsed("{\"id\":\"bbbb\",\"files\":[],\"unread\":[\"m2\",\"m3\"],\"missing\":"
                 "[{\"name\":\"m1\",\"why\":\"No such file or directory\"}]}");
    m = od_source_merge(then, now, &diff);
    CHECK(m && !diff);
    files = cJSON_GetObjectItemCaseSensitive(m, "files");
    CHECK(cJSON_GetArraySize(files) == 1 &&
          !strcmp(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(files, 0), "header_sha256")->valuestring, "h1"));
    CHECK(!cJSON_GetObjectItemCaseSensitive(m, "missing"));
    cJSON_Delete(m);
    cJSON_Delete(now);
    /* read then, gone from the directory and the index: another source */
    now = parsed("{\"id\":\"bbbb\",\"files\":[],\"unread\":[\"m2\",\"m3\"]}");
    m = od_source_merge(then, now, &diff);
    CHECK(!m);
    CHECK_CONTAINS(diff, "'m1' was read then and is absent now");
    g_free(diff);
    cJSON_Delete(now);
    /* m1 changed; a shard the index did not list then; one it no longer lists */
    now = parsed("{\"id\":\"bbbb\",\"files\":[" SHARD("m1", "hX") "," SHARD("m4", "h4")
                 "],\"unread\":[\"m2\"]}");
    m = od_source_merge(then, now, &diff);
    CHECK(!m);
    CHECK_CONTAINS(diff, "'m1': its header differs");
    CHECK_CONTAINS(diff, "'m4' is new");
    CHECK_CONTAINS(diff, "'m3' is no longer in the index");
    g_free(diff);
    cJSON_Delete(now);
    cJSON_Delete(then);
}

static void test_gap(void)
{
    /* a plan of 4 MoE layers x 8 experts whose source holds experts 0-3 of
     * layers 0-2 and all of layer 3 */
    plan p;
    memset(&p, 0, sizeof p);
    p.shape.n_layers = 4;
    p.shape.n_experts = 8;
    uint8_t moe[4] = {1, 1, 1, 1}, lsel[4] = {1, 1, 1, 1};
    uint8_t esel[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    p.shape.is_moe = moe;
    p.layer_sel = lsel;
    p.expert_sel = esel;
    plan_file files[32];
    memset(files, 0, sizeof files);
    for (int l = 0; l < 4; l++)
        for (int e = 0; e < 8; e++)
            if (l == 3 || e < 4)
                files[p.n_files++] = (plan_file){.kind = MF_EXPERT, .layer = l,
                                                 .expert = e};
    p.files = files;
    int n = 0;
    char *g = od_plan_gap(&p, &n);
    CHECK(n == 12);
    CHECK(g && strcmp(g, "layers 0-2: experts 4-7 missing from the source "
                         "(config.json declares 8)") == 0);
    g_free(g);
    lsel[1] = 0; /* not selected: not missing */
    g = od_plan_gap(&p, &n);
    CHECK(n == 8);
    CHECK_CONTAINS(g, "layer 0: experts 4-7 missing");
    CHECK_CONTAINS(g, "\nlayer 2: experts 4-7 missing");
    g_free(g);
    esel[4] = esel[5] = esel[6] = esel[7] = 0;
    CHECK(od_plan_gap(&p, &n) == NULL && n == 0);
}

/* The MTP block's layers follow the decoder's: a gap there is labelled and
 * not merged with the decoder's run, and the breakdown wording. */
static void test_mtp(void)
{
    plan p;
    memset(&p, 0, sizeof p);
    p.shape.n_layers = 4;
    p.shape.n_mtp = 1; /* layer 3 */
    p.shape.n_experts = 8;
    uint8_t moe[4] = {0, 1, 1, 1}, lsel[4] = {1, 1, 1, 1};
    uint8_t esel[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    p.shape.is_moe = moe;
    p.layer_sel = lsel;
    p.expert_sel = esel;
    plan_file files[24];
    memset(files, 0, sizeof files);
    for (int l = 1; l < 4; l++)
        for (int e = 0; e < 4; e++)
            files[p.n_files++] = (plan_file){.kind = MF_EXPERT, .layer = l, .expert = e};
    p.files = files;
    CHECK(!lt_is_mtp(&p.shape, 2) && lt_is_mtp(&p.shape, 3) && lt_decoder_layers(&p.shape) == 3);
    int n = 0;
    char *g = od_plan_gap(&p, &n);
    CHECK(n == 12);
    CHECK(g && strcmp(g, "layers 1-2: experts 4-7 missing from the source (config.json "
                         "declares 8)\nlayer 3 (MTP): experts 4-7 missing from the source "
                         "(config.json declares 8)") == 0);
    g_free(g);
    g = od_plan_mtp_breakdown(&p);
    CHECK(g && strcmp(g, "2 layers x 8 + MTP 1 layer x 8") == 0);
    g_free(g);
    lsel[1] = lsel[2] = 0;
    esel[7] = 0;
    g = od_plan_mtp_breakdown(&p);
    CHECK(g && strcmp(g, "MTP 1 layer x 7") == 0);
    g_free(g);
    lsel[3] = 0; /* no MTP layer selected: nothing to say apart */
    CHECK(od_plan_mtp_breakdown(&p) == NULL);
    CHECK(od_mtp_breakdown(61, 0, 256) == NULL);
    g = od_mtp_breakdown(58, 1, 256);
    CHECK(g && strcmp(g, "58 layers x 256 + MTP 1 layer x 256") == 0);
    g_free(g);
}

static void test_owner(void)
{
    pid_t me = getpid();
    int64_t start = progress_pid_start(me);
    CHECK(start > 0);
    int hb = -1;
    CHECK(progress_owner_alive(NULL, me, 0, 0, &hb) == 1 && hb == 0);
    CHECK(progress_owner_alive(progress_host(), me, start, 0, &hb) == 1);
    CHECK(progress_owner_alive(progress_host(), me, start + 1, 0, &hb) == 0); /* reused */
    CHECK(progress_owner_alive("elsewhere.invalid", me, start, qm_now() - 1, &hb) == 1 &&
          hb == 1);
    CHECK(progress_owner_alive("elsewhere.invalid", me, start, qm_now() - 600, &hb) == 0);
    CHECK(progress_owner_alive("elsewhere.invalid", me, start, 0, &hb) == 0);
}

static void put(const char *dir, const char *rel, const char *text)
{
    char *p = g_build_filename(dir, rel, NULL);
    char *d = g_path_get_dirname(p);
    g_mkdir_with_parents(d, 0755);
    CHECK(g_file_set_contents(p, text, -1, NULL));
    g_free(d);
    g_free(p);
}

/* The view's rules on a hand-made OUT (1 MoE layer x 2 experts, no
 * config): complete = recorded with its size; a layer = all its experts;
 * a stray file is unexpected; records scanned with an escape fall back. */
static void test_view(void)
{
    char *out = g_dir_make_tmp("qmoe-view-XXXXXX", NULL);
    put(out, "qmoe.json", "{\"complete\":true,\"source\":{\"id\":\"s1\"},\"expected\":"
        "{\"num_layers\":1,\"num_experts\":2,\"moe_layers\":\"0\",\"layers\":\"0\","
        "\"experts\":\"0-1\",\"count\":2,\"files\":2},\"files\":[]}");
    put(out, ".qmoe/journal.jsonl",
        "{\"path\":\"experts/expert_00_layer_00.safetensors\",\"kind\":\"expert\","
        "\"layer\":0,\"expert\":0,\"size\":5,\"time\":1,\"source_id\":\"s1\"}\n"
        "{\"path\":\"experts\\/expert_01_layer_00.safetensors\",\"kind\":\"expert\","
        "\"layer\":0,\"expert\":1,\"size\":5,\"time\":2,\"source_id\":\"s1\"}\n");
    put(out, "experts/expert_00_layer_00.safetensors", "12345");
    put(out, "experts/expert_01_layer_00.safetensors", "123"); /* truncated */
    GError *e = NULL;
    od_view *v = od_view_open(out, &e);
    CHECK(v && !e);
    if (!v)
        return;
    CHECK(v->journal_records == 2 && v->journal_bad == 0);
    CHECK(v->experts_expected == 2 && v->experts_present == 2 && v->experts_complete == 1);
    CHECK(!od_view_layer_complete(v, 0, NULL, NULL) && v->layers_complete == 0);
    od_facts f = od_view_facts(v);
    CHECK(od_complete(&f) == OD_MISSING);
    od_view_close(v);
    put(out, "experts/expert_01_layer_00.safetensors", "12345");
    v = od_view_open(out, NULL);
    int done = 0, want = 0;
    CHECK(od_view_layer_complete(v, 0, &done, &want) && done == 2 && want == 2);
    f = od_view_facts(v);
    CHECK(od_complete(&f) == OD_COMPLETE);
    od_view_mark_bad(v, "experts/expert_00_layer_00.safetensors");
    od_view_count(v);
    CHECK(v->experts_complete == 1 && v->layers_complete == 0);
    od_view_close(v);
    put(out, "experts/expert_1_layer_0.safetensors", "12345"); /* another naming */
    v = od_view_open(out, NULL);
    f = od_view_facts(v);
    CHECK(v->unexpected == 1 && od_complete(&f) == OD_UNEXPECTED);
    od_view_close(v);
    char *cmd = g_strdup_printf("rm -rf '%s'", out);
    CHECK(system(cmd) == 0);
    g_free(cmd);
    g_free(out);
}

/* A tiny OUT of two files opened from its qmoe.json (manifest.h,
 * mf_ckpt_describe): no file is read until its data is; then the data is
 * the file's, and a file changed since is refused by name. */
static void test_describe(void)
{
    char *out = g_dir_make_tmp("qmoe-desc-XXXXXX", NULL);
    char *sub = g_build_filename(out, "experts", NULL);
    CHECK(mkdir(sub, 0755) == 0);
    float v[2][4] = {{1, 2, 3, 4}, {5, 6, 7, 8}};
    const char *files[2] = {"experts/e0.safetensors", "g.safetensors"};
    GString *m = g_string_new("{\"tool\":\"qmoe\",\"complete\":true,\"x\":[{\"y\":\"]\"}],"
                              "\"files\":[");
    GString *idx = g_string_new("{\"weight_map\":{");
    for (int i = 0; i < 2; i++) {
        char name[8], *p = g_build_filename(out, files[i], NULL);
        g_snprintf(name, sizeof name, "t%d", i);
        st_entry e = {.name = name, .dtype = ST_F32, .ndim = 1, .shape = {4}, .nbytes = 16};
        const void *data = v[i];
        CHECK(st_write_file(p, &e, 1, &data, NULL, NULL) == 0);
        struct stat sb;
        CHECK(stat(p, &sb) == 0);
        g_string_append_printf(m, "%s{\"path\":\"%s\",\"size\":%lld,\"sha256\":\"\","
                               "\"tensors\":[{\"name\":\"%s\",\"dtype\":\"F32\",\"shape\":[4],"
                               "\"offsets\":[0,16],\"crc32\":1,\"source\":{\"file\":\"a\"}}]}",
                               i ? "," : "", files[i], (long long)sb.st_size, name);
        g_string_append_printf(idx, "%s\"%s\":\"%s\"", i ? "," : "", name, files[i]);
        g_free(p);
    }
    g_string_append(m, "]}");
    g_string_append(idx, "}}");
    char *mp = g_build_filename(out, "qmoe.json", NULL);
    char *ip = g_build_filename(out, "model.safetensors.index.json", NULL);
    char *cp = g_build_filename(out, "config.json", NULL);
    CHECK(g_file_set_contents(mp, m->str, -1, NULL) && g_file_set_contents(ip, idx->str, -1, NULL) &&
          g_file_set_contents(cp, "{}", -1, NULL));
    GError *err = NULL;
    ckpt *ck = ckpt_open(out, &err);
    CHECK(ck && mf_ckpt_describe(ck) == 2);
    /* described, not loaded: st stays NULL until asked for */
    CHECK(ck && !ck->shards[0].st && ck->shards[0].desc);
    const st_tensor *t = ck ? ckpt_tensor(ck, "t0", 0, NULL, &err) : NULL;
    CHECK(t && ck->shards[ckpt_shard_index(ck, "t0")].described && t->end == 16);
    const uint8_t *data = NULL;
    t = ck ? ckpt_tensor(ck, "t1", 1, &data, &err) : NULL;
    CHECK(t && data && memcmp(data, v[1], 16) == 0);
    CHECK(ck && ckpt_shard_confirm(ck, ckpt_shard_index(ck, "t0"), &err) == 0 && !err);
    ckpt_close(ck);
    /* the file changed after qmoe.json: another shape, then another size
     * (longer metadata) */
    char *p0 = g_build_filename(out, files[0], NULL);
    const void *d0 = v[0];
    const char *meta[] = {"padding", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", NULL};
    for (int round = 0; round < 2; round++) {
        st_entry e2 = {.name = "t0", .dtype = ST_F32, .ndim = round ? 1 : 2,
                       .shape = {round ? 4 : 2, 2}, .nbytes = 16};
        CHECK(st_write_file(p0, &e2, 1, &d0, round ? meta : NULL, NULL) == 0);
        ck = ckpt_open(out, &err);
        CHECK(ck && mf_ckpt_describe(ck) == 2);
        g_clear_error(&err);
        t = ck ? ckpt_tensor(ck, "t0", 1, &data, &err) : NULL;
        CHECK(t == NULL);
        CHECK_CONTAINS(err ? err->message : "", "experts/e0.safetensors': the file changed "
                                                "after qmoe.json was written: ");
        if (round)
            CHECK_CONTAINS(err ? err->message : "", "bytes, qmoe.json says");
        g_clear_error(&err);
        CHECK(ck && ckpt_shard_confirm(ck, ckpt_shard_index(ck, "t0"), &err) == -1 && err);
        g_clear_error(&err);
        ckpt_close(ck);
    }
    /* incomplete: nothing described */
    g_string_replace(m, "\"complete\":true", "\"complete\":false", 1);
    CHECK(g_file_set_contents(mp, m->str, -1, NULL));
    ck = ckpt_open(out, &err);
    CHECK(ck && mf_ckpt_describe(ck) == 0);
    ckpt_close(ck);
    char *rm = g_strdup_printf("rm -rf '%s'", out);
    CHECK(system(rm) == 0);
    g_free(rm);
    g_free(p0);
    g_free(mp);
    g_free(ip);
    g_free(cp);
    g_free(sub);
    g_string_free(m, TRUE);
    g_string_free(idx, TRUE);
    g_free(out);
}

int main(void)
{
    RUN(test_verdict);
    RUN(test_source_diff);
    RUN(test_source_merge);
    RUN(test_gap);
    RUN(test_mtp);
    RUN(test_owner);
    RUN(test_view);
    RUN(test_describe);
    TEST_EXIT();
}
