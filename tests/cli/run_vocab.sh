# run_vocab.sh - a generated id that has no token (the model's embedding has
# more rows than the tokenizer has tokens: Qwen3-Omni 152064 vs 151676) is
# printed as a visible placeholder with one warning, never silently dropped;
# --json gives both vocabulary sizes.
. "$(dirname "$0")/lib.sh"
plan 8
F=$FIX/qwen3moe-tiny/qwen3moe
D=$T/gap; mkdir -p "$D"
for f in "$F"/*; do ln -s "$f" "$D/"; done
rm "$D/tokenizer.json"
# Greedy from "hello" generates id 188 second: take its token out.
/usr/bin/python3 - "$F/tokenizer.json" "$D/tokenizer.json" <<'PYEOF'
import json, sys
t = json.load(open(sys.argv[1])); v = t["model"]["vocab"]
s = {i: k for k, i in v.items()}[188]; del v[s]
t["model"]["merges"] = [m for m in t["model"]["merges"]
                        if (m.replace(" ", "") if isinstance(m, str) else "".join(m)) != s]
json.dump(t, open(sys.argv[2], "w"))
PYEOF
run qmoe-run -n 8 --prompt hello "$F"
expect vocab_full_tokenizer 0
[[ "$out" != *"<|id "* ]] && ok vocab_no_placeholder_when_whole || fail vocab_no_placeholder_when_whole "$out"
full=$out
run qmoe-run -n 8 --prompt hello "$D"
expect vocab_gap_runs 0 "warning: generated id 188 has no token (model vocabulary 384, tokenizer 384): printed as <|id 188|>"
[ "$out" = "${full/$'\xEF\xBF\xBD\xEF\xBF\xBD'/$'\xEF\xBF\xBD'<|id 188|>}" ] && ok vocab_gap_placeholder ||
    fail vocab_gap_placeholder "got '$out', whole tokenizer gave '$full'"
[ "$(grep -c 'has no token' "$T/.err")" = 1 ] && ok vocab_gap_warns_once || fail vocab_gap_warns_once "$err"
run qmoe-run -n 8 --json --prompt hello "$D"
expect vocab_json 0 '"generated_ids_without_token":	1' stdout
[[ "$out" == *'"model":	384'* && "$out" == *'"tokenizer":	384'* ]] && ok vocab_json_sizes ||
    fail vocab_json_sizes "$out"
# --detokenize still refuses the id (a gap is an error where ids are input).
run sh -c "echo '[188]' | qmoe-run --detokenize '$D'"
expect vocab_detokenize_refuses_gap 2 "outside the tokenizer's vocabulary"
