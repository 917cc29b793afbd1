//! Hugging Face folders: `config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`, and `tokenizer.json`. Safetensors are memory-mapped.

use super::{LoadControl, Loaded};
use crate::error::{Error, Result};
use crate::model::llama::{Llama, LlamaConfig};
use crate::tokenizer::Tokenizer;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `dir/config.json`, read once (bounded in size), parsed, and every size and float in it checked
/// against the limits ([`super::limits::check_config_json`]) before anything is built from it.
pub fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let cfg_path = dir.join("config.json");
    let text = super::limits::read_config_text(&cfg_path)?;
    let v = serde_json::from_str(&text)
        .map_err(|e| Error::format(&cfg_path, "JSON", "a valid config.json", e.to_string()))?;
    super::limits::check_config_json(&cfg_path, &v)?;
    Ok(v)
}

/// The safetensors files of a folder: `model.safetensors`, or the shards named by the index.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|_| {
        Error::format(
            dir,
            "weights",
            "model.safetensors or model.safetensors.index.json",
            "neither",
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(&index, "JSON", "a valid safetensors index", e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(&index, "field 'weight_map'", "an object", "missing"))?;
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|f| f.as_str())
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Memory-map the files, reporting a truncated or corrupt file by name.
pub fn mmap(files: &[PathBuf]) -> Result<MmapedSafetensors> {
    for f in files {
        // Open each alone first so that an error names the file that is broken.
        // SAFETY: the file is only read, and we do not keep this mapping.
        unsafe { MmapedSafetensors::new(f) }.map_err(|e| {
            Error::format(
                f,
                "safetensors",
                "a complete safetensors file",
                e.to_string(),
            )
        })?;
    }
    // SAFETY: as above; the mapping lives as long as the returned value.
    unsafe { MmapedSafetensors::multi(files) }.map_err(|e| {
        Error::format(
            files.first().map(|p| p.as_path()).unwrap_or(Path::new("")),
            "safetensors",
            "readable shards",
            e.to_string(),
        )
    })
}

pub fn load(dir: &Path, ctl: &LoadControl) -> Result<Loaded> {
    let cfg_json = read_config(dir)?;
    let model_type = cfg_json
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if model_type == "gpt2" {
        return super::hf_gpt2::load(dir, &cfg_json, ctl);
    }
    let cfg_path = dir.join("config.json");
    // The family by model_type; every key implemented, neutral, or refused by name.
    let cfg = LlamaConfig::from_hf_json(&cfg_json, &cfg_path)?;
    let files = safetensors_files(dir)?;
    let st = mmap(&files)?;
    cfg.check_layers_against_file(&files_label(&files), st.tensors().len())?;
    let wanted = cfg.expected_tensors();
    check_no_extra_tensors(&st, &files, &cfg)?;
    let mut weights = HashMap::new();
    for (idx, (name, shape)) in wanted.iter().enumerate() {
        ctl.step(idx as f32 / wanted.len() as f32)?;
        let view = match st.get(name) {
            Ok(v) => v,
            Err(_) => return Err(Error::missing(files_label(&files), name)),
        };
        if view.shape() != shape.as_slice() {
            return Err(Error::shape(files_label(&files), name, shape, view.shape()));
        }
        let t: Tensor = st.load(name, &Device::Cpu).map_err(|e| {
            Error::format(
                files_label(&files),
                format!("tensor '{name}'"),
                "readable data",
                e.to_string(),
            )
        })?;
        weights.insert(name.clone(), t.to_dtype(DType::F32)?);
    }
    let dtype = format!("f32 (from {})", safetensors_dtype(&st, &wanted[0].0));
    let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let model = Llama::load(vb, &cfg, "hf-folder", &dtype)?;
    let tok_path = dir.join("tokenizer.json");
    let bos = cfg_json
        .get("bos_token_id")
        .and_then(|v| v.as_u64())
        .map(|x| x as u32);
    let tokenizer = Tokenizer::from_file_or_ids_only(&tok_path, bos)?;
    ctl.step(1.0)?;
    Ok(Loaded {
        model: Box::new(model),
        tokenizer,
        path: dir.to_path_buf(),
    })
}

/// Strict loading: every tensor in the files is one the model reads, or the load is refused naming
/// it (a tensor we would skip is a feature we would silently drop: a bias, a norm, a scale).
///
/// The one exception is a stored RoPE table (`...rotary_emb.inv_freq`, a buffer older checkpoints
/// saved), accepted only when it equals the frequencies computed from the config.
pub fn check_no_extra_tensors(
    st: &MmapedSafetensors,
    files: &[PathBuf],
    cfg: &LlamaConfig,
) -> Result<()> {
    let wanted: std::collections::HashSet<String> =
        cfg.expected_tensors().into_iter().map(|(n, _)| n).collect();
    let mut names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    names.sort();
    for name in names {
        if wanted.contains(&name) {
            continue;
        }
        if let Some(layer) = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.strip_suffix(".self_attn.rotary_emb.inv_freq"))
            .and_then(|l| l.parse::<usize>().ok())
        {
            let stored = st
                .load(&name, &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| {
                    Error::format(
                        files_label(files),
                        format!("tensor '{name}'"),
                        "readable data",
                        e.to_string(),
                    )
                })?;
            let ours = cfg.rope(layer).inv_freq();
            let same = stored.len() == ours.len()
                && stored
                    .iter()
                    .zip(&ours)
                    .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1e-30) + 1e-12);
            if same {
                continue;
            }
            return Err(Error::format(
                files_label(files),
                format!("tensor '{name}'"),
                "the RoPE frequencies the config states",
                "other frequencies",
            ));
        }
        return Err(Error::unsupported(
            files_label(files),
            format!("tensor '{name}'"),
            format!(
                "present in the checkpoint, not read by family '{}' with this config",
                cfg.family
            ),
            "only the tensors the family reads (an unread tensor would be a silently dropped feature)",
        ));
    }
    Ok(())
}

fn files_label(files: &[PathBuf]) -> PathBuf {
    match files {
        [one] => one.clone(),
        _ => files
            .first()
            .and_then(|f| f.parent())
            .map(|d| d.to_path_buf())
            .unwrap_or_default(),
    }
}

fn safetensors_dtype(st: &MmapedSafetensors, name: &str) -> String {
    st.get(name)
        .map(|v| format!("{:?}", v.dtype()))
        .unwrap_or_else(|_| "?".into())
}
