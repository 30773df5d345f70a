#!/usr/bin/python3
"""hf_qwen3moe.py DIR IDS OUT.f32 - an independent Qwen3-MoE loader and forward pass.

Reads a Hugging Face checkpoint directory the way transformers would: config.json
(model_type qwen3_moe), model.safetensors.index.json's weight_map, the shards by
plain tensor names (model.embed_tokens.weight, model.layers.L.self_attn.q_proj.weight,
model.layers.L.mlp.gate.weight, model.layers.L.mlp.experts.E.gate_proj.weight, ...,
lm_head.weight). Runs the network of modeling_qwen3_moe.py in float64 with NumPy:
RMSNorm, q/k per-head RMSNorm, rotate-half RoPE, grouped-query causal attention,
softmax router over num_experts, top num_experts_per_tok, renormalised when
norm_topk_prob, SwiGLU experts; dense MLP for mlp_only_layers and layers off
decoder_sparse_step. Writes the logits of every position as little-endian float32
[tokens x vocab]. Shares no code with qmoe: the safetensors header is parsed here.
For tests/cli/plan.sh (a packed checkpoint read by something that is not qmoe).
"""
import json
import os
import struct
import sys

import numpy as np


def load_tensors(d):
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        wmap = json.load(f)["weight_map"]
    out = {}
    for shard in sorted(set(wmap.values())):
        with open(os.path.join(d, shard), "rb") as f:
            blob = f.read()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n])
        base = 8 + n
        for name, t in header.items():
            if name == "__metadata__":
                continue
            b, e = t["data_offsets"]
            raw = blob[base + b:base + e]
            if t["dtype"] == "BF16":
                u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                a = u.view(np.float32)
            elif t["dtype"] == "F16":
                a = np.frombuffer(raw, dtype="<f2")
            elif t["dtype"] == "F32":
                a = np.frombuffer(raw, dtype="<f4")
            else:
                raise SystemExit(f"{shard}: {name}: dtype {t['dtype']} not handled")
            out[name] = a.astype(np.float64).reshape(t["shape"])
    missing = set(wmap) - set(out)
    if missing:
        raise SystemExit(f"{d}: tensors in the index but not in the shards: {sorted(missing)[:3]}")
    return out


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def rope(x, pos, theta):
    # x: [T, heads, hd]; rotate_half convention
    hd = x.shape[-1]
    inv = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = np.outer(pos, inv)                       # [T, hd/2]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]
    h = hd // 2
    rot = np.concatenate([-x[..., h:], x[..., :h]], -1)
    return x * cos + rot * sin


def forward(d, ids):
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    if c.get("model_type") != "qwen3_moe":
        raise SystemExit(f"{d}/config.json: model_type {c.get('model_type')!r}, not qwen3_moe")
    W = load_tensors(d)
    H, nh, nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or H // nh
    eps, theta = c["rms_norm_eps"], c.get("rope_theta", 10000.0)
    E, K = c["num_experts"], c["num_experts_per_tok"]
    norm_topk = c.get("norm_topk_prob", False)
    dense = set(c.get("mlp_only_layers") or [])
    step = c.get("decoder_sparse_step", 1)
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    x = W["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for L in range(c["num_hidden_layers"]):
        p = f"model.layers.{L}."
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(T, nh, hd)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd)
        q = rope(rmsnorm(q, W[p + "self_attn.q_norm.weight"], eps), pos, theta)
        k = rope(rmsnorm(k, W[p + "self_attn.k_norm.weight"], eps), pos, theta)
        rep = nh // nkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) * hd ** -0.5 + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("hts,shd->thd", s, v).reshape(T, nh * hd)
        x = x + a @ W[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        if L in dense or E == 0 or (L + 1) % step != 0:
            m = silu(h @ W[p + "mlp.gate_proj.weight"].T) * (h @ W[p + "mlp.up_proj.weight"].T)
            x = x + m @ W[p + "mlp.down_proj.weight"].T
            continue
        logits = h @ W[p + "mlp.gate.weight"].T            # [T, E]
        pr = np.exp(logits - logits.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        out = np.zeros_like(x)
        for t in range(T):
            top = np.argsort(-pr[t], kind="stable")[:K]
            w = pr[t, top]
            if norm_topk:
                w = w / w.sum()
            for e, we in zip(top, w):
                q_ = f"{p}mlp.experts.{e}."
                g = h[t] @ W[q_ + "gate_proj.weight"].T
                u = h[t] @ W[q_ + "up_proj.weight"].T
                out[t] += we * ((silu(g) * u) @ W[q_ + "down_proj.weight"].T)
        x = x + out
    x = rmsnorm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else W["lm_head.weight"]
    return x @ head.T


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    ids = [int(i) for i in sys.argv[2].split(",")]
    forward(sys.argv[1], ids).astype("<f4").tofile(sys.argv[3])


if __name__ == "__main__":
    main()
