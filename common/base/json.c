/* json.c - see json.h */
#include "base/json.h"

#include <float.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void qm_json_put_num(GString *s, double d)
{
    char b[32];
    if (isnan(d) || isinf(d)) {
        g_string_append(s, "null");
        return;
    }
    if (d >= INT_MIN && d <= INT_MAX && d == (double)(int)d) {
        /* "%d" by hand: printf is most of the cost of a journal line */
        long long v = (int)d;
        char *e = b + sizeof b, *p = e;
        unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
        do
            *--p = (char)('0' + u % 10);
        while (u /= 10);
        if (v < 0)
            *--p = '-';
        g_string_append_len(s, p, e - p);
        return;
    }
    snprintf(b, sizeof b, "%1.15g", d);
    double back = strtod(b, NULL);
    if (fabs(back - d) > fmax(fabs(back), fabs(d)) * DBL_EPSILON)
        snprintf(b, sizeof b, "%1.17g", d);
    /* as cJSON: every byte equal to the locale's point becomes '.' */
    char dp = localeconv()->decimal_point[0];
    if (dp && dp != '.')
        for (char *c = b; *c; c++)
            if (*c == dp)
                *c = '.';
    g_string_append(s, b);
}

void qm_json_put_str_len(GString *s, const char *v, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    g_string_append_c(s, '"');
    const unsigned char *c = (const unsigned char *)v, *end = c + len, *run = c;
    for (; c < end; c++) {
        if (*c >= 32 && *c != '"' && *c != '\\')
            continue; /* runs of plain bytes go in at once */
        g_string_append_len(s, (const char *)run, (gssize)(c - run));
        run = c + 1;
        switch (*c) {
        case '"': g_string_append(s, "\\\""); break;
        case '\\': g_string_append(s, "\\\\"); break;
        case '\b': g_string_append(s, "\\b"); break;
        case '\f': g_string_append(s, "\\f"); break;
        case '\n': g_string_append(s, "\\n"); break;
        case '\r': g_string_append(s, "\\r"); break;
        case '\t': g_string_append(s, "\\t"); break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[*c >> 4], hex[*c & 15]};
            g_string_append_len(s, u, 6);
        }
        }
    }
    g_string_append_len(s, (const char *)run, (gssize)(c - run));
    g_string_append_c(s, '"');
}

void qm_json_put_str(GString *s, const char *v)
{
    qm_json_put_str_len(s, v, strlen(v));
}

/* Four hex digits at p (before end) into *v: 0, or -1. */
static int hex4(const char *p, const char *end, unsigned *v)
{
    if (end - p < 4)
        return -1;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int d = g_ascii_xdigit_value(p[i]);
        if (d < 0)
            return -1;
        *v = *v << 4 | (unsigned)d;
    }
    return 0;
}

const char *qm_json_get_str(const char *p, const char *end, GString *out,
                            const char **why)
{
    if (p >= end || *p != '"') {
        *why = "expected a JSON string";
        return NULL;
    }
    const char *run = ++p;
    for (;; p++) {
        if (p >= end) {
            *why = "the JSON string is not closed";
            return NULL;
        }
        unsigned char c = (unsigned char)*p;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        if (out)
            g_string_append_len(out, run, p - run);
        run = p + 1;
        if (c == '"')
            return p + 1;
        if (c < 0x20) {
            *why = "a control character inside a JSON string must be escaped";
            return NULL;
        }
        if (++p >= end) {
            *why = "the JSON string is not closed";
            return NULL;
        }
        char ch = *p;
        unsigned u, lo;
        switch (ch) {
        case '"': case '\\': case '/': break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u':
            if (hex4(p + 1, end, &u) != 0) {
                *why = "\\u needs four hex digits";
                return NULL;
            }
            p += 4;
            if (u >= 0xDC00 && u <= 0xDFFF) {
                *why = "a lone low surrogate in a \\u escape";
                return NULL;
            }
            if (u >= 0xD800 && u <= 0xDBFF) {
                if (end - p < 7 || p[1] != '\\' || p[2] != 'u' || hex4(p + 3, end, &lo) != 0 ||
                    lo < 0xDC00 || lo > 0xDFFF) {
                    *why = "a high surrogate in a \\u escape without its low half";
                    return NULL;
                }
                p += 6;
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (out) {
                if (u == 0)
                    g_string_append_c(out, '\0');
                else
                    g_string_append_unichar(out, (gunichar)u);
            }
            run = p + 1;
            continue;
        default:
            *why = "an unknown escape in a JSON string";
            return NULL;
        }
        if (out)
            g_string_append_c(out, ch);
        run = p + 1;
    }
}

void qm_jcur_ws(qm_jcur *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

int qm_jcur_skip_str(qm_jcur *c, int *plain)
{
    if (c->p >= c->end || *c->p != '"')
        return -1;
    if (plain)
        *plain = 1;
    for (c->p++; c->p < c->end; c->p++) {
        if (*c->p == '\\') {
            if (plain)
                *plain = 0;
            if (c->p + 1 >= c->end)
                return -1;
            c->p++;
        } else if (*c->p == '"') {
            c->p++;
            return 0;
        }
    }
    return -1;
}

int qm_jcur_skip(qm_jcur *c)
{
    qm_jcur_ws(c);
    if (c->p >= c->end)
        return -1;
    if (*c->p == '"')
        return qm_jcur_skip_str(c, NULL);
    if (*c->p != '{' && *c->p != '[') {
        const char *at = c->p;
        while (c->p < c->end && !strchr(",}] \t\n\r", *c->p))
            c->p++;
        return c->p > at ? 0 : -1;
    }
    int depth = 0;
    while (c->p < c->end) {
        char ch = *c->p;
        if (ch == '"') {
            if (qm_jcur_skip_str(c, NULL))
                return -1;
            continue;
        }
        c->p++;
        if (ch == '{' || ch == '[')
            depth++;
        else if ((ch == '}' || ch == ']') && --depth == 0)
            return 0;
    }
    return -1;
}

int qm_jcur_next(qm_jcur *c, char close)
{
    qm_jcur_ws(c);
    if (c->p < c->end && (*c->p == ',' || *c->p == close))
        return *c->p++ == ',';
    return -1;
}
