//! The three kinds of prefix the paper and practice use, their files, and their checks against a model.
//!
//! - soft prompt: `P` vectors in embedding space at positions `0..P`, shape `(P, d_model)`;
//! - the paper's prefix-tuning form ("hidden"): per layer, `P` hidden-state vectors that replace the
//!   attention input at the prefix positions before the pre-attention norm, shape `(n_layers, P, d_model)`;
//! - key/value prefix (PEFT, HF `past_key_values`): per layer `P` keys and values per KV head, keys
//!   already rotated, in Hugging Face head-dim order, arrays `keys`/`values` of shape
//!   `(n_layers, n_kv_heads, P, head_dim)`.

pub use crate::arrays::Array;
use crate::arrays::{read_arrays, write_arrays};
use crate::error::{Error, Result};
use std::path::Path;

/// The sizes a prefix is checked against: what a model tells about itself (implemented by
/// [`crate::model::ModelInfo`]). A trait here, so that this module does not depend on the models that
/// take a prefix as input.
pub trait PrefixSizes {
    fn n_layers(&self) -> usize;
    fn d_model(&self) -> usize;
    fn n_kv_heads(&self) -> usize;
    fn head_dim(&self) -> usize;
    /// Longest sequence (prefix + content) the model accepts; `None` when unbounded.
    fn max_positions(&self) -> Option<usize>;
}

