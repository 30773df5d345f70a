# lib.sh - helpers for command-line tests (sourced). Each check prints
# "ok NAME" or "FAIL NAME" with the evidence, for tests/run.sh to count.
set -u
: "${QMOE_BIN:?}" "${QMOE_TMP:?}" "${QMOE_ROOT:?}"
PATH="$QMOE_BIN:$PATH"
FIX="$QMOE_ROOT/tests/fixtures"
T="$QMOE_TMP/$(basename "$0" .sh)"
rm -rf "$T"; mkdir -p "$T"

ok()   { echo "ok $1"; }
fail() { echo "FAIL $1${2:+: $2}"; }
skip() { echo "skip $1${2:+: $2}"; }

# run CMD... : runs a command, keeps its exit code in $rc, stdout in $out,
# stderr in $err.
run() {
    "$@" >"$T/.out" 2>"$T/.err"; rc=$?
    out=$(cat "$T/.out"); err=$(cat "$T/.err")
}

# expect NAME RC [SUBSTRING [stdout|stderr]] : checks the last run.
expect() {
    local name=$1 want=$2 sub=${3:-} where=${4:-stderr} text
    if [ "$rc" != "$want" ]; then
        fail "$name" "exit $rc, wanted $want; stderr: $(head -c 600 "$T/.err")"; return 1
    fi
    if [ -n "$sub" ]; then
        if [ "$where" = stdout ]; then text=$out; else text=$err; fi
        if [[ "$text" != *"$sub"* ]]; then
            fail "$name" "$where lacks '$sub': $(printf %s "$text" | head -c 600)"; return 1
        fi
    fi
    ok "$name"
}

# check NAME CMD... : passes when CMD succeeds.
check() {
    local name=$1; shift
    if "$@" >"$T/.chk" 2>&1; then ok "$name"; else fail "$name" "$(head -c 600 "$T/.chk")"; fi
}

# no_tmp_files DIR : no temporary left anywhere under DIR.
no_tmp_files() { [ -z "$(find "$1" -name '*.tmp.*' -print -quit)" ]; }
