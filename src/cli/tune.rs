//! `prefixscope tune`: tune a prefix on a frozen model so that it makes the model continue a prompt
//! with a target (see `src/tune`). Adam on the prefix only; a progress bar with loss and target-token
//! accuracy; the output (prefix file or PEFT adapter folder) and the state beside it (`OUT.tune`)
//! are written atomically every few seconds, and `--resume` continues exactly where they left off.

use prefixscope::error::Error;
use prefixscope::load;
use prefixscope::prefix::PrefixKind;
use prefixscope::tune::output::Output;
use prefixscope::tune::{initial_prefix, Example, TuneConfig, Tuner};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long)]
    pub model: PathBuf,
    /// Keep GGUF weights quantized in memory (each is dequantized for its product).
    #[arg(long)]
    pub quantized: bool,
    /// soft (a soft prompt), kv (key/value prefix, PEFT's prefix tuning) or paper (per-layer hidden
    /// states, the paper's form).
    #[arg(long, value_parser = ["soft", "kv", "paper"])]
    pub kind: String,
    /// Prefix length P.
    #[arg(long)]
    pub length: usize,
    /// The prompt the target should follow.
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    pub prompt: Option<String>,
    /// The continuation to make likely (teacher forcing; its tokens are the loss).
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    pub target: Option<String>,
    /// Several pairs: a JSON-lines file of {"prompt": ..., "target": ...}, all used every step.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Prepend the tokenizer's BOS token to every prompt.
    #[arg(long)]
    pub bos: bool,
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Seeds the starting prefix (embeddings of seeded random vocabulary tokens).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A prefix file (.npz, .npy, .safetensors) or, for any other name, a PEFT adapter folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the prefix as a PEFT adapter folder here.
    #[arg(long, value_name = "DIR")]
    pub adapter_out: Option<PathBuf>,
    /// Continue the run that wrote --out (from the state OUT.tune beside it).
    #[arg(long)]
    pub resume: bool,
    /// Write the output at least this often (seconds).
    #[arg(long, default_value_t = 5.0)]
    pub save_every: f64,
    /// A log line every this many steps, with layer 0's and the deepest layer's max
    /// |renormalized - pretrained| (0: only at the start and the end).
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
}

/// The kind named on the command line.
pub fn parse_kind(s: &str) -> prefixscope::Result<PrefixKind> {
    match s {
        "soft" => Ok(PrefixKind::SoftPrompt),
        "kv" => Ok(PrefixKind::KeyValue),
        "paper" => Ok(PrefixKind::Hidden),
        other => Err(Error::input(
            "--kind",
            "soft, kv or paper",
            format!("'{other}'"),
        )),
    }
}

/// The prompt/target text pairs of `--prompt/--target` or `--data`.
fn text_pairs(a: &Args) -> prefixscope::Result<Vec<(String, String)>> {
    let Some(path) = &a.data else {
        return match (&a.prompt, &a.target) {
            (Some(p), Some(t)) => Ok(vec![(p.clone(), t.clone())]),
            _ => Err(Error::input(
                "tuning data",
                "--prompt and --target, or --data",
                "neither",
            )),
        };
    };
    prefixscope::tune::read_pairs(path)
}

