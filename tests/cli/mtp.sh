#!/usr/bin/env bash
# mtp.sh - DeepSeek-V3's multi-token-prediction block (num_nextn_predict_layers
# 1: model.layers.3.* after 3 decoder layers in the fixture, as the real
# V3/R1 store model.layers.61.*): extraction keeps it under the normal names
# (layers/layer_03, experts/expert_EE_layer_03), the manifest, qmoe-verify,
# qmoe-status and qmoe-extract count it apart from the decoder's layers and
# say so, its bytes equal the source's (read here from the safetensors
# headers with jq and dd, not with qmoe's reader), the forward pass ignores it
# (golden logits from the OUT), a missing MTP expert is incomplete, and a
# selection of the MTP layer alone works. GLM-4.5's block (glm4moe-tiny)
# is extracted, verified and ignored the same way.
. "$(dirname "$0")/lib.sh"
plan 43
F=$FIX/families/deepseekv3-tiny
SRC=$F/hf
O=$T/out

# ---- the plan and the extraction ----
run qmoe-extract --dry-run "$SRC" "$O"
expect mtp_dry_run 0
same mtp_dry_run_layers "$(printf '%s\n' "$out" | grep '^layers:')" \
    "layers:   0-3 of 3 + MTP 1 (2 + MTP 1 MoE; MTP: layer 3)"
same mtp_dry_run_experts "$(printf '%s\n' "$out" | grep '^experts:')" \
    "experts:  0-15 of 16 per layer: 2 layers x 16 + MTP 1 layer x 16"
run qmoe-extract --dry-run --json "$SRC" "$O"
same mtp_dry_run_json "$(printf %s "$out" | jq -c '[.num_layers, .moe_layers, .mtp_layers, .mtp_moe_layers, .expert_files, .mtp_expert_files, .layer_files]')" \
    "[3,2,1,1,48,16,4]"
check mtp_dry_run_wrote_nothing test ! -e "$O"

run qmoe-extract --no-progress "$SRC" "$O"
expect mtp_extract 0 "53/53 files complete (48 experts: 2 layers x 16 + MTP 1 layer x 16)" stdout
check mtp_layer_file test -f "$O/layers/layer_03.safetensors"
n=$(ls "$O/experts" | grep -c '_layer_03\.safetensors$')
same mtp_expert_files "$n" 16
same mtp_manifest_expected "$(jq -c '.expected | [.num_layers, .mtp_layers, .moe_layers, .layers, .count, .mtp_count, .files]' "$O/qmoe.json")" \
    '[3,1,"1-3","1-3",48,16,53]'
# the MTP block's own tensors (embed_tokens, enorm, hnorm, eh_proj, shared_head)
# are in its layer file
bad=
for t in embed_tokens.weight enorm.weight hnorm.weight eh_proj.weight shared_head.norm.weight shared_head.head.weight; do
    v=$(jq -r --arg n "model.layers.3.$t" '.weight_map[$n]' "$O/model.safetensors.index.json")
    [ "$v" = layers/layer_03.safetensors ] || bad="$bad $t -> $v"
done
[ -z "$bad" ] && ok mtp_block_tensors_in_layer_file || fail mtp_block_tensors_in_layer_file "$bad"

# ---- the bytes: every model.layers.3.* tensor of the source, found in OUT
# where the naming says (layer file, or the expert's file) with the same
# dtype, shape and bytes ----
hlen() { od -An -t u8 -N8 "$1" | tr -d ' '; }
header() { dd if="$1" bs=1 skip=8 count="$(hlen "$1")" status=none; }
# tensor_sha FILE NAME: "DTYPE SHAPE sha256" of one tensor's bytes
tensor_sha() {
    local h n b e
    h=$(hlen "$1")
    read -r b e < <(header "$1" | jq -r --arg n "$2" '.[$n].data_offsets | "\(.[0]) \(.[1])"')
    printf '%s %s ' "$(header "$1" | jq -r --arg n "$2" '.[$n].dtype')" \
        "$(header "$1" | jq -c --arg n "$2" '.[$n].shape')"
    tail -c +$((8 + h + b + 1)) "$1" | head -c $((e - b)) | sha256sum | cut -d' ' -f1
}
jq -r '.weight_map | to_entries[] | select(.key | startswith("model.layers.3.")) | "\(.key) \(.value)"' \
    "$SRC/model.safetensors.index.json" >"$T/mtp-tensors.txt"
