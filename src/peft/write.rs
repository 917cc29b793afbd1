//! Save any prefix as a PEFT adapter folder that `PeftModel.from_pretrained(base, folder)` loads:
//!
//! - a soft prompt as `PROMPT_TUNING`, `prompt_embeddings` `(P, d_model)`;
//! - a key/value prefix as `PREFIX_TUNING` without projection, `prompt_embeddings`
//!   `(P, n_layers·2·n_kv·head_dim)` in `get_prompt`'s layout ([`rows_from_kv`]);
//! - the paper's per-layer prefix as the key/value prefix it induces, then as `PREFIX_TUNING`: for each
//!   layer the frozen model's keys (rotated at the prefix positions `0..P`) and values of that layer's
//!   prefix vectors, from the model's own [`Stepper::prefix_kv`](crate::incremental::Stepper), the
//!   very numbers its forward pass attends to. With the content at `P..P+N-1` in both, PEFT then
//!   computes the same attention.
//!
//! The folder is written whole into a temporary folder beside it and renamed into place; an existing
//! folder is replaced only with `force`, and only when it is an adapter folder (or empty).

use super::{rows_from_kv, PeftType, CONFIG_FILE, TENSOR, WEIGHTS_FILE};
use crate::arrays::Array;
use crate::error::{Error, Result};
use crate::model::Transformer;
use crate::prefix::Prefix;
use std::path::{Path, PathBuf};

/// Save `prefix` (checked against `model`) as an adapter folder `dir`; `base_model` goes into
/// `base_model_name_or_path`. Returns the `peft_type` written.
pub fn save(
    dir: &Path,
    prefix: &Prefix,
    model: &dyn Transformer,
    base_model: &str,
    force: bool,
) -> Result<PeftType> {
    let info = model.info();
    check_target(dir, force)?;
    prefix.check(info, Path::new("prefix"))?;
    let p = prefix.len();
    let (peft_type, rows, width) = match prefix {
        Prefix::SoftPrompt(a) => (PeftType::PromptTuning, a.data.clone(), info.d_model),
        Prefix::KeyValue { keys, values } => (
            PeftType::PrefixTuning,
            rows_from_kv(keys, values),
            info.n_layers * 2 * info.n_kv_heads * info.head_dim,
        ),
        Prefix::Hidden(_) => {
            let (keys, values) = induced_key_values(prefix, model)?;
            (
                PeftType::PrefixTuning,
                rows_from_kv(&keys, &values),
                info.n_layers * 2 * info.n_kv_heads * info.head_dim,
            )
        }
    };
    if rows.len() != p * width {
        return Err(Error::Internal("adapter rows do not match (P, width)"));
    }
    let config = config_json(peft_type, p, model, base_model);
    let bytes = safetensors_bytes(&rows, p, width)?;
    let text = serde_json::to_string_pretty(&config).map_err(|e| {
        Error::format(
            dir,
            "adapter_config.json",
            "serializable JSON",
            e.to_string(),
        )
    })?;
    write_folder(
        dir,
        &[(CONFIG_FILE, text.as_bytes()), (WEIGHTS_FILE, &bytes)],
    )?;
    Ok(peft_type)
}

/// The key/value prefix a paper-form prefix induces: per layer `(n_kv, P, hd)` keys (rotated at
/// `0..P`) and values, as `(n_layers, n_kv, P, hd)` arrays.
pub fn induced_key_values(prefix: &Prefix, model: &dyn Transformer) -> Result<(Array, Array)> {
    let info = model.info();
    let stepper = model.stepper().ok_or_else(|| {
        Error::unsupported(
            info.source.as_str(),
            "saving the paper's prefix as an adapter",
            format!("architecture {}", info.arch),
            "models with layer-by-layer access (LLaMA-style, GPT)",
        )
    })?;
    let (kv, hd, p) = (info.n_kv_heads, info.head_dim, prefix.len());
    let shape = [info.n_layers, kv, p, hd];
    let (mut keys, mut values) = (Array::zeros(&shape), Array::zeros(&shape));
    let per = kv * p * hd;
    for l in 0..info.n_layers {
        let (k, v) = stepper.prefix_kv(l, Some(prefix))?.ok_or(Error::Internal(
            "the paper's prefix gave no keys and values",
        ))?;
        let (k, v) = (Array::from_tensor(&k)?, Array::from_tensor(&v)?);
        if k.shape != [kv, p, hd] || v.shape != [kv, p, hd] {
            return Err(Error::Internal("prefix keys/values of an unexpected shape"));
        }
        keys.data[l * per..(l + 1) * per].copy_from_slice(&k.data);
        values.data[l * per..(l + 1) * per].copy_from_slice(&v.data);
    }
    Ok((keys, values))
}

