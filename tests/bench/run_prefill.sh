#!/usr/bin/env bash
# run_prefill.sh - prompt (prefill) and decode speed at the real widths.
#
# Writes a random checkpoint with the widths of Qwen3-30B-A3B / the
# Qwen3-Omni thinker (hidden 2048, 32/4 heads of 128, 128 experts top-8,
# moe_intermediate 768, vocab 151936) and 4 layers (6.2 GB) with
# qmoe-mksample, reads it into the page cache, then measures in the same
# run, best of $TRIALS each:
#   - the bf16 product alone, one thread: matrix-matrix against
#     matrix-vector GFLOP/s (tests/bench/kernels.c);
#   - memcpy bandwidth (tests/bench/membw.c, same threads);
#   - for each prompt length in $PROMPTS: prefill tokens/s of a prompt of
#     that many ids, and decode tokens/s of $TOKENS generated tokens after
#     it; prefill/decode (target >= 7) and the decode weight bandwidth as
#     a share of memcpy (target >= 90 %). Measured twice:
#       fresh: qmoe-run in a new process, what one command costs a user;
#         its prompt pays the first touch of every expert page it maps;
#       warm: tests/tools/fwd_bench.c, the way llama-bench measures (load,
#         an untimed warm-up that maps the experts, random ids);
#   - one --perplexity window of 1024 tokens (best of $PPL_TRIALS).
# The machine may be shared: compare the ratios, not absolute numbers.
# Peers measured in the same loop, interleaved with qmoe-run, trial by
# trial (best of $TRIALS each, and their ratios):
#   - QMOE_RUN_BASE=path/to/qmoe-run: an older build (before/after);
#   - LLAMA_CPP_DIR=dir: llama.cpp built natively there (cmake
#     -DGGML_NATIVE=ON, build/bin/llama-bench); the sample is converted
#     once to a BF16 GGUF (qwen3moe) by tests/bench/gguf_from_sample.py
#     with that tree's gguf-py (convert_hf_to_gguf.py needs transformers;
#     PYTHON: a python3 with numpy, default the first of python3,
#     /usr/bin/python3 that has it), or LLAMA_GGUF names an existing GGUF;
#     llama-bench measures the same prompt lengths and decode tokens with
#     the same threads.
# The kernels line also times OpenBLAS sgemm on the same shapes when its
# development package is installed, and KERNEL_BASE_REF=main the kernels
# of that git revision (matvec.c), each in CPU time.
#
#   QMOE_BUILD=build bash tests/bench/run_prefill.sh   (make bench calls it)
# Environment: THREADS (default: processors), TRIALS (3), PROMPTS ("64 256"),
# TOKENS (16), PPL_TRIALS (1), CACHE_MB (expert cache, default 8192: all
# 4.8 GB of experts, so that decode measures the forward pass, not
# evictions), QMOE_REAL (an existing real-width sample to use instead of
# writing one), QMOE_RUN (the qmoe-run to measure, e.g. an older build),
# QMOE_RUN_BASE, LLAMA_CPP_DIR, LLAMA_GGUF, KERNEL_BASE_REF (above).
set -eu
cd "$(dirname "$0")/../.."
: "${QMOE_BUILD:?set QMOE_BUILD to the build directory}"
THREADS=${THREADS:-$(getconf _NPROCESSORS_ONLN)}
TRIALS=${TRIALS:-3}
PROMPTS=${PROMPTS:-64 256}
TOKENS=${TOKENS:-16}
PPL_TRIALS=${PPL_TRIALS:-1}
CACHE_MB=${CACHE_MB:-8192}
RUN=${QMOE_RUN:-$QMOE_BUILD/bin/qmoe-run}
B=${QMOE_BENCH_DIR:-$QMOE_BUILD/bench}
mkdir -p "$B"
CC=${CC:-cc}
$CC -std=c11 -D_GNU_SOURCE -O2 -march=native -Wall -Wextra -Werror tests/bench/membw.c \
    -pthread -o "$B/membw"
