# mksample_fp8.sh - qmoe-mksample --fp8 and --rope yarn: the samples have
# the FP8 releases' layout (F8_E4M3 linear weights, each with a
# weight_scale_inv of its block grid in F32 or BF16; embeddings, norms,
# routers and lm_head left in --dtype; quantization_config and rope_scaling
# as DeepSeek-V3 and Qwen3 write them), and every tool runs on them:
# extract, verify (the FP8 check counts the weights), run (the extraction
# gives the checkpoint's logits bit for bit; YaRN is read), the coherence
# gate with --source. A scale of the wrong shape is refused by verify and
# run, naming it. The expected tensor counts and grids are computed here
# from the sizes, not read from qmoe.
. "$(dirname "$0")/lib.sh"
plan 62
TOOLS=$QMOE_BUILD/tests/tools

# ---- option errors ----
run qmoe-mksample --layout qwen3_moe_fused --fp8 "$T/x"
expect fp8_fused_refused 2 "--fp8 is for layouts with one tensor per expert projection"
run qmoe-mksample --layout qwen3_moe --fp8 --fp8-block 0 "$T/x"
expect fp8_block_zero 2 "--fp8-block wants N or ROWSxCOLS in 1..65536, not '0'"
run qmoe-mksample --layout qwen3_moe --fp8 --fp8-block 16x "$T/x"
expect fp8_block_bad 2 "--fp8-block wants N or ROWSxCOLS in 1..65536, not '16x'"
run qmoe-mksample --layout qwen3_moe --fp8 --fp8-scale f16 "$T/x"
expect fp8_scale_bad 2 "--fp8-scale must be f32 or bf16, not 'f16'"
run qmoe-mksample --layout qwen3_moe --fp8-block 16 "$T/x"
expect fp8_block_alone 2 "--fp8-block and --fp8-scale go with --fp8"
run qmoe-mksample --layout qwen3_moe --rope ntk "$T/x"
expect rope_bad 2 "--rope must be default or yarn, not 'ntk'"
run qmoe-mksample --rope yarn "$T/x"
expect rope_yarn_omni 2 "qwen3_omni_moe uses M-RoPE"
run qmoe-mksample --like qwen3-30b-a3b --fp8 "$T/x"
expect fp8_like 2 "go with a sized sample"
if [ ! -e "$T/x" ]; then ok nothing_written_on_error; else fail nothing_written_on_error; fi

# headers DIR BLOCK_ROWS BLOCK_COLS SCALE_DTYPE DTYPE: prints "ok" when every
# tensor is as an FP8 release has it, or the first problem; then the count
# of F8_E4M3 weights.
headers() {
    /usr/bin/python3 - "$@" <<'PYEOF'
import glob, json, math, struct, sys
d, br, bc, sdt, dt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
h = {}
for f in glob.glob(f"{d}/*.safetensors"):
    b = open(f, "rb").read(1 << 20)
    n = struct.unpack("<Q", b[:8])[0]
    j = json.loads(b[8:8 + n]); j.pop("__metadata__", None)
    h.update(j)
probs, n8 = [], 0
kept = ("embed_tokens", "lm_head", ".gate.weight", "norm")
for k, v in sorted(h.items()):
    if k.endswith("_scale_inv"):
        w = h.get(k[:-len("_scale_inv")])
        if not w or w["dtype"] != "F8_E4M3":
            probs.append(f"{k} without its F8 weight")
        continue
    if k.endswith("e_score_correction_bias"):
        if v["dtype"] != "F32": probs.append(f"{k} is {v['dtype']}")
        continue
    quant = len(v["shape"]) == 2 and not any(s in k for s in kept)
    if not quant:
        if v["dtype"] != dt: probs.append(f"{k} is {v['dtype']}, not {dt}")
        continue
    s = h.get(k + "_scale_inv")
    r, c = v["shape"]
    want = [math.ceil(r / br), math.ceil(c / bc)]
    if v["dtype"] != "F8_E4M3": probs.append(f"{k} is {v['dtype']}")
    elif not s: probs.append(f"{k} has no scale")
    elif s["shape"] != want or s["dtype"] != sdt:
        probs.append(f"{k}_scale_inv is {s['dtype']} {s['shape']}, want {sdt} {want}")
    else:
        n8 += 1
print(probs[0] if probs else "ok")
print(n8)
PYEOF
}

