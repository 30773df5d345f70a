/* tokenizer.c - byte-level BPE (see tokenizer.h for the pipeline). */
#include "text/tokenizer.h"
#include "base/fs.h"
#include "base/util.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <zlib.h>

#define TOK_MAX_ID (1 << 24)          /* ids above this are a broken file */
#define TOK_MAX_INFLATE (1u << 30)    /* refuse gzip bombs beyond 1 GiB */
#define CACHE_MAX_PIECE 256           /* longer pieces are not cached */
#define CACHE_MAX_ENTRIES 262144      /* then the cache is emptied */

/* The Qwen2 split regex (transformers' Qwen2Tokenizer) and GPT-2's regex
 * (ByteLevel with use_regex). */
static const char QWEN2_REGEX[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
    "\\s+(?!\\S)|\\s+";

/* Oniguruma's \s (Unicode White_Space), as PCRE class members. PCRE2's own
 * \s also matches U+180E, which the reference does not. */
#define WS_CLASS "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}" \
                 "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

typedef struct {
    GRegex *re;       /* NULL: no split at this stage */
    int prefix_space; /* ByteLevel add_prefix_space */
} stage_t;

typedef struct {
    char *text;
    size_t len;
    int32_t id;
    int lstrip, rstrip;
} added_t;

struct tok {
    char *name;               /* file name for messages */
    int n_ids;                /* 1 + largest id */
    const char **str;         /* [n_ids] vocabulary string or NULL */
    const uint8_t **bytes;    /* [n_ids] raw bytes */
    uint32_t *nbytes;         /* [n_ids] */
    uint8_t *flags;           /* [n_ids] FL_* */
    GStringChunk *chunk;      /* storage of str and bytes */
    GHashTable *vocab;        /* model vocabulary string -> id+1 */
    int32_t byte_id[256];     /* id of each single byte, -1 if none */

    /* merges: open addressing on (left << 32 | right) */
    uint64_t *mkey;
    int32_t *mrank, *mnew;
    size_t mcap;
    int ignore_merges;

    added_t *added;
    int n_added;
    uint8_t added_first[256]; /* a byte that starts some added token */

    int nfc;
    stage_t *stages;
    int n_stages;

    /* encode scratch and cache (why encode is not thread-safe) */
    GHashTable *cache;        /* piece key -> ids */
    int32_t *sym, *prev, *next;
    uint64_t *heap;
    size_t scap, hcap;
    GByteArray *keybuf;
};

enum { FL_PRESENT = 1, FL_ADDED = 2, FL_SPECIAL = 4 };

#define MKEY_EMPTY UINT64_MAX

/* ---- GPT-2 byte <-> unicode map ---- */

static uint16_t byte_to_uc[256];
static int16_t uc_to_byte[512]; /* every mapped code point is below 324 */

static void byte_map_init(void)
{
    static gsize done;
    if (!g_once_init_enter(&done))
        return;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        byte_to_uc[b] = (uint16_t)(keep ? b : 256 + n++);
    }
    for (int i = 0; i < 512; i++)
        uc_to_byte[i] = -1;
    for (int b = 0; b < 256; b++)
        uc_to_byte[byte_to_uc[b]] = (int16_t)b;
    g_once_init_leave(&done, 1);
}

/* ---- UTF-8 ---- */

/* Length of the valid UTF-8 character at P (NUL counts as a character), 0 if
 * the AVAIL bytes are a valid but incomplete prefix, -1 if invalid. */
static int utf8_step(const uint8_t *p, size_t avail)
{
    uint8_t c = p[0];
    if (c < 0x80)
        return 1;
    int n;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return -1;
    for (int i = 1; i < n; i++) {
        if ((size_t)i >= avail)
            return 0;
        if (p[i] < lo || p[i] > hi)
            return -1;
        lo = 0x80, hi = 0xBF;
    }
    return n;
}

static int is_unicode_ws(gunichar c)
{
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* ---- errors ---- */

G_GNUC_PRINTF(3, 4)
static void parse_error(GError **err, const char *name, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "cannot parse '%s': %s", name, msg);
    g_free(msg);
}

/* A token for a message: quoted, shortened, control bytes escaped. */
static char *show(const char *s)
{
    GString *g = g_string_new("'");
    for (size_t i = 0; s[i] && i < 40; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            g_string_append_printf(g, "\\x%02x", c);
        else
            g_string_append_c(g, (char)c);
    }
    if (strlen(s) > 40)
        g_string_append(g, "...");
    g_string_append_c(g, '\'');
    return g_string_free(g, FALSE);
}

/* ---- construction ---- */

static tok_t *tok_new(const char *name)
{
    byte_map_init();
    tok_t *t = g_new0(tok_t, 1);
    t->name = g_strdup(name);
    t->chunk = g_string_chunk_new(1 << 20);
    t->vocab = g_hash_table_new(g_str_hash, g_str_equal);
    t->keybuf = g_byte_array_new();
    return t;
}

