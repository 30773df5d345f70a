#!/usr/bin/python3
"""train_moe.py IDS_DIR TOKENIZER_DIR OUT [--steps N] [--seed S] - trains a tiny
Qwen3-MoE on token ids and writes it as a Hugging Face checkpoint.

The model behind tests/fixtures/trained-moe (see its README for the exact
command): a router that learned something, so that expert plans chosen from
router statistics can be told apart from "the first N experts". Not run by
make check (CI has no torch); the checkpoint it wrote is the fixture.

IDS_DIR holds one file per training domain, NAME.ids: the domain's text as
comma-separated token ids (tests/tools/cohtok encode-all, i.e. qmoe's own
tokenizer, so training and qmoe-run see the same ids). Batches mix the
domains, each row one domain. Two router terms besides cross-entropy: the
Switch-Transformer load-balancing loss (coefficient router_aux_loss_coef)
keeps every expert in use over the mixture, and the mutual information
between sequence and expert (--mi; as Mod-Squad's task-expert term) makes
each sequence keep to a few experts. Without the second, a model this small
and this briefly trained routes by token more than by kind of text (measured:
a plan of 8 of 32 from license text gave held-out perplexity 33 where the
first 8 gave 37); with it, each kind of text has its own experts, the
pattern that tells frequency/weight/REAP plans apart from experts 0..N-1.

The network is modeling_qwen3_moe.py's: RMSNorm, q/k per-head RMSNorm,
rotate-half RoPE, grouped-query causal attention, softmax router, top-k
renormalised (norm_topk_prob), SwiGLU experts, untied lm_head. Written in
BF16 (round to nearest even) as model.safetensors with config.json; the
tokenizer and generation files are copied from TOKENIZER_DIR.
"""
import argparse
import glob
import json
import math
import os
import shutil
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

