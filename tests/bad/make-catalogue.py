#!/usr/bin/env python3
"""Writes the numbered catalogue of bad inputs (tests/bad/NNN-name/).

Run once by hand when adding entries; the outputs are committed (CI needs no
Python). Each entry holds its input files and an `expect` file read by
tests/cli/bad_inputs.sh:

    # one line saying what the entry attacks
    setup SHELL-COMMAND      (optional, run in the scratch copy $D first)
    run COMMAND ARGS...      ($D = scratch copy of the entry, $OUT = a fresh
                              output path, $FIX = tests/fixtures)
    exit N
    stderr SUBSTRING         (must appear in stderr; repeatable)
    output SUBSTRING         (must appear in stdout or stderr; repeatable)
    requires PROG OPTION     (skip the entry until PROG --help lists OPTION)
    env NAME=VALUE           (set for the command)
    limit SECONDS            (a hang fails after this long; default 60)
    check SHELL-COMMAND      (run after the command; must succeed, e.g. a
                              sentinel outside OUT is unchanged)

Entries stay tiny: anything large is made by a `setup` line (truncate -s
makes sparse files).
"""
import json, os, shutil, struct, sys

HERE = os.path.dirname(os.path.abspath(__file__))
entries = []

def entry(name, files, expect):
    entries.append((name, files, expect))

def st_raw(header_bytes, data=b'', n=None):
    if n is None:
        n = len(header_bytes)
    return struct.pack('<Q', n) + header_bytes + data

def st(tensors, meta=None, pad=True):
    """tensors: (name, dtype, shape, nbytes-per-element)."""
    hdr = {}
    if meta is not None:
        hdr['__metadata__'] = meta
    off = 0
    data = b''
    for name, dt, shape, sz in tensors:
        n = 1
        for d in shape:
            n *= d
        nb = n * sz
        hdr[name] = {'dtype': dt, 'shape': shape, 'data_offsets': [off, off + nb]}
        data += bytes((i * 13 + len(name)) & 255 for i in range(nb))
        off += nb
    h = json.dumps(hdr, separators=(',', ':')).encode()
    if pad:
        h += b' ' * ((8 - len(h) % 8) % 8)
    return st_raw(h, data)

def hdr_bytes(obj_text, data=b''):
    h = obj_text.encode() if isinstance(obj_text, str) else obj_text
    return st_raw(h, data)

X = 'x.safetensors'
EX = ['run qmoe-extract $D/x.safetensors $OUT', 'exit 2']

# ---- the safetensors attack classes (one file, given as SRC) ----
entry('001-header-length-huge', {X: struct.pack('<Q', 0xFFFFFFFFFFFFFFF0) + b'{}      '},
      ['# header length near 2^64: must not allocate or wrap'] + EX +
      ['stderr x.safetensors', 'stderr header length'])
entry('002-header-larger-than-file', {X: st_raw(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b'', n=4096)},
      ['# header length 4096 in a file of 62 bytes'] + EX + ['stderr x.safetensors', 'stderr header length 4096'])
entry('003-giant-header', {},
      ['# header length 100000001 (over the 100 MB limit) in a sparse file large enough to hold it',
       'setup printf "\\001\\341\\365\\005\\000\\000\\000\\000" > $D/x.safetensors && truncate -s 100000100 $D/x.safetensors']
      + EX + ['stderr exceeds the limit'])
entry('004-json-nested-deep', {X: hdr_bytes('{"a":' + '[' * 5000 + ']' * 5000 + '}')},
      ['# 5000 nested arrays: refused before the JSON parser recurses'] + EX + ['stderr x.safetensors', 'stderr nested'])
entry('005-negative-offset', {X: hdr_bytes('{"a":{"dtype":"U8","shape":[4],"data_offsets":[-4,0]}}  ', b'abcd')},
      ['# a negative data offset'] + EX + ['stderr x.safetensors', "stderr 'a'"])
entry('006-offset-out-of-range', {X: hdr_bytes('{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4000000]}}', b'abcd')},
      ['# data_offsets past the end of the file'] + EX + ['stderr x.safetensors', "stderr 'a'"])
entry('007-overlapping-offsets', {X: hdr_bytes('{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}     ', b'abcdef')},
      ['# two tensors sharing bytes'] + EX + ['stderr x.safetensors', 'stderr overlap'])
entry('008-gapped-offsets', {X: hdr_bytes('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}     ', b'abcdef')},
      ['# unreferenced bytes between two tensors'] + EX + ['stderr x.safetensors', 'stderr gap'])
