/* cli.h - what every qmoe tool's main() shares and the library does not:
 * option parsing and the --json printer. Linked into the tools only
 * (libqmoe-cli.a).
 */
#ifndef QMOE_CLI_H
#define QMOE_CLI_H

#include <cjson/cJSON.h>
#include <glib.h>

#include "base/util.h"

/* GLib's option parser does not take a value glued to a short option
 * ("-j8"). Returns a copy of argv with "-XVALUE" split into "-X" "VALUE"
 * for each X in `letters` (options that take a value); *argc is updated.
 * The copy lives until the program ends (it backs the parsed strings). */
char **qm_argv_split_short(int *argc, char **argv, const char *letters);

/* The one JSON printer of the tools' --json output: the document on
 * stdout, indented (pretty) or on one line, then a newline; deletes it. */
void qm_json_out(cJSON *doc, int pretty);

/* The one wording of a usage error, on stderr:
 *   PROG: MESSAGE
 *   Try 'PROG --help' for more information.
 * Returns 2 (DESIGN.md: bad options), for main() to return. */
int qm_usage_error(const char *prog, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* The tools' option parsing: splits glued short options of `letters`
 * (qm_argv_split_short; NULL none) and parses with GLib. *argv is
 * replaced by the copy. On failure *err is set (the tool words the usage
 * error with qm_usage_error). */
int qm_options_parse(GOptionContext *ctx, int *argc, char ***argv, const char *letters,
                     GError **err);

#endif
