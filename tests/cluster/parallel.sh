#!/usr/bin/env bash
# GNU parallel runs qmoe-extract --shard I/4 as four processes on one OUT;
# the result is verified against the source and equals a one-process run.
. "$(dirname "$0")/../cli/lib.sh"
. "$(dirname "$0")/lib.sh"

if ! command -v parallel >/dev/null; then
    apt_need parallel || { fail parallel-installed "cannot install Debian package parallel: $(tail -3 "$T/apt.log" 2>/dev/null)"; exit 0; }
fi
parallel --version | head -1 | sed 's/^/# /'
make_sample "$T/src" || { fail sample "cannot make the sample"; exit 0; }

# the recipe of README: one job per part, all parts on one OUT
run parallel --will-cite --halt now,fail=1 -j 4 \
    qmoe-extract --no-progress -j 1 --shard {}/4 "$T/src" "$T/out" ::: 0 1 2 3
expect parallel-4-parts-exit-0 0
for i in 0 1 2 3; do
    grep -q '"state":"finished"' "$T/out/.qmoe/shard-$i-of-4/progress.json" || fail "parallel-part-$i-finished"
done
ok parallel-parts-finished
verify_out parallel "$T/src" "$T/out"
run qmoe-extract --no-progress "$T/src" "$T/one"
expect one-process 0
[ "$(tree_sum "$T/out")" = "$(tree_sum "$T/one")" ] && ok parallel-equals-one-process \
    || fail parallel-equals-one-process "$(diff <(tree_sum "$T/one") <(tree_sum "$T/out") | head -4)"
# rerunning the whole array resumes: every part finds its files done
run parallel --will-cite -j 4 qmoe-extract --no-progress --shard {}/4 "$T/src" "$T/out" ::: 0 1 2 3
expect parallel-rerun 0 "(resumed)" stdout
