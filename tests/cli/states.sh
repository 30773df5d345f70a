#!/usr/bin/env bash
# Every state of an extraction directory, made for real, judged by both
# qmoe-status and qmoe-verify: they must agree on complete (exit 0) or not
# (exit 1), and each must give the exit code the state deserves. The table
# at the end (one "# state status verify" line each) is what the closing
# note of issue 11 quotes.
. "$(dirname "$0")/lib.sh"
plan 65
OMNI="$FIX/qwen3moe-tiny/omni"   # 3 layers x 16 experts, 52 files

wait_files() { # DIR N: until DIR/experts has >= N final files (at most 20 s)
    for _ in $(seq 200); do
        [ "$(ls "$1/experts" 2>/dev/null | grep -vc '\.tmp\.')" -ge "$2" ] && return 0; sleep 0.1
    done; return 1
}
# state NAME DIR WANT [VERIFY-OPTION...]: runs both tools on DIR, checks
# their exit codes against WANT and against each other
state() {
    local name=$1 dir=$2 want=$3; shift 3
    qmoe-status "$dir" >"$T/$name.status" 2>&1; local s=$?
    qmoe-verify "$@" "$dir" >"$T/$name.verify" 2>&1; local v=$?
    echo "# state $name status $s verify $v"
    [ "$s" = "$want" ] && ok "$name-status-$want" \
        || fail "$name-status-$want" "exit $s: $(head -c 400 "$T/$name.status")"
    [ "$v" = "$want" ] && ok "$name-verify-$want" \
        || fail "$name-verify-$want" "exit $v: $(head -c 600 "$T/$name.verify")"
}
# mentions NAME FILE TEXT: the tool's output names the state
mentions() { grep -qF -- "$3" "$2" && ok "$1" || fail "$1" "lacks '$3': $(head -c 600 "$2")"; }
# lacks NAME FILE TEXT
lacks() { grep -qF -- "$3" "$2" && fail "$1" "has '$3': $(head -c 600 "$2")" || ok "$1"; }

# -- complete
qmoe-extract "$OMNI" "$T/complete" >/dev/null 2>&1 || fail complete-extract
state complete "$T/complete" 0

# -- a file deleted after the extraction
cp -a "$T/complete" "$T/deleted"
rm "$T/deleted/experts/expert_07_layer_01.safetensors"
state deleted "$T/deleted" 1 --quick
mentions deleted-verify-names "$T/deleted.verify" "layer 01: expert 7 missing"
mentions deleted-status-says "$T/deleted.status" "47/48"

# -- damaged OUTs: both tools read OUT through one view (outdir/view.h), so
#    besides the exit codes their counts of complete experts and layers agree
# agree NAME DIR WANT: exit codes as state(), then status --json's
# experts_done/layers_complete equal verify --quick --json's
agree() {
    local name=$1 dir=$2 want=$3
    state "$name" "$dir" "$want" --quick
    local sj vj
    sj=$(qmoe-status --json "$dir" 2>/dev/null | jq -c '[.experts_done, .layers_complete, .layers_expected]')
    vj=$(qmoe-verify --quick --json "$dir" 2>/dev/null | jq -c '[.experts.present, .layers.complete, .layers.expected]')
    echo "# counts $name status $sj verify $vj"
    [ -n "$sj" ] && [ "$sj" = "$vj" ] && ok "$name-counts-agree" \
        || fail "$name-counts-agree" "status $sj, verify $vj"
}
cp -a "$T/complete" "$T/truncated"
truncate -s 100 "$T/truncated/experts/expert_07_layer_01.safetensors"
agree truncated "$T/truncated" 1
mentions truncated-verify-names "$T/truncated.verify" "truncated: 100 bytes"
cp -a "$T/complete" "$T/two-damaged"   # status said layers 2/3, verify 1/3
rm "$T/two-damaged/experts/expert_02_layer_00.safetensors"
truncate -s 100 "$T/two-damaged/experts/expert_07_layer_01.safetensors"
agree two-damaged "$T/two-damaged" 1
mentions two-damaged-status-layers "$T/two-damaged.status" "layers 1/3 complete"
cp -a "$T/complete" "$T/deleted-counts"
rm "$T/deleted-counts/experts/expert_07_layer_01.safetensors"
agree deleted-counts "$T/deleted-counts" 1
cp -a "$T/complete" "$T/stray-tmp"      # a dead writer's temporary: a note, not a fault
sh -c 'exit 0' & dead=$!; wait $dead
cp "$T/stray-tmp/experts/expert_03_layer_00.safetensors" \
   "$T/stray-tmp/experts/expert_03_layer_00.safetensors.tmp.$dead"
agree stray-tmp "$T/stray-tmp" 0
cp -a "$T/complete" "$T/foreign"        # a file of another naming: not ours, not complete
cp "$T/foreign/experts/expert_03_layer_00.safetensors" "$T/foreign/experts/expert_3_layer_0.safetensors"
agree foreign "$T/foreign" 1
mentions foreign-status-says "$T/foreign.status" "unexpected files"
cp -a "$T/complete" "$T/foreign-text"
echo notes >"$T/foreign-text/experts/README.txt"
agree foreign-text "$T/foreign-text" 1

