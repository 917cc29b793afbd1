//! The decoder every RoPE family shares (LLaMA-style: pre-norm RMSNorm blocks, rotary embeddings,
//! gated MLP, grouped-query attention, tied or untied output), with the per-family features switched
//! on by the resolved [`LlamaConfig`]:
//! - q/k/v(/o) biases (Llama `attention_bias`, Qwen2) and MLP biases (`mlp_bias`);
//! - RMSNorm over each head of q and k before RoPE (Qwen3, Gemma 3);
//! - Gemma's `(1 + w)` RMSNorm, post-attention and pre/post-feedforward norms, embeddings scaled by
//!   `sqrt(d)`, GeGLU, `query_pre_attn_scalar`, a final logit soft cap;
//! - per-layer RoPE (Gemma 3's local layers have their own base) and sliding windows, which are
//!   refused when prefix + content exceed them (no windowed mask is applied);
//! - fused `qkv_proj` / `gate_up_proj` (Phi-3).
//!
//! Which family says what lives in [`crate::model::family`]; the maths is written once here and in
//! [`super::rope`]. Weights are held in Hugging Face layout (query/key rows in rotate-half order),
//! whichever file they came from: the GGUF loader undoes llama.cpp's row permutation.

use super::attention::concat_heads;
use super::rope::{Rope, RopeScaling, RopeTables};
use super::stepper::{ContentKv, Stepper};
use super::{Arch, LayerSel, ModelInfo, PrefixTensors, Run, Transformer};
use crate::error::{Error, Result};
use crate::prefix::Prefix;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use std::sync::Arc;

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Activation {
    /// SwiGLU: `silu(gate) * up`.
    #[default]
    Silu,
    /// GeGLU with the tanh approximation (`gelu_pytorch_tanh`, Gemma).
    GeluTanh,
    /// GeGLU with the exact erf GELU (`gelu`).
    GeluErf,
}

/// Which layers a sliding window applies to. Stated by rule, not per layer, so that a hostile layer
/// count sizes nothing before the file is checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SlidingLayers {
    /// Every layer (Mistral, Phi-3).
    #[default]
    All,
    /// Per layer (`layer_types`: `sliding_attention` is true).
    Listed(Vec<bool>),
    /// Every layer but each `p`-th (`(l + 1) % p != 0`): Gemma 3's `sliding_window_pattern`.
    AllButEvery(usize),
    /// Layers from this one on (Qwen's `max_window_layers`).
    From(usize),
}

/// The resolved hyper-parameters of one checkpoint: sizes, RoPE, and the features its family switches
/// on. Made by a family ([`crate::model::family`]) from a `config.json` (both transformers spellings)
/// or GGUF metadata; deserializing one goes through the same strict parser
/// ([`LlamaConfig::from_hf_json`]).
///
/// Serialized ([`LlamaConfig::to_hf_json`]) it is a `config.json` of its family that reads back to the
/// same config.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Registry name of the family ([`crate::model::family::REGISTRY`]).
    pub family: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    /// RoPE base of the full-attention layers (all layers unless [`Self::sliding_rope`] is set).
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// Fraction of each head rotated.
    pub partial_rotary_factor: f64,
    pub tie_word_embeddings: bool,
    /// Biases on q, k, v and o (Llama `attention_bias`).
    pub attention_bias: bool,
    /// Biases on gate, up and down.
    pub mlp_bias: bool,
    /// Keys each query may see, itself included (`kv_idx > q_idx - window`), on the windowed layers.
    pub sliding_window: Option<usize>,
    /// Which layers are windowed when [`Self::sliding_window`] is set.
    pub sliding_layers: SlidingLayers,
    /// RoPE of the windowed layers, when it differs (Gemma 3 `rope_local_base_freq`): base, scaling.
    pub sliding_rope: Option<(f64, Option<RopeScaling>)>,
    /// Biases on q, k, v but not o (Qwen2).
    pub qkv_bias: bool,
    /// RMSNorm over each head of q and k before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norms after attention and around the MLP (Gemma): `post_attention_layernorm` then normalizes
    /// the attention output and `pre_feedforward_layernorm` the MLP input.
    pub sandwich_norms: bool,
    /// Added to every stored RMSNorm weight: 1 for Gemma's `x * (1 + w)` as Hugging Face stores it,
    /// 0 otherwise (and for GGUF Gemma, whose converter stored `1 + w`).
    pub norm_weight_offset: f32,
    /// Content embeddings are multiplied by this (Gemma: `sqrt(hidden_size)`, in f32).
    pub embed_scale: Option<f64>,
    pub act: Activation,
    /// Query scale; `None`: `1 / sqrt(head_dim)`. Gemma: `query_pre_attn_scalar^-1/2`.
    pub query_scale: Option<f64>,
    /// `logits = c * tanh(logits / c)`.
    pub final_logit_softcapping: Option<f64>,
    /// Fused `qkv_proj` and `gate_up_proj` tensors (Phi-3).
    pub fused_projections: bool,
}

