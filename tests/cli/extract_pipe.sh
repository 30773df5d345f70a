#!/usr/bin/env bash
# The write pipeline (extract/extract_pipe.h): experts of 4.7 MB, each
# written in two 4 MB pieces by a worker's writer thread while the worker
# reads and hashes the next. The output must be the source's, with the
# hashes in qmoe.json those of the files on disk; a write failing in the
# writer thread (file-size limit, full disk) must fail the run with the
# file named, leave no partial file and no temporary, and a rerun must
# complete; SIGKILL and SIGTERM mid-run must resume to the same output.
. "$(dirname "$0")/lib.sh"
plan 43
TOOLS="$QMOE_BUILD/tests/tools"
SRC="$T/src"
run qmoe-mksample --layers 2 --experts 4 --hidden 1024 --inter 768 --shard-mb 20 "$SRC"
expect pipe-sample 0 || exit 0

# intact NAME OUT: every file under a final name parses, no temporary
intact() {
    local files; files=$(find "$2" -name '*.safetensors' ! -name '*.tmp.*' 2>/dev/null)
    if [ -n "$files" ] && ! "$TOOLS/stcheck" $files >"$T/.stc" 2>&1; then
        fail "$1-no-partial-file" "$(head -c 300 "$T/.stc")"
    else ok "$1-no-partial-file"; fi
    check "$1-no-tmp" no_tmp_files "$2"
}
# complete NAME OUT: the output is the source's and verifies
complete() {
    run "$TOOLS/ckcmp" "$SRC" "$2"
    expect "$1-identical" 0 "same: " stdout
    check "$1-no-tmp-after" no_tmp_files "$2"
    run qmoe-verify "$2"; expect "$1-verifies" 0
}
# sums_match OUT: qmoe.json's sha256 of each file is sha256sum's
sums_match() {
    local bad=0 n=0 p s
    while read -r p s; do
        n=$((n + 1))
        [ "$(sha256sum <"$1/$p" | cut -d' ' -f1)" = "$s" ] || { echo "$p: $s"; bad=1; }
    done < <(jq -r '.files[] | "\(.path) \(.sha256)"' "$1/qmoe.json")
    [ "$n" -gt 0 ] && [ $bad = 0 ]
}

# -- a clean run, one and two workers
for j in 1 2; do
    run qmoe-extract -j $j "$SRC" "$T/out$j"
    expect pipe-j$j 0
    complete pipe-j$j "$T/out$j"
    check pipe-j$j-sums sums_match "$T/out$j"
    big=$(find "$T/out$j/experts" -name '*.safetensors' -size +4100k | wc -l)
    [ "$big" = 8 ] && ok pipe-j$j-two-pieces || fail pipe-j$j-two-pieces "$big experts over 4 MB"
done

# -- a write fails in the writer thread: a file-size limit under an
# expert's size (EFBIG at its first 4 MB piece)
run prlimit --fsize=3000000 qmoe-extract -j 2 "$SRC" "$T/fsize"
expect pipe-fsize-exit-2 2 "file too large"
[[ "$err" == *"experts/"*".safetensors'"* ]] && ok pipe-fsize-names-file ||
    fail pipe-fsize-names-file "$err"
[ "$(grep -c . <<<"$err")" = 1 ] && ok pipe-fsize-one-line || fail pipe-fsize-one-line "$err"
check pipe-fsize-state-failed grep -q '"state":"failed"' "$T/fsize/.qmoe/progress.json"
intact pipe-fsize "$T/fsize"
run qmoe-extract -j 2 "$SRC" "$T/fsize"
expect pipe-fsize-rerun 0
complete pipe-fsize "$T/fsize"

# -- SIGKILL, then SIGTERM, in the middle of the experts; each resumed
OUT="$T/kill"
for sig in KILL TERM; do
    # (the TERM run resumes the KILL run's journal: wait for new lines)
    n0=$(grep -c experts/ "$OUT/.qmoe/journal.jsonl" 2>/dev/null)
    QMOE_THROTTLE_MS=300 qmoe-extract -j 2 "$SRC" "$OUT" >"$T/k.out" 2>"$T/k.err" &
    pid=$!
    for _ in $(seq 400); do # until some experts are in the journal (20 s)
        n=$(grep -c experts/ "$OUT/.qmoe/journal.jsonl" 2>/dev/null)
        [ "${n:-0}" -ge $((${n0:-0} + 2)) ] && break
        kill -0 $pid 2>/dev/null || break
        sleep 0.05
    done
    kill -$sig $pid; wait $pid; krc=$?
    if [ $sig = KILL ]; then
        [ $krc = 137 ] && ok pipe-kill-killed || fail pipe-kill-killed "exit $krc"
    else
        [ $krc = 1 ] && grep -q '"state":"stopped"' "$OUT/.qmoe/progress.json" &&
            ok pipe-term-stopped || fail pipe-term-stopped "exit $krc: $(cat "$T/k.err")"
    fi
    files=$(find "$OUT" -name '*.safetensors' ! -name '*.tmp.*')
    "$TOOLS/stcheck" $files >"$T/.stc" 2>&1 && ok pipe-${sig,,}-no-partial-file ||
        fail pipe-${sig,,}-no-partial-file "$(head -c 300 "$T/.stc")"
    # the journal records only files in place, complete
    bad=0
    while read -r p; do
        [ -f "$OUT/$p" ] || { bad=1; echo "$p"; }
    done < <(grep -o '"path":"[^"]*"' "$OUT/.qmoe/journal.jsonl" | cut -d'"' -f4) >"$T/.j"
    [ $bad = 0 ] && ok pipe-${sig,,}-journal-in-place || fail pipe-${sig,,}-journal-in-place "$(head -3 "$T/.j")"
done
run qmoe-extract -j 2 "$SRC" "$OUT"
expect pipe-resume 0
complete pipe-resume "$OUT"
check pipe-resume-sums sums_match "$OUT"
run cmp -s <(cd "$T/out2" && find experts -type f | LC_ALL=C sort | xargs sha256sum) \
           <(cd "$OUT" && find experts -type f | LC_ALL=C sort | xargs sha256sum)
expect pipe-resume-same-bytes 0

# -- a full disk meets the writer thread (root: a tmpfs smaller than OUT)
if [ "$(id -u)" != 0 ]; then
    skip_rest pipe-enospc "not root: no tmpfs"
    exit 0
fi
mkdir -p "$T/small"
if ! mount -t tmpfs -o size=12m tmpfs "$T/small" 2>"$T/.m"; then
    skip_rest pipe-enospc "cannot mount tmpfs: $(cat "$T/.m")"
    exit 0
fi
trap 'umount -l "$T/small" 2>/dev/null' EXIT
run qmoe-extract -j 2 --force "$SRC" "$T/small/out"
expect pipe-enospc-exit-2 2 "no space left on device"
[[ "$err" =~ \'[^\']*(safetensors|json|jsonl)\' ]] && ok pipe-enospc-names-file ||
    fail pipe-enospc-names-file "$err"
intact pipe-enospc "$T/small/out"
mount -o remount,size=64m "$T/small"
run qmoe-extract -j 2 "$SRC" "$T/small/out"
expect pipe-enospc-resume 0
complete pipe-enospc "$T/small/out"
