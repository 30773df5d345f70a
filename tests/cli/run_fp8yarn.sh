# run_fp8yarn.sh - the forward pass on the FP8 and YaRN fixtures of
# tests/fixtures/fp8yarn against their golden outputs (a float64 PyTorch
# reference written from transformers' definitions, not from qmoe): from
# the Hugging Face checkpoint and from its extraction (DeepSeek's keeps its
# MTP block, which the forward pass ignores), full and masked to experts
# 0-3, prompt logits within 1e-3 of max(1, max |golden|), greedy
# continuations identical; FP8 experts also read into the cache (--expert-io
# read). Negative controls: YaRN ignored, DeepSeek's mscale_all_dim dropped
# (no softmax mscale^2, another cos/sin factor), or mscales swapped miss the
# golden by far more than the tolerance. Router statistics (--router-stats,
# free and masked) choose the golden experts for every token and layer. A scale of the wrong shape or a
# missing scale, on a dense weight or an expert, fails naming the tensor.
. "$(dirname "$0")/lib.sh"
plan 240
F=$FIX/fp8yarn

worst=$T/worst.txt
: >"$worst"
for fx in dsv3-fp8 qwen3moe-fp8 dsv3-yarn dsv3-yarn-mscale qwen3moe-yarn; do
    G=$F/$fx/golden
    run qmoe-extract --no-progress "$F/$fx/hf" "$T/$fx"
    expect "${fx}_extract" 0
    for src in hf out; do
        dir=$F/$fx/hf; [ $src = out ] && dir=$T/$fx
        for mode in full masked; do
            golden_seqs "${fx}_${src}_${mode}" "$fx $mode $src" "$dir" "$G" $mode "$worst"
        done
    done
    case $fx in *-fp8)
        # through the cache's own buffers instead of mappings
        run qmoe-run --expert-io read --ignore-eos -n 16 --token-ids "$(golden_ids "$G" 3)" \
            --logits-out "$T/l.f32" "$T/$fx"
        expect "${fx}_read_run" 0 || continue
        sc=$(score "$T/l.f32" "$G/logits_seq3.f32")
        within "$sc" 1e-3 && ok "${fx}_read_logits" || fail "${fx}_read_logits" "score $sc > 1e-3"
        w=$(golden_want "$G" 3 torch_ref)
        [ "$out" = "$w" ] && ok "${fx}_read_greedy" || fail "${fx}_read_greedy" "got $out, golden $w"
    esac
done
# the worst normalised difference per fixture, routing and source (for the notes)
sort -k1,3 -k4g "$worst" | awk '{ w[$1 " " $2 " " $3] = $4 } END { for (k in w) print "# worst " k " " w[k] }' | sort

