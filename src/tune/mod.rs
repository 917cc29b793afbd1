//! Tuning a prefix on a frozen model by gradient descent: the experiment behind the paper's question
//! of what prefix-tuning can learn, on any model the engine loads (the toy GPTs, LLaMA-family HF
//! folders and GGUF files).
//!
//! The prefix is the only trainable tensor ([`candle_core::Var`]); every weight is a constant of the
//! graph, so no weight gradient is made. The forward pass is the inference decoder's own
//! ([`crate::model::stepper::tail_logits`] over the model's [`Stepper`]), so what is tuned is what
//! the views show. The loss is the mean cross-entropy of the target tokens after the prompt, with
//! teacher forcing: the content is `prompt ++ target[..T-1]` and the last `T` positions predict the
//! target's `T` tokens. The optimizer is Adam (AdamW with weight decay 0, [`crate::train::adamw`]).
//!
//! - [`Tuner`]: one tuning run, step by step (the CLI and the app drive it).
//! - [`state`]: the state file beside the output (`OUT.tune`) that makes `--resume` exact.

pub mod output;
pub mod state;

use crate::capture::capture;
use crate::error::{Error, Result};
use crate::model::stepper::{tail_logits, Stepper};
use crate::model::{LayerSel, PrefixTensors, Transformer};
use crate::prefix::{Array, Prefix, PrefixKind};
use crate::train::adamw::{AdamW, ParamsAdamW};
use candle_core::{DType, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// One prompt and the continuation the prefix should make the model produce, as token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub target: Vec<u32>,
}

/// What to tune.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneConfig {
    pub kind: PrefixKind,
    /// Prefix length `P`.
    pub length: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Seeds the initial prefix.
    pub seed: u64,
}

/// The numbers of one step, measured before its update (the prefix the step started from).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Steps done before this one.
    pub step: usize,
    /// Mean cross-entropy per target token (nats).
    pub loss: f64,
    /// Fraction of target tokens that are the argmax (teacher forcing).
    pub accuracy: f64,
    /// Mean over examples of the probability of the whole target, `exp(sum log p)`.
    pub p_target: f64,
}

/// How far the paper's layer-0 identity holds for the current prefix on one prompt, through the
/// capture path (a genuine softmax over `[prefix | content]`, renormalized over the content).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenormCheck {
    /// Layer 0's max |renormalized - pretrained| over heads, rows and columns.
    pub layer0: f32,
    /// The same at the deepest layer.
    pub deepest: f32,
}

/// The prefix being tuned, as the `Var`s the optimizer updates.
pub struct TunedPrefix {
    kind: PrefixKind,
    /// Soft prompt `(P, d)`; per-layer prefix `(L, P, d)`; keys then values `(L, KV, P, hd)`.
    vars: Vec<Var>,
}

impl TunedPrefix {
    /// From a prefix (its arrays become the `Var`s), in `dtype`.
    pub fn from_prefix(p: &Prefix, dtype: DType) -> Result<Self> {
        let v =
            |a: &Array| -> Result<Var> { Ok(Var::from_tensor(&a.to_tensor()?.to_dtype(dtype)?)?) };
        let vars = match p {
            Prefix::SoftPrompt(a) | Prefix::Hidden(a) => vec![v(a)?],
            Prefix::KeyValue { keys, values } => vec![v(keys)?, v(values)?],
        };
        Ok(TunedPrefix {
            kind: p.kind(),
            vars,
        })
    }

