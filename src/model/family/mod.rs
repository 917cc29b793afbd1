//! Model families behind one registry.
//!
//! Every family shares one decoder ([`crate::model::llama::Llama`]); a family module says only what
//! differs: how its Hugging Face `config.json` (transformers 4.x and 5.x spellings) and its GGUF
//! metadata map onto the resolved hyper-parameters [`LlamaConfig`], and whether llama.cpp's converter
//! permuted its query/key rows. The tensor names follow from the resolved features
//! ([`LlamaConfig::expected_tensors`]).
//!
//! Strictness ("refuse, never guess"): a family reads the keys it implements with [`HfKeys`] /
//! [`GgufKeys`], which remember what was read; every key left over must be on the written list of keys
//! that do not change the numbers ([`NEUTRAL_HF_KEYS`], [`NEUTRAL_GGUF_KEYS`]) or the load is refused
//! with one line naming the key and its value.
//!
//! Adding a family: one module here implementing [`Family`], one line in [`REGISTRY`], one fixture in
//! the conformance suite.

pub mod gemma3;
pub mod llama;
pub mod mistral;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;

use crate::error::{Error, Result};
use crate::model::llama::{LlamaConfig, SlidingLayers};
use crate::model::rope::RopeScaling;
use candle_core::quantized::gguf_file;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// One family: its names and how its files state its hyper-parameters.
// `from_*` take `&self`: a family is a registry value (a trait object), not a constructor.
#[allow(clippy::wrong_self_convention)]
pub trait Family: Sync {
    /// The registry name; also the `model_type` written back into a `config.json`.
    fn name(&self) -> &'static str;
    /// Hugging Face `model_type` values this family reads.
    fn hf_model_types(&self) -> &'static [&'static str];
    /// GGUF `general.architecture` values this family reads.
    fn gguf_archs(&self) -> &'static [&'static str];
    /// Resolve a `config.json`, reading every key it implements from `keys`.
    fn from_hf(&self, keys: &mut HfKeys) -> Result<LlamaConfig>;
    /// Resolve GGUF metadata (`{arch}.*` keys), reading every key it implements from `keys`.
    fn from_gguf(&self, keys: &mut GgufKeys, tensors: &GgufTensors) -> Result<LlamaConfig>;
    /// Whether llama.cpp's converter interleaved the two rotary halves of each query/key head
    /// (`LlamaModel.permute`); families converted for NeoX-style RoPE keep Hugging Face order.
    fn gguf_permutes_qk(&self) -> bool {
        false
    }
    /// What llama.cpp's converter added to every RMSNorm weight (Gemma: 1, storing `1 + w`).
    fn gguf_norm_shift(&self) -> f32 {
        0.0
    }
}

/// Every family, in the order `inspect` and errors list them.
pub static REGISTRY: &[&dyn Family] = &[
    &llama::Llama,
    &mistral::Mistral,
    &qwen2::Qwen2,
    &qwen3::Qwen3,
    &gemma3::Gemma3,
    &phi3::Phi3,
];

/// The family reading Hugging Face `model_type`.
pub fn by_model_type(t: &str) -> Option<&'static dyn Family> {
    REGISTRY
        .iter()
        .copied()
        .find(|f| f.hf_model_types().contains(&t))
}

/// The family reading GGUF architecture `arch`.
pub fn by_gguf_arch(arch: &str) -> Option<&'static dyn Family> {
    REGISTRY
        .iter()
        .copied()
        .find(|f| f.gguf_archs().contains(&arch))
}

/// The family of registry name `name`.
pub fn by_name(name: &str) -> Option<&'static dyn Family> {
    REGISTRY.iter().copied().find(|f| f.name() == name)
}

