//! Sizes read from a file, bounded before anything is built from them.
//!
//! A loader builds lists and tensors from the sizes a config states (one expected-tensor entry per
//! layer, one row per token). A hostile or corrupt file can state any number, so every size is
//! checked here first:
//! - against a sane limit per named field ([`LAYERS`], [`HEADS`], ...), far above any real model
//!   (the largest public checkpoints have 126 layers, 128 heads, a 16,384 hidden size, a 256k
//!   vocabulary) and far below what would exhaust memory;
//! - by checked arithmetic for every product ([`product`], [`tensor_bytes`]);
//! - against the file's length: a tensor cannot hold more bytes than the file ([`within_file`]).
//!
//! Floats that the maths divides by or exponentiates are checked too: `rope_theta > 0`, every
//! epsilon `>= 0`, all finite.
//!
//! The hooks: [`check_gpt`] (toy `n_layer`, ...), [`check_hf_folder`] (`config.json` of any family,
//! then each safetensors file through [`super::safetensors_check`]), and the GGUF metadata through
//! [`check_gguf_meta`] (called by [`super::gguf_check`]).

use crate::error::{Error, Result};
use std::path::Path;

/// A sane upper bound for one named size.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// What the field means, for messages.
    pub what: &'static str,
    pub max: u64,
}

pub const LAYERS: Limit = Limit {
    what: "layers",
    max: 1024,
};
pub const HEADS: Limit = Limit {
    what: "attention heads",
    max: 1024,
};
pub const KV_HEADS: Limit = Limit {
    what: "key/value heads",
    max: 1024,
};
pub const HIDDEN: Limit = Limit {
    what: "hidden size",
    max: 1 << 17,
};
pub const HEAD_DIM: Limit = Limit {
    what: "head dimension",
    max: 1 << 13,
};
pub const INTERMEDIATE: Limit = Limit {
    what: "intermediate (MLP) size",
    max: 1 << 20,
};
pub const VOCAB: Limit = Limit {
    what: "vocabulary size",
    max: 1 << 23,
};
pub const CONTEXT: Limit = Limit {
    what: "context length",
    max: 1 << 24,
};

/// The largest `config.json` we read (real ones are a few kB).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// The largest `tokenizer.json` we hand to the tokenizers crate (real ones: 2-35 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 512 << 20;

/// `value` of `field` within `limit`, as a `usize`.
pub fn size(path: &Path, field: &str, value: u64, limit: Limit) -> Result<usize> {
    if value > limit.max {
        return Err(Error::format(
            path,
            field,
            format!("at most {} ({}; a sane limit)", limit.max, limit.what),
            value.to_string(),
        ));
    }
    usize::try_from(value).map_err(|_| {
        Error::format(
            path,
            field,
            "a size this machine can index",
            value.to_string(),
        )
    })
}

/// The product of `dims` by checked arithmetic; `what` names the tensor or array in the error.
pub fn product(path: &Path, what: &str, dims: &[u64]) -> Result<u64> {
    dims.iter().try_fold(1u64, |acc, &d| {
        acc.checked_mul(d).ok_or_else(|| {
            Error::format(
                path,
                what,
                "a shape whose element count fits in 64 bits",
                format!("{dims:?}"),
            )
        })
    })
}

/// Bytes of a tensor of `dims` at `elem_bytes` per element, checked for overflow.
pub fn tensor_bytes(path: &Path, what: &str, dims: &[u64], elem_bytes: u64) -> Result<u64> {
    let n = product(path, what, dims)?;
    n.checked_mul(elem_bytes).ok_or_else(|| {
        Error::format(
            path,
            what,
            "a byte size that fits in 64 bits",
            format!("{dims:?} x {elem_bytes} bytes"),
        )
    })
}

/// A tensor of `bytes` cannot come from a file of `file_len` bytes if it is larger.
pub fn within_file(path: &Path, what: &str, bytes: u64, file_len: u64) -> Result<()> {
    if bytes > file_len {
        return Err(Error::format(
            path,
            what,
            format!("at most the file's {file_len} bytes"),
            format!("{bytes} bytes declared"),
        ));
    }
    Ok(())
}

/// `a + b` or an error naming `what`.
pub fn add(path: &Path, what: &str, a: u64, b: u64) -> Result<u64> {
    a.checked_add(b).ok_or_else(|| {
        Error::format(
            path,
            what,
            "an offset that fits in 64 bits",
            format!("{a} + {b}"),
        )
    })
}

/// How a float field must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatRule {
    /// Finite and `> 0` (RoPE base, temperatures).
    Positive,
    /// Finite and `>= 0` (norm epsilons).
    NonNegative,
    /// Finite.
    Finite,
}

