#!/usr/bin/env python3
"""prefixscope against Hugging Face transformers on the same weights, the same prompts and the same
machine (issue #16): one forward returning every attention matrix of SmolLM2-135M at each N, the two
alternating round by round so that a change in the machine's load hits both.

Run by hand, never in CI (it needs torch):
    /work/venv-ref/bin/python scripts/bench_peer.py --bin target/release/prefixscope [--rounds 3]
        [--lengths 32,128,512,2048] [--repeats 3] [--gguf PATH] [--hf-dir DIR] [--json OUT]

Pinned: Python 3.12, torch 2.15.0, transformers 5.23.0, numpy 2.5.5, gguf 0.19.0, safetensors.

transformers runs in float32 with eager attention and `output_attentions=True` (it then materialises
all 30 x 9 maps, as `prefixscope bench` returns them), on 2 threads (`torch.set_num_threads(2)`, the
machines this project runs on have 2 cores), under `torch.inference_mode()`.

Weights: the cached GGUF (`.ci/fetch-smollm2.sh`), dequantized with gguf-py into a Hugging Face folder
outside the repository (default `~/.cache/prefixscope/SmolLM2-135M-from-gguf-f32`), Q/K rows put back
from llama.cpp's order into Hugging Face's; prefixscope reads the GGUF itself (dequantized to the same
f32 numbers). Before timing, the script checks that both give the same attention (layer 0 and the last
layer at N = 32, `prefixscope attention`), so the comparison is between equal computations.

Token ids are `(k * 7919 + 13) % vocab`, as `prefixscope bench` makes them. Peak memory of each case
is the resident high-water mark in a window reset through `/proc/self/clear_refs` (as `bench` does).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def default_gguf():
    cache = os.environ.get("PREFIXSCOPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "prefixscope"
    )
    return Path(cache) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# GGUF tensor names (llama architecture) -> Hugging Face names.
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def unpermute(w, n_head):
    """Undo llama.cpp's `LlamaModel.permute` of Q/K rows (interleaved pairs -> rotate-half order)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_folder_from_gguf(gguf_path: Path, out: Path):
    """Write config.json and model.safetensors (f32) from the GGUF, once."""
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return
    import gguf
    from safetensors.numpy import save_file

    r = gguf.GGUFReader(str(gguf_path))
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.")}
    arch = f["general.architecture"]
    if arch != "llama":
        sys.exit(f"{gguf_path}: general.architecture: expected llama, found {arch}")
    n_head = int(f["llama.attention.head_count"])
    n_kv = int(f["llama.attention.head_count_kv"])
    tensors = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        # ggml shapes are reversed: the array is (rows, cols) = (out, in), as Hugging Face stores it.
        w = w.reshape([int(d) for d in reversed(t.shape)])
        name = t.name
        if name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf = "model.norm.weight"
        elif name == "output.weight":
            hf = "lm_head.weight"
        elif name.startswith("blk."):
            _, layer, rest = name.split(".", 2)
            if rest not in BLOCK_NAMES:
                sys.exit(f"{gguf_path}: tensor {name}: not a llama tensor this script knows")
            hf = f"model.layers.{layer}.{BLOCK_NAMES[rest]}"
            if rest == "attn_q.weight":
                w = unpermute(w, n_head)
            elif rest == "attn_k.weight":
                w = unpermute(w, n_kv)
        else:
            sys.exit(f"{gguf_path}: tensor {name}: not a llama tensor this script knows")
        tensors[hf] = np.ascontiguousarray(w)
    tied = "lm_head.weight" not in tensors
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": int(f["llama.embedding_length"]),
        "intermediate_size": int(f["llama.feed_forward_length"]),
        "num_hidden_layers": int(f["llama.block_count"]),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "vocab_size": int(tensors["model.embed_tokens.weight"].shape[0]),
        "rms_norm_eps": float(f["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(f["llama.rope.freq_base"]),
        "max_position_embeddings": int(f["llama.context_length"]),
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2))


# Seconds of quiet before each side's timed runs (see the loop in `main`).
SETTLE_S = 2.0


def synthetic_ids(n, vocab):
    return [(k * 7919 + 13) % vocab for k in range(n)]


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


class Peer:
    def __init__(self, hf_dir: Path):
        import torch
        import transformers

        torch.set_num_threads(2)
        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            str(hf_dir), dtype=torch.float32, attn_implementation="eager"
        ).eval()
        self.vocab = self.model.config.vocab_size

    def forward(self, ids):
        torch = self.torch
        with torch.inference_mode():
            out = self.model(
                torch.tensor([ids]), output_attentions=True, use_cache=False, logits_to_keep=1
            )
        return out

    def time(self, n, repeats):
        ids = synthetic_ids(n, self.vocab)
        windowed = reset_peak()
        del_ = self.forward(ids)  # warm-up
        del del_
        times = []
        for _ in range(max(1, repeats)):
            t = time.perf_counter()
            out = self.forward(ids)
            times.append(time.perf_counter() - t)
            del out
        return statistics.median(times), (peak_bytes() if windowed else None)


