# mksample_like_fp8.sh - qmoe-mksample --like deepseek-v3 and
# qwen3-30b-a3b-fp8: sparse replicas of the FP8 releases. Every count here
# (tensors per dtype, scale grids, bytes, expert files) is computed in this
# script from the models' dimensions, not read from qmoe: the shard files'
# headers must hold exactly those tensors, and the dry-run extraction must
# plan exactly those experts and bytes.
. "$(dirname "$0")/lib.sh"
plan 20

# hdr DIR: every shard header's tensors as "name dtype d0,d1,.. nbytes"
hdr() {
    /usr/bin/python3 - "$1" <<'PYEOF'
import glob, json, struct, sys
size = {"F8_E4M3": 1, "BF16": 2, "F32": 4}
for f in sorted(glob.glob(sys.argv[1] + "/*.safetensors")):
    with open(f, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        h = json.loads(fh.read(n))
    h.pop("__metadata__", None)
    for k, v in h.items():
        s, e = v["data_offsets"]
        print(k, v["dtype"], ",".join(map(str, v["shape"])), e - s)
PYEOF
}
# bad_scales DTYPE HDR: the first FP8 weight of HDR ("name dtype shape bytes"
# lines) whose _scale_inv is not DTYPE of grid ceil(r/128) x ceil(c/128)
bad_scales() {
    awk -v want="$1" '{ dt[$1] = $2; sh[$1] = $3 }
        END { for (k in dt) if (dt[k] == "F8_E4M3") { split(sh[k], d, ",")
                  g = int((d[1] + 127) / 128) "," int((d[2] + 127) / 128); s = k "_scale_inv"
                  if (dt[s] != want || sh[s] != g) { print k ": " dt[s] " " sh[s] ", want " want " " g; exit } } }' "$2"
}

# ---- DeepSeek-V3: hidden 7168, 61 layers (0-2 dense, intermediate 18432),
# 256 experts of 2048 + 1 shared, MTP layer 61; q_lora 1536, kv_lora 512,
# 128 heads of 128 + 64 rope dims; vocab 129280; 128 x 128 F32 scales ----
D=$T/dsv3
run qmoe-mksample --like deepseek-v3 "$D"
expect dsv3_written 0 "deepseek-v3 replica, 91991 tensors in 163 shards" stdout || exit 0
n=$(ls "$D" | grep -c '^model-00[01][0-9][0-9]-of-000163\.safetensors$')
[ "$n" = 163 ] && [ -e "$D/model-00163-of-000163.safetensors" ] && ok dsv3_shard_names ||
    fail dsv3_shard_names "$n files named model-NNNNN-of-000163.safetensors"
hdr "$D" >"$T/dsv3.hdr"
# expected figures: fp8 W: weight r*c bytes + its grid of 4-byte scales
read -r want_tensors want_f8 want_f32 want_bf16 want_bytes want_expert_bytes < <(awk 'BEGIN {
    H = 7168; V = 129280
    split("1536,7168 24576,1536 576,7168 32768,512 7168,16384", att, " ")
    for (i in att) { split(att[i], d, ","); ab += fp8(d[1], d[2]) }
    ab += (1536 + 512) * 2                       # q_a / kv_a layernorms
    dense = ab + 2 * fp8(18432, H) + fp8(H, 18432) + 2 * H * 2
    expert = 2 * fp8(2048, H) + fp8(H, 2048)
    moe = ab + 256 * expert + 256 * H * 2 + 256 * 4 + expert + 2 * H * 2
    mtp = moe + V * H * 2 + 2 * H * 2 + H * 2 * H * 2 + H * 2 + V * H * 2
    bytes = V * H * 2 + 3 * dense + 58 * moe + H * 2 + V * H * 2 + mtp
    f8 = 3 * (5 + 3) + 59 * (5 + 256 * 3 + 3)    # FP8 weights
    bf16 = 3 + 3 * 4 + 59 * 5 + 6                # embeddings/heads, norms, routers, MTP extras
    printf "%d %d %d %d %.0f %.0f\n", 2 * f8 + bf16 + 59, f8, f8 + 59, bf16, bytes, 59 * 256 * expert }
    function fp8(r, c) { return r * c + int((r + 127) / 128) * int((c + 127) / 128) * 4 }')
[ "$(wc -l <"$T/dsv3.hdr")" = "$want_tensors" ] && ok dsv3_tensors ||
    fail dsv3_tensors "$(wc -l <"$T/dsv3.hdr") in the headers, want $want_tensors"
got=$(awk '{ n[$2]++ } END { printf "%d %d %d", n["F8_E4M3"], n["F32"], n["BF16"] }' "$T/dsv3.hdr")
same dsv3_dtypes "$got" "$want_f8 $want_f32 $want_bf16" "F8 F32 BF16: $got, want $want_f8 $want_f32 $want_bf16"
# every FP8 weight has its F32 scale of grid ceil(r/128) x ceil(c/128)
bad=$(bad_scales F32 "$T/dsv3.hdr")
[ -z "$bad" ] && ok dsv3_scales || fail dsv3_scales "$bad"
grep -q '^model.layers.61.self_attn.kv_a_proj_with_mqa.weight_scale_inv F32 5,56 1120$' "$T/dsv3.hdr" &&
    grep -q '^model.layers.61.eh_proj.weight BF16 7168,14336 ' "$T/dsv3.hdr" &&
    grep -q '^model.layers.60.mlp.gate.e_score_correction_bias F32 256 1024$' "$T/dsv3.hdr" &&
    grep -q '^model.layers.2.mlp.down_proj.weight F8_E4M3 7168,18432 ' "$T/dsv3.hdr" &&
    ok dsv3_named_tensors || fail dsv3_named_tensors "kv_a scale, eh_proj, bias or dense down_proj not as released"
got=$(awk '{ s += $4 } END { printf "%.0f", s }' "$T/dsv3.hdr")
same dsv3_bytes "$got" "$want_bytes" "headers $got bytes, want $want_bytes"
check dsv3_index jq -e --argjson n "$want_tensors" --argjson b "$want_bytes" \
    '(.weight_map | length) == $n and .metadata.total_size == $b and
     .weight_map["model.layers.61.shared_head.head.weight"] == "model-00163-of-000163.safetensors"' \
    "$D/model.safetensors.index.json"
check dsv3_config jq -e '.quantization_config == {"activation_scheme": "dynamic", "fmt": "e4m3",
        "quant_method": "fp8", "weight_block_size": [128, 128]} and
    .rope_scaling.type == "yarn" and .rope_scaling.factor == 40 and
    .num_nextn_predict_layers == 1 and .n_routed_experts == 256' "$D/config.json"