/// Every `model_type` read, for error messages.
pub fn all_model_types() -> String {
    REGISTRY
        .iter()
        .flat_map(|f| f.hf_model_types().iter())
        .chain(["gpt2"].iter())
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every GGUF architecture read, for error messages.
pub fn all_gguf_archs() -> String {
    let mut v: Vec<String> = Vec::new();
    for a in REGISTRY.iter().flat_map(|f| f.gguf_archs().iter()) {
        let s = format!("'{a}'");
        if !v.contains(&s) {
            v.push(s);
        }
    }
    v.join(", ")
}

/// Top-level `config.json` keys that never change the numbers prefixscope computes, whatever their
/// value: metadata, training-only settings (dropout, initialisation), generation and serving settings,
/// and the context length (positions are never refused by it: RoPE has no table to run off).
/// A key that changes the numbers only at some values is read by its family and checked there.
pub const NEUTRAL_HF_KEYS: &[&str] = &[
    "_name_or_path",
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "use_cache",
    "initializer_range",
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "max_position_embeddings",
    "cache_implementation",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "tie_encoder_decoder",
    "is_decoder",
    "add_cross_attention",
    "problem_type",
    "id2label",
    "label2id",
    "task_specific_params",
    "finetuning_task",
    "tokenizer_class",
    "prefix",
    "quantization_config",
    "auto_map",
    "unsloth_version",
    "unsloth_fixed",
    // SmolLM2's configs: a marker for nanotron exports and transformers.js serving settings.
    "is_llama_config",
    "transformers.js_config",
];

/// GGUF metadata keys under `{arch}.` that do not change the numbers: the trained context length
/// (RoPE needs no table for it) and the marker that a scaled RoPE was fine-tuned.
pub const NEUTRAL_GGUF_KEYS: &[&str] = &["context_length", "rope.scaling.finetuned"];

/// GGUF namespaces that are not the model's hyper-parameters: file metadata, the tokenizer (read by
/// the tokenizer, which refuses what it cannot build) and quantization provenance.
pub const NEUTRAL_GGUF_NAMESPACES: &[&str] = &["general.", "tokenizer.", "quantize.", "split."];

/// What a family may need from a GGUF file's tensors while reading its metadata.
pub struct GgufTensors {
    /// Every tensor's shape, rows first (`(out, in)` like Hugging Face), by GGUF name.
    pub shapes: HashMap<String, Vec<usize>>,
    /// The factors of `rope_freqs.weight`, when the file has that tensor.
    pub rope_freqs: Option<Vec<f32>>,
}

/// The keys of one `config.json`, consumed as a family reads them.
pub struct HfKeys {
    path: PathBuf,
    map: BTreeMap<String, Value>,
    used: HashSet<String>,
}

impl HfKeys {
    pub fn new(path: &Path, json: &Value) -> Result<Self> {
        let obj = json
            .as_object()
            .ok_or_else(|| Error::format(path, "config.json", "a JSON object", "another value"))?;
        Ok(HfKeys {
            path: path.to_path_buf(),
            map: obj.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            used: HashSet::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of `key` (marked as read); JSON `null` reads as absent.
    pub fn get(&mut self, key: &str) -> Option<Value> {
        self.used.insert(key.to_string());
        self.map.get(key).filter(|v| !v.is_null()).cloned()
    }

    /// Remove `key` and return its value (`null` reads as absent): for a family that reads a key
    /// itself before the shared readers, which then see it absent.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.used.insert(key.to_string());
        self.map.remove(key).filter(|v| !v.is_null())
    }

    pub fn take_f64(&mut self, key: &str) -> Result<Option<f64>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "a number", &v)),
        }
    }

    /// Whether the file has `key` (even `null`), without marking it read.
    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    fn bad(&self, key: &str, expected: &str, v: &Value) -> Error {
        Error::format(
            &self.path,
            format!("config key '{key}'"),
            expected,
            v.to_string(),
        )
    }

    pub fn usize(&mut self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| self.bad(key, "a non-negative integer", &v)),
        }
    }

    pub fn req_usize(&mut self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| {
            Error::format(
                &self.path,
                format!("config key '{key}'"),
                "present",
                "missing",
            )
        })
    }

    pub fn f64(&mut self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "a number", &v)),
        }
    }

    pub fn bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(key, "true or false", &v)),
        }
    }

    pub fn string(&mut self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.bad(key, "a string", &v)),
        }
    }

    /// Refuse `key` unless it is absent, `null` or one of `neutral` (values that do not change the
    /// numbers), naming what is supported.
    pub fn only(&mut self, key: &str, neutral: &[Value], supported: &str) -> Result<()> {
        match self.get(key) {
            Some(v) if !neutral.contains(&v) => Err(Error::unsupported(
                &self.path,
                format!("config key '{key}'"),
                v.to_string(),
                supported,
            )),
            _ => Ok(()),
        }
    }

    /// Refuse any key neither read nor on [`NEUTRAL_HF_KEYS`].
    pub fn finish(self) -> Result<()> {
        for (k, v) in &self.map {
            if !self.used.contains(k) && !NEUTRAL_HF_KEYS.contains(&k.as_str()) {
                return Err(Error::unsupported(
                    &self.path,
                    format!("config key '{k}'"),
                    v.to_string(),
                    "the keys of the family, and those that do not change the numbers (README, Families)",
                ));
            }
        }
        Ok(())
    }
}

/// The `{arch}.*` metadata of one GGUF file, consumed as a family reads it.
pub struct GgufKeys<'a> {
    path: PathBuf,
    arch: String,
    meta: &'a HashMap<String, gguf_file::Value>,
    used: HashSet<String>,
}

impl<'a> GgufKeys<'a> {
    pub fn new(path: &Path, arch: &str, meta: &'a HashMap<String, gguf_file::Value>) -> Self {
        GgufKeys {
            path: path.to_path_buf(),
            arch: arch.to_string(),
            meta,
            used: HashSet::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    fn full(&self, key: &str) -> String {
        format!("{}.{key}", self.arch)
    }

    fn value(&mut self, key: &str) -> Option<&'a gguf_file::Value> {
        let k = self.full(key);
        self.used.insert(k.clone());
        self.meta.get(&k)
    }

    fn bad(&self, key: &str, expected: &str, v: &gguf_file::Value) -> Error {
        Error::format(
            &self.path,
            format!("metadata '{}'", self.full(key)),
            expected,
            format!("{v:?}"),
        )
    }

    pub fn usize(&mut self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .or_else(|_| {
                v.to_i32()
                    .map_err(|_| ())
                    .and_then(|x| usize::try_from(x).map_err(|_| ()))
                    .map_err(|_| candle_core::Error::Msg(String::new()))
            })
            .map(Some)
            .map_err(|_| self.bad(key, "a non-negative integer", v))
    }

    pub fn req_usize(&mut self, key: &str) -> Result<usize> {
        let full = self.full(key);
        self.usize(key)?.ok_or_else(|| {
            Error::format(
                &self.path,
                format!("metadata '{full}'"),
                "present",
                "missing",
            )
        })
    }

    pub fn f64(&mut self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        v.to_f32()
            .map(|x| x as f64)
            .or_else(|_| v.to_f64())
            .map(Some)
            .map_err(|_| self.bad(key, "a float", v))
    }

    pub fn string(&mut self, key: &str) -> Result<Option<String>> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        v.to_string()
            .map(|s| Some(s.clone()))
            .map_err(|_| self.bad(key, "a string", v))
    }

