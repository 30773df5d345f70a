#!/usr/bin/env bash
# coherence.sh - qmoe-verify --coherence, the forward-pass gate, on the
# coherent sample (qmoe-mksample --coherent): it passes on a correct
# extraction in both layouts and with --source; it fails (exit 1) with a
# line naming the criterion for: the router masked to experts 0-7, two
# expert files' data exchanged (manifest regenerated, so every file check
# passes), one expert zeroed (likewise), the random-weight sample, logits
# that differ from the source; a partial extraction is not run; bad
# options and files exit 2.
. "$(dirname "$0")/lib.sh"
plan 68
TOOLS="$QMOE_BUILD/tests/tools"
V="qmoe-verify -j 1 --coherence"   # one thread: the sample is tiny
# has NAME TEXT : the last run's stdout contains TEXT
has() { if [[ "$out" == *"$2"* ]]; then ok "$1"; else fail "$1" "stdout lacks '$2': $(head -c 800 "$T/.out")"; fi; }
lacks() { if [[ "$out" != *"$2"* ]]; then ok "$1"; else fail "$1" "stdout has '$2': $(head -c 800 "$T/.out")"; fi; }

# -- 1. healthy: both layouts pass (text output for the one, --source for
# it too: logits bit-identical to the original checkpoint's; --json for the
# other); every continuation is the expected one
for L in qwen3_omni_moe qwen3_moe; do
    qmoe-mksample --coherent --layout $L "$T/src_$L" >/dev/null &&
        qmoe-extract --no-progress "$T/src_$L" "$T/$L" >/dev/null ||
        fail "$L-setup" "mksample or extract failed"
done
X="$T/qwen3_omni_moe" SRC="$T/src_qwen3_omni_moe"
[ -f "$X/qmoe.json" ] && [ -f "$T/qwen3_moe/qmoe.json" ] || exit 0
run $V --source "$SRC" "$X"
expect omni-passes 0 $'\nOK' stdout
has omni-source "(a) source: logits of 4 prompts bit-identical to the source  ok"
has omni-continuations-match "16 of 16 begin with the expected text"
has omni-vocab-sizes "top-2, vocabulary 960 (tokenizer 911)"
has omni-peak-memory "s, peak resident memory "
# each step of the gate is reported on stderr as it starts
k=0
for step in "prompt set: 16 prompts, " "source: prompt 4 of 4 [multilingual], 5 tokens" \
            "prompt set: 16 prompts, 167 tokens with the expected texts, and the reference text, 199 tokens in 1 window, in one batch" \
            "ablation: perplexity with the router masked to 0-7, 199 tokens in one batch"; do
    k=$((k + 1))
    [[ "$err" == *"qmoe-verify: coherence: $step"* ]] && ok "omni-progress-$k" ||
        fail "omni-progress-$k" "stderr lacks '$step': $(head -c 400 "$T/.err")"
done
has omni-perplexity "(199 tokens): 1.2337"
has omni-router-free "      layer  3:  16/16 chosen  ok"
has omni-ablation "ablation, router masked to 0-7: 9.1"
has omni-shows-text "[multilingual] Der schnelle Zug fährt heute ->  pünktlich nach München. <end>  (as expected)"
# per domain, the experts carrying the router weight are the domain's own:
# technical owns {0,4,8,12} at layer 0 and {1,5,9,13} at layer 1
has omni-domain-experts "technical        0:0,4,12        1:5,9,1         2:10,14,2"

run $V --json "$T/qwen3_moe"
expect qwen3_moe-passes 0 '"status":	"ok"' stdout
has json-no-failures '"failures":	[]'
has json-ppl '"ppl":	1.2337'
has json-max-ppl '"max_ppl":	100'
has json-matches '"matching":	16'
has json-router '"threshold":	8'
has json-domain '"domain":	"multilingual"'
has json-source-unchecked '"checked":	false'

# -- 2. the seed's mistake: the router masked to experts 0-7
run $V --mask-experts 0-7 "$X"
expect masked-fails 1 "coherence: (c) router: confined: 4 of 4 MoE layers (0-3) chose at most 8 of 16 experts across the prompt set (needs more than 8); layer 0 used only experts 0-7" stdout
has masked-perplexity "coherence: (b) perplexity: 9.1"
has masked-garbled "0 of 16 begin with the expected text"
# criterion (c) alone: any perplexity allowed
run $V --json --mask-experts 0-7 --max-ppl 1e300 "$X"
expect masked-router-alone 1 '"criterion":	"router"' stdout
lacks masked-router-alone-no-ppl '"criterion":	"perplexity"'
has masked-json-message '"message":	"(c) router: confined'