def run_prefixscope(binary, gguf_path, lengths, repeats, four_n):
    cmd = [
        binary, "bench", "--model", str(gguf_path), "--forward-only", "--json",
        "--lengths", ",".join(map(str, lengths)), "--repeats", str(repeats),
        "--four-layer-n", str(four_n),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
    return json.loads(res.stdout)


def check_same_attention(binary, gguf_path, peer):
    """Layer 0 and the last layer at N = 32 from both: the same weights give the same maps."""
    ids = synthetic_ids(32, peer.vocab)
    last = peer.model.config.num_hidden_layers - 1
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "a.npz"
        cmd = [binary, "attention", "--model", str(gguf_path), "--ids", ",".join(map(str, ids)),
               "--layers", f"0,{last}", "--out", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
        ours = np.load(out)
        theirs = peer.forward(ids).attentions
        worst = 0.0
        for l in (0, last):
            worst = max(worst, float(np.abs(ours[f"blocks.{l}.attn.hook_pattern_pretrained"] - theirs[l][0].numpy()).max()))
    if worst > 1e-4:
        sys.exit(f"prefixscope and transformers disagree on the attention by {worst:.2e}: not the same weights")
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/prefixscope")
    ap.add_argument("--gguf", type=Path, default=default_gguf())
    ap.add_argument("--hf-dir", type=Path, default=None)
    ap.add_argument("--lengths", default="32,128,512,2048")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--four-layer-n", type=int, default=2048)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    lengths = [int(x) for x in a.lengths.split(",") if x.strip()]
    hf_dir = a.hf_dir or a.gguf.parent / "SmolLM2-135M-from-gguf-f32"
    hf_folder_from_gguf(a.gguf, hf_dir)
    peer = Peer(hf_dir)
    agree = check_same_attention(a.bin, a.gguf, peer)
    print(f"same weights: attention of layers 0 and last at N = 32 agree to {agree:.1e}")

    ours = {n: [] for n in lengths}
    ours_peak = {n: [] for n in lengths}
    theirs = {n: [] for n in lengths}
    theirs_peak = {n: [] for n in lengths}
    four = []
    backend = None
    for r in range(a.rounds):
        # Each side starts on a settled machine: right after a transformers forward, this process's
        # OpenMP/MKL threads and the memory it just touched slowed the first prefixscope run that
        # followed by 17% in one check (0.244 s against 0.209 s at N = 128), and only prefixscope ran
        # right after the other side.
        time.sleep(SETTLE_S)
        b = run_prefixscope(a.bin, a.gguf, lengths, a.repeats, a.four_layer_n)
        backend = f"{b['matmul']} on {b['cpu']}, matmul peak {b['matmul_peak_gflops']:.1f} GFLOP/s"
        for n in lengths:
            ours[n].append(b["full_forward_s"][str(n)])
            ours_peak[n].append(b["forward_peak_rss_bytes"].get(str(n)))
        if b.get("four_layers"):
            four.append(b["four_layers"])
        for n in lengths:
            time.sleep(SETTLE_S)
            t, p = peer.time(n, a.repeats)
            theirs[n].append(t)
            theirs_peak[n].append(p)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)

    def med(v):
        v = [x for x in v if x is not None]
        return statistics.median(v) if v else None

    def mb(b):
        return "n/a" if b is None else f"{b / 1e6:.0f} MB"

    print(f"prefixscope: {backend}")
    print(f"transformers {__import__('transformers').__version__}, torch {peer.torch.__version__}, "
          f"{peer.torch.get_num_threads()} threads, f32 eager, output_attentions")
    print(f"medians over {a.rounds} alternating rounds of {a.repeats} runs each")
    print("| N | prefixscope | transformers | ratio | peak prefixscope | peak transformers |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for n in lengths:
        o, t = med(ours[n]), med(theirs[n])
        rows[n] = {"prefixscope_s": o, "transformers_s": t, "ratio": o / t,
                   "prefixscope_peak": med(ours_peak[n]), "transformers_peak": med(theirs_peak[n])}
        print(f"| {n} | {o * 1e3:,.0f} ms | {t * 1e3:,.0f} ms | {o / t:.2f}x | "
              f"{mb(rows[n]['prefixscope_peak'])} | {mb(rows[n]['transformers_peak'])} |")
    four_row = None
    if four:
        n4 = four[0]["n"]
        t4 = med(theirs.get(n4, []))
        f4 = med([f["forward_s"] for f in four])
        p4 = med([f.get("peak_rss_bytes") for f in four])
        four_row = {"n": n4, "layers": four[0]["layers"], "prefixscope_s": f4, "peak": p4,
                    "transformers_full_s": t4}
        ratio = f"{f4 / t4:.2f}x transformers' full model" if t4 else "(transformers not run at this N)"
        print(f"N = {n4}, maps of layers {four[0]['layers']} only: {f4 * 1e3:,.0f} ms, {ratio}, "
              f"peak {mb(p4)}")
    if a.json:
        per_round = {n: {"prefixscope_s": ours[n], "transformers_s": theirs[n]} for n in lengths}
        a.json.write_text(json.dumps({"backend": backend, "rows": rows, "four_layers": four_row,
                                      "per_round": per_round}, indent=2))


if __name__ == "__main__":
    main()
