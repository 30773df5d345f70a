# coherence_plan.sh - qmoe-verify --coherence --keep-experts PLAN, on the
# coherent sample (qmoe-mksample --coherent: each domain routed to its own
# four of sixteen experts per layer).
#   - the gate runs with the router restricted to the plan and is judged by
#     the same criteria, (c) against the N experts the plan allows: the
#     technical plan at N = 4 passes on the technical text, the plan at
#     N = 8 from the whole corpus fails (b) on the whole reference text;
#   - the comparison rows (plan, first N, free router) are the perplexities
#     qmoe-run --perplexity prints for the same text with --keep-experts
#     PLAN, with the first N experts, and free, digit for digit; the plan
#     scores below the first N; router diversity counts what each allows;
#   - text output, --json, the HTML report, --source with a plan;
#   - refusals: without --coherence, with --mask-experts, a plan that does
#     not fit the model (exit 2, naming the plan).
. "$(dirname "$0")/lib.sh"
plan 34
C=$QMOE_ROOT/samples/corpus.jsonl
M=$T/coh
X=$T/x
ppl() { printf '%s\n' "$1" | awk '/^perplexity/ { print $2 }'; }
# a JSON number as qmoe-run prints a perplexity
g8() { awk -v x="$1" 'BEGIN { printf "%.8g\n", x }'; }

run qmoe-mksample --coherent "$M"
expect cplan_sample 0
run qmoe-extract --no-progress "$M" "$X"
expect cplan_extract 0
grep '"technical"' "$C" >"$T/tech.jsonl"
head -4 "$QMOE_ROOT/samples/reference.txt" >"$T/tech.txt"
run qmoe-run --router-stats "$T/tech.jsonl" --keep 4 --by reap --plan-out "$T/tech4.json" "$M"
expect cplan_tech_plan 0
# the first N experts, as a plan
jq -c '{keep: (.keep | map_values([range(0; length)]))}' "$T/tech4.json" >"$T/first4.json"

# the technical plan on the technical text: passes, rows side by side
run qmoe-verify --no-progress --coherence --keep-experts "$T/tech4.json" --text "$T/tech.txt" \
    --json "$X"
expect cplan_tech_gate 0
J=$T/tech-gate.json
printf '%s\n' "$out" >"$J"
same cplan_tech_verdict "$(jq -c '.coherence | [.ok, .keep_experts != null, .comparison.plan_layers,
    [.comparison.rows[].router]]' "$J")" '[true,true,4,["plan","first","free"]]'
same cplan_tech_router_allowed "$(jq -c '[.coherence.router.layers[] | [.allowed, .threshold]] | unique' "$J")" \
    '[[4,2]]'
run qmoe-run --perplexity "$T/tech.txt" --keep-experts "$T/tech4.json" "$M"
expect cplan_run_plan 0
same cplan_row_plan_is_run "$(g8 "$(jq '.coherence.comparison.rows[0].ppl' "$J")")" "$(ppl "$out")"
same cplan_row_plan_is_gate "$(jq '.coherence.comparison.rows[0].ppl == .coherence.perplexity.ppl' "$J")" true
run qmoe-run --perplexity "$T/tech.txt" --keep-experts "$T/first4.json" "$M"
expect cplan_run_first 0
first=$(ppl "$out")
same cplan_row_first_is_run "$(g8 "$(jq '.coherence.comparison.rows[1].ppl' "$J")")" "$first"
run qmoe-run --perplexity "$T/tech.txt" "$M"
expect cplan_run_free 0
same cplan_row_free_is_run "$(g8 "$(jq '.coherence.comparison.rows[2].ppl' "$J")")" "$(ppl "$out")"
# the seed's mistake: the first 4 garble what the plan keeps
check cplan_plan_below_first jq -e '.coherence.comparison.rows as $r | $r[0].ppl < 1.01 * $r[2].ppl
    and ($r[1].ppl | type) == "number" and $r[1].ppl > 1e6' "$J"
# diversity: used of allowed, the plan's (and the first N's) 4 per layer
same cplan_diversity "$(jq -c '[.coherence.comparison.rows[] | [.allowed, ([.layers[].allowed] | unique),
    (.used <= .allowed), (.used > 0)]]' "$J")" '[[16,[4],true,true],[16,[4],true,true],[64,[16],true,true]]'
check cplan_plan_uses_its_experts jq -e '.coherence.comparison.rows[0].used == 16' "$J"

# text output
run qmoe-verify --no-progress --coherence --keep-experts "$T/tech4.json" --text "$T/tech.txt" "$X"
expect cplan_text 0 "comparison at the same N (4 layers in the plan" stdout
expect cplan_text_rows 0 "first N experts  perplexity $(g8 "$(jq '.coherence.comparison.rows[1].ppl' "$J")" | cut -c1-6)" stdout
expect cplan_text_plan 0 "router restricted to the plan '$T/tech4.json'" stdout
expect cplan_text_layers 0 "  4/4 chosen  ok" stdout

# the plan at N = 8 from the whole corpus: the whole reference text needs
# all sixteen, so (b) fails, with the rows still ordered plan < first N
run qmoe-run --router-stats "$C" --keep 8 --by frequency --plan-out "$T/all8.json" "$M"
expect cplan_all8_plan 0
run qmoe-verify --no-progress --coherence --keep-experts "$T/all8.json" --json "$X"
expect cplan_all8_fails 1
printf '%s\n' "$out" >"$T/all8-gate.json"
same cplan_all8_failure "$(jq -c '[.coherence.failures[].criterion]' "$T/all8-gate.json")" '["perplexity"]'
check cplan_all8_plan_below_first jq -e '.coherence.comparison.rows as $r |
    ($r[0].ppl | type) == "number" and ($r[1].ppl | type) == "number" and $r[0].ppl < $r[1].ppl
    and $r[2].ppl < 2' "$T/all8-gate.json"

# --source with the plan: the source runs under the same plan
run qmoe-verify --no-progress --coherence --keep-experts "$T/tech4.json" --text "$T/tech.txt" \
    --source "$M" --json "$X"
expect cplan_source 0
same cplan_source_identical "$(printf %s "$out" | jq -c '.coherence.source | [.checked, .identical]')" '[true,true]'

# the HTML report: the plan's gate next to the free router's, and the rows
run qmoe-verify --no-progress --coherence --keep-experts "$T/tech4.json" --text "$T/tech.txt" \
    --report "$T/rep" "$X"
expect cplan_report 0
check cplan_report_xml xmllint --noout "$T/rep/index.html"
check cplan_report_rows grep -q "the plan at the same N" "$T/rep/index.html"
check cplan_report_label grep -q "router restricted to the plan" "$T/rep/index.html"

# refusals
run qmoe-verify --keep-experts "$T/tech4.json" "$X"
expect cplan_needs_coherence 2 "need --coherence"
run qmoe-verify --coherence --keep-experts "$T/tech4.json" --mask-experts 0-7 "$X"
expect cplan_not_with_mask 2 "give one"
printf '{"keep": {"0": [0, 1, 99]}}\n' >"$T/bad.json"
run qmoe-verify --no-progress --coherence --keep-experts "$T/bad.json" "$X"
expect cplan_bad_plan 2 "bad.json': keep[\"0\"][2]: 99 is not an expert id" stdout
printf '{"keep": {"0": [3]}}\n' >"$T/one.json"
run qmoe-verify --no-progress --coherence --keep-experts "$T/one.json" "$X"
expect cplan_fewer_than_topk 2 "fewer than the 2" stdout