    pub fn kind(&self) -> PrefixKind {
        self.kind
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The tensors the forward pass reads (tracked: the graph leads back to the `Var`s).
    pub fn tensors(&self) -> PrefixTensors {
        let t = |i: usize| self.vars[i].as_tensor().clone();
        match self.kind {
            PrefixKind::SoftPrompt => PrefixTensors::SoftPrompt(t(0)),
            PrefixKind::Hidden => PrefixTensors::Hidden(t(0)),
            PrefixKind::KeyValue => PrefixTensors::KeyValue {
                keys: t(0),
                values: t(1),
            },
        }
    }

    /// The current values as a prefix (f32 arrays) for files, views and the editor.
    pub fn to_prefix(&self) -> Result<Prefix> {
        let a = |i: usize| -> Result<Array> {
            Ok(Array::from_tensor(
                &self.vars[i].as_tensor().to_dtype(DType::F32)?,
            )?)
        };
        Ok(match self.kind {
            PrefixKind::SoftPrompt => Prefix::SoftPrompt(a(0)?),
            PrefixKind::Hidden => Prefix::Hidden(a(0)?),
            PrefixKind::KeyValue => Prefix::KeyValue {
                keys: a(0)?,
                values: a(1)?,
            },
        })
    }
}

/// The loss of `examples` behind `prefix` (tensors: tracked or not), as a scalar tensor, with the
/// step's accuracy and target probability.
pub fn loss(
    model: &dyn Stepper,
    prefix: Option<&PrefixTensors>,
    examples: &[Example],
) -> Result<(Tensor, f64, f64)> {
    let mut total: Option<Tensor> = None;
    let (mut tokens, mut correct, mut p_sum) = (0usize, 0usize, 0f64);
    for ex in examples {
        let t = ex.target.len();
        let mut content = ex.prompt.clone();
        content.extend_from_slice(&ex.target[..t - 1]);
        let logits = tail_logits(model, &content, prefix, t)?; // (T, V)
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let ids = Tensor::from_slice(&ex.target, (t, 1), logits.device())?;
        let picked = logp.gather(&ids, 1)?.squeeze(1)?; // (T,)
        let sum = picked.sum_all()?;
        p_sum += sum.to_dtype(DType::F64)?.to_scalar::<f64>()?.exp();
        let best = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        correct += best.iter().zip(&ex.target).filter(|(a, b)| a == b).count();
        tokens += t;
        total = Some(match total {
            Some(s) => (s + sum)?,
            None => sum,
        });
    }
    let total = total.ok_or_else(|| Error::input("tuning data", "at least one example", "none"))?;
    let loss = (total.neg()? / tokens as f64)?;
    Ok((
        loss,
        correct as f64 / tokens as f64,
        p_sum / examples.len() as f64,
    ))
}

/// A starting prefix of `cfg.kind` and length `cfg.length` for `model`, seeded: the embeddings of
/// `P` vocabulary tokens drawn at random (Lester et al.'s "sampled vocabulary" start), which puts the
/// soft prompt and the per-layer prefix at the scale of real inputs; a key/value prefix starts as
/// the keys and values those rows induce in every layer (the model's own [`Stepper::prefix_kv`]).
pub fn initial_prefix(model: &dyn Transformer, cfg: &TuneConfig) -> Result<Prefix> {
    let info = model.info();
    if cfg.length == 0 {
        return Err(Error::input("--length", "P >= 1", "0"));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut rows = Vec::with_capacity(cfg.length * info.d_model);
    for _ in 0..cfg.length {
        let id = rng.random_range(0..info.vocab_size as u32);
        rows.extend(model.token_embedding(id)?);
    }
    let soft = Array {
        shape: vec![cfg.length, info.d_model],
        data: rows,
    };
    let hidden = || Array {
        shape: vec![info.n_layers, cfg.length, info.d_model],
        data: (0..info.n_layers)
            .flat_map(|_| soft.data.iter().copied())
            .collect(),
    };
    Ok(match cfg.kind {
        PrefixKind::SoftPrompt => Prefix::SoftPrompt(soft),
        PrefixKind::Hidden => Prefix::Hidden(hidden()),
        PrefixKind::KeyValue => {
            let stepper = stepper_of(model)?;
            let h = Prefix::Hidden(hidden());
            let (mut k, mut v) = (Vec::new(), Vec::new());
            for l in 0..info.n_layers {
                let (pk, pv) = stepper
                    .prefix_kv(l, Some(&h))?
                    .ok_or(Error::Internal("a per-layer prefix induced no keys"))?;
                k.extend(pk.flatten_all()?.to_vec1::<f32>()?);
                v.extend(pv.flatten_all()?.to_vec1::<f32>()?);
            }
            let shape = vec![info.n_layers, info.n_kv_heads, cfg.length, info.head_dim];
            Prefix::KeyValue {
                keys: Array {
                    shape: shape.clone(),
                    data: k,
                },
                values: Array { shape, data: v },
            }
        }
    })
}

/// The model's layer-by-layer access, which tuning needs.
pub fn stepper_of(model: &dyn Transformer) -> Result<&dyn Stepper> {
    model.stepper().ok_or_else(|| {
        Error::unsupported(
            model.info().source.as_str(),
            "tuning",
            format!("architecture {}", model.info().arch),
            "the toy GPTs and LLaMA-family models",
        )
    })
}

/// Refuse examples that cannot be tuned on: empty prompt or target, ids outside the vocabulary, or
/// longer than the model's context with the prefix.
pub fn check_examples(model: &dyn Transformer, examples: &[Example], p: usize) -> Result<()> {
    if examples.is_empty() {
        return Err(Error::input(
            "tuning data",
            "at least one prompt/target pair",
            "none",
        ));
    }
    for (i, ex) in examples.iter().enumerate() {
        if ex.target.is_empty() {
            return Err(Error::input(
                format!("example {i}: target"),
                "at least one token",
                "an empty target",
            ));
        }
        let mut all = ex.prompt.clone();
        all.extend_from_slice(&ex.target[..ex.target.len() - 1]);
        crate::capture::check_ids(model, &all, p).map_err(|e| {
            Error::input(
                format!("example {i}"),
                "a prompt the model can run",
                e.one_line(),
            )
        })?;
    }
    Ok(())
}

/// The prompt/target pairs of a JSON-lines file: one object `{"prompt": ..., "target": ...}` a line
/// (blank lines skipped). A line that is not such an object is refused by its number.
pub fn read_pairs(path: &std::path::Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |found: String| {
            Error::format(
                path,
                format!("line {}", i + 1),
                "a JSON object with string fields \"prompt\" and \"target\"",
                found,
            )
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON ({e})")))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        match (field("prompt"), field("target")) {
            (Some(p), Some(t)) => pairs.push((p, t)),
            _ => return Err(bad(line.chars().take(80).collect())),
        }
    }
    if pairs.is_empty() {
        return Err(Error::format(
            path,
            "lines",
            "at least one prompt/target pair",
            "none",
        ));
    }
    Ok(pairs)
}

/// One tuning run: the model, the data, the prefix and its optimizer.
pub struct Tuner {
    model: Arc<dyn Transformer>,
    examples: Vec<Example>,
    prefix: TunedPrefix,
    opt: AdamW,
    steps_done: usize,
    cfg: TuneConfig,
}

impl Tuner {
    /// A run from `start` (the initial prefix, or a resumed one), checked against the model and data.
    pub fn new(
        model: Arc<dyn Transformer>,
        examples: Vec<Example>,
        cfg: TuneConfig,
        start: &Prefix,
    ) -> Result<Self> {
        stepper_of(model.as_ref())?;
        start.check(model.info(), std::path::Path::new("prefix"))?;
        if start.kind() != cfg.kind || start.len() != cfg.length {
            return Err(Error::input(
                "starting prefix",
                format!("a {} of length {}", cfg.kind.label(), cfg.length),
                format!("a {} of length {}", start.kind().label(), start.len()),
            ));
        }
        check_examples(model.as_ref(), &examples, cfg.length)?;
        if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
            return Err(Error::input(
                "--lr",
                "a positive learning rate",
                cfg.lr.to_string(),
            ));
        }
        let prefix = TunedPrefix::from_prefix(start, DType::F32)?;
        let opt = AdamW::new(prefix.vars().to_vec(), adam(cfg.lr))?;
        Ok(Tuner {
            model,
            examples,
            prefix,
            opt,
            steps_done: 0,
            cfg,
        })
    }