CFG = dict(vocab=384, hidden=64, layers=3, heads=4, kv_heads=2, head_dim=16,
           experts=32, top_k=4, moe_inter=32, rope_theta=10000.0, eps=1e-6,
           aux=0.02)


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class Model(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        H, hd = c["hidden"], c["head_dim"]
        E, I = c["experts"], c["moe_inter"]
        p = torch.nn.Parameter

        def lin(o, i):
            return p(torch.randn(o, i) * 0.02)
        self.embed = p(torch.randn(c["vocab"], H) * 0.02)
        self.layers = torch.nn.ModuleList()
        for _ in range(c["layers"]):
            L = torch.nn.Module()
            L.ln1 = p(torch.ones(H))
            L.ln2 = p(torch.ones(H))
            L.q = lin(c["heads"] * hd, H)
            L.k = lin(c["kv_heads"] * hd, H)
            L.v = lin(c["kv_heads"] * hd, H)
            L.o = lin(H, c["heads"] * hd)
            L.qn = p(torch.ones(hd))
            L.kn = p(torch.ones(hd))
            L.gate = lin(E, H)
            L.wg = p(torch.randn(E, I, H) * 0.05)
            L.wu = p(torch.randn(E, I, H) * 0.05)
            L.wd = p(torch.randn(E, H, I) * 0.05)
            self.layers.append(L)
        self.norm = p(torch.ones(H))
        self.head = lin(c["vocab"], H)

    def rope(self, T):
        hd = self.c["head_dim"]
        inv = 1.0 / (self.c["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
        f = torch.outer(torch.arange(T).float(), inv)
        emb = torch.cat([f, f], -1)
        return emb.cos(), emb.sin()

    @staticmethod
    def rot(x, cos, sin):
        h = x.shape[-1] // 2
        r = torch.cat([-x[..., h:], x[..., :h]], -1)
        return x * cos + r * sin

    def forward(self, ids):
        c = self.c
        B, T = ids.shape
        hd, nh, nkv = c["head_dim"], c["heads"], c["kv_heads"]
        cos, sin = self.rope(T)
        x = self.embed[ids]
        aux = 0.0
        mi = 0.0
        for L in self.layers:
            h = rms(x, L.ln1, c["eps"])
            q = (h @ L.q.T).view(B, T, nh, hd)
            k = (h @ L.k.T).view(B, T, nkv, hd)
            v = (h @ L.v.T).view(B, T, nkv, hd)
            q = self.rot(rms(q, L.qn, c["eps"]).transpose(1, 2), cos, sin)
            k = self.rot(rms(k, L.kn, c["eps"]).transpose(1, 2), cos, sin)
            v = v.transpose(1, 2)
            rep = nh // nkv
            k = k.repeat_interleave(rep, 1)
            v = v.repeat_interleave(rep, 1)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
            causal = torch.ones(T, T, dtype=torch.bool).triu(1)
            a = torch.softmax(att.masked_fill(causal, float("-inf")), -1) @ v
            x = x + a.transpose(1, 2).reshape(B, T, nh * hd) @ L.o.T
            h = rms(x, L.ln2, c["eps"]).reshape(B * T, -1)
            probs = torch.softmax(h @ L.gate.T, -1)
            topw, topi = probs.topk(c["top_k"], -1)
            topw = topw / topw.sum(-1, keepdim=True)
            E = c["experts"]
            # Switch load balancing: fraction of picks x mean probability.
            frac = F.one_hot(topi, E).float().sum(1).mean(0) / c["top_k"]
            aux = aux + E * (frac * probs.mean(0)).sum()
            # Mutual information between sequence and expert (as Mod-Squad,
            # Chen et al. 2023, between task and expert): the entropy of the
            # batch's routing minus the mean entropy of each sequence's.
            # Maximised, each sequence (one domain) keeps to a few experts
            # and different domains to different ones.
            ps = probs.view(B, T, E).mean(1)
            pa = ps.mean(0)
            ent = lambda p: -(p * (p + 1e-9).log()).sum(-1)
            mi = mi + ent(pa) - ent(ps).mean()
            # Each expert on the tokens routed to it (top-k of E: a dense
            # pass over all experts would cost E/k times more).
            y = torch.zeros_like(h)
            flat_e = topi.reshape(-1)
            flat_t = torch.arange(B * T).repeat_interleave(c["top_k"])
            flat_w = topw.reshape(-1)
            for e in range(E):
                sel = (flat_e == e).nonzero().squeeze(1)
                if sel.numel() == 0:
                    continue
                tok = flat_t[sel]
                he = h[tok]
                out = (F.silu(he @ L.wg[e].T) * (he @ L.wu[e].T)) @ L.wd[e].T
                y = y.index_add(0, tok, out * flat_w[sel].unsqueeze(1))
            x = x + y.view(B, T, -1)
        x = rms(x, self.norm, c["eps"])
        return x @ self.head.T, aux / len(self.layers), mi / len(self.layers)


def bf16_bytes(t):
    a = t.detach().float().contiguous().numpy().astype("<f4").view("<u4")
    a = a.astype(np.uint64)
    r = ((a + 0x7FFF + ((a >> 16) & 1)) >> 16).astype("<u2")
    return r.tobytes()


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        b = bf16_bytes(t)
        header[name] = {"dtype": "BF16", "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def hf_tensors(m):
    t = {"model.embed_tokens.weight": m.embed, "model.norm.weight": m.norm,
         "lm_head.weight": m.head}
    for i, L in enumerate(m.layers):
        p = "model.layers.%d." % i
        t[p + "input_layernorm.weight"] = L.ln1
        t[p + "post_attention_layernorm.weight"] = L.ln2
        t[p + "self_attn.q_proj.weight"] = L.q
        t[p + "self_attn.k_proj.weight"] = L.k
        t[p + "self_attn.v_proj.weight"] = L.v
        t[p + "self_attn.o_proj.weight"] = L.o
        t[p + "self_attn.q_norm.weight"] = L.qn
        t[p + "self_attn.k_norm.weight"] = L.kn
        t[p + "mlp.gate.weight"] = L.gate
        for e in range(m.c["experts"]):
            q = p + "mlp.experts.%d." % e
            t[q + "gate_proj.weight"] = L.wg[e]
            t[q + "up_proj.weight"] = L.wu[e]
            t[q + "down_proj.weight"] = L.wd[e]
    return t


def config(c, tokdir):
    with open(os.path.join(tokdir, "config.json")) as f:
        src = json.load(f)
    return {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": src.get("bos_token_id"), "eos_token_id": src.get("eos_token_id"),
        "decoder_sparse_step": 1, "head_dim": c["head_dim"], "hidden_act": "silu",
        "hidden_size": c["hidden"], "initializer_range": 0.02,
        "intermediate_size": 4 * c["hidden"], "max_position_embeddings": 4096,
        "max_window_layers": c["layers"], "mlp_only_layers": [],
        "moe_intermediate_size": c["moe_inter"], "norm_topk_prob": True,
        "num_attention_heads": c["heads"], "num_experts": c["experts"],
        "num_experts_per_tok": c["top_k"], "num_hidden_layers": c["layers"],
        "num_key_value_heads": c["kv_heads"], "output_router_logits": False,
        "rms_norm_eps": c["eps"], "rope_scaling": None, "rope_theta": c["rope_theta"],
        "router_aux_loss_coef": c["aux"], "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "use_cache": True, "use_sliding_window": False, "vocab_size": c["vocab"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ids_dir")
    ap.add_argument("tokdir")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--mi", type=float, default=0.1,
                    help="weight of the sequence-expert mutual information term")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(a.seed)
    doms = []
    for p in sorted(glob.glob(os.path.join(a.ids_dir, "*.ids"))):
        with open(p) as f:
            ids = np.array([int(x) for x in f.read().split(",") if x.strip()], dtype=np.int64)
        doms.append((os.path.basename(p)[:-4], ids))
        print("%s: %d tokens" % (doms[-1][0], len(ids)), file=sys.stderr)
    if not doms:
        sys.exit("train_moe.py: no .ids files in %s" % a.ids_dir)
    c = dict(CFG)
    m = Model(c)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.01)
    t0 = time.time()
    for step in range(a.steps):
        lr = 3e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / a.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        rows = []
        for b in range(a.batch):
            _, ids = doms[b % len(doms)]
            s = rng.integers(0, len(ids) - a.seq - 1)
            rows.append(ids[s:s + a.seq + 1])
        x = torch.from_numpy(np.stack(rows))
        logits, aux, mi = m(x[:, :-1])
        ce = F.cross_entropy(logits.reshape(-1, c["vocab"]), x[:, 1:].reshape(-1))
        loss = ce + c["aux"] * aux - a.mi * mi
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == a.steps - 1:
            print("step %d ce %.3f ppl %.2f aux %.3f mi %.3f (%.0fs)" %
                  (step, ce.item(), math.exp(ce.item()), aux.item(), mi.item(),
                   time.time() - t0),
                  file=sys.stderr, flush=True)
    os.makedirs(a.out, exist_ok=True)
    write_safetensors(os.path.join(a.out, "model.safetensors"), hf_tensors(m))
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config(c, a.tokdir), f, indent=2)
        f.write("\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                 "generation_config.json"):
        src = os.path.join(a.tokdir, name)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(a.out, name))


if __name__ == "__main__":
    main()
