# routerstats.sh - qmoe-run --router-stats and the HTML report on the
# coherent sample: the statistics agree with an independent computation
# from the router log (tests/routerstats_check.py, 1e-6), the log of a
# corpus line is the plain run's log of that text, the four domains pick
# different experts when the router is free and the masked router uses
# 0-7 only; --report pages (qmoe-run and qmoe-verify --coherence) are
# well-formed XML (xmllint), self-contained, and hold what they claim;
# bad corpora and options fail with a message naming the problem.
. "$(dirname "$0")/lib.sh"
plan 49
PY=/usr/bin/python3
C=$QMOE_ROOT/samples/corpus.jsonl
M=$T/out

run qmoe-mksample --coherent "$T/src"
expect rs_sample 0 || exit 0
run qmoe-extract --no-progress "$T/src" "$M"
expect rs_extract 0 || exit 0

# samples/corpus.jsonl is samples/prompts' sentences, whole, by domain
want=$(jq -c '{domain, lang, text: (.prompt + .expected)}' "$QMOE_ROOT/samples/prompts")
[ "$want" = "$(cat "$C")" ] && ok rs_corpus_is_prompts ||
    fail rs_corpus_is_prompts "samples/corpus.jsonl is not samples/prompts' prompt + expected"

run qmoe-run --router-stats "$C" "$M"
expect rs_text 0 "4 MoE layers x 16 experts, top-2; 167 tokens in 16 sequences, 4 domains" stdout
[[ "$out" == *"layer    picks  used  MI bits"* && "$out" == *"top experts per domain"* ]] &&
    ok rs_text_tables || fail rs_text_tables "$out"

for mode in free masked; do
    mask=(); [ $mode = masked ] && mask=(--mask-experts 0-7)
    run qmoe-run --router-stats "$C" "${mask[@]}" --json --router-log "$T/$mode.log" "$M"
    expect "rs_${mode}_json" 0 || continue
    echo "$out" >"$T/$mode.json"
    $PY "$QMOE_ROOT/tests/routerstats_check.py" "$C" "$T/$mode.log" "$T/$mode.json" "_$mode"
    # 4 layers x 167 tokens, top-2
    [ "$(jq '[.layers[].picks] == [334,334,334,334]' "$T/$mode.json")" = true ] &&
        ok "rs_${mode}_picks" || fail "rs_${mode}_picks" "$(jq -c '[.layers[].picks]' "$T/$mode.json")"
done
[ "$(jq -c '[.layers[].never_chosen]' "$T/masked.json")" = \
  "$(jq -nc '[range(4)] | map([range(8;16)])')" ] && ok rs_masked_never_8_15 ||
    fail rs_masked_never_8_15 "$(jq -c '[.layers[].never_chosen]' "$T/masked.json")"
[ "$(jq -c '[.layers[].never_chosen | length]' "$T/free.json")" = "[0,0,0,0]" ] &&
    ok rs_free_all_used || fail rs_free_all_used "$(jq -c '[.layers[].never_chosen]' "$T/free.json")"
# specialisation: free NMI well above masked in every layer
paste <(jq '.layers[].nmi' "$T/free.json") <(jq '.layers[].nmi' "$T/masked.json") |
    awk '$1 > 0.35 && $1 > 2 * $2 { n++ } END { exit n != 4 }' && ok rs_nmi_free_above_masked ||
    fail rs_nmi_free_above_masked "$(jq -c '[.layers[].nmi]' "$T/free.json" "$T/masked.json")"
# the four domains apart: in every layer each domain's highest-lift expert differs
apart=$(jq '[.layers[] | [.top[] | (.experts | max_by(.lift) | .expert)] | unique | length]' \
        -c "$T/free.json")
[ "$apart" = "[4,4,4,4]" ] && ok rs_domains_apart || fail rs_domains_apart "$apart"

# the log of corpus line 1 is the plain run's log of its text
text1=$(head -1 "$C" | jq -r .text)
run qmoe-run --prompt "$text1" -n 0 --router-log "$T/p1.log" "$M"
expect rs_plain_run 0 &&
    { grep '^{"line":1,' "$T/free.log" | sed 's/^{"line":1,/{/' | cmp -s - "$T/p1.log" &&
      ok rs_log_is_plain_log || fail rs_log_is_plain_log "line 1's picks differ from --prompt's"; }

# ---- reports ----
xml_ok() { xmllint --noout "$1" 2>&1; }
self_contained() { ! grep -Eq '<script|<link|<img| src=|href="http|url\(' "$1"; }

run qmoe-run --router-stats "$C" --report "$T/rep" "$M"
expect rs_report 0 "report: $T/rep/index.html" stdout
R=$T/rep/index.html
check rs_report_xml xml_ok "$R"
check rs_report_self_contained self_contained "$R"
n=$(grep -c '<svg ' "$R")
# NMI chart, load overview, two legends, 4 heatmaps
[ "$n" = 8 ] && ok rs_report_svgs || fail rs_report_svgs "$n <svg> elements, want 8"
for L in 0 1 2 3; do grep -q "layer $L, free router: NMI" "$R" || fail rs_report_heatmap "layer $L"; done
grep -q 'layer 2, expert 10, technical: ' "$R" && ok rs_report_heatmap ||
    fail rs_report_heatmap "no cell title for layer 2 expert 10"
