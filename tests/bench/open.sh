#!/usr/bin/env bash
# Opening an extracted OUT as a checkpoint vs opening its source, same run:
# a 48 x 128 Omni-shaped sample (6197 files once extracted, 3 shards as a
# source). `qmoe-extract --dry-run DIR X` opens DIR, reads every shard header
# and checks index and files both ways; `qmoe-run -n 1` loads the model
# (lazily: the experts it routes to). Best of 5 each, wall and CPU (user +
# sys: steadier on a shared machine), the two sides interleaved.
# Target: OUT-open <= 1.5 x source-open (issue 25; it was 67x while the
# check was quadratic, 1.8-2.3x with six system calls and a cJSON tree per
# file, 1.9x with four: openat, fstat, pread, close). A complete OUT now
# opens from its qmoe.json (outdir/manifest_describe.c): one mapped file
# scanned, a directory listing per folder, no .safetensors file opened;
# `qmoe-run` still reads the headers of the files it loads.
set -eu
B="$QMOE_BIN"; D="$QMOE_BENCH_DIR/open"; rm -rf "$D"; mkdir -p "$D"
"$B/qmoe-mksample" --layers 48 --experts 128 "$D/src" >/dev/null
"$B/qmoe-extract" --no-progress "$D/src" "$D/out" >/dev/null 2>&1
"$B/qmoe-extract" --dry-run "$D/out" "$D/x" >/dev/null   # must work: no benchmark of a failure
# t CMD...: "wall cpu" seconds of one run (bash's time: no other tool)
t() { local TIMEFORMAT='%R %U %S'; { time "$@" >/dev/null 2>&1; } 2>&1 | awk '{ print $1, $2 + $3 }'; }
# pair NAME A-CMD -- B-CMD: 5 runs of each, alternating; sets NAME_a and
# NAME_b to "best-wall best-cpu"
pair() {
    local n=$1 a=() b=() ra="" rb="" i; shift
    while [ "$1" != -- ]; do a+=("$1"); shift; done; shift; b=("$@")
    for i in 1 2 3 4 5; do ra+="$(t "${a[@]}")"$'\n'; rb+="$(t "${b[@]}")"$'\n'; done
    local best='NF { if (!w || $1 < w) w = $1; if (!c || $2 < c) c = $2 } END { print w, c }'
    printf -v "${n}_a" '%s' "$(printf '%s' "$ra" | awk "$best")"
    printf -v "${n}_b" '%s' "$(printf '%s' "$rb" | awk "$best")"
}
pair d "$B/qmoe-extract" --dry-run "$D/src" "$D/x" -- "$B/qmoe-extract" --dry-run "$D/out" "$D/x"
pair r "$B/qmoe-run" -n 1 --token-ids 1,2,3 "$D/src" -- "$B/qmoe-run" -n 1 --token-ids 1,2,3 "$D/out"
files=$(find "$D/out" -name '*.safetensors' | wc -l)
shards=$(find "$D/src" -name '*.safetensors' | wc -l)
awk -v ds="$d_a" -v do_="$d_b" -v rs="$r_a" -v ro="$r_b" -v f="$files" -v s="$shards" 'BEGIN {
    split(ds, a, " "); split(do_, b, " "); split(rs, c, " "); split(ro, d, " ")
    printf "input                     48 x 128 experts: source %d shards, OUT %d files\n", s, f
    printf "                          wall s   cpu s\n"
    printf "extract --dry-run source  %6.3f  %6.3f\n", a[1], a[2]
    printf "extract --dry-run OUT     %6.3f  %6.3f\n", b[1], b[2]
    printf "run -n 1 source           %6.3f  %6.3f\n", c[1], c[2]
    printf "run -n 1 OUT              %6.3f  %6.3f\n", d[1], d[2]
    printf "ratio open OUT/source     %6.2f  %6.2f   (target <= 1.5)\n", b[1]/a[1], b[2]/a[2]
    printf "ratio run OUT/source      %6.2f  %6.2f\n", d[1]/c[1], d[2]/c[2]
}'
rm -rf "$D"
