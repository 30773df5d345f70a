/* json.h - JSON strings and numbers written and read by hand.
 *
 * The one writer and the one string reader for the places that do not go
 * through cJSON: lines streamed without building a tree (journal, qmoe.json's
 * files, safetensors headers, the index's two-space layout) and texts that may
 * hold NUL bytes, which cJSON's strings cannot (it ends a string at "\u0000").
 *
 * Writer: the bytes cJSON_PrintUnformatted gives. '"' and '\\' escaped,
 * \b \f \n \r \t as such, the other bytes below 0x20 (NUL included, when the
 * length is given) as \u00XX; every other byte, 0x7f and bytes of UTF-8 or
 * not, copied as it is. The writer does not check UTF-8: what it was given
 * reads back byte for byte (through cJSON or qm_json_get_str), and a caller
 * that must give other programs strict JSON passes valid UTF-8.
 *
 * Reader: one string literal, RFC 8259 escapes, \u surrogate pairs joined
 * into one code point (UTF-8 out), \u0000 a NUL byte; refused: an unknown
 * escape, fewer than four hex digits, a lone or reversed surrogate, a raw
 * byte below 0x20, no closing quote. Bytes from 0x20 up are copied as they
 * are, like the writer, so the two round-trip any byte string.
 */
#ifndef QMOE_JSON_H
#define QMOE_JSON_H

#include <glib.h>
#include <stddef.h>

/* Appends a number as cJSON prints it: an integer in int range as such, else
 * 15 significant digits if they read back as the same double, else 17; NaN
 * and infinity as null. */
void qm_json_put_num(GString *s, double d);

/* Appends LEN bytes of V as a quoted JSON string (rules above). */
void qm_json_put_str_len(GString *s, const char *v, size_t len);

/* The same for a NUL-terminated V. */
void qm_json_put_str(GString *s, const char *v);

/* Reads the string literal whose opening quote is at P (P < END) and appends
 * its decoded bytes to OUT (OUT may be NULL: then it is only checked).
 * Returns the byte after the closing quote, or NULL with *WHY set to a
 * static phrase naming the problem ("an unknown escape in a JSON string"). */
const char *qm_json_get_str(const char *p, const char *end, GString *out,
                            const char **why);

/* ---- scanning without a tree ----
 * A cursor over JSON text of which a few fields are read and the rest is
 * stepped over: qmoe's own big files (the journal's records, qmoe.json's
 * files), where a cJSON tree costs more than the whole job. The steps
 * check what they read, not the grammar of what they skip: a caller that
 * meets something it does not understand falls back to cJSON. */
typedef struct {
    const char *p, *end;
} qm_jcur;

/* Steps over white space. */
void qm_jcur_ws(qm_jcur *c);

/* At an opening quote: steps past the closing one without decoding;
 * *plain (may be NULL) is set to 1 when the string has no escapes.
 * -1 when not at a quote or the string does not end. */
int qm_jcur_skip_str(qm_jcur *c, int *plain);

/* Steps over any value after white space: a string; a scalar, up to the
 * next ',', '}', ']' or white space (at least one byte); an object or
 * array, by counting brackets outside strings. -1 when none ends. */
int qm_jcur_skip(qm_jcur *c);

/* After a member or element (white space allowed first): 1 past a comma,
 * 0 past `close`, -1 at anything else. */
int qm_jcur_next(qm_jcur *c, char close);

#endif
