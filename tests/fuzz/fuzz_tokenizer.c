/* fuzz_tokenizer - libFuzzer target for the tokenizer.json loader.
 *
 * The input is a tokenizer.json text. tok_from_json must load it or
 * return an error naming the problem; a loaded tokenizer must encode a few
 * fixed strings (added tokens, spaces, digits, non-ASCII), decode its own
 * output and every id up to the vocabulary size without reading outside
 * its tables.
 */
#include "text/tokenizer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *texts[] = {
    "Hello, world! 123 4567", " <|im_start|>user\nhi<|im_end|>  \n\n",
    "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80", "a", "",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    GError *err = NULL;
    tok_t *tok = tok_from_json((const char *)data, size, "fuzz.json", &err);
    if (!tok) {
        if (!err || !err->message[0])
            abort();
        g_clear_error(&err);
        return 0;
    }
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        g_array_set_size(ids, 0);
        if (tok_encode(tok, texts[i], strlen(texts[i]), i & 1 ? TOK_PLAIN : 0, ids,
                       &err) == 0) {
            char *s = tok_decode(tok, (const int32_t *)(void *)ids->data, ids->len, NULL);
            g_free(s);
        }
        g_clear_error(&err);
    }
    int vs = tok_vocab_size(tok);
    tok_stream_t *st = tok_stream_new(tok);
    for (int32_t id = -1; id <= vs && id < 4096; id++) {
        size_t n;
        (void)tok_token_bytes(tok, id, &n);
        const char *str = tok_token_str(tok, id);
        if (str && tok_token_id(tok, str) < 0)
            abort(); /* a token's own string must find an id */
        (void)tok_is_special(tok, id);
        (void)tok_stream_push(st, id, &n);
    }
    (void)tok_stream_flush(st, NULL);
    tok_stream_free(st);
    g_array_free(ids, TRUE);
    tok_free(tok);
    return 0;
}
