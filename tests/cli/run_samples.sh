# run_samples.sh - on every sample layout the forward pass supports, and
# every weight dtype, logits from the extracted OUT and from the original
# checkpoint are bit-identical (same code, same bytes); the layouts it does
# not support are refused with a message naming the layout.
. "$(dirname "$0")/lib.sh"
plan 37

for layout in qwen3_omni_moe qwen3_moe; do
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

run qmoe-mksample --layout mixtral --experts 4 "$T/mx"
run qmoe-run --token-ids 1 "$T/mx"
expect samples_mixtral_refused 2 "supports the qwen3_moe and qwen3_omni_moe layouts, not mixtral"
