//! Our own safetensors files, told apart by the metadata key `prefixscope.kind`:
//!
//! - `toy-gpt`: a pretrained toy GPT (minGPT names, `(out, in)` weights), config in `prefixscope.config`;
//! - `toy-finetuned`: the same, fully fine-tuned from the file named in `prefixscope.base`;
//! - `toy-prefix`: the paper's per-layer prefix, array `prefix` `(n_layer, P, n_embd)` (so that
//!   `Prefix::load(path, PrefixKind::Hidden)` reads it too), for the model in `prefixscope.base`;
//! - `toy-lora`: a LoRA adapter (`transformer.h.{i}.{module}.lora_A/B`) for `prefixscope.base`.
//!
//! Every file also records `prefixscope.task`, `.seed`, `.steps`, `.accuracy` (when measured),
//! `.prefix_size` (the placeholder count of the data layout) and `.train` (the schedule, JSON).

use super::{LoadControl, Loaded};
use crate::error::{Error, Result};
use crate::model::gpt::{Gpt, GptConfig, Lora, LoraPair};
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

pub const KIND: &str = "prefixscope.kind";
pub const CONFIG: &str = "prefixscope.config";
pub const TASK: &str = "prefixscope.task";
pub const SEED: &str = "prefixscope.seed";
pub const STEPS: &str = "prefixscope.steps";
pub const ACCURACY: &str = "prefixscope.accuracy";
pub const BASE: &str = "prefixscope.base";
pub const PREFIX_SIZE: &str = "prefixscope.prefix_size";
pub const TRAIN: &str = "prefixscope.train";
pub const WALL_S: &str = "prefixscope.wall_s";

/// The kinds of toy file this module reads.
pub const MODEL_KINDS: &[&str] = &["toy-gpt", "toy-finetuned"];

/// A file's tensors and metadata.
pub struct ToyFile {
    pub tensors: HashMap<String, Tensor>,
    pub meta: HashMap<String, String>,
}

impl ToyFile {
    pub fn kind(&self) -> &str {
        self.meta.get(KIND).map(|s| s.as_str()).unwrap_or("")
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(|s| s.as_str())
    }

    /// A metadata field that must be there, parsed.
    pub fn require<T: std::str::FromStr>(&self, path: &Path, key: &str) -> Result<T> {
        let raw = self.get(key).ok_or_else(|| {
            Error::format(path, format!("metadata '{key}'"), "present", "missing")
        })?;
        raw.parse::<T>().map_err(|_| {
            Error::format(
                path,
                format!("metadata '{key}'"),
                "a valid value",
                format!("'{raw}'"),
            )
        })
    }

    pub fn config(&self, path: &Path) -> Result<GptConfig> {
        let raw = self.get(CONFIG).ok_or_else(|| {
            Error::format(path, format!("metadata '{CONFIG}'"), "present", "missing")
        })?;
        let cfg: GptConfig = serde_json::from_str(raw).map_err(|e| {
            Error::format(
                path,
                format!("metadata '{CONFIG}'"),
                "a GPT config (JSON)",
                e.to_string(),
            )
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The placeholder count the data layout uses (`[0]*p + input + output`).
    pub fn prefix_size(&self, path: &Path) -> Result<usize> {
        self.require(path, PREFIX_SIZE)
    }
}

/// Read a safetensors file with its metadata.
pub fn read(path: &Path) -> Result<ToyFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::format(
            path,
            "safetensors",
            "a valid safetensors file",
            e.to_string(),
        )
    })?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        Error::format(
            path,
            "safetensors",
            "a valid safetensors header",
            e.to_string(),
        )
    })?;
    let meta = header.metadata().clone().unwrap_or_default();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        use candle_core::safetensors::Load;
        let t = view.load(&Device::Cpu).map_err(|e| {
            Error::format(
                path,
                format!("tensor '{name}'"),
                "readable data",
                e.to_string(),
            )
        })?;
        tensors.insert(name, t.to_dtype(DType::F32)?);
    }
    Ok(ToyFile { tensors, meta })
}

