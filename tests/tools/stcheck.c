/* stcheck - parse safetensors files with the strict reader (a test tool).
 *
 *   stcheck FILE...
 *
 * Prints one line per file that fails and exits 1 if any did; else prints
 * "ok N files" and exits 0.
 */
#include "format/safetensors.h"
#include "base/util.h"

#include <stdio.h>

int main(int argc, char **argv)
{
    int bad = 0;
    for (int i = 1; i < argc; i++) {
        GError *err = NULL;
        st_file *f = st_open(argv[i], &err);
        if (!f) {
            printf("%s\n", err->message);
            g_error_free(err);
            bad++;
        }
        st_close(f);
    }
    if (!bad)
        printf("ok %d files\n", argc - 1);
    return bad ? 1 : 0;
}
