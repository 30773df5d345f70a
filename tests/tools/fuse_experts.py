#!/usr/bin/python3
"""fuse_experts.py [--up-first] SRC OUT - a Qwen3-MoE checkpoint with its experts stacked.

Writes OUT, the checkpoint SRC (a directory with an index and shards, per-expert
tensors `model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight`) with each
layer's experts stacked as transformers v5 keeps them:

    model.layers.L.mlp.experts.gate_up_proj  [E, 2I, H]  gate rows, then up rows
    model.layers.L.mlp.experts.down_proj     [E, H, I]

Stacking row-major tensors is concatenating their bytes, so this needs no
numpy: expert E's gate_up is its gate bytes followed by its up bytes. Every
other tensor is copied unchanged. Two shards (the stack of layer 1 alone in
the second, so that a stack is read from a shard other than the first) and an
index; config and tokenizer files are copied. --up-first stacks up before
gate (a wrong order: the negative control). For tests/cli/run_fused.sh.
"""
import json
import os
import re
import shutil
import struct
import sys

EXPERT = re.compile(r'^(.*\.mlp\.experts\.)(\d+)\.(gate|up|down)_proj\.weight$')


def read_shard(path):
    with open(path, 'rb') as f:
        raw = f.read()
    n = struct.unpack('<Q', raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop('__metadata__', None)
    data = raw[8 + n:]
    return {k: (v['dtype'], v['shape'], data[v['data_offsets'][0]:v['data_offsets'][1]])
            for k, v in header.items()}


def write_shard(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        dtype, shape, b = tensors[name]
        header[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header['__metadata__'] = {'format': 'pt'}
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * (-len(h) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(blobs))


def main():
    args = sys.argv[1:]
    up_first = args[0] == '--up-first'
    src, out = args[1:3] if up_first else args[:2]
    first_half, second_half = ('up', 'gate') if up_first else ('gate', 'up')
    index = json.load(open(os.path.join(src, 'model.safetensors.index.json')))
    tensors = {}
    for shard in sorted(set(index['weight_map'].values())):
        tensors.update(read_shard(os.path.join(src, shard)))
    experts, rest = {}, {}
    for name, t in tensors.items():
        m = EXPERT.match(name)
        if m:
            experts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = t
        else:
            rest[name] = t
    fused = {}
    for prefix, by in experts.items():
        n = len(by)
        assert sorted(by) == list(range(n)), prefix
        dtype = by[0]['gate'][0]
        i, h = by[0]['gate'][1]
        fused[prefix + 'gate_up_proj'] = (
            dtype, [n, 2 * i, h], b''.join(by[e][first_half][2] + by[e][second_half][2] for e in range(n)))
        fused[prefix + 'down_proj'] = (
            dtype, [n, h, i], b''.join(by[e]['down'][2] for e in range(n)))
    os.makedirs(out, exist_ok=True)
    second = {k: v for k, v in fused.items() if '.layers.1.' in k}
    first = dict(rest)
    first.update({k: v for k, v in fused.items() if k not in second})
    names = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
    write_shard(os.path.join(out, names[0]), first)
    write_shard(os.path.join(out, names[1]), second)
    wm = {k: names[0] for k in first}
    wm.update({k: names[1] for k in second})
    total = sum(len(v[2]) for v in list(first.values()) + list(second.values()))
    with open(os.path.join(out, 'model.safetensors.index.json'), 'w') as f:
        json.dump({'metadata': {'total_size': total}, 'weight_map': dict(sorted(wm.items()))},
                  f, indent=2)
    for f in os.listdir(src):
        if not f.endswith('.safetensors') and f != 'model.safetensors.index.json':
            shutil.copyfile(os.path.join(src, f), os.path.join(out, f))
    print(f'{out}: {len(fused)} stacked tensors from {sum(len(b) for b in experts.values())} experts')


if __name__ == '__main__':
    main()