# -- files only: no job record and no manifest (another tool's output with
#    the same names); verify --quick checks coverage from config.json and
#    the layout, and every header
cp -a "$T/complete" "$T/files"
rm -rf "$T/files/.qmoe" "$T/files/qmoe.json"
state files-only "$T/files" 0 --quick
cp -a "$T/files" "$T/files-short"
rm "$T/files-short/experts/expert_03_layer_02.safetensors"
state files-only-short "$T/files-short" 1 --quick
mentions files-only-short-names "$T/files-only-short.verify" "layer 02: expert 3 missing"
cp -a "$T/files" "$T/files-bad"
printf 'garbage' > "$T/files-bad/experts/expert_04_layer_00.safetensors"
qmoe-verify --quick "$T/files-bad" >"$T/files-bad.verify" 2>&1; v=$?
[ $v = 1 ] && ok files-only-bad-header-verify-1 || fail files-only-bad-header-verify-1 "exit $v"
mentions files-only-bad-header-named "$T/files-bad.verify" "experts/expert_04_layer_00.safetensors"

# -- no manifest after a crash at the very end (files and journal in place)
cp -a "$T/complete" "$T/nomanifest"
rm "$T/nomanifest/qmoe.json" "$T/nomanifest/model.safetensors.index.json"
state no-manifest "$T/nomanifest" 1 --quick
mentions no-manifest-status-says "$T/no-manifest.status" "qmoe.json"

# -- stopped by SIGTERM
QMOE_THROTTLE_MS=60 qmoe-extract -j 1 "$OMNI" "$T/stopped" >/dev/null 2>&1 & pid=$!
wait_files "$T/stopped" 6; kill -TERM $pid; wait $pid
state stopped "$T/stopped" 1 --quick
mentions stopped-status-says "$T/stopped.status" "stopped"

# -- killed (stale lock)
QMOE_THROTTLE_MS=60 qmoe-extract -j 1 "$OMNI" "$T/killed" >/dev/null 2>&1 & pid=$!
wait_files "$T/killed" 6; kill -KILL $pid; wait $pid 2>/dev/null
state killed "$T/killed" 1 --quick
mentions killed-status-says "$T/killed.status" "crashed"

# -- a finished partial extraction
qmoe-extract --layers 1 --experts 0-7 "$OMNI" "$T/partial" >/dev/null 2>&1 || fail partial-extract
state partial-finished "$T/partial" 0

# -- a stopped partial extraction: counted against its own selection only
QMOE_THROTTLE_MS=100 qmoe-extract -j 1 --layers 1 "$OMNI" "$T/partstop" >/dev/null 2>&1 & pid=$!
wait_files "$T/partstop" 4; kill -TERM $pid; wait $pid
state partial-stopped "$T/partstop" 1 --quick
lacks partial-stopped-no-layer-0 "$T/partial-stopped.verify" "layer 00"
lacks partial-stopped-no-layer-2 "$T/partial-stopped.verify" "layer 02"
mentions partial-stopped-status-of-16 "$T/partial-stopped.status" "/16"

# -- a source missing experts its config declares (kept with --allow-missing)
cp -a "$OMNI" "$T/src-short"
sed -i 's/"num_experts": *16/"num_experts": 32/' "$T/src-short/config.json"
grep -q '"num_experts": *32' "$T/src-short/config.json" || fail src-short-config
run qmoe-extract "$T/src-short" "$T/short-refused"
expect missing-refused 2 "layers 0-2: experts 16-31 missing from the source (config.json declares 32)"
[ ! -e "$T/short-refused/experts" ] && ok missing-refused-writes-nothing || fail missing-refused-writes-nothing
run qmoe-extract --dry-run "$T/src-short" "$T/never"
expect missing-dry-run 2 "experts 16-31 missing from the source"
run qmoe-extract --allow-missing "$T/src-short" "$T/short"
expect missing-allowed 0
state source-missing "$T/short" 1 --quick
mentions source-missing-status-names "$T/source-missing.status" "experts 16-31 missing from the source"
mentions source-missing-verify-names "$T/source-missing.verify" "experts 16-31 missing from the source"

# -- shard parts: one of two finished, and one running
qmoe-extract --shard 0/2 "$OMNI" "$T/half" >/dev/null 2>&1 || fail half-extract
state shard-half "$T/half" 1 --quick
QMOE_THROTTLE_MS=80 qmoe-extract -j 1 --shard 1/2 "$OMNI" "$T/half" >/dev/null 2>&1 & pid=$!
wait_files "$T/half" 30
state shard-running "$T/half" 1 --quick
mentions shard-running-status-says "$T/shard-running.status" "running"
wait $pid
state shard-done "$T/half" 0