# the cell of expert 10 in layer 2 for technical: share and lift as in the JSON
lift=$(jq -r '.layers[2].top[] | select(.domain=="technical") | .experts[] | select(.expert==10) | .lift' "$T/free.json")
grep -q "layer 2, expert 10, technical: [0-9]* picks, [0-9.]* % of the domain's, lift $(printf %.2f "$lift")" "$R" &&
    ok rs_report_cell_lift || fail rs_report_cell_lift "lift $lift not in the page"

run qmoe-verify --coherence --report "$T/gate" "$M"
expect rs_gate_report 0 "report: $T/gate/index.html" stdout
G=$T/gate/index.html
check rs_gate_xml xml_ok "$G"
check rs_gate_self_contained self_contained "$G"
grep -q '<th>free router</th><th>router masked to 0-7</th>' "$G" && ok rs_gate_side_by_side ||
    fail rs_gate_side_by_side "no free / masked columns"
grep -q 'FAIL</span> perplexity' "$G" && grep -q 'ok</span> perplexity 1.23373' "$G" &&
    ok rs_gate_verdicts || fail rs_gate_verdicts "perplexity verdicts missing"
grep -q '<td class="match">，明天继续讨论模型。</td>' "$G" && ok rs_gate_continuations ||
    fail rs_gate_continuations "the free continuation of the Chinese prompt is missing"
[ "$(grep -c '<td class="differ">' "$G")" = 16 ] && ok rs_gate_masked_garbled ||
    fail rs_gate_masked_garbled "$(grep -c '<td class="differ">' "$G") masked continuations differ, want 16"
run qmoe-verify --coherence --mask-experts 0-7 --report "$T/gate2" "$M"
expect rs_gate_masked_report 1 "report: $T/gate2/index.html" stdout
check rs_gate_masked_xml xml_ok "$T/gate2/index.html"
grep -q '<td class="match">，明天继续讨论模型。</td>' "$T/gate2/index.html" &&
    ok rs_gate_masked_has_free || fail rs_gate_masked_has_free "the free side is missing"
run qmoe-verify --coherence --json --report "$T/gate3" "$M"
expect rs_gate_json 0 "\"report\":	\"$T/gate3/index.html\"" stdout

# text that XML must escape, and characters it cannot hold
printf '%s\n' '{"domain":"<b>&amp;\"x\"</b>","text":"a < b && c > d \u0001 \uffff"}' \
              '{"domain":"plain","text":"The router sends every token"}' >"$T/esc.jsonl"
run qmoe-run --router-stats "$T/esc.jsonl" --report "$T/esc" "$M"
expect rs_escape_run 0
check rs_escape_xml xml_ok "$T/esc/index.html"
grep -q '&lt;b&gt;&amp;amp;&quot;x&quot;&lt;/b&gt;' "$T/esc/index.html" && ok rs_escape_domain ||
    fail rs_escape_domain "the domain is not escaped"

# ---- bad input ----
run qmoe-run --router-stats "$T/none.jsonl" "$M"
expect rs_corpus_missing 2 "cannot read corpus '$T/none.jsonl'"
printf '{"domain":"a","text":"x"}\n\n{"domain":"a"}\n' >"$T/bad1.jsonl"
run qmoe-run --router-stats "$T/bad1.jsonl" "$M"
expect rs_corpus_no_text 2 "corpus '$T/bad1.jsonl': line 3: \"text\" is not a string"
printf '{"domain":"a","text":"x"\n' >"$T/bad2.jsonl"
run qmoe-run --router-stats "$T/bad2.jsonl" "$M"
expect rs_corpus_not_json 2 "line 1: not a JSON object"
printf '{"domain":"","text":"x"}\n' >"$T/bad3.jsonl"
run qmoe-run --router-stats "$T/bad3.jsonl" "$M"
expect rs_corpus_empty_domain 2 "line 1: \"domain\" is empty"
printf '{"domain":"a","text":"x\\u0000y"}\n' >"$T/bad4.jsonl"
run qmoe-run --router-stats "$T/bad4.jsonl" "$M"
expect rs_corpus_nul 2 'line 1: a string holds \u0000'
printf '\n\n' >"$T/bad5.jsonl"
run qmoe-run --router-stats "$T/bad5.jsonl" "$M"
expect rs_corpus_empty 2 "holds no entry"
run qmoe-run --report "$T/x" --prompt hi "$M"
expect rs_report_needs_stats 2 "--report works with --router-stats"
run qmoe-run --router-stats "$C" --prompt hi "$M"
expect rs_modes_exclusive 2 "exclude each other"
run qmoe-run --router-stats "$C" --mask-experts 0-99 "$M"
expect rs_bad_mask 2 "--mask-experts"
: >"$T/afile"
run qmoe-run --router-stats "$C" --report "$T/afile" "$M"
expect rs_report_dir_is_file 2 "$T/afile"
run qmoe-verify --report "$T/x" "$M"
expect rs_verify_report_needs_coherence 2 "need --coherence"
no_tmp_files "$T" && ok rs_no_tmp || fail rs_no_tmp "$(find "$T" -name '*.tmp.*')"
