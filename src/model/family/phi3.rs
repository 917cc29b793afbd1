//! Phi-3 / Phi-3.5 / Phi-4-mini: the Llama decoder with fused `qkv_proj` (rows q, k, v) and
//! `gate_up_proj` (rows gate, up), partial rotary embeddings (`partial_rotary_factor`), an optional
//! sliding window (refused when exceeded). `longrope` scaling is refused by name. GGUF architecture
//! `phi3` (`attn_qkv`, and `ffn_up` holding gate and up). Reference: transformers `models/phi3/`.

use super::{Family, GgufKeys, GgufTensors, HfDefaults, HfKeys};
use crate::error::Result;
use crate::model::llama::LlamaConfig;

pub struct Phi3;

/// transformers `Phi3Config` defaults.
pub const HF_DEFAULTS: HfDefaults = HfDefaults {
    rms_norm_eps: 1e-5,
    rope_theta: 10_000.0,
    tie_word_embeddings: false,
    head_dim: None,
    num_key_value_heads: None,
    act_key: "hidden_act",
    attention_bias: false,
    mlp_bias: false,
};

impl Family for Phi3 {
    fn name(&self) -> &'static str {
        "phi3"
    }
    fn hf_model_types(&self) -> &'static [&'static str] {
        &["phi3"]
    }
    fn gguf_archs(&self) -> &'static [&'static str] {
        &["phi3"]
    }

    fn from_hf(&self, keys: &mut HfKeys) -> Result<LlamaConfig> {
        let mut cfg = super::hf_common(self.name(), keys, &HF_DEFAULTS)?;
        cfg.fused_projections = true;
        cfg.sliding_window = keys.usize("sliding_window")?;
        Ok(cfg)
    }

    fn from_gguf(&self, keys: &mut GgufKeys, tensors: &GgufTensors) -> Result<LlamaConfig> {
        let mut cfg = super::gguf_common(self.name(), keys, tensors, 1e-5, 10_000.0)?;
        cfg.fused_projections = true;
        cfg.sliding_window = keys.usize("attention.sliding_window")?;
        Ok(cfg)
    }
}
