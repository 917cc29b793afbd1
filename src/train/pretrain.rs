//! Pretraining a toy GPT from scratch (minGPT's init), and the full-weight loop full fine-tuning reuses.

use super::{drive, eval, metadata, resume_point, LoopOpts, Outcome};
use crate::error::Result;
use crate::load::toy::{self, ToyFile};
use crate::model::gpt::{Gpt, GptConfig};
use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use std::path::Path;

/// Variables of a model, split into those minGPT decays (Linear weights, `lm_head`) and the rest
/// (biases, LayerNorms, embeddings).
fn groups(vm: &VarMap) -> (Vec<Var>, Vec<Var>) {
    let data = vm.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let (mut d, mut n) = (Vec::new(), Vec::new());
    for name in names {
        let v = data[name].clone();
        let is_decayed = name.ends_with(".weight")
            && !name.contains("ln_")
            && !name.contains(".wte.")
            && !name.contains(".wpe.");
        if is_decayed {
            d.push(v)
        } else {
            n.push(v)
        }
    }
    (d, n)
}

/// All tensors of a `VarMap`, by name, for saving.
fn named(vm: &VarMap) -> Vec<(String, candle_core::Tensor)> {
    let data = vm.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<(String, candle_core::Tensor)> = data
        .iter()
        .map(|(k, var)| (k.clone(), var.as_tensor().clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Train every weight of a model of `cfg`, starting from `init` (a file's tensors) or from minGPT's
/// random init, and write it to `opts.out` as `kind` (`toy-gpt` or `toy-finetuned`).
pub fn train_full(
    cfg: &GptConfig,
    init: Option<&ToyFile>,
    kind: &str,
    base: Option<&Path>,
    opts: &LoopOpts,
    resume: bool,
) -> Result<Outcome> {
    if let Some(f) = init {
        // Every expected tensor must be in the starting point, with its shape.
        toy::gpt_from(base.unwrap_or(&opts.out), f, cfg)?;
    }
    let vm = VarMap::new();
    let mut start = 0;
    let mut wall_before = 0.0;
    let resumed = if resume && opts.out.exists() {
        let (f, steps, wall) = resume_point(&opts.out, kind, cfg)?;
        start = steps;
        wall_before = wall;
        eprintln!(
            "resuming {} from step {steps} ({wall:.0} s so far)",
            opts.out.display()
        );
        Some(f)
    } else {
        None
    };
    if let Some(f) = resumed.as_ref().or(init) {
        let mut data = vm.data().lock().unwrap_or_else(|e| e.into_inner());
        for (name, t) in &f.tensors {
            data.insert(name.clone(), Var::from_tensor(t)?);
        }
    }
    let model = Gpt::load(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), cfg)?;
    let (decay, no_decay) = groups(&vm);
    let adapter = eval::Adapter::default();
    let p = opts.p;
    let task = opts.task;
    let s = opts.schedule.clone();
    drive(
        opts,
        start,
        wall_before,
        decay,
        no_decay,
        |step| super::batch_loss(&model, None, None, task, p, &s, step),
        |step| super::eval_fraction(&model, &adapter, p, task, opts, step),
        |steps, wall, acc| {
            let meta = metadata(kind, cfg, task, p, &s, steps, wall, acc, base);
            toy::write(&opts.out, &named(&vm), &meta)
        },
    )
}

/// minGPT's initialisation, drawn from a generator seeded with `seed`: normal(0, 0.02) weights and
/// embeddings, residual projections scaled by `1/sqrt(2 n_layer)`, zero biases, unit LayerNorms.
pub fn init(cfg: &GptConfig, seed: u64) -> Result<ToyFile> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tensors = std::collections::HashMap::new();
    let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
    for (name, shape) in cfg.expected_tensors() {
        let t = if name.contains("ln_") && name.ends_with(".weight") {
            candle_core::Tensor::ones(shape.as_slice(), DType::F32, &Device::Cpu)?
        } else if name.ends_with(".bias") {
            candle_core::Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu)?
        } else if name.ends_with("c_proj.weight") {
            super::randn(&mut rng, &shape, proj_std)?
        } else {
            super::randn(&mut rng, &shape, 0.02)?
        };
        tensors.insert(name, t);
    }
    Ok(ToyFile {
        tensors,
        meta: Default::default(),
    })
}

/// Pretrain a fresh model of `cfg` on `opts.task` with the layout's `opts.p` placeholders.
pub fn run(cfg: &GptConfig, opts: &LoopOpts, resume: bool) -> Result<Outcome> {
    let fresh = init(cfg, opts.schedule.seed)?;
    train_full(cfg, Some(&fresh), "toy-gpt", None, opts, resume)
}
