# realomni.sh - the real Qwen3-Omni-30B-A3B-Instruct checkpoint's shape, from
# qmoe-mksample --like (the 28,010 tensor names, shapes, offsets and 15
# shard sizes of the real files, data sparse): the dry-run figures equal
# the real ones; the hub cache layout resolves to its snapshot; a lone shard
# is refused; a dangling blob is named with its target and blocks only the
# files that need it (a layer whose shards are there is extracted, and the
# rerun once the blob is back resumes); the tokenizer as the
# repo ships it (vocab.json + merges.txt, no tokenizer.json) loads; qmoe-pack
# --dry-run --as qwen3_moe lists the thinker's text model it would write.
. "$(dirname "$0")/lib.sh"
plan 54
like() { qmoe-mksample --like qwen3-omni-30b-a3b-instruct --tokenizer "$FIX/qwen3-tokenizer" "$@"; }
R=$T/omni
like "$R" >"$T/ro.log" 2>&1 || { fail realomni-writes "$(cat "$T/ro.log")"; exit 1; }

# figures: every field as the real checkpoint has it
real_plan='{"layout":"qwen3_omni_moe","num_layers":48,"moe_layers":48,"num_experts":128,"layers":"0-47","experts":"0-127","expert_files":6144,"layer_files":48,"globals_files":1,"other_files":7,"files":6200,"bytes":70519637090,"expert_bytes":57982058496'
run qmoe-extract --dry-run --json "$R" "$T/out"
expect realomni-dry-run 0
[[ "$out" == "$real_plan"* ]] && ok realomni-dry-run-figures || fail realomni-dry-run-figures "$out"
run qmoe-extract --dry-run "$R" "$T/out"
expect realomni-dry-run-text 0 "files:    6144 expert, 48 layer, 1 globals, 7 other (6200 in all)" stdout
[ ! -e "$T/out" ] && ok realomni-dry-run-writes-nothing || fail realomni-dry-run-writes-nothing

# the space check: 41.2 GB free (simulated, QMOE_TEST_FREE_BYTES) for 70.5 GB
run env QMOE_TEST_FREE_BYTES=41200000000 qmoe-extract --dry-run --json "$R" "$T/out"
expect realomni-space-dry-run 0 '"todo_files":6200,"todo_bytes":70519637090,"shared_bytes":0,"needed_bytes":70545032290,"available_bytes":41200000000' stdout
[[ "$out" == *'"fits":false'* ]] && ok realomni-space-dry-run-verdict || fail realomni-space-dry-run-verdict "$out"
run env QMOE_TEST_FREE_BYTES=41200000000 qmoe-extract "$R" "$T/out"
expect realomni-space-refused 2 "qmoe-extract: '$T/out': needs 70.5 GB, 41.2 GB available on "
[[ "$err" == *"(QMOE_TEST_FREE_BYTES); nothing written (--force tries anyway)" ]] && ok realomni-space-refused-text ||
    fail realomni-space-refused-text "$err"
[ -z "$(find "$T/out" -name '*.safetensors' -print -quit)" ] && ok realomni-space-refused-nothing-written ||
    fail realomni-space-refused-nothing-written
rm -rf "$T/out"

# the tokenizer the repo ships: vocab.json + merges.txt
run sh -c "printf 'Hello world' | qmoe-run --tokenize '$R'"
expect realomni-tokenizer 0 "" && { [ "$out" = "[9707,1879]" ] && ok realomni-tokenizer-ids || fail realomni-tokenizer-ids "$out"; }

