#!/usr/bin/env bash
# qmoe-extract --shard I/N: N processes sharing one OUT write exactly what
# one process writes; parts are disjoint, deterministic and balanced; the
# last part to finish writes the index and the complete manifest; a part
# resumes; one part never removes another part's files in flight.
. "$(dirname "$0")/lib.sh"
plan 39
TOOLS="$QMOE_BUILD/tests/tools"
OMNI="$FIX/qwen3moe-tiny/omni"

# sha256 of every file of OUT except the state directory and qmoe.json
# (whose "created" and per-file "time" differ from run to run)
tree_sum() { (cd "$1" && find . -path ./.qmoe -prune -o -type f ! -name qmoe.json -print | LC_ALL=C sort | xargs sha256sum); }
# qmoe.json "files" without the times
mf_files() { sed -e 's/"time":[0-9.e+]*,\{0,1\}//g' -e 's/.*"files":\[//' "$1/qmoe.json"; }
journal_paths() { cat "$@" | sed 's/^{"path":"\([^"]*\)".*/\1/' | LC_ALL=C sort; }

run qmoe-extract -j 2 "$OMNI" "$T/one"
expect one-process 0

# -- the partition: disjoint, covering, deterministic, balanced
total=0; files=0; max=0; min=
for i in 0 1 2 3; do
    run qmoe-extract --dry-run --json --shard $i/4 "$OMNI" "$T/never"
    b=$(printf %s "$out" | sed 's/.*"shard_bytes":\([0-9]*\).*/\1/')
    f=$(printf %s "$out" | sed 's/.*"shard_files":\([0-9]*\).*/\1/')
    echo "# part $i/4: $f files, $b bytes"
    total=$((total + b)); files=$((files + f))
    [ "$b" -gt "$max" ] && max=$b; [ -z "$min" ] || [ "$b" -lt "$min" ] && min=$b
done
[ $files = 52 ] && [ $total = 843008 ] && ok partition-covers-plan || fail partition-covers-plan "$files files, $total bytes"
# greedy largest-first: no part exceeds another by more than the largest file
big=$(ls -l "$T/one/globals.safetensors" | awk '{print $5}')
[ $((max - min)) -le "$big" ] && ok partition-balanced || fail partition-balanced "min $min max $max"
# (the free space of the filesystem is not the plan's: other writers move it)
run qmoe-extract --dry-run --json --shard 1/4 "$OMNI" "$T/never"
a=$(printf %s "$out" | jq -c 'del(.available_bytes, .fits)')
run qmoe-extract --dry-run --json --shard 1/4 "$OMNI" "$T/never"
b=$(printf %s "$out" | jq -c 'del(.available_bytes, .fits)')
[ -n "$a" ] && [ "$a" = "$b" ] && ok partition-deterministic || fail partition-deterministic "$a vs $b"

# -- four processes at once on one OUT
pids=()
for i in 0 1 2 3; do
    qmoe-extract -j 1 --shard $i/4 "$OMNI" "$T/four" >"$T/four-$i.out" 2>&1 & pids+=($!)
done
rcs=""; for p in "${pids[@]}"; do wait "$p"; rcs="$rcs$?"; done
[ "$rcs" = 0000 ] && ok four-parts-exit-0 || fail four-parts-exit-0 "$rcs $(cat "$T"/four-*.out)"
same four-parts-identical-files "$(tree_sum "$T/four")" "$(tree_sum "$T/one")" \
    "$(diff <(tree_sum "$T/one") <(tree_sum "$T/four") | head -5)"
same four-parts-same-manifest-records "$(mf_files "$T/four")" "$(mf_files "$T/one")"
check four-parts-manifest-complete grep -q '"complete":true' "$T/four/qmoe.json"
check four-parts-manifest-shards grep -q '"shards":4' "$T/four/qmoe.json"
n=$(journal_paths "$T"/four/.qmoe/shard-*-of-4/journal.jsonl | uniq | wc -l)
d=$(journal_paths "$T"/four/.qmoe/shard-*-of-4/journal.jsonl | uniq -d | wc -l)
[ "$n" = 52 ] && [ "$d" = 0 ] && ok four-parts-journals-disjoint || fail four-parts-journals-disjoint "$n paths, $d twice"
notfin=
for i in 0 1 2 3; do
    grep -q '"state":"finished"' "$T/four/.qmoe/shard-$i-of-4/progress.json" || notfin="$notfin $i"