void tok_free(tok_t *t)
{
    if (!t)
        return;
    g_free(t->name);
    g_free(t->str);
    g_free(t->bytes);
    g_free(t->nbytes);
    g_free(t->flags);
    if (t->chunk)
        g_string_chunk_free(t->chunk);
    if (t->vocab)
        g_hash_table_destroy(t->vocab);
    g_free(t->mkey);
    g_free(t->mrank);
    g_free(t->mnew);
    for (int i = 0; i < t->n_added; i++)
        g_free(t->added[i].text);
    g_free(t->added);
    for (int i = 0; i < t->n_stages; i++)
        if (t->stages[i].re)
            g_regex_unref(t->stages[i].re);
    g_free(t->stages);
    if (t->cache)
        g_hash_table_destroy(t->cache);
    g_free(t->sym);
    g_free(t->prev);
    g_free(t->next);
    g_free(t->heap);
    if (t->keybuf)
        g_byte_array_free(t->keybuf, TRUE);
    g_free(t);
}

/* Replaces \s and \S by Oniguruma's whitespace set (see WS_CLASS). \S inside
 * a character class is left to PCRE (it differs only for U+180E). */
static char *rewrite_ws(const char *pat)
{
    GString *g = g_string_new(NULL);
    int in_class = 0;
    for (size_t i = 0; pat[i]; i++) {
        char c = pat[i];
        if (c == '\\' && pat[i + 1]) {
            char d = pat[++i];
            if (d == 's')
                g_string_append(g, in_class ? WS_CLASS : "[" WS_CLASS "]");
            else if (d == 'S' && !in_class)
                g_string_append(g, "[^" WS_CLASS "]");
            else {
                g_string_append_c(g, '\\');
                g_string_append_c(g, d);
            }
        } else if (c == '[' && !in_class) {
            in_class = 1;
            g_string_append_c(g, c);
            if (pat[i + 1] == '^')
                g_string_append_c(g, pat[++i]);
            if (pat[i + 1] == ']') /* a leading ] is a member */
                g_string_append_c(g, pat[++i]);
        } else if (c == '[' && in_class && pat[i + 1] == ':') {
            const char *end = strstr(pat + i, ":]");
            size_t n = end ? (size_t)(end - (pat + i)) + 2 : strlen(pat + i);
            g_string_append_len(g, pat + i, (gssize)n);
            i += n - 1;
        } else {
            if (c == ']' && in_class)
                in_class = 0;
            g_string_append_c(g, c);
        }
    }
    return g_string_free(g, FALSE);
}

static int add_stage(tok_t *t, const char *pattern, int literal, int prefix_space,
                     GError **err)
{
    GRegex *re = NULL;
    if (pattern) {
        char *p = literal ? g_regex_escape_string(pattern, -1) : rewrite_ws(pattern);
        GError *ge = NULL;
        re = g_regex_new(p, G_REGEX_OPTIMIZE, 0, &ge);
        g_free(p);
        if (!re) {
            parse_error(err, t->name, "pre_tokenizer regex does not compile: %s",
                        ge->message);
            g_error_free(ge);
            return -1;
        }
    }
    t->stages = g_renew(stage_t, t->stages, t->n_stages + 1);
    t->stages[t->n_stages++] = (stage_t){re, prefix_space};
    return 0;
}

static int json_bool(const cJSON *obj, const char *key, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v);
    return dflt;
}

static const char *json_str(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* One pre-tokenizer object; sets *byte_level when it is ByteLevel. */
static int parse_pretok_one(tok_t *t, const cJSON *p, int *byte_level, GError **err)
{
    const char *type = json_str(p, "type");
    if (!type) {
        parse_error(err, t->name, "pre_tokenizer without a type");
        return -1;
    }
    if (!strcmp(type, "ByteLevel")) {
        *byte_level = 1;
        int prefix = json_bool(p, "add_prefix_space", 1);
        int use_regex = json_bool(p, "use_regex", 1);
        return add_stage(t, use_regex ? GPT2_REGEX : NULL, 0, prefix, err);
    }
    if (!strcmp(type, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const char *rx = json_str(pat, "Regex"), *lit = json_str(pat, "String");
        const char *behavior = json_str(p, "behavior");
        if (!rx && !lit) {
            parse_error(err, t->name, "pre_tokenizer Split has no pattern");
            return -1;
        }
        if (!behavior || strcmp(behavior, "Isolated") || json_bool(p, "invert", 0)) {
            parse_error(err, t->name,
                        "unsupported pre_tokenizer Split behavior '%s'%s "
                        "(only Isolated)", behavior ? behavior : "(none)",
                        json_bool(p, "invert", 0) ? " with invert" : "");
            return -1;
        }
        return add_stage(t, rx ? rx : lit, rx == NULL, 0, err);
    }
    parse_error(err, t->name, "unsupported pre_tokenizer type '%s'", type);
    return -1;
}

static int parse_pretok(tok_t *t, const cJSON *p, GError **err)
{
    int byte_level = 0;
    const char *type = json_str(p, "type");
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        const cJSON *it;
        cJSON_ArrayForEach(it, list)
            if (parse_pretok_one(t, it, &byte_level, err) < 0)
                return -1;
    } else if (p && !cJSON_IsNull(p)) {
        if (parse_pretok_one(t, p, &byte_level, err) < 0)
            return -1;
    }
    if (!byte_level) {
        parse_error(err, t->name, "pre_tokenizer has no ByteLevel step "
                    "(only byte-level BPE is supported)");
        return -1;
    }
    return 0;
}

static int parse_normalizer(tok_t *t, const cJSON *n, GError **err)
{
    if (!n || cJSON_IsNull(n))
        return 0;
    const char *type = json_str(n, "type");
    if (type && !strcmp(type, "NFC")) {
        t->nfc = 1;
        return 0;
    }
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(n, "normalizers"))
            if (parse_normalizer(t, it, err) < 0)
                return -1;
        return 0;
    }
    parse_error(err, t->name, "unsupported normalizer '%s' (only NFC)",
                type ? type : "(no type)");
    return -1;
}

