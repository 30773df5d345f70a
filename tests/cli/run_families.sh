# run_families.sh - the forward pass of every family but Qwen3 against the
# golden outputs of tests/fixtures/families (an independent float32 port of
# the transformers modeling code, cross-checked by llama.cpp and NumPy):
# for Mixtral, OLMoE, Qwen2-MoE, DeepSeek-V3 and GLM-4.5 (glm4_moe), from
# the Hugging Face checkpoint and from its extraction, full and masked to
# experts 0-3 (DeepSeek-V3's and GLM-4.5's extractions keep their MTP
# blocks, tests/cli/mtp.sh; the forward pass ignores them): prompt logits within
# 1e-3 of max(1, max |golden|), greedy continuations identical, the router's
# choices (and weights) of seq3 equal to the shipped router logs. Negative
# controls: the cheapest bugs of each sensitivity.json (a wrong eps, a
# renormalisation the family does not do) move the logits far beyond the
# tolerance, so the comparison can fail.
. "$(dirname "$0")/lib.sh"
plan 300
FAM=$FIX/families

# router rows of a golden router_*.json and of a --router-log: "L T e,e w w"
golden_router() {
    jq -r '.layers[] | .layer as $l | range(0; .experts | length) as $t |
           "\($l) \($t) \(.experts[$t] | map(tostring) | join(",")) \(.weights[$t] | map(tostring) | join(" "))"' \
        "$1" | sort
}
log_router() {
    jq -r '"\(.layer) \(.pos) \(.experts | map(tostring) | join(",")) \(.weights | map(tostring) | join(" "))"' \
        "$1" | sort
}
# same_routes GOLD GOT: same layers, tokens and experts in order; weights within 1e-5
same_routes() {
    paste -d'|' "$1" "$2" | awk -F'|' '
        { split($1, a, " "); n = split($2, b, " ")
          if (a[1] != b[1] || a[2] != b[2] || a[3] != b[3] || length(a) != n) { print "row " NR ": " $0; exit 1 }
          for (i = 4; i <= n; i++) { d = a[i] - b[i]; if (d < 0) d = -d
              if (d > 1e-5) { print "row " NR " weight: " $0; exit 1 } } }
        END { if (NR == 0) { print "no rows"; exit 1 } }' &&
    [ "$(wc -l <"$1")" = "$(wc -l <"$2")" ] || { echo "$(wc -l <"$1") vs $(wc -l <"$2") rows"; return 1; }
}

worst=$T/worst.txt
: >"$worst"
for fam in mixtral olmoe qwen2moe deepseekv3 glm4moe; do
    G=$FAM/$fam-tiny/golden
    run qmoe-extract --no-progress "$FAM/$fam-tiny/hf" "$T/$fam"
    expect "families_${fam}_extract" 0
    for src in hf out; do
        dir=$FAM/$fam-tiny/hf; [ $src = out ] && dir=$T/$fam
        for mode in full masked; do
            mask=(); pre=
            [ $mode = masked ] && { mask=(--mask-experts 0-3); pre=masked_; }
            golden_seqs "families_${fam}_${src}_${mode}" "$fam $mode $src" "$dir" "$G" $mode "$worst"
            # the router's choices on seq3, in order, with their weights
            name="families_${fam}_${src}_${mode}_router"
            run qmoe-run "${mask[@]}" -n 0 --token-ids "$(golden_ids "$G" 3)" --router-log "$T/r.jsonl" "$dir"
            expect "${name}_run" 0 || continue
            golden_router "$G/router_${pre}seq3.json" >"$T/rg.txt"
            log_router "$T/r.jsonl" >"$T/rl.txt"
            check "$name" same_routes "$T/rg.txt" "$T/rl.txt"
        done
    done
done
# the worst normalised difference per family and routing (for the notes)
sort -k1,3 -k4g "$worst" | awk '{ w[$1 " " $2 " " $3] = $4 } END { for (k in w) print "# worst " k " " w[k] }' | sort