impl serde::Serialize for LlamaConfig {
    /// As a `config.json` ([`LlamaConfig::to_hf_json`]).
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_hf_json().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for LlamaConfig {
    /// Through the strict parser: a `config.json` value, refused on any key it does not implement.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        LlamaConfig::from_hf_json(&v, std::path::Path::new("config.json"))
            .map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

impl LlamaConfig {
    /// This config as a `config.json` of its family (transformers 4.x spelling; Gemma 3's RoPE in the
    /// 5.x per-layer-type form), such that [`LlamaConfig::from_hf_json`] gives it back. GGUF-only
    /// facts have no such spelling and are written so that reading them back is refused: the
    /// `rope_freqs.weight` factors (`rope_type` `gguf_rope_freqs`), and Gemma norms stored as `1 + w`
    /// (`norm_weight_offset`).
    pub fn to_hf_json(&self) -> serde_json::Value {
        use serde_json::{json, Value};
        let gemma = self.family == "gemma3_text";
        let mut v = json!({
            "model_type": self.family,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
        });
        let act = match self.act {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
            Activation::GeluErf => "gelu",
        };
        v[if gemma {
            "hidden_activation"
        } else {
            "hidden_act"
        }] = act.into();
        let dict = |theta: f64, s: &Option<RopeScaling>| -> Value {
            let mut d = match s {
                Some(s) => s.to_hf_json(),
                None => json!({"rope_type": "default"}),
            };
            d["rope_theta"] = theta.into();
            d
        };
        if gemma {
            let (lt, ls) = self
                .sliding_rope
                .clone()
                .unwrap_or((self.rope_theta, self.rope_scaling.clone()));
            v["rope_parameters"] = json!({
                "full_attention": dict(self.rope_theta, &self.rope_scaling),
                "sliding_attention": dict(lt, &ls),
            });
            v["query_pre_attn_scalar"] = (1.0 / (self.query_scale() * self.query_scale())).into();
            v["final_logit_softcapping"] = self.final_logit_softcapping.into();
            if self.norm_weight_offset != 1.0 {
                v["norm_weight_offset"] = self.norm_weight_offset.into();
            }
        } else {
            v["rope_theta"] = self.rope_theta.into();
            if let Some(s) = &self.rope_scaling {
                v["rope_scaling"] = s.to_hf_json();
            }
        }
        if self.partial_rotary_factor != 1.0 {
            v["partial_rotary_factor"] = self.partial_rotary_factor.into();
        }
        if self.attention_bias {
            v["attention_bias"] = true.into();
        }
        if self.mlp_bias {
            v["mlp_bias"] = true.into();
        }
        // An absent window is `null`: some families default an absent key to 4096. Llama has no
        // window key; a windowed llama (a Mistral GGUF is architecture `llama`) is a Mistral.
        if self.family == "llama" {
            if self.sliding_window.is_some() {
                v["model_type"] = "mistral".into();
                v["sliding_window"] = self.sliding_window.into();
            }
        } else {
            v["sliding_window"] = self.sliding_window.into();
        }
        if self.qkv_bias && self.family != "qwen2" {
            // No family but Qwen2 has q/k/v biases without an o bias: refused when read back.
            v["qkv_bias"] = true.into();
        }
        if self.family == "qwen2" || self.family == "qwen3" {
            v["use_sliding_window"] = self.sliding_window.is_some().into();
        }
        match &self.sliding_layers {
            SlidingLayers::All => {}
            SlidingLayers::Listed(l) => {
                v["layer_types"] = l
                    .iter()
                    .map(|&s| {
                        if s {
                            "sliding_attention"
                        } else {
                            "full_attention"
                        }
                    })
                    .collect::<Vec<_>>()
                    .into();
            }
            SlidingLayers::AllButEvery(p) => v["sliding_window_pattern"] = (*p).into(),
            SlidingLayers::From(f) => v["max_window_layers"] = (*f).into(),
        }
        if let Value::Object(m) = &mut v {
            for k in ["num_key_value_heads", "head_dim", "final_logit_softcapping"] {
                if m.get(k).is_some_and(Value::is_null) {
                    m.remove(k);
                }
            }
        }
        v
    }

    /// A config with every size zero and every feature off, for families to fill in.
    pub fn plain(family: &str) -> Self {
        LlamaConfig {
            family: family.to_string(),
            hidden_size: 0,
            intermediate_size: 0,
            num_hidden_layers: 0,
            num_attention_heads: 0,
            num_key_value_heads: None,
            head_dim: None,
            vocab_size: 0,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_scaling: None,
            partial_rotary_factor: 1.0,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            sliding_window: None,
            sliding_layers: SlidingLayers::All,
            sliding_rope: None,
            qkv_bias: false,
            qk_norm: false,
            sandwich_norms: false,
            norm_weight_offset: 0.0,
            embed_scale: None,
            act: Activation::Silu,
            query_scale: None,
            final_logit_softcapping: None,
            fused_projections: false,
        }
    }

    /// Parse a Hugging Face `config.json` (`path` names it in errors): the family by `model_type`,
    /// every key implemented or on the neutral list, else refused by name.
    pub fn from_hf_json(v: &serde_json::Value, path: &std::path::Path) -> Result<Self> {
        use crate::model::family;
        let model_type = v.get("model_type").and_then(|t| t.as_str()).unwrap_or("");
        let fam = family::by_model_type(model_type).ok_or_else(|| {
            Error::unsupported(
                path,
                "model_type",
                format!("'{model_type}'"),
                family::all_model_types(),
            )
        })?;
        let mut keys = family::HfKeys::new(path, v)?;
        let cfg = fam.from_hf(&mut keys)?;
        keys.finish()?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub fn n_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Dimensions of each head that RoPE rotates (transformers: `int(head_dim * factor)`).
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim() as f64 * self.partial_rotary_factor) as usize
    }

    /// Whether layer `l` is windowed.
    pub fn is_sliding(&self, l: usize) -> bool {
        self.sliding_window.is_some()
            && match &self.sliding_layers {
                SlidingLayers::All => true,
                SlidingLayers::Listed(v) => v.get(l).copied().unwrap_or(false),
                SlidingLayers::AllButEvery(p) => !l.wrapping_add(1).is_multiple_of(*p),
                SlidingLayers::From(first) => l >= *first,
            }
    }

    /// The RoPE of the full-attention layers.
    pub fn global_rope(&self) -> Rope {
        Rope {
            theta: self.rope_theta,
            scaling: self.rope_scaling.clone(),
            rotary_dim: self.rotary_dim(),
        }
    }

    /// The RoPE of layer `l`.
    pub fn rope(&self, l: usize) -> Rope {
        let (theta, scaling) = match &self.sliding_rope {
            Some((t, s)) if self.is_sliding(l) => (*t, s.clone()),
            _ => (self.rope_theta, self.rope_scaling.clone()),
        };
        Rope {
            theta,
            scaling,
            rotary_dim: self.rotary_dim(),
        }
    }

    /// The query scale.
    pub fn query_scale(&self) -> f64 {
        self.query_scale
            .unwrap_or(1.0 / (self.head_dim() as f64).sqrt())
    }

    /// The RoPE variant(s) in words, for `inspect`.
    pub fn describe_rope(&self) -> String {
        let hd = self.head_dim();
        let global = self.global_rope().describe(hd);
        match &self.sliding_rope {
            Some(_) => {
                let first_local = (0..self.num_hidden_layers).find(|&l| self.is_sliding(l));
                match first_local {
                    Some(l) => format!(
                        "global layers: {global}; sliding layers: {}",
                        self.rope(l).describe(hd)
                    ),
                    None => global,
                }
            }
            None => global,
        }
    }

    /// The sliding window in words, for `inspect`.
    pub fn describe_window(&self) -> String {
        match self.sliding_window {
            None => "none (full causal attention)".into(),
            Some(w) => {
                let n = (0..self.num_hidden_layers)
                    .filter(|&l| self.is_sliding(l))
                    .count();
                format!(
                    "{w} positions on {n} of {} layers (longer prefix + content is refused)",
                    self.num_hidden_layers
                )
            }
        }
    }

    /// Every tensor the model reads, in Hugging Face names, with its shape `(out, in)`.
    /// Loaders check a file against this before building the model, so a config that disagrees with
    /// the weights is reported by tensor name, and a tensor the file has beyond these is refused.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.hidden_size;
        let (h, kv, hd, f) = (
            self.num_attention_heads,
            self.n_kv_heads(),
            self.head_dim(),
            self.intermediate_size,
        );
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, d],
        )];
        for i in 0..self.num_hidden_layers {
            let b = format!("model.layers.{i}");
            let mut add = |name: &str, shape: Vec<usize>| v.push((format!("{b}.{name}"), shape));
            add("input_layernorm.weight", vec![d]);
            if self.fused_projections {
                add("self_attn.qkv_proj.weight", vec![(h + 2 * kv) * hd, d]);
            } else {
                add("self_attn.q_proj.weight", vec![h * hd, d]);
                add("self_attn.k_proj.weight", vec![kv * hd, d]);
                add("self_attn.v_proj.weight", vec![kv * hd, d]);
            }
            if self.attention_bias || self.qkv_bias {
                add("self_attn.q_proj.bias", vec![h * hd]);
                add("self_attn.k_proj.bias", vec![kv * hd]);
                add("self_attn.v_proj.bias", vec![kv * hd]);
            }
            if self.qk_norm {
                add("self_attn.q_norm.weight", vec![hd]);
                add("self_attn.k_norm.weight", vec![hd]);
            }
            add("self_attn.o_proj.weight", vec![d, h * hd]);
            if self.attention_bias {
                add("self_attn.o_proj.bias", vec![d]);
            }
            add("post_attention_layernorm.weight", vec![d]);
            if self.sandwich_norms {
                add("pre_feedforward_layernorm.weight", vec![d]);
                add("post_feedforward_layernorm.weight", vec![d]);
            }
            if self.fused_projections {
                add("mlp.gate_up_proj.weight", vec![2 * f, d]);
            } else {
                add("mlp.gate_proj.weight", vec![f, d]);
                add("mlp.up_proj.weight", vec![f, d]);
            }
            add("mlp.down_proj.weight", vec![d, f]);
            if self.mlp_bias {
                add("mlp.gate_proj.bias", vec![f]);
                add("mlp.up_proj.bias", vec![f]);
                add("mlp.down_proj.bias", vec![d]);
            }
        }
        v.push(("model.norm.weight".to_string(), vec![d]));
        if !self.tie_word_embeddings {
            v.push(("lm_head.weight".to_string(), vec![self.vocab_size, d]));
        }
        v
    }

    /// Refuse a layer count the file cannot hold (every layer has several tensors) before any
    /// per-layer list is built: a hostile `num_hidden_layers = 10^12` must not size an allocation.
    pub fn check_layers_against_file(
        &self,
        file: &std::path::Path,
        tensors_in_file: usize,
    ) -> Result<()> {
        if self.num_hidden_layers > tensors_in_file.max(1) {
            return Err(Error::format(
                file,
                "num_hidden_layers / block_count",
                format!(
                    "at most the {tensors_in_file} tensors the file holds (each layer has several)"
                ),
                self.num_hidden_layers.to_string(),
            ));
        }
        Ok(())
    }

    /// Whether a tensor holds RMSNorm weights (which get [`Self::norm_weight_offset`]).
    pub fn is_norm(name: &str) -> bool {
        name.ends_with("norm.weight")
    }

    /// Sizes that must agree with each other before any tensor is read.
    pub fn validate(&self, file: &std::path::Path) -> Result<()> {
        let h = self.num_attention_heads;
        let kv = self.n_kv_heads();
        let bad = |field: &str, expected: String, found: String| {
            Err(Error::format(file, field, expected, found))
        };
        if h == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 {
            return bad(
                "sizes",
                "non-zero heads, hidden size, layers, vocabulary".into(),
                format!(
                    "heads {h}, hidden size {}, layers {}, vocabulary {}",
                    self.hidden_size, self.num_hidden_layers, self.vocab_size
                ),
            );
        }
        if kv == 0 || !h.is_multiple_of(kv) {
            return bad(
                "num_key_value_heads",
                format!("a divisor of num_attention_heads = {h}"),
                kv.to_string(),
            );
        }
        let rd = self.rotary_dim();
        if rd == 0 || !rd.is_multiple_of(2) || rd > self.head_dim() {
            return bad(
                "head_dim",
                "an even number of rotated dimensions (RoPE rotates pairs), at most the head dimension"
                    .into(),
                format!(
                    "{rd} rotated of head dimension {} (partial_rotary_factor {})",
                    self.head_dim(),
                    self.partial_rotary_factor
                ),
            );
        }
        if let Some(RopeScaling::FreqFactors(f)) = &self.rope_scaling {
            if f.len() != rd / 2 {
                return bad(
                    "tensor 'rope_freqs.weight'",
                    format!("{} factors (rotated dimensions / 2)", rd / 2),
                    f.len().to_string(),
                );
            }
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window", "at least 1".into(), "0".into());
        }
        if let SlidingLayers::AllButEvery(0) = self.sliding_layers {
            return bad("sliding_window_pattern", "at least 1".into(), "0".into());
        }
        if let SlidingLayers::Listed(v) = &self.sliding_layers {
            if v.len() != self.num_hidden_layers {
                return bad(
                    "layer_types",
                    format!("{} entries", self.num_hidden_layers),
                    v.len().to_string(),
                );
            }
        }
        Ok(())
    }
}

