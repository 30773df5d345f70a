/* util.h - errors, number lists, JSON files and clocks shared by every module.
 *
 * Library code never exits: it returns a status and fills a GError in the
 * QM_ERROR domain. A tool's main() maps the error code to an exit code with
 * qm_exit_code() and prints the message once.
 */
#ifndef QMOE_UTIL_H
#define QMOE_UTIL_H

#include <glib.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#define QMOE_VERSION "0.1.0"

#include "base/error.h" /* QM_ERROR and its codes */

/* Exit code for an error: 1 for CHECK/STOPPED, 2 otherwise (0 for NULL). */
int qm_exit_code(const GError *err);

/* Prints "PROG: message" to stderr. */
void qm_report(const char *prog, const GError *err);

/* Sets *err from errno: "<what> '<path>': strerror". Code NOSPACE for
 * ENOSPC/EFBIG/EDQUOT, IO otherwise. Always returns -1. */
int qm_set_errno(GError **err, int errnum, const char *what, const char *path);

/* ---- number lists: "0-7,12,40-47" ---- */

/* Parses LIST into mask[0..limit-1] (1 = member). Values >= limit, reversed
 * ranges and junk are errors naming `what` ("--experts"). An empty string is
 * an error. Returns 0 or -1. */
int qm_list_parse(const char *list, int limit, uint8_t *mask, const char *what,
                  GError **err);

/* Formats a mask compactly ("0-7,12"); "" when empty. Caller frees. */
char *qm_list_format(const uint8_t *mask, int n);

/* ---- JSON ---- */

/* Reads and parses a JSON file; anything but whitespace after the value is
 * an error. Error names the file. Caller cJSON_Delete()s. */
cJSON *qm_json_load(const char *path, GError **err);

/* Integer member of an object: returns 0 and sets *out, or -1 if missing or
 * not an integral number in [lo, hi]. */
int qm_json_int(const cJSON *obj, const char *key, int64_t lo, int64_t hi,
                int64_t *out);

/* A number that is an exact non-negative integer below 2^53 (JSON cannot
 * carry more through a double). Returns 1 and sets *out, else 0. */
int qm_json_uint(const cJSON *num, uint64_t *out);

/* JSON written or read by hand, without cJSON: base/json.h. */

/* ---- clocks ---- */

double qm_now(void);            /* wall clock, seconds since the epoch */
double qm_monotonic(void);      /* monotonic seconds */
char *qm_iso_time(double t);    /* "2026-11-26T22:41:25Z"; caller frees */

/* Human sizes: "9.4 MB" (decimal units; "1.0 MB", never "1000.0 kB").
 * Writes into buf, returns buf. */
char *qm_human_bytes(uint64_t n, char *buf, size_t cap);

/* Lowercase hex of n bytes into out (2n+1 chars). */
void qm_hex(const uint8_t *bytes, size_t n, char *out);

#endif
