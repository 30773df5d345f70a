#!/usr/bin/env bash
# qmoe-verify: a clean extraction passes; a numbered catalogue of damage
# (each on a fresh copy of the clean extraction) fails with exit 1 and a
# line naming the file and, where it applies, the tensor; a running job is
# reported incomplete with its pid; bad input exits 2.
. "$(dirname "$0")/lib.sh"
plan 76
TOOLS="$QMOE_BUILD/tests/tools"
SRC="$FIX/qwen3moe-tiny/omni"        # 3 layers x 16 experts, hidden 64, inter 32
E="thinker.model.layers"

run qmoe-extract "$SRC" "$T/clean"
expect setup-extract 0 || exit 1
fresh() { rm -rf "$T/$1"; cp -a "$T/clean" "$T/$1"; echo "$T/$1"; }
# has NAME TEXT : the last run's stdout contains TEXT
has() { if [[ "$out" == *"$2"* ]]; then ok "$1"; else fail "$1" "stdout lacks '$2': $(head -c 800 "$T/.out")"; fi; }

# -- 0. clean: every mode passes
run qmoe-verify "$T/clean"
expect clean-exit 0 "experts: 48/48" stdout
has clean-layers "layers complete: 3/3"
has clean-others "other files: 4/4"
has clean-ok $'\nOK'
run qmoe-verify --quick "$T/clean"
expect clean-quick 0 "data not read" stdout
run qmoe-verify --source "$SRC" -j 1 "$T/clean"
expect clean-source 0 "compared with the source" stdout
run qmoe-verify --json "$T/clean"
expect clean-json 0 '"status":	"ok"' stdout
has clean-json-counts '"present":	48'

# -- 1. one flipped byte in an expert: the crc32s name the tensor
d=$(fresh flip); f="$d/experts/expert_05_layer_01.safetensors"
sz=$(stat -c %s "$f")
printf '\x5a' | dd of="$f" bs=1 seek=$((sz - 10)) conv=notrunc status=none
run qmoe-verify "$d"
expect flip-exit 1 "hash: experts/expert_05_layer_01.safetensors: tensor '$E.1.mlp.experts.5.up_proj.weight': damaged: crc32" stdout
has flip-sha "experts/expert_05_layer_01.safetensors: sha256"
has flip-layer-incomplete "layers complete: 2/3"
run qmoe-verify --quick "$d"
expect flip-quick-reads-no-data 0
run qmoe-verify --source "$SRC" "$d"
expect flip-source-offset 1 "tensor '$E.1.mlp.experts.5.up_proj.weight': differs from the source's" stdout
has flip-source-exact-byte "(file offset $((sz - 10)))"
run qmoe-verify --json "$d"
expect flip-json 1 '"kind":	"damaged"' stdout
has flip-json-tensor '"tensor":	"'"$E"'.1.mlp.experts.5.up_proj.weight"'

# a damaged header: the strict reader says why, the crc32s clear the data
d=$(fresh hdr); f=experts/expert_11_layer_02.safetensors
printf 'x' | dd of="$d/$f" bs=1 seek=8 conv=notrunc status=none
run qmoe-verify "$d"
expect header-exit 1 "header: $f: invalid header: header is not a JSON object" stdout
has header-hash "every tensor's crc32 matches, so the header bytes"

# -- 2. a truncated file
d=$(fresh trunc); truncate -s -100 "$d/experts/expert_02_layer_00.safetensors"
run qmoe-verify "$d"
expect trunc-exit 1 "size: experts/expert_02_layer_00.safetensors: at offset" stdout
has trunc-says "truncated:"
has trunc-cut-tensor "cut tensors: '$E.0.mlp.experts.2.up_proj.weight'"
run qmoe-verify --quick "$d"
expect trunc-quick 1 "truncated:" stdout

# -- 3. deleted files: listed compactly per layer
d=$(fresh del)
rm "$d/experts/expert_07_layer_02.safetensors"
for e in 03 12 13 14 15; do rm "$d/experts/expert_${e}_layer_00.safetensors"; done
run qmoe-verify "$d"
expect del-exit 1 "coverage: layer 02: expert 7 missing" stdout
has del-range "coverage: layer 00: experts 3,12-15 missing"
has del-count "experts: 42/48"
has del-layers "layers complete: 1/3"
run qmoe-verify --json "$d"
expect del-json 1 '"experts":	"3,12-15"' stdout
d=$(fresh del-layer); rm "$d/layers/layer_01.safetensors"
run qmoe-verify --quick "$d"
expect del-layer-file 1 "coverage: layers/layer_01.safetensors: missing" stdout

