//! Qwen3 (dense): the Llama decoder with RMSNorm over each head of q and k before RoPE
//! (`q_norm`, `k_norm`), optional q/k/v/o biases (`attention_bias`), and Qwen2's optional window.
//! GGUF architecture `qwen3`, rows in Hugging Face order. Reference: transformers `models/qwen3/`.

use super::{Family, GgufKeys, GgufTensors, HfDefaults, HfKeys};
use crate::error::Result;
use crate::model::llama::LlamaConfig;

pub struct Qwen3;

/// transformers `Qwen3Config` defaults (note the 128-wide heads).
pub const HF_DEFAULTS: HfDefaults = HfDefaults {
    rms_norm_eps: 1e-6,
    rope_theta: 10_000.0,
    tie_word_embeddings: false,
    head_dim: Some(128),
    num_key_value_heads: Some(32),
    act_key: "hidden_act",
    attention_bias: true,
    mlp_bias: false,
};

impl Family for Qwen3 {
    fn name(&self) -> &'static str {
        "qwen3"
    }
    fn hf_model_types(&self) -> &'static [&'static str] {
        &["qwen3"]
    }
    fn gguf_archs(&self) -> &'static [&'static str] {
        &["qwen3"]
    }

    fn from_hf(&self, keys: &mut HfKeys) -> Result<LlamaConfig> {
        let mut cfg = super::hf_common(self.name(), keys, &HF_DEFAULTS)?;
        super::whole_head_rope(keys.path(), &cfg)?;
        cfg.qk_norm = true;
        cfg.attention_bias = keys.bool("attention_bias")?.unwrap_or(false);
        super::qwen_window(keys, &mut cfg)?;
        Ok(cfg)
    }

    fn from_gguf(&self, keys: &mut GgufKeys, tensors: &GgufTensors) -> Result<LlamaConfig> {
        let mut cfg = super::gguf_common(self.name(), keys, tensors, 1e-6, 10_000.0)?;
        super::whole_head_rope(keys.path(), &cfg)?;
        cfg.qk_norm = true;
        cfg.attention_bias = tensors.shapes.contains_key("blk.0.attn_q.bias");
        cfg.sliding_window = keys.usize("attention.sliding_window")?;
        Ok(cfg)
    }
}