PKGS="glib-2.0 libcjson libcrypto zlib"
KPKGS=$PKGS KDEF=
if pkg-config --exists openblas; then KPKGS="$PKGS openblas" KDEF=-DKERNELS_BLAS; fi
kernels() { # output matvec.c
    # shellcheck disable=SC2046
    $CC -std=c11 -D_GNU_SOURCE -O2 -march=native -ffp-contract=fast -Wall -Wextra -Werror $KDEF \
        $(pkg-config --cflags $KPKGS) -Icommon tests/bench/kernels.c "$2" "$QMOE_BUILD/libqmoe.a" \
        $(pkg-config --libs $KPKGS) -lm -pthread -o "$1"
}
kernels "$B/kernels" common/model/matvec.c
KV=kernels
if [ -n "${KERNEL_BASE_REF:-}" ]; then
    git show "$KERNEL_BASE_REF:common/model/matvec.c" >"$B/matvec-base.c"
    kernels "$B/kernels-base" "$B/matvec-base.c"
    KV="kernels-base kernels"
fi
# the product alone: an expert's gate (768 x 2048) and q_proj (4096 x 2048),
# then decode's case: 512 MB of weights against reading them
for k in $KV; do
    echo "$k:"
    OPENBLAS_NUM_THREADS=1 "$B/$k" 768 2048 16 5
    OPENBLAS_NUM_THREADS=1 "$B/$k" 4096 2048 64 3
    "$B/$k" --stream 512 "$THREADS" "$TRIALS"
    if [ "$k" = kernels ]; then "$B/$k" --stream 512 "$THREADS" "$TRIALS" fp8; fi
done

# qwen3_moe: the widths and the computation of the Omni thinker's text
# model, in a layout llama.cpp's converter reads
MODEL=${QMOE_REAL:-$B/real-width-qwen3moe}
if [ ! -f "$MODEL/model.safetensors.index.json" ]; then
    echo "writing a real-width random checkpoint (4 layers x 128 experts, 6.2 GB) to $MODEL"
    "$QMOE_BUILD/bin/qmoe-mksample" --layout qwen3_moe --layers 4 --experts 128 --topk 8 \
        --hidden 2048 --inter 768 --heads 32 --kv-heads 4 --head-dim 128 --vocab 151936 \
        "$MODEL" >/dev/null
fi
LLAMA_BENCH=
if [ -n "${LLAMA_CPP_DIR:-}" ]; then
    LLAMA_BENCH=$LLAMA_CPP_DIR/build/bin/llama-bench
    GGUF=${LLAMA_GGUF:-$B/real-width-bf16.gguf}
    if ! [ -x "$LLAMA_BENCH" ]; then
        echo "llama.cpp: no $LLAMA_BENCH (build it with cmake -DGGML_NATIVE=ON)"; LLAMA_BENCH=
    elif [ -z "${LLAMA_GGUF:-}" ] && { [ ! -f "$GGUF" ] || [ "$MODEL/config.json" -nt "$GGUF" ]; }; then
        PY=${PYTHON:-}
        if [ -z "$PY" ]; then
            for p in python3 /usr/bin/python3; do
                if "$p" -c 'import numpy' 2>/dev/null; then PY=$p; break; fi
            done
        fi
        echo "llama.cpp: converting $MODEL to $GGUF"
        if [ -z "$PY" ]; then
            echo "llama.cpp: no python3 with numpy for tests/bench/gguf_from_sample.py (set PYTHON)"; LLAMA_BENCH=
        elif ! "$PY" tests/bench/gguf_from_sample.py "$LLAMA_CPP_DIR" "$MODEL" "$GGUF.tmp" \
                >"$B/convert.log" 2>&1 || ! mv "$GGUF.tmp" "$GGUF"; then
            echo "llama.cpp: converting $MODEL failed (see $B/convert.log)"; LLAMA_BENCH=
            rm -f "$GGUF.tmp"
        fi
    elif [ ! -f "$GGUF" ]; then
        echo "llama.cpp: no $GGUF"; LLAMA_BENCH=
    fi