# -- 4. an extra file in experts/
d=$(fresh extra)
cp "$d/experts/expert_00_layer_00.safetensors" "$d/experts/expert_00_layer_00.safetensors.bak"
run qmoe-verify --quick "$d"
expect extra-exit 1 "coverage: experts/expert_00_layer_00.safetensors.bak: unexpected file" stdout
d=$(fresh extra2)
cp "$d/experts/expert_00_layer_00.safetensors" "$d/experts/expert_16_layer_00.safetensors"
run qmoe-verify --quick "$d"
expect extra-beyond-count 1 "experts/expert_16_layer_00.safetensors: unexpected file: layer 0 expert 16 is beyond" stdout

# -- 5. a hash edited in the manifest
d=$(fresh mhash); f=experts/expert_09_layer_01.safetensors
sum=$(sha256sum "$d/$f" | cut -c1-64)
bad=$(printf %s "$sum" | tr '0-9a-f' '1-9a-f0')
sed -i "s/$sum/$bad/" "$d/qmoe.json"
run qmoe-verify "$d"
expect mhash-exit 1 "hash: $f: sha256" stdout
has mhash-crc-says-header-or-record "every tensor's crc32 matches"

# -- 6. a wrong shape written consistently (header, data and manifest agree)
d=$(fresh shape); f=experts/expert_04_layer_01.safetensors
t="$E.1.mlp.experts.4.down_proj.weight"
"$TOOLS/stmutate" reshape "$d/$f" "$t" 32,64 && "$TOOLS/stmutate" remanifest "$d" "$f"
check shape-setup "$TOOLS/stcheck" "$d/$f"
run qmoe-verify "$d"
expect shape-exit 1 "shape: $f: tensor '$t': shape [32, 64], config.json implies [64, 32]" stdout
run qmoe-verify --quick "$d"
expect shape-quick 1 "config.json implies [64, 32]" stdout

# -- 7. a partial extraction: fine on its own, short of the full expectation
run qmoe-extract --layers 1 --experts 0-7 "$SRC" "$T/part"
run qmoe-verify "$T/part"
expect partial-self 0 "experts: 8/8" stdout
run qmoe-verify --source "$SRC" "$T/part"
expect partial-source 0
run qmoe-verify --expect 48 "$T/part"
expect partial-expect-full 1 "experts: 8/48 (--expect)" stdout
has partial-missing-l0 "coverage: layer 00: experts 0-15 missing"
has partial-missing-l1 "coverage: layer 01: experts 8-15 missing"
run qmoe-verify --expect 10 "$T/part"
expect partial-expect-count 1 "8 expert files present, --expect says 10" stdout
run qmoe-verify --expect 48 "$T/clean"
expect full-expect-full 0

# -- 8. --source: other valid bytes with a regenerated manifest
d=$(fresh swap); f=experts/expert_06_layer_02.safetensors
"$TOOLS/stmutate" setdata "$d/$f" "$E.2.mlp.experts.6.gate_proj.weight" \
    "$d/experts/expert_07_layer_02.safetensors" "$E.2.mlp.experts.7.gate_proj.weight" &&
    "$TOOLS/stmutate" remanifest "$d" "$f"
run qmoe-verify "$d"
expect swap-self-consistent 0
run qmoe-verify --source "$SRC" "$d"
expect swap-source 1 "source: $f: tensor '$E.2.mlp.experts.6.gate_proj.weight': differs from the source's '$E.2.mlp.experts.6.gate_proj.weight' in 'model-" stdout
# a full extraction must hold every source tensor
d=$(fresh drop); f=layers/layer_02.safetensors
rm "$d/$f"
run qmoe-verify --source "$SRC" --quick "$d"
expect source-file-missing 1 "coverage: $f: missing" stdout

# -- 9. manifest trouble: another run's manifest, no manifest
d=$(fresh other-run)
cp "$T/part/qmoe.json" "$d/qmoe.json"
run qmoe-verify --quick "$d"
expect other-manifest 1 "coverage: layer 00: unexpected expert files 0-15 (not in the expected set: layers 1, experts 0-7)" stdout
d=$(fresh nomanifest); rm "$d/qmoe.json"
run qmoe-verify "$d"
expect journal-only 1 "coverage: qmoe.json: missing: the extraction did not finish" stdout
has journal-only-counts "experts: 48/48"

