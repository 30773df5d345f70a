# run_extracted.sh - qmoe-run on an extraction computes exactly what it
# computes on the original checkpoint (same code, same bytes: identical
# logits and continuations), for both layouts, full and masked routing,
# with a tiny cache too; a deleted expert file is a clear error; a partial
# extraction of experts 0-7 runs the masked model.
. "$(dirname "$0")/lib.sh"
plan 20
G=$FIX/qwen3moe-tiny/golden
SEQ3=$(grep -A1 '"seq3"' "$G/tokens.json" | sed -n 's/.*"ids": \[\(.*\)\].*/\1/p' | tr -d ' ')

for n in qwen3moe omni; do
    src=$FIX/qwen3moe-tiny/$n dst=$T/$n
    run qmoe-extract --no-progress "$src" "$dst"
    expect "extracted_${n}_extract" 0 || continue
    for mode in full masked; do
        mask=(); [ $mode = masked ] && mask=(--mask-experts 0-7)
        run qmoe-run "${mask[@]}" --ignore-eos -n 8 --token-ids "$SEQ3" --logits-out "$T/a.f32" "$src"
        a=$out
        run qmoe-run "${mask[@]}" --ignore-eos -n 8 --cache-mb 0 --token-ids "$SEQ3" \
            --logits-out "$T/b.f32" "$dst"
        expect "extracted_${n}_${mode}_run" 0 || continue
        cmp -s "$T/a.f32" "$T/b.f32" && ok "extracted_${n}_${mode}_same_logits" ||
            fail "extracted_${n}_${mode}_same_logits"
        [ "$a" = "$out" ] && ok "extracted_${n}_${mode}_same_greedy" ||
            fail "extracted_${n}_${mode}_same_greedy" "$a vs $out"
    done
done

# A missing expert file names the layer, the expert and the file.
if [ -d "$T/qwen3moe/experts" ]; then
    f=$(ls "$T/qwen3moe/experts" | grep 'expert_0*3_layer_0*0\.safetensors')
    rm -f "$T/qwen3moe/experts/$f"
    run qmoe-run -n 0 --token-ids "$SEQ3" "$T/qwen3moe"
    expect extracted_missing_expert 2 "cannot load expert (layer 0, expert 3)" &&
        expect extracted_missing_expert_file 2 "experts/$f"
fi

# Experts 0-7 only: enough for the masked model, which matches the golden.
run qmoe-extract --no-progress --experts 0-7 "$FIX/qwen3moe-tiny/omni" "$T/part"
expect extracted_partial 0 && {
    run qmoe-run --mask-experts 0-7 --ignore-eos -n 16 --token-ids "$SEQ3" "$T/part"
    want=$(grep -A3 '"seq3"' "$G/greedy.json" | sed -n 's/.*"torch_ref_masked": \[\(.*\)\].*/\1/p' | tr -d ' ')
    expect extracted_partial_masked_run 0 && {
        [ "$out" = "$want" ] && ok extracted_partial_masked_greedy ||
            fail extracted_partial_masked_greedy "$out vs $want"; }
    run qmoe-run -n 0 --token-ids "$SEQ3" "$T/part"
    expect extracted_partial_unmasked_fails 2 "cannot load expert"
}
