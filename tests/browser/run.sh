#!/usr/bin/env bash
# make test-browser: qmoe-verify --coherence --report on the coherent
# sample, rendered by headless Chromium at 1280 x 2400; the screenshot must
# have that size, not be blank (pixel variance, colours, white share) and
# show the heatmaps' red and blue and the gate's green and pink cells
# (tests/browser/pngstat.py decodes the PNG itself). A blank page must fail
# the same check. The screenshots stay in $QMOE_BUILD/browser/ to look at.
# Ends with "N passed, N failed" like make check.
set -u
cd "$(dirname "$0")/../.."
: "${QMOE_BUILD:?}"
B=$QMOE_BUILD/bin OUTDIR=$QMOE_BUILD/browser
T=$(mktemp -d /tmp/qmoe-browser.XXXXXX)
trap 'rm -rf "$T"' EXIT
mkdir -p "$OUTDIR"
W=1280 H=2400
LOG=$T/log
: >"$LOG"
say() { echo "$1" | tee -a "$LOG"; }
tally() { tee -a "$LOG"; }
summary() {
    local p f; p=$(grep -c '^ok ' "$LOG"); f=$(grep -c '^FAIL ' "$LOG")
    echo "$p passed, $f failed"; [ "$f" = 0 ]
}

# chromium, and a font for the Chinese prompt (else it shows as boxes)
if [ "$(id -u)" = 0 ] && { ! command -v chromium >/dev/null || [ ! -d /usr/share/fonts/truetype/wqy ]; }; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null 2>&1
fi
if ! command -v chromium >/dev/null; then
    say "FAIL browser_chromium: no chromium (apt-get install chromium)"
    summary; exit 1
fi
say "ok browser_chromium ($(chromium --version 2>/dev/null | head -1))"

shot() { # URL PNG
    timeout 180 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --user-data-dir="$T/profile" --window-size=$W,$H --screenshot="$2" "$1" \
        >"$T/chromium.log" 2>&1
}

"$B/qmoe-mksample" --coherent "$T/src" >/dev/null && "$B/qmoe-extract" --no-progress "$T/src" "$T/out" >/dev/null &&
"$B/qmoe-verify" --coherence --report "$T/gate" "$T/out" >/dev/null &&
"$B/qmoe-run" --router-stats samples/corpus.jsonl --report "$T/stats" "$T/out" >/dev/null 2>&1
if [ $? = 0 ]; then say "ok browser_reports"; else say "FAIL browser_reports: the sample or its reports failed"; fi

for r in gate stats; do
    what=(); [ $r = stats ] && what=(--no-gate)
    rm -f "$OUTDIR/$r.png"
    if shot "file://$T/$r/index.html" "$OUTDIR/$r.png" && [ -s "$OUTDIR/$r.png" ]; then
        say "ok browser_${r}_screenshot ($OUTDIR/$r.png)"
        /usr/bin/python3 tests/browser/pngstat.py "$OUTDIR/$r.png" $W $H "browser_$r" "${what[@]}" | tally
    else
        say "FAIL browser_${r}_screenshot: $(tail -3 "$T/chromium.log")"
    fi
done

# the check can fail: a blank page is blank
printf '<!DOCTYPE html>\n<html><body></body></html>\n' >"$T/blank.html"
if shot "file://$T/blank.html" "$T/blank.png"; then
    /usr/bin/python3 tests/browser/pngstat.py "$T/blank.png" $W $H blank >"$T/blank.txt"
    if grep -q '^FAIL blank_not_blank' "$T/blank.txt"; then
        say "ok browser_blank_page_detected"
    else
        say "FAIL browser_blank_page_detected: a blank page passed the check"
    fi
else
    say "FAIL browser_blank_screenshot: $(tail -3 "$T/chromium.log")"
fi
summary
