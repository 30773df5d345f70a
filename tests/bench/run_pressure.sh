#!/usr/bin/env bash
# run_pressure.sh - prompt and decode under memory pressure (issue 14 item 3).
#
# The real-width sample of run_prefill.sh (hidden 2048, 128 experts top-8,
# vocab 151936, 4 layers: 6.2 GB; written with qmoe-mksample unless
# QMOE_REAL names one) run in a memory cgroup of $LIMIT (3G) from a cold
# page cache, --cache-mb $CACHE_MB (1500), a $PROMPT-token prompt (16) and
# $TOKENS decode steps (32; -n TOKENS+1, the first token comes from the
# prompt's logits). Measured in the same run, interleaved, best of $TRIALS:
#   warm        no limit, the page cache holding the whole model (the
#               baseline: what the limit and the cold cache cost);
#   cold        the limit, cold cache: qmoe as shipped;
#   no-prefetch the same with QMOE_PREFETCH=0 (no MADV_WILLNEED /
#               POSIX_FADV_WILLNEED read-ahead of the experts a layer or a
#               prefill batch routes to, nor of the dense weights): what
#               the read-ahead is worth;
#   batch-1     the limit, cold cache, --batch 1: the prompt fed token by
#               token, as before batched prefill (when issue 14 measured
#               the prompt at 1.3x llama.cpp's under this limit);
#   map-all     the limit, cold cache, --cache-mb 8192: every expert stays
#               mapped and the kernel alone decides what stays in memory,
#               as with a runtime that maps the whole checkpoint
#               (llama.cpp): what qmoe's own cache is worth.
# Prints prompt tokens/s, decode tokens/s (all steps and the first 16,
# while the cache fills), the expert misses and the cgroup's peak (the
# medians of prompt and decode in brackets: on a shared machine the spread
# is large), then the ratios of the best values. Needs root and a memory cgroup (v1 or v2); otherwise it says
# why and skips. Dropping the page cache affects the whole machine.
#
#   QMOE_BUILD=build bash tests/bench/run_pressure.sh   (make bench calls it)
# Environment: THREADS, TRIALS (3), LIMIT (3G), CACHE_MB (1500), PROMPT
# (16), TOKENS (32), QMOE_REAL, QMOE_RUN (the qmoe-run to measure).
set -eu
cd "$(dirname "$0")/../.."
: "${QMOE_BUILD:?set QMOE_BUILD to the build directory}"
THREADS=${THREADS:-$(getconf _NPROCESSORS_ONLN)}
TRIALS=${TRIALS:-3}
LIMIT=${LIMIT:-3G}
CACHE_MB=${CACHE_MB:-1500}
PROMPT=${PROMPT:-16}
TOKENS=${TOKENS:-32}
RUN=${QMOE_RUN:-$QMOE_BUILD/bin/qmoe-run}
B=${QMOE_BENCH_DIR:-$QMOE_BUILD/bench}