fi
# Both models as read from disk: how a file came into the page cache sets
# its folios (written files: 4 KiB pages; read back: up to 2 MiB here),
# and a first touch maps a whole 2 MiB folio per fault but 64 KiB of small
# ones. Dropped (dd iflag=nocache count=0), then read again.
recache() {
    for f in "$@"; do dd if="$f" iflag=nocache count=0 status=none; cat "$f" >/dev/null; done
}
recache "$MODEL"/*.safetensors
if [ -n "$LLAMA_BENCH" ]; then recache "$GGUF"; fi

jnum() { sed -n "s/.*\"$1\":[[:space:]]*\([0-9.e+-]*\).*/\1/p" | head -1; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (b > a ? b : a) }'; }
# n ids spread over the model's vocabulary (a fixed LCG, the same every run)
VOCAB=$("$RUN" --json -n 0 --token-ids 0 "$MODEL" 2>/dev/null | jnum model)
: "${VOCAB:?qmoe-run cannot tell the vocabulary of $MODEL}"
ids() { awk -v n="$1" -v v="$VOCAB" 'BEGIN { s = 12345; for (i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) % 2147483648; printf "%s%d", i ? "," : "", s % v } }'; }

membw=0
for _ in $(seq "$TRIALS"); do
    membw=$(max "$membw" "$("$B/membw" "$THREADS" 512)")
done
printf 'memcpy bandwidth (%s threads): %.2f GB/s\n' "$THREADS" \
    "$(awk -v b="$membw" 'BEGIN { print b / 1e9 }')"

# one untimed run maps every expert the prompts route to
"$RUN" --ignore-eos -n 2 -j "$THREADS" --cache-mb "$CACHE_MB" --token-ids "$(ids 256)" \
    "$MODEL" >/dev/null 2>&1

# one trial of qmoe-run: prints "prefill-tokens/s decode-tokens/s decode-weight-bytes/s"
qmoe_trial() { # run prompt-length
    local j
    j=$("$1" --json --ignore-eos -n "$TOKENS" -j "$THREADS" --cache-mb "$CACHE_MB" \
        --token-ids "$(ids "$2")" "$MODEL" 2>/dev/null)
    awk -v p="$2" -v ps="$(printf %s "$j" | jnum prefill_s)" \
        -v tg="$(printf %s "$j" | jnum decode_tokens_per_s)" \
        -v b="$(printf %s "$j" | jnum decode_weight_bytes)" -v ds="$(printf %s "$j" | jnum decode_s)" \
        'BEGIN { print p / ps, tg, b / ds }'
}
# one trial of fwd_bench (warm): prints "prefill-tokens/s decode-tokens/s"
warm_trial() { # prompt-length
    "$QMOE_BUILD/tests/tools/fwd_bench" "$MODEL" "$THREADS" "$1" "$TOKENS" 1 "$CACHE_MB"
}
# one trial of llama-bench: prints "prefill-tokens/s decode-tokens/s"
# decode after a prompt of the same length (-d: the KV cache holds that
# many tokens first), as qmoe's decode follows its prompt
llama_trial() { # prompt-length
    local p g
    p=$("$LLAMA_BENCH" -m "$GGUF" -t "$THREADS" -p "$1" -n 0 -r 1 -o json 2>/dev/null)
    g=$("$LLAMA_BENCH" -m "$GGUF" -t "$THREADS" -p 0 -n "$TOKENS" -d "$1" -r 1 -o json 2>/dev/null)
    printf '%s %s\n' "$(printf %s "$p" | jq '.[0].avg_ts')" "$(printf %s "$g" | jq '.[0].avg_ts')"
}
if [ -n "$LLAMA_BENCH" ]; then "$LLAMA_BENCH" -m "$GGUF" -t "$THREADS" -p 16 -n 2 -r 1 >/dev/null 2>&1; fi

