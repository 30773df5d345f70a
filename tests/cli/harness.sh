#!/usr/bin/env bash
# tests/run.sh itself: a script's plan is enforced (one that stops early, or
# runs more checks than planned, or has no plan, fails), skip_rest passes
# with fewer checks, a missing program fails the script, and UPDATE_PLAN=1
# rewrites the plan of a passing script only. Fake scripts in a directory of
# their own (QMOE_CLI_DIR), run by a nested tests/run.sh.
. "$(dirname "$0")/lib.sh"
plan 12
mk() { # NAME BODY...: a fake script $T/cli-NAME/hx.sh, alone in its directory
    local n=$1; shift
    mkdir -p "$T/cli-$n"
    { printf '. "%s/tests/cli/lib.sh"\n' "$QMOE_ROOT"; printf '%s\n' "$@"; } >"$T/cli-$n/hx.sh"
}
nested() { # NAME [ENV...]: the nested harness on that script (TESTS=hx: no unit test)
    local n=$1; shift
    run env -u UPDATE_PLAN "$@" QMOE_CLI_DIR="$T/cli-$n" QMOE_TMP="$T/tmp-$n" TESTS=hx bash "$QMOE_ROOT/tests/run.sh"
}
mk good 'plan 2' 'ok one' 'ok two'
mk early 'plan 3' 'ok one' 'ok two' 'exit 0'
mk more 'plan 1' 'ok one' 'ok two'
mk noplan 'ok one'
mk rest 'plan 5' 'ok one' 'skip_rest mounts "not root"' 'exit 0'
mk restmore 'plan 1' 'ok one' 'ok two' 'skip_rest mounts "not root"'
mk failed 'plan 2' 'ok one' 'fail two "evidence"'

nested good;     expect harness-plan-met 0 "2 passed, 0 failed" stdout
nested early;    expect harness-stopped-early-fails 1 "planned 3 checks, ran 2" stdout
nested more;     expect harness-more-than-planned-fails 1 "planned 1 checks, ran 2" stdout
nested noplan;   expect harness-no-plan-fails 1 "no 'plan N' line" stdout
nested rest;     expect harness-skip-rest-passes 0 "1 passed, 0 failed, 1 skipped" stdout
nested restmore; expect harness-skip-rest-not-more 1 "planned 1 checks, ran 3" stdout
nested failed;   expect harness-fail-counted 1 "1 passed, 1 failed" stdout

# a missing program is a failure, not a skip
mkdir -p "$T/nobin/bin"
run env QMOE_BIN="$T/nobin/bin" QMOE_TMP="$T/tmp-nobin" bash "$T/cli-good/hx.sh"
expect harness-missing-program-fails 1 "FAIL missing-program: '$T/nobin/bin/qmoe-extract'" stdout

# UPDATE_PLAN=1 takes the count of a passing run, never of a failing one
mk grow 'plan 1' 'ok one' 'ok two' 'ok three'
nested grow UPDATE_PLAN=1
expect harness-update-plan-passes 0 "plan 1 -> 3 (UPDATE_PLAN)" stdout
check harness-update-plan-rewrote grep -qx 'plan 3' "$T/cli-grow/hx.sh"
mk growfail 'plan 1' 'ok one' 'fail two'
nested growfail UPDATE_PLAN=1
expect harness-update-plan-not-on-fail 1 "planned 1 checks, ran 2" stdout
check harness-update-plan-kept grep -qx 'plan 1' "$T/cli-growfail/hx.sh"
