# pack.sh - qmoe-pack on every family fixture (Qwen3-MoE, Mixtral, OLMoE,
# Qwen2-MoE, DeepSeek-V3) and the Omni-shaped one: a standard Hugging Face
# checkpoint (shards of at most --max-shard-size, {"format":"pt"}, index
# with metadata.total_size, config, tokenizer files, qmoe-pack.json whose
# SHA-256s are the files'), without a plan every tensor byte for byte the
# source's; with an expert plan the config's counts changed and the packed
# model's logits and router choices equal to the original's run with
# --keep-experts (bit for bit when the plan lists ids in ascending order:
# the masked softmax then sums the same numbers in the same order; within
# 1e-5 otherwise, the sum taken in plan order); qmoe-extract and
# qmoe-verify --source take DEST as a source. --as qwen3_moe: the Omni
# thinker alone as Qwen3MoeForCausalLM, its logits bit for bit the Omni
# source's. Bad plans and a non-empty DEST are refused before anything is
# written, naming the entry.
. "$(dirname "$0")/lib.sh"
plan 186
FAM=$FIX/families
IDS=1,7,42,99,5,250,17,3,64,128,77,300
ckcmp() { "$QMOE_BUILD/tests/tools/ckcmp" "$@"; }
stcheck() { "$QMOE_BUILD/tests/tools/stcheck" "$@"; }

# sha_ok DEST: every file qmoe-pack.json lists has that size and SHA-256
sha_ok() {
    local d=$1 bad=0 p s h
    while read -r p s h; do
        [ "$(stat -c %s "$d/$p")" = "$s" ] && [ "$(sha256sum <"$d/$p" | cut -c1-64)" = "$h" ] ||
            { echo "$p"; bad=1; }
    done < <(jq -r '.files[] | "\(.path) \(.size) \(.sha256)"' "$d/qmoe-pack.json")
    [ "$(jq '.files | length' "$d/qmoe-pack.json")" -gt 3 ] && [ $bad = 0 ]
}
# total_ok DEST: metadata.total_size is the sum of the tensors' bytes
total_ok() {
    local want got=0 f n
    want=$(jq '.metadata.total_size' "$1/model.safetensors.index.json")
    for f in "$1"/model-*.safetensors; do
        n=$(head -c 8 "$f" | od -An -t u8 | tr -d ' ')
        got=$((got + $(stat -c %s "$f") - 8 - n))
    done
    [ "$want" = "$got" ]
}
# mapped_log PLAN LOG: the router log with experts renumbered by the plan
mapped_log() {
    jq -r --slurpfile p "$1" '.layer as $l | "\(.layer) \(.pos) \([.experts[] as $e |
        ($p[0].keep[$l | tostring] | indices($e)[0])] | map(tostring) | join(",")) \(.weights | map(tostring) | join(","))"' "$2"
}
plain_log() {
    jq -r '"\(.layer) \(.pos) \(.experts | map(tostring) | join(",")) \(.weights | map(tostring) | join(","))"' "$1"
}

# fam SRC PLAN-JSON N COUNTKEY
check_family() {
    local fam=$1 src=$2 pl=$3 n=$4 key=$5 d=$T/$1
    echo "$pl" >"$T/$fam.plan.json"
    # without a plan: the same tensors, byte for byte
    run qmoe-pack --no-progress "$src" "$d-all"
    expect "pack_${fam}_all" 0 "wrote $d-all" stdout
    run ckcmp "$src" "$d-all"
    expect "pack_${fam}_all_same_tensors" 0 "same:" stdout
    # with the plan, in several shards
    run qmoe-pack --no-progress --max-shard-size 200000 --keep-experts "$T/$fam.plan.json" "$src" "$d"
    expect "pack_${fam}_plan" 0
    check "pack_${fam}_shards_parse" stcheck "$d"/model-*.safetensors
    local ns
    ns=$(ls "$d"/model-*.safetensors | wc -l)
    check "pack_${fam}_shard_names" test -f "$d/model-00001-of-0000$ns.safetensors" -a "$ns" -gt 1
    check "pack_${fam}_format_pt" grep -q '"__metadata__":{"format":"pt"}' "$d/model-00001-of-0000$ns.safetensors"
    check "pack_${fam}_total_size" total_ok "$d"
    check "pack_${fam}_record_sha256" sha_ok "$d"
    same "pack_${fam}_config_count" "$(jq ".$key" "$d/config.json")" "$n"
    check "pack_${fam}_tokenizer" cmp "$src/tokenizer.json" "$d/tokenizer.json"
    same "pack_${fam}_original_ids" "$(jq -c '.plan.original_ids' "$d/qmoe-pack.json")" \
        "$(jq -c '.keep' "$T/$fam.plan.json")"
    check "pack_${fam}_no_tmp" no_tmp_files "$d"
    # the packed model is the original restricted to the plan
    run qmoe-run --token-ids "$IDS" -n 4 -j 2 --logits-out "$T/a.f32" --router-log "$T/a.jsonl" \
        --keep-experts "$T/$fam.plan.json" "$src"
    expect "pack_${fam}_run_keep_experts" 0
    local gen_a=$out
    run qmoe-run --token-ids "$IDS" -n 4 -j 2 --logits-out "$T/b.f32" --router-log "$T/b.jsonl" "$d"
    expect "pack_${fam}_run_packed" 0
    same "pack_${fam}_same_generation" "$out" "$gen_a"
    check "pack_${fam}_logits_bit_identical" cmp "$T/a.f32" "$T/b.f32"
    same "pack_${fam}_router_choices" "$(mapped_log "$T/$fam.plan.json" "$T/a.jsonl" | sort)" \
        "$(plain_log "$T/b.jsonl" | sort)"
    # DEST is a source for the other tools
    run qmoe-extract --no-progress "$d" "$d-out"
    expect "pack_${fam}_extract_dest" 0
    run qmoe-verify --source "$d" "$d-out"
    expect "pack_${fam}_verify_source_dest" 0
}