run qmoe-extract --dry-run --json "$D" "$T/dsv3.out"
expect dsv3_dry_run 0 || exit 0
check dsv3_dry_figures jq -e --argjson b "$want_bytes" --argjson eb "$want_expert_bytes" \
    '.expert_files == 59 * 256 and .mtp_expert_files == 256 and .layer_files == 62 and
     .moe_layers == 58 and .bytes == $b and .expert_bytes == $eb' "$T/.out"
[ ! -e "$T/dsv3.out" ] && ok dsv3_dry_writes_nothing || fail dsv3_dry_writes_nothing

# ---- Qwen3-30B-A3B-FP8: hidden 2048, 48 layers x 128 experts of 768,
# 32 q / 4 kv heads of 128, vocab 151936; bf16 scales; modules_to_not_convert
# lm_head and the 48 routers ----
Q=$T/qwen3
run qmoe-mksample --like qwen3-30b-a3b-fp8 "$Q"
expect qwen3_written 0 "qwen3-30b-a3b-fp8 replica, 37491 tensors in 8 shards" stdout || exit 0
hdr "$Q" >"$T/qwen3.hdr"
read -r want_tensors want_f8 want_bf16 want_bytes want_expert_bytes < <(awk 'BEGIN {
    H = 2048; V = 151936
    att = fp8(4096, H) + 2 * fp8(512, H) + fp8(H, 4096) + 2 * 128 * 2
    expert = 2 * fp8(768, H) + fp8(H, 768)
    layer = att + 128 * H * 2 + 128 * expert + 2 * H * 2
    f8 = 48 * (4 + 128 * 3)
    printf "%d %d %d %.0f %.0f\n", 2 * f8 + 3 + 48 * 5, f8, f8 + 3 + 48 * 5,
        2 * V * H * 2 + H * 2 + 48 * layer, 48 * 128 * expert }
    function fp8(r, c) { return r * c + int((r + 127) / 128) * int((c + 127) / 128) * 2 }')
[ "$(wc -l <"$T/qwen3.hdr")" = "$want_tensors" ] && ok qwen3_tensors ||
    fail qwen3_tensors "$(wc -l <"$T/qwen3.hdr") in the headers, want $want_tensors"
got=$(awk '{ n[$2]++ } END { printf "%d %d %d", n["F8_E4M3"], n["BF16"], n["F32"] }' "$T/qwen3.hdr")
same qwen3_dtypes "$got" "$want_f8 $want_bf16 0" "F8 BF16 F32: $got, want $want_f8 $want_bf16 0"
bad=$(bad_scales BF16 "$T/qwen3.hdr")
[ -z "$bad" ] && ok qwen3_scales || fail qwen3_scales "$bad"
got=$(awk '{ s += $4 } END { printf "%.0f", s }' "$T/qwen3.hdr")
same qwen3_bytes "$got" "$want_bytes" "headers $got bytes, want $want_bytes"
check qwen3_config jq -e '.quantization_config.quant_method == "fp8" and
    .quantization_config.weight_block_size == [128, 128] and
    .quantization_config.modules_to_not_convert == (["lm_head"] + [range(48) | "model.layers.\(.).mlp.gate"])' \
    "$Q/config.json"
run qmoe-extract --dry-run --json "$Q" "$T/qwen3.out"
expect qwen3_dry_run 0 || exit 0
check qwen3_dry_figures jq -e --argjson b "$want_bytes" --argjson eb "$want_expert_bytes" \
    '.expert_files == 48 * 128 and .layer_files == 48 and .bytes == $b and .expert_bytes == $eb' "$T/.out"
