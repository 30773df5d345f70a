# run_samples.sh - on every sample layout the forward pass supports, and
# every weight dtype, logits from the extracted OUT and from the original
# checkpoint are bit-identical (same code, same bytes); batched prefill
# (micro-batches of 256 and of 3 tokens) gives the same logits, router log
# and continuation as feeding the prompt token by token (--batch 1). Every
# layout is supported (qwen3_moe_fused from its stacks in the source and
# from the per-expert slices of its extraction).
. "$(dirname "$0")/lib.sh"
plan 189

for layout in qwen3_omni_moe qwen3_moe qwen3_moe_fused mixtral qwen2_moe olmoe deepseek_v3; do
    for dtype in bf16 f16 f32; do
        n=${layout}_$dtype src=$T/src_$n dst=$T/out_$n
        run qmoe-mksample --layout "$layout" --dtype "$dtype" --layers 3 --experts 8 --topk 2 "$src"
        expect "samples_${n}_written" 0 || continue
        run qmoe-extract --no-progress "$src" "$dst"
        expect "samples_${n}_extracted" 0 || continue
        run qmoe-run --ignore-eos -n 6 --token-ids 5,17,200,3 --logits-out "$T/a.f32" "$src"
        expect "samples_${n}_run_source" 0 || continue
        a=$out
        run qmoe-run --ignore-eos -n 6 --cache-mb 0 --token-ids 5,17,200,3 --logits-out "$T/b.f32" "$dst"
        expect "samples_${n}_run_extracted" 0 || continue
        cmp -s "$T/a.f32" "$T/b.f32" && [ "$a" = "$out" ] && ok "samples_${n}_identical" ||
            fail "samples_${n}_identical" "$a vs $out"
        # logits are finite numbers
        if [ ! -s "$T/a.f32" ] || od -An -v -f "$T/a.f32" | grep -qi 'nan\|inf'; then
            fail "samples_${n}_finite" "$(stat -c %s "$T/a.f32" 2>&1) bytes of logits, or a NaN/Inf"
        else ok "samples_${n}_finite"; fi
    done
done

# batched prefill against token by token; hidden 40 and head_dim 10 leave
# tails after the 16-wide and 8-wide vector loops
ids=5,17,200,3,9,11,250,7,1,2,3,4,100,101
# (the fourth field: MoE layers of the 3; DeepSeek's first is dense; its
# 14-row kv_a_proj_with_mqa leaves a 2-row edge in the matrix products)
for spec in "qwen3_omni_moe bf16 64 3" "qwen3_omni_moe f16 64 3" "qwen3_omni_moe f32 64 3" \
            "qwen3_moe bf16 40 3" "qwen3_moe_fused f16 40 3" "mixtral bf16 40 3" "qwen2_moe f16 40 3" "olmoe bf16 40 3" \
            "deepseek_v3 bf16 40 2"; do
    set -- $spec
    n=batch_$1_$2_$3 src=$T/src_$n
    run qmoe-mksample --layout "$1" --dtype "$2" --hidden "$3" --head-dim 10 --layers 3 \
        --experts 8 --topk 2 "$src"
    expect "${n}_written" 0 || continue
    for b in 1 3 256; do
        run qmoe-run --ignore-eos -n 4 --batch $b --token-ids $ids --logits-out "$T/l$b.f32" \
            --router-log "$T/r$b.jsonl" "$src"
        expect "${n}_run_batch$b" 0 || continue 2
        eval "out$b=\$out"
    done
    [ "$(wc -l <"$T/r1.jsonl")" -eq $(($4 * (14 + 3))) ] && ok "${n}_router_lines" ||
        fail "${n}_router_lines" "$(wc -l <"$T/r1.jsonl") lines"
    for b in 3 256; do
        cmp -s "$T/l1.f32" "$T/l$b.f32" && cmp -s "$T/r1.jsonl" "$T/r$b.jsonl" &&
            eval "[ \"\$out1\" = \"\$out$b\" ]" && ok "${n}_batch${b}_identical" ||
            fail "${n}_batch${b}_identical" "logits, router log or continuation differ"
    done
done

