#!/usr/bin/env bash
# qmoe-extract on a sample of every layout: layout detected, every tensor
# byte-identical and covered, expected file counts; the real 6144-file
# Omni shape; fused slicing; single-file sources; -j 1 == -j 2.
. "$(dirname "$0")/lib.sh"
plan 42
TOOLS="$QMOE_BUILD/tests/tools"

for lay in qwen3_omni_moe qwen3_moe qwen3_moe_fused mixtral qwen2_moe olmoe deepseek_v3 glm4_moe; do
    qmoe-mksample --layout "$lay" --layers 3 --experts 6 "$T/$lay-src" >/dev/null
    run qmoe-extract --json "$T/$lay-src" "$T/$lay"
    expect "$lay-extract" 0 "\"layout\":\"$lay\"" stdout
    run "$TOOLS/ckcmp" "$T/$lay-src" "$T/$lay"
    expect "$lay-identical-and-covered" 0 "same:" stdout
done
# expert files: 3 layers x 6, except deepseek_v3 and glm4_moe whose layer 0 is dense
for lay in qwen3_omni_moe qwen3_moe qwen3_moe_fused mixtral qwen2_moe olmoe; do
    n=$(ls "$T/$lay/experts" | wc -l)
    [ "$n" = 18 ] && ok "$lay-18-expert-files" || fail "$lay-18-expert-files" "$n"
done
n=$(ls "$T/deepseek_v3/experts" | wc -l)
[ "$n" = 12 ] && ok deepseek-dense-first-layer || fail deepseek-dense-first-layer "$n"
check deepseek-bias-stays-with-layer grep -q 'e_score_correction_bias": "layers/layer_01' "$T/deepseek_v3/model.safetensors.index.json"
n=$(ls "$T/glm4_moe/experts" | wc -l)
[ "$n" = 12 ] && ok glm4moe-dense-first-layer || fail glm4moe-dense-first-layer "$n"
check glm4moe-qkv-bias-in-layer grep -q '"model.layers.0.self_attn.v_proj.bias": "layers/layer_00' "$T/glm4_moe/model.safetensors.index.json"
check glm4moe-shared-experts-in-layer grep -q '"model.layers.2.mlp.shared_experts.down_proj.weight": "layers/layer_02' "$T/glm4_moe/model.safetensors.index.json"
check qwen2moe-shared-expert-in-layer grep -q 'mlp.shared_expert.gate_proj.weight": "layers/layer_00' "$T/qwen2_moe/model.safetensors.index.json"
check fused-slices-named grep -q '"model.layers.2.mlp.experts.5.gate_up_proj": "experts/expert_05_layer_02.safetensors"' "$T/qwen3_moe_fused/model.safetensors.index.json"
check fused-manifest-records-slice grep -q '"tensor":"model.layers.2.mlp.experts.gate_up_proj","offset":[0-9]*,"slice":5' "$T/qwen3_moe_fused/qmoe.json"
# Omni: talker experts, audio tower, vision, code2wav are not thinker experts
check omni-talker-in-other grep -q '"talker.model.layers.0.mlp.experts.0.gate_proj.weight": "other/talker.safetensors"' "$T/qwen3_omni_moe/model.safetensors.index.json"
ls "$T/qwen3_omni_moe/other" | tr '\n' ' ' >"$T/other.txt"
[ "$(cat "$T/other.txt")" = "code2wav.safetensors talker.safetensors thinker.audio_tower.safetensors thinker.visual.safetensors " ] \
    && ok omni-other-files || fail omni-other-files "$(cat "$T/other.txt")"

# the real shape: 48 layers x 128 experts = 6144 expert files
qmoe-mksample --layers 48 --experts 128 "$T/big-src" >/dev/null
run qmoe-extract --json "$T/big-src" "$T/big"
expect omni-6144-extract 0 '"experts_done":6144' stdout
n=$(ls "$T/big/experts" | wc -l)
[ "$n" = 6144 ] && ok omni-6144-files || fail omni-6144-files "$n"
check omni-6144-widths test -f "$T/big/experts/expert_127_layer_47.safetensors"
check omni-6144-manifest-count grep -q '"count":6144' "$T/big/qmoe.json"
run "$TOOLS/ckcmp" "$T/big-src" "$T/big"
expect omni-6144-identical 0 "same:" stdout

# -j 1 and -j 2 write the same bytes
qmoe-extract -j 1 "$T/qwen3_omni_moe-src" "$T/j1" >/dev/null
[ "$(cd "$T/j1" && sha256sum experts/* layers/* other/* globals.safetensors)" = \
  "$(cd "$T/qwen3_omni_moe" && sha256sum experts/* layers/* other/* globals.safetensors)" ] \
    && ok j1-equals-j2 || fail j1-equals-j2

# single-file sources: a directory with model.safetensors, and a bare file
qmoe-mksample --layout qwen3_moe --shards 1 --layers 2 --experts 4 "$T/single" >/dev/null
run qmoe-extract "$T/single" "$T/single-out"
expect single-file-dir 0
run "$TOOLS/ckcmp" "$T/single" "$T/single-out"
expect single-file-dir-identical 0 "same:" stdout
run qmoe-extract "$T/single/model.safetensors" "$T/bare-out"
expect bare-file 0
n=$(ls "$T/bare-out/experts" | wc -l)
[ "$n" = 8 ] && ok bare-file-experts-from-names || fail bare-file-experts-from-names "$n"
