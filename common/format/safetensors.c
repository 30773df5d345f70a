/* safetensors.c - see safetensors.h */
#include "format/safetensors.h"
#include "base/fs.h"
#include "base/json.h"
#include "base/util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *name;
    unsigned bits;
} dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 8},   [ST_U8] = {"U8", 8},     [ST_I8] = {"I8", 8},
    [ST_I16] = {"I16", 16},    [ST_U16] = {"U16", 16},  [ST_I32] = {"I32", 32},
    [ST_U32] = {"U32", 32},    [ST_I64] = {"I64", 64},  [ST_U64] = {"U64", 64},
    [ST_F16] = {"F16", 16},    [ST_BF16] = {"BF16", 16}, [ST_F32] = {"F32", 32},
    [ST_F64] = {"F64", 64},    [ST_F8_E4M3] = {"F8_E4M3", 8},
    [ST_F8_E5M2] = {"F8_E5M2", 8}, [ST_F8_E8M0] = {"F8_E8M0", 8},
    [ST_F6_E2M3] = {"F6_E2M3", 6}, [ST_F6_E3M2] = {"F6_E3M2", 6},
    [ST_F4] = {"F4", 4},
};

const char *st_dtype_name(st_dtype t)
{
    return (unsigned)t < ST_DTYPE_COUNT ? dtypes[t].name : "?";
}

int st_dtype_parse(const char *name)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (strcmp(dtypes[i].name, name) == 0)
            return i;
    return -1;
}

unsigned st_dtype_bits(st_dtype t)
{
    return (unsigned)t < ST_DTYPE_COUNT ? dtypes[t].bits : 0;
}

int64_t st_numel(const int64_t *shape, int ndim)
{
    int64_t n = 1;
    /* A zero dimension makes the product 0 whatever the others are; check
     * first so that [2^40, 2^40, 0] is not taken for an overflow while
     * [0, 2^40, 2^40] is accepted. */
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return -1;
        if (shape[i] == 0)
            n = 0;
    }
    if (n == 0)
        return 0;
    for (int i = 0; i < ndim; i++) {
        if (n > (INT64_C(1) << 62) / shape[i])
            return -1;
        n *= shape[i];
    }
    return n;
}

char *st_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap)
{
    size_t at = 0;
    at += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && at < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%lld", i ? ", " : "",
                               (long long)shape[i]);
    if (at < cap)
        snprintf(buf + at, cap - at, "]");
    return buf;
}

static uint64_t read_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

void st_close(st_file *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->n_tensors; i++)
        g_free(f->tensors[i].name);
    g_free(f->tensors);
    if (f->by_name)
        g_hash_table_destroy(f->by_name);
    g_strfreev(f->meta_keys);
    g_strfreev(f->meta_values);
    if (f->map)
        munmap(f->map, f->map_len);
    g_free(f->path);
    g_free(f);
}

/* Tensors past which a file gets a name table: below it st_find scans,
 * which costs less than building the table for an expert's three (an OUT
 * opens thousands of such files). */
#define ST_TABLE_MIN 8

/* Each failure below has its own wording so that a message identifies the
 * rule that was broken (tests match on these). */
#define FAIL(...)                                                          \
    do {                                                                   \
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT, __VA_ARGS__);            \
        goto fail;                                                         \
    } while (0)

