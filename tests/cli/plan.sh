# plan.sh - expert plans from router statistics and --keep-experts, on the
# coherent sample (qmoe-mksample --coherent: every corpus token is routed
# to one expert per layer, each domain to its own four of sixteen).
#   - --router-stats CORPUS --keep N --by frequency|weight|reap --plan-out
#     writes a plan: N distinct experts for every MoE layer, the criterion,
#     the corpus and the scores;
#   - the seed's story at N = 4: the plan made from the technical sentences
#     (by weight, by REAP) keeps that text exactly as the full model scores
#     it, where the first 4 experts garble it (perplexity > 1e6); the same
#     in generation;
#   - --keep-experts in every mode (generation, --logits-out, --perplexity,
#     --router-stats: only the plan's experts are used);
#   - the packed model (qmoe-pack --keep-experts) scores as the restricted
#     original, and an independent Python loader (tests/tools/hf_qwen3moe.py,
#     NumPy, plain Hugging Face names) gets its logits within 1e-4;
#   - refusals: fewer experts than top-k, options that do not go together,
#     --keep out of range or against DeepSeek's groups.
. "$(dirname "$0")/lib.sh"
plan 57
PY=/usr/bin/python3
HF=$QMOE_ROOT/tests/tools/hf_qwen3moe.py
C=$QMOE_ROOT/samples/corpus.jsonl
M=$T/coh
ppl() { printf '%s\n' "$1" | awk '/^perplexity/ { print $2 }'; }

run qmoe-mksample --coherent "$M"
expect plan_coherent_sample 0
grep '"technical"' "$C" >"$T/tech.jsonl"
head -4 "$QMOE_ROOT/samples/reference.txt" >"$T/tech.txt" # the technical lines
check plan_tech_text grep -q "^Memory mapping lets one process" "$T/tech.txt"

for by in frequency weight reap; do
    run qmoe-run --router-stats "$C" --keep 8 --by "$by" --plan-out "$T/all-$by.json" "$M"
    expect "plan_out_$by" 0 "plan keeping 8 of 16 experts per MoE layer by $by"
    same "plan_out_${by}_shape" "$(jq -c '[(.keep | keys), ([.keep[] | unique | length] | unique), .criterion,
        (.scores | keys | length)]' "$T/all-$by.json")" "[[\"0\",\"1\",\"2\",\"3\"],[8],\"$by\",4]"
done
# frequency counts picks: the top-scored expert of layer 0 is the most picked
top_e=$(jq '.keep["0"][0]' "$T/all-frequency.json")
run qmoe-run --router-stats "$C" --json "$M"
same plan_frequency_is_load "$top_e" "$(printf %s "$out" | jq '.layers[0].load | to_entries | max_by(.value) | .key')"

# the seed's story on the technical domain, N = 4
run qmoe-run --perplexity "$T/tech.txt" "$M"
expect plan_full_ppl 0
full=$(ppl "$out")
run qmoe-run --perplexity "$T/tech.txt" --mask-experts 0-3 "$M"
expect plan_first4_ppl 0
first=$(ppl "$out")
awk -v p="$first" 'BEGIN { exit !(p > 1e6) }' && ok plan_first4_garbles || fail plan_first4_garbles "perplexity $first"
for by in weight reap; do
    run qmoe-run --router-stats "$T/tech.jsonl" --keep 4 --by "$by" --plan-out "$T/tech-$by.json" "$M"
    expect "plan_tech_$by" 0
    run qmoe-run --perplexity "$T/tech.txt" --keep-experts "$T/tech-$by.json" "$M"
    expect "plan_tech_${by}_ppl" 0
    same "plan_tech_${by}_keeps_full_ppl" "$(ppl "$out")" "$full" "full $full, first 4 $first"
done
P4=$T/tech-reap.json
run qmoe-run --prompt "The router sends every token" -n 12 "$M"
expect plan_gen_full 0
gen_full=$out
run qmoe-run --prompt "The router sends every token" -n 12 --keep-experts "$P4" "$M"
expect plan_gen_keep 0
same plan_gen_keep_coherent "$out" "$gen_full"
run qmoe-run --prompt "The router sends every token" -n 12 --mask-experts 0-3 "$M"
expect plan_gen_first4 0
[ "$out" != "$gen_full" ] && ok plan_gen_first4_differs || fail plan_gen_first4_differs "$out"
run qmoe-run --router-stats "$T/tech.jsonl" --keep-experts "$P4" --json "$M"
expect plan_stats_keep 0
same plan_stats_keep_used "$(printf %s "$out" | jq -c '[.layers[] | .used]')" "[4,4,4,4]"
same plan_stats_keep_only_plan "$(printf %s "$out" | jq -c '[.layers[] | [.load | to_entries[] | select(.value > 0) | .key]]')" \
    "$(jq -c '[.keep[] | sort]' "$P4")"

# packed: the restricted original, and an independent loader agrees
run qmoe-pack --no-progress --as qwen3_moe --keep-experts "$P4" "$M" "$T/packed"
expect plan_pack 0
run qmoe-run --perplexity "$T/tech.txt" "$T/packed"
expect plan_packed_ppl 0
awk -v a="$(ppl "$out")" -v b="$full" 'BEGIN { d = a - b; exit !(d < 1e-4 && d > -1e-4) }' &&
    ok plan_packed_ppl_full || fail plan_packed_ppl_full "$(ppl "$out") vs $full"