check_family qwen3moe "$FIX/qwen3moe-tiny/qwen3moe" \
    '{"keep":{"0":[0,2,4,6,7,9,11,15],"1":[1,2,3,5,8,10,12,14],"2":[0,1,2,3,4,5,6,7]}}' 8 num_experts
# Qwen3-Omni as it is (no --as): the thinker's text config counts change
check_family omni "$FIX/qwen3moe-tiny/omni" \
    '{"keep":{"0":[0,2,4,6,7,9,11,15],"1":[1,2,3,5,8,10,12,14],"2":[0,1,2,3,4,5,6,7]}}' 8 \
    thinker_config.text_config.num_experts
check_family mixtral "$FAM/mixtral-tiny/hf" \
    '{"keep":{"0":[1,3,4,6],"1":[0,2,5,7],"2":[0,1,6,7]}}' 4 num_local_experts
check_family olmoe "$FAM/olmoe-tiny/hf" \
    '{"keep":{"0":[0,3,5,8,12,15],"1":[1,2,3,4,9,10],"2":[2,4,6,8,10,14]}}' 6 num_experts
check_family qwen2moe "$FAM/qwen2moe-tiny/hf" \
    '{"keep":{"0":[0,3,5,8,9,11],"2":[1,2,4,6,7,10]}}' 6 num_experts
# DeepSeek-V3: 4 groups of 4, 2 kept of each, group by group; layer 3 is
# the MTP block (packed, not run)
check_family deepseekv3 "$FAM/deepseekv3-tiny/hf" \
    '{"keep":{"1":[0,3,5,6,8,11,13,15],"2":[1,2,4,7,9,10,12,14],"3":[0,1,4,5,8,9,12,13]}}' 8 n_routed_experts
d=$T/deepseekv3
run jq -c '[.weight_map | keys[] | select(test("e_score_correction_bias"))] | length' "$d/model.safetensors.index.json"
same pack_deepseek_bias_kept "$out" 3
same pack_deepseek_groups_kept "$(jq -c '[.n_group, .topk_group, .num_experts_per_tok]' "$d/config.json")" "[4,2,3]"

# a plan in another order: renumbered, logits within rounding, same choices
echo '{"keep":{"0":[9,2,4,11,0,15,7,6],"1":[14,12,10,8,5,3,2,1],"2":[7,6,5,4,3,2,1,0]}}' >"$T/shuf.json"
run qmoe-pack --no-progress --keep-experts "$T/shuf.json" "$FIX/qwen3moe-tiny/qwen3moe" "$T/shuf"
expect pack_shuffled_plan 0
same pack_shuffled_renumbered "$(jq -c '.plan.original_ids["1"]' "$T/shuf/qmoe-pack.json")" "[14,12,10,8,5,3,2,1]"
run qmoe-run --token-ids "$IDS" -n 0 --logits-out "$T/a.f32" --router-log "$T/a.jsonl" \
    --keep-experts "$T/shuf.json" "$FIX/qwen3moe-tiny/qwen3moe"
expect pack_shuffled_run_keep 0
run qmoe-run --token-ids "$IDS" -n 0 --logits-out "$T/b.f32" --router-log "$T/b.jsonl" "$T/shuf"
expect pack_shuffled_run_packed 0
sc=$(score "$T/b.f32" "$T/a.f32")
within "$sc" 1e-5 && ok pack_shuffled_logits || fail pack_shuffled_logits "score $sc"
same pack_shuffled_router_choices \
    "$(mapped_log "$T/shuf.json" "$T/a.jsonl" | cut -d' ' -f1-3 | sort)" \
    "$(plain_log "$T/b.jsonl" | cut -d' ' -f1-3 | sort)"