    /// Which of `n` layers are windowed, from a per-layer array of booleans or a period `p` (every
    /// layer but each `p`-th), when the key is present.
    pub fn layer_pattern(&mut self, key: &str, n: usize) -> Result<Option<SlidingLayers>> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        if let gguf_file::Value::Array(a) = v {
            let flags: Option<Vec<bool>> = a.iter().map(|x| x.to_bool().ok()).collect();
            return match flags {
                Some(f) if f.len() == n => Ok(Some(SlidingLayers::Listed(f))),
                _ => Err(self.bad(key, &format!("{n} booleans (one per layer)"), v)),
            };
        }
        match self.usize(key)? {
            Some(p) if p > 0 => Ok(Some(SlidingLayers::AllButEvery(p))),
            _ => Err(self.bad(key, "a positive period or one boolean per layer", v)),
        }
    }

    /// Refuse `key` unless absent or equal to `neutral` (as an integer), naming it and its value.
    pub fn only_usize(&mut self, key: &str, neutral: usize, supported: &str) -> Result<()> {
        match self.usize(key)? {
            Some(v) if v != neutral => Err(Error::unsupported(
                &self.path,
                format!("metadata '{}'", self.full(key)),
                v.to_string(),
                supported,
            )),
            _ => Ok(()),
        }
    }

    /// Refuse any `{arch}.*` key not read and not on [`NEUTRAL_GGUF_KEYS`], and any key outside the
    /// architecture's namespace and [`NEUTRAL_GGUF_NAMESPACES`].
    pub fn finish(self) -> Result<()> {
        let mut keys: Vec<&String> = self.meta.keys().collect();
        keys.sort();
        let own = format!("{}.", self.arch);
        for k in keys {
            let neutral = match k.strip_prefix(&own) {
                Some(rest) => self.used.contains(k) || NEUTRAL_GGUF_KEYS.contains(&rest),
                None => NEUTRAL_GGUF_NAMESPACES.iter().any(|ns| k.starts_with(ns)),
            };
            if !neutral {
                return Err(Error::unsupported(
                    &self.path,
                    format!("metadata '{k}'"),
                    short_value(&self.meta[k]),
                    format!(
                        "the '{}.*' keys of the family, and those that do not change the numbers (README, Families)",
                        self.arch
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A GGUF value for an error message (arrays by length).
fn short_value(v: &gguf_file::Value) -> String {
    match v {
        gguf_file::Value::Array(a) => format!("an array of {}", a.len()),
        gguf_file::Value::String(s) => format!("'{s}'"),
        other => format!("{other:?}"),
    }
}

/// The RoPE of a Hugging Face config in either spelling:
/// - transformers 4.x: top-level `rope_theta`, `rope_scaling` (`rope_type` or legacy `type`) and
///   `partial_rotary_factor`;
/// - transformers 5.x: `rope_parameters` with `rope_theta`, `rope_type`, `factor`, ... and
///   `partial_rotary_factor` inside.
///
/// `rope_parameters` wins over the top-level keys, as `convert_rope_params_to_dict` does. Returns
/// `(theta, scaling, partial_rotary_factor)`; `default_theta` is the family's default.
pub fn hf_rope(keys: &mut HfKeys, default_theta: f64) -> Result<(f64, Option<RopeScaling>, f64)> {
    let params = keys.get("rope_parameters");
    let legacy = keys.get("rope_scaling");
    let top_theta = keys.f64("rope_theta")?;
    let top_partial = keys.f64("partial_rotary_factor")?;
    let max_pos = keys.f64("max_position_embeddings")?;
    let orig_top = keys.f64("original_max_position_embeddings")?;
    let dict = match (params, legacy) {
        (Some(p), _) => Some(("rope_parameters", p)),
        (None, Some(l)) => Some(("rope_scaling", l)),
        (None, None) => None,
    };
    let path = keys.path().to_path_buf();
    rope_from_dict(
        &path,
        dict.as_ref().map(|(k, v)| (*k, v)),
        top_theta.unwrap_or(default_theta),
        top_partial,
        max_pos,
        orig_top,
    )
}

/// One RoPE dictionary (`rope_parameters`, `rope_scaling`, or one layer type's entry): every key
/// implemented or the load refused naming it.
pub fn rope_from_dict(
    path: &Path,
    dict: Option<(&str, &Value)>,
    theta_default: f64,
    partial_default: Option<f64>,
    max_position_embeddings: Option<f64>,
    original_top: Option<f64>,
) -> Result<(f64, Option<RopeScaling>, f64)> {
    let Some((field, v)) = dict else {
        return Ok((theta_default, None, partial_default.unwrap_or(1.0)));
    };
    let obj = v.as_object().ok_or_else(|| {
        Error::format(
            path,
            format!("config key '{field}'"),
            "an object",
            v.to_string(),
        )
    })?;
    let used: std::cell::RefCell<HashSet<&str>> = Default::default();
    let num = |k: &'static str| -> Result<Option<f64>> {
        used.borrow_mut().insert(k);
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_f64().map(Some).ok_or_else(|| {
                Error::format(
                    path,
                    format!("config key '{field}.{k}'"),
                    "a number",
                    x.to_string(),
                )
            }),
        }
    };
    let theta = num("rope_theta")?.unwrap_or(theta_default);
    // standardize_rope_params: a top-level original_max_position_embeddings (Phi-3) wins.
    let original = |x: Option<f64>| original_top.or(x).or(max_position_embeddings);
    let partial = num("partial_rotary_factor")?
        .or(partial_default)
        .unwrap_or(1.0);
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default")
        .to_string();
    let refuse_kind = || {
        Error::unsupported(
            path,
            format!("RoPE type ('{field}.rope_type')"),
            format!("'{kind}'"),
            "default, linear, llama3, yarn",
        )
    };
    let need = |name: &str, x: Option<f64>| -> Result<f64> {
        x.ok_or_else(|| {
            Error::format(
                path,
                format!("config key '{field}.{name}'"),
                format!("present for RoPE type '{kind}'"),
                "missing",
            )
        })
    };
    let scaling = match kind.as_str() {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: need("factor", num("factor")?)?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: need("factor", num("factor")?)?,
            low_freq_factor: need("low_freq_factor", num("low_freq_factor")?)?,
            high_freq_factor: need("high_freq_factor", num("high_freq_factor")?)?,
            original_max_position_embeddings: need(
                "original_max_position_embeddings",
                original(num("original_max_position_embeddings")?),
            )?,
        }),
        "yarn" => {
            let orig = original(num("original_max_position_embeddings")?);
            let orig = need("original_max_position_embeddings", orig)?;
            let factor = match num("factor")? {
                Some(f) => f,
                None => need("factor", max_position_embeddings.map(|m| m / orig))?,
            };
            used.borrow_mut().insert("truncate");
            let truncate = match obj.get("truncate") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(x) => {
                    return Err(Error::format(
                        path,
                        format!("config key '{field}.truncate'"),
                        "true or false",
                        x.to_string(),
                    ))
                }
            };
            // transformers: `beta_fast or 32` (a 0 also means the default).
            let beta_fast = num("beta_fast")?.filter(|b| *b != 0.0).unwrap_or(32.0);
            let beta_slow = num("beta_slow")?.filter(|b| *b != 0.0).unwrap_or(1.0);
            let mscale = num("mscale")?.filter(|m| *m != 0.0);
            let mscale_all_dim = num("mscale_all_dim")?.filter(|m| *m != 0.0);
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig,
                attention_factor: num("attention_factor")?,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                truncate,
            })
        }
        _ => return Err(refuse_kind()),
    };
    for (k, x) in obj {
        if !(used.borrow().contains(k.as_str()) || k == "rope_type" || k == "type") {
            // Keys transformers reads only for other RoPE types.
            if x.is_null() {
                continue;
            }
            return Err(Error::unsupported(
                path,
                format!("config key '{field}.{k}' for RoPE type '{kind}'"),
                x.to_string(),
                "the keys transformers reads for this RoPE type",
            ));
        }
    }
    Ok((theta, scaling, partial))
}

