#!/usr/bin/env python3
"""Reference numbers for figure (c), the bias plot, from an independent float64 NumPy implementation.

Figure (c) draws, for the four-task toy `models/mix-1l4h256/random.safetensors` (1 layer, 4 heads,
d 256, no LayerNorm before attention: the paper's `skip_layer_norm=True`), the attention block output
(after `c_proj`, with its bias) at the last input position, in residual dimensions 143 and 212,
without a prefix and with each task's paper-form prefix (`prefix-{task}.safetensors`, shape
(1, 1, 256)). This script computes the same numbers from the paper's minGPT semantics, not from the
crate:
- without a prefix (the pretrained run): the placeholder token 0 at position 0, the 10 inputs at
  positions 1..10 (the layout the model was trained with, prefix size 1);
- with a prefix: the inputs at positions 1..10, and the prefix row `s` replacing the attention input
  at position 0: its keys and values are `c_attn(s)` (with bias, no position embedding); every input
  row attends to it and causally to the inputs.

The 20 inputs are the figure's own (`sample_inputs(20, 1428)`, drawn by Rust's StdRng): they are read
from a `c_bias.json` that `prefixscope figures` wrote (only its `inputs` field is used), and the test
checks that the figure used exactly these inputs.

Pinned: Python 3.11, numpy 2.4.6. Run by hand from the repository root (CI never runs it):

    target/debug/prefixscope figures --no-smollm2 --out /tmp/figs
    /tmp/venv-ref/bin/python scripts/make_bias_figure_reference.py /tmp/figs/c_bias.json

Writes `tests/fixtures/bias_figure/reference.json`: `dims`, `inputs`, `without_prefix` (20 x 2),
and per task `with_prefix[task]` (20 x 2) and `mean_shift_length` (the mean over inputs of the
full 256-dimensional shift's length).
"""

import json
import os
import struct
import sys

import numpy as np

MODELS = "models/mix-1l4h256"
OUT = "tests/fixtures/bias_figure/reference.json"
TASKS = ["ascending", "descending", "add1", "add2"]
DIMS = (143, 212)


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
    return out, header.get("__metadata__", {})


def softmax(s):
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - m)
    return e / e.sum(axis=-1, keepdims=True)


def block_output_last(w, cfg, ids, pos0, prefix_row=None):
    """Layer-0 attention block output (after c_proj + bias) at the last row."""
    c, h = cfg["n_embd"], cfg["n_head"]
    hd = c // h
    assert cfg["skip_attn_layernorm"], "this toy has no ln_1"
    n = len(ids)
    x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][pos0 : pos0 + n]
    wa, ba = w["transformer.h.0.attn.c_attn.weight"], w["transformer.h.0.attn.c_attn.bias"]
    qkv = x @ wa.T + ba
    q, k, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    if prefix_row is not None:
        pkv = prefix_row @ wa.T + ba
        k = np.concatenate([pkv[:, c : 2 * c], k])
        v = np.concatenate([pkv[:, 2 * c :], v])
        mask = np.concatenate([np.zeros((n, prefix_row.shape[0])), mask], axis=1)
    z = np.zeros((n, c))
    for hh in range(h):
        sl = slice(hh * hd, (hh + 1) * hd)
        probs = softmax(q[:, sl] @ k[:, sl].T / np.sqrt(hd) + mask)
        z[:, sl] = probs @ v[:, sl]
    out = z @ w["transformer.h.0.attn.c_proj.weight"].T + w["transformer.h.0.attn.c_proj.bias"]
    return out[-1]


def main():
    inputs = json.load(open(sys.argv[1]))["inputs"]
    w, meta = read_safetensors(os.path.join(MODELS, "random.safetensors"))
    cfg = json.loads(meta["prefixscope.config"])
    p = int(meta["prefixscope.prefix_size"])
    base = [block_output_last(w, cfg, [0] * p + list(x), 0) for x in inputs]
    res = {
        "dims": list(DIMS),
        "inputs": inputs,
        "without_prefix": [[b[DIMS[0]], b[DIMS[1]]] for b in base],
        "with_prefix": {},
        "mean_shift_length": {},
    }
    for task in TASKS:
        pw, _ = read_safetensors(os.path.join(MODELS, f"prefix-{task}.safetensors"))
        s = pw["prefix"][0]  # (P, d) of layer 0
        assert s.shape[0] == p
        outs = [block_output_last(w, cfg, list(x), p, s) for x in inputs]
        res["with_prefix"][task] = [[o[DIMS[0]], o[DIMS[1]]] for o in outs]
        res["mean_shift_length"][task] = float(
            np.mean([np.linalg.norm(o - b) for o, b in zip(outs, base)])
        )
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {OUT}; numpy {np.__version__}; mean shift lengths {res['mean_shift_length']}")


if __name__ == "__main__":
    main()