entry('009-shape-offset-mismatch', {X: hdr_bytes('{"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,6]}}     ', b'abcdef')},
      ['# shape [2,2] BF16 needs 8 bytes, offsets give 6'] + EX + ['stderr x.safetensors', "stderr 'a'"])
entry('010-shape-product-overflow', {X: hdr_bytes('{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}}')},
      ['# 2^32 x 2^32 wraps to 0 in 64-bit arithmetic: must be seen as overflow, not an empty tensor'] + EX + ['stderr x.safetensors', 'stderr overflow'])
entry('011-duplicate-tensor-name', {X: hdr_bytes('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}     ', b'abcd')},
      ['# the same tensor name twice in one header'] + EX + ['stderr x.safetensors', "stderr duplicate tensor name 'a'"])
entry('012-metadata-not-string', {X: hdr_bytes('{"__metadata__":{"format":1},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}  ', b'ab')},
      ['# __metadata__ values must be strings'] + EX + ['stderr x.safetensors', 'stderr __metadata__'])
entry('013-invalid-utf8-name', {X: hdr_bytes(b'{"a\xff\xfe":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}     ', b'ab')},
      ['# a tensor name that is not UTF-8'] + EX + ['stderr x.safetensors', 'stderr UTF-8'])
entry('014-unknown-dtype', {X: hdr_bytes('{"a":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,2]}}       ', b'ab')},
      ['# a dtype the format does not define'] + EX + ['stderr x.safetensors', 'stderr Q4_K'])
entry('015-negative-dimension', {X: hdr_bytes('{"a":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}}       ', b'ab')},
      ['# a negative dimension'] + EX + ['stderr x.safetensors', "stderr 'a'"])
entry('016-header-not-object', {X: hdr_bytes('[1,2,3] ')},
      ['# the header is an array'] + EX + ['stderr x.safetensors', 'stderr object'])
entry('017-shorter-than-length-field', {X: b'\x08\x00\x00'},
      ['# 3 bytes: not even the 8-byte length'] + EX + ['stderr x.safetensors'])
entry('018-trailing-bytes', {X: st([('a', 'U8', [2], 1)]) + b'extra'},
      ['# bytes after the last tensor'] + EX + ['stderr x.safetensors'])
entry('019-too-many-dimensions', {X: hdr_bytes('{"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}  ', b'a')},
      ['# 9 dimensions (the reader keeps at most 8)'] + EX + ['stderr x.safetensors', "stderr 'a'"])
