#!/usr/bin/env python3
"""Reference numbers for the paper's per-layer prefix (and a key/value prefix) on a LLaMA model.

An independent float64 NumPy implementation of LLaMA (Hugging Face `LlamaForCausalLM` semantics:
rotate-half RoPE on HF-ordered q/k rows, RMSNorm, SwiGLU MLP, grouped-query attention), written from
the paper and `docs/conventions.md`, not from this crate. It reads the safetensors file itself.

The paper's prefix-tuning form (docs/conventions.md rule 7, README "Prefix files"): at every layer l
the prefix hidden states `s_l` `(P, d)` replace the attention input at positions `0..P-1` BEFORE the
pre-attention RMSNorm, so the prefix keys are `RoPE(W_K RMSNorm(s_l), positions 0..P-1)` and its
values `W_V RMSNorm(s_l)`; the content tokens sit at positions `P..P+N-1`. Only the content rows are
queries, and the prefix rows do not flow to the next layer (each layer has its own `s_l`).

The key/value prefix (rule 6): keys and values per layer and KV head, keys used as given (no RoPE),
content at positions `P..P+N-1`.

Pretrained (rule 9): the content alone at positions `0..N-1`.

Pinned: Python 3.11, numpy 2.4.6 (the newest numpy for Python 3.11; 2.5.x needs Python 3.12).
Run by hand from the repository root (CI never runs it):

    python3 -m venv /tmp/venv-ref && /tmp/venv-ref/bin/pip install numpy==2.4.6
    /tmp/venv-ref/bin/python scripts/make_paper_prefix_reference.py

Writes `tests/fixtures/paper_prefix/reference.npz`:
- inputs, exactly as the program sees them: `token_ids` int64 (N,); `prefix` float32
  (n_layers, P, d); `kv_keys`, `kv_values` float32 (n_layers, KV, P, hd);
- float64, per layer l, `[head, query, key]`: `pretrained_L{l}` (H, N, N);
  `paper_with_prefix_L{l}` (H, N, P+N), `paper_renorm_L{l}` (H, N, N), `paper_z_L{l}` (H, N, hd);
  `kv_with_prefix_L{l}`, `kv_renorm_L{l}`, `kv_z_L{l}`;
- `logits_last_pretrained`, `logits_last_paper`, `logits_last_kv` (vocab,);
- `model_sha256`: the sha256 of the model.safetensors used, as uint8 (32,).
"""

import hashlib
import json
import os
import struct
import sys

import numpy as np

MODEL_DIR = "tests/regressions/hostile-files/tiny-hf-folder-valid"
OUT = "tests/fixtures/paper_prefix/reference.npz"
SEED = 20_2024
N_TOKENS = 12
P = 3
# Prefix rows far from unit RMS, so that the pre-attention norm changes them a lot.
PREFIX_SCALE = 2.5


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype="<f4").reshape(info["shape"]).astype(np.float64)
    return out, hashlib.sha256(raw).digest()


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, theta):
    """x: (heads, T, hd) in HF rotate-half order; positions: (T,)."""
    hd = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)
    sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)
    half = hd // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin


def softmax(s):
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - m)
    return e / e.sum(axis=-1, keepdims=True)


class Llama:
    def __init__(self, folder):
        with open(os.path.join(folder, "config.json")) as f:
            c = json.load(f)
        self.w, self.sha = read_safetensors(os.path.join(folder, "model.safetensors"))
        self.d = c["hidden_size"]
        self.L = c["num_hidden_layers"]
        self.H = c["num_attention_heads"]
        self.KV = c.get("num_key_value_heads") or self.H
        self.hd = c.get("head_dim") or self.d // self.H
        self.eps = c["rms_norm_eps"]
        self.theta = c.get("rope_theta", 10000.0)
        self.vocab = c["vocab_size"]
        tied = c.get("tie_word_embeddings", False) or "lm_head.weight" not in self.w
        self.lm_head = self.w["model.embed_tokens.weight" if tied else "lm_head.weight"]

    def W(self, l, name):
        return self.w[f"model.layers.{l}.{name}.weight"]

    def heads(self, x, n):
        return x.reshape(x.shape[0], n, self.hd).transpose(1, 0, 2)

    def prefix_kv_paper(self, l, s):
        """Prefix keys/values from hidden states s (P, d): normed, projected, keys at 0..P-1."""
        sn = rms_norm(s, self.W(l, "input_layernorm"), self.eps)
        k = self.heads(sn @ self.W(l, "self_attn.k_proj").T, self.KV)
        v = self.heads(sn @ self.W(l, "self_attn.v_proj").T, self.KV)
        return rope(k, np.arange(s.shape[0]), self.theta), v

    def forward(self, ids, prefix_kv=None, p=0):
        """prefix_kv(l) -> (k (KV, P, hd), v (KV, P, hd)) or None. Content at positions p..p+N-1.
        Returns per-layer attention of the content rows over [prefix | content], head outputs z, and
        the final-position logits."""
        n = len(ids)
        x = self.w["model.embed_tokens.weight"][ids]
        pos = np.arange(p, p + n)
        rep = self.H // self.KV
        causal = np.triu(np.full((n, n), -np.inf), k=1)
        probs_all, z_all = [], []
        for l in range(self.L):
            xn = rms_norm(x, self.W(l, "input_layernorm"), self.eps)
            q = rope(self.heads(xn @ self.W(l, "self_attn.q_proj").T, self.H), pos, self.theta)
            k = rope(self.heads(xn @ self.W(l, "self_attn.k_proj").T, self.KV), pos, self.theta)
            v = self.heads(xn @ self.W(l, "self_attn.v_proj").T, self.KV)
            mask = causal
            if prefix_kv is not None:
                pk, pv = prefix_kv(l)
                k = np.concatenate([pk, k], axis=1)
                v = np.concatenate([pv, v], axis=1)
                mask = np.concatenate([np.zeros((n, pk.shape[1])), causal], axis=1)
            # GQA: query head h reads KV head h // rep.
            k = np.repeat(k, rep, axis=0)
            v = np.repeat(v, rep, axis=0)
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(self.hd) + mask
            probs = softmax(scores)
            z = probs @ v
            probs_all.append(probs)
            z_all.append(z)
            attn = z.transpose(1, 0, 2).reshape(n, self.H * self.hd) @ self.W(l, "self_attn.o_proj").T
            x = x + attn
            xn = rms_norm(x, self.W(l, "post_attention_layernorm"), self.eps)
            gate = xn @ self.W(l, "mlp.gate_proj").T
            up = xn @ self.W(l, "mlp.up_proj").T
            x = x + ((gate / (1.0 + np.exp(-gate))) * up) @ self.W(l, "mlp.down_proj").T
        last = rms_norm(x[-1:], self.w["model.norm.weight"], self.eps)
        return probs_all, z_all, (last @ self.lm_head.T)[0]


