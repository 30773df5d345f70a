#!/usr/bin/env bash
# run_gate.sh - the coherence gate under a memory limit (issue 22 item 5).
#
# The real-width sample of run_pressure.sh (hidden 2048, 128 experts top-8,
# vocab 151936, 4 layers: 6.2 GB; written with qmoe-mksample unless
# QMOE_REAL names one), extracted to OUT, measured from a cold page cache
# in a memory cgroup of $LIMIT (3G, about half the model), interleaved,
# $TRIALS times (1):
#   hash      qmoe-verify OUT: read and hash every file (the baseline);
#   gate      qmoe-verify --coherence OUT with this build;
#   gate-base the same with $BASE/qmoe-verify (another build, e.g. main's,
#             when BASE is set): the gate before the change.
# Prints each wall time (best and median), the cgroup's peak, and the
# ratios gate/hash and gate-base/gate of the best times. Needs root and a
# memory cgroup, as run_pressure.sh; dropping the page cache affects the
# whole machine.
#
#   QMOE_BUILD=build BASE=/work/main/build/bin bash tests/bench/run_gate.sh
# Environment: THREADS, TRIALS (1), LIMIT (3G), QMOE_REAL, TOKENIZER
# (qwen3: the real Qwen3 tokenizer of tests/fixtures, as real checkpoints
# have; sample: mksample's 336 tokens), BASE, ARMS (the
# arms to run, default all: "hash gate gate-base"), GATE_ARGS (more options
# of this build's gate, e.g. "--gen-tokens 8").
set -eu
cd "$(dirname "$0")/../.."
: "${QMOE_BUILD:?set QMOE_BUILD to the build directory}"
THREADS=${THREADS:-$(getconf _NPROCESSORS_ONLN)}
TRIALS=${TRIALS:-1}
LIMIT=${LIMIT:-3G}
BASE=${BASE:-}
B=${QMOE_BENCH_DIR:-$QMOE_BUILD/bench}

skip() { echo "skipped: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (a memory cgroup and dropping the page cache)"
[ -w /proc/sys/vm/drop_caches ] || skip "cannot drop the page cache (/proc/sys/vm/drop_caches)"
if [ -d /sys/fs/cgroup/memory ] && [ -w /sys/fs/cgroup/memory ]; then
    CG=/sys/fs/cgroup/memory/qmoe_gate_$$ LIMFILE=memory.limit_in_bytes PEAK=memory.max_usage_in_bytes
elif grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null && [ -w /sys/fs/cgroup ]; then
    CG=/sys/fs/cgroup/qmoe_gate_$$ LIMFILE=memory.max PEAK=memory.peak
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
# The sample's own tokenizer has 336 tokens: it spells the gate's texts in
# 3.2x as many tokens as the Qwen3 tokenizer a real checkpoint ships with
# (2155 instead of 664), and the gate's work grows with them. By default
# the sample gets the real tokenizer (its shards hard-linked);
# TOKENIZER=sample keeps mksample's.
TOKENIZER=${TOKENIZER:-qwen3}
if [ "$TOKENIZER" != sample ]; then
    T=tests/fixtures/qwen3-tokenizer
    if [ ! -f "$MODEL-qwen3/model.safetensors.index.json" ]; then
        rm -rf "$MODEL-qwen3"
        mkdir "$MODEL-qwen3"
        cp -al "$MODEL"/* "$MODEL-qwen3"/
        rm "$MODEL-qwen3/tokenizer.json" "$MODEL-qwen3/tokenizer_config.json"
        gzip -dc "$T/tokenizer.json.gz" >"$MODEL-qwen3/tokenizer.json"
        cp "$T/tokenizer_config.json" "$MODEL-qwen3/"
    fi
    MODEL=$MODEL-qwen3
fi
OUT=$MODEL.out
[ -f "$OUT/qmoe.json" ] || "$QMOE_BUILD/bin/qmoe-extract" --no-progress "$MODEL" "$OUT" >/dev/null

# one LABEL BIN [ARGS]: cold, in the cgroup; appends "seconds peak_bytes" to $B/gate.LABEL
one() {
    local label=$1 bin=$2 t0 t1 rc
    shift 2
    sync
    echo 3 >/proc/sys/vm/drop_caches
    [ -f "$CG/memory.force_empty" ] && echo 0 >"$CG/memory.force_empty" 2>/dev/null || true
    [ -f "$CG/memory.max_usage_in_bytes" ] && echo 0 >"$CG/memory.max_usage_in_bytes" || true
    t0=$(date +%s.%N)
    rc=0
    sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$CG" \
        "$bin/qmoe-verify" -j "$THREADS" --no-progress "$@" "$OUT" >"$B/gate.$label.txt" 2>&1 ||
        rc=$?
    t1=$(date +%s.%N)
    [ "$rc" -le 1 ] || { echo "$label: exit $rc"; cat "$B/gate.$label.txt"; exit 1; }
    echo "$(echo "$t1 - $t0" | bc) $(cat "$CG/$PEAK" 2>/dev/null || echo 0)" >>"$B/gate.$label"
}

echo "OUT $OUT; limit $LIMIT, $THREADS threads, $TRIALS trials, cold; load: $(uptime)"
labels=${ARMS:-hash gate gate-base}
[ -n "$BASE" ] || labels=${labels/gate-base/}
for l in $labels; do : >"$B/gate.$l"; done
for _ in $(seq "$TRIALS"); do
    for l in $labels; do
        case $l in
        hash) one hash "$QMOE_BUILD/bin" ;;
        # shellcheck disable=SC2086 # GATE_ARGS is a list of options
        gate) one gate "$QMOE_BUILD/bin" --coherence ${GATE_ARGS:-} ;;
        gate-base) one gate-base "$BASE" --coherence ;;
        esac
    done
done
best() { sort -g "$1" | head -n 1 | awk '{ print $1 }'; }
median() { awk '{ print $1 }' "$1" | sort -g | awk '{ v[NR] = $1 }
    END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for l in $labels; do
    awk -v l="$l" -v b="$(best "$B/gate.$l")" -v m="$(median "$B/gate.$l")" \
        '{ if ($2 > pk) pk = $2 } END { printf "%-10s best %8.1f s  median %8.1f s  peak %.2f GB\n", l, b, m, pk / 1e9 }' \
        "$B/gate.$l"
done
[ -s "$B/gate.gate" ] && [ -s "$B/gate.hash" ] &&
    awk -v g="$(best "$B/gate.gate")" -v h="$(best "$B/gate.hash")" \
        'BEGIN { printf "gate/hash      %.2fx\n", g / h }'
[ -s "$B/gate.gate" ] && [ -s "$B/gate.gate-base" ] && awk -v g="$(best "$B/gate.gate")" -v b="$(best "$B/gate.gate-base")" \
    'BEGIN { printf "gate-base/gate %.2fx\n", b / g }'
[ ! -s "$B/gate.gate.txt" ] || grep -E "coherence|gate:" "$B/gate.gate.txt" | head -n 3
