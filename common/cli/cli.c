/* cli.c - see cli.h */
#include "cli/cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void qm_json_out(cJSON *doc, int pretty)
{
    char *text = pretty ? cJSON_Print(doc) : cJSON_PrintUnformatted(doc);
    printf("%s\n", text ? text : "null");
    cJSON_free(text);
    cJSON_Delete(doc);
}

int qm_usage_error(const char *prog, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry '%s --help' for more information.\n", prog);
    va_end(ap);
    return 2;
}

int qm_options_parse(GOptionContext *ctx, int *argc, char ***argv, const char *letters,
                     GError **err)
{
    if (letters && *letters)
        *argv = qm_argv_split_short(argc, *argv, letters);
    return g_option_context_parse(ctx, argc, argv, err) ? 0 : -1;
}

char **qm_argv_split_short(int *argc, char **argv, const char *letters)
{
    GPtrArray *out = g_ptr_array_new();
    int rest = 0; /* after "--" everything is an operand */
    for (int i = 0; i < *argc; i++) {
        const char *a = argv[i];
        if (i > 0 && !rest && a[0] == '-' && a[1] && a[1] != '-' && a[2] &&
            strchr(letters, a[1])) {
            g_ptr_array_add(out, g_strndup(a, 2));
            g_ptr_array_add(out, g_strdup(a + 2));
            continue;
        }
        rest |= i > 0 && strcmp(a, "--") == 0;
        g_ptr_array_add(out, g_strdup(a));
    }
    *argc = (int)out->len;
    g_ptr_array_add(out, NULL);
    /* The strings live as long as the program: option values point into
     * them, and the option parser drops parsed ones from the vector it is
     * given, so a second array keeps every one reachable (LeakSanitizer
     * would otherwise report them at exit). */
    static char **all, **volatile vec; /* volatile: never read, but must stay */
    g_free(all);
    all = g_memdup2(out->pdata, out->len * sizeof(char *));
    vec = (char **)g_ptr_array_free(out, FALSE);
    return vec;
}
