#!/usr/bin/env python3
"""gguf_from_sample.py - a BF16 GGUF (architecture qwen3moe) of a qmoe sample.

    python3 tests/bench/gguf_from_sample.py LLAMA_CPP_DIR MODEL_DIR OUT.gguf

Reads a Qwen3-MoE checkpoint (model_type qwen3_moe: model.layers.L...) or
the text model of a Qwen3-Omni thinker (qwen3_omni_moe: thinker.model...;
text positions only, where M-RoPE reduces to the plain RoPE of qwen3moe)
in safetensors, and writes what llama.cpp's convert_hf_to_gguf.py writes
for Qwen3MoeForCausalLM with --outtype bf16, without needing transformers:
the tokenizer comes straight from tokenizer.json. It uses llama.cpp's
gguf-py (LLAMA_CPP_DIR/gguf-py) as a library for the file format, the
metadata keys and the tensor names.

Tensors: bf16 weights are copied as raw bf16; 1-D tensors (norms) and the
routers (ffn_gate_inp) are written as F32, as the convert script does;
the experts of a layer are stacked into blk.L.ffn_{gate,up,down}_exps
[n_expert, rows, cols]. Weights are streamed tensor by tensor, so memory
stays at about one stacked expert tensor.
"""
import gzip
import json
import os
import re
import struct
import sys

import numpy as np


def die(msg):
    print(f"gguf_from_sample: {msg}", file=sys.stderr)
    sys.exit(2)


if len(sys.argv) != 4:
    die("usage: gguf_from_sample.py LLAMA_CPP_DIR MODEL_DIR OUT.gguf")
LLAMA_CPP_DIR, MODEL, OUT = sys.argv[1:4]
sys.path.insert(0, os.path.join(LLAMA_CPP_DIR, "gguf-py"))
import gguf  # noqa: E402

# ---------------------------------------------------------------- safetensors

ST_DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}


class Tensor:
    def __init__(self, path, dtype, shape, begin, end):
        self.path, self.dtype, self.shape = path, dtype, tuple(shape)
        self.begin, self.end = begin, end

    def array(self):
        """The raw elements (bf16 as uint16), memory-mapped."""
        if self.dtype not in ST_DTYPES:
            die(f"{self.path}: unsupported dtype {self.dtype}")
        nt = np.dtype(ST_DTYPES[self.dtype])
        n = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        if n * nt.itemsize != self.end - self.begin:
            die(f"{self.path}: size of a {self.dtype} {self.shape} tensor does not match its offsets")
        return np.memmap(self.path, dtype=nt, mode="r", offset=self.begin, shape=self.shape)


def read_safetensors(path):
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = Tensor(path, info["dtype"], info["shape"], base + b, base + e)
    return out


def checkpoint_tensors(model):
    index = os.path.join(model, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(f for f in os.listdir(model) if f.endswith(".safetensors"))
    if not files:
        die(f"{model}: no safetensors")
    tensors = {}
    for fn in files:
        tensors.update(read_safetensors(os.path.join(model, fn)))
    return tensors


def to_f32(t):
    a = t.array()
    if t.dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


# ---------------------------------------------------------------- config

def load_json(path, default=None):
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


cfg_all = load_json(os.path.join(MODEL, "config.json"))
if cfg_all is None:
    die(f"{MODEL}: no config.json")
if "thinker_config" in cfg_all:  # Qwen3-Omni: the thinker's text model
    cfg = cfg_all["thinker_config"]["text_config"]
    PREFIX = "thinker."
elif cfg_all.get("model_type") == "qwen3_moe" or "Qwen3MoeForCausalLM" in cfg_all.get("architectures", []):
    cfg = cfg_all
    PREFIX = ""
else:
    die(f"{MODEL}: neither qwen3_moe nor qwen3_omni_moe (model_type {cfg_all.get('model_type')!r})")

n_layer = cfg["num_hidden_layers"]
n_embd = cfg["hidden_size"]
n_head = cfg["num_attention_heads"]
n_head_kv = cfg.get("num_key_value_heads", n_head)
head_dim = cfg.get("head_dim") or n_embd // n_head
n_expert = cfg["num_experts"]
n_expert_used = cfg["num_experts_per_tok"]
n_ff_exp = cfg["moe_intermediate_size"]
n_vocab = cfg["vocab_size"]
if cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1:
    die("dense (mlp_only) layers are not supported: qwen3moe has MoE in every layer")
if cfg.get("shared_expert_intermediate_size"):
    die("shared experts are not supported by qwen3moe")
if cfg.get("norm_topk_prob") is False:
    die("norm_topk_prob false: llama.cpp's qwen3moe always renormalizes the top-k weights")
rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
rope_type = rope.get("rope_type", rope.get("type", "default"))
if rope_type not in ("default", None):
    die(f"rope type {rope_type!r} is not handled")

# ---------------------------------------------------------------- writer

w = gguf.GGUFWriter(OUT, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN3MOE])
w.add_name(os.path.basename(os.path.normpath(MODEL)))
w.add_block_count(n_layer)
if "max_position_embeddings" in cfg:
    w.add_context_length(cfg["max_position_embeddings"])
