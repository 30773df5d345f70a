#!/usr/bin/env bash
# coherence_families.sh - qmoe-verify --coherence on the extraction of every
# family fixture (tests/fixtures/families: Mixtral, OLMoE, Qwen2-MoE,
# DeepSeek-V3 and GLM-4.5 with their MTP blocks) and of the FP8 fixtures of
# tests/fixtures/fp8yarn (DeepSeek-V3 with F32 scales and its MTP block,
# Qwen3-MoE with BF16 scales). The fixtures are random tiny models, so
# the gate must: run end to end on each family's OUT; find the logits of
# OUT bit-identical to the source's (a); fail on the reference perplexity
# at the default limit (random weights score about the vocabulary, 384) and
# pass it with the limit lifted (b); and, with the router masked to just
# top-k experts, fail (c) naming the confined layers.
. "$(dirname "$0")/lib.sh"
plan 56
V="qmoe-verify -j 1 --coherence"
has() { if [[ "$out" == *"$2"* ]]; then ok "$1"; else fail "$1" "stdout lacks '$2': $(head -c 600 "$T/.out")"; fi; }

for fx in families/mixtral-tiny families/olmoe-tiny families/qwen2moe-tiny families/glm4moe-tiny \
          families/deepseekv3-tiny fp8yarn/dsv3-fp8 fp8yarn/qwen3moe-fp8; do
    fam=${fx#*/}; fam=${fam%-tiny}
    SRC=$FIX/$fx/hf X=$T/$fam
    run qmoe-extract --no-progress "$SRC" "$X"
    expect "${fam}_extract" 0 || continue
    cfg=$SRC/config.json
    ne=$(jq '.num_local_experts // .num_experts // .n_routed_experts' "$cfg")
    k=$(jq .num_experts_per_tok "$cfg")
    # the MoE layers the gate reports, as the modeling files decide them:
    # not in mlp_only_layers, every decoder_sparse_step-th (Qwen2-MoE), from
    # first_k_dense_replace on (DeepSeek-V3)
    moe=$(jq '[range(.num_hidden_layers) as $l | select(((.mlp_only_layers // []) | index($l) | not)
               and (($l + 1) % (.decoder_sparse_step // 1) == 0)
               and $l >= (.first_k_dense_replace // 0))] | length' "$cfg")

    run $V --source "$SRC" --max-ppl 1e6 "$X"
    expect "${fam}_gate_passes" 0 $'\nOK' stdout
    has "${fam}_gate_shape" "coherence: $moe MoE layers x $ne experts, top-$k, vocabulary 384 (tokenizer 384)"
    has "${fam}_gate_source_identical" "(a) source: logits of 4 prompts bit-identical to the source  ok"
    has "${fam}_gate_router_free" "experts over the prompt set"

    run $V "$X"
    expect "${fam}_gate_random_ppl_fails" 1 "coherence: (b) perplexity: " stdout

    run $V --max-ppl 1e6 --mask-experts "0-$((k - 1))" "$X"
    expect "${fam}_gate_masked_fails" 1 \
        "coherence: (c) router: confined: $moe of $moe MoE layers" stdout
    has "${fam}_gate_masked_layer" "$k/$ne chosen  FAILED"
done
