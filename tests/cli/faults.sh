#!/usr/bin/env bash
# Faults: a full disk, a file-size limit, a source shard truncated under a
# running extraction, OUT turning read-only half way, and other programs
# reading OUT while an extraction writes it. Every failure must be exit 2
# with a one-line message naming the file and the cause, leave no partial
# file under a final name and no temporary, and a rerun once the cause is
# gone must complete with output identical to the source. The mount tests
# need root (CI runs as root); elsewhere they are skipped (skip_rest).
. "$(dirname "$0")/lib.sh"
plan 74
TOOLS="$QMOE_BUILD/tests/tools"
SRC="$FIX/qwen3moe-tiny/omni"

mounts=()
cleanup() {
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null; done
}
trap cleanup EXIT

# intact NAME OUT [PID]: every file under a final name parses, no temporary
# (but those of process PID, killed or on a read-only disk)
intact() {
    local files; files=$(find "$2" -name '*.safetensors' ! -name '*.tmp.*' 2>/dev/null)
    if [ -n "$files" ] && ! "$TOOLS/stcheck" $files >"$T/.stc" 2>&1; then
        fail "$1-no-partial-file" "$(head -c 300 "$T/.stc")"
    else ok "$1-no-partial-file"; fi
    if [ -n "${3:-}" ]; then # PID: temporaries of that killed process may stay
        local t; t=$(find "$2" -name '*.tmp.*' ! -name "*.tmp.$3" 2>/dev/null | head -3)
        [ -z "$t" ] && ok "$1-no-tmp" || fail "$1-no-tmp" "$t"
    else check "$1-no-tmp" no_tmp_files "$2"; fi
}
# complete NAME OUT: a rerun finished and the output is the source's
complete() {
    run "$TOOLS/ckcmp" "$SRC" "$2"
    expect "$1-identical" 0 "same: 174 tensors" stdout
    check "$1-no-tmp-after" no_tmp_files "$2"
    run qmoe-verify "$2"; expect "$1-verifies" 0
}
wait_lines() { # FILE N PID: until FILE has N lines or PID ends (20 s)
    for _ in $(seq 400); do
        kill -0 "$3" 2>/dev/null || return 1
        [ "$(cat "$1" 2>/dev/null | grep -c .)" -ge "$2" ] && return 0
        sleep 0.05
    done; return 1
}
wait_journal() { wait_lines "$1/.qmoe/journal.jsonl" "$2" "$3"; } # OUT N PID

# -- file-size limit (no root needed): EFBIG, not death by SIGXFSZ
if ! command -v prlimit >/dev/null; then
    fail fsize "prlimit (util-linux) is not installed"
else
    run prlimit --fsize=20000 qmoe-extract -j 2 "$SRC" "$T/fsize"
    expect fsize-exit-2 2 "file too large"
    [[ "$err" == *".safetensors'"* ]] && ok fsize-names-file || fail fsize-names-file "$err"
    check fsize-state-failed grep -q '"state":"failed"' "$T/fsize/.qmoe/progress.json"
    intact fsize "$T/fsize"
    run qmoe-extract "$SRC" "$T/fsize"
    expect fsize-rerun 0
    complete fsize "$T/fsize"
fi

# -- a source shard truncated while the extraction runs
cp -r "$SRC" "$T/src-trunc"
SH="$T/src-trunc/model-00003-of-00003.safetensors"
cp -p "$SH" "$T/shard3.orig"  # -p: a restore keeps the mtime the source identity recorded
QMOE_THROTTLE_MS=60 qmoe-extract -j 1 "$T/src-trunc" "$T/trunc" >"$T/trunc.out" 2>"$T/trunc.err" &
pid=$!
wait_journal "$T/trunc" 3 $pid
truncate -s 150000 "$SH"
wait $pid; rc=$?
[ $rc = 2 ] && ok trunc-exit-2 || fail trunc-exit-2 "rc $rc $(cat "$T/trunc.err")"
grep -q "model-00003-of-00003.safetensors" "$T/trunc.err" && grep -q "truncated" "$T/trunc.err" &&
    ok trunc-message || fail trunc-message "$(cat "$T/trunc.err")"
[ "$(grep -c . "$T/trunc.err")" = 1 ] && ok trunc-one-line || fail trunc-one-line "$(cat "$T/trunc.err")"
intact trunc "$T/trunc"
cp -p "$T/shard3.orig" "$SH"
run qmoe-extract "$T/src-trunc" "$T/trunc"
expect trunc-rerun 0
complete trunc "$T/trunc"