entry('020-nul-in-header', {X: hdr_bytes(b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}\x00\x00\x00\x00\x00\x00\x00', b'ab')},
      ['# NUL bytes as header padding'] + EX + ['stderr x.safetensors'])
entry('021-offsets-reversed', {X: hdr_bytes('{"a":{"dtype":"U8","shape":[0],"data_offsets":[2,0]}}        ', b'ab')},
      ['# begin after end'] + EX + ['stderr x.safetensors', 'stderr reversed'])
entry('022-offsets-not-integers', {X: hdr_bytes('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2.5]}}      ', b'ab')},
      ['# a fractional offset'] + EX + ['stderr x.safetensors', "stderr 'a'"])
entry('023-offset-above-2p53', {X: hdr_bytes('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,18446744073709551616]}}', b'ab')},
      ['# an offset of 2^64, beyond what a JSON number carries exactly'] + EX + ['stderr x.safetensors', "stderr 'a'"])
entry('024-empty-file', {X: b''},
      ['# an empty file'] + EX + ['stderr x.safetensors'])

entry('025-name-layer-index-huge', {X: st([('model.layers.70000.mlp.experts.0.gate_proj.weight', 'BF16', [2, 2], 2)])},
      ['# no config: the counts come from the names, bounded like the config\'s'] + EX +
      ['stderr x.safetensors', 'stderr layer index 70000 is more than qmoe supports'])

# DeepSeek-V3's num_nextn_predict_layers (its MTP block, stored after the
# decoder's layers) is a layer count too, distrusted and capped with them
DS = 'setup cp -r $FIX/families/deepseekv3-tiny/hf $D/ck && chmod -R u+w $D/ck && '
for name, what, sed, msgs in [
    ('026-config-mtp-layers-huge', 'num_nextn_predict_layers 100000, above the cap of 65536',
     's/"num_nextn_predict_layers": 1/"num_nextn_predict_layers": 100000/',
     ["'num_nextn_predict_layers' is 100000, more than qmoe supports (65536)"]),
    ('027-config-mtp-layers-negative', 'num_nextn_predict_layers -1',
     's/"num_nextn_predict_layers": 1/"num_nextn_predict_layers": -1/',
     ["'num_nextn_predict_layers' is -1, not an integer in [0, 65536]"]),
    ('028-config-mtp-layers-sum-huge', 'num_hidden_layers 65000 + num_nextn_predict_layers 1000: each under the cap, not together',
     's/"num_nextn_predict_layers": 1/"num_nextn_predict_layers": 1000/; s/"num_hidden_layers": 3/"num_hidden_layers": 65000/',
     ["'num_hidden_layers' 65000 + 'num_nextn_predict_layers' 1000 make 66000 layers, more than qmoe supports (65536)"]),
    ('029-config-mtp-layers-not-integer', 'num_nextn_predict_layers given as a string',
     's/"num_nextn_predict_layers": 1/"num_nextn_predict_layers": "1"/',
     ["'num_nextn_predict_layers' is \"1\", not an integer"]),
]:
    entry(name, {'README': (what + ' (made by setup)\n').encode()},
          ['# ' + what, DS + f"sed -i '{sed}' $D/ck/config.json",
           'run qmoe-extract $D/ck $OUT', 'exit 2', 'stderr config.json'] +
          ['stderr ' + m for m in msgs])

# ---- checkpoint directories ----
def tiny_model(n_layers=2, n_experts=2, shards=1):
    names = ['lm_head.weight', 'model.embed_tokens.weight', 'model.norm.weight']
    for l in range(n_layers):
        names += [f'model.layers.{l}.input_layernorm.weight',
                  f'model.layers.{l}.post_attention_layernorm.weight',
                  f'model.layers.{l}.mlp.gate.weight',
                  f'model.layers.{l}.self_attn.q_proj.weight']
        for e in range(n_experts):
            for p in ('gate', 'up', 'down'):
                names.append(f'model.layers.{l}.mlp.experts.{e}.{p}_proj.weight')
    ts = []
    for n in sorted(names):
        vec = 'norm' in n
        rows = 8 if ('embed' in n or 'lm_head' in n) else (n_experts if n.endswith('mlp.gate.weight') else 4)
        ts.append((n, 'BF16', [4] if vec else [rows, 4], 2))
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
           "hidden_size": 4, "intermediate_size": 8, "moe_intermediate_size": 4,
           "num_experts": n_experts, "num_experts_per_tok": 1,
           "num_hidden_layers": n_layers, "num_attention_heads": 1,
           "num_key_value_heads": 1, "head_dim": 4, "decoder_sparse_step": 1,
           "mlp_only_layers": [], "vocab_size": 8, "rms_norm_eps": 1e-6,
           "norm_topk_prob": True, "tie_word_embeddings": False}
    return cfg, ts

def ck_files(cfg=None, ts=None, index_edit=None, shard_ts=None, n_shards=1):
    c, t = tiny_model()
    cfg = c if cfg is None else cfg
    ts = t if ts is None else ts
    shard_ts = ts if shard_ts is None else shard_ts
    names = [x[0] for x in ts]
    shard_of = {n: f'model-{(i % n_shards) + 1:05d}-of-{n_shards:05d}.safetensors' for i, n in enumerate(names)}
    idx = {'metadata': {'total_size': 0}, 'weight_map': dict(sorted(shard_of.items()))}
    if index_edit:
        index_edit(idx)
    files = {'ck/config.json': json.dumps(cfg, indent=1).encode(),
             'ck/model.safetensors.index.json': json.dumps(idx, indent=1).encode()}
    by = {}
    for x in shard_ts:
        by.setdefault(shard_of.get(x[0], 'model-00001-of-00001.safetensors'), []).append(x)
    for f, lst in by.items():
        files['ck/' + f] = st(lst, {'format': 'pt'})
    return files

CK = ['run qmoe-extract $D/ck $OUT', 'exit 2']
cfg0, ts0 = tiny_model()
entry('030-valid-tiny-checkpoint', ck_files(),
      ['# control: the generator\'s valid checkpoint extracts (exit 0)',
       'run qmoe-extract $D/ck $OUT', 'exit 0'])
def drop_shard(idx):
    idx['weight_map']['model.norm.weight'] = 'model-00009-of-00009.safetensors'
entry('031-index-names-missing-shard', ck_files(index_edit=drop_shard, shard_ts=[x for x in ts0 if x[0] != 'model.norm.weight']),
      ['# the index maps a tensor to a file that does not exist'] + CK +
      ['stderr model-00009-of-00009.safetensors', 'stderr No such file'])
entry('032-index-tensor-absent-from-shard', ck_files(shard_ts=[x for x in ts0 if x[0] != 'model.norm.weight']),
      ['# the index lists a tensor its shard does not hold'] + CK +
      ["stderr 'model.norm.weight'", 'stderr is not in'])
