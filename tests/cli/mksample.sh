#!/usr/bin/env bash
# qmoe-mksample: options, errors, files written, determinism.
# (tests/unit/test_samples.c reads the samples back through libqmoe.)
. "$(dirname "$0")/lib.sh"
plan 45
# jq reads the JSON files (lib.sh fails the script without it)

run qmoe-mksample --help
expect help 0 "--layers" stdout
run qmoe-mksample --version
expect version 0 "qmoe-mksample" stdout

run qmoe-mksample --list
expect list 0 "qwen3_omni_moe" stdout
n=0
for l in qwen3_omni_moe qwen3_moe qwen3_moe_fused mixtral qwen2_moe olmoe deepseek_v3 glm4_moe; do
    grep -q "^$l " "$T/.out" && n=$((n + 1))
done
if [ "$n" = 8 ]; then ok list-all; else fail list-all "$out"; fi

# ---- bad options: exit 2, a message naming the problem ----
run qmoe-mksample --layout llama "$T/x"
expect unknown-layout 2 "unknown layout 'llama' (known layouts: qwen3_omni_moe, qwen3_moe,"
run qmoe-mksample --layout glm4_moe --head-dim 6 "$T/x"
expect glm4moe-head-dim 2 "glm4_moe rotates half of each head (partial_rotary_factor 0.5): --head-dim must be a multiple of 4, not 6"
run qmoe-mksample --layers 0 "$T/x"
expect zero-layers 2 "--layers must be between 1 and"
run qmoe-mksample --experts 8 --topk 9 "$T/x"
expect topk-over-experts 2 "--topk must be between 1 and 8, not 9"
run qmoe-mksample --heads 4 --kv-heads 3 "$T/x"
expect kv-heads 2 "not a multiple of --kv-heads"
run qmoe-mksample --shards 2 --shard-mb 5 "$T/x"
expect shards-and-mb 2 "exclude each other"
run qmoe-mksample --dtype f8 "$T/x"
expect bad-dtype 2 "--dtype must be bf16, f16 or f32, not 'f8'"
run qmoe-mksample --seed -3 "$T/x"
expect bad-seed 2 "--seed wants a non-negative integer"
run qmoe-mksample --vocab 100 "$T/x"
expect small-vocab 2 "--vocab must be between 266 and"
run qmoe-mksample --bogus "$T/x"
expect unknown-option 2 "Try 'qmoe-mksample --help' for more information."
run qmoe-mksample
expect missing-out 2 "missing OUT directory"
if [ ! -e "$T/x" ]; then ok nothing-written-on-error; else fail nothing-written-on-error; fi

# ---- the default sample ----
run qmoe-mksample "$T/a"
expect default 0 "qwen3_omni_moe, 4 layers x 8 experts" stdout
files=$(cd "$T/a" && ls | tr '\n' ' ')
want="config.json generation_config.json model-00001-of-00003.safetensors model-00002-of-00003.safetensors model-00003-of-00003.safetensors model.safetensors.index.json tokenizer.json tokenizer_config.json "
if [ "$files" = "$want" ]; then ok default-files; else fail default-files "$files"; fi
check no-temporaries no_tmp_files "$T/a"
check config-omni jq -e '.model_type == "qwen3_omni_moe" and
    .thinker_config.text_config.num_experts == 8 and
    .thinker_config.text_config.num_hidden_layers == 4 and
    .thinker_config.text_config.moe_intermediate_size == 32 and
    (.thinker_config | has("audio_config") and has("vision_config")) and
    (has("talker_config") and has("code2wav_config"))' "$T/a/config.json"
# index total_size = sum of the tensors' bytes in the shard headers
sum=0
for f in "$T"/a/model-*.safetensors; do
    hl=$(od -An -tu8 -N8 "$f" | tr -d ' ')
    s=$(dd if="$f" bs=1 skip=8 count="$hl" 2>/dev/null |
        jq '[to_entries[] | select(.key != "__metadata__") | .value.data_offsets[1] - .value.data_offsets[0]] | add')
    sum=$((sum + s))
done
total=$(jq .metadata.total_size "$T/a/model.safetensors.index.json")
if [ "$sum" = "$total" ] && [ "$sum" -gt 0 ]; then ok total-size; else fail total-size "$sum vs $total"; fi
# an expert whose projections are in two different shards
split=$(jq -r '.weight_map | to_entries[] | select(.key | test("^thinker\\.model\\.layers\\.[0-9]+\\.mlp\\.experts\\.[0-9]+\\."))
    | "\(.key | sub("\\.[a-z_]+\\.weight$"; "")) \(.value)"' "$T/a/model.safetensors.index.json" |
    sort -u | awk '{n[$1]++} END {for (e in n) if (n[e] > 1) c++; print c + 0}')
if [ "$split" -ge 1 ]; then ok expert-straddles-shards; else fail expert-straddles-shards "$split"; fi

