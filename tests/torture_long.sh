#!/usr/bin/env bash
# make torture: the kill torture of tests/cli/torture.sh at full length -
# 20 SIGKILLs and 20 SIGTERMs at moments spread from the first file to the
# last, resuming each time - repeated TORTURE_ROUNDS times (default 3) with
# fresh random seeds. Prints each round's cycles and the test summary.
set -u
cd "$(dirname "$0")/.."
: "${QMOE_BUILD:?set QMOE_BUILD to the build directory}"
rounds=${TORTURE_ROUNDS:-3}
status=0
for r in $(seq 1 "$rounds"); do
    tmp=$(mktemp -d /tmp/qmoe-torture.XXXXXX)
    echo "== round $r/$rounds"
    TORTURE_KILLS=${TORTURE_KILLS:-20} TORTURE_TERMS=${TORTURE_TERMS:-20} \
    TORTURE_THROTTLE_MS=${TORTURE_THROTTLE_MS:-60} TESTS=torture KEEP_TMP=1 \
        QMOE_TMP="$tmp" bash tests/run.sh | tail -n 1
    rc=${PIPESTATUS[0]}
    grep -E '^(#|FAIL)' "$tmp/torture.log"
    [ "$rc" = 0 ] || { status=1; echo "round $r failed; files kept in $tmp"; continue; }
    rm -rf "$tmp"
done
exit $status
