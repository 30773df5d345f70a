# tests/cluster/lib.sh - helpers for the cluster tests (sourced after
# tests/cli/lib.sh, whose ok/fail/skip/run/expect/check they use).

# sha256 of every file of OUT except the state directory and qmoe.json
# (whose "created" and per-file "time" differ from run to run)
tree_sum() { (cd "$1" && find . -path ./.qmoe -prune -o -type f ! -name qmoe.json -print | LC_ALL=C sort | xargs sha256sum); }

# make_sample DIR : a sample checkpoint in DIR; qmoe-mksample when built
# (a Qwen3-Omni shape, 4 layers x 16 experts, about 13 MB), else the
# golden fixture. Prints what it used.
make_sample() {
    if [ -x "$QMOE_BIN/qmoe-mksample" ]; then
        qmoe-mksample --layers 4 --experts 16 --hidden 256 --inter 128 "$1" >/dev/null || return 1
        echo "# sample: qmoe-mksample --layers 4 --experts 16 --hidden 256 --inter 128"
    else
        cp -r "$FIX/qwen3moe-tiny/omni" "$1"
        echo "# sample: tests/fixtures/qwen3moe-tiny/omni (qmoe-mksample not built)"
    fi
}

# verify_out NAME SRC OUT : the extraction is complete and byte-identical
# to SRC: ckcmp always, qmoe-verify --source too once it is built.
verify_out() {
    local name=$1 vsrc=$2 vout=$3
    run "$QMOE_BUILD/tests/tools/ckcmp" "$vsrc" "$vout"
    expect "$name-ckcmp" 0 "same:" stdout
    check "$name-manifest-complete" grep -q '"complete":true' "$vout/qmoe.json"
    if [ -x "$QMOE_BIN/qmoe-verify" ]; then
        run qmoe-verify --source "$vsrc" "$vout"
        expect "$name-qmoe-verify" 0
    else
        skip "$name-qmoe-verify" "qmoe-verify not built"
    fi
}

# need_root NAME : skip the rest (exit 0) when not root
need_root() {
    if [ "$(id -u)" != 0 ]; then skip "$1" "needs root (CI runs as root)"; exit 0; fi
}

# apt_need PKG... : installs those of the Debian packages that are missing
# (as root; `apt-get update` first only if the plain install fails)
apt_need() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} = 0 ] && return 0
    [ "$(id -u)" = 0 ] || return 1
    echo "# apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$T/apt.log" 2>&1 && return 0
    apt-get update -qq >>"$T/apt.log" 2>&1 &&
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$T/apt.log" 2>&1
}