/// The RoPE of GGUF metadata: `{arch}.rope.freq_base`, `{arch}.rope.scaling.*` (none, linear, yarn)
/// and the `rope_freqs.weight` factors (read by the loader and passed in). Anything else refused.
pub fn gguf_rope(
    keys: &mut GgufKeys,
    default_theta: f64,
    freq_factors: Option<Vec<f32>>,
) -> Result<(f64, Option<RopeScaling>)> {
    let theta = keys.f64("rope.freq_base")?.unwrap_or(default_theta);
    let kind = keys.string("rope.scaling.type")?;
    let factor = keys.f64("rope.scaling.factor")?;
    let orig = keys.usize("rope.scaling.original_context_length")?;
    let ctx = keys.usize("context_length")?;
    let beta_fast = keys.f64("rope.scaling.yarn_beta_fast")?;
    let beta_slow = keys.f64("rope.scaling.yarn_beta_slow")?;
    let attn = keys.f64("rope.scaling.attn_factor")?;
    let ext = keys.f64("rope.scaling.yarn_ext_factor")?;
    let path = keys.path().to_path_buf();
    let arch = keys.arch().to_string();
    let refuse = |what: &str, found: String, supported: &str| {
        Err(Error::unsupported(
            &path,
            format!("metadata '{arch}.{what}'"),
            found,
            supported,
        ))
    };
    let scaling = match (kind.as_deref(), factor) {
        (None | Some("none"), _) => None,
        // llama.cpp: freq_scale = 1 / factor; a factor of 0 or 1 means no scaling.
        (Some("linear"), None) => None,
        (Some("linear"), Some(f)) if f == 0.0 || f == 1.0 => None,
        (Some("linear"), Some(f)) => Some(RopeScaling::Linear { factor: f }),
        (Some("yarn"), Some(f)) if f > 1.0 => {
            let Some(orig) = orig.or(ctx) else {
                return refuse(
                    "rope.scaling.original_context_length",
                    "missing".into(),
                    "present for yarn",
                );
            };
            if ext.is_some_and(|e| e != 1.0) {
                return refuse(
                    "rope.scaling.yarn_ext_factor",
                    format!("{ext:?}"),
                    "1 (as transformers)",
                );
            }
            // llama.cpp multiplies its own YaRN scale by this factor; transformers' attention_factor
            // replaces it. Which one a file means is not stated: refuse rather than guess.
            if let Some(a) = attn.filter(|a| *a != 1.0) {
                return refuse(
                    "rope.scaling.attn_factor",
                    a.to_string(),
                    "1 with yarn scaling",
                );
            }
            Some(RopeScaling::Yarn {
                factor: f,
                original_max_position_embeddings: orig as f64,
                attention_factor: None,
                beta_fast: beta_fast.unwrap_or(32.0),
                beta_slow: beta_slow.unwrap_or(1.0),
                mscale: None,
                mscale_all_dim: None,
                truncate: true,
            })
        }
        (Some(k), f) => {
            return refuse(
                "rope.scaling.type",
                format!("'{k}' (factor {f:?})"),
                "none, linear, yarn",
            );
        }
    };
    if !matches!(scaling, Some(RopeScaling::Yarn { .. })) {
        for (k, v) in [
            ("rope.scaling.attn_factor", attn),
            ("rope.scaling.yarn_ext_factor", ext),
        ] {
            if let Some(v) = v.filter(|v| *v != 1.0 && *v != 0.0) {
                return refuse(k, v.to_string(), "1 without yarn scaling");
            }
        }
    }
    match (freq_factors, scaling) {
        (Some(_), Some(s)) => refuse(
            "rope.scaling.type",
            format!("'{}' together with tensor rope_freqs.weight", s.kind()),
            "one of them",
        ),
        (Some(f), None) => Ok((theta, Some(RopeScaling::FreqFactors(f)))),
        (None, s) => Ok((theta, s)),
    }
}

