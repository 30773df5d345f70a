#!/usr/bin/env bash
# Opening an extracted OUT as a checkpoint vs opening its source, same run:
# a 48 x 128 Omni-shaped sample (6197 files once extracted, 3 shards as a
# source). `qmoe-extract --dry-run DIR X` opens DIR, reads every shard header
# and checks index and files both ways; `qmoe-run -n 1` loads the model
# (lazily: the experts it routes to). Best of 3 each.
# Target: OUT-open <= 2 x source-open (it was 67x while the check was
# quadratic: every tensor name scanned per shard).
set -eu
B="$QMOE_BIN"; D="$QMOE_BENCH_DIR/open"; rm -rf "$D"; mkdir -p "$D"
"$B/qmoe-mksample" --layers 48 --experts 128 "$D/src" >/dev/null
"$B/qmoe-extract" --no-progress "$D/src" "$D/out" >/dev/null 2>&1
"$B/qmoe-extract" --dry-run "$D/out" "$D/x" >/dev/null   # must work: no benchmark of a failure
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN { print e - s }'; }
best() { local a b c; a=$(t "$@"); b=$(t "$@"); c=$(t "$@"); printf '%s\n' "$a" "$b" "$c" | sort -g | head -n 1; }
d_src=$(best "$B/qmoe-extract" --dry-run "$D/src" "$D/x")
d_out=$(best "$B/qmoe-extract" --dry-run "$D/out" "$D/x")
r_src=$(best "$B/qmoe-run" -n 1 --token-ids 1,2,3 "$D/src")
r_out=$(best "$B/qmoe-run" -n 1 --token-ids 1,2,3 "$D/out")
files=$(find "$D/out" -name '*.safetensors' | wc -l)
shards=$(find "$D/src" -name '*.safetensors' | wc -l)
awk -v ds="$d_src" -v do_="$d_out" -v rs="$r_src" -v ro="$r_out" -v f="$files" -v s="$shards" 'BEGIN {
    printf "input                     48 x 128 experts: source %d shards, OUT %d files\n", s, f
    printf "extract --dry-run source  %6.3f s\n", ds
    printf "extract --dry-run OUT     %6.3f s\n", do_
    printf "run -n 1 source           %6.3f s\n", rs
    printf "run -n 1 OUT              %6.3f s\n", ro
    printf "ratio open OUT/source     %.2f   (target <= 2)\n", do_/ds
    printf "ratio run OUT/source      %.2f\n", ro/rs
}'
rm -rf "$D"