/* Sets id's strings: the vocabulary form S and its raw bytes (HF's
 * ByteLevel decoder: unmap every char; if one is outside the map, the
 * token stands for its own UTF-8). */
static void set_token(tok_t *t, int32_t id, const char *s, int added)
{
    t->str[id] = g_string_chunk_insert(t->chunk, s);
    size_t n = strlen(s);
    GByteArray *b = g_byte_array_sized_new((guint)n);
    int mapped = !added;
    for (const char *p = s; mapped && *p; p = g_utf8_next_char(p)) {
        gunichar c = g_utf8_get_char(p);
        if (c >= 512 || uc_to_byte[c] < 0)
            mapped = 0;
        else {
            uint8_t byte = (uint8_t)uc_to_byte[c];
            g_byte_array_append(b, &byte, 1);
        }
    }
    if (mapped) {
        t->bytes[id] = (const uint8_t *)g_string_chunk_insert_len(t->chunk,
                                                               (char *)b->data, b->len);
        t->nbytes[id] = b->len;
    } else {
        t->bytes[id] = (const uint8_t *)t->str[id];
        t->nbytes[id] = (uint32_t)n;
    }
    g_byte_array_free(b, TRUE);
    t->flags[id] |= FL_PRESENT;
}

static int32_t vocab_id(const tok_t *t, const char *s)
{
    return GPOINTER_TO_INT(g_hash_table_lookup(t->vocab, s)) - 1;
}

/* Vocabulary: a JSON object token -> id. ADDED: array of added-token
 * objects {id, content, special, lstrip, rstrip} or NULL. */
static int build_vocab(tok_t *t, const cJSON *vocab, const cJSON *added,
                       const char *where, GError **err)
{
    int64_t max_id = -1;
    int n_added = 0; /* t->n_added only once t->added exists: tok_free reads it */
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        uint64_t id;
        if (!it->string || !qm_json_uint(it, &id) || id >= TOK_MAX_ID) {
            char *s = show(it->string ? it->string : "");
            parse_error(err, t->name, "%s: token %s has a bad id", where, s);
            g_free(s);
            return -1;
        }
        if (!g_utf8_validate(it->string, -1, NULL)) {
            parse_error(err, t->name, "%s: token with id %d is not valid UTF-8",
                        where, (int)id);
            return -1;
        }
        max_id = MAX(max_id, (int64_t)id);
    }
    cJSON_ArrayForEach(it, added) {
        uint64_t id;
        const char *content = json_str(it, "content");
        if (!qm_json_uint(cJSON_GetObjectItemCaseSensitive(it, "id"), &id) ||
            id >= TOK_MAX_ID || !content || !*content ||
            !g_utf8_validate(content, -1, NULL)) {
            parse_error(err, t->name, "added token %d has a bad id or content",
                        n_added);
            return -1;
        }
        max_id = MAX(max_id, (int64_t)id);
        n_added++;
    }
    if (max_id < 0) {
        parse_error(err, t->name, "%s is empty", where);
        return -1;
    }
    t->n_ids = (int)max_id + 1;
    t->str = g_new0(const char *, t->n_ids);
    t->bytes = g_new0(const uint8_t *, t->n_ids);
    t->nbytes = g_new0(uint32_t, t->n_ids);
    t->flags = g_new0(uint8_t, t->n_ids);
    cJSON_ArrayForEach(it, vocab) {
        int32_t id = (int32_t)it->valuedouble;
        if (t->flags[id] || g_hash_table_contains(t->vocab, it->string)) {
            char *s = show(it->string);
            parse_error(err, t->name, "%s: token %s or its id %d appears twice",
                        where, s, id);
            g_free(s);
            return -1;
        }
        set_token(t, id, it->string, 0);
        g_hash_table_insert(t->vocab, (char *)t->str[id], GINT_TO_POINTER(id + 1));
    }
    t->added = g_new0(added_t, n_added);
    t->n_added = n_added;
    int k = 0;
    cJSON_ArrayForEach(it, added) {
        int32_t id = (int32_t)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble;
        const char *content = json_str(it, "content");
        if ((t->flags[id] & FL_ADDED) ||
            ((t->flags[id] & FL_PRESENT) && strcmp(t->str[id], content))) {
            char *s = show(content);
            parse_error(err, t->name, "added token %s: id %d is already taken",
                        s, id);
            g_free(s);
            return -1;
        }
        if (!(t->flags[id] & FL_PRESENT))
            set_token(t, id, content, 1);
        t->flags[id] |= FL_ADDED | (json_bool(it, "special", 0) ? FL_SPECIAL : 0);
        added_t *a = &t->added[k++];
        a->text = g_strdup(content);
        a->len = strlen(content);
        a->id = id;
        a->lstrip = json_bool(it, "lstrip", 0);
        a->rstrip = json_bool(it, "rstrip", 0);
        t->added_first[(uint8_t)content[0]] = 1;
    }
    for (int b = 0; b < 256; b++) {
        char s[8];
        s[g_unichar_to_utf8(byte_to_uc[b], s)] = 0;
        t->byte_id[b] = vocab_id(t, s);
    }
    return 0;
}

