//! Open a PEFT adapter (folder or its `adapter_model.safetensors`) as a [`Prefix`] for a loaded model.
//!
//! Order of the checks, so that nothing is allocated from a number that was not checked: the config's
//! `peft_type`, then its sizes against the model (`num_transformer_submodules`, `num_layers`,
//! `token_dim`, `num_attention_heads`, `num_virtual_tokens`), then the tensor's dtype and shape in the
//! safetensors header (the file is memory-mapped; the header's offsets are checked against its length),
//! and only then the numbers, which [`Prefix::check`] checks for non-finite values.

use super::{kv_from_rows, PeftType, CONFIG_FILE, PICKLE_FILE, TENSOR, WEIGHTS_FILE};
use crate::arrays::Array;
use crate::error::{Error, Result};
use crate::model::ModelInfo;
use crate::prefix::Prefix;
use std::path::{Path, PathBuf};

const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// An adapter read for a model.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub prefix: Prefix,
    pub peft_type: PeftType,
    pub config_path: PathBuf,
    pub weights_path: PathBuf,
    /// The config's `base_model_name_or_path` when it does not name the loaded model: worth a warning,
    /// not a refusal (a fine-tuned or renamed copy of the same model is common).
    pub warning: Option<String>,
}

/// Where the config and the weights of the adapter at `path` are: a folder, or one of its files.
/// A pickled `adapter_model.bin` is refused with the one-line conversion to safetensors.
pub fn locate(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let (dir, weights) = if meta.is_dir() {
        let st = path.join(WEIGHTS_FILE);
        let bin = path.join(PICKLE_FILE);
        if !path.join(CONFIG_FILE).is_file() {
            return Err(Error::format(
                path,
                "PEFT adapter folder",
                format!("{CONFIG_FILE} and {WEIGHTS_FILE}"),
                format!("no {CONFIG_FILE}"),
            ));
        }
        if !st.is_file() && bin.is_file() {
            return Err(pickle(&bin));
        }
        (path.to_path_buf(), st)
    } else {
        if crate::arrays::extension(path) == "bin" {
            return Err(pickle(path));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if path.file_name().and_then(|n| n.to_str()) == Some(CONFIG_FILE) {
            (dir.clone(), dir.join(WEIGHTS_FILE))
        } else {
            (dir, path.to_path_buf())
        }
    };
    let config = dir.join(CONFIG_FILE);
    if !config.is_file() {
        return Err(Error::format(
            &weights,
            "PEFT adapter",
            format!("{CONFIG_FILE} beside it"),
            format!("none in {}", dir.display()),
        ));
    }
    Ok((config, weights))
}

fn pickle(path: &Path) -> Error {
    let st = path.with_file_name(WEIGHTS_FILE);
    Error::unsupported(
        path,
        "adapter weights",
        "a pickle (.bin), which is never unpickled here",
        format!(
            "{WEIGHTS_FILE}; convert with: python -c \"import torch, safetensors.torch as s; s.save_file(torch.load('{}', weights_only=True), '{}')\"",
            path.display(),
            st.display()
        ),
    )
}

/// Read the adapter at `path` (folder or file) for the model `info` loaded from `model_path`.
pub fn open(path: &Path, info: &ModelInfo, model_path: &Path) -> Result<Adapter> {
    let (config_path, weights_path) = locate(path)?;
    // PEFT's configs are under 2 KB; never read an arbitrarily large file into memory.
    let len = std::fs::metadata(&config_path)
        .map_err(|e| Error::io(&config_path, e))?
        .len();
    if len > MAX_CONFIG_BYTES {
        return Err(Error::format(
            &config_path,
            "size",
            format!("at most {MAX_CONFIG_BYTES} bytes"),
            format!("{len} bytes"),
        ));
    }
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::format(
            &config_path,
            "JSON",
            "a valid adapter_config.json",
            e.to_string(),
        )
    })?;
    let peft_type = peft_type(&cfg, &config_path)?;
    let field = |name: &str| -> Result<usize> {
        let v = cfg.get(name).unwrap_or(&serde_json::Value::Null);
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| {
                Error::format(
                    &config_path,
                    format!("field '{name}'"),
                    "a non-negative integer",
                    v.to_string(),
                )
            })
    };
    let against = |name: &str, expected: usize, why: &str| -> Result<()> {
        let found = field(name)?;
        if found == expected {
            return Ok(());
        }
        Err(Error::format(
            &config_path,
            format!("field '{name}' against the model {}", model_path.display()),
            format!("{expected}{why}"),
            found.to_string(),
        ))
    };
    against("num_transformer_submodules", 1, " (a decoder-only model)")?;
    against("num_layers", info.n_layers, " layers")?;
    let kv = peft_type.is_key_value();
    if kv {
        let why = format!(
            " ({} key/value heads x head_dim {})",
            info.n_kv_heads, info.head_dim
        );
        against("token_dim", info.n_kv_heads * info.head_dim, &why)?;
        against("num_attention_heads", info.n_kv_heads, " key/value heads")?;
    } else {
        against("token_dim", info.d_model, " (d_model)")?;
        against("num_attention_heads", info.n_heads, " heads")?;
    }
    let p = field("num_virtual_tokens")?;
    if p == 0 {
        return Err(Error::format(
            &config_path,
            "field 'num_virtual_tokens'",
            "at least 1",
            "0",
        ));
    }
    let width = if kv {
        info.n_layers * 2 * info.n_kv_heads * info.head_dim
    } else {
        info.d_model
    };
    let rows = read_tensor(&weights_path, p, width)?;
    let prefix = if kv {
        let (keys, values) = kv_from_rows(&rows, p, info.n_layers, info.n_kv_heads, info.head_dim);
        Prefix::KeyValue { keys, values }
    } else {
        Prefix::SoftPrompt(Array {
            shape: vec![p, width],
            data: rows,
        })
    };
    prefix.check(info, &weights_path)?;
    let warning = base_model_warning(&cfg, &config_path, model_path);
    Ok(Adapter {
        prefix,
        peft_type,
        config_path,
        weights_path,
        warning,
    })
}

