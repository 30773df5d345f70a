#!/usr/bin/env bash
# kernels.sh - the matrix products on every path this machine runs: the
# kernel test (tests/unit/kernels.c) built for the build's -march, without
# AVX-512 and portable (see the Makefile), each against float64 and
# matrix-matrix against matrix-vector; then the fused paths (AVX-512,
# AVX2) must give the same bytes, the portable one its own rounding.
. "$(dirname "$0")/lib.sh"
plan 44
K="$QMOE_BUILD/tests/kernels"
has() { grep -qw "$1" /proc/cpuinfo; }
native=portable avx2=portable
if has avx2 && has fma && has f16c; then native=avx2 avx2=avx2; fi
has avx512f && native=avx512
for v in native avx2 portable; do
    case $v in native) want=$native ;; avx2) want=$avx2 ;; *) want=portable ;; esac
    if ! [ -x "$K/$v" ]; then fail "kernels-$v-built" "'$K/$v' is not built"; continue; fi
    run "$K/$v" --expect "$want" --dump "$T/$v.bin"
    printf '%s\n' "$out" | sed "s/^\(ok\|FAIL\) kernels-/\1 kernels-$v-/"
    [ "$rc" -eq 0 ] || fail "kernels-$v-exit" "exited with $rc: $err"
done
if [ "$native" != portable ] && [ "$avx2" != portable ]; then
    if cmp -s "$T/native.bin" "$T/avx2.bin"; then ok kernels-fused-paths-identical
    else fail kernels-fused-paths-identical "$native and $avx2 outputs differ: $(cmp "$T/native.bin" "$T/avx2.bin" 2>&1)"; fi
else
    skip kernels-fused-paths-identical "this CPU has no AVX2 with FMA"
fi
if cmp -s "$T/native.bin" "$T/portable.bin"; then
    [ "$native" = portable ] && ok kernels-portable-rounds-apart \
        || fail kernels-portable-rounds-apart "the portable build gave the fused path's bytes: was it built without FMA?"
else
    ok kernels-portable-rounds-apart
fi