static size_t mslot(const tok_t *t, uint64_t key)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    size_t i = (size_t)(h >> 20) & (t->mcap - 1);
    while (t->mkey[i] != MKEY_EMPTY && t->mkey[i] != key)
        i = (i + 1) & (t->mcap - 1);
    return i;
}

static void merges_alloc(tok_t *t, size_t n)
{
    t->mcap = 1024;
    while (t->mcap < 2 * n + 2)
        t->mcap *= 2;
    t->mkey = g_new(uint64_t, t->mcap);
    memset(t->mkey, 0xff, t->mcap * sizeof *t->mkey);
    t->mrank = g_new(int32_t, t->mcap);
    t->mnew = g_new(int32_t, t->mcap);
}

/* Adds merge RANK "a b". A later duplicate wins, as in HF. */
static int add_merge(tok_t *t, int rank, const char *a, const char *b, GError **err)
{
    int32_t ia = vocab_id(t, a), ib = vocab_id(t, b), in = -1;
    char *ab = NULL;
    if (ia >= 0 && ib >= 0) {
        ab = g_strconcat(a, b, NULL);
        in = vocab_id(t, ab);
    }
    if (in < 0) {
        char *sa = show(a), *sb = show(b), *sab = show(ab ? ab : "");
        if (ia < 0 || ib < 0)
            parse_error(err, t->name, "merge %d uses %s, which is not in the vocabulary",
                        rank, ia < 0 ? sa : sb);
        else
            parse_error(err, t->name, "merge %d (%s %s) makes %s, which is not in "
                        "the vocabulary", rank, sa, sb, sab);
        g_free(sa), g_free(sb), g_free(sab), g_free(ab);
        return -1;
    }
    g_free(ab);
    uint64_t key = (uint64_t)ia << 32 | (uint32_t)ib;
    size_t i = mslot(t, key);
    t->mkey[i] = key;
    t->mrank[i] = rank;
    t->mnew[i] = in;
    return 0;
}

static int build_merges_json(tok_t *t, const cJSON *merges, GError **err)
{
    merges_alloc(t, (size_t)cJSON_GetArraySize(merges));
    int rank = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, merges) {
        const char *a = NULL, *b = NULL;
        char **parts = NULL;
        if (cJSON_IsString(it)) {
            parts = g_strsplit(it->valuestring, " ", 3);
            if (g_strv_length(parts) == 2)
                a = parts[0], b = parts[1];
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2) {
            const cJSON *x = cJSON_GetArrayItem(it, 0), *y = cJSON_GetArrayItem(it, 1);
            if (cJSON_IsString(x) && cJSON_IsString(y))
                a = x->valuestring, b = y->valuestring;
        }
        int rc = -1;
        if (!a || !b)
            parse_error(err, t->name, "model.merges[%d] is not a pair of tokens", rank);
        else
            rc = add_merge(t, rank, a, b, err);
        g_strfreev(parts);
        if (rc < 0)
            return -1;
        rank++;
    }
    return 0;
}

static int build_finish(tok_t *t)
{
    t->cache = g_hash_table_new_full(g_bytes_hash, g_bytes_equal,
                                     (GDestroyNotify)g_bytes_unref, g_free);
    return 0;
}

tok_t *tok_from_json(const char *json, size_t len, const char *name, GError **err)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t off = end ? (size_t)(end - json) : 0;
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "cannot parse '%s': invalid JSON near byte %zu", name, off);
        return NULL;
    }
    tok_t *t = tok_new(name);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    const char *type = json_str(model, "type");
    const char *csp = json_str(model, "continuing_subword_prefix");
    const char *eow = json_str(model, "end_of_word_suffix");
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (!cJSON_IsObject(root))
        parse_error(err, name, "not a JSON object");
    else if (!cJSON_IsObject(model))
        parse_error(err, name, "model is missing");
    else if (type && strcmp(type, "BPE"))
        parse_error(err, name, "model.type is '%s', only BPE is supported", type);
    else if (!cJSON_IsObject(vocab))
        parse_error(err, name, "model.vocab is missing");
    else if (!cJSON_IsArray(merges))
        parse_error(err, name, "model.merges is missing");
    else if (added && !cJSON_IsArray(added))
        parse_error(err, name, "added_tokens is not an array");
    else if ((csp && *csp) || (eow && *eow))
        parse_error(err, name, "unsupported model.continuing_subword_prefix or "
                    "end_of_word_suffix");
    else if (json_bool(model, "byte_fallback", 0))
        parse_error(err, name, "unsupported model.byte_fallback");
    else if (cJSON_IsNumber(dropout) && dropout->valuedouble != 0)
        parse_error(err, name, "unsupported model.dropout");
    else if (parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"),
                              err) == 0 &&
             parse_pretok(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"),
                          err) == 0 &&
             build_vocab(t, vocab, added, "model.vocab", err) == 0 &&
             build_merges_json(t, merges, err) == 0 && build_finish(t) == 0) {
        t->ignore_merges = json_bool(model, "ignore_merges", 0);
        cJSON_Delete(root);
        return t;
    }
    cJSON_Delete(root);
    tok_free(t);
    return NULL;
}

