# run_cache.sh - the expert cache: a cache smaller than all experts (down
# to a single expert) gives bit-identical logits, with the misses counted;
# a missing expert file is a clear error naming (layer, expert) and file.
. "$(dirname "$0")/lib.sh"
plan 14
G=$FIX/qwen3moe-tiny/golden
M=$FIX/qwen3moe-tiny/qwen3moe
SEQ3=$(grep -A1 '"seq3"' "$G/tokens.json" | sed -n 's/.*"ids": \[\(.*\)\].*/\1/p' | tr -d ' ')
jnum() { sed -n "s/.*\"$1\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" | head -1; }

run qmoe-run -n 0 --json --token-ids "$SEQ3" --logits-out "$T/big.f32" "$M"
expect cache_big 0 && big_misses=$(printf %s "$out" | jnum misses)
# 48 experts of 12 KiB = 576 KiB; --cache-mb 0 holds one expert at a time.
# A batched prompt asks for each expert of a layer once (then evicts it):
# as many misses as the big cache, none twice.
run qmoe-run -n 0 --json --cache-mb 0 --token-ids "$SEQ3" --logits-out "$T/onebatch.f32" "$M"
expect cache_one_batched 0 &&
    cmp -s "$T/big.f32" "$T/onebatch.f32" && ok cache_one_batched_same_logits ||
    fail cache_one_batched_same_logits
misses=$(printf %s "$out" | jnum misses) hits=$(printf %s "$out" | jnum hits)
[ "$misses" = "${big_misses:-x}" ] && [ "$hits" = 0 ] && ok cache_one_batched_counts ||
    fail cache_one_batched_counts "misses $misses hits $hits (big: $big_misses misses)"
# token by token
run qmoe-run -n 0 --json --cache-mb 0 --batch 1 --token-ids "$SEQ3" --logits-out "$T/one.f32" "$M"
expect cache_one 0 || exit 0
cmp -s "$T/big.f32" "$T/one.f32" && ok cache_one_same_logits || fail cache_one_same_logits
misses=$(printf %s "$out" | jnum misses) hits=$(printf %s "$out" | jnum hits)
res=$(printf %s "$out" | jnum resident) peak=$(printf %s "$out" | jnum cache_peak_bytes)
# 24 tokens x 3 layers x 4 experts asked; no two asks in a row are the same
[ "$misses" = 288 ] && [ "$hits" = 0 ] && [ "$res" = 1 ] && [ "$peak" = 12288 ] &&
    [ "${big_misses:-0}" -lt 288 ] && ok cache_one_counts ||
    fail cache_one_counts "misses $misses hits $hits resident $res peak $peak (big: $big_misses misses)"
[[ "$err" == *"288 misses"* ]] && ok cache_stats_on_stderr || fail cache_stats_on_stderr "$err"

# The read-ahead is a hint: without it (QMOE_PREFETCH=0) the same logits
# and misses, batched and token by token.
QMOE_PREFETCH=0 run qmoe-run -n 0 --json --cache-mb 0 --token-ids "$SEQ3" --logits-out "$T/nopf.f32" "$M"
expect cache_no_prefetch 0 && cmp -s "$T/big.f32" "$T/nopf.f32" &&
    [ "$(printf %s "$out" | jnum misses)" = "$big_misses" ] && ok cache_no_prefetch_same ||
    fail cache_no_prefetch_same
# timing.decode_step_s: one positive time per decode step
run qmoe-run -n 5 --ignore-eos --json --token-ids "$SEQ3" "$M"
steps=$(printf %s "$out" | jnum decode_steps)
times=$(printf %s "$out" | sed -n 's/.*"decode_step_s":[[:space:]]*\[\(.*\)\].*/\1/p' | tr ',' '\n' |
        awk '$1 > 0 { n++ } END { print n + 0 }')
[ "$steps" = 4 ] && [ "$times" = 4 ] && ok decode_step_times ||
    fail decode_step_times "decode_steps $steps, $times positive step times"

# An index that names an expert file which is not there.
mkdir -p "$T/missing"
cp "$M"/* "$T/missing/"
sed -i -E 's#("model\.layers\.0\.mlp\.experts\.3\.[a-z_]+\.weight": *)"[^"]*"#\1"experts/expert_003_layer_00.safetensors"#' \
    "$T/missing/model.safetensors.index.json"
run qmoe-run -n 0 --token-ids "$SEQ3" "$T/missing"
expect cache_missing_expert 2 "cannot load expert (layer 0, expert 3)" &&
    expect cache_missing_expert_file 2 "experts/expert_003_layer_00.safetensors"
# A prompt whose router never picks that expert does not need the file.
run qmoe-run -n 0 --token-ids "$SEQ3" --mask-experts 4-15 "$T/missing"
expect cache_missing_unused_expert 0
