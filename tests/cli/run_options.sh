# run_options.sh - qmoe-run's command line: help, version, usage errors.
. "$(dirname "$0")/lib.sh"
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