/* ---- files ---- */

static int gunzip(const char *path, const uint8_t *in, size_t n, char **out,
                  size_t *out_len, GError **err)
{
    z_stream zs = {0};
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) {
        g_set_error(err, QM_ERROR, QM_ERR_IO, "cannot read '%s': zlib init failed", path);
        return -1;
    }
    size_t cap = n * 4 + 4096, len = 0;
    char *buf = g_malloc(cap + 1);
    zs.next_in = (Bytef *)in;
    int rc = Z_OK;
    const char *why = NULL;
    while (!why) {
        if (len == cap) {
            if (cap >= TOK_MAX_INFLATE) {
                why = "unpacks to more than 1 GiB";
                break;
            }
            cap = MIN(cap * 2, (size_t)TOK_MAX_INFLATE);
            buf = g_realloc(buf, cap + 1);
        }
        size_t in_left = n - (size_t)(zs.next_in - (Bytef *)in);
        zs.avail_in = (uInt)MIN(in_left, (size_t)1 << 30);
        zs.next_out = (Bytef *)buf + len;
        zs.avail_out = (uInt)MIN(cap - len, (size_t)1 << 30);
        rc = inflate(&zs, Z_NO_FLUSH);
        len = (size_t)((char *)zs.next_out - buf);
        in_left = n - (size_t)(zs.next_in - (Bytef *)in);
        if (rc == Z_STREAM_END) {
            if (in_left == 0)
                break;
            inflateReset(&zs); /* another gzip member follows */
        } else if (rc == Z_BUF_ERROR && in_left == 0)
            why = "truncated gzip data";
        else if (rc != Z_OK && rc != Z_BUF_ERROR)
            why = zs.msg ? zs.msg : "corrupt gzip data";
    }
    if (why) {
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, "cannot read '%s': %s", path, why);
        inflateEnd(&zs);
        g_free(buf);
        return -1;
    }
    inflateEnd(&zs);
    buf[len] = 0;
    *out = buf;
    *out_len = len;
    return 0;
}

static tok_t *load_json_file(const char *path, GError **err)
{
    char *data = NULL;
    gsize len = 0;
    if (fs_read_file(path, "cannot read", &data, &len, err) != 0)
        return NULL;
    if (len >= 2 && (uint8_t)data[0] == 0x1f && (uint8_t)data[1] == 0x8b) {
        char *raw = NULL;
        size_t raw_len = 0;
        int rc = gunzip(path, (uint8_t *)data, len, &raw, &raw_len, err);
        g_free(data);
        if (rc < 0)
            return NULL;
        data = raw;
        len = raw_len;
    }
    tok_t *t = tok_from_json(data, len, path, err);
    g_free(data);
    return t;
}

/* vocab.json + merges.txt (+ tokenizer_config.json): Qwen2Tokenizer. */
static tok_t *load_vocab_merges(const char *dir, GError **err)
{
    char *vpath = g_build_filename(dir, "vocab.json", NULL);
    char *mpath = g_build_filename(dir, "merges.txt", NULL);
    char *cpath = g_build_filename(dir, "tokenizer_config.json", NULL);
    cJSON *vocab = NULL, *conf = NULL, *added = NULL;
    char *mtext = NULL;
    char **lines = NULL;
    tok_t *t = NULL;

    if (!(vocab = qm_json_load(vpath, err)))
        goto out;
    if (!cJSON_IsObject(vocab)) {
        parse_error(err, vpath, "not a JSON object");
        goto out;
    }
    if (fs_read_file(mpath, "cannot read", &mtext, NULL, err) != 0)
        goto out;
    if (g_file_test(cpath, G_FILE_TEST_EXISTS) && !(conf = qm_json_load(cpath, err)))
        goto out;
    /* added_tokens_decoder {"151643": {content, special, ...}} -> HF's list */
    added = cJSON_CreateArray();
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(conf, "added_tokens_decoder");
    const cJSON *it;
    cJSON_ArrayForEach(it, dec) {
        char *endp = NULL;
        errno = 0;
        long id = strtol(it->string, &endp, 10);
        if (!cJSON_IsObject(it) || errno || endp == it->string || *endp || id < 0 ||
            id >= TOK_MAX_ID) {
            parse_error(err, cpath, "added_tokens_decoder has a bad entry '%s'",
                        it->string);
            goto out;
        }
        cJSON *a = cJSON_Duplicate(it, 1);
        cJSON_DeleteItemFromObjectCaseSensitive(a, "id");
        cJSON_AddNumberToObject(a, "id", (double)id);
        cJSON_AddItemToArray(added, a);
    }

    t = tok_new(vpath);
    t->nfc = 1;
    if (add_stage(t, QWEN2_REGEX, 0, 0, err) < 0 || add_stage(t, NULL, 0, 0, err) < 0 ||
        build_vocab(t, vocab, added, "vocab", err) < 0)
        goto fail;
    g_free(t->name);
    t->name = g_strdup(mpath);
    lines = g_strsplit(mtext, "\n", -1);
    merges_alloc(t, g_strv_length(lines));
    int rank = 0;
    for (int i = 0; lines[i]; i++) {
        char *line = g_strstrip(lines[i]);
        if ((i == 0 && g_str_has_prefix(line, "#version")) || !*line)
            continue;
        char **parts = g_strsplit_set(line, " \t", -1);
        int np = 0;
        const char *ab[2] = {NULL, NULL};
        for (int k = 0; parts[k]; k++)
            if (*parts[k] && np++ < 2)
                ab[np - 1] = parts[k];
        int rc = -1;
        if (np != 2)
            parse_error(err, mpath, "line %d is not a pair of tokens", i + 1);
        else
            rc = add_merge(t, rank++, ab[0], ab[1], err);
        g_strfreev(parts);
        if (rc < 0)
            goto fail;
    }
    build_finish(t);
    g_free(t->name);
    t->name = g_strdup(dir);
    goto out;
fail:
    tok_free(t);
    t = NULL;
out:
    g_strfreev(lines);
    cJSON_Delete(vocab);
    cJSON_Delete(conf);
    cJSON_Delete(added);
    g_free(mtext);
    g_free(vpath);
    g_free(mpath);
    g_free(cpath);
    return t;
}

