#!/usr/bin/env bash
# Runs the cluster tests (tests/cluster/*.sh but lib.sh and run.sh): real
# engines (GNU parallel, a one-node Slurm cluster) and a reflink
# filesystem. Several need root and install Debian packages; CI runs them
# with `make test-cluster`. Ends with "N passed, N failed[, N skipped]".
set -u
cd "$(dirname "$0")/../.."
: "${QMOE_BUILD:?set QMOE_BUILD to the build directory}"
export QMOE_BUILD QMOE_BIN="$QMOE_BUILD/bin" QMOE_ROOT="$PWD"
export QMOE_TMP="${QMOE_TMP:-$(mktemp -d /tmp/qmoe-cluster.XXXXXX)}"
mkdir -p "$QMOE_TMP"
export NO_COLOR=1
filter="${TESTS:-}"
pass=0 fail=0 skip=0 failed=()
for s in tests/cluster/*.sh; do
    n=$(basename "$s" .sh)
    case $n in lib|run) continue ;; esac
    [ -n "$filter" ] && [[ "$n" != *$filter* ]] && continue
    log="$QMOE_TMP/$n.log" t0=$(date +%s)
    bash "$s" >"$log" 2>&1 </dev/null; rc=$?
    p=$(grep -c '^ok ' "$log"); f=$(grep -c '^FAIL ' "$log"); k=$(grep -c '^skip ' "$log")
    [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && { f=1; echo "FAIL $n: exited with status $rc" >>"$log"; }
    pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + k))
    echo "--- $n: $p passed, $f failed, $k skipped ($(( $(date +%s) - t0 )) s)"
    grep -E '^(# |FAIL |skip )' "$log" | sed 's/^/    /'
    [ "$f" -gt 0 ] && { failed+=("$n"); tail -n 30 "$log" | sed 's/^/    | /'; }
done
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
[ -z "${KEEP_TMP:-}" ] && rm -rf "$QMOE_TMP"
if [ "$skip" -gt 0 ]; then echo "$pass passed, $fail failed, $skip skipped"
else echo "$pass passed, $fail failed"; fi
[ "$fail" -eq 0 ]
