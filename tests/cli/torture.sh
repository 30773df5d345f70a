#!/usr/bin/env bash
# Kill torture: qmoe-extract is killed at moments spread from its first file
# to its last (SIGKILL: a crash; SIGTERM: a clean stop) and resumed each
# time. After every kill: no partial file under a final name, the recorded
# state is right (crashed: "running" with a dead pid and the stale lock
# taken over on resume; stopped: exit 1, "stopped", lock released, no
# temporary) and qmoe-status (when built) agrees. At the end the output is
# byte-identical to a clean extraction, nothing temporary is left, and
# qmoe-verify (when built) passes.
#
# TORTURE_KILLS / TORTURE_TERMS (default 4 / 2 here; 20 / 20 in
# tests/torture_long.sh), TORTURE_THROTTLE_MS (per file, default 30),
# TORTURE_SEED (default: random, printed so that a failure can be replayed).
. "$(dirname "$0")/lib.sh"
plan 15
TOOLS="$QMOE_BUILD/tests/tools"
SRC="$FIX/qwen3moe-tiny/omni"
KILLS=${TORTURE_KILLS:-4}
TERMS=${TORTURE_TERMS:-2}
THROTTLE=${TORTURE_THROTTLE_MS:-30}
SEED=${TORTURE_SEED:-$$}
RANDOM=$SEED
echo "# torture: $KILLS SIGKILLs, $TERMS SIGTERMs, throttle $THROTTLE ms, seed $SEED"

# -- the reference: one clean extraction
REF="$T/ref"
run qmoe-extract -j 2 "$SRC" "$REF"
expect torture-reference 0 || exit 0
TOTAL=$(grep -c . "$REF/.qmoe/journal.jsonl")

digest() { # DIR: sha256 of every output file except the manifest and .qmoe/
    (cd "$1" && find . -path ./.qmoe -prune -o -type f ! -name qmoe.json -print |
        LC_ALL=C sort | xargs sha256sum)
}
mf_sums() { grep -o '"sha256":"[0-9a-f]*"' "$1/qmoe.json" | LC_ALL=C sort; }
done_paths() { # unique paths in the journal
    [ -f "$1/.qmoe/journal.jsonl" ] || { echo 0; return; }
    grep '}$' "$1/.qmoe/journal.jsonl" | cut -d'"' -f4 | sort -u | wc -l
}
final_files() { find "$1" -name '*.safetensors' ! -name '*.tmp.*' 2>/dev/null; }
json_num() { # KEY FILE: first number value of "KEY" in a JSON text
    sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p" "$2" | head -n 1
}

OUT="$T/out"
bad=0
note_fail() { fail "$@"; bad=$((bad + 1)); }
n_cycles=$((KILLS + TERMS))
# SIGTERMs spread evenly among the SIGKILLs
sigs=()
for i in $(seq 1 $n_cycles); do
    if [ $((i * TERMS / n_cycles)) -gt $(((i - 1) * TERMS / n_cycles)) ]; then sigs+=(TERM)
    else sigs+=(KILL); fi
