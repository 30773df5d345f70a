/* fuzz_encode - libFuzzer target for the encoder and decoders.
 *
 * A small fixed tokenizer (tests/fixtures/qwen3-tokenizer/tiny, or
 * $QMOE_FUZZ_TOKENIZER) encodes the input as text, with and without added
 * tokens. Invalid UTF-8 must be an error that leaves the ids unchanged;
 * valid text must round-trip: decoding the ids gives the input back
 * (byte-level BPE drops nothing the vocabulary covers, and the fixture's
 * covers all 256 bytes). The input's bytes are also fed as ids to the
 * streaming decoder, whose output must always be valid UTF-8.
 */
#include "text/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifndef FUZZ_TOKENIZER
#define FUZZ_TOKENIZER "tests/fixtures/qwen3-tokenizer/tiny/tokenizer.json"
#endif

static tok_t *tok;
static int full_bytes; /* every byte has a token: decoding is exact */

/* Strict UTF-8 (RFC 3629: no overlong forms, no surrogates, at most
 * U+10FFFF); NUL is a character like any other. Written here, not taken
 * from the tokenizer, so that the two can disagree. */
static int utf8_ok(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            k = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            k = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (i + k > n)
            return 0;
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k;
    }
    return 1;
}

static void setup(void)
{
    const char *path = getenv("QMOE_FUZZ_TOKENIZER");
    GError *err = NULL;
    tok = tok_load(path ? path : FUZZ_TOKENIZER, &err);
    if (!tok) {
        fprintf(stderr, "fuzz_encode: %s\n", err->message);
        abort();
    }
    /* Does the vocabulary hold every single byte? Encode each alone. */
    full_bytes = 1;
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    for (int b = 0; b < 128 && full_bytes; b++) {
        char c = (char)b;
        g_array_set_size(ids, 0);
        if (tok_encode(tok, &c, 1, TOK_PLAIN, ids, &err) || ids->len == 0)
            full_bytes = 0;
        g_clear_error(&err);
    }
    g_array_free(ids, TRUE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tok)
        setup();
    GError *err = NULL;
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    int32_t mark = -7;
    g_array_append_val(ids, mark);
    int valid = utf8_ok(data, size);
    for (unsigned flags = 0; flags <= TOK_PLAIN; flags += TOK_PLAIN) {
        g_array_set_size(ids, 1);
        int rc = tok_encode(tok, (const char *)data, size, flags, ids, &err);
        if (rc != 0) {
            if (valid || ids->len != 1)
                abort(); /* rejected valid text, or changed ids on failure */
            g_clear_error(&err);
            continue;
        }
        if (!valid)
            abort(); /* accepted invalid UTF-8 */
        size_t n = 0;
        char *back = tok_decode(tok, (const int32_t *)(void *)ids->data + 1,
                                ids->len - 1, &n);
        if (full_bytes && (n != size || memcmp(back, data, size) != 0))
            abort(); /* lossy round trip */
        g_free(back);
    }
    /* bytes as ids through the streaming decoder */
    tok_stream_t *st = tok_stream_new(tok);
    GString *all = g_string_new(NULL);
    for (size_t i = 0; i + 1 < size; i += 2) {
        int32_t id = (int32_t)(data[i] | (data[i + 1] << 8)) - 16;
        size_t n;
        const char *s = tok_stream_push(st, id, &n);
        g_string_append_len(all, s, (gssize)n);
    }
    size_t n;
    const char *s = tok_stream_flush(st, &n);
    g_string_append_len(all, s, (gssize)n);
    if (!utf8_ok((const uint8_t *)all->str, all->len))
        abort();
    g_string_free(all, TRUE);
    tok_stream_free(st);
    g_array_free(ids, TRUE);
    return 0;
}
