# open_out.sh - an extracted OUT opened as a source takes its headers from
# qmoe.json (issue 25): the dry run opens none of its .safetensors files,
# and says and does exactly what the per-file path (qmoe.json incomplete)
# does; an extraction from it is the same, byte for byte; a file changed
# after qmoe.json (header rewritten, truncated) is refused when its data is
# read, naming the file; no qmoe.json, an incomplete one, or a file the
# directory lacks: the files are read as before.
. "$(dirname "$0")/lib.sh"
plan 17

qmoe-mksample --layers 4 --experts 8 "$T/src" >/dev/null 2>&1 || { fail mksample; exit 1; }
qmoe-extract --no-progress "$T/src" "$T/out" >/dev/null 2>&1 || { fail extract; exit 1; }
M=$T/out/qmoe.json
cp "$M" "$T/qmoe.json.complete"
grep -q '"complete":true' "$M" || { fail manifest-complete "$(head -c 300 "$M")"; exit 1; }
# the per-file path on the same directory: qmoe.json saying incomplete
incomplete() { sed 's/"complete":true/"complete":false/' "$T/qmoe.json.complete" >"$M"; }
complete() { cp "$T/qmoe.json.complete" "$M"; }
files=$(find "$T/out" -name '*.safetensors' | wc -l)
export QMOE_TEST_FREE_BYTES=1000000000000 # the free space, the same both ways

# opens NAME DIR: how many .safetensors files the dry run of DIR opens
opens() {
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
        strace -f -qq -e trace=openat,open -o "$T/trace" qmoe-extract --dry-run "$1" "$T/x" \
        >/dev/null 2>&1 || echo "exit $?"
    grep -c '\.safetensors"' "$T/trace"
}
if command -v strace >/dev/null; then
    complete; n=$(opens "$T/out")
    [ "$n" = 0 ] && ok described-opens-no-file || fail described-opens-no-file "$n opens"
    incomplete; n=$(opens "$T/out")
    [ "$n" = "$files" ] && ok incomplete-opens-every-file || fail incomplete-opens-every-file "$n of $files"
    rm -f "$M"; n=$(opens "$T/out")
    [ "$n" = "$files" ] && ok no-manifest-opens-every-file || fail no-manifest-opens-every-file "$n of $files"
else
    for c in described-opens-no-file incomplete-opens-every-file no-manifest-opens-every-file; do
        skip "$c" "strace is not installed"
    done
fi

# the same plan, text and --json, both ways
for j in text json; do
    a=(); [ $j = json ] && a=(--json)
    complete; run qmoe-extract --dry-run "${a[@]}" "$T/out" "$T/x"; expect "dry-$j-described" 0; d=$out
    incomplete; run qmoe-extract --dry-run "${a[@]}" "$T/out" "$T/x"; expect "dry-$j-per-file" 0
    same "dry-$j-same" "$d" "$out"
done

# an extraction from the OUT: the same files and source identity both ways
complete; run qmoe-extract --no-progress --layers 1-2 "$T/out" "$T/y1"
expect extract-described 0
incomplete; run qmoe-extract --no-progress --layers 1-2 "$T/out" "$T/y2"
sums() { (cd "$1" && find . -name '*.safetensors' -exec sha256sum {} + | sort); }
same extract-same-files "$(sums "$T/y1")" "$(sums "$T/y2")"
same extract-same-source "$(cat "$T/y1/.qmoe/source.json")" "$(cat "$T/y2/.qmoe/source.json")"

# a file changed after qmoe.json: refused when its data is read, by name
complete
f=$(cd "$T/out" && ls experts/*layer_01.safetensors | head -1)
t=$(jq -r --arg p "$f" '.files[] | select(.path == $p) | .tensors[0].name' "$M")
cp "$T/out/$f" "$T/saved"
"$QMOE_BUILD/tests/tools/stmutate" reshape "$T/out/$f" "$t" 1,$(($(jq -r --arg p "$f" \
    '.files[] | select(.path == $p) | .tensors[0].shape | .[0] * .[1]' "$M"))) >/dev/null 2>&1 ||
    fail reshape-made
run qmoe-extract --no-progress --layers 1 "$T/out" "$T/y3"
expect changed-header-refused 2 "$f" && expect changed-header-says-why 2 "changed after qmoe.json was written"
cp "$T/saved" "$T/out/$f"
truncate -s -64 "$T/out/$f"
run qmoe-extract --no-progress --layers 1 "$T/out" "$T/y4"
expect truncated-refused 2 "$f" && expect truncated-says-why 2 "past the end of the file"
cp "$T/saved" "$T/out/$f"

# a file qmoe.json lists that the directory lacks: read as before, so the
# dry run knows it is missing
mv "$T/out/$f" "$T/saved"
run qmoe-extract --dry-run --json "$T/out" "$T/x"
expect missing-file-seen 0 "$f" stdout
mv "$T/saved" "$T/out/$f"
