# run_cache.sh - the expert cache: a cache smaller than all experts (down
# to a single expert) gives bit-identical logits, with the misses counted;
# a missing expert file is a clear error naming (layer, expert) and file.
. "$(dirname "$0")/lib.sh"
plan 17
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

# Expert mappings cover whole 2 MiB blocks of the file (a page cache of
# 2 MiB folios is then mapped a block per fault): under strace, every
# read-only shared mapping of a shard starts on a 2 MiB boundary and ends
# on one or at the end of the file, and the logits are those of
# --expert-io read. 16 experts of 3 x 128 x 1024 bf16 (768 KiB) in one
# 26 MB shard, so most start inside a block.
qmoe-mksample --layers 2 --experts 16 --hidden 128 --inter 1024 --vocab 512 --shards 1 \
    "$T/wide" >/dev/null 2>&1 && ok map_blocks_sample || fail map_blocks_sample
if ! command -v strace >/dev/null; then
    fail map_blocks "strace is not installed (tests need it: see .ci/run)"
    fail map_blocks_same
else
    size=$(stat -c %s "$T/wide/model.safetensors")
    strace -y -f -qq -e trace=mmap -o "$T/mmap" qmoe-run -n 2 --ignore-eos --batch 4 \
        --token-ids 1,2,3,4,5,6,7,8,9,10 --logits-out "$T/map.f32" "$T/wide" >/dev/null 2>&1
    # mmap(NULL, LEN, PROT_READ, MAP_SHARED, FD<PATH>, OFF) = ...; OFF in hex
    bad=$(awk -v size="$size" -v B=2097152 '
          function num(s,  i, n) {
              if (s !~ /^0x/) return s + 0
              for (i = 3; i <= length(s); i++) n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
              return n
          }
          /PROT_READ, MAP_SHARED, [0-9]+<[^>]*model.safetensors>/ {
            s = $0; sub(/.*mmap\(NULL, /, "", s); sub(/\).*/, "", s); split(s, a, ", ")
            len = a[1] + 0; off = num(a[5]); n++; if (off > 0) inner++
            if (off % B != 0 || ((off + len) % B != 0 && off + len != size)) print
          } END { if (n < 8 || inner < 4) print "only " n + 0 " mappings, " inner + 0 " inside" }' \
          "$T/mmap") || bad="awk failed: $bad"
    [ -z "$bad" ] && ok map_blocks || fail map_blocks "$bad"
    qmoe-run -n 2 --ignore-eos --batch 4 --expert-io read --token-ids 1,2,3,4,5,6,7,8,9,10 \
        --logits-out "$T/read.f32" "$T/wide" >/dev/null 2>&1
    cmp -s "$T/map.f32" "$T/read.f32" && [ -s "$T/map.f32" ] && ok map_blocks_same ||
        fail map_blocks_same
fi
