//! Training the paper's toy models in Rust: pretraining, full fine-tuning, prefix-tuning of the
//! paper-form prefix and rank-r LoRA, all with candle autograd and `candle_nn::AdamW`.
//!
//! Every run is seeded, writes its output file atomically every few minutes (the same file, with the
//! steps done so far in its metadata) and can resume from it. A resumed run restarts AdamW's moment
//! estimates (candle keeps them private) but sees exactly the batches it would have seen (see
//! [`data::batch_rng`]).

pub mod data;
pub mod eval;
pub mod finetune;
pub mod lora;
pub mod prefix_tuning;
pub mod pretrain;

use crate::error::{Error, Result};
use crate::load::toy;
use crate::model::gpt::{Gpt, GptConfig, Lora, PrefixTensors};
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use data::{Split, Task};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The optimisation schedule of one run (stored in the file's `prefixscope.train` metadata).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// Linear warm-up steps (0: none, as the authors).
    pub warmup: usize,
    /// Cosine decay to 10% of `lr` over `steps` (false: constant, as the authors).
    pub cosine: bool,
    pub weight_decay: f64,
    /// AdamW's second-moment decay: minGPT's 0.95 by default; PyTorch's default 0.999 is what the
    /// authors' prefix and LoRA trainers got when they passed no betas.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    pub grad_clip: f64,
    pub seed: u64,
}

fn default_beta2() -> f64 {
    0.95
}

impl Schedule {
    pub fn lr_at(&self, step: usize) -> f64 {
        let warm = if self.warmup > 0 && step < self.warmup {
            (step + 1) as f64 / self.warmup as f64
        } else {
            1.0
        };
        let decay = if self.cosine && self.steps > self.warmup {
            let t = (step.saturating_sub(self.warmup)) as f64 / (self.steps - self.warmup) as f64;
            0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
        } else {
            1.0
        };
        self.lr * warm * decay
    }
}

/// How a run is driven, apart from its schedule.
#[derive(Debug, Clone)]
pub struct LoopOpts {
    pub schedule: Schedule,
    pub task: Task,
    /// Placeholder count of the data layout (and the prefix length for prefix-tuning).
    pub p: usize,
    pub out: PathBuf,
    /// Write the output file at least this often.
    pub ckpt_secs: f64,
    /// Quick evaluation (and a log line) every this many steps; 0 for none.
    pub eval_every: usize,
    /// Samples of the quick evaluation.
    pub eval_samples: usize,
    /// Stop early once the quick evaluation reaches this accuracy.
    pub stop_at: Option<f64>,
    /// Stop after this many minutes of this session's wall time (the file stays resumable).
    pub max_minutes: Option<f64>,
    /// Samples of the final evaluation stored in the file (0: none).
    pub final_samples: usize,
}

/// What a finished (or stopped) loop reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub steps_done: usize,
    pub last_loss: f32,
    pub wall_s: f64,
    pub ms_per_step: f64,
    pub accuracy: Option<f64>,
}

/// Mean cross-entropy of `(B, 10, V)` logits against `(B * 10)` targets.
pub fn loss(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    let (b, l, v) = logits.dims3()?;
    let tgt = Tensor::from_slice(targets, b * l, &Device::Cpu)?;
    candle_nn::loss::cross_entropy(&logits.reshape((b * l, v))?, &tgt)
}

/// One training batch's loss for `model` with an optional trainable prefix or LoRA.
pub fn batch_loss(
    model: &Gpt,
    prefix: Option<&PrefixTensors>,
    lora: Option<&Lora>,
    task: Task,
    p: usize,
    schedule: &Schedule,
    step: usize,
) -> Result<Tensor> {
    let mut rng = data::batch_rng(schedule.seed, step);
    let ex = data::examples(
        task,
        Split::Train,
        schedule.batch,
        step * schedule.batch,
        &mut rng,
    );
    let (ids, tgt, t) = data::batch_ids(&ex, p, prefix.is_some());
    let ids = Tensor::from_vec(ids, (ex.len(), t), &Device::Cpu)?;
    let logits = model.logits(&ids, prefix, lora, data::LENGTH)?;
    Ok(loss(&logits, &tgt)?)
}