static int cmp_begin(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a;
    const st_tensor *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* A valid header nests 3 deep (root, tensor, shape); cJSON recurses once per
 * level up to its own limit of 1000. Refuse deep nesting up front so that the
 * message says so instead of "not valid JSON". */
#define ST_MAX_DEPTH 64

static int json_too_deep(const char *s, uint64_t n)
{
    int depth = 0, in_str = 0;
    for (uint64_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            if (++depth > ST_MAX_DEPTH)
                return 1;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return 0;
}

static int parse_meta(st_file *f, const cJSON *m, GError **err)
{
    const char *label = f->path;
    if (!cJSON_IsObject(m))
        FAIL("invalid header of '%s': __metadata__ is not an object", label);
    int n = cJSON_GetArraySize(m), i = 0;
    f->meta_keys = g_new0(char *, n + 1);
    f->meta_values = g_new0(char *, n + 1);
    for (const cJSON *kv = m->child; kv; kv = kv->next, i++) {
        if (!cJSON_IsString(kv))
            FAIL("invalid header of '%s': __metadata__ value of '%s' is not a "
                 "string", label, kv->string);
        f->meta_keys[i] = g_strdup(kv->string);
        f->meta_values[i] = g_strdup(kv->valuestring);
    }
    return 0;
fail:
    return -1;
}

/* The rules on a tensor's numbers once read (offsets, element count,
 * bytes): one wording for a header parsed and one described (st_describe). */
static int tensor_numbers(const char *label, const st_tensor *t, GError **err)
{
    const char *name = t->name;
    if (t->end < t->begin)
        FAIL("invalid header of '%s': tensor '%s' has data_offsets [%llu, %llu] "
             "that are reversed", label, name, (unsigned long long)t->begin,
             (unsigned long long)t->end);
    int64_t numel = st_numel(t->shape, t->ndim);
    if (numel < 0)
        FAIL("invalid header of '%s': tensor '%s' shape element count overflows",
             label, name);
    unsigned bits = st_dtype_bits(t->dtype);
    if ((uint64_t)numel > UINT64_MAX / bits)
        FAIL("invalid header of '%s': tensor '%s' byte size overflows", label,
             name);
    uint64_t nbits = (uint64_t)numel * bits;
    if (nbits % 8)
        FAIL("invalid header of '%s': tensor '%s' of %lld %s elements does not "
             "fill whole bytes", label, name, (long long)numel,
             st_dtype_name(t->dtype));
    if (nbits / 8 != t->end - t->begin) {
        char s[128];
        FAIL("invalid header of '%s': tensor '%s' of shape %s %s needs %llu bytes "
             "but data_offsets [%llu, %llu] span %llu", label, name,
             st_shape_str(t->shape, t->ndim, s, sizeof s),
             st_dtype_name(t->dtype), (unsigned long long)(nbits / 8),
             (unsigned long long)t->begin, (unsigned long long)t->end,
             (unsigned long long)(t->end - t->begin));
    }
    return 0;
fail:
    return -1;
}

static int parse_tensor(st_file *f, const cJSON *it, st_tensor *t, GError **err)
{
    const char *label = f->path, *name = it->string;
    t->name = g_strdup(name);
    if (!cJSON_IsObject(it))
        FAIL("invalid header of '%s': tensor '%s' is not an object", label, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsString(dt))
        FAIL("invalid header of '%s': tensor '%s' has no dtype string", label,
             name);
    int d = st_dtype_parse(dt->valuestring);
    if (d < 0)
        FAIL("invalid header of '%s': tensor '%s' has unknown dtype '%s'", label,
             name, dt->valuestring);
    t->dtype = (st_dtype)d;
    if (!cJSON_IsArray(sh))
        FAIL("invalid header of '%s': tensor '%s' has no shape array", label,
             name);
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS)
        FAIL("invalid header of '%s': tensor '%s' has %d dimensions (at most %d)",
             label, name, nd, ST_MAX_DIMS);
    t->ndim = nd;
    int k = 0;
    for (const cJSON *x = sh->child; x; x = x->next, k++) {
        uint64_t v;
        if (cJSON_IsNumber(x) && x->valuedouble < 0)
            FAIL("invalid header of '%s': tensor '%s' has a negative dimension "
                 "%g", label, name, x->valuedouble);
        if (!qm_json_uint(x, &v))
            FAIL("invalid header of '%s': tensor '%s' has a shape entry that is "
                 "not a non-negative integer", label, name);
        t->shape[k] = (int64_t)v;
    }
    if (!cJSON_IsArray(off))
        FAIL("invalid header of '%s': tensor '%s' has no data_offsets array",
             label, name);
    if (cJSON_GetArraySize(off) != 2)
        FAIL("invalid header of '%s': tensor '%s' has %d data_offsets entries "
             "(needs [begin, end])", label, name, cJSON_GetArraySize(off));
    uint64_t b, e;
    if (!qm_json_uint(off->child, &b) || !qm_json_uint(off->child->next, &e))
        FAIL("invalid header of '%s': tensor '%s' has data_offsets that are not "
             "non-negative integers", label, name);
    t->begin = b;
    t->end = e;
    return tensor_numbers(label, t, err);
fail:
    return -1;
}

/* ---- the header read without cJSON ----
 *
 * A header as writers lay it out (strings, objects, arrays of plain
 * integers) is read here straight into st_tensor: building a cJSON tree
 * per file was most of the allocations of opening an OUT of 6197 files
 * (and fragments the heap between files). Anything else, or anything this
 * reader would refuse, goes to the cJSON path, which alone words the
 * errors: this one only has to be right about what it accepts. */

typedef struct {
    const char *p, *end;
    GString *s; /* the last string read */
} hcur;

static void h_ws(hcur *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* Expects byte ch (after whitespace) and steps over it. */
static int h_byte(hcur *c, char ch)
{
    h_ws(c);
    if (c->p >= c->end || *c->p != ch)
        return -1;
    c->p++;
    return 0;
}

/* A string into c->s; one holding NUL is left to cJSON (which cuts it). */
static int h_str(hcur *c)
{
    const char *why;
    h_ws(c);
    g_string_truncate(c->s, 0);
    const char *q = qm_json_get_str(c->p, c->end, c->s, &why);
    if (!q || memchr(c->s->str, '\0', c->s->len))
        return -1;
    c->p = q;
    return 0;
}

/* A plain integer of up to 15 digits (exact in a double, as cJSON reads
 * it); a sign, fraction or exponent is left to cJSON. */
static int h_uint(hcur *c, uint64_t *v)
{
    h_ws(c);
    int n = 0;
    *v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9' && n < 16) {
        *v = *v * 10 + (uint64_t)(*c->p++ - '0');
        n++;
    }
    if (n == 0 || n > 15 ||
        (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E' ||
                           (*c->p >= '0' && *c->p <= '9'))))
        return -1;
    return 0;
}

