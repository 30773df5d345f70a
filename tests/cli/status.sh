#!/usr/bin/env bash
# qmoe-status on real extractions of the fixture (finished, partial,
# stopped, crashed, sharded), on directories without progress.json, on bad
# input, and --watch through a pseudo-terminal during a real extraction.
. "$(dirname "$0")/lib.sh"
plan 106
OMNI="$FIX/qwen3moe-tiny/omni"   # 3 layers x 16 experts, 52 files

# jf NAME: a top-level field of the JSON in $out (first occurrence; top-level
# fields come before the nested arrays that reuse some names)
jf() { printf %s "$out" | tr -d '\n\t' | grep -o "\"$1\":[^,}]*" | head -n 1 | cut -d: -f2-; }
# jeq TESTNAME FIELD VALUE: checks a field of the last --json run
jeq() {
    local v; v=$(jf "$2")
    [ "$v" = "$3" ] && ok "$1" || fail "$1" "$2 is '$v', wanted '$3'"
}
wait_files() { # DIR N: until DIR/experts has >= N final files (at most 20 s)
    for _ in $(seq 200); do
        [ "$(ls "$1/experts" 2>/dev/null | grep -vc '\.tmp\.')" -ge "$2" ] && return 0; sleep 0.1
    done; return 1
}
has_esc() { grep -q $'\033' "$1"; }

# -- usage
run qmoe-status --help
expect help 0 "--watch" stdout
run qmoe-status --version
expect version 0 "qmoe-status 0." stdout
run qmoe-status
expect no-args 2 "missing OUT"
run qmoe-status --bogus "$T"
expect bad-option 2 "Try 'qmoe-status --help' for more information."
run qmoe-status --watch=abc "$T"
expect bad-watch 2 "--watch: 'abc'"

# -- errors: no such directory, a file, an empty directory
run qmoe-status "$T/none"
expect missing-dir 2 "cannot open '$T/none'"
touch "$T/afile"
run qmoe-status "$T/afile"
expect not-a-dir 2 "'$T/afile' is not a directory"
mkdir "$T/empty"
run qmoe-status "$T/empty"
expect empty-dir 2 "'$T/empty' is not an extraction directory: it has no .qmoe/, qmoe.json or experts/"
run qmoe-status --json "$T/empty"
[ "$rc" = 2 ] && [ -z "$out" ] && ok empty-dir-json-nothing-on-stdout || fail empty-dir-json-nothing-on-stdout "rc=$rc $out"

# -- a finished extraction
qmoe-extract "$OMNI" "$T/full" >/dev/null 2>&1 || fail full-extract
LC_ALL=C run qmoe-status "$T/full"
expect finished-exit 0 "finished" stdout
[[ "$out" == *"experts   48/48 (100.0 %)   layers 3/3 complete"* ]] && ok finished-text-counts || fail finished-text-counts "$out"
[[ "$out" == *"other     4/4 files"* ]] && ok finished-text-other || fail finished-text-other "$out"
[[ "$out" == *"log       $T/full/.qmoe/extract.log"* ]] && ok finished-text-log || fail finished-text-log "$out"
[ "$(printf '%s\n' "$out" | grep -o 'L0[0-2] 16/16 #######\*' | wc -l)" = 3 ] && ok finished-text-layer-rows || fail finished-text-layer-rows "$out"
run qmoe-status --json "$T/full"
expect finished-json-exit 0
jeq finished-json-state state '"finished"'
jeq finished-json-complete complete true
jeq finished-json-from expected_from '"manifest"'
jeq finished-json-experts-done experts_done 48
jeq finished-json-experts-expected experts_expected 48
jeq finished-json-percent percent 100
jeq finished-json-layers layers_complete 3
jeq finished-json-layers-expected layers_expected 3
jeq finished-json-other other_done 4
jeq finished-json-other-expected other_expected 4
jeq finished-json-bytes-planned bytes_planned "$(jf bytes_done)"
jeq finished-json-eta eta_s null
jeq finished-json-error last_error null
jeq finished-json-log log "\"$T/full/.qmoe/extract.log\""
jeq finished-json-journal journal_records 52
jeq finished-json-partial partial false
for f in out time state pid complete expected_from partial selected_layers selected_experts \
         experts_done experts_expected experts_unexpected percent layers_complete \
         layers_expected num_layers num_experts other_done other_expected bytes_done \
         bytes_planned rate_files_per_s rate_bytes_per_s rate_window_s eta_s elapsed_s \
         started_unix updated_unix last_error log in_flight stale_tmp layers jobs \
         journal_records journal_bad_lines snapshot_ms; do
    printf %s "$out" | grep -q "^	\"$f\":" || missing="${missing:-} $f"