w.add_embedding_length(n_embd)
if "intermediate_size" in cfg:
    w.add_feed_forward_length(cfg["intermediate_size"])
w.add_head_count(n_head)
w.add_head_count_kv(n_head_kv)
w.add_rope_freq_base(float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))))
w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
w.add_expert_count(n_expert)
w.add_expert_used_count(n_expert_used)
w.add_key_length(head_dim)
w.add_value_length(head_dim)
w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
w.add_expert_feed_forward_length(n_ff_exp)

# ---------------------------------------------------------------- tokenizer


def find_tokenizer_json(model):
    for d in (model, os.path.join(model, "tokenizer")):
        p = os.path.join(d, "tokenizer.json")
        if os.path.isfile(p):
            with open(p, encoding="utf-8") as f:
                return json.load(f)
        if os.path.isfile(p + ".gz"):
            with gzip.open(p + ".gz", "rt", encoding="utf-8") as f:
                return json.load(f)
    die(f"{model}: no tokenizer.json")


tok = find_tokenizer_json(MODEL)
if tok.get("model", {}).get("type") != "BPE":
    die("tokenizer.json: not a BPE model")
vocab = dict(tok["model"]["vocab"])  # token -> id
added = {a["id"]: a for a in tok.get("added_tokens", [])}
for i, a in added.items():
    vocab[a["content"]] = i
id_to_tok = {i: t for t, i in vocab.items()}
if max(id_to_tok) >= n_vocab:
    die(f"tokenizer has id {max(id_to_tok)} >= vocab_size {n_vocab}")


def looks_special(t):
    return (t.startswith("<|") and t.endswith("|>")) or (t.startswith("<｜") and t.endswith("｜>"))


tokens, toktypes = [], []
for i in range(n_vocab):
    t = id_to_tok.get(i)
    if t is None:
        tokens.append(f"[PAD{i}]")
        toktypes.append(gguf.TokenType.UNUSED)
    elif i in added:
        tokens.append(t)
        special = added[i].get("special", False) or looks_special(t)
        toktypes.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    else:
        tokens.append(t)
        toktypes.append(gguf.TokenType.NORMAL)

merges = tok["model"].get("merges") or []
if merges and isinstance(merges[0], list):
    # the newer [a, b] pairs: a space inside a part is written as U+0120+256
    # in the "a b" strings llama.cpp reads
    merges = [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in p) for p in pair)
              for pair in merges]

w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("qwen2")
w.add_token_list(tokens)
w.add_token_types(toktypes)
w.add_token_merges(merges)

tcfg = load_json(os.path.join(MODEL, "tokenizer_config.json"), {})


def special_id(name):
    v = tcfg.get(f"{name}_token")
    if isinstance(v, dict):
        v = v.get("content")
    if isinstance(v, str) and v in vocab:
        return vocab[v]
    for c in (cfg_all,):
        v = c.get(f"{name}_token_id")
        if isinstance(v, list):
            v = v[0] if v else None
        if isinstance(v, int) and 0 <= v < n_vocab and v in id_to_tok:
            return v
    return None


for name, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("pad", w.add_pad_token_id)):
    i = special_id(name)
    if i is not None:
        add(i)
w.add_add_bos_token(bool(tcfg.get("add_bos_token", False)))
if isinstance(tcfg.get("chat_template"), str):
    w.add_chat_template(tcfg["chat_template"])

# ---------------------------------------------------------------- tensors

src = checkpoint_tensors(MODEL)
names = {k[len(PREFIX):]: v for k, v in src.items() if k.startswith(PREFIX + "model.") or k == PREFIX + "lm_head.weight"}
tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3MOE, n_layer)
BF16 = gguf.GGMLQuantizationType.BF16

# each entry: (gguf name, numpy shape, numpy dtype, raw_dtype, producer)
plan = []


def gguf_name(hf):
    n = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
    if n is None:
        die(f"no GGUF name for {hf}")
    return n


