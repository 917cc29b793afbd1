# By-hand check of every family against transformers (not CI; see scripts/family_check/README.md).
# Pinned: torch 2.15.0, transformers 5.23.0, numpy 2.5.5, gguf 0.19.0.
import os
OUT = os.environ.get("OUT", "/tmp/family_check")
import subprocess, sys, numpy as np, os
BIN = os.environ.get("PREFIXSCOPE", "target/release/prefixscope")
ids = "5,17,33,2,90,41,7,64,12,3,55"
for name in sys.argv[1:]:
    d = f"{OUT}/{name}"
    ref = np.load(f"{d}/ref.npz")
    for soft in (False, True):
        out = f"{OUT}/{name}_{int(soft)}.npz"
        cmd = [BIN, "attention", "--model", d, "--ids", ids, "--layers", "all", "--out", out]
        if soft: cmd += ["--soft-prompt", f"{d}/soft.npy"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(name, soft, "FAILED", r.stderr.strip()[:400]); continue
        o = np.load(out)
        key = "with_prefix" if soft else "pretrained"
        hook = "attn.hook_pattern" if soft else "attn.hook_pattern_pretrained"  # docs/activations.md
        att = max(np.abs(o[f"blocks.{l}.{hook}"] - ref[f"{key}_L{l}"]).max() for l in range(3))
        lk = "logits_last_prefixed" if soft else "logits_last_pretrained"
        lg = np.abs(o[lk] - ref[lk]).max()
        print(f"{name:12s} soft={soft!s:5s} attention {att:.2e} logits {lg:.2e}")
