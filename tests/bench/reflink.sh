#!/usr/bin/env bash
# Zero-copy extraction (make bench BENCH=reflink): qmoe-extract with blocks
# shared with the source (reflink) vs --no-reflink (plain copy), on a
# loop-mounted XFS image made with reflink=1: time and disk space.
#
# Disk space three ways: the filesystem's used space (df: the truth with
# shared blocks), du --apparent-size (file sizes) and du (blocks allocated
# to each file, which counts a shared block once per file that has it).
# Baselines: cp --reflink=always and cp of the shard files (+ sync).
# Needs root (losetup/mount) and xfsprogs; SIZE_GB (default 1) sets the
# sample size.
set -u
B="$QMOE_BIN"; D="$QMOE_BENCH_DIR/reflink"; rm -rf "$D"; mkdir -p "$D"
gb=${SIZE_GB:-1}
if [ "$(id -u)" != 0 ]; then echo "skipped: needs root to mount a loop device"; exit 0; fi
if ! command -v mkfs.xfs >/dev/null; then echo "skipped: no mkfs.xfs (Debian package xfsprogs)"; exit 0; fi
MNT="$D/mnt"
cleanup() { umount "$MNT" 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
img_bytes=$(awk -v g="$gb" 'BEGIN { printf "%.0f", g * 3.3e9 + 5e8 }')
avail=$(df -B1 --output=avail "$D" | tail -1)
[ "$avail" -gt "$img_bytes" ] || { echo "skipped: needs $img_bytes bytes free under $D"; exit 0; }
truncate -s "$img_bytes" "$D/xfs.img"
mkfs.xfs -q -f -m reflink=1 "$D/xfs.img" || { echo "mkfs.xfs failed"; exit 1; }
mkdir -p "$MNT"
mount -o loop "$D/xfs.img" "$MNT" || { echo "cannot mount the XFS image (loop devices?)"; exit 1; }

layers=$(awk -v g="$gb" 'BEGIN { l = int(g * 1e9 / 159e6 + 0.5); print l < 1 ? 1 : l }')
"$B/qmoe-mksample" --layers "$layers" --experts 32 --hidden 1024 --inter 768 --shard-mb 1000 \
    "$MNT/src" >/dev/null || { echo "qmoe-mksample failed"; exit 1; }
bytes=$(cat "$MNT"/src/*.safetensors | wc -c)      # also warms the cache
sync
used() { sync; df -B1 --output=used "$MNT" | tail -1; }
now() { date +%s.%N; }
row() { # MODE SECONDS DF_DELTA DIR SHARED
    local app real
    app=$(du -sb --apparent-size "$4" | cut -f1); real=$(du -sB1 "$4" | cut -f1)
    awk -v m="$1" -v t="$2" -v d="$3" -v a="$app" -v r="$real" -v s="$5" -v b="$bytes" 'BEGIN {
        printf "%-26s %7.2f %8.0f %10.1f %10.1f %10.1f %10s\n", m, t, b / 1e6 / t, d / 1e6, a / 1e6, r / 1e6,
            s == "-" ? "-" : sprintf("%.1f", s / 1e6) }'
}
echo "XFS reflink=1 on a loop device; input $(awk -v b="$bytes" 'BEGIN { printf "%.2f GB", b / 1e9 }') in $(ls "$MNT"/src/*.safetensors | wc -l) shards, warm cache"
printf "%-26s %7s %8s %10s %10s %10s %10s\n" "" "seconds" "MB/s" "df MB" "apparent" "du MB" "shared MB"

u0=$(used); s=$(now); cp --reflink=always "$MNT"/src/*.safetensors "$MNT/" 2>/dev/null; sync; e=$(now)
mkdir -p "$MNT/cpr"; mv "$MNT"/*.safetensors "$MNT/cpr/"
row "cp --reflink=always" "$(awk -v s="$s" -v e="$e" 'BEGIN { print e - s }')" $(( $(used) - u0 )) "$MNT/cpr" -
rm -rf "$MNT/cpr"
u0=$(used); s=$(now); mkdir -p "$MNT/cp"; cp --reflink=never "$MNT"/src/*.safetensors "$MNT/cp/"; sync; e=$(now)
row "cp + sync" "$(awk -v s="$s" -v e="$e" 'BEGIN { print e - s }')" $(( $(used) - u0 )) "$MNT/cp" -
rm -rf "$MNT/cp"

for mode in reflink plain; do
    opt=(); [ $mode = plain ] && opt=(--no-reflink)
    u0=$(used); s=$(now)
    out=$("$B/qmoe-extract" --no-progress --json "${opt[@]}" "$MNT/src" "$MNT/$mode")
    e=$(now)
    shared=$(printf %s "$out" | sed -n 's/.*"bytes_shared":\([0-9]*\).*/\1/p')
    row "qmoe-extract ($mode)" "$(awk -v s="$s" -v e="$e" 'BEGIN { print e - s }')" $(( $(used) - u0 )) \
        "$MNT/$mode" "${shared:--}"
    if [ -x "$QMOE_BUILD/tests/tools/ckcmp" ]; then
        "$QMOE_BUILD/tests/tools/ckcmp" "$MNT/src" "$MNT/$mode" | sed "s/^/    ckcmp: /"
    fi
    [ -x "$B/qmoe-verify" ] && "$B/qmoe-verify" "$MNT/$mode" >/dev/null && echo "    qmoe-verify: ok"
    [ $mode = reflink ] && rm -rf "$MNT/reflink" && sync
done
echo "(df MB: growth of the filesystem's used space; apparent: sum of file sizes;"
echo " du MB: blocks allocated per file, shared ones counted in every file that has them)"