/// A projection `x -> x W^T`: f32 weights stored transposed `(in, out)` for a plain matmul, or weights
/// kept in their GGUF blocks `(out, in)`.
///
/// A quantized weight is dequantized for each product and multiplied in f32. candle's `QMatMul`
/// instead quantizes the activations to Q8 (as llama.cpp does), which moved SmolLM2's final logits
/// by up to 4.8 and flipped the argmax of the fixtures' key/value-prefix run; dequantizing is exact
/// for these formats, so quantized mode gives the f32 mode's numbers at a third of its memory (one
/// weight at a time is f32), and on 2 cores it is also faster (the f32 product runs on OpenBLAS).
pub enum Linear {
    Dense(Tensor),
    Quant(Arc<QTensor>),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Tuning (a tracked input): the weight is a constant, so the product's backward gives the
        // input's gradient only (`matmul_train` skips a frozen operand's).
        let tracked = x.track_op();
        match self {
            Linear::Dense(w) if tracked => super::blas::matmul_train(x, w, false),
            Linear::Dense(w) => super::blas::matmul(x, w),
            Linear::Quant(q) if tracked => {
                super::blas::matmul_train(x, &q.dequantize(&Device::Cpu)?, true)
            }
            Linear::Quant(q) => super::blas::matmul_t(x, &q.dequantize(&Device::Cpu)?),
        }
    }

    fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        Ok(Linear::Dense(match self {
            Linear::Dense(w) => w.to_dtype(dtype)?,
            Linear::Quant(q) => t(q.dequantize(&Device::Cpu)?)?.to_dtype(dtype)?,
        }))
    }
}

