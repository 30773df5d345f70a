/* fuzz_safetensors - libFuzzer target for the safetensors reader.
 *
 * The input is a whole file image. st_parse must accept it or return an
 * error, never read outside it; when it accepts, every tensor's bytes must
 * lie inside the image (touched here so that ASan would notice). The
 * header-only parser runs on the same bytes, once with the true size and
 * once with the image cut in half, as st_open_header sees a short read.
 */
#include "format/safetensors.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned touch(const st_file *f)
{
    unsigned sum = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        if (st_find(f, t->name) != t)
            abort(); /* by_name must agree with the array */
        const uint8_t *p = st_data(f, t);
        if (p && t->end > t->begin)
            sum += p[0] + p[t->end - t->begin - 1];
        char buf[160];
        st_shape_str(t->shape, t->ndim, buf, sizeof buf);
    }
    for (int i = 0; f->meta_keys && f->meta_keys[i]; i++)
        if (!st_meta(f, f->meta_keys[i]))
            abort();
    return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private copy: a parser that writes to its input would show up */
    uint8_t *img = malloc(size ? size : 1);
    memcpy(img, data, size);
    GError *err = NULL;
    st_file *f = st_parse("fuzz.safetensors", img, size, &err);
    if (f) {
        volatile unsigned s = touch(f);
        (void)s;
        st_close(f);
    } else {
        if (!err || !err->message[0])
            abort(); /* every failure explains itself */
        g_clear_error(&err);
    }
    f = st_parse_header("fuzz.safetensors", img, size, size, &err);
    if (f)
        st_close(f);
    g_clear_error(&err);
    f = st_parse_header("fuzz.safetensors", img, size / 2, size, &err);
    if (f)
        st_close(f);
    g_clear_error(&err);
    free(img);
    return 0;
}