tok_t *tok_load(const char *path, GError **err)
{
    if (!g_file_test(path, G_FILE_TEST_IS_DIR))
        return load_json_file(path, err);
    static const char *const names[] = {"tokenizer.json", "tokenizer.json.gz"};
    for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
        char *p = g_build_filename(path, names[i], NULL);
        if (g_file_test(p, G_FILE_TEST_EXISTS)) {
            tok_t *t = load_json_file(p, err);
            g_free(p);
            return t;
        }
        g_free(p);
    }
    char *v = g_build_filename(path, "vocab.json", NULL);
    char *m = g_build_filename(path, "merges.txt", NULL);
    int have = g_file_test(v, G_FILE_TEST_EXISTS) && g_file_test(m, G_FILE_TEST_EXISTS);
    g_free(v);
    g_free(m);
    if (have)
        return load_vocab_merges(path, err);
    g_set_error(err, QM_ERROR, QM_ERR_IO, "cannot load a tokenizer from '%s': no "
                "tokenizer.json, tokenizer.json.gz or vocab.json + merges.txt", path);
    return NULL;
}

/* ---- encoding ---- */

static void grow(tok_t *t, size_t n)
{
    if (n > t->scap) {
        t->scap = MAX(n, 2 * t->scap);
        t->sym = g_renew(int32_t, t->sym, t->scap);
        t->prev = g_renew(int32_t, t->prev, t->scap);
        t->next = g_renew(int32_t, t->next, t->scap);
    }
}

/* Min-heap of (rank << 32 | position): lowest rank first, then leftmost. */
static void heap_push(tok_t *t, size_t *n, uint64_t v)
{
    if (*n == t->hcap) {
        t->hcap = MAX((size_t)64, 2 * t->hcap);
        t->heap = g_renew(uint64_t, t->heap, t->hcap);
    }
    size_t i = (*n)++;
    while (i > 0 && t->heap[(i - 1) / 2] > v) {
        t->heap[i] = t->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    t->heap[i] = v;
}

static uint64_t heap_pop(tok_t *t, size_t *n)
{
    uint64_t top = t->heap[0], v = t->heap[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && t->heap[c + 1] < t->heap[c])
            c++;
        if (t->heap[c] >= v)
            break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    t->heap[i] = v;
    return top;
}

/* Merge slot of the pair starting at symbol I, or -1. */
static long pair_at(const tok_t *t, int32_t i)
{
    int32_t j = t->next[i];
    if (j < 0)
        return -1;
    uint64_t key = (uint64_t)t->sym[i] << 32 | (uint32_t)t->sym[j];
    size_t s = mslot(t, key);
    return t->mkey[s] == key ? (long)s : -1;
}

static void push_pair(tok_t *t, size_t *hn, int32_t i)
{
    long s = pair_at(t, i);
    if (s >= 0)
        heap_push(t, hn, (uint64_t)t->mrank[s] << 32 | (uint32_t)i);
}

/* BPE over the raw bytes of one piece; appends ids to OUT. */
static void bpe(tok_t *t, const uint8_t *p, size_t n, GArray *out)
{
    if (t->ignore_merges) {
        GString *s = g_string_sized_new(2 * n);
        for (size_t i = 0; i < n; i++)
            g_string_append_unichar(s, byte_to_uc[p[i]]);
        int32_t id = vocab_id(t, s->str);
        g_string_free(s, TRUE);
        if (id >= 0) {
            g_array_append_val(out, id);
            return;
        }
    }
    grow(t, n);
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[p[i]];
        if (id < 0)
            continue; /* a byte with no token is dropped, as HF does */
        t->sym[m] = id;
        t->prev[m] = m - 1;
        t->next[m] = m + 1;
        m++;
    }
    if (m == 0)
        return;
    t->next[m - 1] = -1;
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < m; i++)
        push_pair(t, &hn, i);
    while (hn > 0) {
        uint64_t top = heap_pop(t, &hn);
        int32_t i = (int32_t)(uint32_t)top;
        if (t->sym[i] < 0)
            continue; /* merged into its left neighbour since */
        long s = pair_at(t, i);
        /* stale unless the pair still has this rank (a rank is one pair) */
        if (s < 0 || (uint64_t)t->mrank[s] != top >> 32)
            continue;
        int32_t j = t->next[i];
        t->sym[i] = t->mnew[s];
        t->sym[j] = -1;
        t->next[i] = t->next[j];
        if (t->next[j] >= 0)
            t->prev[t->next[j]] = i;
        if (t->prev[i] >= 0)
            push_pair(t, &hn, t->prev[i]);
        push_pair(t, &hn, i);
    }
    for (int32_t i = 0; i >= 0; i = t->next[i])
        g_array_append_val(out, t->sym[i]);
}