bad= n=0
while read -r name shard; do
    if [[ $name =~ ^model\.layers\.3\.mlp\.experts\.([0-9]+)\. ]]; then
        want=$(printf 'experts/expert_%02d_layer_03.safetensors' "${BASH_REMATCH[1]}")
    else
        want=layers/layer_03.safetensors
    fi
    got=$(jq -r --arg n "$name" '.weight_map[$n]' "$O/model.safetensors.index.json")
    [ "$got" = "$want" ] || { bad="$name in '$got', not '$want'"; break; }
    a=$(tensor_sha "$SRC/$shard" "$name"); b=$(tensor_sha "$O/$got" "$name")
    [ -n "$a" ] && [ "$a" = "$b" ] || { bad="$name: source $a, out $b"; break; }
    n=$((n + 1))
done <"$T/mtp-tensors.txt"
[ -z "$bad" ] && [ "$n" -ge 60 ] && ok "mtp_bytes_equal_source" || fail mtp_bytes_equal_source "${bad:-only $n tensors}"
# ...and OUT's MTP files hold nothing else
n_out=$(jq -r '.weight_map | to_entries[] | select(.value | test("layer_03")) | .key' "$O/model.safetensors.index.json" | wc -l)
same mtp_files_hold_only_layer_3 "$n_out" "$(wc -l <"$T/mtp-tensors.txt")"

# ---- verify and status, counted apart ----
for mode in quick full source; do
    opt=(); [ $mode = quick ] && opt=(--quick); [ $mode = source ] && opt=(--source "$SRC")
    run qmoe-verify "${opt[@]}" "$O"
    expect "mtp_verify_$mode" 0 "experts: 48/48 (2 layers x 16 + MTP 1 layer x 16; MTP 16/16)" stdout
done
[[ "$out" == *"layers complete: 3/3 (MTP 1/1)"* ]] && ok mtp_verify_layers || fail mtp_verify_layers "$out"
run qmoe-verify --json "$O"
same mtp_verify_json "$(printf %s "$out" | jq -c '[.ok, .experts.mtp_present, .experts.mtp_expected, .layers.mtp_complete, .layers.mtp_expected]')" \
    '[true,16,16,1,1]'
run qmoe-status "$O"
expect mtp_status 0 "mtp       layer 3: 16/16 experts, 1/1 layer complete" stdout
[[ "$out" == *"M03 16/16"* ]] && ok mtp_status_row || fail mtp_status_row "$out"
run qmoe-status --json "$O"
same mtp_status_json "$(printf %s "$out" | jq -c '[.complete, .num_layers, .mtp_layers, .mtp_experts_done, .mtp_experts_expected, ([.layers[] | select(.mtp) | .layer])]')" \
    '[true,3,1,16,16,[3]]'

# a qmoe.json whose mtp_count disagrees with its own lists is caught
cp -r "$O" "$T/mc"
jq -c '.expected.mtp_count = 15' "$O/qmoe.json" >"$T/mc/qmoe.json"
run qmoe-verify --quick "$T/mc"
expect mtp_manifest_count_checked 1 "expected.mtp_count is 15 but its layer and expert lists give 16 MTP expert files" stdout