fn peft_type(cfg: &serde_json::Value, config_path: &Path) -> Result<PeftType> {
    let raw = cfg
        .get("peft_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            Error::format(
                config_path,
                "field 'peft_type'",
                "a string such as \"PREFIX_TUNING\"",
                cfg.get("peft_type")
                    .map_or("nothing".into(), |v| v.to_string()),
            )
        })?;
    PeftType::parse(raw).ok_or_else(|| {
        Error::unsupported(
            config_path,
            "peft_type",
            format!("'{raw}' (not a prompt-learning adapter that maps onto a prefix)"),
            PeftType::SUPPORTED,
        )
    })
}

/// The tensor `prompt_embeddings`, shape `(p, width)`, as f32 rows.
fn read_tensor(path: &Path, p: usize, width: usize) -> Result<Vec<f32>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is only read, and dropped before this function returns.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| {
        Error::format(
            path,
            "safetensors",
            "a valid safetensors file",
            e.to_string(),
        )
    })?;
    let view = st
        .tensor(TENSOR)
        .map_err(|_| Error::missing(path, TENSOR))?;
    if view.shape() != [p, width] {
        return Err(Error::shape(path, TENSOR, [p, width], view.shape()));
    }
    use safetensors::Dtype;
    let bytes = view.data();
    let out: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        other => {
            return Err(Error::unsupported(
                path,
                format!("dtype of '{TENSOR}'"),
                format!("{other:?}"),
                "F32, F16, BF16, F64",
            ))
        }
    };
    if out.len() != p * width {
        return Err(Error::shape(path, TENSOR, [p * width], [out.len()]));
    }
    // Named here by the file's own tensor and flat index (Prefix::check would name our arrays).
    if let Some(i) = out.iter().position(|x| !x.is_finite()) {
        return Err(Error::format(
            path,
            format!(
                "tensor '{TENSOR}' element {i} (row {}, column {})",
                i / width,
                i % width
            ),
            "a finite number",
            out[i].to_string(),
        ));
    }
    Ok(out)
}

/// A warning when the adapter's `base_model_name_or_path` does not name the loaded model. Names are
/// compared by their last path component, case-insensitively, the model's without its extension; a
/// model file named after the adapter's base plus a suffix (`SmolLM2-135M-Instruct.Q4_1.gguf` for
/// `HuggingFaceTB/SmolLM2-135M-Instruct`) counts as the same.
fn base_model_warning(
    cfg: &serde_json::Value,
    config_path: &Path,
    model_path: &Path,
) -> Option<String> {
    let base = cfg.get("base_model_name_or_path")?.as_str()?.trim();
    if base.is_empty() {
        return None;
    }
    let last = |s: &str| {
        s.trim_end_matches(['/', '\\'])
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or("")
            .to_lowercase()
    };
    let want = last(base);
    let model = last(&model_path.display().to_string());
    let stem = model.split('.').next().unwrap_or("").to_string();
    if !want.is_empty() && (model == want || model.starts_with(&want) || stem == want) {
        return None;
    }
    Some(format!(
        "{}: base_model_name_or_path '{base}' is not the loaded model {} (used anyway: the sizes match)",
        config_path.display(),
        model_path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_model_names() {
        let cfg = |b: &str| serde_json::json!({ "base_model_name_or_path": b });
        let c = Path::new("a/adapter_config.json");
        let w = |b: &str, m: &str| base_model_warning(&cfg(b), c, Path::new(m)).is_some();
        assert!(!w(
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "/x/SmolLM2-135M-Instruct.Q4_1.gguf"
        ));
        assert!(!w(
            "tests/fixtures/peft/tiny-llama",
            "tests/fixtures/peft/tiny-llama/"
        ));
        assert!(w(
            "tests/fixtures/peft/tiny-gqa",
            "tests/fixtures/peft/tiny-llama"
        ));
        assert!(w("gpt2", "/m/SmolLM2-135M.gguf"));
    }
}