/* After a member or element: 1 at a comma, 0 at the closing byte, -1 else. */
static int h_next(hcur *c, char close)
{
    h_ws(c);
    if (c->p < c->end && (*c->p == ',' || *c->p == close))
        return *c->p++ == ',';
    return -1;
}

/* "[int, ...]" of at most max entries into v; the count into *n. */
static int h_uints(hcur *c, uint64_t *v, int max, int *n)
{
    *n = 0;
    if (h_byte(c, '['))
        return -1;
    h_ws(c);
    if (c->p < c->end && *c->p == ']') {
        c->p++;
        return 0;
    }
    for (;;) {
        if (*n == max || h_uint(c, &v[*n]))
            return -1;
        (*n)++;
        int more = h_next(c, ']');
        if (more <= 0)
            return more;
    }
}

/* The rules parse_tensor words, as a yes or no. */
static int h_tensor_fits(const st_tensor *t)
{
    int64_t numel = st_numel(t->shape, t->ndim);
    unsigned bits = st_dtype_bits(t->dtype);
    if (t->end < t->begin || numel < 0 || (uint64_t)numel > UINT64_MAX / bits)
        return 0;
    uint64_t nbits = (uint64_t)numel * bits;
    return nbits % 8 == 0 && nbits / 8 == t->end - t->begin;
}

/* One tensor's object: dtype, shape and data_offsets, each once. */
static int h_tensor(hcur *c, st_tensor *t)
{
    int seen = 0;
    if (h_byte(c, '{'))
        return -1;
    for (;;) {
        if (h_str(c) || h_byte(c, ':'))
            return -1;
        uint64_t v[ST_MAX_DIMS];
        int n;
        if (strcmp(c->s->str, "dtype") == 0 && !(seen & 1)) {
            int d;
            if (h_str(c) || (d = st_dtype_parse(c->s->str)) < 0)
                return -1;
            t->dtype = (st_dtype)d;
            seen |= 1;
        } else if (strcmp(c->s->str, "shape") == 0 && !(seen & 2)) {
            if (h_uints(c, v, ST_MAX_DIMS, &n))
                return -1;
            t->ndim = n;
            for (int k = 0; k < n; k++)
                t->shape[k] = (int64_t)v[k];
            seen |= 2;
        } else if (strcmp(c->s->str, "data_offsets") == 0 && !(seen & 4)) {
            if (h_uints(c, v, 2, &n) || n != 2)
                return -1;
            t->begin = v[0];
            t->end = v[1];
            seen |= 4;
        } else {
            return -1;
        }
        int more = h_next(c, '}');
        if (more < 0)
            return -1;
        if (!more)
            return seen == 7 && h_tensor_fits(t) ? 0 : -1;
    }
}