def unlist(idx):
    del idx['weight_map']['model.norm.weight']
entry('033-shard-tensor-not-in-index', ck_files(index_edit=unlist),
      ['# a shard holds a tensor the index does not list'] + CK + ["stderr 'model.norm.weight'", 'stderr not in the index'])
entry('034-config-fewer-experts', ck_files(cfg=dict(cfg0, num_experts=1)),
      ['# config says 1 expert per layer, the tensors have experts 0 and 1'] + CK + ['stderr config', 'stderr expert'])
entry('035-config-fewer-layers', ck_files(cfg=dict(cfg0, num_hidden_layers=1)),
      ['# config says 1 layer, the tensors have layers 0 and 1'] + CK + ['stderr config', 'stderr layer'])
def escape(idx):
    idx['weight_map']['model.norm.weight'] = '../../etc/passwd'
entry('036-index-path-escapes', ck_files(index_edit=escape),
      ['# a shard name that leaves the checkpoint directory'] + CK + ['stderr leaves the checkpoint directory'])
f = ck_files(); f['ck/model.safetensors.index.json'] = b'{"weight_map": {"a": "b",'
entry('037-index-not-json', f, ['# a truncated index.json'] + CK + ['stderr model.safetensors.index.json'])
f = ck_files(); f['ck/config.json'] = b'[1, 2]'
entry('038-config-not-object', f, ['# config.json is an array'] + CK + ['stderr config.json'])
f = ck_files(); f['ck/model.safetensors.index.json'] = b'{"metadata": {}}'
entry('039-index-no-weight-map', f, ['# an index without weight_map'] + CK + ['stderr weight_map'])
f = ck_files(); f['ck/model.safetensors.index.json'] = b'{"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors", "model.norm.weight": "model-00001-of-00001.safetensors"}}'
entry('040-index-duplicate-tensor', f, ['# the same tensor twice in weight_map'] + CK + ["stderr 'model.norm.weight'", 'stderr twice'])
f = ck_files(); del f['ck/config.json']
entry('041-config-symlink-loop', f, ['# config.json is a symlink to itself',
      'setup ln -s config.json $D/ck/config.json'] + CK + ['stderr config.json', 'stderr Too many levels of symbolic links'])
f = ck_files(); del f['ck/model-00001-of-00001.safetensors']
entry('042-shard-is-directory', f, ['# a directory where the shard file should be',
      'setup mkdir $D/ck/model-00001-of-00001.safetensors'] + CK + ['stderr model-00001-of-00001.safetensors'])
f = ck_files(); del f['ck/config.json']
entry('043-config-is-directory', f, ['# a directory where config.json should be',
      'setup mkdir $D/ck/config.json'] + CK + ['stderr config.json'])
entry('044-src-symlink-loop', {'README': b'SRC is a symlink to itself (made by setup)\n'},
      ['# SRC is a symlink loop', 'setup ln -s ck $D/ck'] + CK + ['stderr ck'])
f = ck_files(); del f['ck/model-00001-of-00001.safetensors']
entry('045-shard-symlink-loop', f, ['# the shard is a symlink to itself',
      'setup ln -s model-00001-of-00001.safetensors $D/ck/model-00001-of-00001.safetensors'] + CK + ['stderr model-00001-of-00001.safetensors'])
entry('046-config-expert-count-huge', ck_files(cfg=dict(cfg0, num_experts=2**31 - 1)),
      ['# num_experts 2^31-1: refused or bounded, no giant allocation'] + CK + ['stderr num_experts'])
entry('047-config-layers-negative', ck_files(cfg=dict(cfg0, num_hidden_layers=-3)),
      ['# a negative layer count'] + CK + ['stderr num_hidden_layers'])
f = ck_files(); f['ck/model-00001-of-00001.safetensors'] = b''
entry('048-shard-empty', f, ['# a zero-byte shard'] + CK + ['stderr model-00001-of-00001.safetensors'])
f = ck_files(); f['ck/config.json'] = b'{"model_type": "qwen3_moe", "num_experts": 2, \xff\xfe "num_hidden_layers": 2}'
entry('049-config-invalid-utf8', f, ['# config.json with bytes that are not UTF-8'] + CK + ['stderr config.json'])
f = ck_files(); del f['ck/model.safetensors.index.json']
entry('050-index-is-directory', f, ['# a directory where the index should be',
      'setup mkdir $D/ck/model.safetensors.index.json'] + CK + ['stderr model.safetensors.index.json'])
