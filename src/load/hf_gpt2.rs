//! Hugging Face GPT-2 folders: `config.json` (`model_type` `gpt2`), `model.safetensors` and
//! `tokenizer.json`. GPT-2 stores its projections as `Conv1D` weights `(in, out)`; they are transposed
//! into the `(out, in)` layout of [`crate::model::gpt`], and the names mapped onto minGPT's.

use super::hf::{mmap, safetensors_files};
use super::{LoadControl, Loaded};
use crate::error::{Error, Result};
use crate::model::gpt::{Gpt, GptConfig};
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The GPT config of a GPT-2 `config.json`.
pub fn config(dir: &Path, v: &serde_json::Value) -> Result<GptConfig> {
    let cfg_path = dir.join("config.json");
    let field = |k: &str| -> Result<usize> {
        v.get(k)
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
            .ok_or_else(|| {
                Error::format(&cfg_path, format!("field '{k}'"), "an integer", "missing")
            })
    };
    if let Some(act) = v.get("activation_function").and_then(|a| a.as_str()) {
        if act != "gelu_new" && act != "gelu_pytorch_tanh" {
            return Err(Error::unsupported(
                &cfg_path,
                "activation_function",
                format!("'{act}'"),
                "gelu_new",
            ));
        }
    }
    let cfg = GptConfig {
        vocab_size: field("vocab_size")?,
        n_positions: field("n_positions")?,
        n_layer: field("n_layer")?,
        n_head: field("n_head")?,
        n_embd: field("n_embd")?,
        skip_attn_layernorm: false,
        layer_norm_eps: v
            .get("layer_norm_epsilon")
            .and_then(|x| x.as_f64())
            .unwrap_or(1e-5),
        tied_head: true,
    };
    cfg.validate(&cfg_path)?;
    Ok(cfg)
}

/// HF name (without the optional `transformer.` prefix) of a minGPT name, and whether it is a
/// `Conv1D` weight that needs transposing.
fn hf_name(ours: &str) -> (String, bool) {
    let bare = ours.strip_prefix("transformer.").unwrap_or(ours);
    let conv = bare.ends_with(".weight")
        && (bare.contains(".c_attn.") || bare.contains(".c_proj.") || bare.contains(".c_fc."));
    (bare.to_string(), conv)
}

pub fn load(dir: &Path, cfg_json: &serde_json::Value, ctl: &LoadControl) -> Result<Loaded> {
    let cfg = config(dir, cfg_json)?;
    let files = safetensors_files(dir)?;
    let st = mmap(&files)?;
    let label = files.first().cloned().unwrap_or_else(|| dir.to_path_buf());
    // Checkpoints saved from GPT2LMHeadModel carry a `transformer.` prefix; those from GPT2Model do not.
    let lead = if st.get("transformer.wte.weight").is_ok() {
        "transformer."
    } else {
        ""
    };
    let wanted = cfg.expected_tensors();
    let mut weights = HashMap::new();
    let mut src_dtype = String::from("?");
    for (idx, (name, shape)) in wanted.iter().enumerate() {
        ctl.step(idx as f32 / wanted.len() as f32)?;
        let (bare, conv) = hf_name(name);
        let hf = format!("{lead}{bare}");
        let view = st.get(&hf).map_err(|_| Error::missing(&label, &hf))?;
        src_dtype = format!("{:?}", view.dtype());
        let stored: Vec<usize> = if conv {
            vec![shape[1], shape[0]]
        } else {
            shape.clone()
        };
        if view.shape() != stored.as_slice() {
            return Err(Error::shape(&label, &hf, &stored, view.shape()));
        }
        let t: Tensor = st.load(&hf, &Device::Cpu).map_err(|e| {
            Error::format(
                &label,
                format!("tensor '{hf}'"),
                "readable data",
                e.to_string(),
            )
        })?;
        let t = t.to_dtype(DType::F32)?;
        let t = if conv { t.t()?.contiguous()? } else { t };
        weights.insert(name.clone(), t);
    }
    let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let model = Gpt::load_with_source(vb, &cfg, "hf-folder", &format!("f32 (from {src_dtype})"))?;
    let bos = cfg_json
        .get("bos_token_id")
        .and_then(|v| v.as_u64())
        .map(|x| x as u32);
    let tokenizer = Tokenizer::from_file_or_ids_only(&dir.join("tokenizer.json"), bos)?;
    ctl.step(1.0)?;
    Ok(Loaded {
        model: Box::new(model),
        tokenizer,
        path: dir.to_path_buf(),
    })
}
