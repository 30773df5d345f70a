/* util.c - see util.h */
#include "base/util.h"
#include "base/fs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

G_DEFINE_QUARK(qmoe-error-quark, qm_error)

int qm_exit_code(const GError *err)
{
    if (!err)
        return 0;
    if (err->domain == QM_ERROR &&
        (err->code == QM_ERR_CHECK || err->code == QM_ERR_STOPPED))
        return 1;
    return 2;
}

void qm_report(const char *prog, const GError *err)
{
    if (err)
        fprintf(stderr, "%s: %s\n", prog, err->message);
}

int qm_set_errno(GError **err, int errnum, const char *what, const char *path)
{
    int code = (errnum == ENOSPC || errnum == EFBIG || errnum == EDQUOT)
                   ? QM_ERR_NOSPACE : QM_ERR_IO;
    const char *why = errnum == ENOSPC ? "no space left on device"
                      : errnum == EFBIG ? "file too large (size limit reached)"
                                        : g_strerror(errnum);
    g_set_error(err, QM_ERROR, code, "%s '%s': %s", what, path, why);
    return -1;
}

/* ---- number lists ---- */

static int parse_num(const char **p, long *out)
{
    char *end;
    if (!g_ascii_isdigit(**p))
        return -1;
    errno = 0;
    long v = strtol(*p, &end, 10);
    if (errno)
        return -1;
    *p = end;
    *out = v;
    return 0;
}

int qm_list_parse(const char *list, int limit, uint8_t *mask, const char *what,
                  GError **err)
{
    memset(mask, 0, (size_t)limit);
    const char *p = list;
    if (!p || !*p)
        goto bad;
    for (;;) {
        long a, b;
        while (*p == ' ')
            p++;
        if (parse_num(&p, &a))
            goto bad;
        b = a;
        if (*p == '-') {
            p++;
            if (parse_num(&p, &b))
                goto bad;
        }
        if (b < a) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "%s '%s': range %ld-%ld is reversed", what, list, a, b);
            return -1;
        }
        if (b >= limit) {
            g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                        "%s '%s': %ld is out of range (0-%d)", what, list, b,
                        limit - 1);
            return -1;
        }
        for (long i = a; i <= b; i++)
            mask[i] = 1;
        while (*p == ' ')
            p++;
        if (*p == '\0')
            return 0;
        if (*p != ',')
            goto bad;
        p++;
    }
bad:
    g_set_error(err, QM_ERROR, QM_ERR_USAGE,
                "%s '%s': expected a list such as 0-7,12,40-47", what,
                list ? list : "");
    return -1;
}

char *qm_list_format(const uint8_t *mask, int n)
{
    GString *s = g_string_new(NULL);
    for (int i = 0; i < n; i++) {
        if (!mask[i])
            continue;
        int j = i;
        while (j + 1 < n && mask[j + 1])
            j++;
        if (s->len)
            g_string_append_c(s, ',');
        if (j == i)
            g_string_append_printf(s, "%d", i);
        else
            g_string_append_printf(s, "%d-%d", i, j);
        i = j;
    }
    return g_string_free(s, FALSE);
}

/* ---- JSON ---- */

cJSON *qm_json_load(const char *path, GError **err)
{
    char *text = NULL;
    size_t len = 0;
    if (fs_read_file(path, "cannot read", &text, &len, err) != 0)
        return NULL;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!j) {
        size_t off = end ? (size_t)(end - text) : 0;
        g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                    "cannot parse '%s': invalid JSON near byte %zu", path, off);
    } else {
        /* cJSON stops after the first value; anything but whitespace after
         * it means the file is not the JSON document it claims to be. */
        for (const char *p = end; p < text + len; p++)
            if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
                g_set_error(err, QM_ERROR, QM_ERR_FORMAT,
                            "cannot parse '%s': trailing bytes after the JSON "
                            "value at byte %zu", path, (size_t)(p - text));
                cJSON_Delete(j);
                j = NULL;
                break;
            }
    }
    g_free(text);
    return j;
}

int qm_json_uint(const cJSON *num, uint64_t *out)
{
    if (!cJSON_IsNumber(num))
        return 0;
    double d = num->valuedouble;
    if (!(d >= 0 && d < 9007199254740992.0) || d != (double)(uint64_t)d)
        return 0;
    *out = (uint64_t)d;
    return 1;
}

int qm_json_int(const cJSON *obj, const char *key, int64_t lo, int64_t hi,
                int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    /* (double)INT64_MAX rounds up to 2^63, so compare against the exact
     * powers of two before casting (casting 2^63 is undefined), then
     * against lo and hi as integers. */
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0) ||
        d != (double)(int64_t)d)
        return -1;
    int64_t i = (int64_t)d;
    if (i < lo || i > hi)
        return -1;
    *out = i;
    return 0;
}

/* ---- clocks and formatting ---- */

double qm_now(void)
{
    return (double)g_get_real_time() / 1e6;
}

double qm_monotonic(void)
{
    return (double)g_get_monotonic_time() / 1e6;
}

char *qm_iso_time(double t)
{
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    char buf[32];
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return g_strdup(buf);
}

char *qm_human_bytes(uint64_t n, char *buf, size_t cap)
{
    static const char *unit[] = {"B", "kB", "MB", "GB", "TB", "PB"};
    double v = (double)n;
    int u = 0;
    /* 999.95 and up would print as "1000.0" in the smaller unit. */
    while (u < 5 && (u == 0 ? v >= 1000 : v >= 999.95)) {
        v /= 1000;
        u++;
    }
    if (u == 0)
        snprintf(buf, cap, "%llu B", (unsigned long long)n);
    else
        snprintf(buf, cap, "%.1f %s", v, unit[u]);
    return buf;
}

void qm_hex(const uint8_t *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}
