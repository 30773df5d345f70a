#!/usr/bin/env bash
# OUT's source identity (a rerun with another or a changed source refuses
# before writing; --restart removes qmoe's files only and starts over) and
# --detach validating in the foreground.
. "$(dirname "$0")/lib.sh"
plan 33
OMNI="$FIX/qwen3moe-tiny/omni"
tree_sum() { (cd "$1" && find . -path ./.qmoe -prune -o -type f ! -name qmoe.json -print | LC_ALL=C sort | xargs sha256sum); }

qmoe-mksample --seed 2 "$T/A" >/dev/null 2>&1 || fail mksample-A
qmoe-mksample --seed 3 "$T/B" >/dev/null 2>&1 || fail mksample-B

# -- resume onto another source: refused before writing
run qmoe-extract --no-progress "$T/A" "$T/o"
expect first-source 0
before=$(tree_sum "$T/o"); lines=$(wc -l < "$T/o/.qmoe/journal.jsonl")
run qmoe-extract --no-progress "$T/B" "$T/o"
expect other-source-refused 2 "holds an extraction of another source than '$T/B'"
[[ "$err" == *"its data differs"* ]] && ok other-source-says-what || fail other-source-says-what "$err"
[[ "$err" == *"--restart"* ]] && ok other-source-suggests-restart || fail other-source-suggests-restart "$err"
[ "$(tree_sum "$T/o")" = "$before" ] && [ "$(wc -l < "$T/o/.qmoe/journal.jsonl")" = "$lines" ] \
    && ok other-source-wrote-nothing || fail other-source-wrote-nothing
run qmoe-verify "$T/o"
expect other-source-still-verifies-as-A 0
run qmoe-extract --no-progress "$T/A" "$T/o"
expect same-source-resumes 0 "(resumed)" stdout
check records-carry-source-id grep -q '"source_id":"' "$T/o/.qmoe/journal.jsonl"
check manifest-carries-identity grep -q '"header_sha256":"' "$T/o/qmoe.json"

# -- the source changed in place since: refused too
cp -a "$T/A" "$T/A2"
run qmoe-extract --no-progress "$T/A2" "$T/o2"
expect copy-extract 0
touch -d '2001-01-01' "$T/A2/model-00002-of-00003.safetensors"
run qmoe-extract --no-progress "$T/A2" "$T/o2"
expect changed-source-refused 2 "'model-00002-of-00003.safetensors': modified since"

# -- a mixed OUT (a record of another source copied in) is never complete
cp -a "$T/o" "$T/mixed"
sed -i '1s/"source_id":"[0-9a-f]*"/"source_id":"0123456789abcdef"/' "$T/mixed/.qmoe/journal.jsonl"
rm "$T/mixed/qmoe.json"
qmoe-status "$T/mixed" >"$T/mixed.status" 2>&1; s=$?
qmoe-verify --quick "$T/mixed" >"$T/mixed.verify" 2>&1; v=$?
[ $s = 1 ] && [ $v = 1 ] && ok mixed-incomplete-both || fail mixed-incomplete-both "status $s verify $v"
grep -q "mixes files of two sources" "$T/mixed.verify" && ok mixed-verify-says || fail mixed-verify-says "$(cat "$T/mixed.verify")"

# -- --restart: qmoe's files go, the user's stay; the result is B's
echo mine > "$T/o/notes.txt"; echo mine > "$T/o/experts/README"
run qmoe-extract --no-progress --restart "$T/B" "$T/o"
expect restart 0 "--restart: removed"
check restart-keeps-user-files test -f "$T/o/notes.txt" -a -f "$T/o/experts/README"
run qmoe-verify --source "$T/B" "$T/o"
expect restart-is-B 1 "experts/README" stdout
rm "$T/o/experts/README"
run qmoe-verify --source "$T/B" "$T/o"
expect restart-verifies-against-B 0

# -- --detach validates in the foreground
run qmoe-extract --detach "$T/none" "$T/d1"
expect detach-missing-src 2 "$T/none"
[ ! -e "$T/d1/.qmoe/extract.log" ] || ! grep -q . "$T/d1/.qmoe/extract.log" && ok detach-missing-src-not-in-log-only \
    || fail detach-missing-src-not-in-log-only
