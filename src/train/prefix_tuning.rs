//! Prefix-tuning in the paper's form: one `(n_layer, P, n_embd)` tensor of hidden states, every model
//! weight frozen (the model's tensors are constants, so no weight gradient is computed), AdamW on the
//! prefix only (PyTorch's default weight decay 0.01, as the authors' `PrefixTrainer`).

use super::{drive, eval, metadata, LoopOpts, Outcome};
use crate::error::{Error, Result};
use crate::load::toy;
use crate::model::gpt::PrefixTensors;
use candle_core::Var;
use rand::SeedableRng;
use std::path::Path;

/// Train a prefix of length `opts.p` for the model in `base`; `init_std` is the standard deviation of
/// the initial prefix (the authors' `torch.randn`: 1.0).
pub fn run(base: &Path, opts: &LoopOpts, init_std: f64, resume: bool) -> Result<Outcome> {
    let (gpt, file) = toy::load_gpt(base)?;
    let cfg = gpt.config().clone();
    let p = opts.p;
    if p == 0 || p + 2 * super::data::LENGTH - 1 > cfg.n_positions {
        return Err(Error::input(
            "--prefix-size",
            format!(
                "1..={} (the model's {} positions hold prefix + 19 tokens)",
                cfg.n_positions.saturating_sub(19),
                cfg.n_positions
            ),
            p.to_string(),
        ));
    }
    let _ = file;
    let shape = [cfg.n_layer, p, cfg.n_embd];
    let (init, start, wall_before) = if resume && opts.out.exists() {
        let (f, steps, wall) = super::resume_point(&opts.out, "toy-prefix", &cfg)?;
        let t = f
            .tensors
            .get("prefix")
            .ok_or_else(|| Error::missing(&opts.out, "prefix"))?;
        if t.dims() != shape {
            return Err(Error::shape(&opts.out, "prefix", shape, t.dims()));
        }
        eprintln!("resuming {} from step {steps}", opts.out.display());
        (t.clone(), steps, wall)
    } else {
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.schedule.seed);
        (super::randn(&mut rng, &shape, init_std)?, 0, 0.0)
    };
    let var = Var::from_tensor(&init)?;
    let task = opts.task;
    let s = opts.schedule.clone();
    let frozen_adapter = |v: &Var| eval::Adapter {
        prefix: Some(PrefixTensors::Hidden(v.as_tensor().detach())),
        lora: None,
    };
    drive(
        opts,
        start,
        wall_before,
        vec![var.clone()],
        vec![],
        |step| {
            let pf = PrefixTensors::Hidden(var.as_tensor().clone());
            super::batch_loss(&gpt, Some(&pf), None, task, p, &s, step)
        },
        |step| super::eval_fraction(&gpt, &frozen_adapter(&var), p, task, opts, step),
        |steps, wall, acc| {
            let meta = metadata(
                "toy-prefix",
                &cfg,
                task,
                p,
                &s,
                steps,
                wall,
                acc,
                Some(base),
            );
            toy::write(
                &opts.out,
                &[("prefix".to_string(), var.as_tensor().clone())],
                &meta,
            )
        },
    )
}
