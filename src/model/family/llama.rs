//! Llama 1/2/3/3.1/3.2 (and SmolLM): the plain decoder, optional q/k/v/o biases (`attention_bias`)
//! and MLP biases (`mlp_bias`), any supported RoPE (Llama 3.1/3.2 use `llama3` scaling, written in
//! GGUF as the `rope_freqs.weight` tensor). Reference: transformers `models/llama/`.

use super::{Family, GgufKeys, GgufTensors, HfDefaults, HfKeys};
use crate::error::Result;
use crate::model::llama::LlamaConfig;

pub struct Llama;

/// transformers `LlamaConfig` defaults.
pub const HF_DEFAULTS: HfDefaults = HfDefaults {
    rms_norm_eps: 1e-6,
    rope_theta: 10_000.0,
    tie_word_embeddings: false,
    head_dim: None,
    num_key_value_heads: None,
    act_key: "hidden_act",
    attention_bias: true,
    mlp_bias: true,
};

impl Family for Llama {
    fn name(&self) -> &'static str {
        "llama"
    }
    fn hf_model_types(&self) -> &'static [&'static str] {
        &["llama", "smollm", "smollm2"]
    }
    fn gguf_archs(&self) -> &'static [&'static str] {
        &["llama"]
    }
    fn gguf_permutes_qk(&self) -> bool {
        true
    }

    fn from_hf(&self, keys: &mut HfKeys) -> Result<LlamaConfig> {
        let mut cfg = super::hf_common(self.name(), keys, &HF_DEFAULTS)?;
        cfg.attention_bias = keys.bool("attention_bias")?.unwrap_or(false);
        cfg.mlp_bias = keys.bool("mlp_bias")?.unwrap_or(false);
        super::whole_head_rope(keys.path(), &cfg)?;
        Ok(cfg)
    }

    fn from_gguf(&self, keys: &mut GgufKeys, tensors: &GgufTensors) -> Result<LlamaConfig> {
        let mut cfg = super::gguf_common(self.name(), keys, tensors, 1e-5, 10_000.0)?;
        super::whole_head_rope(keys.path(), &cfg)?;
        // Mistral converted by llama.cpp is architecture `llama`; a window it states is honoured.
        cfg.sliding_window = keys.usize("attention.sliding_window")?;
        cfg.attention_bias = tensors.shapes.contains_key("blk.0.attn_output.bias");
        cfg.qkv_bias = !cfg.attention_bias && tensors.shapes.contains_key("blk.0.attn_q.bias");
        cfg.mlp_bias = tensors.shapes.contains_key("blk.0.ffn_down.bias");
        Ok(cfg)
    }
}