# sample NAME N_FP8 BR BC SCALE_DTYPE DTYPE MKSAMPLE-OPTIONS...: writes the
# sample, checks its headers, extracts, verifies, runs both, gates.
sample() {
    local name=$1 n8=$2 br=$3 bc=$4 sdt=$5 dt=$6 S=$T/$1
    shift 6
    run qmoe-mksample "$@" "$S"
    expect "${name}_written" 0 || return
    local hd
    hd=$(headers "$S" "$br" "$bc" "$sdt" "$dt" | tr '\n' ' ')
    same "${name}_headers" "$hd" "ok $n8 " "$hd"
    run qmoe-extract --no-progress "$S" "$S.out"
    expect "${name}_extract" 0
    run qmoe-verify "$S.out"
    expect "${name}_verify" 0 "note: fp8: $n8 F8_E4M3 weights checked against their weight_scale_inv (${br}x${bc} blocks)" stdout
    # the extraction's logits are the checkpoint's, bit for bit
    run qmoe-run --ignore-eos -n 6 --token-ids 5,17,42,99,7 --logits-out "$T/hf.f32" "$S"
    expect "${name}_run_hf" 0 || return
    local a=$out
    run qmoe-run --ignore-eos -n 6 --token-ids 5,17,42,99,7 --logits-out "$T/out.f32" "$S.out"
    expect "${name}_run_out" 0
    same "${name}_tokens_equal" "$a" "$out" "checkpoint $a, extraction $out"
    check "${name}_logits_equal" cmp "$T/hf.f32" "$T/out.f32"
    # random values fail the perplexity bound (exit 1), but the pass runs
    # and the source comparison holds
    run qmoe-verify -j 1 --coherence --source "$S" "$S.out"
    expect "${name}_gate" 1 "(a) source: logits of 4 prompts bit-identical to the source  ok" stdout
}

# DeepSeek-V3: layer 0 dense (q_a, q_b, kv_a, kv_b, o + 3 MLP = 8), layers
# 1-2 with 8 experts (5 + 3 x 8 + 3 shared = 32): 8 + 2 x 32 = 72
sample dsv3 72 16 16 F32 BF16 --layout deepseek_v3 --layers 3 --experts 8 --fp8 \
    --fp8-block 16 --rope yarn
check dsv3_config jq -e '.quantization_config == {"activation_scheme": "dynamic",
        "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [16, 16]} and
    .rope_scaling == {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1,
        "mscale_all_dim": 1, "original_max_position_embeddings": 4096, "type": "yarn"} and
    .max_position_embeddings == 163840' "$T/dsv3/config.json"
# Qwen3-MoE, bf16 scales in 16 x 32 blocks: 4 layers x (4 attention + 3 x 8)
sample qwen3 112 16 32 BF16 BF16 --layout qwen3_moe --fp8 --fp8-block 16x32 --rope yarn
check qwen3_config jq -e '.quantization_config == {"activation_scheme": "dynamic",
        "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [16, 32],
        "modules_to_not_convert": ["lm_head", "model.layers.0.mlp.gate",
            "model.layers.1.mlp.gate", "model.layers.2.mlp.gate", "model.layers.3.mlp.gate"]}
    and .rope_scaling == {"rope_type": "yarn", "factor": 4,
        "original_max_position_embeddings": 32768}' "$T/qwen3/config.json"
# a larger one with the default 128 x 128 blocks, partial at the edges
# (hidden 320, inter 192, 16 experts), f32 scales, f16 elsewhere:
# 2 layers x (4 + 3 x 16)
sample qwen3big 104 128 128 F32 F16 --layout qwen3_moe --layers 2 --experts 16 \
    --hidden 320 --inter 192 --heads 4 --kv-heads 2 --fp8 --fp8-scale f32 --dtype f16
# Mixtral's w1/w2/w3 and block_sparse_moe.gate: 2 layers x (4 + 3 x 4)
sample mixtral 32 8 8 BF16 BF16 --layout mixtral --layers 2 --experts 4 --fp8 --fp8-block 8
check mixtral_not_convert jq -e '.quantization_config.modules_to_not_convert ==
    ["lm_head", "model.layers.0.block_sparse_moe.gate", "model.layers.1.block_sparse_moe.gate"]' \
    "$T/mixtral/config.json"

