# run_text.sh - qmoe-run with text: --prompt, --chat, --perplexity,
# --tokenize/--detokenize (--jsonl), and their error cases. Independent
# references: ids through --token-ids, log-softmax of --logits-out computed
# here in python3, the golden PyTorch nll of tests/fixtures/qwen3moe-tiny,
# the real Qwen3 tokenizer's expected ids.
. "$(dirname "$0")/lib.sh"
plan 78
M=$FIX/qwen3moe-tiny/qwen3moe
G=$FIX/qwen3moe-tiny/golden
Q=$FIX/qwen3-tokenizer

# py EXPR FILE... : evaluates a python3 expression with json, math, sys
# loaded and the files' text in a (list); prints the result.
py() {
    local e=$1; shift
    python3 -c "import json, math, sys, struct, unicodedata
a = [open(f, encoding='utf-8').read() for f in sys.argv[1:]]
print($e)" "$@"
}

# ---- --prompt: the same ids as --token-ids of the tokenized prompt ----
printf 'Hello world, the best of times' >"$T/p.txt"
run qmoe-run --tokenize "$M" <"$T/p.txt"
expect prompt_tokenize 0 && ids=$(py 'json.loads(a[0])' "$T/.out" | tr -d '[] ')
run qmoe-run --prompt "$(cat "$T/p.txt")" -n 12 --ignore-eos -j 2 --json "$M"
expect prompt_json 0 && cp "$T/.out" "$T/prompt.json"
run qmoe-run --token-ids "$ids" -n 12 --ignore-eos -j 2 --json "$M"
expect prompt_token_ids 0 && cp "$T/.out" "$T/ids.json"
r=$(py '(json.loads(a[0])["prompt_ids"] == json.loads(a[1])["prompt_ids"],
         json.loads(a[0])["generated_ids"] == json.loads(a[1])["generated_ids"],
         len(json.loads(a[0])["generated_ids"]))' "$T/prompt.json" "$T/ids.json")
[ "$r" = "(True, True, 12)" ] && ok prompt_same_ids_as_token_ids ||
    fail prompt_same_ids_as_token_ids "$r"
# the streamed text is the decoding of the generated ids, newline-terminated
run qmoe-run --prompt "$(cat "$T/p.txt")" -n 12 --ignore-eos -j 2 "$M"
expect prompt_text 0 && cp "$T/.out" "$T/text.txt"
py 'json.dumps(json.loads(a[0])["generated_ids"])' "$T/ids.json" >"$T/gen.jsonl"
run qmoe-run --detokenize --jsonl "$M" <"$T/gen.jsonl"
expect prompt_detokenize 0 && cp "$T/.out" "$T/gen.txt"
r=$(py 'a[0] == json.loads(a[1]) + "\n" == json.loads(a[2])["generated_text"] + "\n"' \
    "$T/text.txt" "$T/gen.txt" "$T/prompt.json")
[ "$r" = True ] && ok prompt_streamed_text || fail prompt_streamed_text "$(cat "$T/text.txt")"
# a prompt beyond ASCII is taken as the bytes given, whatever the locale,
# and tokenized as --tokenize does; bytes that are not UTF-8 are refused
printf 'Der schnelle Zug f\303\244hrt heute \346\210\221\344\273\254' >"$T/de.txt"
run qmoe-run --tokenize "$M" <"$T/de.txt"
expect prompt_utf8_tokenize 0 && de_ids=$(py 'json.loads(a[0])' "$T/.out" | tr -d '[] ')
LC_ALL=C LANG= run qmoe-run --prompt "$(cat "$T/de.txt")" -n 2 --json "$M"
expect prompt_utf8_c_locale 0
r=$(py '",".join(map(str, json.loads(a[0])["prompt_ids"]))' "$T/.out")
[ "$r" = "$de_ids" ] && ok prompt_utf8_ids || fail prompt_utf8_ids "'$r' vs --tokenize '$de_ids'"
LC_ALL=C.UTF-8 run qmoe-run --prompt "$(cat "$T/de.txt")" -n 2 --json "$M"
expect prompt_utf8_utf8_locale 0
run qmoe-run --prompt $'ab\xffcd' -n 2 "$M"
expect prompt_not_utf8 2 "qmoe-run: --prompt: text is not valid UTF-8 at byte 2"
# sampling: --prompt and --token-ids agree with the same seed too
run qmoe-run --prompt "$(cat "$T/p.txt")" -n 8 --temperature 1.5 --seed 11 -j 2 --json "$M"
a=$(py 'json.loads(a[0])["generated_ids"]' "$T/.out")
run qmoe-run --token-ids "$ids" -n 8 --temperature 1.5 --seed 11 -j 2 --json "$M"
b=$(py 'json.loads(a[0])["generated_ids"]' "$T/.out")
[ "$a" = "$b" ] && ok prompt_sampled_same_ids || fail prompt_sampled_same_ids "$a vs $b"