done
[ -z "${missing:-}" ] && ok json-all-fields || fail json-all-fields "missing:$missing"
[[ "$(printf %s "$out" | tr -d '\n\t')" == *'"layer":2,"done":16,"expected":16,"complete":true,"in_flight":0'* ]] \
    && ok finished-json-layer-row || fail finished-json-layer-row
echo "snapshot of the 52-file fixture: $(jf snapshot_ms) ms"

# -- a partial one (--layers/--experts): complete for what was asked
qmoe-extract --layers 1 --experts 0-7 "$OMNI" "$T/sub" >/dev/null 2>&1 || fail sub-extract
run qmoe-status "$T/sub"
expect partial-exit 0 "selection layers 1, experts 0-7 (partial extraction)" stdout
run qmoe-status --json "$T/sub"
jeq partial-json-partial partial true
jeq partial-json-layers selected_layers '"1"'
jeq partial-json-experts experts_expected 8
jeq partial-json-done experts_done 8
jeq partial-json-layers-expected layers_expected 1
jeq partial-json-complete complete true

# -- stopped by SIGTERM: resumable, exit 1, counts agree with the files
QMOE_THROTTLE_MS=60 qmoe-extract -j 2 "$OMNI" "$T/term" >/dev/null 2>&1 & pid=$!
wait_files "$T/term" 8
run qmoe-status --json "$T/term"
expect running-exit 1
jeq running-json-state state '"running"'
jeq running-json-pid pid "$pid"
jeq running-json-complete complete false
kill -TERM $pid; wait $pid
n=$(ls "$T/term/experts" | grep -vc '\.tmp\.')
run qmoe-status "$T/term"
expect stopped-exit 1 "stopped (resumable)" stdout
[[ "$out" == *"experts   $n/48 "* ]] && ok stopped-text-count || fail stopped-text-count "want $n: $out"
run qmoe-status --json "$T/term"
jeq stopped-json-state state '"stopped"'
jeq stopped-json-done experts_done "$n"
jeq stopped-json-expected experts_expected 48
jeq stopped-json-from expected_from '"config"'
jeq stopped-json-no-eta eta_s null
[ "$n" -lt 48 ] && ok stopped-is-partial || fail stopped-is-partial "n=$n"

# -- failed: the job's last error is shown (progress.json edited by hand)
cp -r "$T/term" "$T/failed"
sed -i 's/"state":"stopped"/"state":"failed"/; s/"last_error":null/"last_error":"cannot write '"'"'experts\/x'"'"': No space left on device"/' \
    "$T/failed/.qmoe/progress.json"
run qmoe-status "$T/failed"
expect failed-exit 1 "error     cannot write 'experts/x': No space left on device" stdout
run qmoe-status --json "$T/failed"
jeq failed-json-state state '"failed"'
jeq failed-json-error last_error "\"cannot write 'experts/x': No space left on device\""
# Off a terminal a long error line stays whole (it was cut at 80 columns).
long="cannot write '$T/failed/experts/expert_127_layer_47.safetensors.tmp.12345': No space left on device (needs 57.9 GB)"
/usr/bin/python3 - "$T/failed/.qmoe/progress.json" "$long" <<'PYEOF'
import json, sys
p = json.load(open(sys.argv[1])); p["last_error"] = sys.argv[2]
json.dump(p, open(sys.argv[1], "w"))
PYEOF
run qmoe-status "$T/failed"
expect failed-long-error-whole 1 "error     $long" stdout

