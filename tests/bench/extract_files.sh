#!/usr/bin/env bash
# Many-file extraction at the disk's speed (make bench BENCH=extract_files):
# qmoe-extract against cp -r + sync of the same bytes, best of REPS (3)
# runs of each, interleaved in the same invocation (a change in the load of
# a shared machine hits both). Warm page cache for the source; every timed
# run starts with its output removed and synced, so that it pays for its
# own writes only. The baseline is what a careful copy costs: cp -r writes the
# same files and sync makes them durable; qmoe-extract also hashes every
# byte (SHA-256 + CRC-32), journals every file and commits atomically.
#
#  small  6144 experts of 192 KiB (48 layers x 128, hidden 256, inter 128):
#         vs cp -r of extract's own output tree + sync   (target <= 1.3)
#  real   256 real-size experts of 9.4 MB (2 layers x 128, hidden 2048,
#         inter 768, bf16; Qwen3-30B / Omni): vs cp -r SRC + sync (<= 1.2)
#  real4  the same experts from 4 shards of about 0.6 GB (<= 1.2)
#  ds     14,848 tiny experts (DeepSeek-V3 shape: 58 MoE layers x 256):
#         vs cp -r of the output tree + sync
#
# EXF_CASES="small real ds" narrows, REPS=N repeats, EXF_ARGS adds options
# to qmoe-extract, EXF_STRACE=1 prints an strace -c -f summary of one more
# extraction of each case, EXF_BASELINE=DIR also times DIR/qmoe-extract
# (another build, e.g. the one before a change) in the same interleaved
# runs and prints its ratio. Each time comes with its MB/s (the bytes of
# the tree cp copies): a ratio measured on a slow disk is not a fast
# disk's, and cp + sync's MB/s says which disk it was.
#
# No timed run follows a deletion: ext4 without a journal (this machine's
# disk) will not reuse an inode freed in the last 60 s (360 s while its
# inode table block is dirty), and each new inode then scans past every
# such free inode of its group, with a buffer look-up each. Creating 6144
# files after deleting as many cost 20-30 % of the CPU of either side, and
# only the side whose best run happened to follow no deletion (cp's first)
# escaped it. So the trees of earlier runs are moved aside and truncated
# (blocks freed, inodes kept) and deleted only when the benchmark ends.
# Mass deletions on the same filesystem shortly before (an earlier bench,
# another user's rm -rf) still cost both sides alike.
set -u
B="$QMOE_BIN"; D="$QMOE_BENCH_DIR/extract_files"; rm -rf "$D"; mkdir -p "$D"
cases=${EXF_CASES:-small real real4 ds}
reps=${REPS:-3}
read -r -a xargs_extra <<<"${EXF_ARGS:-}"

now() { date +%s.%N; }
# timed CMD...: wall seconds of one run (9999 when it fails)
timed() {
    local s e
    s=$(now); "$@" >/dev/null 2>"$D/err" || { echo "failed: $* ($(head -1 "$D/err"))" >&2; echo 9999; return; }; e=$(now)
    awk -v s="$s" -v e="$e" 'BEGIN { print e - s }'
}
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b < a) ? b : a }'; }
extract() { "${1:-$B}/qmoe-extract" --no-progress "${xargs_extra[@]}" "$D/src" "$D/out"; }
old_bin=${EXF_BASELINE:-}
copy_sync() { cp -r "$1" "$D/cp" && sync; }
# aside DIR: moves DIR out of the way without freeing its inodes
aside() {
    [ -e "$1" ] || return 0
    local t; t=$(mktemp -d "$D/trash/XXXXXX")
    mv "$1" "$t/" && find "$t" -type f -exec truncate -s 0 {} +
}
mkdir -p "$D/trash"
for c in $cases; do
    case $c in
        small) args=(--layers 48 --experts 128 --hidden 256 --inter 128 --shard-mb 2000)
               name="6144 experts of 192 KiB"; base=out; target=1.3 ;;
        real)  args=(--layers 2 --experts 128 --hidden 2048 --inter 768 --shard-mb 4000)
               name="256 experts of 9.4 MB"; base=src; target=1.2 ;;
        real4) args=(--layers 2 --experts 128 --hidden 2048 --inter 768 --shard-mb 620)
               name="256 experts of 9.4 MB from 4 shards"; base=src; target=1.2 ;;
        ds)    args=(--layout deepseek_v3 --layers 59 --experts 256 --hidden 64 --inter 32)
               name="14,848 experts (DeepSeek-V3 shape)"; base=out; target="-" ;;
        *) echo "$c: unknown case (small, real, real4, ds)"; continue ;;
    esac
    rm -rf "$D/src" "$D/out" "$D/cp"
    "$B/qmoe-mksample" "${args[@]}" "$D/src" >/dev/null || { echo "$c: qmoe-mksample failed"; continue; }
    cat "$D"/src/*.safetensors >/dev/null      # warm cache
    extract >/dev/null 2>&1                      # the tree to copy, if base=out
    files=$(find "$D/$base" -type f | wc -l)
    bytes=$(du -sb "$D/$base" | cut -f1)
    [ $base = out ] && cp -r "$D/out" "$D/base"  # outlives the extractions
    [ $base = out ] && base=base
    # interleaved, so that a change in the load of a shared machine hits
    # both sides alike; each run starts with its own output moved aside
    # and everything synced
    t_x="" t_c="" t_o=""
    # (the source is read again before each run, as cp's is: on a shared
    # machine another user's memory can evict it in between)
    for _ in $(seq "$reps"); do
        aside "$D/out"; cat "$D"/src/*.safetensors >/dev/null; sync
        t_x=$(min "$t_x" "$(timed extract)")
        if [ -n "$old_bin" ]; then
            aside "$D/out"; cat "$D"/src/*.safetensors >/dev/null; sync
            t_o=$(min "$t_o" "$(timed extract "$old_bin")")
        fi
        aside "$D/cp"; find "$D/$base" -type f -exec cat {} + >/dev/null; sync
        t_c=$(min "$t_c" "$(timed copy_sync "$D/$base")")
    done
    aside "$D/cp"
    awk -v n="$name" -v x="$t_x" -v c="$t_c" -v f="$files" -v b="$bytes" \
        -v base="$base" -v tg="$target" -v o="$t_o" 'BEGIN {
        printf "%s: cp -r %s (%d files, %.2f GB)\n", n, (base == "src" ? "SRC" : "of the output tree"), f, b / 1e9
        printf "  qmoe-extract        %7.2f s  %6.0f MB/s\n", x, b / 1e6 / x
        printf "  cp -r + sync        %7.2f s  %6.0f MB/s\n", c, b / 1e6 / c
        printf "  ratio               %7.2f   (target <= %s; cp -r + sync at %.0f MB/s)\n", (c > 0 ? x / c : 0), tg, b / 1e6 / c
        if (o != "")
            printf "  baseline build      %7.2f s  %6.0f MB/s, ratio %.2f\n", o, b / 1e6 / o, (c > 0 ? o / c : 0)
    }'
    if [ "${EXF_STRACE:-0}" = 1 ]; then
        aside "$D/out"; sync
        strace -c -f -o "$D/strace" "$B/qmoe-extract" --no-progress "${xargs_extra[@]}" \
            "$D/src" "$D/out" >/dev/null 2>&1
        echo "  strace -c -f (top 14):"; head -16 "$D/strace" | sed 's/^/    /'
    fi
    aside "$D/out"; aside "$D/base"; rm -rf "$D/src"
done
rm -rf "$D"
