#!/usr/bin/env python3
"""Conformance fixtures: a tiny random checkpoint of every model family, as a Hugging Face folder
(transformers 5.x config, plus the same config in 4.x spelling) and as a GGUF written the way llama.cpp's
convert_hf_to_gguf.py writes it, with reference attention and logits from transformers.

Run by hand, never in CI:
    /work/venv-ref/bin/python scripts/make_conformance.py [--only llama,qwen2]

Pinned: Python 3.12, torch 2.15.0, transformers 5.23.0, numpy 2.5.5, gguf 0.19.0, tokenizers 0.23.x.

Per variant, tests/fixtures/conformance/<variant>/ holds:
- hf/config.json (5.x, as save_pretrained writes it), hf/model.safetensors (F16), hf/tokenizer.json;
- config_4x.json: the same model in transformers 4.x spelling (top-level rope_theta / rope_scaling,
  Gemma's rope_local_base_freq); the tests put it next to the weights in a temporary folder;
- model.gguf: F16 matrices, F32 vectors; llama-arch Q/K rows permuted as `LlamaModel.permute`, Gemma's
  norms stored as 1 + w, Llama 3 scaling as `rope_freqs.weight`, Phi-3's fused qkv/gate_up;
- soft_prompt.npy (P, d) and prefix_kv.npz (keys, values: (L, n_kv, P, head_dim), keys taken as already
  rotated, Hugging Face head-dim order): the prefixes the references were computed with;
- reference.npz (float32 of float64 computations): token_ids; for `none` (no prefix), `soft` (the soft
  prompt rows prepended to inputs_embeds, content at positions P..P+N-1) and `kv` (the key/value prefix
  as a DynamicCache, content at positions P..P+N-1, attention_mask over prefix + content):
  `{case}_attn_L{l}` (H, N, K) with K = N (none) or P + N, and `{case}_logits_last` (vocab,);
  for each maths-changing feature the family has, `ignored_{feature}_none_attn_L{l}` and
  `ignored_{feature}_none_logits_last`: the same model computed without that feature, which the tests
  check are far from the reference (so each comparison can catch that bug);
- meta.json: the sizes, the features and the ids.

Weights are random multiples of 2^-8 in (-1, 1), exact in F16 (and 1 + w too), so HF and GGUF hold the
same numbers and the references are exact for both. The references run in float64, eager attention.
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

import gguf
import transformers
from transformers import DynamicCache

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "conformance")

D, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FF = 64, 2, 4, 2, 16, 128
N_CONTENT, P = 7, 3
WINDOW = 16  # Mistral's and Gemma's window: prefix + content fit, so nothing is refused
SEED = 1234


def tiny_tokenizer(vocab_size):
    """A byte-level BPE of exactly `vocab_size` tokens (tokenizer.json + the GGUF lists)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    corpus = ("The quick brown fox jumps over the lazy dog. Hello world! 0123456789 " * 50 +
              "prefix tuning attention heads layers tokens values keys queries " * 50)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([corpus], trainer)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    return tok, tokens, merges


def base(**kw):
    c = dict(hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
             num_key_value_heads=KV_HEADS, intermediate_size=FF, max_position_embeddings=128,
             rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    c.update(kw)
    return c


# name -> (family, transformers config class, config kwargs, GGUF arch, {feature: how to ignore it})
VARIANTS = {
    "llama": ("llama", "LlamaConfig", base(rope_parameters={"rope_type": "default", "rope_theta": 50000.0}),
              "llama", {"rope_theta": "theta10000"}),
    "llama_bias": ("llama", "LlamaConfig", base(attention_bias=True), "llama", {"bias": "zero_bias"}),
    "llama3_scaling": ("llama", "LlamaConfig", base(rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}), "llama",
        {"rope_scaling": "default_rope"}),
    "llama_linear": ("llama", "LlamaConfig", base(rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}), "llama",
        {"rope_scaling": "default_rope"}),
    "llama_yarn": ("llama", "LlamaConfig", base(rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 32}), "llama", {"rope_scaling": "default_rope"}),
    "mistral": ("mistral", "MistralConfig", base(sliding_window=WINDOW, head_dim=HEAD_DIM), "llama", {}),
    "qwen2": ("qwen2", "Qwen2Config", base(), "qwen2", {"bias": "zero_bias"}),
    "qwen3": ("qwen3", "Qwen3Config", base(head_dim=HEAD_DIM), "qwen3", {"qk_norm": "no_qk_norm"}),
    "gemma3": ("gemma3", "Gemma3TextConfig", base(
        head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention"], hidden_activation="gelu_pytorch_tanh",
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}),
        "gemma3", {"qk_norm": "no_qk_norm", "embed_scale": "no_embed_scale",
                   "local_rope": "global_rope_everywhere"}),
    "phi3": ("phi3", "Phi3Config", base(tie_word_embeddings=False, partial_rotary_factor=0.5,
                                        pad_token_id=0), "phi3",
             {"partial_rotary": "full_rotary"}),
}