def renorm(probs, p):
    c = probs[..., p:]
    return c / c.sum(axis=-1, keepdims=True)


def main():
    m = Llama(MODEL_DIR)
    rng = np.random.default_rng(SEED)
    ids = rng.integers(0, m.vocab, size=N_TOKENS).astype(np.int64)
    # float32 inputs: the program reads exactly these values.
    prefix = (rng.standard_normal((m.L, P, m.d)) * PREFIX_SCALE).astype(np.float32)
    kv_keys = (rng.standard_normal((m.L, m.KV, P, m.hd)) * 2.0).astype(np.float32)
    kv_values = rng.standard_normal((m.L, m.KV, P, m.hd)).astype(np.float32)

    out = {
        "token_ids": ids,
        "prefix": prefix,
        "kv_keys": kv_keys,
        "kv_values": kv_values,
        "model_sha256": np.frombuffer(m.sha, dtype=np.uint8).copy(),
    }
    pre_probs, pre_z, pre_logits = m.forward(ids)
    s64 = prefix.astype(np.float64)
    paper_probs, paper_z, paper_logits = m.forward(
        ids, lambda l: m.prefix_kv_paper(l, s64[l]), P
    )
    kk, kvv = kv_keys.astype(np.float64), kv_values.astype(np.float64)
    kv_probs, kv_z, kv_logits = m.forward(ids, lambda l: (kk[l], kvv[l]), P)
    for l in range(m.L):
        out[f"pretrained_L{l}"] = pre_probs[l]
        out[f"paper_with_prefix_L{l}"] = paper_probs[l]
        out[f"paper_renorm_L{l}"] = renorm(paper_probs[l], P)
        out[f"paper_z_L{l}"] = paper_z[l]
        out[f"kv_with_prefix_L{l}"] = kv_probs[l]
        out[f"kv_renorm_L{l}"] = renorm(kv_probs[l], P)
        out[f"kv_z_L{l}"] = kv_z[l]
    out["logits_last_pretrained"] = pre_logits
    out["logits_last_paper"] = paper_logits
    out["logits_last_kv"] = kv_logits

    # Sanity of the reference itself (the paper's layer-0 claim, exact in float64), and that the
    # prefix is really attended to and really changes the deeper layer.
    for kind, probs in (("paper", paper_probs), ("kv", kv_probs)):
        d0 = np.abs(renorm(probs[0], P) - pre_probs[0]).max()
        d1 = np.abs(renorm(probs[1], P) - pre_probs[1]).max()
        mass = probs[0][..., :P].sum(-1).mean()
        print(f"{kind}: layer0 |renorm - pretrained| {d0:.2e}, layer1 {d1:.3f}, layer0 mean mass {mass:.3f}")
        assert d0 < 1e-12 and d1 > 1e-2 and mass > 0.05
    # How far the two hand-applied bugs of the issue move the numbers (the test's 1e-5 must catch them).
    no_norm = m.forward(ids, lambda l: m.paper_kv_no_norm(l, s64[l]), P)
    shifted = m.forward(ids, lambda l: m.paper_kv_shifted(l, s64[l]), P)
    for name, (probs, _, logits) in (("no pre-attention norm", no_norm), ("keys at P..2P", shifted)):
        d = max(np.abs(probs[l] - paper_probs[l]).max() for l in range(m.L))
        print(f"bug '{name}': attention moves by {d:.3e}, logits by {np.abs(logits - paper_logits).max():.3e}")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    np.savez(OUT, **out)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes); numpy {np.__version__}, python {sys.version.split()[0]}")


def _paper_kv_no_norm(self, l, s):
    k = self.heads(s @ self.W(l, "self_attn.k_proj").T, self.KV)
    v = self.heads(s @ self.W(l, "self_attn.v_proj").T, self.KV)
    return rope(k, np.arange(s.shape[0]), self.theta), v


def _paper_kv_shifted(self, l, s):
    sn = rms_norm(s, self.W(l, "input_layernorm"), self.eps)
    k = self.heads(sn @ self.W(l, "self_attn.k_proj").T, self.KV)
    v = self.heads(sn @ self.W(l, "self_attn.v_proj").T, self.KV)
    p = s.shape[0]
    return rope(k, np.arange(p, 2 * p), self.theta), v


# The two bugs, only to print how far they move the numbers (not written to the fixture).
Llama.paper_kv_no_norm = _paper_kv_no_norm
Llama.paper_kv_shifted = _paper_kv_shifted

if __name__ == "__main__":
    main()