# -- a torn last journal line (a crash or a full disk mid-append): the
# resume must not glue its first record onto it
run qmoe-extract --layers 0 "$SRC" "$T/torn"
expect torn-setup 0
head -c 150 "$T/torn/.qmoe/journal.jsonl" >>"$T/torn/.qmoe/journal.jsonl"  # no newline
run qmoe-extract "$SRC" "$T/torn"
expect torn-resume 0
run qmoe-extract "$SRC" "$T/torn"
expect torn-resume-again 0 "(resumed)" stdout
n_rec=$(grep -c . "$T/torn/.qmoe/journal.jsonl")
[ "$n_rec" -gt 0 ] && [ "$(grep -c '^{"path":.*}$' "$T/torn/.qmoe/journal.jsonl")" = "$n_rec" ] &&
    ok torn-journal-clean || fail torn-journal-clean "$(grep -v '}$' "$T/torn/.qmoe/journal.jsonl" | head -c 300)"
complete torn "$T/torn"

# -- qmoe-status and qmoe-verify while an extraction writes: no false alarm
QMOE_THROTTLE_MS=40 qmoe-extract -j 2 "$SRC" "$T/live" >/dev/null 2>&1 &
pid=$!
wait_journal "$T/live" 1 $pid
st_bad= vf_bad= polls=0
while kill -0 $pid 2>/dev/null; do
    polls=$((polls + 1))
    qmoe-status --json "$T/live" >"$T/st.out" 2>"$T/st.err"; r=$?
    if [ $r = 2 ] || [ -s "$T/st.err" ] || grep -q '"journal_bad_lines"[[:space:]]*:[[:space:]]*[1-9]' "$T/st.out"; then
        st_bad="rc $r: $(head -c 300 "$T/st.err") $(grep -o '"journal_bad_lines"[[:space:]]*:[[:space:]]*[0-9]*' "$T/st.out")"
    fi
    qmoe-verify "$T/live" >"$T/vf.out" 2>&1; r=$?
    # while it runs: incomplete (1) or, at the very end, complete (0);
    # never an I/O error, and no file called damaged
    if [ $r = 2 ] || grep -qiE 'corrupt|mismatch|damaged|truncated|sha-?256 (differs|does not)' "$T/vf.out"; then
        vf_bad="rc $r: $(head -c 400 "$T/vf.out")"
    fi
    # every file under a final name is whole
    files=$(find "$T/live" -name '*.safetensors' ! -name '*.tmp.*')
    [ -n "$files" ] && ! "$TOOLS/stcheck" $files >/dev/null 2>&1 && st_bad="partial file seen"
done
wait $pid
[ -z "$st_bad" ] && ok "live-status-no-false-alarm ($polls polls)" || fail live-status-no-false-alarm "$st_bad"
[ -z "$vf_bad" ] && ok "live-verify-no-false-alarm ($polls polls)" || fail live-verify-no-false-alarm "$vf_bad"
[ "$st_bad" != "partial file seen" ] && ok live-no-partial-file || fail live-no-partial-file
complete live "$T/live"

# -- --shard: two processes share OUT; one is killed and rerun
QMOE_THROTTLE_MS=40 qmoe-extract --shard 0/2 -j 1 "$SRC" "$T/sh" >"$T/sh0.out" 2>&1 & p0=$!
QMOE_THROTTLE_MS=40 qmoe-extract --shard 1/2 -j 1 "$SRC" "$T/sh" >"$T/sh1.out" 2>&1 & p1=$!
wait_lines "$T/sh/.qmoe/shard-1-of-2/journal.jsonl" 5 $p1
kill -KILL $p1; wait $p1
wait $p0; rc=$?
[ $rc = 0 ] && ok shard-survivor-finishes || fail shard-survivor-finishes "rc $rc $(cat "$T/sh0.out")"
check shard-not-complete-yet grep -q '"complete":false' "$T/sh/qmoe.json"
# the killed part's uncommitted batch stays (as temporaries) until that
# part runs again; the survivor leaves none
intact shard "$T/sh" "$p1"
run qmoe-extract --shard 1/2 "$SRC" "$T/sh"
expect shard-rerun 0 "taking over the stale lock of pid $p1"
check shard-complete grep -q '"complete":true' "$T/sh/qmoe.json"
complete shard "$T/sh"

# -- the rest needs mounts
if [ "$(id -u)" != 0 ]; then
    skip_rest faults-mounts "not root: no tmpfs or read-only bind mount"
    exit 0
fi
mkdir -p "$T/small"
if ! mount -t tmpfs -o size=400k tmpfs "$T/small" 2>"$T/.m"; then
    skip_rest faults-mounts "cannot mount tmpfs: $(cat "$T/.m")"
    exit 0
fi
mounts+=("$T/small")