# ---- determinism ----
run qmoe-mksample "$T/b"
expect same-seed-again 0
same same-seed-same-bytes "$(cd "$T/a" && sha256sum * )" "$(cd "$T/b" && sha256sum *)"
run qmoe-mksample --seed 2 "$T/c"
expect other-seed 0
d=0
for f in model-00001-of-00003.safetensors model-00002-of-00003.safetensors model-00003-of-00003.safetensors; do
    cmp -s "$T/a/$f" "$T/c/$f" || d=$((d + 1))
done
if [ "$d" = 3 ] && cmp -s "$T/a/config.json" "$T/c/config.json"; then
    ok other-seed-other-values
else
    fail other-seed-other-values "$d shards differ"
fi

# ---- OUT not empty ----
run qmoe-mksample --layers 2 "$T/a"
expect refuse-non-empty 2 "exists and is not empty (use --force"
run qmoe-mksample --layers 2 --shards 2 --force "$T/a"
expect force 0 "2 layers x 8 experts" stdout
files=$(cd "$T/a" && ls model* | tr '\n' ' ')
if [ "$files" = "model-00001-of-00002.safetensors model-00002-of-00002.safetensors model.safetensors.index.json " ]; then
    ok force-removes-stale-shards
else
    fail force-removes-stale-shards "$files"
fi
: >"$T/file"
run qmoe-mksample "$T/file"
expect out-is-file 2 "exists and is not a directory"

# ---- one shard, json summary ----
run qmoe-mksample --layout olmoe --shards 1 --json "$T/one"
expect one-shard 0 '"shards":1' stdout
if [ -f "$T/one/model.safetensors" ] && [ ! -e "$T/one/model.safetensors.index.json" ]; then
    ok one-shard-file
else
    fail one-shard-file "$(ls "$T/one")"
fi
check json-summary jq -e '.layout == "olmoe" and .layers == 4 and .experts == 8 and .tensor_bytes > 0' "$T/.out"

# ---- --like: replicas of real checkpoints (realomni.sh extracts one) ----
run qmoe-mksample --like llama-7b "$T/l"
expect like-unknown 2 "unknown --like 'llama-7b' (known: qwen3-omni-30b-a3b-instruct, qwen3-30b-a3b, qwen3-30b-a3b-fp8, deepseek-v3)"
run qmoe-mksample --fill-routers "$T/l"
expect like-fill-without-like 2 "go with --like"
run qmoe-mksample --like qwen3-30b-a3b --hf-cache "$T/l"
expect like-hf-cache-unknown-revision 2 "--hf-cache needs the release's revision and blob ids, which the qwen3-30b-a3b preset does not know"
run qmoe-mksample --like qwen3-30b-a3b --fill-layers 48 "$T/l2"
expect like-fill-layer-out-of-range 2 "--fill-layers"
run qmoe-mksample --like qwen3-30b-a3b --tokenizer "$T/nowhere" "$T/l3"
expect like-tokenizer-missing 2 "$T/nowhere/tokenizer.json"
# the text model: 18,867 tensors in 16 shards, 61,064,245,248 tensor bytes;
# routers and norms filled: 48 x (128 x 2048 + 2 x 2048 + 2 x 128) x 2 bytes
run qmoe-mksample --like qwen3-30b-a3b --fill-routers --json "$T/q3"
expect like-qwen3 0 '"tensors":18867,"shards":16,' stdout
check like-qwen3-filled jq -e '.filled_bytes == 25583616 and .tokenizer == false' "$T/.out"
check like-qwen3-index jq -e '.metadata.total_size == 61064245248 and (.weight_map | length) == 18867 and
    .weight_map["model.layers.47.mlp.experts.127.down_proj.weight"] != null and
    .weight_map["lm_head.weight"] == "model-00016-of-00016.safetensors"' "$T/q3/model.safetensors.index.json"
check like-qwen3-config jq -e '.model_type == "qwen3_moe" and .num_experts == 128 and .vocab_size == 151936 and
    .num_key_value_heads == 4 and .head_dim == 128 and .moe_intermediate_size == 768' "$T/q3/config.json"
run qmoe-extract --dry-run --json "$T/q3" "$T/q3out"
expect like-qwen3-dry-run 0 '"layout":"qwen3_moe","num_layers":48,"moe_layers":48,"num_experts":128,"layers":"0-47","experts":"0-127","expert_files":6144,"layer_files":48,"globals_files":1,' stdout
# the patterns are deterministic and only where asked
qmoe-mksample --like qwen3-30b-a3b --fill-routers "$T/q3b" >/dev/null 2>&1
same=1
for f in "$T"/q3/model-000{01,08,16}-of-00016.safetensors; do cmp -s "$f" "$T/q3b/${f##*/}" || same=0; done
[ "$same" = 1 ] && ok like-deterministic || fail like-deterministic
used=$(du -sk "$T/q3" | cut -f1)
[ "$used" -gt 20000 ] && [ "$used" -lt 200000 ] && ok like-sparse || fail like-sparse "$used KiB on disk"
rm -rf "$T/q3" "$T/q3b"
