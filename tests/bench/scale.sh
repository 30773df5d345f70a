#!/usr/bin/env bash
# Scaling curves (make bench BENCH=scale): how the cost of qmoe-extract,
# qmoe-verify and qmoe-status grows with the checkpoint.
#
#  1. extraction and verification time vs input size (0.5, 1, 2, 4 GB of
#     Omni-shaped experts of 4.7 MB; more layers for more bytes) and vs -j
#     (1, 2), with peak RSS; seconds per GB should stay flat (linear cost)
#     and RSS should not grow with the input.
#  2. file count: 6144 files (Qwen3-Omni, 48 x 128) and 14,848 files
#     (DeepSeek-V3 shape: 58 MoE layers x 256 experts) of tiny experts:
#     extraction, qmoe-status snapshot and verification time, peak RSS.
#
# Warm page cache (the sample was just written), scratch under
# $QMOE_BENCH_DIR, removed after each size. A tool that is not built yet
# shows "-" in its columns. SCALE_SIZES="0.5 1" and SCALE_JOBS="1 2" and
# SCALE_FILES="6144 14848" narrow the runs.
set -u
B="$QMOE_BIN"; D="$QMOE_BENCH_DIR/scale"; rm -rf "$D"; mkdir -p "$D"
sizes=${SCALE_SIZES:-0.5 1 2 4}
jobs=${SCALE_JOBS:-1 2}
counts=${SCALE_FILES:-6144 14848}
# QMOE_VERIFY / QMOE_STATUS: binaries to use instead of those in $QMOE_BIN
VERIFY=${QMOE_VERIFY:-$B/qmoe-verify}
STATUS=${QMOE_STATUS:-$B/qmoe-status}

# measure OUTFILE CMD... : runs CMD (output discarded), writes
# "SECONDS PEAK_RSS_KB EXIT CPU_SECONDS" to OUTFILE; RSS and CPU "-"
# without GNU time
measure() {
    local o=$1; shift
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f "%e %M %x %U %S" -o "$o" "$@" >/dev/null 2>"$o.err"
        tail -1 "$o" | awk '{ printf "%s %s %s %.2f\n", $1, $2, $3, $4 + $5 }' >"$o.last"; mv "$o.last" "$o"
    else
        local s e rc
        s=$(date +%s.%N); "$@" >/dev/null 2>"$o.err"; rc=$?; e=$(date +%s.%N)
        awk -v s="$s" -v e="$e" -v rc="$rc" 'BEGIN { printf "%.2f - %d -\n", e - s, rc }' >"$o"
    fi
}
col() { awk -v c="$2" '{ print $c }' "$1"; }       # col FILE N
ok_run() { [ "$(col "$1" 3)" = 0 ]; }
mb() { awk -v k="$1" 'BEGIN { if (k == "-") print "-"; else printf "%.0fM", k / 1024 }'; }

avail=$(df -B1 --output=avail "$D" | tail -1)
echo "scratch $D: $(df -h --output=avail "$D" | tail -1 | tr -d ' ') free; $(nproc) CPUs"
[ -x /usr/bin/time ] || echo "(no /usr/bin/time: peak RSS not measured; Debian package 'time')"
[ -x "$VERIFY" ] || echo "(qmoe-verify not built: verification columns show -)"
[ -x "$STATUS" ] || echo "(qmoe-status not built: status column shows -)"

