/* mksample_tok.c - a small byte-level BPE tokenizer in Qwen's Hugging Face format.
 *
 * 256 byte tokens through the GPT-2 byte-to-unicode map (ids in the map's
 * order, as GPT-2 and Qwen number them), a few dozen merges of frequent
 * English pairs, then the added special tokens, as in the real files:
 * NFC normaliser, the Qwen split regex followed by ByteLevel without its own
 * regex, merges written as [left, right] pairs.
 */
#include "mksample.h"

#include <string.h>

/* Merges in rank order; " " stands for a space. Each side is a byte or the
 * result of an earlier merge. */
static const char *const merges[][2] = {
    {" ", "t"}, {" ", "a"}, {"h", "e"}, {"i", "n"}, {"r", "e"}, {"o", "n"},
    {" t", "he"}, {"e", "r"}, {" ", "s"}, {"a", "t"}, {" ", "w"}, {" ", "o"},
    {"e", "n"}, {" ", "c"}, {"i", "t"}, {"i", "s"}, {"a", "n"}, {"o", "r"},
    {"e", "s"}, {" ", "b"}, {"e", "d"}, {" ", "f"}, {"in", "g"}, {" ", "p"},
    {"o", "u"}, {" a", "n"}, {"a", "l"}, {"a", "r"}, {" t", "o"}, {" ", "m"},
    {" o", "f"}, {" ", "in"}, {" ", "d"}, {" ", "h"}, {" an", "d"}, {"i", "c"},
    {"a", "s"}, {"l", "e"}, {" t", "h"}, {"i", "on"}, {"o", "m"}, {"l", "l"},
    {"en", "t"}, {" ", "n"}, {" ", "l"}, {"s", "t"}, {" ", "re"}, {"v", "e"},
    {" ", "e"}, {"r", "o"}, {"l", "y"}, {" b", "e"}, {" ", "g"}, {" ", "T"},
    {"c", "t"}, {" ", "S"}, {"i", "d"}, {"o", "t"}, {" ", "I"}, {"u", "t"},
    {"e", "t"}, {" ", "A"}, {" ", "is"}, {" o", "n"}, {"i", "m"}, {"a", "m"},
    {" w", "as"}, {"o", "w"}, {"\n", "\n"}, {" ", "y"},
};
#define N_MERGES ((int)G_N_ELEMENTS(merges))

static const char *const specials_base[] = {
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
};
/* Qwen3-Omni's tokenizer also has the media markers its config refers to. */
static const char *const specials_omni[] = {
    "<|audio_start|>", "<|audio_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", "<|audio_pad|>",
};

static int is_omni(const ms_opts *o)
{
    return strcmp(o->lt->name, "qwen3_omni_moe") == 0;
}

static int n_specials(const ms_opts *o)
{
    return 3 + (is_omni(o) ? (int)G_N_ELEMENTS(specials_omni) : 0);
}

int ms_tok_min_vocab(const ms_opts *o)
{
    return 256 + n_specials(o);
}

void ms_tok_ids(const ms_opts *o, ms_tok *t)
{
    t->n_special = n_specials(o);
    t->n_merges = MIN(N_MERGES, o->vocab - 256 - t->n_special);
    t->n_bpe = 256 + t->n_merges;
    t->endoftext = t->n_bpe;
    t->im_start = t->n_bpe + 1;
    t->im_end = t->n_bpe + 2;
}

static const char *special_name(int i)
{
    return i < 3 ? specials_base[i] : specials_omni[i - 3];
}

/* GPT-2's map: printable Latin-1 bytes stand for themselves, the other 68
 * bytes for code points 256.. in byte order. bytes[] receives the bytes in
 * id order (printable ones first). */
static void byte_map(gunichar cp[256], int bytes[256])
{
    int n = 0, extra = 0;
    for (int b = 0; b < 256; b++)
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) {
            cp[b] = (gunichar)b;
            bytes[n++] = b;
        }
    for (int b = 0; b < 256; b++)
        if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
            cp[b] = (gunichar)(256 + extra++);
            bytes[n++] = b;
        }
}

/* A plain string in its byte-level spelling; caller frees. */
static char *byte_level(const gunichar cp[256], const char *s)
{
    GString *g = g_string_new(NULL);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        g_string_append_unichar(g, cp[*p]);
    return g_string_free(g, FALSE);
}

cJSON *ms_added_token(int id, const char *content)
{
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "id", id);
    cJSON_AddStringToObject(a, "content", content);
    cJSON_AddBoolToObject(a, "single_word", 0);
    cJSON_AddBoolToObject(a, "lstrip", 0);
    cJSON_AddBoolToObject(a, "rstrip", 0);
    cJSON_AddBoolToObject(a, "normalized", 0);
    cJSON_AddBoolToObject(a, "special", 1);
    return a;
}

cJSON *ms_byte_level_step(void)
{
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "type", "ByteLevel");
    cJSON_AddBoolToObject(b, "add_prefix_space", 0);
    cJSON_AddBoolToObject(b, "trim_offsets", 0);
    cJSON_AddBoolToObject(b, "use_regex", 0);
    return b;
}

/* The frame of a Qwen tokenizer.json as Hugging Face writes it: NFC, the
 * Qwen2 split regex then ByteLevel without its own regex, ByteLevel
 * post-processor and decoder, a BPE model. The caller fills the vocab
 * object, the merges array (pairs) and the added_tokens array. */
