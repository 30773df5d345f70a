# devtools.sh - what HACKING.md promises a developer: a unit test program
# runs one named test; objects know their headers (-MMD -MP).
. "$(dirname "$0")/lib.sh"
plan 5
U="$QMOE_BUILD/tests/test_util"
run "$U" test_list_parse
expect one-test 0 "ok test_list_parse" stdout
[ "$out" = "ok test_list_parse" ] && ok one-test-only || fail one-test-only "$out"
run "$U" test_no_such_thing
expect one-test-unknown 2 "no test named 'test_no_such_thing' in this program"
# all of them without an argument
run "$U"
[ "$rc" = 0 ] && [ "$(grep -c '^ok ' <<<"$out")" -gt 10 ] && ok all-tests || fail all-tests "exit $rc: $out"
d="$QMOE_BUILD/samples/mksample_like.d"
grep -q 'samples/mksample_like.h' "$d" 2>/dev/null && grep -q 'common/format/safetensors.h' "$d" &&
    ok header-dependencies || fail header-dependencies "$(cat "$d" 2>&1 | head -3)"