entry('051-config-expert-count-zero', ck_files(cfg=dict(cfg0, num_experts=0)),
      ['# num_experts 0 with expert tensors present'] + CK + ['stderr expert'])
def shard_name_weird(idx):
    idx['weight_map']['model.norm.weight'] = ''
entry('052-index-empty-file-name', ck_files(index_edit=shard_name_weird),
      ['# a weight_map value that is an empty string'] + CK + ['stderr model.norm.weight'])
entry('053-expert-file-missing-projection', ck_files(shard_ts=[x for x in ts0 if x[0] != 'model.layers.1.mlp.experts.1.down_proj.weight'],
      index_edit=lambda idx: idx['weight_map'].pop('model.layers.1.mlp.experts.1.down_proj.weight')),
      ['# expert 1 of layer 1 lacks down_proj everywhere: extraction copies what there is (the',
       '# union of tensors is kept), qmoe-verify must say the expert is incomplete',
       'setup qmoe-extract $D/ck $D/out >/dev/null',
       'run qmoe-verify $D/out', 'exit 1', 'output down_proj'])

f = ck_files(); f['ck/model.safetensors.index.json'] = b'{"weight_map": {}}'
entry('054-index-weight-map-empty', f,
      ['# fuzz_checkpoint finding: an empty weight_map "extracted" 0/0 files with exit 0',
       '# (and passed NULL to qsort, which UBSan stops)'] + CK + ['stderr has no tensors'])

# counts from config.json are distrusted like sizes in a file (caps in
# common/format/layout.h): the error names config.json and the key
entry('055-config-layers-huge', ck_files(cfg=dict(cfg0, num_hidden_layers=100000)),
      ['# num_hidden_layers 100000, above the cap of 65536'] + CK +
      ['stderr config.json', "stderr 'num_hidden_layers' is 100000, more than qmoe supports (65536)"])
entry('056-config-expert-files-huge', ck_files(cfg=dict(cfg0, num_hidden_layers=60000, num_experts=60000)),
      ['# 60000 layers x 60000 experts: each under its cap, 3.6e9 expert files together'] + CK +
      ['stderr config.json', 'stderr 3600000000 expert files, more than qmoe supports'])
entry('057-config-count-not-integer', ck_files(cfg=dict(cfg0, num_experts="2")),
      ['# num_experts given as a string'] + CK +
      ['stderr config.json', "stderr 'num_experts' is \"2\", not an integer"])
entry('058-config-sparse-step-zero', ck_files(cfg=dict(cfg0, decoder_sparse_step=0)),
      ['# decoder_sparse_step 0 (layer l is MoE when (l + 1) % step == 0) was taken as 1'] + CK +
      ['stderr config.json', "stderr 'decoder_sparse_step' is 0, not an integer in [1, 65536]"])
entry('059-config-hidden-size-huge', ck_files(cfg=dict(cfg0, hidden_size=2**31)),
      ['# hidden_size 2^31'] + CK +
      ['stderr config.json', "stderr 'hidden_size' is 2147483648, more than qmoe supports"])

# ---- qmoe-verify on a damaged extraction (setup extracts the fixture) ----
XV = 'setup qmoe-extract $FIX/qwen3moe-tiny/qwen3moe $D/m >/dev/null && '
EV = 'experts/expert_03_layer_01.safetensors'
for name, what, cmd, msgs in [
    ('060-verify-flipped-byte', 'one byte of an expert tensor flipped',
     f"printf '\\377' | dd of=$D/m/{EV} bs=1 seek=5000 conv=notrunc 2>/dev/null", [EV, 'gate_proj', 'crc32']),
    ('061-verify-expert-missing', 'an expert file deleted', f'rm $D/m/{EV}', ['expert 3 missing']),
    ('062-verify-unexpected-file', 'an expert file beyond the config\'s counts',
     f'cp $D/m/{EV} $D/m/experts/expert_99_layer_01.safetensors', ['expert_99_layer_01', 'unexpected']),
    ('063-verify-expert-truncated', 'an expert file cut short', f'truncate -s 5000 $D/m/{EV}', [EV, 'truncated']),
    ('064-verify-header-length-huge', 'an expert file whose header length was overwritten',
     f"printf '\\377\\377\\377\\377\\377\\377\\377\\177' | dd of=$D/m/{EV} bs=1 conv=notrunc 2>/dev/null",
     [EV, 'header length']),
    ('065-verify-manifest-not-json', 'qmoe.json cut short', 'truncate -s 50 $D/m/qmoe.json', ['qmoe.json']),
    ('066-verify-expert-is-directory', 'a directory where an expert file belongs',
     f'rm $D/m/{EV} && mkdir $D/m/{EV}', [EV, 'not a regular file']),
    ('067-verify-config-fewer-experts', 'config.json edited to fewer experts than were extracted',
     "sed -i 's/\"num_experts\": 16/\"num_experts\": 15/' $D/m/config.json", ['num_experts']),
    ('068-verify-config-layers-huge', 'config.json edited to 100000 layers',
     "sed -i 's/\"num_hidden_layers\": 3,/\"num_hidden_layers\": 100000,/' $D/m/config.json",
     ['config.json', "'num_hidden_layers' is 100000, more than qmoe supports"]),
]:
    entry(name, {'README': (what + ' (made by setup)\n').encode()},
          ['# ' + what, XV + cmd, 'run qmoe-verify $D/m', 'exit 1'] + ['output ' + m for m in msgs])

