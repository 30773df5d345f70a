/* tokenizer.h - byte-level BPE tokenizer as Qwen2/Qwen3 (and GPT-2) use it.
 *
 * Loads a Hugging Face tokenizer.json (plain or gzip) or, for a model
 * directory without one, vocab.json + merges.txt (+ tokenizer_config.json
 * for the added tokens). Encoding follows the Hugging Face pipeline:
 *
 *   1. added tokens (<|endoftext|>, <|im_start|>, <think> ...) are matched in
 *      the raw text, leftmost-longest, even mid-word; the text between them
 *      is processed separately by steps 2-5;
 *   2. the normalizer (NFC or none);
 *   3. the pre-tokenizer: the Split regex from the file (Isolated: matches and
 *      the gaps between them are pieces), or GPT-2's regex for a ByteLevel
 *      pre-tokenizer with use_regex; \s and \S follow Oniguruma's Unicode
 *      White_Space (U+0085 is whitespace, U+FEFF and U+180E are not), as the
 *      reference implementation does;
 *   4. each piece's UTF-8 bytes go through the GPT-2 byte-to-unicode map;
 *   5. BPE: repeatedly merge the adjacent pair of lowest merge rank (leftmost
 *      first among equal ranks) until no pair has a rank.
 * No BOS or EOS is added. The vocab.json + merges.txt path uses what
 * transformers' Qwen2Tokenizer uses: NFC and the Qwen2 split regex.
 *
 * Supported in tokenizer.json: model.type BPE (merges as "a b" strings or
 * ["a","b"] pairs, ignore_merges), normalizer null / NFC / Sequence of NFC,
 * pre_tokenizer Split (Regex or String pattern, behavior Isolated),
 * ByteLevel (add_prefix_space, use_regex) or a Sequence of those, added
 * tokens with lstrip/rstrip (single_word and normalized are not looked at:
 * every added token is matched in the raw text, as all of Qwen's are).
 * Anything else is a QM_ERR_FORMAT error naming the file, never a silently
 * different tokenization. Bytes that have no token in a (malformed)
 * vocabulary are dropped, as Hugging Face does without an unk_token.
 *
 * Thread safety: a tok_t caches BPE results and scratch space, so
 * tok_encode() must not run concurrently on one tok_t. The decode functions
 * only read it.
 */
#ifndef QMOE_TOKENIZER_H
#define QMOE_TOKENIZER_H

#include <glib.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tok tok_t;

/* Loads a tokenizer from PATH: a model directory (tokenizer.json, else
 * tokenizer.json.gz, else vocab.json + merges.txt), or a tokenizer.json file,
 * gzip-compressed or not (detected by content). On failure returns NULL and
 * sets *err (QM_ERR_IO: cannot read; QM_ERR_FORMAT: malformed or unsupported)
 * with a message naming the file: "cannot parse 'x/tokenizer.json':
 * model.merges is missing". Free with tok_free(). */
tok_t *tok_load(const char *path, GError **err);

/* Parses tokenizer.json text from memory (NAME is used in messages only). */
tok_t *tok_from_json(const char *json, size_t len, const char *name,
                     GError **err);

/* Frees everything; accepts NULL. */
void tok_free(tok_t *tok);

/* Flags for tok_encode(). */
enum {
    TOK_PLAIN = 1, /* do not match added/special tokens: "<|im_end|>" is text */
};

/* Encodes LEN bytes of UTF-8 TEXT (may contain NUL bytes) and appends the
 * ids to IDS (a GArray of int32_t). Returns 0, or -1 with QM_ERR_FORMAT if
 * TEXT is not valid UTF-8 ("text is not valid UTF-8 at byte N"); IDS is
 * unchanged on failure. */
int tok_encode(tok_t *tok, const char *text, size_t len, unsigned flags,
               GArray *ids, GError **err);

/* Decodes N ids to the bytes they stand for, joined (tokens can hold partial
 * UTF-8 sequences, so the result is only valid UTF-8 when the ids are
 * complete). Added tokens give their text. An id without a token (a model's
 * embedding has more rows than its tokenizer has tokens: Qwen3-Omni 152064
 * rows, 151676 tokens) gives the visible placeholder TOK_GAP_FORMAT,
 * "<|id 152001|>", never nothing. Returns a NUL-terminated g_malloc'ed buffer (caller g_free()s);
 * *LEN_OUT (if not NULL) gets the length without the NUL. Never NULL. */
#define TOK_GAP_FORMAT "<|id %d|>"
char *tok_decode(const tok_t *tok, const int32_t *ids, size_t n,
                 size_t *len_out);

/* The raw bytes of one id (not NUL-terminated; owned by TOK), or NULL for an
 * id outside the vocabulary. */
const uint8_t *tok_token_bytes(const tok_t *tok, int32_t id, size_t *len_out);

/* The id of a token given as it is written in the vocabulary ("<|im_end|>",
 * "Ġthe"), or -1 if there is none. */
int32_t tok_token_id(const tok_t *tok, const char *token);

/* The vocabulary string of an id ("Ġthe", "<|im_end|>"), owned by TOK, or
 * NULL for an id outside the vocabulary. */
const char *tok_token_str(const tok_t *tok, int32_t id);

/* 1 + the largest id (vocabulary and added tokens). Ids below it without a
 * token are possible in a malformed file; tok_token_str() gives NULL. */
int tok_vocab_size(const tok_t *tok);

/* 1 if ID is an added token marked "special" (<|im_end|>, not <think>). */
int tok_is_special(const tok_t *tok, int32_t id);

/* ---- streaming decode, for printing generated text as it comes ----
 *
 * Feed ids one at a time; each call returns the text that became complete.
 * Incomplete UTF-8 sequences at the end are held back until the next id
 * completes them; bytes that cannot be part of valid UTF-8 come out as
 * U+FFFD, so the output is always valid UTF-8. An id without a token comes
 * out as TOK_GAP_FORMAT (after U+FFFD for a prefix it breaks). */
typedef struct tok_stream tok_stream_t;

tok_stream_t *tok_stream_new(const tok_t *tok);
void tok_stream_free(tok_stream_t *s); /* accepts NULL */

/* Returns the newly complete text (NUL-terminated, possibly empty, owned by S
 * and valid until the next call on S); *LEN_OUT (if not NULL) its length. */
const char *tok_stream_push(tok_stream_t *s, int32_t id, size_t *len_out);

/* Returns the held-back bytes as U+FFFD (one per incomplete sequence) and
 * resets S for a new text. */
const char *tok_stream_flush(tok_stream_t *s, size_t *len_out);

#endif