# stacked experts: sliced along the expert dimension
run /usr/bin/python3 "$QMOE_ROOT/tests/tools/fuse_experts.py" "$FIX/qwen3moe-tiny/qwen3moe" "$T/fused"
expect pack_fused_source 0
run qmoe-pack --no-progress --keep-experts "$T/qwen3moe.plan.json" "$T/fused" "$T/fused-8"
expect pack_fused_plan 0
same pack_fused_shape "$(jq -r '.weight_map | keys[] | select(test("layers.1.mlp.experts.gate_up"))' \
    "$T/fused-8/model.safetensors.index.json")" model.layers.1.mlp.experts.gate_up_proj
run qmoe-run --token-ids "$IDS" -n 0 --logits-out "$T/f.f32" "$T/fused-8"
expect pack_fused_run 0
run qmoe-run --token-ids "$IDS" -n 0 --logits-out "$T/u.f32" "$T/qwen3moe"
expect pack_unfused_run 0
check pack_fused_logits_equal_unfused cmp "$T/f.f32" "$T/u.f32"
run qmoe-extract --no-progress "$T/fused" "$T/fused-out"
expect pack_fused_extraction 0
run qmoe-pack --keep-experts "$T/qwen3moe.plan.json" "$T/fused-out" "$T/fused-out-8"
expect pack_fused_extraction_refused 2 "pack its source checkpoint instead"
check pack_fused_extraction_nothing_written test ! -e "$T/fused-out-8"

# Qwen3-Omni's thinker as Qwen3-MoE
OMNI=$FIX/qwen3moe-tiny/omni
run qmoe-pack --no-progress --as qwen3_moe "$OMNI" "$T/thinker"
expect pack_as_qwen3 0
same pack_as_qwen3_config "$(jq -c '[.model_type, .architectures, .num_experts, .rope_scaling, has("thinker_config")]' \
    "$T/thinker/config.json")" '["qwen3_moe",["Qwen3MoeForCausalLM"],16,null,false]'
same pack_as_qwen3_names "$(jq '[.weight_map | keys[] | select(startswith("model.") or . == "lm_head.weight" | not)] | length' \
    "$T/thinker/model.safetensors.index.json")" 0 "names outside model.* and lm_head.weight"
n_src=$(jq '[.weight_map | keys[] | select(startswith("thinker.model.") or . == "thinker.lm_head.weight")] | length' "$OMNI/model.safetensors.index.json")
same pack_as_qwen3_tensor_count "$(jq '.weight_map | length' "$T/thinker/model.safetensors.index.json")" "$n_src"
check pack_as_qwen3_same_bytes ckcmp "$FIX/qwen3moe-tiny/qwen3moe" "$T/thinker"
check pack_as_qwen3_generation_config cmp "$OMNI/generation_config.json" "$T/thinker/generation_config.json"
run qmoe-run --token-ids "$IDS" -n 0 --logits-out "$T/o.f32" "$OMNI"
expect pack_omni_run 0
run qmoe-run --token-ids "$IDS" -n 0 --logits-out "$T/t.f32" "$T/thinker"
expect pack_thinker_run 0
check pack_thinker_logits_bit_identical cmp "$T/o.f32" "$T/t.f32"
run qmoe-pack --no-progress --as qwen3_moe --keep-experts "$T/qwen3moe.plan.json" "$OMNI" "$T/thinker-8"
expect pack_as_qwen3_with_plan 0
same pack_as_qwen3_with_plan_count "$(jq -c '[.model_type, .num_experts]' "$T/thinker-8/config.json")" '["qwen3_moe",8]'
check pack_as_qwen3_with_plan_equals_pruned ckcmp "$T/qwen3moe" "$T/thinker-8"
# from an extraction of the Omni checkpoint (other/ left out): the same files
run qmoe-extract --no-progress "$OMNI" "$T/omni-x"
expect pack_omni_extract 0
run qmoe-pack --no-progress --as qwen3_moe --keep-experts "$T/qwen3moe.plan.json" "$T/omni-x" "$T/thinker-8-out"
expect pack_as_qwen3_from_out 0
check pack_as_qwen3_from_out_same_tensors ckcmp "$T/thinker-8" "$T/thinker-8-out"
check pack_as_qwen3_from_out_same_config cmp "$T/thinker-8/config.json" "$T/thinker-8-out/config.json"
run qmoe-pack --as qwen3_moe "$FAM/mixtral-tiny/hf" "$T/nope"
expect pack_as_qwen3_other_family 2 "only a Qwen3-Omni"
run qmoe-pack --as llama "$OMNI" "$T/nope"
expect pack_as_unknown 2 "--as 'llama'"

