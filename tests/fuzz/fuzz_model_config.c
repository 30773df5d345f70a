/* fuzz_model_config - libFuzzer target for the forward pass's reading of
 * config.json: the input is a config.json placed beside the fixture's
 * weights (tests/fixtures/qwen3moe-tiny/qwen3moe, or $QMOE_FUZZ_MODEL,
 * linked into a temporary directory). model_load must refuse any config
 * that disagrees with the tensors or asks for absurd sizes; one it accepts
 * must run a forward step (finite or not, but within its buffers).
 */
#include "model/model.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifndef FUZZ_MODEL
#define FUZZ_MODEL "tests/fixtures/qwen3moe-tiny/qwen3moe"
#endif

static char *dir, *cfg_path;

static void setup(void)
{
    const char *src = getenv("QMOE_FUZZ_MODEL");
    src = src ? src : FUZZ_MODEL;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : g_get_tmp_dir();
    char *tmpl = g_build_filename(base, "qmoe-fuzz-model.XXXXXX", NULL);
    dir = g_mkdtemp(tmpl);
    GDir *d = dir ? g_dir_open(src, 0, NULL) : NULL;
    if (!d)
        abort();
    const char *n;
    while ((n = g_dir_read_name(d))) {
        if (!strcmp(n, "config.json"))
            continue;
        char *from = g_build_filename(src, n, NULL);
        char *abs = g_canonicalize_filename(from, NULL);
        char *to = g_build_filename(dir, n, NULL);
        if (symlink(abs, to) != 0)
            abort();
        g_free(from);
        g_free(abs);
        g_free(to);
    }
    g_dir_close(d);
    cfg_path = g_build_filename(dir, "config.json", NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir)
        setup();
    FILE *fp = fopen(cfg_path, "wb");
    if (!fp || fwrite(data, 1, size, fp) != size || fclose(fp) != 0)
        abort();
    GError *err = NULL;
    model_opts o = {.n_threads = 1, .cache_bytes = 1 << 20, .max_seq = 8};
    model *m = model_load(dir, &o, &err);
    if (!m) {
        if (!err || !err->message[0])
            abort();
        g_clear_error(&err);
        return 0;
    }
    const model_config *c = model_get_config(m);
    float *logits = g_new(float, c->vocab);
    for (int t = 0; t < 2; t++)
        if (model_step(m, t % c->vocab, logits, &err)) {
            g_clear_error(&err);
            break;
        }
    g_free(logits);
    model_free(m);
    return 0;
}