    pub fn config(&self) -> &TuneConfig {
        &self.cfg
    }

    pub fn model(&self) -> &Arc<dyn Transformer> {
        &self.model
    }

    pub fn examples(&self) -> &[Example] {
        &self.examples
    }

    pub fn steps_done(&self) -> usize {
        self.steps_done
    }

    /// Change the learning rate from the next step on.
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
        self.opt.set_learning_rate(lr);
    }

    /// The current prefix.
    pub fn prefix(&self) -> Result<Prefix> {
        self.prefix.to_prefix()
    }

    /// Loss, accuracy and target probability of the current prefix, without a step.
    pub fn evaluate(&self) -> Result<StepStats> {
        let stepper = stepper_of(self.model.as_ref())?;
        let pf = self.prefix.tensors();
        let detached = match &pf {
            PrefixTensors::SoftPrompt(t) => PrefixTensors::SoftPrompt(t.detach()),
            PrefixTensors::Hidden(t) => PrefixTensors::Hidden(t.detach()),
            PrefixTensors::KeyValue { keys, values } => PrefixTensors::KeyValue {
                keys: keys.detach(),
                values: values.detach(),
            },
        };
        let (l, accuracy, p_target) =
            crate::model::stepper::on_compute_pool(self.model.as_ref(), self.positions(), || {
                loss(stepper, Some(&detached), &self.examples)
            })?;
        Ok(StepStats {
            step: self.steps_done,
            loss: l.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            accuracy,
            p_target,
        })
    }

    /// The longest prefix + content of the data (for the compute-pool choice).
    fn positions(&self) -> usize {
        self.cfg.length
            + self
                .examples
                .iter()
                .map(|e| e.prompt.len() + e.target.len())
                .max()
                .unwrap_or(0)
    }

    /// One Adam step on the prefix; the numbers are those of the prefix before the update.
    pub fn step(&mut self) -> Result<StepStats> {
        let stepper = stepper_of(self.model.as_ref())?;
        let pf = self.prefix.tensors();
        let (l, accuracy, p_target, grads) = crate::model::stepper::on_compute_pool(
            self.model.as_ref(),
            self.positions(),
            || -> Result<_> {
                let (l, a, p) = loss(stepper, Some(&pf), &self.examples)?;
                let g = l.backward()?;
                Ok((l, a, p, g))
            },
        )?;
        let loss = l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss.is_finite() {
            return Err(Error::input(
                "tuning",
                "a finite loss (lower the learning rate)",
                format!("loss {loss} at step {}", self.steps_done),
            ));
        }
        self.opt.step(&grads)?;
        let stats = StepStats {
            step: self.steps_done,
            loss,
            accuracy,
            p_target,
        };
        self.steps_done += 1;
        Ok(stats)
    }

    /// Layer 0's and the deepest layer's max |renormalized - pretrained| for the current prefix on
    /// the first example's prompt, through the capture path.
    pub fn renorm_check(&self) -> Result<RenormCheck> {
        let prefix = self.prefix()?;
        let last = self.model.info().n_layers - 1;
        let ids = &self.examples[0].prompt;
        let c = capture(
            self.model.as_ref(),
            ids,
            Some(&prefix),
            &LayerSel::Only(vec![0, last]),
        )?;
        let diff = |l: usize| -> Result<f32> {
            c.layer(l)
                .and_then(|x| x.max_renorm_diff(None))
                .ok_or(Error::Internal("capture lacks a prefixed layer"))
        };
        Ok(RenormCheck {
            layer0: diff(0)?,
            deepest: diff(last)?,
        })
    }

    /// Save the state that makes a resumed run continue exactly (beside `out`).
    pub fn save_state(&self, out: &std::path::Path) -> Result<()> {
        state::save(out, self)
    }

    /// Continue from the state saved beside `out`, if it is one of this run (kind, length, model
    /// sizes); `Ok(false)` when there is none.
    pub fn resume(&mut self, out: &std::path::Path) -> Result<bool> {
        state::restore(out, self)
    }
}

/// Adam: AdamW's update with weight decay 0, PyTorch's betas and epsilon.
fn adam(lr: f64) -> ParamsAdamW {
    ParamsAdamW {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    }
}