# ---- --chat: ChatML around the prompt ----
printf '<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n' >"$T/chatml.txt"
run qmoe-run --tokenize "$M" <"$T/chatml.txt"
expect chat_tokenize 0 && cp "$T/.out" "$T/chatml.ids"
run qmoe-run --chat --prompt "Hi there" -n 2 -j 2 --json "$M"
expect chat_run 0
# <|im_start|> and <|im_end|> are special tokens (382, 383), not text
r=$(py 'json.loads(a[0])["prompt_ids"] == json.loads(a[1]), json.loads(a[1])[0], json.loads(a[1]).count(383)' \
    "$T/.out" "$T/chatml.ids")
[ "$r" = "True 382 1" ] && ok chat_prompt_ids || fail chat_prompt_ids "$r"

# Stopping: in a copy of the model whose generation_config.json has no eos
# ids and whose tokenizer_config.json names <|endoftext|> (381), --chat still
# stops at <|im_end|> (383), and at 381 through tokenizer_config.json.
C=$T/chatmodel; mkdir -p "$C"
for f in "$M"/*; do ln -s "$f" "$C/"; done
rm "$C/generation_config.json" "$C/tokenizer_config.json"
printf '{"eos_token_id": []}\n' >"$C/generation_config.json"
sed 's/"eos_token": "<|im_end|>"/"eos_token": "<|endoftext|>"/' "$M/tokenizer_config.json" \
    >"$C/tokenizer_config.json"
# the sampled continuations without stopping; find a seed whose first end
# id is 383 and one whose first is 381 (the tiny model never picks them
# greedily: their logits are small)
s383= s381=
for s in $(seq 1 40); do
    qmoe-run --chat --prompt "Hi" -n 40 --temperature 3 --seed "$s" --ignore-eos -j 2 --json \
        "$C" 2>/dev/null >"$T/free.json" || break
    first=$(py '[i for i in json.loads(a[0])["generated_ids"] if i in (381, 383)][:1]' "$T/free.json")
    if [ "$first" = "[383]" ] && [ -z "$s383" ]; then s383=$s; cp "$T/free.json" "$T/free383.json"; fi
    if [ "$first" = "[381]" ] && [ -z "$s381" ]; then s381=$s; cp "$T/free.json" "$T/free381.json"; fi
    [ -n "$s383" ] && [ -n "$s381" ] && break
done
for end in 383 381; do
    eval "s=\$s$end"
    if [ -z "$s" ]; then fail chat_stops_at_$end "no seed in 1-40 samples $end"; continue; fi
    run qmoe-run --chat --prompt "Hi" -n 40 --temperature 3 --seed "$s" -j 2 --json "$C"
    expect chat_run_$end 0 || continue
    r=$(py 'json.loads(a[0])["generated_ids"] == (lambda g: g[:g.index('$end') + 1])(json.loads(a[1])["generated_ids"]),
            json.loads(a[0])["finish"], "<|" in json.loads(a[0])["generated_text"]' "$T/.out" "$T/free$end.json")
    [ "$r" = "True stop False" ] && ok chat_stops_at_$end || fail chat_stops_at_$end "seed $s: $r"
done
# without --chat the same ids run on past <|im_end|> (only generation_config counts)
if [ -n "$s383" ]; then
    run qmoe-run --token-ids "$(py 'json.loads(a[0])["prompt_ids"]' "$T/free383.json" | tr -d '[] ')" \
        -n 40 --temperature 3 --seed "$s383" -j 2 --json "$C"
    r=$(py 'json.loads(a[0])["generated_ids"] == json.loads(a[1])["generated_ids"]' "$T/.out" "$T/free383.json")
    [ "$rc" = 0 ] && [ "$r" = True ] && ok plain_runs_past_im_end || fail plain_runs_past_im_end "rc $rc, $r"
fi
# the eos_token of tokenizer_config.json must be a known token
sed -i 's/"eos_token": "<|endoftext|>"/"eos_token": "<|nonesuch|>"/' "$C/tokenizer_config.json"
run qmoe-run --chat --prompt "Hi" -n 2 "$C"
expect chat_unknown_eos_token 2 "eos_token '<|nonesuch|>' is not in the tokenizer"

# ---- --perplexity against an independent computation ----
# nll_ref LOGITS IDS_JSON: mean over t >= 1 of logsumexp(logits[t-1]) - logits[t-1][id_t]
nll_sum_py='(lambda v, ids, V: sum(math.log(sum(math.exp(x - max(r)) for x in r)) + max(r) - r[ids[t]]
             for t, r in ((t, v[(t - 1) * V:t * V]) for t in range(1, len(ids)))))'
printf 'It was the best of times, it was the worst of times.\nHello world!\n' >"$T/ppl.txt"
run qmoe-run --tokenize "$M" <"$T/ppl.txt"
expect ppl_tokenize 0 && cp "$T/.out" "$T/ppl.ids"
pids=$(tr -d '[] \n' <"$T/ppl.ids")
run qmoe-run --token-ids "$pids" -n 0 -j 2 --logits-out "$T/ppl.f32" "$M"
expect ppl_logits 0
run qmoe-run --perplexity "$T/ppl.txt" -j 2 --json "$M"
expect ppl_json 0 && cp "$T/.out" "$T/ppl.json"
ppl_check() { # NAME JSON WANT_NLL
    local r
    r=$(python3 -c "import json, math, sys
j = json.load(open(sys.argv[1])); want = float(sys.argv[2])
okn = abs(j['mean_nll'] - want) <= 1e-4 * abs(want)
okp = abs(j['perplexity'] - math.exp(want)) <= 1e-4 * math.exp(want)
print('good' if okn and okp else 'got %r / %r, want %r' % (j['mean_nll'], j['perplexity'], want))" "$2" "$3")
    [ "$r" = good ] && ok "$1" || fail "$1" "$r"
}
want=$(python3 -c "import json, math, struct, sys
d = open(sys.argv[1], 'rb').read(); v = struct.unpack('<%df' % (len(d) // 4), d)
ids = json.load(open(sys.argv[2])); V = 384
print(repr($nll_sum_py(v, ids, V) / (len(ids) - 1)))" "$T/ppl.f32" "$T/ppl.ids")
ppl_check ppl_matches_logsoftmax "$T/ppl.json" "$want"
r=$(py '(lambda j, n: (j["tokens"], j["scored"], j["windows"], j["context"]) == (n, n - 1, 1, 1024))(json.loads(a[0]), len(json.loads(a[1])))' \
    "$T/ppl.json" "$T/ppl.ids")
[ "$r" = True ] && ok ppl_counts || fail ppl_counts "$(head -c 400 "$T/ppl.json")"
# windows of 6 tokens overlapping by one: each window's logits computed
# separately, its tokens after the first scored
run qmoe-run --perplexity "$T/ppl.txt" --context 6 -j 2 --json "$M"
expect ppl_windows_json 0 && cp "$T/.out" "$T/pplw.json"
n=$(py 'len(json.loads(a[0]))' "$T/ppl.ids")
sum=0 s=0 w=0 bad=
while [ $s -lt $((n - 1)) ]; do
    e=$((s + 6 < n ? s + 6 : n))
    py 'json.dumps(json.loads(a[0])['$s:$e'])' "$T/ppl.ids" >"$T/w.ids"
    qmoe-run --token-ids "$(tr -d '[] \n' <"$T/w.ids")" -n 0 -j 2 --logits-out "$T/w.f32" "$M" \
        >/dev/null 2>&1 || bad=1
    sum=$(python3 -c "import json, math, struct, sys
d = open(sys.argv[1], 'rb').read(); v = struct.unpack('<%df' % (len(d) // 4), d)
print(repr(float(sys.argv[3]) + $nll_sum_py(v, json.load(open(sys.argv[2])), 384)))" "$T/w.f32" "$T/w.ids" "$sum")
    s=$((e - 1)); w=$((w + 1))
done
want=$(python3 -c "import sys; print(repr(float(sys.argv[1]) / (int(sys.argv[2]) - 1)))" "$sum" "$n")
[ -z "$bad" ] && ppl_check ppl_windows_match "$T/pplw.json" "$want" || fail ppl_windows_match "a window failed"
r=$(py 'json.loads(a[0])["windows"]' "$T/pplw.json")
[ "$r" = "$w" ] && ok ppl_window_count || fail ppl_window_count "$r windows, expected $w"
# the golden PyTorch nll of seq3, free and masked to experts 0-7 (its text
# tokenizes back to the same 24 ids)
py 'json.loads(a[0])["sequences"]["seq3"]["text"]' "$G/tokens.json" | head -c -1 >"$T/seq3.txt"
run qmoe-run --perplexity "$T/seq3.txt" -j 2 --json "$M"
expect ppl_seq3 0 && ppl_check ppl_seq3_golden "$T/.out" \
    "$(py 'json.loads(a[0])["nll"]["seq3"]["nll_full"]' "$G/nll.json")"
run qmoe-run --perplexity "$T/seq3.txt" --mask-experts 0-7 -j 2 --json "$M"
expect ppl_seq3_masked 0 && ppl_check ppl_seq3_masked_golden "$T/.out" \
    "$(py 'json.loads(a[0])["nll"]["seq3"]["nll_masked"]' "$G/nll.json")"
run qmoe-run --perplexity "$T/seq3.txt" -j 2 "$M"
expect ppl_text 0 "perplexity 9394.7" stdout && expect ppl_text_nll 0 "mean_nll 9.14790" stdout

# ---- --tokenize / --detokenize on the real Qwen3 tokenizer ----
# the whole corpus in one --jsonl batch (JSON escapes, NUL, surrogate pairs)
python3 -c "import json, sys
for x in json.load(open(sys.argv[1])): print(json.dumps(x['text']))" "$Q/expected.json" >"$T/corpus.jsonl"
run qmoe-run --tokenize --jsonl "$Q/tokenizer.json.gz" <"$T/corpus.jsonl"
expect tokenize_jsonl 0 && cp "$T/.out" "$T/corpus.ids"
r=$(python3 -c "import json, sys
want = [x['ids'] for x in json.load(open(sys.argv[1]))]
got = [json.loads(l) for l in open(sys.argv[2])]
bad = [i for i in range(len(want)) if i >= len(got) or got[i] != want[i]]
print('good' if len(got) == len(want) and not bad else '%d lines, %d wrong, first %s' % (len(got), len(bad), bad[:3]))" \
    "$Q/expected.json" "$T/corpus.ids")
[ "$r" = good ] && ok tokenize_jsonl_expected_ids || fail tokenize_jsonl_expected_ids "$r"
run qmoe-run --detokenize --jsonl "$Q/tokenizer.json.gz" <"$T/corpus.ids"
expect detokenize_jsonl 0 && cp "$T/.out" "$T/corpus.back"
r=$(python3 -c "import json, sys, unicodedata
want = [unicodedata.normalize('NFC', x['text']) for x in json.load(open(sys.argv[1]))]
got = [json.loads(l) for l in open(sys.argv[2], encoding='utf-8')]
bad = [i for i in range(len(want)) if i >= len(got) or got[i] != want[i]]
print('good' if len(got) == len(want) and not bad else '%d lines, %d wrong, first %s' % (len(got), len(bad), bad[:3]))" \
    "$Q/expected.json" "$T/corpus.back")
[ "$r" = good ] && ok detokenize_jsonl_round_trip || fail detokenize_jsonl_round_trip "$r"
# single texts through stdin and back, byte for byte, with a special token;
# MODEL as a plain tokenizer.json and as a directory without any weights
mkdir -p "$T/tokdir"
gzip -dc "$Q/tokenizer.json.gz" >"$T/tokdir/tokenizer.json"
echo 'not json' >"$T/tokdir/config.json"
echo 'not json' >"$T/tokdir/model.safetensors.index.json"
for im in "3 $Q/tokenizer.json.gz" "174 $T/tokdir/tokenizer.json" "267 $T/tokdir" \
          "271 $Q/tokenizer.json.gz"; do
    i=${im%% *} m=${im#* }
    py 'json.loads(a[0])['$i']["text"]' "$Q/expected.json" | head -c -1 >"$T/s$i.txt"
    want=$(py 'json.dumps(json.loads(a[0])['$i']["ids"], separators=(",", ":"))' "$Q/expected.json")
    run qmoe-run --tokenize "$m" <"$T/s$i.txt"
    expect tokenize_s$i 0 || continue
    [ "$out" = "$want" ] && ok tokenize_s${i}_ids || fail tokenize_s${i}_ids "$m: $out, want $want"
    printf '%s\n' "$want" >"$T/s$i.ids"
    qmoe-run --detokenize "$m" <"$T/s$i.ids" >"$T/s$i.back" 2>"$T/.err"
    check detokenize_s$i cmp "$T/s$i.txt" "$T/s$i.back"
done
r=$(cat "$T/s267.ids")
[[ "$r" == "[151644,"* ]] && ok tokenize_special_token || fail tokenize_special_token "$r"

# ---- errors ----
mkdir -p "$T/notok"
cp "$M"/*.json "$T/notok/"; rm -f "$T/notok/tokenizer.json" "$T/notok/vocab.json"
for f in "$M"/*.safetensors; do ln -s "$f" "$T/notok/"; done
run qmoe-run --prompt "Hi" "$T/notok"
expect err_prompt_no_tokenizer 2 "notok" && expect err_prompt_no_tokenizer_msg 2 "tokenizer.json"
run qmoe-run --perplexity "$T/ppl.txt" "$T/notok"
expect err_ppl_no_tokenizer 2 "tokenizer.json"
run qmoe-run --tokenize "$T/notok" </dev/null
expect err_tokenize_no_tokenizer 2 "tokenizer.json"
echo '[1, 2' >"$T/bad.json"
run qmoe-run --detokenize "$M" <"$T/bad.json"
expect err_detokenize_invalid_json 2 "stdin is not a JSON array of token ids: invalid JSON"
echo '{"ids": [1]}' >"$T/bad.json"
run qmoe-run --detokenize "$M" <"$T/bad.json"
expect err_detokenize_not_array 2 "not a JSON array of token ids"
echo '[1, 2.5]' >"$T/bad.json"
run qmoe-run --detokenize "$M" <"$T/bad.json"
expect err_detokenize_not_id 2 "element 1 (2.5) is not a token id"
echo '[1, 384]' >"$T/bad.json"
run qmoe-run --detokenize "$M" <"$T/bad.json"
expect err_detokenize_out_of_range 2 "id 384 is outside the tokenizer's vocabulary [0, 384)"
echo '[1, -3]' >"$T/bad.json"
run qmoe-run --detokenize "$M" <"$T/bad.json"
expect err_detokenize_negative 2 "element 1 (-3) is not a token id"
printf '[1]\n[2]\n[3, 99999]\n' >"$T/bad.json"
run qmoe-run --detokenize --jsonl "$M" <"$T/bad.json"
expect err_detokenize_jsonl_line 2 "stdin line 3: id 99999 is outside" && [ -z "$out" ] &&
    ok err_detokenize_jsonl_no_partial_output || fail err_detokenize_jsonl_no_partial_output "$out"
printf '"a"\nb\n' >"$T/bad.json"
run qmoe-run --tokenize --jsonl "$M" <"$T/bad.json"
expect err_tokenize_jsonl_not_string 2 "stdin line 2: expected a JSON string"
printf '"\\ud800"\n' >"$T/bad.json"
run qmoe-run --tokenize --jsonl "$M" <"$T/bad.json"
expect err_tokenize_jsonl_surrogate 2 "stdin line 1: a high surrogate"
printf 'ok \xff\xfe' >"$T/bad.txt"
run qmoe-run --tokenize "$M" <"$T/bad.txt"
expect err_tokenize_invalid_utf8 2 "not valid UTF-8"
run qmoe-run --token-ids 1,384 "$M"
expect err_token_ids_out_of_range 2 "384 is outside the vocabulary [0, 384)"
printf 'a' >"$T/one.txt"
run qmoe-run --perplexity "$T/one.txt" "$M"
expect err_ppl_one_token 2 "at least 2"
run qmoe-run --perplexity "$T/nonesuch.txt" "$M"
expect err_ppl_missing_file 2 "nonesuch.txt"
run qmoe-run --perplexity "$T/ppl.txt" --context 1 "$M"
expect err_ppl_context 2 "--context"
run qmoe-run --prompt "" "$M"
expect err_prompt_empty 2 "--prompt: the text has 0 tokens"
run qmoe-run --chat --token-ids 1 "$M"
expect err_chat_needs_prompt 2 "--chat needs --prompt"
run qmoe-run --prompt a --token-ids 1 "$M"
expect err_modes_exclusive 2 "exclude each other"
run qmoe-run --jsonl --prompt a "$M"
expect err_jsonl_needs_tokenize 2 "--jsonl works with --tokenize and --detokenize"
run qmoe-run --help
expect help_prompt 0 "--prompt" stdout && expect help_perplexity 0 "--perplexity" stdout &&
    expect help_tokenize 0 "--detokenize" stdout