/* The metadata object: string values only. */
static int h_meta(hcur *c, st_file *f)
{
    GPtrArray *k = g_ptr_array_new(), *v = g_ptr_array_new();
    int rc = -1;
    if (h_byte(c, '{'))
        goto out;
    h_ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        rc = 0;
        goto out;
    }
    for (;;) {
        if (h_str(c) || h_byte(c, ':'))
            goto out;
        g_ptr_array_add(k, g_strdup(c->s->str));
        if (h_str(c))
            goto out;
        g_ptr_array_add(v, g_strdup(c->s->str));
        int more = h_next(c, '}');
        if (more < 0)
            goto out;
        if (!more)
            break;
    }
    rc = 0;
out:
    g_ptr_array_add(k, NULL);
    g_ptr_array_add(v, NULL);
    f->meta_keys = (char **)g_ptr_array_free(k, FALSE);
    f->meta_values = (char **)g_ptr_array_free(v, FALSE);
    return rc;
}

/* Undoes what a refused h_header built, for the cJSON path. */
static void h_reset(st_file *f)
{
    for (int i = 0; i < f->n_tensors; i++)
        g_free(f->tensors[i].name);
    g_clear_pointer(&f->tensors, g_free);
    g_clear_pointer(&f->by_name, g_hash_table_destroy);
    g_clear_pointer(&f->meta_keys, g_strfreev);
    g_clear_pointer(&f->meta_values, g_strfreev);
    f->n_tensors = 0;
}

/* The header TEXT[0..n) into f's tensors and metadata, or -1 for cJSON. */
static int h_header(st_file *f, const char *text, uint64_t n)
{
    GString *buf = g_string_sized_new(128);
    hcur c = {text, text + n, buf};
    int cap = 0, items = 0, have_meta = 0, rc = -1;
    if (h_byte(&c, '{'))
        goto out;
    h_ws(&c);
    if (c.p < c.end && *c.p == '}') {
        c.p++;
    } else {
        for (;;) {
            if (h_str(&c) || h_byte(&c, ':'))
                goto out;
            items++;
            if (strcmp(buf->str, "__metadata__") == 0) {
                if (have_meta++ || h_meta(&c, f))
                    goto out;
            } else {
                if (f->n_tensors == cap) {
                    cap = cap ? 2 * cap : 4;
                    f->tensors = g_renew(st_tensor, f->tensors, cap);
                }
                st_tensor *t = &f->tensors[f->n_tensors];
                memset(t, 0, sizeof *t);
                t->name = g_strdup(buf->str);
                f->n_tensors++;
                if (h_tensor(&c, t))
                    goto out;
            }
            int more = h_next(&c, '}');
            if (more < 0)
                goto out;
            if (!more)
                break;
        }
    }
    for (h_ws(&c); c.p < c.end; c.p++) /* cJSON's path allows the same */
        if (*c.p != ' ' && *c.p != '\t' && *c.p != '\n' && *c.p != '\r')
            goto out;
    if (!f->tensors)
        f->tensors = g_new0(st_tensor, 1);
    /* a duplicate name is worded by the cJSON path */
    if (items > ST_TABLE_MIN) {
        f->by_name = g_hash_table_new(g_str_hash, g_str_equal);
        for (int i = 0; i < f->n_tensors; i++)
            if (!g_hash_table_insert(f->by_name, f->tensors[i].name, &f->tensors[i]))
                goto out;
    } else {
        for (int i = 0; i < f->n_tensors; i++)
            for (int j = 0; j < i; j++)
                if (strcmp(f->tensors[i].name, f->tensors[j].name) == 0)
                    goto out;
    }
    rc = 0;
out:
    g_string_free(buf, TRUE);
    if (rc)
        h_reset(f);
    return rc;
}

/* Offsets must tile [0, last end) exactly, in sorted order, and end
 * where the file does (f->size, f->data_start set). */
