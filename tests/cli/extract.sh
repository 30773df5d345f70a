#!/usr/bin/env bash
# qmoe-extract end to end on the golden fixture: layout, names, byte
# identity with the source, resume, subsets, signals, locks, bad input.
. "$(dirname "$0")/lib.sh"
plan 81
TOOLS="$QMOE_BUILD/tests/tools"
OMNI="$FIX/qwen3moe-tiny/omni"
QM="$FIX/qwen3moe-tiny/qwen3moe"

# -- full extraction of both layouts of the fixture
for src in "$OMNI" "$QM"; do
    n=$(basename "$src"); dst="$T/$n"
    run qmoe-extract "$src" "$dst"
    expect "extract-$n-exit" 0
    [ "$(ls "$dst/experts" | wc -l)" = 48 ] && ok "extract-$n-48-files" || fail "extract-$n-48-files" "$(ls "$dst/experts" | wc -l)"
    want=$(for l in 00 01 02; do for e in $(seq -w 0 15); do echo "expert_${e}_layer_$l.safetensors"; done; done | sort)
    [ "$(ls "$dst/experts" | sort)" = "$want" ] && ok "extract-$n-names" || fail "extract-$n-names"
    [ "$(ls "$dst/layers")" = "$(printf 'layer_00.safetensors\nlayer_01.safetensors\nlayer_02.safetensors')" ] \
        && ok "extract-$n-layer-files" || fail "extract-$n-layer-files" "$(ls "$dst/layers")"
    run "$TOOLS/ckcmp" "$src" "$dst"
    expect "extract-$n-identical-and-covered" 0 "same: 174 tensors, 843008 bytes" stdout
    check "extract-$n-no-tmp" no_tmp_files "$dst"
    check "extract-$n-manifest-complete" grep -q '"complete":true' "$dst/qmoe.json"
    [ "$(wc -l <"$dst/.qmoe/journal.jsonl")" = 52 ] && ok "extract-$n-journal-lines" || fail "extract-$n-journal-lines"
    check "extract-$n-state-finished" grep -q '"state":"finished"' "$dst/.qmoe/progress.json"
    check "extract-$n-config-copied" cmp "$src/config.json" "$dst/config.json"
    check "extract-$n-tokenizer-copied" cmp "$src/tokenizer.json" "$dst/tokenizer.json"
    run "$TOOLS/stcheck" "$dst"/experts/* "$dst"/layers/* "$dst/globals.safetensors"
    expect "extract-$n-strict-reader-accepts-output" 0 "ok 52 files" stdout
done
dst="$T/omni"
grep -q '"layout":"qwen3_omni_moe"' "$dst/qmoe.json" && ok layout-omni-detected || fail layout-omni-detected
grep -q '"layout":"qwen3_moe"' "$T/qwen3moe/qmoe.json" && ok layout-qwen3moe-detected || fail layout-qwen3moe-detected
# an expert whose gate/up sit in shard 1 and down_proj in shard 2 is one file
grep -q '"thinker.model.layers.0.mlp.experts.14.down_proj.weight": "experts/expert_14_layer_00.safetensors"' \
    "$dst/model.safetensors.index.json" && ok index-cross-shard-expert || fail index-cross-shard-expert

# -- a rerun resumes: nothing is rewritten
sum1=$(cd "$dst" && sha256sum experts/* | sha256sum)
run qmoe-extract "$OMNI" "$dst"
expect resume-exit 0 "(resumed)" stdout
[ "$(wc -l <"$dst/.qmoe/journal.jsonl")" = 52 ] && ok resume-writes-nothing || fail resume-writes-nothing
# a damaged (short) file is redone on resume
f="$dst/experts/expert_03_layer_01.safetensors"; truncate -s 100 "$f"
run qmoe-extract "$OMNI" "$dst"
expect resume-redoes-short-file 0
[ "$(cd "$dst" && sha256sum experts/* | sha256sum)" = "$sum1" ] && ok resume-identical || fail resume-identical
# qmoe.json (written from the records the run kept, not a reread journal)
# holds one record per file, the redone one's with its new hash
dups=$(jq -r '.files[].path' "$dst/qmoe.json" | sort | uniq -d)
[ -z "$dups" ] && jq -e '.files | length > 0' "$dst/qmoe.json" >/dev/null \
    && ok resume-manifest-one-record-each || fail resume-manifest-one-record-each "twice: $dups"
same resume-manifest-files "$(jq '.files | length' "$dst/qmoe.json")" "$(cd "$dst" && find globals.safetensors experts layers other -type f | wc -l)"
same resume-manifest-redone-hash "$(jq -r '.files[] | select(.path == "experts/expert_03_layer_01.safetensors") | .sha256' "$dst/qmoe.json")" \
    "$(sha256sum "$f" | cut -c1-64)"

# -- dry run and JSON
run qmoe-extract --dry-run --json "$OMNI" "$T/never"
expect dry-run-exit 0 '"expert_files":48' stdout
[ ! -e "$T/never" ] && ok dry-run-writes-nothing || fail dry-run-writes-nothing
run qmoe-extract --json "$OMNI" "$T/json"
expect json-summary 0 '"experts_done":48' stdout

# -- subsets: the seed's "experts 0-7 only" mode
run qmoe-extract --layers 1 --experts 0-7 "$OMNI" "$T/sub"
expect subset-exit 0
[ "$(ls "$T/sub/experts" | tr '\n' ' ')" = "$(for e in 0 1 2 3 4 5 6 7; do printf 'expert_0%d_layer_01.safetensors ' $e; done)" ] \
    && ok subset-files || fail subset-files "$(ls "$T/sub/experts")"
run "$TOOLS/ckcmp" --subset "$OMNI" "$T/sub"
expect subset-identical 0 "same:" stdout
check subset-manifest-partial grep -q '"partial":true' "$T/sub/qmoe.json"
check subset-manifest-lists grep -q '"layers":"1","experts":"0-7","count":8' "$T/sub/qmoe.json"
run qmoe-extract --experts 0-16 "$OMNI" "$T/bad-sel"
expect subset-out-of-range 2 "--experts '0-16': 16 is out of range (0-15)"
run qmoe-extract --layers 2-1 "$OMNI" "$T/bad-sel"
expect subset-reversed 2 "range 2-1 is reversed"

# -- bad input: clear message, exit 2, nothing under final names
run qmoe-extract "$T/nope" "$T/o-missing"
expect bad-missing-src 2 "cannot open checkpoint '$T/nope': No such file or directory"
mkdir -p "$T/noconf"; cp "$OMNI/model.safetensors.index.json" "$T/noconf/"
run qmoe-extract "$T/noconf" "$T/o-noconf"
expect bad-no-config 2 "no config.json"
mkdir -p "$T/empty"
run qmoe-extract "$T/empty" "$T/o-empty"
expect bad-empty-dir 2 "no model.safetensors.index.json or model.safetensors"
cp -r "$OMNI" "$T/noshard"; rm "$T/noshard/model-00002-of-00003.safetensors"
run qmoe-extract "$T/noshard" "$T/o-noshard"
expect bad-missing-shard 2 "files of the selection need source shards that are missing (an incomplete download?): shard 'model-00002-of-00003.safetensors' (No such file or directory) blocks 20 files: layers 0-2; nothing written"
[ -z "$(ls "$T/o-noshard/experts" 2>/dev/null)" ] && ok bad-missing-shard-nothing-written || fail bad-missing-shard-nothing-written
# verify --source of a full extraction needs every shard of the source
cp -r "$OMNI" "$T/src-all"
run qmoe-extract --no-progress "$T/src-all" "$T/o-src-all"
expect verify-source-all-extract 0
rm "$T/src-all/model-00002-of-00003.safetensors"
run qmoe-verify --source "$T/src-all" "$T/o-src-all"
expect verify-source-missing-shard 2 "cannot compare '$T/o-src-all' with the source '$T/src-all': a full extraction is compared with every shard, and shard 'model-00002-of-00003.safetensors' (No such file or directory) blocks 20 files: layers 0-2"
cp -r "$OMNI" "$T/trunc"; truncate -s 200000 "$T/trunc/model-00003-of-00003.safetensors"
run qmoe-extract "$T/trunc" "$T/o-trunc"
expect bad-truncated-shard 2 "model-00003-of-00003.safetensors"
[[ "$err" == *"past the end of the file"* ]] && ok bad-truncated-shard-says-why || fail bad-truncated-shard-says-why "$err"
touch "$T/afile"
run qmoe-extract "$OMNI" "$T/afile/out"
expect bad-unwritable-out 2 "cannot create directory '$T/afile/out"
run qmoe-extract --layout nosuch "$OMNI" "$T/o-lay"
expect bad-unknown-layout 2 "known layouts: qwen3_omni_moe, qwen3_moe"
run qmoe-extract "$OMNI"
expect bad-usage 2 "expected SRC and OUT"
run qmoe-extract --help
expect help-exit 0 "Exit status" stdout
run qmoe-extract --version
expect version 0 "qmoe-extract 0." stdout

# -- signals: SIGTERM stops cleanly, SIGKILL leaves no partial file; both resume
wait_files() { # DIR N: wait until DIR/experts has >= N final files (max 20 s)
    for _ in $(seq 200); do
        [ "$(ls "$1/experts" 2>/dev/null | grep -vc '\.tmp\.')" -ge "$2" ] && return 0; sleep 0.1
    done; return 1
}
QMOE_THROTTLE_MS=40 qmoe-extract -j 2 "$OMNI" "$T/term" >"$T/term.out" 2>&1 & pid=$!
wait_files "$T/term" 10; kill -TERM $pid; wait $pid; rc=$?
[ $rc = 1 ] && ok sigterm-exit-1 || fail sigterm-exit-1 "rc=$rc $(cat "$T/term.out")"
check sigterm-state-stopped grep -q '"state":"stopped"' "$T/term/.qmoe/progress.json"
grep -q "stopped by signal" "$T/term.out" && ok sigterm-message || fail sigterm-message "$(cat "$T/term.out")"
check sigterm-no-tmp no_tmp_files "$T/term"
check sigterm-lock-released test ! -s "$T/term/.qmoe/lock"
run qmoe-extract "$OMNI" "$T/term"
expect sigterm-resume 0 "(resumed)" stdout
run "$TOOLS/ckcmp" "$OMNI" "$T/term"
expect sigterm-resume-identical 0 "same: 174" stdout

# a SIGTERM after the last file is in place (4 workers, one file each, then
# a 2 s nap): the run finishes and says the signal came late, not "stopped
# by signal: 4/4 files complete"
QMOE_THROTTLE_MS=2000 qmoe-extract -j 4 --layers 0 --experts 0-1 "$OMNI" "$T/late" \
    >"$T/late.out" 2>"$T/late.err" & pid=$!
for _ in $(seq 150); do
    grep -q '"files_done":4,' "$T/late/.qmoe/progress.json" 2>/dev/null && break; sleep 0.01
done
kill -0 $pid 2>/dev/null && kill -TERM $pid; wait $pid; rc=$?
[ $rc = 0 ] && ok late-sigterm-exit-0 || fail late-sigterm-exit-0 "rc=$rc $(cat "$T/late.err")"
grep -q "^qmoe-extract: 4/4 files complete" "$T/late.out" && ok late-sigterm-says-complete ||
    fail late-sigterm-says-complete "$(cat "$T/late.out" "$T/late.err")"
grep -q "stop signal came after the last of 4 files was complete; finishing" "$T/late.err" &&
    ok late-sigterm-says-why || fail late-sigterm-says-why "$(cat "$T/late.err")"
check late-sigterm-state-finished grep -q '"state":"finished"' "$T/late/.qmoe/progress.json"

QMOE_THROTTLE_MS=300 qmoe-extract -j 2 "$OMNI" "$T/kill" >/dev/null 2>&1 & pid=$!
wait_files "$T/kill" 4
# a second extractor refuses while the first lives, naming its pid
run qmoe-extract "$OMNI" "$T/kill"
expect lock-refused 2 "held by another extraction (pid $pid)"
partial_seen=0
for _ in $(seq 10); do  # every file under a final name parses, while the job runs
    kill -0 $pid 2>/dev/null || break
    files=$(ls "$T/kill/experts" 2>/dev/null | grep -v '\.tmp\.' | sed "s|^|$T/kill/experts/|")
    [ -n "$files" ] && ! "$TOOLS/stcheck" $files >/dev/null && partial_seen=1
    sleep 0.1
done
kill -KILL $pid; wait $pid 2>/dev/null
[ $partial_seen = 0 ] && ok kill-no-partial-final-file || fail kill-no-partial-final-file
check kill-state-still-running grep -q '"state":"running"' "$T/kill/.qmoe/progress.json"
run qmoe-extract "$OMNI" "$T/kill"
expect kill-stale-lock-taken-over 0 "taking over the stale lock of pid $pid"
check kill-no-tmp-after-resume no_tmp_files "$T/kill"
[ "$(cd "$T/kill" && sha256sum experts/* layers/* globals.safetensors | sha256sum)" = \
  "$(cd "$T/omni" && sha256sum experts/* layers/* globals.safetensors | sha256sum)" ] \
    && ok kill-resume-byte-identical || fail kill-resume-byte-identical

# -- detach: background job, pid and log printed
run qmoe-extract --detach "$OMNI" "$T/det"
expect detach-prints-pid 0 "extracting in the background: pid" stdout
dpid=$(printf %s "$out" | sed -n 's/.*pid \([0-9]*\).*/\1/p' | head -1)
for _ in $(seq 100); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
check detach-finished grep -q '"state":"finished"' "$T/det/.qmoe/progress.json"
check detach-log grep -q "finished: 52 files" "$T/det/.qmoe/extract.log"

# -- a detached job is the child's in progress.json too: qmoe-status sees it
# running (it once named the parent, gone, and said "crashed")
QMOE_THROTTLE_MS=100 run qmoe-extract --detach "$OMNI" "$T/det2"
dpid=$(printf %s "$out" | sed -n 's/.*pid \([0-9]*\).*/\1/p' | head -1)
run qmoe-status "$T/det2"
expect detach-status-running 1 "running (pid $dpid)" stdout
same detach-progress-pid "$(jq -r .pid "$T/det2/.qmoe/progress.json")" "$dpid"
kill "$dpid" 2>/dev/null
for _ in $(seq 100); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done

# -- the summary counts one expert in the singular
run qmoe-extract --no-progress --layers 1 --experts 5 "$QM" "$T/one"
expect summary-one-expert 0 "files complete (1 expert)," stdout