def add_plain(hf):
    t = names.pop(hf)
    new = gguf_name(hf)
    router = new.endswith("ffn_gate_inp.weight")
    if len(t.shape) <= 1 or new.endswith("_norm.weight") or router or t.dtype == "F32":
        plan.append((new, t.shape, np.float32, None, lambda t=t: to_f32(t)))
    elif t.dtype == "BF16":
        plan.append((new, t.shape, np.uint16, BF16, t.array))
    elif t.dtype == "F16":
        plan.append((new, t.shape, np.float16, None, t.array))
    else:
        die(f"{hf}: dtype {t.dtype}")


def stacked(parts):
    """A [n_expert, rows, cols] array from one producer per expert."""
    first = parts[0]()
    out = np.empty((len(parts),) + first.shape, dtype=first.dtype)
    out[0] = first
    for e in range(1, len(parts)):
        out[e] = parts[e]()
    return out


def add_experts(layer):
    base = f"model.layers.{layer}.mlp.experts"
    fused = f"{base}.gate_up_proj"
    for proj in ("gate_proj", "up_proj", "down_proj"):
        per = [f"{base}.{e}.{proj}.weight" for e in range(n_expert)]
        if all(p in names for p in per):
            ts = [names.pop(p) for p in per]
            shape = ts[0].shape
            if any(t.shape != shape or t.dtype != ts[0].dtype for t in ts):
                die(f"{base}.*.{proj}: experts differ in shape or dtype")
            if ts[0].dtype != "BF16":
                die(f"{base}.*.{proj}: {ts[0].dtype} experts (only bf16 is handled)")
            parts = [t.array for t in ts]
        elif proj != "down_proj" and (fused in names or fused + ".weight" in names):
            # qwen3_moe fused layout: gate_up_proj [E, 2*inter, hidden]
            t = names.get(fused) or names.get(fused + ".weight")
            half = t.shape[1] // 2
            sl = slice(0, half) if proj == "gate_proj" else slice(half, 2 * half)
            shape = (t.shape[1] // 2, t.shape[2])
            parts = [lambda e=e, t=t, sl=sl: t.array()[e, sl, :] for e in range(t.shape[0])]
        elif proj == "down_proj" and (f"{base}.down_proj" in names or f"{base}.down_proj.weight" in names):
            t = names.pop(f"{base}.down_proj", None) or names.pop(f"{base}.down_proj.weight")
            shape = t.shape[1:]
            parts = [lambda e=e, t=t: t.array()[e] for e in range(t.shape[0])]
        else:
            die(f"layer {layer}: missing {proj} experts")
        new = gguf_name(f"{base}.{proj}.weight")
        plan.append((new, (len(parts),) + tuple(shape), np.uint16, BF16, lambda parts=parts: stacked(parts)))
    names.pop(fused, None)
    names.pop(fused + ".weight", None)


add_plain("model.embed_tokens.weight")
for L in range(n_layer):
    p = f"model.layers.{L}."
    for hf in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
               "self_attn.o_proj", "self_attn.q_norm", "self_attn.k_norm", "post_attention_layernorm",
               "mlp.gate"):
        if p + hf + ".weight" not in names:
            die(f"missing {PREFIX}{p}{hf}.weight")
        add_plain(p + hf + ".weight")
    add_experts(L)
add_plain("model.norm.weight")
if "lm_head.weight" in names:
    add_plain("lm_head.weight")
elif cfg.get("tie_word_embeddings", cfg_all.get("tie_word_embeddings")) is not True:
    die("no lm_head.weight and the embeddings are not tied")
left = [n for n in names if not re.search(r"rotary_emb|inv_freq", n)]
if left:
    die(f"tensors not converted: {left[:8]}{' ...' if len(left) > 8 else ''}")

for new, shape, dt, raw, _ in plan:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
    w.add_tensor_info(new, shape, np.dtype(dt), nbytes, raw_dtype=raw)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_ti_data_to_file()
total = 0
for new, shape, dt, raw, produce in plan:
    a = np.ascontiguousarray(produce())
    if a.shape != tuple(shape) or a.dtype != np.dtype(dt):
        die(f"{new}: produced {a.dtype} {a.shape}, expected {np.dtype(dt)} {shape}")
    w.write_tensor_data(a)
    total += a.nbytes
    del a
w.close()
print(f"gguf_from_sample: wrote {OUT}: {len(plan)} tensors, {total / 1e9:.2f} GB, "
      f"{n_layer} layers, {n_expert} experts top-{n_expert_used}, vocab {n_vocab}")
