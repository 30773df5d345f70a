#!/usr/bin/env bash
# Full verification (sha256 of every byte, headers, shapes, coverage) vs
# coreutils sha256sum over the same files, warm page cache, same run.
# qmoe-verify hashes with OpenSSL (SHA instructions where the CPU has them)
# on -j threads with 8 MiB sequential reads; sha256sum is one process.
# Target: qmoe-verify <= 0.3 x sha256sum.  SIZE_GB (default 3) sets the
# size: layers of 128 experts of the real Qwen3 expert size (9.4 MB each).
set -eu
B="$QMOE_BIN"; D="$QMOE_BENCH_DIR/verify"; rm -rf "$D"; mkdir -p "$D"
MKSAMPLE=${QMOE_MKSAMPLE:-$B/qmoe-mksample}
gb=${SIZE_GB:-3}
layers=$(( (gb * 1000 + 1199) / 1200 ))
"$MKSAMPLE" --layers "$layers" --experts 128 --hidden 2048 --inter 768 \
    --shard-mb 2000 "$D/src" >/dev/null
"$B/qmoe-extract" "$D/src" "$D/out" >/dev/null
rm -rf "$D/src"                              # keep the page cache for OUT
cd "$D/out"
files=(experts/* layers/* globals.safetensors)
[ -d other ] && [ -n "$(ls other)" ] && files+=(other/*)
bytes=$(cat "${files[@]}" | wc -c)           # also warms the cache
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN { print e - s }'; }
best() { local a b; a=$(t "$@"); b=$(t "$@"); awk -v a="$a" -v b="$b" 'BEGIN { print (a < b ? a : b) }'; }
t_sum=$(best sha256sum "${files[@]}")
t_v=$(best "$B/qmoe-verify" .)
t_q=$(best "$B/qmoe-verify" --quick .)
"$B/qmoe-verify" . >/dev/null                # must pass: a benchmark of a failure is no benchmark
cores=$(nproc)
awk -v b="$bytes" -v s="$t_sum" -v v="$t_v" -v q="$t_q" -v f="${#files[@]}" -v c="$cores" 'BEGIN {
    printf "input               %.2f GB in %d files, %d cores\n", b/1e9, f, c
    printf "sha256sum           %6.2f s  %6.0f MB/s\n", s, b/1e6/s
    printf "qmoe-verify         %6.2f s  %6.0f MB/s  (sha256, headers, shapes, coverage)\n", v, b/1e6/v
    printf "qmoe-verify --quick %6.2f s\n", q
    printf "ratio verify/sha256sum  %.2f   (target <= 0.3)\n", v/s
}'
cd /; rm -rf "$D"