/// RMSNorm over the last dimension: candle's fused kernel for the f32 inference path; its
/// composition (same formula, with a backward pass) for tracked inputs and other dtypes, since the
/// fused op has no backward and would silently cut the gradient.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    if x.track_op() || x.dtype() != DType::F32 {
        candle_nn::ops::rms_norm_slow(x, w, eps)
    } else {
        candle_nn::ops::rms_norm(x, w, eps)
    }
}

/// `x + y` for the residual stream: one pass where it can ([`super::fused::add`]), candle's add
/// otherwise (tracked tensors, other dtypes).
fn residual(x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    match super::fused::add(x, y)? {
        Some(s) => Ok(s),
        None => x + y,
    }
}

/// `x + b` for a bias `b` broadcast over rows.
fn add_bias(x: Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match b {
        Some(b) => x.broadcast_add(b),
        None => Ok(x),
    }
}

/// The q, k, v projections: one `(d, (H + 2 KV) hd)` matmul (the prefix path reads the k and v
/// column blocks as views in f32, so no weight is stored twice), or three projections.
enum Qkv {
    Fused(Linear),
    Split(Linear, Linear, Linear),
}

/// Gate and up: one `(d, 2 ffn)` projection, gate first, or two.
enum GateUp {
    Fused(Linear),
    Split(Linear, Linear),
}

struct Block {
    attn_norm: Tensor,
    qkv: Qkv,
    /// `((H + 2 KV) hd,)`: the q, k and v biases side by side.
    qkv_bias: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    w_o: Linear,
    o_bias: Option<Tensor>,
    /// Gemma: normalizes the attention output before the residual add.
    post_attn_norm: Option<Tensor>,
    /// The MLP's input norm (`post_attention_layernorm` in Llama, `pre_feedforward_layernorm` in Gemma).
    ffn_norm: Tensor,
    post_ffn_norm: Option<Tensor>,
    gate_up: GateUp,
    /// `(2 ffn,)`: gate and up biases.
    gate_up_bias: Option<Tensor>,
    w_down: Linear,
    down_bias: Option<Tensor>,
    /// Index into [`Llama::ropes`].
    rope: usize,
}

impl Block {
    /// `(t, d)` normed input -> q `(t, H hd)`, k, v `(t, KV hd)`, biases added.
    fn qkv(
        &self,
        xn: &Tensor,
        h: usize,
        kv: usize,
        hd: usize,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v) = match &self.qkv {
            Qkv::Fused(w) => {
                let qkv = add_bias(w.forward(xn)?, self.qkv_bias.as_ref())?;
                return Ok((
                    qkv.narrow(1, 0, h * hd)?,
                    qkv.narrow(1, h * hd, kv * hd)?,
                    qkv.narrow(1, (h + kv) * hd, kv * hd)?,
                ));
            }
            Qkv::Split(q, k, v) => (q.forward(xn)?, k.forward(xn)?, v.forward(xn)?),
        };
        match &self.qkv_bias {
            None => Ok((q, k, v)),
            Some(b) => Ok((
                q.broadcast_add(&b.narrow(0, 0, h * hd)?)?,
                k.broadcast_add(&b.narrow(0, h * hd, kv * hd)?)?,
                v.broadcast_add(&b.narrow(0, (h + kv) * hd, kv * hd)?)?,
            )),
        }
    }

    /// Keys and values only (for prefix hidden states), biases added.
    fn kv(
        &self,
        xn: &Tensor,
        h: usize,
        kv: usize,
        hd: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (k, v) = match &self.qkv {
            Qkv::Fused(Linear::Dense(w)) => (
                xn.matmul(&w.narrow(1, h * hd, kv * hd)?)?,
                xn.matmul(&w.narrow(1, (h + kv) * hd, kv * hd)?)?,
            ),
            Qkv::Fused(w) => {
                let all = w.forward(xn)?;
                (
                    all.narrow(1, h * hd, kv * hd)?,
                    all.narrow(1, (h + kv) * hd, kv * hd)?,
                )
            }
            Qkv::Split(_, k, v) => (k.forward(xn)?, v.forward(xn)?),
        };
        match &self.qkv_bias {
            None => Ok((k, v)),
            Some(b) => Ok((
                k.broadcast_add(&b.narrow(0, h * hd, kv * hd)?)?,
                v.broadcast_add(&b.narrow(0, (h + kv) * hd, kv * hd)?)?,
            )),
        }
    }

    fn mlp(&self, xn: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
        use super::profile::span;
        let (gate, up) = span("projections gate/up", || self.gate_up(xn))?;
        let h = span("mlp activation", || -> candle_core::Result<Tensor> {
            if let Activation::Silu = act {
                if let Some(h) = super::fused::silu_mul(&gate, &up)? {
                    return Ok(h);
                }
            }
            let gate = match act {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gate.gelu()?,
                Activation::GeluErf => gate.gelu_erf()?,
            };
            gate * up
        })?;
        span("projection down", || {
            add_bias(self.w_down.forward(&h)?, self.down_bias.as_ref())
        })
    }

    /// The gate and up projections (biases added), as views of one product when fused.
    fn gate_up(&self, xn: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok(match &self.gate_up {
            GateUp::Fused(w) => {
                let gu = add_bias(w.forward(xn)?, self.gate_up_bias.as_ref())?;
                let ffn = gu.dim(1)? / 2;
                (gu.narrow(1, 0, ffn)?, gu.narrow(1, ffn, ffn)?)
            }
            GateUp::Split(g, u) => {
                let (g, u) = (g.forward(xn)?, u.forward(xn)?);
                match &self.gate_up_bias {
                    None => (g, u),
                    Some(b) => {
                        let ffn = g.dim(1)?;
                        (
                            g.broadcast_add(&b.narrow(0, 0, ffn)?)?,
                            u.broadcast_add(&b.narrow(0, ffn, ffn)?)?,
                        )
                    }
                }
            }
        })
    }

    fn attn_out(&self, z: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
        let a = add_bias(self.w_o.forward(&concat_heads(z)?)?, self.o_bias.as_ref())?;
        match &self.post_attn_norm {
            Some(w) => rms_norm(&a, w, eps),
            None => Ok(a),
        }
    }
}