/// Scale gradients so that their global L2 norm is at most `clip` (the authors clip at 1.0).
fn clip_grads(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[Var],
    clip: f64,
) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sq.sqrt();
    if clip > 0.0 && norm > clip {
        let f = clip / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.get(v) {
                let g = (g * f)?;
                grads.insert(v, g);
            }
        }
    }
    Ok(norm)
}

/// The shared loop: AdamW (beta1 0.9, beta2 from the schedule) on `decay` (with weight decay) and
/// `no_decay` vars, gradient clipping, the schedule, a progress bar, periodic quick evaluations and checkpoints.
/// `save(steps_done, wall_s, accuracy)` writes the output file.
#[allow(clippy::too_many_arguments)]
pub fn drive(
    opts: &LoopOpts,
    start_step: usize,
    wall_before: f64,
    decay: Vec<Var>,
    no_decay: Vec<Var>,
    mut step_loss: impl FnMut(usize) -> Result<Tensor>,
    mut quick_eval: impl FnMut(usize) -> Result<f64>,
    mut save: impl FnMut(usize, f64, Option<f64>) -> Result<()>,
) -> Result<Outcome> {
    let s = &opts.schedule;
    let params = |wd: f64| ParamsAdamW {
        lr: s.lr,
        beta1: 0.9,
        beta2: s.beta2,
        eps: 1e-8,
        weight_decay: wd,
    };
    let all: Vec<Var> = decay.iter().chain(no_decay.iter()).cloned().collect();
    let mut opt_d = AdamW::new(decay, params(s.weight_decay))?;
    let mut opt_n = AdamW::new(no_decay, params(0.0))?;
    let tty = std::io::stderr().is_terminal();
    let pb = if tty {
        indicatif::ProgressBar::new(s.steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_position(start_step as u64);
    let t0 = Instant::now();
    let mut last_save = Instant::now();
    let mut step = start_step;
    let mut last_loss = f32::NAN;
    let mut acc = None;
    let log = |pb: &indicatif::ProgressBar, line: String| {
        if tty {
            pb.println(line);
        } else {
            eprintln!("{line}");
        }
    };
    while step < s.steps {
        let lr = s.lr_at(step);
        opt_d.set_learning_rate(lr);
        opt_n.set_learning_rate(lr);
        let l = step_loss(step)?;
        let mut grads = l.backward()?;
        clip_grads(&mut grads, &all, s.grad_clip)?;
        opt_d.step(&grads)?;
        opt_n.step(&grads)?;
        last_loss = l.to_scalar::<f32>()?;
        if !last_loss.is_finite() {
            return Err(Error::input(
                "training loss",
                "a finite number",
                format!("{last_loss} at step {step} (lower the learning rate)"),
            ));
        }
        step += 1;
        let done = step - start_step;
        let rate = done as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        pb.set_position(step as u64);
        pb.set_message(format!("loss {last_loss:.4}  {rate:.1} steps/s"));
        let mut stop = false;
        if opts.eval_every > 0 && step.is_multiple_of(opts.eval_every) {
            let a = quick_eval(step)?;
            acc = Some(a);
            log(
                &pb,
                format!(
                    "step {step}/{} loss {last_loss:.4} quick-acc {a:.3} lr {lr:.2e} {:.1} ms/step wall {:.0}s",
                    s.steps,
                    1000.0 / rate,
                    wall_before + t0.elapsed().as_secs_f64()
                ),
            );
            if opts.stop_at.is_some_and(|x| a >= x) {
                log(
                    &pb,
                    format!("stopping: quick accuracy {a:.3} reached the target"),
                );
                stop = true;
            }
        }
        if opts
            .max_minutes
            .is_some_and(|m| t0.elapsed().as_secs_f64() > m * 60.0)
        {
            log(&pb, format!("stopping: wall budget reached at step {step}"));
            stop = true;
        }
        if stop {
            break;
        }
        if last_save.elapsed().as_secs_f64() > opts.ckpt_secs {
            save(step, wall_before + t0.elapsed().as_secs_f64(), None)?;
            last_save = Instant::now();
        }
    }
    pb.finish_and_clear();
    let run_s = t0.elapsed().as_secs_f64();
    let wall = wall_before + run_s;
    let done = step - start_step;
    save(step, wall, None)?;
    let accuracy = if opts.final_samples > 0 {
        let a = quick_eval(usize::MAX)?;
        save(step, wall, Some(a))?;
        Some(a)
    } else {
        acc
    };
    Ok(Outcome {
        steps_done: step,
        last_loss,
        wall_s: wall,
        ms_per_step: if done > 0 {
            1000.0 * run_s / done as f64
        } else {
            f64::NAN
        },
        accuracy,
    })
}

/// Metadata every file of ours carries.
#[allow(clippy::too_many_arguments)]
pub fn metadata(
    kind: &str,
    cfg: &GptConfig,
    task: Task,
    p: usize,
    schedule: &Schedule,
    steps_done: usize,
    wall_s: f64,
    accuracy: Option<f64>,
    base: Option<&Path>,
) -> HashMap<String, String> {
    let mut m = HashMap::new();
    m.insert(toy::KIND.into(), kind.into());
    m.insert(
        toy::CONFIG.into(),
        serde_json::to_string(cfg).unwrap_or_default(),
    );
    m.insert(toy::TASK.into(), task.name().into());
    m.insert(toy::SEED.into(), schedule.seed.to_string());
    m.insert(toy::STEPS.into(), steps_done.to_string());
    m.insert(toy::PREFIX_SIZE.into(), p.to_string());
    m.insert(
        toy::TRAIN.into(),
        serde_json::to_string(schedule).unwrap_or_default(),
    );
    m.insert(toy::WALL_S.into(), format!("{wall_s:.1}"));
    if let Some(a) = accuracy {
        m.insert(toy::ACCURACY.into(), format!("{a:.6}"));
    }
    if let Some(b) = base {
        let name = b
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        m.insert(toy::BASE.into(), name);
    }
    m
}

/// Steps and wall time already in `out` when resuming a run of `kind`, checked against the config.
pub fn resume_point(out: &Path, kind: &str, cfg: &GptConfig) -> Result<(toy::ToyFile, usize, f64)> {
    let f = toy::read(out)?;
    if f.kind() != kind {
        return Err(Error::unsupported(
            out,
            "prefixscope.kind to resume",
            format!("'{}'", f.kind()),
            kind,
        ));
    }
    let got = f.config(out)?;
    if &got != cfg {
        return Err(Error::format(
            out,
            "config to resume",
            format!("{cfg:?}"),
            format!("{got:?}"),
        ));
    }
    let steps: usize = f.require(out, toy::STEPS)?;
    let wall: f64 = f
        .get(toy::WALL_S)
        .and_then(|w| w.parse().ok())
        .unwrap_or(0.0);
    Ok((f, steps, wall))
}

/// The quick/final evaluation seeds: quick evaluations use seed 1 so that they never see the final
/// evaluation's samples (seed 0, the `eval` default).
pub const QUICK_EVAL_SEED: u64 = 1;
pub const FINAL_EVAL_SEED: u64 = 0;

/// Fraction correct, quick (`step < usize::MAX`) or final.
pub fn eval_fraction(
    model: &Gpt,
    adapter: &eval::Adapter,
    p: usize,
    task: Task,
    opts: &LoopOpts,
    step: usize,
) -> Result<f64> {
    let (n, seed) = if step == usize::MAX {
        (opts.final_samples, FINAL_EVAL_SEED)
    } else {
        (opts.eval_samples, QUICK_EVAL_SEED)
    };
    let (c, total) = eval::accuracy(model, adapter, p, task, n.max(1), seed)?;
    Ok(c as f64 / total as f64)
}

/// Seeded normal samples (Box-Muller; candle's CPU generator cannot be seeded).
pub fn randn(
    rng: &mut rand::rngs::StdRng,
    shape: &[usize],
    std: f64,
) -> candle_core::Result<Tensor> {
    use rand::Rng;
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(1e-300);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Seeded uniform samples in `[-bound, bound)`.
pub fn uniform(
    rng: &mut rand::rngs::StdRng,
    shape: &[usize],
    bound: f64,
) -> candle_core::Result<Tensor> {
    use rand::Rng;
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}