entry('069-verify-config-mtp-layers-changed',
      {'README': b'config.json of a DeepSeek-V3 extraction edited to no MTP block (made by setup)\n'},
      ['# the MTP block was extracted (layer 3), then config.json says num_nextn_predict_layers 0',
       'setup qmoe-extract $FIX/families/deepseekv3-tiny/hf $D/m >/dev/null && '
       "sed -i 's/\"num_nextn_predict_layers\": 1/\"num_nextn_predict_layers\": 0/' $D/m/config.json",
       'run qmoe-verify $D/m', 'exit 1',
       'output expected.mtp_layers is 1 but config.json has 0 MTP layers'])

# ---- tokenizer (read by qmoe-run) ----
tokbad = b'{"added_tokens":[{"id":3,"content":"<|x|>","special":true}],"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"use_regex":true},"model":{"type":"BPE","vocab":{"a":0,"b":0},"merges":[]}}\n'
entry('070-tokenizer-duplicate-id-with-added', {'tokenizer.json': tokbad},
      ['# fuzz_tokenizer finding: a duplicate vocab id with added tokens crashed tok_free',
       'setup cp -r $FIX/qwen3moe-tiny/qwen3moe $D/m && cp $D/tokenizer.json $D/m/tokenizer.json',
       'requires qmoe-run --prompt',
       'run qmoe-run --prompt hi -n 1 $D/m', 'exit 2', 'stderr tokenizer.json', 'stderr appears twice'])

# ---- qmoe-run on a damaged extraction (setup extracts the fixture) ----
XM = 'setup qmoe-extract $FIX/qwen3moe-tiny/qwen3moe $D/m >/dev/null && '
RUN = ['run qmoe-run --token-ids 1,2,3 -n 4 -j 2 $D/m', 'exit 2']
E = 'experts/expert_03_layer_01.safetensors'
for name, what, cmd, msgs in [
    ('080-run-expert-file-missing', 'an expert file deleted after extraction', f'rm $D/m/{E}',
     [E, 'No such file']),
    ('081-run-expert-file-truncated', 'an expert file cut short', f'truncate -s 5000 $D/m/{E}',
     [E, 'past the end of the file']),
    ('082-run-expert-file-swapped', 'a layer file copied over an expert file',
     f'cp $D/m/layers/layer_00.safetensors $D/m/{E}', [E, 'down_proj']),
    ('083-run-config-hidden-size', 'config hidden_size disagrees with the tensors',
     "sed -i 's/\"hidden_size\": 64/\"hidden_size\": 65/' $D/m/config.json", ['globals.safetensors', 'the config implies']),
    ('084-run-config-topk-huge', 'num_experts_per_tok larger than the experts',
     "sed -i 's/\"num_experts_per_tok\": 4/\"num_experts_per_tok\": 400/' $D/m/config.json", ['config.json', 'num_experts_per_tok']),
    ('085-run-config-vocab-huge', 'vocab_size 2e9: refused, no giant allocation',
     "sed -i 's/\"vocab_size\": 384/\"vocab_size\": 2000000000/' $D/m/config.json", ['config.json', 'vocab_size']),
    ('086-run-globals-missing', 'globals.safetensors deleted', 'rm $D/m/globals.safetensors',
     ['globals.safetensors', 'No such file']),
    ('087-run-index-not-json', 'the extraction\'s index truncated',
     'truncate -s 100 $D/m/model.safetensors.index.json', ['model.safetensors.index.json']),
    ('090-run-config-heads-huge', 'num_attention_heads 100000',
     "sed -i 's/\"num_attention_heads\": 4,/\"num_attention_heads\": 100000,/' $D/m/config.json",
     ['config.json', 'num_attention_heads']),
    ('091-run-config-experts-huge', 'num_experts 100000 in an extraction',
     "sed -i 's/\"num_experts\": 16,/\"num_experts\": 100000,/' $D/m/config.json",
     ['config.json', "'num_experts' is 100000, more than qmoe supports"]),
]:
    entry(name, {'README': (what + ' (made by setup)\n').encode()},
          ['# ' + what, XM + cmd] + RUN + ['stderr ' + m for m in msgs])
