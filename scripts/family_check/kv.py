# By-hand check of every family against transformers (not CI; see scripts/family_check/README.md).
# Pinned: torch 2.15.0, transformers 5.23.0, numpy 2.5.5, gguf 0.19.0.
import os
OUT = os.environ.get("OUT", "/tmp/family_check")
import sys, subprocess, numpy as np, torch, transformers as tf
from transformers import DynamicCache
BIN = os.environ.get("PREFIXSCOPE", "target/release/prefixscope")
ids = [5, 17, 33, 2, 90, 41, 7, 64, 12, 3, 55]
for name in sys.argv[1:]:
    d = f"{OUT}/{name}"
    m = tf.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    c = m.config; L = c.num_hidden_layers; kv = c.num_key_value_heads; hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    P = 3; g = torch.Generator().manual_seed(1)
    K = torch.randn(L, kv, P, hd, generator=g); Vv = torch.randn(L, kv, P, hd, generator=g) * 0.5
    cache = DynamicCache(config=c)
    for l in range(L): cache.update(K[l][None].clone(), Vv[l][None].clone(), l)
    with torch.no_grad():
        o = m(input_ids=torch.tensor([ids]), past_key_values=cache, attention_mask=torch.ones(1, P + len(ids), dtype=torch.long),
              position_ids=torch.arange(P, P + len(ids))[None], output_attentions=True)
    np.savez(f"{d}/kv.npz", keys=K.numpy(), values=Vv.numpy())
    out = f"{OUT}/{name}_kv.npz"
    r = subprocess.run([BIN, "attention", "--model", d, "--ids", ",".join(map(str, ids)), "--layers", "all", "--prefix-kv", f"{d}/kv.npz", "--out", out], capture_output=True, text=True)
    if r.returncode: print(name, r.stderr[:300]); continue
    ours = np.load(out)
    err = max(np.abs(ours[f"blocks.{l}.attn.hook_pattern"] - o.attentions[l][0].numpy()).max() for l in range(L))
    print(f"kv-prefix {name:10s} attention {err:.2e} logits {np.abs(ours['logits_last_prefixed'] - o.logits[0,-1].numpy()).max():.2e}")