/// The first NaN or infinity of `a`, refused naming the array and its flat index.
fn finite(source: &Path, name: &str, a: &Array) -> Result<()> {
    match a.data.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(Error::format(
            source,
            format!("tensor '{name}' element {i}"),
            "a finite number",
            a.data[i].to_string(),
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PrefixKind {
    SoftPrompt,
    Hidden,
    KeyValue,
}

impl PrefixKind {
    pub fn label(self) -> &'static str {
        match self {
            PrefixKind::SoftPrompt => "soft prompt",
            PrefixKind::Hidden => "per-layer prefix (paper)",
            PrefixKind::KeyValue => "key/value prefix",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Prefix {
    SoftPrompt(Array),
    Hidden(Array),
    KeyValue { keys: Array, values: Array },
}

impl Prefix {
    /// Layer `l` of a paper-form prefix, `(P, d)`; `None` for the other kinds.
    pub fn hidden_layer(&self, l: usize) -> candle_core::Result<Option<candle_core::Tensor>> {
        let Prefix::Hidden(a) = self else {
            return Ok(None);
        };
        let per = a.shape[1] * a.shape[2];
        let rows = a.data.get(l * per..(l + 1) * per).ok_or_else(|| {
            candle_core::Error::Msg(format!("prefix has no layer {l} (shape {:?})", a.shape))
        })?;
        let t = candle_core::Tensor::from_slice(
            rows,
            (a.shape[1], a.shape[2]),
            &candle_core::Device::Cpu,
        )?;
        Ok(Some(t))
    }

    /// Layer `l` of a key/value prefix: keys and values `(KV, P, hd)`; `None` for the other kinds.
    pub fn key_value_layer(
        &self,
        l: usize,
    ) -> candle_core::Result<Option<(candle_core::Tensor, candle_core::Tensor)>> {
        let Prefix::KeyValue { keys, values } = self else {
            return Ok(None);
        };
        let shape = (keys.shape[1], keys.shape[2], keys.shape[3]);
        let per = shape.0 * shape.1 * shape.2;
        let layer = |a: &crate::arrays::Array| {
            let rows = a.data.get(l * per..(l + 1) * per).ok_or_else(|| {
                candle_core::Error::Msg(format!("prefix has no layer {l} (shape {:?})", a.shape))
            })?;
            candle_core::Tensor::from_slice(rows, shape, &candle_core::Device::Cpu)
        };
        Ok(Some((layer(keys)?, layer(values)?)))
    }

    pub fn kind(&self) -> PrefixKind {
        match self {
            Prefix::SoftPrompt(_) => PrefixKind::SoftPrompt,
            Prefix::Hidden(_) => PrefixKind::Hidden,
            Prefix::KeyValue { .. } => PrefixKind::KeyValue,
        }
    }

    /// Number of virtual tokens.
    pub fn len(&self) -> usize {
        match self {
            Prefix::SoftPrompt(a) => a.shape.first().copied().unwrap_or(0),
            Prefix::Hidden(a) => a.shape.get(1).copied().unwrap_or(0),
            Prefix::KeyValue { keys, .. } => keys.shape.get(2).copied().unwrap_or(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every number of the prefix, for whole-vector edits (randomize, scale).
    pub fn values_mut(&mut self) -> Box<dyn Iterator<Item = &mut f32> + '_> {
        match self {
            Prefix::SoftPrompt(a) | Prefix::Hidden(a) => Box::new(a.data.iter_mut()),
            Prefix::KeyValue { keys, values } => {
                Box::new(keys.data.iter_mut().chain(values.data.iter_mut()))
            }
        }
    }

    /// A zero prefix of the given kind and length for `info`.
    pub fn zeros(kind: PrefixKind, p: usize, info: &impl PrefixSizes) -> Self {
        match kind {
            PrefixKind::SoftPrompt => Prefix::SoftPrompt(Array::zeros(&[p, info.d_model()])),
            PrefixKind::Hidden => {
                Prefix::Hidden(Array::zeros(&[info.n_layers(), p, info.d_model()]))
            }
            PrefixKind::KeyValue => {
                let s = [info.n_layers(), info.n_kv_heads(), p, info.head_dim()];
                Prefix::KeyValue {
                    keys: Array::zeros(&s),
                    values: Array::zeros(&s),
                }
            }
        }
    }

    /// Expected shapes of this kind for `info` (for messages and checks).
    pub fn expected_shape(kind: PrefixKind, p: usize, info: &impl PrefixSizes) -> Vec<usize> {
        match kind {
            PrefixKind::SoftPrompt => vec![p, info.d_model()],
            PrefixKind::Hidden => vec![info.n_layers(), p, info.d_model()],
            PrefixKind::KeyValue => vec![info.n_layers(), info.n_kv_heads(), p, info.head_dim()],
        }
    }

    /// Check that this prefix fits `info`; `source` names the file (or "prefix") in messages.
    pub fn check(&self, info: &impl PrefixSizes, source: &Path) -> Result<()> {
        let p = self.len();
        let arrays: Vec<(&str, &Array)> = match self {
            Prefix::SoftPrompt(a) => vec![("soft_prompt", a)],
            Prefix::Hidden(a) => vec![("prefix", a)],
            Prefix::KeyValue { keys, values } => vec![("keys", keys), ("values", values)],
        };
        for (name, a) in arrays {
            let want = Prefix::expected_shape(self.kind(), p.max(1), info);
            if a.shape != want {
                return Err(Error::shape(source, name, want, &a.shape));
            }
            let count = a.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            if count != Some(a.data.len()) {
                return Err(Error::shape(source, name, &a.shape, [a.data.len()]));
            }
            finite(source, name, a)?;
        }
        if p == 0 {
            return Err(Error::input(
                format!("{}: prefix length", source.display()),
                "P >= 1",
                "0",
            ));
        }
        if let Some(maxp) = info.max_positions() {
            if p >= maxp {
                return Err(Error::input(
                    format!("{}: prefix length", source.display()),
                    format!("P < {maxp} (the model's context)"),
                    p.to_string(),
                ));
            }
        }
        Ok(())
    }

    /// Load a prefix of `kind` from `.npy`, `.npz` or `.safetensors`.
    ///
    /// For `.npz`/`.safetensors` the soft prompt and the paper's prefix are read from the array named
    /// `soft_prompt`/`prefix` (or the only array); a key/value prefix from `keys` and `values`.
    pub fn load(path: &Path, kind: PrefixKind) -> Result<Self> {
        let arrays = read_arrays(path)?;
        let pick = |names: &[&str]| -> Result<Array> {
            for n in names {
                if let Some(a) = arrays.get(*n) {
                    return Ok(a.clone());
                }
            }
            if arrays.len() == 1 && kind != PrefixKind::KeyValue {
                return Ok(arrays
                    .values()
                    .next()
                    .cloned()
                    .unwrap_or_else(|| Array::zeros(&[0])));
            }
            let mut found: Vec<&String> = arrays.keys().collect();
            found.sort();
            Err(Error::format(
                path,
                "prefix arrays",
                format!("an array named {}", names.join(" or ")),
                format!("{found:?}"),
            ))
        };
        let p = match kind {
            PrefixKind::SoftPrompt => Prefix::SoftPrompt(pick(&["soft_prompt", "prefix"])?),
            PrefixKind::Hidden => Prefix::Hidden(pick(&["prefix", "hidden"])?),
            PrefixKind::KeyValue => Prefix::KeyValue {
                keys: pick(&["keys"])?,
                values: pick(&["values"])?,
            },
        };
        // Values are checked as soon as they are read, whatever they are used for next.
        for (name, a) in p.named() {
            finite(path, name, a)?;
        }
        Ok(p)
    }

    /// The arrays of this prefix under their file names.
    fn named(&self) -> Vec<(&'static str, &Array)> {
        match self {
            Prefix::SoftPrompt(a) => vec![("soft_prompt", a)],
            Prefix::Hidden(a) => vec![("prefix", a)],
            Prefix::KeyValue { keys, values } => vec![("keys", keys), ("values", values)],
        }
    }

    /// Load and check against the model in one step.
    pub fn load_for(path: &Path, kind: PrefixKind, info: &impl PrefixSizes) -> Result<Self> {
        let p = Prefix::load(path, kind)?;
        p.check(info, path)?;
        Ok(p)
    }

    /// Save atomically (write a temporary file beside it, then rename) as `.npz`, `.npy` or `.safetensors`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let named: Vec<(&str, &Array)> = match self {
            Prefix::SoftPrompt(a) => vec![("soft_prompt", a)],
            Prefix::Hidden(a) => vec![("prefix", a)],
            Prefix::KeyValue { keys, values } => vec![("keys", keys), ("values", values)],
        };
        write_arrays(path, &named)
    }
}
