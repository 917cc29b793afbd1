//! Qwen2 / Qwen2.5: the Llama decoder with biases on q, k and v (not o), and an optional sliding
//! window on the layers from `max_window_layers` on (`use_sliding_window`). GGUF architecture `qwen2`,
//! rows in Hugging Face order. Reference: transformers `models/qwen2/`.

use super::{Family, GgufKeys, GgufTensors, HfDefaults, HfKeys};
use crate::error::Result;
use crate::model::llama::LlamaConfig;

pub struct Qwen2;

/// transformers `Qwen2Config` defaults.
pub const HF_DEFAULTS: HfDefaults = HfDefaults {
    rms_norm_eps: 1e-6,
    rope_theta: 10_000.0,
    tie_word_embeddings: false,
    head_dim: None,
    num_key_value_heads: Some(32),
    act_key: "hidden_act",
    attention_bias: false,
    mlp_bias: false,
};

impl Family for Qwen2 {
    fn name(&self) -> &'static str {
        "qwen2"
    }
    fn hf_model_types(&self) -> &'static [&'static str] {
        &["qwen2"]
    }
    fn gguf_archs(&self) -> &'static [&'static str] {
        &["qwen2"]
    }

    fn from_hf(&self, keys: &mut HfKeys) -> Result<LlamaConfig> {
        let mut cfg = super::hf_common(self.name(), keys, &HF_DEFAULTS)?;
        super::whole_head_rope(keys.path(), &cfg)?;
        cfg.qkv_bias = true;
        super::qwen_window(keys, &mut cfg)?;
        Ok(cfg)
    }

    fn from_gguf(&self, keys: &mut GgufKeys, tensors: &GgufTensors) -> Result<LlamaConfig> {
        let mut cfg = super::gguf_common(self.name(), keys, tensors, 1e-6, 10_000.0)?;
        super::whole_head_rope(keys.path(), &cfg)?;
        cfg.qkv_bias = true;
        cfg.sliding_window = keys.usize("attention.sliding_window")?;
        Ok(cfg)
    }
}
