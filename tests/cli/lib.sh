# lib.sh - helpers for command-line tests (sourced). Each check prints
# "ok NAME", "FAIL NAME: evidence" or "skip NAME: reason", for tests/run.sh
# to count.
#
# The plan. Right after sourcing this file a script declares how many checks
# (ok + FAIL + skip lines) it prints when it runs to the end:
#
#     . "$(dirname "$0")/lib.sh"
#     plan 73
#
# tests/run.sh fails a script that has no plan line or whose count differs
# from it (it stopped early, or checks were added or lost without the plan
# changing). Count every check a full run prints (as root, as CI runs); a
# plan may be computed when the checks are one per item of a fixed list
# (bad_inputs.sh: one per catalogue entry). A part that cannot run in this
# environment (no root, no UTF-8 locale) prints one `skip NAME` per check it
# would have made, or, at the end of a script only, `skip_rest NAME REASON`
# and `exit 0`: the script then passes with fewer checks than planned.
#
# Changing checks: adjust the number by hand, or let a passing run count
# them: `UPDATE_PLAN=1 TESTS=name make check` rewrites `plan N` in
# tests/cli/name.sh with the number of checks that ran, when the run had no
# FAIL, no skip_rest, and the plan line is a literal `plan N`. (After a merge
# of branches that both added checks: UPDATE_PLAN=1 make check, then review
# `git diff tests/cli` - each changed plan should grow by the checks merged.)
#
# Rules: no check passes unconditionally (a loop collects failures and
# reports one ok or FAIL at its end); a missing program is a failure, never
# a skip (lib.sh fails the script when a qmoe tool, a test tool or jq is
# missing).
set -u
: "${QMOE_BIN:?}" "${QMOE_TMP:?}" "${QMOE_ROOT:?}" "${QMOE_BUILD:?}"
PATH="$QMOE_BIN:$PATH"
FIX="$QMOE_ROOT/tests/fixtures"
T="$QMOE_TMP/$(basename "$0" .sh)"
rm -rf "$T"; mkdir -p "$T"

ok()   { echo "ok $1"; }
fail() { echo "FAIL $1${2:+: $2}"; }
skip() { echo "skip $1${2:+: $2}"; }
plan() { echo "plan $1"; }
skip_rest() { echo "skip $1${2:+: $2}"; echo "skip-rest"; }

for _p in "$QMOE_BIN"/qmoe-{extract,status,verify,run,mksample} \
          "$QMOE_BUILD"/tests/tools/{ckcmp,cohtok,stcheck,stmutate} "$(command -v jq)"; do
    if ! [ -x "$_p" ]; then
        echo "FAIL missing-program: '${_p:-jq}' is not built or not installed"; exit 1
    fi
done
unset _p

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

# same NAME A B [DETAIL] : passes when A and B are equal and not empty (two
# empty outputs, from a command that failed on both sides, prove nothing).
same() {
    if [ -n "$2" ] && [ "$2" = "$3" ]; then ok "$1"
    elif [ -z "$2" ]; then fail "$1" "nothing to compare${4:+; $4}"
    else fail "$1" "${4:-differ}"; fi
}

# no_tmp_files DIR : no temporary left anywhere under DIR.
no_tmp_files() { [ -z "$(find "$1" -name '*.tmp.*' -print -quit)" ]; }

# score A B: max |a - b| / max(1, max |b|) over two float32 files (the
# golden logits' normalised difference); "nan" when empty or of unequal length
score() {
    paste <(od -An -v -f -w4 "$1") <(od -An -v -f -w4 "$2") | awk '
        NF != 2 { bad = 1 }
        { d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d
          g = $2 < 0 ? -$2 : $2; if (g > s) s = g; n++ }
        END { if (s < 1) s = 1; if (n == 0 || bad) print "nan"; else printf "%.3g\n", m / s }'
}
# within SCORE LIMIT: SCORE <= LIMIT
within() { awk -v s="$1" -v l="$2" 'BEGIN { exit !(s != "nan" && s <= l) }'; }

# A family fixture's golden folder G (tokens.json, greedy.json,
# logits_[masked_]seqK.f32, as tests/fixtures/families/README.md describes):
# ids G SEQ: the prompt of seqN as "a,b,c"
golden_ids() { jq -r ".sequences.seq$2.ids | map(tostring) | join(\",\")" "$1/tokens.json"; }
# golden_want G SEQ KEY: the golden continuation
golden_want() { jq -r ".greedy.seq$2.$3 | map(tostring) | join(\",\")" "$1/greedy.json"; }
# golden_seqs PREFIX LABEL DIR G MODE WORST: qmoe-run on DIR for seq1-3,
# full or masked to experts 0-3 (MODE), checks PREFIX_seqK_logits (within
# 1e-3 of the golden) and PREFIX_seqK_greedy (identical); appends
# "LABEL MODE SCORE" to WORST. $T is the scratch folder.
golden_seqs() {
    local pre=$1 label=$2 dir=$3 g=$4 mode=$5 worst=$6 mask=() key=torch_ref lp= s name sc w
    [ "$mode" = masked ] && { mask=(--mask-experts 0-3); key=torch_ref_masked; lp=masked_; }
    for s in 1 2 3; do
        name="${pre}_seq$s"
        run qmoe-run "${mask[@]}" --ignore-eos -n 16 -j 2 --token-ids "$(golden_ids "$g" $s)" \
            --logits-out "$T/l.f32" "$dir"
        expect "$name" 0 || continue
        sc=$(score "$T/l.f32" "$g/logits_${lp}seq$s.f32")
        echo "$label $sc" >>"$worst"
        within "$sc" 1e-3 && ok "${name}_logits" || fail "${name}_logits" "score $sc > 1e-3"
        w=$(golden_want "$g" $s $key)
        [ "$out" = "$w" ] && ok "${name}_greedy" || fail "${name}_greedy" "got $out, golden $w"
    done
}
