//! Rank-r LoRA (minLoRA, as the authors' `LoRATrainer`): `W + B A` on `attn.c_proj`, `mlp.c_fc` and
//! `mlp.c_proj` of every layer, `A` Kaiming-uniform, `B` zero, scaling 1; the model frozen, AdamW on
//! the adapters only (weight decay 0.01, PyTorch's default).

use super::{drive, eval, metadata, LoopOpts, Outcome};
use crate::error::{Error, Result};
use crate::load::toy;
use crate::model::gpt::{Lora, LoraPair};
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use std::path::Path;

pub fn run(base: &Path, opts: &LoopOpts, rank: usize, resume: bool) -> Result<Outcome> {
    let (gpt, file) = toy::load_gpt(base)?;
    let cfg = gpt.config().clone();
    if rank == 0 {
        return Err(Error::input("--rank", "at least 1", "0"));
    }
    let mut opts = opts.clone();
    opts.p = file.prefix_size(base)?;
    let expected = Lora::expected(&cfg, rank);
    let (start, wall_before, tensors): (usize, f64, Vec<Tensor>) = if resume && opts.out.exists() {
        let (_f, steps, wall) = super::resume_point(&opts.out, "toy-lora", &cfg)?;
        let l = toy::load_lora(&opts.out, &cfg)?;
        eprintln!("resuming {} from step {steps}", opts.out.display());
        let ts = l.named().into_iter().map(|(_, t)| t).collect();
        (steps, wall, ts)
    } else {
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.schedule.seed);
        let mut ts = Vec::new();
        for (name, shape) in &expected {
            if name.ends_with("lora_A") {
                // kaiming_uniform_(a = sqrt(5)): bound = 1 / sqrt(fan_in).
                ts.push(super::uniform(
                    &mut rng,
                    shape,
                    1.0 / (shape[1] as f64).sqrt(),
                )?);
            } else {
                ts.push(Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu)?);
            }
        }
        (0, 0.0, ts)
    };
    let vars: Vec<Var> = tensors
        .iter()
        .map(Var::from_tensor)
        .collect::<candle_core::Result<_>>()?;
    let build = |detach: bool| -> Lora {
        let t = |v: &Var| {
            if detach {
                v.as_tensor().detach()
            } else {
                v.as_tensor().clone()
            }
        };
        let layers = vars
            .chunks(6)
            .map(|c| {
                [
                    LoraPair {
                        a: t(&c[0]),
                        b: t(&c[1]),
                    },
                    LoraPair {
                        a: t(&c[2]),
                        b: t(&c[3]),
                    },
                    LoraPair {
                        a: t(&c[4]),
                        b: t(&c[5]),
                    },
                ]
            })
            .collect();
        Lora { rank, layers }
    };
    let lora = build(false);
    eprintln!("LoRA rank {rank}: {} parameters", lora.n_params());
    let task = opts.task;
    let p = opts.p;
    let s = opts.schedule.clone();
    drive(
        &opts,
        start,
        wall_before,
        vars.clone(),
        vec![],
        |step| super::batch_loss(&gpt, None, Some(&lora), task, p, &s, step),
        |step| {
            let ad = eval::Adapter {
                prefix: None,
                lora: Some(build(true)),
            };
            super::eval_fraction(&gpt, &ad, p, task, &opts, step)
        },
        |steps, wall, acc| {
            let mut meta = metadata("toy-lora", &cfg, task, p, &s, steps, wall, acc, Some(base));
            meta.insert("prefixscope.rank".into(), rank.to_string());
            let named: Vec<(String, Tensor)> = expected
                .iter()
                .zip(&vars)
                .map(|((n, _), v)| (n.clone(), v.as_tensor().clone()))
                .collect();
            toy::write(&opts.out, &named, &meta)
        },
    )
}
