# coherent.sh - the coherent sample model (qmoe-mksample --coherent): its
# own checks pass in both layouts, it is deterministic, samples/prompts and
# samples/reference.txt are what the module says; with the forward pass:
# greedy continuation of every prompt is its expected text, the reference
# text routes through every expert of every layer, the perplexity from
# qmoe-run's logits equals the generator's, and each sabotage (router
# masked to 0-7, two experts' data swapped, one expert zeroed) changes the
# continuations.
. "$(dirname "$0")/lib.sh"
plan 25
TOK="$QMOE_BUILD/tests/tools/cohtok"

for L in qwen3_omni_moe qwen3_moe; do
    run qmoe-mksample --coherent --json --layout $L "$T/$L"
    expect "coherent_${L}_writes" 0 '"min_margin"' stdout || continue
    echo "$out" >"$T/$L.json"
    echo "# $L: $out"
done
run qmoe-mksample --coherent --layout mixtral "$T/mx"
expect coherent_other_layout_refused 2 "qwen3_moe and qwen3_omni_moe"

run qmoe-mksample --coherent "$T/again"
expect coherent_again 0
check coherent_deterministic diff -r "$T/qwen3_omni_moe" "$T/again"

run qmoe-mksample --print-prompts
[ "$out" = "$(cat "$QMOE_ROOT/samples/prompts")" ] && ok coherent_prompts_file ||
    fail coherent_prompts_file "samples/prompts differs from qmoe-mksample --print-prompts"
qmoe-mksample --print-reference >"$T/ref.txt"
check coherent_reference_file cmp "$T/ref.txt" "$QMOE_ROOT/samples/reference.txt"
n=$(wc -l <"$QMOE_ROOT/samples/prompts")
domains=$(sed 's/.*"domain":"\([a-z]*\)".*/\1/' "$QMOE_ROOT/samples/prompts" | sort -u | tr '\n' ' ')
[ "$domains" = "conversational creative multilingual technical " ] && [ "$n" -ge 16 ] &&
    ok coherent_prompt_domains || fail coherent_prompt_domains "$n prompts, domains: $domains"

# continuations MODEL [qmoe-run options]: one line of generated ids per
# prompt of $T/prompt_ids ("PROMPT_IDS EXPECTED_IDS" lines)
continuations() {
    local m=$1; shift
    while read -r p e; do
        qmoe-run "$@" -j 1 -n 40 --token-ids "$p" "$m" 2>/dev/null || echo "error"
    done <"$T/prompt_ids"
}
# differing FILE: how many continuations in FILE differ from $T/healthy
differing() { paste -d'|' "$T/healthy" "$1" | awk -F'|' '$1 != $2' | wc -l; }
# ppl MODEL [qmoe-run options]: perplexity of the reference text ($ref,
# vocabulary $vocab) from qmoe-run's logits; the logits stay in $T/logits.f32
ppl() {
    local m=$1; shift
    qmoe-run "$@" -j 1 -n 0 --token-ids "$ref" --logits-out "$T/logits.f32" "$m" \
        >/dev/null 2>"$T/ppl.err" || { echo "error: $(cat "$T/ppl.err")"; return; }
    od -An -v -tf4 -w$((vocab * 4)) "$T/logits.f32" | awk -v ids="$ref" '
        BEGIN { n = split(ids, id, ",") }
        NR < n { mx = $1; for (i = 2; i <= NF; i++) if ($i > mx) mx = $i
                 s = 0; for (i = 1; i <= NF; i++) s += exp($i - mx)
                 nll += mx + log(s) - $(id[NR + 1] + 1); cnt++ }
        END { printf "%.6g", exp(nll / cnt) }'
}
above() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 > b + 0) }'; }

for L in qwen3_omni_moe qwen3_moe; do
    M="$T/$L"
    [ -f "$M/config.json" ] || continue
    "$TOK" prompts "$M" "$QMOE_ROOT/samples/prompts" >"$T/prompt_ids"
    eot=$(echo '<|endoftext|>' | "$TOK" encode "$M")
    awk -v eot="$eot" '{ print $2 "," eot }' "$T/prompt_ids" >"$T/want"
    continuations "$M" >"$T/healthy"
    bad=$(paste -d'|' "$T/want" "$T/healthy" | awk -F'|' '$1 != $2 { print NR ": want " $1 " got " $2 }' | head -3)
    [ -z "$bad" ] && ok "coherent_${L}_greedy_matches_expected" ||
        fail "coherent_${L}_greedy_matches_expected" "$bad"

    # the reference text: every (layer, expert) is some token's first choice
    ref=$("$TOK" encode-all "$M" <"$QMOE_ROOT/samples/reference.txt")
    run qmoe-run -n 0 --token-ids "$ref" --router-log "$T/router.jsonl" "$M"
    expect "coherent_${L}_reference_run" 0
    used=$(sed 's/.*"layer":\([0-9]*\),"experts":\[\([0-9]*\).*/\1 \2/' "$T/router.jsonl" | sort -u | wc -l)
    [ "$used" = 64 ] && ok "coherent_${L}_reference_uses_every_expert" ||
        fail "coherent_${L}_reference_uses_every_expert" "$used of 64 (layer, expert) pairs"

    # perplexity from qmoe-run's logits equals the generator's simulation
    vocab=$(sed 's/.*"vocab_size":\([0-9]*\).*/\1/' "$T/$L.json")
    want_ppl=$(sed 's/.*"perplexity":\([0-9.e+-]*\).*/\1/' "$T/$L.json")
    got_ppl=$(ppl "$M")
    cp "$T/logits.f32" "$T/$L.logits"
    awk -v a="$got_ppl" -v b="$want_ppl" 'BEGIN { exit !(a > 1 && a < 1.5 && (a - b) ^ 2 < 1e-8) }' &&
        ok "coherent_${L}_perplexity" ||
        fail "coherent_${L}_perplexity" "qmoe-run $got_ppl, generator $want_ppl"
    masked_ppl=$(ppl "$M" --mask-experts 0-7)
    above "$masked_ppl" 1e6 && ok "coherent_${L}_masked_perplexity" ||
        fail "coherent_${L}_masked_perplexity" "$masked_ppl"
    echo "# $L: reference perplexity $got_ppl (generator $want_ppl), masked to 0-7: $masked_ppl"