# qmoe-pack --as qwen3_moe on the real shapes: the thinker's text model.
# Tensors: per layer 128 experts x 3, the router, q/k/v/o, q/k norms and two
# layer norms; then embed_tokens, norm, lm_head. Bytes: the experts (the
# extraction's expert_bytes above), per layer attention, norms and router,
# embeddings and lm_head at the thinker's padded vocabulary of 152064.
run qmoe-pack --dry-run --json --as qwen3_moe "$R" "$T/pack"
expect realomni-pack-dry-run 0
want_t=$((48 * (128 * 3 + 9) + 3))
want_b=$((57982058496 + 48 * (2 * 4096 * 2048 * 2 + 2 * 512 * 2048 * 2 + 2 * 2048 * 2 + 2 * 128 * 2 + 128 * 2048 * 2) + 2 * 152064 * 2048 * 2 + 2048 * 2))
jq -e --argjson t "$want_t" --argjson b "$want_b" '.tensors == $t and .total_size == $b and
    .experts_after == 128 and .model_type == "qwen3_moe" and
    ([.files[] | select(.path // "" | test("^model-000[0-9][0-9]-of-00013[.]safetensors$"))] | length) == 13 and
    ([.files[] | .tensor_bytes // 0] | max) <= 5000000000' <<<"$out" >/dev/null &&
    ok realomni-pack-dry-run-figures || fail realomni-pack-dry-run-figures "$(head -c 600 <<<"$out")"
[ ! -e "$T/pack" ] && ok realomni-pack-dry-run-writes-nothing || fail realomni-pack-dry-run-writes-nothing

# a lone shard of the fifteen
run qmoe-extract --dry-run "$R/model-00003-of-00015.safetensors" "$T/out"
expect realomni-lone-shard 2 "is one of the 15 shards of the checkpoint in '$R' (its model.safetensors.index.json lists them all): give the directory"

# the hub cache: the repo folder resolves to the snapshot refs/main names
H=$T/hf; REPO=$H/models--Qwen--Qwen3-Omni-30B-A3B-Instruct
like --hf-cache "$H" >"$T/ro.log" 2>&1 || { fail realomni-hf-writes "$(cat "$T/ro.log")"; exit 1; }
rev=$(cat "$REPO/refs/main")
run qmoe-extract --dry-run --json "$REPO" "$T/out"
expect realomni-hf-cache 0 "is a Hugging Face hub cache folder: using snapshot $rev (refs/main)"
[[ "$out" == "$real_plan"* ]] && ok realomni-hf-cache-figures || fail realomni-hf-cache-figures "$out"
run sh -c "printf 'Hello world' | qmoe-run --tokenize '$REPO'"
expect realomni-hf-cache-tokenizer 0 "using snapshot $rev" && {
    [ "$out" = "[9707,1879]" ] && ok realomni-hf-cache-tokenizer-ids || fail realomni-hf-cache-tokenizer-ids "$out"; }
mv "$REPO/refs/main" "$T/main.ref"
run qmoe-extract --dry-run "$REPO" "$T/out"
expect realomni-hf-only-snapshot 0 "using snapshot $rev (the only one; no refs/main)"
mkdir "$REPO/snapshots/0000000000000000000000000000000000000000"
run qmoe-extract --dry-run "$REPO" "$T/out"
expect realomni-hf-two-snapshots 2 "hub cache '$REPO': 2 snapshots and no refs/main: give snapshots/REV"
echo 0000000000000000000000000000000000000001 >"$REPO/refs/main"
run qmoe-extract --dry-run "$REPO" "$T/out"
expect realomni-hf-ref-missing 2 "refs/main names revision 0000000000000000000000000000000000000001, which has no snapshots/0000000000000000000000000000000000000001"
rmdir "$REPO/snapshots/0000000000000000000000000000000000000000"
mv "$T/main.ref" "$REPO/refs/main"
# a blob still downloading (shard 7 holds layers 21-25): named with its
# target, it blocks only the files that need it
link=$REPO/snapshots/$rev/model-00007-of-00015.safetensors
target=$(readlink "$link")
mv "$REPO/snapshots/$rev/$target" "$T/blob"
blocked="shard 'model-00007-of-00015.safetensors' (a symlink to '$target', which does not exist) blocks"
run qmoe-extract --dry-run "$REPO" "$T/out"
expect realomni-hf-dangling-dry-run 0 "blocked:  $blocked 519 files: layers 21-25" stdout
[[ "$out" == *"blocked:  519 files wait for missing shards (not counted above); the run refuses them: --layers 0-20,26-47 extracts what the present shards hold"* ]] &&
    ok realomni-hf-dangling-dry-run-hint || fail realomni-hf-dangling-dry-run-hint "$out"
run qmoe-extract --dry-run --json "$REPO" "$T/out"
jq -e '.files == 5681 and .blocked_files == 519 and .extractable_layers == "0-20,26-47" and
       (.missing_shards | length) == 1 and .missing_shards[0].name == "model-00007-of-00015.safetensors" and
       .missing_shards[0].layers == "21-25"' <<<"$out" >/dev/null &&
    ok realomni-hf-dangling-dry-run-json || fail realomni-hf-dangling-dry-run-json "$out"
# the whole model: refused before anything is written, listing what waits
run qmoe-extract "$REPO" "$T/out"
expect realomni-hf-dangling-full 2 "519 files of the selection need source shards that are missing (an incomplete download?): $blocked 519 files: layers 21-25; nothing written (--layers 0-20,26-47 extracts what the present shards hold)"
[ ! -e "$T/out" ] && ok realomni-hf-dangling-full-writes-nothing || fail realomni-hf-dangling-full-writes-nothing
# meanwhile layer 0 (shards 1 and 13, the globals' too) is extracted; the
# source record names the shards it read and the others as unread
run qmoe-extract --no-progress --json --layers 0 --experts 0-3 --no-other "$REPO" "$T/out"
expect realomni-hf-dangling-layer0 0 '"files_planned":6,"files_done":6,' stdout
jq -e '[.files[].name] == ["model-00001-of-00015.safetensors","model-00013-of-00015.safetensors"] and
       (.unread | index("model-00007-of-00015.safetensors")) != null' "$T/out/.qmoe/source.json" >/dev/null &&
    ok realomni-hf-dangling-source-record || fail realomni-hf-dangling-source-record "$(cat "$T/out/.qmoe/source.json")"
id0=$(jq -r .id "$T/out/.qmoe/source.json")
run qmoe-verify --source "$REPO" "$T/out"
expect realomni-hf-dangling-layer0-verify 0 "checked: 6 files" stdout
# a layer that needs the missing shard: exit 2 naming shard and blob
run qmoe-extract --no-progress --layers 0,23 --experts 0-3 --no-other "$REPO" "$T/out"
expect realomni-hf-dangling-layer23 2 "5 files of the selection need source shards that are missing (an incomplete download?): $blocked 5 files: layer 23; nothing written (--layers 0 extracts what the present shards hold)"
# the download finishes: the rerun keeps the 6 files, writes layer 23's 5
mv "$T/blob" "$REPO/snapshots/$rev/$target"
run qmoe-extract --no-progress --json --layers 0,23 --experts 0-3 --no-other "$REPO" "$T/out"
expect realomni-hf-resumed 0 '"files_planned":11,"files_done":11,"files_skipped":6,' stdout
[[ "$out" == *'"complete":true'* ]] && ok realomni-hf-resumed-complete || fail realomni-hf-resumed-complete "$out"
jq -e --arg id "$id0" '.id == $id and ([.files[].name] | index("model-00007-of-00015.safetensors")) != null' \
    "$T/out/.qmoe/source.json" >/dev/null && ok realomni-hf-resumed-same-id ||
    fail realomni-hf-resumed-same-id "$(cat "$T/out/.qmoe/source.json")"
run qmoe-verify --source "$REPO" "$T/out"
expect realomni-hf-resumed-verify 0 "checked: 11 files" stdout
# reading and hashing (1.4 GB) reports progress on stderr: whole lines off a
# terminal (QMOE_PROGRESS_INTERVAL shortens the 1 s interval), a closing line
run env QMOE_PROGRESS_INTERVAL=0.05 qmoe-verify -j 1 --source "$REPO" "$T/out"
expect realomni-verify-progress 0 "qmoe-verify: reading, hashing and comparing with the source: 1.4 GB of 1.4 GB (100.0 %), 11/11 files, "
tail -n 1 <<<"$err" | grep -Eq '\(100\.0 %\), 11/11 files, .*/s in [0-9.]+ s$' && ok realomni-verify-progress-closing ||
    fail realomni-verify-progress-closing "$err"
grep -Eq ' %\), [0-9]+/11 files, .*/s, ETA [0-9]+s$' <<<"$err" && ok realomni-verify-progress-eta || fail realomni-verify-progress-eta "$err"
[ "$(grep -c $'\r' <<<"$err")" = 0 ] && ok realomni-verify-progress-lines || fail realomni-verify-progress-lines "carriage returns off a terminal"
# on a terminal (script(1) gives one): redrawn in place
run script -qec "env QMOE_PROGRESS_INTERVAL=0.05 qmoe-verify -j 1 '$T/out' >/dev/null" /dev/null
[[ "$out" == *$'\r\033[K'"qmoe-verify: reading and hashing: "*" ETA "*$'\r\033[K'* ]] && ok realomni-verify-progress-tty ||
    fail realomni-verify-progress-tty "$(head -c 300 <<<"$out" | od -c | head -5)"
run env QMOE_PROGRESS_INTERVAL=0.05 qmoe-verify --no-progress -j 1 "$T/out"
expect realomni-verify-no-progress 0 "" && { [ -z "$err" ] && ok realomni-verify-no-progress-quiet || fail realomni-verify-no-progress-quiet "$err"; }
# a shard an earlier run read is checked again, also when this run does
# not need it (layer 0 needs shards 1 and 13, not 7)
touch -d 2001-01-01 "$REPO/snapshots/$rev/$target"
run qmoe-extract --no-progress --layers 0 --experts 0-3 --no-other "$REPO" "$T/out"
expect realomni-hf-changed-unneeded-shard 2 "'model-00007-of-00015.safetensors': modified since"
# the blob gone again: the files read from it cannot be compared (exit 2)
mv "$REPO/snapshots/$rev/$target" "$T/blob"
run qmoe-verify --source "$REPO" "$T/out"
expect realomni-hf-verify-dangling 2 "5 of its files (experts/expert_000_layer_23.safetensors, ...) need shard 'model-00007-of-00015.safetensors', which is missing (a symlink to '$target', which does not exist: an incomplete download?)"
# ... while a run that does not need it goes on (its record is kept)
run qmoe-extract --no-progress --json --layers 0 --experts 0-3 --no-other "$REPO" "$T/out"
expect realomni-hf-missing-unneeded-shard 0 '"files_planned":6,"files_done":6,"files_skipped":6,' stdout
mv "$T/blob" "$REPO/snapshots/$rev/$target"
rm -rf "$T/out"
rm -rf "$R" "$H"

# --no-other on a filled layer 0: experts 0-3 of layer 0, its layer file and
# the globals (1.2 GB, sparse zeros in the replica but written); none of the
# 7 other/ files (9.5 GB)
R0=$T/omni0
like --fill-layers 0 "$R0" >"$T/ro.log" 2>&1 || { fail realomni-fill-writes "$(cat "$T/ro.log")"; exit 1; }
run qmoe-extract --dry-run --json --layers 0 --experts 0-3 --no-other "$R0" "$T/o0"
expect realomni-no-other-dry-run 0 '"expert_files":4,"layer_files":1,"globals_files":1,"other_files":0,"files":6,' stdout
run qmoe-extract --no-progress --json --layers 0 --experts 0-3 --no-other "$R0" "$T/o0"
expect realomni-no-other 0 '"files_planned":6,"files_done":6,' stdout
[ -z "$(ls -A "$T/o0/other")" ] && ok realomni-no-other-nothing-in-other || fail realomni-no-other-nothing-in-other "$(ls "$T/o0/other")"
jq -e '.expected.no_other == true and .expected.files == 6 and .complete == true' "$T/o0/qmoe.json" >/dev/null &&
    ok realomni-no-other-manifest || fail realomni-no-other-manifest "$(jq -c .expected "$T/o0/qmoe.json")"
run qmoe-verify --source "$R0" "$T/o0"
expect realomni-no-other-verify-source 0 "compared with the source" stdout
run qmoe-status "$T/o0"
expect realomni-no-other-status 0 "other     2/2 files (layers/, globals; other/ left out by --no-other)" stdout
# the dry run on it: all done, nothing to write; without --no-other the 7
# other/ files are what is left
run qmoe-extract --dry-run --layers 0 --experts 0-3 --no-other "$R0" "$T/o0"
expect realomni-dry-run-done 0 "to write: 0 files, 0 B" stdout
run qmoe-extract --dry-run --json --layers 0 --experts 0-3 "$R0" "$T/o0"
expect realomni-dry-run-left 0 '"done_files":6,' stdout
[[ "$out" == *'"todo_files":7,"todo_bytes":9454343266,'* ]] && ok realomni-dry-run-left-figures ||
    fail realomni-dry-run-left-figures "$out"
rm -rf "$R0" "$T/o0"
