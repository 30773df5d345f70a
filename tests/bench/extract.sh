#!/usr/bin/env bash
# Extraction throughput vs cp of the same shard files, warm page cache.
# qmoe-extract hashes (SHA-256 + CRC-32) every byte and fsyncs every file;
# cp does neither, so the fair baseline is "cp + sync" (both are shown).
# Target: extract <= 1.5 x cp.  SIZE_GB (default 2) sets the sample size.
set -eu
B="$QMOE_BIN"; D="$QMOE_BENCH_DIR/extract"; rm -rf "$D"; mkdir -p "$D"
gb=${SIZE_GB:-2}
# Omni-shaped: 8 layers x 64 experts of 3 x 1024 x 768 bf16 (4.7 MB each)
layers=$((gb * 4))
"$B/qmoe-mksample" --layers "$layers" --experts 64 --hidden 1024 --inter 768 \
    --shard-mb 1000 "$D/src" >/dev/null
bytes=$(cat "$D"/src/*.safetensors | wc -c)
cat "$D"/src/*.safetensors >/dev/null        # warm cache
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN { print e - s }'; }
sync
mkdir "$D/cp"
t_cp=$(t cp "$D"/src/*.safetensors "$D/cp/")
t_sync=$(t sync)
rm -rf "$D/cp"; sync
t_x=$(t "$B/qmoe-extract" --no-progress "$D/src" "$D/out")
files=$(ls "$D/out/experts" | wc -l)
awk -v b="$bytes" -v cp="$t_cp" -v sy="$t_sync" -v x="$t_x" -v f="$files" 'BEGIN {
    printf "input           %.2f GB in shards, %d expert files out\n", b/1e9, f
    printf "cp              %6.2f s  %6.0f MB/s\n", cp, b/1e6/cp
    printf "cp + sync       %6.2f s  %6.0f MB/s\n", cp+sy, b/1e6/(cp+sy)
    printf "qmoe-extract    %6.2f s  %6.0f MB/s  (sha256 + crc32 + fsync per file)\n", x, b/1e6/x
    printf "ratio extract/cp        %.2f   (target <= 1.5)\n", x/cp
    printf "ratio extract/(cp+sync) %.2f\n", x/(cp+sy)
}'
rm -rf "$D"
