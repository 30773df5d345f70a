# run_router.sh - qmoe-run --router-log and --mask-experts: k experts per
# token and layer, weights summing to 1 (norm_topk_prob), the golden top-4
# sets of router_seq.json, and a mask that really restricts the choices.
. "$(dirname "$0")/lib.sh"
plan 11
G=$FIX/qwen3moe-tiny/golden
M=$FIX/qwen3moe-tiny/qwen3moe
SEQ3=$(grep -A1 '"seq3"' "$G/tokens.json" | sed -n 's/.*"ids": \[\(.*\)\].*/\1/p' | tr -d ' ')

# golden LAYER TOKEN FILE: the top-4 of router_seq.json as "a,b,c,d"
golden() {
    awk -v L="$1" -v t="$2" '
        /"layer":/ { gsub(/[^0-9]/, "", $0); layer = $0; inexp = 0; next }
        /"experts": \[/ { inexp = 1; row = 0; next }
        /"weights"|"topk_margin"/ { inexp = 0 }
        inexp && /\[[0-9]/ { if (layer == L && row == t) { gsub(/[^0-9,]/, "", $0); sub(/,$/, ""); print; exit } row++ }
    ' "$3"
}

for mode in full masked; do
    mask=(); gold=$G/router_seq.json
    [ $mode = masked ] && { mask=(--mask-experts 0-7); gold=$G/router_masked_seq.json; }
    run qmoe-run "${mask[@]}" -n 0 --token-ids "$SEQ3" --router-log "$T/r.jsonl" "$M"
    expect "router_${mode}_run" 0 || continue
    n=$(wc -l <"$T/r.jsonl")
    [ "$n" = 72 ] && ok "router_${mode}_lines" || fail "router_${mode}_lines" "$n lines, want 3 x 24"
    # every line: 4 experts, 4 weights summing to 1, experts in the mask
    bad=$(awk -v masked=$([ $mode = masked ] && echo 1 || echo 0) '
        { e = $0; sub(/.*"experts":\[/, "", e); sub(/\].*/, "", e)
          w = $0; sub(/.*"weights":\[/, "", w); sub(/\].*/, "", w)
          ne = split(e, E, ","); nw = split(w, W, ",")
          s = 0; for (i = 1; i <= nw; i++) s += W[i]
          if (ne != 4 || nw != 4 || s < 0.99999 || s > 1.00001) { print NR ": " $0; next }
          for (i = 1; i <= ne; i++) if (masked && E[i] >= 8) { print NR ": " $0; next } }
    ' "$T/r.jsonl" | head -3)
    [ -z "$bad" ] && ok "router_${mode}_k_and_weights" || fail "router_${mode}_k_and_weights" "$bad"
    # the chosen experts equal the golden top-4, in order
    diffs=0
    for l in 0 1 2; do
        for t in $(seq 0 23); do
            got=$(grep "\"pos\":$t,[^}]*\"layer\":$l," "$T/r.jsonl" | sed 's/.*"experts":\[\([^]]*\)\].*/\1/')
            [ "$got" = "$(golden $l $t "$gold")" ] || diffs=$((diffs + 1))
        done
    done
    [ $diffs = 0 ] && ok "router_${mode}_golden_top4" || fail "router_${mode}_golden_top4" "$diffs of 72 differ"
done

# The mask explains the ablation: masked logits differ from full ones.
run qmoe-run -n 0 --token-ids "$SEQ3" --logits-out "$T/full.f32" "$M"
run qmoe-run -n 0 --token-ids "$SEQ3" --mask-experts 0-7 --logits-out "$T/masked.f32" "$M"
if [ ! -s "$T/full.f32" ] || [ ! -s "$T/masked.f32" ]; then fail router_mask_changes_logits "no logits written"
elif cmp -s "$T/full.f32" "$T/masked.f32"; then fail router_mask_changes_logits "masked logits equal the free router's"
else ok router_mask_changes_logits; fi

# Masks that cannot work.
run qmoe-run -n 0 --token-ids 1 --mask-experts 0-2 "$M"
expect router_mask_too_small 2 "allows 3 experts, fewer than the 4"
run qmoe-run -n 0 --token-ids 1 --mask-experts 0-16 "$M"
expect router_mask_out_of_range 2 "--mask-experts"
