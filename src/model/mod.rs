//! The one interface every architecture family implements: run the content tokens, optionally behind a
//! prefix, and return every attention matrix of the content queries.
//!
//! Layout of one run (see `docs/conventions.md`): the key columns of every captured
//! attention row are `[prefix (p) | content (n)]`. With no prefix `p` is 0 for RoPE models; for
//! learned-position toys the pretrained run keeps the content at its prefixed positions and puts the
//! placeholder token the model was trained with at positions `0..p` ([`Transformer::pretrained`]).

pub mod attention;
pub mod blas;
pub mod family;
pub mod fused;
pub mod gpt;
pub mod llama;
pub mod profile;
pub mod rope;
pub mod stepper;
pub mod train_ops;

pub use gpt::PrefixTensors;

use crate::error::Result;
use crate::prefix::Prefix;
use candle_core::Tensor;

/// Which family a checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Arch {
    /// GPT-style: learned absolute positions, LayerNorm, GELU MLP (the paper's minGPT toys, GPT-2).
    Gpt,
    /// LLaMA-style: RoPE, RMSNorm, SwiGLU, grouped-query attention.
    Llama,
    /// The paper's Theorem 1/2 constructions.
    Construction,
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::Gpt => "gpt",
            Arch::Llama => "llama",
            Arch::Construction => "construction",
        })
    }
}

/// Sizes a prefix, a view or a CLI check needs to know, the same for every family.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelInfo {
    pub arch: Arch,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_model: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Longest sequence (prefix + content) the model accepts; `None` when unbounded (RoPE).
    pub max_positions: Option<usize>,
    pub n_params: usize,
    /// How the weights are held in memory, e.g. "f32 (dequantized from Q4_1)".
    pub dtype: String,
    /// Where the weights came from, e.g. "gguf", "hf-folder", "toy-safetensors".
    pub source: String,
}

impl crate::prefix::PrefixSizes for ModelInfo {
    fn n_layers(&self) -> usize {
        self.n_layers
    }
    fn d_model(&self) -> usize {
        self.d_model
    }
    fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }
    fn head_dim(&self) -> usize {
        self.head_dim
    }
    fn max_positions(&self) -> Option<usize> {
        self.max_positions
    }
}

/// Which layers to capture (all layers always run; only these keep their matrices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSel {
    All,
    Only(Vec<usize>),
}

impl LayerSel {
    pub fn contains(&self, l: usize) -> bool {
        match self {
            LayerSel::All => true,
            LayerSel::Only(v) => v.contains(&l),
        }
    }
}

/// What one layer of one run leaves behind, for the content query rows only.
#[derive(Debug, Clone)]
pub struct LayerRun {
    pub layer: usize,
    /// `blocks.{l}.attn.hook_pattern` (names: `crate::hooks`): `(n_heads, n, p + n)`, columns
    /// `[prefix | content]`.
    pub pattern: Tensor,
    /// TransformerLens's `blocks.{l}.attn.hook_v` per key/value head: `(n_kv_heads, p + n,
    /// head_dim)`, the value vectors of the same columns.
    pub values: Tensor,
    /// `blocks.{l}.attn.hook_z`: `(n_heads, n, head_dim)`, the per-head attention output before `W_O`.
    pub z: Tensor,
}

/// One forward pass.
#[derive(Debug, Clone)]
pub struct Run {
    /// Number of key columns before the content (prefix length, or placeholders, or 0).
    pub p: usize,
    /// Number of content tokens.
    pub n: usize,
    pub layers: Vec<LayerRun>,
    /// Logits at the final content position, `(vocab,)`.
    pub logits_last: Tensor,
}

/// A model that can be run with a prefix. Implemented by every architecture family.
pub trait Transformer: Send + Sync {
    fn info(&self) -> &ModelInfo;

    /// Run `ids` (the content) behind `prefix` and capture the selected layers.
    fn forward(&self, ids: &[u32], prefix: Option<&Prefix>, layers: &LayerSel) -> Result<Run>;

    /// The pretrained run that a prefix of length `p` is compared against: the content with no prefix.
    /// RoPE models run the content alone at positions `0..n` (scores depend only on `i - j`);
    /// learned-position models keep the content at `p..p+n` with placeholder tokens before it.
    fn pretrained(&self, ids: &[u32], p: usize, layers: &LayerSel) -> Result<Run>;

    /// The embedding row of token `id` (to set a soft-prompt vector to a real token).
    fn token_embedding(&self, id: u32) -> Result<Vec<f32>>;

    /// True when the big projections run on OpenBLAS, whose own threads then do the parallel work
    /// (see [`stepper::on_compute_pool`]).
    fn blas_projections(&self) -> bool {
        false
    }

    /// Labelled facts about the model beyond [`ModelInfo`] for `inspect` (family, RoPE variant,
    /// sliding window), in display order.
    fn details(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Layer-by-layer access for the incremental evaluator; `None` means "recompute everything".
    fn stepper(&self) -> Option<&dyn stepper::Stepper> {
        None
    }

    /// The attention block's output (`blocks.{l}.hook_attn_out`, after the output projection
    /// `W_O`/`c_proj` and its bias) of layer `layer` for per-head outputs `z` `(H, n, head_dim)`:
    /// `(n, d_model)`. This is what the residual stream receives from attention; the paper's bias
    /// plot draws it.
    fn attn_block_output(&self, layer: usize, z: &Tensor) -> Result<Tensor> {
        let _ = (layer, z);
        Err(crate::error::Error::unsupported(
            self.info().source.as_str(),
            "attention block output",
            format!("architecture {}", self.info().arch),
            "models that implement Transformer::attn_block_output",
        ))
    }
}

/// Helpers for this module's unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::Tensor;

    /// A tensor's values, flattened.
    pub fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// The largest |a - b| over two tensors of the same shape.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (flat(a), flat(b));
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max)
    }
}