/// What PEFT 0.21.2 writes for these types (the fields `PeftConfig.from_pretrained` reads), sized by
/// the key/value heads for a key/value prefix as `_prepare_prompt_learning_config` does.
fn config_json(t: PeftType, p: usize, model: &dyn Transformer, base: &str) -> serde_json::Value {
    let info = model.info();
    let mut c = serde_json::json!({
        "auto_mapping": null,
        "base_model_name_or_path": base,
        "inference_mode": true,
        "modules_to_save": null,
        "num_layers": info.n_layers,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": p,
        "peft_type": t.name(),
        "revision": null,
        "task_type": "CAUSAL_LM",
    });
    let extra = if t.is_key_value() {
        let token_dim = info.n_kv_heads * info.head_dim;
        serde_json::json!({
            "encoder_hidden_size": token_dim,
            "num_attention_heads": info.n_kv_heads,
            "prefix_projection": false,
            "token_dim": token_dim,
        })
    } else {
        serde_json::json!({
            "num_attention_heads": info.n_heads,
            "prompt_tuning_init": "RANDOM",
            "prompt_tuning_init_text": null,
            "token_dim": info.d_model,
            "tokenizer_kwargs": null,
            "tokenizer_name_or_path": null,
        })
    };
    if let (Some(c), serde_json::Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
    }
    c
}

fn safetensors_bytes(rows: &[f32], p: usize, width: usize) -> Result<Vec<u8>> {
    let data: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![p, width], &data)
        .map_err(|e| Error::format(WEIGHTS_FILE, "tensor", "a valid tensor", e.to_string()))?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize([(TENSOR, view)], Some(meta)).map_err(|e| {
        Error::format(
            WEIGHTS_FILE,
            "safetensors",
            "a serializable tensor",
            e.to_string(),
        )
    })
}

/// Refuse an existing `dir` without `force`, and with `force` anything but an adapter folder or an
/// empty one (so that a mistyped path never deletes a folder of other files).
pub fn check_target(dir: &Path, force: bool) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return Ok(());
    };
    if !force {
        return Err(Error::format(
            dir,
            "adapter folder",
            "a path that does not exist yet (or --force to replace an adapter folder)",
            "it exists",
        ));
    }
    if !meta.is_dir() {
        return Err(Error::format(dir, "adapter folder", "a folder", "a file"));
    }
    let empty = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .next()
        .is_none();
    if !empty && !dir.join(CONFIG_FILE).is_file() {
        return Err(Error::format(
            dir,
            "adapter folder to replace",
            format!("an adapter folder (with {CONFIG_FILE}) or an empty one"),
            "a folder of other files",
        ));
    }
    Ok(())
}

/// Write the files into `.NAME.tmp.PID` beside `dir`, then rename it into place (the old folder, when
/// replaced, is moved aside first and removed after).
fn write_folder(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| {
            Error::format(
                dir,
                "adapter folder",
                "a path ending in a folder name",
                "none",
            )
        })?;
    let parent = match dir.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.tmp.{pid}"));
    let old = parent.join(format!(".{name}.old.{pid}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = files.iter().try_for_each(|(f, bytes)| {
        let path = tmp.join(f);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let replaced = dir.exists();
    if replaced {
        if let Err(e) = std::fs::rename(dir, &old) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::io(dir, e));
        }
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        if replaced {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::io(dir, e));
    }
    if replaced {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}