run qmoe-extract --detach "$T/A" "$T/o"
expect detach-other-source 2 "another source"
QMOE_THROTTLE_MS=100 qmoe-extract --no-progress -j 1 "$OMNI" "$T/d2" >/dev/null 2>&1 & pid=$!
for _ in $(seq 100); do [ -s "$T/d2/.qmoe/lock" ] && break; sleep 0.05; done
run qmoe-extract --detach "$OMNI" "$T/d2"
expect detach-locked 2 "held by another extraction (pid $pid)"
kill -TERM $pid; wait $pid
run qmoe-extract --detach "$OMNI" "$T/d2"
expect detach-ok 0 "extracting in the background: pid" stdout
child=$(printf %s "$out" | sed -n 's/.*background: pid \([0-9]*\).*/\1/p')
for _ in $(seq 200); do kill -0 "$child" 2>/dev/null || break; sleep 0.05; done
run qmoe-verify "$T/d2"
expect detach-result-verifies 0
grep -q "\[$child\] finished" "$T/d2/.qmoe/extract.log" && ok detach-child-did-the-work \
    || fail detach-child-did-the-work "$(tail -3 "$T/d2/.qmoe/extract.log")"

# -- owner records: host, pid, start time; liveness by kill() on this host
#    (start time checked against pid reuse), by heartbeat on another
QMOE_THROTTLE_MS=100 qmoe-extract --no-progress -j 1 "$OMNI" "$T/own" >/dev/null 2>&1 & pid=$!
for _ in $(seq 100); do [ -s "$T/own/.qmoe/progress.json" ] && break; sleep 0.05; done
sleep 0.3
read -r lpid lhost lstart < "$T/own/.qmoe/lock"
want_start=$(sed 's/.*) //' /proc/$pid/stat | cut -d' ' -f20)
[ "$lpid" = $pid ] && [ "$lhost" = "$(hostname)" ] && [ "$lstart" = "$want_start" ] \
    && ok lock-records-host-pid-start || fail lock-records-host-pid-start "lock '$lpid $lhost $lstart', want '$pid $(hostname) $want_start'"
run qmoe-status --json "$T/own"
out=$(printf %s "$out" | tr -d ' \t\n')
[[ "$out" == *"\"host\":\"$(hostname)\""* && "$out" == *'"liveness":"pid"'* ]] \
    && ok status-json-owner-local || fail status-json-owner-local "$out"
run qmoe-status "$T/own"
expect status-owner-local 1 "this host, judged by kill()" stdout
kill -TERM $pid; wait $pid
# a part on another host, progress fresh: running (a local pid means nothing there)
prog="$T/own/.qmoe/progress.json"; now=$(date +%s)
jq -c --argjson now "$now" '.state="running" | .host="node-elsewhere" | .pid=999999 | .updated_unix=$now' "$prog" > "$T/p" && mv "$T/p" "$prog"
echo "999999 node-elsewhere 42" > "$T/own/.qmoe/lock"
run qmoe-status "$T/own"
expect remote-fresh-running 1 "running" stdout
[[ "$out" == *"on node-elsewhere: another host, judged by its heartbeat"* ]] && ok remote-says-heartbeat || fail remote-says-heartbeat "$out"
qmoe-verify --quick "$T/own" >"$T/own.verify" 2>&1; v=$?
[ $v = 1 ] && grep -q "extraction running (pid 999999)" "$T/own.verify" && ok remote-fresh-verify-running \
    || fail remote-fresh-verify-running "exit $v $(cat "$T/own.verify")"
# the same part, heartbeat ten minutes old: crashed
jq -c --argjson t "$((now - 600))" '.updated_unix=$t' "$prog" > "$T/p" && mv "$T/p" "$prog"
run qmoe-status "$T/own"
expect remote-stale-crashed 1 "crashed" stdout
qmoe-verify --quick "$T/own" >"$T/own.verify" 2>&1; v=$?
[ $v = 1 ] && ! grep -q "extraction running" "$T/own.verify" && ok remote-stale-verify-not-running \
    || fail remote-stale-verify-not-running "exit $v $(cat "$T/own.verify")"
# this host, a live pid of another process (reused): the start time differs
jq -c --argjson now "$now" --arg h "$(hostname)" --argjson p $$ '.state="running" | .host=$h | .pid=$p | .pid_start=1 | .updated_unix=$now' "$prog" > "$T/p" && mv "$T/p" "$prog"
run qmoe-status "$T/own"
expect reused-pid-crashed 1 "crashed" stdout
