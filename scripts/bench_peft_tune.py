"""One prefix-tuning step with PEFT + transformers, to compare with `prefixscope bench`'s tune_step_s.

Pinned: Python 3.12, torch 2.15.0, transformers 5.23.0, peft 0.21.2, gguf 0.19.0 (the /work/venv-ref
venv). Run by hand, never by CI:

    /work/venv-ref/bin/python scripts/bench_peft_tune.py ~/.cache/prefixscope/SmolLM2-135M-Instruct.Q4_1.gguf

The same step as `prefixscope bench`'s `tune_step_s`: SmolLM2 loaded from the GGUF (dequantized to
f32), every weight frozen, P = 4 virtual tokens (PROMPT_TUNING for "soft", PREFIX_TUNING without
projection for "kv"), N = 32 synthetic prompt tokens (the ids `synthetic_ids` makes) and one target
token, loss = cross-entropy of the target, backward, Adam (lr 0.01). Median of 5 steps after one
warm-up step, on as many threads as cores (torch's default), CPU. Prints one JSON object.
"""

import json
import os
import statistics
import sys
import time

import torch
from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM


def synthetic_ids(n, vocab):
    # src/cli/bench.rs: (i * 7919 + 13) % vocab
    return [(i * 7919 + 13) % vocab for i in range(n)]


def main():
    path = os.path.expanduser(sys.argv[1])
    folder, name = os.path.split(path)
    n, repeats = 32, 5
    out = {"torch_threads": torch.get_num_threads()}
    for kind in ["soft", "kv"]:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        model.eval()
        vocab = model.config.vocab_size
        if kind == "soft":
            cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
        else:
            cfg = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
        peft = get_peft_model(model, cfg)
        params = [p for p in peft.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=0.01)
        ids = synthetic_ids(n + 1, vocab)
        x = torch.tensor([ids[:n]])
        y = torch.tensor([ids[n]])

        def step():
            opt.zero_grad()
            logits = peft(input_ids=x).logits[0, -1]
            loss = torch.nn.functional.cross_entropy(logits[None], y)
            loss.backward()
            opt.step()

        step()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        out[kind] = statistics.median(times)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