def grid(shape, gen, scale=1.0):
    """Random multiples of 2^-8 in (-1, 1), times `scale` (a power of two): exact in F16."""
    x = gen.normal(0.0, 0.35, size=shape)
    x = np.clip(np.round(x * 256) / 256, -255 / 256, 255 / 256)
    return torch.tensor(x * scale, dtype=torch.float64)


def build(name, seed):
    family, cls_name, kw, arch, features = VARIANTS[name]
    tok, tokens, merges = tiny_tokenizer(320)
    kw = dict(kw, vocab_size=len(tokens))
    cls = getattr(transformers, cls_name)
    cfg = cls(**kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model_cls = transformers.AutoModelForCausalLM
    model = model_cls.from_config(cfg, attn_implementation="eager", dtype=torch.float64)
    gen = np.random.default_rng(seed)
    sd = model.state_dict()
    new = {}
    for k, v in sd.items():
        if k.endswith("norm.weight"):
            if family == "gemma3":
                new[k] = grid(v.shape, gen, 0.5)  # (1 + w) around 1
            else:
                new[k] = 1.0 + grid(v.shape, gen, 0.25)
        elif k.endswith("bias"):
            new[k] = grid(v.shape, gen, 0.5)
        else:
            new[k] = grid(v.shape, gen, 0.5)
    model.load_state_dict(new, strict=False)
    if getattr(cfg, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()
    return family, arch, features, cfg, model, tok, tokens, merges


def attn_logits(model, *, input_ids=None, inputs_embeds=None, past=None, position_ids=None,
                attention_mask=None):
    with torch.no_grad():
        out = model(input_ids=input_ids, inputs_embeds=inputs_embeds, past_key_values=past,
                    position_ids=position_ids, attention_mask=attention_mask,
                    output_attentions=True, use_cache=past is not None)
    return [a[0].numpy() for a in out.attentions], out.logits[0, -1].numpy()


def kv_cache(cfg, keys, values):
    cache = DynamicCache(config=cfg)
    for l in range(keys.shape[0]):
        cache.update(keys[l][None], values[l][None], l)
    return cache


def references(model, cfg, ids, soft, keys, values):
    """The three cases: no prefix, soft prompt, key/value prefix."""
    out = {}
    ids_t = torch.tensor([ids])
    a, lg = attn_logits(model, input_ids=ids_t)
    out["none"] = (a, lg)
    emb = model.get_input_embeddings()(ids_t)
    x = torch.cat([soft[None], emb], dim=1)
    a, lg = attn_logits(model, inputs_embeds=x)
    out["soft"] = ([m[:, soft.shape[0]:, :] for m in a], lg)
    n = len(ids)
    p = keys.shape[2]
    a, lg = attn_logits(model, input_ids=ids_t, past=kv_cache(cfg, keys, values),
                        position_ids=torch.arange(p, p + n)[None],
                        attention_mask=torch.ones(1, p + n, dtype=torch.long))
    out["kv"] = (a, lg)
    return out


def ignored(name, model, cfg, feature, how, ids):
    """The no-prefix numbers of the same weights with `feature` left out."""
    m = copy.deepcopy(model)
    c = copy.deepcopy(cfg)
    if how == "zero_bias":
        with torch.no_grad():
            for mod in m.modules():
                for pn in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    lin = getattr(mod, pn, None)
                    if lin is not None and getattr(lin, "bias", None) is not None:
                        lin.bias.zero_()
    elif how in ("theta10000", "default_rope", "global_rope_everywhere", "full_rotary"):
        if how == "theta10000":
            c.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        elif how == "default_rope":
            c.rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_parameters["rope_theta"]}
        elif how == "global_rope_everywhere":
            full = cfg.rope_parameters["full_attention"]
            c.rope_parameters = {"sliding_attention": dict(full), "full_attention": dict(full)}
        elif how == "full_rotary":
            c.partial_rotary_factor = 1.0
            if isinstance(getattr(c, "rope_parameters", None), dict):
                c.rope_parameters.pop("partial_rotary_factor", None)
        m = type(model)(c).to(torch.float64)
        m.load_state_dict(model.state_dict())
        m.eval()
    elif how == "no_qk_norm":
        for mod in m.modules():
            for pn in ("q_norm", "k_norm"):
                if hasattr(mod, pn):
                    setattr(mod, pn, torch.nn.Identity())
    elif how == "no_embed_scale":
        emb = m.get_input_embeddings()
        emb.embed_scale = torch.tensor(1.0, dtype=torch.float64)
    else:
        raise ValueError(how)
    m.config._attn_implementation = "eager"
    a, lg = attn_logits(m, input_ids=torch.tensor([ids]))
    return a, lg


def config_4x(cfg_dict, family):
    """The transformers 4.x spelling of a 5.x config: rope_theta and rope_scaling at the top."""
    d = copy.deepcopy(cfg_dict)
    rp = d.pop("rope_parameters", None)
    d["transformers_version"] = "4.46.0"
    if rp is None:
        return d
    if family == "gemma3":
        full, local = rp["full_attention"], rp["sliding_attention"]
        d["rope_theta"] = full["rope_theta"]
        d["rope_local_base_freq"] = local["rope_theta"]
        extra = {k: v for k, v in full.items() if k != "rope_theta"}
        d["rope_scaling"] = None if extra.get("rope_type", "default") == "default" else extra
        return d
    d["rope_theta"] = rp.get("rope_theta", 10000.0)
    if "partial_rotary_factor" in rp:
        d["partial_rotary_factor"] = rp["partial_rotary_factor"]
    extra = {k: v for k, v in rp.items() if k not in ("rope_theta", "partial_rotary_factor")}
    d["rope_scaling"] = None if extra.get("rope_type", "default") == "default" else extra
    return d


def permute(w, n_head, n_head_kv=None):
    """convert_hf_to_gguf.py LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def llama3_rope_freqs(rp, head_dim):
    """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors (rope_freqs.weight)."""
    base = rp.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor = rp.get("factor", 8.0)
    low, high = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    old = rp.get("original_max_position_embeddings", 8192)
    low_wl, high_wl = old / low, old / high
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(1)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (old / wl - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(path, family, arch, cfg, model, tokens, merges):
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-{family}")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rp = cfg.rope_parameters
    if family == "gemma3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_freq_base(rp["full_attention"]["rope_theta"])
        w.add_rope_freq_base_swa(rp["sliding_attention"]["rope_theta"])
        w.add_sliding_window(cfg.sliding_window)
        w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg.layer_types])
    else:
        w.add_rope_freq_base(rp["rope_theta"])
        rot = head_dim
        if family == "phi3":
            rot = int(head_dim * cfg.partial_rotary_factor)
        w.add_rope_dimension_count(rot)
        if family == "qwen3" or head_dim != cfg.hidden_size // cfg.num_attention_heads:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        rt = rp.get("rope_type", "default")
        if rt == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(rp["factor"])
        elif rt == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(rp["factor"])
            w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre({"qwen2": "qwen2", "qwen3": "qwen2"}.get(family, "llama-bpe"))
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t == "<|endoftext|>" else gguf.TokenType.NORMAL
                       for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(0)

    sd = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
    permutes = arch == "llama"
    tensors = []
    if family != "phi3" or True:
        tensors.append(("token_embd.weight", sd["model.embed_tokens.weight"]))
    tensors.append(("output_norm.weight", sd["model.norm.weight"]))
    if not cfg.tie_word_embeddings:
        tensors.append(("output.weight", sd["lm_head.weight"]))
    if family == "llama" and rp.get("rope_type") == "llama3":
        tensors.append(("rope_freqs.weight", torch.tensor(llama3_rope_freqs(rp, head_dim))))
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        tensors.append((b + "attn_norm.weight", sd[p + "input_layernorm.weight"]))
        if family == "phi3":
            tensors.append((b + "attn_qkv.weight", sd[p + "self_attn.qkv_proj.weight"]))
            tensors.append((b + "ffn_up.weight", sd[p + "mlp.gate_up_proj.weight"]))
        else:
            for hf, g in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v")):
                for kind in ("weight", "bias"):
                    t = sd.get(p + f"self_attn.{hf}.{kind}")
                    if t is None:
                        continue
                    if permutes and hf == "q_proj":
                        t = permute(t, cfg.num_attention_heads, cfg.num_attention_heads)
                    if permutes and hf == "k_proj":
                        t = permute(t, cfg.num_attention_heads, cfg.num_key_value_heads)
                    tensors.append((b + f"{g}.{kind}", t))
            tensors.append((b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"]))
            tensors.append((b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"]))
        tensors.append((b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"]))
        if p + "self_attn.o_proj.bias" in sd:
            tensors.append((b + "attn_output.bias", sd[p + "self_attn.o_proj.bias"]))
        tensors.append((b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"]))
        if family in ("qwen3", "gemma3"):
            tensors.append((b + "attn_q_norm.weight", sd[p + "self_attn.q_norm.weight"]))
            tensors.append((b + "attn_k_norm.weight", sd[p + "self_attn.k_norm.weight"]))
        if family == "gemma3":
            tensors.append((b + "post_attention_norm.weight", sd[p + "post_attention_layernorm.weight"]))
            tensors.append((b + "ffn_norm.weight", sd[p + "pre_feedforward_layernorm.weight"]))
            tensors.append((b + "post_ffw_norm.weight", sd[p + "post_feedforward_layernorm.weight"]))
        else:
            tensors.append((b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"]))
    for name, t in tensors:
        a = t.numpy()
        if family == "gemma3" and name.endswith("norm.weight"):
            a = a + 1.0  # convert_hf_to_gguf.py Gemma3Model: norm_shift
        if a.ndim >= 2 and name != "rope_freqs.weight":
            a = a.astype(np.float16)
        else:
            a = a.astype(np.float32)
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make(name):
    seed = SEED + sum(map(ord, name))
    family, arch, features, cfg, model, tok, tokens, merges = build(name, seed)
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    hf = os.path.join(d, "hf")
    # A copy: `.to()` casts in place, buffers included (RoPE's inv_freq), and the references must keep
    # the float64 model.
    copy.deepcopy(model).to(torch.float16).save_pretrained(hf)
    tok.save(os.path.join(hf, "tokenizer.json"))
    # Check the F16 files hold exactly the float64 weights.
    back = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float64)
    for k, v in back.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    with open(os.path.join(hf, "config.json")) as f:
        cfg_dict = json.load(f)
    with open(os.path.join(d, "config_4x.json"), "w") as f:
        json.dump(config_4x(cfg_dict, family), f, indent=2)
    write_gguf(os.path.join(d, "model.gguf"), family, arch, cfg, model, tokens, merges)

    gen = np.random.default_rng(seed + 1)
    ids = [int(x) for x in gen.integers(1, cfg.vocab_size, N_CONTENT)]
    head_dim = getattr(cfg, "head_dim", None) or D // HEADS
    soft = torch.tensor(gen.normal(0, 1.0, (P, D)), dtype=torch.float64)
    keys = torch.tensor(gen.normal(0, 1.0, (LAYERS, KV_HEADS, P, head_dim)), dtype=torch.float64)
    values = torch.tensor(gen.normal(0, 1.0, (LAYERS, KV_HEADS, P, head_dim)), dtype=torch.float64)
    # The prefixes as the CLI reads them (float32, and the references use those float32 values).
    soft = soft.to(torch.float32).to(torch.float64)
    keys = keys.to(torch.float32).to(torch.float64)
    values = values.to(torch.float32).to(torch.float64)
    np.save(os.path.join(d, "soft_prompt.npy"), soft.numpy().astype(np.float32))
    np.savez(os.path.join(d, "prefix_kv.npz"), keys=keys.numpy().astype(np.float32),
             values=values.numpy().astype(np.float32))

    refs = references(model, cfg, ids, soft, keys, values)
    arrays = {"token_ids": np.array(ids, dtype=np.int64)}
    for case, (attn, logits) in refs.items():
        for l, a in enumerate(attn):
            arrays[f"{case}_attn_L{l}"] = a.astype(np.float32)
        arrays[f"{case}_logits_last"] = logits.astype(np.float32)
    gaps = {}
    for feat, how in features.items():
        attn, logits = ignored(name, model, cfg, feat, how, ids)
        gap = max(float(np.abs(a - b).max()) for a, b in zip(attn, refs["none"][0]))
        gaps[feat] = gap
        for l, a in enumerate(attn):
            arrays[f"ignored_{feat}_none_attn_L{l}"] = a.astype(np.float32)
        arrays[f"ignored_{feat}_none_logits_last"] = logits.astype(np.float32)
    np.savez_compressed(os.path.join(d, "reference.npz"), **arrays)
    meta = {
        "variant": name, "family": family, "gguf_arch": arch, "d_model": D, "layers": LAYERS,
        "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": head_dim, "vocab": cfg.vocab_size,
        "n_content": N_CONTENT, "prefix_len": P, "token_ids": ids,
        "features_ignored": {k: {"how": v, "max_attention_gap": gaps[k]} for k, v in features.items()},
        "made_by": "scripts/make_conformance.py", "torch": torch.__version__,
        "transformers": transformers.__version__, "gguf": "0.19.0", "numpy": np.__version__,
    }
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(name, "features ignored, max attention gap:", gaps, file=sys.stderr)


GEMMA3_PROMPT = "The capital of France is Paris. 2 + 2 = 4, and émojis 🦀 too."
GEMMA3_P = 2
GEMMA3_TOP = 64


def make_gemma3_real(path):
    """Reference numbers for the real Gemma 3 270M GGUF (.ci/fetch-gemma3.sh), from transformers
    loading the same file (`gguf_file=`, dequantized to float32, then run in float64), into
    tests/fixtures/gemma3_270m/: the ids (llama.cpp's tokenizer with BOS), soft_prompt.npy,
    prefix_kv.npz, and reference.npz with `{none,soft,kv}_attn_L{l}` for every layer and the
    logits of the reference's top GEMMA3_TOP ids (`logits_top_ids`, `{case}_logits_top`)."""
    from llama_cpp import Llama
    d = os.path.join(OUT, "..", "gemma3_270m")
    os.makedirs(d, exist_ok=True)
    vocab = Llama(model_path=path, vocab_only=True, verbose=False)
    ids = vocab.tokenize(GEMMA3_PROMPT.encode(), add_bos=True, special=False)
    del vocab
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32,
        attn_implementation="eager")
    model = model.to(torch.float64).eval()
    cfg = model.config
    gen = np.random.default_rng(SEED)
    L, kvh, hd = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    soft = torch.tensor(gen.normal(0, 1.0, (GEMMA3_P, cfg.hidden_size)), dtype=torch.float32)
    keys = torch.tensor(gen.normal(0, 1.0, (L, kvh, GEMMA3_P, hd)), dtype=torch.float32)
    values = torch.tensor(gen.normal(0, 1.0, (L, kvh, GEMMA3_P, hd)), dtype=torch.float32)
    np.save(os.path.join(d, "soft_prompt.npy"), soft.numpy())
    np.savez(os.path.join(d, "prefix_kv.npz"), keys=keys.numpy(), values=values.numpy())
    refs = references(model, cfg, ids, soft.double(), keys.double(), values.double())
    top = np.argsort(-refs["none"][1])[:GEMMA3_TOP]
    arrays = {"token_ids": np.array(ids, dtype=np.int64), "logits_top_ids": top.astype(np.int64)}
    for case, (attn, logits) in refs.items():
        for l, a in enumerate(attn):
            arrays[f"{case}_attn_L{l}"] = a.astype(np.float32)
        arrays[f"{case}_logits_top"] = logits[top].astype(np.float32)
    np.savez_compressed(os.path.join(d, "reference.npz"), **arrays)
    meta = {"file": os.path.basename(path), "prompt": GEMMA3_PROMPT, "token_ids": ids,
            "bos": True, "prefix_len": GEMMA3_P, "layers": L, "made_by": "scripts/make_conformance.py --gemma3-real",
            "torch": torch.__version__, "transformers": transformers.__version__}
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
    print("gemma3 270M references written", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--gemma3-real", default="",
                    help="the Gemma 3 270M GGUF from .ci/fetch-gemma3.sh: write its references only")
    args = ap.parse_args()
    if args.gemma3_real:
        make_gemma3_real(args.gemma3_real)
        return
    names = [n for n in VARIANTS if not args.only or n in args.only.split(",")]
    os.makedirs(OUT, exist_ok=True)
    for n in names:
        make(n)


if __name__ == "__main__":
    main()