/// Write tensors (as f32) and metadata atomically.
pub fn write(
    path: &Path,
    tensors: &[(String, Tensor)],
    meta: &HashMap<String, String>,
) -> Result<()> {
    let tmp = crate::arrays::tmp_path(path);
    let data: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    safetensors::serialize_to_file(data, Some(meta.clone()), &tmp)
        .map_err(|e| Error::format(path, "write", "a writable file", e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Build a GPT from a file's tensors, checking every tensor's presence and shape first.
pub fn gpt_from(path: &Path, file: &ToyFile, cfg: &GptConfig) -> Result<Gpt> {
    for (name, shape) in cfg.expected_tensors() {
        let t = file
            .tensors
            .get(&name)
            .ok_or_else(|| Error::missing(path, &name))?;
        if t.dims() != shape.as_slice() {
            return Err(Error::shape(path, &name, &shape, t.dims()));
        }
    }
    let vb = candle_nn::VarBuilder::from_tensors(file.tensors.clone(), DType::F32, &Device::Cpu);
    Ok(Gpt::load(vb, cfg)?)
}

/// A toy model file (`toy-gpt` or `toy-finetuned`): the model, its file, and its layout's `p`.
pub fn load_gpt(path: &Path) -> Result<(Gpt, ToyFile)> {
    if crate::arrays::extension(path) != "safetensors" {
        return Err(Error::unsupported(
            path,
            "toy model file",
            "not a .safetensors file",
            "a prefixscope toy model (.safetensors, kind toy-gpt or toy-finetuned)",
        ));
    }
    let file = read(path)?;
    if !MODEL_KINDS.contains(&file.kind()) {
        return Err(not_a_model(path, file.kind()));
    }
    let cfg = file.config(path)?;
    let gpt = gpt_from(path, &file, &cfg)?;
    Ok((gpt, file))
}

fn not_a_model(path: &Path, kind: &str) -> Error {
    let found = match kind {
        "" => "no 'prefixscope.kind' metadata (not a prefixscope toy file)".to_string(),
        "toy-prefix" | "toy-lora" => format!(
            "'{kind}' (an adapter: open its base model and pass this file as the prefix/adapter)"
        ),
        k => format!("'{k}'"),
    };
    Error::unsupported(
        path,
        "prefixscope.kind",
        found,
        format!("{}, construction", MODEL_KINDS.join(", ")),
    )
}

/// A LoRA file for `cfg`.
pub fn load_lora(path: &Path, cfg: &GptConfig) -> Result<Lora> {
    let file = read(path)?;
    if file.kind() != "toy-lora" {
        return Err(Error::unsupported(
            path,
            "prefixscope.kind",
            format!("'{}'", file.kind()),
            "toy-lora",
        ));
    }
    let rank: usize = file.require(path, "prefixscope.rank")?;
    let mut layers = Vec::new();
    let expected = Lora::expected(cfg, rank);
    for chunk in expected.chunks(6) {
        let mut pairs = Vec::new();
        for ab in chunk.chunks(2) {
            let mut got = Vec::new();
            for (name, shape) in ab {
                let t = file
                    .tensors
                    .get(name)
                    .ok_or_else(|| Error::missing(path, name))?;
                if t.dims() != shape.as_slice() {
                    return Err(Error::shape(path, name, shape, t.dims()));
                }
                got.push(t.clone());
            }
            pairs.push(LoraPair {
                a: got[0].clone(),
                b: got[1].clone(),
            });
        }
        let arr: [LoraPair; 3] = pairs
            .try_into()
            .map_err(|_| Error::format(path, "LoRA", "three modules per layer", "fewer"))?;
        layers.push(arr);
    }
    Ok(Lora { rank, layers })
}

/// Open one of our files as a model for the app and the CLI.
pub fn load(path: &Path, ctl: &LoadControl) -> Result<Loaded> {
    ctl.step(0.0)?;
    let file = read(path)?;
    match file.kind() {
        "toy-gpt" | "toy-finetuned" => {
            let cfg = file.config(path)?;
            let gpt = gpt_from(path, &file, &cfg)?;
            ctl.step(1.0)?;
            Ok(Loaded {
                model: Box::new(gpt),
                tokenizer: Tokenizer::Digits {
                    vocab: cfg.vocab_size,
                },
                path: path.to_path_buf(),
            })
        }
        crate::construct::model::KIND => crate::construct::model::open(path),
        other => Err(not_a_model(path, other)),
    }
}
