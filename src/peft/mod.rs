//! Hugging Face PEFT prompt-learning adapters, in and out.
//!
//! An adapter is a folder with `adapter_config.json` and `adapter_model.safetensors`; the latter holds
//! one tensor, `prompt_embeddings`, whose meaning depends on the config's `peft_type`
//! (PEFT 0.21, `PeftModel.get_prompt` and `get_prompt_embedding_to_save` in `peft/peft_model.py`):
//!
//! | `peft_type` | `prompt_embeddings` | our [`Prefix`](crate::prefix::Prefix) |
//! |---|---|---|
//! | `PROMPT_TUNING`, `P_TUNING` | `(P, d_model)`: the soft prompt (for P-tuning the encoder's output) | `SoftPrompt` |
//! | `PREFIX_TUNING` (with or without `prefix_projection`: PEFT saves the projected rows), `CARTRIDGE` | `(P, n_layers·2·n_kv·head_dim)` | `KeyValue` |
//!
//! A key/value row is viewed as `(n_layers·2, n_kv, head_dim)`: for layer `l`, block `2l` holds the
//! keys and block `2l + 1` the values, each head's `head_dim` numbers in Hugging Face order. PEFT puts
//! them in the cache as they are (no RoPE), and the content then sits at positions `P..P+N-1`: exactly
//! our key/value convention (`docs/conventions.md`, rule 6), so the numbers are copied, never rotated.
//! On grouped-query models PEFT sizes the prefix by the key/value heads (`num_attention_heads` =
//! `n_kv`, `token_dim` = `n_kv·head_dim`; `_prepare_prompt_learning_config` in `peft/utils/other.py`).

pub mod read;
pub mod write;

pub use read::{open, Adapter};
pub use write::save;

use crate::arrays::Array;
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// What `save_pretrained(..., safe_serialization=False)` writes: a pickle, which we never unpickle.
pub const PICKLE_FILE: &str = "adapter_model.bin";
/// The one tensor of a prompt-learning adapter.
pub const TENSOR: &str = "prompt_embeddings";

/// The prompt-learning methods whose saved tensor we can use exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftType {
    PromptTuning,
    PTuning,
    PrefixTuning,
    Cartridge,
}

impl PeftType {
    pub const SUPPORTED: &'static str = "PROMPT_TUNING, P_TUNING, PREFIX_TUNING, CARTRIDGE";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PROMPT_TUNING" => PeftType::PromptTuning,
            "P_TUNING" => PeftType::PTuning,
            "PREFIX_TUNING" => PeftType::PrefixTuning,
            "CARTRIDGE" => PeftType::Cartridge,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            PeftType::PromptTuning => "PROMPT_TUNING",
            PeftType::PTuning => "P_TUNING",
            PeftType::PrefixTuning => "PREFIX_TUNING",
            PeftType::Cartridge => "CARTRIDGE",
        }
    }

    /// Whether the tensor is a key/value prefix (else a soft prompt).
    pub fn is_key_value(self) -> bool {
        matches!(self, PeftType::PrefixTuning | PeftType::Cartridge)
    }
}

/// Whether `path` is (or is a file of) an adapter folder: a folder holding `adapter_config.json`, or a
/// file beside one. The app routes dropped paths with this (a bare `.safetensors` is otherwise a model).
pub fn is_adapter_path(path: &Path) -> bool {
    if path.is_dir() {
        return path.join(CONFIG_FILE).is_file();
    }
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| [CONFIG_FILE, WEIGHTS_FILE, PICKLE_FILE].contains(&n));
    named && path.parent().is_some_and(|d| d.join(CONFIG_FILE).is_file())
}

/// PEFT's rows `(P, n_layers·2·n_kv·hd)` as our `keys`, `values` `(n_layers, n_kv, P, hd)`.
/// `rows.len()` must be `p·n_layers·2·n_kv·hd` (the reader checks the tensor's shape first).
pub fn kv_from_rows(
    rows: &[f32],
    p: usize,
    n_layers: usize,
    kv: usize,
    hd: usize,
) -> (Array, Array) {
    let shape = [n_layers, kv, p, hd];
    let (mut keys, mut values) = (Array::zeros(&shape), Array::zeros(&shape));
    let width = n_layers * 2 * kv * hd;
    for t in 0..p {
        for l in 0..n_layers {
            for (part, out) in [(0, &mut keys), (1, &mut values)] {
                for h in 0..kv {
                    let src = t * width + ((2 * l + part) * kv + h) * hd;
                    let dst = ((l * kv + h) * p + t) * hd;
                    out.data[dst..dst + hd].copy_from_slice(&rows[src..src + hd]);
                }
            }
        }
    }
    (keys, values)
}

/// The inverse of [`kv_from_rows`]: `keys`, `values` `(n_layers, n_kv, P, hd)` as PEFT's rows
/// `(P, n_layers·2·n_kv·hd)`, row-major.
pub fn rows_from_kv(keys: &Array, values: &Array) -> Vec<f32> {
    let [n_layers, kv, p, hd] = keys.shape[..] else {
        return Vec::new();
    };
    let width = n_layers * 2 * kv * hd;
    let mut rows = vec![0.0; p * width];
    for t in 0..p {
        for l in 0..n_layers {
            for (part, src_a) in [(0, keys), (1, values)] {
                for h in 0..kv {
                    let dst = t * width + ((2 * l + part) * kv + h) * hd;
                    let src = ((l * kv + h) * p + t) * hd;
                    rows[dst..dst + hd].copy_from_slice(&src_a.data[src..src + hd]);
                }
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout by hand: `(P=2, L=2, KV=2, hd=3)`, every number its own PEFT flat index, read back
    /// through the view `(P, L·2, KV, hd)` that `get_prompt` applies.
    #[test]
    fn layout_is_get_prompts_view() {
        let (p, l, kv, hd) = (2, 2, 2, 3);
        let rows: Vec<f32> = (0..p * l * 2 * kv * hd).map(|i| i as f32).collect();
        let (keys, values) = kv_from_rows(&rows, p, l, kv, hd);
        for t in 0..p {
            for layer in 0..l {
                for h in 0..kv {
                    for d in 0..hd {
                        // view(P, L*2, KV, hd)[t, 2*layer + part, h, d]
                        let flat =
                            |part: usize| (((t * l * 2) + 2 * layer + part) * kv + h) * hd + d;
                        let ours = ((layer * kv + h) * p + t) * hd + d;
                        assert_eq!(keys.data[ours], flat(0) as f32);
                        assert_eq!(values.data[ours], flat(1) as f32);
                    }
                }
            }
        }
        assert_eq!(rows_from_kv(&keys, &values), rows);
    }
}
