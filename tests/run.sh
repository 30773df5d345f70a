#!/usr/bin/env bash
# Runs every unit test program and every tests/cli/*.sh script, counts their
# "ok NAME" / "FAIL NAME" / "skip NAME" lines, and ends with
# "N passed, N failed[, N skipped]". A program that exits non-zero without
# reporting a failure (a crash) counts as one failure. A tests/cli script
# must print its plan ("plan N", see tests/cli/lib.sh) and exactly N checks
# (fewer after "skip-rest"); otherwise that is one more failure. Each
# "--- NAME" line ends with the wall time the program or script took.
# UPDATE_PLAN=1 rewrites a passing script's `plan N` with the count it ran.
set -u
cd "$(dirname "$0")/.."
: "${QMOE_BUILD:?set QMOE_BUILD to the build directory}"
export QMOE_BUILD QMOE_BIN="$QMOE_BUILD/bin" QMOE_ROOT="$PWD"
# Scratch on tmpfs when there is one: the tests fsync thousands of small
# files, which on a busy disk costs minutes and proves nothing more.
scratch=/tmp; [ -d /dev/shm ] && [ -w /dev/shm ] && scratch=/dev/shm
export QMOE_TMP="${QMOE_TMP:-$(mktemp -d "$scratch/qmoe-tests.XXXXXX")}"
mkdir -p "$QMOE_TMP"
export NO_COLOR=1
filter="${TESTS:-}"
pass=0 fail=0 skip=0 failed_names=()

run_one() { # name, script (or ""), command...
    local name=$1 script=$2; shift 2
    local log="$QMOE_TMP/$name.log" rc t0=$EPOCHREALTIME secs
    "$@" >"$log" 2>&1 </dev/null
    rc=$?
    # wall seconds, so that a script that grows slow shows where CI's time goes
    secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    local p f s
    p=$(grep -c '^ok ' "$log"); f=$(grep -c '^FAIL ' "$log"); s=$(grep -c '^skip ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1; echo "FAIL $name: exited with status $rc" >>"$log"
    fi
    if [ -n "$script" ]; then
        local planned ran=$((p + f + s)) rest
        planned=$(sed -n 's/^plan \([0-9][0-9]*\)$/\1/p' "$log" | head -n 1)
        rest=$(grep -c '^skip-rest$' "$log")
        if [ -z "$planned" ]; then
            f=$((f + 1)); echo "FAIL $name-plan: no 'plan N' line (see tests/cli/lib.sh)" >>"$log"
        elif [ "$ran" != "$planned" ] && ! { [ "$rest" -gt 0 ] && [ "$ran" -lt "$planned" ]; }; then
            if [ -n "${UPDATE_PLAN:-}" ] && [ "$f" -eq 0 ] && [ "$rest" -eq 0 ] &&
               grep -q "^plan $planned\$" "$script"; then
                sed -i "s/^plan $planned\$/plan $ran/" "$script"
                echo "--- $name: plan $planned -> $ran (UPDATE_PLAN) in $script"
            else
                f=$((f + 1))
                echo "FAIL $name-plan: planned $planned checks, ran $ran" >>"$log"
            fi
        fi
    fi
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
    if [ "$f" -gt 0 ]; then
        failed_names+=("$name"); echo "--- $name: $p passed, $f failed ($secs s)"; sed 's/^/    /' "$log" | tail -n 40
    else
        echo "--- $name: $p passed${s:+, $s skipped} ($secs s)" | sed 's/, 0 skipped//'
    fi
}

for t in "$QMOE_BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    n=$(basename "$t")
    [ -n "$filter" ] && [[ "$n" != *$filter* ]] && continue
    run_one "$n" "" "$t"
done
for s in "${QMOE_CLI_DIR:-tests/cli}"/*.sh; do   # QMOE_CLI_DIR: for harness.sh
    [ -f "$s" ] && [ "$(basename "$s")" != lib.sh ] || continue
    n=$(basename "$s" .sh)
    [ -n "$filter" ] && [[ "$n" != *$filter* ]] && continue
    run_one "$n" "$s" bash "$s"
done
[ "${#failed_names[@]}" -gt 0 ] && echo "failed: ${failed_names[*]}"
[ -z "${KEEP_TMP:-}" ] && rm -rf "$QMOE_TMP"
if [ "$skip" -gt 0 ]; then echo "$pass passed, $fail failed, $skip skipped"
else echo "$pass passed, $fail failed"; fi
[ "$fail" -eq 0 ]