# -- crashed (SIGKILL): progress says running, the pid is gone, the lock stale
QMOE_THROTTLE_MS=60 qmoe-extract -j 2 "$OMNI" "$T/kill" >/dev/null 2>&1 & pid=$!
wait_files "$T/kill" 8
kill -KILL $pid; wait $pid 2>/dev/null
run qmoe-status "$T/kill"
expect crashed-exit 1 "crashed (pid $pid gone, stale lock; resumable)" stdout
run qmoe-status --json "$T/kill"
jeq crashed-json-state state '"crashed"'
jeq crashed-json-pid pid "$pid"
[[ "$(printf %s "$out" | tr -d '\n\t')" == *'"stale_lock":true'* ]] && ok crashed-json-stale-lock || fail crashed-json-stale-lock
jeq crashed-json-done experts_done "$(ls "$T/kill/experts" | grep -vc '\.tmp\.')"
# a temporary left by a dead writer is reported as such
sh -c 'exit 0' & dead=$!; wait $dead
touch "$T/kill/experts/expert_15_layer_02.safetensors.tmp.$dead"
run qmoe-status --json "$T/kill"
[[ "$(printf %s "$out" | tr -d '\n\t')" == *"\"stale_tmp\":["*"{\"path\":\"experts/expert_15_layer_02.safetensors\",\"pid\":$dead,\"alive\":false"* ]] \
    && ok crashed-json-stale-tmp || fail crashed-json-stale-tmp "$out"
# resuming finishes it
qmoe-extract "$OMNI" "$T/kill" >/dev/null 2>&1
run qmoe-status "$T/kill"
expect crashed-then-resumed 0 "finished" stdout

# -- without progress.json: scan experts/ (an older run or another tool)
mkdir -p "$T/scan"
cp -r "$T/full/experts" "$T/full/layers" "$T/full/globals.safetensors" "$T/full/config.json" "$T/scan/"
run qmoe-status --json "$T/scan"
expect scan-complete-exit 0
jeq scan-json-state state '"none"'
jeq scan-json-from expected_from '"config"'
jeq scan-json-done experts_done 48
jeq scan-json-other other_done 4
jeq scan-json-bytes bytes_done "$(cat "$T/scan"/experts/* "$T/scan"/layers/* "$T/scan/globals.safetensors" | wc -c)"
rm "$T/scan/experts/expert_0"[0-2]"_layer_01.safetensors"
run qmoe-status "$T/scan"
expect scan-incomplete-exit 1 "experts   45/48 (93.8 %)   layers 2/3 complete" stdout
[[ "$out" == *"none (no job record: files scanned)"* ]] && ok scan-text-state || fail scan-text-state "$out"
rm "$T/scan/config.json"   # no config: the grid comes from the names
run qmoe-status --json "$T/scan"
jeq scan-names-from expected_from '"scan"'
jeq scan-names-expected experts_expected 48
jeq scan-names-layers num_layers 3
mkdir -p "$T/bare/experts"
run qmoe-status --json "$T/bare"
expect bare-experts-dir 1
jeq bare-experts-done experts_done 0

# -- a journal with a bad line and a torn last line still gives figures
mkdir -p "$T/torn"; cp -r "$T/full/experts" "$T/full/.qmoe" "$T/torn/"
rm "$T/torn/.qmoe/progress.json"
printf 'not json\n{"path":"experts/x' >>"$T/torn/.qmoe/journal.jsonl"
run qmoe-status --json "$T/torn"
jeq torn-journal-records journal_records 52
jeq torn-journal-bad journal_bad_lines 1
jeq torn-journal-done experts_done 48

