# plan_mtp.sh - qmoe-pack --keep-experts and DeepSeek-V3's multi-token-
# prediction block (tests/fixtures/families/deepseekv3-tiny: 3 decoder
# layers, the first dense, and one MTP layer, model.layers.3.*).
#   - a plan from router statistics lists the decoder's MoE layers only
#     (the forward pass never routes through the MTP block): the pack drops
#     the block, sets num_nextn_predict_layers to 0, says so on stderr, in
#     --dry-run and in qmoe-pack.json; its logits are the original's with
#     --keep-experts; qmoe-extract and qmoe-verify --source accept it;
#   - a plan that lists the MTP layer too keeps the block, sliced like the
#     others (its experts renumbered, its router rows and bias sliced).
. "$(dirname "$0")/lib.sh"
plan 21
C=$QMOE_ROOT/samples/corpus.jsonl
DS=$FIX/families/deepseekv3-tiny/hf
IDX=model.safetensors.index.json

run qmoe-run --router-stats "$C" --keep 8 --plan-out "$T/ds.json" "$DS"
expect mtp_plan 0
same mtp_plan_layers "$(jq -c '.keep | keys' "$T/ds.json")" '["1","2"]'

run qmoe-pack --dry-run --keep-experts "$T/ds.json" "$DS" "$T/dry"
expect mtp_dry_says 0 "multi-token-prediction block: it is dropped (num_nextn_predict_layers 0" stdout
check mtp_dry_no_layer3 test -z "$(printf '%s\n' "$out" | grep '^  model\.layers\.3\.')"

run qmoe-pack --no-progress --keep-experts "$T/ds.json" "$DS" "$T/p"
expect mtp_pack 0 "qmoe-pack: the plan does not list the multi-token-prediction block: it is dropped"
same mtp_config "$(jq -c '[.num_nextn_predict_layers, .num_hidden_layers, .n_routed_experts]' "$T/p/config.json")" '[0,3,8]'
same mtp_no_tensor "$(jq '[.weight_map | keys[] | select(startswith("model.layers.3."))] | length' "$T/p/$IDX")" 0
# everything but layer 3 and the dropped experts: the source's names
want=$(jq -r '.weight_map | keys[] | select(startswith("model.layers.3.") | not)
    | select(test("mlp\\.experts\\.([0-9]+)\\.") | not)' "$DS/$IDX" | sort)
got=$(jq -r '.weight_map | keys[] | select(test("mlp\\.experts\\.([0-9]+)\\.") | not)' "$T/p/$IDX" | sort)
same mtp_other_tensors "$got" "$want"
same mtp_experts "$(jq '[.weight_map | keys[] | select(test("mlp\\.experts\\."))] | length' "$T/p/$IDX")" 48
same mtp_record "$(jq -c '.mtp' "$T/p/qmoe-pack.json")" '{"layers_before":1,"layers_after":0,"dropped":true}'

# the packed model is the original restricted to the plan
IDS=$(qmoe-run --tokenize "$DS" <"$QMOE_ROOT/samples/reference.txt" | jq -r '.[0:48] | map(tostring) | join(",")')
run qmoe-run --token-ids "$IDS" -n 0 --logits-out "$T/keep.f32" --keep-experts "$T/ds.json" "$DS"
expect mtp_logits_keep 0
run qmoe-run --token-ids "$IDS" -n 0 --logits-out "$T/packed.f32" "$T/p"
expect mtp_logits_packed 0
sc=$(score "$T/packed.f32" "$T/keep.f32")
within "$sc" 1e-5 && ok mtp_packed_logits || fail mtp_packed_logits "score $sc"

# other tools take the packed checkpoint as a source
run qmoe-extract --no-progress "$T/p" "$T/x"
expect mtp_extract 0
run qmoe-verify --no-progress --source "$T/p" "$T/x"
expect mtp_verify_source 0

# the MTP layer listed: the block is kept, sliced like the others
jq -c '.keep["3"] = .keep["2"]' "$T/ds.json" >"$T/ds-mtp.json"
run qmoe-pack --no-progress --keep-experts "$T/ds-mtp.json" "$DS" "$T/k"
expect mtp_kept 0
check mtp_kept_quiet test -z "$(printf '%s\n' "$err" | grep 'multi-token')"
same mtp_kept_config "$(jq '.num_nextn_predict_layers' "$T/k/config.json")" 1
same mtp_kept_experts "$(jq '[.weight_map | keys[] | select(startswith("model.layers.3.mlp.experts."))] | length' "$T/k/$IDX")" 24
same mtp_kept_others "$(jq -r '.weight_map | keys[] | select(startswith("model.layers.3.")) | select(test("experts\\.") | not)' "$T/k/$IDX" | sort)" \
    "$(jq -r '.weight_map | keys[] | select(startswith("model.layers.3.")) | select(test("experts\\.") | not)' "$DS/$IDX" | sort)"
same mtp_kept_record "$(jq -c '[.mtp.dropped, .plan.original_ids["3"] == .plan.original_ids["2"]]' "$T/k/qmoe-pack.json")" '[false,true]'