pub fn float(path: &Path, field: &str, v: f64, rule: FloatRule) -> Result<f64> {
    let ok = v.is_finite()
        && match rule {
            FloatRule::Positive => v > 0.0,
            FloatRule::NonNegative => v >= 0.0,
            FloatRule::Finite => true,
        };
    if !ok {
        let expected = match rule {
            FloatRule::Positive => "a finite number > 0",
            FloatRule::NonNegative => "a finite number >= 0",
            FloatRule::Finite => "a finite number",
        };
        return Err(Error::format(path, field, expected, v.to_string()));
    }
    Ok(v)
}

/// Integer fields of Hugging Face configs (every family we read or may read), with their limits.
const HF_SIZES: &[(&str, Limit)] = &[
    ("num_hidden_layers", LAYERS),
    ("n_layer", LAYERS),
    ("n_layers", LAYERS),
    ("num_layers", LAYERS),
    ("num_attention_heads", HEADS),
    ("n_head", HEADS),
    ("n_heads", HEADS),
    ("num_heads", HEADS),
    ("num_key_value_heads", KV_HEADS),
    ("n_kv_heads", KV_HEADS),
    ("multi_query_group_num", KV_HEADS),
    ("hidden_size", HIDDEN),
    ("n_embd", HIDDEN),
    ("d_model", HIDDEN),
    ("head_dim", HEAD_DIM),
    ("kv_channels", HEAD_DIM),
    ("intermediate_size", INTERMEDIATE),
    ("n_inner", INTERMEDIATE),
    ("ffn_dim", INTERMEDIATE),
    ("ffn_hidden_size", INTERMEDIATE),
    ("vocab_size", VOCAB),
    ("padded_vocab_size", VOCAB),
    ("max_position_embeddings", CONTEXT),
    ("n_positions", CONTEXT),
    ("n_ctx", CONTEXT),
    ("seq_length", CONTEXT),
    ("sliding_window", CONTEXT),
];

/// Float fields of Hugging Face configs with their rules.
const HF_FLOATS: &[(&str, FloatRule)] = &[
    ("rope_theta", FloatRule::Positive),
    ("rotary_emb_base", FloatRule::Positive),
    ("rms_norm_eps", FloatRule::NonNegative),
    ("layer_norm_eps", FloatRule::NonNegative),
    ("layer_norm_epsilon", FloatRule::NonNegative),
    ("norm_eps", FloatRule::NonNegative),
    ("attn_logit_softcapping", FloatRule::Positive),
    ("final_logit_softcapping", FloatRule::Positive),
    ("query_pre_attn_scalar", FloatRule::Positive),
];

/// Bound every known size and float of a parsed `config.json` (and of a nested `text_config`).
/// Fields of the wrong JSON type are left to the family's parser, which names them.
pub fn check_config_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let Some(obj) = v.as_object() else {
        return Ok(());
    };
    for (field, limit) in HF_SIZES {
        match obj.get(*field) {
            Some(x) if x.is_u64() => {
                size(path, field, x.as_u64().unwrap_or(u64::MAX), *limit)?;
            }
            // A size written as a float (1e12) is refused by the typed parse; a huge one must not
            // reach it either.
            Some(x) if x.is_f64() => {
                let f = x.as_f64().unwrap_or(f64::INFINITY);
                if !(0.0..=limit.max as f64).contains(&f) {
                    return Err(Error::format(
                        path,
                        *field,
                        format!("an integer, at most {} ({})", limit.max, limit.what),
                        x.to_string(),
                    ));
                }
            }
            _ => {}
        }
    }
    for (field, rule) in HF_FLOATS {
        if let Some(x) = obj.get(*field).and_then(|x| x.as_f64()) {
            float(path, field, x, *rule)?;
        }
    }
    if let Some(t) = obj.get("text_config") {
        check_config_json(path, t)?;
    }
    Ok(())
}

/// `config.json` as text, refused when it is larger than [`MAX_CONFIG_BYTES`] (read through a
/// bounded reader, so a file that grows or a pipe cannot make it allocate more). Read exactly once
/// per load: [`super::hf::read_config`] parses and checks what this returns.
pub fn read_config_text(cfg_path: &Path) -> Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(cfg_path).map_err(|e| Error::io(cfg_path, e))?;
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(cfg_path, e))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::format(
            cfg_path,
            "size",
            format!("a config.json of at most {MAX_CONFIG_BYTES} bytes"),
            "more",
        ));
    }
    String::from_utf8(bytes)
        .map_err(|e| Error::format(cfg_path, "encoding", "UTF-8 text", e.to_string()))
}

/// Every safetensors file of a Hugging Face folder with [`super::safetensors_check::check_file`]
/// and its `tokenizer.json` with [`super::tokenizer_check::check`]: the hook before the loader.
/// (`config.json` is checked where it is read, [`super::hf::read_config`].) A missing file is left
/// to the loader, which reports it as it always has.
pub fn check_hf_folder(dir: &Path) -> Result<()> {
    if let Ok(files) = super::hf::safetensors_files(dir) {
        for f in files {
            if f.exists() {
                super::safetensors_check::check_file(&f)?;
            }
        }
    }
    let tok = dir.join("tokenizer.json");
    if tok.exists() {
        super::tokenizer_check::check(&tok)?;
    }
    Ok(())
}