# -- shards: the whole and each part
qmoe-extract --shard 0/2 "$OMNI" "$T/sh" >/dev/null 2>&1
run qmoe-status --json "$T/sh"
expect shard-half-exit 1
[[ "$(printf %s "$out" | tr -d '\n\t')" == *'"dir":".qmoe/shard-1-of-2","shard":1,"shards":2,"state":"none"'* ]] \
    && ok shard-half-missing-part || fail shard-half-missing-part "$out"
run qmoe-status "$T/sh"
[[ "$out" == *"1/2  not started"* ]] && ok shard-half-text || fail shard-half-text "$out"
qmoe-extract --shard 1/2 "$OMNI" "$T/sh" >/dev/null 2>&1
run qmoe-status --json "$T/sh"
expect shard-both-exit 0
jeq shard-both-state state '"finished"'
jeq shard-both-done experts_done 48

# -- output off a terminal: no escape codes, even without NO_COLOR
env -u NO_COLOR qmoe-status "$T/term" >"$T/plain.txt" 2>&1
! has_esc "$T/plain.txt" && ok plain-no-escapes || fail plain-no-escapes
env -u NO_COLOR qmoe-status --watch=0.1 "$T/full" >"$T/plainw.txt" 2>&1; rc=$?
[ $rc = 0 ] && ! has_esc "$T/plainw.txt" && grep -q ' finished experts 48/48 100.0% ' "$T/plainw.txt" \
    && ok watch-plain-ends-on-finished-job || fail watch-plain-ends-on-finished-job "rc=$rc $(cat "$T/plainw.txt")"
run qmoe-status --watch "$T/full"   # a bare --watch does not take OUT as its value
expect watch-bare-option 0 "job ended; final snapshot:" stdout
env -u NO_COLOR qmoe-status --watch=0.1 --json "$T/full" >"$T/jsonw.txt"
[ "$(wc -l <"$T/jsonw.txt")" = 1 ] && grep -q '^{"out":' "$T/jsonw.txt" && ok watch-json-one-line \
    || fail watch-json-one-line "$(head -c 300 "$T/jsonw.txt")"
LC_ALL=C qmoe-status "$T/full" >"$T/ascii.txt"
grep -q '^L00 16/16 #######\*' "$T/ascii.txt" && ! grep -q $'\xe2' "$T/ascii.txt" \
    && ok ascii-bars-in-c-locale || fail ascii-bars-in-c-locale "$(cat "$T/ascii.txt")"
if locale -a 2>/dev/null | grep -qix 'c.utf-\?8'; then
    LC_ALL=C.UTF-8 qmoe-status "$T/full" >"$T/utf8.txt"
    grep -q '^L00 16/16 ███████✓' "$T/utf8.txt" && ok unicode-bars-in-utf8-locale \
        || fail unicode-bars-in-utf8-locale "$(cat "$T/utf8.txt")"
else
    skip unicode-bars-in-utf8-locale "no C.UTF-8 locale"
fi

# -- --watch on a pseudo-terminal during a real extraction: the count rises,
# the screen is redrawn in place, and it ends by itself when the job does
if ! command -v script >/dev/null; then
    fail watch-tty "script(1) (util-linux) is not installed"
