//! Gemma 3 text (`gemma3_text`; GGUF `gemma3`): the decoder with embeddings scaled by
//! `sqrt(hidden_size)`, `(1 + w)` RMSNorm (the GGUF converter stores `1 + w`), norms before and after
//! attention and the MLP, GeGLU (`gelu_pytorch_tanh`), q/k RMSNorm per head, queries scaled by
//! `query_pre_attn_scalar^-1/2`, and local sliding-window layers (`layer_types`, or every layer but
//! each `sliding_window_pattern`-th) with their own RoPE base (`rope_local_base_freq`; in 5.x
//! `rope_parameters.sliding_attention`). Runs longer than the window are refused, not masked.
//! Reference: transformers `models/gemma3/modeling_gemma3.py`; llama.cpp `convert_hf_to_gguf.py`
//! (`Gemma3Model`) and its gemma3 graph (local base 10000, pattern 6).

use super::{Family, GgufKeys, GgufTensors, HfDefaults, HfKeys};
use crate::error::{Error, Result};
use crate::model::llama::{Activation, LlamaConfig, SlidingLayers};
use serde_json::Value;

pub struct Gemma3;

/// transformers `Gemma3TextConfig` defaults.
pub const HF_DEFAULTS: HfDefaults = HfDefaults {
    rms_norm_eps: 1e-6,
    rope_theta: 1_000_000.0,
    tie_word_embeddings: true,
    head_dim: Some(256),
    num_key_value_heads: Some(4),
    act_key: "hidden_activation",
    attention_bias: true,
    mlp_bias: false,
};

/// The RoPE bases transformers defaults to: global layers, local (sliding) layers.
const DEFAULT_THETA: (f64, f64) = (1_000_000.0, 10_000.0);

/// Gemma's features, the same from either format.
fn gemma_features(cfg: &mut LlamaConfig) {
    cfg.qk_norm = true;
    cfg.sandwich_norms = true;
    cfg.embed_scale = Some((cfg.hidden_size as f64).sqrt());
}