/// The toy GPT config of one of our files.
pub fn check_gpt(path: &Path, cfg: &crate::model::gpt::GptConfig) -> Result<()> {
    let field = |f: &str| format!("metadata 'prefixscope.config' field '{f}'");
    size(path, &field("n_layer"), cfg.n_layer as u64, LAYERS)?;
    size(path, &field("n_head"), cfg.n_head as u64, HEADS)?;
    size(path, &field("n_embd"), cfg.n_embd as u64, HIDDEN)?;
    size(path, &field("vocab_size"), cfg.vocab_size as u64, VOCAB)?;
    size(path, &field("n_positions"), cfg.n_positions as u64, CONTEXT)?;
    float(
        path,
        &field("layer_norm_eps"),
        cfg.layer_norm_eps,
        FloatRule::NonNegative,
    )?;
    Ok(())
}

/// A GGUF metadata value as far as the checks need it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaNum {
    Int(i128),
    Float(f64),
}

/// GGUF keys (after `{arch}.`) with their limits.
const GGUF_SIZES: &[(&str, Limit)] = &[
    ("block_count", LAYERS),
    ("attention.head_count", HEADS),
    ("attention.head_count_kv", KV_HEADS),
    ("embedding_length", HIDDEN),
    ("attention.key_length", HEAD_DIM),
    ("attention.value_length", HEAD_DIM),
    ("rope.dimension_count", HEAD_DIM),
    ("feed_forward_length", INTERMEDIATE),
    ("vocab_size", VOCAB),
    ("context_length", CONTEXT),
];

const GGUF_FLOATS: &[(&str, FloatRule)] = &[
    ("rope.freq_base", FloatRule::Positive),
    ("attention.layer_norm_rms_epsilon", FloatRule::NonNegative),
    ("attention.layer_norm_epsilon", FloatRule::NonNegative),
];

/// Check the architecture's sizes and floats in GGUF metadata; `get` looks a key up (scalars, and
/// each element of a per-layer array).
pub fn check_gguf_meta(path: &Path, arch: &str, get: &dyn Fn(&str) -> Vec<MetaNum>) -> Result<()> {
    for (key, limit) in GGUF_SIZES {
        let full = format!("{arch}.{key}");
        for v in get(&full) {
            let n = match v {
                MetaNum::Int(n) => n,
                MetaNum::Float(_) => continue,
            };
            if n < 0 {
                return Err(Error::format(
                    path,
                    format!("metadata '{full}'"),
                    format!("a size >= 0 ({})", limit.what),
                    n.to_string(),
                ));
            }
            size(
                path,
                &format!("metadata '{full}'"),
                u64::try_from(n).unwrap_or(u64::MAX),
                *limit,
            )?;
        }
    }
    for (key, rule) in GGUF_FLOATS {
        let full = format!("{arch}.{key}");
        for v in get(&full) {
            let x = match v {
                MetaNum::Float(x) => x,
                MetaNum::Int(n) => n as f64,
            };
            float(path, &format!("metadata '{full}'"), x, *rule)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_beyond_the_limits_are_refused_by_name() {
        let p = Path::new("config.json");
        let v: serde_json::Value = serde_json::json!({"num_hidden_layers": 1_000_000_000_000u64});
        let e = check_config_json(p, &v).unwrap_err().one_line();
        assert!(
            e.contains("num_hidden_layers") && e.contains("1000000000000"),
            "{e}"
        );
        let v = serde_json::json!({"num_hidden_layers": 30, "rope_theta": 0.0});
        let e = check_config_json(p, &v).unwrap_err().one_line();
        assert!(e.contains("rope_theta"), "{e}");
        let v = serde_json::json!({"rms_norm_eps": -1e-5});
        assert!(check_config_json(p, &v).is_err());
        let v = serde_json::json!({"text_config": {"hidden_size": 1u64 << 40}});
        assert!(check_config_json(p, &v).is_err());
        // SmolLM2-135M's sizes pass.
        let v = serde_json::json!({"num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "hidden_size": 576, "intermediate_size": 1536,
            "vocab_size": 49152, "max_position_embeddings": 8192, "rope_theta": 100000.0,
            "rms_norm_eps": 1e-5});
        check_config_json(p, &v).unwrap();
    }

    #[test]
    fn products_are_checked() {
        let p = Path::new("x.npy");
        assert!(product(p, "a", &[1 << 58, 576]).is_err());
        assert_eq!(product(p, "a", &[3, 4]).unwrap(), 12);
        assert!(tensor_bytes(p, "a", &[1 << 62], 4).is_err());
        assert!(within_file(p, "a", 10, 9).is_err());
    }
}
