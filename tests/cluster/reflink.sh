#!/usr/bin/env bash
# Zero-copy extraction on loop-mounted XFS (reflink=1) and btrfs images:
# blocks are shared with the source (the summary says how much, the
# filesystem's free space barely moves), the files are valid safetensors
# with the source's tensors, --no-reflink and a source on another
# filesystem fall back to the plain bytes.
. "$(dirname "$0")/../cli/lib.sh"
. "$(dirname "$0")/lib.sh"
need_root reflink
apt_need xfsprogs btrfs-progs ||
    { fail reflink-tools-installed "apt-get install xfsprogs btrfs-progs failed: $(tail -3 "$T/apt.log")"; exit 0; }

W=$(mktemp -d /tmp/qmoe-reflink.XXXXXX)
MNT=()
cleanup() {
    local m
    for m in "${MNT[@]}"; do umount "$m" 2>/dev/null; done
    rm -rf "$W"
}
trap cleanup EXIT
used() { sync; df -B1 --output=used "$1" | tail -1; }

make_sample "$T/src" || { fail sample "cannot make the sample"; exit 0; }
run qmoe-extract --no-progress "$T/src" "$T/plain"   # /tmp: no reflinks
expect plain-reference 0
[[ "$out" != *"shared with the source"* ]] && ok no-sharing-without-reflinks || fail no-sharing-without-reflinks "$out"

for fs in xfs btrfs; do
    img="$W/$fs.img" mnt="$W/$fs"
    mkdir -p "$mnt"
    truncate -s 512M "$img"
    case $fs in
        xfs) mk=(mkfs.xfs -q -f -m reflink=1 "$img") ;;
        btrfs) mk=(mkfs.btrfs -q -f "$img") ;;
    esac
    if ! "${mk[@]}" >"$T/mkfs.log" 2>&1; then fail "$fs-mkfs" "$(tail -3 "$T/mkfs.log")"; continue; fi
    if ! mount -o loop "$img" "$mnt" 2>"$T/mount.log"; then
        fail "$fs-loop-mount" "$(cat "$T/mount.log")"; continue
    fi
    MNT+=("$mnt")
    cp -r "$T/src" "$mnt/src"
    u0=$(used "$mnt")
    run qmoe-extract --no-progress --json "$mnt/src" "$mnt/out"
    expect "$fs-extract" 0
    u1=$(used "$mnt")
    shared=$(printf %s "$out" | sed -n 's/.*"bytes_shared":\([0-9]*\).*/\1/p')
    total=$(printf %s "$out" | sed -n 's/.*"bytes_done":\([0-9]*\).*/\1/p')
    run qmoe-extract --no-progress --no-reflink "$mnt/src" "$mnt/copy"
    expect "$fs-no-reflink" 0
    u2=$(used "$mnt")
    echo "# $fs: $shared of $total tensor bytes shared; space used grew by $((u1 - u0)) bytes (plain copy: $((u2 - u1)))"
    # tensors much smaller than the fixture's 4 KiB blocks are what keeps
    # this low; a real checkpoint shares all but a block or two per tensor
    [ -n "$shared" ] && [ "$shared" -ge $((total / 4)) ] && ok "$fs-blocks-shared" || fail "$fs-blocks-shared" "$out"
    [ $((u1 - u0)) -lt $((u2 - u1 - shared / 2)) ] && ok "$fs-space-saved" \
        || fail "$fs-space-saved" "reflinked grew by $((u1 - u0)), plain by $((u2 - u1))"
    verify_out "$fs" "$mnt/src" "$mnt/out"
    run "$QMOE_BUILD/tests/tools/stcheck" $(find "$mnt/out" -name '*.safetensors' ! -path '*/.qmoe/*')
    expect "$fs-strict-reader-accepts" 0 "ok " stdout
    # resume on the reflinked output writes nothing
    run qmoe-extract --no-progress "$mnt/src" "$mnt/out"
    expect "$fs-resume" 0 "(resumed)" stdout
    # --no-reflink: the plain bytes, the same as on any filesystem
    [ "$(tree_sum "$mnt/copy")" = "$(tree_sum "$T/plain")" ] && ok "$fs-no-reflink-plain-bytes" \
        || fail "$fs-no-reflink-plain-bytes"
    # source on another filesystem: the probe says no (EXDEV), plain bytes
    run qmoe-extract --no-progress "$T/src" "$mnt/cross"
    expect "$fs-cross-fs" 0
    [[ "$out" != *"shared with the source"* ]] && [ "$(tree_sum "$mnt/cross")" = "$(tree_sum "$T/plain")" ] \
        && ok "$fs-cross-fs-plain-bytes" || fail "$fs-cross-fs-plain-bytes" "$out"
    # the other direction: shared blocks stay valid after the source changes
    src1=$(ls "$mnt/src"/model-*.safetensors | head -1)
    dd if=/dev/zero of="$src1" bs=1M count=1 seek=0 conv=notrunc status=none 2>/dev/null
    run "$QMOE_BUILD/tests/tools/ckcmp" "$T/src" "$mnt/out"
    expect "$fs-copy-on-write" 0 "same:" stdout
done