static void bpe_cached(tok_t *t, const uint8_t *p, size_t n, GArray *out)
{
    if (n > CACHE_MAX_PIECE) {
        bpe(t, p, n, out);
        return;
    }
    GBytes *key = g_bytes_new_static(p, n);
    int32_t *hit = g_hash_table_lookup(t->cache, key);
    g_bytes_unref(key);
    if (hit) {
        g_array_append_vals(out, hit + 1, (guint)hit[0]);
        return;
    }
    guint before = out->len;
    bpe(t, p, n, out);
    guint k = out->len - before;
    int32_t *val = g_new(int32_t, k + 1);
    val[0] = (int32_t)k;
    if (k)
        memcpy(val + 1, &g_array_index(out, int32_t, before), k * sizeof(int32_t));
    if (g_hash_table_size(t->cache) >= CACHE_MAX_ENTRIES)
        g_hash_table_remove_all(t->cache);
    g_hash_table_insert(t->cache, g_bytes_new(p, n), val);
}

/* Pre-tokenizer stage K over one piece, then BPE. */
static void split_stage(tok_t *t, int k, const char *s, size_t n, GArray *out)
{
    if (n == 0)
        return;
    if (k == t->n_stages) {
        bpe_cached(t, (const uint8_t *)s, n, out);
        return;
    }
    const stage_t *st = &t->stages[k];
    char *copy = NULL;
    if (st->prefix_space && s[0] != ' ') {
        copy = g_malloc(n + 2);
        copy[0] = ' ';
        memcpy(copy + 1, s, n);
        copy[++n] = 0;
        s = copy;
    }
    if (!st->re) {
        split_stage(t, k + 1, s, n, out);
        g_free(copy);
        return;
    }
    GMatchInfo *mi = NULL;
    size_t pos = 0;
    g_regex_match_full(st->re, s, (gssize)n, 0, 0, &mi, NULL);
    while (g_match_info_matches(mi)) {
        gint a, b;
        g_match_info_fetch_pos(mi, 0, &a, &b);
        if (b > a) { /* empty matches split nothing */
            split_stage(t, k + 1, s + pos, (size_t)a - pos, out); /* the gap */
            split_stage(t, k + 1, s + a, (size_t)(b - a), out);
            pos = (size_t)b;
        }
        g_match_info_next(mi, NULL);
    }
    g_match_info_free(mi);
    split_stage(t, k + 1, s + pos, n - pos, out);
    g_free(copy);
}

/* Normalizer + pre-tokenizer + BPE over text between added tokens. */
static void encode_segment(tok_t *t, const char *s, size_t n, GArray *out)
{
    if (n == 0)
        return;
    int need_nfc = 0;
    /* Text below U+0300 (lead bytes below 0xCC) is always NFC. */
    for (size_t i = 0; t->nfc && i < n && !need_nfc; i++)
        need_nfc = (uint8_t)s[i] >= 0xCC;
    if (!need_nfc) {
        split_stage(t, 0, s, n, out);
        return;
    }
    /* g_utf8_normalize stops at NUL, so normalize between NULs */
    GString *g = g_string_sized_new(n + 16);
    for (size_t i = 0; i < n;) {
        const char *z = memchr(s + i, 0, n - i);
        size_t m = z ? (size_t)(z - (s + i)) : n - i;
        char *norm = g_utf8_normalize(s + i, (gssize)m, G_NORMALIZE_NFC);
        g_string_append(g, norm);
        g_free(norm);
        i += m;
        if (z) {
            g_string_append_c(g, 0);
            i++;
        }
    }
    split_stage(t, 0, g->str, g->len, out);
    g_string_free(g, TRUE);
}

/* Longest added token at S[i] within [0, n), or NULL. */
static const added_t *added_at(const tok_t *t, const char *s, size_t i, size_t n)
{
    const added_t *best = NULL;
    for (int k = 0; k < t->n_added; k++) {
        const added_t *a = &t->added[k];
        if (a->len <= n - i && (!best || a->len > best->len) &&
            !memcmp(s + i, a->text, a->len))
            best = a;
    }
    return best;
}

static gunichar char_before(const char *s, size_t i, size_t *start)
{
    size_t j = i - 1;
    while (j > 0 && ((uint8_t)s[j] & 0xC0) == 0x80)
        j--;
    *start = j;
    return g_utf8_get_char(s + j);
}

