# verify_memory.sh - qmoe-verify --source reads a mapped source with bounded
# resident memory: the pages of the source are released behind the
# comparison, so peak RSS stays far below the source's size (it was the
# whole source: about 10 GB on the real Omni checkpoint).
. "$(dirname "$0")/lib.sh"
plan 2
TIME=/usr/bin/time
[ -x $TIME ] || { fail verify-memory-time "no $TIME (Debian package time)"; exit 1; }
qmoe-mksample --layers 2 --experts 32 --hidden 1024 --inter 768 --shards 2 "$T/src" >/dev/null &&
    qmoe-extract --no-progress "$T/src" "$T/out" >/dev/null || { fail verify-memory-setup; exit 1; }
src_kb=$(du -sk "$T/src" | cut -f1)
run $TIME -f "maxrss %M" qmoe-verify -j 2 --source "$T/src" "$T/out"
expect verify-memory-source-ok 0 "maxrss"
rss=$(sed -n 's/^maxrss //p' "$T/.err")
# The source is ~300 MB; the reader's own buffers are 8 MiB per thread.
[ -n "$rss" ] && [ "$rss" -lt $((src_kb / 3)) ] && ok verify-memory-bounded ||
    fail verify-memory-bounded "peak RSS $rss KB for a $src_kb KB source"
echo "# peak RSS $rss KB, source $src_kb KB"