pub struct Llama {
    cfg: LlamaConfig,
    info: ModelInfo,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    /// `(vocab, d)`: the embedding itself when tied (used through a transposed view, not copied);
    /// quantized in quantized mode.
    lm_head: Head,
    /// The distinct RoPEs of the layers, with their cos/sin caches.
    ropes: Vec<RopeTables>,
}

enum Head {
    Dense(Tensor),
    Quant(QMatMul),
}

/// `(out, in)` weight -> contiguous `(in, out)` so that `x @ w` is a plain matmul.
fn t(w: Tensor) -> candle_core::Result<Tensor> {
    w.t()?.contiguous()
}

/// The per-layer tensors of one block, before assembly: projections as [`Linear`], everything else f32.
struct Parts {
    q: Option<Linear>,
    k: Option<Linear>,
    v: Option<Linear>,
    qkv: Option<Linear>,
    o: Linear,
    gate: Option<Linear>,
    up: Option<Linear>,
    gate_up: Option<Linear>,
    down: Linear,
}

impl Llama {
    /// Load from a `VarBuilder` with Hugging Face tensor names (`model.layers.{i}.self_attn.q_proj.weight`, ...),
    /// every weight f32. `source` and `dtype` describe where the weights came from for `inspect`.
    pub fn load(
        vb: VarBuilder,
        cfg: &LlamaConfig,
        source: &str,
        dtype: &str,
    ) -> candle_core::Result<Self> {
        let shapes: std::collections::HashMap<String, Vec<usize>> =
            cfg.expected_tensors().into_iter().collect();
        let mut n_params = 0usize;
        let mut get = |name: &str| -> candle_core::Result<Tensor> {
            let shape = shapes
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no tensor '{name}' expected")))?;
            let w = vb.get(shape.as_slice(), name)?.to_dtype(DType::F32)?;
            n_params += w.elem_count();
            Ok(w)
        };
        Self::build(cfg, source, dtype, &mut get, &mut None::<fn(&str) -> _>)
            .map(|(m, n)| m.with_params(n + n_params))
    }

    /// Keep every 2-D projection quantized; norms, biases and the embedding table (a lookup) in f32.
    /// For checkpoints that would not fit in memory as f32, at the numbers of the f32 mode.
    /// `get_q` returns a weight by Hugging Face name, Q/K rows already in HF order.
    pub fn load_quantized(
        cfg: &LlamaConfig,
        mut get_q: impl FnMut(&str) -> crate::Result<QTensor>,
        mut get_f32: impl FnMut(&str) -> crate::Result<Tensor>,
        source: &str,
        dtype: &str,
    ) -> crate::Result<Self> {
        let mut n_params = 0usize;
        let mut f = |name: &str| -> candle_core::Result<Tensor> {
            let t = get_f32(name).map_err(|e| candle_core::Error::Msg(e.one_line()))?;
            n_params += t.elem_count();
            Ok(t)
        };
        let mut q = |name: &str| -> candle_core::Result<Arc<QTensor>> {
            let t = get_q(name).map_err(|e| candle_core::Error::Msg(e.one_line()))?;
            Ok(Arc::new(t))
        };
        let (m, nq) = Self::build(cfg, source, dtype, &mut f, &mut Some(&mut q))?;
        Ok(m.with_params(nq + n_params))
    }

    fn with_params(mut self, n: usize) -> Self {
        self.info.n_params = n;
        self
    }