static int check_tiling(st_file *f, GError **err)
{
    const char *label = f->path;
    st_tensor **order = g_new(st_tensor *, f->n_tensors > 0 ? f->n_tensors : 1);
    for (int i = 0; i < f->n_tensors; i++)
        order[i] = &f->tensors[i];
    qsort(order, (size_t)f->n_tensors, sizeof *order, cmp_begin);
    uint64_t at = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        st_tensor *t = order[i];
        if (t->begin > at && at == 0)
            FAIL("invalid header of '%s': data does not start at 0: tensor '%s' "
                 "begins at %llu", label, t->name, (unsigned long long)t->begin);
        if (t->begin > at)
            FAIL("invalid header of '%s': gap before tensor '%s': data_offsets "
                 "begin at %llu, previous tensor ends at %llu", label, t->name,
                 (unsigned long long)t->begin, (unsigned long long)at);
        if (t->begin < at)
            FAIL("invalid header of '%s': tensor '%s' overlaps the previous "
                 "tensor: begins at %llu before %llu", label, t->name,
                 (unsigned long long)t->begin, (unsigned long long)at);
        at = t->end;
    }
    if (at > f->size - f->data_start)
        FAIL("invalid header of '%s': data ends at %llu, past the end of the "
             "file (%llu bytes of data)", label,
             (unsigned long long)at,
             (unsigned long long)(f->size - f->data_start));
    if (at != f->size - f->data_start)
        FAIL("invalid header of '%s': %llu bytes after the last tensor (file "
             "has %llu bytes of data, tensors cover %llu)", label,
             (unsigned long long)(f->size - f->data_start - at),
             (unsigned long long)(f->size - f->data_start),
             (unsigned long long)at);
    g_free(order);
    return 0;
fail:
    g_free(order);
    return -1;
}

static st_file *parse_common(const char *label, const uint8_t *bytes,
                             uint64_t len, uint64_t file_size, GError **err)
{
    st_file *f = g_new0(st_file, 1);
    cJSON *root = NULL;
    f->path = g_strdup(label);
    f->size = file_size;
    if (file_size < 8 || len < 8)
        FAIL("invalid header of '%s': file of %llu bytes is too small for a "
             "header length", label, (unsigned long long)file_size);
    uint64_t n = read_le64(bytes);
    if (n > ST_MAX_HEADER)
        FAIL("invalid header of '%s': header length %llu exceeds the limit of "
             "%llu bytes", label, (unsigned long long)n, ST_MAX_HEADER);
    if (n > file_size - 8)
        FAIL("invalid header of '%s': header length %llu runs past the end of "
             "the file (%llu bytes)", label, (unsigned long long)n,
             (unsigned long long)file_size);
    if (n > len - 8)
        FAIL("invalid header of '%s': header truncated", label);
    f->data_start = 8 + n;
    const char *text = (const char *)bytes + 8;
    if (!g_utf8_validate_len(text, (gsize)n, NULL))
        FAIL("invalid header of '%s': header is not valid UTF-8", label);
    if (n == 0 || text[0] != '{')
        FAIL("invalid header of '%s': header is not a JSON object", label);
    if (h_header(f, text, n) == 0)
        goto tile;
    if (json_too_deep(text, n))
        FAIL("invalid header of '%s': header nests deeper than %d levels", label,
             ST_MAX_DEPTH);
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text, (size_t)n, &end, 0);
    if (!root)
        FAIL("invalid header of '%s': header is not valid JSON (near byte %llu)",
             label, (unsigned long long)(end ? (uint64_t)(end - text) + 8 : 8));
    for (const char *p = end; p < text + n; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            FAIL("invalid header of '%s': trailing bytes after the JSON header",
                 label);
    if (!cJSON_IsObject(root))
        FAIL("invalid header of '%s': header is not a JSON object", label);

    int count = cJSON_GetArraySize(root);
    f->tensors = g_new0(st_tensor, count > 0 ? count : 1);
    if (count > ST_TABLE_MIN)
        f->by_name = g_hash_table_new(g_str_hash, g_str_equal);
    int have_meta = 0;
    for (const cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) {
            if (have_meta++)
                FAIL("invalid header of '%s': duplicate __metadata__", label);
            if (parse_meta(f, it, err))
                goto fail;
            continue;
        }
        if (st_find(f, it->string))
            FAIL("invalid header of '%s': duplicate tensor name '%s'", label,
                 it->string);
        st_tensor *t = &f->tensors[f->n_tensors++];
        if (parse_tensor(f, it, t, err))
            goto fail;
        if (f->by_name)
            g_hash_table_insert(f->by_name, t->name, t);
    }
tile:
    if (!f->meta_keys) {
        f->meta_keys = g_new0(char *, 1);
        f->meta_values = g_new0(char *, 1);
    }
    if (check_tiling(f, err))
        goto fail;
    cJSON_Delete(root);
    return f;
fail:
    cJSON_Delete(root);
    st_close(f);
    return NULL;
}