# the Omni-shaped sample of qmoe-mksample, dry run and real
run qmoe-mksample --layers 4 --experts 8 "$T/omni-sample"
expect pack_mksample_omni 0
run qmoe-pack --dry-run --json --as qwen3_moe "$T/omni-sample" "$T/dry"
expect pack_dry_run_json 0
check pack_dry_run_wrote_nothing test ! -e "$T/dry"
same pack_dry_run_lists "$(printf %s "$out" | jq -r '[.state, .model_type, (.tensor_list | length > 0),
    (.tensor_list | map(select(.name | startswith("model.") or . == "lm_head.weight" | not)) | length)] | join(" ")')" \
    "planned qwen3_moe true 0"
run qmoe-pack --dry-run --as qwen3_moe "$T/omni-sample" "$T/dry"
expect pack_dry_run_text 0 "would write 1 shard" stdout
run qmoe-pack --no-progress --json --as qwen3_moe "$T/omni-sample" "$T/omni-thinker"
expect pack_mksample_as_qwen3 0 '"state":	"finished"' stdout
same pack_dry_run_matches_real "$(qmoe-pack --dry-run --json --as qwen3_moe "$T/omni-sample" "$T/x" | jq '.total_size')" \
    "$(jq '.total_size' "$T/omni-thinker/qmoe-pack.json")"

# refusals, before anything is written
QP=$FIX/qwen3moe-tiny/qwen3moe
bad_plan() { # NAME JSON MESSAGE [SRC]
    printf '%s' "$2" >"$T/bad.json"
    run qmoe-pack --keep-experts "$T/bad.json" "${4:-$QP}" "$T/bad-dest"
    expect "pack_refuses_$1" 2 "$3" && { [ -e "$T/bad-dest" ] && fail "pack_refuses_$1_wrote" || ok "pack_refuses_$1_wrote_nothing"; }
}
bad_plan unknown_layer '{"keep":{"0":[0,1,2,3],"7":[0,1,2,3]}}' "keep[\"7\"]: the model has 3 layers"
bad_plan duplicate '{"keep":{"0":[0,1,2,1],"1":[0,1,2,3],"2":[0,1,2,3]}}' "keep[\"0\"][3]: expert 1 is listed twice (also at [1])"
bad_plan out_of_range '{"keep":{"0":[0,1,2,16],"1":[0,1,2,3],"2":[0,1,2,3]}}' "keep[\"0\"][3]: 16 is not an expert id"
bad_plan too_many '{"keep":{"0":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,0]}}' "keeps 17 experts, the model has 16"
bad_plan not_integer '{"keep":{"0":[0,1.5]}}' "keep[\"0\"][1]: 1.5 is not an expert id"
bad_plan uneven '{"keep":{"0":[0,1,2,3],"1":[0,1,2,3,4],"2":[0,1,2,3]}}' "keep[\"1\"] keeps 5 experts but keep[\"0\"] keeps 4"
bad_plan missing_layer '{"keep":{"0":[0,1,2,3],"2":[0,1,2,3]}}' "MoE layer 1 is not in the plan"
bad_plan no_keep '{"experts":{}}' "no \"keep\" object"
bad_plan bad_key '{"keep":{"one":[0]}}' "keep key \"one\" is not a layer index"
bad_plan not_json '{"keep":' "bad.json"
bad_plan dense_layer '{"keep":{"0":[0,3,4,7,8,11,12,15],"1":[0,3,4,7,8,11,12,15]}}' \
    "keep[\"0\"]: layer 0 is dense" "$FAM/deepseekv3-tiny/hf"
bad_plan group_order '{"keep":{"1":[0,4,5,6,8,11,13,15],"2":[1,2,4,7,9,10,12,14],"3":[0,1,4,5,8,9,12,13]}}' \
    "keep[\"1\"][1]: expert 4 is in group 1" "$FAM/deepseekv3-tiny/hf"
bad_plan group_count '{"keep":{"1":[0,1,2,3],"2":[0,1,2,3],"3":[0,1,2,3]}}' \
    "routes within 4 groups" "$FAM/deepseekv3-tiny/hf"
mkdir -p "$T/full"; echo x >"$T/full/keep"
run qmoe-pack "$QP" "$T/full"
expect pack_refuses_non_empty_dest 2 "is not empty"
same pack_non_empty_dest_untouched "$(ls "$T/full")" keep
run qmoe-pack "$QP"
expect pack_usage 2 "expected SRC and DEST"
run qmoe-pack --max-shard-size 0 "$QP" "$T/x"
expect pack_bad_shard_size 2 "--max-shard-size '0'"