entry('088-run-token-id-out-of-range', {'README': b'a token id beyond the vocabulary\n'},
      ['# a token id beyond the vocabulary', XM + 'true',
       'run qmoe-run --token-ids 99999 -n 1 $D/m', 'exit 2', 'stderr 99999', 'stderr vocabulary'])
entry('089-run-generate-huge', {'README': b'-n 100000000: the KV cache is refused, not attempted\n'},
      ['# -n 100000000: the KV cache is refused, not attempted. Under ASan a failed',
       '# giant allocation aborts unless the allocator may return NULL, as malloc does',
       'env ASAN_OPTIONS=allocator_may_return_null=1', XM + 'true',
       'run qmoe-run --token-ids 1 -n 100000000 $D/m', 'exit 2', 'stderr KV cache'])

# ---- special files and planted symlinks (issue 17): never a hang, never a
# write outside OUT. FIFOs and links are made by setup (git keeps neither a
# FIFO nor, portably, a link to /dev); $D/sentinel is a file outside OUT that
# the links point at and that must stay byte-identical. ----
SENT = {'sentinel': b'outside OUT: must not change\n', 'sentinel.orig': b'outside OUT: must not change\n'}
SAME = ['limit 10', 'check cmp $D/sentinel $D/sentinel.orig']
SH = 'model-00001-of-00001.safetensors'
def ck_sent(drop=None):
    f = dict(ck_files(), **SENT)
    if drop:
        del f['ck/' + drop]
    return f
entry('100-shard-fifo', ck_sent(SH),
      ['# the shard is a FIFO: open() would block forever', f'setup mkfifo $D/ck/{SH}']
      + CK + SAME + [f'stderr {SH}', 'stderr is a FIFO'])
entry('101-config-fifo', ck_sent('config.json'),
      ['# config.json is a FIFO', 'setup mkfifo $D/ck/config.json']
      + CK + SAME + ['stderr config.json', 'stderr is a FIFO'])
entry('102-journal-fifo', ck_sent(),
      ['# OUT/.qmoe/journal.jsonl is a FIFO (extract read it whole, blocking)',
       'setup mkdir -p $OUT/.qmoe && mkfifo $OUT/.qmoe/journal.jsonl']
      + CK + SAME + ['stderr .qmoe/journal.jsonl', 'stderr is a FIFO'])
for n, dev in (('103-shard-dev-zero', 'zero'), ('104-shard-dev-urandom', 'urandom')):
    entry(n, ck_sent(SH),
          [f'# the shard is a symlink to /dev/{dev}: a character device, endless bytes',
           f'setup ln -s /dev/{dev} $D/ck/{SH}']
          + CK + SAME + [f'stderr {SH}', 'stderr is a character device', f'stderr /dev/{dev}'])
for n, what in (('105-extract-log-symlink', 'extract.log'), ('106-journal-symlink', 'journal.jsonl'),
                ('107-lock-symlink', 'lock')):
    entry(n, ck_sent(),
          [f'# OUT/.qmoe/{what} is a symlink to a file outside OUT: it was followed and written',
           f'setup mkdir -p $OUT/.qmoe && ln -s $D/sentinel $OUT/.qmoe/{what}']
          + CK + SAME + [f'stderr .qmoe/{what}', 'stderr is a symbolic link to', 'stderr sentinel'])
entry('108-experts-dir-symlink', dict(ck_sent(), **{'elsewhere/README': b'must stay alone here\n'}),
      ['# OUT/experts is a symlink to a directory outside OUT',
       'setup mkdir -p $OUT && ln -s $D/elsewhere $OUT/experts']
      + CK + SAME + ['check [ "$(ls -A $D/elsewhere)" = README ]',
                     'stderr experts', 'stderr is a symbolic link to', 'stderr elsewhere'])
entry('109-tmp-name-symlink', ck_sent(),
      ['# a symlink planted at the name of a temporary the extractor creates',
       '# (.qmoe/progress.json.tmp.PID; exec keeps the shell\'s pid)',
       'setup mkdir -p $OUT/.qmoe',
       "run bash -c 'ln -s $D/sentinel $OUT/.qmoe/progress.json.tmp.$$ && exec qmoe-extract $D/ck $OUT'",
       'exit 2'] + SAME + ['stderr progress.json.tmp.', 'stderr is a symbolic link to', 'stderr sentinel'])
