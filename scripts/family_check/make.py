# By-hand check of every family against transformers (not CI; see scripts/family_check/README.md).
# Pinned: torch 2.15.0, transformers 5.23.0, numpy 2.5.5, gguf 0.19.0.
import os
OUT = os.environ.get("OUT", "/tmp/family_check")
import json, os, sys, numpy as np, torch, transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers
torch.manual_seed(0)
V = 96
def tok(dirn):
    vocab = {f"t{i}": i for i in range(V)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="t0")); t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.save(os.path.join(dirn, "tokenizer.json"))
common = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)
cases = {
 "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(rope_parameters={"rope_type":"default","rope_theta":100000.0}, tie_word_embeddings=False)),
 "llama_bias": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
 "llama3rope": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(rope_parameters={"rope_type":"llama3","rope_theta":500000.0,"factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64}, tie_word_embeddings=True)),
 "linear": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(rope_parameters={"rope_type":"linear","rope_theta":10000.0,"factor":4.0})),
 "yarn": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(rope_parameters={"rope_type":"yarn","rope_theta":10000.0,"factor":4.0,"original_max_position_embeddings":64})),
 "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(rope_parameters={"rope_type":"default","rope_theta":1000000.0}, tie_word_embeddings=True)),
 "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(head_dim=32, rope_parameters={"rope_type":"default","rope_theta":1000000.0})),
 "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(sliding_window=32)),
 "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=32, layer_types=["sliding_attention","full_attention","sliding_attention"], rope_parameters={"full_attention":{"rope_type":"linear","factor":2.0,"rope_theta":1000000.0},"sliding_attention":{"rope_type":"default","rope_theta":10000.0}})),
 "gemma3b": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=32, final_logit_softcapping=3.0, layer_types=["sliding_attention","full_attention","sliding_attention"], rope_parameters={"full_attention":{"rope_type":"linear","factor":2.0,"rope_theta":1000000.0},"sliding_attention":{"rope_type":"default","rope_theta":10000.0}})),
 "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(partial_rotary_factor=0.5, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
}
which = sys.argv[1:] or list(cases)
ids = [5, 17, 33, 2, 90, 41, 7, 64, 12, 3, 55]
for name in which:
    C, M, extra = cases[name]
    cfg = C(**{**common, **extra}); cfg._attn_implementation = "eager"
    m = M(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # norms away from 1, biases non-zero
    d = os.path.join(OUT, name); os.makedirs(d, exist_ok=True)
    m.save_pretrained(d); tok(d)
    res = {}
    with torch.no_grad():
        o = m(input_ids=torch.tensor([ids]), output_attentions=True)
        for l, a in enumerate(o.attentions): res[f"pretrained_L{l}"] = a[0].numpy()
        res["logits_last_pretrained"] = o.logits[0, -1].numpy()
        soft = torch.randn(3, 64) * 0.5
        emb = m.get_input_embeddings()(torch.tensor([ids]))
        o = m(inputs_embeds=torch.cat([soft[None], emb], 1), output_attentions=True)
        for l, a in enumerate(o.attentions): res[f"with_prefix_L{l}"] = a[0, :, 3:].numpy()
        res["logits_last_prefixed"] = o.logits[0, -1].numpy()
    np.save(os.path.join(d, "soft.npy"), soft.numpy())
    np.savez(os.path.join(d, "ref.npz"), **res)
    print(name, "ok", json.load(open(os.path.join(d, "config.json"))).get("rope_parameters"))