cJSON *ms_tokenizer_frame(cJSON **vocab, cJSON **pairs, cJSON **added)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "version", "1.0");
    cJSON_AddNullToObject(j, "truncation");
    cJSON_AddNullToObject(j, "padding");
    *added = cJSON_AddArrayToObject(j, "added_tokens");
    cJSON *norm = cJSON_AddObjectToObject(j, "normalizer");
    cJSON_AddStringToObject(norm, "type", "NFC");
    cJSON *pre = cJSON_AddObjectToObject(j, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "Sequence");
    cJSON *steps = cJSON_AddArrayToObject(pre, "pretokenizers");
    cJSON *split = cJSON_CreateObject();
    cJSON_AddStringToObject(split, "type", "Split");
    cJSON *pat = cJSON_AddObjectToObject(split, "pattern");
    cJSON_AddStringToObject(pat, "Regex", MS_QWEN_SPLIT);
    cJSON_AddStringToObject(split, "behavior", "Isolated");
    cJSON_AddBoolToObject(split, "invert", 0);
    cJSON_AddItemToArray(steps, split);
    cJSON_AddItemToArray(steps, ms_byte_level_step());
    cJSON_AddItemToObject(j, "post_processor", ms_byte_level_step());
    cJSON_AddItemToObject(j, "decoder", ms_byte_level_step());
    cJSON *m = cJSON_AddObjectToObject(j, "model");
    cJSON_AddStringToObject(m, "type", "BPE");
    cJSON_AddNullToObject(m, "dropout");
    cJSON_AddNullToObject(m, "unk_token");
    cJSON_AddStringToObject(m, "continuing_subword_prefix", "");
    cJSON_AddStringToObject(m, "end_of_word_suffix", "");
    cJSON_AddBoolToObject(m, "fuse_unk", 0);
    cJSON_AddBoolToObject(m, "byte_fallback", 0);
    cJSON_AddBoolToObject(m, "ignore_merges", 0);
    *vocab = cJSON_AddObjectToObject(m, "vocab");
    *pairs = cJSON_AddArrayToObject(m, "merges");
    return j;
}

cJSON *ms_tokenizer_json(const ms_opts *o, const ms_tok *t)
{
    (void)o;
    gunichar cp[256];
    int bytes[256];
    byte_map(cp, bytes);

    cJSON *vocab, *mj, *added;
    cJSON *j = ms_tokenizer_frame(&vocab, &mj, &added);
    for (int i = 0; i < t->n_special; i++)
        cJSON_AddItemToArray(added, ms_added_token(t->n_bpe + i, special_name(i)));
    GHashTable *have = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    for (int i = 0; i < 256; i++) {
        GString *g = g_string_new(NULL);
        g_string_append_unichar(g, cp[bytes[i]]);
        char *s = g_string_free(g, FALSE);
        cJSON_AddNumberToObject(vocab, s, i);
        g_hash_table_add(have, s);
    }
    int ok = 1;
    for (int i = 0; i < t->n_merges && ok; i++) {
        char *a = byte_level(cp, merges[i][0]), *b = byte_level(cp, merges[i][1]);
        char *ab = g_strconcat(a, b, NULL);
        ok = g_hash_table_contains(have, a) && g_hash_table_contains(have, b) &&
             !g_hash_table_contains(have, ab);
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemToArray(pair, cJSON_CreateString(a));
        cJSON_AddItemToArray(pair, cJSON_CreateString(b));
        cJSON_AddItemToArray(mj, pair);
        cJSON_AddNumberToObject(vocab, ab, 256 + i);
        g_hash_table_add(have, ab);
        g_free(a);
        g_free(b);
    }
    g_hash_table_destroy(have);
    if (!ok) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

cJSON *ms_tokenizer_config_json(const ms_opts *o, const ms_tok *t)
{
    (void)o;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddBoolToObject(j, "add_bos_token", 0);
    cJSON_AddBoolToObject(j, "add_prefix_space", 0);
    cJSON *dec = cJSON_AddObjectToObject(j, "added_tokens_decoder");
    for (int i = 0; i < t->n_special; i++) {
        char id[16];
        g_snprintf(id, sizeof id, "%d", t->n_bpe + i);
        cJSON *a = ms_added_token(t->n_bpe + i, special_name(i));
        cJSON_DeleteItemFromObjectCaseSensitive(a, "id");
        cJSON_AddItemToObject(dec, id, a);
    }
    cJSON_AddNullToObject(j, "bos_token");
    cJSON_AddStringToObject(j, "chat_template",
        "{%- for message in messages %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}");
    cJSON_AddBoolToObject(j, "clean_up_tokenization_spaces", 0);
    cJSON_AddStringToObject(j, "eos_token", "<|im_end|>");
    cJSON_AddStringToObject(j, "errors", "replace");
    cJSON_AddNumberToObject(j, "model_max_length", 32768);
    cJSON_AddStringToObject(j, "pad_token", "<|endoftext|>");
    cJSON_AddBoolToObject(j, "split_special_tokens", 0);
    cJSON_AddStringToObject(j, "tokenizer_class", "Qwen2Tokenizer");
    cJSON_AddNullToObject(j, "unk_token");
    return j;
}
