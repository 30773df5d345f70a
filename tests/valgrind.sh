#!/usr/bin/env bash
# make valgrind: memcheck over an end-to-end run on the fixture -
# extraction (fresh, then a resume), qmoe-verify (plain and --source) and a
# short generation with qmoe-run when those are built. Fails on any memory
# error or definite leak (--errors-for-leak-kinds=definite); possible and
# still-reachable blocks (GLib's type system and thread pool keep some for
# the life of the process) are reported but not counted.
set -u
cd "$(dirname "$0")/.."
: "${QMOE_BUILD:?set QMOE_BUILD to the build directory}"
BIN="$QMOE_BUILD/bin"
FIX=tests/fixtures/qwen3moe-tiny
T=$(mktemp -d /tmp/qmoe-valgrind.XXXXXX)
export NO_COLOR=1 GLIBC_TUNABLES=glibc.malloc.tcache_count=0
command -v valgrind >/dev/null || { echo "skip valgrind: not installed"; exit 0; }
VG=(valgrind --tool=memcheck --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite --show-leak-kinds=definite --track-origins=yes
    --num-callers=30 --quiet)
pass=0 fail=0
vg() { # NAME WANT_RC CMD...: runs CMD under memcheck
    local name=$1 want=$2; shift 2
    "${VG[@]}" --log-file="$T/$name.vg" "$@" >"$T/$name.out" 2>"$T/$name.err"
    local rc=$?
    local sum; sum=$(grep -E "ERROR SUMMARY|definitely lost" "$T/$name.vg" | head -2 | tr '\n' ' ')
    if [ $rc = "$want" ] && ! grep -q "definitely lost: [1-9]" "$T/$name.vg" &&
       ! grep -qE "ERROR SUMMARY: [1-9]" "$T/$name.vg"; then
        echo "ok valgrind-$name"; pass=$((pass + 1))
    else
        echo "FAIL valgrind-$name: exit $rc (wanted $want) $(head -c 300 "$T/$name.err")"
        sed 's/^/    /' "$T/$name.vg" | head -60
        fail=$((fail + 1))
    fi
}
vg extract 0 "$BIN/qmoe-extract" -j 2 "$FIX/omni" "$T/out"
vg extract-resume 0 "$BIN/qmoe-extract" -j 2 "$FIX/omni" "$T/out"
vg extract-subset 0 "$BIN/qmoe-extract" --layers 1 --experts 0-3 "$FIX/qwen3moe" "$T/sub"
vg extract-bad-input 2 "$BIN/qmoe-extract" tests/bad/009-shape-offset-mismatch/x.safetensors "$T/bad"
vg extract-dry-run 0 "$BIN/qmoe-extract" --dry-run --json "$FIX/qwen3moe" "$T/dry"
if [ -x "$BIN/qmoe-verify" ]; then
    vg verify 0 "$BIN/qmoe-verify" "$T/out"
    vg verify-source 0 "$BIN/qmoe-verify" --source "$FIX/omni" "$T/out"
else echo "skip valgrind-verify: qmoe-verify not built"; fi
if [ -x "$BIN/qmoe-status" ]; then
    vg status 0 "$BIN/qmoe-status" "$T/out"
    vg status-json 0 "$BIN/qmoe-status" --json "$T/out"
else echo "skip valgrind-status: qmoe-status not built"; fi
if [ -x "$BIN/qmoe-run" ]; then
    vg run 0 "$BIN/qmoe-run" --token-ids 1,2,3 -n 4 -j 2 "$T/out"
    vg run-options 0 "$BIN/qmoe-run" --token-ids 5,6 -n 3 --expert-io=read --cache-mb 0 \
        --mask-experts 0-7 --router-log "$T/router.jsonl" --logits-out "$T/logits.f32" \
        --temperature 0.8 --seed 7 --json "$T/out"
    vg run-source 0 "$BIN/qmoe-run" --token-ids 1,2 -n 2 "$FIX/qwen3moe"
    vg run-bad-token 2 "$BIN/qmoe-run" --token-ids 99999 -n 1 "$T/out"
    if "$BIN/qmoe-run" --help | grep -q -- --prompt; then
        vg run-prompt 0 "$BIN/qmoe-run" --prompt "Hello" -n 2 "$FIX/qwen3moe"
    else echo "skip valgrind-run-prompt: qmoe-run has no --prompt yet"; fi
else echo "skip valgrind-run: qmoe-run not built"; fi
echo "valgrind: $pass passed, $fail failed"
if [ $fail = 0 ]; then rm -rf "$T"; else echo "logs in $T"; fi
[ $fail = 0 ]
