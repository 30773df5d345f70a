#!/usr/bin/env bash
# fp8dot.sh - the FP8 decode kernel against memcpy (tests/bench/fp8dot.c),
# for this tree's common/model/matvec.c and, with BASE=REF, for REF's,
# alternating ROUNDS times in one invocation so both see the same load;
# and the native build against -mno-avx512f (the AVX2 path).
#
#   make && BASE=main ROUNDS=5 bash tests/bench/fp8dot.sh [rows cols trials]
set -eu
cd "$(dirname "$0")/../.."
QMOE_BUILD=${QMOE_BUILD:-build}
B=$(mktemp -d "${TMPDIR:-/tmp}/fp8dot.XXXXXX")
trap 'rm -rf "$B"' EXIT
PKGS="glib-2.0 libcjson libcrypto zlib"
build() { # OUT MATVEC.C [CFLAGS...]
    local out=$1 src=$2; shift 2
    # shellcheck disable=SC2046
    ${CC:-cc} -std=c11 -D_GNU_SOURCE -O2 -march=native -ffp-contract=fast "$@" \
        $(pkg-config --cflags $PKGS) -Icommon tests/bench/fp8dot.c "$src" \
        "$QMOE_BUILD/libqmoe.a" $(pkg-config --libs $PKGS) -lm -pthread -o "$out"
}
V=
build "$B/new" common/model/matvec.c && V="new"
build "$B/new-avx2" common/model/matvec.c -mno-avx512f && V="$V new-avx2"
if [ -n "${BASE:-}" ]; then
    git show "$BASE:common/model/matvec.c" >"$B/matvec-base.c"
    build "$B/base" "$B/matvec-base.c" && V="base $V"
    build "$B/base-avx2" "$B/matvec-base.c" -mno-avx512f && V="base-avx2 $V"
fi
echo "# $(uptime)"
for r in $(seq "${ROUNDS:-3}"); do
    for v in $V; do printf '%-10s ' "$v"; "$B/$v" "$@"; done
done
