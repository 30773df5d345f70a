# plan_trained.sh - expert plans on a trained model with a real routing
# pattern (tests/fixtures/trained-moe: a Qwen3-MoE of 3 layers x 32
# experts, top-4, trained on six kinds of text by tests/tools/train_moe.py;
# its README has the commands and the numbers).
#   - plans of 8 of 32 experts per layer from router statistics on a
#     training-corpus file (GPL-3 paragraphs), by frequency, weight and
#     REAP, keep the perplexity of held-out text of the same kind (the
#     Apache License 2.0, never trained on) far below what the first 8
#     experts give (the seed's mistake);
#   - the perplexities themselves, pinned loosely (5 %): full, first 8 and
#     each plan, as qmoe-run --perplexity prints them.
. "$(dirname "$0")/lib.sh"
plan 16
M=$FIX/trained-moe
C=$M/corpus.jsonl
H=$M/heldout.txt
ppl() { printf '%s\n' "$1" | awk '/^perplexity/ { print $2 }'; }
# near VALUE WANT: within 5 % of WANT
near() { awk -v v="$1" -v w="$2" 'BEGIN { d = v - w; if (d < 0) d = -d; exit !(v != "" && d <= 0.05 * w) }'; }

run qmoe-run --perplexity "$H" "$M"
expect trained_full 0
full=$(ppl "$out")
near "$full" 30.23 && ok trained_full_pinned || fail trained_full_pinned "$full, wanted about 30.23"
run qmoe-run --perplexity "$H" --mask-experts 0-7 "$M"
expect trained_first8 0
first=$(ppl "$out")
near "$first" 49.65 && ok trained_first8_pinned || fail trained_first8_pinned "$first, wanted about 49.65"
for by in frequency weight reap; do
    case $by in frequency) want=30.18 ;; weight) want=31.01 ;; reap) want=31.59 ;; esac
    run qmoe-run --router-stats "$C" --keep 8 --by "$by" --plan-out "$T/$by.json" "$M"
    expect "trained_plan_$by" 0 "plan keeping 8 of 32 experts per MoE layer by $by"
    run qmoe-run --perplexity "$H" --keep-experts "$T/$by.json" "$M"
    expect "trained_ppl_$by" 0
    p=$(ppl "$out")
    # far below the first 8 (at most 3/4 of its perplexity; measured
    # 0.61-0.64) and within 10 % of the full model (measured -0.2 to +4.5 %)
    awk -v p="$p" -v f="$first" -v u="$full" 'BEGIN { exit !(p != "" && p < 0.75 * f && p < 1.1 * u) }' &&
        ok "trained_${by}_below_first8" ||
        fail "trained_${by}_below_first8" "plan $p, first 8 $first, full $full"
    near "$p" "$want" && ok "trained_${by}_pinned" || fail "trained_${by}_pinned" "$p, wanted about $want"
done
