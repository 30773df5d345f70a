# run_config.sh - config.json as transformers v4 and v5 write it: the RoPE
# base read from either (v5's rope_parameters gives logits bit-identical to
# the v4 file it was converted from, and within the golden tolerance), and
# every key that would change the numerics without the forward pass
# implementing it refused with exit 2 naming the key.
. "$(dirname "$0")/lib.sh"
plan 23
G=$FIX/qwen3moe-tiny/golden
PY=/usr/bin/python3
ids=$(grep -A1 '"seq3"' "$G/tokens.json" | sed -n 's/.*"ids": \[\(.*\)\].*/\1/p' | tr -d ' ')

# variant NAME LAYOUT PYTHON: a copy of the fixture whose text config `t`
# (a dict) PYTHON edits.
variant() {
    local d="$T/$1"; rm -rf "$d"; mkdir -p "$d"
    for f in "$FIX/qwen3moe-tiny/$2"/*; do ln -s "$f" "$d/"; done
    rm "$d/config.json"
    "$PY" - "$FIX/qwen3moe-tiny/$2/config.json" "$d/config.json" <<PYEOF
import json, sys
c = json.load(open(sys.argv[1]))
t = c["thinker_config"]["text_config"] if "thinker_config" in c else c
$3
json.dump(c, open(sys.argv[2], "w"), indent=1)
PYEOF
}
# To v5: rope_theta and rope_scaling folded into rope_parameters.
V5='sc = t.pop("rope_scaling", None) or {}
p = dict(sc); p.setdefault("rope_type", "default"); p["rope_theta"] = t.pop("rope_theta")
t["rope_parameters"] = p'

for layout in qwen3moe omni; do
    run qmoe-run -n 0 --token-ids "$ids" --logits-out "$T/v4.f32" "$FIX/qwen3moe-tiny/$layout"
    expect "config_${layout}_v4_runs" 0
    variant v5 $layout "$V5"
    grep -q rope_theta "$T/v5/config.json" && ! grep -q '"rope_scaling"' "$T/v5/config.json" &&
        ok "config_${layout}_v5_converted" || fail "config_${layout}_v5_converted"
    run qmoe-run -n 0 --token-ids "$ids" --logits-out "$T/v5.f32" "$T/v5"
    expect "config_${layout}_v5_runs" 0
    cmp -s "$T/v4.f32" "$T/v5.f32" && ok "config_${layout}_v5_logits_identical" ||
        fail "config_${layout}_v5_logits_identical"
    # The control: a v5 file with another theta gives other logits (the key is read).
    variant v5b $layout "$V5
t['rope_parameters']['rope_theta'] = 10000.0"
    run qmoe-run -n 0 --token-ids "$ids" --logits-out "$T/v5b.f32" "$T/v5b"
    expect "config_${layout}_v5_theta_run" 0
    cmp -s "$T/v5.f32" "$T/v5b.f32" && fail "config_${layout}_v5_theta_is_read" "theta 1e4 gave the same logits" ||
        ok "config_${layout}_v5_theta_is_read"
done

# Golden tolerance on the v5 file (the score of run_golden.sh).
paste <(od -An -v -f -w4 "$T/v5.f32") <(od -An -v -f -w4 "$G/logits_seq3.f32") | awk '
    { d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d; g = $2 < 0 ? -$2 : $2; if (g > s) s = g; n++ }
    END { if (s < 1) s = 1; exit !(n > 0 && m / s <= 1e-3) }' &&
    ok config_v5_golden || fail config_v5_golden

# refused NAME PYTHON SUBSTRING: the edit must exit 2 naming it.
refused() {
    variant bad qwen3moe "$2"
    run timeout 20 qmoe-run -n 0 --token-ids "$ids" "$T/bad"
    expect "config_refuses_$1" 2 "$3"
}
refused v5_dynamic "$V5
t['rope_parameters'].update(rope_type='dynamic', factor=4.0)" "rope_parameters.rope_type 'dynamic' is not supported"
refused v4_linear "t['rope_scaling'] = {'rope_type': 'linear', 'factor': 2.0}" "rope_scaling.rope_type 'linear' is not supported"
refused v5_no_theta "$V5
del t['rope_parameters']['rope_theta']" "rope_parameters has no rope_theta"
refused both_disagree "$V5
t['rope_theta'] = 5e5" "disagree"
refused per_layer_type "t['rope_parameters'] = {'full_attention': {'rope_type': 'default', 'rope_theta': 1e6}}" "per-layer-type"
refused theta_negative "t['rope_theta'] = -1" "rope_theta -1 is not above 1"
refused sliding "t['use_sliding_window'] = True; t['sliding_window'] = 64" "use_sliding_window true"
refused layer_types "t['layer_types'] = ['sliding_attention'] * t['num_hidden_layers']" "layer_types holds 'sliding_attention'"
refused act "t['hidden_act'] = 'gelu'" "hidden_act 'gelu' is not supported"
refused bias "t['attention_bias'] = True" "attention_bias true is not supported"