skip() { echo "skipped: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (a memory cgroup and dropping the page cache)"
[ -w /proc/sys/vm/drop_caches ] || skip "cannot drop the page cache (/proc/sys/vm/drop_caches)"
if [ -d /sys/fs/cgroup/memory ] && [ -w /sys/fs/cgroup/memory ]; then
    CG=/sys/fs/cgroup/memory/qmoe_bench_$$ LIMFILE=memory.limit_in_bytes PEAK=memory.max_usage_in_bytes
elif grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null && [ -w /sys/fs/cgroup ]; then
    CG=/sys/fs/cgroup/qmoe_bench_$$ LIMFILE=memory.max PEAK=memory.peak
else
    skip "no writable memory cgroup (v1 /sys/fs/cgroup/memory or v2 with the memory controller)"
fi
mkdir "$CG" || skip "cannot make the cgroup $CG"
trap 'rmdir "$CG" 2>/dev/null || true' EXIT
echo "$LIMIT" >"$CG/$LIMFILE" || skip "cannot set $CG/$LIMFILE to $LIMIT"

mkdir -p "$B"
MODEL=${QMOE_REAL:-$B/real-width}
if [ ! -f "$MODEL/model.safetensors.index.json" ]; then
    echo "writing a real-width random checkpoint (4 layers x 128 experts, 6.2 GB) to $MODEL"
    "$QMOE_BUILD/bin/qmoe-mksample" --layers 4 --experts 128 --topk 8 --hidden 2048 \
        --inter 768 --heads 32 --kv-heads 4 --head-dim 128 --vocab 151936 "$MODEL" >/dev/null
fi
ids() { awk -v n="$1" 'BEGIN { s = 12345; for (i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) % 2147483648; printf "%s%d", i ? "," : "", s % 151936 } }'; }
IDS=$(ids "$PROMPT")

# one run: MODE (warm|cold) CACHE_MB [ENV=VALUE [BATCH]]; prints
# "prompt_tps decode_tps first16_tps misses peak_bytes"
one() {
    local mode=$1 cache=$2 env=${3:-QMOE_PREFETCH=1} batch=${4:-256} j peak=0
    if [ "$mode" = warm ]; then
        cat "$MODEL"/*.safetensors >/dev/null
        j=$(env "$env" "$RUN" --json --ignore-eos -n $((TOKENS + 1)) -j "$THREADS" \
            --cache-mb "$cache" --batch "$batch" --token-ids "$IDS" "$MODEL" 2>/dev/null)
    else
        sync
        echo 3 >/proc/sys/vm/drop_caches
        # v1 keeps the charge of an empty group's page cache: start from 0
        [ -f "$CG/memory.force_empty" ] && echo 0 >"$CG/memory.force_empty" 2>/dev/null || true
        [ -f "$CG/memory.max_usage_in_bytes" ] && echo 0 >"$CG/memory.max_usage_in_bytes" || true
        j=$(sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec env "$@"' sh "$CG" "$env" \
            "$RUN" --json --ignore-eos -n $((TOKENS + 1)) -j "$THREADS" --cache-mb "$cache" \
            --batch "$batch" --token-ids "$IDS" "$MODEL" 2>/dev/null)
        peak=$(cat "$CG/$PEAK" 2>/dev/null || echo 0)
    fi
    printf '%s\n' "$j" | awk -v p="$PROMPT" -v peak="$peak" '
        /"prefill_s":/ { gsub(/[,"]/, ""); pre = $2 }
        /"decode_s":/ { gsub(/[,"]/, ""); dec = $2 }
        /"decode_steps":/ { gsub(/[,"]/, ""); steps = $2 }
        /"decode_step_s":/ { sub(/.*\[/, ""); sub(/\].*/, "")
                             k = split($0, st, /,[[:space:]]*/)
                             for (i = 1; i <= k && i <= 16; i++) { first += st[i]; n++ } }
        /"misses":/ { gsub(/[,"]/, ""); miss = $2 }
        END { if (pre <= 0 || dec <= 0) exit 1
              printf "%.4f %.4f %.4f %d %.0f\n", p / pre, steps / dec, n / first, miss, peak }'
}

best() { # best of the field-wise maxima of lines "a b c misses peak"
    awk '{ for (i = 1; i <= 3; i++) if ($i > m[i]) m[i] = $i; mi = $4; pk = ($5 > pk ? $5 : pk) }
         END { printf "%s %s %s %s %s\n", m[1], m[2], m[3], mi, pk }'
}

echo "model $MODEL; limit $LIMIT, --cache-mb $CACHE_MB, prompt $PROMPT tokens, $TOKENS decode steps, $THREADS threads, best of $TRIALS"
: >"$B/pressure.warm" >"$B/pressure.cold" >"$B/pressure.nopf" >"$B/pressure.b1" >"$B/pressure.mapall"
for _ in $(seq "$TRIALS"); do
    one warm "$CACHE_MB" >>"$B/pressure.warm"
    one cold "$CACHE_MB" >>"$B/pressure.cold"
    one cold "$CACHE_MB" QMOE_PREFETCH=0 >>"$B/pressure.nopf"
    one cold "$CACHE_MB" QMOE_PREFETCH=1 1 >>"$B/pressure.b1"
    one cold 8192 >>"$B/pressure.mapall"
done
median() { # field of the file's lines
    awk -v f="$1" '{ print $f }' "$2" | sort -g | awk '{ v[NR] = $1 }
        END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
report() { # label file
    best <"$2" | awk -v l="$1" -v mp="$(median 1 "$2")" -v md="$(median 2 "$2")" '{
        printf "%-44s prompt %6.2f tokens/s  decode %6.2f tokens/s (first 16: %6.2f)  %4d misses  peak %s  [medians %.2f, %.2f]\n",
               l, $1, $2, $3, $4, ($5 > 0 ? sprintf("%.2f GB", $5 / 1e9) : "-"), mp, md }'
}
report "warm, no limit" "$B/pressure.warm"
report "cold, limit $LIMIT" "$B/pressure.cold"
report "cold, limit $LIMIT, QMOE_PREFETCH=0" "$B/pressure.nopf"
report "cold, limit $LIMIT, --batch 1" "$B/pressure.b1"
report "cold, limit $LIMIT, --cache-mb 8192 (map all)" "$B/pressure.mapall"
read -r cp cd c16 _ _ < <(best <"$B/pressure.cold")
ratio() { # label file
    best <"$2" | awk -v l="$1" -v cp="$cp" -v cd="$cd" -v c16="$c16" '{
        printf "cold/%-18s prompt %5.2fx  decode %5.2fx  first 16 %5.2fx\n", l, cp / $1, cd / $2, c16 / $3 }'
}
ratio "warm" "$B/pressure.warm"
ratio "no-prefetch" "$B/pressure.nopf"
ratio "batch-1" "$B/pressure.b1"
ratio "map-all" "$B/pressure.mapall"
