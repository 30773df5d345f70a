#!/usr/bin/env bash
# fp8.sh - FP8 block-scaled checkpoints (tests/fixtures/fp8yarn): extraction
# keeps every weight_scale_inv with its weight (the DeepSeek-V3 fixture has
# a shard boundary between an expert's down_proj and its scale), verify
# --source proves the bytes, and qmoe-verify's fp8 check finds a scale of
# the wrong shape, a weight_block_size that does not fit the scales, and an
# unknown fmt, each named (a damaged file is made consistent with its
# manifest by stmutate, and config.json is not hashed, so that only the fp8
# check can see the damage).
. "$(dirname "$0")/lib.sh"
plan 16
TOOLS=$QMOE_BUILD/tests/tools
F=$FIX/fp8yarn

for fx in dsv3-fp8:177:16x16 qwen3moe-fp8:155:24x40; do
    IFS=: read -r name n grid <<<"$fx"
    O=$T/$name
    run qmoe-extract --no-progress "$F/$name/hf" "$O"
    expect "${name}_extract" 0
    run qmoe-verify --no-progress --source "$F/$name/hf" "$O"
    expect "${name}_verify_source" 0 \
        "note: fp8: $n F8_E4M3 weights checked against their weight_scale_inv ($grid blocks)" stdout
    n_idx=$(jq '[.weight_map | keys[] | select(endswith("_scale_inv"))] | length' "$O/model.safetensors.index.json")
    same "${name}_scales_in_index" "$n_idx" "$n"
done

# the scale and its weight went to the same expert file
O=$T/dsv3-fp8
same fp8_scale_with_expert \
    "$(jq -r '.weight_map["model.layers.1.mlp.experts.15.down_proj.weight_scale_inv"]' "$O/model.safetensors.index.json")" \
    "experts/expert_15_layer_01.safetensors"

# a scale of the wrong shape (same bytes: [3, 4] read as [4, 3])
B=$T/reshaped
cp -r "$O" "$B"
S=model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv
"$TOOLS/stmutate" reshape "$B/layers/layer_00.safetensors" "$S" 4,3 &&
    "$TOOLS/stmutate" remanifest "$B" layers/layer_00.safetensors
check fp8_reshape_made test $? = 0
run qmoe-verify --no-progress "$B"
expect fp8_reshaped_fails 1 \
    "fp8: layers/layer_00.safetensors: tensor 'model.layers.0.self_attn.kv_a_proj_with_mqa.weight': scale '$S' has shape [4, 3], but weight [40, 64] in 16x16 blocks needs [3, 4]" stdout
same fp8_reshaped_one_problem "$(printf '%s\n' "$out" | grep -c '^fp8: ')" 1
run qmoe-verify --no-progress --json "$B"
same fp8_reshaped_json "$(printf %s "$out" | jq -c '[.problems[] | select(.phase == "fp8") | [.kind, .file, .tensor]]')" \
    '[["shape","layers/layer_00.safetensors","model.layers.0.self_attn.kv_a_proj_with_mqa.weight"]]'

# a config whose block size does not fit any scale
B=$T/block
cp -r "$O" "$B"
jq '.quantization_config.weight_block_size = [32, 32]' "$O/config.json" >"$B/config.json"
run qmoe-verify --no-progress "$B"
expect fp8_block_fails 1 "in 32x32 blocks needs" stdout
same fp8_block_every_weight "$(printf '%s\n' "$out" | grep -c '^fp8: ')" 177

# an fmt the forward pass cannot decode, refused by name
B=$T/fmt
cp -r "$O" "$B"
jq '.quantization_config.fmt = "e5m2"' "$O/config.json" >"$B/config.json"
run qmoe-verify --no-progress "$B"
expect fp8_fmt_fails 1 \
    "fp8: '$B/config.json': quantization_config.fmt 'e5m2' is not supported (only E4M3 is decoded)" stdout

# a bf16 checkpoint has no FP8 note and no fp8 problem
run qmoe-extract --no-progress "$F/dsv3-yarn/hf" "$T/yarn"
run qmoe-verify --no-progress "$T/yarn"
expect fp8_bf16_ok 0
same fp8_bf16_no_note "$(printf '%s\n' "$out" | grep -c '^fp8: \|^note: fp8')" 0