st_file *st_parse(const char *label, const uint8_t *bytes, uint64_t len,
                  GError **err)
{
    st_file *f = parse_common(label, bytes, len, len, err);
    if (f)
        f->base = bytes;
    return f;
}

st_file *st_parse_header(const char *label, const uint8_t *hdr, uint64_t hdr_len,
                         uint64_t file_size, GError **err)
{
    return parse_common(label, hdr, hdr_len, file_size, err);
}

/* fs_open_regular_at checked the type on the open file; *st is its. The
 * fd is only mapped or pread, so O_NONBLOCK (no effect on a regular file)
 * may stay: one fcntl less per file. */
static int open_regular(fs_dir *d, const char *name, const char *path, struct stat *st,
                        GError **err)
{
    return fs_dir_open_regular(d, name, path, O_RDONLY | O_NONBLOCK, "cannot open", st, err);
}

st_file *st_open(const char *path, GError **err)
{
    return st_open_at(NULL, NULL, path, err);
}

st_file *st_open_at(fs_dir *d, const char *name, const char *path, GError **err)
{
    struct stat st;
    int fd = open_regular(d, name, path, &st, err);
    if (fd < 0)
        return NULL;
    uint64_t size = (uint64_t)st.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
            qm_set_errno(err, errno, "cannot map", path);
            close(fd);
            return NULL;
        }
    }
    close(fd);
    static const uint8_t empty[1];
    st_file *f = st_parse(path, map ? map : empty, size, err);
    if (!f) {
        if (map)
            munmap(map, size);
        return NULL;
    }
    f->map = map;
    f->map_len = size;
    f->dev = (uint64_t)st.st_dev;
    return f;
}

/* Bytes st_open_header reads at once, on the stack: the header of a file
 * of a few tensors (an expert's) fits; more would copy data nobody reads. */
#define ST_FIRST_READ 1024

st_file *st_open_header(const char *path, GError **err)
{
    return st_open_header_at(NULL, NULL, path, err);
}

