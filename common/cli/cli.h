/* cli.h - what every qmoe tool's main() shares and the library does not:
 * command-line parsing helpers. Linked into the tools only (libqmoe-cli.a).
 */
#ifndef QMOE_CLI_H
#define QMOE_CLI_H

#include "base/util.h"

/* GLib's option parser does not take a value glued to a short option
 * ("-j8"). Returns a copy of argv with "-XVALUE" split into "-X" "VALUE"
 * for each X in `letters` (options that take a value); *argc is updated.
 * The copy lives until the program ends (it backs the parsed strings). */
char **qm_argv_split_short(int *argc, char **argv, const char *letters);

#endif