# Router statistics: --router-stats over a corpus of the golden sequences
# whose text tokenizes back to their ids (DeepSeek's seq1-3, Qwen's seq2-3;
# checked first), free and masked to experts 0-3. Every token's chosen
# experts (in selection order) equal router_[masked_]seqK.json, weights
# within 1e-5, and the statistics count tokens x top-k picks per layer.
routes_cmp() { # LOG GOLDEN_DIR TAG SEQ...: prints "ok" or the first difference
    /usr/bin/python3 - "$@" <<'PYEOF'
import json, sys
log, gdir, tag, seqs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
got = {}
for line in open(log):
    r = json.loads(line)
    got[(r["line"], r["pos"], r["layer"])] = (r["experts"], r["weights"])
n, bad = 0, None
for i, s in enumerate(seqs, 1):
    g = json.load(open(f"{gdir}/router_{tag}seq{s}.json"))
    for L in g["layers"]:
        for t, (e, w) in enumerate(zip(L["experts"], L["weights"])):
            n += 1
            k = (i, t, L["layer"])
            if k not in got:
                bad = bad or f"no log line for seq{s} pos {t} layer {L['layer']}"
            elif got[k][0] != e or max(abs(a - b) for a, b in zip(got[k][1], w)) > 1e-5:
                bad = bad or f"seq{s} pos {t} layer {L['layer']}: {got[k]} vs golden {e} {w}"
if len(got) != n:
    bad = bad or f"{len(got)} log lines, golden {n}"
print(bad or f"ok {n}")
PYEOF
}
for fx in dsv3-fp8 qwen3moe-fp8 dsv3-yarn dsv3-yarn-mscale qwen3moe-yarn; do
    G=$F/$fx/golden
    case $fx in dsv3*) seqs="1 2 3";; *) seqs="2 3";; esac
    : >"$T/corpus.jsonl"; tokbad=
    for s in $seqs; do
        text=$(jq -r ".sequences.seq$s.text" "$G/tokens.json")
        ids=$(printf %s "$text" | qmoe-run --tokenize "$F/$fx/hf" | tr -d ' \n[]')
        [ "$ids" = "$(golden_ids "$G" "$s")" ] || tokbad="seq$s: $ids"
        jq -cn --arg d "seq$s" --arg t "$text" '{domain: $d, text: $t}' >>"$T/corpus.jsonl"
    done
    [ -z "$tokbad" ] && ok "${fx}_corpus_tokens" || fail "${fx}_corpus_tokens" "$tokbad"
    ntok=0; for s in $seqs; do ntok=$((ntok + $(jq ".sequences.seq$s.ids | length" "$G/tokens.json"))); done
    k=$(jq '.num_experts_per_tok' "$F/$fx/hf/config.json")
    for mode in free masked; do
        mask=(); tag=; [ $mode = masked ] && { mask=(--mask-experts 0-3); tag=masked_; }
        run qmoe-run --router-stats "$T/corpus.jsonl" --json --router-log "$T/r.log" \
            "${mask[@]}" "$F/$fx/hf"
        expect "${fx}_router_stats_${mode}" 0 || continue
        r=$(routes_cmp "$T/r.log" "$G" "$tag" $seqs)
        [[ $r == ok* ]] && ok "${fx}_router_golden_${mode}" || fail "${fx}_router_golden_${mode}" "$r"
        picks=$(echo "$out" | jq -c '[.layers[].picks] | unique')
        [ "$picks" = "[$((ntok * k))]" ] && ok "${fx}_router_picks_${mode}" ||
            fail "${fx}_router_picks_${mode}" "$picks, want [$((ntok * k))] per layer"
    done
done

