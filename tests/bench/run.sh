#!/usr/bin/env bash
# make bench: runs every benchmark script in tests/bench/ (not a test: it
# prints numbers and ratios against baselines measured in the same run).
# BENCH=substr runs a subset. Scratch space: $QMOE_BENCH_DIR (default a
# fresh directory under /var/tmp, removed at the end).
set -u
cd "$(dirname "$0")/../.."
: "${QMOE_BUILD:?}"
export QMOE_BUILD QMOE_BIN="$QMOE_BUILD/bin" QMOE_ROOT="$PWD"
export QMOE_BENCH_DIR="${QMOE_BENCH_DIR:-$(mktemp -d /var/tmp/qmoe-bench.XXXXXX)}"
export NO_COLOR=1
# which disk and how busy: the ratios are of one run, the MB/s of this disk
read -r _ fs_type _ _ _ _ fs_mount < <(df -PT "$QMOE_BENCH_DIR" | tail -n 1)
fs_dev=$(df -P "$QMOE_BENCH_DIR" | awk 'NR == 2 { print $1 }')
echo "# scratch $QMOE_BENCH_DIR: $fs_type on $fs_dev ($fs_mount); $(nproc) cores; load$(uptime | sed 's/.*load average//')"
rc=0
for s in tests/bench/*.sh; do
    n=$(basename "$s" .sh)
    [ "$n" = run ] && continue
    [ -n "${BENCH:-}" ] && [[ "$n" != *$BENCH* ]] && continue
    echo "=== $n"
    bash "$s" || { echo "($n failed)"; rc=1; }
done
rm -rf "$QMOE_BENCH_DIR"
exit $rc