done

# from here on one layout: the router masked to experts 0-7 garbles every
# prompt; an extraction keeps the logits bit for bit; two experts' data
# swapped (names kept) or one expert zeroed in the extracted copy breaks it
M="$T/qwen3_omni_moe"
[ -f "$M/config.json" ] || exit 0
"$TOK" prompts "$M" "$QMOE_ROOT/samples/prompts" >"$T/prompt_ids"
ref=$("$TOK" encode-all "$M" <"$QMOE_ROOT/samples/reference.txt")
vocab=$(sed 's/.*"vocab_size":\([0-9]*\).*/\1/' "$T/qwen3_omni_moe.json")
continuations "$M" >"$T/healthy"
continuations "$M" --mask-experts 0-7 >"$T/masked"
d=$(differing "$T/masked")
[ "$d" = "$(wc -l <"$T/healthy")" ] && ok coherent_masked_garbles_every_prompt ||
    fail coherent_masked_garbles_every_prompt "only $d prompts changed"
echo "# masked 0-7, prompt 1: $(head -1 "$T/masked" | "$TOK" decode "$M")"

run qmoe-extract --no-progress "$M" "$T/x"
expect coherent_extract 0 || exit 0
ppl "$T/x" >/dev/null
check coherent_extracted_logits_identical cmp "$T/logits.f32" "$T/qwen3_omni_moe.logits"

# expert file of expert E, layer L (widths as the extraction chose them)
f0=$(cd "$T/x/experts" && ls | head -1)
ew=${f0#expert_}; ew=${ew%%_*}; lw=${f0#expert_*_layer_}; lw=${lw%%.*}
ef() { printf "%s/experts/expert_%0${#ew}d_layer_%0${#lw}d.safetensors" "$1" "$2" "$3"; }
hdr() { echo $((8 + $(od -An -tu8 -N8 "$1"))); }
head -1 "$T/prompt_ids" >"$T/p1"
first() { # MODEL: the continuation of prompt 1
    qmoe-run -j 1 -n 40 --token-ids "$(cut -d' ' -f1 "$T/p1")" "$1" 2>/dev/null
}

# experts 1 and 5 of layer 1 serve technical tokens (domain group {1,5,9,13});
# their data is exchanged, the headers (tensor names) stay
cp -r "$T/x" "$T/swap"
a=$(ef "$T/swap" 1 1) b=$(ef "$T/swap" 5 1)
ha=$(hdr "$a") hb=$(hdr "$b")
{ head -c "$ha" "$a"; tail -c +$((hb + 1)) "$b"; } >"$T/a.new"
{ head -c "$hb" "$b"; tail -c +$((ha + 1)) "$a"; } >"$T/b.new"
mv "$T/a.new" "$a"; mv "$T/b.new" "$b"
out1=$(first "$T/swap"); p=$(ppl "$T/swap")
[ "$out1" != "$(head -1 "$T/healthy")" ] && ok coherent_swapped_experts_change_output ||
    fail coherent_swapped_experts_change_output "prompt 1 still gives $out1"
above "$p" 1000 && ok coherent_swapped_experts_perplexity ||
    fail coherent_swapped_experts_perplexity "$p"
echo "# experts 1 and 5 of layer 1 swapped: perplexity $p, prompt 1: $(echo "$out1" | "$TOK" decode "$M")"

# expert 10 of layer 2 (technical at layer 2: {2,6,10,14}) zeroed
cp -r "$T/x" "$T/zero"
z=$(ef "$T/zero" 10 2)
hz=$(hdr "$z") size=$(stat -c %s "$z")
{ head -c "$hz" "$z"; head -c $((size - hz)) /dev/zero; } >"$T/z.new"
mv "$T/z.new" "$z"
out1=$(first "$T/zero"); p=$(ppl "$T/zero")
[ "$out1" != "$(head -1 "$T/healthy")" ] && ok coherent_zeroed_expert_changes_output ||
    fail coherent_zeroed_expert_changes_output "prompt 1 still gives $out1"
above "$p" 1000 && ok coherent_zeroed_expert_perplexity ||
    fail coherent_zeroed_expert_perplexity "$p"
echo "# expert 10 of layer 2 zeroed: perplexity $p, prompt 1: $(echo "$out1" | "$TOK" decode "$M")"