else
    QMOE_THROTTLE_MS=60 qmoe-extract -j 1 "$OMNI" "$T/live" >/dev/null 2>&1 & pid=$!
    wait_files "$T/live" 1
    TERM=xterm timeout 60 script -qfec "qmoe-status --watch=0.2 $T/live" "$T/tty.txt" \
        </dev/null >/dev/null 2>&1; rc=$?
    wait $pid
    [ $rc = 0 ] && ok watch-tty-ends-when-finished || fail watch-tty-ends-when-finished "rc=$rc"
    counts=$(grep -ao 'experts   [0-9]*/48' "$T/tty.txt" | grep -o '[0-9]*/' | tr -d / | uniq)
    first=$(printf '%s\n' "$counts" | head -n 1); last=$(printf '%s\n' "$counts" | tail -n 1)
    sorted=$(printf '%s\n' "$counts" | sort -n)
    [ "$(printf '%s\n' "$counts" | wc -l)" -ge 3 ] && [ "$counts" = "$sorted" ] && [ "$last" = 48 ] \
        && [ "$first" -lt 48 ] && ok watch-tty-count-rises || fail watch-tty-count-rises "$(echo $counts)"
    grep -qa $'\033\[H' "$T/tty.txt" && grep -qa $'\033\[J' "$T/tty.txt" \
        && ok watch-tty-redraws-in-place || fail watch-tty-redraws-in-place
    ! grep -qa $'\033\[3[0-9]m' "$T/tty.txt" && ok watch-tty-no-colour-with-NO_COLOR \
        || fail watch-tty-no-colour-with-NO_COLOR
    grep -qa 'finished experts 48/48 100.0%' "$T/tty.txt" && ok watch-tty-final-summary \
        || fail watch-tty-final-summary
    grep -qa $'\033\[?25h' "$T/tty.txt" && ok watch-tty-cursor-restored || fail watch-tty-cursor-restored
    # colour on a terminal without NO_COLOR
    env -u NO_COLOR TERM=xterm script -qfec "qmoe-status $T/full" "$T/color.txt" </dev/null >/dev/null 2>&1
    grep -qa $'\033\[32m' "$T/color.txt" && ok tty-colour || fail tty-colour
    # q quits a watch that would otherwise go on (an incomplete scan-only dir)
    (sleep 1; printf q) | TERM=xterm timeout 30 script -qfec "qmoe-status --watch=0.2 $T/scan" \
        "$T/q.txt" >/dev/null 2>&1; rc=$?
    grep -qa 'COMMAND_EXIT_CODE="1"' "$T/q.txt" && ok watch-q-quits || fail watch-q-quits "rc=$rc $(tail -c 300 "$T/q.txt" | cat -v)"
fi

# -- a 6144-file directory (48 layers x 128 experts) with its journal: the
# figures are right; the time is printed for the log, not asserted
big="$T/big"; mkdir -p "$big/experts" "$big/.qmoe"
(cd "$big/experts" && for l in $(seq -w 0 47); do
    truncate -s 9437336 $(seq -f "expert_%03g_layer_$l.safetensors" 0 127) # sparse, the recorded size
done)
awk 'BEGIN { for (l = 0; l < 48; l++) for (e = 0; e < 128; e++) {
    p = sprintf("experts/expert_%03d_layer_%02d.safetensors", e, l)
    t = ""
    for (k = 0; k < 3; k++)
        t = t sprintf("%s{\"name\":\"thinker.model.layers.%d.mlp.experts.%d.p%d.weight\",\"dtype\":\"BF16\",\"shape\":[768,2048],\"offsets\":[0,3145728],\"crc32\":1,\"source\":{\"file\":\"model-00001-of-00015.safetensors\",\"tensor\":\"x\",\"offset\":1,\"slice\":-1}}", k ? "," : "", l, e, k)
    printf "{\"path\":\"%s\",\"kind\":\"expert\",\"layer\":%d,\"expert\":%d,\"size\":9437336,\"sha256\":\"%064d\",\"time\":%.1f,\"tensors\":[%s]}\n", p, l, e, 0, 1764197000 + (l * 128 + e) * 0.1, t
} }' >"$big/.qmoe/journal.jsonl"
run qmoe-status --json "$big"
# a journal but no qmoe.json: the job did not finish (qmoe-verify agrees)
expect big-exit 1
jeq big-reason incomplete_reason '"qmoe.json not written"'
jeq big-experts experts_done 6144
jeq big-layers layers_complete 48
jeq big-records journal_records 6144
jeq big-bytes bytes_done $((6144 * 9437336))
jeq big-rate rate_files_per_s 10
echo "snapshot of a 6144-file directory: $(jf snapshot_ms) ms"
