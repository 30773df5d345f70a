/* cohtok - token ids for the shell tests, through libqmoe's tokenizer.
 *
 *   cohtok encode MODEL            stdin lines -> comma-separated ids per line
 *   cohtok encode-all MODEL        all of stdin as one text -> ids on one line
 *   cohtok decode MODEL            stdin lines of comma-separated ids -> text
 *   cohtok prompts MODEL FILE      FILE: JSON lines {"prompt","expected",...};
 *                                  prints "PROMPT_IDS EXPECTED_IDS" per line
 *
 * Used until qmoe-run tokenizes text itself. Exit 0, or 2 with a message.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/tokenizer.h"
#include "base/util.h"

static void die(const char *what, GError *err)
{
    fprintf(stderr, "cohtok: %s%s%s\n", what, err ? ": " : "", err ? err->message : "");
    exit(2);
}

static void print_ids(const char *text, tok_t *tok)
{
    GError *err = NULL;
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    if (tok_encode(tok, text, strlen(text), 0, ids, &err))
        die("cannot encode", err);
    for (guint i = 0; i < ids->len; i++)
        printf("%s%d", i ? "," : "", g_array_index(ids, int32_t, i));
    g_array_free(ids, TRUE);
}

int main(int argc, char **argv)
{
    GError *err = NULL;
    if (argc < 3)
        die("usage: cohtok encode|encode-all|decode|prompts MODEL [FILE]", NULL);
    tok_t *tok = tok_load(argv[2], &err);
    if (!tok)
        die("cannot load the tokenizer", err);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    if (!strcmp(argv[1], "encode")) {
        while ((n = getline(&line, &cap, stdin)) > 0) {
            if (line[n - 1] == '\n')
                line[n - 1] = 0;
            print_ids(line, tok);
            putchar('\n');
        }
    } else if (!strcmp(argv[1], "encode-all")) {
        GString *g = g_string_new(NULL);
        char buf[4096];
        size_t k;
        while ((k = fread(buf, 1, sizeof buf, stdin)) > 0)
            g_string_append_len(g, buf, (gssize)k);
        print_ids(g->str, tok);
        putchar('\n');
        g_string_free(g, TRUE);
    } else if (!strcmp(argv[1], "decode")) {
        while ((n = getline(&line, &cap, stdin)) > 0) {
            GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
            for (char *p = line, *end; *p && *p != '\n'; p = *end ? end + 1 : end) {
                int32_t id = (int32_t)strtol(p, &end, 10);
                if (end == p)
                    die("bad id list", NULL);
                g_array_append_val(ids, id);
            }
            size_t len;
            char *text = tok_decode(tok, (const int32_t *)ids->data, ids->len, &len);
            fwrite(text, 1, len, stdout);
            putchar('\n');
            g_free(text);
            g_array_free(ids, TRUE);
        }
    } else if (!strcmp(argv[1], "prompts") && argc == 4) {
        FILE *f = fopen(argv[3], "r");
        if (!f)
            die("cannot open the prompt file", NULL);
        while ((n = getline(&line, &cap, f)) > 0) {
            cJSON *j = cJSON_Parse(line);
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "prompt");
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "expected");
            if (!cJSON_IsString(p) || !cJSON_IsString(e))
                die("a prompt line lacks prompt or expected", NULL);
            print_ids(p->valuestring, tok);
            putchar(' ');
            print_ids(e->valuestring, tok);
            putchar('\n');
            cJSON_Delete(j);
        }
        fclose(f);
    } else {
        die("usage: cohtok encode|encode-all|decode|prompts MODEL [FILE]", NULL);
    }
    free(line);
    tok_free(tok);
    return 0;
}
