#!/usr/bin/env bash
# The catalogue of bad inputs (tests/bad/NNN-name/, see
# tests/bad/make-catalogue.py): each entry's command must exit with the
# expected code and say the expected things on stderr, within a time limit
# (a hang is a failure), without a sanitizer report, and an extraction that
# fails must leave nothing under a final name and no temporary.
. "$(dirname "$0")/lib.sh"
BAD="$QMOE_ROOT/tests/bad"
LIMIT=${BAD_TIMEOUT:-60}

for e in "$BAD"/[0-9][0-9][0-9]-*/; do
    e=${e%/}; name=$(basename "$e")
    D="$T/$name"; OUT="$T/$name.out"
    cp -r "$e" "$D"
    export D OUT FIX
    want_rc= cmd= subs=() setup_ok=1 req=() envs=() limit=$LIMIT checks=()
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
            '#'*|'') ;;
            setup\ *) bash -c "${line#setup }" >"$T/.setup" 2>&1 || { setup_ok=0; break; } ;;
            requires\ *) req=(${line#requires }) ;;
            env\ *) envs+=("${line#env }") ;;
            limit\ *) limit=${line#limit } ;;
            check\ *) checks+=("${line#check }") ;;
            run\ *) cmd=${line#run } ;;
            exit\ *) want_rc=${line#exit } ;;
            stderr\ *) subs+=("E${line#stderr }") ;;
            output\ *) subs+=("O${line#output }") ;;
            *) fail "bad-$name" "unknown line in expect: $line"; continue 2 ;;
        esac
    done <"$e/expect"
    [ $setup_ok = 1 ] || { fail "bad-$name" "setup failed: $(cat "$T/.setup")"; continue; }
    prog=${cmd%% *}
    if ! command -v "$prog" >/dev/null; then skip "bad-$name" "$prog not built yet"; continue; fi
    if [ ${#req[@]} = 2 ] && ! "${req[0]}" --help 2>/dev/null | grep -q -- "${req[1]}"; then
        skip "bad-$name" "${req[0]} has no ${req[1]} yet"; continue
    fi
    eval "set -- $cmd"
    run env "${envs[@]}" timeout -k 5 "$limit" "$@"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then fail "bad-$name" "no answer within $limit s (hang?)"; continue; fi
    good=1
    [ "$rc" = "$want_rc" ] || { fail "bad-$name" "exit $rc, wanted $want_rc; stderr: $(head -c 400 <<<"$err")"; good=0; }
    for s in "${subs[@]}"; do
        [ $good = 1 ] || break
        if [ "${s:0:1}" = E ]; then text=$err; where=stderr; else text="$out$err"; where=output; fi
        s=${s:1}
        [[ "$text" == *"$s"* ]] || { fail "bad-$name" "$where lacks '$s': $(head -c 400 <<<"$text")"; good=0; }
    done
    if [ $good = 1 ] && [[ "$err" == *Sanitizer* || "$err" == *"runtime error"* ]]; then
        fail "bad-$name" "sanitizer report: $(head -c 600 <<<"$err")"; good=0
    fi
    # one line, naming something: no bare "error"
    if [ $good = 1 ] && [ "$want_rc" = 2 ] && [ "$(grep -c . <<<"$err")" -gt 3 ]; then
        fail "bad-$name" "more than 3 lines on stderr: $(head -c 400 <<<"$err")"; good=0
    fi
    if [ $good = 1 ] && [ "$prog" = qmoe-extract ] && [ "$want_rc" != 0 ] && [ -d "$OUT" ]; then
        if [ -n "$(find "$OUT" -name '*.safetensors' -print -quit)" ] || ! no_tmp_files "$OUT"; then
            fail "bad-$name" "left files in OUT: $(find "$OUT" -name '*.safetensors*' | head -3)"; good=0
        fi
    fi
    for c in "${checks[@]}"; do
        [ $good = 1 ] || break
        bash -c "$c" >"$T/.check" 2>&1 || { fail "bad-$name" "check failed: $c: $(head -c 300 "$T/.check")"; good=0; }
    done
    [ $good = 1 ] && ok "bad-$name"
    rm -rf "$D" "$OUT"
done