# -- 10. an extraction in progress: incomplete, with its pid
QMOE_THROTTLE_MS=400 qmoe-extract -j 1 "$SRC" "$T/running" >/dev/null 2>&1 &
xp=$!
for _ in $(seq 200); do
    [ -s "$T/running/.qmoe/journal.jsonl" ] && break; sleep 0.05
done
run qmoe-verify --quick "$T/running"
expect running-exit 1 "INCOMPLETE: extraction running (pid $xp)" stdout
has running-problem "coverage: extraction running (pid $xp):"
run qmoe-verify --json --quick "$T/running"
expect running-json 1 '"pid":	'"$xp" stdout
kill "$xp" 2>/dev/null; wait "$xp" 2>/dev/null
run qmoe-verify --quick "$T/running"
expect stopped-incomplete 1 "the extraction did not finish" stdout

# -- 11. bad input: exit 2
run qmoe-verify "$T/nonexistent"
expect missing-out 2 "cannot open '$T/nonexistent': No such file or directory"
run qmoe-verify "$T/clean/qmoe.json/x"
expect unreadable-out 2 "Not a directory"
run qmoe-verify "$T/clean/qmoe.json"
expect out-is-a-file 2 "not a directory"
run qmoe-verify --json "$T/nonexistent"
expect missing-out-json 2 '"status":	"error"' stdout
# a file that cannot be read (a directory where an expert should be) is an I/O error
d=$(fresh unreadable); f=experts/expert_01_layer_01.safetensors
rm "$d/$f"; mkdir "$d/$f"
run qmoe-verify "$d"
expect unreadable-file 1 "coverage: $f: not a regular file" stdout
mkdir -p "$T/empty"
run qmoe-verify "$T/empty"
expect not-an-extraction 2 "holds no qmoe extraction"
if [ "$(id -u)" != 0 ]; then
    mkdir -p "$T/locked"; chmod 000 "$T/locked"
    run qmoe-verify "$T/locked"
    expect unreadable-perm 2 "Permission denied"
    chmod 755 "$T/locked"
    d=$(fresh noperm); f=experts/expert_01_layer_02.safetensors; chmod 000 "$d/$f"
    run qmoe-verify "$d"
    expect unreadable-expert 2 "read: $f: cannot open: Permission denied" stdout
    chmod 644 "$d/$f"
else
    skip unreadable-perm "root reads everything"; skip unreadable-expert "root reads everything"
fi
run qmoe-verify --source "$T/nonexistent" "$T/clean"
expect missing-source 2 "cannot open checkpoint"
run qmoe-verify --bogus "$T/clean"
expect bad-option 2 "Unknown option"
run qmoe-verify
expect no-args 2 "missing OUT"
run qmoe-verify --help
expect help 0 "Exit status:" stdout
run qmoe-verify --version
expect version 0 "qmoe-verify " stdout

# -- 12. every layout of qmoe-mksample, fused slices included
for lay in $(qmoe-mksample --list | awk '{print $1}'); do
    qmoe-mksample --layout "$lay" --layers 3 --experts 4 "$T/mk-$lay" >/dev/null &&
        qmoe-extract "$T/mk-$lay" "$T/mkx-$lay" >/dev/null
    run qmoe-verify --source "$T/mk-$lay" "$T/mkx-$lay"
    expect "layout-$lay-clean" 0 "experts: " stdout
done
# hidden 64, inter 32: a fused expert's gate_up slice is [64, 64]
d="$T/mkx-qwen3_moe_fused"; f=experts/expert_02_layer_01.safetensors
t=model.layers.1.mlp.experts.2.gate_up_proj
"$TOOLS/stmutate" reshape "$d/$f" "$t" 128,32 && "$TOOLS/stmutate" remanifest "$d" "$f"
run qmoe-verify --quick "$d"
expect fused-slice-shape 1 "shape: $f: tensor '$t': shape [128, 32], config.json implies [64, 64]" stdout
run qmoe-verify --source "$T/mk-qwen3_moe_fused" "$d"
expect fused-slice-source 1 "source: $f: tensor '$t': BF16 [128, 32], the source's 'model.layers.1.mlp.experts.gate_up_proj' is BF16 [64, 64]" stdout

