#!/usr/bin/env bash
# make demo: the main job on an embedded sample, start to finish.
#   1. qmoe-mksample writes an Omni-shaped checkpoint (48 layers x 128 experts)
#   2. qmoe-extract --detach splits it in the background
#   3. qmoe-status shows it while it runs, then when it is done
#   4. qmoe-verify proves coverage and integrity against the source
#   5. qmoe-run generates from the coherent sample model's extraction
#   6. router statistics by domain, and the report: DIR/index.html
#   7. expert plans from the technical sentences, perplexities side by side,
#      and the 4-expert model written by qmoe-pack
set -eu
: "${QMOE_BUILD:?}"
B="$QMOE_BUILD/bin"
D="${DEMO_DIR:-$PWD/demo-out}"
rm -rf "$D"; mkdir -p "$D"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*" | sed "s|$B/||g" >&2; "$@"; }

step "$B/qmoe-mksample" --layers 48 --experts 128 "$D/omni-src"
QMOE_THROTTLE_MS=${QMOE_THROTTLE_MS:-2} step "$B/qmoe-extract" --detach "$D/omni-src" "$D/omni"
sleep 1
step "$B/qmoe-status" "$D/omni" || true
step "$B/qmoe-status" --watch=1 "$D/omni" || true
step "$B/qmoe-verify" --source "$D/omni-src" "$D/omni"

if [ -x "$B/qmoe-run" ] && "$B/qmoe-mksample" --help | grep -q -- --coherent; then
    step "$B/qmoe-mksample" --coherent "$D/coherent-src"
    step "$B/qmoe-extract" --no-progress "$D/coherent-src" "$D/coherent"
    step "$B/qmoe-verify" --coherence --source "$D/coherent-src" "$D/coherent"
    step "$B/qmoe-run" --prompt "The router sends every token" "$D/coherent"
    step "$B/qmoe-run" --mask-experts 0-7 --prompt "The router sends every token" "$D/coherent"
    step "$B/qmoe-run" --router-stats "$(dirname "$0")/corpus.jsonl" "$D/coherent"
    step "$B/qmoe-verify" --coherence --report "$D/report" "$D/coherent" | tail -n 2
    # The seed's fix: keep the experts the router uses on your text (here the
    # technical sentences), not the first N; then write the smaller model.
    S="$(dirname "$0")"
    grep '"technical"' "$S/corpus.jsonl" >"$D/tech.jsonl"
    head -4 "$S/reference.txt" >"$D/tech.txt"
    for by in frequency weight reap; do
        step "$B/qmoe-run" --router-stats "$D/tech.jsonl" --keep 4 --by $by \
            --plan-out "$D/plan-$by.json" "$D/coherent" >/dev/null
    done
    ppl() { "$B/qmoe-run" --perplexity "$D/tech.txt" "$@" "$D/coherent" 2>/dev/null | head -1; }
    echo >&2
    echo "technical text, 4 of 16 experts per layer:" >&2
    printf '  %-26s %s\n' "all 16 experts" "$(ppl)" \
        "plan by frequency" "$(ppl --keep-experts "$D/plan-frequency.json")" \
        "plan by weight" "$(ppl --keep-experts "$D/plan-weight.json")" \
        "plan by reap" "$(ppl --keep-experts "$D/plan-reap.json")" \
        "first 4 (the seed's mask)" "$(ppl --mask-experts 0-3)" >&2
    step "$B/qmoe-pack" --no-progress --as qwen3_moe --keep-experts "$D/plan-reap.json" \
        "$D/coherent-src" "$D/tech4"
    step "$B/qmoe-run" --prompt "The router sends every token" "$D/tech4"
fi
echo
echo "demo output is in $D"
[ -f "$D/report/index.html" ] && echo "report: $D/report/index.html (open it in a browser)"