/// Refuse partial rotary embeddings in a family whose transformers code rotates whole heads.
pub fn whole_head_rope(path: &Path, cfg: &LlamaConfig) -> Result<()> {
    if cfg.partial_rotary_factor != 1.0 {
        return Err(Error::unsupported(
            path,
            format!("partial rotary embeddings in family '{}'", cfg.family),
            format!("{} of the head", cfg.partial_rotary_factor),
            "the whole head (phi3 rotates part of it)",
        ));
    }
    Ok(())
}

/// Qwen2/Qwen3's window: `use_sliding_window` (default false) switches `sliding_window` (default
/// 4096) on for `layer_types`' sliding layers, or for layers from `max_window_layers` (default 28).
pub fn qwen_window(keys: &mut HfKeys, cfg: &mut LlamaConfig) -> Result<()> {
    let on = keys.bool("use_sliding_window")?.unwrap_or(false);
    let window = if keys.has("sliding_window") {
        keys.usize("sliding_window")?
    } else {
        Some(4096)
    };
    let from = keys.usize("max_window_layers")?.unwrap_or(28);
    let n = cfg.num_hidden_layers;
    let types = hf_layer_types(keys, n)?;
    if !on || window.is_none() {
        if let Some(t) = types.filter(|t| t.iter().any(|&s| s)) {
            // transformers would window these layers only if use_sliding_window were set.
            return Err(Error::unsupported(
                keys.path(),
                "config key 'layer_types'",
                format!(
                    "{} sliding layers without use_sliding_window",
                    t.iter().filter(|&&s| s).count()
                ),
                "full_attention only when use_sliding_window is false",
            ));
        }
        return Ok(());
    }
    cfg.sliding_window = window;
    cfg.sliding_layers = match types {
        Some(t) => SlidingLayers::Listed(t),
        None => SlidingLayers::From(from),
    };
    Ok(())
}

