#!/usr/bin/env bash
# Exact-output goldens (as zstd's tests/cli-tests keep .stdout.exact): every
# tool's --help, the plan, summary, status snapshot and verify report of an
# extraction of the tiny Omni fixture, intact and damaged. Each golden
# tests/golden/NAME.exact holds the command's stdout, then "--- stderr" and
# its stderr when there is any, then "--- exit N". Before the comparison,
# what varies from run to run is masked: durations (<DUR>), rates (<RATE>),
# clock times (<TIME>), pids (<PID>) and the scratch directory (<T>); the
# commands run inside the scratch directory on relative paths.
#
# After an intended change of output, regenerate and review:
#     UPDATE_GOLDEN=1 TESTS=golden make check && git diff tests/golden
# (each rewritten golden is reported as "skip NAME: rewritten", so an update
# run never looks like a passing one).
. "$(dirname "$0")/lib.sh"
plan 15
G="$QMOE_ROOT/tests/golden"
export LC_ALL=C NO_COLOR=1   # GLib's help text and the status bars depend on the locale

mask() {
    sed -E -e "s#$T#<T>#g" \
        -e 's#[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z#<TIME>#g' \
        -e 's#\bin [0-9.]+ s\b#in <DUR>#g' \
        -e 's#\([0-9.]+ [kMG]?B/s\)#(<RATE>)#g' \
        -e 's#^(elapsed +)[0-9][0-9hms ]*#\1<DUR> #' \
        -e 's#\bpid [0-9]+#pid <PID>#g' \
        -e 's#, [0-9.]+ [kMGT]?B available on [^:;]*#, <FREE> available on <FS>#'
}

# golden NAME CMD... : CMD's masked output and exit code against NAME.exact
golden() {
    local name=$1; shift
    local rc
    (cd "$T" && "$@") >"$T/.gout" 2>"$T/.gerr"; rc=$?
    { mask <"$T/.gout"
      [ -s "$T/.gerr" ] && { echo "--- stderr"; mask <"$T/.gerr"; }
      echo "--- exit $rc"; } >"$T/$name.got"
    if [ -n "${UPDATE_GOLDEN:-}" ]; then
        cp "$T/$name.got" "$G/$name.exact"; skip "golden-$name" "rewritten"
    elif [ ! -f "$G/$name.exact" ]; then
        fail "golden-$name" "no $G/$name.exact (make it with UPDATE_GOLDEN=1)"
    elif cmp -s "$G/$name.exact" "$T/$name.got"; then
        ok "golden-$name"
    else
        fail "golden-$name" "differs from tests/golden/$name.exact:
$(diff -u "$G/$name.exact" "$T/$name.got" | head -n 40)"
    fi
}

for tool in extract status verify run mksample pack; do
    golden "help-qmoe-$tool" "qmoe-$tool" --help
done

cp -r "$FIX/qwen3moe-tiny/omni" "$T/src"
golden extract-dry-run qmoe-extract --dry-run src x
golden extract-summary qmoe-extract --no-progress src out
golden extract-summary-resumed qmoe-extract --no-progress src out
golden status-finished qmoe-status out
golden verify-ok qmoe-verify out
golden verify-source-ok qmoe-verify --source src out

# damaged: one expert deleted, one byte of another flipped
cp -r "$T/out" "$T/bad"
rm "$T/bad/experts/expert_03_layer_01.safetensors"
printf '\377' | dd of="$T/bad/experts/expert_05_layer_02.safetensors" bs=1 seek=5000 conv=notrunc 2>/dev/null
golden status-expert-missing qmoe-status bad
golden verify-damaged qmoe-verify bad
golden verify-quick-damaged qmoe-verify --quick bad