# -- 3. experts 1 and 5 of layer 1 exchanged, manifest regenerated
hdr() { echo $((8 + $(od -An -tu8 -N8 "$1"))); }
ef() { printf "%s/experts/expert_%02d_layer_%02d.safetensors" "$1" "$2" "$3"; }
cp -r "$X" "$T/swap"
a=$(ef "$T/swap" 1 1) b=$(ef "$T/swap" 5 1)
ha=$(hdr "$a") hb=$(hdr "$b")
{ head -c "$ha" "$a"; tail -c +$((hb + 1)) "$b"; } >"$T/a.new"
{ head -c "$hb" "$b"; tail -c +$((ha + 1)) "$a"; } >"$T/b.new"
mv "$T/a.new" "$a"; mv "$T/b.new" "$b"
"$TOOLS/stmutate" remanifest "$T/swap" "${a#$T/swap/}" &&
    "$TOOLS/stmutate" remanifest "$T/swap" "${b#$T/swap/}"
run qmoe-verify -j 1 "$T/swap"
expect swapped-files-pass 0
run $V "$T/swap"
expect swapped-fails 1 "coherence: (b) perplexity: 2.29" stdout
has swapped-one-problem "FAILED: 1 problem"
# teacher forcing: the technical prompts (layer 1's experts 1 and 5 are
# technical's) no longer continue as expected, the others still do
run $V --json "$T/swap"
has swapped-matches '"matching":	12'

# -- 4. expert 10 of layer 2 zeroed, manifest regenerated
cp -r "$X" "$T/zero"
z=$(ef "$T/zero" 10 2)
hz=$(hdr "$z") size=$(stat -c %s "$z")
{ head -c "$hz" "$z"; head -c $((size - hz)) /dev/zero; } >"$T/z.new"
mv "$T/z.new" "$z"
"$TOOLS/stmutate" remanifest "$T/zero" "${z#$T/zero/}"
run qmoe-verify -j 1 "$T/zero"
expect zeroed-files-pass 0
# with the source, (a) sees the logits differ too
run $V --source "$SRC" "$T/zero"
expect zeroed-fails 1 "coherence: (b) perplexity: 106" stdout
has zeroed-source-fails "coherence: (a) source: logits differ from the source '$SRC': prompt 1, position 0 first"

# -- 5. random weights (qmoe-mksample's default model): (b) fails
qmoe-mksample "$T/rnd_src" >/dev/null && qmoe-extract --no-progress "$T/rnd_src" "$T/rnd" >/dev/null
run $V "$T/rnd"
expect random-fails 1 "coherence: (b) perplexity: 387.9" stdout
has random-bound "(at most 96)"
has random-router-free "(c) router: each MoE layer must choose more than 4 of 8 experts"
has random-no-ablation "ablation: not run (8 experts"

# -- 6. a partial extraction: the gate needs every expert
qmoe-extract --no-progress --experts 0-7 "$SRC" "$T/part" >/dev/null
run $V "$T/part"
expect partial-not-run 1 "coherence: not run: the forward pass needs every expert, and the extraction is partial" stdout

# -- 7. own text and prompts; prompts without "expected"
printf 'The router sends every token to two experts chosen by softmax scores.<|endoftext|>\n' >"$T/one.txt"
printf '{"domain":"technical","prompt":"The router sends every token"}\n\n{"domain":"creative","prompt":"Her violin carried autumn"}\n' >"$T/p.jsonl"
# (without expected text a continuation is --gen-tokens long: 4 by default)
run $V --gen-tokens 32 --text "$T/one.txt" --prompts "$T/p.jsonl" "$X"
expect own-files 1 "(b) perplexity of '$T/one.txt' (15 tokens): 1 (at most 100)  ok" stdout
has own-prompts "greedy continuations (2 prompts)"
has own-prompt-output "[creative] Her violin carried autumn ->  through empty streets until dawn arrived. <end>"$'\n'
# 2 short prompts without expected text route their 9 tokens: too few to
# show more than 8 experts in use in layer 0, where these two domains own 8
# experts between them
has own-prompts-router "(c) router: each MoE layer must choose more than 8 of 16 experts over the prompt set (9 tokens)  FAILED"
has own-prompts-layer0 "coherence: (c) router: confined: 1 of 4 MoE layers (0) chose at most 8 of 16 experts"

# --gen-tokens N: every continuation stops at N tokens, and the routed
# tokens are the prompts' (and expected texts') only, whatever N
run $V --json --gen-tokens 3 --text "$T/one.txt" --prompts "$T/p.jsonl" "$X"
n3=$(grep -cE '"output_tokens":[[:space:]]*3,' "$T/.out")
[ "$n3" = 2 ] && ok gen-tokens-3 || fail gen-tokens-3 "want 2 prompts of 3 output tokens, got $n3"
has gen-tokens-routed '"routed_tokens":	9'

# by default 4 tokens, unless teacher forcing chose more (the full
# expected text and the end of text of the coherent sample, above)
run $V --json --text "$T/one.txt" --prompts "$T/p.jsonl" "$X"
n4=$(grep -cE '"output_tokens":[[:space:]]*4,' "$T/.out")
[ "$n4" = 2 ] && ok gen-tokens-default || fail gen-tokens-default "want 2 prompts of 4 output tokens, got $n4"
has gen-tokens-default-json '"gen_limited":	false'