int tok_encode(tok_t *t, const char *text, size_t len, unsigned flags, GArray *ids,
               GError **err)
{
    const uint8_t *u = (const uint8_t *)text;
    for (size_t i = 0; i < len;) {
        int k = utf8_step(u + i, len - i);
        if (k <= 0) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "text is not valid UTF-8 at byte %zu", i);
            return -1;
        }
        i += (size_t)k;
    }
    size_t seg = 0; /* start of the pending plain text */
    for (size_t i = 0; i < len && !(flags & TOK_PLAIN) && t->n_added;) {
        const added_t *a = t->added_first[u[i]] ? added_at(t, text, i, len) : NULL;
        if (!a) {
            i++;
            continue;
        }
        size_t s = i, e = i + a->len, cs;
        while (a->lstrip && s > seg && is_unicode_ws(char_before(text, s, &cs)))
            s = cs;
        while (a->rstrip && e < len && is_unicode_ws(g_utf8_get_char(text + e)))
            e += (size_t)utf8_step(u + e, len - e);
        encode_segment(t, text + seg, s - seg, ids);
        g_array_append_val(ids, a->id);
        seg = i = e;
    }
    encode_segment(t, text + seg, len - seg, ids);
    return 0;
}

/* ---- decoding and lookups ---- */

const uint8_t *tok_token_bytes(const tok_t *t, int32_t id, size_t *len_out)
{
    if (id < 0 || id >= t->n_ids || !(t->flags[id] & FL_PRESENT)) {
        if (len_out)
            *len_out = 0;
        return NULL;
    }
    if (len_out)
        *len_out = t->nbytes[id];
    return t->bytes[id];
}

char *tok_decode(const tok_t *t, const int32_t *ids, size_t n, size_t *len_out)
{
    GString *g = g_string_new(NULL);
    for (size_t i = 0; i < n; i++) {
        size_t k;
        const uint8_t *b = tok_token_bytes(t, ids[i], &k);
        if (b)
            g_string_append_len(g, (const char *)b, (gssize)k);
        else
            g_string_append_printf(g, TOK_GAP_FORMAT, ids[i]);
    }
    if (len_out)
        *len_out = g->len;
    return g_string_free(g, FALSE);
}

int32_t tok_token_id(const tok_t *t, const char *token)
{
    for (int k = 0; k < t->n_added; k++)
        if (!strcmp(t->added[k].text, token))
            return t->added[k].id;
    return vocab_id(t, token);
}

const char *tok_token_str(const tok_t *t, int32_t id)
{
    return id >= 0 && id < t->n_ids ? t->str[id] : NULL;
}

int tok_vocab_size(const tok_t *t)
{
    return t->n_ids;
}

int tok_is_special(const tok_t *t, int32_t id)
{
    return id >= 0 && id < t->n_ids && (t->flags[id] & FL_SPECIAL);
}

/* ---- streaming decode ---- */

struct tok_stream {
    const tok_t *tok;
    uint8_t held[4]; /* an incomplete UTF-8 prefix: at most 3 bytes */
    size_t nheld;
    GString *out;
};

tok_stream_t *tok_stream_new(const tok_t *tok)
{
    tok_stream_t *s = g_new0(tok_stream_t, 1);
    s->tok = tok;
    s->out = g_string_new(NULL);
    return s;
}

void tok_stream_free(tok_stream_t *s)
{
    if (!s)
        return;
    g_string_free(s->out, TRUE);
    g_free(s);
}

/* Appends the complete characters of HELD + B to out, keeps the tail. */
static void stream_feed(tok_stream_t *s, const uint8_t *b, size_t n)
{
    size_t i = 0;
    while (i < n || s->nheld) {
        if (s->nheld) {
            /* complete the held prefix one byte at a time */
            if (i == n)
                break;
            s->held[s->nheld++] = b[i++];
            int k = utf8_step(s->held, s->nheld);
            if (k > 0) {
                g_string_append_len(s->out, (char *)s->held, k);
                s->nheld = 0;
            } else if (k < 0) {
                /* the prefix was broken: U+FFFD for it, retry the new byte */
                g_string_append(s->out, "\xEF\xBF\xBD");
                s->nheld = 0;
                i--;
            }
            continue;
        }
        int k = utf8_step(b + i, n - i);
        if (k > 0) {
            g_string_append_len(s->out, (const char *)b + i, k);
            i += (size_t)k;
        } else if (k < 0) {
            g_string_append(s->out, "\xEF\xBF\xBD");
            i++;
        } else {
            memcpy(s->held, b + i, n - i);
            s->nheld = n - i;
            i = n;
        }
    }
}

const char *tok_stream_push(tok_stream_t *s, int32_t id, size_t *len_out)
{
    g_string_truncate(s->out, 0);
    size_t n;
    const uint8_t *b = tok_token_bytes(s->tok, id, &n);
    if (b) {
        stream_feed(s, b, n);
    } else {
        /* the gap breaks a held prefix: U+FFFD for it, as on flush */
        if (s->nheld)
            g_string_append(s->out, "\xEF\xBF\xBD");
        s->nheld = 0;
        g_string_append_printf(s->out, TOK_GAP_FORMAT, id);
    }
    if (len_out)
        *len_out = s->out->len;
    return s->out->str;
}

const char *tok_stream_flush(tok_stream_t *s, size_t *len_out)
{
    g_string_truncate(s->out, 0);
    if (s->nheld)
        g_string_append(s->out, "\xEF\xBF\xBD");
    s->nheld = 0;
    if (len_out)
        *len_out = s->out->len;
    return s->out->str;
}