# ---- the forward pass ignores the block: golden logits from the OUT,
# bit-identical to the source's run ----
ids=$(jq -r '.sequences.seq3.ids | map(tostring) | join(",")' "$F/golden/tokens.json")
run qmoe-run -n 0 --token-ids "$ids" --logits-out "$T/out.f32" "$O"
expect mtp_run_out 0
run qmoe-run -n 0 --token-ids "$ids" --logits-out "$T/src.f32" "$SRC"
expect mtp_run_src 0
check mtp_run_out_equals_source cmp "$T/out.f32" "$T/src.f32"
sc=$(paste <(od -An -v -f -w4 "$T/out.f32") <(od -An -v -f -w4 "$F/golden/logits_seq3.f32") | awk '
    NF != 2 { bad = 1 } { d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d; g = $2 < 0 ? -$2 : $2; if (g > s) s = g; n++ }
    END { if (s < 1) s = 1; if (n == 0 || bad) print "nan"; else printf "%.3g\n", m / s }')
awk -v s="$sc" 'BEGIN { exit !(s != "nan" && s <= 1e-3) }' && ok "mtp_out_golden_logits" || fail mtp_out_golden_logits "score $sc"
echo "# deepseekv3 from the OUT with its MTP block, seq3: $sc"

# ---- a missing MTP expert: incomplete, named; status agrees ----
cp -r "$O" "$T/gap"
rm "$T/gap/experts/expert_05_layer_03.safetensors"
run qmoe-verify "$T/gap"
expect mtp_verify_missing_exit1 1
[[ "$out" == *"coverage: layer 03 (MTP): expert 5 missing"* ]] && ok mtp_verify_names_missing || fail mtp_verify_names_missing "$out"
[[ "$out" == *"MTP 15/16"* ]] && ok mtp_verify_missing_count || fail mtp_verify_missing_count "$out"
run qmoe-status "$T/gap"
expect mtp_status_missing_exit1 1 "layer 3: 15/16 experts, 0/1 layer complete" stdout
run qmoe-status --json "$T/gap"
same mtp_status_missing_json "$(printf %s "$out" | jq -c '[.complete, .incomplete_reason, .mtp_experts_done]')" \
    '[false,"files missing",15]'

# ---- a selection of the MTP layer alone, and one across the boundary ----
run qmoe-extract --no-progress --layers 3 --experts 0-3 "$SRC" "$T/sel"
expect mtp_select_extract 0 "(4 experts: MTP 1 layer x 4)" stdout
same mtp_select_files "$(cd "$T/sel" && { ls experts; ls layers; } | tr '\n' ' ')" \
    "expert_00_layer_03.safetensors expert_01_layer_03.safetensors expert_02_layer_03.safetensors expert_03_layer_03.safetensors layer_03.safetensors "
run qmoe-verify --source "$SRC" "$T/sel"
expect mtp_select_verify 0 "experts: 4/4 (MTP 1 layer x 4; MTP 4/4)" stdout
run qmoe-status --json "$T/sel"
same mtp_select_status "$(printf %s "$out" | jq -c '[.complete, .partial, .selected_layers, .mtp_experts_done]')" '[true,true,"3",4]'
run qmoe-extract --no-progress --layers 2-3 "$SRC" "$T/sel2"
expect mtp_select_boundary 0 "(32 experts: 1 layer x 16 + MTP 1 layer x 16)" stdout
run qmoe-verify --source "$SRC" "$T/sel2"
expect mtp_select_boundary_verify 0 "layers complete: 2/2 (MTP 1/1)" stdout
# a layer past the MTP block is out of range
run qmoe-extract --dry-run --layers 4 "$SRC" "$T/sel3"
expect mtp_select_out_of_range 2 "--layers"

# ---- a config that does not declare the block: refused, naming the key ----
mkdir -p "$T/nokey"; cp "$SRC"/* "$T/nokey/"; chmod u+w "$T/nokey/config.json"
sed -i 's/"num_nextn_predict_layers": 1,//' "$T/nokey/config.json"
run qmoe-extract --dry-run "$T/nokey" "$T/nokey-out"
expect mtp_undeclared_refused 2 "is an expert of layer 3, but the config has fewer layers (num_hidden_layers 3, num_nextn_predict_layers 0)"

# ---- GLM-4.5 (glm4_moe, num_nextn_predict_layers 1) keeps its MTP block
# the same way: counted apart, its own tensors in its layer file, verified
# against the source, and ignored by the forward pass (golden logits from
# the OUT, tests/fixtures/families/glm4moe-tiny) ----
GF=$FIX/families/glm4moe-tiny
run qmoe-extract --no-progress "$GF/hf" "$T/glm"
expect mtp_glm4moe_extract 0 "53/53 files complete (48 experts: 2 layers x 16 + MTP 1 layer x 16)" stdout
bad=
for t in eh_proj.weight enorm.weight shared_head.head.weight self_attn.q_proj.bias mlp.gate.e_score_correction_bias; do
    v=$(jq -r --arg n "model.layers.3.$t" '.weight_map[$n]' "$T/glm/model.safetensors.index.json")
    [ "$v" = layers/layer_03.safetensors ] || bad="$bad $t -> $v"
done
[ -z "$bad" ] && ok mtp_glm4moe_block_in_layer_file || fail mtp_glm4moe_block_in_layer_file "$bad"
run qmoe-verify --source "$GF/hf" "$T/glm"
expect mtp_glm4moe_verify 0 "experts: 48/48 (2 layers x 16 + MTP 1 layer x 16; MTP 16/16)" stdout
run qmoe-run -n 0 --token-ids "$(jq -r '.sequences.seq3.ids | map(tostring) | join(",")' "$GF/golden/tokens.json")" \
    --logits-out "$T/glm.f32" "$T/glm"
expect mtp_glm4moe_run_out 0
sc=$(score "$T/glm.f32" "$GF/golden/logits_seq3.f32")
within "$sc" 1e-3 && ok mtp_glm4moe_out_golden_logits || fail mtp_glm4moe_out_golden_logits "score $sc"
