#!/usr/bin/env python3
"""The PyTorch-eager peer of dsv3's model: the same DeepSeek-V3 architecture (MLA with the
decoupled interleaved RoPE key, DeepSeekMoE with shared experts, sigmoid/softmax routing,
group-limited top-k, capacity dropping, the load-balance losses, multi-token prediction) written
the way a PyTorch user writes it, trained with torch.optim.AdamW and clip_grad_norm_.

It reads a dsv3 config (the model and optimizer sections), builds a model with exactly the
parameter count dsv3 builds (printed, so the driver can compare), and times forward + backward +
optimizer step on random tokens. Run by bench/peer/compare.sh; prints one JSON line.

    python3 bench/peer/dsv3_peer.py --config configs/train_config_nano.json --batch 8 --seq 128 \
        --steps 10 --threads 2
"""
import argparse
import json
import math
import re
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def load_config(path):
    text = open(path).read()
    text = re.sub(r"^\s*//.*$", "", text, flags=re.M)  # dsv3 configs allow // comment lines
    return json.loads(text)


def resolve(model):
    """dsv3's config::ResolveModelDefaults."""
    mla, moe = model["mla"], model["moe"]
    head = mla["d_model"] // mla["num_heads"]
    mla.setdefault("num_kv_heads", mla["num_heads"])
    mla.setdefault("q_lora_rank", 0)
    for key, value in (("qk_nope_head_dim", head), ("v_head_dim", head),
                       ("qk_rope_head_dim", max(2, (head // 2) & ~1))):
        if not mla.get(key):
            mla[key] = value
    if not moe.get("shared_intermediate_size"):
        moe["shared_intermediate_size"] = moe["expert_intermediate_size"]
    if not model.get("dense_intermediate_size"):
        model["dense_intermediate_size"] = (moe["num_experts_per_token"] * moe["expert_intermediate_size"] +
                                            moe.get("num_shared_experts", 0) * moe["shared_intermediate_size"])
    return model


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def rope(x, positions, theta):
    """Interleaved pairs (2i, 2i+1), x: B x T x H x R."""
    R = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, R, 2, dtype=torch.float32) / R)
    angle = positions.float()[:, None] * inv_freq
    cos, sin = angle.cos()[None, :, None, :], angle.sin()[None, :, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), -1).flatten(-2)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MLA(nn.Module):
    def __init__(self, m):
        super().__init__()
        a = m["mla"]
        D, H = a["d_model"], a["num_heads"]
        self.H, self.K = H, a["num_kv_heads"]
        self.nope, self.rope_dim, self.v = a["qk_nope_head_dim"], a["qk_rope_head_dim"], a["v_head_dim"]
        self.latent, self.theta = a["d_latent"], a.get("rope_theta", 10000.0)
        self.scale = 1.0 / math.sqrt(self.nope + self.rope_dim)
        if a["q_lora_rank"] > 0:
            self.q_a_proj = nn.Linear(D, a["q_lora_rank"], bias=False)
            self.q_a_layernorm = RMSNorm(a["q_lora_rank"], m["norm_eps"])
            self.q_b_proj = nn.Linear(a["q_lora_rank"], H * (self.nope + self.rope_dim), bias=False)
        else:
            self.q_proj = nn.Linear(D, H * (self.nope + self.rope_dim), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(D, self.latent + self.rope_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(self.latent, m["norm_eps"])
        self.kv_b_proj = nn.Linear(self.latent, self.K * (self.nope + self.v), bias=False)
        self.o_proj = nn.Linear(H * self.v, D, bias=False)

    def forward(self, x, positions):
        B, T, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if hasattr(self, "q_a_proj") else self.q_proj(x)
        q = q.view(B, T, self.H, self.nope + self.rope_dim)
        q = torch.cat((q[..., :self.nope], rope(q[..., self.nope:], positions, self.theta)), -1)
        kv_a = self.kv_a_proj_with_mqa(x)
        c_kv = self.kv_a_layernorm(kv_a[..., :self.latent])
        k_rope = rope(kv_a[..., self.latent:].unsqueeze(2), positions, self.theta)
        kv = self.kv_b_proj(c_kv).view(B, T, self.K, self.nope + self.v)
        k_nope, v = kv[..., :self.nope], kv[..., self.nope:]
        if self.K < self.H:
            k_nope = k_nope.repeat_interleave(self.H // self.K, 2)
            v = v.repeat_interleave(self.H // self.K, 2)
        k = torch.cat((k_nope, k_rope.expand(B, T, self.H, self.rope_dim)), -1)
        scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)).float() * self.scale
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1).type_as(x)
        o = torch.matmul(probs, v.transpose(1, 2)).transpose(1, 2).reshape(B, T, self.H * self.v)
        return self.o_proj(o)


class MoE(nn.Module):
    def __init__(self, m):
        super().__init__()
        e, D = m["moe"], m["mla"]["d_model"]
        self.cfg = e
        E, Fh = e["num_experts"], e["expert_intermediate_size"]
        self.gate_weight = nn.Parameter(torch.empty(E, D))
        self.register_buffer("bias", torch.zeros(E))
        self.gate_proj = nn.Parameter(torch.empty(E, Fh, D))
        self.up_proj = nn.Parameter(torch.empty(E, Fh, D))
        self.down_proj = nn.Parameter(torch.empty(E, D, Fh))
        shared = e.get("num_shared_experts", 0) * e["shared_intermediate_size"]
        self.shared = FeedForward(D, shared) if shared > 0 else None

    def forward(self, x):
        e = self.cfg
        B, T, D = x.shape
        E, k = e["num_experts"], e["num_experts_per_token"]
        xs = x.reshape(-1, D)
        X = xs.shape[0]
        logits = xs.float() @ self.gate_weight.float().t()
        if self.training and e.get("router_noise_std", 0) > 0:
            logits = logits + torch.randn_like(logits) * e["router_noise_std"]
        sigmoid = e.get("score_func", "softmax") == "sigmoid"
        scores = torch.sigmoid(logits) if sigmoid else torch.softmax(logits / e.get("router_temperature", 1.0), -1)
        select = scores + self.bias if e.get("use_aux_loss_free", False) else scores
        G = e.get("n_group", 1)
        if G > 1:
            group = select.view(X, G, E // G).topk(2, -1)[0].sum(-1)
            keep_groups = torch.zeros_like(group).scatter(1, group.topk(e.get("topk_group", 1), -1)[1], 1.0)
            select = select.masked_fill(keep_groups.repeat_interleave(E // G, 1) == 0, float("-inf"))
        idx = select.topk(k, -1)[1]
        gates = scores.gather(1, idx)
        if e.get("norm_topk_prob", True) and k > 1:
            gates = gates / (gates.sum(-1, keepdim=True) + 1e-20)
        gates = gates * e.get("routed_scaling_factor", 1.0)
        flat_e, flat_g = idx.flatten(), gates.flatten()
        keep = torch.ones_like(flat_e, dtype=torch.bool)
        if self.training and e.get("capacity_factor", 0) > 0:
            cap = max(e.get("min_expert_capacity", 4), math.ceil(X * k / E * e["capacity_factor"]))
            for ex in range(E):  # keep each expert's highest gates
                pos = (flat_e == ex).nonzero().squeeze(1)
                if pos.numel() > cap:
                    keep[pos[flat_g.detach()[pos].argsort(descending=True)[cap:]]] = False
        token = torch.arange(X).repeat_interleave(k)
        y = torch.zeros_like(xs)
        for ex in range(E):  # the usual per-expert loop
            sel = ((flat_e == ex) & keep).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            xe = xs[token[sel]]
            h = F.silu(xe @ self.gate_proj[ex].t()) * (xe @ self.up_proj[ex].t())
            y = y.index_add(0, token[sel], (h @ self.down_proj[ex].t()) * flat_g[sel].unsqueeze(1).type_as(x))
        if self.shared is not None:
            y = y + self.shared(xs)
        probs = scores / scores.sum(-1, keepdim=True) if sigmoid else scores
        loss = scores.new_zeros(())
        if e.get("balance_loss_type", "load") == "load" and e.get("router_aux_loss_weight", 0) > 0:
            frac = torch.bincount(flat_e, minlength=E).float() / (X * k)
            loss = loss + e["router_aux_loss_weight"] * E * (frac * probs.mean(0)).sum()
        if e.get("seq_aux_loss_weight", 0) > 0:
            sel = torch.zeros(X, E).scatter(1, idx, 1.0).view(B, T, E)
            f = sel.sum(1) * (E / (k * T))
            loss = loss + e["seq_aux_loss_weight"] * (f * probs.view(B, T, E).mean(1)).sum(-1).mean()
        return y.view(B, T, D), loss


class Layer(nn.Module):
    def __init__(self, m, moe):
        super().__init__()
        D = m["mla"]["d_model"]
        self.input_layernorm = RMSNorm(D, m["norm_eps"])
        self.self_attn = MLA(m)
        self.post_attention_layernorm = RMSNorm(D, m["norm_eps"])
        self.mlp = MoE(m) if moe else FeedForward(D, m["dense_intermediate_size"])

    def forward(self, x, positions):
        h = x + self.self_attn(self.input_layernorm(x), positions)
        out = self.mlp(self.post_attention_layernorm(h))
        if isinstance(out, tuple):
            return h + out[0], out[1]
        return h + out, x.new_zeros((), dtype=torch.float32)


class Mtp(nn.Module):
    def __init__(self, m, moe):
        super().__init__()
        D = m["mla"]["d_model"]
        self.enorm, self.hnorm, self.norm = RMSNorm(D, m["norm_eps"]), RMSNorm(D, m["norm_eps"]), RMSNorm(D, m["norm_eps"])
        self.eh_proj = nn.Linear(2 * D, D, bias=False)
        self.block = Layer(m, moe)


class DeepSeekV3(nn.Module):
    def __init__(self, m, training):
        super().__init__()
        D, V = m["mla"]["d_model"], m["vocab_size"]
        plan = [not (i < m.get("first_k_dense_layers", 0) or
                     (m.get("dense_layer_interval", 0) > 0 and (i + 1) % m["dense_layer_interval"] == 0))
                for i in range(m["num_layers"])]
        self.embed_tokens = nn.Embedding(V, D)
        self.layers = nn.ModuleList(Layer(m, moe) for moe in plan)
        self.norm = RMSNorm(D, m["norm_eps"])
        self.lm_head = None if m.get("tie_word_embeddings") else nn.Linear(D, V, bias=False)
        depths = training.get("num_predict_tokens", 1) - 1 if training.get("use_mtp", False) else 0
        self.mtp = nn.ModuleList(Mtp(m, any(plan)) for _ in range(depths))
        self.mtp_weight = training.get("mtp_loss_weight", 0.3)
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, m["init_method_std"])

    def head(self, h):
        return self.lm_head(h) if self.lm_head is not None else h @ self.embed_tokens.weight.t()

    def forward(self, tokens):
        T = tokens.shape[1] - 1
        positions = torch.arange(T)
        h = self.embed_tokens(tokens[:, :T])
        balance = h.new_zeros(())
        for layer in self.layers:
            h, aux = layer(h, positions)
            balance = balance + aux
        logits = self.head(self.norm(h))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))
        prev, mtp = h, h.new_zeros(())
        for d, m in enumerate(self.mtp, start=1):
            L = T - d
            joined = m.eh_proj(torch.cat((m.enorm(self.embed_tokens(tokens[:, d:d + L])), m.hnorm(prev[:, :L])), -1))
            out, aux = m.block(joined, positions[:L])
            balance = balance + aux
            lg = self.head(m.norm(out))
            mtp = mtp + F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), tokens[:, d + 1:d + 1 + L].reshape(-1))
            prev = out
        if len(self.mtp):
            mtp = mtp / len(self.mtp)
        return loss + self.mtp_weight * mtp + balance


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.config)
    model_cfg, training = resolve(cfg["model"]), cfg.get("training", {})
    model = DeepSeekV3(model_cfg, training)
    model.train()
    opt_type = training.get("optimizer", "adamw")
    betas = (training.get("adam_beta1", 0.9), training.get("adam_beta2", 0.95))
    kwargs = dict(lr=training.get("learning_rate", 3e-4), betas=betas, eps=training.get("adam_eps", 1e-8),
                  weight_decay=training.get("weight_decay", 0.1))
    opt = (torch.optim.AdamW if opt_type == "adamw" else torch.optim.Adam)(model.parameters(), **kwargs)
    tokens = torch.randint(0, model_cfg["vocab_size"], (args.batch, args.seq + 1))
    times = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    losses = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = model(tokens)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), training.get("grad_clip", 1.0))
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        losses.append(loss.item())
        if step >= args.warmup:
            times["forward"] += t1 - t0
            times["backward"] += t2 - t1
            times["optimizer"] += t3 - t2
    total = sum(times.values())
    print(json.dumps({
        "peer": "pytorch-eager", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_per_s": args.batch * args.seq * args.steps / total,
        "ms_per_step": 1000 * total / args.steps,
        "forward_ms": 1000 * times["forward"] / args.steps, "backward_ms": 1000 * times["backward"] / args.steps,
        "optimizer_ms": 1000 * times["optimizer"] / args.steps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "first_loss": losses[0], "last_loss": losses[-1]}))


if __name__ == "__main__":
    main()