    /// Assemble the model. `get` reads an f32 tensor by HF name; `get_q`, when given, reads the
    /// projections (and an untied head) quantized. Returns the model and the quantized parameter count.
    fn build(
        cfg: &LlamaConfig,
        source: &str,
        dtype: &str,
        get: &mut dyn FnMut(&str) -> candle_core::Result<Tensor>,
        get_q: &mut Option<impl FnMut(&str) -> candle_core::Result<Arc<QTensor>>>,
    ) -> candle_core::Result<(Self, usize)> {
        let (h, kv, hd) = (cfg.num_attention_heads, cfg.n_kv_heads(), cfg.head_dim());
        let off = cfg.norm_weight_offset;
        let mut nq = 0usize;
        let norm = |get: &mut dyn FnMut(&str) -> candle_core::Result<Tensor>,
                    name: &str|
         -> candle_core::Result<Tensor> {
            let w = get(name)?;
            if off != 0.0 {
                w.affine(1.0, off as f64)
            } else {
                Ok(w)
            }
        };
        // One projection: quantized as stored, or f32 transposed for a plain matmul.
        let mut proj = |get: &mut dyn FnMut(&str) -> candle_core::Result<Tensor>,
                        name: &str|
         -> candle_core::Result<Linear> {
            match get_q.as_mut() {
                Some(q) => {
                    let w = q(name)?;
                    nq += w.shape().elem_count();
                    Ok(Linear::Quant(w))
                }
                None => Ok(Linear::Dense(t(get(name)?)?)),
            }
        };
        let embed = get("model.embed_tokens.weight")?;
        let mut ropes: Vec<RopeTables> = Vec::new();
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let b = format!("model.layers.{i}");
            let n = |s: &str| format!("{b}.{s}");
            let parts = Parts {
                q: (!cfg.fused_projections)
                    .then(|| proj(get, &n("self_attn.q_proj.weight")))
                    .transpose()?,
                k: (!cfg.fused_projections)
                    .then(|| proj(get, &n("self_attn.k_proj.weight")))
                    .transpose()?,
                v: (!cfg.fused_projections)
                    .then(|| proj(get, &n("self_attn.v_proj.weight")))
                    .transpose()?,
                qkv: cfg
                    .fused_projections
                    .then(|| proj(get, &n("self_attn.qkv_proj.weight")))
                    .transpose()?,
                o: proj(get, &n("self_attn.o_proj.weight"))?,
                gate: (!cfg.fused_projections)
                    .then(|| proj(get, &n("mlp.gate_proj.weight")))
                    .transpose()?,
                up: (!cfg.fused_projections)
                    .then(|| proj(get, &n("mlp.up_proj.weight")))
                    .transpose()?,
                gate_up: cfg
                    .fused_projections
                    .then(|| proj(get, &n("mlp.gate_up_proj.weight")))
                    .transpose()?,
                down: proj(get, &n("mlp.down_proj.weight"))?,
            };
            let qkv = match parts {
                Parts { qkv: Some(w), .. } => Qkv::Fused(w),
                Parts {
                    q: Some(Linear::Dense(q)),
                    k: Some(Linear::Dense(k)),
                    v: Some(Linear::Dense(v)),
                    ..
                } => Qkv::Fused(Linear::Dense(Tensor::cat(&[&q, &k, &v], 1)?)),
                Parts {
                    q: Some(q),
                    k: Some(k),
                    v: Some(v),
                    ..
                } => Qkv::Split(q, k, v),
                _ => candle_core::bail!("internal: q/k/v projections of layer {i} missing"),
            };
            let gate_up = match (parts.gate_up, parts.gate, parts.up) {
                (Some(w), _, _) => GateUp::Fused(w),
                (None, Some(Linear::Dense(g)), Some(Linear::Dense(u))) => {
                    GateUp::Fused(Linear::Dense(Tensor::cat(&[&g, &u], 1)?))
                }
                (None, Some(g), Some(u)) => GateUp::Split(g, u),
                _ => candle_core::bail!("internal: gate/up projections of layer {i} missing"),
            };
            let qkv_bias = if cfg.attention_bias || cfg.qkv_bias {
                Some(Tensor::cat(
                    &[
                        &get(&n("self_attn.q_proj.bias"))?,
                        &get(&n("self_attn.k_proj.bias"))?,
                        &get(&n("self_attn.v_proj.bias"))?,
                    ],
                    0,
                )?)
            } else {
                None
            };
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(norm(get, &n("self_attn.q_norm.weight"))?),
                    Some(norm(get, &n("self_attn.k_norm.weight"))?),
                )
            } else {
                (None, None)
            };
            let o_bias = cfg
                .attention_bias
                .then(|| get(&n("self_attn.o_proj.bias")))
                .transpose()?;
            let attn_norm = norm(get, &n("input_layernorm.weight"))?;
            let post = norm(get, &n("post_attention_layernorm.weight"))?;
            let (post_attn_norm, ffn_norm, post_ffn_norm) = if cfg.sandwich_norms {
                (
                    Some(post),
                    norm(get, &n("pre_feedforward_layernorm.weight"))?,
                    Some(norm(get, &n("post_feedforward_layernorm.weight"))?),
                )
            } else {
                (None, post, None)
            };
            let (gate_up_bias, down_bias) = if cfg.mlp_bias {
                (
                    Some(Tensor::cat(
                        &[
                            &get(&n("mlp.gate_proj.bias"))?,
                            &get(&n("mlp.up_proj.bias"))?,
                        ],
                        0,
                    )?),
                    Some(get(&n("mlp.down_proj.bias"))?),
                )
            } else {
                (None, None)
            };
            let r = cfg.rope(i);
            let rope = match ropes.iter().position(|t| t.rope() == &r) {
                Some(k) => k,
                None => {
                    ropes.push(RopeTables::new(r));
                    ropes.len() - 1
                }
            };
            blocks.push(Block {
                attn_norm,
                qkv,
                qkv_bias,
                q_norm,
                k_norm,
                w_o: parts.o,
                o_bias,
                post_attn_norm,
                ffn_norm,
                post_ffn_norm,
                gate_up,
                gate_up_bias,
                w_down: parts.down,
                down_bias,
                rope,
            });
        }
        let final_norm = norm(get, "model.norm.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            // A tied head reads the f32 table the lookup needs anyway: no second copy, exact logits.
            Head::Dense(embed.clone())
        } else {
            match get_q.as_mut() {
                // One row of logits: candle's QMatMul (Q8 activations) keeps the big head quantized.
                Some(q) => {
                    let w = q("lm_head.weight")?;
                    nq += w.shape().elem_count();
                    Head::Quant(QMatMul::QTensor(w))
                }
                None => Head::Dense(get("lm_head.weight")?),
            }
        };
        let info = ModelInfo {
            arch: Arch::Llama,
            n_layers: cfg.num_hidden_layers,
            n_heads: h,
            n_kv_heads: kv,
            d_model: cfg.hidden_size,
            head_dim: hd,
            vocab_size: cfg.vocab_size,
            max_positions: None,
            n_params: 0,
            dtype: dtype.to_string(),
            source: source.to_string(),
        };
        Ok((
            Llama {
                cfg: cfg.clone(),
                info,
                embed,
                blocks,
                norm: final_norm,
                lm_head,
                ropes,
            },
            nq,
        ))
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// `(t, n*hd)` -> `(n, t, hd)`.
    fn heads(x: &Tensor, n: usize, hd: usize) -> candle_core::Result<Tensor> {
        let t = x.dim(0)?;
        x.reshape((t, n, hd))?.transpose(0, 1)?.contiguous()
    }

    fn eps(&self) -> f32 {
        self.cfg.rms_norm_eps as f32
    }

    /// Keys `(KV, t, hd)` of layer `l` at positions `start..`: per-head norm, then RoPE.
    fn finish_keys(&self, l: usize, k: &Tensor, start: usize) -> candle_core::Result<Tensor> {
        let b = &self.blocks[l];
        let k = match &b.k_norm {
            Some(w) => rms_norm(k, w, self.eps())?,
            None => k.clone(),
        };
        self.ropes[b.rope].apply(&k, start)
    }

    /// Refuse a run longer than a windowed layer's window: windowed attention is not implemented,
    /// and within the window it equals full causal attention.
    fn check_window(&self, positions: usize) -> Result<()> {
        if let Some(w) = self.cfg.sliding_window {
            let windowed = (0..self.cfg.num_hidden_layers).any(|l| self.cfg.is_sliding(l));
            if windowed && positions > w {
                return Err(Error::input(
                    format!("sliding_window = {w} ({})", self.cfg.family),
                    format!("prefix + content of at most {w} positions (attention past the window is not implemented)"),
                    format!("{positions} positions"),
                ));
            }
        }
        Ok(())
    }

    fn run(&self, ids: &[u32], prefix: Option<&Prefix>, sel: &LayerSel) -> Result<Run> {
        let positions = ids.len() + prefix.map_or(0, |p| p.len());
        super::stepper::on_compute_pool(self, positions, || {
            super::stepper::full_run(self, ids, prefix, sel)
        })
    }
}

