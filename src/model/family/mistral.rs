//! Mistral: the Llama decoder with a sliding window over every layer (`sliding_window`; `null` means
//! none, an absent key transformers' default 4096). Runs longer than the window are refused, not
//! masked. GGUF Mistral files are architecture `llama` ([`super::llama`]). Reference: transformers
//! `models/mistral/`.

use super::{Family, GgufKeys, GgufTensors, HfDefaults, HfKeys};
use crate::error::Result;
use crate::model::llama::LlamaConfig;

pub struct Mistral;

/// transformers `MistralConfig` defaults.
pub const HF_DEFAULTS: HfDefaults = HfDefaults {
    rms_norm_eps: 1e-6,
    rope_theta: 10_000.0,
    tie_word_embeddings: false,
    head_dim: None,
    num_key_value_heads: Some(8),
    act_key: "hidden_act",
    attention_bias: false,
    mlp_bias: false,
};

impl Family for Mistral {
    fn name(&self) -> &'static str {
        "mistral"
    }
    fn hf_model_types(&self) -> &'static [&'static str] {
        &["mistral"]
    }
    fn gguf_archs(&self) -> &'static [&'static str] {
        &[]
    }

    fn from_hf(&self, keys: &mut HfKeys) -> Result<LlamaConfig> {
        let mut cfg = super::hf_common(self.name(), keys, &HF_DEFAULTS)?;
        super::whole_head_rope(keys.path(), &cfg)?;
        cfg.sliding_window = if keys.has("sliding_window") {
            keys.usize("sliding_window")?
        } else {
            Some(4096)
        };
        Ok(cfg)
    }

    fn from_gguf(&self, keys: &mut GgufKeys, tensors: &GgufTensors) -> Result<LlamaConfig> {
        super::llama::Llama.from_gguf(keys, tensors)
    }
}