done
[ -z "$notfin" ] && ok four-parts-states-finished || fail four-parts-states-finished "parts not finished:$notfin"
run "$TOOLS/ckcmp" "$OMNI" "$T/four"
expect four-parts-ckcmp 0 "same: 174 tensors, 843008 bytes" stdout

# -- a part rerun resumes and writes nothing; so does an unsharded rerun
lines=$(cat "$T"/four/.qmoe/shard-*/journal.jsonl | wc -l)
run qmoe-extract --shard 2/4 "$OMNI" "$T/four"
expect part-rerun-resumes 0 "(resumed)" stdout
run qmoe-extract "$OMNI" "$T/four"
expect unsharded-rerun-resumes 0 "52/52 files complete" stdout
[ "$(cat "$T"/four/.qmoe/shard-*/journal.jsonl | wc -l)" = "$lines" ] && [ ! -s "$T/four/.qmoe/journal.jsonl" ] \
    && ok reruns-write-nothing || fail reruns-write-nothing

# -- one part alone: no index, manifest says incomplete; the last part completes it
run qmoe-extract --shard 0/2 "$OMNI" "$T/two"
expect first-of-two 0
check first-of-two-incomplete grep -q '"complete":false' "$T/two/qmoe.json"
check first-of-two-no-index test ! -e "$T/two/model.safetensors.index.json"
run qmoe-extract --shard 1/2 "$OMNI" "$T/two"
expect last-of-two 0
check last-of-two-complete grep -q '"complete":true' "$T/two/qmoe.json"
check last-of-two-index cmp "$T/one/model.safetensors.index.json" "$T/two/model.safetensors.index.json"

# -- a part killed mid-way resumes to the same bytes
QMOE_THROTTLE_MS=60 qmoe-extract -j 1 --shard 1/2 "$OMNI" "$T/kill" >/dev/null 2>&1 & pid=$!
for _ in $(seq 200); do
    [ "$(grep -c . "$T/kill/.qmoe/shard-1-of-2/journal.jsonl" 2>/dev/null)" -ge 5 ] 2>/dev/null && break; sleep 0.05
done
kill -KILL $pid; wait $pid 2>/dev/null
run qmoe-extract --shard 1/2 "$OMNI" "$T/kill"
expect killed-part-resumes 0 "taking over the stale lock of pid $pid"
[[ "$out" == *"(resumed)"* ]] && ok killed-part-says-resumed || fail killed-part-says-resumed "$out"
run qmoe-extract --shard 0/2 "$OMNI" "$T/kill"
expect killed-other-part 0
same killed-part-identical "$(tree_sum "$T/kill")" "$(tree_sum "$T/one")"
check killed-part-no-tmp no_tmp_files "$T/kill"

# -- another part's temporary is not ours to remove, whatever its pid says:
# on a cluster, the writer of part 0 lives on another machine, where pid
# 999999 may be alive. Part 0 itself does remove it (it holds part 0's lock).
p0=$(journal_paths "$T/two/.qmoe/shard-0-of-2/journal.jsonl" | grep '^experts/' | head -1)
mkdir -p "$T/foreign/experts"
echo partial >"$T/foreign/$p0.tmp.999999"
echo partial >"$T/foreign/config.json.tmp.999999"
run qmoe-extract --shard 1/2 "$OMNI" "$T/foreign"
expect foreign-tmp-run 0
check foreign-tmp-of-other-part-kept test -e "$T/foreign/$p0.tmp.999999"
check stale-top-level-tmp-removed test ! -e "$T/foreign/config.json.tmp.999999"
run qmoe-extract --shard 0/2 "$OMNI" "$T/foreign"
expect foreign-tmp-owner-run 0
check foreign-tmp-removed-by-owner test ! -e "$T/foreign/$p0.tmp.999999"
same foreign-identical "$(tree_sum "$T/foreign")" "$(tree_sum "$T/one")"

# -- bad --shard values
for bad in 4/4 -1/4 1/0 x 1/ /2 "1/2/3"; do
    run qmoe-extract --shard "$bad" "$OMNI" "$T/bad"
    expect "bad-shard-'$bad'" 2 "expected I/N with 0 <= I < N"
done