# -- disk full: a 400 kB tmpfs for 870 kB of output. The space check
# refuses before writing anything ...
run qmoe-extract -j 2 "$SRC" "$T/small/out"
expect space-refused 2 "available on $T/small; nothing written (--force tries anyway)"
[[ "$err" =~ needs\ 1\.[0-9]\ MB,\ [34][0-9][0-9]\.[0-9]\ kB\ available ]] && ok space-refused-figures ||
    fail space-refused-figures "$err"
[ "$(grep -c . <<<"$err")" = 1 ] && ok space-refused-one-line || fail space-refused-one-line "$err"
[ -z "$(find "$T/small/out" -name '*.safetensors' -print -quit)" ] && ok space-refused-nothing-written ||
    fail space-refused-nothing-written "$(find "$T/small/out" -name '*.safetensors' | head -3)"
run qmoe-extract --dry-run "$SRC" "$T/small/out"
expect space-dry-run 0 "too little (the run refuses unless --force)" stdout
# ... --force tries anyway and meets the full disk
run qmoe-extract -j 2 --force "$SRC" "$T/small/out"
expect enospc-exit-2 2 "no space left on device"
[[ "$err" =~ \'[^\']*(safetensors|json|jsonl)\' ]] && ok enospc-names-file || fail enospc-names-file "$err"
[ "$(grep -c . <<<"$err")" = 1 ] && ok enospc-one-line || fail enospc-one-line "$err"
intact enospc "$T/small/out"
# the failure reaches progress.json even on the full disk, and status says so
jq -e '.state == "failed" and (.last_error | test("no space left on device"; "i"))' \
    "$T/small/out/.qmoe/progress.json" >/dev/null 2>&1 && ok enospc-state-failed ||
    fail enospc-state-failed "$(head -c 300 "$T/small/out/.qmoe/progress.json" 2>&1)"
run qmoe-status "$T/small/out"
[[ "$out" =~ failed ]] && [[ "$out" =~ [Nn]o\ space\ left\ on\ device ]] && ! [[ "$out" =~ crashed ]] &&
    ok enospc-status-failed || fail enospc-status-failed "$out"
# a rerun on the still-full disk fails the same way, harmlessly
run qmoe-extract -j 2 --force "$SRC" "$T/small/out"
expect enospc-rerun-still-full 2 "no space left on device"
intact enospc-rerun "$T/small/out"
# space freed: remount bigger, resume
mount -o remount,size=4m "$T/small"
run qmoe-extract -j 2 "$SRC" "$T/small/out"
expect enospc-resume 0
complete enospc "$T/small/out"

# -- disk full again, freed by deleting a filler file
umount "$T/small"; mount -t tmpfs -o size=1600k tmpfs "$T/small"
head -c 1100000 /dev/zero >"$T/small/filler"
run qmoe-extract -j 1 --force "$SRC" "$T/small/out2"
expect filler-exit-2 2 "no space left on device"
intact filler "$T/small/out2"
rm "$T/small/filler"
run qmoe-extract -j 1 "$SRC" "$T/small/out2"
expect filler-resume 0
complete filler "$T/small/out2"

# -- OUT turns read-only half way: experts/ is a bind mount remounted
# read-only while the job runs (chmod does not stop root; a mount with a
# file open for writing cannot turn read-only, so retry between files)
RO="$T/ro"
mkdir -p "$RO/experts"
mount --bind "$RO/experts" "$RO/experts" && mounts+=("$RO/experts")
QMOE_THROTTLE_MS=80 qmoe-extract -j 1 "$SRC" "$RO" >"$T/ro.out" 2>"$T/ro.err" &
pid=$!
wait_journal "$RO" 8 $pid
made_ro=0
for _ in $(seq 200); do
    kill -0 $pid 2>/dev/null || break
    mount -o remount,bind,ro "$RO/experts" 2>/dev/null && { made_ro=1; break; }
    sleep 0.01
done
wait $pid; rc=$?
if [ $made_ro = 1 ]; then
    [ $rc = 2 ] && ok readonly-exit-2 || fail readonly-exit-2 "rc $rc $(cat "$T/ro.err")"
    grep -q "Read-only file system" "$T/ro.err" && grep -q "experts/expert_" "$T/ro.err" &&
        ok readonly-message || fail readonly-message "$(cat "$T/ro.err")"
    # temporaries of a batch not yet committed cannot be removed from a
    # read-only directory; the rerun does it (readonly-no-tmp-after)
    intact readonly "$RO" "$pid"
    mount -o remount,bind,rw "$RO/experts"
    run qmoe-extract "$SRC" "$RO"
    expect readonly-resume 0
    complete readonly "$RO"
else
    # the race was lost (the job ended first): the last part of the script
    skip_rest readonly "could not remount experts/ read-only while the job ran (rc $rc)"
fi