entry('110-extract-log-fifo', ck_sent(),
      ['# OUT/.qmoe/extract.log is a FIFO (opening it to write blocks without a reader)',
       'setup mkdir -p $OUT/.qmoe && mkfifo $OUT/.qmoe/extract.log']
      + CK + SAME + ['stderr .qmoe/extract.log', 'stderr is a FIFO'])

# the readers of an extraction meet a FIFO in OUT
XF = 'setup qmoe-extract $FIX/qwen3moe-tiny/qwen3moe $D/m >/dev/null && '
entry('111-status-journal-fifo', dict(SENT),
      ['# qmoe-status on an OUT whose journal is a FIFO',
       XF + 'rm $D/m/.qmoe/journal.jsonl && mkfifo $D/m/.qmoe/journal.jsonl',
       'run qmoe-status $D/m', 'exit 2'] + SAME + ['stderr .qmoe/journal.jsonl', 'stderr is a FIFO'])
entry('112-status-progress-fifo', dict(SENT),
      ['# qmoe-status on an OUT whose progress.json is a FIFO',
       XF + 'rm $D/m/.qmoe/progress.json && mkfifo $D/m/.qmoe/progress.json',
       'run qmoe-status $D/m', 'exit 2'] + SAME + ['stderr .qmoe/progress.json', 'stderr is a FIFO'])
entry('113-verify-manifest-fifo', dict(SENT),
      ['# qmoe-verify on an OUT whose qmoe.json is a FIFO: an unreadable manifest is a',
       '# failed check (exit 1, as 065), not a hang',
       XF + 'rm $D/m/qmoe.json && mkfifo $D/m/qmoe.json',
       'run qmoe-verify $D/m', 'exit 1'] + SAME + ['output qmoe.json', 'output is a FIFO'])
entry('114-verify-expert-fifo', dict(SENT),
      ['# qmoe-verify on an OUT with a FIFO where an expert file belongs',
       XF + f'rm $D/m/{EV} && mkfifo $D/m/{EV}',
       'run qmoe-verify $D/m', 'exit 1'] + SAME + ['output ' + EV, 'output not a regular file'])
entry('115-verify-source-shard-fifo', dict(SENT),
      ['# qmoe-verify --source SRC whose shard is a FIFO',
       XF + 'cp -r $FIX/qwen3moe-tiny/qwen3moe $D/src && rm $D/src/model-00002-of-00003.safetensors'
       ' && mkfifo $D/src/model-00002-of-00003.safetensors',
       'run qmoe-verify --source $D/src $D/m', 'exit 2'] + SAME
      + ['stderr model-00002-of-00003.safetensors', 'stderr is a FIFO'])
entry('116-run-expert-fifo', dict(SENT),
      ['# qmoe-run on an OUT whose layer-0 expert files are FIFOs (one is routed to)',
       XF + 'for f in $D/m/experts/*_layer_00.safetensors; do rm $f && mkfifo $f; done'] + RUN + SAME
      + ['stderr _layer_00.safetensors', 'stderr is a FIFO'])
entry('117-run-config-fifo', dict(SENT),
      ['# qmoe-run on an OUT whose config.json is a FIFO',
       XF + 'rm $D/m/config.json && mkfifo $D/m/config.json'] + RUN + SAME
      + ['stderr config.json', 'stderr is a FIFO'])
entry('118-run-tokenizer-fifo', dict(SENT),
      ['# qmoe-run --prompt on an OUT whose tokenizer.json is a FIFO',
       XF + 'rm $D/m/tokenizer.json && mkfifo $D/m/tokenizer.json',
       'run qmoe-run --prompt hi -n 1 $D/m', 'exit 2'] + SAME
      + ['stderr tokenizer.json', 'stderr is a FIFO'])

def main():
    keep = {'README.md', 'make-catalogue.py'}
    for n in os.listdir(HERE):
        if n not in keep and os.path.isdir(os.path.join(HERE, n)) and n[:3].isdigit():
            shutil.rmtree(os.path.join(HERE, n))
    for name, files, expect in entries:
        d = os.path.join(HERE, name)
        os.makedirs(d)
        for rel, data in files.items():
            p = os.path.join(d, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, 'wb') as fp:
                fp.write(data)
        with open(os.path.join(d, 'expect'), 'w') as fp:
            fp.write('\n'.join(expect) + '\n')
    print(f'{len(entries)} entries')

main()