/// `layer_types` of a config: `full_attention` / `sliding_attention` per layer.
pub fn hf_layer_types(keys: &mut HfKeys, n_layers: usize) -> Result<Option<Vec<bool>>> {
    let Some(v) = keys.get("layer_types") else {
        return Ok(None);
    };
    let path = keys.path().to_path_buf();
    let arr = v
        .as_array()
        .ok_or_else(|| Error::format(&path, "config key 'layer_types'", "a list", v.to_string()))?;
    if arr.len() != n_layers {
        return Err(Error::format(
            &path,
            "config key 'layer_types'",
            format!("{n_layers} entries (num_hidden_layers)"),
            arr.len().to_string(),
        ));
    }
    arr.iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(false),
            Some("sliding_attention") => Ok(true),
            _ => Err(Error::unsupported(
                &path,
                "config key 'layer_types' entry",
                t.to_string(),
                "full_attention, sliding_attention",
            )),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The activation of a `hidden_act` / `hidden_activation` value.
pub fn activation(path: &Path, key: &str, v: &str) -> Result<crate::model::llama::Activation> {
    use crate::model::llama::Activation;
    match v {
        "silu" | "swish" => Ok(Activation::Silu),
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
        "gelu" => Ok(Activation::GeluErf),
        other => Err(Error::unsupported(
            path,
            format!("config key '{key}'"),
            format!("'{other}'"),
            "silu, gelu, gelu_pytorch_tanh",
        )),
    }
}

/// Sizes every family states the same way in a `config.json`, with the family's defaults for the
/// keys transformers defaults. Returns a config with Llama's features; families then set their own.
pub struct HfDefaults {
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub head_dim: Option<usize>,
    /// `num_key_value_heads` when absent (transformers: the query heads, or a class default).
    pub num_key_value_heads: Option<usize>,
    pub act_key: &'static str,
    /// Whether the family reads `attention_bias` itself (else only `false` is accepted).
    pub attention_bias: bool,
    /// Whether the family reads `mlp_bias` itself (else only `false` is accepted).
    pub mlp_bias: bool,
}

pub fn hf_common(family: &str, keys: &mut HfKeys, d: &HfDefaults) -> Result<LlamaConfig> {
    let hidden_size = keys.req_usize("hidden_size")?;
    let num_attention_heads = keys.req_usize("num_attention_heads")?;
    let num_hidden_layers = keys.req_usize("num_hidden_layers")?;
    let (theta, scaling, partial) = hf_rope(keys, d.rope_theta)?;
    let act = match keys.string(d.act_key)? {
        Some(a) => activation(keys.path(), d.act_key, &a)?,
        None => {
            if d.act_key == "hidden_activation" {
                crate::model::llama::Activation::GeluTanh
            } else {
                crate::model::llama::Activation::Silu
            }
        }
    };
    // transformers 4.x Llama splits its projections into `pretraining_tp` slices: the same sums.
    keys.get("pretraining_tp");
    // nanotron's marker: transformers rotates halves whatever it says; refuse the interleaved claim.
    keys.only(
        "rope_interleaved",
        &[Value::Bool(false)],
        "false (rotate-half RoPE)",
    )?;
    // Bias flags of families that have no such biases are harmless only when false.
    if !d.attention_bias {
        keys.only(
            "attention_bias",
            &[Value::Bool(false)],
            "false in this family",
        )?;
    }
    if !d.mlp_bias {
        keys.only("mlp_bias", &[Value::Bool(false)], "false in this family")?;
    }
    let mut cfg = LlamaConfig::plain(family);
    cfg.hidden_size = hidden_size;
    cfg.intermediate_size = keys.req_usize("intermediate_size")?;
    cfg.num_hidden_layers = num_hidden_layers;
    cfg.num_attention_heads = num_attention_heads;
    // Absent: the class default; `null`: the query heads (transformers' `__post_init__`).
    cfg.num_key_value_heads = if keys.has("num_key_value_heads") {
        keys.usize("num_key_value_heads")?
    } else {
        d.num_key_value_heads
    };
    cfg.head_dim = keys.usize("head_dim")?.or(d.head_dim);
    cfg.vocab_size = keys.req_usize("vocab_size")?;
    cfg.rms_norm_eps = keys.f64("rms_norm_eps")?.unwrap_or(d.rms_norm_eps);
    cfg.tie_word_embeddings = keys
        .bool("tie_word_embeddings")?
        .unwrap_or(d.tie_word_embeddings);
    cfg.rope_theta = theta;
    cfg.rope_scaling = scaling;
    cfg.partial_rotary_factor = partial;
    cfg.act = act;
    Ok(cfg)
}

/// Sizes every family states the same way in GGUF metadata.
pub fn gguf_common(
    family: &str,
    keys: &mut GgufKeys,
    tensors: &GgufTensors,
    default_eps: f64,
    default_theta: f64,
) -> Result<LlamaConfig> {
    let path = keys.path().to_path_buf();
    let vocab_size = match keys.usize("vocab_size")? {
        Some(v) => v,
        None => match tensors.shapes.get("token_embd.weight") {
            Some(s) => match s.as_slice() {
                [vocab, _] => *vocab,
                other => {
                    return Err(Error::shape(
                        &path,
                        "token_embd.weight",
                        "[vocabulary, embedding_length]",
                        other,
                    ))
                }
            },
            None => return Err(Error::missing(&path, "token_embd.weight")),
        },
    };
    let mut cfg = LlamaConfig::plain(family);
    cfg.hidden_size = keys.req_usize("embedding_length")?;
    cfg.intermediate_size = keys.req_usize("feed_forward_length")?;
    cfg.num_hidden_layers = keys.req_usize("block_count")?;
    cfg.num_attention_heads = keys.req_usize("attention.head_count")?;
    cfg.num_key_value_heads = keys.usize("attention.head_count_kv")?;
    cfg.head_dim = keys.usize("attention.key_length")?;
    if let Some(vl) = keys.usize("attention.value_length")? {
        if vl != cfg.head_dim() {
            return Err(Error::unsupported(
                &path,
                format!("metadata '{}.attention.value_length'", keys.arch()),
                vl.to_string(),
                format!("the key length, {}", cfg.head_dim()),
            ));
        }
    }
    cfg.vocab_size = vocab_size;
    cfg.rms_norm_eps = keys
        .f64("attention.layer_norm_rms_epsilon")?
        .unwrap_or(default_eps);
    let (theta, scaling) = gguf_rope(keys, default_theta, tensors.rope_freqs.clone())?;
    cfg.rope_theta = theta;
    cfg.rope_scaling = scaling;
    if let Some(rd) = keys.usize("rope.dimension_count")? {
        let hd = cfg.head_dim();
        if rd == 0 || rd > hd || rd % 2 != 0 {
            return Err(Error::unsupported(
                &path,
                format!("metadata '{}.rope.dimension_count'", keys.arch()),
                rd.to_string(),
                format!("an even number up to the head dimension {hd}"),
            ));
        }
        cfg.partial_rotary_factor = rd as f64 / hd as f64;
    }
    // Mixture-of-experts and other block kinds are not these families.
    keys.only_usize("expert_count", 0, "0 (dense models)")?;
    keys.only_usize("expert_used_count", 0, "0 (dense models)")?;
    cfg.tie_word_embeddings = !tensors.shapes.contains_key("output.weight");
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<LlamaConfig> {
        LlamaConfig::from_hf_json(&v, Path::new("config.json"))
    }

    fn base() -> Value {
        json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100, "rms_norm_eps": 1e-5, "tie_word_embeddings": true
        })
    }

    #[test]
    fn both_spellings_of_rope_give_the_same_config() {
        let mut v4 = base();
        v4["rope_theta"] = 500000.0.into();
        v4["rope_scaling"] = json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let mut v5 = base();
        v5["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let (a, b) = (parse(v4).unwrap(), parse(v5).unwrap());
        assert_eq!(a, b);
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(a.rope_scaling.as_ref().unwrap().kind(), "llama3");
    }

    /// The bug this exists for: a 5.x config's base was read as the 10000 default.
    #[test]
    fn a_transformers_5_base_is_read() {
        let mut v = base();
        v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 100000.0});
        assert_eq!(parse(v).unwrap().rope_theta, 100000.0);
        assert_eq!(parse(base()).unwrap().rope_theta, 10000.0);
    }

    #[test]
    fn unknown_keys_and_rope_types_are_refused_by_name() {
        let mut v = base();
        v["logit_scale"] = 0.5.into();
        let e = parse(v).unwrap_err().to_string();
        assert!(
            e.contains("config key 'logit_scale'") && e.contains("0.5"),
            "{e}"
        );
        let mut v = base();
        v["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("'dynamic'") && e.contains("rope_type"), "{e}");
        let mut v = base();
        v["rope_parameters"] =
            json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4, "beta_fast": 3});
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("rope_parameters.beta_fast"), "{e}");
        // Keys on the neutral list are fine whatever their value.
        let mut v = base();
        v["architectures"] = json!(["LlamaForCausalLM"]);
        v["attention_dropout"] = 0.1.into();
        v["torch_dtype"] = "bfloat16".into();
        v["rope_scaling"] = Value::Null;
        parse(v).unwrap();
    }

    fn with(model_type: &str, extra: Value) -> Result<LlamaConfig> {
        let mut v = base();
        v["model_type"] = model_type.into();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        parse(v)
    }

    fn names(cfg: &LlamaConfig) -> Vec<String> {
        cfg.expected_tensors().into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn qwen2_has_qkv_biases_and_a_window_only_when_asked() {
        let c = with(
            "qwen2",
            json!({"sliding_window": 8, "max_window_layers": 1}),
        )
        .unwrap();
        let n = names(&c);
        assert!(n.contains(&"model.layers.1.self_attn.v_proj.bias".to_string()));
        assert!(!n.iter().any(|x| x.contains("o_proj.bias")));
        assert!(
            !c.is_sliding(0) && !c.is_sliding(1),
            "use_sliding_window is false"
        );
        let c = with(
            "qwen2",
            json!({"sliding_window": 8, "max_window_layers": 1, "use_sliding_window": true}),
        )
        .unwrap();
        assert!(!c.is_sliding(0) && c.is_sliding(1));
        // Qwen2 has no o bias: a config claiming one is refused, not half-read.
        assert!(with("qwen2", json!({"attention_bias": true})).is_err());
    }

    #[test]
    fn mistral_window_defaults_to_4096_and_null_means_none() {
        assert_eq!(
            with("mistral", json!({})).unwrap().sliding_window,
            Some(4096)
        );
        let c = with("mistral", json!({"sliding_window": null})).unwrap();
        assert_eq!(c.sliding_window, None);
        assert!(!c.is_sliding(0));
    }

    #[test]
    fn qwen3_norms_each_head_and_llama_reads_its_biases() {
        let c = with("qwen3", json!({"head_dim": 16})).unwrap();
        assert!(names(&c).contains(&"model.layers.0.self_attn.k_norm.weight".to_string()));
        // transformers' Qwen3 default head_dim is 128, not hidden / heads.
        assert_eq!(with("qwen3", json!({})).unwrap().head_dim(), 128);
        let c = with("llama", json!({"attention_bias": true, "mlp_bias": true})).unwrap();
        let n = names(&c);
        for t in [
            "self_attn.o_proj.bias",
            "self_attn.q_proj.bias",
            "mlp.down_proj.bias",
        ] {
            assert!(n.contains(&format!("model.layers.0.{t}")), "{t}");
        }
        // Llama's modeling code rotates whole heads.
        assert!(with("llama", json!({"partial_rotary_factor": 0.5})).is_err());
    }

    #[test]
    fn gemma3_both_spellings_and_defaults() {
        let v4 = with(
            "gemma3_text",
            json!({"head_dim": 16, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
                "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 512,
                "_sliding_window_pattern": 2, "query_pre_attn_scalar": 16}),
        )
        .unwrap();
        let v5 = with(
            "gemma3_text",
            json!({"head_dim": 16, "sliding_window": 512, "query_pre_attn_scalar": 16,
                "layer_types": ["sliding_attention", "full_attention"],
                "rope_parameters": {
                    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}),
        )
        .unwrap();
        for c in [&v4, &v5] {
            assert!(c.is_sliding(0) && !c.is_sliding(1));
            assert_eq!(c.rope(1).scaling, Some(RopeScaling::Linear { factor: 8.0 }));
            assert_eq!((c.rope(0).theta, c.rope(0).scaling.clone()), (1e4, None));
            assert_eq!(c.rope(1).theta, 1e6);
            assert_eq!(c.query_scale(), 0.25);
            assert_eq!(c.norm_weight_offset, 1.0);
            assert_eq!(c.embed_scale, Some(8.0));
            assert!(c.sandwich_norms && c.qk_norm);
        }
        // transformers' defaults: head_dim 256, query_pre_attn_scalar 256, pattern 6, bases 1e6/1e4.
        let d = with("gemma3_text", json!({"num_hidden_layers": 6})).unwrap();
        assert_eq!(d.head_dim(), 256);
        assert_eq!(d.query_scale(), 1.0 / 16.0);
        assert!((0..5).all(|l| d.is_sliding(l)) && !d.is_sliding(5));
        assert_eq!((d.rope(5).theta, d.rope(0).theta), (1e6, 1e4));
        assert!(with("gemma3_text", json!({"use_bidirectional_attention": true})).is_err());
    }

    #[test]
    fn phi3_fuses_projections_and_rotates_part_of_each_head() {
        let c = with(
            "phi3",
            json!({"partial_rotary_factor": 0.5, "attention_bias": false,
                "original_max_position_embeddings": 4096, "sliding_window": 2047}),
        )
        .unwrap();
        assert_eq!(c.rotary_dim(), 8);
        let n = names(&c);
        assert!(n.contains(&"model.layers.0.self_attn.qkv_proj.weight".to_string()));
        assert!(n.contains(&"model.layers.0.mlp.gate_up_proj.weight".to_string()));
        assert!(!n.iter().any(|x| x.contains("q_proj")));
        assert_eq!(c.sliding_window, Some(2047));
        assert!(with("phi3", json!({"attention_bias": true})).is_err());
        let e = with(
            "phi3",
            json!({"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("'longrope'"), "{e}");
    }

    /// A config written as `config.json` reads back to itself, for every family and feature, so a
    /// folder written from a GGUF (tests, conversions) is the same model.
    #[test]
    fn every_config_reads_back_from_its_json() {
        let cases = [
            (
                "llama",
                json!({"attention_bias": true, "mlp_bias": true, "rope_scaling":
                {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
            ),
            (
                "llama",
                json!({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4,
                "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 16.0}}),
            ),
            ("mistral", json!({"sliding_window": null})),
            ("mistral", json!({})),
            (
                "qwen2",
                json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1}),
            ),
            ("qwen3", json!({"head_dim": 32, "attention_bias": true})),
            (
                "gemma3_text",
                json!({"head_dim": 16, "query_pre_attn_scalar": 16,
                "final_logit_softcapping": 30.0, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}),
            ),
            (
                "gemma3_text",
                json!({"layer_types": ["full_attention", "sliding_attention"]}),
            ),
            (
                "phi3",
                json!({"partial_rotary_factor": 0.75, "sliding_window": 2047}),
            ),
        ];
        for (t, extra) in cases {
            let c = with(t, extra.clone()).unwrap();
            let back = parse(c.to_hf_json()).unwrap_or_else(|e| panic!("{t} {extra}: {e}"));
            assert_eq!(back, c, "{t} {extra}");
            // Serialize is the same JSON.
            assert_eq!(serde_json::to_value(&c).unwrap(), c.to_hf_json());
        }
        // What has no Hugging Face spelling is refused when read back, not dropped.
        let mut c = with("llama", json!({})).unwrap();
        c.rope_scaling = Some(RopeScaling::FreqFactors(vec![1.0; 8]));
        assert!(parse(c.to_hf_json()).is_err());
        let mut c = with("gemma3_text", json!({})).unwrap();
        c.norm_weight_offset = 0.0;
        assert!(parse(c.to_hf_json()).is_err());
    }

    #[test]
    fn every_family_is_found_by_its_names() {
        for f in REGISTRY {
            for t in f.hf_model_types() {
                assert_eq!(by_model_type(t).unwrap().name(), f.name());
            }
            assert_eq!(by_name(f.name()).unwrap().name(), f.name());
        }
        assert_eq!(by_gguf_arch("llama").unwrap().name(), "llama");
        assert_eq!(by_gguf_arch("gemma3").unwrap().name(), "gemma3_text");
    }
}