pub fn run(a: Args) -> prefixscope::Result<()> {
    let kind = parse_kind(&a.kind)?;
    if a.length == 0 {
        return Err(Error::input("--length", "P >= 1", "0"));
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        return Err(Error::input(
            "--lr",
            "a positive learning rate",
            a.lr.to_string(),
        ));
    }
    let out = Output::for_path(&a.out);
    out.check(a.resume, kind)?;
    let adapter = a.adapter_out.as_ref().map(|d| Output::Adapter(d.clone()));
    if let Some(o) = &adapter {
        o.check(true, kind)?;
    }
    let pairs = text_pairs(&a)?;
    let loaded = load::load_with(
        &a.model,
        &load::LoadControl {
            quantized: a.quantized,
            ..Default::default()
        },
    )?;
    let examples = pairs
        .iter()
        .map(|(p, t)| {
            Ok(Example {
                prompt: loaded.tokenizer.encode(p, a.bos)?,
                target: loaded.tokenizer.encode(t, false)?,
            })
        })
        .collect::<prefixscope::Result<Vec<_>>>()?;
    let model: Arc<dyn prefixscope::model::Transformer> = Arc::from(loaded.model);
    let cfg = TuneConfig {
        kind,
        length: a.length,
        lr: a.lr,
        seed: a.seed,
    };
    let start = initial_prefix(model.as_ref(), &cfg)?;
    let mut tuner = Tuner::new(model.clone(), examples, cfg, &start)?;
    if a.resume {
        if tuner.resume(&a.out)? {
            eprintln!(
                "resuming {} from step {}",
                a.out.display(),
                tuner.steps_done()
            );
            let now = prefixscope::model::blas::token();
            match prefixscope::tune::state::recorded_matmul(&a.out) {
                Some(r) if r == now => {}
                r => eprintln!(
                    "note: the run started on matmul backend {} and resumes on {now}: results may differ from an uninterrupted run at rounding level",
                    r.as_deref().unwrap_or("(not recorded)")
                ),
            }
        } else {
            return Err(Error::input(
                "--resume",
                format!(
                    "the state file {} of an earlier run",
                    prefixscope::tune::state::state_path(&a.out).display()
                ),
                "none",
            ));
        }
    }
    let base = loaded.path.display().to_string();
    let save = |t: &Tuner| -> prefixscope::Result<()> {
        let pf = t.prefix()?;
        out.save(&pf, model.as_ref(), &base)?;
        if let Some(o) = &adapter {
            o.save(&pf, model.as_ref(), &base)?;
        }
        t.save_state(&a.out)
    };

    let tty = std::io::stderr().is_terminal();
    let pb = if tty {
        indicatif::ProgressBar::new(a.steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_position(tuner.steps_done().min(a.steps) as u64);
    let log = |line: String| {
        if tty {
            pb.println(line);
        } else {
            eprintln!("{line}");
        }
    };
    let report = |t: &Tuner, s: &prefixscope::tune::StepStats| -> prefixscope::Result<String> {
        let c = t.renorm_check()?;
        Ok(format!(
            "step {:>4}  loss {:.4}  acc {:.3}  p(target) {:.4}  layer0 max|renorm-pre| {:.2e}  layer{} {:.2e}",
            s.step,
            s.loss,
            s.accuracy,
            s.p_target,
            c.layer0,
            t.model().info().n_layers - 1,
            c.deepest
        ))
    };
    let first = tuner.evaluate()?;
    log(report(&tuner, &first)?);
    let t0 = Instant::now();
    let mut last_save = Instant::now();
    while tuner.steps_done() < a.steps {
        let s = tuner.step()?;
        pb.set_message(format!(
            "loss {:.4} acc {:.3} p {:.3}",
            s.loss, s.accuracy, s.p_target
        ));
        pb.inc(1);
        if a.log_every > 0 && s.step > 0 && s.step.is_multiple_of(a.log_every) {
            log(report(&tuner, &s)?);
        }
        if last_save.elapsed().as_secs_f64() >= a.save_every {
            save(&tuner)?;
            last_save = Instant::now();
        }
    }
    let end = tuner.evaluate()?;
    log(report(&tuner, &end)?);
    save(&tuner)?;
    pb.finish_and_clear();
    let steps_run = end.step.saturating_sub(first.step);
    eprintln!(
        "tuned {} steps in {:.1} s ({:.3} s/step); loss {:.4} -> {:.4}, p(target) {:.4} -> {:.4}; wrote {}",
        steps_run,
        t0.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64() / steps_run.max(1) as f64,
        first.loss,
        end.loss,
        first.p_target,
        end.p_target,
        a.out.display()
    );
    Ok(())
}
