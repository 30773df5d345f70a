# run_fused.sh - the forward pass of the qwen3_moe_fused layout (experts
# stacked per layer as transformers v5 keeps them: gate_up_proj [E, 2I, H],
# down_proj [E, H, I]) against the qwen3moe-tiny goldens. The fused
# checkpoint is made here from the fixture by tests/tools/fuse_experts.py
# (the same bf16 bytes, stacked), then run from the fused source directly
# and from its extraction (per-expert slices): prompt logits within 1e-3 of
# max(1, max |golden|) and bit-identical to the unfused checkpoint's run,
# full and masked to experts 0-7, greedy continuations equal to the golden,
# router logs identical to the unfused run's, both expert I/O paths. A
# negative control: up stacked before gate misses the golden by far.
. "$(dirname "$0")/lib.sh"
plan 79
FX=$FIX/qwen3moe-tiny
G=$FX/golden
PY=/usr/bin/python3
FUSE=$QMOE_ROOT/tests/tools/fuse_experts.py

ids() { jq -r ".sequences.seq$1.ids | map(tostring) | join(\",\")" "$G/tokens.json"; }
want() { jq -r ".greedy.seq$1.$2 | map(tostring) | join(\",\")" "$G/greedy.json"; }

run "$PY" "$FUSE" "$FX/qwen3moe" "$T/fused"
expect fused_written 0 "6 stacked tensors from 48 experts" stdout
n=$(jq '[.weight_map | keys[] | select(test("experts\\.[0-9]"))] | length' "$T/fused/model.safetensors.index.json")
same fused_no_per_expert_tensors "$n" 0
run qmoe-extract --no-progress --json "$T/fused" "$T/out"
expect fused_extract 0 '"layout":"qwen3_moe_fused"' stdout
run qmoe-verify --source "$T/fused" "$T/out"
expect fused_verify_source 0 "experts: 48/48" stdout
check fused_out_holds_slices grep -q '"model.layers.1.mlp.experts.5.gate_up_proj": "experts/expert_05_layer_01.safetensors"' \
    "$T/out/model.safetensors.index.json"

worst=0
for mode in full masked; do
    mask=(); key=torch_ref; pre=
    [ $mode = masked ] && { mask=(--mask-experts 0-7); key=torch_ref_masked; pre=masked_; }
    for s in 1 2 3; do
        run qmoe-run "${mask[@]}" --ignore-eos -n 16 --token-ids "$(ids $s)" \
            --logits-out "$T/ref.f32" --router-log "$T/ref.jsonl" "$FX/qwen3moe"
        expect "fused_${mode}_seq${s}_unfused_run" 0 || continue
        for src in source out; do
            dir=$T/fused; [ $src = out ] && dir=$T/out
            name="fused_${src}_${mode}_seq$s"
            run qmoe-run "${mask[@]}" --ignore-eos -n 16 --token-ids "$(ids $s)" \
                --logits-out "$T/l.f32" --router-log "$T/r.jsonl" "$dir"
            expect "$name" 0 || continue
            sc=$(score "$T/l.f32" "$G/logits_${pre}seq$s.f32")
            worst=$(awk -v a="$worst" -v b="$sc" 'BEGIN { print (b > a ? b : a) }')
            within "$sc" 1e-3 && ok "${name}_logits" || fail "${name}_logits" "score $sc > 1e-3"
            check "${name}_bit_identical_to_unfused" cmp "$T/l.f32" "$T/ref.f32"
            check "${name}_router_log_identical" cmp "$T/r.jsonl" "$T/ref.jsonl"
            w=$(want $s $key)
            [ "$out" = "$w" ] && ok "${name}_greedy" || fail "${name}_greedy" "got $out, golden $w"
        done
    done
done
echo "# worst qwen3_moe_fused (source and out, full and masked): $worst"

# both ways of bringing an expert in (map, read) read the same halves
for src in source out; do
    dir=$T/fused; [ $src = out ] && dir=$T/out
    run qmoe-run -n 0 --expert-io read --cache-mb 0 --token-ids "$(ids 3)" --logits-out "$T/rd.f32" "$dir"
    expect "fused_${src}_expert_io_read" 0
    run qmoe-run -n 0 --token-ids "$(ids 3)" --logits-out "$T/mp.f32" "$dir"
    check "fused_${src}_read_equals_map" cmp "$T/rd.f32" "$T/mp.f32"
done

# negative control: gate and up halves in the wrong order
run "$PY" "$FUSE" --up-first "$FX/qwen3moe" "$T/swapped"
expect fused_swapped_written 0
run qmoe-run -n 0 --token-ids "$(ids 3)" --logits-out "$T/l.f32" "$T/swapped"
expect fused_swapped_run 0
sc=$(score "$T/l.f32" "$G/logits_seq3.f32")
awk -v s="$sc" 'BEGIN { exit !(s != "nan" && s >= 1e-2) }' && ok fused_catches_up_first ||
    fail fused_catches_up_first "score $sc"

# a stack whose shape does not fit the config is refused, naming the tensor
rm -rf "$T/bad"; cp -r "$T/fused" "$T/bad"; chmod u+w "$T/bad/config.json"
sed -i 's/"moe_intermediate_size": 32/"moe_intermediate_size": 16/' "$T/bad/config.json"
run qmoe-run -n 0 --token-ids 1,2 "$T/bad"
expect fused_stack_rows_refused 2 "model.layers.0.mlp.experts.gate_up_proj' has shape [16, 64, 64], the config implies [16, 32, 64]"