# same seed, same bytes, whatever the sharding
run qmoe-mksample --layout qwen3_moe --fp8 --fp8-block 16x32 --rope yarn --shards 1 "$T/q1"
expect qwen3_one_shard 0
run qmoe-run --ignore-eos -n 6 --token-ids 5,17,42,99,7 --logits-out "$T/q1.f32" "$T/q1"
expect qwen3_one_shard_run 0
run qmoe-run --ignore-eos -n 6 --token-ids 5,17,42,99,7 --logits-out "$T/q3.f32" "$T/qwen3"
expect qwen3_three_shards_run 0
check qwen3_sharding_same_logits cmp "$T/q1.f32" "$T/q3.f32"

# the scales matter and YaRN is read: one change each moves the logits
ctl() { # NAME DIR JQ
    rm -rf "$T/ctl"; cp -r "$2" "$T/ctl"; chmod -R u+w "$T/ctl"
    jq "$3" "$2/config.json" >"$T/ctl/config.json"
    run qmoe-run -n 0 --token-ids 5,17,42,99,7 --logits-out "$T/ctl.f32" "$T/ctl"
    expect "$1_run" 0 || return
    run qmoe-run -n 0 --token-ids 5,17,42,99,7 --logits-out "$T/ref.f32" "$2"
    if cmp -s "$T/ctl.f32" "$T/ref.f32"; then fail "$1" "logits unchanged"; else ok "$1"; fi
}
ctl dsv3_yarn_read "$T/dsv3" '.rope_scaling = null'
ctl qwen3_yarn_read "$T/qwen3" '.rope_scaling = null'
# a weight_block_size the scales do not fit is refused naming the tensor
rm -rf "$T/ctl"; cp -r "$T/qwen3" "$T/ctl"; chmod -R u+w "$T/ctl"
jq '.quantization_config.weight_block_size = [32, 16]' "$T/qwen3/config.json" >"$T/ctl/config.json"
run qmoe-run -n 0 --token-ids 5,17 "$T/ctl"
expect qwen3_block_mismatch_refused 2 "scale 'model.layers.0.self_attn.q_proj.weight_scale_inv' has shape [4, 2], but weight [64, 64] in 32x16 blocks needs [2, 4]"

# a damaged scale: an expert's scale reshaped in the extraction (manifest
# refreshed, so only the FP8 check can see it), then a dense weight's
W=model.layers.1.mlp.experts.3.up_proj.weight
rm -rf "$T/bad"; cp -r "$T/qwen3.out" "$T/bad"; chmod -R u+w "$T/bad"
f=experts/expert_03_layer_01.safetensors
"$TOOLS/stmutate" reshape "$T/bad/$f" "${W}_scale_inv" 4,1 &&
    "$TOOLS/stmutate" remanifest "$T/bad" "$f"
run qmoe-verify "$T/bad"
expect qwen3_damaged_expert_scale_verify 1 \
    "fp8: $f: tensor '$W': scale '${W}_scale_inv' has shape [4, 1], but weight [32, 64] in 16x32 blocks needs [2, 2]" stdout
run qmoe-run --mask-experts 3-4 --ignore-eos -n 2 --token-ids 5,17 "$T/bad"
expect qwen3_damaged_expert_scale_run 2 "scale '${W}_scale_inv' has shape [4, 1]"
W=model.layers.2.self_attn.kv_a_proj_with_mqa.weight
rm -rf "$T/bad"; cp -r "$T/dsv3" "$T/bad"; chmod -R u+w "$T/bad"
f=$(jq -r ".weight_map[\"${W}_scale_inv\"]" "$T/bad/model.safetensors.index.json")
"$TOOLS/stmutate" reshape "$T/bad/$f" "${W}_scale_inv" 4,2
run qmoe-run -n 0 --token-ids 5,17 "$T/bad"
expect dsv3_damaged_dense_scale_run 2 \
    "scale '${W}_scale_inv' has shape [4, 2], but weight [24, 64] in 16x16 blocks needs [2, 4]"
run qmoe-extract --no-progress "$T/bad" "$T/bad.out"
expect dsv3_damaged_extract 0
run qmoe-verify "$T/bad.out"
expect dsv3_damaged_dense_scale_verify 1 "scale '${W}_scale_inv' has shape [4, 2]" stdout