# ---- 1. time vs input size and -j
# 32 experts x 3 x 1024 x 768 bf16 = 151 MB of experts per layer (+ 8 MB of
# attention): about 159 MB per layer
per_layer=159000000
nj=$(echo $jobs | wc -w); lastj=$(echo $jobs | awk '{ print $NF }')
hdr="$(printf "%-7s %6s %6s" input files layers)"
for j in $jobs; do hdr="$hdr$(printf " %8s" "extr-j$j")"; done
hdr="$hdr$(printf " %7s" "s/GB")"
for j in $jobs; do hdr="$hdr$(printf " %8s" "verif-j$j")"; done
hdr="$hdr$(printf " %7s %9s %9s %9s" "s/GB" rss-extr rss-verif cpu-extr)"
echo "$hdr" | tee "$D/table1"
sgb() { awk -v t="$1" -v b="$2" 'BEGIN { if (t ~ /^[0-9.]+$/) printf "%.2f", t / (b / 1e9); else print "-" }'; }
for gb in $sizes; do
    layers=$(awk -v g="$gb" -v p="$per_layer" 'BEGIN { l = int(g * 1e9 / p + 0.5); print l < 1 ? 1 : l }')
    need=$(awk -v g="$gb" 'BEGIN { printf "%.0f", g * 2.2e9 + 1e9 }')
    if [ "$avail" -lt "$need" ]; then echo "$gb GB: skipped, needs $need bytes free"; continue; fi
    "$B/qmoe-mksample" --layers "$layers" --experts 32 --hidden 1024 --inter 768 \
        --shard-mb 1000 "$D/src" >/dev/null || { echo "$gb GB: qmoe-mksample failed"; continue; }
    bytes=$(cat "$D"/src/*.safetensors | wc -c)   # also warms the cache
    xt= vt= tx=- tv=- rss_x=- rss_v=- files=- cpu_x=-
    for j in $jobs; do
        rm -rf "$D/out"; sync
        measure "$D/m" "$B/qmoe-extract" --no-progress -j "$j" "$D/src" "$D/out"
        if ok_run "$D/m"; then tx=$(col "$D/m" 1) rss_x=$(col "$D/m" 2) cpu_x=$(col "$D/m" 4); else tx=fail; fi
        xt="$xt$(printf " %8s" "$tx")"
    done
    files=$(find "$D/out" -name '*.safetensors' | wc -l)
    for j in $jobs; do
        if [ -x "$VERIFY" ]; then
            measure "$D/m" "$VERIFY" -j "$j" "$D/out"
            if ok_run "$D/m"; then tv=$(col "$D/m" 1) rss_v=$(col "$D/m" 2); else tv=fail; fi
        fi
        vt="$vt$(printf " %8s" "$tv")"
    done
    printf "%-7s %6s %6s%s %7s%s %7s %9s %9s %9s\n" "$(awk -v b="$bytes" 'BEGIN { printf "%.2fGB", b / 1e9 }')" \
        "$files" "$layers" "$xt" "$(sgb "$tx" "$bytes")" "$vt" "$(sgb "$tv" "$bytes")" \
        "$(mb "$rss_x")" "$(mb "$rss_v")" "$cpu_x" | tee -a "$D/table1"
    rm -rf "$D/src" "$D/out"
done
echo "(seconds, warm cache; s/GB, peak RSS and CPU seconds (user + system) of the -j $lastj runs;"
echo " elapsed time is the disk's fsync speed, CPU time the tool's own work)"
# linearity: largest over smallest seconds per GB
for what in extraction verification cpu; do
    c=$((4 + nj)) per=0
    [ $what = verification ] && c=$((5 + 2 * nj))
    [ $what = cpu ] && c=$((8 + 2 * nj)) per=1    # CPU seconds: divide by the GB
    awk -v c="$c" -v w="$what" -v per="$per" 'NR > 1 && $c ~ /^[0-9.]+$/ {
            v = per ? $c / ($1 + 0) : $c
            if (min == "" || v < min) min = v; if (v > max) max = v }
        END { if (min > 0) printf "%-12s s/GB: %.2f .. %.2f (max/min %.2f; 1.00 = perfectly linear)\n", w, min, max, max / min }' \
        "$D/table1"
done

# ---- 2. file count
echo
{
printf "%-34s %6s %9s %9s %9s %9s %9s %9s\n" "sample" "files" "extract" "status" "verify" "rss-extr" "rss-stat" "rss-verif"
} | tee "$D/table2"
for n in $counts; do
    case $n in
        6144)  args=(--layers 48 --experts 128) name="qwen3_omni_moe 48 x 128" ;;
        14848) args=(--layout deepseek_v3 --layers 59 --experts 256) name="deepseek_v3 58 MoE x 256" ;;
        *) echo "$n: unknown file count (6144 or 14848)"; continue ;;
    esac
    "$B/qmoe-mksample" "${args[@]}" --hidden 64 --inter 32 "$D/src" >/dev/null || { echo "$n: qmoe-mksample failed"; continue; }
    cat "$D"/src/*.safetensors >/dev/null; sync
    measure "$D/m" "$B/qmoe-extract" --no-progress -j 2 "$D/src" "$D/out"
    te=$(col "$D/m" 1) re=$(col "$D/m" 2); ok_run "$D/m" || te=fail
    experts=$(ls "$D/out/experts" 2>/dev/null | wc -l)
    ts=- rs=- tv=- rv=-
    if [ -x "$STATUS" ]; then
        measure "$D/m" "$STATUS" "$D/out"; ts=$(col "$D/m" 1) rs=$(col "$D/m" 2)
        ok_run "$D/m" || ts="fail"
    fi
    if [ -x "$VERIFY" ]; then
        measure "$D/m" "$VERIFY" -j 2 "$D/out"; tv=$(col "$D/m" 1) rv=$(col "$D/m" 2)
        ok_run "$D/m" || tv="fail"
    fi
    printf "%-34s %6s %9s %9s %9s %9s %9s %9s\n" "$name" "$experts" "$te" "$ts" "$tv" \
        "$(mb "$re")" "$(mb "$rs")" "$(mb "$rv")" | tee -a "$D/table2"
    rm -rf "$D/src" "$D/out"
done
echo "(seconds; extract and verify with -j 2; status: one snapshot of a finished OUT)"
rm -rf "$D"
