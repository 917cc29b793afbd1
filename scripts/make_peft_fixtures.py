#!/usr/bin/env python3
"""Reference data for PEFT adapters (tests/peft.rs), made with the real library.

Pinned: Python 3.12, torch 2.15.0, transformers 5.23.0, peft 0.21.2, numpy 2.5.5, safetensors.
Run by hand (never in CI; CI never installs torch), from the repository root:

    /work/venv-ref/bin/python scripts/make_peft_fixtures.py reference
    cargo build && /work/venv-ref/bin/python scripts/make_peft_fixtures.py roundtrip \
        --prefixscope target/debug/prefixscope

`reference` writes into tests/fixtures/peft/:
- two tiny random LLaMA models saved with `save_pretrained` (float32) and the tokenizer.json of
  tests/regressions/hostile-files/tiny-hf-folder-valid (vocabulary 300 fits both):
  `tiny-llama` (2 layers, d 64, 4 heads, 4 KV heads) and `tiny-gqa` (3 layers, d 64, 4 heads, 2 KV heads);
- for each model, adapters written by PEFT's own `save_pretrained`, each trained 30 steps (Adam, lr 1e-2)
  on a fixed random sequence so that they are not their initialization: PROMPT_TUNING, P_TUNING,
  PREFIX_TUNING (without and with prefix_projection), CARTRIDGE;
- for each adapter, `<adapter>/reference.npz`: transformers + PEFT in float64 with eager attention
  (`PeftModel.from_pretrained(base, folder)`, `output_attentions=True`) on the ids in `prompt.json`:
  `with_prefix_L{l}` `(H, N, P+N)`, the content query rows, columns `[prefix | content]`, and
  `logits_last` `(vocab,)`;
- for refusals: a LoRA adapter (tiny-llama/lora) and a prompt-tuning adapter saved as pickle
  (tiny-llama/prompt_tuning_bin, `safe_serialization=False`);
- `ours/<model>/{soft_prompt.npy, hidden.npy, kv.npz}`: fixed random prefixes in prefixscope's formats,
  the inputs of the reverse direction.

`roundtrip` runs prefixscope's CLI on each `ours/` prefix:
`attention --model M --ids ... --<kind> FILE --out ours/<model>/<kind>.attention.npz
--save-adapter ours/<model>/<kind>.adapter --force`, loads each saved adapter back into PEFT
(`PeftModel.from_pretrained`, float64, eager) and records the largest attention difference against
prefixscope's own numbers, over every layer, in `ours/roundtrip.json` (tests/peft.rs asserts it).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from peft import (
    CartridgeConfig,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
# Relative to the repository root (main() changes there), so that PEFT records
# `base_model_name_or_path` as "tests/fixtures/peft/<model>", not a path on the machine that ran this.
OUT = Path("tests") / "fixtures" / "peft"
TOKENIZER = Path("tests") / "regressions" / "hostile-files" / "tiny-hf-folder-valid" / "tokenizer.json"
IDS = [5, 17, 42, 99, 123, 250, 7, 64]
P = 3  # virtual tokens of the PEFT adapters
P_OURS = 2  # virtual tokens of the prefixes prefixscope saves
MODELS = {
    "tiny-llama": dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    "tiny-gqa": dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
}


def make_model(name, spec):
    torch.manual_seed(0 if name == "tiny-llama" else 1)
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        **spec,
    )
    model = LlamaForCausalLM(cfg).float()
    # Larger than the default init (std 0.02) so that attention is not nearly uniform.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
    folder = OUT / name
    model.save_pretrained(folder)
    shutil.copy(TOKENIZER, folder / "tokenizer.json")
    return folder


def load_base(folder, dtype):
    return LlamaForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager").eval()


def adapter_configs():
    common = dict(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=P)
    return {
        "prompt_tuning": PromptTuningConfig(**common),
        "p_tuning": PromptEncoderConfig(**common, encoder_hidden_size=32),
        "prefix_tuning": PrefixTuningConfig(**common),
        "prefix_tuning_proj": PrefixTuningConfig(**common, prefix_projection=True, encoder_hidden_size=32),
        "cartridge": CartridgeConfig(**common, num_frozen_tokens=1),
    }


def train(peft_model, steps=30):
    torch.manual_seed(2)
    data = torch.randint(3, 300, (1, 16))
    opt = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    first = None
    for _ in range(steps):
        out = peft_model(input_ids=data, attention_mask=torch.ones_like(data), labels=data)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.loss.item()
    return first, out.loss.item()


def peft_attention(base_folder, adapter_folder):
    """Attention `(H, N, P+N)` of the content query rows per layer and the last logits, float64."""
    base = load_base(base_folder, torch.float64)
    model = PeftModel.from_pretrained(base, adapter_folder).eval()
    p = model.active_peft_config.num_virtual_tokens
    ids = torch.tensor([IDS])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True)
    n = len(IDS)
    arrays = {}
    for l, a in enumerate(out.attentions):
        a = a[0].numpy()
        # Soft prompts: the prompt rows are queries too (rows 0..P); prefixes: only content rows.
        arrays[f"with_prefix_L{l}"] = a[:, -n:, :].astype(np.float64)
        assert arrays[f"with_prefix_L{l}"].shape[-1] == p + n
    arrays["logits_last"] = out.logits[0, -1].numpy().astype(np.float64)
    return arrays


def reference():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "prompt.json").write_text(json.dumps({"ids": IDS}) + "\n")
    log = {}
    for name, spec in MODELS.items():
        folder = make_model(name, spec)
        for kind, cfg in adapter_configs().items():
            torch.manual_seed(3)
            peft_model = get_peft_model(load_base(folder, torch.float32), cfg)
            first, last = train(peft_model)
            dest = folder / kind
            peft_model.save_pretrained(dest)
            (dest / "README.md").unlink()  # PEFT's model-card template, 5 KB of nothing
            ref = peft_attention(folder, dest)
            np.savez_compressed(dest / "reference.npz", **ref)
            log[f"{name}/{kind}"] = {"loss_first": round(first, 4), "loss_last": round(last, 4)}
            print(name, kind, log[f"{name}/{kind}"], flush=True)
        if name == "tiny-llama":
            lora = get_peft_model(
                load_base(folder, torch.float32),
                LoraConfig(task_type=TaskType.CAUSAL_LM, r=2, target_modules=["q_proj", "v_proj"]),
            )
            lora.save_pretrained(folder / "lora")
            pt = get_peft_model(load_base(folder, torch.float32), adapter_configs()["prompt_tuning"])
            pt.save_pretrained(folder / "prompt_tuning_bin", safe_serialization=False)
            for f in ("lora", "prompt_tuning_bin"):
                (folder / f / "README.md").unlink()
        # Inputs of the reverse direction, in prefixscope's own formats.
        rng = np.random.default_rng(4)
        L, kvh, hd, d = spec["num_hidden_layers"], spec["num_key_value_heads"], 16, 64
        ours = OUT / "ours" / name
        ours.mkdir(parents=True, exist_ok=True)
        np.save(ours / "soft_prompt.npy", rng.normal(0, 0.15, (P_OURS, d)).astype(np.float32))
        np.save(ours / "hidden.npy", rng.normal(0, 1.0, (L, P_OURS, d)).astype(np.float32))
        np.savez(
            ours / "kv.npz",
            keys=rng.normal(0, 1.0, (L, kvh, P_OURS, hd)).astype(np.float32),
            values=rng.normal(0, 1.0, (L, kvh, P_OURS, hd)).astype(np.float32),
        )
    (OUT / "training.json").write_text(json.dumps(log, indent=1) + "\n")


KINDS = {"soft_prompt": ("--soft-prompt", "soft_prompt.npy"), "hidden": ("--prefix", "hidden.npy"),
         "kv": ("--prefix-kv", "kv.npz")}


def roundtrip(binary):
    result = {"tolerance": 1e-5, "cases": {}}
    for name in MODELS:
        ours = OUT / "ours" / name
        for kind, (flag, file) in KINDS.items():
            saved = ours / f"{kind}.adapter"
            npz = ours / f"{kind}.attention.npz"
            cmd = [binary, "attention", "--model", str(OUT / name), "--ids", ",".join(map(str, IDS)),
                   flag, str(ours / file), "--out", str(npz), "--save-adapter", str(saved), "--force"]
            subprocess.run(cmd, check=True, cwd=ROOT)
            mine = np.load(npz)
            theirs = peft_attention(OUT / name, saved)
            cfg = json.loads((saved / "adapter_config.json").read_text())
            worst = 0.0
            # prefixscope's names: docs/activations.md (0.1 wrote `with_prefix_L{l}`).
            layers = sorted(int(k.split(".")[1]) for k in mine.files if k.endswith(".attn.hook_pattern"))
            for l in layers:
                worst = max(worst, float(np.abs(mine[f"blocks.{l}.attn.hook_pattern"] - theirs[f"with_prefix_L{l}"]).max()))
            logits = float(np.abs(mine["logits_last_prefixed"] - theirs["logits_last"]).max())
            result["cases"][f"{name}/{kind}"] = {
                "peft_type": cfg["peft_type"],
                "layers": len(layers),
                "max_abs_attention_diff": worst,
                "max_abs_logits_diff": logits,
            }
            print(name, kind, result["cases"][f"{name}/{kind}"], flush=True)
    (OUT / "ours" / "roundtrip.json").write_text(json.dumps(result, indent=1) + "\n")
    bad = [k for k, v in result["cases"].items() if v["max_abs_attention_diff"] > 1e-5]
    if bad:
        sys.exit(f"PEFT does not reproduce prefixscope for {bad}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("reference")
    rt = sub.add_parser("roundtrip")
    rt.add_argument("--prefixscope", default="target/debug/prefixscope")
    a = ap.parse_args()
    os.chdir(ROOT)
    if a.cmd == "reference":
        reference()
    else:
        roundtrip(a.prefixscope)


if __name__ == "__main__":
    main()