for P in $PROMPTS; do
    best_pp=0 best_tg=0 best_bw=0 base_pp=0 base_tg=0 ll_pp=0 ll_tg=0 w_pp=0 w_tg=0
    for _ in $(seq "$TRIALS"); do
        read -r pp tg bw < <(qmoe_trial "$RUN" "$P")
        best_pp=$(max "$best_pp" "$pp") best_tg=$(max "$best_tg" "$tg") best_bw=$(max "$best_bw" "$bw")
        read -r pp tg < <(warm_trial "$P")
        w_pp=$(max "$w_pp" "$pp") w_tg=$(max "$w_tg" "$tg")
        if [ -n "${QMOE_RUN_BASE:-}" ]; then
            read -r pp tg bw < <(qmoe_trial "$QMOE_RUN_BASE" "$P")
            base_pp=$(max "$base_pp" "$pp") base_tg=$(max "$base_tg" "$tg")
        fi
        if [ -n "$LLAMA_BENCH" ]; then
            read -r pp tg < <(llama_trial "$P")
            ll_pp=$(max "$ll_pp" "$pp") ll_tg=$(max "$ll_tg" "$tg")
        fi
    done
    awk -v p="$P" -v pp="$best_pp" -v tg="$best_tg" -v bw="$best_bw" -v m="$membw" 'BEGIN {
        printf "prompt %4d, fresh: prefill %7.2f tokens/s, decode %6.2f tokens/s, prefill/decode %5.2f; decode weights %6.2f GB/s = %5.1f %% of memcpy\n",
               p, pp, tg, pp / tg, bw / 1e9, 100 * bw / m }'
    awk -v p="$P" -v pp="$w_pp" -v tg="$w_tg" 'BEGIN {
        printf "prompt %4d, warm:  prefill %7.2f tokens/s, decode %6.2f tokens/s\n", p, pp, tg }'
    if [ -n "${QMOE_RUN_BASE:-}" ]; then
        awk -v p="$P" -v pp="$best_pp" -v tg="$best_tg" -v bp="$base_pp" -v bt="$base_tg" 'BEGIN {
        printf "prompt %4d, QMOE_RUN_BASE: prefill %7.2f tokens/s, decode %6.2f tokens/s; this build %.2fx prefill, %.2fx decode\n",
               p, bp, bt, pp / bp, tg / bt }'
    fi
    if [ -n "$LLAMA_BENCH" ]; then
        awk -v p="$P" -v pp="$best_pp" -v tg="$best_tg" -v wp="$w_pp" -v wt="$w_tg" \
            -v lp="$ll_pp" -v lt="$ll_tg" 'BEGIN {
        printf "prompt %4d, llama.cpp: prefill %7.2f tokens/s, decode %6.2f tokens/s; qmoe warm %.2fx prefill, %.2fx decode; fresh %.2fx, %.2fx\n",
               p, lp, lt, wp / lp, wt / lt, pp / lp, tg / lt }'
    fi
done

# the longest head of README.md of at most 1024 tokens: one full window
TEXT=$B/ppl.txt
ntok() { "$RUN" --tokenize "$MODEL" <"$TEXT" | tr ',' '\n' | grep -c .; }
n=1400
head -c "$n" README.md >"$TEXT"
while [ "$(ntok)" -lt 1024 ]; do n=$((n + 20)); head -c "$n" README.md >"$TEXT"; done
while [ "$(ntok)" -gt 1024 ]; do n=$((n - 1)); head -c "$n" README.md >"$TEXT"; done
best=0
for _ in $(seq "$PPL_TRIALS"); do
    j=$("$RUN" --json -j "$THREADS" --cache-mb "$CACHE_MB" --context 1024 --perplexity "$TEXT" \
        "$MODEL" 2>/dev/null)
    tps=$(printf %s "$j" | jnum tokens_per_s)
    tok=$(printf %s "$j" | jnum tokens)
    best=$(max "$best" "$tps")
done
awk -v t="$best" -v n="$tok" 'BEGIN {
    printf "perplexity, one window of %d tokens: %6.2f tokens/s (%.1f s)\n", n, t, n / t }'
