# run_golden.sh - qmoe-run against the golden outputs of
# tests/fixtures/qwen3moe-tiny: prompt logits within the README's tolerance
# (score <= 1e-3) and identical greedy continuations, full and masked to
# experts 0-7, on both layouts (qwen3moe/ and omni/).
. "$(dirname "$0")/lib.sh"
plan 41
G=$FIX/qwen3moe-tiny/golden

# ids SEQ: the prompt of seqN from tokens.json as "a,b,c"
ids() { grep -A1 "\"seq$1\"" "$G/tokens.json" | sed -n 's/.*"ids": \[\(.*\)\].*/\1/p' | tr -d ' '; }
# want SEQ KEY: the golden continuation from greedy.json
want() { grep -A3 "\"seq$1\"" "$G/greedy.json" | sed -n "s/.*\"$2\": \[\(.*\)\].*/\1/p" | tr -d ' '; }

for layout in qwen3moe omni; do
    for mode in full masked; do
        mask=(); key=torch_ref; pre=
        [ $mode = masked ] && { mask=(--mask-experts 0-7); key=torch_ref_masked; pre=masked_; }
        for s in 1 2 3; do
            name="golden_${layout}_${mode}_seq$s"
            run qmoe-run "${mask[@]}" --ignore-eos -n 16 -j 2 --token-ids "$(ids $s)" \
                --logits-out "$T/l.f32" "$FIX/qwen3moe-tiny/$layout"
            expect "$name" 0 || continue
            sc=$(score "$T/l.f32" "$G/logits_${pre}seq$s.f32")
            echo "$layout $mode $sc" >>"$T/worst.txt"
            if awk -v s="$sc" 'BEGIN { exit !(s <= 1e-3) }'; then ok "${name}_logits"
            else fail "${name}_logits" "score $sc > 1e-3"; fi
            w=$(want $s $key)
            if [ "$out" = "$w" ]; then ok "${name}_greedy"
            else fail "${name}_greedy" "got $out, golden $w"; fi
        done
    done
done

# the worst normalised difference per layout and routing (for the notes)
sort -k1,2 -k3g "$T/worst.txt" | awk '{ w[$1 " " $2] = $3 } END { for (k in w) print "# worst " k " " w[k] }' | sort

# The controls: a wrong eps is visible in the score.
mkdir -p "$T/eps"
cp "$FIX"/qwen3moe-tiny/qwen3moe/* "$T/eps/"
sed -i 's/"rms_norm_eps": 1e-06/"rms_norm_eps": 1e-05/' "$T/eps/config.json"
run qmoe-run -n 0 --token-ids "$(ids 3)" --logits-out "$T/l.f32" "$T/eps"
sc=$(score "$T/l.f32" "$G/logits_seq3.f32")
if awk -v s="$sc" 'BEGIN { exit !(s >= 0.05) }'; then ok golden_catches_wrong_eps
else fail golden_catches_wrong_eps "score $sc with eps 1e-5"; fi

# Greedy stops after an end-of-sequence id of generation_config.json (381
# is one, 14th in seq1's continuation) unless --ignore-eos.
run qmoe-run -n 16 --token-ids 327 "$FIX/qwen3moe-tiny/qwen3moe"
expect run_stops_at_eos 0 && {
    [ "$out" = "145,378,353,325,116,86,283,132,47,374,47,203,347,381" ] &&
        ok run_stops_at_eos_ids || fail run_stops_at_eos_ids "got $out"; }

# Logits of a prompt with -n 0, --json summary.
run qmoe-run -n 0 --json --token-ids "$(ids 2)" --logits-out "$T/l2.f32" "$FIX/qwen3moe-tiny/omni"
expect run_json 0 '"generated_ids":' stdout
[ "$(stat -c %s "$T/l2.f32")" = $((7 * 384 * 4)) ] && ok run_logits_size ||
    fail run_logits_size "$(stat -c %s "$T/l2.f32") bytes"