done
prev_pid=
kills_done=0 terms_done=0 early_finish=0
for i in $(seq 1 $n_cycles); do
    sig=${sigs[$((i - 1))]}
    # target: spread over [0, TOTAL-1] files done, jittered
    target=$(( (i - 1) * (TOTAL - 2) / (n_cycles > 1 ? n_cycles - 1 : 1) + RANDOM % 2 ))
    jobs_n=$((1 + RANDOM % 2))
    QMOE_THROTTLE_MS=$THROTTLE qmoe-extract -j $jobs_n "$SRC" "$OUT" >"$T/run.out" 2>"$T/run.err" &
    pid=$!
    for _ in $(seq 1000); do
        kill -0 $pid 2>/dev/null || break
        # a SIGTERM before main() has installed its handler kills like any
        # program's; wait until the job holds the lock (SIGKILL: any time)
        if [ $sig = TERM ] && [ "$(cut -d' ' -f1 "$OUT/.qmoe/lock" 2>/dev/null)" != $pid ]; then
            sleep 0.005; continue
        fi
        [ "$(done_paths "$OUT")" -ge $target ] && break
        sleep 0.005
    done
    sleep "$(printf '0.%03d' $((RANDOM % THROTTLE)))"
    if ! kill -0 $pid 2>/dev/null; then
        wait $pid; early_finish=$((early_finish + 1))
        echo "# cycle $i: the job ended before the $sig (rc $?)"
        prev_pid=; continue
    fi
    kill -$sig $pid; wait $pid; rc=$?
    if [ $rc = 0 ]; then # finished between the check and the signal
        early_finish=$((early_finish + 1))
        echo "# cycle $i: the job ended before the $sig (rc 0)"
        prev_pid=; continue
    fi
    n=$(done_paths "$OUT")
    echo "# cycle $i: SIG$sig at $n/$TOTAL files (target $target, -j $jobs_n), rc $rc"
    # did it take the lock (and so take over the previous crash's)?
    started=0; [ "$(cut -d' ' -f1 "$OUT/.qmoe/lock" 2>/dev/null)" = $pid ] && started=1
    [ $sig = TERM ] && started=1 # it held the lock before the signal (waited for above)
    if [ $started = 1 ] && [ -n "$prev_pid" ]; then
        grep -q "taking over the stale lock of pid $prev_pid" "$T/run.err" ||
            note_fail "torture-$i-stale-lock-message" "$(cat "$T/run.err")"
    fi
    # no partial file under a final name, whatever the signal
    files=$(final_files "$OUT")
    if [ -n "$files" ] && ! "$TOOLS/stcheck" $files >"$T/stcheck.out" 2>&1; then
        note_fail "torture-$i-partial-final-file" "$(head -c 400 "$T/stcheck.out")"
    fi
    P="$OUT/.qmoe/progress.json"
    if [ $sig = KILL ] && [ $started = 0 ]; then
        # killed before it took the lock: nothing of it to see or take over
        kills_done=$((kills_done + 1))
        [ $rc = 137 ] || note_fail "torture-$i-killed" "rc $rc"
        echo "# cycle $i: killed before the job took the lock"
    elif [ $sig = KILL ]; then
        kills_done=$((kills_done + 1))
        [ $rc = 137 ] || note_fail "torture-$i-killed" "rc $rc"
        mine=0; [ "$(json_num pid "$P" 2>/dev/null)" = $pid ] && mine=1
        if [ $mine = 1 ] && grep -q '"state":"finished"' "$P"; then
            # killed on its way out, after the last write: nothing crashed
            echo "# cycle $i: killed after the job finished its work"
            [ "$(json_num files_done "$P")" = "$(json_num files_planned "$P")" ] ||
                note_fail "torture-$i-finished-means-done" "$(cat "$P")"
            mine=0
        elif [ $mine = 1 ]; then
            grep -q '"state":"running"' "$P" || note_fail "torture-$i-state-running" "$(cat "$P")"
        fi
        if [ $mine = 1 ]; then
            qmoe-status --json "$OUT" >"$T/st.json" 2>"$T/st.err"; src=$?
            grep -q '"state"[[:space:]]*:[[:space:]]*"crashed"' "$T/st.json" ||
                note_fail "torture-$i-status-crashed" "rc $src $(head -c 300 "$T/st.json") $(cat "$T/st.err")"
            ed=$(json_num experts_done "$T/st.json")
            lo=$(grep '}$' "$OUT/.qmoe/journal.jsonl" 2>/dev/null | grep -c '"kind":"expert"')
            hi=$(final_files "$OUT/experts" | wc -l)
            { [ -n "$ed" ] && [ "$ed" -ge "$lo" ] && [ "$ed" -le "$hi" ]; } ||
                note_fail "torture-$i-status-files-done" "status says $ed, journal $lo, on disk $hi"
        fi
        prev_pid=$pid
    else
        terms_done=$((terms_done + 1))
        [ $rc = 1 ] || note_fail "torture-$i-sigterm-exit-1" "rc $rc $(cat "$T/run.err")"
        grep -q "stopped by signal" "$T/run.err" || note_fail "torture-$i-sigterm-message" "$(cat "$T/run.err")"
        grep -q '"state":"stopped"' "$P" || note_fail "torture-$i-state-stopped" "$(cat "$P")"
        [ ! -s "$OUT/.qmoe/lock" ] || note_fail "torture-$i-lock-released"
        no_tmp_files "$OUT" || note_fail "torture-$i-no-tmp" "$(find "$OUT" -name '*.tmp.*' | head -3)"
        qmoe-status --json "$OUT" >"$T/st.json" 2>&1
        grep -q '"state"[[:space:]]*:[[:space:]]*"stopped"' "$T/st.json" ||
            note_fail "torture-$i-status-stopped" "$(head -c 300 "$T/st.json")"
        prev_pid=
    fi
done
[ $bad = 0 ] && ok "torture-after-each-kill ($kills_done SIGKILL, $terms_done SIGTERM, $early_finish ended early)"
[ $kills_done -ge $((KILLS * 3 / 4)) ] && ok torture-enough-kills || fail torture-enough-kills "$kills_done of $KILLS"

# -- the final resume completes
run qmoe-extract -j 2 "$SRC" "$OUT"
expect torture-final-resume 0
if [ -n "$prev_pid" ]; then
    [[ "$err" == *"taking over the stale lock of pid $prev_pid"* ]] && ok torture-final-stale-lock ||
        fail torture-final-stale-lock "$err"
else
    skip torture-final-stale-lock "the last interrupted run was stopped, not killed"
fi
same torture-byte-identical "$(digest "$OUT")" "$(digest "$REF")" \
    "$(diff <(digest "$REF") <(digest "$OUT") | head -5)"
same torture-manifest-same-files "$(mf_sums "$OUT")" "$(mf_sums "$REF")"
check torture-manifest-complete grep -q '"complete":true' "$OUT/qmoe.json"
check torture-state-finished grep -q '"state":"finished"' "$OUT/.qmoe/progress.json"
check torture-no-tmp no_tmp_files "$OUT"
check torture-lock-released test ! -s "$OUT/.qmoe/lock"
run "$TOOLS/ckcmp" "$SRC" "$OUT"
expect torture-identical-to-source 0 "same: 174 tensors" stdout
run qmoe-verify "$OUT"
expect torture-verify 0
run qmoe-verify --source "$SRC" "$OUT"
expect torture-verify-source 0
run qmoe-status "$OUT"
expect torture-status-complete 0