st_file *st_open_header_at(fs_dir *d, const char *name, const char *path, GError **err)
{
    struct stat st;
    int fd = open_regular(d, name, path, &st, err);
    if (fd < 0)
        return NULL;
    uint64_t size = (uint64_t)st.st_size;
    st_file *f = NULL;
    if (size < 8) {
        uint8_t none[8];
        f = st_parse_header(path, none, 0, size, err);
        close(fd);
        return f;
    }
    /* One read takes the length and, for the usual header, the header too:
     * opening an OUT reads thousands of small ones. */
    uint8_t page[ST_FIRST_READ], *buf = page;
    uint64_t first = MIN(size, (uint64_t)ST_FIRST_READ);
    if (fs_pread_full(fd, buf, first, 0) != 0) {
        qm_set_errno(err, errno, "cannot read", path);
        close(fd);
        return NULL;
    }
    uint64_t n = read_le64(buf);
    if (n > ST_MAX_HEADER || n > size - 8) {
        f = st_parse_header(path, buf, 8, size, err); /* reports the rule */
    } else if (8 + n <= first) {
        f = st_parse_header(path, buf, 8 + n, size, err);
    } else {
        buf = g_malloc(8 + n);
        memcpy(buf, page, first);
        if (fs_pread_full(fd, buf + first, 8 + n - first, first) != 0)
            qm_set_errno(err, errno, "cannot read", path);
        else
            f = st_parse_header(path, buf, 8 + n, size, err);
    }
    if (f)
        f->dev = (uint64_t)st.st_dev;
    if (buf != page)
        g_free(buf);
    close(fd);
    return f;
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    if (f->by_name)
        return g_hash_table_lookup(f->by_name, name);
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

const uint8_t *st_data(const st_file *f, const st_tensor *t)
{
    return f->base ? f->base + f->data_start + t->begin : NULL;
}

const char *st_meta(const st_file *f, const char *key)
{
    for (int i = 0; f->meta_keys && f->meta_keys[i]; i++)
        if (strcmp(f->meta_keys[i], key) == 0)
            return f->meta_values[i];
    return NULL;
}

/* A tensor of f before x with x's name (a few tensors: no table). */
static int st_find_before(const st_file *f, const st_tensor *x)
{
    for (const st_tensor *t = f->tensors; t < x; t++)
        if (strcmp(t->name, x->name) == 0)
            return 1;
    return 0;
}

st_file *st_describe(const char *label, const st_tensor *t, int n, uint64_t file_size,
                     GError **err)
{
    st_file *f = g_new0(st_file, 1);
    f->path = g_strdup(label);
    f->size = file_size;
    f->tensors = g_new0(st_tensor, n > 0 ? n : 1);
    f->meta_keys = g_new0(char *, 1);
    f->meta_values = g_new0(char *, 1);
    if (n > ST_TABLE_MIN)
        f->by_name = g_hash_table_new(g_str_hash, g_str_equal);
    uint64_t last = 0;
    for (int i = 0; i < n; i++) {
        st_tensor *x = &f->tensors[f->n_tensors++];
        *x = t[i];
        x->name = g_strdup(t[i].name);
        if (!*x->name || strcmp(x->name, "__metadata__") == 0)
            FAIL("invalid header of '%s': tensor name '%s' is not allowed", label,
                 x->name);
        if ((unsigned)x->dtype >= ST_DTYPE_COUNT)
            FAIL("invalid header of '%s': tensor '%s' has unknown dtype", label,
                 x->name);
        if (x->ndim < 0 || x->ndim > ST_MAX_DIMS)
            FAIL("invalid header of '%s': tensor '%s' has %d dimensions (at most %d)",
                 label, x->name, x->ndim, ST_MAX_DIMS);
        for (int k = 0; k < x->ndim; k++)
            if (x->shape[k] < 0)
                FAIL("invalid header of '%s': tensor '%s' has a negative dimension "
                     "%lld", label, x->name, (long long)x->shape[k]);
        if (tensor_numbers(label, x, err))
            goto fail;
        if (f->by_name ? !g_hash_table_insert(f->by_name, x->name, x)
                       : st_find_before(f, x))
            FAIL("invalid header of '%s': duplicate tensor name '%s'", label, x->name);
        last = MAX(last, x->end);
    }
    /* The header's length is what the data leaves of the file: at least
     * the 8-byte length and "{}", at most the reader's limit. */
    if (file_size < last || file_size - last < 8 + 2)
        FAIL("invalid header of '%s': data ends at %llu, past the end of the file "
             "(%llu bytes) once a header is counted", label, (unsigned long long)last,
             (unsigned long long)file_size);
    f->data_start = file_size - last;
    if (f->data_start - 8 > ST_MAX_HEADER)
        FAIL("invalid header of '%s': header length %llu exceeds the limit of %llu "
             "bytes", label, (unsigned long long)(f->data_start - 8), ST_MAX_HEADER);
    if (check_tiling(f, err))
        goto fail;
    return f;
fail:
    st_close(f);
    return NULL;
}

char *st_header_diff(const st_file *want, const st_file *got, const char *said)
{
    char a[128], b[128];
    if (got->size != want->size)
        return g_strdup_printf("it is %llu bytes, %s says %llu",
                               (unsigned long long)got->size, said,
                               (unsigned long long)want->size);
    if (got->data_start != want->data_start)
        return g_strdup_printf("its header is %llu bytes, %s implies %llu",
                               (unsigned long long)got->data_start - 8, said,
                               (unsigned long long)want->data_start - 8);
    for (int i = 0; i < want->n_tensors; i++) {
        const st_tensor *w = &want->tensors[i], *g = st_find(got, w->name);
        if (!g)
            return g_strdup_printf("it has no tensor '%s', which %s lists", w->name, said);
        if (g->dtype != w->dtype || g->ndim != w->ndim || g->begin != w->begin ||
            g->end != w->end ||
            memcmp(g->shape, w->shape, sizeof g->shape[0] * (size_t)g->ndim) != 0)
            return g_strdup_printf("tensor '%s' is %s %s at [%llu, %llu], %s says %s %s "
                                   "at [%llu, %llu]", w->name, st_dtype_name(g->dtype),
                                   st_shape_str(g->shape, g->ndim, a, sizeof a),
                                   (unsigned long long)g->begin,
                                   (unsigned long long)g->end, said,
                                   st_dtype_name(w->dtype),
                                   st_shape_str(w->shape, w->ndim, b, sizeof b),
                                   (unsigned long long)w->begin,
                                   (unsigned long long)w->end);
    }
    if (got->n_tensors != want->n_tensors)
        return g_strdup_printf("it holds %d tensors, %s lists %d", got->n_tensors, said,
                               want->n_tensors);
    return NULL;
}

/* ---- writing ---- */

GByteArray *st_header_build(const st_entry *e, int n, const char *const *meta,
                            uint64_t align, uint64_t phase, GError **err)
{
    /* Written directly in the bytes cJSON_PrintUnformatted gives (one
     * header per output file: building it as cJSON objects was a fifth
     * of the extractor's own CPU on 15,000 tiny files). */
    GString *js = g_string_sized_new(256 + (gsize)n * 160);
    g_string_append(js, "{\"__metadata__\":{\"format\":\"pt\"");
    for (int i = 0; meta && meta[i] && meta[i + 1]; i += 2) {
        g_string_append_c(js, ',');
        qm_json_put_str(js, meta[i]);
        g_string_append_c(js, ':');
        qm_json_put_str(js, meta[i + 1]);
    }
    g_string_append_c(js, '}');
    GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        /* Refuse what st_parse would refuse, so we never write a file that
         * our own reader rejects (and never read past shape[]). */
        if (e[i].ndim < 0 || e[i].ndim > ST_MAX_DIMS ||
            (unsigned)e[i].dtype >= ST_DTYPE_COUNT) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "tensor '%s': bad dtype or %d dimensions", e[i].name,
                        e[i].ndim);
            goto fail;
        }
        if (strcmp(e[i].name, "__metadata__") == 0 ||
            !g_hash_table_add(seen, (gpointer)e[i].name)) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "tensor '%s': duplicate or reserved name", e[i].name);
            goto fail;
        }
        int64_t numel = st_numel(e[i].shape, e[i].ndim);
        uint64_t bits = st_dtype_bits(e[i].dtype);
        if (numel < 0 || (uint64_t)numel > UINT64_MAX / bits ||
            e[i].nbytes > UINT64_MAX / 8 ||
            (uint64_t)numel * bits != e[i].nbytes * 8) {
            g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                        "tensor '%s': %llu bytes do not match its shape and dtype",
                        e[i].name, (unsigned long long)e[i].nbytes);
            goto fail;
        }
        g_string_append_c(js, ',');
        qm_json_put_str(js, e[i].name);
        g_string_append(js, ":{\"dtype\":");
        qm_json_put_str(js, st_dtype_name(e[i].dtype));
        g_string_append(js, ",\"shape\":[");
        for (int d = 0; d < e[i].ndim; d++) {
            if (d)
                g_string_append_c(js, ',');
            qm_json_put_num(js, (double)e[i].shape[d]);
        }
        g_string_append(js, "],\"data_offsets\":[");
        qm_json_put_num(js, (double)at);
        g_string_append_c(js, ',');
        qm_json_put_num(js, (double)(at + e[i].nbytes));
        g_string_append(js, "]}");
        at += e[i].nbytes;
    }
    g_string_append_c(js, '}');
    g_hash_table_destroy(seen);
    uint64_t jlen = js->len;
    uint64_t total = 8 + jlen;
    uint64_t a = align > 8 ? align : 8;
    uint64_t want = align > 8 ? phase % a : 0;
    uint64_t pad = (want + a - total % a) % a;
    uint64_t hlen = jlen + pad;
    GByteArray *out = g_byte_array_sized_new((guint)(8 + hlen));
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(hlen >> (8 * i));
    g_byte_array_append(out, le, 8);
    g_byte_array_append(out, (const guint8 *)js->str, (guint)jlen);
    for (uint64_t i = 0; i < pad; i++)
        g_byte_array_append(out, (const guint8 *)" ", 1);
    g_string_free(js, TRUE);
    return out;
fail:
    g_hash_table_destroy(seen);
    g_string_free(js, TRUE);
    return NULL;
}

int st_write_file(const char *path, const st_entry *e, int n,
                  const void *const *data, const char *const *meta,
                  GError **err)
{
    GByteArray *h = st_header_build(e, n, meta, 0, 0, err);
    if (!h)
        return -1;
    fs_out *o = fs_out_open(path, err);
    int rc = o ? 0 : -1;
    if (!rc)
        rc = fs_out_write(o, h->data, h->len, err);
    for (int i = 0; i < n && !rc; i++)
        rc = fs_out_write(o, data[i], (size_t)e[i].nbytes, err);
    g_byte_array_free(h, TRUE);
    if (rc) {
        fs_out_abort(o);
        return -1;
    }
    return fs_out_commit(o, err);
}