# a model larger than the memory available: by default only the token
# teacher forcing chose (no step that would read the model again), said so;
# --gen-tokens N still generates N
QMOE_TEST_MEMORY_BYTES=1000 run $V --json --text "$T/one.txt" --prompts "$T/p.jsonl" "$X"
n1=$(grep -cE '"output_tokens":[[:space:]]*1,' "$T/.out")
[ "$n1" = 2 ] && ok gen-limited || fail gen-limited "want 2 prompts of 1 output token, got $n1"
has gen-limited-json '"gen_limited":	true'
has gen-limited-tokens '"gen_tokens":	1,'
has gen-limited-memory '"memory_bytes":	1000,'
wb=$(sed -n 's/.*"weights_bytes":[[:space:]]*\([0-9]*\),.*/\1/p' "$T/.out")
fb=$(find "$X" -name '*.safetensors' ! -path '*/other/*' -printf '%s\n' | awk '{ s += $1 } END { print s }')
[ -n "$wb" ] && [ "$wb" -gt 0 ] && [ "$wb" -le "$fb" ] && ok gen-limited-weights ||
    fail gen-limited-weights "weights_bytes '$wb' not in (0, $fb] (the model's files)"
QMOE_TEST_MEMORY_BYTES=1000 run $V --text "$T/one.txt" --prompts "$T/p.jsonl" "$X"
has gen-limited-text "    the tokens teacher forcing chose: the model's files ("
has gen-limited-text-memory ") are larger than the memory available (1.0 kB), each generated token would read them again (--gen-tokens N generates N)"
QMOE_TEST_MEMORY_BYTES=1000 run $V --json --gen-tokens 3 --text "$T/one.txt" --prompts "$T/p.jsonl" "$X"
n3=$(grep -cE '"output_tokens":[[:space:]]*3,' "$T/.out")
[ "$n3" = 2 ] && ok gen-limited-asked || fail gen-limited-asked "want 2 prompts of 3 output tokens, got $n3"
has gen-limited-asked-json '"gen_limited":	false'

# before the gate, the files are hashed from the last layer to the first
# (each layer's experts, last first, then its layer file), so that a model
# larger than memory still has the gate's first layers in the page cache;
# without --coherence in path order
order() { # the layer of each expert or layer file as first opened
    strace -f -e trace=openat -o "$T/trace" "$@" >/dev/null 2>&1 || true
    grep -oE '(experts/expert_[0-9]+_layer_|layers/layer_)[0-9]+\.safetensors' "$T/trace" |
        awk '!seen[$0]++' | sed -E 's/.*_([0-9]+)\.safetensors/\1/' | tr '\n' ' '
}
if command -v strace >/dev/null; then
    got=$(order $QMOE_BIN/qmoe-verify -j 1 --coherence "$X")
    want=$(for l in 03 02 01 00; do for _ in $(seq 17); do printf '%s ' $l; done; done)
    [ "$got" = "$want" ] && ok hash-gate-order || fail hash-gate-order "layers as opened: '$got', want '$want'"
    first=$(grep -oE 'experts/expert_[0-9]+_layer_[0-9]+\.safetensors' "$T/trace" | head -n 1)
    [ "$first" = experts/expert_15_layer_03.safetensors ] && ok hash-gate-order-first ||
        fail hash-gate-order-first "first expert file hashed: '$first'"
    got=$(order $QMOE_BIN/qmoe-verify -j 1 "$X")
    want=$(for e in $(seq 0 15); do printf '00 01 02 03 '; done; printf '00 01 02 03 ')
    [ "$got" = "$want" ] && ok hash-path-order || fail hash-path-order "layers as opened: '$got', want '$want'"
else
    fail hash-gate-order "strace is not installed (tests need it: see .ci/run)"
fi

# -- 8. errors in the gate's own input: exit 2
run $V --gen-tokens 0 "$X"
expect bad-gen-tokens 2 "--gen-tokens wants a number of tokens in [1, 4096]"
run qmoe-verify --text "$T/one.txt" "$X"
expect text-needs-coherence 2 "need --coherence"
run $V --max-ppl -3 "$X"
expect bad-max-ppl 2 "--max-ppl wants a positive number"
run $V --text "$T/none.txt" "$X"
expect missing-text 2 "coherence: cannot run the gate: cannot read reference text '$T/none.txt'" stdout
echo '{"domain":"x"}' >"$T/bad.jsonl"
run $V --prompts "$T/bad.jsonl" "$X"
expect bad-prompts 2 "cannot parse prompt set '$T/bad.jsonl': line 1: \"prompt\" is not a string" stdout
run $V --mask-experts 0-40 "$X"
expect bad-mask 2 "coherence: cannot run the gate: --mask-experts '0-40': 40 is out of range (0-15)" stdout
QMOE_DATA="$T/nowhere" run $V "$X"
expect data-dir-env 2 "cannot read prompt set '$T/nowhere/prompts'" stdout
