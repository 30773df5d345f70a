# run_options.sh - qmoe-run's command line: help, version, usage errors.
. "$(dirname "$0")/lib.sh"
plan 13
M=$FIX/qwen3moe-tiny/qwen3moe

run qmoe-run --help
expect run_help 0 "--token-ids" stdout && expect run_help_mask 0 "--mask-experts" stdout
run qmoe-run --version
expect run_version 0 "qmoe-run " stdout
run qmoe-run --no-such-option "$M"
expect run_bad_option 2 "qmoe-run: "
run qmoe-run --token-ids 1
expect run_no_model 2 "give the MODEL directory"
run qmoe-run "$M"
expect run_no_prompt 2 "--token-ids"
run qmoe-run --token-ids 1,x "$M"
expect run_bad_id 2 "'x' is not a token id"
run qmoe-run --token-ids 384 "$M"
expect run_id_outside_vocab 2 "384 is outside the vocabulary"
run qmoe-run --token-ids 1 "$T/nowhere"
expect run_no_such_model 2 "nowhere"
run qmoe-run --token-ids 1 -n -1 "$M"
expect run_negative_n 2 "cannot be negative"
# sampling is reproducible with a seed
run qmoe-run --temperature 1 --seed 7 --ignore-eos -n 8 --token-ids 1,2,3 "$M"
a=$out
run qmoe-run --temperature 1 --seed 7 --ignore-eos -n 8 --token-ids 1,2,3 -j 1 "$M"
[ "$a" = "$out" ] && [ -n "$a" ] && ok run_seed_reproducible || fail run_seed_reproducible "$a vs $out"
# -j/--jobs as in every tool; --threads (the older spelling) still works
run qmoe-run --json --token-ids 1,2,3 -n 2 -j 2 "$M"; a=$out
run qmoe-run --json --token-ids 1,2,3 -n 2 --jobs 2 "$M"; b=$out
run qmoe-run --json --token-ids 1,2,3 -n 2 --threads 2 "$M"; c=$out
ja=$(jq -c '[.threads, .generated_ids]' <<<"$a" 2>&1) jb=$(jq -c '[.threads, .generated_ids]' <<<"$b" 2>&1)
jc=$(jq -c '[.threads, .generated_ids]' <<<"$c" 2>&1)
[[ "$ja" == '[2,'* ]] && [ "$ja" = "$jb" ] && [ "$ja" = "$jc" ] && ok run_jobs_alias ||
    fail run_jobs_alias "-j: $ja --jobs: $jb --threads: $jc"
run qmoe-run --help
[[ "$out" == *"-j, --jobs=N"* && "$out" != *"--threads"* ]] && ok run_help_jobs ||
    fail run_help_jobs "$(grep -- -j <<<"$out")"