IDS=$(qmoe-run --tokenize "$M" <"$T/tech.txt" | jq -r 'map(tostring) | join(",")')
run qmoe-run --token-ids "$IDS" -n 0 --logits-out "$T/keep.f32" --keep-experts "$P4" "$M"
expect plan_logits_keep 0
run qmoe-run --token-ids "$IDS" -n 0 --logits-out "$T/packed.f32" "$T/packed"
expect plan_logits_packed 0
sc=$(score "$T/packed.f32" "$T/keep.f32")
within "$sc" 1e-5 && ok plan_packed_logits || fail plan_packed_logits "score $sc"
run "$PY" "$HF" "$T/packed" "$IDS" "$T/py.f32"
expect plan_python_loader 0
sc=$(score "$T/packed.f32" "$T/py.f32")
within "$sc" 1e-4 && ok plan_python_logits || fail plan_python_logits "score $sc"
# the Omni thinker, packed with a plan, read by the Python loader
echo '{"keep":{"0":[9,2,4,11,0,15,7,6],"1":[14,12,10,8,5,3,2,1],"2":[7,6,5,4,3,2,1,0]}}' >"$T/t8.json"
run qmoe-pack --no-progress --as qwen3_moe --keep-experts "$T/t8.json" \
    "$FIX/qwen3moe-tiny/omni" "$T/thinker"
expect plan_pack_thinker 0
TIDS=1,7,42,99,5,250,17,3,64,128,77,300
run qmoe-run --token-ids "$TIDS" -n 0 --logits-out "$T/t.f32" "$T/thinker"
expect plan_thinker_run 0
run "$PY" "$HF" "$T/thinker" "$TIDS" "$T/tpy.f32"
expect plan_thinker_python 0
sc=$(score "$T/t.f32" "$T/tpy.f32")
within "$sc" 1e-4 && ok plan_thinker_python_logits || fail plan_thinker_python_logits "score $sc"
# negative control: the loader on the unpruned thinker differs by far
run qmoe-pack --no-progress --as qwen3_moe "$FIX/qwen3moe-tiny/omni" "$T/thinker-all"
expect plan_pack_thinker_all 0
run "$PY" "$HF" "$T/thinker-all" "$TIDS" "$T/tall.f32"
expect plan_thinker_all_python 0
sc=$(score "$T/t.f32" "$T/tall.f32")
within "$sc" 1e-2 && fail plan_python_control "pruned and full agree: $sc" || ok plan_python_control

# refusals
QP=$FIX/qwen3moe-tiny/qwen3moe
echo '{"keep":{"0":[0,1,2],"1":[0,1,2,3],"2":[0,1,2,3]}}' >"$T/k3.json"
run qmoe-run --token-ids 1,2,3 -n 1 --keep-experts "$T/k3.json" "$QP"
expect plan_refuses_below_top_k 2 "keep[\"0\"] keeps 3 experts, fewer than the 4"
run qmoe-pack --no-progress --keep-experts "$T/k3.json" "$QP" "$T/k3"
expect plan_pack_uneven_refused 2 "keeps 4 experts but"
echo '{"keep":{"0":[0,1,2],"1":[0,1,2],"2":[0,1,2]}}' >"$T/k3all.json"
run qmoe-pack --no-progress --keep-experts "$T/k3all.json" "$QP" "$T/k3all"
expect plan_pack_below_top_k 0
same plan_pack_below_top_k_config "$(jq -c '[.num_experts, .num_experts_per_tok]' "$T/k3all/config.json")" "[3,3]"
run qmoe-run --token-ids 1,2,3 -n 2 "$T/k3all"
expect plan_pack_below_top_k_runs 0
echo '{"keep":{"0":[0,1,2,3],"9":[0,1,2,3]}}' >"$T/k9.json"
run qmoe-run --token-ids 1,2,3 -n 1 --keep-experts "$T/k9.json" "$QP"
expect plan_run_unknown_layer 2 "keep[\"9\"]: the model has 3 layers"
run qmoe-run --token-ids 1,2,3 --keep-experts "$T/k3.json" --mask-experts 0-7 "$QP"
expect plan_keep_and_mask 2 "exclude each other"
run qmoe-run --router-stats "$C" --keep 4 "$M"
expect plan_keep_needs_out 2 "go together"
run qmoe-run --token-ids 1,2 --keep 4 --plan-out "$T/x.json" "$M"
expect plan_keep_needs_stats 2 "work with --router-stats"
run qmoe-run --router-stats "$C" --keep 4 --by votes --plan-out "$T/x.json" "$M"
expect plan_bad_by 2 "--by: expected frequency, weight or reap"
run qmoe-run --router-stats "$C" --keep 17 --plan-out "$T/x.json" "$M"
expect plan_keep_too_many 2 "--keep 17: the model has 16 experts"
check plan_keep_too_many_no_file test ! -e "$T/x.json"
DS=$FIX/families/deepseekv3-tiny/hf
run qmoe-run --router-stats "$C" --keep 6 --plan-out "$T/ds.json" "$DS"
expect plan_deepseek_groups 2 "within 4 groups"
run qmoe-run --router-stats "$C" --keep 8 --plan-out "$T/ds.json" "$DS"
expect plan_deepseek_plan 0
same plan_deepseek_group_order "$(jq -c '[.keep[] | [.[] / 4 | floor]] | unique' "$T/ds.json")" "[[0,0,1,1,2,2,3,3]]"
run qmoe-pack --no-progress --keep-experts "$T/ds.json" "$DS" "$T/ds-packed"
expect plan_deepseek_mtp_dropped 0 "the plan does not list the multi-token-prediction block: it is dropped"
