# install.sh - make install into a temporary DESTDIR and PREFIX: only the
# public headers (each compiles on its own), qmoe.pc with which a small
# program builds against the installed libqmoe and runs the coherent
# sample, a man page per tool that man -l renders, and installed tools that
# find their data in PREFIX/share/qmoe.
. "$(dirname "$0")/lib.sh"
plan 22
D=$T/dest P=/opt/qmoe
san=(); [ "$(basename "$QMOE_BUILD")" = build-san ] && san=(SAN=1)
inst() { run make -s -C "$QMOE_ROOT" install "${san[@]}" BUILD="$QMOE_BUILD" "$@"; }
# staged (DESTDIR) and real (PREFIX): the same files, all below DESTDIR/PREFIX
inst DESTDIR="$D" PREFIX=$P
expect install_destdir_runs 0 || exit 0
inst PREFIX="$T/prefix"
expect install_runs 0 || exit 0
I=$T/prefix
[ "$(cd "$D$P" && find . | sort)" = "$(cd "$I" && find . | sort)" ] &&
    ok install_destdir_same_files || fail install_destdir_same_files "$(diff <(cd "$D$P" && find . | sort) <(cd "$I" && find . | sort) | head -5)"
grep -q "^prefix=$P\$" "$D$P/lib/pkgconfig/qmoe.pc" && grep -q "^prefix=$I\$" "$I/lib/pkgconfig/qmoe.pc" &&
    ok install_pc_prefix || fail install_pc_prefix "$(grep ^prefix "$D$P/lib/pkgconfig/qmoe.pc" "$I/lib/pkgconfig/qmoe.pc")"
for f in bin/qmoe-extract bin/qmoe-status bin/qmoe-verify bin/qmoe-run bin/qmoe-mksample bin/qmoe-pack \
         lib/libqmoe.a lib/pkgconfig/qmoe.pc share/qmoe/prompts share/qmoe/reference.txt \
         share/qmoe/corpus.jsonl include/qmoe/base/error.h include/qmoe/model/model.h \
         include/qmoe/text/tokenizer.h include/qmoe/format/safetensors.h \
         include/qmoe/outdir/manifest.h; do
    [ -f "$I/$f" ] || { fail install_files "$f missing"; bad=1; }
done
[ ${bad:-0} = 0 ] && ok install_files
internal=$(cd "$I/include/qmoe" && ls base/util.h base/fs.h model/model_impl.h cli 2>/dev/null)
[ -z "$internal" ] && ok install_no_internal_headers || fail install_no_internal_headers "$internal"
[ -z "$(find "$D" -path "$D$P" -prune -o -print | grep -v "^$D\$" | grep -v "^$D/opt\$")" ] &&
    ok install_destdir_only || fail install_destdir_only "files outside DESTDIR/PREFIX"

export PKG_CONFIG_PATH=$I/lib/pkgconfig
pc() { pkg-config "$@"; }
run pc --modversion qmoe
expect install_pc_version 0 "$(qmoe-run --version | awk '{print $2}')" stdout
cflags=$(pc --cflags qmoe) libs=$(pc --libs qmoe)
[[ "$cflags" == *"-I$I/include/qmoe"* && "$libs" == *"-L$I/lib"*"-lqmoe"* ]] &&
    ok install_pc_flags || fail install_pc_flags "$cflags | $libs"
# a header that needs another must include it: each compiles alone
bad=0
for h in $(cd "$I/include/qmoe" && find . -name '*.h' | sed 's|^\./||' | sort); do
    echo "#include \"$h\"" | ${CC:-cc} -std=c11 -fsyntax-only -Wall -Werror $cflags -x c - \
        >"$T/h.err" 2>&1 || { bad=1; fail install_header_alone "$h: $(head -3 "$T/h.err")"; }
done
[ $bad = 0 ] && ok install_headers_alone

cat >"$T/prog.c" <<'C'
#include <stdio.h>
#include "base/error.h"
#include "model/model.h"
#include "text/tokenizer.h"
int main(int argc, char **argv) {   /* greedy continuation of argv[2] */
    GError *e = NULL; model_opts o = {0}; model *m = model_load(argv[1], &o, &e);
    tok_t *t = m ? tok_load(argv[1], &e) : NULL; GArray *a = g_array_new(0, 0, 4);
    int out[16], n = 0, rc = 0; char *s = NULL;
    if (!t || tok_encode(t, argv[2], strlen(argv[2]), 0, a, &e) || model_generate(m,
        (int *)(void *)a->data, (int)a->len, 16, NULL, NULL, out, &n, NULL, &e)) {
        fprintf(stderr, "%s (%s)\n", e->message, e->code == QM_ERR_IO ? "io" : "other"); rc = 2;
    } else printf("%s\n", s = tok_decode(t, (int32_t *)out, (size_t)n, NULL));
    g_free(s); g_clear_error(&e); g_array_free(a, 1); tok_free(t); model_free(m); return rc + argc - 3; }
C
sanflags=(); [ ${#san[@]} -gt 0 ] && sanflags=(-fsanitize=address,undefined)
run ${CC:-cc} -std=c11 -D_GNU_SOURCE "${sanflags[@]}" -o "$T/prog" "$T/prog.c" $cflags $libs
expect install_prog_builds 0 || exit 0
run "$I/bin/qmoe-mksample" --coherent "$T/sample"
expect install_mksample 0
run "$T/prog" "$T/sample" "The router sends every token"
expect install_prog_runs 0 " to two experts chosen by softmax scores." stdout
run "$T/prog" "$T/none" "x"
expect install_prog_error 2 "(io)"
# the installed gate finds its reference text and prompts in PREFIX/share/qmoe
"$I/bin/qmoe-extract" --no-progress "$T/sample" "$T/out" >/dev/null 2>&1
run env -u QMOE_DATA "$I/bin/qmoe-verify" --coherence "$T/out"
[[ "$out" == *"$I/share/qmoe/reference.txt"* ]] && ok install_data_found ||
    fail install_data_found "$(printf %s "$out$err" | head -c 400)"

for tool in qmoe-extract qmoe-status qmoe-verify qmoe-run qmoe-mksample qmoe-pack; do
    page=$I/share/man/man1/$tool.1
    MANWIDTH=80 man -l "$page" >"$T/man.txt" 2>"$T/man.err"; rc=$?
    if [ $rc = 0 ] && [ ! -s "$T/man.err" ] && grep -q "^NAME" "$T/man.txt" &&
       grep -q "^       $tool  *- " "$T/man.txt" && grep -q -- "--version" "$T/man.txt" &&
       grep -q "^SEE ALSO" "$T/man.txt"; then
        ok "install_man_$tool"
    else
        fail "install_man_$tool" "exit $rc: $(head -c 300 "$T/man.err") $(head -5 "$T/man.txt")"
    fi
done
grep -q -- "--router-stats" <(MANWIDTH=80 man -l "$I/share/man/man1/qmoe-run.1") &&
    ok install_man_run_router_stats || fail install_man_run_router_stats "not in qmoe-run(1)"