# control FIXTURE NAME JQ: the fixture's checkpoint with one config change
# must miss the golden seq3 by more than 10x the tolerance.
control() {
    local fx=$1 name=$2 expr=$3 G=$F/$1/golden
    rm -rf "$T/ctl"; mkdir -p "$T/ctl"
    cp "$F/$fx/hf"/* "$T/ctl/"
    chmod u+w "$T/ctl/config.json"
    jq "$expr" "$F/$fx/hf/config.json" >"$T/ctl/config.json"
    if cmp -s "$T/ctl/config.json" "$F/$fx/hf/config.json"; then
        fail "${fx}_catches_$name" "the change changed nothing"; return
    fi
    run qmoe-run -n 0 --token-ids "$(golden_ids "$G" 3)" --logits-out "$T/l.f32" "$T/ctl"
    expect "${fx}_${name}_run" 0 || return
    sc=$(score "$T/l.f32" "$G/logits_seq3.f32")
    awk -v s="$sc" 'BEGIN { exit !(s != "nan" && s >= 1e-2) }' && ok "${fx}_catches_$name" ||
        fail "${fx}_catches_$name" "score $sc"
}
control dsv3-yarn yarn_ignored '.rope_scaling = null'
control dsv3-yarn no_mscale_all_dim 'del(.rope_scaling.mscale_all_dim)'
control dsv3-yarn-mscale mscales_swapped '.rope_scaling.mscale = 0.707 | .rope_scaling.mscale_all_dim = 1.0'
control qwen3moe-yarn yarn_ignored '.rope_scaling = null'

# a rope type the pass does not implement is refused by name
rm -rf "$T/ctl"; mkdir -p "$T/ctl"; cp "$F/dsv3-yarn/hf"/* "$T/ctl/"; chmod u+w "$T/ctl/config.json"
jq '.rope_scaling.type = "dynamic"' "$F/dsv3-yarn/hf/config.json" >"$T/ctl/config.json"
run qmoe-run -n 0 --token-ids 1,2 "$T/ctl"
expect dsv3-yarn_dynamic_refused 2 "rope_scaling.type 'dynamic' is not supported"

# FP8 refusals. broken FIXTURE: a copy of its checkpoint to damage.
broken() {
    rm -rf "$T/bad"; mkdir -p "$T/bad"; cp "$F/$1/hf"/* "$T/bad/"; chmod -R u+w "$T/bad"
}
# drop_tensor FILE NAME: FILE rewritten without NAME (and the index
# without it), data packed again.
drop_tensor() {
    /usr/bin/python3 - "$T/bad" "$1" "$2" <<'PYEOF'
import json, struct, sys
d, fname, name = sys.argv[1:]
b = open(f"{d}/{fname}", "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n]); base = 8 + n
meta = h.pop("__metadata__", None)
del h[name]
out, data = {}, b""
for k, v in sorted(h.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    s, e = v["data_offsets"]
    out[k] = dict(v, data_offsets=[len(data), len(data) + e - s])
    data += b[base + s:base + e]
if meta is not None:
    out["__metadata__"] = meta
hb = json.dumps(out).encode(); hb += b" " * (-len(hb) % 8)
open(f"{d}/{fname}", "wb").write(struct.pack("<Q", len(hb)) + hb + data)
ix = json.load(open(f"{d}/model.safetensors.index.json"))
del ix["weight_map"][name]
json.dump(ix, open(f"{d}/model.safetensors.index.json", "w"))
PYEOF
}
TOOLS=$QMOE_BUILD/tests/tools
W=model.layers.0.self_attn.kv_a_proj_with_mqa.weight
broken dsv3-fp8
"$TOOLS/stmutate" reshape "$T/bad/model-00001-of-00004.safetensors" "${W}_scale_inv" 4,3
run qmoe-run -n 0 --token-ids 1,2 "$T/bad"
expect dsv3-fp8_reshaped_scale_refused 2 \
    "scale '${W}_scale_inv' has shape [4, 3], but weight [40, 64] in 16x16 blocks needs [3, 4]"
W=model.layers.0.self_attn.q_a_proj.weight
broken dsv3-fp8
drop_tensor model-00001-of-00004.safetensors "${W}_scale_inv"
run qmoe-run -n 0 --token-ids 1,2 "$T/bad"
expect dsv3-fp8_missing_scale_refused 2 "FP8 weight '$W' has no '${W}_scale_inv'"
broken dsv3-fp8
jq 'del(.quantization_config)' "$F/dsv3-fp8/hf/config.json" >"$T/bad/config.json"
run qmoe-run -n 0 --token-ids 1,2 "$T/bad"
expect dsv3-fp8_no_quantization_config_refused 2 \
    "tensor 'model.layers.0.self_attn.q_a_proj.weight' is F8_E4M3 but"
# experts (top 4 of 0-3: expert 0 is loaded), when the store reads them
W=model.layers.0.mlp.experts.0.gate_proj.weight
broken qwen3moe-fp8
"$TOOLS/stmutate" reshape "$T/bad/model-00001-of-00003.safetensors" "${W}_scale_inv" 1,4
run qmoe-run --mask-experts 0-3 -n 0 --token-ids 1,2 "$T/bad"
expect qwen3moe-fp8_expert_reshaped_scale_refused 2 \
    "cannot load expert (layer 0, expert 0): '$T/bad/model-00001-of-00003.safetensors': scale '${W}_scale_inv' has shape [1, 4]"
W=model.layers.1.mlp.experts.0.gate_proj.weight
broken qwen3moe-fp8
drop_tensor model-00002-of-00003.safetensors "${W}_scale_inv"
run qmoe-run --mask-experts 0-3 -n 0 --token-ids 1,2 "$T/bad"
expect qwen3moe-fp8_expert_missing_scale_refused 2 \
    "cannot load expert (layer 1, expert 0): '$T/bad/model-00002-of-00003.safetensors': FP8 weight '$W' has no '${W}_scale_inv'"
