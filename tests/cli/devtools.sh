# devtools.sh - what HACKING.md promises a developer: a unit test program
# runs one named test; objects know their headers (-MMD -MP); the forward
# pass's benchmark program (run_prefill.sh's, beside llama-bench) runs.
. "$(dirname "$0")/lib.sh"
plan 9
U="$QMOE_BUILD/tests/test_util"
run "$U" test_list_parse
expect one-test 0 "ok test_list_parse" stdout
[ "$out" = "ok test_list_parse" ] && ok one-test-only || fail one-test-only "$out"
run "$U" test_no_such_thing
expect one-test-unknown 2 "no test named 'test_no_such_thing' in this program"
# all of them without an argument
run "$U"
[ "$rc" = 0 ] && [ "$(grep -c '^ok ' <<<"$out")" -gt 10 ] && ok all-tests || fail all-tests "exit $rc: $out"
# fwd_bench: two speeds (tokens/s of a prompt and of decode), both > 0
B="$QMOE_BUILD/tests/tools/fwd_bench"
run "$B" "$FIX/qwen3moe-tiny/qwen3moe" 2 8 4 2
[ "$rc" = 0 ] && awk 'NF == 2 && $1 > 0 && $2 > 0 { n++ } END { exit n != 1 }' <<<"$out" &&
    ok fwd-bench || fail fwd-bench "exit $rc: $out $err"
run "$B" "$FIX/qwen3moe-tiny/qwen3moe" 2 0 4 2
expect fwd-bench-usage 2 "must be >= 1"
run "$B" "$T/none" 2 8 4 2
expect fwd-bench-no-model 1 "$T/none"
d="$QMOE_BUILD/samples/mksample_like.d"
grep -q 'samples/mksample_like.h' "$d" 2>/dev/null && grep -q 'common/format/safetensors.h' "$d" &&
    ok header-dependencies || fail header-dependencies "$(cat "$d" 2>&1 | head -3)"
# every source path a comment or document names exists (seven named files
# from before the folder split, common/ without its subfolder)
cd "$QMOE_ROOT"
if [ -d .git ]; then files=$(git ls-files '*.c' '*.h' '*.md' '*.sh' '*.mk' Makefile)
else files=$(find . -name '*.[ch]' -o -name '*.md' -o -name '*.sh' -o -name '*.mk' -o -name Makefile); fi
stale=$(grep -ohE "\b(common|extract|verify|monitor|samples|tests)/[A-Za-z0-9_/.-]*[A-Za-z0-9_]\.(c|h|sh|md|py)\b" $files |
    sort -u | grep -vx 'tests/cli/name.sh' | while read -r p; do [ -e "$p" ] || echo "$p"; done)
[ -z "$stale" ] && ok paths-named-exist || fail paths-named-exist "$(echo $stale)"
cd - >/dev/null