impl Llama {
    /// The residual stream entering layer 0 for content `ids` behind a prefix of `p` positions, of
    /// which `soft` `(P, d)` (a soft prompt) enters the stream itself; returns the stream and the
    /// position of its first row. One body for the file prefix and the tuned (tracked) one.
    fn embed_with(&self, ids: &[u32], soft: Option<&Tensor>, p: usize) -> Result<(Tensor, usize)> {
        let n = ids.len();
        self.check_window(n + p)?;
        let ids_t = Tensor::from_slice(ids, n, &Device::Cpu)?;
        let mut content = self.embed.index_select(&ids_t, 0)?;
        if let Some(s) = self.cfg.embed_scale {
            // Gemma scales the looked-up rows only: a soft prompt is already in the residual stream.
            content = content.affine(s as f32 as f64, 0.0)?;
        }
        // The residual stream holds the soft prompt rows too; the other kinds enter per layer as
        // key/value columns, with the content at positions p..p+n.
        Ok(match soft {
            Some(s) => (Tensor::cat(&[s, &content], 0)?, 0),
            None => (content, p),
        })
    }

    /// Keys and values `(KV, P, hd)` of the paper's per-layer prefix rows `s` `(P, d)` at layer `l`:
    /// through the frozen input norm and k/v projections, keys rotated at their own positions 0..P.
    fn hidden_kv(&self, l: usize, s: &Tensor) -> Result<(Tensor, Tensor)> {
        let (kv, hd) = (self.info.n_kv_heads, self.info.head_dim);
        let b = &self.blocks[l];
        let sn = rms_norm(s, &b.attn_norm, self.eps())?;
        let (pk, pv) = b.kv(&sn, self.info.n_heads, kv, hd)?;
        let pk = self.finish_keys(l, &Self::heads(&pk, kv, hd)?, 0)?;
        Ok((pk, Self::heads(&pv, kv, hd)?))
    }

    /// A copy with every weight in `dtype` (quantized projections dequantized): float64 for the
    /// finite-difference gradient checks, where f32 rounding would swamp the differences.
    pub fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        let c = |t: &Tensor| t.to_dtype(dtype);
        let o = |t: &Option<Tensor>| t.as_ref().map(c).transpose();
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    attn_norm: c(&b.attn_norm)?,
                    qkv: match &b.qkv {
                        Qkv::Fused(w) => Qkv::Fused(w.to_dtype(dtype)?),
                        Qkv::Split(q, k, v) => {
                            Qkv::Split(q.to_dtype(dtype)?, k.to_dtype(dtype)?, v.to_dtype(dtype)?)
                        }
                    },
                    qkv_bias: o(&b.qkv_bias)?,
                    q_norm: o(&b.q_norm)?,
                    k_norm: o(&b.k_norm)?,
                    w_o: b.w_o.to_dtype(dtype)?,
                    o_bias: o(&b.o_bias)?,
                    post_attn_norm: o(&b.post_attn_norm)?,
                    ffn_norm: c(&b.ffn_norm)?,
                    post_ffn_norm: o(&b.post_ffn_norm)?,
                    gate_up: match &b.gate_up {
                        GateUp::Fused(w) => GateUp::Fused(w.to_dtype(dtype)?),
                        GateUp::Split(g, u) => {
                            GateUp::Split(g.to_dtype(dtype)?, u.to_dtype(dtype)?)
                        }
                    },
                    gate_up_bias: o(&b.gate_up_bias)?,
                    w_down: b.w_down.to_dtype(dtype)?,
                    down_bias: o(&b.down_bias)?,
                    rope: b.rope,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let embed = c(&self.embed)?;
        let lm_head = match &self.lm_head {
            Head::Dense(_) if self.cfg.tie_word_embeddings => Head::Dense(embed.clone()),
            Head::Dense(w) => Head::Dense(c(w)?),
            Head::Quant(QMatMul::QTensor(q)) => Head::Dense(c(&q.dequantize(&Device::Cpu)?)?),
            Head::Quant(_) => {
                candle_core::bail!("internal: a quantized head that is not a QTensor")
            }
        };
        Ok(Llama {
            cfg: self.cfg.clone(),
            info: ModelInfo {
                dtype: format!("{dtype:?}").to_lowercase(),
                ..self.info.clone()
            },
            embed,
            blocks,
            norm: c(&self.norm)?,
            lm_head,
            ropes: self
                .ropes
                .iter()
                .map(|r| RopeTables::new(r.rope().clone()))
                .collect(),
        })
    }
}

