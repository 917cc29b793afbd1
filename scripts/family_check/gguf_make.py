# By-hand check of every family against transformers (not CI; see scripts/family_check/README.md).
# Pinned: torch 2.15.0, transformers 5.23.0, numpy 2.5.5, gguf 0.19.0.
import os
OUT = os.environ.get("OUT", "/tmp/family_check")
import json, math, sys, numpy as np, gguf
from safetensors.numpy import load_file
def permute(w, n_head):
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
NAMES = {"input_layernorm":"attn_norm","self_attn.q_proj":"attn_q","self_attn.k_proj":"attn_k","self_attn.v_proj":"attn_v",
 "self_attn.qkv_proj":"attn_qkv","self_attn.o_proj":"attn_output","self_attn.q_norm":"attn_q_norm","self_attn.k_norm":"attn_k_norm",
 "pre_feedforward_layernorm":"ffn_norm","post_feedforward_layernorm":"post_ffw_norm","mlp.gate_proj":"ffn_gate","mlp.up_proj":"ffn_up",
 "mlp.gate_up_proj":"ffn_up","mlp.down_proj":"ffn_down"}
def gname(n, sandwich):
    if n == "model.embed_tokens.weight": return "token_embd.weight"
    if n == "model.norm.weight": return "output_norm.weight"
    if n == "lm_head.weight": return "output.weight"
    _, _, i, rest = n.split(".", 3)
    stem, kind = rest.rsplit(".", 1)
    if stem == "post_attention_layernorm": t = "post_attention_norm" if sandwich else "ffn_norm"
    else: t = NAMES[stem]
    return f"blk.{i}.{t}.{kind}"
for name in sys.argv[1:]:
    d = f"{OUT}/{name}"; c = json.load(open(f"{d}/config.json")); W = load_file(f"{d}/model.safetensors")
    mt = c["model_type"]; arch = {"llama":"llama","mistral":"llama","qwen2":"qwen2","qwen3":"qwen3","gemma3_text":"gemma3","phi3":"phi3"}[mt]
    w = gguf.GGUFWriter(f"{OUT}/{name}.gguf", arch)
    h, kv = c["num_attention_heads"], c["num_key_value_heads"]; hd = c.get("head_dim") or c["hidden_size"] // h
    w.add_block_count(c["num_hidden_layers"]); w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"]); w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(h); w.add_head_count_kv(kv); w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_key_length(hd); w.add_value_length(hd); w.add_vocab_size(c["vocab_size"])
    rp = c["rope_parameters"]
    if arch == "gemma3":
        full = rp["full_attention"]; w.add_rope_freq_base(full["rope_theta"])
        if full["rope_type"] == "linear": w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR); w.add_rope_scaling_factor(full["factor"])
        w.add_sliding_window(c["sliding_window"])
        w.add_array(f"{arch}.attention.sliding_window_pattern", [t == "sliding_attention" for t in c["layer_types"]])
    else:
        w.add_rope_freq_base(rp["rope_theta"])
        if "partial_rotary_factor" in rp: w.add_rope_dimension_count(int(hd * rp["partial_rotary_factor"]))
        else: w.add_rope_dimension_count(hd)
        if rp["rope_type"] == "linear": w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR); w.add_rope_scaling_factor(rp["factor"])
        if rp["rope_type"] == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN); w.add_rope_scaling_factor(rp["factor"])
            w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
        if rp["rope_type"] == "llama3":
            base, dim = rp["rope_theta"], hd; fac = rp["factor"]; lo, hi, old = rp["low_freq_factor"], rp["high_freq_factor"], rp["original_max_position_embeddings"]
            freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)); out = []
            for f in freqs:
                wl = 2 * math.pi / f
                if wl < old / hi: out.append(1)
                elif wl > old / lo: out.append(fac)
                else:
                    s = (old / wl - lo) / (hi - lo); out.append(1 / ((1 - s) / fac + s))
            w.add_tensor("rope_freqs.weight", np.array(out, dtype=np.float32))
        if c.get("sliding_window") and mt in ("mistral", "phi3"): w.add_sliding_window(c["sliding_window"])
    V = c["vocab_size"]
    w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("default"); w.add_token_list(["a", "b", "ab"] + [f"t{i}" for i in range(3, V)])
    w.add_token_types([1] * V); w.add_token_merges(["a b"])
    for n, t in sorted(W.items()):
        t = t.astype(np.float32)
        if arch == "llama" and (".q_proj." in n): t = permute(t, h)
        if arch == "llama" and (".k_proj." in n): t = permute(t, kv)
        if arch == "gemma3" and n.endswith("norm.weight"): t = t + 1
        w.add_tensor(gname(n, arch == "gemma3"), t)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    print(name, "written")
