// Shared helpers for the toy tests (included with `mod toy_common;`).
#![allow(dead_code)]

use candle_core::Tensor;
use prefixscope::load::toy;
use prefixscope::model::gpt::GptConfig;
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::Path;

// The toy tests do not all include `common` (its GUI half needs the `gui` feature); those that include
// both get two copies of this small module, on purpose.
#[allow(clippy::duplicate_mod)]
#[path = "common/scratch.rs"]
mod scratch;
#[allow(unused_imports)]
pub use scratch::{temp_dir as tmp_dir, Scratch};

pub fn cfg(n_layer: usize, n_head: usize, n_embd: usize, skip_ln: bool) -> GptConfig {
    GptConfig {
        vocab_size: 10,
        n_positions: 24,
        n_layer,
        n_head,
        n_embd,
        skip_attn_layernorm: skip_ln,
        layer_norm_eps: 1e-5,
        tied_head: false,
    }
}

/// A toy with weights large enough that attention is far from uniform (unlike a fresh init), with
/// `lm_head` equal to `wte` so that a tied GPT-2 export has the same logits.
pub fn random_tensors(cfg: &GptConfig, seed: u64) -> Vec<(String, Tensor)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut wte = None;
    for (name, shape) in cfg.expected_tensors() {
        let t = if name == "lm_head.weight" {
            wte.clone().unwrap()
        } else if name.contains("ln_") && name.ends_with(".weight") {
            (prefixscope::train::randn(&mut rng, &shape, 0.1).unwrap() + 1.0).unwrap()
        } else {
            prefixscope::train::randn(&mut rng, &shape, 0.4).unwrap()
        };
        if name == "transformer.wte.weight" {
            wte = Some(t.clone());
        }
        out.push((name, t));
    }
    out
}

pub fn write_toy(path: &Path, cfg: &GptConfig, seed: u64) {
    let mut meta = HashMap::new();
    meta.insert(toy::KIND.to_string(), "toy-gpt".to_string());
    meta.insert(toy::CONFIG.to_string(), serde_json::to_string(cfg).unwrap());
    meta.insert(toy::PREFIX_SIZE.to_string(), "1".to_string());
    toy::write(path, &random_tensors(cfg, seed), &meta).unwrap();
}
