# run_fp8yarn.sh - the forward pass on the YaRN fixtures of
# tests/fixtures/fp8yarn against their golden outputs (a float64 PyTorch
# reference written from transformers' definitions, not from qmoe): from
# the Hugging Face checkpoint and from its extraction, full and masked to
# experts 0-3, prompt logits within 1e-3 of max(1, max |golden|), greedy
# continuations identical. Negative controls: YaRN ignored, or DeepSeek's
# mscale_all_dim dropped (no softmax mscale^2, another cos/sin factor),
# miss the golden by far more than the tolerance.
. "$(dirname "$0")/lib.sh"
plan 120
F=$FIX/fp8yarn

ids() { jq -r ".sequences.seq$2.ids | map(tostring) | join(\",\")" "$1/tokens.json"; }
want() { jq -r ".greedy.seq$2.$3 | map(tostring) | join(\",\")" "$1/greedy.json"; }

worst=$T/worst.txt
: >"$worst"
for fx in dsv3-yarn dsv3-yarn-mscale qwen3moe-yarn; do
    G=$F/$fx/golden
    run qmoe-extract --no-progress "$F/$fx/hf" "$T/$fx"
    expect "${fx}_extract" 0
    for src in hf out; do
        dir=$F/$fx/hf; [ $src = out ] && dir=$T/$fx
        for mode in full masked; do
            mask=(); key=torch_ref; pre=
            [ $mode = masked ] && { mask=(--mask-experts 0-3); key=torch_ref_masked; pre=masked_; }
            for s in 1 2 3; do
                name="${fx}_${src}_${mode}_seq$s"
                run qmoe-run "${mask[@]}" --ignore-eos -n 16 -j 2 --token-ids "$(ids "$G" $s)" \
                    --logits-out "$T/l.f32" "$dir"
                expect "$name" 0 || continue
                sc=$(score "$T/l.f32" "$G/logits_${pre}seq$s.f32")
                echo "$fx $mode $src $sc" >>"$worst"
                within "$sc" 1e-3 && ok "${name}_logits" || fail "${name}_logits" "score $sc > 1e-3"
                w=$(want "$G" $s $key)
                [ "$out" = "$w" ] && ok "${name}_greedy" || fail "${name}_greedy" "got $out, golden $w"
            done
        done
    done
done
# the worst normalised difference per fixture, routing and source (for the notes)
sort -k1,3 -k4g "$worst" | awk '{ w[$1 " " $2 " " $3] = $4 } END { for (k in w) print "# worst " k " " w[k] }' | sort

# control FIXTURE NAME JQ: the fixture's checkpoint with one config change
# must miss the golden seq3 by more than 10x the tolerance.
control() {
    local fx=$1 name=$2 expr=$3 G=$F/$1/golden
    rm -rf "$T/ctl"; mkdir -p "$T/ctl"
    cp "$F/$fx/hf"/* "$T/ctl/"
    chmod u+w "$T/ctl/config.json"
    jq "$expr" "$F/$fx/hf/config.json" >"$T/ctl/config.json"
    if cmp -s "$T/ctl/config.json" "$F/$fx/hf/config.json"; then
        fail "${fx}_catches_$name" "the change changed nothing"; return
    fi
    run qmoe-run -n 0 --token-ids "$(ids "$G" 3)" --logits-out "$T/l.f32" "$T/ctl"
    expect "${fx}_${name}_run" 0 || return
    sc=$(score "$T/l.f32" "$G/logits_seq3.f32")
    awk -v s="$sc" 'BEGIN { exit !(s != "nan" && s >= 1e-2) }' && ok "${fx}_catches_$name" ||
        fail "${fx}_catches_$name" "score $sc"
}
control dsv3-yarn yarn_ignored '.rope_scaling = null'
control dsv3-yarn no_mscale_all_dim 'del(.rope_scaling.mscale_all_dim)'
control dsv3-yarn-mscale mscales_swapped '.rope_scaling.mscale = 0.707 | .rope_scaling.mscale_all_dim = 1.0'
control qwen3moe-yarn yarn_ignored '.rope_scaling = null'

# a rope type the pass does not implement is refused by name
rm -rf "$T/ctl"; mkdir -p "$T/ctl"; cp "$F/dsv3-yarn/hf"/* "$T/ctl/"; chmod u+w "$T/ctl/config.json"
jq '.rope_scaling.type = "dynamic"' "$F/dsv3-yarn/hf/config.json" >"$T/ctl/config.json"
run qmoe-run -n 0 --token-ids 1,2 "$T/ctl"
expect dsv3-yarn_dynamic_refused 2 "rope_scaling.type 'dynamic' is not supported"
