#!/usr/bin/env bash
# run_bench.sh - decode benchmark of the reference forward pass.
#
# Writes (once, kept under $QMOE_BUILD/bench/) a random qwen3_moe
# checkpoint whose experts are many times the expert cache, then measures
#   - decode tokens/s with --cache-mb $CACHE_MB (default 128: 1/12 of the
#     1.5 GB of experts) and with a cache holding all experts;
#   - weight-streaming bandwidth: weight bytes the decode steps touched
#     (attention, router, chosen experts, lm_head) / decode time;
#   - memcpy bandwidth in the same run (tests/bench/membw.c, same threads);
# and prints the ratio (target >= 50 %). Best of $TRIALS runs each, since
# other processes on the machine disturb single runs.
#
#   QMOE_BUILD=build bash tests/bench/run_bench.sh     (make bench calls it)
# Environment: THREADS (default: processors), CACHE_MB, TRIALS (3), TOKENS (32).
set -eu
cd "$(dirname "$0")/../.."
: "${QMOE_BUILD:?set QMOE_BUILD to the build directory}"
THREADS=${THREADS:-$(getconf _NPROCESSORS_ONLN)}
CACHE_MB=${CACHE_MB:-128}
TRIALS=${TRIALS:-3}
TOKENS=${TOKENS:-32}
B=$QMOE_BUILD/bench
mkdir -p "$B"
PKGS="glib-2.0 libcjson libcrypto zlib"
CC=${CC:-cc}
# shellcheck disable=SC2046
$CC -std=c11 -D_GNU_SOURCE -O2 -march=native -Wall -Wextra -Werror $(pkg-config --cflags $PKGS) \
    -Icommon tests/bench/mkbig.c "$QMOE_BUILD/libqmoe.a" $(pkg-config --libs $PKGS) -lm -pthread \
    -o "$B/mkbig"
$CC -std=c11 -D_GNU_SOURCE -O2 -march=native -Wall -Wextra -Werror tests/bench/membw.c \
    -pthread -o "$B/membw"

MODEL=${QMOE_BENCH_DIR:-$B}/moe-big  # removed with the bench scratch dir
if [ ! -f "$MODEL/model.safetensors.index.json" ]; then
    echo "writing a random qwen3_moe checkpoint (8 layers x 64 experts, 1.6 GB) to $MODEL"
    "$B/mkbig" "$MODEL"
fi
# Read once so that the page cache holds it: we measure the forward pass
# and the cache, not the disk.
cat "$MODEL"/*.safetensors >/dev/null

jnum() { sed -n "s/.*\"$1\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" | head -1; }

membw=0
for _ in $(seq "$TRIALS"); do
    m=$("$B/membw" "$THREADS" 512)
    membw=$(awk -v a="$membw" -v b="$m" 'BEGIN { print (b > a ? b : a) }')
done
printf 'memcpy bandwidth (%s threads): %.2f GB/s\n' "$THREADS" "$(awk -v b="$membw" 'BEGIN { print b / 1e9 }')"

decode() { # label cache-mb io
    local best_tps=0 best_bw=0 j tps bw
    for _ in $(seq "$TRIALS"); do
        j=$("$QMOE_BUILD/bin/qmoe-run" --json --ignore-eos -n "$TOKENS" -j "$THREADS" \
            --cache-mb "$2" --expert-io "$3" --token-ids 1,2,3,4 "$MODEL" 2>/dev/null)
        tps=$(printf %s "$j" | jnum decode_tokens_per_s)
        bw=$(printf %s "$j" | awk -v b="$(printf %s "$j" | jnum decode_weight_bytes)" \
             -v s="$(printf %s "$j" | jnum decode_s)" 'BEGIN { print b / s }')
        best_tps=$(awk -v a="$best_tps" -v b="$tps" 'BEGIN { print (b > a ? b : a) }')
        best_bw=$(awk -v a="$best_bw" -v b="$bw" 'BEGIN { print (b > a ? b : a) }')
    done
    local misses hits
    misses=$(printf %s "$j" | jnum misses) hits=$(printf %s "$j" | jnum hits)
    awk -v l="$1" -v t="$best_tps" -v bw="$best_bw" -v m="$membw" -v h="$hits" -v mi="$misses" 'BEGIN {
        printf "%-34s %6.2f tokens/s  %6.2f GB/s weights  %5.1f %% of memcpy  (%d hits, %d misses)\n",
               l, t, bw / 1e9, 100 * bw / m, h, mi }'
}

decode "decode, cache ${CACHE_MB} MiB, map" "$CACHE_MB" map
decode "decode, cache ${CACHE_MB} MiB, read" "$CACHE_MB" read
decode "decode, cache 4096 MiB (all), map" 4096 map
