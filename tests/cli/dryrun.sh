# dryrun.sh - qmoe-extract --dry-run writes nothing, anywhere: under strace
# no call creates, removes or renames a file (no reflink probe, no OUT, no
# lock), with a checkpoint and with an extracted OUT as SRC, OUT new,
# relative or holding files; in a directory it cannot write to it works.
. "$(dirname "$0")/lib.sh"
plan 13
if ! command -v strace >/dev/null; then fail strace-missing "strace is not installed (.ci/run installs it)"; exit 1; fi

qmoe-mksample "$T/src" >/dev/null 2>&1 || { fail mksample; exit 1; }
qmoe-extract --no-progress --layers 0-1 "$T/src" "$T/part" >/dev/null 2>&1 || { fail extract-part; exit 1; }
qmoe-extract --no-progress "$T/src" "$T/out" >/dev/null 2>&1 || { fail extract; exit 1; }

# writes NAME: the calls of the last traced run that create, remove or
# rename a name, or take a lock (none expected)
writes() {
    grep -E 'O_CREAT|O_TMPFILE|[^a-z_](creat|unlink|unlinkat|rename|renameat2?|mkdir|mkdirat|rmdir|link|linkat|symlink|symlinkat|flock)\(' \
        "$T/trace" | grep -v ' = -1 ENOENT' | head -5
}
traced() { # NAME ARGS...: the dry run under strace, checked for writes
    local name=$1; shift
    # LeakSanitizer cannot run under ptrace (SAN=1 builds): leaks are the
    # untraced runs' business
    (cd "$T/cwd" && ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
        strace -f -qq -e trace=file,flock -o "$T/trace" qmoe-extract --dry-run --json "$@") \
        >"$T/.out" 2>"$T/.err"; rc=$?
    out=$(cat "$T/.out")
    [ "$rc" = 0 ] && ok "$name" || fail "$name" "exit $rc: $(cat "$T/.err")"
    local w; w=$(writes)
    [ -z "$w" ] && [ -s "$T/trace" ] && ok "$name-writes-nothing" || fail "$name-writes-nothing" "${w:-no trace}"
}
mkdir -p "$T/cwd"
traced dry-checkpoint-new-out "$T/src" new-out
[[ "$out" == *'"done_files":0,'* && "$out" == *'"reflink":'* ]] && ok dry-checkpoint-figures || fail dry-checkpoint-figures "$out"
traced dry-checkpoint-partial-out "$T/src" "$T/part"
traced dry-out-as-src "$T/out" "$T/out2"
[[ "$out" == *'"todo_files":'* ]] && ok dry-out-as-src-figures || fail dry-out-as-src-figures "$out"
traced dry-out-as-src-onto-itself "$T/out" "$T/out"
[ -z "$(cd "$T" && find . -name '*probe*' -o -name 'new-out' -o -name out2)" ] && ok dry-no-trace-left ||
    fail dry-no-trace-left "$(cd "$T" && find . -name '*probe*' -o -name 'new-out' -o -name out2)"

# a directory nobody can write to: a read-only bind mount (as root, which
# permissions do not stop; unshare keeps the mount private), else mode 555;
# OUT relative, so its nearest existing directory is that one
mkdir -p "$T/ro"
ro_run() {
    if [ "$(id -u)" = 0 ]; then
        unshare --mount sh -c "mount --bind '$T/ro' '$T/ro' && mount -o remount,bind,ro '$T/ro' &&
            cd '$T/ro' && { touch probe-of-the-test 2>/dev/null && echo writable >&2; exec qmoe-extract --dry-run \"\$@\"; }" sh "$@"
    else
        chmod 555 "$T/ro"; (cd "$T/ro" && qmoe-extract --dry-run "$@"); local r=$?; chmod 755 "$T/ro"; return $r
    fi
}
run ro_run "$T/src" new-out
expect dry-read-only-dir 0 "to write: " stdout
[ -z "$(ls -A "$T/ro")" ] && [[ "$err" != *writable* ]] && ok dry-read-only-dir-nothing-left ||
    fail dry-read-only-dir-nothing-left "$(ls -A "$T/ro") $err"
