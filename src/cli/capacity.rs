//! `prefixscope capacity`: how many different outputs one hard token yields against many random virtual
//! tokens, on construction (a) and on toy models (the paper's V against V^N).

use prefixscope::construct::{self, Capacity};
use prefixscope::error::Error;
use prefixscope::load;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Random virtual tokens to try.
    #[arg(long, default_value_t = 1000)]
    pub random: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Toy models to count on as well (repeatable). Default: every toy GPT model file in models/
    /// (`prefixscope.kind` toy-gpt or toy-finetuned).
    #[arg(long)]
    pub model: Vec<PathBuf>,
    /// Greedy tokens generated after the first content token on a toy model (the paper: 10).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Content token ids (comma separated) that follow the one-vector soft prompt on a toy model before
    /// the greedy tokens. Default 0, the toys' placeholder token.
    #[arg(long, default_value = "0")]
    pub prompt: String,
    /// Random virtual tokens on a toy model: Gaussian with the embedding rows' per-coordinate mean and
    /// this many times their standard deviation.
    #[arg(long, default_value_t = 1.0)]
    pub spread: f64,
    #[arg(long)]
    pub json: bool,
}

/// The `prefixscope.kind` values of toy model files (prefix and LoRA files are not models by themselves).
const TOY_MODEL_KINDS: &[&str] = &["toy-gpt", "toy-finetuned"];

fn default_models() -> Vec<PathBuf> {
    let dir = Path::new("models");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| prefixscope::arrays::extension(p) == "safetensors")
                .filter(|p| {
                    prefixscope::construct::model::safetensors_kind(p)
                        .ok()
                        .flatten()
                        .is_some_and(|k| TOY_MODEL_KINDS.contains(&k.as_str()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn print(c: &Capacity) {
    println!("{}", c.model);
    println!("  {}", c.protocol);
    println!(
        "  hard tokens:    {:>6} tried, {:>6} distinct outputs",
        c.hard_tried, c.hard_distinct
    );
    println!(
        "  virtual tokens: {:>6} tried, {:>6} distinct outputs (of {}^{} possible)",
        c.soft_tried, c.soft_distinct, c.vocab_size, c.steps
    );
}

pub fn run(a: Args) -> prefixscope::Result<()> {
    if !(a.spread.is_finite() && a.spread >= 0.0) {
        return Err(Error::input(
            "--spread",
            "a finite number >= 0",
            a.spread.to_string(),
        ));
    }
    if a.random == 0 {
        return Err(Error::input("--random", "at least 1", "0"));
    }
    let mut results = vec![construct::capacity_construction(a.random, a.seed)?];
    let models = if a.model.is_empty() {
        default_models()
    } else {
        a.model.clone()
    };
    let prompt = crate::cli::attention::parse_ids(
        &a.prompt.split(',').map(str::to_string).collect::<Vec<_>>(),
    )
    .map_err(|_| {
        Error::input(
            "--prompt",
            "comma-separated token ids",
            format!("'{}'", a.prompt),
        )
    })?;
    for m in &models {
        let loaded = load::load(m)?;
        results.push(construct::capacity_model(
            loaded.model.as_ref(),
            &m.display().to_string(),
            a.random,
            a.steps,
            &prompt,
            a.spread,
            a.seed,
        )?);
    }
    if a.json {
        println!("{}", serde_json::to_string(&results).unwrap_or_default());
        return Ok(());
    }
    for r in &results {
        print(r);
    }
    if models.is_empty() {
        println!("toy model: none found in models/ (pass --model PATH to count on one)");
    }
    Ok(())
}