# control FAMILY NAME SED: the family's checkpoint with one config change
# (a bug of its sensitivity table) must miss the golden seq3 by > 10x the
# tolerance (full routing).
control() {
    local fam=$1 name=$2 expr=$3 G=$FAM/$1-tiny/golden
    rm -rf "$T/ctl"; mkdir -p "$T/ctl"
    cp "$FAM/$fam-tiny/hf"/* "$T/ctl/"
    chmod u+w "$T/ctl/config.json"
    sed -i "$expr" "$T/ctl/config.json"
    if cmp -s "$T/ctl/config.json" "$FAM/$fam-tiny/hf/config.json"; then
        fail "families_${fam}_catches_$name" "the sed changed nothing"; return
    fi
    run qmoe-run -n 0 --token-ids "$(golden_ids "$G" 3)" --logits-out "$T/l.f32" "$T/ctl"
    expect "families_${fam}_${name}_run" 0 || return
    sc=$(score "$T/l.f32" "$G/logits_seq3.f32")
    awk -v s="$sc" 'BEGIN { exit !(s != "nan" && s >= 1e-2) }' && ok "families_${fam}_catches_$name" ||
        fail "families_${fam}_catches_$name" "score $sc"
}
control mixtral eps_1e-6 's/"rms_norm_eps": 1e-05/"rms_norm_eps": 1e-06/'
control olmoe eps_1e-6 's/"rms_norm_eps": 1e-05/"rms_norm_eps": 1e-06/'
control olmoe renormalised 's/"norm_topk_prob": false/"norm_topk_prob": true/'
control qwen2moe eps_1e-5 's/"rms_norm_eps": 1e-06/"rms_norm_eps": 1e-05/'
control qwen2moe renormalised 's/"norm_topk_prob": false/"norm_topk_prob": true/'
control deepseekv3 eps_1e-5 's/"rms_norm_eps": 1e-06/"rms_norm_eps": 1e-05/'
control deepseekv3 no_group_limit 's/"topk_group": 2/"topk_group": 4/'
control deepseekv3 no_routed_scaling 's/"routed_scaling_factor": 2.5/"routed_scaling_factor": 1.0/'
control deepseekv3 not_renormalised 's/"norm_topk_prob": true/"norm_topk_prob": false/'
control deepseekv3 mtp_as_4th_layer 's/"num_hidden_layers": 3/"num_hidden_layers": 4/'
# GLM-4.5: the capabilities its config switches, and partial RoPE
control glm4moe whole_head_rope 's/"partial_rotary_factor": 0.5/"partial_rotary_factor": 1.0/'
control glm4moe no_qkv_bias 's/"attention_bias": true/"attention_bias": false/'
control glm4moe no_qk_norm 's/"use_qk_norm": true/"use_qk_norm": false/'
control glm4moe no_group_limit 's/"topk_group": 2/"topk_group": 4/'
control glm4moe no_routed_scaling 's/"routed_scaling_factor": 2.5/"routed_scaling_factor": 1.0/'
control glm4moe not_renormalised 's/"norm_topk_prob": true/"norm_topk_prob": false/'
control glm4moe mtp_as_4th_layer 's/"num_hidden_layers": 3/"num_hidden_layers": 4/'
# Mixtral renormalises always: a norm_topk_prob key is not Mixtral's and changes nothing.
control_same() {
    local G=$FAM/mixtral-tiny/golden
    rm -rf "$T/ctl"; mkdir -p "$T/ctl"
    cp "$FAM/mixtral-tiny/hf"/* "$T/ctl/"
    chmod u+w "$T/ctl/config.json"
    sed -i 's/"num_experts_per_tok": 2,/"num_experts_per_tok": 2, "norm_topk_prob": false,/' "$T/ctl/config.json"
    run qmoe-run -n 0 --token-ids "$(golden_ids "$G" 3)" --logits-out "$T/l.f32" "$T/ctl"
    expect families_mixtral_norm_key_run 0 || return
    sc=$(score "$T/l.f32" "$G/logits_seq3.f32")
    within "$sc" 1e-3 && ok families_mixtral_always_renormalises ||
        fail families_mixtral_always_renormalises "score $sc"
}
control_same

# A Mistral-style sliding_window (used whenever set) and OLMoE's clip_qkv
# are refused, not ignored.
rm -rf "$T/ctl"; mkdir -p "$T/ctl"; cp "$FAM/mixtral-tiny/hf"/* "$T/ctl/"; chmod u+w "$T/ctl/config.json"
sed -i 's/"sliding_window": null/"sliding_window": 2/' "$T/ctl/config.json"
run qmoe-run -n 0 --token-ids 1,2 "$T/ctl"
expect families_mixtral_sliding_window_refused 2 "sliding_window 2 is not supported"
rm -rf "$T/ctl"; mkdir -p "$T/ctl"; cp "$FAM/olmoe-tiny/hf"/* "$T/ctl/"; chmod u+w "$T/ctl/config.json"
sed -i 's/"clip_qkv": null/"clip_qkv": 8.0/' "$T/ctl/config.json"
run qmoe-run -n 0 --token-ids 1,2 "$T/ctl"
expect families_olmoe_clip_qkv_refused 2 "clip_qkv 8 is not supported"

# DeepSeek: a rope_scaling the pass does not implement (YaRN is, see
# run_fp8yarn.sh) and a routing other than sigmoid noaux_tc are refused,
# naming the key.
ds() {
    rm -rf "$T/ctl"; mkdir -p "$T/ctl"; cp "$FAM/deepseekv3-tiny/hf"/* "$T/ctl/"
    chmod u+w "$T/ctl/config.json"; sed -i "$1" "$T/ctl/config.json"
    run qmoe-run -n 0 --token-ids 1,2 "$T/ctl"
}
ds 's/"rope_scaling": null/"rope_scaling": {"type": "linear", "factor": 4}/'
expect families_deepseekv3_linear_rope_refused 2 "rope_scaling.type 'linear' is not supported"
ds 's/"scoring_func": "sigmoid"/"scoring_func": "softmax"/'
expect families_deepseekv3_softmax_refused 2 "scoring_func 'softmax' is not supported"
ds 's/"topk_method": "noaux_tc"/"topk_method": "group_limited_greedy"/'
expect families_deepseekv3_topk_method_refused 2 "topk_method 'group_limited_greedy' is not supported"
ds 's/"q_lora_rank": 48/"q_lora_rank": null/'
expect families_deepseekv3_no_q_lora_refused 2 "q_lora_rank null is not supported"
# --mask-experts masks before the sigmoid: experts 4-15 have negative
# biases here, so mask 4-15 instead and no expert outside them is chosen,
# whatever the positive biases of 0-3.
run qmoe-run --mask-experts 4-15 -n 4 --token-ids "$(golden_ids "$FAM/deepseekv3-tiny/golden" 3)" \
    --router-log "$T/r.jsonl" "$FAM/deepseekv3-tiny/hf"
expect families_deepseekv3_mask_high_run 0
bad=$(jq -r '.experts[] | select(. < 4)' "$T/r.jsonl" | head -3)
[ -s "$T/r.jsonl" ] && [ -z "$bad" ] && ok families_deepseekv3_mask_never_chosen ||
    fail families_deepseekv3_mask_never_chosen "chose $bad"

# GLM-4.5: a partial_rotary_factor leaving an odd number of rotated dims
# (int(24 x 0.3) = 7) is refused, naming the config.
rm -rf "$T/ctl"; mkdir -p "$T/ctl"; cp "$FAM/glm4moe-tiny/hf"/* "$T/ctl/"; chmod u+w "$T/ctl/config.json"
sed -i 's/"partial_rotary_factor": 0.5/"partial_rotary_factor": 0.3/' "$T/ctl/config.json"
run qmoe-run -n 0 --token-ids 1,2 "$T/ctl"
expect families_glm4moe_odd_rotary_refused 2 "config.json': 7 rotated dims per head"

# Perplexity: the mean NLL of each sequence's text (tokenized with the
# fixture's tokenizer to the same ids) equals nll.json, full and masked.
for fam in mixtral olmoe qwen2moe deepseekv3 glm4moe; do
    G=$FAM/$fam-tiny/golden
    for s in 1 2 3; do
        jq -j ".sequences.seq$s.text" "$G/tokens.json" >"$T/s.txt"
        run qmoe-run --tokenize "$FAM/$fam-tiny/hf" <"$T/s.txt"
        [ "$out" = "[$(golden_ids "$G" $s)]" ] || { fail "families_${fam}_nll_seq${s}_ids" "$out"; continue; }
        for mode in full masked; do
            mask=(); [ $mode = masked ] && mask=(--mask-experts 0-3)
            run qmoe-run "${mask[@]}" --perplexity "$T/s.txt" --json "$FAM/$fam-tiny/hf"
            got=$(printf %s "$out" | jq -r .mean_nll)
            want=$(jq -r ".nll.seq$s.nll_$mode" "$G/nll.json")
            awk -v a="$got" -v b="$want" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= 1e-3 * b) }' &&
                ok "families_${fam}_nll_${mode}_seq$s" ||
                fail "families_${fam}_nll_${mode}_seq$s" "mean nll $got, golden $want"
        done
    done
done