impl Family for Gemma3 {
    fn name(&self) -> &'static str {
        "gemma3_text"
    }
    fn hf_model_types(&self) -> &'static [&'static str] {
        &["gemma3_text"]
    }
    fn gguf_archs(&self) -> &'static [&'static str] {
        &["gemma3"]
    }
    fn gguf_norm_shift(&self) -> f32 {
        1.0
    }

    fn from_hf(&self, keys: &mut HfKeys) -> Result<LlamaConfig> {
        let path = keys.path().to_path_buf();
        // RoPE, both spellings: 4.x rope_theta / rope_local_base_freq / rope_scaling (global layers
        // only); 5.x rope_parameters keyed by layer type.
        let params = keys.take("rope_parameters");
        let scaling4 = keys.take("rope_scaling");
        let theta4 = keys.take_f64("rope_theta")?;
        let local4 = keys.take_f64("rope_local_base_freq")?;
        let max_pos = keys.f64("max_position_embeddings")?;
        let (global, local) = match params {
            Some(p) => {
                if let Some(s) = scaling4 {
                    return Err(Error::unsupported(
                        &path,
                        "config key 'rope_scaling' next to 'rope_parameters'",
                        s.to_string(),
                        "one of them",
                    ));
                }
                let obj = p.as_object().ok_or_else(|| {
                    Error::format(
                        &path,
                        "config key 'rope_parameters'",
                        "an object",
                        p.to_string(),
                    )
                })?;
                for k in obj.keys() {
                    if k != "full_attention" && k != "sliding_attention" {
                        return Err(Error::unsupported(
                            &path,
                            format!("config key 'rope_parameters.{k}'"),
                            obj[k].to_string(),
                            "full_attention, sliding_attention (per layer type)",
                        ));
                    }
                }
                let one = |k: &str, theta: f64| {
                    let field = format!("rope_parameters.{k}");
                    super::rope_from_dict(
                        &path,
                        obj.get(k)
                            .filter(|v| !v.is_null())
                            .map(|v| (field.as_str(), v)),
                        theta,
                        None,
                        max_pos,
                        None,
                    )
                };
                (
                    one("full_attention", theta4.unwrap_or(DEFAULT_THETA.0))?,
                    one("sliding_attention", local4.unwrap_or(DEFAULT_THETA.1))?,
                )
            }
            None => (
                super::rope_from_dict(
                    &path,
                    scaling4.as_ref().map(|v| ("rope_scaling", v)),
                    theta4.unwrap_or(DEFAULT_THETA.0),
                    None,
                    max_pos,
                    None,
                )?,
                (local4.unwrap_or(DEFAULT_THETA.1), None, 1.0),
            ),
        };
        let mut cfg = super::hf_common(self.name(), keys, &HF_DEFAULTS)?;
        if global.2 != 1.0 || local.2 != 1.0 || cfg.partial_rotary_factor != 1.0 {
            return Err(Error::unsupported(
                &path,
                "config key 'partial_rotary_factor'",
                format!("{} / {}", global.2, local.2),
                "1 (Gemma 3 rotates whole heads)",
            ));
        }
        (cfg.rope_theta, cfg.rope_scaling) = (global.0, global.1);
        cfg.sliding_rope = Some((local.0, local.1));
        gemma_features(&mut cfg);
        cfg.norm_weight_offset = 1.0;
        let qpas = keys.f64("query_pre_attn_scalar")?.unwrap_or(256.0);
        cfg.query_scale = Some(qpas.powf(-0.5));
        cfg.attention_bias = keys.bool("attention_bias")?.unwrap_or(false);
        cfg.final_logit_softcapping = keys.f64("final_logit_softcapping")?;
        keys.only("attn_logit_softcapping", &[], "null")?;
        keys.only(
            "use_bidirectional_attention",
            &[Value::Bool(false)],
            "false",
        )?;
        cfg.sliding_window = if keys.has("sliding_window") {
            keys.usize("sliding_window")?
        } else {
            Some(4096)
        };
        let pattern = match keys.usize("sliding_window_pattern")? {
            Some(p) => Some(p),
            None => keys.usize("_sliding_window_pattern")?,
        }
        .unwrap_or(6);
        let n = cfg.num_hidden_layers;
        cfg.sliding_layers = match super::hf_layer_types(keys, n)? {
            Some(v) => SlidingLayers::Listed(v),
            None => SlidingLayers::AllButEvery(pattern),
        };
        Ok(cfg)
    }

    fn from_gguf(&self, keys: &mut GgufKeys, tensors: &GgufTensors) -> Result<LlamaConfig> {
        let mut cfg = super::gguf_common(self.name(), keys, tensors, 1e-6, DEFAULT_THETA.0)?;
        super::whole_head_rope(keys.path(), &cfg)?;
        gemma_features(&mut cfg);
        cfg.act = Activation::GeluTanh;
        // llama.cpp: the 27B (62 layers) scales by (d / heads)^-1/2, the others by head_dim^-1/2;
        // both are query_pre_attn_scalar^-1/2 of the published configs.
        let n = cfg.num_hidden_layers;
        cfg.query_scale = Some(if n == 62 {
            ((cfg.hidden_size / cfg.num_attention_heads) as f64).powf(-0.5)
        } else {
            (cfg.head_dim() as f64).powf(-0.5)
        });
        cfg.attention_bias = tensors.shapes.contains_key("blk.0.attn_q.bias");
        cfg.sliding_window = keys.usize("attention.sliding_window")?;
        cfg.sliding_layers = keys
            .layer_pattern("attention.sliding_window_pattern", n)?
            .unwrap_or(SlidingLayers::AllButEvery(6));
        let local = keys.f64("rope.freq_base_swa")?.unwrap_or(DEFAULT_THETA.1);
        cfg.sliding_rope = Some((local, None));
        Ok(cfg)
    }
}