impl Stepper for Llama {
    fn embed_with(&self, ids: &[u32], soft: Option<&Tensor>, p: usize) -> Result<(Tensor, usize)> {
        Llama::embed_with(self, ids, soft, p)
    }

    fn layer_content(&self, l: usize, x: &Tensor, pos0: usize) -> Result<ContentKv> {
        let (h, kv, hd) = (self.info.n_heads, self.info.n_kv_heads, self.info.head_dim);
        let b = &self.blocks[l];
        use super::profile::span;
        let xn = span("norms", || rms_norm(x, &b.attn_norm, self.eps()))?;
        let (q, k, v) = span("projections qkv", || b.qkv(&xn, h, kv, hd))?;
        let (q, k, v) = span("heads split + rope", || -> candle_core::Result<_> {
            let q = Self::heads(&q, h, hd)?;
            let q = match &b.q_norm {
                Some(w) => rms_norm(&q, w, self.eps())?,
                None => q,
            };
            let q = self.ropes[b.rope].apply(&q, pos0)?;
            let k = self.finish_keys(l, &Self::heads(&k, kv, hd)?, pos0)?;
            let v = Self::heads(&v, kv, hd)?;
            Ok((q, k, v))
        })?;
        ContentKv::new(q, k, v, self.cfg.query_scale())
    }

    fn prefix_kv(&self, l: usize, prefix: Option<&Prefix>) -> Result<Option<(Tensor, Tensor)>> {
        let Some(pf) = prefix else { return Ok(None) };
        if let Some(s) = pf.hidden_layer(l)? {
            return Ok(Some(self.hidden_kv(l, &s)?));
        }
        Ok(pf.key_value_layer(l)?)
    }

    fn prefix_kv_t(
        &self,
        l: usize,
        prefix: Option<&PrefixTensors>,
    ) -> Result<Option<(Tensor, Tensor)>> {
        Ok(match prefix {
            Some(PrefixTensors::Hidden(all)) => Some(self.hidden_kv(l, &all.get(l)?)?),
            Some(PrefixTensors::KeyValue { keys, values }) => Some((keys.get(l)?, values.get(l)?)),
            _ => None,
        })
    }

    fn layer_finish(&self, l: usize, x: &Tensor, z: &Tensor) -> Result<Tensor> {
        use super::profile::span;
        let b = &self.blocks[l];
        let eps = self.eps();
        let a = span("projection out (+ head concat)", || b.attn_out(z, eps))?;
        let x = span("residual adds", || residual(x, &a))?;
        let xn = span("norms", || rms_norm(&x, &b.ffn_norm, eps))?;
        let m = b.mlp(&xn, self.cfg.act)?;
        let m = match &b.post_ffn_norm {
            Some(w) => span("norms", || rms_norm(&m, w, eps))?,
            None => m,
        };
        Ok(span("residual adds", || residual(&x, &m))?)
    }

    fn logits_last(&self, x: &Tensor) -> Result<Tensor> {
        let t_len = x.dim(0)?;
        Ok(self.logits_rows(&x.narrow(0, t_len - 1, 1)?)?.squeeze(0)?)
    }

    fn logits_rows(&self, x: &Tensor) -> Result<Tensor> {
        let last = rms_norm(x, &self.norm, self.eps())?;
        let logits = match &self.lm_head {
            Head::Dense(w) if last.track_op() => super::blas::matmul_train(&last, w, true)?,
            Head::Dense(w) => last.matmul(&w.t()?)?,
            // QMatMul has no backward: tuning multiplies by the dequantized head.
            Head::Quant(QMatMul::QTensor(q)) if last.track_op() => {
                super::blas::matmul_train(&last, &q.dequantize(&Device::Cpu)?, true)?
            }
            Head::Quant(q) => q.forward(&last)?,
        };
        Ok(match self.cfg.final_logit_softcapping {
            Some(c) => ((logits / c)?.tanh()? * c)?,
            None => logits,
        })
    }

    fn n_layers(&self) -> usize {
        self.blocks.len()
    }
}

impl Transformer for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(&self, ids: &[u32], prefix: Option<&Prefix>, layers: &LayerSel) -> Result<Run> {
        if let Some(pf) = prefix {
            pf.check(&self.info, std::path::Path::new("prefix"))?;
        }
        self.run(ids, prefix, layers)
    }

    fn pretrained(&self, ids: &[u32], _p: usize, layers: &LayerSel) -> Result<Run> {
        // RoPE scores depend only on i - j: the content alone at 0..n is the pretrained run.
        self.run(ids, None, layers)
    }

    fn stepper(&self) -> Option<&dyn Stepper> {
        Some(self)
    }

    fn blas_projections(&self) -> bool {
        // f32 and dequantized weights alike go through `blas::matmul`/`matmul_t`.
        super::blas::active()
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("family", self.cfg.family.clone()),
            ("rope", self.cfg.describe_rope()),
            ("window", self.cfg.describe_window()),
        ]
    }

    fn attn_block_output(&self, layer: usize, z: &Tensor) -> Result<Tensor> {
        let b = self.blocks.get(layer).ok_or_else(|| {
            Error::input(
                "layer",
                format!("below {}", self.blocks.len()),
                layer.to_string(),
            )
        })?;
        Ok(b.attn_out(z, self.eps())?)
    }

    fn token_embedding(&self, id: u32) -> Result<Vec<f32>> {
        if id as usize >= self.info.vocab_size {
            return Err(Error::input(
                "token id",
                format!("below {}", self.info.vocab_size),
                id.to_string(),
            ));
        }
        let row = self.embed.get(id as usize)?;
        // What the residual stream receives for this token (Gemma scales it).
        let row = match self.cfg.embed_scale {
            Some(s) => row.affine(s as f32 as f64, 0.0)?,
            None => row,
        };
        Ok(row.to_vec1::<f32>()?)
    }
}
